// hc_chunk.cu — the large-chunk path of the hyper-connection sites (backend.h hc_site /
// hc_post_site) on the CUDA backend: production chunks (n_tok >= kMmqMinRows, F16 fn,
// h <= 4, d % 4 == 0), called from fused_hc.cu (ds4cu_hc_site / ds4cu_hc_post_site).
//
// Owns: k_hcc_p1 / k_hcc_ep and ds4cu_hc_chunk (hc_chunk.h). Must not: differ from the op
// sequence beyond what the contract allows (the order of the dot products behind mix,
// mix_j = s · (fn_j · H[t]) instead of fn_j · (s · H[t]), as the fused decode kernel
// k_hc_site), let a token's values depend on n_tok or on timing, use atomics.
//
// Why: the op sequence (hc_post, rmsnorm into a flat 134 MB scratch, an mmf16 GEMM with
// only 24 output rows, hc_pre, rmsnorm) costs ~1.0 / 1.2 ms per 2048-token Flash chunk;
// the fused decode kernel re-reads fn per token. Here two launches:
//  - k_hcc_p1, grid (NS i-slices, tiles of 32·T tokens), 4 warps: slice s covers the
//    elements i in [s·128, s·128 + 128) of EVERY stream (h·128 flat columns), so hc_post
//    reads y and each Hprev stream once per element and writes each H element once. The
//    block stages its fn columns (mw rows × h × 128, F16 → f32, 48 KB for Flash) in
//    shared memory. Warps run along elements: 8 chunk lanes × 4 token groups, T tokens
//    (DS4_CUDA_HCC_T, 1 or 2, default 2) per lane; per step a lane loads one float4 of
//    each stream (and y) of its T tokens, so each warp load / store instruction covers 4
//    rows × 128 contiguous bytes (full lines: coalesced), forms H (k_hc_post's
//    per-element operations and order), accumulates the f64 squares and the mw dots
//    (each fn float4 read from shared once for the lane's T tokens), and after the 4
//    steps the 8 chunk lanes of a token are combined by a fixed shuffle tree (order in
//    the kernel's comment) into its (token, slice) partials.
//  - k_hcc_ep, one block per token: the Sinkhorn warp sums the NS partials of each dot
//    and of the squares in slice order, s = 1/sqrt(ss/hw + eps) in f64 as k_rmsnorm,
//    mix_j = s·dot_j, then pre / post / comb with the CPU's per-element operations and
//    order (hc_math.cuh, shared with the fused kernel: explicit _rn operations, no contraction);
//    pre is published by a non-blocking barrier arrive while the Sinkhorn rounds go on;
//    the x warps (their H loads issued before that wait) form x = Σ_k pre[k]·H[t][k]
//    (k ascending from 0), the f64 sum of squares, scale, xn = (x·scale)·norm_w.
// The partition (NS, 128, the lanes' chunks, the tree) depends on h and d only: a token's
// values do not depend on n_tok, T or its position in the chunk.
// Traffic per 2048-token Flash chunk: p1 reads H 134 MB (hc_post_site: y 33 + Hprev 134,
// writes H 134), writes partials 7 MB, reads fn from L2 (24 KB per block, 50 MB at
// T = 2); ep reads partials 7 MB and H 134 MB, writes xn 33 MB.
// Why p1 should run near bandwidth (hc_post_site, 309 MB: ~65 us at 4.8 TB/s, ~77 at
// 4.0): the former lane = token mapping touched 32 lines 64 KB apart per warp access
// (0.58 ms measured, ~6x off); now every access is 4 full lines. The other limits, per
// call on 132 SMs: shared -> register traffic, fn 0.8 G lane values / T plus hc_post's
// coefficients 42 M, at 32 lane values per SM clock: ~100 K clocks (~55 us) at T = 2,
// about half that if the hardware packs the 4 lanes that share an fn address; CUDA-core
// work 0.8 GFMA (dots) + 0.3 G (hc_post), ~65 K clocks (~37 us) at 128 per SM clock.
// These overlap with the loads: expected ~0.08 .. 0.12 ms per call. Occupancy at T = 2
// (ptxas: 164 registers for h 4 POST): 3 blocks / 12 warps per SM; hc_site (124
// registers): 4 blocks (shared memory). No spills (ptxas -v) for any h, POST, T.
#include <math.h>
#include <stdlib.h>

