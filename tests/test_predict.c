/* ctrps-worker --predict end to end: shards and worker, all real binaries on
 * loopback. A model is trained on generated data, then scores a file: one
 * output line per input line, in order, nothing created on the shards. */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define SLOTS_C                                                                                    \
    "slots = C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13\n"                             \
    "slots = C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24, C25, C26\n"

/* A dense network, so that scores depend on the trained dense blocks too. */
static const char *body_dcn = "buckets = 64\n"
                              "[server]\ndurability = interval=1000\n"
                              "[input]\nintegers = dense\n"
                              "[model]\ntype = dcnv2\nbatch_size = 128\ncross_layers = 1\nmlp = 16\n"
                              "dense_lr = 0.01\nmax_in_flight = 1\n"
                              "[table.emb]\ndim = 4\noptimizer = adagrad\nlr = 0.1\n"
                              "initial_accumulator_value = 1e-6\ninit = normal\ninit_std = 0.05\n" SLOTS_C;

static const char *body_lr = "buckets = 64\n"
                             "[server]\ndurability = interval=1000\n"
                             "[model]\ntype = lr\nbatch_size = 128\nmax_in_flight = 1\n"
                             "[table.wide]\ndim = 1\noptimizer = ftrl\nalpha = 0.1\n"
                             "slots = I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13\n" SLOTS_C;

static ps_cluster cl;

static void teardown(void) { ps_cluster_teardown(&cl, NULL); }

static void path_of(const char *name, char *out) { ps_cluster_path(&cl, name, out, 300); }

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
}

/* Generated Criteo rows: train.tsv (the first `train` rows) and hold.tsv
 * (the next 1000), in the cluster directory. */
static void make_data(const char *train) {
    char data[300], tp[300], hp[300];
    path_of("data.tsv", data);
    path_of("train.tsv", tp);
    path_of("hold.tsv", hp);
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "gen", "--rows", "6000", "--seed", "5",
                    "--format", "criteo", "--out", data, NULL};
    cr_assert_eq(ps_run(argv, NULL, NULL), 0, "gen failed");
    sh("head -n %s %s > %s && tail -n +%d %s | head -n 1000 > %s", train, data, tp, atoi(train) + 1,
       data, hp);
}

/* Run the worker with a config and arguments (NULL-terminated). */
static int worker_with(const char *config, char **out, char **err, ...) {
    char *argv[40];
    int n = 0;
    argv[n++] = (char *)ps_test_bin("worker/ctrps-worker");
    argv[n++] = "--config";
    argv[n++] = (char *)config;
    argv[n++] = "--log-level";
    argv[n++] = "warn";
    va_list ap;
    va_start(ap, err);
    char *a;
    while ((a = va_arg(ap, char *)) && n < 39)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return ps_run(argv, out, err);
}

/* Train on data (with a holdout: returns the result line, else NULL). */
static char *train_holdout(const char *data, const char *holdout) {
    char *out, *err;
    int rc = holdout ? worker_with(cl.config, &out, &err, "--input", data, "--holdout", holdout, NULL)
                     : worker_with(cl.config, &out, &err, "--input", data, NULL);
    cr_assert_eq(rc, 0, "training failed: %s%s", out, err);
    free(err);
    if (holdout)
        return out;
    free(out);
    return NULL;
}

static void train(const char *data) { train_holdout(data, NULL); }

/* Predict `input` into `outfile`; returns the JSON result line (malloc'ed). */
static char *predict(const char *config, const char *input, const char *outfile, const char *extra) {
    char *out, *err;
    int rc = extra ? worker_with(config, &out, &err, "--input", input, "--predict", outfile, extra, NULL)
                   : worker_with(config, &out, &err, "--input", input, "--predict", outfile, NULL);
    cr_assert_eq(rc, 0, "predict failed: %s%s", out, err);
    free(err);
    return out;
}

