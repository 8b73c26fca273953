// ops_mm.cu — cuda-test-ops cases of the fused op matmul_multi (backend.h) and of the
// fused paths that share its kernel modes (matvec.cu: matrix lists, block-local
// activations, the SwiGLU prologue): matmul_groups and moe_routed. Each against the CPU
// backend running the op sequence the contract names.
//
// Owns: ops_fused_mm. Must not: take an expected value from the GPU. Besides the CPU
// comparisons, the contract's "same values as the op sequence" is checked bit for bit
// on the GPU (fused op vs the GPU backend's own sequence): that is what keeps chunked
// prefill and single-token decode bit-identical (forward.c uses the fused ops for small
// chunks only).
//
// Tolerance vs the CPU: as test_ops.cu's matmul, 1e-4 (exact) / 2e-4 (production) of
// max(1, max|cpu|): the same activations (production: quantised identically), only the
// f32 sums reordered across lanes.
#include "ops_harness.h"

// a and b (GPU memory, n floats) must be the same bits.
static void check_same(const char *name, ds4_backend *G, const float *a, const float *b, size_t n) {
    std::vector<float> x(n), y(n);
    G->read(G, x.data(), a, n * 4);
    G->read(G, y.data(), b, n * 4);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += memcmp(&x[i], &y[i], 4) != 0;
    const bool ok = differ == 0;
    printf("%s %-44s %zu of %zu values differ\n", ok ? "ok  " : "FAIL", name, differ, n);
    (ok ? g_pass : g_fail)++;
}

// matmul_multi over the named test weights (all with the same ne[0]) for nt tokens, x
// rows with a stride > k and y_j rows with distinct strides > rows (nt > 1).
static void multi_case(ds4_backend *C, ds4_backend *G, const char *mode, const char *label,
                       const std::vector<const char *> &names, int nt) {
    const double tq = C->numerics == DS4_NUM_PROD ? 2e-4 : 1e-4;
    const int n = (int)names.size();
    std::vector<const ds4_tensor *> W;
    for (const char *nm : names) W.push_back(wt(nm));
    const int64_t k = (int64_t)W[0]->ne[0], xs = k + 8;
    Pair x = put(C, G, rvec((size_t)(xs * nt)));
    std::vector<Pair> y, y2;
    std::vector<float *> yc, yg;
    std::vector<int64_t> ys;
    for (int j = 0; j < n; j++) {
        const int64_t rows = (int64_t)W[j]->ne[1];
        ys.push_back(nt == 1 ? rows : rows + 3 + j);
        y.push_back(put(C, G, std::vector<float>((size_t)(ys[j] * nt), 0.f)));
        y2.push_back(put(C, G, std::vector<float>((size_t)(ys[j] * nt), 0.f)));
        C->matmul(C, W[j], 0, 0, (uint64_t)rows, x.c, xs, y[j].c, ys[j], nt);
        G->matmul(G, W[j], 0, 0, (uint64_t)rows, x.g, xs, y2[j].g, ys[j], nt);
        yg.push_back(y[j].g);
    }
    G->matmul_multi(G, n, W.data(), yg.data(), ys.data(), x.g, xs, nt);
    char name[160];
    for (int j = 0; j < n; j++) {
        snprintf(name, sizeof name, "%s matmul_multi %s [%d] %s tok %d", mode, label, j, names[j], nt);
        check(name, y[j], tq);
        snprintf(name, sizeof name, "%s matmul_multi %s [%d] == matmul tok %d", mode, label, j, nt);
        check_same(name, G, y[j].g, y2[j].g, y[j].n);
    }
    drop(x);
    for (Pair &p : y) drop(p);
    for (Pair &p : y2) drop(p);
}

