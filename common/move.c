#include "move.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client_rpc.h"
#include "error.h"
#include "rpc.h"

#define PAGE_ROWS 4096

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Send m to shard; move_finish() waits for its answer. */
static int move_start(ps_client *c, uint32_t shard, Ctrps__MoveRequest *m, ps_call **ret_call,
                      char *err, size_t errlen) {
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_MOVE;
    req.move = m;
    return ps_client_call_start(c, shard, &req, ret_call, err, errlen);
}

/* The answer of a move_start() call; ret NULL: not wanted. */
static int move_finish(ps_call *call, uint32_t shard, Ctrps__Response **ret, char *err,
                       size_t errlen) {
    return ps_client_call_finish(call, shard, CTRPS__RESPONSE__RESULT_MOVE, ret, err, errlen);
}

static int move_call(ps_client *c, uint32_t shard, Ctrps__MoveRequest *m, Ctrps__Response **ret,
                     char *err, size_t errlen) {
    ps_call *call;
    int r = move_start(c, shard, m, &call, err, errlen);
    return r < 0 ? r : move_finish(call, shard, ret, err, errlen);
}

static Ctrps__MoveRequest move_request(Ctrps__MoveRequest__Phase phase, uint32_t lo, uint32_t hi) {
    Ctrps__MoveRequest m = CTRPS__MOVE_REQUEST__INIT;
    m.phase = phase;
    m.bucket_lo = lo;
    m.bucket_hi = hi;
    return m;
}

static int simple_phase(ps_client *c, uint32_t shard, Ctrps__MoveRequest__Phase phase, uint32_t lo,
                        uint32_t hi, char *err, size_t errlen) {
    Ctrps__MoveRequest m = move_request(phase, lo, hi);
    return move_call(c, shard, &m, NULL, err, errlen);
}

/* DROP [lo, hi) on `shard`, call after call while the shard says there
 * is more (it writes the range's dirty rows back on its write-back thread
 * first, then walks a large range a step at a time, serving between). */
static int drop(ps_client *c, uint32_t shard, uint32_t lo, uint32_t hi, uint64_t stage, char *err,
                size_t errlen) {
    Ctrps__MoveRequest m = move_request(CTRPS__MOVE_REQUEST__PHASE__DROP, lo, hi);
    m.stage = stage;
    uint64_t walked = 0;
    for (;;) {
        Ctrps__Response *resp;
        int r = move_call(c, shard, &m, &resp, err, errlen);
        if (r < 0)
            return r;
        bool more = resp->move->more;
        bool stepped = resp->move->rows_dropped > walked;
        walked = resp->move->rows_dropped;
        ctrps__response__free_unpacked(resp, NULL);
        if (!more)
            return 0;
        /* No step taken: the shard waits for a write-back; do not spin on it. */
        if (!stepped)
            nanosleep(&(struct timespec){.tv_nsec = 2 * 1000 * 1000}, NULL);
    }
}

int ps_move_current_map(ps_client *c, uint32_t nshards, ps_cluster_map *ret_map, char *err,
                        size_t errlen) {
    ps_cluster_map best = {0};
    for (uint32_t i = 0; i < nshards; i++) {
        ps_cluster_map m;
        int r = ps_client_cluster_map(c, i, &m, err, errlen);
        if (r < 0) {
            ps_cluster_map_deinit(&best);
            return r;
        }
        if (!best.owner || m.version > best.version) {
            ps_cluster_map_deinit(&best);
            best = m;
        } else {
            ps_cluster_map_deinit(&m);
        }
    }
    if (!best.owner) {
        snprintf(err, errlen, "no shard to ask for the cluster map");
        return -EINVAL;
    }
    /* Calls to shards the map lists beyond the config's need connections. */
    int r = ps_client_offer_map(c, &best);
    if (r < 0) {
        snprintf(err, errlen, "taking the cluster map: %s", ps_strerror(r));
        ps_cluster_map_deinit(&best);
        return r;
    }
    *ret_map = best;
    return 0;
}

