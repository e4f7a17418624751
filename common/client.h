#pragma once
/* The sharded RPC client used by the worker, the CLI and the benchmarks.
 *
 * A client owns one I/O thread running a libuv loop with one connection per
 * shard. A call (pull, push, lookup) is split by the caller's thread into one
 * request per shard that owns some of its keys (bucket routing as in
 * common/keys.h); the parts are sent in parallel, and the I/O thread merges
 * each answer into the caller's arrays at the keys' original positions. The
 * caller starts calls without blocking and waits on them when it needs the
 * result, so it can keep many in flight (the worker overlaps the next
 * batch's pull with the current batch's compute).
 *
 * Routing follows the cluster map (common/cmap.h). The client starts with
 * the config's even split; a WRONG_SHARD answer carrying a newer epoch makes
 * it fetch that shard's map and resend the refused keys to their owners,
 * without failing the call (pushes keep their sequence numbers). Dense
 * blocks stay on their home shard of the config.
 *
 * Failures. A dropped connection is re-established with exponential backoff
 * (50 ms doubling to 2 s, with jitter), and every request not yet answered
 * on it is sent again in its original order. Pushes carry the client's id
 * and a sequence number, so the shard applies a resent push at most once.
 *
 * Without outage_timeout_ms, a request that finds no answer within
 * timeout_ms fails with PS_ETIMEOUT and a message naming the shard and the
 * last connection error; an answer with an error status fails it at once.
 *
 * With outage_timeout_ms (riding out outages), timeout_ms is the deadline of
 * one attempt: a shard that refuses the connection, drops it, leaves a sent
 * request unanswered for timeout_ms, or answers READ_ONLY is in an outage.
 * Its connection is dropped and retried with the backoff; every request
 * waiting for it is resent in order (pushes with their sequence numbers)
 * once it answers again. The outage ends with the first answer that is not
 * READ_ONLY; when it has lasted outage_timeout_ms, every request waiting for
 * the shard fails with PS_ETIMEOUT naming the shard and the last error. The
 * on_outage callback reports the outage as it starts, every
 * PS_CLIENT_OUTAGE_REPORT_MS while it lasts or when its error changes, and
 * when it ends.
 * Limit: a READ_ONLY refusal of one push while later pushes of this client
 * are already on the wire is safe only if the shard stays read-only while
 * it reads them (it does unless its store recovers within that instant): a
 * later push applied first would make the shard discard the resent one as
 * already applied. The worker with max_in_flight = 0 has one push on the
 * wire at a time.
 *
 * Thread safety: calls may be started from any thread; a given ps_call is
 * waited on by one thread. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cmap.h"
#include "config.h"
#include "tablestats.h"

typedef struct ps_client ps_client;
typedef struct ps_call ps_call;

#define PS_CLIENT_OUTAGE_REPORT_MS 5000

/* An outage of one shard as reported to ps_client_options.on_outage. */
typedef struct ps_client_outage {
    uint32_t shard;
    const char *addr;            /* "host:port" */
    uint64_t elapsed_ms;         /* since the outage began */
    const char *why;             /* the last error */
    bool over;                   /* the shard answers again */
} ps_client_outage;

/* Called on the client's I/O thread: must not block or call the client. */
typedef void (*ps_client_outage_fn)(void *ctx, const ps_client_outage *o);

/* What the connections do (resolving, connecting, going down), one line per
 * event without a newline, for a daemon's debug log. Called on the client's
 * I/O thread: must not block or call the client. msg is borrowed until the
 * callback returns. */
typedef void (*ps_client_event_fn)(void *ctx, const char *msg);

typedef struct ps_client_options {
    const ps_config *cfg;        /* borrowed for the client's life: shards, buckets */
    const char *name;            /* sent in Hello, for server logs */
    uint64_t client_id;          /* 0 = random; identifies this pusher to the shards */
    uint32_t timeout_ms;         /* per request, reconnects included; 0 = 30 s */
    uint32_t max_frame_bytes;    /* largest response accepted; 0 = [server] max_frame_bytes */
    uint64_t outage_timeout_ms;  /* 0 = fail at timeout_ms; else ride out outages this long */
    ps_client_outage_fn on_outage;  /* optional */
    void *on_outage_ctx;
    /* Optional: the latency of every successful pull (sparse or dense) and
     * push, from submission to the last shard's answer (common/promtext.h). */
    struct ps_prom_histogram *pull_latency, *push_latency;
    ps_client_event_fn on_event;    /* optional */
    void *on_event_ctx;
} ps_client_options;

typedef struct ps_client_counters {
    uint64_t requests, reconnects, resent, timeouts;
    uint64_t outages;            /* outages begun (riding out only) */
    uint64_t rerouted;           /* parts split again after WRONG_SHARD */
    uint64_t map_fetches;        /* newer cluster maps asked for */
    uint64_t moving_waits;       /* parts paused because their buckets were moving */
    uint64_t map_version;        /* epoch of the map the client routes by */
} ps_client_counters;

