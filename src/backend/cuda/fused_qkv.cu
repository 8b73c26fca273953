// fused_qkv.cu — the fused op qkv_rope (backend.h): one position's q/kv normalisation,
// RoPE, KV storage simulation, raw-ring store, compressor-ring stores and indexer-query
// rotation + Hadamard/FP4 in ONE kernel launch (the op sequence costs ~10-13 launches).
//
// Owns: k_qkv_rope and its host entry ds4cu_qkv_rope. Must not: change any value
// relative to the CUDA op sequence it replaces (cu_rmsnorm -> k_rmsnorm_v4 / k_rmsnorm,
// cu_rope -> k_rope, k_fp8_sim_warp, k_round_f16, cudaMemcpyAsync, k_axpy,
// k_hadamard_fp4 in cuda_backend.cu): every element goes through the same f32/f64
// operations in the same order, so the engine's CUDA results do not move when forward.c
// switches to this op. In particular the rmsnorm of each row reproduces cu_rmsnorm's
// kernel choice and block size (both depend on the row width and pointer alignment only)
// and its double reduction tree; the RoPE cos/sin table is computed on the host exactly
// as cu_rope does. Must not: allocate device memory or synchronise the stream.
//
// Block roles (blockIdx.x; all threads of a block take the same role, so the
// __syncthreads inside a role are uniform):
//   [0, n_head)             q row h: rmsnorm (unweighted) -> smem, RoPE on the way out
//   n_head                  kv row: rmsnorm · kv_norm -> smem; prod: FP8 of [0, hd-n_rot)
//                           one warp per 64-block, F16 of all; written to kv AND raw
//   next n_ring blocks      ring stores: dst = src (first cw), dst = src + 1·ape (next cw)
//   next iq_heads blocks    iq row: RoPE; prod: Hadamard butterfly in smem + FP4 per
//                           32-block (one warp per block)
// Shapes the kernel cannot hold (smem row > 48 KiB, n_rot > 256) run the op sequence
// through the be-> pointers instead (same values by definition).
#include <math.h>
#include <string.h>

#include "common.cuh"
#include "cuda_internal.h"
extern "C" {
#include "core/common.h"
}

