#include "batch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "keys.h"
#include "parse.h"

/* ---- layout ------------------------------------------------------------------ */

static int32_t add_table(ps_batch_layout *L, const ps_table_config *t) {
    for (uint32_t i = 0; i < L->ntables; i++)
        if (L->tables[i].cfg == t)
            return (int32_t)i;
    ps_batch_table *g = realloc(L->tables, (L->ntables + 1) * sizeof(*g));
    if (!g)
        return -ENOMEM;
    L->tables = g;
    memset(&g[L->ntables], 0, sizeof(*g));
    g[L->ntables].cfg = t;
    g[L->ntables].dim = t->dim;
    return (int32_t)L->ntables++;
}

static bool is_can_table(const ps_model_config *m, const ps_table_config *t) {
    return ps_model_has_can(m->type) &&
           (!strcmp(t->name, m->can_ind_table) || !strcmp(t->name, m->can_feed_table));
}

/* Dense inputs exist only for Criteo integers (the parser's order: I1..I13,
 * the dense ones). Each listed one gets one weight, keyed by its slot and a
 * value no bucketized integer spells, so it is an ordinary FTRL coordinate,
 * as in the PyTorch reference's LR. */
static int lr_dense_init(ps_batch_layout *L, const ps_input_config *in, uint32_t ndense) {
    L->ndense = ndense;
    if (!ndense)
        return 0;
    L->lr_dense_key = calloc(ndense, sizeof(uint64_t));
    L->lr_dense_on = calloc(ndense, 1);
    if (!L->lr_dense_key || !L->lr_dense_on)
        return -ENOMEM;
    uint32_t k = 0;
    for (int i = 0; i < PS_CRITEO_INTS && k < ndense; i++) {
        if (!ps_input_integer_is_dense(in, i))
            continue;
        char name[8];
        snprintf(name, sizeof(name), "I%d", i + 1);
        uint16_t sid = ps_slot_id(name);
        L->lr_dense_on[k] = L->lr_slot[sid];
        L->lr_dense_key[k] = ps_fid(sid, "dense", 5);
        k++;
    }
    return 0;
}

int ps_batch_layout_init(ps_batch_layout *L, const ps_config *cfg, uint32_t ndense, char *err,
                         size_t errlen) {
    memset(L, 0, sizeof(*L));
    const ps_worker_config *w = ps_worker_config_of(cfg);
    const ps_model_config *m = &w->model;
    L->cfg = cfg;
    L->model = m;
    L->lr_table = L->can_ind_table = L->can_feed_table = -1;
    L->field_of_slot = calloc(65536, sizeof(uint16_t));
    L->lr_slot = calloc(65536, 1);
    L->can_ind_of_slot = calloc(65536, 1);
    L->can_feed_of_slot = calloc(65536, 1);
    if (!L->field_of_slot || !L->lr_slot || !L->can_ind_of_slot || !L->can_feed_of_slot)
        return -ENOMEM;
    if (m->type == PS_MODEL_LR) {
        const ps_table_config *t = ps_config_table(cfg, m->lr_table);
        L->lr_table = add_table(L, t);
        if (L->lr_table < 0)
            return -ENOMEM;
        for (size_t s = 0; s < t->nslots; s++)
            L->lr_slot[ps_slot_id(t->slots[s])] = 1;
        L->lr_bias_key = ps_fid(ps_slot_id("__bias__"), "1", 1);
        return lr_dense_init(L, &w->input, ndense);
    }
    /* Every slot of every other table is an embedding field, in config order. */
    for (uint32_t ti = 0; ti < cfg->ntables; ti++) {
        const ps_table_config *t = &cfg->tables[ti];
        if (is_can_table(m, t) || t->nslots == 0)
            continue;
        int32_t idx = add_table(L, t);
        if (idx < 0)
            return -ENOMEM;
        for (size_t s = 0; s < t->nslots; s++) {
            ps_batch_field *g = realloc(L->fields, (L->nfields + 1) * sizeof(*g));
            if (!g)
                return -ENOMEM;
            L->fields = g;
            uint16_t sid = ps_slot_id(t->slots[s]);
            g[L->nfields] = (ps_batch_field){sid, (uint32_t)idx, t->dim, L->emb_width};
            L->field_of_slot[sid] = (uint16_t)(L->nfields + 1);
            L->emb_width += t->dim;
            L->nfields++;
        }
    }
    L->ndense = ndense;
    if (ps_model_has_can(m->type)) {
        L->can_ind_table = add_table(L, ps_config_table(cfg, m->can_ind_table));
        L->can_feed_table = add_table(L, ps_config_table(cfg, m->can_feed_table));
        if (L->can_ind_table < 0 || L->can_feed_table < 0)
            return -ENOMEM;
        L->ncan_ind = m->ncan_induction;
        L->ncan_feed = m->ncan_feed;
        for (uint32_t j = 0; j < m->ncan_induction; j++)
            L->can_ind_of_slot[ps_slot_id(m->can_induction[j])] = (uint8_t)(j + 1);
        for (uint32_t j = 0; j < m->ncan_feed; j++)
            L->can_feed_of_slot[ps_slot_id(m->can_feed[j])] = (uint8_t)(j + 1);
        L->can_max_len = (uint32_t)m->can.max_len;
        size_t per = 0;
        for (size_t k = 1; k <= m->can.n_layers; k++)
            per += (m->can.layers == PS_CAN_LAYERS_ALL || k == m->can.n_layers) ? m->can.dims[k] : 0;
        if (m->can.combine == PS_CAN_COMBINE_CONCAT)
            per *= m->can.orders;
        L->can_out_width = (uint32_t)per;
        L->can_width = L->can_out_width * L->ncan_ind * L->ncan_feed;
    }
    L->x0_width = L->emb_width + L->ndense + L->can_width;
    if (L->x0_width == 0) {
        snprintf(err, errlen, "model %s has no input: no [table.*] lists slots and there are no "
                              "dense features",
                 ps_model_type_name(m->type));
        return PS_ECONFIG;
    }
    return 0;
}

