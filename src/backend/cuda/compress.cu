// compress.cu — the batched op compress_rows (backend.h): for every window w in [w0, w1)
// the pooling half of forward.c's compressor_step (compress_pool, rmsnorm · norm, rope at
// w·R, prod: hadamard_fp4_sim (indexer) or fp8_sim of the unrotated dims, round_f16) in
// ONE launch, one block per window (the op sequence costs 5 launches per window).
//
// Owns: k_compress_rows and its host entry ds4cu_compress_rows. Must not: change any
// value relative to that CUDA op sequence (k_compress_pool, cu_rmsnorm -> k_rmsnorm_v4 /
// k_rmsnorm, k_rope with cu_rope's host table, k_fp8_sim_warp / k_hadamard_fp4,
// k_round_f16 in cuda_backend.cu): the pooling below is k_compress_pool's loop verbatim
// per feature, the rest is row_chain.cuh (shared with qkv_rope, which checks the same
// bits), so a window's row is bit-identical to the sequence whatever the window count;
// allocate device memory (but the growable scratch row of the compact huge-row fallback).
//
// Block of one window w (blockIdx.x = w − first window of the launch), T threads:
//   1. pool: thread f of [0, hd) (stride T) computes k_compress_pool's out[f] -> smem
//   2. rmsnorm · norm of the smem row with the reduction tree cu_rmsnorm would use for
//      the row's address rows + w·hd (plan from its alignment, row_chain.cuh)
//   3. rope (cos/sin of (float)(w·R) · inv_freq[j], staged host table), then
//      prod ∧ indexer: Hadamard + FP4 per 32-block + F16; prod: FP8 of [0, hd − n_rot)
//      + F16; exact: as is — written to rows + w·hd.
// Compact rows (ds4cu::kv_compact, backend.h kv_row_bytes): step 3 writes the finished
// row to a second shared row instead, and the block encodes it into rows + w·rb
// (kv_rows.cuh: the bytes of ds4_kv_index_encode for indexer rows, ds4_kv_attn_encode
// with n_rot otherwise, of the f32 row the f32 layout would hold). The rmsnorm plan is
// then the one of a 16-byte aligned f32 row (the session's f32 rows are), so the values
// are those of the f32 layout whatever the compact row's address.
// Shapes the kernel cannot hold (row > 48 KiB of shared memory) run the op sequence (on
// an f32 scratch row, then encoded, when compact).
#include <math.h>
#include <string.h>

#include "common.cuh"
#include "cuda_internal.h"
#include "kv_rows.cuh"
#include "row_chain.cuh"
extern "C" {
#include "core/common.h"
}

