/* Tests for the INI configuration loader (common/config.h).
 *
 * What a user depends on: the issue's example file loads with the values it
 * spells out and ALGORITHMS.md's defaults for the rest; every rejected file
 * says FILE:LINE and the key, so the operator can fix it without reading our
 * source; and nothing is silently ignored (an unknown key or section, or a
 * hyper-parameter the table's optimizer does not use, fails the load). */

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"
#include "config.h"
#include "error.h"
#include "keys.h"

/* ---- fixtures ------------------------------------------------------------- */

static char tmpdir[PS_PATH_MAX];
static int nfiles;

static void setup(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/ctrps-test-config-XXXXXX", base && *base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
    nfiles = 0;
}

static void teardown(void) { ps_rm_tree(tmpdir); }

TestSuite(config, .init = setup, .fini = teardown);

/* Write text to a new file in tmpdir; returns its path (static storage, one
 * per call in a test). */
static const char *write_config(const char *text) {
    static char paths[16][PS_PATH_MAX + 32];
    cr_assert_lt(nfiles, 16);
    char *path = paths[nfiles];
    snprintf(path, sizeof(paths[0]), "%s/c%d.ini", tmpdir, nfiles);
    nfiles++;
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    cr_assert_eq(fputs(text, f) >= 0, 1);
    cr_assert_eq(fclose(f), 0);
    return path;
}

static ps_config *load_ok_ext(const char *text, const ps_config_ext *ext) {
    char err[1024] = "";
    ps_config *cfg = NULL;
    int r = ps_config_load(write_config(text), ext, &cfg, err, sizeof(err));
    cr_assert_eq(r, 0, "load failed (%d): %s\n--- config:\n%s", r, err, text);
    cr_assert_not_null(cfg);
    return cfg;
}

static ps_config *load_ok(const char *text) { return load_ok_ext(text, NULL); }

/* Load text expecting PS_ECONFIG; err is the message. `line` > 0: the message
 * must start with "PATH:LINE: "; 0: with "PATH: " (no line number). Every
 * needle must occur in the message. */
static void expect_error_ext(const char *text, const ps_config_ext *ext, int line,
                             const char *needle1, const char *needle2) {
    char err[1024] = "";
    ps_config *cfg = NULL;
    const char *path = write_config(text);
    int r = ps_config_load(path, ext, &cfg, err, sizeof(err));
    cr_assert_eq(r, PS_ECONFIG, "expected PS_ECONFIG, got %d (%s)\n--- config:\n%s", r, err, text);
    cr_assert_null(cfg, "*ret_cfg written on failure");
    char prefix[PS_PATH_MAX + 64];
    if (line > 0)
        snprintf(prefix, sizeof(prefix), "%s:%d: ", path, line);
    else
        snprintf(prefix, sizeof(prefix), "%s: ", path);
    cr_assert(!strncmp(err, prefix, strlen(prefix)), "message '%s' should start with '%s'", err,
              prefix);
    if (needle1)
        cr_assert(strstr(err, needle1), "message '%s' lacks '%s'", err, needle1);
    if (needle2)
        cr_assert(strstr(err, needle2), "message '%s' lacks '%s'", err, needle2);
    cr_assert_null(strchr(err, '\n'), "message is not one line: '%s'", err);
}

static void expect_error(const char *text, int line, const char *needle1, const char *needle2) {
    expect_error_ext(text, NULL, line, needle1, needle2);
}

/* ---- the issue's example ---------------------------------------------------- */

static const char issue_config[] =
    "[cluster]\n"
    "shards = 127.0.0.1:7101, 127.0.0.1:7102\n"
    "buckets = 1024\n"
    "\n"
    "[server]\n"
    "durability = sync            ; or interval=1000\n"
    "\n"
    "[table.emb]\n"
    "dim = 16\n"
    "optimizer = ftrl             ; ftrl | adagrad | ftrl_group_lasso\n"
    "alpha = 0.05\n"
    "beta = 1.0\n"
    "lambda1 = 0.0\n"
    "lambda2 = 0.0\n"
    "init = normal                ; zero | normal\n"
    "init_std = 0.01\n"
    "slots = C1, C2, C3\n"
    "\n"
    "[table.wide]\n"
    "dim = 1\n"
    "optimizer = adagrad          ; lr, initial_accumulator_value, eps, accum_max, rowwise\n"
    "lr = 0.05\n"
    "init = zero\n"
    "slots = I1, I2\n";

