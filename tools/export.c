#include "export.h"

#include <dirent.h>
#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ckptdir.h"
#include "error.h"
#include "fsutil.h"
#include "keys.h"
#include "npy.h"
#include "snapshot.h"
#include "text.h"
#include "wconfig.h"

#ifndef PS_VERSION
#define PS_VERSION "unknown"
#endif

#define FORMAT_VERSION 1
#define PAGE_ROWS 8192           /* rows per ps_table_export() call */
#define FILE_NAME_MAX 256

/* ---- the output directory's files ----------------------------------------- */

typedef struct file_list {
    char **names;                /* owned, plain names inside the directory */
    size_t n, cap;
} file_list;

static int files_add(file_list *l, const char *name) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        char **g = realloc(l->names, cap * sizeof(*g));
        if (!g)
            return -ENOMEM;
        l->names = g;
        l->cap = cap;
    }
    if (!(l->names[l->n] = strdup(name)))
        return -ENOMEM;
    l->n++;
    return 0;
}

static void files_free(file_list *l) {
    for (size_t i = 0; i < l->n; i++)
        free(l->names[i]);
    free(l->names);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* An empty directory, created when missing; *ret_created says so. */
static int prepare_dir(const char *dir, bool *ret_created, char *err, size_t errlen) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        bool empty = true;
        while (empty && (e = readdir(d)))
            empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
        closedir(d);
        if (!empty) {
            snprintf(err, errlen, "--dir %s is not empty (an export needs a new or empty directory)",
                     dir);
            return -EEXIST;
        }
        *ret_created = false;
        return 0;
    }
    if (errno != ENOENT) {
        snprintf(err, errlen, "--dir %s: %s", dir, strerror(errno));
        return errno == ENOTDIR ? -EEXIST : -errno;
    }
    int r = ps_mkdir_p(dir);
    if (r < 0) {
        snprintf(err, errlen, "--dir %s: %s", dir, strerror(-r));
        return r;
    }
    *ret_created = true;
    return 0;
}

/* sha256 of a file, read back in blocks, as lowercase hex. */
static int sha256_file(const char *path, char hex[2 * crypto_hash_sha256_BYTES + 1],
                       uint64_t *ret_bytes) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    static unsigned char buf[1 << 16];
    uint64_t bytes = 0;
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
        crypto_hash_sha256_update(&st, buf, n);
        bytes += n;
    }
    int r = ferror(f) ? -EIO : 0;
    fclose(f);
    if (r < 0)
        return r;
    unsigned char md[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&st, md);
    sodium_bin2hex(hex, 2 * crypto_hash_sha256_BYTES + 1, md, sizeof(md));
    *ret_bytes = bytes;
    return 0;
}

/* ---- the effective config ------------------------------------------------- */

typedef struct entry {
    char *section, *key, *value; /* owned */
    bool raw;                    /* from the file's text, not ps_config_describe() */
} entry;

typedef struct entries {
    entry *e;
    size_t n, cap;
    int error;
} entries;

static entry *entry_find(entries *l, const char *section, const char *key) {
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->e[i].section, section) && !strcmp(l->e[i].key, key))
            return &l->e[i];
    return NULL;
}

static int entry_add(entries *l, const char *section, const char *key, const char *value, bool raw) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        entry *g = realloc(l->e, cap * sizeof(*g));
        if (!g)
            return -ENOMEM;
        l->e = g;
        l->cap = cap;
    }
    entry *e = &l->e[l->n];
    e->section = strdup(section);
    e->key = strdup(key);
    e->value = strdup(value);
    e->raw = raw;
    if (!e->section || !e->key || !e->value) {
        free(e->section);
        free(e->key);
        free(e->value);
        return -ENOMEM;
    }
    l->n++;
    return 0;
}

static void entries_free(entries *l) {
    for (size_t i = 0; i < l->n; i++) {
        free(l->e[i].section);
        free(l->e[i].key);
        free(l->e[i].value);
    }
    free(l->e);
}

static int add_effective(void *ctx, const char *section, const char *key, const char *value) {
    return entry_add(ctx, section, key, value, false);
}

/* The worker's sections ([input], [model] beyond the dense keys, [worker])
 * are not described by the config layer: their keys go in as the file sets
 * them (a key the file does not set has the default of worker/wconfig.h).
 * A repeated key keeps its last value, as the worker's parser does. */
