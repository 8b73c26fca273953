// moe_prefill.cu — large-chunk matmuls and the chunk MoE through the tensor-core GEMM
// (cuda_mmq.h); contract and numerics in moe_prefill.h.
//
// Owns: the activation quantizer for strided / grouped rows, the SwiGLU-to-quantized-rows
// kernel, the deterministic counting sort of a chunk's (token, expert) pairs and the
// ordered combine, and the host sequences that chain them with ds4_cuda_mmq. Must not:
// run in exact numerics, allocate (scratch slots SCR_ACTQ / SCR_MOE_PF only), or use
// float atomics (the sort's integer shared-memory counters are order-free).
//
// The chunk MoE for n tokens, k experts each (P = n·k pairs, pair p = t·k + j):
//   1. k_pf_sort: pairs sorted by expert id, stable in pair order -> off[n_expert + 2]
//      (problem e owns packed rows [off[e], off[e+1]); problem n_expert collects invalid
//      ids and has matrix id -1, which mmq answers with NaN rows), pidx[i] (pair of packed
//      row i), xidx[i] (its token), pos[p] (packed row of pair p);
//   2. x quantized once (dot type of gate / up), gate and up grouped mmq gathering
//      x rows through xidx -> G, U [P][ff];
//   3. k_pf_swiglu_q: h = swiglu(G, U) · w(pair) with the swiglu op's rounding, quantized
//      to the down weights' dot type -> Hq [P];
//   4. down grouped mmq (packed row i reads Hq row i) -> DN [P][d] (over G / U: dead);
//   5. the shared expert for the n tokens: dense mmq gate / up, k_pf_swiglu_q (scale 1),
//      dense mmq down -> SH [n][d];
//   6. k_pf_combine (k_pf_combine4 on float4 columns when aligned): y[t] = Σ_j
//      DN[pos[t·k + j]] in j order (the router's ascending expert ids) from zero, + SH[t]:
//      the generic sequence's axpy order.
#include "act_quant.cuh"
#include "common.cuh"
#include "cuda_internal.h"
#include "cuda_matvec.h"
#include "cuda_mmq.h"
#include "moe_prefill.h"

extern "C" {
#include "core/common.h"
#include "model/ggml_type.h"
#include "model/quant.h"
}

