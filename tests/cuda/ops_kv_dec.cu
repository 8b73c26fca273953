// ops_kv_dec.cu — cuda-test-ops cases of the decode-path readers of compact KV rows
// (ds4cu::kv_compact, kv_fmt.h): attention_ex with compact rows_b (fused_attn.cu) and
// indexer_scores with compact keys (indexer.cu), production numerics only.
//
// Each case builds production-valid rows with the CPU backend's own simulation ops
// (attention rows: fp8_sim on the first hd − n_rot dims then round_f16; indexer keys:
// hadamard_fp4_sim then round_f16), encodes them with ds4_kv_attn_encode /
// ds4_kv_index_encode and checks:
//  - "lossless": ds4_kv_*_decode of the bytes gives the CPU rows bit for bit (kv_fmt.h's
//    claim on production rows; the reference is the CPU ops, not our decoder);
//  - "bit-identical": the GPU op on the compact bytes (compact on, through the test hook
//    ds4_cuda_set_kv_compact) gives exactly the bits of the same GPU op on the decoded f32
//    rows with compact off — the decoders must feed the dot products the f32 values;
//  - against the CPU: the CPU backend's attention + inverse rope (resp. indexer_scores) on
//    the decoded rows, within ops_attn.cu's / test_ops.cu's tolerances (1e-5 resp. 1e-4 ·
//    max(1, max|cpu|): f32 summation order only).
// Shapes: Flash (64 x 512, n_rot 64; indexer 64 x 128), nb > 448 with device indices from
// topk_dev, nb = 0, na = 0, a deep merge tree, a misaligned rows_b (4-byte copies), and
// small / odd shapes: the vector decoders with padding beyond hd and partial scale blocks
// (attention hd 68 / 500 with n_rot 20 / 60, all-rope and no-rope rows; indexer hd 48 with
// a half block) and the element-wise ones (hd 67, n_rot 10, 13, 62; indexer hd 37, keys
// not 8-byte aligned). Timing lines (no verdict) compare compact with f32 rows at the
// Flash decode shapes.
// Must not: take an expected value from the GPU (the compact-vs-f32 comparison is a
// property of the GPU path; the values are checked against the CPU).
#include "ops_harness.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>

#include "backend/cuda/cuda_internal.h"
#include "backend/kv_fmt.h"

// Test hook (src/backend/cuda/cuda_backend.cu): compressed rows compact (1) or f32 (0).
extern "C" void ds4_cuda_set_kv_compact(ds4_backend *be, int on);

