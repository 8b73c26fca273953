// attn_n.cu — the batched op attention_n of the CUDA backend (backend.h, "optional batched
// ops for prefill chunks"): attention_ex for every token of a prefill sub-batch in one
// launch (plus one f16 staging launch in production numerics).
//
// Owns: k_rows_f16 (the f32 key=value rows a sub-batch can read, rounded to f16 into
// SCR_ATTN_N), k_attn_n_tc (the tensor-core path: production numerics, hd in
// {64, 128, 256, 512}), k_attn_n_f32 (CUDA-core f32 path: exact numerics and every other
// shape), the per-token generic fallback for hd beyond the f32 kernel's shared memory, and the entry
// point ds4cu_attention_n. Must not: let a token's values depend on the other tokens of
// the call or on timing (one block owns one (token, head group); every sum has an order
// fixed by the shapes), or read device values back to the host (except the huge-hd
// fallback, which runs the generic op sequence).
//
// Row set of token t at p = pos0 + t (backend.h attention_n): j < nwin: the window row of
// position pw0 + j (pw0 = max(0, p − n_win + 1), slot % raw_cap); then the compressed rows
// (R > 0, n_vis = (p + 1) / R): idx[t·k_top + c] for c < k_top when idx != NULL and
// n_vis > k_top, else c < n_vis. Sink attention over them, then the inverse rope at p
// with the host table of cu_rope / attention_ex (cosf, −sinf of (float)p · inv_freq[j]).
//
// Tensor-core path (production numerics). There every cached row is an f16 value (qkv_rope
// and compress_rows end with round_f16), so k_rows_f16 converts the rows exactly and K = V
// is an exact f16 operand. The f32 operands are split: q' = q · 2^e_h (e_h per head puts
// max|q_h'| in [2^14, 2^15)), q' = hi + lo with hi = f16(q'), lo = f16(q' − hi): hi + lo
// equals q' to 2^-23 · max|q_h'| (lo's own rounding); the probabilities likewise as
// 2^15 · p = hi + lo (p <= 1). Each product pair goes through mma.m16n8k16 (f16 inputs,
// f32 accumulation, products exact), so logits and outputs carry f32-level rounding only.
// (A row that is not an f16 value would be rounded to f16 here: production rows never are.)
// Compact comp rows (ds4cu::kv_compact, kv_fmt.h): k_rows_f16 decodes them (kv_fmt.h's
// exact decoder) and rounds the f32 value to f16 like an f32 row's, so comp16 holds the
// same halves either way; the f32 path decodes them while staging its tiles; the huge-hd
// fallback hands them to ds4cu::attention with this call's n_rot.
// Block = (token, 32 heads), 8 warps, rows in tiles of 64 through shared memory (cp.async,
// double-buffered, gathered by the row list):
//  - QK: warp (hq, kq) keeps the hi/lo A fragments of heads hq·16..+16 × dims kq·hd/4..+hd/4
//    in registers for the whole kernel and computes that quarter's partial logits of the
//    tile's 64 rows; the four quarters are added in shared memory in the order 0+1+2+3;
//  - softmax: warp w keeps the running max M and denominator S of heads 4w..4w+3 (f32,
//    expf, as attention_ex), writes the tile's 2^15·p as hi/lo f16 and α = e^{M−M'};
//  - P·V: warp w owns O[32 heads][dims w·hd/8..+hd/8] (f32 accumulators in registers),
//    rescales by α and adds P_hi·V + P_lo·V over the tile's rows in order.
// The sink, the normalisation and the inverse rope are applied while storing (attention_ex's
// root formulas). Flash (64 heads × 512, 640 rows/token): 2 × 2 × 64·640·512·2 FLOP ≈ 84
// MFLOP of f16 mma per token, ~41k mma.m16n8k16; rows read 2 × 640 KiB per token from L2.
// (A warp-specialised variant — QK and P·V warps overlapping consecutive tiles — was tried
// and removed: not faster on the H200, and compute-sanitizer racecheck reported hazards.)
#include "common.cuh"
#include "cuda_internal.h"
#include "backend/kv_fmt.h"

#include <cuda_fp16.h>
#include <math.h>
#include <string.h>

#include <vector>

extern "C" {
#include "core/common.h"
}

