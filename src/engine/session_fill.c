/* session_fill.c — ds4_session_fill_synthetic (session_fill.h): a session's decode state
 * at n tokens with random rows, for benchmarks of decode at long contexts.
 *
 * Owns: which buffers a state of n tokens holds (engine_internal.h: raw ring, comp rows
 * [0, n / R), compressor rings, indexer rows), filled through the backend's write op.
 * Compressed rows in the backend's compact layout (backend.h kv_row_bytes) are encoded
 * with kv_fmt.h from random rows, so they hold values a production row can hold (FP8 /
 * FP4 on power-of-two block scales, f16 rope dims) and the decode step reads as many
 * bytes as after a real prefill. Must not: run the model.
 */
#include <stdlib.h>
#include <string.h>

#include "backend/kv_fmt.h"
#include "core/common.h"
#include "engine_internal.h"
#include "session_fill.h"

/* Values ~ U(-1, 1): the scale of rmsnorm'ed rows. splitmix64 per element. */
static void fill_random(float *buf, size_t n, uint64_t *state) {
    for (size_t i = 0; i < n; i++) {
        uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        buf[i] = (float)((double)(z >> 40) * (2.0 / 16777216.0) - 1.0);
    }
}

/* Writes rows*width random floats to backend memory dst, through a host buffer of at most
 * `cap` floats. */
static void put_random(ds4_backend *be, float *dst, size_t total, float *host, size_t cap, uint64_t *state) {
    for (size_t off = 0; off < total; off += cap) {
        const size_t len = total - off < cap ? total - off : cap;
        fill_random(host, len, state);
        be->write(be, dst + off, host, len * sizeof(float));
    }
}

/* Writes `rows` compressed rows of width hd in the session's compact layout (kind
 * DS4_KV_ROW_ATTN: the last n_rot dims rope; DS4_KV_ROW_INDEX) to backend memory dst:
 * random f32 rows encoded with kv_fmt.h (the encoder rounds them to the grid), staged
 * through host (cap floats of bytes) with xrow (hd floats) as the f32 row. */
static void put_random_compact(ds4_backend *be, uint8_t *dst, size_t rows, size_t rb, int kind, int64_t hd, int n_rot,
                               float *host, size_t cap, float *xrow, uint64_t *state) {
    uint8_t *stage = (uint8_t *)host;
    const size_t per = cap * sizeof(float) / rb; /* rows per staged write */
    DS4_ASSERT(per >= 1);                         /* a row is a few KiB at most */
    for (size_t r0 = 0; r0 < rows; r0 += per) {
        const size_t nr = rows - r0 < per ? rows - r0 : per;
        for (size_t r = 0; r < nr; r++) {
            fill_random(xrow, (size_t)hd, state);
            if (kind == DS4_KV_ROW_ATTN) ds4_kv_attn_encode(xrow, hd, n_rot, stage + r * rb);
            else ds4_kv_index_encode(xrow, hd, stage + r * rb);
        }
        be->write(be, dst + r0 * rb, stage, nr * rb);
    }
}

int ds4_session_fill_synthetic(ds4_session *s, const int32_t *tokens, int n, uint64_t seed, char *err, size_t errlen) {
    ds4_engine *e = s->e;
    ds4_backend *be = e->be;
    const ds4_hparams *hp = &e->model->hp;
    int rc = ds4_session_check_tokens(s, tokens, n, "fill", err, errlen);
    if (rc < 0) return rc;
    const size_t cap = (size_t)1 << 20; /* 4 MiB of host staging */
    const int64_t hd = hp->head_dim, ihd = hp->idx_head_dim;
    float *host = malloc(cap * sizeof(float));
    float *xrow = malloc((size_t)(hd > ihd ? hd : ihd) * sizeof(float));
    if (!host || !xrow) {
        free(host);
        free(xrow);
        return ds4_err(err, errlen, DS4_ERR_NOMEM, "fill: out of memory");
    }
    uint64_t st = seed ^ 0x5DEECE66Dull;
    const int n_rot = (int)hp->n_rot;
    /* compact rows where the session stores them (per kind: a backend may compact one) */
    const bool ca = s->comp_compact, ci = s->icomp_compact;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const ds4_layer_weights *L = &e->model->layers[il];
        ds4_layer_state *ls = &s->ls[il];
        put_random(be, ls->raw, (size_t)s->cap_raw * hd, host, cap, &st);
        const int64_t R = L->ratio;
        if (!R) continue;
        const int64_t rows = n / R; /* emitted compressed rows */
        if (rows > 0 && ca)
            put_random_compact(be, (uint8_t *)ls->comp, (size_t)rows, s->comp_rb, DS4_KV_ROW_ATTN, hd, n_rot, host,
                               cap, xrow, &st);
        else if (rows > 0)
            put_random(be, ls->comp, (size_t)rows * hd, host, cap, &st);
        put_random(be, ls->cfr, (size_t)ls->cap_c * 2 * L->coff * hd, host, cap, &st);
        if (L->kind == DS4_ATTN_CSA) {
            if (rows > 0 && ci)
                put_random_compact(be, (uint8_t *)ls->icomp, (size_t)rows, s->icomp_rb, DS4_KV_ROW_INDEX, ihd, n_rot,
                                   host, cap, xrow, &st);
            else if (rows > 0)
                put_random(be, ls->icomp, (size_t)rows * ihd, host, cap, &st);
            put_random(be, ls->ifr, (size_t)ls->cap_c * 4 * ihd, host, cap, &st);
        }
    }
    free(host);
    free(xrow);
    memcpy(s->tokens, tokens, (size_t)n * sizeof(int32_t));
    s->n_tokens = n;
    s->have_logits = false;
    s->dev_logits = NULL;
    s->last_evaluated = 0;
    return 0;
}