namespace {

constexpr int kMaxHalf = 128;          // rope pairs in the by-value table (as cu_rope's RopeTab)
constexpr int kElemsPerRingThread = 4; // ring-store floats per thread (loads issued first)
constexpr size_t kMaxSmem = 48 * 1024; // dynamic smem without an opt-in attribute

struct QkvArgs {
    float *q;            // [n_head][hd], normalised + rotated in place
    float *kv;           // [hd], in place
    const float *kvn;    // [hd] kv_norm weights (NULL: unweighted)
    float *raw;          // [hd] raw-ring row (distinct from kv)
    float *iq;           // [iq_heads][ihd] or NULL
    float *pd[2];        // ring rows [2*cw] (distinct from ps/pa)
    const float *ps[2];  // projections [2*cw]
    const float *pa[2];  // ape rows [cw]
    int64_t pcw[2];      // cw per store
    int64_t ring_tot0, ring_tot; // 2*cw0, 2*cw0 + 2*cw1 (0 when absent)
    int hd, ihd, n_rot, n_head, iq_heads, n_ring_blk;
    int q_v4, q_th, kv_v4, kv_th; // cu_rmsnorm's kernel choice + block size per row kind
    int prod;
    float one;                    // the axpy factor, a runtime 1.0f as k_axpy's `a`
    double eps;
    float c[kMaxHalf], s[kMaxHalf]; // cos / sin of (float)pos * inv_freq[j] (host, as cu_rope)
};

// ---- device helpers: the shared definitions of common.cuh (bit-identical to cuda_backend.cu's ops)
using ds4cu::d_fp4_round;
using ds4cu::d_fp8_round;
using ds4cu::d_pow2_ceil;
using ds4cu::warp_max;
using ds4cu::warp_sum_d;
__device__ __forceinline__ float rf16(float x) { return __half2float(__float2half_rn(x)); }

// block_sum_d of a block of nw*32 threads, run by a larger block: warps >= nw hold 0 and
// are not read, so the tree (warp butterflies, then lanes < nw of the per-warp sums) is
// exactly that of block_sum_d with blockDim = nw*32. Every thread of the block calls it.
__device__ double group_sum_d(double v, int nw, double *sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_sum_d(v);
    __syncthreads(); // sh may still be read by a previous call
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0;
    return warp_sum_d(v);
}

// One rmsnorm row x [n] (· w [n] when w) into sm [n], as cu_rmsnorm computes it:
// v4 = k_rmsnorm_v4 with th threads (float4 i = tid + k·th, k < 4: the KV = 1/2/4
// instantiations visit the same float4s in the same order), else k_rmsnorm with th
// threads (i = tid + m·th). Threads >= th only take part in the reduction's barriers.
// The caller synchronises before reading sm.
__device__ void rms_row(const float *x, const float *w, int n, bool v4, int th, double eps, float *sm, double *sh) {
    const int tid = threadIdx.x;
    const bool act = tid < th;
    double ss = 0;
    if (v4) {
        const int n4 = n / 4;
        const float4 *x4 = (const float4 *)x, *w4 = (const float4 *)w;
        float4 v[4], wv[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int i = tid + k * th;
            if (act && i < n4) {
                v[k] = x4[i];
                wv[k] = w ? w4[i] : make_float4(0.f, 0.f, 0.f, 0.f);
            }
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            if (act && tid + k * th < n4) {
                ss += (double)v[k].x * v[k].x;
                ss += (double)v[k].y * v[k].y;
                ss += (double)v[k].z * v[k].z;
                ss += (double)v[k].w * v[k].w;
            }
        }
        ss = group_sum_d(ss, th >> 5, sh);
        const float scale = (float)(1.0 / sqrt(ss / (double)(int64_t)n + eps));
        float4 *s4 = (float4 *)sm;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int i = tid + k * th;
            if (act && i < n4) s4[i] = ds4cu::rms_scale4(v[k], scale, w != nullptr, wv[k]);
        }
    } else {
        // the row is kept in sm between the two passes (k_rmsnorm reads x twice; same
        // values); each thread touches only its own elements, so no barrier is needed
        if (act)
            for (int i = tid; i < n; i += th) {
                const float a = x[i];
                sm[i] = a;
                ss += (double)a * a;
            }
        ss = group_sum_d(ss, th >> 5, sh);
        const float scale = (float)(1.0 / sqrt(ss / (double)(int64_t)n + eps));
        if (act)
            for (int i = tid; i < n; i += th) {
                const float v = __fmul_rn(sm[i], scale);
                sm[i] = w ? __fmul_rn(v, w[i]) : v;
            }
    }
}

// k_rope's arithmetic for element e >= off of a row held in sm: pair j = (e-off)/2.
__device__ __forceinline__ float rope_el(const float *sm, int off, int e, const QkvArgs &A) {
    const int j = (e - off) >> 1;
    const float a = sm[off + 2 * j], b = sm[off + 2 * j + 1], c = A.c[j], s = A.s[j];
    return ((e - off) & 1) ? __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c)) : __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
}

