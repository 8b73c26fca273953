// topk_vals.cu — the optional op topk_vals of the CUDA backend (backend.h): the top-k of a
// logits row selected on the device, so that 8·k bytes cross PCIe instead of the row
// (129,280 floats = 517 KB for Flash).
//
// Owns: k_argmax_part / k_argmax_final (k = 1: a grid-wide argmax), k_topk_part /
// k_topk_final (2 <= k <= 8: a grid-wide top-k), k_gather (values of topk_dev's indices)
// and ds4cu_topk_vals. Must not: differ from ds4_topk_host's selection
// (the k largest, ties to the lower index, NaN below every number, −0 == +0: the order of
// ds4cu::topk::key), or depend on timing (fixed partition, fixed reduction order).
//
// k = 1: block b scans the elements b·256 + t + j·(grid·256) keeping the largest packed
// (key(x) << 32 | ~index) — the unsigned maximum of that word is the largest key with the
// lowest index —, reduces it over the block, and k_argmax_final reduces the blocks' words.
// 2 <= k <= 8: the k largest packed words, which are the top-k (words are distinct): each
// thread keeps its KT >= k largest in registers (a compare-swap chain), each block
// extracts its KT largest (KT rounds of a block maximum, the owner popping it), and one
// block does the same over the blocks' lists, then orders the first k by index (the
// one-block radix select of topk_dev took ~130 µs for Flash's 129,280 logits).
// k > 8: ds4cu_topk_dev (one-block radix select, ascending index order), then a gather.
// Every way one read of the results to the host.
#include "common.cuh"
#include "cuda_internal.h"
#include "topk_radix.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 132;   // one wave on an H200; the partition depends on n only

__device__ __forceinline__ unsigned long long pack(float x, int i) {
    return ((unsigned long long)ds4cu::topk::key(x) << 32) | (unsigned long long)(0xFFFFFFFFu - (uint32_t)i);
}

__device__ __forceinline__ unsigned long long block_max(unsigned long long v, unsigned long long *sw) {
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long u = __shfl_xor_sync(0xffffffffu, v, o);
        v = u > v ? u : v;
    }
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) sw[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < (int)(blockDim.x >> 5) ? sw[lane] : 0ull;
        for (int o = 16; o > 0; o >>= 1) {
            const unsigned long long u = __shfl_xor_sync(0xffffffffu, v, o);
            v = u > v ? u : v;
        }
    }
    return v;   // valid in warp 0
}

// x [n] -> part [gridDim.x] packed words
__global__ void __launch_bounds__(kThreads) k_argmax_part(const float *__restrict__ x, int n,
                                                          unsigned long long *__restrict__ part) {
    __shared__ unsigned long long sw[kThreads / 32];
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    unsigned long long best = 0ull;   // below every packed word of an index < 2^32 − 1
    for (int i = blockIdx.x * kThreads + threadIdx.x; i < n; i += gridDim.x * kThreads) {
        const unsigned long long v = pack(__ldg(x + i), i);
        best = v > best ? v : best;
    }
    best = block_max(best, sw);
    if (threadIdx.x == 0) part[blockIdx.x] = best;
}

// part [nb] -> out: int32 index, then the f32 value x[index]
__global__ void __launch_bounds__(32) k_argmax_final(const float *__restrict__ x,
                                                     const unsigned long long *__restrict__ part, int nb,
                                                     int32_t *__restrict__ out) {
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    unsigned long long best = 0ull;
    for (int b = threadIdx.x; b < nb; b += 32) best = part[b] > best ? part[b] : best;
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long u = __shfl_xor_sync(0xffffffffu, best, o);
        best = u > best ? u : best;
    }
    if (threadIdx.x == 0) {
        const int i = (int)(0xFFFFFFFFu - (uint32_t)(best & 0xFFFFFFFFull));
        out[0] = i;
        out[1] = __float_as_int(x[i]);
    }
}

// The words of a thread's list l[0] >= l[1] >= ... (KT of them) after offering v.
template <int KT>
__device__ __forceinline__ void offer(unsigned long long (&l)[KT], unsigned long long v) {
#pragma unroll
    for (int j = 0; j < KT; j++)
        if (v > l[j]) {
            const unsigned long long t = l[j];
            l[j] = v;
            v = t;
        }
}

// The KT largest words over the block's lists (descending) into out[0 .. KT) (thread 0).
template <int KT>
__device__ __forceinline__ void block_top(unsigned long long (&l)[KT], unsigned long long *sw,
                                          unsigned long long *s_max, unsigned long long *out) {
    for (int r = 0; r < KT; r++) {
        const unsigned long long m = block_max(l[0], sw);
        if (threadIdx.x == 0) *s_max = m;
        __syncthreads();
        const unsigned long long mm = *s_max;
        if (threadIdx.x == 0) out[r] = mm;
        if (l[0] == mm && mm != 0ull) {   // the owner (words are distinct) pops its head
#pragma unroll
            for (int j = 0; j + 1 < KT; j++) l[j] = l[j + 1];
            l[KT - 1] = 0ull;
        }
        __syncthreads();   // s_max and sw are rewritten by the next round
    }
}

// x [n] -> part [gridDim.x][KT] packed words (each block's KT largest, descending)
template <int KT>
__global__ void __launch_bounds__(kThreads) k_topk_part(const float *__restrict__ x, int n,
                                                        unsigned long long *__restrict__ part) {
    __shared__ unsigned long long sw[kThreads / 32], s_max;
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    unsigned long long l[KT];
#pragma unroll
    for (int j = 0; j < KT; j++) l[j] = 0ull;
    for (int i = blockIdx.x * kThreads + threadIdx.x; i < n; i += gridDim.x * kThreads) offer<KT>(l, pack(__ldg(x + i), i));
    block_top<KT>(l, sw, &s_max, part + (size_t)blockIdx.x * KT);
}

