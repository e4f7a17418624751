#pragma once
/* Cluster, server, table, input and model configuration: one INI file read
 * with libinih, shared by every binary.
 *
 * Parsing is strict: an unknown section or key, a value that does not parse,
 * or a value out of range fails the load with "FILE:LINE: key 'k': reason" in
 * the caller's error buffer. Defaults are the ones ALGORITHMS.md and
 * DESIGN.md give. Keys that do not apply to a table's optimizer (say `lr` on
 * an FTRL table) are rejected too, since a silently ignored hyper-parameter
 * is a tuning bug nobody sees. Every section, here and in the worker's
 * extension, is a key table (config_key.h). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "optim_layout.h"

#define PS_NAME_MAX 64
#define PS_PATH_MAX 1024

typedef enum { PS_INIT_ZERO, PS_INIT_NORMAL } ps_init_kind;
typedef enum { PS_DURABILITY_SYNC, PS_DURABILITY_INTERVAL } ps_durability;
typedef enum { PS_FSYNC_ALWAYS, PS_FSYNC_EVERYSEC, PS_FSYNC_NO } ps_fsync_policy;

typedef struct ps_table_config {
    char name[PS_NAME_MAX];
    uint32_t dim;
    ps_optim_params opt;
    ps_init_kind init;
    double init_std;
    uint64_t seed;               /* w_init = f(seed, key) */
    uint64_t memory_rows;        /* 0 = share of [server] memory_mb */
    char **slots;                /* owned */
    size_t nslots;
    /* Feature lifecycle (DESIGN.md "Feature lifecycle"; server/admit.h and
     * server/table.c hold the rules). A key without a row is created by a
     * push only once admission lets it in: on its admit_after-th push, as
     * counted by a counting Bloom filter of admit_bloom_bits 4-bit counters
     * (so admit_after <= 15), and then with probability admit_probability
     * (Poisson inclusion, KDD'13 §4.1). A row dies when it was not pushed for
     * ttl_s seconds, or when a push leaves its weights with an L2 norm
     * <= expire_below (which also forgets FTRL's z and n: opt-in). */
    double admit_probability;    /* 1 = admit every new key (default) */
    uint32_t admit_after;        /* 0 or 1 = on the first push (default) */
    uint64_t admit_bloom_bits;   /* counters of the filter (default 2^24: 8 MiB) */
    uint32_t ttl_s;              /* 0 = rows never expire (default) */
    double expire_below;         /* 0 = off (default) */
} ps_table_config;

/* RocksDB sizes a shard uses unless [server] says otherwise; the store
 * falls back to them too when opened with no options (bench, tools). */
#define PS_DEFAULT_BLOCK_CACHE_MB 256
#define PS_DEFAULT_WRITE_BUFFER_MB 16

typedef struct ps_server_config {
    ps_durability durability;
    uint32_t interval_ms;        /* durability = interval=MS */
    ps_fsync_policy fsync;
    char data_dir[PS_PATH_MAX];
    /* Listen host (a name, IPv4, or [IPv6]; "0.0.0.0" or "[::]" for every
     * interface); the port comes from [cluster] shards. Empty (the default):
     * the host of this shard's own entry there, so a shard listens on the
     * address its clients are told. */
    char bind[PS_NAME_MAX];
    uint64_t memory_mb;          /* memory-tier budget for all tables */
    uint64_t block_cache_mb;     /* RocksDB block cache (256) */
    uint64_t write_buffer_mb;    /* RocksDB memtable size per column family (16; up to 2 live) */
    uint32_t flush_interval_ms;  /* write-back cadence in sync mode */
    uint64_t flush_dirty_rows;   /* ... or earlier once this many rows are dirty */
    uint64_t max_frame_bytes;
    uint64_t max_keys_per_request;
    uint32_t max_inflight_per_conn;
    uint32_t max_connections;
    uint32_t idle_timeout_s;     /* 0 = never */
    uint64_t max_pending_reply_bytes;
    uint64_t max_dense_floats;   /* all dense blocks of a shard together */
    char auth_secret_file[PS_PATH_MAX];
    char metrics_listen[PS_NAME_MAX]; /* host:port for Prometheus text; empty = off */
} ps_server_config;

