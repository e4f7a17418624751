#pragma once
/* Synthetic click logs with a known truth (`ctrps-cli gen`).
 *
 * Rows are drawn from a logistic model whose parameters all follow from the
 * seed, so a file is reproducible byte for byte, and the model's own
 * probabilities give the best any learner could do (bayes_auc,
 * bayes_logloss in FILE.truth.json). Part of the true logit is planted as
 * pairwise interactions that a linear model cannot express, so the gap
 * between a logistic regression and a cross/co-action model is measurable.
 *
 * criteo: the exact layout of Criteo's train file: label, I1..I13, C1..C26,
 * tab-separated; integers are counts, some empty (per-field missing rates
 * and log-scale spread measured on the real file; I2 is -1 on 10% of
 * rows as in the real data); categoricals are 8 lowercase hex digits, some
 * empty. Field f's value is the Zipf(vocab[f], zipf_s) rank v (0 = most
 * frequent), written as a per-field bijective scramble of v, so tokens never
 * collide within a field.
 *
 *   logit = bias + k_main * sum_f m_f(v_f)                  main effects
 *                + k_int  * sum_j c_j (ln(1+x_j) - mu_j) / sd_j   integers
 *                + sum_(f,g) in pairs  k_fg * <u_f(v_f), u_g(v_g)> planted crosses
 *   label ~ Bernoulli(sigmoid(logit))
 *
 * m_f(v) ~ N(0,1) (approximately) per value, c_j likewise per integer
 * field (mu_j, sd_j the field's log-scale mean and spread). u_f(v) in
 * R^cross_rank has N(0, 1/sqrt(rank)) entries (so <u, u'> has variance 1)
 * minus the Zipf-weighted mean of field f: with
 * the mean removed, E[<u_f(a), u_g(v_g)> | a] = 0, so no main effect can
 * stand in for a cross and a perfect logistic regression reaches about the
 * main-effects AUC at best. Missing values contribute 0.
 *
 * The scales are calibrated on a 20000-row pilot sample drawn from the same
 * model before any row is written: k_main and k_int make those parts'
 * standard deviations main_scale and int_scale, each k_fg makes its pair's
 * cross_scale / sqrt(npairs) (the pairs are uncorrelated, so the crosses sum
 * to about cross_scale), and bias makes the mean probability `ctr`. So the
 * knobs mean the same whatever the seed; without this the cross strength,
 * dominated by a few head values of the small fields, varied twofold between
 * seeds. Terms nobody can learn (a value seen once) are part of the truth:
 * bayes_auc is an upper bound, not a target.
 *
 * slots: `label user:U item:I cat:C ctx:X hist:H1 ... hist:HL`, L uniform in
 * 0..hist_max, each hist item an independent Zipf draw from the item
 * vocabulary (same tokens as item:), cat a fixed function of the item, all
 * values 8 hex digits.
 *
 *   logit = bias + k_main * (m_user + m_item + m_cat + m_ctx)
 *                + k_int  * (L - E[L]) / sd(L)
 *                + k_co   * sum_h tanh(2 <p(item), p(h)>)
 *
 * p(i) the centred latent vector of item i (as u above). The co-action is a
 * saturating match: a history item close to the target adds up to +1, an
 * opposite one up to -1, whatever else the history holds. It is odd, so it
 * has no main effect, and nonlinear per (target, history item) pair, which
 * is the shape of CAN's co-action unit (a tanh micro-MLP per history item);
 * it is also bounded, which measured far more learnable in one pass than
 * heavy-tailed forms such as z|z| (FM gain over LR +0.04 AUC against +0.01).
 *
 * Truth file (FILE.truth.json): rows, positives, ctr (positives / rows),
 * mean_p, bayes_auc, bayes_logloss (the true probabilities against the
 * drawn labels), main_effects_auc (the logit without the planted
 * interactions: roughly the ceiling of a logistic regression), auc_rows (the
 * AUCs use the first min(rows, auc_rows) rows; logloss uses all), seed,
 * format, bias, logit_std_main, logit_std_cross, and the knobs used.
 *
 * Drift (drift_period > 0; off by default, and then the output is what it
 * was before drift existed): time is t = i / drift_period for row i, the
 * period index k = floor(t).
 *
 *   Churn: rank v of a field holds value generation
 *     gen(v, k) = floor(k * drift_churn + phase(v)),  phase(v) ~ U[0,1) hashed,
 *   so at every period boundary a share drift_churn of each field's ranks
 *   (ranks, so head and tail alike) retire their value and a new value, with
 *   a new token and a new main effect, takes over the rank: its popularity
 *   and (for crossed fields and items) its planted cross vector. Tokens are
 *   perm32(v + vocab * gen), distinct within a field until vocab * gen passes
 *   2^32 (then they wrap and may repeat an old token).
 *   Truth: every main effect (and every integer coefficient) is
 *     sqrt(1 - drift_truth) * m + sqrt(drift_truth) * (cos(a) K_k + sin(a) K_k+1),
 *   a = pi/2 * frac(t), K_k ~ N(0,1) hashed per (value, k): its variance stays
 *   1 (so the calibrated scales hold), and the share drift_truth of it walks
 *   to a fresh independent value every period, continuously within it.
 *   Crosses, the bias and the CTR calibration stay fixed.
 *
 * Output "-" is stdout; the truth then goes to `truth` if set (no truth file
 * otherwise), so an endless stream can be piped into a worker.
 *
 * Memory: the Zipf tables (~1.3 MB), the latent tables (well under 1 MB
 * at defaults) plus 12 bytes per row up to auc_rows for the truth AUCs (and
 * 8 more while ps_auc sorts), none when there is no truth file. */

