/* Checkpoint directories on disk: listing, pruning, and reading manifests. */
#include "ckptdir.h"

#include <dirent.h>
#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"

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
