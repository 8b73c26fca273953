// test_mmq.cu — the tensor-core quantized GEMM (src/backend/cuda/mmq.cu) against the CPU
// reference (src/model/quant.c: ds4_quantize_row, ds4_quantize_act_row, ds4_dot_q), the
// F16 x f32 GEMM (mmf16.cu) against an f64 dot (test_f16), and their benchmark
// (`cuda-test-mmq --bench`: time and TOPS / TFLOP/s at the Flash shapes).
//
// Owns: `build/cuda-test-mmq` (needs a GPU; this box only compiles it). Must not take an
// expected value from the GPU: every expected value is ds4_dot_q on the same blocks; the
// bit-identity checks compare GPU launches that must agree (a row alone vs in a batch).
//
// Data: weight matrices are assembled from a pool of blocks, half made by the CPU
// quantizers from Gaussian rows, half random bits with sane f16 scales (so every 4/6-bit
// scale and min, grid index and sign pattern occurs); activations are Gaussian rows (one
// all-zero 256-block and a ±max tie where k allows) quantized by ds4_quantize_act_row and
// uploaded as GGML blocks. Outputs are poisoned (NaN bits) before each launch; padding
// columns (ys > n) and rows past off[n_prob] must keep the poison.
//
// Tolerance, per output: |gpu − ref| <= (nb + 3)·2^-24·S + 1e-30, S = Σ_b |t_b| over the
// row's block terms t_b = ds4_dot_q(one block). Why: the kernel forms every block term
// from the same exact integer sums with the CPU's float operations (Q8_0: the product
// fused into the add, one rounding fewer: <= u·|t_b|), then sums the nb terms in k order
// in f32 (error <= (nb − 1)·u·S) where the CPU sums in f64 and rounds once (<= u·|ref|).
// The bound is rigorous, not fitted; a wrong or missing block term is ~S/nb, far above it.
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_mmq.h"

extern "C" {
#include "model/ggml_type.h"
#include "model/quant.h"
}

static int g_pass, g_fail;

// Kernel-variant switch of mmq.cu (a test hook, not part of cuda_mmq.h): 0 = per weight type
// (the default), 1 = the original kernel, 2 = v2, 3 = v3 (IQ2_XXS and Q2_K; the other types
// run v2); DS4_MMQ_V picks the process default; returns the variant in effect. Each must pass
// every case, and they must agree bit for bit (test_variants).
extern "C" int ds4_cuda_mmq_set_variant(int v);

static void report(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(bool ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    (ok ? g_pass : g_fail)++;
}

// ---- random data --------------------------------------------------------------------------
static uint64_t g_rng = 0x243F6A8885A308D3ull;
static uint64_t rng_u64() {
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rng_uniform() { return (double)(rng_u64() >> 11) * (1.0 / 9007199254740992.0); }
static double rng_normal() {
    const double u = rng_uniform() + 1e-300, v = rng_uniform();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}
static int rng_int(int n) { return (int)(rng_u64() % (uint64_t)n); }

static const ds4_type_info *tinfo(uint32_t type) { return ds4_type_get(type); }
static uint64_t row_bytes(uint32_t type, int64_t k) {
    uint64_t rb = 0;
    if (!ds4_type_row_bytes(type, (uint64_t)k, &rb)) {
        fprintf(stderr, "bad row bytes\n");
        exit(1);
    }
    return rb;
}

// ---- weights: a pool of valid blocks, matrices assembled from it -------------------------
struct Pool {
    uint32_t type;
    int bb;                      // bytes per block
    std::vector<uint8_t> blk;    // n blocks
    int n;
};

static void put_f16(uint8_t *p, float v) {
    const uint16_t h = ds4_f32_to_f16(v);
    memcpy(p, &h, 2);
}

static Pool make_pool(uint32_t type, int nq, int nr) {
    Pool P;
    P.type = type;
    P.bb = (int)tinfo(type)->block_bytes;
    const int be = (int)tinfo(type)->block_elems;
    P.n = nq + nr;
    P.blk.resize((size_t)P.n * P.bb);
    // quantizer blocks: Gaussian rows with a random spread per block
    std::vector<float> x((size_t)nq * be);
    for (int b = 0; b < nq; b++) {
        const double sc = 0.02 * (0.25 + 2.0 * rng_uniform());
        for (int i = 0; i < be; i++) x[(size_t)b * be + i] = (float)(rng_normal() * sc);
    }
    if (ds4_quantize_row(type, x.data(), P.blk.data(), (int64_t)nq * be, NULL)) {
        fprintf(stderr, "quantize failed\n");
        exit(1);
    }
    // random-bit blocks with finite, moderate scales
    for (int b = nq; b < P.n; b++) {
        uint8_t *p = P.blk.data() + (size_t)b * P.bb;
        for (int i = 0; i < P.bb; i++) p[i] = (uint8_t)rng_u64();
        const float d = (float)(0.002 + 0.018 * rng_uniform()), dm = (float)(0.001 + 0.009 * rng_uniform());
        const bool neg = rng_u64() & 1;
        switch (type) {
        case DS4_TYPE_Q8_0: put_f16(p, neg ? -d : d); break;
        case DS4_TYPE_Q2_K: put_f16(p + 80, d); put_f16(p + 82, dm); break;
        case DS4_TYPE_Q4_K: put_f16(p, d); put_f16(p + 2, dm); break;
        case DS4_TYPE_IQ2_XXS: put_f16(p, neg ? -d : d); break;
        default: break;
        }
    }
    return P;
}

// rows x (k / block) blocks picked from the pool, row stride rb (bytes).
static void fill_matrix(const Pool &P, uint8_t *dst, int64_t rows, int64_t nb_row, uint64_t rb) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < nb_row; b++)
            memcpy(dst + (uint64_t)r * rb + (uint64_t)b * P.bb, P.blk.data() + (size_t)rng_int(P.n) * P.bb, (size_t)P.bb);
}

static Pool *pool_of(uint32_t type) {
    static Pool *pools[4];
    const int i = type == DS4_TYPE_Q8_0 ? 0 : type == DS4_TYPE_Q2_K ? 1 : type == DS4_TYPE_Q4_K ? 2 : 3;
    if (!pools[i]) pools[i] = new Pool(make_pool(type, 2048, 2048));
    return pools[i];
}

// Activation rows [nx][k] quantized to `at`, row stride xs >= row bytes (padding random).
static std::vector<uint8_t> make_acts(uint32_t at, int64_t nx, int64_t k, uint64_t xs) {
    std::vector<uint8_t> out((size_t)(nx * xs));
    for (auto &c : out) c = (uint8_t)rng_u64();
    std::vector<float> x((size_t)k);
    for (int64_t v = 0; v < nx; v++) {
        const double sc = 0.25 + 2.0 * rng_uniform();
        for (int64_t i = 0; i < k; i++) x[(size_t)i] = (float)(rng_normal() * sc);
        if (k >= 768 && v % 3 == 0) {
            for (int i = 256; i < 512; i++) x[(size_t)i] = 0.0f;  // an all-zero Q8_K block
            x[515] = 7.5f;                                         // a ±max tie
            x[700] = -7.5f;
        }
        if (ds4_quantize_act_row(at, x.data(), out.data() + (size_t)(v * xs), k)) {
            fprintf(stderr, "quantize_act failed\n");
            exit(1);
        }
    }
    return out;
}

// ---- reference -------------------------------------------------------------------------------
// ds4_dot_q of one row and the tolerance scale S = Σ_b |term_b|.
static void ref_dot(uint32_t type, const uint8_t *w, const uint8_t *xq, int64_t k, double *ref, double *tol) {
    float out = NAN;
    if (ds4_dot_q(type, w, xq, k, &out)) {
        fprintf(stderr, "ds4_dot_q failed\n");
        exit(1);
    }
    const int be = (int)tinfo(type)->block_elems, bb = (int)tinfo(type)->block_bytes;
    const int ab = (int)tinfo(ds4_vec_dot_type(type))->block_bytes;
    const int64_t nb = k / be;
    double S = 0;
    for (int64_t b = 0; b < nb; b++) {
        float t = 0;
        ds4_dot_q(type, w + b * bb, xq + b * ab, be, &t);
        S += fabs((double)t);
    }
    *ref = out;
    *tol = (double)(nb + 3) * ldexp(1.0, -24) * S + 1e-30;
}