static double json_field(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(json, pat);
    cr_assert_not_null(p, "no %s in %s", key, json);
    p += strlen(pat);
    return strncmp(p, "null", 4) ? strtod(p, NULL) : NAN;
}

/* Lines of a file, newlines removed (the array and the text malloc'ed). */
typedef struct text_lines {
    char *text;
    char **v;
    size_t n;
} text_lines;

static text_lines read_lines(const char *path) {
    text_lines t = {0};
    t.text = ps_read_file(path);
    cr_assert_not_null(t.text, "cannot read %s", path);
    size_t cap = 0;
    for (char *p = t.text; *p;) {
        char *nl = strchr(p, '\n');
        cr_assert_not_null(nl, "%s: last line without its newline", path);
        *nl = '\0';
        if (t.n == cap) {
            cap = cap ? 2 * cap : 1024;
            t.v = realloc(t.v, cap * sizeof(char *));
        }
        t.v[t.n++] = p;
        p = nl + 1;
    }
    return t;
}

static void free_lines(text_lines *t) {
    free(t->text);
    free(t->v);
}

static bool same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = ps_read_file_len(a, &na), *y = ps_read_file_len(b, &nb);
    bool same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

static uint64_t table_rows(const char *table) {
    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "stats", NULL), 0);
    /* One JSON object per shard: sum the table's rows over them. */
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":{", table);
    uint64_t rows = 0;
    for (const char *t = out; (t = strstr(t, pat)); t++) {
        const char *f = strstr(t, "\"rows\":");
        cr_assert(f && f < strchr(t, '}'), "no rows for %s in %s", table, out);
        rows += strtoull(f + 7, NULL, 10);
    }
    free(out);
    return rows;
}

Test(predict, every_line_in_order_nothing_created_same_bytes, .fini = teardown, .timeout = 300) {
    cr_assert_eq(ps_cluster_start(&cl, 2, body_dcn), 0);
    make_data("5000");
    char tp[300], hp[300], in[300], o1[300], o2[300];
    path_of("train.tsv", tp);
    path_of("hold.tsv", hp);
    path_of("in.tsv", in);
    path_of("p1.txt", o1);
    path_of("p2.txt", o2);
    char *trained = train_holdout(tp, hp);
    /* Rejected lines keep their place: a garbage line (line 3), a blank
     * line (line 10) and a truncated last line. */
    sh("(head -n 2 %s; echo garbage; sed -n 3,8p %s; echo; tail -n +9 %s; printf '1\\t2\\t3\\n') > %s",
       hp, hp, hp, in);
    text_lines input = read_lines(in);
    cr_assert_eq(input.n, 1003);
    uint64_t rows = table_rows("emb");
    cr_assert_gt(rows, 0);

    char *res = predict(cl.config, in, o1, NULL);
    cr_assert_eq(json_field(res, "lines"), 1003, "%s", res);
    cr_assert_eq(json_field(res, "examples"), 1000, "%s", res);
    cr_assert_eq(json_field(res, "malformed"), 3, "%s", res);
    double auc = json_field(res, "auc"), ll = json_field(res, "logloss");
    /* The scores rank clicks, and are the ones the training run's holdout
     * evaluation gave the same lines with the same model. */
    cr_assert(auc > 0.55 && auc < 1, "auc %g: %s", auc, res);
    cr_assert(isfinite(ll) && ll > 0, "logloss %g: %s", ll, res);
    cr_assert_float_eq(auc, json_field(trained, "holdout_auc"), 2e-6, "%s vs %s", res, trained);
    cr_assert_float_eq(ll, json_field(trained, "holdout_logloss"), 2e-6, "%s vs %s", res, trained);
    free(res);
    free(trained);

    text_lines got = read_lines(o1);
    cr_assert_eq(got.n, input.n, "%zu output lines for %zu input lines", got.n, input.n);
    double lo = 1, hi = 0;
    for (size_t i = 0; i < got.n; i++) {
        bool bad = i == 2 || i == 9 || i == got.n - 1;
        if (bad) {
            cr_assert_str_eq(got.v[i], "nan", "line %zu", i + 1);
            continue;
        }
        char *end;
        double p = strtod(got.v[i], &end);
        cr_assert(*end == '\0' && isfinite(p) && p > 0 && p < 1, "line %zu: '%s'", i + 1, got.v[i]);
        lo = fmin(lo, p);
        hi = fmax(hi, p);
    }
    cr_assert_gt(hi - lo, 0.01, "constant scores %g..%g", lo, hi);
    free_lines(&got);
    free_lines(&input);

    /* Lookup only: not one row created, and the same model the same bytes. */
    cr_assert_eq(table_rows("emb"), rows);
    free(predict(cl.config, in, o2, NULL));
    cr_assert(same_file(o1, o2), "two runs differ");
    cr_assert_eq(table_rows("emb"), rows);
}

