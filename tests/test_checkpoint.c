/* Cluster checkpoints through the real binaries: taken mid-training,
 * restored into a fresh cluster and resumed, training ends in exactly the
 * state of the uninterrupted run (one worker, max_in_flight = 0). */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static const char *body = "buckets = 128\n"
                          "[server]\ndurability = sync\nflush_interval_ms = 500\n"
                          "[input]\nformat = criteo\nintegers = bucketize\n"
                          "[model]\ntype = lr\nbatch_size = 64\nmax_in_flight = 0\n"
                          "[table.wide]\ndim = 1\noptimizer = ftrl\nalpha = 0.05\nbeta = 0.001\n"
                          "lambda1 = 0.0001\n"
                          "slots = I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13\n"
                          "slots = C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13\n"
                          "slots = C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24, C25, C26\n";

/* The same with feature admission on: the filter's state travels in the
 * checkpoint, so the resumed run takes the decisions the uninterrupted one
 * took. */
static const char *admit_keys = "admit_after = 2\nadmit_probability = 0.8\nadmit_bloom_bits = 65536\n";

/* Rows of generated input: the checkpoint is taken once the worker has
 * pushed, and the run must outlast it by far (an LR worker trains 40,000
 * rows in 0.3 s on a quiet machine); under the sanitizers it is about 5x
 * slower, and a smaller input still does. */
#ifdef PS_TEST_UNDER_ASAN
#define CK_ROWS "60000"
#else
#define CK_ROWS "200000"
#endif

static ps_cluster cl;
static char data[64], ckroot[64];

static void setup(void) {
    snprintf(data, sizeof(data), "/tmp/ctrps-ckdata-XXXXXX");
    int fd = mkstemp(data);
    close(fd);
    snprintf(ckroot, sizeof(ckroot), "/tmp/ctrps-ckpt-XXXXXX");
    cr_assert_not_null(mkdtemp(ckroot));
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "gen", "--rows", CK_ROWS, "--seed", "33",
                    "--format", "criteo", "--out", data, NULL};
    cr_assert_eq(ps_run(argv, NULL, NULL), 0);
}

static void teardown(void) {
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf %s %s %s.truth.json", ckroot, data, data);
    cr_expect_eq(system(cmd), 0);
}

static char *run_worker(const char *resume) {
    char *argv[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cl.config, "--input", data,
                    "--log-level", "warn", resume ? "--resume" : NULL, (char *)resume, NULL};
    char *out, *err;
    cr_assert_eq(ps_run(argv, &out, &err), 0, "worker failed: %s", err);
    free(err);
    return out;
}

/* Rows pushed so far, over every shard (ctrps-cli stats). */
static unsigned long long pushed_rows(void) {
    char *st = NULL;
    cr_assert_eq(ps_run_cli(&cl, &st, "stats", NULL), 0);
    unsigned long long n = 0;
    for (const char *p = st; (p = strstr(p, "\"pushed_rows\":")); p++)
        n += strtoull(p + 14, NULL, 10);
    free(st);
    return n;
}

static char *export_state(void) {
    char *out;
    cr_assert_eq(ps_run_cli(&cl, &out, "export", "--table", "wide", "--state", NULL), 0);
    return out;
}

TestSuite(checkpoint, .init = setup, .fini = teardown, .timeout = 300);