__global__ void __launch_bounds__(1024) k_qkv_rope(const __grid_constant__ QkvArgs A) {
    extern __shared__ float4 smem4[]; // [max(hd, ihd)] floats, 16-byte aligned
    float *sm = (float *)smem4;
    __shared__ double sh[32];
    const int T = blockDim.x, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, nwarp = T >> 5;
    int b = blockIdx.x;
    // programmatic dependent launch: every buffer this kernel reads (q, kv, the ring
    // sources, iq) is written by earlier kernels, so wait first; then let the next
    // kernel of the stream start launching (it waits for this grid in its own pdl_wait)
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();

    if (b < A.n_head) { // ---- q row: rmsnorm, rope
        float *row = A.q + (int64_t)b * A.hd;
        rms_row(row, nullptr, A.hd, A.q_v4, A.q_th, A.eps, sm, sh);
        __syncthreads();
        const int off = A.hd - A.n_rot;
        for (int e = tid; e < A.hd; e += T) row[e] = e < off ? sm[e] : rope_el(sm, off, e, A);
        return;
    }
    b -= A.n_head;
    if (b == 0) { // ---- kv row: rmsnorm · w, rope, (fp8, f16), kv and raw
        rms_row(A.kv, A.kvn, A.hd, A.kv_v4, A.kv_th, A.eps, sm, sh);
        __syncthreads();
        const int off = A.hd - A.n_rot;
        if (A.prod) {
            // k_fp8_sim_warp over [0, off): warp per 64-block, lanes own l and l+32
            for (int b0 = warp * 64; b0 < off; b0 += nwarp * 64) { // warp-uniform
                const int len = off - b0 < 64 ? off - b0 : 64;
                const bool h0 = lane < len, h1 = lane + 32 < len;
                const float a = h0 ? sm[b0 + lane] : 0.0f, c = h1 ? sm[b0 + lane + 32] : 0.0f;
                float amax = 1e-4f;
                if (h0) amax = fmaxf(amax, fabsf(a));
                if (h1) amax = fmaxf(amax, fabsf(c));
                amax = warp_max(amax);
                const float sc = d_pow2_ceil(amax / 448.0f);
                if (h0) {
                    const float v = rf16(d_fp8_round(fminf(fmaxf(a / sc, -448.0f), 448.0f)) * sc);
                    A.kv[b0 + lane] = v;
                    A.raw[b0 + lane] = v;
                }
                if (h1) {
                    const float v = rf16(d_fp8_round(fminf(fmaxf(c / sc, -448.0f), 448.0f)) * sc);
                    A.kv[b0 + lane + 32] = v;
                    A.raw[b0 + lane + 32] = v;
                }
            }
        } else {
            for (int e = tid; e < off; e += T) {
                const float v = sm[e];
                A.kv[e] = v;
                A.raw[e] = v;
            }
        }
        for (int e = off + tid; e < A.hd; e += T) {
            float v = rope_el(sm, off, e, A);
            if (A.prod) v = rf16(v);
            A.kv[e] = v;
            A.raw[e] = v;
        }
        return;
    }
    b -= 1;
    if (b < A.n_ring_blk) { // ---- ring stores: copy, then axpy with a = 1 on the second half
        const int64_t base = (int64_t)b * T * kElemsPerRingThread;
        float sv[kElemsPerRingThread], av[kElemsPerRingThread];
#pragma unroll
        for (int k = 0; k < kElemsPerRingThread; k++) { // every load before any store
            const int64_t e = base + tid + (int64_t)k * T;
            av[k] = 0.0f;
            if (e < A.ring_tot) {
                const bool j1 = e >= A.ring_tot0;
                const int64_t i = j1 ? e - A.ring_tot0 : e, cw = j1 ? A.pcw[1] : A.pcw[0];
                sv[k] = (j1 ? A.ps[1] : A.ps[0])[i];
                if (i >= cw) av[k] = (j1 ? A.pa[1] : A.pa[0])[i - cw];
            }
        }
#pragma unroll
        for (int k = 0; k < kElemsPerRingThread; k++) {
            const int64_t e = base + tid + (int64_t)k * T;
            if (e < A.ring_tot) {
                const bool j1 = e >= A.ring_tot0;
                const int64_t i = j1 ? e - A.ring_tot0 : e, cw = j1 ? A.pcw[1] : A.pcw[0];
                (j1 ? A.pd[1] : A.pd[0])[i] = i < cw ? sv[k] : __fadd_rn(sv[k], __fmul_rn(A.one, av[k]));
            }
        }
        return;
    }
    b -= A.n_ring_blk;
    if (b < A.iq_heads) { // ---- iq row: rope, (hadamard + fp4)
        float *row = A.iq + (int64_t)b * A.ihd;
        const int n = A.ihd, off = n - A.n_rot, half = A.n_rot / 2;
        if (!A.prod) { // k_rope alone
            for (int j = tid; j < half; j += T) {
                float *p = row + off + 2 * j;
                const float a = p[0], bb = p[1], c = A.c[j], s = A.s[j];
                p[0] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(bb, s));
                p[1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(bb, c));
            }
            return;
        }
        for (int e = tid; e < n; e += T) sm[e] = row[e];
        __syncthreads();
        for (int j = tid; j < half; j += T) { // pairs are disjoint: in place
            float *p = sm + off + 2 * j;
            const float a = p[0], bb = p[1], c = A.c[j], s = A.s[j];
            p[0] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(bb, s));
            p[1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(bb, c));
        }
        __syncthreads();
        const bool pow2 = (n & (n - 1)) == 0;
        float norm = 1.0f;
        if (pow2) { // k_hadamard_fp4's butterfly (Sylvester order), same pairs and ops
            for (int st = 1; st < n; st *= 2) {
                for (int p = tid; p < n / 2; p += T) {
                    const int base = (p / st) * 2 * st, i = p % st;
                    const float a = sm[base + i], bb = sm[base + st + i];
                    sm[base + i] = a + bb;
                    sm[base + st + i] = a - bb;
                }
                __syncthreads();
            }
            norm = (float)(1.0 / sqrt((double)(int64_t)n));
        }
        // FP4 per 32-block: T is a multiple of 32 and e0 of T, so a warp holds exactly
        // one block [32k, min(32k+32, n)) per pass; lanes past n add nothing to amax
        for (int e0 = 0; e0 < n; e0 += T) { // block-uniform
            const int e = e0 + tid;
            const bool has = e < n;
            float v = has ? sm[e] : 0.0f;
            if (pow2) v *= norm; // k_hadamard_fp4's `v[i] *= norm`
            float amax = 7.052966104933725e-38f;
            if (has) amax = fmaxf(amax, fabsf(v));
            amax = warp_max(amax);
            const float sc = d_pow2_ceil(amax / 6.0f);
            if (has) row[e] = d_fp4_round(fminf(fmaxf(v / sc, -6.0f), 6.0f)) * sc;
        }
    }
}

