/* kv_fmt.h — the compact storage layout of cached compressed rows (production numerics):
 * FP8 E4M3 attention rows and FP4 E2M1 indexer rows with power-of-two (E8M0) block
 * scales, as MODEL.md §13 already rounds them. One source for the host (C) and the CUDA
 * kernels (every function is inline and callable from both), so an encoder on either side
 * produces the same bytes and a decoder the same floats.
 *
 * Owns: the byte layout, the element codecs and the row encoders/decoders. Must not:
 * allocate, depend on a backend, or know which layers use which row kind.
 *
 * Why lossless: a production row has passed fp8_sim (attention, dims [0, hd − n_rot)) or
 * hadamard_fp4_sim (indexer) and then round_f16, so each block is (grid value) · 2^k0 rounded
 * to f16. The encoder picks the smallest power of two s with max|x| ≤ qmax · s (the
 * simulation's own rule, with its amax floor), which is 2^k0 or 2^(k0−1); every x / s is
 * then on the E4M3 / E2M1 grid (f16 rounding of a value with ≤ 4 resp. ≤ 2 significant bits
 * keeps at most that many), so decode(encode(x)) == x bit for bit, signed zeros included.
 * Rope dims are f16 values after round_f16 and are stored as f16. Rows that are not such
 * values (exact numerics, hand-made test rows) are rounded by the encoder: a backend stores
 * rows in this layout only in production numerics.
 *
 * Attention row (width hd, the LAST n_rot dims rope, nq = hd − n_rot quantised dims):
 *   bytes [0, 2·n_rot)              rope dims x[nq + j] as IEEE f16, little endian
 *   bytes [2·n_rot, 2·n_rot + nq)   E4M3FN codes of x[0, nq)
 *   next ceil(nq / 64) bytes        E8M0 exponent e of block b (x[64b ..]): scale 2^(e − 127)
 *   zero padding to a multiple of 16 bytes (Flash: 128 + 448 + 7 → 592 bytes, was 2048).
 * Indexer row (width hd):
 *   bytes [0, ceil(hd / 2))         E2M1 codes, element 2i in the low nibble of byte i
 *   next ceil(hd / 32) bytes        E8M0 exponent of block b (x[32b ..])
 *   zero padding to a multiple of 16 bytes (Flash hd 128: 64 + 4 → 80 bytes, was 512).
 * A trailing partial block (only in shape-generic test models) is its own block, as in
 * fp8_sim / hadamard_fp4_sim. */
#ifndef DS4_KV_FMT_H
#define DS4_KV_FMT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define DS4_KV_FN static inline __host__ __device__
#else
#define DS4_KV_FN static inline
#endif

enum { DS4_KV_FP8_BLOCK = 64, DS4_KV_FP4_BLOCK = 32, DS4_KV_ROW_ALIGN = 16 };

/* amax floors of MODEL.md §13.1 / §13.2 (so the scale equals the simulation's) */
#define DS4_KV_FP8_AMAX_FLOOR 1e-4f
#define DS4_KV_FP4_AMAX_FLOOR 7.052966104933725e-38f

/* ---- sizes and offsets ---------------------------------------------------------------- */
DS4_KV_FN size_t ds4_kv_round_row(size_t b) { return (b + DS4_KV_ROW_ALIGN - 1) / DS4_KV_ROW_ALIGN * DS4_KV_ROW_ALIGN; }
DS4_KV_FN size_t ds4_kv_attn_nq(int64_t hd, int n_rot) { return (size_t)(hd - n_rot); }
DS4_KV_FN size_t ds4_kv_attn_codes_off(int n_rot) { return (size_t)2 * (size_t)n_rot; }
DS4_KV_FN size_t ds4_kv_attn_scales_off(int64_t hd, int n_rot) { return (size_t)2 * (size_t)n_rot + (size_t)(hd - n_rot); }
DS4_KV_FN size_t ds4_kv_attn_row_bytes(int64_t hd, int n_rot) {
    const size_t nq = (size_t)(hd - n_rot);
    return ds4_kv_round_row((size_t)2 * (size_t)n_rot + nq + (nq + DS4_KV_FP8_BLOCK - 1) / DS4_KV_FP8_BLOCK);
}
DS4_KV_FN size_t ds4_kv_index_scales_off(int64_t hd) { return (size_t)(hd + 1) / 2; }
DS4_KV_FN size_t ds4_kv_index_row_bytes(int64_t hd) {
    return ds4_kv_round_row((size_t)(hd + 1) / 2 + ((size_t)hd + DS4_KV_FP4_BLOCK - 1) / DS4_KV_FP4_BLOCK);
}