static int add_raw(void *ctx, const char *section, const char *key, const char *value) {
    entries *l = ctx;
    entry *e = entry_find(l, section, key);
    if (e && !e->raw)
        return 1;
    if (e) {
        char *v = strdup(value);
        if (!v) {
            l->error = -ENOMEM;
            return 0;
        }
        free(e->value);
        e->value = v;
        return 1;
    }
    if (entry_add(l, section, key, value, true) < 0) {
        l->error = -ENOMEM;
        return 0;
    }
    return 1;
}

static int config_entries(const ps_config *cfg, entries *l, char *err, size_t errlen) {
    int r = ps_config_describe(cfg, add_effective, l);
    if (r == 0) {
        int line = ini_parse(cfg->path, add_raw, l);
        r = l->error ? l->error : line != 0 ? PS_ECONFIG : 0;
    }
    if (r < 0)
        snprintf(err, errlen, "%s: %s", cfg->path, r == -ENOMEM ? "out of memory" : ps_strerror(r));
    return r;
}

/* ---- tables and dense blocks ---------------------------------------------- */

typedef struct table_out {
    const ps_table_config *tc;
    uint32_t width;
    ps_npy *fids, *weights, *state;
    uint64_t rows;
    int error;
} table_out;

static void put_row(void *ctx, uint64_t key, const float *state) {
    table_out *t = ctx;
    if (t->error)
        return;
    int r = ps_npy_append(t->fids, &key, 1);
    if (r == 0)
        r = ps_npy_append(t->weights, state, 1);
    if (r == 0 && t->state)
        r = ps_npy_append(t->state, state, 1);
    t->error = r;
    t->rows++;
}

/* Every row of table t of one shard's copy, page by page. */
static int export_rows(ps_table *t, table_out *out, uint32_t shard, char *err, size_t errlen) {
    ps_store_key after, last;
    bool started = false;
    for (;;) {
        size_t count;
        bool done;
        int r = ps_table_export(t, started ? &after : NULL, PAGE_ROWS, put_row, out, &last, &count,
                                &done);
        if (r == 0)
            r = out->error;
        if (r < 0) {
            snprintf(err, errlen, "table %s, shard %u: %s", out->tc->name, shard, ps_strerror(r));
            return r;
        }
        if (count) {
            after = last;
            started = true;
        }
        if (done || count == 0)
            return 0;
    }
}

typedef struct dense_out {
    char *name;                  /* owned */
    size_t len;
} dense_out;

static int cmp_dense(const void *a, const void *b) {
    return strcmp(((const dense_out *)a)->name, ((const dense_out *)b)->name);
}

/* A block name that is a plain file name (names come from the store). */
static bool plain_name(const char *s) {
    size_t n = strlen(s);
    return n > 0 && n < FILE_NAME_MAX - 8 && s[0] != '.' && !strchr(s, '/');
}

/* ---- the export --------------------------------------------------------------- */

typedef struct job {
    const ps_model_export_options *o;
    const ps_config *cfg;
    char ckpt[PATH_MAX];         /* the checkpoint directory */
    char id[PS_CHECKPOINT_ID_MAX];
    table_out *tables;           /* owned, cfg->ntables */
    dense_out *dense;            /* owned */
    size_t ndense, dense_cap;
    file_list files;
} job;

static int path_in(const job *j, const char *name, char *out, size_t len) {
    return snprintf(out, len, "%s/%s", j->o->dir, name) < (int)len ? 0 : -ENAMETOOLONG;
}

/* Open a new .npy file in the output directory and list it. */
static int open_npy(job *j, const char *name, ps_npy_type type, uint32_t cols, ps_npy **ret,
                    char *err, size_t errlen) {
    char path[PATH_MAX + FILE_NAME_MAX];
    int r = path_in(j, name, path, sizeof(path));
    if (r < 0) {
        snprintf(err, errlen, "%s/%s: %s", j->o->dir, name, strerror(-r));
        return r;
    }
    r = ps_npy_open(path, type, cols, ret, err, errlen);
    if (r == -EEXIST)
        snprintf(err, errlen, "two exported arrays would both be named %s", name);
    if (r == 0 && (r = files_add(&j->files, name)) < 0)
        snprintf(err, errlen, "out of memory");
    return r;
}