namespace {

void verdict(bool ok, const char *name, const char *detail = "") {
    printf("%s %-60s %s\n", ok ? "ok  " : "FAIL", name, detail);
    (ok ? g_pass : g_fail)++;
}

// |a − b| <= tol · max(1, max|a|) over n values (a: CPU reference), as harness check().
void near(const char *name, const std::vector<float> &a, const std::vector<float> &b, double tol) {
    double mx = 1, d = 0;
    for (float x : a)
        if (isfinite(x)) mx = fmax(mx, fabs(x));
    for (size_t i = 0; i < a.size(); i++) {
        const double e = a[i] == b[i] ? 0.0 : fabs((double)a[i] - b[i]);
        if (!(e <= d)) d = isnan(e) ? INFINITY : e;
    }
    char det[96];
    snprintf(det, sizeof det, "max|diff| %.3e (bound %.1e)", d, tol * mx);
    verdict(d <= tol * mx, name, det);
}

bool same_bits(const std::vector<float> &a, const std::vector<float> &b) {
    return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// n rows of width hd with per-row magnitudes from 1e-7 (f16 subnormals, E4M3 subnormals
// under the amax floor) through 1e-3 .. amax (log-uniform) to amax, some zero blocks and
// signed zeros; then through the CPU backend's production ops: fp8_sim on the first nq
// dims of each row (or hadamard_fp4_sim on all hd), round_f16.
std::vector<float> prod_rows(ds4_backend *C, int n, int64_t hd, int64_t nq, bool indexer, float amax) {
    std::vector<float> v((size_t)n * hd);
    for (int r = 0; r < n; r++) {
        const double u = urand();
        const float amp = u < 0.05 ? 1e-7f : u < 0.1 ? amax : 1e-3f * (float)pow(amax / 1e-3, urand());
        for (int64_t i = 0; i < hd; i++) v[(size_t)r * hd + i] = srand1() * amp;
        if (r % 7 == 3)   // a zero block (the amax floor), signed zeros
            for (int64_t i = 0; i < std::min<int64_t>(hd, 40); i++) v[(size_t)r * hd + i] = i & 1 ? -0.0f : 0.0f;
    }
    float *x = (float *)C->alloc(C, v.size() * 4);
    C->write(C, x, v.data(), v.size() * 4);
    if (indexer) C->hadamard_fp4_sim(C, x, hd, n, hd);
    else if (nq > 0) C->fp8_sim(C, x, hd, n, nq);
    C->round_f16(C, x, (int64_t)v.size());
    C->read(C, v.data(), x, v.size() * 4);
    C->release(C, x);
    return v;
}

// Encodes rows (attention when n_rot >= 0, else indexer) into bytes [n][rb]; decodes
// them back into dec. Returns whether dec == rows bit for bit.
bool encode_rows(const std::vector<float> &rows, int n, int64_t hd, int n_rot, size_t rb, std::vector<uint8_t> &bytes,
                 std::vector<float> &dec) {
    bytes.assign((size_t)n * rb, 0xA5);
    dec.assign((size_t)n * hd, 0.f);
    for (int r = 0; r < n; r++) {
        const float *x = rows.data() + (size_t)r * hd;
        uint8_t *b = bytes.data() + (size_t)r * rb;
        if (n_rot >= 0) {
            ds4_kv_attn_encode(x, hd, n_rot, b);
            ds4_kv_attn_decode(b, hd, n_rot, dec.data() + (size_t)r * hd);
        } else {
            ds4_kv_index_encode(x, hd, b);
            ds4_kv_index_decode(b, hd, dec.data() + (size_t)r * hd);
        }
    }
    return same_bits(rows, dec);
}

template <typename T>
T *gput(ds4_backend *G, const std::vector<T> &v, size_t extra = 0) {
    T *p = (T *)G->alloc(G, v.size() * sizeof(T) + extra + 16);
    if (!v.empty()) G->write(G, (uint8_t *)p + extra, v.data(), v.size() * sizeof(T));
    return p;
}
template <typename T>
std::vector<T> gget(ds4_backend *G, const T *p, size_t n) {
    std::vector<T> v(n);
    G->read(G, v.data(), p, n * sizeof(T));
    return v;
}

// Rows of magnitude <= amax (window rows <= 1) and q of magnitude <= qs: the logits stay
// O(1..10) (qs · amax small) so that ops_attn.cu's 1e-5 bound against the CPU holds; the
// large-row case (amax 3e3, E8M0 exponents up to ~127 + 3) scales q down accordingly.
struct AttCase {
    const char *what;
    int nh;
    int64_t hd;
    int n_rot, na, nrows_a, nb, nrows_b;
    int ib_mode;   // 0: host ib, 1: device ib, 2: device ib from topk_dev (ascending)
    float qs;
    int64_t pos;
    int misalign;  // bytes added to the compact rows_b pointer (0 or 4)
    float amax = 1.f;
};

void att_case(ds4_backend *C, ds4_backend *G, const AttCase &k) {
    const int nh = k.nh, na = k.na, nb = k.nb;
    const int64_t hd = k.hd;
    const size_t rb = ds4_kv_attn_row_bytes(hd, k.n_rot);
    char name[200];
    std::vector<float> rows = prod_rows(C, k.nrows_b, hd, hd - k.n_rot, false, k.amax), dec;
    std::vector<uint8_t> bytes;
    const bool lossless = encode_rows(rows, k.nrows_b, hd, k.n_rot, rb, bytes, dec);
    snprintf(name, sizeof name, "prod kv attn rows %lld rot %d (%zu B) lossless", (long long)hd, k.n_rot, rb);
    verdict(lossless, name);

    std::vector<int32_t> ia((size_t)na), ib((size_t)nb);
    for (auto &x : ia) x = (int32_t)(urand() * k.nrows_a);
    for (auto &x : ib) x = (int32_t)(urand() * k.nrows_b);
    std::vector<float> inv((size_t)std::max(1, k.n_rot / 2));
    for (int j = 0; j < k.n_rot / 2; j++) inv[j] = powf(10000.f, -2.f * j / (float)k.n_rot);
    std::vector<float> hq = rvec((size_t)nh * hd, k.qs), hra = rvec((size_t)k.nrows_a * hd), hs = rvec((size_t)nh);
    const float sc = 1.f / sqrtf((float)hd);

    float *q = gput(G, hq), *ra = gput(G, hra), *sk = gput(G, hs), *rbf = gput(G, dec);
    uint8_t *rbc = gput(G, bytes, (size_t)k.misalign);
    float *o1 = gput(G, std::vector<float>((size_t)nh * hd, 7.f)), *o2 = gput(G, std::vector<float>((size_t)nh * hd, 9.f));
    int32_t *dib = NULL;
    if (k.ib_mode == 2 && nb > 0) {   // indices as decode makes them: topk_dev of scores
        float *s = gput(G, rvec((size_t)k.nrows_b));
        dib = (int32_t *)G->alloc(G, (size_t)nb * sizeof(int32_t));
        G->topk_dev(G, s, k.nrows_b, nb, dib);
        ib = gget(G, dib, (size_t)nb);
        G->release(G, s);
    } else if (k.ib_mode == 1) {
        dib = gput(G, ib);
    }
    const int32_t *pib = k.ib_mode ? dib : ib.data();
    const bool idev = k.ib_mode != 0;
    const float *rows_c = reinterpret_cast<const float *>(rbc + k.misalign);

    const bool was = ds4cu::kv_compact(G);
    ds4_cuda_set_kv_compact(G, 1);
    G->attention_ex(G, q, nh, hd, ra, ia.data(), na, rows_c, pib, nb, idev, sk, sc, k.n_rot, k.pos, inv.data(), o1);
    ds4_cuda_set_kv_compact(G, 0);
    G->attention_ex(G, q, nh, hd, ra, ia.data(), na, rbf, pib, nb, idev, sk, sc, k.n_rot, k.pos, inv.data(), o2);
    ds4_cuda_set_kv_compact(G, was);
    const std::vector<float> g1 = gget(G, o1, (size_t)nh * hd), g2 = gget(G, o2, (size_t)nh * hd);

    // CPU: attention on the decoded rows, then the inverse rope
    Pair cq = put(C, G, hq), cra = put(C, G, hra), crb = put(C, G, dec), csk = put(C, G, hs);
    Pair co = put(C, G, std::vector<float>((size_t)nh * hd, 0.f));
    C->attention(C, cq.c, nh, hd, cra.c, ia.data(), na, crb.c, ib.data(), nb, csk.c, sc, co.c);
    C->rope(C, co.c, hd, nh, hd, k.n_rot, k.pos, inv.data(), true);
    std::vector<float> cref((size_t)nh * hd);
    C->read(C, cref.data(), co.c, cref.size() * 4);

    snprintf(name, sizeof name, "prod kv attention_ex %s %dx%lld rot %d %d+%d%s", k.what, nh, (long long)hd, k.n_rot, na,
             nb, k.ib_mode == 2 ? " topk ib" : k.ib_mode == 1 ? " ib dev" : "");
    verdict(same_bits(g1, g2), name, "compact == f32 bits");
    near(name, cref, g1, 1e-5);   // vs the CPU on the decoded rows

    for (Pair *p : {&cq, &cra, &crb, &csk, &co}) drop(*p);
    for (void *p : {(void *)q, (void *)ra, (void *)sk, (void *)rbf, (void *)rbc, (void *)o1, (void *)o2})
        G->release(G, p);
    if (dib) G->release(G, dib);
}

struct IdxCase {
    const char *what;
    int nh;
    int64_t hd;
    int n_keys, misalign;
};

void idx_case(ds4_backend *C, ds4_backend *G, const IdxCase &k) {
    const int nh = k.nh, n = k.n_keys;
    const int64_t hd = k.hd;
    const size_t rb = ds4_kv_index_row_bytes(hd);
    char name[200];
    std::vector<float> keys = prod_rows(C, n, hd, hd, true, 3e3f), dec;
    std::vector<uint8_t> bytes;
    const bool lossless = encode_rows(keys, n, hd, -1, rb, bytes, dec);
    snprintf(name, sizeof name, "prod kv index rows %lld (%zu B) lossless", (long long)hd, rb);
    verdict(lossless, name);
    // q as forward.c makes it in prod (hadamard_fp4_sim), weights arbitrary
    std::vector<float> hq = rvec((size_t)nh * hd), hw = rvec((size_t)nh);
    {
        float *x = (float *)C->alloc(C, hq.size() * 4);
        C->write(C, x, hq.data(), hq.size() * 4);
        C->hadamard_fp4_sim(C, x, hd, nh, hd);
        C->read(C, hq.data(), x, hq.size() * 4);
        C->release(C, x);
    }
    const float sc = (float)(1.0 / sqrt((double)hd) / sqrt((double)nh));
    float *q = gput(G, hq), *w = gput(G, hw), *kf = gput(G, dec);
    uint8_t *kc = gput(G, bytes, (size_t)k.misalign);
    float *s1 = gput(G, std::vector<float>((size_t)n, 7.f)), *s2 = gput(G, std::vector<float>((size_t)n, 9.f));
    const bool was = ds4cu::kv_compact(G);
    ds4_cuda_set_kv_compact(G, 1);
    G->indexer_scores(G, q, w, sc, nh, hd, reinterpret_cast<const float *>(kc + k.misalign), n, s1);
    ds4_cuda_set_kv_compact(G, 0);
    G->indexer_scores(G, q, w, sc, nh, hd, kf, n, s2);
    ds4_cuda_set_kv_compact(G, was);
    const std::vector<float> g1 = gget(G, s1, (size_t)n), g2 = gget(G, s2, (size_t)n);
    Pair cq = put(C, G, hq), cw = put(C, G, hw), ck = put(C, G, dec), cs = put(C, G, std::vector<float>((size_t)n, 0.f));
    C->indexer_scores(C, cq.c, cw.c, sc, nh, hd, ck.c, n, cs.c);
    std::vector<float> cref((size_t)n);
    C->read(C, cref.data(), cs.c, cref.size() * 4);
    snprintf(name, sizeof name, "prod kv indexer_scores %s %dx%lld, %d keys", k.what, nh, (long long)hd, n);
    verdict(same_bits(g1, g2), name, "compact == f32 bits");
    near(name, cref, g1, 1e-4);   // vs the CPU on the decoded keys
    for (Pair *p : {&cq, &cw, &ck, &cs}) drop(*p);
    for (void *p : {(void *)q, (void *)w, (void *)kf, (void *)kc, (void *)s1, (void *)s2}) G->release(G, p);
}

// Mean device-synchronised wall time of reps back-to-back calls of f, in µs.
template <typename F>
double time_us(F f, int reps) {
    f();
    cudaDeviceSynchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; i++) f();
    cudaDeviceSynchronize();
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / reps;
}

// Timing (no verdict): the Flash decode shapes, compact vs f32 rows, same inputs.
void perf(ds4_backend *C, ds4_backend *G) {
    const bool was = ds4cu::kv_compact(G);
    {   // attention_ex: 64 x 512, n_rot 64, 128 window rows + 512 selected of ncomp rows
        const int nh = 64, hd = 512, n_rot = 64, na = 128, nb = 512;
        for (int ncomp : {1024, 8192}) {   // 4k and 32k context at R 4
            const size_t rb = ds4_kv_attn_row_bytes(hd, n_rot);
            std::vector<float> rows = prod_rows(C, ncomp, hd, hd - n_rot, false, 1.f), dec;
            std::vector<uint8_t> bytes;
            encode_rows(rows, ncomp, hd, n_rot, rb, bytes, dec);
            std::vector<int32_t> ia(na);
            for (int j = 0; j < na; j++) ia[j] = j;
            std::vector<float> inv(n_rot / 2);
            for (int j = 0; j < n_rot / 2; j++) inv[j] = powf(10000.f, -2.f * j / (float)n_rot);
            float *q = gput(G, rvec((size_t)nh * hd, 0.2f)), *ra = gput(G, rvec((size_t)na * hd)), *sk = gput(G, rvec(nh));
            float *rbf = gput(G, dec), *o = gput(G, std::vector<float>((size_t)nh * hd, 0.f));
            uint8_t *rbc = gput(G, bytes);
            float *s = gput(G, rvec((size_t)ncomp));
            int32_t *dib = (int32_t *)G->alloc(G, (size_t)nb * sizeof(int32_t));
            G->topk_dev(G, s, ncomp, nb, dib);
            double us[2];
            for (int cmp = 0; cmp < 2; cmp++) {
                ds4_cuda_set_kv_compact(G, cmp);
                const float *rb_ = cmp ? reinterpret_cast<const float *>(rbc) : rbf;
                us[cmp] = time_us([&] {
                    G->attention_ex(G, q, nh, hd, ra, ia.data(), na, rb_, dib, nb, true, sk, 1.f / sqrtf((float)hd), n_rot,
                                    4095, inv.data(), o);
                }, 200);
            }
            printf("time prod attention_ex 64x512 128+512 rows of %d (ib dev): compact %.2f us, f32 %.2f us "
                   "(rows_b %zu vs %d B/row)\n", ncomp, us[1], us[0], rb, hd * 4);
            for (void *p : {(void *)q, (void *)ra, (void *)sk, (void *)rbf, (void *)o, (void *)rbc, (void *)s, (void *)dib})
                G->release(G, p);
        }
    }
    {   // indexer_scores: 64 x 128 over 4k and 32k keys
        const int nh = 64, hd = 128;
        for (int n : {4096, 32768}) {
            const size_t rb = ds4_kv_index_row_bytes(hd);
            std::vector<float> keys = prod_rows(C, n, hd, hd, true, 3e3f), dec;
            std::vector<uint8_t> bytes;
            encode_rows(keys, n, hd, -1, rb, bytes, dec);
            float *q = gput(G, rvec((size_t)nh * hd)), *w = gput(G, rvec(nh)), *kf = gput(G, dec);
            uint8_t *kc = gput(G, bytes);
            float *sc = gput(G, std::vector<float>((size_t)n, 0.f));
            double us[2];
            for (int cmp = 0; cmp < 2; cmp++) {
                ds4_cuda_set_kv_compact(G, cmp);
                const float *k_ = cmp ? reinterpret_cast<const float *>(kc) : kf;
                us[cmp] = time_us([&] { G->indexer_scores(G, q, w, 0.01f, nh, hd, k_, n, sc); }, 200);
            }
            printf("time prod indexer_scores 64x128 %d keys: compact %.2f us, f32 %.2f us (keys %zu vs %d B/row)\n", n,
                   us[1], us[0], rb, hd * 4);
            for (void *p : {(void *)q, (void *)w, (void *)kf, (void *)kc, (void *)sc}) G->release(G, p);
        }
    }
    ds4_cuda_set_kv_compact(G, was);
}

}  // namespace