Test(config, issue_example_loads_with_its_values) {
    ps_config *cfg = load_ok(issue_config);
    cr_assert_eq(cfg->nshards, 2);
    cr_assert_str_eq(cfg->shards[0], "127.0.0.1:7101");
    cr_assert_str_eq(cfg->shards[1], "127.0.0.1:7102");
    cr_assert_eq(cfg->buckets, 1024);
    cr_assert_eq(cfg->server.durability, PS_DURABILITY_SYNC);
    cr_assert_eq(cfg->ntables, 2);

    const ps_table_config *emb = ps_config_table(cfg, "emb");
    cr_assert_not_null(emb);
    cr_assert_str_eq(emb->name, "emb");
    cr_assert_eq(emb->dim, 16);
    cr_assert_eq(emb->opt.kind, PS_OPT_FTRL);
    cr_assert_eq(emb->opt.alpha, 0.05);
    cr_assert_eq(emb->opt.beta, 1.0);
    cr_assert_eq(emb->opt.lambda1, 0.0);
    cr_assert_eq(emb->opt.lambda2, 0.0);
    cr_assert_eq(emb->opt.lambda21, 0.0);
    cr_assert_eq(emb->init, PS_INIT_NORMAL);
    cr_assert_eq(emb->init_std, 0.01);
    cr_assert_eq(emb->nslots, 3);
    cr_assert_str_eq(emb->slots[0], "C1");
    cr_assert_str_eq(emb->slots[1], "C2");
    cr_assert_str_eq(emb->slots[2], "C3");
    cr_assert_eq(ps_optim_state_width(&emb->opt, emb->dim), 48);

    const ps_table_config *wide = ps_config_table(cfg, "wide");
    cr_assert_not_null(wide);
    cr_assert_eq(wide->dim, 1);
    cr_assert_eq(wide->opt.kind, PS_OPT_ADAGRAD);
    cr_assert_eq(wide->opt.lr, 0.05);
    cr_assert_eq(wide->opt.initial_accumulator_value, 0.1);
    cr_assert_eq(wide->opt.eps, 1e-8);
    cr_assert(isinf(wide->opt.accum_max) && wide->opt.accum_max > 0);
    cr_assert_eq(wide->opt.rowwise, false);
    cr_assert_eq(wide->init, PS_INIT_ZERO);
    cr_assert_eq(wide->nslots, 2);
    cr_assert_str_eq(wide->slots[0], "I1");
    cr_assert_str_eq(wide->slots[1], "I2");
    cr_assert_eq(ps_optim_state_width(&wide->opt, wide->dim), 2);

    cr_assert_eq(ps_config_slot_table(cfg, "C2"), emb);
    cr_assert_eq(ps_config_slot_table(cfg, "I2"), wide);
    cr_assert_null(ps_config_slot_table(cfg, "C4"));
    cr_assert_null(ps_config_table(cfg, "nope"));
    cr_assert_null(cfg->worker);
    ps_config_free(cfg);
}

Test(config, issue_example_with_interval_durability) {
    char text[sizeof(issue_config) + 64];
    const char *at = strstr(issue_config, "durability = sync");
    cr_assert_not_null(at);
    snprintf(text, sizeof(text), "%.*sdurability = interval=1000%s", (int)(at - issue_config),
             issue_config, at + strlen("durability = sync"));
    ps_config *cfg = load_ok(text);
    cr_assert_eq(cfg->server.durability, PS_DURABILITY_INTERVAL);
    cr_assert_eq(cfg->server.interval_ms, 1000);
    ps_config_free(cfg);
}

/* ---- defaults --------------------------------------------------------------- */

Test(config, defaults_follow_algorithms_md) {
    ps_config *cfg = load_ok("[cluster]\n"
                             "shards = 127.0.0.1:7101\n"
                             "[table.f]\n"
                             "dim = 8\n"
                             "[table.g]\n"
                             "dim = 8\n"
                             "optimizer = ftrl_group_lasso\n"
                             "[table.a]\n"
                             "dim = 8\n"
                             "optimizer = adagrad\n");
    cr_assert_eq(cfg->buckets, 1024);
    cr_assert_eq(cfg->server.durability, PS_DURABILITY_SYNC);
    cr_assert_eq(cfg->server.write_buffer_mb, 16, "README's sizing counts two 16 MiB memtables");

    const ps_table_config *f = ps_config_table(cfg, "f");
    cr_assert_eq(f->opt.kind, PS_OPT_FTRL, "FTRL is the default optimizer");
    cr_assert_eq(f->opt.alpha, 0.05);
    cr_assert_eq(f->opt.beta, 1.0);
    cr_assert_eq(f->opt.lambda1, 0.0);
    cr_assert_eq(f->opt.lambda2, 0.0);
    cr_assert_eq(f->opt.grad_clip, 0.0, "clipping is off by default");
    cr_assert_eq(f->nslots, 0);

    const ps_table_config *g = ps_config_table(cfg, "g");
    cr_assert_eq(g->opt.kind, PS_OPT_FTRL_GROUP_LASSO);
    cr_assert_eq(g->opt.alpha, 0.05);
    cr_assert_eq(g->opt.beta, 1.0);
    cr_assert_eq(g->opt.lambda21, 0.0);

    const ps_table_config *a = ps_config_table(cfg, "a");
    cr_assert_eq(a->opt.kind, PS_OPT_ADAGRAD);
    cr_assert_eq(a->opt.lr, 0.05);
    cr_assert_eq(a->opt.initial_accumulator_value, 0.1);
    cr_assert_eq(a->opt.eps, 1e-8);
    cr_assert(isinf(a->opt.accum_max) && a->opt.accum_max > 0, "accum_max is off (+inf)");
    cr_assert_eq(a->opt.rowwise, false);
    cr_assert_eq(ps_optim_state_width(&a->opt, 8), 16);
    ps_config_free(cfg);
}

