/* Dense primitives: activations, RNG and init, the parameter registry, the
 * linear layer against naive loops, the MLP tower against finite
 * differences, and the logloss helper. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "error.h"
#include "eval.h"
#include "nn.h"
#include "testvec.h"

/* ---- activations -------------------------------------------------------- */

Test(nn_act, names_round_trip) {
    for (int a = 0; a < PS_NN_ACT_COUNT; a++) {
        ps_nn_act got;
        cr_expect_eq(ps_nn_act_parse(ps_nn_act_name((ps_nn_act)a), &got), 0);
        cr_expect_eq(got, (ps_nn_act)a);
    }
    ps_nn_act got = PS_NN_ACT_TANH;
    cr_expect_eq(ps_nn_act_parse("sigmoid", &got), PS_ECONFIG);
    cr_expect_eq(got, PS_NN_ACT_TANH, "untouched on error");
    cr_expect_str_eq(ps_nn_act_name((ps_nn_act)99), "?");
}

Test(nn_act, values_and_derivatives) {
    float x[] = {-2.0f, -0.0f, 0.0f, 0.5f, 3.0f};
    float r[5], t[5], i[5];
    memcpy(r, x, sizeof(x));
    memcpy(t, x, sizeof(x));
    memcpy(i, x, sizeof(x));
    ps_nn_act_forward(PS_NN_ACT_RELU, r, 5);
    ps_nn_act_forward(PS_NN_ACT_TANH, t, 5);
    ps_nn_act_forward(PS_NN_ACT_IDENTITY, i, 5);
    for (int k = 0; k < 5; k++) {
        cr_expect_eq(r[k], x[k] > 0 ? x[k] : 0.0f);
        cr_expect_float_eq(t[k], tanhf(x[k]), 1e-7f);
        cr_expect_eq(i[k], x[k]);
    }
    float dr[5] = {1, 1, 1, 1, 1}, dt[5] = {1, 1, 1, 1, 1},
          di[5] = {2, 2, 2, 2, 2};
    ps_nn_act_backward(PS_NN_ACT_RELU, r, dr, 5);
    ps_nn_act_backward(PS_NN_ACT_TANH, t, dt, 5);
    ps_nn_act_backward(PS_NN_ACT_IDENTITY, i, di, 5);
    for (int k = 0; k < 5; k++) {
        cr_expect_eq(dr[k], x[k] > 0 ? 1.0f : 0.0f, "relu'(%g)", x[k]);
        float th = tanhf(x[k]);
        cr_expect_float_eq(dt[k], 1.0f - th * th, 1e-6f);
        cr_expect_eq(di[k], 2.0f);
    }
}

/* ---- RNG and init -------------------------------------------------------- */

Test(nn_rng, deterministic_and_distributed) {
    ps_nn_rng a, b, c;
    ps_nn_rng_init(&a, 5);
    ps_nn_rng_init(&b, 5);
    ps_nn_rng_init(&c, 6);
    int same_c = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t x = ps_nn_rng_next(&a);
        cr_assert_eq(x, ps_nn_rng_next(&b));
        same_c += x == ps_nn_rng_next(&c);
    }
    cr_expect_eq(same_c, 0);
    const int n = 200000;
    double s = 0, s2 = 0, us = 0;
    for (int i = 0; i < n; i++) {
        double u = ps_nn_rng_uniform(&a);
        cr_assert(u >= 0 && u < 1);
        us += u;
        double z = ps_nn_rng_normal(&a);
        cr_assert(isfinite(z));
        s += z, s2 += z * z;
    }
    cr_expect(fabs(us / n - 0.5) < 0.005);
    cr_expect(fabs(s / n) < 0.01);
    cr_expect(fabs(s2 / n - 1) < 0.02);
}

