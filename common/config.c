#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_key.h"
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

/* A host is a DNS name (letters, digits, '-', '_', '.'), an IPv4 literal,
 * or an IPv6 literal in brackets (with an optional %zone). The brackets are
 * required for IPv6 because its colons would make the port ambiguous. */
static bool valid_name(const char *s, size_t len) {
    if (len == 0 || len > 253 || s[0] == '.' || s[0] == '-')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!isalnum(ch) && ch != '-' && ch != '.' && ch != '_')
            return false;
    }
    return true;
}

static bool valid_v6(const char *s, size_t len) {
    if (len < 2)
        return false;
    bool zone = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '%' && i > 0 && !zone)
            zone = true;
        else if (!(zone ? isalnum(ch) || ch == '.' || ch == '-' || ch == '_'
                        : isxdigit(ch) || ch == ':' || ch == '.'))
            return false;
    }
    return memchr(s, ':', len) != NULL;
}

int ps_parse_host(const char *s, char *ret_host, size_t hostlen) {
    size_t len = strlen(s);
    const char *h = s;
    if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
        h = s + 1;
        len -= 2;
        if (!valid_v6(h, len))
            return PS_EPARSE;
    } else if (!valid_name(s, len)) {
        return PS_EPARSE;
    }
    if (len >= hostlen)
        return PS_EPARSE;
    memcpy(ret_host, h, len);
    ret_host[len] = '\0';
    return 0;
}

int ps_parse_hostport(const char *s, char *ret_host, size_t hostlen, int *ret_port) {
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return PS_EPARSE;
    uint64_t port;
    if (ps_parse_u64(colon + 1, &port) < 0 || port > 65535)
        return PS_EPARSE;
    size_t len = (size_t)(colon - s);
    char host[300];
    if (len >= sizeof(host))
        return PS_EPARSE;
    memcpy(host, s, len);
    host[len] = '\0';
    if (host[0] != '[' && strchr(host, ':'))
        return PS_EPARSE; /* a bare IPv6 literal: which colon starts the port? */
    char out[300];
    if (ps_parse_host(host, out, sizeof(out)) < 0 || strlen(out) >= hostlen)
        return PS_EPARSE;
    memcpy(ret_host, out, strlen(out) + 1);
    *ret_port = (int)port;
    return 0;
}

#define NKEYS(keys) (sizeof(keys) / sizeof((keys)[0]))

/* ---- [cluster] --------------------------------------------------------- */

static int check_shard(const ps_config_key *k, const char *s, size_t len, char *err,
                       size_t errlen) {
    (void)k;
    char item[256], host[256];
    int port;
    if (len < sizeof(item)) {
        memcpy(item, s, len);
        item[len] = '\0';
        if (ps_parse_hostport(item, host, sizeof(host), &port) == 0)
            return 0;
    }
    snprintf(err, errlen, "'%.*s' is not HOST:PORT (a name, an IPv4 address, or [IPv6])", (int)len, s);
    return PS_ECONFIG;
}

/* [server] bind: a host without a port (the port is the shard's). */
static int check_bind(const ps_config_key *k, const char *s, size_t len, char *err, size_t errlen) {
    (void)k;
    char item[256], host[256];
    if (len == 0)
        return 0; /* the host of this shard's entry in [cluster] shards */
    if (len < sizeof(item)) {
        memcpy(item, s, len);
        item[len] = '\0';
        if (ps_parse_host(item, host, sizeof(host)) == 0)
            return 0;
    }
    snprintf(err, errlen,
             "'%.*s' is not a host (a name, an IPv4 address, or [IPv6]; the port comes from "
             "[cluster] shards)",
             (int)len, s);
    return PS_ECONFIG;
}

/* [server] metrics_listen: HOST:PORT, or empty for no endpoint. */
static int check_listen(const ps_config_key *k, const char *s, size_t len, char *err,
                        size_t errlen) {
    return len == 0 ? 0 : check_shard(k, s, len, err, errlen);
}

