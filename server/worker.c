/* worker.c — the single inference owner: runs queued jobs one at a time on the one live
 * session, decides KV reuse, generates, parses and hands protocol events to emitters.
 *
 * Owns: the engine/session (only this thread touches them), the mirror of the live token
 * timeline, the cache decision (SERVING.md §6.2 rules 5 and 7: token prefix, rendered-
 * byte prefix with independent suffix tokenization), cancellable chunked prefill with SSE
 * keepalive, the decode loop (§4.3 stop order, stop strings with hold-back, DSML-greedy
 * sampling §4.1, --debug-force-tokens), the exact-DSML tool replay map (§6.5), the KV
 * cache save policy and disk/RAM restore (§6.2 rules 8-10, §7.5, §7.6: cold / continued /
 * evict / shutdown saves, serialized here, written by the store's thread), metrics
 * counters and the --trace file.
 * Must not: parse HTTP or request JSON (adapters do, on HTTP threads) or block on a client:
 * emitters append to the job channel, which never waits.
 */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ds4_kvstore.h"
#include "kv_policy.h"
#include "server.h"

static struct {
    ds4_engine *engine;
    ds4_session *session;
    const ds4_tokenizer *tok;
    const srv_config *cfg;
    pthread_t thread;
    bool started;
    atomic_bool busy;
    ds4_tokens live;      /* tokens currently in the session's KV state */
    void *scratch;
    size_t scratch_bytes;
    int32_t eos;
    FILE *trace;
    ds4_kvstore *kv;      /* KV cache store (RAM and/or disk tier), NULL when off */
    int kv_where;         /* DS4_KV_RAM | DS4_KV_DISK: where evict/shutdown saves go */
    size_t kv_frontier;   /* last stored frontier of the live conversation (§7.5) */
    int kv_step;          /* continued-save spacing (interval rounded up to align), 0 = off */
} W;

static srv_kv_tuning K = SRV_KV_TUNING_DEFAULT;
void worker_set_kv_tuning(const srv_kv_tuning *t) { K = *t; }

bool worker_busy(void) { return atomic_load(&W.busy); }

const char *srv_finish_name(srv_finish f) {
    switch (f) {
    case FIN_STOP: return "stop";
    case FIN_LENGTH: return "length";
    case FIN_TOOL_CALLS: return "tool_calls";
    case FIN_ERROR: return "error";
    }
    return "error";
}

/* ---- metrics ------------------------------------------------------------------------------ */

static struct {
    pthread_mutex_t mu;
    unsigned long long req[API_N_][6]; /* status classes: 200 400 401 404 5xx other */
    unsigned long long prompt, cached, generated, requests_done;
    double prefill_s, decode_s;
    unsigned long long toolmem_hits, toolmem_ids;
    unsigned long long kv_disk_hits, kv_ram_hits;
} M = {.mu = PTHREAD_MUTEX_INITIALIZER};

static const char *const k_api_names[API_N_] = {"chat_completions", "completions", "messages", "responses", "other"};
static const int k_status_codes[6] = {200, 400, 401, 404, 503, 0};

void metrics_request(srv_api api, int status) {
    int k = 5;
    for (int i = 0; i < 5; i++)
        if (k_status_codes[i] == status) k = i;
    if (k == 5 && status >= 500) k = 4;
    pthread_mutex_lock(&M.mu);
    M.req[api][k]++;
    pthread_mutex_unlock(&M.mu);
}

void metrics_render(char **out, size_t *len) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) {
        *out = NULL;
        *len = 0;
        return;
    }
    ds4_kvstore_stats ks = {0};
    if (W.kv) ds4_kvstore_get_stats(W.kv, &ks);
    pthread_mutex_lock(&M.mu);
    fprintf(f, "# HELP ds4_requests_total HTTP requests by endpoint and status.\n# TYPE ds4_requests_total counter\n");
    for (int a = 0; a < API_N_; a++)
        for (int k = 0; k < 6; k++) {
            if (!M.req[a][k]) continue;
            if (k < 5) fprintf(f, "ds4_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n", k_api_names[a], k == 4 ? 503 : k_status_codes[k], M.req[a][k]);
            else fprintf(f, "ds4_requests_total{endpoint=\"%s\",status=\"other\"} %llu\n", k_api_names[a], M.req[a][k]);
        }
    fprintf(f, "# HELP ds4_prompt_tokens_total Prompt tokens of completed generations.\n# TYPE ds4_prompt_tokens_total counter\nds4_prompt_tokens_total %llu\n", M.prompt);
    fprintf(f, "# HELP ds4_prompt_tokens_cached_total Prompt tokens that were not recomputed.\n# TYPE ds4_prompt_tokens_cached_total counter\nds4_prompt_tokens_cached_total %llu\n", M.cached);
    fprintf(f, "# HELP ds4_generated_tokens_total Generated (evaluated) tokens.\n# TYPE ds4_generated_tokens_total counter\nds4_generated_tokens_total %llu\n", M.generated);
    fprintf(f, "# HELP ds4_queue_length Requests waiting for the worker.\n# TYPE ds4_queue_length gauge\nds4_queue_length %d\n", queue_length());
    fprintf(f, "# HELP ds4_busy 1 while the worker runs a request.\n# TYPE ds4_busy gauge\nds4_busy %d\n", worker_busy() ? 1 : 0);
    fprintf(f, "# HELP ds4_prefill_seconds_total Time spent in prefill.\n# TYPE ds4_prefill_seconds_total counter\nds4_prefill_seconds_total %.6f\n", M.prefill_s);
    fprintf(f, "# HELP ds4_decode_seconds_total Time spent decoding.\n# TYPE ds4_decode_seconds_total counter\nds4_decode_seconds_total %.6f\n", M.decode_s);
    fprintf(f, "# HELP ds4_kv_disk_bytes Bytes in the disk KV cache.\n# TYPE ds4_kv_disk_bytes gauge\nds4_kv_disk_bytes %llu\n", (unsigned long long)ks.disk_bytes);
    fprintf(f, "# HELP ds4_kv_disk_hits_total Disk KV cache hits.\n# TYPE ds4_kv_disk_hits_total counter\nds4_kv_disk_hits_total %llu\n", M.kv_disk_hits);
    fprintf(f, "# HELP ds4_kv_ram_hits_total RAM KV cache hits.\n# TYPE ds4_kv_ram_hits_total counter\nds4_kv_ram_hits_total %llu\n", M.kv_ram_hits);
    fprintf(f, "# HELP ds4_kv_ram_entries KV snapshots in the RAM tier.\n# TYPE ds4_kv_ram_entries gauge\nds4_kv_ram_entries %zu\n", ks.ram_entries);
    fprintf(f, "# HELP ds4_live_tokens Tokens in the live session.\n# TYPE ds4_live_tokens gauge\nds4_live_tokens %zu\n", W.live.n);
    fprintf(f, "# HELP ds4_tool_replay_hits_total Assistant tool calls rendered from the exact-DSML replay map.\n# TYPE ds4_tool_replay_hits_total counter\nds4_tool_replay_hits_total %llu\n", M.toolmem_hits);
    fprintf(f, "# HELP ds4_tool_memory_ids Tool-call ids in the replay map.\n# TYPE ds4_tool_memory_ids gauge\nds4_tool_memory_ids %llu\n", M.toolmem_ids);
    pthread_mutex_unlock(&M.mu);
    fclose(f);
    *out = buf;
    *len = n;
}