/* Pages go into the target while the source reads the next ones: up to
 * IMPORT_DEPTH IMPORTs in flight on the one connection, in page order, so
 * that the target applies them in order (a row copied by two pages lands as
 * the later one has it) and has the next page at hand when it ends one. */
#define IMPORT_DEPTH 2

typedef struct import_page {
    Ctrps__Response *resp;       /* the EXPORT or CHANGED answer whose rows go; owned */
    ps_call *call;               /* its IMPORT; NULL: nothing to import */
} import_page;

typedef struct imports {
    ps_client *c;
    uint32_t to, lo, hi;
    uint64_t stage;              /* the first pass: staged on the target under this id */
    import_page q[IMPORT_DEPTH];
    size_t head, n;
} imports;

/* Send resp's rows (and sequence numbers) to the target; resp is taken
 * (freed at once if it cannot be sent). The queue must have room. */
static int import_start(imports *im, Ctrps__Response *resp, char *err, size_t errlen) {
    const Ctrps__MoveResponse *m = resp->move;
    import_page *pg = &im->q[(im->head + im->n) % IMPORT_DEPTH];
    *pg = (import_page){.resp = resp};
    im->n++;
    if (!(m->rows && m->rows->n_keys) && !m->n_seqs)
        return 0;
    Ctrps__MoveRequest mr = move_request(CTRPS__MOVE_REQUEST__PHASE__IMPORT, im->lo, im->hi);
    mr.rows = m->rows;
    mr.n_seqs = m->n_seqs;
    mr.seqs = m->seqs;
    mr.stage = im->stage;
    int r = move_start(im->c, im->to, &mr, &pg->call, err, errlen);
    if (r < 0) { /* not sent: not in flight */
        im->n--;
        ctrps__response__free_unpacked(resp, NULL);
    }
    return r;
}

/* Wait for the oldest page in flight; its rows count once imported. */
static int import_finish(imports *im, ps_move_progress *pr, char *err, size_t errlen) {
    import_page *pg = &im->q[im->head];
    im->head = (im->head + 1) % IMPORT_DEPTH;
    im->n--;
    int r = pg->call ? move_finish(pg->call, im->to, NULL, err, errlen) : 0;
    const Ctrps__MoveRows *rows = pg->resp->move->rows;
    if (r == 0)
        pr->rows += rows ? rows->n_keys : 0;
    ctrps__response__free_unpacked(pg->resp, NULL);
    return r;
}

/* Wait for every page in flight: the first failure, if any. */
static int import_drain(imports *im, ps_move_progress *pr, char *err, size_t errlen) {
    int first = 0;
    char e[256];
    while (im->n) {
        int r = import_finish(im, pr, e, sizeof(e));
        if (r < 0 && !first) {
            first = r;
            snprintf(err, errlen, "%s", e);
        }
    }
    return first;
}

/* A failpoint for the tests: with CTRPS_TEST_MOVE_STOP=<at> in its
 * environment the mover stops itself (SIGSTOP) there, so that a test can
 * kill and restart shards and then let it go on (SIGCONT): "cutover" once
 * the range is frozen, before the last changes are copied; "staged" once
 * the first page of the first pass is in the target's staging file;
 * "admitted" once the target has merged the first round of the admission
 * filters (each in a move's first copy attempt only). */
static void test_stop(const char *at) {
    const char *v = getenv("CTRPS_TEST_MOVE_STOP");
    if (v && !strcmp(v, at))
        raise(SIGSTOP);
}

/* Whether the source no longer tracks the copy `tid` (it restarted), asked
 * after it refused a page. */
static bool source_lost(ps_client *c, uint32_t from, uint64_t tid) {
    Ctrps__MoveRequest st = CTRPS__MOVE_REQUEST__INIT;
    Ctrps__Response *resp;
    char serr[256];
    if (move_call(c, from, &st, &resp, serr, sizeof(serr)) < 0)
        return false;
    bool lost = resp->move->track_id != tid;
    ctrps__response__free_unpacked(resp, NULL);
    return lost;
}