Test(nn_init, glorot_bounds_and_spread) {
    ps_nn_rng r;
    ps_nn_rng_init(&r, 9);
    enum { n = 20000 };
    static float x[n];
    ps_nn_init gu = {.kind = PS_NN_INIT_GLOROT_UNIFORM, .fan_in = 100,
                     .fan_out = 50};
    ps_nn_init_fill(&gu, x, n, &r);
    double lim = sqrt(6.0 / 150), s2 = 0, mx = 0;
    for (int i = 0; i < n; i++) {
        cr_assert(fabs(x[i]) <= lim);
        mx = fmax(mx, fabs(x[i]));
        s2 += (double)x[i] * x[i];
    }
    cr_expect(mx > 0.99 * lim);
    cr_expect(fabs(sqrt(s2 / n) / (lim / sqrt(3)) - 1) < 0.03);
    ps_nn_init gn = {.kind = PS_NN_INIT_GLOROT_NORMAL, .fan_in = 100,
                     .fan_out = 50};
    ps_nn_init_fill(&gn, x, n, &r);
    s2 = 0;
    for (int i = 0; i < n; i++)
        s2 += (double)x[i] * x[i];
    cr_expect(fabs(sqrt(s2 / n) / sqrt(2.0 / 150) - 1) < 0.03);
    ps_nn_init un = {.kind = PS_NN_INIT_UNIFORM, .limit = 0.25};
    ps_nn_init_fill(&un, x, n, &r);
    for (int i = 0; i < n; i++)
        cr_assert(fabs(x[i]) <= 0.25);
    ps_nn_init z = {.kind = PS_NN_INIT_ZERO};
    ps_nn_init_fill(&z, x, n, &r);
    for (int i = 0; i < n; i++)
        cr_assert_eq(x[i], 0.0f);
}

/* ---- parameter registry --------------------------------------------------- */

Test(nn_params, add_find_iterate) {
    ps_nn_params *p = NULL;
    cr_assert_eq(ps_nn_params_new(&p), 0);
    size_t s1[2] = {3, 4}, s2[1] = {5}, s0[2] = {3, 0};
    const ps_nn_param *a = NULL, *b = NULL;
    cr_assert_eq(ps_nn_params_add(p, "a.W", 2, s1, NULL, &a), 0);
    cr_assert_eq(ps_nn_params_add(p, "a.b", 1, s2, NULL, &b), 0);
    cr_expect_eq(ps_nn_params_add(p, "a.W", 1, s2, NULL, NULL), PS_ECONFIG);
    cr_expect_eq(ps_nn_params_add(p, "zero", 2, s0, NULL, NULL), PS_ECONFIG);
    char longname[PS_NN_MAX_NAME + 1];
    memset(longname, 'x', PS_NN_MAX_NAME);
    longname[PS_NN_MAX_NAME] = 0;
    cr_expect_eq(ps_nn_params_add(p, longname, 1, s2, NULL, NULL), PS_ECONFIG);
    /* Many more blocks: earlier descriptors must not move. */
    for (int i = 0; i < 40; i++) {
        char name[16];
        snprintf(name, sizeof(name), "x.%d", i);
        cr_assert_eq(ps_nn_params_add(p, name, 1, s2, NULL, NULL), 0);
    }
    cr_expect_eq(ps_nn_params_count(p), 42);
    cr_expect_eq(ps_nn_params_total(p), 12 + 5 + 40 * 5);
    cr_expect_eq(ps_nn_params_at(p, 0), a);
    cr_expect_eq(ps_nn_params_at(p, 1), b);
    cr_expect_null(ps_nn_params_at(p, 42));
    cr_expect_eq(ps_nn_params_find(p, "a.b"), b);
    cr_expect_null(ps_nn_params_find(p, "a.c"));
    cr_expect_str_eq(a->name, "a.W");
    cr_expect_eq(a->len, 12);
    cr_expect_eq(a->ndim, 2);
    cr_expect_eq(a->shape[1], 4);
    cr_expect_eq((uintptr_t)a->value % 64, 0);
    cr_expect_eq((uintptr_t)a->grad % 64, 0);
    for (size_t i = 0; i < a->len; i++) {
        cr_expect_eq(a->value[i], 0.0f);
        cr_expect_eq(a->grad[i], 0.0f);
        a->grad[i] = 1.0f;
    }
    b->grad[4] = 2.0f;
    ps_nn_params_zero_grad(p);
    for (size_t i = 0; i < a->len; i++)
        cr_expect_eq(a->grad[i], 0.0f);
    cr_expect_eq(b->grad[4], 0.0f);
    ps_nn_params_free(p);
    ps_nn_params_free(NULL);
}

