/* session.c — ds4_session: one token timeline with its decode state (MODEL.md §12).
 *
 * Owns: allocation of all KV state and scratch at creation (the decode loop allocates
 * nothing), prefix sync (reuse / extend / rewind / rebuild), snapshots to memory, and the
 * memory estimate (computed by the same walk that allocates). Cached compressed rows are
 * f32 or, when the backend says so (backend.h kv_row_bytes), its compact rows: this file
 * sizes, snapshots and checks them by bytes. Must not: contain layer math (forward.c) or
 * know backend internals (the compact byte layout is kv_fmt.h's).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "engine_internal.h"
#include "session_kv.h"

#define SNAP_MAGIC 0x53345344u /* "DS4S" */
/* 2: the header names the layout and byte size of cached compressed rows (f32 or the
 * backend's compact kv_fmt.h rows) and the comp / icomp regions hold n_comp rows of
 * those sizes; a snapshot restores only into a session with the same layout. */
#define SNAP_VERSION 2u

void ds4_session_options_default(ds4_session_options *o) {
    memset(o, 0, sizeof *o);
    o->ctx = 4096;
    o->rewind_window = 1024;
    o->prefill_chunk = 0; /* the backend's: ds4_engine_prefill_chunk */
}

/* Prefill chunk when the caller leaves it at 0: the CPU gains nothing from chunks much
 * larger than its cache-sized matmul batches, while the CUDA backend's batched prefill ops
 * and tensor-core matmuls need thousands of rows to fill the GPU (bench/RESULTS.md, 43-layer
 * q2 on an H200: 3,380 / 3,870 / 4,063 tok/s at chunks of 2048 / 4096 / 8192, for 3.7 /
 * 7.2 / 16.4 GB of session scratch); never more than the context. */
int ds4_engine_prefill_chunk(const ds4_engine *e, int ctx) {
    const int c = strcmp(e->be->name, "cuda") ? 64 : 4096;
    return c < ctx ? c : (ctx > 0 ? ctx : 1);
}

static int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

/* Walks every buffer of a session: with alloc, allocates through the backend (host
 * arrays with calloc); without, only adds up the bytes. Returns 0 or DS4_ERR_NOMEM. */
typedef struct {
    ds4_backend *be;
    bool alloc;
    size_t total;
    bool failed;
} plan;

static void *take(plan *pl, size_t bytes, bool host) {
    pl->total += bytes;
    if (!pl->alloc || pl->failed) return NULL;
    void *p = host ? calloc(1, bytes ? bytes : 1) : pl->be->alloc(pl->be, bytes);
    if (!p) pl->failed = true;
    return p;
}

#define F(n) ((size_t)(n) * sizeof(float))
#define I(n) ((size_t)(n) * sizeof(int32_t))

/* Bytes of one cached compressed row, attention (*rb) and indexer (*irb): the backend's
 * compact size (backend.h kv_row_bytes; hd and n_rot are the same in every layer, so one
 * answer per kind), or hd resp. ihd f32 values when it has none or answers 0. *ca / *ci
 * say which kinds are compact. */
static void kv_rows(const ds4_engine *e, size_t *rb, size_t *irb, bool *ca, bool *ci) {
    const ds4_hparams *hp = &e->model->hp;
    ds4_backend *be = e->be;
    const size_t a = be->kv_row_bytes ? be->kv_row_bytes(be, DS4_KV_ROW_ATTN, hp->head_dim, (int)hp->n_rot) : 0;
    const size_t b = be->kv_row_bytes ? be->kv_row_bytes(be, DS4_KV_ROW_INDEX, hp->idx_head_dim, (int)hp->n_rot) : 0;
    *rb = a ? a : F(hp->head_dim);
    *irb = b ? b : F(hp->idx_head_dim);
    *ca = a != 0;
    *ci = b != 0;
}

/* Bytes of n compressed rows of rb bytes plus one float of slack (a buffer for zero rows
 * is still a distinct allocation, as every other session buffer). */
static size_t rows_bytes(int64_t n, size_t rb) { return (size_t)n * rb + sizeof(float); }

