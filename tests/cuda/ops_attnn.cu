// ops_attnn.cu — cuda-test-ops cases of the batched op attention_n (backend.h), against
// the CPU backend's per-token sequence (attention over the host-built row lists of
// forward.c's attention_layer, then rope with inverse = true), and against the CUDA
// backend's own per-token attention_ex. Must not: take an expected value from the GPU
// (the attention_ex comparison and the bit-identity checks are properties of the GPU op,
// never its reference).
//
// Data: rows of the raw ring (slot = position % raw_cap, wrapping in the small cases) and
// of the compressed cache are random; in production numerics they are f16 values, as
// qkv_rope / compress_rows leave them (the tensor-core path relies on it), in exact
// numerics arbitrary f32. idx rows of tokens with n_vis > k_top hold random distinct
// ascending indices < n_vis; the rows of the other tokens hold 0s, which must not be used.
// Output buffers start at 0.75 everywhere, so the padding of padded strides (and any row
// not written) must come back unchanged on both sides: a stray write fails.
//
// Tolerances, |gpu − ref| <= tol · max(1, max|ref|):
//  - exact numerics (f32 CUDA-core path) and production at shapes outside the tensor path:
//    1e-5, the attention_ex bound (ops_attn.cu): f32 dot products and softmax sums in
//    another order (per-lane fmaf chains + xor tree, per-32-row online softmax) differ
//    from the CPU's by ~1e-6 of max|row| for logits of magnitude <= ~10;
//  - production, tensor path (hd 64/128/256/512): the same 1e-5 for q of magnitude <= 2,
//    3e-5 for the peaked case (|q| <= 6). The extra rounding of the path: q' = hi + lo
//    equals q · 2^e to 2^-23 · max|q_h|, 2^15 · p = hi + lo to 2^-22 · p, products exact,
//    f32 accumulation (truncating) in the tensor cores; per logit that is <= ~scale · 2^-21
//    · Σ|q_i k_i| (<= 5e-6 at |q| <= 2, hd 512, |k| <= 1; 1.6e-5 at |q| <= 6) and the
//    output moves by at most twice that times max|row|. The typical error is ~10x below.
//    Dropping the lo half of q moves outputs by ~3e-5 (|q| <= 2) and ~1e-4 (peaked); one
//    dropped, doubled or wrong row by >= ~1e-3; a wrong rope by ~|out|: all fail.
//  - bit-identity (tol 0): a token computed alone (n_tok 1 at its position) equals the
//    same token inside the batch, and a second run of the batch equals the first.
//  - position 0 (one row): every output finite.
#include "ops_harness.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>

