// indexer_n.cu — the batched op indexer_topk (backend.h, "optional batched ops for prefill
// chunks") of the CUDA backend: the lightning-indexer scores of a sub-batch of tokens
// against the compressed indexer keys, then each token's top-k, in a few launches.
//
// Owns: k_keys_bf16 (keys -> bf16 copy), k_idx_tc (scores on the tensor cores, production
// numerics at the Flash shape), k_idx_f32 (scores on the CUDA cores: exact numerics and
// every other shape), k_topk_n (one block per token: radix select + ordered compaction),
// the entry point ds4cu_indexer_topk and the test hook ds4cu_indexer_topk_scores.
// Must not: read device values back to the host, use float atomics, or let a token's value
// depend on the other tokens of the call, on the grid, or on timing: every sum has an order
// fixed by the shapes alone (so chunked prefill and any sub-batching give the same bits).
//
// score_c(t) = scale · Σ_h w[t][h] · relu(⟨q[t][h], K_c⟩) for c < n_vis(t) = (pos0+t+1)/R.
//
// Production path (prod numerics, n_head 64, hd 128 — the Flash indexer): in production q
// comes from hadamard_fp4_sim (values fp4 · 2^e, at most 2 significant bits, any f32
// exponent) and the keys from compress_rows (hadamard_fp4_sim then round_f16: still at most
// 2 significant bits — f16 rounding of such a value is exact or lands on 0 / a power of
// two). Both are therefore exactly representable in bf16 (f32's exponent range), so bf16
// mma.sync with f32 accumulation forms every product exactly and each dot differs from the
// CPU's only by summation order. (Inputs that are not on that grid are rounded to bf16:
// ~2^-9 relative error per element. forward.c never passes such inputs in prod mode.)
//
// Tensor-core tiling (k_idx_tc): a block takes 4 tokens (their 4 x 64 query rows, bf16,
// resident in shared memory) and streams key tiles of 128 rows (bf16, cp.async, 3 stages).
// GEMM view: A = keys [128 keys][128 d] (row-major), B = q^T (q rows are B's columns),
// C [128 keys][256 (token, head)]. Warp (wk, wt) owns keys wk·64..+63 × token wt's 64
// heads: 4 x 8 m16n8k16 tiles = 128 f32 accumulators per lane. Epilogue per tile: each
// lane sums relu(C)·w over its 16 heads (fixed order), two xor-shuffles complete the 64
// heads, and the score row is stored (f32) to scratch. Shared-memory rows are 256 bytes,
// 16-byte chunks XOR-swizzled by (row & 7) so ldmatrix phases are bank-conflict free.
//
// Compact keys (ds4cu::kv_compact: kv_fmt.h FP4 rows with E8M0 block scales): k_keys_bf16
// decodes them (exact) before the bf16 conversion and k_idx_f32 while staging its tiles, so
// both paths see the values of the f32 keys, bit for bit.
//
// Causality: a block's key range ends at the n_vis of its last token; each token stores
// only its c < n_vis(t). Blocks are ordered heaviest first (later tokens see more keys),
// and when there are few token tiles the key range is split over grid.y so the GPU fills.
#include "common.cuh"
#include "cuda_internal.h"
#include "topk_radix.cuh"
#include "backend/kv_fmt.h"

#include <cuda_bf16.h>

extern "C" {
#include "core/common.h"
}

