// ops_hc.cu — cuda-test-ops cases of the fused op hc_site (backend.h), against the CPU
// backend's op sequence, and a timing line per mode for a 2048-token Flash chunk
// ("time prod hc_post_site 2048 tokens: X ms"). Must not: take an expected value from
// the GPU.
//
// Reference per case: C->rmsnorm (flat H, unweighted), C->matmul (fn, mw rows), C->hc_pre,
// C->rmsnorm (x, norm_w). The GPU op computes mix as s · (fn · H) with its own summation
// order where the sequence computes fn · (H · s): the contract's allowed rounding
// difference. Bounds are |gpu − cpu| <= tol · max(1, max|cpu|) (ops_harness.h check):
//  - F16 / F32 fn: Δmix is f32 summation error over h·d products of size ~0.02; a CPU
//    emulation of the kernel's order (slices of 256, lane fma chains, shuffle trees, then
//    s · dot) against this CPU sequence, on inputs like these (Flash, tiny, h 8, h 1; both
//    scale sets), gave |Δmix| <= 6e-6 (|mix| <= 7.5) and output differences (relative to
//    max(1, max|cpu|)) <= 6.6e-7 for post, <= 2.9e-6 for comb (peaked case; <= 1e-6
//    otherwise), <= 6.4e-7 for xn. The bound 2e-5 keeps a margin of ~7 over the worst of
//    these (expf differs from glibc's by ~1 ulp on top). What it catches, from the same
//    emulation: pre streams swapped -> xn 0.36 .. 1.1; one Sinkhorn round less in the
//    peaked case -> comb 3.6e-4 .. 4.4e-3 (with the mild scales the Sinkhorn has converged
//    and a missing round is invisible: hence the peaked cases); mix off by 1e-4 relative ->
//    1.5e-5 .. 1.5e-4 (borderline: a bug of that size need not be caught).
//  - Q8_0 fn (the op-sequence fallback): in production numerics the matmul quantises flat
//    to Q8_0 on each side from rmsnorm outputs that may differ in the last bit, so mix may
//    differ by a quantisation step's effect (matmul's own bound in test_ops is 2e-4 ·
//    max|y|, |y| ~ 5): 2e-3.
//  - chunks of >= 16 tokens in production (hc_chunk.cu, F16 fn, h <= 4): the same bound
//    2e-5. Its dots, per (token, 128-element slice): 8 chunk lanes each run one fma chain
//    over 16·h products (4 steps × h streams × 4), a fixed 3-level tree adds the 8 lanes,
//    then the slices are summed in order. A numpy emulation of this order (128 Flash
//    tokens, these fn / H distributions) against an f64 dot gave |Δdot| <= 1.1e-6,
//    |Δmix| <= 1.8e-6 (|mix| <= 8.4): below the fused kernel's 6e-6 above, so the same
//    output bound applies. The rest (sum of squares in f64, hc_pre's and rmsnorm's
//    per-element operations) is the fused kernel's. Chunks 16 / 300 / 2048 at Flash and
//    tiny shapes, and h 1 .. 4 at d with a partial last slice (d/4 odd at h 2 and 4; at
//    h 1 and 3 the path needs h·d % 8 == 0, so d/4 is even there) and token counts that
//    are no multiple of the kernel's 16- or 32-token tile (33, 47, 61, 300); an unaligned
//    H and h 8 there exercise the op sequence (the path refuses them).
//  - weights narrower than their test tensor (h 3, d/4 odd): a view of the tensor's first
//    h·d columns with the parent's row stride; both backends read rows through row_bytes
//    (the CPU matmul, hc_chunk.cu and the fused kernel; these cases never reach the op
//    sequence's mmf16, which assumes rows of 2·h·d bytes).
// Every output starts as NaN on both sides, so an unwritten element fails. A second check
// per multi-token case runs the first and the last token alone on the GPU (chunks of >= 16:
// the 16 tokens starting there, see sub_tokens) and requires the same bits (the contract:
// a token's values do not depend on n_tok); it also fails when a last-block counter was left non-zero by the previous call (the outputs stay NaN).
//
// Determinism (hc_det_case): a 3000-token call, then 16-token calls (kMmqMinRows, the
// smallest chunk of the large path) and one 100-token call starting at other positions
// (0, 7, 1501, 1900, 2984): every output (H, post, comb, xn) bit-identical. GPU only.
//
// hc_post_site (hc_post then hc_site in one op): reference C->hc_post (y, Hprev, the old
// post / comb) into a separate buffer, then the sequence above on it. H is compared with
// tolerance 0 (both sides do hc_post's per-element f32 operations in the same order:
// post·y, then + comb·Hprev for k ascending, each rounded; the C build does not contract
// to fma under -std=c11); post / comb / xn with the hc_site bounds above (the same mix
// difference, now on an H equal in every bit). The H buffer starts as NaN (an unwritten
// element fails). Multi-token cases also require tokens alone == in the chunk, from fresh
// copies of the old post / comb.
#include <chrono>

