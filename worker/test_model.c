/* Finite-difference checks of the whole worker model's gradient with respect
 * to the sparse rows it pulled: each key's summed gradient as backward()
 * writes it into the batch tables (after pooling a repeated slot, the dense
 * features, the CAN unit and the dense network), against central
 * differences of the batch's mean logloss. LR, DCN-V2 (both structures) and
 * DCN-V2 + CAN. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batch.h"
#include "keys.h"
#include "eval.h"
#include "model.h"
#include "wconfig.h"

static ps_config *load(const char *text) {
    char path[] = "/tmp/ctrps-model-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    ps_config *cfg;
    char err[512];
    int r = ps_config_load(path, &ps_worker_config_ext, &cfg, err, sizeof(err));
    unlink(path);
    cr_assert_eq(r, 0, "%s", err);
    return cfg;
}

static uint64_t rng = 88172645463325252ull;
static double uni(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

/* Examples over slots user, item, hist (0-4 values, repeated), with ndense
 * dense features; keys drawn from small vocabularies so keys repeat across
 * examples and the per-key sums matter. */
static void fill(ps_batch *b, uint32_t n, uint32_t ndense) {
    ps_example ex;
    ps_example_init(&ex);
    ex.features = calloc(16, sizeof(ps_feature));
    ex.dense = calloc(ndense + 1, sizeof(float));
    const char *slots[] = {"user", "item", "hist"};
    for (uint32_t i = 0; i < n; i++) {
        ex.label = uni() < 0.4 ? 1.0f : 0.0f;
        ex.nfeatures = 0;
        for (int s = 0; s < 3; s++) {
            int reps = s < 2 ? 1 : (int)(uni() * 5); /* hist: 0..4 items */
            for (int k = 0; k < reps; k++) {
                char v[16];
                snprintf(v, sizeof(v), "%d", (int)(uni() * 5));
                ps_feature *f = &ex.features[ex.nfeatures++];
                f->slot_id = ps_slot_id(slots[s]);
                f->fid = ps_fid(f->slot_id, v, strlen(v));
                f->value = 1.0f;
            }
        }
        ex.ndense = ndense;
        for (uint32_t d = 0; d < ndense; d++)
            ex.dense[d] = (float)uni();
        cr_assert_eq(ps_batch_add(b, &ex), 0);
    }
    free(ex.features);
    free(ex.dense);
}

static double batch_loss(ps_model *m, ps_batch *b) {
    float logits[64];
    cr_assert_eq(ps_model_forward(m, b, logits), 0);
    double loss = 0;
    for (uint32_t i = 0; i < b->n; i++)
        loss += ps_logloss_logit(logits[i], b->labels[i]);
    return loss / b->n;
}

static void check(const char *cfg_text, uint32_t ndense) {
    ps_config *cfg = load(cfg_text);
    ps_batch_layout L;
    char err[512];
    cr_assert_eq(ps_batch_layout_init(&L, cfg, ndense, err, sizeof(err)), 0, "%s", err);
    ps_model *m;
    cr_assert_eq(ps_model_new(&L, &m, err, sizeof(err)), 0, "%s", err);
    ps_model_init_params(m, 7);
    ps_batch *b;
    cr_assert_eq(ps_batch_new(&L, 16, &b), 0);
    fill(b, 16, ndense);
    for (uint32_t t = 0; t < L.ntables; t++) {
        ps_batch_table *bt = &b->tables[t];
        cr_assert_gt(bt->nkeys, 0, "table %s got no keys", bt->cfg->name);
        for (size_t k = 0; k < (size_t)bt->nkeys * bt->dim; k++)
            bt->values[k] = (float)(uni() - 0.5) * 0.6f;
    }
    /* Analytic: dL/dlogit = (p - y)/B, then backward. */
    float logits[64], dlogits[64];
    cr_assert_eq(ps_model_forward(m, b, logits), 0);
    for (uint32_t i = 0; i < b->n; i++)
        dlogits[i] = (float)((ps_sigmoid(logits[i]) - b->labels[i]) / b->n);
    ps_nn_params_zero_grad(ps_model_params(m));
    cr_assert_eq(ps_model_backward(m, b, dlogits), 0);
    /* Central differences on every element of every pulled row. */
    const double h = 2e-3;
    size_t checked = 0;
    for (uint32_t t = 0; t < L.ntables; t++) {
        ps_batch_table *bt = &b->tables[t];
        for (size_t k = 0; k < (size_t)bt->nkeys * bt->dim; k++) {
            float keep = bt->values[k];
            bt->values[k] = keep + (float)h;
            double lp = batch_loss(m, b);
            bt->values[k] = keep - (float)h;
            double lm = batch_loss(m, b);
            bt->values[k] = keep;
            double fd = (lp - lm) / (2 * h), an = bt->grads[k];
            cr_assert(fabs(fd - an) <= 2e-4 + 2e-2 * fabs(fd),
                      "table %s key %zu element %zu: finite difference %.6g, backward %.6g",
                      bt->cfg->name, k / bt->dim, k % bt->dim, fd, an);
            checked++;
        }
    }
    cr_assert_gt(checked, 10, "only %zu elements checked", checked);
    ps_batch_free(b);
    ps_model_free(m);
    ps_batch_layout_deinit(&L);
    ps_config_free(cfg);
}

