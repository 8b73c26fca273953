// matvec.cu — quantized matrix-vector products on the GPU (the decode hot path).
//
// Owns: y = W·x for GGML-layout weight rows (F32, F16, Q8_0, Q2_K, Q4_K, IQ2_XXS): one
// matrix, an id-selected set of matrices of a stack, or a list of such entries sharing x
// per launch, with activations either exact f32 or quantized to Q8_0 / Q8_K exactly like
// ds4_quantize_act_row (optionally made in the prologue as swiglu(g, u)·w); and the
// stand-alone activation quantizer. Must not: allocate device memory, synchronize,
// repack weights, or know tensor roles (see cuda_matvec.h for the contract).
//
// Design (the numbers are in bench/RESULTS.md):
//  * Bandwidth first. A warp owns a "tile": R whole consecutive rows (R a power of two,
//    R·row_bytes <= the kind's tile size) or one chunk of a long row (R = 1). Tiles are streamed
//    global -> shared memory with 16-byte cp.async (coalesced, a tile's bytes are
//    contiguous), double-buffered per warp, so each warp keeps the next tile in
//    flight while it decodes the current one. The grid is persistent (about as many
//    blocks as fit on the GPU); warps stride over tiles. Misaligned inputs fall back to
//    byte-wise staging through the same buffers (slow, correct).
//  * Lane mapping: lane -> (row r = lane mod R, unit lane/R + i·32/R). A "unit" is the
//    slice of a block one lane decodes (Q8_0: a block; Q4_K, IQ2_XXS: 32 elements;
//    Q2_K: 64; F16: 8; F32: 4). Each lane keeps one accumulator; rows are reduced with
//    xor shuffles at the end of the tile. The R rows of a tile read the same activation
//    words, which become shared-memory broadcasts.
//  * Activations live in shared memory for the whole kernel, in a split layout (int8
//    quants 16-byte aligned, f32 scales, int32 16-element sums), built once per block:
//    quantized in the kernel (ACT_QUANT), converted from GGML blocks (pre-quantized), or
//    copied (f32).
//  * Matrix lists: work items (row groups) are numbered entry by entry; each entry keeps
//    the tile geometry it would have alone (rows per tile from its row count; chunking
//    from type, k and alignment, which a launch's entries share), so a list launch and
//    one launch per matrix give the same bits — only the launches and the activation
//    prologues are saved.
//  * One x per selection (o_a's groups, the routed down projections, token batches):
//    each block owns a contiguous range of items and builds only the activation vectors
//    of the selections in it (one or two instead of all of them). The launcher bounds a
//    range's span by the vectors that fit in shared memory (many tiny matrices, each with
//    its own x, get shorter ranges and more blocks).
//  * Programmatic dependent launch (common.cuh): the kernels start while the previous
//    kernel of the stream finishes; only weight / constant reads (the first tile when no
//    ids pick its matrix, the IQ2_XXS tables) come before pdl_wait().
//  * IQ2_XXS needs two table lookups per 8 weights; its decoders are selectable (see
//    ds4_cuda_matvec_set_iq2_variant) because shared-memory bank conflicts on those
//    lookups, not DRAM, bound it.
#include <cstring>
#include <mutex>

#include "backend/cuda/act_quant.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_matvec.h"

extern "C" {
#include "model/ggml_type.h"
#include "model/iq2_tables.h"
#include "model/quant.h"
}

using namespace ds4cu;

namespace {

// ---- geometry ------------------------------------------------------------------------

// Bytes of weights one warp stages at once. A buffer is the tile + 16 bytes of pad
// (decoders read up to 4 bytes past a block); each warp has two. Measured on an H200
// (bench/RESULTS.md): halving the tile for the ALU-bound kinds (Q2_K, Q4_K, IQ2_XXS) to
// fit more warps per SM made them 10-20% slower, so every kind uses the same size.
constexpr int kTileMax = 4608;
constexpr int kTilePad = 16;
constexpr int kMaxSel = 64;                    // matrices per batched launch
constexpr int kMaxThreads = 512;
constexpr int kStaticSmem = 1024;              // bound on the kernels' static shared memory (s_ids)

// Weight kinds the kernels are instantiated for. F16/F32 have two: 16-byte units
// (k % 8 / k % 4 == 0, every real shape) and single elements (any k).
enum WKind { WK_F32 = 0, WK_F16, WK_Q8_0, WK_Q2_K, WK_Q4_K, WK_IQ2_XXS, WK_F32_1, WK_F16_1, WK_COUNT };

struct WGeom {
    int be;  // elements per block
    int bb;  // bytes per block
    int ue;  // elements per lane unit
};
constexpr WGeom kGeom[WK_COUNT] = {
    {1, 4, 4}, {1, 2, 8}, {32, 34, 32}, {256, 84, 64}, {256, 144, 32}, {256, 66, 32}, {1, 4, 1}, {1, 2, 1},
};

// Activation sources for the block prologue. SRC_SWIGLU: the vector is computed from
// two f32 vectors as the backend's swiglu op (the routed experts' down projection).
enum ActSrc { SRC_F32 = 0, SRC_QUANT = 1, SRC_PREQ = 2, SRC_SWIGLU = 3 };

constexpr int kMaxEntries = 16;  // matrix-list entries per launch (DS4_CUDA_MV_MAX_ENTRIES)

// One entry of the matrix list: n_sel matrices of one stack. Work items (row groups) are
// numbered entry by entry; selections too (gsel = sel0 + e indexes the shared-memory
// matrix list and, with one x per selection, the activation vectors).
struct MvEntry {
    const uint8_t *w;     // matrix 0, row 0
    uint64_t mat_stride;  // bytes between matrices (0: one matrix)
    const int32_t *ids;   // [n_sel] device, or NULL (matrix e)
    float *y;             // [n_sel][n]
    int n_mats, n_sel;
    int n;                // rows per matrix
    int log2R;            // rows per tile R = 1 << log2R (the single-matrix rule for n)
    uint32_t n_rg;        // row groups per matrix = ceil(n / R)
    uint32_t item0;       // first work item of this entry
    int sel0;             // first selection of this entry
};

struct MvParams {
    MvEntry e[kMaxEntries];
    int n_ent;
    int n_sel;               // selections over all entries (<= kMaxSel)
    uint32_t n_items;        // row groups over all entries (< 2^31)
    uint64_t row_bytes;      // bytes of one row (every entry: same type and k)
    int64_t k;
    int nch;                 // chunks per row (R == 1 when > 1)
    int chunk_units;         // units in a full chunk
    int units_row;           // units in a row
    uint32_t chunk_bytes;    // bytes in a full chunk
    int fast;                // cp.async staging allowed (every entry 16-byte aligned)
    const uint8_t *x;        // activation base (f32 or GGML blocks; SRC_SWIGLU: gate values)
    uint64_t x_stride;       // bytes between activation vectors
    int n_x;                 // distinct activation vectors (1, or n_sel with one entry)
    int act_src;             // ActSrc
    const uint8_t *xu;       // SRC_SWIGLU: up values, same layout as x
    const float *xw;         // SRC_SWIGLU: scale per vector [n_x], or NULL (1)
    float limit;             // SRC_SWIGLU: clamp
    uint32_t ipb;            // > 0: block b owns items [b·ipb, (b+1)·ipb) and loads only
                             // their activation vectors; 0: warps stride over all items
    uint32_t off_x;          // smem: activation vectors
    uint32_t xs_bytes;       // smem bytes per activation vector
    uint32_t xs_off_d;       // within a vector: f32 scales
    uint32_t xs_off_bs;      // within a vector: int32 16-element sums (Q8_K)
    uint32_t off_tiles;      // smem: per-warp double buffers
    uint32_t tile_buf;       // bytes of one buffer (tile + pad, multiple of 16)
};

// Shared-memory view of one activation vector.
struct XV {
    const int8_t *q;   // quantized values [k]
    const float *d;    // block scales (Q8_0: f16-rounded, as stored; Q8_K: f32)
    const int *bs;     // Q8_K sums of 16 quants [k/16]
    const float *f;    // f32 values [k] (exact mode / float weights)
};

// ---- IQ2_XXS tables ----------------------------------------------------------------------
// Source: src/model/iq2_tables.c (uploaded by ds4_cuda_matvec_init, never retyped here).
// c_codes / c_ssp are derived from it on the host: grid bytes {8, 25, 43} as 2-bit codes
// in nibbles, and sign bits moved to bit 2 of the same nibbles, so that one prmt with
// the byte table {8, 25, 43, 0, -8, -25, -43, 0} yields four signed weights.
__constant__ uint64_t c_grid[256];
__constant__ uint8_t c_ksigns[128];
__constant__ uint32_t c_codes[256];
__constant__ uint32_t c_ssp[128];

constexpr uint32_t kIq2PosBytes = 0x002B1908u;  // 8, 25, 43, 0
constexpr uint32_t kIq2NegBytes = 0x00D5E7F8u;  // -8, -25, -43, 0

template <int IQV> struct Iq2Tab;
template <> struct Iq2Tab<0> { static constexpr int bytes = 2048 + 128; };
template <> struct Iq2Tab<1> { static constexpr int copies = 8; static constexpr int bytes = 1536 * 8; };
template <> struct Iq2Tab<2> { static constexpr int copies = 32; static constexpr int bytes = 1536 * 32; };

int iq2_tab_bytes(int iqv) {
    return iqv == 0 ? Iq2Tab<0>::bytes : iqv == 1 ? Iq2Tab<1>::bytes : Iq2Tab<2>::bytes;
}

template <int IQV>
__device__ void iq2_tables_to_smem(uint8_t *tab, int tid, int nthr) {
    if constexpr (IQV == 0) {
        uint64_t *g = (uint64_t *)tab;
        for (int i = tid; i < 256; i += nthr) g[i] = c_grid[i];
        for (int i = tid; i < 128; i += nthr) tab[2048 + i] = c_ksigns[i];
    } else {
        // Copy c of entry i at word i*C + c: lane l reads copy l % C, so lanes that
        // share a copy are 32/C apart and only they can conflict on a bank.
        constexpr int C = Iq2Tab<IQV>::copies;
        uint32_t *codes = (uint32_t *)tab, *ssp = codes + 256 * C;
        for (int i = tid; i < 256 * C; i += nthr) codes[i] = c_codes[i / C];
        for (int i = tid; i < 128 * C; i += nthr) ssp[i] = c_ssp[i / C];
    }
}

// The 32 signed weights of one IQ2_XXS group as 8 words of int8 (element order).
// (a0: four grid indices; a1: four 7-bit sign indices and the 4-bit scale.)
template <int IQV>
__device__ __forceinline__ void iq2_group_weights(uint32_t a0, uint32_t a1, const uint8_t *tab, int lane,
                                                  uint32_t w[8]) {
    if constexpr (IQV == 0) {
        const uint2 *grid = (const uint2 *)tab;
        const uint8_t *ks = tab + 2048;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint2 g = grid[(a0 >> (8 * k)) & 255u];
            const uint32_t s = ks[(a1 >> (7 * k)) & 127u];
            // Sign bit j moved to bit 7 of byte j, then replicated over the byte.
            const uint32_t m0 = prmt((s & 15u) * 0x10204080u, 0u, 0xBA98u);
            const uint32_t m1 = prmt((s >> 4) * 0x10204080u, 0u, 0xBA98u);
            // -m == (m ^ 0xFF) + 1 per byte; magnitudes <= 43 so no carry crosses bytes.
            w[2 * k] = (g.x ^ m0) + (m0 & 0x01010101u);
            w[2 * k + 1] = (g.y ^ m1) + (m1 & 0x01010101u);
        }
    } else {
        // Byte offsets: entry i of this lane's copy is at i * 4C.
        constexpr int C = Iq2Tab<IQV>::copies;
        const uint8_t *codes = tab + 4 * (lane & (C - 1));
        const uint8_t *ssp = tab + 1024 * C + 4 * (lane & (C - 1));
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t oc = ((a0 >> (8 * k)) & 255u) * (4u * C);
            const uint32_t os = ((a1 >> (7 * k)) & 127u) * (4u * C);
            const uint32_t sel = *(const uint32_t *)(codes + oc) | *(const uint32_t *)(ssp + os);
            w[2 * k] = prmt(kIq2PosBytes, kIq2NegBytes, sel);
            w[2 * k + 1] = prmt(kIq2PosBytes, kIq2NegBytes, sel >> 16);
        }
    }
}

