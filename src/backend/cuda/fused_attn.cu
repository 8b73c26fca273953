// fused_attn.cu — the fused ops topk_dev and attention_ex of the CUDA backend (backend.h,
// "optional fused ops"): the indexer's top-k selected on the device (no host round trip)
// and the sink attention of one query position followed by the inverse rope of each
// head's output, in one launch each.
//
// Owns: k_topk (one block: radix select on order-preserving keys, then an ordered
// compaction), k_attn_ex (flash-decoding: blocks = (head group, row chunk), a fixed-shape
// last-block-done merge tree over the chunks, rope at the root; compressed rows read in
// kv_fmt.h's compact layout when ds4cu::kv_compact) and the entry points
// ds4cu_topk_dev / ds4cu_attention_ex. Must not: read device values back to the host
// (except the hd > 512 fallback, which runs the generic op sequence), or let any value
// depend on timing: every sum has an order fixed by the shapes alone.
#include "common.cuh"
#include "cuda_internal.h"
#include "topk_radix.cuh"
#include "backend/kv_fmt.h"

#include <math.h>
#include <string.h>

#include <type_traits>
#include <vector>

extern "C" {
#include "core/common.h"
}

namespace {

constexpr unsigned kFull = 0xffffffffu;

// =====================================================================================
// topk_dev
// =====================================================================================
// The selection itself (semantics of ds4_topk_host, radix select + ordered compaction) is
// ds4cu::topk::select_row (topk_radix.cuh). This kernel's choices: one block of 1024
// threads for the one row; keys cached in shared memory when n <= kTkCache, else every
// pass re-reads the scores (L2-resident: indexer_scores just wrote them); compaction
// loads 4 keys per lane per step.
constexpr int kTkThreads = 1024;
constexpr int kTkCache = 36864;          // keys cached in shared memory (144 KiB)
constexpr size_t kTkHistBytes = ds4cu::topk::kHistBytes;

// score [n] (backend memory), idx [k] (backend memory), 1 <= k <= n.
template <bool CACHE>
__global__ void __launch_bounds__(kTkThreads, 1) k_topk(const float *__restrict__ score, int n, int k,
                                                         int32_t *__restrict__ idx) {
    ds4cu::pdl_wait();     // launched with PDL (ds4cu::launch): the previous kernel's
    ds4cu::pdl_trigger();  // outputs are visible only after the wait
    extern __shared__ uint32_t tk_sm[];
    uint32_t *hist = tk_sm;                                                  // [kCopies][kStride]
    uint32_t *cache = tk_sm + ds4cu::topk::kCopies * ds4cu::topk::kStride;   // [n] keys when CACHE
    __shared__ ds4cu::topk::Workspace<kTkThreads / 32> ws;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    ds4cu::topk::select_row<kTkThreads, CACHE, 4>(score, n, k, idx, tid, lane, w, hist, cache, ws);
}

// =====================================================================================
// attention_ex
// =====================================================================================
// Work split (MQA: every head reads the same K = V rows): block (c, g) takes head group g
// (kHG = 8 heads) and the rows [c·RC, c·RC + RC) of the concatenated list (rows_a[ia[j]]
// for j < na, then rows_b[ib[j]]). Rows stream through shared memory in tiles of kT = 16
// (cp.async, double-buffered), each tile read from L2 once per head group. Per tile:
//  - logits: warp (hs, rg) has the q of heads hs·4..+3 in registers and dots them with
//    rows rg·4..+3 (16 values, a transposed butterfly leaves each sum in two lanes);
//  - softmax: warp hh keeps head hh's running max M and denominator S; the tile's
//    weights p = exp(l - M') are computed once per (head, row), acc rescale α = exp(M - M');
//  - p·V: warp (hs, dq) owns heads hs·4..+3 × the d-quarter dq in registers.
// A block's partial (M, S, acc) then goes up a fixed tree of fan-in kFan over the chunks:
// each node is merged by the last of its children to arrive (counter, __threadfence),
// children always in index order, so the values depend on the shapes only. The root adds
// the sink, divides, and applies the inverse rope (k_rope's arithmetic) while storing.
//
// Compact rows_b (ds4cu::kv_compact; kv_fmt.h attention rows of rbytes bytes, 592 for
// Flash): a tile's compressed rows are cp.async'd as bytes into a double-buffered staging
// area (issued one tile ahead like the f32 rows, which still go straight into the f32
// tile), and once tile t has landed every thread decodes a share of its compressed rows
// into the f32 tile (one extra barrier); the logit and p·V phases then read the same f32
// values an f32 row would hold, so the results are bit-identical to the f32 path on the
// decoded rows. Decoding once per tile costs each thread 8 steps of ~25 instructions
// (Flash: a 4-byte load of 4 codes and the scale byte, byte → f32 bits, one multiply by a
// power of two, a float4 store) and the block a tile's worth of conflict-free shared
// stores — against ~600 instructions (512 FMAs) per thread in the logit and p·V phases —
// and cuts the bytes read per compressed row from 4·hd to rbytes (3.5x for Flash).
constexpr int kHS = 4;               // heads per warp
constexpr int kHG = 8;               // heads per block (2 head sets)
constexpr int kAW = 8;               // warps per block
constexpr int kAThreads = kAW * 32;
constexpr int kT = 16;               // rows per tile
constexpr int kRG = kT / kHS;        // rows per logit warp (4)
constexpr int kFan = 4;              // merge-tree fan-in
constexpr int kRCMax = 1024;         // rows per block (row-pointer table in shared memory)
constexpr int kIdxInline = 448;      // row indices passed as a kernel parameter up to this
constexpr int kRopeMax = 128;        // rope pairs (n_rot / 2), as cu_rope

struct AttIdx {
    int32_t v[kIdxInline];
};
struct AttRope {
    float c[kRopeMax], s[kRopeMax];  // cos θ_j, -sin θ_j (inverse rotation)
};
struct AttArgs {
    const float *q;       // [n_head][hd]
    const float *ra, *rb; // row bases (backend memory)
    const int32_t *ia;    // [na] device, or NULL: AttIdx.v[0, na)
    const int32_t *ib;    // [nb] device, or NULL: AttIdx.v[na, na + nb)
    const float *sinks;   // [n_head]
    float *out;           // [n_head][hd]
    float *scr;           // tree partials (SCR_ATT)
    unsigned *cnt;        // tree counters (CNT_ATT range)
    int n_head, hd, na, nb, rc, nch, n_hg, n_rot;
    int kv_rot;           // compact rows: n_rot of the layout (as given, even when odd)
    int rbytes;           // compact rows: bytes per row (ds4_kv_attn_row_bytes)
    int cp16;             // compact rows: rows_b is 16-byte aligned (16-byte copies, else 4)
    float scale;
};

__device__ __forceinline__ void cpa16(void *dst, const void *src, bool valid) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    const int sz = valid ? 16 : 0;   // 0: the 16 bytes are zero-filled, nothing is read
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(sz) : "memory");
}
__device__ __forceinline__ void cpa4(void *dst, const void *src, bool valid) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    const int sz = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(s), "l"(src), "r"(sz) : "memory");
}
__device__ __forceinline__ void cpa_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cpa_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

