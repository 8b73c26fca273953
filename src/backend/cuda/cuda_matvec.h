/* cuda_matvec.h — C view of the CUDA quantized matrix-vector kernels (matvec.cu).
 *
 * Owns: y = W·x for one weight matrix, for several matrices of one 3-D tensor picked
 * by an index list (the routed experts of a token), or for a list of such entries that
 * share x (one launch for all the projections of one input), for weights stored exactly as in the
 * GGUF file (GGML block layouts F32, F16, Q8_0, Q2_K, Q4_K, IQ2_XXS; no repacking), and
 * the on-device activation quantizer (f32 -> Q8_0 / Q8_K, MODEL.md §20.7).
 * Must not: allocate device memory, synchronize the stream, or know about model
 * tensors' roles (backend/cuda wires these into backend.h). Compiled by `make cuda`
 * only; callable from C.
 *
 * All pointers named "device" are device memory (cudaMalloc or a sub-range of it).
 * Functions return 0 or a negative ds4_status with a message in (err, errlen):
 * DS4_ERR_ARG for bad arguments (checked before anything is launched),
 * DS4_ERR_UNSUPPORTED for a shape the kernels cannot hold in shared memory, DS4_ERR_IO
 * for a CUDA failure. Launches are asynchronous on `stream` (NULL = legacy default
 * stream) and graph-capturable once ds4_cuda_matvec_init has run on the device. They use
 * programmatic dependent launch (common.cuh): weight matrices are read before the
 * previous kernel of the stream has finished, so they must not be written by kernels of
 * that stream (resident weights only); x, ids and y are ordered as usual.
 *
 * Numerics (MODEL.md §20.7):
 *  - DS4_CUDA_ACT_QUANT: x is quantized inside the kernel to ds4_vec_dot_type(W type)
 *    (Q8_0 for Q8_0 weights, Q8_K for Q2_K/Q4_K/IQ2_XXS) with exactly the rounding of
 *    ds4_quantize_act_row, then integer dot products per block, float scales per block,
 *    f32 accumulation across blocks. F16/F32 weights always use f32 x.
 *  - DS4_CUDA_ACT_F32: exact f32 activations times f32-decoded weights (the oracle mode).
 *  Rows are accumulated in a different order than the CPU reference, so results agree
 *  with ds4_dot_q / ds4_dot_f32 to rounding (tests/cuda/test_matvec.cu states bounds).
 */
#ifndef DS4_CUDA_MATVEC_H
#define DS4_CUDA_MATVEC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct CUstream_st; /* = cudaStream_t, without making C callers include CUDA headers */

typedef enum {
    DS4_CUDA_ACT_QUANT = 0, /* production: activations quantized per MODEL.md §20.7 */
    DS4_CUDA_ACT_F32 = 1,   /* exact: f32 activations, dequantized weights */
} ds4_cuda_act_mode;

/* One weight matrix, or a stack of n_mats equally shaped matrices (a GGUF 3-D tensor
 * such as ffn_gate_exps [k, n, n_mats]). Row r of matrix m starts at
 * data + m*mat_stride + r*row_bytes(type, k). A sub-range of rows is addressed by
 * offsetting data. */
typedef struct {
    uint32_t type;       /* DS4_TYPE_F32 / F16 / Q8_0 / Q2_K / Q4_K / IQ2_XXS */
    const void *data;    /* device; 16-byte alignment (and row/matrix strides that are
                          * multiples of 16) select the fast cp.async path, any
                          * alignment of the type's fields is accepted */
    int64_t n;           /* rows (outputs) per matrix, >= 1 */
    int64_t k;           /* columns (inputs), a multiple of the type's block size */
    uint64_t mat_stride; /* bytes between matrices; ignored when n_mats == 1 */
    int32_t n_mats;      /* matrices addressable by an index, >= 1 */
} ds4_cuda_qmat;

/* Uploads the IQ2_XXS format tables (src/model/iq2_tables.c) to the current device's
 * constant memory and caches device properties. Idempotent per device; the matvec
 * entry points call it lazily, but it must run before a stream capture starts. */
int ds4_cuda_matvec_init(char *err, size_t errlen);

/* y[n] = W · x[k] (matrix 0). x: device f32 [k]; y: device f32 [n]. */
int ds4_cuda_matvec(const ds4_cuda_qmat *w, const float *x, float *y, ds4_cuda_act_mode mode,
                    struct CUstream_st *stream, char *err, size_t errlen);