/* A block's initial value depends on (seed, its name) only. */
Test(nn_params, init_streams_are_per_name) {
    ps_nn_params *p = NULL, *q = NULL;
    cr_assert_eq(ps_nn_params_new(&p), 0);
    cr_assert_eq(ps_nn_params_new(&q), 0);
    size_t s[1] = {50};
    ps_nn_init gu = {.kind = PS_NN_INIT_GLOROT_UNIFORM, .fan_in = 50,
                     .fan_out = 1};
    const ps_nn_param *a, *b, *a2, *c;
    cr_assert_eq(ps_nn_params_add(p, "a", 1, s, &gu, &a), 0);
    cr_assert_eq(ps_nn_params_add(p, "b", 1, s, &gu, &b), 0);
    cr_assert_eq(ps_nn_params_add(q, "c", 1, s, &gu, &c), 0);
    cr_assert_eq(ps_nn_params_add(q, "a", 1, s, &gu, &a2), 0);
    ps_nn_params_init_values(p, 3);
    ps_nn_params_init_values(q, 3);
    cr_expect(memcmp(a->value, a2->value, 50 * sizeof(float)) == 0);
    cr_expect(memcmp(a->value, b->value, 50 * sizeof(float)) != 0);
    ps_nn_params_init_values(q, 4);
    cr_expect(memcmp(a->value, a2->value, 50 * sizeof(float)) != 0);
    ps_nn_params_free(p);
    ps_nn_params_free(q);
}

/* ---- linear layer against naive loops ----------------------------------- */

Test(nn_linear, matches_naive) {
    enum { B = 5, IN = 7, OUT = 4 };
    ps_nn_rng r;
    ps_nn_rng_init(&r, 17);
    float W[OUT * IN], b[OUT], X[B * IN], Y[B * OUT], dY[B * OUT];
    fill_uniform(W, OUT * IN, 1, &r);
    fill_uniform(b, OUT, 1, &r);
    fill_uniform(X, B * IN, 1, &r);
    fill_uniform(dY, B * OUT, 1, &r);
    ps_nn_linear_forward(W, b, IN, OUT, X, B, Y);
    for (int n = 0; n < B; n++)
        for (int o = 0; o < OUT; o++) {
            double s = b[o];
            for (int i = 0; i < IN; i++)
                s += (double)W[o * IN + i] * X[n * IN + i];
            cr_expect(fabs(Y[n * OUT + o] - s) < 1e-5, "Y[%d][%d]", n, o);
        }
    ps_nn_linear_forward(W, NULL, IN, OUT, X, B, Y);
    double s0 = 0;
    for (int i = 0; i < IN; i++)
        s0 += (double)W[i] * X[i];
    cr_expect(fabs(Y[0] - s0) < 1e-5, "no bias");

    float dW[OUT * IN], db[OUT], dX[B * IN];
    for (int i = 0; i < OUT * IN; i++)
        dW[i] = 1.0f; /* accumulates on top */
    for (int i = 0; i < OUT; i++)
        db[i] = -1.0f;
    for (int i = 0; i < B * IN; i++)
        dX[i] = 100.0f;
    ps_nn_linear_backward(W, IN, OUT, X, dY, B, dW, db, dX, false);
    for (int o = 0; o < OUT; o++) {
        double sb = -1;
        for (int n = 0; n < B; n++)
            sb += dY[n * OUT + o];
        cr_expect(fabs(db[o] - sb) < 1e-5);
        for (int i = 0; i < IN; i++) {
            double s = 1;
            for (int n = 0; n < B; n++)
                s += (double)dY[n * OUT + o] * X[n * IN + i];
            cr_expect(fabs(dW[o * IN + i] - s) < 1e-5, "dW[%d][%d]", o, i);
        }
    }
    for (int n = 0; n < B; n++)
        for (int i = 0; i < IN; i++) {
            double s = 0;
            for (int o = 0; o < OUT; o++)
                s += (double)dY[n * OUT + o] * W[o * IN + i];
            cr_expect(fabs(dX[n * IN + i] - s) < 1e-5, "dX[%d][%d]", n, i);
        }
    float dX2[B * IN];
    memcpy(dX2, dX, sizeof(dX));
    ps_nn_linear_backward(W, IN, OUT, X, dY, B, dW, NULL, dX2, true);
    for (int i = 0; i < B * IN; i++)
        cr_expect(fabsf(dX2[i] - 2 * dX[i]) <= 1e-6f * (1 + fabsf(dX[i])));
}

/* ---- MLP tower against finite differences --------------------------------- */

/* J = sum R ⊙ Y in double from float outputs. Central differences at h/2,
 * checked against h (and the second differences against their h^2
 * scaling) to detect a ReLU kink within reach; then h/4 is tried, and
 * otherwise the coordinate is skipped and counted. */
