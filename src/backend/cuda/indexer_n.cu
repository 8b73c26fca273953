// indexer_n.cu — the batched op indexer_topk (backend.h). PLACEHOLDER: replaced by its owner.
#include "cuda_internal.h"
extern "C" {
#include "core/common.h"
}
void ds4cu_indexer_topk(ds4_backend *, const float *, int64_t, const float *, int64_t, float, int, int64_t,
                        const float *, int, int64_t, int, int, int32_t *) {
    DS4_ASSERT(!"indexer_topk: not implemented yet");
}
