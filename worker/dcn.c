/* DCN-V2; the math is ALGORITHMS.md §4, the block layout is in dcn.h.
 *
 * Design note.
 * - States: new() registers the blocks and allocates, for max_batch rows,
 *   every activation and scratch buffer, so forward/backward never allocate.
 *   forward(B) copies x0 into xs[0], fills the caches and sets batch = B;
 *   backward() needs batch > 0 and leaves the caches alone (calling it twice
 *   adds the gradients twice). The next forward overwrites the caches.
 * - Everything runs over the whole batch at once: each product is one sgemm
 *   per layer (MoE: one per expert for U and C, whose storage, expert-major
 *   K x N x r, does not make the K experts one matrix; V, K x r x N, is one
 *   (K r) x N matrix and the gates one K x N matrix). The loops that remain
 *   are element-wise passes over B x N.
 * - MoE caches per layer: p = V x, q = g(p) (with C), h, hs = pi_k h_k, pi,
 *   and u = sum_k pi_k e_k (e_k includes b). The experts' outputs e_k are not
 *   kept: the gate gradient needs t_k = (δ⊙x0).e_k, and
 *   (δ⊙x0).e_k = ((δ⊙x0) U_k).h_k + (δ⊙x0).b, where (δ⊙x0) U_k is needed
 *   for dh anyway and the (δ⊙x0).b term is the same for every k, so it
 *   cancels in da_k = pi_k (t_k - sum_j pi_j t_j). That saves K B N floats
 *   per layer and K passes over them in backward.
 * - dx0 gathers the x0 term of every layer (δ⊙u), the deep tower's input
 *   gradient (parallel) and finally the path through x_0 = x0.
 */
#include "dcn.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "error.h"
#include "text.h"

/* CBLAS takes int dimensions; check_config() keeps every one below INT_MAX. */
#define IX(x) ((int)(x))

static const char *const ps_dcn_cross_names[PS_DCN_CROSS_COUNT] = {PS_DCN_CROSS_MAP(PS_ENUM_STR)};
PS_ENUM_FUNCTIONS(ps_dcn_cross, ps_dcn_cross, PS_DCN_CROSS_COUNT)

const char *const ps_dcn_structure_names[PS_DCN_STRUCTURE_COUNT] = {
    PS_DCN_STRUCTURE_MAP(PS_ENUM_STR)};
PS_ENUM_FUNCTIONS(ps_dcn_structure, ps_dcn_structure, PS_DCN_STRUCTURE_COUNT)

typedef struct cross_layer {
    const ps_nn_param *W, *b;               /* full */
    const ps_nn_param *U, *V, *C, *G;       /* MoE; C, G may be NULL */
    float *u;   /* B x N: W x + b (full) or sum_k pi_k e_k (MoE) */
    float *p;   /* B x Kr: V x */
    float *q;   /* B x Kr: g(p), with C only */
    float *h;   /* B x Kr: g(C q) or g(p) */
    float *hs;  /* B x Kr: pi_k h_k (K > 1; == h otherwise) */
    float *pi;  /* B x K gate weights (K > 1) */
} cross_layer;

struct ps_dcn {
    ps_dcn_config cfg;
    ps_nn_params *params;       /* owned */
    cross_layer *cross;         /* cfg.cross_layers */
    ps_nn_mlp *deep;            /* owned */
    const ps_nn_param *w_out, *b_out;
    size_t kr, deep_dim;
    float **xs;                 /* L + 1 buffers B x N; xs[0] is x0 */
    const float *deep_out;      /* owned by deep (or xs[*]) */
    /* backward scratch */
    float *delta, *dnext, *D, *dx0; /* B x N */
    float *dh, *dq;             /* B x Kr */
    float *da;                  /* B x K */
    float *ddeep;               /* B x deep_dim */
    size_t batch;
};

static float *alloc_floats(size_t n) {
    size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
    return aligned_alloc(64, bytes ? bytes : 64);
}

