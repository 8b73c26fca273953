/* opts.c — `ds4` flag parsing. Strict: unknown flags, missing values and malformed
 * numbers are errors naming the flag, never silently ignored. */
#include "opts.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -4;
}

static int parse_int(const char *flag, const char *s, long lo, long hi, int *out, char *err, size_t errlen) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return fail(err, errlen, "%s: expected an integer in [%ld, %ld], got '%s'", flag, lo, hi, s);
    *out = (int)v;
    return 0;
}

static int parse_double(const char *flag, const char *s, double lo, double hi, double *out, char *err, size_t errlen) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return fail(err, errlen, "%s: expected a number in [%g, %g], got '%s'", flag, lo, hi, s);
    *out = v;
    return 0;
}

static bool takes_value(const char *a) {
    static const char *const k[] = {"-m", "--model", "-p", "--prompt", "--prompt-file", "-sys", "--system",
                                    "-n", "--n-predict", "--ctx", "--temp", "--top-p", "--min-p", "--top-k",
                                    "--seed", "-t", "--threads", "--prefill-chunk", "--tokens", "--dump-logits",
                                    "--dump-logprobs", "--logprobs-top-k", "--debug-force-tokens"};
    for (size_t j = 0; j < sizeof k / sizeof k[0]; j++)
        if (!strcmp(a, k[j])) return true;
    return false;
}

void ds4_cli_usage(void) {
    printf("usage: ds4 [options]\n"
           "  -m, --model PATH        GGUF model (default ./ds4flash.gguf)\n"
           "  -p, --prompt TEXT       user message (chat-rendered; with --raw, plain text)\n"
           "  --prompt-file F         read the prompt from a file\n"
           "  -sys, --system TEXT     system message\n"
           "  -n, --n-predict N       tokens to generate\n"
           "  --ctx N                 context size\n"
           "  --temp F --top-k N --top-p F --min-p F --seed N   sampling (--temp 0 = greedy)\n"
           "  --think | --nothink | --think-max                  thinking mode (default think)\n"
           "  --raw                   no chat template\n"
           "  --hide-reasoning        do not print the reasoning\n"
           "  --cpu | --cuda          backend\n"
           "  -t, --threads N         CPU threads\n"
           "  --prefill-chunk N       prompt processing chunk size (default: CPU 64, CUDA 4096)\n"
           "  --dump-tokens           print the prompt's tokens (ID<TAB>TEXT) and exit\n"
           "  --dump-rendered         print the rendered chat prompt's tokens and exit\n"
           "  --tokens LIST|@F.json   evaluate exactly these token ids\n"
           "  --dump-logits FILE      with --tokens: write float32 [n_tokens][n_vocab]\n"
           "  --exact                 reference math (no activation simulation)\n"
           "  --dump-logprobs FILE --logprobs-top-k K   greedy continuation with top-K alternatives (K 1..128, default 20) as JSON\n"
           "  --debug-prompt-tokens   print the prompt's token ids on stderr before generating\n"
           "  --debug-force-tokens LIST|@F.json   tests: generate these ids instead of sampling\n"
           "Without -p/--prompt-file: interactive chat on a terminal (/help lists its commands),\n"
           "one prompt per line when stdin is not a terminal.\n");
}

