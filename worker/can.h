#pragma once
/* CAN co-action unit (ALGORITHMS.md §5): one induction feature A, whose row
 * P_ind is reshaped into a micro-MLP d0 -> d1 -> ... -> dK, applied to every
 * position t of a feed sequence B (rows X_t of width d0, weights mask_t),
 * for the element-wise powers X_t^c, c = 1..C, and summed over t.
 *
 * Per example, P_ind [ind_width] holds, for each order block (one block, or
 * C with order_indep, block c-1 serving order c), D_unit floats:
 *   for k = 1..K: W_k (d_{k-1} x d_k, row-major, (i,j) at i*d_k + j), then
 *   b_k (d_k, only with use_bias).
 * h_0 = X_t^c, h_k = tanh(h_{k-1} W_k + b_k) for k < K, h_K linear.
 * Output per example, layers ALL + combine CONCAT (the default):
 *   [out_1; ...; out_C], out_c = sum_t mask_t [h_1; ...; h_K]
 * LAST keeps only h_K; SUM adds the orders instead of concatenating them.
 *
 * The unit has no dense parameters of its own: P_ind and X are rows of
 * sparse tables, and backward returns their per-example gradients (dP, dX)
 * for the worker to add to each key's push. Pairing one induction feature
 * with M feed features (M units, slice j of a wider row) is the caller's
 * business. */

#include <stdbool.h>
#include <stddef.h>

#define PS_CAN_LAYERS_MAP(XX)                                                  \
    XX(ALL, "all")                                                             \
    XX(LAST, "last")

typedef enum ps_can_layers {
#define PS_CAN_LAYERS_ENUM(name, str) PS_CAN_LAYERS_##name,
    PS_CAN_LAYERS_MAP(PS_CAN_LAYERS_ENUM)
#undef PS_CAN_LAYERS_ENUM
    PS_CAN_LAYERS_COUNT
} ps_can_layers;

#define PS_CAN_COMBINE_MAP(XX)                                                 \
    XX(CONCAT, "concat")                                                       \
    XX(SUM, "sum")

typedef enum ps_can_combine {
#define PS_CAN_COMBINE_ENUM(name, str) PS_CAN_COMBINE_##name,
    PS_CAN_COMBINE_MAP(PS_CAN_COMBINE_ENUM)
#undef PS_CAN_COMBINE_ENUM
    PS_CAN_COMBINE_COUNT
} ps_can_combine;

extern const char *const ps_can_layers_names[PS_CAN_LAYERS_COUNT];
extern const char *const ps_can_combine_names[PS_CAN_COMBINE_COUNT];
/* Static names, or "?" outside the enum; parse: PS_ECONFIG for an unknown
 * name, *ret untouched (text.h). */
const char *ps_can_layers_name(ps_can_layers l);
int ps_can_layers_parse(const char *name, ps_can_layers *ret_layers);
const char *ps_can_combine_name(ps_can_combine c);
int ps_can_combine_parse(const char *name, ps_can_combine *ret_combine);

#define PS_CAN_MAX_LAYERS 8     /* K */
#define PS_CAN_MAX_DIM 1024     /* any d_k */

typedef struct ps_can_config {
    size_t n_layers;                        /* K >= 1 */
    size_t dims[PS_CAN_MAX_LAYERS + 1];     /* d0 .. dK, default 16, 8, 4 */
    bool use_bias;
    size_t orders;                          /* C >= 1, default 3 */
    bool order_indep;
    ps_can_layers layers;
    ps_can_combine combine;
    size_t max_batch;
    size_t max_len;                         /* largest T */
} ps_can_config;

/* The defaults of ALGORITHMS.md §5 (16-8-4, biases, C = 3, shared across
 * orders, all layers, concatenated) for the given buffer sizes. */
void ps_can_config_default(ps_can_config *cfg, size_t max_batch,
                           size_t max_len);

typedef struct ps_can ps_can;

/* PS_ECONFIG for an invalid config, -ENOMEM. Caller frees with
 * ps_can_free(). */
int ps_can_new(const ps_can_config *cfg, ps_can **ret_unit);
/* Accepts NULL. */
void ps_can_free(ps_can *u);
/* D_unit = sum_k (d_{k-1} d_k + [use_bias] d_k). */
size_t ps_can_unit_width(const ps_can *u);
/* Width of P_ind: D_unit, times C with order_indep. */
size_t ps_can_ind_width(const ps_can *u);
/* d0. */
size_t ps_can_feed_width(const ps_can *u);
/* [C if CONCAT] * (sum_k d_k if ALL, d_K if LAST). */
size_t ps_can_out_width(const ps_can *u);

/* P [B x ind_width], X [B x T x feed_width], mask [B x T] (NULL: every
 * position counts; a position with mask 0 is padding and is never read, so
 * it may hold anything). All three are copied. Writes ret_out [B x
 * out_width]. PS_ELIMIT when B > max_batch or T > max_len, -EINVAL for
 * B = 0. */
int ps_can_forward(ps_can *u, const float *P, const float *X,
                   const float *mask, size_t T, size_t B, float *ret_out);
/* dout [B x out_width] for the last forward's batch. Writes (not adds)
 * dL/dP [B x ind_width] and dL/dX [B x T x feed_width] (padded positions
 * exactly 0); either may be NULL. -EINVAL when no forward preceded it. */
int ps_can_backward(ps_can *u, const float *dout, float *ret_dP,
                    float *ret_dX);
