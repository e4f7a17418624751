#include "predict.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "eval.h"
#include "feed.h"
#include "nn.h"
#include "wconfig.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int ps_predict_lookup_start(ps_client *c, ps_batch *b, ps_predict_lookup *l) {
    l->ncalls = 0;
    for (uint32_t i = 0; i < b->L->ntables; i++) {
        ps_batch_table *bt = &b->tables[i];
        if (bt->nkeys == 0)
            continue;
        if (l->ncalls == PS_PREDICT_MAX_TABLES)
            return PS_ELIMIT;
        uint8_t *found = malloc(bt->nkeys);
        if (!found)
            return -ENOMEM;
        int r = ps_client_lookup_start(c, bt->cfg->name, bt->dim, 0, bt->keys, bt->nkeys, found,
                                       bt->values, NULL, &l->calls[l->ncalls]);
        if (r < 0) {
            free(found);
            return r;
        }
        l->found[l->ncalls++] = found;
    }
    return 0;
}

int ps_predict_lookup_wait(ps_predict_lookup *l, char *err, size_t errlen) {
    int first = 0;
    for (int i = 0; i < l->ncalls; i++) {
        char msg[1024];
        int r = ps_call_wait(l->calls[i], msg, sizeof(msg));
        if (r < 0 && first == 0) {
            first = r;
            snprintf(err, errlen, "%s", msg);
        }
        free(l->found[i]);
    }
    l->ncalls = 0;
    return first;
}

int ps_predict_load_dense(ps_client *c, ps_model *m, char *err, size_t errlen) {
    ps_nn_params *params = ps_model_params(m);
    size_t n = ps_nn_params_count(params);
    if (n == 0)
        return 0;
    ps_dense_block *blocks = calloc(n, sizeof(ps_dense_block));
    if (!blocks)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const ps_nn_param *p = ps_nn_params_at(params, i);
        blocks[i] = (ps_dense_block){p->name, p->value, p->len};
    }
    int r = ps_client_dense_pull(c, blocks, n, false, err, errlen);
    free(blocks);
    return r;
}

/* ---- the run ------------------------------------------------------------------------- */

/* One run: opened by predictor_open(), which may fail half way;
 * predictor_close() frees whatever was opened. */
typedef struct predictor {
    const ps_train_options *o;
    FILE *out;
    const ps_worker_config *w;
    ps_batch_layout layout;
    bool layout_ready;
    ps_feed *feed;
    ps_model *model;
    ps_client *client;
    ps_eval *eval;
    float *logits;
    double start;
    char err[1024];
} predictor;

static int predictor_open(predictor *p, const ps_train_options *o, FILE *out, char *err,
                          size_t errlen) {
    const ps_worker_config *w = ps_worker_config_of(o->cfg);
    memset(p, 0, sizeof(*p));
    p->o = o;
    p->out = out;
    p->w = w;
    int r = ps_eval_new(&p->eval);
    if (r < 0)
        return r;
    ps_feed_options fo;
    ps_train_feed_options(o, &fo);
    fo.passes = 1;
    fo.output_lines = true;
    if ((r = ps_feed_new(&fo, &p->feed, err, errlen)) < 0)
        return r;
    if ((r = ps_batch_layout_init(&p->layout, o->cfg, ps_feed_ndense(p->feed), err, errlen)) < 0)
        return r;
    p->layout_ready = true;
    if (p->layout.ntables > PS_PREDICT_MAX_TABLES) {
        snprintf(err, errlen, "the model reads %u tables; at most %d are supported",
                 p->layout.ntables, PS_PREDICT_MAX_TABLES);
        return PS_ECONFIG;
    }
    if ((r = ps_model_new(&p->layout, &p->model, err, errlen)) < 0)
        return r;
    p->logits = malloc(w->model.batch_size * sizeof(float));
    if (!p->logits)
        return -ENOMEM;
    /* Not "ctrps-worker": it pushes nothing, so a checkpoint barrier must
     * not wait for it to report. */
    if ((r = ps_train_client_new(o, "ctrps-predict", &p->client, err, errlen)) < 0)
        return r;
    if ((r = ps_predict_load_dense(p->client, p->model, p->err, sizeof(p->err))) < 0) {
        snprintf(err, errlen, "dense model (train before predicting): %s", p->err);
        return r;
    }
    if ((r = ps_feed_start(p->feed, &p->layout, w->model.batch_size)) < 0)
        return r;
    p->start = now_s();
    return 0;
}