void ps_dcn_free(ps_dcn *m) {
    if (!m)
        return;
    if (m->cross)
        for (size_t l = 0; l < m->cfg.cross_layers; l++) {
            cross_layer *c = &m->cross[l];
            free(c->u);
            free(c->p);
            free(c->q);
            free(c->h);
            if (c->hs != c->h)
                free(c->hs);
            free(c->pi);
        }
    free(m->cross);
    if (m->xs)
        for (size_t l = 0; l <= m->cfg.cross_layers; l++)
            free(m->xs[l]);
    free(m->xs);
    free(m->delta);
    free(m->dnext);
    free(m->D);
    free(m->dx0);
    free(m->dh);
    free(m->dq);
    free(m->da);
    free(m->ddeep);
    ps_nn_mlp_free(m->deep);
    ps_nn_params_free(m->params);
    free(m);
}

static int check_config(const ps_dcn_config *c) {
    if (c->input_dim == 0 || c->input_dim > INT_MAX || c->max_batch == 0 ||
        c->max_batch > INT_MAX || (unsigned)c->cross >= PS_DCN_CROSS_COUNT ||
        (unsigned)c->structure >= PS_DCN_STRUCTURE_COUNT ||
        c->deep_layers > PS_DCN_MAX_DEEP)
        return PS_ECONFIG;
    for (size_t j = 0; j < c->deep_layers; j++)
        if (c->deep_sizes[j] == 0 || c->deep_sizes[j] > INT_MAX)
            return PS_ECONFIG;
    if (c->cross == PS_DCN_CROSS_MOE && c->cross_layers > 0 &&
        (c->experts == 0 || c->rank == 0 || c->experts > INT_MAX / c->rank ||
         (unsigned)c->activation >= PS_NN_ACT_COUNT))
        return PS_ECONFIG;
    return 0;
}

static int add_block(ps_dcn *m, size_t l, const char *what, size_t ndim,
                     const size_t *shape, ps_nn_init_kind kind, size_t fan_in,
                     size_t fan_out, double limit, const ps_nn_param **ret) {
    char name[PS_NN_MAX_NAME];
    snprintf(name, sizeof(name), "cross.%zu.%s", l, what);
    ps_nn_init init = {.kind = kind, .fan_in = fan_in, .fan_out = fan_out,
                       .limit = limit};
    return ps_nn_params_add(m->params, name, ndim, shape, &init, ret);
}

static int cross_new(ps_dcn *m, size_t l) {
    const ps_dcn_config *cfg = &m->cfg;
    cross_layer *c = &m->cross[l];
    size_t N = cfg->input_dim, B = cfg->max_batch;
    int r;
    if (cfg->cross == PS_DCN_CROSS_FULL) {
        size_t ws[2] = {N, N};
        r = add_block(m, l, "W", 2, ws, PS_NN_INIT_GLOROT_UNIFORM, N, N, 0,
                      &c->W);
        if (r < 0)
            return r;
    } else {
        size_t K = cfg->experts, R = cfg->rank;
        size_t us[3] = {K, N, R}, vs[3] = {K, R, N}, cs[3] = {K, R, R};
        size_t gs[2] = {K, N};
        r = add_block(m, l, "U", 3, us, PS_NN_INIT_GLOROT_NORMAL, R, N, 0,
                      &c->U);
        if (r < 0)
            return r;
        r = add_block(m, l, "V", 3, vs, PS_NN_INIT_GLOROT_NORMAL, N, R, 0,
                      &c->V);
        if (r < 0)
            return r;
        if (cfg->use_c) {
            r = add_block(m, l, "C", 3, cs, PS_NN_INIT_GLOROT_NORMAL, R, R, 0,
                          &c->C);
            if (r < 0)
                return r;
        }
        if (K > 1) {
            r = add_block(m, l, "G", 2, gs, PS_NN_INIT_UNIFORM, 0, 0,
                          1.0 / sqrt((double)N), &c->G);
            if (r < 0)
                return r;
        }
    }
    r = add_block(m, l, "b", 1, &N, PS_NN_INIT_ZERO, 0, 0, 0, &c->b);
    if (r < 0)
        return r;
    if (!(c->u = alloc_floats(B * N)))
        return -ENOMEM;
    if (cfg->cross == PS_DCN_CROSS_MOE) {
        size_t kr = m->kr;
        if (!(c->p = alloc_floats(B * kr)) || !(c->h = alloc_floats(B * kr)))
            return -ENOMEM;
        if (cfg->use_c && !(c->q = alloc_floats(B * kr)))
            return -ENOMEM;
        if (cfg->experts > 1) {
            if (!(c->hs = alloc_floats(B * kr)) ||
                !(c->pi = alloc_floats(B * cfg->experts)))
                return -ENOMEM;
        } else {
            c->hs = c->h;
        }
    }
    return 0;
}

