#pragma once
/* Shared by the worker's model tests (DCN-V2, CAN, MLP): reading the
 * reference vectors of tests/vectors/{dcnv2,can} ("# shape d0 d1 ...", then
 * one value per line, row-major, computed in float64 by an independent
 * implementation), random fills, and finite-difference gradient checks. */

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"

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

/* x[0..n) drawn from U(±lim). */
static inline void fill_uniform(float *x, size_t n, double lim, ps_nn_rng *r) {
    ps_nn_init init = {.kind = PS_NN_INIT_UNIFORM, .limit = lim};
    ps_nn_init_fill(&init, x, n, r);
}

/* ---- finite differences ------------------------------------------------------------- */

/* Gradient checks of float32 code against central differences of a double
 * objective J(theta) = f(ctx). The estimate is D(h/2), with steps actually
 * representable in float. A ReLU kink within h of the point spoils it and
 * shows up as disagreement between D(h) and D(h/2), or as second
 * differences that do not scale as h^2 (S(h) != 4 S(h/2)); then D(h/4) is
 * used if h/2 and h/4 agree, and otherwise the coordinate is skipped and
 * counted. */
typedef double (*fd_objective_fn)(void *ctx);

typedef struct fd_point {
    double d;                    /* central difference */
    double s;                    /* second difference per unit step, S(h) / h */
} fd_point;

typedef struct fd_stats {
    size_t checked, skipped, failed;
    double worst;                /* max |g - fd| / tolerance over checked coordinates */
} fd_stats;

static inline fd_point fd_differences(fd_objective_fn f, void *ctx, float *theta, double f0, double h) {
    float t0 = *theta, tp = (float)(t0 + h), tm = (float)(t0 - h);
    *theta = tp;
    double fp = f(ctx);
    *theta = tm;
    double fm = f(ctx);
    *theta = t0;
    double hp = (double)tp - t0, hm = (double)t0 - tm;
    fd_point r = {(fp - fm) / (hp + hm), (fp - f0) / hp - (f0 - fm) / hm};
    return r;
}

/* Are two estimates at steps h and h/2 free of a kink? Smooth: s(h) =
 * h f'' = 2 s(h/2) and d(h) = d(h/2), both up to O(h^2) and rounding. */
static inline bool fd_smooth(fd_point a, fd_point b, double tol) {
    return fabs(a.d - b.d) <= tol / 2 && fabs(a.s - 2 * b.s) <= tol;
}

/* Check grad[0..n) against theta[0..n); *ret gets this block's counts
 * (tolerance atol + rtol|fd| per coordinate); logs the first disagreements. */
static inline void fd_check_block(fd_objective_fn f, void *ctx, const char *what, float *theta,
                                  const float *grad, size_t n, double h, double atol, double rtol,
                                  fd_stats *ret) {
    memset(ret, 0, sizeof(*ret));
    double f0 = f(ctx);
    for (size_t i = 0; i < n; i++) {
        fd_point p1 = fd_differences(f, ctx, &theta[i], f0, h);
        fd_point p2 = fd_differences(f, ctx, &theta[i], f0, h / 2);
        fd_point p4 = fd_differences(f, ctx, &theta[i], f0, h / 4);
        double tol = atol + rtol * fabs(p2.d), num;
        if (fd_smooth(p1, p2, tol))
            num = p2.d;
        else if (fd_smooth(p2, p4, tol))
            num = p4.d; /* the kink lies between h/2 and h */
        else {
            ret->skipped++;
            continue;
        }
        ret->checked++;
        double err = fabs(grad[i] - num);
        if (err / tol > ret->worst)
            ret->worst = err / tol;
        if (!(err <= tol) && ret->failed++ < 5)
            cr_log_error("%s[%zu]: analytic %.6g, numeric %.6g", what, i, grad[i], num);
    }
}

static inline void fd_stats_add(fd_stats *sum, const fd_stats *b) {
    sum->checked += b->checked;
    sum->skipped += b->skipped;
    sum->failed += b->failed;
    if (b->worst > sum->worst)
        sum->worst = b->worst;
}
