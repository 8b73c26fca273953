// mmq.cu — tensor-core quantized matrix-matrix products (cuda_mmq.h).
//
// Owns: Y = W·X for many activation rows with int8 mma.sync (m16n8k32; m16n8k16 for the
// K-quant min terms) for Q8_0, Q2_K, Q4_K and IQ2_XXS weights in their GGUF block layout,
// dense or grouped (routed experts). Must not: allocate device memory, synchronize,
// repack weights in global memory, or know tensor roles (contract in cuda_mmq.h).
//
// Three kernels with identical per-output numerics (bit-identical results): v2 and v3 (see
// their sections below) and the original v1 described here. By default each weight type
// takes the faster one as measured (mmq_variant); DS4_MMQ_V=1|2|3 forces one (v3 covers
// IQ2_XXS and Q2_K; other types then run v2; read once; tests switch with the hook
// ds4_cuda_mmq_set_variant, which is not part of cuda_mmq.h).
//
// v1 design (one block = 128 weight rows x BN activation rows, BN = 16·NT in {16, 32, 64}):
//  * 8 warps: 4 along rows (32 rows = two m16 tiles) x 2 along activation rows (NT n8 tiles).
//    Weights are the mma A operand (16 rows), activations the B operand (8 rows), so the
//    token granularity is 8 (small expert groups waste little).
//  * k-steps of 256 elements (one K-quant superblock; 8 Q8_0 blocks). Per step the raw
//    blocks of the 128 weight rows and the BN activation rows are staged global -> shared
//    with 16-byte cp.async. GGUF rows are not 16-byte aligned per step (84, 66 bytes), so
//    each row copies the aligned 16-byte chunks that cover its bytes into its own slot
//    (slot sized for any even phase) and decoders start at the phase. A chunk that holds a
//    wanted byte lies in the same aligned 16 bytes, so it never touches an unmapped page.
//  * Between two barriers, all threads decode the step into int8 tiles in shared memory
//    ([128][256] weights, [BN][256] activations, 16-byte chunks XOR-swizzled by row & 7 so
//    ldmatrix and the decoders' 16-byte stores are bank-conflict free) plus per-row scale
//    arrays; then the warps run ldmatrix + mma over the step while the next step's raw
//    blocks land (issued right after the second barrier: one raw buffer suffices because
//    the decode has consumed it). Two blocks per SM overlap one's decode with the other's
//    mma. The first weight step of a dense launch is staged before pdl_wait().
//  * Integer math exactly as ds4_dot_q, float scales per block:
//      Q8_0:   per 32-block mma (accumulator preset to 0x4B400000, so float(isum) is one
//              exact FADD: |isum| < 2^22), acc = fma(isum, dw·dx, acc).
//      Q2_K:   weights decoded to q·(scale & 15) (<= 45, int8), so one mma chain over the
//              whole superblock gives ds4_dot_q's isum exactly (|isum| <= 1.5M < 2^22).
//      Q4_K / IQ2_XXS: per 32-element sub-block mma, isum += scale·C (integer IMAD), one
//              int->float conversion per superblock (cvt.rn, as the CPU's (float)isum).
//      Q2_K / Q4_K min term Σ min_s·bsums_s: two m16n8k16 mmas with the Q8_K 16-sums split
//              as 128·hi + lo (int8 each), min values as the A operand.
//      Per superblock the float term is formed with the CPU's operations in its order
//      (__fmul_rn / __fsub_rn, no contraction), then added to an f32 accumulator.
//    So a result differs from the CPU only by the f32 (vs f64) sum over blocks in k order
//    (and Q8_0's fused multiply-add); it does not depend on BN, the tile, the batch or
//    the problem: every output is computed by one thread with the same operation sequence.
//  * Grouped launches: a 1-D grid over row tiles x (max_rows/BN + n_prob) token tiles; a
//    block scans the per-problem tile counts ceil(count/BN) (block-wide prefix sum over
//    off[]) to find its (problem, tile), and exits when past the end. Raster order: groups
//    of 16 row tiles, token tiles inside a group, so concurrently running blocks share
//    activation tiles (grouped) or weight panels (dense) in L2.
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_mmq.h"

extern "C" {
#include "model/ggml_type.h"
#include "model/iq2_tables.h"
#include "model/quant.h"
}

using namespace ds4cu;

namespace {

enum WType { W_Q8_0 = 0, W_Q2_K = 1, W_Q4_K = 2, W_IQ2 = 3 };

constexpr int kBM = 128;          // weight rows per block
constexpr int kThreads = 256;     // 8 warps
constexpr int kRaster = 16;       // row tiles per raster group
constexpr int kIq2Copies = 16;    // bank-spread copies of the IQ2_XXS decode tables
constexpr uint32_t kMagic = 0x4B400000u;  // bits of 1.5·2^23: magic + i is float(1.5·2^23 + i), |i| < 2^22
constexpr float kMagicF = 12582912.0f;
constexpr uint32_t kIq2PosBytes = 0x002B1908u;  // 8, 25, 43, 0
constexpr uint32_t kIq2NegBytes = 0x00D5E7F8u;  // -8, -25, -43, 0

// Shared-memory layout of one block (bytes; every offset a multiple of 16).
template <int WT, int NT>
struct Lay {
    static constexpr int BN = 16 * NT;
    // raw bytes of one row per k-step, and the slot holding its covering 16-byte chunks
    // at any even phase (<= 14): 16·ceil((bytes + 14) / 16)
    static constexpr int WSTEP = WT == W_Q8_0 ? 272 : WT == W_Q2_K ? 84 : WT == W_Q4_K ? 144 : 66;
    static constexpr int WSLOT = (WSTEP + 14 + 15) / 16 * 16;
    static constexpr int XSTEP = WT == W_Q8_0 ? 272 : 292;  // Q8_0 (8 blocks) or one Q8_K block
    static constexpr int XSLOT = (XSTEP + 14 + 15) / 16 * 16;
    static constexpr int TAB = WT == W_IQ2 ? (256 + 128) * 4 * kIq2Copies : 0;
    static constexpr int O_WQ = TAB;                       // int8 [128][256], swizzled
    static constexpr int O_XQ = O_WQ + kBM * 256;          // int8 [BN][256], swizzled
    static constexpr int O_WRAW = O_XQ + BN * 256;         // [128][WSLOT]
    static constexpr int O_XRAW = O_WRAW + kBM * WSLOT;    // [BN][XSLOT]
    static constexpr int O_DX = O_XRAW + BN * XSLOT;       // f32 Q8_0: [8][BN]; else [BN]
    static constexpr int O_XBS = O_DX + (WT == W_Q8_0 ? 8 : 1) * BN * 4;  // Q8_K sums: int16 [BN][16]
    static constexpr int O_WD = O_XBS + (WT == W_Q8_0 ? 0 : BN * 32);     // f32 Q8_0: [8][128]; K: d [128] (+ dmin [128])
    static constexpr int O_WSC = O_WD + (WT == W_Q8_0 ? 8 * kBM * 4 : WT == W_IQ2 ? kBM * 4 : 2 * kBM * 4);
    static constexpr int O_MINS = O_WSC + ((WT == W_IQ2 || WT == W_Q4_K) ? 8 * kBM : 0);  // int8 scales [8][128]
    static constexpr int BYTES = O_MINS + ((WT == W_Q2_K || WT == W_Q4_K) ? kBM * 16 : 0);  // int8 mins [128][16]
};

struct Params {
    const uint8_t *w;        // matrix 0, row 0
    uint64_t mat_stride;     // bytes between matrices
    uint64_t row_bytes;      // bytes of one weight row
    const uint8_t *x;        // activation rows (GGML Q8_0 / Q8_K blocks)
    uint64_t x_stride;       // bytes between activation rows
    float *y;
    int64_t ys;              // floats between output rows
    const int32_t *off, *mat, *x_idx;  // grouped form (device), see cuda_mmq.h
    int n, n_mats;           // rows per matrix, matrices in the stack
    int nb;                  // blocks per row (Q8_0: 32-element blocks; else superblocks)
    int nks;                 // k-steps
    int grouped, n_prob, max_rows, n_rows;
    int n_rt, n_tt;          // row tiles, token tiles (grid = n_rt·n_tt)
    uint32_t codes[256];     // IQ2_XXS: grid bytes as 2-bit codes in nibbles (see iq2_tables_host)
    uint32_t ssp[128];       // IQ2_XXS: sign bits moved to bit 2 of the same nibbles
};

// ---- small device helpers -------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// N words from a 2-byte aligned shared-memory address (N + 1 aligned loads, funnel shifts).
template <int N>
__device__ __forceinline__ void ld_words(const uint8_t *p, uint32_t *out) {
    const uint32_t mis = (uint32_t)(uintptr_t)p & 3u;
    const uint32_t *v = (const uint32_t *)(p - mis);
    uint32_t t[N + 1];
#pragma unroll
    for (int i = 0; i <= N; i++) t[i] = v[i];
#pragma unroll
    for (int i = 0; i < N; i++) out[i] = fshr(t[i], t[i + 1], mis * 8);
}

__device__ __forceinline__ uint32_t ld_u16(const uint8_t *p) { return *(const uint16_t *)p; }

// 32 decoded bytes (8 words) as chunks 2q, 2q+1 of a swizzled 256-byte tile row.
__device__ __forceinline__ void st_row32(uint8_t *row, int r, int q, const uint32_t w[8]) {
    const int x = r & 7;
    *(uint4 *)(row + (((2 * q) ^ x) << 4)) = make_uint4(w[0], w[1], w[2], w[3]);
    *(uint4 *)(row + (((2 * q + 1) ^ x) << 4)) = make_uint4(w[4], w[5], w[6], w[7]);
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2(uint32_t &r0, uint32_t &r1, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r0), "=r"(r1) : "r"(addr));
}

// D = A·B + C, 16x8x32 int8 -> int32.
__device__ __forceinline__ void mma_k32(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, int c0, int c1,
                                        int c2, int c3) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(c0), "r"(c1), "r"(c2), "r"(c3));
}
// D = A·B + C, 16x8x16 int8 -> int32.
__device__ __forceinline__ void mma_k16(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t b, int c0, int c1, int c2,
                                        int c3) {
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%8,%9,%10};"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a0), "r"(a1), "r"(b), "r"(c0), "r"(c1), "r"(c2), "r"(c3));
}

// ---- staging: global -> shared (cp.async, 16-byte chunks covering the wanted bytes) ----

// Bytes of k-step s of one row (Q8_0: the last step may hold fewer than 8 blocks).
template <int WT>
__device__ __forceinline__ uint32_t step_bytes(const Params &P, int s, int full) {
    return WT == W_Q8_0 ? 34u * (uint32_t)min(8, P.nb - 8 * s) : (uint32_t)full;
}

// Copies [src, src + bytes) of `rows` rows (row r at base[r]) into slots of SLOT bytes.
template <int SLOT>
__device__ __forceinline__ void stage_rows(uint8_t *dst, const uint8_t *const *base, const uint8_t *base0,
                                           uint64_t stride, int rows, uint64_t soff, uint32_t bytes, int tid) {
    constexpr int CH = SLOT / 16;
    for (int i = tid; i < rows * CH; i += kThreads) {
        const int r = i / CH, c = i - r * CH;
        const uintptr_t src = (uintptr_t)((base ? base[r] : base0 + (uint64_t)r * stride) + soff);
        const uint32_t o = (uint32_t)src & 15u;
        if ((uint32_t)c * 16u < o + bytes)
            cp_async16(dst + r * SLOT + 16 * c, (const void *)((src & ~(uintptr_t)15) + 16u * (uint32_t)c));
    }
}

// ---- decoders: raw step -> int8 tiles and scale arrays ----------------------------------
// Unit (row r, q): 32 output bytes k = 32q .. 32q+31 of the step. Lanes 4i..4i+3 take four
// q of one row, so each 8-lane phase of the 16-byte stores hits 8 distinct chunk columns.

