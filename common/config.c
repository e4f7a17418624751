#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "keys.h"

/* libinih calls the handler with no line number in Debian's build
 * (INI_HANDLER_LINENO = 0), so we feed it through our own line reader and
 * count lines there: the handler always runs right after its line was read. */
typedef struct parse_state {
    ps_config *cfg;
    const ps_config_ext *ext;
    FILE *fp;
    int line;
    bool overlong;
    int err_line;
    char err[512];
    ps_table_config *table;      /* current [table.*] section */
    /* Which optimizer-specific keys each table set, to reject the ones that
     * do not apply once the optimizer is known (it may come later). */
    struct table_keys {
        int line_of[32];         /* indexed like table_keys[] */
    } *tkeys;
} parse_state;

int ps_parse_double(const char *s, double *ret) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno == ERANGE || !isfinite(v))
        return PS_EPARSE;
    *ret = v;
    return 0;
}

int ps_parse_u64(const char *s, uint64_t *ret) {
    char *end;
    if (!isdigit((unsigned char)*s))
        return PS_EPARSE;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || errno == ERANGE)
        return PS_EPARSE;
    *ret = v;
    return 0;
}

int ps_parse_hostport(const char *s, char *ret_host, size_t hostlen, int *ret_port) {
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= hostlen)
        return PS_EPARSE;
    uint64_t port;
    if (ps_parse_u64(colon + 1, &port) < 0 || port > 65535)
        return PS_EPARSE;
    memcpy(ret_host, s, (size_t)(colon - s));
    ret_host[colon - s] = '\0';
    *ret_port = (int)port;
    return 0;
}

/* Split "a, b ,c" into an owned array of trimmed, non-empty items, appended
 * to *list. */
static int split_list(const char *value, char ***list, size_t *n) {
    const char *p = value;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (!*p)
            break;
        const char *start = p;
        while (*p && *p != ',')
            p++;
        const char *end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        char **grown = realloc(*list, (*n + 1) * sizeof(char *));
        if (!grown)
            return -ENOMEM;
        *list = grown;
        grown[*n] = strndup(start, (size_t)(end - start));
        if (!grown[*n])
            return -ENOMEM;
        (*n)++;
    }
    return 0;
}

static void free_list(char **list, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

/* ---- typed key tables -------------------------------------------------- */

typedef enum { K_U32, K_U64, K_DOUBLE, K_BOOL, K_STRING, K_CUSTOM } key_type;

typedef struct key_desc {
    const char *name;
    key_type type;
    size_t offset;
    double min, max;             /* inclusive range for numbers */
    int (*custom)(void *obj, const char *value, char *err, size_t errlen);
    size_t strlen_max;
    int opt_mask;                /* table keys: optimizers it applies to (0 = all) */
} key_desc;

#define OPT_FTRL (1 << PS_OPT_FTRL)
#define OPT_ADAGRAD (1 << PS_OPT_ADAGRAD)
#define OPT_GL (1 << PS_OPT_FTRL_GROUP_LASSO)

static int set_typed(const key_desc *k, void *obj, const char *value, char *err, size_t errlen) {
    char *field = (char *)obj + k->offset;
    switch (k->type) {
    case K_U32:
    case K_U64: {
        uint64_t v;
        if (ps_parse_u64(value, &v) < 0 || (double)v < k->min || (double)v > k->max) {
            snprintf(err, errlen, "expected an integer in [%.0f, %.0f], got '%s'", k->min, k->max,
                     value);
            return PS_ECONFIG;
        }
        if (k->type == K_U32)
            *(uint32_t *)field = (uint32_t)v;
        else
            *(uint64_t *)field = v;
        return 0;
    }
    case K_DOUBLE: {
        double v;
        if (ps_parse_double(value, &v) < 0 || v < k->min || v > k->max) {
            snprintf(err, errlen, "expected a number in [%g, %g], got '%s'", k->min, k->max, value);
            return PS_ECONFIG;
        }
        *(double *)field = v;
        return 0;
    }
    case K_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes"))
            *(bool *)field = true;
        else if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no"))
            *(bool *)field = false;
        else {
            snprintf(err, errlen, "expected true or false, got '%s'", value);
            return PS_ECONFIG;
        }
        return 0;
    case K_STRING:
        if (strlen(value) >= k->strlen_max) {
            snprintf(err, errlen, "value longer than %zu characters", k->strlen_max - 1);
            return PS_ECONFIG;
        }
        strcpy(field, value);
        return 0;
    case K_CUSTOM:
        return k->custom(obj, value, err, errlen);
    }
    return PS_ECONFIG;
}

static const key_desc *find_key(const key_desc *keys, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(keys[i].name, name))
            return &keys[i];
    return NULL;
}

