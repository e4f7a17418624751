#include "snapshot.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "shard.h"
#include "store.h"

/* Column families as the shard lays them out (shard.c): meta, dense, then
 * one per table in config order. */
#define CF_META 0
#define CF_DENSE 1
#define CF_TABLE0 2
/* Rows the empty memory tier is sized for: export never loads rows. */
#define TIER_ROWS 16

struct ps_snapshot {
    const ps_config *cfg;
    ps_store *store;
    ps_table **tables;           /* owned, cfg->ntables */
    ps_dense *dense;             /* owned */
};

void ps_snapshot_free(ps_snapshot *s) {
    if (!s)
        return;
    for (uint32_t i = 0; s->tables && i < s->cfg->ntables; i++)
        ps_table_free(s->tables[i]);
    free(s->tables);
    ps_dense_free(s->dense);
    ps_store_close(s->store);
    free(s);
}

/* meta[key] must be exactly want. */
static int check_meta(ps_snapshot *s, const char *dir, const char *key, const char *want,
                      char *err, size_t errlen) {
    char *have;
    size_t len;
    int r = ps_store_get(s->store, CF_META, key, strlen(key), &have, &len, err, errlen);
    if (r < 0)
        return r;
    if (!have || len != strlen(want) || memcmp(have, want, len)) {
        snprintf(err, errlen, "%s: %s is '%.*s', the config needs '%s'", dir, key,
                 have ? (int)len : 0, have ? have : "", want);
        r = PS_ECONFIG;
    }
    free(have);
    return r;
}

int ps_snapshot_open(const ps_config *cfg, uint32_t shard, const char *dir,
                     ps_snapshot **ret_snapshot, char *err, size_t errlen) {
    ps_snapshot *s = calloc(1, sizeof(*s));
    size_t ncf = CF_TABLE0 + cfg->ntables;
    const char **cfs = calloc(ncf, sizeof(char *));
    char **names = calloc(cfg->ntables + 1, sizeof(char *));
    int r = -ENOMEM;
    if (!s || !cfs || !names)
        goto out;
    s->cfg = cfg;
    s->tables = calloc(cfg->ntables + 1, sizeof(ps_table *));
    if (!s->tables)
        goto out;
    cfs[CF_META] = "meta";
    cfs[CF_DENSE] = "dense";
    for (uint32_t i = 0; i < cfg->ntables; i++) {
        if (asprintf(&names[i], "t.%s", cfg->tables[i].name) < 0) {
            names[i] = NULL;
            goto out;
        }
        cfs[CF_TABLE0 + i] = names[i];
    }
    /* A small block cache: pages are read once, in order. */
    ps_store_options so = {.block_cache_mb = 16, .read_only = true};
    r = ps_store_open(dir, cfs, ncf, &so, &s->store, err, errlen);
    if (r < 0)
        goto out;
    char want[128];
    ps_shard_identity(cfg, shard, want, sizeof(want));
    r = check_meta(s, dir, "identity", want, err, errlen);
    for (uint32_t i = 0; i < cfg->ntables && r == 0; i++) {
        const ps_table_config *tc = &cfg->tables[i];
        char key[PS_NAME_MAX + 8];
        snprintf(key, sizeof(key), "schema/%s", tc->name);
        ps_shard_table_schema(tc, want, sizeof(want));
        r = check_meta(s, dir, key, want, err, errlen);
        if (r == 0)
            r = ps_table_new(tc, cfg->buckets, TIER_ROWS, s->store, CF_TABLE0 + (int)i, 0,
                             &s->tables[i]);
        /* The expiry clock as of the copy's write-back: rows that a shard
         * restored from the copy would find expired are left out. */
        if (r == 0)
            r = ps_table_load_state(s->tables[i], CF_META, err, errlen);
        else if (r == -ENOMEM)
            snprintf(err, errlen, "out of memory");
    }
    if (r == 0)
        r = ps_dense_new(&cfg->dense, &s->dense);
    if (r == 0)
        r = ps_dense_load_all(s->dense, s->store, CF_DENSE, err, errlen);
out:
    if (r == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    for (uint32_t i = 0; names && i < cfg->ntables; i++)
        free(names[i]);
    free(names);
    free(cfs);
    if (r < 0) {
        ps_snapshot_free(s);
        return r;
    }
    *ret_snapshot = s;
    return 0;
}

ps_table *ps_snapshot_table(ps_snapshot *s, const char *name) {
    for (uint32_t i = 0; i < s->cfg->ntables; i++)
        if (!strcmp(s->cfg->tables[i].name, name))
            return s->tables[i];
    return NULL;
}

const ps_dense *ps_snapshot_dense(const ps_snapshot *s) { return s->dense; }
