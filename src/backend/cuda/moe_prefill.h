// moe_prefill.h — the CUDA backend's large-chunk paths through the tensor-core quantized
// GEMM (cuda_mmq.h): dense matmuls of many activation rows and the routed experts of a
// prefill chunk (moe_prefill.cu). C++ only (included by cuda_backend.cu, fused_mm.cu and
// tests/cuda).
//
// Owns: when a production-mode product goes through mmq (kMmqMinRows, the weight type),
// activation quantization into scratch rows (SCR_ACTQ, SCR_MOE_PF), and the chunk MoE
// (counting sort of the (token, expert) pairs, grouped mmq, SwiGLU·w quantized straight
// to the down projection's dot type, ordered combine). Must not: be used in exact
// numerics (those keep the f32 matvec paths), use float atomics or timing-dependent
// order, or allocate device memory except through ds4cu::scratch.
//
// Numerics: activations are quantized bit-identically to ds4_quantize_act_row, products
// are mmq's (cuda_mmq.h: the integer block dots of ds4_dot_q, float sums in another
// order), SwiGLU is the swiglu op's f32 arithmetic, and the combine adds each token's
// expert outputs from zero in its ascending expert-id order, then the shared expert, with
// the axpy op's rounding. So a value differs from the matvec / CPU sequence only by
// summation order (and, through a second quantization, the rare flip of one rounding);
// a token's values never depend on which other tokens the chunk holds.
#ifndef DS4_CUDA_MOE_PREFILL_H
#define DS4_CUDA_MOE_PREFILL_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "cuda_matvec.h"

extern "C" {
#include "backend/backend.h"
}

namespace ds4cu {
// Production matmuls of at least this many activation rows use mmq (when the weight
// type is supported); fewer keep the matvec kernels (decode, small chunks), whose
// weight reads per row are already amortised over the batch.
constexpr int kMmqMinRows = 16;
}  // namespace ds4cu

// Whether a product of n_rows activation rows with weights of `type` and row length k
// takes the mmq path on this backend (production numerics, n_rows >= kMmqMinRows,
// ds4_cuda_mmq_supported, and DS4_CUDA_NO_MMQ=1 not set in the environment).
bool ds4cu_mmq_ok(ds4_backend *be, uint32_t type, int64_t k, int n_rows);

// Bytes of one activation row of k values quantized to act_type (Q8_0 / Q8_K).
uint64_t ds4cu_act_row_bytes(uint32_t act_type, int64_t k);

// Quantizes n_rows activation rows to act_type (Q8_0: k % 32 == 0; Q8_K: k % 256 == 0),
// bit-identically to ds4_quantize_act_row: row r = a·n_inner + b (b < n_inner) reads
// x + a·sa + b·sb (device f32, k values) and is written at xq + r·xq_stride (device,
// xq_stride >= ds4cu_act_row_bytes and a multiple of 4). One launch on the backend's
// stream (contiguous rows use ds4_cuda_quantize_act).
void ds4cu_quantize_rows(ds4_backend *be, uint32_t act_type, const float *x, int64_t sa, int64_t sb, int n_inner,
                         int64_t k, int n_rows, void *xq, uint64_t xq_stride);

// Dense products through mmq, for each matrix g < w->n_mats of the stack w (one matrix:
// n_mats = 1): y[t·ys + g·w->n + r] = Σ_i W_g[r][i] · x[t·xs + g·gs + i], t < n_tok,
// r < w->n. x: device f32 [n_tok][xs]; y: device f32 [n_tok][ys]. The G·n_tok input
// rows are quantized once (SCR_ACTQ), then one mmq per matrix. Returns 0, or
// DS4_ERR_UNSUPPORTED when mmq refused (the caller then runs its matvec path, which
// rewrites every output); other failures are reported like a failed assertion.
int ds4cu_mmq_rows(ds4_backend *be, const ds4_cuda_qmat *w, const float *x, int64_t gs, int64_t xs, float *y,
                   int64_t ys, int n_tok);

// The routed experts (and the shared expert) of a chunk of n tokens after routing
// (backend.h moe_routed, production numerics): sel / selw device [n][k] expert ids
// (ascending per token; an id outside [0, n_expert) gives NaN outputs for its token) and
// routing weights as cu_moe_routed's router writes them; x device f32 [n][d]; y device
// f32 [n][d] (overwritten). gate/up: stacks [n_expert][ff][d]; down [n_expert][d][ff];
// gate_sh/up_sh [ffs][d], down_sh [d][ffs] or gate_sh NULL (no shared expert).
// Returns false without touching y when this path does not apply (exact numerics,
// n < kMmqMinRows, a weight type or shape mmq does not take, mmq refused): the caller
// then runs the matvec path.
bool ds4cu_moe_prefill(ds4_backend *be, const int32_t *sel, const float *selw, const ds4_tensor *gate,
                       const ds4_tensor *up, const ds4_tensor *down, const ds4_tensor *gate_sh, const ds4_tensor *up_sh,
                       const ds4_tensor *down_sh, const float *x, int n, int k, float clamp, float *y);

// Device bytes ds4cu_moe_prefill takes from SCR_MOE_PF for n tokens (an upper bound over
// the weight types: quantized rows counted at Q8_K size; n_expert only adds 12 bytes per
// expert). ffs: the shared expert's width (0: none).
size_t ds4cu_moe_prefill_bytes(int n, int k, int n_expert, int64_t d, int64_t ff, int64_t ffs);

#endif
