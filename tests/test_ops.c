/* What an operator sees of the binaries: --version on each, and what
 * --log-level debug adds to a shard's log (connections, the bucket map,
 * write-back). Failed authentications and refused requests: test_auth.c. */
#include <criterion/criterion.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static ps_cluster cl;

static void teardown(void) { cr_expect_eq(ps_cluster_destroy(&cl), 0, "a shard reported a problem"); }

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