/* ---- tool memory: call id -> exact sampled DSML block (LRU, bounded) ----------------------- */

typedef struct tm_entry {
    char *id;
    char *dsml;
    size_t dsml_len;
    unsigned long long used;
    struct tm_entry *next; /* hash chain */
} tm_entry;

#define TM_BUCKETS 4096
#define TM_MAX_BYTES (512ull << 20)

static struct {
    pthread_mutex_t mu;
    tm_entry *b[TM_BUCKETS];
    size_t n, bytes;
    unsigned long long clock;
} T = {.mu = PTHREAD_MUTEX_INITIALIZER};

static size_t tm_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (size_t)(h % TM_BUCKETS);
}

static tm_entry **tm_find(const char *id) {
    tm_entry **pp = &T.b[tm_hash(id)];
    while (*pp && strcmp((*pp)->id, id)) pp = &(*pp)->next;
    return pp;
}

static void tm_evict_one(void) {
    tm_entry **best = NULL;
    for (size_t i = 0; i < TM_BUCKETS; i++)
        for (tm_entry **pp = &T.b[i]; *pp; pp = &(*pp)->next)
            if (!best || (*pp)->used < (*best)->used) best = pp;
    if (!best) return;
    tm_entry *e = *best;
    *best = e->next;
    T.n--;
    T.bytes -= e->dsml_len;
    free(e->id);
    free(e->dsml);
    free(e);
}

static void toolmem_put(const char *id, const char *dsml, size_t n) {
    if (!W.cfg->exact_replay || !id || !id[0]) return;
    pthread_mutex_lock(&T.mu);
    tm_entry **pp = tm_find(id);
    if (*pp) {
        tm_entry *e = *pp;
        *pp = e->next;
        T.n--;
        T.bytes -= e->dsml_len;
        free(e->id);
        free(e->dsml);
        free(e);
    }
    while (T.n > 0 && (T.n + 1 > W.cfg->tool_memory_max_ids || T.bytes + n > TM_MAX_BYTES)) tm_evict_one();
    tm_entry *e = calloc(1, sizeof *e);
    if (e) {
        e->id = strdup(id);
        e->dsml = malloc(n + 1);
        if (!e->id || !e->dsml) {
            free(e->id);
            free(e->dsml);
            free(e);
        } else {
            memcpy(e->dsml, dsml, n);
            e->dsml[n] = 0;
            e->dsml_len = n;
            e->used = ++T.clock;
            pp = tm_find(id);
            e->next = NULL;
            *pp = e;
            T.n++;
            T.bytes += n;
        }
    }
    size_t ids = T.n;
    pthread_mutex_unlock(&T.mu);
    pthread_mutex_lock(&M.mu);
    M.toolmem_ids = ids;
    pthread_mutex_unlock(&M.mu);
}

/* Called by ds4_chat_render inside srv_render, with T.mu held. */
const char *toolmem_replay(void *user, const char *id, size_t *len) {
    (void)user;
    if (!W.cfg || !W.cfg->exact_replay || !id) return NULL;
    tm_entry *e = *tm_find(id);
    if (!e) return NULL;
    e->used = ++T.clock;
    *len = e->dsml_len;
    pthread_mutex_lock(&M.mu);
    M.toolmem_hits++;
    pthread_mutex_unlock(&M.mu);
    return e->dsml;
}

int srv_render(const ds4_chat_message *msgs, size_t n, const ds4_chat_render_opts *o, ds4_chat_prompt *out,
               char *err, size_t errlen) {
    ds4_chat_render_opts oo = *o;
    oo.replay = toolmem_replay;
    oo.replay_user = NULL;
    pthread_mutex_lock(&T.mu);
    int rc = ds4_chat_render(msgs, n, &oo, out, err, errlen);
    pthread_mutex_unlock(&T.mu);
    return rc;
}

