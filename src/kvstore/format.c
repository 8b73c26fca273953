/* format.c — the KV payload file bytes (layout in include/ds4_kvstore.h): building a
 * file image from a session, checksums, header parsing and validation, restoring an
 * image into a session, atomic file writes.
 *
 * Owns: every byte offset of the format. Must not: know about directories, quotas, the
 * RAM tier or threads (store.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "core/common.h"
#include "kvstore_internal.h"

static const uint8_t kv_magic[8] = {'D', 'S', '4', 'K', 'V', 'C', '\r', '\n'};

void kv_put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
void kv_put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
uint32_t kv_get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
uint64_t kv_get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

int kv_sha256(const void *a, size_t an, const void *b, size_t bn, uint8_t out[32]) {
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c) return DS4_ERR_NOMEM;
    unsigned len = 0;
    int ok = EVP_DigestInit_ex(c, EVP_sha256(), NULL) && (!an || EVP_DigestUpdate(c, a, an)) &&
             (!bn || EVP_DigestUpdate(c, b, bn)) && EVP_DigestFinal_ex(c, out, &len);
    EVP_MD_CTX_free(c);
    return ok ? 0 : DS4_ERR_UNSUPPORTED;
}

int kv_blob_build(const kv_ident *id, const ds4_session *s, const ds4_kv_save_req *r, ds4_kvblob **out,
                  char *err, size_t errlen) {
    *out = NULL;
    int n_tokens = ds4_session_n_tokens(s);
    if (n_tokens <= 0) return ds4_err(err, errlen, DS4_ERR_ARG, "kv save: the session is empty");
    if (!r || (!r->text && r->text_len)) return ds4_err(err, errlen, DS4_ERR_ARG, "kv save: no text");
    size_t tools_len = 0;
    if (r->n_tools) {
        if (!r->tools) return ds4_err(err, errlen, DS4_ERR_ARG, "kv save: n_tools without tools");
        tools_len = 4;
        for (size_t i = 0; i < r->n_tools; i++) {
            const ds4_kv_tool *t = &r->tools[i];
            if (!t->id_len || t->id_len > 256 || !t->dsml_len || t->dsml_len > UINT32_MAX)
                return ds4_err(err, errlen, DS4_ERR_ARG, "kv save: tool mapping %zu has a bad length", i);
            tools_len += 8 + t->id_len + t->dsml_len;
        }
    }
    if (!r->client && r->client_len) return ds4_err(err, errlen, DS4_ERR_ARG, "kv save: client_len without client");
    size_t payload = ds4_session_snapshot_size(s), size = KV_HDR;
    if (!ds4_add_size(size, r->text_len, &size) || !ds4_add_size(size, payload, &size) ||
        !ds4_add_size(size, tools_len, &size) || !ds4_add_size(size, r->client_len, &size))
        return ds4_err(err, errlen, DS4_ERR_NOMEM, "kv save: size overflow");
    ds4_kvblob *b = calloc(1, sizeof *b);
    uint8_t *d = b ? malloc(size) : NULL;
    if (!d) {
        free(b);
        return ds4_err(err, errlen, DS4_ERR_NOMEM, "kv save: cannot allocate %zu bytes", size);
    }
    memset(d, 0, KV_HDR);
    memcpy(d, kv_magic, 8);
    kv_put_u32(d + 8, KV_VERSION);
    kv_put_u32(d + 12, KV_HDR);
    memcpy(d + 16, id->id.full, 32);
    memcpy(d + 48, id->id.base, 32);
    kv_put_u32(d + 80, (uint32_t)id->mode);
    kv_put_u32(d + 84, (uint32_t)r->reason);
    kv_put_u32(d + 88, (r->n_tools ? 1u : 0u) | (r->client_len ? 2u : 0u));
    kv_put_u32(d + 92, (uint32_t)n_tokens);
    uint64_t now = (uint64_t)time(NULL);
    kv_put_u64(d + 96, now);
    kv_put_u64(d + 104, r->text_len);
    kv_put_u64(d + 112, payload);
    kv_put_u64(d + 120, tools_len);
    kv_put_u64(d + 128, r->client_len);
    kv_put_u64(d + KV_STATS + 8, now);
    size_t off = KV_HDR;
    if (r->text_len) memcpy(d + off, r->text, r->text_len);
    off += r->text_len;
    size_t written = 0;
    int rc = ds4_session_snapshot(s, d + off, payload, &written, err, errlen);
    if (rc == 0 && written != payload) rc = ds4_err(err, errlen, DS4_ERR_FORMAT, "kv save: snapshot size changed");
    if (rc == 0 && kv_sha256(r->text, r->text_len, NULL, 0, b->key) < 0)
        rc = ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "kv save: SHA-256 unavailable");
    if (rc < 0) {
        free(d);
        free(b);
        return rc;
    }
    off += payload;
    if (r->n_tools) {
        kv_put_u32(d + off, (uint32_t)r->n_tools);
        off += 4;
        for (size_t i = 0; i < r->n_tools; i++) {
            const ds4_kv_tool *t = &r->tools[i];
            kv_put_u32(d + off, (uint32_t)t->id_len);
            kv_put_u32(d + off + 4, (uint32_t)t->dsml_len);
            memcpy(d + off + 8, t->id, t->id_len);
            memcpy(d + off + 8 + t->id_len, t->dsml, t->dsml_len);
            off += 8 + t->id_len + t->dsml_len;
        }
    }
    if (r->client_len) memcpy(d + off, r->client, r->client_len);
    off += r->client_len;
    DS4_ASSERT(off == size);
    atomic_init(&b->refs, 1);
    b->data = d;
    b->size = size;
    b->text_len = r->text_len;
    b->n_tokens = n_tokens;
    *out = b;
    return 0;
}

int kv_parse_header(const uint8_t *h, uint64_t file_size, kv_meta *m, char *err, size_t errlen) {
    if (file_size < KV_HDR) return ds4_err(err, errlen, DS4_ERR_FORMAT, "truncated header (%llu bytes)", (unsigned long long)file_size);
    if (memcmp(h, kv_magic, 8) != 0) return ds4_err(err, errlen, DS4_ERR_FORMAT, "not a ds4 KV cache file (magic)");
    if (kv_get_u32(h + 8) != KV_VERSION || kv_get_u32(h + 12) != KV_HDR)
        return ds4_err(err, errlen, DS4_ERR_FORMAT, "KV cache file version %u not supported", kv_get_u32(h + 8));
    memcpy(m->full, h + 16, 32);
    memcpy(m->base, h + 48, 32);
    m->mode = kv_get_u32(h + 80);
    m->reason = kv_get_u32(h + 84);
    m->flags = kv_get_u32(h + 88);
    m->n_tokens = kv_get_u32(h + 92);
    m->created = kv_get_u64(h + 96);
    m->text_bytes = kv_get_u64(h + 104);
    m->payload_bytes = kv_get_u64(h + 112);
    m->tools_bytes = kv_get_u64(h + 120);
    m->client_bytes = kv_get_u64(h + 128);
    m->hits = kv_get_u32(h + KV_STATS);
    m->last_used = kv_get_u64(h + KV_STATS + 8);
    uint64_t want = KV_HDR;
    if (m->n_tokens == 0 || m->n_tokens > INT32_MAX || m->mode > 1 || m->flags > 3 ||
        (m->flags & 1) != (m->tools_bytes != 0) || ((m->flags >> 1) & 1) != (m->client_bytes != 0))
        return ds4_err(err, errlen, DS4_ERR_FORMAT, "bad header fields");
    for (unsigned i = 136; i < KV_IMMUTABLE; i++)
        if (h[i]) return ds4_err(err, errlen, DS4_ERR_FORMAT, "bad header fields (reserved bytes)");
    if (!ds4_add_u64(want, m->text_bytes, &want) || !ds4_add_u64(want, m->payload_bytes, &want) ||
        !ds4_add_u64(want, m->tools_bytes, &want) || !ds4_add_u64(want, m->client_bytes, &want) || want != file_size)
        return ds4_err(err, errlen, DS4_ERR_FORMAT, "size %llu does not match the header (truncated or foreign)",
                       (unsigned long long)file_size);
    return 0;
}

static void hex8(const uint8_t *h, char *out) {
    for (int i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", h[i]);
}

int kv_check_compat(const kv_meta *m, const kv_ident *id, bool any_quant, char *err, size_t errlen) {
    if ((int)m->mode != id->mode)
        return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "written in %s numeric mode, the engine runs %s",
                       m->mode ? "exact" : "production", id->mode ? "exact" : "production");
    if (memcmp(m->full, id->id.full, 32) == 0) return 0;
    char a[17], b[17];
    if (memcmp(m->base, id->id.base, 32) == 0) {
        if (any_quant) return 0;
        hex8(m->full, a);
        hex8(id->id.full, b);
        return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED,
                       "written by another quantization of this model (%s, running %s); allow with any-quant", a, b);
    }
    hex8(m->base, a);
    hex8(id->id.base, b);
    return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "written by another model (identity %s, running %s)", a, b);
}

int kv_finish_header(const ds4_kvblob *b, uint8_t hdr[KV_HDR]) {
    memcpy(hdr, b->data, KV_HDR);
    uint8_t sum[32];
    if (kv_sha256(hdr, KV_IMMUTABLE, b->data + KV_HDR, b->size - KV_HDR, sum) < 0) return DS4_ERR_UNSUPPORTED;
    memcpy(hdr + KV_SUM, sum, 32);
    return 0;
}

int kv_verify_image(const uint8_t *img, size_t size, const kv_meta *m, char *err, size_t errlen) {
    (void)m;
    uint8_t sum[32];
    if (kv_sha256(img, KV_IMMUTABLE, img + KV_HDR, size - KV_HDR, sum) < 0)
        return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "SHA-256 unavailable");
    if (memcmp(sum, img + KV_SUM, 32) != 0) return ds4_err(err, errlen, DS4_ERR_FORMAT, "checksum mismatch (corrupt file)");
    return 0;
}

/* Parses the tool map into hit (copied). Malformed maps were excluded by the checksum
 * unless the writer itself was broken; still bounds-checked. */