int ps_client_new(const ps_client_options *opts, ps_client **ret_client, char *err, size_t errlen);
/* Waits for nothing: calls still in flight fail with PS_ECLOSED. */
void ps_client_free(ps_client *c);

/* For a process whose main work is moving large frames through a client
 * (ctrps-cli's move and reshard, the benchmarks): freed memory stays with
 * the process for the next frame, where glibc's default hands blocks of
 * about a frame back to the kernel and takes them again, faulting every
 * page in: a move's relay spent 0.45 s of CPU per 1M rows so, 0.14 s
 * after this (bench/README.md). Process-wide (mallopt): call once, early,
 * from main(); not for long-running processes with other large
 * allocations. */
void ps_client_keep_freed_memory(void);
uint64_t ps_client_id(const ps_client *c);
/* The id of the latest checkpoint barrier any shard announced in a response
 * ("" if none yet); it stays after the barrier ends (common/checkpoint.h). */
void ps_client_checkpoint_pending(ps_client *c, char *ret, size_t len);
void ps_client_counters_get(ps_client *c, ps_client_counters *ret);
/* Connections past Hello now, and in *ret_total the shards of the current
 * cluster map (any thread). */
uint32_t ps_client_shards_ready(ps_client *c, uint32_t *ret_total);

/* Start a Pull of n keys of a table of dimension dim; ret_values (n * dim)
 * is written by the I/O thread and must stay valid until ps_call_wait(). */
int ps_client_pull_start(ps_client *c, const char *table, uint32_t dim, const uint64_t *keys,
                         size_t n, float *ret_values, ps_call **ret_call);
/* Start a Push; keys and grads are copied before this returns. */
int ps_client_push_start(ps_client *c, const char *table, uint32_t dim, const uint64_t *keys,
                         size_t n, const float *grads, ps_call **ret_call);
/* Start a Lookup. ret_found (n), ret_values (n * dim) and, when not NULL,
 * ret_state (n * state_width) must stay valid until ps_call_wait(). */
int ps_client_lookup_start(ps_client *c, const char *table, uint32_t dim, uint32_t state_width,
                           const uint64_t *keys, size_t n, uint8_t *ret_found, float *ret_values,
                           float *ret_state, ps_call **ret_call);

/* Block until the call is answered by every shard involved; free it. Returns
 * 0 or the first error, with a one-line message in err. */
int ps_call_wait(ps_call *call, char *err, size_t errlen);
bool ps_call_done(ps_call *call);
/* Push results, valid before ps_call_wait() frees the call. */
void ps_call_push_result(ps_call *call, uint64_t *ret_applied, uint64_t *ret_dropped);

/* Blocking conveniences. */
int ps_client_pull(ps_client *c, const char *table, uint32_t dim, const uint64_t *keys, size_t n,
                   float *ret_values, char *err, size_t errlen);
int ps_client_push(ps_client *c, const char *table, uint32_t dim, const uint64_t *keys, size_t n,
                   const float *grads, uint64_t *ret_applied, uint64_t *ret_dropped, char *err,
                   size_t errlen);
int ps_client_lookup(ps_client *c, const char *table, uint32_t dim, uint32_t state_width,
                     const uint64_t *keys, size_t n, uint8_t *ret_found, float *ret_values,
                     float *ret_state, char *err, size_t errlen);

/* Dense parameter blocks, each on its home shard (ps_dense_home). */
typedef struct ps_dense_block {
    const char *name;            /* borrowed */
    float *values;               /* len floats, caller's */
    size_t len;
} ps_dense_block;

/* Read blocks into their values. With create, a missing block is created
 * from the values passed in (the worker's deterministic initialisation) and
 * the server's values (possibly another worker's) are read back. */
int ps_client_dense_pull(ps_client *c, ps_dense_block *blocks, size_t n, bool create, char *err,
                         size_t errlen);
/* Non-blocking ps_client_dense_pull(..., create = false): blocks and their
 * values must stay valid until ps_call_wait(). */
int ps_client_dense_pull_start(ps_client *c, ps_dense_block *blocks, size_t n, ps_call **ret_call);
/* Start one Adam step per block with the gradients in values (copied before
 * this returns); sequenced for exactly-once like sparse pushes. */
int ps_client_dense_push_start(ps_client *c, const ps_dense_block *grads, size_t n,
                               ps_call **ret_call);

/* ---- Calls to one shard (methods not split by key) -----------------------------
 *
 * Each blocks until the shard answers. A non-OK status, or an answer that
 * holds another result than the one asked for, is returned as an error with
 * a message in err, and *ret_* is left untouched. On success every pointer
 * in *ret_* is owned by it and freed by its _deinit(), which also accepts a
 * zeroed struct. Request pointers are borrowed for the call only. */

