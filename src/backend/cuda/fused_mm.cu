// fused_mm.cu — the fused op matmul_multi (backend.h): y_j = W_j · x for up to 8 matrices
// that read the same x (the attention-input projections of a token: q_a, kv, compressor
// and indexer projections; the shared expert's gate and up).
//
// Owns: grouping the matrices by weight type and one matrix-list launch per group
// (ds4_cuda_matvec_list, matvec.cu) for a single token, where separate matmuls cost one
// launch (≈ 8–10 µs of GPU time each in decode) per matrix. Must not: change a value
// relative to be->matmul: the list launch computes every output with the single-matrix
// code (cuda_matvec.h), and chunks of more tokens simply call be->matmul per matrix,
// except production chunks of at least kMmqMinRows tokens: there the matrices mmq takes
// share one quantization of x per dot type and get one tensor-core GEMM each (the values
// of be->matmul's mmq path: same quantized rows, same GEMM).
#include "cuda_internal.h"
#include "cuda_matvec.h"
#include "cuda_mmq.h"
#include "moe_prefill.h"

extern "C" {
#include "core/common.h"
#include "model/quant.h"
}

// n_tok > 1 rows: the matrices mmq takes (ds4cu_mmq_ok) read x quantized once per dot
// type (Q8_0 / Q8_K rows in SCR_ACTQ), one mmq each; the others, and any mmq refuses,
// run be->matmul afterwards (it may reuse SCR_ACTQ, so never before the GEMMs are queued).
static void multi_chunk(ds4_backend *be, int n, const ds4_tensor *const *W, float *const *y, const int64_t *ys,
                        const float *x, int64_t xs, int n_tok) {
    const int64_t k = (int64_t)W[0]->ne[0];
    bool via_mmq[8] = {false}, need[2] = {false, false};  // need: Q8_0, Q8_K rows
    for (int j = 0; j < n; j++) {
        via_mmq[j] = ds4cu_mmq_ok(be, W[j]->type, k, n_tok);
        if (via_mmq[j]) need[ds4_vec_dot_type(W[j]->type) == DS4_TYPE_Q8_K] = true;
    }
    if (need[0] || need[1]) {
        const uint32_t vt[2] = {DS4_TYPE_Q8_0, DS4_TYPE_Q8_K};
        uint64_t rb[2] = {0, 0};
        size_t at[2] = {0, 0}, total = 0;
        for (int v = 0; v < 2; v++)
            if (need[v]) {
                rb[v] = ds4cu_act_row_bytes(vt[v], k);
                at[v] = total;
                total += ((size_t)n_tok * rb[v] + 255) & ~(size_t)255;
            }
        uint8_t *xq = (uint8_t *)ds4cu::scratch(be, ds4cu::SCR_ACTQ, total);
        for (int v = 0; v < 2; v++)
            if (need[v]) ds4cu_quantize_rows(be, vt[v], x, 0, xs, n_tok, k, n_tok, xq + at[v], rb[v]);
        for (int j = 0; j < n; j++) {
            if (!via_mmq[j]) continue;
            const int v = ds4_vec_dot_type(W[j]->type) == DS4_TYPE_Q8_K;
            ds4_cuda_qmat q;
            q.type = W[j]->type;
            q.data = ds4cu::dev_of(be, W[j]->data);
            q.n = (int64_t)W[j]->ne[1];
            q.k = k;
            q.mat_stride = 0;
            q.n_mats = 1;
            char err[256];
            const int rc = ds4_cuda_mmq(&q, xq + at[v], rb[v], nullptr, n_tok, y[j], ys[j], ds4cu::stream(be), err, sizeof err);
            if (rc == DS4_ERR_UNSUPPORTED) via_mmq[j] = false;  // below, through be->matmul
            else if (rc < 0) ds4_assert_fail(err, __FILE__, __LINE__);
        }
    }
    for (int j = 0; j < n; j++)
        if (!via_mmq[j]) be->matmul(be, W[j], 0, 0, W[j]->ne[1], x, xs, y[j], ys[j], n_tok);
}

// W[j]: ne {k, rows_j} (slab 0), all with the same k; x: device f32 [n_tok][xs];
// y[j]: device f32 [n_tok][ys[j]].
void ds4cu_matmul_multi(ds4_backend *be, int n, const ds4_tensor *const *W, float *const *y, const int64_t *ys,
                        const float *x, int64_t xs, int n_tok) {
    DS4_ASSERT(n >= 0 && n <= 8 && n <= DS4_CUDA_MV_MAX_ENTRIES);
    if (n == 0 || n_tok <= 0) return;
    for (int j = 1; j < n; j++) DS4_ASSERT(W[j]->ne[0] == W[0]->ne[0]);
    if (n_tok > 1) {
        // Chunks: one batched launch (or GEMM) per matrix already reads each matrix once for
        // all tokens; below kMmqMinRows the values are the single-token ones (matvec).
        multi_chunk(be, n, W, y, ys, x, xs, n_tok);
        return;
    }
    const ds4_cuda_act_mode mode = ds4cu::exact(be) ? DS4_CUDA_ACT_F32 : DS4_CUDA_ACT_QUANT;
    bool done[8] = {false};
    for (int j = 0; j < n; j++) {
        if (done[j]) continue;
        // One launch for every matrix of W[j]'s type (the kernel is specialised per type).
        ds4_cuda_mv_entry e[8];
        int ne = 0;
        for (int i = j; i < n; i++) {
            if (done[i] || W[i]->type != W[j]->type) continue;
            done[i] = true;
            ds4_cuda_mv_entry &en = e[ne++];
            en.w.type = W[i]->type;
            en.w.data = ds4cu::dev_of(be, W[i]->data);
            en.w.n = (int64_t)W[i]->ne[1];
            en.w.k = (int64_t)W[i]->ne[0];
            en.w.mat_stride = 0;
            en.w.n_mats = 1;
            en.ids = nullptr;
            en.n_sel = 1;
            en.y = y[i];
        }
        char err[256];
        const int rc = ds4_cuda_matvec_list(e, ne, x, mode, ds4cu::stream(be), err, sizeof err);
        if (rc < 0) ds4_assert_fail(err, __FILE__, __LINE__);
    }
}
