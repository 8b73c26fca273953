/* test_graph_hooks.c — the schedule side of backend.h graph_begin / graph_end (the CUDA
 * backend records a decode step's launches between them and replays them as graphs), on
 * the CPU with a wrapper backend that checks the bracket.
 *
 * Owns: the cases that the schedule brackets exactly the single-token chunks — every
 * decode step and a one-token tail of a prefill, never a chunk of several tokens — with
 * one begin and one end each, never nested, closed when ds4_session_sync returns, every
 * op of the step inside the bracket (the embedding lookup first, the LM head last) and
 * no op of a multi-token chunk inside one; and that a backend with the hooks gives the
 * plain backend's logits bit for bit (the hooks change no values). Whether a backend's
 * replayed graphs equal its direct launches is the GPU test's (tests/cuda/engine_gpu.py,
 * "graph vs no graph").
 *
 * The wrapper: a ds4_backend whose first member is a copy of the CPU backend's struct
 * (same impl: every forwarded op is the CPU's own), with graph_begin / graph_end and
 * counting get_rows / matmul.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds4.h"
#include "backend/backend.h"
#include "engine/engine_internal.h"
#include "test.h"
#include "test_engine_model.h"

typedef struct {
    ds4_backend be;      /* must be first: the engine's backend (impl = the CPU's) */
    ds4_backend *cpu;    /* the wrapped CPU backend; owns impl */
    bool open;           /* inside a bracket */
    long begins, ends, nested, stray_end;
    long ops_in, multi_in;   /* ops inside brackets; of them with more than one token */
    long rows_outside_1;     /* single-token get_rows outside a bracket */
    long matmul_last_in;     /* the bracket's last matmul had the vocabulary's rows */
    uint64_t last_rows;
} gw;

static void gw_begin(ds4_backend *be) {
    gw *w = (gw *)be;
    w->nested += w->open;
    w->open = true;
    w->begins++;
    w->last_rows = 0;
}

static void gw_end(ds4_backend *be) {
    gw *w = (gw *)be;
    w->stray_end += !w->open;
    w->open = false;
    w->ends++;
    w->matmul_last_in += w->last_rows == TM_VOCAB;
}

static void gw_get_rows(ds4_backend *be, const ds4_tensor *E, const int32_t *ids, int n, float *out) {
    gw *w = (gw *)be;
    if (w->open) {
        w->ops_in++;
        w->multi_in += n > 1;
    } else {
        w->rows_outside_1 += n == 1;
    }
    w->cpu->get_rows(be, E, ids, n, out);
}

static void gw_matmul(ds4_backend *be, const ds4_tensor *W, uint64_t slab, uint64_t row0, uint64_t n_rows,
                      const float *x, int64_t xs, float *y, int64_t ys, int n_tok) {
    gw *w = (gw *)be;
    if (w->open) {
        w->ops_in++;
        w->multi_in += n_tok > 1;
        w->last_rows = n_rows;
    }
    w->cpu->matmul(be, W, slab, row0, n_rows, x, xs, y, ys, n_tok);
}

static void gw_free(ds4_backend *be) {
    gw *w = (gw *)be;
    ds4_backend *cpu = w->cpu;
    free(w);
    cpu->free(cpu);
}

static gw *gw_install(ds4_engine *e) {
    gw *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->cpu = e->be;
    w->be = *e->be;
    w->be.name = "cpu-graph-hooks";
    w->be.free = gw_free;
    w->be.graph_begin = gw_begin;
    w->be.graph_end = gw_end;
    w->be.get_rows = gw_get_rows;
    w->be.matmul = gw_matmul;
    w->be.matmul_multi = NULL; /* every projection through gw_matmul */
    e->be = &w->be;
    return w;
}

DS4_TEST(graph_hooks_bracket_single_token_chunks) {
    char p[512], err[512];
    snprintf(p, sizeof p, "%s/tm_graph_hooks.gguf", ds4_test_tmpdir());
    tm_opts o;
    tm_default(&o);
    REQUIRE(tm_write(&o, p, err, sizeof err) == 0, "%s", err);
    ds4_engine *ea = tm_open_cpu(p, false), *eb = tm_open_cpu(p, false);
    REQUIRE(ea && eb);
    gw *w = gw_install(eb);
    REQUIRE(w != NULL);
    ds4_session_options so;
    ds4_session_options_default(&so);
    so.ctx = 64;
    so.rewind_window = 8;
    so.prefill_chunk = 4;
    ds4_session *sa = NULL, *sb = NULL;
    REQUIRE(ds4_session_create(&sa, ea, &so, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_create(&sb, eb, &so, err, sizeof err) == 0, "%s", err);
    int32_t tok[64];
    for (int i = 0; i < 64; i++) tok[i] = (int32_t)((i * 29 + 5) % TM_VOCAB);

    /* prefill of 9 tokens in chunks of 4: 4, 4, 1 — only the last is a bracketed step */
    REQUIRE(ds4_session_sync(sa, tok, 9, NULL, NULL, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_sync(sb, tok, 9, NULL, NULL, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(w->begins, 1);
    CHECK(!w->open, "bracket left open after the sync returned");
    CHECK(memcmp(ds4_session_logits(sa), ds4_session_logits(sb), sizeof(float) * TM_VOCAB) == 0,
          "logits differ after the prefill");
    /* prefill of 8 more in chunks of 4: no bracket */
    REQUIRE(ds4_session_sync(sa, tok, 17, NULL, NULL, err, sizeof err) == 0, "%s", err);
    REQUIRE(ds4_session_sync(sb, tok, 17, NULL, NULL, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(w->begins, 1);
    /* 20 decode steps across the test model's compressor windows (ratios 4 and 8) and
     * the indexer's selection (top-k 3): one bracket each, the same logits */
    for (int n = 18; n <= 37; n++) {
        REQUIRE(ds4_session_sync(sa, tok, n, NULL, NULL, err, sizeof err) == 0, "%s", err);
        REQUIRE(ds4_session_sync(sb, tok, n, NULL, NULL, err, sizeof err) == 0, "%s", err);
        CHECK(!w->open, "bracket open after step %d", n);
        CHECK(memcmp(ds4_session_logits(sa), ds4_session_logits(sb), sizeof(float) * TM_VOCAB) == 0,
              "logits differ at step %d", n);
    }
    CHECK_EQ_INT(w->begins, 21);
    CHECK_EQ_INT(w->ends, 21);
    CHECK_EQ_INT(w->nested, 0);
    CHECK_EQ_INT(w->stray_end, 0);
    CHECK_EQ_INT(w->multi_in, 0);
    CHECK_EQ_INT(w->rows_outside_1, 0); /* every single-token step's embedding is inside */
    CHECK_EQ_INT(w->matmul_last_in, 21); /* and its LM head too, as the last matmul */
    CHECK(w->ops_in > 21 * 10, "only %ld ops inside the brackets", w->ops_in);
    ds4_session_free(sa);
    ds4_session_free(sb);
    ds4_engine_close(ea);
    ds4_engine_close(eb);
}
