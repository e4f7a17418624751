#include "service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "barrier.h"
#include "ctrps.pb-c.h"
#include "error.h"
#include "frame.h"
#include "keys.h"
#include "log.h"
#include "pbarena.h"
#include "promtext.h"
#include "rpc.h"
#include "wire.h"

#define EXPORT_PAGE_MAX 65536
#define STATUS_COUNT 16

/* Requests a connection may send before authenticating, all refused, before
 * it is closed: a client that mishandles the handshake learns its mistake,
 * a scanner learns nothing and cannot linger. */
#define MAX_REFUSED 3

struct ps_service {
    ps_shard *shard;
    ps_barrier *barrier;         /* owned: checkpoint barrier and connected workers */
    ps_auth_secret secret;
    uint64_t auth_failures, unauthenticated_refused;
    const ps_config *cfg;
    ps_service_extra_counters_fn extra;
    void *extra_ctx;
    uint64_t requests[PS_METHOD_COUNT];
    uint64_t statuses[STATUS_COUNT];
    uint64_t bad_frames;
    ps_prom_histogram latency[PS_METHOD_COUNT];  /* handling time, per method */
    ps_pbarena arena;            /* the request protobuf-c decodes, until it is answered */
};

/* The arena keeps this much between requests: a move's IMPORT pages. */
#define ARENA_KEEP (8u << 20)

/* Everything one response borrows until it is packed. */
typedef struct reply {
    Ctrps__Response resp;
    union {
        Ctrps__HelloResponse hello;
        Ctrps__PullResponse pull;
        Ctrps__PushResponse push;
        Ctrps__LookupResponse lookup;
        Ctrps__StatsResponse stats;
        Ctrps__ClusterMapResponse cluster_map;
        Ctrps__ExportResponse export;
        Ctrps__DensePullResponse dense_pull;
        Ctrps__DensePushResponse dense_push;
        Ctrps__CheckpointResponse checkpoint;
        Ctrps__MoveResponse move;
    } u;
    void **owned;                /* owned, and each entry too: freed after packing */
    size_t nowned, owned_cap;
    ps_buf *out;                 /* where the response frame goes */
    bool written;                /* the method wrote its frame into out itself */
    bool push_ack;
    bool close;
    char err[512];
} reply;

/* Keep p until the reply is packed. NULL if p is NULL or cannot be kept (then
 * p is freed): callers treat both as -ENOMEM. */
static void *own(reply *rp, void *p) {
    if (!p)
        return NULL;
    if (rp->nowned == rp->owned_cap) {
        size_t cap = rp->owned_cap ? 2 * rp->owned_cap : 8;
        void **g = realloc(rp->owned, cap * sizeof(*g));
        if (!g) {
            free(p);
            return NULL;
        }
        rp->owned = g;
        rp->owned_cap = cap;
    }
    rp->owned[rp->nowned++] = p;
    return p;
}

int ps_service_new(ps_shard *shard, const ps_auth_secret *secret, ps_service **ret_service) {
    ps_service *svc = calloc(1, sizeof(*svc));
    if (!svc)
        return -ENOMEM;
    svc->shard = shard;
    int r = ps_barrier_new(shard, &svc->barrier);
    if (r < 0) {
        free(svc);
        return r;
    }
    if (secret)
        svc->secret = *secret;
    svc->cfg = ps_shard_config(shard);
    ps_pbarena_init(&svc->arena, ARENA_KEEP);
    *ret_service = svc;
    return 0;
}

void ps_service_free(ps_service *svc) {
    if (!svc)
        return;
    ps_auth_wipe(&svc->secret);
    ps_barrier_free(svc->barrier);
    ps_pbarena_deinit(&svc->arena);
    free(svc);
}

void ps_service_session_init(ps_service *svc, ps_session *sess) {
    memset(sess, 0, sizeof(*sess));
    sess->authenticated = svc->secret.len == 0;
}

void ps_service_session_deinit(ps_service *svc, ps_session *sess) {
    ps_barrier_gone(svc->barrier, sess);
    free(sess->scratch);
    sess->scratch = NULL;
    sess->scratch_cap = 0;
}

void ps_service_set_extra_counters(ps_service *svc, ps_service_extra_counters_fn fn, void *ctx) {
    svc->extra = fn;
    svc->extra_ctx = ctx;
}

void ps_service_totals(const ps_service *svc, uint64_t *ret_requests, uint64_t *ret_errors) {
    uint64_t req = 0, errs = 0;
    for (int i = 0; i < PS_METHOD_COUNT; i++)
        req += svc->requests[i];
    for (int i = 1; i < STATUS_COUNT; i++)
        errs += svc->statuses[i];
    *ret_requests = req;
    *ret_errors = errs;
}

/* ---- shared checks ---------------------------------------------------------- */

static int check_keys(ps_service *svc, size_t n, reply *rp) {
    uint64_t max = svc->cfg->server.max_keys_per_request;
    if (n > max) {
        snprintf(rp->err, sizeof(rp->err), "%zu keys exceed max_keys_per_request = %llu", n,
                 (unsigned long long)max);
        return PS_ELIMIT;
    }
    return 0;
}

static int find_table(ps_service *svc, const char *name, ps_table **ret, reply *rp) {
    ps_table *t = name ? ps_shard_table(svc->shard, name) : NULL;
    if (!t) {
        snprintf(rp->err, sizeof(rp->err), "unknown table '%.64s'", name ? name : "");
        return PS_EUNKNOWN_TABLE;
    }
    *ret = t;
    return 0;
}

static int check_owned(ps_service *svc, const uint64_t *keys, size_t n, reply *rp) {
    if (ps_shard_owns_all(svc->shard, keys, n))
        return 0;
    uint64_t epoch = ps_shard_map(svc->shard)->version;
    snprintf(rp->err, sizeof(rp->err), "keys of buckets not owned by shard %u (map version %llu)",
             ps_shard_id(svc->shard), (unsigned long long)epoch);
    rp->resp.map_version = epoch;
    return PS_EWRONG_SHARD;
}

/* Pulls (which create rows) and pushes of a range being moved wait until
 * the move is over: the client retries MOVING. */
static int check_not_moving(ps_service *svc, const uint64_t *keys, size_t n, reply *rp) {
    uint32_t lo, hi;
    if (!ps_shard_touches_frozen(svc->shard, keys, n) || !ps_shard_frozen(svc->shard, &lo, &hi))
        return 0;
    snprintf(rp->err, sizeof(rp->err), "buckets %u-%u are moving to another shard", lo, hi - 1);
    return PS_EMOVING;
}

/* Table, key count and ownership: the checks every keyed method shares. */
static int check_keyed(ps_service *svc, const char *table, const uint64_t *keys, size_t n,
                       ps_table **ret, reply *rp) {
    int r = find_table(svc, table, ret, rp);
    if (r == 0)
        r = check_keys(svc, n, rp);
    if (r == 0)
        r = check_owned(svc, keys, n, rp);
    return r;
}

/* ---- methods --------------------------------------------------------------- */