namespace {

constexpr int kThreads = 256;    // both kernels: 8 warps
constexpr int kHG = 32;          // tensor path: heads per block (two m16 tiles)
constexpr int kNT = 64;          // tensor path: rows per tile
constexpr int kFG = 8;           // f32 path: heads per block (one per warp)
constexpr int kFT = 32;          // f32 path: rows per tile at most (one logit per lane)
constexpr int kRopeMax = 128;    // rope pairs (n_rot / 2), as cu_rope
constexpr float kPScale = 32768.0f;   // 2^15: p ∈ [0, 1] scaled into f16's normal range

struct AnArgs {
    const float *q;          // [n_tok][qs]: n_head rows of hd per token
    int64_t qs;
    const float *raw;        // f32 path: raw ring [raw_cap][hd]
    const float *comp;       // f32 path: compressed rows [*][hd] (NULL when R == 0)
    const uint8_t *compc;    // f32 path: compact compressed rows [*][comp_rb bytes] (NULL: comp)
    int64_t comp_rb;
    const __half *raw16;     // tensor path: f16 copy of the ring, by slot [raw_cap][hd]
    const __half *comp16;    // tensor path: f16 copy of the compressed rows [ncmax][hd]
    const int32_t *idx;      // [n_tok][k_top] (backend memory) or NULL
    const float *sinks;      // [n_head]
    const float2 *rope;      // [n_tok][half]: (cos θ, −sin θ) of each token's position
    float *out;              // [n_tok][os]: n_head rows of hd per token
    int64_t os, pos0;
    int raw_cap, n_win, R, k_top, n_head, hd, half, n_tok, ft;   // ft: f32 path rows per tile
    int n_rot;               // compact rows: their rope dims (2·half)
    float scale;
};

// A token's row list (see the header).
struct TokRows {
    int nwin, ncomp;
    unsigned slot0;          // slot of the first window position
    const int32_t *ix;       // compressed row indices (NULL: rows 0..ncomp-1)
};

__device__ __forceinline__ TokRows tok_rows(const AnArgs &a, int t) {
    TokRows r;
    const int64_t p = a.pos0 + t;
    const int64_t pw0 = p - a.n_win + 1 > 0 ? p - a.n_win + 1 : 0;
    r.nwin = (int)(p - pw0 + 1);
    r.slot0 = (unsigned)(pw0 % a.raw_cap);
    r.ncomp = 0;
    r.ix = nullptr;
    if (a.R > 0) {
        const int64_t nv = (p + 1) / a.R;
        if (a.idx && nv > a.k_top) {
            r.ncomp = a.k_top;
            r.ix = a.idx + (int64_t)t * a.k_top;
        } else {
            r.ncomp = (int)nv;
        }
    }
    return r;
}

// Row j (< nwin + ncomp) of the list: its first element in raw (window) or comp.
template <typename T>
__device__ __forceinline__ const T *row_ptr(const T *raw, const T *comp, const TokRows &r, int raw_cap, int hd,
                                            int j) {
    if (j < r.nwin) return raw + (int64_t)(((r.slot0 + (unsigned)j) % (unsigned)raw_cap)) * hd;
    const int c = j - r.nwin;
    const int row = r.ix ? __ldg(r.ix + c) : c;
    return comp + (int64_t)row * hd;
}

__device__ __forceinline__ void cpa16(void *dst, const void *src, bool valid) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    const int sz = valid ? 16 : 0;   // 0: the 16 bytes are zero-filled, nothing is read
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(sz) : "memory");
}

// The final per-head factor of attention_ex's root: with the running max m and
// denominator s (sink not yet included), out = acc · f.
__device__ __forceinline__ float sink_factor(float m, float s, float sk) {
    const float m2 = fmaxf(m, sk);
    if (m2 == -INFINITY) return 0.0f;
    const float am = m == -INFINITY ? 0.0f : expf(m - m2);
    const float den = s * am + expf(sk - m2);
    return am / den;
}

// The inverse rope of element d of a head whose (already normalised) values are x[]:
// attention_ex's / k_rope's arithmetic with the table entry (c, s) = (cos θ, −sin θ).
__device__ __forceinline__ float rope_elem(const float *x, int d, int off, int half, const float2 *tab) {
    const int k = d - off;
    if (k < 0 || (k >> 1) >= half) return x[d];
    const int j = k >> 1;
    const float x0 = x[off + 2 * j], x1 = x[off + 2 * j + 1];
    const float2 cs = tab[j];
    return (k & 1) ? __fadd_rn(__fmul_rn(x0, cs.y), __fmul_rn(x1, cs.x))
                   : __fsub_rn(__fmul_rn(x0, cs.x), __fmul_rn(x1, cs.y));
}

