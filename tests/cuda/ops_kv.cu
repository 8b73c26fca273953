// ops_kv.cu — cuda-test-ops cases of the compact cached-row layout (kv_fmt.h, backend.h
// kv_row_bytes) in the CUDA ops that write it (compress_rows) and the prefill / generic
// ops that read it (attention, attention_n, indexer_scores, indexer_topk), plus the device
// encoders and decoders themselves. Must not: take an expected value from the GPU except
// as "the same op with f32 rows" in the bit-identity checks (b), whose inputs and layout
// bytes come from the host's kv_fmt.h functions.
//
// (a) compress_rows with compact rows: the bytes equal the host's ds4_kv_attn_encode /
//     ds4_kv_index_encode of the f32 rows the same op writes with compact rows off (same
//     windows, rows outside [w0, w1) untouched, padding zero), and decoding them on the
//     host gives those f32 rows back bit for bit (kv_fmt.h's lossless claim, on real
//     production rows). Tolerance: 0 bytes — the kernel encodes the very f32 values of the
//     f32 layout with the same element codecs and block scales (warp max = sequential max).
// (b) attention (generic), attention_n, indexer_scores, indexer_topk on compact rows equal
//     the same op with compact rows off on the decoded f32 rows, bit for bit (outputs,
//     scores, selected indices). Inputs are production-valid: random rows through the CPU
//     backend's fp8_sim (first hd − n_rot dims) or hadamard_fp4_sim, then round_f16, host-
//     encoded; the f32 rows are the host decoding of those bytes. Tolerance 0: each op
//     decodes exactly (kv_fmt.h decoders) and then feeds the same values to the same
//     arithmetic as the f32 path.
// (c) device round trip: the block encoders (kv_rows.cuh) with one warp and through
//     ds4cu::kv_encode, and the decoders (kv_fmt.h on the device, ds4cu::kv_decode with an
//     index list), against the host functions on random rows that are NOT production-valid
//     (every rounding path, subnormals, signed zeros, f16 overflow, tiny blocks under the
//     amax floor): bytes and decoded floats identical (tolerance 0: the same inline
//     functions with IEEE f32 arithmetic on both sides, no fast-math).
// Only in production numerics on the CUDA backend (the layout exists only there); exact
// numerics checks that kv_row_bytes stays 0 and the test hook cannot turn it on.
#include "ops_harness.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/kv_rows.cuh"
#include "backend/kv_fmt.h"

extern "C" void ds4_cuda_set_kv_compact(ds4_backend *be, int on);
// indexer_n.cu test hook: the scores indexer_topk selects from
void ds4cu_indexer_topk_scores(ds4_backend *be, const float *q, int64_t qs, const float *w, int64_t ws, float scale,
                               int n_head, int64_t hd, const float *keys, int R, int64_t pos0, int n_tok, int k,
                               float *score, int64_t ss);

