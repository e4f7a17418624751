#include "wconfig.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_key.h"
#include "error.h"

static const char *const model_type_names[PS_MODEL_TYPE_COUNT] = {PS_MODEL_TYPE_MAP(PS_ENUM_STR)};

const char *ps_model_type_name(ps_model_type t) {
    return ps_enum_name(model_type_names, PS_MODEL_TYPE_COUNT, (int)t);
}

static void worker_free(void *p) {
    ps_worker_config *w = p;
    if (!w)
        return;
    ps_input_config_deinit(&w->input);
    free(w);
}

static ps_worker_config *get(ps_config *cfg) {
    if (cfg->worker)
        return cfg->worker;
    ps_worker_config *w = calloc(1, sizeof(*w));
    if (!w || ps_input_config_init(&w->input) < 0) {
        free(w);
        return NULL;
    }
    ps_model_config *m = &w->model;
    m->type = PS_MODEL_DCNV2;
    m->batch_size = 512;
    m->cross_layers = 3;
    m->cross_rank = 0;
    m->cross_experts = 4;
    m->cross_activation = PS_NN_ACT_TANH;
    m->cross_use_c = true;
    m->structure = PS_DCN_STACKED;
    m->mlp[0] = m->mlp[1] = 400;
    m->nmlp = 2;
    m->pooling = PS_REDUCE_MEAN;
    m->sparse_gradient = PS_REDUCE_MEAN;
    m->max_in_flight = 2;
    m->dense_refresh = 1;
    m->seed = 1;
    ps_can_config_default(&m->can, 512, 50);
    w->progress_interval_s = 5;
    w->timeout_ms = 60000;
    w->outage_timeout_s = 600;
    w->malformed_log_per_s = 5;
    w->compute_threads = 2;
    cfg->worker = w;
    cfg->worker_free = worker_free;
    return w;
}

static bool owns(const char *section) {
    return !strcmp(section, "input") || !strcmp(section, "model") || !strcmp(section, "worker");
}

static const char *const reduction_names[] = {[PS_REDUCE_MEAN] = "mean", [PS_REDUCE_SUM] = "sum"};

/* can_dims = d0, d1, ..., dK: K + 1 sizes into the unit's size_t dims and
 * its layer count K. */
typedef struct can_dims {
    uint32_t d[PS_CAN_MAX_LAYERS + 1];
    uint32_t n;
} can_dims;

static const ps_config_key can_dims_key =
    PS_KEY_U32S("can_dims", can_dims, d, n, 1, PS_CAN_MAX_DIM);

static int set_can_dims(const ps_config_key *k, void *obj, const char *value, char *err,
                        size_t errlen) {
    ps_can_config *c = (ps_can_config *)((char *)obj + k->offset);
    can_dims dims;
    int r = ps_config_key_parse(&can_dims_key, &dims, value, err, errlen);
    if (r < 0)
        return r;
    if (dims.n < 2) {
        snprintf(err, errlen, "need d0 and at least one layer size, e.g. 16, 8, 4");
        return PS_ECONFIG;
    }
    c->n_layers = dims.n - 1;
    for (uint32_t i = 0; i < dims.n; i++)
        c->dims[i] = dims.d[i];
    return 0;
}

#define MDL ps_model_config
static const ps_config_key model_keys[] = {
    PS_KEY_ENUM("type", MDL, type, model_type_names),
    PS_KEY_U32("batch_size", MDL, batch_size, 1, 65536),
    PS_KEY_U32("cross_layers", MDL, cross_layers, 0, 16),
    PS_KEY_U32("cross_rank", MDL, cross_rank, 0, 4096),
    PS_KEY_U32("cross_experts", MDL, cross_experts, 1, 64),
    PS_KEY_ENUM("cross_activation", MDL, cross_activation, ps_nn_act_names),
    PS_KEY_BOOL("cross_use_c", MDL, cross_use_c),
    PS_KEY_ENUM("structure", MDL, structure, ps_dcn_structure_names),
    PS_KEY_U32S("mlp", MDL, mlp, nmlp, 1, 65536),
    PS_KEY_ENUM("pooling", MDL, pooling, reduction_names),
    PS_KEY_ENUM("sparse_gradient", MDL, sparse_gradient, reduction_names),
    PS_KEY_U32("max_in_flight", MDL, max_in_flight, 0, 64),
    PS_KEY_U32("dense_refresh", MDL, dense_refresh, 1, 1000000),
    PS_KEY_U64("seed", MDL, seed, 0, UINT64_MAX),
    PS_KEY_STRING("lr_table", MDL, lr_table),
    PS_KEY_NAMES("can_induction", MDL, can_induction, ncan_induction),
    PS_KEY_NAMES("can_feed", MDL, can_feed, ncan_feed),
    PS_KEY_STRING("can_ind_table", MDL, can_ind_table),
    PS_KEY_STRING("can_feed_table", MDL, can_feed_table),
    PS_KEY_CUSTOM("can_dims", MDL, can, set_can_dims),
    PS_KEY_SIZE("can_orders", MDL, can.orders, 1, 8),
    PS_KEY_BOOL("can_order_indep", MDL, can.order_indep),
    PS_KEY_ENUM("can_layers", MDL, can.layers, ps_can_layers_names),
    PS_KEY_ENUM("can_combine", MDL, can.combine, ps_can_combine_names),
    PS_KEY_BOOL("can_bias", MDL, can.use_bias),
    PS_KEY_SIZE("can_max_len", MDL, can.max_len, 1, 4096),
};
#undef MDL