/* ---- [cluster] --------------------------------------------------------- */

static int set_shards(void *obj, const char *value, char *err, size_t errlen) {
    ps_config *cfg = obj;
    size_t n = cfg->nshards;
    if (split_list(value, &cfg->shards, &n) < 0)
        return -ENOMEM;
    cfg->nshards = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        char host[256];
        int port;
        if (ps_parse_hostport(cfg->shards[i], host, sizeof(host), &port) < 0) {
            snprintf(err, errlen, "'%s' is not host:port", cfg->shards[i]);
            return PS_ECONFIG;
        }
    }
    return 0;
}

static const key_desc cluster_keys[] = {
    {"shards", K_CUSTOM, 0, 0, 0, set_shards, 0, 0},
    {"buckets", K_U32, offsetof(ps_config, buckets), 1, 65536, NULL, 0, 0},
    {"map_version", K_U64, offsetof(ps_config, map_version), 1, 1e18, NULL, 0, 0},
    {"checkpoint_dir", K_STRING, offsetof(ps_config, checkpoint_dir), 0, 0, NULL, PS_PATH_MAX, 0},
    {"checkpoint_interval_s", K_U32, offsetof(ps_config, checkpoint_interval_s), 0, 1u << 30, NULL, 0, 0},
    {"checkpoint_retention", K_U32, offsetof(ps_config, checkpoint_retention), 1, 1u << 20, NULL, 0, 0},
    {"checkpoint_wait_s", K_U32, offsetof(ps_config, checkpoint_wait_s), 1, 86400, NULL, 0, 0},
};

/* ---- [server] ---------------------------------------------------------- */

static int set_durability(void *obj, const char *value, char *err, size_t errlen) {
    ps_server_config *s = obj;
    uint64_t ms;
    if (!strcmp(value, "sync")) {
        s->durability = PS_DURABILITY_SYNC;
        return 0;
    }
    if (!strncmp(value, "interval=", 9) && ps_parse_u64(value + 9, &ms) == 0 && ms >= 1 &&
        ms <= 3600000) {
        s->durability = PS_DURABILITY_INTERVAL;
        s->interval_ms = (uint32_t)ms;
        return 0;
    }
    snprintf(err, errlen, "expected 'sync' or 'interval=MS' (1..3600000), got '%s'", value);
    return PS_ECONFIG;
}

static int set_fsync(void *obj, const char *value, char *err, size_t errlen) {
    ps_server_config *s = obj;
    if (!strcmp(value, "always"))
        s->fsync = PS_FSYNC_ALWAYS;
    else if (!strcmp(value, "everysec"))
        s->fsync = PS_FSYNC_EVERYSEC;
    else if (!strcmp(value, "no"))
        s->fsync = PS_FSYNC_NO;
    else {
        snprintf(err, errlen, "expected always, everysec or no, got '%s'", value);
        return PS_ECONFIG;
    }
    return 0;
}