#include "ops_harness.h"

namespace {

struct HcCase {
    const char *label;
    const char *w;       // fn: test weight, [>= mw rows][h*d]
    int h;
    int64_t d;
    int nt;
    float sc[3];         // scale (pre, post, comb)
    float base_amp;      // base ~ U(-amp, amp)
    int hoff;            // H starts hoff floats into its buffer (1: not 16-byte aligned)
    double tol;
};

std::vector<float> nans(size_t n) { return std::vector<float>(n, NAN); }

// The test weight `name` as fn of a site of width hw with mw rows: the tensor itself, or a
// view of its first hw columns (same rows, same row stride) when it is wider. false (and
// a FAIL line) when it is too small.
bool fn_view(const char *name, int64_t hw, int mw, ds4_tensor *out, const char *what) {
    const ds4_tensor *t = wt(name);
    if (t->ne[0] < (uint64_t)hw || t->ne[1] < (uint64_t)mw) {
        printf("FAIL %s: test weight %s does not fit\n", what, name);
        g_fail++;
        return false;
    }
    *out = *t;
    out->ne[0] = (uint64_t)hw;
    return true;
}

// Whether two GPU buffers of n floats hold the same bits.
bool same_bits(ds4_backend *G, const float *a, const float *b, size_t n) {
    std::vector<float> x(n), y(n);
    G->read(G, x.data(), a, n * 4);
    G->read(G, y.data(), b, n * 4);
    return memcmp(x.data(), y.data(), n * 4) == 0;
}

// Tokens per call of the batch-independence check: 1, or 16 (kMmqMinRows) for chunks of
// at least 16 — production chunks of >= 16 tokens take the large-chunk path
// (hc_chunk.cu), whose values differ (rounding) from the one-token fused kernel's, so
// "alone" there means a 16-token call starting at the token.
int sub_tokens(int nt) { return nt >= 16 ? 16 : 1; }

// Wall time (device-synchronised) of hc_site and hc_post_site on a Flash chunk of nt
// tokens (h 4, d 4096, F16 fn), the mean of 5 calls after one warm-up; GPU-only buffers.
void hc_time(ds4_backend *G, const char *mode, int nt) {
    const ds4_tensor *fn = wt("hcfn");
    const int h = 4, mw = (2 + h) * h, iters = 20;
    const int64_t d = 4096, hw = h * d;
    auto gput = [&](const std::vector<float> &v) {
        float *p = (float *)G->alloc(G, v.size() * 4);
        G->write(G, p, v.data(), v.size() * 4);
        return p;
    };
    std::vector<float> nw = rvec((size_t)d, 0.5f), p0 = rvec((size_t)nt * h), c0 = rvec((size_t)nt * h * h, 0.5f);
    for (auto &v : nw) v += 1.0f;
    for (auto &v : p0) v += 1.0f;
    for (auto &v : c0) v += 0.5f;
    const float s0[3] = {0.6f, -0.8f, 0.9f};
    float *Hp = gput(rvec((size_t)nt * hw)), *y = gput(rvec((size_t)nt * d)), *H = gput(rvec((size_t)nt * hw));
    float *sc = gput(std::vector<float>(s0, s0 + 3)), *base = gput(rvec((size_t)mw, 0.5f)), *w = gput(nw);
    float *post = gput(p0), *comb = gput(c0), *xn = gput(std::vector<float>((size_t)nt * d));
    char md[16];
    snprintf(md, sizeof md, "%s", mode);
    for (size_t i = strlen(md); i > 0 && md[i - 1] == ' '; i--) md[i - 1] = 0;
    for (int op = 0; op < 2; op++) {
        double ms = 0;
        for (int rep = 0; rep <= 5; rep++) {
            cudaDeviceSynchronize();
            const auto t0 = std::chrono::steady_clock::now();
            if (op == 0)
                G->hc_post_site(G, y, Hp, H, fn, sc, base, nt, h, d, iters, 1e-6, 1e-6, w, post, comb, xn);
            else
                G->hc_site(G, fn, sc, base, H, nt, h, d, iters, 1e-6, 1e-6, w, post, comb, xn);
            cudaDeviceSynchronize();
            const double dt = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
            if (rep > 0) ms += dt / 5;
        }
        printf("time %s %s %d tokens: %.3f ms\n", md, op == 0 ? "hc_post_site" : "hc_site", nt, ms);
    }
    for (float *p : {Hp, y, H, sc, base, w, post, comb, xn}) G->release(G, p);
}

void hc_case(ds4_backend *C, ds4_backend *G, const char *mode, const HcCase &k) {
    const int h = k.h, mw = (2 + h) * h, nt = k.nt, iters = 20;
    const int64_t d = k.d, hw = (int64_t)h * d;
    const double hc_eps = 1e-6, eps = 1e-6;
    char what[160];
    snprintf(what, sizeof what, "%s hc_site %s", mode, k.label);
    ds4_tensor fnv;
    if (!fn_view(k.w, hw, mw, &fnv, what)) return;
    const ds4_tensor *fn = &fnv;
    std::vector<float> nw = rvec((size_t)d, 0.5f);
    for (auto &v : nw) v += 1.0f;
    Pair H = put(C, G, rvec((size_t)(k.hoff + nt * hw))), sc = put(C, G, std::vector<float>(k.sc, k.sc + 3));
    Pair base = put(C, G, rvec((size_t)mw, k.base_amp)), w = put(C, G, nw);
    Pair post = put(C, G, nans((size_t)nt * h)), comb = put(C, G, nans((size_t)nt * h * h));
    Pair xn = put(C, G, nans((size_t)nt * d));
    const float *Hc = H.c + k.hoff, *Hg = H.g + k.hoff;
    // reference: the op sequence on the CPU backend
    float *flat = (float *)C->alloc(C, (size_t)nt * hw * 4), *mix = (float *)C->alloc(C, (size_t)nt * mw * 4);
    float *x = (float *)C->alloc(C, (size_t)nt * d * 4);
    C->rmsnorm(C, Hc, hw, NULL, flat, hw, hw, nt, eps);
    C->matmul(C, fn, 0, 0, (uint64_t)mw, flat, hw, mix, mw, nt);
    C->hc_pre(C, mix, sc.c, base.c, Hc, nt, h, d, iters, hc_eps, x, post.c, comb.c);
    C->rmsnorm(C, x, d, w.c, xn.c, d, d, nt, eps);
    C->release(C, flat);
    C->release(C, mix);
    C->release(C, x);
    G->hc_site(G, fn, sc.g, base.g, Hg, nt, h, d, iters, hc_eps, eps, w.g, post.g, comb.g, xn.g);
    char name[160];
    snprintf(name, sizeof name, "%s hc_site %s post", mode, k.label);
    check(name, post, k.tol);
    snprintf(name, sizeof name, "%s hc_site %s comb", mode, k.label);
    check(name, comb, k.tol);
    snprintf(name, sizeof name, "%s hc_site %s xn", mode, k.label);
    check(name, xn, k.tol);
    if (nt > 1) {
        // the first and the last token alone (chunks of >= 16: the 16 tokens starting
        // there, a call that takes the same large-chunk path): the same bits as within
        // the chunk
        bool ok = true;
        const int sub = sub_tokens(nt);
        for (int t : {0, nt - sub}) {
            Pair p1 = put(C, G, nans((size_t)sub * h)), c1 = put(C, G, nans((size_t)sub * h * h));
            Pair x1 = put(C, G, nans((size_t)sub * d));
            G->hc_site(G, fn, sc.g, base.g, Hg + (int64_t)t * hw, sub, h, d, iters, hc_eps, eps, w.g, p1.g, c1.g,
                       x1.g);
            ok = ok && same_bits(G, p1.g, post.g + (int64_t)t * h, (size_t)sub * h) &&
                 same_bits(G, c1.g, comb.g + (int64_t)t * h * h, (size_t)sub * h * h) &&
                 same_bits(G, x1.g, xn.g + (int64_t)t * d, (size_t)sub * d);
            for (Pair *p : {&p1, &c1, &x1}) drop(*p);
        }
        snprintf(name, sizeof name, "%s hc_site %s tokens alone == in chunk", mode, k.label);
        printf("%s %-44s\n", ok ? "ok  " : "FAIL", name);
        (ok ? g_pass : g_fail)++;
    }
    for (Pair *p : {&H, &sc, &base, &w, &post, &comb, &xn}) drop(*p);
}

void hcps_case(ds4_backend *C, ds4_backend *G, const char *mode, const HcCase &k) {
    const int h = k.h, mw = (2 + h) * h, nt = k.nt, iters = 20, o = k.hoff;
    const int64_t d = k.d, hw = (int64_t)h * d;
    const double hc_eps = 1e-6, eps = 1e-6;
    char what[160];
    snprintf(what, sizeof what, "%s hc_post_site %s", mode, k.label);
    ds4_tensor fnv;
    if (!fn_view(k.w, hw, mw, &fnv, what)) return;
    const ds4_tensor *fn = &fnv;
    std::vector<float> nw = rvec((size_t)d, 0.5f);
    for (auto &v : nw) v += 1.0f;
    // old post in (0, 2) as 2σ(.), old comb in (0, 1) as a Sinkhorn output
    std::vector<float> post0 = rvec((size_t)nt * h), comb0 = rvec((size_t)nt * h * h, 0.5f);
    for (auto &v : post0) v += 1.0f;
    for (auto &v : comb0) v += 0.5f;
    std::vector<float> hn = nans((size_t)(o + nt * hw));
    for (int i = 0; i < o; i++) hn[i] = 0.0f;   // the offset prefix is not written by either side
    Pair Hp = put(C, G, rvec((size_t)(o + nt * hw))), y = put(C, G, rvec((size_t)(o + nt * d)));
    Pair H = put(C, G, hn), sc = put(C, G, std::vector<float>(k.sc, k.sc + 3));
    Pair base = put(C, G, rvec((size_t)mw, k.base_amp)), w = put(C, G, nw);
    Pair post = put(C, G, post0), comb = put(C, G, comb0), xn = put(C, G, nans((size_t)nt * d));
    // reference: hc_post, then the hc_site op sequence, on the CPU backend
    float *flat = (float *)C->alloc(C, (size_t)nt * hw * 4), *mix = (float *)C->alloc(C, (size_t)nt * mw * 4);
    float *x = (float *)C->alloc(C, (size_t)nt * d * 4);
    C->hc_post(C, y.c + o, Hp.c + o, post.c, comb.c, nt, h, d, H.c + o);
    C->rmsnorm(C, H.c + o, hw, NULL, flat, hw, hw, nt, eps);
    C->matmul(C, fn, 0, 0, (uint64_t)mw, flat, hw, mix, mw, nt);
    C->hc_pre(C, mix, sc.c, base.c, H.c + o, nt, h, d, iters, hc_eps, x, post.c, comb.c);
    C->rmsnorm(C, x, d, w.c, xn.c, d, d, nt, eps);
    C->release(C, flat);
    C->release(C, mix);
    C->release(C, x);
    G->hc_post_site(G, y.g + o, Hp.g + o, H.g + o, fn, sc.g, base.g, nt, h, d, iters, hc_eps, eps, w.g, post.g, comb.g,
                    xn.g);
    char name[160];
    snprintf(name, sizeof name, "%s hc_post_site %s H", mode, k.label);
    check(name, H, 0.0);
    snprintf(name, sizeof name, "%s hc_post_site %s post", mode, k.label);
    check(name, post, k.tol);
    snprintf(name, sizeof name, "%s hc_post_site %s comb", mode, k.label);
    check(name, comb, k.tol);
    snprintf(name, sizeof name, "%s hc_post_site %s xn", mode, k.label);
    check(name, xn, k.tol);
    if (nt > 1) {
        bool ok = true;
        const int sub = sub_tokens(nt);
        for (int t : {0, nt - sub}) {
            const std::vector<float> p0(post0.begin() + (size_t)t * h, post0.begin() + (size_t)(t + sub) * h);
            const std::vector<float> c0(comb0.begin() + (size_t)t * h * h,
                                        comb0.begin() + (size_t)(t + sub) * h * h);
            Pair H1 = put(C, G, nans((size_t)(o + sub * hw))), p1 = put(C, G, p0), c1 = put(C, G, c0);
            Pair x1 = put(C, G, nans((size_t)sub * d));
            const float *yt = y.g + o + (int64_t)t * d, *Hpt = Hp.g + o + (int64_t)t * hw;
            G->hc_post_site(G, yt, Hpt, H1.g + o, fn, sc.g, base.g, sub, h, d, iters, hc_eps, eps, w.g, p1.g, c1.g,
                            x1.g);
            ok = ok && same_bits(G, H1.g + o, H.g + o + (int64_t)t * hw, (size_t)sub * hw) &&
                 same_bits(G, p1.g, post.g + (int64_t)t * h, (size_t)sub * h) &&
                 same_bits(G, c1.g, comb.g + (int64_t)t * h * h, (size_t)sub * h * h) &&
                 same_bits(G, x1.g, xn.g + (int64_t)t * d, (size_t)sub * d);
            for (Pair *p : {&H1, &p1, &c1, &x1}) drop(*p);
        }
        snprintf(name, sizeof name, "%s hc_post_site %s tokens alone == in chunk", mode, k.label);
        printf("%s %-44s\n", ok ? "ok  " : "FAIL", name);
        (ok ? g_pass : g_fail)++;
    }
    for (Pair *p : {&Hp, &y, &H, &sc, &base, &w, &post, &comb, &xn}) drop(*p);
}

// Determinism: the outputs of a 3000-token call (hc_post_site when ps, else hc_site) at
// tokens [t, t + n) equal those of an n-token call on those tokens alone, bit for bit,
// for (t, n) in {(0, 16), (7, 16), (1501, 16), (1900, 100), (2984, 16)}: a token's values
// depend neither on n_tok nor on its position. GPU only (no reference value involved).
void hc_det_case(ds4_backend *G, const char *mode, bool ps, const char *label, const char *wname, int h, int64_t d) {
    const int nt = 3000, mw = (2 + h) * h, iters = 20;
    const int64_t hw = (int64_t)h * d;
    const double hc_eps = 1e-6, eps = 1e-6;
    char name[160];
    snprintf(name, sizeof name, "%s %s %s tok 3000: 16/100-token calls bit-identical", mode,
             ps ? "hc_post_site" : "hc_site", label);
    ds4_tensor fnv;
    if (!fn_view(wname, hw, mw, &fnv, name)) return;
    auto gput = [&](const std::vector<float> &v) {
        float *p = (float *)G->alloc(G, v.size() * 4);
        G->write(G, p, v.data(), v.size() * 4);
        return p;
    };
    std::vector<float> nw = rvec((size_t)d, 0.5f), p0 = rvec((size_t)nt * h), c0 = rvec((size_t)nt * h * h, 0.5f);
    for (auto &v : nw) v += 1.0f;
    for (auto &v : p0) v += 1.0f;
    for (auto &v : c0) v += 0.5f;
    const float s0[3] = {1.5f, -1.0f, 4.0f};
    const std::vector<float> hin = rvec((size_t)nt * hw), yin = rvec((size_t)nt * d);
    float *sc = gput(std::vector<float>(s0, s0 + 3)), *base = gput(rvec((size_t)mw, 2.0f)), *w = gput(nw);
    // the full call: H is the input (hc_site) or the output (hc_post_site, from Hp and y)
    float *Hp = gput(hin), *y = gput(yin), *H = gput(ps ? nans((size_t)nt * hw) : hin);
    float *post = gput(p0), *comb = gput(c0), *xn = gput(nans((size_t)nt * d));
    if (ps) G->hc_post_site(G, y, Hp, H, &fnv, sc, base, nt, h, d, iters, hc_eps, eps, w, post, comb, xn);
    else G->hc_site(G, &fnv, sc, base, H, nt, h, d, iters, hc_eps, eps, w, post, comb, xn);
    bool ok = true;
    const int sub[][2] = {{0, 16}, {7, 16}, {1501, 16}, {1900, 100}, {2984, 16}};
    for (const auto &tn : sub) {
        const int t = tn[0], n = tn[1];
        float *p1 = gput(std::vector<float>(p0.begin() + (size_t)t * h, p0.begin() + (size_t)(t + n) * h));
        float *c1 = gput(std::vector<float>(c0.begin() + (size_t)t * h * h, c0.begin() + (size_t)(t + n) * h * h));
        float *x1 = gput(nans((size_t)n * d)), *H1 = ps ? gput(nans((size_t)n * hw)) : nullptr;
        if (ps)
            G->hc_post_site(G, y + (int64_t)t * d, Hp + (int64_t)t * hw, H1, &fnv, sc, base, n, h, d, iters, hc_eps,
                            eps, w, p1, c1, x1);
        else
            G->hc_site(G, &fnv, sc, base, H + (int64_t)t * hw, n, h, d, iters, hc_eps, eps, w, p1, c1, x1);
        ok = ok && (!ps || same_bits(G, H1, H + (int64_t)t * hw, (size_t)n * hw)) &&
             same_bits(G, p1, post + (int64_t)t * h, (size_t)n * h) &&
             same_bits(G, c1, comb + (int64_t)t * h * h, (size_t)n * h * h) &&
             same_bits(G, x1, xn + (int64_t)t * d, (size_t)n * d);
        for (float *p : {p1, c1, x1, H1})
            if (p) G->release(G, p);
    }
    // outputs left NaN by both calls would compare equal: require numbers everywhere
    auto finite = [&](const float *p, size_t n) {
        std::vector<float> v(n);
        G->read(G, v.data(), p, n * 4);
        for (float x : v)
            if (!isfinite(x)) return false;
        return true;
    };
    ok = ok && finite(xn, (size_t)nt * d) && finite(post, (size_t)nt * h) && finite(comb, (size_t)nt * h * h) &&
         (!ps || finite(H, (size_t)nt * hw));
    printf("%s %-44s\n", ok ? "ok  " : "FAIL", name);
    (ok ? g_pass : g_fail)++;
    for (float *p : {sc, base, w, Hp, y, H, post, comb, xn}) G->release(G, p);
}

}  // namespace