/* Source and target begin no write-back until the map is installed (or
 * HOLD_MS), and the ones running end first, waited for up to HOLD_WAIT_MS:
 * the target's INGEST, the fence and the cut-over's fsync'ed writes (the
 * last round and sequence numbers on the target, the maps) would
 * otherwise queue behind a write-back's batch in RocksDB's write path, on
 * the shard's loop, for seconds under a heavy push load. */
#define HOLD_MS 2000
#define HOLD_WAIT_MS 2000

static int hold_writebacks(ps_client *c, uint32_t from, uint32_t to, char *err, size_t errlen) {
    double until = now_s() + HOLD_WAIT_MS / 1e3;
    for (;;) {
        bool running = false;
        uint32_t shards[2] = {from, to};
        for (int i = 0; i < 2; i++) {
            Ctrps__MoveRequest m = move_request(CTRPS__MOVE_REQUEST__PHASE__STATUS, 0, 0);
            m.hold_ms = HOLD_MS;
            Ctrps__Response *resp;
            int r = move_call(c, shards[i], &m, &resp, err, errlen);
            if (r < 0)
                return r;
            running = running || resp->move->writing_back;
            ctrps__response__free_unpacked(resp, NULL);
        }
        if (!running || now_s() >= until)
            return 0;
        nanosleep(&(struct timespec){.tv_nsec = 5 * 1000 * 1000}, NULL);
    }
}

/* One pass of EXPORT (the range's stored rows) or CHANGED (a catch-up
 * round: rows changed since the previous one) from -> to, page by page,
 * each page imported while the next is read; the sequence numbers come
 * with the last page when the range is frozen. The first pass (stage =
 * tid) is staged on the target and ingested at its end. *ret_lost: the
 * source no longer tracks the range as `tid`, or the target no longer
 * knows the staged pass (either restarted): the copy must begin again.
 * *ret_pending: CHANGED's count of changes already recorded for the next
 * round. */
static int copy_pass(ps_client *c, Ctrps__MoveRequest__Phase phase, uint32_t lo, uint32_t hi,
                     uint64_t tid, uint32_t round, ps_move_progress *pr, ps_move_progress_fn fn,
                     uint64_t stage, void *ctx, uint64_t *ret_pending, bool *ret_lost, char *err,
                     size_t errlen) {
    Ctrps__MoveRequest ex = move_request(phase, lo, hi);
    ex.round = round;
    ex.throttle = phase == CTRPS__MOVE_REQUEST__PHASE__CHANGED ? pr->throttle : 0;
    ex.limit = PAGE_ROWS;
    uint8_t after[16];
    imports im = {.c = c, .to = pr->to, .lo = lo, .hi = hi, .stage = stage};
    *ret_lost = false;
    bool stopped = false;
    for (;;) {
        Ctrps__Response *resp;
        int r = move_call(c, pr->from, &ex, &resp, err, errlen);
        char ierr[256];
        bool imported = r == 0 && im.n == IMPORT_DEPTH;
        int ir = imported ? import_finish(&im, pr, ierr, sizeof(ierr)) : 0;
        if (r < 0) { /* refused because the source forgot the copy (a restart)? */
            import_drain(&im, pr, ierr, sizeof(ierr));
            *ret_lost = source_lost(c, pr->from, tid);
            return *ret_lost ? 0 : r;
        }
        if (ir < 0) {
            ctrps__response__free_unpacked(resp, NULL);
            snprintf(err, errlen, "%s", ierr);
            import_drain(&im, pr, ierr, sizeof(ierr));
            *ret_lost = stage && ir == PS_ENOT_FOUND;
            return *ret_lost ? 0 : ir;
        }
        if (stage && pr->rows && !pr->restarts && !stopped) {
            stopped = true;
            test_stop("staged");
        }
        pr->elapsed_s = now_s() - pr->t0;
        if (fn && imported) /* a page before this one is in */
            fn(ctx, pr);
        const Ctrps__MoveResponse *m = resp->move;
        if (m->track_id != tid) {
            ctrps__response__free_unpacked(resp, NULL);
            import_drain(&im, pr, ierr, sizeof(ierr));
            *ret_lost = true;
            return 0;
        }
        bool done = m->done;
        ex.table_index = m->table_index;
        ex.offset = m->offset;
        ex.after.len = m->after.len <= sizeof(after) ? m->after.len : 0;
        if (ex.after.len) /* an empty cursor may come with no data at all */
            memcpy(after, m->after.data, ex.after.len);
        ex.after.data = after;
        if (ret_pending)
            *ret_pending = m->pending;
        /* An empty first page: the source is still writing back. */
        bool wait = !done && !ex.table_index && !ex.after.len && !(m->rows && m->rows->n_keys) &&
                    phase == CTRPS__MOVE_REQUEST__PHASE__EXPORT;
        r = import_start(&im, resp, err, errlen);
        if (r < 0) {
            import_drain(&im, pr, ierr, sizeof(ierr));
            return r;
        }
        if (wait)
            nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
        if (done) {
            r = import_drain(&im, pr, err, errlen);
            if (r == 0 && stage && pr->rows && !pr->restarts && !stopped)
                test_stop("staged");
            /* INGEST stops the target's writes: it would wait behind a
             * write-back's batch, on the loop, for seconds under load. */
            if (r == 0 && stage)
                r = hold_writebacks(c, pr->from, pr->to, err, errlen);
            if (r == 0 && stage) {
                Ctrps__MoveRequest in = CTRPS__MOVE_REQUEST__INIT;
                in.phase = CTRPS__MOVE_REQUEST__PHASE__INGEST;
                in.stage = stage;
                r = move_call(c, pr->to, &in, NULL, err, errlen);
            }
            pr->elapsed_s = now_s() - pr->t0;
            *ret_lost = stage && r == PS_ENOT_FOUND;
            return *ret_lost ? 0 : r;
        }
    }
}

