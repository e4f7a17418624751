#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <criterion/parameterized.h>
#include <malloc.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

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
    ps_eval *e;
    cr_assert_eq(ps_eval_new(&e), 0);
    double z[] = {2.0, -1.0, 0.5, -3.0};
    float y[] = {1, 0, 0, 1};
    double ll = 0, ps = 0;
    for (int i = 0; i < 4; i++) {
        double p = ps_sigmoid(z[i]);
        ps_eval_add(e, z[i], y[i]);
        ll += ps_logloss_logit(z[i], y[i]);
        ps += p;
    }
    cr_assert_eq(ps_eval_count(e), 4);
    cr_assert_float_eq(ps_eval_logloss(e), ll / 4, 1e-12);
    cr_assert_float_eq(ps_eval_calibration(e), ps / 2, 1e-12);
    /* scores: p(2)=.88 pos, p(-1)=.27 neg, p(.5)=.62 neg, p(-3)=.05 pos -> wins 2 of 4 */
    cr_assert_float_eq(ps_eval_auc(e), 0.5, 1e-12);
    /* Four logits in four different cells: nothing shared, no error. */
    cr_assert_float_eq(ps_eval_auc_bound(e), 0, 1e-15);
    ps_eval_free(e);
}

/* ---- the histogram against the exact AUC ------------------------------------------------ */

static uint64_t rng_state;

static double uniform(void) {
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}

static double normal(void) { return sqrt(-2 * log(uniform())) * cos(2 * M_PI * uniform()); }

typedef struct scored_set {
    float *z, *y;
    size_t n;
} scored_set;

static scored_set set_new(size_t n) {
    scored_set s = {calloc(n, sizeof(float)), calloc(n, sizeof(float)), n};
    cr_assert(s.z && s.y);
    return s;
}

static void set_free(scored_set *s) {
    free(s->z);
    free(s->y);
}

/* The histogram's AUC is within its own bound of the exact one, and within
 * tol; returns the error. */
static double check_against_exact(const scored_set *s, double tol, const char *what) {
    ps_eval *e;
    cr_assert_eq(ps_eval_new(&e), 0);
    for (size_t i = 0; i < s->n; i++)
        ps_eval_add(e, s->z[i], s->y[i]);
    double exact = ps_auc(s->z, s->y, s->n), got = ps_eval_auc(e), bound = ps_eval_auc_bound(e);
    double error = fabs(got - exact);
    cr_log_info("%s: exact %.6f histogram %.6f error %.2e bound %.2e", what, exact, got, error, bound);
    cr_assert(isfinite(exact), "%s: exact AUC %g", what, exact);
    cr_assert_leq(error, bound + 1e-12, "%s: error %g above the stated bound %g", what, error, bound);
    cr_assert_leq(error, tol, "%s: exact %.6f histogram %.6f", what, exact, got);
    ps_eval_free(e);
    return error;
}

/* Scorers: a logit for an example of label y. */
static double gaussian(float y) { return -1.2 + 0.8 * y + normal(); }
/* 2% positives (see the cases), scores piled up near p = 0.001 with a long
 * tail above. */
static double skewed(float y) {
    double tail = -log(uniform()) * (y ? 1.5 : 0.6);
    return -7 + tail * tail;
}
/* Scores on a grid of 1/8: nearly every pair ties. Ties share a cell, and
 * the histogram counts them half, as the exact rule does. */
static double grid(float y) { return round((-1 + 0.5 * y + normal()) * 8) / 8; }
static double constant(float y) { return y - y - 2.5; }
/* An untrained model: every score within a few thousandths of a logit
 * around the base rate, with a real signal inside that range. */
static double narrow(float y) { return -1.1 + 0.002 * (normal() + 0.8 * y); }
/* Narrower than a cell: only the reported bound holds. */
static double narrower(float y) { return -1.1 + 1e-5 * (normal() + 0.8 * y); }
/* A tenth beyond |z| = 32, where all share their tail bin: ordered by the
 * exact AUC, tied by the histogram, within the bound. */
static double tails(float y) {
    double z = normal() + y;
    return uniform() < 0.1 ? (z > 0 ? 40 : -40) + 5 * normal() : z;
}

typedef struct auc_case {
    const char *name;
    double (*score)(float y);
    double pos_rate;
    size_t n;
    double tol;                  /* on |histogram - exact| */
} auc_case;

static const auc_case cases[] = {
    {"gaussian", gaussian, 0.25, 300000, 1e-3},
    {"skewed", skewed, 0.02, 300000, 1e-3},
    {"grid of 1/8", grid, 0.3, 200000, 1e-9},
    {"all tied", constant, 0.3, 100000, 1e-12},
    {"spread 0.002", narrow, 0.25, 300000, 1e-3},
    {"spread 1e-5", narrower, 0.25, 300000, 1},
    {"tails", tails, 0.5, 100000, 1},
};

/* The parameter is an index: Criterion copies parameters into the test's
 * process, where pointers into this one would not hold. */
ParameterizedTestParameters(eval, histogram_auc_against_exact) {
    static size_t index[sizeof(cases) / sizeof(cases[0])];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        index[i] = i;
    return cr_make_param_array(size_t, index, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(size_t *i, eval, histogram_auc_against_exact) {
    const auc_case *c = &cases[*i];
    rng_state = *i + 1;
    scored_set s = set_new(c->n);
    for (size_t k = 0; k < s.n; k++) {
        s.y[k] = uniform() < c->pos_rate;
        s.z[k] = (float)c->score(s.y[k]);
    }
    check_against_exact(&s, c->tol, c->name);
    set_free(&s);
}

Test(eval, histogram_reset_forgets_and_nan_poisons) {
    rng_state = 6;
    ps_eval *a, *b;
    cr_assert_eq(ps_eval_new(&a), 0);
    cr_assert_eq(ps_eval_new(&b), 0);
    for (int i = 0; i < 50000; i++) /* splits every bin it can */
        ps_eval_add(a, 20 * normal(), uniform() < 0.5);
    ps_eval_reset(a);
    cr_assert_eq(ps_eval_count(a), 0);
    cr_assert(isnan(ps_eval_auc(a)));
    for (int i = 0; i < 50000; i++) {
        float y = uniform() < 0.3;
        double z = normal() + y;
        ps_eval_add(a, z, y);
        ps_eval_add(b, z, y);
    }
    cr_assert_eq(ps_eval_auc(a), ps_eval_auc(b));
    cr_assert_eq(ps_eval_auc_bound(a), ps_eval_auc_bound(b));
    cr_assert_eq(ps_eval_logloss(a), ps_eval_logloss(b));
    ps_eval_add(a, NAN, 1);
    cr_assert(isnan(ps_eval_auc(a)));
    ps_eval_free(a);
    ps_eval_free(b);
}

Test(eval, memory_does_not_grow_with_examples) {
    rng_state = 7;
    ps_eval *e;
    cr_assert_eq(ps_eval_new(&e), 0);
    for (int i = 0; i < 100000; i++)
        ps_eval_add(e, 10 * normal(), uniform() < 0.5);
    struct mallinfo2 before = mallinfo2();
    for (int i = 0; i < 5000000; i++)
        ps_eval_add(e, 10 * normal(), uniform() < 0.5);
    struct mallinfo2 after = mallinfo2();
    cr_assert_eq(after.uordblks, before.uordblks);
    cr_assert_eq(after.hblkhd, before.hblkhd);
    cr_assert_eq(ps_eval_count(e), 5100000);
    ps_eval_free(e);
}
