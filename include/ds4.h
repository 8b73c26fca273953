/* ds4.h — public engine API: a loaded model (ds4_engine) and token timelines over it
 * (ds4_session).
 *
 * Owns: the narrow contract the CLI and server program against. Must not: expose tensor,
 * backend or GGUF types; everything here is opaque handles, plain ints and floats.
 *
 * Conventions: functions return 0 or a negative status (same values as the internal
 * ds4_status: -1 I/O, -2 format, -3 memory, -4 argument, -5 not found, -6 unsupported,
 * -8 cancelled) and write a reason into (err, errlen) when err is not NULL.
 *
 * Threading: an engine and its sessions are used from one thread at a time (the server
 * has a single inference owner). Several sessions may share one engine.
 */
#ifndef DS4_PUBLIC_H
#define DS4_PUBLIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_engine ds4_engine;
typedef struct ds4_session ds4_session;

typedef enum { DS4_BACKEND_AUTO = 0, DS4_BACKEND_CPU = 1, DS4_BACKEND_CUDA = 2 } ds4_backend_kind;

typedef struct {
    int n_threads;              /* CPU threads, 0 = all cores */
    bool exact;                 /* reference math (no activation simulation / rounding) */
    ds4_backend_kind backend;   /* AUTO picks CUDA when built with it and a GPU exists */
} ds4_engine_options;

/* Fills o with the defaults (all cores, production numerics, AUTO backend). */
void ds4_engine_options_default(ds4_engine_options *o);

/* Loads a GGUF (mmap; no weight copies on the CPU). opt may be NULL (defaults). On
 * failure *out is NULL and err names the file and the offending key or tensor. */
int ds4_engine_open(ds4_engine **out, const char *path, const ds4_engine_options *opt, char *err, size_t errlen);
/* Same over a GGUF image in memory (no copy: the engine reads weights from it, and a GPU
 * backend uploads from it). The buffer is the caller's and must outlive the engine. */
int ds4_engine_open_buffer(ds4_engine **out, const void *data, size_t size, const ds4_engine_options *opt, char *err,
                           size_t errlen);
void ds4_engine_close(ds4_engine *e);

int ds4_engine_n_vocab(const ds4_engine *e);
int ds4_engine_n_layer(const ds4_engine *e);
int ds4_engine_n_embd(const ds4_engine *e);
/* Model identity, for refusing KV payloads written by another model (ds4_kvstore.h).
 * full: SHA-256 of the GGUF header bytes [0, data offset): every metadata key/value and
 * the tensor table (names, shapes, types, offsets), so two quantizations differ.
 * base: SHA-256 of the tensor names and shapes plus every metadata key/value outside
 * "general.*" (where file type / quantization version / name live), tensor types left
 * out: the q2 and q4 files of one model share it. Costs one pass over the header. */
typedef struct {
    uint8_t full[32];
    uint8_t base[32];
} ds4_model_identity;
int ds4_engine_model_identity(const ds4_engine *e, ds4_model_identity *out, char *err, size_t errlen);
/* Numeric mode the engine was opened with: 1 = exact reference math, 0 = production. */
int ds4_engine_numeric_mode(const ds4_engine *e);
/* Backend name in words ("cpu"). */
const char *ds4_engine_backend_name(const ds4_engine *e);

typedef struct {
    int ctx;             /* maximum tokens in the timeline (> 0) */
    int rewind_window;   /* W: a rewind by <= W tokens is exact and cheap; default 1024 */
    int prefill_chunk;   /* tokens per prefill step; 0 (default): the backend's (CPU 64, CUDA 4096, at most ctx) */
} ds4_session_options;

void ds4_session_options_default(ds4_session_options *o);
/* The prefill chunk a session of context ctx gets when its options leave it at 0. */
int ds4_engine_prefill_chunk(const ds4_engine *e, int ctx);

/* Bytes a session with these options will allocate (KV state + scratch, including the
 * backend's matmul scratch, which grows with prefill_chunk), computed the same way
 * ds4_session_create allocates. Weights (mmapped) are not included. */
int ds4_engine_memory_estimate(const ds4_engine *e, const ds4_session_options *o, size_t *bytes, char *err, size_t errlen);

