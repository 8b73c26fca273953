// topk_radix.cuh — the block-wide top-k selection of one score row shared by the CUDA
// top-k kernels (fused_attn.cu: k_topk, one row per launch; indexer_n.cu: k_topk_n, one
// row per block of a batched launch).
//
// Owns: the order-preserving float key (key), the radix select over it and the ordered
// compaction (select_row), and the shared-memory layout they need (histogram sizes,
// Workspace). Must not: launch anything, pick block sizes or cache thresholds (those are
// the kernels' choices, passed in as template parameters), or let a result depend on
// timing: counts are integer atomics, every scan has a fixed order.
//
// Selection semantics of ds4_topk_host (cpu_backend.c, better()): higher score first,
// equal scores (x == y, so -0 == +0) to the lower index, every NaN below everything
// (-inf included) and NaNs equal among themselves. key() maps a float to a uint32 whose
// unsigned order is exactly that value order (NaN -> 0, ±0 -> one key), so "the k
// largest keys, ties to the lower index" is the same set.
//
// Algorithm (one block of THREADS threads per row):
//  1. radix select over the key in digits of 11, 11, 10 bits (a 2048-bin shared
//     histogram; 8 copies indexed by lane & 7 so that concentrated digits — scores share
//     a few exponents — serialise at most 4 lanes per address). Each pass finds the bin
//     holding the krem-th largest among the keys matching the prefix so far; it stops
//     early when that bin is taken whole. Result: prefix P of the top (32 - sh) bits,
//     and `need` = how many keys with (key >> sh) == P to take (the lowest indices).
//  2. ordered compaction: warp w owns the index range [w·per, (w+1)·per); a first sweep
//     counts "greater" and "equal" per warp, one exclusive scan over the warps gives
//     each warp its output offset and equal-rank base, a second sweep writes the
//     selected indices with ballot prefix counts: ascending index order, no sort.
// With CACHE the first pass stores the keys in shared memory and later passes read them
// there; else every pass re-reads the scores (L2-resident: the scores were just written).
//
// Block contract: every thread of the block calls select_row with block-uniform
// arguments (it contains __syncthreads and full-warp shuffles / ballots).
#ifndef DS4_CUDA_TOPK_RADIX_CUH
#define DS4_CUDA_TOPK_RADIX_CUH

#include <stddef.h>
#include <stdint.h>

#include "common.cuh"