static int do_hello(ps_service *svc, ps_session *sess, const Ctrps__HelloRequest *req, reply *rp) {
    if (req->protocol_version != PS_PROTOCOL_VERSION) {
        snprintf(rp->err, sizeof(rp->err), "protocol version %u not supported (server speaks %u)",
                 req->protocol_version, PS_PROTOCOL_VERSION);
        return PS_EPROTO;
    }
    Ctrps__HelloResponse *h = &rp->u.hello;
    ctrps__hello_response__init(h);
    if (!sess->authenticated) {
        if (req->auth_response.len == 0) {
            /* Round one: a fresh challenge, and nothing else. */
            ps_auth_nonce(sess->challenge);
            sess->has_challenge = true;
            h->protocol_version = PS_PROTOCOL_VERSION;
            h->auth_challenge.data = sess->challenge;
            h->auth_challenge.len = PS_AUTH_NONCE;
            rp->resp.result_case = CTRPS__RESPONSE__RESULT_HELLO;
            rp->resp.hello = h;
            return 0;
        }
        bool had = sess->has_challenge;
        sess->has_challenge = false; /* one answer per challenge */
        if (!had || req->client_nonce.len != PS_AUTH_NONCE ||
            !ps_auth_check(&svc->secret, sess->challenge, req->client_nonce.data, req->client_id,
                           req->auth_response.data, req->auth_response.len)) {
            svc->auth_failures++;
            rp->close = true;
            snprintf(rp->err, sizeof(rp->err), "authentication failed%s",
                     had ? "" : ": no challenge outstanding (send Hello without a response first)");
            return PS_EAUTH;
        }
        sess->authenticated = true;
    }
    int r = ps_barrier_hello(svc->barrier, sess, req->client_id, req->client_name);
    if (r < 0)
        return r;
    sess->hello_done = true;
    sess->client_id = req->client_id;
    snprintf(sess->client_name, sizeof(sess->client_name), "%s", req->client_name ? req->client_name : "");
    h->protocol_version = PS_PROTOCOL_VERSION;
    h->shard_id = ps_shard_id(svc->shard);
    h->map_version = ps_shard_map(svc->shard)->version;
    h->authenticated = true;
    h->last_push_seq = req->client_id ? ps_shard_client_seq(svc->shard, req->client_id) : 0;
    rp->resp.result_case = CTRPS__RESPONSE__RESULT_HELLO;
    rp->resp.hello = h;
    return 0;
}

static int do_pull(ps_service *svc, ps_session *sess, const Ctrps__PullRequest *req, reply *rp) {
    (void)sess;
    ps_table *t;
    int r = check_keyed(svc, req->table, req->keys, req->n_keys, &t, rp);
    if (r == 0)
        r = check_not_moving(svc, req->keys, req->n_keys, rp);
    if (r < 0)
        return r;
    /* The rows go straight into the reply frame: no array to pack. The
     * barrier's pending checkpoint is read as ps_service_handle() would
     * read it for a packed reply (a Pull cannot change it). */
    uint32_t dim = ps_table_dim(t);
    float *values;
    size_t len;
    r = ps_wire_pull_reply_reserve(rp->out, rp->resp.id, ps_barrier_pending(svc->barrier), dim,
                                   req->n_keys * dim, &values, &len);
    if (r < 0)
        return r;
    r = ps_table_pull(t, req->keys, req->n_keys, values, rp->err, sizeof(rp->err));
    if (r < 0)
        return r;
    ps_wire_pull_reply_finish(rp->out, values, req->n_keys * dim, len);
    rp->written = true;
    return 0;
}

static int do_push(ps_service *svc, ps_session *sess, const Ctrps__PushRequest *req, reply *rp) {
    ps_table *t;
    int r = check_keyed(svc, req->table, req->keys, req->n_keys, &t, rp);
    if (r == 0)
        r = check_not_moving(svc, req->keys, req->n_keys, rp);
    if (r < 0)
        return r;
    uint32_t dim = ps_table_dim(t);
    if (req->n_grads != req->n_keys * dim) {
        snprintf(rp->err, sizeof(rp->err), "%zu gradient values for %zu keys of table %s (dim %u)",
                 req->n_grads, req->n_keys, req->table, dim);
        return PS_EDIM;
    }
    ps_push_result res;
    r = ps_shard_push(svc->shard, t, req->keys, req->n_keys, req->grads, req->client_id, req->seq,
                      &res, rp->err, sizeof(rp->err));
    if (r < 0)
        return r;
    sess->pause_ms = ps_shard_throttle_ms(svc->shard, req->keys, req->n_keys);
    Ctrps__PushResponse *p = &rp->u.push;
    ctrps__push_response__init(p);
    p->applied = res.applied;
    p->dropped_nonfinite = res.dropped_nonfinite;
    p->rejected = res.rejected;
    p->already_applied = res.already_applied;
    rp->resp.result_case = CTRPS__RESPONSE__RESULT_PUSH;
    rp->resp.push = p;
    rp->push_ack = !res.already_applied;
    return 0;
}

static int do_lookup(ps_service *svc, ps_session *sess, const Ctrps__LookupRequest *req, reply *rp) {
    (void)sess;
    ps_table *t;
    int r = check_keyed(svc, req->table, req->keys, req->n_keys, &t, rp);
    if (r < 0)
        return r;
    size_t n = req->n_keys;
    uint32_t dim = ps_table_dim(t), width = ps_table_state_width(t);
    float *values = own(rp, malloc(n * dim * sizeof(float) + 1));
    uint8_t *found8 = own(rp, malloc(n + 1));
    protobuf_c_boolean *found = own(rp, malloc(n * sizeof(protobuf_c_boolean) + 1));
    float *state = req->with_state ? own(rp, malloc(n * width * sizeof(float) + 1)) : NULL;
    if (!values || !found8 || !found || (req->with_state && !state))
        return -ENOMEM;
    r = ps_table_lookup(t, req->keys, n, found8, values, state, rp->err, sizeof(rp->err));
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++)
        found[i] = found8[i];
    Ctrps__LookupResponse *p = &rp->u.lookup;
    ctrps__lookup_response__init(p);
    p->dim = dim;
    p->n_found = n;
    p->found = found;
    p->n_values = n * dim;
    p->values = values;
    if (state) {
        p->state_dim = width;
        p->n_state = n * width;
        p->state = state;
    }
    rp->resp.result_case = CTRPS__RESPONSE__RESULT_LOOKUP;
    rp->resp.lookup = p;
    return 0;
}

typedef struct export_acc {
    uint64_t *keys;
    float *values, *state;
    uint32_t dim, width;
    size_t n;
} export_acc;

static void export_row(void *ctx, uint64_t key, const float *state) {
    export_acc *a = ctx;
    a->keys[a->n] = key;
    memcpy(a->values + a->n * a->dim, state, a->dim * sizeof(float));
    if (a->state)
        memcpy(a->state + a->n * a->width, state, a->width * sizeof(float));
    a->n++;
}