static void resumed_matches_uninterrupted(const char *cfg_body) {
    /* The uninterrupted run. */
    cr_assert_eq(ps_cluster_start(&cl, 2, cfg_body), 0);
    free(run_worker(NULL));
    char *reference = export_state();
    if (strstr(cfg_body, "admit_after")) {
        char *st = NULL;
        cr_assert_eq(ps_run_cli(&cl, &st, "stats", NULL), 0);
        const char *r = strstr(st, "\"rejected\":");
        cr_assert(r && strtoull(r + 11, NULL, 10) > 0, "admission rejected nothing: %s", st);
        free(st);
    }
    cr_assert_eq(ps_cluster_destroy(&cl), 0);

    /* A run with a checkpoint in the middle. */
    cr_assert_eq(ps_cluster_start(&cl, 2, cfg_body), 0);
    int outp[2];
    cr_assert_eq(pipe(outp), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(outp[1], 1);
        close(outp[0]);
        execl(ps_test_bin("worker/ctrps-worker"), "ctrps-worker", "--config", cl.config, "--input", data,
              "--log-level", "warn", (char *)NULL);
        _exit(127);
    }
    close(outp[1]);
    /* The worker is training: it has pushed. */
    while (pushed_rows() == 0) {
        cr_assert_eq(waitpid(pid, NULL, WNOHANG), 0, "the worker ended before it pushed");
        usleep(20000);
    }
    char *ckpt = NULL;
    cr_assert_eq(ps_run_cli(&cl, &ckpt, "checkpoint", "--dir", ckroot, "--wait", "60", NULL), 0);
    ckpt[strcspn(ckpt, "\n")] = '\0';
    int status;
    waitpid(pid, &status, 0);
    char json[4096] = "";
    ssize_t n = read(outp[0], json, sizeof(json) - 1);
    json[n > 0 ? n : 0] = '\0';
    close(outp[0]);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    cr_assert(strstr(json, "\"checkpoints\":1"), "the worker never reached the barrier: %s", json);
    /* Training went on after the checkpoint: this cluster's state is the
     * reference state, and the checkpoint holds an earlier one. */
    char *full = export_state();
    cr_assert_str_eq(full, reference);
    free(full);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);

    char manifest[512];
    snprintf(manifest, sizeof(manifest), "%s/manifest", ckpt);
    char *m = ps_read_file(manifest);
    cr_assert_not_null(m, "no manifest at %s", manifest);
    cr_assert(strstr(m, "[worker.worker-0-of-1]"), "%s", m);
    cr_assert(strstr(m, "[shard.1]"), "%s", m);
    free(m);

    /* A fresh cluster from the checkpoint; the worker resumes where it paused. */
    cr_assert_eq(ps_cluster_start_restored(&cl, 2, cfg_body, ckroot), 0);
    char *mid = export_state();
    cr_assert_str_neq(mid, reference, "the checkpoint was taken after training ended");
    free(mid);
    char *out = run_worker(ckroot);
    cr_assert(strstr(out, "\"examples\":" CK_ROWS) == NULL, "the resumed worker trained everything again: %s", out);
    free(out);
    char *resumed = export_state();
    cr_assert_str_eq(resumed, reference, "the resumed run differs from the uninterrupted one");
    free(resumed);
    free(reference);
    free(ckpt);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
}

Test(checkpoint, restored_and_resumed_run_ends_in_the_uninterrupted_state) {
    resumed_matches_uninterrupted(body);
}

Test(checkpoint, with_admission_the_resumed_run_decides_as_the_uninterrupted_one) {
    char b[4096];
    snprintf(b, sizeof(b), "%s%s", body, admit_keys);
    resumed_matches_uninterrupted(b);
}

Test(checkpoint, list_and_prune_keep_the_newest) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
    char *a, *b, *list;
    cr_assert_eq(ps_run_cli(&cl, &a, "checkpoint", "--dir", ckroot, NULL), 0);
    sleep(1); /* names sort by time, to the second */
    cr_assert_eq(ps_run_cli(&cl, &b, "checkpoint", "--dir", ckroot, NULL), 0);
    cr_assert_eq(ps_run_cli(&cl, &list, "checkpoint", "--list", "--dir", ckroot, NULL), 0);
    cr_assert_str_eq(list, strcat(strcpy(malloc(strlen(a) + strlen(b) + 1), a), b));
    free(list);
    cr_assert_eq(ps_run_cli(&cl, &list, "checkpoint", "--prune", "--keep", "1", "--dir", ckroot, NULL), 0);
    free(list);
    cr_assert_eq(ps_run_cli(&cl, &list, "checkpoint", "--list", "--dir", ckroot, NULL), 0);
    cr_assert_str_eq(list, b);
    free(list);
    free(a);
    free(b);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
}

Test(checkpoint, periodic_checkpoints_with_retention) {
    char b[4096];
    snprintf(b, sizeof(b), "checkpoint_dir = %s\ncheckpoint_interval_s = 1\ncheckpoint_retention = 2\n%s",
             ckroot, body);
    cr_assert_eq(ps_cluster_start(&cl, 2, b), 0);
    /* Shard 0 coordinates through the addresses in its config, which hold
     * the real ports only from now on: restart the shards on them. */
    for (int i = 0; i < 2; i++)
        cr_assert_eq(ps_cluster_restart(&cl, i, SIGTERM), 0);
    /* Poll until a third checkpoint has been taken and the older ones pruned. */
    char *list = NULL;
    int n = 0;
    for (int i = 0; i < 100; i++) {
        free(list);
        cr_assert_eq(ps_run_cli(&cl, &list, "checkpoint", "--list", "--dir", ckroot, NULL), 0);
        n = 0;
        for (char *p = list; *p; p++)
            n += *p == '\n';
        char *log = NULL;
        char path[300];
        ps_cluster_path(&cl, "shard-0.log", path, sizeof(path));
        log = ps_read_file(path);
        int taken = 0;
        for (char *p = log; p && (p = strstr(p, " taken")); p++)
            taken++;
        free(log);
        /* "taken" is logged before the prune: a list between the two shows
         * one more. */
        if (taken >= 3 && n == 2)
            break;
        usleep(100000);
    }
    cr_assert_eq(n, 2, "retention 2, listed: %s", list);
    free(list);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
}
