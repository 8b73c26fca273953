// mmf16.cu — tensor-core products of F16 weights with f32 activations (cuda_mmq.h:
// ds4_cuda_mmf16), the prefill path of the F16 projections (compressor / indexer
// projections, router gate, HC mixing) that the matvec kernel runs on CUDA cores.
//
// Owns: Y = W·X for many activation rows with f16 mma.sync m16n8k16 (f32 accumulate),
// emulating the f32 dot of the CPU reference. Must not: allocate device memory,
// synchronize, repack weights, use float atomics, or know tensor roles.
//
// Numerics (why the result is f32-accurate): the k axis is cut into steps of 64. For every
// (activation row t, step s) the kernel picks a power of two 2^e from the largest finite
// |x| of those 64 values (so it sits in [2^14, 2^15): far inside f16 range), and splits
// v = x·2^e (exact) into hi = f16(v), lo = f16(v − hi) (v − hi is exact in f32). Then
// |v − hi − lo| <= 2^-22·|v| + 2^-25 (f16 unit roundoff 2^-11, twice; 2^-25 = half the
// f16 subnormal step). Weights are used as stored (exact f16), products of f16 are exact
// in the tensor core. Per (output, step) the step sum C = Σ W·hi + W·lo is formed by 8
// chained mmas from zero (k16 by k16, hi then lo), then acc = fma(C, 2^-e, acc) (one f32
// rounding; the product is exact). So per output, with S = ceil(k/64) steps and m_s the
// step maxima:
//   |y − Σ w·x| <= 2^-22·Σ|w·x| + 2^-39·Σ_s m_s·Σ_{c in s}|w_c|      (representation)
//                + 8·δ·Σ|w·x|                                       (tensor-core adds)
//                + S·2^-24·Σ|w·x|                                   (f32 accumulation)
// where δ is the relative error of one mma addition (products aligned to the largest
// exponent with truncation: δ <= 2^-22 on sm_80/sm_90 by the published models). The
// worst case (2^-17.4·Σ|w·x| at k = 4096) is 32x tighter than the f32 dot's own
// k·2^-24·Σ|w·x|; with mixed signs the errors are random and ~2^-27·Σ|w·x| in practice.
// Steps are scaled separately (not whole rows): a huge value spoils only its own step's
// small values, and no pre-pass or buffer is needed. A step whose values are all zero or
// below 2^-112 uses e = 126 (the 2^-25 term is then < 2^-150: below f32 resolution).
// Non-finite x: NaN stays NaN (hi = NaN, lo = 0); ±Inf gives hi = ±Inf, lo = 0, so the
// output is what the IEEE sum of the w·x terms gives (±Inf, or NaN from 0·Inf or
// Inf − Inf), like a dot product.
//
// Determinism: every output is computed by one thread with the same operation sequence
// (step order, mma order inside a step, the per-(row, step) scale) whatever the tile
// configuration, the batch or the position in it: results are bit-identical for every
// config (DS4_MMF16_CFG) and a row alone equals the row in a batch.
//
// Design: one block = BM = 32·WM weight rows x BN = 32·WN activation rows, WM·WN warps of
// 32x32 (two m16 x four n8 tiles; weights are the A operand). Per k-step of 64:
//  * weights: 16-byte cp.async global -> shared (zero-fill past n and k), rows of 128
//    bytes with 16-byte chunks XOR-swizzled by row & 7 (conflict-free ldmatrix);
//  * activations: 16 threads per row each load a float4 (4 floats when x is not 16-byte
//    aligned), the 16-lane max gives the scale, hi / lo are stored swizzled like the
//    weights, one f32 2^-e per row;
//  * two stages: the next step's weights (cp.async) and activations (registers) are
//    loaded before the current step's mmas and the converted rows stored after them, so
//    one barrier per step suffices. The first weight step is issued before pdl_wait().
// Configs (WM, WN) in {4, 2} x {2, 1}: WM = 4 where the grid still fills the GPU (the x
// tile is converted once per 128 rows), else WM = 2; WN = 1 for <= 32 rows.
// Known limit: one step of lookahead. With few row tiles (n <= 256) the whole grid holds
// only ~T·64 floats of x in flight per row tile, so a step costs about one memory latency
// (~0.7 us) and e.g. 24 x 16384 (256 steps) is latency-bound; a k-split over warps (the
// step order then fixed per (n, k)) or deeper x prefetch would lift it.
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_mmq.h"