static void toolmem_free_all(void) {
    pthread_mutex_lock(&T.mu);
    for (size_t i = 0; i < TM_BUCKETS; i++) {
        tm_entry *e = T.b[i];
        while (e) {
            tm_entry *nx = e->next;
            free(e->id);
            free(e->dsml);
            free(e);
            e = nx;
        }
        T.b[i] = NULL;
    }
    T.n = T.bytes = 0;
    pthread_mutex_unlock(&T.mu);
}

/* ---- trace -------------------------------------------------------------------------------- */

static void trace_bytes(const char *s, size_t n) {
    if (W.trace && n) fwrite(s, 1, n, W.trace);
}

__attribute__((format(printf, 1, 2))) static void tracef(const char *fmt, ...) {
    if (!W.trace) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(W.trace, fmt, ap);
    va_end(ap);
}

/* ---- forced tokens (--debug-force-tokens) --------------------------------------------------- */

/* Re-read at the start of every request, so a test can script each request in turn.
 * Absent file or [] = normal sampling. */
static int load_forced(ds4_tokens *out) {
    out->n = 0;
    if (!W.cfg->force_tokens_path) return 0;
    json_error_t je;
    json_t *a = json_load_file(W.cfg->force_tokens_path, 0, &je);
    if (!a) return 0;
    if (!json_is_array(a)) {
        json_decref(a);
        return -1;
    }
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= ds4_tokenizer_vocab_size(W.tok)) {
            json_decref(a);
            out->n = 0;
            return -1;
        }
        ds4_tokens_push(out, (int32_t)json_integer_value(v));
    }
    json_decref(a);
    return (int)out->n;
}

/* ---- cache decision ------------------------------------------------------------------------- */

static size_t lcp(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    size_t i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    return i;
}

/* Tokens of prompt->text[off..end) following the segment rules (SPECIAL -> one id, TEXT
 * runs plain), appended to out. Fails (-1) if off or end falls inside a SPECIAL segment. */
static int tokenize_range(const ds4_chat_prompt *p, size_t off, size_t end, ds4_tokens *out) {
    ds4_chat_segment *segs = malloc((p->n_segs + 1) * sizeof *segs);
    if (!segs) return -1;
    size_t ns = 0;
    for (size_t i = 0; i < p->n_segs; i++) {
        const ds4_chat_segment *s = &p->segs[i];
        if (s->off + s->len <= off || s->off >= end) continue;
        ds4_chat_segment c = *s;
        if (c.off < off || c.off + c.len > end) {
            if (c.kind == DS4_SEG_SPECIAL) {
                free(segs);
                return -1;
            }
            if (c.off + c.len > end) c.len = end - c.off;
            if (c.off < off) {
                c.len -= off - c.off;
                c.off = off;
            }
        }
        c.off -= off;
        segs[ns++] = c;
    }
    ds4_chat_prompt sub = {.text = p->text + off, .len = end - off, .segs = segs, .n_segs = ns};
    char err[128];
    int rc = ds4_chat_prompt_tokenize(&sub, W.tok, out, err, sizeof err);
    free(segs);
    return rc ? -1 : 0;
}

static int tokenize_suffix(const ds4_chat_prompt *p, size_t off, ds4_tokens *out) {
    return tokenize_range(p, off, p->len, out);
}

/* ---- KV cache store (SERVING.md §7.5, §7.6) -------------------------------------------------- */

/* Serializes the live checkpoint on this (the worker) thread and hands it to the store,
 * whose writer thread does the disk I/O (so the worker is blocked for the serialize
 * copy only; the write, checksum and fsync run in the background). The key is the
 * decoded text of the live tokens, so a later prompt that renders to the same bytes
 * finds it; the exact ids travel as client data so a restore mirrors the sampled ids
 * instead of a re-tokenization. Skipped below the minimum or if the mirror and the
 * session disagree (never store a state under the wrong key).
 *
 * Where it goes: cold and continued saves only to disk (they exist for restarts and for
 * other sessions of the same agent; the live session already holds the state, and when
 * it is replaced the evict save of the whole conversation supersedes them), evict and
 * shutdown saves to RAM and disk. Returns true when the save was handed over. */
static bool kv_save_live(int reason) {
    int where = reason == DS4_KV_REASON_COLD || reason == DS4_KV_REASON_CONTINUED ? W.kv_where & DS4_KV_DISK : W.kv_where;
    if (!W.kv || !where || W.live.n == 0 || W.live.n < (size_t)W.cfg->kv_min_tokens) return false;
    if ((size_t)ds4_session_n_tokens(W.session) != W.live.n) {
        fprintf(stderr, "ds4-server: kv cache: not saved: session holds %d tokens, mirror %zu\n",
                ds4_session_n_tokens(W.session), W.live.n);
        return false;
    }
    char *text = NULL;
    size_t nt = 0;
    char err[256];
    if (ds4_tokenizer_decode(W.tok, W.live.ids, W.live.n, &text, &nt, err, sizeof err) || nt == 0) {
        free(text);
        return false;
    }
    ds4_kv_save_req r = {.text = text, .text_len = nt, .reason = reason, .client = W.live.ids,
                         .client_len = W.live.n * sizeof(int32_t)};
    double t0 = srv_now();
    bool ok = ds4_kvstore_save(W.kv, W.session, &r, where, err, sizeof err) == 0;
    if (!ok)
        fprintf(stderr, "ds4-server: kv cache: save (reason %d, %zu tokens) failed: %s\n", reason, W.live.n, err);
    else
        fprintf(stderr, "ds4-server: kv cache: saved %zu tokens (reason %d, %.3fs serialize)\n", W.live.n, reason,
                srv_now() - t0);
    free(text);
    if (ok) W.kv_frontier = W.live.n;
    return ok;
}