void ops_kv_decode(ds4_backend *C, ds4_backend *G, const char *mode) {
    if (strcmp(G->name, "cuda") != 0 || G->numerics != DS4_NUM_PROD || !G->attention_ex) {
        printf("skip %s compact-row decode readers (production numerics on the CUDA backend only)\n", mode);
        return;
    }
    {   // the hook must take effect, else every comparison below would be f32 vs f32
        const bool was = ds4cu::kv_compact(G);
        ds4_cuda_set_kv_compact(G, 1);
        const bool on = ds4cu::kv_compact(G);
        ds4_cuda_set_kv_compact(G, was);
        if (!on) {
            printf("skip %s compact-row decode readers (the backend cannot turn compact rows on)\n", mode);
            return;
        }
    }
    const AttCase att[] = {
        // Flash CSA decode: 128 window + 512 selected rows (host ib: staged indices; device
        // ib as topk_dev leaves it; peaked), then nb > 448 and HCA shapes
        {"flash", 64, 512, 64, 128, 200, 512, 1024, 0, 0.2f, 123457, 0},
        {"flash", 64, 512, 64, 128, 200, 512, 1024, 2, 0.2f, 123457, 0},
        {"flash peaked", 64, 512, 64, 128, 200, 512, 4096, 2, 6.f, 4095, 0},
        {"flash 8192 rows", 64, 512, 64, 128, 128, 8192, 8192, 1, 0.2f, 1048575, 0},
        {"flash 600 host ib", 64, 512, 64, 100, 128, 600, 700, 0, 1.f, 2047, 0},
        {"flash 32 inline", 64, 512, 64, 128, 128, 32, 32, 0, 0.2f, 4095, 0},
        {"flash nb 0", 64, 512, 64, 128, 128, 0, 1, 0, 1.f, 100, 0},
        {"flash na 0", 64, 512, 64, 0, 1, 300, 400, 1, 1.f, 1200, 0},
        {"flash rows_b +4 B", 64, 512, 64, 128, 200, 512, 1024, 1, 0.2f, 5000, 4},
        {"flash large rows", 64, 512, 64, 128, 200, 512, 1024, 2, 1e-4f, 5000, 0, 3e3f},
        // small / odd shapes: vector decoder (hd, n_rot multiples of 16) and element-wise
        {"tiny", 4, 64, 16, 7, 11, 13, 29, 0, 1.f, 77, 0},
        {"tiny", 4, 64, 16, 7, 11, 13, 29, 1, 1.f, 77, 0},
        {"tiny nb 0", 4, 64, 16, 3, 5, 0, 1, 1, 1.f, 5, 0},
        {"tiny deep tree", 4, 64, 16, 9, 11, 4999, 5003, 0, 4.f, 99, 0},
        {"rot 10", 4, 64, 10, 5, 8, 21, 40, 0, 1.f, 33, 0},
        {"all rope", 4, 64, 64, 5, 8, 21, 40, 1, 1.f, 33, 0},
        {"no rope", 4, 64, 0, 5, 8, 21, 40, 0, 1.f, 33, 0},
        {"odd hd", 3, 67, 13, 5, 8, 21, 40, 0, 1.f, 1000, 0},
        {"odd hd +4 B", 3, 67, 13, 5, 8, 470, 500, 1, 1.f, 1000, 4},
        {"", 12, 128, 32, 40, 64, 300, 512, 1, 2.f, 31, 0},
        {"", 16, 256, 64, 50, 64, 200, 400, 0, 2.f, 7, 0},
        {"hd 500", 5, 500, 62, 17, 20, 33, 40, 0, 2.f, 3, 0},
        {"hd 500 rot 60", 5, 500, 60, 17, 20, 33, 40, 1, 2.f, 3, 0},
        {"hd 68 rot 20", 6, 68, 20, 9, 12, 70, 90, 1, 2.f, 300, 0},
        {"hd 576 (generic fallback)", 4, 576, 64, 5, 8, 21, 40, 1, 1.f, 9, 0},
    };
    for (const AttCase &k : att) att_case(C, G, k);
    const IdxCase idx[] = {
        {"flash", 64, 128, 1024, 0},  {"flash partial tile", 64, 128, 4001, 0}, {"flash keys +4 B", 64, 128, 300, 4},
        {"odd", 70, 37, 45, 0},       {"hd 48", 70, 48, 77, 0},                 {"hd 64", 3, 64, 33, 0},
    };
    for (const IdxCase &k : idx) idx_case(C, G, k);
    perf(C, G);
}
