#!/bin/bash
# run_engine_gpu.sh — whole-engine CUDA checks (tests/cuda/engine_gpu.py) and, with
# BENCH_LAYERS set, ds4-bench --cuda on Flash-shaped synthetic q2 models generated on the
# machine (too large to transfer). Logs into $OUT (default ./gpu-out).
#
# usage: tests/cuda/run_engine_gpu.sh [BINDIR]
#   BINDIR holds ds4, ds4-quantize, ds4-bench, cuda-test-ops built by `make cuda` (and lib/ with
#   the shared libraries they need when the GPU machine lacks them). Without BINDIR, or
#   when its binaries do not start there, it builds with `make cuda` on that machine.
#   BENCH_LAYERS="4 12"  layer counts of the synthetic Flash q2 models to benchmark
#   BENCH_CTX=4096       frontier (prefill tokens, then decode at that context)
#   BENCH_GEN=32         decode steps per frontier
#   SKIP_CHECKS=1        benchmark only
#   PROFILE=1            also a per-op profile run (DS4_CUDA_PROFILE=1) per model
#   GRAPH_LAYERS=43      layers of the graph-vs-no-graph decode check's model
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
BIN=${1:-}
if [ -n "$BIN" ] && [ -d "$BIN/lib" ]; then export LD_LIBRARY_PATH="$BIN/lib:${LD_LIBRARY_PATH:-}"; fi
if [ -z "$BIN" ] || ! "$BIN/ds4" --help > /dev/null 2>&1; then
  echo "building on this machine (make cuda)"
  make -j"$(nproc)" cuda > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  BIN=.
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
rc=0
if [ -z "${SKIP_CHECKS:-}" ]; then
  OPS="$BIN/cuda-test-ops"; [ -x "$OPS" ] || OPS=build-cuda/cuda-test-ops
  if [ -x "$OPS" ]; then  # every op, CUDA vs the CPU backend (tests/cuda/test_ops.cu)
    "$OPS" 2>&1 | tee "$OUT/ops.log" | grep -v "^ok "; [ "${PIPESTATUS[0]}" = 0 ] || rc=1
  fi
  PYTHONUNBUFFERED=1 python3 tests/cuda/engine_gpu.py --bin "$BIN" 2>&1 | tee "$OUT/engine.log"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
  # decode steps replayed as CUDA graphs (the default) vs launched one by one: a Flash-shaped
  # synthetic q2 model (GRAPH_LAYERS, default 43: needs an H200), 64 steps from position
  # 2040 over synthetic KV state — compressor windows closing (ratios 4 and 128) and the
  # indexer's first selection (position 2051), so graphs are built, patched and switched:
  # the logits of every step must be the same bits
  for g in 0 1; do
    DS4_CUDA_GRAPH=$g DS4_CUDA_GRAPH_STATS=1 timeout 300 "$BIN/ds4-bench" --cuda --synthetic flash --type q2 \
      --layers "${GRAPH_LAYERS:-43}" --ctx-start 2040 --ctx-max 2040 --gen-tokens 64 --fill-kv \
      --logits-out "/tmp/ds4_graph$g.f32" --csv /dev/null > "$OUT/graph$g.log" 2>&1 || { tail -3 "$OUT/graph$g.log"; rc=1; }
  done
  grep -h "cuda graphs" "$OUT/graph1.log"
  if cmp -s /tmp/ds4_graph0.f32 /tmp/ds4_graph1.f32 && [ -s /tmp/ds4_graph1.f32 ]; then
    echo "graph decode vs no graph: identical logits ($(stat -c %s /tmp/ds4_graph1.f32) bytes)"
  else
    echo "graph decode vs no graph: DIFFERENT"; rc=1
  fi
  rm -f /tmp/ds4_graph0.f32 /tmp/ds4_graph1.f32
fi
for L in ${BENCH_LAYERS:-}; do
  M=/tmp/flash_q2_L$L.gguf
  t0=$SECONDS
  "$BIN/ds4-quantize" --synthetic flash --type q2 --layers "$L" -o "$M" > "$OUT/gen_L$L.log" 2>&1 || { tail -5 "$OUT/gen_L$L.log"; rc=1; continue; }
  echo "generated $M in $((SECONDS - t0)) s: $(du -h "$M" | cut -f1)"
  C=${BENCH_CTX:-4096}
  timeout "${BENCH_TIMEOUT:-240}" "$BIN/ds4-bench" -m "$M" --cuda --ctx-start "$C" --ctx-max "$C" --gen-tokens "${BENCH_GEN:-32}" \
     --csv "$OUT/bench_L$L.csv" 2>&1 | tee "$OUT/bench_L$L.log"
  cat "$OUT/bench_L$L.csv"
  if [ -n "${PROFILE:-}" ]; then  # per-op breakdown of decode steps (each op synchronised)
    DS4_CUDA_PROFILE=1 timeout 120 "$BIN/ds4-bench" -m "$M" --cuda --ctx-start "$C" --ctx-max "$C" --gen-tokens 16 \
      --csv /dev/null 2>&1 | tee "$OUT/profile_L$L.log" | grep -A40 "cuda op profile"
  fi
  rm -f "$M"
done
echo "run_engine_gpu rc=$rc"
exit $rc
