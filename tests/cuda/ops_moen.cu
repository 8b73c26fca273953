// ops_moen.cu — cuda-test-ops cases of the large-chunk paths (src/backend/cuda/moe_prefill.cu):
// matmul / matmul_groups / matmul_multi of 15..300 rows and moe_routed of 15..300 tokens,
// which in production numerics run through the tensor-core GEMM (cuda_mmq.h) once a
// chunk has kMmqMinRows rows and mmq takes the weight type (else the matvec paths: each
// case prints which one it exercised). Expected values come from the CPU backend running
// the op sequence the contract names (matmul per group / per matrix; forward.c's generic
// MoE sequence); the GPU is compared with itself only for invariances (matmul_multi ==
// matmul, a token's MoE output does not depend on the other tokens of the chunk).
//
// Owns: ops_batch_moe and its own weight mapping (3-D expert stacks the harness table has
// not: a small IQ2_XXS/Q2_K MoE, an all-Q8_0 tiny one, Flash's 256 x 2048 x 4096 one),
// filled with random block bytes and fixed block scales (no slow quantizer search), held
// by a second backend of G's kind. Must not: take an expected value from the GPU.
//
// Tolerances, relative to max(1, max|cpu|) of the row (MoE) or tensor (dense):
//  - dense: 2e-4 (prod) / 1e-4 (exact), as test_ops.cu's matmul: both sides quantize the
//    same f32 rows identically; only the f32 summation order differs.
//  - moe_routed, production: the SwiGLU outputs h are quantized a second time (down's dot
//    type). Gate / up differ from the CPU's by summation order (~1e-6 relative), which can
//    move an element of h across a rounding boundary of its quantization: one quant step
//    (scale = block amax / 127 <= max|h_row| / 127) times a down weight (<= Wmax, known
//    from the block scales this file writes) per flip. Expected flips per token are well
//    below one (a boundary within ~1e-6·127 of a value), so each token gets
//    2e-4·max(1, max|y_t|) + 8 flips at the worst magnitude of its routed and shared rows:
//    (Wmax_down·max|h_t| + Wmax_down_sh·max|h_sh,t|) · 8 / 127 — measured on the CPU
//    references: 1-3 % of max|y_t| at the small shapes (ff 64-256: one step weighs more),
//    0.3-0.4 % at Flash's, while a missing expert, a wrong routing weight or clamp moves
//    y_t by 5-40 %.
//  - moe_routed, exact: 1e-4 (f32 everywhere, summation order only).
#include "ops_harness.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/moe_prefill.h"