#define SRV(f) offsetof(ps_server_config, f)
static const key_desc server_keys[] = {
    {"durability", K_CUSTOM, 0, 0, 0, set_durability, 0, 0},
    {"fsync", K_CUSTOM, 0, 0, 0, set_fsync, 0, 0},
    {"data_dir", K_STRING, SRV(data_dir), 0, 0, NULL, PS_PATH_MAX, 0},
    {"bind", K_STRING, SRV(bind), 0, 0, NULL, PS_NAME_MAX, 0},
    {"memory_mb", K_U64, SRV(memory_mb), 1, 1 << 24, NULL, 0, 0},
    {"flush_interval_ms", K_U32, SRV(flush_interval_ms), 1, 3600000, NULL, 0, 0},
    {"flush_dirty_rows", K_U64, SRV(flush_dirty_rows), 1, 1e12, NULL, 0, 0},
    {"max_frame_bytes", K_U64, SRV(max_frame_bytes), 1024, 1u << 30, NULL, 0, 0},
    {"max_keys_per_request", K_U64, SRV(max_keys_per_request), 1, 1 << 24, NULL, 0, 0},
    {"max_inflight_per_conn", K_U32, SRV(max_inflight_per_conn), 1, 1 << 20, NULL, 0, 0},
    {"max_connections", K_U32, SRV(max_connections), 1, 1 << 20, NULL, 0, 0},
    {"idle_timeout_s", K_U32, SRV(idle_timeout_s), 0, 1 << 30, NULL, 0, 0},
    {"max_pending_reply_bytes", K_U64, SRV(max_pending_reply_bytes), 1 << 16, 1e12, NULL, 0, 0},
    {"max_dense_floats", K_U64, SRV(max_dense_floats), 1, 1e12, NULL, 0, 0},
    {"auth_secret_file", K_STRING, SRV(auth_secret_file), 0, 0, NULL, PS_PATH_MAX, 0},
    {"metrics_listen", K_STRING, SRV(metrics_listen), 0, 0, NULL, PS_NAME_MAX, 0},
};
#undef SRV

/* ---- [table.NAME] ------------------------------------------------------ */

static int set_optimizer(void *obj, const char *value, char *err, size_t errlen) {
    ps_table_config *t = obj;
    if (!strcmp(value, "ftrl"))
        t->opt.kind = PS_OPT_FTRL;
    else if (!strcmp(value, "adagrad"))
        t->opt.kind = PS_OPT_ADAGRAD;
    else if (!strcmp(value, "ftrl_group_lasso"))
        t->opt.kind = PS_OPT_FTRL_GROUP_LASSO;
    else {
        snprintf(err, errlen, "expected ftrl, adagrad or ftrl_group_lasso, got '%s'", value);
        return PS_ECONFIG;
    }
    return 0;
}

static int set_init(void *obj, const char *value, char *err, size_t errlen) {
    ps_table_config *t = obj;
    if (!strcmp(value, "zero"))
        t->init = PS_INIT_ZERO;
    else if (!strcmp(value, "normal"))
        t->init = PS_INIT_NORMAL;
    else {
        snprintf(err, errlen, "expected zero or normal, got '%s'", value);
        return PS_ECONFIG;
    }
    return 0;
}

static int set_slots(void *obj, const char *value, char *err, size_t errlen) {
    ps_table_config *t = obj;
    (void)err;
    (void)errlen;
    return split_list(value, &t->slots, &t->nslots);
}

