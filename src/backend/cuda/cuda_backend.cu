// cuda_backend.cu — the CUDA implementation of the op contract (backend.h).
//
// Owns: device memory (alloc/read/write/copy on one non-blocking stream), the resident
// weights (the GGUF data section uploaded once; a tensor's device address is its offset
// in the mapping), and one kernel per elementwise / per-row op with the semantics of the
// CPU reference (cpu_backend.c). Matmuls go through the quantized matvec kernels
// (matvec.cu): a chunk of n tokens is processed as batches of activation vectors against
// the same matrix, each output element computed by the same code whatever the batch.
// Must not: know the layer order (forward.c), allocate device memory inside an op
// except the growable index/staging buffers noted below, or change numerics relative to
// the CPU reference beyond f32 rounding order (per-op tolerances: tests/cuda).
//
// Decode steps (single-token chunks, backend.h graph_begin / graph_end) are recorded and
// replayed as CUDA graphs by graph.cu: stage() then copies into the step's arena, and every
// call below that synchronises, copies directly or (re)allocates first calls
// graph_sync_point, which issues what was recorded. Host round trips the contract still
// forces (a synchronising one ends the recording of a decode step):
//  - topk returns host indices: the scores are read back (one sync per CSA layer once
//    the context exceeds idx_topk compressed rows);
//  - attention takes host index arrays: they are staged through pinned memory (async,
//    no sync) to the device;
//  - get_rows takes host ids: rows are dequantised on the host from the mapping and
//    copied (one sync per chunk);
//  - the router's logits are read by forward.c (one sync per layer) only on the generic
//    MoE path (prefill chunks); decode uses the fused moe_routed op (router on the
//    device, the selected experts' ids never leave it).
// rope's inv_freq argument is host memory (the engine's table): cos/sin are computed on
// the host exactly as the CPU backend does and passed by value.
// Cached compressed rows are stored in kv_fmt.h's compact layout in production numerics
// (ds4cu::kv_compact, be->kv_row_bytes; DS4_CUDA_KV=f32 keeps f32 rows): compress_rows
// writes them, the ops that read them decode exactly; the generic attention op gathers and
// decodes its rows_b (kv_rows.cu) with the model's n_rot before the f32 kernel.
// Environment (diagnostics): DS4_CUDA_PROFILE=1 prints a per-op time table of decode
// chunks at free (every op synchronised); DS4_CUDA_PREQ=1 quantises activations with
// ds4_cuda_quantize_act before the matvec (same values); DS4_CUDA_NO_FUSED_MOE=1 disables
// the optional fused ops (generic forward.c sequence); DS4_CUDA_NO_PDL=1 launches every
// kernel without programmatic dependent launch (see KL and pdl_enter below). Device-to-
// device copies and fills are kernels (k_copy, k_zero), not memcpy/memset nodes, so the
// stream's chain of programmatic launches is not broken by them (overlapping copies keep
// the piecewise cudaMemcpyAsync path).
#include <math.h>
#include <string.h>
#include <time.h>

#include <vector>

#include "common.cuh"
#include "cuda_matvec.h"
#include "cuda_mmq.h"
#include "graph.h"

extern "C" {
#include "backend/backend.h"
#include "model/ggml_type.h"
#include "model/gguf.h"
#include "model/quant.h"
}
#include "backend/kv_fmt.h"
#include "cuda_backend.h"
#include "cuda_internal.h"
#include "moe_prefill.h"