namespace {

// One result line: name, then "<n> <what>" when what is given.
void verdict(bool ok, const char *name, const char *what = nullptr, long long n = 0) {
    if (what) printf("%s %-56s %lld %s\n", ok ? "ok  " : "FAIL", name, n, what);
    else printf("%s %-56s\n", ok ? "ok  " : "FAIL", name);
    (ok ? g_pass : g_fail)++;
}

// Count of differing bytes (bits identity for floats / ints).
template <typename T>
long long ndiff(const std::vector<T> &a, const std::vector<T> &b) {
    if (a.size() != b.size()) return -1;
    long long n = 0;
    const uint8_t *pa = (const uint8_t *)a.data(), *pb = (const uint8_t *)b.data();
    for (size_t i = 0; i < a.size() * sizeof(T); i++) n += pa[i] != pb[i];
    return n;
}

// ---- device memory helpers (the GPU backend's alloc / write / read) ---------------------
template <typename T>
T *up(ds4_backend *G, const std::vector<T> &v) {
    T *p = (T *)G->alloc(G, std::max<size_t>(1, v.size() * sizeof(T)));
    if (!v.empty()) G->write(G, p, v.data(), v.size() * sizeof(T));
    return p;
}
template <typename T>
std::vector<T> down(ds4_backend *G, const void *p, size_t n) {
    std::vector<T> v(n);
    if (n) G->read(G, v.data(), p, n * sizeof(T));
    return v;
}
void rel(ds4_backend *G, const void *p) { G->release(G, (void *)p); }

// Production-valid rows (host memory, through the CPU backend's ops): attention rows
// (kind ATTN: fp8_sim of the first hd − n_rot dims) or indexer rows (hadamard_fp4_sim),
// then round_f16; values of magnitude ~amp.
std::vector<float> prod_rows(ds4_backend *C, int n, int64_t hd, int kind, int n_rot, float amp) {
    std::vector<float> v = rvec((size_t)n * hd, amp);
    if (kind == DS4_KV_ROW_INDEX) C->hadamard_fp4_sim(C, v.data(), hd, n, hd);
    else if (hd > n_rot) C->fp8_sim(C, v.data(), hd, n, hd - n_rot);
    C->round_f16(C, v.data(), (int64_t)v.size());
    return v;
}

size_t row_bytes(int kind, int64_t hd, int n_rot) {
    return kind == DS4_KV_ROW_INDEX ? ds4_kv_index_row_bytes(hd) : ds4_kv_attn_row_bytes(hd, n_rot);
}
void enc_row(int kind, const float *x, int64_t hd, int n_rot, uint8_t *row) {
    if (kind == DS4_KV_ROW_INDEX) ds4_kv_index_encode(x, hd, row);
    else ds4_kv_attn_encode(x, hd, n_rot, row);
}
void dec_row(int kind, const uint8_t *row, int64_t hd, int n_rot, float *x) {
    if (kind == DS4_KV_ROW_INDEX) ds4_kv_index_decode(row, hd, x);
    else ds4_kv_attn_decode(row, hd, n_rot, x);
}

// Host encoding of n rows into bytes [n][rb] and their decoding into dec [n][hd].
struct Encoded {
    std::vector<uint8_t> bytes;
    std::vector<float> dec;
};
Encoded encode_all(const std::vector<float> &rows, int n, int64_t hd, int kind, int n_rot) {
    const size_t rb = row_bytes(kind, hd, n_rot);
    Encoded e;
    e.bytes.assign((size_t)n * rb, 0);
    e.dec.assign((size_t)n * hd, 0.0f);
    for (int r = 0; r < n; r++) {
        enc_row(kind, rows.data() + (size_t)r * hd, hd, n_rot, e.bytes.data() + (size_t)r * rb);
        dec_row(kind, e.bytes.data() + (size_t)r * rb, hd, n_rot, e.dec.data() + (size_t)r * hd);
    }
    return e;
}

std::vector<float> inv_freq(int n_rot) {
    std::vector<float> v((size_t)std::max(1, n_rot / 2));
    for (int j = 0; j < n_rot / 2; j++) v[(size_t)j] = powf(10000.0f, -2.0f * (float)j / (float)n_rot);
    return v;
}

// k distinct ascending indices < n (k <= n).
std::vector<int32_t> pick(int64_t n, int k) {
    std::vector<int32_t> all((size_t)n);
    for (int64_t i = 0; i < n; i++) all[(size_t)i] = (int32_t)i;
    for (int i = 0; i < k; i++) std::swap(all[(size_t)i], all[(size_t)(i + (int64_t)(urand() * (double)(n - i)))]);
    std::vector<int32_t> r(all.begin(), all.begin() + k);
    std::sort(r.begin(), r.end());
    return r;
}

// ======================================================================== (a) compress_rows
struct CompCase {
    const char *name;
    int64_t hd;
    int n_rot, R, coff, cap;
    bool indexer;
    int64_t w0, w1;
    int off;   // byte offset of the compact rows (any address works)
};

void comp_case(ds4_backend *G, const CompCase &k) {
    char name[160];
    const int kind = k.indexer ? DS4_KV_ROW_INDEX : DS4_KV_ROW_ATTN;
    const int64_t hd = k.hd, rw = 2 * k.coff * hd, cw = k.coff * hd;
    const double eps = 1e-6;
    const std::vector<float> inv = inv_freq(k.n_rot);
    std::vector<float> ring((size_t)(k.cap * rw));
    for (int64_t e = 0; e < k.cap; e++)
        for (int64_t i = 0; i < rw; i++) ring[(size_t)(e * rw + i)] = srand1() * (i < cw ? 2.0f : 3.0f);
    std::vector<float> norm = rvec((size_t)hd, 1);
    for (auto &x : norm) x += 1.0f;
    float *dring = up(G, ring), *dnorm = up(G, norm);
    const size_t nrow = (size_t)k.w1 + 1;
    // f32 layout (compact off): the reference rows
    ds4_cuda_set_kv_compact(G, 0);
    float *d32 = up(G, std::vector<float>(nrow * hd, 0.0f));
    G->compress_rows(G, dring, k.cap, k.R, k.coff, hd, dnorm, eps, k.n_rot, inv.data(), true, k.indexer, k.w0, k.w1, d32);
    const std::vector<float> f32 = down<float>(G, d32, nrow * hd);
    // compact layout: rows outside [w0, w1) hold a pattern that must survive
    ds4_cuda_set_kv_compact(G, 1);
    const size_t rb = G->kv_row_bytes(G, kind, hd, k.n_rot);
    snprintf(name, sizeof name, "prod kv compress_rows %s row bytes", k.name);
    verdict(rb == row_bytes(kind, hd, k.n_rot) && rb % 16 == 0, name, "bytes", (long long)rb);
    std::vector<uint8_t> pat(nrow * rb + (size_t)k.off);
    for (size_t i = 0; i < pat.size(); i++) pat[i] = (uint8_t)(0xA5 ^ (i * 7));
    uint8_t *dc = up(G, pat);
    G->compress_rows(G, dring, k.cap, k.R, k.coff, hd, dnorm, eps, k.n_rot, inv.data(), true, k.indexer, k.w0, k.w1,
                     (float *)(dc + k.off));
    const std::vector<uint8_t> got = down<uint8_t>(G, dc, pat.size());
    ds4_cuda_set_kv_compact(G, 0);
    std::vector<uint8_t> want = pat;
    bool lossless = true;
    std::vector<float> back((size_t)hd);
    for (int64_t w = k.w0; w < k.w1; w++) {
        uint8_t *row = want.data() + k.off + (size_t)w * rb;
        enc_row(kind, f32.data() + (size_t)w * hd, hd, k.n_rot, row);
        dec_row(kind, row, hd, k.n_rot, back.data());
        lossless = lossless && memcmp(back.data(), f32.data() + (size_t)w * hd, (size_t)hd * 4) == 0;
    }
    const long long nd = ndiff(want, got);
    snprintf(name, sizeof name, "prod kv compress_rows %s == host encode", k.name);
    verdict(nd == 0, name, "bytes differ", nd);
    snprintf(name, sizeof name, "prod kv compress_rows %s lossless", k.name);
    verdict(lossless, name);
    rel(G, dring);
    rel(G, dnorm);
    rel(G, d32);
    rel(G, dc);
}

// ======================================================================== (b) readers
// Both layouts of the same rows on the device.
struct Rows2 {
    float *f32;    // decoded rows [n][hd]
    uint8_t *cmp;  // compact rows [n][rb]
    std::vector<float> dec;
    bool lossless;
};
Rows2 put_rows(ds4_backend *C, ds4_backend *G, int n, int64_t hd, int kind, int n_rot, float amp) {
    const std::vector<float> rows = prod_rows(C, n, hd, kind, n_rot, amp);
    Encoded e = encode_all(rows, n, hd, kind, n_rot);
    Rows2 r;
    r.lossless = memcmp(rows.data(), e.dec.data(), rows.size() * 4) == 0;
    r.f32 = up(G, e.dec);
    r.cmp = up(G, e.bytes);
    r.dec = std::move(e.dec);
    return r;
}
void drop2(ds4_backend *G, Rows2 &r) {
    rel(G, r.f32);
    rel(G, r.cmp);
}

// Runs fn(rows pointer) with compact off on the f32 rows and on with the compact rows,
// reading n values of T at out after each; verdict on bit identity.
template <typename T, typename Fn>
void both(ds4_backend *G, const char *name, const Rows2 &r, const void *out, size_t n, Fn fn) {
    ds4_cuda_set_kv_compact(G, 0);
    fn((const float *)r.f32);
    const std::vector<T> a = down<T>(G, out, n);
    ds4_cuda_set_kv_compact(G, 1);
    fn((const float *)r.cmp);
    const std::vector<T> b = down<T>(G, out, n);
    ds4_cuda_set_kv_compact(G, 0);
    const long long nd = ndiff(a, b);
    char line[200];
    snprintf(line, sizeof line, "%s%s", name, r.lossless ? "" : " (rows NOT lossless)");
    verdict(nd == 0 && r.lossless, line, "bytes differ", nd);
}

struct AttCase {
    const char *name;
    int nh;
    int64_t hd;
    int na, nrows_b, nb;
};
void att_case(ds4_backend *C, ds4_backend *G, int n_rot, const AttCase &k) {
    char name[160];
    const int64_t hd = k.hd;
    float *q = up(G, rvec((size_t)k.nh * hd, 0.5f)), *raw = up(G, rvec((size_t)k.na * hd));
    float *sinks = up(G, rvec((size_t)k.nh, 2.0f));
    float *out = up(G, std::vector<float>((size_t)k.nh * hd, 0.0f));
    Rows2 r = put_rows(C, G, k.nrows_b, hd, DS4_KV_ROW_ATTN, n_rot, 1.5f);
    std::vector<int32_t> ia((size_t)k.na), ib((size_t)k.nb);
    for (int j = 0; j < k.na; j++) ia[(size_t)j] = k.na - 1 - j;
    for (int j = 0; j < k.nb; j++) ib[(size_t)j] = (int32_t)(urand() * k.nrows_b);   // repeats allowed
    snprintf(name, sizeof name, "prod kv attention %s", k.name);
    both<float>(G, name, r, out, (size_t)k.nh * hd, [&](const float *rows_b) {
        G->attention(G, q, k.nh, hd, raw, ia.data(), k.na, rows_b, ib.data(), k.nb, sinks, 0.0625f, out);
    });
    rel(G, q);
    rel(G, raw);
    rel(G, sinks);
    rel(G, out);
    drop2(G, r);
}

struct AnCase {
    const char *name;
    int nh;
    int64_t hd;
    int n_rot, n_win, raw_cap, R, k_top;
    bool use_idx;
    int64_t pos0;
    int n_tok;
};
void an_case(ds4_backend *C, ds4_backend *G, const AnCase &k) {
    char name[160];
    const int64_t hd = k.hd, qs = k.nh * hd;
    const int64_t ncm = (k.pos0 + k.n_tok) / k.R;
    float *q = up(G, rvec((size_t)(k.n_tok * qs), 0.5f));
    float *raw = up(G, prod_rows(C, k.raw_cap, hd, DS4_KV_ROW_ATTN, k.n_rot, 1.0f));
    float *sinks = up(G, rvec((size_t)k.nh, 2.0f));
    float *out = up(G, std::vector<float>((size_t)(k.n_tok * qs), 0.75f));
    Rows2 r = put_rows(C, G, (int)std::max<int64_t>(1, ncm), hd, DS4_KV_ROW_ATTN, k.n_rot, 1.0f);
    int32_t *idx = nullptr;
    if (k.use_idx) {
        std::vector<int32_t> hidx((size_t)k.n_tok * k.k_top, 0);
        for (int t = 0; t < k.n_tok; t++) {
            const int64_t nv = (k.pos0 + t + 1) / k.R;
            if (nv > k.k_top) {
                const std::vector<int32_t> s = pick(nv, k.k_top);
                std::copy(s.begin(), s.end(), hidx.begin() + (size_t)t * k.k_top);
            }
        }
        idx = up(G, hidx);
    }
    const std::vector<float> inv = inv_freq(k.n_rot);
    snprintf(name, sizeof name, "prod kv attention_n %s", k.name);
    both<float>(G, name, r, out, (size_t)(k.n_tok * qs), [&](const float *comp) {
        G->attention_n(G, q, qs, k.nh, hd, raw, k.raw_cap, k.n_win, comp, k.R, idx, k.k_top, sinks, 0.0625f, k.n_rot,
                       k.pos0, k.n_tok, inv.data(), out, qs);
    });
    rel(G, q);
    rel(G, raw);
    rel(G, sinks);
    rel(G, out);
    if (idx) rel(G, idx);
    drop2(G, r);
}

struct IdxCase {
    const char *name;
    int nh;
    int64_t hd;
    int n_keys;            // indexer_scores
    int R, n_tok, k;       // indexer_topk (n_tok 0: none)
    int64_t pos0;
};
void idx_case(ds4_backend *C, ds4_backend *G, const IdxCase &c) {
    char name[160];
    const int64_t hd = c.hd;
    const float scale = 1.0f / sqrtf((float)(hd * c.nh));
    if (c.n_keys > 0 && G->indexer_scores) {
        std::vector<float> qh = rvec((size_t)c.nh * hd);
        C->hadamard_fp4_sim(C, qh.data(), hd, c.nh, hd);
        float *q = up(G, qh), *w = up(G, rvec((size_t)c.nh));
        float *score = up(G, std::vector<float>((size_t)c.n_keys, 0.0f));
        Rows2 r = put_rows(C, G, c.n_keys, hd, DS4_KV_ROW_INDEX, 0, 1.0f);
        snprintf(name, sizeof name, "prod kv indexer_scores %s", c.name);
        both<float>(G, name, r, score, (size_t)c.n_keys, [&](const float *keys) {
            G->indexer_scores(G, q, w, scale, c.nh, hd, keys, c.n_keys, score);
        });
        rel(G, q);
        rel(G, w);
        rel(G, score);
        drop2(G, r);
    }
    if (c.n_tok > 0 && G->indexer_topk) {
        const int64_t qs = c.nh * hd, nv_max = (c.pos0 + c.n_tok) / c.R;
        std::vector<float> qh = rvec((size_t)(c.n_tok * qs));
        C->hadamard_fp4_sim(C, qh.data(), hd, c.n_tok * c.nh, hd);
        float *q = up(G, qh), *w = up(G, rvec((size_t)c.n_tok * c.nh));
        int32_t *idx = up(G, std::vector<int32_t>((size_t)c.n_tok * c.k, -1));
        float *score = up(G, std::vector<float>((size_t)(c.n_tok * nv_max), -1.0f));
        Rows2 r = put_rows(C, G, (int)nv_max, hd, DS4_KV_ROW_INDEX, 0, 1.0f);
        snprintf(name, sizeof name, "prod kv indexer_topk %s idx", c.name);
        both<int32_t>(G, name, r, idx, (size_t)c.n_tok * c.k, [&](const float *keys) {
            G->indexer_topk(G, q, qs, w, c.nh, scale, c.nh, hd, keys, c.R, c.pos0, c.n_tok, c.k, idx);
        });
        snprintf(name, sizeof name, "prod kv indexer_topk %s scores", c.name);
        both<float>(G, name, r, score, (size_t)(c.n_tok * nv_max), [&](const float *keys) {
            ds4cu_indexer_topk_scores(G, q, qs, w, c.nh, scale, c.nh, hd, keys, c.R, c.pos0, c.n_tok, c.k, score,
                                      nv_max);
        });
        rel(G, q);
        rel(G, w);
        rel(G, idx);
        rel(G, score);
        drop2(G, r);
    }
}

// ======================================================================== (c) round trip
__global__ void k_enc_warp(const float *x, int kind, int hd, int n_rot, uint8_t *out, int64_t rb) {
    const float *r = x + (int64_t)blockIdx.x * hd;
    uint8_t *o = out + (int64_t)blockIdx.x * rb;
    if (kind == DS4_KV_ROW_INDEX) ds4cu::kv::encode_index_block(r, hd, o);
    else ds4cu::kv::encode_attn_block(r, hd, n_rot, o);
}
__global__ void k_dec(const uint8_t *rows, int64_t rb, int kind, int hd, int n_rot, int n, float *out) {
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < (int64_t)n * hd; e += (int64_t)gridDim.x * blockDim.x) {
        const uint8_t *row = rows + (e / hd) * rb;
        out[e] = kind == DS4_KV_ROW_INDEX ? ds4_kv_index_get(row, hd, e % hd) : ds4_kv_attn_get(row, hd, n_rot, e % hd);
    }
}

