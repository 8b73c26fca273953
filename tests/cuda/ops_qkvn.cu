// ops_qkvn.cu — cuda-test-ops cases of the batched prefill ops qkv_rope_n and
// compress_rows (backend.h "optional batched ops"). Must not: take an expected value from
// the GPU — except the bit-identity checks below, which compare the batched op with the
// CUDA backend's own per-token path (the contract: same bits), never the values.
//
// qkv_rope_n (one call for n_tok tokens at pos0 + t, rings indexed modulo their caps):
//  - reference 1, the CPU backend running backend.h's qkv_rope op sequence token by token
//    (as ops_qkv.cu: rmsnorm, rope, prod fp8_sim + round_f16, copy to raw, copy + axpy(1)
//    per ring store, rope (+ prod hadamard_fp4_sim) of iq). Tolerances as ops_qkv.cu and
//    for the same reasons: q and exact kv/raw 1e-6 · max(1, max|cpu|) (the f64 rmsnorm sum
//    is tree-ordered on the GPU, sequential on the CPU: at most ~1 ulp of the f32 scale);
//    prod kv/raw bit-equal except a few elements one FP8 / F16 rounding step apart
//    (kMaxFlips + n/10000: a midpoint hit needs a ~1e-7 relative coincidence); ring stores
//    and iq 0 (the same f32 operations on both sides, nothing upstream differs).
//  - reference 2 (the contract's "bit-identical to qkv_rope"): n_tok calls of the GPU
//    qkv_rope on a second copy of the data; every buffer equal to the bit (tol 0).
// compress_rows (windows [w0, w1), one call):
//  - reference 1, the CPU backend running forward.c's compressor_step pooling sequence
//    per window (compress_pool, rmsnorm · norm, rope at w·R, prod: hadamard_fp4_sim
//    (indexer) or fp8_sim of [0, hd − n_rot), round_f16). The GPU's expf differs from
//    libm's by up to ~2 ulp, everything else sees the same f32 operations (the f64
//    rmsnorm sum aside). Exact: 4e-6 · max(1, max|cpu|) — a CPU simulation of the whole
//    sequence with every expf perturbed by a random 0..2 ulp gave at most 3e-7 relative
//    (hd 512 / 128 / 64 / 48, R 2..128, 512 windows), so 13x margin, while a wrong
//    window, candidate, order, norm or rope position moves values by O(1). Prod: the
//    same ulp-level differences before the FP8 / F16 / FP4 rounding may cross a rounding
//    point: every element equal, or one rounding step apart (FP8 dims: 2^-3·|v| + 1e-5 ·
//    max|cpu| for FP8 subnormals; F16 dims: 2^-10·|v| + 2^-24; indexer rows (FP4 after the
//    Hadamard): |d| <= max(|a|, |b|), adjacent E2M1 values), at most 8 + n/1000 of them
//    (the simulation: 31 in 262144 values at 512 windows of hd 512, 0 for the indexer).
//  - reference 2 (the contract's "bit-identical to that sequence"): the CUDA backend's
//    own op sequence per window on a second copy; the whole rows buffer equal to the bit.
// Every compared buffer includes the rows around the written ones (untouched rows,
// padding between tokens, other ring slots), so a stray write fails too.
#include "ops_harness.h"

