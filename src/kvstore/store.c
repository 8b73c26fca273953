/* store.c — the KV store: RAM tier (LRU), disk directory (index by scan, longest-prefix
 * lookup, quota with the SERVING.md §7.7 score, locking, degradation), writer thread.
 *
 * Owns: directory policy and concurrency. Must not: know byte offsets of the file format
 * beyond the stats area (format.c), or decide when to save (server/CLI policy).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"
#include "kvstore_internal.h"

typedef struct {
    char name[72];  /* 64 hex + ".kv" */
    kv_meta m;
    uint64_t size;
    bool compat;
} disk_ent;

struct ds4_kvstore {
    ds4_engine *e;
    kv_ident id;
    ds4_kvstore_options o;
    char *dir;
    int lock_fd;
    uint64_t budget;
    pthread_mutex_t mu;      /* RAM tier, queue, stats, disk flag */
    pthread_mutex_t dmu;     /* this process's directory mutations (flock is per process) */
    atomic_bool disk;
    ds4_kvblob **ram;        /* [n_ram], most recently used last */
    size_t n_ram;
    uint64_t ram_bytes;
    /* writer */
    pthread_t th;
    bool has_th, stop, busy;
    ds4_kvblob *cur;         /* the blob the writer is writing now (searchable, like q) */
    pthread_cond_t cv, done_cv;
    ds4_kvblob **q;
    size_t qn, qcap;
    ds4_kvstore_stats st;
};

void ds4_kvstore_options_default(ds4_kvstore_options *o) {
    memset(o, 0, sizeof *o);
    o->space_mb = 4096;
}

static void blob_ref(ds4_kvblob *b) { atomic_fetch_add(&b->refs, 1); }
void ds4_kvblob_release(ds4_kvblob *b) {
    if (b && atomic_fetch_sub(&b->refs, 1) == 1) {
        free(b->data);
        free(b);
    }
}
size_t ds4_kvblob_bytes(const ds4_kvblob *b) { return b->size; }

static void hex(const uint8_t *h, size_t n, char *out) {
    static const char dg[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = dg[h[i] >> 4];
        out[2 * i + 1] = dg[h[i] & 15];
    }
    out[2 * n] = 0;
}

static bool is_entry_name(const char *n) {
    if (strlen(n) != 67 || strcmp(n + 64, ".kv") != 0) return false;
    for (int i = 0; i < 64; i++)
        if (!((n[i] >= '0' && n[i] <= '9') || (n[i] >= 'a' && n[i] <= 'f'))) return false;
    return true;
}

static void path_of(const ds4_kvstore *st, const char *name, char *out, size_t cap) {
    snprintf(out, cap, "%s/%s", st->dir, name);
}

static void lock_dir(ds4_kvstore *st) {
    pthread_mutex_lock(&st->dmu);
    while (st->lock_fd >= 0 && flock(st->lock_fd, LOCK_EX) < 0 && errno == EINTR) {}
}
static void unlock_dir(ds4_kvstore *st) {
    if (st->lock_fd >= 0) flock(st->lock_fd, LOCK_UN);
    pthread_mutex_unlock(&st->dmu);
}

static void disable_disk(ds4_kvstore *st, const char *why) {
    if (atomic_exchange(&st->disk, false))
        ds4_log(DS4_LOG_WARN, "kv cache: disk tier disabled (%s); continuing without a disk cache", why);
}

static void remove_bad(ds4_kvstore *st, const char *name, const char *why) {
    char p[PATH_MAX];
    path_of(st, name, p, sizeof p);
    ds4_log(DS4_LOG_WARN, "kv cache: removing %s: %s", name, why);
    if (unlink(p) == 0) {
        pthread_mutex_lock(&st->mu);
        st->st.corrupt_removed++;
        pthread_mutex_unlock(&st->mu);
    }
}

/* Lists valid entries (header parsed, size exact). Files whose header is invalid are
 * removed when remove_invalid (the caller holds the directory lock). */