// Rows that exercise every path: per 16-element group a random binary exponent in
// [−40, 24]; sprinkled exact zeros, −0, f32 subnormals, values on E4M3 / E2M1 ties, f16
// overflow in the rope dims; one all-zero row and one row under the FP8 amax floor.
std::vector<float> wild_rows(int n, int64_t hd) {
    std::vector<float> v((size_t)n * hd);
    for (int r = 0; r < n; r++) {
        float *x = v.data() + (size_t)r * hd;
        for (int64_t i = 0; i < hd; i++) {
            const int e = (int)((i / 16 * 7919 + r * 104729) % 65) - 40;
            const double u = urand();
            float val = srand1() * ldexpf(1.0f, e);
            if (u < 0.03) val = 0.0f;
            else if (u < 0.06) val = -0.0f;
            else if (u < 0.08) val = srand1() * 1e-40f;
            else if (u < 0.12) val = ldexpf(1.0625f, e) * (urand() < 0.5 ? -1.0f : 1.0f);   // E4M3 tie
            else if (u < 0.16) val = ldexpf(1.25f, e) * (urand() < 0.5 ? -1.0f : 1.0f);     // E2M1 tie
            else if (u < 0.17) val = srand1() * 1e5f;                                        // f16 overflow (rope)
            x[i] = val;
        }
        if (r == 0) std::fill(x, x + hd, 0.0f);
        if (r == 1)
            for (int64_t i = 0; i < hd; i++) x[i] = srand1() * 1e-6f;
    }
    return v;
}

