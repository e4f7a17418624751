#include "barrier.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckptdir.h"
#include "error.h"
#include "fsutil.h"

#define MAX_REPORTS 4096

struct ps_barrier {
    ps_shard *shard;
    char pending[PS_NAME_MAX];   /* barrier up, or "" */
    ps_barrier_arrival *reports;  /* owned, MAX_REPORTS once the first arrives */
    size_t nreports;
    const void **conns;          /* owned: connected workers, parallel to ids */
    uint64_t *ids;               /* owned */
    size_t nworkers, cap;
};

int ps_barrier_new(ps_shard *shard, ps_barrier **ret_barrier) {
    ps_barrier *b = calloc(1, sizeof(*b));
    if (!b)
        return -ENOMEM;
    b->shard = shard;
    *ret_barrier = b;
    return 0;
}

void ps_barrier_free(ps_barrier *b) {
    if (!b)
        return;
    free(b->reports);
    free(b->conns);
    free(b->ids);
    free(b);
}

const char *ps_barrier_pending(const ps_barrier *b) { return b->pending; }

int ps_barrier_check_id(const ps_barrier *b, const char *id, char *err, size_t errlen) {
    if (!id || !id[0] || strlen(id) >= sizeof(b->pending)) {
        snprintf(err, errlen, "checkpoint id must be 1..%zu bytes", sizeof(b->pending) - 1);
        return PS_EPROTO;
    }
    return 0;
}

static bool ours(const ps_barrier *b, const char *id) {
    return b->pending[0] && !strcmp(b->pending, id);
}

static int need_ours(const ps_barrier *b, const char *id, char *err, size_t errlen) {
    int r = ps_barrier_check_id(b, id, err, errlen);
    if (r == 0 && !ours(b, id)) {
        snprintf(err, errlen, "no checkpoint %s in progress", id);
        r = PS_EUNAVAILABLE;
    }
    return r;
}

int ps_barrier_begin(ps_barrier *b, const char *id, char *err, size_t errlen) {
    int r = ps_barrier_check_id(b, id, err, errlen);
    if (r < 0)
        return r;
    if (ours(b, id))
        return 0;
    if (b->pending[0]) {
        snprintf(err, errlen, "checkpoint %s is in progress", b->pending);
        return PS_EUNAVAILABLE;
    }
    snprintf(b->pending, sizeof(b->pending), "%s", id);
    b->nreports = 0;
    return 0;
}

int ps_barrier_report(ps_barrier *b, const char *id, uint64_t client_id, const char *worker,
                      const char *position, char *err, size_t errlen) {
    int r = need_ours(b, id, err, errlen);
    if (r < 0)
        return r;
    if (!b->reports && !(b->reports = calloc(MAX_REPORTS, sizeof(*b->reports))))
        return -ENOMEM;
    size_t i = 0;
    while (i < b->nreports && b->reports[i].client_id != client_id)
        i++;
    if (i == MAX_REPORTS) {
        snprintf(err, errlen, "more than %d workers", MAX_REPORTS);
        return PS_ELIMIT;
    }
    if (i == b->nreports)
        b->nreports++;
    ps_barrier_arrival *rep = &b->reports[i];
    rep->client_id = client_id;
    snprintf(rep->worker, sizeof(rep->worker), "%s", worker ? worker : "");
    snprintf(rep->position, sizeof(rep->position), "%s", position ? position : "");
    return 0;
}

/* Only the layout the coordinator makes (ROOT/ckpt-ID/shard-N, absolute, no
 * ".."), so a peer cannot have the shard create directories of its choosing
 * elsewhere. */
static bool valid_take_dir(const char *dir, uint32_t shard) {
    char want[32];
    snprintf(want, sizeof(want), "/shard-%u", shard);
    size_t n = strlen(dir), w = strlen(want);
    if (dir[0] != '/' || n <= w || strcmp(dir + n - w, want) != 0 || strstr(dir, "/../") ||
        strstr(dir, "/./"))
        return false;
    const char *parent_end = dir + n - w;
    const char *parent = parent_end;
    while (parent > dir && parent[-1] != '/')
        parent--;
    return parent_end - parent > 5 && !strncmp(parent, "ckpt-", 5);
}