static void walk(ds4_session *s, const ds4_engine *e, const ds4_session_options *o, plan *pl) {
    const ds4_hparams *hp = &e->model->hp;
    const int64_t d = hp->n_embd, h = hp->n_hc, hw = h * d, mw = (2 + h) * h, hd = hp->head_dim;
    const int64_t qd = (int64_t)hp->n_head * hd, ihd = hp->idx_head_dim, inh = hp->idx_n_head;
    const int64_t c = o->prefill_chunk, k = hp->n_expert_used, ne = hp->n_expert, ff = hp->n_ff_exp;
    const int64_t W = o->rewind_window, ctx = o->ctx;
    int64_t max_comp_all = 0;
    kv_rows(e, &s->comp_rb, &s->icomp_rb, &s->comp_compact, &s->icomp_compact);
    s->kv_compact = s->comp_compact || s->icomp_compact;
    s->cap_raw = (int)(hp->n_win + W);
    s->tokens = take(pl, I(ctx), true);
    s->last_logits = take(pl, F(hp->n_vocab), true);
    s->topk_vals = take(pl, F(hp->n_vocab), true);
    s->ls = take(pl, sizeof(ds4_layer_state) * hp->n_layer, true);
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const ds4_layer_weights *L = &e->model->layers[il];
        ds4_layer_state tmp = {0}, *ls = s->ls ? &s->ls[il] : &tmp;
        const int64_t R = L->ratio;
        ls->raw = take(pl, F(s->cap_raw * hd), false);
        if (R) {
            ls->max_comp = (int)(ctx / R);
            ls->cap_c = (int)round_up(W + 2 * R, R);
            if (ls->max_comp > max_comp_all) max_comp_all = ls->max_comp;
            ls->comp = take(pl, rows_bytes(ls->max_comp, s->comp_rb), false);
            ls->cfr = take(pl, F((int64_t)ls->cap_c * 2 * L->coff * hd), false);
            if (L->kind == DS4_ATTN_CSA) {
                ls->icomp = take(pl, rows_bytes(ls->max_comp, s->icomp_rb), false);
                ls->ifr = take(pl, F((int64_t)ls->cap_c * 4 * ihd), false);
            }
        }
    }
    ds4_scratch *sc = &s->s;
    sc->H = take(pl, F(c * hw), false);
    sc->H2 = take(pl, F(c * hw), false);
    sc->flat = take(pl, F(c * hw), false);
    sc->mix = take(pl, F(c * mw), false);
    sc->post = take(pl, F(c * h), false);
    sc->comb = take(pl, F(c * h * h), false);
    sc->xin = take(pl, F(c * d), false);
    sc->x = take(pl, F(c * d), false);
    sc->qr = take(pl, F(c * hp->q_lora_rank), false);
    sc->q = take(pl, F(c * qd), false);
    sc->kv = take(pl, F(c * hd), false);
    sc->cproj = take(pl, F(c * 4 * hd), false);
    sc->iproj = take(pl, F(c * 4 * ihd), false);
    sc->iq = take(pl, F(c * inh * ihd), false);
    sc->iw = take(pl, F(c * inh), false);
    sc->ao = take(pl, F(c * qd), false);
    sc->oa = take(pl, F(c * hp->n_out_group * hp->o_lora_rank), false);
    sc->y = take(pl, F(c * d), false);
    sc->rlog = take(pl, F(c * ne), false);
    sc->xg = take(pl, F(c * k * d), false);
    sc->g = take(pl, F(c * k * ff), false);
    sc->u = take(pl, F(c * k * ff), false);
    sc->dn = take(pl, F(c * k * d), false);
    sc->score = take(pl, F(DS4_MAX(max_comp_all, ne) + 1), false);
    sc->logits = take(pl, F(c * hp->n_vocab), false);
    sc->comp_idx_dev = take(pl, I(c * (int64_t)hp->idx_topk + 1), false);
    sc->raw_idx = take(pl, I(hp->n_win), true);
    sc->comp_idx = take(pl, I(DS4_MAX(max_comp_all, (int64_t)hp->idx_topk) + 1), true);
    sc->sel = take(pl, I(c * k), true);
    sc->selw = take(pl, F(c * k), true);
    sc->hrlog = take(pl, F((c + 2) * ne), true); /* + bias row + router top-k scratch row (host) */
    sc->etok = take(pl, I(c * k), true);
    sc->etw = take(pl, F(c * k), true);
}