namespace {

struct owned_dev {
    owned_dev *next;
    void *p;
};

constexpr int kProfEv = 8192, kProfLab = 96;

struct cu_impl {
    cudaStream_t st;
    // a second stream for work that may overlap the main stream's inside one op (the
    // shared expert of a prefill chunk next to its routed experts): st_cur is where
    // ds4cu::stream sends launches (NULL: st); fork / join events order the two
    cudaStream_t st_side, st_cur;
    cudaEvent_t ev_fork, ev_join;
    int dev;
    char gpu_name[256];
    // resident weights: [hbase, hbase + hsize) of the mapping lives at dbase
    const uint8_t *hbase;
    uint64_t hsize;
    uint8_t *dbase;
    double upload_s;
    owned_dev *vecs;          // upload_vec conversions
    int32_t *d_zero_ids;      // [64] zeros: matvec batches over one matrix
    // staging ring: pinned host + device, consumed in stream order
    uint8_t *h_ring, *d_ring;
    size_t ring_cap, ring_off;
    // decode steps as CUDA graphs (graph.h; NULL: off)
    ds4cu::GraphRec *graph;
    // get_rows' host dequantisation rows: grown on the first call that needs more (a prefill
    // chunk), so decode steps allocate nothing
    float *gr_host;
    size_t gr_cap;
    // host readback scratch (topk scores)
    float *h_score;
    size_t h_score_cap;
    int max_tok;
    int64_t max_in;
    // moe_routed scratch (grown on first use: sizes depend on the expert shapes)
    int32_t *d_sel;
    float *d_selw, *d_g, *d_u, *d_dn;
    size_t moe_tok_cap, moe_g_cap, moe_dn_cap; // elements
    int moe_k;
    int64_t moe_ff, moe_d;
    // DS4_CUDA_PREQ=1: production activations quantised once per matmul by
    // ds4_cuda_quantize_act (instead of inside the matvec kernel); xq grows on demand
    bool preq;
    // compressed rows in the compact layout (ds4cu::kv_compact); n_rot: the model's rope
    // dims, the layout of the generic attention op's compact rows_b (it has no n_rot)
    bool kv_compact;
    int n_rot;
    void *d_xq;
    size_t xq_cap;
    // DS4_CUDA_PROFILE=1: every op synchronises the stream before and after and adds
    // its wall time to a per-op total (printed by free); for a per-op breakdown only
    // fused-op support (cuda_internal.h): per-slot scratch and last-block counters
    void *scr[ds4cu::SCR_COUNT];
    size_t scr_cap[ds4cu::SCR_COUNT];
    unsigned *d_counters;
    int prof;               // 0 off, 1 synchronised per op, 2 device events (see Prof)
    bool prof_decode;       // the current chunk is profiled (set by get_rows)
    bool prof_all;          // DS4_CUDA_PROFILE_ALL=1: prefill chunks too
    int prof_depth;
    cudaEvent_t ev[kProfEv + 1], ev_end[kProfEv]; // ev_end: mode 3 only
    int ev_lab[kProfEv], ev_n;
    char lab_name[kProfLab][64];
    double lab_t[kProfLab];
    long lab_c[kProfLab];
    int lab_n;
    double prof_t[32];
    long prof_n[32];
};

cu_impl *IMPL(ds4_backend *be) { return (cu_impl *)be->impl; }

// A CUDA failure inside an op has no error path in the contract (ops are void): it is
// a device fault, reported like a failed assertion.
void cu_check(cudaError_t e, const char *what, const char *file, int line) {
    if (e == cudaSuccess) return;
    char msg[512];
    snprintf(msg, sizeof msg, "CUDA backend: %s: %s", what, cudaGetErrorString(e));
    ds4_assert_fail(msg, file, line);
}
#define CK(call) cu_check((call), #call, __FILE__, __LINE__)
#define CKL() cu_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
// Every kernel of this file is launched with programmatic dependent launch (common.cuh:
// ds4cu::launch, DS4_CUDA_NO_PDL=1 turns it off) and starts with pdl_enter().
#define KL(k, grid, block, smem, st, ...) CK(ds4cu::launch(k, dim3(grid), dim3(block), (size_t)(smem), st, __VA_ARGS__))

void mv_check(int rc, const char *err) {
    if (rc < 0) ds4_assert_fail(err, __FILE__, __LINE__);
}

inline unsigned nblk(int64_t n, int t) { return (unsigned)((n + t - 1) / t); }

// Device address of host pointer p inside the mapping (weights).
const void *dev_of(cu_impl *im, const void *p) {
    const uint8_t *b = (const uint8_t *)p;
    DS4_ASSERT(b >= im->hbase && b < im->hbase + im->hsize);
    return im->dbase + (b - im->hbase);
}

// Grows a device buffer to at least `bytes`; -1 when the allocation fails.
int try_grow(void **p, size_t *cap, size_t bytes, cudaStream_t st) {
    if (bytes <= *cap) return 0;
    ds4cu::graph_sync_point(ds4cu::g_rec); // recorded launches may use the old buffer
    if (cudaStreamSynchronize(st) != cudaSuccess) return -1;
    if (*p) cudaFree(*p);
    *p = NULL;
    *cap = 0;
    if (cudaMalloc(p, bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        *p = NULL;
        return -1;
    }
    *cap = bytes;
    return 0;
}

// Copies `bytes` of host memory into the staging ring and returns the device address
// that holds them for kernels launched afterwards on the stream. Pinned source, so the
// copy is asynchronous; a wrap waits for the stream once (every earlier slice consumed).
void *stage(cu_impl *im, const void *host, size_t bytes) {
    if (void *g = ds4cu::graph_stage(im->graph, host, bytes)) return g; // a decode step's graph
    const size_t span = (bytes + 255) & ~(size_t)255; // slices stay 256-byte aligned
    DS4_ASSERT(span <= im->ring_cap);
    if (im->ring_off + span > im->ring_cap) {
        CK(cudaStreamSynchronize(im->st));
        im->ring_off = 0;
    }
    uint8_t *h = im->h_ring + im->ring_off, *d = im->d_ring + im->ring_off;
    memcpy(h, host, bytes); // exactly `bytes`: the source may end at a page boundary
    CK(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, im->st));
    im->ring_off += span;
    return d;
}

enum ProfOp { P_QKV_ROPE_N, P_COMPRESS_ROWS, P_INDEXER_TOPK, P_ATTENTION_N, P_HC_POST_SITE, P_HC_SITE, P_QKV_ROPE, P_TOPK_DEV, P_ATTENTION_EX, P_MATMUL_MULTI, P_MATMUL, P_MOE_ROUTED, P_GET_ROWS, P_RMSNORM, P_ROPE, P_AXPY, P_SWIGLU, P_HC_PRE, P_HC_POST, P_HC_HEAD, P_COMPRESS_POOL, P_ATTENTION, P_INDEXER_SCORES, P_TOPK, P_FP8_SIM, P_HADAMARD_FP4_SIM, P_ROUND_F16, P_COPY, P_ZERO, P_READ, P_WRITE, P_COUNT };
const char *const kProfName[] = {"qkv_rope_n", "compress_rows", "indexer_topk", "attention_n", "hc_post_site", "hc_site", "qkv_rope", "topk_dev", "attention_ex", "matmul_multi", "matmul", "moe_routed", "get_rows", "rmsnorm", "rope", "axpy", "swiglu", "hc_pre", "hc_post", "hc_head", "compress_pool", "attention", "indexer_scores", "topk", "fp8_sim", "hadamard_fp4_sim", "round_f16", "copy", "zero", "read", "write"};

double now_s();
int prof_label(cu_impl *im, const char *name);
void prof_ev_flush(cu_impl *im);
// Scoped per-op timer (outermost op only; see cu_impl.prof). Mode 1 synchronises around
// the op (host wall time); mode 2 records a device event at the op's start and charges
// the device time until the next op's event to it (no synchronisation: the stream runs
// as in production, so a row is the op's GPU time plus any gap before the next op).
struct Prof {
    cu_impl *im;
    int op;
    double t0;
    Prof(cu_impl *i, int o, const char *label = nullptr) : im(i), op(o), t0(0) {
        if (!im->prof || !im->prof_decode || im->prof_depth++ > 0) return;
        if (im->prof >= 2) {
            if (im->ev_n == kProfEv) prof_ev_flush(im);
            im->ev_lab[im->ev_n] = label ? prof_label(im, label) : prof_label(im, kProfName[o]);
            if (im->prof == 3) cudaStreamSynchronize(im->st);
            cudaEventRecord(im->ev[im->ev_n++], im->st);
            return;
        }
        cudaStreamSynchronize(im->st);
        t0 = now_s();
    }
    ~Prof() {
        if (!im->prof || !im->prof_decode || --im->prof_depth > 0) return;
        if (im->prof == 3 && im->ev_n > 0) cudaEventRecord(im->ev_end[im->ev_n - 1], im->st);
        if (im->prof >= 2) return;
        cudaStreamSynchronize(im->st);
        im->prof_t[op] += now_s() - t0;
        im->prof_n[op]++;
    }
};
#define PROF(op) Prof prof_(IMPL(be), P_##op)

// ------------------------------------------------------------------ device helpers
using ds4cu::warp_max;
using ds4cu::warp_sum;
using ds4cu::warp_sum_d;

// Block-wide sums/max for blocks of a multiple of 32 threads (<= 1024); result on all.
__device__ double block_sum_d(double v) {
    __shared__ double sh[32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0;
    return warp_sum_d(v);
}
__device__ float block_sum(float v) {
    __shared__ float sh[32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(v);
}
__device__ float block_max(float v) {
    __shared__ float sh[32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return warp_max(v);
}

__device__ float d_sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }

using ds4cu::d_fp4_round;
using ds4cu::d_fp8_round;
using ds4cu::d_pow2_ceil;

// ------------------------------------------------------------------ kernels
// First statement of every kernel here: such a kernel may start while the previous
// kernel of the stream still runs, so it waits for that kernel's completion (and memory)
// before touching any memory (these kernels read no weights worth fetching earlier), then
// lets the next kernel of the stream begin launching (at most two grids in flight).
__device__ __forceinline__ void pdl_enter() {
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
}

// dst[0, n) = src[0, n) for non-overlapping ranges (cu_copy): 16-byte words when both
// addresses are 16-aligned, else 4-byte words when 4-aligned, else bytes; grid-stride.
__global__ void k_copy(uint8_t *dst, const uint8_t *src, size_t n) {
    pdl_enter();
    const size_t t0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x, nt = (size_t)gridDim.x * blockDim.x;
    const uintptr_t al = (uintptr_t)dst | (uintptr_t)src;
    size_t done = 0;
    if (al % 16 == 0) {
        const size_t nw = n / 16;
        for (size_t i = t0; i < nw; i += nt) ((uint4 *)dst)[i] = ((const uint4 *)src)[i];
        done = nw * 16;
    } else if (al % 4 == 0) {
        const size_t nw = n / 4;
        for (size_t i = t0; i < nw; i += nt) ((uint32_t *)dst)[i] = ((const uint32_t *)src)[i];
        done = nw * 4;
    }
    for (size_t i = done + t0; i < n; i += nt) dst[i] = src[i];
}

// dst[0, n) = 0 (cu_zero), word-wide when 16-aligned.
__global__ void k_zero(uint8_t *dst, size_t n) {
    pdl_enter();
    const size_t t0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x, nt = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    if ((uintptr_t)dst % 16 == 0) {
        const size_t nw = n / 16;
        for (size_t i = t0; i < nw; i += nt) ((uint4 *)dst)[i] = make_uint4(0u, 0u, 0u, 0u);
        done = nw * 16;
    }
    for (size_t i = done + t0; i < n; i += nt) dst[i] = 0;
}

// Grid of the copy / fill kernels: one 16-byte word per thread, at most 4096 blocks of
// 256 (grid-stride beyond).
unsigned copy_blocks(size_t n) {
    const size_t w = (n + 15) / 16, b = (w + 255) / 256;
    return (unsigned)(b < 1 ? 1 : b > 4096 ? 4096 : b);
}
__global__ void k_rmsnorm(const float *x, int64_t xs, const float *w, float *y, int64_t ys, int64_t n, double eps) {
    pdl_enter();
    const float *xr = x + (int64_t)blockIdx.x * xs;
    float *yr = y + (int64_t)blockIdx.x * ys;
    double ss = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = block_sum_d(ss);
    const float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v = __fmul_rn(xr[i], scale);
        yr[i] = w ? __fmul_rn(v, w[i]) : v;
    }
}

// Register-resident rmsnorm for float4-aligned rows (Flash: 4096, 16384, 512, 1024 wide):
// every thread issues its KV float4 loads of x (and w) before any arithmetic, so a row costs
// one memory round trip instead of n / blockDim dependent ones (decode runs single rows,
// where that latency was the whole cost). Per-element arithmetic is the same as k_rmsnorm;
// only the order of the double sum of squares differs. The block size depends on n only,
// never on the number of rows, so a row gives the same bits in a batch and alone.
template <int KV>
__global__ void __launch_bounds__(1024) k_rmsnorm_v4(const float *x, int64_t xs, const float *w, float *y, int64_t ys,
                                                     int n4, int64_t n, double eps) {
    pdl_enter();
    const float4 *xr = (const float4 *)(x + (int64_t)blockIdx.x * xs);
    float4 *yr = (float4 *)(y + (int64_t)blockIdx.x * ys);
    const float4 *w4 = (const float4 *)w;
    float4 v[KV], wv[KV];
#pragma unroll
    for (int k = 0; k < KV; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < n4) {
            v[k] = xr[i];
            wv[k] = w ? w4[i] : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    double ss = 0;
#pragma unroll
    for (int k = 0; k < KV; k++) {
        if (threadIdx.x + k * blockDim.x < n4) {
            ss += (double)v[k].x * v[k].x;
            ss += (double)v[k].y * v[k].y;
            ss += (double)v[k].z * v[k].z;
            ss += (double)v[k].w * v[k].w;
        }
    }
    ss = block_sum_d(ss);
    const float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
#pragma unroll
    for (int k = 0; k < KV; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < n4) yr[i] = ds4cu::rms_scale4(v[k], scale, w != nullptr, wv[k]);
    }
}

struct RopeTab {
    float c[128], s[128];
};

__global__ void k_rope(float *x, int64_t rs, int n_rows, int64_t off, int half, RopeTab tab) {
    pdl_enter();
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)n_rows * half) return;
    const int r = (int)(i / half), j = (int)(i % half);
    float *p = x + r * rs + off + 2 * j;
    const float a = p[0], b = p[1], c = tab.c[j], s = tab.s[j];
    p[0] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    p[1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
}

__global__ void k_axpy(float *y, const float *x, float a, int64_t n) {
    pdl_enter();
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __fadd_rn(y[i], __fmul_rn(a, x[i]));
}

__global__ void k_swiglu(const float *g, const float *u, float *out, int64_t n, float limit, float scale) {
    pdl_enter();
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gv = fminf(g[i], limit);
    float uv = fminf(fmaxf(u[i], -limit), limit);
    float silu = gv / (1.0f + expf(-gv));
    out[i] = __fmul_rn(__fmul_rn(silu, uv), scale);
}

// hc_pre: one block per token; thread 0 does the small h×h Sinkhorn exactly in the CPU
// order, then the block forms x.
// hc_pre: one block per token; warp 0 does the small h×h Sinkhorn in shared memory
// (h <= 32) in the CPU's per-element order, then the block writes post/comb and forms x.
__global__ void k_hc_pre(const float *mix, const float *scale, const float *base, const float *H, int h, int64_t d,
                         int iters, float eps, float *x, float *post, float *comb) {
    pdl_enter();
    __shared__ float pre[64], C[64 * 64];
    const int t = blockIdx.x;
    const int mw = (2 + h) * h;
    // warp 0, lane i < h owns row i (softmax, row sums) and column i (column sums); every
    // element sees the same operations in the same order as the CPU's loops
    if (threadIdx.x < 32) {
        const int i = threadIdx.x;
        const float *m = mix + (int64_t)t * mw;
        if (i < h) {
            pre[i] = d_sigmoid(m[i] * scale[0] + base[i]) + eps;
            post[t * h + i] = 2.0f * d_sigmoid(m[h + i] * scale[1] + base[h + i]);
            float mx = -INFINITY;
            for (int j = 0; j < h; j++) {
                C[i * h + j] = m[2 * h + i * h + j] * scale[2] + base[2 * h + i * h + j];
                mx = fmaxf(mx, C[i * h + j]);
            }
            float s = 0;
            for (int j = 0; j < h; j++) s += (C[i * h + j] = expf(C[i * h + j] - mx));
            for (int j = 0; j < h; j++) C[i * h + j] = C[i * h + j] / s + eps;
        }
        __syncwarp();
        for (int it = 0; it < iters; it++) {
            if (it > 0) {
                if (i < h) {
                    float s = 0;
                    for (int j = 0; j < h; j++) s += C[i * h + j];
                    for (int j = 0; j < h; j++) C[i * h + j] /= (s + eps);
                }
                __syncwarp();
            }
            if (i < h) {
                float s = 0;
                for (int r = 0; r < h; r++) s += C[r * h + i];
                for (int r = 0; r < h; r++) C[r * h + i] /= (s + eps);
            }
            __syncwarp();
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < h * h; i += blockDim.x) comb[(int64_t)t * h * h + i] = C[i];
    const float *Ht = H + (int64_t)t * h * d;
    float *xt = x + (int64_t)t * d;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        float s = 0;
        for (int k = 0; k < h; k++) s = __fadd_rn(s, __fmul_rn(pre[k], Ht[k * d + i]));
        xt[i] = s;
    }
}

// hc_pre for small h (h*h <= 32, Flash: h = 4) and float4-aligned d: one block per token.
// Every thread first issues its loads of the h rows of H (one float4 column slice each),
// so their latency overlaps warp 0's Sinkhorn instead of following it. Warp 0 holds the
// h×h matrix in registers, lane r*h+c owning element (r,c); row and column sums gather
// the h values by shuffles and add them in index order, so each element sees exactly the
// operations, in the same order, of k_hc_pre (and of the CPU's loops): same bits.
template <int HH>
__global__ void __launch_bounds__(1024) k_hc_pre_small(const float *mix, const float *scale, const float *base,
                                                       const float *H, int64_t d, int iters, float eps, float *x,
                                                       float *post, float *comb) {
    pdl_enter();
    __shared__ float pre[HH];
    const int t = blockIdx.x;
    const int h = HH, mw = (2 + HH) * HH;
    const int64_t d4 = d / 4;
    const float4 *Ht = (const float4 *)(H + (int64_t)t * h * d);
    float4 hv[HH];
    const int64_t i0 = threadIdx.x;
    if (i0 < d4) {
#pragma unroll
        for (int k = 0; k < HH; k++) hv[k] = Ht[k * d4 + i0];
    }
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        const float *m = mix + (int64_t)t * mw;
        if (lane < h) {
            pre[lane] = d_sigmoid(m[lane] * scale[0] + base[lane]) + eps;
            post[t * h + lane] = 2.0f * d_sigmoid(m[h + lane] * scale[1] + base[h + lane]);
        }
        const bool own = lane < h * h;
        const int r = own ? lane / h : 0, c = own ? lane % h : 0;
        float v = own ? m[2 * h + lane] * scale[2] + base[2 * h + lane] : 0.0f;
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < HH; j++) mx = fmaxf(mx, __shfl_sync(0xffffffffu, v, r * h + j));
        v = expf(v - mx);
        float s = 0;
#pragma unroll
        for (int j = 0; j < HH; j++) s += __shfl_sync(0xffffffffu, v, r * h + j);
        v = v / s + eps;
        for (int it = 0; it < iters; it++) {
            if (it > 0) {
                s = 0;
#pragma unroll
                for (int j = 0; j < HH; j++) s += __shfl_sync(0xffffffffu, v, r * h + j);
                v /= (s + eps);
            }
            s = 0;
#pragma unroll
            for (int j = 0; j < HH; j++) s += __shfl_sync(0xffffffffu, v, j * h + c);
            v /= (s + eps);
        }
        if (own) comb[(int64_t)t * h * h + lane] = v;
    }
    __syncthreads();
    float4 *xt = (float4 *)(x + (int64_t)t * d);
    for (int64_t i = i0; i < d4; i += blockDim.x) {
        if (i != i0) {
#pragma unroll
            for (int k = 0; k < HH; k++) hv[k] = Ht[k * d4 + i];
        }
        float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int k = 0; k < HH; k++) {
            const float p = pre[k];
            o.x = __fadd_rn(o.x, __fmul_rn(p, hv[k].x));
            o.y = __fadd_rn(o.y, __fmul_rn(p, hv[k].y));
            o.z = __fadd_rn(o.z, __fmul_rn(p, hv[k].z));
            o.w = __fadd_rn(o.w, __fmul_rn(p, hv[k].w));
        }
        xt[i] = o;
    }
}

__global__ void k_hc_post(const float *y, const float *H, const float *post, const float *comb, int n_tok, int h,
                          int64_t d, float *Hout) {
    pdl_enter();
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)n_tok * h * d) return;
    const int64_t i = idx % d;
    const int j = (int)((idx / d) % h);
    const int t = (int)(idx / ((int64_t)h * d));
    const float *Ht = H + (int64_t)t * h * d, *C = comb + (int64_t)t * h * h;
    float s = __fmul_rn(post[t * h + j], y[(int64_t)t * d + i]);
    for (int k = 0; k < h; k++) s = __fadd_rn(s, __fmul_rn(C[k * h + j], Ht[k * d + i]));
    Hout[idx] = s;
}

__global__ void k_hc_head(const float *mix, const float *scale, const float *base, const float *H, int h, int64_t d,
                          float eps, float *y) {
    pdl_enter();
    __shared__ float w[64];
    const int t = blockIdx.x;
    if (threadIdx.x < h) w[threadIdx.x] = d_sigmoid(mix[t * h + threadIdx.x] * scale[0] + base[threadIdx.x]) + eps;
    __syncthreads();
    const float *Ht = H + (int64_t)t * h * d;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        float s = 0;
        for (int k = 0; k < h; k++) s = __fadd_rn(s, __fmul_rn(w[k], Ht[k * d + i]));
        y[(int64_t)t * d + i] = s;
    }
}

