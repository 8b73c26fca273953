/* backend.h — THE op contract between the forward schedule and a compute backend.
 *
 * Owns: the list of operations engine/forward.c may call and their exact semantics
 * (shapes, layouts, numerics). A backend (cpu/, later cuda/) implements every op; the
 * schedule never touches tensor data itself. Must not: contain a layer loop or any
 * model-order knowledge — that is forward.c's alone.
 *
 * Memory: every `float *` argument is backend memory obtained from be->alloc (or a
 * weight / vector returned by be->upload_vec). On the CPU backend that is host memory,
 * so the schedule can also read it; a device backend must provide the same through
 * be->read when the schedule needs host values (router / indexer selections are
 * returned in host arrays by the ops that make them).
 *
 * Layout conventions: a "row" of width n is n consecutive floats; a batch of n_tok rows
 * has a row stride given explicitly (in floats). Matrices follow MODEL.md §0.2: a
 * weight [out, in] is a ds4_tensor with ne = {in, out}; y = W x means
 * y[o] = Σ_i W[o, i] x[i].
 *
 * Numerics: a backend is created in one of two modes.
 *  - DS4_NUM_EXACT: weights are dequantized to f32 and multiplied with f32 activations
 *    (reference math for oracle comparisons; "weights stay as stored").
 *  - DS4_NUM_PROD: the ds4/official numerics of MODEL.md §20.7: activations are quantized
 *    to Q8_0 for Q8_0 weights and to Q8_K for Q2_K / Q4_K / IQ2_XXS weights before integer
 *    dot products; float weights use f32 activations. The other production effects
 *    (FP8 / FP4 simulation, F16 cache rounding) are explicit ops the schedule calls.
 * Every op is deterministic and computes each output element with the same code
 * whatever the number of rows/tokens in the call, so chunked prefill and single-token
 * decode give bit-identical results.
 */
#ifndef DS4_BACKEND_H
#define DS4_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/weights.h"

typedef enum { DS4_NUM_EXACT = 0, DS4_NUM_PROD = 1 } ds4_numerics;

typedef struct ds4_backend ds4_backend;

struct ds4_backend {
    const char *name;       /* "cpu" */
    ds4_numerics numerics;
    void *impl;             /* backend-private state */

    void (*free)(ds4_backend *be);

    /* Zero-initialised backend memory of `bytes`; NULL on failure. Called only at
     * engine/session creation (never in the decode loop). */
    void *(*alloc)(ds4_backend *be, size_t bytes);
    void (*release)(ds4_backend *be, void *p);
    /* Copy between host and backend memory (CPU: memcpy). */
    void (*write)(ds4_backend *be, void *dst, const void *host_src, size_t bytes);
    void (*read)(ds4_backend *be, void *host_dst, const void *src, size_t bytes);
    /* Copy within backend memory (regions may overlap) and fill with zero bytes. */
    void (*copy)(ds4_backend *be, void *dst, const void *src, size_t bytes);
    void (*zero)(ds4_backend *be, void *dst, size_t bytes);

    /* A 1-D parameter tensor as n f32 values in backend memory. F32 tensors are used in
     * place (CPU: no copy); other types are converted once into memory owned by the
     * backend (released by be->free). NULL on failure. */
    const float *(*upload_vec)(ds4_backend *be, const ds4_tensor *t);

    /* Reserve per-call scratch for matmuls of up to max_tok rows whose input width is at
     * most max_in (activation quantisation buffers, dequantised weight rows). Must be
     * called before the first matmul; idempotent for smaller sizes. */
    int (*reserve)(ds4_backend *be, int max_tok, int64_t max_in, char *err, size_t errlen);
    /* Bytes reserve(max_tok, max_in) allocates on a backend that has reserved nothing yet
     * (for ds4_engine_memory_estimate). NULL: the backend's reserve allocates nothing. */
    size_t (*reserve_bytes)(ds4_backend *be, int max_tok, int64_t max_in);

    /* ---- linear algebra ---------------------------------------------------------
     * y[t*ys + r] = Σ_i W[slab][row0 + r][i] · x[t*xs + i] for t < n_tok, r < n_rows,
     * i < W->ne[0]. With W of [ne1 rows] per slab. x and y must not overlap. */
    void (*matmul)(ds4_backend *be, const ds4_tensor *W, uint64_t slab, uint64_t row0, uint64_t n_rows,
                   const float *x, int64_t xs, float *y, int64_t ys, int n_tok);

