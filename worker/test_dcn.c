/* DCN-V2: the reference vectors (tests/vectors/dcnv2), finite-difference
 * gradient checks per cross-layer type and for the whole model, batch
 * consistency, init and the error paths. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "dcn.h"
#include "error.h"
#include "nn.h"
#include "testutil.h"
#include "testvec.h"

/* ---- vector files ------------------------------------------------------- */

/* Vectors come from a float64 reference; ours is float32. The measured
 * worst element over all five cases uses 9% of this bound (a logit off by
 * ~1e-7), which leaves room for another BLAS's summation order and none
 * for a real error. */
#define VEC_ATOL 1e-6
#define VEC_RTOL 1e-5

static void expect_close(const char *what, const float *got, const double *exp, size_t n) {
    expect_close_tol(what, got, exp, n, VEC_ATOL, VEC_RTOL);
}

static void read_config(const char *dir, ps_dcn_config *cfg) {
    char path[1024], key[64], val[128];
    join(path, sizeof(path), dir, "config.txt");
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s", path);
    memset(cfg, 0, sizeof(*cfg));
    char line[256];
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%63s %127[^\n]", key, val) != 2)
            continue;
        if (!strcmp(key, "input_dim"))
            cfg->input_dim = strtoul(val, NULL, 10);
        else if (!strcmp(key, "cross_layers"))
            cfg->cross_layers = strtoul(val, NULL, 10);
        else if (!strcmp(key, "cross"))
            cr_assert_eq(ps_dcn_cross_parse(val, &cfg->cross), 0, "%s", val);
        else if (!strcmp(key, "experts"))
            cfg->experts = strtoul(val, NULL, 10);
        else if (!strcmp(key, "rank"))
            cfg->rank = strtoul(val, NULL, 10);
        else if (!strcmp(key, "activation"))
            cr_assert_eq(ps_nn_act_parse(val, &cfg->activation), 0, "%s", val);
        else if (!strcmp(key, "use_c"))
            cfg->use_c = !strcmp(val, "True");
        else if (!strcmp(key, "structure"))
            cr_assert_eq(ps_dcn_structure_parse(val, &cfg->structure), 0,
                         "%s", val);
        else if (!strcmp(key, "deep")) {
            char *s = val;
            while (*s) {
                while (*s && (*s < '0' || *s > '9'))
                    s++;
                if (!*s)
                    break;
                cr_assert(cfg->deep_layers < PS_DCN_MAX_DEEP);
                cfg->deep_sizes[cfg->deep_layers++] = strtoul(s, &s, 10);
            }
        } else
            cr_assert_fail("%s: unknown key %s", path, key);
    }
    fclose(f);
}

static bool starts_ends(const char *s, const char *pre, const char *suf,
                        char *mid, size_t cap) {
    size_t ls = strlen(s), lp = strlen(pre), lf = strlen(suf);
    if (ls <= lp + lf || strncmp(s, pre, lp) || strcmp(s + ls - lf, suf))
        return false;
    size_t n = ls - lp - lf;
    if (n >= cap)
        return false;
    memcpy(mid, s + lp, n);
    mid[n] = 0;
    return true;
}