int ps_barrier_take(ps_barrier *b, const char *id, const char *dir, uint64_t *ret_lsn, char *err,
                    size_t errlen) {
    int r = need_ours(b, id, err, errlen);
    if (r < 0)
        return r;
    uint32_t shard = ps_shard_id(b->shard);
    if (!dir || !valid_take_dir(dir, shard)) {
        snprintf(err, errlen, "checkpoint TAKE writes only to an absolute .../ckpt-*/shard-%u directory",
                 shard);
        return PS_EPROTO;
    }
    return ps_shard_checkpoint(b->shard, dir, ret_lsn, err, errlen);
}

int ps_barrier_end(ps_barrier *b, const char *id, char *err, size_t errlen) {
    int r = ps_barrier_check_id(b, id, err, errlen);
    if (r < 0)
        return r;
    if (ours(b, id)) {
        b->pending[0] = '\0';
        b->nreports = 0;
    }
    return 0;
}

const ps_barrier_arrival *ps_barrier_reports(const ps_barrier *b, size_t *ret_n) {
    *ret_n = b->nreports;
    return b->reports;
}

/* ---- connected workers ---------------------------------------------------------- */

static bool is_worker(const char *client_name) {
    return client_name && !strncmp(client_name, "ctrps-worker", 12);
}

int ps_barrier_hello(ps_barrier *b, const void *conn, uint64_t client_id, const char *client_name) {
    ps_barrier_gone(b, conn);
    if (!is_worker(client_name))
        return 0;
    if (b->nworkers == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 16;
        const void **c = realloc(b->conns, cap * sizeof(*c));
        if (!c)
            return -ENOMEM;
        b->conns = c;
        uint64_t *ids = realloc(b->ids, cap * sizeof(*ids));
        if (!ids)
            return -ENOMEM;
        b->ids = ids;
        b->cap = cap;
    }
    b->conns[b->nworkers] = conn;
    b->ids[b->nworkers++] = client_id;
    return 0;
}

void ps_barrier_gone(ps_barrier *b, const void *conn) {
    for (size_t i = 0; i < b->nworkers; i++) {
        if (b->conns[i] == conn) {
            b->nworkers--;
            b->conns[i] = b->conns[b->nworkers];
            b->ids[i] = b->ids[b->nworkers];
            return;
        }
    }
}

const uint64_t *ps_barrier_workers(const ps_barrier *b, size_t *ret_n) {
    *ret_n = b->nworkers;
    return b->ids;
}

/* ---- restore -------------------------------------------------------------------- */

/* Table files (.sst) are immutable and hard-linked; RocksDB appends to the
 * others (MANIFEST, logs), so they are copied, which leaves the checkpoint
 * intact. */
int ps_barrier_restore(const char *ckpt, uint32_t shard, const char *dir, char *err, size_t errlen) {
    char from[4096], db[PS_PATH_MAX + 64], log[PS_PATH_MAX + 64], addr[256];
    int r = ps_checkpoint_resolve(ckpt, from, sizeof(from) - 32, err, errlen);
    if (r < 0)
        return r;
    char section[32];
    snprintf(section, sizeof(section), "shard.%u", shard);
    r = ps_checkpoint_manifest_get(from, section, "address", addr, sizeof(addr), err, errlen);
    if (r < 0)
        return r;
    size_t len = strlen(from);
    snprintf(from + len, sizeof(from) - len, "/shard-%u", shard);
    DIR *d = opendir(from);
    if (!d) {
        snprintf(err, errlen, "%s: %s", from, strerror(errno));
        return -errno;
    }
    snprintf(db, sizeof(db), "%s/db", dir);
    snprintf(log, sizeof(log), "%s/pushlog", dir);
    ps_rm_tree(db);
    ps_rm_tree(log);
    if (ps_mkdir_p(dir) < 0 || mkdir(db, 0755) < 0) {
        snprintf(err, errlen, "%.900s: %s", db, strerror(errno));
        closedir(d);
        return -errno;
    }
    struct dirent *e;
    while (r == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char src[sizeof(from) + 256], dst[sizeof(db) + 256];
        snprintf(src, sizeof(src), "%s/%s", from, e->d_name);
        snprintf(dst, sizeof(dst), "%s/%s", db, e->d_name);
        size_t n = strlen(e->d_name);
        bool sst = n > 4 && !strcmp(e->d_name + n - 4, ".sst");
        r = sst && link(src, dst) == 0 ? 0 : ps_copy_file(src, dst);
        if (r < 0)
            snprintf(err, errlen, "%.400s -> %.400s: %s", src, dst, strerror(-r));
    }
    closedir(d);
    return r;
}