static const ps_config_key cluster_keys[] = {
    PS_KEY_STRINGS("shards", ps_config, shards, nshards, .flags = PS_KEY_APPEND,
                   .check = check_shard),
    PS_KEY_U32("buckets", ps_config, buckets, 1, 65536),
    PS_KEY_U64("map_version", ps_config, map_version, 1, UINT64_C(1000000000000000000)),
    PS_KEY_STRING("checkpoint_dir", ps_config, checkpoint_dir),
    PS_KEY_U32("checkpoint_interval_s", ps_config, checkpoint_interval_s, 0, 1u << 30),
    PS_KEY_U32("checkpoint_retention", ps_config, checkpoint_retention, 1, 1u << 20),
    PS_KEY_U32("checkpoint_wait_s", ps_config, checkpoint_wait_s, 1, 86400),
};

/* ---- [server] ---------------------------------------------------------- */

/* durability = sync | interval=MS: sets durability and interval_ms. */
static int set_durability(const ps_config_key *k, void *obj, const char *value, char *err,
                          size_t errlen) {
    (void)k;
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

static const char *const fsync_names[] = {
    [PS_FSYNC_ALWAYS] = "always", [PS_FSYNC_EVERYSEC] = "everysec", [PS_FSYNC_NO] = "no"};

#define SRV ps_server_config
static const ps_config_key server_keys[] = {
    PS_KEY_CUSTOM("durability", SRV, durability, set_durability),
    PS_KEY_ENUM("fsync", SRV, fsync, fsync_names),
    PS_KEY_STRING("data_dir", SRV, data_dir),
    PS_KEY_STRING("bind", SRV, bind, .check = check_bind),
    PS_KEY_U64("memory_mb", SRV, memory_mb, 1, 1 << 24),
    PS_KEY_U64("block_cache_mb", SRV, block_cache_mb, 1, 1 << 24),
    PS_KEY_U64("write_buffer_mb", SRV, write_buffer_mb, 1, 1 << 16),
    PS_KEY_U32("flush_interval_ms", SRV, flush_interval_ms, 1, 3600000),
    PS_KEY_U64("flush_dirty_rows", SRV, flush_dirty_rows, 1, UINT64_C(1000000000000)),
    PS_KEY_U64("max_frame_bytes", SRV, max_frame_bytes, 1024, 1u << 30),
    PS_KEY_U64("max_keys_per_request", SRV, max_keys_per_request, 1, 1 << 24),
    PS_KEY_U32("max_inflight_per_conn", SRV, max_inflight_per_conn, 1, 1 << 20),
    PS_KEY_U32("max_connections", SRV, max_connections, 1, 1 << 20),
    PS_KEY_U32("idle_timeout_s", SRV, idle_timeout_s, 0, 1 << 30),
    PS_KEY_U64("max_pending_reply_bytes", SRV, max_pending_reply_bytes, 1 << 16,
               UINT64_C(1000000000000)),
    PS_KEY_U64("max_dense_floats", SRV, max_dense_floats, 1, UINT64_C(1000000000000)),
    PS_KEY_STRING("auth_secret_file", SRV, auth_secret_file),
    PS_KEY_STRING("metrics_listen", SRV, metrics_listen, .check = check_listen),
};
#undef SRV

/* ---- [table.NAME] ------------------------------------------------------ */

static const char *const init_names[] = {[PS_INIT_ZERO] = "zero", [PS_INIT_NORMAL] = "normal"};

/* Scope of a table key: the optimizers it applies to (finish() rejects the
 * key in a table of another optimizer). */
#define OPT_FTRL (1u << PS_OPT_FTRL)
#define OPT_ADAGRAD (1u << PS_OPT_ADAGRAD)
#define OPT_GL (1u << PS_OPT_FTRL_GROUP_LASSO)

#define TBL ps_table_config
static const ps_config_key table_keys[] = {
    PS_KEY_U32("dim", TBL, dim, 1, PS_OPTIM_DIM_MAX),
    PS_KEY_ENUM("optimizer", TBL, opt.kind, ps_optimizer_names),
    PS_KEY_DOUBLE("alpha", TBL, opt.alpha, 1e-12, 1e6, .scope = OPT_FTRL | OPT_GL),
    PS_KEY_DOUBLE("beta", TBL, opt.beta, 0, 1e6, .scope = OPT_FTRL | OPT_GL),
    PS_KEY_DOUBLE("lambda1", TBL, opt.lambda1, 0, 1e6, .scope = OPT_FTRL | OPT_GL),
    PS_KEY_DOUBLE("lambda2", TBL, opt.lambda2, 0, 1e6, .scope = OPT_FTRL | OPT_GL),
    PS_KEY_DOUBLE("lambda21", TBL, opt.lambda21, 0, 1e6, .scope = OPT_GL),
    PS_KEY_DOUBLE("lr", TBL, opt.lr, 1e-12, 1e6, .scope = OPT_ADAGRAD),
    PS_KEY_DOUBLE("initial_accumulator_value", TBL, opt.initial_accumulator_value, 0, 1e12,
                  .scope = OPT_ADAGRAD),
    PS_KEY_DOUBLE("eps", TBL, opt.eps, 0, 1, .scope = OPT_ADAGRAD),
    PS_KEY_DOUBLE("accum_max", TBL, opt.accum_max, 1e-12, 1e300, .scope = OPT_ADAGRAD),
    PS_KEY_BOOL("rowwise", TBL, opt.rowwise, .scope = OPT_ADAGRAD),
    PS_KEY_DOUBLE("grad_clip", TBL, opt.grad_clip, 0, 1e30),
    PS_KEY_ENUM("init", TBL, init, init_names),
    PS_KEY_DOUBLE("init_std", TBL, init_std, 0, 1e3),
    PS_KEY_U64("seed", TBL, seed, 0, UINT64_C(18000000000000000000)),
    PS_KEY_U64("memory_rows", TBL, memory_rows, 0, UINT64_C(1000000000000)),
    PS_KEY_STRINGS("slots", TBL, slots, nslots, .flags = PS_KEY_APPEND),
    /* Feature lifecycle: admission and expiry. 15 is the largest count a
     * 4-bit counter holds; 2^34 counters are 8 GiB. */
    PS_KEY_DOUBLE("admit_probability", TBL, admit_probability, 0, 1),
    PS_KEY_U32("admit_after", TBL, admit_after, 0, 15),
    PS_KEY_U64("admit_bloom_bits", TBL, admit_bloom_bits, 1024, UINT64_C(17179869184)),
    PS_KEY_U32("ttl_s", TBL, ttl_s, 0, 1u << 30),
    PS_KEY_DOUBLE("expire_below", TBL, expire_below, 0, 1e30),
};
#undef TBL
#define NTABLE_KEYS NKEYS(table_keys)
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
    s->memory_mb = 1024;
    s->block_cache_mb = PS_DEFAULT_BLOCK_CACHE_MB;
    s->write_buffer_mb = PS_DEFAULT_WRITE_BUFFER_MB;
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

static const char *const dense_optimizer_names[] = {[PS_DENSE_ADAM] = "adam"};

#define DNS ps_dense_config
static const ps_config_key dense_keys[] = {
    PS_KEY_ENUM("dense_optimizer", DNS, optimizer, dense_optimizer_names),
    PS_KEY_DOUBLE("dense_lr", DNS, lr, 1e-12, 1e3),
    PS_KEY_DOUBLE("adam_beta1", DNS, beta1, 0, 0.999999),
    PS_KEY_DOUBLE("adam_beta2", DNS, beta2, 0, 0.999999999),
    PS_KEY_DOUBLE("adam_eps", DNS, eps, 0, 1),
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
    const ps_config_key *keys = NULL;
    size_t nkeys = 0;
    void *obj = NULL;
    ps_table_config *t = NULL;
    if (!strcmp(section, "cluster")) {
        keys = cluster_keys, nkeys = NKEYS(cluster_keys), obj = cfg;
    } else if (!strcmp(section, "server")) {
        keys = server_keys, nkeys = NKEYS(server_keys), obj = &cfg->server;
    } else if (!strncmp(section, "table.", 6)) {
        const char *tname = section + 6;
        size_t len = strlen(tname);
        if (len == 0 || len >= PS_NAME_MAX)
            return fail(st, section, NULL, "table name must be 1..63 characters");
        for (const char *p = tname; *p; p++)
            if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-')
                return fail(st, section, NULL, "table name may hold only [A-Za-z0-9_-]");
        t = get_table(st, tname);
        if (!t)
            return fail(st, section, name, "out of memory");
        keys = table_keys, nkeys = NTABLE_KEYS, obj = t;
    } else if (!strcmp(section, "model") && ps_config_key_find(dense_keys, NKEYS(dense_keys), name)) {
        keys = dense_keys, nkeys = NKEYS(dense_keys), obj = &cfg->dense;
    } else if (is_worker_section(section) || (st->ext && st->ext->owns(section))) {
        if (!st->ext)
            return 1;
        if (st->ext->set(cfg, section, name, value, reason, sizeof(reason)) < 0)
            return fail(st, section, name, reason);
        return 1;
    } else {
        return fail(st, section, NULL, "unknown section");
    }
    const ps_config_key *k;
    if (ps_config_key_set(keys, nkeys, obj, name, value, &k, reason, sizeof(reason)) < 0)
        return fail(st, section, name, reason);
    if (t && k->scope)
        st->tkeys[t - cfg->tables].line_of[k - table_keys] = st->line;
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
        unsigned bit = 1u << t->opt.kind;
        for (size_t k = 0; k < NTABLE_KEYS; k++) {
            int line = st->tkeys[i].line_of[k];
            if (line && table_keys[k].scope && !(table_keys[k].scope & bit)) {
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
    ps_config_keys_free(cluster_keys, NKEYS(cluster_keys), cfg);
    for (uint32_t i = 0; i < cfg->ntables; i++)
        ps_config_keys_free(table_keys, NTABLE_KEYS, &cfg->tables[i]);
    free(cfg->tables);
    if (cfg->worker && cfg->worker_free)
        cfg->worker_free(cfg->worker);
    free(cfg);
}

/* The keys of one section; scope: the optimizer bit of a table, 0 else. */
static int describe_keys(const ps_config_key *keys, size_t n, const void *obj, unsigned scope,
                         const char *section, ps_config_visit_fn fn, void *ctx) {
    char value[8192];
    for (size_t i = 0; i < n; i++) {
        const ps_config_key *k = &keys[i];
        if (k->scope && !(k->scope & scope))
            continue;
        int r = ps_config_key_format(k, obj, value, sizeof(value));
        if (r == PS_ECONFIG && k->parse == set_durability) {
            const ps_server_config *s = obj;
            if (s->durability == PS_DURABILITY_SYNC)
                snprintf(value, sizeof(value), "sync");
            else
                snprintf(value, sizeof(value), "interval=%u", s->interval_ms);
            r = 0;
        }
        if (r == -ERANGE)
            continue;
        if (r < 0)
            return r;
        if ((r = fn(ctx, section, k->name, value)) != 0)
            return r;
    }
    return 0;
}

int ps_config_describe(const ps_config *cfg, ps_config_visit_fn fn, void *ctx) {
    int r = describe_keys(cluster_keys, NKEYS(cluster_keys), cfg, 0, "cluster", fn, ctx);
    if (r == 0)
        r = describe_keys(server_keys, NKEYS(server_keys), &cfg->server, 0, "server", fn, ctx);
    for (uint32_t i = 0; i < cfg->ntables && r == 0; i++) {
        const ps_table_config *t = &cfg->tables[i];
        char section[PS_NAME_MAX + 8];
        snprintf(section, sizeof(section), "table.%s", t->name);
        r = describe_keys(table_keys, NTABLE_KEYS, t, 1u << t->opt.kind, section, fn, ctx);
    }
    if (r == 0)
        r = describe_keys(dense_keys, NKEYS(dense_keys), &cfg->dense, 0, "model", fn, ctx);
    return r;
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