namespace {

constexpr unsigned kFull = 0xffffffffu;

// ---- tensor-core path constants (Flash indexer shape)
constexpr int kTcHeads = 64, kTcHd = 128;   // the only shape this path takes
constexpr int kTcTok = 4;                   // tokens per block
constexpr int kTcKeys = 128;                // keys per tile
constexpr int kTcStages = 3;                // key tiles in flight
constexpr int kTcThreads = 256;             // 8 warps: 2 key halves x 4 tokens
constexpr int kTcRowB = kTcHd * 2;          // bytes of one bf16 row (256)
constexpr size_t kTcQBytes = (size_t)kTcTok * kTcHeads * kTcRowB;   // 64 KiB
constexpr size_t kTcKBytes = (size_t)kTcKeys * kTcRowB;             // 32 KiB per stage
constexpr size_t kTcSmem = kTcQBytes + kTcStages * kTcKBytes + (size_t)kTcTok * kTcHeads * sizeof(float);

// ---- generic f32 path constants
constexpr int kGThreads = 256;
constexpr int kGKeys = 64;     // keys per block (16 key groups x 4)
constexpr int kGHeads = 64;    // heads per pass (16 head groups x 4)
constexpr int kGDc = 64;       // d values per shared-memory chunk
constexpr int kGDp = kGDc + 4; // padded row: key rows 16 apart hit distinct bank quads

// ---- top-k constants (the algorithm of fused_attn.cu's k_topk, one block per token)
constexpr int kTkThreads = 512, kTkWarps = kTkThreads / 32;
constexpr int kTkCache = 36864;          // keys cached in shared memory (144 KiB)
constexpr size_t kTkHistBytes = ds4cu::topk::kHistBytes;

// Score rows larger than this are produced and selected in passes of fewer tokens.
constexpr size_t kPassBytes = (size_t)512 << 20;

__device__ __forceinline__ int64_t n_vis_of(int64_t pos0, int t, int R) { return (pos0 + t + 1) / R; }

// =====================================================================================
// keys -> bf16
// =====================================================================================
// keys [n_keys][128] f32 (or compact rows of krb bytes at kc when kc != NULL) -> kb
// [n_pad][128] bf16, rows >= n_keys zero (so tiles never need a bound check). One thread
// per pair of values.
__global__ void __launch_bounds__(256) k_keys_bf16(const float *__restrict__ keys, const uint8_t *__restrict__ kc,
                                                   int64_t krb, int64_t n_keys, int64_t n_pad,
                                                   uint32_t *__restrict__ kb) {
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    const int64_t n2 = n_pad * (kTcHd / 2), v2 = n_keys * (kTcHd / 2);
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n2; i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t v = 0;
        if (i < v2) {
            float x0, x1;
            if (kc) {   // compact row i / 64, elements 2·(i % 64) and + 1 (exact decode)
                const uint8_t *row = kc + (i / (kTcHd / 2)) * krb;
                const int64_t e = 2 * (i % (kTcHd / 2));
                x0 = ds4_kv_index_get(row, kTcHd, e);
                x1 = ds4_kv_index_get(row, kTcHd, e + 1);
            } else {
                x0 = keys[2 * i];
                x1 = keys[2 * i + 1];
            }
            const __nv_bfloat162 b = __floats2bfloat162_rn(x0, x1);   // .x = low half
            v = *reinterpret_cast<const uint32_t *>(&b);
        }
        kb[i] = v;
    }
}