void ops_fused_hc(ds4_backend *C, ds4_backend *G, const char *mode) {
    if (!G->hc_site) {
        printf("skip %s hc_site (not provided)\n", mode);
        return;
    }
    char err[256];
    // the CPU reference's matmul reads rows of up to h*d = 16384 (Flash) inputs, for chunks
    // of up to 2048 tokens
    if (C->reserve(C, 2048, 16384, err, sizeof err) < 0 || G->reserve(G, 2048, 16384, err, sizeof err) < 0) {
        printf("FAIL %s hc_site: reserve: %s\n", mode, err);
        g_fail++;
        return;
    }
    const bool prod = C->numerics == DS4_NUM_PROD;
    const double tf = 2e-5, tq = prod ? 2e-3 : 2e-5;
    // scale / base of test_ops' hc_pre case (mix ~ ±2 from these weights), and a peaked
    // one: comb logits spread over ~±10, so the Sinkhorn rounds change comb substantially
    const float s0[3] = {0.6f, -0.8f, 0.9f}, s1[3] = {1.5f, -1.0f, 4.0f};
    const HcCase cases[] = {
        // Flash: h 4, d 4096 (fast epilogue, 4 float4 per thread)
        {"flash f16 tok 1", "hcfn", 4, 4096, 1, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"flash f16 tok 3", "hcfn", 4, 4096, 3, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"flash f32 tok 1", "hcfn32", 4, 4096, 1, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"flash f32 tok 3", "hcfn32", 4, 4096, 3, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"flash f16 peaked Sinkhorn tok 2", "hcfn", 4, 4096, 2, {s1[0], s1[1], s1[2]}, 2.0f, 0, tf},
        // unaligned H: the generic kernel (scalar slices, looped epilogue) at Flash size
        {"flash f32 H unaligned tok 2", "hcfn32", 4, 4096, 2, {s0[0], s0[1], s0[2]}, 0.5f, 1, tf},
        // tiny: h 2, d 64 (one slice), fast and generic
        {"tiny h2 d64 tok 2", "hcfn_tiny", 2, 64, 2, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"tiny h2 d64 H unaligned tok 2", "hcfn_tiny", 2, 64, 2, {s1[0], s1[1], s1[2]}, 2.0f, 1, tf},
        // other shapes on the 4096-wide test weights: 2 float4 per thread (h 2, d 2048),
        // h 1, h 8 (generic epilogue, shared-memory Sinkhorn, 80 fn rows: several row
        // groups per warp), and Q8_0 fn (the op-sequence fallback)
        {"h2 d2048 f16 tok 2", "f16", 2, 2048, 2, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"h1 d4096 f32 tok 2", "f32", 1, 4096, 2, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"h8 d512 f16 tok 2", "f16", 8, 512, 2, {s1[0], s1[1], s1[2]}, 2.0f, 0, tf},
        {"h4 d1024 q8_0 (op sequence) tok 2", "q8", 4, 1024, 2, {s0[0], s0[1], s0[2]}, 0.5f, 0, tq},
        {"h4 d1021 f16 tok 2", "hcfn_odd", 4, 1021, 2, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        // chunks (production: the large-chunk path of hc_chunk.cu from 16 tokens on;
        // exact: the fused kernel): 16 (one partial warp of a 128-token tile), 300 (a
        // partial tile), 2048 (Flash's prefill chunk); tiny: one partial 128-element slice
        {"flash f16 tok 16", "hcfn", 4, 4096, 16, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"flash f16 peaked Sinkhorn tok 300", "hcfn", 4, 4096, 300, {s1[0], s1[1], s1[2]}, 2.0f, 0, tf},
        {"flash f16 tok 2048", "hcfn", 4, 4096, 2048, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"tiny h2 d64 tok 16", "hcfn_tiny", 2, 64, 16, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"tiny h2 d64 peaked tok 300", "hcfn_tiny", 2, 64, 300, {s1[0], s1[1], s1[2]}, 2.0f, 0, tf},
        {"tiny h2 d64 tok 2048", "hcfn_tiny", 2, 64, 2048, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"h2 d2048 f16 tok 300", "f16", 2, 2048, 300, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        // h 1 .. 4 with a partial last slice (views of wider weights, see the header)
        // and token counts off the 16 / 32-token tiles
        {"h1 d4088 f16 view tok 47", "f16", 1, 4088, 47, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"h2 d8188 f16 view tok 300", "hcfn", 2, 8188, 300, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"h3 d5456 f16 view peaked tok 61", "hcfn", 3, 5456, 61, {s1[0], s1[1], s1[2]}, 2.0f, 0, tf},
        {"h4 d4092 f16 view tok 33", "hcfn", 4, 4092, 33, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        // large chunk with unaligned H: hc_chunk refuses, the op sequence runs
        {"flash f16 H unaligned tok 16", "hcfn", 4, 4096, 16, {s0[0], s0[1], s0[2]}, 0.5f, 1, tf},
    };
    for (const HcCase &k : cases) hc_case(C, G, mode, k);
    if (!G->hc_post_site) {
        printf("skip %s hc_post_site (not provided)\n", mode);
        return;
    }
    // hc_post_site: Flash (fast kernel), tiny (one partial slice straddling both streams,
    // float4 and scalar), h 8 (hc_post's loop over any h), h 1 d 16384 (generic epilogue
    // reading H back with ld.cg), unaligned rows (the scalar path at Flash size), and Q8_0
    // fn (the sequence hc_post then hc_site). No case has d % 4 != 0: every test weight
    // has h·d a power of two (4096, 16384, 128), so h <= 32 gives d % 4 == 0; the scalar
    // path that case takes is the unaligned cases' one.
    const HcCase pcases[] = {
        {"flash f16 tok 1", "hcfn", 4, 4096, 1, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"flash f16 tok 3", "hcfn", 4, 4096, 3, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"flash f16 peaked Sinkhorn tok 2", "hcfn", 4, 4096, 2, {s1[0], s1[1], s1[2]}, 2.0f, 0, tf},
        {"flash f32 unaligned tok 2", "hcfn32", 4, 4096, 2, {s0[0], s0[1], s0[2]}, 0.5f, 1, tf},
        {"tiny h2 d64 tok 2", "hcfn_tiny", 2, 64, 2, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"tiny h2 d64 unaligned tok 2", "hcfn_tiny", 2, 64, 2, {s1[0], s1[1], s1[2]}, 2.0f, 1, tf},
        {"h2 d2048 f16 tok 2", "f16", 2, 2048, 2, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"h8 d512 f16 tok 2", "f16", 8, 512, 2, {s1[0], s1[1], s1[2]}, 2.0f, 0, tf},
        {"h1 d16384 f32 tok 2", "hcfn32", 1, 16384, 2, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"h4 d1024 q8_0 (op sequence) tok 2", "q8", 4, 1024, 2, {s0[0], s0[1], s0[2]}, 0.5f, 0, tq},
        // d % 4 != 0 (h 4, d 1021): slices straddle streams on the scalar path
        {"h4 d1021 f16 tok 2", "hcfn_odd", 4, 1021, 2, {s1[0], s1[1], s1[2]}, 2.0f, 0, tf},
        // chunks (see the hc_site list)
        {"flash f16 tok 16", "hcfn", 4, 4096, 16, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"flash f16 peaked Sinkhorn tok 300", "hcfn", 4, 4096, 300, {s1[0], s1[1], s1[2]}, 2.0f, 0, tf},
        {"flash f16 tok 2048", "hcfn", 4, 4096, 2048, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"tiny h2 d64 tok 16", "hcfn_tiny", 2, 64, 16, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"tiny h2 d64 peaked tok 300", "hcfn_tiny", 2, 64, 300, {s1[0], s1[1], s1[2]}, 2.0f, 0, tf},
        {"tiny h2 d64 tok 2048", "hcfn_tiny", 2, 64, 2048, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"h8 d512 f16 tok 300 (op sequence)", "f16", 8, 512, 300, {s1[0], s1[1], s1[2]}, 2.0f, 0, tf},
        {"h1 d4088 f16 view tok 47", "f16", 1, 4088, 47, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"h2 d8188 f16 view peaked tok 300", "hcfn", 2, 8188, 300, {s1[0], s1[1], s1[2]}, 2.0f, 0, tf},
        {"h3 d5456 f16 view tok 61", "hcfn", 3, 5456, 61, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
        {"h4 d4092 f16 view tok 33", "hcfn", 4, 4092, 33, {s0[0], s0[1], s0[2]}, 0.5f, 0, tf},
    };
    for (const HcCase &k : pcases) hcps_case(C, G, mode, k);
    for (bool ps : {false, true}) {
        hc_det_case(G, mode, ps, "flash", "hcfn", 4, 4096);
        hc_det_case(G, mode, ps, "h3 d5456 view", "hcfn", 3, 5456);
    }
    hc_time(G, mode, 2048);
}