/* §7.5 cold-save length for a prompt of n tokens: the agent anchor (tokens before the
 * last <｜User｜> that precedes the first <｜Assistant｜>: the part independent sessions
 * of the same agent share) when it holds >= min tokens, else n - trim rounded down to the
 * alignment when that is still >= min, else the whole prompt. */
static size_t kv_cold_len(const ds4_tokens *p) {
    size_t min = (size_t)W.cfg->kv_min_tokens, n = p->n;
    int32_t user = ds4_tokenizer_special(W.tok, DS4_TOKEN_USER), asst = ds4_tokenizer_special(W.tok, DS4_TOKEN_ASSISTANT);
    size_t a = 0;
    for (size_t i = 0; i < n && p->ids[i] != asst; i++)
        if (p->ids[i] == user) a = i;
    if (a >= min) return a;
    if (n > min + (size_t)K.trim) {
        size_t s = n - (size_t)K.trim;
        if (K.align > 0) s -= s % (size_t)K.align;
        if (s >= min) return s;
    }
    return n;
}

/* §7.5 continued save at an exact multiple of the step, past the last stored frontier. */
static void kv_maybe_continued(void) {
    if (!W.kv || W.kv_step <= 0 || W.live.n == 0 || W.live.n % (size_t)W.kv_step != 0) return;
    if (W.live.n <= W.kv_frontier || W.live.n < (size_t)W.cfg->kv_min_tokens) return;
    kv_save_live(DS4_KV_REASON_CONTINUED);
}

/* Longest stored prefix of the rendered prompt (RAM, then disk) restored into the session
 * when it holds more than `common` tokens (what the live session would reuse anyway).
 * On success eff = the stored prefix's tokens + the independently tokenized byte suffix
 * (§6.2 suffix rule) and W.live mirrors the restored timeline. The stored prefix's ids
 * are re-derived by tokenizing its bytes with the prompt's segments (the public session
 * API does not expose the snapshot's ids); if they differ from the stored ids, the next
 * sync keeps only the common part, so a mismatch costs prefill, never correctness. */
static bool kv_restore(srv_job *j, size_t common, ds4_tokens *eff, int *tier) {
    if (!W.kv) return false;
    int min = W.cfg->kv_min_tokens;
    if ((long long)common + 1 > min) min = (int)common + 1;
    ds4_kv_hit hit = {0};
    char err[256];
    int rc = ds4_kvstore_restore(W.kv, W.session, j->prompt.text, j->prompt.len, min, &hit, err, sizeof err);
    if (rc == -5) return false; /* DS4_ERR_NOT_FOUND (ds4_kvstore.h): nothing matches */
    if (rc) {
        fprintf(stderr, "ds4-server: kv cache: restore failed: %s\n", err);
        W.live.n = 0;
        return false;
    }
    ds4_tokens pre = {0}, suf = {0};
    bool ok;
    if (hit.client && hit.client_len == (size_t)hit.n_tokens * sizeof(int32_t)) {
        /* the exact ids the session holds (saved by kv_save_live) */
        const int32_t *ids = hit.client;
        for (int i = 0; i < hit.n_tokens; i++) ds4_tokens_push(&pre, ids[i]);
        ok = true;
    } else {
        ok = tokenize_range(&j->prompt, 0, hit.text_len, &pre) == 0;
    }
    ok = ok && tokenize_suffix(&j->prompt, hit.text_len, &suf) == 0 && pre.n + suf.n < (size_t)W.cfg->ctx;
    if (ok) {
        if (pre.n != (size_t)hit.n_tokens)
            fprintf(stderr, "ds4-server: kv cache: restored %d tokens re-tokenize to %zu\n", hit.n_tokens, pre.n);
        W.kv_frontier = (size_t)hit.n_tokens;
        /* §7.6 consume: a long conversation is live again and will be re-saved */
        if (hit.tier == DS4_KV_DISK && W.cfg->kv_cold_max_tokens > 0 && hit.n_tokens > W.cfg->kv_cold_max_tokens)
            ds4_kvstore_forget(W.kv, hit.text, hit.text_len);
        W.live.n = 0;
        for (size_t i = 0; i < pre.n; i++) ds4_tokens_push(&W.live, pre.ids[i]);
        eff->n = 0;
        for (size_t i = 0; i < pre.n; i++) ds4_tokens_push(eff, pre.ids[i]);
        for (size_t i = 0; i < suf.n; i++) ds4_tokens_push(eff, suf.ids[i]);
        *tier = hit.tier;
    } else {
        /* the session holds a state we cannot mirror: start over */
        W.live.n = 0;
    }
    ds4_tokens_free(&pre);
    ds4_tokens_free(&suf);
    ds4_kv_hit_free(&hit);
    return ok;
}

/* Chooses the effective prompt (§6.2): the canonical tokens, unless the live timeline is a
 * rendered-byte prefix of the prompt text that the token comparison missed (BPE splits of
 * sampled text differ from canonical ones): then live + the independently tokenized rest.
 * *source names the rule for the trace. */