int ds4_cli_parse(int argc, char **argv, ds4_cli_opts *o, char *err, size_t errlen) {
    memset(o, 0, sizeof *o);
    o->model = "./ds4flash.gguf";
    o->n_predict = -1;
    o->ctx = 32768;
    o->temp = 1.0;
    o->top_p = 1.0;
    o->min_p = 0.05;
    o->top_k = 0;
    o->logprobs_top_k = 20;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define FLAG(s) (!strcmp(a, s))
#define VALUE() (argv[++i])
        if (takes_value(a) && i + 1 >= argc) return fail(err, errlen, "%s: missing value", a);
        int rc = 0;
        if (FLAG("-h") || FLAG("--help")) {
            ds4_cli_usage();
            return 1;
        } else if (FLAG("-m") || FLAG("--model")) o->model = VALUE();
        else if (FLAG("-p") || FLAG("--prompt")) o->prompt = VALUE();
        else if (FLAG("--prompt-file")) o->prompt_file = VALUE();
        else if (FLAG("-sys") || FLAG("--system")) o->system = VALUE();
        else if (FLAG("-n") || FLAG("--n-predict")) rc = parse_int(a, VALUE(), 0, INT_MAX, &o->n_predict, err, errlen);
        else if (FLAG("--ctx")) rc = parse_int(a, VALUE(), 1, INT_MAX, &o->ctx, err, errlen);
        else if (FLAG("--temp")) rc = parse_double(a, VALUE(), 0, 100, &o->temp, err, errlen);
        else if (FLAG("--top-p")) rc = parse_double(a, VALUE(), 0, 1, &o->top_p, err, errlen);
        else if (FLAG("--min-p")) rc = parse_double(a, VALUE(), 0, 1, &o->min_p, err, errlen);
        else if (FLAG("--top-k")) rc = parse_int(a, VALUE(), 0, INT_MAX, &o->top_k, err, errlen);
        else if (FLAG("--seed")) {
            const char *s = VALUE();
            char *end;
            errno = 0;
            o->seed = strtoull(s, &end, 10);
            if (errno || end == s || *end || *s == '-') return fail(err, errlen, "--seed: expected a non-negative integer, got '%s'", s);
            o->seed_set = true;
        } else if (FLAG("--think")) o->think = DS4_CLI_THINK;
        else if (FLAG("--nothink")) o->think = DS4_CLI_NOTHINK;
        else if (FLAG("--think-max")) o->think = DS4_CLI_THINK_MAX;
        else if (FLAG("--cpu")) o->backend = DS4_CLI_BACKEND_CPU;
        else if (FLAG("--cuda")) o->backend = DS4_CLI_BACKEND_CUDA;
        else if (FLAG("-t") || FLAG("--threads")) rc = parse_int(a, VALUE(), 0, 4096, &o->threads, err, errlen);
        else if (FLAG("--prefill-chunk")) rc = parse_int(a, VALUE(), 1, INT_MAX, &o->prefill_chunk, err, errlen);
        else if (FLAG("--dump-tokens")) o->dump_tokens = true;
        else if (FLAG("--dump-rendered")) o->dump_rendered = true;
        else if (FLAG("--tokens")) o->tokens = VALUE();
        else if (FLAG("--dump-logits")) o->dump_logits = VALUE();
        else if (FLAG("--exact")) o->exact = true;
        else if (FLAG("--dump-logprobs")) o->dump_logprobs = VALUE();
        else if (FLAG("--logprobs-top-k")) rc = parse_int(a, VALUE(), 1, 128, &o->logprobs_top_k, err, errlen);
        else if (FLAG("--raw")) o->raw = true;
        else if (FLAG("--hide-reasoning")) o->hide_reasoning = true;
        else if (FLAG("--debug-prompt-tokens")) o->debug_prompt_tokens = true;
        else if (FLAG("--debug-force-tokens")) o->debug_force_tokens = VALUE();
        else return fail(err, errlen, "unknown option '%s' (see --help)", a);
        if (rc) return rc;
#undef FLAG
#undef VALUE
    }
    if (o->prompt && o->prompt_file) return fail(err, errlen, "-p and --prompt-file are exclusive");
    if (o->dump_logits && !o->tokens) return fail(err, errlen, "--dump-logits needs --tokens");
    return 0;
}

int ds4_cli_read_prompt(const ds4_cli_opts *o, char **out, size_t *len, char *err, size_t errlen) {
    *out = NULL;
    *len = 0;
    if (o->prompt) {
        size_t n = strlen(o->prompt);
        char *b = malloc(n + 1);
        if (!b) return fail(err, errlen, "out of memory");
        memcpy(b, o->prompt, n + 1);
        *out = b;
        *len = n;
        return 0;
    }
    if (!o->prompt_file) return fail(err, errlen, "no prompt: give -p TEXT or --prompt-file F");
    FILE *f = fopen(o->prompt_file, "rb");
    if (!f) return fail(err, errlen, "--prompt-file %s: %s", o->prompt_file, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        size_t got = fread(b + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
        if (n + 1 == cap) {
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!b) return fail(err, errlen, "out of memory reading %s", o->prompt_file);
    if (bad) {
        free(b);
        return fail(err, errlen, "--prompt-file %s: read error", o->prompt_file);
    }
    b[n] = 0;
    *out = b;
    *len = n;
    return 0;
}
