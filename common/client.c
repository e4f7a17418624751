/* Client internals.
 *
 * Objects. A ps_call is what the caller waits on; it has one part per shard
 * involved. A part owns its encoded request frame (reference-counted, since
 * a write may still hold it when the answer arrives) and the original
 * positions of its keys. Parts move from the submit queue (any thread, under
 * submit_lock) to their shard's in-flight list (I/O thread only), which is in
 * submission order; a part leaves it when answered, failed or timed out.
 *
 * Shard connection states, moved only by the I/O thread:
 *   DOWN --connect()--> CONNECTING --resolved, connected, Hello sent--> HELLO
 *   HELLO --Hello OK--> READY (every in-flight part is (re)sent, in order)
 *   any --error--> DOWN (retry after backoff while parts are waiting)
 *   HELLO --Hello refused--> DOWN, every waiting part failed with its status
 * Every attempt resolves the shard's name anew (uv_getaddrinfo, off the
 * loop in libuv's thread pool): a shard restarted elsewhere is found under
 * its name, and a name that does not resolve is an attempt that failed,
 * retried with backoff like a refused connection. An attempt that fails to
 * connect moves on to the next address the name gave.
 * Sequence numbers are assigned under submit_lock together with enqueueing,
 * so a shard always receives one client's pushes in increasing order, also
 * when they are resent.
 *
 * Riding out outages (outage_timeout_ms > 0). A shard is in an outage from
 * the timer tick that finds it DOWN with parts waiting (refused, reset, an
 * attempt past its deadline, a READ_ONLY answer, which drops the connection
 * so that everything after the refused part is resent in order too) until
 * the first answer that is not READ_ONLY. Parts then wait for the outage
 * rather than their own deadline, which only bounds one attempt. Hello OK
 * during an outage does not reset the backoff: a read-only shard accepts
 * connections and refuses the resent push each time.
 *
 * Following the cluster map (common/cmap.h). Callers split keys by the
 * client's map, read under map_lock; the I/O thread alone replaces it. A
 * keyed part answered WRONG_SHARD does not fail: it waits on the remap list
 *   - shard's epoch > ours: while one ClusterMap fetch (a KIND_MAP part) is
 *     in flight to that shard; its answer installs the newer map;
 *   - shard's epoch < ours: the shard has not heard of our map yet (a move's
 *     cut-over installs it shard by shard); REMAP_RETRY_MS;
 * and is then split again by the current map into parts for the new owners
 * (MOVING parts too, after REMAP_RETRY_MS), in the order they were refused.
 * A push part refused whole at every attempt was applied nowhere: it goes
 * again under a new sequence number (reroute()), so that a shard sees it
 * after the pushes already applied, in the order of its numbers. A part
 * with an unanswered attempt (resent after a lost connection) may have been
 * applied and keeps its number; a shard knows which of the 64 numbers below
 * a bucket's highest it applied (server/shard.c), so the part is applied
 * once also if a later push of this client was applied first. A part
 * re-routed MAX_HOPS times, or refused by a shard of our own epoch (a real
 * misconfiguration), fails with WRONG_SHARD. Connections are added as maps
 * name more shards and never removed; a shard whose address changes is
 * reconnected. */

#include "client.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <uv.h>

#include "addr.h"
#include "auth.h"
#include "client_rpc.h"
#include "ctrps.pb-c.h"
#include "error.h"
#include "frame.h"
#include "keys.h"
#include "promtext.h"
#include "rpc.h"
#include "wire.h"

#define TIMER_MS 10
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
#define HELLO_ID 0

typedef struct frame_ref {
    int refs;                    /* I/O thread only, after submission */
    size_t len;
    char data[];
} frame_ref;

typedef enum {
    KIND_PULL,
    KIND_PUSH,
    KIND_LOOKUP,
    KIND_RAW,
    KIND_DENSE_PULL,
    KIND_DENSE_PUSH,
    KIND_MAP,                    /* the client's own ClusterMap fetch: nobody waits on it */
} part_kind;

#define MAX_HOPS 8
#define REMAP_RETRY_MS 20

typedef struct part part;
struct part {
    part *next, *prev;
    ps_call *call;
    uint32_t shard;
    uint64_t id;
    frame_ref *frame;
    size_t n;
    uint32_t *pos;               /* owned: position of each key in the call */
    uint64_t deadline_ms;
    bool sent;                   /* written on some connection already */
    bool uncertain;              /* an attempt went unanswered (resent): maybe applied */
    uint8_t hops;                /* times re-routed after WRONG_SHARD */
    uint64_t epoch;              /* of the map its keys were routed by */
    uint32_t moving_waits;       /* times answered MOVING */
};

struct ps_call {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int remaining;
    int err;
    char msg[512];
    part_kind kind;
    uint32_t dim, width;
    float *values, *state;
    uint8_t *found;
    uint64_t applied, dropped;
    Ctrps__Response *raw;
    ps_dense_block *blocks;      /* dense pull: caller's, pos[] index it */
    ps_prom_histogram *latency;  /* observed when the call succeeds; may be NULL */
    uint64_t start_ns;
    ps_client *client;           /* KIND_MAP */
};

typedef enum { DOWN, CONNECTING, HELLO, READY } conn_state;

typedef struct shard_conn {
    ps_client *c;
    uint32_t idx;
    char addr[128];              /* as configured: "host:port" */
    char host[128];
    int port;
    ps_addr_list addrs;          /* from the latest resolution */
    uint32_t rotor;              /* which of addrs the next attempt uses */
    char peer[PS_ADDR_STRLEN];   /* the address of the current attempt */
    struct resolve_box *resolving;  /* the attempt's name lookup, until it answers */
    uv_tcp_t *tcp;               /* per attempt; freed in its close callback */
    conn_state state;
    uint8_t cnonce[PS_AUTH_NONCE];  /* this connection's client nonce */
    ps_frame_reader rd;
    part *head, *tail;           /* in flight, submission order */
    uint64_t backoff_ms, next_attempt_ms;
    uint64_t attempt_deadline_ms;   /* riding out: connect + Hello must finish by then */
    bool in_outage;
    uint64_t outage_since_ms, outage_reported_ms;
    char last_error[160];
    char reported_error[160];    /* last_error as last reported */
} shard_conn;

typedef struct tcp_box {
    uv_tcp_t tcp;
    uv_connect_t connect;
    shard_conn *sc;              /* NULL once abandoned */
} tcp_box;

typedef struct resolve_box {
    uv_getaddrinfo_t req;
    shard_conn *sc;              /* NULL once abandoned; the callback frees the box */
} resolve_box;

typedef struct write_req {
    uv_write_t req;
    frame_ref *frame;
    shard_conn *sc;
    uv_tcp_t *tcp;
} write_req;

struct ps_client {
    const ps_config *cfg;
    ps_auth_secret secret;       /* empty: the shards do not ask */
    uint64_t client_id;
    char name[64];
    uint32_t timeout_ms, max_frame;
    uint64_t outage_ms;          /* 0 = parts fail at their deadline */
    ps_client_outage_fn on_outage;
    void *on_outage_ctx;
    ps_client_event_fn on_event;
    void *on_event_ctx;
    uint64_t rng;                /* backoff jitter; I/O thread only */
    /* Written by the I/O thread under map_lock; it reads them without. The
     * connection array only grows, and covers every shard of the map. */
    pthread_mutex_t map_lock;
    ps_cluster_map map;
    shard_conn **shards;
    uint32_t nshards;
    /* Re-routing (I/O thread only). */
    /* Parts waiting for a map or out of MOVING, linked by next, in the
     * order they were refused: sent again in that order, so that a shard
     * gets one client's pushes in the order they were made (the model of
     * an undisturbed run; a shard would also take them out of order). */
    part *remap_head, *remap_tail;
    bool map_fetching;
    uint64_t remap_at_ms;        /* re-route the waiting parts then, if no fetch */

    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t timer;
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t submit_lock;
    part *queue_head, *queue_tail;
    bool stopping;
    ps_cluster_map offered;      /* ps_client_offer_map(): installed by the I/O thread */
    uint64_t next_seq;
    atomic_uint_fast64_t next_id;

    atomic_uint_fast64_t n_requests, n_reconnects, n_resent, n_timeouts, n_outages;
    atomic_uint n_ready;         /* shards in state READY */
    ps_prom_histogram *pull_latency, *push_latency;  /* from the options; may be NULL */
    atomic_uint_fast64_t n_rerouted, n_map_fetches, n_moving_waits;
    pthread_mutex_t ckpt_lock;
    char ckpt_pending[64];       /* latest checkpoint barrier a shard announced */
};

/* ---- calls and parts -------------------------------------------------------- */

static ps_call *call_new(ps_client *c, part_kind kind, int nparts) {
    ps_call *call = calloc(1, sizeof(*call));
    if (!call)
        return NULL;
    pthread_mutex_init(&call->mu, NULL);
    pthread_cond_init(&call->cv, NULL);
    call->kind = kind;
    call->remaining = nparts;
    call->latency = kind == KIND_PULL || kind == KIND_DENSE_PULL   ? c->pull_latency
                    : kind == KIND_PUSH || kind == KIND_DENSE_PUSH ? c->push_latency
                                                                   : NULL;
    call->start_ns = call->latency ? ps_prom_now_ns() : 0;
    return call;
}

/* Every state change of a shard connection goes through here: the count of
 * READY shards is what the worker's /readyz reports. */
static void set_state(shard_conn *sc, conn_state st) {
    if (sc->state == READY && st != READY)
        atomic_fetch_sub(&sc->c->n_ready, 1);
    else if (sc->state != READY && st == READY)
        atomic_fetch_add(&sc->c->n_ready, 1);
    sc->state = st;
}

static void call_free(ps_call *call) {
    if (call->raw)
        ctrps__response__free_unpacked(call->raw, NULL);
    pthread_mutex_destroy(&call->mu);
    pthread_cond_destroy(&call->cv);
    free(call);
}

static void frame_unref(frame_ref *f) {
    if (f && --f->refs == 0)
        free(f);
}

/* A frame of n payload bytes, its header written. */
static frame_ref *frame_new(size_t n) {
    frame_ref *f = malloc(sizeof(*f) + PS_FRAME_HEADER + n);
    if (!f)
        return NULL;
    f->refs = 1;
    f->len = PS_FRAME_HEADER + n;
    ps_frame_header((uint8_t *)f->data, (uint32_t)n);
    return f;
}

static frame_ref *encode(const Ctrps__Request *req) {
    frame_ref *f = frame_new(protobuf_c_message_get_packed_size(&req->base));
    if (f)
        protobuf_c_message_pack(&req->base, (uint8_t *)f->data + PS_FRAME_HEADER);
    return f;
}

/* n rows of row bytes from src to dst; pos[i] is the i-th row's place in
 * the call's array: with `scatter` src is the part's array and dst the
 * call's (dst row pos[i] = src row i), else the other way round (a gather).
 * One memcpy per run of consecutive positions (a call that goes to one
 * shard is one run), not one per row. */
