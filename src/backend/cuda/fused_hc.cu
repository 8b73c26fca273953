// fused_hc.cu — the fused hyper-connection site hc_site (backend.h, "optional fused ops")
// of the CUDA backend: rmsnorm(flat H) → fn · flat → hc_pre (pre/post/comb, Sinkhorn, x)
// → rmsnorm(x) · norm_w for n_tok tokens in ONE launch (the op sequence costs 4 launches
// and ~39 us per site in decode; 86 sites per token).
//
// Also hc_post_site (hc_post, then hc_site on its result, in the same one launch: phase 1
// computes its slice of H from y, Hprev, post, comb instead of reading it; see below).
//
// Owns: k_hc_site / k_hc_post_site and ds4cu_hc_site / ds4cu_hc_post_site (variant choice,
// scratch, the op-sequence fallbacks for fn types other than F16 / F32). Must not: differ
// from the op sequence beyond what the contract allows (the order and rounding of the dot
// products behind mix), let a token's values depend on n_tok or on timing, or leave a
// CNT_HC counter non-zero.
//
// Design (grid = S column slices × n_tok tokens, S = ceil(h·d / 256) from the shape only):
//  - phase 1, every block: 256 columns of token t's flattened row H[t] (width hw = h·d).
//    Warp w takes fn rows w, w + NW, ... and writes the warp-reduced partial dot of each
//    row with the UNnormalised H slice; the last warp also writes the slice's f64 sum of
//    squares. fn (resident weights) is loaded before pdl_wait, so with programmatic
//    dependent launch its latency overlaps the previous kernel's tail.
//  - the last block of token t (threadfence + counter, the counter reset to 0 by it) sums
//    the S partials of each row in a fixed order (lanes over slices, then a fixed shuffle
//    tree; S depends on the shape only, so the result does not depend on n_tok or on which
//    block came last), s = 1/sqrt(ss/hw + eps) exactly as rmsnorm, mix_j = s · dot_j (the
//    allowed difference: the op sequence computes fn · (H·s)), then hc_pre's math with the
//    CPU's per-element operations and order: pre/post by threads < h; the Sinkhorn by the
//    extra warp NW−1 (it writes comb and is the tail: ~20 dependent division rounds) while
//    warps 0..7 form x = Σ_k pre[k]·H[t][k] and xn = (x · scale) · norm_w (rmsnorm with
//    an f64 sum of squares, reduced over those 256 threads with a named barrier).
//  - fast epilogue (h <= 4, d % 4 == 0, d <= 4096, 16-byte aligned rows): every x thread
//    prefetches its chunks of H[t] and norm_w into L1 right after it knows it is last,
//    before the partial reduction, so that memory round trip overlaps the other; x then
//    lives in registers. Otherwise a generic loop (any h <= 32, any d; x staged in xn,
//    each thread re-reading only what it wrote).
// hc_post_site (template P > 0): phase 1 forms its slice of H[t] with k_hc_post's exact
// per-element operations and order (column c = k·d + i of the flat row is stream k, element
// i: s = post[k]·y[i], then s += comb[k'·h + k]·Hprev[k'][i] for k' ascending, each op
// rounded), every warp the same bits; the Sinkhorn warp also stores it to H. The epilogue
// re-reads H[t] (other blocks' stores) with ld.cg after the fence/counter handoff, never
// from L1 (no L1 prefetch of H there). Old post/comb: read in phase 1 only; token t's
// epilogue overwrites them, and it runs only after every block of token t counted in,
// i.e. after all of their phase-1 reads; no block reads another token's post/comb.
// Resources (nvcc 13, sm_90a): 56 registers for the fast variants, no spills, 8.6 KB static
// shared memory, 288 threads: 4 blocks per SM in phase 1. hc_post_site: 90-92 registers (80
// for h > 4), no spills, 2 blocks per SM; its scalar slow path (unaligned rows or
// d % 4 != 0: tiny models only) 168 registers and ~50 bytes of call-save spills.
#include <math.h>

#include "common.cuh"
#include "cuda_internal.h"
#include "cuda_mmq.h"
#include "hc_chunk.h"
#include "hc_math.cuh"
#include "moe_prefill.h"

extern "C" {
#include "core/common.h"
#include "model/ggml_type.h"
}