static int scan(ds4_kvstore *st, disk_ent **out, size_t *n, bool remove_invalid) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(st->dir);
    if (!d) return DS4_ERR_IO;
    size_t cap = 0;
    disk_ent *v = NULL;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!is_entry_name(de->d_name)) continue;
        char p[PATH_MAX];
        path_of(st, de->d_name, p, sizeof p);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue; /* removed meanwhile by another process */
        struct stat sb;
        uint8_t h[KV_HDR];
        ssize_t got = fstat(fd, &sb) == 0 ? pread(fd, h, KV_HDR, 0) : -1;
        close(fd);
        disk_ent en;
        memset(&en, 0, sizeof en);
        char why[160];
        if (got < 0 || kv_parse_header(h, got == KV_HDR ? (uint64_t)sb.st_size : (uint64_t)got, &en.m, why, sizeof why) < 0) {
            if (got >= 0 && remove_invalid) remove_bad(st, de->d_name, got == KV_HDR ? why : "truncated header");
            continue;
        }
        memcpy(en.name, de->d_name, 68); /* is_entry_name: exactly 67 chars + NUL */
        en.size = (uint64_t)sb.st_size;
        en.compat = kv_check_compat(&en.m, &st->id, st->o.any_quant, why, sizeof why) == 0;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            disk_ent *nv = realloc(v, cap * sizeof *v);
            if (!nv) break;
            v = nv;
        }
        v[(*n)++] = en;
    }
    closedir(d);
    *out = v;
    return 0;
}

/* SERVING.md §7.7 score: (effective_hits + 1) × tokens / size. */
static double score(const disk_ent *e, uint64_t now) {
    uint64_t t = e->m.last_used ? e->m.last_used : e->m.created;
    double eff = 0;
    if (t) {
        double age = now > t ? (double)(now - t) : 0;
        eff = e->m.hits * pow(2.0, -age / (6 * 3600.0));
        if (eff < 0.01) eff = 0;
    }
    return (eff + 1) * (double)e->m.n_tokens / (double)(e->size ? e->size : 1);
}

static uint64_t last_t(const disk_ent *e) { return e->m.last_used ? e->m.last_used : e->m.created; }

/* Deletes lowest-score files until the listed total fits the budget; protect (may be
 * NULL) is never deleted. Takes the directory lock. */
static void enforce_quota(ds4_kvstore *st, const char *protect) {
    lock_dir(st);
    disk_ent *v;
    size_t n;
    if (scan(st, &v, &n, true) == 0) {
        uint64_t total = 0, now = (uint64_t)time(NULL);
        for (size_t i = 0; i < n; i++) total += v[i].size;
        while (total > st->budget) {
            ptrdiff_t best = -1;
            double bs = 0;
            for (size_t i = 0; i < n; i++) {
                if (!v[i].size || (protect && strcmp(v[i].name, protect) == 0)) continue;
                double s = score(&v[i], now);
                if (best < 0 || s < bs || (s == bs && last_t(&v[i]) < last_t(&v[best]))) {
                    best = (ptrdiff_t)i;
                    bs = s;
                }
            }
            if (best < 0) break;
            char p[PATH_MAX];
            path_of(st, v[best].name, p, sizeof p);
            unlink(p);
            total -= v[best].size;
            v[best].size = 0;
            pthread_mutex_lock(&st->mu);
            st->st.evictions++;
            pthread_mutex_unlock(&st->mu);
        }
    }
    free(v);
    unlock_dir(st);
}

/* Removes temp files left by dead processes (a kill -9 during a write). */
static void clean_temps(ds4_kvstore *st) {
    lock_dir(st);
    DIR *d = opendir(st->dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        const char *t = strstr(de->d_name, ".kv.tmp.");
        if (!t || t - de->d_name != 64) continue;
        long pid = strtol(t + 8, NULL, 10);
        if (pid > 0 && pid != (long)getpid() && kill((pid_t)pid, 0) < 0 && errno == ESRCH) {
            char p[PATH_MAX];
            path_of(st, de->d_name, p, sizeof p);
            unlink(p);
        }
    }
    if (d) closedir(d);
    unlock_dir(st);
}

