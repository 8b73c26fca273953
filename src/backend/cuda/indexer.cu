// indexer.cu — the lightning-indexer scores op (backend.h indexer_scores) on the GPU.
//
// Owns: score[c] = scale · Σ_h w[h] · max(0, ⟨q_h, K_c⟩) for every compressed key c.
// Must not: select rows (topk / topk_dev do) or know the layer order.
//
// Why a tile kernel: the first version gave each key one warp that reduced 64 head dots
// by shuffles (64 five-step reductions per key: 29 µs for 1024 keys on an H200). Here a
// block takes KT keys into shared memory; thread (head h, key group g) accumulates the
// dot products of head h with its KPT keys in registers (q rows padded by one float so a
// warp's 32 heads hit 32 banks; key values are warp-wide broadcasts), applies the relu
// and the head weight, and the head sum is a fixed shuffle tree then a fixed order over
// warps and head passes: deterministic, independent of the grid.
//
// Compact keys (ds4cu::kv_compact: kv_fmt.h indexer rows, FP4 E2M1 codes + E8M0 scale per
// 32, 80 bytes for Flash's hd 128 instead of 512): the tile load decodes them into the
// same f32 key tile, so the dot products see the values the f32 rows would hold and the
// scores are bit-identical to the f32 path on the decoded keys. Fast decoder (hd % 16 ==
// 0, 8-byte aligned keys): one 8-byte load of 16 codes plus the block's scale byte per
// thread and step, each code -> f32 bits (two shifts and a mask) times a power of two.
#include "common.cuh"
#include "cuda_internal.h"
#include "backend/kv_fmt.h"

extern "C" {
#include "core/common.h"
}