// ---- device helpers ---------------------------------------------------------------------------
struct DBuf {
    void *p = nullptr;
    size_t n = 0;
    explicit DBuf(size_t bytes) : n(bytes) { CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1)); }
    ~DBuf() { cudaFree(p); }
    DBuf(const DBuf &) = delete;
    DBuf &operator=(const DBuf &) = delete;
    uint8_t *b() const { return (uint8_t *)p; }
};
static void up(DBuf &d, size_t at, const void *src, size_t n) { CUDA_CHECK(cudaMemcpy(d.b() + at, src, n, cudaMemcpyHostToDevice)); }

static bool is_poison(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return u == 0xFFFFFFFFu;
}

// ---- one launch, checked against the CPU -------------------------------------------------------
// A problem set: dense (groups == NULL) or grouped. The host keeps everything needed to
// compute the expected value of (packed row i, output r).
struct Case {
    const char *name;
    uint32_t type;
    int64_t n, k;
    int n_mats;
    int nx;                       // activation rows available
    uint64_t xs;                  // activation row stride (bytes)
    int64_t ys;                   // output row stride (floats)
    int w_shift = 0, x_shift = 0; // byte offsets of the data in their buffers (alignment tests)
    // grouped form (n_prob == 0: dense with n_rows = nx)
    std::vector<int> counts, mats, xidx;
    bool use_mats = false, use_xidx = false;
    int slack = 0;                // max_rows = Σ counts + slack
    int sample = 0;               // > 0: check this many random (row, output) pairs + edges
};

struct Result {
    std::vector<float> y;  // [rows][ys]
    int rows = 0;
    bool launched = false;
};

