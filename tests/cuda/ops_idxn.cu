// ops_idxn.cu — cuda-test-ops cases of the batched op indexer_topk (backend.h), against the
// CPU backend's per-token sequence: indexer_scores(q_t, w_t, keys, n_vis(t)) then the host
// top-k (ds4_topk_host, = C->topk) of those scores.
// Must not: take an expected value from the GPU. (The GPU's own scores, read through the
// test hook ds4cu_indexer_topk_scores, are only used to check properties: the selection is
// exactly their top-k, they are within a rounding bound of the CPU's, and they and the
// selection are bit-identical whatever the sub-batching.)
//
// Inputs are as forward.c makes them: in prod mode q rows go through hadamard_fp4_sim and
// the keys through hadamard_fp4_sim + round_f16 (the CPU backend's ops), which is the
// precondition of the GPU's bf16 tensor-core path (indexer_n.cu: such values are exact in
// bf16); exact mode takes arbitrary f32 values.
//
// Tolerances. The GPU sums each score in another order (mma k-steps or float4 chunks per
// dot, a head tree instead of the CPU's head loop), so scores differ by f32 rounding only.
// With E_c = scale · Σ_h |w_h| · Σ_d |q_hd · K_cd| (the magnitude the rounding scales with),
// the first-order bounds for a dot of hd terms then a sum of n_head terms are hd·u·E and
// n_head·u·E per side; tensor-core accumulation may truncate instead of round (2u per
// add), so |gpu − cpu| <= γ·E_c with γ = (3·hd + 2·n_head + 8)·2^-24 (Flash: 5.3e-5·E_c).
// A selected set may then differ from the CPU's only by near-ties: for every index c in the
// symmetric difference, |s_c − s_kth| <= 2·γ·max(E over the difference) (s = CPU scores,
// s_kth the CPU's k-th largest): if the GPU keeps c_in and drops c_out that the CPU ranks
// the other way, s(c_out) − s(c_in) <= γ(E_in + E_out), and s_kth lies between them. With
// random data E_c is ~10x a typical |score|, so the bound is ~5e-4 of the score scale;
// a dropped head (~1/64 of a score), a shifted key or token, or bf16-rounded inputs in prod
// (~2^-9) exceed it. The selection must further be exactly the top-k (ties to the lower
// index, ascending) of the GPU's own scores, and rows of tokens with n_vis <= k untouched.
#include "ops_harness.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <iterator>

// Test hook, defined in src/backend/cuda/indexer_n.cu: the scores indexer_topk selects
// from, for each token t with n_vis(t) > k, at score[t·ss + c], c < n_vis(t).
void ds4cu_indexer_topk_scores(ds4_backend *be, const float *q, int64_t qs, const float *w, int64_t ws, float scale,
                               int n_head, int64_t hd, const float *keys, int R, int64_t pos0, int n_tok, int k,
                               float *score, int64_t ss);

