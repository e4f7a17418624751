#include "checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"

#define POLL_MS 50         /* coordinator: how often it asks who reported */
#define WORKER_POLL_MS 20  /* a paused worker: how often it asks whether the barrier ended */

static int call(ps_client *c, uint32_t shard, ps_checkpoint_phase phase, const char *id,
                const char *dir, ps_checkpoint_reply *ret, char *err, size_t errlen) {
    ps_checkpoint_request req = {.phase = phase, .id = id, .dir = dir};
    return ps_client_checkpoint(c, shard, &req, ret, err, errlen);
}

static void end_all(ps_client *c, const ps_config *cfg, const char *id) {
    char err[256];
    for (uint32_t s = 0; s < cfg->nshards; s++)
        call(c, s, PS_CHECKPOINT_END, id, NULL, NULL, err, sizeof(err));
}

typedef struct id_set {
    uint64_t *ids;
    size_t n, cap;
} id_set;

static void id_add(id_set *s, uint64_t id) {
    for (size_t i = 0; i < s->n; i++)
        if (s->ids[i] == id)
            return;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        uint64_t *g = realloc(s->ids, cap * sizeof(*g));
        if (!g)
            return;
        s->ids = g;
        s->cap = cap;
    }
    s->ids[s->n++] = id;
}

static int write_manifest(const char *dir, const char *id, const ps_config *cfg, char **paths,
                          uint64_t *lsns, const ps_checkpoint_reply *st, char *err,
                          size_t errlen) {
    char path[PATH_MAX + 128], tmp[PATH_MAX + 160];
    snprintf(path, sizeof(path), "%s/manifest", dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        return -errno;
    }
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char when[32];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(f, "; ctrps cluster checkpoint: written last, after every shard's copy\n");
    fprintf(f, "[checkpoint]\nid = %s\ntime = %s\nshards = %u\nbuckets = %u\n", id, when, cfg->nshards,
            cfg->buckets);
    for (uint32_t s = 0; s < cfg->nshards; s++)
        fprintf(f, "\n[shard.%u]\naddress = %s\npath = %s\nflushed_lsn = %" PRIu64 "\n", s,
                cfg->shards[s], paths[s], lsns[s]);
    for (size_t i = 0; i < st->nreports; i++)
        fprintf(f, "\n[worker.%s]\nclient_id = %" PRIu64 "\nposition = %s\n", st->reports[i].worker,
                st->reports[i].client_id, st->reports[i].position);
    int r = 0;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        r = -errno;
    if (fclose(f) != 0 && r == 0)
        r = -errno;
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0)
        snprintf(err, errlen, "%s: %s", path, strerror(-r));
    return r;
}

