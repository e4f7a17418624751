/* Addresses through the real binaries: shards named by a host name
 * (localhost) or an IPv6 literal ([::1]) serve a worker that trains; a shard
 * listens where [server] bind says, else on the host of its own [cluster]
 * shards entry; a name that does not resolve fails the worker with a message
 * naming it, once the outage policy gives up; a shard bound to a
 * non-loopback address without auth_secret_file warns.
 * (Names that move to a new address: tests/multihost.sh.) */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define LR_BODY                                                                                    \
    "buckets = 32\n"                                                                               \
    "[input]\nformat = criteo\nintegers = bucketize\n"                                             \
    "[model]\ntype = lr\nbatch_size = 64\n"                                                        \
    "[worker]\ntimeout_ms = 20000\n"                                                               \
    "[table.wide]\ndim = 1\noptimizer = adagrad\n"                                                  \
    "slots = I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13, C1, C2, C3, C4, C5, C6, C7\n" \
    "slots = C8, C9, C10, C11, C12, C13, C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24\n"   \
    "slots = C25, C26\n"

static ps_cluster cl;

static void teardown(void) { ps_cluster_teardown(&cl, NULL); }

static void gen_input(const char *path, const char *rows) {
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "gen", "--rows", (char *)rows, "--seed", "5",
                    "--format", "criteo", "--out", (char *)path, NULL};
    cr_assert_eq(ps_run(argv, NULL, NULL), 0, "ctrps-cli gen");
}

/* Train on 2,000 rows through the cluster's config; the worker must
 * succeed and the shards must hold rows afterwards. */
static void worker_trains(void) {
    char data[300];
    ps_cluster_path(&cl, "data.tsv", data, sizeof(data));
    gen_input(data, "2000");
    char *argv[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cl.config, "--input", data,
                    "--log-level", "debug", NULL};
    char *out = NULL, *err = NULL;
    int rc = ps_run(argv, &out, &err);
    cr_assert_eq(rc, 0, "worker failed:\n%s", err ? err : "");
    /* The debug log names the address each name resolved to. */
    cr_assert(err && strstr(err, "connected to"), "no connection in the debug log:\n%s", err);
    free(out);
    free(err);
    char *exp = NULL;
    cr_assert_eq(ps_run_cli(&cl, &exp, "export", "--table", "wide", NULL), 0);
    size_t lines = 0;
    for (const char *p = exp; p && *p; p++)
        lines += *p == '\n';
    cr_assert_gt(lines, 100, "too few rows after training: %zu", lines);
    free(exp);
}

static char *shard_log(int i) {
    char path[300], name[32];
    snprintf(name, sizeof(name), "shard-%d.log", i);
    ps_cluster_path(&cl, name, path, sizeof(path));
    return ps_read_file(path);
}

Test(hosts, shards_named_localhost_serve_a_worker, .fini = teardown, .timeout = 120) {
    cr_assert_eq(ps_cluster_start_at(&cl, "localhost", 2, LR_BODY, NULL), 0);
    worker_trains();
    char *log = shard_log(0);
    cr_assert(log && strstr(log, "listening on "), "%s", log);
    free(log);
}

static bool have_ipv6_loopback(void) {
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

Test(hosts, shards_on_ipv6_loopback_serve_a_worker, .fini = teardown, .timeout = 120) {
    if (!have_ipv6_loopback()) {
        memset(&cl, 0, sizeof(cl)); /* nothing for teardown to stop */
        cl.dir[0] = '\0';
        cr_skip_test("this machine has no IPv6 loopback (::1)");
    }
    cr_assert_eq(ps_cluster_start_at(&cl, "[::1]", 2, LR_BODY, NULL), 0);
    worker_trains();
    char *log = shard_log(1);
    cr_assert(log && strstr(log, "listening on [::1]:"), "shard 1 did not listen on ::1:\n%s", log);
    free(log);
}

/* Run one shard of a one-shard config (no --listen) and return its ready
 * file's text and its log. */
static void serve_once(const char *config_text, char **ret_ready, char **ret_log) {
    char dir[] = "/tmp/ctrps-hosts-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cfg[300], ready[300], log[300], cmd[1400];
    snprintf(cfg, sizeof(cfg), "%s/c.ini", dir);
    snprintf(ready, sizeof(ready), "%s/ready", dir);
    snprintf(log, sizeof(log), "%s/log", dir);
    cr_assert_eq(ps_write_file(cfg, config_text), 0);
    /* Start, wait for the ready file, stop with SIGTERM: a shell does it. */
    snprintf(cmd, sizeof(cmd),
             "%s --config %s --shard 0 --data-dir %s --ready-file %s 2>%s & pid=$!; "
             "for i in $(seq 3000); do [ -s %s ] && break; kill -0 $pid 2>/dev/null || break; "
             "sleep 0.02; done; kill -TERM $pid; wait $pid",
             ps_test_bin("server/ctrps-server"), cfg, dir, ready, log, ready);
    int rc = system(cmd);
    *ret_ready = ps_read_file(ready);
    *ret_log = ps_read_file(log);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "the shard did not stop cleanly:\n%s", *ret_log);
}