namespace {

using namespace ds4cu::rows;

constexpr size_t kMaxSmem = 48 * 1024; // dynamic + static smem without an opt-in attribute
constexpr size_t kStaticSmem = 32 * sizeof(double); // k_compress_rows' sh[32]
constexpr int64_t kMaxWinPerLaunch = 8192; // staged table: 8192 x 2·half floats

struct CompArgs {
    const float *ring;   // [cap][2*coff*hd] entries: C (coff*hd) | Z + ape (coff*hd)
    const float *norm;   // [hd] rmsnorm weights
    const float *tab;    // [gridDim.x][2*half] cos | sin of window (w0 + blockIdx.x)'s position
    float *rows;         // [*][hd]: window w's row at rows + w*hd (f32 layout)
    uint8_t *crows;      // compact layout: window w's row at crows + w*rb (NULL: f32)
    int64_t rb;          // compact row bytes
    int64_t w0;          // first window of this launch
    int64_t cap;         // ring entries
    int64_t rw;          // 2*coff*hd: entry stride
    double eps;
    int R, coff, hd, n_rot, prod, indexer;
};

// k_compress_pool's value for feature f (same expressions in the same order: max over the
// candidates, then the sums of e and e·C in f32 from r = 0 up, prev's rows first).
__device__ __forceinline__ float pool_feature(const float *cur, const float *prev, int64_t rs, int R, int coff,
                                              int64_t hd, int64_t f) {
    // unrolled by 8 so that eight independent loads are in flight per round trip (a
    // single HCA window is R = 128 deep); the operations and their order are unchanged
    const int64_t cw = coff * hd, off = coff == 2 ? hd : 0;
    float mx = -INFINITY;
    if (prev) {
#pragma unroll 8
        for (int r = 0; r < R; r++) mx = fmaxf(mx, prev[r * rs + cw + f]);
    }
#pragma unroll 8
    for (int r = 0; r < R; r++) mx = fmaxf(mx, cur[r * rs + cw + off + f]);
    float s = 0, acc = 0;
    if (prev) {
#pragma unroll 8
        for (int r = 0; r < R; r++) {
            float e = expf(prev[r * rs + cw + f] - mx);
            s += e;
            acc = __fadd_rn(acc, __fmul_rn(e, prev[r * rs + f]));
        }
    }
#pragma unroll 8
    for (int r = 0; r < R; r++) {
        float e = expf(cur[r * rs + cw + off + f] - mx);
        s += e;
        acc = __fadd_rn(acc, __fmul_rn(e, cur[r * rs + off + f]));
    }
    return acc / s;
}

__global__ void __launch_bounds__(1024) k_compress_rows(const __grid_constant__ CompArgs A) {
    extern __shared__ float4 smem4[]; // [hd] floats, 16-byte aligned (+ [hd] when compact)
    float *sm = (float *)smem4;
    __shared__ double sh[32];
    // programmatic dependent launch: the ring is written by earlier kernels
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    const int T = blockDim.x, tid = threadIdx.x, hd = A.hd;
    const int64_t w = A.w0 + blockIdx.x;
    const float *cur = A.ring + ((w * A.R) % A.cap) * A.rw;
    const float *prev = A.coff == 2 && w > 0 ? A.ring + (((w - 1) * A.R) % A.cap) * A.rw : nullptr;
    const bool compact = A.crows != nullptr;
    // compact: the finished f32 row goes to the second shared row, then is encoded
    float *out = compact ? sm + hd : A.rows + w * hd;
    for (int f = tid; f < hd; f += T) sm[f] = pool_feature(cur, prev, A.rw, A.R, A.coff, hd, f);
    __syncthreads();
    int v4, th;
    // cu_rmsnorm(out, hd, norm, out, hd, hd, 1); compact: as for an aligned f32 row
    rms_plan(compact ? nullptr : out, A.norm, hd, &v4, &th);
    rms_row(sm, A.norm, hd, v4, th, A.eps, sm, sh);
    __syncthreads();
    const int half = A.n_rot / 2;
    const float *c = A.tab + (int64_t)blockIdx.x * 2 * half, *s = c + half;
    if (A.prod && A.indexer) rope_hadamard_fp4_row(sm, out, hd, A.n_rot, c, s, true);
    else kv_row_store(sm, hd, A.n_rot, c, s, A.prod != 0, out, nullptr);
    if (compact) {
        __syncthreads(); // block-uniform branch: the whole row is in out
        uint8_t *row = A.crows + w * A.rb;
        if (A.indexer) ds4cu::kv::encode_index_block(out, hd, row);
        else ds4cu::kv::encode_attn_block(out, hd, A.n_rot, row);
    }
}

}  // namespace

