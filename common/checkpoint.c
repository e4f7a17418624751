#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <ini.h>
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

#define POLL_MS 50

static int call(ps_client *c, uint32_t shard, Ctrps__CheckpointRequest__Phase phase, const char *id,
                const char *dir, Ctrps__Response **ret, char *err, size_t errlen) {
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__CheckpointRequest cr = CTRPS__CHECKPOINT_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_CHECKPOINT;
    req.checkpoint = &cr;
    cr.phase = phase;
    cr.id = (char *)id;
    cr.dir = (char *)(dir ? dir : "");
    Ctrps__Response *resp;
    int r = ps_client_call_shard(c, shard, &req, &resp, err, errlen);
    if (r < 0)
        return r;
    if (resp->result_case != CTRPS__RESPONSE__RESULT_CHECKPOINT) {
        ctrps__response__free_unpacked(resp, NULL);
        snprintf(err, errlen, "shard %u sent no checkpoint state", shard);
        return PS_EPROTO;
    }
    if (ret)
        *ret = resp;
    else
        ctrps__response__free_unpacked(resp, NULL);
    return 0;
}

static void end_all(ps_client *c, const ps_config *cfg, const char *id) {
    char err[256];
    for (uint32_t s = 0; s < cfg->nshards; s++)
        call(c, s, CTRPS__CHECKPOINT_REQUEST__PHASE__END, id, NULL, NULL, err, sizeof(err));
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
                          uint64_t *lsns, const Ctrps__CheckpointResponse *st, char *err,
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
    for (size_t i = 0; i < st->n_reports; i++)
        fprintf(f, "\n[worker.%s]\nclient_id = %" PRIu64 "\nposition = %s\n", st->reports[i]->worker,
                st->reports[i]->client_id, st->reports[i]->position);
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
    Ctrps__Response *st = NULL;
    char **paths = calloc(cfg->nshards, sizeof(char *));
    uint64_t *lsns = calloc(cfg->nshards, sizeof(uint64_t));
    id_set workers = {0};
    r = paths && lsns ? 0 : -ENOMEM;
    /* 1. The barrier, and who must reach it. */
    for (uint32_t s = 0; s < cfg->nshards && r == 0; s++) {
        Ctrps__Response *resp;
        r = call(c, s, CTRPS__CHECKPOINT_REQUEST__PHASE__BEGIN, id, NULL, &resp, err, errlen);
        if (r < 0)
            break;
        for (size_t i = 0; i < resp->checkpoint->n_connected_workers; i++)
            id_add(&workers, resp->checkpoint->connected_workers[i]);
        ctrps__response__free_unpacked(resp, NULL);
    }
    /* 2. Every worker reports (its pushes are then all acknowledged). */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (r < 0)
            break;
        if (st)
            ctrps__response__free_unpacked(st, NULL);
        st = NULL;
        r = call(c, 0, CTRPS__CHECKPOINT_REQUEST__PHASE__STATUS, id, NULL, &st, err, errlen);
        if (r < 0)
            break;
        for (size_t i = 0; i < st->checkpoint->n_connected_workers; i++)
            id_add(&workers, st->checkpoint->connected_workers[i]);
        size_t missing = 0;
        uint64_t one_missing = 0;
        for (size_t w = 0; w < workers.n; w++) {
            bool seen = false;
            for (size_t i = 0; i < st->checkpoint->n_reports && !seen; i++)
                seen = st->checkpoint->reports[i]->client_id == workers.ids[w];
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
        Ctrps__Response *resp;
        r = call(c, s, CTRPS__CHECKPOINT_REQUEST__PHASE__TAKE, id, sdir, &resp, err, errlen);
        if (r < 0)
            break;
        lsns[s] = resp->checkpoint->flushed_lsn;
        ctrps__response__free_unpacked(resp, NULL);
        if (asprintf(&paths[s], "shard-%u", s) < 0)
            r = -ENOMEM;
    }
    /* 4. The manifest, then resume. */
    if (r == 0)
        r = write_manifest(dir, id, cfg, paths, lsns, st->checkpoint, err, errlen);
    end_all(c, cfg, id);
    if (r < 0)
        ps_rm_tree(dir);
    else
        snprintf(ret_id, idlen, "%s", id);
    if (st)
        ctrps__response__free_unpacked(st, NULL);
    for (uint32_t s = 0; paths && s < cfg->nshards; s++)
        free(paths[s]);
    free(paths);
    free(lsns);
    free(workers.ids);
    return r;
}

/* ---- listing and pruning ------------------------------------------------------ */

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int list_dirs(const char *root, bool complete, char ***ret_ids, size_t *ret_n) {
    DIR *d = opendir(root);
    *ret_ids = NULL;
    *ret_n = 0;
    if (!d)
        return -errno;
    char **ids = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "ckpt-", 5) != 0)
            continue;
        char m[PATH_MAX];
        snprintf(m, sizeof(m), "%s/%s/manifest", root, e->d_name);
        bool has = access(m, F_OK) == 0;
        if (has != complete)
            continue;
        char **g = realloc(ids, (n + 1) * sizeof(char *));
        if (!g)
            break;
        ids = g;
        ids[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n > 1)
        qsort(ids, n, sizeof(char *), cmp_str);
    *ret_ids = ids;
    *ret_n = n;
    return 0;
}