#define TBL(f) offsetof(ps_table_config, f)
#define OPTP(f) offsetof(ps_table_config, opt) + offsetof(ps_optim_params, f)
static const key_desc table_keys[] = {
    {"dim", K_U32, TBL(dim), 1, 4096, NULL, 0, 0},
    {"optimizer", K_CUSTOM, 0, 0, 0, set_optimizer, 0, 0},
    {"alpha", K_DOUBLE, OPTP(alpha), 1e-12, 1e6, NULL, 0, OPT_FTRL | OPT_GL},
    {"beta", K_DOUBLE, OPTP(beta), 0, 1e6, NULL, 0, OPT_FTRL | OPT_GL},
    {"lambda1", K_DOUBLE, OPTP(lambda1), 0, 1e6, NULL, 0, OPT_FTRL | OPT_GL},
    {"lambda2", K_DOUBLE, OPTP(lambda2), 0, 1e6, NULL, 0, OPT_FTRL | OPT_GL},
    {"lambda21", K_DOUBLE, OPTP(lambda21), 0, 1e6, NULL, 0, OPT_GL},
    {"lr", K_DOUBLE, OPTP(lr), 1e-12, 1e6, NULL, 0, OPT_ADAGRAD},
    {"initial_accumulator_value", K_DOUBLE, OPTP(initial_accumulator_value), 0, 1e12, NULL, 0,
     OPT_ADAGRAD},
    {"eps", K_DOUBLE, OPTP(eps), 0, 1, NULL, 0, OPT_ADAGRAD},
    {"accum_max", K_DOUBLE, OPTP(accum_max), 1e-12, 1e300, NULL, 0, OPT_ADAGRAD},
    {"rowwise", K_BOOL, OPTP(rowwise), 0, 0, NULL, 0, OPT_ADAGRAD},
    {"grad_clip", K_DOUBLE, OPTP(grad_clip), 0, 1e30, NULL, 0, 0},
    {"init", K_CUSTOM, 0, 0, 0, set_init, 0, 0},
    {"init_std", K_DOUBLE, TBL(init_std), 0, 1e3, NULL, 0, 0},
    {"seed", K_U64, TBL(seed), 0, 1.8e19, NULL, 0, 0},
    {"memory_rows", K_U64, TBL(memory_rows), 0, 1e12, NULL, 0, 0},
    {"slots", K_CUSTOM, 0, 0, 0, set_slots, 0, 0},
    /* Feature lifecycle: admission and expiry. 15 is the largest count a
     * 4-bit counter holds; 2^34 counters are 8 GiB. */
    {"admit_probability", K_DOUBLE, TBL(admit_probability), 0, 1, NULL, 0, 0},
    {"admit_after", K_U32, TBL(admit_after), 0, 15, NULL, 0, 0},
    {"admit_bloom_bits", K_U64, TBL(admit_bloom_bits), 1024, 17179869184.0, NULL, 0, 0},
    {"ttl_s", K_U32, TBL(ttl_s), 0, 1u << 30, NULL, 0, 0},
    {"expire_below", K_DOUBLE, TBL(expire_below), 0, 1e30, NULL, 0, 0},
};
#undef TBL
#undef OPTP
#define NTABLE_KEYS (sizeof(table_keys) / sizeof(table_keys[0]))
_Static_assert(NTABLE_KEYS <= 32, "parse_state.tkeys->line_of is too small");

static void table_defaults(ps_table_config *t, const char *name) {
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->dim = 0;
    t->opt.kind = PS_OPT_FTRL;
    t->opt.alpha = 0.05;
    t->opt.beta = 1.0;
    t->opt.lr = 0.05;
    t->opt.initial_accumulator_value = 0.1;
    t->opt.eps = 1e-8;
    t->opt.accum_max = INFINITY;
    t->init = PS_INIT_ZERO;
    t->init_std = 0.01;
    t->admit_probability = 1.0;
    t->admit_bloom_bits = 1u << 24;
}

static void server_defaults(ps_server_config *s) {
    memset(s, 0, sizeof(*s));
    s->durability = PS_DURABILITY_SYNC;
    s->interval_ms = 1000;
    s->fsync = PS_FSYNC_EVERYSEC;
    snprintf(s->data_dir, sizeof(s->data_dir), "ctrps-data");
    snprintf(s->bind, sizeof(s->bind), "127.0.0.1");
    s->memory_mb = 1024;
    /* Write-back cadence in sync mode. The push log makes every push durable
     * at once, so write-back only bounds replay time and log size; a long
     * interval lets repeated pushes to a hot row coalesce into one RocksDB
     * write (bench/README.md measures the cost of shorter ones). */
    s->flush_interval_ms = 10000;
    s->flush_dirty_rows = 4u << 20;
    s->max_frame_bytes = 64u << 20;
    s->max_keys_per_request = 1u << 20;
    s->max_inflight_per_conn = 1024;
    s->max_connections = 1024;
    s->idle_timeout_s = 0;
    s->max_pending_reply_bytes = 256u << 20;
    s->max_dense_floats = 256u << 20; /* 1 GiB of weights, 3 GiB with Adam's state */
}

/* ---- [model]: the keys servers need ---------------------------------------- */

static int set_dense_optimizer(void *obj, const char *value, char *err, size_t errlen) {
    (void)obj;
    if (strcmp(value, "adam") != 0) {
        snprintf(err, errlen, "expected adam (the only dense optimizer), got '%s'", value);
        return PS_ECONFIG;
    }
    return 0;
}

#define DNS(f) offsetof(ps_dense_config, f)
static const key_desc dense_keys[] = {
    {"dense_optimizer", K_CUSTOM, 0, 0, 0, set_dense_optimizer, 0, 0},
    {"dense_lr", K_DOUBLE, DNS(lr), 1e-12, 1e3, NULL, 0, 0},
    {"adam_beta1", K_DOUBLE, DNS(beta1), 0, 0.999999, NULL, 0, 0},
    {"adam_beta2", K_DOUBLE, DNS(beta2), 0, 0.999999999, NULL, 0, 0},
    {"adam_eps", K_DOUBLE, DNS(eps), 0, 1, NULL, 0, 0},
};
#undef DNS