int ps_dcn_new(const ps_dcn_config *cfg, ps_dcn **ret_model) {
    int r = check_config(cfg);
    if (r < 0)
        return r;
    ps_dcn *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->cfg = *cfg;
    size_t N = cfg->input_dim, B = cfg->max_batch, L = cfg->cross_layers;
    bool moe = cfg->cross == PS_DCN_CROSS_MOE;
    m->kr = moe ? cfg->experts * cfg->rank : 0;
    r = ps_nn_params_new(&m->params);
    if (r < 0)
        goto fail;
    r = -ENOMEM;
    m->cross = calloc(L ? L : 1, sizeof(*m->cross));
    m->xs = calloc(L + 1, sizeof(*m->xs));
    if (!m->cross || !m->xs)
        goto fail;
    for (size_t l = 0; l <= L; l++)
        if (!(m->xs[l] = alloc_floats(B * N)))
            goto fail;
    for (size_t l = 0; l < L; l++) {
        r = cross_new(m, l);
        if (r < 0)
            goto fail;
    }
    ps_nn_mlp_config mc = {
        .prefix = "deep", .in_dim = N, .n_layers = cfg->deep_layers,
        .sizes = cfg->deep_sizes, .act = PS_NN_ACT_RELU, .act_last = true,
        .max_batch = B};
    r = ps_nn_mlp_new(m->params, &mc, &m->deep);
    if (r < 0)
        goto fail;
    m->deep_dim = ps_nn_mlp_out_dim(m->deep);
    size_t F = m->deep_dim + (cfg->structure == PS_DCN_PARALLEL ? N : 0);
    ps_nn_init wo = {.kind = PS_NN_INIT_GLOROT_UNIFORM, .fan_in = F,
                     .fan_out = 1};
    size_t one = 1;
    r = ps_nn_params_add(m->params, "w_out", 1, &F, &wo, &m->w_out);
    if (r < 0)
        goto fail;
    r = ps_nn_params_add(m->params, "b_out", 1, &one, NULL, &m->b_out);
    if (r < 0)
        goto fail;
    r = -ENOMEM;
    if (!(m->delta = alloc_floats(B * N)) || !(m->dnext = alloc_floats(B * N)) ||
        !(m->D = alloc_floats(B * N)) || !(m->dx0 = alloc_floats(B * N)) ||
        !(m->ddeep = alloc_floats(B * m->deep_dim)))
        goto fail;
    if (moe && L > 0) {
        if (!(m->dh = alloc_floats(B * m->kr)) ||
            !(m->dq = alloc_floats(B * m->kr)) ||
            !(m->da = alloc_floats(B * cfg->experts)))
            goto fail;
    }
    *ret_model = m;
    return 0;
fail:
    ps_dcn_free(m);
    return r;
}

ps_nn_params *ps_dcn_params(ps_dcn *m) { return m->params; }

void ps_dcn_init_params(ps_dcn *m, uint64_t seed) {
    ps_nn_params_init_values(m->params, seed);
}

void ps_dcn_zero_grad(ps_dcn *m) { ps_nn_params_zero_grad(m->params); }

/* ---- forward ------------------------------------------------------------ */

/* Adds the bias to u (so u caches W x + b for backward) and writes
 * out = x0 ⊙ u + x, in one pass over the batch. */