#include "common.cuh"
#include "cuda_internal.h"
#include "hc_chunk.h"
#include "hc_math.cuh"

extern "C" {
#include "core/common.h"
#include "model/ggml_type.h"
}

namespace {

constexpr int kIS4 = 32;                 // float4 chunks of one stream per slice (128 elements)
constexpr int kCL = 8;                   // p1: chunk lanes per token (8 x 16 B: one 128-byte line)
constexpr int kTG = 32 / kCL;            // p1: token groups per warp
constexpr int kSteps = kIS4 / kCL;       // p1: steps per slice
constexpr int kP1Warps = 4;
constexpr int kP1Threads = kP1Warps * 32;
constexpr int kFnBatch = 8;              // p1: fn loads in flight per thread while staging
constexpr int kXWarps = 8;               // ep: warps forming x / xn (named barrier 1)
constexpr int kXThreads = kXWarps * 32;
constexpr int kEpThreads = kXThreads + 32;   // + the Sinkhorn warp (the last one)
constexpr int kEpBatch = 16;             // ep: partial slices loaded per batch by the Sinkhorn warp

struct P1Args {
    const uint8_t *fn;      // device [>= mw rows][h·d] F16, row stride fn_rb bytes (8-aligned)
    size_t fn_rb;
    const float *H;         // hc_site: [n_tok][h][d] input
    float *Ho;              // hc_post_site: [n_tok][h][d] output (hc_post)
    const float *y;         // hc_post_site: [n_tok][d]
    const float *Hp;        // hc_post_site: [n_tok][h][d] previous streams
    const float *post;      // hc_post_site: [n_tok][h] old post
    const float *comb;      // hc_post_site: [n_tok][h·h] old comb
    float *part;            // [n_tok][NS][mw] per-slice dots (unnormalised H)
    double *ssp;            // [n_tok][NS] per-slice sums of squares
    int n_tok, NS;
    int64_t d4;             // d / 4
};

struct EpArgs {
    const float *part;      // [n_tok][NS][mw]
    const double *ssp;      // [n_tok][NS]
    const float *H;         // [n_tok][h][d]
    const float *scale;     // [3]
    const float *base;      // [mw]
    const float *norm_w;    // [d]
    float *post;            // [n_tok][h]
    float *comb;            // [n_tok][h·h]
    float *xn;              // [n_tok][d]
    int NS, iters;
    int64_t d4;
    float hc_eps;
    double eps;
};

__device__ __forceinline__ void bar_x() { asm volatile("barrier.sync 1, %0;" ::"n"(kXThreads) : "memory"); }
__device__ __forceinline__ void bar_pre_arrive() { asm volatile("barrier.arrive 2, %0;" ::"n"(kEpThreads) : "memory"); }
__device__ __forceinline__ void bar_pre_sync() { asm volatile("barrier.sync 2, %0;" ::"n"(kEpThreads) : "memory"); }

__device__ __forceinline__ float4 f4z() { return make_float4(0.f, 0.f, 0.f, 0.f); }

// ---- phase 1: H (hc_post), partial dots and sums of squares per (token, slice)
// HH = h (1..4), POST: hc_post_site, T: tokens per lane (1, 2: the same values, see
// below). Dynamic shared memory (p1_smem): mw·HH·kIS4 float4 (the block's fn columns),
// then, POST, hc_post's coefficients of the block's tokens.
//
// Lane mapping: lane = kTG·c + g, c = lane / kTG in [0, kCL) the chunk lane, g the token
// group; slot u in [0, T) of group g is token t0 + u·kTG. Step st (0 .. kSteps-1) covers
// chunk q = c + kCL·st of every stream (and y): a warp's float4 load of one (stream, slot)
// reads kTG rows of 128 contiguous bytes (kCL lanes × 16 B: one full line each), and H is
// stored the same way. fn is read as fs[j][k][q]: kCL distinct float4 per instruction (no
// bank conflict, lanes c·kTG .. c·kTG + kTG-1 share an address), each value used by the
// lane's T tokens from registers.
// Order (depends on h and d only, never on T, n_tok, g, u or timing): lane c accumulates
// its chunks in step order (within a step, dot j's fma chain takes k ascending and, per
// k, x, y, z, w; the f64 squares the same order), chunks past d add zeros; then the kCL
// chunk lanes of a token are combined by a fixed tree over c's bits 2, 1, 0 (xor
// shuffles: the dots fold half of the remaining values per level, the f64 sum by a
// butterfly, a + b == b + a so both lanes of a pair agree). Lane c then holds dots
// j = c·(MWP/kCL) + i.
template <int C>
__device__ __forceinline__ void fold(float *v, int off, bool up) {
    // keep the upper half of v[0, C) when up, else the lower; add the partner's copy of it
#pragma unroll
    for (int i = 0; i < C / 2; i++) {
        const float snd = up ? v[i] : v[i + C / 2];
        const float kp = up ? v[i + C / 2] : v[i];
        v[i] = __fadd_rn(kp, __shfl_xor_sync(0xffffffffu, snd, off));
    }
}

template <int HH, bool POST, int T>
__global__ void __launch_bounds__(kP1Threads) k_hcc_p1(P1Args a) {
    constexpr int MW = (2 + HH) * HH;
    constexpr int MWP = (MW + kCL - 1) / kCL * kCL;   // dots padded to a multiple of kCL
    constexpr int NIN = POST ? HH + 1 : HH;           // float4 inputs per step: H or (Hprev, y)
    static_assert(kCL == 8 && kTG * kCL == 32 && kSteps * kCL == kIS4, "fold tree is written for 8 chunk lanes");
    extern __shared__ float4 fs[];                    // [MW][HH][kIS4]: fn columns k·d + 4·(s·kIS4 + q) ..
    const int s = blockIdx.x;
    const int64_t d4 = a.d4, i40 = (int64_t)s * kIS4;
    const int nq = (int)(d4 - i40 < kIS4 ? d4 - i40 : kIS4);   // >= 1 (NS = ceil(d4 / kIS4))
    // fn (a resident weight): staged before pdl_wait, kFnBatch loads in flight per thread
    // (a block stages 24 KB of F16 for its 32 tokens); chunks past d read as 0
    constexpr int NF = MW * HH * kIS4;
    for (int e0 = threadIdx.x; e0 < NF; e0 += kFnBatch * kP1Threads) {
        uint2 raw[kFnBatch];
#pragma unroll
        for (int r = 0; r < kFnBatch; r++) {
            const int e = e0 + r * kP1Threads;
            const int q = e % kIS4, k = (e / kIS4) % HH, j = e / (kIS4 * HH);
            raw[r] = make_uint2(0u, 0u);
            if (e < NF && q < nq)
                raw[r] = __ldg((const uint2 *)(a.fn + (size_t)j * a.fn_rb + (size_t)((k * d4 + i40 + q) * 8)));
        }
#pragma unroll
        for (int r = 0; r < kFnBatch; r++) {
            const int e = e0 + r * kP1Threads;
            const float2 lo = __half22float2(*(const __half2 *)&raw[r].x), hi = __half22float2(*(const __half2 *)&raw[r].y);
            if (e < NF) fs[e] = make_float4(lo.x, lo.y, hi.x, hi.y);
        }
    }
    __syncthreads();                          // the only block-wide barrier
    ds4cu::pdl_wait();                        // H / y / Hprev / post / comb: the previous kernels'
    ds4cu::pdl_trigger();
    const int lane = threadIdx.x & 31, g = lane % kTG, c = lane / kTG;
    const int t0 = (blockIdx.y * kP1Warps + (int)(threadIdx.x >> 5)) * (kTG * T) + g;
    const int64_t hw4 = HH * d4;
    const float4 *src4 = (const float4 *)(POST ? a.Hp : a.H);
    const float4 *y4 = (const float4 *)a.y;
    float4 *ho4 = (float4 *)a.Ho;
    // hc_post's coefficients of the warp's kTG·T tokens, staged in a warp-private smem
    // area (registers are the occupancy limit): [slot kTG·u + g][post HH | comb HH·HH]
    constexpr int NCF = HH + HH * HH;
    float *cf = (float *)(fs + MW * HH * kIS4) + (threadIdx.x >> 5) * (kTG * T * NCF);
    if (POST) {
        for (int e = lane; e < kTG * T * NCF; e += 32) {
            const int64_t t = t0 - g + e / NCF;   // the warp's first token + slot
            const int r = e % NCF;
            cf[e] = t >= a.n_tok ? 0.0f : r < HH ? a.post[t * HH + r] : a.comb[t * HH * HH + (r - HH)];
        }
        __syncwarp();
    }
    bool ok[T];
#pragma unroll
    for (int u = 0; u < T; u++) ok[u] = t0 + u * kTG < a.n_tok;
    float acc[T][MWP];
    double ss[T];
#pragma unroll
    for (int u = 0; u < T; u++) {
        ss[u] = 0;
#pragma unroll
        for (int j = 0; j < MWP; j++) acc[u][j] = 0.0f;
    }
#pragma unroll 1
    for (int st = 0; st < kSteps; st++) {
        const int q = c + kCL * st;           // < kIS4: fs[.][.][q] is in bounds (0 past d)
        const int64_t i4 = i40 + q;
        // every input of the step first (T·NIN float4 loads in flight), then stream by
        // stream: H's chunk (hc_post), its squares, its products with the mw fn columns
        float4 in[T][NIN];
        bool ld[T];
#pragma unroll
        for (int u = 0; u < T; u++) {
            const int64_t t = t0 + u * kTG;
            ld[u] = ok[u] && q < nq;
#pragma unroll
            for (int k = 0; k < NIN; k++) in[u][k] = f4z();
            if (ld[u]) {
#pragma unroll
                for (int k = 0; k < HH; k++) in[u][k] = src4[t * hw4 + k * d4 + i4];
                if (POST) in[u][HH] = y4[t * d4 + i4];
            }
        }
#pragma unroll
        for (int k = 0; k < HH; k++) {
            float4 hv[T];
#pragma unroll
            for (int u = 0; u < T; u++) {
                if (POST) {
                    // k_hc_post's operations in its order: post·y, then + comb[kk][k]·Hprev[kk]
                    // for kk ascending, each rounded (volatile: re-read per step, not held
                    // in registers)
                    const volatile float *cu = cf + (kTG * u + g) * NCF;   // post[k] = cu[k], comb[kk][k] = cu[HH + kk·HH + k]
                    const float p = cu[k];
                    const float4 yv = in[u][HH];
                    float4 o = make_float4(__fmul_rn(p, yv.x), __fmul_rn(p, yv.y), __fmul_rn(p, yv.z), __fmul_rn(p, yv.w));
#pragma unroll
                    for (int kk = 0; kk < HH; kk++) {
                        const float cw = cu[HH + kk * HH + k];
                        o.x = __fadd_rn(o.x, __fmul_rn(cw, in[u][kk].x));
                        o.y = __fadd_rn(o.y, __fmul_rn(cw, in[u][kk].y));
                        o.z = __fadd_rn(o.z, __fmul_rn(cw, in[u][kk].z));
                        o.w = __fadd_rn(o.w, __fmul_rn(cw, in[u][kk].w));
                    }
                    hv[u] = o;
                    if (ld[u]) ho4[(t0 + u * kTG) * hw4 + k * d4 + i4] = o;
                } else {
                    hv[u] = in[u][k];
                }
                ss[u] += (double)hv[u].x * hv[u].x;
                ss[u] += (double)hv[u].y * hv[u].y;
                ss[u] += (double)hv[u].z * hv[u].z;
                ss[u] += (double)hv[u].w * hv[u].w;
            }
#pragma unroll
            for (int j = 0; j < MW; j++) {
                const float4 f = fs[(j * HH + k) * kIS4 + q];   // used by the lane's T tokens
#pragma unroll
                for (int u = 0; u < T; u++) {
                    acc[u][j] = fmaf(f.x, hv[u].x, acc[u][j]);
                    acc[u][j] = fmaf(f.y, hv[u].y, acc[u][j]);
                    acc[u][j] = fmaf(f.z, hv[u].z, acc[u][j]);
                    acc[u][j] = fmaf(f.w, hv[u].w, acc[u][j]);
                }
            }
        }
    }
    // the fixed tree over the chunk lanes c (lane bits 2..4: xor 16, 8, 4 = c's bits 2, 1, 0)
    const int NS = a.NS;
#pragma unroll
    for (int u = 0; u < T; u++) {
        fold<MWP>(acc[u], 4 * kTG, (c & 4) != 0);
        fold<MWP / 2>(acc[u], 2 * kTG, (c & 2) != 0);
        fold<MWP / 4>(acc[u], kTG, (c & 1) != 0);
#pragma unroll
        for (int o = 4 * kTG; o >= kTG; o >>= 1) ss[u] += __shfl_xor_sync(0xffffffffu, ss[u], o);
        const int64_t t = t0 + u * kTG;
        if (!ok[u]) continue;
        float *pp = a.part + (t * NS + s) * MW;
#pragma unroll
        for (int i = 0; i < MWP / kCL; i++) {
            const int j = c * (MWP / kCL) + i;
            if (j < MW) pp[j] = acc[u][i];
        }
        if (c == 0) a.ssp[t * NS + s] = ss[u];
    }
}

// ---- epilogue: one block per token. KV > 0: x held in registers (d4 <= KV·kXThreads);
// KV == 0: x staged in xn (each thread re-reads only what it wrote).
template <int HH, int KV>
__global__ void __launch_bounds__(kEpThreads) k_hcc_ep(EpArgs a) {
    constexpr int MW = (2 + HH) * HH, h = HH;
    constexpr int KVR = KV > 0 ? KV : 1;
    __shared__ float s_dot[MW];
    __shared__ float s_pre[HH];
    __shared__ double s_red[kXWarps];
    const int t = blockIdx.x, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int64_t d4 = a.d4;
    const float4 *w4 = (const float4 *)a.norm_w;
    float4 wv[KVR];
    if (KV > 0 && w < kXWarps) {             // norm_w (a weight): before pdl_wait
#pragma unroll
        for (int k = 0; k < KVR; k++) {
            const int64_t i = threadIdx.x + (int64_t)k * kXThreads;
            wv[k] = i < d4 ? w4[i] : f4z();
        }
    }
    ds4cu::pdl_wait();                        // partials, H: the phase-1 kernel's
    ds4cu::pdl_trigger();
    if (w == kXWarps) {
        // the Sinkhorn warp: dots and the sum of squares, slices in ascending order
        const int NS = a.NS;
        // lanes < MW: dot `lane`, lane 31: the squares (MW <= 24). The loads of kEpBatch
        // slices are issued together before their in-order adds (the former loops were
        // 2 x NS dependent L2 round trips, one path after the other: ~4 us per block at
        // NS 32, most of the block's life); the sums keep their order and start values.
        const float *pp = a.part + (int64_t)t * NS * MW;
        const double *sq = a.ssp + (int64_t)t * NS;
        const bool dl = lane < MW, sl = lane == 31;
        float dot = 0.0f;
        double ssf = 0;
        for (int s0 = 0; s0 < NS; s0 += kEpBatch) {
            float pv[kEpBatch];
            double sv[kEpBatch];
#pragma unroll
            for (int i = 0; i < kEpBatch; i++) {
                const int s = s0 + i;
                pv[i] = dl && s < NS ? pp[(int64_t)s * MW + lane] : 0.0f;
                sv[i] = sl && s < NS ? sq[s] : 0.0;
            }
#pragma unroll
            for (int i = 0; i < kEpBatch; i++) {
                if (s0 + i < NS) {
                    dot = __fadd_rn(dot, pv[i]);
                    ssf += sv[i];
                }
            }
        }
        ssf = __shfl_sync(0xffffffffu, ssf, 31);
        if (lane < MW) s_dot[lane] = dot;
        __syncwarp();
        // rmsnorm's scale of the flat row, then pre / post / comb (hc_math.cuh, shared with
        // fused_hc.cu; h·h <= 16: one lane per comb element); pre published to the x warps
        // by a non-blocking arrive on barrier 2
        const float sc = (float)(1.0 / sqrt(ssf / (double)(4 * HH * d4) + a.eps));
        ds4cu::hc_pre_post_comb<HH>(sc, s_dot, s_pre, a.scale, a.base, a.post + (int64_t)t * h,
                                    a.comb + (int64_t)t * h * h, h, a.iters, a.hc_eps, lane, [] { bar_pre_arrive(); });
        return;                              // no block-wide barrier follows
    }

    // x warps: x = Σ_k pre[k]·H[t][k] (k ascending, from 0), then xn = (x·scale)·norm_w
    const int xt = threadIdx.x;
    const float4 *H4 = (const float4 *)a.H + (int64_t)t * HH * d4;
    float4 *x4 = (float4 *)a.xn + (int64_t)t * d4;
    double ss = 0;
    if (KV > 0) {
        float4 hv[KVR][HH];                  // issued before the wait for pre
#pragma unroll
        for (int k = 0; k < KVR; k++) {
            const int64_t i = xt + (int64_t)k * kXThreads;
#pragma unroll
            for (int c = 0; c < HH; c++) hv[k][c] = i < d4 ? H4[c * d4 + i] : f4z();
        }
        bar_pre_sync();
        float pr[HH];
#pragma unroll
        for (int c = 0; c < HH; c++) pr[c] = s_pre[c];
        float4 xs[KVR];
#pragma unroll
        for (int k = 0; k < KVR; k++) {
            float4 o = f4z();
#pragma unroll
            for (int c = 0; c < HH; c++) {
                o.x = __fadd_rn(o.x, __fmul_rn(pr[c], hv[k][c].x));
                o.y = __fadd_rn(o.y, __fmul_rn(pr[c], hv[k][c].y));
                o.z = __fadd_rn(o.z, __fmul_rn(pr[c], hv[k][c].z));
                o.w = __fadd_rn(o.w, __fmul_rn(pr[c], hv[k][c].w));
            }
            if (xt + (int64_t)k * kXThreads < d4) {
                ss += (double)o.x * o.x;
                ss += (double)o.y * o.y;
                ss += (double)o.z * o.z;
                ss += (double)o.w * o.w;
            }
            xs[k] = o;
        }
        ss = ds4cu::warp_sum_d(ss);
        if (lane == 0) s_red[w] = ss;
        bar_x();
        double tot = 0;
        for (int i = 0; i < kXWarps; i++) tot += s_red[i];
        const float scale = (float)(1.0 / sqrt(tot / (double)(4 * d4) + a.eps));
#pragma unroll
        for (int k = 0; k < KVR; k++) {
            const int64_t i = xt + (int64_t)k * kXThreads;
            if (i < d4) x4[i] = ds4cu::rms_scale4(xs[k], scale, true, wv[k]);
        }
    } else {
        bar_pre_sync();
        float pr[HH];
#pragma unroll
        for (int c = 0; c < HH; c++) pr[c] = s_pre[c];
        for (int64_t i = xt; i < d4; i += kXThreads) {
            float4 o = f4z();
#pragma unroll
            for (int c = 0; c < HH; c++) {
                const float4 hv = H4[c * d4 + i];
                o.x = __fadd_rn(o.x, __fmul_rn(pr[c], hv.x));
                o.y = __fadd_rn(o.y, __fmul_rn(pr[c], hv.y));
                o.z = __fadd_rn(o.z, __fmul_rn(pr[c], hv.z));
                o.w = __fadd_rn(o.w, __fmul_rn(pr[c], hv.w));
            }
            x4[i] = o;                       // re-read below by this same thread only
            ss += (double)o.x * o.x;
            ss += (double)o.y * o.y;
            ss += (double)o.z * o.z;
            ss += (double)o.w * o.w;
        }
        ss = ds4cu::warp_sum_d(ss);
        if (lane == 0) s_red[w] = ss;
        bar_x();
        double tot = 0;
        for (int i = 0; i < kXWarps; i++) tot += s_red[i];
        const float scale = (float)(1.0 / sqrt(tot / (double)(4 * d4) + a.eps));
        for (int64_t i = xt; i < d4; i += kXThreads) x4[i] = ds4cu::rms_scale4(x4[i], scale, true, w4[i]);
    }
}

bool al16(const void *p) { return (uintptr_t)p % 16 == 0; }

// Tokens per lane of k_hcc_p1 (DS4_CUDA_HCC_T = 1 or 2; default 2): a speed knob
// only, the values do not depend on it (k_hcc_p1's order comment).
int p1_tokens_per_lane() {
    static const int tl = [] {
        const char *e = getenv("DS4_CUDA_HCC_T");
        return e && atoi(e) == 1 ? 1 : 2;
    }();
    return tl;
}

// k_hcc_p1's dynamic shared memory: fn columns (48 KB at h 4), POST: + coefficients.
template <int HH, bool POST>
constexpr size_t p1_smem(int tl) {
    return (size_t)(2 + HH) * HH * HH * kIS4 * sizeof(float4) +
           (POST ? (size_t)kP1Warps * kTG * tl * (HH + HH * HH) * sizeof(float) : 0);
}

template <int HH, bool POST>
void launch_p1(const P1Args &p, int n_tok, cudaStream_t st) {
    static const bool attr_ok = [] {   // over 48 KB at h 4 (POST)
        DS4CU_CK(cudaFuncSetAttribute(k_hcc_p1<HH, POST, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)p1_smem<HH, POST>(1)));
        DS4CU_CK(cudaFuncSetAttribute(k_hcc_p1<HH, POST, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)p1_smem<HH, POST>(2)));
        return true;
    }();
    (void)attr_ok;
    const int tl = p1_tokens_per_lane(), tpb = kP1Warps * kTG * tl;   // tokens per block
    const dim3 g1((unsigned)p.NS, (unsigned)((n_tok + tpb - 1) / tpb));
    void (*k)(P1Args) = tl == 1 ? k_hcc_p1<HH, POST, 1> : k_hcc_p1<HH, POST, 2>;
    DS4CU_CK(ds4cu::launch(k, g1, dim3(kP1Threads), p1_smem<HH, POST>(tl), st, p));
}