static void copy_rows(char *dst, const char *src, const uint32_t *pos, size_t n, size_t row,
                      bool scatter) {
    for (size_t i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && pos[j] == pos[j - 1] + 1; j++)
            ;
        size_t at_call = (size_t)pos[i] * row, at_part = i * row;
        memcpy(dst + (scatter ? at_call : at_part), src + (scatter ? at_part : at_call),
               (j - i) * row);
    }
}

/* A Pull's or Push's frame written in place (common/wire.h): a push's
 * gradients are gathered by the part's positions straight into it, where
 * protobuf-c would pack a gathered copy (640 KiB more per 10,000 dim-16
 * rows). The same bytes as encode() would write. */
static frame_ref *encode_keyed(const ps_wire_keyed *k, const float *grads, const uint32_t *pos,
                               uint32_t dim) {
    frame_ref *f = frame_new(ps_wire_keyed_len(k));
    if (!f)
        return NULL;
    uint8_t *g = NULL;
    ps_wire_keyed_write(k, (uint8_t *)f->data + PS_FRAME_HEADER, &g);
    if (g)
        copy_rows((char *)g, (const char *)grads, pos, k->n_keys, dim * sizeof(float), false);
    return f;
}

/* Finish one part: record the error (first one wins) and wake the waiter
 * when it was the last. */
static void part_finish(part *p, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void map_part_done(part *p, int err, const char *msg);
static void part_finish(part *p, int err, const char *fmt, ...) {
    ps_call *call = p->call;
    if (call->kind == KIND_MAP) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        map_part_done(p, err, msg);
        return;
    }
    pthread_mutex_lock(&call->mu);
    if (err && !call->err) {
        call->err = err;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(call->msg, sizeof(call->msg), fmt, ap);
        va_end(ap);
    }
    if (--call->remaining == 0) {
        /* Submitted to last answer, on the I/O thread: not how late the
         * caller came to wait. */
        if (call->latency && !call->err)
            ps_prom_histogram_observe(call->latency, ps_prom_now_ns() - call->start_ns);
        pthread_cond_broadcast(&call->cv);
    }
    pthread_mutex_unlock(&call->mu);
    frame_unref(p->frame);
    free(p->pos);
    free(p);
}

static void list_remove(shard_conn *sc, part *p) {
    if (p->prev)
        p->prev->next = p->next;
    else
        sc->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        sc->tail = p->prev;
    p->next = p->prev = NULL;
}

static void list_append(shard_conn *sc, part *p) {
    p->next = NULL;
    p->prev = sc->tail;
    if (sc->tail)
        sc->tail->next = p;
    else
        sc->head = p;
    sc->tail = p;
}

/* ---- answers ------------------------------------------------------------------ */

static void wrong_shard(shard_conn *sc, part *p, uint64_t epoch, const char *msg);
static void moving(shard_conn *sc, part *p, const char *msg);
static void install_map(ps_client *c, ps_cluster_map *m);

/* A Pull answer's rows (n_values floats at values, any alignment: they may
 * lie in the received frame) to the caller's positions. */
static int pull_values_out(part *p, uint32_t dim, const void *values, size_t n_values) {
    ps_call *call = p->call;
    if (dim != call->dim || n_values != p->n * call->dim)
        return PS_EDIM;
    copy_rows((char *)call->values, values, p->pos, p->n, call->dim * sizeof(float), true);
    return 0;
}

/* Finish a part whose answer was read: err says it did not fit the request. */
static void part_done(shard_conn *sc, part *p, int err) {
    if (err)
        part_finish(p, err, "shard %u (%s): response does not match the request (dim %u)", sc->idx,
                    sc->addr, p->call->dim);
    else
        part_finish(p, 0, "%s", "");
}

static void apply_response(shard_conn *sc, part *p, Ctrps__Response *resp) {
    ps_call *call = p->call;
    bool keyed = call->kind == KIND_PULL || call->kind == KIND_PUSH || call->kind == KIND_LOOKUP;
    if (keyed && resp->status == CTRPS__STATUS__WRONG_SHARD) {
        wrong_shard(sc, p, resp->map_version, resp->message ? resp->message : "");
        ctrps__response__free_unpacked(resp, NULL);
        return;
    }
    if (keyed && resp->status == CTRPS__STATUS__MOVING) {
        moving(sc, p, resp->message ? resp->message : "");
        ctrps__response__free_unpacked(resp, NULL);
        return;
    }
    if (resp->status != CTRPS__STATUS__OK) {
        part_finish(p, ps_error_from_status(resp->status), "shard %u (%s): %s: %s", sc->idx,
                    sc->addr, ps_status_name(resp->status), resp->message ? resp->message : "");
        ctrps__response__free_unpacked(resp, NULL);
        return;
    }
    int err = 0;
    switch (call->kind) {
    case KIND_PULL: {
        Ctrps__PullResponse *r = resp->result_case == CTRPS__RESPONSE__RESULT_PULL ? resp->pull : NULL;
        err = r ? pull_values_out(p, r->dim, r->values, r->n_values) : PS_EDIM;
        break;
    }
    case KIND_PUSH: {
        Ctrps__PushResponse *r = resp->result_case == CTRPS__RESPONSE__RESULT_PUSH ? resp->push : NULL;
        if (!r) {
            err = PS_EPROTO;
            break;
        }
        pthread_mutex_lock(&call->mu);
        /* A resent push already applied counts as applied: it was. */
        call->applied += r->already_applied ? p->n : r->applied;
        call->dropped += r->dropped_nonfinite;
        pthread_mutex_unlock(&call->mu);
        break;
    }
    case KIND_LOOKUP: {
        Ctrps__LookupResponse *r =
            resp->result_case == CTRPS__RESPONSE__RESULT_LOOKUP ? resp->lookup : NULL;
        if (!r || r->dim != call->dim || r->n_values != p->n * call->dim || r->n_found != p->n ||
            (call->state && (r->state_dim != call->width || r->n_state != p->n * call->width))) {
            err = PS_EDIM;
            break;
        }
        for (size_t i = 0; i < p->n; i++) {
            size_t at = p->pos[i];
            call->found[at] = r->found[i] ? 1 : 0;
            memcpy(call->values + at * call->dim, r->values + i * call->dim, call->dim * sizeof(float));
            if (call->state)
                memcpy(call->state + at * call->width, r->state + i * call->width,
                       call->width * sizeof(float));
        }
        break;
    }
    case KIND_DENSE_PULL: {
        Ctrps__DensePullResponse *r =
            resp->result_case == CTRPS__RESPONSE__RESULT_DENSE_PULL ? resp->dense_pull : NULL;
        if (!r || r->n_blocks != p->n) {
            err = PS_EPROTO;
            break;
        }
        for (size_t i = 0; i < p->n && !err; i++) {
            ps_dense_block *b = &call->blocks[p->pos[i]];
            if (!r->blocks[i]->name || strcmp(r->blocks[i]->name, b->name) ||
                r->blocks[i]->n_values != b->len)
                err = PS_EDIM;
            else
                memcpy(b->values, r->blocks[i]->values, b->len * sizeof(float));
        }
        break;
    }
    case KIND_DENSE_PUSH:
        if (resp->result_case != CTRPS__RESPONSE__RESULT_DENSE_PUSH)
            err = PS_EPROTO;
        break;
    case KIND_RAW:
        call->raw = resp;
        part_finish(p, 0, "%s", "");
        return;
    case KIND_MAP: {
        ps_cluster_map m;
        char why[200];
        if (resp->result_case != CTRPS__RESPONSE__RESULT_CLUSTER_MAP ||
            ps_rpc_map_from_wire(resp->cluster_map, &m, why, sizeof(why)) < 0) {
            err = PS_EPROTO;
            break;
        }
        install_map(sc->c, &m);
        break;
    }
    }
    ctrps__response__free_unpacked(resp, NULL);
    part_done(sc, p, err);
}

/* ---- connections ------------------------------------------------------------------ */

static void conn_connect(shard_conn *sc);
static void send_frame(shard_conn *sc, frame_ref *f);

static void on_tcp_closed(uv_handle_t *h) { free(h); }