// part [nb][KT] -> out: k int32 indices in ascending order, then their k f32 values
template <int KT>
__global__ void __launch_bounds__(kThreads) k_topk_final(const float *__restrict__ x,
                                                         const unsigned long long *__restrict__ part, int nw, int k,
                                                         int32_t *__restrict__ out) {
    __shared__ unsigned long long sw[kThreads / 32], s_max, top[KT];
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    unsigned long long l[KT];
#pragma unroll
    for (int j = 0; j < KT; j++) l[j] = 0ull;
    for (int i = threadIdx.x; i < nw; i += kThreads) offer<KT>(l, part[i]);
    block_top<KT>(l, sw, &s_max, top);
    if (threadIdx.x == 0) {
        int32_t id[KT];
        for (int j = 0; j < k; j++) id[j] = (int32_t)(0xFFFFFFFFu - (uint32_t)(top[j] & 0xFFFFFFFFull));
        for (int j = 1; j < k; j++)   // ascending index order (k <= 8: insertion)
            for (int i = j; i > 0 && id[i - 1] > id[i]; i--) {
                const int32_t t = id[i];
                id[i] = id[i - 1];
                id[i - 1] = t;
            }
        for (int j = 0; j < k; j++) {
            out[j] = id[j];
            out[k + j] = __float_as_int(x[id[j]]);
        }
    }
}

template <int KT>
void topk_small(cudaStream_t st, const float *x, int n, int k, int nb, unsigned long long *part, int32_t *out) {
    DS4CU_CK(ds4cu::launch(k_topk_part<KT>, dim3((unsigned)nb), dim3(kThreads), 0, st, x, n, part));
    DS4CU_CK(ds4cu::launch(k_topk_final<KT>, dim3(1), dim3(kThreads), 0, st, x, (const unsigned long long *)part,
                           nb * KT, k, out));
}

// vals[j] = x[idx[j]], j < k
__global__ void __launch_bounds__(kThreads) k_gather(const float *__restrict__ x, const int32_t *__restrict__ idx,
                                                     int k, float *__restrict__ vals) {
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    const int j = blockIdx.x * kThreads + threadIdx.x;
    if (j < k) vals[j] = x[idx[j]];
}

}  // namespace

// x: [n] backend memory; ids, vals: [k] host, ascending index order (backend.h topk_vals).
void ds4cu_topk_vals(ds4_backend *be, const float *x, int n, int k, int32_t *ids, float *vals) {
    if (k > n) k = n;
    if (k <= 0) return;
    cudaStream_t st = ds4cu::stream(be);
    if (k == 1) {
        int nb = (n + kThreads * 4 - 1) / (kThreads * 4);   // >= 4 elements per thread
        if (nb > kMaxBlocks) nb = kMaxBlocks;
        if (nb < 1) nb = 1;
        uint8_t *scr = (uint8_t *)ds4cu::scratch(be, ds4cu::SCR_TOPKV, (size_t)nb * 8 + 8);
        unsigned long long *part = (unsigned long long *)scr;
        int32_t *out = (int32_t *)(scr + (size_t)nb * 8);
        DS4CU_CK(ds4cu::launch(k_argmax_part, dim3((unsigned)nb), dim3(kThreads), 0, st, x, n, part));
        DS4CU_CK(ds4cu::launch(k_argmax_final, dim3(1), dim3(32), 0, st, x, (const unsigned long long *)part, nb, out));
        int32_t host[2];
        be->read(be, host, out, sizeof host);
        ids[0] = host[0];
        memcpy(&vals[0], &host[1], sizeof(float));
        return;
    }
    if (k <= 8) {
        const int kt = k <= 2 ? 2 : k <= 4 ? 4 : 8;
        int nb = (n + kThreads * 4 - 1) / (kThreads * 4);   // >= 4 elements per thread
        if (nb > kMaxBlocks) nb = kMaxBlocks;
        if (nb < 1) nb = 1;
        uint8_t *scr = (uint8_t *)ds4cu::scratch(be, ds4cu::SCR_TOPKV, (size_t)nb * kt * 8 + (size_t)k * 8);
        unsigned long long *part = (unsigned long long *)scr;
        int32_t *out = (int32_t *)(scr + (size_t)nb * kt * 8);
        if (kt == 2) topk_small<2>(st, x, n, k, nb, part, out);
        else if (kt == 4) topk_small<4>(st, x, n, k, nb, part, out);
        else topk_small<8>(st, x, n, k, nb, part, out);
        int32_t host[16];
        be->read(be, host, out, (size_t)k * 8);
        memcpy(ids, host, (size_t)k * sizeof(int32_t));
        memcpy(vals, host + k, (size_t)k * sizeof(float));
        return;
    }
    uint8_t *scr = (uint8_t *)ds4cu::scratch(be, ds4cu::SCR_TOPKV, (size_t)k * 8);
    int32_t *di = (int32_t *)scr;
    float *dv = (float *)(scr + (size_t)k * 4);
    ds4cu_topk_dev(be, x, n, k, di);
    DS4CU_CK(ds4cu::launch(k_gather, dim3((unsigned)((k + kThreads - 1) / kThreads)), dim3(kThreads), 0, st, x,
                           (const int32_t *)di, k, dv));
    be->read(be, ids, di, (size_t)k * sizeof(int32_t));
    be->read(be, vals, dv, (size_t)k * sizeof(float));
}
