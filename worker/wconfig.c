#include "wconfig.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    m->pooling = PS_POOL_MEAN;
    m->max_in_flight = 2;
    m->dense_refresh = 1;
    m->seed = 1;
    ps_can_config_default(&m->can, 512, 50);
    w->progress_interval_s = 5;
    w->timeout_ms = 60000;
    w->malformed_log_per_s = 5;
    cfg->worker = w;
    cfg->worker_free = worker_free;
    return w;
}

static bool owns(const char *section) {
    return !strcmp(section, "input") || !strcmp(section, "model") || !strcmp(section, "worker");
}

static int parse_u32(const char *v, uint32_t lo, uint32_t hi, uint32_t *ret, char *err, size_t errlen) {
    uint64_t x;
    if (ps_parse_u64(v, &x) < 0 || x < lo || x > hi) {
        snprintf(err, errlen, "expected an integer in [%u, %u], got '%s'", lo, hi, v);
        return PS_ECONFIG;
    }
    *ret = (uint32_t)x;
    return 0;
}

static int parse_bool(const char *v, bool *ret, char *err, size_t errlen) {
    if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "1"))
        *ret = true;
    else if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "0"))
        *ret = false;
    else {
        snprintf(err, errlen, "expected true or false, got '%s'", v);
        return PS_ECONFIG;
    }
    return 0;
}

/* "a, b, c" into fixed-size name slots. */
static int parse_names(const char *v, char (*out)[PS_NAME_MAX], uint32_t max, uint32_t *ret_n,
                       char *err, size_t errlen) {
    uint32_t n = 0;
    const char *item;
    size_t len;
    while (ps_list_next(&v, &item, &len)) {
        if (len == 0)
            continue;
        if (n == max || len >= PS_NAME_MAX) {
            snprintf(err, errlen, "at most %u names of at most %d characters", max, PS_NAME_MAX - 1);
            return PS_ECONFIG;
        }
        memcpy(out[n], item, len);
        out[n][len] = '\0';
        n++;
    }
    *ret_n = n;
    return 0;
}

static int parse_sizes(const char *v, uint32_t *out, uint32_t max, uint32_t lo, uint32_t hi,
                       uint32_t *ret_n, char *err, size_t errlen) {
    char names[16][PS_NAME_MAX];
    uint32_t n;
    int r = parse_names(v, names, max < 16 ? max : 16, &n, err, errlen);
    if (r < 0)
        return r;
    for (uint32_t i = 0; i < n; i++)
        if ((r = parse_u32(names[i], lo, hi, &out[i], err, errlen)) < 0)
            return r;
    *ret_n = n;
    return 0;
}