    /* Embedding lookup: out[t*d + i] = dequant(E[ids[t]])[i], d = E->ne[0]. ids are host
     * values already validated < E->ne[1]. */
    void (*get_rows)(ds4_backend *be, const ds4_tensor *E, const int32_t *ids, int n, float *out);

    /* ---- elementwise / per-row --------------------------------------------------
     * RMSNorm per row: y = x · w / sqrt(mean(x²) + eps) (w NULL = unweighted). Rows of
     * width n with strides xs / ys; x may equal y. Sum of squares accumulated in f64. */
    void (*rmsnorm)(ds4_backend *be, const float *x, int64_t xs, const float *w, float *y, int64_t ys,
                    int64_t n, int n_rows, double eps);

    /* Interleaved partial RoPE (MODEL.md §4.2) on the LAST n_rot dims of each of n_rows
     * rows of width `width` (stride rs): pair j = (2j, 2j+1) of the slice rotates by
     * θ_j = (float)pos · inv_freq[j]; inverse rotates by −θ_j. inv_freq is HOST memory
     * (the engine's n_rot/2 table), unlike the other pointer arguments. */
    void (*rope)(ds4_backend *be, float *x, int64_t rs, int n_rows, int64_t width, int n_rot,
                 int64_t pos, const float *inv_freq, bool inverse);

    /* y[i] += a · x[i], i < n. */
    void (*axpy)(ds4_backend *be, float *y, const float *x, float a, int64_t n);

    /* SwiGLU with the V4 clamp, per element: g' = min(g, limit), u' = clamp(u, −limit,
     * limit), out = silu(g') · u' · scale. out may alias g. */
    void (*swiglu)(ds4_backend *be, const float *g, const float *u, float *out, int64_t n, float limit, float scale);

    /* ---- hyper-connections (MODEL.md §6) ------------------------------------------
     * hc_pre: from mix logits m[t*mix ..] (fn · rmsnorm(flat H), mix = (2+h)h) compute
     *   pre = σ(m_pre·s0 + b_pre) + hc_eps, post = 2σ(m_post·s1 + b_post),
     *   comb = Sinkhorn(softmax_rows(m_comb·s2 + b_comb) + hc_eps, iters) (row-major h×h,
     *   comb[k*h + j]: source stream k → destination j),
     *   x[t*d + i] = Σ_k pre[k] · H[t][k][i].
     * H is [n_tok][h][d]; post is [n_tok][h]; comb [n_tok][h*h]. */
    void (*hc_pre)(ds4_backend *be, const float *mix, const float *scale, const float *base, const float *H,
                   int n_tok, int h, int64_t d, int iters, double hc_eps, float *x, float *post, float *comb);
    /* hc_post: Hout[t][j][i] = post[t][j] · y[t*d + i] + Σ_k comb[t][k*h + j] · H[t][k][i].
     * Hout must not alias H. */
    void (*hc_post)(ds4_backend *be, const float *y, const float *H, const float *post, const float *comb,
                    int n_tok, int h, int64_t d, float *Hout);
    /* hc_head: w[k] = σ(m[t*h + k] · scale[0] + base[k]) + hc_eps; y[t*d+i] = Σ_k w[k] H[t][k][i]. */
    void (*hc_head)(ds4_backend *be, const float *mix, const float *scale, const float *base, const float *H,
                    int n_tok, int h, int64_t d, double hc_eps, float *y);

    /* ---- attention (MODEL.md §7) ---------------------------------------------------
     * Compressor pooling of one window (§7.5). cur points to R rows (stride rs floats)
     * laid out [C (coff·hd) | Z+ape (coff·hd)] for the tokens of window w; prev the same
     * for window w−1 or NULL. coff = 1: out[d] = Σ_r softmax_r(Z_r[d]) C_r[d].
     * coff = 2: candidates are prev rows' dims [0, hd) and cur rows' dims [hd, 2hd);
     * softmax over the 2R (or R without prev) candidates per feature d. out has hd
     * values. Softmax in f32 with the max subtracted. */
    void (*compress_pool)(ds4_backend *be, const float *cur, const float *prev, int64_t rs, int R, int coff,
                          int64_t hd, float *out);