template <int WT, int NT>
__device__ __forceinline__ void decode_weights(const Params &P, uint8_t *sm, const uint8_t *wbase, int nrow, int s,
                                               int tid) {
    using L = Lay<WT, NT>;
    const uint64_t soff = (uint64_t)s * L::WSTEP;
    const int nbk = WT == W_Q8_0 ? min(8, P.nb - 8 * s) : 8;
    float *wd = (float *)(sm + L::O_WD);
    int8_t *wsc = (int8_t *)(sm + L::O_WSC);
    uint8_t *mins = sm + L::O_MINS;
#pragma unroll 1
    for (int it = 0; it < kBM * 8 / kThreads; it++) {
        const int u = it * kThreads + tid;
        const int r = (u >> 2) & (kBM - 1), q = (u & 3) + 4 * (u / (4 * kBM));
        const bool ok = r < nrow && q < nbk;
        const uint8_t *bp = sm + L::O_WRAW + r * L::WSLOT;
        if (ok) bp += (uint32_t)(uintptr_t)(wbase + (uint64_t)r * P.row_bytes + soff) & 15u;
        uint32_t w[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if constexpr (WT == W_Q8_0) {
            float d = 0.0f;
            if (ok) {
                d = f16_bits_to_f32((uint16_t)ld_u16(bp + 34 * q));
                ld_words<8>(bp + 34 * q + 2, w);
            }
            wd[q * kBM + r] = d;
        } else if constexpr (WT == W_IQ2) {
            int ls = 0;
            if (ok) {
                uint32_t a[2];
                ld_words<2>(bp + 2 + 8 * q, a);
                // tables: codes at word i·C + c, sign patterns after them (c = copy)
                const uint8_t *codes = sm + 4 * (tid & (kIq2Copies - 1));
                const uint8_t *ssp = codes + 1024 * kIq2Copies;
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    const uint32_t oc = ((a[0] >> (8 * k)) & 255u) * (4u * kIq2Copies);
                    const uint32_t os = ((a[1] >> (7 * k)) & 127u) * (4u * kIq2Copies);
                    const uint32_t sel = *(const uint32_t *)(codes + oc) | *(const uint32_t *)(ssp + os);
                    w[2 * k] = prmt(kIq2PosBytes, kIq2NegBytes, sel);
                    w[2 * k + 1] = prmt(kIq2PosBytes, kIq2NegBytes, sel >> 16);
                }
                ls = 2 * (int)(a[1] >> 28) + 1;
            }
            wsc[q * kBM + r] = (int8_t)ls;
            if (q == 0) wd[r] = ok ? f16_bits_to_f32((uint16_t)ld_u16(bp)) : 0.0f;
        } else if constexpr (WT == W_Q4_K) {
            // d, dmin, scales[12], qs[128]; sub-block q: nibble (q & 1) of qs[32·(q/2) ..]
            int sc = 0, m = 0;
            if (ok) {
                uint32_t v[8];
                ld_words<8>(bp + 16 + 32 * (q >> 1), v);
                const int sh = 4 * (q & 1);
#pragma unroll
                for (int i = 0; i < 8; i++) w[i] = (v[i] >> sh) & 0x0F0F0F0Fu;
                const uint8_t *scb = bp + 4;
                if (q < 4) {
                    sc = scb[q] & 63;
                    m = scb[q + 4] & 63;
                } else {
                    sc = (scb[q + 4] & 15) | ((scb[q - 4] >> 6) << 4);
                    m = (scb[q + 4] >> 4) | ((scb[q] >> 6) << 4);
                }
            }
            wsc[q * kBM + r] = (int8_t)sc;
            *(uint16_t *)(mins + r * 16 + 2 * q) = (uint16_t)(m * 0x0101);
            if (q == 0) {
                wd[r] = ok ? f16_bits_to_f32((uint16_t)ld_u16(bp)) : 0.0f;
                wd[kBM + r] = ok ? f16_bits_to_f32((uint16_t)ld_u16(bp + 2)) : 0.0f;
            }
        } else {  // W_Q2_K: scales[16], qs[64], d, dmin; q = 4h + j covers sub-blocks 2q, 2q+1
            uint32_t s0 = 0, s1 = 0;
            if (ok) {
                uint32_t v[8];
                ld_words<8>(bp + 16 + 32 * (q >> 2), v);
                s0 = bp[2 * q];
                s1 = bp[2 * q + 1];
                const int sh = 2 * (q & 3);
#pragma unroll
                for (int i = 0; i < 8; i++) w[i] = ((v[i] >> sh) & 0x03030303u) * ((i < 4 ? s0 : s1) & 15u);  // <= 45: no carry
            }
            *(uint16_t *)(mins + r * 16 + 2 * q) = (uint16_t)((s0 >> 4) | ((s1 >> 4) << 8));
            if (q == 0) {
                wd[r] = ok ? f16_bits_to_f32((uint16_t)ld_u16(bp + 80)) : 0.0f;
                wd[kBM + r] = ok ? f16_bits_to_f32((uint16_t)ld_u16(bp + 82)) : 0.0f;
            }
        }
        st_row32(sm + L::O_WQ + r * 256, r, q, w);
    }
}

template <int WT, int NT>
__device__ __forceinline__ void decode_acts(const Params &P, uint8_t *sm, const uint8_t *const *xrow, int ntok, int s,
                                            int tid) {
    using L = Lay<WT, NT>;
    constexpr int BN = L::BN;
    const uint64_t soff = (uint64_t)s * L::XSTEP;
    const int nbk = WT == W_Q8_0 ? min(8, P.nb - 8 * s) : 8;
    float *dx = (float *)(sm + L::O_DX);
    uint32_t *xbs = (uint32_t *)(sm + L::O_XBS);
#pragma unroll 1
    for (int u = tid; u < BN * 8; u += kThreads) {
        const int t = (u >> 2) & (BN - 1), q = (u & 3) + 4 * (u / (4 * BN));
        const bool ok = t < ntok;
        const uint8_t *bp = sm + L::O_XRAW + t * L::XSLOT;
        if (ok) bp += (uint32_t)(uintptr_t)(xrow[t] + soff) & 15u;
        uint32_t w[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if constexpr (WT == W_Q8_0) {  // Q8_0 block q: f16 d, 32 quants
            float d = 0.0f;
            if (ok && q < nbk) {
                d = f16_bits_to_f32((uint16_t)ld_u16(bp + 34 * q));
                ld_words<8>(bp + 34 * q + 2, w);
            }
            dx[q * BN + t] = d;
        } else {  // Q8_K: f32 d, 256 quants (chunk q), 16 int16 sums (word q)
            uint32_t bs = 0;
            if (ok) {
                ld_words<8>(bp + 4 + 32 * q, w);
                bs = *(const uint32_t *)(bp + 260 + 4 * q);  // 4-byte aligned (checked on the host)
                if (q == 0) dx[t] = *(const float *)bp;
            } else if (q == 0) {
                dx[t] = 0.0f;
            }
            xbs[t * 8 + q] = bs;
        }
        st_row32(sm + L::O_XQ + t * 256, t, q, w);
    }
}

// The float term of ds4_dot_q for one K-quant superblock, shared by v1 / v2 / v3 so every
// variant forms it with the CPU's operations in its order (no contraction):
//   IQ2_XXS: d·(float)bsum·0.125f with d = f16(w.d)·x.d;
//   Q2_K / Q4_K: dall·(float)isum − dmin·(float)summs with dall = x.d·d, dmin = x.d·dmin.
// isum: the superblock's integer sum (Q2_K: biased by kMagic, |isum| < 2^22 — the chain
// starts at kMagic); cs: Σ min·bsums biased by kMagic (|summs| < 2^22); unused for IQ2_XXS.
template <int WT>
__device__ __forceinline__ float kq_term(float xd, float dw, float dmin, int isum, int cs) {
    if constexpr (WT == W_IQ2) {
        (void)dmin;
        (void)cs;
        const float d = __fmul_rn(dw, xd);
        return __fmul_rn(__fmul_rn(d, __int2float_rn(isum)), 0.125f);
    } else {
        const float isf = WT == W_Q2_K ? __int_as_float(isum) - kMagicF : __int2float_rn(isum);
        const float smf = __int_as_float(cs) - kMagicF;
        const float dall = __fmul_rn(xd, dw), dmn = __fmul_rn(xd, dmin);
        return __fsub_rn(__fmul_rn(dall, isf), __fmul_rn(dmn, smf));
    }
}

// B fragments of k32 step kk of the swizzled activation tile (v2, v3): n8 tiles 2np, 2np + 1
// from one ldmatrix.x4 at the warp's token rows (b_addr); tiles past nv (no tokens) are
// zeros without a load unless FULL.
template <int NT, bool FULL>
__device__ __forceinline__ void load_b2(uint32_t (&b)[NT][2], uint32_t b_addr, int kk, int bhi, int x7, int nv) {
#pragma unroll
    for (int np = 0; np < NT / 2; np++) {
        uint32_t r[4] = {0, 0, 0, 0};
        if (FULL || 2 * np < nv) ldsm_x4(r, b_addr + np * 16 * 256 + (((2 * kk + bhi) ^ x7) << 4));
        b[2 * np][0] = r[0];
        b[2 * np][1] = r[1];
        b[2 * np + 1][0] = r[2];
        b[2 * np + 1][1] = r[3];
    }
}

// ---- the tensor-core step ----------------------------------------------------------------

template <int WT, int NT>
__device__ __forceinline__ void mma_step(const uint8_t *sm, float (&acc)[2][NT][4], int lane, int wm, int wn) {
    using L = Lay<WT, NT>;
    constexpr int BN = L::BN;
    const int g = lane >> 2, tig = lane & 3, x7 = lane & 7;
    const uint32_t sbase = smem_u32(sm);
    // ldmatrix row addresses: A (weights) matrices {rows 0-7, 8-15} x {k 0-15, 16-31};
    // B (activations) {tokens 0-7, 8-15} x {k 0-15, 16-31} (x2: tokens 0-7 only).
    const int ar = wm * 32 + x7 + 8 * ((lane >> 3) & 1), ahi = lane >> 4;
    const int bt = wn * 8 * NT + x7 + (NT >= 2 ? 8 * (lane >> 4) : 0), bhi = (lane >> 3) & 1;
    const uint32_t a_addr = sbase + L::O_WQ + ar * 256, b_addr = sbase + L::O_XQ + bt * 256;
    int isum[2][NT][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) isum[mt][nt][i] = WT == W_Q2_K ? (int)kMagic : 0;

#pragma unroll 1  // (unrolled, ptxas keeps several steps' fragments live and spills)
    for (int kk = 0; kk < 8; kk++) {
        uint32_t a[2][4], b[NT][2];
#pragma unroll
        for (int mt = 0; mt < 2; mt++) ldsm_x4(a[mt], a_addr + mt * 16 * 256 + (((2 * kk + ahi) ^ x7) << 4));
        if constexpr (NT >= 2) {
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                uint32_t r[4];
                ldsm_x4(r, b_addr + np * 16 * 256 + (((2 * kk + bhi) ^ x7) << 4));
                b[2 * np][0] = r[0];
                b[2 * np][1] = r[1];
                b[2 * np + 1][0] = r[2];
                b[2 * np + 1][1] = r[3];
            }
        } else {
            ldsm_x2(b[0][0], b[0][1], b_addr + (((2 * kk + bhi) ^ x7) << 4));
        }
        if constexpr (WT == W_Q8_0) {
            const float *dw = (const float *)(sm + L::O_WD) + kk * kBM;
            const float *dxk = (const float *)(sm + L::O_DX) + kk * BN;
            float rw[2][2];
            float2 tx[NT];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                rw[mt][0] = dw[wm * 32 + mt * 16 + g];
                rw[mt][1] = dw[wm * 32 + mt * 16 + g + 8];
            }
#pragma unroll
            for (int nt = 0; nt < NT; nt++) tx[nt] = *(const float2 *)(dxk + wn * 8 * NT + nt * 8 + 2 * tig);
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    int c[4];
                    mma_k32(c, a[mt], b[nt][0], b[nt][1], (int)kMagic, (int)kMagic, (int)kMagic, (int)kMagic);
                    // (float)isum · (dw·dx) as ds4_dot_q, the product fused into the sum
                    acc[mt][nt][0] = fmaf(__int_as_float(c[0]) - kMagicF, __fmul_rn(rw[mt][0], tx[nt].x), acc[mt][nt][0]);
                    acc[mt][nt][1] = fmaf(__int_as_float(c[1]) - kMagicF, __fmul_rn(rw[mt][0], tx[nt].y), acc[mt][nt][1]);
                    acc[mt][nt][2] = fmaf(__int_as_float(c[2]) - kMagicF, __fmul_rn(rw[mt][1], tx[nt].x), acc[mt][nt][2]);
                    acc[mt][nt][3] = fmaf(__int_as_float(c[3]) - kMagicF, __fmul_rn(rw[mt][1], tx[nt].y), acc[mt][nt][3]);
                }
        } else if constexpr (WT == W_Q2_K) {
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
                    mma_k32(isum[mt][nt], a[mt], b[nt][0], b[nt][1], isum[mt][nt][0], isum[mt][nt][1], isum[mt][nt][2],
                            isum[mt][nt][3]);
        } else {  // Q4_K, IQ2_XXS: integer scale per row and 32-element sub-block
            const int8_t *sck = (const int8_t *)(sm + L::O_WSC) + kk * kBM;
            int sc[2][2];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                sc[mt][0] = sck[wm * 32 + mt * 16 + g];
                sc[mt][1] = sck[wm * 32 + mt * 16 + g + 8];
            }
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    int c[4];
                    mma_k32(c, a[mt], b[nt][0], b[nt][1], 0, 0, 0, 0);
                    isum[mt][nt][0] += sc[mt][0] * c[0];
                    isum[mt][nt][1] += sc[mt][0] * c[1];
                    isum[mt][nt][2] += sc[mt][1] * c[2];
                    isum[mt][nt][3] += sc[mt][1] * c[3];
                }
        }
    }
    if constexpr (WT == W_Q8_0) return;

    // ---- end of a superblock: min terms, the float term of ds4_dot_q, accumulation ----
    const float *wd = (const float *)(sm + L::O_WD);
    const float *dx = (const float *)(sm + L::O_DX);
    uint32_t am[2][2] = {{0, 0}, {0, 0}};
    if constexpr (WT == W_Q2_K || WT == W_Q4_K) {
        const uint8_t *mins = sm + L::O_MINS;
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
            const int r = wm * 32 + mt * 16 + g;
            am[mt][0] = *(const uint32_t *)(mins + r * 16 + 4 * tig);
            am[mt][1] = *(const uint32_t *)(mins + (r + 8) * 16 + 4 * tig);
        }
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const float2 tx = *(const float2 *)(dx + wn * 8 * NT + nt * 8 + 2 * tig);
        uint32_t lo = 0, hi = 0;
        if constexpr (WT == W_Q2_K || WT == W_Q4_K) {
            // summs = Σ_j min[row][j]·bsums[tok][j] (Q4_K: min[j] = m_{j/2}), j < 16, with
            // bsums = 128·hi + lo: hi in [-16, 15], lo in [0, 127] (|bsums| <= 2048).
            const uint32_t *xbs = (const uint32_t *)(sm + L::O_XBS);
            const uint2 bs = *(const uint2 *)(xbs + (wn * 8 * NT + nt * 8 + g) * 8 + 2 * tig);
            lo = prmt(bs.x, bs.y, 0x6420u) & 0x7F7F7F7Fu;
            hi = prmt(bs.x >> 7, bs.y >> 7, 0x6420u);
        }
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
            const int r = wm * 32 + mt * 16 + g;
            int cs[4] = {0, 0, 0, 0};
            if constexpr (WT == W_Q2_K || WT == W_Q4_K) {
                int ch[4];
                mma_k16(ch, am[mt][0], am[mt][1], hi, 0, 0, 0, 0);
                mma_k16(cs, am[mt][0], am[mt][1], lo, ch[0] * 128 + (int)kMagic, ch[1] * 128 + (int)kMagic,
                        ch[2] * 128 + (int)kMagic, ch[3] * 128 + (int)kMagic);
            }
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float xd = (i & 1) ? tx.y : tx.x;
                const float dw = wd[r + 8 * (i >> 1)], dmin = WT == W_IQ2 ? 0.0f : wd[kBM + r + 8 * (i >> 1)];
                acc[mt][nt][i] = __fadd_rn(acc[mt][nt][i], kq_term<WT>(xd, dw, dmin, isum[mt][nt][i], cs[i]));
            }
        }
    }
}