namespace {

// Every kernel here may start while the previous kernel of the stream still runs (PDL,
// common.cuh): it waits for that kernel before touching memory, then lets the next begin.
__device__ __forceinline__ void pf_enter() {
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
}

// The swiglu op's f32 arithmetic on one element (cuda_backend.cu k_swiglu / k_swiglu_w,
// cpu_backend.c cpu_swiglu): g' = min(g, limit), u' = clamp(u), silu(g')·u'·scale.
__device__ __forceinline__ float pf_swiglu(float g, float u, float limit, float scale) {
    const float gv = fminf(g, limit);
    const float uv = fminf(fmaxf(u, -limit), limit);
    const float silu = gv / (1.0f + expf(-gv));
    return __fmul_rn(__fmul_rn(silu, uv), scale);
}

// ---- activation quantizers (MODEL.md §20.7; quant.c quant_q8_0(act) / quant_q8_k) ----
// One warp per Q8_K block (lane: elements 8·lane .. 8·lane + 7) or per four Q8_0 blocks
// (lane: elements 4·(lane & 7) .. + 3 of block lane >> 3). Every lane of the warp must
// call (shuffles); lanes whose block is past the row pass zeros and store nothing.

// The math is act_quant.cuh's (shared with matvec.cu); these store its result as GGML blocks.

// Q8_0: block of 34 bytes (f16 d, 32 int8), 2-byte aligned; ok = this lane's block is in the row.
__device__ __forceinline__ void pf_store_q8_0(uint8_t *blk, bool ok, const float v[4], int lane) {
    float d;
    const uint32_t q = ds4cu::q8_0_quant_lane(v, &d);
    if (!ok) return;
    uint16_t *qh = (uint16_t *)(blk + 2 + 4 * (lane & 7));  // blocks are 34 bytes: 2-byte aligned
    qh[0] = (uint16_t)q;
    qh[1] = (uint16_t)(q >> 16);
    if ((lane & 7) == 0) *(uint16_t *)blk = __half_as_ushort(__float2half_rn(d));
}

// Q8_K: block of 292 bytes (f32 d, 256 int8, 16 int16 bsums), 4-byte aligned.
__device__ __forceinline__ void pf_store_q8_k(uint8_t *blk, const float v[8], int lane) {
    const ds4cu::Q8KLane r = ds4cu::q8_k_quant_lane(v, lane);
    uint32_t *qw = (uint32_t *)(blk + 4 + 8 * lane);
    qw[0] = r.qlo;
    qw[1] = r.qhi;
    if ((lane & 1) == 0) ((int16_t *)(blk + 260))[lane >> 1] = (int16_t)r.bsum16;
    if (lane == 0) *(float *)blk = r.d;
}

// Warps per row of k values: one per Q8_K block, one per four Q8_0 blocks.
__host__ __device__ inline int64_t pf_steps(bool qk, int64_t k) { return qk ? k / 256 : (k / 32 + 3) / 4; }

// Row r = a·n_inner + b of the strided / grouped input (x + a·sa + b·sb) -> xq + r·xs_q.
// Grid (n_rows, ceil(steps / (warps · SPW))): block x is the row (no 64-bit division per
// warp: the former flat warp index cost four of them, more issue slots than the work),
// each warp quantizes SPW consecutive steps (Q8_0: 4 x 4 blocks, Q8_K: 2 blocks) of it,
// every load of them issued before the first shuffle: 16 floats per lane in flight, as
// float4 when the row is 16-byte aligned. The blocks' values do not depend on the
// mapping (each is quantized from its own 32 / 256 values by act_quant.cuh).
constexpr int kQrThreads = 256;
template <bool QK> __host__ __device__ constexpr int qr_spw() { return QK ? 2 : 4; }

template <bool QK>
__global__ void __launch_bounds__(kQrThreads) k_pf_quant_rows(const float *x, int64_t sa, int64_t sb, int n_inner,
                                                              int64_t k, uint8_t *xq, uint64_t xs_q) {
    pf_enter();
    constexpr int SPW = qr_spw<QK>(), EPL = QK ? 8 : 4;   // steps per warp, floats per lane and step
    const int lane = threadIdx.x & 31, r = blockIdx.x;
    const int64_t steps = pf_steps(QK, k);
    const int64_t s0 = ((int64_t)blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5)) * SPW;
    if (s0 >= steps) return;  // whole warps
    const float *src = x + (int64_t)(r / n_inner) * sa + (int64_t)(r % n_inner) * sb;
    uint8_t *dst = xq + (uint64_t)r * xs_q;
    const bool a16 = ((uintptr_t)src & 15) == 0;  // warp-uniform
    float v[SPW][EPL];
#pragma unroll
    for (int i = 0; i < SPW; i++) {
        const int64_t s = s0 + i;
        // Q8_0: block b = 4·s + lane / 8, elements 32·b + 4·(lane % 8) ..; Q8_K: 256·s + 8·lane ..
        const int64_t e = QK ? 256 * s + 8 * lane : 32 * (s * 4 + (lane >> 3)) + 4 * (lane & 7);
        const bool ok = QK ? s < steps : s < steps && s * 4 + (lane >> 3) < k / 32;
#pragma unroll
        for (int j = 0; j < EPL; j++) v[i][j] = 0.0f;
        if (ok) {
            if (a16) {
#pragma unroll
                for (int j = 0; j < EPL; j += 4) {
                    const float4 f = *(const float4 *)(src + e + j);
                    v[i][j] = f.x, v[i][j + 1] = f.y, v[i][j + 2] = f.z, v[i][j + 3] = f.w;
                }
            } else {
#pragma unroll
                for (int j = 0; j < EPL; j++) v[i][j] = src[e + j];
            }
        }
    }
#pragma unroll
    for (int i = 0; i < SPW; i++) {
        const int64_t s = s0 + i;
        if (s >= steps) break;  // warp-uniform
        if constexpr (QK) {
            pf_store_q8_k(dst + (uint64_t)s * 292, v[i], lane);
        } else {
            const int64_t b = s * 4 + (lane >> 3);
            pf_store_q8_0(dst + (uint64_t)b * 34, b < k / 32, v[i], lane);
        }
    }
}

