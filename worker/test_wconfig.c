/* Tests for the worker's config sections [model] and [worker]
 * (worker/wconfig.h), loaded through ps_config_load with the worker's
 * extension: the documented defaults, every key's value reaching its field,
 * and every rejected value reported as FILE:LINE: [section] key 'k': reason
 * without touching the old value. [input] has its own tests in
 * test_parse.c. */

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "wconfig.h"

static char err[1024];
static char path[64];

static int load(const char *text, ps_config **ret_cfg) {
    snprintf(path, sizeof(path), "/tmp/ctrps-wconfig-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    err[0] = '\0';
    int r = ps_config_load(path, &ps_worker_config_ext, ret_cfg, err, sizeof(err));
    unlink(path);
    return r;
}

static ps_config *load_ok(const char *text) {
    ps_config *cfg = NULL;
    cr_assert_eq(load(text, &cfg), 0, "%s\n--- config:\n%s", err, text);
    cr_assert_not_null(cfg->worker);
    return cfg;
}

#define SHARD1 "[cluster]\nshards = 127.0.0.1:7101\n" /* lines 1-2 */

Test(wconfig, defaults) {
    ps_config *cfg = load_ok(SHARD1);
    const ps_worker_config *w = ps_worker_config_of(cfg);
    const ps_model_config *m = &w->model;
    cr_expect_eq(m->type, PS_MODEL_DCNV2);
    cr_expect_eq(m->batch_size, 512);
    cr_expect_eq(m->cross_layers, 3);
    cr_expect_eq(m->cross_rank, 0);
    cr_expect_eq(m->cross_experts, 4);
    cr_expect_eq(m->cross_activation, PS_NN_ACT_TANH);
    cr_expect(m->cross_use_c);
    cr_expect_eq(m->structure, PS_DCN_STACKED);
    cr_assert_eq(m->nmlp, 2);
    cr_expect_eq(m->mlp[0], 400);
    cr_expect_eq(m->mlp[1], 400);
    cr_expect_eq(m->pooling, PS_REDUCE_MEAN);
    cr_expect_eq(m->sparse_gradient, PS_REDUCE_MEAN);
    cr_expect_eq(m->max_in_flight, 2);
    cr_expect_eq(m->dense_refresh, 1);
    cr_expect_eq(m->seed, 1);
    cr_expect_str_eq(m->lr_table, "");
    cr_expect_eq(m->ncan_induction, 0);
    cr_expect_eq(m->ncan_feed, 0);
    cr_expect_eq(m->can.n_layers, 2);
    cr_expect_eq(m->can.dims[0], 16);
    cr_expect_eq(m->can.dims[1], 8);
    cr_expect_eq(m->can.dims[2], 4);
    cr_expect_eq(m->can.orders, 3);
    cr_expect(!m->can.order_indep);
    cr_expect(m->can.use_bias);
    cr_expect_eq(m->can.layers, PS_CAN_LAYERS_ALL);
    cr_expect_eq(m->can.combine, PS_CAN_COMBINE_CONCAT);
    cr_expect_eq(m->can.max_len, 50);
    cr_expect_eq(m->can.max_batch, 512, "max_batch follows batch_size");
    cr_expect_eq(w->progress_interval_s, 5);
    cr_expect_eq(w->timeout_ms, 60000);
    cr_expect_eq(w->outage_timeout_s, 600);
    cr_expect_eq(w->malformed_log_per_s, 5);
    cr_expect_eq(w->input.format, PS_INPUT_CRITEO);
    cr_expect_eq(cfg->dense.lr, 0.001);
    cr_expect_eq(cfg->dense.beta1, 0.9);
    cr_expect_eq(cfg->dense.beta2, 0.999);
    cr_expect_eq(cfg->dense.eps, 1e-8);
    ps_config_free(cfg);
}

Test(wconfig, every_key_reaches_its_field) {
    ps_config *cfg = load_ok(SHARD1 "[table.ind]\ndim = 32\ninit = normal\n"
                                    "[table.feed]\ndim = 8\n"
                                    "[model]\n"
                                    "type = dcnv2+can\n"
                                    "batch_size = 64\n"
                                    "cross_layers = 0\n"
                                    "cross_rank = 32\n"
                                    "cross_experts = 64\n"
                                    "cross_activation = relu\n"
                                    "cross_use_c = no\n"
                                    "structure = parallel\n"
                                    "mlp = 7, 6 ,5,,4\n"
                                    "pooling = sum\n"
                                    "sparse_gradient = sum\n"
                                    "max_in_flight = 0\n"
                                    "dense_refresh = 1000000\n"
                                    "seed = 18446744073709551615\n"
                                    "lr_table = ind\n"
                                    "can_induction = item, cat\n"
                                    "can_feed = hist\n"
                                    "can_ind_table = ind\n"
                                    "can_feed_table = feed\n"
                                    "can_dims = 4, 4\n"
                                    "can_orders = 2\n"
                                    "can_order_indep = true\n"
                                    "can_layers = last\n"
                                    "can_combine = sum\n"
                                    "can_bias = 0\n"
                                    "can_max_len = 4096\n"
                                    "dense_optimizer = adam\n"
                                    "dense_lr = 0.5\n"
                                    "adam_beta1 = 0.5\n"
                                    "adam_beta2 = 0.25\n"
                                    "adam_eps = 0\n"
                                    "[worker]\n"
                                    "progress_interval_s = 86400\n"
                                    "timeout_ms = 1\n"
                                    "outage_timeout_s = 0\n"
                                    "malformed_log_per_s = 0\n");
    const ps_worker_config *w = ps_worker_config_of(cfg);
    const ps_model_config *m = &w->model;
    cr_expect_eq(m->type, PS_MODEL_DCNV2_CAN);
    cr_expect_eq(m->batch_size, 64);
    cr_expect_eq(m->cross_layers, 0);
    cr_expect_eq(m->cross_rank, 32);
    cr_expect_eq(m->cross_experts, 64);
    cr_expect_eq(m->cross_activation, PS_NN_ACT_RELU);
    cr_expect(!m->cross_use_c);
    cr_expect_eq(m->structure, PS_DCN_PARALLEL);
    cr_assert_eq(m->nmlp, 4);
    cr_expect_eq(m->mlp[0], 7);
    cr_expect_eq(m->mlp[1], 6);
    cr_expect_eq(m->mlp[2], 5);
    cr_expect_eq(m->mlp[3], 4);
    cr_expect_eq(m->pooling, PS_REDUCE_SUM);
    cr_expect_eq(m->sparse_gradient, PS_REDUCE_SUM);
    cr_expect_eq(m->max_in_flight, 0);
    cr_expect_eq(m->dense_refresh, 1000000);
    cr_expect_eq(m->seed, UINT64_MAX);
    cr_expect_str_eq(m->lr_table, "ind");
    cr_assert_eq(m->ncan_induction, 2);
    cr_expect_str_eq(m->can_induction[0], "item");
    cr_expect_str_eq(m->can_induction[1], "cat");
    cr_assert_eq(m->ncan_feed, 1);
    cr_expect_str_eq(m->can_feed[0], "hist");
    cr_expect_str_eq(m->can_ind_table, "ind");
    cr_expect_str_eq(m->can_feed_table, "feed");
    cr_expect_eq(m->can.n_layers, 1);
    cr_expect_eq(m->can.dims[0], 4);
    cr_expect_eq(m->can.dims[1], 4);
    cr_expect_eq(m->can.orders, 2);
    cr_expect(m->can.order_indep);
    cr_expect_eq(m->can.layers, PS_CAN_LAYERS_LAST);
    cr_expect_eq(m->can.combine, PS_CAN_COMBINE_SUM);
    cr_expect(!m->can.use_bias);
    cr_expect_eq(m->can.max_len, 4096);
    cr_expect_eq(m->can.max_batch, 64);
    cr_expect_eq(cfg->dense.lr, 0.5);
    cr_expect_eq(cfg->dense.beta1, 0.5);
    cr_expect_eq(cfg->dense.beta2, 0.25);
    cr_expect_eq(cfg->dense.eps, 0.0);
    cr_expect_eq(w->progress_interval_s, 86400);
    cr_expect_eq(w->timeout_ms, 1);
    cr_expect_eq(w->outage_timeout_s, 0);
    cr_expect_eq(w->malformed_log_per_s, 0);
    ps_config_free(cfg);
}

Test(wconfig, lists_replace_and_may_be_empty) {
    ps_config *cfg = load_ok(SHARD1 "[model]\nmlp = 1, 2, 3\nmlp = 9\n"
                                    "can_induction = a, b\ncan_induction = c\n");
    const ps_model_config *m = &ps_worker_config_of(cfg)->model;
    cr_assert_eq(m->nmlp, 1, "a repeated mlp replaces the list");
    cr_expect_eq(m->mlp[0], 9);
    cr_assert_eq(m->ncan_induction, 1);
    cr_expect_str_eq(m->can_induction[0], "c");
    ps_config_free(cfg);

    cfg = load_ok(SHARD1 "[model]\nmlp =\n");
    cr_expect_eq(ps_worker_config_of(cfg)->model.nmlp, 0, "no deep tower");
    ps_config_free(cfg);

    cfg = load_ok(SHARD1 "[model]\nmlp = 1, 2, 3, 4, 5, 6, 7, 8\n");
    cr_expect_eq(ps_worker_config_of(cfg)->model.nmlp, 8);
    ps_config_free(cfg);
}

Test(wconfig, lr_finds_its_table) {
    ps_config *cfg = load_ok(SHARD1 "[table.w]\ndim = 1\n[table.e]\ndim = 8\n[model]\ntype = lr\n");
    cr_expect_str_eq(ps_worker_config_of(cfg)->model.lr_table, "w");
    ps_config_free(cfg);
}

/* Parameters hold their strings inline: Criterion runs each case in a new
 * process. */
typedef struct error_case {
    char text[200];
    int line;                    /* 0: a whole-file check, no line number */
    char needle1[64], needle2[64];
} error_case;

ParameterizedTestParameters(wconfig, errors) {
    static error_case cases[] = {
        {"[model]\nbogus = 1\n", 4, "[model] key 'bogus'", "unknown key"},
        {"[worker]\nbogus = 1\n", 4, "[worker] key 'bogus'", "unknown key"},
        {"[model]\ntype = fm\n", 4, "[model] key 'type'", "got 'fm'"},
        {"[model]\ntype = fm\n", 4, "lr, dcnv2, can", "dcnv2+can"},
        {"[model]\nbatch_size = 0\n", 4, "key 'batch_size'", "[1, 65536], got '0'"},
        {"[model]\nbatch_size = 65537\n", 4, "key 'batch_size'", "got '65537'"},
        {"[model]\nbatch_size = 1e3\n", 4, "key 'batch_size'", "expected an integer"},
        {"[model]\ncross_layers = 17\n", 4, "key 'cross_layers'", "[0, 16]"},
        {"[model]\ncross_rank = 4097\n", 4, "key 'cross_rank'", "[0, 4096]"},
        {"[model]\ncross_experts = 0\n", 4, "key 'cross_experts'", "[1, 64]"},
        {"[model]\ncross_activation = gelu\n", 4, "key 'cross_activation'", "got 'gelu'"},
        {"[model]\ncross_activation = gelu\n", 4, "tanh", "identity"},
        {"[model]\ncross_use_c = maybe\n", 4, "key 'cross_use_c'", "expected true or false"},
        {"[model]\nstructure = tree\n", 4, "key 'structure'", "stacked or parallel"},
        {"[model]\nmlp = 1, 2, 3, 4, 5, 6, 7, 8, 9\n", 4, "key 'mlp'", "at most 8"},
        {"[model]\nmlp = 400, 0\n", 4, "key 'mlp'", "[1, 65536], got '0'"},
        {"[model]\nmlp = 400, x\n", 4, "key 'mlp'", "got 'x'"},
        {"[model]\npooling = max\n", 4, "key 'pooling'", "mean or sum"},
        {"[model]\nmax_in_flight = 65\n", 4, "key 'max_in_flight'", "[0, 64]"},
        {"[model]\ndense_refresh = 0\n", 4, "key 'dense_refresh'", "[1, 1000000]"},
        {"[model]\nseed = -1\n", 4, "key 'seed'", "got '-1'"},
        {"[model]\nseed = 18446744073709551616\n", 4, "key 'seed'", "18446744073709551616"},
        {"[model]\nlr_table = "
         "t123456789012345678901234567890123456789012345678901234567890123\n",
         4, "key 'lr_table'", "63 characters"},
        {"[model]\ncan_induction = a, b, c, d, e, f, g, h, i\n", 4, "key 'can_induction'",
         "at most 8"},
        {"[model]\ncan_feed = "
         "h123456789012345678901234567890123456789012345678901234567890123\n",
         4, "key 'can_feed'", "63 characters"},
        {"[model]\ncan_dims = 16\n", 4, "key 'can_dims'", "need d0"},
        {"[model]\ncan_dims = 16, 1025\n", 4, "key 'can_dims'", "[1, 1024]"},
        {"[model]\ncan_dims = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10\n", 4, "key 'can_dims'", "at most 9"},
        {"[model]\ncan_orders = 9\n", 4, "key 'can_orders'", "[1, 8]"},
        {"[model]\ncan_max_len = 0\n", 4, "key 'can_max_len'", "[1, 4096]"},
        {"[model]\ncan_order_indep = 2\n", 4, "key 'can_order_indep'", "true or false"},
        {"[model]\ncan_bias = on\n", 4, "key 'can_bias'", "true or false"},
        {"[model]\ncan_layers = first\n", 4, "key 'can_layers'", "all or last"},
        {"[model]\ncan_combine = mean\n", 4, "key 'can_combine'", "concat or sum"},
        {"[model]\ndense_optimizer = sgd\n", 4, "key 'dense_optimizer'", "adam"},
        {"[model]\ndense_lr = 0\n", 4, "key 'dense_lr'", ""},
        {"[model]\nadam_beta1 = 1\n", 4, "key 'adam_beta1'", ""},
        {"[model]\nadam_eps = 2\n", 4, "key 'adam_eps'", ""},
        {"[worker]\nprogress_interval_s = 0\n", 4, "key 'progress_interval_s'", "[1, 86400]"},
        {"[worker]\ntimeout_ms = 86400001\n", 4, "key 'timeout_ms'", "[1, 86400000]"},
        {"[worker]\noutage_timeout_s = 604801\n", 4, "key 'outage_timeout_s'", "[0, 604800]"},
        {"[worker]\nmalformed_log_per_s = 1000001\n", 4, "key 'malformed_log_per_s'", "[0, 1000000]"},
        {"[model]\nmlp = 8\nbogus = 1\nbatch_size = 0\n", 5, "key 'bogus'", ""},
        {"[model]\ntype = lr\n", 0, "dim = 1", ""},
        {"[table.a]\ndim = 1\n[table.b]\ndim = 1\n[model]\ntype = lr\n", 0, "key 'lr_table'",
         "several"},
        {"[table.a]\ndim = 2\n[model]\ntype = lr\nlr_table = a\n", 0, "key 'lr_table'",
         "dim 2"},
        {"[model]\ntype = lr\nlr_table = nope\n", 0, "key 'lr_table'", "names no"},
        {"[model]\ntype = can\n", 0, "can_induction and can_feed", ""},
        {"[input]\nformat = slots\nintegers = dense\n", 0, "[input]", "does not apply"},
    };
    return cr_make_param_array(error_case, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(error_case *c, wconfig, errors) {
    char text[256];
    snprintf(text, sizeof(text), SHARD1 "%s", c->text);
    ps_config *cfg = NULL;
    int r = load(text, &cfg);
    cr_assert_eq(r, PS_ECONFIG, "accepted (%d): %s\n--- config:\n%s", r, err, text);
    cr_assert_null(cfg);
    char prefix[128];
    if (c->line > 0)
        snprintf(prefix, sizeof(prefix), "%s:%d: ", path, c->line);
    else
        snprintf(prefix, sizeof(prefix), "%s: ", path);
    cr_expect(!strncmp(err, prefix, strlen(prefix)), "message '%s' should start with '%s'", err,
              prefix);
    cr_expect(strstr(err, c->needle1) != NULL, "message '%s' lacks '%s'", err, c->needle1);
    cr_expect(strstr(err, c->needle2) != NULL, "message '%s' lacks '%s'", err, c->needle2);
    cr_expect_null(strchr(err, '\n'), "message is not one line: '%s'", err);
}

/* A rejected value leaves the key's default in force: visible only through
 * the extension's set(), since a failed load frees the config. */
Test(wconfig, rejected_value_keeps_the_old_one) {
    ps_config cfg = {0};
    char e[256];
    const ps_config_ext *x = &ps_worker_config_ext;
    cr_assert_eq(x->set(&cfg, "model", "mlp", "3, 2", e, sizeof(e)), 0, "%s", e);
    cr_assert_lt(x->set(&cfg, "model", "mlp", "1, 2, 3, 4, 5, 6, 7, 8, 9", e, sizeof(e)), 0);
    cr_assert_lt(x->set(&cfg, "model", "mlp", "5, 0", e, sizeof(e)), 0);
    cr_assert_lt(x->set(&cfg, "model", "can_induction", "a, b, c, d, e, f, g, h, i", e, sizeof(e)), 0);
    cr_assert_lt(x->set(&cfg, "model", "can_dims", "5", e, sizeof(e)), 0);
    cr_assert_lt(x->set(&cfg, "model", "can_dims", "5, 0", e, sizeof(e)), 0);
    cr_assert_lt(x->set(&cfg, "model", "batch_size", "0", e, sizeof(e)), 0);
    cr_assert_lt(x->set(&cfg, "model", "type", "fm", e, sizeof(e)), 0);
    cr_assert_lt(x->set(&cfg, "worker", "timeout_ms", "0", e, sizeof(e)), 0);
    const ps_worker_config *w = cfg.worker;
    cr_assert_eq(w->model.nmlp, 2);
    cr_expect_eq(w->model.mlp[0], 3);
    cr_expect_eq(w->model.mlp[1], 2);
    cr_expect_eq(w->model.ncan_induction, 0);
    cr_expect_eq(w->model.can.n_layers, 2);
    cr_expect_eq(w->model.can.dims[1], 8);
    cr_expect_eq(w->model.batch_size, 512);
    cr_expect_eq(w->model.type, PS_MODEL_DCNV2);
    cr_expect_eq(w->timeout_ms, 60000);
    cfg.worker_free(cfg.worker);
}