void ps_batch_layout_deinit(ps_batch_layout *L) {
    free(L->tables);
    free(L->fields);
    free(L->field_of_slot);
    free(L->lr_dense_key);
    free(L->lr_dense_on);
    free(L->lr_slot);
    free(L->can_ind_of_slot);
    free(L->can_feed_of_slot);
    memset(L, 0, sizeof(*L));
}

/* ---- batches ------------------------------------------------------------------ */

static int table_reserve(ps_batch_table *t, uint32_t need) {
    if (need <= t->cap)
        return 0;
    uint32_t cap = t->cap ? t->cap : 1024;
    while (cap < need)
        cap *= 2;
    uint64_t *keys = realloc(t->keys, (size_t)cap * sizeof(uint64_t));
    if (keys)
        t->keys = keys;
    float *v = realloc(t->values, (size_t)cap * t->dim * sizeof(float));
    if (v)
        t->values = v;
    float *g = realloc(t->grads, (size_t)cap * t->dim * sizeof(float));
    if (g)
        t->grads = g;
    if (!keys || !v || !g)
        return -ENOMEM;
    /* Rehash into a table of twice the capacity (load <= 1/2). */
    uint32_t hsize = 2 * cap;
    uint64_t *hk = malloc((size_t)hsize * sizeof(uint64_t));
    uint32_t *hi = malloc((size_t)hsize * sizeof(uint32_t));
    uint32_t *hs = calloc(hsize, sizeof(uint32_t));
    if (!hk || !hi || !hs) {
        free(hk);
        free(hi);
        free(hs);
        return -ENOMEM;
    }
    free(t->hkeys);
    free(t->hidx);
    free(t->hstamp);
    t->hkeys = hk;
    t->hidx = hi;
    t->hstamp = hs;
    t->hmask = hsize - 1;
    t->stamp = 1;
    for (uint32_t i = 0; i < t->nkeys; i++) {
        uint32_t h = (uint32_t)ps_mix64(t->keys[i]) & t->hmask;
        while (t->hstamp[h] == t->stamp)
            h = (h + 1) & t->hmask;
        t->hstamp[h] = t->stamp;
        t->hkeys[h] = t->keys[i];
        t->hidx[h] = i;
    }
    t->cap = cap;
    return 0;
}

/* Index of key in the table's unique list, adding it if new. */
static int64_t table_key(ps_batch_table *t, uint64_t key) {
    if (t->nkeys + 1 > t->cap && table_reserve(t, t->nkeys + 1) < 0)
        return -ENOMEM;
    uint32_t h = (uint32_t)ps_mix64(key) & t->hmask;
    while (t->hstamp[h] == t->stamp) {
        if (t->hkeys[h] == key)
            return t->hidx[h];
        h = (h + 1) & t->hmask;
    }
    t->hstamp[h] = t->stamp;
    t->hkeys[h] = key;
    t->hidx[h] = t->nkeys;
    t->keys[t->nkeys] = key;
    return t->nkeys++;
}

