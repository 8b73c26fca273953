// test_matvec.cu — the CUDA matvec kernels (src/backend/cuda/matvec.cu) against the CPU
// scalar reference (src/model/quant.c: ds4_quantize_act_row, ds4_dot_q, ds4_dot_f32).
//
// Owns: `make cuda-test` (needs a GPU; CI only compiles it). Must not: take an expected
// value from the GPU; every expected value comes from quant.c (the bit-identity checks
// below compare two GPU paths that must agree, in addition to the CPU reference).
//
// What is checked, on random valid blocks (random bits with finite, moderate f16/f32
// scales; every grid index, sign pattern and 4/6-bit scale is reachable), for every
// weight type, Flash's shapes (plus vocab-size rows, rows sampled on the CPU side) and
// odd tiny shapes:
//  * ds4_cuda_quantize_act is byte-identical to ds4_quantize_act_row (Q8_0, Q8_K),
//    including an all-zero Q8_K block and a ±max tie (first index wins).
//  * ACT_QUANT (in-kernel quantization) and the pre-quantized path (_ids_q) vs
//    ds4_dot_q on the CPU-quantized activations: per row |gpu − ref| <= 2e-5·S + 1e-30
//    with S = Σ_i |w_i·x̂_i| (dequantized weights and activations). The integer block
//    sums are exact on both sides; only the f32 accumulation order differs.
//  * ACT_F32 vs ds4_dot_f32: |gpu − ref| <= 2e-5·S, S = Σ_i |w_i·x_i|.
//  * Batched ids (shared x and per-expert x, repeated ids), NaN rows for ids outside
//    [0, n_mats), misaligned weights (byte-wise staging path), bad arguments.
//  * Matrix lists (ds4_cuda_matvec_list: entries with different row counts, stacks with
//    ids, misaligned entries), many selections with their own x (block-local activation
//    loading), and the SwiGLU prologue (ds4_cuda_matvec_ids_swiglu) against the CPU as
//    above. Besides, two invariants the engine relies on are checked bit for bit (GPU
//    against GPU, not as expected values): a list launch gives each output exactly the
//    value of a launch per entry, and the fused SwiGLU gives exactly the value of the
//    swiglu op into memory followed by the plain matvec.
// The output is poisoned (NaN) before every launch, so an unwritten element fails.
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_matvec.h"

extern "C" {
#include "model/ggml_type.h"
#include "model/quant.h"
}

static int g_pass, g_fail;

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

// ---- random data -------------------------------------------------------------------------
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
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
// A finite f16 with magnitude in [lo, hi) and the given sign rule.
static uint16_t rand_scale(float lo, float hi, bool allow_neg) {
    float v = (float)(lo + (hi - lo) * rng_uniform());
    if (allow_neg && (rng_u64() & 1)) v = -v;
    return ds4_f32_to_f16(v);
}

static void fill_random_bytes(uint8_t *p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint64_t r = rng_u64();
        memcpy(p + i, &r, 8);
    }
    for (; i < n; i++) p[i] = (uint8_t)rng_u64();
}

// One matrix of n rows × k in `type`, random valid content.
static void fill_weights(uint32_t type, uint8_t *w, int64_t n, int64_t k) {
    const ds4_type_info *ti = ds4_type_get(type);
    const int64_t nb = n * (k / ti->block_elems);
    if (type == DS4_TYPE_F32) {
        float *f = (float *)w;
        for (int64_t i = 0; i < n * k; i++) f[i] = (float)rng_normal();
        return;
    }
    if (type == DS4_TYPE_F16) {
        uint16_t *h = (uint16_t *)w;
        for (int64_t i = 0; i < n * k; i++) h[i] = ds4_f32_to_f16((float)rng_normal());
        return;
    }
    fill_random_bytes(w, (size_t)nb * ti->block_bytes);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = w + b * ti->block_bytes;
        uint16_t d, dmin;
        switch (type) {
        case DS4_TYPE_Q8_0:
            d = rand_scale(0.002f, 0.02f, true);
            memcpy(blk, &d, 2);
            break;
        case DS4_TYPE_Q2_K:
            d = rand_scale(0.002f, 0.02f, false);
            dmin = rand_scale(0.001f, 0.01f, false);
            memcpy(blk + 80, &d, 2);
            memcpy(blk + 82, &dmin, 2);
            break;
        case DS4_TYPE_Q4_K:
            d = rand_scale(0.002f, 0.02f, false);
            dmin = rand_scale(0.001f, 0.01f, false);
            memcpy(blk, &d, 2);
            memcpy(blk + 2, &dmin, 2);
            break;
        case DS4_TYPE_IQ2_XXS:
            d = rand_scale(0.002f, 0.02f, true);
            memcpy(blk, &d, 2);
            break;
        default: break;
        }
    }
}

// Activations: Gaussian, with a few structured 256-blocks (all zero; ±max tie).
static void fill_x(float *x, int64_t k) {
    for (int64_t i = 0; i < k; i++) x[i] = (float)(rng_normal() * (0.5 + rng_uniform()));
    if (k >= 768) {
        for (int i = 0; i < 256; i++) x[256 + i] = 0.0f;  // an all-zero Q8_K block
        x[512 + 3] = 7.5f;                                 // a ±max tie: first index wins
        x[512 + 200] = -7.5f;
    }
}

// ---- device helpers ------------------------------------------------------------------------
template <typename T>
static T *dalloc(size_t bytes) {
    void *p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    return (T *)p;
}
static void poison(float *dy, size_t n) { CUDA_CHECK(cudaMemset(dy, 0xFF, n * sizeof(float))); }  // NaN

static uint64_t row_bytes(uint32_t type, int64_t k) {
    uint64_t rb = 0;
    if (!ds4_type_row_bytes(type, (uint64_t)k, &rb)) {
        fprintf(stderr, "bad row bytes\n");
        exit(1);
    }
    return rb;
}

