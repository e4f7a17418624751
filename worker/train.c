#include "train.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batch.h"
#include "checkpoint.h"
#include "client.h"
#include "error.h"
#include "feed.h"
#include "live.h"
#include "log.h"
#include "eval.h"
#include "model.h"
#include "nn.h"
#include "parse.h"
#include "predict.h"
#include "wconfig.h"

#include <xxhash.h>

#define MAX_TABLES PS_PREDICT_MAX_TABLES

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The client reports a shard's outage as it begins, every few seconds while
 * it lasts and when it ends (common/client.h); training waits meanwhile. */
static void log_outage(void *ctx, const ps_client_outage *o) {
    (void)ctx;
    double s = (double)o->elapsed_ms / 1000;
    if (o->over)
        ps_info("shard %u (%s) answers again after %.1f s; resent what it had not acknowledged",
                o->shard, o->addr, s);
    else
        ps_warn("shard %u (%s) unavailable: %s (for %.1f s); retrying with backoff up to "
                "[worker] outage_timeout_s",
                o->shard, o->addr, o->why, s);
}

static void log_client_event(void *ctx, const char *msg) {
    (void)ctx;
    ps_debug("%s", msg);
}

void ps_train_feed_options(const ps_train_options *o, ps_feed_options *ret) {
    const ps_worker_config *w = ps_worker_config_of(o->cfg);
    *ret = (ps_feed_options){.input = &w->input,
                             .inputs = o->inputs,
                             .ninputs = o->ninputs,
                             .follow = o->follow,
                             .worker_index = o->worker_index,
                             .num_workers = o->num_workers,
                             .passes = o->passes,
                             .max_examples = o->max_examples,
                             .malformed_log_per_s = w->malformed_log_per_s,
                             .stop = o->stop};
}

int ps_train_client_new(const ps_train_options *o, const char *name, ps_client **ret_client,
                        char *err, size_t errlen) {
    const ps_worker_config *w = ps_worker_config_of(o->cfg);
    ps_client_options co = {.cfg = o->cfg,
                            .name = name,
                            .timeout_ms = w->timeout_ms,
                            .outage_timeout_ms = (uint64_t)w->outage_timeout_s * 1000,
                            .on_outage = log_outage,
                            .on_event = log_client_event,
                            .pull_latency = o->live ? &o->live->pull_latency : NULL,
                            .push_latency = o->live ? &o->live->push_latency : NULL};
    return ps_client_new(&co, ret_client, err, errlen);
}

/* ---- training ------------------------------------------------------------------------ */

typedef struct fetch {
    ps_call *calls[MAX_TABLES + 1];
    int ncalls;
    int dense;                   /* -1, or the staging copy a dense pull of it lands in */
} fetch;

typedef struct trainer trainer;

/* What computing one batch writes: the model's activations and dense
 * gradients, the dense parameters it computes with, the logits. With [worker] compute_threads = 2 there
 * are two slots, each with a thread of its own, and batch k computes in
 * slot k % 2 (see trainer_loop); with one, slot 0 computes on the loop's
 * thread. */
typedef struct slot {
    trainer *t;
    ps_model *model;
    ps_nn_params *params;
    ps_dense_block *push_blocks; /* from the gradients */
    float *logits, *dlogits;
    uint64_t dense_gen;          /* the dense pull its parameters hold (trainer.dense_gen) */
    /* the compute thread: the loop hands it a batch in job and waits until
     * job is NULL again */
    bool threaded, quit;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ps_batch *job;
    int result;
    char err[512];
} slot;

typedef struct pushes {
    ps_call *calls[MAX_TABLES + 1];
    int ncalls;
    ps_reader_pos end;           /* where the input stands after the batch */
} pushes;

/* Holdout rows, parsed and batched once at the start. */
typedef struct holdout {
    ps_batch **batches;
    size_t n;
    uint64_t examples;
} holdout;

/* One run: opened by trainer_open(), trained by trainer_loop(), its result
 * taken by trainer_finish() (which stops the feed), freed by
 * trainer_close(), which accepts a trainer that failed to open half way. */
struct trainer {
    const ps_train_options *o;
    const ps_worker_config *w;
    ps_batch_layout layout;
    const ps_batch_layout *L;    /* &layout */
    ps_feed *feed;
    holdout h;
    double start;                /* when the feed started */
    double last_report;          /* time of the last progress line (or start) */
    uint64_t last_examples;      /* examples trained at that line */
    uint32_t pass;               /* of the last batch trained, 0-based */
    double input_done;           /* share of the input read up to that batch; NaN: unknown */
    bool marked;                 /* a batch was trained: mark_* hold */
    double mark_time, mark_done; /* when the first batch was trained, and its input_done */
    ps_client *client;
    slot slots[2];
    uint32_t nslots;
    size_t nblocks;              /* dense blocks (0 for LR) */
    uint64_t dense_gen;          /* dense pulls landed, in batch order */
    slot *dense_newest;          /* the slot holding the newest of them */
    /* Batch k's dense pull lands in staging[k % 2]: batch k+1's may land
     * while batch k's is copied into its slot. */
    float *staging[2];
    ps_dense_block *pull_blocks[2];
    pushes *inflight;            /* ring of outstanding pushes */
    size_t nin, in_head, in_cap;
    uint64_t batches_started;
    double staleness_sum;
    uint64_t staleness_n;
    ps_eval *total, *window;     /* progressive validation */
    ps_eval *hold;               /* the holdout, scored afresh at each report */
    char worker_name[64];
    uint64_t inputs_hash;
    char handled_ckpt[64];       /* the last barrier this worker reported at */
    ps_reader_pos acked;         /* the end of the last batch whose pushes are acknowledged */
    bool has_acked;
    uint64_t checkpoints;
    char err[1024];
};