namespace {

constexpr int kCols = 256;                  // columns of hw per phase-1 block (8 per lane)
constexpr int kXWarps = 8;                  // epilogue warps forming x / xn (named barrier 1)
constexpr int kNW = kXWarps + 1;            // + the Sinkhorn warp (the last one)
constexpr int kThreads = kNW * 32;
constexpr int kXThreads = kXWarps * 32;
constexpr int kRU = 3;                      // fn rows per warp per load group (Flash: 24 / 9 → 3)
constexpr int kMaxH = 32, kMaxMw = (2 + kMaxH) * kMaxH;
constexpr int kTokPerLaunch = 1024;         // CNT_HC has 1024 counters (cuda_internal.h)

struct HcArgs {
    const uint8_t *fn;      // device [mw rows][hw] F16 or F32, row stride fn_rb bytes
    size_t fn_rb;
    int f16;                // fn type: 1 F16, 0 F32
    const float *scale;     // [3]
    const float *base;      // [mw]
    const float *H;         // [n_tok][h][d] (post variants: written here, through Ho)
    float *Ho;              // post variants: = H, the hc_post output
    const float *y;         // post variants: [n_tok][d] sublayer output
    const float *Hp;        // post variants: [n_tok][h][d] previous streams (not aliasing H)
    const float *norm_w;    // [d]
    float *post;            // [n_tok][h]
    float *comb;            // [n_tok][h*h]
    float *xn;              // [n_tok][d]
    float *part;            // scratch [n_tok][mw][S]: per-slice partial dots
    double *ssp;            // scratch [n_tok][S]: per-slice sums of squares
    unsigned *cnt;          // [n_tok] last-block counters (zero on entry and exit)
    int h, mw, S, iters;
    int64_t d, hw;
    float hc_eps;
    float rd, rd4;          // post variants: 1/d, 1/(d/4) (stream_of)
    double eps;
};

using ds4cu::warp_sum;
using ds4cu::warp_sum_d;
// Named barriers, non-.aligned forms (safe where a warp may not have reconverged; the
// count is in threads). Barrier 1: the kXWarps x warps only (the Sinkhorn warp never
// joins it).
__device__ __forceinline__ void bar_x() { asm volatile("barrier.sync 1, %0;" ::"n"(kXThreads) : "memory"); }
// Barrier 2 (all kThreads): the Sinkhorn warp arrives once s_pre is written (and goes on
// without waiting), the x warps wait on it.
__device__ __forceinline__ void bar_pre_arrive() { asm volatile("barrier.arrive 2, %0;" ::"n"(kThreads) : "memory"); }
__device__ __forceinline__ void bar_pre_sync() { asm volatile("barrier.sync 2, %0;" ::"n"(kThreads) : "memory"); }

__device__ __forceinline__ void prefetch_l1(const void *p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

// The 8 columns of slice b that a lane owns: VEC: two float4 chunks (b·64 + lane + 32q),
// scalar: b·256 + lane + 32q. Columns past hw read as 0 (they add 0 to every sum).
template <bool VEC>
__device__ __forceinline__ void load_h(const float *row, int64_t hw, int b, int lane, float v[8]) {
    if (VEC) {
        const float4 *r4 = (const float4 *)row;
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const int64_t c = (int64_t)b * (kCols / 4) + lane + 32 * q;
            const float4 x = c < hw / 4 ? r4[c] : make_float4(0.f, 0.f, 0.f, 0.f);
            v[4 * q] = x.x, v[4 * q + 1] = x.y, v[4 * q + 2] = x.z, v[4 * q + 3] = x.w;
        }
    } else {
#pragma unroll
        for (int q = 0; q < 8; q++) {
            const int64_t c = (int64_t)b * kCols + lane + 32 * q;
            v[q] = c < hw ? row[c] : 0.0f;
        }
    }
}
template <bool VEC>
__device__ __forceinline__ void load_fn(const uint8_t *row, int f16, int64_t hw, int b, int lane, float v[8]) {
    if (VEC) {
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const int64_t c = (int64_t)b * (kCols / 4) + lane + 32 * q;
            float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
            if (c < hw / 4) {
                if (f16) {
                    const uint2 u = ((const uint2 *)row)[c];
                    const float2 lo = __half22float2(*(const __half2 *)&u.x), hi = __half22float2(*(const __half2 *)&u.y);
                    x = make_float4(lo.x, lo.y, hi.x, hi.y);
                } else {
                    x = ((const float4 *)row)[c];
                }
            }
            v[4 * q] = x.x, v[4 * q + 1] = x.y, v[4 * q + 2] = x.z, v[4 * q + 3] = x.w;
        }
    } else {
#pragma unroll
        for (int q = 0; q < 8; q++) {
            const int64_t c = (int64_t)b * kCols + lane + 32 * q;
            v[q] = c >= hw ? 0.0f : f16 ? __half2float(((const __half *)row)[c]) : ((const float *)row)[c];
        }
    }
}