static void *writer_main(void *arg) {
    ds4_kvstore *st = arg;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        while (!st->qn && !st->stop) pthread_cond_wait(&st->cv, &st->mu);
        if (!st->qn) break;
        ds4_kvblob *b = st->q[0];
        memmove(st->q, st->q + 1, --st->qn * sizeof *st->q);
        st->busy = true;
        st->cur = b;
        pthread_mutex_unlock(&st->mu);
        char err[256];
        if (ds4_kvstore_write(st, b, err, sizeof err) < 0) ds4_log(DS4_LOG_DEBUG, "kv cache: write skipped: %s", err);
        pthread_mutex_lock(&st->mu);
        st->cur = NULL;
        ds4_kvblob_release(b);
        st->busy = false;
        pthread_cond_broadcast(&st->done_cv);
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

static int mkdir_p(const char *dir) {
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) return -1;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0700) < 0 && errno != EEXIST) return -1;
        *s = '/';
    }
    return mkdir(p, 0700) < 0 && errno != EEXIST ? -1 : 0;
}

int ds4_kvstore_open(ds4_kvstore **out, ds4_engine *e, const ds4_kvstore_options *o, char *err, size_t errlen) {
    *out = NULL;
    ds4_kvstore_options dflt;
    if (!o) {
        ds4_kvstore_options_default(&dflt);
        o = &dflt;
    }
    if (o->ram_sessions < 0) return ds4_err(err, errlen, DS4_ERR_ARG, "kv store: ram_sessions < 0");
    ds4_kvstore *st = calloc(1, sizeof *st);
    if (!st) return ds4_err(err, errlen, DS4_ERR_NOMEM, "kv store: out of memory");
    st->e = e;
    st->o = *o;
    st->lock_fd = -1;
    st->budget = (o->space_mb ? o->space_mb : 4096) << 20;
    pthread_mutex_init(&st->mu, NULL);
    pthread_mutex_init(&st->dmu, NULL);
    pthread_cond_init(&st->cv, NULL);
    pthread_cond_init(&st->done_cv, NULL);
    int rc = ds4_engine_model_identity(e, &st->id.id, err, errlen);
    if (rc < 0) {
        ds4_kvstore_close(st);
        return rc;
    }
    st->id.mode = ds4_engine_numeric_mode(e);
    if (o->dir && o->dir[0]) {
        st->dir = strdup(o->dir);
        char lp[PATH_MAX];
        snprintf(lp, sizeof lp, "%s/lock", o->dir);
        if (!st->dir) {
            ds4_kvstore_close(st);
            return ds4_err(err, errlen, DS4_ERR_NOMEM, "kv store: out of memory");
        }
        if (mkdir_p(o->dir) < 0 || (st->lock_fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0 ||
            access(o->dir, W_OK) < 0) {
            ds4_log(DS4_LOG_WARN, "kv cache: directory %s is not usable (%s); continuing without a disk cache",
                    o->dir, strerror(errno));
        } else {
            atomic_store(&st->disk, true);
            clean_temps(st);
            enforce_quota(st, NULL);
        }
    }
    if (o->background_writer && atomic_load(&st->disk)) {
        if (pthread_create(&st->th, NULL, writer_main, st) != 0) {
            ds4_kvstore_close(st);
            return ds4_err(err, errlen, DS4_ERR_NOMEM, "kv store: cannot start the writer thread");
        }
        st->has_th = true;
    }
    *out = st;
    return 0;
}

void ds4_kvstore_flush(ds4_kvstore *st) {
    pthread_mutex_lock(&st->mu);
    while (st->qn || st->busy) pthread_cond_wait(&st->done_cv, &st->mu);
    pthread_mutex_unlock(&st->mu);
}

void ds4_kvstore_close(ds4_kvstore *st) {
    if (!st) return;
    if (st->has_th) {
        pthread_mutex_lock(&st->mu);
        st->stop = true;
        pthread_cond_broadcast(&st->cv);
        pthread_mutex_unlock(&st->mu);
        pthread_join(st->th, NULL);
    }
    for (size_t i = 0; i < st->qn; i++) ds4_kvblob_release(st->q[i]);
    for (size_t i = 0; i < st->n_ram; i++) ds4_kvblob_release(st->ram[i]);
    free(st->q);
    free(st->ram);
    if (st->lock_fd >= 0) close(st->lock_fd);
    free(st->dir);
    pthread_mutex_destroy(&st->mu);
    pthread_mutex_destroy(&st->dmu);
    pthread_cond_destroy(&st->cv);
    pthread_cond_destroy(&st->done_cv);
    free(st);
}

int ds4_kvstore_serialize(ds4_kvstore *st, const ds4_session *s, const ds4_kv_save_req *r, ds4_kvblob **out,
                          char *err, size_t errlen) {
    return kv_blob_build(&st->id, s, r, out, err, errlen);
}

static bool blob_same_text(const ds4_kvblob *a, const ds4_kvblob *b) {
    return a->text_len == b->text_len && memcmp(a->key, b->key, 32) == 0 &&
           memcmp(a->data + KV_HDR, b->data + KV_HDR, a->text_len) == 0;
}

static bool blob_is_prefix(const ds4_kvblob *p, const ds4_kvblob *b) {
    return p->text_len <= b->text_len && memcmp(p->data + KV_HDR, b->data + KV_HDR, p->text_len) == 0;
}

static void ram_remove_at(ds4_kvstore *st, size_t i) {
    st->ram_bytes -= st->ram[i]->size;
    ds4_kvblob_release(st->ram[i]);
    memmove(st->ram + i, st->ram + i + 1, (st->n_ram - i - 1) * sizeof *st->ram);
    st->n_ram--;
}

/* Called with mu held. */
static int ram_insert(ds4_kvstore *st, ds4_kvblob *b) {
    if (st->o.ram_sessions <= 0) return 0;
    uint64_t cap = st->o.ram_mb ? st->o.ram_mb << 20 : UINT64_MAX;
    if (b->size > cap) return 0; /* never fits */
    /* One conversation keeps one RAM entry: an entry whose text is a byte prefix of the
     * new one (the same text, or an earlier frontier of the same conversation) serves no
     * prompt that the new one does not serve longer, so it is dropped instead of pushing
     * another conversation's entry out of the LRU. */
    for (size_t i = st->n_ram; i-- > 0;)
        if (blob_same_text(st->ram[i], b) || blob_is_prefix(st->ram[i], b)) ram_remove_at(st, i);
    while (st->n_ram && (st->n_ram >= (size_t)st->o.ram_sessions || st->ram_bytes + b->size > cap)) ram_remove_at(st, 0);
    ds4_kvblob **nr = realloc(st->ram, (st->n_ram + 1) * sizeof *nr);
    if (!nr) return DS4_ERR_NOMEM;
    st->ram = nr;
    blob_ref(b);
    st->ram[st->n_ram++] = b;
    st->ram_bytes += b->size;
    return 0;
}

int ds4_kvstore_put(ds4_kvstore *st, ds4_kvblob *b, int where, char *err, size_t errlen) {
    int rc = 0;
    pthread_mutex_lock(&st->mu);
    if (where & DS4_KV_RAM) rc = ram_insert(st, b);
    bool queued = false;
    if (rc == 0 && (where & DS4_KV_DISK) && st->has_th && atomic_load(&st->disk)) {
        if (st->qn == st->qcap) {
            size_t nc = st->qcap ? 2 * st->qcap : 8;
            ds4_kvblob **nq = realloc(st->q, nc * sizeof *nq);
            if (nq) {
                st->q = nq;
                st->qcap = nc;
            }
        }
        if (st->qn < st->qcap) {
            blob_ref(b);
            st->q[st->qn++] = b;
            queued = true;
            pthread_cond_signal(&st->cv);
        }
    }
    pthread_mutex_unlock(&st->mu);
    if (rc < 0) return ds4_err(err, errlen, rc, "kv store: out of memory");
    if ((where & DS4_KV_DISK) && !queued && atomic_load(&st->disk)) {
        char e2[256];
        if (ds4_kvstore_write(st, b, e2, sizeof e2) < 0) ds4_log(DS4_LOG_DEBUG, "kv cache: write skipped: %s", e2);
    }
    return 0;
}

int ds4_kvstore_write(ds4_kvstore *st, const ds4_kvblob *b, char *err, size_t errlen) {
    if (!atomic_load(&st->disk)) return ds4_err(err, errlen, DS4_ERR_IO, "disk tier disabled");
    if ((double)b->size * 1.01 > (double)st->budget)
        return ds4_err(err, errlen, DS4_ERR_ARG, "entry of %zu bytes exceeds the disk budget", b->size);
    double t0 = ds4_time_now();
    uint8_t hdr[KV_HDR];
    if (kv_finish_header(b, hdr) < 0) return ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "SHA-256 unavailable");
    char name[72], p[PATH_MAX];
    hex(b->key, 32, name);
    strcat(name, ".kv");
    path_of(st, name, p, sizeof p);
    int rc = kv_write_atomic(p, hdr, b->data + KV_HDR, b->size - KV_HDR, err, errlen);
    pthread_mutex_lock(&st->mu);
    if (rc < 0) st->st.write_failures++;
    else {
        st->st.writes++;
        st->st.last_write_s = ds4_time_now() - t0;
    }
    pthread_mutex_unlock(&st->mu);
    if (rc < 0) {
        disable_disk(st, err);
        return rc;
    }
    enforce_quota(st, name);
    return 0;
}