#define FD_H 1e-2
#define FD_ATOL 2e-4
#define FD_RTOL 1e-3

typedef struct mlp_ctx {
    ps_nn_mlp *m;
    float *X, *R;
    size_t B, out;
} mlp_ctx;

static double objective(void *ctx) {
    mlp_ctx *c = ctx;
    const float *Y;
    cr_assert_eq(ps_nn_mlp_forward(c->m, c->X, c->B, &Y), 0);
    double J = 0;
    for (size_t i = 0; i < c->B * c->out; i++)
        J += (double)c->R[i] * Y[i];
    return J;
}

static void fd_check(mlp_ctx *c, const char *what, float *theta,
                     const float *grad, size_t n, size_t *checked,
                     size_t *skipped) {
    fd_stats b;
    fd_check_block(objective, c, what, theta, grad, n, FD_H, FD_ATOL, FD_RTOL, &b);
    *checked += b.checked;
    *skipped += b.skipped;
    cr_expect_eq(b.failed, 0, "%s: %zu coordinates disagree", what, b.failed);
}

static void mlp_gradcheck(ps_nn_act act, bool act_last, size_t n_layers,
                          uint64_t seed) {
    const size_t B = 4, in = 5, sizes[] = {6, 4, 3};
    ps_nn_params *ps = NULL;
    cr_assert_eq(ps_nn_params_new(&ps), 0);
    ps_nn_mlp_config cfg = {.prefix = "t", .in_dim = in, .n_layers = n_layers,
                            .sizes = sizes, .act = act, .act_last = act_last,
                            .max_batch = B};
    mlp_ctx c = {.B = B};
    cr_assert_eq(ps_nn_mlp_new(ps, &cfg, &c.m), 0);
    c.out = ps_nn_mlp_out_dim(c.m);
    cr_assert_eq(c.out, n_layers ? sizes[n_layers - 1] : in);
    cr_assert_eq(ps_nn_params_count(ps), 2 * n_layers);
    ps_nn_params_init_values(ps, seed);
    ps_nn_rng r;
    ps_nn_rng_init(&r, seed + 1);
    for (size_t i = 0; i < ps_nn_params_count(ps); i++) {
        const ps_nn_param *p = ps_nn_params_at(ps, i);
        if (p->init.kind == PS_NN_INIT_ZERO)
            fill_uniform(p->value, p->len, 0.3, &r);
    }
    c.X = malloc(B * in * sizeof(float));
    c.R = malloc(B * c.out * sizeof(float));
    float *dX = malloc(B * in * sizeof(float));
    fill_uniform(c.X, B * in, 1, &r);
    fill_uniform(c.R, B * c.out, 1, &r);
    objective(&c);
    cr_assert_eq(ps_nn_mlp_backward(c.m, c.R, dX, false), 0);
    size_t checked = 0, skipped = 0;
    for (size_t i = 0; i < ps_nn_params_count(ps); i++) {
        const ps_nn_param *p = ps_nn_params_at(ps, i);
        fd_check(&c, p->name, p->value, p->grad, p->len, &checked, &skipped);
    }
    fd_check(&c, "X", c.X, dX, B * in, &checked, &skipped);
    cr_log_info("mlp %s last=%d layers=%zu: checked %zu, skipped %zu",
                ps_nn_act_name(act), act_last, n_layers, checked, skipped);
    cr_expect(skipped * 4 <= checked + skipped);
    /* accumulate adds the same dX on top */
    float *dX2 = malloc(B * in * sizeof(float));
    memcpy(dX2, dX, B * in * sizeof(float));
    objective(&c);
    cr_assert_eq(ps_nn_mlp_backward(c.m, c.R, dX2, true), 0);
    for (size_t i = 0; i < B * in; i++)
        cr_expect(fabsf(dX2[i] - 2 * dX[i]) <= 1e-6f * (1 + fabsf(dX[i])));
    free(c.X), free(c.R), free(dX), free(dX2);
    ps_nn_mlp_free(c.m);
    ps_nn_params_free(ps);
}

Test(nn_mlp, gradcheck_relu_tower) { mlp_gradcheck(PS_NN_ACT_RELU, true, 3, 71); }

Test(nn_mlp, gradcheck_tanh_linear_head) {
    mlp_gradcheck(PS_NN_ACT_TANH, false, 3, 72);
}