__global__ void k_compress_pool(const float *cur, const float *prev, int64_t rs, int R, int coff, int64_t hd,
                                float *out) {
    pdl_enter();
    const int64_t f = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= hd) return;
    const int64_t cw = coff * hd, off = coff == 2 ? hd : 0;
    float mx = -INFINITY;
    if (prev)
        for (int r = 0; r < R; r++) mx = fmaxf(mx, prev[r * rs + cw + f]);
    for (int r = 0; r < R; r++) mx = fmaxf(mx, cur[r * rs + cw + off + f]);
    float s = 0, acc = 0;
    if (prev)
        for (int r = 0; r < R; r++) {
            float e = expf(prev[r * rs + cw + f] - mx);
            s += e;
            acc = __fadd_rn(acc, __fmul_rn(e, prev[r * rs + f]));
        }
    for (int r = 0; r < R; r++) {
        float e = expf(cur[r * rs + cw + off + f] - mx);
        s += e;
        acc = __fadd_rn(acc, __fmul_rn(e, cur[r * rs + off + f]));
    }
    out[f] = acc / s;
}

// Sink attention: one block per head. Logits of all rows into shared memory (one warp
// per row), softmax with the sink in the denominator, then the weighted sum of rows with
// warps over rows and lanes over features (partials reduced in shared memory).
constexpr int kAttWarps = 32, kAttChunk = 512; // features per pass: 32 lanes × 16
__global__ void __launch_bounds__(kAttWarps * 32) k_attention(const float *q, int64_t hd, const float *ra,
                                                            const int32_t *ia, int na, const float *rb,
                                                            const int32_t *ib, int nb, const float *sinks,
                                                            float scale, float *out) {
    pdl_enter();
    extern __shared__ float sm[];
    const int h = blockIdx.x, n = na + nb;
    float *part = sm;                         // [kAttWarps][kAttChunk]
    float *lg = sm + kAttWarps * kAttChunk;   // [n]
    const float *qh = q + (int64_t)h * hd;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int j = w; j < n; j += kAttWarps) {
        const float *kv = j < na ? ra + (int64_t)ia[j] * hd : rb + (int64_t)ib[j - na] * hd;
        float s = 0;
        for (int64_t i = lane; i < hd; i += 32) s += qh[i] * kv[i];
        s = warp_sum(s);
        if (lane == 0) lg[j] = s * scale;
    }
    __syncthreads();
    float m = sinks[h];
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, lg[j]);
    m = block_max(m);
    float s = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float e = expf(lg[j] - m);
        lg[j] = e;
        s += e;
    }
    s = block_sum(s) + expf(sinks[h] - m);   // block_sum's barriers publish lg[]
    const float inv = 1.0f / s;
    for (int64_t base = 0; base < hd; base += kAttChunk) {
        float acc[16];
#pragma unroll
        for (int c = 0; c < 16; c++) acc[c] = 0;
        for (int j = w; j < n; j += kAttWarps) {
            const float *kv = (j < na ? ra + (int64_t)ia[j] * hd : rb + (int64_t)ib[j - na] * hd) + base;
            const float p = lg[j];
#pragma unroll
            for (int c = 0; c < 16; c++) {
                const int64_t i = lane + 32 * c;
                if (base + i < hd) acc[c] += p * kv[i];
            }
        }
#pragma unroll
        for (int c = 0; c < 16; c++) part[w * kAttChunk + lane + 32 * c] = acc[c];
        __syncthreads();
        for (int i = threadIdx.x; i < kAttChunk && base + i < hd; i += blockDim.x) {
            float t = 0;
            for (int ww = 0; ww < kAttWarps; ww++) t += part[ww * kAttChunk + i];
            out[(int64_t)h * hd + base + i] = t * inv;
        }
        __syncthreads();
    }
}

// FP8 (e4m3) simulation per 64-element block, one warp per block (two elements per lane):
// amax = max(1e-4, max|v|) (a warp max: max is exact in any order, so the bits equal the
// CPU's sequential loop), scale = pow2_ceil(amax / 448), v = round_e4m3(clamp(v / scale)) *
// scale. A warp rather than one thread per block: decode quantises single KV rows (few
// blocks), where a thread's 64 sequential loads were the whole cost.
__global__ void k_fp8_sim_warp(float *x, int64_t rs, int n_rows, int64_t n) {
    pdl_enter();
    const int64_t nbk = (n + 63) / 64;
    const int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (wid >= nbk * n_rows) return; // whole warps leave together
    const int r = (int)(wid / nbk);
    const int64_t b = (wid % nbk) * 64;
    float *v = x + r * rs + b;
    const int len = n - b < 64 ? (int)(n - b) : 64;
    const bool h0 = lane < len, h1 = lane + 32 < len;
    const float a = h0 ? v[lane] : 0.0f, c = h1 ? v[lane + 32] : 0.0f;
    float amax = 1e-4f;
    if (h0) amax = fmaxf(amax, fabsf(a));
    if (h1) amax = fmaxf(amax, fabsf(c));
    amax = warp_max(amax);
    const float sc = d_pow2_ceil(amax / 448.0f);
    if (h0) v[lane] = d_fp8_round(fminf(fmaxf(a / sc, -448.0f), 448.0f)) * sc;
    if (h1) v[lane + 32] = d_fp8_round(fminf(fmaxf(c / sc, -448.0f), 448.0f)) * sc;
}

// One block per row; the row lives in shared memory for the butterfly.
__global__ void k_hadamard_fp4(float *x, int64_t rs, int64_t n) {
    pdl_enter();
    extern __shared__ float v[];
    float *row = x + (int64_t)blockIdx.x * rs;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v[i] = row[i];
    __syncthreads();
    if ((n & (n - 1)) == 0) {
        for (int64_t st = 1; st < n; st *= 2) {
            for (int64_t p = threadIdx.x; p < n / 2; p += blockDim.x) {
                const int64_t base = (p / st) * 2 * st, i = p % st;
                const float a = v[base + i], b = v[base + st + i];
                v[base + i] = a + b;
                v[base + st + i] = a - b;
            }
            __syncthreads();
        }
        const float norm = (float)(1.0 / sqrt((double)n));
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v[i] *= norm;
        __syncthreads();
    }
    for (int64_t b = (int64_t)threadIdx.x * 32; b < n; b += (int64_t)blockDim.x * 32) {
        const int len = n - b < 32 ? (int)(n - b) : 32;
        float amax = 7.052966104933725e-38f;
        for (int i = 0; i < len; i++) amax = fmaxf(amax, fabsf(v[b + i]));
        const float sc = d_pow2_ceil(amax / 6.0f);
        for (int i = 0; i < len; i++) {
            float qv = fminf(fmaxf(v[b + i] / sc, -6.0f), 6.0f);
            row[b + i] = d_fp4_round(qv) * sc;
        }
    }
}

__global__ void k_round_f16(float *x, int64_t n) {
    pdl_enter();
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = __half2float(__float2half_rn(x[i]));
}

// Router for one token per block (MODEL.md §8.2–8.4, forward.c route()): scores in
// shared memory, k block-wide argmax passes (higher, lower index on ties, NaN last),
// then thread 0 sorts the ids ascending and forms the weights in f64.
// (value, index) ranking of the router's selection: higher value, lower index on ties,
// NaN last; index -1 = nothing (ranks below everything).
__device__ bool d_better_vi(float x, int a, float y, int b) {
    if (b < 0) return a >= 0;
    if (a < 0) return false;
    if (x == y) return a < b;
    if (isnan(y)) return !isnan(x) || a < b;
    if (isnan(x)) return false;
    return x > y;
}
__global__ void k_route(const float *lg, int ne, const float *bias, const int32_t *hash_sel, int k, double w_scale,
                        int exact, int32_t *sel, float *selw) {
    pdl_enter();
    extern __shared__ float rs[];
    __shared__ int chosen[64];
    __shared__ float wv[32];
    __shared__ int wi[32];
    float *sc = rs, *u = rs + ne;
    const int t = blockIdx.x, lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int e = threadIdx.x; e < ne; e += blockDim.x) {
        double z = lg[(int64_t)t * ne + e];
        double sp = z > 20 ? z : log1p(exp(z));
        sc[e] = (float)sqrt(sp);
        u[e] = sc[e] + (bias ? bias[e] : 0.0f);
    }
    if (hash_sel && threadIdx.x < k) chosen[threadIdx.x] = hash_sel[t * k + threadIdx.x];
    __syncthreads();
    if (!hash_sel)
        for (int j = 0; j < k; j++) {  // k block-wide argmax passes over the unchosen
            float bvv = 0;
            int bii = -1;
            for (int e = threadIdx.x; e < ne; e += blockDim.x) {
                bool taken = false;
                for (int i = 0; i < j; i++) taken |= chosen[i] == e;
                if (!taken && d_better_vi(u[e], e, bvv, bii)) {
                    bvv = u[e];
                    bii = e;
                }
            }
            for (int o = 16; o > 0; o >>= 1) {
                float ov = __shfl_xor_sync(0xffffffffu, bvv, o);
                int oi = __shfl_xor_sync(0xffffffffu, bii, o);
                if (d_better_vi(ov, oi, bvv, bii)) {
                    bvv = ov;
                    bii = oi;
                }
            }
            if (lane == 0) {
                wv[w] = bvv;
                wi[w] = bii;
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                for (int i = 1; i < nw; i++)
                    if (d_better_vi(wv[i], wi[i], bvv, bii)) {
                        bvv = wv[i];
                        bii = wi[i];
                    }
                chosen[j] = bii;
            }
            __syncthreads();
        }
    if (threadIdx.x != 0) return;
    int32_t *st = sel + t * k;
    int loc[64];
    for (int j = 0; j < k; j++) loc[j] = chosen[j];
    for (int a2 = 1; a2 < k; a2++)  // ascending ids: the CPU path adds experts in id order
        for (int b2 = a2; b2 > 0 && loc[b2 - 1] > loc[b2]; b2--) {
            int tmp = loc[b2];
            loc[b2] = loc[b2 - 1];
            loc[b2 - 1] = tmp;
        }
    double sum = 0;
    for (int j = 0; j < k; j++) sum += sc[loc[j]];
    double denom = exact ? sum + 1e-20 : (sum > 6.103515625e-5 ? sum : 6.103515625e-5);
    for (int j = 0; j < k; j++) {
        st[j] = loc[j];
        selw[t * k + j] = (float)(sc[loc[j]] / denom * w_scale);
    }
}

// g[j][i] = swiglu(g, u) · (w ? w[j] : 1), j < k, i < ff (the swiglu op's rounding).
__global__ void k_swiglu_w(float *g, const float *u, int64_t ff, int k, float limit, const float *w) {
    pdl_enter();
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= ff * k) return;
    const float scale = w ? w[i / ff] : 1.0f;
    float gv = fminf(g[i], limit);
    float uv = fminf(fmaxf(u[i], -limit), limit);
    float silu = gv / (1.0f + expf(-gv));
    g[i] = __fmul_rn(__fmul_rn(silu, uv), scale);
}

// y[t][i] = Σ_j a_tj · dn[t*k + j][i] from zero in j order, a_tj = w[t*k + j] or 1, then
// + 1 · sh[t][i] when sh (the shared expert) is given: the axpy op's rounding at every step.
// Grid: (ceil(d / blockDim), tokens).
__global__ void k_moe_acc(float *y, const float *dn, int64_t d, int k, const float *w, const float *sh) {
    pdl_enter();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (i >= d) return;
    float acc = 0.0f;
    for (int j = 0; j < k; j++)
        acc = __fadd_rn(acc, __fmul_rn(w ? w[t * k + j] : 1.0f, dn[((int64_t)t * k + j) * d + i]));
    if (sh) acc = __fadd_rn(acc, __fmul_rn(1.0f, sh[(int64_t)t * d + i]));
    y[(int64_t)t * d + i] = acc;
}

// X[e][i] = x[e / k][i], e < nt·k: each (token, expert) selection's own copy of its token's
// input, for the batched expert launches (one x per selection).
__global__ void k_expand(float *X, const float *x, int64_t d, int k, int n_sel) {
    pdl_enter();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int e = blockIdx.y;
    if (i >= d || e >= n_sel) return;
    X[(int64_t)e * d + i] = x[(int64_t)(e / k) * d + i];
}