// ---- small decode helpers -------------------------------------------------------------

__device__ __forceinline__ float sbyte(uint32_t w, int j) { return (float)(int8_t)(w >> (8 * j)); }

__device__ __forceinline__ float dot4f(uint32_t w, float4 x) {
    return sbyte(w, 0) * x.x + sbyte(w, 1) * x.y + sbyte(w, 2) * x.z + sbyte(w, 3) * x.w;
}

// 8 words of a Q8_0 block's quants (p: block start, 2-byte aligned, shared memory with
// at least 4 readable bytes past the block) and its f16 scale.
__device__ __forceinline__ void q8_0_words(const uint8_t *p, uint32_t q[8], float *d) {
    *d = f16_bits_to_f32(*(const uint16_t *)p);
    // Pointer arithmetic on p (not an integer round trip) keeps the shared-memory
    // address space visible to the compiler: LDS, not generic loads.
    const uint32_t mis = (uint32_t)(uintptr_t)(p + 2) & 3u;
    const uint32_t *v = (const uint32_t *)(p + 2 - mis);
    const uint32_t sh = mis * 8;
    uint32_t t[9];
#pragma unroll
    for (int i = 0; i < 9; i++) t[i] = v[i];
#pragma unroll
    for (int i = 0; i < 8; i++) q[i] = fshr(t[i], t[i + 1], sh);
}

// The two u32 of IQ2_XXS group g (block start p, 2-byte aligned).
__device__ __forceinline__ void iq2_group_words(const uint8_t *p, int g, uint32_t *a0, uint32_t *a1) {
    const uint8_t *a = p + 2 + 8 * g;
    const uint32_t mis = (uint32_t)(uintptr_t)a & 3u;
    const uint32_t *v = (const uint32_t *)(a - mis);
    const uint32_t sh = mis * 8;
    const uint32_t t0 = v[0], t1 = v[1], t2 = v[2];
    *a0 = fshr(t0, t1, sh);
    *a1 = fshr(t1, t2, sh);
}

// ---- per-kind unit dot products ----------------------------------------------------------
// row: the tile row (or chunk) in shared memory; u: unit index within it; ug: unit index
// within the whole row (selects activations).

