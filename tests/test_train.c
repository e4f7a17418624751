/* End to end: two shards and ctrps-worker, all real binaries on loopback,
 * training on generated data. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define TABLES_LR                                                                                  \
    "[table.wide]\n"                                                                               \
    "dim = 1\n"                                                                                    \
    "optimizer = ftrl\n"                                                                           \
    "alpha = 0.05\n"                                                                               \
    "beta = 0.001\n"                                                                               \
    "lambda1 = 0.001\n"                                                                            \
    "slots = I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13\n"                             \
    "slots = C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13\n"                             \
    "slots = C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24, C25, C26\n"

static const char *body_lr = "buckets = 256\n"
                             "[input]\nformat = criteo\nintegers = bucketize\n"
                             "[model]\ntype = lr\nbatch_size = 256\nmax_in_flight = 2\n"
                             "[worker]\nprogress_interval_s = 1\n" TABLES_LR;

static const char *body_dcn = "buckets = 256\n"
                              "[input]\nformat = criteo\nintegers = dense\n"
                              "[model]\ntype = dcnv2\nbatch_size = 256\ncross_layers = 2\n"
                              "mlp = 64, 32\ndense_lr = 0.002\nmax_in_flight = 2\n"
                              "[table.emb]\ndim = 8\noptimizer = adagrad\nlr = 0.1\n"
                              "initial_accumulator_value = 1e-6\ninit = normal\n"
                              "slots = C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13\n"
                              "slots = C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24\n"
                              "slots = C25, C26\n";

static ps_cluster cl;

static void teardown(void) { ps_cluster_teardown(&cl, NULL); }

static void gen(const char *name, const char *rows, const char *seed, const char *format) {
    char path[300];
    ps_cluster_path(&cl, name, path, sizeof(path));
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "gen", "--rows", (char *)rows, "--seed",
                    (char *)seed, "--format", (char *)format, "--out", path, NULL};
    cr_assert_eq(ps_run(argv, NULL, NULL), 0, "gen failed");
}

/* Run the worker; returns its exit code, stdout and stderr. */
static int worker(char **out, char **err, ...) {
    char *argv[32];
    int n = 0;
    argv[n++] = (char *)ps_test_bin("worker/ctrps-worker");
    argv[n++] = "--config";
    argv[n++] = cl.config;
    va_list ap;
    va_start(ap, err);
    char *a;
    while ((a = va_arg(ap, char *)) && n < 31)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return ps_run(argv, out, err);
}

/* Where key's value starts in text, the key between pre and post ("\"" and
 * "\":" in the JSON result, " " and "=" in progress lines); NULL without. */
static const char *value_of(const char *text, const char *pre, const char *key, const char *post) {
    char pat[64];
    snprintf(pat, sizeof(pat), "%s%s%s", pre, key, post);
    const char *p = strstr(text, pat);
    return p ? p + strlen(pat) : NULL;
}

static double number_of(const char *text, const char *pre, const char *key, const char *post) {
    const char *p = value_of(text, pre, key, post);
    cr_assert_not_null(p, "no %s in %s", key, text);
    return strtod(p, NULL);
}

static double json_field(const char *json, const char *key) { return number_of(json, "\"", key, "\":"); }