static int check_checkpoint(job *j, char *err, size_t errlen) {
    int r = ps_checkpoint_resolve(j->o->checkpoint, j->ckpt, sizeof(j->ckpt) - 64, err, errlen);
    if (r < 0)
        return r;
    char v[64];
    r = ps_checkpoint_manifest_get(j->ckpt, "checkpoint", "id", j->id, sizeof(j->id), err, errlen);
    if (r == 0)
        r = ps_checkpoint_manifest_get(j->ckpt, "checkpoint", "shards", v, sizeof(v), err, errlen);
    if (r == 0 && strtoul(v, NULL, 10) != j->cfg->nshards) {
        snprintf(err, errlen, "checkpoint %s holds %s shards, %s configures %u", j->ckpt, v,
                 j->cfg->path, j->cfg->nshards);
        r = PS_ECONFIG;
    }
    if (r == 0)
        r = ps_checkpoint_manifest_get(j->ckpt, "checkpoint", "buckets", v, sizeof(v), err, errlen);
    if (r == 0 && strtoul(v, NULL, 10) != j->cfg->buckets) {
        snprintf(err, errlen, "checkpoint %s has %s buckets, %s configures %u", j->ckpt, v,
                 j->cfg->path, j->cfg->buckets);
        r = PS_ECONFIG;
    }
    return r;
}

