#include "net.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "addr.h"
#include "error.h"
#include "frame.h"
#include "log.h"
#include "metrics.h"
#include "promtext.h"
#include "rpc.h"

#define TICK_MS 10

/* XX(field, type, metric, reason, help): the network layer's counters, by
 * their Stats name and their Prometheus family (a non-empty reason is the
 * value of that family's "reason" label). */
#define NET_COUNTER_MAP(XX)                                                                   \
    XX(connections_accepted, COUNTER, "ctrps_connections_accepted_total", "",                 \
       "connections accepted")                                                                \
    XX(connections_open, GAUGE, "ctrps_connections_open", "", "connections open now")         \
    XX(connections_rejected, COUNTER, "ctrps_connections_rejected_total", "",                 \
       "connections refused at accept (max_connections)")                                     \
    XX(connections_closed_bad_frame, COUNTER, "ctrps_connections_closed_total", "bad_frame",  \
       "connections the shard closed, by reason")                                             \
    XX(connections_closed_idle, COUNTER, "ctrps_connections_closed_total", "idle",            \
       "connections the shard closed, by reason")                                             \
    XX(connections_closed_log_error, COUNTER, "ctrps_connections_closed_total", "log_error",  \
       "connections the shard closed, by reason")                                             \
    XX(connections_closed_auth, COUNTER, "ctrps_connections_closed_total", "auth",            \
       "connections the shard closed, by reason")                                             \
    XX(frames_too_large, COUNTER, "ctrps_frames_too_large_total", "",                         \
       "frames refused for exceeding max_frame_bytes")                                        \
    XX(reads_paused, COUNTER, "ctrps_reads_paused_total", "",                                 \
       "times a connection's reads paused for unsent replies")                                \
    XX(reads_paused_inflight, COUNTER, "ctrps_reads_paused_inflight_total", "",               \
       "times a connection's reads paused for requests in flight")                            \
    XX(frames_deferred, COUNTER, "ctrps_frames_deferred_total", "",                           \
       "times a connection's frames waited for the next loop turn (the turn's budget was spent)") \
    XX(bytes_in, COUNTER, "ctrps_network_received_bytes_total", "", "bytes read from clients") \
    XX(bytes_out, COUNTER, "ctrps_network_sent_bytes_total", "", "bytes written to clients")

typedef struct net_counters {
#define NET_FIELD(name, type, metric, reason, help) uint64_t name;
    NET_COUNTER_MAP(NET_FIELD)
#undef NET_FIELD
} net_counters;

typedef struct conn conn;

#define STATUS_LIMITS 16

/* A connection's replies wait in one of two queues: OUT, those not yet
 * handed to a log write, and HELD, those awaiting the log write in flight.
 * A connection with replies in a queue is on the server's list for it
 * (srv->queued[q]); the lists outlive a loop turn while a write is in
 * flight, and a connection that closes leaves them at once. */
typedef enum { OUT, HELD, NQUEUES } queue_id;

/* A loop turn handles pushes until this many bytes of them, then lets its
 * check phase hand their log records to the writer, and handles the rest
 * one turn later. Without the bound, a turn handled every push a client
 * had in flight, and their replies all waited for the one log write of the
 * turn's end: the client got them in a burst, sent the next requests in a
 * burst, and the loop idled in between. Other requests do not count: their
 * replies wait for no write (a turn of pulls is answered at its end). */
#define TURN_BYTES (256u << 10)

typedef struct reply_queue {
    ps_buf buf;
    uint32_t replies;            /* in buf */
    bool has_push_ack;
    bool listed;
    conn *prev, *next;           /* on srv->queued[q] */
} reply_queue;

struct ps_server {
    const ps_config *cfg;
    ps_server_options opts;
    uv_loop_t loop;
    bool loop_init;
    uv_tcp_t listener;
    uv_timer_t tick;
    uv_timer_t idle;
    uv_timer_t slow;             /* resumes connections paused by a push's pause_ms */
    uv_check_t commit;
    uv_idle_t spin;              /* active while backlog is not empty */
    uv_async_t wake;
    uv_async_t log_wake;         /* the push log's writer finished a write */
    uv_signal_t sigterm, sigint;
    uv_mutex_t wake_lock;        /* orders notify against closing the asyncs */
    bool wake_open;
    ps_shard *shard;
    ps_service *svc;
    conn *conns;                 /* every open connection */
    conn *queued[NQUEUES];       /* connections with replies in that queue */
    conn *backlog, *backlog_tail; /* connections with frames left over from a turn */
    size_t turn_bytes;           /* push frame bytes handled this turn */
    bool log_waiting;            /* held replies await a log write */
    uint64_t held_lsn;           /* ... of every record up to this one */
    uint64_t next_conn_id;
    bool stopping;
    bool was_read_only;
    ps_metrics *metrics;         /* borrowed; NULL without a metrics listener */
    uint64_t metrics_at_ms;
    double recovery_seconds;
    net_counters c;
    /* Peers can cause these at will: one line a second each, at most. */
    ps_log_limit limit_status[STATUS_LIMITS];   /* refused requests, by status */
    ps_log_limit limit_auth;     /* failed authentications */
    ps_log_limit limit_frame;    /* frames too large, or not a Request */
    ps_log_limit limit_conns;    /* connections over max_connections */
};