// =====================================================================================
// f16 staging of the rows (tensor path)
// =====================================================================================
// Rows u < nr: ring slots (sa + u) % raw_cap; then compressed rows u − nr < nc (f32, or
// compact rows of crb bytes with n_rot rope dims when compc != NULL: decoded exactly, then
// rounded as the f32 value). One warp per row, float4 loads (hd % 64 == 0 on this path,
// 16-byte aligned f32 rows).
__global__ void __launch_bounds__(kThreads) k_rows_f16(const float *raw, const float *comp, const uint8_t *compc,
                                                       int64_t crb, int n_rot, __half *raw16, __half *comp16, int hd,
                                                       int raw_cap, int sa, int nr, int nc) {
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    const int64_t u = (int64_t)blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (u >= (int64_t)nr + nc) return;   // whole warps leave together
    if (u >= nr && compc) {
        const uint8_t *row = compc + (u - nr) * crb;
        __half *dst = comp16 + (u - nr) * hd;
        for (int c = lane; c < hd / 4; c += 32) {
            float v[4];
#pragma unroll
            for (int k = 0; k < 4; k++) v[k] = ds4_kv_attn_get(row, hd, n_rot, 4 * c + k);
            const __half2 h0 = __floats2half2_rn(v[0], v[1]), h1 = __floats2half2_rn(v[2], v[3]);
            uint2 w;
            w.x = *reinterpret_cast<const uint32_t *>(&h0);
            w.y = *reinterpret_cast<const uint32_t *>(&h1);
            reinterpret_cast<uint2 *>(dst)[c] = w;
        }
        return;
    }
    const float *src;
    __half *dst;
    if (u < nr) {
        const int64_t slot = ((int64_t)sa + u) % raw_cap;
        src = raw + slot * hd;
        dst = raw16 + slot * hd;
    } else {
        src = comp + (u - nr) * hd;
        dst = comp16 + (u - nr) * hd;
    }
    for (int c = lane; c < hd / 4; c += 32) {
        const float4 v = __ldg(reinterpret_cast<const float4 *>(src) + c);
        const __half2 h0 = __floats2half2_rn(v.x, v.y), h1 = __floats2half2_rn(v.z, v.w);
        uint2 w;
        w.x = *reinterpret_cast<const uint32_t *>(&h0);
        w.y = *reinterpret_cast<const uint32_t *>(&h1);
        reinterpret_cast<uint2 *>(dst)[c] = w;
    }
}

// =====================================================================================
// tensor-core path
// =====================================================================================
__device__ __forceinline__ uint32_t h2u(__half2 h) { return *reinterpret_cast<uint32_t *>(&h); }

// D += A·B, m16n8k16, f16 inputs, f32 accumulators (PTX fragment layouts).
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s)
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void *p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s)
                 : "memory");
}
__device__ __forceinline__ void ldsm_x2_t(uint32_t &r0, uint32_t &r1, const void *p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r0), "=r"(r1)
                 : "r"(s)
                 : "memory");
}

// Shared-memory layout of k_attn_n_tc<HD> (strides padded by 16 bytes so the 8 row
// addresses of every ldmatrix hit distinct bank groups).
template <int HD>
struct TcSm {
    static constexpr int KST = HD + 8;      // K=V tile row stride (halves)
    static constexpr int SPS = kNT + 8;     // partial-logit row stride (floats)
    static constexpr int PST = kNT + 8;     // P row stride (halves)
    static constexpr int OST = HD + 8;      // output staging row stride (floats)
    static constexpr size_t kb = 0;                                              // [2][kNT][KST] f16
    static constexpr size_t sp = kb + (size_t)2 * kNT * KST * 2;                 // [4][kHG][SPS] f32
    static constexpr size_t ph = sp + (size_t)4 * kHG * SPS * 4;                 // [kHG][PST] f16
    static constexpr size_t pl = ph + (size_t)kHG * PST * 2;                     // [kHG][PST] f16
    static constexpr size_t vec = pl + (size_t)kHG * PST * 2;                    // alpha, qmul, fh, fin [kHG]
    static constexpr size_t bytes = vec + (size_t)4 * kHG * 4;
    static_assert((size_t)kHG * OST * 4 <= sp, "output staging fits in the tile buffers");
    static_assert(sp % 16 == 0 && ph % 16 == 0 && pl % 16 == 0 && vec % 16 == 0, "16-byte aligned regions");
};