// The stream k = c / d of flat column c < h·d (h <= 32) without an integer division (ptxas
// makes those subroutine calls, and the fn values held across them were spilled): the
// float quotient is within ~1e-5 of the exact one for quotients < 32 (three roundings of
// 2^-24), so truncation is off by at most one, which one integer compare fixes.
__device__ __forceinline__ int64_t stream_of(int64_t c, int64_t d, float rd) {
    int64_t k = (int64_t)((float)c * rd);
    if (k * d > c) k--;
    else if ((k + 1) * d <= c) k++;
    return k;
}

// hc_post of the 8 columns of slice b that a lane owns (load_h's columns; past hw: 0),
// with k_hc_post's operations in its order. VEC: d % 4 == 0 (a float4 chunk lies in one
// stream) and 16-byte y / Hp rows; hw / 4 < 2^31 (host-checked). P == 1: h <= 4 (all
// loads unrolled, issued before use); P == 2: any h.
template <bool VEC, int P>
__device__ __forceinline__ void post_h(const HcArgs &a, int t, int b, int lane, float v[8]) {
    const int h = a.h;
    const int64_t d = a.d, hw = a.hw;
    const float *yt = a.y + (int64_t)t * d, *Hp = a.Hp + (int64_t)t * hw;
    const float *pt = a.post + (int64_t)t * h, *ct = a.comb + (int64_t)t * h * h;
    if (VEC) {
        const unsigned d4 = (unsigned)(d / 4), n4 = (unsigned)(hw / 4);
        const float4 *y4 = (const float4 *)yt, *H4 = (const float4 *)Hp;
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const unsigned c = (unsigned)b * (kCols / 4) + lane + 32 * q;
            float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
            if (c < n4) {
                // stream k, float4 chunk i of that stream
                const unsigned k = (unsigned)stream_of(c, d4, a.rd4), i = c - k * d4;
                const float4 yv = y4[i];
                const float pk = pt[k];
                if (P == 1) {
                    float cm[4];
                    float4 hv[4];
#pragma unroll
                    for (int kk = 0; kk < 4; kk++)
                        if (kk < h) cm[kk] = ct[kk * h + k], hv[kk] = H4[kk * d4 + i];
                    o = make_float4(__fmul_rn(pk, yv.x), __fmul_rn(pk, yv.y), __fmul_rn(pk, yv.z), __fmul_rn(pk, yv.w));
#pragma unroll
                    for (int kk = 0; kk < 4; kk++)
                        if (kk < h) {
                            o.x = __fadd_rn(o.x, __fmul_rn(cm[kk], hv[kk].x));
                            o.y = __fadd_rn(o.y, __fmul_rn(cm[kk], hv[kk].y));
                            o.z = __fadd_rn(o.z, __fmul_rn(cm[kk], hv[kk].z));
                            o.w = __fadd_rn(o.w, __fmul_rn(cm[kk], hv[kk].w));
                        }
                } else {
                    o = make_float4(__fmul_rn(pk, yv.x), __fmul_rn(pk, yv.y), __fmul_rn(pk, yv.z), __fmul_rn(pk, yv.w));
                    for (int kk = 0; kk < h; kk++) {
                        const float cm = ct[kk * h + k];
                        const float4 hv = H4[(unsigned)kk * d4 + i];
                        o.x = __fadd_rn(o.x, __fmul_rn(cm, hv.x));
                        o.y = __fadd_rn(o.y, __fmul_rn(cm, hv.y));
                        o.z = __fadd_rn(o.z, __fmul_rn(cm, hv.z));
                        o.w = __fadd_rn(o.w, __fmul_rn(cm, hv.w));
                    }
                }
            }
            v[4 * q] = o.x, v[4 * q + 1] = o.y, v[4 * q + 2] = o.z, v[4 * q + 3] = o.w;
        }
    } else {                                 // the slow path (any d, any alignment)
#pragma unroll
        for (int q = 0; q < 8; q++) {
            const int64_t c = (int64_t)b * kCols + lane + 32 * q;
            float s = 0.0f;
            if (c < hw) {
                const int64_t k = stream_of(c, d, a.rd), i = c - k * d;
                s = __fmul_rn(pt[k], yt[i]);
                for (int kk = 0; kk < h; kk++) s = __fadd_rn(s, __fmul_rn(ct[kk * h + k], Hp[kk * d + i]));
            }
            v[q] = s;
        }
    }
}
// Store load_h's columns of slice b (those < hw) to the flat row.
template <bool VEC>
__device__ __forceinline__ void store_h(float *row, int64_t hw, int b, int lane, const float v[8]) {
    if (VEC) {
        float4 *r4 = (float4 *)row;
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const int64_t c = (int64_t)b * (kCols / 4) + lane + 32 * q;
            if (c < hw / 4) r4[c] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
        }
    } else {
#pragma unroll
        for (int q = 0; q < 8; q++) {
            const int64_t c = (int64_t)b * kCols + lane + 32 * q;
            if (c < hw) row[c] = v[q];
        }
    }
}