static int do_export(ps_service *svc, ps_session *sess, const Ctrps__ExportRequest *req, reply *rp) {
    (void)sess;
    ps_table *t;
    int r = find_table(svc, req->table, &t, rp);
    if (r < 0)
        return r;
    if (req->after.len != 0 && req->after.len != PS_STORE_KEY_LEN) {
        snprintf(rp->err, sizeof(rp->err), "export cursor must be empty or %d bytes",
                 PS_STORE_KEY_LEN);
        return PS_EPROTO;
    }
    /* A new export sees every row: write back what is only in memory. */
    if (req->after.len == 0) {
        r = ps_shard_flush_sync(svc->shard, rp->err, sizeof(rp->err));
        if (r < 0)
            return r;
    }
    size_t limit = req->limit ? req->limit : 4096;
    if (limit > EXPORT_PAGE_MAX)
        limit = EXPORT_PAGE_MAX;
    export_acc a = {.dim = ps_table_dim(t), .width = ps_table_state_width(t)};
    a.keys = own(rp, malloc(limit * sizeof(uint64_t)));
    a.values = own(rp, malloc(limit * a.dim * sizeof(float)));
    a.state = req->with_state ? own(rp, malloc(limit * a.width * sizeof(float))) : NULL;
    uint8_t *next = own(rp, malloc(PS_STORE_KEY_LEN));
    if (!a.keys || !a.values || !next || (req->with_state && !a.state))
        return -ENOMEM;
    ps_store_key after, last;
    if (req->after.len)
        memcpy(after.b, req->after.data, PS_STORE_KEY_LEN);
    size_t count;
    bool done;
    r = ps_table_export(t, req->after.len ? &after : NULL, limit, export_row, &a, &last, &count,
                        &done);
    if (r < 0) {
        snprintf(rp->err, sizeof(rp->err), "export of table %s: %s", req->table, ps_strerror(r));
        return r;
    }
    Ctrps__ExportResponse *p = &rp->u.export;
    ctrps__export_response__init(p);
    p->n_keys = a.n;
    p->keys = a.keys;
    p->dim = a.dim;
    p->n_values = a.n * a.dim;
    p->values = a.values;
    if (a.state) {
        p->state_dim = a.width;
        p->n_state = a.n * a.width;
        p->state = a.state;
    }
    p->done = done;
    if (count) {
        memcpy(next, last.b, PS_STORE_KEY_LEN);
        p->next.data = next;
        p->next.len = PS_STORE_KEY_LEN;
    } else if (req->after.len) {
        memcpy(next, req->after.data, PS_STORE_KEY_LEN);
        p->next.data = next;
        p->next.len = PS_STORE_KEY_LEN;
    }
    rp->resp.result_case = CTRPS__RESPONSE__RESULT_EXPORT;
    rp->resp.export = p;
    return 0;
}

static int do_cluster_map(ps_service *svc, ps_session *sess, const Ctrps__ClusterMapRequest *req,
                          reply *rp) {
    (void)sess;
    if (req->install) {
        ps_cluster_map m = {0};
        int r = ps_rpc_map_from_wire(req->install, &m, rp->err, sizeof(rp->err));
        if (r == 0)
            r = ps_shard_set_map(svc->shard, &m, rp->err, sizeof(rp->err));
        ps_cluster_map_deinit(&m);
        if (r < 0)
            return r;
    }
    /* Borrowed from the shard: the reply is packed before anything else runs. */
    Ctrps__ClusterMapResponse *m = &rp->u.cluster_map;
    ps_rpc_map_to_wire(ps_shard_map(svc->shard), m);
    rp->resp.result_case = CTRPS__RESPONSE__RESULT_CLUSTER_MAP;
    rp->resp.cluster_map = m;
    return 0;
}

/* Counters for a Stats reply: grown as they come, so none is ever left out;
 * a failed allocation is remembered and fails the reply. */
typedef struct counter_acc {
    Ctrps__Counter *items;       /* owned until handed to the reply */
    size_t n, cap;
    bool failed;
} counter_acc;

static void add_counter(void *acc, const char *name, uint64_t value) {
    counter_acc *a = acc;
    if (a->failed)
        return;
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        Ctrps__Counter *g = realloc(a->items, cap * sizeof(*g));
        if (!g) {
            a->failed = true;
            return;
        }
        a->items = g;
        a->cap = cap;
    }
    Ctrps__Counter *c = &a->items[a->n++];
    ctrps__counter__init(c);
    c->name = (char *)name;
    c->value = value;
}

typedef void (*counter_fn)(void *acc, const char *name, uint64_t value);

/* Every counter of the shard, its service and its network layer, by name.
 * Stats and the metrics endpoint both list them through this. Names are
 * string literals: they outlive any response. */
static void for_each_counter(ps_service *svc, counter_fn add, void *acc) {
#define ADD_METHOD(name, tag) add(acc, "requests_" #name, svc->requests[PS_METHOD_##tag]);
    PS_METHOD_MAP(ADD_METHOD)
#undef ADD_METHOD
    uint64_t errors = 0;
    for (int i = 1; i < STATUS_COUNT; i++)
        errors += svc->statuses[i];
    add(acc, "errors", errors);
    add(acc, "errors_wrong_shard", svc->statuses[CTRPS__STATUS__WRONG_SHARD]);
    add(acc, "errors_unknown_table", svc->statuses[CTRPS__STATUS__UNKNOWN_TABLE]);
    add(acc, "errors_bad_request", svc->statuses[CTRPS__STATUS__BAD_REQUEST]);
    add(acc, "errors_bad_dimension", svc->statuses[CTRPS__STATUS__BAD_DIMENSION]);
    add(acc, "errors_limit_exceeded", svc->statuses[CTRPS__STATUS__LIMIT_EXCEEDED]);
    add(acc, "errors_read_only", svc->statuses[CTRPS__STATUS__READ_ONLY]);
    add(acc, "errors_unauthenticated", svc->statuses[CTRPS__STATUS__UNAUTHENTICATED]);
    add(acc, "errors_internal", svc->statuses[CTRPS__STATUS__INTERNAL]);
    add(acc, "bad_frames", svc->bad_frames);
    add(acc, "auth_failures", svc->auth_failures);
    add(acc, "unauthenticated_refused", svc->unauthenticated_refused);
    ps_shard_counters sc;
    ps_shard_counters_get(svc->shard, &sc);
#define ADD_SHARD(name, metric, help) add(acc, #name, sc.name);
    PS_SHARD_COUNTER_MAP(ADD_SHARD)
#undef ADD_SHARD
    if (svc->extra)
        svc->extra(svc->extra_ctx, add, acc);
}

static const char *const method_names[PS_METHOD_COUNT] = {
#define METHOD_NAME(name, tag) #name,
    PS_METHOD_MAP(METHOD_NAME)
#undef METHOD_NAME
};

/* A status's label value: its enum name in lower case ("wrong_shard"). */
static void status_label(int status, char *ret, size_t len) {
    const char *name = ps_status_name((Ctrps__Status)status);
    size_t i = 0;
    for (; name[i] && i + 1 < len; i++)
        ret[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] - 'A' + 'a' : name[i]);
    ret[i] = 0;
}

