/* Model export (ctrps-cli export-model) through the real binaries: an
 * export taken from a live cluster while a worker trains equals the export
 * of the checkpoint it took, made with no shard running, file for file; the
 * rows equal what a cluster restored from that checkpoint serves; the .npy
 * headers and the manifest's sizes and sha256s hold; bad arguments fail
 * with exit 2 and a message. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "harness.h"

static const char *body = "buckets = 64\n"
                          "[server]\ndurability = sync\nflush_interval_ms = 300\n"
                          "[model]\ntype = dcnv2\nbatch_size = 64\nmax_in_flight = 1\n"
                          "cross_layers = 1\nmlp = 8\ndense_lr = 0.01\n"
                          "[table.emb]\ndim = 4\noptimizer = adagrad\nlr = 0.1\n"
                          "init = normal\ninit_std = 0.05\n"
                          "slots = I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13\n"
                          "slots = C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13\n"
                          "slots = C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24, C25, C26\n"
                          "[table.wide]\ndim = 1\noptimizer = ftrl\nalpha = 0.1\nslots = hour\n";

static ps_cluster cl;
static char tmp[64], data[128], config[128];

static void setup(void) {
    snprintf(tmp, sizeof(tmp), "/tmp/ctrps-export-XXXXXX");
    cr_assert_not_null(mkdtemp(tmp));
    snprintf(data, sizeof(data), "%s/train.tsv", tmp);
    snprintf(config, sizeof(config), "%s/cluster.ini", tmp);
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "gen", "--rows", "30000", "--seed", "5",
                    "--format", "criteo", "--out", data, NULL};
    cr_assert_eq(ps_run(argv, NULL, NULL), 0);
}

static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmp);
    cr_expect_eq(system(cmd), 0);
}

TestSuite(export, .init = setup, .fini = teardown, .timeout = 600);

static void path_of(char *out, size_t len, const char *dir, const char *name) {
    snprintf(out, len, "%s/%s", dir, name);
}

static char *slurp(const char *path, size_t *ret_len) {
    char *b = ps_read_file_len(path, ret_len);
    cr_assert_not_null(b, "cannot read %s", path);
    return b;
}

static bool exists(const char *dir, const char *name) {
    char p[512];
    path_of(p, sizeof(p), dir, name);
    return access(p, F_OK) == 0;
}

static void assert_same_file(const char *a, const char *b, const char *name) {
    char pa[512], pb[512];
    path_of(pa, sizeof(pa), a, name);
    path_of(pb, sizeof(pb), b, name);
    size_t na, nb;
    char *x = slurp(pa, &na), *y = slurp(pb, &nb);
    cr_assert(na == nb && memcmp(x, y, na) == 0, "%s differs between %s and %s", name, a, b);
    free(x);
    free(y);
}

/* The "files" object of a manifest: every file's size and sha256. */
static char *manifest_files(const char *dir) {
    char p[512];
    path_of(p, sizeof(p), dir, "manifest.json");
    size_t n;
    char *m = slurp(p, &n);
    char *f = strstr(m, "\n \"files\": {"); /* the top-level one, not a table's */
    cr_assert_not_null(f, "no files object in %s", p);
    char *out = strdup(f);
    free(m);
    return out;
}

/* Every file the manifest lists has its size and sha256; returns how many. */
static int verify_manifest(const char *dir) {
    char *files = manifest_files(dir);
    int n = 0;
    for (char *p = strchr(files, '{') + 1; (p = strchr(p, '"')); n++) {
        char name[256], hex[65];
        unsigned long long bytes;
        cr_assert_eq(sscanf(p, "\"%255[^\"]\": {\"bytes\": %llu, \"sha256\": \"%64[0-9a-f]\"}", name,
                            &bytes, hex),
                     3, "bad manifest entry: %.80s", p);
        char path[512];
        path_of(path, sizeof(path), dir, name);
        size_t len;
        char *b = slurp(path, &len);
        unsigned char md[crypto_hash_sha256_BYTES];
        char want[65];
        crypto_hash_sha256(md, (const unsigned char *)b, len);
        sodium_bin2hex(want, sizeof(want), md, sizeof(md));
        cr_assert_eq(len, bytes, "%s: %zu bytes, manifest says %llu", name, len, bytes);
        cr_assert_str_eq(hex, want, "%s: sha256 does not match the manifest", name);
        free(b);
        p = strchr(p, '}') + 1;
    }
    free(files);
    return n;
}