Test(train, lr_learns_and_lookup_finds_trained_rows, .fini = teardown, .timeout = 300) {
    cr_assert_eq(ps_cluster_start(&cl, 2, body_lr), 0);
    gen("data.tsv", "60000", "7", "criteo");
    char data[300];
    ps_cluster_path(&cl, "data.tsv", data, sizeof(data));
    /* The last 6,000 rows as holdout, the rest to train. */
    char cmd[2048], train[300], hold[300];
    ps_cluster_path(&cl, "train.tsv", train, sizeof(train));
    ps_cluster_path(&cl, "hold.tsv", hold, sizeof(hold));
    snprintf(cmd, sizeof(cmd), "head -n 54000 %s > %s && tail -n 6000 %s > %s", data, train, data, hold);
    cr_assert_eq(system(cmd), 0);
    char *out, *err;
    int rc = worker(&out, &err, "--input", train, "--holdout", hold, NULL);
    cr_assert_eq(rc, 0, "worker failed: %s", err);
    cr_assert_eq(json_field(out, "examples"), 54000);
    double auc = json_field(out, "auc"), hauc = json_field(out, "holdout_auc");
    double cal = json_field(out, "calibration");
    /* Random scoring is 0.5; the generator's main effects alone reach about
     * 0.75 (its truth file). 54k rows of LR land near 0.68. */
    cr_assert_gt(auc, 0.62, "progressive AUC %g", auc);
    cr_assert_gt(hauc, 0.64, "holdout AUC %g", hauc);
    cr_assert(cal > 0.8 && cal < 1.2, "calibration %g", cal);
    cr_assert(strstr(err, "progress examples="), "no progress line in: %s", err);
    free(out);
    free(err);

    /* The first row's C1 value was trained: its weight moved from 0. */
    FILE *f = fopen(train, "r");
    char line[4096];
    cr_assert_not_null(fgets(line, sizeof(line), f));
    fclose(f);
    char *field = line;
    for (int i = 0; i < 14; i++)
        field = strchr(field, '\t') + 1;
    *strchr(field, '\t') = '\0';
    cr_assert_eq(ps_run_cli(&cl, &out, "lookup", "--slot", "C1", "--value", field, NULL), 0);
    cr_assert(strstr(out, "\tfound\t"), "%s", out);
    double w = strtod(strrchr(out, '\t') + 1, NULL);
    cr_assert_neq(w, 0.0, "trained weight still at its initial 0: %s", out);
    free(out);
}

Test(train, dcnv2_learns_on_generated_data, .fini = teardown, .timeout = 600) {
    cr_assert_eq(ps_cluster_start(&cl, 2, body_dcn), 0);
    gen("data.tsv", "40000", "3", "criteo");
    char data[300];
    ps_cluster_path(&cl, "data.tsv", data, sizeof(data));
    char *out, *err;
    int rc = worker(&out, &err, "--input", data, NULL);
    cr_assert_eq(rc, 0, "worker failed: %s", err);
    double auc = json_field(out, "auc");
    cr_assert_gt(auc, 0.60, "DCN-V2 progressive AUC %g", auc);
    free(out);
    free(err);
    /* The dense model lives on the shards: a second worker continues from
     * it instead of starting over, and scores better from its first batch. */
    rc = worker(&out, &err, "--input", data, "--max-examples", "5120", NULL);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_gt(json_field(out, "auc"), auc, "a second pass should start from the trained model");
    free(out);
    free(err);
}

/* Train DCN-V2 on data with compute_threads = ct on a fresh cluster, then
 * export the model (with its optimizer state) to dir; the worker's JSON
 * result line in *ret_out. */
static void train_and_export(int ct, const char *data, const char *dir, char **ret_out) {
    char body[2048];
    snprintf(body, sizeof(body), "%s[worker]\ncompute_threads = %d\n", body_dcn, ct);
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    char *err;
    int rc = worker(ret_out, &err, "--input", data, NULL);
    cr_assert_eq(rc, 0, "worker (compute_threads = %d) failed: %s", ct, err);
    free(err);
    char *out;
    rc = ps_run_cli(&cl, &out, "export-model", "--dir", dir, "--state", NULL);
    cr_assert_eq(rc, 0, "export-model: %s", out);
    free(out);
    cr_assert_eq(ps_cluster_destroy(&cl), 0, "a shard reported a problem");
}

/* Two compute threads compute two batches at once but send the same calls
 * in the same order as one: the same model, bit for bit, and the same
 * progressive metrics. */