// cu_rmsnorm's kernel choice for rows x (= y) of width n, stride n, weights w: the
// float4 kernel and its block size, or the scalar kernel and its block size.
void rms_plan(const void *x, const void *w, int64_t n, int *v4, int *th) {
    const bool a16 = ((uintptr_t)x | (uintptr_t)w) % 16 == 0 && n % 4 == 0;
    const int64_t n4 = n / 4;
    if (a16 && n4 > 0 && n4 <= 4 * 1024) {
        *v4 = 1;
        *th = (int)(n4 < 1024 ? (n4 + 31) / 32 * 32 : 1024);
    } else {
        *v4 = 0;
        *th = n >= 1024 ? 512 : n >= 256 ? 256 : 64;
    }
}

// The op sequence itself (shapes the kernel does not hold): backend.h's definition.
void qkv_seq(ds4_backend *be, float *q, int n_head, float *kv, const float *kv_norm, int64_t hd, int n_rot, int64_t pos,
             const float *inv_freq, bool prod, double eps, float *raw, float *iq, int iq_heads, int64_t ihd, int n_put,
             float *const *put_dst, const float *const *put_src, const float *const *put_ape, const int64_t *put_cw) {
    be->rmsnorm(be, q, hd, NULL, q, hd, hd, n_head, eps);
    be->rmsnorm(be, kv, hd, kv_norm, kv, hd, hd, 1, eps);
    be->rope(be, q, hd, n_head, hd, n_rot, pos, inv_freq, false);
    be->rope(be, kv, hd, 1, hd, n_rot, pos, inv_freq, false);
    if (prod) {
        be->fp8_sim(be, kv, hd, 1, hd - n_rot);
        be->round_f16(be, kv, hd);
    }
    be->copy(be, raw, kv, (size_t)hd * sizeof(float));
    for (int j = 0; j < n_put; j++) {
        be->copy(be, put_dst[j], put_src[j], (size_t)(2 * put_cw[j]) * sizeof(float));
        be->axpy(be, put_dst[j] + put_cw[j], put_ape[j], 1.0f, put_cw[j]);
    }
    if (iq) {
        be->rope(be, iq, ihd, iq_heads, ihd, n_rot, pos, inv_freq, false);
        if (prod) be->hadamard_fp4_sim(be, iq, ihd, iq_heads, ihd);
    }
}

}  // namespace