// =====================================================================================
// tensor-core scores
// =====================================================================================
// Byte offset of 16-byte chunk ch (0..15) of row r in a swizzled 256-byte-row tile.
__device__ __forceinline__ uint32_t swz(int r, int ch) { return (uint32_t)(r * kTcRowB + ((ch ^ (r & 7)) << 4)); }

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// d += a · b, m16n8k16, bf16 inputs, f32 accumulators.
__device__ __forceinline__ void mma_bf16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// q: token t's head h at q + t·qs + h·128; w: token t's weights at w + t·ws; kb: [n_pad][128]
// bf16 keys (n_pad a multiple of 128, covering every key tile); score: row (t − t_beg) at
// score + (t − t_beg)·ss, entries c < n_vis(t). Tokens t_beg .. t_end − 1; block x = token
// tile (heaviest first), block y = key split of kps keys (a multiple of kTcKeys).
__global__ void __launch_bounds__(kTcThreads, 1)
    k_idx_tc(const float *__restrict__ q, int64_t qs, const float *__restrict__ w, int64_t ws, float scale,
             const uint16_t *__restrict__ kb, int R, int64_t pos0, int t_beg, int t_end, int64_t kps,
             float *__restrict__ score, int64_t ss) {
    const int tile = (int)(gridDim.x - 1 - blockIdx.x);   // last token tile (most keys) first
    const int t0 = t_beg + tile * kTcTok;
    const int t_last = min(t0 + kTcTok, t_end) - 1;
    const int64_t nv_blk = n_vis_of(pos0, t_last, R);      // n_vis grows with t
    const int64_t c_lo = (int64_t)blockIdx.y * kps;
    const int64_t c_hi = min(c_lo + kps, nv_blk);
    if (c_lo >= c_hi) return;   // block-uniform; touches no memory
    ds4cu::pdl_wait();          // q and kb are written by earlier kernels
    ds4cu::pdl_trigger();

    extern __shared__ __align__(128) unsigned char sm_tc[];
    unsigned char *sQ = sm_tc;                                   // [4·64 rows][256 B] swizzled
    unsigned char *sK = sm_tc + kTcQBytes;                       // [stages][128 rows][256 B]
    float *sW = (float *)(sm_tc + kTcQBytes + kTcStages * kTcKBytes);   // [4][64]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wk = warp & 1, wt = warp >> 1;                     // key half, token slot
    const int g = lane >> 2, qd = lane & 3;

    // queries and weights of the 4 tokens (absent tokens: zeros), converted to bf16 pairs
    for (int p = tid; p < kTcTok * kTcHeads * kTcHd / 2; p += kTcThreads) {
        const int e = 2 * p, j = e / (kTcHeads * kTcHd), h = (e / kTcHd) % kTcHeads, d = e % kTcHd;
        const int t = t0 + j;
        float a = 0.0f, b = 0.0f;
        if (t < t_end) {
            const float *src = q + (int64_t)t * qs + (int64_t)h * kTcHd + d;
            a = src[0];
            b = src[1];
        }
        const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
        *reinterpret_cast<__nv_bfloat162 *>(sQ + swz(j * kTcHeads + h, d >> 3) + (d & 7) * 2) = v;
    }
    for (int i = tid; i < kTcTok * kTcHeads; i += kTcThreads) {
        const int j = i / kTcHeads, t = t0 + j;
        sW[i] = t < t_end ? w[(int64_t)t * ws + i % kTcHeads] : 0.0f;
    }
    const int tw = t0 + wt;                                       // this warp's token
    const int64_t nv_w = tw < t_end ? n_vis_of(pos0, tw, R) : 0;  // its visible keys
    float *srow = score + (int64_t)(tw - t_beg) * ss;

    const int n_tiles = (int)((c_hi - c_lo + kTcKeys - 1) / kTcKeys);
    const uint32_t sQa = (uint32_t)__cvta_generic_to_shared(sQ);
    const uint32_t sKa = (uint32_t)__cvta_generic_to_shared(sK);
    auto load_tile = [&](int i) {   // tile i -> stage i % kTcStages (16-byte cp.async, 8 per thread)
        unsigned char *dst = sK + (size_t)(i % kTcStages) * kTcKBytes;
        const uint16_t *src = kb + (c_lo + (int64_t)i * kTcKeys) * kTcHd;
        for (int x = tid; x < kTcKeys * 16; x += kTcThreads) {
            const int r = x >> 4, ch = x & 15;
            ds4cu::cp_async16(dst + swz(r, ch), src + (int64_t)r * kTcHd + ch * 8);
        }
    };
#pragma unroll
    for (int s = 0; s < kTcStages - 1; s++) {
        if (s < n_tiles) load_tile(s);
        ds4cu::cp_async_commit();   // possibly empty: keeps the group count uniform
    }

    float acc[4][8][4];
    for (int i = 0; i < n_tiles; i++) {
        ds4cu::cp_async_wait<kTcStages - 2>();   // tile i has landed (this thread's part)
        __syncthreads();                         // ... everyone's; stage (i−1) % S is free
        if (i + kTcStages - 1 < n_tiles) load_tile(i + kTcStages - 1);
        ds4cu::cp_async_commit();

#pragma unroll
        for (int mi = 0; mi < 4; mi++)
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[mi][nt][e] = 0.0f;
        const uint32_t kbase = sKa + (uint32_t)((i % kTcStages) * kTcKBytes);
#pragma unroll
        for (int ks = 0; ks < kTcHd / 16; ks++) {
            // A (keys): m16 tile mi = rows wk·64 + mi·16 + (lane & 15), chunk 2ks + lane/16
            uint32_t a[4][4];
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
                ldsm_x4(kbase + swz(wk * 64 + mi * 16 + (lane & 15), 2 * ks + (lane >> 4)), a[mi][0], a[mi][1],
                        a[mi][2], a[mi][3]);
#pragma unroll
            for (int nj = 0; nj < 4; nj++) {
                // B (q rows = n): n-tiles 2nj, 2nj+1 of token wt; matrices (tile, k half) in
                // the order (2nj, lo), (2nj, hi), (2nj+1, lo), (2nj+1, hi)
                uint32_t b0, b1, b2, b3;
                ldsm_x4(sQa + swz(wt * kTcHeads + nj * 16 + ((lane >> 4) << 3) + (lane & 7), 2 * ks + ((lane >> 3) & 1)),
                        b0, b1, b2, b3);
#pragma unroll
                for (int mi = 0; mi < 4; mi++) {
                    mma_bf16(acc[mi][2 * nj], a[mi], b0, b1);
                    mma_bf16(acc[mi][2 * nj + 1], a[mi], b2, b3);
                }
            }
        }

        // epilogue: C element (mi, nt, e) is key wk·64 + mi·16 + g + 8·(e >> 1), head
        // nt·8 + 2·qd + (e & 1). Lane sums its 16 heads, then xor 1, 2 over qd.
        float wv[16];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            const float2 ww = *reinterpret_cast<const float2 *>(sW + wt * kTcHeads + nt * 8 + 2 * qd);
            wv[2 * nt] = ww.x;
            wv[2 * nt + 1] = ww.y;
        }
        float keep0 = 0.0f, keep1 = 0.0f;   // lane qd keeps m16 tile mi == qd (rows g, g + 8)
#pragma unroll
        for (int mi = 0; mi < 4; mi++) {
#pragma unroll
            for (int rh = 0; rh < 2; rh++) {
                float s = 0.0f;
#pragma unroll
                for (int nt = 0; nt < 8; nt++) {
                    const float x0 = acc[mi][nt][2 * rh], x1 = acc[mi][nt][2 * rh + 1];
                    // as the CPU, only dt > 0 adds (so w·0 never meets an inf/NaN w);
                    // fused multiply-add: one rounding less, within the summation bound
                    if (x0 > 0.0f) s = fmaf(x0, wv[2 * nt], s);
                    if (x1 > 0.0f) s = fmaf(x1, wv[2 * nt + 1], s);
                }
                s += __shfl_xor_sync(kFull, s, 1);
                s += __shfl_xor_sync(kFull, s, 2);
                if (mi == qd) {
                    if (rh == 0) keep0 = s;
                    else keep1 = s;
                }
            }
        }
        const int64_t c0 = c_lo + (int64_t)i * kTcKeys + wk * 64 + qd * 16 + g;
        if (c0 < nv_w) srow[c0] = keep0 * scale;
        if (c0 + 8 < nv_w) srow[c0 + 8] = keep1 * scale;
    }
    ds4cu::cp_async_wait<0>();   // no copy may outlive the block (only empty groups remain)
}