template <int WK, bool XQ, int IQV>
__device__ __forceinline__ float unit_dot(const uint8_t *row, int u, int ug, const XV &x, const uint8_t *tab,
                                          int lane) {
    if constexpr (WK == WK_Q8_0) {
        uint32_t q[8];
        float dw;
        q8_0_words(row + 34 * u, q, &dw);
        if constexpr (XQ) {
            const int4 *xq = (const int4 *)(x.q + 32 * ug);
            const int4 x0 = xq[0], x1 = xq[1];
            int s = dp4a(q[0], x0.x, 0);
            s = dp4a(q[1], x0.y, s);
            s = dp4a(q[2], x0.z, s);
            s = dp4a(q[3], x0.w, s);
            s = dp4a(q[4], x1.x, s);
            s = dp4a(q[5], x1.y, s);
            s = dp4a(q[6], x1.z, s);
            s = dp4a(q[7], x1.w, s);
            return (float)s * (dw * x.d[ug]);
        } else {
            const float4 *xf = (const float4 *)(x.f + 32 * ug);
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++) s += dot4f(q[i], xf[i]);
            return s * dw;
        }
    } else if constexpr (WK == WK_Q2_K) {
        const int b = u >> 2, h = (u >> 1) & 1, t = u & 1, bg = ug >> 2;
        const uint8_t *p = row + 84 * b;
        const uint32_t *qw = (const uint32_t *)(p + 16 + 32 * h + 16 * t);
        const uint32_t q0 = qw[0], q1 = qw[1], q2 = qw[2], q3 = qw[3];
        const uint32_t dd = *(const uint32_t *)(p + 80);
        const float d = f16_bits_to_f32((uint16_t)dd), dmin = f16_bits_to_f32((uint16_t)(dd >> 16));
        const uint8_t *sc = p + 8 * h + t;  // scales[8h + 2j + t]
        const int e0 = 256 * bg + 128 * h + 16 * t;
        if constexpr (XQ) {
            const int *bs = x.bs + 16 * bg + 8 * h + t;
            int isum = 0, msum = 0;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int4 xv = *(const int4 *)(x.q + e0 + 32 * j);
                int s = dp4a((q0 >> (2 * j)) & 0x03030303u, xv.x, 0);
                s = dp4a((q1 >> (2 * j)) & 0x03030303u, xv.y, s);
                s = dp4a((q2 >> (2 * j)) & 0x03030303u, xv.z, s);
                s = dp4a((q3 >> (2 * j)) & 0x03030303u, xv.w, s);
                const int scb = sc[2 * j];
                isum += (scb & 15) * s;
                msum += (scb >> 4) * bs[2 * j];
            }
            return x.d[bg] * (d * (float)isum - dmin * (float)msum);
        } else {
            float acc = 0.0f;
            const uint32_t qv[4] = {q0, q1, q2, q3};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float4 *xf = (const float4 *)(x.f + e0 + 32 * j);
                float sqx = 0.0f, sx = 0.0f;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float4 xv = xf[i];
                    const uint32_t w = qv[i] >> (2 * j);
                    sqx += (float)(w & 3) * xv.x + (float)((w >> 8) & 3) * xv.y + (float)((w >> 16) & 3) * xv.z +
                           (float)((w >> 24) & 3) * xv.w;
                    sx += (xv.x + xv.y) + (xv.z + xv.w);
                }
                const int scb = sc[2 * j];
                acc += d * (float)(scb & 15) * sqx - dmin * (float)(scb >> 4) * sx;
            }
            return acc;
        }
    } else if constexpr (WK == WK_Q4_K) {
        const int b = u >> 3, g = (u >> 1) & 3, hf = u & 1, bg = ug >> 3;
        const uint8_t *p = row + 144 * b;
        const uint4 q = *(const uint4 *)(p + 16 + 32 * g + 16 * hf);
        const uint32_t dd = *(const uint32_t *)p;
        const float d = f16_bits_to_f32((uint16_t)dd), dmin = f16_bits_to_f32((uint16_t)(dd >> 16));
        // The eight 6-bit scales and mins as bytes of four words (MODEL.md §20.3 unpack,
        // done word-wide and branch-free), then the bytes of sub-blocks 2g and 2g+1.
        const uint32_t *sw = (const uint32_t *)(p + 4);
        const uint32_t w0 = sw[0], w1 = sw[1], w2 = sw[2];
        const uint32_t scw = g < 2 ? (w0 & 0x3f3f3f3fu) : ((w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u));
        const uint32_t mw = g < 2 ? (w1 & 0x3f3f3f3fu) : (((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u));
        const uint32_t shb = 16 * (g & 1);
        const int sc0 = (scw >> shb) & 255, sc1 = (scw >> (shb + 8)) & 255;
        const int m0 = (mw >> shb) & 255, m1 = (mw >> (shb + 8)) & 255;
        const int e0 = 256 * bg + 64 * g + 16 * hf;
        if constexpr (XQ) {
            const int4 xl = *(const int4 *)(x.q + e0), xh = *(const int4 *)(x.q + e0 + 32);
            int sl = dp4a(q.x & 0x0F0F0F0Fu, xl.x, 0);
            sl = dp4a(q.y & 0x0F0F0F0Fu, xl.y, sl);
            sl = dp4a(q.z & 0x0F0F0F0Fu, xl.z, sl);
            sl = dp4a(q.w & 0x0F0F0F0Fu, xl.w, sl);
            int sh = dp4a((q.x >> 4) & 0x0F0F0F0Fu, xh.x, 0);
            sh = dp4a((q.y >> 4) & 0x0F0F0F0Fu, xh.y, sh);
            sh = dp4a((q.z >> 4) & 0x0F0F0F0Fu, xh.z, sh);
            sh = dp4a((q.w >> 4) & 0x0F0F0F0Fu, xh.w, sh);
            const int bl = x.bs[(e0 >> 4)], bh = x.bs[(e0 >> 4) + 2];
            return x.d[bg] * (d * (float)(sc0 * sl + sc1 * sh) - dmin * (float)(m0 * bl + m1 * bh));
        } else {
            const float4 *xl = (const float4 *)(x.f + e0), *xh = (const float4 *)(x.f + e0 + 32);
            const uint32_t qv[4] = {q.x, q.y, q.z, q.w};
            float sl = 0.0f, sh = 0.0f, tl = 0.0f, th = 0.0f;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float4 a = xl[i], c = xh[i];
                const uint32_t w = qv[i];
                sl += (float)(w & 15) * a.x + (float)((w >> 8) & 15) * a.y + (float)((w >> 16) & 15) * a.z +
                      (float)((w >> 24) & 15) * a.w;
                sh += (float)((w >> 4) & 15) * c.x + (float)((w >> 12) & 15) * c.y + (float)((w >> 20) & 15) * c.z +
                      (float)((w >> 28) & 15) * c.w;
                tl += (a.x + a.y) + (a.z + a.w);
                th += (c.x + c.y) + (c.z + c.w);
            }
            return d * ((float)sc0 * sl + (float)sc1 * sh) - dmin * ((float)m0 * tl + (float)m1 * th);
        }
    } else if constexpr (WK == WK_IQ2_XXS) {
        const int b = u >> 3, g = u & 7, bg = ug >> 3;
        const uint8_t *p = row + 66 * b;
        const float d = f16_bits_to_f32(*(const uint16_t *)p);
        uint32_t a0, a1;
        iq2_group_words(p, g, &a0, &a1);
        uint32_t w[8];
        iq2_group_weights<IQV>(a0, a1, tab, lane, w);
        const float ls = (float)(2 * (a1 >> 28) + 1);
        if constexpr (XQ) {
            const int4 *xq = (const int4 *)(x.q + 256 * bg + 32 * g);
            const int4 x0 = xq[0], x1 = xq[1];
            int s = dp4a(w[0], x0.x, 0);
            s = dp4a(w[1], x0.y, s);
            s = dp4a(w[2], x0.z, s);
            s = dp4a(w[3], x0.w, s);
            s = dp4a(w[4], x1.x, s);
            s = dp4a(w[5], x1.y, s);
            s = dp4a(w[6], x1.z, s);
            s = dp4a(w[7], x1.w, s);
            return x.d[bg] * d * (ls * (float)s) * 0.125f;
        } else {
            const float4 *xf = (const float4 *)(x.f + 256 * bg + 32 * g);
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++) s += dot4f(w[i], xf[i]);
            return d * ls * 0.125f * s;
        }
    } else if constexpr (WK == WK_F16) {
        const uint4 hv = *(const uint4 *)(row + 16 * u);
        const float4 *xf = (const float4 *)(x.f + 8 * ug);
        const float4 x0 = xf[0], x1 = xf[1];
        const float2 a = __half22float2(*(const __half2 *)&hv.x), b = __half22float2(*(const __half2 *)&hv.y);
        const float2 c = __half22float2(*(const __half2 *)&hv.z), e = __half22float2(*(const __half2 *)&hv.w);
        return (a.x * x0.x + a.y * x0.y) + (b.x * x0.z + b.y * x0.w) + (c.x * x1.x + c.y * x1.y) +
               (e.x * x1.z + e.y * x1.w);
    } else if constexpr (WK == WK_F32) {
        const float4 wv = *(const float4 *)(row + 16 * u);
        const float4 xv = *(const float4 *)(x.f + 4 * ug);
        return (wv.x * xv.x + wv.y * xv.y) + (wv.z * xv.z + wv.w * xv.w);
    } else if constexpr (WK == WK_F16_1) {
        return f16_bits_to_f32(*(const uint16_t *)(row + 2 * u)) * x.f[ug];
    } else {  // WK_F32_1
        return *(const float *)(row + 4 * u) * x.f[ug];
    }
}

// ---- activation quantizers: q8_0_quant_lane / q8_k_quant_lane live in act_quant.cuh
// (shared with moe_prefill.cu); the fused prologue and the stand-alone kernels below store
// their results.

// ---- block prologue: activation vectors into shared memory --------------------------------

// Copies n 4-byte words global -> shared with 8 loads in flight per thread before any
// store (a plain strided loop would wait a full memory latency per iteration: the
// compiler cannot move a global load across a store through a generic pointer).
__device__ __forceinline__ void copy_words(uint32_t *dst, const uint32_t *src, int64_t n, int tid, int nthr) {
    for (int64_t base = tid; base < n; base += 8 * (int64_t)nthr) {
        uint32_t v[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int64_t i = base + (int64_t)j * nthr;
            v[j] = i < n ? src[i] : 0u;
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int64_t i = base + (int64_t)j * nthr;
            if (i < n) dst[i] = v[j];
        }
    }
}

// The backend's swiglu op on one element (cuda_backend.cu k_swiglu: the same f32
// operations, so a vector made here equals the one that op writes to memory).
__device__ __forceinline__ float swiglu_val(float g, float u, float limit, float scale) {
    const float gv = fminf(g, limit);
    const float uv = fminf(fmaxf(u, -limit), limit);
    const float silu = gv / (1.0f + expf(-gv));
    return __fmul_rn(__fmul_rn(silu, uv), scale);
}

// dst[i] = swiglu_val(g[i], u[i]) for i < n, loads batched as in copy_words.
__device__ __forceinline__ void swiglu_words(float *dst, const float *g, const float *u, float limit, float scale,
                                             int64_t n, int tid, int nthr) {
    for (int64_t base = tid; base < n; base += 8 * (int64_t)nthr) {
        float a[8], c[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int64_t i = base + (int64_t)j * nthr;
            a[j] = i < n ? g[i] : 0.0f;
            c[j] = i < n ? u[i] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int64_t i = base + (int64_t)j * nthr;
            if (i < n) dst[i] = swiglu_val(a[j], c[j], limit, scale);
        }
    }
}

