/* ctrps-worker --predict on the shared Criteo sample: trained on
 * criteo/train-first10k.tsv, it scores criteo/test-first10k-unlabelled.tsv
 * (Criteo's test layout: no label column). Skips (exit 77) without the data. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "testutil.h"

static const char *body = "buckets = 64\n"
                          "[server]\ndurability = interval=1000\n"
                          "[input]\nintegers = dense\n"
                          "[model]\ntype = dcnv2\nbatch_size = 256\ncross_layers = 1\nmlp = 16\n"
                          "dense_lr = 0.01\nmax_in_flight = 1\n"
                          "[table.emb]\ndim = 4\noptimizer = adagrad\nlr = 0.1\n"
                          "initial_accumulator_value = 1e-6\ninit = normal\ninit_std = 0.05\n"
                          "slots = C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13\n"
                          "slots = C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24, C25, C26\n";

static ps_cluster cl;

static void teardown(void) { ps_cluster_teardown(&cl, NULL); }

static char *run_worker(char *const extra[], size_t nextra) {
    char *argv[16];
    size_t n = 0;
    argv[n++] = (char *)ps_test_bin("worker/ctrps-worker");
    argv[n++] = "--config";
    argv[n++] = cl.config;
    argv[n++] = "--log-level";
    argv[n++] = "warn";
    for (size_t i = 0; i < nextra; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    char *out, *err;
    int rc = ps_run(argv, &out, &err);
    cr_assert_eq(rc, 0, "%s%s", out, err);
    free(err);
    return out;
}

Test(predict_criteo, ten_thousand_finite_probabilities_twice_the_same, .fini = teardown, .timeout = 600) {
    char train[1024], test[1024], o1[300], o2[300];
    snprintf(train, sizeof(train), "%s/criteo/train-first10k.tsv", ps_test_data_dir());
    snprintf(test, sizeof(test), "%s/criteo/test-first10k-unlabelled.tsv", ps_test_data_dir());
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    ps_cluster_path(&cl, "p1.txt", o1, sizeof(o1));
    ps_cluster_path(&cl, "p2.txt", o2, sizeof(o2));
    free(run_worker((char *[]){"--input", train}, 2));
    char *res = run_worker((char *[]){"--input", test, "--unlabelled", "--predict", o1}, 5);
    cr_assert(strstr(res, "\"lines\":10000,") && strstr(res, "\"malformed\":0,"), "%s", res);
    free(res);
    free(run_worker((char *[]){"--input", test, "--unlabelled", "--predict", o2}, 5));

    size_t n1, n2;
    char *a = ps_read_file_len(o1, &n1), *b = ps_read_file_len(o2, &n2);
    cr_assert(a && b);
    cr_assert(n1 == n2 && memcmp(a, b, n1) == 0, "two runs print different bytes");
    size_t lines = 0;
    for (char *p = a; *p; lines++) {
        char *end;
        double v = strtod(p, &end);
        cr_assert(*end == '\n' && isfinite(v) && v > 0 && v < 1, "line %zu: %.20s", lines + 1, p);
        p = end + 1;
    }
    cr_assert_eq(lines, 10000);
    free(a);
    free(b);
}

PS_TEST_MAIN_REQUIRES_DATA()
