/* test_kv_fmt.c — the compact KV row codecs of src/backend/kv_fmt.h.
 *
 * References, never the codec itself: E4M3FN / E2M1 values written from their
 * definitions (sign · 2^(E−bias) · 1.m, subnormals 2^(1−bias) · 0.m) and nearest-value
 * searches over those tables (ties to the even code); the CPU backend's
 * ds4_fp8_e4m3_round / ds4_fp4_e2m1_round (backend.h: "used by tests as definitions"); the
 * project's f16 conversions (src/model/quant.c, themselves tested against definitions in
 * test_quant_fp.c); and for the lossless claim, the CPU backend's production simulation
 * ops (fp8_sim, hadamard_fp4_sim, round_f16) whose outputs must survive encode → decode
 * bit for bit, with each block's scale byte the simulation's scale rule (so a host and a
 * device encoder agree on the bytes, not only on the values).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/kv_fmt.h"
#include "core/common.h"
#include "model/layout.h"
#include "model/quant.h"
#include "test.h"

static uint32_t fb(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bf(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* E4M3FN by definition: bias 7, no infinities, S.1111.111 is NaN. */
static double e4m3_def(int c) {
    const int s = c >> 7, E = (c >> 3) & 15, m = c & 7;
    double v = E == 0 ? ldexp((double)m, -9) : ldexp((double)(8 + m), E - 10);
    return s ? -v : v;
}

/* E2M1 by definition: bias 1, E = 0 subnormal 0.5·m. */
static double e2m1_def(int c) {
    const int s = c >> 3, E = (c >> 1) & 3, m = c & 1;
    double v = E == 0 ? 0.5 * m : ldexp((double)(2 + m), E - 2);
    return s ? -v : v;
}

/* Nearest finite E4M3FN magnitude code (0..0x7E) of |v|, ties to the even code (= even
 * mantissa), saturating: the reference rounding. */
static int e4m3_nearest(double a) {
    int best = 0;
    double bd = INFINITY;
    for (int c = 0; c <= 0x7E; c++) {
        double d = fabs(a - e4m3_def(c));
        if (d < bd || (d == bd && (c & 1) == 0)) {
            bd = d;
            best = c;
        }
    }
    return best;
}

static int e2m1_nearest(double a) {
    int best = 0;
    double bd = INFINITY;
    for (int c = 0; c < 8; c++) {
        double d = fabs(a - e2m1_def(c));
        if (d < bd || (d == bd && (c & 1) == 0)) {
            bd = d;
            best = c;
        }
    }
    return best;
}

DS4_TEST(kv_fmt_e4m3_codes_round_trip) {
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7F) == 0x7F) continue; /* NaN codes */
        const float v = ds4_kv_e4m3_decode((uint8_t)c);
        const double want = e4m3_def(c);
        if ((double)v != want || (signbit(v) != 0) != ((c & 0x80) != 0)) bad++;
        if (ds4_kv_e4m3_encode(v) != c) bad++;
    }
    CHECK(bad == 0, "%d E4M3 codes decode wrong or do not encode back", bad);
    CHECK(ds4_kv_e4m3_decode(0x7E) == 448.0f && ds4_kv_e4m3_decode(0x01) == 0x1p-9f);
}

/* encode(v) decodes to ds4_fp8_e4m3_round(v) and to the nearest-code reference, over
 * every midpoint between consecutive codes (ties) and its neighbours, a dense grid,
 * subnormals, saturation, −0 and infinities. */
