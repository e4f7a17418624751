/* Two shards on loopback: pushes through the CLI and the client library,
 * then restarts (clean and kill -9) must read back bit-identical state. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "harness.h"
#include "keys.h"

#define SERVER_SYNC(flush_ms)                                                                  \
    "buckets = 64\n"                                                                            \
    "[server]\n"                                                                                \
    "durability = sync\n"                                                                       \
    "flush_interval_ms = " flush_ms "\n"

static const char *table_sections =
    "[table.emb]\n"
    "dim = 16\n"
    "optimizer = ftrl\n"
    "alpha = 0.05\n"
    "beta = 1.0\n"
    "lambda1 = 0.001\n"
    "lambda2 = 0.01\n"
    "init = normal\n"
    "init_std = 0.01\n"
    "slots = C1, C2, C3\n"
    "[table.wide]\n"
    "dim = 1\n"
    "optimizer = adagrad\n"
    "lr = 0.05\n"
    "init = zero\n"
    "slots = I1, I2\n"
    "[table.gl]\n"
    "dim = 4\n"
    "optimizer = ftrl_group_lasso\n"
    "lambda21 = 0.05\n";

static const char *body_sync;
static char body_buf[4096];

static const char *body(const char *server) {
    snprintf(body_buf, sizeof(body_buf), "%s%s", server, table_sections);
    return body_buf;
}

static ps_cluster cl;

static void teardown(void) { ps_cluster_teardown(&cl, NULL); }

static char *export_all(void) {
    char *all = NULL;
    size_t len = 0;
    const char *tables[] = {"emb", "wide", "gl"};
    for (int t = 0; t < 3; t++) {
        char *out = NULL;
        int rc = ps_run_cli(&cl, &out, "export", "--table", tables[t], "--state", NULL);
        cr_assert_eq(rc, 0, "export %s failed", tables[t]);
        size_t n = strlen(out);
        all = realloc(all, len + n + 1);
        memcpy(all + len, out, n + 1);
        len += n;
        free(out);
    }
    return all;
}

static size_t count_lines(const char *s) {
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* Deterministic pseudo-random stream for keys and gradients. */
static uint64_t rng_state = 42;
static uint64_t rnd(void) {
    rng_state += 0x9e3779b97f4a7c15ull;
    return ps_mix64(rng_state);
}
static float rnd_grad(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0 - 0.5); }

static void push_random(ps_client *c, const char *table, uint32_t dim, size_t n, int rounds) {
    uint64_t *keys = malloc(n * sizeof(*keys));
    float *grads = malloc(n * dim * sizeof(float));
    for (size_t i = 0; i < n; i++)
        keys[i] = ps_fid(ps_slot_id("C1"), (char *)&i, sizeof(i));
    for (int r = 0; r < rounds; r++) {
        for (size_t i = 0; i < n * dim; i++)
            grads[i] = rnd_grad();
        char err[512];
        uint64_t applied, dropped;
        int rc = ps_client_push(c, table, dim, keys, n, grads, &applied, &dropped, err, sizeof(err));
        cr_assert_eq(rc, 0, "push: %s", err);
        cr_assert_eq(applied, n);
        cr_assert_eq(dropped, 0);
    }
    free(keys);
    free(grads);
}

Test(cluster, restart_reads_back_identical_state, .fini = teardown, .timeout = 240) {
    body_sync = body(SERVER_SYNC("200"));
    cr_assert_eq(ps_cluster_start(&cl, 2, body_sync), 0);

    /* Through the CLI: a slot-named key and explicit fids. */
    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "push", "--slot", "C1", "--value", "68fd1e64", "--grad",
                            "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1,1.1,1.2,1.3,1.4,1.5,1.6", NULL),
                 0);
    cr_assert_str_eq(out, "applied 1 dropped_nonfinite 0\n");
    free(out);
    cr_assert_eq(ps_run_cli(&cl, &out, "push", "--table", "wide", "--fid", "7", "--grad", "0.5",
                            "--fid", "8", "--grad", "-0.25", NULL),
                 0);
    free(out);

    /* Through the client library: several rounds over keys on both shards. */
    ps_client *c;
    char err[512];
    ps_client_options co = {.cfg = cl.cfg, .name = "test"};
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    push_random(c, "emb", 16, 3000, 5);
    push_random(c, "wide", 1, 3000, 3);
    push_random(c, "gl", 4, 500, 4);
    ps_client_free(c);

    /* Both shards hold rows. */
    size_t per_shard[2] = {0, 0};
    for (uint64_t i = 0; i < 3000; i++) {
        uint64_t k = ps_fid(ps_slot_id("C1"), (char *)&i, sizeof(i));
        per_shard[ps_key_owner(k, cl.cfg->buckets, 2)]++;
    }
    cr_assert(per_shard[0] > 1000 && per_shard[1] > 1000);

    char *before = export_all();
    /* emb: 3001 rows x (w, z, n); wide 3002 x (w, acc); gl 500 x 3 */
    cr_assert_eq(count_lines(before), 3001 * 3 + 3002 * 2 + 500 * 3, "lines: %zu",
                 count_lines(before));

    /* A clean restart writes everything back and reads it again. */
    cr_assert_eq(ps_cluster_restart(&cl, 1, SIGTERM), 0);
    char *after_clean = export_all();
    cr_assert_str_eq(after_clean, before);

    /* kill -9 in sync mode: recovery replays the push log. Push more first so
     * the log holds records that were not yet written back. */
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    push_random(c, "emb", 16, 3000, 2);
    ps_client_free(c);
    char *before_kill = export_all();
    cr_assert_str_neq(before_kill, before);
    cr_assert_eq(ps_cluster_restart(&cl, 0, SIGKILL), 0);
    cr_assert_eq(ps_cluster_restart(&cl, 1, SIGKILL), 0);
    char *after_kill = export_all();
    cr_assert_str_eq(after_kill, before_kill);

    /* Lookups after the restarts: the CLI's slot hashing finds the row. */
    cr_assert_eq(ps_run_cli(&cl, &out, "lookup", "--slot", "C1", "--value", "68fd1e64", NULL), 0);
    cr_assert(strstr(out, "\tfound\t") != NULL, "%s", out);
    free(out);
    free(before);
    free(after_clean);
    free(before_kill);
    free(after_kill);
}

