#include "model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "can.h"
#include "dcn.h"
#include "error.h"

struct ps_model {
    const ps_batch_layout *L;
    ps_dcn *dcn;                 /* NULL for LR */
    ps_nn_params *empty;         /* LR's (empty) block list */
    ps_can **can;                /* ncan_ind x ncan_feed units */
    size_t npairs;
    size_t max_batch;
    float *x0, *dx0;             /* max_batch x x0_width */
    /* CAN gather buffers, per pair in use */
    float *P, *X, *mask, *out, *dout, *dP, *dX;
    size_t ind_w, unit_w, d0, T;
    uint32_t *Tpair;             /* sequence length used per pair in the last forward */
};

int ps_model_new(const ps_batch_layout *L, ps_model **ret_model, char *err, size_t errlen) {
    const ps_model_config *mc = L->model;
    ps_model *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->L = L;
    m->max_batch = mc->batch_size;
    int r = 0;
    if (mc->type == PS_MODEL_LR) {
        r = ps_nn_params_new(&m->empty);
        goto done;
    }
    ps_dcn_config dc = {0};
    dc.input_dim = L->x0_width;
    dc.cross_layers = mc->type == PS_MODEL_CAN ? 0 : mc->cross_layers;
    dc.cross = mc->cross_rank ? PS_DCN_CROSS_MOE : PS_DCN_CROSS_FULL;
    dc.experts = mc->cross_rank ? mc->cross_experts : 1;
    dc.rank = mc->cross_rank ? mc->cross_rank : 1;
    dc.activation = mc->cross_activation;
    dc.use_c = mc->cross_use_c;
    dc.deep_layers = mc->nmlp;
    for (uint32_t i = 0; i < mc->nmlp; i++)
        dc.deep_sizes[i] = mc->mlp[i];
    dc.structure = mc->structure;
    dc.max_batch = mc->batch_size;
    r = ps_dcn_new(&dc, &m->dcn);
    if (r < 0) {
        snprintf(err, errlen, "[model]: invalid network (%s)", ps_strerror(r));
        goto done;
    }
    size_t n = (size_t)m->max_batch * L->x0_width;
    m->x0 = malloc(n * sizeof(float));
    m->dx0 = malloc(n * sizeof(float));
    if (!m->x0 || !m->dx0) {
        r = -ENOMEM;
        goto done;
    }
    if (L->ncan_ind) {
        m->npairs = (size_t)L->ncan_ind * L->ncan_feed;
        m->can = calloc(m->npairs, sizeof(ps_can *));
        m->Tpair = calloc(m->npairs, sizeof(uint32_t));
        if (!m->can || !m->Tpair) {
            r = -ENOMEM;
            goto done;
        }
        ps_can_config cc = mc->can;
        cc.max_batch = m->max_batch;
        cc.max_len = L->can_max_len;
        for (size_t p = 0; p < m->npairs && r == 0; p++)
            r = ps_can_new(&cc, &m->can[p]);
        if (r < 0) {
            snprintf(err, errlen, "[model]: invalid CAN unit (%s)", ps_strerror(r));
            goto done;
        }
        m->ind_w = ps_can_ind_width(m->can[0]);
        m->d0 = ps_can_feed_width(m->can[0]);
        m->T = L->can_max_len;
        size_t B = m->max_batch, ow = ps_can_out_width(m->can[0]);
        m->P = malloc(B * m->ind_w * sizeof(float));
        m->dP = malloc(B * m->ind_w * sizeof(float));
        m->X = malloc(B * m->T * m->d0 * sizeof(float));
        m->dX = malloc(B * m->T * m->d0 * sizeof(float));
        m->mask = malloc(B * m->T * sizeof(float));
        m->out = malloc(B * ow * sizeof(float));
        m->dout = malloc(B * ow * sizeof(float));
        if (!m->P || !m->dP || !m->X || !m->dX || !m->mask || !m->out || !m->dout)
            r = -ENOMEM;
    }
done:
    if (r < 0) {
        ps_model_free(m);
        return r;
    }
    *ret_model = m;
    return 0;
}

void ps_model_free(ps_model *m) {
    if (!m)
        return;
    ps_dcn_free(m->dcn);
    ps_nn_params_free(m->empty);
    for (size_t p = 0; m->can && p < m->npairs; p++)
        ps_can_free(m->can[p]);
    free(m->can);
    free(m->Tpair);
    free(m->x0);
    free(m->dx0);
    free(m->P);
    free(m->X);
    free(m->mask);
    free(m->out);
    free(m->dout);
    free(m->dP);
    free(m->dX);
    free(m);
}

