/* Synthetic click-log generator (model and truth file: gen.h).
 *
 * Design note. Parameters of values are never stored for the big fields: a
 * value's main effect is a hash of (seed, field, value) turned into an
 * approximately normal number, so a 1e6-value field costs no memory and the
 * whole world is fixed by the seed. Only the latent vectors of crossed
 * fields (and of items, for slots) are tables, because they are centred by a
 * Zipf-weighted mean, which needs them all at once; the crossed fields are
 * mid-sized (a few thousand values), so the tables stay around a megabyte.
 *
 * Zipf ranks: the 4096 most frequent by table inversion, the rest by
 * rejection-inversion (see zipf_draw); 1M Criteo rows (26M draws) take about
 * 3 s in all, of which writing the 240 MB file and the two truth AUC sorts
 * are a third.
 *
 * Drift needs no state either: a value's generation and its drifting effect
 * are hashes of (seed, field, rank, period), so a stream of any length costs
 * the same memory, and rows i.. of a long run are the same whatever --rows.
 *
 * Rows are drawn from one splitmix64 stream in a fixed order, so the output
 * is a pure function of the options. The scales and the bias come from a
 * pilot sample drawn from a second stream of the same seed before any row is
 * written (solve_scales). */

#include "gen.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keys.h"
#include "eval.h"
#include "text.h"

/* ---- names ----------------------------------------------------------------- */

static const char *const format_names[PS_GEN_FORMAT_COUNT] = {PS_GEN_FORMAT_MAP(PS_ENUM_STR)};

const char *ps_gen_format_name(ps_gen_format f) {
    return ps_enum_name(format_names, PS_GEN_FORMAT_COUNT, (int)f);
}

/* -EINVAL rather than text.h's PS_ECONFIG: the value comes from a command
 * line, not a config file. */
int ps_gen_format_parse(const char *name, ps_gen_format *ret_format) {
    int f;
    if (ps_enum_parse(format_names, PS_GEN_FORMAT_COUNT, name, &f) < 0)
        return -EINVAL;
    *ret_format = (ps_gen_format)f;
    return 0;
}

/* ---- defaults ---------------------------------------------------------------- */

/* Criteo's categorical cardinalities (full training set), capped at 1e6 so a
 * default world fits in a small file's worth of distinct values. */
static const uint32_t default_vocab[PS_GEN_CATS] = {
    1460,  583,    1000000, 500000, 305,  24, 12517,   633, 3,  93145,  5683, 1000000, 3194,
    27,    14992,  800000,  10,     5652, 2173, 4,     1000000, 18, 15, 286181, 105,  142572};

/* Missing rates of C1..C26, I1..I13 and the mean and standard deviation of
 * ln(1+x) of I1..I13, measured on the first 10k rows of Criteo's train file
 * (the integers' spread is what bucketize sees). */
static const double cat_miss[PS_GEN_CATS] = {
    0, 0, .036, .036, 0, .133, 0, 0, 0, 0, 0, .036, 0,
    0, 0, .036, 0,    0, .45,  .45, .036, .818, 0, .036, .45, .45};
static const double int_miss[PS_GEN_INTS] = {.448, 0, .204, .198, .049, .251, .049,
                                             .001, .049, .448, .049, .773, .198};
static const double int_mu[PS_GEN_INTS] = {.80, 2.12, 2.25, 1.73, 7.24, 3.58, 1.54,
                                           2.06, 3.61, .38, .85, .30, 1.88};
static const double int_sd[PS_GEN_INTS] = {.98, 2.13, 1.28, .96, 2.90, 1.81, 1.36,
                                           1.18, 1.69, .39, .74, .61, 1.06};
/* I2 is -1 (rarely -2) on ~10% of real rows. */
#define I2_NEGATIVE_RATE 0.097

static const uint8_t default_pairs[][2] = {{0, 1}, {0, 7}, {1, 4}, {4, 13}, {7, 16}, {13, 22}};

void ps_gen_options_init(ps_gen_options *o) {
    memset(o, 0, sizeof(*o));
    o->rows = 1000000;
    o->seed = 1;
    o->format = PS_GEN_CRITEO;
    o->ctr = 0.22;
    o->zipf_s = 1.1;
    o->main_scale = 1.4;
    o->int_scale = 0.5;
    o->cross_scale = 1.7;
    o->cross_rank = 2;
    o->vocab_scale = 1.0;
    memcpy(o->vocab, default_vocab, sizeof(o->vocab));
    o->npairs = sizeof(default_pairs) / sizeof(*default_pairs);
    memcpy(o->pairs, default_pairs, sizeof(default_pairs));
    o->users = 100000;
    o->items = 20000;
    o->categories = 500;
    o->contexts = 16;
    o->hist_max = 20;
    o->auc_rows = 2000000;
    o->drift_churn = 0.2;
    o->drift_truth = 0.3;
}

/* ---- randomness -------------------------------------------------------------- */

typedef struct rng {
    uint64_t s;
    bool has_spare;
    double spare;
} rng;

/* splitmix64: one add and the finalizer per draw, plenty for a generator
 * whose consumers are learning algorithms, not statistical tests. */
static inline uint64_t rng_next(rng *r) {
    r->s += UINT64_C(0x9e3779b97f4a7c15);
    return ps_mix64(r->s);
}

