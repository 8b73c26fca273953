// hc_math.cuh — the per-token hc_pre math shared by the two CUDA epilogues of the
// hyper-connection sites: fused_hc.cu (hc_body's last-block epilogue, decode / small
// chunks) and hc_chunk.cu (k_hcc_ep, large chunks). Both must give bit-identical post,
// comb and pre to the op sequence (tests/cuda/ops_hc.cu compares them bit for bit).
//
// Owns: sigm (the CPU's sigmoidf_), and hc_pre_post_comb: pre / post by lanes < h, the
// caller's barrier arrive, then comb (row softmax + eps, `iters` Sinkhorn rounds) with one
// lane per element when h·h <= 32. Must not: change any operation or its order relative to
// cpu_hc_pre (cpu_backend.c): every operation is an explicit _rn one (no contraction), sums
// in index order, C / (s + eps); hold kernels, barriers of its own or block-wide syncs.
#ifndef DS4_CUDA_HC_MATH_CUH
#define DS4_CUDA_HC_MATH_CUH

#include <math.h>

namespace ds4cu {

// The CPU's sigmoidf_ (cpu_backend.c) with each operation rounded as written there.
__device__ __forceinline__ float hc_sigm(float z) { return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-z))); }

// Called by all 32 lanes of one warp (warp-uniform arguments: the comb step shuffles over
// the full mask). HC > 0: h is the compile-time HC (h_rt ignored); HC == 0: h = h_rt.
// sc: rmsnorm's scale of the token's flat row (mix_j = sc · s_dot[j], j < (2 + h)·h);
// s_pre: [h] shared, written by lanes < h before arrive() (the caller's non-blocking
// publish to its x warps); post_t: [h], comb_t: [h·h] this token's outputs; scale [3],
// base [(2 + h)·h]; eps = hc_eps. Returns true when it wrote comb (h·h <= 32); false:
// comb is left to the caller (its h·h > 32 path), pre / post written either way.
template <int HC, typename Arrive>
__device__ __forceinline__ bool hc_pre_post_comb(float sc, const float *s_dot, float *s_pre, const float *scale,
                                                 const float *base, float *post_t, float *comb_t, int h_rt,
                                                 int iters, float eps, int lane, Arrive arrive) {
    const int h = HC > 0 ? HC : h_rt;
    // pre / post: cpu_hc_pre's expressions
    if (lane < h) {
        const float m0 = __fmul_rn(sc, s_dot[lane]), m1 = __fmul_rn(sc, s_dot[h + lane]);
        s_pre[lane] = __fadd_rn(hc_sigm(__fadd_rn(__fmul_rn(m0, scale[0]), base[lane])), eps);
        post_t[lane] = __fmul_rn(2.0f, hc_sigm(__fadd_rn(__fmul_rn(m1, scale[1]), base[h + lane])));
    }
    arrive();
    if (h * h > 32) return false;
    // comb: row softmax of m·s2 + b, + eps, then iters Sinkhorn rounds (the row
    // normalisation skipped in the first), each element with the CPU's operations in the
    // CPU's order (sums in index order, C / (s + eps)); lane r·h + c owns (r, c)
    const float s2 = scale[2];
    const float *bc = base + 2 * h;
    const bool own = lane < h * h;
    const int r = own ? lane / h : 0, c = own ? lane % h : 0;
    float v = own ? __fadd_rn(__fmul_rn(__fmul_rn(sc, s_dot[2 * h + lane]), s2), bc[lane]) : 0.0f;
    float mx = -INFINITY;
    for (int j = 0; j < h; j++) mx = fmaxf(mx, __shfl_sync(0xffffffffu, v, r * h + j));
    v = expf(__fsub_rn(v, mx));
    float sm = 0;
    for (int j = 0; j < h; j++) sm = __fadd_rn(sm, __shfl_sync(0xffffffffu, v, r * h + j));
    v = __fadd_rn(__fdiv_rn(v, sm), eps);
    for (int it = 0; it < iters; it++) {
        if (it > 0) {
            sm = 0;
            for (int j = 0; j < h; j++) sm = __fadd_rn(sm, __shfl_sync(0xffffffffu, v, r * h + j));
            v = __fdiv_rn(v, __fadd_rn(sm, eps));
        }
        sm = 0;
        for (int i = 0; i < h; i++) sm = __fadd_rn(sm, __shfl_sync(0xffffffffu, v, i * h + c));
        v = __fdiv_rn(v, __fadd_rn(sm, eps));
    }
    if (own) comb_t[lane] = v;
    return true;
}

}  // namespace ds4cu

#endif