// ---- reference -------------------------------------------------------------------------------
// Reference value and error scale of one row: quantized path (xq = CPU-quantized x) or
// exact f32 path.
struct RefRow {
    double ref, scale;
};
static RefRow ref_row(uint32_t type, const uint8_t *wrow, int64_t k, const float *x, const void *xq, const float *xdq,
                      bool quant, std::vector<float> &tmp) {
    RefRow r;
    float out = NAN;
    const bool qpath = quant && ds4_vec_dot_type(type) != DS4_TYPE_F32;
    const int rc = qpath ? ds4_dot_q(type, wrow, xq, k, &out) : ds4_dot_f32(type, wrow, x, k, &out);
    if (rc) {
        fprintf(stderr, "reference dot failed (%d)\n", rc);
        exit(1);
    }
    r.ref = out;
    tmp.resize((size_t)k);
    ds4_dequant_row(type, wrow, tmp.data(), k);
    const float *xv = qpath ? xdq : x;
    double s = 0;
    for (int64_t i = 0; i < k; i++) s += fabs((double)tmp[(size_t)i] * xv[i]);
    r.scale = s;
    return r;
}

// Compares gpu[rows] (rows chosen by `stride`) with the reference; returns max err/scale.
struct Cmp {
    double worst;      // max |Δ| / (2e-5·S + 1e-30): <= 1 passes
    double rel_norm;   // ‖Δ‖ / ‖ref‖ over checked rows
    int64_t bad;
};
static Cmp compare_rows(uint32_t type, const uint8_t *w, int64_t n, int64_t k, const float *x, const void *xq, const float *xdq,
                        bool quant, const float *gpu, int64_t stride) {
    Cmp c = {0, 0, 0};
    std::vector<float> tmp;
    const uint64_t rb = row_bytes(type, k);
    double num = 0, den = 0;
    for (int64_t r = 0;; r = r + stride < n - 1 ? r + stride : n - 1) {
        const RefRow rr = ref_row(type, w + (uint64_t)r * rb, k, x, xq, xdq, quant, tmp);
        const double tol = 2e-5 * rr.scale + 1e-30;
        const double e = fabs((double)gpu[r] - rr.ref);
        const double q = e / tol;
        if (!(e <= tol)) c.bad++;
        if (!(q <= c.worst)) c.worst = q;  // NaN propagates as "worst"
        num += e * e;
        den += rr.ref * rr.ref;
        if (r == n - 1) break;
    }
    c.rel_norm = den > 0 ? sqrt(num / den) : sqrt(num);
    return c;
}

static const char *mode_name(bool quant) { return quant ? "quant" : "f32"; }

// CPU-side quantized activations for one x vector.
struct XQ {
    std::vector<uint8_t> q;
    std::vector<float> dq;
};
static XQ quantize_cpu(uint32_t wtype, const float *x, int64_t k) {
    XQ r;
    const uint32_t at = ds4_vec_dot_type(wtype);
    if (at == DS4_TYPE_F32) return r;
    r.q.resize(row_bytes(at, k));
    r.dq.resize((size_t)k);
    if (ds4_quantize_act_row(at, x, r.q.data(), k) || ds4_dequant_row(at, r.q.data(), r.dq.data(), k)) {
        fprintf(stderr, "cpu quantize failed\n");
        exit(1);
    }
    return r;
}

// ---- tests -------------------------------------------------------------------------------------

// xoff: x starts xoff floats into its allocation (1: rows at 4-byte, not 16-byte, addresses)
static void test_quantizer(uint32_t at, int64_t k, int64_t nvec, int xoff = 0) {
    std::vector<float> x((size_t)(k * nvec));
    for (int64_t v = 0; v < nvec; v++) fill_x(x.data() + v * k, k);
    const uint64_t vb = row_bytes(at, k);
    std::vector<uint8_t> ref(vb * nvec), got(vb * nvec);
    for (int64_t v = 0; v < nvec; v++) ds4_quantize_act_row(at, x.data() + v * k, ref.data() + v * vb, k);
    float *dx0 = dalloc<float>((x.size() + xoff) * 4), *dx = dx0 + xoff;
    uint8_t *dq = dalloc<uint8_t>(got.size());
    CUDA_CHECK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemset(dq, 0xA5, got.size()));
    char err[256] = "";
    const int rc = ds4_cuda_quantize_act(at, dx, dq, k, nvec, nullptr, err, sizeof err);
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(got.data(), dq, got.size(), cudaMemcpyDeviceToHost));
    size_t diff = 0;
    for (size_t i = 0; i < got.size(); i++) diff += got[i] != ref[i];
    report(rc == 0 && diff == 0, "quantize_act %-5s k=%-6lld nvec=%lld xoff=%d: %zu differing bytes of %zu %s",
           ds4_type_name(at), (long long)k, (long long)nvec, xoff, diff, got.size(), err);
    cudaFree(dx0);
    cudaFree(dq);
}

