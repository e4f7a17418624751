#include "pushlog.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.h"

#define REC_HEADER 8
#define MAX_RECORD (1u << 30)

typedef struct segment {
    uint64_t first_lsn;
} segment;

/* A covered segment handed to the writer thread to retire. */
typedef struct retiree {
    uint64_t first, last;        /* its lsns */
} retiree;

struct ps_pushlog {
    char dir[PS_PATH_MAX];
    ps_fsync_policy fsync;
    int fd;                      /* current segment */
    /* Records are written at seg_off with pwrite: a segment may be the
     * spare written over, longer than its records until rotate() or close()
     * cuts it (`recycled`). Deleting a covered segment instead, 2.5 GB per
     * write-back at 5M pushed rows/s, held the writer thread for ~1 s (the
     * file system freeing and discarding its blocks), and every reply with
     * it (bench/README.md "Pushing for minutes"). */
    uint64_t seg_off;
    bool recycled;
    uint64_t last_lsn;
    segment *segs;               /* every segment on disk, oldest first */
    size_t nsegs;
    char *buf;                   /* records not yet written; the loop's */
    size_t len, cap;
    uint64_t bytes;
    uint64_t durable_lsn;        /* every record up to it is written */
    pthread_mutex_t fd_lock;     /* fd may be synced by another thread */
    /* The writer thread (ps_pushlog_writer_start). While `busy`, wbuf and
     * fd belong to it; everything else stays the loop's. mu guards the
     * fields from busy on. */
    bool writer_started;
    pthread_t writer;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void (*notify)(void *ctx);
    void *notify_ctx;
    char *wbuf;                  /* the records being written */
    size_t wlen, wcap;
    uint64_t wlast_lsn;          /* the last record in wbuf */
    bool busy;                   /* submitted and not yet reaped */
    bool done;                   /* the writer finished wbuf */
    bool stop;
    int wresult;
    size_t wwritten;             /* bytes of wbuf that reached the file */
    retiree *unlinks;            /* covered segments the writer retires, */
    size_t unlinks_done, nunlinks, unlinks_cap; /* oldest first, from unlinks_done */
    /* One covered segment kept as "spare.<its last lsn, 16 hex>" for the
     * next segment to write over: what a write-back cycle retires and the
     * next rotate() takes. Under mu. */
    bool spare;                  /* there to be taken */
    bool spare_busy;             /* being renamed into place */
    uint64_t spare_last;         /* the lsn of its last record */
};