static int check_opts(const ds4_engine *e, const ds4_session_options *o, char *err, size_t errlen) {
    if (o->ctx <= 0) return ds4_err(err, errlen, DS4_ERR_ARG, "session: ctx must be > 0 (got %d)", o->ctx);
    /* the bound keeps the raw ring (sliding_window + W rows, an int) from wrapping */
    if (o->rewind_window < 0 || o->rewind_window > (1 << 24))
        return ds4_err(err, errlen, DS4_ERR_ARG, "session: rewind_window must be in 0..%d (got %d)", 1 << 24, o->rewind_window);
    if (o->prefill_chunk <= 0 || o->prefill_chunk > 65536)
        return ds4_err(err, errlen, DS4_ERR_ARG, "session: prefill_chunk must be in 1..65536, or 0 for the backend's default (got %d)", o->prefill_chunk);
    /* compact rows (backend.h kv_row_bytes) are written only by the backend's
     * compress_rows: forward.c's generic compressor sequence writes f32 rows */
    size_t rb, irb;
    bool ca, ci;
    kv_rows(e, &rb, &irb, &ca, &ci);
    if (ca || ci) {
        if (!e->be->compress_rows)
            return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED,
                           "session: backend %s stores compressed KV rows compactly (%zu/%zu bytes) but has no "
                           "compress_rows op to write them", e->be->name, rb, irb);
        if (e->exact)
            return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED,
                           "session: backend %s reports compact KV rows (%zu/%zu bytes) in exact numerics, where "
                           "rows are not FP8/FP4 values", e->be->name, rb, irb);
    }
    return 0;
}

/* Rows a matmul may carry: a whole chunk, or every (token, expert) pair of a chunk. */
static int reserve_tokens(const ds4_engine *e, const ds4_session_options *o) {
    return (int)((int64_t)o->prefill_chunk * e->model->hp.n_expert_used);
}

static void fill_opts(const ds4_engine *e, ds4_session_options *dst, const ds4_session_options *o) {
    ds4_session_options_default(dst);
    if (o) *dst = *o;
    if (dst->prefill_chunk == 0) dst->prefill_chunk = ds4_engine_prefill_chunk(e, dst->ctx);
}

int ds4_engine_memory_estimate(const ds4_engine *e, const ds4_session_options *o, size_t *bytes, char *err,
                               size_t errlen) {
    ds4_session_options oo;
    fill_opts(e, &oo, o);
    int rc = check_opts(e, &oo, err, errlen);
    if (rc < 0) return rc;
    ds4_session tmp;
    memset(&tmp, 0, sizeof tmp);
    plan pl = {NULL, false, sizeof(ds4_session), false};
    walk(&tmp, e, &oo, &pl);
    /* the backend's matmul scratch that ds4_session_create reserves (shared by the
     * engine's sessions; counted in full, as for the first session) */
    if (e->be->reserve_bytes) pl.total += e->be->reserve_bytes(e->be, reserve_tokens(e, &oo), e->max_in);
    *bytes = pl.total;
    return 0;
}

void ds4_session_free(ds4_session *s) {
    if (!s) return;
    ds4_backend *be = s->e->be;
    const ds4_hparams *hp = &s->e->model->hp;
    if (s->ls)
        for (uint32_t il = 0; il < hp->n_layer; il++) {
            ds4_layer_state *ls = &s->ls[il];
            be->release(be, ls->raw);
            be->release(be, ls->comp);
            be->release(be, ls->cfr);
            be->release(be, ls->icomp);
            be->release(be, ls->ifr);
        }
    ds4_scratch *sc = &s->s;
    float *dev[] = {sc->H, sc->H2, sc->flat, sc->mix, sc->post, sc->comb, sc->xin, sc->x, sc->qr, sc->q, sc->kv,
                    sc->cproj, sc->iproj, sc->iq, sc->iw, sc->ao, sc->oa, sc->y, sc->rlog, sc->xg, sc->g, sc->u,
                    sc->dn, sc->score, sc->logits};
    for (size_t i = 0; i < DS4_ARRAY_LEN(dev); i++) be->release(be, dev[i]);
    be->release(be, sc->comp_idx_dev);
    free(sc->raw_idx);
    free(sc->comp_idx);
    free(sc->sel);
    free(sc->selw);
    free(sc->hrlog);
    free(sc->etok);
    free(sc->etw);
    free(s->ls);
    free(s->tokens);
    free(s->last_logits);
    free(s->topk_vals);
    free(s);
}