namespace {

// ======================================================================== helpers

// Bits of two GPU buffers; true when identical.
bool same_bits(ds4_backend *G, const float *x, const float *y, size_t n) {
    std::vector<float> a(n), b(n);
    G->read(G, a.data(), x, n * 4);
    G->read(G, b.data(), y, n * 4);
    return memcmp(a.data(), b.data(), n * 4) == 0;
}

void report_bits(bool same, const char *name) {
    printf("%s %s\n", same ? "ok  " : "FAIL", name);
    (same ? g_pass : g_fail)++;
}

// Rounded values (prod) against the CPU: each element equal, or one rounding step apart
// (see the header), at most max_flips of them. n_rows rows of width w start every
// `stride` floats from `first`; within a row, dims < off are FP8 (kind 0) and the rest
// F16; kind 1 (indexer rows): FP4 everywhere. Elements outside the rows must be equal.
void check_rounded(const char *name, Pair &p, int64_t first, int64_t stride, int64_t n_rows, int64_t w, int64_t off,
                   int kind, int max_flips) {
    std::vector<float> a(p.n), b(p.n);
    p.cpu->read(p.cpu, a.data(), p.c, p.n * 4);
    p.gpu->read(p.gpu, b.data(), p.g, p.n * 4);
    double mx = 1;
    for (size_t i = 0; i < p.n; i++)
        if (isfinite(a[i])) mx = fmax(mx, fabs(a[i]));
    int flips = 0;
    bool ok = true;
    double dmax = 0;
    for (size_t i = 0; i < p.n; i++) {
        if (a[i] == b[i] || (isnan(a[i]) && isnan(b[i]))) continue;
        const double d = fabs((double)a[i] - b[i]), m = fmax(fabs(a[i]), fabs(b[i]));
        const int64_t rel = (int64_t)i - first;
        const int64_t col = rel >= 0 && rel / stride < n_rows ? rel % stride : -1;
        double bound = -1; // outside a row: no difference allowed
        if (col >= 0 && col < w) {
            if (kind == 1) bound = m + 0x1p-24;
            else bound = col < off ? 0x1p-3 * m + 1e-5 * mx : 0x1p-10 * m + 0x1p-24;
        }
        flips++;
        dmax = fmax(dmax, isnan(d) ? INFINITY : d);
        if (!(d <= bound)) ok = false;
    }
    ok = ok && flips <= max_flips;
    printf("%s %-44s flips %d (max %d, one step each), max|diff| %.3e\n", ok ? "ok  " : "FAIL", name, flips, max_flips,
           dmax);
    (ok ? g_pass : g_fail)++;
}

std::vector<float> inv_freq(int n_rot) {
    std::vector<float> inv((size_t)(n_rot / 2 + 1));
    for (int j = 0; j < n_rot / 2; j++) inv[(size_t)j] = powf(10000.f, -2.f * j / (float)n_rot);
    return inv;
}

// ======================================================================== qkv_rope_n

constexpr int kMaxFlips = 4;

struct QkvNCase {
    const char *name;
    int n_head;
    int64_t hd;
    int n_rot;
    int iq_heads; // 0: iq = NULL
    int64_t ihd;
    int n_put;
    int64_t cw[2];
    int64_t pos0;
    int n_tok;
    int raw_cap, put_cap, put_R;
    int pad;            // extra floats per token in every strided buffer (odd: rows change alignment per token)
    bool kvn_unaligned; // kv_norm at a 4-byte (not 16-byte) address: scalar rmsnorm path
};

struct QBufs {
    Pair q, kv, kvn, raw, iq, ring[2], src[2], ape[2];
};
struct QHost {
    std::vector<float> q, kv, kvn, raw, iq, ring[2], src[2], ape[2];
};

// Strides of a case (floats per token).
struct QStrides {
    int64_t qs, kvs, iqs, ss[2];
};
QStrides strides(const QkvNCase &k) {
    QStrides s;
    s.qs = k.n_head * k.hd + k.pad;
    s.kvs = k.hd + k.pad;
    s.iqs = (k.iq_heads ? k.iq_heads : 1) * k.ihd + k.pad;
    for (int j = 0; j < 2; j++) s.ss[j] = 2 * (j < k.n_put ? k.cw[j] : 1) + k.pad;
    return s;
}

QHost make_qdata(const QkvNCase &k) {
    const QStrides st = strides(k);
    QHost h;
    h.q = rvec((size_t)(k.n_tok * st.qs), 3);
    h.kv = rvec((size_t)(k.n_tok * st.kvs), 3);
    h.kvn = rvec((size_t)k.hd + 1, 1);
    for (auto &x : h.kvn) x += 1.0f; // norm weights around 1 (0..2)
    h.raw = rvec((size_t)(k.raw_cap * k.hd), 5);
    h.iq = rvec((size_t)(k.n_tok * st.iqs), 2);
    for (int j = 0; j < 2; j++) {
        const int64_t cw = j < k.n_put ? k.cw[j] : 1;
        h.ring[j] = rvec((size_t)(k.put_cap * 2 * cw), 7);
        h.src[j] = rvec((size_t)(k.n_tok * st.ss[j]), 2);
        h.ape[j] = rvec((size_t)(k.put_R * cw), 1);
    }
    return h;
}

QBufs put_q(ds4_backend *C, ds4_backend *G, const QHost &h) {
    QBufs b;
    b.q = put(C, G, h.q);
    b.kv = put(C, G, h.kv);
    b.kvn = put(C, G, h.kvn);
    b.raw = put(C, G, h.raw);
    b.iq = put(C, G, h.iq);
    for (int j = 0; j < 2; j++) {
        b.ring[j] = put(C, G, h.ring[j]);
        b.src[j] = put(C, G, h.src[j]);
        b.ape[j] = put(C, G, h.ape[j]);
    }
    return b;
}

void drop_q(QBufs &b) {
    for (Pair *p : {&b.q, &b.kv, &b.kvn, &b.raw, &b.iq, &b.ring[0], &b.src[0], &b.ape[0], &b.ring[1], &b.src[1],
                    &b.ape[1]})
        drop(*p);
}

// Pointers of token t (position pos0 + t) in one backend's copy (gpu: the .g side).
struct TokPtrs {
    float *q, *kv, *kvn, *raw, *iq;
    float *dst[2];
    const float *src[2], *ape[2];
};
TokPtrs tok_ptrs(QBufs &b, bool gpu, const QkvNCase &k, int t) {
    const QStrides st = strides(k);
    const int64_t p = k.pos0 + t;
    auto P = [gpu](Pair &x) { return gpu ? x.g : x.c; };
    TokPtrs r;
    r.q = P(b.q) + t * st.qs;
    r.kv = P(b.kv) + t * st.kvs;
    r.kvn = P(b.kvn) + (k.kvn_unaligned ? 1 : 0);
    r.raw = P(b.raw) + (p % k.raw_cap) * k.hd;
    r.iq = k.iq_heads ? P(b.iq) + t * st.iqs : NULL;
    for (int j = 0; j < 2; j++) {
        const int64_t cw = j < k.n_put ? k.cw[j] : 1;
        r.dst[j] = P(b.ring[j]) + (p % k.put_cap) * 2 * cw;
        r.src[j] = P(b.src[j]) + t * st.ss[j];
        r.ape[j] = P(b.ape[j]) + (p % k.put_R) * cw;
    }
    return r;
}

// backend.h's qkv_rope op sequence for one token on backend `be` (the CPU reference).
void qkv_sequence(ds4_backend *be, const QkvNCase &k, const TokPtrs &r, int64_t p, const float *inv, bool prod,
                  double eps) {
    const int64_t hd = k.hd;
    be->rmsnorm(be, r.q, hd, NULL, r.q, hd, hd, k.n_head, eps);
    be->rmsnorm(be, r.kv, hd, r.kvn, r.kv, hd, hd, 1, eps);
    be->rope(be, r.q, hd, k.n_head, hd, k.n_rot, p, inv, false);
    be->rope(be, r.kv, hd, 1, hd, k.n_rot, p, inv, false);
    if (prod) {
        be->fp8_sim(be, r.kv, hd, 1, hd - k.n_rot);
        be->round_f16(be, r.kv, hd);
    }
    be->copy(be, r.raw, r.kv, (size_t)hd * sizeof(float));
    for (int j = 0; j < k.n_put; j++) {
        be->copy(be, r.dst[j], r.src[j], (size_t)(2 * k.cw[j]) * sizeof(float));
        be->axpy(be, r.dst[j] + k.cw[j], r.ape[j], 1.0f, k.cw[j]);
    }
    if (r.iq) {
        be->rope(be, r.iq, k.ihd, k.iq_heads, k.ihd, k.n_rot, p, inv, false);
        if (prod) be->hadamard_fp4_sim(be, r.iq, k.ihd, k.iq_heads, k.ihd);
    }
}

void run_qkvn(ds4_backend *C, ds4_backend *G, const char *mode, const QkvNCase &k) {
    const bool prod = C->numerics == DS4_NUM_PROD;
    const double eps = 1e-6;
    char name[200];
    const std::vector<float> inv = inv_freq(k.n_rot);
    const QStrides st = strides(k);
    const QHost h = make_qdata(k);
    QBufs b = put_q(C, G, h), s = put_q(C, G, h); // s: the GPU per-token qkv_rope copy (.g only)
    for (int t = 0; t < k.n_tok; t++) {
        const int64_t p = k.pos0 + t;
        const TokPtrs rc = tok_ptrs(b, false, k, t), rs = tok_ptrs(s, true, k, t);
        qkv_sequence(C, k, rc, p, inv.data(), prod, eps);
        G->qkv_rope(G, rs.q, k.n_head, rs.kv, rs.kvn, k.hd, k.n_rot, p, inv.data(), prod, eps, rs.raw, rs.iq,
                    k.iq_heads, k.ihd, k.n_put, rs.dst, rs.src, rs.ape, k.cw);
    }
    {
        const TokPtrs g0 = tok_ptrs(b, true, k, 0);
        float *dst[2] = {b.ring[0].g, b.ring[1].g};
        const float *src[2] = {b.src[0].g, b.src[1].g}, *ape[2] = {b.ape[0].g, b.ape[1].g};
        const int cap[2] = {k.put_cap, k.put_cap}, R[2] = {k.put_R, k.put_R};
        G->qkv_rope_n(G, b.q.g, st.qs, k.n_head, b.kv.g, st.kvs, g0.kvn, k.hd, k.n_rot, k.pos0, k.n_tok, inv.data(),
                      prod, eps, b.raw.g, k.raw_cap, k.iq_heads ? b.iq.g : NULL, st.iqs, k.iq_heads, k.ihd, k.n_put,
                      dst, cap, src, st.ss, ape, R, k.cw);
    }
    const int flips = kMaxFlips + (int)(k.n_tok * st.kvs / 10000);
    snprintf(name, sizeof name, "%s qkv_rope_n %s q", mode, k.name);
    check(name, b.q, 1e-6);
    snprintf(name, sizeof name, "%s qkv_rope_n %s kv", mode, k.name);
    if (prod) check_rounded(name, b.kv, 0, st.kvs, k.n_tok, k.hd, k.hd - k.n_rot, 0, flips);
    else check(name, b.kv, 1e-6);
    snprintf(name, sizeof name, "%s qkv_rope_n %s raw ring", mode, k.name);
    if (prod) check_rounded(name, b.raw, 0, k.hd, k.raw_cap, k.hd, k.hd - k.n_rot, 0, flips);
    else check(name, b.raw, 1e-6);
    for (int j = 0; j < k.n_put; j++) {
        snprintf(name, sizeof name, "%s qkv_rope_n %s ring store %d (cw %lld)", mode, k.name, j, (long long)k.cw[j]);
        check(name, b.ring[j], 0);
    }
    if (k.iq_heads) {
        snprintf(name, sizeof name, "%s qkv_rope_n %s iq", mode, k.name);
        check(name, b.iq, 0);
    }
    bool same = true;
    Pair *fx[] = {&b.q, &b.kv, &b.raw, &b.iq, &b.ring[0], &b.ring[1]};
    Pair *sx[] = {&s.q, &s.kv, &s.raw, &s.iq, &s.ring[0], &s.ring[1]};
    for (size_t i = 0; i < sizeof fx / sizeof fx[0]; i++) same = same && same_bits(G, fx[i]->g, sx[i]->g, fx[i]->n);
    snprintf(name, sizeof name, "%s qkv_rope_n %s == %d x GPU qkv_rope (bits)", mode, k.name, k.n_tok);
    report_bits(same, name);
    drop_q(b);
    drop_q(s);
}

// ======================================================================== compress_rows

struct CompCase {
    const char *name;
    int64_t hd;
    int n_rot;
    int R, coff;
    int cap; // ring entries (a multiple of R: a window's R entries are contiguous)
    bool indexer;
    int64_t w0, w1;
    int rows_off, norm_off; // floats: 1 = not 16-byte aligned (the scalar rmsnorm plan)
};

// forward.c's compressor_step pooling sequence for window w on backend `be`.
void comp_sequence(ds4_backend *be, const CompCase &k, const float *ring, const float *norm, float *rows, int64_t w,
                   const float *inv, bool prod, double eps) {
    const int64_t hd = k.hd, rw = 2 * k.coff * hd;
    const float *cur = ring + ((w * k.R) % k.cap) * rw;
    const float *prev = k.coff == 2 && w > 0 ? ring + (((w - 1) * k.R) % k.cap) * rw : NULL;
    float *out = rows + w * hd;
    be->compress_pool(be, cur, prev, rw, k.R, k.coff, hd, out);
    be->rmsnorm(be, out, hd, norm, out, hd, hd, 1, eps);
    be->rope(be, out, hd, 1, hd, k.n_rot, w * k.R, inv, false);
    if (prod) {
        if (k.indexer) be->hadamard_fp4_sim(be, out, hd, 1, hd);
        else be->fp8_sim(be, out, hd, 1, hd - k.n_rot);
        be->round_f16(be, out, hd);
    }
}

void run_comp(ds4_backend *C, ds4_backend *G, const char *mode, const CompCase &k) {
    const bool prod = C->numerics == DS4_NUM_PROD;
    const double eps = 1e-6;
    char name[200];
    const std::vector<float> inv = inv_freq(k.n_rot);
    const int64_t hd = k.hd, rw = 2 * k.coff * hd, cw = k.coff * hd;
    // ring: C in [-2, 2], Z + ape in [-3, 3] (softmax weights from near-uniform to peaked)
    std::vector<float> ring((size_t)(k.cap * rw));
    for (int64_t e = 0; e < k.cap; e++)
        for (int64_t i = 0; i < rw; i++) ring[(size_t)(e * rw + i)] = srand1() * (i < cw ? 2.0f : 3.0f);
    std::vector<float> norm = rvec((size_t)hd + 1, 1);
    for (auto &x : norm) x += 1.0f;
    // rows 0 .. w1 (+1 beyond): the ones outside [w0, w1) must stay as they are
    const std::vector<float> rows0 = rvec((size_t)((k.w1 + 1) * hd + k.rows_off), 4);
    Pair pr = put(C, G, ring), pn = put(C, G, norm), b = put(C, G, rows0), s = put(C, G, rows0);
    for (int64_t w = k.w0; w < k.w1; w++) {
        comp_sequence(C, k, pr.c, pn.c + k.norm_off, b.c + k.rows_off, w, inv.data(), prod, eps);
        comp_sequence(G, k, pr.g, pn.g + k.norm_off, s.g + k.rows_off, w, inv.data(), prod, eps);
    }
    G->compress_rows(G, pr.g, k.cap, k.R, k.coff, hd, pn.g + k.norm_off, eps, k.n_rot, inv.data(), prod, k.indexer,
                     k.w0, k.w1, b.g + k.rows_off);
    snprintf(name, sizeof name, "%s compress_rows %s", mode, k.name);
    if (prod) {
        const int64_t n = (k.w1 - k.w0) * hd;
        check_rounded(name, b, k.rows_off + k.w0 * hd, hd, k.w1 - k.w0, hd, hd - k.n_rot, k.indexer ? 1 : 0, 8 + (int)(n / 1000));
    } else {
        check(name, b, 4e-6);
    }
    snprintf(name, sizeof name, "%s compress_rows %s == GPU op sequence (bits)", mode, k.name);
    report_bits(same_bits(G, b.g, s.g, b.n), name);
    drop(pr);
    drop(pn);
    drop(b);
    drop(s);
}

// ---- --cpu-self: the CPU backend has none of these ops, so its side runs them as their
// definitions (the per-token / per-window sequences above, on G) — every check must then
// show 0 difference; this exercises the cases' pointers, strides and checks without a GPU.
void emul_qkv_rope(ds4_backend *be, float *q, int n_head, float *kv, const float *kv_norm, int64_t hd, int n_rot,
                   int64_t pos, const float *inv_freq, bool prod, double eps, float *raw, float *iq, int iq_heads,
                   int64_t ihd, int n_put, float *const *put_dst, const float *const *put_src,
                   const float *const *put_ape, const int64_t *put_cw) {
    QkvNCase k = {};
    k.n_head = n_head, k.hd = hd, k.n_rot = n_rot, k.iq_heads = iq ? iq_heads : 0, k.ihd = ihd, k.n_put = n_put;
    TokPtrs r = {};
    r.q = q, r.kv = kv, r.kvn = (float *)kv_norm, r.raw = raw, r.iq = iq;
    for (int j = 0; j < n_put; j++) k.cw[j] = put_cw[j], r.dst[j] = put_dst[j], r.src[j] = put_src[j], r.ape[j] = put_ape[j];
    qkv_sequence(be, k, r, pos, inv_freq, prod, eps);
}
void emul_qkv_rope_n(ds4_backend *be, float *q, int64_t qs, int n_head, float *kv, int64_t kvs, const float *kv_norm,
                     int64_t hd, int n_rot, int64_t pos0, int n_tok, const float *inv_freq, bool prod, double eps,
                     float *raw, int raw_cap, float *iq, int64_t iqs, int iq_heads, int64_t ihd, int n_put,
                     float *const *put_dst, const int *put_cap, const float *const *put_src, const int64_t *put_ss,
                     const float *const *put_ape, const int *put_R, const int64_t *put_cw) {
    for (int t = 0; t < n_tok; t++) {
        const int64_t p = pos0 + t;
        float *pd[2];
        const float *ps[2], *pa[2];
        for (int j = 0; j < n_put; j++) {
            pd[j] = put_dst[j] + (p % put_cap[j]) * 2 * put_cw[j];
            ps[j] = put_src[j] + t * put_ss[j];
            pa[j] = put_ape[j] + (p % put_R[j]) * put_cw[j];
        }
        emul_qkv_rope(be, q + t * qs, n_head, kv + t * kvs, kv_norm, hd, n_rot, p, inv_freq, prod, eps,
                      raw + (p % raw_cap) * hd, iq ? iq + t * iqs : NULL, iq_heads, ihd, n_put, pd, ps, pa, put_cw);
    }
}
void emul_compress_rows(ds4_backend *be, const float *ring, int cap, int R, int coff, int64_t hd, const float *norm,
                        double eps, int n_rot, const float *inv_freq, bool prod, bool indexer, int64_t w0, int64_t w1,
                        float *rows) {
    CompCase k = {};
    k.hd = hd, k.n_rot = n_rot, k.R = R, k.coff = coff, k.cap = cap, k.indexer = indexer;
    for (int64_t w = w0; w < w1; w++) comp_sequence(be, k, ring, norm, rows, w, inv_freq, prod, eps);
}

}  // namespace