/* Batched over matrices of one stack, one launch (the MoE decode path):
 *   y[e*n + r] = Σ_i W[ids[e]][r][i] · x[e*x_stride + i],  e < n_sel, r < n.
 * ids: device int32 [n_sel], or NULL for ids[e] = e. An id outside [0, n_mats) makes
 * that matrix's n outputs NaN (no fault, no read of the weights). x_stride (floats)
 * = 0 shares one x among all e (gate/up of the selected experts), = k gives each its
 * own (down projections). n_sel in [1, 64]. */
int ds4_cuda_matvec_ids(const ds4_cuda_qmat *w, const int32_t *ids, int n_sel, const float *x,
                        int64_t x_stride, float *y, ds4_cuda_act_mode mode,
                        struct CUstream_st *stream, char *err, size_t errlen);

/* As above with activations already quantized (by ds4_cuda_quantize_act, or any
 * producer of the GGML block layout) to ds4_vec_dot_type(w->type); for F16/F32
 * weights xq is f32. xq_stride is in bytes between consecutive vectors (0 = shared).
 * Lets one quantization feed several matvecs that read the same input. */
int ds4_cuda_matvec_ids_q(const ds4_cuda_qmat *w, const int32_t *ids, int n_sel, const void *xq,
                          uint64_t xq_stride, float *y, struct CUstream_st *stream, char *err,
                          size_t errlen);

/* Matrix list (several matrices that read the same x, e.g. the attention-input
 * projections of one token): entry j holds n_sel matrices of the stack w (matrix ids[e],
 * ids device int32 [n_sel] or NULL for e; an invalid id gives NaN rows as above) with
 * outputs y[e*w.n + r] (device f32 [n_sel][w.n]). */
#define DS4_CUDA_MV_MAX_ENTRIES 16
typedef struct {
    ds4_cuda_qmat w;
    const int32_t *ids;
    int32_t n_sel;
    float *y;
} ds4_cuda_mv_entry;

/* y_j[e*n_j + r] = Σ_i W_j[ids_j[e]][r][i] · x[i] for every entry j < n_entries
 * (1..DS4_CUDA_MV_MAX_ENTRIES), e < n_sel_j (Σ n_sel <= 64), x device f32 [k] shared by
 * all. Every entry has the same type and k. One launch (two when some entries' data or
 * strides are not 16-byte aligned and others are), with x quantized once per block.
 * Each output is bit-identical to what ds4_cuda_matvec / ds4_cuda_matvec_ids give for
 * that matrix alone: the tile geometry is chosen per matrix by the same rule (rows per
 * tile from n and the row size, chunks of long rows from type, k and alignment) and the
 * activation quantization is the same. */
int ds4_cuda_matvec_list(const ds4_cuda_mv_entry *e, int n_entries, const float *x, ds4_cuda_act_mode mode,
                         struct CUstream_st *stream, char *err, size_t errlen);

/* The routed experts' down projection with the SwiGLU in its activation prologue:
 *   x_e[i] = swiglu(g[e*k + i], u[e*k + i]) · (scale ? scale[e] : 1), i < k = w->k,
 * swiglu(g, u) = silu(min(g, limit)) · clamp(u, −limit, limit) with exactly the f32
 * operations of the backend's swiglu op (cuda_backend.cu), then as ds4_cuda_matvec_ids
 * with x_stride = k over the x_e: bit-identical to running that op into memory and then
 * ds4_cuda_matvec_ids. g, u: device f32 [n_sel][k]; scale: device f32 [n_sel] or NULL. */
int ds4_cuda_matvec_ids_swiglu(const ds4_cuda_qmat *w, const int32_t *ids, int n_sel, const float *g, const float *u,
                               const float *scale, float limit, float *y, ds4_cuda_act_mode mode,
                               struct CUstream_st *stream, char *err, size_t errlen);

/* Quantize nvec activation vectors x[v*k .. v*k+k) (device f32) into xq (device), each
 * vector ds4_type_row_bytes(act_type, k) bytes, in the GGML block layout, bit-identical
 * to ds4_quantize_act_row. act_type: DS4_TYPE_Q8_0 (k % 32 == 0) or DS4_TYPE_Q8_K
 * (k % 256 == 0). */
int ds4_cuda_quantize_act(uint32_t act_type, const float *x, void *xq, int64_t k, int64_t nvec,
                          struct CUstream_st *stream, char *err, size_t errlen);

/* Benchmark knob: which IQ2_XXS decoder the kernels use (0 = 256-entry u64 grid in
 * shared memory, sign masks by byte permutes; 1 = 2-bit code table, 8 bank-spread
 * copies; 2 = the same, 32 copies: conflict-free lookups). Returns the previous value.
 * Results are identical for every value; only speed differs. */
int ds4_cuda_matvec_set_iq2_variant(int v);

#ifdef __cplusplus
}
#endif

#endif
