// cuda_internal.h — what the CUDA backend's op files share with cuda_backend.cu (C++ only).
//
// Owns: access to the backend's stream, resident-weight addresses, the pinned staging
// ring, growable per-purpose device scratch and zeroed device counters, plus the entry
// points of the fused ops (backend.h, "optional fused ops"), each defined in its own
// .cu file with exactly the signature of its backend.h pointer. Must not: expose
// cu_impl itself; be included by C code.
#ifndef DS4_CUDA_INTERNAL_H
#define DS4_CUDA_INTERNAL_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "backend/backend.h"
}

namespace ds4cu {

// The backend's stream: every launch of an op goes there (in stream order) — the side
// stream between side_begin and side_end.
cudaStream_t stream(ds4_backend *be);
// Work inside one op that may overlap the main stream: side_begin orders the side stream
// after everything launched so far and sends ds4cu::stream's launches there; side_end
// sends them back to the main stream; side_join makes the main stream wait for the side
// work. Between begin and join the two streams must not touch the same bytes except for
// reads of data written before side_begin; nothing may grow scratch (ds4cu::scratch) in
// between. Not nestable.
void side_begin(ds4_backend *be);
void side_end(ds4_backend *be);
void side_join(ds4_backend *be);
// Device address of a weight's host pointer (inside the model mapping: t->data).
const void *dev_of(ds4_backend *be, const void *host_weight);
// Copies `bytes` of host memory to device memory usable by kernels launched afterwards
// on the stream (asynchronous; the slice is valid until the ring wraps, i.e. for the op).
void *stage(ds4_backend *be, const void *host, size_t bytes);
// Device scratch owned by the backend, one buffer per slot, grown (with a stream
// synchronisation) when a call needs more than it holds; contents are not kept across
// growth. Slots are fixed per purpose (below) so ops never share a buffer by accident.
// SCR_HC: hc_site partials; SCR_ATT: attention_ex partials; SCR_MOE: the shared expert's
// outputs of a chunk; SCR_MOE_SHARED: its gate/up rows; SCR_MOE_GROUP: a token group's
// routed gate/up/input copies/down rows.
// Batched prefill ops: SCR_ACTQ: quantized activation rows of a chunk (mmq inputs);
// SCR_MOE_PF: the large-chunk MoE path's routing lists and packed rows; SCR_IDX: indexer
// scores of a sub-batch; SCR_ATTN_N: attention_n partials; SCR_QKV_N: qkv_rope_n /
// compress_rows staged tables.
// Compact rows (kv_rows.cu): SCR_KV_DEC: the generic attention op's rows_b decoded to f32;
// SCR_KV_ENC: compress_rows' huge-row fallback row before it is encoded.
// SCR_TOPKV: topk_vals' per-block argmax words / selected indices and values.
enum ScratchSlot {
    SCR_HC = 0, SCR_ATT, SCR_MOE, SCR_MOE_SHARED, SCR_MOE_GROUP,
    SCR_ACTQ, SCR_MOE_PF, SCR_IDX, SCR_ATTN_N, SCR_QKV_N, SCR_KV_DEC, SCR_KV_ENC, SCR_TOPKV, SCR_COUNT
};
void *scratch(ds4_backend *be, int slot, size_t bytes);
// kCounters unsigned ints of device memory, zero at creation. A kernel that uses one
// (e.g. a last-block-done counter) must leave it at zero when it finishes. Ranges are
// fixed per purpose like the scratch slots.
constexpr int kCounters = 4096;
enum CounterBase { CNT_HC = 0, CNT_TOPK = 1024, CNT_ATT = 2048, CNT_MV = 3072 };
unsigned *counters(ds4_backend *be);
// True in exact numerics (DS4_NUM_EXACT).
bool exact(ds4_backend *be);
// Multiprocessors of the current device (read once; launch sizing only, never values).
int sm_count();
// True when compressed rows (attention comp rows, indexer rows) are stored in the compact
// layout of kv_fmt.h (backend.h kv_row_bytes): production numerics unless DS4_CUDA_KV=f32
// or the test hook ds4_cuda_set_kv_compact turned it off. Every op taking such rows
// (attention / attention_ex rows_b, indexer_scores keys, compress_rows rows, indexer_topk
// keys, attention_n comp) reads or writes that layout when this is true.
bool kv_compact(ds4_backend *be);
// kv_rows.cu. Bytes of one compact row of kind DS4_KV_ROW_ATTN (width hd, last n_rot dims
// rope) or DS4_KV_ROW_INDEX when kv_compact, else 0 (rows are hd f32).
size_t kv_bytes(ds4_backend *be, int kind, int64_t hd, int n_rot);
// dst[j·hd + i] = value i of compact row (ix ? ix[j] : j) of rows, j < n (ix: device
// memory; exact, kv_fmt.h's decoders). Stream-ordered, no synchronisation.
void kv_decode(ds4_backend *be, const void *rows, int kind, int64_t hd, int n_rot, const int32_t *ix, int n,
               float *dst);
// Rows j < n of src (stride ss floats) encoded into dst + j·row bytes: the bytes of
// ds4_kv_attn_encode / ds4_kv_index_encode (padding zero). Stream-ordered.
void kv_encode(ds4_backend *be, const float *src, int64_t ss, int n, int kind, int64_t hd, int n_rot, void *dst);
// cuda_backend.cu. The generic attention op (backend.h attention) with the n_rot of rows_b
// given: when kv_compact, rows_b holds compact attention rows of width hd whose last n_rot
// dims are rope (be->attention itself uses the model's rope.dimension_count, having no
// n_rot argument); the referenced rows are decoded into SCR_KV_DEC and the f32 kernel runs
// on them, so the values equal those of the f32 rows bit for bit. ia / ib host arrays.
void attention(ds4_backend *be, const float *q, int n_head, int64_t hd, const float *rows_a, const int32_t *ia,
               int na, const float *rows_b, const int32_t *ib, int nb, const float *sinks, float scale, int n_rot,
               float *out);
// A CUDA failure inside an op (ops have no error path): reported like a failed assertion.
void check(cudaError_t e, const char *what, const char *file, int line);

}  // namespace ds4cu