// Grouped launches: (problem, tile) of token tile tt (tiles numbered problem by problem,
// ceil(count/BN) each; a block-wide prefix sum over off[], 256 problems a pass). Returns
// the problem (-1: past the last tile) and its tile index in *j. Block-uniform; has barriers.
template <int BN>
__device__ __forceinline__ int find_tile(const Params &P, int tt, int *j, int *s_warp, int *s_pj) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (tid == 0) {
        s_pj[0] = -1;
        s_pj[1] = 0;
    }
    int carry = 0;
    for (int base = 0; base < P.n_prob; base += kThreads) {
        const int q = base + tid;
        const int c = q < P.n_prob ? P.off[q + 1] - P.off[q] : 0;
        const int tiles = c > 0 ? (c + BN - 1) / BN : 0;
        int v = tiles;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int t = __shfl_up_sync(0xffffffffu, v, o);
            if (lane >= o) v += t;
        }
        if (lane == 31) s_warp[warp] = v;
        __syncthreads();
        int pre = 0, tot = 0;
#pragma unroll
        for (int w2 = 0; w2 < kThreads / 32; w2++) {
            const int x = s_warp[w2];
            pre += w2 < warp ? x : 0;
            tot += x;
        }
        const int incl = carry + pre + v, excl = incl - tiles;
        if (tiles > 0 && tt >= excl && tt < incl) {
            s_pj[0] = q;
            s_pj[1] = tt - excl;
        }
        carry += tot;
        __syncthreads();
        if (carry > tt) break;  // block-uniform
    }
    *j = s_pj[1];
    return s_pj[0];
}

// Grouped launches (every variant; after pdl_wait: off / mat are earlier kernels' outputs): token
// tile tt's first token, token count and matrix weight base (row0 of matrix mat[p]). False
// (block-uniform) when the block has no tile — past the last one, or off[] beyond the host's
// bound — or when the problem names no valid matrix: that tile's outputs are then written
// as NaN here (cuda_mmq.h).
template <int BN>
__device__ __forceinline__ bool grouped_tile(const Params &P, int tt, int row0, int nrow, int *s_warp, int *s_pj,
                                             int &tok0, int &ntok, const uint8_t *&wbase) {
    int j = 0;
    const int p = find_tile<BN>(P, tt, &j, s_warp, s_pj);
    if (p < 0) return false;
    const int start = P.off[p];
    tok0 = start + j * BN;
    ntok = min(BN, P.off[p + 1] - tok0);
    if (start < 0 || tok0 >= P.max_rows) return false;
    ntok = min(ntok, P.max_rows - tok0);
    const int m = P.mat ? P.mat[p] : p;
    if (m < 0 || m >= P.n_mats) {
        for (int i = threadIdx.x; i < ntok * nrow; i += kThreads) {
            const int t = i / nrow, r = i - t * nrow;
            P.y[(int64_t)(tok0 + t) * P.ys + row0 + r] = __int_as_float(0x7fc00000);
        }
        return false;
    }
    wbase = P.w + (uint64_t)m * P.mat_stride + (uint64_t)row0 * P.row_bytes;
    return true;
}

// The tile's activation row addresses (v2, v3): rows past ntok point at P.x (never staged;
// their zero slots decode to zeros).
template <int BN>
__device__ __forceinline__ void tile_xrows(const Params &P, int tok0, int ntok, const uint8_t **s_xrow) {
    for (int t = threadIdx.x; t < BN; t += kThreads) {
        const int i = tok0 + t;
        const int xi = t >= ntok ? 0 : P.x_idx ? P.x_idx[i] : i;
        s_xrow[t] = P.x + (uint64_t)(int64_t)xi * P.x_stride;
    }
}

// ---- the kernel ----------------------------------------------------------------------------

template <int WT, int NT>
__global__ void __launch_bounds__(kThreads, 2) mmq_kernel(const __grid_constant__ Params P) {
    using L = Lay<WT, NT>;
    constexpr int BN = L::BN;
    extern __shared__ __align__(16) uint8_t sm[];
    __shared__ const uint8_t *s_xrow[BN];
    __shared__ int s_warp[kThreads / 32];
    __shared__ int s_pj[2];
    __shared__ const uint8_t *s_wbase;  // block-uniform tile data, re-read after barriers
    __shared__ int s_nrow, s_ntok;      // instead of held in registers across the k loop
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    // Raster: groups of kRaster row tiles; inside a group the row tile varies fastest.
    const uint32_t per_grp = (uint32_t)kRaster * (uint32_t)P.n_tt;
    const uint32_t grp = blockIdx.x / per_grp, rem = blockIdx.x - grp * per_grp;
    const uint32_t rg = min((uint32_t)kRaster, (uint32_t)P.n_rt - grp * kRaster);
    const int tt = (int)(rem / rg), rt = (int)(grp * kRaster + rem % rg);
    const int row0 = rt * kBM, nrow = min(kBM, P.n - row0);

    if constexpr (WT == W_IQ2) {  // decode tables: word i·C + c holds entry i (copy c)
        uint32_t *tab = (uint32_t *)sm;
        for (int i = tid; i < 384 * kIq2Copies; i += kThreads) {
            const int e = i / kIq2Copies;
            tab[i] = e < 256 ? P.codes[e] : P.ssp[e - 256];
        }
    }

    const uint8_t *wbase;
    int tok0, ntok;
    if (!P.grouped) {
        // matrix 0: the first weight step can be in flight before the previous kernel ends
        wbase = P.w + (uint64_t)row0 * P.row_bytes;
        tok0 = tt * BN;
        ntok = min(BN, P.n_rows - tok0);
        stage_rows<L::WSLOT>(sm + L::O_WRAW, nullptr, wbase, P.row_bytes, nrow, 0, step_bytes<WT>(P, 0, L::WSTEP), tid);
        pdl_wait();
        pdl_trigger();
    } else {
        pdl_wait();  // off / mat / x_idx are written by earlier kernels
        pdl_trigger();
        if (!grouped_tile<BN>(P, tt, row0, nrow, s_warp, s_pj, tok0, ntok, wbase)) return;  // block-uniform
    }
    tile_xrows<BN>(P, tok0, ntok, s_xrow);
    if (tid == 0) {
        s_wbase = wbase;
        s_nrow = nrow;
        s_ntok = ntok;
    }
    __syncthreads();
    if (P.grouped)
        stage_rows<L::WSLOT>(sm + L::O_WRAW, nullptr, wbase, P.row_bytes, nrow, 0, step_bytes<WT>(P, 0, L::WSTEP), tid);
    stage_rows<L::XSLOT>(sm + L::O_XRAW, s_xrow, nullptr, 0, ntok, 0, step_bytes<WT>(P, 0, L::XSTEP), tid);
    cp_async_commit();

    const int wm = warp & 3, wn = warp >> 2;
    float acc[2][NT][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[mt][nt][i] = 0.0f;

#pragma unroll 1
    for (int s = 0; s < P.nks; s++) {
        cp_async_wait<0>();
        __syncthreads();  // step s landed; every warp is done with step s-1's tiles
        decode_weights<WT, NT>(P, sm, s_wbase, s_nrow, s, tid);
        decode_acts<WT, NT>(P, sm, s_xrow, s_ntok, s, tid);
        __syncthreads();  // tiles ready; the raw buffers are free again
        if (s + 1 < P.nks) {
            const uint64_t wo = (uint64_t)(s + 1) * L::WSTEP, xo = (uint64_t)(s + 1) * L::XSTEP;
            stage_rows<L::WSLOT>(sm + L::O_WRAW, nullptr, s_wbase, P.row_bytes, s_nrow, wo,
                                 step_bytes<WT>(P, s + 1, L::WSTEP), tid);
            stage_rows<L::XSLOT>(sm + L::O_XRAW, s_xrow, nullptr, 0, s_ntok, xo, step_bytes<WT>(P, s + 1, L::XSTEP), tid);
        }
        cp_async_commit();
        mma_step<WT, NT>(sm, acc, lane, wm, wn);
    }
    cp_async_wait<0>();

    const int g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int r = wm * 32 + mt * 16 + g + 8 * (i >> 1);
                const int t = wn * 8 * NT + nt * 8 + 2 * tig + (i & 1);
                if (r < nrow && t < ntok) P.y[(int64_t)(tok0 + t) * P.ys + row0 + r] = acc[mt][nt][i];
            }
}

// ============================================================================================
// v2 (default; DS4_MMQ_V=1 selects v1 above). Same numerics, per output the same operation
// sequence as v1 (so v1 and v2 give identical bits), reorganised for instruction count and
// overlap (v1 is issue/latency bound: ~29 instructions per Q8_0 mma, two barriers a step):
//  * One barrier per k-step: the decoded tiles (int8 weights/activations and scale arrays)
//    are double buffered; in phase s every warp first decodes step s+1 into the other buffer,
//    then runs the mmas of step s, so one warp's decode overlaps the others' tensor work.
//  * Warp-private raw staging: warp w stages (cp.async) and decodes the same rows (weight rows
//    16w..16w+15, token rows XR·w..), so the raw buffer needs only cp.async.wait + __syncwarp,
//    is single buffered (the warp issues step s+2 right after decoding step s+1; the copy has
//    the whole mma phase to land), and the block barrier only guards the decoded tiles.
//  * Warp tiles of MT m16 x NT n8 tiles: 64 rows x 32 tokens (Q8_0, BN 128) or 32 x 32 / 32 x 16
//    (BN 64 / 32): each ldmatrix'd fragment feeds NT or MT mmas.
//  * Per-row and per-token scales are stored permuted so that a thread's 2·MT row scales
//    and 2·NT token scales are contiguous (16-byte loads instead of one load each).
//  * n8 tiles past the tile's last token are skipped (warp-uniform), so a 48-row expert in a
//    64-token tile runs 6 of 8 token tiles: the routed launches do ~Σ ceil(count/8)·8 work.
//  * Staging and decoding address math is hoisted out of 64-bit arithmetic (phases from the
//    low 32 bits), loops fully unrolled.
// Shared memory: one block per SM (launch bound 256 x 1: up to 255 registers, no spills).
// ============================================================================================

