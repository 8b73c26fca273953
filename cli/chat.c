/* chat.c — the conversation core of `ds4` (see chat.h): model + tokenizer + session,
 * transcript building and generation with streamed, reasoning-aware output.
 *
 * Owns: how generated text reaches the terminal — token ids go through the streaming
 * decoder (never half a UTF-8 character), then through the DSML/think parser, which
 * splits reasoning from the answer: reasoning is dimmed (ANSI ESC[90m) on a terminal,
 * plain when stdout is not one, hidden with --hide-reasoning; a newline separates it from
 * the answer; the `<think>`/`</think>` tags are not printed. Must not: read user input
 * or exit().
 */
#include "chat.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "term.h"

static int fail(char *err, size_t errlen, int code, const char *fmt, const char *a, const char *b) {
    snprintf(err, errlen, fmt, a, b);
    return code;
}

int ds4_cli_model_check(const char *path, char *err, size_t errlen) {
    struct stat st;
    if (stat(path, &st) == 0) return 0;
    if (errno == ENOENT)
        return fail(err, errlen, -5,
                    "model file %s not found. Download the weights with ./download_model.sh q2 (or q4; see README, "
                    "\"Getting the weights\"), which also creates the ./ds4flash.gguf link%s, or pass -m PATH",
                    path, "");
    return fail(err, errlen, -1, "cannot access model file %s: %s", path, strerror(errno));
}

static int push_id(ds4_tokens *t, int64_t v, char *err, size_t errlen) {
    if (ds4_tokens_push(t, (int32_t)v)) return fail(err, errlen, -3, "out of memory%s%s", "", "");
    return 0;
}

int ds4_cli_parse_ids(const char *spec, const char *flag, int32_t **out, int *n, char *err, size_t errlen) {
    ds4_tokens t = {0};
    *out = NULL;
    *n = 0;
    if (spec[0] == '@') {
        json_error_t je;
        json_t *root = json_load_file(spec + 1, 0, &je);
        if (!root) {
            snprintf(err, errlen, "%s %s: %s (line %d)", flag, spec, je.text, je.line);
            return -2;
        }
        size_t i;
        json_t *v;
        int rc = json_is_array(root) ? 0 : fail(err, errlen, -2, "%s %s: expected a JSON array of token ids", flag, spec);
        if (!rc) json_array_foreach(root, i, v) {
                if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
                    rc = fail(err, errlen, -2, "%s %s: expected non-negative integer token ids", flag, spec);
                    break;
                }
                if ((rc = push_id(&t, json_integer_value(v), err, errlen))) break;
            }
        json_decref(root);
        if (rc) {
            ds4_tokens_free(&t);
            return rc;
        }
    } else {
        const char *p = spec;
        for (;;) {
            char *end;
            errno = 0;
            long long v = strtoll(p, &end, 10);
            if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
                ds4_tokens_free(&t);
                return fail(err, errlen, -4, "%s: expected comma-separated non-negative integers, got '%s'", flag, spec);
            }
            int rc = push_id(&t, v, err, errlen);
            if (rc) {
                ds4_tokens_free(&t);
                return rc;
            }
            if (!*end) break;
            p = end + 1;
        }
    }
    *out = t.ids;
    *n = (int)t.n;
    return 0;
}

static ds4_think_mode requested_mode(ds4_cli_think t) {
    return t == DS4_CLI_NOTHINK ? DS4_THINK_OFF : t == DS4_CLI_THINK_MAX ? DS4_THINK_MAX : DS4_THINK_HIGH;
}

ds4_think_mode ds4_cli_chat_mode(const ds4_cli_chat *c, bool *degraded) {
    return ds4_chat_think_effective(requested_mode(c->think), c->ctx, degraded);
}

static int new_session(ds4_cli_chat *c, int ctx, ds4_session **out, char *err, size_t errlen) {
    ds4_session_options so;
    ds4_session_options_default(&so);
    so.ctx = ctx;
    so.prefill_chunk = c->o->prefill_chunk > 0 ? c->o->prefill_chunk : ds4_engine_prefill_chunk(c->e, so.ctx);
    size_t bytes = 0;
    int rc = ds4_engine_memory_estimate(c->e, &so, &bytes, err, errlen);
    if (rc) return rc;
    fprintf(stderr, "ds4: context buffers %.1f MiB (ctx=%d, backend=%s, prefill_chunk=%d)\n",
            (double)bytes / (1024.0 * 1024.0), ctx, ds4_engine_backend_name(c->e), so.prefill_chunk);
    rc = ds4_session_create(out, c->e, &so, err, errlen);
    if (rc) return rc;
    ds4_session_set_progress(*out, ds4_cli_progress_cb, &c->prog);
    return 0;
}

