// graph.cu — the decode-step recorder and its graph cache (graph.h).
//
// A step's launches are recorded in order into the current segment (kernel function,
// launch shape, the parameter bytes; staging copies as host-to-device copies from the
// step's pinned arena). A segment is issued when it holds kSegDefault kernels (so the GPU
// starts on the first layers while the host records the next), at a sync point and at
// graph_end: the cached graph of the same ordinal and structure is patched where the new
// recording differs and launched, or the recording is captured into a new graph (stream
// capture of exactly the recorded launches, keeping the programmatic-launch edges) and
// instantiated. Structures differ between steps when, e.g., a compressor window closes
// (compress_rows launches) or the indexer starts selecting, so each ordinal keeps a few
// variants; the context length itself only changes arguments and grids.
// Invariant: an executable graph's nodes hold the parameters of its last launch (seg),
// and every launch is preceded by the comparison with the new recording, so a node never
// runs with stale arguments (e.g. a scratch buffer freed and reallocated meanwhile).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "common.cuh"
#include "graph.h"

namespace ds4cu {

thread_local GraphRec *g_rec = nullptr;

namespace {

constexpr int kSegDefault = 64;        // kernels per segment (DS4_CUDA_GRAPH_SEG)
constexpr size_t kArena = (size_t)1 << 20;  // staging bytes per step
constexpr size_t kMaxEntries = 1024;   // cached executable graphs (LRU beyond; DS4_CUDA_GRAPH_CACHE)

enum : uint8_t { OP_KERNEL = 0, OP_COPY = 1 };

struct Op {
    uint8_t kind;
    const void *fn;          // kernel
    dim3 grid, block;
    size_t smem;
    uint32_t a0, na;         // parameters: aoff / asz[a0 .. a0 + na)
    void *dst;               // copy
    const void *src;
    size_t bytes;
    cudaMemcpyKind mk;
};

struct Seg {
    std::vector<Op> ops;
    std::vector<uint32_t> aoff, asz;   // parameter offsets into blob, sizes
    std::vector<uint8_t> blob;
    int kernels = 0;
    void clear() {
        ops.clear();
        aoff.clear();
        asz.clear();
        blob.clear();
        kernels = 0;
    }
    void params(const Op &o, void **out) const {
        for (uint32_t j = 0; j < o.na; j++) out[j] = (void *)(blob.data() + aoff[o.a0 + j]);
    }
};

struct Entry {
    int ord;
    Seg seg;                           // the parameters the executable graph holds
    std::vector<cudaGraphNode_t> nodes;  // one per op
    cudaGraph_t g = nullptr;
    cudaGraphExec_t x = nullptr;
    uint64_t used = 0;
};

// Same kernels with the same parameter sizes, same copies: a node-for-node patchable graph.
bool same_structure(const Seg &a, const Seg &b) {
    if (a.ops.size() != b.ops.size()) return false;
    for (size_t i = 0; i < a.ops.size(); i++) {
        const Op &p = a.ops[i], &q = b.ops[i];
        if (p.kind != q.kind) return false;
        if (p.kind == OP_KERNEL) {
            if (p.fn != q.fn || p.na != q.na) return false;
            for (uint32_t j = 0; j < p.na; j++)
                if (a.asz[p.a0 + j] != b.asz[q.a0 + j]) return false;
        } else if (p.mk != q.mk || p.bytes != q.bytes) {
            return false;
        }
    }
    return true;
}

bool same_params(const Seg &a, const Op &p, const Seg &b, const Op &q) {
    if (p.grid.x != q.grid.x || p.grid.y != q.grid.y || p.grid.z != q.grid.z || p.block.x != q.block.x ||
        p.block.y != q.block.y || p.block.z != q.block.z || p.smem != q.smem)
        return false;
    for (uint32_t j = 0; j < p.na; j++)
        if (memcmp(a.blob.data() + a.aoff[p.a0 + j], b.blob.data() + b.aoff[q.a0 + j], a.asz[p.a0 + j]))
            return false;
    return true;
}

// A CUDA failure here is a device fault, reported like a failed assertion (as the ops').
void ck(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return;
    char msg[256];
    snprintf(msg, sizeof msg, "CUDA backend: %s: %s", what, cudaGetErrorString(e));
    ds4_assert_fail(msg, __FILE__, __LINE__);
}

}  // namespace

struct GraphRec {
    cudaStream_t st;
    bool rec = false;              // recording the current step
    bool broken = false;           // a capture failed: ops issue directly from then on
    int ord = 0;                   // ordinal of the current segment in the step
    int seg_max = kSegDefault;
    size_t max_entries = kMaxEntries;
    Seg cur;
    std::vector<std::vector<Entry *>> by_ord;
    size_t n_entries = 0;
    uint64_t tick = 0;
    uint8_t *ah = nullptr, *ad = nullptr;  // staging arena: pinned host, device
    size_t aoff = 0;
    cudaEvent_t done = nullptr;    // after the last segment of the previous step
    bool stats_print = false;
    GraphStats stats = {};
};

namespace {

// Issues op o of s on r->st, inside a capture (node: receives its graph node) or not
// (node NULL). Returns the CUDA error.
cudaError_t issue(GraphRec *r, const Seg &s, const Op &o, cudaGraphNode_t *node) {
    cudaError_t e;
    if (o.kind == OP_KERNEL) {
        void *pv[64];
        DS4_ASSERT(o.na <= 64);
        s.params(o, pv);
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = o.grid;
        cfg.blockDim = o.block;
        cfg.dynamicSmemBytes = o.smem;
        cfg.stream = r->st;
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = pdl_enabled() ? 1 : 0;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        e = cudaLaunchKernelExC(&cfg, o.fn, pv);
    } else {
        e = cudaMemcpyAsync(o.dst, o.src, o.bytes, o.mk, r->st);
    }
    if (e != cudaSuccess || !node) return e;
    cudaStreamCaptureStatus cs;
    const cudaGraphNode_t *deps = nullptr;
    size_t nd = 0;
    e = cudaStreamGetCaptureInfo(r->st, &cs, nullptr, nullptr, &deps, nullptr, &nd);
    *node = e == cudaSuccess && nd == 1 ? deps[0] : nullptr;
    return e == cudaSuccess && !*node ? cudaErrorUnknown : e;
}

void evict_lru(GraphRec *r) {
    Entry *lru = nullptr;
    size_t oi = 0, ei = 0;
    for (size_t i = 0; i < r->by_ord.size(); i++)
        for (size_t j = 0; j < r->by_ord[i].size(); j++)
            if (!lru || r->by_ord[i][j]->used < lru->used) lru = r->by_ord[i][j], oi = i, ei = j;
    if (!lru) return;
    r->by_ord[oi].erase(r->by_ord[oi].begin() + (long)ei);
    cudaGraphExecDestroy(lru->x);   // an exec still running is freed when it completes
    cudaGraphDestroy(lru->g);
    delete lru;
    r->n_entries--;
    r->stats.evicted++;
}

// A new executable graph from the recording, or NULL when capture or instantiation
// failed (then nothing was issued).
Entry *build(GraphRec *r) {
    Entry *e = new Entry;
    e->ord = r->ord;
    if (cudaStreamBeginCapture(r->st, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        (void)cudaGetLastError();
        delete e;
        return nullptr;
    }
    e->nodes.resize(r->cur.ops.size());
    bool ok = true;
    for (size_t i = 0; i < r->cur.ops.size() && ok; i++) ok = issue(r, r->cur, r->cur.ops[i], &e->nodes[i]) == cudaSuccess;
    cudaGraph_t g = nullptr;
    ok = cudaStreamEndCapture(r->st, &g) == cudaSuccess && ok && g;
    if (ok) ok = cudaGraphInstantiate(&e->x, g, 0) == cudaSuccess;
    if (!ok) {
        (void)cudaGetLastError();
        if (g) cudaGraphDestroy(g);
        delete e;
        return nullptr;
    }
    e->g = g;
    e->seg = r->cur;
    return e;
}

// Issues the current segment: patch + launch a cached graph, or build one.
void seg_flush(GraphRec *r) {
    Seg &s = r->cur;
    if (s.ops.empty()) return;
    r->stats.segments++;
    Entry *hit = nullptr;
    if (!r->broken) {
        if ((size_t)r->ord >= r->by_ord.size()) r->by_ord.resize((size_t)r->ord + 1);
        for (Entry *e : r->by_ord[(size_t)r->ord])
            if (same_structure(e->seg, s)) {
                hit = e;
                break;
            }
        if (hit) {
            for (size_t i = 0; i < s.ops.size(); i++) {
                const Op &o = s.ops[i], &p = hit->seg.ops[i];
                if (o.kind == OP_KERNEL) {
                    if (same_params(s, o, hit->seg, p)) continue;
                    void *pv[64];
                    s.params(o, pv);
                    cudaKernelNodeParams kp = {};
                    kp.func = (void *)o.fn;
                    kp.gridDim = o.grid;
                    kp.blockDim = o.block;
                    kp.sharedMemBytes = (unsigned)o.smem;
                    kp.kernelParams = pv;
                    ck(cudaGraphExecKernelNodeSetParams(hit->x, hit->nodes[i], &kp), "graph: patch kernel");
                    r->stats.patched_nodes++;
                } else if (o.dst != p.dst || o.src != p.src) {
                    ck(cudaGraphExecMemcpyNodeSetParams1D(hit->x, hit->nodes[i], o.dst, o.src, o.bytes, o.mk),
                       "graph: patch copy");
                    r->stats.patched_nodes++;
                }
            }
            std::swap(hit->seg, s);
        } else {
            if (r->n_entries >= r->max_entries) evict_lru(r);
            hit = build(r);
            if (hit) {
                r->by_ord[(size_t)r->ord].push_back(hit);
                r->n_entries++;
                r->stats.builds++;
            } else {
                r->broken = true;
                fprintf(stderr, "ds4: CUDA graph capture failed; decode continues without graphs\n");
            }
        }
    }
    if (hit) {
        hit->used = ++r->tick;
        ck(cudaGraphLaunch(hit->x, r->st), "graph: launch");
    } else {
        for (const Op &o : s.ops) ck(issue(r, s, o, nullptr), "graph: direct launch");
    }
    s.clear();
    r->ord++;
}

}  // namespace

bool graph_rec_kernel(GraphRec *r, cudaStream_t st, const void *k, dim3 grid, dim3 block, size_t smem,
                      void *const *args, const size_t *sizes, int n) {
    if (!r || !r->rec) return false;
    if (st != r->st) { // another stream (the side stream): not recorded, so nothing may wait
        graph_sync_point(r);
        return false;
    }
    Seg &s = r->cur;
    Op o = {};
    o.kind = OP_KERNEL;
    o.fn = k;
    o.grid = grid;
    o.block = block;
    o.smem = smem;
    o.a0 = (uint32_t)s.aoff.size();
    o.na = (uint32_t)n;
    for (int j = 0; j < n; j++) {
        const size_t off = (s.blob.size() + 15) & ~(size_t)15;
        s.blob.resize(off + sizes[j]);
        memcpy(s.blob.data() + off, args[j], sizes[j]);
        s.aoff.push_back((uint32_t)off);
        s.asz.push_back((uint32_t)sizes[j]);
    }
    s.ops.push_back(o);
    s.kernels++;
    r->stats.kernels++;
    if (s.kernels >= r->seg_max) seg_flush(r);
    return true;
}

GraphRec *graph_create(cudaStream_t st) {
    const char *env = getenv("DS4_CUDA_GRAPH");
    if (env && *env == '0') return nullptr;
    GraphRec *r = new GraphRec;
    r->st = st;
    const char *seg = getenv("DS4_CUDA_GRAPH_SEG");
    if (seg && atoi(seg) > 0) r->seg_max = atoi(seg);
    const char *ce = getenv("DS4_CUDA_GRAPH_CACHE");   // tests: a small cache evicts often
    if (ce && atoi(ce) > 0) r->max_entries = (size_t)atoi(ce);
    const char *sp = getenv("DS4_CUDA_GRAPH_STATS");
    r->stats_print = sp && *sp == '1';
    if (cudaMallocHost((void **)&r->ah, kArena) != cudaSuccess || cudaMalloc((void **)&r->ad, kArena) != cudaSuccess ||
        cudaEventCreateWithFlags(&r->done, cudaEventDisableTiming) != cudaSuccess) {
        (void)cudaGetLastError();
        graph_destroy(r);
        return nullptr;
    }
    return r;
}

void graph_destroy(GraphRec *r) {
    if (!r) return;
    if (g_rec == r) g_rec = nullptr;
    if (r->stats_print)
        fprintf(stderr, "cuda graphs: %ld steps, %ld segments, %ld graphs built, %ld nodes patched, %ld kernels, %ld sync stops, %ld evicted\n",
                r->stats.steps, r->stats.segments, r->stats.builds, r->stats.patched_nodes, r->stats.kernels,
                r->stats.stops, r->stats.evicted);
    cudaStreamSynchronize(r->st);
    for (auto &v : r->by_ord)
        for (Entry *e : v) {
            if (e->x) cudaGraphExecDestroy(e->x);
            if (e->g) cudaGraphDestroy(e->g);
            delete e;
        }
    if (r->ah) cudaFreeHost(r->ah);
    if (r->ad) cudaFree(r->ad);
    if (r->done) cudaEventDestroy(r->done);
    delete r;
}

void graph_begin(GraphRec *r) {
    if (!r) return;
    DS4_ASSERT(!r->rec && g_rec == nullptr);
    // the previous step's copies read the pinned arena: done before it is rewritten
    ck(cudaEventSynchronize(r->done), "graph: wait for the previous step");
    r->aoff = 0;
    r->ord = 0;
    r->cur.clear();
    r->rec = true;
    r->stats.steps++;
    g_rec = r;
}

void graph_end(GraphRec *r) {
    if (!r) return;
    if (r->rec) {
        seg_flush(r);
        r->rec = false;
        g_rec = nullptr;
    }
    ck(cudaEventRecord(r->done, r->st), "graph: step event");
}

void graph_sync_point(GraphRec *r) {
    if (!r || !r->rec) return;
    seg_flush(r);
    r->rec = false;
    g_rec = nullptr;
    r->stats.stops++;
}

namespace {
// Records a copy on the stream (the node's addresses are patched like kernel parameters).
void push_copy(GraphRec *r, void *dst, const void *src, size_t bytes, cudaMemcpyKind mk) {
    Op o = {};
    o.kind = OP_COPY;
    o.dst = dst;
    o.src = src;
    o.bytes = bytes;
    o.mk = mk;
    r->cur.ops.push_back(o);
}
}  // namespace

void *graph_stage(GraphRec *r, const void *host, size_t bytes) {
    if (!r || !r->rec) return nullptr;
    const size_t span = (bytes + 255) & ~(size_t)255;
    if (r->aoff + span > kArena) {
        graph_sync_point(r);
        return nullptr;
    }
    uint8_t *h = r->ah + r->aoff, *d = r->ad + r->aoff;
    r->aoff += span;
    memcpy(h, host, bytes);
    push_copy(r, d, h, bytes, cudaMemcpyHostToDevice);
    return d;
}

bool graph_copy_d2d(GraphRec *r, void *dst, const void *src, size_t bytes) {
    if (!r || !r->rec) return false;
    push_copy(r, dst, src, bytes, cudaMemcpyDeviceToDevice);
    return true;
}

}  // namespace ds4cu