int ps_batch_new(const ps_batch_layout *L, uint32_t cap, ps_batch **ret_batch) {
    ps_batch *b = calloc(1, sizeof(*b));
    if (!b)
        return -ENOMEM;
    b->L = L;
    b->cap = cap;
    b->labels = malloc(cap * sizeof(float));
    b->dense = malloc((size_t)cap * (L->ndense + 1) * sizeof(float));
    b->occ_off = malloc(((size_t)cap * L->nfields + 1) * sizeof(uint32_t));
    b->lr_off = malloc((cap + 1) * sizeof(uint32_t));
    b->can_ind = malloc((size_t)cap * (L->ncan_ind + 1) * sizeof(uint32_t));
    b->can_feed = malloc((size_t)cap * (L->ncan_feed * L->can_max_len + 1) * sizeof(uint32_t));
    b->can_len = malloc((size_t)cap * (L->ncan_feed + 1) * sizeof(uint16_t));
    b->tables = calloc(L->ntables + 1, sizeof(ps_batch_table));
    b->out_example = malloc(cap * sizeof(uint32_t));
    b->id_end = malloc(cap * sizeof(uint32_t));
    if (!b->labels || !b->dense || !b->occ_off || !b->lr_off || !b->can_ind || !b->can_feed ||
        !b->can_len || !b->tables || !b->out_example || !b->id_end) {
        ps_batch_free(b);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < L->ntables; i++) {
        b->tables[i].cfg = L->tables[i].cfg;
        b->tables[i].dim = L->tables[i].dim;
        if (table_reserve(&b->tables[i], cap) < 0) {
            ps_batch_free(b);
            return -ENOMEM;
        }
    }
    ps_batch_clear(b);
    *ret_batch = b;
    return 0;
}

void ps_batch_free(ps_batch *b) {
    if (!b)
        return;
    for (uint32_t i = 0; b->tables && i < b->L->ntables; i++) {
        ps_batch_table *t = &b->tables[i];
        free(t->keys);
        free(t->values);
        free(t->grads);
        free(t->hkeys);
        free(t->hidx);
        free(t->hstamp);
    }
    free(b->tables);
    free(b->labels);
    free(b->dense);
    free(b->occ_off);
    free(b->occ_key);
    free(b->lr_off);
    free(b->lr_key);
    free(b->lr_val);
    free(b->can_ind);
    free(b->can_feed);
    free(b->can_len);
    free(b->out_example);
    free(b->id_end);
    free(b->ids);
    free(b);
}

void ps_batch_clear(ps_batch *b) {
    b->n = 0;
    b->nocc = 0;
    b->nlr = 0;
    b->occ_off[0] = 0;
    b->lr_off[0] = 0;
    b->lines = b->malformed = 0;
    b->nout = 0;
    b->ids_len = 0;
    for (uint32_t i = 0; i < b->L->ntables; i++) {
        ps_batch_table *t = &b->tables[i];
        t->nkeys = 0;
        /* A new stamp empties the hash without touching it. */
        if (++t->stamp == 0) {
            memset(t->hstamp, 0, ((size_t)t->hmask + 1) * sizeof(uint32_t));
            t->stamp = 1;
        }
    }
}

static int push_u32(uint32_t **arr, uint32_t *n, uint32_t *cap, uint32_t v) {
    if (*n == *cap) {
        uint32_t c = *cap ? 2 * *cap : 4096;
        uint32_t *g = realloc(*arr, c * sizeof(uint32_t));
        if (!g)
            return -ENOMEM;
        *arr = g;
        *cap = c;
    }
    (*arr)[(*n)++] = v;
    return 0;
}

/* Embedding fields: occurrences grouped by field, in field order, so the
 * model reads example i's field f as occ_key[occ_off[i*F+f] .. occ_off[i*F+f+1]). */
static int add_fields(ps_batch *b, const ps_example *ex) {
    const ps_batch_layout *L = b->L;
    uint32_t F = L->nfields;
    uint32_t base = b->n * F;
    /* Count per field, then place: a counting sort over at most a few
     * hundred features. */
    uint32_t counts[F ? F : 1];
    memset(counts, 0, sizeof(counts));
    for (uint32_t k = 0; k < ex->nfeatures; k++) {
        uint16_t f = L->field_of_slot[ex->features[k].slot_id];
        if (f)
            counts[f - 1]++;
    }
    uint32_t start = b->nocc, total = 0;
    for (uint32_t f = 0; f < F; f++) {
        b->occ_off[base + f] = start + total;
        total += counts[f];
    }
    b->occ_off[base + F] = start + total;
    while (b->nocc + total > b->occ_cap) {
        uint32_t c = b->occ_cap ? 2 * b->occ_cap : 4096;
        uint32_t *g = realloc(b->occ_key, c * sizeof(uint32_t));
        if (!g)
            return -ENOMEM;
        b->occ_key = g;
        b->occ_cap = c;
    }
    uint32_t fill[F ? F : 1];
    memset(fill, 0, sizeof(fill));
    for (uint32_t k = 0; k < ex->nfeatures; k++) {
        uint16_t f = L->field_of_slot[ex->features[k].slot_id];
        if (!f)
            continue;
        const ps_batch_field *fd = &L->fields[f - 1];
        int64_t idx = table_key(&b->tables[fd->table], ex->features[k].fid);
        if (idx < 0)
            return (int)idx;
        b->occ_key[b->occ_off[base + f - 1] + fill[f - 1]++] = (uint32_t)idx;
    }
    b->nocc += total;
    return 0;
}