/* Drop the connection; parts stay queued for the next one. */
static void client_event(ps_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void client_event(ps_client *c, const char *fmt, ...) {
    if (!c->on_event)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->on_event(c->on_event_ctx, msg);
}

static void conn_down(shard_conn *sc, const char *why) {
    ps_client *c = sc->c;
    if (sc->resolving) {
        sc->resolving->sc = NULL;
        uv_cancel((uv_req_t *)&sc->resolving->req);
        sc->resolving = NULL;
    }
    if (sc->state != DOWN && why)
        client_event(c, "shard %u (%s): connection down: %s", sc->idx, sc->addr, why);
    if (sc->tcp) {
        tcp_box *box = (tcp_box *)sc->tcp;
        box->sc = NULL;
        if (!uv_is_closing((uv_handle_t *)sc->tcp))
            uv_close((uv_handle_t *)sc->tcp, on_tcp_closed);
        sc->tcp = NULL;
    }
    if (why)
        snprintf(sc->last_error, sizeof(sc->last_error), "%s", why);
    set_state(sc, DOWN);
    ps_frame_reader_deinit(&sc->rd);
    uint64_t now = uv_now(&c->loop);
    /* Jitter: a wait drawn from [backoff/2, backoff], so that workers that
     * lost a shard at the same moment do not all come back at once. */
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    sc->next_attempt_ms = now + sc->backoff_ms / 2 + c->rng % (sc->backoff_ms / 2 + 1);
    sc->backoff_ms = sc->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : sc->backoff_ms * 2;
}

static void outage_report(shard_conn *sc, uint64_t now, bool over) {
    ps_client *c = sc->c;
    sc->outage_reported_ms = now;
    memcpy(sc->reported_error, sc->last_error, sizeof(sc->reported_error));
    if (!c->on_outage)
        return;
    ps_client_outage o = {.shard = sc->idx,
                          .addr = sc->addr,
                          .elapsed_ms = now - sc->outage_since_ms,
                          .why = sc->last_error,
                          .over = over};
    c->on_outage(c->on_outage_ctx, &o);
}

static void outage_begin(shard_conn *sc, uint64_t now) {
    sc->in_outage = true;
    sc->outage_since_ms = now;
    atomic_fetch_add(&sc->c->n_outages, 1);
    outage_report(sc, now, false);
}

/* The shard answered: the outage, if any, is over. */
static void outage_end(shard_conn *sc) {
    if (!sc->in_outage)
        return;
    outage_report(sc, uv_now(&sc->c->loop), true);
    sc->in_outage = false;
    sc->backoff_ms = BACKOFF_MIN_MS;
}

static void fail_all(shard_conn *sc, int err, const char *msg) {
    while (sc->head) {
        part *p = sc->head;
        list_remove(sc, p);
        part_finish(p, err, "shard %u (%s): %s", sc->idx, sc->addr, msg);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    tcp_box *box = (tcp_box *)h;
    char *p = NULL;
    size_t n = 0;
    if (box->sc && ps_frame_reader_space(&box->sc->rd, &p, &n) < 0)
        p = NULL, n = 0;
    buf->base = p;
    buf->len = n;
}

static void send_hello_frame(shard_conn *sc, const uint8_t *mac) {
    ps_client *c = sc->c;
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__HelloRequest hello = CTRPS__HELLO_REQUEST__INIT;
    req.id = HELLO_ID;
    req.method_case = CTRPS__REQUEST__METHOD_HELLO;
    req.hello = &hello;
    hello.protocol_version = PS_PROTOCOL_VERSION;
    hello.client_name = c->name;
    hello.client_id = c->client_id;
    hello.client_nonce.data = sc->cnonce;
    hello.client_nonce.len = PS_AUTH_NONCE;
    if (mac) {
        hello.auth_response.data = (uint8_t *)mac;
        hello.auth_response.len = PS_AUTH_MAC;
    }
    frame_ref *f = encode(&req);
    if (!f) {
        conn_down(sc, "out of memory");
        return;
    }
    set_state(sc, HELLO);
    send_frame(sc, f);
    frame_unref(f);
}

static void handle_hello(shard_conn *sc, Ctrps__Response *resp) {
    Ctrps__HelloResponse *h = resp->result_case == CTRPS__RESPONSE__RESULT_HELLO ? resp->hello : NULL;
    if (resp->status == CTRPS__STATUS__OK && h && !h->authenticated) {
        /* The shard asks for proof of the shared secret. */
        ps_client *c = sc->c;
        if (h->auth_challenge.len != PS_AUTH_NONCE || !c->secret.len) {
            const char *msg = c->secret.len ? "Hello: malformed authentication challenge"
                                            : "the shard requires authentication; set [server] "
                                              "auth_secret_file in this client's config";
            ctrps__response__free_unpacked(resp, NULL);
            conn_down(sc, msg);
            fail_all(sc, PS_EAUTH, msg);
            return;
        }
        uint8_t mac[PS_AUTH_MAC];
        ps_auth_mac(&c->secret, h->auth_challenge.data, sc->cnonce, c->client_id, mac);
        ctrps__response__free_unpacked(resp, NULL);
        send_hello_frame(sc, mac);
        return;
    }
    if (resp->status != CTRPS__STATUS__OK) {
        char msg[300];
        snprintf(msg, sizeof(msg), "Hello refused: %s: %s", ps_status_name(resp->status),
                 resp->message ? resp->message : "");
        int err = ps_error_from_status(resp->status);
        ctrps__response__free_unpacked(resp, NULL);
        conn_down(sc, msg);
        /* Not a transient failure: retrying would be refused the same way. */
        fail_all(sc, err, msg);
        return;
    }
    ctrps__response__free_unpacked(resp, NULL);
    set_state(sc, READY);
    if (!sc->in_outage)
        sc->backoff_ms = BACKOFF_MIN_MS;
    else if (!sc->head)
        outage_end(sc);
    uint64_t now = uv_now(&sc->c->loop);
    for (part *p = sc->head; p && sc->state == READY; p = p->next) {
        if (p->sent) {
            atomic_fetch_add(&sc->c->n_resent, 1);
            p->uncertain = true;
        }
        p->sent = true;
        if (sc->c->outage_ms) /* the deadline bounds this attempt */
            p->deadline_ms = now + sc->c->timeout_ms;
        send_frame(sc, p->frame);
    }
}

/* A shard announced a checkpoint barrier (len bytes at s, a NUL ends it
 * early as it ends protobuf-c's copy). */
static void note_pending(ps_client *c, const char *s, size_t len) {
    if (!len || !s[0])
        return;
    pthread_mutex_lock(&c->ckpt_lock);
    size_t most = sizeof(c->ckpt_pending) - 1; /* snprintf cuts there anyway */
    snprintf(c->ckpt_pending, sizeof(c->ckpt_pending), "%.*s", (int)(len < most ? len : most), s);
    pthread_mutex_unlock(&c->ckpt_lock);
}

/* An OK Pull answer read in place (common/wire.h): its rows go from the
 * frame to the caller's array, with no decoded copy between. false when no
 * Pull part waits for it: then it takes the path of every other answer. */
static bool pull_in_place(shard_conn *sc, const ps_wire_pull_reply *r) {
    if (r->id == HELLO_ID)
        return false;
    part *p = sc->head;
    while (p && p->id != r->id)
        p = p->next;
    if (!p || p->call->kind != KIND_PULL)
        return false;
    note_pending(sc->c, (const char *)r->pending, r->pending_len);
    list_remove(sc, p);
    part_done(sc, p, pull_values_out(p, r->dim, r->values, r->n_values));
    outage_end(sc);
    return true;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    tcp_box *box = (tcp_box *)stream;
    shard_conn *sc = box->sc;
    (void)buf;
    if (!sc)
        return;
    if (nread < 0) {
        conn_down(sc, nread == UV_EOF ? "connection closed by the shard" : uv_strerror((int)nread));
        return;
    }
    ps_frame_reader_commit(&sc->rd, (size_t)nread);
    for (;;) {
        const char *frame;
        size_t len;
        int r = ps_frame_reader_next(&sc->rd, &frame, &len);
        if (r == 0)
            break;
        if (r < 0) {
            conn_down(sc, "response larger than max_frame_bytes");
            return;
        }
        ps_wire_pull_reply pr;
        if (ps_wire_pull_reply_decode((const uint8_t *)frame, len, &pr) == 1 && pull_in_place(sc, &pr))
            continue;
        Ctrps__Response *resp = ctrps__response__unpack(NULL, len, (const uint8_t *)frame);
        if (!resp) {
            conn_down(sc, "undecodable response");
            return;
        }
        if (resp->checkpoint_pending)
            note_pending(sc->c, resp->checkpoint_pending, strlen(resp->checkpoint_pending));
        if (resp->id == HELLO_ID) {
            handle_hello(sc, resp);
            if (sc->state != READY)
                return;
            continue;
        }
        part *p = sc->head;
        while (p && p->id != resp->id)
            p = p->next;
        if (!p) { /* answer to a request that timed out */
            ctrps__response__free_unpacked(resp, NULL);
            continue;
        }
        if (sc->c->outage_ms && resp->status == CTRPS__STATUS__READ_ONLY) {
            char why[160];
            snprintf(why, sizeof(why), "READ_ONLY: %s", resp->message ? resp->message : "");
            ctrps__response__free_unpacked(resp, NULL);
            conn_down(sc, why);
            return;
        }
        list_remove(sc, p);
        apply_response(sc, p, resp);
        outage_end(sc);
    }
}

static void on_written(uv_write_t *req, int status) {
    write_req *w = (write_req *)req;
    tcp_box *box = (tcp_box *)w->tcp;
    frame_unref(w->frame);
    if (status < 0 && box->sc && box->sc->tcp == w->tcp)
        conn_down(box->sc, uv_strerror(status));
    free(w);
}

static void send_frame(shard_conn *sc, frame_ref *f) {
    write_req *w = malloc(sizeof(*w));
    if (!w) {
        conn_down(sc, "out of memory");
        return;
    }
    w->frame = f;
    w->sc = sc;
    w->tcp = sc->tcp;
    f->refs++;
    uv_buf_t b = uv_buf_init(f->data, (unsigned)f->len);
    int r = uv_write(&w->req, (uv_stream_t *)sc->tcp, &b, 1, on_written);
    if (r < 0) {
        frame_unref(f);
        free(w);
        conn_down(sc, uv_strerror(r));
    }
}

static void send_hello(shard_conn *sc) {
    ps_auth_nonce(sc->cnonce);
    send_hello_frame(sc, NULL);
}

static void on_connected(uv_connect_t *req, int status) {
    tcp_box *box = req->data;
    shard_conn *sc = box->sc;
    if (!sc)
        return; /* abandoned; its close is already under way */
    if (status < 0) {
        char why[256];
        snprintf(why, sizeof(why), "connect to %s: %s", sc->peer, uv_strerror(status));
        sc->rotor++; /* the next attempt tries the name's next address */
        conn_down(sc, why);
        return;
    }
    client_event(sc->c, "shard %u (%s): connected to %s", sc->idx, sc->addr, sc->peer);
    uv_tcp_nodelay(&box->tcp, 1);
    ps_frame_reader_init(&sc->rd, sc->c->max_frame);
    int r = uv_read_start((uv_stream_t *)&box->tcp, on_alloc, on_read);
    if (r < 0) {
        conn_down(sc, uv_strerror(r));
        return;
    }
    send_hello(sc);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    resolve_box *rb = req->data;
    shard_conn *sc = rb->sc;
    free(rb);
    if (!sc) {
        uv_freeaddrinfo(res);
        return; /* abandoned (conn_down or the client closing) */
    }
    ps_client *c = sc->c;
    sc->resolving = NULL;
    char why[256];
    ps_addr_list addrs;
    if (status == 0 && ps_addr_list_from(res, sc->port, &addrs) < 0)
        status = UV_EAI_NODATA;
    uv_freeaddrinfo(res);
    if (status < 0) {
        snprintf(why, sizeof(why), "cannot resolve '%s': %s", sc->host, uv_strerror(status));
        conn_down(sc, why);
        return;
    }
    sc->addrs = addrs;
    const struct sockaddr *sa = (const struct sockaddr *)&sc->addrs.addr[sc->rotor % (uint32_t)addrs.n];
    ps_addr_format(sa, sc->peer, sizeof(sc->peer));
    client_event(c, "shard %u (%s): connecting to %s (%d address%s)", sc->idx, sc->addr, sc->peer,
                 addrs.n, addrs.n == 1 ? "" : "es");
    tcp_box *box = calloc(1, sizeof(*box));
    if (!box) {
        conn_down(sc, "out of memory");
        return;
    }
    uv_tcp_init(&c->loop, &box->tcp);
    box->sc = sc;
    box->connect.data = box;
    sc->tcp = &box->tcp;
    int r = uv_tcp_connect(&box->connect, &box->tcp, sa, on_connected);
    if (r < 0) {
        snprintf(why, sizeof(why), "connect to %s: %s", sc->peer, uv_strerror(r));
        sc->rotor++;
        conn_down(sc, why);
    }
}

/* An attempt: resolve the name (again: the shard may have moved), then
 * connect in on_resolved. The attempt's deadline covers both. */
static void conn_connect(shard_conn *sc) {
    ps_client *c = sc->c;
    resolve_box *rb = calloc(1, sizeof(*rb));
    if (!rb)
        return;
    rb->sc = sc;
    rb->req.data = rb;
    sc->resolving = rb;
    set_state(sc, CONNECTING);
    sc->attempt_deadline_ms = uv_now(&c->loop) + c->timeout_ms;
    if (sc->last_error[0])
        atomic_fetch_add(&c->n_reconnects, 1);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int r = uv_getaddrinfo(&c->loop, &rb->req, on_resolved, sc->host, NULL, &hints);
    if (r < 0) {
        sc->resolving = NULL;
        free(rb);
        char why[256];
        snprintf(why, sizeof(why), "cannot resolve '%s': %s", sc->host, uv_strerror(r));
        conn_down(sc, why);
    }
}

/* Point sc at HOST:PORT; the name is resolved at each connection attempt.
 * The config and the map both hold validated addresses. */
static int conn_set_addr(shard_conn *sc, const char *addr) {
    char host[sizeof(sc->host)];
    int port;
    if (strlen(addr) >= sizeof(sc->addr) || ps_parse_hostport(addr, host, sizeof(host), &port) < 0)
        return PS_ECONFIG;
    snprintf(sc->addr, sizeof(sc->addr), "%s", addr);
    memcpy(sc->host, host, sizeof(host));
    sc->port = port;
    return 0;
}

/* Connections up to shard n - 1, addressed by addrs (n of them). Called
 * with map_lock held, or before the I/O thread runs. */
static int grow_conns(ps_client *c, uint32_t n, char *const *addrs) {
    if (n <= c->nshards)
        return 0;
    shard_conn **g = realloc(c->shards, n * sizeof(*g));
    if (!g)
        return -ENOMEM;
    c->shards = g;
    for (uint32_t i = c->nshards; i < n; i++) {
        shard_conn *sc = calloc(1, sizeof(*sc));
        if (!sc)
            return -ENOMEM;
        sc->c = c;
        sc->idx = i;
        sc->backoff_ms = BACKOFF_MIN_MS;
        c->shards[c->nshards++] = sc;
        if (conn_set_addr(sc, addrs[i]) < 0)
            return PS_ECONFIG;
    }
    return 0;
}

static void free_conns(ps_client *c) {
    for (uint32_t i = 0; i < c->nshards; i++)
        free(c->shards[i]);
    free(c->shards);
    c->shards = NULL;
    c->nshards = 0;
}

/* ---- following the cluster map (I/O thread) ---------------------------------------- */

static void dispatch(ps_client *c, part *p) {
    shard_conn *sc = c->shards[p->shard];
    p->deadline_ms = uv_now(&c->loop) + c->timeout_ms;
    list_append(sc, p);
    if (sc->state == READY) {
        p->sent = true;
        send_frame(sc, p->frame);
    } else if (sc->state == DOWN && uv_now(&c->loop) >= sc->next_attempt_ms) {
        conn_connect(sc);
    }
}

/* Take m if it is newer than ours: more connections, new addresses. */
static void install_map(ps_client *c, ps_cluster_map *m) {
    if (m->version <= c->map.version || m->buckets != c->map.buckets) {
        ps_cluster_map_deinit(m);
        return;
    }
    pthread_mutex_lock(&c->map_lock);
    if (grow_conns(c, (uint32_t)m->nshards, m->shards) < 0) {
        pthread_mutex_unlock(&c->map_lock);
        ps_cluster_map_deinit(m);
        return; /* the parts waiting for it go by the old map and hop again */
    }
    ps_cluster_map old = c->map;
    c->map = *m;
    for (uint32_t i = 0; i < m->nshards; i++) {
        shard_conn *sc = c->shards[i];
        if (!strcmp(sc->addr, m->shards[i]))
            continue;
        if (conn_set_addr(sc, m->shards[i]) < 0) {
            client_event(c, "shard %u: the map's address '%s' is not HOST:PORT; keeping %s", i,
                         m->shards[i], sc->addr);
            continue;
        }
        if (sc->state != DOWN) {
            conn_down(sc, "the shard moved to another address");
            sc->next_attempt_ms = 0;
        }
    }
    pthread_mutex_unlock(&c->map_lock);
    ps_cluster_map_deinit(&old);
}

static Ctrps__Request *unpack_frame(const frame_ref *f) {
    return ctrps__request__unpack(NULL, f->len - PS_FRAME_HEADER,
                                  (const uint8_t *)f->data + PS_FRAME_HEADER);
}

static void dispatch_list(ps_client *c, part *p);

/* A new sequence number for a push part about to go again. The parts
 * submitted before it (lower numbers) are sent first, those after it wait
 * in the queue: a shard still gets one client's pushes in increasing order. */
static uint64_t renumber(ps_client *c) {
    pthread_mutex_lock(&c->submit_lock);
    uint64_t seq = c->next_seq++;
    part *queued = c->queue_head;
    c->queue_head = c->queue_tail = NULL;
    pthread_mutex_unlock(&c->submit_lock);
    dispatch_list(c, queued);
    return seq;
}

/* Split a keyed part again by the current map: one new part per owner, each
 * with the same table and client id; p is consumed. A push keeps its
 * sequence number if it may have been applied (an attempt went unanswered);
 * otherwise every attempt was refused whole (MOVING, WRONG_SHARD), it was
 * applied nowhere, and it takes a new number: a later push of this client
 * that a shard applied first (several on the wire, one of them touching
 * only buckets that were not moving) would make the old one a repeat. */
static void reroute(ps_client *c, part *p) {
    Ctrps__Request *req = unpack_frame(p->frame);
    if (req && req->method_case == CTRPS__REQUEST__METHOD_PUSH && !p->uncertain)
        req->push->seq = renumber(c);
    uint64_t *keys = NULL;
    size_t n = 0;
    float *grads = NULL;
    uint32_t dim = p->call->dim;
    if (req && req->method_case == CTRPS__REQUEST__METHOD_PULL)
        keys = req->pull->keys, n = req->pull->n_keys;
    else if (req && req->method_case == CTRPS__REQUEST__METHOD_PUSH)
        keys = req->push->keys, n = req->push->n_keys, grads = req->push->grads;
    else if (req && req->method_case == CTRPS__REQUEST__METHOD_LOOKUP)
        keys = req->lookup->keys, n = req->lookup->n_keys;
    uint32_t ns = (uint32_t)c->map.nshards;
    uint32_t *owner = n == p->n ? malloc(n * sizeof(uint32_t) + 1) : NULL;
    uint32_t *count = calloc(ns, sizeof(uint32_t));
    part **parts = calloc(ns, sizeof(part *));
    uint64_t *skeys = malloc(n * sizeof(uint64_t) + 1);
    float *sgrads = grads ? malloc(n * dim * sizeof(float) + 1) : NULL;
    int nparts = 0;
    bool ok = owner && count && parts && skeys && (!grads || sgrads);
    for (size_t i = 0; ok && i < n; i++) {
        owner[i] = ps_cluster_map_key_owner(&c->map, keys[i]);
        if (count[owner[i]]++ == 0)
            nparts++;
    }
    for (uint32_t s = 0; ok && s < ns; s++) {
        if (!count[s])
            continue;
        part *np = calloc(1, sizeof(*np));
        if (!np || !(np->pos = malloc(count[s] * sizeof(uint32_t)))) {
            free(np);
            ok = false;
            break;
        }
        parts[s] = np;
        np->call = p->call;
        np->shard = s;
        np->hops = p->hops;
        np->uncertain = p->uncertain;
        np->epoch = c->map.version;
        np->id = atomic_fetch_add(&c->next_id, 1);
        for (size_t i = 0; i < n; i++) {
            if (owner[i] != s)
                continue;
            if (grads)
                memcpy(sgrads + np->n * dim, grads + i * dim, dim * sizeof(float));
            skeys[np->n] = keys[i];
            np->pos[np->n++] = p->pos[i];
        }
        req->id = np->id;
        if (req->method_case == CTRPS__REQUEST__METHOD_PULL)
            req->pull->keys = skeys, req->pull->n_keys = np->n;
        else if (req->method_case == CTRPS__REQUEST__METHOD_LOOKUP)
            req->lookup->keys = skeys, req->lookup->n_keys = np->n;
        else {
            req->push->keys = skeys, req->push->n_keys = np->n;
            req->push->grads = sgrads, req->push->n_grads = np->n * dim;
        }
        np->frame = encode(req);
        if (!np->frame)
            ok = false;
    }
    /* Give the unpacked message its own arrays back before freeing it. */
    if (req && req->method_case == CTRPS__REQUEST__METHOD_PULL)
        req->pull->keys = keys, req->pull->n_keys = n;
    else if (req && req->method_case == CTRPS__REQUEST__METHOD_LOOKUP)
        req->lookup->keys = keys, req->lookup->n_keys = n;
    else if (req && req->method_case == CTRPS__REQUEST__METHOD_PUSH) {
        req->push->keys = keys, req->push->n_keys = n;
        req->push->grads = grads, req->push->n_grads = n * dim;
    }
    if (req)
        ctrps__request__free_unpacked(req, NULL);
    free(owner);
    free(skeys);
    free(sgrads);
    if (!ok || !nparts) {
        for (uint32_t s = 0; parts && s < ns; s++)
            if (parts[s]) {
                free(parts[s]->frame);
                free(parts[s]->pos);
                free(parts[s]);
            }
        free(parts);
        free(count);
        part_finish(p, -ENOMEM, "re-routing after WRONG_SHARD: %s", ps_strerror(-ENOMEM));
        return;
    }
    pthread_mutex_lock(&p->call->mu);
    p->call->remaining += nparts - 1;
    pthread_mutex_unlock(&p->call->mu);
    frame_unref(p->frame);
    free(p->pos);
    free(p);
    atomic_fetch_add(&c->n_rerouted, 1);
    for (uint32_t s = 0; s < ns; s++)
        if (parts[s])
            dispatch(c, parts[s]);
    free(parts);
    free(count);
}

static void reroute_waiting(ps_client *c) {
    part *p = c->remap_head;
    c->remap_head = c->remap_tail = NULL;
    while (p) {
        part *next = p->next;
        p->next = NULL;
        reroute(c, p);
        p = next;
    }
}

static void fail_waiting(ps_client *c, int err, const char *msg) {
    part *p = c->remap_head;
    c->remap_head = c->remap_tail = NULL;
    while (p) {
        part *next = p->next;
        p->next = NULL;
        part_finish(p, err, "%s", msg);
        p = next;
    }
}

/* Ask sc for its map; the answer (or failure) comes to map_part_done(). */
static void fetch_map(shard_conn *sc) {
    ps_client *c = sc->c;
    ps_call *call = call_new(c, KIND_MAP, 1);
    part *p = calloc(1, sizeof(*p));
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__ClusterMapRequest cm = CTRPS__CLUSTER_MAP_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_CLUSTER_MAP;
    req.cluster_map = &cm;
    if (call && p) {
        p->id = req.id = atomic_fetch_add(&c->next_id, 1);
        p->frame = encode(&req);
    }
    if (!call || !p || !p->frame) {
        free(p);
        if (call)
            call_free(call);
        fail_waiting(c, -ENOMEM, "fetching the cluster map: out of memory");
        return;
    }
    call->client = c;
    p->call = call;
    p->shard = sc->idx;
    c->map_fetching = true;
    atomic_fetch_add(&c->n_map_fetches, 1);
    dispatch(c, p);
}

static void map_part_done(part *p, int err, const char *msg) {
    ps_client *c = p->call->client;
    call_free(p->call);
    frame_unref(p->frame);
    free(p->pos);
    free(p);
    c->map_fetching = false;
    if (err) {
        char why[600];
        snprintf(why, sizeof(why), "WRONG_SHARD, and the newer cluster map could not be fetched: %s",
                 msg);
        fail_waiting(c, PS_EWRONG_SHARD, why);
        return;
    }
    reroute_waiting(c);
}

/* p waits on the remap list, behind the parts refused before it. Unless a
 * map fetch will re-route them, the first part to wait sets when the list
 * goes again (later ones keep that time); `retry` false: no time. */
static void remap_wait(ps_client *c, part *p, bool retry) {
    bool first = !c->remap_head;
    p->next = NULL;
    p->prev = NULL;
    if (c->remap_tail)
        c->remap_tail->next = p;
    else
        c->remap_head = p;
    c->remap_tail = p;
    if (retry && first && !c->map_fetching)
        c->remap_at_ms = uv_now(&c->loop) + REMAP_RETRY_MS;
}

/* A keyed part was refused by sc for a bucket it does not own; the shard's
 * map has this epoch. */
static void wrong_shard(shard_conn *sc, part *p, uint64_t epoch, const char *msg) {
    ps_client *c = sc->c;
    /* Same epoch everywhere and still refused: the configs disagree. */
    bool settled = epoch == c->map.version && p->epoch == c->map.version;
    if (p->hops >= MAX_HOPS || settled) {
        part_finish(p, PS_EWRONG_SHARD, "shard %u (%s): WRONG_SHARD: %s%s", sc->idx, sc->addr, msg,
                    p->hops >= MAX_HOPS ? " (re-routed too often)" : "");
        return;
    }
    p->hops++;
    if (epoch <= c->map.version && p->epoch < c->map.version && !c->map_fetching && !c->remap_head) {
        /* Routed by a map older than the one taken since: go by the new one
         * (after any part refused before it, which waits). */
        reroute(c, p);
        return;
    }
    bool newer = epoch > c->map.version;
    remap_wait(c, p, !newer);
    if (newer && !c->map_fetching)
        fetch_map(sc);
}

/* The part's buckets are moving: it waits (a pause, not a failure) and
 * goes again by the map of that moment, up to the longer of timeout_ms and
 * outage_timeout_ms. */
static void moving(shard_conn *sc, part *p, const char *msg) {
    ps_client *c = sc->c;
    uint64_t limit = c->outage_ms > c->timeout_ms ? c->outage_ms : c->timeout_ms;
    if ((uint64_t)++p->moving_waits * REMAP_RETRY_MS > limit) {
        part_finish(p, PS_EMOVING, "shard %u (%s): MOVING for %llu ms: %s", sc->idx, sc->addr,
                    (unsigned long long)limit, msg);
        return;
    }
    atomic_fetch_add(&c->n_moving_waits, 1);
    remap_wait(c, p, true);
}

/* ---- I/O thread ------------------------------------------------------------------ */

static void dispatch_list(ps_client *c, part *p) {
    while (p) {
        part *next = p->next;
        dispatch(c, p);
        p = next;
    }
}

static void drain_queue(ps_client *c) {
    pthread_mutex_lock(&c->submit_lock);
    part *p = c->queue_head;
    c->queue_head = c->queue_tail = NULL;
    pthread_mutex_unlock(&c->submit_lock);
    dispatch_list(c, p);
}

static void close_all(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) {
        bool is_tcp = h->type == UV_TCP;
        uv_close(h, is_tcp ? on_tcp_closed : NULL);
    }
}

static void on_wake(uv_async_t *a) {
    ps_client *c = a->data;
    pthread_mutex_lock(&c->submit_lock);
    ps_cluster_map offered = c->offered;
    memset(&c->offered, 0, sizeof(c->offered));
    pthread_mutex_unlock(&c->submit_lock);
    if (offered.owner)
        install_map(c, &offered);
    drain_queue(c);
    pthread_mutex_lock(&c->submit_lock);
    bool stopping = c->stopping;
    pthread_mutex_unlock(&c->submit_lock);
    if (stopping) {
        for (uint32_t i = 0; i < c->nshards; i++) {
            shard_conn *sc = c->shards[i];
            if (sc->tcp)
                ((tcp_box *)sc->tcp)->sc = NULL;
            sc->tcp = NULL;
            if (sc->resolving) {
                sc->resolving->sc = NULL;
                uv_cancel((uv_req_t *)&sc->resolving->req);
                sc->resolving = NULL;
            }
            ps_frame_reader_deinit(&sc->rd);
            fail_all(sc, PS_ECLOSED, "client closed");
        }
        fail_waiting(c, PS_ECLOSED, "client closed");
        uv_walk(&c->loop, close_all, NULL);
    }
}

/* Riding out: an attempt past its deadline counts as the shard being
 * unreachable; the outage, not a part's deadline, decides when to fail. */
static void outage_tick(shard_conn *sc, uint64_t now) {
    ps_client *c = sc->c;
    char why[256];
    if (sc->state == READY) {
        for (part *p = sc->head; p; p = p->next)
            if (now >= p->deadline_ms) {
                snprintf(why, sizeof(why), "no answer within %u ms", c->timeout_ms);
                conn_down(sc, why);
                break;
            }
    } else if (sc->state != DOWN && now >= sc->attempt_deadline_ms) {
        snprintf(why, sizeof(why), "no connection within %u ms", c->timeout_ms);
        conn_down(sc, why);
    }
    if (!sc->head) {
        sc->in_outage = false; /* nothing waits: whatever comes next starts afresh */
        return;
    }
    if (sc->state == DOWN && !sc->in_outage)
        outage_begin(sc, now);
    if (!sc->in_outage)
        return;
    if (now - sc->outage_since_ms >= c->outage_ms) {
        snprintf(why, sizeof(why), "unavailable for %llu s (outage_timeout_s); last error: %s",
                 (unsigned long long)((now - sc->outage_since_ms) / 1000), sc->last_error);
        for (part *p = sc->head; p; p = p->next)
            atomic_fetch_add(&c->n_timeouts, 1);
        fail_all(sc, PS_ETIMEOUT, why);
        sc->in_outage = false;
    } else if (now - sc->outage_reported_ms >= PS_CLIENT_OUTAGE_REPORT_MS ||
               strcmp(sc->reported_error, sc->last_error)) {
        outage_report(sc, now, false);
    }
}

static void on_timer(uv_timer_t *t) {
    ps_client *c = t->data;
    uint64_t now = uv_now(&c->loop);
    if (c->remap_head && !c->map_fetching && now >= c->remap_at_ms)
        reroute_waiting(c);
    for (uint32_t i = 0; i < c->nshards; i++) {
        shard_conn *sc = c->shards[i];
        if (c->outage_ms)
            outage_tick(sc, now);
        for (part *p = sc->head, *next; p && !c->outage_ms; p = next) {
            next = p->next;
            if (now >= p->deadline_ms) {
                list_remove(sc, p);
                atomic_fetch_add(&c->n_timeouts, 1);
                part_finish(p, PS_ETIMEOUT, "shard %u (%s): no answer within %u ms%s%s", sc->idx,
                            sc->addr, c->timeout_ms, sc->last_error[0] ? "; last error: " : "",
                            sc->last_error);
            }
        }
        if (sc->state == DOWN && sc->head && now >= sc->next_attempt_ms)
            conn_connect(sc);
    }
}

static void *io_thread(void *arg) {
    ps_client *c = arg;
    uv_run(&c->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* ---- public API -------------------------------------------------------------------- */

int ps_client_new(const ps_client_options *opts, ps_client **ret_client, char *err, size_t errlen) {
    ps_client *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->cfg = opts->cfg;
    c->client_id = opts->client_id;
    while (c->client_id == 0) {
        if (getrandom(&c->client_id, sizeof(c->client_id), 0) != sizeof(c->client_id)) {
            snprintf(err, errlen, "getrandom: %s", strerror(errno));
            free(c);
            return -errno;
        }
    }
    snprintf(c->name, sizeof(c->name), "%s", opts->name ? opts->name : "ctrps-client");
    int ar = ps_auth_load(opts->cfg->server.auth_secret_file, &c->secret, err, errlen);
    if (ar < 0) {
        free(c);
        return ar;
    }
    c->timeout_ms = opts->timeout_ms ? opts->timeout_ms : 30000;
    c->outage_ms = opts->outage_timeout_ms;
    c->on_outage = opts->on_outage;
    c->on_outage_ctx = opts->on_outage_ctx;
    c->pull_latency = opts->pull_latency;
    c->push_latency = opts->push_latency;
    c->on_event = opts->on_event;
    c->on_event_ctx = opts->on_event_ctx;
    c->rng = c->client_id | 1;
    c->max_frame = opts->max_frame_bytes ? opts->max_frame_bytes
                                         : (uint32_t)opts->cfg->server.max_frame_bytes;
    if (ps_cluster_map_from_config(opts->cfg, &c->map) < 0 ||
        grow_conns(c, opts->cfg->nshards, opts->cfg->shards) < 0) {
        free_conns(c);
        ps_cluster_map_deinit(&c->map);
        free(c);
        return -ENOMEM;
    }
    c->next_seq = 1;
    atomic_init(&c->next_id, HELLO_ID + 1);
    pthread_mutex_init(&c->submit_lock, NULL);
    pthread_mutex_init(&c->ckpt_lock, NULL);
    pthread_mutex_init(&c->map_lock, NULL);
    int r = uv_loop_init(&c->loop);
    if (r < 0) {
        snprintf(err, errlen, "event loop: %s", uv_strerror(r));
        free_conns(c);
        ps_cluster_map_deinit(&c->map);
        free(c);
        return r;
    }
    uv_async_init(&c->loop, &c->wake, on_wake);
    c->wake.data = c;
    uv_timer_init(&c->loop, &c->timer);
    c->timer.data = c;
    uv_timer_start(&c->timer, on_timer, TIMER_MS, TIMER_MS);
    /* A write to a shard that just died raises SIGPIPE, whose default action
     * kills the whole process (the CLI, a test) instead of letting the client
     * reconnect. Only the I/O thread writes to sockets, so it starts with
     * SIGPIPE blocked: the write fails with EPIPE and the signal stays
     * pending on that thread, harmless. The caller's disposition is left as
     * it is: a library does not change process-wide signal handling. */
    sigset_t pipe_set, old_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
    r = pthread_create(&c->thread, NULL, io_thread, c);
    pthread_sigmask(SIG_SETMASK, &old_set, NULL);
    if (r != 0) {
        snprintf(err, errlen, "thread: %s", strerror(r));
        ps_client_free(c);
        return -r;
    }
    c->thread_started = true;
    *ret_client = c;
    return 0;
}

void ps_client_free(ps_client *c) {
    if (!c)
        return;
    if (c->thread_started) {
        pthread_mutex_lock(&c->submit_lock);
        c->stopping = true;
        pthread_mutex_unlock(&c->submit_lock);
        uv_async_send(&c->wake);
        pthread_join(c->thread, NULL);
    } else {
        uv_walk(&c->loop, close_all, NULL);
        uv_run(&c->loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&c->loop);
    pthread_mutex_destroy(&c->submit_lock);
    pthread_mutex_destroy(&c->ckpt_lock);
    pthread_mutex_destroy(&c->map_lock);
    ps_auth_wipe(&c->secret);
    free_conns(c);
    ps_cluster_map_deinit(&c->map);
    ps_cluster_map_deinit(&c->offered);
    free(c);
}

uint64_t ps_client_id(const ps_client *c) { return c->client_id; }

int ps_client_offer_map(ps_client *c, const ps_cluster_map *m) {
    ps_cluster_map copy;
    int r = ps_cluster_map_copy(m, &copy);
    if (r < 0)
        return r;
    pthread_mutex_lock(&c->submit_lock);
    ps_cluster_map_deinit(&c->offered);
    c->offered = copy;
    pthread_mutex_unlock(&c->submit_lock);
    uv_async_send(&c->wake);
    /* The I/O thread takes it at its next wakeup: wait for that. */
    for (int i = 0; i < 5000; i++) {
        pthread_mutex_lock(&c->map_lock);
        bool took = c->map.version >= m->version;
        pthread_mutex_unlock(&c->map_lock);
        pthread_mutex_lock(&c->submit_lock);
        bool pending = c->offered.owner != NULL;
        pthread_mutex_unlock(&c->submit_lock);
        if (took || !pending)
            return 0;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return PS_ETIMEOUT;
}

void ps_client_checkpoint_pending(ps_client *c, char *ret, size_t len) {
    pthread_mutex_lock(&c->ckpt_lock);
    snprintf(ret, len, "%s", c->ckpt_pending);
    pthread_mutex_unlock(&c->ckpt_lock);
}

uint32_t ps_client_shards_ready(ps_client *c, uint32_t *ret_total) {
    pthread_mutex_lock(&c->map_lock);
    *ret_total = (uint32_t)c->map.nshards;
    pthread_mutex_unlock(&c->map_lock);
    return atomic_load(&c->n_ready);
}

void ps_client_counters_get(ps_client *c, ps_client_counters *ret) {
    ret->requests = atomic_load(&c->n_requests);
    ret->reconnects = atomic_load(&c->n_reconnects);
    ret->resent = atomic_load(&c->n_resent);
    ret->timeouts = atomic_load(&c->n_timeouts);
    ret->outages = atomic_load(&c->n_outages);
    ret->rerouted = atomic_load(&c->n_rerouted);
    ret->map_fetches = atomic_load(&c->n_map_fetches);
    ret->moving_waits = atomic_load(&c->n_moving_waits);
    pthread_mutex_lock(&c->map_lock);
    ret->map_version = c->map.version;
    pthread_mutex_unlock(&c->map_lock);
}

/* Queue parts for the I/O thread. Called with submit_lock held. */
static int enqueue_locked(ps_client *c, part **parts, int nparts) {
    if (c->stopping)
        return PS_ECLOSED;
    for (int i = 0; i < nparts; i++) {
        parts[i]->next = NULL;
        if (c->queue_tail)
            c->queue_tail->next = parts[i];
        else
            c->queue_head = parts[i];
        c->queue_tail = parts[i];
    }
    atomic_fetch_add(&c->n_requests, (uint64_t)nparts);
    return 0;
}

/* Split keys by owning shard under the client's map: per shard, the
 * positions of its keys. */
typedef struct split {
    uint32_t ns;                 /* shards in the map it was made by */
    uint64_t epoch;              /* that map's */
    uint32_t *count;             /* per shard */
    uint32_t **pos;              /* per shard, owned until moved into a part */
    uint64_t **keys;             /* per shard */
} split;

static void split_free(split *sp, uint32_t nshards) {
    for (uint32_t s = 0; s < nshards; s++) {
        if (sp->pos)
            free(sp->pos[s]);
        if (sp->keys)
            free(sp->keys[s]);
    }
    free(sp->count);
    free(sp->pos);
    free(sp->keys);
}

static int split_keys(ps_client *c, const uint64_t *keys, size_t n, split *sp) {
    memset(sp, 0, sizeof(*sp));
    pthread_mutex_lock(&c->map_lock);
    uint32_t ns = (uint32_t)c->map.nshards;
    sp->ns = ns;
    sp->epoch = c->map.version;
    sp->count = calloc(ns, sizeof(uint32_t));
    sp->pos = calloc(ns, sizeof(uint32_t *));
    sp->keys = calloc(ns, sizeof(uint64_t *));
    uint32_t *owner = malloc(n * sizeof(uint32_t) + 1);
    if (!sp->count || !sp->pos || !sp->keys || !owner || n > UINT32_MAX) {
        pthread_mutex_unlock(&c->map_lock);
        free(owner);
        split_free(sp, ns);
        return -ENOMEM;
    }
    /* One shard owns every bucket (ps_cluster_map_check): no key to hash. */
    for (size_t i = 0; i < n; i++) {
        owner[i] = ns == 1 ? 0 : ps_cluster_map_key_owner(&c->map, keys[i]);
        sp->count[owner[i]]++;
    }
    pthread_mutex_unlock(&c->map_lock);
    for (uint32_t s = 0; s < ns; s++) {
        if (!sp->count[s])
            continue;
        sp->pos[s] = malloc(sp->count[s] * sizeof(uint32_t));
        sp->keys[s] = malloc(sp->count[s] * sizeof(uint64_t));
        if (!sp->pos[s] || !sp->keys[s]) {
            free(owner);
            split_free(sp, ns);
            return -ENOMEM;
        }
        sp->count[s] = 0;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t s = owner[i];
        sp->pos[s][sp->count[s]] = (uint32_t)i;
        sp->keys[s][sp->count[s]++] = keys[i];
    }
    free(owner);
    return 0;
}

typedef struct keyed_args {
    part_kind kind;
    const char *table;
    uint32_t dim;
    const float *grads;          /* push */
    bool with_state;             /* lookup */
} keyed_args;

/* Build one request per shard, then enqueue them all (with the push
 * sequence number assigned under the same lock). */
static int start_keyed(ps_client *c, const keyed_args *a, split sp, ps_call *call,
                       ps_call **ret_call) {
    int r;
    part **parts = calloc(sp.ns, sizeof(part *));
    float *gbuf = NULL;
    int nparts = 0;
    r = -ENOMEM;
    if (!parts)
        goto fail;
    pthread_mutex_lock(&c->submit_lock);
    uint64_t seq = a->kind == KIND_PUSH ? c->next_seq : 0;
    for (uint32_t s = 0; s < sp.ns; s++) {
        if (!sp.count[s])
            continue;
        part *p = calloc(1, sizeof(*p));
        if (!p)
            goto fail_locked;
        parts[nparts++] = p;
        p->call = call;
        p->shard = s;
        p->epoch = sp.epoch;
        p->n = sp.count[s];
        p->pos = sp.pos[s];
        sp.pos[s] = NULL;
        p->id = atomic_fetch_add(&c->next_id, 1);
        Ctrps__Request req = CTRPS__REQUEST__INIT;
        req.id = p->id;
        Ctrps__PullRequest pull = CTRPS__PULL_REQUEST__INIT;
        Ctrps__PushRequest push = CTRPS__PUSH_REQUEST__INIT;
        Ctrps__LookupRequest lookup = CTRPS__LOOKUP_REQUEST__INIT;
        if (PS_WIRE_IN_PLACE && (a->kind == KIND_PULL || a->kind == KIND_PUSH)) {
            bool is_push = a->kind == KIND_PUSH;
            ps_wire_keyed k = {
                .id = p->id,
                .method = is_push ? PS_WIRE_PUSH : PS_WIRE_PULL,
                .table = (const uint8_t *)a->table,
                .table_len = strlen(a->table),
                .keys = (const uint8_t *)sp.keys[s],
                .n_keys = p->n,
                .n_grads = is_push ? p->n * a->dim : 0,
                .client_id = is_push ? c->client_id : 0,
                .seq = seq,
            };
            p->frame = encode_keyed(&k, a->grads, p->pos, a->dim);
            if (!p->frame)
                goto fail_locked;
            continue;
        }
        switch (a->kind) {
        case KIND_PULL:
            pull.table = (char *)a->table;
            pull.n_keys = p->n;
            pull.keys = sp.keys[s];
            req.method_case = CTRPS__REQUEST__METHOD_PULL;
            req.pull = &pull;
            break;
        case KIND_PUSH:
            free(gbuf);
            gbuf = malloc(p->n * a->dim * sizeof(float));
            if (!gbuf)
                goto fail_locked;
            for (size_t i = 0; i < p->n; i++)
                memcpy(gbuf + i * a->dim, a->grads + (size_t)p->pos[i] * a->dim, a->dim * sizeof(float));
            push.table = (char *)a->table;
            push.n_keys = p->n;
            push.keys = sp.keys[s];
            push.n_grads = p->n * a->dim;
            push.grads = gbuf;
            push.client_id = c->client_id;
            push.seq = seq;
            req.method_case = CTRPS__REQUEST__METHOD_PUSH;
            req.push = &push;
            break;
        case KIND_LOOKUP:
            lookup.table = (char *)a->table;
            lookup.n_keys = p->n;
            lookup.keys = sp.keys[s];
            lookup.with_state = a->with_state;
            req.method_case = CTRPS__REQUEST__METHOD_LOOKUP;
            req.lookup = &lookup;
            break;
        case KIND_RAW:
        case KIND_DENSE_PULL:
        case KIND_DENSE_PUSH:
        case KIND_MAP:
            break; /* not keyed: see ps_client_call_shard() and start_dense() */
        }
        p->frame = encode(&req);
        if (!p->frame)
            goto fail_locked;
    }
    r = enqueue_locked(c, parts, nparts);
    if (r < 0)
        goto fail_locked;
    if (a->kind == KIND_PUSH)
        c->next_seq++;
    pthread_mutex_unlock(&c->submit_lock);
    uv_async_send(&c->wake);
    free(gbuf);
    free(parts);
    split_free(&sp, sp.ns);
    *ret_call = call;
    return 0;
fail_locked:
    pthread_mutex_unlock(&c->submit_lock);
fail:
    for (int i = 0; i < nparts; i++) {
        if (parts[i]->frame)
            free(parts[i]->frame);
        free(parts[i]->pos);
        free(parts[i]);
    }
    free(parts);
    free(gbuf);
    split_free(&sp, sp.ns);
    call_free(call);
    return r;
}

static int start(ps_client *c, const keyed_args *a, const uint64_t *keys, size_t n, float *values,
                 uint8_t *found, float *state, uint32_t width, ps_call **ret_call) {
    split sp;
    int r = split_keys(c, keys, n, &sp);
    if (r < 0)
        return r;
    int nparts = 0; /* the call counts down one per shard involved */
    for (uint32_t s = 0; s < sp.ns; s++)
        nparts += sp.count[s] > 0;
    ps_call *call = call_new(c, a->kind, nparts);
    if (!call) {
        split_free(&sp, sp.ns);
        return -ENOMEM;
    }
    call->dim = a->dim;
    call->width = width;
    call->values = values;
    call->found = found;
    call->state = state;
    if (nparts == 0) {
        split_free(&sp, sp.ns);
        *ret_call = call;
        return 0;
    }
    return start_keyed(c, a, sp, call, ret_call);
}

int ps_client_pull_start(ps_client *c, const char *table, uint32_t dim, const uint64_t *keys,
                         size_t n, float *ret_values, ps_call **ret_call) {
    keyed_args a = {.kind = KIND_PULL, .table = table, .dim = dim};
    return start(c, &a, keys, n, ret_values, NULL, NULL, 0, ret_call);
}

int ps_client_push_start(ps_client *c, const char *table, uint32_t dim, const uint64_t *keys,
                         size_t n, const float *grads, ps_call **ret_call) {
    keyed_args a = {.kind = KIND_PUSH, .table = table, .dim = dim, .grads = grads};
    return start(c, &a, keys, n, NULL, NULL, NULL, 0, ret_call);
}

int ps_client_lookup_start(ps_client *c, const char *table, uint32_t dim, uint32_t state_width,
                           const uint64_t *keys, size_t n, uint8_t *ret_found, float *ret_values,
                           float *ret_state, ps_call **ret_call) {
    keyed_args a = {.kind = KIND_LOOKUP, .table = table, .dim = dim, .with_state = ret_state != NULL};
    return start(c, &a, keys, n, ret_values, ret_found, ret_state, state_width, ret_call);
}

bool ps_call_done(ps_call *call) {
    pthread_mutex_lock(&call->mu);
    bool done = call->remaining == 0;
    pthread_mutex_unlock(&call->mu);
    return done;
}

void ps_call_push_result(ps_call *call, uint64_t *ret_applied, uint64_t *ret_dropped) {
    pthread_mutex_lock(&call->mu);
    *ret_applied = call->applied;
    *ret_dropped = call->dropped;
    pthread_mutex_unlock(&call->mu);
}

/* Wait for every part; the call stays allocated. */
static int call_wait_keep(ps_call *call, char *err, size_t errlen) {
    pthread_mutex_lock(&call->mu);
    while (call->remaining > 0)
        pthread_cond_wait(&call->cv, &call->mu);
    int r = call->err;
    if (r && err)
        snprintf(err, errlen, "%s", call->msg);
    pthread_mutex_unlock(&call->mu);
    return r;
}

int ps_call_wait(ps_call *call, char *err, size_t errlen) {
    int r = call_wait_keep(call, err, errlen);
    call_free(call);
    return r;
}

int ps_client_pull(ps_client *c, const char *table, uint32_t dim, const uint64_t *keys, size_t n,
                   float *ret_values, char *err, size_t errlen) {
    ps_call *call;
    int r = ps_client_pull_start(c, table, dim, keys, n, ret_values, &call);
    if (r < 0) {
        snprintf(err, errlen, "%s", ps_strerror(r));
        return r;
    }
    return ps_call_wait(call, err, errlen);
}

int ps_client_push(ps_client *c, const char *table, uint32_t dim, const uint64_t *keys, size_t n,
                   const float *grads, uint64_t *ret_applied, uint64_t *ret_dropped, char *err,
                   size_t errlen) {
    ps_call *call;
    int r = ps_client_push_start(c, table, dim, keys, n, grads, &call);
    if (r < 0) {
        snprintf(err, errlen, "%s", ps_strerror(r));
        return r;
    }
    r = call_wait_keep(call, err, errlen);
    uint64_t applied, dropped;
    ps_call_push_result(call, &applied, &dropped);
    call_free(call);
    if (ret_applied)
        *ret_applied = applied;
    if (ret_dropped)
        *ret_dropped = dropped;
    return r;
}

int ps_client_lookup(ps_client *c, const char *table, uint32_t dim, uint32_t state_width,
                     const uint64_t *keys, size_t n, uint8_t *ret_found, float *ret_values,
                     float *ret_state, char *err, size_t errlen) {
    ps_call *call;
    int r = ps_client_lookup_start(c, table, dim, state_width, keys, n, ret_found, ret_values,
                                   ret_state, &call);
    if (r < 0) {
        snprintf(err, errlen, "%s", ps_strerror(r));
        return r;
    }
    return ps_call_wait(call, err, errlen);
}

/* One part per home shard; pos[] holds the indices of that shard's blocks. */
static int start_dense(ps_client *c, part_kind kind, ps_dense_block *blocks, size_t n, bool create,
                       ps_call **ret_call) {
    /* Dense blocks stay on the config's shards: the map moves buckets only. */
    uint32_t ns = c->cfg->nshards;
    uint32_t *home = malloc((n + 1) * sizeof(uint32_t));
    uint32_t *count = calloc(ns, sizeof(uint32_t));
    part **parts = calloc(ns, sizeof(part *));
    int nparts = 0, r = -ENOMEM;
    ps_call *call = NULL;
    if (!home || !count || !parts)
        goto out;
    for (size_t i = 0; i < n; i++) {
        home[i] = ps_dense_home(blocks[i].name, ns);
        if (count[home[i]]++ == 0)
            nparts++;
    }
    call = call_new(c, kind, nparts);
    if (!call)
        goto out;
    call->blocks = blocks;
    int made = 0;
    pthread_mutex_lock(&c->submit_lock);
    uint64_t seq = kind == KIND_DENSE_PUSH ? c->next_seq : 0;
    for (uint32_t s = 0; s < ns; s++) {
        if (!count[s])
            continue;
        part *p = calloc(1, sizeof(*p));
        Ctrps__DenseBlock *db = calloc(count[s], sizeof(*db));
        Ctrps__DenseBlock **dbp = calloc(count[s], sizeof(*dbp));
        char **names = calloc(count[s], sizeof(char *));
        if (p)
            parts[made++] = p;
        if (!p || !db || !dbp || !names || !(p->pos = malloc(count[s] * sizeof(uint32_t)))) {
            free(db);
            free(dbp);
            free(names);
            goto fail_locked;
        }
        p->call = call;
        p->shard = s;
        p->id = atomic_fetch_add(&c->next_id, 1);
        for (size_t i = 0; i < n; i++) {
            if (home[i] != s)
                continue;
            ctrps__dense_block__init(&db[p->n]);
            db[p->n].name = (char *)blocks[i].name;
            db[p->n].n_values = blocks[i].len;
            db[p->n].values = blocks[i].values;
            dbp[p->n] = &db[p->n];
            names[p->n] = (char *)blocks[i].name;
            p->pos[p->n++] = (uint32_t)i;
        }
        Ctrps__Request req = CTRPS__REQUEST__INIT;
        Ctrps__DensePullRequest pull = CTRPS__DENSE_PULL_REQUEST__INIT;
        Ctrps__DensePushRequest push = CTRPS__DENSE_PUSH_REQUEST__INIT;
        req.id = p->id;
        if (kind == KIND_DENSE_PULL) {
            pull.n_names = p->n;
            pull.names = names;
            if (create) {
                pull.n_init = p->n;
                pull.init = dbp;
            }
            req.method_case = CTRPS__REQUEST__METHOD_DENSE_PULL;
            req.dense_pull = &pull;
        } else {
            push.n_grads = p->n;
            push.grads = dbp;
            push.client_id = c->client_id;
            push.seq = seq;
            req.method_case = CTRPS__REQUEST__METHOD_DENSE_PUSH;
            req.dense_push = &push;
        }
        p->frame = encode(&req);
        free(db);
        free(dbp);
        free(names);
        if (!p->frame)
            goto fail_locked;
    }
    r = enqueue_locked(c, parts, made);
    if (r < 0)
        goto fail_locked;
    if (kind == KIND_DENSE_PUSH)
        c->next_seq++;
    pthread_mutex_unlock(&c->submit_lock);
    uv_async_send(&c->wake);
    *ret_call = call;
    call = NULL;
    r = 0;
    goto out;
fail_locked:
    pthread_mutex_unlock(&c->submit_lock);
    for (int i = 0; i < made; i++) {
        free(parts[i]->frame);
        free(parts[i]->pos);
        free(parts[i]);
    }
out:
    if (call)
        call_free(call);
    free(home);
    free(count);
    free(parts);
    return r;
}

int ps_client_dense_pull(ps_client *c, ps_dense_block *blocks, size_t n, bool create, char *err,
                         size_t errlen) {
    ps_call *call;
    int r = start_dense(c, KIND_DENSE_PULL, blocks, n, create, &call);
    if (r < 0) {
        snprintf(err, errlen, "%s", ps_strerror(r));
        return r;
    }
    return ps_call_wait(call, err, errlen);
}

int ps_client_dense_pull_start(ps_client *c, ps_dense_block *blocks, size_t n, ps_call **ret_call) {
    return start_dense(c, KIND_DENSE_PULL, blocks, n, false, ret_call);
}

int ps_client_dense_push_start(ps_client *c, const ps_dense_block *grads, size_t n,
                               ps_call **ret_call) {
    return start_dense(c, KIND_DENSE_PUSH, (ps_dense_block *)grads, n, false, ret_call);
}

/* ---- calls to one shard -------------------------------------------------------- */

/* Send one request to one shard; ps_client_call_finish() waits for the
 * answer. The request's id is set here. Requests to one shard reach it in
 * the order they were started, resent in that order after a reconnect. */
int ps_client_call_start(ps_client *c, uint32_t shard, Ctrps__Request *req, ps_call **ret_call,
                         char *err, size_t errlen) {
    pthread_mutex_lock(&c->map_lock);
    uint32_t nconns = c->nshards;
    pthread_mutex_unlock(&c->map_lock);
    if (shard >= nconns) {
        snprintf(err, errlen, "no shard %u (the cluster has %u)", shard, nconns);
        return -EINVAL;
    }
    ps_call *call = call_new(c, KIND_RAW, 1);
    part *p = calloc(1, sizeof(*p));
    if (!call || !p) {
        free(p);
        if (call)
            call_free(call);
        return -ENOMEM;
    }
    p->call = call;
    p->shard = shard;
    p->id = atomic_fetch_add(&c->next_id, 1);
    req->id = p->id;
    p->frame = encode(req);
    if (!p->frame) {
        free(p);
        call_free(call);
        return -ENOMEM;
    }
    pthread_mutex_lock(&c->submit_lock);
    int r = enqueue_locked(c, &p, 1);
    pthread_mutex_unlock(&c->submit_lock);
    if (r < 0) {
        free(p->frame);
        free(p);
        call_free(call);
        snprintf(err, errlen, "%s", ps_strerror(r));
        return r;
    }
    uv_async_send(&c->wake);
    *ret_call = call;
    return 0;
}

/* Wait for a started call's answer, which must be OK and hold `want`;
 * *ret_resp (NULL: not wanted) is the caller's, freed with
 * ctrps__response__free_unpacked(). The call is freed. */
int ps_client_call_finish(ps_call *call, uint32_t shard, Ctrps__Response__ResultCase want,
                          Ctrps__Response **ret_resp, char *err, size_t errlen) {
    int r = call_wait_keep(call, err, errlen);
    if (r == 0 && call->raw->result_case != want) {
        snprintf(err, errlen, "shard %u answered with another result than asked for", shard);
        r = PS_EPROTO;
    }
    if (r == 0 && ret_resp) {
        *ret_resp = call->raw;
        call->raw = NULL;
    }
    call_free(call);
    return r;
}

/* Send one request to one shard and wait for its answer, which must hold
 * `want`. The request's id is set here; *ret_resp is the caller's, freed
 * with ctrps__response__free_unpacked(). */
static int call_shard(ps_client *c, uint32_t shard, Ctrps__Request *req,
                      Ctrps__Response__ResultCase want, Ctrps__Response **ret_resp, char *err,
                      size_t errlen) {
    ps_call *call;
    int r = ps_client_call_start(c, shard, req, &call, err, errlen);
    return r < 0 ? r : ps_client_call_finish(call, shard, want, ret_resp, err, errlen);
}

void ps_client_keep_freed_memory(void) {
    /* Blocks below 32 MiB (glibc's own ceiling for its adaptive threshold)
     * from the heap, and up to 128 MiB free at its top kept. */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 128 << 20);
}

static char *dup_str(const char *s) { return strdup(s ? s : ""); }

int ps_client_stats(ps_client *c, uint32_t shard, ps_shard_stats *ret_stats, char *err,
                    size_t errlen) {
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__StatsRequest sr = CTRPS__STATS_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_STATS;
    req.stats = &sr;
    Ctrps__Response *resp;
    int r = call_shard(c, shard, &req, CTRPS__RESPONSE__RESULT_STATS, &resp, err, errlen);
    if (r < 0)
        return r;
    const Ctrps__StatsResponse *x = resp->stats;
    ps_shard_stats s = {.shard_id = x->shard_id,
                        .rocksdb_bytes = x->rocksdb_bytes,
                        .rocksdb_pending_compaction_bytes = x->rocksdb_pending_compaction_bytes,
                        .rocksdb_running_compactions = x->rocksdb_running_compactions};
    s.durability = dup_str(x->durability);
    s.store_error = dup_str(x->store_error);
    s.tables = calloc(x->n_tables + 1, sizeof(*s.tables));
    s.counters = calloc(x->n_counters + 1, sizeof(*s.counters));
    bool ok = s.durability && s.store_error && s.tables && s.counters;
    for (size_t i = 0; ok && i < x->n_tables; i++) {
        const Ctrps__TableStats *t = x->tables[i];
        ps_named_table_stats *d = &s.tables[s.ntables++];
#define COPY_STAT(name, type, metric, help) d->stats.name = t->name;
        PS_TABLE_STATS_MAP(COPY_STAT)
#undef COPY_STAT
        ok = (d->name = dup_str(t->name)) != NULL;
    }
    for (size_t i = 0; ok && i < x->n_counters; i++) {
        ps_counter *d = &s.counters[s.ncounters++];
        d->value = x->counters[i]->value;
        ok = (d->name = dup_str(x->counters[i]->name)) != NULL;
    }
    ctrps__response__free_unpacked(resp, NULL);
    if (!ok) {
        ps_shard_stats_deinit(&s);
        snprintf(err, errlen, "%s", ps_strerror(-ENOMEM));
        return -ENOMEM;
    }
    *ret_stats = s;
    return 0;
}

void ps_shard_stats_deinit(ps_shard_stats *s) {
    for (size_t i = 0; s->tables && i < s->ntables; i++)
        free(s->tables[i].name);
    for (size_t i = 0; s->counters && i < s->ncounters; i++)
        free(s->counters[i].name);
    free(s->tables);
    free(s->counters);
    free(s->durability);
    free(s->store_error);
    memset(s, 0, sizeof(*s));
}

int ps_client_export_page(ps_client *c, uint32_t shard, const char *table, uint32_t limit,
                          bool with_state, ps_export_cursor *cursor, ps_export_page *ret_page,
                          char *err, size_t errlen) {
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__ExportRequest ex = CTRPS__EXPORT_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_EXPORT;
    req.export = &ex;
    ex.table = (char *)table;
    ex.after.data = cursor->b;
    ex.after.len = cursor->len;
    ex.limit = limit;
    ex.with_state = with_state;
    Ctrps__Response *resp;
    int r = call_shard(c, shard, &req, CTRPS__RESPONSE__RESULT_EXPORT, &resp, err, errlen);
    if (r < 0)
        return r;
    const Ctrps__ExportResponse *e = resp->export;
    size_t n = e->n_keys;
    if (e->n_values != n * e->dim || (with_state && e->n_state != n * e->state_dim)) {
        ctrps__response__free_unpacked(resp, NULL);
        snprintf(err, errlen, "shard %u: export page of %zu keys with %zu values (dim %u)", shard, n,
                 e->n_values, e->dim);
        return PS_EPROTO;
    }
    ps_export_page pg = {.n = n, .dim = e->dim, .done = e->done};
    pg.keys = malloc(n * sizeof(uint64_t) + 1);
    pg.values = malloc(e->n_values * sizeof(float) + 1);
    if (with_state) {
        pg.state_dim = e->state_dim;
        pg.state = malloc(e->n_state * sizeof(float) + 1);
    }
    if (!pg.keys || !pg.values || (with_state && !pg.state)) {
        ctrps__response__free_unpacked(resp, NULL);
        ps_export_page_deinit(&pg);
        snprintf(err, errlen, "%s", ps_strerror(-ENOMEM));
        return -ENOMEM;
    }
    /* An empty page carries NULL arrays: memcpy() must not see them. */
    if (n)
        memcpy(pg.keys, e->keys, n * sizeof(uint64_t));
    if (e->n_values)
        memcpy(pg.values, e->values, e->n_values * sizeof(float));
    if (with_state && e->n_state)
        memcpy(pg.state, e->state, e->n_state * sizeof(float));
    /* A cursor longer than ours cannot be followed: start over would loop,
     * so the walk ends with this page's rows (as the CLI always did). */
    cursor->len = e->next.len <= sizeof(cursor->b) ? e->next.len : 0;
    if (cursor->len)
        memcpy(cursor->b, e->next.data, cursor->len);
    ctrps__response__free_unpacked(resp, NULL);
    *ret_page = pg;
    return 0;
}

void ps_export_page_deinit(ps_export_page *p) {
    free(p->keys);
    free(p->values);
    free(p->state);
    memset(p, 0, sizeof(*p));
}

static int cluster_map_call(ps_client *c, uint32_t shard, const ps_cluster_map *install,
                            ps_cluster_map *ret_map, char *err, size_t errlen) {
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__ClusterMapRequest cm = CTRPS__CLUSTER_MAP_REQUEST__INIT;
    Ctrps__ClusterMapResponse wire;
    req.method_case = CTRPS__REQUEST__METHOD_CLUSTER_MAP;
    req.cluster_map = &cm;
    if (install) {
        ps_rpc_map_to_wire(install, &wire);
        cm.install = &wire;
    }
    Ctrps__Response *resp;
    int r = call_shard(c, shard, &req, CTRPS__RESPONSE__RESULT_CLUSTER_MAP, &resp, err, errlen);
    if (r < 0)
        return r;
    ps_cluster_map m;
    char why[200];
    r = ps_rpc_map_from_wire(resp->cluster_map, &m, why, sizeof(why));
    ctrps__response__free_unpacked(resp, NULL);
    if (r < 0) {
        snprintf(err, errlen, "shard %u: %s", shard, why);
        return r;
    }
    if (ret_map)
        *ret_map = m;
    else
        ps_cluster_map_deinit(&m);
    return 0;
}

int ps_client_cluster_map(ps_client *c, uint32_t shard, ps_cluster_map *ret_map, char *err,
                          size_t errlen) {
    return cluster_map_call(c, shard, NULL, ret_map, err, errlen);
}

int ps_client_install_map(ps_client *c, uint32_t shard, const ps_cluster_map *map,
                          ps_cluster_map *ret_map, char *err, size_t errlen) {
    return cluster_map_call(c, shard, map, ret_map, err, errlen);
}

static Ctrps__CheckpointRequest__Phase wire_phase(ps_checkpoint_phase p) {
    switch (p) {
    case PS_CHECKPOINT_BEGIN:
        return CTRPS__CHECKPOINT_REQUEST__PHASE__BEGIN;
    case PS_CHECKPOINT_REPORT:
        return CTRPS__CHECKPOINT_REQUEST__PHASE__REPORT;
    case PS_CHECKPOINT_TAKE:
        return CTRPS__CHECKPOINT_REQUEST__PHASE__TAKE;
    case PS_CHECKPOINT_END:
        return CTRPS__CHECKPOINT_REQUEST__PHASE__END;
    case PS_CHECKPOINT_STATUS:
    default:
        return CTRPS__CHECKPOINT_REQUEST__PHASE__STATUS;
    }
}

int ps_client_checkpoint(ps_client *c, uint32_t shard, const ps_checkpoint_request *creq,
                         ps_checkpoint_reply *ret_reply, char *err, size_t errlen) {
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__CheckpointRequest cr = CTRPS__CHECKPOINT_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_CHECKPOINT;
    req.checkpoint = &cr;
    cr.phase = wire_phase(creq->phase);
    cr.id = (char *)(creq->id ? creq->id : "");
    cr.dir = (char *)(creq->dir ? creq->dir : "");
    cr.client_id = creq->client_id;
    cr.worker = (char *)(creq->worker ? creq->worker : "");
    cr.position = (char *)(creq->position ? creq->position : "");
    Ctrps__Response *resp;
    int r = call_shard(c, shard, &req, CTRPS__RESPONSE__RESULT_CHECKPOINT, &resp, err, errlen);
    if (r < 0 || !ret_reply) {
        if (r == 0)
            ctrps__response__free_unpacked(resp, NULL);
        return r;
    }
    const Ctrps__CheckpointResponse *x = resp->checkpoint;
    ps_checkpoint_reply rep = {.flushed_lsn = x->flushed_lsn};
    rep.pending = dup_str(x->pending);
    rep.path = dup_str(x->path);
    rep.connected_workers = malloc(x->n_connected_workers * sizeof(uint64_t) + 1);
    rep.reports = calloc(x->n_reports + 1, sizeof(*rep.reports));
    bool ok = rep.pending && rep.path && rep.connected_workers && rep.reports;
    if (ok) {
        if (x->n_connected_workers) /* none: the array is NULL */
            memcpy(rep.connected_workers, x->connected_workers,
                   x->n_connected_workers * sizeof(uint64_t));
        rep.nconnected = x->n_connected_workers;
    }
    for (size_t i = 0; ok && i < x->n_reports; i++) {
        ps_worker_report *d = &rep.reports[rep.nreports++];
        d->client_id = x->reports[i]->client_id;
        d->worker = dup_str(x->reports[i]->worker);
        d->position = dup_str(x->reports[i]->position);
        ok = d->worker && d->position;
    }
    ctrps__response__free_unpacked(resp, NULL);
    if (!ok) {
        ps_checkpoint_reply_deinit(&rep);
        snprintf(err, errlen, "%s", ps_strerror(-ENOMEM));
        return -ENOMEM;
    }
    *ret_reply = rep;
    return 0;
}

void ps_checkpoint_reply_deinit(ps_checkpoint_reply *r) {
    for (size_t i = 0; r->reports && i < r->nreports; i++) {
        free(r->reports[i].worker);
        free(r->reports[i].position);
    }
    free(r->reports);
    free(r->connected_workers);
    free(r->pending);
    free(r->path);
    memset(r, 0, sizeof(*r));
}