static Result run_case(const Case &C, int force_bn = 0, bool check = true) {
    Result R;
    const uint32_t at = ds4_vec_dot_type(C.type);
    const uint64_t rb = row_bytes(C.type, C.k), arb = row_bytes(at, C.k);
    const int64_t nb = C.k / tinfo(C.type)->block_elems;
    const uint64_t ms = (uint64_t)C.n * rb;
    std::vector<uint8_t> W((size_t)(ms * C.n_mats));
    fill_matrix(*pool_of(C.type), W.data(), C.n * C.n_mats, nb, rb);
    std::vector<uint8_t> X = make_acts(at, C.nx, C.k, C.xs);

    const bool grouped = !C.counts.empty();
    const int n_prob = (int)C.counts.size();
    std::vector<int> off(n_prob + 1, 0);
    for (int p = 0; p < n_prob; p++) off[p + 1] = off[p] + C.counts[p];
    const int rows = grouped ? off[n_prob] + C.slack : C.nx;
    R.rows = rows;

    DBuf dW(W.size() + 64), dX(X.size() + 64), dY((size_t)rows * C.ys * 4 + 4), dI((size_t)(3 * n_prob + 3 + rows) * 4 + 4);
    up(dW, (size_t)C.w_shift, W.data(), W.size());
    up(dX, (size_t)C.x_shift, X.data(), X.size());
    CUDA_CHECK(cudaMemset(dY.p, 0xFF, dY.n));
    int32_t *d_off = (int32_t *)dI.p, *d_mat = d_off + n_prob + 1, *d_xidx = d_mat + n_prob + 1;
    if (grouped) {
        up(dI, 0, off.data(), off.size() * 4);
        if (C.use_mats) up(dI, (size_t)(n_prob + 1) * 4, C.mats.data(), (size_t)n_prob * 4);
        if (C.use_xidx) up(dI, (size_t)(2 * n_prob + 2) * 4, C.xidx.data(), C.xidx.size() * 4);
    }
    ds4_cuda_qmat qm;
    qm.type = C.type;
    qm.data = dW.b() + C.w_shift;
    qm.n = C.n;
    qm.k = C.k;
    qm.mat_stride = ms;
    qm.n_mats = C.n_mats;
    ds4_cuda_mmq_groups g = {d_off, C.use_mats ? d_mat : nullptr, C.use_xidx ? d_xidx : nullptr, n_prob, rows};
    char bn[8];
    snprintf(bn, sizeof bn, "%d", force_bn);
    if (force_bn) setenv("DS4_MMQ_BN", bn, 1);
    char err[256] = "";
    const int rc = ds4_cuda_mmq(&qm, dX.b() + C.x_shift, C.xs, grouped ? &g : nullptr, grouped ? 0 : C.nx, (float *)dY.p, C.ys,
                                nullptr, err, sizeof err);
    if (force_bn) unsetenv("DS4_MMQ_BN");
    if (rc) {
        report(false, "%s: launch failed (%d): %s", C.name, rc, err);
        return R;
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    R.y.resize((size_t)rows * C.ys);
    CUDA_CHECK(cudaMemcpy(R.y.data(), dY.p, R.y.size() * 4, cudaMemcpyDeviceToHost));
    R.launched = true;
    if (!check) return R;

    // Which (packed row, output) pairs to check: all when small, else edges + random.
    std::vector<int> prob_of(rows, -1);
    for (int p = 0; p < n_prob; p++)
        for (int i = off[p]; i < off[p + 1]; i++) prob_of[i] = p;
    std::vector<std::pair<int, int64_t>> pairs;
    const int64_t real_rows = grouped ? off[n_prob] : C.nx;
    if (C.sample == 0) {
        for (int i = 0; i < real_rows; i++)
            for (int64_t r = 0; r < C.n; r++) pairs.push_back({i, r});
    } else {
        const int edge_rows[3] = {0, (int)real_rows - 1, rng_int((int)real_rows)};
        for (int e : edge_rows)
            for (int64_t r = 0; r < C.n; r++) pairs.push_back({e, r});
        const int64_t edge_cols[3] = {0, C.n - 1, (int64_t)rng_int((int)C.n)};
        for (int64_t c : edge_cols)
            for (int i = 0; i < real_rows; i++) pairs.push_back({i, c});
        for (int s = 0; s < C.sample; s++) pairs.push_back({rng_int((int)real_rows), (int64_t)rng_int((int)C.n)});
    }
    double worst = 0;
    int64_t bad = 0, nan_rows_ok = 0;
    char first[200] = "";
    for (const auto &pr : pairs) {
        const int i = pr.first;
        const int64_t r = pr.second;
        const float gv = R.y[(size_t)i * C.ys + r];
        int m = 0, xr = i;
        if (grouped) {
            const int p = prob_of[i];
            m = C.use_mats ? C.mats[p] : p;
            xr = C.use_xidx ? C.xidx[i] : i;
        }
        if (m < 0 || m >= C.n_mats) {  // an invalid matrix id: NaN (not the poison pattern)
            if (isnan(gv) && !is_poison(gv)) {
                nan_rows_ok++;
            } else if (bad++ == 0) {
                snprintf(first, sizeof first, "row %d out %lld: %g, want NaN (matrix %d)", i, (long long)r, gv, m);
            }
            continue;
        }
        double ref, tol;
        ref_dot(C.type, W.data() + (uint64_t)m * ms + (uint64_t)r * rb, X.data() + (size_t)xr * C.xs, C.k, &ref, &tol);
        const double e = fabs((double)gv - ref);
        if (!(e <= tol)) {
            if (bad++ == 0)
                snprintf(first, sizeof first, "row %d out %lld: gpu %.9g ref %.9g (|d| %.3g > tol %.3g)", i, (long long)r, gv,
                         ref, e, tol);
        } else if (e / tol > worst) {
            worst = e / tol;
        }
    }
    // untouched: padding columns, and rows past off[n_prob]
    int64_t touched = 0;
    for (int i = 0; i < rows; i++)
        for (int64_t r = 0; r < C.ys; r++)
            if ((r >= C.n || i >= real_rows) && !is_poison(R.y[(size_t)i * C.ys + r])) touched++;
    const bool ok = bad == 0 && touched == 0;
    report(ok, "%-44s n=%-6lld k=%-5lld rows=%-6d checked=%zu worst=%.3f of tol%s%s%s", C.name, (long long)C.n, (long long)C.k,
           rows, pairs.size(), worst, nan_rows_ok ? " (NaN rows ok)" : "", touched ? " PADDING WRITTEN" : "", first);
    return R;
}

static Case dense(const char *name, uint32_t type, int64_t n, int64_t k, int T, int sample = 0) {
    Case C;
    C.name = name;
    C.type = type;
    C.n = n;
    C.k = k;
    C.n_mats = 1;
    C.nx = T;
    C.xs = row_bytes(ds4_vec_dot_type(type), k);
    C.ys = n;
    C.sample = sample;
    return C;
}

// Skewed expert counts summing to `rows` over n problems (lognormal weights; some empty).
static std::vector<int> skewed_counts(int n, int rows, int n_empty) {
    std::vector<double> w(n);
    double sum = 0;
    for (int e = 0; e < n; e++) sum += (w[e] = e < n_empty ? 0.0 : exp(1.2 * rng_normal()));
    std::vector<int> c(n, 0);
    int left = rows;
    for (int e = 0; e < n; e++) {
        c[e] = (int)floor(rows * w[e] / sum);
        left -= c[e];
    }
    while (left-- > 0) c[n_empty + rng_int(n - n_empty)]++;
    for (int e = n - 1; e > 0; e--) std::swap(c[e], c[rng_int(e + 1)]);  // empties anywhere
    return c;
}

static Case grouped(const char *name, uint32_t type, int64_t n, int64_t k, int n_mats, std::vector<int> counts, bool mats,
                    bool xidx, int nx, int sample) {
    Case C;
    C.name = name;
    C.type = type;
    C.n = n;
    C.k = k;
    C.n_mats = n_mats;
    C.counts = counts;
    int total = 0;
    for (int c : counts) total += c;
    C.use_mats = mats;
    if (mats)
        for (size_t p = 0; p < counts.size(); p++) C.mats.push_back(rng_int(n_mats));
    C.use_xidx = xidx;
    C.nx = xidx ? nx : total + 40;
    if (xidx)
        for (int i = 0; i < total; i++) C.xidx.push_back(rng_int(nx));
    C.xs = row_bytes(ds4_vec_dot_type(type), k);
    C.ys = n;
    C.sample = sample;
    return C;
}

static const uint32_t kTypes[4] = {DS4_TYPE_Q8_0, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};

static void test_api() {
    bool ok = ds4_cuda_mmq_supported(DS4_TYPE_Q8_0, 32) && !ds4_cuda_mmq_supported(DS4_TYPE_Q8_0, 48) &&
              ds4_cuda_mmq_supported(DS4_TYPE_Q2_K, 256) && !ds4_cuda_mmq_supported(DS4_TYPE_Q2_K, 128) &&
              ds4_cuda_mmq_supported(DS4_TYPE_Q4_K, 4096) && ds4_cuda_mmq_supported(DS4_TYPE_IQ2_XXS, 4096) &&
              !ds4_cuda_mmq_supported(DS4_TYPE_F16, 4096) && !ds4_cuda_mmq_supported(DS4_TYPE_Q8_K, 4096) &&
              !ds4_cuda_mmq_supported(DS4_TYPE_Q8_0, 0);
    report(ok, "supported(): the four types, k a positive multiple of the block");

    DBuf w(4096), x(4096), y(4096);
    ds4_cuda_qmat q = {DS4_TYPE_IQ2_XXS, w.p, 4, 256, 0, 1};
    char err[256];
    const int rc0 = ds4_cuda_mmq(nullptr, x.p, 292, nullptr, 1, (float *)y.p, 4, nullptr, err, sizeof err);
    const int rc1 = ds4_cuda_mmq(&q, x.b() + 2, 292, nullptr, 1, (float *)y.p, 4, nullptr, err, sizeof err);  // Q8_K: 4-aligned
    const int rc2 = ds4_cuda_mmq(&q, x.p, 100, nullptr, 1, (float *)y.p, 4, nullptr, err, sizeof err);         // stride < row
    const int rc3 = ds4_cuda_mmq(&q, x.p, 292, nullptr, 1, (float *)y.p, 3, nullptr, err, sizeof err);         // ys < n
    ds4_cuda_mmq_groups g = {nullptr, nullptr, nullptr, 1, 4};
    const int rc4 = ds4_cuda_mmq(&q, x.p, 292, &g, 0, (float *)y.p, 4, nullptr, err, sizeof err);             // off NULL
    ds4_cuda_qmat f = q;
    f.type = DS4_TYPE_F32;
    const int rc5 = ds4_cuda_mmq(&f, x.p, 292, nullptr, 1, (float *)y.p, 4, nullptr, err, sizeof err);
    CUDA_CHECK(cudaMemset(y.p, 0xFF, 16));
    const int rc6 = ds4_cuda_mmq(&q, x.p, 292, nullptr, 0, (float *)y.p, 4, nullptr, err, sizeof err);  // nothing to do
    CUDA_CHECK(cudaDeviceSynchronize());
    float yv[4];
    CUDA_CHECK(cudaMemcpy(yv, y.p, 16, cudaMemcpyDeviceToHost));
    ok = rc0 == DS4_ERR_ARG && rc1 == DS4_ERR_ARG && rc2 == DS4_ERR_ARG && rc3 == DS4_ERR_ARG && rc4 == DS4_ERR_ARG &&
         rc5 == DS4_ERR_UNSUPPORTED && rc6 == 0 && is_poison(yv[0]);
    report(ok, "bad arguments refused before any launch (%d %d %d %d %d %d %d)", rc0, rc1, rc2, rc3, rc4, rc5, rc6);
}

static void test_flash_dense() {
    run_case(dense("Q8_0 q_a 4096->1024, 300 rows", DS4_TYPE_Q8_0, 1024, 4096, 300, 20000));
    run_case(dense("Q8_0 q_b 1024->32768, 2048 rows", DS4_TYPE_Q8_0, 32768, 1024, 2048, 30000));
    run_case(dense("Q8_0 o_b 8192->4096, 300 rows", DS4_TYPE_Q8_0, 4096, 8192, 300, 20000));
    run_case(dense("Q8_0 shared down 2048->4096, 2048 rows", DS4_TYPE_Q8_0, 4096, 2048, 2048, 20000));
    run_case(dense("IQ2_XXS expert gate 4096->2048, 300 rows", DS4_TYPE_IQ2_XXS, 2048, 4096, 300, 20000));
    run_case(dense("Q2_K expert down 2048->4096, 300 rows", DS4_TYPE_Q2_K, 4096, 2048, 300, 20000));
    run_case(dense("Q4_K expert gate 4096->2048, 300 rows", DS4_TYPE_Q4_K, 2048, 4096, 300, 20000));
    run_case(dense("Q4_K expert down 2048->4096, 65 rows", DS4_TYPE_Q4_K, 4096, 2048, 65, 20000));
}

static void test_odd_shapes() {
    char name[96];
    for (uint32_t t : kTypes) {
        const int64_t blk = tinfo(t)->block_elems;
        const char *tn = ds4_type_name(t);
        struct {
            int64_t n, k;
            int T;
        } sh[] = {{1, blk, 1}, {7, blk, 7}, {200, 2 * 256, 65}, {129, 3 * 256, 33}, {300, 256, 1}, {131, 1024, 130}};
        for (const auto &s : sh) {
            snprintf(name, sizeof name, "%s odd n=%lld k=%lld T=%d", tn, (long long)s.n, (long long)s.k, s.T);
            run_case(dense(name, t, s.n, s.k, s.T));
        }
        // ys > n, padded activation stride, weights at +2 bytes, activations misaligned
        Case C = dense("", t, 200, 512, 65);
        C.ys = 211;
        C.xs += 36;
        C.w_shift = 2;
        C.x_shift = t == DS4_TYPE_Q8_0 ? 2 : 4;
        snprintf(name, sizeof name, "%s ys>n, padded/misaligned x, w at +2", tn);
        C.name = name;
        run_case(C);
    }
    // Q8_0 row lengths that are not a multiple of 256 (a partial last k-step)
    run_case(dense("Q8_0 k=96 (3 blocks) T=65", DS4_TYPE_Q8_0, 130, 96, 65));
    run_case(dense("Q8_0 k=800 (25 blocks) T=7", DS4_TYPE_Q8_0, 300, 800, 7));
    run_case(dense("Q8_0 k=4128 (129 blocks) T=17", DS4_TYPE_Q8_0, 257, 4128, 17));
}

static void test_grouped() {
    char name[96];
    const std::vector<int> counts = {0, 1, 200, 7, 0, 65, 48, 3, 130, 0, 17, 64};
    for (uint32_t t : kTypes) {
        const char *tn = ds4_type_name(t);
        const int64_t k = t == DS4_TYPE_Q8_0 ? 544 : 768;
        Case C = grouped("", t, 200, k, 8, counts, true, true, 97, 0);
        C.mats[3] = 8;   // out of range: NaN rows
        C.mats[8] = -1;  // out of range: NaN rows
        C.mats[6] = C.mats[5];
        C.slack = 37;
        snprintf(name, sizeof name, "%s grouped skewed, ids, gather, NaN ids", tn);
        C.name = name;
        // the same data with every tile size: checked, and bit-identical across sizes
        const uint64_t seed = g_rng;
        const Result a = run_case(C, 64);
        bool same = a.launched;
        for (int bn : {128, 32, 16}) {
            g_rng = seed;  // same weights and activations
            const Result b = run_case(C, bn, false);
            same = same && b.launched && b.y.size() == a.y.size() && memcmp(b.y.data(), a.y.data(), a.y.size() * 4) == 0;
        }
        report(same, "%s grouped: BN 64 / 128 / 32 / 16 give identical bits", tn);
        snprintf(name, sizeof name, "%s grouped, no ids / no gather, n_prob > n_mats", tn);
        Case D = grouped(name, t, 70, 256, 5, {3, 0, 40, 17, 1, 9, 0}, false, false, 0, 0);
        run_case(D);
    }
}

// The same (matrix, activation row) gives the same bits alone, in a big batch, in a
// grouped launch and with every tile size.
static void test_bit_identity() {
    for (uint32_t t : kTypes) {
        const uint32_t at = ds4_vec_dot_type(t);
        const int64_t n = 300, k = t == DS4_TYPE_Q8_0 ? 1056 : 1024;
        const int T = 300;
        const uint64_t rb = row_bytes(t, k), xs = row_bytes(at, k);
        std::vector<uint8_t> W((size_t)(n * rb));
        fill_matrix(*pool_of(t), W.data(), n, k / tinfo(t)->block_elems, rb);
        std::vector<uint8_t> X = make_acts(at, T, k, xs);
        DBuf dW(W.size()), dX(X.size()), dY((size_t)T * n * 4), dI(4 * (T + 8));
        up(dW, 0, W.data(), W.size());
        up(dX, 0, X.data(), X.size());
        ds4_cuda_qmat q = {t, dW.p, n, k, 0, 1};
        char err[256];
        std::vector<float> big((size_t)T * n), one(n), grp((size_t)T * n);
        bool ok = true;
        int variants = 0;
        for (int bn : {64, 128, 32, 16}) {
            char b[8];
            snprintf(b, sizeof b, "%d", bn);
            setenv("DS4_MMQ_BN", b, 1);
            CUDA_CHECK(cudaMemset(dY.p, 0xFF, dY.n));
            ok &= ds4_cuda_mmq(&q, dX.p, xs, nullptr, T, (float *)dY.p, n, nullptr, err, sizeof err) == 0;
            CUDA_CHECK(cudaDeviceSynchronize());
            std::vector<float> v((size_t)T * n);
            CUDA_CHECK(cudaMemcpy(v.data(), dY.p, v.size() * 4, cudaMemcpyDeviceToHost));
            if (bn == 64) big = v;
            else ok &= memcmp(v.data(), big.data(), v.size() * 4) == 0;
            variants++;
        }
        unsetenv("DS4_MMQ_BN");
        // alone (n_rows = 1, xq at that row)
        for (int tok : {0, 137, 299}) {
            CUDA_CHECK(cudaMemset(dY.p, 0xFF, dY.n));
            ok &= ds4_cuda_mmq(&q, dX.b() + (size_t)tok * xs, xs, nullptr, 1, (float *)dY.p, n, nullptr, err, sizeof err) == 0;
            CUDA_CHECK(cudaDeviceSynchronize());
            CUDA_CHECK(cudaMemcpy(one.data(), dY.p, (size_t)n * 4, cudaMemcpyDeviceToHost));
            ok &= memcmp(one.data(), big.data() + (size_t)tok * n, (size_t)n * 4) == 0;
        }
        // grouped: problems {5, 0, T-5} of matrix 0 gathering the rows in reverse order
        std::vector<int32_t> idx(8 + T);
        idx[0] = 0, idx[1] = 5, idx[2] = 5, idx[3] = T;  // off
        idx[4] = 0, idx[5] = 0, idx[6] = 0;              // mat
        for (int i = 0; i < T; i++) idx[7 + i] = T - 1 - i;
        up(dI, 0, idx.data(), idx.size() * 4);
        ds4_cuda_mmq_groups g = {(int32_t *)dI.p, (int32_t *)dI.p + 4, (int32_t *)dI.p + 7, 3, T};
        CUDA_CHECK(cudaMemset(dY.p, 0xFF, dY.n));
        ok &= ds4_cuda_mmq(&q, dX.p, xs, &g, 0, (float *)dY.p, n, nullptr, err, sizeof err) == 0;
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaMemcpy(grp.data(), dY.p, grp.size() * 4, cudaMemcpyDeviceToHost));
        for (int i = 0; i < T; i++) ok &= memcmp(grp.data() + (size_t)i * n, big.data() + (size_t)(T - 1 - i) * n, (size_t)n * 4) == 0;
        report(ok, "%s bit-identical: alone / batch of %d / grouped gather / BN 16,32,64,128 (%d variants)", ds4_type_name(t), T,
               variants);
    }
}