namespace {

struct MT {
    const char *name;
    uint32_t type;
    uint64_t ne0, ne1, ne2;
};
const MT kM[] = {
    // dense (k 4096): Q8_0 and Q4_K (Q8_K activations), F16 (never mmq), o_a-like groups
    {"dq8", DS4_TYPE_Q8_0, 4096, 200, 1},   {"dq8b", DS4_TYPE_Q8_0, 4096, 48, 1},
    {"dq4k", DS4_TYPE_Q4_K, 4096, 72, 1},   {"df16", DS4_TYPE_F16, 4096, 40, 1},
    {"oa", DS4_TYPE_Q8_0, 4096, 8 * 96, 1},
    // small MoE: 16 experts, d 512, ff 256 (Flash's types), shared expert Q8_0
    {"s_gate", DS4_TYPE_IQ2_XXS, 512, 256, 16}, {"s_up", DS4_TYPE_IQ2_XXS, 512, 256, 16},
    {"s_down", DS4_TYPE_Q2_K, 256, 512, 16},    {"s_gsh", DS4_TYPE_Q8_0, 512, 256, 1},
    {"s_ush", DS4_TYPE_Q8_0, 512, 256, 1},      {"s_dsh", DS4_TYPE_Q8_0, 256, 512, 1},
    // tiny all-Q8_0 MoE (Q8_0 activations for down): 8 experts, d 96, ff 64
    {"t_gate", DS4_TYPE_Q8_0, 96, 64, 8}, {"t_up", DS4_TYPE_Q8_0, 96, 64, 8}, {"t_down", DS4_TYPE_Q8_0, 64, 96, 8},
    {"t_gsh", DS4_TYPE_Q8_0, 96, 64, 1},  {"t_ush", DS4_TYPE_Q8_0, 96, 64, 1}, {"t_dsh", DS4_TYPE_Q8_0, 64, 96, 1},
    // Flash: 256 experts, d 4096, ff 2048
    {"f_gate", DS4_TYPE_IQ2_XXS, 4096, 2048, 256}, {"f_up", DS4_TYPE_IQ2_XXS, 4096, 2048, 256},
    {"f_down", DS4_TYPE_Q2_K, 2048, 4096, 256},    {"f_gsh", DS4_TYPE_Q8_0, 4096, 2048, 1},
    {"f_ush", DS4_TYPE_Q8_0, 4096, 2048, 1},       {"f_dsh", DS4_TYPE_Q8_0, 2048, 4096, 1},
};
constexpr int kNM = sizeof kM / sizeof kM[0];

struct Mapping {
    bool built = false;
    uint8_t *buf = nullptr;
    ds4_model m;
    ds4_tensor t[kNM];
    float wmax[kNM];  // bound on |weight| from the block scales written
};
Mapping g_map;

uint64_t g_fill = 0x9E3779B97F4A7C15ull;
inline uint64_t next64() {
    uint64_t z = (g_fill += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Random block bytes with fixed scales so that weights have rms ~ 2/sqrt(k) (y = W·x of
// O(1) for x uniform in [-1, 1]): every bit pattern of the quant fields is a valid code
// (IQ2_XXS grid / sign / scale indices included); the f16 scales are set per block.
// Returns the bound on |w| those scales give.
float fill_tensor(uint8_t *p, const MT &t, uint64_t bytes) {
    for (uint64_t i = 0; i + 8 <= bytes; i += 8) {
        const uint64_t v = next64();
        memcpy(p + i, &v, 8);
    }
    for (uint64_t i = bytes & ~(uint64_t)7; i < bytes; i++) p[i] = (uint8_t)next64();
    const float rms = 2.0f / sqrtf((float)t.ne0);
    auto put16 = [](uint8_t *q, float v) {
        const uint16_t h = ds4_f32_to_f16(v);
        memcpy(q, &h, 2);
        return ds4_f16_to_f32(h);
    };
    switch (t.type) {
    case DS4_TYPE_Q8_0: {  // w = d·q, q int8 (rms ~ 74)
        float d = 0;
        for (uint64_t b = 0; b < bytes / 34; b++) d = put16(p + 34 * b, rms / 74.0f);
        return 128.0f * d;
    }
    case DS4_TYPE_Q2_K: {  // w = d·sc·q − dmin·m, sc, m in 0..15, q in 0..3 (rms ~ 17 d)
        float d = 0;
        for (uint64_t b = 0; b < bytes / 84; b++) {
            d = put16(p + 84 * b + 80, rms / 17.0f);
            put16(p + 84 * b + 82, rms / 17.0f);
        }
        return 60.0f * d;
    }
    case DS4_TYPE_Q4_K: {  // w = d·sc·q − dmin·m, sc, m in 0..63, q in 0..15 (rms ~ 320 d)
        float d = 0;
        for (uint64_t b = 0; b < bytes / 144; b++) {
            d = put16(p + 144 * b, rms / 320.0f);
            put16(p + 144 * b + 2, rms / 320.0f);
        }
        return 2.0f * 63.0f * 15.0f * d;
    }
    case DS4_TYPE_IQ2_XXS: {  // w = d·(0.5 + s)·0.25·(±grid value <= 43), s in 0..15 (rms ~ 58 d)
        float d = 0;
        for (uint64_t b = 0; b < bytes / 66; b++) d = put16(p + 66 * b, rms / 58.0f);
        return 15.5f * 0.25f * 43.0f * d;
    }
    case DS4_TYPE_F16:
        for (uint64_t i = 0; i < bytes / 2; i++) put16(p + 2 * i, srand1() * rms * 1.7f);
        return rms * 1.7f;
    default: abort();
    }
}

bool build_mapping() {
    if (g_map.built) return g_map.buf != nullptr;
    g_map.built = true;
    char err[256];
    ds4_gguf_writer *w = ds4_gguf_writer_new(32);
    for (const MT &t : kM) {
        const uint64_t ne[3] = {t.ne0, t.ne1, t.ne2};
        if (ds4_gguf_w_tensor(w, t.name, t.type, t.ne2 > 1 ? 3 : 2, ne) < 0) return false;
    }
    size_t sz = 0;
    if (ds4_gguf_w_to_buffer(w, nullptr, &g_map.buf, &sz, err, sizeof err) < 0) {  // zero data, filled below
        fprintf(stderr, "ops_moen: %s\n", err);
        return false;
    }
    ds4_gguf_writer_free(w);
    ds4_gguf *g = nullptr;
    if (ds4_gguf_open_buffer(&g, g_map.buf, sz, err, sizeof err) < 0) {
        fprintf(stderr, "ops_moen: %s\n", err);
        free(g_map.buf);
        g_map.buf = nullptr;
        return false;
    }
    memset(&g_map.m, 0, sizeof g_map.m);
    g_map.m.gguf = g;
    // the expert scratch of the CUDA backend is sized from these (largest shapes here)
    g_map.m.hp.n_expert_used = 6;
    g_map.m.hp.n_ff_exp = 2048;
    g_map.m.hp.n_embd = 4096;
    for (int i = 0; i < kNM; i++) {
        const ds4_gguf_tensor *gt = ds4_gguf_find_tensor(g, kM[i].name);
        ds4_tensor &t = g_map.t[i];
        t.data = gt->data;
        t.type = kM[i].type;
        t.ne[0] = kM[i].ne0;
        t.ne[1] = kM[i].ne1;
        t.ne[2] = kM[i].ne2;
        ds4_type_row_bytes(t.type, t.ne[0], &t.row_bytes);
        // the mapping is this file's buffer: fill the (zero) tensor data in place
        g_map.wmax[i] = fill_tensor((uint8_t *)gt->data, kM[i], t.row_bytes * t.ne[1] * t.ne[2]);
    }
    return true;
}

int mi(const char *name) {
    for (int i = 0; i < kNM; i++)
        if (!strcmp(kM[i].name, name)) return i;
    fprintf(stderr, "ops_moen: no tensor %s\n", name);
    abort();
}
const ds4_tensor *mt(const char *name) { return &g_map.t[mi(name)]; }

// Which implementation a production product of n rows exercises on backend B.
const char *path_of(ds4_backend *B, const ds4_tensor *W, int n) {
    if (strcmp(B->name, "cuda")) return "cpu";
    if (B->numerics != DS4_NUM_PROD || n < ds4cu::kMmqMinRows) return "matvec";
    return ds4cu_mmq_ok(B, W->type, (int64_t)W->ne[0], n) ? "mmq" : "matvec (mmq unsupported or off)";
}

void check_bits(const char *name, ds4_backend *G, const float *a, const float *b, size_t n) {
    std::vector<float> x(n), y(n);
    G->read(G, x.data(), a, n * 4);
    G->read(G, y.data(), b, n * 4);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += memcmp(&x[i], &y[i], 4) != 0;
    const bool ok = differ == 0;
    printf("%s %-44s %zu of %zu values differ\n", ok ? "ok  " : "FAIL", name, differ, n);
    (ok ? g_pass : g_fail)++;
}

// ---- dense -----------------------------------------------------------------------------

// matmul of rows [row0, row0 + nr) of slab `slab`, x rows of stride xs, y of stride ys.
void matmul_case(ds4_backend *C, ds4_backend *G, const char *mode, const char *wn, uint64_t slab, uint64_t row0,
                 uint64_t nr, int nt, int64_t xpad) {
    const ds4_tensor *W = mt(wn);
    const int64_t k = (int64_t)W->ne[0], xs = k + xpad, ys = (int64_t)nr + 5;
    Pair x = put(C, G, rvec((size_t)(xs * nt))), y = put(C, G, std::vector<float>((size_t)(ys * nt), 0.f));
    C->matmul(C, W, slab, row0, nr, x.c, xs, y.c, ys, nt);
    G->matmul(G, W, slab, row0, nr, x.g, xs, y.g, ys, nt);
    char name[160];
    snprintf(name, sizeof name, "%s matmul %s[%llu] %llux%lld xs+%lld tok %d [%s]", mode, wn, (unsigned long long)slab,
             (unsigned long long)nr, (long long)k, (long long)xpad, nt, path_of(G, W, nt));
    check(name, y, C->numerics == DS4_NUM_PROD ? 2e-4 : 1e-4);
    drop(x);
    drop(y);
}

// matmul_groups at o_a's shape class (8 groups of 96 rows, k 4096, own x slice per group)
// vs CPU matmul per group.
void groups_case(ds4_backend *C, ds4_backend *G, const char *mode, int nt) {
    if (!G->matmul_groups) {
        printf("skip %s matmul_groups (not provided)\n", mode);
        return;
    }
    const ds4_tensor *W = mt("oa");
    const int Gn = 8;
    const uint64_t nr = W->ne[1] / Gn;
    const int64_t k = (int64_t)W->ne[0], xs = k * Gn + 16, ys = (int64_t)W->ne[1] + 5;
    Pair x = put(C, G, rvec((size_t)(xs * nt))), y = put(C, G, std::vector<float>((size_t)(ys * nt), 0.f));
    for (int g = 0; g < Gn; g++) C->matmul(C, W, 0, g * nr, nr, x.c + g * k, xs, y.c + g * nr, ys, nt);
    G->matmul_groups(G, W, Gn, nr, x.g, k, xs, y.g, ys, nt);
    char name[160];
    snprintf(name, sizeof name, "%s matmul_groups 8 x %llu x %lld tok %d [%s]", mode, (unsigned long long)nr, (long long)k,
             nt, path_of(G, W, nt));
    check(name, y, C->numerics == DS4_NUM_PROD ? 2e-4 : 1e-4);
    drop(x);
    drop(y);
}

// matmul_multi over Q8_0, Q4_K (the two dot types) and F16 (no mmq) sharing x: vs CPU
// matmul per matrix, and bit for bit vs the GPU's own matmul per matrix (the contract).
void multi_case(ds4_backend *C, ds4_backend *G, const char *mode, int nt) {
    if (!G->matmul_multi) {
        printf("skip %s matmul_multi (not provided)\n", mode);
        return;
    }
    const char *names[4] = {"dq8", "dq4k", "df16", "dq8b"};
    const int n = 4;
    const ds4_tensor *W[4];
    for (int j = 0; j < n; j++) W[j] = mt(names[j]);
    const int64_t k = (int64_t)W[0]->ne[0], xs = k + 8;
    Pair x = put(C, G, rvec((size_t)(xs * nt)));
    std::vector<Pair> y, y2;
    float *yg[4];
    int64_t ys[4];
    for (int j = 0; j < n; j++) {
        ys[j] = (int64_t)W[j]->ne[1] + 3 + j;
        y.push_back(put(C, G, std::vector<float>((size_t)(ys[j] * nt), 0.f)));
        y2.push_back(put(C, G, std::vector<float>((size_t)(ys[j] * nt), 0.f)));
        C->matmul(C, W[j], 0, 0, W[j]->ne[1], x.c, xs, y[j].c, ys[j], nt);
        G->matmul(G, W[j], 0, 0, W[j]->ne[1], x.g, xs, y2[j].g, ys[j], nt);
        yg[j] = y[j].g;
    }
    G->matmul_multi(G, n, W, yg, ys, x.g, xs, nt);
    char name[160];
    for (int j = 0; j < n; j++) {
        snprintf(name, sizeof name, "%s matmul_multi [%d] %s tok %d [%s]", mode, j, names[j], nt, path_of(G, W[j], nt));
        check(name, y[j], C->numerics == DS4_NUM_PROD ? 2e-4 : 1e-4);
        snprintf(name, sizeof name, "%s matmul_multi [%d] == matmul tok %d", mode, j, nt);
        check_bits(name, G, y[j].g, y2[j].g, y[j].n);
    }
    drop(x);
    for (Pair &p : y) drop(p);
    for (Pair &p : y2) drop(p);
}

// ---- moe_routed ------------------------------------------------------------------------

struct MoeW {
    const char *label;
    const ds4_tensor *gate, *up, *down, *gsh, *ush, *dsh;
    float wmax_down, wmax_dsh;
};
MoeW moe_w(const char *label, const char *p) {
    char nm[6][16];
    const char *sfx[6] = {"gate", "up", "down", "gsh", "ush", "dsh"};
    for (int i = 0; i < 6; i++) snprintf(nm[i], sizeof nm[i], "%s_%s", p, sfx[i]);
    return {label, mt(nm[0]), mt(nm[1]), mt(nm[2]), mt(nm[3]), mt(nm[4]), mt(nm[5]), g_map.wmax[mi(nm[2])],
            g_map.wmax[mi(nm[5])]};
}

// The CPU reference: forward.c's generic MoE sequence (host router, then per expert in
// ascending id: gather, gate, up, swiglu (· w in production), down, axpy into y from
// zero; then the shared expert), keeping max|h| per token of the routed and shared
// SwiGLU outputs for the flip bound.
void moe_ref(ds4_backend *C, const MoeW &W, bool shared, const std::vector<float> &lg, const std::vector<float> &bias,
             const int32_t *hash, const std::vector<float> &xv, int n, int k, double w_scale, float clamp,
             std::vector<float> &y, std::vector<float> &hmax, std::vector<float> &hsmax) {
    const bool exact = C->numerics == DS4_NUM_EXACT;
    const int ne = (int)W.gate->ne[2];
    const int64_t d = (int64_t)W.gate->ne[0], ff = (int64_t)W.gate->ne[1], ffs = (int64_t)W.gsh->ne[1];
    const int64_t fmax = ff > ffs ? ff : ffs;
    std::vector<int32_t> sel((size_t)n * k);
    std::vector<float> selw((size_t)n * k), s((size_t)ne), u((size_t)ne);
    for (int t = 0; t < n; t++) {
        for (int e = 0; e < ne; e++) {
            const double z = lg[(size_t)t * ne + e];
            s[(size_t)e] = (float)sqrt(z > 20 ? z : log1p(exp(z)));
        }
        int32_t *st = sel.data() + (size_t)t * k;
        if (hash) {
            for (int j = 0; j < k; j++) st[j] = hash[t * k + j];
        } else {
            for (int e = 0; e < ne; e++) u[(size_t)e] = s[(size_t)e] + (bias.empty() ? 0.0f : bias[(size_t)e]);
            ds4_topk_host(u.data(), ne, k, st);
        }
        double sum = 0;
        for (int j = 0; j < k; j++) sum += s[(size_t)st[j]];
        const double denom = exact ? sum + 1e-20 : (sum > 6.103515625e-5 ? sum : 6.103515625e-5);
        for (int j = 0; j < k; j++) selw[(size_t)t * k + j] = (float)(s[(size_t)st[j]] / denom * w_scale);
    }
    float *x = (float *)C->alloc(C, (size_t)n * d * 4), *yc = (float *)C->alloc(C, (size_t)n * d * 4);
    float *xg = (float *)C->alloc(C, (size_t)n * d * 4), *dn = (float *)C->alloc(C, (size_t)n * d * 4);
    float *g = (float *)C->alloc(C, (size_t)n * fmax * 4), *uu = (float *)C->alloc(C, (size_t)n * fmax * 4);
    C->write(C, x, xv.data(), (size_t)n * d * 4);
    C->zero(C, yc, (size_t)n * d * 4);
    hmax.assign((size_t)n, 0.f);
    hsmax.assign((size_t)n, 0.f);
    std::vector<int> etok((size_t)n);
    std::vector<float> etw((size_t)n), hrow((size_t)(n * fmax));
    for (int ex = 0; ex < ne; ex++) {
        int cnt = 0;
        for (int t = 0; t < n; t++)
            for (int j = 0; j < k; j++)
                if (sel[(size_t)t * k + j] == ex) {
                    etok[(size_t)cnt] = t;
                    etw[(size_t)cnt++] = selw[(size_t)t * k + j];
                }
        if (!cnt) continue;
        for (int j = 0; j < cnt; j++) C->copy(C, xg + j * d, x + etok[(size_t)j] * d, (size_t)d * 4);
        C->matmul(C, W.gate, (uint64_t)ex, 0, (uint64_t)ff, xg, d, g, ff, cnt);
        C->matmul(C, W.up, (uint64_t)ex, 0, (uint64_t)ff, xg, d, uu, ff, cnt);
        if (exact) C->swiglu(C, g, uu, g, cnt * ff, clamp, 1.0f);
        else
            for (int j = 0; j < cnt; j++) C->swiglu(C, g + j * ff, uu + j * ff, g + j * ff, ff, clamp, etw[(size_t)j]);
        C->read(C, hrow.data(), g, (size_t)cnt * ff * 4);
        for (int j = 0; j < cnt; j++)
            for (int64_t i = 0; i < ff; i++) hmax[(size_t)etok[(size_t)j]] = fmaxf(hmax[(size_t)etok[(size_t)j]], fabsf(hrow[(size_t)(j * ff + i)]));
        C->matmul(C, W.down, (uint64_t)ex, 0, (uint64_t)d, g, ff, dn, d, cnt);
        for (int j = 0; j < cnt; j++) C->axpy(C, yc + etok[(size_t)j] * d, dn + j * d, exact ? etw[(size_t)j] : 1.0f, d);
    }
    if (shared) {
        C->matmul(C, W.gsh, 0, 0, (uint64_t)ffs, x, d, g, ffs, n);
        C->matmul(C, W.ush, 0, 0, (uint64_t)ffs, x, d, uu, ffs, n);
        C->swiglu(C, g, uu, g, n * ffs, clamp, 1.0f);
        C->read(C, hrow.data(), g, (size_t)n * ffs * 4);
        for (int t = 0; t < n; t++)
            for (int64_t i = 0; i < ffs; i++) hsmax[(size_t)t] = fmaxf(hsmax[(size_t)t], fabsf(hrow[(size_t)(t * ffs + i)]));
        C->matmul(C, W.dsh, 0, 0, (uint64_t)d, g, ffs, dn, d, n);
        C->axpy(C, yc, dn, 1.0f, n * d);
    }
    y.resize((size_t)n * d);
    C->read(C, y.data(), yc, (size_t)n * d * 4);
    for (float *p : {x, yc, xg, dn, g, uu}) C->release(C, p);
}

void moe_case(ds4_backend *C, ds4_backend *G, const char *mode, const MoeW &W, int n, bool hashed, bool shared) {
    if (!G->moe_routed) {
        printf("skip %s moe_routed (not provided)\n", mode);
        return;
    }
    const bool exact = C->numerics == DS4_NUM_EXACT;
    const int ne = (int)W.gate->ne[2], k = ne >= 16 ? 6 : 3;
    const int64_t d = (int64_t)W.gate->ne[0];
    const double w_scale = 1.5;
    const float clamp = 2.5f;
    char rerr[256];
    if (C->reserve(C, n, 4096, rerr, sizeof rerr) < 0 || G->reserve(G, n * k, 4096, rerr, sizeof rerr) < 0) {
        printf("FAIL %s moe_routed: reserve: %s\n", mode, rerr);
        g_fail++;
        return;
    }
    std::vector<float> lgv = rvec((size_t)n * ne, 3), bias = hashed ? std::vector<float>() : rvec((size_t)ne, 0.5f);
    std::vector<int32_t> hs;
    if (hashed)  // distinct per token: the step is odd and ne a power of two
        for (int t = 0; t < n; t++)
            for (int j = 0; j < k; j++) hs.push_back((int32_t)((t * 7 + j * (ne >= 64 ? 41 : 5) + 1) % ne));
    // x of scale 2 so that y is O(1) and the clamp is active for part of gate / up
    const std::vector<float> xv = rvec((size_t)n * d, 2);
    std::vector<float> yref, hmax, hsmax;
    moe_ref(C, W, shared, lgv, bias, hashed ? hs.data() : nullptr, xv, n, k, w_scale, clamp, yref, hmax, hsmax);

    float *lg = (float *)G->alloc(G, lgv.size() * 4), *x = (float *)G->alloc(G, xv.size() * 4);
    float *bs = (float *)G->alloc(G, (size_t)ne * 4), *y = (float *)G->alloc(G, xv.size() * 4);
    G->write(G, lg, lgv.data(), lgv.size() * 4);
    G->write(G, x, xv.data(), xv.size() * 4);
    if (!hashed) G->write(G, bs, bias.data(), (size_t)ne * 4);
    const int32_t *hp = hashed ? hs.data() : nullptr;
    G->moe_routed(G, lg, hashed ? nullptr : bs, hp, W.gate, W.up, W.down, shared ? W.gsh : nullptr, shared ? W.ush : nullptr,
                  shared ? W.dsh : nullptr, x, n, k, w_scale, clamp, y);
    std::vector<float> yg((size_t)n * d);
    G->read(G, yg.data(), y, yg.size() * 4);
    // per token: |diff| against its bound (see the file comment)
    double worst = -1, wd = 0, wb = 0;
    int wt_ = 0;
    for (int t = 0; t < n; t++) {
        double mx = 1, dmax = 0;
        for (int64_t i = 0; i < d; i++) {
            const float a = yref[(size_t)(t * d + i)], b = yg[(size_t)(t * d + i)];
            mx = fmax(mx, fabs(a));
            const double e = a == b ? 0.0 : fabs((double)a - b);
            if (!(e <= dmax)) dmax = isnan(e) ? INFINITY : e;
        }
        double bound = (exact ? 1e-4 : 2e-4) * mx;
        if (!exact) bound += 8.0 / 127.0 * (W.wmax_down * hmax[(size_t)t] + (shared ? W.wmax_dsh * hsmax[(size_t)t] : 0.0));
        const double r = dmax / bound;
        if (!(r <= worst)) {
            worst = isnan(r) ? INFINITY : r;
            wd = dmax;
            wb = bound;
            wt_ = t;
        }
    }
    const char *what = shared ? (hashed ? "hash+shared" : "bias+shared") : hashed ? "hash" : "bias";
    bool mmq_types = true;  // moe_prefill.cu takes the chunk when mmq takes all its matrices
    for (const ds4_tensor *t : {W.gate, W.up, W.down, W.gsh, W.ush, W.dsh})
        if (shared || t == W.gate || t == W.up || t == W.down) mmq_types &= !strcmp(path_of(G, t, n), "mmq");
    const char *path = path_of(G, W.gate, n);  // cpu / matvec (exact, small n) / mmq
    if (!strcmp(path, "mmq") && !mmq_types) path = "matvec (mmq unsupported or off)";
    char name[160];
    snprintf(name, sizeof name, "%s moe_routed %s %s tok %d [%s]", mode, W.label, what, n, path);
    const bool ok = worst <= 1.0;
    printf("%s %-44s max|diff|/bound %.3f (token %d: %.3e of %.3e)\n", ok ? "ok  " : "FAIL", name, worst, wt_, wd, wb);
    (ok ? g_pass : g_fail)++;
    // the last m tokens alone give the same bits as inside the chunk (both >= kMmqMinRows:
    // the same path): no token's values depend on the others
    const int m = n / 2 > ds4cu::kMmqMinRows ? n / 2 : n, o = n - m;
    if (m < n) {
        float *y2 = (float *)G->alloc(G, (size_t)m * d * 4);
        G->moe_routed(G, lg + (size_t)o * ne, hashed ? nullptr : bs, hashed ? hp + (size_t)o * k : nullptr, W.gate, W.up, W.down,
                      shared ? W.gsh : nullptr, shared ? W.ush : nullptr, shared ? W.dsh : nullptr, x + (size_t)o * d, m, k,
                      w_scale, clamp, y2);
        snprintf(name, sizeof name, "%s moe_routed %s last %d of %d alone == in chunk", mode, W.label, m, n);
        check_bits(name, G, y + (size_t)o * d, y2, (size_t)m * d);
        G->release(G, y2);
    }
    for (float *p : {lg, x, bs, y}) G->release(G, p);
}

}  // namespace

void ops_batch_moe(ds4_backend *C, ds4_backend *G, const char *mode) {
    if (!build_mapping()) {
        printf("FAIL %s ops_batch_moe: cannot build the test mapping\n", mode);
        g_fail++;
        return;
    }
    // a backend of G's kind over this file's mapping (the harness's G holds kW's only)
    char err[512];
    ds4_backend *B = nullptr;
    const int rc = strcmp(G->name, "cuda") ? ds4_backend_cpu_create(&B, 0, G->numerics, err, sizeof err)
                                           : ds4_backend_cuda_create(&B, &g_map.m, G->numerics, err, sizeof err);
    if (rc < 0) {
        printf("FAIL %s ops_batch_moe: backend: %s\n", mode, err);
        g_fail++;
        return;
    }
    const bool prod = G->numerics == DS4_NUM_PROD;
    if (C->reserve(C, 300, 4096, err, sizeof err) < 0 || B->reserve(B, 300, 4096, err, sizeof err) < 0) {
        printf("FAIL %s ops_batch_moe: reserve: %s\n", mode, err);
        g_fail++;
        B->free(B);
        return;
    }
    // dense: Q8_0 just below / at / above the threshold, strided and packed x; Q4_K; the
    // expert stacks (IQ2_XXS gate rows of slab 5, Q2_K down slab 11, Flash's slab 200)
    for (int nt : {15, 16, 64, 300}) matmul_case(C, B, mode, "dq8", 0, 3, 190, nt, 8);
    matmul_case(C, B, mode, "dq8", 0, 0, 200, 64, 0);
    matmul_case(C, B, mode, "dq4k", 0, 1, 71, 64, 0);
    // x rows at 4-byte offsets that change per token (stride k + 3 / k + 1): the strided
    // quantizer's scalar loads next to its float4 ones, Q8_0 and Q8_K
    matmul_case(C, B, mode, "dq8", 0, 3, 190, 64, 3);
    matmul_case(C, B, mode, "dq4k", 0, 1, 71, 64, 1);
    for (int nt : {16, 64, 300}) {
        matmul_case(C, B, mode, "s_gate", 5, 7, 200, nt, 4);
        matmul_case(C, B, mode, "s_down", 11, 0, 512, nt, 0);
    }
    matmul_case(C, B, mode, "f_gate", 200, 16, 1024, 64, 0);
    matmul_case(C, B, mode, "f_down", 3, 0, 4096, 16, 0);
    for (int nt : {16, 64, 300}) groups_case(C, B, mode, nt);
    for (int nt : {16, 300}) multi_case(C, B, mode, nt);
    // moe_routed: small IQ2_XXS/Q2_K experts at 64 / 300 tokens (bias and hash routing,
    // with and without the shared expert), just below the threshold, the all-Q8_0 tiny
    // MoE, and Flash's shape (production only: its CPU reference is the slow part)
    const MoeW S = moe_w("small", "s"), T = moe_w("tiny q8", "t"), F = moe_w("flash", "f");
    for (int n : {64, 300})
        for (bool hashed : {false, true}) moe_case(C, B, mode, S, n, hashed, true);
    moe_case(C, B, mode, S, 300, false, false);
    moe_case(C, B, mode, S, 15, false, true);
    moe_case(C, B, mode, T, 64, false, true);
    moe_case(C, B, mode, T, 64, true, false);
    if (prod) {
        moe_case(C, B, mode, F, 64, false, true);
        moe_case(C, B, mode, F, 48, true, true);
    } else {
        printf("skip %s moe_routed flash (production path only)\n", mode);
    }
    B->free(B);
}
