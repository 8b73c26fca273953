// test_ops.cu — every op of the CUDA backend (src/backend/cuda/cuda_backend.cu) against
// the CPU reference backend (cpu_backend.c) on random inputs, at tiny and Flash shapes,
// in exact and production numerics (the idea of ggml's test-backend-ops).
//
// Owns: `build-cuda/cuda-test-ops` (make cuda compiles it; running needs a GPU). Must
// not: compare the GPU with itself; every expected value comes from the CPU backend.
//
// Bounds: |cuda − cpu| <= tol · max(1, max|cpu|) per op. Ops whose CUDA kernel performs
// the same f32 operations in the same order per element (rope, axpy, hc_post,
// fp8/FP4/F16 rounding, get_rows, topk) must match exactly (tol 0); reductions whose
// order differs (matmul, rmsnorm, attention, indexer, hc_pre/head, pooling) get 1e-4
// (exact) / 2e-4 (production: the same quantised activations, only f32 sums reordered).
// Prints one line per case and a summary; exit status 1 on any failure. `--cpu-self`
// runs the harness with the CPU backend on both sides (no GPU needed).
#include "ops_harness.h"  // first: the C headers inside extern "C"
#include "backend/cuda/cuda_backend.h"

// Compact cached rows (kv_fmt.h) in production numerics: ops_kv.cu. The other cases run on
// f32 rows (the hook below turns the layout off right after creation), as they always did.
void ops_kv(ds4_backend *C, ds4_backend *G, const char *mode);
extern "C" void ds4_cuda_set_kv_compact(ds4_backend *be, int on);

// ---- a model-less weight mapping: tensors in one in-memory GGUF (kW, ops_harness.h) --