// matmul_groups at o_a's shape class (8 groups, k 4096, own x slice per group; mm_q8a's
// 160 rows as 8 x 20) vs CPU matmul per group, and bit for bit vs GPU matmul per group.
static void groups_case(ds4_backend *C, ds4_backend *G, const char *mode, int nt) {
    const double tq = C->numerics == DS4_NUM_PROD ? 2e-4 : 1e-4;
    const ds4_tensor *W = wt("mm_q8a");
    const int Gn = 8;
    const uint64_t nr = W->ne[1] / Gn;
    const int64_t k = (int64_t)W->ne[0], xs = k * Gn + 16, ys = (int64_t)W->ne[1] + 5;
    Pair x = put(C, G, rvec((size_t)(xs * nt))), y = put(C, G, std::vector<float>((size_t)(ys * nt), 0.f));
    Pair y2 = put(C, G, std::vector<float>((size_t)(ys * nt), 0.f));
    for (int g = 0; g < Gn; g++) {
        C->matmul(C, W, 0, g * nr, nr, x.c + g * k, xs, y.c + g * nr, ys, nt);
        G->matmul(G, W, 0, g * nr, nr, x.g + g * k, xs, y2.g + g * nr, ys, nt);
    }
    G->matmul_groups(G, W, Gn, nr, x.g, k, xs, y.g, ys, nt);
    char name[128];
    snprintf(name, sizeof name, "%s matmul_groups 8 x %llu x %lld tok %d", mode, (unsigned long long)nr, (long long)k, nt);
    check(name, y, tq);
    snprintf(name, sizeof name, "%s matmul_groups == matmul per group tok %d", mode, nt);
    check_same(name, G, y.g, y2.g, y.n);
    drop(x);
    drop(y);
    drop(y2);
}

// A view of part of a test weight's bytes as another shape of the same type (the
// harness has no 3-D stacks; Q8_0 blocks are valid whatever the row length).
static ds4_tensor view(const ds4_tensor *src, uint64_t byte_off, uint64_t ne0, uint64_t ne1, uint64_t ne2) {
    ds4_tensor t = *src;
    t.data = (const uint8_t *)src->data + byte_off;
    t.ne[0] = ne0;
    t.ne[1] = ne1;
    t.ne[2] = ne2;
    ds4_type_row_bytes(t.type, ne0, &t.row_bytes);
    uint64_t src_bytes = src->row_bytes * src->ne[1] * src->ne[2];
    DS4_ASSERT(byte_off + t.row_bytes * ne1 * ne2 <= src_bytes);
    return t;
}

// The generic routed-expert sequence of forward.c (moe(), the path of chunks of more than
// 4 tokens) on backend B: router on the host from the logits, then per expert in
// ascending id: gather, gate, up, swiglu, down, axpy into y (zeroed).
static void moe_sequence(ds4_backend *B, bool exact, const std::vector<float> &lg, const std::vector<float> &bias,
                         const int32_t *hash_sel, const ds4_tensor *gate, const ds4_tensor *up, const ds4_tensor *down,
                         const ds4_tensor *const *sh, const float *x, int n, int k, double w_scale, float clamp, float *y,
                         float *xg, float *g, float *u, float *dn) {
    const int ne = (int)gate->ne[2];
    const int64_t d = (int64_t)gate->ne[0], ff = (int64_t)gate->ne[1];
    std::vector<int32_t> sel((size_t)(n * k));
    std::vector<float> selw((size_t)(n * k)), s((size_t)ne), uu((size_t)ne);
    for (int t = 0; t < n; t++) {
        for (int e = 0; e < ne; e++) {
            const double z = lg[(size_t)(t * ne + e)];
            s[(size_t)e] = (float)sqrt(z > 20 ? z : log1p(exp(z)));
        }
        int32_t *st = sel.data() + t * k;
        if (hash_sel) {
            for (int j = 0; j < k; j++) st[j] = hash_sel[t * k + j];
        } else {
            for (int e = 0; e < ne; e++) uu[(size_t)e] = s[(size_t)e] + (bias.empty() ? 0.0f : bias[(size_t)e]);
            ds4_topk_host(uu.data(), ne, k, st);
        }
        double sum = 0;
        for (int j = 0; j < k; j++) sum += s[(size_t)st[j]];
        const double denom = exact ? sum + 1e-20 : (sum > 6.103515625e-5 ? sum : 6.103515625e-5);
        for (int j = 0; j < k; j++) selw[(size_t)(t * k + j)] = (float)(s[(size_t)st[j]] / denom * w_scale);
    }
    B->zero(B, y, (size_t)(n * d) * sizeof(float));
    std::vector<int> etok((size_t)(n * k));
    std::vector<float> etw((size_t)(n * k));
    for (int ex = 0; ex < ne; ex++) {
        int cnt = 0;
        for (int t = 0; t < n; t++)
            for (int j = 0; j < k; j++)
                if (sel[(size_t)(t * k + j)] == ex) {
                    etok[(size_t)cnt] = t;
                    etw[(size_t)cnt] = selw[(size_t)(t * k + j)];
                    cnt++;
                }
        if (!cnt) continue;
        for (int j = 0; j < cnt; j++) B->copy(B, xg + j * d, x + etok[(size_t)j] * d, (size_t)d * sizeof(float));
        B->matmul(B, gate, (uint64_t)ex, 0, (uint64_t)ff, xg, d, g, ff, cnt);
        B->matmul(B, up, (uint64_t)ex, 0, (uint64_t)ff, xg, d, u, ff, cnt);
        if (exact) {
            B->swiglu(B, g, u, g, cnt * ff, clamp, 1.0f);
            B->matmul(B, down, (uint64_t)ex, 0, (uint64_t)d, g, ff, dn, d, cnt);
            for (int j = 0; j < cnt; j++) B->axpy(B, y + etok[(size_t)j] * d, dn + j * d, etw[(size_t)j], d);
        } else {
            for (int j = 0; j < cnt; j++) B->swiglu(B, g + j * ff, u + j * ff, g + j * ff, ff, clamp, etw[(size_t)j]);
            B->matmul(B, down, (uint64_t)ex, 0, (uint64_t)d, g, ff, dn, d, cnt);
            for (int j = 0; j < cnt; j++) B->axpy(B, y + etok[(size_t)j] * d, dn + j * d, 1.0f, d);
        }
    }
    if (sh) {  // the shared expert, as forward.c's moe() (sh: gate, up, down; ff rows as the experts')
        B->matmul(B, sh[0], 0, 0, (uint64_t)ff, x, d, g, ff, n);
        B->matmul(B, sh[1], 0, 0, (uint64_t)ff, x, d, u, ff, n);
        B->swiglu(B, g, u, g, n * ff, clamp, 1.0f);
        B->matmul(B, sh[2], 0, 0, (uint64_t)d, g, ff, dn, d, n);
        B->axpy(B, y, dn, 1.0f, n * d);
    }
}

