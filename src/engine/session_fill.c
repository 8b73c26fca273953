/* session_fill.c — ds4_session_fill_synthetic (session_fill.h): a session's decode state
 * at n tokens with random rows, for benchmarks of decode at long contexts.
 *
 * Owns: which buffers a state of n tokens holds (engine_internal.h: raw ring, comp rows
 * [0, n / R), compressor rings, indexer rows), filled through the backend's write op.
 * Must not: run the model.
 */
#include <stdlib.h>
#include <string.h>

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

int ds4_session_fill_synthetic(ds4_session *s, const int32_t *tokens, int n, uint64_t seed, char *err, size_t errlen) {
    ds4_engine *e = s->e;
    ds4_backend *be = e->be;
    const ds4_hparams *hp = &e->model->hp;
    int rc = ds4_session_check_tokens(s, tokens, n, "fill", err, errlen);
    if (rc < 0) return rc;
    const size_t cap = (size_t)1 << 20; /* 4 MiB of host staging */
    float *host = malloc(cap * sizeof(float));
    if (!host) return ds4_err(err, errlen, DS4_ERR_NOMEM, "fill: out of memory");
    uint64_t st = seed ^ 0x5DEECE66Dull;
    const int64_t hd = hp->head_dim, ihd = hp->idx_head_dim;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const ds4_layer_weights *L = &e->model->layers[il];
        ds4_layer_state *ls = &s->ls[il];
        put_random(be, ls->raw, (size_t)s->cap_raw * hd, host, cap, &st);
        const int64_t R = L->ratio;
        if (!R) continue;
        const int64_t rows = n / R; /* emitted compressed rows */
        if (rows > 0) put_random(be, ls->comp, (size_t)rows * hd, host, cap, &st);
        put_random(be, ls->cfr, (size_t)ls->cap_c * 2 * L->coff * hd, host, cap, &st);
        if (L->kind == DS4_ATTN_CSA) {
            if (rows > 0) put_random(be, ls->icomp, (size_t)rows * ihd, host, cap, &st);
            put_random(be, ls->ifr, (size_t)ls->cap_c * 4 * ihd, host, cap, &st);
        }
    }
    free(host);
    memcpy(s->tokens, tokens, (size_t)n * sizeof(int32_t));
    s->n_tokens = n;
    s->have_logits = false;
    s->last_evaluated = 0;
    return 0;
}
