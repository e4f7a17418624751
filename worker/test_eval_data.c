/* The streaming AUC (ps_eval) against the exact one (ps_auc) on real Criteo
 * rows from CTRPS_SHARED_DATA, scored as a trained model scores them: a
 * hashed logistic regression fitted here by SGD, independent of the worker's
 * parser and model. Skips (exit 77) without the data. */

#include "testutil.h"

#include <criterion/logging.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

#define HASH_BITS 20
#define COLUMNS 39

typedef struct rows {
    uint32_t (*keys)[COLUMNS];
    float *labels;
    size_t n;
} rows;

static uint32_t fnv1a(uint32_t column, const char *s, size_t len) {
    uint32_t h = 2166136261u ^ column;
    h *= 16777619u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h & ((1u << HASH_BITS) - 1);
}

static rows read_criteo(void) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/criteo/train-first10k.tsv", ps_test_data_dir());
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s", path);
    rows R = {0};
    size_t cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) > 0) {
        if (R.n == cap) {
            cap = cap ? 2 * cap : 1024;
            R.keys = realloc(R.keys, cap * sizeof(*R.keys));
            R.labels = realloc(R.labels, cap * sizeof(float));
            cr_assert(R.keys && R.labels);
        }
        char *p = line, *end = line + len - (line[len - 1] == '\n');
        R.labels[R.n] = *p == '1';
        p = strchr(p, '\t') + 1;
        for (uint32_t c = 0; c < COLUMNS; c++) {
            char *tab = memchr(p, '\t', (size_t)(end - p));
            size_t flen = tab ? (size_t)(tab - p) : (size_t)(end - p);
            R.keys[R.n][c] = fnv1a(c, p, flen);
            p = tab ? tab + 1 : end;
        }
        R.n++;
    }
    free(line);
    fclose(f);
    cr_assert_eq(R.n, 10000);
    return R;
}

static double score(const float *w, const uint32_t *k) {
    double z = w[0];
    for (uint32_t c = 0; c < COLUMNS; c++)
        z += w[1 + k[c]];
    return z;
}

/* Histogram AUC within 1e-3 of the exact AUC (and within its own bound)
 * over rows [from, to) of logits z. */
static void compare(const float *z, const float *y, size_t from, size_t to, const char *what) {
    ps_eval *e;
    cr_assert_eq(ps_eval_new(&e), 0);
    for (size_t i = from; i < to; i++)
        ps_eval_add(e, z[i], y[i]);
    double exact = ps_auc(z + from, y + from, to - from), got = ps_eval_auc(e);
    double bound = ps_eval_auc_bound(e), error = fabs(got - exact);
    cr_log_info("%s: exact %.6f histogram %.6f error %.2e bound %.2e", what, exact, got, error, bound);
    cr_assert(exact > 0.55, "%s: the scorer should have learned something (AUC %g)", what, exact);
    cr_assert_leq(error, bound + 1e-12, "%s", what);
    cr_assert_leq(bound, 1e-3, "%s: the bound itself is below 1e-3 on real scores", what);
    cr_assert_leq(error, 1e-3, "%s: exact %.6f histogram %.6f", what, exact, got);
    ps_eval_free(e);
}

Test(eval_data, criteo_progressive_and_trained_scores) {
    rows R = read_criteo();
    float *w = calloc((size_t)1 + (1u << HASH_BITS), sizeof(float));
    float *progressive = calloc(R.n, sizeof(float)), *trained = calloc(R.n, sizeof(float));
    cr_assert(w && progressive && trained);
    /* Three passes of SGD; the first pass's scores are progressive
     * validation (scored before the update), as the worker's are. */
    for (int pass = 0; pass < 3; pass++) {
        for (size_t i = 0; i < R.n; i++) {
            double z = score(w, R.keys[i]);
            if (pass == 0)
                progressive[i] = (float)z;
            float g = (float)(0.05 * (ps_sigmoid(z) - R.labels[i]));
            w[0] -= g;
            for (uint32_t c = 0; c < COLUMNS; c++)
                w[1 + R.keys[i][c]] -= g;
        }
    }
    for (size_t i = 0; i < R.n; i++)
        trained[i] = (float)score(w, R.keys[i]);
    compare(progressive, R.labels, 0, R.n, "progressive, all rows");
    compare(trained, R.labels, 0, R.n, "trained, all rows");
    /* Windows as the progress lines report them. */
    for (size_t from = 0; from < R.n; from += 2500) {
        char what[64];
        snprintf(what, sizeof(what), "progressive window [%zu, %zu)", from, from + 2500);
        compare(progressive, R.labels, from, from + 2500, what);
    }
    free(w);
    free(progressive);
    free(trained);
    free(R.keys);
    free(R.labels);
}

PS_TEST_MAIN_REQUIRES_DATA()