// moe_routed (router + gate/up list launch + down with the SwiGLU prologue + ordered
// accumulation) vs the generic sequence: on the CPU (tolerance) and on the GPU (bits).
// Experts: 8 Q8_0 stacks of 64 x 64 viewed in "q8" (the harness reserves the expert
// scratch for k 6, ff 64, d 64).
static void moe_case(ds4_backend *C, ds4_backend *G, const char *mode, int n, bool hashed, bool shared) {
    char rerr[256];  // up to n tokens per matmul (CPU) and n·k selections (GPU router scratch)
    if (C->reserve(C, n, 4096, rerr, sizeof rerr) < 0 || G->reserve(G, n, 4096, rerr, sizeof rerr) < 0) {
        printf("FAIL %s moe_routed: reserve: %s\n", mode, rerr);
        g_fail++;
        return;
    }
    const bool exact = C->numerics == DS4_NUM_EXACT;
    const double tq = exact ? 1e-4 : 2e-4;
    const int ne = 8, k = 6;
    const int64_t d = 64, ff = 64;
    const ds4_tensor *src = wt("q8");
    uint64_t rb = 0;
    ds4_type_row_bytes(DS4_TYPE_Q8_0, 64, &rb);
    const uint64_t sb = rb * 64 * ne;
    const ds4_tensor gate = view(src, 0, d, ff, ne), up = view(src, sb, d, ff, ne), down = view(src, 2 * sb, ff, d, ne);
    // the shared expert (one matrix each) after the three stacks
    const ds4_tensor sg = view(src, 3 * sb, d, ff, 1), su = view(src, 3 * sb + rb * ff, d, ff, 1),
                     sd = view(src, 3 * sb + 2 * rb * ff, ff, d, 1);
    const ds4_tensor *sh[3] = {&sg, &su, &sd};
    const double w_scale = 1.5;
    const float clamp = 4.0f;
    std::vector<float> lgv = rvec((size_t)(n * ne), 3), bias = hashed ? std::vector<float>() : rvec((size_t)ne, 0.5f);
    std::vector<int32_t> hs;
    if (hashed)
        for (int t = 0; t < n; t++)
            for (int j = 0; j < k; j++) hs.push_back((int32_t)((t * 3 + j * 5 + 1) % ne));  // distinct per token
    // x scaled so that y is O(1) (the bound is relative to max(1, max|y|)) and the
    // clamp is active for part of the gate / up values
    Pair lg = put(C, G, lgv), x = put(C, G, rvec((size_t)(n * d), 20));
    Pair bs = put(C, G, hashed ? std::vector<float>(1, 0.f) : bias);
    Pair y = put(C, G, std::vector<float>((size_t)(n * d), 0.f)), y2 = put(C, G, std::vector<float>((size_t)(n * d), 0.f));
    Pair xg = put(C, G, std::vector<float>((size_t)(n * d), 0.f)), g = put(C, G, std::vector<float>((size_t)(n * ff), 0.f));
    Pair u = put(C, G, std::vector<float>((size_t)(n * ff), 0.f)), dn = put(C, G, std::vector<float>((size_t)(n * d), 0.f));
    const int32_t *hp = hashed ? hs.data() : nullptr;
    const ds4_tensor *const *shp = shared ? sh : nullptr;
    moe_sequence(C, exact, lgv, bias, hp, &gate, &up, &down, shp, x.c, n, k, w_scale, clamp, y.c, xg.c, g.c, u.c, dn.c);
    moe_sequence(G, exact, lgv, bias, hp, &gate, &up, &down, shp, x.g, n, k, w_scale, clamp, y2.g, xg.g, g.g, u.g, dn.g);
    G->moe_routed(G, lg.g, hashed ? nullptr : bs.g, hp, &gate, &up, &down, shared ? &sg : nullptr, shared ? &su : nullptr,
                  shared ? &sd : nullptr, x.g, n, k, w_scale, clamp, y.g);
    char name[128];
    const char *what = shared ? (hashed ? "hash+shared" : "bias+shared") : hashed ? "hash" : "bias";
    snprintf(name, sizeof name, "%s moe_routed %s tok %d", mode, what, n);
    check(name, y, tq);
    snprintf(name, sizeof name, "%s moe_routed == generic sequence %s tok %d", mode, what, n);
    check_same(name, G, y.g, y2.g, y.n);
    for (Pair *p : {&lg, &x, &bs, &y, &y2, &xg, &g, &u, &dn}) drop(*p);
}