Test(train, two_compute_threads_train_the_same_model_as_one, .timeout = 600) {
    char tmp[] = "/tmp/ctrps-ct-XXXXXX", data[300], one[300], two[300];
    cr_assert_not_null(mkdtemp(tmp));
    snprintf(data, sizeof(data), "%s/data.tsv", tmp);
    snprintf(one, sizeof(one), "%s/one", tmp);
    snprintf(two, sizeof(two), "%s/two", tmp);
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "gen", "--rows", "30000", "--seed", "5",
                    "--format", "criteo", "--out", data, NULL};
    cr_assert_eq(ps_run(argv, NULL, NULL), 0, "gen failed");
    char *out1, *out2;
    train_and_export(1, data, one, &out1);
    train_and_export(2, data, two, &out2);
    const char *keys[] = {"auc", "logloss", "calibration", "examples"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *a = value_of(out1, "\"", keys[i], "\":"), *b = value_of(out2, "\"", keys[i], "\":");
        cr_assert(a && b, "no %s in %s or %s", keys[i], out1, out2);
        size_t la = strcspn(a, ",}"), lb = strcspn(b, ",}");
        cr_assert(la == lb && !memcmp(a, b, la), "%s: %.*s with one compute thread, %.*s with two",
                  keys[i], (int)la, a, (int)lb, b);
    }
    /* Every array of the export: the embeddings, their optimizer state and
     * each dense block. */
    DIR *d = opendir(one);
    cr_assert_not_null(d);
    int arrays = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 4 || strcmp(e->d_name + n - 4, ".npy"))
            continue;
        char pa[600], pb[600];
        snprintf(pa, sizeof(pa), "%s/%s", one, e->d_name);
        snprintf(pb, sizeof(pb), "%s/%s", two, e->d_name);
        size_t na, nb;
        char *fa = ps_read_file_len(pa, &na), *fb = ps_read_file_len(pb, &nb);
        cr_assert(fa && fb, "%s missing from one of the exports", e->d_name);
        cr_assert(na == nb && !memcmp(fa, fb, na), "%s differs between one and two compute threads",
                  e->d_name);
        free(fa);
        free(fb);
        arrays++;
    }
    closedir(d);
    /* emb fids, weights and state; W and b of 2 cross layers and 2 MLP
     * layers; the output layer. */
    cr_assert_geq(arrays, 10, "only %d arrays exported", arrays);
    free(out1);
    free(out2);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmp);
    cr_assert_eq(system(cmd), 0);
}

Test(train, malformed_lines_are_counted_and_named, .fini = teardown, .timeout = 120) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body_lr), 0);
    gen("data.tsv", "3000", "5", "criteo");
    char data[300], bad[300], cmd[2048];
    ps_cluster_path(&cl, "data.tsv", data, sizeof(data));
    ps_cluster_path(&cl, "bad.tsv", bad, sizeof(bad));
    /* Line 2: too few fields; line 5: a label that is not 0/1; then binary. */
    snprintf(cmd, sizeof(cmd),
             "(head -n 1 %s; printf '1\\t2\\t3\\n'; sed -n 2,3p %s; printf 'x'; sed -n 4p %s | cut -c2-; "
             "printf '\\377\\376\\n'; tail -n +5 %s) > %s",
             data, data, data, data, bad);
    cr_assert_eq(system(cmd), 0);
    char *out, *err;
    int rc = worker(&out, &err, "--input", bad, NULL);
    cr_assert_eq(rc, 0, "a malformed line must never be fatal: %s", err);
    cr_assert_eq(json_field(out, "malformed"), 3, "%s", out);
    cr_assert_eq(json_field(out, "examples"), 3000 - 1, "%s", out);
    cr_assert(strstr(err, "bad.tsv:2: skipped"), "%s", err);
    cr_assert(strstr(err, "bad.tsv:5: skipped"), "%s", err);
    free(out);
    free(err);
}

Test(train, workers_share_the_input, .fini = teardown, .timeout = 120) {
    cr_assert_eq(ps_cluster_start(&cl, 2, body_lr), 0);
    gen("data.tsv", "5000", "9", "criteo");
    char data[300];
    ps_cluster_path(&cl, "data.tsv", data, sizeof(data));
    double total = 0;
    for (int w = 0; w < 3; w++) {
        char idx[8];
        snprintf(idx, sizeof(idx), "%d", w);
        char *out, *err;
        cr_assert_eq(worker(&out, &err, "--input", data, "--worker-index", idx, "--num-workers", "3",
                            NULL),
                     0, "%s", err);
        double n = json_field(out, "examples");
        cr_assert(n == 1666 || n == 1667, "worker %d took %g lines", w, n);
        total += n;
        free(out);
        free(err);
    }
    cr_assert_eq(total, 5000);
}

