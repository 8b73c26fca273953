// hc_chunk.h — the large-chunk path of the hyper-connection sites hc_site / hc_post_site
// (backend.h) on the CUDA backend, defined in hc_chunk.cu and called by fused_hc.cu for
// production chunks (the gate hc_seq_large there). C++ only.
//
// Owns: the entry point's contract. Must not: be reached for shapes it refuses (the caller
// then runs the op sequence), change the values of the decode-path kernels.
#ifndef DS4_CUDA_HC_CHUNK_H
#define DS4_CUDA_HC_CHUNK_H

#include <stdint.h>

extern "C" {
#include "backend/backend.h"
}

// hc_site (y == NULL: H is read) or hc_post_site (y != NULL: H = hc_post(y, Hp, post,
// comb) is written, then the site runs on it) for n_tok tokens in two launches, with the
// values the contract allows (backend.h hc_site: only the order of the dot products
// behind mix differs from the op sequence; mix_j = s · (fn_j · H[t]) as the fused kernel).
// Shapes: fn F16 [>= (2+h)·h rows][h·d], y [n_tok][d], Hp / H [n_tok][h][d], post
// [n_tok][h], comb [n_tok][h·h], norm_w [d], xn [n_tok][d] (device pointers).
// Returns false, having launched nothing, unless: fn is F16, 1 <= h <= 4, d % 4 == 0,
// every float array 16-byte aligned, fn rows 8-byte aligned. Values of a token do not
// depend on n_tok or on the other tokens (the partition depends on h and d only).
bool ds4cu_hc_chunk(ds4_backend *be, const ds4_tensor *fn, const float *scale, const float *base, const float *y,
                    const float *Hp, const float *H, int n_tok, int h, int64_t d, int iters, double hc_eps,
                    double eps, const float *norm_w, float *post, float *comb, float *xn);

#endif