void ops_fused_mm(ds4_backend *C, ds4_backend *G, const char *mode) {
    if (G->matmul_groups)
        for (int nt : {1, 4}) groups_case(C, G, mode, nt);
    else
        printf("skip %s matmul_groups (not provided)\n", mode);
    if (G->moe_routed)
        for (int nt : {1, 3, 13})  // 13: two token groups of the batched expert launches (10 + 3 at k 6)
            for (bool hashed : {false, true})
                for (bool shared : {false, true}) moe_case(C, G, mode, nt, hashed, shared);
    else
        printf("skip %s moe_routed (not provided)\n", mode);
    if (!G->matmul_multi) {
        printf("skip %s matmul_multi (not provided)\n", mode);
        return;
    }
    for (int nt : {1, 3}) {
        // decode's attention input: Q8_0 q_a / kv, F16 compressor / indexer projections
        multi_case(C, G, mode, "q8 pair", {"mm_q8a", "mm_q8b"}, nt);
        multi_case(C, G, mode, "f16 pair", {"mm_f16a", "mm_f16b"}, nt);
        // mixed kinds in one call (one launch per kind), a matrix twice, 8 matrices
        multi_case(C, G, mode, "mixed", {"mm_q8a", "mm_f16a", "mm_q8b", "mm_f16b"}, nt);
        multi_case(C, G, mode, "eight", {"mm_q8a", "mm_q8b", "mm_f16a", "mm_f16b", "mm_q8a", "mm_f16b", "mm_q8b", "mm_f16a"}, nt);
        // every weight type at k 4096 (Q8_K activations for the K-quants and IQ2_XXS)
        multi_case(C, G, mode, "all types", {"f32", "f16", "q8", "q2k", "q4k", "iq2"}, nt);
        multi_case(C, G, mode, "one tiny", {"tiny"}, nt);
    }
}