// Hq row i = quantized swiglu(g_i, u_i, limit) · w_i over ff values, w_i = selw[pidx[i]]
// (selw NULL: 1). g, u: [rows][ff] f32 (16-byte-aligned rows for Q8_K).
template <bool QK>
__global__ void k_pf_swiglu_q(const float *g, const float *u, int64_t ff, int rows, const float *selw, const int32_t *pidx,
                              float limit, uint8_t *hq, uint64_t hs_q) {
    pf_enter();
    const int lane = threadIdx.x & 31;
    const int64_t steps = pf_steps(QK, ff);
    const int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (wid >= (int64_t)rows * steps) return;
    const int64_t r = wid / steps, s = wid % steps;
    const float w = selw ? selw[pidx[r]] : 1.0f;
    const float *gr = g + r * ff, *ur = u + r * ff;
    uint8_t *dst = hq + (uint64_t)r * hs_q;
    if constexpr (QK) {
        // 16-byte loads: g and u rows start at 256-byte-aligned scratch plus multiples of
        // ff·4 bytes, ff % 256 == 0 for Q8_K
        const float4 *g4 = (const float4 *)(gr + 256 * s + 8 * lane), *u4 = (const float4 *)(ur + 256 * s + 8 * lane);
        const float4 ga = g4[0], gb = g4[1], ua = u4[0], ub = u4[1];
        const float gv[8] = {ga.x, ga.y, ga.z, ga.w, gb.x, gb.y, gb.z, gb.w};
        const float uv[8] = {ua.x, ua.y, ua.z, ua.w, ub.x, ub.y, ub.z, ub.w};
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = pf_swiglu(gv[j], uv[j], limit, w);
        pf_store_q8_k(dst + (uint64_t)s * 292, v, lane);
    } else {
        const int64_t b = s * 4 + (lane >> 3);
        const bool ok = b < ff / 32;
        float v[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int64_t c = 32 * b + 4 * (lane & 7) + j;
            v[j] = ok ? pf_swiglu(gr[c], ur[c], limit, w) : 0.0f;
        }
        pf_store_q8_0(dst + (uint64_t)b * 34, ok, v, lane);
    }
}

// Counting sort of the P = n·k pairs by expert id (bucket ne for ids outside [0, ne)),
// stable in pair order, in one block of nw warps: warp w owns the pair segment
// [w·seg, (w+1)·seg); shared cnt[w][e] counts its pairs of expert e (integer atomics:
// the counts do not depend on their order), then becomes the number of pairs of e in the
// segments before w, so the packed row of pair p is off[e] + cnt[w][e] + (pairs of e
// before p in w's segment), placed 32 pairs at a time with __match_any_sync ranks.
// Shared memory: (nw + 1)·(ne + 1) ints.
__global__ void __launch_bounds__(1024) k_pf_sort(const int32_t *sel, int P, int k, int ne, int32_t *off, int32_t *mat,
                                                  int32_t *pidx, int32_t *xidx, int32_t *pos) {
    pf_enter();
    extern __shared__ int pf_sm[];
    const int ne1 = ne + 1, nw = blockDim.x >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int *cnt = pf_sm, *base = pf_sm + nw * ne1;
    for (int i = threadIdx.x; i < nw * ne1; i += blockDim.x) cnt[i] = 0;
    __syncthreads();
    const int seg = (P + nw - 1) / nw;
    const int s0 = min(P, w * seg), s1 = min(P, s0 + seg);
    for (int i = s0 + lane; i < s1; i += 32) {
        const int e = sel[i];
        atomicAdd(&cnt[w * ne1 + (e >= 0 && e < ne ? e : ne)], 1);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < ne1; e += blockDim.x) {
        int run = 0;
        for (int v = 0; v < nw; v++) {
            const int c = cnt[v * ne1 + e];
            cnt[v * ne1 + e] = run;
            run += c;
        }
        base[e] = run;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int run = 0;
        for (int e = 0; e < ne1; e++) {
            const int c = base[e];
            base[e] = run;
            off[e] = run;
            run += c;
        }
        off[ne1] = run;
    }
    for (int e = threadIdx.x; e < ne1; e += blockDim.x) mat[e] = e < ne ? e : -1;
    __syncthreads();
    for (int i0 = s0; i0 < s1; i0 += 32) {  // s0, s1 are warp-uniform: the shuffles see all lanes
        const int i = i0 + lane;
        const bool ok = i < s1;
        int e = ne1;  // lanes past the segment share a key no real pair has
        if (ok) {
            const int sv = sel[i];
            e = sv >= 0 && sv < ne ? sv : ne;
        }
        const unsigned m = __match_any_sync(0xffffffffu, e);
        const int rank = __popc(m & ((1u << lane) - 1u));
        if (ok) {
            const int p = base[e] + cnt[w * ne1 + e] + rank;
            pidx[p] = i;
            xidx[p] = i / k;
            pos[i] = p;
        }
        __syncwarp();
        if (ok && rank == 0) cnt[w * ne1 + e] += __popc(m);
        __syncwarp();
    }
}