struct conn {
    uv_tcp_t tcp;                /* first: the handle's address is the conn's */
    ps_server *srv;
    ps_frame_reader rd;
    ps_session sess;
    char peer[PS_ADDR_STRLEN];   /* the client's address, for logs */
    reply_queue q[NQUEUES];
    conn *prev, *next;
    size_t write_bytes;          /* handed to uv_write, not yet done */
    bool reading, closing;
    bool backlogged;             /* on srv->backlog, not reading meanwhile */
    bool slowed;                 /* reads nothing until slow_until_ms (ps_session.pause_ms) */
    uint64_t slow_until_ms;
    conn *bl_prev, *bl_next;
    bool close_after_write;      /* the last reply refused it: close once sent */
    uint32_t inflight;           /* requests handled whose replies are not yet written */
    bool warned_inflight, warned_bytes;
    uint64_t id;                 /* for log lines */
    bool session_open;           /* sess is in the service's list */
    uint64_t last_active_ms;
};

typedef struct write_req {
    uv_write_t req;
    conn *c;
    uint32_t nreplies;           /* replies in this write */
    char *data;
    size_t len;
} write_req;

/* ---- connections ------------------------------------------------------- */

static void on_closed(uv_handle_t *h) {
    conn *c = (conn *)h;
    if (c->session_open)
        ps_service_session_deinit(c->srv->svc, &c->sess);
    ps_frame_reader_deinit(&c->rd);
    for (int q = 0; q < NQUEUES; q++)
        ps_buf_deinit(&c->q[q].buf);
    free(c);
}

static void queue_list(conn *c, queue_id q) {
    reply_queue *rq = &c->q[q];
    if (rq->listed)
        return;
    rq->listed = true;
    rq->prev = NULL;
    rq->next = c->srv->queued[q];
    if (rq->next)
        rq->next->q[q].prev = c;
    c->srv->queued[q] = c;
}

static void queue_unlist(conn *c, queue_id q) {
    reply_queue *rq = &c->q[q];
    if (!rq->listed)
        return;
    if (rq->prev)
        rq->prev->q[q].next = rq->next;
    else
        c->srv->queued[q] = rq->next;
    if (rq->next)
        rq->next->q[q].prev = rq->prev;
    rq->listed = false;
    rq->prev = rq->next = NULL;
}

static void backlog_unlist(conn *c) {
    if (!c->backlogged)
        return;
    ps_server *srv = c->srv;
    if (c->bl_prev)
        c->bl_prev->bl_next = c->bl_next;
    else
        srv->backlog = c->bl_next;
    if (c->bl_next)
        c->bl_next->bl_prev = c->bl_prev;
    else
        srv->backlog_tail = c->bl_prev;
    c->backlogged = false;
    c->bl_prev = c->bl_next = NULL;
}

static void conn_close(conn *c) {
    if (c->closing)
        return;
    c->closing = true;
    ps_server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->c.connections_open--;
    ps_debug("connection %llu from %s: closed (%llu open)", (unsigned long long)c->id, c->peer,
             (unsigned long long)srv->c.connections_open);
    for (int q = 0; q < NQUEUES; q++)
        queue_unlist(c, q);
    backlog_unlist(c);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    conn *c = (conn *)h;
    (void)suggested;
    char *p;
    size_t n;
    if (ps_frame_reader_space(&c->rd, &p, &n) < 0) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    buf->base = p;
    buf->len = n;
}

static void pause_reading(conn *c) {
    if (c->reading)
        uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
}

static void on_spin(uv_idle_t *h) { (void)h; /* keeps the next poll from blocking */ }

/* c has frames buffered past this turn's budget: stop reading from it
 * until the check phase has handled them (its buffer stays bounded), and
 * keep the loop turning meanwhile. */