#define CLUSTER "[cluster]\nshards = 127.0.0.1:1\n"

Test(model, lr_gradient_per_key_matches_finite_differences) {
    check(CLUSTER "[input]\nformat = slots\n[model]\ntype = lr\nbatch_size = 16\n"
                  "[table.w]\ndim = 1\nslots = user, item, hist\n",
          0);
}

Test(model, dcnv2_stacked_gradient_wrt_rows_matches_finite_differences) {
    check(CLUSTER "[input]\nformat = slots\n[model]\ntype = dcnv2\nbatch_size = 16\ncross_layers = 2\n"
                  "mlp = 8, 4\nstructure = stacked\npooling = mean\n"
                  "[table.emb]\ndim = 3\nslots = user, item, hist\n",
          2);
}

Test(model, dcnv2_moe_parallel_sum_pooling_gradient_matches_finite_differences) {
    check(CLUSTER "[input]\nformat = slots\n[model]\ntype = dcnv2\nbatch_size = 16\ncross_layers = 2\n"
                  "cross_rank = 2\ncross_experts = 2\nmlp = 6\nstructure = parallel\npooling = sum\n"
                  "[table.emb]\ndim = 3\nslots = user, item\n[table.seq]\ndim = 2\nslots = hist\n",
          1);
}

Test(model, dcnv2_can_gradient_wrt_rows_matches_finite_differences) {
    /* D_unit for 3 -> 2 -> 2 with biases: 3*2+2 + 2*2+2 = 14. */
    check(CLUSTER "[input]\nformat = slots\n[model]\ntype = dcnv2+can\nbatch_size = 16\n"
                  "cross_layers = 1\nmlp = 6\ncan_induction = item\ncan_feed = hist\n"
                  "can_ind_table = ci\ncan_feed_table = cf\ncan_dims = 3, 2, 2\ncan_orders = 2\n"
                  "can_max_len = 4\n"
                  "[table.emb]\ndim = 3\nslots = user, item, hist\n"
                  "[table.ci]\ndim = 14\ninit = normal\n[table.cf]\ndim = 3\n",
          0);
}

/* LR over Criteo with `integers = dense`: an integer slot the table lists
 * is one weight times log(1+x) (here the example's dense value), as in the
 * PyTorch reference; unlisted dense inputs and zeros add no key. */
Test(model, lr_dense_integers_are_weights_times_value) {
    const char *cfg_text = CLUSTER "[input]\nformat = criteo\nintegers = dense\n"
                                   "[model]\ntype = lr\nbatch_size = 16\n"
                                   "[table.w]\ndim = 1\nslots = user, item, hist, I1, I3\n";
    check(cfg_text, 13);
    ps_config *cfg = load(cfg_text);
    ps_batch_layout L;
    char err[512];
    cr_assert_eq(ps_batch_layout_init(&L, cfg, 13, err, sizeof(err)), 0, "%s", err);
    ps_model *m;
    cr_assert_eq(ps_model_new(&L, &m, err, sizeof(err)), 0, "%s", err);
    ps_batch *b;
    cr_assert_eq(ps_batch_new(&L, 4, &b), 0);
    ps_example ex;
    ps_example_init(&ex);
    float dense[13] = {2.0f, 5.0f, 0.0f}; /* I1 = 2 (listed), I2 = 5 (not), I3 = 0 (listed, zero) */
    ex.dense = dense;
    ex.ndense = 13;
    ex.label = 1.0f;
    cr_assert_eq(ps_batch_add(b, &ex), 0);
    ps_batch_table *t = &b->tables[L.lr_table];
    cr_assert_eq(t->nkeys, 2, "keys: I1's weight and the bias, got %u", t->nkeys);
    uint64_t i1 = ps_fid(ps_slot_id("I1"), "dense", 5);
    cr_assert_eq(t->keys[0], i1);
    cr_assert_eq(t->keys[1], L.lr_bias_key);
    t->values[0] = 0.5f;
    t->values[1] = 0.25f;
    float logit, dlogit = -0.5f;
    cr_assert_eq(ps_model_forward(m, b, &logit), 0);
    cr_assert_float_eq(logit, 2.0f * 0.5f + 0.25f, 1e-6);
    cr_assert_eq(ps_model_backward(m, b, &dlogit), 0);
    cr_assert_float_eq(t->grads[0], -1.0f, 1e-6);
    cr_assert_float_eq(t->grads[1], -0.5f, 1e-6);
    ps_batch_free(b);
    ps_model_free(m);
    ps_batch_layout_deinit(&L);
    ps_config_free(cfg);
}
