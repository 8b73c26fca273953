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
//  - k_hcc_p1, grid (NS i-slices, token tiles of 128): slice s covers the elements
//    i in [s·128, s·128 + 128) of EVERY stream (h·128 flat columns), so hc_post reads
//    y and each Hprev stream once per element and writes each H element once. The block
//    stages its fn columns (mw rows × h × 128, F16 → f32, 48 KB for Flash) in shared
//    memory once; lane = token: each thread walks its own token's row, one float4 per
//    stream per step (the next step's loads issued before this step's arithmetic), forms
//    H (hc_post: k_hc_post's per-element operations and order), accumulates the f64 sum
//    of squares and the mw dots with fn (fma chains; fn read as warp-uniform float4
//    broadcasts), and writes its (token, slice) partials. No cross-lane reduction.
//  - k_hcc_ep, one block per token: the Sinkhorn warp sums the NS partials of each dot
//    and of the squares in slice order, s = 1/sqrt(ss/hw + eps) in f64 as k_rmsnorm,
//    mix_j = s·dot_j, then pre / post / comb with the CPU's per-element operations and
//    order (hc_math.cuh, shared with the fused kernel: explicit _rn operations, no contraction);
//    pre is published by a non-blocking barrier arrive while the Sinkhorn rounds go on;
//    the x warps (their H loads issued before that wait) form x = Σ_k pre[k]·H[t][k]
//    (k ascending from 0), the f64 sum of squares, scale, xn = (x·scale)·norm_w.
// The partition (NS, 128, the per-lane order) depends on h and d only: a token's values
// do not depend on n_tok or its position in the chunk.
// Traffic per 2048-token Flash chunk: p1 reads H 134 MB (hc_post_site: y 33 + Hprev 134,
// writes H 134), partials 7 MB; ep reads H 134 MB, writes xn 33 MB. p1's arithmetic:
// 0.8 GFMA on CUDA cores + 24·h/4... float4 shared broadcasts (~35 us of issue).
#include <math.h>

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
constexpr int kP1Threads = 128;          // p1: tokens per block (lane = token)
constexpr int kXWarps = 8;               // ep: warps forming x / xn (named barrier 1)
constexpr int kXThreads = kXWarps * 32;
constexpr int kEpThreads = kXThreads + 32;   // + the Sinkhorn warp (the last one)

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
// HH = h (1..4), POST: hc_post_site. Dynamic shared memory: mw·HH·kIS4 float4.
template <int HH, bool POST>
__global__ void __launch_bounds__(kP1Threads) k_hcc_p1(P1Args a) {
    constexpr int MW = (2 + HH) * HH;
    constexpr int NIN = POST ? HH + 1 : HH;  // float4 inputs per step: (y,) H or Hprev streams
    extern __shared__ float4 fs[];           // [MW][HH][kIS4]: fn columns k·d + 4·(s·kIS4 + q) ..
    const int s = blockIdx.x;
    const int64_t d4 = a.d4, i40 = (int64_t)s * kIS4;
    const int nq = (int)(d4 - i40 < kIS4 ? d4 - i40 : kIS4);   // >= 1 (NS = ceil(d4 / kIS4))
    // fn (a resident weight): staged before pdl_wait; chunks past d read as 0 (never used)
    for (int e = threadIdx.x; e < MW * HH * kIS4; e += kP1Threads) {
        const int q = e % kIS4, k = (e / kIS4) % HH, j = e / (kIS4 * HH);
        float4 v = f4z();
        if (q < nq) {
            const uint2 u = *(const uint2 *)(a.fn + (size_t)j * a.fn_rb + (size_t)((k * d4 + i40 + q) * 8));
            const float2 lo = __half22float2(*(const __half2 *)&u.x), hi = __half22float2(*(const __half2 *)&u.y);
            v = make_float4(lo.x, lo.y, hi.x, hi.y);
        }
        fs[e] = v;
    }
    __syncthreads();                          // the only block-wide barrier
    ds4cu::pdl_wait();                        // H / y / Hprev / post / comb: the previous kernels'
    ds4cu::pdl_trigger();
    const int t = blockIdx.y * kP1Threads + threadIdx.x;
    if (t >= a.n_tok) return;
    const int64_t hw4 = HH * d4;
    const float4 *src = POST ? (const float4 *)a.Hp + (int64_t)t * hw4 : (const float4 *)a.H + (int64_t)t * hw4;
    const float4 *y4 = POST ? (const float4 *)a.y + (int64_t)t * d4 : nullptr;
    float4 *ho = POST ? (float4 *)a.Ho + (int64_t)t * hw4 : nullptr;
    float pk[HH], cm[HH][HH];                 // hc_post: old post[t][k], comb[t][kk·h + k]
    if (POST) {
#pragma unroll
        for (int k = 0; k < HH; k++) {
            pk[k] = a.post[(int64_t)t * HH + k];
#pragma unroll
            for (int kk = 0; kk < HH; kk++) cm[kk][k] = a.comb[(int64_t)t * HH * HH + kk * HH + k];
        }
    }
    float4 cur[NIN], nxt[NIN];
#pragma unroll
    for (int k = 0; k < NIN; k++) nxt[k] = f4z();
    auto load = [&](int q, float4 *in) {
        const int64_t i4 = i40 + q;
        if (POST) in[HH] = y4[i4];
#pragma unroll
        for (int k = 0; k < HH; k++) in[k] = src[k * d4 + i4];
    };
    load(0, cur);
    float acc[MW];
#pragma unroll
    for (int j = 0; j < MW; j++) acc[j] = 0.0f;
    double ss = 0;
    for (int q = 0; q < nq; q++) {           // q, nq: the same in every lane
        if (q + 1 < nq) load(q + 1, nxt);
        float4 hv[HH];
        if (POST) {
            // k_hc_post's operations in its order: post·y, then + comb[kk][k]·Hprev[kk]
            // for kk ascending, each rounded
            const float4 yv = cur[HH];
#pragma unroll
            for (int k = 0; k < HH; k++) {
                float4 o = make_float4(__fmul_rn(pk[k], yv.x), __fmul_rn(pk[k], yv.y), __fmul_rn(pk[k], yv.z),
                                       __fmul_rn(pk[k], yv.w));
#pragma unroll
                for (int kk = 0; kk < HH; kk++) {
                    o.x = __fadd_rn(o.x, __fmul_rn(cm[kk][k], cur[kk].x));
                    o.y = __fadd_rn(o.y, __fmul_rn(cm[kk][k], cur[kk].y));
                    o.z = __fadd_rn(o.z, __fmul_rn(cm[kk][k], cur[kk].z));
                    o.w = __fadd_rn(o.w, __fmul_rn(cm[kk][k], cur[kk].w));
                }
                hv[k] = o;
                ho[k * d4 + i40 + q] = o;
            }
        } else {
#pragma unroll
            for (int k = 0; k < HH; k++) hv[k] = cur[k];
        }
#pragma unroll
        for (int k = 0; k < HH; k++) {
            ss += (double)hv[k].x * hv[k].x;
            ss += (double)hv[k].y * hv[k].y;
            ss += (double)hv[k].z * hv[k].z;
            ss += (double)hv[k].w * hv[k].w;
        }
#pragma unroll
        for (int j = 0; j < MW; j++) {
#pragma unroll
            for (int k = 0; k < HH; k++) {
                const float4 f = fs[(j * HH + k) * kIS4 + q];   // warp-uniform: a broadcast
                acc[j] = fmaf(f.x, hv[k].x, acc[j]);
                acc[j] = fmaf(f.y, hv[k].y, acc[j]);
                acc[j] = fmaf(f.z, hv[k].z, acc[j]);
                acc[j] = fmaf(f.w, hv[k].w, acc[j]);
            }
        }
#pragma unroll
        for (int k = 0; k < NIN; k++) cur[k] = nxt[k];
    }
    float *pp = a.part + ((int64_t)t * a.NS + s) * MW;
#pragma unroll
    for (int j = 0; j < MW; j++) pp[j] = acc[j];
    a.ssp[(int64_t)t * a.NS + s] = ss;
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
        const float *pp = a.part + (int64_t)t * NS * MW;
        float dot = 0.0f;
        if (lane < MW)
            for (int s = 0; s < NS; s++) dot = __fadd_rn(dot, pp[(int64_t)s * MW + lane]);
        double ssf = 0;
        if (lane == 31)
            for (int s = 0; s < NS; s++) ssf += a.ssp[(int64_t)t * NS + s];
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

template <int HH>
void launch_h(ds4_backend *be, const P1Args &p, const EpArgs &e, bool post, int kv, int n_tok) {
    constexpr int MW = (2 + HH) * HH;
    const size_t smem = (size_t)MW * HH * kIS4 * sizeof(float4);   // <= 48 KB (h 4)
    const dim3 g1((unsigned)p.NS, (unsigned)((n_tok + kP1Threads - 1) / kP1Threads));
    cudaStream_t st = ds4cu::stream(be);
    if (post) DS4CU_CK(ds4cu::launch(k_hcc_p1<HH, true>, g1, dim3(kP1Threads), smem, st, p));
    else DS4CU_CK(ds4cu::launch(k_hcc_p1<HH, false>, g1, dim3(kP1Threads), smem, st, p));
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
    if (NS > 65535 || (n_tok + kP1Threads - 1) / kP1Threads > 65535) return false;
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