static int decide_prompt(srv_job *j, ds4_tokens *eff, const char **source) {
    const ds4_tokens *P = &j->tokens;
    size_t common = lcp(W.live.ids, W.live.n, P->ids, P->n);
    eff->n = 0;
    if (W.live.n == 0) *source = "cold";
    else if (common == W.live.n) *source = "memory-token";
    else *source = common ? "partial-token" : "token-mismatch";
    if (W.live.n > 0 && common < W.live.n) {
        char *bytes = NULL;
        size_t nb = 0;
        char err[128];
        if (ds4_tokenizer_decode(W.tok, W.live.ids, W.live.n, &bytes, &nb, err, sizeof err) == 0 && nb < j->prompt.len &&
            memcmp(bytes, j->prompt.text, nb) == 0) {
            ds4_tokens suf = {0};
            if (tokenize_suffix(&j->prompt, nb, &suf) == 0 && W.live.n + suf.n < (size_t)W.cfg->ctx && suf.n > 0) {
                for (size_t i = 0; i < W.live.n; i++) ds4_tokens_push(eff, W.live.ids[i]);
                for (size_t i = 0; i < suf.n; i++) ds4_tokens_push(eff, suf.ids[i]);
                *source = "memory-text";
            }
            ds4_tokens_free(&suf);
        }
        free(bytes);
        if (eff->n) return 0;
    }
    for (size_t i = 0; i < P->n; i++)
        if (ds4_tokens_push(eff, P->ids[i])) return -1;
    return 0;
}

static void kv_open(void);

/* ---- one job ---------------------------------------------------------------------------------- */

typedef struct {
    srv_job *j;
    size_t call_counter;
} ev_ctx;

static void on_event(void *user, const ds4_dsml_event *ev) {
    ev_ctx *c = user;
    if (W.trace && ev->kind != DS4_DSML_EV_REASONING && ev->kind != DS4_DSML_EV_CONTENT && ev->kind != DS4_DSML_EV_CALL_ARGS)
        tracef("[event %d index=%zu %.*s]\n", (int)ev->kind, ev->index, (int)(ev->len > 200 ? 200 : ev->len), ev->text ? ev->text : "");
    if (c->j->ops->event) c->j->ops->event(c->j, ev);
}

static void make_id(void *user, size_t index, char *buf, size_t cap) {
    ev_ctx *c = user;
    (void)index;
    char hex[33];
    srv_random_hex(hex, 32);
    snprintf(buf, cap, "%s%s", c->j->ops->call_id_prefix ? c->j->ops->call_id_prefix : "call_", hex);
}

static void fail_job(srv_job *j, int status, const char *msg) {
    if (j->ops->fail) j->ops->fail(j, status, status >= 500 ? "server_error" : "invalid_request_error", msg);
    else job_end(j);
}

/* Finds the earliest stop-string match starting at or after `from`; returns its position or
 * (size_t)-1. */
static size_t find_stop(const srv_job *j, const char *g, size_t n, size_t from, size_t *which) {
    size_t best = (size_t)-1;
    for (size_t s = 0; s < j->n_stops; s++) {
        size_t sl = strlen(j->stops[s]);
        if (sl > n) continue;
        const char *p = memmem(g + from, n - from, j->stops[s], sl);
        if (p && (size_t)(p - g) < best) {
            best = (size_t)(p - g);
            *which = s;
        }
    }
    return best;
}