namespace {

constexpr int kThreads = 256;
constexpr int kHeadsPerPass = 64;                     // threads along heads
constexpr int kGroups = kThreads / kHeadsPerPass;     // key groups (4)
constexpr int kKPT = 8;                               // keys per thread
constexpr int kKT = kGroups * kKPT;                   // keys per block (32)
constexpr int kWarpsPerGroup = kHeadsPerPass / 32;    // 2

// Floats of the padded q block in shared memory, rounded up to 4 so the key tile after
// it is 16-byte aligned.
__host__ __device__ inline size_t sq_floats(int n_head, int hd) { return ((size_t)n_head * (hd + 1) + 3) & ~(size_t)3; }

// Exact value of E2M1 code nibble K of w (element K of the 8 in this word) times the
// block scale, as ds4_kv_e2m1_decode(c) · ds4_kv_e8m0_decode(e): the nibble moved to bits
// 28..31, an arithmetic shift by 6 puts its exponent+mantissa at the f32 bits 22..24
// (value = code · 2^-126, subnormal for 0 and 0.5) and copies the sign to bit 31; then
// (bits · f1) · f2 with f1 = 2^(e−1), f2 = 1 for e <= 128 (one rounding of the exact
// product, as the reference's), else f1 = 2^126 (the code value, exact) and f2 = 2^(e−127)
// (e = 255: inf, as ds4_kv_exp2i(128)). Needs f32 denormals (no -ftz).
template <int K>
__device__ __forceinline__ float e2m1_val(uint32_t w, float f1, float f2) {
    return __uint_as_float((uint32_t)((int32_t)(w << (28 - 4 * K)) >> 6) & 0x81C00000u) * f1 * f2;
}

// q: [n_head][hd], w: [n_head], keys: [n_keys][hd] f32 (CMP 0) or [n_keys] compact rows of
// rbytes bytes (CMP 1: any hd, element by element with ds4_kv_index_get; CMP 2: hd % 16 ==
// 0 and keys 8-byte aligned, 16 codes a step — a group never straddles a scale block),
// score: [n_keys].
// Shared memory: q padded [n_head][hd + 1] (then up to 3 floats to a multiple of 4), the
// key tile [kKT][hd], partial sums [kGroups][kWarpsPerGroup][kKPT].
template <int CMP>
__global__ void __launch_bounds__(kThreads) k_indexer_tile(const float *__restrict__ q, const float *__restrict__ w,
                                                           float scale, int n_head, int hd,
                                                           const float *__restrict__ keys, int n_keys, int rbytes,
                                                           float *__restrict__ score) {
    ds4cu::pdl_wait();     // launched with PDL (ds4cu::launch): the previous kernel's
    ds4cu::pdl_trigger();  // outputs are visible only after the wait
    extern __shared__ float4 sm4[];
    float *sm = reinterpret_cast<float *>(sm4);
    const int qs = hd + 1;
    float *sq = sm;                                   // [n_head][qs]
    float *sk = sq + sq_floats(n_head, hd);           // [kKT][hd]
    __shared__ float part[kGroups][kWarpsPerGroup][kKPT];
    const int tid = threadIdx.x, lane = tid & 31;
    const int hh = tid % kHeadsPerPass, g = tid / kHeadsPerPass, wg = hh / 32;
    const int64_t c0 = (int64_t)blockIdx.x * kKT;
    const int nk = (int)min((int64_t)kKT, (int64_t)n_keys - c0);

    // every load of the block first: q (all heads) and the key tile
    for (int i = tid; i < n_head * hd; i += kThreads) sq[(i / hd) * qs + i % hd] = q[i];
    if constexpr (CMP == 0) {
        for (int i = tid; i < nk * hd; i += kThreads) sk[i] = keys[c0 * hd + i];
    } else {
        const uint8_t *kb = reinterpret_cast<const uint8_t *>(keys) + c0 * rbytes;
        if constexpr (CMP == 2) {
            const int ng = hd >> 4, so = hd >> 1;   // groups per key, scales offset
            for (int u = tid; u < nk * ng; u += kThreads) {
                const int c = u / ng, k = u - c * ng;
                const uint8_t *row = kb + (int64_t)c * rbytes;
                const uint2 cw = __ldg(reinterpret_cast<const uint2 *>(row + 8 * k));
                const uint32_t e = __ldg(row + so + (k >> 1));
                const bool lo = e <= 128u;
                const float f1 = __uint_as_float(lo ? (e + 126u) << 23 : 253u << 23);
                const float f2 = lo ? 1.0f : __uint_as_float(e << 23);
                float4 *dst = reinterpret_cast<float4 *>(sk + c * hd + 16 * k);
                dst[0] = make_float4(e2m1_val<0>(cw.x, f1, f2), e2m1_val<1>(cw.x, f1, f2), e2m1_val<2>(cw.x, f1, f2),
                                     e2m1_val<3>(cw.x, f1, f2));
                dst[1] = make_float4(e2m1_val<4>(cw.x, f1, f2), e2m1_val<5>(cw.x, f1, f2), e2m1_val<6>(cw.x, f1, f2),
                                     e2m1_val<7>(cw.x, f1, f2));
                dst[2] = make_float4(e2m1_val<0>(cw.y, f1, f2), e2m1_val<1>(cw.y, f1, f2), e2m1_val<2>(cw.y, f1, f2),
                                     e2m1_val<3>(cw.y, f1, f2));
                dst[3] = make_float4(e2m1_val<4>(cw.y, f1, f2), e2m1_val<5>(cw.y, f1, f2), e2m1_val<6>(cw.y, f1, f2),
                                     e2m1_val<7>(cw.y, f1, f2));
            }
        } else {
            for (int i = tid; i < nk * hd; i += kThreads) {
                const int c = i / hd, d = i - c * hd;
                sk[i] = ds4_kv_index_get(kb + (int64_t)c * rbytes, hd, d);
            }
        }
    }
    __syncthreads();

    float tot = 0.0f;  // threads hh < kKPT of group g: key g*kKPT + hh, summed over head passes
    for (int h0 = 0; h0 < n_head; h0 += kHeadsPerPass) {
        const int h = h0 + hh;
        float acc[kKPT];
#pragma unroll
        for (int j = 0; j < kKPT; j++) acc[j] = 0.0f;
        if (h < n_head) {
            const float *qh = sq + (size_t)h * qs;
            const float *kb = sk + (size_t)g * kKPT * hd;
            for (int i = 0; i < hd; i++) {
                const float qv = qh[i];
#pragma unroll
                for (int j = 0; j < kKPT; j++) acc[j] = fmaf(qv, kb[j * hd + i], acc[j]);
            }
        }
        const float wh = h < n_head ? w[h] : 0.0f;
#pragma unroll
        for (int j = 0; j < kKPT; j++) {
            float v = h < n_head ? fmaxf(acc[j], 0.0f) * wh : 0.0f;
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            acc[j] = v;
        }
        if (lane == 0)
#pragma unroll
            for (int j = 0; j < kKPT; j++) part[g][wg][j] = acc[j];
        __syncthreads();
        if (hh < kKPT) {
            float s = 0.0f;
            for (int k = 0; k < kWarpsPerGroup; k++) s += part[g][k][hh];
            tot += s;
        }
        __syncthreads();
    }
    if (hh < kKPT) {
        const int c = g * kKPT + hh;
        if (c < nk) score[c0 + c] = tot * scale;
    }
}

template <int CMP>
void launch_tile(ds4_backend *be, size_t smem, unsigned blocks, const float *q, const float *w, float scale,
                 int n_head, int hd, const float *keys, int n_keys, int rbytes, float *score) {
    static size_t raised = 48 * 1024;  // this instantiation's dynamic shared-memory limit so far
    if (smem > raised) {
        DS4CU_CK(cudaFuncSetAttribute(k_indexer_tile<CMP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        raised = smem;
    }
    DS4CU_CK(ds4cu::launch(k_indexer_tile<CMP>, dim3(blocks), dim3(kThreads), smem, ds4cu::stream(be), q, w, scale,
                           n_head, hd, keys, n_keys, rbytes, score));
}

}  // namespace

void ds4cu_indexer_scores(ds4_backend *be, const float *q, const float *w, float scale, int n_head, int64_t hd,
                          const float *keys, int n_keys, float *score) {
    if (n_keys <= 0 || n_head <= 0 || hd <= 0) return;
    const size_t smem = (sq_floats(n_head, (int)hd) + (size_t)kKT * hd) * sizeof(float);
    const bool cmp = ds4cu::kv_compact(be);
    const int rbytes = cmp ? (int)ds4_kv_index_row_bytes(hd) : 0;
    const int kind = !cmp ? 0 : hd % 16 == 0 && (uintptr_t)keys % 8 == 0 ? 2 : 1;
    const unsigned blocks = (unsigned)((n_keys + kKT - 1) / kKT);
    if (kind == 0) launch_tile<0>(be, smem, blocks, q, w, scale, n_head, (int)hd, keys, n_keys, rbytes, score);
    else if (kind == 2) launch_tile<2>(be, smem, blocks, q, w, scale, n_head, (int)hd, keys, n_keys, rbytes, score);
    else launch_tile<1>(be, smem, blocks, q, w, scale, n_head, (int)hd, keys, n_keys, rbytes, score);
}