static int fence(ps_client *c, uint32_t shard, uint32_t lo, uint32_t hi, char *err, size_t errlen) {
    Ctrps__MoveRequest m = move_request(CTRPS__MOVE_REQUEST__PHASE__FREEZE, lo, hi);
    m.fence = true;
    return move_call(c, shard, &m, NULL, err, errlen);
}

/* One round of the admission filters (proto ADMIT) from -> to: each page
 * is merged on the target, durably, before the next is asked for.
 * *ret_pending: counters raised on the source since the round began. */
static int admit_pass(ps_client *c, uint32_t lo, uint32_t hi, uint64_t tid, uint32_t round,
                      const ps_move_progress *pr, uint64_t *ret_pending, bool *ret_lost, char *err,
                      size_t errlen) {
    Ctrps__MoveRequest ad = move_request(CTRPS__MOVE_REQUEST__PHASE__ADMIT, lo, hi);
    ad.round = round;
    *ret_lost = false;
    for (;;) {
        Ctrps__Response *resp;
        int r = move_call(c, pr->from, &ad, &resp, err, errlen);
        if (r < 0) {
            *ret_lost = source_lost(c, pr->from, tid);
            return *ret_lost ? 0 : r;
        }
        const Ctrps__MoveResponse *m = resp->move;
        bool done = m->done;
        *ret_pending = m->pending;
        if (m->track_id != tid) {
            *ret_lost = true;
        } else if (!m->admit && !done) {
            snprintf(err, errlen, "shard %u does not send admission filters (an older server)",
                     pr->from);
            r = PS_EPROTO;
        } else if (m->admit && (m->admit->n_ids || m->admit->n_counter_ids)) {
            Ctrps__MoveRequest im = move_request(CTRPS__MOVE_REQUEST__PHASE__IMPORT, lo, hi);
            im.admit = m->admit;
            r = move_call(c, pr->to, &im, NULL, err, errlen);
        }
        ad.table_index = m->table_index;
        ad.offset = m->offset;
        ctrps__response__free_unpacked(resp, NULL);
        if (r < 0 || done || *ret_lost)
            return r;
    }
}

/* The admission filters' rounds while the range is served: the whole
 * filters, then the counters raised since, until a round leaves few for
 * the round taken once the range is frozen (*round: the last one taken).
 * That one brings the rest: for every key of the range the target then
 * counts at least the pushes the source had counted (server/admit.h). */
#define ADMIT_SMALL 4096
#define ADMIT_ROUNDS 8

