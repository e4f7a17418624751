/* What an operator sees of the binaries: --version on each, and what
 * --log-level debug adds to a shard's log (connections, the bucket map,
 * write-back), and the compaction backlog in stats. Failed authentications
 * and refused requests: test_auth.c. */
#include <criterion/criterion.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "harness.h"

static ps_cluster cl;

static void teardown(void) { ps_cluster_teardown(&cl, NULL); }

/* "NAME X.Y.Z" or "NAME X.Y.Z (git DESCRIBE)", one line, exit 0; the version
 * is meson's (CTRPS_PROJECT_VERSION from the test environment), and a build
 * from a git clone names its commit. */
Test(ops, every_binary_prints_its_version, .timeout = 60) {
    static const char *const bins[][2] = {{"server/ctrps-server", "ctrps-server"},
                                          {"worker/ctrps-worker", "ctrps-worker"},
                                          {"tools/ctrps-cli", "ctrps-cli"}};
    const char *want = getenv("CTRPS_PROJECT_VERSION");
    cr_assert(want && *want, "CTRPS_PROJECT_VERSION is not set (tests/meson.build)");
    const char *git = getenv("CTRPS_SOURCE_IS_CLONE");
    regex_t re;
    cr_assert_eq(regcomp(&re, "^(ctrps-[a-z]+) ([0-9]+\\.[0-9]+\\.[0-9]+)( \\(git [^ ()]+\\))?\n$",
                         REG_EXTENDED),
                 0);
    for (size_t i = 0; i < sizeof(bins) / sizeof(bins[0]); i++) {
        char *argv[] = {(char *)ps_test_bin(bins[i][0]), "--version", NULL};
        char *out = NULL, *err = NULL;
        cr_assert_eq(ps_run(argv, &out, &err), 0, "%s --version failed: %s", bins[i][1], err);
        regmatch_t m[4];
        cr_assert_eq(regexec(&re, out, 4, m, 0), 0, "%s --version: '%s'", bins[i][1], out);
        cr_assert_eq(strncmp(out, bins[i][1], strlen(bins[i][1])), 0, "'%s' names another binary", out);
        cr_assert_eq((size_t)(m[2].rm_eo - m[2].rm_so), strlen(want), "'%s' is not version %s", out, want);
        cr_assert_eq(strncmp(out + m[2].rm_so, want, strlen(want)), 0, "'%s' is not version %s", out, want);
        if (git && !strcmp(git, "1"))
            cr_assert_neq(m[3].rm_so, -1, "built from a clone, yet no git describe: '%s'", out);
        free(out);
        free(err);
    }
    regfree(&re);
}

Test(ops, debug_logging_shows_connections_map_and_write_back, .fini = teardown, .timeout = 120) {
    cr_assert_eq(ps_cluster_start(&cl, 2, "buckets = 8\n[server]\nflush_interval_ms = 50\n"
                                          "[table.t]\ndim = 2\ninit = normal\n"), 0);
    cl.log_level = "debug";
    cr_assert_eq(ps_cluster_restart(&cl, 0, SIGTERM), 0);
    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "push", "--table", "t", "--fid", "1", "--grad", "0.5,0.5", "--fid",
                            "2", "--grad", "0.5,0.5", "--fid", "3", "--grad", "0.5,0.5", NULL),
                 0);
    free(out);
    /* A write-back comes within flush_interval_ms (the one at a stop logs
     * no debug line): wait for shard 0's, by its counter. */
    for (;;) {
        char *st = NULL;
        cr_assert_eq(ps_run_cli(&cl, &st, "stats", NULL), 0);
        const char *s0 = strstr(st, "\"shard\":0,");
        const char *f = s0 ? strstr(s0, "\"flushed_rows\":") : NULL;
        bool flushed = f && strtoull(f + 15, NULL, 10) > 0;
        free(st);
        if (flushed)
            break;
        usleep(20000);
    }
    cr_assert_eq(ps_cluster_stop_shard(&cl, 0, SIGTERM), 0);
    char path[300];
    ps_cluster_path(&cl, "shard-0.log", path, sizeof(path));
    char *log = ps_read_file(path);
    static const char *const want[] = {"debug ctrps-server: map version 1: shard 0 of 2 owns buckets 0..3 of 8",
                                       "from 127.0.0.1:", ": accepted (",
                                       ": Hello from 'ctrps-cli'", ": closed (",
                                       "debug ctrps-server: write-back: "};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        cr_assert(log && strstr(log, want[i]), "the debug log lacks \"%s\":\n%s", want[i], log);
    free(log);
}