static int parse_tools(const uint8_t *p, uint64_t n, ds4_kv_hit *hit, size_t text_len, size_t client_len,
                       char *err, size_t errlen) {
    size_t cnt = n >= 4 ? kv_get_u32(p) : 0;
    if (n && n < 4) return ds4_err(err, errlen, DS4_ERR_FORMAT, "malformed tool map");
    if (cnt > n / 8) return ds4_err(err, errlen, DS4_ERR_FORMAT, "malformed tool map");
    /* one allocation: tool array, text + NUL, client bytes (8-aligned), tool bytes */
    size_t client_off = cnt * sizeof(ds4_kv_tool) + text_len + 1;
    client_off = (client_off + 7) & ~(size_t)7;
    char *mem = malloc(client_off + client_len + n + 16);
    if (!mem) return ds4_err(err, errlen, DS4_ERR_NOMEM, "out of memory");
    hit->mem_ = mem;
    ds4_kv_tool *tools = (ds4_kv_tool *)(void *)mem;
    char *bytes = mem + cnt * sizeof(ds4_kv_tool);
    hit->text = bytes; /* filled by the caller */
    hit->client = client_len ? mem + client_off : NULL;
    hit->client_len = client_len;
    bytes = mem + client_off + client_len;
    size_t off = 4;
    for (size_t i = 0; i < cnt; i++) {
        if (n - off < 8) return ds4_err(err, errlen, DS4_ERR_FORMAT, "malformed tool map");
        uint64_t il = kv_get_u32(p + off), dl = kv_get_u32(p + off + 4);
        off += 8;
        if (!il || !dl || il + dl > n - off) return ds4_err(err, errlen, DS4_ERR_FORMAT, "malformed tool map");
        memcpy(bytes, p + off, il + dl);
        tools[i] = (ds4_kv_tool){bytes, il, bytes + il, dl};
        bytes += il + dl;
        off += il + dl;
    }
    if (n && off != n) return ds4_err(err, errlen, DS4_ERR_FORMAT, "malformed tool map (trailing bytes)");
    hit->tools = cnt ? tools : NULL;
    hit->n_tools = cnt;
    return 0;
}