// Block b: token t = b / n_hg, heads g·32 .. g·32 + 31 (g = b % n_hg).
template <int HD>
__global__ void __launch_bounds__(kThreads, 1) k_attn_n_tc(AnArgs a) {
    ds4cu::pdl_wait();     // launched with PDL (ds4cu::launch): the previous kernels'
    ds4cu::pdl_trigger();  // outputs (rows, q, idx) are visible only after the wait
    using L = TcSm<HD>;
    constexpr int KST = L::KST, SPS = L::SPS, PST = L::PST, OST = L::OST;
    constexpr int KQ = HD / 4;     // QK: dims per warp quarter
    constexpr int KS = KQ / 16;    // QK: k-steps per warp
    constexpr int DW = HD / 8;     // P·V: dims per warp
    constexpr int NTL = DW / 8;    // P·V: n-tiles per warp (1, 2, 4 or 8)
    static_assert(HD % 64 == 0 && HD <= 512, "HD in {64, 128, 256, 512}");
    extern __shared__ float4 tc_sm4[];
    unsigned char *smb = reinterpret_cast<unsigned char *>(tc_sm4);
    __half *kbuf = reinterpret_cast<__half *>(smb + L::kb);
    float *sp = reinterpret_cast<float *>(smb + L::sp);
    __half *ph = reinterpret_cast<__half *>(smb + L::ph);
    __half *pl = reinterpret_cast<__half *>(smb + L::pl);
    float *alpha = reinterpret_cast<float *>(smb + L::vec);
    float *qmul = alpha + kHG, *fh = qmul + kHG, *fin = fh + kHG;

    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int n_hg = (a.n_head + kHG - 1) / kHG;
    const int t = (int)(blockIdx.x / n_hg), g = (int)(blockIdx.x % n_hg);
    const TokRows tr = tok_rows(a, t);
    const int N = tr.nwin + tr.ncomp;
    const int ntile = (N + kNT - 1) / kNT;

    // cp.async of tile it into buffer it & 1: 16-byte chunks, zero rows past N.
    auto issue = [&](int it) {
        __half *dst = kbuf + (it & 1) * kNT * KST;
        constexpr int CPR = HD / 8;   // chunks per row
        for (int u = tid; u < kNT * CPR; u += kThreads) {
            const int r = u / CPR, c = u % CPR, j = it * kNT + r;
            const bool v = j < N;
            const __half *src = v ? row_ptr(a.raw16, a.comp16, tr, a.raw_cap, HD, j) + c * 8 : a.raw16;
            cpa16(dst + r * KST + c * 8, src, v);
        }
    };
    if (ntile > 0) issue(0);
    ds4cu::cp_async_commit();

    // per-head scale 2^e (max|q'| in [2^14, 2^15)) and logit factor scale · 2^-e
    const float *qt = a.q + (int64_t)t * a.qs;
#pragma unroll
    for (int i = 0; i < kHG / 8; i++) {
        const int h = w * (kHG / 8) + i, head = g * kHG + h;
        float am = 0.0f;
        if (head < a.n_head)
            for (int d = lane; d < HD; d += 32) am = fmaxf(am, fabsf(qt[(int64_t)head * HD + d]));
        am = ds4cu::warp_max(am);
        if (lane == 0) {
            int e = 0;
            if (am > 0.0f && am <= 3.0e38f) {
                int ex;
                frexpf(am, &ex);
                e = min(100, max(-100, 15 - ex));
            }
            qmul[h] = head < a.n_head ? ldexpf(1.0f, e) : 0.0f;
            fh[h] = ldexpf(a.scale, -e);
        }
    }
    __syncthreads();

    // QK role: heads hq·16 + (gid, gid + 8), dims kq·KQ + ks·16 + (2tig, 2tig + 8) (+1)
    const int hq = w & 1, kq = w >> 1;
    uint32_t qa[KS][2][4];   // [k-step][hi, lo][A fragment]
#pragma unroll
    for (int ks = 0; ks < KS; ks++)
#pragma unroll
        for (int f = 0; f < 4; f++) {
            const int h = hq * 16 + gid + (f & 1) * 8, head = g * kHG + h;
            const int d = kq * KQ + ks * 16 + 2 * tig + (f >> 1) * 8;
            const float m = qmul[h];
            float v0 = 0.0f, v1 = 0.0f;
            if (head < a.n_head) {
                v0 = qt[(int64_t)head * HD + d] * m;   // exact: m is a power of two
                v1 = qt[(int64_t)head * HD + d + 1] * m;
            }
            const __half2 hi = __floats2half2_rn(v0, v1);
            const float2 hf = __half22float2(hi);
            const __half2 lo = __floats2half2_rn(v0 - hf.x, v1 - hf.y);   // the differences are exact
            qa[ks][0][f] = h2u(hi);
            qa[ks][1][f] = h2u(lo);
        }

    float o[2][NTL][4];   // P·V role: O[m-tile][n-tile] of heads mt·16 + (gid, gid + 8), dims w·DW + nt·8 + 2tig (+1)
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < NTL; nt++)
#pragma unroll
            for (int c = 0; c < 4; c++) o[mt][nt][c] = 0.0f;
    float M[kHG / 8], S[kHG / 8];   // softmax role: heads w·4 + i (warp-uniform)