#define WRK ps_worker_config
static const ps_config_key worker_keys[] = {
    PS_KEY_U32("progress_interval_s", WRK, progress_interval_s, 1, 86400),
    PS_KEY_U32("timeout_ms", WRK, timeout_ms, 1, 86400000),
    PS_KEY_U32("outage_timeout_s", WRK, outage_timeout_s, 0, 604800),
    PS_KEY_U32("malformed_log_per_s", WRK, malformed_log_per_s, 0, 1000000),
    PS_KEY_U32("compute_threads", WRK, compute_threads, 1, 2),
};
#undef WRK

#define NKEYS(keys) (sizeof(keys) / sizeof((keys)[0]))

static int set(ps_config *cfg, const char *section, const char *key, const char *value, char *err,
               size_t errlen) {
    ps_worker_config *w = get(cfg);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (!strcmp(section, "input"))
        return ps_input_config_set(&w->input, key, value, err, errlen);
    if (!strcmp(section, "model"))
        return ps_config_key_set(model_keys, NKEYS(model_keys), &w->model, key, value, NULL, err,
                                 errlen);
    return ps_config_key_set(worker_keys, NKEYS(worker_keys), w, key, value, NULL, err, errlen);
}

static const ps_table_config *need_table(const ps_config *cfg, const char *key, const char *name,
                                         char *err, size_t errlen) {
    const ps_table_config *t = name[0] ? ps_config_table(cfg, name) : NULL;
    if (!t)
        snprintf(err, errlen, "[model] key '%s': %s", key,
                 name[0] ? "names no [table.*] section" : "required by this model type");
    return t;
}

/* Whole-file checks: the model's tables exist with the widths it needs. */
static int finish(ps_config *cfg, char *err, size_t errlen) {
    ps_worker_config *w = get(cfg);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    char reason[256];
    if (ps_input_config_check(&w->input, reason, sizeof(reason)) < 0) {
        snprintf(err, errlen, "[input]: %s", reason);
        return PS_ECONFIG;
    }
    ps_model_config *m = &w->model;
    m->can.max_batch = m->batch_size;
    if (m->type == PS_MODEL_LR) {
        const ps_table_config *lr = NULL;
        if (m->lr_table[0]) {
            lr = need_table(cfg, "lr_table", m->lr_table, err, errlen);
            if (!lr)
                return PS_ECONFIG;
        } else {
            for (uint32_t i = 0; i < cfg->ntables; i++) {
                if (cfg->tables[i].dim != 1)
                    continue;
                if (lr) {
                    snprintf(err, errlen, "[model] key 'lr_table': several dim-1 tables; name one");
                    return PS_ECONFIG;
                }
                lr = &cfg->tables[i];
            }
            if (!lr) {
                snprintf(err, errlen, "[model] type lr needs a [table.*] with dim = 1");
                return PS_ECONFIG;
            }
            snprintf(m->lr_table, sizeof(m->lr_table), "%s", lr->name);
        }
        if (lr->dim != 1) {
            snprintf(err, errlen, "[model] key 'lr_table': table %s has dim %u, lr needs 1", lr->name,
                     lr->dim);
            return PS_ECONFIG;
        }
    }
    if (ps_model_has_can(m->type)) {
        if (m->ncan_induction == 0 || m->ncan_feed == 0) {
            snprintf(err, errlen, "[model] type %s needs can_induction and can_feed slots",
                     ps_model_type_name(m->type));
            return PS_ECONFIG;
        }
        const ps_table_config *ti = need_table(cfg, "can_ind_table", m->can_ind_table, err, errlen);
        const ps_table_config *tf = ti ? need_table(cfg, "can_feed_table", m->can_feed_table, err, errlen) : NULL;
        if (!ti || !tf)
            return PS_ECONFIG;
        size_t unit = 0;
        for (size_t k = 1; k <= m->can.n_layers; k++)
            unit += m->can.dims[k - 1] * m->can.dims[k] + (m->can.use_bias ? m->can.dims[k] : 0);
        size_t ind_w = unit * (m->can.order_indep ? m->can.orders : 1) * m->ncan_feed;
        size_t feed_w = m->can.dims[0] * m->ncan_induction;
        if (ti->dim != ind_w) {
            snprintf(err, errlen,
                     "[table.%s] key 'dim': the CAN induction table needs dim %zu (D_unit %zu x %u "
                     "feed slot(s)%s), not %u",
                     ti->name, ind_w, unit, m->ncan_feed, m->can.order_indep ? " x orders" : "", ti->dim);
            return PS_ECONFIG;
        }
        if (tf->dim != feed_w) {
            snprintf(err, errlen,
                     "[table.%s] key 'dim': the CAN feed table needs dim %zu (d0 %zu x %u induction "
                     "slot(s)), not %u",
                     tf->name, feed_w, m->can.dims[0], m->ncan_induction, tf->dim);
            return PS_ECONFIG;
        }
        if (ti->init == PS_INIT_ZERO) {
            snprintf(err, errlen, "[table.%s] key 'init': CAN's induction rows must start random "
                                  "(init = normal): with zeros the unit outputs 0 and never learns "
                                  "(ALGORITHMS.md §5)",
                     ti->name);
            return PS_ECONFIG;
        }
    }
    return 0;
}

const ps_config_ext ps_worker_config_ext = {
    .owns = owns, .set = set, .finish = finish, .free = worker_free};