static void test_flash_grouped() {
    // the routed experts at Flash row shapes (64 of the 256 experts, 3072 packed rows over
    // 512 tokens, skewed counts with empty experts), plus the backend's extra problem for
    // invalid ids (matrix -1)
    for (uint32_t t : {DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K}) {
        const bool down = t == DS4_TYPE_Q2_K;
        const int64_t n = down ? 4096 : 2048, k = down ? 2048 : 4096;
        std::vector<int> c = skewed_counts(64, 3072, 6);
        c.push_back(5);
        char name[96];
        snprintf(name, sizeof name, "%s routed %s %lld->%lld, 64 experts", ds4_type_name(t), down ? "down" : "gate",
                 (long long)k, (long long)n);
        Case C = grouped(name, t, n, k, 64, c, true, !down, 512, 20000);
        for (int p = 0; p < 64; p++) C.mats[p] = p;
        C.mats[64] = -1;
        run_case(C);
    }
    Case o = grouped("Q8_0 o_a-like 8 groups 4096->1024", DS4_TYPE_Q8_0, 1024, 4096, 8, {300, 300, 0, 300, 300, 300, 300, 300},
                     true, false, 0, 20000);
    for (int p = 0; p < 8; p++) o.mats[p] = p;
    run_case(o);
}

// ---- F16 weights x f32 activations (mmf16.cu) ------------------------------------------------
// Expected value: the f64 dot of the f16 weights (ds4_f16_to_f32: exact) and the f32 x (its
// own error, k·2^-53 relative, is negligible). Per output, with S = ceil(k/64) steps, m_s the
// largest finite |x| of step s and U = Σ_s m_s·Σ_{c in s}|w_c|:
//   tol = B·Σ|w·x| + 2^-39·U + (S + 2)·2^-149·(1 + Σ|w|)
// The U term is the split's underflow (lo below the f16 normal range: 2^-25 at the step
// scale 2^e >= 2^14/m_s), the last term the subnormal roundings of results near 2^-126.
// B (the relative part): the split itself is 2^-22 per element; the rest is rounding in
// the sums (8 tensor-core mmas per step, then one f32 fma per step). For mixed-sign data
// those roundings act on partial sums far below Σ|w·x| and have random signs, so the
// B = 2^-20 holds with a wide margin (measured margins are printed as log2 of
// max |err|/Σ|w·x|), while dropping lo (2^-12 per element, ~2^-19 at k = 4096, 2^-14 at
// k = 8) or a wrong scale / index breaks it. Same-sign data is the worst case of
// truncating adds: there B is mmf16.cu's model bound 9·2^-22 + S·2^-24 (each mma's adds
// within 2^-22 of the magnitudes summed, as published for sm_80/sm_90 tensor cores).
// Non-finite inputs: NaN where the f64 dot is NaN, the same infinity where it is ±Inf.
enum F16Data { F16_GAUSS = 0, F16_SCALES, F16_NONFINITE, F16_POSITIVE };