int ds4_cli_chat_open(ds4_cli_chat *c, const ds4_cli_opts *o, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    c->o = o;
    c->out = stdout;
    c->think = o->think;
    c->ctx = o->ctx;
    ds4_cli_progress_init(&c->prog);
    int rc = ds4_cli_model_check(o->model, err, errlen);
    if (rc) return rc;
    if (o->system && !(c->system = strdup(o->system))) return fail(err, errlen, -3, "out of memory%s%s", "", "");
    if (o->debug_force_tokens &&
        (rc = ds4_cli_parse_ids(o->debug_force_tokens, "--debug-force-tokens", &c->force, &c->n_force, err, errlen)))
        goto fail;
    ds4_engine_options eo;
    ds4_engine_options_default(&eo);
    eo.n_threads = o->threads;
    eo.exact = o->exact;
    eo.backend = o->backend == DS4_CLI_BACKEND_CPU ? DS4_BACKEND_CPU
               : o->backend == DS4_CLI_BACKEND_CUDA ? DS4_BACKEND_CUDA : DS4_BACKEND_AUTO;
    if ((rc = ds4_engine_open(&c->e, o->model, &eo, err, errlen))) goto fail;
    c->n_vocab = ds4_engine_n_vocab(c->e);
    if ((rc = ds4_tokenizer_open_gguf(&c->tok, o->model, err, errlen))) goto fail;
    if ((rc = ds4_tokenizer_require_chat_tokens(c->tok, err, errlen))) goto fail;
    if (ds4_tokenizer_vocab_size(c->tok) > c->n_vocab) {
        snprintf(err, errlen, "%s: the tokenizer has %d tokens but the model's vocabulary is %d", o->model,
                 (int)ds4_tokenizer_vocab_size(c->tok), c->n_vocab);
        rc = -2;
        goto fail;
    }
    for (int i = 0; i < DS4_TOKEN_SPECIAL_COUNT_; i++) c->id[i] = ds4_tokenizer_special(c->tok, (ds4_special_token)i);
    for (int i = 0; i < c->n_force; i++)
        if (c->force[i] >= c->n_vocab) {
            snprintf(err, errlen, "--debug-force-tokens: id %d is outside the vocabulary (%d)", (int)c->force[i], c->n_vocab);
            rc = -4;
            goto fail;
        }
    if (!(c->ts = ds4_tokstream_new(c->tok))) {
        rc = fail(err, errlen, -3, "out of memory%s%s", "", "");
        goto fail;
    }
    c->sp = ds4_sample_params_default();
    c->sp.temperature = (float)o->temp;
    c->sp.top_p = (float)o->top_p;
    c->sp.min_p = (float)o->min_p;
    c->sp.top_k = o->top_k;
    uint64_t seed = o->seed_set ? o->seed
                                : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)clock();
    ds4_rng_seed(&c->rng, seed);
    c->scratch_bytes = ds4_sample_scratch_bytes(c->n_vocab);
    if (!(c->scratch = malloc(c->scratch_bytes))) {
        rc = fail(err, errlen, -3, "out of memory%s%s", "", "");
        goto fail;
    }
    c->color = ds4_cli_color_stdout();
    c->show_reasoning = !o->hide_reasoning;
    if ((rc = new_session(c, c->ctx, &c->s, err, errlen))) goto fail;
    return 0;
fail:
    ds4_cli_chat_close(c);
    return rc;
}

void ds4_cli_chat_close(ds4_cli_chat *c) {
    ds4_session_free(c->s);
    ds4_engine_close(c->e);
    ds4_tokstream_free(c->ts);
    ds4_tokenizer_free(c->tok);
    ds4_tokens_free(&c->tr);
    free(c->system);
    free(c->scratch);
    free(c->force);
    memset(c, 0, sizeof *c);
}

int ds4_cli_chat_set_head(ds4_cli_chat *c, char *err, size_t errlen) {
    /* Render [system?, user "x"] and keep the tokens before the first `<｜User｜>`: the
     * renderer is the single source of the head (BOS, Max prefix, system text). User and
     * system text are plain-encoded, so the first USER id is the template's. */
    ds4_chat_message m[2];
    size_t n = 0;
    if (c->system) m[n++] = (ds4_chat_message){.role = DS4_ROLE_SYSTEM, .content = c->system, .content_len = strlen(c->system)};
    m[n++] = (ds4_chat_message){.role = DS4_ROLE_USER, .content = "x", .content_len = 1};
    ds4_chat_render_opts ro = {.think = ds4_cli_chat_mode(c, NULL)};
    ds4_chat_prompt p;
    ds4_tokens h = {0};
    int rc = ds4_chat_render(m, n, &ro, &p, err, errlen);
    if (!rc) rc = ds4_chat_prompt_tokenize(&p, c->tok, &h, err, errlen);
    ds4_chat_prompt_free(&p);
    size_t cut = 0;
    while (!rc && cut < h.n && h.ids[cut] != c->id[DS4_TOKEN_USER]) cut++;
    if (!rc && cut == h.n) rc = fail(err, errlen, -2, "rendering the head: no user token%s%s", "", "");
    /* new transcript = head + old turns */
    ds4_tokens t = {0};
    for (size_t i = 0; !rc && i < cut; i++) rc = push_id(&t, h.ids[i], err, errlen);
    for (size_t i = c->head_len; !rc && i < c->tr.n; i++) rc = push_id(&t, c->tr.ids[i], err, errlen);
    ds4_tokens_free(&h);
    if (rc) {
        ds4_tokens_free(&t);
        return rc;
    }
    ds4_tokens_free(&c->tr);
    c->tr = t;
    c->head_len = cut;
    return 0;
}