namespace ds4cu {
namespace topk {

constexpr int kCopies = 8, kBins = 2048;
constexpr int kStride = kBins + 4;   // copy c starts 4 banks after copy c-1
constexpr size_t kHistBytes = (size_t)kCopies * kStride * sizeof(uint32_t);

// The static shared-memory part (the histogram and key cache are the caller's dynamic
// shared memory). WARPS = THREADS / 32.
template <int WARPS>
struct Workspace {
    uint32_t wsum[WARPS], wscan[WARPS], sel[3], gt[WARPS], eq[WARPS];
};

__device__ __forceinline__ uint32_t key(float x) {
    const uint32_t u = __float_as_uint(x);
    if (x != x) return 0u;                 // NaN: ranks last; all NaNs tie
    if (x == 0.0f) return 0x80000000u;     // -0 == +0
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

template <bool CACHE>
__device__ __forceinline__ uint32_t get(const float *__restrict__ score, const uint32_t *cache, int i) {
    if (CACHE) return cache[i];
    return key(__ldg(score + i));
}

// The keys of indices b0 + 32u + lane (u < CU) below end, 0 past it: both compaction
// sweeps read the same CU per lane, all loads issued first.
template <bool CACHE, int CU>
__device__ __forceinline__ void load_keys(const float *score, const uint32_t *cache, int64_t b0, int64_t end,
                                          int lane, uint32_t kk[CU]) {
#pragma unroll
    for (int u = 0; u < CU; u++) {
        const int64_t i = b0 + u * 32 + lane;
        kk[u] = i < end ? get<CACHE>(score, cache, (int)i) : 0u;
    }
}

// out[0..k) = the indices of the k largest of score[0..n) (order above), ascending.
// 1 <= k <= n. THREADS = blockDim.x (a multiple of 32 dividing kBins / 2, so 1024 or
// 512 or less); CU = keys per lane per compaction step (a kernel's load batching choice).
// hist: kCopies·kStride words of shared memory; cache: n words of shared memory when
// CACHE (unused otherwise); ws: the block's Workspace.
template <int THREADS, bool CACHE, int CU>
__device__ __forceinline__ void select_row(const float *__restrict__ score, int n, int k, int32_t *__restrict__ out,
                                           int tid, int lane, int w, uint32_t *hist, uint32_t *cache,
                                           Workspace<THREADS / 32> &ws) {
    constexpr unsigned kFull = 0xffffffffu;
    constexpr int kWarps = THREADS / 32;
    constexpr int kMaxBpt = kBins / THREADS;   // histogram bins per thread in an 11-bit pass
    static_assert(THREADS % 32 == 0 && kWarps <= 32 && kMaxBpt >= 2 && kBins % THREADS == 0, "block size");

    uint32_t P = 0;      // prefix of the determined top bits
    int sh = 32;         // (key >> sh) is compared with P; 32 = nothing determined yet
    int krem = k;        // how many of the keys with (key >> sh) == P are still to take
    for (int p = 0; p < 3; p++) {
        const int dsh = p == 0 ? 21 : p == 1 ? 10 : 0, bits = p == 2 ? 10 : 11, nb = 1 << bits;
        for (int i = tid; i < kCopies * kStride; i += THREADS) hist[i] = 0;
        __syncthreads();
        uint32_t *h = hist + (lane & (kCopies - 1)) * kStride;
        if (p == 0) {
            // all loads of a thread's 8 elements first: one memory round trip per 8
            for (int i0 = tid; i0 < n; i0 += 8 * THREADS) {
                float v[8];
#pragma unroll
                for (int u = 0; u < 8; u++) {
                    const int i = i0 + u * THREADS;
                    v[u] = i < n ? __ldg(score + i) : 0.0f;
                }
#pragma unroll
                for (int u = 0; u < 8; u++) {
                    const int i = i0 + u * THREADS;
                    if (i < n) {
                        const uint32_t kv = key(v[u]);
                        if (CACHE) cache[i] = kv;
                        atomicAdd(&h[kv >> dsh], 1u);
                    }
                }
            }
        } else {
            const uint32_t msk = (uint32_t)nb - 1;
            for (int i0 = tid; i0 < n; i0 += 8 * THREADS) {
                uint32_t kk[8];
#pragma unroll
                for (int u = 0; u < 8; u++) {
                    const int i = i0 + u * THREADS;
                    kk[u] = i < n ? get<CACHE>(score, cache, i) : 0u;
                }
#pragma unroll
                for (int u = 0; u < 8; u++) {
                    const int i = i0 + u * THREADS;
                    if (i < n && (kk[u] >> sh) == P) atomicAdd(&h[(kk[u] >> dsh) & msk], 1u);
                }
            }
        }
        __syncthreads();
        // Bins in descending order: thread t owns ranks [t·bpt, (t+1)·bpt), rank r = bin
        // nb-1-r. A block-wide scan of the per-thread totals gives each rank's count of
        // keys in higher bins; the one rank where that count < krem <= count + its own
        // holds the krem-th largest.
        const int bpt = nb / THREADS;
        uint32_t cnt[kMaxBpt], local = 0;
#pragma unroll
        for (int q = 0; q < kMaxBpt; q++) {
            cnt[q] = 0;
            if (q < bpt) {
                const int b = nb - 1 - (tid * bpt + q);
                uint32_t c = 0;
#pragma unroll
                for (int cp = 0; cp < kCopies; cp++) c += hist[cp * kStride + b];
                cnt[q] = c;
                local += c;
            }
        }
        uint32_t incl = local;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const uint32_t t = __shfl_up_sync(kFull, incl, o);
            if (lane >= o) incl += t;
        }
        if (lane == 31) ws.wsum[w] = incl;
        __syncthreads();
        if (w == 0) {
            uint32_t v = lane < kWarps ? ws.wsum[lane] : 0u;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const uint32_t t = __shfl_up_sync(kFull, v, o);
                if (lane >= o) v += t;
            }
            if (lane < kWarps) ws.wscan[lane] = v;
        }
        __syncthreads();
        uint32_t ex = (w > 0 ? ws.wscan[w - 1] : 0u) + incl - local;
#pragma unroll
        for (int q = 0; q < kMaxBpt; q++) {
            if (q < bpt) {
                if (ex < (uint32_t)krem && ex + cnt[q] >= (uint32_t)krem) {   // exactly one thread
                    ws.sel[0] = (uint32_t)(nb - 1 - (tid * bpt + q));
                    ws.sel[1] = ex;
                    ws.sel[2] = cnt[q];
                }
                ex += cnt[q];
            }
        }
        __syncthreads();
        P = (sh == 32 ? 0u : P << bits) | ws.sel[0];
        sh = dsh;
        krem -= (int)ws.sel[1];
        if ((uint32_t)krem == ws.sel[2]) break;   // the whole bin is taken (uniform)
    }
    // (ws.sel is rewritten only after two more barriers of the next pass, and never after
    // the loop, so every thread has read it before it changes.)