/* ---- scalar helpers ------------------------------------------------------------------- */
DS4_KV_FN float ds4_kv_bits_f32(uint32_t u) {
    union { uint32_t u; float f; } v;
    v.u = u;
    return v.f;
}
DS4_KV_FN uint32_t ds4_kv_f32_bits(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    return v.u;
}

/* IEEE f16 bits -> f32 (exact). */
DS4_KV_FN float ds4_kv_f16_to_f32(uint16_t h) {
    const uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 1023u;
    if (e == 0) {
        const float v = (float)m * 0x1p-24f;
        return s ? -v : v;
    }
    if (e == 31) return ds4_kv_bits_f32(s | 0x7F800000u | (m << 13));
    return ds4_kv_bits_f32(s | ((e + 112u) << 23) | (m << 13));
}

/* f32 -> IEEE f16 bits, round to nearest even (subnormals, overflow to inf, NaN kept). */
DS4_KV_FN uint16_t ds4_kv_f32_to_f16(float f) {
    const uint32_t x = ds4_kv_f32_bits(f), s = (x >> 16) & 0x8000u, a = x & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) return (uint16_t)(s | 0x7C00u | (a > 0x7F800000u ? 0x200u : 0u));
    if (a >= 0x477FF000u) return (uint16_t)(s | 0x7C00u);  /* >= 65520: rounds to inf */
    if (a < 0x38800000u) {                                 /* < 2^-14: f16 subnormal or zero */
        const float m = rintf(ds4_kv_bits_f32(a) * 0x1p24f);   /* exact scaling, then RNE */
        return (uint16_t)(s | (uint32_t)m);                 /* 1024 = the smallest normal */
    }
    uint32_t r = a - 0x38000000u;                           /* rebias 127 -> 15 */
    r += 0xFFFu + ((r >> 13) & 1u);                         /* RNE on the 13 dropped bits */
    return (uint16_t)(s | (r >> 13));
}

/* 2^k as a float (k in [-149, 127]; exact). */
DS4_KV_FN float ds4_kv_exp2i(int k) {
    if (k >= -126) return ds4_kv_bits_f32((uint32_t)(k + 127) << 23);
    return ds4_kv_bits_f32(1u << (k + 149));
}

/* Exponent k of the scale 2^ceil(log2(amax / qmax)) (MODEL.md §13: pow2_ceil(amax/qmax)),
 * amax > 0 finite. */
DS4_KV_FN int ds4_kv_scale_exp(float amax, float qmax) {
    int e;
    const float m = frexpf(amax / qmax, &e);  /* r = m·2^e, m in [0.5, 1) */
    return m == 0.5f ? e - 1 : e;
}

/* E8M0 byte of exponent k (clamped to the byte's range [−127, 127]) and back. */
DS4_KV_FN uint8_t ds4_kv_e8m0_encode(int k) { return (uint8_t)(k < -127 ? 0 : k > 127 ? 254 : k + 127); }
DS4_KV_FN float ds4_kv_e8m0_decode(uint8_t e) { return ds4_kv_exp2i((int)e - 127); }

/* Nearest E4M3FN code of v (ties to even mantissa, saturating at ±448 like
 * ds4_fp8_e4m3_round; NaN -> 448). Bit 7 = sign (−0 kept). */