int ds4_kvstore_save(ds4_kvstore *st, const ds4_session *s, const ds4_kv_save_req *r, int where, char *err,
                     size_t errlen) {
    ds4_kvblob *b;
    int rc = ds4_kvstore_serialize(st, s, r, &b, err, errlen);
    if (rc < 0) return rc;
    rc = ds4_kvstore_put(st, b, where, err, errlen);
    ds4_kvblob_release(b);
    return rc;
}

static int cmp_cand(const void *a, const void *b) {
    const disk_ent *x = a, *y = b;
    if (x->m.text_bytes != y->m.text_bytes) return x->m.text_bytes < y->m.text_bytes ? 1 : -1;
    return x->m.n_tokens < y->m.n_tokens ? 1 : x->m.n_tokens > y->m.n_tokens ? -1 : 0;
}

/* Updates hits / last-used in place (outside the checksum). */
static void touch(ds4_kvstore *st, const char *name, uint32_t hits) {
    char p[PATH_MAX];
    path_of(st, name, p, sizeof p);
    lock_dir(st);
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        uint8_t s[16] = {0};
        kv_put_u32(s, hits + 1);
        kv_put_u64(s + 8, (uint64_t)time(NULL));
        if (pwrite(fd, s, 16, KV_STATS) != 16) ds4_log(DS4_LOG_DEBUG, "kv cache: cannot update stats of %s", name);
        close(fd);
    }
    unlock_dir(st);
}