int ds4_cli_chat_push_user(ds4_cli_chat *c, const char *text, size_t len, char *err, size_t errlen) {
    size_t n0 = c->tr.n;
    int rc = push_id(&c->tr, c->id[DS4_TOKEN_USER], err, errlen);
    if (!rc) rc = ds4_tokenizer_encode(c->tok, text, len, DS4_TOKENIZE_PLAIN, &c->tr, err, errlen);
    if (!rc) rc = push_id(&c->tr, c->id[DS4_TOKEN_ASSISTANT], err, errlen);
    if (!rc)
        rc = push_id(&c->tr, c->id[ds4_cli_chat_mode(c, NULL) == DS4_THINK_OFF ? DS4_TOKEN_THINK_END : DS4_TOKEN_THINK],
                     err, errlen);
    if (rc) c->tr.n = n0;
    return rc;
}

int ds4_cli_chat_push_rendered(ds4_cli_chat *c, const char *text, size_t len, char *err, size_t errlen) {
    return ds4_tokenizer_encode(c->tok, text, len, DS4_TOKENIZE_SPECIAL, &c->tr, err, errlen);
}

int ds4_cli_chat_set_ctx(ds4_cli_chat *c, int ctx, char *err, size_t errlen) {
    ds4_session *s = NULL;
    int rc = new_session(c, ctx, &s, err, errlen);
    if (rc) return rc;
    ds4_session_free(c->s);
    c->s = s;
    c->ctx = ctx;
    return 0;
}

/* ---------------------------------------------------------------- output */
typedef struct {
    ds4_cli_chat *c;
    bool dim;           /* ESC[90m is active */
    bool reasoning;     /* some reasoning text was printed */
    bool any;           /* anything printed */
    char last;          /* last byte printed */
    int write_error;
} emitter;

static void put(emitter *em, const char *s, size_t n) {
    if (!n) return;
    if (fwrite(s, 1, n, em->c->out) != n) em->write_error = 1;
    em->any = true;
    em->last = s[n - 1];
}

static void undim(emitter *em) {
    if (!em->dim) return;
    fputs("\x1b[0m", em->c->out);
    em->dim = false;
}

static void on_event(void *user, const ds4_dsml_event *ev) {
    emitter *em = user;
    switch (ev->kind) {
    case DS4_DSML_EV_REASONING:
        if (!em->c->show_reasoning || !ev->len) return;
        if (em->c->color && !em->dim) {
            fputs("\x1b[90m", em->c->out);
            em->dim = true;
        }
        put(em, ev->text, ev->len);
        em->reasoning = true;
        break;
    case DS4_DSML_EV_REASONING_END:
        undim(em);
        if (em->reasoning && em->last != '\n') put(em, "\n", 1);
        break;
    case DS4_DSML_EV_CONTENT:
        undim(em);
        put(em, ev->text, ev->len);
        break;
    default: /* no tools in the CLI: calls and DSML errors do not arise */
        break;
    }
}

static int feed(ds4_dsml_parser *p, const char *s, size_t n, char *err, size_t errlen) {
    if (n && ds4_dsml_parser_feed(p, s, n)) return fail(err, errlen, -3, "out of memory%s%s", "", "");
    return 0;
}

/* The next token: forced, greedy, or sampled. Greedy takes the top logit where the logits
 * live (ds4_session_top_k: a GPU moves 8 bytes, not the 517 KB row); a finite top is
 * ds4_sample_greedy's pick (largest finite, lowest id on ties), otherwise — as in the
 * server — the row decides. PICK_NO_LOGITS: the session has no logits (other negative
 * values: the sampler's errors). */