/* The batch's output lines; labelled examples go into the metrics. */
static int write_batch(predictor *p, const ps_batch *b, ps_train_result *ret) {
    FILE *out = p->out;
    bool ids = p->w->input.id_column != 0;
    uint32_t id_start = 0;
    for (uint32_t i = 0; i < b->nout; i++) {
        if (ids) {
            fwrite(b->ids + id_start, 1, b->id_end[i] - id_start, out);
            fputc('\t', out);
            id_start = b->id_end[i];
        }
        uint32_t e = b->out_example[i];
        if (e == PS_NO_KEY) {
            fputs("nan\n", out);
            continue;
        }
        double z = p->logits[e];
        fprintf(out, "%.9g\n", ps_sigmoid(z));
        if (isfinite(b->labels[e]))
            ps_eval_add(p->eval, z, b->labels[e]);
    }
    ret->lines += b->nout;
    ret->examples += b->n;
    /* Flushed per batch: a --follow consumer sees each batch as it is done. */
    if (fflush(out) != 0 || ferror(out)) {
        snprintf(p->err, sizeof(p->err), "writing the predictions: %s", strerror(errno));
        return -EIO;
    }
    return 0;
}

static int score(predictor *p, ps_batch *b, ps_predict_lookup *l, ps_train_result *ret) {
    int r = ps_predict_lookup_wait(l, p->err, sizeof(p->err));
    if (r == 0 && b->n > 0 && (r = ps_model_forward(p->model, b, p->logits)) < 0)
        snprintf(p->err, sizeof(p->err), "forward: %s", ps_strerror(r));
    if (r == 0)
        r = write_batch(p, b, ret);
    if (r == 0)
        ret->batches++;
    return r;
}

/* Every batch the feed hands over, in order. The next batch's lookups go
 * out while the current one computes when it is ready by then; it is not
 * waited for, so that a followed stream's last lines are scored while the
 * input waits rather than when more arrive. */
static int predictor_loop(predictor *p, ps_train_result *ret) {
    ps_predict_lookup lcur = {0}, lnext = {0};
    char ignored[256];
    int r = 0;
    ps_batch *cur = ps_feed_take(p->feed);
    if (cur)
        r = ps_predict_lookup_start(p->client, cur, &lcur);
    while (cur && r == 0) {
        ps_batch *nxt = ps_feed_try_take(p->feed);
        if (nxt && (r = ps_predict_lookup_start(p->client, nxt, &lnext)) < 0)
            break;
        r = score(p, cur, &lcur, ret);
        ps_feed_give_back(p->feed, cur);
        cur = nxt;
        if (r == 0 && !cur && (cur = ps_feed_take(p->feed)))
            r = ps_predict_lookup_start(p->client, cur, &lnext);
        lcur = lnext;
        lnext.ncalls = 0; /* its calls are lcur's now */
    }
    if (r < 0 && !p->err[0])
        snprintf(p->err, sizeof(p->err), "%s", ps_strerror(r));
    /* After an error, no reply may land in a batch being freed. */
    ps_predict_lookup_wait(&lcur, ignored, sizeof(ignored));
    ps_predict_lookup_wait(&lnext, ignored, sizeof(ignored));
    return r;
}

static void predictor_close(predictor *p) {
    /* The client first: its I/O thread writes looked-up rows into batches. */
    ps_client_free(p->client);
    ps_feed_free(p->feed);
    ps_model_free(p->model);
    free(p->logits);
    ps_eval_free(p->eval);
    if (p->layout_ready)
        ps_batch_layout_deinit(&p->layout);
}

int ps_predict_run(const ps_train_options *o, FILE *out, ps_train_result *ret, char *err,
                   size_t errlen) {
    ps_train_result_init(ret);
    ret->predicted = true;
    err[0] = '\0';
    predictor p;
    int r = predictor_open(&p, o, out, err, errlen);
    if (r == 0) {
        r = predictor_loop(&p, ret);
        if (r < 0)
            snprintf(err, errlen, "%s", p.err);
        char msg[1024];
        int fr = ps_feed_stop(p.feed, msg, sizeof(msg));
        if (r == 0 && fr < 0) {
            r = fr;
            snprintf(err, errlen, "%s", msg);
        }
        ps_feed_counters fc;
        ps_feed_counters_get(p.feed, &fc);
        ret->malformed = fc.malformed;
        ret->seconds = now_s() - p.start;
        ret->examples_per_sec = ret->seconds > 0 ? (double)ret->examples / ret->seconds : 0;
        ret->auc = ps_eval_auc(p.eval);
        ret->logloss = ps_eval_logloss(p.eval);
        ret->calibration = ps_eval_calibration(p.eval);
        ps_client_counters cc;
        ps_client_counters_get(p.client, &cc);
        ret->reconnects = cc.reconnects;
    }
    predictor_close(&p);
    return r;
}