static int admit_catch_up(ps_client *c, uint32_t lo, uint32_t hi, uint64_t tid,
                          const ps_move_progress *pr, uint32_t *round, bool *ret_lost, char *err,
                          size_t errlen) {
    uint64_t pending;
    int r;
    do {
        r = admit_pass(c, lo, hi, tid, ++*round, pr, &pending, ret_lost, err, errlen);
        if (r == 0 && !*ret_lost && *round == 1 && !pr->restarts)
            test_stop("admitted");
    } while (r == 0 && !*ret_lost && pending > ADMIT_SMALL && *round < ADMIT_ROUNDS);
    return r;
}

/* Catch-up rounds end once one leaves this few changes for the next (or
 * after CATCHUP_ROUNDS): before the fence, then after it, when the last
 * round, with the range frozen, sends about as many. */
#define CATCHUP_SMALL 2048
#define CATCHUP_LAST 512
#define CATCHUP_ROUNDS 8
#define COPY_ATTEMPTS 8

/* At least one catch-up round, until one leaves at most `small` changes.
 * A round that leaves more than half as many as the one before (the
 * pushes change the range about as fast as the rounds copy it), and any
 * round after the second, has the source slow those pushes one step more
 * (pr->throttle: each push into the range pauses its connection for
 * longer), so that the rounds shrink under any load. */
static int catch_up(ps_client *c, uint32_t lo, uint32_t hi, uint64_t tid, ps_move_progress *pr,
                    ps_move_progress_fn fn, void *ctx, uint64_t small, bool *ret_lost, char *err,
                    size_t errlen) {
    uint64_t before = UINT64_MAX;
    for (uint32_t n = 0; n < CATCHUP_ROUNDS; n++) {
        uint64_t pending = 0;
        pr->rounds++;
        int r = copy_pass(c, CTRPS__MOVE_REQUEST__PHASE__CHANGED, lo, hi, tid, pr->rounds, pr, fn,
                          0, ctx, &pending, ret_lost, err, errlen);
        if (r < 0 || *ret_lost || pending <= small)
            return r;
        if ((pending > before / 2 || n >= 1) && pr->throttle < 3)
            pr->throttle++;
        before = pending;
    }
    return 0;
}

/* Copy [lo, hi) from -> to while it is served, catch up, freeze it and
 * send the last changes with the sequence numbers. On success the range is
 * frozen on the source and the target holds all of it; *ret_frozen_at is
 * when the freeze began. */