// KV > 0: fast epilogue (h <= 4, d4 = d/4 <= KV·256, aligned); KV == 0: generic epilogue.
// VEC: float4 phase 1 (hw % 4 == 0, aligned H and fn rows). P: 0 hc_site (H read), 1 / 2
// hc_post_site (H computed in phase 1 by post_h<VEC, P>).
template <int KV, bool VEC, int P>
__device__ __forceinline__ void hc_body(const HcArgs &a) {
    __shared__ float s_dot[kMaxMw];          // Σ over slices of fn_j · H[t] (unnormalised)
    __shared__ float s_C[kMaxH * kMaxH];     // Sinkhorn matrix (h*h > 32 only)
    __shared__ float s_pre[kMaxH];
    __shared__ double s_red[kXWarps];
    __shared__ int s_last;

    const int b = blockIdx.x, t = blockIdx.y;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int S = a.S, mw = a.mw, h = a.h;
    const int64_t hw = a.hw, d = a.d;
    const float *Ht = a.H + (int64_t)t * hw;

    // ---- phase 1: partial dots of this slice with fn rows w, w + kNW, ...
    float f[kRU][8], xv[8];
#pragma unroll
    for (int u = 0; u < kRU; u++) {          // weights: safe before pdl_wait
        const int j = w + kNW * u;
        if (j < mw) load_fn<VEC>(a.fn + (size_t)j * a.fn_rb, a.f16, hw, b, lane, f[u]);
    }
    ds4cu::pdl_wait();                        // H, scratch and counters: after the previous kernel
    ds4cu::pdl_trigger();
    if constexpr (P == 0) {
        load_h<VEC>(Ht, hw, b, lane, xv);
    } else {
        // the old post/comb of token t are read here only, before this block counts in
        // below: token t's epilogue (which overwrites them) runs after all S arrivals
        post_h<VEC, P>(a, t, b, lane, xv);
        if (w == kNW - 1) store_h<VEC>(a.Ho + (int64_t)t * hw, hw, b, lane, xv);
    }
    if (w == kNW - 1) {
        double ss = 0;
#pragma unroll
        for (int e = 0; e < 8; e++) ss += (double)xv[e] * xv[e];
        ss = warp_sum_d(ss);
        if (lane == 0) a.ssp[(int64_t)t * S + b] = ss;
    }
    for (int j0 = w;;) {
#pragma unroll
        for (int u = 0; u < kRU; u++) {
            const int j = j0 + kNW * u;
            if (j < mw) {                    // warp-uniform
                float acc = 0;
#pragma unroll
                for (int e = 0; e < 8; e++) acc = fmaf(f[u][e], xv[e], acc);
                acc = warp_sum(acc);
                if (lane == 0) a.part[((int64_t)t * mw + j) * S + b] = acc;
            }
        }
        j0 += kNW * kRU;
        if (j0 >= mw) break;
#pragma unroll
        for (int u = 0; u < kRU; u++) {      // next group (mw > 27 only: h >= 5)
            const int j = j0 + kNW * u;
            if (j < mw) load_fn<VEC>(a.fn + (size_t)j * a.fn_rb, a.f16, hw, b, lane, f[u]);
        }
    }
    // publish the partials and count this slice in; the S-th arrival is the last block.
    // (The cooperative-groups grid-barrier pattern: the block barrier orders every
    // thread's stores before thread 0's gpu-scope fence and atomic; the last block's
    // thread 0 fences again before the barrier that releases its readers, who read the
    // partials with ld.cg, never from L1.)
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        const bool last = atomicAdd(&a.cnt[t], 1u) == (unsigned)(S - 1);
        if (last) {
            __threadfence();
            a.cnt[t] = 0;                    // no other block of this launch touches it again
        }
        s_last = last;
    }
    __syncthreads();
    if (!s_last) return;                     // block-uniform

    // ---- epilogue (one block per token)
    const bool xw = w < kXWarps;
    const int xt = threadIdx.x;              // x thread index (valid when xw)
    constexpr int KVR = KV > 0 ? KV : 1;
    const int64_t d4 = d / 4;
    const float4 *H4 = (const float4 *)Ht, *w4 = (const float4 *)a.norm_w;
    if (KV > 0 && xw) {
        // pull this thread's chunks of H[t] and norm_w into L1 now, so that their memory
        // latency overlaps the partial reduction; prefetches hold no registers (loads
        // held in registers across it would raise the kernel's register count, which
        // phase 1's occupancy pays in prefill)
#pragma unroll
        for (int k = 0; k < KVR; k++) {
            const int64_t i = xt + (int64_t)k * kXThreads;
            if (i < d4) {
                // post variants: H[t] was just written by other blocks: read with ld.cg
                // below, never via L1
                if constexpr (P == 0) {
#pragma unroll
                    for (int c = 0; c < 4; c++)
                        if (c < h) prefetch_l1(H4 + c * d4 + i);
                }
                prefetch_l1(w4 + i);
            }
        }
    }
    // mix: row r < mw sums its S partials (lanes over slices, fixed shuffle tree); the
    // Sinkhorn warp also sums the f64 squares. The divisions / sqrt that follow (ptxas
    // subroutine calls) run in the Sinkhorn warp's branch, where no x-path value is live:
    // values live across such a call were spilled to the stack in an earlier version.
    for (int r = w; r < mw; r += kNW) {      // warp-uniform
        const float *p = a.part + ((int64_t)t * mw + r) * S;
        float acc = 0;
        for (int i = lane; i < S; i += 32) acc += __ldcg(p + i);
        acc = warp_sum(acc);
        if (lane == 0) s_dot[r] = acc;
    }
    double ssf = 0;
    if (w == kNW - 1) {
        const double *p = a.ssp + (int64_t)t * S;
        for (int i = lane; i < S; i += 32) ssf += __ldcg(p + i);
        ssf = warp_sum_d(ssf);               // the same value on every lane
    }
    __syncthreads();                          // s_dot complete (last barrier of all 288 threads)
    if (w == kNW - 1) {
        // rmsnorm's scale of the flat row, then pre / post (cpu_hc_pre's expressions) by
        // lanes < h; published to the x warps by a non-blocking arrive on barrier 2
        const float sc = (float)(1.0 / sqrt(ssf / (double)hw + a.eps)), eps = a.hc_eps;
        float *ct = a.comb + (int64_t)t * h * h;
        // h·h <= 32: comb too, one lane per element (hc_math.cuh, shared with hc_chunk.cu)
        if (!ds4cu::hc_pre_post_comb<0>(sc, s_dot, s_pre, a.scale, a.base, a.post + (int64_t)t * h, ct, h,
                                        a.iters, eps, lane, [] { bar_pre_arrive(); })) {
            // h·h > 32: comb with the same operations in the same order, lane i < h owning
            // row i and column i of the matrix in shared memory
            const float s2 = a.scale[2];
            const float *bc = a.base + 2 * h;
            float *C = s_C;
            const int i = lane;
            if (i < h) {
                float mx = -INFINITY;
                for (int j = 0; j < h; j++) {
                    C[i * h + j] = __fadd_rn(__fmul_rn(__fmul_rn(sc, s_dot[2 * h + i * h + j]), s2), bc[i * h + j]);
                    mx = fmaxf(mx, C[i * h + j]);
                }
                float s = 0;
                for (int j = 0; j < h; j++) s = __fadd_rn(s, (C[i * h + j] = expf(__fsub_rn(C[i * h + j], mx))));
                for (int j = 0; j < h; j++) C[i * h + j] = __fadd_rn(__fdiv_rn(C[i * h + j], s), eps);
            }
            __syncwarp();
            for (int it = 0; it < a.iters; it++) {
                if (it > 0) {
                    if (i < h) {
                        float s = 0;
                        for (int j = 0; j < h; j++) s = __fadd_rn(s, C[i * h + j]);
                        for (int j = 0; j < h; j++) C[i * h + j] = __fdiv_rn(C[i * h + j], __fadd_rn(s, eps));
                    }
                    __syncwarp();
                }
                if (i < h) {
                    float s = 0;
                    for (int r = 0; r < h; r++) s = __fadd_rn(s, C[r * h + i]);
                    for (int r = 0; r < h; r++) C[r * h + i] = __fdiv_rn(C[r * h + i], __fadd_rn(s, eps));
                }
                __syncwarp();
            }
            for (int e = lane; e < h * h; e += 32) ct[e] = C[e];
        }
        return;                              // no block-wide barrier follows
    }

    // x warps: x = Σ_k pre[k]·H[t][k] (k ascending, from 0), then xn = (x·scale)·w
    bar_pre_sync();                          // s_pre from the Sinkhorn warp
    float *xo = a.xn + (int64_t)t * d;
    double ss = 0;
    if (KV > 0) {
        float pr[4];
#pragma unroll
        for (int c = 0; c < 4; c++) pr[c] = c < h ? s_pre[c] : 0.0f;
        float4 xs[KVR];
#pragma unroll
        for (int k = 0; k < KVR; k++) {
            const int64_t i = xt + (int64_t)k * kXThreads;
            float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
            if (i < d4) {
#pragma unroll
                for (int c = 0; c < 4; c++)
                    if (c < h) {
                        const float4 hv = P ? __ldcg(H4 + c * d4 + i) : H4[c * d4 + i];
                        o.x = __fadd_rn(o.x, __fmul_rn(pr[c], hv.x));
                        o.y = __fadd_rn(o.y, __fmul_rn(pr[c], hv.y));
                        o.z = __fadd_rn(o.z, __fmul_rn(pr[c], hv.z));
                        o.w = __fadd_rn(o.w, __fmul_rn(pr[c], hv.w));
                    }
                ss += (double)o.x * o.x;
                ss += (double)o.y * o.y;
                ss += (double)o.z * o.z;
                ss += (double)o.w * o.w;
            }
            xs[k] = o;
        }
        ss = warp_sum_d(ss);
        if (lane == 0) s_red[w] = ss;
        bar_x();
        double tot = 0;
        for (int i = 0; i < kXWarps; i++) tot += s_red[i];
        const float scale = (float)(1.0 / sqrt(tot / (double)d + a.eps));
        float4 *x4 = (float4 *)xo;
#pragma unroll
        for (int k = 0; k < KVR; k++) {
            const int64_t i = xt + (int64_t)k * kXThreads;
            if (i < d4) {
                const float4 wv = w4[i];
                float4 o;
                o.x = __fmul_rn(__fmul_rn(xs[k].x, scale), wv.x);
                o.y = __fmul_rn(__fmul_rn(xs[k].y, scale), wv.y);
                o.z = __fmul_rn(__fmul_rn(xs[k].z, scale), wv.z);
                o.w = __fmul_rn(__fmul_rn(xs[k].w, scale), wv.w);
                x4[i] = o;
            }
        }
    } else {
        for (int64_t i = xt; i < d; i += kXThreads) {
            float s = 0;
            for (int k = 0; k < h; k++)
                s = __fadd_rn(s, __fmul_rn(s_pre[k], P ? __ldcg(Ht + k * d + i) : Ht[k * d + i]));
            xo[i] = s;                       // re-read below by this same thread only
            ss += (double)s * s;
        }
        ss = warp_sum_d(ss);
        if (lane == 0) s_red[w] = ss;
        bar_x();
        double tot = 0;
        for (int i = 0; i < kXWarps; i++) tot += s_red[i];
        const float scale = (float)(1.0 / sqrt(tot / (double)d + a.eps));
        for (int64_t i = xt; i < d; i += kXThreads) xo[i] = __fmul_rn(__fmul_rn(xo[i], scale), a.norm_w[i]);
    }
}