// Sums each of the NV (power of two <= 32) per-lane values over the warp with NV - 1 +
// (5 - log2 NV) shuffles: every halving step sends the half a lane does not keep. Value
// v ends in the lanes with lane >> (5 - log2 NV) == v. Fixed order: deterministic.
// (Template recursion so that every array index is a constant: no local memory.)
template <int CNT, int OFF, int NV>
__device__ __forceinline__ void tsum_step(float (&v)[NV], int lane) {
    if constexpr (CNT > 1) {
        constexpr int half = CNT / 2;
        const bool up = (lane & OFF) != 0;
#pragma unroll
        for (int i = 0; i < half; i++) {
            const float lo = v[i], hi = v[i + half];
            const float send = up ? lo : hi, keep = up ? hi : lo;
            v[i] = keep + __shfl_xor_sync(kFull, send, OFF);
        }
        tsum_step<half, OFF / 2, NV>(v, lane);
    } else if constexpr (OFF > 0) {
        v[0] += __shfl_xor_sync(kFull, v[0], OFF);
        tsum_step<1, OFF / 2, NV>(v, lane);
    }
}
template <int NV>
__device__ __forceinline__ float warp_tsum(float (&v)[NV], int lane) {
    static_assert(NV >= 1 && NV <= 32 && (NV & (NV - 1)) == 0, "NV must be a power of two <= 32");
    tsum_step<NV, 16, NV>(v, lane);
    return v[0];
}

__device__ __forceinline__ int lg_len(int n_l) { return (n_l + kFan - 1) / kFan; }

// Float offset of tree slot (level lvl, head group g, node i): levels are stored one
// after the other, each [n_hg][n_l] records of [m kHG][s kHG][acc kHG·hd].
__device__ __forceinline__ int64_t slot_off(const AttArgs &a, int lvl, int g, int i) {
    int64_t base = 0;
    int n_l = a.nch;
    for (int l = 0; l < lvl; l++) {
        base += (int64_t)a.n_hg * n_l;
        n_l = lg_len(n_l);
    }
    return (base + (int64_t)g * n_l + i) * (2 * kHG + (int64_t)kHG * a.hd);
}
// Counter of node i of level lvl >= 1 for head group g.
__device__ __forceinline__ int cnt_off(const AttArgs &a, int lvl, int g, int i) {
    int base = 0, n_l = lg_len(a.nch);
    for (int l = 1; l < lvl; l++) {
        base += a.n_hg * n_l;
        n_l = lg_len(n_l);
    }
    return base + g * n_l + i;
}

