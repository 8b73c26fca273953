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
#include "common.cuh"
#include "cuda_internal.h"

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

// q: [n_head][hd], w: [n_head], keys: [n_keys][hd], score: [n_keys].
// Shared memory: q padded [n_head][hd + 1], the key tile [kKT][hd], partial sums
// [kGroups][kWarpsPerGroup][kKPT].
__global__ void __launch_bounds__(kThreads) k_indexer_tile(const float *__restrict__ q, const float *__restrict__ w,
                                                           float scale, int n_head, int hd,
                                                           const float *__restrict__ keys, int n_keys,
                                                           float *__restrict__ score) {
    ds4cu::pdl_wait();     // launched with PDL (ds4cu::launch): the previous kernel's
    ds4cu::pdl_trigger();  // outputs are visible only after the wait
    extern __shared__ float sm[];
    const int qs = hd + 1;
    float *sq = sm;                                   // [n_head][qs]
    float *sk = sq + (size_t)n_head * qs;             // [kKT][hd]
    __shared__ float part[kGroups][kWarpsPerGroup][kKPT];
    const int tid = threadIdx.x, lane = tid & 31;
    const int hh = tid % kHeadsPerPass, g = tid / kHeadsPerPass, wg = hh / 32;
    const int64_t c0 = (int64_t)blockIdx.x * kKT;
    const int nk = (int)min((int64_t)kKT, (int64_t)n_keys - c0);

    // every load of the block first: q (all heads) and the key tile
    for (int i = tid; i < n_head * hd; i += kThreads) sq[(i / hd) * qs + i % hd] = q[i];
    for (int i = tid; i < nk * hd; i += kThreads) sk[i] = keys[c0 * hd + i];
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

}  // namespace

void ds4cu_indexer_scores(ds4_backend *be, const float *q, const float *w, float scale, int n_head, int64_t hd,
                          const float *keys, int n_keys, float *score) {
    if (n_keys <= 0 || n_head <= 0 || hd <= 0) return;
    const size_t smem = ((size_t)n_head * (hd + 1) + (size_t)kKT * hd) * sizeof(float);
    static size_t raised = 48 * 1024;  // the dynamic shared-memory limit set so far
    if (smem > raised) {
        DS4CU_CK(cudaFuncSetAttribute(k_indexer_tile, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        raised = smem;
    }
    const unsigned blocks = (unsigned)((n_keys + kKT - 1) / kKT);
    DS4CU_CK(ds4cu::launch(k_indexer_tile, dim3(blocks), dim3(kThreads), smem, ds4cu::stream(be), q, w, scale, n_head, (int)hd,
                           keys, n_keys, score));
}