    /* Sink attention for one query position (§7.7): for each head h < n_head with query
     * q[h*hd ..], over the key=value rows rows_a[ia[j]*hd] (j < na) and
     * rows_b[ib[j]*hd] (j < nb): ℓ_j = scale · ⟨q_h, kv_j⟩, out_h = Σ_j softmax_j · kv_j
     * where the softmax denominator also contains e^{sinks[h]}. ia / ib are host arrays
     * of row indices. */
    void (*attention)(ds4_backend *be, const float *q, int n_head, int64_t hd, const float *rows_a,
                      const int32_t *ia, int na, const float *rows_b, const int32_t *ib, int nb,
                      const float *sinks, float scale, float *out);

    /* Lightning-indexer scores (§7.6): score[c] = scale · Σ_h w[h] · max(0, ⟨q_h, K_c⟩)
     * for c < n_keys, q [n_head][hd], keys K [n_keys][hd]. */
    void (*indexer_scores)(ds4_backend *be, const float *q, const float *w, float scale, int n_head, int64_t hd,
                           const float *keys, int n_keys, float *score);

    /* Top-k by score into host idx[k] (k <= n): the k largest, ties to the lower index,
     * returned in ascending index order. */
    void (*topk)(ds4_backend *be, const float *score, int n, int k, int32_t *idx);

    /* ---- production-numerics simulation (MODEL.md §13) ----------------------------
     * FP8 E4M3 round trip with a power-of-two scale per 64-element block, over the
     * first n values of each of n_rows rows (stride rs); a trailing partial block (only
     * in shape-generic test models) is its own block. */
    void (*fp8_sim)(ds4_backend *be, float *x, int64_t rs, int n_rows, int64_t n);
    /* Hadamard rotation (Sylvester order, 1/sqrt(n) scaling; skipped when n is not a
     * power of two) then FP4 E2M1 round trip per 32-element block (a trailing partial
     * block is its own block), per row of width n, n_rows rows stride rs. */
    void (*hadamard_fp4_sim)(ds4_backend *be, float *x, int64_t rs, int n_rows, int64_t n);
    /* Round each value to the nearest F16 (storage precision of cached rows). */
    void (*round_f16)(ds4_backend *be, float *x, int64_t n);

    /* ---- optional fused ops: NULL means forward.c runs the generic op sequence ------ */
    /* matmul_groups: G independent row blocks of one matrix, each with its own input slice
     * (the grouped output projection, MODEL.md §7.9): for g < G, r < n_rows,
     * y[t*ys + g*n_rows + r] = Σ_i W[g*n_rows + r][i] · x[t*xs + g*gs + i], i < W->ne[0];
     * the same values as G matmul calls with row0 = g*n_rows. */
    void (*matmul_groups)(ds4_backend *be, const ds4_tensor *W, int G, uint64_t n_rows, const float *x, int64_t gs,
                          int64_t xs, float *y, int64_t ys, int n_tok);
    /* moe_routed: router + routed experts (MODEL.md §8.2–8.4) for n tokens without host
     * round trips. From router logits lg [n][n_expert] (backend memory): scores
     * s_e = (float)sqrt(softplus(lg_e)) (softplus in f64: x > 20 ? x : log1p(exp(x)));
     * selection = hash_sel[t*k ..] (host, tid2eid rows) when given, else the k largest of
     * s_e + bias_e (bias NULL = 0; ties to the lower index); weights
     * w_j = (float)(s_sel_j / denom · w_scale) with the f64 sum of the selected s,
     * denom = sum + 1e-20 (exact) or max(sum, 2^-14) (production). Then, adding expert
     * contributions in ascending expert id into y[t] (zeroed first): exact:
     * y += w · (down · swiglu(gate·x, up·x)); production: y += down · (swiglu(...) · w),
     * swiglu with the clamp as the swiglu op, every step with the rounding of the generic
     * sequence (matmul / swiglu / axpy), so both paths give the same values.
     * When gate_sh is not NULL, the shared expert follows for each token, as forward.c's
     * sequence: g = gate_sh·x, u = up_sh·x, g = swiglu(g, u) (clamp, scale 1),
     * dn = down_sh·g, y += dn (axpy with a = 1), with that sequence's values. */
    void (*moe_routed)(ds4_backend *be, const float *lg, const float *bias, const int32_t *hash_sel,
                       const ds4_tensor *gate, const ds4_tensor *up, const ds4_tensor *down, const ds4_tensor *gate_sh,
                       const ds4_tensor *up_sh, const ds4_tensor *down_sh, const float *x, int n, int k,
                       double w_scale, float clamp, float *y);