template <int WT, int MT, int NT>
struct Cfg2 {
    using L1 = Lay<WT, 1>;
    static constexpr int WROWS = kBM / (16 * MT);               // warps along weight rows
    static constexpr int WCOLS = (kThreads / 32) / WROWS;      // warps along tokens
    static constexpr int BN = WCOLS * NT * 8;                  // tokens per block tile
    static constexpr int XR = BN / 8;                          // token rows per warp (staging)
    static constexpr int WSTEP = L1::WSTEP, WSLOT = L1::WSLOT, XSTEP = L1::XSTEP, XSLOT = L1::XSLOT;
    static constexpr bool Q8 = WT == W_Q8_0;
    static constexpr bool HAS_SC = WT == W_IQ2 || WT == W_Q4_K;
    static constexpr bool HAS_MIN = WT == W_Q2_K || WT == W_Q4_K;
    // one decoded step ("tile buffer"); offsets inside it, all multiples of 16
    static constexpr int T_WQ = 0;                                        // int8 [128][256] swizzled
    static constexpr int T_XQ = T_WQ + kBM * 256;                         // int8 [BN][256] swizzled
    static constexpr int T_WD = T_XQ + BN * 256;                          // f32 permuted rows: Q8_0 [8][128]; K d[128], dmin[128]
    static constexpr int T_DX = T_WD + (Q8 ? 8 * kBM * 4 : 2 * kBM * 4);  // f32 permuted tokens: Q8_0 [8][BN]; K [BN]
    static constexpr int T_WSC = T_DX + (Q8 ? 8 : 1) * BN * 4;            // int32 [8][128] permuted rows (IQ2, Q4_K)
    static constexpr int T_MINS = T_WSC + (HAS_SC ? 8 * kBM * 4 : 0);     // int8 [128][16] (Q2_K, Q4_K)
    static constexpr int T_XBS = T_MINS + (HAS_MIN ? kBM * 16 : 0);       // int16 [BN][16] Q8_K sums
    static constexpr int TBYTES = T_XBS + (Q8 ? 0 : BN * 32);
    static constexpr int TAB = WT == W_IQ2 ? (256 + 128) * 4 * kIq2Copies : 0;
    static constexpr int O_T0 = TAB;
    static constexpr int O_WRAW = O_T0 + 2 * TBYTES;     // [128][WSLOT], rows of warp w at 16w
    static constexpr int O_XRAW = O_WRAW + kBM * WSLOT;  // [BN][XSLOT], rows of warp w at XR·w
    static constexpr int BYTES = O_XRAW + BN * XSLOT;
    static_assert(WROWS * MT * 16 == kBM && WCOLS * WROWS == kThreads / 32, "warp grid");
    static_assert(NT % 2 == 0 && XR * 8 % 32 == 0, "token tiles");
};

// Permuted scale slots: the thread with mma group g (lane / 4) of warp-row wm reads its rows
// (mt, h) (row wm·16MT + 16mt + 8h + g) at wm·16MT + 2MT·g + 2mt + h; tokens (nt, e)
// (token wn·8NT + 8nt + 2tig + e) at wn·8NT + 2NT·tig + 2nt + e.
template <int MT>
__device__ __forceinline__ int perm_row(int r) {
    const int wm = r / (16 * MT), rem = r - wm * 16 * MT;
    return wm * 16 * MT + (rem & 7) * 2 * MT + (rem >> 4) * 2 + ((rem >> 3) & 1);
}
template <int NT>
__device__ __forceinline__ int perm_tok(int t) {
    const int wn = t / (8 * NT), rem = t - wn * 8 * NT;
    return wn * 8 * NT + ((rem >> 1) & 3) * 2 * NT + (rem >> 3) * 2 + (rem & 1);
}

// cp_async16 to a shared-space address (offsets fold into the instruction).
__device__ __forceinline__ void cp_async16s(uint32_t sdst, const void *gsrc) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sdst), "l"(gsrc) : "memory");
}

// Stages bytes [soff, soff + bytes) of the warp's ROWS rows (row r at rowp(r), r < nvalid)
// into slots of SLOT bytes: the aligned 16-byte chunks covering them, as stage_rows. LPR
// lanes per row (8 or 16) take chunk c = lane % LPR (and c + LPR where the slot has more),
// so each pass copies RPI = 32 / LPR rows with contiguous 128/256-byte runs.
template <int SLOT, int ROWS, class RowPtr>
__device__ __forceinline__ void stage2(uint8_t *dst, RowPtr rowp, int nvalid, uint32_t soff, uint32_t bytes, int lane) {
    constexpr int CH = SLOT / 16, LPR = CH <= 8 ? 8 : 16, RPI = 32 / LPR, E = CH - LPR;
    static_assert(E <= LPR && ROWS % RPI == 0, "staging lanes");
    const int c = lane % LPR, r0 = lane / LPR;
    const uint32_t c16 = 16u * (uint32_t)c;  // chunk c is wanted iff 16c < phase + bytes (false for c >= CH)
    const uint32_t d0 = smem_u32(dst) + (uint32_t)(r0 * SLOT) + c16;
    const uint32_t sc = soff + c16;
    // (branch-free: rowp(r) is valid for every r < ROWS, the copies are predicated)
#pragma unroll
    for (int it = 0; it < ROWS / RPI; it++) {
        const int r = it * RPI + r0;
        const uintptr_t src = (uintptr_t)rowp(r) + sc;
        const uint32_t lim = ((uint32_t)src & 15u) + bytes;
        const uint8_t *a = (const uint8_t *)(src & ~(uintptr_t)15);
        const bool in = r < nvalid;
        if (in && c16 < lim) cp_async16s(d0 + it * RPI * SLOT, a);
        if (E > 0 && in && c < E && c16 + 16u * LPR < lim) cp_async16s(d0 + it * RPI * SLOT + 16 * LPR, a + 16 * LPR);
    }
}

// Decodes the warp's 16 weight rows of step s (raw slots) into tile buffer tb. Unit (r, q):
// lanes 4i..4i+3 take q = 0..3 (then 4..7) of rows i and i+8 (as v1: conflict-free stores).
// wlo: low 32 bits of the tile's row-0 address (phases are the low 4 bits). No per-row
// test: rows past nrow were never staged and their slots hold zeros (cleared at the start;
// they only feed outputs that are not stored). FULL: all 8 blocks of a Q8_0 step exist
// (else blocks q >= nbk decode to zero; their slot bytes are stale).
template <int WT, int MT, int NT, bool FULL>
__device__ __forceinline__ void decode2_w(const Params &P, uint8_t *tb, const uint8_t *sm, uint32_t wlo, int s, int warp,
                                          int lane) {
    using C = Cfg2<WT, MT, NT>;
    const uint32_t soff = (uint32_t)s * C::WSTEP;
    const int nbk = WT == W_Q8_0 ? min(8, P.nb - 8 * s) : 8;
    float *wd = (float *)(tb + C::T_WD);
    int *wsc = (int *)(tb + C::T_WSC);
    uint8_t *mins = tb + C::T_MINS;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int r = 16 * warp + (lane >> 2) + 8 * (j & 1), q = (lane & 3) + 4 * (j >> 1);
        const int pr = perm_row<MT>(r);
        const uint8_t *bp = sm + C::O_WRAW + r * C::WSLOT + ((wlo + (uint32_t)r * (uint32_t)P.row_bytes + soff) & 15u);
        uint32_t w[8];
        if constexpr (WT == W_Q8_0) {
            float d = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++) w[i] = 0;
            if (FULL || q < nbk) {
                d = f16_bits_to_f32((uint16_t)ld_u16(bp + 34 * q));
                ld_words<8>(bp + 34 * q + 2, w);
            }
            wd[q * kBM + pr] = d;
        } else if constexpr (WT == W_IQ2) {
            uint32_t a[2];
            ld_words<2>(bp + 2 + 8 * q, a);
            const uint8_t *codes = sm + 4 * (lane & (kIq2Copies - 1));
            const uint8_t *ssp = codes + 1024 * kIq2Copies;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const uint32_t oc = ((a[0] >> (8 * k)) & 255u) * (4u * kIq2Copies);
                const uint32_t os = ((a[1] >> (7 * k)) & 127u) * (4u * kIq2Copies);
                const uint32_t sel = *(const uint32_t *)(codes + oc) | *(const uint32_t *)(ssp + os);
                w[2 * k] = prmt(kIq2PosBytes, kIq2NegBytes, sel);
                w[2 * k + 1] = prmt(kIq2PosBytes, kIq2NegBytes, sel >> 16);
            }
            wsc[q * kBM + pr] = 2 * (int)(a[1] >> 28) + 1;
            if (j < 2 && (lane & 3) == 0) wd[pr] = f16_bits_to_f32((uint16_t)ld_u16(bp));
        } else if constexpr (WT == W_Q4_K) {
            // d, dmin, scales[12], qs[128]; sub-block q: nibble (q & 1) of qs[32·(q/2) ..]
            uint32_t v[8];
            ld_words<8>(bp + 16 + 32 * (q >> 1), v);
            const int sh = 4 * (q & 1);
#pragma unroll
            for (int i = 0; i < 8; i++) w[i] = (v[i] >> sh) & 0x0F0F0F0Fu;
            const uint8_t *scb = bp + 4;
            int sc, m;
            if (q < 4) {
                sc = scb[q] & 63;
                m = scb[q + 4] & 63;
            } else {
                sc = (scb[q + 4] & 15) | ((scb[q - 4] >> 6) << 4);
                m = (scb[q + 4] >> 4) | ((scb[q] >> 6) << 4);
            }
            wsc[q * kBM + pr] = sc;
            *(uint16_t *)(mins + r * 16 + 2 * q) = (uint16_t)(m * 0x0101);
            if (j < 2 && (lane & 3) == 0) {
                wd[pr] = f16_bits_to_f32((uint16_t)ld_u16(bp));
                wd[kBM + pr] = f16_bits_to_f32((uint16_t)ld_u16(bp + 2));
            }
        } else {  // W_Q2_K: scales[16], qs[64], d, dmin; q = 4h + j covers sub-blocks 2q, 2q+1
            uint32_t v[8];
            ld_words<8>(bp + 16 + 32 * (q >> 2), v);
            const uint32_t s0 = bp[2 * q], s1 = bp[2 * q + 1];
            const int sh = 2 * (q & 3);
#pragma unroll
            for (int i = 0; i < 8; i++) w[i] = ((v[i] >> sh) & 0x03030303u) * ((i < 4 ? s0 : s1) & 15u);  // <= 45: no carry
            *(uint16_t *)(mins + r * 16 + 2 * q) = (uint16_t)((s0 >> 4) | ((s1 >> 4) << 8));
            if (j < 2 && (lane & 3) == 0) {
                wd[pr] = f16_bits_to_f32((uint16_t)ld_u16(bp + 80));
                wd[kBM + pr] = f16_bits_to_f32((uint16_t)ld_u16(bp + 82));
            }
        }
        st_row32(tb + C::T_WQ + r * 256, r, q, w);
    }
}

// Decodes the warp's XR token rows of step s (rows past ntok: zero slots, any phase).
template <int WT, int MT, int NT, bool FULL>
__device__ __forceinline__ void decode2_x(const Params &P, uint8_t *tb, const uint8_t *sm, const uint8_t *const *xrow, int s,
                                          int warp, int lane) {
    using C = Cfg2<WT, MT, NT>;
    constexpr int BN = C::BN, XR = C::XR;
    const uint32_t soff = (uint32_t)s * C::XSTEP;
    const int nbk = WT == W_Q8_0 ? min(8, P.nb - 8 * s) : 8;
    float *dx = (float *)(tb + C::T_DX);
    uint32_t *xbs = (uint32_t *)(tb + C::T_XBS);
#pragma unroll
    for (int j = 0; j < XR * 8 / 32; j++) {
        const int v = lane + 32 * j;
        const int t = warp * XR + (v >> 2) % XR, q = (v & 3) + 4 * (v / (4 * XR));
        const uint8_t *bp = sm + C::O_XRAW + t * C::XSLOT + (((uint32_t)(uintptr_t)xrow[t] + soff) & 15u);
        uint32_t w[8];
        if constexpr (WT == W_Q8_0) {
            float d = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++) w[i] = 0;
            if (FULL || q < nbk) {
                d = f16_bits_to_f32((uint16_t)ld_u16(bp + 34 * q));
                ld_words<8>(bp + 34 * q + 2, w);
            }
            dx[q * BN + perm_tok<NT>(t)] = d;
        } else {  // Q8_K: f32 d, 256 quants, 16 int16 sums; 4-byte aligned (host check)
            const uint32_t *qw = (const uint32_t *)(bp + 4 + 32 * q);
#pragma unroll
            for (int i = 0; i < 8; i++) w[i] = qw[i];
            xbs[t * 8 + q] = *(const uint32_t *)(bp + 260 + 4 * q);
            if (q == 0) dx[perm_tok<NT>(t)] = *(const float *)bp;
        }
        st_row32(tb + C::T_XQ + t * 256, t, q, w);
    }
}

// Both decoders for step s into tile buffer tb (FULL chosen per step, block-uniform).
template <int WT, int MT, int NT>
__device__ __forceinline__ void decode2(const Params &P, uint8_t *tb, const uint8_t *sm, uint32_t wlo,
                                        const uint8_t *const *xrow, int s, int warp, int lane) {
    if (WT != W_Q8_0 || P.nb - 8 * s >= 8) {
        decode2_w<WT, MT, NT, true>(P, tb, sm, wlo, s, warp, lane);
        decode2_x<WT, MT, NT, true>(P, tb, sm, xrow, s, warp, lane);
    } else {
        decode2_w<WT, MT, NT, false>(P, tb, sm, wlo, s, warp, lane);
        decode2_x<WT, MT, NT, false>(P, tb, sm, xrow, s, warp, lane);
    }
}