// Exact f32 values of compact-row elements, built from bits (no conversion instruction,
// so every code — E4M3 0x7F included, which kv_fmt.h decodes as 480 — and every NaN
// payload gives ds4_kv_attn_get's value). Needs f32 denormals (no -ftz): the E4M3
// subnormals and f16 subnormals pass through denormal f32 intermediates.
//
// Multiplier pair of the E8M0 byte e of an FP8 block: the element is (bits · f1) · f2,
// where bits has the code's sign, exponent and mantissa fields at the f32 positions
// (value = code · 2^-120). For e <= 134 f1 = 2^(e−7) (a normal float) and f2 = 1: one
// rounding of the exact product code · 2^(e−127), i.e. ds4_kv_e4m3_decode(c) ·
// ds4_kv_e8m0_decode(e) bit for bit; else f1 = 2^120 (exact: the code value) and f2 =
// 2^(e−127) (e = 255: inf, as ds4_kv_exp2i(128)).
__device__ __forceinline__ void e4m3_mults(unsigned e, float &f1, float &f2) {
    const bool lo = e <= 134u;
    f1 = __uint_as_float(lo ? (e + 120u) << 23 : 247u << 23);
    f2 = lo ? 1.0f : __uint_as_float(e << 23);
}
// E4M3 code in byte k of w -> f32 bits: the byte moved to bits 24..31, an arithmetic
// shift by 4 puts its exponent+mantissa at bits 20..26 and copies the sign to bit 31.
template <int K>
__device__ __forceinline__ float e4m3_bits(uint32_t w) {
    return __uint_as_float((uint32_t)((int32_t)(w << (24 - 8 * K)) >> 4) & 0x87F00000u);
}
// f16 bits -> f32, as ds4_kv_f16_to_f32 (finite values scaled from f32 bit positions by
// 2^112, subnormals included; exponent 31 keeps the payload unquieted).
__device__ __forceinline__ float f16_exact(uint32_t h) {
    const uint32_t m = (h & 0x7FFFu) << 13, s = (h & 0x8000u) << 16;
    const float f = m >= 0x0F800000u ? __uint_as_float(m | 0x7F800000u) : __uint_as_float(m) * 0x1p112f;
    return __uint_as_float(__float_as_uint(f) | s);
}

