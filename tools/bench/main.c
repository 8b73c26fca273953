/* main.c — ds4-bench: prefill and decode throughput at context frontiers (CLI.md ds4-bench,
 * SERVING.md §9), plus the weight traffic per decoded token and a process memory report.
 *
 * Owns: flag parsing, the frontier loop (sync to f tokens: timed prefill of the new
 * interval; snapshot; gen-tokens greedy non-EOS decode steps: timed; restore), the CSV.
 * Must not: reach into engine internals — the run goes through include/ds4.h only; the
 * model is opened a second time (src/model, mmap, no copy) just to count tensor bytes.
 *
 * Token source: --prompt-file (raw text, tokenized as plain text with the model's
 * vocabulary), else synthetic ids: uniform over the vocabulary from a fixed xorshift
 * seed (--seed), so runs are reproducible without any text.
 *
 * Synthetic weights (--synthetic flash|tiny --type q2|q4|q8 [--layers N] [--vocab N]): the
 * model is generated in memory by src/model/synthetic.c — the same bytes that
 * `ds4-quantize --synthetic ... --seed S` writes to a file, placeholder vocabulary
 * included — and opened with ds4_engine_open_buffer, so the engine, and the CUDA backend's
 * one upload of the data section, run exactly as on a file, with no file on disk. --seed
 * seeds both the weights and the synthetic ids. --synthetic-dump FILE writes the buffer
 * out (the tests compare it with ds4-quantize's file).
 *
 * Extra flags beyond the spec: --weight-bytes (print the per-token traffic and exit),
 * --logits-out FILE (append the f32 logits of the last prefilled position of every
 * frontier and of every decode step: for determinism checks), --prefill-chunk,
 * --rewind-window, --exact, --seed. The memory report (stderr, one line starting with
 * "memory:") gives the engine's estimate for the session and /proc/self/status figures;
 * the line before it ("kv:") the KV bytes per token of context (session_kv.h) and the
 * last frontier's snapshot size.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench.h"
#include "ds4.h"
#include "ds4_tokenizer.h"
#include "model/gguf.h"
#include "engine/session_fill.h"
#include "engine/session_kv.h"
#include "model/synthetic.h"
#include "../quantize/quantize.h"

typedef struct {
    const char *model, *prompt_file, *csv, *logits_out;
    const char *synthetic, *synth_type, *synth_dump; /* --synthetic SHAPE, --type, --synthetic-dump */
    int synth_layers, synth_vocab;
    int ctx_start, ctx_max, ctx_alloc, step_incr, gen_tokens, threads, prefill_chunk, rewind_window;
    double step_mul;
    unsigned long long seed;
    bool exact, cuda, warm, weight_bytes_only;
    bool fill_kv;       /* --fill-kv: synthetic KV state at each frontier instead of a prefill */
} bench_opts;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds of the whole process (all threads): with wall time it shows how much of
 * the machine the run really had (the benchmark box may be shared). */
static double cpu_s(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)ru.ru_stime.tv_usec;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: ds4-bench [options]\n"
            "  -m, --model PATH        GGUF (default ./ds4flash.gguf)\n"
            "  --prompt-file F         raw text, tokenized as plain text (else synthetic ids)\n"
            "  --seed N                seed of the synthetic ids (default 1)\n"
            "  --ctx-start N           first frontier (default 2048)\n"
            "  --ctx-max N             last frontier (default 32768)\n"
            "  --ctx-alloc N           session context (default ctx-max + gen-tokens + 1)\n"
            "  --step-incr N           frontier step when --step-mul is 1 (default 2048)\n"
            "  --step-mul F            next frontier = ceil(cur * F) (default 1: linear)\n"
            "  --gen-tokens N          greedy decode steps per frontier (aliases --tokens, -n; 128)\n"
            "  --csv FILE              CSV output (default stdout)\n"
            "  -t, --threads N         CPU threads (default all cores)\n"
            "  --cpu | --cuda          backend (--cuda needs a make cuda build and a GPU)\n"
            "  --prefill-chunk N       tokens per prefill step (engine default)\n"
            "  --rewind-window N       session rewind window W (engine default)\n"
            "  --exact                 reference numerics instead of production\n"
            "  --fill-kv               no prefill: each frontier's KV state is seeded random rows\n"
            "                          (decode speed at long contexts; prefill columns are 0)\n"
            "  --warm-weights          read the model file once before timing (page cache)\n"
            "  --logits-out FILE       append f32 logits of each frontier and decode step\n"
            "  --weight-bytes          print the weight bytes a decoded token reads, exit\n"
            "  --synthetic flash|tiny  random weights generated in memory instead of -m (no file)\n"
            "  --type q2|q4|q8|...     recipe of the synthetic weights (default q2)\n"
            "  --layers N              synthetic layer count (default: the shape's)\n"
            "  --vocab N               synthetic vocabulary size (default: the shape's)\n"
            "  --synthetic-dump FILE   write the in-memory GGUF to FILE (for comparisons)\n");
}