#pragma unroll
    for (int i = 0; i < kHG / 8; i++) {
        M[i] = -INFINITY;
        S[i] = 0.0f;
    }

    for (int it = 0; it < ntile; it++) {
        if (it + 1 < ntile) issue(it + 1);   // buffer (it+1)&1 was released by the barrier ending it-1
        ds4cu::cp_async_commit();
        ds4cu::cp_async_wait<1>();           // this thread's copies of tile it are done
        __syncthreads();                     // ... and everyone's
        const __half *kt = kbuf + (it & 1) * kNT * KST;

        // ---- QK: the quarter kq's partial logits of heads hq·16..+16 × the 64 rows
        {
            float acc[kNT / 8][4];
#pragma unroll
            for (int nt = 0; nt < kNT / 8; nt++)
#pragma unroll
                for (int c = 0; c < 4; c++) acc[nt][c] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                const int k0 = kq * KQ + ks * 16;
#pragma unroll
                for (int np = 0; np < kNT / 16; np++) {
                    // matrices: rows np·16 + (0..7 | 8..15) × dims k0 + (0..7 | 8..15):
                    // b[0], b[1] = n-tile 2np (dims lo, hi); b[2], b[3] = n-tile 2np + 1
                    uint32_t b[4];
                    ldsm_x4(b, kt + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * KST + k0 + ((lane >> 3) & 1) * 8);
                    mma16816(acc[2 * np], qa[ks][0], b[0], b[1]);
                    mma16816(acc[2 * np], qa[ks][1], b[0], b[1]);
                    mma16816(acc[2 * np + 1], qa[ks][0], b[2], b[3]);
                    mma16816(acc[2 * np + 1], qa[ks][1], b[2], b[3]);
                }
            }
            float *spw = sp + (size_t)kq * kHG * SPS;
#pragma unroll
            for (int nt = 0; nt < kNT / 8; nt++) {
                const int r = nt * 8 + 2 * tig;
                *reinterpret_cast<float2 *>(spw + (hq * 16 + gid) * SPS + r) = make_float2(acc[nt][0], acc[nt][1]);
                *reinterpret_cast<float2 *>(spw + (hq * 16 + gid + 8) * SPS + r) = make_float2(acc[nt][2], acc[nt][3]);
            }
        }
        __syncthreads();

        // ---- online softmax: warp w, heads w·4 + i, rows lane and lane + 32
        {
            const int nrow = min(kNT, N - it * kNT);
#pragma unroll
            for (int i = 0; i < kHG / 8; i++) {
                const int h = w * (kHG / 8) + i;
                const float f = fh[h];
                float l[2];
#pragma unroll
                for (int rr = 0; rr < 2; rr++) {
                    const int r = lane + 32 * rr;
                    const float s = ((sp[(0 * kHG + h) * SPS + r] + sp[(1 * kHG + h) * SPS + r]) +
                                     sp[(2 * kHG + h) * SPS + r]) +
                                    sp[(3 * kHG + h) * SPS + r];
                    l[rr] = r < nrow ? s * f : -INFINITY;
                }
                const float mt = ds4cu::warp_max(fmaxf(l[0], l[1]));
                const float Mn = fmaxf(M[i], mt);   // finite: a tile has at least one row
                const float al = M[i] == -INFINITY ? 0.0f : expf(M[i] - Mn);
                const float p0 = expf(l[0] - Mn), p1 = expf(l[1] - Mn);   // exp(-inf) = 0: padding
                const float ps = ds4cu::warp_sum(p0 + p1);
                S[i] = fmaf(S[i], al, ps);
                M[i] = Mn;
#pragma unroll
                for (int rr = 0; rr < 2; rr++) {
                    const float v = (rr ? p1 : p0) * kPScale;   // exact
                    const __half hi = __float2half_rn(v);
                    ph[h * PST + lane + 32 * rr] = hi;
                    pl[h * PST + lane + 32 * rr] = __float2half_rn(v - __half2float(hi));
                }
                if (lane == 0) alpha[h] = al;
            }
        }
        __syncthreads();

        // ---- P·V: O[32 heads][dims w·DW..+DW] = O·α + P_hi·V + P_lo·V
        {
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const float a0 = alpha[mt * 16 + gid], a1 = alpha[mt * 16 + gid + 8];
#pragma unroll
                for (int nt = 0; nt < NTL; nt++) {
                    o[mt][nt][0] *= a0;
                    o[mt][nt][1] *= a0;
                    o[mt][nt][2] *= a1;
                    o[mt][nt][3] *= a1;
                }
            }