static void run_vector_case(const char *name) {
    char dir[1024], sub[64];
    snprintf(sub, sizeof(sub), "dcnv2/%s", name);
    join(dir, sizeof(dir), ps_test_vectors_dir(), sub);
    ps_dcn_config cfg;
    read_config(dir, &cfg);
    cfg.max_batch = 16; /* more than the case's batch on purpose */
    ps_dcn *m = NULL;
    cr_assert_eq(ps_dcn_new(&cfg, &m), 0);
    ps_nn_params *ps = ps_dcn_params(m);

    /* Every block has a param.* and a grad.* file with its exact shape, and
     * every param.* / grad.* file names a block (or x0). */
    for (size_t i = 0; i < ps_nn_params_count(ps); i++) {
        const ps_nn_param *p = ps_nn_params_at(ps, i);
        char file[128];
        arr a;
        snprintf(file, sizeof(file), "param.%s.txt", p->name);
        arr_load_in(dir, file, &a);
        cr_assert_eq(a.ndim, p->ndim, "%s: ndim %zu vs %zu", p->name, a.ndim,
                     p->ndim);
        for (size_t d = 0; d < a.ndim; d++)
            cr_assert_eq(a.shape[d], p->shape[d], "%s: dim %zu", p->name, d);
        for (size_t j = 0; j < a.n; j++)
            p->value[j] = (float)a.v[j];
        free(a.v);
    }
    DIR *dp = opendir(dir);
    cr_assert_not_null(dp);
    struct dirent *de;
    size_t grad_files = 0;
    while ((de = readdir(dp))) {
        char mid[128];
        if (starts_ends(de->d_name, "param.", ".txt", mid, sizeof(mid)))
            cr_expect_not_null(ps_nn_params_find(ps, mid), "no block %s", mid);
        if (starts_ends(de->d_name, "grad.", ".txt", mid, sizeof(mid))) {
            grad_files++;
            cr_expect(!strcmp(mid, "x0") || ps_nn_params_find(ps, mid),
                      "no block %s", mid);
        }
    }
    closedir(dp);
    cr_assert_eq(grad_files, ps_nn_params_count(ps) + 1);

    arr x0, y, logit, loss, gx0;
    arr_load_in(dir, "x0.txt", &x0);
    arr_load_in(dir, "y.txt", &y);
    arr_load_in(dir, "logit.txt", &logit);
    arr_load_in(dir, "loss.txt", &loss);
    arr_load_in(dir, "grad.x0.txt", &gx0);
    size_t B = x0.shape[0];
    cr_assert_eq(x0.shape[1], cfg.input_dim);
    float *xf = arr_floats(&x0), *yf = arr_floats(&y);
    float *z = calloc(B, sizeof(float)), *dz = calloc(B, sizeof(float));
    float *dx0 = calloc(B * cfg.input_dim, sizeof(float));

    cr_assert_eq(ps_dcn_forward(m, xf, B, z), 0);
    expect_close("logit", z, logit.v, B);
    double L;
    cr_assert_eq(ps_nn_logloss(z, yf, B, &L, dz), 0);
    float Lf = (float)L;
    expect_close("loss", &Lf, loss.v, 1);
    /* Grads start dirty to prove zero_grad clears them. */
    for (size_t i = 0; i < ps_nn_params_count(ps); i++) {
        const ps_nn_param *p = ps_nn_params_at(ps, i);
        for (size_t j = 0; j < p->len; j++)
            p->grad[j] = 123.0f;
    }
    ps_dcn_zero_grad(m);
    cr_assert_eq(ps_dcn_backward(m, dz, dx0), 0);
    expect_close("grad.x0", dx0, gx0.v, gx0.n);
    for (size_t i = 0; i < ps_nn_params_count(ps); i++) {
        const ps_nn_param *p = ps_nn_params_at(ps, i);
        char file[128];
        arr g;
        snprintf(file, sizeof(file), "grad.%s.txt", p->name);
        arr_load_in(dir, file, &g);
        cr_assert_eq(g.n, p->len);
        expect_close(file, p->grad, g.v, g.n);
        free(g.v);
    }
    free(x0.v), free(y.v), free(logit.v), free(loss.v), free(gx0.v);
    free(xf), free(yf), free(z), free(dz), free(dx0);
    ps_dcn_free(m);
}

/* Criterion may run each case in a fresh process image, so the parameter
 * holds the name itself, not a pointer to it. */
typedef struct vcase {
    char name[32];
} vcase;

