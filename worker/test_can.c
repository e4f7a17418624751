/* CAN co-action unit: the reference vectors (tests/vectors/can),
 * finite-difference checks of dP and dX for every variant, padding and
 * fully masked examples, batch consistency, widths and the error paths. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "can.h"
#include "error.h"
#include "nn.h"
#include "testutil.h"
#include "testvec.h"

/* ---- vector files ------------------------------------------------------- */

/* float32 against a float64 reference. dP sums C*T outer products of
 * terms up to X^3, and the measured worst error is 3.4e-6 on 0.15 (2.3e-5
 * relative), hence a bound 5x looser than for DCN. */
#define VEC_ATOL 5e-6
#define VEC_RTOL 5e-5

static void expect_close(const char *what, const float *got, const double *exp, size_t n) {
    expect_close_tol(what, got, exp, n, VEC_ATOL, VEC_RTOL);
}

static void read_config(const char *dir, ps_can_config *cfg) {
    char path[1024], key[64], val[128], line[256];
    join(path, sizeof(path), dir, "config.txt");
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s", path);
    memset(cfg, 0, sizeof(*cfg));
    size_t ndims = 0;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%63s %127[^\n]", key, val) != 2)
            continue;
        if (!strcmp(key, "dims")) {
            char *s = val;
            while (*s) {
                while (*s && (*s < '0' || *s > '9'))
                    s++;
                if (!*s)
                    break;
                cr_assert(ndims <= PS_CAN_MAX_LAYERS);
                cfg->dims[ndims++] = strtoul(s, &s, 10);
            }
        } else if (!strcmp(key, "use_bias"))
            cfg->use_bias = !strcmp(val, "True");
        else if (!strcmp(key, "orders"))
            cfg->orders = strtoul(val, NULL, 10);
        else if (!strcmp(key, "order_indep"))
            cfg->order_indep = !strcmp(val, "True");
        else if (!strcmp(key, "layers"))
            cr_assert_eq(ps_can_layers_parse(val, &cfg->layers), 0, "%s", val);
        else if (!strcmp(key, "combine"))
            cr_assert_eq(ps_can_combine_parse(val, &cfg->combine), 0, "%s",
                         val);
        else
            cr_assert_fail("%s: unknown key %s", path, key);
    }
    fclose(f);
    cr_assert(ndims >= 2);
    cfg->n_layers = ndims - 1;
}

static void run_vector_case(const char *name) {
    char dir[1024], sub[64];
    snprintf(sub, sizeof(sub), "can/%s", name);
    join(dir, sizeof(dir), ps_test_vectors_dir(), sub);
    ps_can_config cfg;
    read_config(dir, &cfg);
    arr P, X, mask, out, dout, dP, dX;
    arr_load_in(dir, "P.txt", &P);
    arr_load_in(dir, "X.txt", &X);
    arr_load_in(dir, "mask.txt", &mask);
    arr_load_in(dir, "out.txt", &out);
    arr_load_in(dir, "dout.txt", &dout);
    arr_load_in(dir, "dP.txt", &dP);
    arr_load_in(dir, "dX.txt", &dX);
    size_t B = X.shape[0], T = X.shape[1];
    cfg.max_batch = B + 3;
    cfg.max_len = T + 2;
    ps_can *u = NULL;
    cr_assert_eq(ps_can_new(&cfg, &u), 0);
    cr_assert_eq(P.shape[1], ps_can_ind_width(u));
    cr_assert_eq(X.shape[2], ps_can_feed_width(u));
    cr_assert_eq(out.shape[1], ps_can_out_width(u));
    cr_assert_eq(mask.shape[1], T);

    float *Pf = arr_floats(&P), *Xf = arr_floats(&X), *mf = arr_floats(&mask);
    float *df = arr_floats(&dout);
    float *o = malloc(out.n * sizeof(float)), *gP = malloc(P.n * sizeof(float));
    float *gX = malloc(X.n * sizeof(float));
    cr_assert_eq(ps_can_forward(u, Pf, Xf, mf, T, B, o), 0);
    expect_close("out", o, out.v, out.n);
    cr_assert_eq(ps_can_backward(u, df, gP, gX), 0);
    expect_close("dP", gP, dP.v, dP.n);
    expect_close("dX", gX, dX.v, dX.n);
    size_t d0 = ps_can_feed_width(u);
    for (size_t i = 0; i < B * T; i++)
        if (mf[i] == 0.0f)
            for (size_t j = 0; j < d0; j++)
                cr_expect(gX[i * d0 + j] == 0.0f, "padded dX not 0");
    free(P.v), free(X.v), free(mask.v), free(out.v), free(dout.v);
    free(dP.v), free(dX.v);
    free(Pf), free(Xf), free(mf), free(df), free(o), free(gP), free(gX);
    ps_can_free(u);
}