#pragma unroll
            for (int ks = 0; ks < kNT / 16; ks++) {
                const int r0 = ks * 16;
                // A: heads mt·16 + (0..7 | 8..15) × rows r0 + (0..7 | 8..15) -> a0..a3
                uint32_t ahi[2][4], alo[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    const int off = (mt * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * PST + r0 + (lane >> 4) * 8;
                    ldsm_x4(ahi[mt], ph + off);
                    ldsm_x4(alo[mt], pl + off);
                }
                // B (transposed loads of the row-major tile): rows r0 + (0..7 | 8..15) × dims
                const __half *vb = kt + (r0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * KST + w * DW;
                if constexpr (NTL == 1) {
                    uint32_t b0, b1;
                    ldsm_x2_t(b0, b1, vb);
#pragma unroll
                    for (int mt = 0; mt < 2; mt++) {
                        mma16816(o[mt][0], ahi[mt], b0, b1);
                        mma16816(o[mt][0], alo[mt], b0, b1);
                    }
                } else {
#pragma unroll
                    for (int np = 0; np < NTL / 2; np++) {
                        // b[0], b[1]: n-tile 2np (rows lo, hi); b[2], b[3]: n-tile 2np + 1
                        uint32_t b[4];
                        ldsm_x4_t(b, vb + np * 16 + (lane >> 4) * 8);
#pragma unroll
                        for (int mt = 0; mt < 2; mt++) {
                            mma16816(o[mt][2 * np], ahi[mt], b[0], b[1]);
                            mma16816(o[mt][2 * np], alo[mt], b[0], b[1]);
                            mma16816(o[mt][2 * np + 1], ahi[mt], b[2], b[3]);
                            mma16816(o[mt][2 * np + 1], alo[mt], b[2], b[3]);
                        }
                    }
                }
            }
        }
        __syncthreads();   // tile buffer, partial logits, P and alpha are free again
    }
    ds4cu::cp_async_wait<0>();   // (the last group is empty; no copy is left in flight)

    // sink and normalisation factor per head, with the 2^-15 of the P scale
    if (lane == 0) {
#pragma unroll
        for (int i = 0; i < kHG / 8; i++) {
            const int h = w * (kHG / 8) + i, head = g * kHG + h;
            fin[h] = head < a.n_head ? sink_factor(M[i], S[i], a.sinks[head]) * (1.0f / kPScale) : 0.0f;
        }
    }
    __syncthreads();
    float *st = reinterpret_cast<float *>(smb + L::kb);   // [kHG][OST] staging (tile buffers are free)
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
        const int h0 = mt * 16 + gid;
        const float f0 = fin[h0], f1 = fin[h0 + 8];
#pragma unroll
        for (int nt = 0; nt < NTL; nt++) {
            const int d = w * DW + nt * 8 + 2 * tig;
            *reinterpret_cast<float2 *>(st + h0 * OST + d) = make_float2(o[mt][nt][0] * f0, o[mt][nt][1] * f0);
            *reinterpret_cast<float2 *>(st + (h0 + 8) * OST + d) = make_float2(o[mt][nt][2] * f1, o[mt][nt][3] * f1);
        }
    }
    __syncthreads();
    const int off = HD - 2 * a.half;
    const float2 *tab = a.rope + (int64_t)t * a.half;
    float *ot = a.out + (int64_t)t * a.os;
    for (int e = tid; e < kHG * HD; e += kThreads) {
        const int h = e / HD, d = e % HD, head = g * kHG + h;
        if (head >= a.n_head) break;   // e only grows: every later head is out of range too
        ot[(int64_t)head * HD + d] = rope_elem(st + h * OST, d, off, a.half, tab);
    }
}