ps_nn_params *ps_model_params(ps_model *m) { return m->dcn ? ps_dcn_params(m->dcn) : m->empty; }

void ps_model_init_params(ps_model *m, uint64_t seed) {
    if (m->dcn)
        ps_dcn_init_params(m->dcn, seed);
}

/* ---- LR ------------------------------------------------------------------------ */

static void lr_forward(const ps_batch *b, float *logits) {
    const ps_batch_table *t = &b->tables[b->L->lr_table];
    for (uint32_t i = 0; i < b->n; i++) {
        double z = 0;
        for (uint32_t k = b->lr_off[i]; k < b->lr_off[i + 1]; k++)
            z += (double)t->values[b->lr_key[k]] * b->lr_val[k];
        logits[i] = (float)z;
    }
}

static void lr_backward(ps_batch *b, const float *dlogits) {
    ps_batch_table *t = &b->tables[b->L->lr_table];
    memset(t->grads, 0, (size_t)t->nkeys * sizeof(float));
    for (uint32_t i = 0; i < b->n; i++)
        for (uint32_t k = b->lr_off[i]; k < b->lr_off[i + 1]; k++)
            t->grads[b->lr_key[k]] += dlogits[i] * b->lr_val[k];
}

/* ---- CAN ------------------------------------------------------------------------ */

/* Gather pair (j, m): P = slice m of induction row j, X = slice j of the
 * feed rows of sequence m, mask = 1 for real positions. */
static size_t can_gather(ps_model *m, const ps_batch *b, uint32_t j, uint32_t f) {
    const ps_batch_layout *L = b->L;
    const ps_batch_table *ti = &b->tables[L->can_ind_table], *tf = &b->tables[L->can_feed_table];
    size_t T = 1;
    for (uint32_t i = 0; i < b->n; i++)
        if (b->can_len[(size_t)i * L->ncan_feed + f] > T)
            T = b->can_len[(size_t)i * L->ncan_feed + f];
    for (uint32_t i = 0; i < b->n; i++) {
        uint32_t key = b->can_ind[(size_t)i * L->ncan_ind + j];
        float *P = m->P + (size_t)i * m->ind_w;
        if (key == PS_NO_KEY)
            memset(P, 0, m->ind_w * sizeof(float));
        else
            memcpy(P, ti->values + (size_t)key * ti->dim + (size_t)f * m->ind_w, m->ind_w * sizeof(float));
        uint16_t len = b->can_len[(size_t)i * L->ncan_feed + f];
        const uint32_t *seq = b->can_feed + ((size_t)i * L->ncan_feed + f) * L->can_max_len;
        for (size_t t = 0; t < T; t++) {
            m->mask[i * T + t] = t < len ? 1.0f : 0.0f;
            if (t < len)
                memcpy(m->X + (i * T + t) * m->d0, tf->values + (size_t)seq[t] * tf->dim + (size_t)j * m->d0,
                       m->d0 * sizeof(float));
        }
    }
    return T;
}

static int can_forward(ps_model *m, const ps_batch *b) {
    const ps_batch_layout *L = b->L;
    size_t ow = L->can_out_width, N = L->x0_width;
    for (uint32_t j = 0; j < L->ncan_ind; j++) {
        for (uint32_t f = 0; f < L->ncan_feed; f++) {
            size_t p = (size_t)j * L->ncan_feed + f;
            size_t T = can_gather(m, b, j, f);
            m->Tpair[p] = (uint32_t)T;
            int r = ps_can_forward(m->can[p], m->P, m->X, m->mask, T, b->n, m->out);
            if (r < 0)
                return r;
            size_t col = L->emb_width + L->ndense + p * ow;
            for (uint32_t i = 0; i < b->n; i++)
                memcpy(m->x0 + i * N + col, m->out + i * ow, ow * sizeof(float));
        }
    }
    return 0;
}