// =====================================================================================
// generic f32 scores (CUDA cores)
// =====================================================================================
// Same inputs as k_idx_tc with f32 keys [n_vis_max][hd] (or compact rows of krb bytes at
// kc when kc != NULL, decoded while staging). Block (key tile x, token y):
// thread (head group hg = tid/16, key group kg = tid%16) accumulates heads hg + 16r (r < 4)
// x keys kg + 16j (j < 4) over d in a fixed ascending order (chunks of 64, float4 steps;
// padding columns are 0·0). Heads go in passes of 64; per pass the head sum is the
// thread's 4 heads, one xor-16 shuffle, then the 8 warps in order; passes add in order.
__global__ void __launch_bounds__(kGThreads)
    k_idx_f32(const float *__restrict__ q, int64_t qs, const float *__restrict__ w, int64_t ws, float scale, int nh,
              int hd, const float *__restrict__ keys, const uint8_t *__restrict__ kc, int64_t krb, int R, int64_t pos0,
              int t_beg, float *__restrict__ score, int64_t ss) {
    const int t = t_beg + (int)blockIdx.y;
    const int64_t nv = n_vis_of(pos0, t, R);
    const int64_t c0 = (int64_t)blockIdx.x * kGKeys;
    if (c0 >= nv) return;   // block-uniform; touches no memory
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    __shared__ __align__(16) float sq[kGHeads * kGDp];
    __shared__ __align__(16) float sk[kGKeys * kGDp];
    __shared__ float part[kGThreads / 32][kGKeys];
    const int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5, kg = tid & 15, hg = tid >> 4;
    const int nk = (int)min((int64_t)kGKeys, nv - c0);
    const float *qt = q + (int64_t)t * qs;
    const float *wt = w + (int64_t)t * ws;
    float tot = 0.0f;   // thread tid < kGKeys: key c0 + tid, over the head passes
    for (int h0 = 0; h0 < nh; h0 += kGHeads) {
        float acc[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[r][j] = 0.0f;
        for (int d0 = 0; d0 < hd; d0 += kGDc) {
            const int dw = min(kGDc, hd - d0), dw4 = (dw + 3) & ~3;
            __syncthreads();   // the previous chunk / pass is read by everyone
            for (int i = tid; i < kGHeads * dw4; i += kGThreads) {
                const int r = i / dw4, c = i % dw4;
                sq[r * kGDp + c] = h0 + r < nh && c < dw ? qt[(int64_t)(h0 + r) * hd + d0 + c] : 0.0f;
            }
            for (int i = tid; i < kGKeys * dw4; i += kGThreads) {
                const int r = i / dw4, c = i % dw4;
                float v = 0.0f;
                if (r < nk && c < dw)
                    v = kc ? ds4_kv_index_get(kc + (c0 + r) * krb, hd, d0 + c) : keys[(c0 + r) * hd + d0 + c];
                sk[r * kGDp + c] = v;
            }
            __syncthreads();
            for (int c = 0; c < dw4; c += 4) {
                float4 qv[4], kv[4];
#pragma unroll
                for (int r = 0; r < 4; r++) qv[r] = *reinterpret_cast<const float4 *>(sq + (hg + 16 * r) * kGDp + c);
#pragma unroll
                for (int j = 0; j < 4; j++) kv[j] = *reinterpret_cast<const float4 *>(sk + (kg + 16 * j) * kGDp + c);
#pragma unroll
                for (int r = 0; r < 4; r++)
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        float a = acc[r][j];
                        a = fmaf(qv[r].x, kv[j].x, a);
                        a = fmaf(qv[r].y, kv[j].y, a);
                        a = fmaf(qv[r].z, kv[j].z, a);
                        a = fmaf(qv[r].w, kv[j].w, a);
                        acc[r][j] = a;
                    }
            }
        }
        float p[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float s = 0.0f;
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int h = h0 + hg + 16 * r;
                if (h < nh && acc[r][j] > 0.0f) s += acc[r][j] * wt[h];   // as the CPU: only dt > 0 adds
            }
            p[j] = s + __shfl_xor_sync(kFull, s, 16);
        }
        if (lane < 16)
#pragma unroll
            for (int j = 0; j < 4; j++) part[wp][kg + 16 * j] = p[j];
        __syncthreads();
        if (tid < kGKeys) {
            float s = 0.0f;
            for (int x = 0; x < kGThreads / 32; x++) s += part[x][tid];
            tot += s;
        }
        // part is rewritten only after the next pass's first barrier
    }
    if (tid < nk) score[(int64_t)(t - t_beg) * ss + c0 + tid] = tot * scale;
}