static int export_shard(job *j, uint32_t s, char *err, size_t errlen) {
    char section[32], rel[PATH_MAX], dir[2 * PATH_MAX];
    snprintf(section, sizeof(section), "shard.%u", s);
    int r = ps_checkpoint_manifest_get(j->ckpt, section, "path", rel, sizeof(rel), err, errlen);
    if (r < 0)
        return r;
    if (rel[0] == '/' || strstr(rel, "..")) {
        snprintf(err, errlen, "%s/manifest: [%s] path '%s' is not inside the checkpoint", j->ckpt,
                 section, rel);
        return PS_ECONFIG;
    }
    snprintf(dir, sizeof(dir), "%s/%s", j->ckpt, rel);
    ps_snapshot *snap;
    r = ps_snapshot_open(j->cfg, s, dir, &snap, err, errlen);
    for (uint32_t i = 0; i < j->cfg->ntables && r == 0; i++)
        r = export_rows(ps_snapshot_table(snap, j->cfg->tables[i].name), &j->tables[i], s, err,
                        errlen);
    const ps_dense *d = r == 0 ? ps_snapshot_dense(snap) : NULL;
    for (size_t b = 0; d && b < ps_dense_count(d) && r == 0; b++) {
        const char *name;
        const float *w;
        size_t len;
        ps_dense_at(d, b, &name, &w, &len);
        char file[FILE_NAME_MAX];
        if (!plain_name(name)) {
            snprintf(err, errlen, "shard %u holds a dense block named '%s', which is no file name", s,
                     name);
            r = PS_ESTORE;
            break;
        }
        snprintf(file, sizeof(file), "%s.npy", name);
        ps_npy *f;
        r = open_npy(j, file, PS_NPY_F32, 0, &f, err, errlen);
        if (r < 0)
            break;
        r = ps_npy_append(f, w, len);
        if (r < 0) {
            snprintf(err, errlen, "%s/%s: %s", j->o->dir, file, strerror(-r));
            ps_npy_abort(f);
            break;
        }
        if ((r = ps_npy_finish(f, err, errlen)) < 0)
            break;
        if (j->ndense == j->dense_cap) {
            size_t cap = j->dense_cap ? 2 * j->dense_cap : 16;
            dense_out *g = realloc(j->dense, cap * sizeof(*g));
            if (!g) {
                r = -ENOMEM;
                break;
            }
            j->dense = g;
            j->dense_cap = cap;
        }
        if (!(j->dense[j->ndense].name = strdup(name))) {
            r = -ENOMEM;
            break;
        }
        j->dense[j->ndense++].len = len;
    }
    if (r == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    ps_snapshot_free(snap);
    return r;
}

static int open_tables(job *j, char *err, size_t errlen) {
    for (uint32_t i = 0; i < j->cfg->ntables; i++) {
        table_out *t = &j->tables[i];
        t->tc = &j->cfg->tables[i];
        t->width = ps_optim_state_width(&t->tc->opt, t->tc->dim);
        char name[FILE_NAME_MAX];
        snprintf(name, sizeof(name), "%s.fids.npy", t->tc->name);
        int r = open_npy(j, name, PS_NPY_U64, 0, &t->fids, err, errlen);
        snprintf(name, sizeof(name), "%s.weights.npy", t->tc->name);
        if (r == 0)
            r = open_npy(j, name, PS_NPY_F32, t->tc->dim, &t->weights, err, errlen);
        snprintf(name, sizeof(name), "%s.state.npy", t->tc->name);
        if (r == 0 && j->o->with_state)
            r = open_npy(j, name, PS_NPY_F32, t->width, &t->state, err, errlen);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Complete every table's files; on error abandon the rest. */
static int finish_tables(job *j, int r, char *err, size_t errlen) {
    for (uint32_t i = 0; i < j->cfg->ntables; i++) {
        ps_npy **fs[3] = {&j->tables[i].fids, &j->tables[i].weights, &j->tables[i].state};
        for (int k = 0; k < 3; k++) {
            if (!*fs[k])
                continue;
            if (r == 0)
                r = ps_npy_finish(*fs[k], err, errlen);
            else
                ps_npy_abort(*fs[k]);
            *fs[k] = NULL;
        }
    }
    return r;
}

static void write_manifest_body(job *j, FILE *f, const entries *cfg_entries) {
    const ps_config *cfg = j->cfg;
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(f, "{\n \"format\": \"ctrps-model\",\n \"format_version\": %d,\n \"created_utc\": ",
            FORMAT_VERSION);
    ps_json_string(f, when);
    fprintf(f, ",\n \"ctrps_version\": ");
    ps_json_string(f, PS_VERSION);
    fprintf(f, ",\n \"source\": {\"kind\": ");
    ps_json_string(f, j->o->source_kind ? j->o->source_kind : "checkpoint");
    fprintf(f, ", \"checkpoint\": ");
    ps_json_string(f, j->id);
    fprintf(f, "},\n \"config\": {");
    /* Sections in the order they first appear, each with its keys. */
    for (size_t i = 0; i < cfg_entries->n; i++) {
        const entry *e = &cfg_entries->e[i];
        bool first = true;
        for (size_t k = 0; k < i && first; k++)
            first = strcmp(cfg_entries->e[k].section, e->section) != 0;
        if (!first)
            continue;
        fprintf(f, "%s\n  ", i ? "," : "");
        ps_json_string(f, e->section);
        fprintf(f, ": {");
        const char *sep = "";
        for (size_t k = i; k < cfg_entries->n; k++) {
            if (strcmp(cfg_entries->e[k].section, e->section))
                continue;
            fputs(sep, f);
            ps_json_string(f, cfg_entries->e[k].key);
            fputs(": ", f);
            ps_json_string(f, cfg_entries->e[k].value);
            sep = ", ";
        }
        fputc('}', f);
    }
    const ps_worker_config *wc = ps_worker_config_of(cfg);
    fprintf(f, "\n },\n \"model\": {\"type\": ");
    ps_json_string(f, wc ? ps_model_type_name(wc->model.type) : "?");
    fprintf(f, "},\n \"hashing\": {\n  \"fid\": \"(slot_id << 48) | (XXH3_64(value, seed=0) & "
               "(2**48 - 1))\",\n  \"hash\": \"xxh3_64\", \"seed\": 0, \"value_bits\": %d,\n"
               "  \"slot_id\": \"low 16 bits of XXH3_64(slot name, seed=0)\",\n  \"slots\": {",
            PS_FID_VALUE_BITS);
    const char *sep = "";
    for (uint32_t i = 0; i < cfg->ntables; i++) {
        for (size_t s = 0; s < cfg->tables[i].nslots; s++) {
            fputs(sep, f);
            ps_json_string(f, cfg->tables[i].slots[s]);
            fprintf(f, ": %u", ps_slot_id(cfg->tables[i].slots[s]));
            sep = ", ";
        }
    }
    fprintf(f, "},\n  \"buckets\": %u\n },\n \"tables\": [", cfg->buckets);
    for (uint32_t i = 0; i < cfg->ntables; i++) {
        const table_out *t = &j->tables[i];
        const char *fields[PS_OPTIM_FIELDS_MAX];
        int nf = ps_optim_fields(&t->tc->opt, fields);
        fprintf(f, "%s\n  {\"name\": ", i ? "," : "");
        ps_json_string(f, t->tc->name);
        fprintf(f, ", \"dim\": %u, \"optimizer\": ", t->tc->dim);
        ps_json_string(f, ps_optimizer_name(t->tc->opt.kind));
        fprintf(f, ", \"rows\": %" PRIu64 ", \"state_width\": %u, \"state_fields\": [", t->rows,
                t->width);
        for (int k = 0; k < nf; k++) {
            fputs(k ? ", " : "", f);
            ps_json_string(f, fields[k]);
        }
        fprintf(f, "],\n   \"slots\": [");
        for (size_t s = 0; s < t->tc->nslots; s++) {
            fputs(s ? ", " : "", f);
            ps_json_string(f, t->tc->slots[s]);
        }
        fprintf(f, "],\n   \"files\": {\"fids\": \"%s.fids.npy\", \"weights\": \"%s.weights.npy\"",
                t->tc->name, t->tc->name);
        if (j->o->with_state)
            fprintf(f, ", \"state\": \"%s.state.npy\"", t->tc->name);
        fprintf(f, "}}");
    }
    fprintf(f, "\n ],\n \"dense\": [");
    for (size_t b = 0; b < j->ndense; b++) {
        fprintf(f, "%s\n  {\"name\": ", b ? "," : "");
        ps_json_string(f, j->dense[b].name);
        fprintf(f, ", \"len\": %zu, \"file\": ", j->dense[b].len);
        char file[FILE_NAME_MAX];
        snprintf(file, sizeof(file), "%s.npy", j->dense[b].name);
        ps_json_string(f, file);
        fputc('}', f);
    }
    fprintf(f, "\n ],\n \"files\": {");
}

/* manifest.json, last: checksums of every file, then a rename. */
static int write_manifest(job *j, char *err, size_t errlen) {
    entries ce = {0};
    int r = config_entries(j->cfg, &ce, err, errlen);
    if (r < 0) {
        entries_free(&ce);
        return r;
    }
    char path[PATH_MAX + 32], tmp[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/manifest.json", j->o->dir);
    snprintf(tmp, sizeof(tmp), "%s/.manifest.json.tmp", j->o->dir);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        r = -errno;
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        entries_free(&ce);
        return r;
    }
    write_manifest_body(j, f, &ce);
    entries_free(&ce);
    qsort(j->files.names, j->files.n, sizeof(char *), cmp_str);
    for (size_t i = 0; i < j->files.n && r == 0; i++) {
        char fpath[PATH_MAX + FILE_NAME_MAX], hex[2 * crypto_hash_sha256_BYTES + 1];
        uint64_t bytes = 0;
        path_in(j, j->files.names[i], fpath, sizeof(fpath));
        r = sha256_file(fpath, hex, &bytes);
        if (r < 0) {
            snprintf(err, errlen, "%s: %s", fpath, strerror(-r));
            break;
        }
        fprintf(f, "%s\n  ", i ? "," : "");
        ps_json_string(f, j->files.names[i]);
        fprintf(f, ": {\"bytes\": %" PRIu64 ", \"sha256\": \"%s\"}", bytes, hex);
    }
    fprintf(f, "\n }\n}\n");
    if (r == 0 && (fflush(f) != 0 || fsync(fileno(f)) != 0)) {
        r = -errno;
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
    }
    if (fclose(f) != 0 && r == 0) {
        r = -errno;
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
    }
    if (r == 0 && rename(tmp, path) < 0) {
        r = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
    }
    if (r < 0)
        unlink(tmp);
    return r;
}

static int copy_config(job *j, char *err, size_t errlen) {
    char to[PATH_MAX + 16];
    snprintf(to, sizeof(to), "%s/config.ini", j->o->dir);
    int r = ps_copy_file(j->cfg->path, to);
    if (r < 0)
        snprintf(err, errlen, "copying %s to %s: %s", j->cfg->path, to, strerror(-r));
    else if ((r = files_add(&j->files, "config.ini")) < 0)
        snprintf(err, errlen, "out of memory");
    return r;
}

int ps_model_export(const ps_model_export_options *o, char *err, size_t errlen) {
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialise");
        return -EIO;
    }
    job j = {.o = o, .cfg = o->cfg};
    bool created = false;
    int r = check_checkpoint(&j, err, errlen);
    if (r == 0)
        r = prepare_dir(o->dir, &created, err, errlen);
    if (r < 0)
        return r;
    j.tables = calloc(o->cfg->ntables + 1, sizeof(table_out));
    r = j.tables ? open_tables(&j, err, errlen) : -ENOMEM;
    for (uint32_t s = 0; s < o->cfg->nshards && r == 0; s++)
        r = export_shard(&j, s, err, errlen);
    if (j.tables)
        r = finish_tables(&j, r, err, errlen);
    if (r == 0)
        qsort(j.dense, j.ndense, sizeof(*j.dense), cmp_dense);
    if (r == 0)
        r = copy_config(&j, err, errlen);
    if (r == 0)
        r = write_manifest(&j, err, errlen);
    if (r == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    if (r < 0) {
        /* Nothing half-written stays: the files this export made go. */
        for (size_t i = 0; i < j.files.n; i++) {
            char p[PATH_MAX + FILE_NAME_MAX];
            if (path_in(&j, j.files.names[i], p, sizeof(p)) == 0)
                unlink(p);
        }
        if (created)
            rmdir(o->dir);
    }
    files_free(&j.files);
    for (size_t b = 0; b < j.ndense; b++)
        free(j.dense[b].name);
    free(j.dense);
    free(j.tables);
    return r;
}