static int start_fetch(trainer *t, ps_batch *b, uint64_t k, fetch *f) {
    f->ncalls = 0;
    f->dense = -1;
    for (uint32_t i = 0; i < t->L->ntables; i++) {
        ps_batch_table *bt = &b->tables[i];
        if (bt->nkeys == 0)
            continue;
        int r = ps_client_pull_start(t->client, bt->cfg->name, bt->dim, bt->keys, bt->nkeys,
                                     bt->values, &f->calls[f->ncalls]);
        if (r < 0)
            return r;
        f->ncalls++;
    }
    if (t->nblocks && t->batches_started % t->w->model.dense_refresh == 0) {
        /* Into the staging copy: the current batch may still be computing
         * with the live parameters. */
        ps_call *c;
        int r = ps_client_dense_pull_start(t->client, t->pull_blocks[k % 2], t->nblocks, &c);
        if (r < 0)
            return r;
        f->calls[f->ncalls++] = c;
        f->dense = (int)(k % 2);
    }
    t->batches_started++;
    return 0;
}

static int wait_calls(trainer *t, ps_call **calls, int n) {
    int first = 0;
    for (int i = 0; i < n; i++) {
        char msg[1024];
        int r = ps_call_wait(calls[i], msg, sizeof(msg));
        if (r < 0 && first == 0) {
            first = r;
            snprintf(t->err, sizeof(t->err), "%s", msg);
        }
    }
    return first;
}

/* Copy the dense parameters from a flat array into a slot's model. */
static void load_dense(trainer *t, slot *s, const float *src) {
    for (size_t i = 0; i < t->nblocks; i++) {
        const ps_nn_param *p = ps_nn_params_at(s->params, i);
        memcpy(p->value, src, p->len * sizeof(float));
        src += p->len;
    }
}

/* Wait for a batch's pulls; then the slot computes with the newest dense
 * parameters pulled so far, in batch order: its own pull's, or another
 * slot's (which that slot only reads while it computes). */
static int finish_fetch(trainer *t, slot *s, fetch *f) {
    int r = wait_calls(t, f->calls, f->ncalls);
    f->ncalls = 0; /* waited, so freed, even on an error */
    if (r < 0 || !t->nblocks)
        return r;
    if (f->dense >= 0) {
        load_dense(t, s, t->staging[f->dense]);
        s->dense_gen = ++t->dense_gen;
        t->dense_newest = s;
    } else if (s->dense_gen != t->dense_gen) {
        const slot *from = t->dense_newest;
        for (size_t i = 0; i < t->nblocks; i++) {
            const ps_nn_param *to = ps_nn_params_at(s->params, i);
            memcpy(to->value, ps_nn_params_at(from->params, i)->value, to->len * sizeof(float));
        }
        s->dense_gen = t->dense_gen;
    }
    return 0;
}

static pushes *pop_oldest_push(trainer *t) {
    pushes *p = &t->inflight[t->in_head];
    t->in_head = (t->in_head + 1) % t->in_cap;
    t->nin--;
    return p;
}

/* Once a batch's pushes are acknowledged, the input before its end is
 * trained for good: a Kafka input commits that offset (at a bounded rate;
 * the last one synchronously at the end of the run). */
static int wait_oldest_push(trainer *t) {
    pushes *p = pop_oldest_push(t);
    int r = wait_calls(t, p->calls, p->ncalls);
    if (r == 0) {
        t->acked = p->end;
        t->has_acked = true;
        char msg[512];
        if (ps_feed_commit(t->feed, &t->acked, false, msg, sizeof(msg)) < 0)
            ps_warn("%s", msg);
    }
    return r;
}

/* Wait until at most `allowed` pushes are unacknowledged. */
static int bound_inflight(trainer *t, size_t allowed) {
    while (t->nin > allowed) {
        int r = wait_oldest_push(t);
        if (r < 0)
            return r;
    }
    return 0;
}

static int start_pushes(trainer *t, ps_batch *b, slot *s) {
    pushes *p = &t->inflight[(t->in_head + t->nin) % t->in_cap];
    p->ncalls = 0;
    p->end = b->end;
    for (uint32_t i = 0; i < t->L->ntables; i++) {
        ps_batch_table *bt = &b->tables[i];
        if (bt->nkeys == 0)
            continue;
        int r = ps_client_push_start(t->client, bt->cfg->name, bt->dim, bt->keys, bt->nkeys,
                                     bt->grads, &p->calls[p->ncalls]);
        if (r < 0)
            return r;
        p->ncalls++;
    }
    if (t->nblocks) {
        int r = ps_client_dense_push_start(t->client, s->push_blocks, t->nblocks, &p->calls[p->ncalls]);
        if (r < 0)
            return r;
        p->ncalls++;
    }
    t->nin++;
    return 0;
}