Test(predict, unlabelled_ids_and_worker_shares_agree, .fini = teardown, .timeout = 300) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body_lr), 0);
    make_data("3000");
    char tp[300], hp[300], un[300], all[300], unl[300], ids[300], w0[300], w1[300], cfg[300];
    path_of("train.tsv", tp);
    path_of("hold.tsv", hp);
    path_of("unlabelled.tsv", un);
    path_of("all.txt", all);
    path_of("unl.txt", unl);
    path_of("ids.txt", ids);
    path_of("w0.txt", w0);
    path_of("w1.txt", w1);
    path_of("ids.ini", cfg);
    train(tp);
    free(predict(cl.config, hp, all, NULL));

    /* Criteo's unlabelled layout (no label column): the same scores, and
     * no metrics without labels. */
    sh("cut -f 2- %s > %s", hp, un);
    char *res = predict(cl.config, un, unl, "--unlabelled");
    cr_assert(isnan(json_field(res, "auc")), "%s", res);
    cr_assert_eq(json_field(res, "lines"), 1000);
    free(res);
    cr_assert(same_file(all, unl), "unlabelled scores differ from labelled ones");

    /* id_column = 15 (C1): its raw text, a tab, then the same score. */
    char *base = ps_read_file(cl.config);
    char text[16384];
    snprintf(text, sizeof(text), "%s\n[input]\nid_column = 15\n", base);
    free(base);
    cr_assert_eq(ps_write_file(cfg, text), 0);
    free(predict(cfg, hp, ids, NULL));
    text_lines in = read_lines(hp), a = read_lines(all), b = read_lines(ids);
    cr_assert_eq(b.n, in.n);
    for (size_t i = 0; i < in.n; i++) {
        const char *c1 = in.v[i];
        for (int k = 0; k < 14; k++)
            c1 = strchr(c1, '\t') + 1;
        size_t len = strcspn(c1, "\t");
        cr_assert(strncmp(b.v[i], c1, len) == 0 && b.v[i][len] == '\t', "line %zu: '%s'", i + 1, b.v[i]);
        cr_assert_str_eq(b.v[i] + len + 1, a.v[i], "line %zu", i + 1);
    }
    free_lines(&b);

    /* Two workers: lines 0, 2, 4... and 1, 3, 5...; each its own output,
     * together the single worker's. */
    char *r1;
    char *err;
    cr_assert_eq(worker_with(cl.config, &r1, &err, "--input", hp, "--predict", w1, "--worker-index", "1",
                             "--num-workers", "2", NULL),
                 0, "%s", err);
    free(r1);
    free(err);
    char *r0;
    cr_assert_eq(worker_with(cl.config, &r0, &err, "--input", hp, "--predict", w0, "--worker-index", "0",
                             "--num-workers", "2", NULL),
                 0, "%s", err);
    free(r0);
    free(err);
    text_lines s0 = read_lines(w0), s1 = read_lines(w1);
    cr_assert_eq(s0.n + s1.n, a.n);
    for (size_t i = 0; i < a.n; i++)
        cr_assert_str_eq(i % 2 ? s1.v[i / 2] : s0.v[i / 2], a.v[i], "line %zu", i + 1);
    free_lines(&s0);
    free_lines(&s1);
    free_lines(&a);
    free_lines(&in);
}