// Builds the shared-memory activation vectors v0 .. v0+nv-1 (of P.n_x) into slots
// 0 .. nv-1. Every path issues its global loads in batches (several steps' loads before
// the first use): this prologue is a fixed cost of every launch, and x is usually a
// fresh output of the previous kernel. A vector's content depends only on its source
// values, never on which block builds it or with which others.
template <int WK, bool XQ>
__device__ void load_activations(const MvParams &P, uint8_t *xs_base, int v0, int nv, int tid, int nthr) {
    const int64_t k = P.k;
    const int warp = tid >> 5, lane = tid & 31, nwarps = nthr >> 5;
    const bool sw = P.act_src == SRC_SWIGLU;
    if constexpr (!XQ) {
        // f32 values (exact mode and float weights): SRC_F32 / SRC_PREQ are the same data.
        for (int v = 0; v < nv; v++) {
            const uint64_t off = (uint64_t)(v0 + v) * P.x_stride;
            float *dst = (float *)(xs_base + (uint64_t)v * P.xs_bytes);
            if (sw)
                swiglu_words(dst, (const float *)(P.x + off), (const float *)(P.xu + off), P.limit,
                             P.xw ? P.xw[v0 + v] : 1.0f, k, tid, nthr);
            else
                copy_words((uint32_t *)dst, (const uint32_t *)(P.x + off), k, tid, nthr);
        }
    } else if constexpr (WK == WK_Q8_0) {
        const int64_t nb = k / 32;
        if (P.act_src != SRC_PREQ) {
            // A warp quantizes 4 blocks (128 values) per step, 4 steps per batch.
            const int64_t steps = (nb + 3) / 4, total = (int64_t)nv * steps;
            for (int64_t st0 = warp; st0 < total; st0 += 4 * (int64_t)nwarps) {
                float vals[4][4], uv[4][4], sc[4];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int64_t st = st0 + (int64_t)j * nwarps;
                    const int v = (int)(st / steps);
                    const int64_t b = (st % steps) * 4 + (lane >> 3);
                    const bool ok = st < total && b < nb;
                    const uint64_t off = (uint64_t)(v0 + v) * P.x_stride + 4 * (uint64_t)(32 * b + 4 * (lane & 7));
                    const float *src = (const float *)(P.x + off);
#pragma unroll
                    for (int i = 0; i < 4; i++) vals[j][i] = ok ? src[i] : 0.0f;
                    if (sw) {
                        const float *usrc = (const float *)(P.xu + off);
#pragma unroll
                        for (int i = 0; i < 4; i++) uv[j][i] = ok ? usrc[i] : 0.0f;
                        sc[j] = ok && P.xw ? P.xw[v0 + v] : 1.0f;
                    }
                }
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int64_t st = st0 + (int64_t)j * nwarps;
                    if (st >= total) break;  // warp-uniform
                    const int v = (int)(st / steps);
                    const int64_t b = (st % steps) * 4 + (lane >> 3);
                    if (sw) {
#pragma unroll
                        for (int i = 0; i < 4; i++) vals[j][i] = swiglu_val(vals[j][i], uv[j][i], P.limit, sc[j]);
                    }
                    float d;
                    const uint32_t q = q8_0_quant_lane(vals[j], &d);
                    if (b < nb) {
                        uint8_t *xs = xs_base + (uint64_t)v * P.xs_bytes;
                        *(uint32_t *)(xs + 32 * b + 4 * (lane & 7)) = q;
                        // The dot product uses the scale as stored in a Q8_0 block: f16.
                        if ((lane & 7) == 0) ((float *)(xs + P.xs_off_d))[b] = __half2float(__float2half_rn(d));
                    }
                }
            }
        } else {  // SRC_PREQ: GGML Q8_0 blocks (34 bytes, 2-byte aligned), 17 u16 each
            const int64_t per = nb * 17, total = (int64_t)nv * per;
            for (int64_t base = tid; base < total; base += 8 * (int64_t)nthr) {
                uint16_t val[8];
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const int64_t i = base + (int64_t)j * nthr;
                    const int v = (int)(i / per);
                    const int64_t r = i % per;
                    val[j] = i < total ? *(const uint16_t *)(P.x + (uint64_t)(v0 + v) * P.x_stride + 2 * r) : (uint16_t)0;
                }
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const int64_t i = base + (int64_t)j * nthr;
                    if (i >= total) break;
                    const int v = (int)(i / per);
                    const int64_t r = i % per, b = r / 17, h = r % 17;
                    uint8_t *xs = xs_base + (uint64_t)v * P.xs_bytes;
                    if (h == 0)
                        ((float *)(xs + P.xs_off_d))[b] = f16_bits_to_f32(val[j]);
                    else
                        *(uint16_t *)(xs + 32 * b + 2 * (h - 1)) = val[j];
                }
            }
        }
    } else {  // Q8_K activations for Q2_K / Q4_K / IQ2_XXS
        const int64_t nb = k / 256;
        if (P.act_src != SRC_PREQ) {
            const int64_t total = (int64_t)nv * nb;  // one warp per block, 2 blocks per batch
            for (int64_t st0 = warp; st0 < total; st0 += 2 * (int64_t)nwarps) {
                float vals[2][8], uv[2][8], sc[2];
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    const int64_t st = st0 + (int64_t)j * nwarps;
                    const bool ok = st < total;
                    const int v = (int)(st / nb);
                    const int64_t b = st % nb;
                    const uint64_t off = (uint64_t)(v0 + v) * P.x_stride + 4 * (uint64_t)(256 * b + 8 * lane);
                    const float *src = (const float *)(P.x + off);
#pragma unroll
                    for (int i = 0; i < 8; i++) vals[j][i] = ok ? src[i] : 0.0f;
                    if (sw) {
                        const float *usrc = (const float *)(P.xu + off);
#pragma unroll
                        for (int i = 0; i < 8; i++) uv[j][i] = ok ? usrc[i] : 0.0f;
                        sc[j] = ok && P.xw ? P.xw[v0 + v] : 1.0f;
                    }
                }
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    const int64_t st = st0 + (int64_t)j * nwarps;
                    if (st >= total) break;  // warp-uniform
                    const int v = (int)(st / nb);
                    const int64_t b = st % nb;
                    if (sw) {
#pragma unroll
                        for (int i = 0; i < 8; i++) vals[j][i] = swiglu_val(vals[j][i], uv[j][i], P.limit, sc[j]);
                    }
                    const Q8KLane r = q8_k_quant_lane(vals[j], lane);
                    uint8_t *xs = xs_base + (uint64_t)v * P.xs_bytes;
                    *(uint2 *)(xs + 256 * b + 8 * lane) = make_uint2(r.qlo, r.qhi);
                    if ((lane & 1) == 0) ((int *)(xs + P.xs_off_bs))[16 * b + (lane >> 1)] = r.bsum16;
                    if (lane == 0) ((float *)(xs + P.xs_off_d))[b] = r.d;
                }
            }
        } else {  // SRC_PREQ: GGML Q8_K blocks (292 bytes, 4-byte aligned), 73 words each
            const int64_t per = nb * 73, total = (int64_t)nv * per;
            for (int64_t base = tid; base < total; base += 8 * (int64_t)nthr) {
                uint32_t val[8];
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const int64_t i = base + (int64_t)j * nthr;
                    const int v = (int)(i / per);
                    const int64_t r = i % per;
                    val[j] = i < total ? *(const uint32_t *)(P.x + (uint64_t)(v0 + v) * P.x_stride + 4 * r) : 0u;
                }
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const int64_t i = base + (int64_t)j * nthr;
                    if (i >= total) break;
                    const int v = (int)(i / per);
                    const int64_t r = i % per, b = r / 73, wi = r % 73;
                    uint8_t *xs = xs_base + (uint64_t)v * P.xs_bytes;
                    if (wi == 0) {
                        ((float *)(xs + P.xs_off_d))[b] = __uint_as_float(val[j]);
                    } else if (wi <= 64) {
                        *(uint32_t *)(xs + 256 * b + 4 * (wi - 1)) = val[j];
                    } else {
                        int *bs = (int *)(xs + P.xs_off_bs) + 16 * b + 2 * (wi - 65);
                        bs[0] = (int)(int16_t)(val[j] & 0xffff);
                        bs[1] = (int)(int16_t)(val[j] >> 16);
                    }
                }
            }
        }
    }
}

// ---- the kernel ------------------------------------------------------------------------------

struct Item {
    int ent;             // entry
    uint32_t sel, rg;    // selection within the entry, row group
    int gsel;            // selection over all entries
    int c;               // chunk of the row (R == 1)
    int log2R;           // the entry's rows per tile
    const uint8_t *src;  // first byte of the tile; NULL for an invalid matrix id
    uint32_t bytes;
    int rows;            // valid rows in the tile
};

// The entry holding work item `item` (entries are few; the loop is warp-uniform and
// reads the kernel parameters through the constant cache).
__device__ __forceinline__ int entry_of(const MvParams &P, uint32_t item) {
    int e = 0;
    while (e + 1 < P.n_ent && item >= P.e[e + 1].item0) e++;
    return e;
}

// The entry holding selection i (over all entries).
__device__ __forceinline__ int sel_entry(const MvParams &P, int i) {
    int e = 0;
    while (e + 1 < P.n_ent && i >= P.e[e + 1].sel0) e++;
    return e;
}

// Selection (over all entries) of work item `item`.
__device__ __forceinline__ int gsel_of(const MvParams &P, uint32_t item) {
    const MvEntry &E = P.e[entry_of(P, item)];
    return E.sel0 + (int)((item - E.item0) / E.n_rg);
}

__device__ __forceinline__ uint32_t tile_bytes(const MvParams &P, int rows, int c) {
    if (P.nch == 1) return (uint32_t)(rows * P.row_bytes);
    return (c == P.nch - 1) ? (uint32_t)(P.row_bytes - (uint64_t)c * P.chunk_bytes) : P.chunk_bytes;
}

// Chunk 0 of work item `item` (< 2^31, checked on the host: one 32-bit division per
// item, none per chunk). mats: the matrix of every selection (shared memory, after the
// prologue), or NULL to read the entries' ids from global memory (before it).
__device__ __forceinline__ Item make_item(const MvParams &P, const int32_t *mats, uint32_t item) {
    Item it;
    it.ent = entry_of(P, item);
    const MvEntry &E = P.e[it.ent];
    const uint32_t local = item - E.item0;
    it.sel = local / E.n_rg;
    it.rg = local - it.sel * E.n_rg;
    it.gsel = E.sel0 + (int)it.sel;
    it.c = 0;
    it.log2R = E.log2R;
    const int64_t row0 = (int64_t)it.rg << E.log2R;
    it.rows = (int)min((int64_t)1 << E.log2R, (int64_t)E.n - row0);
    const int mat = mats ? mats[it.gsel] : E.ids ? E.ids[it.sel] : (int)it.sel;
    if (mat < 0 || mat >= E.n_mats) {
        it.src = nullptr;
        it.bytes = 0;
        return it;
    }
    it.src = E.w + (uint64_t)mat * E.mat_stride + (uint64_t)row0 * P.row_bytes;
    it.bytes = tile_bytes(P, it.rows, 0);
    return it;
}

// The next chunk of the same row.
__device__ __forceinline__ Item next_chunk(const MvParams &P, Item it) {
    it.c++;
    if (it.src) {
        it.src += P.chunk_bytes;
        it.bytes = tile_bytes(P, it.rows, it.c);
    }
    return it;
}

