// cublas_gemm_bench.cu — what cuBLAS would give for the dense prefill matmuls (issue 8:
// "cuBLAS where it wins"), at the Flash shapes that `cuda-test-mmq --bench` times for the
// engine's own GEMMs (mmq.cu: Q8_0 weights × Q8_0 activations with per-32 block scales;
// mmf16.cu: F16 weights × f32 activations), 2048 token rows.
//
// Owns: timing cublasGemmEx for Y[T][N] = X[T][K] · W[N][K]ᵀ in the formats cuBLAS has:
//   f16 × f16 → f32 (tensor cores), bf16 × bf16 → f32, f32 with TF32 tensor cores, f32
//   (CUDA cores), and int8 × int8 → int32 without any scales (the ceiling of an integer
//   GEMM: the production numerics need a float scale per 32-element block of both
//   operands, which no cuBLAS GEMM on sm_90 applies; running one GEMM per block would
//   be K/32 launches). None of these reproduces the production numerics (MODEL.md §20.7:
//   Q8_0 / Q8_K activation quantisation + integer dots + per-block float scales) or the
//   exact mode's f32 products bit for bit, so this program only measures: the numbers go
//   to bench/RESULTS.md next to mmq's. Inputs are random; weights are not converted from
//   a GGUF (the conversion pass a real use would need is not counted).
// Must not: be linked into the engine.
//
// usage: cuda-cublas-bench [--reps N]
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)
#define CB(x)                                                                   \
    do {                                                                        \
        cublasStatus_t s_ = (x);                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                      \
            fprintf(stderr, "%s:%d: %s: status %d\n", __FILE__, __LINE__, #x, (int)s_); \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

// Fills n elements of type cuda_type with small random values (a hash of the index).
__global__ void k_fill(void *p, size_t n, int type) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(i >> 32);
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        const float v = ((float)(h & 0xFFFF) / 65536.0f - 0.5f) * 0.25f;
        switch (type) {
        case CUDA_R_16F: ((__half *)p)[i] = __float2half(v); break;
        case CUDA_R_16BF: ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v); break;
        case CUDA_R_32F: ((float *)p)[i] = v; break;
        default: ((int8_t *)p)[i] = (int8_t)((int)(h & 0xFF) - 128); break;
        }
    }
}

struct Fmt {
    const char *name;
    cudaDataType_t ab, c;
    cublasComputeType_t compute;
    int ab_bytes, c_bytes;
};

int main(int argc, char **argv) {
    int reps = 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
            if (reps < 1 || reps > 100000) {
                fprintf(stderr, "cuda-cublas-bench: --reps must be in 1..100000\n");
                return 2;
            }
        } else {
            fprintf(stderr, "usage: cuda-cublas-bench [--reps N]\n");
            return 2;
        }
    }
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        fprintf(stderr, "cuda-cublas-bench: no CUDA device\n");
        return 1;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    int ver = 0;
    cublasHandle_t h;
    CB(cublasCreate(&h));
    CB(cublasGetVersion(h, &ver));
    printf("device: %s, %d SMs, cuBLAS %d\n", prop.name, prop.multiProcessorCount, ver);
    const int T = 2048;
    struct Shape {
        const char *name;
        int n, k;
    } shapes[] = {{"q_a 4096->1024", 1024, 4096},       {"4096->512", 512, 4096},
                  {"q_b 1024->32768", 32768, 1024},     {"o_b 8192->4096", 4096, 8192},
                  {"shared gate 4096->2048", 2048, 4096}, {"shared down 2048->4096", 4096, 2048},
                  {"c_kv 4096->1024", 1024, 4096},      {"gate_inp 4096->256", 256, 4096},
                  {"hc mix 16384->24", 24, 16384}};
    const Fmt fmts[] = {{"f16*f16->f32", CUDA_R_16F, CUDA_R_32F, CUBLAS_COMPUTE_32F, 2, 4},
                        {"bf16*bf16->f32", CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F, 2, 4},
                        {"f32 (TF32 tensor)", CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32, 4, 4},
                        {"f32 (CUDA cores)", CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_PEDANTIC, 4, 4},
                        {"int8*int8->int32, no scales", CUDA_R_8I, CUDA_R_32I, CUBLAS_COMPUTE_32I, 1, 4}};
    const size_t max_nk = (size_t)32768 * 1024 > (size_t)4096 * 8192 ? (size_t)32768 * 1024 : (size_t)4096 * 8192;
    void *w, *x, *y;
    CK(cudaMalloc(&w, max_nk * 4));
    CK(cudaMalloc(&x, (size_t)T * 16384 * 4));
    CK(cudaMalloc(&y, (size_t)T * 32768 * 4));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    printf("%-26s %-30s %10s %9s\n", "shape (x 2048 tokens)", "format", "us", "TFLOP/s");
    for (const Shape &s : shapes) {
        for (const Fmt &f : fmts) {
            k_fill<<<1024, 256>>>(w, (size_t)s.n * s.k, (int)f.ab);
            k_fill<<<1024, 256>>>(x, (size_t)T * s.k, (int)f.ab);
            CK(cudaGetLastError());
            // column-major: Y (n x T, ld n) = Wᵀ-view (W row-major [n][k] is k x n, ld k)ᵀ · X (k x T, ld k)
            const float af = 1.0f, bf = 0.0f;
            const int32_t ai = 1, bi = 0;
            const void *alpha = f.compute == CUBLAS_COMPUTE_32I ? (const void *)&ai : (const void *)&af;
            const void *beta = f.compute == CUBLAS_COMPUTE_32I ? (const void *)&bi : (const void *)&bf;
            cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
            for (int r = 0; r < reps + 3 && st == CUBLAS_STATUS_SUCCESS; r++) {
                if (r == 3) CK(cudaEventRecord(e0));
                st = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.n, T, s.k, alpha, w, f.ab, s.k, x, f.ab, s.k, beta, y, f.c,
                                  s.n, f.compute, CUBLAS_GEMM_DEFAULT);
            }
            if (st != CUBLAS_STATUS_SUCCESS) {
                printf("%-26s %-30s unsupported (status %d)\n", s.name, f.name, (int)st);
                CK(cudaDeviceSynchronize());
                continue;
            }
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms = 0;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            const double us = 1e3 * ms / reps, flop = 2.0 * T * s.n * s.k;
            printf("%-26s %-30s %10.1f %9.1f\n", s.name, f.name, us, flop / us * 1e-6);
        }
    }
    cublasDestroy(h);
    cudaFree(w);
    cudaFree(x);
    cudaFree(y);
    return 0;
}