int ps_checkpoint_take(ps_client *c, const ps_config *cfg, const char *root, uint32_t wait_s,
                       char *ret_id, size_t idlen, char *err, size_t errlen) {
    char id[PS_CHECKPOINT_ID_MAX], dir[PATH_MAX + PS_CHECKPOINT_ID_MAX + 2], absroot[PATH_MAX];
    int r = ps_mkdir_p(root);
    if (r < 0 || !realpath(root, absroot)) {
        snprintf(err, errlen, "%s: %s", root, strerror(r < 0 ? -r : errno));
        return r < 0 ? r : -errno;
    }
    /* Sortable by time; the suffix keeps two in one second apart. */
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    uint16_t rnd = 0;
    if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
        rnd = (uint16_t)getpid();
    size_t n = strftime(id, sizeof(id), "ckpt-%Y%m%d-%H%M%S", &tm);
    snprintf(id + n, sizeof(id) - n, "-%04x", rnd);
    snprintf(dir, sizeof(dir), "%s/%s", absroot, id);
    if (mkdir(dir, 0755) < 0) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        return -errno;
    }
    ps_checkpoint_reply st = {0};
    bool have_st = false;
    char **paths = calloc(cfg->nshards, sizeof(char *));
    uint64_t *lsns = calloc(cfg->nshards, sizeof(uint64_t));
    id_set workers = {0};
    r = paths && lsns ? 0 : -ENOMEM;
    /* 1. The barrier, and who must reach it. */
    for (uint32_t s = 0; s < cfg->nshards && r == 0; s++) {
        ps_checkpoint_reply resp;
        r = call(c, s, PS_CHECKPOINT_BEGIN, id, NULL, &resp, err, errlen);
        if (r < 0)
            break;
        for (size_t i = 0; i < resp.nconnected; i++)
            id_add(&workers, resp.connected_workers[i]);
        ps_checkpoint_reply_deinit(&resp);
    }
    /* 2. Every worker reports (its pushes are then all acknowledged). */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (r < 0)
            break;
        ps_checkpoint_reply_deinit(&st);
        have_st = false;
        r = call(c, 0, PS_CHECKPOINT_STATUS, id, NULL, &st, err, errlen);
        if (r < 0)
            break;
        have_st = true;
        for (size_t i = 0; i < st.nconnected; i++)
            id_add(&workers, st.connected_workers[i]);
        size_t missing = 0;
        uint64_t one_missing = 0;
        for (size_t w = 0; w < workers.n; w++) {
            bool seen = false;
            for (size_t i = 0; i < st.nreports && !seen; i++)
                seen = st.reports[i].client_id == workers.ids[w];
            if (!seen) {
                missing++;
                one_missing = workers.ids[w];
            }
        }
        if (missing == 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec >= (time_t)wait_s) {
            snprintf(err, errlen,
                     "%zu worker(s) did not reach the barrier within %u s (client %016" PRIx64
                     " among them)",
                     missing, wait_s, one_missing);
            r = PS_ETIMEOUT;
            break;
        }
        struct timespec ts = {0, POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    /* 3. Every shard writes everything back and copies its database. */
    for (uint32_t s = 0; s < cfg->nshards && r == 0; s++) {
        char sdir[sizeof(dir) + 32];
        snprintf(sdir, sizeof(sdir), "%s/shard-%u", dir, s);
        ps_checkpoint_reply resp;
        r = call(c, s, PS_CHECKPOINT_TAKE, id, sdir, &resp, err, errlen);
        if (r < 0)
            break;
        lsns[s] = resp.flushed_lsn;
        ps_checkpoint_reply_deinit(&resp);
        if (asprintf(&paths[s], "shard-%u", s) < 0)
            r = -ENOMEM;
    }
    /* 4. The manifest, then resume. */
    if (r == 0 && have_st)
        r = write_manifest(dir, id, cfg, paths, lsns, &st, err, errlen);
    end_all(c, cfg, id);
    if (r < 0)
        ps_rm_tree(dir);
    else
        snprintf(ret_id, idlen, "%s", id);
    ps_checkpoint_reply_deinit(&st);
    for (uint32_t s = 0; paths && s < cfg->nshards; s++)
        free(paths[s]);
    free(paths);
    free(lsns);
    free(workers.ids);
    return r;
}

/* ---- the worker's half ------------------------------------------------------- */

int ps_checkpoint_report(ps_client *c, const char *id, const char *worker, const char *position,
                         char *err, size_t errlen) {
    ps_checkpoint_request req = {.phase = PS_CHECKPOINT_REPORT,
                                 .id = id,
                                 .client_id = ps_client_id(c),
                                 .worker = worker,
                                 .position = position};
    return ps_client_checkpoint(c, 0, &req, NULL, err, errlen);
}

int ps_checkpoint_wait_end(ps_client *c, const char *id, char *err, size_t errlen) {
    for (;;) {
        ps_checkpoint_reply st;
        int r = call(c, 0, PS_CHECKPOINT_STATUS, id, NULL, &st, err, errlen);
        if (r < 0)
            return r;
        bool over = strcmp(st.pending, id) != 0;
        ps_checkpoint_reply_deinit(&st);
        if (over)
            return 0;
        struct timespec ts = {0, WORKER_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
}