template <int HD>
void tc_launch(cudaStream_t st, unsigned blocks, const AnArgs &a) {
    constexpr size_t smem = TcSm<HD>::bytes;
    static const bool attr_ok = [] {
        DS4CU_CK(cudaFuncSetAttribute(k_attn_n_tc<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        return true;
    }();
    (void)attr_ok;
    DS4CU_CK(ds4cu::launch(k_attn_n_tc<HD>, dim3(blocks), dim3(kThreads), smem, st, a));
}

// =====================================================================================
// f32 path (exact numerics; any hd whose tile fits in shared memory)
// =====================================================================================
// Block b: token t = b / n_g, heads g·8 + w (warp w; g = b % n_g). Rows in tiles of ft <=
// 32 through shared memory (a warp per row, coalesced); warp w: logits of its head (lanes
// over d, fmaf in d order per lane, then the xor tree), online softmax (lane r holds row r),
// acc[w][d] (shared memory, lanes over d) = acc·α + Σ_r p_r · row_r[d] in row order.
__global__ void __launch_bounds__(kThreads) k_attn_n_f32(AnArgs a) {
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    extern __shared__ float4 f_sm4[];
    float *sm = reinterpret_cast<float *>(f_sm4);
    const int hd = a.hd, ft = a.ft;
    float *qs = sm;                          // [kFG][hd]
    float *acc = qs + kFG * hd;              // [kFG][hd]
    float *rows = acc + kFG * hd;            // [ft][hd]
    float *pw = rows + (size_t)ft * hd;      // [kFG][kFT]
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int n_g = (a.n_head + kFG - 1) / kFG;
    const int t = (int)(blockIdx.x / n_g), g = (int)(blockIdx.x % n_g);
    const int head = g * kFG + w;
    const bool hv = head < a.n_head;
    const TokRows tr = tok_rows(a, t);
    const int N = tr.nwin + tr.ncomp;
    const float *qh = a.q + (int64_t)t * a.qs + (int64_t)(hv ? head : 0) * hd;
    for (int d = lane; d < hd; d += 32) {
        qs[w * hd + d] = hv ? qh[d] : 0.0f;
        acc[w * hd + d] = 0.0f;
    }
    float M = -INFINITY, S = 0.0f;
    for (int j0 = 0; j0 < N; j0 += ft) {
        const int nr = min(ft, N - j0);
        __syncthreads();   // the previous tile's readers are done (and q is visible)
        for (int r = w; r < nr; r += kThreads / 32) {
            const int j = j0 + r;
            if (a.compc && j >= tr.nwin) {   // compact comp row: decoded (exact)
                const int c = j - tr.nwin;
                const uint8_t *src = a.compc + (int64_t)(tr.ix ? __ldg(tr.ix + c) : c) * a.comp_rb;
                for (int d = lane; d < hd; d += 32) rows[r * hd + d] = ds4_kv_attn_get(src, hd, a.n_rot, d);
                continue;
            }
            const float *src = row_ptr(a.raw, a.comp, tr, a.raw_cap, hd, j);
            for (int d = lane; d < hd; d += 32) rows[r * hd + d] = src[d];
        }
        __syncthreads();
        float lm = -INFINITY;   // lane r: logit of row r
        for (int r = 0; r < nr; r++) {
            float s = 0.0f;
            for (int d = lane; d < hd; d += 32) s = fmaf(qs[w * hd + d], rows[r * hd + d], s);
            s = ds4cu::warp_sum(s);
            if (lane == r) lm = s * a.scale;
        }
        const float mt = ds4cu::warp_max(lm);
        const float Mn = fmaxf(M, mt);
        const float al = M == -INFINITY ? 0.0f : expf(M - Mn);
        const float p = lane < nr ? expf(lm - Mn) : 0.0f;
        S = fmaf(S, al, ds4cu::warp_sum(p));
        M = Mn;
        pw[w * kFT + lane] = p;
        __syncwarp();
        for (int d = lane; d < hd; d += 32) {
            float v = acc[w * hd + d] * al;
            for (int r = 0; r < nr; r++) v = fmaf(pw[w * kFT + r], rows[r * hd + d], v);
            acc[w * hd + d] = v;
        }
        __syncwarp();   // pw is rewritten by the next tile
    }
    if (!hv) return;   // warp-uniform; no block barrier follows
    const float f = sink_factor(M, S, a.sinks[head]);
    for (int d = lane; d < hd; d += 32) acc[w * hd + d] *= f;
    __syncwarp();
    const int off = hd - 2 * a.half;
    const float2 *tab = a.rope + (int64_t)t * a.half;
    float *oh = a.out + (int64_t)t * a.os + (int64_t)head * hd;
    for (int d = lane; d < hd; d += 32) oh[d] = rope_elem(acc + w * hd, d, off, a.half, tab);
}

constexpr size_t kF32SmemMax = 160 * 1024;

size_t f32_smem(int hd, int ft) { return ((size_t)2 * kFG * hd + (size_t)ft * hd + kFG * kFT) * sizeof(float); }

}  // namespace

void ds4cu_attention_n(ds4_backend *be, const float *q, int64_t qs, int n_head, int64_t hd, const float *raw,
                       int raw_cap, int n_win, const float *comp, int R, const int32_t *idx, int k_top,
                       const float *sinks, float scale, int n_rot, int64_t pos0, int n_tok, const float *inv_freq,
                       float *out, int64_t os) {
    if (n_tok <= 0 || n_head <= 0 || hd <= 0) return;
    DS4_ASSERT(raw_cap > 0 && n_win >= 1 && pos0 >= 0 && R >= 0 && (R == 0 || comp != NULL));
    DS4_ASSERT(idx == NULL || k_top > 0);
    const int half = n_rot > 0 ? n_rot / 2 : 0;
    DS4_ASSERT(half <= kRopeMax && 2 * half <= hd);
    cudaStream_t st = ds4cu::stream(be);

    // f32 path tile: up to 32 rows within kF32SmemMax; none fits: the generic op sequence
    int ft = kFT;
    while (ft > 1 && f32_smem((int)hd, ft) > kF32SmemMax) ft--;
    if (f32_smem((int)hd, ft) > kF32SmemMax) {
        // hd beyond ~5000 (no model has it): per token, attention + rope with host row
        // lists (a synchronising read of idx; acceptable for this shape only)
        std::vector<int32_t> ia((size_t)n_win), ib, hidx;
        for (int t = 0; t < n_tok; t++) {
            const int64_t p = pos0 + t, pw0 = p - n_win + 1 > 0 ? p - n_win + 1 : 0;
            int na = 0;
            for (int64_t k = pw0; k <= p; k++) ia[(size_t)na++] = (int32_t)(k % raw_cap);
            const int64_t nv = R > 0 ? (p + 1) / R : 0;
            int nb = 0;
            if (idx && nv > k_top) {
                ib.resize((size_t)k_top);
                be->read(be, ib.data(), idx + (int64_t)t * k_top, (size_t)k_top * sizeof(int32_t));
                nb = k_top;
            } else {
                ib.resize((size_t)(nv > 0 ? nv : 1));
                for (int64_t c = 0; c < nv; c++) ib[(size_t)c] = (int32_t)c;
                nb = (int)nv;
            }
            float *ot = out + t * os;
            // (compact comp rows: decoded there with this call's n_rot)
            ds4cu::attention(be, q + t * qs, n_head, hd, raw, ia.data(), na, comp, ib.data(), nb, sinks, scale, n_rot,
                             ot);
            be->rope(be, ot, hd, n_head, hd, n_rot, p, inv_freq, true);
        }
        return;
    }

    AnArgs a;
    memset(&a, 0, sizeof a);
    a.q = q;
    a.qs = qs;
    a.raw = raw;
    // compact comp rows (backend.h kv_row_bytes): rows of crb bytes
    const int64_t crb = R > 0 ? (int64_t)ds4cu::kv_bytes(be, DS4_KV_ROW_ATTN, hd, n_rot) : 0;
    a.comp = crb ? nullptr : comp;
    a.compc = crb ? (const uint8_t *)comp : nullptr;
    a.comp_rb = crb;
    a.n_rot = n_rot;
    a.idx = idx;
    a.sinks = sinks;
    a.out = out;
    a.os = os;
    a.pos0 = pos0;
    a.raw_cap = raw_cap;
    a.n_win = n_win;
    a.R = R;
    a.k_top = k_top;
    a.n_head = n_head;
    a.hd = (int)hd;
    a.half = half;
    a.n_tok = n_tok;
    a.ft = ft;
    a.scale = scale;

    // the inverse-rope table of every token: exactly cu_rope's / attention_ex's values
    {
        static thread_local std::vector<float2> tab;   // grown, never shrunk: no allocation per call
        const size_t need = (size_t)n_tok * (half > 0 ? half : 1);
        if (tab.size() < need) tab.resize(need);
        for (int t = 0; t < n_tok; t++)
            for (int j = 0; j < half; j++) {
                const float theta = (float)(pos0 + t) * inv_freq[j];
                tab[(size_t)t * half + j] = make_float2(cosf(theta), -sinf(theta));
            }
        a.rope = (const float2 *)ds4cu::stage(be, tab.data(), need * sizeof(float2));
    }

    // (compact comp rows are read bytewise: their address does not matter)
    const bool tc = !ds4cu::exact(be) && (hd == 64 || hd == 128 || hd == 256 || hd == 512) &&
                    ((uintptr_t)raw | (crb ? (uintptr_t)0 : (uintptr_t)comp)) % 16 == 0;
    if (tc) {
        // f16 copies of the rows the sub-batch can read: ring positions [pa, pos0 + n_tok)
        // (at most raw_cap slots) and compressed rows [0, (pos0 + n_tok) / R)
        const int64_t pa = pos0 - n_win + 1 > 0 ? pos0 - n_win + 1 : 0;
        const int64_t span = pos0 + n_tok - pa;
        const int nr = (int)(span < raw_cap ? span : raw_cap);
        const int64_t ncm = R > 0 ? (pos0 + n_tok) / R : 0;
        DS4_ASSERT(ncm < INT32_MAX);
        const int nc = (int)ncm;
        const size_t raw_bytes = (((size_t)raw_cap * hd * sizeof(__half)) + 255) & ~(size_t)255;
        unsigned char *scr = (unsigned char *)ds4cu::scratch(
            be, ds4cu::SCR_ATTN_N, raw_bytes + (size_t)(nc > 0 ? nc : 1) * hd * sizeof(__half));
        a.raw16 = (const __half *)scr;
        a.comp16 = (const __half *)(scr + raw_bytes);
        const int64_t rows = (int64_t)nr + nc;
        const unsigned cblocks = (unsigned)((rows + kThreads / 32 - 1) / (kThreads / 32));
        DS4CU_CK(ds4cu::launch(k_rows_f16, dim3(cblocks), dim3(kThreads), 0, st, raw, a.comp, a.compc, crb, n_rot,
                               (__half *)a.raw16, (__half *)a.comp16, (int)hd, raw_cap, (int)(pa % raw_cap), nr, nc));
        const int64_t blocks = (int64_t)n_tok * ((n_head + kHG - 1) / kHG);
        DS4_ASSERT(blocks < INT32_MAX);
        switch (hd) {
        case 64: tc_launch<64>(st, (unsigned)blocks, a); break;
        case 128: tc_launch<128>(st, (unsigned)blocks, a); break;
        case 256: tc_launch<256>(st, (unsigned)blocks, a); break;
        default: tc_launch<512>(st, (unsigned)blocks, a); break;
        }
        return;
    }

    const size_t smem = f32_smem((int)hd, ft);
    static const bool attr_ok = [] {
        DS4CU_CK(cudaFuncSetAttribute(k_attn_n_f32, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kF32SmemMax));
        return true;
    }();
    (void)attr_ok;
    const int64_t blocks = (int64_t)n_tok * ((n_head + kFG - 1) / kFG);
    DS4_ASSERT(blocks < INT32_MAX);
    DS4CU_CK(ds4cu::launch(k_attn_n_f32, dim3((unsigned)blocks), dim3(kThreads), smem, st, a));
}
