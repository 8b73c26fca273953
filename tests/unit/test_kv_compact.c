/* test_kv_compact.c — the engine side of compact KV rows (backend.h kv_row_bytes,
 * kv_fmt.h) on the CPU, with no GPU: a test-only backend that wraps the CPU backend and
 * keeps cached compressed rows in the kv_fmt.h layout in production numerics.
 *
 * Owns: the wrapper backend and the cases that compare it with the plain CPU backend:
 * prefill, decode and rewind give bit-identical logits (the layout is lossless on
 * production rows, so any difference is a plumbing bug: a row addressed in floats, a
 * region sized for f32, a generic compressor write into compact memory); snapshots are
 * smaller by exactly the bytes the row sizes predict (computed here by hand from the test
 * model's shape, not from the code under test); a compact snapshot restores and continues
 * exactly; a snapshot of the other layout is refused with both layouts named; a backend
 * with compact rows and no compress_rows (or compact rows in exact numerics) gets no
 * session; the synthetic fill writes compact rows and nothing past them; the disk KV
 * cache treats a file of the other layout as a miss.
 *
 * The wrapper: a ds4_backend whose first member is a copy of the CPU backend's struct
 * (same impl, so every forwarded op is the CPU's own function), plus
 *  - kv_row_bytes: kv_fmt.h sizes in production numerics, 0 (f32) in exact;
 *  - compress_rows: the op sequence backend.h names (compress_pool, rmsnorm, rope,
 *    fp8_sim or hadamard_fp4_sim, round_f16) on an f32 temp row, then encoded;
 *  - attention / indexer_scores: the referenced compact rows decoded into f32 temps,
 *    then the CPU op. All temps are allocated with the wrapper (the decode loop
 *    allocates nothing).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ds4.h"
#include "ds4_kvstore.h"
#include "backend/backend.h"
#include "backend/kv_fmt.h"
#include "core/common.h"
#include "engine/engine_internal.h"
#include "engine/session_fill.h"
#include "engine/session_kv.h"
#include "kvstore/kvstore_internal.h"
#include "model/layout.h"
#include "model/synthetic.h"
#include "test.h"
#include "test_engine_model.h"

/* ---------------------------------------------------------------- the wrapper backend */
typedef struct {
    ds4_backend be;      /* must be first: the engine's backend (impl = the CPU's) */
    ds4_backend *cpu;    /* the wrapped CPU backend; owns impl */
    int n_rot;           /* rope dims of attention rows (the model's) */
    int64_t cap_rows, cap_w;
    float *rows;         /* [cap_rows][cap_w] decoded rows */
    int32_t *idx;        /* [cap_rows] 0, 1, 2, ... */
    float *tmp;          /* [cap_w] one pooled row */
    long n_compress, n_attn_rows, n_score_calls;
} kvw;

static bool kvw_compact(const ds4_backend *be) { return be->numerics == DS4_NUM_PROD; }

static size_t kvw_row_bytes(ds4_backend *be, int kind, int64_t hd, int n_rot) {
    if (!kvw_compact(be)) return 0;
    return kind == DS4_KV_ROW_ATTN ? ds4_kv_attn_row_bytes(hd, n_rot) : ds4_kv_index_row_bytes(hd);
}

/* A backend that claims compact rows even in exact numerics (refused by the session). */
static size_t kvw_row_bytes_always(ds4_backend *be, int kind, int64_t hd, int n_rot) {
    (void)be;
    return kind == DS4_KV_ROW_ATTN ? ds4_kv_attn_row_bytes(hd, n_rot) : ds4_kv_index_row_bytes(hd);
}

static void kvw_compress_rows(ds4_backend *be, const float *ring, int cap, int R, int coff, int64_t hd,
                              const float *norm, double eps, int n_rot, const float *inv_freq, bool prod,
                              bool indexer, int64_t w0, int64_t w1, float *rows) {
    kvw *w = (kvw *)be;
    const int64_t rw = 2 * coff * hd;
    DS4_ASSERT(hd <= w->cap_w);
    const bool compact = be->kv_row_bytes && kvw_row_bytes(be, indexer, hd, n_rot) > 0;
    for (int64_t win = w0; win < w1; win++) {
        const float *cur = ring + ((win * R) % cap) * rw;
        const float *prev = coff == 2 && win > 0 ? ring + (((win - 1) * R) % cap) * rw : NULL;
        float *out = w->tmp;
        be->compress_pool(be, cur, prev, rw, R, coff, hd, out);
        be->rmsnorm(be, out, hd, norm, out, hd, hd, 1, eps);
        be->rope(be, out, hd, 1, hd, n_rot, win * R, inv_freq, false);
        if (prod) {
            if (indexer) be->hadamard_fp4_sim(be, out, hd, 1, hd);
            else be->fp8_sim(be, out, hd, 1, hd - n_rot);
            be->round_f16(be, out, hd);
        }
        if (!compact) {
            memcpy(rows + win * hd, out, sizeof(float) * (size_t)hd);
        } else if (indexer) {
            ds4_kv_index_encode(out, hd, (uint8_t *)rows + (size_t)win * ds4_kv_index_row_bytes(hd));
        } else {
            ds4_kv_attn_encode(out, hd, n_rot, (uint8_t *)rows + (size_t)win * ds4_kv_attn_row_bytes(hd, n_rot));
        }
        w->n_compress++;
    }
}