/* ---- the handler --------------------------------------------------------- */

static bool is_worker_section(const char *section) {
    return !strcmp(section, "input") || !strcmp(section, "model") || !strcmp(section, "worker");
}

static int fail(parse_state *st, const char *section, const char *key, const char *reason) {
    if (st->err_line == 0) {
        st->err_line = st->line;
        if (key)
            snprintf(st->err, sizeof(st->err), "[%s] key '%s': %s", section, key, reason);
        else
            snprintf(st->err, sizeof(st->err), "[%s]: %s", section, reason);
    }
    return 0;
}

static ps_table_config *get_table(parse_state *st, const char *name) {
    ps_config *cfg = st->cfg;
    for (uint32_t i = 0; i < cfg->ntables; i++)
        if (!strcmp(cfg->tables[i].name, name))
            return &cfg->tables[i];
    ps_table_config *grown = realloc(cfg->tables, (cfg->ntables + 1) * sizeof(*grown));
    struct table_keys *tk = realloc(st->tkeys, (cfg->ntables + 1) * sizeof(*tk));
    if (grown)
        cfg->tables = grown;
    if (tk)
        st->tkeys = tk;
    if (!grown || !tk)
        return NULL;
    table_defaults(&grown[cfg->ntables], name);
    memset(&tk[cfg->ntables], 0, sizeof(*tk));
    return &grown[cfg->ntables++];
}

static int handler(void *user, const char *section, const char *name, const char *value) {
    parse_state *st = user;
    ps_config *cfg = st->cfg;
    char reason[256] = "";
    if (st->overlong)
        return fail(st, section, name, "line too long (at most 199 characters; repeat the key "
                                       "to continue a list)");
    const key_desc *keys = NULL;
    size_t nkeys = 0;
    void *obj = NULL;
    if (!strcmp(section, "cluster")) {
        keys = cluster_keys, nkeys = sizeof(cluster_keys) / sizeof(*keys), obj = cfg;
    } else if (!strcmp(section, "server")) {
        keys = server_keys, nkeys = sizeof(server_keys) / sizeof(*keys), obj = &cfg->server;
    } else if (!strncmp(section, "table.", 6)) {
        const char *tname = section + 6;
        size_t len = strlen(tname);
        if (len == 0 || len >= PS_NAME_MAX)
            return fail(st, section, NULL, "table name must be 1..63 characters");
        for (const char *p = tname; *p; p++)
            if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-')
                return fail(st, section, NULL, "table name may hold only [A-Za-z0-9_-]");
        ps_table_config *t = get_table(st, tname);
        if (!t)
            return fail(st, section, name, "out of memory");
        keys = table_keys, nkeys = NTABLE_KEYS, obj = t;
        const key_desc *k = find_key(keys, nkeys, name);
        if (k && k->opt_mask)
            st->tkeys[t - cfg->tables].line_of[k - table_keys] = st->line;
    } else if (!strcmp(section, "model") &&
               find_key(dense_keys, sizeof(dense_keys) / sizeof(*dense_keys), name)) {
        keys = dense_keys, nkeys = sizeof(dense_keys) / sizeof(*keys), obj = &cfg->dense;
    } else if (is_worker_section(section) || (st->ext && st->ext->owns(section))) {
        if (!st->ext)
            return 1;
        if (st->ext->set(cfg, section, name, value, reason, sizeof(reason)) < 0)
            return fail(st, section, name, reason);
        return 1;
    } else {
        return fail(st, section, NULL, "unknown section");
    }
    const key_desc *k = find_key(keys, nkeys, name);
    if (!k)
        return fail(st, section, name, "unknown key");
    if (set_typed(k, obj, value, reason, sizeof(reason)) < 0)
        return fail(st, section, name, reason);
    return 1;
}

