#include "eval.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

double ps_sigmoid(double z) {
    if (z >= 0)
        return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}

double ps_logloss_logit(double z, double y) {
    return (z > 0 ? z : 0) - y * z + log1p(exp(-fabs(z)));
}

double ps_logloss_prob(double p, double y) {
    const double lo = 1e-15, hi = 1 - 1e-15;
    p = p < lo ? lo : p > hi ? hi : p;
    return -(y * log(p) + (1 - y) * log(1 - p));
}

/* Radix-free sort of indices by score: qsort on (score, index) pairs keeps it
 * simple and O(n log n); n is at most a few million per evaluation. */
typedef struct {
    float score;
    float label;
} scored;

static int cmp_scored(const void *a, const void *b) {
    float x = ((const scored *)a)->score, y = ((const scored *)b)->score;
    return (x > y) - (x < y);
}

double ps_auc(const float *scores, const float *labels, size_t n) {
    scored *v = malloc((n ? n : 1) * sizeof(*v));
    if (!v)
        return NAN;
    int64_t npos = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(scores[i])) {
            free(v);
            return NAN;
        }
        v[i].score = scores[i];
        v[i].label = labels[i];
        npos += labels[i] > 0.5f;
    }
    int64_t nneg = (int64_t)n - npos;
    if (npos == 0 || nneg == 0) {
        free(v);
        return NAN;
    }
    qsort(v, n, sizeof(*v), cmp_scored);
    /* Ranks 1..n; a run of tied scores shares its mean rank. */
    double pos_rank_sum = 0;
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        int64_t pos_in_run = 0;
        while (j < n && v[j].score == v[i].score) {
            pos_in_run += v[j].label > 0.5f;
            j++;
        }
        double mean_rank = ((double)(i + 1) + (double)j) / 2.0;
        pos_rank_sum += mean_rank * (double)pos_in_run;
        i = j;
    }
    free(v);
    return (pos_rank_sum - (double)npos * (double)(npos + 1) / 2.0) / ((double)npos * (double)nneg);
}

void ps_eval_init(ps_eval *e) { memset(e, 0, sizeof(*e)); }

void ps_eval_deinit(ps_eval *e) {
    free(e->scores);
    free(e->labels);
    memset(e, 0, sizeof(*e));
}

void ps_eval_reset(ps_eval *e) {
    e->n = 0;
    e->logloss_sum = e->pred_sum = e->label_sum = 0;
}

int ps_eval_add(ps_eval *e, double z, double p, float y) {
    if (e->n == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 4096;
        float *s = realloc(e->scores, cap * sizeof(float));
        if (!s)
            return -ENOMEM;
        e->scores = s;
        float *l = realloc(e->labels, cap * sizeof(float));
        if (!l)
            return -ENOMEM;
        e->labels = l;
        e->cap = cap;
    }
    e->scores[e->n] = (float)p;
    e->labels[e->n] = y;
    e->n++;
    e->logloss_sum += ps_logloss_logit(z, y);
    e->pred_sum += p;
    e->label_sum += y;
    return 0;
}

double ps_eval_auc(const ps_eval *e) { return ps_auc(e->scores, e->labels, e->n); }

double ps_eval_logloss(const ps_eval *e) { return e->n ? e->logloss_sum / (double)e->n : NAN; }

double ps_eval_calibration(const ps_eval *e) {
    return e->label_sum > 0 ? e->pred_sum / e->label_sum : NAN;
}