    /* ---- optional fused ops for the latency of single-token decode (NULL: forward.c runs
     * the op sequence each one names). forward.c uses them for every chunk size, so a
     * token's values never depend on how many tokens the chunk has, and a backend must
     * compute each token's values with the same code whatever n_tok is. ---------------- */

    /* matmul_multi: y_j = W_j · x for j < n (each W_j whole, slab 0; all with the same
     * ne[0]), n_tok rows of x (stride xs), y_j rows with stride ys[j]: the values of n
     * matmul calls. n <= 8. */
    void (*matmul_multi)(ds4_backend *be, int n, const ds4_tensor *const *W, float *const *y, const int64_t *ys,
                         const float *x, int64_t xs, int n_tok);

    /* hc_site: one hyper-connection site for n_tok tokens (the sequence rmsnorm + matmul +
     * hc_pre + rmsnorm): flat = rmsnorm(H[t]) (unweighted, width h·d, eps),
     * mix = fn · flat (fn [mw = (2+h)·h rows][h·d], F16 or F32), pre/post/comb and
     * x = Σ_k pre[k]·H[t][k] as hc_pre (iters, hc_eps), then xn[t] = rmsnorm(x) · norm_w
     * (width d, eps). Outputs post [n_tok][h], comb [n_tok][h·h], xn [n_tok][d]. The
     * dot products behind mix may be summed in another order than matmul's (rounding
     * only). */
    void (*hc_site)(ds4_backend *be, const ds4_tensor *fn, const float *scale, const float *base, const float *H,
                    int n_tok, int h, int64_t d, int iters, double hc_eps, double eps, const float *norm_w,
                    float *post, float *comb, float *xn);
    /* hc_post_site: hc_post then hc_site in one op (the end of one sublayer and the HC site
     * of the next): H = hc_post(y, Hprev, post, comb) with hc_post's values (H must not
     * alias Hprev), then hc_site on H, which overwrites post and comb with the new site's
     * (every read of the old ones happens first). */
    void (*hc_post_site)(ds4_backend *be, const float *y, const float *Hprev, float *H, const ds4_tensor *fn,
                         const float *scale, const float *base, int n_tok, int h, int64_t d, int iters, double hc_eps,
                         double eps, const float *norm_w, float *post, float *comb, float *xn);

    /* qkv_rope: the per-token chain of one position pos before attention (the sequence
     * rmsnorm, rope, fp8_sim, round_f16, copy, axpy of forward.c):
     *  - q: n_head rows of hd, each rmsnorm (unweighted, eps) then rope (inv_freq, last
     *    n_rot dims);
     *  - kv: one row of hd: rmsnorm · kv_norm (eps), rope, and when prod: fp8_sim of dims
     *    [0, hd − n_rot), round_f16 of all hd; then copied to raw (hd floats);
     *  - iq (NULL: none): iq_heads rows of ihd: rope (same inv_freq), then when prod
     *    hadamard_fp4_sim;
     *  - ring stores j < n_put: put_dst[j][i] = put_src[j][i] for i < put_cw[j], and
     *    put_dst[j][cw + i] = put_src[j][cw + i] + put_ape[j][i] (copy + axpy with a = 1).
     * Every value as that op sequence computes it. n_put <= 2. */
    void (*qkv_rope)(ds4_backend *be, float *q, int n_head, float *kv, const float *kv_norm, int64_t hd, int n_rot,
                     int64_t pos, const float *inv_freq, bool prod, double eps, float *raw, float *iq, int iq_heads,
                     int64_t ihd, int n_put, float *const *put_dst, const float *const *put_src,
                     const float *const *put_ape, const int64_t *put_cw);

    /* topk_dev: topk's selection (the k largest of score[0, n), ties to the lower index,
     * ascending index order) written as k int32 into idx, backend memory: no host copy. */
    void (*topk_dev)(ds4_backend *be, const float *score, int n, int k, int32_t *idx);

    /* attention_ex: attention (above), then rope with inverse = true on the last n_rot
     * dims of each head's output at position pos (inv_freq host memory, as rope). ia is a
     * host array; ib is a host array, or backend memory when ib_dev (from topk_dev). */
    void (*attention_ex)(ds4_backend *be, const float *q, int n_head, int64_t hd, const float *rows_a,
                         const int32_t *ia, int na, const float *rows_b, const int32_t *ib, int nb, bool ib_dev,
                         const float *sinks, float scale, int n_rot, int64_t pos, const float *inv_freq, float *out);