DS4_KV_FN uint8_t ds4_kv_e4m3_encode(float v) {
    const uint8_t sign = signbit(v) ? 0x80u : 0u;
    const float a = fabsf(v);
    if (!(a < 448.0f)) return (uint8_t)(sign | 0x7Eu);
    if (a < 0x1p-6f) return (uint8_t)(sign | (uint8_t)rintf(a * 512.0f)); /* subnormal; 8 = 2^-6 */
    int e;
    const float m = frexpf(a, &e);                       /* a = m·2^e, leading bit 2^(e−1) */
    int E = e - 1, mant = (int)rintf((m * 2.0f - 1.0f) * 8.0f);
    if (mant == 8) {
        mant = 0;
        E++;
    }
    if (E > 8 || (E == 8 && mant > 6)) return (uint8_t)(sign | 0x7Eu);
    return (uint8_t)(sign | (uint8_t)(((E + 7) << 3) | mant));
}
DS4_KV_FN float ds4_kv_e4m3_decode(uint8_t c) {
    const uint32_t E = (c >> 3) & 15u, m = c & 7u, s = (uint32_t)(c & 0x80u) << 24;
    if (E == 0) {
        const float v = (float)m * 0x1p-9f;
        return s ? -v : v;
    }
    return ds4_kv_bits_f32(s | ((E + 120u) << 23) | (m << 20));
}

/* Nearest E2M1 code of v among ±{0, .5, 1, 1.5, 2, 3, 4, 6} (ties to the even index, as
 * ds4_fp4_e2m1_round; saturating). Bit 3 = sign (−0 kept). */
DS4_KV_FN uint8_t ds4_kv_e2m1_encode(float v) {
    const uint8_t sign = signbit(v) ? 8u : 0u;
    const float a = fabsf(v);
    uint8_t i;
    if (a <= 0.25f) i = 0;
    else if (a < 0.75f) i = 1;
    else if (a <= 1.25f) i = 2;
    else if (a < 1.75f) i = 3;
    else if (a <= 2.5f) i = 4;
    else if (a < 3.5f) i = 5;
    else if (a <= 5.0f) i = 6;
    else i = 7;   /* also NaN */
    return (uint8_t)(sign | i);
}
DS4_KV_FN float ds4_kv_e2m1_decode(uint8_t c) {
    const uint32_t m = c & 7u, E = m >> 1;
    const float a = m < 2 ? 0.5f * (float)m : ds4_kv_bits_f32(((E + 126u) << 23) | ((m & 1u) << 22));
    return (c & 8u) ? -a : a;
}

/* ---- rows ----------------------------------------------------------------------------- */
/* x [hd] -> row [ds4_kv_attn_row_bytes(hd, n_rot)] (padding zeroed). */
DS4_KV_FN void ds4_kv_attn_encode(const float *x, int64_t hd, int n_rot, uint8_t *row) {
    const int64_t nq = hd - n_rot;
    uint8_t *codes = row + ds4_kv_attn_codes_off(n_rot), *scales = row + ds4_kv_attn_scales_off(hd, n_rot);
    for (int j = 0; j < n_rot; j++) {
        const uint16_t h = ds4_kv_f32_to_f16(x[nq + j]);
        row[2 * j] = (uint8_t)(h & 255u);
        row[2 * j + 1] = (uint8_t)(h >> 8);
    }
    for (int64_t b = 0; b < nq; b += DS4_KV_FP8_BLOCK) {
        const int64_t len = nq - b < DS4_KV_FP8_BLOCK ? nq - b : DS4_KV_FP8_BLOCK;
        float amax = DS4_KV_FP8_AMAX_FLOOR;
        for (int64_t i = 0; i < len; i++) amax = fmaxf(amax, fabsf(x[b + i]));
        const int k = ds4_kv_scale_exp(amax, 448.0f);
        const uint8_t e = ds4_kv_e8m0_encode(k);
        const float inv = ds4_kv_exp2i(127 - (int)e);  /* 1 / scale, exact */
        scales[b / DS4_KV_FP8_BLOCK] = e;
        for (int64_t i = 0; i < len; i++) codes[b + i] = ds4_kv_e4m3_encode(x[b + i] * inv);
    }
    const size_t used = ds4_kv_attn_scales_off(hd, n_rot) + (size_t)(nq + DS4_KV_FP8_BLOCK - 1) / DS4_KV_FP8_BLOCK;
    for (size_t i = used; i < ds4_kv_attn_row_bytes(hd, n_rot); i++) row[i] = 0;
}

