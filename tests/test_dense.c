/* Dense parameter blocks through the real server: creation from initial
 * values, server-side Adam, all-or-nothing pushes, and persistence across
 * clean and kill -9 restarts. */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "error.h"
#include "harness.h"
#include "keys.h"

static const char *body =
    "buckets = 16\n"
    "[server]\n"
    "flush_interval_ms = 3600000\n"
    "max_dense_floats = 2000\n"
    "[model]\n"
    "dense_lr = 0.01\n"
    "adam_beta1 = 0.9\n"
    "adam_beta2 = 0.999\n"
    "adam_eps = 1e-8\n"
    "[table.emb]\n"
    "dim = 4\n";

static ps_cluster cl;
static ps_client *c;

static void setup(void) {
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    char err[256];
    ps_client_options co = {.cfg = cl.cfg, .name = "dense-test"};
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
}

static void teardown(void) {
    ps_client_free(c);
    ps_cluster_teardown(&cl, NULL);
}

static void reconnect(void) {
    ps_client_free(c);
    char err[256];
    ps_client_options co = {.cfg = cl.cfg, .name = "dense-test"};
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
}

#define N 1000
static float w_a[N], w_b[7];
static const char *name_a = "mlp.0.W", *name_b = "mlp.0.b";

TestSuite(dense, .init = setup, .fini = teardown, .timeout = 120);