// hc_site: no minimum-blocks hint (ptxas then holds the fast variants at 56 registers;
// any hint, even 1, costs ~10 more). hc_post_site (P 1 / 2): the hint 2 (<= 113
// registers): without it ptxas stopped at 72 and spilled, phase 1 holding the fn values
// and every hc_post input at once; 2 blocks of 288 threads per SM still cover decode's
// 64 blocks per token.
template <int KV, bool VEC>
__global__ void __launch_bounds__(kThreads) k_hc_site(HcArgs a) { hc_body<KV, VEC, 0>(a); }
template <int KV, bool VEC, int P>
__global__ void __launch_bounds__(kThreads, VEC ? 2 : 1) k_hc_post_site(HcArgs a) {
    hc_body<KV, VEC, P>(a);
}

bool al(const void *p, size_t n) { return (uintptr_t)p % n == 0; }

// The op sequence the contract names, through the backend's own ops (fn types without a
// fused kernel). Scratch SCR_HC holds flat [n_tok][hw] and mix [n_tok][mw]; x goes to xn
// and is normalised in place (rmsnorm allows x == y).
void hc_site_seq(ds4_backend *be, const ds4_tensor *fn, const float *scale, const float *base, const float *H, int n_tok,
                 int h, int64_t d, int iters, double hc_eps, double eps, const float *norm_w, float *post, float *comb,
                 float *xn) {
    const int64_t hw = (int64_t)h * d, mw = (int64_t)(2 + h) * h;
    const size_t flat_b = ((size_t)n_tok * hw * sizeof(float) + 255) & ~(size_t)255;
    uint8_t *scr = (uint8_t *)ds4cu::scratch(be, ds4cu::SCR_HC, flat_b + (size_t)n_tok * mw * sizeof(float));
    float *flat = (float *)scr, *mix = (float *)(scr + flat_b);
    be->rmsnorm(be, H, hw, NULL, flat, hw, hw, n_tok, eps);
    be->matmul(be, fn, 0, 0, (uint64_t)mw, flat, hw, mix, mw, n_tok);
    be->hc_pre(be, mix, scale, base, H, n_tok, h, d, iters, hc_eps, xn, post, comb);
    be->rmsnorm(be, xn, d, norm_w, xn, d, d, n_tok, eps);
}