__device__ __forceinline__ void stage_tile(const MvParams &P, const Item &it, uint8_t *buf, int lane) {
    if (!it.src) return;
    if (P.fast) {
        for (uint32_t i = 16 * lane; i < it.bytes; i += 512) cp_async16(buf + i, it.src + i);
    } else {
        for (uint32_t i = lane; i < it.bytes; i += 32) buf[i] = it.src[i];
    }
}

// Work assignment. ipb == 0: warp gw takes items gw, gw + tw, ... (tw warps in the grid).
// ipb > 0 (one x per selection): block b owns the contiguous items [b·ipb, (b+1)·ipb)
// and its warps stride over them, so the block needs only the activation vectors of the
// selections in that range (usually one or two instead of all). Values do not depend on
// the assignment: each output is computed by one warp with the same code either way.
template <int WK, bool XQ, int IQV>
__global__ void __launch_bounds__(kMaxThreads) matvec_kernel(const __grid_constant__ MvParams P) {
    extern __shared__ __align__(16) uint8_t smem[];
    __shared__ int32_t s_mat[kMaxSel];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
    uint8_t *bufs = smem + P.off_tiles + (uint32_t)warp * 2 * P.tile_buf;
    uint32_t first, stride, my_items;
    int v0 = 0, nv = 1;
    if (P.ipb) {
        const uint32_t start = blockIdx.x * P.ipb;
        const uint32_t end = start < P.n_items ? min(P.n_items, start + P.ipb) : start;
        first = start + (uint32_t)warp;
        stride = (uint32_t)nwarps;
        my_items = first < end ? (end - first + stride - 1) / stride : 0u;
        if (P.n_x > 1) {
            v0 = start < end ? gsel_of(P, start) : 0;
            nv = start < end ? gsel_of(P, end - 1) - v0 + 1 : 0;
        }
    } else {
        first = blockIdx.x * nwarps + warp;
        stride = gridDim.x * nwarps;
        my_items = P.n_items > first ? (P.n_items - first + stride - 1) / stride : 0u;
    }
    const uint32_t nsteps = my_items * (uint32_t)P.nch;

    // Start the first weight tile before the prologue so the two overlap. With
    // programmatic dependent launch (common.cuh) everything that reads only weights and
    // constants runs before pdl_wait(), overlapping the previous kernel's tail: the first
    // tile when its matrix is known without ids (ids are written by earlier kernels, e.g.
    // the router), and the IQ2_XXS tables. Activations, ids and outputs come after it.
    Item cur;
    bool staged = false;
    if (nsteps > 0 && !P.e[entry_of(P, first)].ids) {
        cur = make_item(P, nullptr, first);
        stage_tile(P, cur, bufs, lane);
        staged = true;
    }
    if constexpr (WK == WK_IQ2_XXS) iq2_tables_to_smem<IQV>(smem, tid, blockDim.x);
    pdl_wait();
    pdl_trigger();
    if (nsteps > 0 && !staged) {
        cur = make_item(P, nullptr, first);
        stage_tile(P, cur, bufs, lane);
    }
    cp_async_commit();

    for (int i = tid; i < P.n_sel; i += blockDim.x) {
        const MvEntry &E = P.e[sel_entry(P, i)];
        const int e = i - E.sel0;
        s_mat[i] = E.ids ? E.ids[e] : e;
    }
    load_activations<WK, XQ>(P, smem + P.off_x, v0, nv, tid, blockDim.x);
    __syncthreads();

    const uint8_t *tab = smem;
    uint32_t item = first;
    float acc = 0.0f;
    for (uint32_t s = 0; s < nsteps; s++) {
        uint8_t *buf = bufs + (s & 1) * P.tile_buf;
        Item nxt = cur;
        uint32_t item2 = item;
        if (s + 1 < nsteps) {
            if (cur.c + 1 < P.nch) {
                nxt = next_chunk(P, cur);
            } else {
                item2 = item + stride;
                nxt = make_item(P, s_mat, item2);
            }
            stage_tile(P, nxt, bufs + ((s + 1) & 1) * P.tile_buf, lane);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncwarp();

        const int c = cur.c;
        const int log2R = cur.log2R, R = 1 << log2R;
        const int r = lane & (R - 1), lu = lane >> log2R, ustep = 32 >> log2R;
        const int vx = P.n_x == 1 ? 0 : cur.gsel - v0;
        const uint8_t *xs = smem + P.off_x + (uint32_t)vx * P.xs_bytes;
        XV xv;
        xv.q = (const int8_t *)xs;
        xv.f = (const float *)xs;
        xv.d = (const float *)(xs + P.xs_off_d);
        xv.bs = (const int *)(xs + P.xs_off_bs);
        if (cur.src && r < cur.rows) {
            const int units = (c == P.nch - 1) ? P.units_row - c * P.chunk_units : P.chunk_units;
            const uint8_t *rowp = buf + (R > 1 ? (uint32_t)r * (uint32_t)P.row_bytes : 0u);
            const int ug0 = c * P.chunk_units;
#pragma unroll 2
            for (int u = lu; u < units; u += ustep) acc += unit_dot<WK, XQ, IQV>(rowp, u, ug0 + u, xv, tab, lane);
        }
        if (c == P.nch - 1) {
            for (int off = 16; off >= R; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
            if (lane < cur.rows) {
                const MvEntry &E = P.e[cur.ent];
                E.y[(int64_t)cur.sel * E.n + ((int64_t)cur.rg << log2R) + lane] = cur.src ? acc : __int_as_float(0x7fc00000);
            }
            acc = 0.0f;
        }
        __syncwarp();  // the buffer is restaged two steps later
        cur = nxt;
        item = item2;
    }
    cp_async_wait<0>();
}

// Stand-alone quantizer: one warp per Q8_K block, or per 4 Q8_0 blocks.
__global__ void quantize_q8_k_kernel(const float *x, uint8_t *xq, int64_t k, int64_t nblocks_total) {
    pdl_wait();  // x is the previous kernel's output (launched with PDL, see common.cuh)
    pdl_trigger();
    const int lane = threadIdx.x & 31;
    const int64_t wb = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (wb >= nblocks_total) return;  // whole warps exit together
    const int64_t nb = k / 256, v = wb / nb, b = wb % nb;
    const float *src = x + v * k + 256 * b + 8 * lane;
    float vals[8];
#pragma unroll
    for (int i = 0; i < 8; i++) vals[i] = src[i];
    const Q8KLane r = q8_k_quant_lane(vals, lane);
    uint8_t *blk = xq + (uint64_t)wb * 292;
    uint32_t *qw = (uint32_t *)(blk + 4 + 8 * lane);
    qw[0] = r.qlo;
    qw[1] = r.qhi;
    if ((lane & 1) == 0) ((int16_t *)(blk + 260))[lane >> 1] = (int16_t)r.bsum16;
    if (lane == 0) *(float *)blk = r.d;
}

// Grid (nvec, ceil(steps / 32)), 256 threads: block x is the vector (no 64-bit division
// per warp), each warp quantizes 4 steps of 4 blocks with all 16 loads per lane issued
// first (float4 when the row is 16-byte aligned). Each block's values are act_quant.cuh's
// on its own 32 floats, as before.
constexpr int kQ8StepsPerWarp = 4;
__global__ void __launch_bounds__(256) quantize_q8_0_kernel(const float *x, uint8_t *xq, int64_t k) {
    pdl_wait();
    pdl_trigger();
    const int lane = threadIdx.x & 31;
    const int64_t nb = k / 32, steps = (nb + 3) / 4, v = blockIdx.x;
    const int64_t s0 = ((int64_t)blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5)) * kQ8StepsPerWarp;
    if (s0 >= steps) return;  // whole warps
    const float *row = x + v * k;
    const bool a16 = ((uintptr_t)row & 15) == 0;  // warp-uniform
    float vals[kQ8StepsPerWarp][4];
#pragma unroll
    for (int i = 0; i < kQ8StepsPerWarp; i++) {
        const int64_t b = (s0 + i) * 4 + (lane >> 3);
        const float *src = row + 32 * b + 4 * (lane & 7);
        if (b < nb && a16) {
            const float4 f = *(const float4 *)src;
            vals[i][0] = f.x, vals[i][1] = f.y, vals[i][2] = f.z, vals[i][3] = f.w;
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++) vals[i][e] = b < nb ? src[e] : 0.0f;
        }
    }
#pragma unroll
    for (int i = 0; i < kQ8StepsPerWarp; i++) {
        if (s0 + i >= steps) break;  // warp-uniform
        const int64_t b = (s0 + i) * 4 + (lane >> 3);
        float d;
        const uint32_t q = q8_0_quant_lane(vals[i], &d);
        if (b >= nb) continue;
        uint8_t *blk = xq + (uint64_t)(v * nb + b) * 34;
        uint16_t *qh = (uint16_t *)(blk + 2 + 4 * (lane & 7));  // 2-byte aligned
        qh[0] = (uint16_t)q;
        qh[1] = (uint16_t)(q >> 16);
        if ((lane & 7) == 0) *(uint16_t *)blk = __half_as_ushort(__float2half_rn(d));
    }
}

// ---- host side -----------------------------------------------------------------------------

typedef void (*KernelFn)(MvParams);

template <int WK, bool XQ>
KernelFn pick_iqv(int iqv) {
    if constexpr (WK == WK_IQ2_XXS) {
        if (iqv == 1) return matvec_kernel<WK, XQ, 1>;
        if (iqv == 2) return matvec_kernel<WK, XQ, 2>;
    }
    return matvec_kernel<WK, XQ, 0>;
}