void ds4_kv_hit_free(ds4_kv_hit *h) {
    if (!h) return;
    free(h->mem_);
    memset(h, 0, sizeof *h);
}

int kv_restore_image(ds4_session *s, const uint8_t *img, const kv_meta *m, ds4_kv_hit *hit, char *err,
                     size_t errlen) {
    memset(hit, 0, sizeof *hit);
    const uint8_t *text = img + KV_HDR, *payload = text + m->text_bytes, *tools = payload + m->payload_bytes;
    const uint8_t *client = tools + m->tools_bytes;
    int rc = parse_tools(tools, m->tools_bytes, hit, m->text_bytes, m->client_bytes, err, errlen);
    if (rc < 0) {
        ds4_kv_hit_free(hit);
        return rc;
    }
    if (m->client_bytes) memcpy((void *)hit->client, client, m->client_bytes);
    memcpy((char *)hit->text, text, m->text_bytes);
    ((char *)hit->text)[m->text_bytes] = 0;
    rc = s ? ds4_session_restore(s, payload, m->payload_bytes, err, errlen) : 0; /* s NULL: verify only */
    if (rc == 0 && s && ds4_session_n_tokens(s) != (int)m->n_tokens)
        rc = ds4_err(err, errlen, DS4_ERR_FORMAT, "restored %d tokens, the header says %u", ds4_session_n_tokens(s),
                     m->n_tokens);
    if (rc < 0) {
        ds4_kv_hit_free(hit);
        return rc;
    }
    hit->text_len = m->text_bytes;
    hit->n_tokens = (int)m->n_tokens;
    return 0;
}