Test(train, follow_mode_trains_appended_lines_until_sigterm, .fini = teardown, .timeout = 120) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body_lr), 0);
    gen("data.tsv", "4000", "11", "criteo");
    char data[300], live[300], cmd[2048];
    ps_cluster_path(&cl, "data.tsv", data, sizeof(data));
    ps_cluster_path(&cl, "live.tsv", live, sizeof(live));
    snprintf(cmd, sizeof(cmd), "head -n 1000 %s > %s", data, live);
    cr_assert_eq(system(cmd), 0);
    int outp[2];
    cr_assert_eq(pipe(outp), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(outp[1], 1);
        close(outp[0]);
        execl(ps_test_bin("worker/ctrps-worker"), "ctrps-worker", "--config", cl.config, "--input",
              live, "--follow", "--log-level", "warn", (char *)NULL);
        _exit(127);
    }
    close(outp[1]);
    /* Append the rest while it runs, then stop it. */
    usleep(300000);
    snprintf(cmd, sizeof(cmd), "tail -n +1001 %s >> %s", data, live);
    cr_assert_eq(system(cmd), 0);
    /* Poll the shard until the worker has pushed everything, then SIGTERM. */
    for (int i = 0; i < 200; i++) {
        char *out = NULL;
        ps_run_cli(&cl, &out, "stats", NULL);
        bool seen_all = out && strstr(out, "\"requests_push\":") &&
                        strtod(strstr(out, "\"requests_push\":") + 16, NULL) >= 4000.0 / 256;
        free(out);
        if (seen_all)
            break;
        usleep(50000);
    }
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
    char buf[4096] = "";
    ssize_t n = read(outp[0], buf, sizeof(buf) - 1);
    close(outp[0]);
    buf[n > 0 ? n : 0] = '\0';
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker status %d", status);
    cr_assert_eq(json_field(buf, "examples"), 4000, "%s", buf);
}

/* The last line starting with "progress " in text (malloc'ed), or NULL. */
static char *last_progress_line(const char *text) {
    const char *last = NULL;
    for (const char *p = text; (p = strstr(p, "progress ")); p++)
        if (p == text || p[-1] == '\n')
            last = p;
    if (!last)
        return NULL;
    return strndup(last, strcspn(last, "\n"));
}

static bool has_field(const char *line, const char *key) { return value_of(line, " ", key, "=") != NULL; }

static double field_value(const char *line, const char *key) { return number_of(line, " ", key, "="); }

