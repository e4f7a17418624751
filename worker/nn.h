#pragma once
/* Dense primitives shared by the worker's models (dcn.c, can.c and the
 * worker's own glue): activations, a deterministic RNG and Glorot init, a
 * registry of named parameter blocks, a CBLAS-backed linear layer, an MLP
 * tower, and the batch logloss with its logit gradient.
 *
 * Conventions: batch-major, row-major float32. A weight matrix of a linear
 * layer is out x in (row o holds the weights of output o), so a batch
 * X [B x in] maps to Y = X W^T + b [B x out]. Gradients are accumulated
 * (+=) as batch sums of dL/dparam, where L is whatever scalar the caller
 * differentiates (the worker: the MEAN logloss over the batch, so the 1/B
 * sits in dL/dlogit); ps_nn_params_zero_grad() resets them. Input gradients
 * (ret_dX and friends) are overwritten unless a function says otherwise.
 *
 * Nothing here allocates after construction: forward and backward work in
 * buffers sized for the max batch given to *_new(). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Activations ------------------------------------------------------ */

#define PS_NN_ACT_MAP(XX)                                                      \
    XX(IDENTITY, "identity")                                                   \
    XX(RELU, "relu")                                                           \
    XX(TANH, "tanh")

typedef enum ps_nn_act {
#define PS_NN_ACT_ENUM(name, str) PS_NN_ACT_##name,
    PS_NN_ACT_MAP(PS_NN_ACT_ENUM)
#undef PS_NN_ACT_ENUM
    PS_NN_ACT_COUNT
} ps_nn_act;

extern const char *const ps_nn_act_names[PS_NN_ACT_COUNT];
/* Static name ("relu"), or "?" for a value outside the enum. */
const char *ps_nn_act_name(ps_nn_act a);
/* Name to enum; PS_ECONFIG for an unknown name, *ret_act untouched. */
int ps_nn_act_parse(const char *name, ps_nn_act *ret_act);
/* x[i] = g(x[i]) in place. */
void ps_nn_act_forward(ps_nn_act a, float *x, size_t n);
/* dy[i] *= g'(pre_i), with g' computed from the OUTPUT y = g(pre): tanh
 * 1 - y^2, relu [y > 0] (so relu'(0) = 0), identity 1. */
void ps_nn_act_backward(ps_nn_act a, const float *y, float *dy, size_t n);

/* ---- RNG and initialisation ------------------------------------------ */

/* xoshiro256** seeded through splitmix64: fast, reproducible across
 * platforms, caller's storage. */
typedef struct ps_nn_rng {
    uint64_t s[4];
} ps_nn_rng;