namespace {

void verdict(bool ok, const char *name) {
    printf("%s %-44s\n", ok ? "ok  " : "FAIL", name);
    (ok ? g_pass : g_fail)++;
}

// check() for two host vectors (ref, got), the same bound and line format.
void cmp(const char *name, const std::vector<float> &ref, const std::vector<float> &got, double tol) {
    double mx = 1, d = 0;
    for (float x : ref)
        if (isfinite(x)) mx = fmax(mx, fabs(x));
    for (size_t i = 0; i < ref.size(); i++) {
        double e = ref[i] == got[i] ? 0.0 : fabs((double)ref[i] - got[i]);
        if (!(e <= d)) d = isnan(e) ? INFINITY : e;
    }
    const bool ok = d <= tol * mx;
    printf("%s %-44s max|diff| %.3e (bound %.1e)\n", ok ? "ok  " : "FAIL", name, d, tol * mx);
    (ok ? g_pass : g_fail)++;
}

struct AnCase {
    const char *what;
    int nh;
    int64_t hd;
    int n_rot, n_win, raw_cap, R, k_top;
    bool use_idx;
    int64_t pos0;
    int n_tok;
    float qa;          // q uniform in (−qa, qa)
    int64_t qpad, opad; // extra floats per token row of q / out
};

float f16r(float x) { return ds4_f16_to_f32(ds4_f32_to_f16(x)); }

void an_case(ds4_backend *C, ds4_backend *G, const char *mode, const AnCase &k) {
    const bool prod = G->numerics == DS4_NUM_PROD;
    const int64_t hd = k.hd, qs = k.nh * hd + k.qpad, os = k.nh * hd + k.opad;
    const bool tc = prod && (hd == 64 || hd == 128 || hd == 256 || hd == 512);
    const double tol = tc && k.qa > 2 ? 3e-5 : 1e-5;
    const int64_t ncm = k.R ? (k.pos0 + k.n_tok) / k.R : 0;
    std::vector<float> raw = rvec((size_t)(k.raw_cap * hd)), comp = rvec((size_t)((ncm > 0 ? ncm : 1) * hd));
    if (prod) {
        for (auto &x : raw) x = f16r(x);
        for (auto &x : comp) x = f16r(x);
    }
    const int half = k.n_rot / 2;
    std::vector<float> inv((size_t)(half > 0 ? half : 1));
    for (int j = 0; j < half; j++) inv[j] = powf(10000.f, -2.f * j / (float)k.n_rot);
    const int kt = k.k_top > 0 ? k.k_top : 1;
    std::vector<int32_t> idx((size_t)k.n_tok * kt, 0);
    // host row lists of every token (forward.c attention_layer)
    std::vector<std::vector<int32_t>> ia((size_t)k.n_tok), ib((size_t)k.n_tok);
    for (int t = 0; t < k.n_tok; t++) {
        const int64_t p = k.pos0 + t;
        for (int64_t pp = p - k.n_win + 1; pp <= p; pp++)
            if (pp >= 0) ia[t].push_back((int32_t)(pp % k.raw_cap));
        const int64_t nv = k.R ? (p + 1) / k.R : 0;
        if (k.use_idx && nv > k.k_top) {
            std::vector<int32_t> all((size_t)nv);
            for (int64_t i = 0; i < nv; i++) all[i] = (int32_t)i;
            for (int i = 0; i < k.k_top; i++) std::swap(all[i], all[i + (size_t)(urand() * (double)(nv - i))]);
            std::sort(all.begin(), all.begin() + k.k_top);
            for (int i = 0; i < k.k_top; i++) idx[(size_t)t * kt + i] = all[i];
            ib[t].assign(all.begin(), all.begin() + k.k_top);
        } else {
            for (int64_t c = 0; c < nv; c++) ib[t].push_back((int32_t)c);
        }
    }
    Pair q = put(C, G, rvec((size_t)(k.n_tok * qs), k.qa)), rw = put(C, G, raw), cp = put(C, G, comp);
    Pair sk = put(C, G, rvec((size_t)k.nh)), o = put(C, G, std::vector<float>((size_t)(k.n_tok * os), 0.75f));
    int32_t *didx = (int32_t *)G->alloc(G, idx.size() * sizeof(int32_t));
    G->write(G, didx, idx.data(), idx.size() * sizeof(int32_t));
    const float sc = 1.f / sqrtf((float)hd);
    const float *gcomp = k.R ? cp.g : NULL;

    // reference: the CPU backend's per-token sequence
    for (int t = 0; t < k.n_tok; t++) {
        float *ot = o.c + t * os;
        C->attention(C, q.c + t * qs, k.nh, hd, rw.c, ia[t].data(), (int)ia[t].size(), cp.c, ib[t].data(),
                     (int)ib[t].size(), sk.c, sc, ot);
        C->rope(C, ot, hd, k.nh, hd, k.n_rot, k.pos0 + t, inv.data(), true);
    }
    G->attention_n(G, q.g, qs, k.nh, hd, rw.g, k.raw_cap, k.n_win, gcomp, k.R, k.use_idx ? didx : NULL, k.k_top,
                   sk.g, sc, k.n_rot, k.pos0, k.n_tok, inv.data(), o.g, os);
    char name[200];
    snprintf(name, sizeof name, "%s attention_n %s %dx%lld t%d@%lld", mode, k.what, k.nh, (long long)hd, k.n_tok,
             (long long)k.pos0);
    check(name, o, tol);

    std::vector<float> got(o.n);
    G->read(G, got.data(), o.g, o.n * 4);
    bool fin = true;
    for (int t = 0; t < k.n_tok; t++)
        for (int64_t i = 0; i < k.nh * hd; i++) fin = fin && isfinite(got[(size_t)(t * os + i)]);
    snprintf(name, sizeof name, "%s attention_n %s finite", mode, k.what);
    verdict(fin, name);

    // the CUDA backend's per-token attention_ex on the same device data
    {
        float *ex = (float *)G->alloc(G, o.n * 4);
        std::vector<float> init(o.n, 0.75f), exv(o.n);
        G->write(G, ex, init.data(), o.n * 4);
        for (int t = 0; t < k.n_tok; t++)
            G->attention_ex(G, q.g + t * qs, k.nh, hd, rw.g, ia[t].data(), (int)ia[t].size(), cp.g, ib[t].data(),
                            (int)ib[t].size(), false, sk.g, sc, k.n_rot, k.pos0 + t, inv.data(), ex + t * os);
        G->read(G, exv.data(), ex, o.n * 4);
        snprintf(name, sizeof name, "%s attention_n %s vs attention_ex", mode, k.what);
        cmp(name, exv, got, tol);
        G->release(G, ex);
    }

    // a token alone == the same token in the batch; a second batch run == the first
    {
        float *solo = (float *)G->alloc(G, (size_t)os * 4);
        std::vector<float> sv((size_t)os);
        bool same = true;
        for (int t : {0, k.n_tok - 1}) {
            G->zero(G, solo, (size_t)os * 4);
            G->attention_n(G, q.g + t * qs, qs, k.nh, hd, rw.g, k.raw_cap, k.n_win, gcomp, k.R,
                           k.use_idx ? didx + (size_t)t * kt : NULL, k.k_top, sk.g, sc, k.n_rot, k.pos0 + t, 1,
                           inv.data(), solo, os);
            G->read(G, sv.data(), solo, (size_t)os * 4);
            same = same && memcmp(sv.data(), got.data() + (size_t)t * os, (size_t)(k.nh * hd) * 4) == 0;
        }
        G->release(G, solo);
        std::vector<float> again(o.n);
        G->zero(G, o.g, o.n * 4);
        G->attention_n(G, q.g, qs, k.nh, hd, rw.g, k.raw_cap, k.n_win, gcomp, k.R, k.use_idx ? didx : NULL, k.k_top,
                       sk.g, sc, k.n_rot, k.pos0, k.n_tok, inv.data(), o.g, os);
        G->read(G, again.data(), o.g, o.n * 4);
        for (int t = 0; t < k.n_tok; t++)
            same = same && memcmp(again.data() + (size_t)t * os, got.data() + (size_t)t * os,
                                  (size_t)(k.nh * hd) * 4) == 0;
        snprintf(name, sizeof name, "%s attention_n %s alone/repeat bit-identical", mode, k.what);
        verdict(same, name);
    }
    G->release(G, didx);
    for (Pair *p : {&q, &rw, &cp, &sk, &o}) drop(*p);
}

// Timing (no verdict): Flash shape (64 heads x 512, n_rot 64, window 128), one prefill
// chunk of n_tok tokens at positions pos0 .. pos0 + n_tok − 1, production numerics, random
// f16 rows; R 4 with idx (k_top 512: 128 + 512 rows per token once n_vis > 512) or R 128
// (all visible). Mean of 3 runs after a warm-up (device-synchronised wall time, includes
// the f16 staging launch), with the tensor-core rate (hi/lo doubles the f16 mma work).
void perf_case(ds4_backend *G, const char *mode, const char *what, int R, int64_t pos0, int n_tok) {
    const int nh = 64, hd = 512, n_win = 128, n_rot = 64, k_top = 512;
    const int raw_cap = n_tok + n_win;   // the chunk's window rows never wrap onto each other
    const int64_t qs = (int64_t)nh * hd, ncm = (pos0 + n_tok) / R;
    std::vector<float> hraw = rvec((size_t)raw_cap * hd), hcomp = rvec((size_t)(ncm > 0 ? ncm : 1) * hd);
    for (auto &x : hraw) x = f16r(x);
    for (auto &x : hcomp) x = f16r(x);
    std::vector<float> hq = rvec((size_t)n_tok * qs), hs = rvec((size_t)nh), inv((size_t)n_rot / 2);
    for (int j = 0; j < n_rot / 2; j++) inv[j] = powf(10000.f, -2.f * j / (float)n_rot);
    std::vector<int32_t> hidx((size_t)n_tok * k_top, 0);
    double rows = 0;
    for (int t = 0; t < n_tok; t++) {
        const int64_t p = pos0 + t, nv = (p + 1) / R;
        for (int c = 0; c < k_top; c++) hidx[(size_t)t * k_top + c] = nv > k_top ? (int32_t)((c * nv) / k_top) : 0;
        rows += (double)std::min<int64_t>(p + 1, n_win) + (double)(nv > k_top ? k_top : nv);
    }
    float *q = (float *)G->alloc(G, hq.size() * 4), *raw = (float *)G->alloc(G, hraw.size() * 4);
    float *comp = (float *)G->alloc(G, hcomp.size() * 4), *sk = (float *)G->alloc(G, hs.size() * 4);
    float *out = (float *)G->alloc(G, (size_t)n_tok * qs * 4);
    int32_t *idx = (int32_t *)G->alloc(G, hidx.size() * sizeof(int32_t));
    G->write(G, q, hq.data(), hq.size() * 4);
    G->write(G, raw, hraw.data(), hraw.size() * 4);
    G->write(G, comp, hcomp.data(), hcomp.size() * 4);
    G->write(G, sk, hs.data(), hs.size() * 4);
    G->write(G, idx, hidx.data(), hidx.size() * sizeof(int32_t));
    double ms = 0;
    for (int rep = 0; rep <= 3; rep++) {
        cudaDeviceSynchronize();
        const auto t0 = std::chrono::steady_clock::now();
        G->attention_n(G, q, qs, nh, hd, raw, raw_cap, n_win, comp, R, R == 4 ? idx : NULL, k_top, sk,
                       1.f / sqrtf((float)hd), n_rot, pos0, n_tok, inv.data(), out, qs);
        cudaDeviceSynchronize();
        const double dt = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (rep > 0) ms += dt / 3;
    }
    const double flop = rows * nh * hd * 2 * 2 * 2;   // QK + P·V, hi + lo, 2 flop per fma
    printf("time %s attention_n %s 64x512 n_tok %d @%lld (%.0f rows/token): %.3f ms (%.0f TFLOP/s f16 mma)\n", mode,
           what, n_tok, (long long)pos0, rows / n_tok, ms, flop / (ms * 1e-3) / 1e12);
    G->release(G, q);
    G->release(G, raw);
    G->release(G, comp);
    G->release(G, sk);
    G->release(G, out);
    G->release(G, idx);
}

}  // namespace