void roundtrip_case(ds4_backend *G, int64_t hd, int kind, int n_rot, int n) {
    char name[160];
    const char *kn = kind == DS4_KV_ROW_INDEX ? "index" : "attn";
    const size_t rb = row_bytes(kind, hd, n_rot);
    const std::vector<float> rows = wild_rows(n, hd);
    Encoded e = encode_all(rows, n, hd, kind, n_rot);
    float *dx = up(G, rows);
    uint8_t *db = up(G, std::vector<uint8_t>((size_t)n * rb, 0x5A));
    // one warp per row (the block encoder's loops over several blocks per warp)
    k_enc_warp<<<n, 32, 0, ds4cu::stream(G)>>>(dx, kind, (int)hd, n_rot, db, (int64_t)rb);
    DS4CU_CKL();
    long long nd = ndiff(e.bytes, down<uint8_t>(G, db, (size_t)n * rb));
    snprintf(name, sizeof name, "prod kv device encode %s hd %lld rot %d (1 warp)", kn, (long long)hd, n_rot);
    verdict(nd == 0, name, "bytes differ", nd);
    // ds4cu::kv_encode (256 threads), every other row of a strided source
    G->write(G, db, std::vector<uint8_t>((size_t)n * rb, 0x5A).data(), (size_t)n * rb);
    ds4cu::kv_encode(G, dx, 2 * hd, n / 2, kind, hd, n_rot, db);
    std::vector<uint8_t> want((size_t)n * rb, 0x5A);
    for (int r = 0; r < n / 2; r++)
        std::copy(e.bytes.begin() + (size_t)(2 * r) * rb, e.bytes.begin() + (size_t)(2 * r + 1) * rb,
                  want.begin() + (size_t)r * rb);
    nd = ndiff(want, down<uint8_t>(G, db, (size_t)n * rb));
    snprintf(name, sizeof name, "prod kv kv_encode %s hd %lld rot %d", kn, (long long)hd, n_rot);
    verdict(nd == 0, name, "bytes differ", nd);
    // decoders: every element, then a gathered list through ds4cu::kv_decode
    G->write(G, db, e.bytes.data(), (size_t)n * rb);
    float *dd = up(G, std::vector<float>((size_t)n * hd, 0.0f));
    k_dec<<<64, 256, 0, ds4cu::stream(G)>>>(db, (int64_t)rb, kind, (int)hd, n_rot, n, dd);
    DS4CU_CKL();
    nd = ndiff(e.dec, down<float>(G, dd, (size_t)n * hd));
    snprintf(name, sizeof name, "prod kv device decode %s hd %lld rot %d", kn, (long long)hd, n_rot);
    verdict(nd == 0, name, "bytes differ", nd);
    std::vector<int32_t> ix((size_t)n);
    for (int j = 0; j < n; j++) ix[(size_t)j] = (int32_t)(urand() * n);
    int32_t *dix = up(G, ix);
    ds4cu::kv_decode(G, db, kind, hd, n_rot, dix, n, dd);
    std::vector<float> wantd((size_t)n * hd);
    for (int j = 0; j < n; j++)
        std::copy(e.dec.begin() + (size_t)ix[(size_t)j] * hd, e.dec.begin() + (size_t)(ix[(size_t)j] + 1) * hd,
                  wantd.begin() + (size_t)j * hd);
    nd = ndiff(wantd, down<float>(G, dd, (size_t)n * hd));
    snprintf(name, sizeof name, "prod kv kv_decode %s hd %lld rot %d (gather)", kn, (long long)hd, n_rot);
    verdict(nd == 0, name, "bytes differ", nd);
    rel(G, dx);
    rel(G, db);
    rel(G, dd);
    rel(G, dix);
}