static void kvw_attention(ds4_backend *be, const float *q, int n_head, int64_t hd, const float *rows_a,
                          const int32_t *ia, int na, const float *rows_b, const int32_t *ib, int nb,
                          const float *sinks, float scale, float *out) {
    kvw *w = (kvw *)be;
    if (!kvw_compact(be) || nb == 0) {
        w->cpu->attention(be, q, n_head, hd, rows_a, ia, na, rows_b, ib, nb, sinks, scale, out);
        return;
    }
    DS4_ASSERT(nb <= w->cap_rows && hd <= w->cap_w);
    const size_t rb = ds4_kv_attn_row_bytes(hd, w->n_rot);
    for (int j = 0; j < nb; j++)
        ds4_kv_attn_decode((const uint8_t *)rows_b + (size_t)ib[j] * rb, hd, w->n_rot, w->rows + (int64_t)j * hd);
    w->n_attn_rows += nb;
    w->cpu->attention(be, q, n_head, hd, rows_a, ia, na, w->rows, w->idx, nb, sinks, scale, out);
}

static void kvw_indexer_scores(ds4_backend *be, const float *q, const float *wt, float scale, int n_head, int64_t hd,
                               const float *keys, int n_keys, float *score) {
    kvw *w = (kvw *)be;
    if (!kvw_compact(be)) {
        w->cpu->indexer_scores(be, q, wt, scale, n_head, hd, keys, n_keys, score);
        return;
    }
    DS4_ASSERT(n_keys <= w->cap_rows && hd <= w->cap_w);
    const size_t rb = ds4_kv_index_row_bytes(hd);
    for (int c = 0; c < n_keys; c++)
        ds4_kv_index_decode((const uint8_t *)keys + (size_t)c * rb, hd, w->rows + (int64_t)c * hd);
    w->n_score_calls++;
    w->cpu->indexer_scores(be, q, wt, scale, n_head, hd, w->rows, n_keys, score);
}

static void kvw_free(ds4_backend *be) {
    kvw *w = (kvw *)be;
    free(w->rows);
    free(w->idx);
    free(w->tmp);
    w->cpu->free(w->cpu);
    free(w);
}

typedef enum { KVW_FULL, KVW_NO_COMPRESS_ROWS, KVW_ALWAYS_COMPACT } kvw_variant;

/* Replaces e's CPU backend with the wrapper (which takes it over); cap_rows: the most
 * compressed rows one op may reference (>= ctx / the smallest ratio). */
static kvw *kvw_install(ds4_engine *e, int64_t cap_rows, kvw_variant v) {
    const ds4_hparams *hp = &e->model->hp;
    kvw *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->cap_rows = cap_rows;
    w->cap_w = DS4_MAX((int64_t)hp->head_dim, (int64_t)hp->idx_head_dim);
    w->rows = malloc(sizeof(float) * (size_t)(cap_rows * w->cap_w));
    w->idx = malloc(sizeof(int32_t) * (size_t)cap_rows);
    w->tmp = malloc(sizeof(float) * (size_t)w->cap_w);
    if (!w->rows || !w->idx || !w->tmp) {
        free(w->rows);
        free(w->idx);
        free(w->tmp);
        free(w);
        return NULL;
    }
    for (int64_t i = 0; i < cap_rows; i++) w->idx[i] = (int32_t)i;
    w->n_rot = (int)hp->n_rot;
    w->cpu = e->be;
    w->be = *e->be;
    w->be.name = "cpu-kv-compact";
    w->be.free = kvw_free;
    w->be.kv_row_bytes = v == KVW_ALWAYS_COMPACT ? kvw_row_bytes_always : kvw_row_bytes;
    w->be.compress_rows = v == KVW_NO_COMPRESS_ROWS ? NULL : kvw_compress_rows;
    w->be.attention = kvw_attention;
    w->be.indexer_scores = kvw_indexer_scores;
    e->be = &w->be;
    return w;
}

/* ---------------------------------------------------------------- helpers */
static const char *tm_path(void) {
    static char p[512];
    if (!p[0]) {
        char err[256];
        snprintf(p, sizeof p, "%s/tm_kvcompact.gguf", ds4_test_tmpdir());
        tm_opts o;
        tm_default(&o);
        if (tm_write(&o, p, err, sizeof err) < 0) {
            fprintf(stderr, "tm_write: %s\n", err);
            p[0] = 0;
            return NULL;
        }
    }
    return p;
}

typedef struct {
    float *all; /* [n][nv] */
    int nv;
} collect;

static int collect_cb(void *user, int pos, const float *lg, int nv) {
    collect *c = user;
    memcpy(c->all + (size_t)pos * (size_t)nv, lg, sizeof(float) * (size_t)nv);
    return 0;
}