static void cross_combine(const float *x0, float *u, const float *b,
                          const float *x, float *out, size_t B, size_t N) {
    for (size_t r = 0; r < B; r++) {
        size_t o = r * N;
        for (size_t j = 0; j < N; j++) {
            float v = u[o + j] + b[j];
            u[o + j] = v;
            out[o + j] = x0[o + j] * v + x[o + j];
        }
    }
}

static void softmax_rows(float *a, size_t B, size_t K) {
    for (size_t r = 0; r < B; r++) {
        float *row = a + r * K, mx = row[0], s = 0.0f;
        for (size_t k = 1; k < K; k++)
            mx = row[k] > mx ? row[k] : mx;
        for (size_t k = 0; k < K; k++) {
            row[k] = expf(row[k] - mx);
            s += row[k];
        }
        float inv = 1.0f / s;
        for (size_t k = 0; k < K; k++)
            row[k] *= inv;
    }
}

static void moe_forward(ps_dcn *m, cross_layer *c, const float *x, size_t B) {
    size_t N = m->cfg.input_dim, K = m->cfg.experts, R = m->cfg.rank;
    size_t kr = m->kr;
    ps_nn_act g = m->cfg.activation;
    /* p = x V^T for all experts at once: V is (K r) x N. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, IX(B), IX(kr), IX(N),
                1.0f, x, IX(N), c->V->value, IX(N), 0.0f, c->p, IX(kr));
    if (c->C) {
        memcpy(c->q, c->p, B * kr * sizeof(float));
        ps_nn_act_forward(g, c->q, B * kr);
        for (size_t k = 0; k < K; k++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, IX(B), IX(R),
                        IX(R), 1.0f, c->q + k * R, IX(kr),
                        c->C->value + k * R * R, IX(R), 0.0f, c->h + k * R,
                        IX(kr));
    } else {
        memcpy(c->h, c->p, B * kr * sizeof(float));
    }
    ps_nn_act_forward(g, c->h, B * kr);
    if (K > 1) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, IX(B), IX(K), IX(N),
                    1.0f, x, IX(N), c->G->value, IX(N), 0.0f, c->pi, IX(K));
        softmax_rows(c->pi, B, K);
        for (size_t r = 0; r < B; r++)
            for (size_t k = 0; k < K; k++) {
                float w = c->pi[r * K + k];
                const float *hr = c->h + r * kr + k * R;
                float *sr = c->hs + r * kr + k * R;
                for (size_t j = 0; j < R; j++)
                    sr[j] = w * hr[j];
            }
    }
    /* u = sum_k (pi_k h_k) U_k^T; cross_combine() adds b */
    for (size_t k = 0; k < K; k++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, IX(B), IX(N), IX(R),
                    1.0f, c->hs + k * R, IX(kr), c->U->value + k * N * R, IX(R),
                    k ? 1.0f : 0.0f, c->u, IX(N));
}

int ps_dcn_forward(ps_dcn *m, const float *x0, size_t batch,
                   float *ret_logits) {
    if (batch == 0)
        return -EINVAL;
    if (batch > m->cfg.max_batch)
        return PS_ELIMIT;
    size_t N = m->cfg.input_dim, L = m->cfg.cross_layers, B = batch;
    m->batch = 0;
    memcpy(m->xs[0], x0, B * N * sizeof(float));
    for (size_t l = 0; l < L; l++) {
        cross_layer *c = &m->cross[l];
        if (m->cfg.cross == PS_DCN_CROSS_FULL)
            ps_nn_linear_forward(c->W->value, NULL, N, N, m->xs[l], B, c->u);
        else
            moe_forward(m, c, m->xs[l], B);
        cross_combine(m->xs[0], c->u, c->b->value, m->xs[l], m->xs[l + 1], B,
                      N);
    }
    bool parallel = m->cfg.structure == PS_DCN_PARALLEL;
    int r = ps_nn_mlp_forward(m->deep, parallel ? m->xs[0] : m->xs[L], B,
                              &m->deep_out);
    if (r < 0)
        return r;
    const float *w = m->w_out->value;
    float bias = m->b_out->value[0];
    for (size_t i = 0; i < B; i++)
        ret_logits[i] = bias;
    if (parallel) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, IX(B), IX(N), 1.0f, m->xs[L],
                    IX(N), w, 1, 1.0f, ret_logits, 1);
        w += N;
    }
    cblas_sgemv(CblasRowMajor, CblasNoTrans, IX(B), IX(m->deep_dim), 1.0f,
                m->deep_out, IX(m->deep_dim), w, 1, 1.0f, ret_logits, 1);
    m->batch = B;
    return 0;
}