int ds4_session_create(ds4_session **out, ds4_engine *e, const ds4_session_options *o, char *err, size_t errlen) {
    *out = NULL;
    ds4_session_options oo;
    fill_opts(e, &oo, o);
    int rc = check_opts(e, &oo, err, errlen);
    if (rc < 0) return rc;
    ds4_session *s = calloc(1, sizeof *s);
    if (!s) return ds4_err(err, errlen, DS4_ERR_NOMEM, "session: out of memory");
    s->e = e;
    s->ctx = oo.ctx;
    s->W = oo.rewind_window;
    s->chunk = oo.prefill_chunk;
    plan pl = {e->be, true, 0, false};
    walk(s, e, &oo, &pl);
    if (pl.failed) {
        ds4_session_free(s);
        return ds4_err(err, errlen, DS4_ERR_NOMEM, "session: cannot allocate %zu bytes for ctx %d", pl.total, oo.ctx);
    }
    rc = e->be->reserve(e->be, reserve_tokens(e, &oo), e->max_in, err, errlen);
    if (rc < 0) {
        ds4_session_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int ds4_session_check_tokens(const ds4_session *s, const int32_t *tokens, int n, const char *what, char *err,
                             size_t errlen) {
    const ds4_hparams *hp = &s->e->model->hp;
    if (n <= 0 || n > s->ctx)
        return ds4_err(err, errlen, DS4_ERR_ARG, "%s: %d tokens, the session holds 1..%d", what, n, s->ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= hp->n_vocab)
            return ds4_err(err, errlen, DS4_ERR_ARG, "%s: token %d at position %d is outside the vocabulary (0..%u)",
                           what, tokens[i], i, hp->n_vocab - 1);
    return 0;
}

int ds4_session_sync(ds4_session *s, const int32_t *tokens, int n, ds4_logits_cb cb, void *user, char *err,
                     size_t errlen) {
    s->last_evaluated = 0;
    int rc0 = ds4_session_check_tokens(s, tokens, n, "sync", err, errlen);
    if (rc0 < 0) return rc0;
    int cp = 0;
    while (cp < n && cp < s->n_tokens && s->tokens[cp] == tokens[cp]) cp++;
    if (cp == n && n == s->n_tokens && s->have_logits && !cb) return 0;
    int target = cp < n ? cp : n - 1; /* re-evaluate at least the last token for its logits */
    if (target < s->n_tokens) {
        if (s->n_tokens - target <= s->W) s->n_tokens = target; /* exact: history kept */
        else s->n_tokens = 0;                                    /* rebuild */
    }
    s->have_logits = false;
    const int total = n - s->n_tokens;
    if (s->progress && s->progress(s->progress_user, 0, total))
        return ds4_err(err, errlen, DS4_ERR_CANCELLED, "sync: cancelled at position %d", s->n_tokens);
    while (s->n_tokens < n) {
        int m = n - s->n_tokens;
        if (m > s->chunk) m = s->chunk;
        memcpy(s->tokens + s->n_tokens, tokens + s->n_tokens, (size_t)m * sizeof(int32_t));
        int rc = ds4_forward_chunk(s, tokens + s->n_tokens, m, cb != NULL, cb, user);
        s->last_evaluated += m;
        if (rc < 0) {
            s->have_logits = false;
            return ds4_err(err, errlen, rc, "sync: %s at position %d", rc == DS4_ERR_CANCELLED ? "cancelled" : "failed",
                           s->n_tokens);
        }
        /* Stopping is only offered between chunks: the state is consistent there. */
        if (s->progress && s->progress(s->progress_user, s->last_evaluated, total) && s->n_tokens < n) {
            s->have_logits = false;
            return ds4_err(err, errlen, DS4_ERR_CANCELLED, "sync: cancelled at position %d", s->n_tokens);
        }
    }
    return 0;
}

void ds4_session_set_progress(ds4_session *s, ds4_progress_cb cb, void *user) {
    s->progress = cb;
    s->progress_user = user;
}

void ds4_session_fetch_logits(const ds4_session *s) {
    if (!s->dev_logits) return;
    /* logically const: the row is the same, only its host copy is made on first use */
    ds4_session *m = (ds4_session *)s;
    m->e->be->read(m->e->be, m->last_logits, m->dev_logits, (size_t)m->e->model->hp.n_vocab * sizeof(float));
    m->dev_logits = NULL;
}

const float *ds4_session_logits(const ds4_session *s) {
    if (!s->have_logits) return NULL;
    ds4_session_fetch_logits(s);
    return s->last_logits;
}

/* Selection order of ds4_topk_host: (va, a) ranks before (vb, b) when va > vb, equal
 * values (−0 == +0) by the lower id, NaN after every number. */
static bool ranks_before(float va, int32_t a, float vb, int32_t b) {
    if (va == vb) return a < b;
    if (isnan(vb)) return !isnan(va) || a < b;
    if (isnan(va)) return false;
    return va > vb;
}

/* Orders (ids, vals) best first (heapsort: k may be the whole vocabulary; no allocation). */
static void sort_desc(int32_t *ids, float *vals, int k) {
    /* max-heap on "ranks after": the root is the element that goes last */
#define AFTER(i, j) ranks_before(vals[j], ids[j], vals[i], ids[i])
#define SWAP(i, j)                                                                                     \
    do {                                                                                               \
        const int32_t ti = ids[i];                                                                     \
        const float tv = vals[i];                                                                      \
        ids[i] = ids[j], vals[i] = vals[j], ids[j] = ti, vals[j] = tv;                                  \
    } while (0)
    for (int end = k; end > 1; end--) {
        for (int root = (end == k ? end / 2 - 1 : 0); root >= 0; root--) {
            for (int c = root;;) {
                int l = 2 * c + 1, w = c;
                if (l < end && AFTER(l, w)) w = l;
                if (l + 1 < end && AFTER(l + 1, w)) w = l + 1;
                if (w == c) break;
                SWAP(c, w);
                c = w;
            }
            if (end != k) break; /* after the build, only the root sifts down */
        }
        SWAP(0, end - 1);
    }
#undef AFTER
#undef SWAP
}

int ds4_session_top_k(ds4_session *s, int k, int32_t *ids, float *vals, char *err, size_t errlen) {
    const int nv = (int)s->e->model->hp.n_vocab;
    ds4_backend *be = s->e->be;
    if (!s->have_logits) return ds4_err(err, errlen, DS4_ERR_ARG, "top_k: the session has no logits");
    if (k < 1 || k > nv || !ids) return ds4_err(err, errlen, DS4_ERR_ARG, "top_k: k must be in 1..%d (got %d)", nv, k);
    float *v = vals ? vals : s->topk_vals;
    if (s->dev_logits && be->topk_vals) {
        be->topk_vals(be, s->dev_logits, nv, k, ids, v);
    } else {
        ds4_session_fetch_logits(s);
        ds4_topk_host(s->last_logits, nv, k, ids);
        for (int j = 0; j < k; j++) v[j] = s->last_logits[ids[j]];
    }
    sort_desc(ids, v, k);
    return 0;
}
int ds4_session_n_tokens(const ds4_session *s) { return s->n_tokens; }
int ds4_session_last_evaluated(const ds4_session *s) { return s->last_evaluated; }

/* ---------------------------------------------------------------- snapshots */
typedef struct {
    uint32_t magic, version;
    uint32_t n_layer, n_embd, head_dim, n_vocab;
    uint32_t cap_raw, W;
    int32_t n_tokens, have_logits;
    uint32_t kv_layout;            /* bit 0: attention rows compact, bit 1: indexer rows (else f32) */
    uint32_t comp_rb, icomp_rb;    /* bytes of one attention / indexer compressed row */
} snap_header;

static uint32_t kv_layout(const ds4_session *s) { return (s->comp_compact ? 1u : 0u) | (s->icomp_compact ? 2u : 0u); }

static const char *layout_name(uint32_t l) {
    return l == 0 ? "f32" : l == 3 ? "compact" : l == 1 ? "compact/f32" : l == 2 ? "f32/compact" : "unknown";
}

/* Visits every state region in snapshot order: fn(ctx, backend_ptr, bytes). */
typedef void (*region_fn)(void *ctx, void *p, size_t bytes);

static void regions(const ds4_session *s, int n_tokens, region_fn fn, void *ctx) {
    const ds4_model *m = s->e->model;
    const ds4_hparams *hp = &m->hp;
    const int64_t hd = hp->head_dim, ihd = hp->idx_head_dim;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const ds4_layer_weights *L = &m->layers[il];
        ds4_layer_state *ls = &s->ls[il];
        fn(ctx, ls->raw, F((int64_t)s->cap_raw * hd));
        if (!L->ratio) continue;
        int64_t nc = n_tokens / (int64_t)L->ratio;
        fn(ctx, ls->comp, (size_t)nc * s->comp_rb);
        fn(ctx, ls->cfr, F((int64_t)ls->cap_c * 2 * L->coff * hd));
        if (L->kind == DS4_ATTN_CSA) {
            fn(ctx, ls->icomp, (size_t)nc * s->icomp_rb);
            fn(ctx, ls->ifr, F((int64_t)ls->cap_c * 4 * ihd));
        }
    }
}

static void count_region(void *ctx, void *p, size_t bytes) {
    (void)p;
    *(size_t *)ctx += bytes;
}

size_t ds4_session_snapshot_size(const ds4_session *s) {
    size_t n = sizeof(snap_header) + I(s->n_tokens) + F(s->e->model->hp.n_vocab);
    regions(s, s->n_tokens, count_region, &n);
    return n;
}

typedef struct {
    ds4_backend *be;
    uint8_t *buf;
    size_t off;
    bool write; /* true: snapshot (backend → buf); false: restore (buf → backend) */
} io_ctx;

static void io_region(void *ctx, void *p, size_t bytes) {
    io_ctx *io = ctx;
    if (io->write) io->be->read(io->be, io->buf + io->off, p, bytes);
    else io->be->write(io->be, p, io->buf + io->off, bytes);
    io->off += bytes;
}

int ds4_session_snapshot(const ds4_session *s, void *buf, size_t cap, size_t *written, char *err, size_t errlen) {
    const ds4_hparams *hp = &s->e->model->hp;
    size_t need = ds4_session_snapshot_size(s);
    if (cap < need) return ds4_err(err, errlen, DS4_ERR_ARG, "snapshot: buffer of %zu bytes, need %zu", cap, need);
    snap_header h = {SNAP_MAGIC, SNAP_VERSION, hp->n_layer, hp->n_embd, hp->head_dim, hp->n_vocab,
                     (uint32_t)s->cap_raw, (uint32_t)s->W, s->n_tokens, s->have_logits,
                     kv_layout(s), (uint32_t)s->comp_rb, (uint32_t)s->icomp_rb};
    uint8_t *b = buf;
    memcpy(b, &h, sizeof h);
    size_t off = sizeof h;
    memcpy(b + off, s->tokens, I(s->n_tokens));
    off += I(s->n_tokens);
    ds4_session_fetch_logits(s);
    memcpy(b + off, s->last_logits, F(hp->n_vocab));
    off += F(hp->n_vocab);
    io_ctx io = {s->e->be, b, off, true};
    regions(s, s->n_tokens, io_region, &io);
    *written = io.off;
    return 0;
}

/* The header checks of a restore into s (ds4.h ds4_session_snapshot_check). */
static int check_header(const ds4_session *s, const snap_header *hdr, char *err, size_t errlen) {
    const ds4_hparams *hp = &s->e->model->hp;
    const snap_header h = *hdr;
    if (h.magic != SNAP_MAGIC || h.version != SNAP_VERSION)
        return ds4_err(err, errlen, DS4_ERR_FORMAT, "restore: not a ds4 session snapshot (or another version)");
    if (h.n_layer != hp->n_layer || h.n_embd != hp->n_embd || h.head_dim != hp->head_dim || h.n_vocab != hp->n_vocab)
        return ds4_err(err, errlen, DS4_ERR_FORMAT, "restore: snapshot is for another model");
    if (h.kv_layout != kv_layout(s) || h.comp_rb != s->comp_rb || h.icomp_rb != s->icomp_rb)
        return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED,
                       "restore: snapshot KV rows are %u/%u bytes (%s), this session stores %zu/%zu (%s): made by "
                       "a backend with another KV layout",
                       h.comp_rb, h.icomp_rb, layout_name(h.kv_layout), s->comp_rb, s->icomp_rb,
                       layout_name(kv_layout(s)));
    if (h.cap_raw != (uint32_t)s->cap_raw || h.W != (uint32_t)s->W)
        return ds4_err(err, errlen, DS4_ERR_ARG, "restore: snapshot rewind window %u differs from the session's %d", h.W, s->W);
    if (h.n_tokens < 0 || h.n_tokens > s->ctx)
        return ds4_err(err, errlen, DS4_ERR_ARG, "restore: snapshot holds %d tokens, session ctx is %d", h.n_tokens, s->ctx);
    return 0;
}