#define DS4CU_CK(call) ds4cu::check((call), #call, __FILE__, __LINE__)
#define DS4CU_CKL() ds4cu::check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// Fused ops (backend.h): one definition each, in the named file.
// fused_hc.cu
void ds4cu_hc_site(ds4_backend *be, const ds4_tensor *fn, const float *scale, const float *base, const float *H,
                   int n_tok, int h, int64_t d, int iters, double hc_eps, double eps, const float *norm_w, float *post,
                   float *comb, float *xn);
void ds4cu_hc_post_site(ds4_backend *be, const float *y, const float *Hprev, float *H, const ds4_tensor *fn,
                        const float *scale, const float *base, int n_tok, int h, int64_t d, int iters, double hc_eps,
                        double eps, const float *norm_w, float *post, float *comb, float *xn);
// fused_qkv.cu
void ds4cu_qkv_rope(ds4_backend *be, float *q, int n_head, float *kv, const float *kv_norm, int64_t hd, int n_rot,
                    int64_t pos, const float *inv_freq, bool prod, double eps, float *raw, float *iq, int iq_heads,
                    int64_t ihd, int n_put, float *const *put_dst, const float *const *put_src,
                    const float *const *put_ape, const int64_t *put_cw);
// indexer.cu (the indexer_scores op itself, not a fused one)
void ds4cu_indexer_scores(ds4_backend *be, const float *q, const float *w, float scale, int n_head, int64_t hd,
                          const float *keys, int n_keys, float *score);
// fused_mm.cu
void ds4cu_matmul_multi(ds4_backend *be, int n, const ds4_tensor *const *W, float *const *y, const int64_t *ys,
                        const float *x, int64_t xs, int n_tok);
// fused_attn.cu
void ds4cu_topk_dev(ds4_backend *be, const float *score, int n, int k, int32_t *idx);
// topk_vals.cu: backend.h topk_vals (SCR_TOPKV: its partials / indices and values).
void ds4cu_topk_vals(ds4_backend *be, const float *x, int n, int k, int32_t *ids, float *vals);
void ds4cu_attention_ex(ds4_backend *be, const float *q, int n_head, int64_t hd, const float *rows_a,
                        const int32_t *ia, int na, const float *rows_b, const int32_t *ib, int nb, bool ib_dev,
                        const float *sinks, float scale, int n_rot, int64_t pos, const float *inv_freq, float *out);

// batched prefill ops (backend.h "optional batched ops")
// fused_qkv.cu
void ds4cu_qkv_rope_n(ds4_backend *be, float *q, int64_t qs, int n_head, float *kv, int64_t kvs, const float *kv_norm,
                      int64_t hd, int n_rot, int64_t pos0, int n_tok, const float *inv_freq, bool prod, double eps,
                      float *raw, int raw_cap, float *iq, int64_t iqs, int iq_heads, int64_t ihd, int n_put,
                      float *const *put_dst, const int *put_cap, const float *const *put_src, const int64_t *put_ss,
                      const float *const *put_ape, const int *put_R, const int64_t *put_cw);
// compress.cu
void ds4cu_compress_rows(ds4_backend *be, const float *ring, int cap, int R, int coff, int64_t hd, const float *norm,
                         double eps, int n_rot, const float *inv_freq, bool prod, bool indexer, int64_t w0, int64_t w1,
                         float *rows);
// indexer_n.cu
void ds4cu_indexer_topk(ds4_backend *be, const float *q, int64_t qs, const float *w, int64_t ws, float scale,
                        int n_head, int64_t hd, const float *keys, int R, int64_t pos0, int n_tok, int k, int32_t *idx);
// attn_n.cu
void ds4cu_attention_n(ds4_backend *be, const float *q, int64_t qs, int n_head, int64_t hd, const float *raw,
                       int raw_cap, int n_win, const float *comp, int R, const int32_t *idx, int k_top,
                       const float *sinks, float scale, int n_rot, int64_t pos0, int n_tok, const float *inv_freq,
                       float *out, int64_t os);

#endif