Test(train, progress_lines_carry_time_pass_rate_and_eta, .fini = teardown, .timeout = 180) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body_lr), 0);
    gen("data.tsv", "3000", "13", "criteo");
    char data[300];
    ps_cluster_path(&cl, "data.tsv", data, sizeof(data));
    char *out, *err;
    cr_assert_eq(worker(&out, &err, "--input", data, "--passes", "3", NULL), 0, "%s", err);
    char *line = last_progress_line(err);
    cr_assert_not_null(line, "no progress line in: %s", err);
    /* The old fields first, in their order. */
    cr_assert(strstr(line, "progress examples=9000 examples_per_sec="), "%s", line);
    cr_assert_eq(field_value(line, "pass"), 3, "%s", line);
    cr_assert_gt(field_value(line, "interval_examples_per_sec"), 0, "%s", line);
    /* Files read a known number of times: an ETA, and at the end none left. */
    cr_assert_eq(field_value(line, "eta_s"), 0, "%s", line);
    const char *t = strstr(line, " time=");
    cr_assert_not_null(t, "%s", line);
    int Y, M, D, h, m, s;
    char z;
    cr_assert_eq(sscanf(t, " time=%4d-%2d-%2dT%2d:%2d:%2d%c", &Y, &M, &D, &h, &m, &s, &z), 7, "%s", line);
    cr_assert(Y >= 2024 && M >= 1 && M <= 12 && D >= 1 && D <= 31 && h < 24 && z == 'Z', "%s", line);
    free(line);
    free(out);
    free(err);

    /* From stdin the end is unknown: no ETA. */
    char errpath[300], cmd[2048];
    ps_cluster_path(&cl, "stdin.err", errpath, sizeof(errpath));
    snprintf(cmd, sizeof(cmd), "%s --config %s --input - < %s > /dev/null 2> %s",
             ps_test_bin("worker/ctrps-worker"), cl.config, data, errpath);
    cr_assert_eq(system(cmd), 0);
    err = ps_read_file(errpath);
    cr_assert_not_null(err);
    line = last_progress_line(err);
    cr_assert_not_null(line, "no progress line in: %s", err);
    cr_assert_eq(field_value(line, "pass"), 1, "%s", line);
    cr_assert(!has_field(line, "eta_s"), "%s", line);
    cr_assert(has_field(line, "time"), "%s", line);
    free(line);
    free(err);
}

/* The JSON result's "error" string (malloc'ed, escapes left as they are), or
 * NULL without one. */
static char *json_error(const char *json) {
    const char *p = value_of(json, "\"", "error", "\":\"");
    if (!p)
        return NULL;
    size_t n = 0;
    while (p[n] && !(p[n] == '"' && (n == 0 || p[n - 1] != '\\')))
        n++;
    return strndup(p, n);
}

Test(train, input_with_no_valid_line_exits_1_naming_format_and_line, .fini = teardown, .timeout = 120) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body_lr), 0);
    char bad[300], cmd[1024];
    ps_cluster_path(&cl, "bad.tsv", bad, sizeof(bad));
    /* Comma-separated rows handed to the TSV parser: every one malformed. */
    snprintf(cmd, sizeof(cmd), "for i in $(seq 300); do echo \"0,1,2,3,a,b,c\"; done > %s", bad);
    cr_assert_eq(system(cmd), 0);
    char *out, *err;
    int rc = worker(&out, &err, "--input", bad, NULL);
    cr_assert_eq(rc, 1, "rc %d: %s", rc, err);
    cr_assert(strstr(err, "valid criteo"), "the message names the format: %s", err);
    cr_assert(strstr(err, "bad.tsv:1: "), "the message names the first bad line: %s", err);
    cr_assert(strstr(err, "300 malformed"), "%s", err);
    /* The result line is still printed, with the same message. */
    char *msg = json_error(out);
    cr_assert_not_null(msg, "no error in the result line: %s", out);
    cr_assert(strstr(msg, "valid criteo") && strstr(msg, "bad.tsv:1: "), "%s", msg);
    /* The reason after FILE:LINE: is the parser's, not empty. */
    cr_assert_gt(strlen(strstr(msg, "bad.tsv:1: ") + strlen("bad.tsv:1: ")), 3, "%s", msg);
    cr_assert_eq(json_field(out, "examples"), 0, "%s", out);
    cr_assert_eq(json_field(out, "malformed"), 300, "%s", out);
    free(msg);
    free(out);
    free(err);
}

/* Run argv: it must exit want_rc, saying want on stderr and in the "error"
 * of its JSON result line. Returns that line (caller frees). */
static char *expect_error_exit(char *const argv[], int want_rc, const char *want) {
    char *out, *err;
    int rc = ps_run(argv, &out, &err);
    cr_assert_eq(rc, want_rc, "rc %d: %s", rc, err);
    char *msg = json_error(out);
    cr_assert_not_null(msg, "no error in the result line: %s", out);
    cr_assert(strstr(msg, want), "%s", msg);
    cr_assert(strstr(err, want), "stderr: %s", err);
    free(msg);
    free(err);
    return out;
}

