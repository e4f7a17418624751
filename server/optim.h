#pragma once
/* Sparse-row optimizers: FTRL-Proximal, AdaGrad and FTRL with group lasso
 * (ALGORITHMS.md §0-3). Stateless functions over a caller-owned row.
 *
 * Row state: ps_optim_state_width(p, dim) float32 elements, laid out as
 * common/optim_layout.h says (w first, then the optimizer's accumulators);
 * dim is at most PS_OPTIM_DIM_MAX, defined there.
 *
 * A row moves through two states: ps_optim_init_row() makes it (from the
 * weights of ps_optim_init_weights() or any w_init), then every
 * ps_optim_apply() updates it in place. Invariants after either call:
 *   - every zero is +0.0 and every element is finite: an update whose
 *     result would not be (finite gradients so large that n, acc or z
 *     overflow float32) is refused like a non-finite gradient;
 *   - FTRL and group lasso: w is the closed form of the stored float32
 *     (z, n) under the current hyper-parameters, so a push of an all-zero
 *     gradient (which leaves z and n unchanged) recomputes w, e.g. after a
 *     hyper-parameter change; n >= 0;
 *   - AdaGrad: acc <= accum_max (up to the float32 rounding of accum_max).
 * The functions keep no state of their own and never allocate; callers
 * serialise updates to one row (ALGORITHMS.md §0: lock per row). Different
 * rows may be updated concurrently. */

#include <stdint.h>

#include "config.h"
#include "optim_layout.h"

/* Deterministic initial weights for (t->seed, key), t->dim of them into
 * ret_w: all +0.0 for init = zero, N(0, init_std^2) for init = normal.
 * Pure function of (t->seed, key, i) for element i: independent of dim,
 * of call order and of the thread. The bits are the same on every IEEE-754
 * machine and libm: each value is computed with +, -, *, / only, and libm's
 * log merely accepts or rejects candidates (see optim.c). */
void ps_optim_init_weights(const ps_table_config *t, uint64_t key, float *ret_w);
/* The same weights by the code ps_optim_init_weights() runs on CPUs without
 * AVX-512 (it picks the vector code where the CPU has it): for the test
 * that holds both to the same bits. */
void ps_optim_init_weights_portable(const ps_table_config *t, uint64_t key, float *ret_w);

/* Fill a new row's state (width ps_optim_state_width(p, dim)) from w_init
 * (dim elements, borrowed for the call):
 *   FTRL:        n = 0, z = -(beta/alpha + lambda2)*w - lambda1*sign(w)
 *   group lasso: n = 0, z_i = -(a0 + lambda_g/||w||)*w_i - lambda1*sign(w_i)
 *   AdaGrad:     acc = min(initial_accumulator_value, accum_max)
 * and w = w_init. For FTRL and group lasso the closed form at n = 0 returns
 * w_init up to the float32 rounding of z (exactly when that rounding is
 * exact); this needs beta > 0 or lambda2 > 0 if w_init != 0, which config
 * loading checks. */
void ps_optim_init_row(const ps_optim_params *p, uint32_t dim, const float *w_init, float *state);

/* Apply one gradient (dim elements, borrowed, must not overlap state) to one
 * row in place. Returns 0 when applied, or PS_ENONFINITE when any g_i is NaN
 * or +-Inf or the result would hold a non-finite value, in which case state
 * is left bit-identical. grad_clip (if > 0)
 * clamps each g_i after that check. Arithmetic is double; each state field
 * is rounded to float32 as soon as it is computed and later steps of the
 * same update read the stored value (w from the stored z and n, the AdaGrad
 * step from the stored acc). Denominators that can only be 0 in degenerate
 * settings give no step instead of Inf or NaN: FTRL's a_i = 0 (beta =
 * lambda2 = 0 with a stored n of 0) holds w_i at 0, and AdaGrad's
 * sqrt(acc) + eps = 0 (eps = 0 with a stored acc of 0) leaves w_i as it is. */
int ps_optim_apply(const ps_optim_params *p, uint32_t dim, float *state, const float *grad);

/* FTRL's vector kernels, narrowest first. Every one gives the scalar
 * path's results bit for bit; they differ only in speed. */
typedef enum {
    PS_OPTIM_SIMD_SCALAR,
    PS_OPTIM_SIMD_SSE2,
    PS_OPTIM_SIMD_AVX2,
    PS_OPTIM_SIMD_AVX512
} ps_optim_simd;

/* FTRL's per-call constants (optim.c). */
typedef struct ps_ftrl_consts {
    double alpha, inv_alpha, base, l1, clip;
} ps_ftrl_consts;

/* One optimizer step over many rows: what ps_optim_apply() works out on
 * each call (the constants, the kernel the CPU runs), worked out once, for
 * a push of many rows. step_apply() gives ps_optim_apply()'s results bit
 * for bit. p is borrowed while the step is used. */
typedef struct ps_optim_step {
    const ps_optim_params *p;
    uint32_t dim;
    ps_optim_simd simd;          /* the widest FTRL kernel to take */
    ps_ftrl_consts k;
} ps_optim_step;
void ps_optim_step_init(ps_optim_step *s, const ps_optim_params *p, uint32_t dim);
int ps_optim_step_apply(const ps_optim_step *s, float *state, const float *grad);

/* Let ps_optim_apply() take no kernel wider than max (the default is
 * PS_OPTIM_SIMD_AVX512: the widest the CPU runs, chosen from CPUID per
 * call, or per ps_optim_step_init()).
 * Returns the previous limit. For tests that compare the kernels; not
 * thread-safe, so call it before any update runs. */
ps_optim_simd ps_optim_simd_limit(ps_optim_simd max);