// ------------------------------------------------------------------ ops
void *cu_alloc(ds4_backend *be, size_t bytes) {
    ds4cu::graph_sync_point(IMPL(be)->graph);
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    if (cudaMemsetAsync(p, 0, bytes ? bytes : 1, IMPL(be)->st) != cudaSuccess) {
        cudaFree(p);
        return NULL;
    }
    return p;
}
void cu_release(ds4_backend *be, void *p) {
    if (!p) return;
    ds4cu::graph_sync_point(IMPL(be)->graph);
    CK(cudaStreamSynchronize(IMPL(be)->st));
    CK(cudaFree(p));
}
void cu_write(ds4_backend *be, void *dst, const void *src, size_t n) {
    PROF(WRITE);
    if (!n) return;
    ds4cu::graph_sync_point(IMPL(be)->graph);
    // pageable source: the call returns once src has been consumed
    CK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, IMPL(be)->st));
}
void cu_read(ds4_backend *be, void *dst, const void *src, size_t n) {
    PROF(READ);
    if (!n) return;
    ds4cu::graph_sync_point(IMPL(be)->graph);
    CK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, IMPL(be)->st));
    CK(cudaStreamSynchronize(IMPL(be)->st));
    // mode 2 charges ops up to now; mode 3 flushes when its list is full or at free (this
    // READ's own end event is recorded only after it returns)
    if (IMPL(be)->prof == 2 && IMPL(be)->prof_depth == 1) prof_ev_flush(IMPL(be));
}
void cu_copy(ds4_backend *be, void *dst, const void *src, size_t n) {
    PROF(COPY);
    if (!n || dst == src) return;
    const uint8_t *s = (const uint8_t *)src;
    uint8_t *d = (uint8_t *)dst;
    if (d + n <= s || s + n <= d) {
        // a kernel, not a memcpy node: keeps the stream's programmatic launch chain
        KL(k_copy, copy_blocks(n), 256, 0, IMPL(be)->st, d, s, n);
        return;
    }
    // overlapping (memmove semantics): in pieces no longer than the distance, ordered
    // so no piece reads bytes an earlier piece wrote (recorded as copies in a graph step)
    ds4cu::GraphRec *gr = IMPL(be)->graph;
    const size_t dist = d > s ? (size_t)(d - s) : (size_t)(s - d);
    if (d < s) {
        for (size_t o = 0; o < n; o += dist) {
            size_t len = n - o < dist ? n - o : dist;
            if (!ds4cu::graph_copy_d2d(gr, d + o, s + o, len))
                CK(cudaMemcpyAsync(d + o, s + o, len, cudaMemcpyDeviceToDevice, IMPL(be)->st));
        }
    } else {
        for (size_t end = n; end > 0;) {
            size_t len = end < dist ? end : dist;
            end -= len;
            if (!ds4cu::graph_copy_d2d(gr, d + end, s + end, len))
                CK(cudaMemcpyAsync(d + end, s + end, len, cudaMemcpyDeviceToDevice, IMPL(be)->st));
        }
    }
}
// dst [n][h][d] = src [n][d] repeated over h (backend.h repeat_rows): one thread per
// destination float4 when d % 4 == 0 and both are 16-byte aligned, else per float.
__global__ void k_repeat_rows(float *dst, const float *src, int h, int64_t d, int64_t total, bool v4) {
    pdl_enter();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    if (v4) {
        const int64_t d4 = d / 4, e = i % d4, row = i / d4; // row = t·h + k
        reinterpret_cast<float4 *>(dst)[i] = reinterpret_cast<const float4 *>(src)[(row / h) * d4 + e];
    } else {
        const int64_t e = i % d, row = i / d;
        dst[i] = src[(row / h) * d + e];
    }
}
void cu_repeat_rows(ds4_backend *be, float *dst, const float *src, int n, int h, int64_t d) {
    PROF(COPY);
    const bool v4 = d % 4 == 0 && ((uintptr_t)dst | (uintptr_t)src) % 16 == 0;
    const int64_t total = (int64_t)n * h * (v4 ? d / 4 : d);
    if (total <= 0) return;
    KL(k_repeat_rows, (unsigned)((total + 255) / 256), 256, 0, IMPL(be)->st, dst, src, h, d, total, v4);
}
void cu_zero(ds4_backend *be, void *dst, size_t n) {
    PROF(ZERO);
    if (n) KL(k_zero, copy_blocks(n), 256, 0, IMPL(be)->st, (uint8_t *)dst, n);
}