static int restore_ram(ds4_kvstore *st, ds4_kvblob *b, ds4_session *s, ds4_kv_hit *hit, char *err, size_t errlen) {
    kv_meta m;
    int rc = kv_parse_header(b->data, b->size, &m, err, errlen);
    if (rc == 0) rc = kv_restore_image(s, b->data, &m, hit, err, errlen);
    if (rc == 0) hit->tier = DS4_KV_RAM;
    return rc;
}

int ds4_kvstore_restore(ds4_kvstore *st, ds4_session *s, const char *prompt, size_t len, int min_tokens,
                        ds4_kv_hit *hit, char *err, size_t errlen) {
    memset(hit, 0, sizeof *hit);
    /* RAM candidate: the longest prefix, refreshed to most-recent on use. */
    ds4_kvblob *rb = NULL;
    bool rb_pending = false; /* rb is a disk entry not yet on disk */
    pthread_mutex_lock(&st->mu);
    ptrdiff_t ri = -1;
    for (size_t i = 0; i < st->n_ram; i++) {
        ds4_kvblob *b = st->ram[i];
        if (b->text_len <= len && b->n_tokens >= min_tokens && memcmp(b->data + KV_HDR, prompt, b->text_len) == 0 &&
            (ri < 0 || b->text_len > st->ram[ri]->text_len))
            ri = (ptrdiff_t)i;
    }
    if (ri >= 0) {
        rb = st->ram[ri];
        memmove(st->ram + ri, st->ram + ri + 1, (st->n_ram - (size_t)ri - 1) * sizeof *st->ram);
        st->ram[st->n_ram - 1] = rb;
        blob_ref(rb);
    }
    /* Blobs still queued for (or being written by) the writer are as good as files: a
     * prompt that arrives before its predecessor's save reached the disk still hits. */
    for (size_t i = 0; i <= st->qn; i++) {
        ds4_kvblob *b = i < st->qn ? st->q[i] : st->cur;
        if (!b || b->text_len > len || b->n_tokens < min_tokens || memcmp(b->data + KV_HDR, prompt, b->text_len) != 0 ||
            (rb && b->text_len <= rb->text_len))
            continue;
        ds4_kvblob_release(rb);
        rb = b;
        rb_pending = true;
        blob_ref(rb);
    }
    pthread_mutex_unlock(&st->mu);

    disk_ent *v = NULL;
    size_t n = 0;
    if (st->dir && scan(st, &v, &n, false) == 0 && n) qsort(v, n, sizeof *v, cmp_cand);
    int rc = DS4_ERR_NOT_FOUND;
    char why[256];
    for (size_t i = 0; i < n && rc != 0; i++) {
        const disk_ent *c = &v[i];
        if (!c->compat || c->m.text_bytes > len || (int)c->m.n_tokens < min_tokens) continue;
        if (rb && rb->text_len >= c->m.text_bytes) break; /* RAM is at least as long: use it */
        uint8_t h[32];
        char hx[72];
        if (kv_sha256(prompt, c->m.text_bytes, NULL, 0, h) < 0) continue;
        hex(h, 32, hx);
        strcat(hx, ".kv");
        if (strcmp(hx, c->name) != 0) continue;
        char p[PATH_MAX];
        path_of(st, c->name, p, sizeof p);
        /* the snapshot's header first: a file this session cannot restore (another KV row
         * layout — a CPU and a CUDA process sharing the directory — or rewind window) is a
         * miss without reading the whole file (which may be gigabytes) */
        uint8_t sh[256];
        const size_t shn = ds4_session_snapshot_header_bytes();
        if (s && shn <= sizeof sh && c->m.payload_bytes >= shn &&
            kv_read_at(p, KV_HDR + c->m.text_bytes, sh, shn, why, sizeof why) == 0 &&
            ds4_session_snapshot_check(s, sh, shn, why, sizeof why) < 0) {
            ds4_log(DS4_LOG_WARN, "kv cache: cannot restore %s: %s", c->name, why);
            continue;
        }
        uint8_t *img;
        size_t sz;
        if (kv_read_file(p, &img, &sz, why, sizeof why) < 0) continue; /* gone meanwhile */
        kv_meta m;
        int r = kv_parse_header(img, sz, &m, why, sizeof why);
        if (r == 0) r = kv_verify_image(img, sz, &m, why, sizeof why);
        if (r < 0) {
            lock_dir(st);
            remove_bad(st, c->name, why);
            unlock_dir(st);
            free(img);
            continue;
        }
        if (kv_check_compat(&m, &st->id, st->o.any_quant, why, sizeof why) < 0 || m.text_bytes > len ||
            memcmp(img + KV_HDR, prompt, m.text_bytes) != 0) {
            free(img);
            continue;
        }
        r = kv_restore_image(s, img, &m, hit, why, sizeof why);
        free(img);
        if (r < 0) {
            ds4_log(DS4_LOG_WARN, "kv cache: cannot restore %s: %s", c->name, why);
            continue;
        }
        hit->tier = DS4_KV_DISK;
        touch(st, c->name, m.hits);
        rc = 0;
    }
    free(v);
    if (rc != 0 && rb) {
        rc = restore_ram(st, rb, s, hit, why, sizeof why);
        if (rc == 0 && rb_pending) hit->tier = DS4_KV_DISK;
        if (rc < 0) ds4_err(err, errlen, rc, "kv cache: RAM restore failed: %s", why);
    } else if (rc != 0) {
        ds4_err(err, errlen, DS4_ERR_NOT_FOUND, "kv cache: no stored prefix");
    }
    ds4_kvblob_release(rb);
    return rc;
}