static int copy_range(ps_client *c, uint32_t lo, uint32_t hi, ps_move_progress *pr,
                      ps_move_progress_fn fn, void *ctx, double *ret_frozen_at, char *err,
                      size_t errlen) {
    for (int attempt = 0; attempt < COPY_ATTEMPTS; attempt++) {
        Ctrps__MoveRequest tr = move_request(CTRPS__MOVE_REQUEST__PHASE__TRACK, lo, hi);
        Ctrps__Response *resp;
        int r = move_call(c, pr->from, &tr, &resp, err, errlen);
        if (r < 0)
            return r;
        uint64_t tid = resp->move->track_id;
        pr->estimated_rows = resp->move->estimated_rows;
        ctrps__response__free_unpacked(resp, NULL);
        /* Rows an interrupted copy left on the target go first; the first
         * pass is staged there under the tracking's id. */
        r = drop(c, pr->to, lo, hi, tid, err, errlen);
        if (r < 0)
            return r;
        pr->rows = 0;
        pr->rounds = 0;
        pr->throttle = 0;
        pr->t0 = now_s();
        bool lost;
        uint64_t pending = 0;
        r = copy_pass(c, CTRPS__MOVE_REQUEST__PHASE__EXPORT, lo, hi, tid, 0, pr, fn, tid, ctx,
                      NULL, &lost, err, errlen);
        if (r == 0 && !lost)
            r = catch_up(c, lo, hi, tid, pr, fn, ctx, CATCHUP_SMALL, &lost, err, errlen);
        uint32_t admit_round = 0;
        if (r == 0 && !lost)
            r = admit_catch_up(c, lo, hi, tid, pr, &admit_round, &lost, err, errlen);
        /* The freeze is stored (fsync, write-backs held first) while the
         * range is still served, and what changed meanwhile copied, so
         * that the pause holds no fsync on the source; the rounds go on
         * until one leaves about as much as a round takes a few
         * milliseconds for. */
        if (r == 0 && !lost)
            r = hold_writebacks(c, pr->from, pr->to, err, errlen);
        if (r == 0 && !lost)
            r = fence(c, pr->from, lo, hi, err, errlen);
        if (r == 0 && !lost)
            r = catch_up(c, lo, hi, tid, pr, fn, ctx, CATCHUP_LAST, &lost, err, errlen);
        double frozen_at = now_s();
        if (r == 0 && !lost)
            r = simple_phase(c, pr->from, CTRPS__MOVE_REQUEST__PHASE__FREEZE, lo, hi, err, errlen);
        if (r == 0 && !lost) {
            if (attempt == 0)
                test_stop("cutover");
            double t = now_s();
            uint64_t before = pr->rows;
            pr->freeze_s = t - frozen_at;
            r = copy_pass(c, CTRPS__MOVE_REQUEST__PHASE__CHANGED, lo, hi, tid, pr->rounds + 1, pr,
                          fn, 0, ctx, &pending, &lost, err, errlen);
            pr->last_round_rows = pr->rows - before;
            uint64_t admit_left;
            if (r == 0 && !lost)
                r = admit_pass(c, lo, hi, tid, admit_round + 1, pr, &admit_left, &lost, err,
                               errlen);
            pr->last_round_s = now_s() - t;
        }
        if (r < 0)
            return r;
        if (!lost) {
            *ret_frozen_at = frozen_at;
            return 0;
        }
        pr->restarts++;
    }
    snprintf(err, errlen, "shard %u or %u lost the copy of buckets %u-%u %d times", pr->from,
             pr->to, lo, hi - 1, COPY_ATTEMPTS);
    return -EAGAIN;
}

int ps_move_range(ps_client *c, ps_cluster_map *cur, uint32_t lo, uint32_t hi, uint32_t to,
                  char *const *shards, size_t nshards, ps_move_progress_fn fn, void *ctx,
                  char *err, size_t errlen) {
    if (lo >= hi || hi > cur->buckets || to >= nshards || nshards < cur->nshards) {
        snprintf(err, errlen, "cannot move buckets %u-%u to shard %u of %zu", lo, hi - 1, to, nshards);
        return -EINVAL;
    }
    uint32_t from = cur->owner[lo];
    for (uint32_t b = lo; b < hi; b++)
        if (cur->owner[b] != from) {
            snprintf(err, errlen, "buckets %u-%u have more than one owner", lo, hi - 1);
            return -EINVAL;
        }
    if (from == to)
        return 0;
    int r;
    if (nshards > cur->nshards) {
        /* Join: every shard learns the longer list, owners unchanged, before
         * a new shard adopts rows (it refuses rows of buckets its map gives
         * it, and a new shard's first map is its config's even split). */
        ps_cluster_map join;
        r = ps_cluster_map_even(cur->version + 1, cur->buckets, shards, nshards, &join);
        if (r < 0)
            return r;
        memcpy(join.owner, cur->owner, cur->buckets * sizeof(uint32_t));
        for (uint32_t i = 0; r == 0 && i < nshards; i++)
            r = ps_client_install_map(c, i, &join, NULL, err, errlen);
        if (r < 0) {
            ps_cluster_map_deinit(&join);
            return r;
        }
        ps_cluster_map_deinit(cur);
        *cur = join;
    }
    ps_move_progress pr = {.lo = lo, .hi = hi, .from = from, .to = to};
    double frozen_at;
    r = copy_range(c, lo, hi, &pr, fn, ctx, &frozen_at, err, errlen);
    if (r < 0)
        return r;
    ps_cluster_map next;
    r = ps_cluster_map_even(cur->version + 1, cur->buckets, shards, nshards, &next);
    if (r < 0)
        return r;
    memcpy(next.owner, cur->owner, cur->buckets * sizeof(uint32_t));
    for (uint32_t b = lo; b < hi; b++)
        next.owner[b] = to;
    /* Target first: once the source takes the map, clients go to it. */
    double t = now_s();
    r = ps_client_install_map(c, to, &next, NULL, err, errlen);
    if (r == 0)
        r = ps_client_install_map(c, from, &next, NULL, err, errlen);
    pr.map_s = now_s() - t;
    pr.pause_s = now_s() - frozen_at;
    pr.commit_s = now_s() - pr.t0;
    for (uint32_t i = 0; r == 0 && i < nshards; i++)
        if (i != to && i != from)
            r = ps_client_install_map(c, i, &next, NULL, err, errlen);
    if (r == 0)
        r = drop(c, from, lo, hi, 0, err, errlen);
    if (r < 0) {
        ps_cluster_map_deinit(&next);
        return r;
    }
    ps_cluster_map_deinit(cur);
    *cur = next;
    pr.elapsed_s = now_s() - pr.t0;
    pr.done = true;
    if (fn)
        fn(ctx, &pr);
    return 0;
}