DS4_TEST(kv_fmt_e4m3_encode_is_the_rounding) {
    float *vals = malloc(sizeof(float) * 400000);
    REQUIRE(vals != NULL);
    int n = 0;
    for (int c = 0; c < 0x7E; c++) {
        const float lo = (float)e4m3_def(c), hi = (float)e4m3_def(c + 1), mid = (float)(0.5 * ((double)lo + hi));
        vals[n++] = lo;
        vals[n++] = mid;
        vals[n++] = nextafterf(mid, 0.0f);
        vals[n++] = nextafterf(mid, INFINITY);
        vals[n++] = (float)(0.25 * lo + 0.75 * hi);
    }
    const float extra[] = {0.0f, -0.0f, 448.0f, 449.0f, 464.0f, 479.9f, 480.0f, 1e6f, 3e38f, INFINITY, -INFINITY,
                           0x1p-10f, nextafterf(0x1p-10f, 1), 0x1p-11f, 1e-30f, 1e-45f, 0x1p-6f, nextafterf(0x1p-6f, 0)};
    for (size_t i = 0; i < DS4_ARRAY_LEN(extra); i++) vals[n++] = extra[i];
    for (int i = 0; i <= 200000; i++) vals[n++] = (float)(i * (460.0 / 200000.0));
    ds4_test_rng rng = {7};
    for (int i = 0; i < 50000; i++) vals[n++] = (float)ldexp(ds4_test_rng_uniform(&rng), (int)(ds4_test_rng_u64(&rng) % 30) - 20);
    int bad = 0, bad_ref = 0;
    for (int i = 0; i < n; i++)
        for (int sg = 0; sg < 2; sg++) {
            const float v = sg ? -vals[i] : vals[i];
            const float got = ds4_kv_e4m3_decode(ds4_kv_e4m3_encode(v));
            const float want = ds4_fp8_e4m3_round(v);
            if (fb(got) != fb(want)) {
                if (bad++ < 5) fprintf(stderr, "    e4m3 %.9g: got %.9g, round %.9g\n", v, got, want);
            }
            const int rc = e4m3_nearest(fabs((double)v));
            const double ref = signbit(v) ? -e4m3_def(rc) : e4m3_def(rc);
            if ((double)got != ref || signbit(got) != signbit(v)) bad_ref++;
        }
    CHECK(bad == 0, "%d of %d values differ from ds4_fp8_e4m3_round", bad, 2 * n);
    CHECK(bad_ref == 0, "%d of %d values differ from the nearest-code reference", bad_ref, 2 * n);
    free(vals);
}

DS4_TEST(kv_fmt_e2m1_codes_and_rounding) {
    int bad = 0;
    for (int c = 0; c < 16; c++) {
        const float v = ds4_kv_e2m1_decode((uint8_t)c);
        if ((double)v != e2m1_def(c) || (signbit(v) != 0) != ((c & 8) != 0)) bad++;
        if (ds4_kv_e2m1_encode(v) != c) bad++;
    }
    CHECK(bad == 0, "%d E2M1 codes decode wrong or do not encode back", bad);
    /* every multiple of 1/256 in [0, 8.25] (all ties are multiples of 1/4), ± one ulp
     * around each, −0 */
    int n = 0, bad_round = 0, bad_ref = 0;
    for (int i = 0; i <= 8 * 256 + 64; i++) {
        const float base = (float)i / 256.0f;
        const float vs[3] = {base, nextafterf(base, 0.0f), nextafterf(base, INFINITY)};
        for (int k = 0; k < 3; k++)
            for (int sg = 0; sg < 2; sg++) {
                const float v = sg ? -vs[k] : vs[k];
                const float got = ds4_kv_e2m1_decode(ds4_kv_e2m1_encode(v));
                if (fb(got) != fb(ds4_fp4_e2m1_round(v))) bad_round++;
                const int rc = e2m1_nearest(fabs((double)v));
                const double ref = signbit(v) ? -e2m1_def(rc) : e2m1_def(rc);
                if ((double)got != ref || signbit(got) != signbit(v)) bad_ref++;
                n++;
            }
    }
    /* saturation (the simulation clamps to ±6 before rounding, so ds4_fp4_e2m1_round is
     * not the reference out there: its distance search degenerates for huge values) */
    const float big[] = {1e9f, INFINITY, 6.5f, 1e30f};
    for (size_t i = 0; i < DS4_ARRAY_LEN(big); i++) {
        CHECK(ds4_kv_e2m1_decode(ds4_kv_e2m1_encode(big[i])) == 6.0f, "%g", big[i]);
        CHECK(ds4_kv_e2m1_decode(ds4_kv_e2m1_encode(-big[i])) == -6.0f, "%g", -big[i]);
    }
    CHECK(fb(ds4_kv_e2m1_decode(ds4_kv_e2m1_encode(-1e-40f))) == fb(-0.0f));
    CHECK(bad_round == 0, "%d of %d values differ from ds4_fp4_e2m1_round", bad_round, n);
    CHECK(bad_ref == 0, "%d of %d values differ from the nearest-value reference", bad_ref, n);
}

/* f16: all 65536 bit patterns against the project's conversions, then f32 → f16 on every
 * f16 value, every midpoint between neighbours (ties to even) ± 1 f32 ulp, the overflow
 * edge and random f32 bit patterns over the whole exponent range. */
