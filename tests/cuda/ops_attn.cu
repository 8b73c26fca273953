// ops_attn.cu — cuda-test-ops cases of the fused ops topk_dev and attention_ex (backend.h),
// against the CPU backend's op sequence (topk; attention then rope with inverse = true).
// Must not: take an expected value from the GPU (the run-twice checks only compare the GPU
// with itself for bit-identical repeats: a property, not a reference).
//
// Tolerances. topk_dev: the selected index set is exact integer data and must be identical
// to C->topk (the same order on keys; ties, NaN, -inf, ±0 included). attention_ex: 1e-5 ·
// max(1, max|cpu|), as the generic attention case: the GPU sums each 512-long dot product
// in another order (per-lane partials + a butterfly) and the softmax per 16-row tile and
// over a merge tree of chunks instead of the CPU's one online pass, so every output
// differs from the CPU's by f32 rounding only (~1e-6 of max|row| for logits of magnitude
// <= ~10); the inverse rope is the same arithmetic as cu_rope/k_rope and is a rotation,
// so it keeps that bound. One dropped or doubled row moves outputs by >= ~|row| / N_eff
// (1e-4 even with 8320 rows and flat weights), a wrong rope by ~|out|: both fail.
#include "ops_harness.h"

namespace {

void verdict(bool ok, const char *name) {
    printf("%s %-44s\n", ok ? "ok  " : "FAIL", name);
    (ok ? g_pass : g_fail)++;
}

// topk_dev of sv vs the CPU backend's topk (and a second GPU run bit-identical).
void topk_case(ds4_backend *C, ds4_backend *G, const char *mode, const char *what, const std::vector<float> &sv,
               int k) {
    const int n = (int)sv.size();
    Pair s = put(C, G, sv);
    std::vector<int32_t> a((size_t)k, -1), b((size_t)k, -2), b2((size_t)k, -3);
    C->topk(C, s.c, n, k, a.data());
    int32_t *d = (int32_t *)G->alloc(G, (size_t)k * sizeof(int32_t));
    G->topk_dev(G, s.g, n, k, d);
    G->read(G, b.data(), d, (size_t)k * sizeof(int32_t));
    G->zero(G, d, (size_t)k * sizeof(int32_t));
    G->topk_dev(G, s.g, n, k, d);
    G->read(G, b2.data(), d, (size_t)k * sizeof(int32_t));
    char name[160];
    snprintf(name, sizeof name, "%s topk_dev %d of %d %s", mode, k, n, what);
    bool ok = a == b && b == b2;
    if (a != b)
        for (int i = 0; i < k; i++)
            if (a[i] != b[i]) {
                printf("     first difference at %d: cpu %d gpu %d\n", i, a[i], b[i]);
                break;
            }
    verdict(ok, name);
    G->release(G, d);
    drop(s);
}

void topk_cases(ds4_backend *C, ds4_backend *G, const char *mode) {
    const float nan_p = NAN, nan_m = -NAN;
    // random scores with ties (as the generic topk case)
    {
        std::vector<float> v = rvec(1024);
        for (int i = 0; i < 1024; i += 3) v[i] = 0.25f;
        topk_case(C, G, mode, "(ties)", v, 512);
    }
    // NaN (both signs, other payloads), ±inf, ±0: the threshold inside the -inf run and
    // inside the NaN run (ties there go to the lower index)
    {
        std::vector<float> v = rvec(3001, 5);
        uint32_t payload = 0x7fc12345u;
        float nan_q;
        memcpy(&nan_q, &payload, 4);
        for (size_t i = 0; i < v.size(); i++) {
            const double u = urand();
            if (u < 0.30) v[i] = i % 3 == 0 ? nan_p : i % 3 == 1 ? nan_m : nan_q;
            else if (u < 0.40) v[i] = -INFINITY;
            else if (u < 0.43) v[i] = INFINITY;
            else if (u < 0.50) v[i] = i & 1 ? 0.0f : -0.0f;
        }
        int fin = 0, ninf = 0;
        for (float x : v) {
            if (!isnan(x) && x != -INFINITY) fin++;
            if (x == -INFINITY) ninf++;
        }
        topk_case(C, G, mode, "(NaN, inf, ±0 mix)", v, 512);
        topk_case(C, G, mode, "(cut inside -inf)", v, fin + ninf / 2);
        topk_case(C, G, mode, "(cut inside NaN)", v, fin + ninf + 7);
        topk_case(C, G, mode, "(all)", v, (int)v.size());
    }
    // ±0 ties only, cut in the middle of the zeros
    {
        std::vector<float> v(777);
        for (size_t i = 0; i < v.size(); i++) v[i] = i % 5 == 0 ? 1.0f : (i & 1 ? 0.0f : -0.0f);
        topk_case(C, G, mode, "(±0 ties)", v, 300);
    }
    // all NaN, all equal
    topk_case(C, G, mode, "(all NaN)", std::vector<float>(1000, nan_p), 100);
    topk_case(C, G, mode, "(all equal)", std::vector<float>(5000, 0.5f), 512);
    topk_case(C, G, mode, "(all equal, uncached)", std::vector<float>(40000, -3.0f), 512);
    // n = k, n = k + 1, k = 1
    topk_case(C, G, mode, "(n = k)", rvec(777), 777);
    topk_case(C, G, mode, "(n = k + 1)", rvec(778), 777);
    topk_case(C, G, mode, "(k = 1)", rvec(5000), 1);
    topk_case(C, G, mode, "(k = 1, n = 1)", rvec(1), 1);
    {
        std::vector<float> v = rvec(4096);
        v[17] = v[4000] = 2.0f;   // the maximum twice: the lower index wins
        topk_case(C, G, mode, "(k = 1, tied max)", v, 1);
    }
    // Flash sizes: n = ctx / 4, k = 512; cached (<= 36864) and global-memory passes
    topk_case(C, G, mode, "(random)", rvec(32768), 512);
    topk_case(C, G, mode, "(random)", rvec(65536), 512);
    topk_case(C, G, mode, "(random, 1M context)", rvec(262144), 512);
    // many equal scores: a few levels only
    {
        std::vector<float> v(20000);
        for (auto &x : v) x = (float)(int)(urand() * 3) * 0.5f;
        topk_case(C, G, mode, "(3 levels)", v, 512);
        v.resize(50001);
        for (auto &x : v) x = (float)(int)(urand() * 3) * 0.5f;
        topk_case(C, G, mode, "(3 levels, uncached)", v, 4097);
    }
    // one exponent only (the first radix digit is one bin) and last-bit differences
    {
        std::vector<float> v(10000);
        for (auto &x : v) x = 1.0f + (float)urand() * 0.5f;
        topk_case(C, G, mode, "(one exponent)", v, 512);
        for (size_t i = 0; i < v.size(); i++) v[i] = nextafterf(1.0f, 2.0f) + (float)(i % 7) * 1.1920929e-7f;
        topk_case(C, G, mode, "(last-bit differences)", v, 3000);
    }
    // typical indexer score shape: small positive values of a few exponents
    {
        std::vector<float> v(8191);
        for (auto &x : v) x = (float)(urand() * urand()) * 0.01f;
        topk_case(C, G, mode, "(indexer-like)", v, 512);
    }
}

// attention_ex vs C->attention + C->rope(inverse). ib_mode 0: host ib, 1: device ib.
void attn_case(ds4_backend *C, ds4_backend *G, const char *mode, int nh, int64_t hd, int na, int nrows_a, int nb,
               int nrows_b, bool ib_seq, int ib_mode, float qs, float sks, int n_rot, int64_t pos, bool twice) {
    std::vector<int32_t> ia((size_t)na), ib((size_t)nb);
    for (auto &x : ia) x = (int32_t)(urand() * nrows_a);
    for (int j = 0; j < nb; j++) ib[j] = ib_seq ? j : (int32_t)(urand() * nrows_b);
    std::vector<float> inv((size_t)(n_rot / 2 > 0 ? n_rot / 2 : 1));
    for (int j = 0; j < n_rot / 2; j++) inv[j] = powf(10000.f, -2.f * j / (float)n_rot);
    Pair q = put(C, G, rvec((size_t)(nh * hd), qs)), ra = put(C, G, rvec((size_t)(nrows_a * hd) + 1));
    Pair rb = put(C, G, rvec((size_t)(nrows_b * hd) + 1)), sk = put(C, G, rvec((size_t)nh, sks));
    Pair o = put(C, G, std::vector<float>((size_t)(nh * hd), 7.f));
    const float sc = 1.f / sqrtf((float)hd);
    C->attention(C, q.c, nh, hd, ra.c, ia.data(), na, rb.c, ib.data(), nb, sk.c, sc, o.c);
    C->rope(C, o.c, hd, nh, hd, n_rot, pos, inv.data(), true);
    int32_t *dib = NULL;
    if (ib_mode == 1) {
        dib = (int32_t *)G->alloc(G, (size_t)(nb > 0 ? nb : 1) * sizeof(int32_t));
        if (nb > 0) G->write(G, dib, ib.data(), (size_t)nb * sizeof(int32_t));
    }
    const int32_t *pib = ib_mode == 1 ? dib : ib.data();
    G->attention_ex(G, q.g, nh, hd, ra.g, ia.data(), na, rb.g, pib, nb, ib_mode == 1, sk.g, sc, n_rot, pos, inv.data(),
                    o.g);
    char name[160];
    snprintf(name, sizeof name, "%s attention_ex %dx%lld %d+%d rows%s rot %d%s", mode, nh, (long long)hd, na, nb,
             ib_mode == 1 ? " ib dev" : "", n_rot, qs > 1 ? " peaked" : "");
    check(name, o, 1e-5);
    if (twice) {   // a second run must give the same bits (no timing dependence)
        std::vector<float> r1(o.n), r2(o.n);
        G->read(G, r1.data(), o.g, o.n * 4);
        G->zero(G, o.g, o.n * 4);
        G->attention_ex(G, q.g, nh, hd, ra.g, ia.data(), na, rb.g, pib, nb, ib_mode == 1, sk.g, sc, n_rot, pos,
                        inv.data(), o.g);
        G->read(G, r2.data(), o.g, o.n * 4);
        snprintf(name, sizeof name, "%s attention_ex %dx%lld %d+%d repeat bit-identical", mode, nh, (long long)hd, na,
                 nb);
        verdict(memcmp(r1.data(), r2.data(), o.n * 4) == 0, name);
    }
    if (dib) G->release(G, dib);
    for (Pair *p : {&q, &ra, &rb, &sk, &o}) drop(*p);
}

void attn_cases(ds4_backend *C, ds4_backend *G, const char *mode) {
    // Flash CSA decode: 64 heads x 512, 128 window rows + 512 selected compressed rows
    attn_case(C, G, mode, 64, 512, 128, 200, 512, 1024, false, 0, 0.2f, 1.f, 64, 123457, true);
    attn_case(C, G, mode, 64, 512, 128, 200, 512, 1024, false, 1, 0.2f, 1.f, 64, 123457, false);
    attn_case(C, G, mode, 64, 512, 128, 200, 512, 1024, false, 1, 6.f, 3.f, 64, 4095, true);
    // HCA-like: every compressed row of a 1M context (nb = 8192, ib host: staged copies)
    attn_case(C, G, mode, 64, 512, 128, 128, 8192, 8192, true, 0, 0.2f, 1.f, 64, 1048575, true);
    attn_case(C, G, mode, 64, 512, 128, 128, 8192, 8192, true, 1, 6.f, 1.f, 64, 1048575, false);
    // HCA at 4k: few rows, the indices inline
    attn_case(C, G, mode, 64, 512, 128, 128, 32, 32, true, 0, 0.2f, 1.f, 64, 4095, false);
    // tiny: 4 heads x 64, n_rot 16, odd row counts; empty row sets
    attn_case(C, G, mode, 4, 64, 7, 11, 13, 29, false, 0, 1.f, 1.f, 16, 77, false);
    attn_case(C, G, mode, 4, 64, 7, 11, 13, 29, false, 1, 1.f, 1.f, 16, 77, false);
    attn_case(C, G, mode, 4, 64, 0, 1, 5, 9, false, 0, 1.f, 1.f, 16, 5, false);
    attn_case(C, G, mode, 4, 64, 3, 5, 0, 1, false, 1, 1.f, 1.f, 16, 5, false);
    attn_case(C, G, mode, 4, 64, 0, 1, 0, 1, false, 0, 1.f, 1.f, 16, 5, false);
    attn_case(C, G, mode, 4, 64, 9, 11, 4999, 5003, false, 0, 4.f, 1.f, 16, 99, true);   // deep merge tree
    // odd head dim (scalar path), heads not a multiple of the group, other widths
    attn_case(C, G, mode, 3, 67, 5, 8, 21, 40, false, 0, 1.f, 1.f, 16, 1000, false);
    attn_case(C, G, mode, 12, 128, 40, 64, 300, 512, false, 1, 2.f, 1.f, 32, 31, true);
    attn_case(C, G, mode, 16, 256, 50, 64, 200, 400, false, 0, 2.f, 1.f, 64, 7, false);
    attn_case(C, G, mode, 5, 500, 17, 20, 33, 40, false, 0, 2.f, 1.f, 62, 3, false);
    // many host window rows with a device ib (ia staged)
    attn_case(C, G, mode, 8, 512, 500, 600, 100, 300, false, 1, 2.f, 1.f, 64, 12, false);
}

}  // namespace

void ops_fused_attn(ds4_backend *C, ds4_backend *G, const char *mode) {
    if (G->topk_dev) topk_cases(C, G, mode);
    else printf("skip %s topk_dev (not provided)\n", mode);
    if (G->attention_ex) attn_cases(C, G, mode);
    else printf("skip %s attention_ex (not provided)\n", mode);
}
