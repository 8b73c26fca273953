// attn_n.cu — the batched op attention_n (backend.h). PLACEHOLDER: replaced by its owner.
#include "cuda_internal.h"
extern "C" {
#include "core/common.h"
}
void ds4cu_attention_n(ds4_backend *, const float *, int64_t, int, int64_t, const float *, int, int, const float *,
                       int, const int32_t *, int, const float *, float, int, int64_t, int, const float *, float *,
                       int64_t) {
    DS4_ASSERT(!"attention_n: not implemented yet");
}