/* Element i of an attention row (i < hd). */
DS4_KV_FN float ds4_kv_attn_get(const uint8_t *row, int64_t hd, int n_rot, int64_t i) {
    const int64_t nq = hd - n_rot;
    if (i >= nq) {
        const int64_t j = i - nq;
        return ds4_kv_f16_to_f32((uint16_t)(row[2 * j] | (row[2 * j + 1] << 8)));
    }
    const float s = ds4_kv_e8m0_decode(row[ds4_kv_attn_scales_off(hd, n_rot) + (size_t)(i / DS4_KV_FP8_BLOCK)]);
    return ds4_kv_e4m3_decode(row[ds4_kv_attn_codes_off(n_rot) + (size_t)i]) * s;
}

DS4_KV_FN void ds4_kv_attn_decode(const uint8_t *row, int64_t hd, int n_rot, float *x) {
    for (int64_t i = 0; i < hd; i++) x[i] = ds4_kv_attn_get(row, hd, n_rot, i);
}

/* x [hd] -> row [ds4_kv_index_row_bytes(hd)] (padding zeroed). */
DS4_KV_FN void ds4_kv_index_encode(const float *x, int64_t hd, uint8_t *row) {
    uint8_t *scales = row + ds4_kv_index_scales_off(hd);
    for (size_t i = 0; i < ds4_kv_index_scales_off(hd); i++) row[i] = 0;
    for (int64_t b = 0; b < hd; b += DS4_KV_FP4_BLOCK) {
        const int64_t len = hd - b < DS4_KV_FP4_BLOCK ? hd - b : DS4_KV_FP4_BLOCK;
        float amax = DS4_KV_FP4_AMAX_FLOOR;
        for (int64_t i = 0; i < len; i++) amax = fmaxf(amax, fabsf(x[b + i]));
        const int k = ds4_kv_scale_exp(amax, 6.0f);
        const uint8_t e = ds4_kv_e8m0_encode(k);
        const float inv = ds4_kv_exp2i(127 - (int)e);
        scales[b / DS4_KV_FP4_BLOCK] = e;
        for (int64_t i = 0; i < len; i++) {
            const uint8_t c = ds4_kv_e2m1_encode(x[b + i] * inv);
            row[(b + i) / 2] |= (uint8_t)((b + i) % 2 ? c << 4 : c);
        }
    }
    const size_t used = ds4_kv_index_scales_off(hd) + ((size_t)hd + DS4_KV_FP4_BLOCK - 1) / DS4_KV_FP4_BLOCK;
    for (size_t i = used; i < ds4_kv_index_row_bytes(hd); i++) row[i] = 0;
}

DS4_KV_FN float ds4_kv_index_get(const uint8_t *row, int64_t hd, int64_t i) {
    const uint8_t c = (uint8_t)((row[i / 2] >> (4 * (i % 2))) & 15u);
    return ds4_kv_e2m1_decode(c) * ds4_kv_e8m0_decode(row[ds4_kv_index_scales_off(hd) + (size_t)(i / DS4_KV_FP4_BLOCK)]);
}

DS4_KV_FN void ds4_kv_index_decode(const uint8_t *row, int64_t hd, float *x) {
    for (int64_t i = 0; i < hd; i++) x[i] = ds4_kv_index_get(row, hd, i);
}

#undef DS4_KV_FN
#endif