/* A .npy array written by export-model: NumPy 1.0, 128-byte header, its
 * shape (rows[, cols]) and data. */
typedef struct npy {
    char *bytes;
    size_t len;
    uint64_t rows, cols;
    const char *data;
} npy;

static npy load_npy(const char *dir, const char *name, const char *descr) {
    char p[512];
    path_of(p, sizeof(p), dir, name);
    npy a = {0};
    a.bytes = slurp(p, &a.len);
    cr_assert(a.len >= 128 && !memcmp(a.bytes, "\x93NUMPY\x01\x00", 8), "%s: not .npy 1.0", p);
    cr_assert_eq((uint8_t)a.bytes[8] | (uint8_t)a.bytes[9] << 8, 118);
    cr_assert_eq(a.bytes[127], '\n');
    char want[64];
    snprintf(want, sizeof(want), "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    cr_assert(!strncmp(a.bytes + 10, want, strlen(want)), "%s: header %.60s", p, a.bytes + 10);
    char *s = a.bytes + 10 + strlen(want);
    a.rows = strtoull(s, &s, 10);
    a.cols = *s == ',' && s[1] == ' ' ? strtoull(s + 2, NULL, 10) : 0;
    a.data = a.bytes + 128;
    size_t item = descr[2] == '8' ? 8 : 4;
    cr_assert_eq(a.len - 128, a.rows * (a.cols ? a.cols : 1) * item, "%s: size and shape differ", p);
    return a;
}

/* The rows of `ctrps-cli export --table emb --state` on a cluster restored
 * from the checkpoint (the server's own Export) equal the export's arrays. */
static void assert_rows_served(const char *dir, const char *text) {
    npy f = load_npy(dir, "emb.fids.npy", "<u8"), w = load_npy(dir, "emb.weights.npy", "<f4"),
        st = load_npy(dir, "emb.state.npy", "<f4");
    cr_assert(f.rows > 1000 && w.rows == f.rows && st.rows == f.rows && w.cols == 4 && st.cols == 8);
    uint64_t i = 0;
    const char *line = text;
    /* Lines: fid w v1..v4, then fid acc v1..v4; the same store order. */
    while (*line) {
        uint64_t fid;
        char field[8];
        float v[4];
        int used = 0;
        cr_assert_eq(sscanf(line, "%" SCNu64 "\t%7s\t%f %f %f %f%n", &fid, field, &v[0], &v[1], &v[2],
                            &v[3], &used),
                     6, "bad export line %.60s", line);
        cr_assert(i < f.rows, "the served export has more rows than %" PRIu64, f.rows);
        uint64_t want;
        memcpy(&want, f.data + 8 * i, 8);
        cr_assert_eq(fid, want, "row %" PRIu64 ": fid %" PRIu64 " served, %" PRIu64 " exported", i,
                     fid, want);
        const float *row = (const float *)(st.data) + 8 * i;
        int off = strcmp(field, "w") ? 4 : 0;
        for (int k = 0; k < 4; k++)
            cr_assert_eq(memcmp(&v[k], &row[off + k], 4), 0, "row %" PRIu64 " %s[%d]", i, field, k);
        if (!off)
            cr_assert_eq(memcmp(w.data + 16 * i, row, 16), 0, "weights are not state's w");
        else
            i++;
        line = strchr(line, '\n');
        line = line ? line + 1 : "";
    }
    cr_assert_eq(i, f.rows, "served %" PRIu64 " rows, exported %" PRIu64, i, f.rows);
    free(f.bytes);
    free(w.bytes);
    free(st.bytes);
}

static int cli(char **ret_out, char **ret_err, const char *a1, const char *a2, const char *a3,
               const char *a4, const char *a5, const char *a6, const char *a7) {
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "--config", config, "export-model",
                    (char *)a1, (char *)a2, (char *)a3, (char *)a4, (char *)a5, (char *)a6,
                    (char *)a7, NULL};
    return ps_run(argv, ret_out, ret_err);
}