Test(cluster, kill9_right_after_acks_loses_nothing, .fini = teardown, .timeout = 120) {
    /* No write-back for a long time: every acknowledged push lives only in
     * memory and the push log when the shard is killed. */
    cr_assert_eq(ps_cluster_start(&cl, 1, body(SERVER_SYNC("3600000"))), 0);
    ps_client *c;
    char err[512];
    ps_client_options co = {.cfg = cl.cfg, .name = "test"};
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    push_random(c, "emb", 16, 2000, 3);
    ps_client_free(c);
    char *before = export_all(); /* export writes back; push more after it */
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    push_random(c, "emb", 16, 2000, 3);
    uint64_t keys[1] = {12345};
    float values_before[16];
    cr_assert_eq(ps_client_pull(c, "emb", 16, keys, 1, values_before, err, sizeof(err)), 0);
    ps_client_free(c);
    /* Read the state through Lookup (no write-back) before the kill. */
    uint64_t lk[2000];
    for (uint64_t i = 0; i < 2000; i++)
        lk[i] = ps_fid(ps_slot_id("C1"), (char *)&i, sizeof(i));
    static float v1[2000 * 48], v2[2000 * 48];
    static uint8_t f1[2000], f2[2000];
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_client_lookup(c, "emb", 16, 48, lk, 2000, f1, v1, v1, err, sizeof(err)), 0);
    ps_client_free(c);
    cr_assert_eq(ps_cluster_restart(&cl, 0, SIGKILL), 0);
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_client_lookup(c, "emb", 16, 48, lk, 2000, f2, v2, v2, err, sizeof(err)), 0);
    ps_client_free(c);
    cr_assert_eq(memcmp(f1, f2, sizeof(f1)), 0);
    cr_assert_eq(memcmp(v1, v2, sizeof(v1)), 0, "state differs after kill -9 and replay");
    free(before);
}

/* The metrics endpoint serves counters and gauges in Prometheus text, and
 * never a row: no key or value of the table appears in it. */
Test(cluster, metrics_endpoint_has_counters_and_no_row_data, .fini = teardown, .timeout = 60) {
    cr_assert_eq(ps_cluster_start(&cl, 1,
                                  "buckets = 16\n[server]\nmetrics_listen = 127.0.0.1:0\n"
                                  "[table.emb]\ndim = 4\ninit = normal\n"),
                 0);
    char *out;
    cr_assert_eq(ps_run_cli(&cl, &out, "pull", "--table", "emb", "--fid", "424242", NULL), 0);
    char value[32];
    cr_assert_eq(sscanf(strchr(out, '\t') + 1, "%31s", value), 1);
    free(out);
    char log_path[300];
    ps_cluster_path(&cl, "shard-0.log", log_path, sizeof(log_path));
    char *log = ps_read_file(log_path);
    const char *at = log ? strstr(log, "metrics on http://") : NULL;
    cr_assert_not_null(at, "no metrics line in %s", log);
    char url[128];
    cr_assert_eq(sscanf(at, "metrics on %127s", url), 1);
    free(log);
    /* The loop publishes every second: poll until the pull shows up. */
    char *page = NULL;
    for (int i = 0; i < 50; i++) {
        free(page);
        page = NULL;
        char *argv[] = {"/usr/bin/env", "python3", "-c",
                        "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())",
                        url, NULL};
        cr_assert_eq(ps_run(argv, &page, NULL), 0, "GET %s failed", url);
        if (strstr(page, "ctrps_requests_total{shard=\"0\",method=\"pull\"} 1\n"))
            break;
        usleep(100000);
    }
    cr_assert(strstr(page, "ctrps_requests_total{shard=\"0\",method=\"pull\"} 1\n"), "%s", page);
    cr_assert(strstr(page, "# TYPE ctrps_requests_total counter\n"), "%s", page);
    cr_assert(strstr(page, "ctrps_request_duration_seconds_count{shard=\"0\",method=\"pull\"} 1\n"),
              "%s", page);
    /* The pull created no row, and left the key's init row in memory. */
    cr_assert(strstr(page, "ctrps_table_rows{shard=\"0\",table=\"emb\"} 0\n"), "%s", page);
    cr_assert(strstr(page, "ctrps_table_memory_rows{shard=\"0\",table=\"emb\"} 1\n"), "%s", page);
    cr_assert(strstr(page, "424242") == NULL, "a key in the metrics");
    cr_assert(strstr(page, value) == NULL, "a row value (%s) in the metrics", value);
    free(page);
}