/* The parameter holds the name itself: Criterion may run each case in a
 * fresh process image. */
typedef struct vcase {
    char name[32];
} vcase;

ParameterizedTestParameters(can_vectors, matches_reference) {
    static vcase cases[] = {{"default"}, {"order_indep"}};
    return cr_make_param_array(vcase, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(vcase *c, can_vectors, matches_reference) {
    run_vector_case(c->name);
}

/* ---- finite differences ------------------------------------------------- */

/* J = sum R ⊙ out in double from the float outputs; central differences at
 * h and h/2 (the unit is smooth: tanh and powers), with the step actually
 * representable in float. Measured worst on correct code ~2e-4 (J sums
 * many outputs, so its rounding noise is larger than DCN's); a wrong term
 * is off by O(|g|). */
#define FD_H 1e-2
#define FD_ATOL 5e-4
#define FD_RTOL 2e-3

typedef struct problem {
    ps_can *u;
    size_t B, T, ind, d0, outw;
    float *P, *X, *mask, *R, *out, *dP, *dX;
} problem;

/* Random P, X, R; mask: example 0 full, example 1 fully masked, the rest
 * random 0/1 with one 0.5 weight; padded X holds NaN, which must never be
 * read. */
static void problem_init(problem *p, const ps_can_config *cfg, size_t B,
                         size_t T, uint64_t seed) {
    ps_can_config c = *cfg;
    c.max_batch = B;
    c.max_len = T;
    memset(p, 0, sizeof(*p));
    cr_assert_eq(ps_can_new(&c, &p->u), 0);
    p->B = B;
    p->T = T;
    p->ind = ps_can_ind_width(p->u);
    p->d0 = ps_can_feed_width(p->u);
    p->outw = ps_can_out_width(p->u);
    p->P = malloc(B * p->ind * sizeof(float));
    p->X = malloc(B * T * p->d0 * sizeof(float));
    p->mask = malloc(B * T * sizeof(float));
    p->R = malloc(B * p->outw * sizeof(float));
    p->out = malloc(B * p->outw * sizeof(float));
    p->dP = malloc(B * p->ind * sizeof(float));
    p->dX = malloc(B * T * p->d0 * sizeof(float));
    ps_nn_rng rng;
    ps_nn_rng_init(&rng, seed);
    fill_uniform(p->P, B * p->ind, 0.6, &rng);
    fill_uniform(p->X, B * T * p->d0, 1.0, &rng);
    fill_uniform(p->R, B * p->outw, 1.0, &rng);
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++) {
            float m = 1.0f;
            if (b == 1)
                m = 0.0f;
            else if (b > 1)
                m = ps_nn_rng_uniform(&rng) < 0.4 ? 0.0f : 1.0f;
            p->mask[b * T + t] = m;
        }
    if (B > 2 && T > 1) {
        p->mask[2 * T] = 1.0f;
        p->mask[2 * T + 1] = 0.5f;
    }
    for (size_t i = 0; i < B * T; i++)
        if (p->mask[i] == 0.0f)
            for (size_t j = 0; j < p->d0; j++)
                p->X[i * p->d0 + j] = NAN;
}

static void problem_free(problem *p) {
    ps_can_free(p->u);
    free(p->P), free(p->X), free(p->mask), free(p->R), free(p->out);
    free(p->dP), free(p->dX);
}

static double objective(void *ctx) {
    problem *p = ctx;
    cr_assert_eq(ps_can_forward(p->u, p->P, p->X, p->mask, p->T, p->B, p->out),
                 0);
    double J = 0;
    for (size_t i = 0; i < p->B * p->outw; i++)
        J += (double)p->R[i] * p->out[i];
    return J;
}

/* Checks grad against finite differences over theta[0..n), skipping the
 * entries for which skip() says so (padding). Returns coordinates checked. */
static size_t fd_check(problem *p, const char *what, float *theta,
                       const float *grad, size_t n, const float *skip_if_nan,
                       double *worst) {
    size_t checked = 0, failed = 0;
    double f0 = objective(p);
    for (size_t i = 0; i < n; i++) {
        if (skip_if_nan && isnan(skip_if_nan[i]))
            continue;
        double d1 = fd_differences(objective, p, &theta[i], f0, FD_H).d;
        double d2 = fd_differences(objective, p, &theta[i], f0, FD_H / 2).d;
        double tol = FD_ATOL + FD_RTOL * fabs(d2);
        cr_expect(fabs(d1 - d2) <= tol, "%s[%zu]: not smooth?", what, i);
        double err = fabs(grad[i] - d2);
        if (err / tol > *worst)
            *worst = err / tol;
        if (!(err <= tol) && failed++ < 5)
            cr_log_error("%s[%zu]: analytic %.6g, numeric %.6g", what, i,
                         grad[i], d2);
        checked++;
    }
    cr_expect_eq(failed, 0, "%s: %zu of %zu disagree", what, failed, checked);
    return checked;
}

static void gradcheck(const ps_can_config *cfg, size_t B, size_t T,
                      uint64_t seed) {
    problem p;
    problem_init(&p, cfg, B, T, seed);
    objective(&p);
    cr_assert_eq(ps_can_backward(p.u, p.R, p.dP, p.dX), 0);
    for (size_t i = 0; i < B * p.outw; i++)
        cr_assert(isfinite(p.out[i]), "padding leaked into out");
    /* Fully masked example 1: no output, no gradient at all. */
    for (size_t j = 0; j < p.outw; j++)
        cr_expect(p.out[p.outw + j] == 0.0f);
    for (size_t j = 0; j < p.ind; j++)
        cr_expect(p.dP[p.ind + j] == 0.0f);
    /* Padding: dX exactly 0 (and +0). */
    for (size_t i = 0; i < B * T; i++)
        if (p.mask[i] == 0.0f)
            for (size_t j = 0; j < p.d0; j++) {
                float g = p.dX[i * p.d0 + j];
                cr_expect(g == 0.0f && !signbit(g), "padded dX[%zu][%zu] = %g",
                          i, j, g);
            }
    double worst = 0;
    size_t n = fd_check(&p, "P", p.P, p.dP, B * p.ind, NULL, &worst);
    n += fd_check(&p, "X", p.X, p.dX, B * T * p.d0, p.X, &worst);
    cr_log_info("can K=%zu C=%zu indep=%d %s/%s bias=%d: checked %zu, worst "
                "%.3f", cfg->n_layers, cfg->orders, cfg->order_indep,
                ps_can_layers_name(cfg->layers),
                ps_can_combine_name(cfg->combine), cfg->use_bias, n, worst);
    cr_expect(n > 0);
    problem_free(&p);
}

/* Small dims keep the check fast: 5 -> 4 -> 3. */
static ps_can_config small(void) {
    ps_can_config c;
    ps_can_config_default(&c, 1, 1);
    c.dims[0] = 5;
    c.dims[1] = 4;
    c.dims[2] = 3;
    return c;
}

Test(can_gradcheck, all_layers_concat) {
    ps_can_config c = small();
    gradcheck(&c, 4, 5, 51);
}

Test(can_gradcheck, order_indep) {
    ps_can_config c = small();
    c.order_indep = true;
    gradcheck(&c, 4, 5, 52);
}

Test(can_gradcheck, last_layer_sum) {
    ps_can_config c = small();
    c.layers = PS_CAN_LAYERS_LAST;
    c.combine = PS_CAN_COMBINE_SUM;
    gradcheck(&c, 4, 5, 53);
}

Test(can_gradcheck, last_layer_concat_no_bias) {
    ps_can_config c = small();
    c.layers = PS_CAN_LAYERS_LAST;
    c.use_bias = false;
    gradcheck(&c, 4, 5, 54);
}

Test(can_gradcheck, all_layers_sum_order_indep) {
    ps_can_config c = small();
    c.combine = PS_CAN_COMBINE_SUM;
    c.order_indep = true;
    gradcheck(&c, 4, 5, 55);
}

Test(can_gradcheck, one_linear_layer) {
    ps_can_config c = small();
    c.n_layers = 1;
    c.orders = 2;
    gradcheck(&c, 3, 4, 56);
}

Test(can_gradcheck, three_layers_four_orders) {
    ps_can_config c = small();
    c.n_layers = 3;
    c.dims[3] = 2;
    c.orders = 4;
    gradcheck(&c, 3, 4, 57);
}

/* ---- batch consistency, widths, errors ----------------------------------- */

Test(can_batch, one_by_one_equals_batch) {
    ps_can_config c = small();
    c.order_indep = true;
    problem p;
    problem_init(&p, &c, 5, 6, 61);
    objective(&p);
    cr_assert_eq(ps_can_backward(p.u, p.R, p.dP, p.dX), 0);
    float o1[64], gP1[1024], gX1[64];
    cr_assert(p.outw <= 64 && p.ind <= 1024 && p.T * p.d0 <= 64);
    for (size_t b = 0; b < p.B; b++) {
        cr_assert_eq(ps_can_forward(p.u, p.P + b * p.ind,
                                    p.X + b * p.T * p.d0, p.mask + b * p.T,
                                    p.T, 1, o1), 0);
        cr_assert_eq(ps_can_backward(p.u, p.R + b * p.outw, gP1, gX1), 0);
        cr_expect(memcmp(o1, p.out + b * p.outw, p.outw * sizeof(float)) == 0,
                  "out row %zu", b);
        cr_expect(memcmp(gP1, p.dP + b * p.ind, p.ind * sizeof(float)) == 0,
                  "dP row %zu", b);
        cr_expect(memcmp(gX1, p.dX + b * p.T * p.d0,
                         p.T * p.d0 * sizeof(float)) == 0, "dX row %zu", b);
    }
    problem_free(&p);
}

Test(can_batch, no_mask_means_all_positions) {
    ps_can_config c = small();
    problem p;
    problem_init(&p, &c, 3, 4, 62);
    ps_nn_rng rng;
    ps_nn_rng_init(&rng, 63);
    fill_uniform(p.X, p.B * p.T * p.d0, 1.0, &rng);
    for (size_t i = 0; i < p.B * p.T; i++)
        p.mask[i] = 1.0f;
    float *o2 = malloc(p.B * p.outw * sizeof(float));
    cr_assert_eq(ps_can_forward(p.u, p.P, p.X, p.mask, p.T, p.B, p.out), 0);
    cr_assert_eq(ps_can_forward(p.u, p.P, p.X, NULL, p.T, p.B, o2), 0);
    cr_expect(memcmp(o2, p.out, p.B * p.outw * sizeof(float)) == 0);
    free(o2);
    problem_free(&p);
}

Test(can_unit, widths) {
    ps_can_config c;
    ps_can *u = NULL;
    ps_can_config_default(&c, 4, 10);
    cr_assert_eq(ps_can_new(&c, &u), 0);
    cr_expect_eq(ps_can_unit_width(u), 172);
    cr_expect_eq(ps_can_ind_width(u), 172);
    cr_expect_eq(ps_can_feed_width(u), 16);
    cr_expect_eq(ps_can_out_width(u), 36);
    ps_can_free(u);
    c.use_bias = false;
    c.order_indep = true;
    cr_assert_eq(ps_can_new(&c, &u), 0);
    cr_expect_eq(ps_can_unit_width(u), 160);
    cr_expect_eq(ps_can_ind_width(u), 480);
    ps_can_free(u);
    c.layers = PS_CAN_LAYERS_LAST;
    cr_assert_eq(ps_can_new(&c, &u), 0);
    cr_expect_eq(ps_can_out_width(u), 12);
    ps_can_free(u);
    c.combine = PS_CAN_COMBINE_SUM;
    cr_assert_eq(ps_can_new(&c, &u), 0);
    cr_expect_eq(ps_can_out_width(u), 4);
    ps_can_free(u);
    c.layers = PS_CAN_LAYERS_ALL;
    cr_assert_eq(ps_can_new(&c, &u), 0);
    cr_expect_eq(ps_can_out_width(u), 12);
    ps_can_free(u);
}

/* With P_ind = 0 every output is 0 and so is dX; only the biases learn
 * (ALGORITHMS.md §5: why P_ind must not start at zero). */
Test(can_unit, zero_induction_row_stalls) {
    ps_can_config c = small();
    problem p;
    problem_init(&p, &c, 3, 4, 64);
    memset(p.P, 0, p.B * p.ind * sizeof(float));
    objective(&p);
    cr_assert_eq(ps_can_backward(p.u, p.R, p.dP, p.dX), 0);
    for (size_t i = 0; i < p.B * p.outw; i++)
        cr_expect_eq(p.out[i], 0.0f);
    for (size_t i = 0; i < p.B * p.T * p.d0; i++)
        cr_expect(p.dX[i] == 0.0f);
    /* b_2 (offset after W_1, b_1, W_2) of example 0 does get a gradient */
    size_t b2 = 5 * 4 + 4 + 4 * 3;
    cr_expect_neq(p.dP[b2], 0.0f);
    problem_free(&p);
}

Test(can_errors, bad_config_and_misuse) {
    ps_can_config c;
    ps_can *u = NULL;
    ps_can_config_default(&c, 2, 3);
    ps_can_config bad = c;
    bad.n_layers = 0;
    cr_expect_eq(ps_can_new(&bad, &u), PS_ECONFIG);
    bad = c;
    bad.dims[1] = 0;
    cr_expect_eq(ps_can_new(&bad, &u), PS_ECONFIG);
    bad = c;
    bad.orders = 0;
    cr_expect_eq(ps_can_new(&bad, &u), PS_ECONFIG);
    bad = c;
    bad.max_batch = 0;
    cr_expect_eq(ps_can_new(&bad, &u), PS_ECONFIG);
    cr_expect_null(u);
    ps_can_layers l;
    cr_expect_eq(ps_can_layers_parse("first", &l), PS_ECONFIG);

    cr_assert_eq(ps_can_new(&c, &u), 0);
    float P[3 * 172] = {0}, X[3 * 4 * 16] = {0}, out[3 * 36], d[3 * 36] = {0};
    cr_expect_eq(ps_can_backward(u, d, NULL, NULL), -EINVAL);
    cr_expect_eq(ps_can_forward(u, P, X, NULL, 3, 3, out), PS_ELIMIT);
    cr_expect_eq(ps_can_forward(u, P, X, NULL, 4, 2, out), PS_ELIMIT);
    cr_expect_eq(ps_can_forward(u, P, X, NULL, 3, 0, out), -EINVAL);
    cr_expect_eq(ps_can_forward(u, P, X, NULL, 3, 2, out), 0);
    cr_expect_eq(ps_can_backward(u, d, NULL, NULL), 0);
    ps_can_free(u);
    ps_can_free(NULL);
}