// y[t][c] = Σ_j 1·DN[pos[t·k + j]][c] from zero in j order, then + 1·sh[t][c] (the axpy
// op's rounding at every step). Grid (ceil(d / blockDim), n).
__global__ void k_pf_combine(float *y, const float *dn, const int32_t *pos, const float *sh, int64_t d, int k) {
    pf_enter();
    const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (c >= d) return;
    float acc = 0.0f;
    for (int j = 0; j < k; j++) acc = __fadd_rn(acc, __fmul_rn(1.0f, dn[(int64_t)pos[t * k + j] * d + c]));
    if (sh) acc = __fadd_rn(acc, __fmul_rn(1.0f, sh[(int64_t)t * d + c]));
    y[(int64_t)t * d + c] = acc;
}

// k_pf_combine on float4 columns (d % 4 == 0, dn / sh / y 16-byte aligned): each thread
// issues the loads of up to kCombBatch expert rows and the shared row before its adds
// (the scalar kernel's loop kept one 4-byte load in flight per thread: ~1.3x its
// traffic's time); the same adds per element in the same j order from zero, then sh.
constexpr int kCombBatch = 8;
constexpr int kCombThreads = 256;
__global__ void __launch_bounds__(kCombThreads) k_pf_combine4(float *y, const float *dn, const int32_t *pos,
                                                              const float *sh, int64_t d, int k) {
    pf_enter();
    const int64_t d4 = d / 4, c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (c >= d4) return;
    const float4 *dn4 = (const float4 *)dn;
    const float4 shv = sh ? ((const float4 *)sh)[(int64_t)t * d4 + c] : make_float4(0.f, 0.f, 0.f, 0.f);
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int j0 = 0; j0 < k; j0 += kCombBatch) {
        float4 v[kCombBatch];
#pragma unroll
        for (int i = 0; i < kCombBatch; i++)
            if (j0 + i < k) v[i] = dn4[(int64_t)pos[t * k + j0 + i] * d4 + c];
#pragma unroll
        for (int i = 0; i < kCombBatch; i++) {
            if (j0 + i < k) {
                acc.x = __fadd_rn(acc.x, __fmul_rn(1.0f, v[i].x));
                acc.y = __fadd_rn(acc.y, __fmul_rn(1.0f, v[i].y));
                acc.z = __fadd_rn(acc.z, __fmul_rn(1.0f, v[i].z));
                acc.w = __fadd_rn(acc.w, __fmul_rn(1.0f, v[i].w));
            }
        }
    }
    if (sh) {
        acc.x = __fadd_rn(acc.x, __fmul_rn(1.0f, shv.x));
        acc.y = __fadd_rn(acc.y, __fmul_rn(1.0f, shv.y));
        acc.z = __fadd_rn(acc.z, __fmul_rn(1.0f, shv.z));
        acc.w = __fadd_rn(acc.w, __fmul_rn(1.0f, shv.w));
    }
    ((float4 *)y)[(int64_t)t * d4 + c] = acc;
}

inline unsigned pf_blocks(int64_t warps, int threads) { return (unsigned)((warps * 32 + threads - 1) / threads); }

void pf_fail(int rc, const char *err) {
    if (rc < 0) ds4_assert_fail(err, __FILE__, __LINE__);
}

// Largest warp count of the sort block whose shared memory ((nw + 1)·(ne + 1) ints)
// stays within the default 48 KiB; 0 when even one warp does not fit.
int sort_warps(int ne) {
    const long per = (long)(ne + 1) * (long)sizeof(int);
    long nw = (48L * 1024) / per - 1;
    return nw < 1 ? 0 : nw > 32 ? 32 : (int)nw;
}