Test(config, rowwise_adagrad_and_numbers_are_parsed) {
    ps_config *cfg = load_ok("[cluster]\n"
                             "shards = a.example:1, b.example:2\n"
                             "buckets = 7\n"
                             "map_version = 42\n"
                             "[server]\n"
                             "fsync = always\n"
                             "memory_mb = 64\n"
                             "max_frame_bytes = 1024\n"
                             "[table.a]\n"
                             "dim = 4096\n"
                             "optimizer = adagrad\n"
                             "rowwise = true\n"
                             "accum_max = 1e6\n"
                             "eps = 0\n"
                             "initial_accumulator_value = 0\n"
                             "grad_clip = 5.5\n"
                             "seed = 18000000000000000000\n"
                             "memory_rows = 123\n");
    cr_assert_eq(cfg->buckets, 7);
    cr_assert_eq(cfg->map_version, 42);
    cr_assert_eq(cfg->server.fsync, PS_FSYNC_ALWAYS);
    cr_assert_eq(cfg->server.memory_mb, 64);
    cr_assert_eq(cfg->server.max_frame_bytes, 1024);
    const ps_table_config *a = ps_config_table(cfg, "a");
    cr_assert_eq(a->dim, 4096);
    cr_assert_eq(a->opt.rowwise, true);
    cr_assert_eq(a->opt.accum_max, 1e6);
    cr_assert_eq(a->opt.eps, 0.0);
    cr_assert_eq(a->opt.initial_accumulator_value, 0.0);
    cr_assert_eq(a->opt.grad_clip, 5.5);
    cr_assert_eq(a->seed, UINT64_C(18000000000000000000));
    cr_assert_eq(a->memory_rows, 123);
    cr_assert_eq(ps_optim_state_width(&a->opt, a->dim), 4097, "row-wise AdaGrad keeps d+1 floats");
    ps_config_free(cfg);
}

/* ---- durability = sync | interval=MS ------------------------------------------ */

/* Parameters hold their strings inline: Criterion runs each case in a new
 * process, where pointers into the parent's data would not be valid. */
typedef struct durability_case {
    char value[32];
    int ok;
    uint32_t interval_ms;
} durability_case;