static void run_job(srv_job *j) {
    const srv_config *cfg = W.cfg;
    double t0 = srv_now();
    ds4_tokens eff = {0}, forced = {0};
    char *gen = NULL;
    size_t gen_len = 0, gen_cap = 0;
    ds4_dsml_parser *parser = NULL;
    ds4_tokstream *ts = NULL;
    ds4_dsml_result res = {0};
    bool have_res = false;
    char err[256];
    const char *source = "cold";

    if (job_cancelled(j)) goto out;
    if (atomic_load(&g_shutdown)) {
        fail_job(j, 503, "server shutting down");
        goto out;
    }
    int nforced = load_forced(&forced);
    if (nforced < 0) {
        fprintf(stderr, "ds4-server: --debug-force-tokens %s: not a JSON array of token ids; ignored\n", cfg->force_tokens_path);
        forced.n = 0;
    }

    if (decide_prompt(j, &eff, &source)) {
        fail_job(j, 500, "out of memory");
        goto out;
    }
    if ((long long)eff.n >= cfg->ctx) {
        fail_job(j, 400, "prompt exceeds context");
        goto out;
    }
    /* §6.2 rules 8-10: the prompt does not extend the live session. Save the live
     * checkpoint (evict), then try the longest stored prefix before a cold prefill. */
    bool cold = false;
    if (W.kv) {
        size_t common = lcp(W.live.ids, W.live.n, eff.ids, eff.n);
        if (W.live.n == 0 || common < W.live.n) {
            if (W.live.n > 0) kv_save_live(DS4_KV_REASON_EVICT);
            W.kv_frontier = 0; /* a live miss resets the continued-save counter */
            int tier = 0;
            if (kv_restore(j, common, &eff, &tier)) {
                source = tier == DS4_KV_DISK ? "disk-text" : "ram-text";
                pthread_mutex_lock(&M.mu);
                if (tier == DS4_KV_DISK) M.kv_disk_hits++;
                else M.kv_ram_hits++;
                pthread_mutex_unlock(&M.mu);
            } else {
                cold = true;
            }
        }
    }
    if (W.trace) {
        tracef("===== request %" PRIu64 " %lld =====\nkind=%s model=%s stream=%d tools=%d think=%s prompt_tokens=%zu "
               "temp=%.3f top_p=%.3f top_k=%d min_p=%.3f forced=%zu\n",
               j->seq, j->created, k_api_names[j->api], j->model, j->stream, j->tools_active, ds4_chat_think_name(j->think),
               eff.n, j->sp.temperature, j->sp.top_p, j->sp.top_k, j->sp.min_p, forced.n);
        size_t common = lcp(W.live.ids, W.live.n, eff.ids, eff.n);
        tracef("--- cache decision ---\nlive=%zu common=%zu source=%s canonical=%zu\n", W.live.n, common, source, j->tokens.n);
        if (j->request_json) tracef("--- request ---\n%s\n", j->request_json);
        tracef("--- rendered prompt ---\n");
        trace_bytes(j->prompt.text, j->prompt.len);
        tracef("\n--- generated ---\n");
        fflush(W.trace);
    }

    /* Prefill in cancellable steps: each sync extends the timeline; the session keeps the
     * longest common prefix with what it holds, so the first step also does the rewind. */
    int evaluated = 0;
    {
        size_t common = lcp(W.live.ids, W.live.n, eff.ids, eff.n);
        size_t k = common;
        size_t step = (size_t)(cfg->prefill_step > 0 ? cfg->prefill_step : 256);
        /* §7.5 cold save point: the prefill stops there, saves, and goes on (no double
         * prefill). Only forward of what the session already shares (saves never roll
         * the session back). */
        size_t cold_at = 0;
        if (cold && cfg->kv_cold_max_tokens > 0 && (long long)eff.n >= cfg->kv_min_tokens &&
            (long long)eff.n <= cfg->kv_cold_max_tokens) {
            size_t c = kv_cold_len(&eff);
            if (c > common && c >= (size_t)cfg->kv_min_tokens) cold_at = c;
        }
        for (;;) {
            size_t next = k + step < eff.n ? k + step : eff.n;
            if (cold_at > k && cold_at < next) next = cold_at;
            if (W.kv && W.kv_step > 0) {
                size_t c = (k / (size_t)W.kv_step + 1) * (size_t)W.kv_step; /* next continued frontier */
                if (c < next) next = c;
            }
            k = next;
            if (k == 0) k = eff.n;
            int rc = ds4_session_sync(W.session, eff.ids, (int)k, NULL, NULL, err, sizeof err);
            if (rc) {
                W.live.n = 0;
                fail_job(j, 500, err);
                goto out;
            }
            evaluated += ds4_session_last_evaluated(W.session);
            W.live.n = 0;
            for (size_t i = 0; i < k; i++) ds4_tokens_push(&W.live, eff.ids[i]);
            if (cold_at && k == cold_at) {
                kv_save_live(DS4_KV_REASON_COLD); /* sets the frontier: suppresses a continued save here */
                cold_at = 0;
            }
            kv_maybe_continued();
            if (k >= eff.n) break;
            if (job_cancelled(j) || atomic_load(&g_shutdown)) goto out;
            if (j->stream && srv_now() - j->last_write >= 5.0) job_write(j, ": prefill\n\n", 11);
        }
    }
    double t1 = srv_now();
    srv_usage usage = {(int)eff.n, (int)eff.n - evaluated, 0};
    if (usage.cached_tokens < 0) usage.cached_tokens = 0;
    if (job_cancelled(j)) goto out;

    int max = j->max_tokens < 0 ? cfg->default_max_tokens : j->max_tokens;
    if ((long long)max > (long long)cfg->ctx - (long long)eff.n) max = cfg->ctx - (int)eff.n;

    ev_ctx ec = {j, 0};
    ds4_dsml_opts po = {
        .thinking = !j->raw_output && j->think != DS4_THINK_OFF,
        .tools_active = !j->raw_output && j->tools_active,
        .on_event = on_event,
        .user = &ec,
        .make_id = make_id,
        .id_user = &ec,
    };
    ts = ds4_tokstream_new(W.tok);
    if (!ts || ds4_dsml_parser_new(&po, &parser)) {
        fail_job(j, 500, "out of memory");
        goto out;
    }
    if (j->ops->begin) j->ops->begin(j);

    size_t max_stop = 0;
    for (size_t s = 0; s < j->n_stops; s++)
        if (strlen(j->stops[s]) > max_stop) max_stop = strlen(j->stops[s]);
    size_t fed = 0, forced_i = 0, stop_which = 0;
    const char *stop_matched = NULL;
    srv_finish fin = FIN_LENGTH;
    const char *fin_error = NULL;
    int n_vocab = ds4_engine_n_vocab(W.engine);
    ds4_rng rng;
    uint64_t seed = j->seed ? j->seed : ((uint64_t)time(NULL) ^ (j->seq * 0x9e3779b97f4a7c15ull) ^ (uint64_t)(uintptr_t)j);
    ds4_rng_seed(&rng, seed);

    /* The decode of a sampled token is deferred to the top of the next step, after its
     * text was handed to the emitters: a client sees each token one forward pass sooner
     * (time to first content = prefill, not prefill + one decode). `pending` says W.live
     * holds one token the session has not evaluated yet; it is evaluated before anything
     * that needs logits or a consistent session (sampling, continued save, the end). */
    bool pending = false;
    for (int produced = 0;;) {
        if (produced >= max) {
            fin = FIN_LENGTH;
            break;
        }
        if (job_cancelled(j)) {
            fin = FIN_ERROR;
            fin_error = "client disconnected";
            break;
        }
        if (atomic_load(&g_shutdown)) {
            fin = FIN_ERROR;
            fin_error = "shutdown requested";
            break;
        }
        if (pending) {
            pending = false;
            if (ds4_session_sync(W.session, W.live.ids, (int)W.live.n, NULL, NULL, err, sizeof err)) {
                W.live.n = 0;
                fin = FIN_ERROR;
                fin_error = "decode failed";
                break;
            }
        }
        /* §7.5 continued save before a decode step, not inside a DSML tool block */
        if (!po.tools_active || ds4_dsml_parser_state(parser) == DS4_DSML_OUTSIDE) kv_maybe_continued();
        int tok;
        if (forced.n) {
            tok = forced_i < forced.n ? forced.ids[forced_i++] : W.eos;
        } else {
            ds4_sample_params sp = j->sp;
            if (po.tools_active && ds4_dsml_state_greedy(ds4_dsml_parser_state(parser))) sp.temperature = 0;
            /* greedy: the top logit selected where the logits live (a GPU moves 8 bytes,
             * not the row); a finite one is ds4_sample_greedy's pick (largest finite, lowest
             * id on ties), otherwise the sampler decides on the whole row */
            int32_t top = -1;
            float topv = 0;
            if (!(sp.temperature > 0) && ds4_session_top_k(W.session, 1, &top, &topv, err, sizeof err) == 0 &&
                isfinite(topv)) {
                tok = top;
            } else {
                const float *logits = ds4_session_logits(W.session);
                tok = logits ? ds4_sample(logits, n_vocab, &sp, &rng, W.scratch, W.scratch_bytes) : -4;
            }
        }
        if (tok < 0) {
            fin = FIN_ERROR;
            fin_error = "sampling failed";
            break;
        }
        if (tok == W.eos) {
            fin = FIN_STOP;
            break;
        }
        if ((long long)W.live.n + 1 > cfg->ctx) {
            fin = FIN_LENGTH;
            break;
        }
        ds4_tokens_push(&W.live, tok);
        pending = true;
        produced++;
        usage.completion_tokens = produced;
        const char *d = NULL;
        size_t dn = 0;
        ds4_tokstream_push(ts, tok, &d, &dn);
        if (dn) {
            if (gen_len + dn + 1 > gen_cap) {
                size_t nc = gen_cap ? gen_cap * 2 : 4096;
                while (nc < gen_len + dn + 1) nc *= 2;
                char *g = realloc(gen, nc);
                if (!g) {
                    fin = FIN_ERROR;
                    fin_error = "out of memory";
                    break;
                }
                gen = g;
                gen_cap = nc;
            }
            size_t old = gen_len;
            memcpy(gen + gen_len, d, dn);
            gen_len += dn;
            gen[gen_len] = 0;
            trace_bytes(d, dn);
            if (max_stop) {
                size_t from = old >= max_stop - 1 ? old - (max_stop - 1) : 0;
                size_t m = find_stop(j, gen, gen_len, from, &stop_which);
                if (m != (size_t)-1) {
                    if (m > fed) ds4_dsml_parser_feed(parser, gen + fed, m - fed);
                    fed = gen_len = m;
                    stop_matched = j->stops[stop_which];
                    fin = FIN_STOP;
                    break;
                }
                size_t safe = gen_len >= max_stop - 1 ? gen_len - (max_stop - 1) : 0;
                if (safe > fed) {
                    ds4_dsml_parser_feed(parser, gen + fed, safe - fed);
                    fed = safe;
                }
            } else {
                ds4_dsml_parser_feed(parser, gen + fed, gen_len - fed);
                fed = gen_len;
            }
        }
        if (po.tools_active && ds4_dsml_parser_block_closed(parser)) {
            fin = FIN_TOOL_CALLS;
            break;
        }
    }
    /* The last token's text is out; evaluate it now (before the finish event) so the
     * session holds exactly W.live for the next request's KV reuse and for saves. */
    if (pending && ds4_session_sync(W.session, W.live.ids, (int)W.live.n, NULL, NULL, err, sizeof err)) {
        W.live.n = 0;
        if (fin != FIN_ERROR) {
            fin = FIN_ERROR;
            fin_error = "decode failed";
        }
    }
    if (!stop_matched) {
        const char *d = NULL;
        size_t dn = 0;
        ds4_tokstream_flush(ts, &d, &dn);
        if (dn && gen_len + dn + 1 <= gen_cap) {
            memcpy(gen + gen_len, d, dn);
            gen_len += dn;
        } else if (dn) {
            char *g = realloc(gen, gen_len + dn + 1);
            if (g) {
                gen = g;
                gen_cap = gen_len + dn + 1;
                memcpy(gen + gen_len, d, dn);
                gen_len += dn;
            }
        }
        if (gen_len > fed) ds4_dsml_parser_feed(parser, gen + fed, gen_len - fed);
        fed = gen_len;
    }
    ds4_dsml_parser_finish(parser);
    if (ds4_dsml_parser_result(parser, &res) == 0) have_res = true;
    double t2 = srv_now();

    if (have_res && !j->raw_output) {
        if (res.n_calls > 0 && fin != FIN_ERROR) fin = FIN_TOOL_CALLS;
        if (res.status == DS4_DSML_UNTERMINATED) {
            fin = FIN_ERROR;
            fin_error = "unterminated tool call";
        }
        if (res.n_calls > 0 && res.raw_dsml)
            for (size_t i = 0; i < res.n_calls; i++) toolmem_put(res.calls[i].id, res.raw_dsml, res.raw_dsml_len);
    }
    srv_final f = {
        .finish = fin,
        .parsed = have_res && !j->raw_output ? &res : NULL,
        .text = gen ? gen : "",
        .text_len = gen_len,
        .stop_matched = stop_matched,
        .usage = usage,
        .error = fin_error,
    };
    if (W.trace) {
        tracef("\n--- parsed message ---\nfinish=%s%s%s prompt=%d cached=%d completion=%d\n", srv_finish_name(fin),
               fin_error ? " error=" : "", fin_error ? fin_error : "", usage.prompt_tokens, usage.cached_tokens,
               usage.completion_tokens);
        if (have_res) {
            tracef("reasoning: %s\ncontent: %s\n", res.reasoning ? res.reasoning : "", res.content ? res.content : "");
            for (size_t i = 0; i < res.n_calls; i++)
                tracef("call %zu id=%s name=%s args=%s\n", i, res.calls[i].id, res.calls[i].name, res.calls[i].arguments);
        }
        fflush(W.trace);
    }
    /* counters first: a client that reads /metrics right after its response sees them */
    pthread_mutex_lock(&M.mu);
    M.prompt += (unsigned long long)usage.prompt_tokens;
    M.cached += (unsigned long long)usage.cached_tokens;
    M.generated += (unsigned long long)usage.completion_tokens;
    M.prefill_s += t1 - t0;
    M.decode_s += t2 - t1;
    M.requests_done++;
    pthread_mutex_unlock(&M.mu);
    if (j->ops->finish) j->ops->finish(j, &f);
    fprintf(stderr, "ds4-server: request %" PRIu64 " %s prompt=%d cached=%d (%s) gen=%d finish=%s prefill=%.2fs decode=%.2fs\n",
            j->seq, k_api_names[j->api], usage.prompt_tokens, usage.cached_tokens, source, usage.completion_tokens,
            srv_finish_name(fin), t1 - t0, t2 - t1);

out:
    job_end(j);
    if (have_res) ds4_dsml_result_free(&res);
    ds4_dsml_parser_free(parser);
    ds4_tokstream_free(ts);
    free(gen);
    ds4_tokens_free(&eff);
    ds4_tokens_free(&forced);
}