static void backlog_append(conn *c) {
    ps_server *srv = c->srv;
    pause_reading(c);
    if (c->backlogged)
        return;
    srv->c.frames_deferred++;
    c->backlogged = true;
    c->bl_next = NULL;
    c->bl_prev = srv->backlog_tail;
    if (srv->backlog_tail)
        srv->backlog_tail->bl_next = c;
    else
        srv->backlog = c;
    srv->backlog_tail = c;
    uv_idle_start(&srv->spin, on_spin);
}

static bool over_limits(conn *c) {
    const ps_server_config *sc = &c->srv->cfg->server;
    return c->inflight >= sc->max_inflight_per_conn || c->write_bytes > sc->max_pending_reply_bytes;
}

/* Note (once per connection) which limit paused it, and count it. */
static void paused_by_limit(conn *c) {
    ps_server *srv = c->srv;
    const ps_server_config *sc = &srv->cfg->server;
    if (c->inflight >= sc->max_inflight_per_conn) {
        srv->c.reads_paused_inflight++;
        if (!c->warned_inflight)
            ps_warn("connection %llu: %u requests await replies (max_inflight_per_conn); not reading "
                    "from it until they drain",
                    (unsigned long long)c->id, c->inflight);
        c->warned_inflight = true;
    } else {
        srv->c.reads_paused++;
        if (!c->warned_bytes)
            ps_warn("connection %llu: %zu bytes of replies unread (max_pending_reply_bytes); not "
                    "reading from it until they drain",
                    (unsigned long long)c->id, c->write_bytes);
        c->warned_bytes = true;
    }
}

/* A refused request is logged (rate-limited: a peer can send them at will);
 * a Hello that identified the client, at debug. */
static void log_outcome(conn *c, bool had_hello) {
    ps_server *srv = c->srv;
    const ps_session *sess = &c->sess;
    if (!had_hello && sess->hello_done)
        ps_debug("connection %llu from %s: Hello from '%s' (client id %016llx)",
                 (unsigned long long)c->id, c->peer, sess->client_name,
                 (unsigned long long)sess->client_id);
    if (sess->last_status == 0)
        return;
    if (sess->last_auth_failed) {
        ps_log_limited(&srv->limit_auth, PS_LOG_WARN,
                       "connection %llu from %s: authentication failed: %s; closing",
                       (unsigned long long)c->id, c->peer, sess->last_error);
        return;
    }
    int st = sess->last_status;
    ps_log_limited(&srv->limit_status[st < STATUS_LIMITS ? st : STATUS_LIMITS - 1], PS_LOG_WARN,
                   "connection %llu from %s%s%s%s: request refused: %s: %s",
                   (unsigned long long)c->id, c->peer, sess->client_name[0] ? " ('" : "",
                   sess->client_name, sess->client_name[0] ? "')" : "",
                   ps_status_name((Ctrps__Status)st), sess->last_error);
}

static void process_frames(conn *c);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/* c reads again unless something still holds it (a close after the last
 * reply, the backlog, a pause, a limit), and handles the frames buffered
 * meanwhile. */
static void resume(conn *c) {
    if (!c->close_after_write && !c->backlogged && !c->slowed && !over_limits(c))
        c->reading = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0;
    process_frames(c);
}

/* The earliest end of a pause among the connections (UINT64_MAX: none). */
static uint64_t next_slow_end(const ps_server *srv) {
    uint64_t next = UINT64_MAX;
    for (const conn *c = srv->conns; c; c = c->next)
        if (c->slowed && c->slow_until_ms < next)
            next = c->slow_until_ms;
    return next;
}

static void on_slow_timer(uv_timer_t *t);

/* The timer set for the earliest end of a pause, or stopped. */
static void arm_slow_timer(ps_server *srv) {
    uint64_t next = next_slow_end(srv);
    if (next == UINT64_MAX) {
        uv_timer_stop(&srv->slow);
        return;
    }
    uint64_t now = uv_now(&srv->loop);
    uv_timer_start(&srv->slow, on_slow_timer, next > now ? next - now : 0, 0);
}

/* Pauses that have ended: those connections read and handle frames again. */
static void on_slow_timer(uv_timer_t *t) {
    ps_server *srv = t->data;
    uint64_t now = uv_now(&srv->loop);
    for (conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (!c->slowed || c->slow_until_ms > now)
            continue;
        c->slowed = false;
        resume(c);
    }
    arm_slow_timer(srv);
}

