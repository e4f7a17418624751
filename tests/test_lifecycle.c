/* Feature admission and expiry through a real shard (DESIGN.md "Feature
 * lifecycle"): a key is stored only once admitted and reads as the init
 * rule before; a row not pushed for ttl_s seconds reads as new and leaves
 * the disk (the table's RocksDB bytes shrink); the counters show it. Time is
 * the wall clock here (ttl_s = 3: long enough for the pushes to reach
 * RocksDB before they expire, even under sanitizers), so every wait is a
 * poll with a deadline, never a bare sleep. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "harness.h"
#include "keys.h"
#include "optim.h"

#define DIM 8

static const char *body = "buckets = 64\n"
                          "[server]\ndurability = sync\nflush_interval_ms = 200\n"
                          "[table.emb]\ndim = 8\noptimizer = ftrl\ninit = normal\ninit_std = 0.1\n"
                          "ttl_s = 3\nslots = C1\n"
                          "[table.gate]\ndim = 8\noptimizer = adagrad\ninit = normal\n"
                          "admit_after = 3\nslots = C2\n";

static ps_cluster cl;
static ps_client *client;

static void setup(void) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
    char err[512];
    ps_client_options co = {.cfg = cl.cfg, .name = "lifecycle"};
    cr_assert_eq(ps_client_new(&co, &client, err, sizeof(err)), 0, "%s", err);
}

static void teardown(void) {
    ps_client_free(client);
    ps_cluster_teardown(&cl, NULL);
}

TestSuite(lifecycle, .init = setup, .fini = teardown, .timeout = 180);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A numeric field of table `table` in `ctrps-cli stats` (one shard). */
static uint64_t table_stat(const char *table, const char *field) {
    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "stats", NULL), 0);
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":{", table);
    const char *t = strstr(out, pat);
    cr_assert_not_null(t, "no table %s in %s", table, out);
    snprintf(pat, sizeof(pat), "\"%s\":", field);
    const char *f = strstr(t, pat);
    cr_assert(f && f < strchr(t, '}'), "no %s for table %s in %s", field, table, out);
    uint64_t v = strtoull(f + strlen(pat), NULL, 10);
    free(out);
    return v;
}

static bool found(const char *table, uint64_t key) {
    uint8_t f;
    float w[DIM];
    char err[512];
    cr_assert_eq(ps_client_lookup(client, table, DIM, 0, &key, 1, &f, w, NULL, err, sizeof(err)), 0,
                 "%s", err);
    return f;
}

static uint64_t push(const char *table, const uint64_t *keys, size_t n) {
    float *g = malloc(n * DIM * sizeof(float));
    for (size_t i = 0; i < n * DIM; i++)
        g[i] = (float)((i % 7) + 1) / 8.0f;
    uint64_t applied, dropped;
    char err[512];
    cr_assert_eq(ps_client_push(client, table, DIM, keys, n, g, &applied, &dropped, err, sizeof(err)), 0,
                 "%s", err);
    cr_assert_eq(dropped, 0);
    free(g);
    return applied;
}

static void expect_init_rule(const char *table, uint64_t key) {
    float w[DIM], init[DIM];
    char err[512];
    cr_assert_eq(ps_client_pull(client, table, DIM, &key, 1, w, err, sizeof(err)), 0, "%s", err);
    ps_optim_init_weights(ps_config_table(cl.cfg, table), key, init);
    cr_assert(init[0] != 0, "a normal init gave zero: the check would prove nothing");
    cr_assert(!memcmp(w, init, sizeof(w)), "table %s: the key does not read as new", table);
}

Test(lifecycle, a_key_is_stored_only_once_admitted) {
    uint64_t key = ps_fid(ps_slot_id("C2"), "seen-thrice", 11);
    for (int push_no = 1; push_no <= 2; push_no++) {
        cr_assert_eq(push("gate", &key, 1), 0, "push %d of 3 must be rejected", push_no);
        cr_assert(!found("gate", key));
        expect_init_rule("gate", key);
    }
    cr_assert_eq(table_stat("gate", "rows"), 0);
    cr_assert_eq(table_stat("gate", "rejected"), 2);
    cr_assert_eq(push("gate", &key, 1), 1, "the third push admits the key");
    cr_assert(found("gate", key));
    cr_assert_eq(table_stat("gate", "admitted"), 1);
    cr_assert_eq(table_stat("gate", "rows"), 1);

    /* The filter survives a kill -9: its state is in the last write-back
     * plus the push log. A second key halfway there stays halfway. */
    uint64_t half = ps_fid(ps_slot_id("C2"), "seen-twice", 10);
    cr_assert_eq(push("gate", &half, 1), 0);
    cr_assert_eq(push("gate", &half, 1), 0);
    cr_assert_eq(ps_cluster_restart(&cl, 0, 9 /* SIGKILL */), 0);
    cr_assert(found("gate", key));
    cr_assert_eq(push("gate", &half, 1), 1, "the restarted shard forgot the key's two pushes");
}

Test(lifecycle, expired_rows_read_as_new_and_leave_the_disk) {
    enum { N = 20000, BATCH = 2000 };
    uint64_t *keys = malloc(N * sizeof(*keys));
    for (uint64_t i = 0; i < N; i++)
        keys[i] = ps_fid(ps_slot_id("C1"), (const char *)&i, sizeof(i));
    for (size_t i = 0; i < N; i += BATCH)
        cr_assert_eq(push("emb", keys + i, BATCH), BATCH);

    /* Poll: the rows die within ttl_s (plus a tick), their bytes go with the
     * next compaction, about one ttl_s later. */
    uint64_t peak = 0, bytes = 0, rows = N;
    double deadline = now_s() + 60;
    while (now_s() < deadline) {
        bytes = table_stat("emb", "rocksdb_bytes");
        rows = table_stat("emb", "rows");
        if (bytes > peak)
            peak = bytes;
        if (rows == 0 && peak > 0 && bytes < peak / 10)
            break;
        usleep(100000);
    }
    cr_assert_gt(peak, (uint64_t)N * DIM * 3 * 4 / 2, "the rows never reached RocksDB (%llu bytes)",
                 (unsigned long long)peak);
    cr_assert_eq(rows, 0, "rows not pushed for ttl_s are still counted");
    cr_assert_lt(bytes, peak / 10, "RocksDB bytes of the table did not shrink: peak %llu, now %llu",
                 (unsigned long long)peak, (unsigned long long)bytes);
    cr_assert_geq(table_stat("emb", "expired"), N);
    cr_log_info("ttl_s = 3: %d rows, table bytes %llu at the peak, %llu after expiry", N,
                (unsigned long long)peak, (unsigned long long)bytes);

    /* An expired key reads as new: Lookup does not find it, Pull serves the
     * init rule (and makes no row: a pull never does), a push makes the row
     * again. */
    cr_assert(!found("emb", keys[7]));
    expect_init_rule("emb", keys[7]);
    cr_assert(!found("emb", keys[7]), "a pull made a row");
    cr_assert_eq(push("emb", keys + 7, 1), 1);
    cr_assert(found("emb", keys[7]));
    free(keys);
}