void run_all(ds4_backend *C, ds4_backend *G) {
    // (c) the codecs first: everything else relies on them
    const struct { int64_t hd; int kind, n_rot; } rt[] = {
        {512, DS4_KV_ROW_ATTN, 64}, {128, DS4_KV_ROW_INDEX, 0}, {200, DS4_KV_ROW_ATTN, 64}, {63, DS4_KV_ROW_ATTN, 16},
        {48, DS4_KV_ROW_INDEX, 0},  {63, DS4_KV_ROW_INDEX, 0},  {32, DS4_KV_ROW_ATTN, 32},  {64, DS4_KV_ROW_ATTN, 0},
        {4096, DS4_KV_ROW_ATTN, 64},
    };
    for (const auto &c : rt) roundtrip_case(G, c.hd, c.kind, c.n_rot, 64);

    // (a) compress_rows
    if (!G->compress_rows) {
        printf("skip prod kv compress_rows (not provided)\n");
    } else {
        const CompCase cc[] = {
            // Flash CSA compressor (hd 512, n_rot 64, R 4, coff 2): a 2048-token chunk's windows
            {"csa-512", 512, 64, 4, 2, 256, false, 37, 549, 0},
            // Flash indexer rows (hd 128: Hadamard + FP4) from window 0
            {"idx-w0-300", 128, 64, 4, 2, 256, true, 0, 300, 0},
            // Flash HCA (coff 1, R 128) across a ring wrap
            {"hca-16", 512, 64, 128, 1, 512, false, 3, 19, 0},
            // compact rows at an odd address: the f32 layout's (aligned) rmsnorm plan stays
            {"csa-off3", 512, 64, 4, 2, 64, false, 10, 40, 3},
            // odd shapes: partial FP8 / FP4 blocks, no Hadamard, odd hd (scalar rmsnorm,
            // a half-filled last nibble byte), nothing / everything rotated
            {"hd48-idx", 48, 16, 2, 2, 8, true, 0, 9, 0},
            {"hd48", 48, 16, 2, 2, 8, false, 2, 9, 0},
            {"hd200-rot64", 200, 64, 3, 1, 12, false, 5, 12, 0},
            {"hd63-rot16", 63, 16, 3, 1, 12, false, 0, 7, 0},
            {"hd63-idx", 63, 16, 3, 1, 12, true, 0, 7, 0},
            {"norot", 64, 0, 4, 2, 16, false, 0, 6, 0},
            {"allrot", 32, 32, 2, 1, 8, false, 0, 5, 0},
            // beyond the kernel's shared memory: op sequence on an f32 row, then kv_encode
            {"hd16384-fallback", 16384, 64, 2, 1, 4, false, 1, 3, 0},
        };
        for (const CompCase &k : cc) comp_case(G, k);
    }

    // (b) readers; the generic attention op decodes with the model's n_rot (64 in the
    // test mapping, test_ops.cu)
    const AttCase ac[] = {
        {"64x512 128+512 of 1000 rows", 64, 512, 128, 1000, 512},
        {"3x200 5+37 of 50 rows", 3, 200, 5, 50, 37},
    };
    for (const AttCase &k : ac) att_case(C, G, 64, k);
    if (!G->attention_n) {
        printf("skip prod kv attention_n (not provided)\n");
    } else {
        const AnCase an[] = {
            // Flash CSA (tensor path) with top-k rows, Flash HCA (all visible rows)
            {"flash-csa-24 idx", 64, 512, 64, 128, 256, 4, 32, true, 1000, 24},
            {"flash-hca-8", 64, 512, 64, 128, 256, 128, 0, false, 1500, 8},
            // tensor path hd 64; f32 path (hd 200) with idx; the huge-hd per-token fallback
            {"hd64-rot16-9", 4, 64, 16, 8, 16, 4, 0, false, 30, 9},
            {"hd200-rot16-7 idx", 5, 200, 16, 6, 16, 3, 4, true, 50, 7},
            {"hd4096-fallback idx", 2, 4096, 64, 4, 8, 2, 2, true, 10, 2},
        };
        for (const AnCase &k : an) an_case(C, G, k);
    }
    const IdxCase ic[] = {
        // Flash indexer: scores over 1000 keys; top-512 of ~750 keys (tensor path)
        {"64x128", 64, 128, 1000, 4, 40, 512, 3000},
        // odd: no Hadamard (hd 48), f32 paths
        {"5x48", 5, 48, 45, 2, 9, 8, 100},
    };
    for (const IdxCase &c : ic) idx_case(C, G, c);
}

}  // namespace

void ops_kv(ds4_backend *C, ds4_backend *G, const char *mode) {
    (void)mode;
    if (!strcmp(G->name, "cpu")) {   // --cpu-self: the layout is the CUDA backend's
        printf("skip kv compact rows (CPU self-check)\n");
        return;
    }
    const uint64_t rng = g_rng;   // later files see the same data whether this runs or not
    const bool was = ds4cu::kv_compact(G);
    if (G->numerics != DS4_NUM_PROD) {
        // the layout exists only in production numerics
        ds4_cuda_set_kv_compact(G, 1);
        const bool off = !ds4cu::kv_compact(G) && G->kv_row_bytes && G->kv_row_bytes(G, DS4_KV_ROW_ATTN, 512, 64) == 0 &&
                         G->kv_row_bytes(G, DS4_KV_ROW_INDEX, 128, 0) == 0;
        verdict(off, "exact kv rows stay f32 (kv_row_bytes 0)");
    } else if (!G->kv_row_bytes) {
        printf("skip prod kv compact rows (kv_row_bytes not provided)\n");
    } else {
        run_all(C, G);
    }
    ds4_cuda_set_kv_compact(G, was ? 1 : 0);
    g_rng = rng;
}