// The mmas of one decoded step (tile buffer tb) for warp (wm, wn); nv: its n8 tiles that
// hold tokens (1..NT). K-quants: the whole superblock, then its float term (as v1).
template <int WT, int MT, int NT, bool FULL>
__device__ __forceinline__ void mma2(const uint8_t *tb, float (&acc)[MT][NT][4], int lane, int wm, int wn, int nv) {
    if (FULL) nv = NT;  // (FULL: every n8 tile holds tokens; no guards in the loop)
    using C = Cfg2<WT, MT, NT>;
    constexpr int BN = C::BN;
    const int g = lane >> 2, tig = lane & 3, x7 = lane & 7;
    const uint32_t tbs = smem_u32(tb);
    const int ar = wm * MT * 16 + x7 + 8 * ((lane >> 3) & 1), ahi = lane >> 4;
    const int bt = wn * NT * 8 + x7 + 8 * (lane >> 4), bhi = (lane >> 3) & 1;
    const uint32_t a_addr = tbs + C::T_WQ + ar * 256, b_addr = tbs + C::T_XQ + bt * 256;
    const int prow = wm * MT * 16 + g * 2 * MT, ptok = wn * NT * 8 + tig * 2 * NT;
    int isum[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) isum[mt][nt][i] = WT == W_Q2_K ? (int)kMagic : 0;

#pragma unroll 2
    for (int kk = 0; kk < 8; kk++) {
        uint32_t a[MT][4], b[NT][2];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) ldsm_x4(a[mt], a_addr + mt * 16 * 256 + (((2 * kk + ahi) ^ x7) << 4));
        load_b2<NT, FULL>(b, b_addr, kk, bhi, x7, nv);
        if constexpr (WT == W_Q8_0) {
            float rw[2 * MT], tx[2 * NT];
            const float *dw = (const float *)(tb + C::T_WD) + kk * kBM + prow;
            const float *dxk = (const float *)(tb + C::T_DX) + kk * BN + ptok;
#pragma unroll
            for (int i = 0; i < 2 * MT; i += 4) *(float4 *)(rw + i) = *(const float4 *)(dw + i);
#pragma unroll
            for (int i = 0; i < 2 * NT; i += 4) *(float4 *)(tx + i) = *(const float4 *)(dxk + i);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                if (!FULL && nt >= nv) continue;  // warp-uniform
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    int c[4];
                    mma_k32(c, a[mt], b[nt][0], b[nt][1], (int)kMagic, (int)kMagic, (int)kMagic, (int)kMagic);
                    // (float)isum · (dw·dx) as ds4_dot_q, the product fused into the sum (as v1)
                    acc[mt][nt][0] = fmaf(__int_as_float(c[0]) - kMagicF, __fmul_rn(rw[2 * mt], tx[2 * nt]), acc[mt][nt][0]);
                    acc[mt][nt][1] = fmaf(__int_as_float(c[1]) - kMagicF, __fmul_rn(rw[2 * mt], tx[2 * nt + 1]), acc[mt][nt][1]);
                    acc[mt][nt][2] = fmaf(__int_as_float(c[2]) - kMagicF, __fmul_rn(rw[2 * mt + 1], tx[2 * nt]), acc[mt][nt][2]);
                    acc[mt][nt][3] =
                        fmaf(__int_as_float(c[3]) - kMagicF, __fmul_rn(rw[2 * mt + 1], tx[2 * nt + 1]), acc[mt][nt][3]);
                }
            }
        } else if constexpr (WT == W_Q2_K) {
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                if (!FULL && nt >= nv) continue;
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
                    mma_k32(isum[mt][nt], a[mt], b[nt][0], b[nt][1], isum[mt][nt][0], isum[mt][nt][1], isum[mt][nt][2],
                            isum[mt][nt][3]);
            }
        } else {  // Q4_K, IQ2_XXS: integer scale per row and 32-element sub-block
            int sc[2 * MT];
            const int *sck = (const int *)(tb + C::T_WSC) + kk * kBM + prow;
#pragma unroll
            for (int i = 0; i < 2 * MT; i += 4) *(int4 *)(sc + i) = *(const int4 *)(sck + i);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                if (!FULL && nt >= nv) continue;
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    int c[4];
                    mma_k32(c, a[mt], b[nt][0], b[nt][1], 0, 0, 0, 0);
                    isum[mt][nt][0] += sc[2 * mt] * c[0];
                    isum[mt][nt][1] += sc[2 * mt] * c[1];
                    isum[mt][nt][2] += sc[2 * mt + 1] * c[2];
                    isum[mt][nt][3] += sc[2 * mt + 1] * c[3];
                }
            }
        }
    }
    if constexpr (WT == W_Q8_0) return;

    // ---- end of a superblock: min terms, the float term of ds4_dot_q (v1's operations) ----
    float dwr[2 * MT], dmr[2 * MT], tx[2 * NT];
    const float *wd = (const float *)(tb + C::T_WD);
#pragma unroll
    for (int i = 0; i < 2 * MT; i += 4) {
        *(float4 *)(dwr + i) = *(const float4 *)(wd + prow + i);
        if constexpr (WT != W_IQ2) *(float4 *)(dmr + i) = *(const float4 *)(wd + kBM + prow + i);
    }
#pragma unroll
    for (int i = 0; i < 2 * NT; i += 4) *(float4 *)(tx + i) = *(const float4 *)((const float *)(tb + C::T_DX) + ptok + i);
    uint32_t am[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        am[mt][0] = am[mt][1] = 0;
        if constexpr (WT == W_Q2_K || WT == W_Q4_K) {
            const uint8_t *mins = tb + C::T_MINS;
            const int r = wm * MT * 16 + mt * 16 + g;
            am[mt][0] = *(const uint32_t *)(mins + r * 16 + 4 * tig);
            am[mt][1] = *(const uint32_t *)(mins + (r + 8) * 16 + 4 * tig);
        }
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        if (!FULL && nt >= nv) continue;
        uint32_t lo = 0, hi = 0;
        if constexpr (WT == W_Q2_K || WT == W_Q4_K) {
            // summs = Σ_j min[row][j]·bsums[tok][j], bsums = 128·hi + lo (see v1)
            const uint32_t *xbs = (const uint32_t *)(tb + C::T_XBS);
            const uint2 bs = *(const uint2 *)(xbs + (wn * 8 * NT + nt * 8 + g) * 8 + 2 * tig);
            lo = prmt(bs.x, bs.y, 0x6420u) & 0x7F7F7F7Fu;
            hi = prmt(bs.x >> 7, bs.y >> 7, 0x6420u);
        }
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            int cs[4] = {0, 0, 0, 0};
            if constexpr (WT == W_Q2_K || WT == W_Q4_K) {
                int ch[4];
                mma_k16(ch, am[mt][0], am[mt][1], hi, 0, 0, 0, 0);
                mma_k16(cs, am[mt][0], am[mt][1], lo, ch[0] * 128 + (int)kMagic, ch[1] * 128 + (int)kMagic,
                        ch[2] * 128 + (int)kMagic, ch[3] * 128 + (int)kMagic);
            }
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float xd = tx[2 * nt + (i & 1)];
                const float dw = dwr[2 * mt + (i >> 1)], dmin = WT == W_IQ2 ? 0.0f : dmr[2 * mt + (i >> 1)];
                acc[mt][nt][i] = __fadd_rn(acc[mt][nt][i], kq_term<WT>(xd, dw, dmin, isum[mt][nt][i], cs[i]));
            }
        }
    }
}

template <int WT, int MT, int NT>
__global__ void __launch_bounds__(kThreads, 1) mmq2_kernel(const __grid_constant__ Params P) {
    using C = Cfg2<WT, MT, NT>;
    constexpr int BN = C::BN, XR = C::XR;
    extern __shared__ __align__(16) uint8_t sm[];
    __shared__ const uint8_t *s_xrow[BN];
    __shared__ int s_warp[kThreads / 32], s_pj[2];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    // Raster: groups of kRaster row tiles; inside a group the row tile varies fastest.
    const uint32_t per_grp = (uint32_t)kRaster * (uint32_t)P.n_tt;
    const uint32_t grp = blockIdx.x / per_grp, rem = blockIdx.x - grp * per_grp;
    const uint32_t rg = min((uint32_t)kRaster, (uint32_t)P.n_rt - grp * kRaster);
    const int tt = (int)(rem / rg), rt = (int)(grp * kRaster + rem % rg);
    const int row0 = rt * kBM, nrow = min(kBM, P.n - row0);

    if constexpr (WT == W_IQ2) {  // decode tables: word i·C + c holds entry i (copy c)
        uint32_t *tab = (uint32_t *)sm;
        for (int i = tid; i < 384 * kIq2Copies; i += kThreads) {
            const int e = i / kIq2Copies;
            tab[i] = e < 256 ? P.codes[e] : P.ssp[e - 256];
        }
    }

    const uint8_t *wbase;
    int tok0, ntok;
    const int wr0 = 16 * warp;  // this warp's first weight row
    auto wrow = [&](int r) { return wbase + (uint64_t)(uint32_t)(wr0 + r) * P.row_bytes; };
    auto xrowp = [&](int r) { return s_xrow[warp * XR + r]; };
    {  // the warp's raw slots start as zeros: rows never staged decode to zeros
        uint4 *zw = (uint4 *)(sm + C::O_WRAW + wr0 * C::WSLOT), *zx = (uint4 *)(sm + C::O_XRAW + warp * XR * C::XSLOT);
        for (int i = lane; i < 16 * C::WSLOT / 16; i += 32) zw[i] = make_uint4(0, 0, 0, 0);
        for (int i = lane; i < XR * C::XSLOT / 16; i += 32) zx[i] = make_uint4(0, 0, 0, 0);
        __syncwarp();
    }
    if (!P.grouped) {
        // matrix 0: the first weight step can be in flight before the previous kernel ends
        wbase = P.w + (uint64_t)row0 * P.row_bytes;
        tok0 = tt * BN;
        ntok = min(BN, P.n_rows - tok0);
        stage2<C::WSLOT, 16>(sm + C::O_WRAW + wr0 * C::WSLOT, wrow, nrow - wr0, 0, step_bytes<WT>(P, 0, C::WSTEP), lane);
        pdl_wait();
        pdl_trigger();
    } else {
        pdl_wait();  // off / mat / x_idx are written by earlier kernels
        pdl_trigger();
        if (!grouped_tile<BN>(P, tt, row0, nrow, s_warp, s_pj, tok0, ntok, wbase)) return;  // block-uniform
    }
    tile_xrows<BN>(P, tok0, ntok, s_xrow);
    __syncthreads();  // s_xrow, IQ2 tables
    const uint32_t wlo = (uint32_t)(uintptr_t)wbase;
    const int nxw = ntok - warp * XR;  // this warp's token rows that exist
    if (P.grouped)
        stage2<C::WSLOT, 16>(sm + C::O_WRAW + wr0 * C::WSLOT, wrow, nrow - wr0, 0, step_bytes<WT>(P, 0, C::WSTEP), lane);
    stage2<C::XSLOT, XR>(sm + C::O_XRAW + warp * XR * C::XSLOT, xrowp, nxw, 0, step_bytes<WT>(P, 0, C::XSTEP), lane);
    cp_async_commit();
    // prologue: step 0 into tile buffer 0, step 1 in flight
    cp_async_wait<0>();
    __syncwarp();
    decode2<WT, MT, NT>(P, sm + C::O_T0, sm, wlo, s_xrow, 0, warp, lane);
    __syncwarp();  // the warp's raw slots are free
    if (P.nks > 1) {
        stage2<C::WSLOT, 16>(sm + C::O_WRAW + wr0 * C::WSLOT, wrow, nrow - wr0, C::WSTEP, step_bytes<WT>(P, 1, C::WSTEP),
                             lane);
        stage2<C::XSLOT, XR>(sm + C::O_XRAW + warp * XR * C::XSLOT, xrowp, nxw, C::XSTEP, step_bytes<WT>(P, 1, C::XSTEP),
                             lane);
    }
    cp_async_commit();
    __syncthreads();  // tile buffer 0 visible

    const int wm = warp / C::WCOLS, wn = warp - wm * C::WCOLS;
    const int nv = max(0, min(NT, (ntok - wn * NT * 8 + 7) >> 3));  // n8 tiles with tokens (warp-uniform)
    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[mt][nt][i] = 0.0f;

#pragma unroll 1
    for (int s = 0; s < P.nks; s++) {
        if (s + 1 < P.nks) {
            // decode step s+1 into the other buffer (last read by step s-1's mmas, before
            // the previous barrier), then put step s+2 in flight into the freed raw slots
            uint8_t *tb = sm + C::O_T0 + ((s + 1) & 1) * C::TBYTES;
            cp_async_wait<0>();
            __syncwarp();
            decode2<WT, MT, NT>(P, tb, sm, wlo, s_xrow, s + 1, warp, lane);
            __syncwarp();
            if (s + 2 < P.nks) {
                const uint32_t wo = (uint32_t)(s + 2) * C::WSTEP, xo = (uint32_t)(s + 2) * C::XSTEP;
                stage2<C::WSLOT, 16>(sm + C::O_WRAW + wr0 * C::WSLOT, wrow, nrow - wr0, wo,
                                     step_bytes<WT>(P, s + 2, C::WSTEP), lane);
                stage2<C::XSLOT, XR>(sm + C::O_XRAW + warp * XR * C::XSLOT, xrowp, nxw, xo,
                                     step_bytes<WT>(P, s + 2, C::XSTEP), lane);
            }
            cp_async_commit();
        }
        const uint8_t *tb = sm + C::O_T0 + (s & 1) * C::TBYTES;
        if (nv == NT)
            mma2<WT, MT, NT, true>(tb, acc, lane, wm, wn, nv);
        else if (nv > 0)
            mma2<WT, MT, NT, false>(tb, acc, lane, wm, wn, nv);
        __syncthreads();  // step s+1's tiles visible; step s's buffer free
    }
    cp_async_wait<0>();

    const int g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int r = wm * MT * 16 + mt * 16 + g + 8 * (i >> 1);
                const int t = wn * 8 * NT + nt * 8 + 2 * tig + (i & 1);
                if (r < nrow && t < ntok) P.y[(int64_t)(tok0 + t) * P.ys + row0 + r] = acc[mt][nt][i];
            }
}