ParameterizedTestParameters(dcn_vectors, matches_reference) {
    static vcase cases[] = {{"full_parallel"}, {"full_stacked"}, {"lowrank"},
                            {"moe_parallel"}, {"moe_stacked"}};
    return cr_make_param_array(vcase, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(vcase *c, dcn_vectors, matches_reference) {
    run_vector_case(c->name);
}

/* ---- finite differences ------------------------------------------------- */

/* The model runs in float32, so the objective J = sum_b R_b z_b is
 * evaluated in double from float logits; the kink-aware central
 * differences are fd_check_block() in testvec.h. Skipped coordinates: at
 * most a quarter overall, half of any block. Measured on correct code the worst error is ~3e-5, while a
 * missing term or wrong factor is off by O(|g|). */
#define FD_H 1e-2
#define FD_ATOL 2e-4
#define FD_RTOL 1e-3

typedef struct fd_ctx {
    ps_dcn *m;
    float *x0, *R, *z;
    size_t B;
} fd_ctx;

static double objective(void *ctx) {
    fd_ctx *c = ctx;
    cr_assert_eq(ps_dcn_forward(c->m, c->x0, c->B, c->z), 0);
    double J = 0;
    for (size_t b = 0; b < c->B; b++)
        J += (double)c->R[b] * c->z[b];
    return J;
}

static void fd_check(fd_ctx *c, const char *what, float *theta,
                     const float *grad, size_t n, fd_stats *st) {
    fd_stats b;
    fd_check_block(objective, c, what, theta, grad, n, FD_H, FD_ATOL, FD_RTOL, &b);
    /* A kink skips every coordinate that moves its pre-activation far
     * enough, so skips cluster; still, each block must be mostly checked. */
    cr_expect(2 * b.skipped <= n, "%s: %zu of %zu coordinates skipped", what,
              b.skipped, n);
    fd_stats_add(st, &b);
}

/* A model at a generic point: initialised from seed, then every zero-init
 * block (biases) made non-zero so their paths are exercised too. */
static ps_dcn *make_model(ps_dcn_config *cfg, uint64_t seed) {
    ps_dcn *m = NULL;
    cr_assert_eq(ps_dcn_new(cfg, &m), 0);
    ps_dcn_init_params(m, seed);
    ps_nn_rng rng;
    ps_nn_rng_init(&rng, seed + 1);
    ps_nn_params *ps = ps_dcn_params(m);
    for (size_t i = 0; i < ps_nn_params_count(ps); i++) {
        const ps_nn_param *p = ps_nn_params_at(ps, i);
        if (p->init.kind == PS_NN_INIT_ZERO)
            fill_uniform(p->value, p->len, 0.3, &rng);
    }
    return m;
}

/* Checks dJ/dparam for every block and dJ/dx0 against finite differences. */
static void gradcheck(ps_dcn_config cfg, size_t B, uint64_t seed) {
    cfg.max_batch = B;
    ps_dcn *m = make_model(&cfg, seed);
    size_t N = cfg.input_dim;
    ps_nn_rng rng;
    ps_nn_rng_init(&rng, seed + 2);
    fd_ctx c = {.m = m, .B = B};
    c.x0 = malloc(B * N * sizeof(float));
    c.R = malloc(B * sizeof(float));
    c.z = malloc(B * sizeof(float));
    float *dx0 = malloc(B * N * sizeof(float));
    fill_uniform(c.x0, B * N, 1.0, &rng);
    fill_uniform(c.R, B, 1.0, &rng);

    ps_dcn_zero_grad(m);
    cr_assert_eq(ps_dcn_forward(m, c.x0, B, c.z), 0);
    cr_assert_eq(ps_dcn_backward(m, c.R, dx0), 0);

    fd_stats st = {0};
    ps_nn_params *ps = ps_dcn_params(m);
    for (size_t i = 0; i < ps_nn_params_count(ps); i++) {
        const ps_nn_param *p = ps_nn_params_at(ps, i);
        fd_check(&c, p->name, p->value, p->grad, p->len, &st);
    }
    fd_check(&c, "x0", c.x0, dx0, B * N, &st);
    cr_log_info("%s/%s K=%zu %s C=%d: checked %zu, skipped %zu, worst %.3f",
                ps_dcn_cross_name(cfg.cross), ps_dcn_structure_name(cfg.structure),
                cfg.experts, ps_nn_act_name(cfg.activation), cfg.use_c,
                st.checked, st.skipped, st.worst);
    cr_expect_eq(st.failed, 0, "%zu of %zu coordinates disagree", st.failed,
                 st.checked);
    cr_expect(st.skipped * 4 <= st.checked + st.skipped,
              "skipped %zu of %zu", st.skipped, st.checked + st.skipped);
    free(c.x0), free(c.R), free(c.z), free(dx0);
    ps_dcn_free(m);
}

/* One cross layer on its own: no deep tower, so logit = w_out . x_1 + b. */
static ps_dcn_config one_layer(ps_dcn_cross cross, size_t K, size_t r,
                               ps_nn_act g, bool use_c) {
    ps_dcn_config cfg = {.input_dim = 6, .cross_layers = 1, .cross = cross,
                         .experts = K, .rank = r, .activation = g,
                         .use_c = use_c, .structure = PS_DCN_STACKED};
    return cfg;
}

Test(dcn_gradcheck, full_rank_layer) {
    gradcheck(one_layer(PS_DCN_CROSS_FULL, 0, 0, PS_NN_ACT_IDENTITY, false), 4,
              11);
}

Test(dcn_gradcheck, moe_gated_with_c_tanh) {
    gradcheck(one_layer(PS_DCN_CROSS_MOE, 3, 2, PS_NN_ACT_TANH, true), 4, 12);
}

Test(dcn_gradcheck, moe_gated_with_c_relu) {
    gradcheck(one_layer(PS_DCN_CROSS_MOE, 3, 2, PS_NN_ACT_RELU, true), 4, 13);
}

Test(dcn_gradcheck, moe_gated_without_c_tanh) {
    gradcheck(one_layer(PS_DCN_CROSS_MOE, 2, 3, PS_NN_ACT_TANH, false), 4, 14);
}

Test(dcn_gradcheck, lowrank_k1) {
    ps_dcn_config cfg = one_layer(PS_DCN_CROSS_MOE, 1, 3, PS_NN_ACT_IDENTITY,
                                  false);
    cfg.cross_layers = 2;
    gradcheck(cfg, 4, 15);
}

static ps_dcn_config whole(ps_dcn_cross cross, ps_dcn_structure s) {
    ps_dcn_config cfg = {.input_dim = 7, .cross_layers = 3, .cross = cross,
                         .experts = 3, .rank = 2,
                         .activation = PS_NN_ACT_TANH, .use_c = true,
                         .deep_layers = 2, .deep_sizes = {6, 5},
                         .structure = s};
    return cfg;
}

Test(dcn_gradcheck, whole_full_stacked) {
    gradcheck(whole(PS_DCN_CROSS_FULL, PS_DCN_STACKED), 5, 21);
}

Test(dcn_gradcheck, whole_full_parallel) {
    gradcheck(whole(PS_DCN_CROSS_FULL, PS_DCN_PARALLEL), 5, 22);
}

Test(dcn_gradcheck, whole_moe_stacked) {
    /* Not seed 23: it puts one example's input to a deep.0 ReLU within
     * h/4 of the kink, where no finite difference can check the slope. */
    gradcheck(whole(PS_DCN_CROSS_MOE, PS_DCN_STACKED), 5, 27);
}

Test(dcn_gradcheck, whole_moe_parallel) {
    gradcheck(whole(PS_DCN_CROSS_MOE, PS_DCN_PARALLEL), 5, 24);
}

Test(dcn_gradcheck, no_cross_layers_is_an_mlp) {
    ps_dcn_config cfg = whole(PS_DCN_CROSS_FULL, PS_DCN_PARALLEL);
    cfg.cross_layers = 0;
    gradcheck(cfg, 3, 25);
    cfg.structure = PS_DCN_STACKED;
    gradcheck(cfg, 3, 26);
}

/* ---- batch consistency --------------------------------------------------- */

/* A batch of B gives the same logits as B batches of one, and its
 * gradients are the sums of theirs (dx0 row by row). */
static void batch_consistency(ps_dcn_config cfg) {
    const size_t B = 6;
    size_t N = cfg.input_dim;
    cfg.max_batch = B;
    ps_dcn *m = make_model(&cfg, 31);
    ps_nn_params *ps = ps_dcn_params(m);
    size_t total = ps_nn_params_total(ps);
    ps_nn_rng rng;
    ps_nn_rng_init(&rng, 32);
    float *x = malloc(B * N * sizeof(float)), *d = malloc(B * sizeof(float));
    float *z = malloc(B * sizeof(float)), *dx = malloc(B * N * sizeof(float));
    float *gsum = calloc(total, sizeof(float));
    fill_uniform(x, B * N, 1.0, &rng);
    fill_uniform(d, B, 1.0, &rng);

    ps_dcn_zero_grad(m);
    cr_assert_eq(ps_dcn_forward(m, x, B, z), 0);
    cr_assert_eq(ps_dcn_backward(m, d, dx), 0);
    float *gbatch = malloc(total * sizeof(float));
    for (size_t i = 0, o = 0; i < ps_nn_params_count(ps); i++) {
        const ps_nn_param *p = ps_nn_params_at(ps, i);
        memcpy(gbatch + o, p->grad, p->len * sizeof(float));
        o += p->len;
    }
    for (size_t b = 0; b < B; b++) {
        float z1, dx1[64];
        cr_assert(N <= 64);
        ps_dcn_zero_grad(m);
        cr_assert_eq(ps_dcn_forward(m, x + b * N, 1, &z1), 0);
        cr_assert_eq(ps_dcn_backward(m, &d[b], dx1), 0);
        cr_expect(fabsf(z1 - z[b]) <= 1e-6f + 1e-5f * fabsf(z[b]),
                  "logit %zu: %g vs %g", b, z1, z[b]);
        for (size_t i = 0; i < N; i++)
            cr_expect(fabsf(dx1[i] - dx[b * N + i]) <=
                          1e-6f + 1e-5f * fabsf(dx1[i]),
                      "dx0[%zu][%zu]", b, i);
        for (size_t i = 0, o = 0; i < ps_nn_params_count(ps); i++) {
            const ps_nn_param *p = ps_nn_params_at(ps, i);
            for (size_t j = 0; j < p->len; j++)
                gsum[o + j] += p->grad[j];
            o += p->len;
        }
    }
    size_t bad = 0;
    for (size_t i = 0; i < total; i++)
        if (!(fabsf(gsum[i] - gbatch[i]) <= 1e-5f + 1e-4f * fabsf(gbatch[i])))
            bad++;
    cr_expect_eq(bad, 0, "%zu of %zu parameter grads differ", bad, total);
    free(x), free(d), free(z), free(dx), free(gsum), free(gbatch);
    ps_dcn_free(m);
}

Test(dcn_batch, one_by_one_equals_batch_full_stacked) {
    batch_consistency(whole(PS_DCN_CROSS_FULL, PS_DCN_STACKED));
}

Test(dcn_batch, one_by_one_equals_batch_moe_parallel) {
    batch_consistency(whole(PS_DCN_CROSS_MOE, PS_DCN_PARALLEL));
}

/* ---- blocks, init, errors ------------------------------------------------ */

Test(dcn_params, names_and_shapes) {
    ps_dcn_config cfg = {.input_dim = 10, .cross_layers = 2,
                         .cross = PS_DCN_CROSS_MOE, .experts = 4, .rank = 3,
                         .activation = PS_NN_ACT_TANH, .use_c = true,
                         .deep_layers = 2, .deep_sizes = {8, 5},
                         .structure = PS_DCN_PARALLEL, .max_batch = 4};
    ps_dcn *m = NULL;
    cr_assert_eq(ps_dcn_new(&cfg, &m), 0);
    ps_nn_params *ps = ps_dcn_params(m);
    static const struct {
        const char *name;
        size_t ndim, shape[3];
    } want[] = {
        {"cross.0.U", 3, {4, 10, 3}}, {"cross.0.V", 3, {4, 3, 10}},
        {"cross.0.C", 3, {4, 3, 3}},  {"cross.0.G", 2, {4, 10}},
        {"cross.0.b", 1, {10}},       {"cross.1.U", 3, {4, 10, 3}},
        {"cross.1.V", 3, {4, 3, 10}}, {"cross.1.C", 3, {4, 3, 3}},
        {"cross.1.G", 2, {4, 10}},    {"cross.1.b", 1, {10}},
        {"deep.0.W", 2, {8, 10}},     {"deep.0.b", 1, {8}},
        {"deep.1.W", 2, {5, 8}},      {"deep.1.b", 1, {5}},
        {"w_out", 1, {15}},           {"b_out", 1, {1}},
    };
    size_t n = sizeof(want) / sizeof(want[0]);
    cr_assert_eq(ps_nn_params_count(ps), n);
    for (size_t i = 0; i < n; i++) {
        const ps_nn_param *p = ps_nn_params_at(ps, i);
        cr_expect_str_eq(p->name, want[i].name);
        cr_expect_eq(p->ndim, want[i].ndim, "%s", p->name);
        for (size_t d = 0; d < want[i].ndim; d++)
            cr_expect_eq(p->shape[d], want[i].shape[d], "%s dim %zu", p->name,
                         d);
        cr_expect_eq(ps_nn_params_find(ps, want[i].name), p);
    }
    ps_dcn_free(m);

    /* Low-rank K = 1 without C: no gate, no C. */
    cfg.experts = 1;
    cfg.use_c = false;
    cr_assert_eq(ps_dcn_new(&cfg, &m), 0);
    ps = ps_dcn_params(m);
    cr_expect_null(ps_nn_params_find(ps, "cross.0.G"));
    cr_expect_null(ps_nn_params_find(ps, "cross.0.C"));
    cr_expect_not_null(ps_nn_params_find(ps, "cross.1.U"));
    ps_dcn_free(m);
}

static double sample_std(const float *x, size_t n) {
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i], s2 += (double)x[i] * x[i];
    double mean = s / n;
    return sqrt(s2 / n - mean * mean);
}

Test(dcn_params, init_rules_and_determinism) {
    ps_dcn_config cfg = {.input_dim = 64, .cross_layers = 1,
                         .cross = PS_DCN_CROSS_MOE, .experts = 4, .rank = 16,
                         .activation = PS_NN_ACT_TANH, .use_c = true,
                         .deep_layers = 1, .deep_sizes = {32},
                         .structure = PS_DCN_STACKED, .max_batch = 2};
    ps_dcn *a = NULL, *b = NULL, *c = NULL;
    cr_assert_eq(ps_dcn_new(&cfg, &a), 0);
    cr_assert_eq(ps_dcn_new(&cfg, &b), 0);
    cr_assert_eq(ps_dcn_new(&cfg, &c), 0);
    ps_dcn_init_params(a, 7);
    ps_dcn_init_params(b, 7);
    ps_dcn_init_params(c, 8);
    ps_nn_params *pa = ps_dcn_params(a), *pb = ps_dcn_params(b),
                 *pc = ps_dcn_params(c);
    for (size_t i = 0; i < ps_nn_params_count(pa); i++) {
        const ps_nn_param *x = ps_nn_params_at(pa, i),
                          *y = ps_nn_params_at(pb, i),
                          *z = ps_nn_params_at(pc, i);
        cr_expect(memcmp(x->value, y->value, x->len * sizeof(float)) == 0,
                  "%s: same seed, different values", x->name);
        if (x->init.kind != PS_NN_INIT_ZERO)
            cr_expect(memcmp(x->value, z->value, x->len * sizeof(float)) != 0,
                      "%s: other seed, same values", x->name);
    }
    const double N = 64, r = 16;
    /* biases exactly zero */
    const char *zero[] = {"cross.0.b", "deep.0.b", "b_out"};
    for (size_t i = 0; i < 3; i++) {
        const ps_nn_param *p = ps_nn_params_find(pa, zero[i]);
        for (size_t j = 0; j < p->len; j++)
            cr_expect_eq(p->value[j], 0.0f, "%s", zero[i]);
    }
    /* gates within ±1/sqrt(N) and spread over it */
    const ps_nn_param *G = ps_nn_params_find(pa, "cross.0.G");
    float gmax = 0;
    for (size_t j = 0; j < G->len; j++)
        gmax = fmaxf(gmax, fabsf(G->value[j]));
    cr_expect(gmax <= 1 / sqrt(N) && gmax > 0.9 / sqrt(N), "gate max %g", gmax);
    /* Glorot-uniform: within the limit, std limit/sqrt(3) */
    const ps_nn_param *W = ps_nn_params_find(pa, "deep.0.W");
    double lim = sqrt(6.0 / (64 + 32));
    for (size_t j = 0; j < W->len; j++)
        cr_expect(fabsf(W->value[j]) <= lim);
    cr_expect(fabs(sample_std(W->value, W->len) / (lim / sqrt(3)) - 1) < 0.1);
    /* Glorot-normal per expert matrix: std sqrt(2/(N + r)) for U and V */
    double sd = sqrt(2.0 / (N + r));
    const ps_nn_param *U = ps_nn_params_find(pa, "cross.0.U");
    const ps_nn_param *V = ps_nn_params_find(pa, "cross.0.V");
    const ps_nn_param *C = ps_nn_params_find(pa, "cross.0.C");
    cr_expect(fabs(sample_std(U->value, U->len) / sd - 1) < 0.1);
    cr_expect(fabs(sample_std(V->value, V->len) / sd - 1) < 0.1);
    cr_expect(fabs(sample_std(C->value, C->len) / sqrt(2.0 / (r + r)) - 1) <
              0.15);
    ps_dcn_free(a);
    ps_dcn_free(b);
    ps_dcn_free(c);
}

Test(dcn_params, grads_accumulate_until_zeroed) {
    ps_dcn_config cfg = whole(PS_DCN_CROSS_MOE, PS_DCN_STACKED);
    cfg.max_batch = 3;
    ps_dcn *m = make_model(&cfg, 41);
    float x[21], d[3] = {0.3f, -0.2f, 0.5f}, z[3];
    ps_nn_rng rng;
    ps_nn_rng_init(&rng, 42);
    fill_uniform(x, 21, 1.0, &rng);
    ps_dcn_zero_grad(m);
    cr_assert_eq(ps_dcn_forward(m, x, 3, z), 0);
    cr_assert_eq(ps_dcn_backward(m, d, NULL), 0);
    const ps_nn_param *U = ps_nn_params_find(ps_dcn_params(m), "cross.0.U");
    float once = U->grad[5];
    cr_assert_neq(once, 0.0f);
    cr_assert_eq(ps_dcn_backward(m, d, NULL), 0);
    cr_expect_float_eq(U->grad[5], 2 * once, 1e-6f * fabsf(once));
    ps_dcn_zero_grad(m);
    cr_expect_eq(U->grad[5], 0.0f);
    ps_dcn_free(m);
}

Test(dcn_errors, bad_config_and_misuse) {
    ps_dcn *m = NULL;
    ps_dcn_config cfg = whole(PS_DCN_CROSS_MOE, PS_DCN_STACKED);
    cfg.max_batch = 2;
    ps_dcn_config bad = cfg;
    bad.input_dim = 0;
    cr_expect_eq(ps_dcn_new(&bad, &m), PS_ECONFIG);
    bad = cfg;
    bad.experts = 0;
    cr_expect_eq(ps_dcn_new(&bad, &m), PS_ECONFIG);
    bad = cfg;
    bad.deep_sizes[1] = 0;
    cr_expect_eq(ps_dcn_new(&bad, &m), PS_ECONFIG);
    bad = cfg;
    bad.max_batch = 0;
    cr_expect_eq(ps_dcn_new(&bad, &m), PS_ECONFIG);
    bad = cfg;
    bad.structure = (ps_dcn_structure)7;
    cr_expect_eq(ps_dcn_new(&bad, &m), PS_ECONFIG);
    cr_expect_null(m);
    ps_dcn_cross cr;
    cr_expect_eq(ps_dcn_cross_parse("lowrank", &cr), PS_ECONFIG);

    cr_assert_eq(ps_dcn_new(&cfg, &m), 0);
    float x[3 * 7] = {0}, z[3] = {0}, d[3] = {0};
    cr_expect_eq(ps_dcn_backward(m, d, NULL), -EINVAL);
    cr_expect_eq(ps_dcn_forward(m, x, 3, z), PS_ELIMIT);
    cr_expect_eq(ps_dcn_forward(m, x, 0, z), -EINVAL);
    cr_expect_eq(ps_dcn_forward(m, x, 2, z), 0);
    ps_dcn_free(m);
    ps_dcn_free(NULL);
}