static int make_model(ds4_model *m, uint8_t **buf) {
    char err[256];
    ds4_gguf_writer *w = ds4_gguf_writer_new(32);
    std::vector<std::vector<uint8_t>> data;
    std::vector<const void *> ptrs;
    for (const Wt &t : kW) {
        uint64_t ne[3] = {t.ne0, t.ne1, t.ne2};
        int64_t i = ds4_gguf_w_tensor(w, t.name, t.type, 2, ne);
        if (i < 0) return -1;
        uint64_t rb = 0;
        ds4_type_row_bytes(t.type, t.ne0, &rb);
        std::vector<uint8_t> d(rb * t.ne1 * t.ne2);
        std::vector<float> row(t.ne0);
        for (uint64_t r = 0; r < t.ne1 * t.ne2; r++) {
            for (auto &x : row) x = srand1() / sqrtf((float)t.ne0) * 4;
            ds4_quantize_row(t.type, row.data(), d.data() + r * rb, (int64_t)t.ne0, NULL);
        }
        data.push_back(std::move(d));
    }
    for (auto &d : data) ptrs.push_back(d.data());
    size_t sz = 0;
    if (ds4_gguf_w_to_buffer(w, ptrs.data(), buf, &sz, err, sizeof err) < 0) return -1;
    ds4_gguf_writer_free(w);
    ds4_gguf *g = NULL;
    if (ds4_gguf_open_buffer(&g, *buf, sz, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    memset(m, 0, sizeof *m);
    m->gguf = g;
    m->hp.n_expert_used = 6;
    m->hp.n_ff_exp = 64;
    m->hp.n_embd = 64;
    m->hp.n_rot = 64;   // the layout of the generic attention op's compact rows (ops_kv.cu)
    for (size_t i = 0; i < sizeof kW / sizeof kW[0]; i++) {
        const ds4_gguf_tensor *gt = ds4_gguf_find_tensor(g, kW[i].name);
        g_t[i].data = gt->data;
        g_t[i].type = kW[i].type;
        g_t[i].ne[0] = kW[i].ne0;
        g_t[i].ne[1] = kW[i].ne1;
        g_t[i].ne[2] = kW[i].ne2;
        ds4_type_row_bytes(kW[i].type, kW[i].ne0, &g_t[i].row_bytes);
    }
    return 0;
}

static void run(ds4_backend *C, ds4_backend *G, const char *mode) {
    char name[128];
    const bool prod = C->numerics == DS4_NUM_PROD;
    const double tq = prod ? 2e-4 : 1e-4;
    char err[256];
    C->reserve(C, 8, 4096, err, sizeof err);
    G->reserve(G, 8, 4096, err, sizeof err);
    // matmul: every type, one token and a batch of 5 with a strided output
    for (size_t i = 0; i < sizeof kW / sizeof kW[0]; i++) {
        const ds4_tensor *W = &g_t[i];
        if (!strcmp(kW[i].name, "emb") || !strncmp(kW[i].name, "hcfn", 4) || !strncmp(kW[i].name, "mm_", 3)) continue;
        const int64_t k = (int64_t)W->ne[0], n = (int64_t)W->ne[1];
        for (int nt : {1, 5}) {
            const int64_t ys = nt == 1 ? n : n + 3;
            Pair x = put(C, G, rvec((size_t)(k * nt))), y = put(C, G, std::vector<float>((size_t)(ys * nt), 0.f));
            C->matmul(C, W, 0, 1, (uint64_t)n - 1, x.c, k, y.c, ys, nt);
            G->matmul(G, W, 0, 1, (uint64_t)n - 1, x.g, k, y.g, ys, nt);
            snprintf(name, sizeof name, "%s matmul %s %lldx%lld tok %d", mode, kW[i].name, (long long)n - 1, (long long)k, nt);
            check(name, y, tq);
            drop(x);
            drop(y);
        }
    }
    // matmul_groups (the grouped output projection) vs CPU matmul per group
    if (G->matmul_groups) {
        const ds4_tensor *W = &g_t[7];
        const int Gn = 8;
        const uint64_t nr = W->ne[1] / Gn;
        const int64_t k = (int64_t)W->ne[0];
        Pair x = put(C, G, rvec((size_t)(k * Gn))), y = put(C, G, std::vector<float>(W->ne[1], 0.f));
        for (int g = 0; g < Gn; g++) C->matmul(C, W, 0, g * nr, nr, x.c + g * k, k * Gn, y.c + g * nr, (int64_t)W->ne[1], 1);
        G->matmul_groups(G, W, Gn, nr, x.g, k, k * Gn, y.g, (int64_t)W->ne[1], 1);
        snprintf(name, sizeof name, "%s matmul_groups 8 x %llu", mode, (unsigned long long)nr);
        check(name, y, tq);
        drop(x);
        drop(y);
    }
    // get_rows: F16 / F32 / Q8_0 gathered on the device, Q2_K through the host path
    for (const char *wn : {"emb", "f32", "q8", "q2k"}) {
        const ds4_tensor *E = wt(wn);
        int32_t ids[3] = {5, 0, (int32_t)E->ne[1] - 1};
        Pair y = put(C, G, std::vector<float>(3 * E->ne[0], 0.f));
        C->get_rows(C, E, ids, 3, y.c);
        G->get_rows(G, E, ids, 3, y.g);
        snprintf(name, sizeof name, "%s get_rows %s", mode, wn);
        check(name, y, 0);
        drop(y);
    }
    // rmsnorm (weighted, in place, strided) and unweighted
    {
        Pair x = put(C, G, rvec(3 * 4100, 3)), w = put(C, G, rvec(4096));
        C->rmsnorm(C, x.c, 4100, w.c, x.c, 4100, 4096, 3, 1e-6);
        G->rmsnorm(G, x.g, 4100, w.g, x.g, 4100, 4096, 3, 1e-6);
        snprintf(name, sizeof name, "%s rmsnorm 3x4096", mode);
        check(name, x, 1e-6);
        drop(x);
        drop(w);
    }
    // rope, forward and inverse, Flash's 64 heads x 512 with 64 rotated dims
    {
        std::vector<float> inv(32);
        for (int j = 0; j < 32; j++) inv[j] = powf(10000.f, -2.f * j / 64);
        Pair x = put(C, G, rvec(64 * 512));
        for (bool invd : {false, true}) {
            C->rope(C, x.c, 512, 64, 512, 64, 123457, inv.data(), invd);
            G->rope(G, x.g, 512, 64, 512, 64, 123457, inv.data(), invd);
        }
        snprintf(name, sizeof name, "%s rope 64x512 pos 123457 fwd+inv", mode);
        check(name, x, 0);
        drop(x);
    }
    // axpy, swiglu
    {
        Pair y = put(C, G, rvec(5000)), x = put(C, G, rvec(5000)), u = put(C, G, rvec(5000, 20));
        C->axpy(C, y.c, x.c, 0.37f, 5000);
        G->axpy(G, y.g, x.g, 0.37f, 5000);
        snprintf(name, sizeof name, "%s axpy", mode);
        check(name, y, 0);
        Pair g = put(C, G, rvec(5000, 20));
        C->swiglu(C, g.c, u.c, g.c, 5000, 10.f, 0.7f);
        G->swiglu(G, g.g, u.g, g.g, 5000, 10.f, 0.7f);
        snprintf(name, sizeof name, "%s swiglu clamp 10", mode);
        check(name, g, 1e-6);
        drop(y);
        drop(x);
        drop(u);
        drop(g);
    }
    // hyper-connections: h = 4, d = 4096, 2 tokens
    {
        const int h = 4, nt = 2, mw = (2 + h) * h;
        const int64_t d = 4096;
        Pair mix = put(C, G, rvec(nt * mw, 2)), sc = put(C, G, rvec(3)), base = put(C, G, rvec(mw, 0.5f));
        Pair H = put(C, G, rvec(nt * h * d)), x = put(C, G, std::vector<float>(nt * d, 0.f));
        Pair post = put(C, G, std::vector<float>(nt * h, 0.f)), comb = put(C, G, std::vector<float>(nt * h * h, 0.f));
        C->hc_pre(C, mix.c, sc.c, base.c, H.c, nt, h, d, 20, 1e-6, x.c, post.c, comb.c);
        G->hc_pre(G, mix.g, sc.g, base.g, H.g, nt, h, d, 20, 1e-6, x.g, post.g, comb.g);
        snprintf(name, sizeof name, "%s hc_pre x", mode);
        check(name, x, 1e-5);
        snprintf(name, sizeof name, "%s hc_pre post", mode);
        check(name, post, 1e-6);
        snprintf(name, sizeof name, "%s hc_pre comb (Sinkhorn 20)", mode);
        check(name, comb, 1e-5);
        Pair y = put(C, G, rvec(nt * d)), Ho = put(C, G, std::vector<float>(nt * h * d, 0.f));
        C->hc_post(C, y.c, H.c, post.c, comb.c, nt, h, d, Ho.c);
        G->hc_post(G, y.g, H.g, post.g, comb.g, nt, h, d, Ho.g);
        snprintf(name, sizeof name, "%s hc_post", mode);
        check(name, Ho, 1e-5);
        C->hc_head(C, mix.c, sc.c, base.c, H.c, nt, h, d, 1e-6, y.c);
        G->hc_head(G, mix.g, sc.g, base.g, H.g, nt, h, d, 1e-6, y.g);
        snprintf(name, sizeof name, "%s hc_head", mode);
        check(name, y, 1e-5);
        for (Pair *p : {&mix, &sc, &base, &H, &x, &post, &comb, &y, &Ho}) drop(*p);
    }
    // compressor pooling: HCA (coff 1, R 128, hd 512) and CSA (coff 2, R 4, with prev)
    for (int coff : {1, 2}) {
        const int R = coff == 1 ? 128 : 4;
        const int64_t hd = 512, rs = 2 * coff * hd;
        Pair cur = put(C, G, rvec(R * rs, 3)), prev = put(C, G, rvec(R * rs, 3)), out = put(C, G, std::vector<float>(hd, 0.f));
        C->compress_pool(C, cur.c, coff == 2 ? prev.c : NULL, rs, R, coff, hd, out.c);
        G->compress_pool(G, cur.g, coff == 2 ? prev.g : NULL, rs, R, coff, hd, out.g);
        snprintf(name, sizeof name, "%s compress_pool coff %d R %d", mode, coff, R);
        check(name, out, 1e-5);
        drop(cur);
        drop(prev);
        drop(out);
    }
    // attention: 64 heads x 512, 128 window rows + 512 selected compressed rows, sinks
    {
        const int nh = 64, na = 128, nb = 512;
        const int64_t hd = 512;
        std::vector<int32_t> ia(na), ib(nb);
        for (int j = 0; j < na; j++) ia[j] = (j * 7 + 3) % 200;
        for (int j = 0; j < nb; j++) ib[j] = (j * 13 + 5) % 1024;
        Pair q = put(C, G, rvec(nh * hd, 0.2f)), ra = put(C, G, rvec(200 * hd)), rb = put(C, G, rvec(1024 * hd));
        Pair sk = put(C, G, rvec(nh)), o = put(C, G, std::vector<float>(nh * hd, 0.f));
        const float sc = 1.f / sqrtf(512.f);
        C->attention(C, q.c, nh, hd, ra.c, ia.data(), na, rb.c, ib.data(), nb, sk.c, sc, o.c);
        G->attention(G, q.g, nh, hd, ra.g, ia.data(), na, rb.g, ib.data(), nb, sk.g, sc, o.g);
        snprintf(name, sizeof name, "%s attention 64x512, 128+512 rows", mode);
        check(name, o, 1e-5);
        for (Pair *p : {&q, &ra, &rb, &sk, &o}) drop(*p);
    }
    // indexer scores (64 heads x 128, 1024 keys) and top-k 512 (with ties)
    {
        Pair q = put(C, G, rvec(64 * 128)), w = put(C, G, rvec(64)), K = put(C, G, rvec(1024 * 128));
        Pair s = put(C, G, std::vector<float>(1024, 0.f));
        C->indexer_scores(C, q.c, w.c, 0.01f, 64, 128, K.c, 1024, s.c);
        G->indexer_scores(G, q.g, w.g, 0.01f, 64, 128, K.g, 1024, s.g);
        snprintf(name, sizeof name, "%s indexer_scores 64x128, 1024 keys", mode);
        check(name, s, 1e-4);
        // odd shapes: heads beyond one 64-head pass, a dim not a multiple of 4, a partial key tile
        Pair q2 = put(C, G, rvec(70 * 37)), w2 = put(C, G, rvec(70)), K2 = put(C, G, rvec(45 * 37));
        Pair s2 = put(C, G, std::vector<float>(45, 0.f));
        C->indexer_scores(C, q2.c, w2.c, 0.3f, 70, 37, K2.c, 45, s2.c);
        G->indexer_scores(G, q2.g, w2.g, 0.3f, 70, 37, K2.g, 45, s2.g);
        snprintf(name, sizeof name, "%s indexer_scores 70x37, 45 keys", mode);
        check(name, s2, 1e-4);
        for (Pair *p : {&q2, &w2, &K2, &s2}) drop(*p);
        std::vector<float> sv = rvec(1024);
        for (int i = 0; i < 1024; i += 3) sv[i] = 0.25f; // ties
        Pair t = put(C, G, sv);
        std::vector<int32_t> a(512), b(512);
        C->topk(C, t.c, 1024, 512, a.data());
        G->topk(G, t.g, 1024, 512, b.data());
        const bool ok = a == b;
        printf("%s %-44s\n", ok ? "ok  " : "FAIL", "topk 512 of 1024 (ties) identical");
        (ok ? g_pass : g_fail)++;
        for (Pair *p : {&q, &w, &K, &s, &t}) drop(*p);
    }
    // production simulations: FP8 on 448 of 512 dims, Hadamard + FP4 on 128, F16 rounding
    {
        Pair x = put(C, G, rvec(4 * 512, 5));
        C->fp8_sim(C, x.c, 512, 4, 448);
        G->fp8_sim(G, x.g, 512, 4, 448);
        snprintf(name, sizeof name, "%s fp8_sim 4 x 448", mode);
        check(name, x, 0);
        Pair y = put(C, G, rvec(64 * 128, 2));
        C->hadamard_fp4_sim(C, y.c, 128, 64, 128);
        G->hadamard_fp4_sim(G, y.g, 128, 64, 128);
        snprintf(name, sizeof name, "%s hadamard_fp4_sim 64 x 128", mode);
        check(name, y, 0);
        Pair z = put(C, G, rvec(5000, 70000));
        C->round_f16(C, z.c, 5000);
        G->round_f16(G, z.g, 5000);
        snprintf(name, sizeof name, "%s round_f16 (incl. overflow)", mode);
        check(name, z, 0);
        drop(x);
        drop(y);
        drop(z);
    }
    // repeat_rows (optional): vs the CPU's copies, aligned (d % 4 == 0) and odd d; exact
    for (int64_t d : {4096, 61})
        if (G->repeat_rows) {
            const int n = 5, h = 4;
            Pair src = put(C, G, rvec((size_t)(n * d))), dst = put(C, G, rvec((size_t)(n * h * d)));
            for (int t = 0; t < n; t++)
                for (int k = 0; k < h; k++) C->copy(C, dst.c + (t * h + k) * d, src.c + t * d, (size_t)d * 4);
            G->repeat_rows(G, dst.g, src.g, n, h, d);
            snprintf(name, sizeof name, "%s repeat_rows 5 x 4 x %lld", mode, (long long)d);
            check(name, dst, 0);
            drop(src);
            drop(dst);
        }
    // fused ops (tests/cuda/ops_*.cu)
    ops_fused_hc(C, G, mode);
    ops_fused_qkv(C, G, mode);
    ops_fused_attn(C, G, mode);
    ops_fused_mm(C, G, mode);
    ops_batch_qkv(C, G, mode);
    ops_batch_indexer(C, G, mode);
    ops_batch_attn(C, G, mode);
    ops_batch_moe(C, G, mode);
    ops_kv(C, G, mode);
    ops_kv_decode(C, G, mode);
    ops_topk_vals(C, G, mode);
}

// --cpu-self: both sides on the CPU backend (checks the harness itself without a GPU:
// every difference must be 0).
int main(int argc, char **argv) {
    const bool self = argc > 1 && !strcmp(argv[1], "--cpu-self");
    ds4_model m;
    uint8_t *buf = NULL;
    if (make_model(&m, &buf) < 0) {
        fprintf(stderr, "cannot build the test mapping\n");
        return 1;
    }
    for (ds4_numerics num : {DS4_NUM_EXACT, DS4_NUM_PROD}) {
        char err[512];
        ds4_backend *C = NULL, *G = NULL;
        if (ds4_backend_cpu_create(&C, 0, num, err, sizeof err) < 0 ||
            (self ? ds4_backend_cpu_create(&G, 0, num, err, sizeof err)
                  : ds4_backend_cuda_create(&G, &m, num, err, sizeof err)) < 0) {
            fprintf(stderr, "backend: %s\n", err);
            return 1;
        }
        if (!self) ds4_cuda_set_kv_compact(G, 0);   // f32 rows unless a case turns them on
        run(C, G, num == DS4_NUM_EXACT ? "exact" : "prod ");
        C->free(C);
        G->free(G);
    }
    ds4_gguf_close(m.gguf);
    free(buf);
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
