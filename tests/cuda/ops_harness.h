// ops_harness.h — the comparison harness of cuda-test-ops (test_ops.cu and the fused-op
// test files tests/cuda/ops_*.cu): the same random host data in both backends' memory,
// and a per-case check of the CUDA result against the CPU backend's.
//
// Owns: Pair/put/drop/check, the seeded generator, the pass/fail counters, and the test
// weight table (one in-memory GGUF; tensor i of kW is g_t[i], found by name with wt()).
// Must not: compute an expected value on the GPU.
#ifndef DS4_OPS_HARNESS_H
#define DS4_OPS_HARNESS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

extern "C" {
#include "backend/backend.h"
#include "core/common.h"
#include "model/ggml_type.h"
#include "model/gguf.h"
#include "model/quant.h"
#include "model/weights.h"
}

inline int g_pass, g_fail;
inline uint64_t g_rng = 0x243F6A8885A308D3ull;
inline double urand() {
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}
inline float srand1() { return (float)(2 * urand() - 1); }
inline std::vector<float> rvec(size_t n, float scale = 1) {
    std::vector<float> v(n);
    for (auto &x : v) x = srand1() * scale;
    return v;
}

// The same host data in both backends' memory.
struct Pair {
    ds4_backend *cpu, *gpu;
    float *c, *g;
    size_t n;
};
inline Pair put(ds4_backend *cpu, ds4_backend *gpu, const std::vector<float> &v) {
    Pair p{cpu, gpu, (float *)cpu->alloc(cpu, v.size() * 4), (float *)gpu->alloc(gpu, v.size() * 4), v.size()};
    cpu->write(cpu, p.c, v.data(), v.size() * 4);
    gpu->write(gpu, p.g, v.data(), v.size() * 4);
    return p;
}
inline void drop(Pair &p) {
    p.cpu->release(p.cpu, p.c);
    p.gpu->release(p.gpu, p.g);
}
inline void check(const char *name, Pair &p, double tol) {
    std::vector<float> a(p.n), b(p.n);
    p.cpu->read(p.cpu, a.data(), p.c, p.n * 4);
    p.gpu->read(p.gpu, b.data(), p.g, p.n * 4);
    double mx = 1, d = 0;
    for (size_t i = 0; i < p.n; i++)
        if (isfinite(a[i])) mx = fmax(mx, fabs(a[i]));
    for (size_t i = 0; i < p.n; i++) {
        double e = a[i] == b[i] ? 0.0 : fabs((double)a[i] - b[i]); // equal infinities: 0
        if (!(e <= d)) d = isnan(e) ? INFINITY : e;
    }
    const bool ok = d <= tol * mx;
    printf("%s %-44s max|diff| %.3e (bound %.1e)\n", ok ? "ok  " : "FAIL", name, d, tol * mx);
    (ok ? g_pass : g_fail)++;
}

// Test weights: name, type, ne0 (inputs), ne1 (rows), ne2.
struct Wt {
    const char *name;
    uint32_t type;
    uint64_t ne0, ne1, ne2;
};
inline const Wt kW[] = {
    {"f32", DS4_TYPE_F32, 4096, 96, 1},   {"f16", DS4_TYPE_F16, 4096, 96, 1},
    {"q8", DS4_TYPE_Q8_0, 4096, 96, 1},   {"q2k", DS4_TYPE_Q2_K, 4096, 48, 1},
    {"q4k", DS4_TYPE_Q4_K, 4096, 48, 1},  {"iq2", DS4_TYPE_IQ2_XXS, 4096, 32, 1},
    {"tiny", DS4_TYPE_Q8_0, 64, 7, 1},    {"oa", DS4_TYPE_Q8_0, 1024, 64, 1},
    {"emb", DS4_TYPE_F16, 512, 40, 1},
    // HC mixing projections: Flash (h 4, d 4096 -> 24 x 16384) in F16 and F32, tiny (h 2, d 64)
    {"hcfn", DS4_TYPE_F16, 16384, 24, 1}, {"hcfn32", DS4_TYPE_F32, 16384, 24, 1},
    {"hcfn_tiny", DS4_TYPE_F16, 128, 8, 1}, {"hcfn_odd", DS4_TYPE_F16, 4 * 1021, 24, 1},
    // attention-input projections sharing x (matmul_multi): Flash's q_a / kv (Q8_0) and
    // the compressor / indexer projections (F16), at reduced row counts
    {"mm_q8a", DS4_TYPE_Q8_0, 4096, 160, 1}, {"mm_q8b", DS4_TYPE_Q8_0, 4096, 64, 1},
    {"mm_f16a", DS4_TYPE_F16, 4096, 96, 1}, {"mm_f16b", DS4_TYPE_F16, 4096, 32, 1},
};
inline ds4_tensor g_t[sizeof kW / sizeof kW[0]];
// The test tensor named `name` (aborts when absent: a harness bug).
inline const ds4_tensor *wt(const char *name) {
    for (size_t i = 0; i < sizeof kW / sizeof kW[0]; i++)
        if (!strcmp(kW[i].name, name)) return &g_t[i];
    fprintf(stderr, "no test tensor %s\n", name);
    abort();
}

// Fused-op cases, one function per file (tests/cuda/ops_*.cu). Each runs only when the
// GPU backend has the op (G->op != NULL), with the CPU backend's op sequence as reference.
void ops_fused_hc(ds4_backend *C, ds4_backend *G, const char *mode);
void ops_fused_qkv(ds4_backend *C, ds4_backend *G, const char *mode);
void ops_fused_attn(ds4_backend *C, ds4_backend *G, const char *mode);
void ops_fused_mm(ds4_backend *C, ds4_backend *G, const char *mode);
// batched prefill ops (backend.h "optional batched ops"): one file each
void ops_batch_qkv(ds4_backend *C, ds4_backend *G, const char *mode);      // ops_qkvn.cu: qkv_rope_n, compress_rows
void ops_batch_indexer(ds4_backend *C, ds4_backend *G, const char *mode);  // ops_idxn.cu: indexer_topk
void ops_batch_attn(ds4_backend *C, ds4_backend *G, const char *mode);     // ops_attnn.cu: attention_n
void ops_batch_moe(ds4_backend *C, ds4_backend *G, const char *mode);      // ops_moen.cu: large-chunk matmuls, moe_routed
void ops_kv_decode(ds4_backend *C, ds4_backend *G, const char *mode);      // ops_kv_dec.cu: compact rows in attention_ex, indexer_scores
void ops_topk_vals(ds4_backend *C, ds4_backend *G, const char *mode);     // ops_topkv.cu: topk_vals (output-head top-k)

#endif
