#pragma once
/* Evaluation metrics (ALGORITHMS.md §6): AUC with tied scores at their mean
 * rank, logloss, calibration; and a streaming accumulator for progressive
 * validation (cumulative and windowed). */

#include <stddef.h>
#include <stdint.h>

/* Per-example logloss from a logit, in the stable form
 * max(z,0) - y*z + log1p(exp(-|z|)). */
double ps_logloss_logit(double z, double y);
/* Logloss from a probability, clipped to [1e-15, 1-1e-15]. */
double ps_logloss_prob(double p, double y);
double ps_sigmoid(double z);

/* AUC of scores against 0/1 labels over n examples. Returns NaN when there
 * are no positives or no negatives; PS_EPARSE-free: NaN scores make it NaN
 * too (the caller treats that as an error). O(n log n); allocates n indices. */
double ps_auc(const float *scores, const float *labels, size_t n);

/* Growing buffer of (score, label) pairs for AUC over a whole run, plus sums
 * for logloss and calibration. Scores are probabilities. */
typedef struct ps_eval {
    float *scores;               /* owned */
    float *labels;               /* owned */
    size_t n, cap;
    double logloss_sum, pred_sum, label_sum;
} ps_eval;

void ps_eval_init(ps_eval *e);
void ps_eval_deinit(ps_eval *e);
void ps_eval_reset(ps_eval *e);
/* Add one example: probability p, label y; logloss from the logit z. */
int ps_eval_add(ps_eval *e, double z, double p, float y);
double ps_eval_auc(const ps_eval *e);
double ps_eval_logloss(const ps_eval *e);
/* Mean prediction / mean label; NaN with no positives. */
double ps_eval_calibration(const ps_eval *e);