// ============================================================================================
// v3 (DS4_MMQ_V=3; IQ2_XXS and Q2_K: the routed experts. Other types run v2). Same numerics
// and per-output operation sequence as v1/v2 (identical bits). v1/v2 are bound by shared-
// memory traffic: per k-step every block writes the decoded int8 weight tile (32 KB per 128
// rows) and every warp re-reads its A fragments with ldmatrix. v3 never materialises decoded
// weights: each warp decodes its mma A fragments in registers straight from the raw GGUF
// blocks staged in shared memory (cp.async, as v2), and one A fragment feeds all the warp's
// n8 token tiles.
//  * Block = 8 warps x (16·MT weight rows each) = 128·MT rows (MT = 2: 256) x BN = 8·NT tokens
//    (32 or 64); every warp covers all BN tokens, so no A decode is duplicated; the B
//    fragments (activations) are read by every warp (ldmatrix, as v1/v2).
//  * k permutation: the m16n8k32 A fragment of lane (g = lane/4, tig = lane%4) holds rows g,
//    g+8 at k = 4tig..4tig+3 (regs 0, 1) and 16+4tig..16+4tig+3 (regs 2, 3). v3 lets mma
//    position k of a 32-element sub-block hold element π(k): π(4i + j) = 8i + j,
//    π(16 + 4i + j) = 8i + 4 + j (i, j < 4), on both operands (the activation decoder stores
//    the words of each 32-byte unit as w0 w2 w4 w6 w1 w3 w5 w7). A permutation of k within
//    a sub-block does not change its integer dot, and then lane tig owns the whole 8-element
//    group tig of its rows: IQ2_XXS: one grid entry (codes[] nibbles | sign nibbles, two
//    prmt) per row and sub-block, one sign index, one scale; Q2_K: the 8 quants 8tig..8tig+7
//    of the 32-byte qs half (two words, loaded once per 128 elements) and one 4-bit scale.
//  * Q8_K activations: decoded (permuted) into double-buffered tiles as v2, one barrier per
//    k-step; each warp stages and decodes BN/8 token rows.
//  * Weight raw blocks: warp-private rows (warp w stages and reads rows 16·MT·w ..), three
//    buffers (steps s, s+1, s+2 in flight), so weights need only cp.async.wait + __syncwarp.
//    Phase s: issue X(s+1), then W(s+2) (two commit groups); mmas of step s; wait for all but
//    the newest group (X(s+1) and W(s+1) landed); decode X(s+1); barrier.
//  * IQ2_XXS tables: 32 copies (48 KB), word e·32 + c, lane c reads copy c: conflict-free.
//  * Shared memory per block (MT 2, BN 64): IQ2_XXS 160.5 KB, Q2_K 140.5 KB; one block per SM.
// ============================================================================================

constexpr int kMT3 = 2;  // m16 tiles per warp (block rows 128·kMT3)

// Shared-memory loads at 32-bit shared addresses (v3's decode: no 64-bit generic address
// math per load). volatile: kept in program order with the barriers and cp.async waits.
__device__ __forceinline__ uint32_t lds32(uint32_t a) {
    uint32_t v;
    asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(a));
    return v;
}
__device__ __forceinline__ uint32_t lds8(uint32_t a) {
    uint32_t v;
    asm volatile("ld.shared.u8 %0, [%1];" : "=r"(v) : "r"(a));
    return v;
}
__device__ __forceinline__ uint32_t lds16(uint32_t a) {
    uint32_t v;
    asm volatile("ld.shared.u16 %0, [%1];" : "=r"(v) : "r"(a));
    return v;
}
__device__ __forceinline__ void sts32(uint32_t a, uint32_t v) { asm volatile("st.shared.u32 [%0], %1;" ::"r"(a), "r"(v)); }
// The 32-bit word at 2-byte aligned shared address a (two aligned loads, a funnel shift).
__device__ __forceinline__ uint32_t lds32u(uint32_t a) {
    const uint32_t al = a & ~3u;
    return fshr(lds32(al), lds32(al + 4), (a & 3u) * 8);
}

template <int WT, int MT, int NT>
struct Cfg3 {
    static_assert(WT == W_IQ2 || WT == W_Q2_K, "v3 kernels: IQ2_XXS, Q2_K");
    using L1 = Lay<WT, 1>;
    static constexpr int WR = 16 * MT;                  // weight rows per warp
    static constexpr int BM = 8 * WR;                   // weight rows per block
    static constexpr int BN = 8 * NT;                   // tokens per block tile
    static constexpr int XR = BN / 8;                   // token rows per warp (staging, decode)
    static constexpr int WSTEP = L1::WSTEP, WSLOT = L1::WSLOT, XSTEP = L1::XSTEP, XSLOT = L1::XSLOT;
    static constexpr int NWB = 3;                       // weight raw buffers: steps s, s+1, s+2
    static constexpr int TAB = WT == W_IQ2 ? 384 * 32 * 4 : 0;  // codes [256][32], ssp [128][32]
    // one decoded activation step ("tile buffer")
    static constexpr int T_XQ = 0;                      // int8 [BN][256], permuted, swizzled
    static constexpr int T_DX = BN * 256;               // f32 [BN], permuted tokens (perm_tok)
    static constexpr int T_XBS = T_DX + BN * 4;         // Q2_K: int16 [BN][16] Q8_K sums
    static constexpr int TBYTES = T_XBS + (WT == W_Q2_K ? BN * 32 : 0);
    static constexpr int O_T0 = TAB;
    static constexpr int O_WRAW = O_T0 + 2 * TBYTES;    // NWB x [BM][WSLOT], warp w's rows at WR·w
    static constexpr int WBUF = BM * WSLOT;
    static constexpr int O_XRAW = O_WRAW + NWB * WBUF;  // [BN][XSLOT], warp w's rows at XR·w
    static constexpr int BYTES = O_XRAW + BN * XSLOT + 16;  // (+16: ld_words reads a word past a slot)
    static_assert(XR * 8 % 32 == 0 && NT % 2 == 0, "token tiles");
    static_assert(TAB % 16 == 0 && TBYTES % 16 == 0 && WBUF % 16 == 0, "alignment");
};

// Decodes the warp's XR token rows of step s (raw slots xr; rows past ntok: zero slots, any
// phase) into tile buffer tb: quants permuted (see above), d, and (Q2_K) the 16-sums. One
// token row at a time, lane L moves quant words L and L + 32: the loads read 32 consecutive
// words and the stores hit 32 distinct banks (a unit-per-lane split, as v1/v2, puts 8 lanes
// on one bank: the raw slot stride is a multiple of 16 bytes).
template <int WT, int MT, int NT>
__device__ __forceinline__ void decode3_x(uint8_t *tb, const uint8_t *xr, const uint8_t *const *xrow, int s, int warp,
                                          int lane) {
    using C = Cfg3<WT, MT, NT>;
    constexpr int XR = C::XR;
    const uint32_t soff = (uint32_t)s * C::XSTEP;
    // word i = L % 8 of unit L / 8 goes to mma position p = i/2 (i even) or 4 + i/2 (i odd):
    // chunk 2·(L / 8) + p / 4 of the row, word p % 4
    const int i = lane & 7, p = (i >> 1) + 4 * (i & 1);
    const uint32_t ch = 2 * (lane >> 3) + (p >> 2), wo = 4 * (p & 3);
    const uint32_t xrs = smem_u32(xr), tq = smem_u32(tb) + C::T_XQ;
    float *dx = (float *)(tb + C::T_DX);
    uint32_t *xbs = (uint32_t *)(tb + C::T_XBS);
#pragma unroll
    for (int tl = 0; tl < XR; tl++) {
        const int t = warp * XR + tl;
        // Q8_K: f32 d, 256 quants, 16 int16 sums; 4-byte aligned (host check)
        const uint32_t bp = xrs + tl * C::XSLOT + (((uint32_t)(uintptr_t)xrow[t] + soff) & 15u);
        const uint32_t v0 = lds32(bp + 4 + 4 * lane), v1 = lds32(bp + 132 + 4 * lane);
        const uint32_t o = tq + t * 256 + ((ch ^ (uint32_t)(t & 7)) << 4) + wo;
        sts32(o, v0);
        sts32(o + 128, v1);  // units 4..7: chunk + 8 (the swizzle only touches the low 3 bits)
        if constexpr (WT == W_Q2_K)
            if (lane < 8) xbs[t * 8 + lane] = lds32(bp + 260 + 4 * lane);
        if (lane == 0) dx[perm_tok<NT>(t)] = __uint_as_float(lds32(bp));
    }
}

// The mmas of step s for one warp: A decoded from the raw blocks of its rows (rp[mt][h]:
// shared address of the block of row 16mt + g + 8h of the warp in the raw buffer; even),
// B from tile buffer tb; then the superblock's float term (v1's operations). nv: n8 tiles
// holding tokens (1..NT).
template <int WT, int MT, int NT, bool FULL>
__device__ __forceinline__ void mma3(const uint8_t *sm, const uint8_t *tb, const uint32_t (&rp)[MT][2],
                                     float (&acc)[MT][NT][4], int lane, int nv) {
    if (FULL) nv = NT;  // (FULL: every n8 tile holds tokens; no guards in the loop)
    using C = Cfg3<WT, MT, NT>;
    const int g = lane >> 2, tig = lane & 3, x7 = lane & 7;
    const int bt = x7 + 8 * (lane >> 4), bhi = (lane >> 3) & 1;
    const uint32_t b_addr = smem_u32(tb) + C::T_XQ + bt * 256;
    int isum[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) isum[mt][nt][i] = WT == W_Q2_K ? (int)kMagic : 0;

    auto load_b = [&](int kk, uint32_t(&b)[NT][2]) { load_b2<NT, FULL>(b, b_addr, kk, bhi, x7, nv); };

    if constexpr (WT == W_IQ2) {
        // block: f16 d, then per sub-block 8 bytes: 4 grid indices (aux0), 4 x 7-bit sign
        // indices + 4-bit scale (aux1). Lane tig: grid entry aux0[tig], signs (aux1 >> 7tig) & 127.
        const uint32_t codes = smem_u32(sm) + 4 * lane, ssp = codes + 256 * 128;
        const int ssh = 7 * tig;
        // per row: aux0 byte tig of sub-block 0, the aligned word below its aux1, the funnel shift
        uint32_t ga[MT][2], aa[MT][2], fs[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                ga[mt][h] = rp[mt][h] + 2 + tig;
                aa[mt][h] = (rp[mt][h] + 6) & ~3u;
                fs[mt][h] = ((rp[mt][h] + 6) & 3u) * 8;
            }
#pragma unroll 2
        for (int kk = 0; kk < 8; kk++) {
            uint32_t a[MT][4];
            int sc[MT][2];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const uint32_t gi = lds8(ga[mt][h] + 8 * kk);
                    const uint32_t a1 = fshr(lds32(aa[mt][h] + 8 * kk), lds32(aa[mt][h] + 8 * kk + 4), fs[mt][h]);
                    const uint32_t sel = lds32(codes + (gi << 7)) | lds32(ssp + (((a1 >> ssh) & 127u) << 7));
                    a[mt][h] = prmt(kIq2PosBytes, kIq2NegBytes, sel);             // elements 8tig..8tig+3
                    a[mt][2 + h] = prmt(kIq2PosBytes, kIq2NegBytes, sel >> 16);   // 8tig+4..8tig+7
                    sc[mt][h] = (int)((a1 >> 27) | 1u);                            // 2·(aux1 >> 28) + 1
                }
            uint32_t b[NT][2];
            load_b(kk, b);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                if (!FULL && nt >= nv) continue;  // block-uniform
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    int c[4];
                    mma_k32(c, a[mt], b[nt][0], b[nt][1], 0, 0, 0, 0);
                    isum[mt][nt][0] += sc[mt][0] * c[0];
                    isum[mt][nt][1] += sc[mt][0] * c[1];
                    isum[mt][nt][2] += sc[mt][1] * c[2];
                    isum[mt][nt][3] += sc[mt][1] * c[3];
                }
            }
        }
    } else {
        // Q2_K block: scales[16], qs[64], d, dmin. Sub-block kk = 4hh + j: element l is
        // (qs[32hh + l] >> 2j) & 3 times scales[2kk + l/16] & 15 (<= 45: one int8, and one mma
        // chain over the superblock gives ds4_dot_q's isum, as v1). Lane tig: l = 8tig..8tig+7.
#pragma unroll 1
        for (int hh = 0; hh < 2; hh++) {
            uint32_t qw[MT][2][2];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const uint32_t q = rp[mt][h] + 16 + 32 * hh + 8 * tig, al = q & ~3u, f = (q & 3u) * 8;
                    const uint32_t t0 = lds32(al), t1 = lds32(al + 4), t2 = lds32(al + 8);
                    qw[mt][h][0] = fshr(t0, t1, f);
                    qw[mt][h][1] = fshr(t1, t2, f);
                }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int kk = 4 * hh + j;
                uint32_t a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const uint32_t sc = lds8(rp[mt][h] + 2 * kk + (tig >> 1)) & 15u;
                        a[mt][h] = ((qw[mt][h][0] >> (2 * j)) & 0x03030303u) * sc;  // no carry
                        a[mt][2 + h] = ((qw[mt][h][1] >> (2 * j)) & 0x03030303u) * sc;
                    }
                uint32_t b[NT][2];
                load_b(kk, b);
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    if (!FULL && nt >= nv) continue;
#pragma unroll
                    for (int mt = 0; mt < MT; mt++)
                        mma_k32(isum[mt][nt], a[mt], b[nt][0], b[nt][1], isum[mt][nt][0], isum[mt][nt][1],
                                isum[mt][nt][2], isum[mt][nt][3]);
                }
            }
        }
    }

    // ---- end of the superblock: min terms, the float term of ds4_dot_q (v1's operations) ----
    float tx[2 * NT];