namespace {
void run_all(ds4_backend *C, ds4_backend *G, const char *mode) {
    if (!G->qkv_rope_n || !G->qkv_rope) {
        printf("skip %s qkv_rope_n (not provided)\n", mode);
    } else {
        const QkvNCase cases[] = {
            // Flash CSA at a 2k-ish chunk: 64 x 512 heads (n_rot 64), compressor ring cw
            // 1024 and indexer ring cw 256, iq 64 x 128; 300 tokens whose raw / ring slots
            // wrap (positions 924 .. 1223, caps 512): one launch
            {"flash-csa-300", 64, 512, 64, 64, 128, 2, {1024, 256}, 924, 300, 512, 512, 4, 0, false},
            // Flash HCA: one ring store (coff 1 x 512, ape rows mod 128), no iq; 5 tokens
            // across a slot wrap (caps 256)
            {"flash-hca-5", 64, 512, 64, 0, 128, 1, {512, 0}, 1022, 5, 256, 256, 128, 0, false},
            // one token at a long-context position
            {"flash-csa-1", 64, 512, 64, 64, 128, 2, {1024, 256}, 123457, 1, 4096, 512, 4, 0, false},
            // tiny model: 4 x 64, n_rot 16, one ring store, 5 tokens wrapping a cap of 8
            {"tiny-5", 4, 64, 16, 0, 64, 1, {128, 0}, 6, 5, 8, 8, 4, 0, false},
            // odd head count, stride padding of 1 float (q / kv rows alternate between the
            // float4 and the scalar rmsnorm per token), kv_norm unaligned, iq 2 x 64
            {"tiny-odd-stride", 3, 64, 16, 2, 64, 2, {128, 64}, 4095, 5, 16, 12, 4, 1, true},
            // the iq role's warp-per-row path off Flash's tiling: 5 iq heads of 128 (4 rows per
            // block: a last block with one live warp), pad 1 so token t's iq rows sit at
            // 4-byte offsets t mod 4 (float4 loads on some tokens, scalar on the others);
            // ihd 64 with pad 2 (float2 loads on even tokens only), 3 heads
            {"flash-iq5-pad1", 3, 512, 64, 5, 128, 1, {256, 0}, 77, 9, 16, 16, 4, 1, false},
            {"iq64-pad2", 2, 64, 16, 3, 64, 0, {0, 0}, 10, 6, 8, 8, 4, 2, false},
            // odd widths: hd 63 (scalar rmsnorm, partial FP8 block), ihd 48 (no Hadamard)
            {"odd-300", 3, 63, 16, 3, 48, 2, {63, 5}, 1001, 300, 320, 400, 3, 0, false},
            // no ring stores, no iq; 300 tokens with a raw cap of 64: five launches in
            // stream order (the later token's row wins, as token by token)
            {"noput-300-cap64", 1, 64, 16, 0, 64, 0, {0, 0}, 60, 300, 64, 64, 4, 0, false},
            // hd 4100: float4 rmsnorm with 1024 threads x 2 on even tokens, scalar (512)
            // on odd ones (pad 2); nothing rotated / everything rotated
            {"hd4100-pad2", 2, 4100, 64, 1, 256, 1, {300, 0}, 999, 3, 4, 4, 4, 2, false},
            {"norot", 2, 32, 0, 1, 32, 1, {8, 0}, 5, 5, 8, 8, 2, 0, false},
            {"allrot", 2, 32, 32, 1, 32, 0, {0, 0}, 5, 5, 8, 8, 2, 0, false},
            // a row beyond the kernel's shared memory: the op runs the sequence per token
            {"hd16384-fallback", 2, 16384, 64, 0, 128, 1, {16, 0}, 3, 2, 4, 4, 4, 0, false},
        };
        for (const QkvNCase &k : cases) run_qkvn(C, G, mode, k);
    }
    if (!G->compress_rows) {
        printf("skip %s compress_rows (not provided)\n", mode);
        return;
    }
    const CompCase cc[] = {
        // CSA compressor (coff 2, R 4, hd 512): the first window (no prev), one window
        // after a ring wrap, and a 2048-token chunk's 512 windows wrapping a 256-entry ring
        {"csa-w0", 512, 64, 4, 2, 256, false, 0, 1, 0, 0},
        {"csa-one-wrap", 512, 64, 4, 2, 256, false, 300, 301, 0, 0},
        {"csa-512", 512, 64, 4, 2, 256, false, 37, 549, 0, 0},
        // CSA indexer (hd 128: Hadamard + FP4 in prod): from window 0, and a single one
        {"idx-w0-300", 128, 64, 4, 2, 256, true, 0, 300, 0, 0},
        {"idx-one", 128, 64, 4, 2, 256, true, 1000, 1001, 0, 0},
        // HCA compressor (coff 1, R 128): one window, and 16 windows over a 4-window ring
        {"hca-one", 512, 64, 128, 1, 512, false, 0, 1, 0, 0},
        {"hca-16", 512, 64, 128, 1, 512, false, 3, 19, 0, 0},
        // small R = 3 (coff 1), hd 64, n_rot 16, wrapping a 4-window ring
        {"r3-hd64", 64, 16, 3, 1, 12, false, 5, 12, 0, 0},
        // odd shapes: hd 48 (no Hadamard, partial FP4 / FP8 blocks), R 2, coff 2
        {"hd48-idx", 48, 16, 2, 2, 8, true, 0, 9, 0, 0},
        {"hd48", 48, 16, 2, 2, 8, false, 2, 9, 0, 0},
        // rows and norm at 4-byte addresses: cu_rmsnorm's scalar kernel (256 threads)
        {"csa-unaligned", 512, 64, 4, 2, 64, false, 10, 40, 1, 1},
        {"idx-unaligned", 128, 64, 4, 2, 64, true, 10, 40, 0, 1},
        // nothing rotated
        {"norot", 64, 0, 4, 2, 16, false, 0, 6, 0, 0},
        // a row beyond the kernel's shared memory: the op sequence per window
        {"hd16384-fallback", 16384, 64, 2, 1, 4, false, 1, 3, 0, 0},
    };
    for (const CompCase &k : cc) run_comp(C, G, mode, k);
}
}  // namespace

void ops_batch_qkv(ds4_backend *C, ds4_backend *G, const char *mode) {
    // the shared generator continues afterwards as if these cases had drawn nothing, so
    // the files after this one see the same data whether these cases run or are skipped
    const uint64_t rng = g_rng;
    if (strcmp(G->name, "cpu") != 0) {
        run_all(C, G, mode);
    } else { // --cpu-self (see emul_qkv_rope_n): the emulations stand in for this call only
        ds4_backend E = *G;
        if (!E.qkv_rope) E.qkv_rope = emul_qkv_rope;
        if (!E.qkv_rope_n) E.qkv_rope_n = emul_qkv_rope_n;
        if (!E.compress_rows) E.compress_rows = emul_compress_rows;
        run_all(C, &E, mode);
    }
    g_rng = rng;
}