static void *worker_main(void *arg) {
    (void)arg;
    for (;;) {
        srv_job *j = queue_pop();
        if (!j) break;
        atomic_store(&W.busy, true);
        run_job(j);
        atomic_store(&W.busy, false);
        job_release(j);
    }
    return NULL;
}

int worker_start(const srv_worker_init *w, char *err, size_t errlen) {
    W.engine = w->engine;
    W.session = w->session;
    W.tok = w->tok;
    W.cfg = w->cfg;
    W.eos = ds4_tokenizer_special(W.tok, DS4_TOKEN_EOS);
    W.scratch_bytes = ds4_sample_scratch_bytes(ds4_engine_n_vocab(W.engine));
    W.scratch = malloc(W.scratch_bytes);
    if (!W.scratch) {
        snprintf(err, errlen, "out of memory (sampler scratch)");
        return -3;
    }
    if (W.cfg->trace_path) {
        W.trace = fopen(W.cfg->trace_path, "a");
        if (!W.trace) {
            snprintf(err, errlen, "--trace %s: %s", W.cfg->trace_path, strerror(errno));
            return -1;
        }
    }
    kv_open();
    if (pthread_create(&W.thread, NULL, worker_main, NULL)) {
        snprintf(err, errlen, "cannot start the worker thread");
        return -1;
    }
    W.started = true;
    return 0;
}