struct F16Case {
    const char *name;
    int64_t n, k;
    int T;
    int64_t xs = 0, ys = 0;  // 0: k, n
    int x_shift = 0;         // floats: x at +x_shift (not 16-byte aligned: scalar loads)
    int sample = 0;          // > 0: edges + this many random (row, output) pairs
    F16Data data = F16_GAUSS;
};

struct F16Host {
    std::vector<uint16_t> w;  // [n][k]
    std::vector<float> x;     // x_shift + [T][xs], padding NaN
};

static float f16_weight(bool positive) {
    const int u = rng_int(1024);
    double v = rng_normal() * 0.05;
    if (u < 4) v = 0.0;
    else if (u < 8) v = ldexp((double)(1 + rng_int(1023)), -24);           // f16 subnormals
    else if (u < 10) v = (1.0 + 7.0 * rng_uniform()) * (rng_u64() & 1 ? -1 : 1);
    if (positive) v = fabs(v) + 1e-3;
    return ds4_f16_to_f32(ds4_f32_to_f16((float)v));
}

static F16Host f16_make(const F16Case &C) {
    F16Host H;
    const int64_t xs = C.xs ? C.xs : C.k;
    H.w.resize((size_t)(C.n * C.k));
    for (auto &h : H.w) h = ds4_f32_to_f16(f16_weight(C.data == F16_POSITIVE));
    H.x.assign((size_t)(C.x_shift + (int64_t)C.T * xs + 4), NAN);  // padding NaN: a stray read shows
    const int64_t cinf = C.k / 2;
    if (C.data == F16_NONFINITE)  // zero weights under the infinity: 0·Inf rows (r % 3 == 0) give NaN
        for (int64_t r = 0; r < C.n; r += 3) H.w[(size_t)(r * C.k + cinf)] = 0;
    for (int t = 0; t < C.T; t++) {
        float *row = H.x.data() + C.x_shift + (size_t)t * xs;
        const double rs = ldexp(1.0, rng_int(41) - 20);  // row scales 2^-20 .. 2^20
        const int kind = C.data == F16_SCALES ? t % 7 : C.data == F16_NONFINITE ? t % 5 : 0;
        for (int64_t c = 0; c < C.k; c++) {
            double v = rng_normal();
            if (C.data == F16_POSITIVE) v = fabs(v) + 0.01;
            if (C.data == F16_SCALES) {
                switch (kind) {
                case 1: v *= 1e30; break;
                case 2: v *= 1e-30; break;
                case 3: v = 0.0; break;
                case 4: v *= 1e-41; break;                                          // f32 subnormals
                case 5: v = (c % 64 == 17) ? 1e25 * v : v; break;                   // a spike per step
                case 6: v = ldexp(v, (int)((c / 64) % 20) * 6 - 60); break;          // steps 2^-60 .. 2^54
                default: v *= rs; break;
                }
            } else {
                v *= rs;
            }
            row[c] = (float)v;
        }
        if (kind == 1 && C.data == F16_NONFINITE) row[rng_int((int)C.k)] = NAN;
        if (kind == 2 && C.data == F16_NONFINITE) row[cinf] = INFINITY;
        if (kind == 3 && C.data == F16_NONFINITE) row[cinf] = INFINITY, row[(cinf + 5) % C.k] = -INFINITY;
        if (kind == 4 && C.data == F16_NONFINITE) row[cinf] = -INFINITY;
    }
    return H;
}

// f64 dot and tolerance of one output (see above).
static void f16_ref(const uint16_t *w, const float *x, int64_t k, bool worst, double *ref, double *tol, double *sabs) {
    double s = 0, sa = 0, sw = 0, U = 0;
    const int64_t S = (k + 63) / 64;
    for (int64_t b = 0; b < S; b++) {
        double m = 0, swb = 0;
        for (int64_t c = b * 64; c < k && c < b * 64 + 64; c++) {
            const double wv = ds4_f16_to_f32(w[c]), xv = x[c];
            s += wv * xv;
            sa += fabs(wv * xv);
            swb += fabs(wv);
            if (isfinite(xv) && fabs(xv) > m) m = fabs(xv);
        }
        sw += swb;
        U += m * swb;
    }
    const double B = worst ? 9 * ldexp(1.0, -22) + (double)S * ldexp(1.0, -24) : ldexp(1.0, -20);
    *ref = s;
    *tol = B * sa + ldexp(1.0, -39) * U + (double)(S + 2) * ldexp(1.0, -149) * (1 + sw);
    *sabs = sa;
}

struct F16Run {
    std::vector<float> y;  // [T][ys]
    bool ok = false;
};