/* ---- backward ----------------------------------------------------------- */

/* Shared start of both layer types, one pass over the batch: D = δ⊙x0,
 * db += sum D, dx0 += δ⊙u (want_dx0), and dx = δ (the skip connection;
 * dx may be NULL). */
static void cross_backward_common(ps_dcn *m, cross_layer *c,
                                  const float *delta, size_t B, bool want_dx0,
                                  float *dx) {
    size_t N = m->cfg.input_dim;
    const float *x0 = m->xs[0], *u = c->u;
    float *D = m->D, *db = c->b->grad, *dx0 = m->dx0;
    for (size_t r = 0; r < B; r++) {
        size_t o = r * N;
        for (size_t j = 0; j < N; j++) {
            float v = delta[o + j] * x0[o + j];
            D[o + j] = v;
            db[j] += v;
        }
        if (want_dx0)
            for (size_t j = 0; j < N; j++)
                dx0[o + j] += delta[o + j] * u[o + j];
    }
    if (dx)
        memcpy(dx, delta, B * N * sizeof(float));
}

/* δ = dL/dx_{l+1}; writes dL/dx_l (cross path only) to dx when not NULL. */
static void full_backward(ps_dcn *m, cross_layer *c, const float *x,
                          const float *delta, size_t B, bool want_dx0,
                          float *dx) {
    size_t N = m->cfg.input_dim;
    cross_backward_common(m, c, delta, B, want_dx0, dx);
    /* dW += D^T x; dx += D W */
    ps_nn_linear_backward(c->W->value, N, N, x, m->D, B, c->W->grad, NULL, dx,
                          true);
}

static void moe_backward(ps_dcn *m, cross_layer *c, const float *x,
                         const float *delta, size_t B, bool want_dx0,
                         float *dx) {
    size_t N = m->cfg.input_dim, K = m->cfg.experts, R = m->cfg.rank;
    size_t kr = m->kr;
    ps_nn_act g = m->cfg.activation;
    float *D = m->D, *dh = m->dh;
    cross_backward_common(m, c, delta, B, want_dx0, dx);
    for (size_t k = 0; k < K; k++) {
        const float *Uk = c->U->value + k * N * R;
        /* (D U_k): B x r, pi_k times this is dL/dh_k */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, IX(B), IX(R),
                    IX(N), 1.0f, D, IX(N), Uk, IX(R), 0.0f, dh + k * R, IX(kr));
        /* dU_k += (pi_k D)^T h_k = D^T (pi_k h_k) */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, IX(N), IX(R), IX(B),
                    1.0f, D, IX(N), c->hs + k * R, IX(kr), 1.0f,
                    c->U->grad + k * N * R, IX(R));
    }
    if (K > 1) {
        float *da = m->da;
        for (size_t r = 0; r < B; r++) {
            const float *pi = c->pi + r * K;
            float *dar = da + r * K, s = 0.0f;
            for (size_t k = 0; k < K; k++) {
                const float *hk = c->h + r * kr + k * R;
                float *dk = dh + r * kr + k * R, t = 0.0f;
                for (size_t j = 0; j < R; j++)
                    t += dk[j] * hk[j];
                dar[k] = t;
                s += pi[k] * t;
                for (size_t j = 0; j < R; j++)
                    dk[j] *= pi[k];
            }
            for (size_t k = 0; k < K; k++)
                dar[k] = pi[k] * (dar[k] - s);
        }
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, IX(K), IX(N), IX(B),
                    1.0f, da, IX(K), x, IX(N), 1.0f, c->G->grad, IX(N));
    }
    ps_nn_act_backward(g, c->h, dh, B * kr);       /* dh is now dL/dc */
    float *dp = dh;
    if (c->C) {
        for (size_t k = 0; k < K; k++) {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, IX(R), IX(R),
                        IX(B), 1.0f, dh + k * R, IX(kr), c->q + k * R, IX(kr),
                        1.0f, c->C->grad + k * R * R, IX(R));
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, IX(B), IX(R),
                        IX(R), 1.0f, dh + k * R, IX(kr),
                        c->C->value + k * R * R, IX(R), 0.0f, m->dq + k * R,
                        IX(kr));
        }
        ps_nn_act_backward(g, c->q, m->dq, B * kr);
        dp = m->dq;
    }
    /* dV += dp^T x; dx (= δ already) += da G + dp V */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, IX(kr), IX(N), IX(B),
                1.0f, dp, IX(kr), x, IX(N), 1.0f, c->V->grad, IX(N));
    if (!dx)
        return;
    if (K > 1)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, IX(B), IX(N),
                    IX(K), 1.0f, m->da, IX(K), c->G->value, IX(N), 1.0f, dx,
                    IX(N));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, IX(B), IX(N), IX(kr),
                1.0f, dp, IX(kr), c->V->value, IX(N), 1.0f, dx, IX(N));
}