DS4_TEST(kv_fmt_f16_matches_project_conversions) {
    int bad_dec = 0, bad_enc = 0, n_enc = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        const float a = ds4_kv_f16_to_f32((uint16_t)h), b = ds4_f16_to_f32((uint16_t)h);
        const bool nan = ((h >> 10) & 31) == 31 && (h & 1023);
        if (nan ? !(isnan(a) && isnan(b) && signbit(a) == signbit(b)) : fb(a) != fb(b)) bad_dec++;
        if (nan) continue;
        float probe[4] = {b, 0, 0, 0};
        int np = 1;
        if ((h & 0x7FFF) < 0x7BFF) { /* midpoint to the next larger magnitude */
            const double m = 0.5 * ((double)b + (double)ds4_f16_to_f32((uint16_t)(h + 1)));
            probe[np++] = (float)m;
            probe[np++] = nextafterf((float)m, 0.0f);
            probe[np++] = nextafterf((float)m, (h & 0x8000) ? -INFINITY : INFINITY);
        }
        for (int k = 0; k < np; k++, n_enc++)
            if (ds4_kv_f32_to_f16(probe[k]) != ds4_f32_to_f16(probe[k])) {
                if (bad_enc++ < 5) fprintf(stderr, "    f16 of %.9g: %04x vs %04x\n", probe[k], ds4_kv_f32_to_f16(probe[k]), ds4_f32_to_f16(probe[k]));
            }
    }
    const float edge[] = {65504.0f, 65519.0f, nextafterf(65520.0f, 0), 65520.0f, 65536.0f, 1e30f, INFINITY,
                          -65520.0f, 0x1p-24f, 0x1p-25f, nextafterf(0x1p-25f, 1), 0x1p-26f, 1e-45f, -0.0f, 0.0f};
    for (size_t i = 0; i < DS4_ARRAY_LEN(edge); i++, n_enc++)
        if (ds4_kv_f32_to_f16(edge[i]) != ds4_f32_to_f16(edge[i])) bad_enc++;
    ds4_test_rng rng = {11};
    for (int i = 0; i < 1000000; i++) {
        const float v = bf((uint32_t)ds4_test_rng_u64(&rng));
        if (isnan(v)) {
            const uint16_t h = ds4_kv_f32_to_f16(v);
            if (!(((h >> 10) & 31) == 31 && (h & 1023))) bad_enc++; /* stays a NaN */
            continue;
        }
        n_enc++;
        if (ds4_kv_f32_to_f16(v) != ds4_f32_to_f16(v)) bad_enc++;
    }
    CHECK(bad_dec == 0, "%d f16 patterns decode differently", bad_dec);
    CHECK(bad_enc == 0, "%d of %d f32 values encode differently", bad_enc, n_enc);
}

DS4_TEST(kv_fmt_row_sizes) {
    /* Flash: 64 rope dims · 2 B + 448 codes + 7 scales = 583 → 592; indexer 64 + 4 → 80 */
    CHECK_EQ_INT(ds4_kv_attn_row_bytes(512, 64), 592);
    CHECK_EQ_INT(ds4_kv_index_row_bytes(128), 80);
    /* in-test model (hd 32, rope 16): 32 + 16 + 1 = 49 → 64; indexer 16: 8 + 1 → 16 */
    CHECK_EQ_INT(ds4_kv_attn_row_bytes(32, 16), 64);
    CHECK_EQ_INT(ds4_kv_index_row_bytes(16), 16);
    /* synthetic tiny (hd 64, rope 32): 64 + 32 + 1 = 97 → 112; indexer 64: 32 + 2 → 48 */
    CHECK_EQ_INT(ds4_kv_attn_row_bytes(64, 32), 112);
    CHECK_EQ_INT(ds4_kv_index_row_bytes(64), 48);
    /* odd shapes: hd 100 rope 6: 12 + 94 + 2 = 108 → 112; hd 65 rope 0: 65 + 2 → 80;
     * indexer 33: 17 + 2 = 19 → 32; indexer 1: 1 + 1 → 16 */
    CHECK_EQ_INT(ds4_kv_attn_row_bytes(100, 6), 112);
    CHECK_EQ_INT(ds4_kv_attn_row_bytes(65, 0), 80);
    CHECK_EQ_INT(ds4_kv_index_row_bytes(33), 32);
    CHECK_EQ_INT(ds4_kv_index_row_bytes(1), 16);
    /* the padding is zeroed: a row encoded over a 0xAA-filled buffer */
    uint8_t row[128];
    float x[100];
    for (int i = 0; i < 100; i++) x[i] = (float)(i - 50) * 0.37f;
    memset(row, 0xAA, sizeof row);
    ds4_kv_attn_encode(x, 100, 6, row);
    int nz = 0;
    for (size_t i = 108; i < 112; i++) nz += row[i] != 0;
    CHECK(nz == 0 && row[112] == 0xAA, "attention row padding not zeroed or written past the row");
    memset(row, 0xAA, sizeof row);
    ds4_kv_index_encode(x, 33, row);
    nz = 0;
    for (size_t i = 19; i < 32; i++) nz += row[i] != 0;
    CHECK(nz == 0 && row[32] == 0xAA, "indexer row padding not zeroed or written past the row");
}