static int add_lr_key(ps_batch *b, uint64_t key, float val) {
    int64_t idx = table_key(&b->tables[b->L->lr_table], key);
    if (idx < 0)
        return (int)idx;
    uint32_t cap = b->lr_cap;
    if (push_u32(&b->lr_key, &b->nlr, &b->lr_cap, (uint32_t)idx) < 0)
        return -ENOMEM;
    if (b->lr_cap != cap) {
        float *g = realloc(b->lr_val, b->lr_cap * sizeof(float));
        if (!g)
            return -ENOMEM;
        b->lr_val = g;
    }
    b->lr_val[b->nlr - 1] = val;
    return 0;
}

static int add_lr(ps_batch *b, const ps_example *ex) {
    const ps_batch_layout *L = b->L;
    int r = 0;
    for (uint32_t k = 0; k < ex->nfeatures && r == 0; k++)
        if (L->lr_slot[ex->features[k].slot_id])
            r = add_lr_key(b, ex->features[k].fid, ex->features[k].value);
    /* A dense input of 0 (x <= 0 or missing) has a zero gradient: skip it. */
    for (uint32_t k = 0; k < L->ndense && k < ex->ndense && r == 0; k++)
        if (L->lr_dense_on[k] && ex->dense[k] != 0.0f)
            r = add_lr_key(b, L->lr_dense_key[k], ex->dense[k]);
    if (r == 0)
        r = add_lr_key(b, L->lr_bias_key, 1.0f);
    if (r < 0)
        return r;
    b->lr_off[b->n + 1] = b->nlr;
    return 0;
}

static int add_can(ps_batch *b, const ps_example *ex) {
    const ps_batch_layout *L = b->L;
    uint32_t *ind = b->can_ind + (size_t)b->n * L->ncan_ind;
    uint16_t *len = b->can_len + (size_t)b->n * L->ncan_feed;
    uint32_t *feed = b->can_feed + (size_t)b->n * L->ncan_feed * L->can_max_len;
    for (uint32_t j = 0; j < L->ncan_ind; j++)
        ind[j] = PS_NO_KEY;
    memset(len, 0, L->ncan_feed * sizeof(uint16_t));
    for (uint32_t k = 0; k < ex->nfeatures; k++) {
        const ps_feature *ft = &ex->features[k];
        uint8_t j = L->can_ind_of_slot[ft->slot_id];
        if (j && ind[j - 1] == PS_NO_KEY) {
            int64_t idx = table_key(&b->tables[L->can_ind_table], ft->fid);
            if (idx < 0)
                return (int)idx;
            ind[j - 1] = (uint32_t)idx;
        }
        uint8_t m = L->can_feed_of_slot[ft->slot_id];
        /* The first can_max_len items of a sequence; the rest are dropped. */
        if (m && len[m - 1] < L->can_max_len) {
            int64_t idx = table_key(&b->tables[L->can_feed_table], ft->fid);
            if (idx < 0)
                return (int)idx;
            feed[(size_t)(m - 1) * L->can_max_len + len[m - 1]++] = (uint32_t)idx;
        }
    }
    return 0;
}

int ps_batch_add(ps_batch *b, const ps_example *ex) {
    const ps_batch_layout *L = b->L;
    if (b->n == b->cap)
        return PS_ELIMIT;
    b->labels[b->n] = ex->label;
    int r = 0;
    if (L->lr_table >= 0) {
        r = add_lr(b, ex);
    } else {
        r = add_fields(b, ex);
        float *d = b->dense + (size_t)b->n * L->ndense;
        for (uint32_t k = 0; k < L->ndense; k++)
            d[k] = k < ex->ndense ? ex->dense[k] : 0.0f;
        if (r == 0 && L->ncan_ind)
            r = add_can(b, ex);
    }
    if (r < 0)
        return r;
    b->n++;
    return 0;
}

int ps_batch_note_line(ps_batch *b, bool parsed, const char *id, size_t idlen) {
    if (b->nout == b->cap)
        return PS_ELIMIT;
    if (b->ids_len + idlen > b->ids_cap) {
        size_t c = b->ids_cap ? b->ids_cap : 4096;
        while (c < b->ids_len + idlen)
            c *= 2;
        char *g = realloc(b->ids, c);
        if (!g)
            return -ENOMEM;
        b->ids = g;
        b->ids_cap = c;
    }
    if (idlen)
        memcpy(b->ids + b->ids_len, id, idlen);
    b->ids_len += idlen;
    b->id_end[b->nout] = (uint32_t)b->ids_len;
    b->out_example[b->nout++] = parsed ? b->n - 1 : PS_NO_KEY;
    return 0;
}
