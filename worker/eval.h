#pragma once
/* Evaluation metrics (ALGORITHMS.md §6): AUC with tied scores at their mean
 * rank, logloss, calibration; and a streaming accumulator for progressive
 * validation (cumulative and windowed) whose memory does not depend on how
 * many examples it has seen.
 *
 * The accumulator (ps_eval) keeps, per label, a histogram of the logits in
 * two levels, and sums for logloss and calibration:
 *   - 1,024 bins of width 1/16 over z in [-32, 32), and one bin for each
 *     tail (z < -32, z >= 32: probabilities within 1.3e-14 of 0 or 1);
 *   - a bin that has received 16 examples is split into 1,024 cells of width
 *     1/16384 for the examples that follow; at most 64 bins per histogram
 *     are split (the first to fill). The cells are allocated up front (1 MiB
 *     of address space, touched only as bins split), so adding an example
 *     cannot fail and a histogram never grows.
 * The AUC ranks cells exactly; two examples in the same finest cell (a
 * cell, an unsplit bin, or a split bin's first 16 examples against the rest
 * of that bin) count as a tie, 1/2, whatever their order. So
 *
 *     |AUC - exact AUC| <= (1/2) * U / (P * N)
 *
 * where U is the number of positive-negative pairs that share a cell:
 * ps_eval_auc_bound() computes it. It is at most half the largest share of
 * the negatives (or of the positives) that one cell holds; for scores spread
 * over even 1/100 of a logit unit it is well under 1e-3, and pairs that truly
 * tie contribute to the bound but not to the error. */

#include <stddef.h>
#include <stdint.h>

/* Per-example logloss from a logit, in the stable form
 * max(z,0) - y*z + log1p(exp(-|z|)). */
double ps_logloss_logit(double z, double y);
/* Logloss from a probability, clipped to [1e-15, 1-1e-15]. */
double ps_logloss_prob(double p, double y);
double ps_sigmoid(double z);

/* Exact AUC of scores against 0/1 labels over n examples. Returns NaN when
 * there are no positives or no negatives; NaN scores make it NaN too (the
 * caller treats that as an error). O(n log n); allocates n pairs. The
 * reference for ps_eval_auc and for sets kept whole (tools/gen.c). */
double ps_auc(const float *scores, const float *labels, size_t n);

typedef struct ps_eval ps_eval;

/* A fixed-size accumulator; caller frees with ps_eval_free(). -ENOMEM. */
int ps_eval_new(ps_eval **ret_eval);
void ps_eval_free(ps_eval *e);
/* Forget every example; keeps the memory for the next window. */
void ps_eval_reset(ps_eval *e);
/* Add one example: logit z (scores rank by it), label y (positive when
 * > 0.5; logloss and calibration use y as it is). */
void ps_eval_add(ps_eval *e, double z, float y);
uint64_t ps_eval_count(const ps_eval *e);
/* AUC over every example added; NaN without both labels or after a NaN z. */
double ps_eval_auc(const ps_eval *e);
/* The bound on |ps_eval_auc - exact AUC| above; NaN when the AUC is. */
double ps_eval_auc_bound(const ps_eval *e);
double ps_eval_logloss(const ps_eval *e);
/* Mean prediction / mean label; NaN with no positives. */
double ps_eval_calibration(const ps_eval *e);