// =====================================================================================
// batched top-k: one block per token
// =====================================================================================
// The selection (semantics of ds4_topk_host, radix select + ordered compaction) is
// ds4cu::topk::select_row (topk_radix.cuh), the algorithm of fused_attn.cu's k_topk. This
// kernel's choices: blocks of kTkThreads (512, launch bounds for two blocks per SM),
// keys cached in shared memory when n_vis <= kTkCache, one key per lane per compaction step.

// score: row b (token t_beg + b) at score + b·ss with n = n_vis(t) > k entries; idx row t at
// idx + t·k (backend memory).
template <bool CACHE>
__global__ void __launch_bounds__(kTkThreads, 2)
    k_topk_n(const float *__restrict__ score, int64_t ss, int R, int64_t pos0, int t_beg, int k,
             int32_t *__restrict__ idx) {
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    extern __shared__ uint32_t tk_sm[];
    uint32_t *hist = tk_sm;                                                  // [kCopies][kStride]
    uint32_t *cache = tk_sm + ds4cu::topk::kCopies * ds4cu::topk::kStride;   // [n] keys when CACHE
    __shared__ ds4cu::topk::Workspace<kTkWarps> ws;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int t = t_beg + (int)blockIdx.x;
    const int n = (int)n_vis_of(pos0, t, R);
    const float *sc = score + (int64_t)blockIdx.x * ss;
    int32_t *out = idx + (int64_t)t * k;
    ds4cu::topk::select_row<kTkThreads, CACHE, 1>(sc, n, k, out, tid, lane, w, hist, cache, ws);
}