// Single-matrix test: ACT_QUANT, ACT_F32 and the pre-quantized path. misalign: offset
// the weights by that many bytes (exercises the byte-wise staging path).
static void test_single(uint32_t type, int64_t n, int64_t k, int misalign, int64_t check_stride) {
    const uint64_t rb = row_bytes(type, k), wbytes = rb * (uint64_t)n;
    std::vector<uint8_t> w(wbytes);
    fill_weights(type, w.data(), n, k);
    std::vector<float> x((size_t)k);
    fill_x(x.data(), k);
    const XQ xq = quantize_cpu(type, x.data(), k);

    uint8_t *dwb = dalloc<uint8_t>(wbytes + 64);
    uint8_t *dw = dwb + misalign;
    float *dx = dalloc<float>((size_t)k * 4), *dy = dalloc<float>((size_t)n * 4);
    CUDA_CHECK(cudaMemcpy(dw, w.data(), wbytes, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dx, x.data(), (size_t)k * 4, cudaMemcpyHostToDevice));
    ds4_cuda_qmat m = {type, dw, n, k, 0, 1};
    std::vector<float> y((size_t)n);
    char err[256];

    for (int quant = 1; quant >= 0; quant--) {
        poison(dy, (size_t)n);
        err[0] = 0;
        int rc = ds4_cuda_matvec(&m, dx, dy, quant ? DS4_CUDA_ACT_QUANT : DS4_CUDA_ACT_F32, nullptr, err, sizeof err);
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaMemcpy(y.data(), dy, (size_t)n * 4, cudaMemcpyDeviceToHost));
        Cmp c = compare_rows(type, w.data(), n, k, x.data(), xq.q.data(), xq.dq.data(), quant, y.data(), check_stride);
        report(rc == 0 && c.bad == 0, "matvec    %-7s n=%-6lld k=%-6lld %-5s align+%d: worst %.3g of tol, rel-norm %.2e %s", ds4_type_name(type),
               (long long)n, (long long)k, mode_name(quant), misalign, c.worst, c.rel_norm, err);
    }
    // Pre-quantized activations from the GPU quantizer (and f32 for float weights).
    {
        const uint32_t at = ds4_vec_dot_type(type);
        const uint64_t vb = row_bytes(at, k);
        uint8_t *dxq = dalloc<uint8_t>(vb);
        err[0] = 0;
        int rc = 0;
        if (at == DS4_TYPE_F32)
            CUDA_CHECK(cudaMemcpy(dxq, x.data(), vb, cudaMemcpyHostToDevice));
        else
            rc = ds4_cuda_quantize_act(at, dx, dxq, k, 1, nullptr, err, sizeof err);
        poison(dy, (size_t)n);
        if (!rc) rc = ds4_cuda_matvec_ids_q(&m, nullptr, 1, dxq, 0, dy, nullptr, err, sizeof err);
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaMemcpy(y.data(), dy, (size_t)n * 4, cudaMemcpyDeviceToHost));
        Cmp c = compare_rows(type, w.data(), n, k, x.data(), xq.q.data(), xq.dq.data(), true, y.data(), check_stride);
        report(rc == 0 && c.bad == 0, "matvec_q  %-7s n=%-6lld k=%-6lld preq  align+%d: worst %.3g of tol, rel-norm %.2e %s", ds4_type_name(type),
               (long long)n, (long long)k, misalign, c.worst, c.rel_norm, err);
        cudaFree(dxq);
    }
    cudaFree(dwb);
    cudaFree(dx);
    cudaFree(dy);
}