ds4_cuda_qmat pf_stack(ds4_backend *be, const ds4_tensor *W) {
    ds4_cuda_qmat q;
    q.type = W->type;
    q.data = ds4cu::dev_of(be, W->data);
    q.n = (int64_t)W->ne[1];
    q.k = (int64_t)W->ne[0];
    q.mat_stride = W->ne[1] * W->row_bytes;
    q.n_mats = (int32_t)W->ne[2];
    return q;
}

inline size_t al256(size_t b) { return (b + 255) & ~(size_t)255; }

// Upper bound of a quantized row of k values (any dot type): Q8_K blocks over ceil(k/256).
inline uint64_t act_row_bound(int64_t k) { return (uint64_t)((k + 255) / 256) * 292; }

// SCR_MOE_PF layout (byte offsets, 256-aligned), the same for ds4cu_moe_prefill_bytes.
struct PfLayout {
    size_t gu, hq, xg, xu, sh, shq, xs, idx, total;
};
PfLayout pf_layout(int n, int k, int ne, int64_t d, int64_t ff, int64_t ffs) {
    const size_t P = (size_t)n * k;
    PfLayout L;
    size_t o = 0;
    // G, U [P][ff] and, after the SwiGLU has read them, DN [P][d] over the same bytes
    L.gu = o, o += al256(P * (size_t)(2 * ff > d ? 2 * ff : d) * sizeof(float));
    L.hq = o, o += al256(P * act_row_bound(ff));
    L.xg = o, o += al256((size_t)n * act_row_bound(d));  // x for gate
    L.xu = o, o += al256((size_t)n * act_row_bound(d));  // x for up when its dot type differs
    // shared expert: its gate / up [n][ffs] and, after its SwiGLU, SH [n][d] over them
    L.sh = o, o += ffs > 0 ? al256((size_t)n * (size_t)(2 * ffs > d ? 2 * ffs : d) * sizeof(float)) : 0;
    L.shq = o, o += ffs > 0 ? al256((size_t)n * act_row_bound(ffs)) : 0;
    L.xs = o, o += ffs > 0 ? al256((size_t)n * act_row_bound(d)) : 0;  // x for the shared gate / up
    // off [ne + 2], mat [ne + 1], pidx / xidx / pos [P]
    L.idx = o, o += al256(((size_t)2 * ne + 3 + 3 * P) * sizeof(int32_t));
    L.total = o;
    return L;
}

// y rows = w · quantized rows (one matrix, n rows): ds4_cuda_mmq's status.
int pf_mmq(ds4_backend *be, const ds4_cuda_qmat *w, const void *xq, uint64_t xs_q, const ds4_cuda_mmq_groups *g, int n_rows,
           float *y, int64_t ys) {
    char err[256];
    const int rc = ds4_cuda_mmq(w, xq, xs_q, g, n_rows, y, ys, ds4cu::stream(be), err, sizeof err);
    if (rc != DS4_ERR_UNSUPPORTED) pf_fail(rc, err);
    return rc;
}

void pf_swiglu_q(ds4_backend *be, uint32_t vt, const float *g, const float *u, int64_t ff, int rows, const float *selw,
                 const int32_t *pidx, float limit, uint8_t *hq, uint64_t hs_q) {
    const int threads = 256;
    const unsigned nb = pf_blocks((int64_t)rows * pf_steps(vt == DS4_TYPE_Q8_K, ff), threads);
    if (vt == DS4_TYPE_Q8_K)
        DS4CU_CK(ds4cu::launch(k_pf_swiglu_q<true>, dim3(nb), dim3(threads), 0, ds4cu::stream(be), g, u, ff, rows, selw, pidx,
                               limit, hq, hs_q));
    else
        DS4CU_CK(ds4cu::launch(k_pf_swiglu_q<false>, dim3(nb), dim3(threads), 0, ds4cu::stream(be), g, u, ff, rows, selw, pidx,
                               limit, hq, hs_q));
}

}  // namespace