// =====================================================================================
// host side
// =====================================================================================
// What one call does: tokens [t_first, n_tok) select (n_vis > k); keys [0, nv_max) are read.
struct Plan {
    int t_first = 0;
    int64_t nv_max = 0;
    int64_t ss = 0;      // score row stride (floats)
    bool tc = false;     // the tensor-core path
    int64_t n_pad = 0;   // bf16 key rows (tc)
    int pass = 0;        // tokens per pass
};

bool make_plan(ds4_backend *be, int n_head, int64_t hd, int R, int64_t pos0, int n_tok, int k, Plan *pl) {
    if (n_tok <= 0 || k <= 0 || R <= 0 || n_head <= 0 || hd <= 0 || pos0 < 0) return false;
    const int64_t tf = (int64_t)(k + 1) * R - 1 - pos0;   // n_vis(t) > k  <=>  t >= tf
    if (tf >= n_tok) return false;
    pl->t_first = tf > 0 ? (int)tf : 0;
    pl->nv_max = (pos0 + n_tok) / R;
    DS4_ASSERT(pl->nv_max < INT32_MAX && hd < INT32_MAX);   // idx entries are int32
    pl->ss = (pl->nv_max + 3) / 4 * 4;
    pl->tc = !ds4cu::exact(be) && n_head == kTcHeads && hd == kTcHd;
    pl->n_pad = (pl->nv_max + kTcKeys - 1) / kTcKeys * kTcKeys;
    const int n_sel = n_tok - pl->t_first;
    int64_t pass = (int64_t)(kPassBytes / ((size_t)pl->ss * sizeof(float)));
    pass = pass / kTcTok * kTcTok;
    if (pass < kTcTok) pass = kTcTok;
    if (pass > 65535) pass = 65535 / kTcTok * kTcTok;   // grid.y of the f32 path
    pl->pass = pass < n_sel ? (int)pass : n_sel;
    return true;
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

// Compact key rows' bytes (0: f32 keys).
int64_t key_bytes(ds4_backend *be, int64_t hd) { return (int64_t)ds4cu::kv_bytes(be, DS4_KV_ROW_INDEX, hd, 0); }

// The bf16 key copy (tc path) into kb.
void launch_keys(ds4_backend *be, const float *keys, const Plan &pl, uint16_t *kb) {
    const int64_t krb = key_bytes(be, kTcHd);
    const int64_t pairs = pl.n_pad * (kTcHd / 2);
    int64_t blocks = (pairs + 255) / 256;
    if (blocks > 4 * (int64_t)ds4cu::sm_count() * 8) blocks = 4 * (int64_t)ds4cu::sm_count() * 8;
    DS4CU_CK(ds4cu::launch(k_keys_bf16, dim3((unsigned)blocks), dim3(256), 0, ds4cu::stream(be), krb ? nullptr : keys,
                           krb ? (const uint8_t *)keys : nullptr, krb, pl.nv_max, pl.n_pad,
                           reinterpret_cast<uint32_t *>(kb)));
}

// Scores of tokens [tb, te) into rows (t − tb) of score (stride pl.ss).
void launch_scores(ds4_backend *be, const float *q, int64_t qs, const float *w, int64_t ws, float scale, int n_head,
                   int64_t hd, const float *keys, const uint16_t *kb, int R, int64_t pos0, int tb, int te,
                   const Plan &pl, float *score) {
    cudaStream_t st = ds4cu::stream(be);
    const int64_t nv_hi = (pos0 + te) / R;   // the last token's n_vis: the widest row
    if (pl.tc) {
        static const bool attr_ok = [] {
            DS4CU_CK(cudaFuncSetAttribute(k_idx_tc, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kTcSmem));
            return true;
        }();
        (void)attr_ok;
        const int tiles = (te - tb + kTcTok - 1) / kTcTok;
        const int64_t ktiles = (nv_hi + kTcKeys - 1) / kTcKeys;
        // split the key range when the token tiles alone do not fill the GPU twice over
        int64_t splits = ((int64_t)2 * ds4cu::sm_count() + tiles - 1) / tiles;
        if (splits > ktiles) splits = ktiles;
        if (splits < 1) splits = 1;
        const int64_t kps = (ktiles + splits - 1) / splits * kTcKeys;
        const int64_t gy = (ktiles * kTcKeys + kps - 1) / kps;
        DS4CU_CK(ds4cu::launch(k_idx_tc, dim3((unsigned)tiles, (unsigned)gy), dim3(kTcThreads), kTcSmem, st, q, qs, w,
                               ws, scale, kb, R, pos0, tb, te, kps, score, pl.ss));
    } else {
        const int64_t gx = (nv_hi + kGKeys - 1) / kGKeys;
        const int64_t krb = key_bytes(be, hd);
        DS4CU_CK(ds4cu::launch(k_idx_f32, dim3((unsigned)gx, (unsigned)(te - tb)), dim3(kGThreads), 0, st, q, qs, w,
                               ws, scale, n_head, (int)hd, krb ? nullptr : keys, krb ? (const uint8_t *)keys : nullptr,
                               krb, R, pos0, tb, score, pl.ss));
    }
}

void launch_topk(ds4_backend *be, const float *score, const Plan &pl, int R, int64_t pos0, int tb, int te, int k,
                 int32_t *idx) {
    cudaStream_t st = ds4cu::stream(be);
    const int64_t nv_hi = (pos0 + te) / R;
    if (nv_hi <= kTkCache) {
        static const bool attr_ok = [] {
            DS4CU_CK(cudaFuncSetAttribute(k_topk_n<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)(kTkHistBytes + (size_t)kTkCache * sizeof(uint32_t))));
            return true;
        }();
        (void)attr_ok;
        DS4CU_CK(ds4cu::launch(k_topk_n<true>, dim3((unsigned)(te - tb)), dim3(kTkThreads),
                               kTkHistBytes + (size_t)nv_hi * sizeof(uint32_t), st, score, pl.ss, R, pos0, tb, k, idx));
    } else {
        static const bool attr_ok = [] {
            DS4CU_CK(cudaFuncSetAttribute(k_topk_n<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)kTkHistBytes));
            return true;
        }();
        (void)attr_ok;
        DS4CU_CK(ds4cu::launch(k_topk_n<false>, dim3((unsigned)(te - tb)), dim3(kTkThreads), kTkHistBytes, st, score,
                               pl.ss, R, pos0, tb, k, idx));
    }
}

}  // namespace

