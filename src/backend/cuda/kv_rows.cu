// kv_rows.cu — conversions between f32 rows and the compact cached-row layout (kv_fmt.h)
// for the ops that do not read compact rows inside their own kernels: the generic
// attention op (rows_b gathered and decoded to f32, then the f32 kernel) and compress_rows'
// huge-row fallback (the op sequence on an f32 row, then encoded).
//
// Owns: k_kv_decode, k_kv_encode and their host entries ds4cu::kv_bytes / kv_decode /
// kv_encode (cuda_internal.h). Must not: change a value (decode is exact: kv_fmt.h's
// decoders; encode gives ds4_kv_*_encode's bytes, kv_rows.cuh), allocate device memory, or
// synchronise.
#include "common.cuh"
#include "cuda_internal.h"
#include "kv_rows.cuh"

extern "C" {
#include "core/common.h"
}

namespace {

// dst[j·hd + i] = element i of compact row (ix ? ix[j] : j) of src (rows of rb bytes), for
// j < n, i < hd. One thread per element (grid-stride), writes coalesced.
__global__ void __launch_bounds__(256) k_kv_decode(const uint8_t *__restrict__ src, int64_t rb, int kind, int hd,
                                                   int n_rot, const int32_t *__restrict__ ix, int n,
                                                   float *__restrict__ dst) {
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    const int64_t total = (int64_t)n * hd;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t j = e / hd, i = e % hd;
        const int64_t r = ix ? (int64_t)ix[j] : j;
        const uint8_t *row = src + r * rb;
        dst[e] = kind == DS4_KV_ROW_INDEX ? ds4_kv_index_get(row, hd, i) : ds4_kv_attn_get(row, hd, n_rot, i);
    }
}

// Row blockIdx.x of src (stride ss floats) encoded into dst + blockIdx.x · rb.
__global__ void __launch_bounds__(256) k_kv_encode(const float *__restrict__ src, int64_t ss, int kind, int hd,
                                                   int n_rot, uint8_t *__restrict__ dst, int64_t rb) {
    ds4cu::pdl_wait();
    ds4cu::pdl_trigger();
    const float *x = src + (int64_t)blockIdx.x * ss;
    uint8_t *row = dst + (int64_t)blockIdx.x * rb;
    if (kind == DS4_KV_ROW_INDEX) ds4cu::kv::encode_index_block(x, hd, row);
    else ds4cu::kv::encode_attn_block(x, hd, n_rot, row);
}

size_t row_bytes_of(int kind, int64_t hd, int n_rot) {
    return kind == DS4_KV_ROW_INDEX ? ds4_kv_index_row_bytes(hd) : ds4_kv_attn_row_bytes(hd, n_rot);
}

}  // namespace

namespace ds4cu {

size_t kv_bytes(ds4_backend *be, int kind, int64_t hd, int n_rot) {
    return kv_compact(be) ? row_bytes_of(kind, hd, n_rot) : 0;
}

void kv_decode(ds4_backend *be, const void *rows, int kind, int64_t hd, int n_rot, const int32_t *ix, int n,
               float *dst) {
    DS4_ASSERT(hd > 0 && hd < INT32_MAX && n_rot >= 0 && n_rot <= hd && (kind == DS4_KV_ROW_ATTN || kind == DS4_KV_ROW_INDEX));
    if (n <= 0) return;
    const int64_t total = (int64_t)n * hd;
    int64_t blocks = (total + 255) / 256;
    if (blocks > 4096) blocks = 4096;
    DS4CU_CK(launch(k_kv_decode, dim3((unsigned)blocks), dim3(256), 0, stream(be), (const uint8_t *)rows,
                    (int64_t)row_bytes_of(kind, hd, n_rot), kind, (int)hd, n_rot, ix, n, dst));
}

void kv_encode(ds4_backend *be, const float *src, int64_t ss, int n, int kind, int64_t hd, int n_rot, void *dst) {
    DS4_ASSERT(hd > 0 && hd < INT32_MAX && n_rot >= 0 && n_rot <= hd && (kind == DS4_KV_ROW_ATTN || kind == DS4_KV_ROW_INDEX));
    if (n <= 0) return;
    DS4CU_CK(launch(k_kv_encode, dim3((unsigned)n), dim3(256), 0, stream(be), src, ss, kind, (int)hd, n_rot,
                    (uint8_t *)dst, (int64_t)row_bytes_of(kind, hd, n_rot)));
}

}  // namespace ds4cu