Test(dense, create_adam_and_persist) {
    /* The two blocks are spread by name hash; both shards may be involved. */
    for (int i = 0; i < N; i++)
        w_a[i] = (float)(i % 13) * 0.01f;
    for (int i = 0; i < 7; i++)
        w_b[i] = -0.5f + (float)i * 0.1f;
    float init_a[N];
    memcpy(init_a, w_a, sizeof(w_a));
    ps_dense_block blocks[2] = {{name_a, w_a, N}, {name_b, w_b, 7}};
    char err[512];
    cr_assert_eq(ps_client_dense_pull(c, blocks, 2, true, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(memcmp(w_a, init_a, sizeof(w_a)), 0);

    /* A second worker's different init does not replace the block. */
    float other[N];
    for (int i = 0; i < N; i++)
        other[i] = 9.0f;
    ps_dense_block ob = {name_a, other, N};
    cr_assert_eq(ps_client_dense_pull(c, &ob, 1, true, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(memcmp(other, init_a, sizeof(other)), 0);

    /* Three Adam steps, checked against a direct double-precision Adam. */
    double w[N], m[N] = {0}, v[N] = {0};
    for (int i = 0; i < N; i++)
        w[i] = init_a[i];
    float g[N];
    for (int step = 1; step <= 3; step++) {
        for (int i = 0; i < N; i++)
            g[i] = (float)(((i * 7 + step * 3) % 11) - 5) * 0.1f;
        ps_dense_block gb = {name_a, g, N};
        ps_call *call;
        cr_assert_eq(ps_client_dense_push_start(c, &gb, 1, &call), 0);
        cr_assert_eq(ps_call_wait(call, err, sizeof(err)), 0, "%s", err);
        for (int i = 0; i < N; i++) {
            m[i] = 0.9 * m[i] + 0.1 * g[i];
            v[i] = 0.999 * v[i] + 0.001 * (double)g[i] * g[i];
            double mh = m[i] / (1 - pow(0.9, step)), vh = v[i] / (1 - pow(0.999, step));
            w[i] -= 0.01 * mh / (sqrt(vh) + 1e-8);
        }
    }
    cr_assert_eq(ps_client_dense_pull(c, blocks, 2, false, err, sizeof(err)), 0, "%s", err);
    for (int i = 0; i < N; i++)
        cr_assert(fabs(w_a[i] - w[i]) <= 1e-5 + 1e-4 * fabs(w[i]), "w[%d] = %g, Adam says %g", i,
                  (double)w_a[i], w[i]);

    /* Wrong length or a NaN: refused, nothing applied (all-or-nothing). */
    float bad[8] = {1, 1, 1, 1, 1, 1, 1, NAN};
    ps_dense_block two[2] = {{name_b, bad, 7}, {name_a, g, N}};
    two[0].len = 8; /* wrong length for mlp.0.b */
    ps_call *call;
    cr_assert_eq(ps_client_dense_push_start(c, two, 2, &call), 0);
    cr_assert_neq(ps_call_wait(call, err, sizeof(err)), 0);
    ps_dense_block nanb = {name_b, bad + 1, 7};
    cr_assert_eq(ps_client_dense_push_start(c, &nanb, 1, &call), 0);
    cr_assert_neq(ps_call_wait(call, err, sizeof(err)), 0);
    cr_assert(strstr(err, "not finite"), "%s", err);
    float a2[N], b2[7];
    ps_dense_block check[2] = {{name_a, a2, N}, {name_b, b2, 7}};
    cr_assert_eq(ps_client_dense_pull(c, check, 2, false, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(memcmp(b2, w_b, sizeof(b2)), 0, "mlp.0.b changed by refused pushes");

    /* kill -9: the blocks and every Adam step come back from the push log. */
    ps_client_free(c);
    c = NULL;
    cr_assert_eq(ps_cluster_restart(&cl, 0, SIGKILL), 0);
    cr_assert_eq(ps_cluster_restart(&cl, 1, SIGKILL), 0);
    reconnect();
    float a3[N], b3[7];
    ps_dense_block after[2] = {{name_a, a3, N}, {name_b, b3, 7}};
    cr_assert_eq(ps_client_dense_pull(c, after, 2, false, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(memcmp(a3, a2, sizeof(a3)), 0);
    cr_assert_eq(memcmp(b3, b2, sizeof(b3)), 0);
    /* One more step after recovery continues Adam's step count (t = 4). */
    ps_dense_block gb = {name_a, g, N};
    cr_assert_eq(ps_client_dense_push_start(c, &gb, 1, &call), 0);
    cr_assert_eq(ps_call_wait(call, err, sizeof(err)), 0, "%s", err);
    for (int i = 0; i < N; i++) {
        m[i] = 0.9 * m[i] + 0.1 * g[i];
        v[i] = 0.999 * v[i] + 0.001 * (double)g[i] * g[i];
        w[i] -= 0.01 * (m[i] / (1 - pow(0.9, 4))) / (sqrt(v[i] / (1 - pow(0.999, 4))) + 1e-8);
    }
    /* Clean restart: written back to RocksDB, read from there. */
    ps_client_free(c);
    c = NULL;
    cr_assert_eq(ps_cluster_restart(&cl, 0, SIGTERM), 0);
    cr_assert_eq(ps_cluster_restart(&cl, 1, SIGTERM), 0);
    reconnect();
    cr_assert_eq(ps_client_dense_pull(c, after, 2, false, err, sizeof(err)), 0, "%s", err);
    for (int i = 0; i < N; i++)
        cr_assert(fabs(a3[i] - w[i]) <= 1e-5 + 1e-4 * fabs(w[i]), "after restarts w[%d] = %g, Adam says %g",
                  i, (double)a3[i], w[i]);
}

Test(dense, missing_block_without_init_is_not_found) {
    float x[3];
    ps_dense_block b = {"nope", x, 3};
    char err[512];
    cr_assert_neq(ps_client_dense_pull(c, &b, 1, false, err, sizeof(err)), 0);
    cr_assert(strstr(err, "does not exist"), "%s", err);
}

Test(dense, total_dense_floats_are_bounded) {
    /* 1,000 + 7 floats exist after the first test's blocks; this one shard
     * of two may hold any of them, so ask for more than the whole bound. */
    static float big[2001];
    ps_dense_block b = {"too.big", big, 2001};
    char err[512];
    cr_assert_eq(ps_client_dense_pull(c, &b, 1, true, err, sizeof(err)), PS_ELIMIT, "%s", err);
    cr_assert(strstr(err, "max_dense_floats"), "%s", err);
    float small[10] = {0};
    ps_dense_block s = {"small", small, 10};
    cr_assert_eq(ps_client_dense_pull(c, &s, 1, true, err, sizeof(err)), 0, "%s", err);
}