// q: token t's n_head rows of hd at q + t·qs; w: [n_tok] rows of n_head at stride ws;
// keys: [(pos0 + n_tok) / R][hd] (compact rows when kv_compact); idx: [n_tok][k] int32
// (backend memory).
void ds4cu_indexer_topk(ds4_backend *be, const float *q, int64_t qs, const float *w, int64_t ws, float scale,
                        int n_head, int64_t hd, const float *keys, int R, int64_t pos0, int n_tok, int k, int32_t *idx) {
    Plan pl;
    if (!make_plan(be, n_head, hd, R, pos0, n_tok, k, &pl)) return;   // no token selects
    const size_t kb_bytes = pl.tc ? align256((size_t)pl.n_pad * kTcHd * sizeof(uint16_t)) : 0;
    const size_t sc_bytes = (size_t)pl.pass * (size_t)pl.ss * sizeof(float);
    unsigned char *scr = (unsigned char *)ds4cu::scratch(be, ds4cu::SCR_IDX, kb_bytes + sc_bytes);
    uint16_t *kb = pl.tc ? (uint16_t *)scr : nullptr;
    float *score = (float *)(scr + kb_bytes);
    if (pl.tc) launch_keys(be, keys, pl, kb);
    // One pass at a time through the score rows (stream order + pdl_wait before any write
    // keep a pass's scores until its top-k has read them).
    for (int tb = pl.t_first; tb < n_tok; tb += pl.pass) {
        const int te = n_tok - tb < pl.pass ? n_tok : tb + pl.pass;
        launch_scores(be, q, qs, w, ws, scale, n_head, hd, keys, kb, R, pos0, tb, te, pl, score);
        launch_topk(be, score, pl, R, pos0, tb, te, k, idx);
    }
}