Test(hosts, a_shard_listens_where_bind_says_else_on_its_own_entry, .timeout = 300) {
    char *ready, *log;
    /* No bind: the host of its [cluster] shards entry (not 127.0.0.1). */
    serve_once("[cluster]\nshards = 127.0.0.3:0\n[table.t]\ndim = 1\n", &ready, &log);
    cr_assert(ready && !strncmp(ready, "127.0.0.3:", 10), "ready file '%s'; log:\n%s", ready, log);
    cr_assert_null(strstr(log, "auth_secret_file"), "a loopback shard warned:\n%s", log);
    free(ready);
    free(log);
    /* bind wins over the entry's host. */
    serve_once("[cluster]\nshards = localhost:0\n[server]\nbind = 127.0.0.2\n[table.t]\ndim = 1\n", &ready,
               &log);
    cr_assert(ready && !strncmp(ready, "127.0.0.2:", 10), "ready file '%s'; log:\n%s", ready, log);
    free(ready);
    free(log);
    /* Every interface, without a secret: a warning saying what to set. */
    serve_once("[cluster]\nshards = localhost:0\n[server]\nbind = 0.0.0.0\n[table.t]\ndim = 1\n", &ready,
               &log);
    cr_assert(ready && !strncmp(ready, "0.0.0.0:", 8), "ready file '%s'", ready);
    cr_assert(strstr(log, "warn") && strstr(log, "without [server] auth_secret_file"),
              "no warning for an open, unauthenticated shard:\n%s", log);
    free(ready);
    free(log);
}

Test(hosts, an_address_no_interface_has_fails_clearly, .timeout = 60) {
    char dir[] = "/tmp/ctrps-hosts-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cfg[300];
    snprintf(cfg, sizeof(cfg), "%s/c.ini", dir);
    /* TEST-NET-1 (RFC 5737): no interface here has it. */
    cr_assert_eq(ps_write_file(cfg, "[cluster]\nshards = 192.0.2.1:7101\n[table.t]\ndim = 1\n"), 0);
    char *argv[] = {(char *)ps_test_bin("server/ctrps-server"), "--config", cfg, "--shard", "0",
                    "--data-dir", dir, NULL};
    char *err = NULL;
    int rc = ps_run(argv, NULL, &err);
    cr_assert_eq(rc, 1, "exit %d:\n%s", rc, err);
    cr_assert(err && strstr(err, "192.0.2.1:7101") && strstr(err, "bind"),
              "the error names neither the address nor what to set:\n%s", err);
    free(err);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

/* A name that does not resolve is an outage like a refused connection:
 * retried, then reported with the resolver's reason. */
Test(hosts, an_unresolvable_shard_name_fails_the_worker_naming_it, .fini = teardown, .timeout = 120) {
    cr_assert_eq(ps_cluster_start(&cl, 1, LR_BODY "[worker]\noutage_timeout_s = 1\n"), 0);
    char cfg[300], data[300];
    ps_cluster_path(&cl, "bad.ini", cfg, sizeof(cfg));
    ps_cluster_path(&cl, "data.tsv", data, sizeof(data));
    gen_input(data, "200");
    char text[sizeof(cl.body) + 128];
    snprintf(text, sizeof(text), "[cluster]\nshards = nohost.invalid:7101\n%s", cl.body);
    cr_assert_eq(ps_write_file(cfg, text), 0);
    char *argv[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cfg, "--input", data, NULL};
    char *out = NULL, *err = NULL;
    int rc = ps_run(argv, &out, &err);
    cr_assert_eq(rc, 1, "worker exit %d:\n%s", rc, err);
    cr_assert(err && strstr(err, "cannot resolve 'nohost.invalid'"),
              "the worker's log does not name the name:\n%s", err);
    cr_assert(strstr(err, "unavailable"), "not handled as an outage:\n%s", err);
    free(out);
    free(err);
}
