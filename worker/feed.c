#include "feed.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "log.h"

/* Batches in circulation: one computing, one prefetched, the reader's, and
 * two of slack so the reader parses ahead. */
#define FEED_BATCHES 5

struct ps_feed {
    ps_feed_options o;
    ps_parser *parser;
    ps_reader *reader;
    ps_example ex;               /* the reader thread's parse target */
    uint32_t batch_size;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    ps_batch *all[FEED_BATCHES]; /* owned, wherever they are */
    size_t nall;
    ps_batch *free[FEED_BATCHES]; /* batches to fill */
    size_t nfree;
    ps_batch *ready[FEED_BATCHES]; /* FIFO of filled batches */
    size_t head, count;
    bool done;                   /* the reader thread has finished */
    bool quit;                   /* the trainer gave up: stop reading */
    volatile sig_atomic_t reader_quit; /* the same for a reader waiting in follow mode */
    int error;
    char msg[1024];
    pthread_t thread;
    bool running;                /* started and not joined yet */

    atomic_uint_fast64_t examples, malformed;
    char first_bad[512];         /* FILE:LINE: reason of the first malformed line */
    /* rate limit for messages about bad lines (the reader thread's) */
    double log_window;
    uint32_t logged;
    uint64_t suppressed;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- the queue ------------------------------------------------------------------------ */

static ps_batch *take_free(ps_feed *f) {
    pthread_mutex_lock(&f->mu);
    while (f->nfree == 0 && !f->quit)
        pthread_cond_wait(&f->cv, &f->mu);
    ps_batch *b = f->quit ? NULL : f->free[--f->nfree];
    pthread_mutex_unlock(&f->mu);
    if (b)
        ps_batch_clear(b);
    return b;
}

static void put_ready(ps_feed *f, ps_batch *b) {
    pthread_mutex_lock(&f->mu);
    f->ready[(f->head + f->count++) % FEED_BATCHES] = b;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

void ps_feed_give_back(ps_feed *f, ps_batch *b) {
    pthread_mutex_lock(&f->mu);
    f->free[f->nfree++] = b;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static ps_batch *take_ready(ps_feed *f, bool wait) {
    pthread_mutex_lock(&f->mu);
    while (wait && f->count == 0 && !f->done)
        pthread_cond_wait(&f->cv, &f->mu);
    ps_batch *b = NULL;
    if (f->count) {
        b = f->ready[f->head];
        f->head = (f->head + 1) % FEED_BATCHES;
        f->count--;
    }
    pthread_mutex_unlock(&f->mu);
    return b;
}

ps_batch *ps_feed_take(ps_feed *f) { return take_ready(f, true); }

ps_batch *ps_feed_try_take(ps_feed *f) { return take_ready(f, false); }

/* ---- the reader thread ------------------------------------------------------------------ */

static void report_bad_line(ps_feed *f, const char *file, uint64_t lineno, const char *reason) {
    if (atomic_fetch_add(&f->malformed, 1) == 0)
        snprintf(f->first_bad, sizeof(f->first_bad), "%s:%llu: %s", file, (unsigned long long)lineno,
                 reason);
    double t = now_s();
    if (t - f->log_window >= 1.0) {
        if (f->suppressed)
            ps_warn("%llu more malformed lines not shown", (unsigned long long)f->suppressed);
        f->log_window = t;
        f->logged = 0;
        f->suppressed = 0;
    }
    if (f->logged < f->o.malformed_log_per_s) {
        f->logged++;
        ps_warn("%s:%llu: skipped: %s", file, (unsigned long long)lineno, reason);
    } else {
        f->suppressed++;
    }
}

static bool stop_requested(const ps_feed *f) { return f->o.stop && *f->o.stop; }

/* A batch is complete: where reading stands after it, for checkpoints and
 * progress. The share read counts bytes over all passes, or examples
 * against max_examples, whichever is further. */
static void seal(ps_feed *f, ps_batch *b, uint32_t pass) {
    ps_reader_position(f->reader, &b->end);
    b->pass = pass;
    double done = NAN;
    uint64_t bytes, total;
    if (ps_reader_progress(f->reader, &b->end, &bytes, &total) == 0 && total > 0)
        done = ((double)pass * (double)total + (double)bytes) / ((double)f->o.passes * (double)total);
    if (f->o.max_examples) {
        double d = (double)atomic_load(&f->examples) / (double)f->o.max_examples;
        if (isnan(done) || d > done)
            done = d;
    }
    b->input_done = done > 1 ? 1 : done;
}

/* Pass the filled batch *b on and take a free one into *b; true when none
 * is left (the trainer quit). */
static bool hand_over(ps_feed *f, ps_batch **b, uint32_t pass) {
    seal(f, *b, pass);
    put_ready(f, *b);
    *b = take_free(f);
    return *b == NULL;
}

/* With output_lines: record the line in its batch (its id column, if any). */
static int note_line(ps_feed *f, ps_batch *b, bool parsed, const char *line, size_t len) {
    if (!f->o.output_lines)
        return 0;
    const char *id = NULL;
    size_t idlen = 0;
    if (line && f->o.input->id_column &&
        ps_input_column(f->o.input, line, len, f->o.input->id_column, &id, &idlen) < 0)
        idlen = 0;
    return ps_batch_note_line(b, parsed, id, idlen);
}

/* One pass over the input into batches. Returns 0 at its end, a negative
 * code on an error (message in err), or 1 when no free batch is left to
 * fill (the trainer quit). *b is the batch being filled. */
static int read_pass(ps_feed *f, uint32_t pass, ps_batch **b, char *err, size_t errlen) {
    char reason[256];
    uint64_t max = f->o.max_examples;
    bool out = f->o.output_lines;
    for (;;) {
        if (stop_requested(f) && !f->o.follow)
            return 0;
        if (max && atomic_load(&f->examples) >= max)
            return 0;
        const char *line, *file;
        size_t len;
        uint64_t lineno;
        int rc = ps_reader_next(f->reader, &line, &len, &file, &lineno, err, errlen);
        if (rc == 0)
            return 0;
        if (rc == 3) {
            /* The input waits (follow): pass on the lines read so far, so
             * that their predictions come out now, not with later lines. */
            if ((*b)->nout > 0 && hand_over(f, b, pass))
                return 1;
            continue;
        }
        int ar = 0;
        if (rc == PS_EPARSE) {
            report_bad_line(f, file, lineno, "line too long");
            ar = note_line(f, *b, false, NULL, 0);
        } else if (rc < 0) {
            return rc;
        } else if (rc == 2) {
            (*b)->lines++;
            if (ps_parser_header(f->parser, line, len, reason, sizeof(reason)) < 0) {
                snprintf(err, errlen, "%s:1: bad header: %s", file, reason);
                return PS_EPARSE;
            }
            continue;
        } else if (len == 0 && !out) {
            (*b)->lines++;
            continue; /* blank lines are not data (but get an output line) */
        } else if (ps_parser_parse(f->parser, line, len, &f->ex, reason, sizeof(reason)) < 0) {
            (*b)->lines++;
            report_bad_line(f, file, lineno, reason);
            (*b)->malformed++;
            ar = note_line(f, *b, false, line, len);
        } else {
            (*b)->lines++;
            ar = ps_batch_add(*b, &f->ex);
            if (ar == 0) {
                atomic_fetch_add(&f->examples, 1);
                ar = note_line(f, *b, true, line, len);
            }
        }
        if (ar < 0) {
            snprintf(err, errlen, "batching: %s", ps_strerror(ar));
            return ar;
        }
        if ((out ? (*b)->nout : (*b)->n) == f->batch_size && hand_over(f, b, pass))
            return 1;
    }
}

static void *feed_main(void *arg) {
    ps_feed *f = arg;
    ps_batch *b = take_free(f);
    char err[1024];
    int status = 0;
    uint32_t reading = 0; /* the pass of b's last line */
    for (uint32_t pass = 0; b && pass < f->o.passes && status == 0; pass++) {
        if (pass > 0 && ps_reader_rewind(f->reader) < 0)
            break;
        reading = pass;
        status = read_pass(f, pass, &b, err, sizeof(err));
        if (status > 0)
            status = 0; /* b is NULL: the loop ends */
        if (!ps_reader_seekable(f->reader))
            break; /* stdin cannot be read twice */
    }
    uint64_t bad = atomic_load(&f->malformed);
    if (status == 0 && bad > 0 && atomic_load(&f->examples) == 0) {
        /* Bad lines are skipped one by one, but an input of nothing else
         * is the wrong format or the wrong file: say which, and fail. */
        snprintf(err, sizeof(err), "no line of the input is valid %s (%llu malformed); the first: %s",
                 ps_input_format_name(f->o.input->format), (unsigned long long)bad, f->first_bad);
        status = PS_EPARSE;
    }
    if (b && (b->n > 0 || b->nout > 0)) {
        seal(f, b, reading);
        put_ready(f, b);
    } else if (b) {
        ps_feed_give_back(f, b);
    }
    pthread_mutex_lock(&f->mu);
    f->done = true;
    if (status < 0) {
        f->error = status;
        snprintf(f->msg, sizeof(f->msg), "%s", err);
    }
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

/* ---- life cycle ---------------------------------------------------------------------------- */

int ps_feed_new(const ps_feed_options *opts, ps_feed **ret_feed, char *err, size_t errlen) {
    ps_feed *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    f->o = *opts;
    ps_example_init(&f->ex);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    int r = ps_parser_new(opts->input, &f->parser, err, errlen);
    if (r < 0)
        goto fail;
    ps_reader_options ro = {.inputs = opts->inputs,
                            .ninputs = opts->ninputs,
                            .follow = opts->follow,
                            .worker_index = opts->worker_index,
                            .num_workers = opts->num_workers,
                            .max_line = opts->input->max_line_bytes,
                            .headers = ps_parser_wants_header(f->parser),
                            .report_idle = opts->output_lines,
                            .stop = opts->stop,
                            .quit = &f->reader_quit,
                            .kafka_group = opts->input->kafka_group,
                            .kafka_properties = (const char *const *)opts->input->kafka_properties,
                            .nkafka_properties = opts->input->nkafka_properties};
    r = ps_reader_new(&ro, &f->reader, err, errlen);
    if (r < 0)
        goto fail;
    *ret_feed = f;
    return 0;
fail:
    ps_feed_free(f);
    return r;
}

uint32_t ps_feed_ndense(const ps_feed *f) { return ps_parser_ndense(f->parser); }

int ps_feed_seek(ps_feed *f, const ps_reader_pos *pos, char *err, size_t errlen) {
    return ps_reader_seek(f->reader, pos, err, errlen);
}

int ps_feed_commit(ps_feed *f, const ps_reader_pos *pos, bool sync, char *err, size_t errlen) {
    return ps_reader_commit(f->reader, pos, sync, err, errlen);
}

bool ps_feed_is_kafka(const ps_feed *f) { return ps_reader_is_kafka(f->reader); }

int ps_feed_start(ps_feed *f, const ps_batch_layout *L, uint32_t batch_size) {
    f->batch_size = batch_size;
    for (size_t i = 0; i < FEED_BATCHES; i++) {
        int r = ps_batch_new(L, batch_size, &f->all[i]);
        if (r < 0)
            return r;
        f->nall++;
        f->free[f->nfree++] = f->all[i];
    }
    int r = pthread_create(&f->thread, NULL, feed_main, f);
    if (r != 0)
        return -r;
    f->running = true;
    return 0;
}

int ps_feed_stop(ps_feed *f, char *err, size_t errlen) {
    if (f->running) {
        /* A reader following a file waits for lines that may never come:
         * it polls this flag. */
        f->reader_quit = 1;
        pthread_mutex_lock(&f->mu);
        f->quit = true;
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->mu);
        pthread_join(f->thread, NULL);
        f->running = false;
    }
    if (f->error)
        snprintf(err, errlen, "%s", f->msg);
    return f->error;
}

void ps_feed_counters_get(const ps_feed *f, ps_feed_counters *ret) {
    ps_feed_counters c = {.examples = atomic_load(&f->examples),
                          .malformed = atomic_load(&f->malformed)};
    *ret = c;
}

void ps_feed_free(ps_feed *f) {
    if (!f)
        return;
    char ignored[1];
    ps_feed_stop(f, ignored, sizeof(ignored));
    /* Batches the trainer still held (an error ended its loop) too. */
    for (size_t i = 0; i < f->nall; i++)
        ps_batch_free(f->all[i]);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    ps_reader_free(f->reader);
    ps_parser_free(f->parser);
    ps_example_deinit(&f->ex);
    free(f);
}