// NE floats per lane per row (hd <= 32·NE); VEC 4: 16-byte copies and loads (hd % 4 == 0,
// aligned bases), VEC 1: scalar (any hd). Row buffers use the natural layout [hdp = 32·NE],
// zero beyond hd. Lane mapping of the logits: VEC 4: floats j·128 + 4·lane + [0,4);
// VEC 1: e·32 + lane. Of p·V: NE/4 consecutive floats at dq·8·NE + lane·NE/4.
// CMP: rows_b are f32 (0) or compact rows decoded element by element with
// ds4_kv_attn_get (1: any shape) or 4 elements at a time (2: VEC 4, hd and
// kv_rot multiples of 4, so a 4-element unit is all codes of one scale block — one 4-byte
// load — or all rope dims — one 8-byte load).
template <int NE, int VEC, int CMP>
__global__ void __launch_bounds__(kAThreads, 1) k_attn_ex(AttArgs a, AttIdx ix, AttRope rope) {
    static_assert(CMP != 2 || VEC == 4, "the vector decoder writes float4s");
    ds4cu::pdl_wait();     // launched with PDL (ds4cu::launch): the previous kernel's
    ds4cu::pdl_trigger();  // outputs are visible only after the wait
    constexpr int hdp = 32 * NE;
    constexpr int NQ = NE / 4;   // p·V floats per lane
    extern __shared__ float4 at_sm4[];
    float *sm = reinterpret_cast<float *>(at_sm4);
    float *buf = sm;                                          // [2][kT][hdp]
    float *mine = buf + 2 * kT * hdp;                         // [kHG][hdp] the block's partial
    float *mine_m = mine + kHG * hdp;                         // [kHG]
    float *mine_s = mine_m + kHG;                             // [kHG]
    float *lgt = mine_s + kHG;                                // [kHG][kT] logits
    float *pw = lgt + kHG * kT;                               // [kT][kHG] weights p
    float *alpha = pw + kT * kHG;                             // [kHG]
    float *wts = alpha + kHG;                                 // [kFan][kHG] merge weights
    const float **rowp = reinterpret_cast<const float **>(wts + kFan * kHG); // [kRCMax]
    uint8_t *stage = reinterpret_cast<uint8_t *>(rowp + kRCMax);   // CMP: [2][kT][rbytes]
    __shared__ int s_last;

    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int c = blockIdx.x, g = blockIdx.y, hd = a.hd;
    const int r0 = c * a.rc, N = a.na + a.nb;
    const int nrow = max(0, min(N - r0, a.rc));
    const int ntile = (nrow + kT - 1) / kT;

    // row pointers of the chunk (index loads off the copy path)
    for (int j = tid; j < nrow; j += kAThreads) {
        const int J = r0 + j;
        const float *p;
        if (J < a.na) p = a.ra + (int64_t)(a.ia ? a.ia[J] : ix.v[J]) * hd;
        else {
            const int64_t wr = a.ib ? a.ib[J - a.na] : ix.v[J];
            if constexpr (CMP != 0) p = reinterpret_cast<const float *>(reinterpret_cast<const uint8_t *>(a.rb) + wr * a.rbytes);
            else p = a.rb + wr * hd;
        }
        rowp[j] = p;
    }
    // q of the logit warp's heads (zero beyond hd and for heads >= n_head)
    const int hs = w & 1, rg = w >> 1;   // logits: head set, row group; p·V: hs, d-quarter rg
    float q[kHS][NE];
#pragma unroll
    for (int h = 0; h < kHS; h++) {
        const int head = g * kHG + hs * kHS + h;
        const bool hv = head < a.n_head;
        const float *qh = a.q + (int64_t)(hv ? head : 0) * hd;
        if constexpr (VEC == 4) {
#pragma unroll
            for (int j = 0; j < NE / 4; j++) {
                const int d = j * 128 + 4 * lane;
                float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
                if (hv && d < hd) t = *reinterpret_cast<const float4 *>(qh + d);
                q[h][4 * j] = t.x;
                q[h][4 * j + 1] = t.y;
                q[h][4 * j + 2] = t.z;
                q[h][4 * j + 3] = t.w;
            }
        } else {
#pragma unroll
            for (int e = 0; e < NE; e++) {
                const int d = e * 32 + lane;
                q[h][e] = hv && d < hd ? qh[d] : 0.0f;
            }
        }
    }
    float acc[kHS][NQ];
#pragma unroll
    for (int h = 0; h < kHS; h++)
#pragma unroll
        for (int i = 0; i < NQ; i++) acc[h][i] = 0.0f;
    float M = -INFINITY, S = 0.0f;   // softmax state of head w (warp w < kHG), uniform
    __syncthreads();                 // rowp visible

    // Compressed rows of tile t in compact mode: tile rows [clo, chi) (the rows of the
    // chunk's list at positions >= na and < nrow); empty for CMP 0. Uniform per block.
    auto crange = [&](int t, int &clo, int &chi) {
        clo = kT;
        chi = kT;
        if constexpr (CMP != 0) {
            clo = min(kT, max(0, a.na - r0 - t * kT));
            chi = max(clo, min(kT, nrow - t * kT));
        }
    };
    auto issue = [&](int t) {
        float *dst = buf + (t & 1) * kT * hdp;
        const int rbase = t * kT;
        int clo, chi;
        crange(t, clo, chi);
        // f32 rows (and zero fill of padding rows / dims); compact rows are skipped here
        if constexpr (VEC == 4) {
            for (int u = tid; u < kT * hdp / 4; u += kAThreads) {
                const int r = u / (hdp / 4), d = (u % (hdp / 4)) * 4;
                if (CMP != 0 && r >= clo && r < chi) continue;
                const bool v = rbase + r < nrow && d < hd;
                cpa16(dst + r * hdp + d, v ? rowp[rbase + r] + d : a.q, v);
            }
        } else {
            for (int u = tid; u < kT * hdp; u += kAThreads) {
                const int r = u / hdp, d = u % hdp;
                if (CMP != 0 && r >= clo && r < chi) continue;
                const bool v = rbase + r < nrow && d < hd;
                cpa4(dst + r * hdp + d, v ? rowp[rbase + r] + d : a.q, v);
            }
        }
        // compact rows: their bytes, contiguous per row, into the staging buffer
        if constexpr (CMP != 0) {
            const int rbytes = a.rbytes, n = (chi - clo) * rbytes;
            uint8_t *sdst = stage + (t & 1) * kT * rbytes + clo * rbytes;
            if (a.cp16) {
                for (int o = tid * 16; o < n; o += kAThreads * 16) {
                    const int r = o / rbytes, off = o - r * rbytes;
                    cpa16(sdst + o, reinterpret_cast<const uint8_t *>(rowp[rbase + clo + r]) + off, true);
                }
            } else {
                for (int o = tid * 4; o < n; o += kAThreads * 4) {
                    const int r = o / rbytes, off = o - r * rbytes;
                    cpa4(sdst + o, reinterpret_cast<const uint8_t *>(rowp[rbase + clo + r]) + off, true);
                }
            }
        }
    };
    // Compact rows of tile t: staging -> f32 tile rows [clo, chi), zero beyond hd. Called
    // by every thread once the tile's copies are visible; the caller syncs afterwards.
    auto decode = [&](int t, float *tb, int clo, int chi) {
        const uint8_t *st = stage + (t & 1) * kT * a.rbytes;
        const int rbytes = a.rbytes;
        if constexpr (CMP == 2) {
            // Thread = one 4-element unit (float4) of a row, the same unit in every row it
            // visits (kAThreads is a multiple of the hdp / 4 units per row), so its kind
            // (codes / rope / zero padding) and offsets are loop invariant; a warp's 32
            // lanes take 32 consecutive units of one row: 4-byte code loads and float4
            // stores without bank conflicts.
            constexpr int kU = hdp / 4, kRS = kAThreads / kU;   // units per row, rows per step
            const int d = 4 * (tid % kU), nq = hd - a.kv_rot;
            const int coff = 2 * a.kv_rot + d, soff = 2 * a.kv_rot + nq + (d >> 6), roff = 2 * (d - nq);
            for (int r = clo + tid / kU; r < chi; r += kRS) {
                const uint8_t *srow = st + r * rbytes;
                float4 v;
                if (d < nq) {   // codes d .. d + 3 of scale block d / 64
                    const uint32_t wd = *reinterpret_cast<const uint32_t *>(srow + coff);
                    const uint32_t e = srow[soff];
                    v = make_float4(e4m3_bits<0>(wd), e4m3_bits<1>(wd), e4m3_bits<2>(wd), e4m3_bits<3>(wd));
                    if (e <= 134u) {   // one rounding of code · 2^(e − 127), see e4m3_mults
                        const float f = __uint_as_float((e + 120u) << 23);
                        v.x *= f;
                        v.y *= f;
                        v.z *= f;
                        v.w *= f;
                    } else {
                        float f1, f2;
                        e4m3_mults(e, f1, f2);
                        v.x = v.x * f1 * f2;
                        v.y = v.y * f1 * f2;
                        v.z = v.z * f1 * f2;
                        v.w = v.w * f1 * f2;
                    }
                } else if (d < hd) {   // rope dims d − nq .. + 3 as f16
                    const uint2 h = *reinterpret_cast<const uint2 *>(srow + roff);
                    v = make_float4(f16_exact(h.x & 0xFFFFu), f16_exact(h.x >> 16), f16_exact(h.y & 0xFFFFu),
                                    f16_exact(h.y >> 16));
                } else {
                    v = make_float4(0.f, 0.f, 0.f, 0.f);
                }
                *reinterpret_cast<float4 *>(tb + r * hdp + d) = v;
            }
        } else if constexpr (CMP == 1) {
            for (int u = tid; u < (chi - clo) * hdp; u += kAThreads) {
                const int r = clo + u / hdp, d = u % hdp;
                tb[r * hdp + d] = d < hd ? ds4_kv_attn_get(st + r * rbytes, hd, a.kv_rot, d) : 0.0f;
            }
        }
    };

    if (ntile > 0) issue(0);
    cpa_commit();
    for (int t = 0; t < ntile; t++) {
        if (t + 1 < ntile) issue(t + 1);   // buffer (t+1)&1 was freed by the barrier ending t-1
        cpa_commit();
        cpa_wait<1>();                     // this thread's copies of tile t are done
        __syncthreads();                   // ... and everyone's
        if constexpr (CMP != 0) {
            int clo, chi;
            crange(t, clo, chi);
            if (clo < chi) {   // uniform
                decode(t, buf + (t & 1) * kT * hdp, clo, chi);
                __syncthreads();
            }
        }
        const float *tb = buf + (t & 1) * kT * hdp;
        // logits: rows rg·kRG + r, heads hs·kHS + h
        {
            float part[kRG * kHS];
#pragma unroll
            for (int r = 0; r < kRG; r++) {
                const float *row = tb + (rg * kRG + r) * hdp;
                float x[NE];
                if constexpr (VEC == 4) {
#pragma unroll
                    for (int j = 0; j < NE / 4; j++) {
                        const float4 t4 = *reinterpret_cast<const float4 *>(row + j * 128 + 4 * lane);
                        x[4 * j] = t4.x;
                        x[4 * j + 1] = t4.y;
                        x[4 * j + 2] = t4.z;
                        x[4 * j + 3] = t4.w;
                    }
                } else {
#pragma unroll
                    for (int e = 0; e < NE; e++) x[e] = row[e * 32 + lane];
                }
#pragma unroll
                for (int h = 0; h < kHS; h++) {
                    float s = 0.0f;
#pragma unroll
                    for (int e = 0; e < NE; e++) s = fmaf(q[h][e], x[e], s);
                    part[r * kHS + h] = s;
                }
            }
            const float tot = warp_tsum<kRG * kHS>(part, lane);
            constexpr int kLanes = 32 / (kRG * kHS);   // lanes holding each sum
            if (lane % kLanes == 0) {
                const int v = lane / kLanes, r = v / kHS, h = v % kHS;
                const int row = rg * kRG + r;
                lgt[(hs * kHS + h) * kT + row] = t * kT + row < nrow ? tot * a.scale : -INFINITY;
            }
        }
        __syncthreads();
        // softmax state: warp w owns head w of the group
        {
            const float l = lane < kT ? lgt[w * kT + lane] : -INFINITY;
            float mt = l;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) mt = fmaxf(mt, __shfl_xor_sync(kFull, mt, o));
            const float Mn = fmaxf(M, mt);   // finite: a tile has at least one row
            const float al = M == -INFINITY ? 0.0f : expf(M - Mn);
            const float p = lane < kT ? expf(l - Mn) : 0.0f;   // exp(-inf) = 0: padding rows
            float ps = p;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) ps += __shfl_xor_sync(kFull, ps, o);
            S = fmaf(S, al, ps);
            M = Mn;
            if (lane < kT) pw[lane * kHG + w] = p;
            if (lane == 0) alpha[w] = al;
        }
        __syncthreads();
        // p·V: heads hs·kHS + h, floats rg·8·NE + lane·NQ + [0, NQ)
        {
            const int d0 = rg * 8 * NE + lane * NQ;
#pragma unroll
            for (int h = 0; h < kHS; h++) {
                const float al = alpha[hs * kHS + h];
#pragma unroll
                for (int i = 0; i < NQ; i++) acc[h][i] *= al;
            }
#pragma unroll 4
            for (int r = 0; r < kT; r++) {
                const float4 p4 = *reinterpret_cast<const float4 *>(pw + r * kHG + hs * kHS);
                const float pp[kHS] = {p4.x, p4.y, p4.z, p4.w};
                const float *row = tb + r * hdp + d0;
                float x[NQ];
                if constexpr (NQ == 4) {
                    const float4 t4 = *reinterpret_cast<const float4 *>(row);
                    x[0] = t4.x;
                    x[1] = t4.y;
                    x[2] = t4.z;
                    x[3] = t4.w;
                } else {
#pragma unroll
                    for (int i = 0; i < NQ; i++) x[i] = row[i];
                }
#pragma unroll
                for (int h = 0; h < kHS; h++)
#pragma unroll
                    for (int i = 0; i < NQ; i++) acc[h][i] = fmaf(pp[h], x[i], acc[h][i]);
            }
        }
        __syncthreads();   // tile buffer, lgt, pw and alpha are free again
    }
    cpa_wait<0>();

    // the block's partial into shared memory
    {
        const int d0 = rg * 8 * NE + lane * NQ;
#pragma unroll
        for (int h = 0; h < kHS; h++)
#pragma unroll
            for (int i = 0; i < NQ; i++) mine[(hs * kHS + h) * hdp + d0 + i] = acc[h][i];
        if (lane == 0) {
            mine_m[w] = M;
            mine_s[w] = S;
        }
    }
    __syncthreads();

    // merge tree over the chunks. Records: [m kHG][s kHG][acc kHG·hd]; acc starts 16
    // floats in and rec is a multiple of 4 floats, so with hd % 4 == 0 (VEC 4) acc rows are
    // float4-aligned and never straddle heads in float4 steps.
    constexpr int W = VEC;                       // floats per access in publish / merge
    constexpr int kMU = 16 / W;                  // accesses per thread per round (all in flight)
    using VT = typename std::conditional<VEC == 4, float4, float>::type;
    const int64_t rec = 2 * kHG + (int64_t)kHG * hd;
    const int nacc = kHG * hd / W;               // accesses per record
    int lvl = 0, node = c, n_l = a.nch;
    while (n_l > 1) {
        float *slot = a.scr + slot_off(a, lvl, g, node);
        for (int e = tid; e < nacc; e += kAThreads) {
            const int f = e * W, hh = f / hd;
            *reinterpret_cast<VT *>(slot + 2 * kHG + f) = *reinterpret_cast<const VT *>(mine + hh * hdp + f - hh * hd);
        }
        if (tid < kHG) {
            slot[tid] = mine_m[tid];
            slot[kHG + tid] = mine_s[tid];
        }
        __threadfence();   // the partial is visible device-wide before the arrival counts
        __syncthreads();
        const int parent = node / kFan, nc = min(kFan, n_l - parent * kFan);
        if (tid == 0) {
            unsigned *ctr = a.cnt + cnt_off(a, lvl + 1, g, parent);
            const unsigned t = atomicAdd(ctr, 1u);
            const bool last = t == (unsigned)(nc - 1);
            if (last) *ctr = 0u;   // every child has arrived: leave the counter at zero
            s_last = last;
        }
        __syncthreads();
        if (!s_last) return;   // uniform: the whole block leaves
        __threadfence();       // acquire: the siblings' partials (read with ld.cg, not via L1)
        const float *ch = a.scr + slot_off(a, lvl, g, parent * kFan);   // children, in order
        if (tid < kHG) {
            float mi[kFan], si[kFan];
#pragma unroll
            for (int i = 0; i < kFan; i++) {
                mi[i] = i < nc ? __ldcg(ch + i * rec + tid) : -INFINITY;
                si[i] = i < nc ? __ldcg(ch + i * rec + kHG + tid) : 0.0f;
            }
            float mm = -INFINITY;
#pragma unroll
            for (int i = 0; i < kFan; i++) mm = fmaxf(mm, mi[i]);
            float ss = 0.0f;
#pragma unroll
            for (int i = 0; i < kFan; i++) {
                const float wi = mi[i] == -INFINITY ? 0.0f : expf(mi[i] - mm);
                wts[i * kHG + tid] = wi;
                if (i < nc) ss = fmaf(si[i], wi, ss);
            }
            mine_m[tid] = mm;
            mine_s[tid] = ss;
        }
        __syncthreads();
        for (int e0 = tid; e0 < nacc; e0 += kAThreads * kMU) {
            VT v[kMU][kFan];
#pragma unroll
            for (int u = 0; u < kMU; u++)
#pragma unroll
                for (int i = 0; i < kFan; i++) {
                    const int e = e0 + u * kAThreads;
                    if (e < nacc && i < nc) v[u][i] = __ldcg(reinterpret_cast<const VT *>(ch + i * rec + 2 * kHG) + e);
                }
#pragma unroll
            for (int u = 0; u < kMU; u++) {
                const int e = e0 + u * kAThreads;
                if (e >= nacc) continue;
                const int f = e * W, hh = f / hd;
                float *dst = mine + hh * hdp + f - hh * hd;
                if constexpr (VEC == 4) {
                    float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
                    for (int i = 0; i < kFan; i++)
                        if (i < nc) {
                            const float wi = wts[i * kHG + hh];
                            s.x = fmaf(wi, v[u][i].x, s.x);
                            s.y = fmaf(wi, v[u][i].y, s.y);
                            s.z = fmaf(wi, v[u][i].z, s.z);
                            s.w = fmaf(wi, v[u][i].w, s.w);
                        }
                    *reinterpret_cast<float4 *>(dst) = s;
                } else {
                    float s = 0.0f;
#pragma unroll
                    for (int i = 0; i < kFan; i++)
                        if (i < nc) s = fmaf(wts[i * kHG + hh], v[u][i], s);
                    *dst = s;
                }
            }
        }
        __syncthreads();
        lvl++;
        node = parent;
        n_l = lg_len(n_l);
    }

    // root: sink, normalisation, inverse rope, store
    if (tid < kHG) {
        const int head = g * kHG + tid;
        float f = 0.0f;
        if (head < a.n_head) {
            const float m = mine_m[tid], sk = a.sinks[head];
            const float m2 = fmaxf(m, sk);
            if (m2 != -INFINITY) {
                const float am = m == -INFINITY ? 0.0f : expf(m - m2);
                const float den = mine_s[tid] * am + expf(sk - m2);
                f = am / den;
            }
        }
        alpha[tid] = f;
    }
    __syncthreads();
    for (int e = tid; e < kHG * hd; e += kAThreads) {
        const int hh = e / hd, d = e % hd;
        mine[hh * hdp + d] *= alpha[hh];
    }
    __syncthreads();
    const int off = hd - a.n_rot, half = a.n_rot / 2;
    for (int e = tid; e < kHG * hd; e += kAThreads) {
        const int hh = e / hd, d = e % hd, head = g * kHG + hh;
        if (head >= a.n_head) continue;
        const float *mh = mine + hh * hdp;
        float o = mh[d];
        const int k = d - off;
        if (k >= 0 && (k >> 1) < half) {
            const int j = k >> 1;
            const float x0 = mh[off + 2 * j], x1 = mh[off + 2 * j + 1], cj = rope.c[j], sj = rope.s[j];
            o = (k & 1) ? __fadd_rn(__fmul_rn(x0, sj), __fmul_rn(x1, cj))
                        : __fsub_rn(__fmul_rn(x0, cj), __fmul_rn(x1, sj));
        }
        a.out[(int64_t)head * hd + d] = o;
    }
}

