// common.cuh — helpers shared by every CUDA translation unit of the backend.
//
// Owns: the CUDA error-check macros (DS4_CUDA_TRY for library code that returns a
// ds4_status, CUDA_CHECK for test and benchmark programs that may abort), and tiny
// device helpers (f16 decode, dp4a, funnel shifts, cp.async) used by several op files.
// Must not: hold kernels or know about ops; one op family per .cu file.
#ifndef DS4_CUDA_COMMON_CUH
#define DS4_CUDA_COMMON_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <tuple>

extern "C" {
#include "core/common.h"
}

// Library code: a failed CUDA call becomes DS4_ERR_IO with the call and CUDA's reason
// in (err, errlen). The enclosing function must have `char *err, size_t errlen`.
// (common.h has no device-specific status; a CUDA failure is an I/O-like failure of
// the device, never a caller error.)
#define DS4_CUDA_TRY(call)                                                                  \
    do {                                                                                    \
        cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess)                                                              \
            return ds4_err(err, errlen, DS4_ERR_IO, "%s:%d: %s: %s", __FILE__, __LINE__,    \
                           #call, cudaGetErrorString(e_));                                  \
    } while (0)

// Programs (tests, benchmarks): print and exit on any CUDA failure. Never in src/.
#define CUDA_CHECK(call)                                                                    \
    do {                                                                                    \
        cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess) {                                                            \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                   \
                    cudaGetErrorString(e_));                                                \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

namespace ds4cu {

__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) {
    return __half2float(__ushort_as_half(h));
}

// Signed 4×int8 dot product accumulated into c (IDP.4A).
__device__ __forceinline__ int dp4a(uint32_t a, uint32_t b, int c) {
    return __dp4a((int)a, (int)b, c);
}

// Low 32 bits of (hi:lo) >> sh, sh in [0, 31]: re-aligns a byte stream read as words.
__device__ __forceinline__ uint32_t fshr(uint32_t lo, uint32_t hi, uint32_t sh) {
    return __funnelshift_r(lo, hi, sh);
}

// prmt.b32 in its default mode: each selector nibble picks one of the 8 bytes of
// (b:a); a set bit 3 in the nibble replicates that byte's sign bit instead.
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

// Asynchronous 16-byte global -> shared copy (sm_80+); both addresses 16-aligned.
__device__ __forceinline__ void cp_async16(void *smem_dst, const void *gmem_src) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem_dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem_src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

// Warp-wide reductions (every lane gets the result; xor-shuffle tree, a fixed order).
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The production-numerics roundings (MODEL.md §13), the device mirror of
// ds4_fp8_e4m3_round / ds4_fp4_e2m1_round (cpu_backend.c): nearest E4M3FN value in
// [−448, 448] with ties to even; nearest of ±{0, .5, 1, 1.5, 2, 3, 4, 6} with ties to the
// even index; and the power of two at or above r (the per-block scale).
__device__ inline float d_fp8_round(float v) {
    float a = fabsf(v);
    if (isnan(v)) return v;
    if (a >= 448.0f) return copysignf(448.0f, v);
    float step;
    if (a < 0x1p-6f) {
        step = 0x1p-9f;
    } else {
        int e;
        frexpf(a, &e);
        step = ldexpf(1.0f, e - 1 - 3);
    }
    float q = rintf(a / step) * step;
    if (q > 448.0f) q = 448.0f;
    return copysignf(q, v);
}
__device__ inline float d_fp4_round(float v) {
    const float grid[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    float a = fabsf(v);
    if (isnan(v)) return v;
    int best = 0;
    float bd = INFINITY;
    for (int i = 0; i < 8; i++) {
        float dd = fabsf(a - grid[i]);
        if (dd < bd || (dd == bd && (i % 2) == 0 && (best % 2) != 0)) {
            bd = dd;
            best = i;
        }
    }
    return copysignf(grid[best], v);
}
__device__ inline float d_pow2_ceil(float r) {
    int e;
    float m = frexpf(r, &e);
    return m == 0.5f ? ldexpf(1.0f, e - 1) : ldexpf(1.0f, e);
}

// The rmsnorm op's per-element step on four values: v·scale, then ·w when has_w, each
// product rounded (shared by the rmsnorm kernel and the fused ops that must match it).
__device__ __forceinline__ float4 rms_scale4(float4 v, float scale, bool has_w, float4 w) {
    float4 o;
    o.x = __fmul_rn(v.x, scale);
    o.y = __fmul_rn(v.y, scale);
    o.z = __fmul_rn(v.z, scale);
    o.w = __fmul_rn(v.w, scale);
    if (has_w) {
        o.x = __fmul_rn(o.x, w.x);
        o.y = __fmul_rn(o.y, w.y);
        o.z = __fmul_rn(o.z, w.z);
        o.w = __fmul_rn(o.w, w.w);
    }
    return o;
}

// Programmatic dependent launch (sm_90; see launch() below). A kernel launched with the
// PDL attribute may start while the previous kernel of the stream is still running: it
// must call pdl_wait() before its first access to memory that earlier work in the stream
// writes (weights and constants may be read before). pdl_trigger() lets the next kernel
// of the stream start launching (its blocks then sit in their own pdl_wait()); called
// after pdl_wait() it keeps at most two kernels in flight. Both are no-ops for a kernel
// launched without the attribute.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// Whether launch() asks for programmatic dependent launch (DS4_CUDA_NO_PDL=1: never).
inline bool pdl_enabled() {
    static const bool on = getenv("DS4_CUDA_NO_PDL") == nullptr;
    return on;
}

// Decode-step recording (graph.h): the recorder recording on this thread, or NULL.
struct GraphRec;
extern thread_local GraphRec *g_rec;
// Records k<<<grid, block, smem>>>(args) (n parameters: addresses and sizes of their
// values) when r records on stream st; false: the caller launches it.
bool graph_rec_kernel(GraphRec *r, cudaStream_t st, const void *k, dim3 grid, dim3 block, size_t smem,
                      void *const *args, const size_t *sizes, int n);

// k<<<grid, block, smem, st>>>(args...) with the PDL attribute when enabled (or recorded
// for a graph, see above). Returns the launch's error (as cudaGetLastError would).
template <typename... KArgs, typename... Args>
inline cudaError_t launch(void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, Args... args) {
    if (g_rec) {
        // the parameters converted to the kernel's types, as the launch below passes them
        std::tuple<KArgs...> pv((KArgs)args...);
        void *ptr[sizeof...(KArgs) + 1];
        size_t sz[sizeof...(KArgs) + 1];
        std::apply(
            [&](auto &...a) {
                size_t i = 0;
                ((ptr[i] = (void *)&a, sz[i] = sizeof a, ++i), ...);
                (void)i;
            },
            pv);
        if (graph_rec_kernel(g_rec, st, (const void *)k, grid, block, smem, ptr, sz, (int)sizeof...(KArgs)))
            return cudaSuccess;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = pdl_enabled() ? 1 : 0;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, k, ((KArgs)args)...);
}

}  // namespace ds4cu

#endif