const float *cu_upload_vec(ds4_backend *be, const ds4_tensor *t) {
    cu_impl *im = IMPL(be);
    if (!t->data) return NULL;
    ds4cu::graph_sync_point(im->graph);
    const uint8_t *b = (const uint8_t *)t->data;
    if (t->type == DS4_TYPE_F32 && b >= im->hbase && b < im->hbase + im->hsize && ((uintptr_t)b % 4) == 0)
        return (const float *)dev_of(im, t->data);
    const uint64_t rows = t->ne[1] * t->ne[2], n = t->ne[0];
    float *h = (float *)malloc(rows * n * sizeof(float));
    if (!h) return NULL;
    for (uint64_t r = 0; r < rows; r++)
        if (ds4_dequant_row(t->type, b + r * t->row_bytes, h + r * n, (int64_t)n) < 0) {
            free(h);
            return NULL;
        }
    owned_dev *o = (owned_dev *)calloc(1, sizeof *o);
    void *d = NULL;
    if (!o || cudaMalloc(&d, rows * n * sizeof(float)) != cudaSuccess ||
        cudaMemcpy(d, h, rows * n * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess) {
        (void)cudaGetLastError();
        if (d) cudaFree(d);
        free(o);
        free(h);
        return NULL;
    }
    free(h);
    o->p = d;
    o->next = im->vecs;
    im->vecs = o;
    return (const float *)d;
}

// Production chunks of at least kMmqMinRows tokens run their matmuls and MoE through mmq
// (moe_prefill.cu) with quantized activation rows in SCR_ACTQ (up to two dot types of a
// chunk at the widest input) and the chunk MoE's lists and packed rows in SCR_MOE_PF
// (the model's expert shapes, the shared expert assumed as wide as a routed one, up to
// 1024 experts): reserve allocates both, so prefill does not grow them (a stream sync)
// mid-chunk and the memory estimate counts them; larger shapes still grow them on use.
// max_tok counts rows of a chunk's expert matmuls: chunk · n_expert_used (session.c).
void pf_reserve_sizes(ds4_backend *be, int max_tok, int64_t max_in, size_t *actq, size_t *moe) {
    const cu_impl *im = IMPL(be);
    *actq = *moe = 0;
    if (be->numerics != DS4_NUM_PROD) return;
    const int chunk = im->moe_k > 0 ? max_tok / im->moe_k : max_tok;
    if (chunk < ds4cu::kMmqMinRows) return;
    *actq = 2 * (size_t)chunk * (size_t)((max_in + 255) / 256) * 292;
    if (im->moe_k > 0 && im->moe_ff > 0 && im->moe_d > 0)
        *moe = ds4cu_moe_prefill_bytes(chunk, im->moe_k, 1024, im->moe_d, im->moe_ff, im->moe_ff);
}

size_t cu_reserve_bytes(ds4_backend *be, int max_tok, int64_t max_in) {
    // activations of small batches are quantised inside the matvec kernels: no scratch
    size_t actq, moe;
    pf_reserve_sizes(be, max_tok, max_in, &actq, &moe);
    return actq + moe;
}

int cu_reserve(ds4_backend *be, int max_tok, int64_t max_in, char *err, size_t errlen) {
    (void)err;
    (void)errlen;
    cu_impl *im = IMPL(be);
    if (max_tok > im->max_tok) im->max_tok = max_tok;
    if (max_in > im->max_in) im->max_in = max_in;
    // moe_routed scratch: [max_tok][k] selections and weights, [k][ff] gate/up, [k][d] down
    const size_t ntk = (size_t)im->max_tok * im->moe_k;
    if (ntk > im->moe_tok_cap) {
        size_t c1 = im->moe_tok_cap * sizeof(int32_t), c2 = im->moe_tok_cap * sizeof(float);
        if (try_grow((void **)&im->d_sel, &c1, ntk * sizeof(int32_t), im->st) < 0 ||
            try_grow((void **)&im->d_selw, &c2, ntk * sizeof(float), im->st) < 0)
            return ds4_err(err, errlen, DS4_ERR_NOMEM, "CUDA backend: cannot reserve router scratch");
        im->moe_tok_cap = ntk;
    }
    const size_t ng = (size_t)im->moe_k * im->moe_ff, nd = (size_t)im->moe_k * im->moe_d;
    if (ng > im->moe_g_cap) {
        size_t c1 = im->moe_g_cap * sizeof(float), c2 = c1;
        if (try_grow((void **)&im->d_g, &c1, ng * sizeof(float), im->st) < 0 ||
            try_grow((void **)&im->d_u, &c2, ng * sizeof(float), im->st) < 0)
            return ds4_err(err, errlen, DS4_ERR_NOMEM, "CUDA backend: cannot reserve expert scratch");
        im->moe_g_cap = ng;
    }
    if (nd > im->moe_dn_cap) {
        size_t c1 = im->moe_dn_cap * sizeof(float);
        if (try_grow((void **)&im->d_dn, &c1, nd * sizeof(float), im->st) < 0)
            return ds4_err(err, errlen, DS4_ERR_NOMEM, "CUDA backend: cannot reserve expert scratch");
        im->moe_dn_cap = nd;
    }
    size_t actq, moe;
    pf_reserve_sizes(be, im->max_tok, im->max_in, &actq, &moe);
    if (try_grow(&im->scr[ds4cu::SCR_ACTQ], &im->scr_cap[ds4cu::SCR_ACTQ], actq, im->st) < 0 ||
        try_grow(&im->scr[ds4cu::SCR_MOE_PF], &im->scr_cap[ds4cu::SCR_MOE_PF], moe, im->st) < 0)
        return ds4_err(err, errlen, DS4_ERR_NOMEM, "CUDA backend: cannot reserve %.1f MiB of prefill scratch",
                       (double)(actq + moe) / 1048576.0);
    return 0;
}

// Grows a device buffer to at least `bytes` (only when a larger shape first appears).
void grow(void **p, size_t *cap, size_t bytes, cudaStream_t st) {
    if (bytes <= *cap) return;
    ds4cu::graph_sync_point(ds4cu::g_rec); // recorded launches may use the old buffer
    CK(cudaStreamSynchronize(st));
    if (*p) CK(cudaFree(*p));
    *p = NULL;
    CK(cudaMalloc(p, bytes));
    *cap = bytes;
}

// Bytes one activation vector of width k takes in the matvec kernel's shared memory.
int64_t act_bytes(uint32_t wtype, int64_t k, bool quant) {
    if (!quant) return 4 * k;
    uint32_t vt = ds4_vec_dot_type(wtype);
    if (vt == DS4_TYPE_Q8_0) return k / 32 * 34;
    if (vt == DS4_TYPE_Q8_K) return k / 256 * 292;
    return 4 * k;
}

void cu_matmul(ds4_backend *be, const ds4_tensor *W, uint64_t slab, uint64_t row0, uint64_t n_rows, const float *x,
               int64_t xs, float *y, int64_t ys, int n_tok) {
    char lab[64] = "";
    if (IMPL(be)->prof >= 2)
        snprintf(lab, sizeof lab, "matmul %s %llux%llu", ds4_type_name(W->type), (unsigned long long)n_rows,
                 (unsigned long long)W->ne[0]);
    Prof prof_(IMPL(be), P_MATMUL, lab[0] ? lab : nullptr);
    cu_impl *im = IMPL(be);
    DS4_ASSERT(slab < W->ne[2] && row0 + n_rows <= W->ne[1]);
    if (n_rows == 0 || n_tok <= 0) return;
    ds4_cuda_qmat q;
    q.type = W->type;
    q.data = (const uint8_t *)dev_of(im, W->data) + (slab * W->ne[1] + row0) * W->row_bytes;
    q.n = (int64_t)n_rows;
    q.k = (int64_t)W->ne[0];
    q.mat_stride = 0;
    q.n_mats = 1;
    const bool quant = be->numerics == DS4_NUM_PROD;
    const ds4_cuda_act_mode mode = quant ? DS4_CUDA_ACT_QUANT : DS4_CUDA_ACT_F32;
    // Chunks in production numerics: the rows quantized once, one tensor-core GEMM (mmq);
    // small batches and types mmq does not take keep the matvec batches below
    if (ds4cu_mmq_ok(be, W->type, q.k, n_tok) && ds4cu_mmq_rows(be, &q, x, 0, xs, y, ys, n_tok) == 0) return;
    char err[256];
    // F16 weights in such chunks: the f32-accurate tensor-core GEMM (mmf16, cuda_mmq.h).
    // ds4cu_mmq_ok on a type mmq always takes is the same gate (production numerics,
    // n_tok >= kMmqMinRows, DS4_CUDA_NO_MMQ unset); mmf16 refusing (unaligned weights)
    // keeps the matvec path below.
    if (W->type == DS4_TYPE_F16 && ds4_cuda_mmf16_supported(q.k) && ds4cu_mmq_ok(be, DS4_TYPE_Q8_0, 32, n_tok)) {
        const int rc = ds4_cuda_mmf16(&q, x, xs, n_tok, y, ys, im->st, err, sizeof err);
        if (rc == 0) return;
        if (rc != DS4_ERR_UNSUPPORTED) mv_check(rc, err);
    }
    const uint32_t vt = ds4_vec_dot_type(W->type);
    if (quant && im->preq && (vt == DS4_TYPE_Q8_0 || vt == DS4_TYPE_Q8_K)) {
        uint64_t rb = 0;
        ds4_type_row_bytes(vt, (uint64_t)q.k, &rb);
        grow(&im->d_xq, &im->xq_cap, (size_t)rb * n_tok, im->st);
        uint8_t *xq = (uint8_t *)im->d_xq;
        if (xs == q.k)
            mv_check(ds4_cuda_quantize_act(vt, x, xq, q.k, n_tok, im->st, err, sizeof err), err);
        else
            for (int t = 0; t < n_tok; t++)
                mv_check(ds4_cuda_quantize_act(vt, x + (int64_t)t * xs, xq + (size_t)t * rb, q.k, 1, im->st, err, sizeof err), err);
        for (int t = 0; t < n_tok;) {
            int nb = ys == (int64_t)n_rows ? (n_tok - t < 16 ? n_tok - t : 16) : 1;
            mv_check(ds4_cuda_matvec_ids_q(&q, im->d_zero_ids, nb, xq + (size_t)t * rb, nb > 1 ? rb : 0,
                                           y + (int64_t)t * ys, im->st, err, sizeof err), err);
            t += nb;
        }
        return;
    }
    if (n_tok == 1 || ys != (int64_t)n_rows) {
        // one launch per token: y rows are not contiguous [n_tok][n_rows]
        for (int t = 0; t < n_tok; t++)
            mv_check(ds4_cuda_matvec(&q, x + (int64_t)t * xs, y + (int64_t)t * ys, mode, im->st, err, sizeof err), err);
        return;
    }
    // batches of activation vectors against the one matrix (ids all 0): the shared
    // memory holding them bounds the batch
    int64_t cap = (int64_t)(96 * 1024) / act_bytes(W->type, q.k, quant);
    if (cap < 1) cap = 1;
    if (cap > 64) cap = 64;
    for (int t = 0; t < n_tok;) {
        int nb = (int)(n_tok - t < cap ? n_tok - t : cap);
        int rc = ds4_cuda_matvec_ids(&q, im->d_zero_ids, nb, x + (int64_t)t * xs, xs, y + (int64_t)t * ys, mode, im->st,
                                     err, sizeof err);
        if (rc == DS4_ERR_UNSUPPORTED && cap > 1) {
            cap /= 2;
            continue;
        }
        mv_check(rc, err);
        t += nb;
    }
}

ds4_cuda_qmat stack_of(cu_impl *im, const ds4_tensor *W) {
    ds4_cuda_qmat q;
    q.type = W->type;
    q.data = dev_of(im, W->data);
    q.n = (int64_t)W->ne[1];
    q.k = (int64_t)W->ne[0];
    q.mat_stride = W->ne[1] * W->row_bytes;
    q.n_mats = (int32_t)W->ne[2];
    return q;
}

ds4_cuda_qmat one_of(cu_impl *im, const ds4_tensor *W) {
    ds4_cuda_qmat q;
    q.type = W->type;
    q.data = dev_of(im, W->data);
    q.n = (int64_t)W->ne[1];
    q.k = (int64_t)W->ne[0];
    q.mat_stride = 0;
    q.n_mats = 1;
    return q;
}

void cu_moe_routed(ds4_backend *be, const float *lg, const float *bias, const int32_t *hash_sel, const ds4_tensor *gate,
                   const ds4_tensor *up, const ds4_tensor *down, const ds4_tensor *gate_sh, const ds4_tensor *up_sh,
                   const ds4_tensor *down_sh, const float *x, int n, int k, double w_scale, float clamp, float *y) {
    PROF(MOE_ROUTED);
    cu_impl *im = IMPL(be);
    if (n <= 0) return;
    DS4_ASSERT(k >= 1 && k <= 64);
    const int ne = (int)gate->ne[2];
    const int64_t d = (int64_t)gate->ne[0], ff = (int64_t)gate->ne[1];
    const bool exact = be->numerics == DS4_NUM_EXACT;
    // scratch sized at reserve() from the model's expert shapes
    DS4_ASSERT(im->d_sel && (size_t)n * k <= im->moe_tok_cap && (size_t)k * ff <= im->moe_g_cap &&
               (size_t)k * d <= im->moe_dn_cap);
    const int32_t *dhash = hash_sel ? (const int32_t *)stage(im, hash_sel, (size_t)n * k * sizeof(int32_t)) : NULL;
    KL(k_route, n, 256, 2 * (size_t)ne * sizeof(float), im->st, lg, ne, bias, dhash, k, w_scale, exact ? 1 : 0, im->d_sel,
                                                                  im->d_selw);
    CKL();
    // Production chunks: pairs sorted by expert, grouped tensor-core GEMMs, ordered combine
    // (moe_prefill.cu); false when it does not apply (exact, small n, types mmq refuses)
    if (!exact && ds4cu_moe_prefill(be, im->d_sel, im->d_selw, gate, up, down, gate_sh, up_sh, down_sh, x, n, k, clamp, y))
        return;
    const ds4_cuda_qmat qg = stack_of(im, gate), qu = stack_of(im, up), qd = stack_of(im, down);
    const ds4_cuda_act_mode mode = exact ? DS4_CUDA_ACT_F32 : DS4_CUDA_ACT_QUANT;
    char err[256];
    int rc;
    // Every launch below computes each output with the single-matrix matvec code and the
    // swiglu op's rounding, so grouping tokens changes no value (backend.h moe_routed).
    // The shared expert first, for every token: groups of up to 64 tokens, one launch each
    // for gate, up and down (one x per token; ids all 0 select the one matrix), into sh.
    float *sh = nullptr;
    if (gate_sh) {
        const ds4_cuda_qmat sg = one_of(im, gate_sh), su = one_of(im, up_sh), sd = one_of(im, down_sh);
        const int64_t ffs = sg.n;
        DS4_ASSERT(su.n == ffs && sd.k == ffs && sd.n == d && sg.k == d && su.k == d);
        const int ts_max = n < 64 ? n : 64;
        sh = (float *)ds4cu::scratch(be, ds4cu::SCR_MOE, (size_t)n * d * sizeof(float));
        float *gs = (float *)ds4cu::scratch(be, ds4cu::SCR_MOE_SHARED, 2 * (size_t)ts_max * ffs * sizeof(float));
        float *us = gs + (size_t)ts_max * ffs;
        for (int t0 = 0; t0 < n; t0 += 64) {
            const int ts = n - t0 < 64 ? n - t0 : 64;
            const float *xt = x + (int64_t)t0 * d;
            rc = DS4_ERR_UNSUPPORTED;
            if (ts == 1 && sg.type == su.type) {  // decode: gate and up in one list launch
                const ds4_cuda_mv_entry gu[2] = {{sg, nullptr, 1, gs}, {su, nullptr, 1, us}};
                rc = ds4_cuda_matvec_list(gu, 2, xt, mode, im->st, err, sizeof err);
            }
            if (rc == DS4_ERR_UNSUPPORTED) {
                mv_check(ds4_cuda_matvec_ids(&sg, im->d_zero_ids, ts, xt, d, gs, mode, im->st, err, sizeof err), err);
                mv_check(ds4_cuda_matvec_ids(&su, im->d_zero_ids, ts, xt, d, us, mode, im->st, err, sizeof err), err);
            } else {
                mv_check(rc, err);
            }
            float *dst = sh + (int64_t)t0 * d;
            rc = ds4_cuda_matvec_ids_swiglu(&sd, im->d_zero_ids, ts, gs, us, nullptr, clamp, dst, mode, im->st, err,
                                            sizeof err);
            if (rc == DS4_ERR_UNSUPPORTED) {
                KL(k_swiglu_w, nblk(ffs * ts, 256), 256, 0, im->st, gs, us, ffs, ts, clamp, (const float *)nullptr);
                rc = ds4_cuda_matvec_ids(&sd, im->d_zero_ids, ts, gs, ffs, dst, mode, im->st, err, sizeof err);
            }
            mv_check(rc, err);
        }
    }
    // The routed experts: groups of tb tokens (tb·k selections <= 64). One token: gate and
    // up in one list launch over its shared x. More: each selection gets its own copy of
    // its token's x (k_expand), then one launch each for gate, up and down (SwiGLU · w in
    // its prologue in production), and one accumulation for the group.
    const int tb_max = 64 / k;
    const int tbg = n < tb_max ? n : tb_max;
    float *gb = (float *)ds4cu::scratch(be, ds4cu::SCR_MOE_GROUP,
                                        ((size_t)2 * tbg * k * ff + (size_t)2 * tbg * k * d) * sizeof(float));
    float *ub = gb + (size_t)tbg * k * ff, *xb = ub + (size_t)tbg * k * ff, *db = xb + (size_t)tbg * k * d;
    for (int t0 = 0; t0 < n; t0 += tb_max) {
        const int tb = n - t0 < tb_max ? n - t0 : tb_max, ns = tb * k;
        const int32_t *ids = im->d_sel + t0 * k;
        const float *w = im->d_selw + t0 * k;
        const float *xt = x + (int64_t)t0 * d;
        float *g = tb == 1 ? im->d_g : gb, *u = tb == 1 ? im->d_u : ub, *dn = tb == 1 ? im->d_dn : db;
        rc = DS4_ERR_UNSUPPORTED;
        if (tb == 1 && 2 * k <= 64) {
            const ds4_cuda_mv_entry gu[2] = {{qg, ids, k, g}, {qu, ids, k, u}};
            rc = ds4_cuda_matvec_list(gu, 2, xt, mode, im->st, err, sizeof err);
        }
        if (rc == DS4_ERR_UNSUPPORTED) {
            const float *xs = xt;
            int64_t xstr = 0;
            if (tb > 1) {
                KL(k_expand, dim3(nblk(d, 256), (unsigned)ns), 256, 0, im->st, xb, xt, d, k, ns);
                xs = xb;
                xstr = d;
            }
            mv_check(ds4_cuda_matvec_ids(&qg, ids, ns, xs, xstr, g, mode, im->st, err, sizeof err), err);
            mv_check(ds4_cuda_matvec_ids(&qu, ids, ns, xs, xstr, u, mode, im->st, err, sizeof err), err);
        } else {
            mv_check(rc, err);
        }
        // down with swiglu(g, u) (· w in production) made in its activation prologue: the
        // values k_swiglu_w would store, so the same as the generic swiglu + matmul
        rc = ds4_cuda_matvec_ids_swiglu(&qd, ids, ns, g, u, exact ? NULL : w, clamp, dn, mode, im->st, err, sizeof err);
        if (rc == DS4_ERR_UNSUPPORTED) {
            KL(k_swiglu_w, nblk(ff * ns, 256), 256, 0, im->st, g, u, ff, ns, clamp, exact ? NULL : w);
            rc = ds4_cuda_matvec_ids(&qd, ids, ns, g, ff, dn, mode, im->st, err, sizeof err);
        }
        mv_check(rc, err);
        KL(k_moe_acc, dim3(nblk(d, 256), (unsigned)tb), 256, 0, im->st, y + (int64_t)t0 * d, dn, d, k, exact ? w : NULL,
           sh ? sh + (int64_t)t0 * d : (const float *)nullptr);
    }
}

void cu_matmul_groups(ds4_backend *be, const ds4_tensor *W, int G, uint64_t n_rows, const float *x, int64_t gs,
                      int64_t xs, float *y, int64_t ys, int n_tok) {
    PROF(MATMUL);
    cu_impl *im = IMPL(be);
    DS4_ASSERT((uint64_t)G * n_rows <= W->ne[1] && G >= 1 && G <= 64);
    ds4_cuda_qmat q;
    q.type = W->type;
    q.data = dev_of(im, W->data);
    q.n = (int64_t)n_rows;
    q.k = (int64_t)W->ne[0];
    q.mat_stride = n_rows * W->row_bytes;
    q.n_mats = G;
    // Chunks in production numerics: every group slice quantized once, one mmq per group
    if (ds4cu_mmq_ok(be, W->type, q.k, n_tok) && ds4cu_mmq_rows(be, &q, x, gs, xs, y, ys, n_tok) == 0) return;
    const ds4_cuda_act_mode mode = be->numerics == DS4_NUM_PROD ? DS4_CUDA_ACT_QUANT : DS4_CUDA_ACT_F32;
    char err[256];
    // Tokens whose group slices and outputs are packed ([t][G][gs] in, [t][G][n_rows] out,
    // forward.c's layout): tb tokens per launch, selection t·G + g = matrix g with the
    // slice at x + (t·G + g)·gs, output at y + (t·G + g)·n_rows: one launch per tb tokens
    // instead of one per token, the same per-output code (cuda_matvec.h).
    if (n_tok > 1 && xs == (int64_t)G * gs && ys == (int64_t)G * (int64_t)n_rows && G <= 32) {
        const int tb_max = 64 / G;
        int32_t gid[64];
        for (int i = 0; i < tb_max * G; i++) gid[i] = i % G;
        const int32_t *dgid = (const int32_t *)stage(im, gid, (size_t)tb_max * G * sizeof(int32_t));
        int t = 0;
        for (; t < n_tok; t += tb_max) {
            const int tb = n_tok - t < tb_max ? n_tok - t : tb_max;
            const int rc = ds4_cuda_matvec_ids(&q, dgid, tb * G, x + (int64_t)t * xs, gs, y + (int64_t)t * ys, mode, im->st,
                                               err, sizeof err);
            if (rc == DS4_ERR_UNSUPPORTED) break;  // the per-token path below takes the rest
            mv_check(rc, err);
        }
        if (t >= n_tok) return;
        x += (int64_t)t * xs;
        y += (int64_t)t * ys;
        n_tok -= t;
    }
    for (int t = 0; t < n_tok; t++) {  // group g = matrix g of the stack, its own x slice
        int rc = ds4_cuda_matvec_ids(&q, NULL, G, x + (int64_t)t * xs, gs, y + (int64_t)t * ys, mode, im->st, err,
                                     sizeof err);
        if (rc == DS4_ERR_UNSUPPORTED) { // G input slices do not fit in shared memory: one launch per group
            for (int g = 0; g < G; g++)
                cu_matmul(be, W, 0, (uint64_t)g * n_rows, n_rows, x + (int64_t)t * xs + g * gs, xs,
                          y + (int64_t)t * ys + (int64_t)g * n_rows, ys, 1);
            continue;
        }
        mv_check(rc, err);
    }
}

// out[t][0, d) = row ids[t] of the resident embedding E (F32, F16 or Q8_0 rows of rb bytes),
// dequantised exactly as ds4_dequant_row (F16: exact widening; Q8_0: (float)d · q, one
// rounding, the CPU's expression). Grid: one block per row.
__global__ void k_get_rows(const uint8_t *E, size_t rb, uint32_t type, const int32_t *ids, int64_t d, float *out) {
    pdl_enter();
    const int t = blockIdx.x;
    const uint8_t *row = E + (size_t)ids[t] * rb;
    float *o = out + (int64_t)t * d;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        float v;
        if (type == DS4_TYPE_F32) {
            v = reinterpret_cast<const float *>(row)[i];
        } else if (type == DS4_TYPE_F16) {
            v = __half2float(reinterpret_cast<const __half *>(row)[i]);
        } else { // Q8_0: blocks of an f16 scale and 32 int8
            const uint8_t *b = row + (i / 32) * 34;
            const float sc = __half2float(*reinterpret_cast<const __half *>(b));
            v = sc * (float)(int8_t)b[2 + i % 32];
        }
        o[i] = v;
    }
}