void ds4_kvstore_forget(ds4_kvstore *st, const char *text, size_t len) {
    uint8_t h[32];
    if (kv_sha256(text, len, NULL, 0, h) < 0) return;
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; i < st->n_ram; i++)
        if (st->ram[i]->text_len == len && memcmp(st->ram[i]->key, h, 32) == 0) {
            ram_remove_at(st, i);
            break;
        }
    pthread_mutex_unlock(&st->mu);
    if (!st->dir) return;
    char name[72], p[PATH_MAX];
    hex(h, 32, name);
    strcat(name, ".kv");
    path_of(st, name, p, sizeof p);
    lock_dir(st);
    unlink(p);
    unlock_dir(st);
}

void ds4_kvstore_get_stats(ds4_kvstore *st, ds4_kvstore_stats *out) {
    disk_ent *v = NULL;
    size_t n = 0;
    if (st->dir && atomic_load(&st->disk)) scan(st, &v, &n, false);
    pthread_mutex_lock(&st->mu);
    *out = st->st;
    out->disk_enabled = atomic_load(&st->disk);
    out->ram_entries = st->n_ram;
    out->ram_bytes = st->ram_bytes;
    out->pending_writes = st->qn + (st->busy ? 1 : 0);
    pthread_mutex_unlock(&st->mu);
    out->disk_files = n;
    out->disk_bytes = 0;
    for (size_t i = 0; i < n; i++) out->disk_bytes += v[i].size;
    free(v);
}

