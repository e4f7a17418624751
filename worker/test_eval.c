#include <criterion/criterion.h>
#include <math.h>

#include "eval.h"

Test(eval, auc_counts_pairs) {
    /* Pairs (pos, neg): (0.9,0.1) win, (0.9,0.4) win, (0.3,0.1) win, (0.3,0.4) loss. */
    float s[] = {0.9f, 0.3f, 0.1f, 0.4f};
    float y[] = {1, 1, 0, 0};
    cr_assert_float_eq(ps_auc(s, y, 4), 0.75, 1e-12);
}

Test(eval, auc_ties_count_half) {
    /* Every score tied: each pair counts 1/2. */
    float s[] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    float y[] = {1, 0, 1, 0, 0};
    cr_assert_float_eq(ps_auc(s, y, 5), 0.5, 1e-12);
    /* One tie between a positive and a negative among clear wins. */
    float s2[] = {0.8f, 0.6f, 0.6f, 0.1f};
    float y2[] = {1, 1, 0, 0};
    /* pairs: (0.8,0.6) 1, (0.8,0.1) 1, (0.6,0.6) 0.5, (0.6,0.1) 1 -> 3.5/4 */
    cr_assert_float_eq(ps_auc(s2, y2, 4), 0.875, 1e-12);
}

Test(eval, auc_undefined_without_both_classes) {
    float s[] = {0.1f, 0.2f};
    float y[] = {1, 1};
    cr_assert(isnan(ps_auc(s, y, 2)));
    float s2[] = {0.1f, NAN};
    float y2[] = {1, 0};
    cr_assert(isnan(ps_auc(s2, y2, 2)));
}

Test(eval, logloss_stable_form) {
    /* Matches -log(sigmoid) at moderate logits and stays finite at extremes. */
    for (double z = -30; z <= 30; z += 0.5) {
        /* -log(sigmoid(z)) = log(1 + e^-z); -log(1 - sigmoid(z)) = log(1 + e^z) */
        cr_assert_float_eq(ps_logloss_logit(z, 1), log1p(exp(-z)), 1e-12 * (1 + fabs(z)));
        cr_assert_float_eq(ps_logloss_logit(z, 0), log1p(exp(z)), 1e-12 * (1 + fabs(z)));
    }
    cr_assert_float_eq(ps_logloss_logit(1000, 0), 1000, 1e-9);
    cr_assert_float_eq(ps_logloss_logit(-1000, 0), 0, 1e-12);
    cr_assert_float_eq(ps_logloss_prob(0, 1), -log(1e-15), 1e-6);
}

Test(eval, eval_accumulates_whole_set) {
    ps_eval e;
    ps_eval_init(&e);
    double z[] = {2.0, -1.0, 0.5, -3.0};
    float y[] = {1, 0, 0, 1};
    double ll = 0, ps = 0;
    for (int i = 0; i < 4; i++) {
        double p = ps_sigmoid(z[i]);
        cr_assert_eq(ps_eval_add(&e, z[i], p, y[i]), 0);
        ll += ps_logloss_logit(z[i], y[i]);
        ps += p;
    }
    cr_assert_float_eq(ps_eval_logloss(&e), ll / 4, 1e-12);
    cr_assert_float_eq(ps_eval_calibration(&e), ps / 2, 1e-12);
    /* scores: p(2)=.88 pos, p(-1)=.27 neg, p(.5)=.62 neg, p(-3)=.05 pos -> wins 2 of 4 */
    cr_assert_float_eq(ps_eval_auc(&e), 0.5, 1e-12);
    ps_eval_deinit(&e);
}