static inline double rng_unif(rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

/* Box-Muller, both values used. */
static double rng_normal(rng *r) {
    if (r->has_spare) {
        r->has_spare = false;
        return r->spare;
    }
    double u1 = 1.0 - rng_unif(r), u2 = rng_unif(r);
    double rad = sqrt(-2.0 * log(u1)), th = 2.0 * M_PI * u2;
    r->spare = rad * sin(th);
    r->has_spare = true;
    return rad * cos(th);
}

static void rng_seed(rng *r, uint64_t s) {
    r->s = s;
    r->has_spare = false;
}

enum { TAG_MAIN = 1, TAG_INT, TAG_LAT, TAG_KEY, TAG_CAT, TAG_PILOT, TAG_ROWS, TAG_PHASE, TAG_WANDER };

/* Field numbers in hashes: criteo's C fields are 0..25, the slots fields: */
enum { F_USER = 100, F_ITEM, F_CAT, F_CTX };

static inline uint64_t hash3(uint64_t seed, uint64_t tag, uint64_t a, uint64_t b) {
    return ps_mix64(ps_mix64(ps_mix64(seed ^ (tag << 56)) + a) + b);
}

/* Approximately N(0,1) from 64 hashed bits: the sum of four 16-bit uniforms
 * (Irwin-Hall, n = 4) rescaled. Bounded at +-3.46, which a main effect may
 * well be, and far cheaper than Box-Muller per value. */
static inline double hash_normal(uint64_t h) {
    double s = (double)(h & 0xffff) + (double)((h >> 16) & 0xffff) +
               (double)((h >> 32) & 0xffff) + (double)(h >> 48);
    return (s / 65536.0 - 2.0) * 1.7320508075688772;
}

/* A bijection of 32-bit words (xorshift-multiply rounds with odd
 * multipliers): distinct values of a field get distinct tokens. */
static inline uint32_t perm32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x9e3779b1u;
    x ^= x >> 15;
    x *= 0x85ebca77u;
    x ^= x >> 16;
    return x;
}

/* ---- Zipf sampling ----------------------------------------------------------- */

/* P(k) proportional to h(k) = k^-s on 1..n, in two parts.
 *
 * Head (k <= ZIPF_HEAD, where most draws land: 77% of them for n = 1e6,
 * s = 1.1, all of them for n <= ZIPF_HEAD): inversion of the cumulative
 * distribution through a guide table (Chen and Asau), so a draw costs one
 * uniform and a step or two of search, no transcendental function.
 *
 * Tail (k > ZIPF_HEAD): rejection-inversion (Hörmann and Derflinger, 1996),
 * O(1) without a table of the million-value distribution. With
 * H(x) = (x^(1-s) - 1) / (1-s), the integral of h, a uniform u on
 * [H(head + 0.5), H(n + 0.5)] is inverted to x and rounded to k; k is kept
 * when u falls in the top h(k) of its cell [H(k - 0.5), H(k + 0.5)], which
 * convexity of h guarantees is at least that long, so kept ranks follow h
 * exactly; over 95% of tail draws are kept.
 *
 * The head/tail split uses the tail's mass from Euler-Maclaurin (midpoint
 * rule plus its first correction), relative error below 1e-9 at the head
 * size used: exact sums over a million ranks per field cost more than the
 * whole row loop saves. */
#define ZIPF_HEAD 4096
#define ZIPF_GUIDE 4096

typedef struct zipf {
    uint32_t n, head;            /* head = min(n, ZIPF_HEAD) */
    double s, t;                 /* t = 1 - s */
    double lo, hi;               /* tail's u range */
    double *cdf;                 /* owned; cdf[k-1] = P(rank <= k), k <= head */
    uint32_t *guide;             /* owned; guide[i] = first k-1 with cdf[k-1] > i / ZIPF_GUIDE */
} zipf;

/* expm1(y)/y and log1p(y)/y, continuous through y = 0 (s = 1 is the log). */
static inline double expm1_over(double y) { return fabs(y) < 1e-8 ? 1 + y / 2 : expm1(y) / y; }
static inline double log1p_over(double y) { return fabs(y) < 1e-8 ? 1 - y / 2 : log1p(y) / y; }

static inline double zipf_H(const zipf *z, double x) {
    double lx = log(x);
    return lx * expm1_over(z->t * lx);
}
static inline double zipf_Hinv(const zipf *z, double u) { return exp(u * log1p_over(z->t * u)); }
static inline double zipf_h(const zipf *z, double k) { return exp(-z->s * log(k)); }

