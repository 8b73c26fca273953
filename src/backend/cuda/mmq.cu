// mmq.cu — tensor-core quantized matrix-matrix products (cuda_mmq.h). PLACEHOLDER.
#include "cuda_mmq.h"
extern "C" {
#include "core/common.h"
}
extern "C" int ds4_cuda_mmq_supported(uint32_t, int64_t) { return 0; }
extern "C" int ds4_cuda_mmq(const ds4_cuda_qmat *, const void *, uint64_t, const ds4_cuda_mmq_groups *, int, float *,
                            int64_t, struct CUstream_st *, char *err, size_t errlen) {
    return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "mmq: not implemented yet");
}
