#pragma once
/* DCN-V2 (ALGORITHMS.md §4): a cross network of full-rank or low-rank
 * mixture-of-experts layers, a ReLU deep tower, stacked or parallel, and a
 * linear output to one logit per example.
 *
 * Parameter blocks (names as in the test vectors, all row-major float32):
 *   full cross layer l:  cross.l.W  N x N      cross.l.b  N
 *   MoE cross layer l:   cross.l.U  K x N x r  cross.l.V  K x r x N
 *                        cross.l.C  K x r x r  (use_c only)
 *                        cross.l.G  K x N      (K > 1 only: gate vectors)
 *                        cross.l.b  N          (shared by the experts)
 *   deep tower j:        deep.j.W   out x in   deep.j.b   out
 *   output:              w_out      F          b_out      1
 * where F = width of the deep output (stacked), or N + that width
 * (parallel, w_out = [cross part; deep part]). Without a deep tower the
 * deep output is its input (stacked: x_L; parallel: x0).
 *
 * Use: new -> init_params (or write the values through ps_dcn_params) ->
 * { zero_grad; forward; loss; backward; push grads } per batch. One model
 * per thread: forward caches the batch's activations for backward. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn.h"

#define PS_DCN_CROSS_MAP(XX)                                                   \
    XX(FULL, "full")                                                           \
    XX(MOE, "moe")

typedef enum ps_dcn_cross {
#define PS_DCN_CROSS_ENUM(name, str) PS_DCN_CROSS_##name,
    PS_DCN_CROSS_MAP(PS_DCN_CROSS_ENUM)
#undef PS_DCN_CROSS_ENUM
    PS_DCN_CROSS_COUNT
} ps_dcn_cross;

#define PS_DCN_STRUCTURE_MAP(XX)                                               \
    XX(STACKED, "stacked")                                                     \
    XX(PARALLEL, "parallel")

typedef enum ps_dcn_structure {
#define PS_DCN_STRUCTURE_ENUM(name, str) PS_DCN_##name,
    PS_DCN_STRUCTURE_MAP(PS_DCN_STRUCTURE_ENUM)
#undef PS_DCN_STRUCTURE_ENUM
    PS_DCN_STRUCTURE_COUNT
} ps_dcn_structure;

extern const char *const ps_dcn_structure_names[PS_DCN_STRUCTURE_COUNT];
/* Static names, or "?" outside the enum; parse: PS_ECONFIG for an unknown
 * name, *ret untouched (text.h). */
const char *ps_dcn_cross_name(ps_dcn_cross c);
int ps_dcn_cross_parse(const char *name, ps_dcn_cross *ret_cross);
const char *ps_dcn_structure_name(ps_dcn_structure s);
int ps_dcn_structure_parse(const char *name, ps_dcn_structure *ret_structure);

#define PS_DCN_MAX_DEEP 8

typedef struct ps_dcn_config {
    size_t input_dim;           /* N */
    size_t cross_layers;        /* L, may be 0 */
    ps_dcn_cross cross;
    /* MoE only. The plain low-rank layer x0 ⊙ (U V x + b) + x is experts 1,
     * use_c false, activation identity. Without C, h = g(V x). */
    size_t experts;             /* K >= 1 */
    size_t rank;                /* r >= 1 */
    ps_nn_act activation;       /* g */
    bool use_c;
    size_t deep_layers;         /* may be 0 */
    size_t deep_sizes[PS_DCN_MAX_DEEP];
    ps_dcn_structure structure;
    size_t max_batch;           /* buffers are sized for this many rows */
} ps_dcn_config;

typedef struct ps_dcn ps_dcn;

/* Builds the model, registers its blocks (values and grads zero) and
 * allocates every buffer. PS_ECONFIG for an invalid config, -ENOMEM. Caller
 * frees with ps_dcn_free(). */
int ps_dcn_new(const ps_dcn_config *cfg, ps_dcn **ret_model);
/* Accepts NULL. */
void ps_dcn_free(ps_dcn *m);
/* The model's blocks, owned by the model (valid until ps_dcn_free()). */
ps_nn_params *ps_dcn_params(ps_dcn *m);
/* Initialise every block deterministically from seed: W, deep weights and
 * w_out Glorot-uniform; U, V, C Glorot-normal with each expert's matrix
 * fans (N and r, r and r); gates U(±1/sqrt(N)); biases 0. */
void ps_dcn_init_params(ps_dcn *m, uint64_t seed);
void ps_dcn_zero_grad(ps_dcn *m);

/* x0 [batch x N] (copied); writes ret_logits [batch]. PS_ELIMIT when batch
 * > max_batch, -EINVAL for batch 0. Caches the activations for backward. */
int ps_dcn_forward(ps_dcn *m, const float *x0, size_t batch,
                   float *ret_logits);
/* dlogits [batch] = dL/dlogit for the last forward's batch (for the mean
 * logloss, ps_nn_logloss gives them). Adds the batch sums of dL/dparam to
 * the grads and, unless ret_dx0 is NULL, writes dL/dx0 [batch x N].
 * -EINVAL when no forward preceded it. */
int ps_dcn_backward(ps_dcn *m, const float *dlogits, float *ret_dx0);