static int zipf_init(zipf *z, uint32_t n, double s) {
    memset(z, 0, sizeof(*z));
    z->n = n;
    z->s = s;
    z->t = 1 - s;
    z->head = n < ZIPF_HEAD ? n : ZIPF_HEAD;
    z->lo = zipf_H(z, z->head + 0.5);
    z->hi = zipf_H(z, n + 0.5);
    z->cdf = malloc(z->head * sizeof(*z->cdf));
    z->guide = malloc(ZIPF_GUIDE * sizeof(*z->guide));
    if (!z->cdf || !z->guide)
        return -ENOMEM;
    double acc = 0;
    for (uint32_t k = 1; k <= z->head; k++)
        z->cdf[k - 1] = acc += zipf_h(z, k);
    double tail = 0;
    if (n > z->head) {
        /* sum_{k=a}^{b} h(k) ~ H(b + 1/2) - H(a - 1/2) - (h'(b + 1/2) - h'(a - 1/2)) / 24 */
        double a = z->head + 0.5, b = n + 0.5;
        tail = z->hi - z->lo + s * (exp((-s - 1) * log(b)) - exp((-s - 1) * log(a))) / 24;
    }
    double total = acc + tail;
    for (uint32_t k = 0; k < z->head; k++)
        z->cdf[k] /= total;
    if (!tail)
        z->cdf[z->head - 1] = 1.0; /* no rounding gap for the search to fall into */
    uint32_t k = 0;
    for (uint32_t i = 0; i < ZIPF_GUIDE; i++) {
        double edge = (double)i / ZIPF_GUIDE;
        while (k < z->head - 1 && z->cdf[k] <= edge)
            k++;
        z->guide[i] = k;
    }
    return 0;
}

static void zipf_deinit(zipf *z) {
    free(z->cdf);
    free(z->guide);
    z->cdf = NULL;
    z->guide = NULL;
}

/* A 0-based rank: 0 is the most frequent value. */
static uint32_t zipf_draw(const zipf *z, rng *r) {
    double u = rng_unif(r);
    uint32_t k = z->guide[(uint32_t)(u * ZIPF_GUIDE)];
    while (k < z->head && z->cdf[k] <= u)
        k++;
    if (k < z->head)
        return k;
    for (;;) {
        u = z->hi + rng_unif(r) * (z->lo - z->hi);
        double kd = floor(zipf_Hinv(z, u) + 0.5);
        uint32_t j = kd <= z->head ? z->head + 1 : kd > z->n ? z->n : (uint32_t)kd;
        if (u >= zipf_H(z, j + 0.5) - zipf_h(z, j))
            return j - 1;
    }
}

/* ---- the model --------------------------------------------------------------- */

typedef struct gen {
    const ps_gen_options *o;
    uint64_t seed;
    uint32_t rank;
    /* The logit is bias + k_main * main + k_int * ints + sum k_pair * pair,
     * where the parts are drawn at unit scale and the k_* calibrated on the
     * pilot sample (solve_scales), so each knob is the standard deviation of
     * its part in the data whatever the seed: drawn coefficients alone made
     * the cross strength (and so the LR/FM gap) vary by 2x between seeds,
     * because a few head values of the small fields dominate each term. */
    double bias, k_main, k_int, k_pair[PS_GEN_MAX_PAIRS];
    uint32_t npairs;             /* criteo: o->npairs; slots: 1 (the co-action) */
    /* criteo */
    zipf cat[PS_GEN_CATS];
    uint32_t key[PS_GEN_CATS];   /* token scramble per field */
    float *lat[PS_GEN_CATS];     /* owned; vocab x rank, centred; NULL unless crossed */
    double log1p_small[1024];    /* ln(1+x) of the common counts */
    /* slots */
    zipf user, item, ctx;
    uint32_t ncat;
    uint32_t key_user, key_item, key_cat, key_ctx;
    float *item_lat;             /* owned; items x rank, centred */
    double mean_len, sd_len;
    /* drift */
    bool churn, wander;          /* drift_period > 0 and the share > 0 */
    double keep, move;           /* sqrt(1 - drift_truth), sqrt(drift_truth) */
} gen;

/* One drawn row, before its label. */
typedef struct row {
    int64_t v[PS_GEN_CATS];      /* rank, or -1 when missing */
    int64_t x[PS_GEN_INTS];      /* value, or INT64_MIN when missing */
    uint32_t user, item, cat, ctx, len;
    uint32_t *hist;              /* hist_max entries, owned by the caller */
    double main, ints;           /* logit parts at unit scale */
    double pair[PS_GEN_MAX_PAIRS]; /* each planted interaction, unit scale */
    /* Output ids (rank + vocab * generation; the token is their scramble),
     * for hist the only record of each item. */
    uint32_t id[PS_GEN_CATS];
    uint32_t user_id, item_id, ctx_id;
    /* The row's time (row_set_time): period k, cos and sin of pi/2 * frac(t),
     * and the integer coefficients at that time. */
    uint64_t k;
    double ca, sa;
    double int_coef[PS_GEN_INTS];
} row;

#define MISSING_INT INT64_MIN

static uint32_t scaled(uint32_t n, double scale) {
    double v = floor((double)n * scale + 0.5);
    return v < 1 ? 1 : v > 2e9 ? 2000000000u : (uint32_t)v;
}

/* vocab x rank latent vectors for (tag a), entries N(0, 1/sqrt(rank)) so a
 * dot product of two has variance 1, minus their Zipf(s)-weighted mean: with
 * E[u_g] = 0 under g's own distribution, E[<u_f(a), u_g>] = 0 for every a,
 * so the interaction has no marginal (main) effect for a linear model to
 * pick up. */