/* A push into a range being copied asked for c to read nothing for ms. */
static void slow_down(conn *c, uint32_t ms) {
    ps_server *srv = c->srv;
    pause_reading(c);
    c->slowed = true;
    c->slow_until_ms = uv_now(&srv->loop) + ms;
    arm_slow_timer(srv);
}

/* Handle the whole frames buffered for c, unless a limit says wait: then
 * reading stops, and the frames stay buffered until replies drain. */
static void process_frames(conn *c) {
    ps_server *srv = c->srv;
    for (;;) {
        if (c->slowed) {
            pause_reading(c);
            break;
        }
        if (over_limits(c)) {
            pause_reading(c);
            paused_by_limit(c);
            break;
        }
        if (srv->turn_bytes >= TURN_BYTES) {
            if (ps_frame_reader_pending(&c->rd))
                backlog_append(c);
            break;
        }
        const char *frame;
        size_t len;
        int r = ps_frame_reader_next(&c->rd, &frame, &len);
        if (r == 0)
            break;
        if (r < 0) {
            srv->c.frames_too_large++;
            ps_log_limited(&srv->limit_frame, PS_LOG_WARN,
                           "connection %llu from %s: closing: frame larger than max_frame_bytes = %llu",
                           (unsigned long long)c->id, c->peer,
                           (unsigned long long)srv->cfg->server.max_frame_bytes);
            conn_close(c);
            return;
        }
        bool push_ack, close_it;
        bool had_hello = c->sess.hello_done;
        r = ps_service_handle(srv->svc, &c->sess, frame, len, &c->q[OUT].buf, &push_ack,
                               &close_it);
        if (r < 0) {
            srv->c.connections_closed_bad_frame++;
            ps_log_limited(&srv->limit_frame, PS_LOG_WARN,
                           "connection %llu from %s: closing: a frame that is not a Request",
                           (unsigned long long)c->id, c->peer);
            conn_close(c);
            return;
        }
        log_outcome(c, had_hello);
        if (c->sess.pause_ms) {
            slow_down(c, c->sess.pause_ms);
            c->sess.pause_ms = 0;
        }
        if (push_ack)
            srv->turn_bytes += len; /* only what the log writer gets counts */
        c->inflight++;
        c->q[OUT].replies++;
        c->q[OUT].has_push_ack |= push_ack;
        if (close_it) {
            /* Answer, then hang up: read nothing more from it. */
            c->close_after_write = true;
            pause_reading(c);
            srv->c.connections_closed_auth++;
            break;
        }
    }
    if (c->q[OUT].buf.len)
        queue_list(c, OUT);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    conn *c = (conn *)stream;
    ps_server *srv = c->srv;
    (void)buf;
    if (nread < 0 || (nread == 0 && buf->base == NULL)) {
        conn_close(c); /* EOF, reset, or out of memory for the buffer */
        return;
    }
    if (nread == 0)
        return;
    srv->c.bytes_in += (uint64_t)nread;
    c->last_active_ms = uv_now(&srv->loop);
    ps_frame_reader_commit(&c->rd, (size_t)nread);
    process_frames(c);
}

static void on_written(uv_write_t *req, int status) {
    write_req *w = (write_req *)req;
    conn *c = w->c;
    c->write_bytes -= w->len;
    c->inflight -= w->nreplies;
    free(w->data);
    free(w);
    if (c->closing)
        return;
    if (status < 0 || (c->close_after_write && c->write_bytes == 0)) {
        conn_close(c);
        return;
    }
    /* Resume below half of each limit, so a connection at the edge does not
     * flap between paused and reading on every reply. */
    const ps_server_config *sc = &c->srv->cfg->server;
    if (!c->reading && !c->backlogged && !c->slowed && !c->close_after_write &&
        c->write_bytes <= sc->max_pending_reply_bytes / 2 &&
        c->inflight <= sc->max_inflight_per_conn / 2) {
        c->reading = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0;
        process_frames(c); /* frames that arrived before the pause */
    }
}

/* Hand the replies in b (n of them) to the socket. */
static void flush_buf(conn *c, ps_buf *b, uint32_t n) {
    ps_server *srv = c->srv;
    write_req *w = malloc(sizeof(*w));
    if (!w) {
        conn_close(c);
        return;
    }
    w->c = c;
    w->nreplies = n;
    w->data = ps_buf_take(b, &w->len);
    uv_buf_t ub = uv_buf_init(w->data, (unsigned)w->len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, on_written) < 0) {
        free(w->data);
        free(w);
        conn_close(c);
        return;
    }
    c->write_bytes += w->len;
    srv->c.bytes_out += w->len;
    if (c->reading && over_limits(c)) {
        pause_reading(c);
        paused_by_limit(c);
    }
}