    /* repeat_rows (optional; NULL: n·h copies): dst[(t·h + k)·d + i] = src[t·d + i] for
     * t < n, k < h, i < d — the h hyper-connection streams start as copies of the
     * embedding. dst and src do not overlap. */
    void (*repeat_rows)(ds4_backend *be, float *dst, const float *src, int n, int h, int64_t d);

    /* ---- optional batched ops for prefill chunks (NULL: forward.c runs the per-token
     * chain above). forward.c uses them for chunks of n >= 2 tokens, in sub-batches no
     * larger than the session's rewind window allows (every ring slot a sub-batch writes
     * is distinct from every slot it reads). Unlike the decode ops above, a token's values
     * may differ from the per-token chain's by rounding (summation order), never by more:
     * each op's test states its bound against that chain. Positions are pos0 + t for
     * t < n_tok; inv_freq is host memory as for rope. ------------------------------------ */

    /* qkv_rope_n: qkv_rope for each token t (q + t·qs, kv + t·kvs; iq + t·iqs when iq is not
     * NULL, for every token) with the raw-cache row written to raw + ((pos0+t) % raw_cap)·hd
     * and ring stores j < n_put: entry (pos0+t) % put_cap[j] of width 2·put_cw[j] in
     * put_dst[j] receives put_src[j] + t·put_ss[j] (first put_cw[j] values copied, next
     * put_cw[j] plus put_ape[j] + ((pos0+t) % put_R[j])·put_cw[j]). Values bit-identical to
     * qkv_rope's (same per-token math). n_put <= 2. */
    void (*qkv_rope_n)(ds4_backend *be, float *q, int64_t qs, int n_head, float *kv, int64_t kvs,
                       const float *kv_norm, int64_t hd, int n_rot, int64_t pos0, int n_tok, const float *inv_freq,
                       bool prod, double eps, float *raw, int raw_cap, float *iq, int64_t iqs, int iq_heads,
                       int64_t ihd, int n_put, float *const *put_dst, const int *put_cap, const float *const *put_src,
                       const int64_t *put_ss, const float *const *put_ape, const int *put_R, const int64_t *put_cw);

    /* compress_rows: the pooling half of forward.c's compressor_step for every window w in
     * [w0, w1) (window w closes at position (w+1)·R − 1): with entry(p) = ring +
     * (p % cap)·2·coff·hd, rows[w·hd ..] = compress_pool(entry(w·R), coff == 2 && w > 0 ?
     * entry((w−1)·R) : NULL, 2·coff·hd, R, coff, hd), then rmsnorm · norm (eps), rope
     * (n_rot, position w·R, inv_freq), and when prod: indexer ? hadamard_fp4_sim (width hd)
     * : fp8_sim of [0, hd − n_rot), then round_f16 — bit-identical to that sequence, so it
     * is also used for single tokens. */
    void (*compress_rows)(ds4_backend *be, const float *ring, int cap, int R, int coff, int64_t hd,
                          const float *norm, double eps, int n_rot, const float *inv_freq, bool prod, bool indexer,
                          int64_t w0, int64_t w1, float *rows);

    /* indexer_topk: for each token t with n_vis = (pos0 + t + 1) / R > k:
     * score_c = indexer_scores(q + t·qs, w + t·ws, scale, n_head, hd, keys, n_vis)_c and
     * idx[t·k .. t·k + k) = topk_dev(score, n_vis, k) (ascending index order). Rows of
     * tokens with n_vis <= k are left untouched. idx is backend memory. Scores may be
     * summed in another order than indexer_scores' (so a near-tie may select
     * differently). In production numerics q and keys are hadamard_fp4_sim outputs (keys
     * then round_f16): FP4 values times power-of-two scales, which a backend may multiply
     * in a narrow format (bf16) exactly; other inputs are then rounded to that format. */
    void (*indexer_topk)(ds4_backend *be, const float *q, int64_t qs, const float *w, int64_t ws, float scale,
                         int n_head, int64_t hd, const float *keys, int R, int64_t pos0, int n_tok, int k,
                         int32_t *idx);

