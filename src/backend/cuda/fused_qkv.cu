// fused_qkv.cu — the fused op qkv_rope (backend.h): one position's q/kv normalisation,
// RoPE, KV storage simulation, raw-ring store, compressor-ring stores and indexer-query
// rotation + Hadamard/FP4 in ONE kernel launch (the op sequence costs ~10-13 launches),
// and its batched form qkv_rope_n: the same per-token work for n_tok consecutive
// positions in one launch (a token dimension in the grid).
//
// Owns: k_qkv_rope and its host entries ds4cu_qkv_rope / ds4cu_qkv_rope_n. Must not:
// change any value relative to the CUDA op sequence it replaces (cu_rmsnorm ->
// k_rmsnorm_v4 / k_rmsnorm, cu_rope -> k_rope, k_fp8_sim_warp, k_round_f16,
// cudaMemcpyAsync, k_axpy, k_hadamard_fp4 in cuda_backend.cu): every element goes
// through the same f32/f64 operations in the same order (row_chain.cuh), so the engine's
// CUDA results do not move when forward.c switches to this op, and qkv_rope_n's token t
// has exactly the bits of qkv_rope at pos0 + t (same kernel, same per-token code). In
// particular the rmsnorm of each row reproduces cu_rmsnorm's kernel choice and block
// size (both depend on the row width and pointer alignment only, so they are decided per
// token on the device) and its double reduction tree; the RoPE cos/sin table is computed
// on the host exactly as cu_rope does (one token: in the kernel parameters; n tokens: a
// staged [n_tok][cos | sin] table). Must not: allocate device memory.
//
// Block roles (blockIdx.x; blockIdx.y = token; all threads of a block take the same
// role, so the __syncthreads inside a role are uniform):
//   [0, n_qblk)             q rows [b·q_rows, b·q_rows + q_rows): rmsnorm (unweighted),
//                           RoPE. q_rows = kQRows when every token's rmsnorm plan is the
//                           float4 one with one float4 per thread and (hd − n_rot) % 4 == 0:
//                           the rows' loads are issued together and each thread ropes its
//                           own float4 in registers (q_rows_v4); else one row per block
//                           through smem (rms_row). Same operations either way.
//   n_qblk                  kv row: rmsnorm · kv_norm -> smem; prod: FP8 of [0, hd-n_rot)
//                           one warp per 64-block, F16 of all; written to kv AND raw
//   next n_ring blocks      ring stores: dst = src (first cw), dst = src + 1·ape (next cw)
//   next n_iqblk blocks     iq rows: RoPE; prod: Hadamard butterfly + FP4 per 32-block.
//                           iq_rows = blockDim/32 rows per block, one warp per row in
//                           registers (iq_row_warp), when !prod or ihd ∈ {64, 128, 256};
//                           else one row per block, butterfly in smem. Same operations.
// Shapes the kernel cannot hold (smem row > 48 KiB, n_rot > 256) run the op sequence
// through the be-> pointers instead (same values by definition).
#include <math.h>
#include <string.h>

#include "common.cuh"
#include "cuda_internal.h"
#include "row_chain.cuh"
extern "C" {
#include "core/common.h"
}