typedef struct ps_counter {
    char *name;                  /* owned by the ps_shard_stats */
    uint64_t value;
} ps_counter;

typedef struct ps_named_table_stats {
    char *name;                  /* owned by the ps_shard_stats */
    ps_table_stats stats;
} ps_named_table_stats;

typedef struct ps_shard_stats {
    uint32_t shard_id;
    uint64_t rocksdb_bytes;
    uint64_t rocksdb_pending_compaction_bytes;  /* both 0 once compaction has settled */
    uint32_t rocksdb_running_compactions;
    char *durability;            /* owned: "sync" or "interval" */
    char *store_error;           /* owned: "" unless the store is read-only */
    ps_named_table_stats *tables;  /* owned, ntables */
    size_t ntables;
    ps_counter *counters;        /* owned, ncounters */
    size_t ncounters;
} ps_shard_stats;

int ps_client_stats(ps_client *c, uint32_t shard, ps_shard_stats *ret_stats, char *err,
                    size_t errlen);
void ps_shard_stats_deinit(ps_shard_stats *s);

/* Export walks a table one page at a time in store order. The cursor is
 * opaque: start from a zeroed one; each page moves it past its rows. */
#define PS_EXPORT_CURSOR_MAX 16

typedef struct ps_export_cursor {
    uint8_t b[PS_EXPORT_CURSOR_MAX];
    size_t len;                  /* 0 = the beginning */
} ps_export_cursor;

typedef struct ps_export_page {
    size_t n;                    /* rows in this page */
    uint64_t *keys;              /* owned, n */
    uint32_t dim;
    float *values;               /* owned, n * dim */
    uint32_t state_dim;          /* with_state: floats of optimizer state per row */
    float *state;                /* owned, n * state_dim; NULL without with_state */
    bool done;                   /* no rows after this page */
} ps_export_page;

/* One page of at most limit rows (0 = the server's default) of table on one
 * shard, after *cursor; on success *cursor moves past the page. */
int ps_client_export_page(ps_client *c, uint32_t shard, const char *table, uint32_t limit,
                          bool with_state, ps_export_cursor *cursor, ps_export_page *ret_page,
                          char *err, size_t errlen);
void ps_export_page_deinit(ps_export_page *p);

/* The bucket map as one shard holds it (common/cmap.h). */
int ps_client_cluster_map(ps_client *c, uint32_t shard, ps_cluster_map *ret_map, char *err,
                          size_t errlen);
/* Route by m (copied) from now on if it is newer than the client's map:
 * its shards get connections. Returns once the client took it. */
int ps_client_offer_map(ps_client *c, const ps_cluster_map *m);

/* Have one shard store and serve `map` (borrowed for the call); it refuses
 * a map not newer than its own unless identical. ret_map may be NULL; else
 * it receives the map the shard holds afterwards. */
int ps_client_install_map(ps_client *c, uint32_t shard, const ps_cluster_map *map,
                          ps_cluster_map *ret_map, char *err, size_t errlen);

/* Checkpoint barrier phases (common/checkpoint.h tells the protocol). */
typedef enum ps_checkpoint_phase {
    PS_CHECKPOINT_STATUS,
    PS_CHECKPOINT_BEGIN,
    PS_CHECKPOINT_REPORT,
    PS_CHECKPOINT_TAKE,
    PS_CHECKPOINT_END,
} ps_checkpoint_phase;

typedef struct ps_checkpoint_request {
    ps_checkpoint_phase phase;
    const char *id;              /* the checkpoint's name */
    const char *dir;             /* TAKE: where the shard writes its copy; NULL = "" */
    uint64_t client_id;          /* REPORT */
    const char *worker;          /* REPORT: the worker's name; NULL = "" */
    const char *position;        /* REPORT: its input position; NULL = "" */
} ps_checkpoint_request;

typedef struct ps_worker_report {
    uint64_t client_id;
    char *worker;                /* owned by the ps_checkpoint_reply */
    char *position;              /* owned by the ps_checkpoint_reply */
} ps_worker_report;

/* Every phase answers with the state of the barrier on that shard. */
typedef struct ps_checkpoint_reply {
    char *pending;               /* owned: the checkpoint in progress, "" if none */
    uint64_t *connected_workers; /* owned, nconnected: client ids of workers connected now */
    size_t nconnected;
    ps_worker_report *reports;   /* owned, nreports: shard 0's reports for `pending` */
    size_t nreports;
    char *path;                  /* owned: TAKE, the copy's directory ("" otherwise) */
    uint64_t flushed_lsn;        /* TAKE: push-log position the copy includes */
} ps_checkpoint_reply;

/* ret_reply may be NULL when only success matters. */
int ps_client_checkpoint(ps_client *c, uint32_t shard, const ps_checkpoint_request *req,
                         ps_checkpoint_reply *ret_reply, char *err, size_t errlen);
void ps_checkpoint_reply_deinit(ps_checkpoint_reply *r);