Test(train, every_error_exit_prints_the_result_line, .fini = teardown, .timeout = 120) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body_lr), 0);
    const char *bin = ps_test_bin("worker/ctrps-worker");
    char missing[300];
    ps_cluster_path(&cl, "no-such.tsv", missing, sizeof(missing));
    /* A runtime error: exit 1. */
    char *missing_input[] = {(char *)bin, "--config", cl.config, "--input", missing, NULL};
    char *out = expect_error_exit(missing_input, 1, "no-such.tsv");
    cr_assert(strstr(out, "\"examples\":0,"), "%s", out);
    cr_assert(strstr(out, "\"auc\":null"), "nothing was scored: %s", out);
    free(out);
    /* Bad usage: exit 2. */
    char *bad_usage[] = {(char *)bin, "--config", cl.config, "--input", missing, "--passes", "0", NULL};
    free(expect_error_exit(bad_usage, 2, "--passes: bad value '0'"));
    /* A shard that is gone: the deadline passes and the outage outlasts
     * outage_timeout_s, exit 1 naming the shard. */
    char cfg[300], cmd[1024];
    ps_cluster_path(&cl, "short.ini", cfg, sizeof(cfg));
    snprintf(cmd, sizeof(cmd),
             "sed 's/^timeout_ms.*//; s/^\\[worker\\]$/[worker]\\ntimeout_ms = 500\\noutage_timeout_s = 1/' %s > %s",
             cl.config, cfg);
    cr_assert_eq(system(cmd), 0);
    gen("data.tsv", "1000", "3", "criteo");
    char data[300];
    ps_cluster_path(&cl, "data.tsv", data, sizeof(data));
    ps_cluster_stop_shard(&cl, 0, SIGTERM);
    char *shard_gone[] = {(char *)bin, "--config", cfg, "--input", data, NULL};
    free(expect_error_exit(shard_gone, 1, "shard 0"));
    /* The same while following a file: two full batches for the trainer to
     * fail on, while the reader waits at the end for lines to fill a third.
     * The error still ends the run (it used to wait for SIGTERM). */
    snprintf(cmd, sizeof(cmd), "head -n 600 %s > %s.600", data, data);
    cr_assert_eq(system(cmd), 0);
    strcat(data, ".600");
    char *following[] = {(char *)bin, "--config", cfg, "--input", data, "--follow", NULL};
    free(expect_error_exit(following, 1, "shard 0"));
}

/* Peak RSS in kB of one worker run, from wait4: the child's own. */
static long worker_peak_rss_kb(const char *data, const char *passes) {
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execl(ps_test_bin("worker/ctrps-worker"), "ctrps-worker", "--config", cl.config, "--input", data,
              "--passes", passes, (char *)NULL);
        _exit(127);
    }
    int status;
    struct rusage ru;
    cr_assert_eq(wait4(pid, &status, 0, &ru), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker status %d", status);
    return ru.ru_maxrss;
}

Test(train, worker_memory_does_not_grow_with_examples, .fini = teardown, .timeout = 600) {
#if defined(__SANITIZE_ADDRESS__)
    /* ASan keeps freed memory in quarantine and adds shadow memory: its RSS
     * measures ASan, and 640k examples take too long under it. */
    cr_skip_test("peak RSS is not the worker's own under AddressSanitizer");
#endif
    cr_assert_eq(ps_cluster_start(&cl, 1, body_lr), 0);
    gen("data.tsv", "2000", "17", "criteo");
    char data[300];
    ps_cluster_path(&cl, "data.tsv", data, sizeof(data));
    /* 40,000 and 600,000 examples. Keeping every (score, label) pair for
     * the AUC made the second peak about 17 MB higher (measured); the
     * histograms are the same size for both. */
    long few = worker_peak_rss_kb(data, "20"), many = worker_peak_rss_kb(data, "300");
    cr_log_info("peak RSS: %ld kB after 40k examples, %ld kB after 600k", few, many);
    cr_assert_lt(many - few, 4096, "peak RSS %ld kB after 40k examples, %ld kB after 600k", few, many);
}