int kv_read_at(const char *path, uint64_t off, void *buf, size_t n, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ds4_err(err, errlen, errno == ENOENT ? DS4_ERR_NOT_FOUND : DS4_ERR_IO, "%s: %s", path, strerror(errno));
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, (uint8_t *)buf + got, n - got, (off_t)(off + got));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd);
    return got == n ? 0 : ds4_err(err, errlen, DS4_ERR_IO, "%s: short read at %llu", path, (unsigned long long)off);
}

int kv_read_file(const char *path, uint8_t **out, size_t *size, char *err, size_t errlen) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ds4_err(err, errlen, errno == ENOENT ? DS4_ERR_NOT_FOUND : DS4_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ds4_err(err, errlen, DS4_ERR_IO, "%s: not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        close(fd);
        return ds4_err(err, errlen, DS4_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, buf + got, n - got > (1u << 30) ? (1u << 30) : n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd);
    if (got != n) {
        free(buf);
        return ds4_err(err, errlen, DS4_ERR_IO, "%s: short read", path);
    }
    *out = buf;
    *size = n;
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n) {
        ssize_t k = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int kv_write_atomic(const char *path, const uint8_t *hdr, const uint8_t *body, size_t body_len, char *err,
                    size_t errlen) {
    static atomic_uint seq;
    char tmp[PATH_MAX];
    int k = snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&seq, 1));
    if (k < 0 || (size_t)k >= sizeof tmp) return ds4_err(err, errlen, DS4_ERR_ARG, "path too long");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return ds4_err(err, errlen, DS4_ERR_IO, "%s: %s", tmp, strerror(errno));
    int e = 0;
    if (write_all(fd, hdr, KV_HDR) < 0 || write_all(fd, body, body_len) < 0 || fsync(fd) < 0) e = errno ? errno : EIO;
    if (close(fd) < 0 && !e) e = errno;
    if (!e && rename(tmp, path) < 0) e = errno;
    if (e) {
        unlink(tmp);
        return ds4_err(err, errlen, DS4_ERR_IO, "writing %s: %s", path, strerror(e));
    }
    /* Make the rename durable: fsync the containing directory. */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
    if (!dir[0]) snprintf(dir, sizeof dir, "/");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}