/* The dense-parameter optimizer, applied by the shards ([model] keys that
 * servers read too; every other [model] key belongs to the worker). */
typedef enum { PS_DENSE_ADAM } ps_dense_optimizer;

typedef struct ps_dense_config {
    ps_dense_optimizer optimizer; /* dense_optimizer: adam, the only one */
    double lr;                   /* dense_lr, default 0.001 */
    double beta1, beta2, eps;    /* adam_beta1 0.9, adam_beta2 0.999, adam_eps 1e-8 */
} ps_dense_config;

typedef struct ps_config {
    char path[PS_PATH_MAX];
    char **shards;               /* host:port, owned */
    uint32_t nshards;
    uint32_t buckets;
    uint64_t map_version;
    char checkpoint_dir[PS_PATH_MAX];  /* periodic checkpoints go here */
    uint32_t checkpoint_interval_s;    /* 0 = none; shard 0 coordinates them */
    uint32_t checkpoint_retention;     /* newest checkpoints kept (default 5) */
    uint32_t checkpoint_wait_s;        /* how long a barrier waits for workers (600) */
    ps_server_config server;
    ps_table_config *tables;     /* owned */
    uint32_t ntables;
    ps_dense_config dense;
    /* Sections a binary does not use are still validated by every binary, so
     * one file serves the whole cluster; the worker owns their meaning. */
    void *worker;                /* owned by the extension that parsed it */
    void (*worker_free)(void *worker);
} ps_config;

/* Extension point for sections parsed by another layer ([input], [model],
 * [worker]): the worker registers one before loading. */
typedef struct ps_config_ext {
    /* Return true if `section` belongs to this extension. */
    bool (*owns)(const char *section);
    /* Parse one key; write a reason to err and return < 0 when rejected. */
    int (*set)(ps_config *cfg, const char *section, const char *key, const char *value,
               char *err, size_t errlen);
    /* Called once after the whole file was read; may reject combinations. */
    int (*finish)(ps_config *cfg, char *err, size_t errlen);
    void (*free)(void *worker);
} ps_config_ext;

/* Load and validate `path`. On failure returns PS_ECONFIG (or -errno when the
 * file cannot be read) and writes a one-line message naming the file, line
 * and key to err. `ext` may be NULL: then [input], [model] and [worker] are
 * accepted without checking their keys (the worker validates them). On
 * success *ret_cfg is owned by the caller: free it with ps_config_free(). */
int ps_config_load(const char *path, const ps_config_ext *ext, ps_config **ret_cfg, char *err,
                   size_t errlen);
void ps_config_free(ps_config *cfg);

/* Every key of the sections this layer parses, with its effective value
 * (defaults included) as text the file could hold (ps_config_key_format):
 * [cluster], [server], each [table.NAME] (the keys of its optimizer; a key
 * whose default no file can hold, accum_max = infinity, is left out) and
 * the dense keys of [model]. The extension's sections ([input], [model],
 * [worker]) are not described. Stops at the first non-zero return of fn. */
typedef int (*ps_config_visit_fn)(void *ctx, const char *section, const char *key,
                                  const char *value);
int ps_config_describe(const ps_config *cfg, ps_config_visit_fn fn, void *ctx);

const ps_table_config *ps_config_table(const ps_config *cfg, const char *name);
/* The table a slot (by name) maps to, or NULL. */
const ps_table_config *ps_config_slot_table(const ps_config *cfg, const char *slot);

/* Parse "HOST:PORT": HOST is a DNS name, an IPv4 literal, or an IPv6
 * literal in brackets ("[::1]:7101"; *ret_host gets it without them). Only
 * the syntax is checked: names are resolved where they are used
 * (common/addr.h), again at every connection. PS_EPARSE for anything else,
 * a bare IPv6 literal and a host longer than hostlen - 1 included. */
int ps_parse_hostport(const char *s, char *ret_host, size_t hostlen, int *ret_port);
/* Parse a HOST alone (as in [server] bind), with the same rules. */
int ps_parse_host(const char *s, char *ret_host, size_t hostlen);

/* Strict number parsers used by every command line and config reader:
 * the whole string must parse, and must be finite / in range. */
int ps_parse_double(const char *s, double *ret);
int ps_parse_u64(const char *s, uint64_t *ret);
