/* CAN co-action unit; the math is ALGORITHMS.md §5, the layouts are in
 * can.h.
 *
 * Design note.
 * - States: new() allocates copies of P, X and mask and the hidden-layer
 *   cache for max_batch x max_len; forward() fills them and sets batch;
 *   backward() needs batch > 0 and does not consume it. The next forward
 *   overwrites everything.
 * - No BLAS here, on purpose: every example carries its own weights (its
 *   P_ind row), so the products are B separate (T x d0)(d0 x d1) ones of a
 *   few hundred multiply-adds per position; a cblas call per example and
 *   order costs more than the arithmetic. Plain loops over contiguous rows
 *   let the compiler vectorise the inner loop over d_k.
 * - Cached per (example, order, position): the tanh outputs h_1..h_{K-1}
 *   (sum 8 floats by default). h_0 = X^c is recomputed from the X copy in
 *   backward (a few multiplies) rather than stored C times, and h_K is
 *   linear so backward never needs it.
 * - Padding (mask 0) is skipped in both passes, never multiplied by 0, so
 *   garbage or NaN in padded X cannot leak and dX there is exactly +0.
 */
#include "can.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "text.h"

const char *const ps_can_layers_names[PS_CAN_LAYERS_COUNT] = {PS_CAN_LAYERS_MAP(PS_ENUM_STR)};
PS_ENUM_FUNCTIONS(ps_can_layers, ps_can_layers, PS_CAN_LAYERS_COUNT)

const char *const ps_can_combine_names[PS_CAN_COMBINE_COUNT] = {PS_CAN_COMBINE_MAP(PS_ENUM_STR)};
PS_ENUM_FUNCTIONS(ps_can_combine, ps_can_combine, PS_CAN_COMBINE_COUNT)

void ps_can_config_default(ps_can_config *cfg, size_t max_batch,
                           size_t max_len) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->n_layers = 2;
    cfg->dims[0] = 16;
    cfg->dims[1] = 8;
    cfg->dims[2] = 4;
    cfg->use_bias = true;
    cfg->orders = 3;
    cfg->order_indep = false;
    cfg->layers = PS_CAN_LAYERS_ALL;
    cfg->combine = PS_CAN_COMBINE_CONCAT;
    cfg->max_batch = max_batch;
    cfg->max_len = max_len;
}

struct ps_can {
    ps_can_config cfg;
    size_t K, C, d0;
    size_t unit_w, ind_w, out_w;
    size_t woff[PS_CAN_MAX_LAYERS + 1];     /* W_k offset in a unit block */
    size_t boff[PS_CAN_MAX_LAYERS + 1];     /* b_k offset (use_bias) */
    size_t ooff[PS_CAN_MAX_LAYERS + 1];     /* h_k offset in out_c (kept) */
    size_t hoff[PS_CAN_MAX_LAYERS + 1];     /* h_k offset in a cache row */
    size_t order_w;                         /* width of out_c */
    size_t hid_w;                           /* sum_{k<K} d_k, cache row */
    size_t max_dim;
    /* copies and caches */
    float *P, *X, *mask, *hid;
    /* scratch vectors of max_dim */
    float *v[4];
    size_t batch, T;
};

void ps_can_free(ps_can *u) {
    if (!u)
        return;
    free(u->P);
    free(u->X);
    free(u->mask);
    free(u->hid);
    for (int i = 0; i < 4; i++)
        free(u->v[i]);
    free(u);
}

static int check_config(const ps_can_config *c) {
    if (c->n_layers == 0 || c->n_layers > PS_CAN_MAX_LAYERS ||
        c->orders == 0 || c->max_batch == 0 ||
        (unsigned)c->layers >= PS_CAN_LAYERS_COUNT ||
        (unsigned)c->combine >= PS_CAN_COMBINE_COUNT)
        return PS_ECONFIG;
    for (size_t k = 0; k <= c->n_layers; k++)
        if (c->dims[k] == 0 || c->dims[k] > PS_CAN_MAX_DIM)
            return PS_ECONFIG;
    return 0;
}

