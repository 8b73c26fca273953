/* cuda_mmq.h — C view of the tensor-core matrix-matrix kernels: quantized weights (mmq.cu)
 * and F16 weights with f32 activations (mmf16.cu, at the end).
 *
 * Owns: Y = W·X for many activation rows at once (prefill chunks, the routed experts of a
 * chunk), for weights stored exactly as in the GGUF file (Q8_0, Q2_K, Q4_K, IQ2_XXS; no
 * repacking) and activations already quantized to the weight type's dot type
 * (ds4_cuda_quantize_act: Q8_0 for Q8_0 weights, Q8_K for the others), with integer
 * tensor-core products (mma.sync s8) per block and float scales per block, exactly the
 * integer dot products of the matvec path (cuda_matvec.h). Must not: allocate device
 * memory, synchronize, or know tensor roles. Compiled by `make cuda` only.
 *
 * Numerics: every (row, activation) result is Σ over blocks of
 * float(block integer dot) · scales (plus the Q2_K / Q4_K min terms with the Q8_K
 * 16-element sums), as ds4_dot_q computes it; only the float summation order differs
 * from the CPU and from the matvec path (rounding; tests/cuda/test_mmq.cu states bounds).
 * The result for one (row, activation row) does not depend on how many other rows or
 * problems the launch has (deterministic, no atomics).
 *
 * Grouped form (the routed experts): n_prob problems share one launch. Problem p owns the
 * packed rows [off[p], off[p+1]) (device prefix offsets, written by kernels, so the host
 * does not know the counts; it passes an upper bound max_rows on off[n_prob]); packed
 * row i reads activation row x_idx ? x_idx[i] : i and writes Y row i; problem p uses
 * matrix mat ? mat[p] : p of the stack. A problem with an id outside [0, n_mats) writes
 * NaN rows (no fault). n_rows is ignored in the grouped form; packed rows at or past
 * max_rows are never computed (the host bound must hold); x_idx entries must be valid
 * activation rows.
 *
 * Inputs (checked on the host, DS4_ERR_ARG otherwise): weight data and mat_stride 2-byte
 * aligned (GGUF blocks); xq and xq_stride 2-byte (Q8_0) or 4-byte (Q8_K) aligned, xq_stride
 * 0 or >= one activation row; ys >= w->n. Q8_K blocks' bsums must be the true 16-element
 * sums (|bsum| <= 2048, as ds4_quantize_act_row / ds4_cuda_quantize_act write them).
 * The kernels stage whole aligned 16-byte chunks around the wanted bytes (never a page the
 * data does not touch). DS4_MMQ_BN=16|32|64 forces the activation-row tile (benchmarks;
 * results are bit-identical for every tile).
 */
#ifndef DS4_CUDA_MMQ_H
#define DS4_CUDA_MMQ_H

#include <stddef.h>
#include <stdint.h>

#include "backend/cuda/cuda_matvec.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const int32_t *off;   /* device [n_prob + 1] ascending, off[0] = 0 */
    const int32_t *mat;   /* device [n_prob] matrix ids, or NULL (problem p uses matrix p) */
    const int32_t *x_idx; /* device [max_rows] activation row per packed row, or NULL (i) */
    int32_t n_prob;       /* >= 1 */
    int32_t max_rows;     /* host upper bound on off[n_prob] */
} ds4_cuda_mmq_groups;

/* 1 when ds4_cuda_mmq handles weights of this type and row length k, else 0 (the caller
 * then uses the matvec path). */
int ds4_cuda_mmq_supported(uint32_t type, int64_t k);

/* Y[i][r] (row stride ys floats) = Σ_c W_m[r][c] · X[xrow(i)][c] for r < w->n.
 * xq: quantized activation rows (GGML blocks of the dot type of w->type), row stride
 * xq_stride bytes. groups NULL: one problem, matrix 0, rows i < n_rows read activation
 * row i. Asynchronous on stream; programmatic dependent launch like the matvec kernels
 * (weights may be read before the previous kernel of the stream finished). */
int ds4_cuda_mmq(const ds4_cuda_qmat *w, const void *xq, uint64_t xq_stride, const ds4_cuda_mmq_groups *groups,
                 int n_rows, float *y, int64_t ys, struct CUstream_st *stream, char *err, size_t errlen);

/* ---- F16 weights x f32 activations on tensor cores (mmf16.cu) ----------------------------
 *
 * Y[t][r] (row stride ys floats) = Σ_c W[r][c] · x[t·xs + c], r < w->n, t < n_rows, for an F16
 * matrix (w->type DS4_TYPE_F16, matrix 0 of the descriptor; n_mats / mat_stride unused)
 * and f32 activations as they are (no quantization): the production path of the F16
 * projections in prefill chunks. Emulates the f32 dot: per (activation row, 64-wide k-step)
 * the values are scaled by a power of two and split into two f16 halves (hi + lo), two
 * f16 mma.sync products with f32 accumulation, scaled back; per output
 *   |y − Σ w·x| <= (2^-22 + 8·2^-22 + ceil(k/64)·2^-24)·Σ|w·x| + 2^-39·Σ_steps max|x|·Σ|w|
 * (the derivation is in mmf16.cu; the f32 dot's own bound is k·2^-24·Σ|w·x|). NaN in x
 * gives NaN, ±Inf what the IEEE sum of the w·x terms gives. Deterministic; the result for
 * one (row, activation row) does not depend on n_rows, the tile configuration or the
 * position in the batch. No device memory is allocated, nothing synchronized; programmatic
 * dependent launch like mmq (weights may be read before the previous kernel finished).
 *
 * Inputs: k a multiple of 8 (ds4_cuda_mmf16_supported); w->data 16-byte aligned (else
 * DS4_ERR_UNSUPPORTED: the caller keeps its matvec path); x 4-byte aligned (16-byte
 * aligned x and xs % 4 == 0 take 16-byte loads), xs >= 0 (rows may overlap: only read),
 * ys >= n unless n_rows == 1.
 * DS4_MMF16_CFG=42|41|22|21 forces the tile (benchmarks; results are bit-identical). */
int ds4_cuda_mmf16_supported(int64_t k);
int ds4_cuda_mmf16(const ds4_cuda_qmat *w, const float *x, int64_t xs, int n_rows, float *y, int64_t ys,
                   struct CUstream_st *stream, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
