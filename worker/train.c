#include "train.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batch.h"
#include "checkpoint.h"
#include "client.h"
#include "error.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "parse.h"
#include "wconfig.h"

#include <xxhash.h>

#define MAX_TABLES 16

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- batch queue between the reader thread and the training thread --------- */

typedef struct queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ps_batch **free;             /* batches to fill */
    size_t nfree;
    ps_batch **ready;            /* FIFO of filled batches */
    size_t head, count, cap;
    bool done;                   /* the reader has finished */
    bool quit;                   /* the trainer gave up: stop reading */
    int error;
    char msg[512];
} queue;

static ps_batch *queue_take_free(queue *q) {
    pthread_mutex_lock(&q->mu);
    while (q->nfree == 0 && !q->quit)
        pthread_cond_wait(&q->cv, &q->mu);
    ps_batch *b = q->quit ? NULL : q->free[--q->nfree];
    pthread_mutex_unlock(&q->mu);
    if (b)
        ps_batch_clear(b);
    return b;
}

static void queue_put_ready(queue *q, ps_batch *b) {
    pthread_mutex_lock(&q->mu);
    q->ready[(q->head + q->count++) % q->cap] = b;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

static void queue_put_free(queue *q, ps_batch *b) {
    pthread_mutex_lock(&q->mu);
    q->free[q->nfree++] = b;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

/* Next filled batch, or NULL once the reader is done and all were taken. */
static ps_batch *queue_take_ready(queue *q) {
    pthread_mutex_lock(&q->mu);
    while (q->count == 0 && !q->done)
        pthread_cond_wait(&q->cv, &q->mu);
    ps_batch *b = NULL;
    if (q->count) {
        b = q->ready[q->head];
        q->head = (q->head + 1) % q->cap;
        q->count--;
    }
    pthread_mutex_unlock(&q->mu);
    return b;
}

/* ---- reading and parsing (the reader thread) ------------------------------------ */

typedef struct producer {
    const ps_train_options *o;
    const ps_worker_config *w;
    ps_reader *reader;
    ps_parser *parser;
    ps_example ex;
    queue *q;
    uint32_t batch_size;
    atomic_uint_fast64_t examples, malformed;
    /* rate limit for messages about bad lines */
    double log_window;
    uint32_t logged;
    uint64_t suppressed;
} producer;

static void report_bad_line(producer *p, const char *file, uint64_t lineno, const char *reason) {
    atomic_fetch_add(&p->malformed, 1);
    double t = now_s();
    if (t - p->log_window >= 1.0) {
        if (p->suppressed)
            ps_warn("%llu more malformed lines not shown", (unsigned long long)p->suppressed);
        p->log_window = t;
        p->logged = 0;
        p->suppressed = 0;
    }
    if (p->logged < p->w->malformed_log_per_s) {
        p->logged++;
        ps_warn("%s:%llu: skipped: %s", file, (unsigned long long)lineno, reason);
    } else {
        p->suppressed++;
    }
}

static bool stop_requested(const producer *p) { return p->o->stop && *p->o->stop; }

static void *producer_main(void *arg) {
    producer *p = arg;
    queue *q = p->q;
    ps_batch *b = queue_take_free(q);
    char err[512], reason[256];
    int status = 0;
    uint64_t max = p->o->max_examples;
    for (uint32_t pass = 0; b && pass < p->o->passes && status == 0; pass++) {
        if (pass > 0 && ps_reader_rewind(p->reader) < 0)
            break;
        for (;;) {
            if (stop_requested(p) && !p->o->follow)
                break;
            if (max && atomic_load(&p->examples) >= max)
                break;
            const char *line, *file;
            size_t len;
            uint64_t lineno;
            int rc = ps_reader_next(p->reader, &line, &len, &file, &lineno, err, sizeof(err));
            if (rc == 0)
                break;
            if (rc == PS_EPARSE) {
                report_bad_line(p, file, lineno, "line too long");
                continue;
            }
            if (rc < 0) {
                status = rc;
                break;
            }
            b->lines++;
            if (rc == 2) {
                if (ps_parser_header(p->parser, line, len, reason, sizeof(reason)) < 0) {
                    snprintf(err, sizeof(err), "%s:1: bad header: %s", file, reason);
                    status = PS_EPARSE;
                    break;
                }
                continue;
            }
            if (len == 0)
                continue; /* blank lines are not data */
            if (ps_parser_parse(p->parser, line, len, &p->ex, reason, sizeof(reason)) < 0) {
                report_bad_line(p, file, lineno, reason);
                b->malformed++;
                continue;
            }
            int ar = ps_batch_add(b, &p->ex);
            if (ar < 0) {
                snprintf(err, sizeof(err), "batching: %s", ps_strerror(ar));
                status = ar;
                break;
            }
            atomic_fetch_add(&p->examples, 1);
            if (b->n == p->batch_size) {
                ps_reader_position(p->reader, &b->end);
                queue_put_ready(q, b);
                b = queue_take_free(q);
                if (!b)
                    break;
            }
        }
        if (!ps_reader_seekable(p->reader))
            break; /* stdin cannot be read twice */
    }
    if (b && b->n > 0) {
        ps_reader_position(p->reader, &b->end);
        queue_put_ready(q, b);
    } else if (b) {
        queue_put_free(q, b);
    }
    pthread_mutex_lock(&q->mu);
    q->done = true;
    if (status < 0) {
        q->error = status;
        snprintf(q->msg, sizeof(q->msg), "%s", err);
    }
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/* ---- training ------------------------------------------------------------------------ */

typedef struct fetch {
    ps_call *calls[MAX_TABLES + 1];
    int ncalls;
    bool dense;                  /* a dense pull into the staging copy is part of it */
} fetch;

typedef struct pushes {
    ps_call *calls[MAX_TABLES + 1];
    int ncalls;
} pushes;

typedef struct trainer {
    const ps_train_options *o;
    const ps_worker_config *w;
    const ps_batch_layout *L;
    ps_client *client;
    ps_model *model;
    ps_nn_params *params;
    size_t nblocks;
    ps_dense_block *pull_blocks; /* into staging */
    ps_dense_block *push_blocks; /* from grads */
    float *staging;
    float *logits, *dlogits, *probs;
    pushes *inflight;            /* ring of outstanding pushes */
    size_t nin, in_head, in_cap;
    uint64_t batches_started;
    double staleness_sum;
    uint64_t staleness_n;
    ps_eval total, window;
    char worker_name[64];
    uint64_t inputs_hash;
    char handled_ckpt[64];       /* the last barrier this worker reported at */
    uint64_t checkpoints;
    char err[1024];
} trainer;

static int start_fetch(trainer *t, ps_batch *b, fetch *f) {
    f->ncalls = 0;
    f->dense = false;
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
        int r = ps_client_dense_pull_start(t->client, t->pull_blocks, t->nblocks, &c);
        if (r < 0)
            return r;
        f->calls[f->ncalls++] = c;
        f->dense = true;
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

static int finish_fetch(trainer *t, fetch *f) {
    int r = wait_calls(t, f->calls, f->ncalls);
    if (r == 0 && f->dense) {
        const float *src = t->staging;
        for (size_t i = 0; i < t->nblocks; i++) {
            const ps_nn_param *p = ps_nn_params_at(t->params, i);
            memcpy(p->value, src, p->len * sizeof(float));
            src += p->len;
        }
    }
    return r;
}

static int wait_oldest_push(trainer *t) {
    pushes *p = &t->inflight[t->in_head];
    t->in_head = (t->in_head + 1) % t->in_cap;
    t->nin--;
    return wait_calls(t, p->calls, p->ncalls);
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

static int start_pushes(trainer *t, ps_batch *b) {
    pushes *p = &t->inflight[(t->in_head + t->nin) % t->in_cap];
    p->ncalls = 0;
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
        int r = ps_client_dense_push_start(t->client, t->push_blocks, t->nblocks, &p->calls[p->ncalls]);
        if (r < 0)
            return r;
        p->ncalls++;
    }
    t->nin++;
    return 0;
}

static int compute(trainer *t, ps_batch *b) {
    int r = ps_model_forward(t->model, b, t->logits);
    if (r < 0) {
        snprintf(t->err, sizeof(t->err), "forward: %s", ps_strerror(r));
        return r;
    }
    /* Progressive validation: every example is scored before it trains. */
    for (uint32_t i = 0; i < b->n; i++) {
        double z = t->logits[i], p = ps_sigmoid(z);
        if (ps_eval_add(&t->total, z, p, b->labels[i]) < 0 ||
            ps_eval_add(&t->window, z, p, b->labels[i]) < 0)
            return -ENOMEM;
        t->dlogits[i] = (float)((p - b->labels[i]) / b->n);
    }
    if (t->nblocks)
        ps_nn_params_zero_grad(t->params);
    r = ps_model_backward(t->model, b, t->dlogits);
    if (r < 0)
        snprintf(t->err, sizeof(t->err), "backward: %s", ps_strerror(r));
    return r;
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
    ps_checkpoint_format_position(pos, sizeof(pos), end->file, end->offset, end->lines, t->inputs_hash);
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

static uint64_t hash_inputs(const ps_train_options *o) {
    XXH64_state_t *st = XXH64_createState();
    XXH64_reset(st, 0);
    for (size_t i = 0; i < o->ninputs; i++)
        XXH64_update(st, o->inputs[i], strlen(o->inputs[i]) + 1);
    uint64_t h = XXH64_digest(st);
    XXH64_freeState(st);
    return h;
}

static int resume_position(const ps_train_options *o, const char *worker, uint64_t inputs_hash,
                           ps_reader *reader, char *err, size_t errlen) {
    char dir[4096], section[128], pos[256];
    int r = ps_checkpoint_resolve(o->resume, dir, sizeof(dir), err, errlen);
    if (r < 0)
        return r;
    snprintf(section, sizeof(section), "worker.%s", worker);
    r = ps_checkpoint_manifest_get(dir, section, "position", pos, sizeof(pos), err, errlen);
    if (r < 0)
        return r;
    ps_reader_pos p;
    uint64_t h;
    if (ps_checkpoint_parse_position(pos, &p.file, &p.offset, &p.lines, &h) < 0) {
        snprintf(err, errlen, "%s: [%s] position '%s' is malformed", dir, section, pos);
        return PS_EPARSE;
    }
    if (h != inputs_hash) {
        snprintf(err, errlen, "%s: %s read other inputs (pass the same --input arguments, in order)",
                 dir, worker);
        return PS_ECONFIG;
    }
    r = ps_reader_seek(reader, &p, err, errlen);
    if (r == 0)
        ps_info("resuming from %s at %s", dir, pos);
    return r;
}

/* ---- holdout ----------------------------------------------------------------------- */

typedef struct holdout {
    ps_batch **batches;
    size_t n;
    uint64_t examples;
} holdout;

static void holdout_free(holdout *h) {
    for (size_t i = 0; i < h->n; i++)
        ps_batch_free(h->batches[i]);
    free(h->batches);
    memset(h, 0, sizeof(*h));
}

/* Score the holdout with the current model, reading rows with Lookup so the
 * evaluation creates and changes nothing (a key never trained scores with a
 * zero row). */
static int holdout_eval(trainer *t, holdout *h, double *ret_auc, double *ret_logloss) {
    ps_eval e;
    ps_eval_init(&e);
    int r = 0;
    for (size_t k = 0; k < h->n && r == 0; k++) {
        ps_batch *b = h->batches[k];
        ps_call *calls[MAX_TABLES];
        int n = 0;
        uint8_t *found[MAX_TABLES] = {0};
        for (uint32_t i = 0; i < t->L->ntables && r == 0; i++) {
            ps_batch_table *bt = &b->tables[i];
            if (bt->nkeys == 0)
                continue;
            found[i] = malloc(bt->nkeys);
            if (!found[i]) {
                r = -ENOMEM;
                break;
            }
            r = ps_client_lookup_start(t->client, bt->cfg->name, bt->dim, 0, bt->keys, bt->nkeys,
                                       found[i], bt->values, NULL, &calls[n]);
            if (r == 0)
                n++;
        }
        int w = wait_calls(t, calls, n);
        for (uint32_t i = 0; i < MAX_TABLES; i++)
            free(found[i]);
        if (r == 0)
            r = w;
        if (r == 0)
            r = ps_model_forward(t->model, b, t->logits);
        for (uint32_t i = 0; r == 0 && i < b->n; i++)
            r = ps_eval_add(&e, t->logits[i], ps_sigmoid(t->logits[i]), b->labels[i]);
    }
    *ret_auc = ps_eval_auc(&e);
    *ret_logloss = ps_eval_logloss(&e);
    ps_eval_deinit(&e);
    return r;
}

/* ---- the run ---------------------------------------------------------------------------- */

static void progress_line(trainer *t, FILE *out, uint64_t examples, double elapsed,
                          uint64_t malformed, holdout *h) {
    double wa = ps_eval_auc(&t->window), wl = ps_eval_logloss(&t->window);
    double ca = ps_eval_auc(&t->total), cl = ps_eval_logloss(&t->total);
    double st = t->staleness_n ? t->staleness_sum / (double)t->staleness_n : 0;
    char hold[128] = "";
    if (h->n) {
        double ha, hl;
        if (holdout_eval(t, h, &ha, &hl) == 0)
            snprintf(hold, sizeof(hold), " holdout_auc=%.4f holdout_logloss=%.4f", ha, hl);
    }
    fprintf(out,
            "progress examples=%llu examples_per_sec=%.0f auc=%.4f logloss=%.4f window_auc=%.4f "
            "window_logloss=%.4f calibration=%.3f malformed=%llu staleness=%.2f%s\n",
            (unsigned long long)examples, elapsed > 0 ? (double)examples / elapsed : 0, ca, cl, wa,
            wl, ps_eval_calibration(&t->total), (unsigned long long)malformed, st, hold);
    fflush(out);
    ps_eval_reset(&t->window);
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

static int dense_setup(trainer *t) {
    t->params = ps_model_params(t->model);
    t->nblocks = ps_nn_params_count(t->params);
    if (!t->nblocks)
        return 0;
    size_t total = ps_nn_params_total(t->params);
    t->staging = malloc(total * sizeof(float));
    t->pull_blocks = calloc(t->nblocks, sizeof(ps_dense_block));
    t->push_blocks = calloc(t->nblocks, sizeof(ps_dense_block));
    if (!t->staging || !t->pull_blocks || !t->push_blocks)
        return -ENOMEM;
    ps_model_init_params(t->model, t->w->model.seed);
    float *s = t->staging;
    ps_dense_block *live = calloc(t->nblocks, sizeof(ps_dense_block));
    if (!live)
        return -ENOMEM;
    for (size_t i = 0; i < t->nblocks; i++) {
        const ps_nn_param *p = ps_nn_params_at(t->params, i);
        t->pull_blocks[i] = (ps_dense_block){p->name, s, p->len};
        t->push_blocks[i] = (ps_dense_block){p->name, p->grad, p->len};
        live[i] = (ps_dense_block){p->name, p->value, p->len};
        s += p->len;
    }
    /* The first worker creates the dense model from its initial values;
     * every later one reads what is there. */
    int r = ps_client_dense_pull(t->client, live, t->nblocks, true, t->err, sizeof(t->err));
    free(live);
    return r;
}

int ps_train_run(const ps_train_options *o, ps_train_result *ret, char *err, size_t errlen) {
    const ps_worker_config *w = ps_worker_config_of(o->cfg);
    memset(ret, 0, sizeof(*ret));
    err[0] = '\0';
    if (!w->input.labelled) {
        snprintf(err, errlen, "[input] labelled = false: training needs labels");
        return PS_ECONFIG;
    }
    int r = 0;
    trainer t;
    memset(&t, 0, sizeof(t));
    t.o = o;
    t.w = w;
    ps_eval_init(&t.total);
    ps_eval_init(&t.window);
    producer p;
    memset(&p, 0, sizeof(p));
    p.o = o;
    p.w = w;
    p.batch_size = w->model.batch_size;
    ps_example_init(&p.ex);
    queue q;
    memset(&q, 0, sizeof(q));
    pthread_mutex_init(&q.mu, NULL);
    pthread_cond_init(&q.cv, NULL);
    ps_batch_layout L;
    memset(&L, 0, sizeof(L));
    holdout h;
    memset(&h, 0, sizeof(h));
    bool producer_started = false;
    pthread_t prod;

    r = ps_parser_new(&w->input, &p.parser, err, errlen);
    if (r < 0)
        goto out;
    ps_reader_options ro = {.inputs = o->inputs,
                            .ninputs = o->ninputs,
                            .follow = o->follow,
                            .worker_index = o->worker_index,
                            .num_workers = o->num_workers,
                            .max_line = w->input.max_line_bytes,
                            .headers = ps_parser_wants_header(p.parser),
                            .stop = o->stop};
    r = ps_reader_new(&ro, &p.reader, err, errlen);
    if (r < 0)
        goto out;
    ps_checkpoint_worker_name(t.worker_name, sizeof(t.worker_name), o->worker_index, o->num_workers);
    t.inputs_hash = hash_inputs(o);
    if (o->resume && (r = resume_position(o, t.worker_name, t.inputs_hash, p.reader, err, errlen)) < 0)
        goto out;
    r = ps_batch_layout_init(&L, o->cfg, ps_parser_ndense(p.parser), err, errlen);
    if (r < 0)
        goto out;
    if (L.ntables > MAX_TABLES) {
        snprintf(err, errlen, "the model reads %u tables; at most %d are supported", L.ntables, MAX_TABLES);
        r = PS_ECONFIG;
        goto out;
    }
    t.L = &L;
    r = ps_model_new(&L, &t.model, err, errlen);
    if (r < 0)
        goto out;
    size_t B = w->model.batch_size;
    t.logits = malloc(B * sizeof(float));
    t.dlogits = malloc(B * sizeof(float));
    t.in_cap = w->model.max_in_flight + 2;
    t.inflight = calloc(t.in_cap, sizeof(pushes));
    /* Batches in circulation: one computing, one prefetched, the reader's,
     * and two of slack so the reader parses ahead. */
    q.cap = 5;
    q.free = calloc(q.cap, sizeof(ps_batch *));
    q.ready = calloc(q.cap, sizeof(ps_batch *));
    if (!t.logits || !t.dlogits || !t.inflight || !q.free || !q.ready) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < q.cap; i++) {
        if ((r = ps_batch_new(&L, (uint32_t)B, &q.free[i])) < 0)
            goto out;
        q.nfree++;
    }
    r = holdout_read(o, w, &L, &h, err, errlen);
    if (r < 0)
        goto out;
    ps_client_options co = {.cfg = o->cfg, .name = "ctrps-worker", .timeout_ms = w->timeout_ms};
    r = ps_client_new(&co, &t.client, err, errlen);
    if (r < 0)
        goto out;
    r = dense_setup(&t);
    if (r < 0) {
        snprintf(err, errlen, "dense model: %s", t.err[0] ? t.err : ps_strerror(r));
        goto out;
    }

    p.q = &q;
    if (pthread_create(&prod, NULL, producer_main, &p) != 0) {
        r = -errno;
        goto out;
    }
    producer_started = true;

    double start = now_s(), last_report = start;
    uint32_t mif = w->model.max_in_flight;
    fetch fcur = {0}, fnext = {0};
    ps_batch *cur = queue_take_ready(&q);
    if (cur) {
        t.staleness_n++; /* nothing is unacknowledged before the first pull */
        r = start_fetch(&t, cur, &fcur);
    }
    while (cur && r == 0) {
        ps_batch *nxt = queue_take_ready(&q);
        bool prefetched = false;
        if (nxt && mif >= 1) {
            /* The current batch's push is not even sent: it counts. */
            if ((r = bound_inflight(&t, mif - 1)) < 0)
                break;
            t.staleness_sum += (double)(t.nin + 1);
            t.staleness_n++;
            if ((r = start_fetch(&t, nxt, &fnext)) < 0)
                break;
            prefetched = true;
        }
        if ((r = finish_fetch(&t, &fcur)) < 0)
            break;
        if ((r = compute(&t, cur)) < 0)
            break;
        if ((r = start_pushes(&t, cur)) < 0)
            break;
        ret->batches++;
        ret->examples += cur->n;
        ps_reader_pos trained_to = cur->end;
        queue_put_free(&q, cur);
        char pending[64];
        ps_client_checkpoint_pending(t.client, pending, sizeof(pending));
        if (pending[0] && strcmp(pending, t.handled_ckpt) && (r = barrier(&t, pending, &trained_to)) < 0)
            break;
        if (nxt && !prefetched) {
            if ((r = bound_inflight(&t, mif)) < 0)
                break;
            t.staleness_sum += (double)t.nin;
            t.staleness_n++;
            if ((r = start_fetch(&t, nxt, &fnext)) < 0)
                break;
        }
        if (t.nin == t.in_cap && (r = wait_oldest_push(&t)) < 0)
            break;
        cur = nxt;
        fcur = fnext;
        double tnow = now_s();
        if (o->progress && tnow - last_report >= w->progress_interval_s) {
            progress_line(&t, o->progress, ret->examples, tnow - start, atomic_load(&p.malformed), &h);
            last_report = tnow;
        }
    }
    if (r == 0)
        r = bound_inflight(&t, 0);
    if (r == 0 && o->progress && ret->examples)
        progress_line(&t, o->progress, ret->examples, now_s() - start, atomic_load(&p.malformed), &h);
    if (r < 0 && !err[0])
        snprintf(err, errlen, "%s", t.err[0] ? t.err : ps_strerror(r));
    pthread_mutex_lock(&q.mu);
    q.quit = true;
    pthread_cond_broadcast(&q.cv);
    pthread_mutex_unlock(&q.mu);
    pthread_join(prod, NULL);
    producer_started = false;
    if (r == 0 && q.error) {
        r = q.error;
        snprintf(err, errlen, "%s", q.msg);
    }
    ret->seconds = now_s() - start;
    ret->examples_per_sec = ret->seconds > 0 ? (double)ret->examples / ret->seconds : 0;
    ret->malformed = atomic_load(&p.malformed);
    ret->auc = ps_eval_auc(&t.total);
    ret->logloss = ps_eval_logloss(&t.total);
    ret->calibration = ps_eval_calibration(&t.total);
    ret->mean_staleness = t.staleness_n ? t.staleness_sum / (double)t.staleness_n : 0;
    if (r == 0 && h.n) {
        /* The final dense model, then the holdout. */
        if (t.nblocks) {
            ps_dense_block *live = calloc(t.nblocks, sizeof(ps_dense_block));
            for (size_t i = 0; live && i < t.nblocks; i++) {
                const ps_nn_param *pp = ps_nn_params_at(t.params, i);
                live[i] = (ps_dense_block){pp->name, pp->value, pp->len};
            }
            r = live ? ps_client_dense_pull(t.client, live, t.nblocks, false, t.err, sizeof(t.err)) : -ENOMEM;
            free(live);
        }
        if (r == 0)
            r = holdout_eval(&t, &h, &ret->holdout_auc, &ret->holdout_logloss);
        if (r < 0)
            snprintf(err, errlen, "holdout: %s", t.err[0] ? t.err : ps_strerror(r));
        ret->has_holdout = true;
        ret->holdout_examples = h.examples;
    }
    ret->checkpoints = t.checkpoints;
    if (t.client) {
        ps_client_counters cc;
        ps_client_counters_get(t.client, &cc);
        ret->reconnects = cc.reconnects;
    }
out:
    if (producer_started) {
        pthread_mutex_lock(&q.mu);
        q.quit = true;
        pthread_cond_broadcast(&q.cv);
        pthread_mutex_unlock(&q.mu);
        pthread_join(prod, NULL);
    }
    ps_client_free(t.client);
    holdout_free(&h);
    for (size_t i = 0; i < q.nfree; i++)
        ps_batch_free(q.free[i]);
    for (size_t i = 0; i < q.count; i++)
        ps_batch_free(q.ready[(q.head + i) % q.cap]);
    free(q.free);
    free(q.ready);
    pthread_mutex_destroy(&q.mu);
    pthread_cond_destroy(&q.cv);
    ps_model_free(t.model);
    free(t.logits);
    free(t.dlogits);
    free(t.inflight);
    free(t.staging);
    free(t.pull_blocks);
    free(t.push_blocks);
    ps_eval_deinit(&t.total);
    ps_eval_deinit(&t.window);
    ps_batch_layout_deinit(&L);
    ps_reader_free(p.reader);
    ps_parser_free(p.parser);
    ps_example_deinit(&p.ex);
    return r;
}

static void json_num(FILE *out, const char *key, double v, bool comma) {
    if (isfinite(v))
        fprintf(out, "\"%s\":%.6g%s", key, v, comma ? "," : "");
    else
        fprintf(out, "\"%s\":null%s", key, comma ? "," : "");
}

void ps_train_result_json(const ps_train_result *r, FILE *out) {
    fprintf(out, "{\"examples\":%llu,", (unsigned long long)r->examples);
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
    fprintf(out, "\"reconnects\":%llu,\"checkpoints\":%llu}\n", (unsigned long long)r->reconnects,
            (unsigned long long)r->checkpoints);
    fflush(out);
}
