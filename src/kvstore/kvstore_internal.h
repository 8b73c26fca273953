/* kvstore_internal.h — shared by the KV store's format.c (payload file bytes) and
 * store.c (directory, RAM tier, writer thread).
 *
 * Owns: the in-memory blob and parsed-header types. Must not: be included outside
 * src/kvstore (the public API is include/ds4_kvstore.h).
 */
#ifndef DS4_KVSTORE_INTERNAL_H
#define DS4_KVSTORE_INTERNAL_H

#include <stdatomic.h>

#include "ds4_kvstore.h"

#define KV_HDR 224u
#define KV_IMMUTABLE 160u /* header bytes covered by the checksum */
#define KV_STATS 160u     /* u32 hits, u32 reserved, u64 last-used: rewritten in place */
#define KV_SUM 192u       /* SHA-256 */
/* 3: the payload is a session snapshot v2 (session.c: it names the KV row layout, f32 or a
 * backend's compact rows); version 2 files hold v1 snapshots, which no longer restore */
#define KV_VERSION 3u

typedef struct {
    ds4_model_identity id;
    int mode;
} kv_ident;

/* A whole file image: header (checksum field zero; filled by the writer) + body. */
struct ds4_kvblob {
    atomic_int refs;
    uint8_t *data;          /* [size] */
    size_t size;
    size_t text_len;
    int n_tokens;
    uint8_t key[32];        /* SHA-256(text): the file name */
};

typedef struct {
    uint8_t full[32], base[32];
    uint32_t mode, reason, flags, n_tokens, hits;
    uint64_t created, last_used, text_bytes, payload_bytes, tools_bytes, client_bytes;
} kv_meta;

/* format.c */
int kv_sha256(const void *a, size_t an, const void *b, size_t bn, uint8_t out[32]);
int kv_blob_build(const kv_ident *id, const ds4_session *s, const ds4_kv_save_req *r, ds4_kvblob **out,
                  char *err, size_t errlen);
/* Checks magic/version/sizes of a header against the file size (exact). */
int kv_parse_header(const uint8_t *h, uint64_t file_size, kv_meta *m, char *err, size_t errlen);
/* Compatibility of a parsed header with the running engine; reason in err. */
int kv_check_compat(const kv_meta *m, const kv_ident *id, bool any_quant, char *err, size_t errlen);
/* Header copy with the checksum filled in (what goes to disk). */
int kv_finish_header(const ds4_kvblob *b, uint8_t hdr[KV_HDR]);
/* Verifies the checksum of a whole file image. */
int kv_verify_image(const uint8_t *img, size_t size, const kv_meta *m, char *err, size_t errlen);
/* Restores the payload of an image (header already parsed) into s and fills hit
 * (text + tools copied into hit->mem_). */
int kv_restore_image(ds4_session *s, const uint8_t *img, const kv_meta *m, ds4_kv_hit *hit, char *err,
                     size_t errlen);
/* Reads n bytes at offset off of a file (pread(2)); 0, or a negative status. */
int kv_read_at(const char *path, uint64_t off, void *buf, size_t n, char *err, size_t errlen);
/* Reads a whole file into memory (plain read(2)). */
int kv_read_file(const char *path, uint8_t **out, size_t *size, char *err, size_t errlen);
/* Temp file + fsync + rename + dir fsync. dir may be NULL (derived from path). */
int kv_write_atomic(const char *path, const uint8_t *hdr, const uint8_t *body, size_t body_len, char *err,
                    size_t errlen);
void kv_put_u32(uint8_t *p, uint32_t v);
void kv_put_u64(uint8_t *p, uint64_t v);
uint32_t kv_get_u32(const uint8_t *p);
uint64_t kv_get_u64(const uint8_t *p);

#endif