#pragma unroll
    for (int i = 0; i < 2 * NT; i += 4)
        *(float4 *)(tx + i) = *(const float4 *)((const float *)(tb + C::T_DX) + tig * 2 * NT + i);
    float dw[MT][2], dm[MT][2];
    uint32_t am[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            if constexpr (WT == W_IQ2) {
                dw[mt][h] = f16_bits_to_f32((uint16_t)lds16(rp[mt][h]));
                dm[mt][h] = 0.0f;
                am[mt][h] = 0;
            } else {
                dw[mt][h] = f16_bits_to_f32((uint16_t)lds16(rp[mt][h] + 80));
                dm[mt][h] = f16_bits_to_f32((uint16_t)lds16(rp[mt][h] + 82));
                // scales 4tig..4tig+3: mins in the high nibbles
                am[mt][h] = (lds32u(rp[mt][h] + 4 * tig) >> 4) & 0x0F0F0F0Fu;
            }
        }
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        if (!FULL && nt >= nv) continue;
        uint32_t lo = 0, hi = 0;
        if constexpr (WT == W_Q2_K) {
            // summs = Σ_j min[row][j]·bsums[tok][j], bsums = 128·hi + lo (see v1)
            const uint32_t *xbs = (const uint32_t *)(tb + C::T_XBS);
            const uint2 bs = *(const uint2 *)(xbs + (nt * 8 + g) * 8 + 2 * tig);
            lo = prmt(bs.x, bs.y, 0x6420u) & 0x7F7F7F7Fu;
            hi = prmt(bs.x >> 7, bs.y >> 7, 0x6420u);
        }
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            int cs[4] = {0, 0, 0, 0};
            if constexpr (WT == W_Q2_K) {
                int ch[4];
                mma_k16(ch, am[mt][0], am[mt][1], hi, 0, 0, 0, 0);
                mma_k16(cs, am[mt][0], am[mt][1], lo, ch[0] * 128 + (int)kMagic, ch[1] * 128 + (int)kMagic,
                        ch[2] * 128 + (int)kMagic, ch[3] * 128 + (int)kMagic);
            }
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float xd = tx[2 * nt + (i & 1)];
                const float d0 = dw[mt][i >> 1], dmin = WT == W_IQ2 ? 0.0f : dm[mt][i >> 1];
                acc[mt][nt][i] = __fadd_rn(acc[mt][nt][i], kq_term<WT>(xd, d0, dmin, isum[mt][nt][i], cs[i]));
            }
        }
    }
}

template <int WT, int MT, int NT>
__global__ void __launch_bounds__(kThreads, 1) mmq3_kernel(const __grid_constant__ Params P) {
    using C = Cfg3<WT, MT, NT>;
    constexpr int BN = C::BN, XR = C::XR, BM = C::BM, WR = C::WR;
    extern __shared__ __align__(16) uint8_t sm[];
    __shared__ const uint8_t *s_xrow[BN];
    __shared__ int s_warp[kThreads / 32], s_pj[2];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    // Raster: groups of kRaster row tiles; inside a group the row tile varies fastest.
    const uint32_t per_grp = (uint32_t)kRaster * (uint32_t)P.n_tt;
    const uint32_t grp = blockIdx.x / per_grp, rem = blockIdx.x - grp * per_grp;
    const uint32_t rg = min((uint32_t)kRaster, (uint32_t)P.n_rt - grp * kRaster);
    const int tt = (int)(rem / rg), rt = (int)(grp * kRaster + rem % rg);
    const int row0 = rt * BM, nrow = min(BM, P.n - row0);

    const uint8_t *wbase;
    int tok0, ntok;
    const int wr0 = WR * warp;  // this warp's first weight row
    auto wrow = [&](int r) { return wbase + (uint64_t)(uint32_t)(wr0 + r) * P.row_bytes; };
    auto xrowp = [&](int r) { return s_xrow[warp * XR + r]; };
    uint8_t *const wraw = sm + C::O_WRAW + wr0 * C::WSLOT;  // buffer b at + b·WBUF
    uint8_t *const xraw = sm + C::O_XRAW + warp * XR * C::XSLOT;
    // weight step s into buffer s % NWB (rows past nrow: never staged)
    auto stage_w = [&](int s) {
        stage2<C::WSLOT, WR>(wraw + (s % C::NWB) * C::WBUF, wrow, nrow - wr0, (uint32_t)s * C::WSTEP, C::WSTEP, lane);
    };
    {  // the warp's raw slots start as zeros: rows / tokens never staged decode to finite values
#pragma unroll 1
        for (int b = 0; b < C::NWB; b++) {
            uint4 *zw = (uint4 *)(wraw + b * C::WBUF);
            for (int i = lane; i < WR * C::WSLOT / 16; i += 32) zw[i] = make_uint4(0, 0, 0, 0);
        }
        uint4 *zx = (uint4 *)xraw;
        for (int i = lane; i < XR * C::XSLOT / 16; i += 32) zx[i] = make_uint4(0, 0, 0, 0);
        if (warp == 0 && lane < 4) ((uint32_t *)(sm + C::BYTES - 16))[lane] = 0;
        __syncwarp();
    }
    if (!P.grouped) {
        // matrix 0: the first weight steps can be in flight before the previous kernel ends
        wbase = P.w + (uint64_t)row0 * P.row_bytes;
        tok0 = tt * BN;
        ntok = min(BN, P.n_rows - tok0);
        stage_w(0);
        if (P.nks > 1) stage_w(1);
        pdl_wait();
        pdl_trigger();
    } else {
        pdl_wait();  // off / mat / x_idx are written by earlier kernels
        pdl_trigger();
        if (!grouped_tile<BN>(P, tt, row0, nrow, s_warp, s_pj, tok0, ntok, wbase)) return;  // block-uniform
    }
    tile_xrows<BN>(P, tok0, ntok, s_xrow);
    __syncthreads();  // s_xrow, the zeroed pad
    const int nxw = ntok - warp * XR;  // this warp's token rows that exist
    if (P.grouped) {
        stage_w(0);
        if (P.nks > 1) stage_w(1);
    }
    stage2<C::XSLOT, XR>(xraw, xrowp, nxw, 0, C::XSTEP, lane);
    cp_async_commit();
    if constexpr (WT == W_IQ2) {
        // decode tables (while the first steps land; blocks past the last tile never get
        // here): word e·32 + c holds entry e (copy c); warp-uniform e, one store per lane
        uint32_t *tab = (uint32_t *)sm;
        for (int e = warp; e < 384; e += kThreads / 32) tab[e * 32 + lane] = e < 256 ? P.codes[e] : P.ssp[e - 256];
    }
    // prologue: weight steps 0 and 1 and activation step 0 landed; step 0 into tile buffer 0
    cp_async_wait<0>();
    __syncwarp();
    decode3_x<WT, MT, NT>(sm + C::O_T0, xraw, s_xrow, 0, warp, lane);
    __syncthreads();  // tile buffer 0 and the IQ2_XXS tables visible; the raw activation slots are free

    const int g = lane >> 2;
    const uint32_t wlo = (uint32_t)(uintptr_t)wbase, rbl = (uint32_t)P.row_bytes;
    const int nv = min(NT, (ntok + 7) >> 3);  // n8 tiles with tokens (block-uniform, >= 1)
    const bool rows = wr0 < nrow;             // the warp has weight rows (warp-uniform)
    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[mt][nt][i] = 0.0f;

#pragma unroll 1
    for (int s = 0; s < P.nks; s++) {
        // activation step s+1 into the raw slots (decoded at the end of this phase), weight
        // step s+2 into the buffer of step s-1 (this warp's reads of it ended before the
        // previous barrier); two groups, so the wait below can leave W(s+2) in flight
        if (s + 1 < P.nks) stage2<C::XSLOT, XR>(xraw, xrowp, nxw, (uint32_t)(s + 1) * C::XSTEP, C::XSTEP, lane);
        cp_async_commit();
        if (s + 2 < P.nks) stage_w(s + 2);
        cp_async_commit();
        if (rows) {
            // buffer of step s: landed (waited in phase s-1 / the prologue)
            const uint32_t wb = smem_u32(wraw) + (uint32_t)((s % C::NWB) * C::WBUF);
            const uint32_t so = (uint32_t)s * C::WSTEP;
            uint32_t rp[MT][2];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int r = 16 * mt + g + 8 * h;
                    rp[mt][h] = wb + (uint32_t)(r * C::WSLOT) + ((wlo + (uint32_t)(wr0 + r) * rbl + so) & 15u);
                }
            const uint8_t *tb = sm + C::O_T0 + (s & 1) * C::TBYTES;
            if (nv == NT)
                mma3<WT, MT, NT, true>(sm, tb, rp, acc, lane, nv);
            else
                mma3<WT, MT, NT, false>(sm, tb, rp, acc, lane, nv);
        }
        if (s + 1 < P.nks) {
            cp_async_wait<1>();  // all but W(s+2): X(s+1) and W(s+1) landed
            __syncwarp();
            decode3_x<WT, MT, NT>(sm + C::O_T0 + ((s + 1) & 1) * C::TBYTES, xraw, s_xrow, s + 1, warp, lane);
            __syncthreads();  // step s+1's tile visible; step s's tile free
        }
    }
    cp_async_wait<0>();

    const int tig = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int r = wr0 + mt * 16 + g + 8 * (i >> 1);
                const int t = nt * 8 + 2 * tig + (i & 1);
                if (r < nrow && t < ntok) P.y[(int64_t)(tok0 + t) * P.ys + row0 + r] = acc[mt][nt][i];
            }
}

// ---- host side -------------------------------------------------------------------------------

typedef void (*KernelFn)(Params);

template <int WT>
KernelFn pick_nt(int nt, int *smem) {
    switch (nt) {
    case 1: *smem = Lay<WT, 1>::BYTES; return mmq_kernel<WT, 1>;
    case 2: *smem = Lay<WT, 2>::BYTES; return mmq_kernel<WT, 2>;
    default: *smem = Lay<WT, 4>::BYTES; return mmq_kernel<WT, 4>;
    }
}

KernelFn pick_kernel(int wt, int nt, int *smem) {
    switch (wt) {
    case W_Q8_0: return pick_nt<W_Q8_0>(nt, smem);
    case W_Q2_K: return pick_nt<W_Q2_K>(nt, smem);
    case W_Q4_K: return pick_nt<W_Q4_K>(nt, smem);
    default: return pick_nt<W_IQ2>(nt, smem);
    }
}

// v2 kernels: BN 128 (Q8_0 only: warp tile 64 x 32), 64 (32 x 32), 32 (32 x 16).
template <int WT>
KernelFn pick_bn2(int bn, int *smem) {
    if constexpr (WT == W_Q8_0) {
        if (bn == 128) {
            *smem = Cfg2<WT, 4, 4>::BYTES;
            return mmq2_kernel<WT, 4, 4>;
        }
    }
    if (bn >= 64) {
        *smem = Cfg2<WT, 2, 4>::BYTES;
        return mmq2_kernel<WT, 2, 4>;
    }
    *smem = Cfg2<WT, 2, 2>::BYTES;
    return mmq2_kernel<WT, 2, 2>;
}

KernelFn pick_kernel2(int wt, int bn, int *smem) {
    switch (wt) {
    case W_Q8_0: return pick_bn2<W_Q8_0>(bn, smem);
    case W_Q2_K: return pick_bn2<W_Q2_K>(bn, smem);
    case W_Q4_K: return pick_bn2<W_Q4_K>(bn, smem);
    default: return pick_bn2<W_IQ2>(bn, smem);
    }
}

// v3 kernels (IQ2_XXS, Q2_K): BN 64 or 32, 128·kMT3 weight rows per block.
template <int WT>
KernelFn pick_bn3(int bn, int *smem) {
    if (bn >= 64) {
        *smem = Cfg3<WT, kMT3, 8>::BYTES;
        return mmq3_kernel<WT, kMT3, 8>;
    }
    *smem = Cfg3<WT, kMT3, 4>::BYTES;
    return mmq3_kernel<WT, kMT3, 4>;
}

KernelFn pick_kernel3(int wt, int bn, int *smem) {
    return wt == W_IQ2 ? pick_bn3<W_IQ2>(bn, smem) : pick_bn3<W_Q2_K>(bn, smem);
}

