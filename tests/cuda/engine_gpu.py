#!/usr/bin/env python3
"""engine_gpu.py — whole-model checks of the CUDA backend (issue 8), run on a GPU machine.

Owns: converting the oracle fixtures and synthetic tiny models, running
`ds4 --tokens @F --dump-logits OUT` with --cuda and --cpu in exact and production mode,
and comparing logits; prints one table row per case and exits non-zero on any failure.
Must not: compare the CUDA engine with values it produced itself, except for the
chunked-prefill vs decode checks (same backend, different chunking) and the KV layout
checks (same backend, compact vs f32 cached rows).

References and bounds (max |difference| over all positions and vocabulary entries):
  * exact mode, CUDA vs the transformers oracle logits (tests/fixtures/oracle):   1e-3
    (the CPU backend's bound, test_oracle.py);
  * exact mode, CUDA vs CPU:                                                      1e-3;
  * production mode, CUDA vs CPU: activations are quantized to Q8_0/Q8_K on both with
    the same rounding, but f32 sums are accumulated in another order, so a value near a
    rounding boundary can quantize one step differently, and a router/indexer top-k near
    a tie can then pick another expert/row: differences are discontinuous and grow along
    the sequence through the KV state (measured on an H200: f32-weight models agree to
    <= 8.4e-4 of max|logit| everywhere; quantized models agree to <= 1.5e-2 at position 0
    and diverge later, median 5e-8..2.4e-2). Bounds, relative to the CPU's max|logit|:
    position 0 <= PROD_TOL0 (5e-2), median over positions <= PROD_TOL_MED (5e-2); the
    top-1 agreement over positions is printed. Position 0 once had a tighter bound (2e-2)
    because the first attention kernel summed a single row exactly like the CPU; the
    split-row attention (attention_ex) rounds that sum differently (1 ulp), which the 2-bit
    synthetic models amplify through activation quantisation like any later position:
    measured on an H200 (tiny/q2) 8.7e-8 at position 0 with DS4_CUDA_NO_FUSED=1 and
    2.2e-2 with the fused ops, against a median of 1.7e-2 / 1.9e-2 for the two. Exact mode
    (above) is where the fused ops are held to the oracle;
  * CUDA chunked prefill (engine default chunk) vs one-token steps (--prefill-chunk 1):
    chunks use the batched prefill ops and the tensor-core matmuls, which sum in another
    order than the single-token path (backend.h "optional batched ops"), so the bounds are
    those of CUDA vs CPU above (exact: 1e-3; production: relative, position 0 and median);
    with those turned off (NO_BATCH: DS4_CUDA_NO_FUSED=batch, DS4_CUDA_NO_MMQ=1) every
    output element is computed by the same code whatever the chunking: bit-identical;
  * production mode, compact KV rows (the CUDA default: kv_fmt.h FP8 / FP4 rows) vs f32 rows
    (env DS4_CUDA_KV=f32), chunked prefill and --prefill-chunk 1: bit-identical (bound 0).
    The layout is lossless on production rows and every op decodes it exactly before the
    arithmetic of the f32 path, so any difference is a bug;
  * one-token steps (--prefill-chunk 1) as CUDA graphs (the default: graph.h records each
    step's launches and replays them as patched graphs) vs launched one by one (env
    DS4_CUDA_GRAPH=0), both modes: bit-identical (bound 0) — the graphs hold exactly the
    recorded launches, so any difference is a stale or misordered node; also with segments
    of 7 kernels and a cache of 3 graphs (DS4_CUDA_GRAPH_SEG / _CACHE: boundaries inside
    ops, constant eviction and rebuilding).

usage: engine_gpu.py --bin DIR [--work DIR] [--only NAME]   (DIR holds ds4, ds4-quantize)
"""
import argparse
import os
import json
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "oracle"
EXACT_TOL = 1e-3
PROD_TOL0 = 5e-2
PROD_TOL_MED = 5e-2
NO_BATCH = {"DS4_CUDA_NO_FUSED": "batch", "DS4_CUDA_NO_MMQ": "1"}


def bitdiff(a, b):
    """0 when a and b hold the same float32 bits, else max |a - b| (or the smallest normal
    when only the bits differ, e.g. -0 vs 0), inf on a shape mismatch."""
    if a.shape != b.shape:
        return float("inf")
    if np.array_equal(a.view(np.uint32), b.view(np.uint32)):
        return 0.0
    d = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    return d if d > 0 else float(np.finfo(np.float32).tiny)