int ps_service_metrics(ps_service *svc, ps_prom *p) {
    char labels[256];
    ps_prom_family(p, "ctrps_requests_total", PS_PROM_COUNTER, "requests handled, by method");
    for (int i = 0; i < PS_METHOD_COUNT; i++) {
        ps_prom_labels(labels, sizeof(labels), "method", method_names[i], NULL);
        ps_prom_u64(p, labels, svc->requests[i]);
    }
    ps_prom_family(p, "ctrps_request_duration_seconds", PS_PROM_HISTOGRAM,
                   "time to handle a decoded request until its reply is built, by method");
    for (int i = 0; i < PS_METHOD_COUNT; i++) {
        ps_prom_labels(labels, sizeof(labels), "method", method_names[i], NULL);
        ps_prom_histogram_write(p, labels, &svc->latency[i]);
    }
    ps_prom_family(p, "ctrps_request_errors_total", PS_PROM_COUNTER,
                   "requests answered with an error, by status");
    for (int i = 1; i < STATUS_COUNT; i++) {
        if (!protobuf_c_enum_descriptor_get_value(&ctrps__status__descriptor, i))
            continue;
        char status[64];
        status_label(i, status, sizeof(status));
        ps_prom_labels(labels, sizeof(labels), "status", status, NULL);
        ps_prom_u64(p, labels, svc->statuses[i]);
    }
    ps_prom_scalar(p, "ctrps_bad_frames_total", PS_PROM_COUNTER,
                   "frames that did not decode as a request (connection closed)", (double)svc->bad_frames);
    ps_prom_scalar(p, "ctrps_auth_failures_total", PS_PROM_COUNTER, "failed authentications",
                   (double)svc->auth_failures);
    ps_prom_scalar(p, "ctrps_unauthenticated_refused_total", PS_PROM_COUNTER,
                   "requests refused before authentication", (double)svc->unauthenticated_refused);
    ps_shard_counters sc;
    ps_shard_counters_get(svc->shard, &sc);
#define SHARD_METRIC(name, metric, help) \
    ps_prom_scalar(p, metric, PS_PROM_COUNTER, help, (double)sc.name);
    PS_SHARD_COUNTER_MAP(SHARD_METRIC)
#undef SHARD_METRIC

    /* Per table: each family over every table, families not interleaved. */
    size_t nt = ps_shard_ntables(svc->shard);
    ps_table_stats *st = calloc(nt + 1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    for (size_t i = 0; i < nt; i++)
        ps_table_stats_get(ps_shard_table_at(svc->shard, i), &st[i]);
#define TABLE_METRIC(field, type, metric, help)                                                \
    ps_prom_family(p, metric, PS_PROM_##type, help);                                            \
    for (size_t i = 0; i < nt; i++) {                                                          \
        ps_prom_labels(labels, sizeof(labels), "table",                                        \
                       ps_table_config_of(ps_shard_table_at(svc->shard, i))->name, NULL);      \
        ps_prom_u64(p, labels, st[i].field);                                                   \
    }
    PS_TABLE_STATS_MAP(TABLE_METRIC)
#undef TABLE_METRIC
    free(st);

    ps_prom_scalar(p, "ctrps_rocksdb_bytes", PS_PROM_GAUGE,
                   "RocksDB SST files and memtables of every column family in bytes",
                   (double)ps_shard_store_bytes(svc->shard));
    ps_prom_scalar(p, "ctrps_rocksdb_pending_compaction_bytes", PS_PROM_GAUGE,
                   "bytes RocksDB estimates compaction has to rewrite",
                   (double)ps_shard_pending_compaction_bytes(svc->shard));
    ps_prom_scalar(p, "ctrps_read_only", PS_PROM_GAUGE, "1 while the store refuses writes",
                   ps_shard_read_only(svc->shard) ? 1 : 0);
    ps_prom_scalar(p, "ctrps_checkpoint_pending", PS_PROM_GAUGE,
                   "1 while a checkpoint barrier is announced", ps_barrier_pending(svc->barrier)[0] ? 1 : 0);
    uint32_t flo, fhi;
    ps_prom_scalar(p, "ctrps_move_copying", PS_PROM_GAUGE,
                   "1 while a bucket range is being copied from this shard to another",
                   ps_shard_track_id(svc->shard) ? 1 : 0);
    ps_prom_scalar(p, "ctrps_move_frozen", PS_PROM_GAUGE,
                   "1 while a moving range is frozen here (its pulls and pushes wait)",
                   ps_shard_frozen(svc->shard, &flo, &fhi) ? 1 : 0);
    ps_prom_scalar(p, "ctrps_move_pending_changes", PS_PROM_GAUGE,
                   "rows pushes changed in the range being copied, for its next catch-up round",
                   (double)ps_shard_track_pending(svc->shard));
    return ps_prom_finish(p);
}

static int do_stats(ps_service *svc, ps_session *sess, const Ctrps__StatsRequest *req, reply *rp) {
    (void)sess;
    (void)req;
    size_t nt = ps_shard_ntables(svc->shard);
    Ctrps__TableStats *ts = own(rp, calloc(nt + 1, sizeof(*ts)));
    Ctrps__TableStats **tsp = own(rp, calloc(nt + 1, sizeof(*tsp)));
    if (!ts || !tsp)
        return -ENOMEM;
    for (size_t i = 0; i < nt; i++) {
        ps_table *t = ps_shard_table_at(svc->shard, i);
        ps_table_stats st;
        ps_table_stats_get(t, &st);
        ctrps__table_stats__init(&ts[i]);
        ts[i].name = (char *)ps_table_config_of(t)->name;
#define COPY_STAT(name, type, metric, help) ts[i].name = st.name;
        PS_TABLE_STATS_MAP(COPY_STAT)
#undef COPY_STAT
        tsp[i] = &ts[i];
    }
    counter_acc acc = {0};
    for_each_counter(svc, add_counter, &acc);
    if (acc.failed) {
        free(acc.items);
        return -ENOMEM;
    }
    if (acc.items && !own(rp, acc.items))
        return -ENOMEM;
    Ctrps__Counter **cptrs = own(rp, calloc(acc.n + 1, sizeof(*cptrs)));
    if (!cptrs)
        return -ENOMEM;
    for (size_t i = 0; i < acc.n; i++)
        cptrs[i] = &acc.items[i];
    Ctrps__StatsResponse *s = &rp->u.stats;
    ctrps__stats_response__init(s);
    s->shard_id = ps_shard_id(svc->shard);
    s->n_tables = nt;
    s->tables = tsp;
    s->n_counters = acc.n;
    s->counters = cptrs;
    s->rocksdb_bytes = ps_shard_store_bytes(svc->shard);
    s->rocksdb_pending_compaction_bytes = ps_shard_pending_compaction_bytes(svc->shard);
    s->rocksdb_running_compactions = ps_shard_running_compactions(svc->shard);
    s->durability = svc->cfg->server.durability == PS_DURABILITY_SYNC ? "sync" : "interval";
    s->store_error = (char *)ps_shard_store_error(svc->shard);
    rp->resp.result_case = CTRPS__RESPONSE__RESULT_STATS;
    rp->resp.stats = s;
    return 0;
}

#define DENSE_BLOCKS_MAX 4096

static int check_dense_name(ps_service *svc, const char *name, reply *rp) {
    if (!name || !name[0] || strlen(name) >= 2 * PS_NAME_MAX) {
        snprintf(rp->err, sizeof(rp->err), "dense block names must be 1..%d bytes", 2 * PS_NAME_MAX - 1);
        return PS_EPROTO;
    }
    uint32_t home = ps_dense_home(name, svc->cfg->nshards);
    if (home != ps_shard_id(svc->shard)) {
        snprintf(rp->err, sizeof(rp->err), "dense block '%.64s' lives on shard %u, not %u", name, home,
                 ps_shard_id(svc->shard));
        rp->resp.map_version = ps_shard_map(svc->shard)->version;
        return PS_EWRONG_SHARD;
    }
    return 0;
}

static int do_dense_pull(ps_service *svc, ps_session *sess, const Ctrps__DensePullRequest *req,
                         reply *rp) {
    (void)sess;
    if (req->n_names > DENSE_BLOCKS_MAX) {
        snprintf(rp->err, sizeof(rp->err), "%zu dense blocks in one request (at most %d)",
                 req->n_names, DENSE_BLOCKS_MAX);
        return PS_ELIMIT;
    }
    Ctrps__DenseBlock *blocks = own(rp, calloc(req->n_names + 1, sizeof(*blocks)));
    Ctrps__DenseBlock **ptrs = own(rp, calloc(req->n_names + 1, sizeof(*ptrs)));
    if (!blocks || !ptrs)
        return -ENOMEM;
    for (size_t i = 0; i < req->n_names; i++) {
        const char *name = req->names[i];
        int r = check_dense_name(svc, name, rp);
        if (r < 0)
            return r;
        const Ctrps__DenseBlock *init = NULL;
        for (size_t k = 0; k < req->n_init && !init; k++)
            if (req->init[k]->name && !strcmp(req->init[k]->name, name))
                init = req->init[k];
        const float *w;
        size_t len;
        r = ps_shard_dense_get(svc->shard, name, init ? init->values : NULL, init ? init->n_values : 0,
                               &w, &len, rp->err, sizeof(rp->err));
        if (r < 0)
            return r;
        ctrps__dense_block__init(&blocks[i]);
        blocks[i].name = (char *)name;
        blocks[i].n_values = len;
        blocks[i].values = (float *)w;
        ptrs[i] = &blocks[i];
    }
    Ctrps__DensePullResponse *p = &rp->u.dense_pull;
    ctrps__dense_pull_response__init(p);
    p->n_blocks = req->n_names;
    p->blocks = ptrs;
    rp->resp.result_case = CTRPS__RESPONSE__RESULT_DENSE_PULL;
    rp->resp.dense_pull = p;
    return 0;
}

static int do_dense_push(ps_service *svc, ps_session *sess, const Ctrps__DensePushRequest *req,
                         reply *rp) {
    (void)sess;
    size_t n = req->n_grads;
    if (n > DENSE_BLOCKS_MAX) {
        snprintf(rp->err, sizeof(rp->err), "%zu dense blocks in one request (at most %d)", n,
                 DENSE_BLOCKS_MAX);
        return PS_ELIMIT;
    }
    const char **names = own(rp, calloc(n + 1, sizeof(char *)));
    const float **grads = own(rp, calloc(n + 1, sizeof(float *)));
    size_t *lens = own(rp, calloc(n + 1, sizeof(size_t)));
    if (!names || !grads || !lens)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        int r = check_dense_name(svc, req->grads[i]->name, rp);
        if (r < 0)
            return r;
        names[i] = req->grads[i]->name;
        grads[i] = req->grads[i]->values;
        lens[i] = req->grads[i]->n_values;
    }
    bool already;
    int r = ps_shard_dense_push(svc->shard, n, names, grads, lens, req->client_id, req->seq, &already,
                                rp->err, sizeof(rp->err));
    if (r < 0)
        return r;
    Ctrps__DensePushResponse *p = &rp->u.dense_push;
    ctrps__dense_push_response__init(p);
    p->already_applied = already;
    rp->resp.result_case = CTRPS__RESPONSE__RESULT_DENSE_PUSH;
    rp->resp.dense_push = p;
    rp->push_ack = !already;
    return 0;
}

/* ---- checkpoint barrier ------------------------------------------------------ */

static int do_checkpoint(ps_service *svc, ps_session *sess, const Ctrps__CheckpointRequest *req,
                         reply *rp) {
    (void)sess;
    const char *id = req->id ? req->id : "";
    Ctrps__CheckpointResponse *c = &rp->u.checkpoint;
    ctrps__checkpoint_response__init(c);
    ps_barrier *b = svc->barrier;
    int r = 0;
    switch (req->phase) {
    case CTRPS__CHECKPOINT_REQUEST__PHASE__BEGIN:
        r = ps_barrier_begin(b, id, rp->err, sizeof(rp->err));
        break;
    case CTRPS__CHECKPOINT_REQUEST__PHASE__REPORT:
        r = ps_barrier_report(b, id, req->client_id, req->worker, req->position, rp->err,
                              sizeof(rp->err));
        break;
    case CTRPS__CHECKPOINT_REQUEST__PHASE__TAKE:
        r = ps_barrier_take(b, id, req->dir, &c->flushed_lsn, rp->err, sizeof(rp->err));
        if (r == 0)
            c->path = req->dir;
        break;
    case CTRPS__CHECKPOINT_REQUEST__PHASE__END:
        r = ps_barrier_end(b, id, rp->err, sizeof(rp->err));
        break;
    case CTRPS__CHECKPOINT_REQUEST__PHASE__STATUS:
        break;
    default:
        /* A phase this shard does not know still names a checkpoint. */
        r = ps_barrier_check_id(b, id, rp->err, sizeof(rp->err));
        break;
    }
    if (r < 0)
        return r;
    /* Every phase answers with the state of the barrier. */
    size_t nw, nrep;
    const uint64_t *workers = ps_barrier_workers(b, &nw);
    const ps_barrier_arrival *reports = ps_barrier_reports(b, &nrep);
    uint64_t *ids = own(rp, calloc(nw + 1, sizeof(uint64_t)));
    Ctrps__WorkerReport *reps = own(rp, calloc(nrep + 1, sizeof(*reps)));
    Ctrps__WorkerReport **rptr = own(rp, calloc(nrep + 1, sizeof(*rptr)));
    if (!ids || !reps || !rptr)
        return -ENOMEM;
    if (nw)
        memcpy(ids, workers, nw * sizeof(uint64_t));
    for (size_t i = 0; i < nrep; i++) {
        ctrps__worker_report__init(&reps[i]);
        reps[i].client_id = reports[i].client_id;
        reps[i].worker = (char *)reports[i].worker;
        reps[i].position = (char *)reports[i].position;
        rptr[i] = &reps[i];
    }
    c->pending = (char *)ps_barrier_pending(b);
    c->n_connected_workers = nw;
    c->connected_workers = ids;
    c->n_reports = nrep;
    c->reports = rptr;
    rp->resp.result_case = CTRPS__RESPONSE__RESULT_CHECKPOINT;
    rp->resp.checkpoint = c;
    return 0;
}

/* ---- moving a bucket range --------------------------------------------------- */

#define MOVE_PAGE_MAX 65536
/* Stored rows a DROP call walks: ~5-10 ms of the loop here, ~0.25 s with the
 * cores saturated. */
#define DROP_STEP_ROWS 8192

/* A page's values sit one after the other in `data`, room for `limit`
 * values of the widest table. */
/* A page of rows as MoveRows sends it: keys, value lengths, the values
 * one after the other. */
typedef struct move_page {
    uint64_t *keys;
    uint32_t *lens;
    uint8_t *data;
    size_t n, used, room;
} move_page;

static int move_row(void *ctx, uint64_t fid, const void *value, size_t len) {
    move_page *pg = ctx;
    if (pg->used + len > pg->room)
        return -ENOMEM; /* wider than the table's value_len: cannot happen */
    memcpy(pg->data + pg->used, value, len);
    pg->keys[pg->n] = fid;
    pg->lens[pg->n] = (uint32_t)len;
    pg->used += len;
    pg->n++;
    return 0;
}

/* The clients' sequence numbers for the range, into the reply. */
static int move_seqs_out(ps_service *svc, uint32_t lo, uint32_t hi, Ctrps__MoveResponse *m,
                         reply *rp) {
    uint64_t *ids, *seqs, *masks;
    size_t n;
    int r = ps_shard_move_seqs(svc->shard, lo, hi, &ids, &seqs, &masks, &n);
    if (r < 0)
        return r;
    /* Each one owned by the reply or freed, so all three are tried. */
    bool owned = own(rp, ids) != NULL;
    owned &= own(rp, seqs) != NULL;
    owned &= own(rp, masks) != NULL;
    if (!owned)
        return -ENOMEM;
    Ctrps__ClientSeqs *cs = own(rp, calloc(n + 1, sizeof(*cs)));
    Ctrps__ClientSeqs **csp = own(rp, calloc(n + 1, sizeof(*csp)));
    if (!cs || !csp)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        ctrps__client_seqs__init(&cs[i]);
        cs[i].client_id = ids[i];
        cs[i].n_seq = hi - lo;
        cs[i].seq = seqs + i * (hi - lo);
        cs[i].n_mask = hi - lo;
        cs[i].mask = masks + i * (hi - lo);
        csp[i] = &cs[i];
    }
    m->n_seqs = n;
    m->seqs = csp;
    return 0;
}