int ps_can_new(const ps_can_config *cfg, ps_can **ret_unit) {
    int r = check_config(cfg);
    if (r < 0)
        return r;
    ps_can *u = calloc(1, sizeof(*u));
    if (!u)
        return -ENOMEM;
    u->cfg = *cfg;
    u->K = cfg->n_layers;
    u->C = cfg->orders;
    u->d0 = cfg->dims[0];
    const size_t *d = cfg->dims;
    size_t off = 0, oo = 0, ho = 0;
    u->max_dim = d[0];
    for (size_t k = 1; k <= u->K; k++) {
        u->woff[k] = off;
        off += d[k - 1] * d[k];
        u->boff[k] = off;
        if (cfg->use_bias)
            off += d[k];
        u->ooff[k] = cfg->layers == PS_CAN_LAYERS_ALL ? oo : 0;
        oo += d[k];
        u->hoff[k] = ho;
        if (k < u->K)
            ho += d[k];
        u->max_dim = d[k] > u->max_dim ? d[k] : u->max_dim;
    }
    u->unit_w = off;
    u->ind_w = off * (cfg->order_indep ? u->C : 1);
    u->order_w = cfg->layers == PS_CAN_LAYERS_ALL ? oo : d[u->K];
    u->out_w = u->order_w * (cfg->combine == PS_CAN_COMBINE_CONCAT ? u->C : 1);
    u->hid_w = ho;
    size_t B = cfg->max_batch, T = cfg->max_len ? cfg->max_len : 1;
    u->P = malloc(B * u->ind_w * sizeof(float));
    u->X = malloc(B * T * u->d0 * sizeof(float));
    u->mask = malloc(B * T * sizeof(float));
    u->hid = malloc((B * u->C * T * u->hid_w + 1) * sizeof(float));
    if (!u->P || !u->X || !u->mask || !u->hid)
        goto nomem;
    for (int i = 0; i < 4; i++)
        if (!(u->v[i] = malloc(u->max_dim * sizeof(float))))
            goto nomem;
    *ret_unit = u;
    return 0;
nomem:
    ps_can_free(u);
    return -ENOMEM;
}

size_t ps_can_unit_width(const ps_can *u) { return u->unit_w; }
size_t ps_can_ind_width(const ps_can *u) { return u->ind_w; }
size_t ps_can_feed_width(const ps_can *u) { return u->d0; }
size_t ps_can_out_width(const ps_can *u) { return u->out_w; }

/* The weights serving order c (0-based) of example b. */
static const float *unit_block(const ps_can *u, const float *P, size_t b,
                               size_t c) {
    return P + b * u->ind_w + (u->cfg.order_indep ? c * u->unit_w : 0);
}

static float *unit_block_mut(const ps_can *u, float *P, size_t b, size_t c) {
    return P + b * u->ind_w + (u->cfg.order_indep ? c * u->unit_w : 0);
}

/* Offset in an output row of layer k's part of order c (0-based); only
 * meaningful for a kept layer. */
static size_t out_offset(const ps_can *u, size_t c, size_t k) {
    size_t base = u->cfg.combine == PS_CAN_COMBINE_CONCAT ? c * u->order_w : 0;
    return base + u->ooff[k];
}

static bool layer_kept(const ps_can *u, size_t k) {
    return u->cfg.layers == PS_CAN_LAYERS_ALL || k == u->K;
}

/* h0 = x^(c+1) element-wise; with pm1 not NULL also x^c (the derivative
 * factor without the constant). */
static void power(const float *x, size_t n, size_t c, float *h0, float *pm1) {
    for (size_t i = 0; i < n; i++) {
        float p = 1.0f;
        for (size_t j = 0; j < c; j++)
            p *= x[i];
        if (pm1)
            pm1[i] = p;
        h0[i] = p * x[i];
    }
}

int ps_can_forward(ps_can *u, const float *P, const float *X,
                   const float *mask, size_t T, size_t B, float *ret_out) {
    if (B == 0)
        return -EINVAL;
    if (B > u->cfg.max_batch || T > u->cfg.max_len)
        return PS_ELIMIT;
    const size_t *d = u->cfg.dims;
    size_t K = u->K, d0 = u->d0;
    u->batch = 0;
    memcpy(u->P, P, B * u->ind_w * sizeof(float));
    memcpy(u->X, X, B * T * d0 * sizeof(float));
    if (mask)
        memcpy(u->mask, mask, B * T * sizeof(float));
    else
        for (size_t i = 0; i < B * T; i++)
            u->mask[i] = 1.0f;
    memset(ret_out, 0, B * u->out_w * sizeof(float));
    float *in = u->v[0], *y = u->v[1];
    for (size_t b = 0; b < B; b++) {
        float *out = ret_out + b * u->out_w;
        for (size_t c = 0; c < u->C; c++) {
            const float *w = unit_block(u, u->P, b, c);
            for (size_t t = 0; t < T; t++) {
                float mk = u->mask[b * T + t];
                if (mk == 0.0f)
                    continue;
                float *hid = u->hid + ((b * u->C + c) * T + t) * u->hid_w;
                power(u->X + (b * T + t) * d0, d0, c, in, NULL);
                const float *h = in;
                for (size_t k = 1; k <= K; k++) {
                    size_t din = d[k - 1], dk = d[k];
                    const float *Wk = w + u->woff[k];
                    if (u->cfg.use_bias)
                        memcpy(y, w + u->boff[k], dk * sizeof(float));
                    else
                        memset(y, 0, dk * sizeof(float));
                    for (size_t i = 0; i < din; i++) {
                        float hi = h[i];
                        const float *row = Wk + i * dk;
                        for (size_t j = 0; j < dk; j++)
                            y[j] += hi * row[j];
                    }
                    float *dst = y;
                    if (k < K) {
                        dst = hid + u->hoff[k];
                        for (size_t j = 0; j < dk; j++)
                            dst[j] = tanhf(y[j]);
                    }
                    if (layer_kept(u, k)) {
                        float *o = out + out_offset(u, c, k);
                        for (size_t j = 0; j < dk; j++)
                            o[j] += mk * dst[j];
                    }
                    h = dst;
                }
            }
        }
    }
    u->batch = B;
    u->T = T;
    return 0;
}