static void seq(int32_t *t, int n, unsigned seed, int nv) {
    for (int i = 0; i < n; i++) t[i] = (int32_t)((i * 37u + seed * 11u + (i * i) % 7u) % (unsigned)nv);
}

static bool same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, sizeof(float) * n) == 0; }

static uint8_t *snap_of(ds4_session *s, size_t *n) {
    char err[256];
    *n = ds4_session_snapshot_size(s);
    uint8_t *b = malloc(*n);
    size_t w = 0;
    if (b && ds4_session_snapshot(s, b, *n, &w, err, sizeof err) < 0) {
        fprintf(stderr, "snapshot: %s\n", err);
        free(b);
        return NULL;
    }
    return b;
}

/* The tiny test model (test_engine_model.h): head_dim 32 with 16 rope dims, indexer
 * head_dim 16; layer 1 CSA ratio 4, layer 2 HCA ratio 8, layer 3 CSA ratio 8. Row sizes
 * by kv_fmt.h's layout comment, by hand: attention 2·16 + 16 codes + 1 scale = 49 → 64
 * bytes (f32: 128); indexer 8 nibble bytes + 1 scale = 9 → 16 bytes (f32: 64). */
enum { TM_ATTN_F32 = 128, TM_ATTN_C = 64, TM_IDX_F32 = 64, TM_IDX_C = 16 };

/* Bytes the compact layout saves for n tokens (rows n / R per compressed layer). */
static size_t tm_saving(int n) {
    const int csa4 = n / 4, hca8 = n / 8, csa8 = n / 8;
    return (size_t)(csa4 + hca8 + csa8) * (TM_ATTN_F32 - TM_ATTN_C) + (size_t)(csa4 + csa8) * (TM_IDX_F32 - TM_IDX_C);
}

/* ---------------------------------------------------------------- cases */

/* Prefill (chunks of 16, logits of every position), single-token decode, and a rewind
 * within W that reopens compressed windows: the compact-row engine's logits are the plain
 * CPU engine's, bit for bit, with the indexer's top-k selection active (ratio-4 rows
 * beyond top-k 3 from position 15 on) and every compact path taken. */