/* Pointer and length arrays for n values, freed with the reply. */
static int value_arrays(reply *rp, size_t n, const void ***ret_data, size_t **ret_lens) {
    const void **data = own(rp, malloc(n * sizeof(void *) + 1));
    size_t *lens = own(rp, malloc(n * sizeof(size_t) + 1));
    if (!data || !lens)
        return -ENOMEM;
    *ret_data = data;
    *ret_lens = lens;
    return 0;
}

/* n byte strings as the shard takes them: pointers and lengths, kept
 * until the reply is packed. */
static int split_bytes(reply *rp, const ProtobufCBinaryData *v, size_t n, const void ***ret_data,
                       size_t **ret_lens) {
    const void **data;
    size_t *lens;
    int r = value_arrays(rp, n, &data, &lens);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        data[i] = v[i].data;
        lens[i] = v[i].len;
    }
    *ret_data = data;
    *ret_lens = lens;
    return 0;
}

static int move_admit_out(ps_service *svc, const Ctrps__MoveRequest *req, Ctrps__MoveResponse *m,
                          reply *rp) {
    uint32_t ti = req->table_index;
    uint64_t off = req->offset;
    bool done;
    ps_admit_page pg;
    /* A page, and the IMPORT that carries it on, stays within half a frame. */
    int r = ps_shard_move_admit(svc->shard, req->bucket_lo, req->bucket_hi, req->round, &ti, &off,
                                (size_t)(svc->cfg->server.max_frame_bytes / 2), &pg, &done,
                                &m->pending, rp->err, sizeof(rp->err));
    if (r < 0)
        return r;
    m->table_index = ti;
    m->offset = off;
    m->done = done;
    Ctrps__AdmitBlocks *ab = own(rp, malloc(sizeof(*ab)));
    ProtobufCBinaryData *blocks = own(rp, malloc(pg.nblocks * sizeof(*blocks) + 1));
    if (!ab || !blocks)
        return -ENOMEM;
    ctrps__admit_blocks__init(ab);
    m->admit = ab;
    if (!pg.nblocks && !pg.ncounters)
        return 0;
    /* The page's arrays are borrowed until the next round: the reply is
     * packed before any. */
    ab->table = (char *)ps_table_config_of(ps_shard_table_at(svc->shard, off ? ti : ti - 1))->name;
    ab->header.data = (uint8_t *)pg.header;
    ab->header.len = pg.header_len;
    ab->n_ids = ab->n_blocks = pg.nblocks;
    ab->ids = (uint32_t *)pg.block_ids;
    for (size_t i = 0; i < pg.nblocks; i++) {
        blocks[i].data = (uint8_t *)pg.blocks[i];
        blocks[i].len = pg.block_lens[i];
    }
    ab->blocks = blocks;
    ab->n_counter_ids = pg.ncounters;
    ab->counter_ids = (uint64_t *)pg.counter_ids;
    ab->counter_values.data = (uint8_t *)pg.counter_values;
    ab->counter_values.len = pg.ncounters;
    return 0;
}