/* ---- CRC-32C (Castagnoli): SSE4.2 when the CPU has it ------------------- */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static bool crc_hw;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
#if defined(__x86_64__)
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw_run(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t ps_crc32c(uint32_t crc, const void *data, size_t len) {
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = data;
    crc = ~crc;
#if defined(__x86_64__)
    if (crc_hw)
        return ~crc_hw_run(crc, p, len);
#endif
    while (len >= 8) { /* slicing-by-8 */
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= crc;
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^
              crc_table[2][(hi >> 8) & 0xff] ^ crc_table[1][(hi >> 16) & 0xff] ^
              crc_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

/* ---- segments ---------------------------------------------------------- */

static void seg_path(const ps_pushlog *log, uint64_t first, char *out, size_t outlen) {
    snprintf(out, outlen, "%s/%016" PRIx64 ".log", log->dir, first);
}

static void spare_path(const ps_pushlog *log, uint64_t last, char *out, size_t outlen) {
    snprintf(out, outlen, "%s/spare.%016" PRIx64, log->dir, last);
}

/* A covered segment, lsns [first, last], becomes the spare if there is
 * none, else goes. mu is not held (the rename or unlink may take a while:
 * deleting a 2.5 GB segment took 1 s here, bench/README.md). Returns the
 * unlink's error (a segment already gone is none). */
static int retire_segment(ps_pushlog *log, uint64_t first, uint64_t last) {
    pthread_mutex_lock(&log->mu);
    bool take = !log->spare && !log->spare_busy;
    log->spare_busy |= take;
    pthread_mutex_unlock(&log->mu);
    char path[PS_PATH_MAX + 32], sp[PS_PATH_MAX + 32];
    seg_path(log, first, path, sizeof(path));
    bool kept = false;
    if (take) {
        spare_path(log, last, sp, sizeof(sp));
        kept = rename(path, sp) == 0;
    }
    int r = !kept && unlink(path) < 0 && errno != ENOENT ? -errno : 0;
    if (take) {
        pthread_mutex_lock(&log->mu);
        log->spare_busy = false;
        log->spare = kept;
        log->spare_last = last;
        pthread_mutex_unlock(&log->mu);
    }
    return r;
}

/* At open: a spare a stopped (or crashed) process left is kept if every
 * record in it is older than the segments to come (lsns only grow: a
 * restored checkpoint's could be lower), else deleted. */
static int find_spare(ps_pushlog *log) {
    DIR *d = opendir(log->dir);
    if (!d)
        return -errno;
    struct dirent *e;
    while ((e = readdir(d))) {
        uint64_t last;
        char tail[2];
        if (strncmp(e->d_name, "spare.", 6) != 0)
            continue;
        bool named = strlen(e->d_name) == 22 && sscanf(e->d_name + 6, "%16" SCNx64 "%1s", &last, tail) == 1;
        if (named && !log->spare && last < log->last_lsn + 1) {
            log->spare = true;
            log->spare_last = last;
            continue;
        }
        char path[PS_PATH_MAX + 32];
        snprintf(path, sizeof(path), "%s/%s", log->dir, e->d_name);
        (void)unlink(path);
    }
    closedir(d);
    return 0;
}

/* Move the spare, if any, to path (a segment whose records all come after
 * the spare's): 1 if it was. */
static int take_spare(ps_pushlog *log, const char *path, uint64_t first) {
    pthread_mutex_lock(&log->mu);
    bool take = log->spare && log->spare_last < first;
    uint64_t last = log->spare_last;
    log->spare = log->spare && !take;
    pthread_mutex_unlock(&log->mu);
    if (!take)
        return 0;
    char sp[PS_PATH_MAX + 32];
    spare_path(log, last, sp, sizeof(sp));
    if (rename(sp, path) == 0)
        return 1;
    (void)unlink(sp);
    return 0;
}

static int cmp_seg(const void *a, const void *b) {
    uint64_t x = ((const segment *)a)->first_lsn, y = ((const segment *)b)->first_lsn;
    return (x > y) - (x < y);
}

static int list_segments(ps_pushlog *log) {
    DIR *d = opendir(log->dir);
    if (!d)
        return -errno;
    struct dirent *e;
    while ((e = readdir(d))) {
        uint64_t first;
        char tail[8];
        if (strlen(e->d_name) != 20 || sscanf(e->d_name, "%16" SCNx64 "%7s", &first, tail) != 2 ||
            strcmp(tail, ".log"))
            continue;
        segment *g = realloc(log->segs, (log->nsegs + 1) * sizeof(*g));
        if (!g) {
            closedir(d);
            return -ENOMEM;
        }
        log->segs = g;
        g[log->nsegs++].first_lsn = first;
    }
    closedir(d);
    if (log->nsegs > 1)
        qsort(log->segs, log->nsegs, sizeof(segment), cmp_seg);
    return 0;
}

static int read_all(int fd, char **ret, size_t *ret_len) {
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    size_t n = (size_t)st.st_size;
    char *b = malloc(n ? n : 1);
    if (!b)
        return -ENOMEM;
    size_t off = 0;
    while (off < n) {
        ssize_t r = pread(fd, b + off, n - off, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            free(b);
            return r < 0 ? -errno : PS_ESTORE;
        }
        off += (size_t)r;
    }
    *ret = b;
    *ret_len = n;
    return 0;
}

/* Replay one segment. *ret_valid is the length of its intact prefix and
 * *ret_next the lsn that follows its last intact record. */
static int replay_segment(ps_pushlog *log, size_t si, uint64_t covered, ps_pushlog_replay_fn fn,
                          void *ctx, size_t *ret_valid, uint64_t *ret_next, char *err,
                          size_t errlen) {
    char path[PS_PATH_MAX + 32];
    seg_path(log, log->segs[si].first_lsn, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -errno;
    }
    char *data = NULL;
    size_t n = 0;
    int r = read_all(fd, &data, &n);
    close(fd);
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", path, ps_strerror(r));
        return r;
    }
    size_t off = 0;
    uint64_t expect = log->segs[si].first_lsn;
    while (off + REC_HEADER <= n) {
        uint32_t len, crc;
        memcpy(&len, data + off, 4);
        memcpy(&crc, data + off + 4, 4);
        if (len < 8 || len > MAX_RECORD || off + REC_HEADER + len > n)
            break;
        const char *payload = data + off + REC_HEADER;
        if (ps_crc32c(0, payload, len) != crc)
            break;
        uint64_t lsn;
        memcpy(&lsn, payload, 8);
        if (lsn < log->segs[si].first_lsn)
            break; /* a spare's old records after the new ones end the segment */
        if (lsn != expect) {
            snprintf(err, errlen, "%s: record at offset %zu has lsn %" PRIu64 ", expected %" PRIu64,
                     path, off, lsn, expect);
            free(data);
            return PS_ESTORE;
        }
        expect++;
        if (lsn > covered) {
            r = fn(ctx, lsn, payload + 8, len - 8);
            if (r < 0) {
                snprintf(err, errlen, "%s: replay of lsn %" PRIu64 " failed: %s", path, lsn,
                         ps_strerror(r));
                free(data);
                return r;
            }
        }
        if (lsn > log->last_lsn)
            log->last_lsn = lsn;
        off += REC_HEADER + len;
    }
    free(data);
    *ret_valid = off;
    *ret_next = expect;
    if (off != n && si + 1 != log->nsegs) {
        snprintf(err, errlen, "%s: corrupt record at offset %zu in a segment that is not the last; "
                              "refusing to skip acknowledged pushes",
                 path, off);
        return PS_ESTORE;
    }
    return 0;
}

static int open_segment(ps_pushlog *log, uint64_t first) {
    char path[PS_PATH_MAX + 32];
    seg_path(log, first, path, sizeof(path));
    /* A spare's old records have lsns below `first`: replay stops at them. */
    bool recycled = take_spare(log, path, first);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    /* Else a fresh file, or the one open() cut to its last intact record. */
    struct stat st;
    if (!recycled && fstat(fd, &st) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (log->nsegs == 0 || log->segs[log->nsegs - 1].first_lsn != first) {
        segment *g = realloc(log->segs, (log->nsegs + 1) * sizeof(*g));
        if (!g) {
            close(fd);
            return -ENOMEM;
        }
        log->segs = g;
        g[log->nsegs++].first_lsn = first;
    }
    /* Make the new file's directory entry durable before records depend on it. */
    int dfd = open(log->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    pthread_mutex_lock(&log->fd_lock);
    if (log->fd >= 0)
        close(log->fd);
    log->fd = fd;
    log->seg_off = recycled ? 0 : (uint64_t)st.st_size;
    log->recycled = recycled;
    pthread_mutex_unlock(&log->fd_lock);
    return 0;
}

/* Cut a spare's old records off the end of the current segment. */
static int trim_segment(ps_pushlog *log) {
    if (!log->recycled)
        return 0;
    if (ftruncate(log->fd, (off_t)log->seg_off) < 0)
        return -errno;
    log->recycled = false;
    return 0;
}

int ps_pushlog_open(const char *dir, ps_fsync_policy fsync, uint64_t covered_lsn,
                    ps_pushlog_replay_fn replay, void *ctx, ps_pushlog **ret_log, char *err,
                    size_t errlen) {
    return ps_pushlog_open_after(dir, fsync, covered_lsn, covered_lsn, replay, ctx, ret_log, err,
                                 errlen);
}

int ps_pushlog_open_after(const char *dir, ps_fsync_policy fsync, uint64_t covered_lsn,
                          uint64_t used_lsn, ps_pushlog_replay_fn replay, void *ctx,
                          ps_pushlog **ret_log, char *err, size_t errlen) {
    ps_pushlog *log = calloc(1, sizeof(*log));
    if (!log)
        return -ENOMEM;
    snprintf(log->dir, sizeof(log->dir), "%s", dir);
    log->fsync = fsync;
    log->fd = -1;
    log->last_lsn = covered_lsn;
    pthread_mutex_init(&log->fd_lock, NULL);
    pthread_mutex_init(&log->mu, NULL);
    pthread_cond_init(&log->cv, NULL);
    int r = 0;
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        r = -errno;
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        goto fail;
    }
    r = list_segments(log);
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", dir, ps_strerror(r));
        goto fail;
    }
    /* Every lsn after covered_lsn must lie in some segment. A segment that
     * starts past the lsn after the previous one's last record (or, for the
     * first, past covered_lsn + 1) means a segment went missing: replaying
     * around the hole would silently lose acknowledged pushes. */
    uint64_t next = covered_lsn + 1;
    for (size_t i = 0; i < log->nsegs; i++) {
        size_t valid = 0;
        uint64_t seg_next = 0;
        if (log->segs[i].first_lsn > next) {
            char path[PS_PATH_MAX + 32];
            seg_path(log, log->segs[i].first_lsn, path, sizeof(path));
            snprintf(err, errlen,
                     "%s: lsns %" PRIu64 "..%" PRIu64 " are in no segment (one is missing); "
                     "refusing to skip acknowledged pushes",
                     path, next, log->segs[i].first_lsn - 1);
            r = PS_ESTORE;
            goto fail;
        }
        r = replay_segment(log, i, covered_lsn, replay, ctx, &valid, &seg_next, err, errlen);
        if (r < 0)
            goto fail;
        if (seg_next > next)
            next = seg_next;
        if (i + 1 == log->nsegs) {
            char path[PS_PATH_MAX + 32];
            seg_path(log, log->segs[i].first_lsn, path, sizeof(path));
            if (truncate(path, (off_t)valid) < 0) {
                r = -errno;
                snprintf(err, errlen, "%s: truncate: %s", path, strerror(errno));
                goto fail;
            }
        }
    }
    /* New records go past every lsn the caller has used. */
    if (log->last_lsn < used_lsn)
        log->last_lsn = used_lsn;
    r = find_spare(log);
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", dir, ps_strerror(r));
        goto fail;
    }
    /* Always continue in a fresh segment (or the spare written over): older
     * ones stay read-only. */
    r = open_segment(log, log->last_lsn + 1);
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", dir, ps_strerror(r));
        goto fail;
    }
    log->durable_lsn = log->last_lsn;
    *ret_log = log;
    return 0;
fail:
    ps_pushlog_close(log);
    return r;
}