// ------------------------------------------------------------------ dense
bool ds4cu_mmq_ok(ds4_backend *be, uint32_t type, int64_t k, int n_rows) {
    // DS4_CUDA_NO_MMQ=1 (diagnostics, tests/cuda/engine_gpu.py): every product keeps the
    // matvec kernels, whose values do not depend on the chunking
    static const bool off = [] {
        const char *v = getenv("DS4_CUDA_NO_MMQ");
        return v && *v == '1';
    }();
    if (off || ds4cu::exact(be) || n_rows < ds4cu::kMmqMinRows) return false;
    const uint32_t vt = ds4_vec_dot_type(type);
    if (vt != DS4_TYPE_Q8_0 && vt != DS4_TYPE_Q8_K) return false;
    return ds4_cuda_mmq_supported(type, k) != 0;
}

uint64_t ds4cu_act_row_bytes(uint32_t act_type, int64_t k) {
    uint64_t rb = 0;
    DS4_ASSERT(ds4_type_row_bytes(act_type, (uint64_t)k, &rb));
    return rb;
}

void ds4cu_quantize_rows(ds4_backend *be, uint32_t act_type, const float *x, int64_t sa, int64_t sb, int n_inner,
                         int64_t k, int n_rows, void *xq, uint64_t xq_stride) {
    DS4_ASSERT(act_type == DS4_TYPE_Q8_0 || act_type == DS4_TYPE_Q8_K);
    // Q8_K blocks hold a float and 32-bit quant words, Q8_0 blocks 16-bit fields
    DS4_ASSERT(n_inner >= 1 && n_rows >= 0 && xq_stride >= ds4cu_act_row_bytes(act_type, k) &&
               xq_stride % (act_type == DS4_TYPE_Q8_K ? 4 : 2) == 0 && (uintptr_t)xq % 4 == 0);
    if (n_rows == 0) return;
    const uint64_t rb = ds4cu_act_row_bytes(act_type, k);
    if (xq_stride == rb && sb == k && (n_rows <= n_inner || sa == (int64_t)n_inner * k)) {
        // contiguous rows: the matvec library's quantizer
        char err[256];
        pf_fail(ds4_cuda_quantize_act(act_type, x, xq, k, n_rows, ds4cu::stream(be), err, sizeof err), err);
        return;
    }
    const bool qk = act_type == DS4_TYPE_Q8_K;
    const int64_t per_blk = (int64_t)(kQrThreads / 32) * (qk ? qr_spw<true>() : qr_spw<false>());  // steps per block
    const int64_t gy = (pf_steps(qk, k) + per_blk - 1) / per_blk;
    DS4_ASSERT(gy >= 1 && gy <= 65535);
    const dim3 grid((unsigned)n_rows, (unsigned)gy);
    if (qk)
        DS4CU_CK(ds4cu::launch(k_pf_quant_rows<true>, grid, dim3(kQrThreads), 0, ds4cu::stream(be), x, sa, sb, n_inner, k,
                               (uint8_t *)xq, xq_stride));
    else
        DS4CU_CK(ds4cu::launch(k_pf_quant_rows<false>, grid, dim3(kQrThreads), 0, ds4cu::stream(be), x, sa, sb, n_inner, k,
                               (uint8_t *)xq, xq_stride));
}

int ds4cu_mmq_rows(ds4_backend *be, const ds4_cuda_qmat *w, const float *x, int64_t gs, int64_t xs, float *y, int64_t ys,
                   int n_tok) {
    if (n_tok <= 0) return 0;
    const int G = w->n_mats;
    DS4_ASSERT(G >= 1);
    const uint32_t vt = ds4_vec_dot_type(w->type);
    const uint64_t rb = ds4cu_act_row_bytes(vt, w->k);
    // rows [g][t]: group g's slice of token t at x + g·gs + t·xs
    uint8_t *xq = (uint8_t *)ds4cu::scratch(be, ds4cu::SCR_ACTQ, (size_t)G * n_tok * rb);
    ds4cu_quantize_rows(be, vt, x, gs, xs, n_tok, w->k, G * n_tok, xq, rb);
    for (int g = 0; g < G; g++) {
        ds4_cuda_qmat q = *w;
        q.data = (const uint8_t *)w->data + (uint64_t)g * w->mat_stride;
        q.mat_stride = 0;
        q.n_mats = 1;
        const int rc = pf_mmq(be, &q, xq + (size_t)g * n_tok * rb, rb, nullptr, n_tok, y + (int64_t)g * w->n, ys);
        if (rc) return rc;
    }
    return 0;
}