static int move_import_admit(ps_service *svc, const Ctrps__AdmitBlocks *ab, reply *rp) {
    if (ab->n_blocks != ab->n_ids || ab->counter_values.len != ab->n_counter_ids) {
        snprintf(rp->err, sizeof(rp->err),
                 "%zu admission filter blocks for %zu ids, %zu counter values for %zu ids",
                 ab->n_blocks, ab->n_ids, ab->counter_values.len, ab->n_counter_ids);
        return PS_EPROTO;
    }
    ps_table *t;
    ps_admit_page pg = {.header = ab->header.data,
                        .header_len = ab->header.len,
                        .nblocks = ab->n_ids,
                        .block_ids = ab->ids,
                        .ncounters = ab->n_counter_ids,
                        .counter_ids = ab->counter_ids,
                        .counter_values = ab->counter_values.data};
    const void **blocks;
    size_t *lens;
    int r = find_table(svc, ab->table, &t, rp);
    if (r == 0)
        r = split_bytes(rp, ab->blocks, ab->n_ids, &blocks, &lens);
    if (r < 0)
        return r;
    pg.blocks = blocks;
    pg.block_lens = lens;
    return ps_shard_adopt_admit(svc->shard, t, &pg, rp->err, sizeof(rp->err));
}

/* The values of an IMPORT page, in either of MoveRows' forms. */
static int move_rows_values(const Ctrps__MoveRows *rows, const void ***ret_data, size_t **ret_lens,
                            reply *rp) {
    size_t n = rows->n_keys;
    bool packed = rows->n_value_lens || rows->value_bytes.len;
    if (packed ? rows->n_values || rows->n_value_lens != n : rows->n_values != n) {
        snprintf(rp->err, sizeof(rp->err), "%zu row values and %zu value lengths for %zu keys",
                 rows->n_values, rows->n_value_lens, n);
        return PS_EPROTO;
    }
    if (!packed)
        return split_bytes(rp, rows->values, n, ret_data, ret_lens);
    const void **data;
    size_t *lens;
    int r = value_arrays(rp, n, &data, &lens);
    if (r < 0)
        return r;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (rows->value_lens[i] > rows->value_bytes.len - at) {
            snprintf(rp->err, sizeof(rp->err), "row %zu's value runs past the %zu value bytes", i,
                     rows->value_bytes.len);
            return PS_EPROTO;
        }
        data[i] = rows->value_bytes.data + at;
        lens[i] = rows->value_lens[i];
        at += lens[i];
    }
    if (at != rows->value_bytes.len) {
        snprintf(rp->err, sizeof(rp->err), "%zu value bytes left after the %zu rows",
                 rows->value_bytes.len - at, n);
        return PS_EPROTO;
    }
    *ret_data = data;
    *ret_lens = lens;
    return 0;
}