extern "C" {
#include "model/ggml_type.h"
}

using namespace ds4cu;

namespace {

constexpr int kStep = 64;  // k per step (the scale granularity: part of the numerics)

struct Params {
    const uint16_t *w;  // [n][k] f16 bits, 16-byte aligned rows
    const float *x;     // activation row t at x + t·xs
    int64_t xs;
    float *y;           // output row t at y + t·ys
    int64_t ys;
    int n, k, n_rows, nks;
    int vec;            // x and xs allow float4 loads
};

template <int WM, int WN>
struct Cfg {
    static constexpr int BM = 32 * WM, BN = 32 * WN, NTHR = 32 * WM * WN;
    static constexpr int TPP = NTHR / 16;        // activation rows per staging pass
    static constexpr int V = BN / TPP;           // float4 per thread per step (16 / WM)
    static constexpr int WCH = BM * 8 / NTHR;    // weight chunks per thread per step (8 / WN)
    static constexpr int O_XH = BM * 128;        // f16 [BN][64] hi, swizzled
    static constexpr int O_XL = O_XH + BN * 128; // f16 [BN][64] lo
    static constexpr int O_INV = O_XL + BN * 128;  // f32 [BN] 2^-e
    static constexpr int STAGE = O_INV + BN * 4;
    static constexpr int BYTES = 2 * STAGE;
};

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16-byte cp.async; src_bytes 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16_zfill(uint32_t dst, const void *src, uint32_t src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// C += A·B, 16x8x16 f16 -> f32.
__device__ __forceinline__ void mma_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t h2_bits(__half2 h) { return *reinterpret_cast<uint32_t *>(&h); }

// Weight rows [row0, row0 + BM) x k-step s into stage `st` (zeros past n and k).
template <int WM, int WN>
__device__ __forceinline__ void stage_w(const Params &P, uint32_t st, int row0, int nrow, int s, int tid) {
    using C = Cfg<WM, WN>;
    const int kb = s * kStep;
#pragma unroll
    for (int i = 0; i < C::WCH; i++) {
        const int q = tid + i * C::NTHR, r = q >> 3, c = q & 7;
        const bool ok = r < nrow && kb + 8 * c < P.k;
        const uint16_t *src = ok ? P.w + (int64_t)(row0 + r) * P.k + kb + 8 * c : P.w;
        cp_async16_zfill(st + r * 128 + ((c ^ (r & 7)) << 4), src, ok ? 16u : 0u);
    }
}

// Activation values of step s for this thread: rows p·TPP + xt, floats 4·xj .. 4·xj + 3.
template <int WM, int WN>
__device__ __forceinline__ void load_x(const Params &P, float4 (&xr)[Cfg<WM, WN>::V], int tok0, int ntok, int s, int xt,
                                       int xj) {
    using C = Cfg<WM, WN>;
    const int kc = s * kStep + 4 * xj;
#pragma unroll
    for (int p = 0; p < C::V; p++) {
        const int t = p * C::TPP + xt;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (t < ntok && kc < P.k) {  // k % 8 == 0: the 4 floats are all inside the row
            const float *src = P.x + (int64_t)(tok0 + t) * P.xs + kc;
            if (P.vec) {
                v = *(const float4 *)src;
            } else {
                v.x = src[0];
                v.y = src[1];
                v.z = src[2];
                v.w = src[3];
            }
        }
        xr[p] = v;
    }
}

// Scale, split and store the loaded values into stage `st` (see the numerics above).
// Every thread must call it (16-lane shuffles).
template <int WM, int WN>
__device__ __forceinline__ void store_x(uint8_t *st, const float4 (&xr)[Cfg<WM, WN>::V], int xt, int xj) {
    using C = Cfg<WM, WN>;
#pragma unroll
    for (int p = 0; p < C::V; p++) {
        const int t = p * C::TPP + xt;
        const float f[4] = {xr[p].x, xr[p].y, xr[p].z, xr[p].w};
        uint32_t a[4], m = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            a[i] = __float_as_uint(f[i]) & 0x7fffffffu;
            m = max(m, a[i]);
        }
        const bool nf = m >= 0x7f800000u;  // some ±Inf / NaN: the scale ignores them
        if (nf) {
            m = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) m = a[i] < 0x7f800000u ? max(m, a[i]) : m;
        }
        // largest finite magnitude of the row's 64 values (16 lanes; bits order like values)
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
        // m in [2^(E-127), 2^(E-126)) -> m·2^e in [2^14, 2^15) for e = 141 - E; e <= 126 so
        // that 2^e and 2^-e are normal floats (zero / tiny rows: e = 126); e >= -113.
        const int e = min(141 - (int)(m >> 23), 126);
        const float sc = __uint_as_float((uint32_t)(127 + e) << 23);
        const float inv = __uint_as_float((uint32_t)(127 - e) << 23);
        float v[4], r[4];
#pragma unroll
        for (int i = 0; i < 4; i++) v[i] = __fmul_rn(f[i], sc);  // exact: |v| < 2^15
        const __half2 h01 = __floats2half2_rn(v[0], v[1]), h23 = __floats2half2_rn(v[2], v[3]);
        const float2 b01 = __half22float2(h01), b23 = __half22float2(h23);
        r[0] = __fsub_rn(v[0], b01.x);  // exact (v − f16(v) fits in f32)
        r[1] = __fsub_rn(v[1], b01.y);
        r[2] = __fsub_rn(v[2], b23.x);
        r[3] = __fsub_rn(v[3], b23.y);
        if (nf) {
#pragma unroll
            for (int i = 0; i < 4; i++) r[i] = a[i] < 0x7f800000u ? r[i] : 0.0f;  // Inf − Inf: keep lo 0
        }
        const __half2 l01 = __floats2half2_rn(r[0], r[1]), l23 = __floats2half2_rn(r[2], r[3]);
        // 4 f16 = half of 16-byte chunk xj / 2 of row t
        const int off = t * 128 + (((xj >> 1) ^ (t & 7)) << 4) + (xj & 1) * 8;
        *(uint2 *)(st + C::O_XH + off) = make_uint2(h2_bits(h01), h2_bits(h23));
        *(uint2 *)(st + C::O_XL + off) = make_uint2(h2_bits(l01), h2_bits(l23));
        if (xj == 0) ((float *)(st + C::O_INV))[t] = inv;
    }
}