static int set_model(ps_model_config *m, const char *key, const char *v, char *err, size_t errlen) {
    if (!strcmp(key, "type")) {
        int t;
        if (ps_enum_parse(model_type_names, PS_MODEL_TYPE_COUNT, v, &t) < 0) {
            snprintf(err, errlen, "expected lr, dcnv2, can or dcnv2+can, got '%s'", v);
            return PS_ECONFIG;
        }
        m->type = (ps_model_type)t;
        return 0;
    }
    if (!strcmp(key, "batch_size"))
        return parse_u32(v, 1, 65536, &m->batch_size, err, errlen);
    if (!strcmp(key, "cross_layers"))
        return parse_u32(v, 0, 16, &m->cross_layers, err, errlen);
    if (!strcmp(key, "cross_rank"))
        return parse_u32(v, 0, 4096, &m->cross_rank, err, errlen);
    if (!strcmp(key, "cross_experts"))
        return parse_u32(v, 1, 64, &m->cross_experts, err, errlen);
    if (!strcmp(key, "cross_activation")) {
        if (ps_nn_act_parse(v, &m->cross_activation) < 0) {
            snprintf(err, errlen, "expected tanh, relu or identity, got '%s'", v);
            return PS_ECONFIG;
        }
        return 0;
    }
    if (!strcmp(key, "cross_use_c"))
        return parse_bool(v, &m->cross_use_c, err, errlen);
    if (!strcmp(key, "structure")) {
        if (ps_dcn_structure_parse(v, &m->structure) < 0) {
            snprintf(err, errlen, "expected stacked or parallel, got '%s'", v);
            return PS_ECONFIG;
        }
        return 0;
    }
    if (!strcmp(key, "mlp"))
        return parse_sizes(v, m->mlp, PS_MODEL_MAX_MLP, 1, 65536, &m->nmlp, err, errlen);
    if (!strcmp(key, "pooling")) {
        if (!strcmp(v, "mean"))
            m->pooling = PS_POOL_MEAN;
        else if (!strcmp(v, "sum"))
            m->pooling = PS_POOL_SUM;
        else {
            snprintf(err, errlen, "expected mean or sum, got '%s'", v);
            return PS_ECONFIG;
        }
        return 0;
    }
    if (!strcmp(key, "max_in_flight"))
        return parse_u32(v, 0, 64, &m->max_in_flight, err, errlen);
    if (!strcmp(key, "dense_refresh"))
        return parse_u32(v, 1, 1000000, &m->dense_refresh, err, errlen);
    if (!strcmp(key, "seed")) {
        if (ps_parse_u64(v, &m->seed) < 0) {
            snprintf(err, errlen, "expected an unsigned integer, got '%s'", v);
            return PS_ECONFIG;
        }
        return 0;
    }
    if (!strcmp(key, "lr_table") || !strcmp(key, "can_ind_table") || !strcmp(key, "can_feed_table")) {
        char *dst = !strcmp(key, "lr_table") ? m->lr_table
                    : !strcmp(key, "can_ind_table") ? m->can_ind_table
                                                    : m->can_feed_table;
        if (strlen(v) >= PS_NAME_MAX) {
            snprintf(err, errlen, "table names have at most %d characters", PS_NAME_MAX - 1);
            return PS_ECONFIG;
        }
        strcpy(dst, v);
        return 0;
    }
    if (!strcmp(key, "can_induction"))
        return parse_names(v, m->can_induction, PS_MODEL_MAX_CAN_SLOTS, &m->ncan_induction, err, errlen);
    if (!strcmp(key, "can_feed"))
        return parse_names(v, m->can_feed, PS_MODEL_MAX_CAN_SLOTS, &m->ncan_feed, err, errlen);
    ps_can_config *c = &m->can;
    if (!strcmp(key, "can_dims")) {
        uint32_t dims[PS_CAN_MAX_LAYERS + 1], n;
        int r = parse_sizes(v, dims, PS_CAN_MAX_LAYERS + 1, 1, PS_CAN_MAX_DIM, &n, err, errlen);
        if (r < 0)
            return r;
        if (n < 2) {
            snprintf(err, errlen, "need d0 and at least one layer size, e.g. 16, 8, 4");
            return PS_ECONFIG;
        }
        c->n_layers = n - 1;
        for (uint32_t i = 0; i < n; i++)
            c->dims[i] = dims[i];
        return 0;
    }
    uint32_t u;
    bool b;
    int r;
    if (!strcmp(key, "can_orders")) {
        if ((r = parse_u32(v, 1, 8, &u, err, errlen)) == 0)
            c->orders = u;
        return r;
    }
    if (!strcmp(key, "can_max_len")) {
        if ((r = parse_u32(v, 1, 4096, &u, err, errlen)) == 0)
            c->max_len = u;
        return r;
    }
    if (!strcmp(key, "can_order_indep")) {
        if ((r = parse_bool(v, &b, err, errlen)) == 0)
            c->order_indep = b;
        return r;
    }
    if (!strcmp(key, "can_bias")) {
        if ((r = parse_bool(v, &b, err, errlen)) == 0)
            c->use_bias = b;
        return r;
    }
    if (!strcmp(key, "can_layers")) {
        if (ps_can_layers_parse(v, &c->layers) < 0) {
            snprintf(err, errlen, "expected all or last, got '%s'", v);
            return PS_ECONFIG;
        }
        return 0;
    }
    if (!strcmp(key, "can_combine")) {
        if (ps_can_combine_parse(v, &c->combine) < 0) {
            snprintf(err, errlen, "expected concat or sum, got '%s'", v);
            return PS_ECONFIG;
        }
        return 0;
    }
    snprintf(err, errlen, "unknown key");
    return PS_ECONFIG;
}

static int set_worker(ps_worker_config *w, const char *key, const char *v, char *err, size_t errlen) {
    if (!strcmp(key, "progress_interval_s"))
        return parse_u32(v, 1, 86400, &w->progress_interval_s, err, errlen);
    if (!strcmp(key, "timeout_ms"))
        return parse_u32(v, 1, 86400000, &w->timeout_ms, err, errlen);
    if (!strcmp(key, "malformed_log_per_s"))
        return parse_u32(v, 0, 1000000, &w->malformed_log_per_s, err, errlen);
    snprintf(err, errlen, "unknown key");
    return PS_ECONFIG;
}

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
        return set_model(&w->model, key, value, err, errlen);
    return set_worker(w, key, value, err, errlen);
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