namespace {

using namespace ds4cu::rows;

constexpr int kMaxHalf = 128;          // rope pairs in the by-value table (as cu_rope's RopeTab)
constexpr int kElemsPerRingThread = 4; // ring-store floats per thread (loads issued first)
constexpr size_t kMaxSmem = 48 * 1024; // dynamic smem without an opt-in attribute
constexpr int kMaxTokPerLaunch = 8192; // grid.y and the staged table (8192 x 256 floats) bound
constexpr int kQRows = 4;              // q rows per block on the float4 path (8 spills: the kernel is capped at 64 registers)

// One launch: tokens t < gridDim.y at positions pos0 + t. qkv_rope is the case of one
// token with every modulus 1 (its pointers already address the token's slots).
struct QkvArgs {
    float *q;            // token t: q + t*qs, [n_head][hd], normalised + rotated in place
    float *kv;           // token t: kv + t*kvs, [hd], in place
    const float *kvn;    // [hd] kv_norm weights (NULL: unweighted)
    float *raw;          // [raw_cap][hd]: token t's row ((pos0+t) % raw_cap) (distinct from kv)
    float *iq;           // token t: iq + t*iqs, [iq_heads][ihd], or NULL
    float *pd[2];        // rings [pcap][2*cw]: token t's entry (pos0+t) % pcap (distinct from ps/pa)
    const float *ps[2];  // projections: token t's at ps + t*pss, [2*cw]
    const float *pa[2];  // ape [pR][cw]: token t's row (pos0+t) % pR
    int64_t qs, kvs, iqs, pss[2];
    int64_t pcw[2];      // cw per store
    int64_t ring_tot0, ring_tot; // 2*cw0, 2*cw0 + 2*cw1 (0 when absent)
    int64_t pos0;
    int raw_cap, pcap[2], pR[2];
    int hd, ihd, n_rot, n_head, iq_heads, n_ring_blk;
    int q_rows, n_qblk;           // q rows per block (1 or kQRows), q blocks per token
    int iq_rows;                  // iq rows per block: blockDim / 32 (one warp each) or 1
    int prod;
    float one;                    // the axpy factor, a runtime 1.0f as k_axpy's `a`
    double eps;
    const float *tab;             // NULL: c / s below; else [gridDim.y][2*half] (cos | sin) per token
    float c[kMaxHalf], s[kMaxHalf]; // cos / sin of (float)pos * inv_freq[j] (host, as cu_rope)
};

// The q role's float4 path for nr <= kQRows consecutive rows of width n (16-byte aligned,
// n / 4 <= th, off = n − n_rot a multiple of 4), as rms_row's v4 branch then the rope
// store compute each row: thread tid < th owns float4 tid of every row (rms_row's only
// k = 0 term), the same f64 squares and group_sum_d tree per row (warp butterfly, per-warp
// sums in shq[r][w], lanes < th/32 of them butterflied again), the same scale, and
// rope_el's operations on the pair (4·tid, 4·tid + 1) / (4·tid + 2, 4·tid + 3), which lie
// in the thread's own float4 since off % 4 == 0. In place: each element is read and
// written by its own thread only. Every thread of the block calls it.
__device__ inline void q_rows_v4(float *rows, int nr, int n, int th, int off, const float *c, const float *s,
                                 double eps, double *shq) {
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, nw = th >> 5;
    const bool act = tid < th && tid < n / 4;
    float4 v[kQRows];
#pragma unroll
    for (int r = 0; r < kQRows; r++) {      // every row's load first
        v[r] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (act && r < nr) v[r] = ((const float4 *)(rows + (int64_t)r * n))[tid];
    }
#pragma unroll
    for (int r = 0; r < kQRows; r++) {
        double ss = 0;
        if (act && r < nr) {
            ss += (double)v[r].x * v[r].x;
            ss += (double)v[r].y * v[r].y;
            ss += (double)v[r].z * v[r].z;
            ss += (double)v[r].w * v[r].w;
        }
        ss = ds4cu::warp_sum_d(ss);
        if (lane == 0) shq[r * 32 + w] = ss;
    }
    __syncthreads();
    const int e0 = 4 * tid, j0 = (e0 - off) >> 1;
#pragma unroll
    for (int r = 0; r < kQRows; r++) {
        const double ss = ds4cu::warp_sum_d(lane < nw ? shq[r * 32 + lane] : 0.0);   // all lanes: shuffles
        if (!act || r >= nr) continue;
        const float scale = (float)(1.0 / sqrt(ss / (double)(int64_t)n + eps));
        float4 o = ds4cu::rms_scale4(v[r], scale, false, v[r]);
        if (e0 >= off) {
            const float c0 = c[j0], s0 = s[j0], c1 = c[j0 + 1], s1 = s[j0 + 1];
            o = make_float4(__fsub_rn(__fmul_rn(o.x, c0), __fmul_rn(o.y, s0)),
                            __fadd_rn(__fmul_rn(o.x, s0), __fmul_rn(o.y, c0)),
                            __fsub_rn(__fmul_rn(o.z, c1), __fmul_rn(o.w, s1)),
                            __fadd_rn(__fmul_rn(o.z, s1), __fmul_rn(o.w, c1)));
        }
        ((float4 *)(rows + (int64_t)r * n))[tid] = o;
    }
}

// The iq role's warp-per-row path (iq_rows > 1): one warp owns one indexer-query row of
// width n = 32·E and computes exactly what rope_pairs + rope_hadamard_fp4_row (prod) or
// rope_pairs alone (!prod) compute for it, with no shared memory and no barrier. Lane l
// holds elements [E·l, E·l + E) in registers (E even, so a RoPE pair (off + 2j, off + 2j +
// 1) lies in one lane: n and n_rot are even). The Sylvester butterfly stage st pairs
// element e with e ^ st: in the lane for st < E, lane l ^ (st / E) through a shuffle
// otherwise; the lower element becomes a + b and the upper a − b (a the lower's value, b
// the upper's) — the same f32 operation on the same operands as the smem butterfly, stage
// by stage in the same order. Then v *= 1/sqrt(n) and FP4 per 32-block: a block is
// 32 / E consecutive lanes, whose amax is an xor-shuffle fmaxf (max of non-negative
// values: exact in any order, and a NaN is skipped as the sequential loop skips it).
template <int E>
__device__ inline void iq_row_warp(float *row, int n_rot, const float *c, const float *s) {
    constexpr int n = 32 * E;
    const int lane = threadIdx.x & 31, e0 = E * lane, off = n - n_rot;
    float v[E];
    const bool vec = ((uintptr_t)row % (4 * E)) == 0; // warp-uniform: the row's alignment
    if (vec && E == 4) {
        const float4 x = ((const float4 *)row)[lane];
        v[0] = x.x, v[1] = x.y, v[2 % E] = x.z, v[3 % E] = x.w;
    } else if (vec && E == 2) {
        const float2 x = ((const float2 *)row)[lane];
        v[0] = x.x, v[1 % E] = x.y;
    } else {
#pragma unroll
        for (int k = 0; k < E; k++) v[k] = row[e0 + k];
    }
#pragma unroll
    for (int k = 0; k < E; k += 2) { // RoPE (k_rope / rope_pairs' operations)
        if (e0 + k >= off) {
            const int j = (e0 + k - off) >> 1;
            const float a = v[k], bb = v[k + 1], cj = c[j], sj = s[j];
            v[k] = __fsub_rn(__fmul_rn(a, cj), __fmul_rn(bb, sj));
            v[k + 1] = __fadd_rn(__fmul_rn(a, sj), __fmul_rn(bb, cj));
        }
    }
#pragma unroll
    for (int st = 1; st < E; st *= 2) { // butterfly stages inside the lane
#pragma unroll
        for (int k = 0; k < E; k++) {
            if (k & st) continue;
            const float a = v[k], bb = v[k + st];
            v[k] = a + bb;
            v[k + st] = a - bb;
        }
    }
#pragma unroll
    for (int lm = 1; lm < 32; lm *= 2) { // stages st = lm·E: partner lane l ^ lm
        const bool upper = (lane & lm) != 0;
#pragma unroll
        for (int k = 0; k < E; k++) {
            const float o = __shfl_xor_sync(0xffffffffu, v[k], lm);
            v[k] = upper ? o - v[k] : v[k] + o;
        }
    }
    const float norm = (float)(1.0 / sqrt((double)(int64_t)n));
    float amax = 7.052966104933725e-38f;
#pragma unroll
    for (int k = 0; k < E; k++) {
        v[k] *= norm;
        amax = fmaxf(amax, fabsf(v[k]));
    }
#pragma unroll
    for (int lm = 1; lm < 32 / E; lm *= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, lm));
    const float sc = ds4cu::d_pow2_ceil(amax / 6.0f);
#pragma unroll
    for (int k = 0; k < E; k++) v[k] = ds4cu::d_fp4_round(fminf(fmaxf(v[k] / sc, -6.0f), 6.0f)) * sc;
    if (vec && E == 4) {
        ((float4 *)row)[lane] = make_float4(v[0], v[1], v[2 % E], v[3 % E]);
    } else if (vec && E == 2) {
        ((float2 *)row)[lane] = make_float2(v[0], v[1 % E]);
    } else {
#pragma unroll
        for (int k = 0; k < E; k++) row[e0 + k] = v[k];
    }
}