int ds4_kvfile_save(ds4_engine *e, const ds4_session *s, const ds4_kv_save_req *r, const char *path, char *err,
                    size_t errlen) {
    kv_ident id;
    int rc = ds4_engine_model_identity(e, &id.id, err, errlen);
    if (rc < 0) return rc;
    id.mode = ds4_engine_numeric_mode(e);
    ds4_kvblob *b;
    if ((rc = kv_blob_build(&id, s, r, &b, err, errlen)) < 0) return rc;
    uint8_t hdr[KV_HDR];
    rc = kv_finish_header(b, hdr) < 0 ? ds4_err(err, errlen, DS4_ERR_UNSUPPORTED, "SHA-256 unavailable")
                                      : kv_write_atomic(path, hdr, b->data + KV_HDR, b->size - KV_HDR, err, errlen);
    ds4_kvblob_release(b);
    return rc;
}

int ds4_kvfile_load(ds4_engine *e, ds4_session *s, const char *path, bool any_quant, ds4_kv_hit *hit, char *err,
                    size_t errlen) {
    memset(hit, 0, sizeof *hit);
    kv_ident id;
    int rc = ds4_engine_model_identity(e, &id.id, err, errlen);
    if (rc < 0) return rc;
    id.mode = ds4_engine_numeric_mode(e);
    uint8_t *img;
    size_t sz;
    if ((rc = kv_read_file(path, &img, &sz, err, errlen)) < 0) return rc;
    kv_meta m;
    char why[256];
    rc = kv_parse_header(img, sz, &m, why, sizeof why);
    if (rc == 0) rc = kv_verify_image(img, sz, &m, why, sizeof why);
    if (rc == 0) rc = kv_check_compat(&m, &id, any_quant, why, sizeof why);
    if (rc == 0) rc = kv_restore_image(s, img, &m, hit, why, sizeof why);
    if (rc == 0) hit->tier = DS4_KV_DISK;
    else ds4_err(err, errlen, rc, "%s: %s", path, why);
    free(img);
    return rc;
}
