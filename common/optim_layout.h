#pragma once
/* The sparse optimizers' row layout and limits (ALGORITHMS.md §0-3): what
 * config loading checks a table against, what the shard's optimizers and
 * tables (server/optim.h, server/table.c) store, and what the tools that
 * read rows (ctrps-cli export) name. One home, so the three never disagree.
 * Base layer: no RocksDB, libuv or protobuf.
 *
 * Row state: one float32 array of ps_optim_state_width(p, dim) elements.
 *   FTRL, group lasso:  w[dim] z[dim] n[dim]
 *   AdaGrad:            w[dim] acc[dim]      (rowwise: w[dim] acc[1])
 * w always comes first, so the served embedding is state[0..dim). */

#include <stdbool.h>
#include <stdint.h>

#include "text.h"

/* The optimizers and their config names (`optimizer = ...`). */
#define PS_OPTIMIZER_MAP(XX)                                                   \
    XX(FTRL, "ftrl")                                                           \
    XX(ADAGRAD, "adagrad")                                                     \
    XX(FTRL_GROUP_LASSO, "ftrl_group_lasso")

typedef enum {
#define PS_OPTIMIZER_ENUM(name, str) PS_OPT_##name,
    PS_OPTIMIZER_MAP(PS_OPTIMIZER_ENUM)
#undef PS_OPTIMIZER_ENUM
} ps_optimizer_kind;
#define PS_OPT_COUNT (0 PS_OPTIMIZER_MAP(PS_ENUM_ONE))

extern const char *const ps_optimizer_names[PS_OPT_COUNT];

/* Optimizer hyper-parameters (ALGORITHMS.md §1-3; names and defaults as there). */
typedef struct ps_optim_params {
    ps_optimizer_kind kind;
    double alpha, beta, lambda1, lambda2, lambda21;         /* FTRL, group lasso */
    double lr, initial_accumulator_value, eps, accum_max;   /* AdaGrad */
    bool rowwise;                                           /* AdaGrad */
    double grad_clip;                                       /* 0 = off */
} ps_optim_params;

/* Largest row width (`dim`); config loading rejects a larger one.
 * ps_optim_apply() keeps one double per element on the stack for group lasso
 * (32 KiB at this width), so threads calling it need that much stack. */
#define PS_OPTIM_DIM_MAX 4096
/* Most state fields of any optimizer (FTRL's w, z, n). */
#define PS_OPTIM_FIELDS_MAX 3
/* Largest ps_optim_state_width() of a row of PS_OPTIM_DIM_MAX. */
#define PS_OPTIM_STATE_MAX (PS_OPTIM_FIELDS_MAX * PS_OPTIM_DIM_MAX)

/* Width of the optimizer state per row, w included: FTRL 3d, AdaGrad 2d
 * (d+1 row-wise). */
uint32_t ps_optim_state_width(const ps_optim_params *opt, uint32_t dim);
/* Names of the state fields in order, e.g. {"w","z","n"} (static strings);
 * returns the count, at most PS_OPTIM_FIELDS_MAX. */
int ps_optim_fields(const ps_optim_params *opt, const char *ret_names[PS_OPTIM_FIELDS_MAX]);
/* Static name ("ftrl"), or "?" outside the enum. */
const char *ps_optimizer_name(ps_optimizer_kind kind);