// ------------------------------------------------------------------ MoE
size_t ds4cu_moe_prefill_bytes(int n, int k, int n_expert, int64_t d, int64_t ff, int64_t ffs) {
    return pf_layout(n, k, n_expert, d, ff, ffs).total;
}

bool ds4cu_moe_prefill(ds4_backend *be, const int32_t *sel, const float *selw, const ds4_tensor *gate,
                       const ds4_tensor *up, const ds4_tensor *down, const ds4_tensor *gate_sh, const ds4_tensor *up_sh,
                       const ds4_tensor *down_sh, const float *x, int n, int k, float clamp, float *y) {
    if (ds4cu::exact(be) || n < ds4cu::kMmqMinRows || k < 1 || n > 65535) return false;
    const int ne = (int)gate->ne[2];
    const int64_t d = (int64_t)gate->ne[0], ff = (int64_t)gate->ne[1];
    DS4_ASSERT(up->ne[0] == (uint64_t)d && up->ne[1] == (uint64_t)ff && up->ne[2] == (uint64_t)ne);
    DS4_ASSERT(down->ne[0] == (uint64_t)ff && down->ne[1] == (uint64_t)d && down->ne[2] == (uint64_t)ne);
    const int P = n * k;
    const int nw = sort_warps(ne);
    if (nw < 1 || (int64_t)n * k > INT32_MAX / 2) return false;
    if (!ds4cu_mmq_ok(be, gate->type, d, P) || !ds4cu_mmq_ok(be, up->type, d, P) || !ds4cu_mmq_ok(be, down->type, ff, P))
        return false;
    int64_t ffs = 0;
    if (gate_sh) {
        ffs = (int64_t)gate_sh->ne[1];
        DS4_ASSERT(gate_sh->ne[0] == (uint64_t)d && up_sh->ne[0] == (uint64_t)d && up_sh->ne[1] == (uint64_t)ffs &&
                   down_sh->ne[0] == (uint64_t)ffs && down_sh->ne[1] == (uint64_t)d);
        if (!ds4cu_mmq_ok(be, gate_sh->type, d, n) || !ds4cu_mmq_ok(be, up_sh->type, d, n) ||
            !ds4cu_mmq_ok(be, down_sh->type, ffs, n))
            return false;
    }
    cudaStream_t st = ds4cu::stream(be);
    const PfLayout L = pf_layout(n, k, ne, d, ff, ffs);
    uint8_t *ws = (uint8_t *)ds4cu::scratch(be, ds4cu::SCR_MOE_PF, L.total);
    float *G = (float *)(ws + L.gu), *U = G + (size_t)P * ff, *DN = G;
    int32_t *off = (int32_t *)(ws + L.idx), *mat = off + (ne + 2), *pidx = mat + (ne + 1), *xidx = pidx + P,
            *pos = xidx + P;

    // 1. pairs sorted by expert
    const size_t sm = (size_t)(nw + 1) * (ne + 1) * sizeof(int);
    DS4CU_CK(ds4cu::launch(k_pf_sort, dim3(1), dim3(32 * nw), sm, st, sel, P, k, ne, off, mat, pidx, xidx, pos));

    // 2. x quantized once per dot type
    const ds4_cuda_qmat qg = pf_stack(be, gate), qu = pf_stack(be, up), qd = pf_stack(be, down);
    const uint32_t vg = ds4_vec_dot_type(gate->type), vu = ds4_vec_dot_type(up->type), vd = ds4_vec_dot_type(down->type);
    const uint64_t rg = ds4cu_act_row_bytes(vg, d), ru = ds4cu_act_row_bytes(vu, d), rd = ds4cu_act_row_bytes(vd, ff);
    uint8_t *xg = ws + L.xg, *xu = vu == vg ? xg : ws + L.xu, *hq = ws + L.hq;
    ds4cu_quantize_rows(be, vg, x, 0, d, n, d, n, xg, rg);
    if (xu != xg) ds4cu_quantize_rows(be, vu, x, 0, d, n, d, n, xu, ru);
    float *SH = nullptr;
    // 3. the shared expert for every token (dense), on the side stream: it only reads x's
    // quantized rows (written above) and writes its own L.sh / L.shq / L.xs bytes, so it
    // overlaps the routed GEMMs below (measured on an H200: the shared expert is ~10 % of
    // the MoE of a chunk)
    if (gate_sh) {
        ds4cu::side_begin(be);
        ds4_cuda_qmat sg = pf_stack(be, gate_sh), su = pf_stack(be, up_sh), sdn = pf_stack(be, down_sh);
        sg.n_mats = su.n_mats = sdn.n_mats = 1;
        sg.mat_stride = su.mat_stride = sdn.mat_stride = 0;
        const uint32_t vsg = ds4_vec_dot_type(gate_sh->type), vsu = ds4_vec_dot_type(up_sh->type),
                       vsd = ds4_vec_dot_type(down_sh->type);
        const uint64_t rsg = ds4cu_act_row_bytes(vsg, d), rsu = ds4cu_act_row_bytes(vsu, d),
                       rsd = ds4cu_act_row_bytes(vsd, ffs);
        // x rows for the shared gate / up: a routed quantization of the same dot type, else
        // L.xs (there are two dot types, so gate_sh and up_sh never need two more)
        uint8_t *xsg = vsg == vg ? xg : vsg == vu ? xu : ws + L.xs;
        uint8_t *xsu = vsu == vg ? xg : vsu == vu ? xu : ws + L.xs;
        DS4_ASSERT(!(xsg == ws + L.xs && xsu == ws + L.xs) || vsg == vsu);
        if (xsg == ws + L.xs) ds4cu_quantize_rows(be, vsg, x, 0, d, n, d, n, xsg, rsg);
        else if (xsu == ws + L.xs) ds4cu_quantize_rows(be, vsu, x, 0, d, n, d, n, xsu, rsu);
        float *SG = (float *)(ws + L.sh), *SU = SG + (size_t)n * ffs;
        bool ok = !pf_mmq(be, &sg, xsg, rsg, nullptr, n, SG, ffs) && !pf_mmq(be, &su, xsu, rsu, nullptr, n, SU, ffs);
        uint8_t *shq = ws + L.shq;
        if (ok) pf_swiglu_q(be, vsd, SG, SU, ffs, n, nullptr, nullptr, clamp, shq, rsd);
        SH = SG;  // over the dead SG / SU
        ok = ok && !pf_mmq(be, &sdn, shq, rsd, nullptr, n, SH, d);
        ds4cu::side_end(be);
        if (!ok) { // mmq refused: the caller's matvec path rewrites y; the side work ends first
            ds4cu::side_join(be);
            return false;
        }
    }

    // 4. gate / up grouped over the experts
    ds4_cuda_mmq_groups gg = {off, mat, xidx, ne + 1, P};
    if (pf_mmq(be, &qg, xg, rg, &gg, P, G, ff) || pf_mmq(be, &qu, xu, ru, &gg, P, U, ff)) {
        if (gate_sh) ds4cu::side_join(be);
        return false;
    }

    // 5. h = swiglu(g, u) · w quantized for down; 6. down grouped (DN over the dead G / U)
    pf_swiglu_q(be, vd, G, U, ff, P, selw, pidx, clamp, hq, rd);
    ds4_cuda_mmq_groups gd = {off, mat, nullptr, ne + 1, P};
    if (pf_mmq(be, &qd, hq, rd, &gd, P, DN, d)) {
        if (gate_sh) ds4cu::side_join(be);
        return false;
    }
    if (gate_sh) ds4cu::side_join(be);  // SH complete before the combine reads it

    // 7. ordered combine into y
    const bool v4 = d % 4 == 0 && (uintptr_t)y % 16 == 0 && (uintptr_t)DN % 16 == 0 && (uintptr_t)SH % 16 == 0;
    if (v4)
        DS4CU_CK(ds4cu::launch(k_pf_combine4, dim3((unsigned)((d / 4 + kCombThreads - 1) / kCombThreads), (unsigned)n),
                               dim3(kCombThreads), 0, st, y, (const float *)DN, (const int32_t *)pos, (const float *)SH, d, k));
    else
        DS4CU_CK(ds4cu::launch(k_pf_combine, dim3((unsigned)((d + 255) / 256), (unsigned)n), dim3(256), 0, st, y,
                               (const float *)DN, (const int32_t *)pos, (const float *)SH, d, k));
    return true;
}