/* sparse_gradient = sum: the rows get B times the mean-loss gradient (the
 * per-example gradients summed), the dense blocks keep the mean. */
static void scale_sparse_grads(ps_batch *b, float k) {
    for (uint32_t ti = 0; ti < b->L->ntables; ti++) {
        ps_batch_table *bt = &b->tables[ti];
        size_t n = (size_t)bt->nkeys * bt->dim;
        for (size_t i = 0; i < n; i++)
            bt->grads[i] *= k;
    }
}

/* Forward and backward of one batch in slot s: its logits, the gradients
 * of its rows (in the batch) and of the dense blocks (in the slot). Touches
 * nothing else of the trainer, so two slots compute at once. */
static int compute(slot *s, ps_batch *b) {
    int r = ps_model_forward(s->model, b, s->logits);
    if (r < 0) {
        snprintf(s->err, sizeof(s->err), "forward: %s", ps_strerror(r));
        return r;
    }
    for (uint32_t i = 0; i < b->n; i++)
        s->dlogits[i] = (float)((ps_sigmoid(s->logits[i]) - b->labels[i]) / b->n);
    if (s->t->nblocks)
        ps_nn_params_zero_grad(s->params);
    r = ps_model_backward(s->model, b, s->dlogits);
    if (r < 0) {
        snprintf(s->err, sizeof(s->err), "backward: %s", ps_strerror(r));
        return r;
    }
    if (s->t->w->model.sparse_gradient == PS_REDUCE_SUM)
        scale_sparse_grads(b, (float)b->n);
    return 0;
}

/* Progressive validation: every example is scored before it trains (its
 * push), in batch order. */
static void score(trainer *t, const slot *s, const ps_batch *b) {
    for (uint32_t i = 0; i < b->n; i++) {
        ps_eval_add(t->total, s->logits[i], b->labels[i]);
        ps_eval_add(t->window, s->logits[i], b->labels[i]);
    }
}

static void *compute_main(void *arg) {
    slot *s = arg;
    ps_nn_blas_one_thread();
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->job && !s->quit)
            pthread_cond_wait(&s->cv, &s->mu);
        if (!s->job)
            break;
        ps_batch *b = s->job;
        pthread_mutex_unlock(&s->mu);
        int r = compute(s, b);
        pthread_mutex_lock(&s->mu);
        s->result = r;
        s->job = NULL;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Start computing b in s: on its thread, or here and now. */