/* Send replies whose log records are written; log_r < 0 says they are not:
 * a connection with a push ack among them is closed instead. The pushes
 * are applied in memory but not logged: never acknowledge them. The client
 * resends; its sequence number makes the resend a no-op. */
static void send_or_close(conn *c, ps_buf *b, uint32_t n, bool has_push_ack, int log_r) {
    if (log_r < 0 && has_push_ack) {
        c->srv->c.connections_closed_log_error++;
        conn_close(c);
        return;
    }
    flush_buf(c, b, n);
}

/* Send the replies of queue q of every connection listed for it, after a
 * log commit with result r. HELD goes first on a connection: its replies
 * are older than any in OUT, which is sent only later. */
static void send_queued(ps_server *srv, queue_id q, int r) {
    while (srv->queued[q]) {
        conn *c = srv->queued[q];
        queue_unlist(c, q);
        reply_queue *rq = &c->q[q];
        bool ack = rq->has_push_ack;
        uint32_t n = rq->replies;
        rq->has_push_ack = false;
        rq->replies = 0;
        send_or_close(c, &rq->buf, n, ack, r);
    }
}

/* The write of every record up to held_lsn finished: the held replies go. */
static void release_held(ps_server *srv, int r) {
    srv->log_waiting = false;
    if (r < 0)
        ps_error("push log write failed: %s; closing connections awaiting push acks",
                 ps_strerror(r));
    send_queued(srv, HELD, r);
}

/* Group commit, then the turn's replies. With the push log's writer
 * thread, the turn's replies are held until the write of every record
 * appended so far is done (on_log_written); turns that end while it is in
 * flight keep theirs in out, for the next write. */
static void commit_turn(ps_server *srv) {
    if (!srv->queued[OUT] || srv->log_waiting)
        return;
    uint64_t lsn = 0;
    int r = ps_shard_commit_begin(srv->shard, &lsn);
    if (r > 0) {
        while (srv->queued[OUT]) {
            conn *c = srv->queued[OUT];
            queue_unlist(c, OUT);
            reply_queue *out = &c->q[OUT], *held = &c->q[HELD];
            held->buf = out->buf; /* held is empty: released before each submit */
            ps_buf_init(&out->buf);
            held->replies = out->replies;
            held->has_push_ack = out->has_push_ack;
            out->replies = 0;
            out->has_push_ack = false;
            queue_list(c, HELD);
        }
        srv->log_waiting = true;
        srv->held_lsn = lsn;
        return;
    }
    if (r < 0)
        ps_error("push log write failed: %s; closing connections awaiting push acks",
                 ps_strerror(r));
    send_queued(srv, OUT, r);
}

/* Handle the frames left over from the turn, a budget's worth, oldest
 * connection first; a connection not done goes to the back. The drain has
 * a budget of its own, and the next turn starts with a fresh one. */
static bool drain_backlog(ps_server *srv) {
    srv->turn_bytes = 0;
    bool handled = false;
    while (srv->backlog && srv->turn_bytes < TURN_BYTES) {
        conn *c = srv->backlog;
        backlog_unlist(c);
        handled = true;
        resume(c);
    }
    srv->turn_bytes = 0;
    if (!srv->backlog)
        uv_idle_stop(&srv->spin);
    return handled;
}

/* Check phase: commit what the turn handled, then handle a budget of the
 * frames left over, and commit those too: the writer writes their records
 * while the loop polls for more. */
static void on_check(uv_check_t *h) {
    ps_server *srv = h->data;
    commit_turn(srv);
    if (!srv->stopping && drain_backlog(srv))
        commit_turn(srv);
}

/* Poll phase: a log write finished. The check phase of this same loop
 * iteration then submits the records appended meanwhile. */
static void on_log_written(uv_async_t *a) {
    ps_server *srv = a->data;
    if (!srv->log_waiting)
        return;
    bool busy;
    uint64_t durable;
    int r = ps_shard_commit_poll(srv->shard, &busy, &durable);
    if (busy)
        return; /* the wake-up of an earlier write */
    if (durable >= srv->held_lsn)
        r = 0; /* a synchronous commit after the failure wrote them */
    else if (r == 0)
        r = PS_ESTORE; /* a synchronous commit took the failure and logged it */
    release_held(srv, r);
}