static int parse_int(const char *flag, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "ds4-bench: %s: expected an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_args(int argc, char **argv, bench_opts *o) {
    memset(o, 0, sizeof *o);
    o->model = "ds4flash.gguf";
    o->ctx_start = 2048;
    o->ctx_max = 32768;
    o->step_incr = 2048;
    o->step_mul = 1;
    o->gen_tokens = 128;
    o->seed = 1;
    o->prefill_chunk = -1;
    o->rewind_window = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDV()                                                          \
    do {                                                                 \
        if (!v) {                                                        \
            fprintf(stderr, "ds4-bench: %s needs a value\n", a);         \
            return -1;                                                   \
        }                                                                \
        i++;                                                             \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            NEEDV();
            o->model = v;
        } else if (!strcmp(a, "--prompt-file")) {
            NEEDV();
            o->prompt_file = v;
        } else if (!strcmp(a, "--csv")) {
            NEEDV();
            o->csv = v;
        } else if (!strcmp(a, "--logits-out")) {
            NEEDV();
            o->logits_out = v;
        } else if (!strcmp(a, "--seed")) {
            NEEDV();
            char *end;
            errno = 0;
            o->seed = strtoull(v, &end, 10);
            if (errno || end == v || *end) {
                fprintf(stderr, "ds4-bench: --seed: expected a non-negative integer, got '%s'\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--ctx-start")) {
            NEEDV();
            if (parse_int(a, v, 1, 1 << 30, &o->ctx_start)) return -1;
        } else if (!strcmp(a, "--ctx-max")) {
            NEEDV();
            if (parse_int(a, v, 1, 1 << 30, &o->ctx_max)) return -1;
        } else if (!strcmp(a, "--ctx-alloc")) {
            NEEDV();
            if (parse_int(a, v, 1, 1 << 30, &o->ctx_alloc)) return -1;
        } else if (!strcmp(a, "--step-incr")) {
            NEEDV();
            if (parse_int(a, v, 1, 1 << 30, &o->step_incr)) return -1;
        } else if (!strcmp(a, "--step-mul")) {
            NEEDV();
            char *end;
            errno = 0;
            o->step_mul = strtod(v, &end);
            if (errno || end == v || *end || !(o->step_mul >= 1 && o->step_mul <= 1e6)) {
                fprintf(stderr, "ds4-bench: --step-mul: expected a number >= 1, got '%s'\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--gen-tokens") || !strcmp(a, "--tokens") || !strcmp(a, "-n")) {
            NEEDV();
            if (parse_int(a, v, 0, 1 << 30, &o->gen_tokens)) return -1;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            NEEDV();
            if (parse_int(a, v, 0, 4096, &o->threads)) return -1;
        } else if (!strcmp(a, "--prefill-chunk")) {
            NEEDV();
            if (parse_int(a, v, 1, 65536, &o->prefill_chunk)) return -1;
        } else if (!strcmp(a, "--rewind-window")) {
            NEEDV();
            if (parse_int(a, v, 0, 1 << 30, &o->rewind_window)) return -1;
        } else if (!strcmp(a, "--synthetic")) {
            NEEDV();
            o->synthetic = v;
        } else if (!strcmp(a, "--type")) {
            NEEDV();
            o->synth_type = v;
        } else if (!strcmp(a, "--synthetic-dump")) {
            NEEDV();
            o->synth_dump = v;
        } else if (!strcmp(a, "--layers")) {
            NEEDV();
            if (parse_int(a, v, 1, 64, &o->synth_layers)) return -1;
        } else if (!strcmp(a, "--vocab")) {
            NEEDV();
            if (parse_int(a, v, 263, 1 << 24, &o->synth_vocab)) return -1;
        } else if (!strcmp(a, "--cpu")) {
            o->cuda = false;
        } else if (!strcmp(a, "--cuda")) {
            o->cuda = true;
        } else if (!strcmp(a, "--exact")) {
            o->exact = true;
        } else if (!strcmp(a, "--fill-kv")) {
            o->fill_kv = true;
        } else if (!strcmp(a, "--warm-weights")) {
            o->warm = true;
        } else if (!strcmp(a, "--weight-bytes")) {
            o->weight_bytes_only = true;
        } else {
            fprintf(stderr, "ds4-bench: unknown flag '%s' (--help lists them)\n", a);
            return -1;
        }
#undef NEEDV
    }
    if (!o->synthetic && (o->synth_type || o->synth_dump || o->synth_layers || o->synth_vocab)) {
        fprintf(stderr, "ds4-bench: --type, --layers, --vocab and --synthetic-dump need --synthetic\n");
        return -1;
    }
    if (o->synthetic && o->prompt_file) {
        fprintf(stderr, "ds4-bench: --prompt-file needs a model file (-m), not --synthetic\n");
        return -1;
    }
    if (o->ctx_start > o->ctx_max) {
        fprintf(stderr, "ds4-bench: --ctx-start %d exceeds --ctx-max %d\n", o->ctx_start, o->ctx_max);
        return -1;
    }
    long long need = (long long)o->ctx_max + o->gen_tokens;
    if (!o->ctx_alloc) {
        if (need + 1 > (1 << 30)) {
            fprintf(stderr, "ds4-bench: ctx-max + gen-tokens is too large\n");
            return -1;
        }
        o->ctx_alloc = (int)(need + 1);
    } else if (o->ctx_alloc <= need) {
        fprintf(stderr, "ds4-bench: --ctx-alloc %d must exceed ctx-max + gen-tokens (%lld)\n", o->ctx_alloc, need);
        return -1;
    }
    return 0;
}

/* The model under test: a file (buf NULL) or the synthetic image in memory. */
typedef struct {
    const char *path;
    const uint8_t *buf;
    size_t size;
} model_src;

static int open_src_gguf(const model_src *ms, ds4_gguf **g, char *err, size_t errlen) {
    return ms->buf ? ds4_gguf_open_buffer(g, ms->buf, ms->size, err, errlen) : ds4_gguf_open(g, ms->path, err, errlen);
}

static void print_weight_bytes(const model_src *ms, FILE *f) {
    char err[512];
    ds4_model *m = NULL;
    ds4_gguf *g = NULL;
    if (open_src_gguf(ms, &g, err, sizeof err) < 0 || ds4_model_from_gguf(&m, g, err, sizeof err) < 0) {
        fprintf(stderr, "ds4-bench: %s\n", err);
        return;
    }
    ds4_bench_bytes b;
    ds4_bench_weight_bytes(m, &b);
    const double G = 1e9;
    fprintf(f,
            "weight bytes per decoded token (%u layers, %u of %u experts): total %llu (%.4f GB)\n"
            "  embed_row %llu, attn %.4f GB, hc %.4f GB, compressor %.4f GB, indexer %.4f GB,\n"
            "  router %.4f GB, shared %.4f GB, routed %.4f GB, head %.4f GB; model file tensors %.4f GB\n",
            m->hp.n_layer, m->hp.n_expert_used, m->hp.n_expert, (unsigned long long)b.total, b.total / G,
            (unsigned long long)b.embed_row, b.attn / G, b.hc / G, b.compressor / G, b.indexer / G, b.router / G,
            b.shared / G, b.routed / G, b.head / G, m->weight_bytes / G);
    ds4_model_close(m);
}

/* Reads the file once so that page faults during the timed runs are minor. */
static int warm_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "ds4-bench: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    static char buf[1 << 20];
    while (fread(buf, 1, sizeof buf, f) == sizeof buf) {
    }
    fclose(f);
    return 0;
}