// One launch on (H, C); cfg "42" etc. forces the tile (nullptr: automatic).
static F16Run f16_launch(const F16Case &C, const F16Host &H, const char *cfg, int rows_from = 0, int n_rows = -1) {
    F16Run R;
    const int64_t xs = C.xs ? C.xs : C.k, ys = C.ys ? C.ys : C.n;
    if (n_rows < 0) n_rows = C.T;
    DBuf dW(H.w.size() * 2 + 16), dX(H.x.size() * 4), dY((size_t)C.T * ys * 4 + 4);
    up(dW, 0, H.w.data(), H.w.size() * 2);
    up(dX, 0, H.x.data(), H.x.size() * 4);
    CUDA_CHECK(cudaMemset(dY.p, 0xFF, dY.n));
    ds4_cuda_qmat q = {DS4_TYPE_F16, dW.p, C.n, C.k, 0, 1};
    if (cfg) setenv("DS4_MMF16_CFG", cfg, 1);
    char err[256] = "";
    const float *x = (const float *)dX.p + C.x_shift + (size_t)rows_from * xs;
    const int rc = ds4_cuda_mmf16(&q, x, xs, n_rows, (float *)dY.p + (size_t)rows_from * ys, ys, nullptr, err, sizeof err);
    if (cfg) unsetenv("DS4_MMF16_CFG");
    if (rc) {
        report(false, "%s: mmf16 failed (%d): %s", C.name, rc, err);
        return R;
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    R.y.resize((size_t)C.T * ys);
    CUDA_CHECK(cudaMemcpy(R.y.data(), dY.p, R.y.size() * 4, cudaMemcpyDeviceToHost));
    R.ok = true;
    return R;
}

static void f16_case(const F16Case &C) {
    const F16Host H = f16_make(C);
    const F16Run R = f16_launch(C, H, nullptr);
    if (!R.ok) return;
    const int64_t xs = C.xs ? C.xs : C.k, ys = C.ys ? C.ys : C.n;
    std::vector<std::pair<int, int64_t>> pairs;
    if (C.sample == 0) {
        for (int t = 0; t < C.T; t++)
            for (int64_t r = 0; r < C.n; r++) pairs.push_back({t, r});
    } else {
        for (int t : {0, C.T - 1, rng_int(C.T)})
            for (int64_t r = 0; r < C.n; r++) pairs.push_back({t, r});
        for (int64_t r : {(int64_t)0, C.n - 1, (int64_t)rng_int((int)C.n)})
            for (int t = 0; t < C.T; t++) pairs.push_back({t, r});
        for (int s = 0; s < C.sample; s++) pairs.push_back({rng_int(C.T), (int64_t)rng_int((int)C.n)});
    }
    int64_t bad = 0, nonfinite = 0;
    double worst = 0, worst_rel = 0;
    char first[220] = "";
    for (const auto &pr : pairs) {
        const int t = pr.first;
        const int64_t r = pr.second;
        const float gv = R.y[(size_t)t * ys + r];
        double ref, tol, sa;
        const float *xr = H.x.data() + C.x_shift + (size_t)t * xs;
        f16_ref(H.w.data() + (size_t)(r * C.k), xr, C.k, C.data == F16_POSITIVE, &ref, &tol, &sa);
        bool ok;
        if (isnan(ref) || isinf(ref)) {
            ok = isnan(ref) ? isnan(gv) : (double)gv == ref;
            nonfinite++;
        } else {
            const double e = fabs((double)gv - ref);
            ok = e <= tol;
            if (ok && tol > 0 && e / tol > worst) worst = e / tol;
            if (sa > 0 && e / sa > worst_rel) worst_rel = e / sa;
        }
        if (!ok && bad++ == 0)
            snprintf(first, sizeof first, " first: token %d out %lld: gpu %.9g ref %.9g tol %.3g", t, (long long)r, gv, ref, tol);
    }
    int64_t touched = 0;  // padding columns ys > n keep the poison
    for (int t = 0; t < C.T; t++)
        for (int64_t r = C.n; r < ys; r++) touched += !is_poison(R.y[(size_t)t * ys + r]);
    report(bad == 0 && touched == 0, "F16 %-40s n=%-5lld k=%-5lld T=%-5d checked=%zu worst=%.3f of tol, log2 max|err|/S|wx|=%.1f%s%s%s",
           C.name, (long long)C.n, (long long)C.k, C.T, pairs.size(), worst, worst_rel > 0 ? log2(worst_rel) : -INFINITY,
           nonfinite ? " (non-finite outputs match)" : "", touched ? " PADDING WRITTEN" : "", first);
}

static F16Case f16c(const char *name, int64_t n, int64_t k, int T, int sample = 0, F16Data d = F16_GAUSS) {
    F16Case C;
    C.name = name;
    C.n = n;
    C.k = k;
    C.T = T;
    C.sample = sample;
    C.data = d;
    return C;
}

static void test_f16_api() {
    bool ok = ds4_cuda_mmf16_supported(8) && ds4_cuda_mmf16_supported(4096) && ds4_cuda_mmf16_supported(136) &&
              !ds4_cuda_mmf16_supported(12) && !ds4_cuda_mmf16_supported(0) && !ds4_cuda_mmf16_supported(4);
    report(ok, "F16 supported(): k a positive multiple of 8");
    DBuf w(4096), x(4096), y(4096);
    ds4_cuda_qmat q = {DS4_TYPE_F16, w.p, 4, 64, 0, 1};
    char err[256];
    const float *xf = (const float *)x.p;
    float *yf = (float *)y.p;
    const int rc0 = ds4_cuda_mmf16(nullptr, xf, 64, 1, yf, 4, nullptr, err, sizeof err);
    ds4_cuda_qmat q8 = q;
    q8.type = DS4_TYPE_Q8_0;
    const int rc1 = ds4_cuda_mmf16(&q8, xf, 64, 1, yf, 4, nullptr, err, sizeof err);                 // not F16
    ds4_cuda_qmat qm = q;
    qm.data = w.b() + 8;
    const int rc2 = ds4_cuda_mmf16(&qm, xf, 64, 1, yf, 4, nullptr, err, sizeof err);                 // w misaligned
    const int rc3 = ds4_cuda_mmf16(&q, (const float *)(x.b() + 2), 64, 1, yf, 4, nullptr, err, sizeof err);  // x misaligned
    const int rc4 = ds4_cuda_mmf16(&q, xf, 64, 2, yf, 3, nullptr, err, sizeof err);                  // ys < n
    const int rc5 = ds4_cuda_mmf16(&q, xf, -1, 2, yf, 4, nullptr, err, sizeof err);                  // xs < 0
    ds4_cuda_qmat qk = q;
    qk.k = 60;
    const int rc6 = ds4_cuda_mmf16(&qk, xf, 64, 1, yf, 4, nullptr, err, sizeof err);                 // k % 8
    CUDA_CHECK(cudaMemset(y.p, 0xFF, 16));
    const int rc7 = ds4_cuda_mmf16(&q, xf, 64, 0, yf, 4, nullptr, err, sizeof err);                  // nothing to do
    CUDA_CHECK(cudaDeviceSynchronize());
    float yv[4];
    CUDA_CHECK(cudaMemcpy(yv, y.p, 16, cudaMemcpyDeviceToHost));
    ok = rc0 == DS4_ERR_ARG && rc1 == DS4_ERR_UNSUPPORTED && rc2 == DS4_ERR_UNSUPPORTED && rc3 == DS4_ERR_ARG &&
         rc4 == DS4_ERR_ARG && rc5 == DS4_ERR_ARG && rc6 == DS4_ERR_UNSUPPORTED && rc7 == 0 && is_poison(yv[0]);
    report(ok, "F16 bad arguments refused before any launch (%d %d %d %d %d %d %d %d)", rc0, rc1, rc2, rc3, rc4, rc5, rc6, rc7);
}

static void test_f16() {
    test_f16_api();
    // odd shapes, every output checked
    char name[96];
    for (int64_t n : {1, 7, 129})
        for (int T : {1, 16, 17})
            for (int64_t k : {8, 136}) {
                snprintf(name, sizeof name, "odd n=%lld T=%d k=%lld", (long long)n, T, (long long)k);
                f16_case(f16c(name, n, k, T));
            }
    f16_case(f16c("odd n=200 T=65 k=520", 200, 520, 65));
    f16_case(f16c("odd n=131 T=130 k=4104", 131, 4104, 130, 20000));
    {
        F16Case C = f16c("ys>n, xs=k+4 (16-byte rows)", 130, 264, 67);
        C.ys = 141;
        C.xs = 268;
        f16_case(C);
        C.name = "xs=k+1, x at +1 float (scalar loads)";
        C.ys = 0;
        C.xs = 265;
        C.x_shift = 1;
        f16_case(C);
    }
    // scaling: huge / tiny / zero / subnormal rows, a spike per step, steps 2^-60..2^54
    f16_case(f16c("row scales 1e30 / 1e-30 / 0 / 1e-41 / spikes", 160, 1024, 70, 0, F16_SCALES));
    f16_case(f16c("non-finite x: NaN, +Inf, +-Inf, -Inf (0·Inf)", 40, 512, 35, 0, F16_NONFINITE));
    f16_case(f16c("same-sign data (model worst-case bound)", 256, 4096, 40, 0, F16_POSITIVE));
    // Flash shapes (compressor / indexer projections, router, HC mixing)
    for (int T : {2048, 300}) {
        snprintf(name, sizeof name, "c_kv 4096->1024 x%d", T);
        f16_case(f16c(name, 1024, 4096, T, 20000));
        snprintf(name, sizeof name, "i_kv / gate_inp 4096->256 x%d", T);
        f16_case(f16c(name, 256, 4096, T, 20000));
        snprintf(name, sizeof name, "i_proj 4096->64 x%d", T);
        f16_case(f16c(name, 64, 4096, T, 20000));
        snprintf(name, sizeof name, "hc mix 16384->24 x%d", T);
        f16_case(f16c(name, 24, 16384, T, 5000));
    }
    // bit identity: every tile config, a row alone, repeated launches
    for (F16Data d : {F16_GAUSS, F16_SCALES}) {
        F16Case C = f16c("", 300, 1056, 300, 0, d);
        const F16Host H = f16_make(C);
        const F16Run a = f16_launch(C, H, nullptr);
        bool ok = a.ok;
        int variants = 0;
        for (const char *cfg : {"42", "41", "22", "21", "42"}) {
            const F16Run b = f16_launch(C, H, cfg);
            ok = ok && b.ok && memcmp(b.y.data(), a.y.data(), a.y.size() * 4) == 0;
            variants++;
        }
        for (int t : {0, 137, 299}) {
            const F16Run b = f16_launch(C, H, nullptr, t, 1);
            ok = ok && b.ok && memcmp(b.y.data() + (size_t)t * C.n, a.y.data() + (size_t)t * C.n, (size_t)C.n * 4) == 0;
            variants++;
        }
        const F16Run c = f16_launch(C, H, nullptr, 17, 16);  // rows 17..32 as a batch of their own
        for (int t = 17; t < 33; t++)
            ok = ok && c.ok && memcmp(c.y.data() + (size_t)t * C.n, a.y.data() + (size_t)t * C.n, (size_t)C.n * 4) == 0;
        report(ok, "F16 bit-identical (%s): configs 42/41/22/21, repeat, rows alone, a sub-batch (%d variants)",
               d == F16_GAUSS ? "gaussian" : "scaled rows", variants + 1);
    }
}


// Kernel variants 1, 2 and 3 compute every output with the same operations (mmq.cu): the
// same launches must give identical bits (dense at Flash-like and odd shapes, grouped with
// gather, skew, NaN ids), and each is checked against the CPU on the first run. v3 is run
// at both of its token tiles (BN 64 and 32). Shapes for v3's edges (256-row blocks of 8 warps
// x 32 rows, three weight buffers, BN 64 / 32): n = 300 (a second row tile of 44 rows: one
// full warp, one partial, six without rows), n = 129 / 200, k of 1..16 superblocks (the
// weight ring wraps, odd step counts), expert counts 1, 7, 8, 9, 31..33, 63..65 (partial n8
// and partial token tiles, a lone token), empty experts, slack rows that must stay poisoned.
static void test_variants() {
    for (uint32_t t : kTypes) {
        const char *tn = ds4_type_name(t);
        const int64_t blk = tinfo(t)->block_elems;
        const bool q8 = t == DS4_TYPE_Q8_0;
        char name[96];
        Case cs[6];
        cs[0] = dense("", t, 300, q8 ? 1056 : 1024, 300, 5000);
        cs[1] = dense("", t, 129, 3 * blk, 33);
        cs[2] = grouped("", t, 200, q8 ? 544 : 768, 8, {0, 1, 200, 7, 0, 65, 48, 3, 130, 0, 17, 64}, true, true, 97, 0);
        cs[2].mats[3] = 8;
        cs[2].slack = 11;
        cs[3] = grouped("", t, 300, 4096, 6, {9, 8, 0, 63, 64, 65, 1, 33, 32, 31, 0, 127}, true, true, 150, 4000);
        cs[3].slack = 5;
        cs[4] = dense("", t, 300, 9 * blk, 1);  // a lone token, 9 steps
        cs[5] = grouped("", t, 512, 5 * blk, 3, {17, 0, 40}, false, false, 0, 0);
        for (int i = 0; i < 6; i++) {
            snprintf(name, sizeof name, "%s variants 1 / 2 / 3 case %d", tn, i);
            cs[i].name = name;
            const uint64_t seed = g_rng;
            ds4_cuda_mmq_set_variant(1);
            const Result a = run_case(cs[i]);
            bool same = a.launched;
            const int vbn[3][2] = {{2, 0}, {3, 0}, {3, 32}};  // v2, v3 (automatic tile), v3 at BN 32
            for (const auto &vb : vbn) {
                g_rng = seed;
                ds4_cuda_mmq_set_variant(vb[0]);
                const Result b = run_case(cs[i], vb[1], false);
                same = same && b.launched && a.y.size() == b.y.size() && memcmp(a.y.data(), b.y.data(), a.y.size() * 4) == 0;
            }
            report(same, "%s: v1, v2, v3 (BN auto / 32) give identical bits", name);
        }
    }
}

// ---- benchmark ---------------------------------------------------------------------------------
__global__ void k_fill_blocks(uint8_t *dst, uint64_t nblk, const uint8_t *pool, int npool, int bb) {
    for (uint64_t b = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; b < nblk; b += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t h = b * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
        const uint8_t *s = pool + (h % (uint64_t)npool) * bb;
        for (int i = 0; i < bb; i++) dst[b * bb + i] = s[i];
    }
}

struct BenchW {
    DBuf *d;
    ds4_cuda_qmat q;
};
static BenchW bench_weights(uint32_t t, int64_t n, int64_t k, int n_mats) {
    const Pool &P = *pool_of(t);
    DBuf pool(P.blk.size());
    up(pool, 0, P.blk.data(), P.blk.size());
    const uint64_t rb = row_bytes(t, k), nblk = (uint64_t)n * n_mats * (k / tinfo(t)->block_elems);
    BenchW B;
    B.d = new DBuf(nblk * P.bb);
    k_fill_blocks<<<4096, 256>>>(B.d->b(), nblk, pool.b(), P.n, P.bb);
    CUDA_CHECK(cudaDeviceSynchronize());
    B.q = {t, B.d->p, n, k, (uint64_t)n * rb, n_mats};
    return B;
}

static double bench_one(const char *name, const BenchW &B, int rows, const ds4_cuda_mmq_groups *g, const void *x, uint64_t xs,
                        float *y) {
    char err[256];
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++)
        if (ds4_cuda_mmq(&B.q, x, xs, g, rows, y, B.q.n, nullptr, err, sizeof err)) {
            printf("%s: %s\n", name, err);
            return 0;
        }
    const int iters = 20;
    CUDA_CHECK(cudaEventRecord(e0));
    for (int i = 0; i < iters; i++) ds4_cuda_mmq(&B.q, x, xs, g, rows, y, B.q.n, nullptr, err, sizeof err);
    CUDA_CHECK(cudaEventRecord(e1));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    const double us = 1000.0 * ms / iters;
    const double ops = 2.0 * (double)B.q.n * (double)B.q.k * rows;
    const double wbytes = (double)row_bytes(B.q.type, B.q.k) * B.q.n * B.q.n_mats;
    printf("bench %-46s %9.1f us  %7.1f TOPS  (weights %.0f MB: %.0f GB/s)\n", name, us, ops / us * 1e-6, wbytes / 1e6,
           wbytes / us * 1e-3);
    fflush(stdout);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return us;
}