void ps_pushlog_close(ps_pushlog *log) {
    if (!log)
        return;
    ps_pushlog_writer_stop(log);
    if (log->fd >= 0) {
        ps_pushlog_commit(log);
        trim_segment(log);
        close(log->fd);
    }
    pthread_cond_destroy(&log->cv);
    pthread_mutex_destroy(&log->mu);
    pthread_mutex_destroy(&log->fd_lock);
    free(log->segs);
    free(log->buf);
    free(log->wbuf);
    free(log->unlinks);
    free(log);
}

static int reserve(ps_pushlog *log, size_t more) {
    if (log->len + more <= log->cap)
        return 0;
    size_t cap = log->cap ? log->cap : 1u << 16;
    while (cap < log->len + more)
        cap *= 2;
    char *b = realloc(log->buf, cap);
    if (!b)
        return -ENOMEM;
    log->buf = b;
    log->cap = cap;
    return 0;
}

int ps_pushlog_reserve(ps_pushlog *log, size_t len) {
    if (len > MAX_RECORD - 8) /* not 8 + len: that wraps for a huge len */
        return PS_ELIMIT;
    return reserve(log, REC_HEADER + 8 + len);
}

int ps_pushlog_append(ps_pushlog *log, const struct iovec *iov, int niov, uint64_t *ret_lsn) {
    size_t plen = 8;
    for (int i = 0; i < niov; i++)
        plen += iov[i].iov_len;
    int r = ps_pushlog_reserve(log, plen - 8);
    if (r < 0)
        return r;
    uint64_t lsn = log->last_lsn + 1;
    char *p = log->buf + log->len + REC_HEADER;
    memcpy(p, &lsn, 8);
    size_t off = 8;
    for (int i = 0; i < niov; i++) {
        if (iov[i].iov_len)
            memcpy(p + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    uint32_t len32 = (uint32_t)plen, crc = ps_crc32c(0, p, plen);
    memcpy(log->buf + log->len, &len32, 4);
    memcpy(log->buf + log->len + 4, &crc, 4);
    log->len += REC_HEADER + plen;
    log->last_lsn = lsn;
    *ret_lsn = lsn;
    return 0;
}

/* Write data[0..len) to the current segment, then fdatasync it with fsync =
 * always. *ret_written is how much of it reached the file, also on error. */
static int write_out(ps_pushlog *log, const char *data, size_t len, size_t *ret_written) {
    size_t off = 0;
    int r = 0;
    while (off < len) {
        ssize_t w = pwrite(log->fd, data + off, len - off, (off_t)(log->seg_off + off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            r = -errno;
            break;
        }
        off += (size_t)w;
    }
    log->seg_off += off;
    *ret_written = off;
    if (r == 0 && off && log->fsync == PS_FSYNC_ALWAYS && fdatasync(log->fd) < 0)
        r = -errno;
    return r;
}

/* Test hook: PS_TEST_PUSHLOG_DELAY_MS delays each write of the writer
 * thread, so that tests can see whether a reply waits for its record. */
static unsigned test_delay_ms(void) {
    const char *v = getenv("PS_TEST_PUSHLOG_DELAY_MS");
    return v ? (unsigned)strtoul(v, NULL, 10) : 0;
}

/* Retire the oldest covered segment handed over; mu is held on entry and
 * on return, not during the rename or unlink. A failed unlink leaves the
 * file: the log keeps a segment it finds covered at open, and deletes it
 * after the next write-back. */
static void unlink_one(ps_pushlog *log) {
    retiree g = log->unlinks[log->unlinks_done++];
    if (log->unlinks_done == log->nunlinks)
        log->unlinks_done = log->nunlinks = 0;
    pthread_mutex_unlock(&log->mu);
    (void)retire_segment(log, g.first, g.last);
    pthread_mutex_lock(&log->mu);
}

static void *writer_thread(void *arg) {
    ps_pushlog *log = arg;
    unsigned delay_ms = test_delay_ms();
    pthread_mutex_lock(&log->mu);
    for (;;) {
        while (!log->stop && !(log->busy && !log->done) && !log->nunlinks)
            pthread_cond_wait(&log->cv, &log->mu);
        /* A write first (a reply may wait for it), then one unlink at a
         * time; every handed unlink is done before the thread stops. */
        if (!(log->busy && !log->done)) {
            if (log->nunlinks)
                unlink_one(log);
            else if (log->stop)
                break;
            continue;
        }
        pthread_mutex_unlock(&log->mu);
        if (delay_ms) {
            struct timespec ts = {delay_ms / 1000, (long)(delay_ms % 1000) * 1000000L};
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
            }
        }
        size_t written = 0;
        int r = write_out(log, log->wbuf, log->wlen, &written);
        pthread_mutex_lock(&log->mu);
        log->wresult = r;
        log->wwritten = written;
        log->done = true;
        pthread_cond_broadcast(&log->cv);
        /* Under mu: once writer_stop() holds it, no notify is under way. */
        if (log->notify)
            log->notify(log->notify_ctx);
    }
    pthread_mutex_unlock(&log->mu);
    return NULL;
}

/* Take the result of the finished write. On an error its unwritten tail
 * goes back in front of the buffer, for the next commit to retry. */
static int reap(ps_pushlog *log) {
    pthread_mutex_lock(&log->mu); /* the writer reads them in its wait */
    log->busy = false;
    log->done = false;
    pthread_mutex_unlock(&log->mu);
    log->bytes += log->wwritten;
    if (log->wresult == 0) {
        log->durable_lsn = log->wlast_lsn;
        log->wlen = 0;
        return 0;
    }
    size_t tail = log->wlen - log->wwritten;
    int r = reserve(log, tail);
    if (r < 0)
        return r; /* the tail is lost: replay then stops at the gap in lsns
                   * with an error rather than skip it (see open) */
    memmove(log->buf + tail, log->buf, log->len);
    memcpy(log->buf, log->wbuf + log->wwritten, tail);
    log->len += tail;
    log->wlen = 0;
    return log->wresult;
}

/* Wait for the write in flight, if any, and take its result. */
static int wait_writer(ps_pushlog *log) {
    if (!log->writer_started)
        return 0;
    pthread_mutex_lock(&log->mu);
    bool busy = log->busy;
    while (log->busy && !log->done)
        pthread_cond_wait(&log->cv, &log->mu);
    pthread_mutex_unlock(&log->mu);
    return busy ? reap(log) : 0;
}

int ps_pushlog_commit(ps_pushlog *log) {
    int r = wait_writer(log);
    if (r < 0)
        return r;
    size_t written = 0;
    r = write_out(log, log->buf, log->len, &written);
    log->bytes += written;
    if (written < log->len) {
        /* Keep the unwritten tail: a later commit retries it. Shift
         * rather than lose the prefix that did reach the file. */
        memmove(log->buf, log->buf + written, log->len - written);
        log->len -= written;
        return r;
    }
    log->len = 0;
    if (r < 0)
        return r;
    log->durable_lsn = log->last_lsn;
    return 0;
}

int ps_pushlog_writer_start(ps_pushlog *log, void (*notify)(void *ctx), void *ctx) {
    if (log->writer_started)
        return 0;
    log->notify = notify;
    log->notify_ctx = ctx;
    log->stop = false;
    int r = pthread_create(&log->writer, NULL, writer_thread, log);
    if (r != 0)
        return -r;
    log->writer_started = true;
    return 0;
}

int ps_pushlog_writer_stop(ps_pushlog *log) {
    if (!log->writer_started)
        return 0;
    int r = wait_writer(log);
    pthread_mutex_lock(&log->mu);
    log->stop = true;
    log->notify = NULL;
    pthread_cond_broadcast(&log->cv);
    pthread_mutex_unlock(&log->mu);
    pthread_join(log->writer, NULL);
    log->writer_started = false;
    return r;
}

int ps_pushlog_submit(ps_pushlog *log) {
    assert(log->writer_started && !log->busy);
    if (log->len == 0)
        return 0;
    char *b = log->wbuf;
    size_t cap = log->wcap;
    log->wbuf = log->buf;
    log->wcap = log->cap;
    log->wlen = log->len;
    log->wlast_lsn = log->last_lsn;
    log->buf = b;
    log->cap = cap;
    log->len = 0;
    pthread_mutex_lock(&log->mu);
    log->busy = true;
    log->done = false;
    pthread_cond_broadcast(&log->cv);
    pthread_mutex_unlock(&log->mu);
    return 1;
}

int ps_pushlog_poll(ps_pushlog *log, bool *ret_busy) {
    if (!log->writer_started || !log->busy) {
        *ret_busy = false;
        return 0;
    }
    pthread_mutex_lock(&log->mu);
    bool done = log->done;
    pthread_mutex_unlock(&log->mu);
    *ret_busy = !done;
    return done ? reap(log) : 0;
}

bool ps_pushlog_writer_running(const ps_pushlog *log) { return log->writer_started; }

uint64_t ps_pushlog_durable_lsn(const ps_pushlog *log) { return log->durable_lsn; }

int ps_pushlog_sync(ps_pushlog *log) {
    pthread_mutex_lock(&log->fd_lock);
    int r = fdatasync(log->fd) < 0 ? -errno : 0;
    pthread_mutex_unlock(&log->fd_lock);
    return r;
}

uint64_t ps_pushlog_last_lsn(const ps_pushlog *log) { return log->last_lsn; }
uint64_t ps_pushlog_bytes(const ps_pushlog *log) { return log->bytes; }

int ps_pushlog_rotate(ps_pushlog *log) {
    int r = ps_pushlog_commit(log);
    if (r < 0)
        return r;
    if (log->nsegs && log->segs[log->nsegs - 1].first_lsn == log->last_lsn + 1)
        return 0; /* current segment is still empty */
    r = log->fd >= 0 ? trim_segment(log) : 0;
    if (r < 0)
        return r;
    if (log->fsync != PS_FSYNC_NO && log->fd >= 0 && fdatasync(log->fd) < 0)
        return -errno;
    return open_segment(log, log->last_lsn + 1);
}

/* The writer thread deletes them: unlinking a large segment frees its
 * blocks, 0.1-0.4 s of the loop per write-back under a saturating push
 * load (bench/README.md). */
static int hand_unlinks(ps_pushlog *log, size_t n) {
    pthread_mutex_lock(&log->mu);
    if (log->nunlinks + n > log->unlinks_cap) {
        size_t cap = 2 * (log->nunlinks + n) + 8;
        retiree *u = realloc(log->unlinks, cap * sizeof(*u));
        if (!u) {
            pthread_mutex_unlock(&log->mu);
            return -ENOMEM;
        }
        log->unlinks = u;
        log->unlinks_cap = cap;
    }
    for (size_t i = 0; i < n; i++) /* segment i + 1 follows it */
        log->unlinks[log->nunlinks++] = (retiree){log->segs[i].first_lsn, log->segs[i + 1].first_lsn - 1};
    pthread_cond_broadcast(&log->cv);
    pthread_mutex_unlock(&log->mu);
    return 0;
}

int ps_pushlog_drop_covered(ps_pushlog *log, uint64_t covered) {
    /* Segment i holds lsns [first_i, first_{i+1}); the current one is kept. */
    size_t keep_from = 0;
    while (keep_from + 1 < log->nsegs && log->segs[keep_from + 1].first_lsn <= covered + 1)
        keep_from++;
    bool handed = keep_from && log->writer_started && hand_unlinks(log, keep_from) == 0;
    for (size_t i = 0; !handed && i < keep_from; i++) {
        int r = retire_segment(log, log->segs[i].first_lsn, log->segs[i + 1].first_lsn - 1);
        if (r < 0)
            return r;
    }
    if (keep_from) {
        memmove(log->segs, log->segs + keep_from, (log->nsegs - keep_from) * sizeof(segment));
        log->nsegs -= keep_from;
    }
    return 0;
}