namespace {

constexpr int32_t kSentinel = -7;

void verdict(bool ok, const char *name, const char *detail) {
    printf("%s %-52s %s\n", ok ? "ok  " : "FAIL", name, detail);
    (ok ? g_pass : g_fail)++;
}

enum Kind { RANDOM = 0, DUP_KEYS, ZERO_W };

struct Case {
    const char *what;
    int nh, hd, k, R;
    int64_t pos0;
    int n_tok, qpad, wpad;
    int split;   // > 0: also run as two calls [0, split) + [split, n_tok) and compare bits
    Kind kind;
};

// q, w, keys: CPU-side buffers with the prepared data (prod: FP4-simulated); the same bits
// in the GPU's.
struct Data {
    Pair q, w, keys;
    int64_t qs, ws, n_keys;
};

Data make_data(ds4_backend *C, ds4_backend *G, const Case &c) {
    Data d;
    d.qs = (int64_t)c.nh * c.hd + c.qpad;
    d.ws = c.nh + c.wpad;
    d.n_keys = (c.pos0 + c.n_tok) / c.R;
    const bool prod = C->numerics == DS4_NUM_PROD;
    std::vector<float> kv = rvec((size_t)(d.n_keys > 0 ? d.n_keys : 1) * c.hd + 1, 1.0f);
    if (c.kind == DUP_KEYS)   // every key row a copy of one of 5: many exactly tied scores
        for (int64_t r = 5; r < d.n_keys; r++)
            memcpy(&kv[(size_t)r * c.hd], &kv[(size_t)((r * 7) % 5) * c.hd], (size_t)c.hd * sizeof(float));
    std::vector<float> wv = rvec((size_t)c.n_tok * d.ws, 1.0f);
    if (c.kind == ZERO_W) std::fill(wv.begin(), wv.end(), 0.0f);
    d.q = put(C, G, rvec((size_t)c.n_tok * d.qs, 2.0f));
    d.w = put(C, G, wv);
    d.keys = put(C, G, kv);
    if (prod) {   // forward.c's production inputs, made by the CPU backend's ops
        for (int t = 0; t < c.n_tok; t++) C->hadamard_fp4_sim(C, d.q.c + t * d.qs, c.hd, c.nh, c.hd);
        if (d.n_keys > 0) {
            C->hadamard_fp4_sim(C, d.keys.c, c.hd, (int)d.n_keys, c.hd);
            C->round_f16(C, d.keys.c, d.n_keys * c.hd);
        }
        for (Pair *p : {&d.q, &d.keys}) {
            std::vector<float> h(p->n);
            C->read(C, h.data(), p->c, p->n * 4);
            G->write(G, p->g, h.data(), p->n * 4);
        }
    }
    return d;
}

// Runs indexer_topk on the GPU for tokens [t0, t1) of the case (pointers and pos0 offset)
// into gidx rows t0.. (sentinel-filled first when fresh) and the hook's scores into gsc.
void gpu_run(ds4_backend *G, const Case &c, const Data &d, int t0, int t1, int32_t *gidx, float *gsc, int64_t ss) {
    const float scale = (float)(1.0 / sqrt((double)c.hd) / sqrt((double)c.nh));
    G->indexer_topk(G, d.q.g + t0 * d.qs, d.qs, d.w.g + t0 * d.ws, d.ws, scale, c.nh, c.hd, d.keys.g, c.R, c.pos0 + t0,
                    t1 - t0, c.k, gidx + (int64_t)t0 * c.k);
    ds4cu_indexer_topk_scores(G, d.q.g + t0 * d.qs, d.qs, d.w.g + t0 * d.ws, d.ws, scale, c.nh, c.hd, d.keys.g, c.R,
                              c.pos0 + t0, t1 - t0, c.k, gsc + (int64_t)t0 * ss, ss);
}

void run_case(ds4_backend *C, ds4_backend *G, const char *mode, const Case &c) {
    Data d = make_data(C, G, c);
    const float scale = (float)(1.0 / sqrt((double)c.hd) / sqrt((double)c.nh));
    const int64_t ss = d.n_keys > 0 ? d.n_keys : 1;
    const size_t ni = (size_t)c.n_tok * c.k;
    std::vector<int32_t> sent(ni, kSentinel), gi(ni), gi2(ni);
    std::vector<float> gs((size_t)c.n_tok * ss), gs2((size_t)c.n_tok * ss), nanv((size_t)c.n_tok * ss, NAN);
    int32_t *didx = (int32_t *)G->alloc(G, ni * sizeof(int32_t));
    float *dsc = (float *)G->alloc(G, gs.size() * sizeof(float));
    G->write(G, didx, sent.data(), ni * sizeof(int32_t));
    G->write(G, dsc, nanv.data(), gs.size() * sizeof(float));
    gpu_run(G, c, d, 0, c.n_tok, didx, dsc, ss);
    G->read(G, gi.data(), didx, ni * sizeof(int32_t));
    G->read(G, gs.data(), dsc, gs.size() * sizeof(float));

    // reference and checks, token by token
    std::vector<float> hq(d.q.n), hw(d.w.n), hk(d.keys.n), sref((size_t)ss);
    C->read(C, hq.data(), d.q.c, hq.size() * 4);
    C->read(C, hw.data(), d.w.c, hw.size() * 4);
    C->read(C, hk.data(), d.keys.c, hk.size() * 4);
    float *csc = (float *)C->alloc(C, (size_t)ss * sizeof(float));
    const double u = ldexp(1.0, -24), gam = (3.0 * c.hd + 2.0 * c.nh + 8.0) * u;
    auto mag = [&](int t, int64_t key) {   // E_c of token t, key c
        double e = 0;
        for (int h = 0; h < c.nh; h++) {
            double dd = 0;
            for (int i = 0; i < c.hd; i++)
                dd += fabs((double)hq[(size_t)(t * d.qs + (int64_t)h * c.hd + i)] * hk[(size_t)(key * c.hd + i)]);
            e += fabs((double)hw[(size_t)(t * d.ws + h)]) * dd;
        }
        return e * scale;
    };
    int n_sel = 0, n_untouched_bad = 0, n_order_bad = 0, n_self_bad = 0, n_score_bad = 0, n_set_bad = 0, n_diff = 0;
    double worst = 0;   // max |gpu − cpu| / (γ·E) over the checked scores
    std::vector<int32_t> a((size_t)c.k), b((size_t)c.k), own((size_t)c.k);
    for (int t = 0; t < c.n_tok; t++) {
        const int64_t nv = (c.pos0 + t + 1) / c.R;
        const int32_t *row = gi.data() + (size_t)t * c.k;
        if (nv <= c.k) {
            for (int j = 0; j < c.k; j++)
                if (row[j] != kSentinel) {
                    n_untouched_bad++;
                    break;
                }
            continue;
        }
        n_sel++;
        C->indexer_scores(C, d.q.c + t * d.qs, d.w.c + t * d.ws, scale, c.nh, c.hd, d.keys.c, (int)nv, csc);
        C->read(C, sref.data(), csc, (size_t)nv * 4);
        ds4_topk_host(sref.data(), (int)nv, c.k, a.data());
        memcpy(b.data(), row, (size_t)c.k * sizeof(int32_t));
        const float *g = gs.data() + (size_t)t * ss;
        // ascending, in range
        bool ord = true;
        for (int j = 0; j < c.k; j++)
            if (b[j] < 0 || b[j] >= nv || (j > 0 && b[j] <= b[j - 1])) ord = false;
        if (!ord) n_order_bad++;
        // exactly the top-k of the GPU's own scores
        ds4_topk_host(g, (int)nv, c.k, own.data());
        if (own != b) n_self_bad++;
        // scores within γ·E of the CPU's (every key for small rows, else every 16th)
        const int64_t step = nv * c.nh * c.hd <= (int64_t)1 << 22 ? 1 : 16;
        for (int64_t cc = t % step; cc < nv; cc += step) {
            const double e = gam * mag(t, cc) + 1e-30, err = fabs((double)g[cc] - sref[(size_t)cc]);
            if (!(err <= e)) n_score_bad++;
            if (err / e > worst || err != err) worst = err != err ? INFINITY : err / e;
        }
        // set difference: near-ties of the CPU's k-th score only
        std::vector<int32_t> diff;
        std::set_symmetric_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(diff));
        if (!diff.empty() && ord) {
            n_diff += (int)diff.size() / 2;
            float kth = sref[(size_t)a[0]];
            for (int j = 0; j < c.k; j++) kth = fminf(kth, sref[(size_t)a[j]]);   // the k-th largest
            double emax = 0;
            for (int32_t x : diff) emax = fmax(emax, mag(t, x));
            for (int32_t x : diff)
                if (!(fabs((double)sref[(size_t)x] - kth) <= 2 * gam * emax)) n_set_bad++;
        }
    }
    C->release(C, csc);
    char name[200], det[200];
    snprintf(name, sizeof name, "%s indexer_topk %s %dx%d k%d R%d pos %lld n %d", mode, c.what, c.nh, c.hd, c.k, c.R,
             (long long)c.pos0, c.n_tok);
    snprintf(det, sizeof det, "sel %d, set diffs %d, score err %.2f of bound", n_sel, n_diff, worst);
    const bool ok = !n_untouched_bad && !n_order_bad && !n_self_bad && !n_score_bad && !n_set_bad;
    if (!ok)
        printf("     untouched-bad %d order-bad %d not-own-topk %d score-bad %d set-bad %d\n", n_untouched_bad,
               n_order_bad, n_self_bad, n_score_bad, n_set_bad);
    verdict(ok, name, det);