void ps_nn_rng_init(ps_nn_rng *r, uint64_t seed);
uint64_t ps_nn_rng_next(ps_nn_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double ps_nn_rng_uniform(ps_nn_rng *r);
/* Standard normal (Box-Muller, one value per call). */
double ps_nn_rng_normal(ps_nn_rng *r);

#define PS_NN_INIT_MAP(XX)                                                     \
    XX(ZERO, "zero")                                                           \
    XX(GLOROT_UNIFORM, "glorot_uniform")                                       \
    XX(GLOROT_NORMAL, "glorot_normal")                                         \
    XX(UNIFORM, "uniform")

typedef enum ps_nn_init_kind {
#define PS_NN_INIT_ENUM(name, str) PS_NN_INIT_##name,
    PS_NN_INIT_MAP(PS_NN_INIT_ENUM)
#undef PS_NN_INIT_ENUM
    PS_NN_INIT_COUNT
} ps_nn_init_kind;

/* How a block is initialised. Glorot-uniform draws U(±sqrt(6/(fan_in +
 * fan_out))), Glorot-normal N(0, 2/(fan_in + fan_out)) (untruncated, as
 * torch.nn.init.xavier_normal_), UNIFORM draws U(±limit). */
typedef struct ps_nn_init {
    ps_nn_init_kind kind;
    size_t fan_in, fan_out;     /* GLOROT_* */
    double limit;               /* UNIFORM */
} ps_nn_init;

/* Fill x[0..n) per init, drawing from rng. */
void ps_nn_init_fill(const ps_nn_init *init, float *x, size_t n, ps_nn_rng *rng);

/* ---- Parameter blocks ------------------------------------------------- */

#define PS_NN_MAX_NDIM 4
#define PS_NN_MAX_NAME 64

/* One named block of floats. The descriptor, name, value and grad arrays are
 * owned by the registry and stay at the same address until
 * ps_nn_params_free(). The descriptor is read-only; callers may write
 * value[] (load, DensePull) and read grad[] (DensePush). Both arrays are
 * 64-byte aligned. */
typedef struct ps_nn_param {
    const char *name;
    float *value;
    float *grad;                /* batch sums of dL/dvalue, accumulated */
    size_t len;                 /* product of shape */
    size_t ndim;
    size_t shape[PS_NN_MAX_NDIM];
    ps_nn_init init;
} ps_nn_param;

typedef struct ps_nn_params ps_nn_params;

/* Caller frees with ps_nn_params_free(). */
int ps_nn_params_new(ps_nn_params **ret_params);
/* Accepts NULL. Invalidates every ps_nn_param pointer it handed out. */
void ps_nn_params_free(ps_nn_params *p);
/* Register a block of ndim (1..PS_NN_MAX_NDIM) non-zero dims with value
 * and grad zeroed and init (NULL: zero) as its init rule. name is copied;
 * PS_ECONFIG for a duplicate name, one of PS_NN_MAX_NAME bytes or more, or
 * a bad shape; -ENOMEM. *ret_param (optional) is borrowed from the
 * registry. */
int ps_nn_params_add(ps_nn_params *p, const char *name, size_t ndim,
                     const size_t *shape, const ps_nn_init *init,
                     const ps_nn_param **ret_param);
/* Iteration in registration order: for (i = 0; i < count; i++) at(p, i);
 * at() is NULL past the end. */
size_t ps_nn_params_count(const ps_nn_params *p);
const ps_nn_param *ps_nn_params_at(const ps_nn_params *p, size_t i);
/* The block with that name, or NULL. Linear scan: models have tens of
 * blocks, and callers look names up once, not per batch. */
const ps_nn_param *ps_nn_params_find(const ps_nn_params *p, const char *name);
/* Sum of len over all blocks. */
size_t ps_nn_params_total(const ps_nn_params *p);
void ps_nn_params_zero_grad(ps_nn_params *p);
/* Initialise every block from seed. Each block draws from its own stream,
 * seeded by (seed, name), so a block's initial value does not depend on
 * which other blocks exist or their order. */
void ps_nn_params_init_values(ps_nn_params *p, uint64_t seed);

/* ---- Linear layer ------------------------------------------------------ */

/* Y [B x out] = X [B x in] W^T + b, W out x in; b may be NULL. */
void ps_nn_linear_forward(const float *W, const float *b, size_t in,
                          size_t out, const float *X, size_t B, float *Y);
/* Given dY [B x out]: dW += dY^T X, db += column sums of dY (skipped when db
 * is NULL), and, when dX is not NULL, dX = dY W (dX += dY W with
 * accumulate_dx). */
void ps_nn_linear_backward(const float *W, size_t in, size_t out,
                           const float *X, const float *dY, size_t B,
                           float *dW, float *db, float *dX,
                           bool accumulate_dx);
/* db[j] += sum_b dY[b*n + j]. */
void ps_nn_colsum_add(const float *dY, size_t B, size_t n, float *db);

/* ---- MLP tower ---------------------------------------------------------- */

/* h_0 = X; h_{j+1} = act(W_j h_j + b_j), blocks "<prefix>.j.W" (out x in)
 * and "<prefix>.j.b". With act_last false the last layer is linear. With no
 * layers the tower is the identity. Design: the tower owns its activation
 * buffers (max_batch rows each); forward keeps a borrowed pointer to X and
 * fills them, backward reads them, so X and the outputs must not change
 * between a forward and its backward. */
typedef struct ps_nn_mlp ps_nn_mlp;

typedef struct ps_nn_mlp_config {
    const char *prefix;         /* block name prefix, e.g. "deep" */
    size_t in_dim;
    size_t n_layers;
    const size_t *sizes;        /* n_layers output widths, borrowed for new() */
    ps_nn_act act;
    bool act_last;
    size_t max_batch;
} ps_nn_mlp_config;

/* Registers its blocks in params (borrowed; must outlive the tower), with
 * Glorot-uniform weights and zero biases as their init rule. Caller frees
 * with ps_nn_mlp_free(). PS_ECONFIG for zero sizes, -ENOMEM. */
int ps_nn_mlp_new(ps_nn_params *params, const ps_nn_mlp_config *cfg,
                  ps_nn_mlp **ret_mlp);
void ps_nn_mlp_free(ps_nn_mlp *m);
size_t ps_nn_mlp_out_dim(const ps_nn_mlp *m);
/* X [B x in_dim], borrowed until the matching backward. *ret_Y points at
 * [B x out_dim] owned by the tower (X itself for an empty tower), valid until
 * the next forward. PS_ELIMIT when B > max_batch, -EINVAL for B = 0. */
int ps_nn_mlp_forward(ps_nn_mlp *m, const float *X, size_t B,
                      const float **ret_Y);
/* dY [B x out_dim] for the last forward's batch; accumulates parameter
 * grads; writes (or with accumulate adds) dL/dX into ret_dX unless NULL.
 * -EINVAL when no forward preceded it. */
int ps_nn_mlp_backward(ps_nn_mlp *m, const float *dY, float *ret_dX,
                       bool accumulate);

/* ---- BLAS ---------------------------------------------------------------- */

/* The kernel family OpenBLAS picked when it loaded (e.g. "SkylakeX"), a
 * static string, for the worker to log at startup. OpenBLAS 0.3.21 does not
 * recognise the CPU model of this (virtual) machine and falls back to
 * "Prescott" SSE3 kernels: sgemm 512x429x429 runs at 32 instead of 149
 * GFLOP/s per core. OPENBLAS_CORETYPE=SkylakeX (Haswell without AVX-512)
 * in the environment fixes it; it is read once, when the library loads, so
 * it has to be set before the process starts. */
const char *ps_nn_blas_core(void);

/* BLAS calls made by the calling thread run on that thread alone. Every
 * thread that calls BLAS must say so itself: with the OpenMP build of
 * OpenBLAS the thread count is a per-thread setting, and a thread that
 * never set it gets a team of one thread per core for every sgemm, which
 * on this 2-core machine made a compute thread's batch 3.5x slower. */
void ps_nn_blas_one_thread(void);

/* ---- Loss --------------------------------------------------------------- */

/* Mean logloss over n logits (stable form, ALGORITHMS.md §6), computed in
 * double, and, when ret_dlogits is not NULL, dL/dz_b = (sigmoid(z_b) -
 * y_b) / n. -EINVAL for n = 0, PS_ENONFINITE for a non-finite logit; the
 * outputs are written only on success. */
int ps_nn_logloss(const float *logits, const float *labels, size_t n,
                  double *ret_loss, float *ret_dlogits);