/* out[b][j] = d[b] * w[j] */
static void outer(const float *d, const float *w, size_t B, size_t n,
                  float *out) {
    for (size_t r = 0; r < B; r++)
        for (size_t j = 0; j < n; j++)
            out[r * n + j] = d[r] * w[j];
}

int ps_dcn_backward(ps_dcn *m, const float *dlogits, float *ret_dx0) {
    size_t B = m->batch;
    if (B == 0)
        return -EINVAL;
    size_t N = m->cfg.input_dim, L = m->cfg.cross_layers, Dd = m->deep_dim;
    bool parallel = m->cfg.structure == PS_DCN_PARALLEL;
    bool want_dx0 = ret_dx0 != NULL;
    const float *w = m->w_out->value;
    float *dw = m->w_out->grad;
    int r;

    for (size_t i = 0; i < B; i++)
        m->b_out->grad[0] += dlogits[i];
    if (parallel) {
        cblas_sgemv(CblasRowMajor, CblasTrans, IX(B), IX(N), 1.0f, m->xs[L],
                    IX(N), dlogits, 1, 1.0f, dw, 1);
        outer(dlogits, w, B, N, m->delta);
        w += N;
        dw += N;
    }
    cblas_sgemv(CblasRowMajor, CblasTrans, IX(B), IX(Dd), 1.0f, m->deep_out,
                IX(Dd), dlogits, 1, 1.0f, dw, 1);
    outer(dlogits, w, B, Dd, m->ddeep);
    if (parallel) {
        /* The deep tower's input is x0: its input gradient starts dx0. */
        r = ps_nn_mlp_backward(m->deep, m->ddeep, want_dx0 ? m->dx0 : NULL,
                               false);
    } else {
        if (want_dx0)
            memset(m->dx0, 0, B * N * sizeof(float));
        bool need = L > 0 || want_dx0;
        r = ps_nn_mlp_backward(m->deep, m->ddeep, need ? m->delta : NULL,
                               false);
    }
    if (r < 0)
        return r;

    /* delta = dL/dx_{l+1}; each layer writes dL/dx_l into dnext. */
    for (size_t l = L; l-- > 0;) {
        cross_layer *c = &m->cross[l];
        float *dx = l > 0 || want_dx0 ? m->dnext : NULL;
        if (m->cfg.cross == PS_DCN_CROSS_FULL)
            full_backward(m, c, m->xs[l], m->delta, B, want_dx0, dx);
        else
            moe_backward(m, c, m->xs[l], m->delta, B, want_dx0, dx);
        float *t = m->delta;
        m->delta = m->dnext;
        m->dnext = t;
    }
    if (want_dx0) {
        size_t n = B * N;
        for (size_t i = 0; i < n; i++)
            ret_dx0[i] = m->dx0[i] + m->delta[i];
    }
    return 0;
}