static int move_import(ps_service *svc, const Ctrps__MoveRequest *req, reply *rp) {
    int r = 0;
    const Ctrps__MoveRows *rows = req->rows;
    if (rows && rows->n_keys) {
        ps_table *t;
        const void **vals;
        size_t *lens;
        r = find_table(svc, rows->table, &t, rp);
        if (r == 0)
            r = move_rows_values(rows, &vals, &lens, rp);
        if (r < 0)
            return r;
        r = req->stage ? ps_shard_stage_rows(svc->shard, req->stage, t, rows->keys, vals, lens,
                                             rows->n_keys, rp->err, sizeof(rp->err))
                       : ps_shard_adopt_rows(svc->shard, t, rows->keys, vals, lens, rows->n_keys,
                                             rp->err, sizeof(rp->err));
        if (r < 0)
            return r;
    }
    if (req->admit && (req->admit->n_ids || req->admit->n_counter_ids)) {
        r = move_import_admit(svc, req->admit, rp);
        if (r < 0)
            return r;
    }
    if (req->n_seqs) {
        uint32_t w = req->bucket_hi > req->bucket_lo ? req->bucket_hi - req->bucket_lo : 0;
        uint64_t *ids = own(rp, malloc(req->n_seqs * sizeof(uint64_t)));
        uint64_t *seqs = own(rp, malloc(req->n_seqs * w * sizeof(uint64_t) + 1));
        uint64_t *masks = own(rp, malloc(req->n_seqs * w * sizeof(uint64_t) + 1));
        if (!ids || !seqs || !masks)
            return -ENOMEM;
        /* Masks from every client or from none (a peer from before them). */
        bool with_masks = req->seqs[0]->n_mask > 0;
        for (size_t i = 0; i < req->n_seqs; i++) {
            const Ctrps__ClientSeqs *cs = req->seqs[i];
            if (cs->n_seq != w || cs->n_mask != (with_masks ? w : 0)) {
                snprintf(rp->err, sizeof(rp->err),
                         "%zu sequence numbers and %zu masks for %u buckets", cs->n_seq,
                         cs->n_mask, w);
                return PS_EPROTO;
            }
            ids[i] = cs->client_id;
            memcpy(seqs + i * w, cs->seq, w * sizeof(uint64_t));
            if (with_masks)
                memcpy(masks + i * w, cs->mask, w * sizeof(uint64_t));
        }
        r = ps_shard_adopt_seqs(svc->shard, req->bucket_lo, req->bucket_hi, ids, seqs,
                                with_masks ? masks : NULL, req->n_seqs, rp->err, sizeof(rp->err));
    }
    return r;
}

static int do_move(ps_service *svc, ps_session *sess, const Ctrps__MoveRequest *req, reply *rp) {
    (void)sess;
    Ctrps__MoveResponse *m = &rp->u.move;
    ctrps__move_response__init(m);
    uint32_t lo = req->bucket_lo, hi = req->bucket_hi;
    int r = 0;
    switch (req->phase) {
    case CTRPS__MOVE_REQUEST__PHASE__FREEZE:
        r = ps_shard_freeze(svc->shard, lo, hi, req->fence, rp->err, sizeof(rp->err));
        break;
    case CTRPS__MOVE_REQUEST__PHASE__THAW:
        r = ps_shard_thaw(svc->shard, rp->err, sizeof(rp->err));
        break;
    case CTRPS__MOVE_REQUEST__PHASE__UNSTAGE:
        m->done = ps_shard_stage_forget(svc->shard);
        break;
    case CTRPS__MOVE_REQUEST__PHASE__DROP: {
        bool more = false;
        r = ps_shard_drop(svc->shard, lo, hi, DROP_STEP_ROWS, &more, &m->rows_dropped, rp->err,
                          sizeof(rp->err));
        m->more = more;
        if (r == 0 && req->stage && !more)
            r = ps_shard_stage_begin(svc->shard, lo, hi, req->stage, rp->err, sizeof(rp->err));
        break;
    }
    case CTRPS__MOVE_REQUEST__PHASE__INGEST:
        r = ps_shard_stage_ingest(svc->shard, req->stage, rp->err, sizeof(rp->err));
        break;
    case CTRPS__MOVE_REQUEST__PHASE__IMPORT:
        r = move_import(svc, req, rp);
        break;
    case CTRPS__MOVE_REQUEST__PHASE__ADMIT:
        r = move_admit_out(svc, req, m, rp);
        break;
    case CTRPS__MOVE_REQUEST__PHASE__TRACK:
        r = ps_shard_track(svc->shard, lo, hi, &m->track_id, &m->estimated_rows, rp->err,
                           sizeof(rp->err));
        break;
    case CTRPS__MOVE_REQUEST__PHASE__EXPORT:
    case CTRPS__MOVE_REQUEST__PHASE__CHANGED: {
        size_t limit = req->limit && req->limit < MOVE_PAGE_MAX ? req->limit : MOVE_PAGE_MAX;
        /* A page, and the IMPORT that carries it on, stays within half a frame. */
        size_t widest = 0;
        for (size_t i = 0; i < ps_shard_ntables(svc->shard); i++) {
            size_t w = ps_table_value_len(ps_shard_table_at(svc->shard, i));
            widest = w > widest ? w : widest;
        }
        size_t fit = (size_t)(svc->cfg->server.max_frame_bytes / 2) / (widest + 32);
        limit = fit < limit ? (fit ? fit : 1) : limit;
        uint8_t *after = own(rp, malloc(PS_STORE_KEY_LEN));
        Ctrps__MoveRows *rows = own(rp, malloc(sizeof(*rows)));
        move_page pg = {.room = limit * widest};
        pg.keys = own(rp, malloc(limit * sizeof(uint64_t)));
        pg.lens = own(rp, malloc(limit * sizeof(*pg.lens)));
        pg.data = own(rp, malloc(pg.room + 1));
        if (!after || !rows || !pg.keys || !pg.lens || !pg.data)
            return -ENOMEM;
        uint32_t ti = req->table_index;
        bool done = false, in_table; /* a page holds rows of one table: the cursor's, or the one it left */
        if (req->phase == CTRPS__MOVE_REQUEST__PHASE__EXPORT) {
            size_t alen = req->after.len == PS_STORE_KEY_LEN ? PS_STORE_KEY_LEN : 0;
            if (alen)
                memcpy(after, req->after.data, alen);
            r = ps_shard_move_export(svc->shard, lo, hi, &ti, after, &alen, limit, move_row, &pg,
                                     &done, rp->err, sizeof(rp->err));
            m->after.data = after;
            m->after.len = alen;
            in_table = alen > 0;
        } else {
            uint64_t off = req->offset;
            if (req->throttle)
                r = ps_shard_set_throttle(svc->shard, lo, hi, req->throttle, rp->err,
                                          sizeof(rp->err));
            if (r == 0)
                r = ps_shard_move_changed(svc->shard, lo, hi, req->round, &ti, &off, limit,
                                          move_row, &pg, &done, &m->pending, rp->err,
                                          sizeof(rp->err));
            m->offset = off;
            in_table = off > 0;
        }
        if (r < 0)
            return r;
        ctrps__move_rows__init(rows);
        if (pg.n)
            rows->table = (char *)ps_table_config_of(ps_shard_table_at(svc->shard, in_table ? ti : ti - 1))->name;
        rows->n_keys = rows->n_value_lens = pg.n;
        rows->keys = pg.keys;
        rows->value_lens = pg.lens;
        rows->value_bytes.data = pg.data;
        rows->value_bytes.len = pg.used;
        m->rows = rows;
        m->table_index = ti;
        m->done = done;
        /* The clients' sequence numbers hold still only while the range is
         * frozen: they go with the last page of a copy made then. */
        uint32_t flo, fhi;
        if (done && ps_shard_frozen(svc->shard, &flo, &fhi) && flo == lo && fhi == hi)
            r = move_seqs_out(svc, lo, hi, m, rp);
        break;
    }
    case CTRPS__MOVE_REQUEST__PHASE__STATUS:
        if (req->hold_ms)
            m->writing_back = ps_shard_hold_writeback(svc->shard, req->hold_ms);
        break;
    default:
        break;
    }
    if (r < 0)
        return r;
    m->frozen = ps_shard_frozen(svc->shard, &m->frozen_lo, &m->frozen_hi);
    m->track_id = ps_shard_track_id(svc->shard);
    rp->resp.result_case = CTRPS__RESPONSE__RESULT_MOVE;
    rp->resp.move = m;
    return 0;
}