// Batched: n_mats matrices, n_sel ids (with a repeat, and optionally two invalid ids).
static void test_batched(uint32_t type, int64_t n, int64_t k, int n_mats, bool per_expert_x, bool invalid) {
    const uint64_t rb = row_bytes(type, k), mbytes = rb * (uint64_t)n;
    std::vector<uint8_t> w(mbytes * n_mats);
    for (int m = 0; m < n_mats; m++) fill_weights(type, w.data() + m * mbytes, n, k);
    std::vector<int32_t> ids = {5 % n_mats, n_mats - 1, 0, 5 % n_mats, 17 % n_mats, 42 % n_mats};
    if (invalid) {
        ids.push_back(n_mats);
        ids.push_back(-1);
    }
    const int n_sel = (int)ids.size(), n_x = per_expert_x ? n_sel : 1;
    std::vector<float> x((size_t)(k * n_x));
    for (int v = 0; v < n_x; v++) fill_x(x.data() + v * k, k);
    std::vector<XQ> xq;
    for (int v = 0; v < n_x; v++) xq.push_back(quantize_cpu(type, x.data() + v * k, k));

    uint8_t *dw = dalloc<uint8_t>(w.size());
    float *dx = dalloc<float>(x.size() * 4), *dy = dalloc<float>((size_t)(n * n_sel) * 4);
    int32_t *dids = dalloc<int32_t>(ids.size() * 4);
    CUDA_CHECK(cudaMemcpy(dw, w.data(), w.size(), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    ds4_cuda_qmat m = {type, dw, n, k, mbytes, n_mats};
    std::vector<float> y((size_t)(n * n_sel));
    const uint32_t at = ds4_vec_dot_type(type);
    const uint64_t vb = row_bytes(at, k);
    uint8_t *dxq = dalloc<uint8_t>(vb * n_x);
    char err[256];
    for (int pass = 0; pass < 3; pass++) {  // 0: ACT_QUANT, 1: ACT_F32, 2: pre-quantized
        const bool quant = pass != 1;
        err[0] = 0;
        poison(dy, (size_t)(n * n_sel));
        int rc;
        if (pass < 2) {
            rc = ds4_cuda_matvec_ids(&m, dids, n_sel, dx, per_expert_x ? k : 0, dy, quant ? DS4_CUDA_ACT_QUANT : DS4_CUDA_ACT_F32,
                                     nullptr, err, sizeof err);
        } else {
            rc = 0;
            if (at == DS4_TYPE_F32)
                CUDA_CHECK(cudaMemcpy(dxq, dx, vb * n_x, cudaMemcpyDeviceToDevice));
            else
                rc = ds4_cuda_quantize_act(at, dx, dxq, k, n_x, nullptr, err, sizeof err);
            if (!rc) rc = ds4_cuda_matvec_ids_q(&m, dids, n_sel, dxq, per_expert_x ? vb : 0, dy, nullptr, err, sizeof err);
        }
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaMemcpy(y.data(), dy, y.size() * 4, cudaMemcpyDeviceToHost));
        int64_t bad = 0, nan_ok = 0, nan_bad = 0;
        double worst = 0;
        for (int e = 0; e < n_sel; e++) {
            const int v = per_expert_x ? e : 0;
            if (ids[e] < 0 || ids[e] >= n_mats) {
                for (int64_t r = 0; r < n; r++) (isnan(y[(size_t)(e * n + r)]) ? nan_ok : nan_bad)++;
                continue;
            }
            Cmp c = compare_rows(type, w.data() + ids[e] * mbytes, n, k, x.data() + v * k, xq[v].q.data(), xq[v].dq.data(), quant,
                                 y.data() + e * n, 1);
            bad += c.bad;
            if (!(c.worst <= worst)) worst = c.worst;
        }
        report(rc == 0 && bad == 0 && nan_bad == 0, "batched   %-7s n=%-6lld k=%-6lld %-5s sel=%d mats=%d x=%s: worst %.3g of tol, NaN rows ok %lld bad %lld %s",
               ds4_type_name(type), (long long)n, (long long)k, pass == 2 ? "preq" : mode_name(quant), n_sel, n_mats,
               per_expert_x ? "each" : "shared", worst, (long long)nan_ok, (long long)nan_bad, err);
    }
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(dids);
    cudaFree(dxq);
}

// ---- matrix list, block-local activations, SwiGLU prologue -------------------------------

// One list entry of a test: n_mats matrices of n rows; ids (empty: none, n_sel = n_mats
// used in order); misalign: weight offset in bytes (a non-cp.async entry).
struct LEnt {
    int64_t n;
    int n_mats;
    std::vector<int32_t> ids;
    int misalign;
};

// ds4_cuda_matvec_list over entries of one type sharing x: every row vs the CPU
// reference (invalid ids: NaN rows), and bit-identical to the same matrices launched
// one entry at a time (ds4_cuda_matvec / ds4_cuda_matvec_ids): the list mode must not
// change a value, only the number of launches.
static void test_list(uint32_t type, int64_t k, const std::vector<LEnt> &ents) {
    const uint64_t rb = row_bytes(type, k);
    const int ne = (int)ents.size();
    std::vector<std::vector<uint8_t>> w(ne);
    std::vector<uint8_t *> dwb(ne);
    std::vector<float *> dy(ne), dy1(ne);
    std::vector<int32_t *> dids(ne, nullptr);
    std::vector<ds4_cuda_mv_entry> e(ne);
    std::vector<float> x((size_t)k);
    fill_x(x.data(), k);
    const XQ xq = quantize_cpu(type, x.data(), k);
    float *dx = dalloc<float>((size_t)k * 4);
    CUDA_CHECK(cudaMemcpy(dx, x.data(), (size_t)k * 4, cudaMemcpyHostToDevice));
    std::vector<int> nsel(ne);
    for (int j = 0; j < ne; j++) {
        const LEnt &L = ents[j];
        const uint64_t mb = rb * (uint64_t)L.n;
        w[j].resize(mb * L.n_mats);
        for (int m = 0; m < L.n_mats; m++) fill_weights(type, w[j].data() + m * mb, L.n, k);
        dwb[j] = dalloc<uint8_t>(w[j].size() + 64);
        CUDA_CHECK(cudaMemcpy(dwb[j] + L.misalign, w[j].data(), w[j].size(), cudaMemcpyHostToDevice));
        nsel[j] = L.ids.empty() ? L.n_mats : (int)L.ids.size();
        if (!L.ids.empty()) {
            dids[j] = dalloc<int32_t>(L.ids.size() * 4);
            CUDA_CHECK(cudaMemcpy(dids[j], L.ids.data(), L.ids.size() * 4, cudaMemcpyHostToDevice));
        }
        dy[j] = dalloc<float>((size_t)(L.n * nsel[j]) * 4);
        dy1[j] = dalloc<float>((size_t)(L.n * nsel[j]) * 4);
        e[j].w = {type, dwb[j] + L.misalign, L.n, k, mb, L.n_mats};
        e[j].ids = dids[j];
        e[j].n_sel = nsel[j];
        e[j].y = dy[j];
    }
    char err[256];
    for (int quant = 1; quant >= 0; quant--) {
        const ds4_cuda_act_mode mode = quant ? DS4_CUDA_ACT_QUANT : DS4_CUDA_ACT_F32;
        for (int j = 0; j < ne; j++) {
            poison(dy[j], (size_t)(ents[j].n * nsel[j]));
            poison(dy1[j], (size_t)(ents[j].n * nsel[j]));
        }
        err[0] = 0;
        int rc = ds4_cuda_matvec_list(e.data(), ne, dx, mode, nullptr, err, sizeof err);
        for (int j = 0; j < ne && rc == 0; j++) {
            ds4_cuda_qmat m1 = e[j].w;
            if (!dids[j] && nsel[j] == 1) {
                m1.n_mats = 1;
                rc = ds4_cuda_matvec(&m1, dx, dy1[j], mode, nullptr, err, sizeof err);
            } else {
                rc = ds4_cuda_matvec_ids(&m1, dids[j], nsel[j], dx, 0, dy1[j], mode, nullptr, err, sizeof err);
            }
        }
        CUDA_CHECK(cudaDeviceSynchronize());
        int64_t bad = 0, nan_bad = 0, differ = 0;
        double worst = 0;
        for (int j = 0; j < ne; j++) {
            const LEnt &L = ents[j];
            const uint64_t mb = rb * (uint64_t)L.n;
            std::vector<float> y((size_t)(L.n * nsel[j])), y1(y.size());
            CUDA_CHECK(cudaMemcpy(y.data(), dy[j], y.size() * 4, cudaMemcpyDeviceToHost));
            CUDA_CHECK(cudaMemcpy(y1.data(), dy1[j], y1.size() * 4, cudaMemcpyDeviceToHost));
            for (size_t i = 0; i < y.size(); i++) differ += memcmp(&y[i], &y1[i], 4) != 0;
            for (int s = 0; s < nsel[j]; s++) {
                const int mat = L.ids.empty() ? s : L.ids[s];
                if (mat < 0 || mat >= L.n_mats) {
                    for (int64_t r = 0; r < L.n; r++) nan_bad += !isnan(y[(size_t)(s * L.n + r)]);
                    continue;
                }
                Cmp c = compare_rows(type, w[j].data() + mat * mb, L.n, k, x.data(), xq.q.data(), xq.dq.data(), quant,
                                     y.data() + s * L.n, 1);
                bad += c.bad;
                if (!(c.worst <= worst)) worst = c.worst;
            }
        }
        report(rc == 0 && bad == 0 && nan_bad == 0 && differ == 0,
               "list      %-7s k=%-6lld %-5s entries=%d: worst %.3g of tol, NaN rows bad %lld, %lld outputs differ from one launch per entry %s",
               ds4_type_name(type), (long long)k, mode_name(quant), ne, worst, (long long)nan_bad, (long long)differ, err);
    }
    for (int j = 0; j < ne; j++) {
        cudaFree(dwb[j]);
        cudaFree(dy[j]);
        cudaFree(dy1[j]);
        if (dids[j]) cudaFree(dids[j]);
    }
    cudaFree(dx);
}

// Many selections with their own x and few row groups each, so a block's item range
// spans several selections (block-local activation loading, including blocks that start
// and end inside a selection): ACT_QUANT, ACT_F32 and pre-quantized, vs the CPU.
static void test_own_x(uint32_t type, int64_t n, int64_t k, int n_mats, int n_sel, bool with_ids) {
    const uint64_t rb = row_bytes(type, k), mb = rb * (uint64_t)n;
    std::vector<uint8_t> w(mb * n_mats);
    for (int m = 0; m < n_mats; m++) fill_weights(type, w.data() + m * mb, n, k);
    std::vector<int32_t> ids((size_t)n_sel);
    for (int s = 0; s < n_sel; s++) ids[(size_t)s] = with_ids ? (int32_t)(rng_u64() % (uint64_t)n_mats) : s;
    std::vector<float> x((size_t)(k * n_sel));
    for (int s = 0; s < n_sel; s++) fill_x(x.data() + s * k, k);
    std::vector<XQ> xq;
    for (int s = 0; s < n_sel; s++) xq.push_back(quantize_cpu(type, x.data() + s * k, k));
    uint8_t *dw = dalloc<uint8_t>(w.size());
    float *dx = dalloc<float>(x.size() * 4), *dy = dalloc<float>((size_t)(n * n_sel) * 4);
    int32_t *dids = dalloc<int32_t>(ids.size() * 4);
    CUDA_CHECK(cudaMemcpy(dw, w.data(), w.size(), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    const uint32_t at = ds4_vec_dot_type(type);
    const uint64_t vb = row_bytes(at, k);
    uint8_t *dxq = dalloc<uint8_t>(vb * n_sel);
    ds4_cuda_qmat m = {type, dw, n, k, mb, n_mats};
    std::vector<float> y((size_t)(n * n_sel));
    char err[256];
    for (int pass = 0; pass < 3; pass++) {  // 0: ACT_QUANT, 1: ACT_F32, 2: pre-quantized
        const bool quant = pass != 1;
        err[0] = 0;
        poison(dy, y.size());
        int rc = 0;
        const int32_t *pid = with_ids ? dids : nullptr;
        if (pass < 2) {
            rc = ds4_cuda_matvec_ids(&m, pid, n_sel, dx, k, dy, quant ? DS4_CUDA_ACT_QUANT : DS4_CUDA_ACT_F32, nullptr, err, sizeof err);
        } else {
            if (at == DS4_TYPE_F32)
                CUDA_CHECK(cudaMemcpy(dxq, dx, vb * n_sel, cudaMemcpyDeviceToDevice));
            else
                rc = ds4_cuda_quantize_act(at, dx, dxq, k, n_sel, nullptr, err, sizeof err);
            if (!rc) rc = ds4_cuda_matvec_ids_q(&m, pid, n_sel, dxq, vb, dy, nullptr, err, sizeof err);
        }
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaMemcpy(y.data(), dy, y.size() * 4, cudaMemcpyDeviceToHost));
        int64_t bad = 0;
        double worst = 0;
        for (int s = 0; s < n_sel; s++) {
            Cmp c = compare_rows(type, w.data() + ids[(size_t)s] * mb, n, k, x.data() + s * k, xq[(size_t)s].q.data(),
                                 xq[(size_t)s].dq.data(), quant, y.data() + s * n, 1);
            bad += c.bad;
            if (!(c.worst <= worst)) worst = c.worst;
        }
        report(rc == 0 && bad == 0, "own-x     %-7s n=%-6lld k=%-6lld %-5s sel=%d mats=%d ids=%d: worst %.3g of tol %s",
               ds4_type_name(type), (long long)n, (long long)k, pass == 2 ? "preq" : mode_name(quant), n_sel, n_mats, with_ids ? 1 : 0,
               worst, err);
    }
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(dids);
    cudaFree(dxq);
}

// The backend's swiglu op (cuda_backend.cu k_swiglu, restated here): the in-memory
// vector the fused prologue must reproduce bit for bit.
__global__ void test_swiglu_kernel(const float *g, const float *u, float *out, int64_t n, int64_t k, float limit,
                                   const float *scale) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gv = fminf(g[i], limit);
    const float uv = fminf(fmaxf(u[i], -limit), limit);
    const float silu = gv / (1.0f + expf(-gv));
    out[i] = __fmul_rn(__fmul_rn(silu, uv), scale ? scale[i / k] : 1.0f);
}

static float swiglu_cpu(float g, float u, float limit, float scale) {
    const float gv = fminf(g, limit);
    const float uv = fminf(fmaxf(u, -limit), limit);
    const float silu = gv / (1.0f + expf(-gv));
    return (silu * uv) * scale;
}

// ds4_cuda_matvec_ids_swiglu (the routed experts' down projection with the SwiGLU in
// its prologue). Three checks: (1) the swiglu values the GPU makes in memory agree with
// the CPU formula to 8 ulp (libm's and CUDA's expf differ by up to 2 ulp, then
// a division and two products round on each side); (2) the
// fused result vs the CPU dots over exactly those values (2e-5·S as everywhere);
// (3) fused == swiglu into memory + ds4_cuda_matvec_ids, bit for bit.
static void test_swiglu(uint32_t type, int64_t n, int64_t k, int n_mats, int n_sel, bool scaled) {
    const uint64_t rb = row_bytes(type, k), mb = rb * (uint64_t)n;
    const float limit = 7.0f;
    std::vector<uint8_t> w(mb * n_mats);
    for (int m = 0; m < n_mats; m++) fill_weights(type, w.data() + m * mb, n, k);
    std::vector<int32_t> ids((size_t)n_sel);
    for (int s = 0; s < n_sel; s++) ids[(size_t)s] = (int32_t)(rng_u64() % (uint64_t)n_mats);
    std::vector<float> g((size_t)(k * n_sel)), u(g.size()), sc((size_t)n_sel), xm(g.size());
    for (size_t i = 0; i < g.size(); i++) {
        g[i] = (float)(rng_normal() * 4);  // beyond the clamp at times
        u[i] = (float)(rng_normal() * 4);
    }
    for (auto &v : sc) v = (float)(0.05 + rng_uniform());
    uint8_t *dw = dalloc<uint8_t>(w.size());
    float *dg = dalloc<float>(g.size() * 4), *du = dalloc<float>(g.size() * 4), *dsc = dalloc<float>(sc.size() * 4);
    float *dxm = dalloc<float>(g.size() * 4), *dy = dalloc<float>((size_t)(n * n_sel) * 4), *dy1 = dalloc<float>((size_t)(n * n_sel) * 4);
    int32_t *dids = dalloc<int32_t>(ids.size() * 4);
    CUDA_CHECK(cudaMemcpy(dw, w.data(), w.size(), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dg, g.data(), g.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(du, u.data(), u.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dsc, sc.data(), sc.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    const float *pscale = scaled ? dsc : nullptr;
    const int64_t tot = k * n_sel;
    test_swiglu_kernel<<<(unsigned)((tot + 255) / 256), 256>>>(dg, du, dxm, tot, k, limit, pscale);
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaMemcpy(xm.data(), dxm, xm.size() * 4, cudaMemcpyDeviceToHost));
    int64_t ulp_bad = 0;
    for (size_t i = 0; i < xm.size(); i++) {
        const float ref = swiglu_cpu(g[i], u[i], limit, scaled ? sc[i / (size_t)k] : 1.0f);
        if (!(fabsf(xm[i] - ref) <= 8 * 1.2e-7f * fabsf(ref) + 1e-30f)) ulp_bad++;
    }
    std::vector<XQ> xq;
    for (int s = 0; s < n_sel; s++) xq.push_back(quantize_cpu(type, xm.data() + s * k, k));
    ds4_cuda_qmat m = {type, dw, n, k, mb, n_mats};
    std::vector<float> y((size_t)(n * n_sel)), y1(y.size());
    char err[256];
    for (int quant = 1; quant >= 0; quant--) {
        const ds4_cuda_act_mode mode = quant ? DS4_CUDA_ACT_QUANT : DS4_CUDA_ACT_F32;
        err[0] = 0;
        poison(dy, y.size());
        poison(dy1, y.size());
        int rc = ds4_cuda_matvec_ids_swiglu(&m, dids, n_sel, dg, du, pscale, limit, dy, mode, nullptr, err, sizeof err);
        if (!rc) rc = ds4_cuda_matvec_ids(&m, dids, n_sel, dxm, k, dy1, mode, nullptr, err, sizeof err);
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaMemcpy(y.data(), dy, y.size() * 4, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(y1.data(), dy1, y1.size() * 4, cudaMemcpyDeviceToHost));
        int64_t bad = 0, differ = 0;
        double worst = 0;
        for (size_t i = 0; i < y.size(); i++) differ += memcmp(&y[i], &y1[i], 4) != 0;
        for (int s = 0; s < n_sel; s++) {
            Cmp c = compare_rows(type, w.data() + ids[(size_t)s] * mb, n, k, xm.data() + s * k, xq[(size_t)s].q.data(),
                                 xq[(size_t)s].dq.data(), quant, y.data() + s * n, 1);
            bad += c.bad;
            if (!(c.worst <= worst)) worst = c.worst;
        }
        report(rc == 0 && bad == 0 && differ == 0 && ulp_bad == 0,
               "swiglu    %-7s n=%-6lld k=%-6lld %-5s sel=%d scale=%d: worst %.3g of tol, %lld differ from swiglu+matvec, %lld swiglu values off %s",
               ds4_type_name(type), (long long)n, (long long)k, mode_name(quant), n_sel, scaled ? 1 : 0, worst, (long long)differ,
               (long long)ulp_bad, err);
    }
    for (void *p : {(void *)dw, (void *)dg, (void *)du, (void *)dsc, (void *)dxm, (void *)dy, (void *)dy1, (void *)dids}) cudaFree(p);
}

static void test_list_bad_args() {
    char err[256];
    float *dx = dalloc<float>(4096 * 4), *dy = dalloc<float>(4096 * 4);
    uint8_t *dw = dalloc<uint8_t>(1 << 16);
    ds4_cuda_mv_entry e[3];
    for (auto &en : e) {
        en.w = {DS4_TYPE_Q8_0, dw, 4, 64, 0, 1};
        en.ids = nullptr;
        en.n_sel = 1;
        en.y = dy;
    }
    int rc = ds4_cuda_matvec_list(e, 0, dx, DS4_CUDA_ACT_QUANT, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: list of 0 entries -> %d (%s)", rc, err);
    e[1].w.type = DS4_TYPE_F16;
    e[1].w.k = 64;
    rc = ds4_cuda_matvec_list(e, 3, dx, DS4_CUDA_ACT_QUANT, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: list mixing Q8_0 and F16 -> %d (%s)", rc, err);
    e[1].w.type = DS4_TYPE_Q8_0;
    e[1].w.k = 96;
    rc = ds4_cuda_matvec_list(e, 3, dx, DS4_CUDA_ACT_QUANT, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: list with different k -> %d (%s)", rc, err);
    e[1].w.k = 64;
    e[2].ids = (const int32_t *)dx;
    e[2].n_sel = 63;  // 65 selections in all
    rc = ds4_cuda_matvec_list(e, 3, dx, DS4_CUDA_ACT_QUANT, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: list of 65 selections -> %d (%s)", rc, err);
    ds4_cuda_qmat m = {DS4_TYPE_Q8_0, dw, 4, 64, 0, 1};
    rc = ds4_cuda_matvec_ids_swiglu(&m, nullptr, 1, dx, nullptr, nullptr, 1.0f, dy, DS4_CUDA_ACT_QUANT, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: swiglu without u -> %d (%s)", rc, err);
    CUDA_CHECK(cudaDeviceSynchronize());
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(dw);
}

static void test_bad_args() {
    char err[256];
    float *dx = dalloc<float>(4096 * 4), *dy = dalloc<float>(4096 * 4);
    uint8_t *dw = dalloc<uint8_t>(1 << 16);
    ds4_cuda_qmat m = {DS4_TYPE_Q8_0, dw, 4, 64, 0, 1};
    int rc;
    m.k = 48;  // not a multiple of 32
    rc = ds4_cuda_matvec(&m, dx, dy, DS4_CUDA_ACT_QUANT, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: k %% 32 != 0 -> %d (%s)", rc, err);
    m.k = 64;
    rc = ds4_cuda_matvec(&m, nullptr, dy, DS4_CUDA_ACT_QUANT, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: NULL x -> %d (%s)", rc, err);
    m.type = DS4_TYPE_Q5_K;
    rc = ds4_cuda_matvec(&m, dx, dy, DS4_CUDA_ACT_QUANT, nullptr, err, sizeof err);
    report(rc == DS4_ERR_UNSUPPORTED, "bad args: Q5_K weights -> %d (%s)", rc, err);
    m.type = DS4_TYPE_Q8_0;
    rc = ds4_cuda_matvec_ids(&m, nullptr, 0, dx, 0, dy, DS4_CUDA_ACT_QUANT, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: n_sel 0 -> %d (%s)", rc, err);
    rc = ds4_cuda_matvec_ids(&m, nullptr, 2, dx, 0, dy, DS4_CUDA_ACT_QUANT, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: 2 matrices without ids from a stack of 1 -> %d (%s)", rc, err);
    rc = ds4_cuda_matvec_ids(&m, nullptr, 1, dx, 7, dy, DS4_CUDA_ACT_QUANT, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: x_stride < k -> %d (%s)", rc, err);
    m.n_mats = 4;
    m.mat_stride = 10;
    rc = ds4_cuda_matvec_ids(&m, nullptr, 1, dx, 0, dy, DS4_CUDA_ACT_QUANT, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: mat_stride < matrix bytes -> %d (%s)", rc, err);
    m.n_mats = 1;
    m.k = 1 << 20;  // 1M Q8_K-free Q8_0 activations do not fit in shared memory
    m.n = 1;
    rc = ds4_cuda_matvec(&m, dx, dy, DS4_CUDA_ACT_F32, nullptr, err, sizeof err);
    report(rc == DS4_ERR_UNSUPPORTED, "bad args: k=2^20 f32 activations -> %d (%s)", rc, err);
    // One x per selection: a block holds at least one vector, so this cannot fit either
    // (x and y are never read: the launch is refused on the host).
    m.n_mats = 2;
    m.mat_stride = 1 << 21;  // >= one matrix (34 bytes per 32 weights)
    rc = ds4_cuda_matvec_ids(&m, nullptr, 2, dx, m.k, dy, DS4_CUDA_ACT_F32, nullptr, err, sizeof err);
    report(rc == DS4_ERR_UNSUPPORTED, "bad args: k=2^20 f32 activations, own x per selection -> %d (%s)", rc, err);
    m.n_mats = 1;
    m.mat_stride = 0;
    rc = ds4_cuda_quantize_act(DS4_TYPE_Q8_K, dx, dw, 100, 1, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: quantize Q8_K k=100 -> %d (%s)", rc, err);
    rc = ds4_cuda_quantize_act(DS4_TYPE_Q4_K, dx, dw, 256, 1, nullptr, err, sizeof err);
    report(rc == DS4_ERR_ARG, "bad args: quantize to Q4_K -> %d (%s)", rc, err);
    CUDA_CHECK(cudaDeviceSynchronize());
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(dw);
}

int main(int argc, char **argv) {
    const bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    char err[256] = "";
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        printf("no CUDA device: nothing to test\n");
        return 1;
    }
    if (ds4_cuda_matvec_init(err, sizeof err)) {
        printf("init failed: %s\n", err);
        return 1;
    }
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
    printf("device: %s, %d SMs\n", p.name, p.multiProcessorCount);
    if (argc > 1 && strcmp(argv[1], "--probe") == 0) return 0;

    test_quantizer(DS4_TYPE_Q8_0, 4096, 3);
    test_quantizer(DS4_TYPE_Q8_0, 96, 5);
    // Q8_0 grid tiling: 37 blocks (10 steps: a warp with 2 of its 4, a partial step),
    // 12288 (384 steps: 12 blocks per vector), and rows at 4-byte addresses (scalar loads)
    test_quantizer(DS4_TYPE_Q8_0, 32 * 37, 3);
    test_quantizer(DS4_TYPE_Q8_0, 12288, 2);
    test_quantizer(DS4_TYPE_Q8_0, 32 * 37, 3, 1);
    test_quantizer(DS4_TYPE_Q8_K, 4096, 3);
    test_quantizer(DS4_TYPE_Q8_K, 2048, 6);
    test_bad_args();

    struct Shape {
        uint32_t type;
        int64_t n, k;
        int64_t stride;  // check every stride-th row on the CPU
        bool quick;
    };
    const Shape shapes[] = {
        // Flash shapes (MODEL.md §19 / PERF.md)
        {DS4_TYPE_Q8_0, 1024, 4096, 1, true},     // attn_q_a
        {DS4_TYPE_Q8_0, 32768, 1024, 3, true},    // attn_q_b
        {DS4_TYPE_Q8_0, 4096, 8192, 3, false},    // attn_output_b (chunked rows)
        {DS4_TYPE_Q8_0, 2048, 4096, 1, false},    // shared expert gate/up
        {DS4_TYPE_Q8_0, 129280, 4096, 61, false}, // output (vocab rows, sampled)
        {DS4_TYPE_IQ2_XXS, 2048, 4096, 1, true},  // routed gate/up per expert
        {DS4_TYPE_Q2_K, 4096, 2048, 1, true},     // routed down per expert
        {DS4_TYPE_Q4_K, 2048, 4096, 1, true},     // q4 routed gate/up
        {DS4_TYPE_Q4_K, 4096, 2048, 1, false},    // q4 routed down
        {DS4_TYPE_F16, 256, 4096, 1, true},       // router
        {DS4_TYPE_F16, 24, 16384, 1, false},      // HC-like: long rows, few outputs
        {DS4_TYPE_F32, 64, 4096, 1, true},
        // chunked long rows per type
        {DS4_TYPE_Q2_K, 37, 16384, 1, false},
        {DS4_TYPE_Q4_K, 37, 12288, 1, false},
        {DS4_TYPE_IQ2_XXS, 37, 20480, 1, false},
        {DS4_TYPE_F32, 5, 5000, 1, false},
        // odd tiny shapes
        {DS4_TYPE_Q8_0, 1, 32, 1, true},
        {DS4_TYPE_Q8_0, 3, 96, 1, true},
        {DS4_TYPE_Q8_0, 37, 4128, 1, true},
        {DS4_TYPE_Q2_K, 1, 256, 1, true},
        {DS4_TYPE_Q2_K, 3, 768, 1, true},
        {DS4_TYPE_Q4_K, 1, 256, 1, true},
        {DS4_TYPE_Q4_K, 3, 768, 1, true},
        {DS4_TYPE_IQ2_XXS, 1, 256, 1, true},
        {DS4_TYPE_IQ2_XXS, 3, 768, 1, true},
        {DS4_TYPE_IQ2_XXS, 33, 1280, 1, true},
        {DS4_TYPE_F16, 1, 8, 1, true},
        {DS4_TYPE_F16, 3, 7, 1, true},
        {DS4_TYPE_F16, 37, 4104, 1, true},
        {DS4_TYPE_F32, 1, 4, 1, true},
        {DS4_TYPE_F32, 3, 5, 1, true},
    };
    for (int iqv = 0; iqv < 3; iqv++) {
        ds4_cuda_matvec_set_iq2_variant(iqv);
        printf("-- IQ2_XXS decoder variant %d\n", iqv);
        for (const Shape &s : shapes) {
            if (iqv > 0 && s.type != DS4_TYPE_IQ2_XXS) continue;
            if (quick && !s.quick) continue;
            test_single(s.type, s.n, s.k, 0, s.stride);
        }
        test_batched(DS4_TYPE_IQ2_XXS, 2048, 4096, 64, false, true);
    }
    ds4_cuda_matvec_set_iq2_variant(2);
    // misaligned weights: byte-wise staging
    test_single(DS4_TYPE_Q8_0, 300, 4096, 2, 1);
    test_single(DS4_TYPE_IQ2_XXS, 70, 4096, 2, 1);
    test_single(DS4_TYPE_Q2_K, 70, 2048, 4, 1);
    test_single(DS4_TYPE_Q4_K, 70, 2048, 8, 1);
    test_single(DS4_TYPE_F16, 70, 4096, 2, 1);
    // batched: the MoE decode path
    test_batched(DS4_TYPE_Q2_K, 4096, 2048, 64, true, true);
    test_batched(DS4_TYPE_Q4_K, 2048, 4096, 32, false, false);
    test_batched(DS4_TYPE_Q4_K, 4096, 2048, 32, true, false);
    test_batched(DS4_TYPE_Q8_0, 2048, 4096, 8, false, true);
    test_batched(DS4_TYPE_F16, 300, 1024, 8, true, false);

    // matrix lists sharing x: rows per tile differ per entry (n 1, 3, 37, 300 at
    // k = 1024: R 1..4), a stack entry with repeated and invalid ids, and a misaligned
    // entry (its own launch)
    test_list_bad_args();
    test_list(DS4_TYPE_Q8_0, 1024, {{1, 1, {}, 0}, {3, 1, {}, 0}, {300, 1, {}, 0}, {37, 5, {4, 0, 4, 9, -1}, 0}, {64, 1, {}, 2}});
    // decode's attention input: q_a + kv (Q8_0), compressor + indexer projections (F16)
    test_list(DS4_TYPE_Q8_0, 4096, {{1024, 1, {}, 0}, {512, 1, {}, 0}});
    test_list(DS4_TYPE_F16, 4096, {{1024, 1, {}, 0}, {1024, 1, {}, 0}, {256, 1, {}, 0}, {256, 1, {}, 0}, {64, 1, {}, 0}});
    // the routed experts' gate and up stacks in one launch (MoE decode)
    test_list(DS4_TYPE_IQ2_XXS, 4096, {{2048, 16, {3, 7, 11, 0, 15, 7}, 0}, {2048, 16, {3, 7, 11, 0, 15, 7}, 0}});
    // long rows: Q8_0 chunks differ between 16-byte-aligned and misaligned weights (128
    // vs 135 blocks), so the misaligned entry must keep its own chunking
    test_list(DS4_TYPE_Q8_0, 8192, {{64, 1, {}, 0}, {33, 1, {}, 2}, {5, 1, {}, 0}});
    test_list(DS4_TYPE_Q4_K, 4096, {{300, 8, {1, 5}, 0}, {7, 8, {5, 1}, 0}});
    test_list(DS4_TYPE_Q2_K, 2048, {{5, 1, {}, 0}, {70, 1, {}, 4}, {33, 1, {}, 0}});
    test_list(DS4_TYPE_F16, 7, {{3, 1, {}, 0}, {40, 1, {}, 0}});
    test_list(DS4_TYPE_F32, 4100, {{5, 1, {}, 0}, {2, 1, {}, 0}});
    // one x per selection, block-local loading: o_a (8 groups of 1024 rows, own x), the
    // routed down projections, and many small selections spanning block boundaries
    test_own_x(DS4_TYPE_Q8_0, 1024, 4096, 8, 8, false);
    test_own_x(DS4_TYPE_Q2_K, 4096, 2048, 32, 6, true);
    test_own_x(DS4_TYPE_Q8_0, 3, 4096, 64, 64, true);
    test_own_x(DS4_TYPE_Q2_K, 5, 2048, 40, 40, false);
    test_own_x(DS4_TYPE_IQ2_XXS, 9, 1280, 8, 37, true);
    test_own_x(DS4_TYPE_Q4_K, 130, 256, 8, 23, true);
    test_own_x(DS4_TYPE_F16, 7, 1000, 4, 33, true);
    test_own_x(DS4_TYPE_F32, 2, 5, 3, 50, true);
    // the down projection with the SwiGLU prologue (production: routing weight scale)
    test_swiglu(DS4_TYPE_Q2_K, 4096, 2048, 32, 6, true);
    test_swiglu(DS4_TYPE_Q2_K, 4096, 2048, 32, 6, false);
    test_swiglu(DS4_TYPE_Q4_K, 300, 2048, 8, 6, true);
    test_swiglu(DS4_TYPE_Q8_0, 64, 64, 8, 6, true);
    test_swiglu(DS4_TYPE_Q8_0, 3, 96, 4, 40, true);
    test_swiglu(DS4_TYPE_F16, 33, 64, 8, 6, true);

    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