static int can_backward(ps_model *m, ps_batch *b) {
    const ps_batch_layout *L = b->L;
    ps_batch_table *ti = &b->tables[L->can_ind_table], *tf = &b->tables[L->can_feed_table];
    size_t ow = L->can_out_width, N = L->x0_width;
    for (uint32_t j = 0; j < L->ncan_ind; j++) {
        for (uint32_t f = 0; f < L->ncan_feed; f++) {
            size_t p = (size_t)j * L->ncan_feed + f;
            size_t col = L->emb_width + L->ndense + p * ow, T = m->Tpair[p];
            for (uint32_t i = 0; i < b->n; i++)
                memcpy(m->dout + i * ow, m->dx0 + i * N + col, ow * sizeof(float));
            int r = ps_can_backward(m->can[p], m->dout, m->dP, m->dX);
            if (r < 0)
                return r;
            for (uint32_t i = 0; i < b->n; i++) {
                uint32_t key = b->can_ind[(size_t)i * L->ncan_ind + j];
                if (key != PS_NO_KEY) {
                    float *g = ti->grads + (size_t)key * ti->dim + (size_t)f * m->ind_w;
                    const float *d = m->dP + (size_t)i * m->ind_w;
                    for (size_t k = 0; k < m->ind_w; k++)
                        g[k] += d[k];
                }
                uint16_t len = b->can_len[(size_t)i * L->ncan_feed + f];
                const uint32_t *seq = b->can_feed + ((size_t)i * L->ncan_feed + f) * L->can_max_len;
                for (size_t t = 0; t < len; t++) {
                    float *g = tf->grads + (size_t)seq[t] * tf->dim + (size_t)j * m->d0;
                    const float *d = m->dX + (i * T + t) * m->d0;
                    for (size_t k = 0; k < m->d0; k++)
                        g[k] += d[k];
                }
            }
        }
    }
    return 0;
}

/* ---- the network ---------------------------------------------------------------- */

static float pool_scale(const ps_batch *b, uint32_t cnt) {
    return b->L->model->pooling == PS_REDUCE_MEAN ? 1.0f / (float)cnt : 1.0f;
}

int ps_model_forward(ps_model *m, ps_batch *b, float *ret_logits) {
    const ps_batch_layout *L = b->L;
    if (b->n == 0)
        return -EINVAL;
    if (L->lr_table >= 0) {
        lr_forward(b, ret_logits);
        return 0;
    }
    size_t N = L->x0_width, F = L->nfields;
    memset(m->x0, 0, (size_t)b->n * N * sizeof(float));
    for (uint32_t i = 0; i < b->n; i++) {
        float *row = m->x0 + i * N;
        for (size_t f = 0; f < F; f++) {
            uint32_t s = b->occ_off[i * F + f], e = b->occ_off[i * F + f + 1];
            if (s == e)
                continue; /* missing field: zeros */
            const ps_batch_field *fd = &L->fields[f];
            const ps_batch_table *t = &b->tables[fd->table];
            float scale = pool_scale(b, e - s), *dst = row + fd->offset;
            for (uint32_t k = s; k < e; k++) {
                const float *v = t->values + (size_t)b->occ_key[k] * fd->dim;
                for (uint32_t d = 0; d < fd->dim; d++)
                    dst[d] += v[d] * scale;
            }
        }
        if (L->ndense)
            memcpy(row + L->emb_width, b->dense + (size_t)i * L->ndense, L->ndense * sizeof(float));
    }
    if (L->ncan_ind) {
        int r = can_forward(m, b);
        if (r < 0)
            return r;
    }
    return ps_dcn_forward(m->dcn, m->x0, b->n, ret_logits);
}

int ps_model_backward(ps_model *m, ps_batch *b, const float *dlogits) {
    const ps_batch_layout *L = b->L;
    if (L->lr_table >= 0) {
        lr_backward(b, dlogits);
        return 0;
    }
    int r = ps_dcn_backward(m->dcn, dlogits, m->dx0);
    if (r < 0)
        return r;
    for (uint32_t ti = 0; ti < L->ntables; ti++)
        memset(b->tables[ti].grads, 0, (size_t)b->tables[ti].nkeys * b->tables[ti].dim * sizeof(float));
    size_t N = L->x0_width, F = L->nfields;
    for (uint32_t i = 0; i < b->n; i++) {
        const float *row = m->dx0 + i * N;
        for (size_t f = 0; f < F; f++) {
            uint32_t s = b->occ_off[i * F + f], e = b->occ_off[i * F + f + 1];
            if (s == e)
                continue;
            const ps_batch_field *fd = &L->fields[f];
            ps_batch_table *t = &b->tables[fd->table];
            float scale = pool_scale(b, e - s);
            const float *src = row + fd->offset;
            for (uint32_t k = s; k < e; k++) {
                float *g = t->grads + (size_t)b->occ_key[k] * fd->dim;
                for (uint32_t d = 0; d < fd->dim; d++)
                    g[d] += src[d] * scale;
            }
        }
    }
    if (L->ncan_ind)
        return can_backward(m, b);
    return 0;
}
