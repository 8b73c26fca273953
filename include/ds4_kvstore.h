/* ds4_kvstore.h — public API of the KV cache store: session snapshots kept in host RAM
 * (LRU) and on disk (one file per rendered text prefix), found again by longest byte
 * prefix of a rendered prompt (SERVING.md §7; the policy of *when* to save lives in the
 * server/CLI, not here).
 *
 * Owns: the payload file format, the store directory (naming, index, quota/eviction,
 * atomic writes, locking), the RAM tier, an optional background writer thread.
 * Must not: decide cache policy (min tokens, alignment, save moments) or touch the
 * session except through ds4_session_snapshot / ds4_session_restore.
 *
 * File format (little-endian), version 3 (older files are refused as unsupported: version
 * 2 files carry engine snapshots of the previous layout):
 *   [0,8)     magic "DS4KVC\r\n"          [8,12)  u32 version = 3
 *   [12,16)   u32 header bytes = 224       [16,48) model identity (full, with quant)
 *   [48,80)   model identity base (without quant)
 *   [80,84)   u32 numeric mode (0 production, 1 exact)
 *   [84,88)   u32 save reason (DS4_KV_REASON_*)
 *   [88,92)   u32 flags: bit0 tool map present, bit1 client data present
 *   [92,96)   u32 token count (> 0)         [96,104) u64 creation Unix time
 *   [104,112) u64 text bytes   [112,120) u64 payload bytes   [120,128) u64 tool-map bytes
 *   [128,136) u64 client-data bytes          [136,160) reserved (0)
 *   --- bytes [0,160) are immutable and covered by the checksum ---
 *   [160,164) u32 hit count   [164,168) reserved   [168,176) u64 last-used Unix time
 *   [176,192) reserved (0)    --- [160,192) is rewritten in place, not checksummed ---
 *   [192,224) SHA-256 over header[0,160) || text || payload || tool map || client data
 *   then: text (rendered prefix, UTF-8, no NUL), engine snapshot payload
 *   (ds4_session_snapshot bytes; they name the KV row layout of the backend that wrote
 *   them, f32 or compact, and restore only into a session with that layout: another
 *   layout is a failed restore, which the store logs and treats as a miss), tool map:
 *   u32 count, count × {u32 id_len, u32 dsml_len, id, dsml}, client data (opaque bytes
 *   of the writer: the server stores the exact token ids of the prefix, the CLI its
 *   transcript and settings). The file size must be exactly 224 + the four sizes.
 *
 * Directory: files are named <64 hex of SHA-256(text)>.kv; nothing else is read. Writes
 * go to <name>.tmp.<pid>.<seq>, are fsync'ed, renamed into place, and the directory is
 * fsync'ed. Multi-process safety: a file is immutable once renamed (except the stats
 * area, outside the checksum); readers verify the checksum and never lock; an exclusive
 * flock(2) on DIR/lock serializes every directory mutation that depends on a listing
 * (quota enforcement / eviction, stale temp cleanup, corrupt-file removal, in-place
 * stats), so two processes sharing a directory never miscount the quota or delete a
 * file the other just renamed in. Temp files are removed only when their pid is dead.
 *
 * Threading: one store may be used from several threads (an internal mutex guards the
 * RAM tier and the index); restores into a session follow ds4.h's rule (one thread at a
 * time per session).
 */
#ifndef DS4_KVSTORE_H
#define DS4_KVSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ds4.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    DS4_KV_REASON_UNKNOWN = 0,
    DS4_KV_REASON_COLD = 1,
    DS4_KV_REASON_CONTINUED = 2,
    DS4_KV_REASON_EVICT = 3,
    DS4_KV_REASON_SHUTDOWN = 4,
    DS4_KV_REASON_MANUAL = 5, /* CLI /save */
};

/* Where a save goes / where a hit came from. */
enum { DS4_KV_RAM = 1, DS4_KV_DISK = 2 };

typedef struct ds4_kvstore ds4_kvstore;
typedef struct ds4_kvblob ds4_kvblob; /* one serialized entry, immutable, refcounted */

typedef struct {
    const char *dir;        /* disk tier directory (mkdir -p, 0700); NULL = RAM only */
    uint64_t space_mb;      /* disk budget for all *.kv files; 0 = 4096 */
    int ram_sessions;       /* RAM tier: at most this many snapshots (0 = no RAM tier) */
    uint64_t ram_mb;        /* ... and at most this many MiB in total (0 = unbounded) */
    bool any_quant;         /* accept files of the same model with another quant variant */
    bool background_writer; /* disk writes run on an internal thread (ds4_kvstore_put) */
} ds4_kvstore_options;

void ds4_kvstore_options_default(ds4_kvstore_options *o);

/* One exact-DSML tool replay mapping (SERVING.md §6.5). Not NUL-terminated. */
typedef struct {
    const char *id;
    size_t id_len;
    const char *dsml;
    size_t dsml_len;
} ds4_kv_tool;

/* What to save alongside the snapshot. text: the rendered prefix that the session's
 * current tokens represent (the lookup key). */
typedef struct {
    const char *text;
    size_t text_len;
    int reason;                 /* DS4_KV_REASON_* */
    const ds4_kv_tool *tools;   /* may be NULL */
    size_t n_tools;
    const void *client;         /* optional opaque client data (checksummed with the rest) */
    size_t client_len;
} ds4_kv_save_req;