// Blocks per SM for the register budget: 128 registers, except the 64-thread config
// (twice the staged floats per thread: 170, no spills).
template <int WM, int WN>
__global__ void __launch_bounds__(32 * WM * WN, WM * WN == 2 ? 6 : 512 / (32 * WM * WN)) mmf16_kernel(const __grid_constant__ Params P) {
    using C = Cfg<WM, WN>;
    extern __shared__ __align__(16) uint8_t sm[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp % WM, wn = warp / WM;
    const int row0 = blockIdx.x * C::BM, tok0 = blockIdx.y * C::BN;
    const int nrow = min(C::BM, P.n - row0), ntok = min(C::BN, P.n_rows - tok0);
    const uint32_t sbase = smem_u32(sm);
    const int xt = tid >> 4, xj = tid & 15;

    // weights are resident: the first step may load before the previous kernel finished
    stage_w<WM, WN>(P, sbase, row0, nrow, 0, tid);
    cp_async_commit();
    pdl_wait();
    pdl_trigger();
    float4 xr[C::V];
    load_x<WM, WN>(P, xr, tok0, ntok, 0, xt, xj);
    store_x<WM, WN>(sm, xr, xt, xj);

    // ldmatrix row addresses: A (weights) {rows 0-7, 8-15} x {k 0-7, 8-15};
    // B (activations) {rows 0-7, k 0-7}, {0-7, 8-15}, {8-15, 0-7}, {8-15, 8-15}.
    const int x7 = lane & 7, g = lane >> 2, tig = lane & 3;
    const int a_row = wm * 32 + x7 + 8 * ((lane >> 3) & 1), a_hi = lane >> 4;
    const int b_row = wn * 32 + x7 + 8 * (lane >> 4), b_hi = (lane >> 3) & 1;

    float acc[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[mt][nt][i] = 0.0f;

#pragma unroll 1
    for (int s = 0; s < P.nks; s++) {
        cp_async_wait<0>();
        __syncthreads();  // stage s&1 complete; every warp is done with stage (s+1)&1
        const bool more = s + 1 < P.nks;  // block-uniform
        const int nb = (s + 1) & 1;
        if (more) {
            stage_w<WM, WN>(P, sbase + nb * C::STAGE, row0, nrow, s + 1, tid);
            load_x<WM, WN>(P, xr, tok0, ntok, s + 1, xt, xj);
        }
        cp_async_commit();

        const uint32_t st = sbase + (s & 1) * C::STAGE;
        float c[2][4][4];
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int nt = 0; nt < 4; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) c[mt][nt][i] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t a[2][4], bh[4][2], bl[4][2];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) ldsm_x4(a[mt], st + (a_row + 16 * mt) * 128 + (((2 * kk + a_hi) ^ x7) << 4));
#pragma unroll
            for (int np = 0; np < 2; np++) {
                const uint32_t bo = (b_row + 16 * np) * 128 + (((2 * kk + b_hi) ^ x7) << 4);
                uint32_t r[4];
                ldsm_x4(r, st + C::O_XH + bo);
                bh[2 * np][0] = r[0], bh[2 * np][1] = r[1], bh[2 * np + 1][0] = r[2], bh[2 * np + 1][1] = r[3];
                ldsm_x4(r, st + C::O_XL + bo);
                bl[2 * np][0] = r[0], bl[2 * np][1] = r[1], bl[2 * np + 1][0] = r[2], bl[2 * np + 1][1] = r[3];
            }
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int nt = 0; nt < 4; nt++) {
                    mma_f16(c[mt][nt], a[mt], bh[nt][0], bh[nt][1]);
                    mma_f16(c[mt][nt], a[mt], bl[nt][0], bl[nt][1]);
                }
        }
        const float *inv = (const float *)(sm + (s & 1) * C::STAGE + C::O_INV);
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            const float2 iv = *(const float2 *)(inv + wn * 32 + nt * 8 + 2 * tig);
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                acc[mt][nt][0] = fmaf(c[mt][nt][0], iv.x, acc[mt][nt][0]);
                acc[mt][nt][1] = fmaf(c[mt][nt][1], iv.y, acc[mt][nt][1]);
                acc[mt][nt][2] = fmaf(c[mt][nt][2], iv.x, acc[mt][nt][2]);
                acc[mt][nt][3] = fmaf(c[mt][nt][3], iv.y, acc[mt][nt][3]);
            }
        }
        if (more) store_x<WM, WN>(sm + nb * C::STAGE, xr, xt, xj);
    }
    cp_async_wait<0>();