static void on_connection(uv_stream_t *server, int status) {
    ps_server *srv = server->data;
    if (status < 0)
        return;
    conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->srv = srv;
    uv_tcp_init(&srv->loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    ps_frame_reader_init(&c->rd, (uint32_t)srv->cfg->server.max_frame_bytes);
    for (int q = 0; q < NQUEUES; q++)
        ps_buf_init(&c->q[q].buf);
    ps_service_session_init(srv->svc, &c->sess);
    c->session_open = true;
    if (srv->c.connections_open >= srv->cfg->server.max_connections || srv->stopping) {
        srv->c.connections_rejected++;
        if (!srv->stopping)
            ps_log_limited(&srv->limit_conns, PS_LOG_WARN,
                           "rejecting a connection: max_connections = %u are open",
                           srv->cfg->server.max_connections);
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->id = ++srv->next_conn_id;
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen) == 0)
        ps_addr_format((struct sockaddr *)&ss, c->peer, sizeof(c->peer));
    else
        snprintf(c->peer, sizeof(c->peer), "?");
    ps_debug("connection %llu from %s: accepted (%llu open)", (unsigned long long)c->id, c->peer,
             (unsigned long long)srv->c.connections_open + 1);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->c.connections_accepted++;
    srv->c.connections_open++;
    c->last_active_ms = uv_now(&srv->loop);
    c->reading = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0;
    if (!c->reading)
        conn_close(c);
}

/* ---- timers, signals ----------------------------------------------------- */

/* Tick the shard, and log when the store turns read-only or recovers. */
static void tick(ps_server *srv) {
    ps_shard_counters before, after;
    ps_shard_counters_get(srv->shard, &before);
    uint64_t t0 = uv_hrtime();
    ps_shard_tick(srv->shard, uv_now(&srv->loop));
    uint64_t ns = uv_hrtime() - t0;
    if (ns >= 500ull * 1000 * 1000)
        ps_warn("slow tick (write-back, expiry): %.0f ms on the loop", (double)ns / 1e6);
    ps_shard_counters_get(srv->shard, &after);
    if (after.flushes != before.flushes || after.flush_errors != before.flush_errors)
        ps_debug("write-back: %llu batch(es), %llu rows committed, %llu failed (%llu rows in all)",
                 (unsigned long long)(after.flushes - before.flushes),
                 (unsigned long long)(after.flushed_rows - before.flushed_rows),
                 (unsigned long long)(after.flush_errors - before.flush_errors),
                 (unsigned long long)after.flushed_rows);
    bool ro = ps_shard_read_only(srv->shard);
    if (ro != srv->was_read_only) {
        if (ro)
            ps_error("store is read-only: %s; refusing pushes and new rows, serving existing rows, "
                     "retrying every second",
                     ps_shard_store_error(srv->shard));
        else
            ps_info("store writable again: accepting pushes");
        srv->was_read_only = ro;
    }
}

/* The whole page: the service's families, then the network layer's and the
 * shard's state, every sample labelled with the shard. */