/* ---------------------------------------------------------------- lossless on production rows */

/* Random row of width hd in blocks of `blk` with a random magnitude per block (2^-40 ..
 * 2^8, so the f16 rounding sees subnormals and flushes, and the Hadamard sums stay far from f16 overflow),
 * some all-zero blocks, scattered exact zeros and −0. */
static void random_row(ds4_test_rng *r, float *x, int64_t hd, int blk) {
    for (int64_t b = 0; b < hd; b += blk) {
        const int kind = (int)(ds4_test_rng_u64(r) % 8);
        const double mag = ldexp(1.0, (int)(ds4_test_rng_u64(r) % 49) - 40);
        for (int64_t i = b; i < hd && i < b + blk; i++) {
            double v = ds4_test_rng_normal(r) * mag;
            if (kind == 0) v = 0;
            if (ds4_test_rng_u64(r) % 16 == 0) v = 0;
            x[i] = (float)v;
            if (ds4_test_rng_u64(r) % 16 == 0) x[i] = -0.0f;
        }
    }
}

/* E8M0 byte the simulation's scale rule gives a block: 2^k with k the smallest integer
 * such that 2^k >= max(floor, max|x|) / qmax (float division, as fp8_sim), biased 127. */
static int scale_byte_ref(const float *x, int64_t len, float floor_, float qmax) {
    float amax = floor_;
    for (int64_t i = 0; i < len; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float r = amax / qmax;
    int k = -149;
    while (ldexp(1.0, k) < (double)r) k++;
    return k < -127 ? 0 : k + 127;
}

DS4_TEST(kv_fmt_lossless_on_production_rows) {
    ds4_backend *be = NULL;
    char err[256];
    REQUIRE(ds4_backend_cpu_create(&be, 1, DS4_NUM_PROD, err, sizeof err) == 0, "%s", err);
    static const struct { int64_t hd; int n_rot; } attn[] = {{512, 64}, {32, 16}, {64, 32}, {100, 6}, {65, 0},
                                                            {200, 8}, {130, 2}, {7, 4}, {64, 64}};
    static const int64_t idx[] = {128, 16, 64, 33, 100, 7, 1, 96};
    ds4_test_rng rng = {2024};
    float x[512], y[512];
    uint8_t row[1024];
    int bad_attn = 0, bad_idx = 0, rows = 0, changed = 0;
    for (size_t s = 0; s < DS4_ARRAY_LEN(attn); s++) {
        const int64_t hd = attn[s].hd;
        const int n_rot = attn[s].n_rot;
        for (int it = 0; it < 400; it++, rows++) {
            random_row(&rng, x, hd, 64);
            be->fp8_sim(be, x, hd, 1, hd - n_rot);
            be->round_f16(be, x, hd);
            memset(row, 0xAA, sizeof row);
            ds4_kv_attn_encode(x, hd, n_rot, row);
            ds4_kv_attn_decode(row, hd, n_rot, y);
            if (memcmp(x, y, sizeof(float) * (size_t)hd) != 0 && bad_attn++ < 3)
                for (int64_t i = 0; i < hd; i++)
                    if (fb(x[i]) != fb(y[i])) {
                        fprintf(stderr, "    attn hd %lld rot %d: x[%lld] = %a decodes to %a\n", (long long)hd, n_rot,
                                (long long)i, x[i], y[i]);
                        break;
                    }
            for (int64_t i = 0; i < hd; i++) CHECK(fb(ds4_kv_attn_get(row, hd, n_rot, i)) == fb(y[i]));
            for (int64_t b = 0; b < hd - n_rot; b += 64) {
                const int64_t len = hd - n_rot - b < 64 ? hd - n_rot - b : 64;
                CHECK(row[ds4_kv_attn_scales_off(hd, n_rot) + (size_t)(b / 64)] == scale_byte_ref(x + b, len, 1e-4f, 448.0f),
                      "attn hd %lld block %lld: scale byte", (long long)hd, (long long)b);
            }
        }
    }
    for (size_t s = 0; s < DS4_ARRAY_LEN(idx); s++) {
        const int64_t hd = idx[s];
        for (int it = 0; it < 400; it++, rows++) {
            random_row(&rng, x, hd, 32);
            be->hadamard_fp4_sim(be, x, hd, 1, hd);
            be->round_f16(be, x, hd);
            ds4_kv_index_encode(x, hd, row);
            ds4_kv_index_decode(row, hd, y);
            for (int64_t b = 0; b < hd; b += 32) {
                const int64_t len = hd - b < 32 ? hd - b : 32;
                CHECK(row[ds4_kv_index_scales_off(hd) + (size_t)(b / 32)] ==
                          scale_byte_ref(x + b, len, 7.052966104933725e-38f, 6.0f),
                      "index hd %lld block %lld: scale byte", (long long)hd, (long long)b);
            }
            if (memcmp(x, y, sizeof(float) * (size_t)hd) != 0 && bad_idx++ < 3)
                for (int64_t i = 0; i < hd; i++)
                    if (fb(x[i]) != fb(y[i])) {
                        fprintf(stderr, "    index hd %lld: x[%lld] = %a decodes to %a\n", (long long)hd,
                                (long long)i, x[i], y[i]);
                        break;
                    }
        }
    }
    CHECK(bad_attn == 0, "%d attention rows not bit-identical after encode/decode", bad_attn);
    CHECK(bad_idx == 0, "%d indexer rows not bit-identical after encode/decode", bad_idx);
    /* the comparison can fail: rows that skipped the simulation are rounded by the encoder */
    for (int it = 0; it < 50; it++) {
        random_row(&rng, x, 512, 64);
        ds4_kv_attn_encode(x, 512, 64, row);
        ds4_kv_attn_decode(row, 512, 64, y);
        changed += memcmp(x, y, sizeof(float) * 512) != 0;
    }
    CHECK(changed > 40, "only %d of 50 unsimulated rows changed: the round trip check would not see a loss", changed);
    CHECK(rows > 6000);
    be->free(be);
}

/* KV bytes per token of context for full Flash (the figure): the layer schedule of
 * the Flash layout (MODEL.md §2: 2 sliding, 21 CSA ratio 4, 20 HCA ratio 128; checked
 * here) with head_dim 512 / 64 rope dims and indexer head_dim 128. f32 rows: 21 ·
 * (2048 + 512) / 4 + 20 · 2048 / 128 = 13,760 bytes; compact rows: 21 · (592 + 80) / 4 +
 * 20 · 592 / 128 = 3,620.5 bytes. */
DS4_TEST(kv_fmt_flash_bytes_per_token) {
    ds4_layout_hp hp;
    ds4_layout_hp_flash(&hp, 0);
    REQUIRE(hp.n_layer == 43 && hp.head_dim == 512 && hp.n_rot == 64 && hp.idx_head_dim == 128);
    int n_sl = 0, n_csa = 0, n_hca = 0;
    double f32 = 0, compact = 0;
    for (uint32_t l = 0; l < hp.n_layer; l++) {
        const double R = hp.compress_ratio[l];
        if (hp.kind[l] == DS4_LAYER_SLIDING) {
            n_sl++;
            continue;
        }
        const bool csa = hp.kind[l] == DS4_LAYER_CSA;
        n_csa += csa, n_hca += !csa;
        CHECK(R == (csa ? 4 : 128), "layer %u ratio %g", l, R);
        f32 += (512.0 * 4 + (csa ? 128.0 * 4 : 0)) / R;
        compact += ((double)ds4_kv_attn_row_bytes(512, 64) + (csa ? (double)ds4_kv_index_row_bytes(128) : 0)) / R;
    }
    CHECK(n_sl == 2 && n_csa == 21 && n_hca == 20, "%d sliding, %d CSA, %d HCA", n_sl, n_csa, n_hca);
    CHECK(f32 == 13760.0, "%g", f32);
    CHECK(compact == 3620.5, "%g", compact);
}