static char *reader(char *buf, int size, void *stream) {
    parse_state *st = stream;
    if (!fgets(buf, size, st->fp))
        return NULL;
    st->line++;
    size_t len = strlen(buf);
    st->overlong = false;
    if (len == (size_t)size - 1 && buf[len - 1] != '\n') {
        /* A line of exactly size - 1 characters fills the buffer without
         * its newline: it fits (the limit the message states). */
        int c = fgetc(st->fp);
        if (c == '\n' || c == EOF)
            return buf;
        /* Swallow the rest of the line; the handler (or inih's own error for
         * a line without '=') reports it. */
        while ((c = fgetc(st->fp)) != EOF && c != '\n')
            ;
        st->overlong = true;
        if (st->err_line == 0) {
            st->err_line = st->line;
            snprintf(st->err, sizeof(st->err),
                     "line too long (at most %d characters; repeat the key to continue a list)",
                     size - 1);
        }
    }
    return buf;
}

/* Checks that need the whole file. */
static int finish(parse_state *st) {
    ps_config *cfg = st->cfg;
    if (cfg->nshards == 0) {
        snprintf(st->err, sizeof(st->err), "[cluster] key 'shards': at least one shard is required");
        return PS_ECONFIG;
    }
    if (cfg->checkpoint_interval_s && !cfg->checkpoint_dir[0]) {
        snprintf(st->err, sizeof(st->err),
                 "[cluster] key 'checkpoint_interval_s': periodic checkpoints need checkpoint_dir");
        return PS_ECONFIG;
    }
    if (cfg->buckets < cfg->nshards) {
        snprintf(st->err, sizeof(st->err), "[cluster] key 'buckets': %u buckets cannot cover %u shards",
                 cfg->buckets, cfg->nshards);
        return PS_ECONFIG;
    }
    for (uint32_t i = 0; i < cfg->ntables; i++) {
        ps_table_config *t = &cfg->tables[i];
        if (t->dim == 0) {
            snprintf(st->err, sizeof(st->err), "[table.%s] key 'dim': required", t->name);
            return PS_ECONFIG;
        }
        int bit = 1 << t->opt.kind;
        for (size_t k = 0; k < NTABLE_KEYS; k++) {
            int line = st->tkeys[i].line_of[k];
            if (line && table_keys[k].opt_mask && !(table_keys[k].opt_mask & bit)) {
                st->err_line = line;
                snprintf(st->err, sizeof(st->err), "[table.%s] key '%s': does not apply to optimizer %s",
                         t->name, table_keys[k].name, ps_optimizer_name(t->opt.kind));
                return PS_ECONFIG;
            }
        }
        if (t->opt.kind != PS_OPT_ADAGRAD && t->init == PS_INIT_NORMAL && t->opt.beta == 0 &&
            t->opt.lambda2 == 0) {
            snprintf(st->err, sizeof(st->err),
                     "[table.%s] key 'init': a random init needs beta > 0 or lambda2 > 0 for FTRL's "
                     "warm start (ALGORITHMS.md §1)",
                     t->name);
            return PS_ECONFIG;
        }
        for (size_t s = 0; s < t->nslots; s++) {
            uint16_t id = ps_slot_id(t->slots[s]);
            for (uint32_t j = 0; j <= i; j++) {
                const ps_table_config *o = &cfg->tables[j];
                size_t end = j == i ? s : o->nslots;
                for (size_t q = 0; q < end; q++) {
                    if (!strcmp(o->slots[q], t->slots[s])) {
                        snprintf(st->err, sizeof(st->err), "[table.%s] key 'slots': slot '%s' is already mapped to table '%s'",
                                 t->name, t->slots[s], o->name);
                        return PS_ECONFIG;
                    }
                    if (ps_slot_id(o->slots[q]) == id) {
                        snprintf(st->err, sizeof(st->err),
                                 "[table.%s] key 'slots': slots '%s' and '%s' hash to the same "
                                 "16-bit slot id; rename one",
                                 t->name, t->slots[s], o->slots[q]);
                        return PS_ECONFIG;
                    }
                }
            }
        }
    }
    if (st->ext && st->ext->finish && st->ext->finish(cfg, st->err, sizeof(st->err)) < 0)
        return PS_ECONFIG;
    return 0;
}