// One fused launch sequence (fn F16 / F32). y == NULL: hc_site on H; otherwise
// hc_post_site: H (written) = hc_post(y, Hp, post, comb), then hc_site on it.
void hc_launch(ds4_backend *be, const ds4_tensor *fn, const float *scale, const float *base, const float *y,
               const float *Hp, const float *H, int n_tok, int h, int64_t d, int iters, double hc_eps, double eps,
               const float *norm_w, float *post, float *comb, float *xn) {
    const int mw = (2 + h) * h;
    const int64_t hw = (int64_t)h * d;
    HcArgs a;
    a.fn = (const uint8_t *)ds4cu::dev_of(be, fn->data);
    a.fn_rb = (size_t)fn->row_bytes;
    a.f16 = fn->type == DS4_TYPE_F16;
    a.scale = scale;
    a.base = base;
    a.norm_w = norm_w;
    a.h = h;
    a.mw = mw;
    a.d = d;
    a.hw = hw;
    a.iters = iters;
    a.hc_eps = (float)hc_eps;
    a.eps = eps;
    a.rd = (float)(1.0 / (double)d);
    a.rd4 = d >= 4 ? (float)(1.0 / (double)(d / 4)) : 0.0f;
    const int64_t S = (hw + kCols - 1) / kCols;
    DS4_ASSERT(S <= 0x7fffffff);
    a.S = (int)S;
    // float4 phase 1: 16-byte H rows, fn rows aligned to its 4-element chunks (8 / 16 B);
    // hc_post also needs d % 4 == 0 (chunks within one stream), 16-byte y / Hp rows and
    // 32-bit chunk indices
    const size_t fa = a.f16 ? 8 : 16;
    bool vec = hw % 4 == 0 && al(H, 16) && al(a.fn, fa) && a.fn_rb % fa == 0;
    if (y) vec = vec && d % 4 == 0 && al(y, 16) && al(Hp, 16) && hw / 4 < 0x7fffffff;
    // register epilogue: h <= 4 streams of d4 float4 chunks over kXThreads threads
    const int64_t d4 = d / 4;
    int kv = 0;
    if (vec && d % 4 == 0 && h <= 4 && al(xn, 16) && al(norm_w, 16))
        kv = d4 <= kXThreads ? 1 : d4 <= 2 * kXThreads ? 2 : d4 <= 4 * kXThreads ? 4 : 0;
    void (*k)(HcArgs);
    if (!y)
        k = kv == 1 ? k_hc_site<1, true>
            : kv == 2 ? k_hc_site<2, true>
            : kv == 4 ? k_hc_site<4, true>
            : vec     ? k_hc_site<0, true>
                      : k_hc_site<0, false>;
    else    // kv > 0 implies h <= 4: the unrolled hc_post (P 1)
        k = kv == 1           ? k_hc_post_site<1, true, 1>
            : kv == 2         ? k_hc_post_site<2, true, 1>
            : kv == 4         ? k_hc_post_site<4, true, 1>
            : vec && h <= 4   ? k_hc_post_site<0, true, 1>
            : vec             ? k_hc_post_site<0, true, 2>
                              : k_hc_post_site<0, false, 2>;
    // scratch for one launch of up to kTokPerLaunch tokens: ssp (f64) then part (f32)
    const int nt_max = n_tok < kTokPerLaunch ? n_tok : kTokPerLaunch;
    const size_t ssp_b = ((size_t)nt_max * S * sizeof(double) + 255) & ~(size_t)255;
    uint8_t *scr = (uint8_t *)ds4cu::scratch(be, ds4cu::SCR_HC, ssp_b + (size_t)nt_max * mw * S * sizeof(float));
    a.ssp = (double *)scr;
    a.part = (float *)(scr + ssp_b);
    a.cnt = ds4cu::counters(be) + ds4cu::CNT_HC;
    // launches of <= 1024 tokens run in stream order, so they reuse scratch and counters
    for (int t0 = 0; t0 < n_tok; t0 += kTokPerLaunch) {
        const int nt = n_tok - t0 < kTokPerLaunch ? n_tok - t0 : kTokPerLaunch;
        a.H = H + (int64_t)t0 * hw;
        a.Ho = (float *)a.H;                  // written only by the post variants (y != NULL)
        a.y = y ? y + (int64_t)t0 * d : NULL;
        a.Hp = y ? Hp + (int64_t)t0 * hw : NULL;
        a.post = post + (int64_t)t0 * h;
        a.comb = comb + (int64_t)t0 * h * h;
        a.xn = xn + (int64_t)t0 * d;
        DS4CU_CK(ds4cu::launch(k, dim3((unsigned)S, (unsigned)nt), dim3(kThreads), 0, ds4cu::stream(be), a));
    }
}

}  // namespace