Test(nn_mlp, gradcheck_one_layer) { mlp_gradcheck(PS_NN_ACT_TANH, true, 1, 73); }

Test(nn_mlp, empty_tower_is_identity) {
    mlp_gradcheck(PS_NN_ACT_RELU, true, 0, 74);
}

Test(nn_mlp, names_and_errors) {
    ps_nn_params *ps = NULL;
    cr_assert_eq(ps_nn_params_new(&ps), 0);
    size_t sizes[] = {8, 0};
    ps_nn_mlp *m = NULL;
    ps_nn_mlp_config cfg = {.prefix = "deep", .in_dim = 3, .n_layers = 2,
                            .sizes = sizes, .act = PS_NN_ACT_RELU,
                            .act_last = true, .max_batch = 2};
    cr_expect_eq(ps_nn_mlp_new(ps, &cfg, &m), PS_ECONFIG);
    cfg.n_layers = 1;
    cr_assert_eq(ps_nn_mlp_new(ps, &cfg, &m), 0);
    const ps_nn_param *W = ps_nn_params_find(ps, "deep.0.W");
    cr_assert_not_null(W);
    cr_expect_eq(W->shape[0], 8);
    cr_expect_eq(W->shape[1], 3);
    cr_expect_not_null(ps_nn_params_find(ps, "deep.0.b"));
    float X[9] = {0}, dY[24] = {0};
    const float *Y;
    cr_expect_eq(ps_nn_mlp_backward(m, dY, NULL, false), -EINVAL);
    cr_expect_eq(ps_nn_mlp_forward(m, X, 3, &Y), PS_ELIMIT);
    cr_expect_eq(ps_nn_mlp_forward(m, X, 0, &Y), -EINVAL);
    cr_expect_eq(ps_nn_mlp_forward(m, X, 2, &Y), 0);
    ps_nn_mlp_free(m);
    ps_nn_mlp_free(NULL);
    ps_nn_params_free(ps);
}

Test(nn_blas, reports_its_kernels) {
    const char *core = ps_nn_blas_core();
    cr_assert_not_null(core);
    cr_expect_gt(strlen(core), 0);
    cr_log_info("OpenBLAS core: %s", core);
}

/* ---- loss ------------------------------------------------------------------ */

Test(nn_loss, mean_logloss_and_gradient) {
    float z[] = {-3.0f, -0.2f, 0.0f, 0.7f, 40.0f, -40.0f};
    float y[] = {0, 1, 1, 0, 1, 0};
    enum { n = 6 };
    double L;
    float dz[n];
    cr_assert_eq(ps_nn_logloss(z, y, n, &L, dz), 0);
    double want = 0;
    for (int i = 0; i < n; i++)
        want += ps_logloss_logit(z[i], y[i]);
    cr_expect_float_eq(L, want / n, 1e-12);
    /* dL/dz against central differences of the mean loss in double */
    for (int i = 0; i < n; i++) {
        cr_expect_float_eq(dz[i], (ps_sigmoid(z[i]) - y[i]) / n, 1e-7);
        float zp[n], zm[n];
        memcpy(zp, z, sizeof(z));
        memcpy(zm, z, sizeof(z));
        zp[i] += 1e-2f;
        zm[i] -= 1e-2f;
        double Lp, Lm;
        cr_assert_eq(ps_nn_logloss(zp, y, n, &Lp, NULL), 0);
        cr_assert_eq(ps_nn_logloss(zm, y, n, &Lm, NULL), 0);
        double fd = (Lp - Lm) / ((double)zp[i] - zm[i]);
        cr_expect(fabs(dz[i] - fd) < 1e-5, "dz[%d] %g vs %g", i, dz[i], fd);
    }
}

Test(nn_loss, rejects_bad_input_without_writing) {
    float z[] = {0.5f, NAN}, y[] = {1, 0}, dz[2] = {7, 7};
    double L = 7;
    cr_expect_eq(ps_nn_logloss(z, y, 2, &L, dz), PS_ENONFINITE);
    cr_expect_eq(L, 7);
    cr_expect_eq(dz[0], 7);
    z[1] = INFINITY;
    cr_expect_eq(ps_nn_logloss(z, y, 2, &L, dz), PS_ENONFINITE);
    cr_expect_eq(ps_nn_logloss(z, y, 0, &L, dz), -EINVAL);
}