void ds4cu_compress_rows(ds4_backend *be, const float *ring, int cap, int R, int coff, int64_t hd, const float *norm,
                         double eps, int n_rot, const float *inv_freq, bool prod, bool indexer, int64_t w0, int64_t w1,
                         float *rows) {
    DS4_ASSERT(cap > 0 && R > 0 && (coff == 1 || coff == 2) && hd > 0 && w0 >= 0);
    DS4_ASSERT(n_rot >= 0 && n_rot % 2 == 0 && n_rot <= hd && n_rot / 2 <= 128);
    if (w1 <= w0) return;
    const int kind = indexer ? DS4_KV_ROW_INDEX : DS4_KV_ROW_ATTN;
    const size_t rb = ds4cu::kv_bytes(be, kind, hd, n_rot); // 0: f32 rows
    const size_t smem = (size_t)hd * sizeof(float) * (rb ? 2 : 1);
    if (smem + kStaticSmem > kMaxSmem) { // forward.c's compressor_step sequence, window by window
        const int64_t rw = 2 * coff * hd;
        // compact: each window's row in an f32 scratch row (aligned, as the session's f32
        // rows), then encoded; stream order keeps the reuse safe
        float *tmp = rb ? (float *)ds4cu::scratch(be, ds4cu::SCR_KV_ENC, (size_t)hd * sizeof(float)) : NULL;
        for (int64_t w = w0; w < w1; w++) {
            const float *cur = ring + ((w * R) % cap) * rw;
            const float *prev = coff == 2 && w > 0 ? ring + (((w - 1) * R) % cap) * rw : NULL;
            float *out = rb ? tmp : rows + w * hd;
            be->compress_pool(be, cur, prev, rw, R, coff, hd, out);
            be->rmsnorm(be, out, hd, norm, out, hd, hd, 1, eps);
            be->rope(be, out, hd, 1, hd, n_rot, w * R, inv_freq, false);
            if (prod) {
                if (indexer) be->hadamard_fp4_sim(be, out, hd, 1, hd);
                else be->fp8_sim(be, out, hd, 1, hd - n_rot);
                be->round_f16(be, out, hd);
            }
            if (rb) ds4cu::kv_encode(be, out, hd, 1, kind, hd, n_rot, (uint8_t *)rows + w * (int64_t)rb);
        }
        return;
    }
    CompArgs A;
    memset(&A, 0, sizeof A);
    A.ring = ring;
    A.norm = norm;
    A.rows = rb ? nullptr : rows;
    A.crows = rb ? (uint8_t *)rows : nullptr;
    A.rb = (int64_t)rb;
    A.cap = cap;
    A.rw = 2 * (int64_t)coff * hd;
    A.eps = eps;
    A.R = R;
    A.coff = coff;
    A.hd = (int)hd;
    A.n_rot = n_rot;
    A.prod = prod ? 1 : 0;
    A.indexer = indexer ? 1 : 0;
    // block: one thread per feature for the pooling (up to 1024), at least the rmsnorm's
    // own block size (its reduction tree depends on it; the plan is the same for every
    // window: rows + w·hd keeps the alignment of rows when hd % 4 == 0, and hd % 4 != 0
    // is the scalar plan whatever the address)
    int v4, th;
    rms_plan(rb ? nullptr : rows + w0 * hd, norm, hd, &v4, &th);
    int T = (int)(hd < 1024 ? (hd + 31) / 32 * 32 : 1024);
    if (th > T) T = th;
    const int half = n_rot / 2;
    static const float kNoTab[2] = {0.0f, 0.0f}; // half == 0: nothing rotated, nothing read
    for (int64_t a = w0; a < w1; a += kMaxWinPerLaunch) {
        const int64_t nw = w1 - a < kMaxWinPerLaunch ? w1 - a : kMaxWinPerLaunch;
        A.w0 = a;
        // [nw][cos | sin] of positions a·R, (a+1)·R, ... (cu_rope's host math; cached per thread)
        const float *h = half > 0 ? rope_table(inv_freq, half, a * R, R, nw) : kNoTab;
        A.tab = (const float *)ds4cu::stage(be, h, half > 0 ? (size_t)nw * 2 * half * sizeof(float) : sizeof kNoTab);
        DS4CU_CK(ds4cu::launch(k_compress_rows, dim3((unsigned)nw), dim3((unsigned)T), smem, ds4cu::stream(be), A));
    }
}