// ---- F16 benchmark: weights and activations generated on the device ----------------------------
__global__ void k_fill_f16(uint16_t *w, uint64_t n, float *x, uint64_t nx) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n + nx; i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t h = (i + 1) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 31;
        h *= 0xBF58476D1CE4E5B9ull;
        h ^= h >> 29;
        const float u = (float)(h >> 40) * (1.0f / 16777216.0f) - 0.5f;  // [-0.5, 0.5)
        if (i < n) w[i] = __half_as_ushort(__float2half_rn(0.1f * u));
        else x[i - n] = 4.0f * u;
    }
}

static void bench_f16() {
    const int T = 2048;
    struct S {
        const char *name;
        int64_t n, k;
    } sh[] = {{"c_kv 4096->1024", 1024, 4096},
              {"c_kv (HCA) 4096->512", 512, 4096},
              {"i_kv / gate_inp 4096->256", 256, 4096},
              {"i_proj 4096->64", 64, 4096},
              {"hc mix 16384->24", 24, 16384}};
    for (const S &s : sh) {
        DBuf w((size_t)(s.n * s.k * 2)), x((size_t)T * s.k * 4), y((size_t)T * s.n * 4);
        k_fill_f16<<<4096, 256>>>((uint16_t *)w.p, (uint64_t)(s.n * s.k), (float *)x.p, (uint64_t)T * s.k);
        CUDA_CHECK(cudaDeviceSynchronize());
        ds4_cuda_qmat q = {DS4_TYPE_F16, w.p, s.n, s.k, 0, 1};
        for (const char *cfg : {(const char *)nullptr, "42", "22"}) {
            if (cfg) setenv("DS4_MMF16_CFG", cfg, 1);
            char err[256];
            cudaEvent_t e0, e1;
            CUDA_CHECK(cudaEventCreate(&e0));
            CUDA_CHECK(cudaEventCreate(&e1));
            bool ok = true;
            for (int i = 0; i < 3; i++) ok &= ds4_cuda_mmf16(&q, (float *)x.p, s.k, T, (float *)y.p, s.n, nullptr, err, sizeof err) == 0;
            const int iters = 20;
            CUDA_CHECK(cudaEventRecord(e0));
            for (int i = 0; i < iters; i++) ds4_cuda_mmf16(&q, (float *)x.p, s.k, T, (float *)y.p, s.n, nullptr, err, sizeof err);
            CUDA_CHECK(cudaEventRecord(e1));
            CUDA_CHECK(cudaEventSynchronize(e1));
            float ms = 0;
            CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
            if (cfg) unsetenv("DS4_MMF16_CFG");
            const double us = 1000.0 * ms / iters, fl = 2.0 * (double)s.n * (double)s.k * T;
            const double bytes = (double)T * s.k * 4 + (double)s.n * s.k * 2 + (double)T * s.n * 4;
            if (!ok) printf("bench F16 %s: %s\n", s.name, err);
            else
                printf("bench F16 %-28s x%d cfg %-4s %8.1f us  %6.1f TFLOP/s  (x+w+y %.0f MB: %.0f GB/s)\n", s.name, T,
                       cfg ? cfg : "auto", us, fl / us * 1e-6, bytes / 1e6, bytes / us * 1e-3);
            fflush(stdout);
            cudaEventDestroy(e0);
            cudaEventDestroy(e1);
        }
    }
}