// Large production chunks: hc_chunk.cu's two-kernel path (F16 fn, h <= 4, d % 4 == 0;
// ~0.1-0.2 ms per 2048-token Flash chunk), otherwise the op sequence, whose mixing projection is then one
// tensor-core GEMM (cu_matmul → mmf16) instead of 64 column-slice blocks per token, each
// re-reading its 12 KB fn slice (measured on an H200: 0.85 ms (hc_site) / 1.8 ms
// (hc_post_site) per 2048-token chunk). The values stay within the contract: only the
// order of the dot products behind mix differs.
static bool hc_seq_large(ds4_backend *be, const ds4_tensor *fn, int n_tok, int64_t hw) {
    return fn->type == DS4_TYPE_F16 && ds4_cuda_mmf16_supported(hw) && ds4cu_mmq_ok(be, DS4_TYPE_Q8_0, 32, n_tok);
}

void ds4cu_hc_site(ds4_backend *be, const ds4_tensor *fn, const float *scale, const float *base, const float *H,
                   int n_tok, int h, int64_t d, int iters, double hc_eps, double eps, const float *norm_w, float *post,
                   float *comb, float *xn) {
    DS4_ASSERT(h >= 1 && h <= kMaxH && d >= 1);
    if (n_tok <= 0) return;
    const int mw = (2 + h) * h;
    const int64_t hw = (int64_t)h * d;
    DS4_ASSERT(fn->ne[0] == (uint64_t)hw && fn->ne[1] >= (uint64_t)mw);
    const bool large = hc_seq_large(be, fn, n_tok, hw);
    // large production chunks: hc_chunk.cu (F16 fn, h <= 4, d % 4 == 0, aligned), else the sequence
    if (large && ds4cu_hc_chunk(be, fn, scale, base, NULL, NULL, H, n_tok, h, d, iters, hc_eps, eps, norm_w, post,
                                comb, xn))
        return;
    if ((fn->type != DS4_TYPE_F16 && fn->type != DS4_TYPE_F32) || large) {
        hc_site_seq(be, fn, scale, base, H, n_tok, h, d, iters, hc_eps, eps, norm_w, post, comb, xn);
        return;
    }
    hc_launch(be, fn, scale, base, NULL, NULL, H, n_tok, h, d, iters, hc_eps, eps, norm_w, post, comb, xn);
}