void cu_get_rows(ds4_backend *be, const ds4_tensor *E, const int32_t *ids, int n, float *out) {
    // profile single-token (decode) chunks only, or every chunk with DS4_CUDA_PROFILE_ALL=1
    IMPL(be)->prof_decode = n == 1 || IMPL(be)->prof_all;
    PROF(GET_ROWS);
    cu_impl *im = IMPL(be);
    const int64_t d = (int64_t)E->ne[0];
    const size_t row = (size_t)d * sizeof(float);
    // resident rows of a simple type: gathered on the device (the host path below
    // dequantises every row and copies it over PCIe: ~20 ms per 2048-token chunk)
    const bool dev_ok = (E->type == DS4_TYPE_F32 || E->type == DS4_TYPE_F16 || E->type == DS4_TYPE_Q8_0) &&
                        (E->type != DS4_TYPE_Q8_0 || d % 32 == 0) && n > 0 &&
                        (size_t)n * sizeof(int32_t) <= im->ring_cap / 2;
    if (dev_ok) {
        const int32_t *dids = (const int32_t *)stage(im, ids, (size_t)n * sizeof(int32_t));
        KL(k_get_rows, (unsigned)n, 256, 0, im->st, (const uint8_t *)dev_of(im, E->data), (size_t)E->row_bytes,
           (uint32_t)E->type, dids, d, out);
        return;
    }
    // dequantise on the host from the mapping, in ring-sized groups of rows
    const int per = (int)(im->ring_cap / 2 / row) > 0 ? (int)(im->ring_cap / 2 / row) : 1;
    const size_t need = row * (size_t)(per < n ? per : n);
    if (need > im->gr_cap) {
        float *g = (float *)realloc(im->gr_host, need);
        DS4_ASSERT(g != NULL);
        im->gr_host = g, im->gr_cap = need;
    }
    float *h = im->gr_host;
    for (int t0 = 0; t0 < n; t0 += per) {
        int cnt = n - t0 < per ? n - t0 : per;
        for (int t = 0; t < cnt; t++)
            ds4_dequant_row(E->type, ds4_tensor_row(E, 0, (uint64_t)ids[t0 + t]), h + (int64_t)t * d, d);
        if (row * cnt <= im->ring_cap) {
            void *src = stage(im, h, row * cnt);
            KL(k_copy, copy_blocks(row * cnt), 256, 0, im->st, (uint8_t *)(out + (int64_t)t0 * d), (const uint8_t *)src,
               row * cnt);
        } else {
            ds4cu::graph_sync_point(im->graph);
            CK(cudaMemcpyAsync(out + (int64_t)t0 * d, h, row * cnt, cudaMemcpyHostToDevice, im->st));
            CK(cudaStreamSynchronize(im->st));
        }
    }
}

void cu_rmsnorm(ds4_backend *be, const float *x, int64_t xs, const float *w, float *y, int64_t ys, int64_t n,
                int n_rows, double eps) {
    PROF(RMSNORM);
    if (n_rows <= 0) return;
    cudaStream_t st = IMPL(be)->st;
    const bool a16 = ((uintptr_t)x | (uintptr_t)y | (uintptr_t)w) % 16 == 0 && n % 4 == 0 && xs % 4 == 0 &&
                     ys % 4 == 0;
    const int64_t n4 = n / 4;
    if (a16 && n4 > 0 && n4 <= 4 * 1024) {
        // block size from n alone (see k_rmsnorm_v4): up to 1024 threads, then more float4s each
        int th = (int)(n4 < 1024 ? (n4 + 31) / 32 * 32 : 1024);
        const int kv = (int)((n4 + th - 1) / th);
        if (kv == 1) KL(k_rmsnorm_v4<1>, n_rows, th, 0, st, x, xs, w, y, ys, (int)n4, n, eps);
        else if (kv == 2) KL(k_rmsnorm_v4<2>, n_rows, th, 0, st, x, xs, w, y, ys, (int)n4, n, eps);
        else KL(k_rmsnorm_v4<4>, n_rows, th, 0, st, x, xs, w, y, ys, (int)n4, n, eps);
    } else {
        int th = n >= 1024 ? 512 : n >= 256 ? 256 : 64;
        KL(k_rmsnorm, n_rows, th, 0, st, x, xs, w, y, ys, n, eps);
    }
    CKL();
}

void cu_rope(ds4_backend *be, float *x, int64_t rs, int n_rows, int64_t width, int n_rot, int64_t pos,
             const float *inv_freq, bool inverse) {
    PROF(ROPE);
    const int half = n_rot / 2;
    if (half <= 0 || n_rows <= 0) return;
    DS4_ASSERT(half <= 128);
    RopeTab tab;
    for (int j = 0; j < half; j++) {
        float theta = (float)pos * inv_freq[j];
        tab.c[j] = cosf(theta);
        float s = sinf(theta);
        tab.s[j] = inverse ? -s : s;
    }
    const int64_t tot = (int64_t)n_rows * half;
    KL(k_rope, nblk(tot, 256), 256, 0, IMPL(be)->st, x, rs, n_rows, width - n_rot, half, tab);
    CKL();
}

void cu_axpy(ds4_backend *be, float *y, const float *x, float a, int64_t n) {
    PROF(AXPY);
    if (n <= 0) return;
    KL(k_axpy, nblk(n, 256), 256, 0, IMPL(be)->st, y, x, a, n);
    CKL();
}

void cu_swiglu(ds4_backend *be, const float *g, const float *u, float *out, int64_t n, float limit, float scale) {
    PROF(SWIGLU);
    if (n <= 0) return;
    KL(k_swiglu, nblk(n, 256), 256, 0, IMPL(be)->st, g, u, out, n, limit, scale);
    CKL();
}

void cu_hc_pre(ds4_backend *be, const float *mix, const float *scale, const float *base, const float *H, int n_tok,
               int h, int64_t d, int iters, double hc_eps, float *x, float *post, float *comb) {
    PROF(HC_PRE);
    DS4_ASSERT(h <= 32);
    if (n_tok <= 0) return;
    cudaStream_t st = IMPL(be)->st;
    const bool a16 = ((uintptr_t)H | (uintptr_t)x) % 16 == 0 && d % 4 == 0 && d > 0;
    if (a16 && h >= 1 && h <= 5) {
        const int64_t d4 = d / 4;
        const int th = (int)(d4 < 1024 ? (d4 + 31) / 32 * 32 : 1024);
        const float e = (float)hc_eps;
        switch (h) {
        case 1: KL(k_hc_pre_small<1>, n_tok, th, 0, st, mix, scale, base, H, d, iters, e, x, post, comb); break;
        case 2: KL(k_hc_pre_small<2>, n_tok, th, 0, st, mix, scale, base, H, d, iters, e, x, post, comb); break;
        case 3: KL(k_hc_pre_small<3>, n_tok, th, 0, st, mix, scale, base, H, d, iters, e, x, post, comb); break;
        case 4: KL(k_hc_pre_small<4>, n_tok, th, 0, st, mix, scale, base, H, d, iters, e, x, post, comb); break;
        default: KL(k_hc_pre_small<5>, n_tok, th, 0, st, mix, scale, base, H, d, iters, e, x, post, comb); break;
        }
    } else {
        KL(k_hc_pre, n_tok, 256, 0, st, mix, scale, base, H, h, d, iters, (float)hc_eps, x, post, comb);
    }
    CKL();
}

void cu_hc_post(ds4_backend *be, const float *y, const float *H, const float *post, const float *comb, int n_tok,
                int h, int64_t d, float *Hout) {
    PROF(HC_POST);
    const int64_t tot = (int64_t)n_tok * h * d;
    if (tot <= 0) return;
    KL(k_hc_post, nblk(tot, 256), 256, 0, IMPL(be)->st, y, H, post, comb, n_tok, h, d, Hout);
    CKL();
}

void cu_hc_head(ds4_backend *be, const float *mix, const float *scale, const float *base, const float *H, int n_tok,
                int h, int64_t d, double hc_eps, float *y) {
    PROF(HC_HEAD);
    DS4_ASSERT(h <= 64);
    if (n_tok <= 0) return;
    KL(k_hc_head, n_tok, 256, 0, IMPL(be)->st, mix, scale, base, H, h, d, (float)hc_eps, y);
    CKL();
}

void cu_compress_pool(ds4_backend *be, const float *cur, const float *prev, int64_t rs, int R, int coff, int64_t hd,
                      float *out) {
    PROF(COMPRESS_POOL);
    KL(k_compress_pool, nblk(hd, 128), 128, 0, IMPL(be)->st, cur, prev, rs, R, coff, hd, out);
    CKL();
}

void cu_attention(ds4_backend *be, const float *q, int n_head, int64_t hd, const float *rows_a, const int32_t *ia,
                  int na, const float *rows_b, const int32_t *ib, int nb, const float *sinks, float scale,
                  float *out) {
    PROF(ATTENTION);
    ds4cu::attention(be, q, n_head, hd, rows_a, ia, na, rows_b, ib, nb, sinks, scale, IMPL(be)->n_rot, out);
}

// Compact rows_b (kv_compact): the nb referenced rows are decoded in list order into
// SCR_KV_DEC and read through the identity list, so k_attention sees the same values in
// the same order as with the f32 rows.
void attention_rows(ds4_backend *be, const float *q, int n_head, int64_t hd, const float *rows_a, const int32_t *ia,
                    int na, const float *rows_b, const int32_t *ib, int nb, const float *sinks, float scale,
                    int n_rot, float *out) {
    cu_impl *im = IMPL(be);
    const int32_t *dia = na > 0 ? (const int32_t *)stage(im, ia, (size_t)na * 4) : NULL;
    const int32_t *dib = nb > 0 ? (const int32_t *)stage(im, ib, (size_t)nb * 4) : NULL;
    if (nb > 0 && im->kv_compact) {
        DS4_ASSERT(n_rot >= 0 && n_rot <= hd);
        float *dec = (float *)ds4cu::scratch(be, ds4cu::SCR_KV_DEC, (size_t)nb * (size_t)hd * sizeof(float));
        ds4cu::kv_decode(be, rows_b, DS4_KV_ROW_ATTN, hd, n_rot, dib, nb, dec);
        static thread_local std::vector<int32_t> iota; // grown, never shrunk
        if (iota.size() < (size_t)nb) {
            const size_t old = iota.size();
            iota.resize((size_t)nb);
            for (size_t j = old; j < iota.size(); j++) iota[j] = (int32_t)j;
        }
        dib = (const int32_t *)stage(im, iota.data(), (size_t)nb * 4);
        rows_b = dec;
    }
    // partial sums, then the logits (+ 16 floats: unrolled loops may load a few past n)
    const size_t smem = ((size_t)kAttWarps * kAttChunk + na + nb + 16) * sizeof(float);
    // the dynamic limit was raised to the opt-in maximum at create
    KL(k_attention, n_head, kAttWarps * 32, smem, im->st, q, hd, rows_a, dia, na, rows_b, dib, nb, sinks, scale, out);
    CKL();
}

// be->kv_row_bytes (backend.h): compact sizes when kv_compact, else 0 (f32 rows).
size_t cu_kv_row_bytes(ds4_backend *be, int kind, int64_t hd, int n_rot) {
    return ds4cu::kv_bytes(be, kind, hd, n_rot);
}