size_t ds4_session_snapshot_header_bytes(void) { return sizeof(snap_header); }

int ds4_session_snapshot_check(const ds4_session *s, const void *buf, size_t n, char *err, size_t errlen) {
    snap_header h;
    if (n < sizeof h) return ds4_err(err, errlen, DS4_ERR_FORMAT, "restore: snapshot truncated (%zu bytes)", n);
    memcpy(&h, buf, sizeof h);
    return check_header(s, &h, err, errlen);
}

int ds4_session_restore(ds4_session *s, const void *buf, size_t n, char *err, size_t errlen) {
    const ds4_hparams *hp = &s->e->model->hp;
    snap_header h;
    if (n < sizeof h) return ds4_err(err, errlen, DS4_ERR_FORMAT, "restore: snapshot truncated (%zu bytes)", n);
    memcpy(&h, buf, sizeof h);
    int rc = check_header(s, &h, err, errlen);
    if (rc < 0) return rc;
    size_t need = sizeof h + I(h.n_tokens) + F(hp->n_vocab);
    regions(s, h.n_tokens, count_region, &need);
    if (n < need) return ds4_err(err, errlen, DS4_ERR_FORMAT, "restore: snapshot truncated (%zu of %zu bytes)", n, need);
    const uint8_t *b = buf;
    size_t off = sizeof h;
    for (int i = 0; i < h.n_tokens; i++) {
        int32_t t;
        memcpy(&t, b + off + I(i), sizeof t);
        if (t < 0 || (uint32_t)t >= hp->n_vocab) return ds4_err(err, errlen, DS4_ERR_FORMAT, "restore: bad token id in snapshot");
    }
    memcpy(s->tokens, b + off, I(h.n_tokens));
    off += I(h.n_tokens);
    memcpy(s->last_logits, b + off, F(hp->n_vocab));
    off += F(hp->n_vocab);
    io_ctx io = {s->e->be, (uint8_t *)b, off, false};
    regions(s, h.n_tokens, io_region, &io);
    s->n_tokens = h.n_tokens;
    s->have_logits = h.have_logits && h.n_tokens > 0;
    s->dev_logits = NULL;
    s->last_evaluated = 0;
    return 0;
}

double ds4_session_kv_bytes_per_token(const ds4_session *s) {
    const ds4_model *m = s->e->model;
    double b = 0;
    for (uint32_t il = 0; il < m->hp.n_layer; il++) {
        const ds4_layer_weights *L = &m->layers[il];
        if (!L->ratio) continue;
        const size_t rb = s->comp_rb + (L->kind == DS4_ATTN_CSA ? s->icomp_rb : 0);
        b += (double)rb / (double)L->ratio;
    }
    return b;
}