static void bench() {
    const int T = 2048, P = 6 * 4096, NE = 256;  // P: packed rows of the largest routed chunk
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    // activations: T token rows (dense, gate/up gather) and P packed rows (down), both dot types
    const int64_t kmax = 8192;
    DBuf x8((size_t)P * row_bytes(DS4_TYPE_Q8_0, kmax)), xk((size_t)P * row_bytes(DS4_TYPE_Q8_K, kmax));
    DBuf y((size_t)4 * ((size_t)T * 32768 > (size_t)P * 4096 ? (size_t)T * 32768 : (size_t)P * 4096));
    {
        std::vector<uint8_t> a = make_acts(DS4_TYPE_Q8_0, 64, kmax, row_bytes(DS4_TYPE_Q8_0, kmax));
        for (int r = 0; r < P; r += 64) up(x8, (size_t)r * a.size() / 64, a.data(), a.size());
        std::vector<uint8_t> b = make_acts(DS4_TYPE_Q8_K, 64, kmax, row_bytes(DS4_TYPE_Q8_K, kmax));
        for (int r = 0; r < P; r += 64) up(xk, (size_t)r * b.size() / 64, b.data(), b.size());
    }
    struct D {
        const char *name;
        int64_t n, k;
    } dn[] = {{"Q8_0 q_a 4096->1024 x2048", 1024, 4096},      {"Q8_0 4096->512 x2048", 512, 4096},
              {"Q8_0 q_b 1024->32768 x2048", 32768, 1024},    {"Q8_0 o_b 8192->4096 x2048", 4096, 8192},
              {"Q8_0 shared gate 4096->2048 x2048", 2048, 4096}, {"Q8_0 shared down 2048->4096 x2048", 4096, 2048}};
    char vn[128];
    for (const D &d : dn) {
        BenchW B = bench_weights(DS4_TYPE_Q8_0, d.n, d.k, 1);
        for (int v : {1, 2}) {  // kernel variants (mmq.cu), same data
            ds4_cuda_mmq_set_variant(v);
            snprintf(vn, sizeof vn, "v%d %s", v, d.name);
            bench_one(vn, B, T, nullptr, x8.p, row_bytes(DS4_TYPE_Q8_0, d.k), (float *)y.p);
        }
        delete B.d;
    }
    // routed experts (Flash: 256 experts, top-6): chunks of TR = 2048 and 4096 tokens, PR = 6·TR
    // packed rows over 256 experts (skewed), gate/up gather tokens. q2 file: IQ2_XXS gate/up +
    // Q2_K down (variants 1, 2, 3); q4 file: Q4_K for all three (variants 1, 2; v3 has no
    // Q4_K). Each at the automatic tile size and forced BN = 32 (DS4_MMQ_BN).
    const uint32_t gate_t[2] = {DS4_TYPE_IQ2_XXS, DS4_TYPE_Q4_K}, down_t[2] = {DS4_TYPE_Q2_K, DS4_TYPE_Q4_K};
    for (int f = 0; f < 2; f++) {
        BenchW G = bench_weights(gate_t[f], 2048, 4096, NE), Dn = bench_weights(down_t[f], 4096, 2048, NE);
        for (int TR : {2048, 4096}) {
            const int PR = 6 * TR;
            std::vector<int> c = skewed_counts(NE, PR, 8);
            int cmax = 0;
            for (int v : c) cmax = v > cmax ? v : cmax;
            printf("routed %s: %d tokens, %d rows over %d experts, largest %d\n", f ? "q4" : "q2", TR, PR, NE, cmax);
            std::vector<int32_t> idx(2 * NE + 2 + PR);
            idx[0] = 0;
            for (int e = 0; e < NE; e++) idx[e + 1] = idx[e] + c[e];
            for (int e = 0; e < NE; e++) idx[NE + 1 + e] = e;
            for (int i = 0; i < PR; i++) idx[2 * NE + 1 + i] = rng_int(TR);
            DBuf di(idx.size() * 4);
            up(di, 0, idx.data(), idx.size() * 4);
            const int32_t *doff = (int32_t *)di.p, *dmat = doff + NE + 1, *dx = doff + 2 * NE + 1;
            ds4_cuda_mmq_groups gg = {doff, dmat, dx, NE, PR}, gd = {doff, dmat, nullptr, NE, PR};
            const int nvar = f ? 2 : 3;
            for (int vb = 0; vb < 2 * nvar; vb++) {  // kernel variant x automatic tile / BN 32
                const int v = 1 + vb / 2, bn = vb % 2 ? 32 : 0;
                ds4_cuda_mmq_set_variant(v);
                if (bn) setenv("DS4_MMQ_BN", "32", 1);
                char nm[96];
                snprintf(nm, sizeof nm, "v%d %s routed gate (=up) 4096->2048 x%d%s", v, ds4_type_name(gate_t[f]), TR,
                         bn ? " BN32" : "");
                const double tg = bench_one(nm, G, PR, &gg, xk.p, row_bytes(DS4_TYPE_Q8_K, 4096), (float *)y.p);
                snprintf(nm, sizeof nm, "v%d %s routed down 2048->4096 x%d%s", v, ds4_type_name(down_t[f]), TR, bn ? " BN32" : "");
                const double td = bench_one(nm, Dn, PR, &gd, xk.p, row_bytes(DS4_TYPE_Q8_K, 2048), (float *)y.p);
                if (bn) unsetenv("DS4_MMQ_BN");
                printf("bench => v%d routed layer (%s, %d tokens%s): gate + up + down = %.1f us for %d packed rows (%.2f us "
                       "per token)\n",
                       v, f ? "q4" : "q2", TR, bn ? ", BN32" : "", 2 * tg + td, PR, (2 * tg + td) / TR);
            }
        }
        delete G.d;
        delete Dn.d;
    }
    ds4_cuda_mmq_set_variant(0);
    // o_a: 8 groups of 4096->1024, 2048 rows each
    {
        std::vector<int32_t> o(8 + 1 + 8);
        for (int p = 0; p <= 8; p++) o[p] = p * T;
        for (int p = 0; p < 8; p++) o[9 + p] = p;
        DBuf dO(o.size() * 4);
        up(dO, 0, o.data(), o.size() * 4);
        ds4_cuda_mmq_groups go = {(int32_t *)dO.p, (int32_t *)dO.p + 9, nullptr, 8, 8 * T};
        BenchW B = bench_weights(DS4_TYPE_Q8_0, 1024, 4096, 8);
        for (int v : {1, 2}) {
            ds4_cuda_mmq_set_variant(v);
            snprintf(vn, sizeof vn, "v%d Q8_0 o_a 8 groups 4096->1024 x2048", v);
            bench_one(vn, B, 8 * T, &go, x8.p, row_bytes(DS4_TYPE_Q8_0, 4096), (float *)y.p);
        }
        delete B.d;
    }
    bench_f16();
}

int main(int argc, char **argv) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        printf("cuda-test-mmq: no CUDA device\n");
        return 1;
    }
    if (argc > 1 && !strcmp(argv[1], "--bench")) {
        bench();
        return 0;
    }
    // the whole quantized suite once per kernel variant (mmq.cu: DS4_MMQ_V), then v1 == v2 == v3
    for (int v : {2, 1, 3}) {
        ds4_cuda_mmq_set_variant(v);
        printf("---- mmq kernel variant %d\n", v);
        test_api();
        test_odd_shapes();
        test_grouped();
        test_bit_identity();
        test_flash_dense();
        test_flash_grouped();
    }
    test_variants();
    ds4_cuda_mmq_set_variant(0);
    test_f16();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