ParameterizedTestParameters(config, durability_values) {
    static durability_case cases[] = {
        {"sync", 1, 0},
        {"interval=1", 1, 1},
        {"interval=100", 1, 100},
        {"interval=3600000", 1, 3600000},
        {"interval=0", 0, 0},
        {"interval=3600001", 0, 0},
        {"interval=", 0, 0},
        {"interval=10ms", 0, 0},
        {"interval=-5", 0, 0},
        {"interval", 0, 0},
        {"async", 0, 0},
        {"SYNC", 0, 0},
    };
    return cr_make_param_array(durability_case, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(durability_case *c, config, durability_values) {
    char text[256];
    snprintf(text, sizeof(text),
             "[cluster]\nshards = 127.0.0.1:1\n[server]\ndurability = %s\n", c->value);
    if (c->ok) {
        ps_config *cfg = load_ok(text);
        if (c->interval_ms) {
            cr_assert_eq(cfg->server.durability, PS_DURABILITY_INTERVAL, "%s", c->value);
            cr_assert_eq(cfg->server.interval_ms, c->interval_ms, "%s", c->value);
        } else {
            cr_assert_eq(cfg->server.durability, PS_DURABILITY_SYNC, "%s", c->value);
        }
        ps_config_free(cfg);
    } else {
        expect_error(text, 4, "key 'durability'", c->value);
    }
}

/* ---- errors name FILE:LINE and the key --------------------------------------- */

typedef struct error_case {
    char what[64];
    char text[256];
    int line;                    /* 0: the message carries no line number */
    char needle1[48], needle2[48];
} error_case;

#define SHARD1 "[cluster]\nshards = 127.0.0.1:7101\n" /* lines 1-2 */

ParameterizedTestParameters(config, errors) {
    static error_case cases[] = {
        {"unknown key in [server]", SHARD1 "[server]\nbogus = 1\n", 4, "key 'bogus'", "unknown key"},
        {"unknown key in a table", SHARD1 "[table.t]\ndim = 4\nwidth = 3\n", 5, "key 'width'",
         "unknown key"},
        {"unknown key in [cluster]", "[cluster]\nshards = 127.0.0.1:1\nshard = 1\n", 3,
         "key 'shard'", "unknown key"},
        {"unknown section", SHARD1 "\n[sever]\ndurability = sync\n", 5, "[sever]",
         "unknown section"},
        {"bad integer", SHARD1 "[table.t]\ndim = 1x\n", 4, "key 'dim'", "1x"},
        {"negative integer", SHARD1 "[table.t]\ndim = -4\n", 4, "key 'dim'", "-4"},
        {"bad float", SHARD1 "[table.t]\ndim = 4\nalpha = 0.0.5\n", 5, "key 'alpha'", "0.0.5"},
        {"nan is not a number", SHARD1 "[table.t]\ndim = 4\nbeta = nan\n", 5, "key 'beta'", ""},
        {"';' without a space before it is part of the value",
         "[cluster]\nshards = 127.0.0.1:1\nbuckets = 64;comment\n", 3, "key 'buckets'", "64;comment"},
        {"empty value", SHARD1 "[table.t]\ndim =\n", 4, "key 'dim'", ""},
        {"buckets 0", "[cluster]\nshards = 127.0.0.1:1\nbuckets = 0\n", 3, "key 'buckets'", ""},
        {"buckets too many", "[cluster]\nbuckets = 65537\nshards = 127.0.0.1:1\n", 2,
         "key 'buckets'", "65537"},
        {"dim too large", SHARD1 "[table.t]\ndim = 4097\n", 4, "key 'dim'", "4097"},
        {"dim 0", SHARD1 "[table.t]\ndim = 0\n", 4, "key 'dim'", ""},
        {"alpha 0", SHARD1 "[table.t]\ndim = 4\nalpha = 0\n", 5, "key 'alpha'", ""},
        {"eps above 1", SHARD1 "[table.t]\ndim = 4\noptimizer = adagrad\neps = 2\n", 6,
         "key 'eps'", ""},
        {"negative lambda1", SHARD1 "[table.t]\ndim = 4\nlambda1 = -0.1\n", 5, "key 'lambda1'",
         ""},
        {"max_frame_bytes too small", SHARD1 "[server]\nmax_frame_bytes = 10\n", 4,
         "key 'max_frame_bytes'", ""},
        {"bad optimizer", SHARD1 "[table.t]\ndim = 4\noptimizer = sgd\n", 5, "key 'optimizer'",
         "sgd"},
        {"bad init", SHARD1 "[table.t]\ndim = 4\ninit = uniform\n", 5, "key 'init'", "uniform"},
        {"bad fsync", SHARD1 "[server]\nfsync = sometimes\n", 4, "key 'fsync'", "sometimes"},
        {"bad bool", SHARD1 "[table.t]\ndim = 4\noptimizer = adagrad\nrowwise = maybe\n", 6,
         "key 'rowwise'", "maybe"},
        {"lr in an ftrl table", SHARD1 "[table.t]\ndim = 4\noptimizer = ftrl\nlr = 0.1\n", 6,
         "key 'lr'", "ftrl"},
        {"lr before optimizer = ftrl",
         SHARD1 "[table.t]\ndim = 4\nlr = 0.1\ninit = zero\noptimizer = ftrl\n", 5, "key 'lr'",
         "ftrl"},
        {"lr in a table with the default optimizer", SHARD1 "[table.t]\ndim = 4\n\nlr = 0.1\n", 6,
         "key 'lr'", "ftrl"},
        {"alpha in an adagrad table", SHARD1 "[table.t]\nalpha = 0.1\ndim = 4\noptimizer = adagrad\n",
         4, "key 'alpha'", "adagrad"},
        {"lambda21 in an ftrl table", SHARD1 "[table.t]\ndim = 4\nlambda21 = 0.1\n", 5,
         "key 'lambda21'", ""},
        {"rowwise in a group lasso table",
         SHARD1 "[table.t]\ndim = 4\noptimizer = ftrl_group_lasso\nrowwise = true\n", 6,
         "key 'rowwise'", ""},
        {"second table's misplaced key",
         SHARD1 "[table.a]\ndim = 4\n[table.b]\ndim = 4\noptimizer = adagrad\nbeta = 1\n", 8,
         "key 'beta'", "[table.b]"},
        {"shard without a port", "[cluster]\nshards = 127.0.0.1\n", 2, "key 'shards'",
         "127.0.0.1"},
        {"shard with a bad port", "[cluster]\nshards = 127.0.0.1:1, host:70000\n", 2,
         "key 'shards'", "host:70000"},
        {"bad table name", SHARD1 "[table.a b]\ndim = 4\n", 4, "table name", ""},
        {"empty table name", SHARD1 "[table.]\ndim = 4\n", 4, "table name", ""},
        {"syntax error", SHARD1 "[server]\nthis line has no equals sign\n", 4, "syntax", ""},
        {"first error wins", SHARD1 "[server]\nbogus = 1\nfsync = never\n", 4, "key 'bogus'", ""},
        {"dim missing", SHARD1 "[table.t]\noptimizer = ftrl\nslots = A\n", 0, "[table.t]",
         "key 'dim'"},
        {"no shards", "[cluster]\nbuckets = 16\n[table.t]\ndim = 4\n", 0, "key 'shards'", ""},
        {"no [cluster] at all", "[table.t]\ndim = 4\n", 0, "key 'shards'", ""},
        {"fewer buckets than shards", "[cluster]\nshards = a:1, b:2, c:3\nbuckets = 2\n", 0,
         "key 'buckets'", ""},
        {"normal init without beta or lambda2",
         SHARD1 "[table.t]\ndim = 4\ninit = normal\nbeta = 0\n", 0, "key 'init'", ""},
        {"slot in two tables", SHARD1 "[table.a]\ndim = 4\nslots = C1, C2\n[table.b]\ndim = 4\nslots = C3, C1\n",
         0, "key 'slots'", "'C1'"},
        {"slot twice in one table", SHARD1 "[table.a]\ndim = 4\nslots = C1, C2\nslots = C1\n", 0,
         "key 'slots'", "'C1'"},
    };
    return cr_make_param_array(error_case, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(error_case *c, config, errors) {
    cr_log_info("case: %s", c->what);
    expect_error(c->text, c->line, c->needle1[0] ? c->needle1 : NULL,
                 c->needle2[0] ? c->needle2 : NULL);
}

Test(config, missing_file_is_an_errno_naming_the_file) {
    char path[PS_PATH_MAX + 32], err[512] = "";
    snprintf(path, sizeof(path), "%s/absent.ini", tmpdir);
    ps_config *cfg = NULL;
    int r = ps_config_load(path, NULL, &cfg, err, sizeof(err));
    cr_assert_eq(r, -ENOENT);
    cr_assert_null(cfg);
    cr_assert(strstr(err, path), "'%s' does not name the file", err);
}

/* ---- line length ---------------------------------------------------------- */

static char *line_of(const char *key, size_t total_len) {
    /* "key = XXXX...": exactly total_len characters, no newline. */
    size_t klen = strlen(key) + 3;
    cr_assert_gt(total_len, klen);
    char *s = malloc(total_len + 1);
    memcpy(s, key, strlen(key));
    memcpy(s + strlen(key), " = ", 3);
    memset(s + klen, 'S', total_len - klen);
    s[total_len] = '\0';
    return s;
}

Test(config, overlong_line_is_rejected_with_its_line) {
    char *slots = line_of("slots", 400);
    char text[1024];
    snprintf(text, sizeof(text), SHARD1 "[table.t]\ndim = 4\n%s\ninit = zero\n", slots);
    expect_error(text, 5, "too long", NULL);
    /* The tail of the overlong line is not parsed as a line of its own. */
    snprintf(text, sizeof(text), SHARD1 "[table.t]\ndim = 4\n; %s\n", slots);
    expect_error(text, 5, "too long", NULL);
    free(slots);
}

Test(config, line_as_long_as_the_stated_limit_loads) {
    /* Take the limit from the message a too-long line gets, then check that
     * a line of exactly that length (with and without a newline after it) is
     * accepted: the message must not promise more than the parser takes. */
    char *too_long = line_of("slots", 1000);
    char text[2048];
    snprintf(text, sizeof(text), SHARD1 "[table.t]\ndim = 4\n%s\n", too_long);
    free(too_long);
    char err[1024] = "";
    ps_config *cfg = NULL;
    cr_assert_eq(ps_config_load(write_config(text), NULL, &cfg, err, sizeof(err)), PS_ECONFIG);
    const char *at = strstr(err, "at most ");
    cr_assert_not_null(at, "message '%s' does not state the limit", err);
    int limit = atoi(at + strlen("at most "));
    cr_assert_gt(limit, 100, "%s", err);

    for (int newline = 0; newline <= 1; newline++) {
        char *line = line_of("slots", (size_t)limit);
        snprintf(text, sizeof(text), SHARD1 "[table.t]\ndim = 4\n%s%s", line,
                 newline ? "\n" : "");
        cfg = load_ok(text);
        const ps_table_config *t = ps_config_table(cfg, "t");
        cr_assert_eq(t->nslots, 1);
        cr_assert_eq(strlen(t->slots[0]), (size_t)limit - strlen("slots = "));
        ps_config_free(cfg);
        free(line);
    }
}

/* ---- comments, lists --------------------------------------------------------- */

Test(config, inline_comments_are_stripped) {
    ps_config *cfg = load_ok("; a comment line\n"
                             "# another\n"
                             "[cluster]   ; trailing comment on a section\n"
                             "shards = 127.0.0.1:7101 ; the only shard\n"
                             "buckets = 64 ; a comment needs a space before it\n"
                             "[table.t]\n"
                             "dim = 4 ; four\n"
                             "alpha = 0.5\t; tab before the comment\n"
                             "slots = A, B ; , C\n");
    cr_assert_eq(cfg->nshards, 1);
    cr_assert_str_eq(cfg->shards[0], "127.0.0.1:7101");
    cr_assert_eq(cfg->buckets, 64);
    const ps_table_config *t = ps_config_table(cfg, "t");
    cr_assert_eq(t->dim, 4);
    cr_assert_eq(t->opt.alpha, 0.5);
    cr_assert_eq(t->nslots, 2);
    cr_assert_str_eq(t->slots[0], "A");
    cr_assert_str_eq(t->slots[1], "B");
    ps_config_free(cfg);
}

Test(config, repeated_list_keys_append) {
    ps_config *cfg = load_ok("[cluster]\n"
                             "shards = 127.0.0.1:7101\n"
                             "shards = 127.0.0.1:7102, 127.0.0.1:7103\n"
                             "[table.t]\n"
                             "dim = 4\n"
                             "slots = A, B\n"
                             "slots = C\n"
                             "slots =  D ,E,, \n");
    cr_assert_eq(cfg->nshards, 3);
    cr_assert_str_eq(cfg->shards[2], "127.0.0.1:7103");
    const ps_table_config *t = ps_config_table(cfg, "t");
    const char *want[] = {"A", "B", "C", "D", "E"};
    cr_assert_eq(t->nslots, 5);
    for (size_t i = 0; i < 5; i++)
        cr_assert_str_eq(t->slots[i], want[i]);
    ps_config_free(cfg);
}

Test(config, a_table_section_may_be_split) {
    ps_config *cfg = load_ok(SHARD1 "[table.t]\ndim = 4\nslots = A\n"
                                    "[table.u]\ndim = 2\n"
                                    "[table.t]\noptimizer = adagrad\nlr = 0.2\nslots = B\n");
    cr_assert_eq(cfg->ntables, 2);
    const ps_table_config *t = ps_config_table(cfg, "t");
    cr_assert_eq(t->dim, 4);
    cr_assert_eq(t->opt.kind, PS_OPT_ADAGRAD);
    cr_assert_eq(t->opt.lr, 0.2);
    cr_assert_eq(t->nslots, 2);
    ps_config_free(cfg);
}

Test(config, indented_keys_are_keys) {
    /* Hand-written configs are often indented under their section. */
    ps_config *cfg = load_ok("[cluster]\n"
                             "  shards = 127.0.0.1:7101\n"
                             "  buckets = 64\n"
                             "[table.t]\n"
                             "    dim = 4\n"
                             "    slots = A\n"
                             "    optimizer = adagrad\n"
                             "    slots = B\n");
    cr_assert_eq(cfg->buckets, 64);
    const ps_table_config *t = ps_config_table(cfg, "t");
    cr_assert_eq(t->dim, 4);
    /* Not a slot named "optimizer = adagrad" with the optimizer left at
     * FTRL (inih's continuation-line reading). */
    cr_assert_eq(t->opt.kind, PS_OPT_ADAGRAD);
    cr_assert_eq(t->nslots, 2);
    cr_assert_str_eq(t->slots[0], "A");
    cr_assert_str_eq(t->slots[1], "B");
    ps_config_free(cfg);
}

/* ---- worker sections and the extension point ---------------------------------- */

Test(config, worker_sections_accepted_without_an_extension) {
    ps_config *cfg = load_ok(SHARD1 "[input]\n"
                                    "path = /data/day_*.tsv\n"
                                    "format = criteo\n"
                                    "[model]\n"
                                    "kind = dcn_v2\n"
                                    "anything = goes here\n"
                                    "[worker]\n"
                                    "batch = 4096\n");
    cr_assert_null(cfg->worker);
    cr_assert_eq(cfg->nshards, 1);
    ps_config_free(cfg);
}

/* A stand-in for the worker's extension: records what it was given. */
typedef struct ext_state {
    int nset;
    char last[128];
    int finished;
} ext_state;

static bool ext_owns(const char *section) { return !strcmp(section, "extra"); }

static int ext_set(ps_config *cfg, const char *section, const char *key, const char *value,
                   char *err, size_t errlen) {
    if (!cfg->worker)
        cfg->worker = calloc(1, sizeof(ext_state));
    ext_state *e = cfg->worker;
    if (!strcmp(key, "bad")) {
        snprintf(err, errlen, "no good: %s", value);
        return -1;
    }
    e->nset++;
    snprintf(e->last, sizeof(e->last), "%s.%s=%s", section, key, value);
    return 0;
}

static int ext_finish(ps_config *cfg, char *err, size_t errlen) {
    ext_state *e = cfg->worker;
    if (e && e->nset > 3) {
        snprintf(err, errlen, "[input] too many keys");
        return -1;
    }
    if (e)
        e->finished = 1;
    return 0;
}

static const ps_config_ext test_ext = {ext_owns, ext_set, ext_finish, free};

Test(config, extension_sees_its_sections) {
    ps_config *cfg = load_ok_ext(SHARD1 "[input]\npath = x.tsv\n[extra]\nk = v ; comment\n",
                                 &test_ext);
    ext_state *e = cfg->worker;
    cr_assert_not_null(e);
    cr_assert_eq(e->nset, 2);
    cr_assert_str_eq(e->last, "extra.k=v");
    cr_assert_eq(e->finished, 1);
    ps_config_free(cfg); /* frees cfg->worker through ext.free (ASan checks) */
}

Test(config, extension_errors_name_file_line_and_key) {
    expect_error_ext(SHARD1 "[model]\nkind = lr\nbad = 7\n", &test_ext, 5, "key 'bad'",
                     "no good: 7");
    expect_error_ext(SHARD1 "[input]\na = 1\nb = 2\nc = 3\nd = 4\n", &test_ext, 0,
                     "too many keys", NULL);
    /* Without the extension, a section it would own is unknown. */
    expect_error(SHARD1 "[extra]\nk = v\n", 4, "[extra]", "unknown section");
}

/* ---- slot ids ----------------------------------------------------------------- */

/* Two distinct generated names whose 16-bit slot ids are equal: by the
 * birthday bound a few hundred names usually suffice. */
static void find_slot_collision(char a[32], char b[32]) {
    enum { N = 20000 };
    static int32_t owner[65536];
    for (size_t i = 0; i < 65536; i++)
        owner[i] = -1;
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof(name), "slot%d", i);
        uint16_t id = ps_slot_id(name);
        if (owner[id] >= 0) {
            snprintf(a, 32, "slot%d", owner[id]);
            snprintf(b, 32, "%s", name);
            return;
        }
        owner[id] = i;
    }
    cr_assert_fail("no two of %d names share a slot id: ps_slot_id is not 16 bits wide?", N);
}

Test(config, colliding_slot_ids_are_rejected) {
    char a[32], b[32], text[512];
    find_slot_collision(a, b);
    cr_assert_str_neq(a, b);
    cr_assert_eq(ps_slot_id(a), ps_slot_id(b));

    snprintf(text, sizeof(text), SHARD1 "[table.t]\ndim = 4\nslots = X, %s, %s\n", a, b);
    expect_error(text, 0, "key 'slots'", "same 16-bit slot id");
    snprintf(text, sizeof(text), SHARD1 "[table.t]\ndim = 4\nslots = %s\n[table.u]\ndim = 4\nslots = %s\n",
             a, b);
    expect_error(text, 0, b, a);

    /* Either one alone is fine. */
    snprintf(text, sizeof(text), SHARD1 "[table.t]\ndim = 4\nslots = %s\n", a);
    ps_config_free(load_ok(text));
}

/* ---- number and address parsers --------------------------------------------- */

Test(config, parse_double_is_strict) {
    double v = -1;
    cr_assert_eq(ps_parse_double("1.5", &v), 0);
    cr_assert_eq(v, 1.5);
    cr_assert_eq(ps_parse_double("-2e-3", &v), 0);
    cr_assert_eq(v, -2e-3);
    const char *bad[] = {"", "1.5x", " ", "nan", "inf", "-inf", "1e999", "0x", "1,5"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 7;
        cr_assert_eq(ps_parse_double(bad[i], &v), PS_EPARSE, "'%s' accepted", bad[i]);
        cr_assert_eq(v, 7, "'%s' wrote the output on failure", bad[i]);
    }
}

Test(config, parse_u64_is_strict) {
    uint64_t v = 0;
    cr_assert_eq(ps_parse_u64("0", &v), 0);
    cr_assert_eq(v, 0);
    cr_assert_eq(ps_parse_u64("18446744073709551615", &v), 0);
    cr_assert_eq(v, UINT64_MAX);
    const char *bad[] = {"", "-1", "+1", " 1", "1 ", "18446744073709551616", "1.0", "0x10"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 7;
        cr_assert_eq(ps_parse_u64(bad[i], &v), PS_EPARSE, "'%s' accepted", bad[i]);
        cr_assert_eq(v, 7, "'%s' wrote the output on failure", bad[i]);
    }
}

Test(config, parse_hostport) {
    char host[64];
    int port = 0;
    cr_assert_eq(ps_parse_hostport("127.0.0.1:7101", host, sizeof(host), &port), 0);
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(port, 7101);
    cr_assert_eq(ps_parse_hostport("shard-0.ps.svc:65535", host, sizeof(host), &port), 0);
    cr_assert_str_eq(host, "shard-0.ps.svc");
    cr_assert_eq(port, 65535);
    cr_assert_eq(ps_parse_hostport("localhost:7101", host, sizeof(host), &port), 0);
    cr_assert_str_eq(host, "localhost");
    cr_assert_eq(ps_parse_hostport("[::1]:7102", host, sizeof(host), &port), 0);
    cr_assert_str_eq(host, "::1", "the brackets are not part of the host");
    cr_assert_eq(port, 7102);
    cr_assert_eq(ps_parse_hostport("[fe80::1%eth0]:1", host, sizeof(host), &port), 0);
    cr_assert_str_eq(host, "fe80::1%eth0");
    cr_assert_eq(ps_parse_hostport("[::ffff:10.0.0.1]:1", host, sizeof(host), &port), 0);
    cr_assert_str_eq(host, "::ffff:10.0.0.1");
    const char *bad[] = {"", "host", ":1", "host:", "host:65536", "host:x", "host:-1",
                         "::1:7101" /* bare IPv6: where does the port start? */, "[::1]", "[]:1",
                         "[::1:1", "::1]:1", "[zz::1]:1", "[127.0.0.1]:1", "my host:1", "a/b:1",
                         "-host:1", "[::1]x:1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(ps_parse_hostport(bad[i], host, sizeof(host), &port), PS_EPARSE, "'%s'",
                     bad[i]);
    cr_assert_eq(ps_parse_hostport("averyveryverylonghostname:1", host, 8, &port), PS_EPARSE,
                 "a host longer than the buffer must be refused, not truncated");
}

Test(config, parse_host) {
    char host[64];
    cr_assert_eq(ps_parse_host("0.0.0.0", host, sizeof(host)), 0);
    cr_assert_str_eq(host, "0.0.0.0");
    cr_assert_eq(ps_parse_host("[::]", host, sizeof(host)), 0);
    cr_assert_str_eq(host, "::");
    cr_assert_eq(ps_parse_host("ctrps-0.ctrps.ns.svc", host, sizeof(host)), 0);
    const char *bad[] = {"", "::", "host:1", "[::1]:1", "a b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(ps_parse_host(bad[i], host, sizeof(host)), PS_EPARSE, "'%s'", bad[i]);
}

/* Host names and IPv6 pass validation wherever an address is configured;
 * what is not an address fails at load, naming the key. */
Test(config, addresses_in_the_config) {
    ps_config *cfg = load_ok("[cluster]\nshards = localhost:7101, [::1]:7102, ctrps-1.ctrps.ns.svc:7101\n"
                             "[server]\nbind = [::]\nmetrics_listen = localhost:9100\n");
    cr_assert_str_eq(cfg->shards[1], "[::1]:7102");
    cr_assert_str_eq(cfg->server.bind, "[::]");
    ps_config_free(cfg);
    cfg = load_ok("[cluster]\nshards = 127.0.0.1:1\n");
    cr_assert_str_eq(cfg->server.bind, "", "bind defaults to the shard's own host");
    ps_config_free(cfg);
    expect_error("[cluster]\nshards = ::1:7101\n", 2, "key 'shards'", "[IPv6]");
    expect_error("[cluster]\nshards = 127.0.0.1:1\n[server]\nbind = 0.0.0.0:7101\n", 4, "key 'bind'",
                 "not a host");
    expect_error("[cluster]\nshards = 127.0.0.1:1\n[server]\nmetrics_listen = 9100\n", 4,
                 "key 'metrics_listen'", "HOST:PORT");
}

Test(config, optimizer_fields_and_names) {
    const char *names[3];
    ps_optim_params p = {.kind = PS_OPT_FTRL};
    cr_assert_eq(ps_optim_fields(&p, names), 3);
    cr_assert_str_eq(names[0], "w");
    cr_assert_str_eq(names[1], "z");
    cr_assert_str_eq(names[2], "n");
    cr_assert_str_eq(ps_optimizer_name(PS_OPT_FTRL), "ftrl");
    p.kind = PS_OPT_FTRL_GROUP_LASSO;
    cr_assert_eq(ps_optim_fields(&p, names), 3);
    cr_assert_eq(ps_optim_state_width(&p, 5), 15);
    cr_assert_str_eq(ps_optimizer_name(PS_OPT_FTRL_GROUP_LASSO), "ftrl_group_lasso");
    p.kind = PS_OPT_ADAGRAD;
    cr_assert_eq(ps_optim_fields(&p, names), 2);
    cr_assert_str_eq(names[1], "acc");
    cr_assert_eq(ps_optim_state_width(&p, 5), 10);
    p.rowwise = true;
    cr_assert_eq(ps_optim_state_width(&p, 5), 6);
    cr_assert_str_eq(ps_optimizer_name(PS_OPT_ADAGRAD), "adagrad");
}

Test(config, optimizer_layout_stays_within_its_limits) {
    for (int k = 0; k < PS_OPT_COUNT; k++)
        for (int rowwise = 0; rowwise <= 1; rowwise++) {
            ps_optim_params p = {.kind = (ps_optimizer_kind)k, .rowwise = rowwise};
            const char *names[PS_OPTIM_FIELDS_MAX];
            int n = ps_optim_fields(&p, names);
            cr_assert(n >= 2 && n <= PS_OPTIM_FIELDS_MAX, "%s: %d fields", ps_optimizer_name(p.kind), n);
            cr_assert_leq(ps_optim_state_width(&p, PS_OPTIM_DIM_MAX), PS_OPTIM_STATE_MAX);
            cr_assert_leq(ps_optim_state_width(&p, 7), (uint32_t)n * 7);
        }
    /* Config loading takes exactly the optimizers' limit. */
    char text[256];
    snprintf(text, sizeof(text), SHARD1 "[table.t]\ndim = %d\n", PS_OPTIM_DIM_MAX);
    ps_config_free(load_ok(text));
    char over[16];
    snprintf(over, sizeof(over), "'%d'", PS_OPTIM_DIM_MAX + 1);
    snprintf(text, sizeof(text), SHARD1 "[table.t]\ndim = %d\n", PS_OPTIM_DIM_MAX + 1);
    expect_error(text, 4, "key 'dim'", over);
}

/* ---- feature lifecycle keys ------------------------------------------------------ */

Test(config, lifecycle_keys_default_off_and_parse) {
    ps_config *cfg = load_ok("[cluster]\n"
                             "shards = 127.0.0.1:7101\n"
                             "[table.off]\n"
                             "dim = 1\n"
                             "[table.on]\n"
                             "dim = 2\n"
                             "optimizer = adagrad\n"
                             "admit_probability = 0.25\n"
                             "admit_after = 3\n"
                             "admit_bloom_bits = 4096\n"
                             "ttl_s = 86400\n"
                             "expire_below = 1e-9\n");
    const ps_table_config *off = ps_config_table(cfg, "off");
    cr_assert_eq(off->admit_probability, 1.0, "every key is admitted by default");
    cr_assert_eq(off->admit_after, 0);
    cr_assert_eq(off->admit_bloom_bits, 1u << 24);
    cr_assert_eq(off->ttl_s, 0, "rows never expire by default");
    cr_assert_eq(off->expire_below, 0.0);
    const ps_table_config *on = ps_config_table(cfg, "on");
    cr_assert_eq(on->admit_probability, 0.25);
    cr_assert_eq(on->admit_after, 3);
    cr_assert_eq(on->admit_bloom_bits, 4096);
    cr_assert_eq(on->ttl_s, 86400);
    cr_assert_eq(on->expire_below, 1e-9);
    ps_config_free(cfg);
}

Test(config, lifecycle_keys_out_of_range_are_rejected) {
    expect_error("[cluster]\nshards = 127.0.0.1:1\n[table.t]\ndim = 1\nadmit_probability = 1.5\n", 5,
                 "admit_probability", "[0, 1]");
    expect_error("[cluster]\nshards = 127.0.0.1:1\n[table.t]\ndim = 1\nadmit_after = 16\n", 5,
                 "admit_after", "[0, 15]");
    expect_error("[cluster]\nshards = 127.0.0.1:1\n[table.t]\ndim = 1\nadmit_bloom_bits = 100\n", 5,
                 "admit_bloom_bits", NULL);
    expect_error("[cluster]\nshards = 127.0.0.1:1\n[table.t]\ndim = 1\nttl_s = -1\n", 5, "ttl_s", NULL);
    expect_error("[cluster]\nshards = 127.0.0.1:1\n[table.t]\ndim = 1\nexpire_below = -0.5\n", 5,
                 "expire_below", NULL);
}
