/* test_engine_model.c — the tiny-model GGUF builder of test_engine_model.h. */
#include "test_engine_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds4.h"
#include "core/common.h"
#include "model/ggml_type.h"
#include "model/gguf.h"
#include "model/quant.h"

enum { NL = 4, D = 64, NH = 4, HD = 32, NROT = 16, QL = 32, OL = 16, G = 2, WIN = 8, INH = 4, IHD = 16,
       TOPK = 3, NE = 4, NU = 2, FF = 32, NHASH = 2, HC = 4, MIX = (2 + HC) * HC };
static const uint32_t RATIO[NL] = {0, 4, 8, 8};
static const int CSA[NL] = {0, 1, 0, 1};

typedef enum { K_ONE, K_NORM, K_SMALL, K_MAT, K_EMB, K_EXP, K_TID } kind;

typedef struct {
    char name[64];
    kind k;
    uint64_t ne[3];
} tdesc;

static int list(tdesc *t) {
    int n = 0;
#define T(nm, kk, a, b, c) (snprintf(t[n].name, sizeof t[n].name, "%s", nm), t[n].k = kk, t[n].ne[0] = a, t[n].ne[1] = b, t[n].ne[2] = c, n++)
    T("token_embd.weight", K_EMB, D, TM_VOCAB, 1);
    T("output_hc_base.weight", K_SMALL, HC, 1, 1);
    T("output_hc_fn.weight", K_MAT, HC * D, HC, 1);
    T("output_hc_scale.weight", K_ONE, 1, 1, 1);
    T("output_norm.weight", K_NORM, D, 1, 1);
    T("output.weight", K_MAT, D, TM_VOCAB, 1);
    for (int l = 0; l < NL; l++) {
        char b[64];
#define LT(sfx, kk, a, bb, c) (snprintf(b, sizeof b, "blk.%d.%s", l, sfx), T(b, kk, a, bb, c))
        LT("hc_attn_fn.weight", K_MAT, HC * D, MIX, 1);
        LT("hc_attn_scale.weight", K_ONE, 3, 1, 1);
        LT("hc_attn_base.weight", K_SMALL, MIX, 1, 1);
        LT("attn_norm.weight", K_NORM, D, 1, 1);
        LT("attn_q_a.weight", K_MAT, D, QL, 1);
        LT("attn_q_a_norm.weight", K_NORM, QL, 1, 1);
        LT("attn_q_b.weight", K_MAT, QL, NH * HD, 1);
        LT("attn_kv.weight", K_MAT, D, HD, 1);
        LT("attn_kv_a_norm.weight", K_NORM, HD, 1, 1);
        LT("attn_sinks.weight", K_SMALL, NH, 1, 1);
        LT("attn_output_a.weight", K_MAT, NH * HD / G, G * OL, 1);
        LT("attn_output_b.weight", K_MAT, G * OL, D, 1);
        if (RATIO[l]) {
            int coff = CSA[l] ? 2 : 1;
            LT("attn_compressor_ape.weight", K_SMALL, coff * HD, RATIO[l], 1);
            LT("attn_compressor_kv.weight", K_MAT, D, coff * HD, 1);
            LT("attn_compressor_gate.weight", K_MAT, D, coff * HD, 1);
            LT("attn_compressor_norm.weight", K_NORM, HD, 1, 1);
        }
        if (CSA[l]) {
            LT("indexer.attn_q_b.weight", K_MAT, QL, INH * IHD, 1);
            LT("indexer.proj.weight", K_MAT, D, INH, 1);
            LT("indexer_compressor_ape.weight", K_SMALL, 2 * IHD, RATIO[l], 1);
            LT("indexer_compressor_kv.weight", K_MAT, D, 2 * IHD, 1);
            LT("indexer_compressor_gate.weight", K_MAT, D, 2 * IHD, 1);
            LT("indexer_compressor_norm.weight", K_NORM, IHD, 1, 1);
        }
        LT("hc_ffn_fn.weight", K_MAT, HC * D, MIX, 1);
        LT("hc_ffn_scale.weight", K_ONE, 3, 1, 1);
        LT("hc_ffn_base.weight", K_SMALL, MIX, 1, 1);
        LT("ffn_norm.weight", K_NORM, D, 1, 1);
        LT("ffn_gate_inp.weight", K_MAT, D, NE, 1);
        if (l < NHASH) LT("ffn_gate_tid2eid.weight", K_TID, NU, TM_VOCAB, 1);
        else LT("exp_probs_b.bias", K_SMALL, NE, 1, 1);
        LT("ffn_gate_exps.weight", K_EXP, D, FF, NE);
        LT("ffn_up_exps.weight", K_EXP, D, FF, NE);
        LT("ffn_down_exps.weight", K_EXP, FF, D, NE);
        LT("ffn_gate_shexp.weight", K_MAT, D, FF, 1);
        LT("ffn_up_shexp.weight", K_MAT, D, FF, 1);
        LT("ffn_down_shexp.weight", K_MAT, FF, D, 1);
#undef LT
    }
#undef T
    return n;
}