    // the same tokens in two calls (other tile grouping, other key splits): same bits
    if (c.split > 0 && c.split < c.n_tok) {
        G->write(G, didx, sent.data(), ni * sizeof(int32_t));
        G->write(G, dsc, nanv.data(), gs.size() * sizeof(float));
        gpu_run(G, c, d, 0, c.split, didx, dsc, ss);
        gpu_run(G, c, d, c.split, c.n_tok, didx, dsc, ss);
        G->read(G, gi2.data(), didx, ni * sizeof(int32_t));
        G->read(G, gs2.data(), dsc, gs2.size() * sizeof(float));
        snprintf(name, sizeof name, "%s indexer_topk %s split %d+%d bit-identical", mode, c.what, c.split,
                 c.n_tok - c.split);
        const bool same = gi == gi2 && memcmp(gs.data(), gs2.data(), gs.size() * sizeof(float)) == 0;
        verdict(same, name, "");
    }
    G->release(G, didx);
    G->release(G, dsc);
    for (Pair *p : {&d.q, &d.w, &d.keys}) drop(*p);
}

// Timing (no verdict): the Flash shape at a prefill chunk of n_tok tokens whose last token
// sees nv keys (pos0 = nv·R − n_tok), random inputs. Prints the mean of 3 runs after a
// warm-up (device-synchronised wall time), with the score GEMM's TFLOP/s.
void perf_case(ds4_backend *G, const char *mode, int n_tok, int64_t nv) {
    const int nh = 64, hd = 128, k = 512, R = 4;
    const int64_t pos0 = nv * R - n_tok, qs = (int64_t)nh * hd;
    if (pos0 < 0) return;
    std::vector<float> hq = rvec((size_t)n_tok * qs), hw = rvec((size_t)n_tok * nh), hk = rvec((size_t)nv * hd);
    float *q = (float *)G->alloc(G, hq.size() * 4), *w = (float *)G->alloc(G, hw.size() * 4);
    float *keys = (float *)G->alloc(G, hk.size() * 4);
    int32_t *idx = (int32_t *)G->alloc(G, (size_t)n_tok * k * sizeof(int32_t));
    G->write(G, q, hq.data(), hq.size() * 4);
    G->write(G, w, hw.data(), hw.size() * 4);
    G->write(G, keys, hk.data(), hk.size() * 4);
    const float scale = (float)(1.0 / sqrt((double)hd) / sqrt((double)nh));
    double ms = 0, macs = 0;
    for (int t = 0; t < n_tok; t++) {
        const int64_t v = (pos0 + t + 1) / R;
        if (v > k) macs += (double)v * nh * hd;
    }
    for (int rep = 0; rep <= 3; rep++) {
        cudaDeviceSynchronize();
        const auto t0 = std::chrono::steady_clock::now();
        G->indexer_topk(G, q, qs, w, nh, scale, nh, hd, keys, R, pos0, n_tok, k, idx);
        cudaDeviceSynchronize();
        const double dt = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (rep > 0) ms += dt / 3;
    }
    printf("time %s indexer_topk 64x128 k512 R4 n_tok %d n_vis <= %lld: %.3f ms (%.0f TFLOP/s scores)\n", mode, n_tok,
           (long long)nv, ms, 2 * macs / (ms * 1e-3) / 1e12);
    G->release(G, q);
    G->release(G, w);
    G->release(G, keys);
    G->release(G, idx);
}

}  // namespace

