// graph.h — decode steps replayed as CUDA graphs (backend.h graph_begin / graph_end).
//
// Owns: the recorder that, between graph_begin and graph_end of one backend, takes the
// kernel launches and staging copies the ops issue on the backend's main stream instead
// of issuing them; cuts them into segments of at most a few dozen kernels; and runs each
// segment as an instantiated CUDA graph. A segment's executable graph is cached by its
// ordinal in the step and its structure (the sequence of kernel functions, argument sizes
// and copies), so a later step with the same structure only patches the nodes whose
// arguments (grid, shared memory, parameter bytes, copy addresses) changed — positions,
// row counts and ring slots of the new token — and launches the graph: one driver call
// per segment instead of one per kernel, with the kernels' programmatic launch edges kept.
// Values are those of launching the same kernels with the same arguments in the same
// order (the graph is built from exactly the recorded launches), so results are
// bit-identical to the stream path.
// Must not: reorder work, or keep a launch deferred past anything that waits for the
// stream or frees memory: such sync points (reads, writes, scratch growth, the side
// stream, a full staging arena) call graph_sync_point first, which issues what was
// recorded and ends recording for the rest of the step (the ops then launch directly).
#ifndef DS4_CUDA_GRAPH_H
#define DS4_CUDA_GRAPH_H

#include <cuda_runtime.h>
#include <stddef.h>

namespace ds4cu {

struct GraphRec;

// A recorder for the backend stream st (the recorder never touches other streams).
// NULL when graphs are turned off (DS4_CUDA_GRAPH=0) or allocation failed.
GraphRec *graph_create(cudaStream_t st);
void graph_destroy(GraphRec *r);
// Bracket one step. begin waits until the previous step's graphs have consumed the
// staging arena; end issues the last segment (work may still be running on return).
void graph_begin(GraphRec *r);
void graph_end(GraphRec *r);
// Issues the recorded launches and stops recording until the next graph_begin (no-op
// when r is NULL or not recording). Call before any synchronisation, direct copy or
// allocation on the stream.
void graph_sync_point(GraphRec *r);
// While recording: copies `bytes` of host memory into the step's pinned arena, records
// the host-to-device copy into the device arena and returns the device address (valid for
// kernels recorded afterwards in this step). NULL when not recording or the arena is full
// (then recording has stopped and the caller stages through its own ring).
void *graph_stage(GraphRec *r, const void *host, size_t bytes);
// While recording: records a device-to-device copy on the stream; false when not
// recording (the caller copies directly).
bool graph_copy_d2d(GraphRec *r, void *dst, const void *src, size_t bytes);
// Counters for diagnostics (DS4_CUDA_GRAPH_STATS=1 prints them at destroy).
struct GraphStats {
    long steps, segments, builds, patched_nodes, kernels, stops, evicted;
};

}  // namespace ds4cu

#endif