Test(export, live_export_equals_its_checkpoint_and_a_shardless_export) {
    cr_assert_eq(sodium_init() >= 0, 1);
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    char *text = ps_read_file(cl.config);
    cr_assert_eq(ps_write_file(config, text), 0);
    free(text);
    char live[128], shardless[128], nostate[128], root[128];
    snprintf(live, sizeof(live), "%s/live", tmp);
    snprintf(shardless, sizeof(shardless), "%s/from-checkpoint", tmp);
    snprintf(nostate, sizeof(nostate), "%s/no-state", tmp);
    snprintf(root, sizeof(root), "%s/ckpts", tmp);

    /* The worker reads its input from a pipe: the first half, then the
     * rest only once the export's checkpoint barrier is up, so the worker
     * is still training when the barrier comes however fast the machine. */
    size_t len;
    text = ps_read_file_len(data, &len);
    cr_assert(text && len > 0);
    const char *nl = memchr(text + len / 2, '\n', len - len / 2);
    size_t half = nl ? (size_t)(nl - text) + 1 : len;
    int in[2], wo[2];
    cr_assert_eq(pipe2(in, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(wo, O_CLOEXEC), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(wo[1], 1);
        execl(ps_test_bin("worker/ctrps-worker"), "ctrps-worker", "--config", cl.config, "--input",
              "-", "--log-level", "warn", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(wo[1]);
    signal(SIGPIPE, SIG_IGN);
    cr_assert(ps_write_all(in[1], text, half), "the worker stopped reading");
    char *xargv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "--config", config, "export-model",
                     "--dir", live, "--state", "--checkpoint-dir", root, "--wait", "120", NULL};
    int xout;
    pid_t xpid = ps_spawn_stdout(xargv, &xout);
    cr_assert_gt(xpid, 0);
    ps_client_options co = {.cfg = cl.cfg, .name = "test_export", .timeout_ms = 20000};
    ps_client *c;
    char cerr[256];
    cr_assert_eq(ps_client_new(&co, &c, cerr, sizeof(cerr)), 0, "%s", cerr);
    bool up = false;
    for (int i = 0; i < 2400 && !up; i++) {
        ps_checkpoint_reply rep;
        ps_checkpoint_request st = {.phase = PS_CHECKPOINT_STATUS};
        cr_assert_eq(ps_client_checkpoint(c, 0, &st, &rep, cerr, sizeof(cerr)), 0, "%s", cerr);
        up = rep.pending[0] != '\0';
        ps_checkpoint_reply_deinit(&rep);
        if (!up)
            usleep(50000);
    }
    ps_client_free(c);
    cr_assert(up, "the export's checkpoint barrier never came up");
    cr_assert(ps_write_all(in[1], text + half, len - half), "the worker stopped reading");
    close(in[1]);
    free(text);
    int status;
    enum { OUT_CAP = 1 << 16 };
    char *out = malloc(OUT_CAP);
    cr_assert_not_null(out);
    ps_read_fd(xout, out, OUT_CAP);
    cr_assert_eq(waitpid(xpid, &status, 0), xpid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "export-model failed: %s", out);
    char *err = NULL;
    char json[4096];
    ps_read_fd(wo[0], json, sizeof(json));
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s", json);
    cr_assert(strstr(json, "\"checkpoints\":1"), "the worker never reached the barrier: %s", json);
    cr_assert(strstr(json, "\"examples\":30000"), "%s", json);
    /* stdout: D<TAB>the checkpoint read */
    char *tab = strchr(out, '\t');
    cr_assert_not_null(tab, "%s", out);
    char ckpt[256];
    snprintf(ckpt, sizeof(ckpt), "%.*s", (int)strcspn(tab + 1, "\n"), tab + 1);
    cr_assert(!strncmp(ckpt, root, strlen(root)), "checkpoint %s not under %s", ckpt, root);
    free(out);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);

    /* No shard runs now. */
    cr_assert_eq(cli(NULL, &err, "--dir", shardless, "--state", "--checkpoint", ckpt, NULL, NULL), 0,
                 "%s", err);
    free(err);
    cr_assert_eq(cli(NULL, &err, "--dir", nostate, "--checkpoint", root, NULL, NULL, NULL), 0, "%s",
                 err);
    free(err);

    int nfiles = verify_manifest(live);
    cr_assert_eq(verify_manifest(shardless), nfiles);
    cr_assert_eq(verify_manifest(nostate), nfiles - 2);
    char *a = manifest_files(live), *b = manifest_files(shardless);
    cr_assert_str_eq(a, b, "the live export and the checkpoint's differ");
    free(a);
    free(b);
    const char *names[] = {"emb.fids.npy", "emb.weights.npy", "emb.state.npy", "wide.fids.npy",
                           "wide.weights.npy", "wide.state.npy", "cross.0.W.npy", "cross.0.b.npy",
                           "deep.0.W.npy", "w_out.npy", "config.ini"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        cr_assert(exists(live, names[i]), "%s not exported", names[i]);
        assert_same_file(live, shardless, names[i]);
        if (!strstr(names[i], ".state."))
            assert_same_file(live, nostate, names[i]);
        else
            cr_assert(!exists(nostate, names[i]), "%s without --state", names[i]);
    }
    char p[512];
    path_of(p, sizeof(p), live, "config.ini");
    char *copy = ps_read_file(p), *orig = ps_read_file(config);
    cr_assert_str_eq(copy, orig, "config.ini is not a byte copy of the config");
    free(copy);
    free(orig);
    path_of(p, sizeof(p), live, "manifest.json");
    char *m = ps_read_file(p);
    cr_assert(strstr(m, "\"source\": {\"kind\": \"cluster\""), "%s", m);
    cr_assert(strstr(m, "\"model\": {\"type\": \"dcnv2\"}"), "%s", m);
    cr_assert(strstr(m, "\"hour\": "), "slot ids missing: %s", m);
    cr_assert(strstr(m, "\"initial_accumulator_value\": \"0.1\""), "effective defaults missing: %s",
              m);
    cr_assert(strstr(m, "\"state_fields\": [\"w\", \"acc\"]"), "%s", m);
    free(m);

    /* The rows are the checkpoint's: a cluster restored from it serves them. */
    cr_assert_eq(ps_cluster_start_restored(&cl, 2, body, ckpt), 0);
    char *served = NULL;
    cr_assert_eq(ps_run_cli(&cl, &served, "export", "--table", "emb", "--state", NULL), 0);
    assert_rows_served(live, served);
    free(served);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
}

static void assert_usage_error(const char *why, const char *a1, const char *a2, const char *a3,
                               const char *a4, const char *a5, const char *a6) {
    char *err = NULL;
    int rc = cli(NULL, &err, a1, a2, a3, a4, a5, a6, NULL);
    cr_assert_eq(rc, 2, "%s: exit %d, stderr %s", why, rc, err);
    cr_assert(err && strstr(err, why), "stderr does not say '%s': %s", why, err);
    free(err);
}

Test(export, bad_arguments_fail_with_a_message) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
    char *text = ps_read_file(cl.config);
    cr_assert_eq(ps_write_file(config, text), 0);
    free(text);
    char full[128], ckroot[128], out[128], missing[128];
    snprintf(full, sizeof(full), "%s", tmp);    /* holds files already */
    snprintf(ckroot, sizeof(ckroot), "%s/ckpts", tmp);
    snprintf(out, sizeof(out), "%s/out", tmp);
    snprintf(missing, sizeof(missing), "%s/none", tmp);
    assert_usage_error("needs --dir", NULL, NULL, NULL, NULL, NULL, NULL);
    assert_usage_error("unexpected argument", "--dir", out, "extra", NULL, NULL, NULL);
    assert_usage_error("--wait", "--dir", out, "--wait", "0", NULL, NULL);
    assert_usage_error("--checkpoint-dir and --wait are for taking one", "--dir", out,
                       "--checkpoint", ckroot, "--checkpoint-dir", ckroot);
    assert_usage_error("is not empty", "--dir", full, "--checkpoint-dir", ckroot, NULL, NULL);
    assert_usage_error("no complete checkpoint", "--dir", out, "--checkpoint", missing, NULL, NULL);
    cr_assert(access(out, F_OK) != 0, "a failed export left %s behind", out);

    /* A checkpoint of a one-shard cluster under a two-shard config. */
    char *ck = NULL;
    cr_assert_eq(ps_run_cli(&cl, &ck, "checkpoint", "--dir", ckroot, NULL), 0);
    free(ck);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
    char *two = ps_read_file(config);
    char *shards = strstr(two, "shards = ");
    cr_assert_not_null(shards);
    char other[16384];
    snprintf(other, sizeof(other), "%.*sshards = 127.0.0.1:1, %s", (int)(shards - two), two,
             shards + 9);
    cr_assert_eq(ps_write_file(config, other), 0);
    free(two);
    assert_usage_error("holds 1 shards", "--dir", out, "--checkpoint", ckroot, NULL, NULL);
}