KernelFn pick_kernel(int wk, bool xq, int iqv) {
    switch (wk) {
    case WK_F32: return pick_iqv<WK_F32, false>(0);
    case WK_F16: return pick_iqv<WK_F16, false>(0);
    case WK_F32_1: return pick_iqv<WK_F32_1, false>(0);
    case WK_F16_1: return pick_iqv<WK_F16_1, false>(0);
    case WK_Q8_0: return xq ? pick_iqv<WK_Q8_0, true>(0) : pick_iqv<WK_Q8_0, false>(0);
    case WK_Q2_K: return xq ? pick_iqv<WK_Q2_K, true>(0) : pick_iqv<WK_Q2_K, false>(0);
    case WK_Q4_K: return xq ? pick_iqv<WK_Q4_K, true>(0) : pick_iqv<WK_Q4_K, false>(0);
    default: return xq ? pick_iqv<WK_IQ2_XXS, true>(iqv) : pick_iqv<WK_IQ2_XXS, false>(iqv);
    }
}

struct DevState {
    bool init;
    int sms;
    int smem_optin;  // max dynamic shared memory per block after opt-in
};
constexpr int kMaxDev = 64;
DevState g_dev[kMaxDev];

struct OccEntry {
    KernelFn fn;
    int dev, threads, smem, blocks_per_sm;
};
constexpr int kOccCache = 256;
OccEntry g_occ[kOccCache];
int g_occ_n;
std::mutex g_mu;
int g_iq2_variant = 2;

int init_device(int dev, char *err, size_t errlen) {
    if (dev < 0 || dev >= kMaxDev) return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "CUDA device %d: too many devices", dev);
    if (g_dev[dev].init) return 0;
    // Derived IQ2_XXS tables (see c_codes): checked against the format while deriving.
    uint32_t codes[256], ssp[128];
    for (int i = 0; i < 256; i++) {
        codes[i] = 0;
        for (int j = 0; j < 8; j++) {
            const unsigned m = (unsigned)(ds4_iq2xxs_grid[i] >> (8 * j)) & 255u;
            const unsigned code = m == 8 ? 0 : m == 25 ? 1 : m == 43 ? 2 : 3;
            if (code == 3) return ds4_err(err, errlen, DS4_ERR_FORMAT, "iq2xxs_grid[%d] byte %d is %u", i, j, m);
            codes[i] |= code << (4 * j);
        }
    }
    for (int i = 0; i < 128; i++) {
        ssp[i] = 0;
        for (int j = 0; j < 8; j++)
            if ((ds4_iq2_ksigns[i] >> j) & 1) ssp[i] |= 4u << (4 * j);
    }
    DS4_CUDA_TRY(cudaMemcpyToSymbol(c_grid, ds4_iq2xxs_grid, sizeof(c_grid)));
    DS4_CUDA_TRY(cudaMemcpyToSymbol(c_ksigns, ds4_iq2_ksigns, sizeof(c_ksigns)));
    DS4_CUDA_TRY(cudaMemcpyToSymbol(c_codes, codes, sizeof(codes)));
    DS4_CUDA_TRY(cudaMemcpyToSymbol(c_ssp, ssp, sizeof(ssp)));
    int sms = 0, optin = 0;
    DS4_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    DS4_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    g_dev[dev].sms = sms;
    g_dev[dev].smem_optin = optin;
    g_dev[dev].init = true;
    return 0;
}

int current_device(int *dev, char *err, size_t errlen) {
    DS4_CUDA_TRY(cudaGetDevice(dev));
    std::lock_guard<std::mutex> lk(g_mu);
    return init_device(*dev, err, errlen);
}

// Resident blocks per SM for (kernel, threads, smem), with the dynamic shared memory
// limit raised once per kernel and device.
int blocks_per_sm(KernelFn fn, int dev, int threads, int smem, int *out, char *err, size_t errlen) {
    std::lock_guard<std::mutex> lk(g_mu);
    for (int i = 0; i < g_occ_n; i++) {
        const OccEntry &e = g_occ[i];
        if (e.fn == fn && e.dev == dev && e.threads == threads && e.smem == smem) {
            *out = e.blocks_per_sm;
            return 0;
        }
    }
    // The dynamic limit may be raised to the opt-in maximum less the static shared
    // memory (s_ids).
    cudaFuncAttributes fa;
    DS4_CUDA_TRY(cudaFuncGetAttributes(&fa, (const void *)fn));
    DS4_CUDA_TRY(cudaFuncSetAttribute((const void *)fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      g_dev[dev].smem_optin - (int)fa.sharedSizeBytes));
    int b = 0;
    DS4_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, (const void *)fn, threads, (size_t)smem));
    if (b < 1) return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "matvec kernel does not fit on an SM (%d bytes of shared memory)", smem);
    if (g_occ_n < kOccCache) g_occ[g_occ_n++] = OccEntry{fn, dev, threads, smem, b};
    *out = b;
    return 0;
}

uint32_t align16(uint64_t v) { return (uint32_t)((v + 15) & ~(uint64_t)15); }

int wkind_of(uint32_t type, int64_t k) {
    switch (type) {
    case DS4_TYPE_F32: return k % 4 == 0 ? WK_F32 : WK_F32_1;
    case DS4_TYPE_F16: return k % 8 == 0 ? WK_F16 : WK_F16_1;
    case DS4_TYPE_Q8_0: return WK_Q8_0;
    case DS4_TYPE_Q2_K: return WK_Q2_K;
    case DS4_TYPE_Q4_K: return WK_Q4_K;
    case DS4_TYPE_IQ2_XXS: return WK_IQ2_XXS;
    default: return -1;
    }
}

// One entry of a launch as the entry points describe it.
struct HostEnt {
    const ds4_cuda_qmat *w;
    const int32_t *ids;  // device [n_sel] or NULL
    int n_sel;
    float *y;            // device [n_sel][w->n]
};

// Where a launch's activation vectors come from. x_stride in bytes (0: one vector
// shared by every selection). quant: activations quantized for quantized weights
// (SRC_QUANT / SRC_PREQ: always; SRC_SWIGLU: production mode).
struct ActIn {
    const void *x;
    uint64_t x_stride;
    int xsrc;
    bool quant;
    const float *xu, *xw;  // SRC_SWIGLU: up values (same layout as x) and scales [n_x] or NULL
    float limit;
};

// Row bytes of one entry's matrices, after checking the entry on its own.
int check_entry(const HostEnt &h, uint64_t *rb, char *err, size_t errlen) {
    const ds4_cuda_qmat *w = h.w;
    if (!w) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: NULL weight descriptor");
    const int wk = wkind_of(w->type, w->k);
    if (wk < 0) return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "matvec: weight type %s not supported", ds4_type_name(w->type));
    const WGeom g = kGeom[wk];
    if (w->n < 1 || w->k < 1 || w->k % g.be)
        return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: bad shape n=%lld k=%lld for %s (k must be a positive multiple of %d)",
                       (long long)w->n, (long long)w->k, ds4_type_name(w->type), g.be);
    if (w->n > INT32_MAX || w->k > (1 << 24))
        return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "matvec: shape n=%lld k=%lld too large", (long long)w->n, (long long)w->k);
    if (!w->data || !h.y) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: NULL data or y");
    if (h.n_sel < 1 || h.n_sel > kMaxSel) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: n_sel %d not in [1, %d]", h.n_sel, kMaxSel);
    if (w->n_mats < 1) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: n_mats %d < 1", (int)w->n_mats);
    if (!h.ids && h.n_sel > w->n_mats)
        return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: n_sel %d > n_mats %d without ids", h.n_sel, (int)w->n_mats);
    if ((uintptr_t)h.y % 4) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: y not 4-byte aligned");
    const uint64_t row_bytes = (uint64_t)(w->k / g.be) * (uint64_t)g.bb;
    if (w->n_mats > 1 && w->mat_stride < (uint64_t)w->n * row_bytes)
        return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: mat_stride %llu < n*row_bytes %llu", (unsigned long long)w->mat_stride,
                       (unsigned long long)((uint64_t)w->n * row_bytes));
    *rb = row_bytes;
    return 0;
}

// Whether an entry's tiles may be staged with 16-byte cp.async. The chunking of long rows
// depends on it, so entries launched together must agree (ds4_cuda_matvec_list splits).
bool entry_fast(const ds4_cuda_qmat *w, uint64_t row_bytes) {
    const uint64_t ms = w->n_mats > 1 ? w->mat_stride : 0;
    return (uintptr_t)w->data % 16 == 0 && row_bytes % 16 == 0 && ms % 16 == 0;
}

// Rows per tile of a matrix of n rows: as many as fit, but no more than the matrix has
// (rounded up to a power of two), so small matrices keep all 32 lanes on one row's
// units. A function of (row_bytes, n) only: a matrix gets the same tiles in any launch.
int rows_per_tile(uint64_t row_bytes, int64_t n) {
    int R = 1;
    if (row_bytes <= (uint64_t)kTileMax)
        while (R < 32 && (uint64_t)(2 * R) * row_bytes <= (uint64_t)kTileMax && R < n) R *= 2;
    return R;
}