// Test hook (tests/cuda/ops_idxn.cu): the scores indexer_topk selects from, same kernels
// and partition: for each selecting token t (n_vis(t) > k), score[t·ss + c] for c < n_vis(t);
// other entries untouched. score: backend memory of n_tok·ss floats, ss >= (pos0+n_tok)/R.
void ds4cu_indexer_topk_scores(ds4_backend *be, const float *q, int64_t qs, const float *w, int64_t ws, float scale,
                               int n_head, int64_t hd, const float *keys, int R, int64_t pos0, int n_tok, int k,
                               float *score, int64_t ss) {
    Plan pl;
    if (!make_plan(be, n_head, hd, R, pos0, n_tok, k, &pl)) return;
    DS4_ASSERT(ss >= pl.nv_max);
    uint16_t *kb = nullptr;
    if (pl.tc) {
        kb = (uint16_t *)ds4cu::scratch(be, ds4cu::SCR_IDX, align256((size_t)pl.n_pad * kTcHd * sizeof(uint16_t)));
        launch_keys(be, keys, pl, kb);
    }
    Plan one = pl;
    one.ss = ss;
    launch_scores(be, q, qs, w, ws, scale, n_head, hd, keys, kb, R, pos0, pl.t_first, n_tok, one,
                  score + (int64_t)pl.t_first * ss);
}