#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int r = wm * 32 + mt * 16 + g + 8 * (i >> 1);
                const int t = wn * 32 + nt * 8 + 2 * tig + (i & 1);
                if (r < nrow && t < ntok) P.y[(int64_t)(tok0 + t) * P.ys + row0 + r] = acc[mt][nt][i];
            }
}

// ---- host side -------------------------------------------------------------------------------

typedef void (*KernelFn)(Params);

std::mutex g_mu;
struct DevEntry {
    KernelFn fn;  // nullptr: the SM-count entry of the device
    int dev, val;
};
constexpr int kCache = 32;
DevEntry g_cache[kCache];
int g_cache_n;

// Raises the dynamic shared-memory limit once per (kernel, device); returns the device's
// SM count (cached).
int prepare(KernelFn fn, int smem, int *sms, char *err, size_t errlen) {
    int dev = 0;
    DS4_CUDA_TRY(cudaGetDevice(&dev));
    std::lock_guard<std::mutex> lk(g_mu);
    bool have_fn = false, have_sms = false;
    for (int i = 0; i < g_cache_n; i++) {
        if (g_cache[i].dev != dev) continue;
        if (g_cache[i].fn == fn) have_fn = true;
        if (g_cache[i].fn == nullptr) {
            have_sms = true;
            *sms = g_cache[i].val;
        }
    }
    if (!have_sms) {
        DS4_CUDA_TRY(cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev));
        if (g_cache_n < kCache) g_cache[g_cache_n++] = DevEntry{nullptr, dev, *sms};
    }
    if (fn && !have_fn) {
        DS4_CUDA_TRY(cudaFuncSetAttribute((const void *)fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        if (g_cache_n < kCache) g_cache[g_cache_n++] = DevEntry{fn, dev, smem};
    }
    return 0;
}

KernelFn pick_kernel(int wm, int wn, int *smem) {
    if (wm == 4 && wn == 2) {
        *smem = Cfg<4, 2>::BYTES;
        return mmf16_kernel<4, 2>;
    }
    if (wm == 4) {
        *smem = Cfg<4, 1>::BYTES;
        return mmf16_kernel<4, 1>;
    }
    if (wn == 2) {
        *smem = Cfg<2, 2>::BYTES;
        return mmf16_kernel<2, 2>;
    }
    *smem = Cfg<2, 1>::BYTES;
    return mmf16_kernel<2, 1>;
}

}  // namespace