void ds4cu_qkv_rope(ds4_backend *be, float *q, int n_head, float *kv, const float *kv_norm, int64_t hd, int n_rot,
                    int64_t pos, const float *inv_freq, bool prod, double eps, float *raw, float *iq, int iq_heads,
                    int64_t ihd, int n_put, float *const *put_dst, const float *const *put_src,
                    const float *const *put_ape, const int64_t *put_cw) {
    DS4_ASSERT(hd > 0 && n_head >= 0 && n_rot >= 0 && n_rot % 2 == 0 && n_rot <= hd);
    DS4_ASSERT(n_put >= 0 && n_put <= 2);
    if (!iq) iq_heads = 0;
    DS4_ASSERT(iq_heads >= 0 && (iq_heads == 0 || (ihd > 0 && n_rot <= ihd)));
    for (int j = 0; j < n_put; j++) DS4_ASSERT(put_cw[j] >= 0);
    // shared memory: the q / kv row, and the iq row when it gets the Hadamard butterfly
    int64_t sm_floats = hd;
    if (iq_heads && prod && ihd > sm_floats) sm_floats = ihd;
    const size_t smem = (size_t)sm_floats * sizeof(float);
    if (n_rot / 2 > kMaxHalf || smem > kMaxSmem || (iq_heads && ihd > (int64_t)1 << 24)) {
        qkv_seq(be, q, n_head, kv, kv_norm, hd, n_rot, pos, inv_freq, prod, eps, raw, iq, iq_heads, ihd, n_put, put_dst,
                put_src, put_ape, put_cw);
        return;
    }
    QkvArgs A;
    memset(&A, 0, sizeof A);
    A.q = q;
    A.kv = kv;
    A.kvn = kv_norm;
    A.raw = raw;
    A.iq = iq;
    A.hd = (int)hd;
    A.ihd = (int)ihd;
    A.n_rot = n_rot;
    A.n_head = n_head;
    A.iq_heads = iq_heads;
    A.prod = prod ? 1 : 0;
    A.one = 1.0f;
    A.eps = eps;
    for (int j = 0; j < n_put; j++) {
        A.pd[j] = put_dst[j];
        A.ps[j] = put_src[j];
        A.pa[j] = put_ape[j];
        A.pcw[j] = put_cw[j];
    }
    A.ring_tot0 = 2 * A.pcw[0];
    A.ring_tot = A.ring_tot0 + 2 * A.pcw[1];
    // the table exactly as cu_rope builds it (host cosf/sinf of the f32 angle)
    for (int j = 0; j < n_rot / 2; j++) {
        float theta = (float)pos * inv_freq[j];
        A.c[j] = cosf(theta);
        A.s[j] = sinf(theta);
    }
    rms_plan(q, NULL, hd, &A.q_v4, &A.q_th);
    rms_plan(kv, kv_norm, hd, &A.kv_v4, &A.kv_th);
    // one block size for all roles: at least each rmsnorm's own (its reduction tree
    // depends on it), 128 for the ring / iq roles (Flash: ihd 128 = one element each)
    int T = 128;
    if (A.q_th > T) T = A.q_th;
    if (A.kv_th > T) T = A.kv_th;
    A.n_ring_blk = (int)((A.ring_tot + (int64_t)T * kElemsPerRingThread - 1) / ((int64_t)T * kElemsPerRingThread));
    // Flash CSA decode: 64 q + 1 kv + 5 ring (2560 floats) + 64 iq = 134 blocks of 128
    const unsigned grid = (unsigned)(n_head + 1 + A.n_ring_blk + iq_heads);
    DS4CU_CK(ds4cu::launch(k_qkv_rope, dim3(grid), dim3((unsigned)T), smem, ds4cu::stream(be), A));
}

// PLACEHOLDER (qkv_rope_n): replaced by its owner.
void ds4cu_qkv_rope_n(ds4_backend *, float *, int64_t, int, float *, int64_t, const float *, int64_t, int, int64_t, int,
                      const float *, bool, double, float *, int, float *, int64_t, int, int64_t, int, float *const *,
                      const int *, const float *const *, const int64_t *, const float *const *, const int *,
                      const int64_t *) {
    DS4_ASSERT(!"qkv_rope_n: not implemented yet");
}