    // ---- ordered compaction: warp w owns indices [w·per, (w+1)·per)
    const int64_t per = (((int64_t)n + kWarps - 1) / kWarps + 31) / 32 * 32;
    const int64_t beg = (int64_t)w * per;
    const int64_t end = beg + per < n ? beg + per : (int64_t)n;
    const uint32_t lt = (1u << lane) - 1u;
    uint32_t cg = 0, ce = 0;
    for (int64_t b0 = beg; b0 < end; b0 += 32 * CU) {
        uint32_t kk[CU];
        load_keys<CACHE, CU>(score, cache, b0, end, lane, kk);
#pragma unroll
        for (int u = 0; u < CU; u++) {
            const int64_t i = b0 + u * 32 + lane;
            const bool v = i < end;
            const uint32_t hi = sh == 32 ? 0u : kk[u] >> sh;
            cg += __popc(__ballot_sync(kFull, v && hi > P));
            ce += __popc(__ballot_sync(kFull, v && hi == P));
        }
    }
    if (lane == 0) {
        ws.gt[w] = cg;
        ws.eq[w] = ce;
    }
    __syncthreads();
    uint32_t g = lane < kWarps ? ws.gt[lane] : 0u, e = lane < kWarps ? ws.eq[lane] : 0u;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const uint32_t tg = __shfl_up_sync(kFull, g, o), te = __shfl_up_sync(kFull, e, o);
        if (lane >= o) {
            g += tg;
            e += te;
        }
    }
    const uint32_t need = (uint32_t)krem;
    const uint32_t gw = __shfl_sync(kFull, g, w) - ws.gt[w];   // "greater" in warps < w
    uint32_t seen = __shfl_sync(kFull, e, w) - ws.eq[w];       // "equal" in warps < w
    uint32_t pos = gw + (seen < need ? seen : need);
    for (int64_t b0 = beg; b0 < end; b0 += 32 * CU) {
        uint32_t kk[CU];
        load_keys<CACHE, CU>(score, cache, b0, end, lane, kk);
#pragma unroll
        for (int u = 0; u < CU; u++) {
            const int64_t i = b0 + u * 32 + lane;
            const bool v = i < end;
            const uint32_t hi = sh == 32 ? 0u : kk[u] >> sh;
            const bool gt = v && hi > P, eq = v && hi == P;
            const uint32_t me = __ballot_sync(kFull, eq);
            const bool sel = gt || (eq && seen + __popc(me & lt) < need);
            const uint32_t ms = __ballot_sync(kFull, sel);
            if (sel) out[pos + __popc(ms & lt)] = (int32_t)i;
            pos += __popc(ms);
            seen += __popc(me);
        }
    }
}

}  // namespace topk
}  // namespace ds4cu

#endif  // DS4_CUDA_TOPK_RADIX_CUH
