/* Disk trouble: when writes fail (here a file-size limit of 0 put on the
 * running shard with prlimit, which makes every write that extends a file
 * fail with EFBIG, as a full disk does), the shard turns read-only: it keeps
 * serving existing rows, refuses pushes and new rows with a clear status,
 * reports the error in Stats, and recovers once writes succeed again. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "error.h"
#include "harness.h"

static ps_cluster cl;

static void teardown(void) { ps_cluster_teardown(&cl, NULL); }

static void set_fsize(rlim_t limit) {
    /* Only the soft limit, so it can be raised again. */
    struct rlimit rl = {limit, RLIM_INFINITY};
    cr_assert_eq(prlimit(cl.pids[0], RLIMIT_FSIZE, &rl, NULL), 0, "prlimit");
}

static char *stats(void) {
    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "stats", NULL), 0);
    return out;
}

Test(disk, write_errors_make_the_shard_read_only_until_they_clear, .fini = teardown, .timeout = 120) {
    cr_assert_eq(ps_cluster_start(&cl, 1,
                                  "buckets = 16\n[server]\ndurability = sync\nflush_interval_ms = 200\n"
                                  "[table.emb]\ndim = 4\noptimizer = adagrad\nlr = 0.1\n"),
                 0);
    ps_client *c;
    char err[512];
    ps_client_options co = {.cfg = cl.cfg, .name = "disk", .timeout_ms = 3000};
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    uint64_t keys[3] = {1, 2, 3};
    float g[12] = {1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
    cr_assert_eq(ps_client_push(c, "emb", 4, keys, 3, g, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    usleep(500000); /* written back */

    set_fsize(0);
    /* A push now cannot be logged: refused (possibly after one withheld ack). */
    int r = ps_client_push(c, "emb", 4, keys, 1, g, NULL, NULL, err, sizeof(err));
    if (r == 0) /* it may have been logged before the limit bit: try again */
        r = ps_client_push(c, "emb", 4, keys, 1, g, NULL, NULL, err, sizeof(err));
    cr_assert_eq(r, PS_EREAD_ONLY, "push during the outage: %d %s", r, err);
    cr_assert(strstr(err, "read-only"), "%s", err);
    /* Existing rows are served; new ones are refused, nothing created. */
    uint8_t found[3];
    float v[12];
    cr_assert_eq(ps_client_lookup(c, "emb", 4, 0, keys, 3, found, v, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert(found[0] && found[1] && found[2]);
    cr_assert_eq(ps_client_pull(c, "emb", 4, keys, 3, v, err, sizeof(err)), 0, "%s", err);
    uint64_t fresh = 999;
    r = ps_client_pull(c, "emb", 4, &fresh, 1, v, err, sizeof(err));
    cr_assert_eq(r, PS_EREAD_ONLY, "%s", err);
    char *st = stats();
    cr_assert(strstr(st, "\"store_error\":\"\"") == NULL, "no store error reported: %s", st);
    cr_assert(strstr(st, "File too large"), "%s", st);
    free(st);

    /* The condition clears: within a few seconds pushes are accepted. */
    set_fsize(RLIM_INFINITY);
    bool ok = false;
    for (int i = 0; i < 100 && !ok; i++) {
        ok = ps_client_push(c, "emb", 4, keys, 3, g, NULL, NULL, err, sizeof(err)) == 0;
        if (!ok)
            usleep(100000);
    }
    cr_assert(ok, "the shard did not recover: %s", err);
    st = stats();
    cr_assert(strstr(st, "\"store_error\":\"\""), "%s", st);
    free(st);
    cr_assert_eq(ps_client_lookup(c, "emb", 4, 0, &fresh, 1, found, v, NULL, err, sizeof(err)), 0);
    cr_assert_eq(found[0], 0, "a refused pull created a row");
    float before[12];
    cr_assert_eq(ps_client_lookup(c, "emb", 4, 0, keys, 3, found, before, NULL, err, sizeof(err)), 0);
    ps_client_free(c);
    /* Everything reaches RocksDB: a clean restart reads the same rows. */
    cr_assert_eq(ps_cluster_restart(&cl, 0, SIGTERM), 0);
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    float after[12];
    cr_assert_eq(ps_client_lookup(c, "emb", 4, 0, keys, 3, found, after, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(memcmp(before, after, sizeof(before)), 0);
    ps_client_free(c);
}

/* Stopped while it cannot write: the shard exits with status 1 (the final
 * write-back failed), not with a crash, and nothing it acknowledged is lost:
 * the acknowledged pushes are in its push log or in RocksDB. */
Test(disk, stopping_during_an_outage_loses_no_acknowledged_push, .fini = teardown, .timeout = 60) {
    cr_assert_eq(ps_cluster_start(&cl, 1,
                                  "buckets = 16\n[server]\ndurability = sync\nflush_interval_ms = 3600000\n"
                                  "[table.emb]\ndim = 4\noptimizer = adagrad\nlr = 0.1\n"),
                 0);
    ps_client *c;
    char err[512];
    ps_client_options co = {.cfg = cl.cfg, .name = "disk", .timeout_ms = 3000};
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    uint64_t keys[2] = {10, 11};
    float g[8] = {1, 2, 3, 4, 5, 6, 7, 8}, before[8];
    uint8_t found[2];
    cr_assert_eq(ps_client_push(c, "emb", 4, keys, 2, g, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_client_lookup(c, "emb", 4, 0, keys, 2, found, before, NULL, err, sizeof(err)), 0);
    ps_client_free(c);
    set_fsize(0);
    int status = ps_cluster_stop_shard(&cl, 0, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d", status);
    cr_assert_eq(ps_cluster_start_shard(&cl, 0), 0);
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    float after[8];
    cr_assert_eq(ps_client_lookup(c, "emb", 4, 0, keys, 2, found, after, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert(found[0] && found[1]);
    cr_assert_eq(memcmp(before, after, sizeof(before)), 0);
    ps_client_free(c);
}