// The common launcher: every entry has the same type, k and entry_fast().
int launch(const HostEnt *ents, int n_ent, const ActIn &a, cudaStream_t stream, char *err, size_t errlen) {
    if (!ents || n_ent < 1 || n_ent > kMaxEntries)
        return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: %d list entries not in [1, %d]", n_ent, kMaxEntries);
    uint64_t row_bytes = 0;
    int rc = check_entry(ents[0], &row_bytes, err, errlen);
    if (rc) return rc;
    const ds4_cuda_qmat *w0 = ents[0].w;
    const int wk = wkind_of(w0->type, w0->k);
    const WGeom g = kGeom[wk];
    const bool fast = entry_fast(w0, row_bytes);
    int n_sel = 0;
    for (int j = 0; j < n_ent; j++) {
        uint64_t rb = 0;
        if ((rc = check_entry(ents[j], &rb, err, errlen))) return rc;
        if (ents[j].w->type != w0->type || ents[j].w->k != w0->k)
            return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: list entry %d is %s k=%lld, entry 0 %s k=%lld", j,
                           ds4_type_name(ents[j].w->type), (long long)ents[j].w->k, ds4_type_name(w0->type), (long long)w0->k);
        if (entry_fast(ents[j].w, rb) != fast)
            return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: list entries differ in 16-byte alignment");
        n_sel += ents[j].n_sel;
    }
    if (n_sel > kMaxSel) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: %d selections in one launch (max %d)", n_sel, kMaxSel);

    const bool float_w = wk == WK_F32 || wk == WK_F16 || wk == WK_F32_1 || wk == WK_F16_1;
    const bool xq = !float_w && a.quant;
    const int act_be = wk == WK_Q8_0 ? 32 : 256;
    if (!a.x) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: NULL x");
    if (a.xsrc == SRC_PREQ) {
        const unsigned xa = float_w ? 4u : wk == WK_Q8_0 ? 2u : 4u;
        if ((uintptr_t)a.x % xa || a.x_stride % xa)
            return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: activations not %u-byte aligned", xa);
    } else if ((uintptr_t)a.x % 4 || a.x_stride % 4) {
        return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: x not 4-byte aligned");
    }
    if (a.xsrc == SRC_SWIGLU && (!a.xu || (uintptr_t)a.xu % 4 || (uintptr_t)a.xw % 4))
        return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: NULL or misaligned up values / scales");
    const int n_x = a.x_stride == 0 ? 1 : n_sel;
    if (n_x > 1 && n_ent > 1) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: one x per selection needs a single entry");

    int dev = 0;
    if ((rc = current_device(&dev, err, errlen))) return rc;
    const DevState ds = g_dev[dev];

    MvParams P;
    memset(&P, 0, sizeof P);
    P.n_ent = n_ent;
    P.n_sel = n_sel;
    P.row_bytes = row_bytes;
    P.k = w0->k;
    P.fast = fast;
    P.x = (const uint8_t *)a.x;
    P.x_stride = a.x_stride;
    P.n_x = n_x;
    P.act_src = a.xsrc;
    P.xu = (const uint8_t *)a.xu;
    P.xw = a.xw;
    P.limit = a.limit;

    // Chunks of long rows (R == 1): a function of (type, k, fast) only.
    const int64_t nb = w0->k / g.be;
    const int bpu = g.ue > g.be ? g.ue / g.be : 1;  // blocks per unit (F16: 8, F32: 4)
    P.tile_buf = (uint32_t)(kTileMax + kTilePad);
    if (row_bytes <= (uint64_t)kTileMax) {
        P.nch = 1;
        P.chunk_units = (int)(w0->k / g.ue);
        P.chunk_bytes = (uint32_t)row_bytes;
    } else {
        int gran = bpu;
        if (fast) {
            int a16 = 16;
            for (int t = g.bb; t % 2 == 0 && a16 > 1; t /= 2) a16 /= 2;  // 16 / gcd(bb, 16)
            gran = a16 > gran ? a16 : gran;  // both powers of two: their lcm
        }
        int64_t cb = (kTileMax / g.bb) / gran * gran;
        if (cb < 1) return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "matvec: block too large");
        P.nch = (int)((nb + cb - 1) / cb);
        P.chunk_units = (int)(cb * g.be / g.ue);
        P.chunk_bytes = (uint32_t)(cb * g.bb);
    }
    P.units_row = (int)(w0->k / g.ue);

    // Entries: rows per tile per matrix, items and selections numbered entry by entry.
    int64_t items = 0;
    int sel = 0;
    for (int j = 0; j < n_ent; j++) {
        const ds4_cuda_qmat *w = ents[j].w;
        MvEntry &E = P.e[j];
        E.w = (const uint8_t *)w->data;
        E.mat_stride = w->n_mats > 1 ? w->mat_stride : 0;
        E.ids = ents[j].ids;
        E.y = ents[j].y;
        E.n_mats = w->n_mats;
        E.n_sel = ents[j].n_sel;
        E.n = (int)w->n;
        const int R = rows_per_tile(row_bytes, w->n);
        E.log2R = 0;
        while ((1 << E.log2R) < R) E.log2R++;
        E.n_rg = (uint32_t)((w->n + R - 1) / R);
        E.item0 = (uint32_t)items;
        E.sel0 = sel;
        items += (int64_t)E.n_sel * E.n_rg;
        sel += E.n_sel;
        if (items > INT32_MAX)
            return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "matvec: %lld row groups in one launch (max 2^31)", (long long)items);
    }
    P.n_items = (uint32_t)items;

    // Shared memory: [IQ2 tables][activation vectors][per-warp double buffers].
    const int iqv = g_iq2_variant;
    const uint32_t tab = wk == WK_IQ2_XXS ? (uint32_t)iq2_tab_bytes(iqv) : 0u;
    if (xq) {
        P.xs_off_d = align16((uint64_t)w0->k);
        P.xs_off_bs = align16(P.xs_off_d + 4 * (uint64_t)(w0->k / act_be));
        P.xs_bytes = act_be == 256 ? align16(P.xs_off_bs + 4 * (uint64_t)(w0->k / 16)) : P.xs_off_bs;
    } else {
        P.xs_bytes = align16(4 * (uint64_t)w0->k);
    }
    P.off_x = tab;
    const int64_t smem_max = ds.smem_optin - kStaticSmem;
    const int64_t tiles_of = 2 * (int64_t)P.tile_buf;  // per warp
    // Warps: the kind's default, halved while the vectors a block must be able to hold do
    // not fit beside the warps' buffers. One x: that vector. One x per selection: two
    // (blocks own item ranges, and a range that crosses a selection boundary needs two;
    // more vectors are held when they fit, see nv_cap).
    int nwarps = (wk == WK_IQ2_XXS && iqv == 2) ? 16 : 8;
    const int64_t nv_min = n_x < 2 ? n_x : 2;
    while (nwarps > 1 && (int64_t)tab + nv_min * P.xs_bytes + nwarps * tiles_of > smem_max) nwarps /= 2;
    // Vectors that fit beside nwarps warps' buffers: the bound on the selections one
    // block's item range may span (fewer than n_x when many small matrices each have their
    // own x; the range is then shortened and the grid grows).
    int64_t nv_cap = (smem_max - (int64_t)tab - nwarps * tiles_of) / (int64_t)P.xs_bytes;
    if (nv_cap > n_x) nv_cap = n_x;
    if (nv_cap < 1) {
        const int64_t need = (int64_t)tab + P.xs_bytes + tiles_of;
        return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED,
                       "matvec: k=%lld: one activation vector needs %lld bytes of shared memory (> %lld)", (long long)w0->k,
                       (long long)need, (long long)smem_max);
    }
    int smem = (int)((int64_t)tab + nv_cap * P.xs_bytes + nwarps * tiles_of);
    const int threads = nwarps * 32;
    const KernelFn fn = pick_kernel(wk, xq, iqv);
    int bps = 0;
    if ((rc = blocks_per_sm(fn, dev, threads, smem, &bps, err, errlen))) return rc;
    const int64_t want = ((int64_t)P.n_items + nwarps - 1) / nwarps;
    int64_t blocks = want < (int64_t)ds.sms * bps ? want : (int64_t)ds.sms * bps;
    int64_t nvec = n_x;
    if (n_x > 1) {
        // Block-local activations: a range of ipb consecutive items spans at most
        // floor((ipb + n_rg − 2) / n_rg) + 1 selections, so ipb <= (nv_cap − 1)·n_rg + 1
        // keeps the span within nv_cap vectors (more blocks then, beyond one wave). The
        // smaller shared memory may fit more blocks per SM; one more pass uses them (more
        // blocks: ipb and the span only shrink, so the second size still fits the
        // occupancy it was chosen for). The assignment never changes a value: every
        // output is computed by one warp with the same code.
        const int64_t n_rg = P.e[0].n_rg;
        const int64_t ipb_cap = nv_cap < n_x ? (nv_cap - 1) * n_rg + 1 : INT64_MAX;
        int64_t ipb = 1;
        for (int pass = 0; pass < 2; pass++) {
            ipb = ((int64_t)P.n_items + blocks - 1) / blocks;
            if (ipb > ipb_cap) ipb = ipb_cap;
            blocks = ((int64_t)P.n_items + ipb - 1) / ipb;
            nvec = (ipb + n_rg - 2) / n_rg + 1;
            if (nvec > n_x) nvec = n_x;
            smem = (int)((int64_t)tab + nvec * P.xs_bytes + nwarps * tiles_of);
            if (pass == 1) break;
            int bps2 = 0;
            if ((rc = blocks_per_sm(fn, dev, threads, smem, &bps2, err, errlen))) return rc;
            const int64_t b2 = want < (int64_t)ds.sms * bps2 ? want : (int64_t)ds.sms * bps2;
            if (b2 <= blocks) break;
            blocks = b2;
        }
        P.ipb = (uint32_t)ipb;
    }
    P.off_tiles = (uint32_t)((int64_t)tab + nvec * P.xs_bytes);
    DS4_CUDA_TRY(ds4cu::launch(fn, dim3((unsigned)blocks), dim3((unsigned)threads), (size_t)smem, stream, P));
    return 0;
}