int wtype_of(uint32_t type) {
    switch (type) {
    case DS4_TYPE_Q8_0: return W_Q8_0;
    case DS4_TYPE_Q2_K: return W_Q2_K;
    case DS4_TYPE_Q4_K: return W_Q4_K;
    case DS4_TYPE_IQ2_XXS: return W_IQ2;
    default: return -1;
    }
}

std::mutex g_mu;

// IQ2_XXS decode tables derived from src/model/iq2_tables.c (never retyped): grid bytes
// {8, 25, 43} as codes {0, 1, 2} in nibble j, sign bit j as bit 2 of nibble j, so that one
// prmt over the byte table {8, 25, 43, 0, -8, -25, -43, 0} yields four signed weights.
// They travel in the kernel parameters (no constant-memory upload: capture-safe).
struct Iq2Host {
    bool init, ok;
    uint32_t codes[256], ssp[128];
};
Iq2Host g_iq2;

const Iq2Host *iq2_tables_host() {
    std::lock_guard<std::mutex> lk(g_mu);
    if (!g_iq2.init) {
        g_iq2.ok = true;
        for (int i = 0; i < 256; i++) {
            g_iq2.codes[i] = 0;
            for (int j = 0; j < 8; j++) {
                const unsigned m = (unsigned)(ds4_iq2xxs_grid[i] >> (8 * j)) & 255u;
                const unsigned code = m == 8 ? 0 : m == 25 ? 1 : m == 43 ? 2 : 3;
                if (code == 3) g_iq2.ok = false;
                g_iq2.codes[i] |= code << (4 * j);
            }
        }
        for (int i = 0; i < 128; i++) {
            g_iq2.ssp[i] = 0;
            for (int j = 0; j < 8; j++)
                if ((ds4_iq2_ksigns[i] >> j) & 1) g_iq2.ssp[i] |= 4u << (4 * j);
        }
        g_iq2.init = true;
    }
    return &g_iq2;
}

// The dynamic shared-memory limit is raised once per (kernel, device).
struct AttrEntry {
    KernelFn fn;
    int dev;
};
constexpr int kAttrCache = 64;
AttrEntry g_attr[kAttrCache];
int g_attr_n;

int prepare_kernel(KernelFn fn, int smem, char *err, size_t errlen) {
    int dev = 0;
    DS4_CUDA_TRY(cudaGetDevice(&dev));
    std::lock_guard<std::mutex> lk(g_mu);
    for (int i = 0; i < g_attr_n; i++)
        if (g_attr[i].fn == fn && g_attr[i].dev == dev) return 0;
    int optin = 0;
    DS4_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    cudaFuncAttributes fa;
    DS4_CUDA_TRY(cudaFuncGetAttributes(&fa, (const void *)fn));
    if (smem + (int)fa.sharedSizeBytes > optin)
        return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "mmq: %d bytes of shared memory per block (device max %d)",
                       smem + (int)fa.sharedSizeBytes, optin);
    DS4_CUDA_TRY(cudaFuncSetAttribute((const void *)fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    if (g_attr_n < kAttrCache) g_attr[g_attr_n++] = AttrEntry{fn, dev};
    return 0;
}

// Activation rows per tile: 64 when problems are large enough to fill them, else smaller
// (results are bit-identical for every choice). DS4_MMQ_BN=16|32|64 forces one (tests,
// benchmarks).
int pick_nt(int64_t rows_per_problem) {
    const char *e = getenv("DS4_MMQ_BN");
    if (e) {
        const int v = atoi(e);
        if (v == 16 || v == 32 || v == 64) return v / 16;
    }
    return rows_per_problem >= 48 ? 4 : rows_per_problem >= 20 ? 2 : 1;
}

// v2 token tile: the largest of 128 (Q8_0) / 64 / 32 whose tiles are at least 3/4 filled on
// average and that still gives ~a block per SM (one block per SM runs at a time); else 32.
// Results are bit-identical for every choice. DS4_MMQ_BN=32|64|128 forces one (16 -> 32,
// 128 -> 64 for the K-quants).
int choose_bn2(int wt, int64_t per_prob, int64_t n_prob, int64_t n_rt, int n_sm) {
    const int top = wt == W_Q8_0 ? 128 : 64;
    const char *e = getenv("DS4_MMQ_BN");
    if (e) {
        const int v = atoi(e);
        if (v == 16 || v == 32) return 32;
        if (v == 64 || v == 128) return v < top ? v : top;
    }
    for (int bn = top; bn > 32; bn /= 2)
        if (per_prob >= bn * 3 / 4 && n_rt * n_prob * ((per_prob + bn - 1) / bn) * 10 >= (int64_t)n_sm * 9) return bn;
    return 32;
}

// v3 token tile: 64 when problems fill it at least 3/4 on average, else 32 (bit-identical
// either way). DS4_MMQ_BN=16|32 forces 32, 64|128 forces 64.
int choose_bn3(int64_t per_prob) {
    const char *e = getenv("DS4_MMQ_BN");
    if (e) {
        const int v = atoi(e);
        if (v == 16 || v == 32) return 32;
        if (v == 64 || v == 128) return 64;
    }
    return per_prob >= 48 ? 64 : 32;
}

// Kernel variant: 0 = per weight type (default), or 1 / 2 / 3 for all (DS4_MMQ_V=1|2|3; v3
// exists for IQ2_XXS and Q2_K, the other types then run v2), read once; tests switch it with
// ds4_cuda_mmq_set_variant (declared by tests/cuda/test_mmq.cu only, not part of the API).
int g_variant = -1;

// 0 = per weight type (the default): measured on an H200 (bench/RESULTS.md, cuda-test-mmq
// --bench, routed q2 layer of 12288 rows): v3 for IQ2_XXS (gate/up 1.54 vs v1 1.92 ms) and
// Q2_K (down 1.40 vs v2 BN 32 1.71 ms), v2 for Q8_0 (+10-15 % over v1), v1 for Q4_K.
int mmq_variant() {
    std::lock_guard<std::mutex> lk(g_mu);
    if (g_variant < 0) {
        const char *e = getenv("DS4_MMQ_V");
        const int v = e ? atoi(e) : 0;
        g_variant = v >= 1 && v <= 3 ? v : 0;
    }
    return g_variant;
}

}  // namespace

extern "C" int ds4_cuda_mmq_supported(uint32_t type, int64_t k) {
    const int wt = wtype_of(type);
    if (wt < 0 || k < 1 || k > (1 << 24)) return 0;
    return k % (wt == W_Q8_0 ? 32 : 256) == 0;
}

extern "C" int ds4_cuda_mmq(const ds4_cuda_qmat *w, const void *xq, uint64_t xq_stride, const ds4_cuda_mmq_groups *groups,
                            int n_rows, float *y, int64_t ys, struct CUstream_st *stream, char *err, size_t errlen) {
    if (!w) return ds4_err(err, errlen, DS4_ERR_ARG, "mmq: NULL weight descriptor");
    const int wt = wtype_of(w->type);
    if (wt < 0 || !ds4_cuda_mmq_supported(w->type, w->k))
        return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "mmq: %s with k=%lld not supported", ds4_type_name(w->type),
                       (long long)w->k);
    if (w->n < 1 || w->n > INT32_MAX - kBM)
        return ds4_err(err, errlen, DS4_ERR_ARG, "mmq: bad row count n=%lld", (long long)w->n);
    if (!w->data || (uintptr_t)w->data % 2)
        return ds4_err(err, errlen, DS4_ERR_ARG, "mmq: weight data NULL or not 2-byte aligned");
    const uint64_t rb = ds4_type_get(w->type)->block_bytes * (uint64_t)(w->k / ds4_type_get(w->type)->block_elems);
    if (w->n_mats < 1) return ds4_err(err, errlen, DS4_ERR_ARG, "mmq: n_mats %d < 1", (int)w->n_mats);
    if (w->n_mats > 1 && (w->mat_stride < (uint64_t)w->n * rb || w->mat_stride % 2))
        return ds4_err(err, errlen, DS4_ERR_ARG, "mmq: mat_stride %llu < n*row_bytes or odd", (unsigned long long)w->mat_stride);
    const uint32_t at = ds4_vec_dot_type(w->type);
    uint64_t arb = 0;
    if (!ds4_type_row_bytes(at, (uint64_t)w->k, &arb)) return ds4_err(err, errlen, DS4_ERR_ARG, "mmq: bad k");
    const unsigned xa = at == DS4_TYPE_Q8_K ? 4u : 2u;  // natural alignment of the blocks' fields
    if (!xq || (uintptr_t)xq % xa || xq_stride % xa)
        return ds4_err(err, errlen, DS4_ERR_ARG, "mmq: activations NULL or not %u-byte aligned", xa);
    if (xq_stride != 0 && xq_stride < arb)
        return ds4_err(err, errlen, DS4_ERR_ARG, "mmq: xq_stride %llu < row bytes %llu", (unsigned long long)xq_stride,
                       (unsigned long long)arb);
    if (!y || (uintptr_t)y % 4 || ys < w->n)
        return ds4_err(err, errlen, DS4_ERR_ARG, "mmq: y NULL, misaligned, or ys %lld < n %lld", (long long)ys,
                       (long long)w->n);
    int64_t per_prob;
    if (groups) {
        if (!groups->off || groups->n_prob < 1 || groups->max_rows < 0)
            return ds4_err(err, errlen, DS4_ERR_ARG, "mmq: groups need off, n_prob >= 1 and max_rows >= 0");
        if (groups->max_rows == 0) return 0;
        per_prob = groups->max_rows / groups->n_prob;
    } else {
        if (n_rows < 0) return ds4_err(err, errlen, DS4_ERR_ARG, "mmq: n_rows %d < 0", n_rows);
        if (n_rows == 0) return 0;
        per_prob = n_rows;
    }

    int variant = mmq_variant();
    const bool per_type = variant == 0;
    if (per_type) variant = wt == W_IQ2 || wt == W_Q2_K ? 3 : wt == W_Q4_K ? 1 : 2;
    if (variant == 3 && wt != W_IQ2 && wt != W_Q2_K) variant = 2;
    const int64_t n_rt64 = (w->n + kBM - 1) / kBM;
    const int bm = variant == 3 ? 128 * kMT3 : kBM;  // weight rows per block
    int bn, smem = 0;
    KernelFn fn;
    if (variant == 3) {
        bn = choose_bn3(per_prob);
        fn = pick_kernel3(wt, bn, &smem);
    } else if (variant == 1) {
        const int nt = pick_nt(per_prob);
        bn = 16 * nt;
        fn = pick_kernel(wt, nt, &smem);
    } else {
        int dev = 0, n_sm = 0;
        DS4_CUDA_TRY(cudaGetDevice(&dev));
        DS4_CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
        bn = choose_bn2(wt, per_prob, groups ? groups->n_prob : 1, n_rt64, n_sm);
        fn = pick_kernel2(wt, bn, &smem);
    }
    Params P;
    memset(&P, 0, sizeof P);
    if (wt == W_IQ2) {
        const Iq2Host *t = iq2_tables_host();
        if (!t->ok) return ds4_err(err, errlen, DS4_ERR_FORMAT, "mmq: IQ2_XXS grid holds a value outside {8, 25, 43}");
        memcpy(P.codes, t->codes, sizeof P.codes);
        memcpy(P.ssp, t->ssp, sizeof P.ssp);
    }
    P.w = (const uint8_t *)w->data;
    P.mat_stride = w->n_mats > 1 ? w->mat_stride : 0;
    P.row_bytes = rb;
    P.x = (const uint8_t *)xq;
    P.x_stride = xq_stride;
    P.y = y;
    P.ys = ys;
    P.n = (int)w->n;
    P.n_mats = w->n_mats;
    P.nb = (int)(w->k / ds4_type_get(w->type)->block_elems);
    P.nks = wt == W_Q8_0 ? (P.nb + 7) / 8 : P.nb;
    P.n_rt = (int)((w->n + bm - 1) / bm);
    int64_t n_tt;
    if (groups) {
        P.grouped = 1;
        P.off = groups->off;
        P.mat = groups->mat;
        P.x_idx = groups->x_idx;
        P.n_prob = groups->n_prob;
        P.max_rows = groups->max_rows;
        n_tt = (int64_t)groups->max_rows / bn + groups->n_prob;  // >= Σ ceil(count/BN)
    } else {
        P.n_rows = n_rows;
        n_tt = (n_rows + bn - 1) / bn;
    }
    const int64_t blocks = (int64_t)P.n_rt * n_tt;
    if (n_tt > (INT32_MAX / kRaster) || blocks > INT32_MAX)
        return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "mmq: %lld blocks in one launch", (long long)blocks);
    P.n_tt = (int)n_tt;
    int rc = prepare_kernel(fn, smem, err, errlen);
    if (rc) return rc;
    DS4_CUDA_TRY(ds4cu::launch(fn, dim3((unsigned)blocks), dim3(kThreads), (size_t)smem, (cudaStream_t)stream, P));
    return 0;
}

extern "C" int ds4_cuda_mmq_set_variant(int v) {
    const int cur = mmq_variant();
    if (v < 0 || v > 3) return cur;  // 0: per weight type
    std::lock_guard<std::mutex> lk(g_mu);
    g_variant = v;
    return v;
}