static void publish_metrics(ps_server *srv) {
    char shard_label[64], labels[128];
    char id[16];
    snprintf(id, sizeof(id), "%u", ps_shard_id(srv->shard));
    ps_prom_labels(shard_label, sizeof(shard_label), "shard", id, NULL);
    ps_buf b;
    ps_buf_init(&b);
    ps_prom p;
    ps_prom_init(&p, &b, shard_label);
    int r = ps_service_metrics(srv->svc, &p);
#define NET_METRIC(name, type, metric, reason, help)                                           \
    ps_prom_family(&p, metric, PS_PROM_##type, help);                                          \
    labels[0] = 0;                                                                             \
    if (reason[0])                                                                             \
        ps_prom_labels(labels, sizeof(labels), "reason", reason, NULL);                        \
    ps_prom_u64(&p, labels, srv->c.name);
    NET_COUNTER_MAP(NET_METRIC)
#undef NET_METRIC
    ps_prom_scalar(&p, "ctrps_ready", PS_PROM_GAUGE, "1 while the shard serves (what /readyz says)",
                   srv->stopping ? 0 : 1);
    ps_prom_scalar(&p, "ctrps_recovery_duration_seconds", PS_PROM_GAUGE,
                   "time the shard took to open its store and replay its push log at start",
                   srv->recovery_seconds);
    ps_prom_scalar(&p, "ctrps_recovering", PS_PROM_GAUGE,
                   "1 while the shard replays its push log at start", 0);
    if (r == 0)
        r = ps_prom_finish(&p);
    if (r == 0)
        ps_metrics_publish(srv->metrics, b.data ? b.data : "", b.len);
    ps_buf_deinit(&b);
}

static void on_tick(uv_timer_t *t) {
    ps_server *srv = t->data;
    tick(srv);
    uint64_t now = uv_now(&srv->loop);
    if (srv->metrics && now >= srv->metrics_at_ms) {
        publish_metrics(srv);
        srv->metrics_at_ms = now + 1000;
    }
}

static void on_wake(uv_async_t *a) { tick(a->data); }

void ps_server_notify(void *ctx) {
    ps_server *srv = ctx;
    uv_mutex_lock(&srv->wake_lock);
    if (srv->wake_open)
        uv_async_send(&srv->wake);
    uv_mutex_unlock(&srv->wake_lock);
}

/* From the push log's writer thread. */
static void notify_log_written(void *ctx) {
    ps_server *srv = ctx;
    uv_mutex_lock(&srv->wake_lock);
    if (srv->wake_open)
        uv_async_send(&srv->log_wake);
    uv_mutex_unlock(&srv->wake_lock);
}

static void on_idle_check(uv_timer_t *t) {
    ps_server *srv = t->data;
    uint64_t limit = (uint64_t)srv->cfg->server.idle_timeout_s * 1000;
    uint64_t now = uv_now(&srv->loop);
    for (conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (c->write_bytes == 0 && now - c->last_active_ms > limit) {
            srv->c.connections_closed_idle++;
            ps_info("connection %llu: closing after idle_timeout_s = %u without a request",
                    (unsigned long long)c->id, srv->cfg->server.idle_timeout_s);
            conn_close(c);
        }
    }
}

static void close_handle(uv_handle_t *h, void *arg) {
    ps_server *srv = arg;
    if (h == (uv_handle_t *)&srv->wake || h == (uv_handle_t *)&srv->log_wake) {
        uv_mutex_lock(&srv->wake_lock);
        srv->wake_open = false;
        uv_mutex_unlock(&srv->wake_lock);
    }
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_signal(uv_signal_t *s, int signum) {
    ps_server *srv = s->data;
    if (srv->stopping)
        return;
    srv->stopping = true;
    if (srv->metrics)
        ps_metrics_set_ready(srv->metrics, false);
    ps_info("received %s: stopping", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    /* Replies already handled still go out before the close: the write in
     * flight is waited for, and the rest written on this thread. */
    int r = ps_shard_log_writer_stop(srv->shard);
    if (srv->log_waiting) {
        bool busy;
        uint64_t durable;
        ps_shard_commit_poll(srv->shard, &busy, &durable);
        release_held(srv, durable >= srv->held_lsn ? 0 : r < 0 ? r : PS_ESTORE);
    }
    commit_turn(srv);
    for (conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        conn_close(c);
    }
    uv_walk(&srv->loop, close_handle, srv);
}

/* ---- counters -------------------------------------------------------------- */

static void extra_counters(void *ctx, void (*add)(void *acc, const char *name, uint64_t value),
                           void *acc) {
    ps_server *srv = ctx;
#define NET_ADD(name, type, metric, reason, help) add(acc, #name, srv->c.name);
    NET_COUNTER_MAP(NET_ADD)
#undef NET_ADD
}

/* ---- lifecycle ------------------------------------------------------------ */

int ps_server_new(const ps_config *cfg, const ps_server_options *opts, ps_server **ret_server,
                  char *err, size_t errlen) {
    ps_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return -ENOMEM;
    srv->cfg = cfg;
    srv->opts = *opts;
    srv->metrics = opts->metrics;
    int r = uv_loop_init(&srv->loop);
    if (r < 0) {
        snprintf(err, errlen, "event loop: %s", uv_strerror(r));
        free(srv);
        return r;
    }
    srv->loop_init = true;
    uv_mutex_init(&srv->wake_lock);
    uv_async_init(&srv->loop, &srv->wake, on_wake);
    srv->wake.data = srv;
    uv_async_init(&srv->loop, &srv->log_wake, on_log_written);
    srv->log_wake.data = srv;
    srv->wake_open = true;
    *ret_server = srv;
    return 0;
}

static int write_ready_file(ps_server *srv, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    int r = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
    if (r < 0) {
        snprintf(err, errlen, "getsockname: %s", uv_strerror(r));
        return r;
    }
    char where[PS_ADDR_STRLEN];
    ps_addr_format((struct sockaddr *)&ss, where, sizeof(where));
    ps_info("shard %u listening on %s", ps_shard_id(srv->shard), where);
    if (!srv->opts.ready_file)
        return 0;
    char tmp[PS_PATH_MAX + 8];
    snprintf(tmp, sizeof(tmp), "%s.tmp", srv->opts.ready_file);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%s\n", where) < 0 || fclose(f) != 0 ||
        rename(tmp, srv->opts.ready_file) < 0) {
        snprintf(err, errlen, "%s: %s", srv->opts.ready_file, strerror(errno));
        return -errno;
    }
    return 0;
}

int ps_server_listen(ps_server *srv, ps_shard *shard, ps_service *svc, char *err, size_t errlen) {
    srv->shard = shard;
    srv->svc = svc;
    ps_service_set_extra_counters(svc, extra_counters, srv);
    ps_addr_list addrs;
    char why[256];
    int r = ps_addr_resolve(srv->opts.host, srv->opts.port, true, &addrs, why, sizeof(why));
    if (r < 0) {
        snprintf(err, errlen, "listen address: %s", why);
        return r;
    }
    /* A name with several addresses: the first, the one getaddrinfo ranks
     * first, which is also the one clients resolving it try first. */
    const struct sockaddr *sa = (const struct sockaddr *)&addrs.addr[0];
    char where[PS_ADDR_STRLEN];
    ps_addr_format(sa, where, sizeof(where));
    uv_tcp_init(&srv->loop, &srv->listener);
    srv->listener.data = srv;
    r = uv_tcp_bind(&srv->listener, sa, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&srv->listener, 511, on_connection);
    if (r < 0) {
        snprintf(err, errlen, "listen on %s (%s:%d): %s%s", where, srv->opts.host, srv->opts.port,
                 uv_strerror(r),
                 r == UV_EADDRNOTAVAIL ? "; no interface here has that address (set [server] "
                                         "bind, e.g. 0.0.0.0, or --listen)"
                                       : "");
        return r;
    }
    if (addrs.n > 1)
        ps_debug("'%s' resolved to %d addresses; listening on the first, %s", srv->opts.host,
                 addrs.n, where);
    if (!ps_addr_is_loopback(sa) && !srv->cfg->server.auth_secret_file[0])
        ps_warn("listening on %s, which is not a loopback address, without [server] "
                "auth_secret_file: anyone who can reach it can read and change the model",
                where);
    uv_check_init(&srv->loop, &srv->commit);
    srv->commit.data = srv;
    uv_check_start(&srv->commit, on_check);
    uv_idle_init(&srv->loop, &srv->spin);
    srv->spin.data = srv;
    r = ps_shard_log_writer_start(shard, notify_log_written, srv);
    if (r < 0) {
        snprintf(err, errlen, "push log writer thread: %s", ps_strerror(r));
        return r;
    }
    uv_timer_init(&srv->loop, &srv->tick);
    srv->tick.data = srv;
    uv_timer_start(&srv->tick, on_tick, TICK_MS, TICK_MS);
    uv_timer_init(&srv->loop, &srv->idle);
    srv->idle.data = srv;
    uv_timer_init(&srv->loop, &srv->slow);
    srv->slow.data = srv;
    if (srv->cfg->server.idle_timeout_s)
        uv_timer_start(&srv->idle, on_idle_check, 1000, 1000);
    uv_signal_init(&srv->loop, &srv->sigterm);
    uv_signal_init(&srv->loop, &srv->sigint);
    srv->sigterm.data = srv->sigint.data = srv;
    uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
    uv_signal_start(&srv->sigint, on_signal, SIGINT);
    signal(SIGPIPE, SIG_IGN);
    /* A file-size limit must fail the write (and make the store read-only),
     * not kill the shard. */
    signal(SIGXFSZ, SIG_IGN);
    r = write_ready_file(srv, err, errlen);
    if (r == 0 && srv->metrics) {
        /* The full page from now on (the recovery page was rendered). */
        publish_metrics(srv);
        ps_metrics_set_render(srv->metrics, NULL, NULL);
        ps_metrics_set_ready(srv->metrics, true);
    }
    return r;
}

void ps_server_set_recovery_seconds(ps_server *srv, double seconds) { srv->recovery_seconds = seconds; }

int ps_server_run(ps_server *srv) { return uv_run(&srv->loop, UV_RUN_DEFAULT); }

void ps_server_free(ps_server *srv) {
    if (!srv)
        return;
    if (srv->loop_init) {
        uv_walk(&srv->loop, close_handle, srv);
        uv_run(&srv->loop, UV_RUN_DEFAULT);
        uv_loop_close(&srv->loop);
        uv_mutex_destroy(&srv->wake_lock);
    }
    free(srv);
}
