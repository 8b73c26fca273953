// row_chain.cuh — per-row device steps shared by the fused ops that must reproduce the
// CUDA op sequence bit for bit (fused_qkv.cu: qkv_rope / qkv_rope_n; compress.cu:
// compress_rows), and the host cos/sin tables they use.
//
// Owns: the rmsnorm plan and row (cu_rmsnorm's kernel choice, block size and double
// reduction tree), the RoPE pair step (k_rope), the KV-row storage simulation (rope, FP8
// of the unrotated dims as k_fp8_sim_warp, F16 as k_round_f16), the rope + Hadamard +
// FP4 row (k_rope then k_hadamard_fp4), and a per-thread cache of host RoPE tables
// computed exactly as cu_rope does. Must not: change any arithmetic relative to those
// kernels in cuda_backend.cu (every element sees the same f32/f64 operations in the same
// order); hold kernels or launch anything.
//
// Block contract of the device helpers: called by every thread of a block of T threads
// (T a multiple of 32, T <= 1024), block-uniform arguments, because they contain
// __syncthreads and warp shuffles.
#ifndef DS4_CUDA_ROW_CHAIN_CUH
#define DS4_CUDA_ROW_CHAIN_CUH

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "common.cuh"

namespace ds4cu {
namespace rows {

__device__ __forceinline__ float rf16(float x) { return __half2float(__float2half_rn(x)); }

// block_sum_d (cuda_backend.cu) of a block of nw*32 threads, run by a larger block: warps
// >= nw hold 0 and are not read, so the tree (warp butterflies, then lanes < nw of the
// per-warp sums) is exactly that of block_sum_d with blockDim = nw*32. Every thread of
// the block calls it.
__device__ inline double group_sum_d(double v, int nw, double *sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_sum_d(v);
    __syncthreads(); // sh may still be read by a previous call
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0;
    return warp_sum_d(v);
}

// cu_rmsnorm's kernel choice for rows x (= y) of width n, stride n, weights w (NULL: none):
// the float4 kernel k_rmsnorm_v4 (v4 = 1) and its block size th, or the scalar k_rmsnorm
// and its block size. Depends on the pointers' 16-byte alignment and n only.
__host__ __device__ inline void rms_plan(const void *x, const void *w, int64_t n, int *v4, int *th) {
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

// One rmsnorm row x [n] (· w [n] when w) into sm [n] (16-byte aligned; may equal x), as
// cu_rmsnorm computes it: v4 = k_rmsnorm_v4 with th threads (float4 i = tid + k·th, k < 4:
// the KV = 1/2/4 instantiations visit the same float4s in the same order), else k_rmsnorm
// with th threads (i = tid + m·th). Threads >= th only take part in the reduction's
// barriers. The caller synchronises before reading sm.
__device__ inline void rms_row(const float *x, const float *w, int n, bool v4, int th, double eps, float *sm,
                               double *sh) {
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

// k_rope's arithmetic for element e >= off of a row held in sm: pair j = (e-off)/2 with
// cos c[j], sin s[j].
__device__ __forceinline__ float rope_el(const float *sm, int off, int e, const float *c, const float *s) {
    const int j = (e - off) >> 1;
    const float a = sm[off + 2 * j], b = sm[off + 2 * j + 1], cj = c[j], sj = s[j];
    return ((e - off) & 1) ? __fadd_rn(__fmul_rn(a, sj), __fmul_rn(b, cj)) : __fsub_rn(__fmul_rn(a, cj), __fmul_rn(b, sj));
}

// k_rope in place on the pairs of p = row + off (half pairs), threads stride blockDim.
__device__ inline void rope_pairs(float *p0, int half, const float *c, const float *s) {
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float *p = p0 + 2 * j;
        const float a = p[0], bb = p[1], cj = c[j], sj = s[j];
        p[0] = __fsub_rn(__fmul_rn(a, cj), __fmul_rn(bb, sj));
        p[1] = __fadd_rn(__fmul_rn(a, sj), __fmul_rn(bb, cj));
    }
}

// The KV-row tail of the op sequence from a normalised row in sm [n]: rope of the last
// n_rot dims, and when prod: fp8_sim of dims [0, n − n_rot) (k_fp8_sim_warp: one warp per
// 64-block, lanes own l and l+32) and round_f16 of all n. Written to out0 and, when not
// NULL, out1 (both [n], distinct from sm). No barrier inside; sm must be complete.
__device__ inline void kv_row_store(const float *sm, int n, int n_rot, const float *c, const float *s, bool prod,
                                    float *out0, float *out1) {
    const int T = blockDim.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarp = T >> 5;
    const int off = n - n_rot;
    if (prod) {
        for (int b0 = warp * 64; b0 < off; b0 += nwarp * 64) { // warp-uniform
            const int len = off - b0 < 64 ? off - b0 : 64;
            const bool h0 = lane < len, h1 = lane + 32 < len;
            const float a = h0 ? sm[b0 + lane] : 0.0f, cc = h1 ? sm[b0 + lane + 32] : 0.0f;
            float amax = 1e-4f;
            if (h0) amax = fmaxf(amax, fabsf(a));
            if (h1) amax = fmaxf(amax, fabsf(cc));
            amax = warp_max(amax);
            const float sc = d_pow2_ceil(amax / 448.0f);
            if (h0) {
                const float v = rf16(d_fp8_round(fminf(fmaxf(a / sc, -448.0f), 448.0f)) * sc);
                out0[b0 + lane] = v;
                if (out1) out1[b0 + lane] = v;
            }
            if (h1) {
                const float v = rf16(d_fp8_round(fminf(fmaxf(cc / sc, -448.0f), 448.0f)) * sc);
                out0[b0 + lane + 32] = v;
                if (out1) out1[b0 + lane + 32] = v;
            }
        }
    } else {
        for (int e = tid; e < off; e += T) {
            const float v = sm[e];
            out0[e] = v;
            if (out1) out1[e] = v;
        }
    }
    for (int e = off + tid; e < n; e += T) {
        float v = rope_el(sm, off, e, c, s);
        if (prod) v = rf16(v);
        out0[e] = v;
        if (out1) out1[e] = v;
    }
}

// rope (k_rope) of the last n_rot dims of the row in sm [n], then k_hadamard_fp4: the
// Sylvester butterfly (same pairs and ops; skipped when n is not a power of two), the
// 1/sqrt(n) scaling, FP4 E2M1 per 32-block; the result (rounded to F16 when f16, i.e.
// k_round_f16 afterwards) written to out [n]. sm must be complete (caller's barrier).
__device__ inline void rope_hadamard_fp4_row(float *sm, float *out, int n, int n_rot, const float *c, const float *s,
                                             bool f16) {
    const int T = blockDim.x, tid = threadIdx.x;
    rope_pairs(sm + (n - n_rot), n_rot / 2, c, s); // pairs are disjoint: in place
    __syncthreads();
    const bool pow2 = (n & (n - 1)) == 0;
    float norm = 1.0f;
    if (pow2) {
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
    // FP4 per 32-block: T is a multiple of 32 and e0 of T, so a warp holds exactly one
    // block [32k, min(32k+32, n)) per pass; lanes past n add nothing to amax (max is exact
    // in any order, so the warp max equals k_hadamard_fp4's sequential loop)
    for (int e0 = 0; e0 < n; e0 += T) { // block-uniform
        const int e = e0 + tid;
        const bool has = e < n;
        float v = has ? sm[e] : 0.0f;
        if (pow2) v *= norm; // k_hadamard_fp4's `v[i] *= norm`
        float amax = 7.052966104933725e-38f;
        if (has) amax = fmaxf(amax, fabsf(v));
        amax = warp_max(amax);
        const float sc = d_pow2_ceil(amax / 6.0f);
        if (has) {
            const float r = d_fp4_round(fminf(fmaxf(v / sc, -6.0f), 6.0f)) * sc;
            out[e] = f16 ? rf16(r) : r;
        }
    }
}

// ---- host: RoPE cos/sin tables ---------------------------------------------------------
// Table of n positions p_i = p0 + i·stride: tab[i·2·half + j] = cosf(θ), tab[i·2·half +
// half + j] = sinf(θ), θ = (float)p_i · inv_freq[j] — cu_rope's host computation exactly
// (same libm calls on the same f32 angle). Cached per thread (the few most recent
// distinct tables: every layer of a prefill chunk asks for the same positions with one of
// the engine's two inv_freq tables, and cosf/sinf of 2048 x 32 angles cost ~1 ms). The key
// is the VALUES of inv_freq, so a reused address with other contents misses. The pointer
// returned is valid until the next call on this thread.
struct RopeTabEntry {
    std::vector<float> inv, tab;
    int64_t p0 = 0, stride = 0, n = -1;
    uint64_t used = 0;
};
inline const float *rope_table(const float *inv_freq, int half, int64_t p0, int64_t stride, int64_t n) {
    constexpr int kEntries = 4;
    static thread_local RopeTabEntry ent[kEntries];
    static thread_local uint64_t clock = 0;
    int lru = 0;
    for (int k = 0; k < kEntries; k++) {
        RopeTabEntry &e = ent[k];
        if (e.n == n && e.p0 == p0 && e.stride == stride && e.inv.size() == (size_t)half &&
            (half == 0 || memcmp(e.inv.data(), inv_freq, (size_t)half * sizeof(float)) == 0)) {
            e.used = ++clock;
            return e.tab.data();
        }
        if (e.used < ent[lru].used) lru = k;
    }
    RopeTabEntry &e = ent[lru];
    e.inv.assign(inv_freq, inv_freq + half);
    e.tab.resize((size_t)n * 2 * (size_t)half + 1);
    for (int64_t i = 0; i < n; i++) {
        const int64_t pos = p0 + i * stride;
        float *c = e.tab.data() + (size_t)i * 2 * half, *s = c + half;
        for (int j = 0; j < half; j++) {
            float theta = (float)pos * inv_freq[j];
            c[j] = cosf(theta);
            s[j] = sinf(theta);
        }
    }
    e.p0 = p0;
    e.stride = stride;
    e.n = n;
    e.used = ++clock;
    return e.tab.data();
}

}  // namespace rows
}  // namespace ds4cu

#endif