void tm_default(tm_opts *o) {
    memset(o, 0, sizeof *o);
    o->mat_type = DS4_TYPE_F32;
    o->exp_type = DS4_TYPE_F32;
    o->roundtrip = DS4_TYPE_F32;
    o->seed = 1;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rng_u(uint64_t *s) { return (rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }
static double rng_n(uint64_t *s) {
    double u = rng_u(s) + 1e-300, v = rng_u(s);
    return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

static bool named(const char *a, const char *b) { return a && !strcmp(a, b); }

int tm_write(const tm_opts *o, const char *path, char *err, size_t errlen) {
    tdesc *t = calloc(256, sizeof *t);
    int n = list(t);
    ds4_gguf_writer *w = ds4_gguf_writer_new(0);
    const char *A = "deepseek4.";
    char key[128];
#define KEY(k) (snprintf(key, sizeof key, "%s%s", A, k), key)
#define SKIP(k) (o->omit_key && !strcmp(o->omit_key, k))
    ds4_gguf_w_str(w, "general.architecture", "deepseek4", 9);
    struct { const char *k; uint32_t v; } u32s[] = {
        {"block_count", NL}, {"embedding_length", D}, {"vocab_size", TM_VOCAB}, {"attention.head_count", NH},
        {"attention.head_count_kv", 1}, {"attention.key_length", HD}, {"attention.value_length", HD},
        {"rope.dimension_count", NROT}, {"attention.q_lora_rank", QL}, {"attention.output_lora_rank", OL},
        {"attention.output_group_count", o->bad_groups ? 3 : G}, {"expert_count", NE}, {"expert_used_count", NU},
        {"expert_feed_forward_length", FF}, {"expert_shared_count", 1}, {"hash_layer_count", NHASH},
        {"attention.sliding_window", WIN}, {"attention.indexer.head_count", INH},
        {"attention.indexer.key_length", IHD}, {"attention.indexer.top_k", TOPK}, {"hyper_connection.count", HC},
        {"hyper_connection.sinkhorn_iterations", 20}, {"rope.scaling.original_context_length", 256},
        {"context_length", 4096},
    };
    for (size_t i = 0; i < DS4_ARRAY_LEN(u32s); i++)
        if (!SKIP(u32s[i].k))
            ds4_gguf_w_u32(w, KEY(u32s[i].k), named(o->u32_key, u32s[i].k) ? o->u32_val : u32s[i].v);
    struct { const char *k; float v; } f32s[] = {
        {"rope.freq_base", 1000.0f}, {"attention.compress_rope_freq_base", 300.0f}, {"rope.scaling.factor", 4.0f},
        {"rope.scaling.yarn_beta_fast", 32.0f}, {"rope.scaling.yarn_beta_slow", 1.0f},
        {"expert_weights_scale", 1.5f}, {"attention.layer_norm_rms_epsilon", 1e-6f},
        {"hyper_connection.epsilon", 1e-6f},
    };
    for (size_t i = 0; i < DS4_ARRAY_LEN(f32s); i++)
        if (!SKIP(f32s[i].k))
            ds4_gguf_w_f32(w, KEY(f32s[i].k), named(o->f32_key, f32s[i].k) ? o->f32_val : f32s[i].v);
    ds4_gguf_w_bool(w, KEY("expert_weights_norm"), true);
    uint32_t ratios[NL];
    memcpy(ratios, RATIO, sizeof ratios);
    if (o->bad_ratio) ratios[2] = 100000;
    if (!SKIP("attention.compress_ratios")) ds4_gguf_w_arr(w, KEY("attention.compress_ratios"), DS4_GGUF_U32, ratios, NL);
    float clamp[NL] = {1.5f, 1.5f, 1.5f, 1.5f};
    if (!SKIP("swiglu_clamp_exp")) ds4_gguf_w_arr(w, KEY("swiglu_clamp_exp"), DS4_GGUF_F32, clamp, o->short_clamp ? NL - 1 : NL);

    uint32_t types[256];
    for (int i = 0; i < n; i++) {
        if (named(o->omit, t[i].name)) continue;
        uint32_t ty = t[i].k == K_TID ? DS4_TYPE_I32 : t[i].k == K_MAT || t[i].k == K_EMB ? o->mat_type
                    : t[i].k == K_EXP ? o->exp_type : DS4_TYPE_F32;
        if (named(o->bad_type, t[i].name)) ty = t[i].k == K_TID ? DS4_TYPE_F32 : DS4_TYPE_I32;
        types[i] = ty;
        uint64_t ne[3] = {t[i].ne[0], t[i].ne[1], t[i].ne[2]};
        if (named(o->bad_shape, t[i].name)) ne[1] += 1;
        uint32_t nd = ne[2] > 1 ? 3 : ne[1] > 1 ? 2 : 1;
        ds4_gguf_w_tensor(w, t[i].name, ty, nd, ne);
    }
    int rc = ds4_gguf_w_begin(w, path, err, errlen);
    for (int i = 0; i < n && rc == 0; i++) {
        if (named(o->omit, t[i].name)) continue;
        uint64_t ne0 = t[i].ne[0], rows = t[i].ne[1] * t[i].ne[2];
        if (named(o->bad_shape, t[i].name)) rows += t[i].ne[2];
        uint64_t seed = o->seed * 1000003u + (uint64_t)i * 7919u;
        float *v = malloc(sizeof(float) * ne0);
        float *tmp = malloc(sizeof(float) * ne0);
        uint64_t rb = 0;
        ds4_type_row_bytes(types[i], ne0, &rb);
        uint8_t *row = calloc(1, rb + 64);
        for (uint64_t r = 0; r < rows && rc == 0; r++) {
            if (types[i] == DS4_TYPE_I32) {
                int32_t *ids = (int32_t *)row;
                for (uint64_t j = 0; j < ne0; j++) ids[j] = (int32_t)((r * 3 + j * 1 + (rng_next(&seed) % 2) * 2) % NE);
                if (ne0 == 2 && ids[0] == ids[1]) ids[1] = (ids[1] + 1) % NE;
                if (o->bad_tid2eid && r == 5) ids[0] = NE + 3;
            } else {
                for (uint64_t j = 0; j < ne0; j++) {
                    double x;
                    switch (t[i].k) {
                    case K_ONE: x = 0.5 + rng_u(&seed); break;
                    case K_NORM: x = 0.8 + 0.4 * rng_u(&seed); break;
                    case K_SMALL: x = 0.7 * rng_n(&seed); break;
                    case K_EMB: x = rng_n(&seed); break;
                    case K_EXP: x = rng_n(&seed) * 2.0 / sqrt((double)ne0); break;
                    default: x = rng_n(&seed) / sqrt((double)ne0); break;
                    }
                    v[j] = (float)x;
                }
                if (o->roundtrip != DS4_TYPE_F32 && (t[i].k == K_MAT || t[i].k == K_EMB || t[i].k == K_EXP)) {
                    uint64_t rrb = 0;
                    ds4_type_row_bytes(o->roundtrip, ne0, &rrb);
                    uint8_t *q = malloc(rrb);
                    ds4_quantize_row(o->roundtrip, v, q, (int64_t)ne0, NULL);
                    ds4_dequant_row(o->roundtrip, q, v, (int64_t)ne0);
                    free(q);
                }
                ds4_quantize_row(types[i], v, row, (int64_t)ne0, NULL);
            }
            rc = ds4_gguf_w_data(w, row, rb, err, errlen);
        }
        free(v);
        free(tmp);
        free(row);
    }
    if (rc == 0) rc = ds4_gguf_w_finish(w, err, errlen);
    ds4_gguf_writer_free(w);
    free(t);
    return rc;
#undef KEY
#undef SKIP
}

ds4_engine *tm_open_cpu(const char *path, bool exact) {
    ds4_engine_options eo;
    ds4_engine_options_default(&eo);
    eo.exact = exact;
    eo.n_threads = 2;
    eo.backend = DS4_BACKEND_CPU;
    ds4_engine *e = NULL;
    char err[512];
    if (ds4_engine_open(&e, path, &eo, err, sizeof err) < 0) {
        fprintf(stderr, "open %s: %s\n", path, err);
        return NULL;
    }
    return e;
}