void cu_indexer_scores(ds4_backend *be, const float *q, const float *w, float scale, int n_head, int64_t hd,
                       const float *keys, int n_keys, float *score) {
    PROF(INDEXER_SCORES);
    ds4cu_indexer_scores(be, q, w, scale, n_head, hd, keys, n_keys, score);
}

void cu_topk(ds4_backend *be, const float *score, int n, int k, int32_t *idx) {
    PROF(TOPK);
    cu_impl *im = IMPL(be);
    if (n <= 0) return;
    ds4cu::graph_sync_point(im->graph); // reads the scores back
    if ((size_t)n > im->h_score_cap) {
        if (im->h_score) CK(cudaFreeHost(im->h_score));
        im->h_score = NULL;
        size_t cap = im->h_score_cap ? im->h_score_cap : 4096;
        while (cap < (size_t)n) cap *= 2; // pinned allocations are slow: grow rarely
        CK(cudaMallocHost((void **)&im->h_score, cap * sizeof(float)));
        im->h_score_cap = cap;
    }
    cu_read(be, im->h_score, score, (size_t)n * sizeof(float));
    ds4_topk_host(im->h_score, n, k, idx);
}

void cu_topk_vals(ds4_backend *be, const float *x, int n, int k, int32_t *ids, float *vals) {
    PROF(TOPK);
    ds4cu_topk_vals(be, x, n, k, ids, vals);
}

void cu_fp8_sim(ds4_backend *be, float *x, int64_t rs, int n_rows, int64_t n) {
    PROF(FP8_SIM);
    const int64_t tot = (n + 63) / 64 * n_rows;
    if (tot <= 0) return;
    KL(k_fp8_sim_warp, nblk(tot * 32, 256), 256, 0, IMPL(be)->st, x, rs, n_rows, n);
    CKL();
}

