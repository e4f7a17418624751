/* [model] sparse_gradient through the real worker and shard.
 *
 * ALGORITHMS.md: `sum` pushes B times the mean-loss gradient, and FTRL with
 * (alpha, beta/B, lambda1/B, lambda2/B) under `mean` reaches the weights
 * (alpha, beta, lambda1, lambda2) reach under `sum`, up to float rounding
 * (z and n scale by 1/B and 1/B^2; w is unchanged). The test trains LR both
 * ways on the same input, in the same order (one worker, max_in_flight = 0),
 * and compares every exported weight. The input is a whole number of
 * batches: a last, partial batch of b rows would have its mean taken over
 * b, not B. B is a power of two, so z and n scale exactly. A third run, `mean` with the unscaled
 * hyper-parameters, must differ, or the comparison proves nothing. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define B 128
#ifdef PS_TEST_UNDER_ASAN
#define ROWS "6144"
#else
#define ROWS "20480"
#endif

#define BODY(mode, beta, lambda1, lambda2)                                                         \
    "buckets = 16\n"                                                                               \
    "[input]\nformat = criteo\nintegers = bucketize\n"                                             \
    "[model]\ntype = lr\nbatch_size = 128\nmax_in_flight = 0\nsparse_gradient = " mode "\n"        \
    "[table.wide]\ndim = 1\noptimizer = ftrl\nalpha = 0.05\n"                                      \
    "beta = " beta "\nlambda1 = " lambda1 "\nlambda2 = " lambda2 "\n"                              \
    "slots = I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13\n"                             \
    "slots = C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13\n"                             \
    "slots = C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24, C25, C26\n"

/* KDD'13-scale hyper-parameters, and the same divided by B = 128. */
#define SUM_BODY BODY("sum", "1", "1", "0.5")
#define MEAN_SCALED_BODY BODY("mean", "0.0078125", "0.0078125", "0.00390625")
#define MEAN_UNSCALED_BODY BODY("mean", "1", "1", "0.5")

typedef struct weights {
    size_t n;
    unsigned long long *keys;
    double *w;
} weights;

static char data[] = "/tmp/ctrps-sgrad-XXXXXX";

static void make_input(void) {
    int fd = mkstemp(data);
    cr_assert_geq(fd, 0);
    close(fd);
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "gen", "--rows", ROWS, "--seed", "5",
                    "--format", "criteo", "--out", data, NULL};
    cr_assert_eq(ps_run(argv, NULL, NULL), 0);
}

static void remove_input(void) {
    char truth[64];
    snprintf(truth, sizeof(truth), "%s.truth.json", data);
    unlink(truth);
    unlink(data);
}

/* Train on the input in a fresh one-shard cluster; the exported weights,
 * sorted by key as the shard's export walks them. */
static weights train(const char *body) {
    ps_cluster cl;
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
    char *argv[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cl.config, "--input", data,
                    "--log-level", "warn", NULL};
    char *out = NULL, *err = NULL;
    cr_assert_eq(ps_run(argv, &out, &err), 0, "worker failed: %s", err);
    cr_assert(strstr(out, "\"examples\":" ROWS), "%s", out);
    free(out);
    free(err);
    cr_assert_eq(ps_run_cli(&cl, &out, "export", "--table", "wide", NULL), 0);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
    weights r = {0};
    size_t cap = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        if (r.n == cap) {
            cap = cap ? cap * 2 : 4096;
            r.keys = realloc(r.keys, cap * sizeof(*r.keys));
            r.w = realloc(r.w, cap * sizeof(*r.w));
            cr_assert(r.keys && r.w);
        }
        char *end;
        r.keys[r.n] = strtoull(line, &end, 10);
        cr_assert(!strncmp(end, "\tw\t", 3), "export line: %s", line);
        r.w[r.n++] = strtod(end + 3, NULL);
    }
    free(out);
    cr_assert_gt(r.n, 1000, "too few rows to compare");
    return r;
}

static void weights_free(weights *w) {
    free(w->keys);
    free(w->w);
}

Test(sparse_gradient, sum_equals_mean_with_hyper_parameters_divided_by_the_batch, .timeout = 300) {
    make_input();
    weights sum = train(SUM_BODY), scaled = train(MEAN_SCALED_BODY), unscaled = train(MEAN_UNSCALED_BODY);
    remove_input();

    cr_assert_eq(sum.n, scaled.n, "different row sets");
    size_t nonzero = 0;
    double worst = 0;
    for (size_t i = 0; i < sum.n; i++) {
        cr_assert_eq(sum.keys[i], scaled.keys[i]);
        double d = fabs(sum.w[i] - scaled.w[i]);
        /* Rounding only: 1e-4 relative, and near lambda1's threshold (w
         * about 0 either way) 1e-5 absolute. */
        cr_assert_leq(d, 1e-5 + 1e-4 * fabs(sum.w[i]), "key %llu: sum %.9g, mean with scaled %.9g",
                      sum.keys[i], sum.w[i], scaled.w[i]);
        worst = fmax(worst, d);
        nonzero += sum.w[i] != 0;
    }
    cr_log_info("%zu rows, %zu nonzero, largest difference %.3g", sum.n, nonzero, worst);
    /* lambda1 = 1 in KDD'13 units zeroes many rows but not all. */
    cr_assert(nonzero > 100 && nonzero < sum.n, "nonzero %zu of %zu", nonzero, sum.n);

    /* Under mean, the unscaled hyper-parameters are B times stronger
     * regularisation: the weights differ, so the option did something. */
    size_t differ = 0;
    cr_assert_eq(sum.n, unscaled.n, "different row sets");
    for (size_t i = 0; i < sum.n; i++)
        differ += sum.w[i] != 0 && fabs(sum.w[i] - unscaled.w[i]) > 1e-3;
    cr_assert_gt(differ, nonzero / 2, "sum and unscaled mean agree on %zu of the %zu nonzero rows",
                 nonzero - differ, nonzero);
    weights_free(&sum);
    weights_free(&scaled);
    weights_free(&unscaled);
}