int ps_can_backward(ps_can *u, const float *dout, float *ret_dP,
                    float *ret_dX) {
    size_t B = u->batch, T = u->T;
    if (B == 0)
        return -EINVAL;
    const size_t *d = u->cfg.dims;
    size_t K = u->K, d0 = u->d0;
    if (ret_dP)
        memset(ret_dP, 0, B * u->ind_w * sizeof(float));
    if (ret_dX)
        memset(ret_dX, 0, B * T * d0 * sizeof(float));
    if (!ret_dP && !ret_dX)
        return 0;
    float *h0 = u->v[0], *pm1 = u->v[1], *dh = u->v[2], *dprev = u->v[3];
    for (size_t b = 0; b < B; b++) {
        const float *go = dout + b * u->out_w;
        for (size_t c = 0; c < u->C; c++) {
            const float *w = unit_block(u, u->P, b, c);
            float *dw = ret_dP ? unit_block_mut(u, ret_dP, b, c) : NULL;
            for (size_t t = 0; t < T; t++) {
                float mk = u->mask[b * T + t];
                if (mk == 0.0f)
                    continue;
                const float *hid = u->hid + ((b * u->C + c) * T + t) * u->hid_w;
                const float *x = u->X + (b * T + t) * d0;
                power(x, d0, c, h0, pm1);
                /* dh holds dL/dh_k on entry to step k: the kept output's
                 * share plus what layer k+1 sent down. */
                memset(dh, 0, d[K] * sizeof(float));
                for (size_t k = K; k >= 1; k--) {
                    size_t din = d[k - 1], dk = d[k];
                    if (layer_kept(u, k)) {
                        const float *g = go + out_offset(u, c, k);
                        for (size_t j = 0; j < dk; j++)
                            dh[j] += mk * g[j];
                    }
                    if (k < K) {                    /* through tanh */
                        const float *hk = hid + u->hoff[k];
                        for (size_t j = 0; j < dk; j++)
                            dh[j] *= 1.0f - hk[j] * hk[j];
                    }
                    /* dh is now dpre_k */
                    const float *hin = k > 1 ? hid + u->hoff[k - 1] : h0;
                    const float *Wk = w + u->woff[k];
                    if (dw) {
                        float *dWk = dw + u->woff[k];
                        for (size_t i = 0; i < din; i++) {
                            float hi = hin[i];
                            float *row = dWk + i * dk;
                            for (size_t j = 0; j < dk; j++)
                                row[j] += hi * dh[j];
                        }
                        if (u->cfg.use_bias) {
                            float *db = dw + u->boff[k];
                            for (size_t j = 0; j < dk; j++)
                                db[j] += dh[j];
                        }
                    }
                    if (k == 1 && !ret_dX)
                        break;
                    for (size_t i = 0; i < din; i++) {
                        const float *row = Wk + i * dk;
                        float s = 0.0f;
                        for (size_t j = 0; j < dk; j++)
                            s += row[j] * dh[j];
                        dprev[i] = s;
                    }
                    float *tmp = dh;
                    dh = dprev;
                    dprev = tmp;
                }
                if (ret_dX) {
                    /* dh = dL/dh_0; d(x^(c+1))/dx = (c+1) x^c */
                    float *gx = ret_dX + (b * T + t) * d0;
                    float f = (float)(c + 1);
                    for (size_t i = 0; i < d0; i++)
                        gx[i] += f * pm1[i] * dh[i];
                }
            }
        }
    }
    return 0;
}