/* A restored entry. tools/text point into memory owned by the hit (ds4_kv_hit_free). */
typedef struct {
    int tier;           /* DS4_KV_RAM or DS4_KV_DISK */
    size_t text_len;    /* bytes of the prompt covered by the restored state */
    int n_tokens;       /* tokens now in the session */
    const char *text;   /* the stored text (text_len bytes + NUL) */
    ds4_kv_tool *tools;
    size_t n_tools;
    const void *client; /* the stored client data (8-byte aligned), NULL if none */
    size_t client_len;
    void *mem_;         /* private */
} ds4_kv_hit;
void ds4_kv_hit_free(ds4_kv_hit *h);

typedef struct {
    bool disk_enabled;          /* false: no dir, or degraded after an I/O failure */
    size_t disk_files;
    uint64_t disk_bytes;
    size_t ram_entries;
    uint64_t ram_bytes;
    uint64_t writes, write_failures, evictions, corrupt_removed, pending_writes;
    double last_write_s;        /* seconds of the last disk write (checksum + write + fsync) */
} ds4_kvstore_stats;

/* Opens the store for engine e (its identity and numeric mode tag every file). A
 * directory that cannot be created or written is not an error: the store opens with
 * the disk tier disabled and logs a warning (stats.disk_enabled = false). Runs stale
 * temp cleanup and quota enforcement. Errors: bad options, out of memory. */
int ds4_kvstore_open(ds4_kvstore **out, ds4_engine *e, const ds4_kvstore_options *o, char *err, size_t errlen);
/* Drains the write queue (pending writes complete), stops the writer, frees all. */
void ds4_kvstore_close(ds4_kvstore *st);

/* Serializes the session (tokens, logits, KV state) and the request into a new blob
 * (refcount 1): one allocation and a memcpy of the state, no hashing, no I/O — the part
 * that has to run on the inference thread. Fails if the session is empty. */
int ds4_kvstore_serialize(ds4_kvstore *st, const ds4_session *s, const ds4_kv_save_req *r, ds4_kvblob **out,
                          char *err, size_t errlen);
void ds4_kvblob_release(ds4_kvblob *b);
size_t ds4_kvblob_bytes(const ds4_kvblob *b); /* size of the file it becomes */

/* Stores the blob (takes its own references): where & DS4_KV_RAM inserts it into the
 * RAM tier (replacing an entry with the same text, evicting LRU entries over the
 * bounds); where & DS4_KV_DISK writes it, on the writer thread when the store has one
 * (returns at once), else synchronously. Disk failures degrade, they are not returned. */
int ds4_kvstore_put(ds4_kvstore *st, ds4_kvblob *b, int where, char *err, size_t errlen);

/* The synchronous disk write (what the writer thread runs): checksum, temp file, fsync,
 * rename, dir fsync, then quota enforcement with this file protected. Returns 0, or
 * negative if the write failed (the disk tier is then disabled with a warning), or
 * DS4_ERR_ARG (-4) if the file alone exceeds the budget (skipped, not an I/O failure). */
int ds4_kvstore_write(ds4_kvstore *st, const ds4_kvblob *b, char *err, size_t errlen);

/* serialize + put + release. */
int ds4_kvstore_save(ds4_kvstore *st, const ds4_session *s, const ds4_kv_save_req *r, int where, char *err,
                     size_t errlen);

/* Waits until every queued disk write has finished. */
void ds4_kvstore_flush(ds4_kvstore *st);

/* Longest-prefix restore: among RAM entries and disk files whose text is a byte prefix
 * of prompt[0..len) and that hold >= min_tokens tokens, restores the longest (RAM wins
 * a tie) into s. Disk candidates are verified (checksum, identity, mode, sizes) before
 * restoring; a corrupt one is removed and the next candidate is tried; one from another
 * model/mode is skipped. On success the file's hit count and last-used time are
 * updated. Returns 0 with *hit filled, DS4_ERR_NOT_FOUND (-5) when nothing matches
 * (session untouched), or another negative status if a restore into s failed (the
 * session is then empty). */
int ds4_kvstore_restore(ds4_kvstore *st, ds4_session *s, const char *prompt, size_t len, int min_tokens,
                        ds4_kv_hit *hit, char *err, size_t errlen);

/* Deletes a file (e.g. "consumed" on load, SERVING.md §7.6) and the RAM entry of text. */
void ds4_kvstore_forget(ds4_kvstore *st, const char *text, size_t len);

void ds4_kvstore_get_stats(ds4_kvstore *st, ds4_kvstore_stats *out);

/* Single payload file outside any store (CLI /save, /load): the same format. save writes
 * atomically to path. load verifies the checksum and refuses a file from another model
 * (unless any_quant and only the quant variant differs) or another numeric mode, with
 * the reason in err; on success the session holds the state and hit->text the text.
 * load with s == NULL only verifies the file and fills hit (text, client data): a client
 * reads its settings first (e.g. the context size to create the session with). */
int ds4_kvfile_save(ds4_engine *e, const ds4_session *s, const ds4_kv_save_req *r, const char *path, char *err,
                    size_t errlen);
int ds4_kvfile_load(ds4_engine *e, ds4_session *s, const char *path, bool any_quant, ds4_kv_hit *hit, char *err,
                    size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
