// kv_rows.cuh — device block encoders of the compact cached-row layout (kv_fmt.h), shared
// by compress.cu (compress_rows writes compact rows directly) and kv_rows.cu (the
// encode kernel of compress_rows' fallback and of the tests).
//
// Owns: encode_attn_block / encode_index_block. Must not: define kernels or host code,
// or produce other bytes than kv_fmt.h's ds4_kv_attn_encode / ds4_kv_index_encode: every
// element goes through the same kv_fmt.h element codecs with the same block scale, and the
// block amax is a warp max (fmaxf is exact in any order and ignores NaN, as the host's
// sequential loop), so the bytes are equal bit for bit, padding zero.
//
// Block contract: every thread of a block of T threads (T a multiple of 32) calls them with
// block-uniform arguments; x [hd] is complete and readable by every thread (shared or
// global memory; the caller's barrier); the row's ds4_kv_*_row_bytes bytes are all
// written. No barrier inside (each byte has one writer).
#ifndef DS4_CUDA_KV_ROWS_CUH
#define DS4_CUDA_KV_ROWS_CUH

#include <stdint.h>

#include "common.cuh"
#include "backend/kv_fmt.h"

namespace ds4cu {
namespace kv {

// Attention row: rope dims [hd − n_rot, hd) as f16, E4M3 codes of [0, hd − n_rot) with one
// E8M0 scale per 64-block (one warp per block: lanes own l and l + 32, like fp8_sim).
__device__ inline void encode_attn_block(const float *x, int hd, int n_rot, uint8_t *row) {
    const int T = blockDim.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarp = T >> 5;
    const int nq = hd - n_rot;
    uint8_t *codes = row + ds4_kv_attn_codes_off(n_rot), *scales = row + ds4_kv_attn_scales_off(hd, n_rot);
    for (int j = tid; j < n_rot; j += T) {
        const uint16_t h = ds4_kv_f32_to_f16(x[nq + j]);
        row[2 * j] = (uint8_t)(h & 255u);
        row[2 * j + 1] = (uint8_t)(h >> 8);
    }
    for (int b0 = warp * DS4_KV_FP8_BLOCK; b0 < nq; b0 += nwarp * DS4_KV_FP8_BLOCK) { // warp-uniform
        const int len = nq - b0 < DS4_KV_FP8_BLOCK ? nq - b0 : DS4_KV_FP8_BLOCK;
        const bool h0 = lane < len, h1 = lane + 32 < len;
        const float a = h0 ? x[b0 + lane] : 0.0f, c = h1 ? x[b0 + lane + 32] : 0.0f;
        float amax = DS4_KV_FP8_AMAX_FLOOR;
        if (h0) amax = fmaxf(amax, fabsf(a));
        if (h1) amax = fmaxf(amax, fabsf(c));
        amax = warp_max(amax);
        const uint8_t e = ds4_kv_e8m0_encode(ds4_kv_scale_exp(amax, 448.0f));
        const float inv = ds4_kv_exp2i(127 - (int)e); // 1 / scale, exact
        if (h0) codes[b0 + lane] = ds4_kv_e4m3_encode(a * inv);
        if (h1) codes[b0 + lane + 32] = ds4_kv_e4m3_encode(c * inv);
        if (lane == 0) scales[b0 / DS4_KV_FP8_BLOCK] = e;
    }
    const int used = (int)ds4_kv_attn_scales_off(hd, n_rot) + (nq + DS4_KV_FP8_BLOCK - 1) / DS4_KV_FP8_BLOCK;
    const int rb = (int)ds4_kv_attn_row_bytes(hd, n_rot);
    for (int i = used + tid; i < rb; i += T) row[i] = 0;
}

// Indexer row: E2M1 nibbles (element 2i low, 2i + 1 high in byte i; a missing high element
// of an odd hd is 0, as the host's zeroed bytes) and one E8M0 scale per 32-block (one warp
// per block, lane = element; an even lane writes its pair's byte).
__device__ inline void encode_index_block(const float *x, int hd, uint8_t *row) {
    const int T = blockDim.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarp = T >> 5;
    uint8_t *scales = row + ds4_kv_index_scales_off(hd);
    for (int b0 = warp * DS4_KV_FP4_BLOCK; b0 < hd; b0 += nwarp * DS4_KV_FP4_BLOCK) { // warp-uniform
        const int i = b0 + lane;
        const bool has = i < hd;
        const float v = has ? x[i] : 0.0f;
        float amax = DS4_KV_FP4_AMAX_FLOOR;
        if (has) amax = fmaxf(amax, fabsf(v));
        amax = warp_max(amax);
        const uint8_t e = ds4_kv_e8m0_encode(ds4_kv_scale_exp(amax, 6.0f));
        const float inv = ds4_kv_exp2i(127 - (int)e);
        const unsigned c = has ? ds4_kv_e2m1_encode(v * inv) : 0u;
        const unsigned hi = __shfl_down_sync(0xffffffffu, c, 1); // lane + 1's code (0 past hd)
        if (has && !(lane & 1)) row[i / 2] = (uint8_t)(c | (hi << 4)); // b0 even: lane parity = i parity
        if (lane == 0) scales[b0 / DS4_KV_FP4_BLOCK] = e;
    }
    const int used = (int)ds4_kv_index_scales_off(hd) + (hd + DS4_KV_FP4_BLOCK - 1) / DS4_KV_FP4_BLOCK;
    const int rb = (int)ds4_kv_index_row_bytes(hd);
    for (int i = used + tid; i < rb; i += T) row[i] = 0;
}

}  // namespace kv
}  // namespace ds4cu

#endif