void cu_hadamard_fp4_sim(ds4_backend *be, float *x, int64_t rs, int n_rows, int64_t n) {
    PROF(HADAMARD_FP4_SIM);
    if (n_rows <= 0 || n <= 0) return;
    const size_t smem = (size_t)n * sizeof(float);
    if (smem > 48 * 1024) CK(cudaFuncSetAttribute(k_hadamard_fp4, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    KL(k_hadamard_fp4, n_rows, 128, smem, IMPL(be)->st, x, rs, n);
    CKL();
}

void cu_round_f16(ds4_backend *be, float *x, int64_t n) {
    PROF(ROUND_F16);
    if (n <= 0) return;
    KL(k_round_f16, nblk(n, 256), 256, 0, IMPL(be)->st, x, n);
    CKL();
}

void cu_graph_begin(ds4_backend *be) { ds4cu::graph_begin(IMPL(be)->graph); }
void cu_graph_end(ds4_backend *be) { ds4cu::graph_end(IMPL(be)->graph); }

void cu_free(ds4_backend *be) {
    if (!be) return;
    cu_impl *im = IMPL(be);
    if (im) {
        ds4cu::graph_destroy(im->graph);
        im->graph = NULL;
        if (im->st) cudaStreamSynchronize(im->st);
        if (im->prof >= 2) {
            prof_ev_flush(im);
            double tot = 0;
            for (int i = 0; i < im->lab_n; i++) tot += im->lab_t[i];
            fprintf(stderr, "cuda op profile (decode chunks only, device events, %s): %.3f s total\n%-34s %9s %11s %9s %7s\n",
                    im->prof == 3 ? "each op alone: synchronised before" : "no sync: op start to next op start", tot, "op",
                    "calls", "total ms", "us/call", "share");
            for (int pass = 0; pass < im->lab_n; pass++) { // largest first
                int b = -1;
                for (int i = 0; i < im->lab_n; i++)
                    if (im->lab_c[i] >= 0 && (b < 0 || im->lab_t[i] > im->lab_t[b])) b = i;
                fprintf(stderr, "%-34s %9ld %11.2f %9.2f %6.1f%%\n", im->lab_name[b], im->lab_c[b], 1e3 * im->lab_t[b],
                        1e6 * im->lab_t[b] / (im->lab_c[b] ? im->lab_c[b] : 1), 100.0 * im->lab_t[b] / (tot > 0 ? tot : 1));
                im->lab_c[b] = -1;
            }
            for (int i = 0; i <= kProfEv; i++) {
                if (im->ev[i]) cudaEventDestroy(im->ev[i]);
                if (i < kProfEv && im->ev_end[i]) cudaEventDestroy(im->ev_end[i]);
            }
        }
        if (im->prof == 1) {
            double tot = 0;
            for (int i = 0; i < P_COUNT; i++) tot += im->prof_t[i];
            fprintf(stderr, "cuda op profile (decode chunks only, each op synchronised): %.3f s total\n%-18s %10s %12s %10s %7s\n", tot, "op",
                    "calls", "total ms", "us/call", "share");
            for (int i = 0; i < P_COUNT; i++)
                if (im->prof_n[i])
                    fprintf(stderr, "%-18s %10ld %12.2f %10.2f %6.1f%%\n", kProfName[i], im->prof_n[i], 1e3 * im->prof_t[i],
                            1e6 * im->prof_t[i] / im->prof_n[i], 100.0 * im->prof_t[i] / (tot > 0 ? tot : 1));
        }
        for (owned_dev *o = im->vecs; o;) {
            owned_dev *nx = o->next;
            cudaFree(o->p);
            free(o);
            o = nx;
        }
        if (im->dbase) cudaFree(im->dbase);
        if (im->d_zero_ids) cudaFree(im->d_zero_ids);
        if (im->d_ring) cudaFree(im->d_ring);
        if (im->h_ring) cudaFreeHost(im->h_ring);
        if (im->h_score) cudaFreeHost(im->h_score);
        free(im->gr_host);
        for (int i = 0; i < ds4cu::SCR_COUNT; i++)
            if (im->scr[i]) cudaFree(im->scr[i]);
        if (im->d_counters) cudaFree(im->d_counters);
        void *bufs[] = {im->d_sel, im->d_selw, im->d_g, im->d_u, im->d_dn, im->d_xq};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            if (bufs[i]) cudaFree(bufs[i]);
        if (im->st) cudaStreamDestroy(im->st);
        if (im->st_side) cudaStreamDestroy(im->st_side);
        if (im->ev_fork) cudaEventDestroy(im->ev_fork);
        if (im->ev_join) cudaEventDestroy(im->ev_join);
        free(im);
    }
    free(be);
}

int prof_label(cu_impl *im, const char *name) {
    for (int i = 0; i < im->lab_n; i++)
        if (!strcmp(im->lab_name[i], name)) return i;
    if (im->lab_n == kProfLab) return kProfLab - 1;
    snprintf(im->lab_name[im->lab_n], sizeof im->lab_name[0], "%s", name);
    return im->lab_n++;
}

// Charges each recorded op the device time from its event to the next one (the last to
// an event recorded now), then starts a new list.
void prof_ev_flush(cu_impl *im) {
    if (im->ev_n == 0) return;
    cudaEventRecord(im->ev[im->ev_n], im->st);
    cudaEventSynchronize(im->ev[im->ev_n]);
    for (int i = 0; i < im->ev_n; i++) {
        float ms = 0;
        cudaEventElapsedTime(&ms, im->ev[i], im->prof == 3 ? im->ev_end[i] : im->ev[i + 1]);
        im->lab_t[im->ev_lab[i]] += 1e-3 * ms;
        im->lab_c[im->ev_lab[i]]++;
    }
    im->ev_n = 0;
}

double now_s() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ---- fused ops (backend.h; kernels in fused_*.cu): profiled wrappers
void cu_hc_site(ds4_backend *be, const ds4_tensor *fn, const float *scale, const float *base, const float *H, int n_tok,
                int h, int64_t d, int iters, double hc_eps, double eps, const float *norm_w, float *post, float *comb,
                float *xn) {
    PROF(HC_SITE);
    ds4cu_hc_site(be, fn, scale, base, H, n_tok, h, d, iters, hc_eps, eps, norm_w, post, comb, xn);
}
void cu_hc_post_site(ds4_backend *be, const float *y, const float *Hprev, float *H, const ds4_tensor *fn, const float *scale,
                     const float *base, int n_tok, int h, int64_t d, int iters, double hc_eps, double eps,
                     const float *norm_w, float *post, float *comb, float *xn) {
    PROF(HC_POST_SITE);
    ds4cu_hc_post_site(be, y, Hprev, H, fn, scale, base, n_tok, h, d, iters, hc_eps, eps, norm_w, post, comb, xn);
}
void cu_qkv_rope(ds4_backend *be, float *q, int n_head, float *kv, const float *kv_norm, int64_t hd, int n_rot, int64_t pos,
                 const float *inv_freq, bool prod, double eps, float *raw, float *iq, int iq_heads, int64_t ihd, int n_put,
                 float *const *put_dst, const float *const *put_src, const float *const *put_ape, const int64_t *put_cw) {
    PROF(QKV_ROPE);
    ds4cu_qkv_rope(be, q, n_head, kv, kv_norm, hd, n_rot, pos, inv_freq, prod, eps, raw, iq, iq_heads, ihd, n_put, put_dst,
                   put_src, put_ape, put_cw);
}
void cu_topk_dev(ds4_backend *be, const float *score, int n, int k, int32_t *idx) {
    PROF(TOPK_DEV);
    ds4cu_topk_dev(be, score, n, k, idx);
}
void cu_attention_ex(ds4_backend *be, const float *q, int n_head, int64_t hd, const float *rows_a, const int32_t *ia, int na,
                     const float *rows_b, const int32_t *ib, int nb, bool ib_dev, const float *sinks, float scale, int n_rot,
                     int64_t pos, const float *inv_freq, float *out) {
    PROF(ATTENTION_EX);
    ds4cu_attention_ex(be, q, n_head, hd, rows_a, ia, na, rows_b, ib, nb, ib_dev, sinks, scale, n_rot, pos, inv_freq, out);
}
void cu_matmul_multi(ds4_backend *be, int n, const ds4_tensor *const *W, float *const *y, const int64_t *ys, const float *x,
                     int64_t xs, int n_tok) {
    char lab[64] = "";
    if (IMPL(be)->prof >= 2)
        snprintf(lab, sizeof lab, "matmul_multi %d %s k%llu", n, ds4_type_name(W[0]->type), (unsigned long long)W[0]->ne[0]);
    Prof prof_(IMPL(be), P_MATMUL_MULTI, lab[0] ? lab : nullptr);
    ds4cu_matmul_multi(be, n, W, y, ys, x, xs, n_tok);
}

// ---- batched prefill ops (backend.h; kernels in fused_qkv.cu, compress.cu, indexer_n.cu, attn_n.cu)
void cu_qkv_rope_n(ds4_backend *be, float *q, int64_t qs, int n_head, float *kv, int64_t kvs, const float *kv_norm,
                   int64_t hd, int n_rot, int64_t pos0, int n_tok, const float *inv_freq, bool prod, double eps, float *raw,
                   int raw_cap, float *iq, int64_t iqs, int iq_heads, int64_t ihd, int n_put, float *const *put_dst,
                   const int *put_cap, const float *const *put_src, const int64_t *put_ss, const float *const *put_ape,
                   const int *put_R, const int64_t *put_cw) {
    PROF(QKV_ROPE_N);
    ds4cu_qkv_rope_n(be, q, qs, n_head, kv, kvs, kv_norm, hd, n_rot, pos0, n_tok, inv_freq, prod, eps, raw, raw_cap, iq,
                     iqs, iq_heads, ihd, n_put, put_dst, put_cap, put_src, put_ss, put_ape, put_R, put_cw);
}
void cu_compress_rows(ds4_backend *be, const float *ring, int cap, int R, int coff, int64_t hd, const float *norm,
                      double eps, int n_rot, const float *inv_freq, bool prod, bool indexer, int64_t w0, int64_t w1,
                      float *rows) {
    PROF(COMPRESS_ROWS);
    ds4cu_compress_rows(be, ring, cap, R, coff, hd, norm, eps, n_rot, inv_freq, prod, indexer, w0, w1, rows);
}
void cu_indexer_topk(ds4_backend *be, const float *q, int64_t qs, const float *w, int64_t ws, float scale, int n_head,
                     int64_t hd, const float *keys, int R, int64_t pos0, int n_tok, int k, int32_t *idx) {
    PROF(INDEXER_TOPK);
    ds4cu_indexer_topk(be, q, qs, w, ws, scale, n_head, hd, keys, R, pos0, n_tok, k, idx);
}
void cu_attention_n(ds4_backend *be, const float *q, int64_t qs, int n_head, int64_t hd, const float *raw, int raw_cap,
                    int n_win, const float *comp, int R, const int32_t *idx, int k_top, const float *sinks, float scale,
                    int n_rot, int64_t pos0, int n_tok, const float *inv_freq, float *out, int64_t os) {
    PROF(ATTENTION_N);
    ds4cu_attention_n(be, q, qs, n_head, hd, raw, raw_cap, n_win, comp, R, idx, k_top, sinks, scale, n_rot, pos0, n_tok,
                      inv_freq, out, os);
}

}  // namespace

namespace ds4cu {
cudaStream_t stream(ds4_backend *be) { return IMPL(be)->st_cur ? IMPL(be)->st_cur : IMPL(be)->st; }
void side_begin(ds4_backend *be) {
    cu_impl *im = IMPL(be);
    DS4_ASSERT(!im->st_cur);
    graph_sync_point(im->graph); // the side stream is not recorded
    DS4CU_CK(cudaEventRecord(im->ev_fork, im->st));
    DS4CU_CK(cudaStreamWaitEvent(im->st_side, im->ev_fork, 0));
    im->st_cur = im->st_side;
}
void side_end(ds4_backend *be) {
    cu_impl *im = IMPL(be);
    DS4_ASSERT(im->st_cur == im->st_side);
    DS4CU_CK(cudaEventRecord(im->ev_join, im->st_side));
    im->st_cur = NULL;
}
void side_join(ds4_backend *be) { DS4CU_CK(cudaStreamWaitEvent(IMPL(be)->st, IMPL(be)->ev_join, 0)); }
const void *dev_of(ds4_backend *be, const void *host_weight) { return ::dev_of(IMPL(be), host_weight); }
void *stage(ds4_backend *be, const void *host, size_t bytes) { return ::stage(IMPL(be), host, bytes); }
void *scratch(ds4_backend *be, int slot, size_t bytes) {
    cu_impl *im = IMPL(be);
    DS4_ASSERT(slot >= 0 && slot < SCR_COUNT);
    grow(&im->scr[slot], &im->scr_cap[slot], bytes ? bytes : 1, im->st);
    return im->scr[slot];
}
unsigned *counters(ds4_backend *be) { return IMPL(be)->d_counters; }
bool exact(ds4_backend *be) { return be->numerics == DS4_NUM_EXACT; }
bool kv_compact(ds4_backend *be) { return IMPL(be)->kv_compact; }
int sm_count() {
    static const int n = [] {
        int dev = 0, v = 0;
        DS4CU_CK(cudaGetDevice(&dev));
        DS4CU_CK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
        return v > 0 ? v : 1;
    }();
    return n;
}
void attention(ds4_backend *be, const float *q, int n_head, int64_t hd, const float *rows_a, const int32_t *ia,
               int na, const float *rows_b, const int32_t *ib, int nb, const float *sinks, float scale, int n_rot,
               float *out) {
    attention_rows(be, q, n_head, hd, rows_a, ia, na, rows_b, ib, nb, sinks, scale, n_rot, out);
}
void check(cudaError_t e, const char *what, const char *file, int line) { cu_check(e, what, file, line); }
}  // namespace ds4cu

#define TRY_GO(call)                                                                                  \
    do {                                                                                              \
        cudaError_t e_ = (call);                                                                      \
        if (e_ != cudaSuccess) {                                                                      \
            rc = ds4_err(err, errlen, DS4_ERR_IO, "CUDA backend: %s: %s", #call, cudaGetErrorString(e_)); \
            goto fail;                                                                                \
        }                                                                                             \
    } while (0)

extern "C" int ds4_backend_cuda_create(ds4_backend **out, const ds4_model *m, ds4_numerics numerics, char *err,
                                       size_t errlen) {
    *out = NULL;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev <= 0) {
        (void)cudaGetLastError();
        return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "CUDA backend: no CUDA device is available");
    }
    int rc = 0;
    ds4_backend *be = (ds4_backend *)calloc(1, sizeof *be);
    cu_impl *im = (cu_impl *)calloc(1, sizeof *im);
    if (!be || !im) {
        free(be);
        free(im);
        return ds4_err(err, errlen, DS4_ERR_NOMEM, "CUDA backend: out of memory");
    }
    be->impl = im;
    {
        cudaDeviceProp prop;
        TRY_GO(cudaSetDevice(0));
        TRY_GO(cudaGetDeviceProperties(&prop, 0));
        snprintf(im->gpu_name, sizeof im->gpu_name, "%s", prop.name);
        TRY_GO(cudaStreamCreateWithFlags(&im->st, cudaStreamNonBlocking));
        TRY_GO(cudaStreamCreateWithFlags(&im->st_side, cudaStreamNonBlocking));
        TRY_GO(cudaEventCreateWithFlags(&im->ev_fork, cudaEventDisableTiming));
        TRY_GO(cudaEventCreateWithFlags(&im->ev_join, cudaEventDisableTiming));
        rc = ds4_cuda_matvec_init(err, errlen);
        if (rc < 0) goto fail;
        // the resident weights: the whole data section of the mapping
        const ds4_gguf *g = m->gguf;
        const uint64_t doff = ds4_gguf_data_offset(g), fsz = ds4_gguf_file_size(g);
        im->hbase = ds4_gguf_base(g) + doff;
        im->hsize = fsz > doff ? fsz - doff : 0;
        size_t fr = 0, tot = 0;
        TRY_GO(cudaMemGetInfo(&fr, &tot));
        const size_t margin = (size_t)1 << 30; // sessions' KV state and activations
        if ((size_t)im->hsize + margin > fr) {
            rc = ds4_err(err, errlen, DS4_ERR_NOMEM,
                         "CUDA backend: the model's weights need %.2f GiB of device memory (+%.2f GiB working margin) "
                         "but only %.2f GiB of %.2f GiB is free on %s",
                         im->hsize / 1073741824.0, margin / 1073741824.0, fr / 1073741824.0, tot / 1073741824.0,
                         im->gpu_name);
            goto fail;
        }
        const double t0 = now_s();
        TRY_GO(cudaMalloc((void **)&im->dbase, im->hsize ? im->hsize : 1));
        im->ring_cap = (size_t)64 << 20;
        TRY_GO(cudaMallocHost((void **)&im->h_ring, im->ring_cap));
        TRY_GO(cudaMalloc((void **)&im->d_ring, im->ring_cap));
        // upload through the pinned ring in halves, overlapping host reads and DMA
        {
            const size_t piece = im->ring_cap / 2;
            cudaEvent_t done[2];
            TRY_GO(cudaEventCreateWithFlags(&done[0], cudaEventDisableTiming));
            TRY_GO(cudaEventCreateWithFlags(&done[1], cudaEventDisableTiming));
            int k = 0;
            for (uint64_t o = 0; o < im->hsize; o += piece, k ^= 1) {
                size_t len = im->hsize - o < piece ? (size_t)(im->hsize - o) : piece;
                cudaEventSynchronize(done[k]);
                memcpy(im->h_ring + k * piece, im->hbase + o, len);
                TRY_GO(cudaMemcpyAsync(im->dbase + o, im->h_ring + k * piece, len, cudaMemcpyHostToDevice, im->st));
                TRY_GO(cudaEventRecord(done[k], im->st));
            }
            TRY_GO(cudaStreamSynchronize(im->st));
            cudaEventDestroy(done[0]);
            cudaEventDestroy(done[1]);
        }
        im->upload_s = now_s() - t0;
        im->moe_k = (int)m->hp.n_expert_used;
        im->moe_ff = (int64_t)m->hp.n_ff_exp;
        im->moe_d = (int64_t)m->hp.n_embd;
        im->n_rot = (int)m->hp.n_rot;
        {
            cudaFuncAttributes fa;
            TRY_GO(cudaFuncGetAttributes(&fa, k_attention));
            TRY_GO(cudaFuncSetAttribute(k_attention, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)(prop.sharedMemPerBlockOptin - fa.sharedSizeBytes)));
        }
        TRY_GO(cudaMalloc((void **)&im->d_counters, ds4cu::kCounters * sizeof(unsigned)));
        TRY_GO(cudaMemset(im->d_counters, 0, ds4cu::kCounters * sizeof(unsigned)));
        TRY_GO(cudaMalloc((void **)&im->d_zero_ids, 64 * sizeof(int32_t)));
        TRY_GO(cudaMemset(im->d_zero_ids, 0, 64 * sizeof(int32_t)));
    }
    be->name = "cuda";
    be->numerics = numerics;
    be->free = cu_free;
    be->alloc = cu_alloc;
    be->release = cu_release;
    be->write = cu_write;
    be->read = cu_read;
    be->copy = cu_copy;
    be->zero = cu_zero;
    be->repeat_rows = cu_repeat_rows;
    be->upload_vec = cu_upload_vec;
    be->reserve = cu_reserve;
    be->reserve_bytes = cu_reserve_bytes;
    be->matmul = cu_matmul;
    be->get_rows = cu_get_rows;
    be->rmsnorm = cu_rmsnorm;
    be->rope = cu_rope;
    be->axpy = cu_axpy;
    be->swiglu = cu_swiglu;
    be->hc_pre = cu_hc_pre;
    be->hc_post = cu_hc_post;
    be->hc_head = cu_hc_head;
    be->compress_pool = cu_compress_pool;
    be->attention = cu_attention;
    be->indexer_scores = cu_indexer_scores;
    be->topk = cu_topk;
    be->topk_vals = cu_topk_vals;
    be->fp8_sim = cu_fp8_sim;
    be->hadamard_fp4_sim = cu_hadamard_fp4_sim;
    be->round_f16 = cu_round_f16;
    be->kv_row_bytes = cu_kv_row_bytes;
    // DS4_CUDA_NO_FUSED=1: none of the fused ops (forward.c's op sequences instead);
    // a comma list (hc,qkv,topk,attn,mm) turns off only those (diagnostics)
    {
        const char *nf = getenv("DS4_CUDA_NO_FUSED");
        const bool all = nf && (!strcmp(nf, "1") || !strcmp(nf, "all"));
        auto off = [&](const char *k) { return all || (nf && strstr(nf, k)); };
        be->hc_site = off("hc") ? NULL : cu_hc_site;
        be->hc_post_site = off("hc") || off("hpost") ? NULL : cu_hc_post_site;
        be->qkv_rope = off("qkv") ? NULL : cu_qkv_rope;
        be->topk_dev = off("topk") ? NULL : cu_topk_dev;
        be->attention_ex = off("attn") ? NULL : cu_attention_ex;
        be->matmul_multi = off("mm") ? NULL : cu_matmul_multi;
        // batched prefill ops: "batch" turns all four off, rope_n / rows_n / idx_n / att_n
        // one each (forward.c needs all of a layer's to batch it)
        be->qkv_rope_n = off("batch") || off("rope_n") ? NULL : cu_qkv_rope_n;
        be->compress_rows = off("batch") || off("rows_n") ? NULL : cu_compress_rows;
        be->indexer_topk = off("batch") || off("idx_n") ? NULL : cu_indexer_topk;
        be->attention_n = off("batch") || off("att_n") ? NULL : cu_attention_n;
    }
    be->moe_routed = getenv("DS4_CUDA_NO_FUSED_MOE") ? NULL : cu_moe_routed;
    be->matmul_groups = getenv("DS4_CUDA_NO_FUSED_MOE") ? NULL : cu_matmul_groups;
    {
        const char *kv = getenv("DS4_CUDA_KV");
        // compact rows need compress_rows (forward.c's generic compressor sequence writes
        // f32 rows; the session refuses compact rows without it): DS4_CUDA_NO_FUSED=batch
        // or rows_n keeps f32 rows
        im->kv_compact = numerics == DS4_NUM_PROD && !(kv && !strcmp(kv, "f32")) && be->compress_rows != NULL;
        const char *pq = getenv("DS4_CUDA_PREQ");
        im->preq = pq && *pq == '1';
        const char *pf = getenv("DS4_CUDA_PROFILE");
        im->prof = pf && *pf >= '1' && *pf <= '3' ? *pf - '0' : 0;
        const char *pa = getenv("DS4_CUDA_PROFILE_ALL");
        im->prof_all = pa && *pa == '1';
        if (im->prof >= 2)
            for (int i = 0; i <= kProfEv; i++) {
                TRY_GO(cudaEventCreate(&im->ev[i]));
                if (i < kProfEv && im->prof == 3) TRY_GO(cudaEventCreate(&im->ev_end[i]));
            }
        // decode steps as graphs (graph.h) unless DS4_CUDA_GRAPH=0 or a profile mode (which
        // times ops as they are issued) is on
        im->graph = im->prof ? NULL : ds4cu::graph_create(im->st);
        be->graph_begin = im->graph ? cu_graph_begin : NULL;
        be->graph_end = im->graph ? cu_graph_end : NULL;
    }
    *out = be;
    return 0;
fail:
    cu_free(be);
    return rc;
}

// Test hook (tests/cuda: not part of cuda_backend.h): compact cached rows on (1) or off (0).
// Effective only where creation could have turned them on (production numerics with
// compress_rows); the rows already written keep their layout, so a caller switches only
// between calls whose row arguments it builds itself.
extern "C" void ds4_cuda_set_kv_compact(ds4_backend *be, int on) {
    IMPL(be)->kv_compact = on && be->numerics == DS4_NUM_PROD && be->compress_rows != NULL;
}

extern "C" void ds4_backend_cuda_load_stats(const ds4_backend *be, double *upload_s, size_t *weight_bytes) {
    const cu_impl *im = (const cu_impl *)be->impl;
    if (upload_s) *upload_s = im->upload_s;
    if (weight_bytes) *weight_bytes = (size_t)im->hsize;
}