/* Stats carries RocksDB's compaction backlog, which a benchmark (or an
 * operator) waits on before measuring reads: written through 1 MiB
 * memtables, ~5 MB of rows make more level-0 files than the compaction
 * trigger, and the backlog settles back to zero. */
static uint64_t stat_u64(const char *json, const char *name) {
    char key[96];
    snprintf(key, sizeof(key), "\"%s\":", name);
    const char *p = strstr(json, key);
    cr_assert_not_null(p, "stats lack \"%s\": %s", name, json);
    return strtoull(p + strlen(key), NULL, 10);
}

Test(ops, stats_show_the_compaction_backlog_until_it_settles, .fini = teardown, .timeout = 120) {
    cr_assert_eq(ps_cluster_start(&cl, 1, "buckets = 8\n[server]\nflush_interval_ms = 20\n"
                                          "write_buffer_mb = 1\n[table.t]\ndim = 8\n"),
                 0);
    ps_client *c;
    char err[256];
    ps_client_options co = {.cfg = cl.cfg, .name = "ops"};
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    enum { N = 4000, ROUNDS = 10 };
    uint64_t *keys = malloc(N * sizeof(*keys));
    float *g = malloc(N * 8 * sizeof(float));
    for (size_t i = 0; i < N * 8; i++)
        g[i] = 0.01f;
    uint64_t most_pending = 0, most_running = 0;
    for (int r = 0; r < ROUNDS; r++) {
        for (uint64_t i = 0; i < N; i++)
            keys[i] = (uint64_t)r * N + i + 1;
        cr_assert_eq(ps_client_push(c, "t", 8, keys, N, g, NULL, NULL, err, sizeof(err)), 0, "%s", err);
        /* Each round its own write-back: poll until nothing is dirty. */
        for (uint64_t dirty = 1; dirty;) {
            ps_shard_stats st;
            cr_assert_eq(ps_client_stats(c, 0, &st, err, sizeof(err)), 0, "%s", err);
            dirty = st.tables[0].stats.dirty_rows;
            if (st.rocksdb_pending_compaction_bytes > most_pending)
                most_pending = st.rocksdb_pending_compaction_bytes;
            if (st.rocksdb_running_compactions > most_running)
                most_running = st.rocksdb_running_compactions;
            ps_shard_stats_deinit(&st);
            if (dirty)
                usleep(10000);
        }
    }
    ps_client_free(c);
    free(keys);
    free(g);
    uint64_t pending = 1, running = 1, bytes = 0;
    for (int i = 0; i < 600 && (pending || running); i++) {
        char *st = NULL;
        cr_assert_eq(ps_run_cli(&cl, &st, "stats", NULL), 0);
        pending = stat_u64(st, "rocksdb_pending_compaction_bytes");
        running = stat_u64(st, "rocksdb_running_compactions");
        bytes = stat_u64(st, "rocksdb_bytes");
        free(st);
        usleep(50000);
    }
    cr_assert(pending == 0 && running == 0, "compaction never settled: %llu bytes pending, %llu running",
              (unsigned long long)pending, (unsigned long long)running);
    cr_assert_gt(bytes, (uint64_t)N * ROUNDS * 8 * 3 * 4 / 2, "the rows never reached RocksDB");
    cr_log_info("compaction backlog: at most %llu bytes pending and %llu compactions running, then 0",
                (unsigned long long)most_pending, (unsigned long long)most_running);
}
