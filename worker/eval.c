#include "eval.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
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

/* ---- the streaming accumulator ------------------------------------------------------- */

/* Limits of eval.h's design note. 1/16384 of a logit is 1e-5 in probability
 * at p = 0.25; 64 split bins cover 4 logit units at full resolution, the
 * bulk of what a CTR model scores, and the rest is still ranked by bins of
 * 1/16. A bin splits at its SPLIT_AFTER-th example rather than its first so
 * that a few outliers do not take the splits; it remembers the cells of the
 * examples before (2 bytes each), so a split bin ranks all of its examples
 * by cell. */
#define Z_MIN (-32.0)
#define BINS_PER_UNIT 16
#define NBINS 1024               /* [-32, 32) */
#define CELLS_PER_BIN 1024
#define SPLIT_AFTER 16
#define MAX_SPLIT 64
#define POS_BIT 0x8000

typedef struct cell {
    uint64_t pos, neg;
} cell;

struct ps_eval {
    cell bin[NBINS + 2];         /* [0]: z < -32; [1 + b]: bin b; [NBINS + 1]: z >= 32 */
    uint8_t split[NBINS];        /* 1 + index of bin b's cells in `cells`, or 0 */
    /* An unsplit bin's first examples: cell within the bin | POS_BIT. */
    uint16_t first[NBINS][SPLIT_AFTER];
    uint32_t nsplit;
    cell *cells;                 /* MAX_SPLIT x CELLS_PER_BIN; owned */
    uint64_t n;
    bool nan;                    /* a NaN logit was added */
    double logloss_sum, pred_sum, label_sum;
};

int ps_eval_new(ps_eval **ret_eval) {
    ps_eval *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    /* calloc of 1 MiB maps zero pages: memory is touched only as bins split. */
    e->cells = calloc((size_t)MAX_SPLIT * CELLS_PER_BIN, sizeof(cell));
    if (!e->cells) {
        free(e);
        return -ENOMEM;
    }
    *ret_eval = e;
    return 0;
}

void ps_eval_free(ps_eval *e) {
    if (!e)
        return;
    free(e->cells);
    free(e);
}

void ps_eval_reset(ps_eval *e) {
    memset(e->cells, 0, (size_t)e->nsplit * CELLS_PER_BIN * sizeof(cell));
    memset(e->bin, 0, sizeof(e->bin));
    memset(e->split, 0, sizeof(e->split));
    memset(e->first, 0, sizeof(e->first));
    e->nsplit = 0;
    e->n = 0;
    e->nan = false;
    e->logloss_sum = e->pred_sum = e->label_sum = 0;
}

static void count(cell *c, bool pos) {
    if (pos)
        c->pos++;
    else
        c->neg++;
}

void ps_eval_add(ps_eval *e, double z, float y) {
    e->n++;
    e->logloss_sum += ps_logloss_logit(z, y);
    e->pred_sum += ps_sigmoid(z);
    e->label_sum += y;
    bool pos = y > 0.5f;
    if (isnan(z)) {
        e->nan = true;
        return;
    }
    /* Position in cells of 1/16384 from Z_MIN; floor keeps the map monotone,
     * so examples in different cells are ranked as their logits are. */
    double u = (z - Z_MIN) * (BINS_PER_UNIT * CELLS_PER_BIN);
    if (u < 0) {
        count(&e->bin[0], pos);
        return;
    }
    if (u >= (double)NBINS * CELLS_PER_BIN) {
        count(&e->bin[NBINS + 1], pos);
        return;
    }
    uint32_t k = (uint32_t)u, b = k / CELLS_PER_BIN, sub = k % CELLS_PER_BIN;
    if (e->split[b]) {
        count(&e->cells[(size_t)(e->split[b] - 1) * CELLS_PER_BIN + sub], pos);
        return;
    }
    cell *c = &e->bin[1 + b];
    uint64_t had = c->pos + c->neg;
    if (had < SPLIT_AFTER)
        e->first[b][had] = (uint16_t)(sub | (pos ? POS_BIT : 0));
    count(c, pos);
    if (had + 1 == SPLIT_AFTER && e->nsplit < MAX_SPLIT) {
        /* Split: the bin's examples move to their cells. */
        cell *cells = &e->cells[(size_t)e->nsplit * CELLS_PER_BIN];
        e->split[b] = (uint8_t)++e->nsplit;
        for (size_t i = 0; i < SPLIT_AFTER; i++)
            count(&cells[e->first[b][i] & ~POS_BIT], e->first[b][i] & POS_BIT);
        *c = (cell){0, 0};
    }
}

uint64_t ps_eval_count(const ps_eval *e) { return e->n; }

/* One walk up the logits. wins: pairs whose positive ranks above their
 * negative, plus half of the pairs that share a cell (shared). An unsplit
 * bin is one cell; a split bin's own count is 0 (it is kept general: a bin
 * count beside split cells would share a cell with all of the bin). */
static void tally(const ps_eval *e, double *ret_wins, double *ret_shared, double *ret_pairs) {
    double neg_below = 0, npos = 0, wins = 0, shared = 0;
    for (size_t i = 0; i < NBINS + 2; i++) {
        double rp = (double)e->bin[i].pos, rn = (double)e->bin[i].neg, sp = 0, sn = 0;
        if (i >= 1 && i <= NBINS && e->split[i - 1]) {
            const cell *c = &e->cells[(size_t)(e->split[i - 1] - 1) * CELLS_PER_BIN];
            for (size_t j = 0; j < CELLS_PER_BIN; j++) {
                double p = (double)c[j].pos, n = (double)c[j].neg;
                wins += p * (neg_below + sn + 0.5 * n);
                shared += p * n;
                sp += p;
                sn += n;
            }
        }
        wins += rp * (neg_below + 0.5 * (rn + sn)) + 0.5 * rn * sp;
        shared += rp * (rn + sn) + rn * sp;
        neg_below += rn + sn;
        npos += rp + sp;
    }
    *ret_wins = wins;
    *ret_shared = shared;
    *ret_pairs = npos * neg_below;
}

double ps_eval_auc(const ps_eval *e) {
    double wins, shared, pairs;
    tally(e, &wins, &shared, &pairs);
    return e->nan || pairs == 0 ? NAN : wins / pairs;
}

double ps_eval_auc_bound(const ps_eval *e) {
    double wins, shared, pairs;
    tally(e, &wins, &shared, &pairs);
    return e->nan || pairs == 0 ? NAN : 0.5 * shared / pairs;
}

double ps_eval_logloss(const ps_eval *e) { return e->n ? e->logloss_sum / (double)e->n : NAN; }

double ps_eval_calibration(const ps_eval *e) {
    return e->label_sum > 0 ? e->pred_sum / e->label_sum : NAN;
}