void ops_batch_indexer(ds4_backend *C, ds4_backend *G, const char *mode) {
    if (!G->indexer_topk || strcmp(G->name, "cuda") != 0) {
        printf("skip %s indexer_topk (not provided)\n", mode);
        return;
    }
    const Case cases[] = {
        // Flash indexer: 64 heads x 128, k 512, R 4 (the tensor-core path in prod)
        {"flash n_vis 513", 64, 128, 512, 4, 2051, 1, 0, 0, 0, RANDOM},
        {"flash n_vis 3000", 64, 128, 512, 4, 11999, 1, 0, 0, 0, RANDOM},
        {"flash k threshold", 64, 128, 512, 4, 2046, 7, 0, 0, 3, RANDOM},          // tokens 0-4 untouched
        {"flash 300 across k", 64, 128, 512, 4, 1900, 300, 4, 3, 137, RANDOM},     // n_vis 475..550
        {"flash 300 at 3000", 64, 128, 512, 4, 11700, 300, 0, 0, 101, RANDOM},     // n_vis 2925..3000
        {"flash n_vis 10k", 64, 128, 512, 4, 40000, 7, 0, 0, 2, RANDOM},           // key splits
        {"flash n_vis 40k uncached", 64, 128, 512, 4, 160000, 2, 0, 0, 1, RANDOM}, // top-k from global
        {"flash all tied (w 0)", 64, 128, 512, 4, 3000, 5, 0, 0, 0, ZERO_W},
        {"flash small k, partial tiles", 64, 128, 5, 2, 10, 50, 0, 0, 21, RANDOM}, // n_vis 5..30
        // small / odd shapes (the f32 path)
        {"tiny R2", 3, 32, 5, 2, 0, 40, 0, 0, 13, RANDOM},
        {"tiny R3 odd hd", 3, 37, 5, 3, 5, 33, 1, 2, 10, RANDOM},
        {"tiny R4", 3, 32, 5, 4, 17, 60, 0, 0, 0, RANDOM},
        {"tiny R4 dup keys", 3, 32, 5, 4, 17, 60, 0, 0, 0, DUP_KEYS},
        {"70 heads x 130", 70, 130, 9, 4, 30, 25, 3, 1, 6, RANDOM},
        {"1 head x 1, k 1", 1, 1, 1, 2, 0, 20, 0, 0, 7, RANDOM},
    };
    for (const Case &c : cases) run_case(C, G, mode, c);
    for (int64_t nv : {1024, 8192, 32768}) perf_case(G, mode, 2048, nv);
}