template <int NE>
constexpr size_t att_smem() {
    return (size_t)(2 * kT * 32 * NE + kHG * 32 * NE + 2 * kHG + kHG * kT + kT * kHG + kHG + kFan * kHG) *
               sizeof(float) +
           (size_t)kRCMax * sizeof(const float *);
}

// Staging bytes of compact rows: 2 tiles of kT rows of rbytes; rbytes <= 2·hd <= 2·32·NE
// (2·n_rot + nq + ceil(nq / 64) <= 2·hd, rounded to 16 within 2·hdp).
template <int NE>
constexpr size_t att_stage_max() {
    return (size_t)2 * kT * 2 * 32 * NE;
}

template <int NE, int VEC, int CMP>
void att_launch(cudaStream_t st, dim3 grid, const AttArgs &a, const AttIdx &ix, const AttRope &rope) {
    constexpr size_t smax = att_smem<NE>() + (CMP != 0 ? att_stage_max<NE>() : 0);
    static const bool attr_ok = [] {
        DS4CU_CK(cudaFuncSetAttribute(k_attn_ex<NE, VEC, CMP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smax));
        return true;
    }();
    (void)attr_ok;
    const size_t smem = att_smem<NE>() + (CMP != 0 ? (size_t)2 * kT * (size_t)a.rbytes : 0);
    DS4_ASSERT(smem <= smax);
    DS4CU_CK(ds4cu::launch(k_attn_ex<NE, VEC, CMP>, grid, dim3(kAThreads), smem, st, a, ix, rope));
}