int ps_checkpoint_list(const char *root, char ***ret_ids, size_t *ret_n) {
    return list_dirs(root, true, ret_ids, ret_n);
}

void ps_checkpoint_list_free(char **ids, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
}

int ps_checkpoint_prune(const char *root, uint32_t keep, char *err, size_t errlen) {
    char **ids, **partial;
    size_t n, np;
    int r = list_dirs(root, true, &ids, &n);
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", root, strerror(-r));
        return r;
    }
    for (size_t i = 0; i + keep < n; i++) {
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/%s", root, ids[i]);
        ps_rm_tree(p);
    }
    /* Incomplete ones older than the newest complete checkpoint are
     * leftovers of a crashed coordinator; a newer one may be in progress. */
    if (n > 0 && list_dirs(root, false, &partial, &np) == 0) {
        for (size_t i = 0; i < np; i++) {
            if (strcmp(partial[i], ids[n - 1]) < 0) {
                char p[PATH_MAX];
                snprintf(p, sizeof(p), "%s/%s", root, partial[i]);
                ps_rm_tree(p);
            }
        }
        ps_checkpoint_list_free(partial, np);
    }
    ps_checkpoint_list_free(ids, n);
    return 0;
}

int ps_checkpoint_resolve(const char *path, char *ret_dir, size_t dirlen, char *err, size_t errlen) {
    char m[PATH_MAX];
    snprintf(m, sizeof(m), "%s/manifest", path);
    if (access(m, F_OK) == 0) {
        snprintf(ret_dir, dirlen, "%s", path);
        return 0;
    }
    char **ids;
    size_t n;
    int r = ps_checkpoint_list(path, &ids, &n);
    if (r < 0 || n == 0) {
        snprintf(err, errlen, "%s: no complete checkpoint there (%s)", path,
                 r < 0 ? strerror(-r) : "no manifest");
        if (r == 0)
            ps_checkpoint_list_free(ids, n);
        return r < 0 ? r : PS_ENOT_FOUND;
    }
    snprintf(ret_dir, dirlen, "%s/%s", path, ids[n - 1]);
    ps_checkpoint_list_free(ids, n);
    return 0;
}

typedef struct lookup {
    const char *section, *key;
    char *out;
    size_t outlen;
    bool found;
} lookup;

static int on_kv(void *user, const char *section, const char *name, const char *value) {
    lookup *l = user;
    if (!strcmp(section, l->section) && !strcmp(name, l->key)) {
        snprintf(l->out, l->outlen, "%s", value);
        l->found = true;
    }
    return 1;
}

int ps_checkpoint_manifest_get(const char *dir, const char *section, const char *key, char *ret,
                               size_t retlen, char *err, size_t errlen) {
    char m[PATH_MAX];
    snprintf(m, sizeof(m), "%s/manifest", dir);
    lookup l = {section, key, ret, retlen, false};
    int r = ini_parse(m, on_kv, &l);
    if (r != 0) {
        snprintf(err, errlen, "%s: %s", m, r < 0 ? "cannot read it" : "malformed");
        return r < 0 ? -ENOENT : PS_EPARSE;
    }
    if (!l.found) {
        snprintf(err, errlen, "%s: no [%s] %s", m, section, key);
        return PS_ENOT_FOUND;
    }
    return 0;
}

int ps_checkpoint_format_position(char *out, size_t outlen, uint32_t file, uint64_t offset,
                                  uint64_t lines, uint64_t inputs_hash) {
    int n = snprintf(out, outlen, "v1 file=%u offset=%" PRIu64 " lines=%" PRIu64 " inputs=%016" PRIx64,
                     file, offset, lines, inputs_hash);
    return n > 0 && (size_t)n < outlen ? 0 : PS_ELIMIT;
}

int ps_checkpoint_parse_position(const char *s, uint32_t *ret_file, uint64_t *ret_offset,
                                 uint64_t *ret_lines, uint64_t *ret_inputs_hash) {
    unsigned file;
    uint64_t off, lines, h;
    if (sscanf(s, "v1 file=%u offset=%" SCNu64 " lines=%" SCNu64 " inputs=%" SCNx64, &file, &off,
               &lines, &h) != 4)
        return PS_EPARSE;
    *ret_file = file;
    *ret_offset = off;
    *ret_lines = lines;
    *ret_inputs_hash = h;
    return 0;
}

void ps_checkpoint_worker_name(char *out, size_t outlen, uint32_t index, uint32_t count) {
    snprintf(out, outlen, "worker-%u-of-%u", index, count);
}