static size_t count_lines(const char *path) {
    size_t n = 0;
    char *t = ps_read_file(path);
    for (char *p = t; p && (p = strchr(p, '\n')); p++)
        n++;
    free(t);
    return n;
}

/* Wait until path holds n lines (each batch is flushed when done). */
static bool wait_lines(const char *path, size_t n) {
    for (int i = 0; i < 600; i++) {
        if (count_lines(path) >= n)
            return true;
        usleep(50000);
    }
    return false;
}

Test(predict, follow_writes_each_batch_as_lines_arrive, .fini = teardown, .timeout = 300) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body_lr), 0);
    make_data("3000");
    char tp[300], hp[300], live[300], out[300], all[300];
    path_of("train.tsv", tp);
    path_of("hold.tsv", hp);
    path_of("live.tsv", live);
    path_of("live.txt", out);
    path_of("all.txt", all);
    train(tp);
    free(predict(cl.config, hp, all, NULL));
    /* 300 lines: two batches of 128 and 44 lines that fill no batch, yet
     * are scored while the input waits. */
    sh("head -n 300 %s > %s", hp, live);
    int fd;
    char *argv[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cl.config, "--input", live,
                    "--follow", "--predict", out, "--log-level", "warn", NULL};
    pid_t pid = ps_spawn_stdout(argv, &fd);
    cr_assert_gt(pid, 0);
    cr_assert(wait_lines(out, 300), "%zu of 300 lines scored", count_lines(out));
    /* A predicting worker pushes nothing: a checkpoint does not wait for it. */
    char ck[300], *ckout = NULL;
    path_of("ckpt", ck);
    cr_assert_eq(ps_run_cli(&cl, &ckout, "checkpoint", "--dir", ck, "--wait", "20", NULL), 0, "%s", ckout);
    free(ckout);
    sh("tail -n +301 %s >> %s", hp, live);
    cr_assert(wait_lines(out, 1000), "%zu of 1000 lines scored", count_lines(out));
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
    char buf[4096] = "";
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker status %d: %s", status, buf);
    cr_assert_eq(json_field(buf, "lines"), 1000, "%s", buf);
    cr_assert(same_file(out, all), "followed scores differ from the file's");
}

Test(predict, refuses_an_untrained_model_and_bad_usage, .fini = teardown, .timeout = 120) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body_dcn), 0);
    make_data("100");
    char hp[300], out[300];
    path_of("hold.tsv", hp);
    path_of("p.txt", out);
    /* No training yet: no dense blocks to score with, and none created. */
    char *o, *e;
    cr_assert_eq(worker_with(cl.config, &o, &e, "--input", hp, "--predict", out, NULL), 1, "%s", o);
    cr_assert(strstr(o, "\"error\":\"dense model"), "%s", o);
    free(o);
    free(e);
    cr_assert_eq(table_rows("emb"), 0);
    cr_assert_eq(worker_with(cl.config, &o, &e, "--input", hp, "--predict", out, "--holdout", hp, NULL), 2);
    free(o);
    free(e);
    cr_assert_eq(worker_with(cl.config, &o, &e, "--input", hp, "--unlabelled", NULL), 2);
    free(o);
    free(e);
    /* --predict -: the lines on stdout, the result line on stderr. */
    train(hp);
    cr_assert_eq(worker_with(cl.config, &o, &e, "--input", hp, "--predict", "-", NULL), 0, "%s", e);
    cr_assert(strncmp(o, "0.", 2) == 0 && !strstr(o, "{"), "%.200s", o);
    cr_assert(strstr(e, "\"lines\":1000"), "%s", e);
    free(o);
    free(e);
}
