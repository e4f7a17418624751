#pragma once
/* The worker's part of the cluster config: [input] (worker/parse.h), [model]
 * and [worker], parsed through the ps_config_ext hook so the one INI file
 * serves servers and workers, with the same FILE:LINE: key errors.
 *
 * [model] keys (default):
 *   type = dcnv2              lr | dcnv2 | can | dcnv2+can
 *   batch_size = 512
 *   cross_layers = 3          dcnv2: cross layers
 *   cross_rank = 0            0 = full rank; > 0 = low-rank mixture of experts
 *   cross_experts = 4         experts K (low rank)
 *   cross_activation = tanh   tanh | relu | identity (low rank)
 *   cross_use_c = true        the r x r matrix C between V and U (low rank)
 *   structure = stacked       stacked | parallel
 *   mlp = 400, 400            deep tower sizes; may be empty ("mlp =")
 *   pooling = mean            mean | sum, for slots with several values
 *   sparse_gradient = mean    mean: the gradient of the batch's mean logloss;
 *                             sum: the per-example gradients summed (B times
 *                             mean), so FTRL's alpha, beta, lambda1, lambda2
 *                             mean what they mean in KDD'13 at any batch size
 *   max_in_flight = 2         batches whose pushes may be unacknowledged when
 *                             the next pull is sent; 0 = synchronous
 *   dense_refresh = 1         batches between DensePulls of the dense model
 *   seed = 1                  dense initialisation
 *   lr_table =                the dim-1 table of model lr (default: the only one)
 *   can_induction = item      CAN induction slot(s) (e.g. the target item)
 *   can_feed = hist           CAN feed slot(s) (e.g. the behaviour sequence)
 *   can_ind_table, can_feed_table   tables holding P_ind and P_feed
 *   can_dims = 16, 8, 4       micro-MLP d0 -> ... -> dK
 *   can_orders = 3, can_order_indep = false, can_layers = all (| last),
 *   can_combine = concat (| sum), can_bias = true, can_max_len = 50
 *   dense_optimizer, dense_lr, adam_*: read by the servers (config.h)
 *
 * [worker] keys: progress_interval_s = 5, timeout_ms = 60000,
 *   outage_timeout_s = 600, malformed_log_per_s = 5 (messages about bad
 *   lines, per second), compute_threads = 2 (batches computed at once, 1 or
 *   2; 2 needs max_in_flight >= 1 and changes no result, only the time:
 *   worker/train.c, trainer_loop). timeout_ms bounds one attempt of a request; a
 *   shard that misses it, is unreachable or answers READ_ONLY is retried
 *   with backoff for up to outage_timeout_s (0 = fail at timeout_ms). */

#include <stdbool.h>
#include <stdint.h>

#include "can.h"
#include "config.h"
#include "dcn.h"
#include "parse.h"
#include "text.h"

#define PS_MODEL_TYPE_MAP(XX)                                                  \
    XX(LR, "lr")                                                               \
    XX(DCNV2, "dcnv2")                                                         \
    XX(CAN, "can")                                                             \
    XX(DCNV2_CAN, "dcnv2+can")

typedef enum {
#define PS_MODEL_TYPE_ENUM(name, str) PS_MODEL_##name,
    PS_MODEL_TYPE_MAP(PS_MODEL_TYPE_ENUM)
#undef PS_MODEL_TYPE_ENUM
} ps_model_type;
#define PS_MODEL_TYPE_COUNT (0 PS_MODEL_TYPE_MAP(PS_ENUM_ONE))
typedef enum { PS_REDUCE_MEAN, PS_REDUCE_SUM } ps_reduction;

#define PS_MODEL_MAX_MLP 8
#define PS_MODEL_MAX_CAN_SLOTS 8

typedef struct ps_model_config {
    ps_model_type type;
    uint32_t batch_size;
    uint32_t cross_layers, cross_rank, cross_experts;
    ps_nn_act cross_activation;
    bool cross_use_c;
    ps_dcn_structure structure;
    uint32_t mlp[PS_MODEL_MAX_MLP];
    uint32_t nmlp;
    ps_reduction pooling;
    ps_reduction sparse_gradient;
    uint32_t max_in_flight;
    uint32_t dense_refresh;
    uint64_t seed;
    char lr_table[PS_NAME_MAX];
    char can_induction[PS_MODEL_MAX_CAN_SLOTS][PS_NAME_MAX];
    uint32_t ncan_induction;
    char can_feed[PS_MODEL_MAX_CAN_SLOTS][PS_NAME_MAX];
    uint32_t ncan_feed;
    char can_ind_table[PS_NAME_MAX], can_feed_table[PS_NAME_MAX];
    ps_can_config can;           /* max_batch/max_len filled from the above */
} ps_model_config;

typedef struct ps_worker_config {
    ps_input_config input;
    ps_model_config model;
    uint32_t progress_interval_s;
    uint32_t timeout_ms;
    uint32_t outage_timeout_s;
    uint32_t malformed_log_per_s;
    uint32_t compute_threads;
} ps_worker_config;

/* Pass to ps_config_load(); after loading, cfg->worker is a
 * ps_worker_config. */
extern const ps_config_ext ps_worker_config_ext;

static inline const ps_worker_config *ps_worker_config_of(const ps_config *cfg) {
    return (const ps_worker_config *)cfg->worker;
}

/* Static name ("dcnv2+can"), or "?" outside the enum. */
const char *ps_model_type_name(ps_model_type t);
static inline bool ps_model_has_dcn(ps_model_type t) { return t != PS_MODEL_LR; }
static inline bool ps_model_has_can(ps_model_type t) {
    return t == PS_MODEL_CAN || t == PS_MODEL_DCNV2_CAN;
}
