/* engine_internal.h — the engine and session structs shared by engine.c, session.c and
 * forward.c.
 *
 * Owns: the in-memory layout of the decode state (MODEL.md §12) and of the per-chunk
 * scratch. Must not: be included outside src/engine (the public API is ds4.h).
 *
 * Decode state per layer, for a session with context C and rewind window W:
 *   raw   [cap_raw][hd]       ring of K=V rows, position p in slot p % cap_raw,
 *                             cap_raw = n_win + W (rewinding <= W keeps every row needed)
 *   comp  [C / R][hd]         emitted compressed rows, row w covers [wR, wR + R); each row
 *                             is comp_rb bytes: hd f32, or the backend's compact layout
 *                             (backend.h kv_row_bytes, kv_fmt.h) in production numerics
 *   cfr   [cap_c][2·coff·hd]  ring of compressor inputs per position: C then Z + ape,
 *                             cap_c = a multiple of R >= W + 2R, so windows are contiguous
 *   icomp [C / R][ihd], ifr [cap_c][4·ihd]   the indexer's compressor (CSA only); icomp
 *                             rows are icomp_rb bytes (ihd f32 or compact, as comp)
 * Counts are derived from n_tokens: rows emitted = n_tokens / R. A rewind to t tokens
 * is therefore only "n_tokens = t" when n_tokens − t <= W.
 */
#ifndef DS4_ENGINE_INTERNAL_H
#define DS4_ENGINE_INTERNAL_H

#include "ds4.h"
#include "backend/backend.h"
#include "model/weights.h"

typedef struct {
    /* f32 views of the 1-D (and small 2-D) parameters, in backend memory */
    const float *hc_attn_scale, *hc_attn_base, *attn_norm, *q_a_norm, *kv_norm, *sinks;
    const float *c_ape, *c_norm, *i_ape, *i_norm;
    const float *hc_ffn_scale, *hc_ffn_base, *ffn_norm, *exp_probs_b;
} ds4_layer_vecs;

struct ds4_engine {
    ds4_model *model;
    ds4_backend *be;
    bool exact;
    ds4_layer_vecs *lv;                  /* [n_layer] */
    const float *out_hc_scale, *out_hc_base, *out_norm;
    float *inv_freq_main;                /* [n_rot/2] sliding layers */
    float *inv_freq_comp;                /* [n_rot/2] compressed layers (YaRN) */
    /* widest matmul input and output seen over all tensors (scratch sizing) */
    int64_t max_in;
};

typedef struct {
    float *raw;    /* [cap_raw][hd] */
    float *comp;   /* [max_comp] rows of comp_rb bytes: f32 [max_comp][hd], or compact rows
                    * that only backend ops address (backend.h kv_row_bytes) */
    float *cfr;    /* [cap_c][2*coff*hd] */
    float *icomp;  /* [max_comp] rows of icomp_rb bytes (f32: [max_comp][ihd]) */
    float *ifr;    /* [cap_c][4*ihd] */
    int max_comp;
    int cap_c;
} ds4_layer_state;

/* Per-chunk activations, each sized for `chunk` tokens. */
typedef struct {
    float *H, *H2;        /* [chunk][n_hc][d] */
    float *flat;          /* [chunk][n_hc*d] normalised HC state */
    float *mix;           /* [chunk][mix] */
    float *post, *comb;   /* [chunk][n_hc], [chunk][n_hc*n_hc] */
    float *xin, *x;       /* [chunk][d] */
    float *qr;            /* [chunk][q_lora] */
    float *q;             /* [chunk][n_head*hd] */
    float *kv;            /* [chunk][hd] */
    float *cproj;         /* [chunk][2*cw_max] compressor C | Z */
    float *iproj;         /* [chunk][4*ihd] indexer compressor C | Z */
    float *iq;            /* [chunk][idx_nh*ihd] */
    float *iw;            /* [chunk][idx_nh] */
    float *ao;            /* [chunk][n_head*hd] attention output */
    float *oa;            /* [chunk][groups*o_lora] */
    float *y;             /* [chunk][d] sublayer output */
    float *rlog;          /* [chunk][n_expert] router logits */
    float *xg;            /* [chunk][d] tokens gathered for one expert */
    float *g, *u;         /* [chunk][n_ff] */
    float *dn;            /* [chunk][d] */
    float *score;         /* [max_comp] indexer scores */
    float *logits;        /* [chunk][n_vocab] */
    int32_t *comp_idx_dev; /* [chunk][idx_topk] selected compressed rows (backend memory: topk_dev, indexer_topk) */
    /* host-side */
    int32_t *raw_idx;     /* [n_win] */
    int32_t *comp_idx;    /* [max_comp] */
    int32_t *sel;         /* [chunk][n_used] expert ids */
    float *selw;          /* [chunk][n_used] routing weights */
    float *hrlog;         /* [chunk + 2][n_expert] router logits on host, then the bias row
                           * (forward.c) and the router's top-k scratch row */
    int32_t *etok;        /* [chunk*n_used] token list of one expert */
    float *etw;           /* [chunk*n_used] their weights */
} ds4_scratch;

struct ds4_session {
    ds4_engine *e;
    int ctx, W, chunk;
    int cap_raw;
    /* bytes of one cached compressed row: attention (comp) and indexer (icomp) rows,
     * hd resp. ihd floats, or the backend's compact size (kv_row_bytes) when comp_compact
     * resp. icomp_compact; kv_compact = either (then forward.c does no row arithmetic on
     * them: compress_rows writes them) */
    size_t comp_rb, icomp_rb;
    bool comp_compact, icomp_compact, kv_compact;
    int32_t *tokens;      /* [ctx] the timeline */
    int n_tokens;
    int last_evaluated;
    bool have_logits;
    float *last_logits;   /* [n_vocab] host; stale while dev_logits is set */
    /* the last position's logits row in backend memory, not yet copied to last_logits
     * (NULL: last_logits is current). Read on first use (ds4_session_logits, snapshots),
     * so a caller that only asks for the top-k (ds4_session_top_k) never moves the row. */
    const float *dev_logits;
    float *topk_vals;     /* [n_vocab] host scratch of ds4_session_top_k */
    ds4_layer_state *ls;  /* [n_layer] */
    ds4_progress_cb progress; /* ds4_session_set_progress; may be NULL */
    void *progress_user;
    ds4_scratch s;
};

/* forward.c: evaluates tokens[0..n) at positions n_tokens.. n_tokens+n-1 (n <= chunk),
 * updating the decode state, and advances n_tokens. If all_logits, the logits of every
 * position are produced (passed to cb); else only those of the last position. The last
 * position's logits end in s->last_logits (with cb) or in backend memory at s->dev_logits
 * (without: read lazily). Returns 0 or a negative status. */
int ds4_forward_chunk(ds4_session *s, const int32_t *tokens, int n, bool all_logits, ds4_logits_cb cb, void *user);

/* session.c: 0, or DS4_ERR_ARG with a message naming `what` when n is outside 1..ctx or a
 * token is outside the vocabulary. */
int ds4_session_check_tokens(const ds4_session *s, const int32_t *tokens, int n, const char *what, char *err,
                             size_t errlen);
/* session.c: copies a pending backend logits row (s->dev_logits) into s->last_logits. */
void ds4_session_fetch_logits(const ds4_session *s);

/* engine.c: inverse frequencies (HF semantics, MODEL.md §4.2) for n_rot dims. */
void ds4_rope_inv_freq(float *out, int n_rot, double base, bool yarn, double factor, double beta_fast,
                       double beta_slow, double orig_ctx);

#endif