def fixtures():
    return sorted(p.name for p in FIX.iterdir() if (p / "config.json").exists()) if FIX.exists() else []


def run(cmd, env=None):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: rc {r.returncode}\n{r.stderr[-2000:]}")
    return r


def logits(bindir, model, tokens_json, out, nv, *flags, env=None):
    run([bindir / "ds4", "-m", model, "--tokens", "@" + str(tokens_json), "--dump-logits", out, *flags],
        env=None if env is None else {**os.environ, **env})
    return np.fromfile(out, "<f4").reshape(-1, nv)


def n_vocab_of(bindir, model, tokens_json, work):
    """Vocabulary size from a CPU dump of one token (file size / 4)."""
    tj = work / "one.json"
    tj.write_text(json.dumps(json.loads(pathlib.Path(tokens_json).read_text())[:1]))
    out = work / "one.f32"
    run([bindir / "ds4", "-m", model, "--tokens", "@" + str(tj), "--dump-logits", out, "--cpu"])
    return out.stat().st_size // 4


def cases(bindir, work, only=None):
    """Yields (name, model, tokens_json, oracle_logits or None)."""
    q = bindir / "ds4-quantize"
    for name in fixtures():
        if only and only not in name:
            continue
        fx = FIX / name
        meta = json.loads((fx / "meta.json").read_text())
        oracle = np.fromfile(fx / "logits.f32", "<f4").reshape(meta["n_tokens"], meta["n_vocab"])
        for t in ("f32", "q8"):
            g = work / f"{name}.{t}.gguf"
            if not g.exists():
                run([q, "--hf", fx, "--type", t, "-o", g])
            yield f"{name}/{t}", g, fx / "tokens.json", oracle if t == "f32" else None
    for t in ("q2", "q4"):
        if only and only not in "tiny_" + t:
            continue
        g = work / f"tiny_{t}.gguf"
        if not g.exists():
            run([q, "--synthetic", "tiny", "--type", t, "-o", g, "--seed", "7"])
        tj = work / "tiny_tokens.json"
        if not tj.exists():
            rng = np.random.default_rng(5)
            tj.write_text(json.dumps([int(v) for v in rng.integers(0, 256, 96)]))
        yield f"tiny/{t}", g, tj, None
    # Flash-shaped (d 4096, 64 heads x 512, 256 experts, CSA + HCA layers) with a few
    # layers: the real kernels' shapes and fast paths (ENGINE_GPU_FLASH=N layers, 0 = off;
    # the q2 file is ~9.5 GB at 4 layers, generated on the machine)
    nfl = int(os.environ.get("ENGINE_GPU_FLASH", "0"))
    if nfl > 0 and (not only or only in "flash"):
        g = work / f"flash{nfl}_q2.gguf"
        if not g.exists():
            run([q, "--synthetic", "flash", "--type", "q2", "--layers", str(nfl), "-o", g, "--seed", "11"])
        tj = work / "flash_tokens.json"
        if not tj.exists():
            rng = np.random.default_rng(9)
            tj.write_text(json.dumps([int(v) for v in rng.integers(0, 129280, 40)]))
        yield f"flash{nfl}/q2", g, tj, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT))
    ap.add_argument("--work", default="/tmp/ds4-engine-gpu")
    ap.add_argument("--only")
    a = ap.parse_args()
    bindir = pathlib.Path(a.bin).resolve()
    work = pathlib.Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    fails = 0
    print(f"{'case':<22} {'mode':<5} {'check':<27} {'max|diff|':>11} {'bound':>9}  result")

    def row(case, mode, check, diff, bound):
        nonlocal fails
        ok = bool(np.isfinite(diff)) and diff <= bound
        fails += not ok
        print(f"{case:<22} {mode:<5} {check:<27} {diff:11.3e} {bound:9.1e}  {'ok' if ok else 'FAIL'}", flush=True)

    for name, g, tj, oracle in cases(bindir, work, a.only):
        try:
            nv = oracle.shape[1] if oracle is not None else n_vocab_of(bindir, g, tj, work)
            tag = name.replace("/", "_")
            for mode, flags in (("exact", ["--exact"]), ("prod", [])):
                cu = logits(bindir, g, tj, work / f"{tag}.{mode}.cuda.f32", nv, "--cuda", *flags)
                cp = logits(bindir, g, tj, work / f"{tag}.{mode}.cpu.f32", nv, "--cpu", *flags)
                if not np.isfinite(cu).all():
                    row(name, mode, "cuda logits finite", float("inf"), 0)
                    continue
                d = float(np.abs(cu - cp).max())
                if mode == "exact":
                    row(name, mode, "cuda vs cpu", d, EXACT_TOL)
                    if oracle is not None:
                        row(name, mode, "cuda vs oracle", float(np.abs(cu - oracle[: len(cu)]).max()), EXACT_TOL)
                else:
                    scale = max(1.0, float(np.abs(cp).max()))
                    per = np.abs(cu - cp).max(axis=1) / scale
                    row(name, mode, "cuda vs cpu pos 0 (rel.)", float(per[0]), PROD_TOL0)
                    row(name, mode, "cuda vs cpu median (rel.)", float(np.median(per)), PROD_TOL_MED)
                    top1 = float((cu.argmax(axis=1) == cp.argmax(axis=1)).mean())
                    print(f"    max rel diff {d / scale:.2e}, first position > 1e-3: "
                          f"{int(np.argmax(per > 1e-3)) if (per > 1e-3).any() else -1}, top-1 agreement {top1:.3f}",
                          flush=True)
                    if os.environ.get("ENGINE_GPU_DIAG"):
                        pq = logits(bindir, g, tj, work / f"{tag}.{mode}.preq.f32", nv, "--cuda", *flags,
                                    env={"DS4_CUDA_PREQ": "1"})
                        print(f"    DS4_CUDA_PREQ=1: vs cpu {float(np.abs(pq - cp).max()) / scale:.3e}, "
                              f"vs in-kernel quant {float(np.abs(pq - cu).max()):.3e}", flush=True)
                c1 = logits(bindir, g, tj, work / f"{tag}.{mode}.cuda1.f32", nv, "--cuda", "--prefill-chunk", "1", *flags)
                ng = logits(bindir, g, tj, work / f"{tag}.{mode}.nograph1.f32", nv, "--cuda", "--prefill-chunk", "1",
                            *flags, env={"DS4_CUDA_GRAPH": "0"})
                row(name, mode, "graph vs no graph, chunk=1", bitdiff(c1, ng), 0.0)
                # odd segment boundaries and a 3-graph cache: every step rebuilds or evicts
                gs = logits(bindir, g, tj, work / f"{tag}.{mode}.graphsmall1.f32", nv, "--cuda", "--prefill-chunk", "1",
                            *flags, env={"DS4_CUDA_GRAPH_SEG": "7", "DS4_CUDA_GRAPH_CACHE": "3"})
                row(name, mode, "graph seg 7 cache 3 vs none", bitdiff(gs, ng), 0.0)
                if mode == "exact":
                    row(name, mode, "cuda chunk=1 vs chunked", float(np.abs(c1 - cu).max()), EXACT_TOL)
                else:
                    scale = max(1.0, float(np.abs(c1).max()))
                    per = np.abs(cu - c1).max(axis=1) / scale
                    row(name, mode, "chunk=1 vs chunked pos 0", float(per[0]), PROD_TOL0)
                    row(name, mode, "chunk=1 vs chunked median", float(np.median(per)), PROD_TOL_MED)
                if mode == "prod":   # compact KV rows (default) vs f32 rows: the same bits
                    kf = logits(bindir, g, tj, work / f"{tag}.{mode}.kvf32.f32", nv, "--cuda", *flags,
                                env={"DS4_CUDA_KV": "f32"})
                    row(name, mode, "kv compact vs f32 rows", bitdiff(cu, kf), 0.0)
                    kf1 = logits(bindir, g, tj, work / f"{tag}.{mode}.kvf32_1.f32", nv, "--cuda", "--prefill-chunk",
                                 "1", *flags, env={"DS4_CUDA_KV": "f32"})
                    row(name, mode, "kv compact vs f32, chunk=1", bitdiff(c1, kf1), 0.0)
                cb = logits(bindir, g, tj, work / f"{tag}.{mode}.cudab.f32", nv, "--cuda", *flags, env=NO_BATCH)
                row(name, mode, "chunk=1 vs chunked, no batch", float(np.abs(c1 - cb).max()), 0.0)
        except Exception as ex:  # a crash is a failed case, the others still run
            fails += 1
            print(f"{name:<22} ERROR {ex}", flush=True)
    print(f"{fails} failure(s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