// The instantiation for (compact, vector path, decoder) at width NE.
template <int NE>
void att_dispatch(cudaStream_t st, dim3 grid, const AttArgs &a, const AttIdx &ix, const AttRope &rope, bool cmp,
                  bool v4, bool fastdec) {
    if (!cmp) {
        if (v4) att_launch<NE, 4, 0>(st, grid, a, ix, rope);
        else att_launch<NE, 1, 0>(st, grid, a, ix, rope);
    } else if (v4 && fastdec) {
        att_launch<NE, 4, 2>(st, grid, a, ix, rope);
    } else if (v4) {   // the f32 path's VEC (its lane mapping fixes the summation order)
        att_launch<NE, 4, 1>(st, grid, a, ix, rope);
    } else {
        att_launch<NE, 1, 1>(st, grid, a, ix, rope);
    }
}

}  // namespace

void ds4cu_topk_dev(ds4_backend *be, const float *score, int n, int k, int32_t *idx) {
    if (k > n) k = n;   // as ds4_topk_host
    if (k <= 0) return;
    cudaStream_t st = ds4cu::stream(be);
    if (n <= kTkCache) {
        static const bool attr_ok = [] {
            DS4CU_CK(cudaFuncSetAttribute(k_topk<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)(kTkHistBytes + (size_t)kTkCache * sizeof(uint32_t))));
            return true;
        }();
        (void)attr_ok;
        DS4CU_CK(ds4cu::launch(k_topk<true>, dim3(1), dim3(kTkThreads), kTkHistBytes + (size_t)n * sizeof(uint32_t), st,
                               score, n, k, idx));
    } else {
        static const bool attr_ok = [] {
            DS4CU_CK(cudaFuncSetAttribute(k_topk<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)kTkHistBytes));
            return true;
        }();
        (void)attr_ok;
        DS4CU_CK(ds4cu::launch(k_topk<false>, dim3(1), dim3(kTkThreads), kTkHistBytes, st, score, n, k, idx));
    }
}

