/* test_engine_model.h — builds tiny DeepSeek V4 GGUFs for the engine tests, written
 * straight from MODEL.md §18–19 with the GGUF writer (independent of src/model/layout.c),
 * with switches for every loading fault the tests provoke.
 *
 * The model: 4 layers — 0 sliding (hash MoE), 1 CSA ratio 4 (hash), 2 HCA ratio 8
 * (scored), 3 CSA ratio 8 (scored); d 64, vocab 96, 4 heads of 32 (rope 16), window 8,
 * indexer 4 heads of 16 with top-k 3, 4 experts (2 used) of width 32, 4 HC streams.
 */
#ifndef DS4_TEST_ENGINE_MODEL_H
#define DS4_TEST_ENGINE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t mat_type;     /* dense matrices (F32, F16, BF16, Q8_0) */
    uint32_t exp_type;     /* routed experts */
    uint32_t roundtrip;    /* if not F32: values pass through this type first (then written as mat/exp type) */
    uint64_t seed;
    const char *omit;      /* tensor to leave out */
    const char *bad_type;  /* tensor written with an unacceptable type (I32 / F32 for tid2eid) */
    const char *bad_shape; /* tensor written with one more row */
    const char *omit_key;  /* metadata key to leave out */
    int bad_ratio;         /* compress_ratios[2] = 100000 (out of range) */
    int short_clamp;       /* swiglu_clamp_exp with n_layer − 1 entries */
    int bad_groups;        /* output_group_count 3 (does not divide 4 heads) */
    int bad_tid2eid;       /* a tid2eid entry >= expert_count */
    const char *u32_key;   /* metadata key (without "deepseek4.") written as u32_val instead */
    uint32_t u32_val;
    const char *f32_key;   /* metadata key (without "deepseek4.") written as f32_val instead */
    float f32_val;
} tm_opts;

#define TM_VOCAB 96

/* Writes the model to path; returns 0 or a negative status (message in err). */
int tm_write(const tm_opts *o, const char *path, char *err, size_t errlen);
void tm_default(tm_opts *o);

typedef struct ds4_engine ds4_engine;
/* Opens a model file on the CPU backend with 2 threads (exact or production numerics);
 * NULL on failure, the reason printed to stderr. */
ds4_engine *tm_open_cpu(const char *path, bool exact);

#endif