static void compute_start(slot *s, ps_batch *b) {
    if (!s->threaded) {
        s->result = compute(s, b);
        return;
    }
    pthread_mutex_lock(&s->mu);
    s->job = b;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Wait until s computes nothing; the result of its last batch, whose
 * error message goes to t->err. */
static int compute_wait(trainer *t, slot *s) {
    if (s->threaded) {
        pthread_mutex_lock(&s->mu);
        while (s->job)
            pthread_cond_wait(&s->cv, &s->mu);
        pthread_mutex_unlock(&s->mu);
    }
    if (s->result < 0)
        snprintf(t->err, sizeof(t->err), "%s", s->err);
    return s->result;
}

/* ---- checkpoint barrier ------------------------------------------------------------- */

/* A shard announced checkpoint `id`: once every push of this worker is
 * acknowledged, report the input position after the last pushed batch to
 * shard 0, then wait until the coordinator ends the barrier. */
static int barrier(trainer *t, const char *id, const ps_reader_pos *end) {
    int r = bound_inflight(t, 0);
    if (r < 0)
        return r;
    char pos[256];
    if (end->kafka.n) {
        /* 256: what the coordinator keeps of a position (server/barrier.h). */
        if (ps_kafka_format_position(pos, sizeof(pos), &end->kafka, t->inputs_hash) < 0) {
            snprintf(t->err, sizeof(t->err), "checkpoint %s: the Kafka position of %u partitions "
                     "does not fit a manifest line", id, end->kafka.n);
            return PS_ELIMIT;
        }
    } else {
        ps_checkpoint_format_position(pos, sizeof(pos), end->file, end->offset, end->lines,
                                      t->inputs_hash);
    }
    r = ps_checkpoint_report(t->client, id, t->worker_name, pos, t->err, sizeof(t->err));
    snprintf(t->handled_ckpt, sizeof(t->handled_ckpt), "%s", id);
    if (r < 0) {
        /* The barrier may already be over (a coordinator that gave up):
         * nothing to wait for. */
        if (r == PS_EUNAVAILABLE)
            return 0;
        return r;
    }
    t->checkpoints++;
    ps_info("checkpoint %s: paused at input position %s", id, pos);
    return ps_checkpoint_wait_end(t->client, id, t->err, sizeof(t->err));
}

/* What a checkpoint's position must have been read from: the input
 * arguments, or a Kafka topic (its brokers may move). */
static uint64_t hash_inputs(const ps_train_options *o) {
    if (o->ninputs == 1 && ps_kafka_is_url(o->inputs[0]))
        return ps_kafka_topic_hash(o->inputs[0]);
    XXH64_state_t *st = XXH64_createState();
    XXH64_reset(st, 0);
    for (size_t i = 0; i < o->ninputs; i++)
        XXH64_update(st, o->inputs[i], strlen(o->inputs[i]) + 1);
    uint64_t h = XXH64_digest(st);
    XXH64_freeState(st);
    return h;
}

static int resume_position(const ps_train_options *o, const char *worker, uint64_t inputs_hash,
                           ps_feed *feed, char *err, size_t errlen) {
    char dir[4096], section[128], pos[256];
    int r = ps_checkpoint_resolve(o->resume, dir, sizeof(dir), err, errlen);
    if (r < 0)
        return r;
    snprintf(section, sizeof(section), "worker.%s", worker);
    r = ps_checkpoint_manifest_get(dir, section, "position", pos, sizeof(pos), err, errlen);
    if (r < 0)
        return r;
    ps_reader_pos p;
    memset(&p, 0, sizeof(p));
    uint64_t h;
    if (ps_kafka_is_position(pos) ? ps_kafka_parse_position(pos, &p.kafka, &h) < 0
                                  : ps_checkpoint_parse_position(pos, &p.file, &p.offset, &p.lines, &h) < 0) {
        snprintf(err, errlen, "%s: [%s] position '%s' is malformed", dir, section, pos);
        return PS_EPARSE;
    }
    if (h != inputs_hash) {
        snprintf(err, errlen, "%s: %s read other inputs (pass the same --input arguments, in order)",
                 dir, worker);
        return PS_ECONFIG;
    }
    r = ps_feed_seek(feed, &p, err, errlen);
    if (r == 0)
        ps_info("resuming from %s at %s", dir, pos);
    return r;
}

/* ---- holdout ----------------------------------------------------------------------- */

static void holdout_free(holdout *h) {
    for (size_t i = 0; i < h->n; i++)
        ps_batch_free(h->batches[i]);
    free(h->batches);
    memset(h, 0, sizeof(*h));
}

/* Score the holdout with the current model, reading rows with Lookup so the
 * evaluation creates and changes nothing (a key never trained scores with a
 * zero row). */
static int holdout_eval(trainer *t, slot *s, holdout *h, double *ret_auc, double *ret_logloss) {
    ps_eval *e = t->hold;
    ps_eval_reset(e);
    int r = 0;
    for (size_t k = 0; k < h->n && r == 0; k++) {
        ps_batch *b = h->batches[k];
        ps_predict_lookup l;
        r = ps_predict_lookup_start(t->client, b, &l);
        int w = ps_predict_lookup_wait(&l, t->err, sizeof(t->err));
        if (r == 0)
            r = w;
        if (r == 0)
            r = ps_model_forward(s->model, b, s->logits);
        for (uint32_t i = 0; r == 0 && i < b->n; i++)
            ps_eval_add(e, s->logits[i], b->labels[i]);
    }
    *ret_auc = ps_eval_auc(e);
    *ret_logloss = ps_eval_logloss(e);
    return r;
}

/* ---- the run ---------------------------------------------------------------------------- */

static void utc_now(char *buf, size_t len) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The input read so far, from the batch just trained: the share done and
 * its pass. The first batch marks where the estimate starts (a resumed run
 * starts part way). */
static void note_position(trainer *t, const ps_batch *b) {
    t->pass = b->pass;
    t->input_done = b->input_done;
    ps_train_live *l = t->o->live;
    if (l) {
        atomic_fetch_add_explicit(&l->examples, b->n, memory_order_relaxed);
        atomic_fetch_add_explicit(&l->batches, 1, memory_order_relaxed);
        pthread_mutex_lock(&l->mu);
        l->pos = b->end;
        l->path = b->end_path;
        l->pass = b->pass;
        l->input_done = b->input_done;
        l->staleness = t->staleness_n ? t->staleness_sum / (double)t->staleness_n : 0;
        pthread_mutex_unlock(&l->mu);
    }
    if (!t->marked) {
        t->marked = true;
        t->mark_time = now_s();
        t->mark_done = b->input_done;
    }
}

/* One progress line (README "Progress lines"); it ends the window. */
/* s: a slot that computes nothing, for the holdout. */
static void progress_line(trainer *t, slot *s, FILE *out, uint64_t examples, double tnow) {
    holdout *h = &t->h;
    ps_feed_counters fc;
    ps_feed_counters_get(t->feed, &fc);
    double elapsed = tnow - t->start, interval = tnow - t->last_report;
    double wa = ps_eval_auc(t->window), wl = ps_eval_logloss(t->window);
    double ca = ps_eval_auc(t->total), cl = ps_eval_logloss(t->total);
    double st = t->staleness_n ? t->staleness_sum / (double)t->staleness_n : 0;
    char hold[128] = "", eta[48] = "", when[32];
    if (h->n) {
        double ha, hl;
        if (holdout_eval(t, s, h, &ha, &hl) == 0)
            snprintf(hold, sizeof(hold), " holdout_auc=%.4f holdout_logloss=%.4f", ha, hl);
    }
    /* Time per share of the input since the first batch, times the share
     * left: known only for files and a finite number of passes. */
    double f = t->input_done, f0 = t->mark_done;
    if (t->marked && isfinite(f) && isfinite(f0) && f > f0)
        snprintf(eta, sizeof(eta), " eta_s=%.0f", (tnow - t->mark_time) * (1 - f) / (f - f0));
    utc_now(when, sizeof(when));
    fprintf(out,
            "progress examples=%llu examples_per_sec=%.0f auc=%.4f logloss=%.4f window_auc=%.4f "
            "window_logloss=%.4f calibration=%.3f malformed=%llu staleness=%.2f%s pass=%u "
            "interval_examples_per_sec=%.0f%s time=%s\n",
            (unsigned long long)examples, elapsed > 0 ? (double)examples / elapsed : 0, ca, cl, wa,
            wl, ps_eval_calibration(t->total), (unsigned long long)fc.malformed, st, hold, t->pass + 1,
            interval > 0 ? (double)(examples - t->last_examples) / interval : 0, eta, when);
    fflush(out);
    if (t->o->live) {
        pthread_mutex_lock(&t->o->live->mu);
        t->o->live->window_auc = wa;
        t->o->live->window_logloss = wl;
        t->o->live->interval_examples_per_sec =
            interval > 0 ? (double)(examples - t->last_examples) / interval : 0;
        pthread_mutex_unlock(&t->o->live->mu);
    }
    ps_eval_reset(t->window);
    t->last_report = tnow;
    t->last_examples = examples;
}

/* Holdout batches are parsed with their own parser and reader. */
static int holdout_read(const ps_train_options *o, const ps_worker_config *w, const ps_batch_layout *L,
                        holdout *h, char *err, size_t errlen) {
    memset(h, 0, sizeof(*h));
    if (!o->holdout)
        return 0;
    ps_parser *parser;
    int r = ps_parser_new(&w->input, &parser, err, errlen);
    if (r < 0)
        return r;
    const char *in[] = {o->holdout};
    ps_reader_options ro = {.inputs = in, .ninputs = 1, .headers = ps_parser_wants_header(parser),
                            .max_line = w->input.max_line_bytes};
    ps_reader *reader;
    r = ps_reader_new(&ro, &reader, err, errlen);
    if (r < 0) {
        ps_parser_free(parser);
        return r;
    }
    ps_example ex;
    ps_example_init(&ex);
    ps_batch *b = NULL;
    for (;;) {
        const char *line, *file;
        size_t len;
        uint64_t lineno;
        char reason[256];
        int rc = ps_reader_next(reader, &line, &len, &file, &lineno, err, errlen);
        if (rc == 0)
            break;
        if (rc < 0 && rc != PS_EPARSE) {
            r = rc;
            break;
        }
        if (rc == 2) {
            if ((r = ps_parser_header(parser, line, len, reason, sizeof(reason))) < 0) {
                snprintf(err, errlen, "%s:1: bad header: %s", file, reason);
                break;
            }
            continue;
        }
        if (rc == PS_EPARSE || len == 0 || ps_parser_parse(parser, line, len, &ex, reason, sizeof(reason)) < 0)
            continue;
        if (!b || b->n == b->cap) {
            ps_batch **g = realloc(h->batches, (h->n + 1) * sizeof(*g));
            if (!g || ps_batch_new(L, w->model.batch_size, &b) < 0) {
                free(g);
                r = -ENOMEM;
                break;
            }
            h->batches = g;
            h->batches[h->n++] = b;
        }
        if ((r = ps_batch_add(b, &ex)) < 0)
            break;
        h->examples++;
    }
    ps_example_deinit(&ex);
    ps_reader_free(reader);
    ps_parser_free(parser);
    if (r == 0 && h->examples == 0) {
        snprintf(err, errlen, "%s: no usable examples", o->holdout);
        r = PS_EPARSE;
    }
    if (r < 0)
        holdout_free(h);
    return r;
}

/* A slot's model and buffers, and its thread when there are two slots. */
static int slot_open(trainer *t, slot *s, bool threaded, char *err, size_t errlen) {
    s->t = t;
    s->dense_gen = UINT64_MAX; /* holds no pull yet */
    int r = ps_model_new(t->L, &s->model, err, errlen);
    if (r < 0)
        return r;
    size_t B = t->w->model.batch_size;
    s->logits = malloc(B * sizeof(float));
    s->dlogits = malloc(B * sizeof(float));
    if (!s->logits || !s->dlogits)
        return -ENOMEM;
    s->params = ps_model_params(s->model);
    t->nblocks = ps_nn_params_count(s->params);
    if (t->nblocks) {
        s->push_blocks = calloc(t->nblocks, sizeof(ps_dense_block));
        if (!s->push_blocks)
            return -ENOMEM;
        for (size_t i = 0; i < t->nblocks; i++) {
            const ps_nn_param *p = ps_nn_params_at(s->params, i);
            s->push_blocks[i] = (ps_dense_block){p->name, p->grad, p->len};
        }
    }
    if (!threaded)
        return 0;
    if (pthread_mutex_init(&s->mu, NULL) != 0)
        return -ENOMEM;
    if (pthread_cond_init(&s->cv, NULL) != 0) {
        pthread_mutex_destroy(&s->mu);
        return -ENOMEM;
    }
    r = pthread_create(&s->thread, NULL, compute_main, s);
    if (r != 0) {
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        snprintf(err, errlen, "compute thread: %s", strerror(r));
        return -r;
    }
    s->threaded = true;
    return 0;
}

static void slot_close(slot *s) {
    if (s->threaded) {
        pthread_mutex_lock(&s->mu);
        s->quit = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
    }
    ps_model_free(s->model);
    free(s->logits);
    free(s->dlogits);
    free(s->push_blocks);
}

/* The dense model's starting point, into slot 0: the first worker creates
 * it on the shards from its initial values; every later one reads what is
 * there. Slot 1 copies it before its first batch (finish_fetch). */
static int dense_setup(trainer *t) {
    slot *s = &t->slots[0];
    t->dense_newest = s;
    s->dense_gen = t->dense_gen = 0;
    if (!t->nblocks)
        return 0;
    for (int k = 0; k < 2; k++) {
        t->staging[k] = malloc(ps_nn_params_total(s->params) * sizeof(float));
        t->pull_blocks[k] = calloc(t->nblocks, sizeof(ps_dense_block));
        if (!t->staging[k] || !t->pull_blocks[k])
            return -ENOMEM;
        float *at = t->staging[k];
        for (size_t i = 0; i < t->nblocks; i++) {
            const ps_nn_param *p = ps_nn_params_at(s->params, i);
            t->pull_blocks[k][i] = (ps_dense_block){p->name, at, p->len};
            at += p->len;
        }
    }
    ps_model_init_params(s->model, t->w->model.seed);
    ps_dense_block *live = calloc(t->nblocks, sizeof(ps_dense_block));
    if (!live)
        return -ENOMEM;
    for (size_t i = 0; i < t->nblocks; i++) {
        const ps_nn_param *p = ps_nn_params_at(s->params, i);
        live[i] = (ps_dense_block){p->name, p->value, p->len};
    }
    int r = ps_client_dense_pull(t->client, live, t->nblocks, true, t->err, sizeof(t->err));
    free(live);
    return r;
}

/* Open everything a run needs, in this order: the feed (parser and reader,
 * moved to the resume position), the batch layout and model, the holdout,
 * the client and the dense model; the feed's thread starts last. */
static int trainer_open(trainer *t, const ps_train_options *o, char *err, size_t errlen) {
    const ps_worker_config *w = ps_worker_config_of(o->cfg);
    memset(t, 0, sizeof(*t));
    t->o = o;
    t->w = w;
    t->L = &t->layout;
    if (!w->input.labelled) {
        snprintf(err, errlen, "[input] labelled = false: training needs labels");
        return PS_ECONFIG;
    }
    int r;
    if ((r = ps_eval_new(&t->total)) < 0 || (r = ps_eval_new(&t->window)) < 0 ||
        (o->holdout && (r = ps_eval_new(&t->hold)) < 0))
        return r;
    ps_feed_options fo;
    ps_train_feed_options(o, &fo);
    r = ps_feed_new(&fo, &t->feed, err, errlen);
    if (r < 0)
        return r;
    ps_checkpoint_worker_name(t->worker_name, sizeof(t->worker_name), o->worker_index, o->num_workers);
    t->inputs_hash = hash_inputs(o);
    if (o->resume && (r = resume_position(o, t->worker_name, t->inputs_hash, t->feed, err, errlen)) < 0)
        return r;
    r = ps_batch_layout_init(&t->layout, o->cfg, ps_feed_ndense(t->feed), err, errlen);
    if (r < 0)
        return r;
    if (t->L->ntables > MAX_TABLES) {
        snprintf(err, errlen, "the model reads %u tables; at most %d are supported", t->L->ntables,
                 MAX_TABLES);
        return PS_ECONFIG;
    }
    /* Two batches compute at once only when the next batch's pull may be
     * sent before this one's push is acknowledged. */
    t->nslots = w->compute_threads >= 2 && w->model.max_in_flight >= 1 ? 2 : 1;
    for (uint32_t i = 0; i < t->nslots; i++)
        if ((r = slot_open(t, &t->slots[i], t->nslots > 1, err, errlen)) < 0)
            return r;
    size_t B = w->model.batch_size;
    t->in_cap = w->model.max_in_flight + 2;
    t->inflight = calloc(t->in_cap, sizeof(pushes));
    if (!t->inflight)
        return -ENOMEM;
    r = holdout_read(o, w, t->L, &t->h, err, errlen);
    if (r < 0)
        return r;
    r = ps_train_client_new(o, "ctrps-worker", &t->client, err, errlen);
    if (r < 0)
        return r;
    if (o->live) {
        pthread_mutex_lock(&o->live->mu);
        o->live->client = t->client;
        pthread_mutex_unlock(&o->live->mu);
    }
    r = dense_setup(t);
    if (r < 0) {
        snprintf(err, errlen, "dense model: %s", t->err[0] ? t->err : ps_strerror(r));
        return r;
    }
    r = ps_feed_start(t->feed, t->L, (uint32_t)B);
    if (r < 0)
        return r;
    t->start = t->last_report = now_s();
    return 0;
}

/* A batch on its way through the loop: taken from the feed, its pull sent
 * (fetched), then computing in its slot (computing). */
typedef struct stage {
    ps_batch *b;                 /* NULL: the input has ended */
    uint64_t k;                  /* its number */
    slot *s;
    fetch f;
    bool fetched, computing;
} stage;

static void stage_take(trainer *t, stage *st, uint64_t k) {
    st->b = ps_feed_take(t->feed);
    st->k = k;
    st->s = &t->slots[k % t->nslots];
    st->f.ncalls = 0;
    st->fetched = st->computing = false;
}

/* Send st's pull once at most `allowed` pushes are unacknowledged. Its
 * staleness: the pushes it will not see, `unsent` of them not sent yet. */
static int stage_fetch(trainer *t, stage *st, size_t allowed, size_t unsent) {
    int r = bound_inflight(t, allowed);
    if (r < 0)
        return r;
    t->staleness_sum += (double)(t->nin + unsent);
    t->staleness_n++;
    st->fetched = true;
    return start_fetch(t, st->b, st->k, &st->f);
}

static int stage_compute(trainer *t, stage *st) {
    int r = finish_fetch(t, st->s, &st->f);
    if (r < 0)
        return r;
    compute_start(st->s, st->b);
    st->computing = true;
    return 0;
}

/* After an error: let the slots finish what they compute (their batches
 * go back to the feed after this), then wait out every call still in
 * flight, whatever it returns (a dead shard's calls end at their
 * deadline), so that the client is left none and no reply lands in a batch
 * that is being freed. t->err keeps the first error. */
static void abandon(trainer *t, stage *q, int nq) {
    char ignored[256];
    for (int k = 0; k < nq; k++) {
        if (q[k].computing && q[k].s->threaded) {
            pthread_mutex_lock(&q[k].s->mu);
            while (q[k].s->job)
                pthread_cond_wait(&q[k].s->cv, &q[k].s->mu);
            pthread_mutex_unlock(&q[k].s->mu);
        }
        for (int i = 0; i < q[k].f.ncalls; i++)
            ps_call_wait(q[k].f.calls[i], ignored, sizeof(ignored));
        q[k].f.ncalls = 0;
    }
    while (t->nin) {
        pushes *p = pop_oldest_push(t);
        for (int i = 0; i < p->ncalls; i++)
            ps_call_wait(p->calls[i], ignored, sizeof(ignored));
    }
}

/* Train on every batch the feed hands over, until it has no more or a call
 * fails. The order of the calls is fixed, whatever the number of slots:
 * batch k+1's pull is sent right after batch k-1's push (with
 * max_in_flight >= 1; after that push is acknowledged with 0), so it sees
 * every push but its predecessor's. With two slots batch k+1 computes while
 * batch k does: it starts once its pull is back, and k's push waits for k's
 * compute. The pushes, the pulls and what each batch computes are then the
 * same as with one slot, bit for bit; only the time differs. Between
 * batches a pending checkpoint barrier is served and a progress line is
 * written every progress_interval_s. */
static int trainer_loop(trainer *t, ps_train_result *ret) {
    const ps_train_options *o = t->o;
    uint32_t mif = t->w->model.max_in_flight;
    bool overlap = t->nslots > 1;
    stage q[3] = {{0}};
    int r = 0;
    uint64_t k = 0;
    stage_take(t, &q[0], 0);
    if (q[0].b) {
        r = stage_fetch(t, &q[0], t->in_cap, 0); /* nothing is unacknowledged yet */
        stage_take(t, &q[1], 1);
        if (r == 0 && q[1].b && mif >= 1)
            r = stage_fetch(t, &q[1], mif - 1, 1);
    }
    while (r == 0 && q[k % 3].b) {
        stage *cur = &q[k % 3], *nxt = &q[(k + 1) % 3], *after = &q[(k + 2) % 3];
        if (!cur->computing && (r = stage_compute(t, cur)) < 0)
            break;
        if (overlap && nxt->b && nxt->fetched && (r = stage_compute(t, nxt)) < 0)
            break;
        r = compute_wait(t, cur->s);
        cur->computing = false;
        if (r < 0)
            break;
        score(t, cur->s, cur->b);
        if ((r = start_pushes(t, cur->b, cur->s)) < 0)
            break;
        ret->batches++;
        ret->examples += cur->b->n;
        note_position(t, cur->b);
        ps_reader_pos trained_to = cur->b->end;
        ps_feed_give_back(t->feed, cur->b);
        cur->b = NULL;
        char pending[64];
        ps_client_checkpoint_pending(t->client, pending, sizeof(pending));
        if (pending[0] && strcmp(pending, t->handled_ckpt) && (r = barrier(t, pending, &trained_to)) < 0)
            break;
        if (nxt->b && !nxt->fetched && (r = stage_fetch(t, nxt, mif, 0)) < 0)
            break;
        if (nxt->b) {
            stage_take(t, after, k + 2);
            if (after->b && mif >= 1 && (r = stage_fetch(t, after, mif - 1, 1)) < 0)
                break;
        }
        if (t->nin == t->in_cap && (r = wait_oldest_push(t)) < 0)
            break;
        double tnow = now_s();
        if (o->progress && tnow - t->last_report >= t->w->progress_interval_s)
            progress_line(t, cur->s, o->progress, ret->examples, tnow);
        k++;
    }
    if (r == 0)
        r = bound_inflight(t, 0);
    if (r < 0)
        abandon(t, q, 3);
    if (r == 0 && o->progress && ret->examples)
        progress_line(t, &t->slots[0], o->progress, ret->examples, now_s());
    return r;
}

/* The final dense model, then the holdout scored with it. */
static int holdout_final(trainer *t, ps_train_result *ret, char *err, size_t errlen) {
    slot *s = &t->slots[0];
    int r = ps_predict_load_dense(t->client, s->model, t->err, sizeof(t->err));
    if (r == 0)
        r = holdout_eval(t, s, &t->h, &ret->holdout_auc, &ret->holdout_logloss);
    if (r < 0)
        snprintf(err, errlen, "holdout: %s", t->err[0] ? t->err : ps_strerror(r));
    ret->has_holdout = true;
    ret->holdout_examples = t->h.examples;
    return r;
}

/* Stop the feed (the one place the reader thread is stopped and joined) and
 * fill in the result; r is how the loop ended. A read error that ended the
 * input early fails a run that had no error of its own. */
static int trainer_finish(trainer *t, int r, ps_train_result *ret, char *err, size_t errlen) {
    if (r < 0 && !err[0])
        snprintf(err, errlen, "%s", t->err[0] ? t->err : ps_strerror(r));
    if (t->has_acked) {
        /* What is acknowledged stays trained, on an error too. */
        char msg[512];
        if (ps_feed_commit(t->feed, &t->acked, true, msg, sizeof(msg)) < 0)
            ps_warn("%s", msg);
    }
    char msg[1024];
    int fr = ps_feed_stop(t->feed, msg, sizeof(msg));
    if (r == 0 && fr < 0) {
        r = fr;
        snprintf(err, errlen, "%s", msg);
    }
    ps_feed_counters fc;
    ps_feed_counters_get(t->feed, &fc);
    ret->seconds = now_s() - t->start;
    ret->examples_per_sec = ret->seconds > 0 ? (double)ret->examples / ret->seconds : 0;
    ret->malformed = fc.malformed;
    ret->auc = ps_eval_auc(t->total);
    ret->logloss = ps_eval_logloss(t->total);
    ret->calibration = ps_eval_calibration(t->total);
    ret->mean_staleness = t->staleness_n ? t->staleness_sum / (double)t->staleness_n : 0;
    if (r == 0 && t->h.n)
        r = holdout_final(t, ret, err, errlen);
    ret->checkpoints = t->checkpoints;
    ps_client_counters cc;
    ps_client_counters_get(t->client, &cc);
    ret->reconnects = cc.reconnects;
    return r;
}

static void trainer_close(trainer *t) {
    if (t->o && t->o->live) {
        /* The endpoint reads both: gone before they are. */
        pthread_mutex_lock(&t->o->live->mu);
        t->o->live->client = NULL;
        t->o->live->path = NULL;
        pthread_mutex_unlock(&t->o->live->mu);
    }
    /* The client first: its I/O thread writes pulled rows into batches. */
    ps_client_free(t->client);
    ps_feed_free(t->feed);
    holdout_free(&t->h);
    for (uint32_t i = 0; i < t->nslots; i++)
        slot_close(&t->slots[i]);
    for (int k = 0; k < 2; k++) {
        free(t->staging[k]);
        free(t->pull_blocks[k]);
    }
    free(t->inflight);
    ps_eval_free(t->total);
    ps_eval_free(t->window);
    ps_eval_free(t->hold);
    ps_batch_layout_deinit(&t->layout);
}

void ps_train_result_init(ps_train_result *r) {
    memset(r, 0, sizeof(*r));
    r->auc = r->logloss = r->calibration = NAN;
}

int ps_train_run(const ps_train_options *o, ps_train_result *ret, char *err, size_t errlen) {
    ps_train_result_init(ret);
    err[0] = '\0';
    trainer t;
    int r = trainer_open(&t, o, err, errlen);
    if (r == 0) {
        r = trainer_loop(&t, ret);
        r = trainer_finish(&t, r, ret, err, errlen);
    }
    trainer_close(&t);
    return r;
}

static void json_num(FILE *out, const char *key, double v, bool comma) {
    if (isfinite(v))
        fprintf(out, "\"%s\":%.6g%s", key, v, comma ? "," : "");
    else
        fprintf(out, "\"%s\":null%s", key, comma ? "," : "");
}

/* A JSON string: quotes, backslashes and control bytes escaped; other bytes
 * as they are (messages are ASCII but for file names, taken to be UTF-8). */
static void json_string(FILE *out, const char *s) {
    fputc('"', out);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

void ps_train_result_json(const ps_train_result *r, const char *error, FILE *out) {
    fprintf(out, "{\"examples\":%llu,", (unsigned long long)r->examples);
    if (r->predicted)
        fprintf(out, "\"lines\":%llu,", (unsigned long long)r->lines);
    json_num(out, "examples_per_sec", r->examples_per_sec, true);
    json_num(out, "auc", r->auc, true);
    json_num(out, "logloss", r->logloss, true);
    json_num(out, "calibration", r->calibration, true);
    json_num(out, "holdout_auc", r->has_holdout ? r->holdout_auc : NAN, true);
    json_num(out, "holdout_logloss", r->has_holdout ? r->holdout_logloss : NAN, true);
    fprintf(out, "\"holdout_examples\":%llu,\"malformed\":%llu,\"batches\":%llu,",
            (unsigned long long)r->holdout_examples, (unsigned long long)r->malformed,
            (unsigned long long)r->batches);
    json_num(out, "seconds", r->seconds, true);
    json_num(out, "mean_staleness", r->mean_staleness, true);
    fprintf(out, "\"reconnects\":%llu,\"checkpoints\":%llu", (unsigned long long)r->reconnects,
            (unsigned long long)r->checkpoints);
    if (error) {
        fputs(",\"error\":", out);
        json_string(out, error);
    }
    fputs("}\n", out);
    fflush(out);
}