int ps_config_load(const char *path, const ps_config_ext *ext, ps_config **ret_cfg, char *err,
                   size_t errlen) {
    ps_config *cfg = calloc(1, sizeof(*cfg));
    if (!cfg)
        return -ENOMEM;
    snprintf(cfg->path, sizeof(cfg->path), "%s", path);
    cfg->buckets = 1024;
    cfg->map_version = 1;
    cfg->checkpoint_retention = 5;
    cfg->checkpoint_wait_s = 600;
    cfg->dense.lr = 0.001;
    cfg->dense.beta1 = 0.9;
    cfg->dense.beta2 = 0.999;
    cfg->dense.eps = 1e-8;
    server_defaults(&cfg->server);
    cfg->worker_free = ext ? ext->free : NULL;

    parse_state st = {.cfg = cfg, .ext = ext};
    st.fp = fopen(path, "r");
    if (!st.fp) {
        int r = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        ps_config_free(cfg);
        return r;
    }
    /* Debian's libinih makes continuation lines (an indented line continues
     * the previous key's value, as in Python's configparser) a run-time
     * switch. Turn them off: an indented "optimizer = adagrad" under
     * "slots = A" would otherwise become a slot of that name and leave the
     * optimizer silently at its default. Indented lines are plain keys. */
    ini_allow_multiline = false;
    int line = ini_parse_stream(reader, &st, handler, &st);
    fclose(st.fp);
    int r = 0;
    if (line != 0 || st.err_line != 0) {
        if (st.err_line == 0) {
            st.err_line = line;
            snprintf(st.err, sizeof(st.err), "syntax error (expected [section] or key = value)");
        } else if (line > 0 && line < st.err_line) {
            st.err_line = line;
            snprintf(st.err, sizeof(st.err), "syntax error (expected [section] or key = value)");
        }
        r = PS_ECONFIG;
    } else {
        r = finish(&st);
    }
    free(st.tkeys);
    if (r < 0) {
        if (st.err_line > 0)
            snprintf(err, errlen, "%s:%d: %s", path, st.err_line, st.err);
        else
            snprintf(err, errlen, "%s: %s", path, st.err);
        ps_config_free(cfg);
        return r;
    }
    *ret_cfg = cfg;
    return 0;
}

void ps_config_free(ps_config *cfg) {
    if (!cfg)
        return;
    free_list(cfg->shards, cfg->nshards);
    for (uint32_t i = 0; i < cfg->ntables; i++)
        free_list(cfg->tables[i].slots, cfg->tables[i].nslots);
    free(cfg->tables);
    if (cfg->worker && cfg->worker_free)
        cfg->worker_free(cfg->worker);
    free(cfg);
}

const ps_table_config *ps_config_table(const ps_config *cfg, const char *name) {
    for (uint32_t i = 0; i < cfg->ntables; i++)
        if (!strcmp(cfg->tables[i].name, name))
            return &cfg->tables[i];
    return NULL;
}

const ps_table_config *ps_config_slot_table(const ps_config *cfg, const char *slot) {
    for (uint32_t i = 0; i < cfg->ntables; i++)
        for (size_t s = 0; s < cfg->tables[i].nslots; s++)
            if (!strcmp(cfg->tables[i].slots[s], slot))
                return &cfg->tables[i];
    return NULL;
}

uint32_t ps_optim_state_width(const ps_optim_params *opt, uint32_t dim) {
    switch (opt->kind) {
    case PS_OPT_FTRL:
    case PS_OPT_FTRL_GROUP_LASSO:
        return 3 * dim;
    case PS_OPT_ADAGRAD:
        return opt->rowwise ? dim + 1 : 2 * dim;
    }
    return 0;
}

int ps_optim_fields(const ps_optim_params *opt, const char *ret_names[3]) {
    ret_names[0] = "w";
    if (opt->kind == PS_OPT_ADAGRAD) {
        ret_names[1] = "acc";
        return 2;
    }
    ret_names[1] = "z";
    ret_names[2] = "n";
    return 3;
}

const char *ps_optimizer_name(ps_optimizer_kind kind) {
    switch (kind) {
    case PS_OPT_FTRL:
        return "ftrl";
    case PS_OPT_ADAGRAD:
        return "adagrad";
    case PS_OPT_FTRL_GROUP_LASSO:
        return "ftrl_group_lasso";
    }
    return "?";
}