// A single-entry launch (the entry points before the list mode).
int launch1(const ds4_cuda_qmat *w, const int32_t *ids, int n_sel, float *y, const ActIn &a, cudaStream_t stream, char *err,
            size_t errlen) {
    const HostEnt h = {w, ids, n_sel, y};
    return launch(&h, 1, a, stream, err, errlen);
}

ActIn act_in(const void *x, uint64_t x_stride, int xsrc) {
    ActIn a;
    memset(&a, 0, sizeof a);
    a.x = x;
    a.x_stride = x_stride;
    a.xsrc = xsrc;
    a.quant = xsrc != SRC_F32;
    return a;
}

}  // namespace

extern "C" int ds4_cuda_matvec_init(char *err, size_t errlen) {
    int dev = 0;
    return current_device(&dev, err, errlen);
}

extern "C" int ds4_cuda_matvec(const ds4_cuda_qmat *w, const float *x, float *y, ds4_cuda_act_mode mode,
                               struct CUstream_st *stream, char *err, size_t errlen) {
    if (mode != DS4_CUDA_ACT_QUANT && mode != DS4_CUDA_ACT_F32) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: bad mode %d", (int)mode);
    return launch1(w, nullptr, 1, y, act_in(x, 0, mode == DS4_CUDA_ACT_QUANT ? SRC_QUANT : SRC_F32), stream, err, errlen);
}

extern "C" int ds4_cuda_matvec_ids(const ds4_cuda_qmat *w, const int32_t *ids, int n_sel, const float *x, int64_t x_stride,
                                   float *y, ds4_cuda_act_mode mode, struct CUstream_st *stream, char *err, size_t errlen) {
    if (mode != DS4_CUDA_ACT_QUANT && mode != DS4_CUDA_ACT_F32) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: bad mode %d", (int)mode);
    if (x_stride < 0 || (w && x_stride != 0 && x_stride < w->k))
        return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: x_stride %lld must be 0 or >= k", (long long)x_stride);
    return launch1(w, ids, n_sel, y, act_in(x, (uint64_t)x_stride * 4, mode == DS4_CUDA_ACT_QUANT ? SRC_QUANT : SRC_F32), stream,
                   err, errlen);
}

extern "C" int ds4_cuda_matvec_ids_q(const ds4_cuda_qmat *w, const int32_t *ids, int n_sel, const void *xq, uint64_t xq_stride,
                                     float *y, struct CUstream_st *stream, char *err, size_t errlen) {
    if (w) {
        uint64_t vb = 0;
        if (!ds4_type_row_bytes(ds4_vec_dot_type(w->type), (uint64_t)w->k, &vb)) vb = 0;
        if (xq_stride != 0 && xq_stride < vb)
            return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: xq_stride %llu < vector bytes %llu", (unsigned long long)xq_stride,
                           (unsigned long long)vb);
    }
    return launch1(w, ids, n_sel, y, act_in(xq, xq_stride, SRC_PREQ), stream, err, errlen);
}

extern "C" int ds4_cuda_matvec_list(const ds4_cuda_mv_entry *e, int n_entries, const float *x, ds4_cuda_act_mode mode,
                                    struct CUstream_st *stream, char *err, size_t errlen) {
    if (mode != DS4_CUDA_ACT_QUANT && mode != DS4_CUDA_ACT_F32) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: bad mode %d", (int)mode);
    if (!e || n_entries < 1 || n_entries > kMaxEntries)
        return ds4_err(err, errlen, DS4_ERR_ARG, "matvec_list: %d entries not in [1, %d]", n_entries, kMaxEntries);
    static_assert(kMaxEntries == DS4_CUDA_MV_MAX_ENTRIES, "entry limit");
    // Entries whose tiles cannot use cp.async chunk long rows differently: they go in a
    // launch of their own, so every output keeps its single-matrix value.
    HostEnt h[2][kMaxEntries];
    int nh[2] = {0, 0};
    for (int j = 0; j < n_entries; j++) {
        uint64_t rb = 0;
        const HostEnt he = {&e[j].w, e[j].ids, e[j].n_sel, e[j].y};
        const int rc = check_entry(he, &rb, err, errlen);
        if (rc) return rc;
        // the contract (one type and k per list) holds before the split by alignment
        if (e[j].w.type != e[0].w.type || e[j].w.k != e[0].w.k)
            return ds4_err(err, errlen, DS4_ERR_ARG, "matvec_list: entry %d is %s k=%lld, entry 0 %s k=%lld", j,
                           ds4_type_name(e[j].w.type), (long long)e[j].w.k, ds4_type_name(e[0].w.type), (long long)e[0].w.k);
        const int f = entry_fast(&e[j].w, rb) ? 1 : 0;
        h[f][nh[f]++] = he;
    }
    const ActIn a = act_in(x, 0, mode == DS4_CUDA_ACT_QUANT ? SRC_QUANT : SRC_F32);
    for (int f = 1; f >= 0; f--)
        if (nh[f]) {
            const int rc = launch(h[f], nh[f], a, stream, err, errlen);
            if (rc) return rc;
        }
    return 0;
}

extern "C" int ds4_cuda_matvec_ids_swiglu(const ds4_cuda_qmat *w, const int32_t *ids, int n_sel, const float *g, const float *u,
                                          const float *scale, float limit, float *y, ds4_cuda_act_mode mode,
                                          struct CUstream_st *stream, char *err, size_t errlen) {
    if (mode != DS4_CUDA_ACT_QUANT && mode != DS4_CUDA_ACT_F32) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: bad mode %d", (int)mode);
    if (!w) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec: NULL weight descriptor");
    if (!g || !u) return ds4_err(err, errlen, DS4_ERR_ARG, "matvec_swiglu: NULL g or u");
    ActIn a = act_in(g, (uint64_t)w->k * 4, SRC_SWIGLU);
    a.quant = mode == DS4_CUDA_ACT_QUANT;
    a.xu = u;
    a.xw = scale;
    a.limit = limit;
    return launch1(w, ids, n_sel, y, a, stream, err, errlen);
}

extern "C" int ds4_cuda_quantize_act(uint32_t act_type, const float *x, void *xq, int64_t k, int64_t nvec,
                                     struct CUstream_st *stream, char *err, size_t errlen) {
    if (!x || !xq || k < 1 || nvec < 1) return ds4_err(err, errlen, DS4_ERR_ARG, "quantize_act: NULL pointer or empty shape");
    if ((uintptr_t)x % 4) return ds4_err(err, errlen, DS4_ERR_ARG, "quantize_act: x not 4-byte aligned");
    int dev = 0, rc = current_device(&dev, err, errlen);
    if (rc) return rc;
    int64_t warps;
    if (act_type == DS4_TYPE_Q8_K) {
        if (k % 256) return ds4_err(err, errlen, DS4_ERR_ARG, "quantize_act: Q8_K needs k %% 256 == 0 (k=%lld)", (long long)k);
        if ((uintptr_t)xq % 4) return ds4_err(err, errlen, DS4_ERR_ARG, "quantize_act: Q8_K output not 4-byte aligned");
        warps = nvec * (k / 256);
    } else if (act_type == DS4_TYPE_Q8_0) {
        if (k % 32) return ds4_err(err, errlen, DS4_ERR_ARG, "quantize_act: Q8_0 needs k %% 32 == 0 (k=%lld)", (long long)k);
        if ((uintptr_t)xq % 2) return ds4_err(err, errlen, DS4_ERR_ARG, "quantize_act: Q8_0 output not 2-byte aligned");
        warps = nvec * ((k / 32 + 3) / 4);
    } else {
        return ds4_err(err, errlen, DS4_ERR_ARG, "quantize_act: activation type %s not Q8_0/Q8_K", ds4_type_name(act_type));
    }
    const int threads = 256;
    const int64_t blocks = (warps * 32 + threads - 1) / threads;
    if (blocks > INT32_MAX) return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "quantize_act: too many vectors");
    if (act_type == DS4_TYPE_Q8_K)
        DS4_CUDA_TRY(ds4cu::launch(quantize_q8_k_kernel, dim3((unsigned)blocks), dim3(threads), 0, stream, x, (uint8_t *)xq, k,
                                   warps));
    else {
        const int64_t gy = ((k / 32 + 3) / 4 + 8 * kQ8StepsPerWarp - 1) / (8 * kQ8StepsPerWarp);  // 8 warps per block
        if (nvec > INT32_MAX || gy > 65535)
            return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "quantize_act: shape too large for the Q8_0 grid");
        DS4_CUDA_TRY(ds4cu::launch(quantize_q8_0_kernel, dim3((unsigned)nvec, (unsigned)gy), dim3(threads), 0, stream, x,
                                   (uint8_t *)xq, k));
    }
    return 0;
}

extern "C" int ds4_cuda_matvec_set_iq2_variant(int v) {
    std::lock_guard<std::mutex> lk(g_mu);
    const int old = g_iq2_variant;
    if (v >= 0 && v <= 2) g_iq2_variant = v;
    return old;
}
