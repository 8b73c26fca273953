// act_quant.cuh — the warp-level activation quantizer math (Q8_0, Q8_K), one copy for
// every CUDA kernel that quantizes activations (matvec.cu: the matvec prologue and the
// stand-alone ds4_cuda_quantize_act; moe_prefill.cu: k_pf_quant_rows / k_pf_swiglu_q).
//
// Owns: a lane's quants, block sums and block scale computed from the lane's values,
// bit-identical to the CPU's ds4_quantize_act_row (quant.c quant_q8_0(act = true) /
// quant_q8_k; MODEL.md §20.7): the same f32 operations in the same order (rintf of a
// clamped __fmul_rn product, 1/d and 1/iscale, the max / first-argmax shuffle tree).
// Must not: store anything (each caller keeps its own layout: matvec's split shared-memory
// vectors, GGML blocks), read memory, or change an operation without changing the CPU
// quantizer with it.
//
// Warp contract: every lane of the warp calls (xor shuffles over the full mask); lanes
// whose block lies past the row pass zeros and discard the result.
#ifndef DS4_CUDA_ACT_QUANT_CUH
#define DS4_CUDA_ACT_QUANT_CUH

#include <stdint.h>

#include "common.cuh"

namespace ds4cu {

// Q8_0: each lane holds 4 consecutive values; 8 aligned lanes form one 32-element block.
// Same operations as quant_q8_0(act = true): d = amax/127, q = rint(clamp(x·(1/d))).
// Returns the lane's 4 quants (byte i = value i); *d_out = d in f32 (the caller rounds it
// to f16 as a GGML block stores it).
__device__ __forceinline__ uint32_t q8_0_quant_lane(const float v[4], float *d_out) {
    float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 4));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint32_t q = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int qi = (int)rintf(fminf(fmaxf(__fmul_rn(v[i], id), -128.0f), 127.0f));
        q |= (uint32_t)(qi & 255) << (8 * i);
    }
    *d_out = d;
    return q;
}

// Q8_K: one warp per 256-element block, lane holds elements 8·lane .. 8·lane+7. The first
// element of largest |x| (sign kept, ties to the lower index) maps to −127: iscale =
// −127/x_max, d = 1/iscale; an all-zero block stays all zero with d = 0.
struct Q8KLane {
    uint32_t qlo, qhi;  // the lane's 8 quants (byte j of qlo|qhi<<32 = element 8·lane + j)
    int bsum16;         // sum of the 16 quants of lanes (2m, 2m+1), in both lanes
    float d;            // block scale (0 for an all-zero block)
};
__device__ __forceinline__ Q8KLane q8_k_quant_lane(const float v[8], int lane) {
    float a = 0.0f, xm = 0.0f;
    int idx = 0x7fffffff;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        if (fabsf(v[j]) > a) {
            a = fabsf(v[j]);
            xm = v[j];
            idx = 8 * lane + j;
        }
    }
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1) {
        const float oa = __shfl_xor_sync(0xffffffffu, a, off);
        const float ox = __shfl_xor_sync(0xffffffffu, xm, off);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, off);
        if (oa > a || (oa == a && oi < idx)) {
            a = oa;
            xm = ox;
            idx = oi;
        }
    }
    Q8KLane r;
    if (a == 0.0f) {  // warp-uniform (a is the warp's maximum): no lane reaches the shuffle below
        r.qlo = r.qhi = 0;
        r.bsum16 = 0;
        r.d = 0.0f;
        return r;
    }
    const float iscale = -127.0f / xm;
    int s = 0;
    uint32_t q[2] = {0, 0};
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int qi = (int)rintf(fminf(fmaxf(__fmul_rn(iscale, v[j]), -128.0f), 127.0f));
        s += qi;
        q[j >> 2] |= (uint32_t)(qi & 255) << (8 * (j & 3));
    }
    r.qlo = q[0];
    r.qhi = q[1];
    r.bsum16 = s + __shfl_xor_sync(0xffffffffu, s, 1);
    r.d = 1.0f / iscale;
    return r;
}

}  // namespace ds4cu

#endif  // DS4_CUDA_ACT_QUANT_CUH