static float *latent_table(const gen *g, uint64_t a, uint32_t vocab, double s) {
    size_t r = g->rank;
    float *lat = malloc((size_t)vocab * r * sizeof(float));
    double *mean = calloc(r, sizeof(double));
    if (!lat || !mean) {
        free(lat);
        free(mean);
        return NULL;
    }
    double sd = pow((double)r, -0.25), z = 0;
    for (uint32_t v = 0; v < vocab; v++) {
        double w = exp(-s * log((double)v + 1));
        z += w;
        for (size_t d = 0; d < r; d++) {
            double x = sd * hash_normal(hash3(g->seed, TAG_LAT, a * PS_GEN_MAX_RANK + d, v));
            lat[(size_t)v * r + d] = (float)x;
            mean[d] += w * x;
        }
    }
    for (uint32_t v = 0; v < vocab; v++)
        for (size_t d = 0; d < r; d++)
            lat[(size_t)v * r + d] -= (float)(mean[d] / z);
    free(mean);
    return lat;
}

static inline double dot(const float *a, const float *b, uint32_t n) {
    double s = 0;
    for (uint32_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

/* ---- drift ------------------------------------------------------------------ */

/* The generation of the value at rank v of field f in period k (gen.h). */
static inline uint64_t generation(const gen *g, uint64_t f, uint32_t v, uint64_t k) {
    if (!g->churn)
        return 0;
    double phase = (double)(hash3(g->seed, TAG_PHASE, f, v) >> 11) * 0x1.0p-53;
    return (uint64_t)floor((double)k * g->o->drift_churn + phase);
}

/* A value's identity in hashes: the rank alone for generation 0, so a world
 * without churn is the world from before drift. */
static inline uint64_t ident(uint32_t v, uint64_t gen_no) { return v | gen_no << 32; }

/* Its output id: distinct per (rank, generation) while it fits 32 bits. */
static inline uint32_t out_id(uint32_t v, uint32_t vocab, uint64_t gen_no) {
    return (uint32_t)(v + (uint64_t)vocab * gen_no);
}

/* A unit-variance effect drawn from h (a value's or a coefficient's hash)
 * at the row's time: fixed without truth drift, otherwise the share
 * drift_truth of its variance walks (gen.h). */
static inline double drifting(const gen *g, const row *w, uint64_t h) {
    double m = hash_normal(h);
    if (!g->wander)
        return m;
    uint64_t hw = ps_mix64(h ^ ((uint64_t)TAG_WANDER << 56));
    double a = hash_normal(ps_mix64(hw + w->k)), b = hash_normal(ps_mix64(hw + w->k + 1));
    return g->keep * m + g->move * (w->ca * a + w->sa * b);
}

/* The main effect of (field f, rank v, generation) at the row's time. */
static inline double effect(const gen *g, const row *w, uint64_t f, uint64_t id) {
    return drifting(g, w, hash3(g->seed, TAG_MAIN, f, id));
}

/* Row i's time: period and phase within it, and the integer coefficients. */
static void row_set_time(const gen *g, row *w, uint64_t i) {
    uint64_t p = g->o->drift_period;
    w->k = p ? i / p : 0;
    double a = p ? (double)(i % p) / (double)p : 0;
    w->ca = cos(M_PI / 2 * a);
    w->sa = sin(M_PI / 2 * a);
    for (int j = 0; j < PS_GEN_INTS; j++)
        w->int_coef[j] = drifting(g, w, hash3(g->seed, TAG_INT, (uint64_t)j, 0));
}

static void gen_deinit(gen *g) {
    for (int f = 0; f < PS_GEN_CATS; f++) {
        zipf_deinit(&g->cat[f]);
        free(g->lat[f]);
    }
    zipf_deinit(&g->user);
    zipf_deinit(&g->item);
    zipf_deinit(&g->ctx);
    free(g->item_lat);
}

static int gen_init(gen *g, const ps_gen_options *o) {
    memset(g, 0, sizeof(*g));
    g->o = o;
    g->seed = o->seed;
    g->rank = o->cross_rank;
    g->churn = o->drift_period > 0 && o->drift_churn > 0;
    g->wander = o->drift_period > 0 && o->drift_truth > 0;
    g->keep = sqrt(1 - o->drift_truth);
    g->move = sqrt(o->drift_truth);
    double s = o->zipf_s;
    if (o->format == PS_GEN_CRITEO) {
        g->npairs = o->npairs;
        for (int f = 0; f < PS_GEN_CATS; f++) {
            if (zipf_init(&g->cat[f], scaled(o->vocab[f], o->vocab_scale), s) < 0)
                return -ENOMEM;
            g->key[f] = (uint32_t)hash3(g->seed, TAG_KEY, (uint64_t)f, 0);
        }
        for (int x = 0; x < 1024; x++)
            g->log1p_small[x] = log1p((double)x);
        for (uint32_t p = 0; p < o->npairs; p++)
            for (int e = 0; e < 2; e++) {
                int f = o->pairs[p][e];
                if (!g->lat[f] && !(g->lat[f] = latent_table(g, (uint64_t)f, g->cat[f].n, s)))
                    return -ENOMEM;
            }
    } else {
        if (zipf_init(&g->user, scaled(o->users, o->vocab_scale), s) < 0 ||
            zipf_init(&g->item, scaled(o->items, o->vocab_scale), s) < 0 ||
            zipf_init(&g->ctx, scaled(o->contexts, o->vocab_scale), s) < 0)
            return -ENOMEM;
        g->ncat = scaled(o->categories, o->vocab_scale);
        g->key_user = (uint32_t)hash3(g->seed, TAG_KEY, 100, 0);
        g->key_item = (uint32_t)hash3(g->seed, TAG_KEY, 101, 0);
        g->key_cat = (uint32_t)hash3(g->seed, TAG_KEY, 102, 0);
        g->key_ctx = (uint32_t)hash3(g->seed, TAG_KEY, 103, 0);
        if (!(g->item_lat = latent_table(g, 101, g->item.n, s)))
            return -ENOMEM;
        g->npairs = 1;
        double m = o->hist_max;
        g->mean_len = m / 2;
        g->sd_len = sqrt(((m + 1) * (m + 1) - 1) / 12);
    }
    return 0;
}

static void criteo_row(const gen *g, rng *r, row *w) {
    const ps_gen_options *o = g->o;
    double main = 0, ints = 0;
    for (int f = 0; f < PS_GEN_CATS; f++) {
        if (rng_unif(r) < cat_miss[f]) {
            w->v[f] = -1;
            continue;
        }
        uint32_t v = zipf_draw(&g->cat[f], r);
        uint64_t gn = generation(g, (uint64_t)f, v, w->k);
        w->v[f] = v;
        w->id[f] = out_id(v, g->cat[f].n, gn);
        main += effect(g, w, (uint64_t)f, ident(v, gn));
    }
    for (int j = 0; j < PS_GEN_INTS; j++) {
        if (rng_unif(r) < int_miss[j]) {
            w->x[j] = MISSING_INT;
            continue;
        }
        if (j == 1 && rng_unif(r) < I2_NEGATIVE_RATE) {
            w->x[j] = -1; /* no effect, like missing */
            continue;
        }
        double t = int_mu[j] + int_sd[j] * rng_normal(r);
        int64_t x = t <= 0 ? 0 : (int64_t)floor(expm1(t < 40 ? t : 40));
        w->x[j] = x;
        double lx = x < 1024 ? g->log1p_small[x] : log1p((double)x);
        ints += w->int_coef[j] * (lx - int_mu[j]) / int_sd[j];
    }
    for (uint32_t p = 0; p < o->npairs; p++) {
        int f = o->pairs[p][0], h = o->pairs[p][1];
        w->pair[p] = 0;
        if (w->v[f] < 0 || w->v[h] < 0)
            continue;
        w->pair[p] = dot(g->lat[f] + (size_t)w->v[f] * g->rank,
                         g->lat[h] + (size_t)w->v[h] * g->rank, g->rank);
    }
    w->main = main;
    w->ints = ints;
}

static void slots_row(const gen *g, rng *r, row *w) {
    const ps_gen_options *o = g->o;
    w->user = zipf_draw(&g->user, r);
    w->item = zipf_draw(&g->item, r);
    w->ctx = zipf_draw(&g->ctx, r);
    uint64_t gu = generation(g, F_USER, w->user, w->k), gi = generation(g, F_ITEM, w->item, w->k),
             gc = generation(g, F_CTX, w->ctx, w->k);
    w->user_id = out_id(w->user, g->user.n, gu);
    w->item_id = out_id(w->item, g->item.n, gi);
    w->ctx_id = out_id(w->ctx, g->ctx.n, gc);
    w->cat = (uint32_t)(hash3(g->seed, TAG_CAT, ident(w->item, gi), 0) % g->ncat);
    w->len = (uint32_t)(rng_next(r) % ((uint64_t)o->hist_max + 1));
    w->main = effect(g, w, F_USER, ident(w->user, gu)) + effect(g, w, F_ITEM, ident(w->item, gi)) +
              effect(g, w, F_CAT, w->cat) + effect(g, w, F_CTX, ident(w->ctx, gc));
    w->ints = g->sd_len > 0 ? ((double)w->len - g->mean_len) / g->sd_len : 0;
    const float *pi = g->item_lat + (size_t)w->item * g->rank;
    double co = 0;
    for (uint32_t k = 0; k < w->len; k++) {
        uint32_t h = zipf_draw(&g->item, r);
        w->hist[k] = out_id(h, g->item.n, generation(g, F_ITEM, h, w->k));
        double z = dot(pi, g->item_lat + (size_t)h * g->rank, g->rank);
        co += tanh(2 * z); /* see gen.h: a saturating match */
    }
    w->pair[0] = co;
}

static inline void draw_row(const gen *g, rng *r, row *w) {
    if (g->o->format == PS_GEN_CRITEO)
        criteo_row(g, r, w);
    else
        slots_row(g, r, w);
}

static inline double part_main(const gen *g, const row *w) {
    return g->k_main * w->main + g->k_int * w->ints;
}

static inline double part_cross(const gen *g, const row *w) {
    double c = 0;
    for (uint32_t p = 0; p < g->npairs; p++)
        c += g->k_pair[p] * w->pair[p];
    return c;
}

static double scale_for(double target, double sum, double sum2, int n) {
    double m = sum / n, var = sum2 / n - m * m;
    return var > 1e-12 ? target / sqrt(var) : 0;
}

/* Calibrate the scales on a pilot sample (a separate stream of the same
 * seed): main and integer parts to their knobs, and every planted pair to
 * cross_scale / sqrt(npairs), so pairs contribute equally whichever head
 * values the seed gave them (the sum then has std ~cross_scale; the pairs are
 * uncorrelated). Then the bias, so that the mean of sigmoid(logit) over the
 * pilot is the target CTR (monotone in the bias: bisection). 20000 rows put
 * the realized CTR within about half a point of the target. */
static int solve_scales(gen *g, row *w) {
    enum { PILOT = 20000 };
    const uint32_t np = g->npairs, nv = 2 + np;
    double *v = malloc((size_t)PILOT * nv * sizeof(*v));
    double *z = malloc(PILOT * sizeof(*z));
    double sum[2 + PS_GEN_MAX_PAIRS] = {0}, sum2[2 + PS_GEN_MAX_PAIRS] = {0};
    if (!v || !z) {
        free(v);
        free(z);
        return -ENOMEM;
    }
    rng r;
    rng_seed(&r, hash3(g->seed, TAG_PILOT, 0, 0));
    row_set_time(g, w, 0);
    for (int i = 0; i < PILOT; i++) {
        draw_row(g, &r, w);
        double *vi = v + (size_t)i * nv;
        vi[0] = w->main;
        vi[1] = w->ints;
        for (uint32_t p = 0; p < np; p++)
            vi[2 + p] = w->pair[p];
        for (uint32_t k = 0; k < nv; k++) {
            sum[k] += vi[k];
            sum2[k] += vi[k] * vi[k];
        }
    }
    g->k_main = scale_for(g->o->main_scale, sum[0], sum2[0], PILOT);
    g->k_int = scale_for(g->o->int_scale, sum[1], sum2[1], PILOT);
    for (uint32_t p = 0; p < np; p++)
        g->k_pair[p] =
            scale_for(g->o->cross_scale / sqrt((double)np), sum[2 + p], sum2[2 + p], PILOT);
    for (int i = 0; i < PILOT; i++) {
        const double *vi = v + (size_t)i * nv;
        z[i] = g->k_main * vi[0] + g->k_int * vi[1];
        for (uint32_t p = 0; p < np; p++)
            z[i] += g->k_pair[p] * vi[2 + p];
    }
    double lo = -40, hi = 40;
    for (int it = 0; it < 60; it++) {
        double mid = (lo + hi) / 2, m = 0;
        for (int i = 0; i < PILOT; i++)
            m += ps_sigmoid(mid + z[i]);
        if (m / PILOT < g->o->ctr)
            lo = mid;
        else
            hi = mid;
    }
    g->bias = (lo + hi) / 2;
    free(v);
    free(z);
    return 0;
}

/* ---- output ------------------------------------------------------------------ */

static const char hexdigits[] = "0123456789abcdef";

static inline char *put_hex8(char *p, uint32_t x) {
    for (int i = 7; i >= 0; i--) {
        p[i] = hexdigits[x & 15];
        x >>= 4;
    }
    return p + 8;
}

static inline char *put_i64(char *p, int64_t v) {
    char tmp[24];
    int n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *p++ = '-';
    while (n)
        *p++ = tmp[--n];
    return p;
}

static inline char *put_str(char *p, const char *s) {
    size_t n = strlen(s);
    memcpy(p, s, n);
    return p + n;
}

static size_t format_criteo(const gen *g, const row *w, int label, char *buf) {
    char *p = buf;
    *p++ = (char)('0' + label);
    for (int j = 0; j < PS_GEN_INTS; j++) {
        *p++ = '\t';
        if (w->x[j] != MISSING_INT)
            p = put_i64(p, w->x[j]);
    }
    for (int f = 0; f < PS_GEN_CATS; f++) {
        *p++ = '\t';
        if (w->v[f] >= 0)
            p = put_hex8(p, perm32(w->id[f] ^ g->key[f]));
    }
    *p++ = '\n';
    return (size_t)(p - buf);
}

static size_t format_slots(const gen *g, const row *w, int label, char *buf) {
    char *p = buf;
    *p++ = (char)('0' + label);
    p = put_hex8(put_str(p, " user:"), perm32(w->user_id ^ g->key_user));
    p = put_hex8(put_str(p, " item:"), perm32(w->item_id ^ g->key_item));
    p = put_hex8(put_str(p, " cat:"), perm32(w->cat ^ g->key_cat));
    p = put_hex8(put_str(p, " ctx:"), perm32(w->ctx_id ^ g->key_ctx));
    for (uint32_t k = 0; k < w->len; k++)
        p = put_hex8(put_str(p, " hist:"), perm32(w->hist[k] ^ g->key_item));
    *p++ = '\n';
    return (size_t)(p - buf);
}

static void json_num(FILE *f, const char *key, double v, bool last) {
    if (isfinite(v))
        fprintf(f, "  \"%s\": %.6f%s\n", key, v, last ? "" : ",");
    else
        fprintf(f, "  \"%s\": null%s\n", key, last ? "" : ",");
}

typedef struct truth {
    uint64_t rows, positives, auc_n;
    double sum_p, logloss, bayes_auc, main_auc;
    double sum_main, sum_main2, sum_cross, sum_cross2;
} truth;


static bool to_stdout(const ps_gen_options *o) { return !strcmp(o->out, "-"); }

/* The truth file's path into path, or "" when there is none. */
static int truth_path(const ps_gen_options *o, char *path, size_t cap, char *err, size_t errlen) {
    int n;
    if (o->truth)
        n = snprintf(path, cap, "%s", o->truth);
    else if (to_stdout(o))
        n = snprintf(path, cap, "%s", "");
    else
        n = snprintf(path, cap, "%s.truth.json", o->out);
    if ((size_t)n >= cap) {
        snprintf(err, errlen, "output path too long");
        return -ENAMETOOLONG;
    }
    return 0;
}

static int write_truth(const gen *g, const truth *t, const char *path, char *err, size_t errlen) {
    const ps_gen_options *o = g->o;
    FILE *f = fopen(path, "w");
    if (!f) {
        int r = -errno;
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        return r;
    }
    double n = (double)t->rows;
    double mm = t->sum_main / n, mc = t->sum_cross / n;
    fprintf(f, "{\n  \"rows\": %llu,\n  \"positives\": %llu,\n", (unsigned long long)t->rows,
            (unsigned long long)t->positives);
    json_num(f, "ctr", (double)t->positives / n, false);
    json_num(f, "mean_p", t->sum_p / n, false);
    json_num(f, "bayes_auc", t->bayes_auc, false);
    json_num(f, "bayes_logloss", t->logloss / n, false);
    json_num(f, "main_effects_auc", t->main_auc, false);
    fprintf(f, "  \"auc_rows\": %llu,\n", (unsigned long long)t->auc_n);
    fprintf(f, "  \"seed\": %llu,\n  \"format\": \"%s\",\n  \"out\": ",
            (unsigned long long)o->seed, ps_gen_format_name(o->format));
    ps_json_string(f, o->out);
    fprintf(f, ",\n  \"model\": \"ctrps-gen-1\",\n");
    json_num(f, "bias", g->bias, false);
    json_num(f, "logit_std_main", sqrt(fmax(0, t->sum_main2 / n - mm * mm)), false);
    json_num(f, "logit_std_cross", sqrt(fmax(0, t->sum_cross2 / n - mc * mc)), false);
    json_num(f, "target_ctr", o->ctr, false);
    json_num(f, "zipf_s", o->zipf_s, false);
    json_num(f, "main_scale", o->main_scale, false);
    json_num(f, "int_scale", o->int_scale, false);
    json_num(f, "cross_scale", o->cross_scale, false);
    fprintf(f, "  \"cross_rank\": %u,\n", o->cross_rank);
    json_num(f, "vocab_scale", o->vocab_scale, false);
    fprintf(f, "  \"drift_period\": %llu,\n", (unsigned long long)o->drift_period);
    json_num(f, "drift_churn", o->drift_period ? o->drift_churn : 0, false);
    json_num(f, "drift_truth", o->drift_period ? o->drift_truth : 0, false);
    if (o->format == PS_GEN_CRITEO) {
        fprintf(f, "  \"vocab\": [");
        for (int i = 0; i < PS_GEN_CATS; i++)
            fprintf(f, "%s%u", i ? ", " : "", g->cat[i].n);
        fprintf(f, "],\n  \"pairs\": [");
        for (uint32_t p = 0; p < o->npairs; p++)
            fprintf(f, "%s[\"C%d\", \"C%d\"]", p ? ", " : "", o->pairs[p][0] + 1,
                    o->pairs[p][1] + 1);
        fprintf(f, "]\n}\n");
    } else {
        fprintf(f, "  \"users\": %u,\n  \"items\": %u,\n  \"categories\": %u,\n", g->user.n,
                g->item.n, g->ncat);
        fprintf(f, "  \"contexts\": %u,\n  \"hist_max\": %u\n}\n", g->ctx.n, o->hist_max);
    }
    if (ferror(f) | (fclose(f) != 0)) {
        snprintf(err, errlen, "cannot write %s", path);
        return -EIO;
    }
    return 0;
}

/* ---- the run ----------------------------------------------------------------- */

static int check_options(const ps_gen_options *o, char *err, size_t errlen) {
#define BAD(...)                                                               \
    do {                                                                       \
        snprintf(err, errlen, __VA_ARGS__);                                    \
        return -EINVAL;                                                        \
    } while (0)
    if (!o->out || !*o->out)
        BAD("an output file is required");
    if ((unsigned)o->format >= PS_GEN_FORMAT_COUNT)
        BAD("unknown format");
    if (o->rows < 1)
        BAD("rows must be at least 1");
    if (!(o->ctr >= 0.001 && o->ctr <= 0.999))
        BAD("ctr must be in [0.001, 0.999], got %g", o->ctr);
    if (!(o->zipf_s > 0 && o->zipf_s <= 4))
        BAD("zipf_s must be in (0, 4], got %g", o->zipf_s);
    if (!(o->main_scale >= 0 && o->main_scale <= 20) ||
        !(o->int_scale >= 0 && o->int_scale <= 20) ||
        !(o->cross_scale >= 0 && o->cross_scale <= 20))
        BAD("main_scale, int_scale and cross_scale must be in [0, 20]");
    if (o->cross_rank < 1 || o->cross_rank > PS_GEN_MAX_RANK)
        BAD("cross_rank must be in [1, %d], got %u", PS_GEN_MAX_RANK, o->cross_rank);
    if (!(o->vocab_scale > 0 && o->vocab_scale <= 1000))
        BAD("vocab_scale must be in (0, 1000], got %g", o->vocab_scale);
    if (!(o->drift_churn >= 0 && o->drift_churn <= 1))
        BAD("drift_churn must be in [0, 1], got %g", o->drift_churn);
    if (!(o->drift_truth >= 0 && o->drift_truth <= 1))
        BAD("drift_truth must be in [0, 1], got %g", o->drift_truth);
    if (o->format == PS_GEN_CRITEO) {
        for (int f = 0; f < PS_GEN_CATS; f++)
            if (o->vocab[f] < 1)
                BAD("vocab of C%d must be at least 1", f + 1);
        if (o->npairs > PS_GEN_MAX_PAIRS)
            BAD("at most %d pairs", PS_GEN_MAX_PAIRS);
        for (uint32_t p = 0; p < o->npairs; p++)
            if (o->pairs[p][0] >= PS_GEN_CATS || o->pairs[p][1] >= PS_GEN_CATS ||
                o->pairs[p][0] == o->pairs[p][1])
                BAD("pair %u must name two different fields of C1..C26", p + 1);
    } else {
        if (o->users < 1 || o->items < 1 || o->categories < 1 || o->contexts < 1)
            BAD("users, items, categories and contexts must be at least 1");
        if (o->hist_max > 10000)
            BAD("hist_max must be at most 10000, got %u", o->hist_max);
    }
    return 0;
#undef BAD
}

int ps_gen_run(const ps_gen_options *o, char *err, size_t errlen) {
    int r = check_options(o, err, errlen);
    if (r < 0)
        return r;
    gen g;
    row w = {0};
    truth t = {0};
    FILE *f = NULL;
    char *line = NULL, tpath[4096];
    float *p_true = NULL, *p_main = NULL, *labels = NULL;
    size_t line_cap = 64 + 14 * ((size_t)o->hist_max + 8) + 24 * PS_GEN_INTS + 10 * PS_GEN_CATS;

    if ((r = truth_path(o, tpath, sizeof(tpath), err, errlen)) < 0)
        return r;
    r = gen_init(&g, o);
    if (r < 0)
        goto oom;
    /* Without a truth file nothing is kept per row: an endless stream. */
    t.auc_n = !*tpath ? 0 : o->rows < o->auc_rows ? o->rows : o->auc_rows;
    w.hist = malloc(((size_t)o->hist_max + 1) * sizeof(*w.hist));
    line = malloc(line_cap);
    p_true = malloc((t.auc_n ? t.auc_n : 1) * sizeof(float));
    p_main = malloc((t.auc_n ? t.auc_n : 1) * sizeof(float));
    labels = malloc((t.auc_n ? t.auc_n : 1) * sizeof(float));
    if (!w.hist || !line || !p_true || !p_main || !labels)
        goto oom;
    if ((r = solve_scales(&g, &w)) < 0)
        goto oom;

    f = to_stdout(o) ? fdopen(dup(STDOUT_FILENO), "w") : fopen(o->out, "w");
    if (!f) {
        r = -errno;
        snprintf(err, errlen, "cannot write %s: %s", o->out, strerror(errno));
        goto out;
    }
    /* Large stdio buffer: a 1M-row file is ~250 MB and write(2) per 4 KiB
     * showed up in the profile. */
    setvbuf(f, NULL, _IOFBF, 1 << 20);

    rng rr;
    rng_seed(&rr, hash3(g.seed, TAG_ROWS, 0, 0));
    for (uint64_t i = 0; i < o->rows; i++) {
        if (g.churn || g.wander)
            row_set_time(&g, &w, i);
        draw_row(&g, &rr, &w);
        double pm = part_main(&g, &w), pc = part_cross(&g, &w);
        double zmain = g.bias + pm;
        double p = ps_sigmoid(zmain + pc);
        int y = rng_unif(&rr) < p;
        size_t n = o->format == PS_GEN_CRITEO ? format_criteo(&g, &w, y, line)
                                              : format_slots(&g, &w, y, line);
        if (fwrite(line, 1, n, f) != n)
            break; /* reported by ferror below */
        t.positives += (uint64_t)y;
        t.sum_p += p;
        t.logloss += ps_logloss_prob(p, y);
        t.sum_main += pm;
        t.sum_main2 += pm * pm;
        t.sum_cross += pc;
        t.sum_cross2 += pc * pc;
        if (i < t.auc_n) {
            p_true[i] = (float)p;
            p_main[i] = (float)zmain;
            labels[i] = (float)y;
        }
    }
    t.rows = o->rows;
    if (ferror(f) | (fclose(f) != 0)) {
        f = NULL;
        r = -EIO;
        snprintf(err, errlen, "cannot write %s", o->out);
        goto out;
    }
    f = NULL;
    if (!*tpath) {
        r = 0;
        goto out;
    }
    t.bayes_auc = ps_auc(p_true, labels, t.auc_n);
    t.main_auc = ps_auc(p_main, labels, t.auc_n);
    r = write_truth(&g, &t, tpath, err, errlen);
    goto out;

oom:
    r = -ENOMEM;
    snprintf(err, errlen, "out of memory");
out:
    if (f)
        fclose(f);
    free(p_true);
    free(p_main);
    free(labels);
    free(line);
    free(w.hist);
    gen_deinit(&g);
    return r;
}
