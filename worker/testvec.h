#pragma once
/* Reading the reference vectors of tests/vectors/{dcnv2,can} in the worker's
 * tests: "# shape d0 d1 ...", then one value per line, row-major, computed
 * in float64 by an independent implementation. */

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct arr {
    size_t ndim, shape[4], n;
    double *v;
} arr;

static inline void join(char *buf, size_t cap, const char *dir, const char *file) {
    int n = snprintf(buf, cap, "%s/%s", dir, file);
    cr_assert(n > 0 && (size_t)n < cap, "path too long: %s/%s", dir, file);
}

static inline void arr_load_path(const char *path, arr *a) {
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s", path);
    char line[256];
    cr_assert_not_null(fgets(line, sizeof(line), f), "%s: empty", path);
    cr_assert(strncmp(line, "# shape", 7) == 0, "%s: no shape line", path);
    memset(a, 0, sizeof(*a));
    a->n = 1;
    char *s = line + 7, *end;
    for (;;) {
        unsigned long long d = strtoull(s, &end, 10);
        if (end == s)
            break;
        cr_assert(a->ndim < 4);
        a->shape[a->ndim++] = (size_t)d;
        a->n *= (size_t)d;
        s = end;
    }
    a->v = malloc((a->n ? a->n : 1) * sizeof(double));
    for (size_t i = 0; i < a->n; i++) {
        cr_assert_not_null(fgets(line, sizeof(line), f), "%s: short", path);
        a->v[i] = strtod(line, NULL);
    }
    fclose(f);
}

static inline void arr_load_in(const char *dir, const char *file, arr *a) {
    char path[1024];
    join(path, sizeof(path), dir, file);
    arr_load_path(path, a);
}

static inline float *arr_floats(const arr *a) {
    float *f = malloc((a->n ? a->n : 1) * sizeof(float));
    for (size_t i = 0; i < a->n; i++)
        f[i] = (float)a->v[i];
    return f;
}

/* Our float32 against the float64 reference: |got - want| <= atol + rtol|want|
 * for every element; logs the worst element's share of its bound. */
static inline void expect_close_tol(const char *what, const float *got, const double *exp, size_t n,
                                    double atol, double rtol) {
    size_t bad = 0, first = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - exp[i]);
        double lim = atol + rtol * fabs(exp[i]);
        if (!(e <= lim)) {
            if (!bad)
                first = i;
            bad++;
        }
        if (e / lim > worst)
            worst = e / lim;
    }
    cr_expect(bad == 0, "%s: %zu of %zu off, first [%zu] got %.9g want %.9g", what, bad, n, first,
              bad ? got[first] : 0.0, bad ? exp[first] : 0.0);
    cr_log_info("%s: worst error / tolerance %.3f", what, worst);
}