DS4_TEST(kv_compact_engine_matches_f32_rows) {
    const char *p = tm_path();
    REQUIRE(p != NULL);
    ds4_engine *ea = tm_open_cpu(p, false), *eb = tm_open_cpu(p, false);
    REQUIRE(ea && eb);
    kvw *w = kvw_install(eb, 256, KVW_FULL);
    REQUIRE(w != NULL);
    enum { N = 70, D = 12, CTX = 100 };
    ds4_session_options so;
    ds4_session_options_default(&so);
    so.ctx = CTX;
    so.rewind_window = 16;
    so.prefill_chunk = 16;
    char err[256];
    ds4_session *sa = NULL, *sb = NULL;
    REQUIRE(ds4_session_create(&sa, ea, &so, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_create(&sb, eb, &so, err, sizeof err) == 0, "%s", err);
    int32_t tok[CTX];
    seq(tok, CTX, 3, TM_VOCAB);
    collect ca = {calloc((size_t)N * TM_VOCAB, sizeof(float)), TM_VOCAB};
    collect cb = {calloc((size_t)N * TM_VOCAB, sizeof(float)), TM_VOCAB};
    REQUIRE(ca.all && cb.all);
    REQUIRE(ds4_session_sync(sa, tok, N, collect_cb, &ca, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_sync(sb, tok, N, collect_cb, &cb, err, sizeof err) == 0, "%s", err);
    int first_bad = -1;
    for (int t = 0; t < N && first_bad < 0; t++)
        if (!same_bits(ca.all + (size_t)t * TM_VOCAB, cb.all + (size_t)t * TM_VOCAB, TM_VOCAB)) first_bad = t;
    CHECK(first_bad < 0, "prefill logits differ from position %d", first_bad);
    for (int n = N + 1; n <= N + D; n++) {
        REQUIRE(ds4_session_sync(sa, tok, n, NULL, NULL, err, sizeof err) == 0, "%s", err);
        REQUIRE(ds4_session_sync(sb, tok, n, NULL, NULL, err, sizeof err) == 0, "%s", err);
        CHECK(same_bits(ds4_session_logits(sa), ds4_session_logits(sb), TM_VOCAB), "decode logits differ at %d", n);
    }
    /* rewind by 10 (within W) and diverge */
    int32_t alt[CTX];
    memcpy(alt, tok, sizeof alt);
    for (int i = N + D - 10; i < CTX; i++) alt[i] = (alt[i] * 5 + 1) % TM_VOCAB;
    REQUIRE(ds4_session_sync(sa, alt, N + D + 4, NULL, NULL, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_sync(sb, alt, N + D + 4, NULL, NULL, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(ds4_session_last_evaluated(sb), 14);
    CHECK(same_bits(ds4_session_logits(sa), ds4_session_logits(sb), TM_VOCAB), "logits differ after a rewind");
    /* every compact path ran: rows written by compress_rows, decoded for attention and
     * for the indexer's scores (the top-k path) */
    CHECK(w->n_compress > 0 && w->n_attn_rows > 0 && w->n_score_calls > 0, "compress %ld, attention rows %ld, scores %ld",
          w->n_compress, w->n_attn_rows, w->n_score_calls);
    /* the logits are not trivially equal: the compact engine really is another backend */
    CHECK(strcmp(ds4_engine_backend_name(eb), "cpu-kv-compact") == 0);
    free(ca.all);
    free(cb.all);
    ds4_session_free(sa);
    ds4_session_free(sb);
    ds4_engine_close(ea);
    ds4_engine_close(eb);
}

/* Sizes: snapshot and memory estimate smaller by the bytes the hand-computed row sizes
 * predict; KV bytes per token of context; snapshot → restore → continue is exact; the
 * other layout's snapshot is refused with both layouts named, both ways. */
DS4_TEST(kv_compact_snapshot_sizes_restore_and_layout_check) {
    const char *p = tm_path();
    REQUIRE(p != NULL);
    ds4_engine *ea = tm_open_cpu(p, false), *eb = tm_open_cpu(p, false);
    REQUIRE(ea && eb);
    REQUIRE(kvw_install(eb, 256, KVW_FULL) != NULL);
    enum { N = 80, CTX = 100 };
    ds4_session_options so;
    ds4_session_options_default(&so);
    so.ctx = CTX;
    so.rewind_window = 16;
    char err[256];
    size_t est_a = 0, est_b = 0;
    REQUIRE(ds4_engine_memory_estimate(ea, &so, &est_a, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_engine_memory_estimate(eb, &so, &est_b, err, sizeof err) == 0, "%s", err);
    /* allocated rows: ctx / R = 25, 12, 12 */
    const size_t est_saving = (size_t)(25 + 12 + 12) * (TM_ATTN_F32 - TM_ATTN_C) + (size_t)(25 + 12) * (TM_IDX_F32 - TM_IDX_C);
    CHECK(est_a - est_b == est_saving, "estimate %zu - %zu != %zu", est_a, est_b, est_saving);

    ds4_session *sa = NULL, *sb = NULL, *rb = NULL, *ra = NULL;
    REQUIRE(ds4_session_create(&sa, ea, &so, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_create(&sb, eb, &so, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_create(&rb, eb, &so, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_create(&ra, ea, &so, err, sizeof err) == 0, "%s", err);
    /* per token: f32 128/4 + 128/8 + 128/8 + 64/4 + 64/8 = 88; compact 64·½ + 16·⅜ = 38 */
    CHECK(ds4_session_kv_bytes_per_token(sa) == 88.0, "%g", ds4_session_kv_bytes_per_token(sa));
    CHECK(ds4_session_kv_bytes_per_token(sb) == 38.0, "%g", ds4_session_kv_bytes_per_token(sb));
    int32_t tok[CTX];
    seq(tok, CTX, 5, TM_VOCAB);
    REQUIRE(ds4_session_sync(sa, tok, N, NULL, NULL, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_sync(sb, tok, N, NULL, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(same_bits(ds4_session_logits(sa), ds4_session_logits(sb), TM_VOCAB));
    size_t na = 0, nb = 0;
    uint8_t *snap_a = snap_of(sa, &na), *snap_b = snap_of(sb, &nb);
    REQUIRE(snap_a && snap_b);
    CHECK(na - nb == tm_saving(N), "snapshot %zu - %zu != %zu", na, nb, tm_saving(N));
    CHECK_EQ_INT(tm_saving(N), 4000);

    /* restore the compact snapshot into a fresh compact session and continue both */
    REQUIRE(ds4_session_restore(rb, snap_b, nb, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(ds4_session_n_tokens(rb), N);
    for (int n = N + 1; n <= CTX; n++) {
        REQUIRE(ds4_session_sync(sa, tok, n, NULL, NULL, err, sizeof err) == 0, "%s", err);
        REQUIRE(ds4_session_sync(rb, tok, n, NULL, NULL, err, sizeof err) == 0, "%s", err);
        CHECK_EQ_INT(ds4_session_last_evaluated(rb), 1);
        CHECK(same_bits(ds4_session_logits(sa), ds4_session_logits(rb), TM_VOCAB), "restored compact timeline differs at %d", n);
    }
    /* layouts do not mix: f32 snapshot into a compact session and vice versa */
    err[0] = 0;
    CHECK(ds4_session_restore(rb, snap_a, na, err, sizeof err) == DS4_ERR_UNSUPPORTED);
    CHECK(strstr(err, "128/64 bytes (f32)") && strstr(err, "64/16 (compact)"), "message: %s", err);
    err[0] = 0;
    CHECK(ds4_session_restore(ra, snap_b, nb, err, sizeof err) == DS4_ERR_UNSUPPORTED);
    CHECK(strstr(err, "64/16 bytes (compact)") && strstr(err, "128/64 (f32)"), "message: %s", err);
    CHECK_EQ_INT(ds4_session_n_tokens(ra), 0);
    /* the header-only check gives restore's verdicts from the header's bytes alone */
    const size_t hb = ds4_session_snapshot_header_bytes();
    CHECK(hb > 0 && hb < na && hb < nb);
    CHECK(ds4_session_snapshot_check(rb, snap_b, hb, err, sizeof err) == 0, "%s", err);
    CHECK(ds4_session_snapshot_check(ra, snap_a, hb, err, sizeof err) == 0, "%s", err);
    err[0] = 0;
    CHECK(ds4_session_snapshot_check(rb, snap_a, hb, err, sizeof err) == DS4_ERR_UNSUPPORTED);
    CHECK(strstr(err, "128/64 bytes (f32)") && strstr(err, "64/16 (compact)"), "message: %s", err);
    CHECK(ds4_session_snapshot_check(ra, snap_b, hb, err, sizeof err) == DS4_ERR_UNSUPPORTED);
    CHECK(ds4_session_snapshot_check(ra, snap_a, hb - 1, err, sizeof err) == DS4_ERR_FORMAT);
    snap_a[0] ^= 1; /* the magic */
    CHECK(ds4_session_snapshot_check(ra, snap_a, hb, err, sizeof err) == DS4_ERR_FORMAT);
    snap_a[0] ^= 1;
    /* a refused restore left the compact session as it was */
    CHECK_EQ_INT(ds4_session_n_tokens(rb), CTX);
    free(snap_a);
    free(snap_b);
    ds4_session_free(sa);
    ds4_session_free(sb);
    ds4_session_free(ra);
    ds4_session_free(rb);
    ds4_engine_close(ea);
    ds4_engine_close(eb);
}

/* A backend with compact rows but no compress_rows, or compact rows in exact numerics,
 * gets no session (nor a memory estimate), with a message saying why. The wrapper in exact
 * numerics keeps f32 rows and matches the plain CPU. */
DS4_TEST(kv_compact_refusals_and_exact_numerics) {
    const char *p = tm_path();
    REQUIRE(p != NULL);
    ds4_session_options so;
    ds4_session_options_default(&so);
    so.ctx = 64;
    so.rewind_window = 8;
    char err[256];
    size_t est = 0;
    ds4_session *s = NULL;

    ds4_engine *e = tm_open_cpu(p, false);
    REQUIRE(e != NULL);
    REQUIRE(kvw_install(e, 256, KVW_NO_COMPRESS_ROWS) != NULL);
    err[0] = 0;
    CHECK(ds4_session_create(&s, e, &so, err, sizeof err) == DS4_ERR_UNSUPPORTED && s == NULL);
    CHECK(strstr(err, "compress_rows") != NULL, "message: %s", err);
    CHECK(ds4_engine_memory_estimate(e, &so, &est, err, sizeof err) == DS4_ERR_UNSUPPORTED);
    ds4_engine_close(e);

    e = tm_open_cpu(p, true);
    REQUIRE(e != NULL);
    REQUIRE(kvw_install(e, 256, KVW_ALWAYS_COMPACT) != NULL);
    err[0] = 0;
    CHECK(ds4_session_create(&s, e, &so, err, sizeof err) == DS4_ERR_UNSUPPORTED && s == NULL);
    CHECK(strstr(err, "exact") != NULL, "message: %s", err);
    ds4_engine_close(e);

    /* exact numerics: the wrapper answers 0 (f32 rows) and still runs its compress_rows */
    ds4_engine *ea = tm_open_cpu(p, true), *eb = tm_open_cpu(p, true);
    REQUIRE(ea && eb);
    kvw *w = kvw_install(eb, 256, KVW_FULL);
    REQUIRE(w != NULL);
    ds4_session *sa = NULL, *sb = NULL;
    REQUIRE(ds4_session_create(&sa, ea, &so, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_create(&sb, eb, &so, err, sizeof err) == 0, "%s", err);
    int32_t tok[40];
    seq(tok, 40, 8, TM_VOCAB);
    REQUIRE(ds4_session_sync(sa, tok, 40, NULL, NULL, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_sync(sb, tok, 40, NULL, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(same_bits(ds4_session_logits(sa), ds4_session_logits(sb), TM_VOCAB));
    CHECK(w->n_compress > 0);
    CHECK_EQ_INT(ds4_session_snapshot_size(sa), ds4_session_snapshot_size(sb));
    ds4_session_free(sa);
    ds4_session_free(sb);
    ds4_engine_close(ea);
    ds4_engine_close(eb);
}

/* ds4_session_fill_synthetic on compact rows: each filled row decodes to values within the
 * fill's U(−1, 1) range (f32 bytes read as FP8 codes, scales and f16 would not) that
 * re-encode to themselves; the bytes after the filled rows are untouched (an f32-sized
 * fill would write 2–4× past them); decode after the fill runs. */
DS4_TEST(kv_compact_fill_writes_compact_rows) {
    const char *p = tm_path();
    REQUIRE(p != NULL);
    ds4_engine *e = tm_open_cpu(p, false);
    REQUIRE(e != NULL);
    REQUIRE(kvw_install(e, 256, KVW_FULL) != NULL);
    ds4_session_options so;
    ds4_session_options_default(&so);
    so.ctx = 100;
    so.rewind_window = 16;
    char err[256];
    ds4_session *s = NULL;
    REQUIRE(ds4_session_create(&s, e, &so, err, sizeof err) == 0, "%s", err);
    int32_t tok[100];
    seq(tok, 100, 2, TM_VOCAB);
    enum { N = 60 };
    REQUIRE(ds4_session_fill_synthetic(s, tok, N, 3, err, sizeof err) == 0, "%s", err);
    /* layer 1: CSA ratio 4 → 15 attention rows of 64 bytes, 15 indexer rows of 16 bytes,
     * in buffers of 25 rows */
    const ds4_layer_state *ls = &s->ls[1];
    REQUIRE(ls->comp && ls->icomp && ls->max_comp == 25);
    const uint8_t *ca = (const uint8_t *)ls->comp, *ci = (const uint8_t *)ls->icomp;
    float x[32], y[32];
    uint8_t re[64];
    int bad = 0, out_of_range = 0, nonzero_after = 0, nonzero = 0;
    for (int r = 0; r < N / 4; r++) {
        ds4_kv_attn_decode(ca + r * TM_ATTN_C, 32, 16, x);
        for (int i = 0; i < 32; i++) out_of_range += !(fabsf(x[i]) <= 1.0f), nonzero += x[i] != 0;
        ds4_kv_attn_encode(x, 32, 16, re);
        ds4_kv_attn_decode(re, 32, 16, y);
        bad += memcmp(x, y, sizeof(float) * 32) != 0;
        ds4_kv_index_decode(ci + r * TM_IDX_C, 16, x);
        for (int i = 0; i < 16; i++) out_of_range += !(fabsf(x[i]) <= 1.0f), nonzero += x[i] != 0;
        ds4_kv_index_encode(x, 16, re);
        ds4_kv_index_decode(re, 16, y);
        bad += memcmp(x, y, sizeof(float) * 16) != 0;
    }
    CHECK(nonzero > (N / 4) * 40, "only %d nonzero values in the filled rows", nonzero);
    for (size_t i = (size_t)(N / 4) * TM_ATTN_C; i < (size_t)25 * TM_ATTN_C; i++) nonzero_after += ca[i] != 0;
    for (size_t i = (size_t)(N / 4) * TM_IDX_C; i < (size_t)25 * TM_IDX_C; i++) nonzero_after += ci[i] != 0;
    CHECK(bad == 0, "%d filled rows do not hold grid values (re-encoding changes them)", bad);
    CHECK(out_of_range == 0, "%d filled values outside [-1, 1]", out_of_range);
    CHECK(nonzero_after == 0, "%d bytes written after the filled rows", nonzero_after);
    REQUIRE(ds4_session_sync(s, tok, N + 5, NULL, NULL, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(ds4_session_last_evaluated(s), 5);
    int finite = 1;
    for (int i = 0; i < TM_VOCAB; i++) finite &= isfinite(ds4_session_logits(s)[i]) != 0;
    CHECK(finite, "nonfinite logits after a compact fill");
    ds4_session_free(s);
    ds4_engine_close(e);
}

/* Flash's layer schedule at tiny widths (synthetic tiny: sliding, sliding, CSA ratio 4 with
 * top-k 16, HCA ratio 128; head_dim 64 with 32 rope dims, indexer head_dim 64; q2 recipe):
 * 300 tokens of prefill (2 ratio-128 rows, 75 ratio-4 rows, the indexer selecting from
 * position 67 on) and 4 decode steps, compact vs plain CPU: bit-identical logits; the
 * snapshot is smaller by what the hand-computed row sizes give. */
DS4_TEST(kv_compact_synthetic_flash_schedule) {
    ds4_synth_opts so = {.shape = "tiny", .recipe = ds4_recipe_parse("q2"), .layers = 4, .vocab = 512, .seed = 9,
                         .threads = 2};
    REQUIRE(so.recipe >= 0);
    uint8_t *buf = NULL;
    size_t size = 0;
    char err[512];
    REQUIRE(ds4_synth_build(&so, &buf, &size, NULL, err, sizeof err) == 0, "%s", err);
    ds4_engine_options eo;
    ds4_engine_options_default(&eo);
    eo.n_threads = 2;
    eo.backend = DS4_BACKEND_CPU;
    ds4_engine *ea = NULL, *eb = NULL;
    REQUIRE(ds4_engine_open_buffer(&ea, buf, size, &eo, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_engine_open_buffer(&eb, buf, size, &eo, err, sizeof err) == 0, "%s", err);
    kvw *w = kvw_install(eb, 512, KVW_FULL);
    REQUIRE(w != NULL);
    const ds4_hparams *hp = &eb->model->hp;
    REQUIRE(hp->head_dim == 64 && hp->n_rot == 32 && hp->idx_head_dim == 64 && hp->idx_topk == 16);
    REQUIRE(eb->model->layers[2].ratio == 4 && eb->model->layers[3].ratio == 128);
    enum { N = 300, D = 4, CTX = 320 };
    ds4_session_options o;
    ds4_session_options_default(&o);
    o.ctx = CTX;
    o.rewind_window = 32;
    ds4_session *sa = NULL, *sb = NULL;
    REQUIRE(ds4_session_create(&sa, ea, &o, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_create(&sb, eb, &o, err, sizeof err) == 0, "%s", err);
    int32_t tok[CTX];
    seq(tok, CTX, 1, 512);
    for (int n = N; n <= N + D; n++) {
        REQUIRE(ds4_session_sync(sa, tok, n, NULL, NULL, err, sizeof err) == 0, "%s", err);
        REQUIRE(ds4_session_sync(sb, tok, n, NULL, NULL, err, sizeof err) == 0, "%s", err);
        CHECK(same_bits(ds4_session_logits(sa), ds4_session_logits(sb), 512), "logits differ at %d tokens", n);
    }
    CHECK(w->n_score_calls > 0 && w->n_attn_rows > 0);
    /* 304 tokens: 76 ratio-4 rows, 2 ratio-128 rows. Attention row: 32 rope dims · 2 B + 32
     * codes + 1 scale = 97 → 112 bytes (f32 256); indexer: 32 nibble bytes + 2 scales = 34
     * → 48 bytes (f32 256) */
    const size_t want = (size_t)(76 + 2) * (256 - 112) + (size_t)76 * (256 - 48);
    CHECK(ds4_session_snapshot_size(sa) - ds4_session_snapshot_size(sb) == want, "%zu - %zu != %zu",
          ds4_session_snapshot_size(sa), ds4_session_snapshot_size(sb), want);
    ds4_session_free(sa);
    ds4_session_free(sb);
    ds4_engine_close(ea);
    ds4_engine_close(eb);
    ds4_synth_free(buf, size);
}

/* The disk KV cache across layouts (a directory shared by a CPU and a compact-row
 * process, or a /save file moved between them): a file of the other layout is a miss
 * (logged, the session untouched) in the store and a clear error for a single-file load;
 * each layout still restores its own files. The store decides the miss from the
 * snapshot's header alone: a file of the other layout whose body is damaged stays on disk
 * for its own layout's process (reading and verifying it would have removed it), which
 * then finds the damage and removes it. */
DS4_TEST(kv_compact_kvstore_files_of_the_other_layout) {
    const char *p = tm_path();
    REQUIRE(p != NULL);
    ds4_engine *ea = tm_open_cpu(p, false), *eb = tm_open_cpu(p, false);
    REQUIRE(ea && eb);
    REQUIRE(kvw_install(eb, 256, KVW_FULL) != NULL);
    ds4_session_options so;
    ds4_session_options_default(&so);
    so.ctx = 100;
    so.rewind_window = 16;
    char err[512], dir[512], file_a[600], file_b[600];
    snprintf(dir, sizeof dir, "%s/kvc_layouts", ds4_test_tmpdir());
    snprintf(file_a, sizeof file_a, "%s/a.ds4", ds4_test_tmpdir());
    snprintf(file_b, sizeof file_b, "%s/b.ds4", ds4_test_tmpdir());
    ds4_session *sa = NULL, *sb = NULL;
    REQUIRE(ds4_session_create(&sa, ea, &so, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_create(&sb, eb, &so, err, sizeof err) == 0, "%s", err);
    int32_t tok[100];
    seq(tok, 100, 6, TM_VOCAB);
    REQUIRE(ds4_session_sync(sa, tok, 40, NULL, NULL, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_sync(sb, tok, 40, NULL, NULL, err, sizeof err) == 0, "%s", err);
    static const char text_a[] = "prefix written by the f32 engine", text_b[] = "prefix written by the compact engine";
    ds4_kv_save_req ra = {.text = text_a, .text_len = sizeof text_a - 1, .reason = DS4_KV_REASON_MANUAL};
    ds4_kv_save_req rb = {.text = text_b, .text_len = sizeof text_b - 1, .reason = DS4_KV_REASON_MANUAL};
    REQUIRE(ds4_kvfile_save(ea, sa, &ra, file_a, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_kvfile_save(eb, sb, &rb, file_b, err, sizeof err) == 0, "%s", err);

    ds4_kvstore_options ko;
    ds4_kvstore_options_default(&ko);
    ko.dir = dir;
    ds4_kvstore *ka = NULL, *kb = NULL;
    REQUIRE(ds4_kvstore_open(&ka, ea, &ko, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_kvstore_open(&kb, eb, &ko, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_kvstore_save(ka, sa, &ra, DS4_KV_DISK, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_kvstore_save(kb, sb, &rb, DS4_KV_DISK, err, sizeof err) == 0, "%s", err);
    static const char text_c[] = "a compact prefix whose file gets damaged";
    ds4_kv_save_req rc_ = {.text = text_c, .text_len = sizeof text_c - 1, .reason = DS4_KV_REASON_MANUAL};
    REQUIRE(ds4_kvstore_save(kb, sb, &rc_, DS4_KV_DISK, err, sizeof err) == 0, "%s", err);
    ds4_kvstore_flush(ka);
    ds4_kvstore_flush(kb);
    char file_c[700];
    {   /* the last byte of text_c's file (its name: the SHA-256 of the text, store.c) flipped */
        uint8_t h[32];
        char hx[72];
        REQUIRE(kv_sha256(text_c, sizeof text_c - 1, NULL, 0, h) == 0);
        for (int i = 0; i < 32; i++) snprintf(hx + 2 * i, 3, "%02x", h[i]);
        snprintf(file_c, sizeof file_c, "%s/%s.kv", dir, hx);
        FILE *f = fopen(file_c, "r+b");
        REQUIRE(f != NULL, "%s", file_c);
        REQUIRE(fseek(f, -1, SEEK_END) == 0);
        const int c = fgetc(f);
        REQUIRE(c != EOF && fseek(f, -1, SEEK_END) == 0 && fputc(c ^ 0x5A, f) != EOF);
        fclose(f);
    }

    ds4_session *ta = NULL, *tb = NULL;
    REQUIRE(ds4_session_create(&ta, ea, &so, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_create(&tb, eb, &so, err, sizeof err) == 0, "%s", err);
    ds4_kv_hit hit;
    /* the other layout's file: a miss, the session untouched */
    fprintf(stderr, "    (three 'cannot restore' warnings expected)\n");
    CHECK(ds4_kvstore_restore(ka, ta, text_b, sizeof text_b - 1, 1, &hit, err, sizeof err) == DS4_ERR_NOT_FOUND, "%s", err);
    CHECK_EQ_INT(ds4_session_n_tokens(ta), 0);
    CHECK(ds4_kvstore_restore(kb, tb, text_a, sizeof text_a - 1, 1, &hit, err, sizeof err) == DS4_ERR_NOT_FOUND, "%s", err);
    CHECK_EQ_INT(ds4_session_n_tokens(tb), 0);
    /* the damaged file of the other layout: a miss from its header, left on disk ... */
    ds4_kvstore_stats sta, stb;
    CHECK(ds4_kvstore_restore(ka, ta, text_c, sizeof text_c - 1, 1, &hit, err, sizeof err) == DS4_ERR_NOT_FOUND, "%s", err);
    ds4_kvstore_get_stats(ka, &sta);
    CHECK_EQ_INT(sta.corrupt_removed, 0);
    CHECK(access(file_c, F_OK) == 0, "%s was removed by the other layout's store", file_c);
    /* ... for its own layout's store, which reads it, finds the damage and removes it */
    fprintf(stderr, "    (one 'removing' warning expected)\n");
    CHECK(ds4_kvstore_restore(kb, tb, text_c, sizeof text_c - 1, 1, &hit, err, sizeof err) == DS4_ERR_NOT_FOUND, "%s", err);
    ds4_kvstore_get_stats(kb, &stb);
    CHECK_EQ_INT(stb.corrupt_removed, 1);
    CHECK(access(file_c, F_OK) != 0, "%s is still there", file_c);
    CHECK_EQ_INT(ds4_session_n_tokens(tb), 0);
    /* each layout's own file restores, and decoding continues as in the original */
    REQUIRE(ds4_kvstore_restore(kb, tb, text_b, sizeof text_b - 1, 1, &hit, err, sizeof err) == 0, "%s", err);
    ds4_kv_hit_free(&hit);
    CHECK_EQ_INT(ds4_session_n_tokens(tb), 40);
    REQUIRE(ds4_kvstore_restore(ka, ta, text_a, sizeof text_a - 1, 1, &hit, err, sizeof err) == 0, "%s", err);
    ds4_kv_hit_free(&hit);
    REQUIRE(ds4_session_sync(sb, tok, 45, NULL, NULL, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_sync(tb, tok, 45, NULL, NULL, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_sync(ta, tok, 45, NULL, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(same_bits(ds4_session_logits(sb), ds4_session_logits(tb), TM_VOCAB));
    CHECK(same_bits(ds4_session_logits(ta), ds4_session_logits(tb), TM_VOCAB));

    /* single files (CLI /load): an error naming both layouts */
    ds4_session *ua = NULL;
    REQUIRE(ds4_session_create(&ua, ea, &so, err, sizeof err) == 0, "%s", err);
    err[0] = 0;
    CHECK(ds4_kvfile_load(ea, ua, file_b, false, &hit, err, sizeof err) == DS4_ERR_UNSUPPORTED);
    CHECK(strstr(err, "(compact)") && strstr(err, "(f32)"), "message: %s", err);
    err[0] = 0;
    CHECK(ds4_kvfile_load(eb, tb, file_a, false, &hit, err, sizeof err) == DS4_ERR_UNSUPPORTED);
    CHECK(strstr(err, "(compact)") && strstr(err, "(f32)"), "message: %s", err);
    REQUIRE(ds4_kvfile_load(ea, ua, file_a, false, &hit, err, sizeof err) == 0, "%s", err);
    ds4_kv_hit_free(&hit);
    CHECK_EQ_INT(ds4_session_n_tokens(ua), 40);

    ds4_kvstore_close(ka);
    ds4_kvstore_close(kb);
    ds4_session_free(sa);
    ds4_session_free(sb);
    ds4_session_free(ta);
    ds4_session_free(tb);
    ds4_session_free(ua);
    ds4_engine_close(ea);
    ds4_engine_close(eb);
}