    /* attention_n: attention_ex for each token t at p = pos0 + t: query q + t·qs (n_head
     * rows of hd), output out + t·os; rows_a = the raw cache, rows (p − j) % raw_cap for
     * the positions max(0, p − n_win + 1) .. p in ascending order; rows_b = comp rows:
     * when R > 0 with n_vis = (p + 1) / R: idx + t·k_top (k_top rows, backend memory) if
     * idx is not NULL and n_vis > k_top, else rows 0 .. n_vis − 1 (R == 0: none). Sinks,
     * scale and the inverse rope at p as attention_ex. In production numerics every row
     * is an F16 value (qkv_rope / compress_rows end with round_f16), which a backend may
     * rely on (rows stored or multiplied as f16); other rows are then rounded to f16. */
    void (*attention_n)(ds4_backend *be, const float *q, int64_t qs, int n_head, int64_t hd, const float *raw,
                        int raw_cap, int n_win, const float *comp, int R, const int32_t *idx, int k_top,
                        const float *sinks, float scale, int n_rot, int64_t pos0, int n_tok, const float *inv_freq,
                        float *out, int64_t os);

    /* ---- cached-row storage (optional; NULL: every cached row is f32) ----------------
     * kv_row_bytes: bytes of one cached compressed row in this backend's memory for kind
     * DS4_KV_ROW_ATTN (width hd, the last n_rot dims rope) or DS4_KV_ROW_INDEX (width hd;
     * n_rot ignored), or 0 for hd f32 values. A backend returns nonzero only in production
     * numerics, where it stores those rows in the compact layout of kv_fmt.h (FP8 / FP4
     * with power-of-two block scales: lossless on rows that went through fp8_sim /
     * hadamard_fp4_sim and round_f16). Then every compressed-row argument of the ops above
     * — attention and attention_ex rows_b, indexer_scores keys, compress_rows rows,
     * indexer_topk keys, attention_n comp — addresses rows of that many bytes (the pointer
     * types stay float * for the f32 case; row w starts at byte w · kv_row_bytes), values
     * are those the f32 rows would hold, forward.c writes them only through compress_rows
     * (the session refuses a backend with compact rows and no compress_rows), and the
     * session allocates, snapshots and fills them by bytes. Raw (window) rows stay f32.
     * The session asks with the model's head_dim / n_rot (idx_head_dim for indexer rows),
     * so ops without an n_rot argument (attention) decode attention rows with that n_rot. */
    size_t (*kv_row_bytes)(ds4_backend *be, int kind, int64_t hd, int n_rot);

    /* topk_vals (optional; NULL: the session reads the whole row and selects on the host):
     * topk's selection of x[0, n) — the k largest, ties to the lower index, ascending index
     * order — written to the host arrays ids[k] with vals[k] = x[ids[j]], so that only
     * 8·k bytes leave the backend (the output head's argmax / top-k). 1 <= k <= n. */
    void (*topk_vals)(ds4_backend *be, const float *x, int n, int k, int32_t *ids, float *vals);

    /* graph_begin / graph_end (optional, both or neither; NULL: nothing): forward.c brackets
     * the ops of a single-token chunk (a decode step) with them. In between, a backend may
     * defer the work the ops issue and run it as recorded graphs (CUDA graphs whose
     * launches are replayed with the new step's arguments), provided every op's values and
     * the order of all work stay those of issuing the ops as called — any read, write or
     * other op may still come in between (the backend issues what it deferred first). After
     * graph_end the work may still be running, as after any op. */
    void (*graph_begin)(ds4_backend *be);
    void (*graph_end)(ds4_backend *be);
};

enum { DS4_KV_ROW_ATTN = 0, DS4_KV_ROW_INDEX = 1 };

/* Creates the CPU backend with n_threads workers (0 = all cores). */
int ds4_backend_cpu_create(ds4_backend **out, int n_threads, ds4_numerics numerics, char *err, size_t errlen);

/* Shared scalar helpers (also used by tests as definitions). */
/* Host top-k with the same contract as be->topk (score and idx in host memory). */
void ds4_topk_host(const float *score, int n, int k, int32_t *idx);
float ds4_fp8_e4m3_round(float v);   /* nearest E4M3FN value of v in [−448, 448], ties even */
float ds4_fp4_e2m1_round(float v);   /* nearest of ±{0, .5, 1, 1.5, 2, 3, 4, 6}, ties even index */

#endif