/* Opens the KV store before the worker starts; an unusable directory only disables the
 * disk tier (the store warns). */
static void kv_open(void) {
    const srv_config *c = W.cfg;
    if (!c->kv_disk_dir && c->kv_ram_sessions <= 0) return;
    ds4_kvstore_options o;
    ds4_kvstore_options_default(&o);
    o.dir = c->kv_disk_dir;
    if (c->kv_disk_space_mb) o.space_mb = c->kv_disk_space_mb;
    o.ram_sessions = c->kv_ram_sessions;
    o.ram_mb = c->kv_ram_mb;
    o.any_quant = !K.reject_different_quant;
    o.background_writer = true;
    W.kv_step = K.continued_interval;
    if (W.kv_step > 0 && K.align > 0) W.kv_step = (W.kv_step + K.align - 1) / K.align * K.align;
    char err[256];
    if (ds4_kvstore_open(&W.kv, W.engine, &o, err, sizeof err)) {
        fprintf(stderr, "ds4-server: warning: KV cache disabled: %s\n", err);
        W.kv = NULL;
        return;
    }
    ds4_kvstore_stats ks;
    ds4_kvstore_get_stats(W.kv, &ks);
    W.kv_where = (c->kv_ram_sessions > 0 ? DS4_KV_RAM : 0) | (ks.disk_enabled ? DS4_KV_DISK : 0);
    if (c->kv_disk_dir && !ks.disk_enabled)
        fprintf(stderr, "ds4-server: warning: --kv-disk-dir %s is not usable; no disk KV cache\n", c->kv_disk_dir);
    else if (c->kv_disk_dir)
        fprintf(stderr, "ds4-server: disk KV cache %s: %zu files, %.1f MiB\n", c->kv_disk_dir, ks.disk_files,
                ks.disk_bytes / 1048576.0);
}

void worker_stop(void) {
    queue_shutdown();
    if (W.started) pthread_join(W.thread, NULL);
    W.started = false;
    /* §7.5 shutdown save (the worker has exited: this thread owns the session now), then
     * close, which drains the background writes. */
    if (W.kv) {
        kv_save_live(DS4_KV_REASON_SHUTDOWN);
        ds4_kvstore *kv = W.kv;
        W.kv = NULL;
        ds4_kvstore_close(kv);
    }
    free(W.scratch);
    W.scratch = NULL;
    ds4_tokens_free(&W.live);
    toolmem_free_all();
    if (W.trace) fclose(W.trace);
    W.trace = NULL;
}