#include <stddef.h>
#include <stdint.h>

#define PS_GEN_FORMAT_MAP(XX)                                                  \
    XX(CRITEO, "criteo")                                                       \
    XX(SLOTS, "slots")

typedef enum ps_gen_format {
#define PS_GEN_FORMAT_ENUM(name, str) PS_GEN_##name,
    PS_GEN_FORMAT_MAP(PS_GEN_FORMAT_ENUM)
#undef PS_GEN_FORMAT_ENUM
    PS_GEN_FORMAT_COUNT
} ps_gen_format;

/* Static name, or "?" outside the enum. */
const char *ps_gen_format_name(ps_gen_format f);
/* "criteo" / "slots" to enum; -EINVAL for anything else. */
int ps_gen_format_parse(const char *name, ps_gen_format *ret_format);

#define PS_GEN_CATS 26
#define PS_GEN_INTS 13
#define PS_GEN_MAX_PAIRS 32
#define PS_GEN_MAX_RANK 64

/* Options; ps_gen_options_init() sets the defaults shown. */
typedef struct ps_gen_options {
    uint64_t rows;               /* 1000000 */
    uint64_t seed;               /* 1; every parameter and every row follows from it */
    ps_gen_format format;        /* criteo */
    const char *out;             /* required; borrowed for the call; "-" is
                                  * stdout. The truth goes to "<out>.truth.json" */
    const char *truth;           /* NULL: the default above (none for "-") */
    double ctr;                  /* 0.22 target mean probability, (0, 1) */
    double zipf_s;               /* 1.1 Zipf exponent of every categorical, (0, 4] */
    double main_scale;           /* 1.4 std of the summed categorical main effects */
    double int_scale;            /* 0.5 std of the summed integer (criteo) or
                                  * history-length (slots) effects */
    double cross_scale;          /* 1.7 std of the summed planted interactions */
    uint32_t cross_rank;         /* 2 latent dimension of the interactions, 1..64 */
    double vocab_scale;          /* 1.0 multiplies every vocabulary size below
                                  * (at least 1 value each): shrinks a test world */
    /* criteo */
    uint32_t vocab[PS_GEN_CATS]; /* C1..C26, Criteo's own cardinalities capped
                                  * at 1e6: 1460 583 1e6 5e5 305 24 12517 633 3
                                  * 93145 5683 1e6 3194 27 14992 8e5 10 5652
                                  * 2173 4 1e6 18 15 286181 105 142572 */
    uint32_t npairs;             /* 6 */
    uint8_t pairs[PS_GEN_MAX_PAIRS][2]; /* 0-based C indices, default
                                  * (C1,C2) (C1,C8) (C2,C5) (C5,C14) (C8,C17)
                                  * (C14,C23): never-missing fields of 10 to
                                  * 1460 values, so a 1M-row pass sees every
                                  * value often enough to learn its vector */
    /* slots */
    uint32_t users;              /* 100000 */
    uint32_t items;              /* 20000 */
    uint32_t categories;         /* 500 */
    uint32_t contexts;           /* 16 */
    uint32_t hist_max;           /* 20 */
    uint64_t auc_rows;           /* 2000000 cap on rows kept for the truth AUCs */
    /* drift (see above) */
    uint64_t drift_period;       /* 0 = no drift; rows per period */
    double drift_churn;          /* 0.2 share of each field's values retired per period, [0, 1] */
    double drift_truth;          /* 0.3 share of each main effect's variance redrawn per period, [0, 1] */
} ps_gen_options;

void ps_gen_options_init(ps_gen_options *o);

/* Generate o->rows rows into o->out and the truth into o->out.truth.json,
 * streaming (memory does not grow with rows beyond auc_rows). Returns 0,
 * -EINVAL with a reason for a bad option, -errno when a file cannot be
 * written (the reason names it), -ENOMEM. A failed run may leave partial
 * files. */
int ps_gen_run(const ps_gen_options *o, char *err, size_t errlen);