void ops_batch_attn(ds4_backend *C, ds4_backend *G, const char *mode) {
    if (!G->attention_n || !G->attention_ex) {
        printf("skip %s attention_n (not provided)\n", mode);
        return;
    }
    // name, nh, hd, n_rot, n_win, raw_cap, R, k_top, idx, pos0, n_tok, qa, qpad, opad
    const AnCase cases[] = {
        // Flash: 64 heads x 512, n_rot 64, window 128, ring 192 (wraps)
        {"CSA 640 rows (n_vis 512 -> 513)", 64, 512, 64, 128, 192, 4, 512, true, 2049, 3, 0.2f, 0, 0},
        {"CSA peaked", 64, 512, 64, 128, 192, 4, 512, true, 2049, 3, 6.f, 0, 0},
        {"CSA k_top 128 (n_vis 125 -> 133)", 64, 512, 64, 128, 192, 4, 128, true, 500, 33, 1.f, 0, 0},
        {"CSA n_vis <= k_top", 64, 512, 64, 128, 192, 4, 512, true, 100, 1, 1.f, 0, 0},
        {"HCA all visible (n_vis 4 -> 5)", 64, 512, 64, 128, 192, 128, 512, false, 600, 33, 1.f, 0, 0},
        {"HCA 4k (n_vis 31 -> 32)", 64, 512, 64, 128, 192, 128, 512, false, 4093, 3, 2.f, 0, 0},
        {"window only (101 -> 128 rows)", 64, 512, 64, 128, 192, 0, 0, false, 100, 33, 1.f, 0, 0},
        {"p = 0 (one row)", 64, 512, 64, 128, 192, 4, 512, true, 0, 3, 1.f, 0, 0},
        // small / odd shapes
        {"tiny R 2 idx, ring wraps", 3, 64, 16, 5, 7, 2, 4, true, 5, 13, 1.f, 0, 0},
        {"hd 48 R 3 from p = 0", 1, 48, 16, 5, 6, 3, 4, false, 0, 9, 1.f, 0, 0},
        {"window only, padded strides", 2, 64, 16, 5, 5, 0, 0, false, 3, 4, 1.f, 3, 5},
        {"hd 128 R 3 idx", 3, 128, 16, 5, 9, 3, 3, true, 10, 5, 1.f, 0, 0},
        {"33 heads hd 256 R 2 idx", 33, 256, 32, 7, 12, 2, 8, true, 20, 4, 1.f, 2, 0},
        {"hd 67 R 3 idx", 4, 67, 16, 5, 8, 3, 4, true, 30, 3, 1.f, 0, 1},
    };
    for (const AnCase &k : cases) an_case(C, G, mode, k);
    if (!strcmp(G->name, "cuda") && G->numerics == DS4_NUM_PROD) {
        perf_case(G, mode, "CSA R4 idx 512", 4, 2048, 2048);
        perf_case(G, mode, "HCA R128", 128, 2048, 2048);
    }
}