void ds4cu_attention_ex(ds4_backend *be, const float *q, int n_head, int64_t hd, const float *rows_a,
                        const int32_t *ia, int na, const float *rows_b, const int32_t *ib, int nb, bool ib_dev,
                        const float *sinks, float scale, int n_rot, int64_t pos, const float *inv_freq, float *out) {
    if (n_head <= 0 || hd <= 0) return;
    if (na < 0) na = 0;
    if (nb < 0) nb = 0;
    const int half = n_rot > 0 ? n_rot / 2 : 0;
    DS4_ASSERT(half <= kRopeMax && n_rot <= hd);
    if (hd > 512) {
        // Beyond the kernel's register layout: the generic op sequence (ib to the host first
        // when it is device memory; a synchronising read, acceptable for this rare shape).
        std::vector<int32_t> hib;
        const int32_t *pib = ib;
        if (ib_dev && nb > 0) {
            hib.resize((size_t)nb);
            be->read(be, hib.data(), ib, (size_t)nb * sizeof(int32_t));
            pib = hib.data();
        }
        // ds4cu::attention = be->attention with this call's n_rot (the layout's, for compact rows_b)
        ds4cu::attention(be, q, n_head, hd, rows_a, ia, na, rows_b, pib, nb, sinks, scale, n_rot, out);
        be->rope(be, out, hd, n_head, hd, n_rot, pos, inv_freq, true);
        return;
    }
    cudaStream_t st = ds4cu::stream(be);
    AttArgs a;
    memset(&a, 0, sizeof a);
    a.q = q;
    a.ra = rows_a;
    a.rb = rows_b;
    a.sinks = sinks;
    a.out = out;
    a.n_head = n_head;
    a.hd = (int)hd;
    a.na = na;
    a.nb = nb;
    a.n_rot = half > 0 ? n_rot : 0;
    a.scale = scale;

    // Row indices: inline in the parameter block when they fit (no copy at all), else one
    // staged copy of the host ones.
    AttIdx ix;
    const int nhost = na + (ib_dev ? 0 : nb);
    if (nhost <= kIdxInline) {
        if (na > 0) memcpy(ix.v, ia, (size_t)na * sizeof(int32_t));
        if (!ib_dev && nb > 0) memcpy(ix.v + na, ib, (size_t)nb * sizeof(int32_t));
        a.ia = NULL;
        a.ib = ib_dev ? ib : NULL;
    } else if (ib_dev) {
        a.ia = (const int32_t *)ds4cu::stage(be, ia, (size_t)na * sizeof(int32_t));
        a.ib = ib;
    } else {
        // too many host indices for the parameter block: staged copies (no allocation)
        const int32_t *dummy = NULL;
        a.ia = na > 0 ? (const int32_t *)ds4cu::stage(be, ia, (size_t)na * sizeof(int32_t)) : dummy;
        a.ib = nb > 0 ? (const int32_t *)ds4cu::stage(be, ib, (size_t)nb * sizeof(int32_t)) : dummy;
    }
    AttRope rope;
    for (int j = 0; j < half; j++) {   // exactly cu_rope's table, inverse
        const float theta = (float)pos * inv_freq[j];
        rope.c[j] = cosf(theta);
        rope.s[j] = -sinf(theta);
    }

    // Split: one block per SM at most (~90 KiB shared, up to 255 registers per thread);
    // the chunk count fills the SMs for the head groups, chunks a multiple of the tile.
    const int N = na + nb;
    const int n_hg = (n_head + kHG - 1) / kHG;
    int nch = ds4cu::sm_count() / n_hg;
    if (nch < 1) nch = 1;
    const int tiles = (N + kT - 1) / kT;
    if (nch > tiles) nch = tiles > 0 ? tiles : 1;
    if (nch < (N + kRCMax - 1) / kRCMax) nch = (N + kRCMax - 1) / kRCMax;
    int rc = (tiles + nch - 1) / nch * kT;
    if (rc < kT) rc = kT;
    if (rc > kRCMax) rc = kRCMax;
    nch = N > 0 ? (N + rc - 1) / rc : 1;
    a.rc = rc;
    a.nch = nch;
    a.n_hg = n_hg;
    // tree storage: every non-root level's records; counters of every level >= 1
    if (nch > 1) {
        int64_t recs = 0, ctrs = 0;
        for (int n_l = nch; n_l > 1; n_l = (n_l + kFan - 1) / kFan) {
            recs += (int64_t)n_hg * n_l;
            ctrs += (int64_t)n_hg * ((n_l + kFan - 1) / kFan);
        }
        DS4_ASSERT(ctrs <= 1024);   // the CNT_ATT range
        const size_t bytes = (size_t)recs * (size_t)(2 * kHG + kHG * hd) * sizeof(float);
        a.scr = (float *)ds4cu::scratch(be, ds4cu::SCR_ATT, bytes);
        a.cnt = ds4cu::counters(be) + ds4cu::CNT_ATT;
    }
    const dim3 grid((unsigned)nch, (unsigned)n_hg);
    // Compact rows_b only matter when there are some; their base alignment picks the copy
    // width, not the f32 path's (compact rows are bytes, decoded in shared memory).
    const bool cmp = nb > 0 && ds4cu::kv_compact(be);
    const bool v4 = hd % 4 == 0 && ((uintptr_t)q | (uintptr_t)rows_a | (cmp ? 0 : (uintptr_t)rows_b)) % 16 == 0;
    const bool fastdec = hd % 4 == 0 && n_rot % 4 == 0;
    if (cmp) {
        DS4_ASSERT(n_rot >= 0 && (uintptr_t)rows_b % 4 == 0);
        a.kv_rot = n_rot;
        a.rbytes = (int)ds4_kv_attn_row_bytes(hd, n_rot);
        a.cp16 = (uintptr_t)rows_b % 16 == 0;
    }
    if (hd <= 128) att_dispatch<4>(st, grid, a, ix, rope, cmp, v4, fastdec);
    else if (hd <= 256) att_dispatch<8>(st, grid, a, ix, rope, cmp, v4, fastdec);
    else att_dispatch<16>(st, grid, a, ix, rope, cmp, v4, fastdec);
}