template <int HH>
void launch_h(ds4_backend *be, const P1Args &p, const EpArgs &e, bool post, int kv, int n_tok) {
    cudaStream_t st = ds4cu::stream(be);
    if (post) launch_p1<HH, true>(p, n_tok, st);
    else launch_p1<HH, false>(p, n_tok, st);
    void (*k)(EpArgs) = kv == 1 ? k_hcc_ep<HH, 1> : kv == 2 ? k_hcc_ep<HH, 2> : kv == 4 ? k_hcc_ep<HH, 4> : k_hcc_ep<HH, 0>;
    DS4CU_CK(ds4cu::launch(k, dim3((unsigned)n_tok), dim3(kEpThreads), 0, st, e));
}

}  // namespace

bool ds4cu_hc_chunk(ds4_backend *be, const ds4_tensor *fn, const float *scale, const float *base, const float *y,
                    const float *Hp, const float *H, int n_tok, int h, int64_t d, int iters, double hc_eps,
                    double eps, const float *norm_w, float *post, float *comb, float *xn) {
    if (fn->type != DS4_TYPE_F16 || h < 1 || h > 4 || d < 4 || d % 4 != 0 || n_tok <= 0) return false;
    const uint8_t *fd = (const uint8_t *)ds4cu::dev_of(be, fn->data);
    if ((uintptr_t)fd % 8 != 0 || fn->row_bytes % 8 != 0) return false;
    if (!al16(H) || !al16(xn) || !al16(norm_w) || (y && (!al16(y) || !al16(Hp)))) return false;
    const int mw = (2 + h) * h;
    const int64_t d4 = d / 4, NS = (d4 + kIS4 - 1) / kIS4;
    if (NS > 65535 || (n_tok + kP1Warps * kTG - 1) / (kP1Warps * kTG) > 65535) return false;   // p1's grid at T = 1
    // scratch: ssp (f64) then part (f32)
    const size_t ssp_b = ((size_t)n_tok * NS * sizeof(double) + 255) & ~(size_t)255;
    uint8_t *scr = (uint8_t *)ds4cu::scratch(be, ds4cu::SCR_HC, ssp_b + (size_t)n_tok * NS * mw * sizeof(float));
    P1Args p;
    p.fn = fd;
    p.fn_rb = (size_t)fn->row_bytes;
    p.H = H;
    p.Ho = (float *)H;                        // written by the post variant only
    p.y = y;
    p.Hp = Hp;
    p.post = post;
    p.comb = comb;
    p.ssp = (double *)scr;
    p.part = (float *)(scr + ssp_b);
    p.n_tok = n_tok;
    p.NS = (int)NS;
    p.d4 = d4;
    EpArgs e;
    e.part = p.part;
    e.ssp = p.ssp;
    e.H = H;
    e.scale = scale;
    e.base = base;
    e.norm_w = norm_w;
    e.post = post;
    e.comb = comb;
    e.xn = xn;
    e.NS = (int)NS;
    e.iters = iters;
    e.d4 = d4;
    e.hc_eps = (float)hc_eps;
    e.eps = eps;
    const int kv = d4 <= kXThreads ? 1 : d4 <= 2 * kXThreads ? 2 : d4 <= 4 * kXThreads ? 4 : 0;
    const bool ps = y != NULL;
    switch (h) {
    case 1: launch_h<1>(be, p, e, ps, kv, n_tok); break;
    case 2: launch_h<2>(be, p, e, ps, kv, n_tok); break;
    case 3: launch_h<3>(be, p, e, ps, kv, n_tok); break;
    default: launch_h<4>(be, p, e, ps, kv, n_tok); break;
    }
    return true;
}