enum { PICK_NO_LOGITS = -1000 };
static int pick(ds4_cli_chat *c) {
    if (c->force_pos < c->n_force) return c->force[c->force_pos++];
    if (c->sp.temperature <= 0) {
        int32_t top = -1;
        float v = 0;
        char e[128];
        if (ds4_session_top_k(c->s, 1, &top, &v, e, sizeof e) == 0 && isfinite(v)) return top;
    }
    const float *logits = ds4_session_logits(c->s);
    if (!logits) return PICK_NO_LOGITS;
    if (c->sp.temperature <= 0) return ds4_sample_greedy(logits, c->n_vocab);
    return ds4_sample(logits, c->n_vocab, &c->sp, &c->rng, c->scratch, c->scratch_bytes);
}

int ds4_cli_chat_reply(ds4_cli_chat *c, int n_max, ds4_cli_stats *st, char *err, size_t errlen) {
    memset(st, 0, sizeof *st);
    const int n0 = (int)c->tr.n;
    st->prompt_tokens = n0;
    if (n0 <= 0) return fail(err, errlen, -4, "empty prompt%s%s", "", "");
    if (n0 >= c->ctx) {
        snprintf(err, errlen, "the prompt is %d tokens, the context holds %d: raise --ctx (or /ctx N)", n0, c->ctx);
        return -4;
    }
    if (c->o->debug_prompt_tokens) {
        fputs("ds4: prompt tokens: [", stderr);
        for (int i = 0; i < n0; i++) fprintf(stderr, "%s%d", i ? "," : "", (int)c->tr.ids[i]);
        fputs("]\n", stderr);
    }
    double t0 = ds4_cli_now();
    int rc = ds4_session_sync(c->s, c->tr.ids, n0, NULL, NULL, err, errlen);
    ds4_cli_progress_clear(&c->prog);
    st->prefilled = ds4_session_last_evaluated(c->s);
    st->prefill_s = ds4_cli_now() - t0;
    if (rc == -8) {
        st->stop = "interrupted";
        return 0;
    }
    if (rc) return rc;

    emitter em = {.c = c};
    ds4_dsml_opts po = {.thinking = c->tr.ids[n0 - 1] == c->id[DS4_TOKEN_THINK], .tools_active = false,
                        .on_event = on_event, .user = &em};
    ds4_dsml_parser *parser = NULL;
    if (ds4_dsml_parser_new(&po, &parser)) return fail(err, errlen, -3, "out of memory%s%s", "", "");
    ds4_tokstream_reset(c->ts);
    const char *d;
    size_t dn;
    double t1 = ds4_cli_now();
    st->stop = "length";
    for (;;) {
        if (ds4_cli_interrupted()) {
            st->stop = "interrupted";
            break;
        }
        if (n_max >= 0 && st->generated >= n_max) break;
        int t = pick(c);
        if (t == PICK_NO_LOGITS) {
            rc = fail(err, errlen, -4, "no logits after the prompt%s%s", "", "");
            break;
        }
        if (t < 0) {
            rc = fail(err, errlen, -4, "sampling failed (no finite logit)%s%s", "", "");
            break;
        }
        if (t == c->id[DS4_TOKEN_EOS]) {
            st->stop = "eos";
            break;
        }
        if ((rc = push_id(&c->tr, t, err, errlen))) break;
        st->generated++;
        if (ds4_tokstream_push(c->ts, t, &d, &dn)) {
            snprintf(err, errlen, "generated token %d has no text in the vocabulary", t);
            rc = -2;
            break;
        }
        if ((rc = feed(parser, d, dn, err, errlen))) break;
        fflush(c->out);
        if (em.write_error) {
            rc = fail(err, errlen, -1, "writing the reply failed%s%s", "", "");
            break;
        }
        if (n_max >= 0 && st->generated >= n_max) break;
        if ((int)c->tr.n >= c->ctx) {
            st->stop = "context";
            break;
        }
        rc = ds4_session_sync(c->s, c->tr.ids, (int)c->tr.n, NULL, NULL, err, errlen);
        if (rc == -8) { /* Ctrl+C seen by the progress callback */
            rc = 0;
            st->stop = "interrupted";
            break;
        }
        if (rc) break;
    }
    st->gen_s = ds4_cli_now() - t1;
    ds4_tokstream_flush(c->ts, &d, &dn);
    if (!rc) rc = feed(parser, d, dn, err, errlen);
    /* Finishing flushes what the parser holds back; a parser that was never fed holds
     * nothing (and finishing one trips a NULL memcmp in dsml.c under UBSan). */
    if (st->generated && ds4_dsml_parser_finish(parser) && !rc) rc = fail(err, errlen, -3, "out of memory%s%s", "", "");
    ds4_dsml_parser_free(parser);
    undim(&em);
    /* The reply always ends with one newline, so the next prompt or shell line starts
     * clean; scripts strip exactly one. */
    fputc('\n', c->out);
    fflush(c->out);
    return rc;
}
