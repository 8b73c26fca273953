// ops_topkv.cu — topk_vals (backend.h; CUDA topk_vals.cu) against the definition: the CPU
// reference selection ds4_topk_host (the k largest, ties to the lower index, NaN last,
// −0 == +0) and the selected values, bit for bit. Rows with many ties, ±0, ±inf and NaN,
// n from 1 to Flash's vocabulary (129,280), k = 1 (the grid argmax), 2 <= k <= 8 (the grid
// top-k, lists of 2 / 4 / 8 words) and k > 8 (radix select + gather). Tolerance 0: a selection either is the definition's or is wrong.
#include "ops_harness.h"

static void topkv_case(ds4_backend *G, const char *name, const std::vector<float> &x, int k) {
    const int n = (int)x.size();
    std::vector<int32_t> ref((size_t)k), ids((size_t)k, -1);
    std::vector<float> vals((size_t)k, 0.0f);
    ds4_topk_host(x.data(), n, k, ref.data());
    float *d = (float *)G->alloc(G, (size_t)n * 4);
    G->write(G, d, x.data(), (size_t)n * 4);
    G->topk_vals(G, d, n, k, ids.data(), vals.data());
    G->release(G, d);
    int bad = -1;
    for (int j = 0; j < k && bad < 0; j++)
        if (ids[j] != ref[j] || memcmp(&vals[j], &x[(size_t)ref[j]], 4) != 0) bad = j;
    char lab[96];
    snprintf(lab, sizeof lab, "topk_vals %s n %d k %d", name, n, k);
    printf("%s %-44s %s\n", bad < 0 ? "ok  " : "FAIL", lab,
           bad < 0 ? "" : "selection or value differs from ds4_topk_host");
    if (bad >= 0) printf("     first difference at %d: id %d (want %d)\n", bad, ids[bad], ref[bad]);
    (bad < 0 ? g_pass : g_fail)++;
}

void ops_topk_vals(ds4_backend *C, ds4_backend *G, const char *mode) {
    (void)C;
    if (!G->topk_vals) {
        printf("skip topk_vals (%s): backend has no topk_vals\n", mode);
        return;
    }
    const int ns[] = {1, 7, 300, 5000, 129280};
    for (int n : ns) {
        std::vector<float> spread = rvec((size_t)n, 30.0f), ties((size_t)n), special((size_t)n);
        for (int i = 0; i < n; i++) ties[(size_t)i] = (float)(int)(urand() * 8) - 4.0f;   // 8 values: many ties
        for (int i = 0; i < n; i++) {
            const double u = urand();
            special[(size_t)i] = u < 0.1 ? NAN : u < 0.2 ? -INFINITY : u < 0.3 ? -0.0f : u < 0.4 ? 0.0f
                                 : srand1() * 1e-3f;
        }
        if (n > 3) special[(size_t)n / 2] = INFINITY;
        const int ks[] = {1, 2, 3, 4, 5, 8, 9, 40, 256, n};
        for (int k : ks) {
            if (k > n || (k == n && n > 5000)) continue;
            topkv_case(G, "spread", spread, k);
            topkv_case(G, "ties", ties, k);
            topkv_case(G, "nan/inf/±0", special, k);
        }
    }
    std::vector<float> all_nan(1000, NAN);   // every value NaN: the lowest indices
    topkv_case(G, "all NaN", all_nan, 1);
    topkv_case(G, "all NaN", all_nan, 3);
    topkv_case(G, "all NaN", all_nan, 8);
    topkv_case(G, "all NaN", all_nan, 12);
}