static int load_prompt(const bench_opts *o, ds4_tokens *toks) {
    char err[512];
    FILE *f = fopen(o->prompt_file, "rb");
    if (!f) {
        fprintf(stderr, "ds4-bench: --prompt-file %s: %s\n", o->prompt_file, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    char *text = malloc(cap);
    for (;;) {
        if (!text) {
            fclose(f);
            fprintf(stderr, "ds4-bench: out of memory\n");
            return -1;
        }
        n += fread(text + n, 1, cap - n, f);
        if (n < cap) break;
        cap *= 2;
        char *t = realloc(text, cap);
        if (!t) free(text);
        text = t;
    }
    fclose(f);
    ds4_tokenizer *tk = NULL;
    int rc = ds4_tokenizer_open_gguf(&tk, o->model, err, sizeof err);
    if (rc == 0) rc = ds4_tokenizer_encode(tk, text, n, DS4_TOKENIZE_PLAIN, toks, err, sizeof err);
    ds4_tokenizer_free(tk);
    free(text);
    if (rc < 0) {
        fprintf(stderr, "ds4-bench: %s\n", err);
        return -1;
    }
    return 0;
}

/* EOS id from the GGUF metadata, -1 when absent (then no token is excluded). */
static int32_t eos_id(const model_src *ms) {
    char err[256];
    ds4_gguf *g = NULL;
    uint32_t v;
    int32_t id = -1;
    if (open_src_gguf(ms, &g, err, sizeof err) == 0 &&
        ds4_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &v, err, sizeof err) == 0)
        id = (int32_t)v;
    ds4_gguf_close(g);
    return id;
}

static int32_t argmax_not(const float *lg, int n, int32_t skip) {
    int32_t best = -1;
    for (int i = 0; i < n; i++)
        if (i != skip && (best < 0 || lg[i] > lg[best])) best = i;
    return best;
}

/* The next greedy token, EOS excluded: from the host row lg when given, else the top two
 * selected where the logits are (ds4_session_top_k; their values' finiteness counted). */
static int pick_next(ds4_session *s, const float *lg, int nv, int32_t eos, int32_t *next, int *nonfinite, char *err,
                     size_t errlen) {
    if (lg) {
        *next = argmax_not(lg, nv, eos);
        return 0;
    }
    int32_t top[2];
    float tv[2];
    int rc = ds4_session_top_k(s, 2, top, tv, err, errlen);
    if (rc < 0) return rc;
    *next = top[0] != eos ? top[0] : top[1];
    *nonfinite += !isfinite(tv[0]) + !isfinite(tv[1]);
    return 0;
}

static int synth_vocab_cb(ds4_gguf_writer *w, void *user, uint32_t n_vocab, uint32_t bos, uint32_t eos, char *err,
                          size_t errlen) {
    return ds4_quantize_write_vocab(w, NULL, n_vocab, bos, eos, err, errlen);
}

/* Generates the synthetic model into ms (all cores) and reports size and time; with
 * --synthetic-dump also writes it out. */
static int build_synthetic(const bench_opts *o, model_src *ms) {
    char err[512];
    const char *type = o->synth_type ? o->synth_type : "q2";
    int rec = ds4_recipe_parse(type);
    if (rec < 0) {
        fprintf(stderr, "ds4-bench: --type %s: expected f32, f16, bf16, q8, q4 or q2\n", type);
        return -1;
    }
    ds4_synth_opts so = {.shape = o->synthetic, .recipe = rec, .layers = (uint32_t)o->synth_layers,
                         .vocab = (uint32_t)o->synth_vocab, .seed = o->seed, .threads = 0,
                         .vocab_fn = synth_vocab_cb};
    ds4_synth_info info;
    uint8_t *buf = NULL;
    size_t n = 0;
    if (ds4_synth_build(&so, &buf, &n, &info, err, sizeof err) < 0) {
        fprintf(stderr, "ds4-bench: --synthetic: %s\n", err);
        return -1;
    }
    fprintf(stderr, "ds4-bench: synthetic %s %s, %u layers, seed %llu: %zu tensors, %.2f GiB image, generated in %.2f s (%.2f GB/s)\n",
            o->synthetic, ds4_recipe_name((ds4_recipe)rec), info.n_layer, o->seed, info.n_tensors,
            (double)n / (1u << 30), info.seconds, info.seconds > 0 ? (double)n / 1e9 / info.seconds : 0.0);
    ms->buf = buf;
    ms->size = n;
    if (o->synth_dump) {
        FILE *f = fopen(o->synth_dump, "wb");
        bool ok = f && fwrite(buf, 1, n, f) == n;
        if (f && fclose(f) != 0) ok = false;
        if (!ok) {
            fprintf(stderr, "ds4-bench: --synthetic-dump %s: %s\n", o->synth_dump, strerror(errno));
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    bench_opts o;
    if (parse_args(argc, argv, &o) < 0) return 2;
    model_src ms = {o.model, NULL, 0};
    if (o.synthetic) {
        ms.path = o.synthetic;
        if (build_synthetic(&o, &ms) < 0) {
            ds4_synth_free((uint8_t *)ms.buf, ms.size);
            return 1;
        }
    }
    if (o.weight_bytes_only) {
        print_weight_bytes(&ms, stdout);
        ds4_synth_free((uint8_t *)ms.buf, ms.size);
        return 0;
    }
    char err[512];
    int status = 1;
    ds4_tokens toks = {0};
    ds4_engine *e = NULL;
    ds4_session *s = NULL;
    int32_t *work = NULL;
    uint8_t *snap = NULL;
    FILE *csv = stdout, *lout = NULL;

    if (o.prompt_file) {
        if (load_prompt(&o, &toks) < 0) goto done;
    }
    if (o.warm && !ms.buf && warm_file(o.model) < 0) goto done;
    const int32_t eos = eos_id(&ms);
    ds4_bench_mem m0;
    ds4_bench_mem_read(&m0);

    ds4_engine_options eo;
    ds4_engine_options_default(&eo);
    eo.n_threads = o.threads;
    eo.exact = o.exact;
    eo.backend = o.cuda ? DS4_BACKEND_CUDA : DS4_BACKEND_CPU; /* CUDA: built with make cuda */
    double t_open = now_s();
    if ((ms.buf ? ds4_engine_open_buffer(&e, ms.buf, ms.size, &eo, err, sizeof err)
                : ds4_engine_open(&e, o.model, &eo, err, sizeof err)) < 0) {
        fprintf(stderr, "ds4-bench: %s\n", err);
        goto done;
    }
    t_open = now_s() - t_open;
    const int nv = ds4_engine_n_vocab(e);
    if (!o.prompt_file) {
        /* xorshift64* over [0, n_vocab) */
        unsigned long long x = o.seed * 0x9E3779B97F4A7C15ull + 1;
        for (int i = 0; i < o.ctx_max; i++) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            if (ds4_tokens_push(&toks, (int32_t)((x * 0x2545F4914F6CDD1Dull >> 33) % (unsigned long long)nv)) < 0) {
                fprintf(stderr, "ds4-bench: out of memory\n");
                goto done;
            }
        }
    }
    if (toks.n < (size_t)o.ctx_max) {
        fprintf(stderr, "ds4-bench: the prompt has %zu tokens, --ctx-max needs %d\n", toks.n, o.ctx_max);
        goto done;
    }
    ds4_session_options so;
    ds4_session_options_default(&so);
    so.ctx = o.ctx_alloc;
    so.prefill_chunk = o.prefill_chunk > 0 ? o.prefill_chunk : ds4_engine_prefill_chunk(e, so.ctx);
    if (o.rewind_window >= 0) so.rewind_window = o.rewind_window;
    size_t estimate = 0;
    if (ds4_engine_memory_estimate(e, &so, &estimate, err, sizeof err) < 0 ||
        ds4_session_create(&s, e, &so, err, sizeof err) < 0) {
        fprintf(stderr, "ds4-bench: %s\n", err);
        goto done;
    }
    print_weight_bytes(&ms, stderr);
    fprintf(stderr, "ds4-bench: %s, backend %s, threads %d, %s numerics, ctx %d, chunk %d, W %d, open %.2f s\n",
            ms.path, ds4_engine_backend_name(e), o.threads, o.exact ? "exact" : "production", so.ctx,
            so.prefill_chunk, so.rewind_window, t_open);

    work = malloc((size_t)o.ctx_alloc * sizeof *work);
    if (!work) {
        fprintf(stderr, "ds4-bench: out of memory\n");
        goto done;
    }
    memcpy(work, toks.ids, (size_t)o.ctx_max * sizeof *work);
    if (o.csv && !(csv = fopen(o.csv, "w"))) {
        fprintf(stderr, "ds4-bench: --csv %s: %s\n", o.csv, strerror(errno));
        csv = stdout;
        goto done;
    }
    if (o.logits_out && !(lout = fopen(o.logits_out, "wb"))) {
        fprintf(stderr, "ds4-bench: --logits-out %s: %s\n", o.logits_out, strerror(errno));
        goto done;
    }
    fprintf(csv, "ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes\n");
    fflush(csv);

    size_t snap_cap = 0;
    int prev = 0;
    int nonfinite = 0;
    size_t last_snap = 0; /* snapshot bytes at the last frontier */
    for (int f = o.ctx_start;;) {
        double t_fill = 0;
        if (o.fill_kv) {  /* the state of f evaluated tokens without evaluating them */
            const double tf = now_s();
            if (ds4_session_fill_synthetic(s, work, f, (uint64_t)o.seed, err, sizeof err) < 0) {
                fprintf(stderr, "ds4-bench: fill to %d: %s\n", f, err);
                goto done;
            }
            t_fill = now_s() - tf;
        }
        double t0 = now_s(), c0 = cpu_s();
        if (ds4_session_sync(s, work, f, NULL, NULL, err, sizeof err) < 0) {
            fprintf(stderr, "ds4-bench: prefill to %d: %s\n", f, err);
            goto done;
        }
        /* a sync returns once its work is queued: the prefill ends when its logits exist */
        const float *lg = ds4_session_logits(s);
        double t_pre = now_s() - t0, c_pre = cpu_s() - c0;
        for (int i = 0; i < nv; i++) nonfinite += !isfinite(lg[i]);
        if (lout) fwrite(lg, sizeof(float), (size_t)nv, lout);
        size_t need = ds4_session_snapshot_size(s), written = 0;
        if (need > snap_cap) {
            uint8_t *p = realloc(snap, need);
            if (!p) {
                fprintf(stderr, "ds4-bench: cannot allocate a %zu-byte snapshot\n", need);
                goto done;
            }
            snap = p;
            snap_cap = need;
        }
        if (ds4_session_snapshot(s, snap, snap_cap, &written, err, sizeof err) < 0) {
            fprintf(stderr, "ds4-bench: snapshot: %s\n", err);
            goto done;
        }
        /* greedy, EOS excluded: the top two on the device (ds4_session_top_k) unless the
         * whole rows are wanted (--logits-out); then each row's finiteness is checked in
         * full, else the selected values' (the frontier's row above is always checked).
         * A step = sync + its selection, which waits for the step's work. */
        int32_t next_tok = -1;
        if (o.gen_tokens > 0 && pick_next(s, lout ? lg : NULL, nv, eos, &next_tok, &nonfinite, err, sizeof err) < 0) {
            fprintf(stderr, "ds4-bench: top-k at %d: %s\n", f, err);
            goto done;
        }
        double t1 = now_s(), c1 = cpu_s(), t_enq = 0;
        for (int g = 0; g < o.gen_tokens; g++) {
            work[f + g] = next_tok;
            const double te = now_s();
            if (ds4_session_sync(s, work, f + g + 1, NULL, NULL, err, sizeof err) < 0) {
                fprintf(stderr, "ds4-bench: decode at %d: %s\n", f + g, err);
                goto done;
            }
            t_enq += now_s() - te; /* host time to issue the step (a GPU backend returns before its work is done) */
            lg = lout ? ds4_session_logits(s) : NULL;
            if (lout) {
                for (int i = 0; i < nv; i++) nonfinite += !isfinite(lg[i]);
                fwrite(lg, sizeof(float), (size_t)nv, lout);
            }
            if (pick_next(s, lg, nv, eos, &next_tok, &nonfinite, err, sizeof err) < 0) {
                fprintf(stderr, "ds4-bench: top-k at %d: %s\n", f + g + 1, err);
                goto done;
            }
        }
        double t_gen = now_s() - t1, c_gen = cpu_s() - c1;
        if (o.fill_kv)
            fprintf(stderr, "frontier %d: synthetic KV fill %.3f s + last token %.3f s (no prefill); decode %d tokens %.3f s wall %.3f s cpu\n",
                    f, t_fill, t_pre, o.gen_tokens, t_gen, c_gen);
        else
            fprintf(stderr, "frontier %d: prefill %d tokens %.3f s wall %.3f s cpu; decode %d tokens %.3f s wall %.3f s cpu\n",
                    f, f - prev, t_pre, c_pre, o.gen_tokens, t_gen, c_gen);
        if (o.gen_tokens > 0)
            fprintf(stderr, "frontier %d: decode host time to issue a step %.3f ms (of %.3f ms per step)\n", f,
                    1e3 * t_enq / o.gen_tokens, 1e3 * t_gen / o.gen_tokens);
        fprintf(csv, "%d,%d,%.2f,%d,%.2f,%zu\n", f, o.fill_kv ? 0 : f - prev, o.fill_kv ? 0.0 : (f - prev) / t_pre,
                o.gen_tokens, o.gen_tokens ? o.gen_tokens / t_gen : 0.0, written);
        fflush(csv);
        last_snap = written;
        if (ds4_session_restore(s, snap, written, err, sizeof err) < 0) {
            fprintf(stderr, "ds4-bench: restore: %s\n", err);
            goto done;
        }
        /* the prompt tokens after f were overwritten by the generated ones */
        memcpy(work + f, toks.ids + f, (size_t)(o.ctx_max - f) * sizeof *work);
        prev = f;
        if (f >= o.ctx_max) break;
        long long next = o.step_mul > 1 ? (long long)ceil(f * o.step_mul) : (long long)f + o.step_incr;
        f = next > o.ctx_max ? o.ctx_max : (int)next;
    }
    /* KV growth with the context: cached compressed rows per token (f32, or the backend's
     * compact rows), independent of the frontier; the snapshot adds the fixed raw window
     * and compressor rings, the token ids and one logits row */
    fprintf(stderr, "kv: %.1f KV bytes per token of context (compressed rows); snapshot %zu bytes at %d tokens\n",
            ds4_session_kv_bytes_per_token(s), last_snap, prev);
    ds4_bench_mem m1;
    ds4_bench_mem_read(&m1);
    fprintf(stderr,
            "memory: estimate %zu, rss_anon_before %llu, rss_anon %llu, rss_file %llu, vm_hwm %llu, "
            "vm_hwm_minus_file %lld\n",
            estimate, (unsigned long long)m0.rss_anon, (unsigned long long)m1.rss_anon,
            (unsigned long long)m1.rss_file, (unsigned long long)m1.vm_hwm,
            (long long)m1.vm_hwm - (long long)m1.rss_file);
    fprintf(stderr, "nonfinite logits: %d\n", nonfinite);
    status = nonfinite ? 3 : 0;
done:
    if (csv && csv != stdout) fclose(csv);
    if (lout) fclose(lout);
    free(snap);
    free(work);
    ds4_session_free(s);
    ds4_engine_close(e);
    ds4_tokens_free(&toks);
    ds4_synth_free((uint8_t *)ms.buf, ms.size);
    return status;
}