extern "C" int ds4_cuda_mmf16_supported(int64_t k) { return k >= 8 && k % 8 == 0 && k <= (1 << 24); }

extern "C" int ds4_cuda_mmf16(const ds4_cuda_qmat *w, const float *x, int64_t xs, int n_rows, float *y, int64_t ys,
                              struct CUstream_st *stream, char *err, size_t errlen) {
    if (!w) return ds4_err(err, errlen, DS4_ERR_ARG, "mmf16: NULL weight descriptor");
    if (w->type != DS4_TYPE_F16 || !ds4_cuda_mmf16_supported(w->k))
        return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "mmf16: %s with k=%lld not supported", ds4_type_name(w->type),
                       (long long)w->k);
    if (w->n < 1 || w->n > INT32_MAX - 128)
        return ds4_err(err, errlen, DS4_ERR_ARG, "mmf16: bad row count n=%lld", (long long)w->n);
    if (!w->data) return ds4_err(err, errlen, DS4_ERR_ARG, "mmf16: weight data NULL");
    if ((uintptr_t)w->data % 16)  // rows are 2k bytes (k % 8 == 0): aligned base, aligned rows
        return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "mmf16: weight data not 16-byte aligned");
    if (n_rows < 0) return ds4_err(err, errlen, DS4_ERR_ARG, "mmf16: n_rows %d < 0", n_rows);
    if (!x || (uintptr_t)x % 4 || xs < 0)  // (xs < k: overlapping rows, only read; 0: one shared row)
        return ds4_err(err, errlen, DS4_ERR_ARG, "mmf16: x NULL, misaligned, or xs %lld < 0", (long long)xs);
    if (!y || (uintptr_t)y % 4 || (n_rows > 1 && ys < w->n))
        return ds4_err(err, errlen, DS4_ERR_ARG, "mmf16: y NULL, misaligned, or ys %lld < n %lld", (long long)ys,
                       (long long)w->n);
    if (n_rows == 0) return 0;

    int wm = 0, wn = n_rows > 32 ? 2 : 1;
    if (const char *e = getenv("DS4_MMF16_CFG")) {  // "42", "41", "22", "21": tests, benchmarks
        const int v = atoi(e);
        if ((v / 10 == 4 || v / 10 == 2) && (v % 10 == 1 || v % 10 == 2)) wm = v / 10, wn = v % 10;
    }
    const int64_t n_tt = (n_rows + 32 * wn - 1) / (32 * wn);
    int sms = 0, smem = 0;
    int rc = prepare(nullptr, 0, &sms, err, errlen);
    if (rc) return rc;
    if (wm == 0) wm = w->n > 64 && (w->n + 127) / 128 * n_tt * 10 >= (int64_t)sms * 9 ? 4 : 2;
    const int64_t n_rt = (w->n + 32 * wm - 1) / (32 * wm);
    if (n_tt > 65535) return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "mmf16: %d activation rows in one launch", n_rows);
    const KernelFn fn = pick_kernel(wm, wn, &smem);
    rc = prepare(fn, smem, &sms, err, errlen);
    if (rc) return rc;

    Params P;
    memset(&P, 0, sizeof P);
    P.w = (const uint16_t *)w->data;
    P.x = x;
    P.xs = xs;
    P.y = y;
    P.ys = ys;
    P.n = (int)w->n;
    P.k = (int)w->k;
    P.n_rows = n_rows;
    P.nks = (int)((w->k + kStep - 1) / kStep);
    P.vec = (uintptr_t)x % 16 == 0 && (n_rows == 1 || xs % 4 == 0);
    DS4_CUDA_TRY(ds4cu::launch(fn, dim3((unsigned)n_rt, (unsigned)n_tt), dim3(32 * wm * wn), (size_t)smem,
                               (cudaStream_t)stream, P));
    return 0;
}