// The iq widths the warp path holds in prod (a power of two, E = n / 32 even and small).
__host__ __device__ inline bool iq_warp_width(int n) { return n == 64 || n == 128 || n == 256; }

__global__ void __launch_bounds__(1024) k_qkv_rope(const __grid_constant__ QkvArgs A) {
    extern __shared__ float4 smem4[]; // [max(hd, ihd)] floats, 16-byte aligned
    float *sm = (float *)smem4;
    __shared__ double sh[32];
    __shared__ double shq[kQRows * 32];
    const int T = blockDim.x, tid = threadIdx.x;
    const int t = blockIdx.y;
    const int64_t p = A.pos0 + t;
    int b = blockIdx.x;
    // programmatic dependent launch: every buffer this kernel reads (q, kv, the ring
    // sources, iq) is written by earlier kernels, so wait first; then let the next
    // kernel of the stream start launching (it waits for this grid in its own pdl_wait)
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    const int half = A.n_rot / 2;
    const float *c = A.tab ? A.tab + (int64_t)t * 2 * half : A.c;
    const float *s = A.tab ? c + half : A.s;

    if (b < A.n_qblk) { // ---- q rows: rmsnorm, rope
        float *q = A.q + (int64_t)t * A.qs;
        int v4, th;
        rms_plan(q, nullptr, A.hd, &v4, &th); // cu_rmsnorm(q, hd, NULL, q, hd, hd, n_head)
        const int r0 = b * A.q_rows, nr = A.n_head - r0 < A.q_rows ? A.n_head - r0 : A.q_rows;
        const int off = A.hd - A.n_rot;
        if (v4 && A.hd / 4 <= th && off % 4 == 0) {   // token-uniform (the host's q_rows test)
            q_rows_v4(q + (int64_t)r0 * A.hd, nr, A.hd, th, off, c, s, A.eps, shq);
            return;
        }
        for (int r = 0; r < nr; r++) {
            float *row = q + (int64_t)(r0 + r) * A.hd;
            rms_row(row, nullptr, A.hd, v4, th, A.eps, sm, sh);
            __syncthreads();
            for (int e = tid; e < A.hd; e += T) row[e] = e < off ? sm[e] : rope_el(sm, off, e, c, s);
            __syncthreads();                  // sm is the next row's
        }
        return;
    }
    b -= A.n_qblk;
    if (b == 0) { // ---- kv row: rmsnorm · w, rope, (fp8, f16), kv and raw
        float *kv = A.kv + (int64_t)t * A.kvs;
        int v4, th;
        rms_plan(kv, A.kvn, A.hd, &v4, &th);
        rms_row(kv, A.kvn, A.hd, v4, th, A.eps, sm, sh);
        __syncthreads();
        kv_row_store(sm, A.hd, A.n_rot, c, s, A.prod != 0, kv, A.raw + (p % A.raw_cap) * A.hd);
        return;
    }
    b -= 1;
    if (b < A.n_ring_blk) { // ---- ring stores: copy, then axpy with a = 1 on the second half
        float *pd[2];
        const float *ps[2], *pa[2];
        for (int j = 0; j < 2; j++) {
            pd[j] = A.pd[j] ? A.pd[j] + (p % A.pcap[j]) * 2 * A.pcw[j] : nullptr;
            ps[j] = A.ps[j] ? A.ps[j] + (int64_t)t * A.pss[j] : nullptr;
            pa[j] = A.pa[j] ? A.pa[j] + (p % A.pR[j]) * A.pcw[j] : nullptr;
        }
        const int64_t base = (int64_t)b * T * kElemsPerRingThread;
        float sv[kElemsPerRingThread], av[kElemsPerRingThread];
#pragma unroll
        for (int k = 0; k < kElemsPerRingThread; k++) { // every load before any store
            const int64_t e = base + tid + (int64_t)k * T;
            av[k] = 0.0f;
            if (e < A.ring_tot) {
                const bool j1 = e >= A.ring_tot0;
                const int64_t i = j1 ? e - A.ring_tot0 : e, cw = j1 ? A.pcw[1] : A.pcw[0];
                sv[k] = (j1 ? ps[1] : ps[0])[i];
                if (i >= cw) av[k] = (j1 ? pa[1] : pa[0])[i - cw];
            }
        }
#pragma unroll
        for (int k = 0; k < kElemsPerRingThread; k++) {
            const int64_t e = base + tid + (int64_t)k * T;
            if (e < A.ring_tot) {
                const bool j1 = e >= A.ring_tot0;
                const int64_t i = j1 ? e - A.ring_tot0 : e, cw = j1 ? A.pcw[1] : A.pcw[0];
                (j1 ? pd[1] : pd[0])[i] = i < cw ? sv[k] : __fadd_rn(sv[k], __fmul_rn(A.one, av[k]));
            }
        }
        return;
    }
    b -= A.n_ring_blk;
    if (A.iq_rows > 1) { // ---- iq rows, one warp each (no barrier: warps may leave)
        const int r = b * A.iq_rows + (tid >> 5);
        if (r >= A.iq_heads) return;
        float *row = A.iq + (int64_t)t * A.iqs + (int64_t)r * A.ihd;
        if (!A.prod) { // k_rope alone: rope_pairs with the warp's 32 lanes
            float *p0 = row + (A.ihd - A.n_rot);
            for (int j = tid & 31; j < half; j += 32) {
                float *pp = p0 + 2 * j;
                const float a = pp[0], bb = pp[1], cj = c[j], sj = s[j];
                pp[0] = __fsub_rn(__fmul_rn(a, cj), __fmul_rn(bb, sj));
                pp[1] = __fadd_rn(__fmul_rn(a, sj), __fmul_rn(bb, cj));
            }
            return;
        }
        if (A.ihd == 64) iq_row_warp<2>(row, A.n_rot, c, s);
        else if (A.ihd == 128) iq_row_warp<4>(row, A.n_rot, c, s);
        else iq_row_warp<8>(row, A.n_rot, c, s);
        return;
    }
    if (b < A.iq_heads) { // ---- iq row: rope, (hadamard + fp4), one row per block
        float *row = A.iq + (int64_t)t * A.iqs + (int64_t)b * A.ihd;
        const int n = A.ihd;
        if (!A.prod) { // k_rope alone
            rope_pairs(row + (n - A.n_rot), half, c, s);
            return;
        }
        for (int e = tid; e < n; e += T) sm[e] = row[e];
        __syncthreads();
        rope_hadamard_fp4_row(sm, row, n, A.n_rot, c, s, false);
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

// Dynamic shared memory of a launch: the q / kv row, and the iq row when it gets the
// Hadamard butterfly. 0 when the kernel cannot hold the shape (the caller runs qkv_seq).
size_t qkv_smem(int64_t hd, int n_rot, bool prod, int iq_heads, int64_t ihd) {
    int64_t sm_floats = hd;
    if (iq_heads && prod && ihd > sm_floats) sm_floats = ihd;
    const size_t smem = (size_t)sm_floats * sizeof(float);
    if (n_rot / 2 > kMaxHalf || smem > kMaxSmem || (iq_heads && ihd > (int64_t)1 << 24)) return 0;
    return smem;
}

// Block size and grid of a launch of `n_tok` tokens whose q / kv rows start at q + t*qs
// and kv + t*kvs: at least every rmsnorm's own block size (its reduction tree depends on
// it; the plan of a token depends on 16-byte alignment, periodic in t with period <= 4, so
// the first four tokens show every plan that occurs), 128 for the ring / iq roles (Flash:
// ihd 128 = one element each).
void qkv_launch(ds4_backend *be, QkvArgs &A, const float *kv_norm, int n_tok, size_t smem) {
    int T = 128;
    bool qv4 = A.n_head > 0 && (A.hd - A.n_rot) % 4 == 0;   // q_rows_v4 for every token
    for (int t = 0; t < n_tok && t < 4; t++) {
        int v4, th;
        rms_plan(A.q + (int64_t)t * A.qs, NULL, A.hd, &v4, &th);
        qv4 = qv4 && v4 && A.hd / 4 <= th;
        if (th > T) T = th;
        rms_plan(A.kv + (int64_t)t * A.kvs, kv_norm, A.hd, &v4, &th);
        if (th > T) T = th;
    }
    A.n_ring_blk = (int)((A.ring_tot + (int64_t)T * kElemsPerRingThread - 1) / ((int64_t)T * kElemsPerRingThread));
    A.q_rows = qv4 ? kQRows : 1;
    A.n_qblk = (A.n_head + A.q_rows - 1) / A.q_rows;
    A.iq_rows = !A.prod || iq_warp_width(A.ihd) ? T / 32 : 1;
    const int n_iqblk = (A.iq_heads + A.iq_rows - 1) / A.iq_rows;
    // Flash CSA: 16 q (64 rows) + 1 kv + 5 ring (2560 floats) + 16 iq (64 rows) = 38 blocks of 128 per token
    const unsigned grid = (unsigned)(A.n_qblk + 1 + A.n_ring_blk + n_iqblk);
    DS4CU_CK(ds4cu::launch(k_qkv_rope, dim3(grid, (unsigned)n_tok), dim3((unsigned)T), smem, ds4cu::stream(be), A));
}

// The fields both entries set the same way.
void qkv_common(QkvArgs &A, float *q, int n_head, float *kv, const float *kv_norm, int64_t hd, int n_rot, bool prod,
                double eps, float *iq, int iq_heads, int64_t ihd) {
    memset(&A, 0, sizeof A);
    A.q = q;
    A.kv = kv;
    A.kvn = kv_norm;
    A.iq = iq;
    A.hd = (int)hd;
    A.ihd = (int)ihd;
    A.n_rot = n_rot;
    A.n_head = n_head;
    A.iq_heads = iq_heads;
    A.prod = prod ? 1 : 0;
    A.one = 1.0f;
    A.eps = eps;
    A.raw_cap = 1;
    for (int j = 0; j < 2; j++) A.pcap[j] = A.pR[j] = 1;
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
    const size_t smem = qkv_smem(hd, n_rot, prod, iq_heads, ihd);
    if (!smem) {
        qkv_seq(be, q, n_head, kv, kv_norm, hd, n_rot, pos, inv_freq, prod, eps, raw, iq, iq_heads, ihd, n_put, put_dst,
                put_src, put_ape, put_cw);
        return;
    }
    QkvArgs A;
    qkv_common(A, q, n_head, kv, kv_norm, hd, n_rot, prod, eps, iq, iq_heads, ihd);
    A.raw = raw; // the token's row itself (raw_cap 1)
    A.pos0 = pos;
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
    qkv_launch(be, A, kv_norm, 1, smem);
}

void ds4cu_qkv_rope_n(ds4_backend *be, float *q, int64_t qs, int n_head, float *kv, int64_t kvs, const float *kv_norm,
                      int64_t hd, int n_rot, int64_t pos0, int n_tok, const float *inv_freq, bool prod, double eps,
                      float *raw, int raw_cap, float *iq, int64_t iqs, int iq_heads, int64_t ihd, int n_put,
                      float *const *put_dst, const int *put_cap, const float *const *put_src, const int64_t *put_ss,
                      const float *const *put_ape, const int *put_R, const int64_t *put_cw) {
    DS4_ASSERT(hd > 0 && n_head >= 0 && n_rot >= 0 && n_rot % 2 == 0 && n_rot <= hd);
    DS4_ASSERT(n_put >= 0 && n_put <= 2 && raw_cap > 0 && pos0 >= 0);
    if (n_tok <= 0) return;
    if (!iq) iq_heads = 0;
    DS4_ASSERT(iq_heads >= 0 && (iq_heads == 0 || (ihd > 0 && n_rot <= ihd)));
    // Tokens of one launch run concurrently, so no two of them may write the same raw or
    // ring slot: a launch holds at most min(raw_cap, put_cap) tokens, later groups follow
    // in stream order (the per-token chain's "later token wins"). forward.c's sub-batches
    // fit in one launch.
    int grp = n_tok < kMaxTokPerLaunch ? n_tok : kMaxTokPerLaunch;
    if (raw_cap < grp) grp = raw_cap;
    for (int j = 0; j < n_put; j++) {
        DS4_ASSERT(put_cw[j] >= 0 && put_cap[j] > 0 && put_R[j] > 0);
        if (put_cap[j] < grp) grp = put_cap[j];
    }
    const size_t smem = qkv_smem(hd, n_rot, prod, iq_heads, ihd);
    const int half = n_rot / 2;
    for (int t0 = 0; t0 < n_tok; t0 += grp) {
        const int nt = n_tok - t0 < grp ? n_tok - t0 : grp;
        if (!smem) { // the op sequence, token by token
            for (int t = t0; t < t0 + nt; t++) {
                const int64_t p = pos0 + t;
                float *pd[2];
                const float *ps[2], *pa[2];
                for (int j = 0; j < n_put; j++) {
                    pd[j] = put_dst[j] + (p % put_cap[j]) * 2 * put_cw[j];
                    ps[j] = put_src[j] + (int64_t)t * put_ss[j];
                    pa[j] = put_ape[j] + (p % put_R[j]) * put_cw[j];
                }
                qkv_seq(be, q + (int64_t)t * qs, n_head, kv + (int64_t)t * kvs, kv_norm, hd, n_rot, p, inv_freq, prod,
                        eps, raw + (p % raw_cap) * hd, iq_heads ? iq + (int64_t)t * iqs : NULL, iq_heads, ihd, n_put,
                        pd, ps, pa, put_cw);
            }
            continue;
        }
        QkvArgs A;
        qkv_common(A, q + (int64_t)t0 * qs, n_head, kv + (int64_t)t0 * kvs, kv_norm, hd, n_rot, prod, eps,
                   iq_heads ? iq + (int64_t)t0 * iqs : NULL, iq_heads, ihd);
        A.qs = qs;
        A.kvs = kvs;
        A.iqs = iqs;
        A.raw = raw;
        A.raw_cap = raw_cap;
        A.pos0 = pos0 + t0;
        for (int j = 0; j < n_put; j++) {
            A.pd[j] = put_dst[j];
            A.pcap[j] = put_cap[j];
            A.ps[j] = put_src[j] + (int64_t)t0 * put_ss[j];
            A.pss[j] = put_ss[j];
            A.pa[j] = put_ape[j];
            A.pR[j] = put_R[j];
            A.pcw[j] = put_cw[j];
        }
        A.ring_tot0 = 2 * A.pcw[0];
        A.ring_tot = A.ring_tot0 + 2 * A.pcw[1];
        if (half > 0) {
            // [nt][cos | sin] of positions pos0+t0 .. (cu_rope's host math; cached per thread)
            const float *h = rope_table(inv_freq, half, A.pos0, 1, nt);
            A.tab = (const float *)ds4cu::stage(be, h, (size_t)nt * 2 * half * sizeof(float));
        }
        qkv_launch(be, A, kv_norm, nt, smem);
    }
}