/* ---- dispatch --------------------------------------------------------------- */

/* A Pull or Push read in place (common/wire.h), as the message the
 * handlers take. */
typedef struct in_place_req {
    Ctrps__Request req;
    Ctrps__PullRequest pull;
    Ctrps__PushRequest push;
    char table[256];             /* NUL-terminated, as protobuf-c's copy: a NUL inside ends it */
} in_place_req;

/* Decode a Pull or Push without protobuf-c's allocations: the handlers get
 * the keys and gradients where they lie in the frame, or, where a packed
 * array does not sit aligned for its type, a copy in the session's scratch
 * (grown to the largest request seen, which max_frame_bytes bounds). The
 * handlers only read them: the casts drop const, not alignment. false:
 * decode it with protobuf-c (any other request, anything unusual, a table
 * name too long for the buffer, no memory for the scratch). */
static bool in_place(ps_session *sess, const char *frame, size_t len, in_place_req *ip) {
    ps_wire_keyed k;
    if (ps_wire_keyed_decode((const uint8_t *)frame, len, &k) != 1 ||
        k.table_len >= sizeof(ip->table))
        return false;
    size_t kbytes = k.n_keys && (uintptr_t)k.keys % _Alignof(uint64_t) ? k.n_keys * sizeof(uint64_t) : 0;
    size_t gbytes = k.n_grads && (uintptr_t)k.grads % _Alignof(float) ? k.n_grads * sizeof(float) : 0;
    if (kbytes + gbytes > sess->scratch_cap) {
        free(sess->scratch);
        sess->scratch = malloc(kbytes + gbytes);
        sess->scratch_cap = sess->scratch ? kbytes + gbytes : 0;
        if (!sess->scratch)
            return false;
    }
    uint64_t *keys = kbytes ? memcpy(sess->scratch, k.keys, kbytes) : (uint64_t *)(uintptr_t)k.keys;
    float *grads = gbytes ? memcpy((char *)sess->scratch + kbytes, k.grads, gbytes)
                          : (float *)(uintptr_t)k.grads;
    if (k.table_len)
        memcpy(ip->table, k.table, k.table_len);
    ip->table[k.table_len] = 0;
    ctrps__request__init(&ip->req);
    ip->req.id = k.id;
    if (k.method == PS_WIRE_PULL) {
        ctrps__pull_request__init(&ip->pull);
        ip->pull.table = ip->table;
        ip->pull.n_keys = k.n_keys;
        ip->pull.keys = keys;
        ip->req.method_case = CTRPS__REQUEST__METHOD_PULL;
        ip->req.pull = &ip->pull;
    } else {
        ctrps__push_request__init(&ip->push);
        ip->push.table = ip->table;
        ip->push.n_keys = k.n_keys;
        ip->push.keys = keys;
        ip->push.n_grads = k.n_grads;
        ip->push.grads = grads;
        ip->push.client_id = k.client_id;
        ip->push.seq = k.seq;
        ip->req.method_case = CTRPS__REQUEST__METHOD_PUSH;
        ip->req.push = &ip->push;
    }
    return true;
}

/* A request that held the loop this long is logged: nothing else was
 * served meanwhile. */
#define SLOW_REQUEST_NS (500ull * 1000 * 1000)

static void slow_request(const char *method, const Ctrps__Request *req, uint64_t ns) {
    if (ns < SLOW_REQUEST_NS)
        return;
    if (req->method_case == CTRPS__REQUEST__METHOD_MOVE)
        ps_warn("slow %s request (phase %d): %.0f ms on the loop", method, req->move->phase,
                (double)ns / 1e6);
    else
        ps_warn("slow %s request: %.0f ms on the loop", method, (double)ns / 1e6);
}

int ps_service_handle(ps_service *svc, ps_session *sess, const char *frame, size_t len, ps_buf *out,
                      bool *ret_push, bool *ret_close) {
    *ret_push = false;
    *ret_close = false;
    in_place_req ip;
    Ctrps__Request *req = in_place(sess, frame, len, &ip)
                              ? &ip.req
                              : ctrps__request__unpack(&svc->arena.pb, len, (const uint8_t *)frame);
    if (!req) {
        ps_pbarena_reset(&svc->arena); /* what the failed decode took */
        svc->bad_frames++;
        return PS_EPROTO;
    }
    reply rp;
    memset(&rp, 0, sizeof(rp));
    ctrps__response__init(&rp.resp);
    rp.resp.id = req->id;
    rp.out = out;
    int r;
    if (!sess->authenticated && req->method_case != CTRPS__REQUEST__METHOD_HELLO) {
        /* Nothing about rows, tables or the cluster before authentication. */
        svc->unauthenticated_refused++;
        rp.close = ++sess->refused >= MAX_REFUSED;
        snprintf(rp.err, sizeof(rp.err), "authenticate with Hello first");
        r = PS_EAUTH;
        goto reply;
    }
    uint64_t t0 = ps_prom_now_ns();
    switch (req->method_case) {
#define DISPATCH(name, tag)                                                                    \
    case CTRPS__REQUEST__METHOD_##tag:                                                         \
        svc->requests[PS_METHOD_##tag]++;                                                      \
        r = do_##name(svc, sess, req->name, &rp);                                              \
        ps_prom_histogram_observe(&svc->latency[PS_METHOD_##tag], ps_prom_now_ns() - t0);      \
        slow_request(#name, req, ps_prom_now_ns() - t0);                                       \
        break;
        PS_METHOD_MAP(DISPATCH)
#undef DISPATCH
    default:
        snprintf(rp.err, sizeof(rp.err), "request %llu names no method",
                 (unsigned long long)req->id);
        r = PS_EPROTO;
        break;
    }
reply:
    if (r < 0) {
        /* An error reply carries no result: whatever was filled is dropped. */
        rp.resp.result_case = CTRPS__RESPONSE__RESULT__NOT_SET;
        rp.resp.status = ps_status_from_error(r);
        if (!rp.err[0])
            snprintf(rp.err, sizeof(rp.err), "%s", ps_strerror(r));
        rp.resp.message = rp.err;
        rp.push_ack = false;
    }
    svc->statuses[rp.resp.status < STATUS_COUNT ? rp.resp.status : STATUS_COUNT - 1]++;
    sess->last_status = (int)rp.resp.status;
    sess->last_auth_failed = r == PS_EAUTH && req->method_case == CTRPS__REQUEST__METHOD_HELLO;
    /* A long message is cut: the log line needs its start only. */
    snprintf(sess->last_error, sizeof(sess->last_error), "%.*s", (int)sizeof(sess->last_error) - 1,
             r < 0 ? rp.err : "");
    const char *pending = ps_barrier_pending(svc->barrier);
    if (pending[0] && sess->authenticated)
        rp.resp.checkpoint_pending = (char *)pending;
    r = rp.written ? 0 : ps_frame_append(out, &rp.resp.base);
    for (size_t i = 0; i < rp.nowned; i++)
        free(rp.owned[i]);
    free(rp.owned);
    ps_pbarena_reset(&svc->arena); /* the request, if protobuf-c decoded it */
    *ret_push = rp.push_ack;
    *ret_close = rp.close;
    return r;
}