int ps_move_buckets(ps_client *c, ps_cluster_map *cur, uint32_t lo, uint32_t hi, uint32_t to,
                    char *const *shards, size_t nshards, ps_move_progress_fn fn, void *ctx,
                    char *err, size_t errlen) {
    if (lo >= hi || hi > cur->buckets) {
        snprintf(err, errlen, "buckets %u-%u: not within 0-%u", lo, hi - 1, cur->buckets - 1);
        return -EINVAL;
    }
    uint32_t b = lo;
    while (b < hi) {
        uint32_t e = b + 1;
        while (e < hi && cur->owner[e] == cur->owner[b])
            e++;
        int r = ps_move_range(c, cur, b, e, to, shards, nshards, fn, ctx, err, errlen);
        if (r < 0)
            return r;
        b = e;
    }
    return 0;
}

int ps_move_reshard(ps_client *c, ps_cluster_map *cur, char *const *shards, size_t nshards,
                    uint32_t ntarget, ps_move_progress_fn fn, void *ctx, char *err, size_t errlen) {
    for (size_t i = 0; i < nshards && i < cur->nshards; i++)
        if (strcmp(shards[i], cur->shards[i])) {
            snprintf(err, errlen, "shard %zu is %s in the map but %s in the new config", i,
                     cur->shards[i], shards[i]);
            return -EINVAL;
        }
    if (!ntarget || ntarget > nshards) {
        snprintf(err, errlen, "no shards to spread the buckets over");
        return -EINVAL;
    }
    uint32_t nb = cur->buckets;
    uint32_t b = 0;
    while (b < nb) {
        uint32_t want = ps_bucket_owner(b, nb, ntarget), e = b + 1;
        while (e < nb && cur->owner[e] == cur->owner[b] && ps_bucket_owner(e, nb, ntarget) == want)
            e++;
        if (cur->owner[b] != want) {
            int r = ps_move_range(c, cur, b, e, want, shards, nshards, fn, ctx, err, errlen);
            if (r < 0)
                return r;
        }
        b = e;
    }
    return 0;
}

int ps_move_abort(ps_client *c, uint32_t from, uint32_t *ret_unstaged, char *err, size_t errlen) {
    *ret_unstaged = 0;
    int r = simple_phase(c, from, CTRPS__MOVE_REQUEST__PHASE__THAW, 0, 0, err, errlen);
    if (r < 0)
        return r;
    /* The target of the move given up is not known here: every other
     * shard forgets a staged copy it holds. */
    uint32_t nshards;
    ps_client_shards_ready(c, &nshards);
    for (uint32_t i = 0; i < nshards; i++) {
        if (i == from)
            continue;
        Ctrps__MoveRequest m = CTRPS__MOVE_REQUEST__INIT;
        m.phase = CTRPS__MOVE_REQUEST__PHASE__UNSTAGE;
        Ctrps__Response *resp;
        r = move_call(c, i, &m, &resp, err, errlen);
        if (r < 0)
            return r;
        *ret_unstaged += resp->move->done;
        ctrps__response__free_unpacked(resp, NULL);
    }
    return 0;
}