/* Creates a session; all KV state and scratch are allocated here (none in decode). */
int ds4_session_create(ds4_session **out, ds4_engine *e, const ds4_session_options *o, char *err, size_t errlen);
void ds4_session_free(ds4_session *s);

/* Called for every newly evaluated position with its logits (n_vocab floats, valid only
 * during the call). Returning non-zero cancels the sync (status -8). */
typedef int (*ds4_logits_cb)(void *user, int pos, const float *logits, int n_vocab);

/* Makes the timeline equal tokens[0..n): keeps the longest common prefix with the
 * current timeline, rewinds (exact, within W: cheap; farther: restarts from the start),
 * and evaluates the rest in chunks. Afterwards ds4_session_logits() holds the logits of
 * position n-1. cb (may be NULL) receives the logits of every position evaluated by this
 * call (asking for them costs an LM head per position). n must be in 1..ctx and every
 * id < n_vocab. On error the session is left empty (n_tokens 0). On a GPU backend the call
 * may return once its work is queued (without cb): ds4_session_logits, ds4_session_top_k,
 * a snapshot or the next sync wait for it. */
int ds4_session_sync(ds4_session *s, const int32_t *tokens, int n, ds4_logits_cb cb, void *user, char *err, size_t errlen);

/* Prefill progress and cancellation for ds4_session_sync (set per session; cb NULL
 * removes it). Called with (0, total) before the first chunk a sync evaluates, then
 * after every chunk with the positions this sync has evaluated so far; total is what
 * the call evaluates (not what it reused; on a GPU backend, queued for evaluation),
 * done == total on the last call. Not called
 * when a sync evaluates nothing. A non-zero return before the last call stops the sync
 * at a chunk boundary: it returns -8 ("cancelled") and the timeline keeps the prefix
 * evaluated so far (a valid state that the next sync extends or rewinds), without
 * logits. The CLI uses it for its progress bar and for Ctrl+C during a long prefill. */
typedef int (*ds4_progress_cb)(void *user, int done, int total);
void ds4_session_set_progress(ds4_session *s, ds4_progress_cb cb, void *user);

/* Logits after the last synced token (n_vocab floats), NULL when the timeline is empty.
 * On a GPU backend the row is copied to the host on the first call after a sync. */
const float *ds4_session_logits(const ds4_session *s);
/* The k (1..n_vocab) largest logits after the last synced token, highest first (ties to
 * the lower id): ids[k], and vals[k] unless vals is NULL. Selected where the logits are
 * (a GPU backend moves 8·k bytes instead of the n_vocab row), so greedy or top-k decoding
 * that never calls ds4_session_logits leaves the row on the device. DS4_ERR_ARG when the
 * session has no logits or k is out of range. */
int ds4_session_top_k(ds4_session *s, int k, int32_t *ids, float *vals, char *err, size_t errlen);
int ds4_session_n_tokens(const ds4_session *s);
/* How many positions the last sync evaluated (0 when it only reused state). */
int ds4_session_last_evaluated(const ds4_session *s);

/* Snapshot of the whole timeline (tokens, KV state, logits) into a memory buffer.
 * ds4_session_snapshot_size gives the bytes needed now. */
size_t ds4_session_snapshot_size(const ds4_session *s);
int ds4_session_snapshot(const ds4_session *s, void *buf, size_t cap, size_t *written, char *err, size_t errlen);
/* Restores a snapshot made by a session of the same engine with the same rewind window
 * and a ctx >= the snapshot's token count. */
int ds4_session_restore(ds4_session *s, const void *buf, size_t n, char *err, size_t errlen);
/* The checks ds4_session_restore makes on a snapshot's fixed-size header (model, KV row
 * layout, rewind window, token count) on its first n bytes, without the body: 0 or the
 * error restore would return for them. Lets a caller skip reading a large snapshot that
 * cannot restore. ds4_session_snapshot_header_bytes() is the prefix it needs. */
size_t ds4_session_snapshot_header_bytes(void);
int ds4_session_snapshot_check(const ds4_session *s, const void *buf, size_t n, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