void ds4cu_hc_post_site(ds4_backend *be, const float *y, const float *Hprev, float *H, const ds4_tensor *fn,
                        const float *scale, const float *base, int n_tok, int h, int64_t d, int iters, double hc_eps,
                        double eps, const float *norm_w, float *post, float *comb, float *xn) {
    DS4_ASSERT(h >= 1 && h <= kMaxH && d >= 1);
    if (n_tok <= 0) return;
    const int mw = (2 + h) * h;
    const int64_t hw = (int64_t)h * d;
    DS4_ASSERT(fn->ne[0] == (uint64_t)hw && fn->ne[1] >= (uint64_t)mw);
    DS4_ASSERT(H != Hprev);
    const bool large = hc_seq_large(be, fn, n_tok, hw);
    if (large && ds4cu_hc_chunk(be, fn, scale, base, y, Hprev, H, n_tok, h, d, iters, hc_eps, eps, norm_w, post,
                                comb, xn))
        return;
    if ((fn->type != DS4_TYPE_F16 && fn->type != DS4_TYPE_F32) || large) {
        // the op sequence: hc_post (reads the old post / comb), then the site (overwrites them)
        be->hc_post(be, y, Hprev, post, comb, n_tok, h, d, H);
        ds4cu_hc_site(be, fn, scale, base, H, n_tok, h, d, iters, hc_eps, eps, norm_w, post, comb, xn);
        return;
    }
    hc_launch(be, fn, scale, base, y, Hprev, H, n_tok, h, d, iters, hc_eps, eps, norm_w, post, comb, xn);
}
