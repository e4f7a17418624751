/* Unit tests of the input parsers and the [input] config section, on lines
 * built here. The real click logs are exercised in test_parse_data.c. */

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "keys.h"
#include "parse.h"

/* ---- helpers ------------------------------------------------------------- */

static char err[256];

static ps_parser *make_parser(const char *const *kv) {
    ps_input_config c;
    cr_assert_eq(ps_input_config_init(&c), 0);
    for (; kv && kv[0]; kv += 2)
        cr_assert_eq(ps_input_config_set(&c, kv[0], kv[1], err, sizeof(err)), 0, "%s = %s: %s",
                     kv[0], kv[1], err);
    ps_parser *p = NULL;
    int r = ps_parser_new(&c, &p, err, sizeof(err));
    cr_assert_eq(r, 0, "ps_parser_new: %s", err);
    ps_input_config_deinit(&c);
    return p;
}

static int parse(ps_parser *p, const char *line, ps_example *ex) {
    err[0] = '\0';
    return ps_parser_parse(p, line, strlen(line), ex, err, sizeof(err));
}

static uint64_t fid(const char *slot, const char *value) {
    return ps_fid(ps_slot_id(slot), value, strlen(value));
}

/* The feature of `slot` (by name) at position `nth` among that slot's
 * features, or NULL. */
static const ps_feature *find(const ps_parser *p, const ps_example *ex, const char *slot,
                              int nth) {
    int idx = ps_parser_slot_index(p, slot);
    for (uint32_t i = 0; idx >= 0 && i < ex->nfeatures; i++)
        if (ex->features[i].slot == idx && nth-- == 0)
            return &ex->features[i];
    return NULL;
}

static void expect_fail(ps_parser *p, const char *line, size_t len, const char *reason_part) {
    ps_example ex;
    ps_example_init(&ex);
    err[0] = '\0';
    int r = ps_parser_parse(p, line, len, &ex, err, sizeof(err));
    cr_expect_eq(r, PS_EPARSE, "line accepted, expected '%s'", reason_part);
    cr_expect(strstr(err, reason_part) != NULL, "reason '%s' lacks '%s'", err, reason_part);
    cr_expect(strlen(err) < 120, "reason too long: %s", err);
    ps_example_deinit(&ex);
}

static void expect_fail_s(ps_parser *p, const char *line, const char *reason_part) {
    expect_fail(p, line, strlen(line), reason_part);
}

/* A Criteo line: label, I1..I13, C1..C26 from the arrays (NULL = empty). */
static char *criteo_line(const char *label, const char *const ints[13],
                         const char *const cats[26]) {
    static char buf[4096];
    size_t n = 0;
    if (label)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\t", label);
    for (int i = 0; i < 13; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\t", ints[i] ? ints[i] : "");
    for (int i = 0; i < 26; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%s", cats[i] ? cats[i] : "",
                              i < 25 ? "\t" : "");
    return buf;
}

static const char *const INTS[13] = {"1", "1382", "0", "2", "3", "-1", NULL,
                                     "1000000", "7", "15", "1023", "1024", NULL};
static const char *const CATS[26] = {
    "68fd1e64", "80e26c9b", "fb936136", "7b4723c4", "25c83c98", "7e0ccccf", "de7995b8",
    "1f89b562", "a73ee510", "a8cd5504", "b2cb9c98", "37c9c164", "2824a5f6", "1adce6ef",
    "8ba8b39a", "891b62e7", "e5ba7672", "f54016b9", "21ddcdc9", "b1252a9d", "07b5194c",
    NULL,       "3a171ecb", "c5c50484", "e8b83407", NULL};

/* The Kaggle rule, written independently of parse.c. */
static void bucket_token(const char *text, char *out, size_t outlen) {
    long long x = atoll(text);
    if (x > 2)
        x = (long long)floor(pow(log((double)x), 2.0));
    snprintf(out, outlen, "%lld", x);
}

/* ---- [input] config -------------------------------------------------------- */

Test(input_config, defaults) {
    ps_input_config c;
    cr_assert_eq(ps_input_config_init(&c), 0);
    cr_expect_eq(c.format, PS_INPUT_CRITEO);
    cr_expect_eq(c.integers, PS_INTEGERS_BUCKETIZE);
    cr_expect(c.labelled);
    cr_expect_str_eq(c.label_column, "click");
    cr_assert_eq(c.nignore_columns, 1);
    cr_expect_str_eq(c.ignore_columns[0], "id");
    cr_expect_str_eq(c.libsvm_slot, "f");
    cr_expect_eq(c.max_line_bytes, 65536);
    cr_expect_eq(c.max_slots, 1024);
    cr_expect_eq(ps_input_config_check(&c, err, sizeof(err)), 0);
    ps_input_config_deinit(&c);
    ps_input_config_deinit(NULL);
}

Test(input_config, sets_every_key) {
    ps_input_config c;
    ps_input_config_init(&c);
    cr_assert_eq(ps_input_config_set(&c, "format", "csv", err, sizeof(err)), 0);
    cr_assert_eq(ps_input_config_set(&c, "label_column", "y", err, sizeof(err)), 0);
    cr_assert_eq(ps_input_config_set(&c, "ignore_columns", " id, hour ,ts", err, sizeof(err)), 0);
    cr_assert_eq(ps_input_config_set(&c, "labelled", "false", err, sizeof(err)), 0);
    cr_assert_eq(ps_input_config_set(&c, "max_line_bytes", "4096", err, sizeof(err)), 0);
    cr_assert_eq(ps_input_config_set(&c, "max_slots", "7", err, sizeof(err)), 0);
    cr_expect_eq(c.format, PS_INPUT_CSV);
    cr_expect_str_eq(c.label_column, "y");
    cr_assert_eq(c.nignore_columns, 3);
    cr_expect_str_eq(c.ignore_columns[0], "id");
    cr_expect_str_eq(c.ignore_columns[1], "hour");
    cr_expect_str_eq(c.ignore_columns[2], "ts");
    cr_expect(!c.labelled);
    cr_expect_eq(c.max_line_bytes, 4096);
    cr_expect_eq(c.max_slots, 7);
    cr_expect_eq(ps_input_config_check(&c, err, sizeof(err)), 0, "%s", err);
    /* An empty list ignores nothing. */
    cr_assert_eq(ps_input_config_set(&c, "ignore_columns", "", err, sizeof(err)), 0);
    cr_expect_eq(c.nignore_columns, 0);
    ps_input_config_deinit(&c);

    ps_input_config_init(&c);
    cr_assert_eq(ps_input_config_set(&c, "format", "libsvm", err, sizeof(err)), 0);
    cr_assert_eq(ps_input_config_set(&c, "libsvm_slot", "feat", err, sizeof(err)), 0);
    cr_expect_str_eq(c.libsvm_slot, "feat");
    cr_expect_eq(ps_input_config_check(&c, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_input_config_set(&c, "format", "criteo", err, sizeof(err)), 0);
    cr_assert_eq(ps_input_config_set(&c, "integers", "dense", err, sizeof(err)), 0);
    cr_expect_eq(c.integers, PS_INTEGERS_DENSE);
    ps_input_config_deinit(&c);
}

Test(input_config, rejects_bad_keys_and_values) {
    static const char *const bad[][3] = {
        {"fromat", "criteo", "unknown key"},
        {"format", "tsv", "expected criteo, csv, libsvm or slots"},
        {"format", "", "expected criteo"},
        {"integers", "log", "expected bucketize or dense"},
        {"labelled", "maybe", "expected true or false"},
        {"max_line_bytes", "10", "expected an integer in [64"},
        {"max_line_bytes", "2000000000", "expected an integer in [64"},
        {"max_line_bytes", "64k", "expected an integer"},
        {"max_slots", "0", "expected an integer in [1, 65535]"},
        {"max_slots", "70000", "expected an integer in [1, 65535]"},
        {"label_column", "", "must not be empty"},
        {"label_column", "a b", "may not contain"},
        {"libsvm_slot", "f:1", "may not contain"},
        {"libsvm_slot", "0123456789012345678901234567890123456789012345678901234567890123",
         "longer than 63"},
        {"ignore_columns", "id,,hour", "must not be empty"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        ps_input_config c;
        ps_input_config_init(&c);
        err[0] = '\0';
        cr_expect_eq(ps_input_config_set(&c, bad[i][0], bad[i][1], err, sizeof(err)), PS_ECONFIG,
                     "%s = %s accepted", bad[i][0], bad[i][1]);
        cr_expect(strstr(err, bad[i][2]) != NULL, "%s = %s: reason '%s'", bad[i][0], bad[i][1],
                  err);
        /* The old value survives a rejected one. */
        cr_expect_eq(c.format, PS_INPUT_CRITEO);
        cr_expect_eq(c.nignore_columns, 1);
        cr_expect_eq(c.max_slots, 1024);
        ps_input_config_deinit(&c);
    }
}

Test(input_config, unknown_key_lists_the_known_ones) {
    static const char *const known[] = {"format", "integers", "dense_integers",
                                        "bucketize_integers", "empty_categories_as_value",
                                        "labelled", "label_column",
                                        "ignore_columns", "libsvm_slot", "max_line_bytes",
                                        "max_slots", "id_column"};
    ps_input_config c;
    ps_input_config_init(&c);
    cr_assert_eq(ps_input_config_set(&c, "path", "x.tsv", err, sizeof(err)), PS_ECONFIG);
    char msg[sizeof(err)];
    snprintf(msg, sizeof(msg), "%s", err);
    cr_expect(!strncmp(msg, "unknown key (known: ", 20), "%s", msg);
    for (size_t i = 0; i < sizeof(known) / sizeof(*known); i++) {
        cr_expect(strstr(msg, known[i]) != NULL, "'%s' missing from '%s'", known[i], msg);
        err[0] = '\0';
        ps_input_config_set(&c, known[i], "", err, sizeof(err));
        cr_expect(!strstr(err, "unknown key"), "%s: %s", known[i], err);
    }
    ps_input_config_deinit(&c);
}

/* The id column of --predict: split as each format's parser splits. */
Test(input_config, column_of_a_line) {
    static const struct {
        const char *format, *line;
        uint32_t col;
        const char *want; /* NULL: no such column */
    } cases[] = {
        {"criteo", "1\t\t3\tx y", 1, "1"},   {"criteo", "1\t\t3\tx y", 2, ""},
        {"criteo", "1\t\t3\tx y", 4, "x y"}, {"criteo", "1\t\t3\tx y", 5, NULL},
        {"criteo", "", 1, ""},                {"csv", "id9,1,,a b", 1, "id9"},
        {"csv", "id9,1,,a b", 3, ""},         {"csv", "id9,1,,a b", 4, "a b"},
        {"slots", "  1 \t u:a  i:b ", 1, "1"}, {"slots", "  1 \t u:a  i:b ", 3, "i:b"},
        {"slots", "  1 \t u:a  i:b ", 4, NULL}, {"libsvm", "+1 3:0.5", 2, "3:0.5"},
        {"slots", "", 1, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        ps_input_config c;
        ps_input_config_init(&c);
        cr_assert_eq(ps_input_config_set(&c, "format", cases[i].format, err, sizeof(err)), 0);
        const char *text = "unchanged";
        size_t len = 9;
        int r = ps_input_column(&c, cases[i].line, strlen(cases[i].line), cases[i].col, &text, &len);
        if (cases[i].want) {
            cr_expect_eq(r, 0, "case %zu", i);
            cr_expect(len == strlen(cases[i].want) && !strncmp(text, cases[i].want, len),
                      "case %zu: '%.*s'", i, (int)len, text);
        } else {
            cr_expect_eq(r, -ENOENT, "case %zu", i);
            cr_expect_eq(len, 9, "case %zu: output written on failure", i);
        }
        ps_input_config_deinit(&c);
    }
}

Test(input_config, rejects_keys_of_other_formats) {
    static const char *const combos[][5] = {
        {"format", "csv", "integers", "dense", "'integers' does not apply to format = csv"},
        {"format", "criteo", "label_column", "y", "'label_column' does not apply"},
        {"format", "slots", "ignore_columns", "id", "'ignore_columns' does not apply"},
        {"format", "csv", "libsvm_slot", "g", "'libsvm_slot' does not apply"},
        {"format", "csv", "empty_categories_as_value", "true", "'empty_categories_as_value' does not"},
        {"format", "slots", "labelled", "false", "labelled = false applies only"},
        {"format", "libsvm", "labelled", "false", "labelled = false applies only"},
        {"format", "csv", "ignore_columns", "id, click", "also in ignore_columns"},
    };
    for (size_t i = 0; i < sizeof(combos) / sizeof(*combos); i++) {
        ps_input_config c;
        ps_input_config_init(&c);
        cr_assert_eq(ps_input_config_set(&c, combos[i][0], combos[i][1], err, sizeof(err)), 0);
        cr_assert_eq(ps_input_config_set(&c, combos[i][2], combos[i][3], err, sizeof(err)), 0);
        err[0] = '\0';
        cr_expect_eq(ps_input_config_check(&c, err, sizeof(err)), PS_ECONFIG, "combo %zu", i);
        cr_expect(strstr(err, combos[i][4]) != NULL, "reason '%s'", err);
        ps_parser *p = NULL;
        cr_expect_eq(ps_parser_new(&c, &p, err, sizeof(err)), PS_ECONFIG);
        cr_expect_null(p);
        ps_input_config_deinit(&c);
    }
}

/* The loader extension the worker will register, reduced to [input]. */
static bool ext_owns(const char *section) { return !strcmp(section, "input"); }
static void ext_free(void *w) {
    ps_input_config_deinit(w);
    free(w);
}
static int ext_set(ps_config *cfg, const char *section, const char *key, const char *value,
                   char *e, size_t elen) {
    if (strcmp(section, "input"))
        return 0;
    if (!cfg->worker) {
        ps_input_config *c = malloc(sizeof(*c));
        if (!c || ps_input_config_init(c) < 0) {
            free(c);
            return -ENOMEM;
        }
        cfg->worker = c;
    }
    return ps_input_config_set(cfg->worker, key, value, e, elen);
}
static int ext_finish(ps_config *cfg, char *e, size_t elen) {
    return cfg->worker ? ps_input_config_check(cfg->worker, e, elen) : 0;
}
static const ps_config_ext ext = {ext_owns, ext_set, ext_finish, ext_free};

static int load_ini(const char *text, ps_config **ret, char *path, size_t pathlen) {
    snprintf(path, pathlen, "/tmp/ctrps-test-parse-%d.ini", (int)getpid());
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    int r = ps_config_load(path, &ext, ret, err, sizeof(err));
    unlink(path);
    return r;
}

Test(input_config, ini_section_through_the_loader) {
    char path[128];
    ps_config *cfg = NULL;
    int r = load_ini("[cluster]\nshards = 127.0.0.1:7000\n"
                     "[input]\nformat = criteo ; criteo | csv | libsvm | slots\n"
                     "integers = bucketize ; bucketize | dense\n",
                     &cfg, path, sizeof(path));
    cr_assert_eq(r, 0, "%s", err);
    ps_input_config *c = cfg->worker;
    cr_assert_not_null(c);
    cr_expect_eq(c->format, PS_INPUT_CRITEO);
    cr_expect_eq(c->integers, PS_INTEGERS_BUCKETIZE);
    ps_config_free(cfg);

    cfg = NULL;
    r = load_ini("[cluster]\nshards = 127.0.0.1:7000\n"
                 "[input]\nformat = csv\nlabel_column = y\nignore_columns = id, hour\n",
                 &cfg, path, sizeof(path));
    cr_assert_eq(r, 0, "%s", err);
    c = cfg->worker;
    cr_expect_eq(c->format, PS_INPUT_CSV);
    cr_expect_str_eq(c->label_column, "y");
    cr_expect_eq(c->nignore_columns, 2);
    ps_config_free(cfg);

    /* A bad value is reported with the file and line. */
    cfg = NULL;
    r = load_ini("[cluster]\nshards = 127.0.0.1:7000\n[input]\nformat = parquet\n", &cfg, path,
                 sizeof(path));
    cr_expect_eq(r, PS_ECONFIG);
    cr_expect_null(cfg);
    cr_expect(strstr(err, ":4: [input] key 'format': expected criteo") != NULL, "%s", err);

    /* A combination is rejected when the file is complete. */
    r = load_ini("[cluster]\nshards = 127.0.0.1:7000\n[input]\nintegers = dense\nformat = slots\n",
                 &cfg, path, sizeof(path));
    cr_expect_eq(r, PS_ECONFIG);
    cr_expect(strstr(err, "'integers' does not apply to format = slots") != NULL, "%s", err);
}

/* ---- criteo -------------------------------------------------------------- */

Test(criteo, parses_a_line_field_by_field) {
    ps_parser *p = make_parser(NULL);
    cr_assert_eq(ps_parser_nslots(p), 39);
    cr_expect_str_eq(ps_parser_slot_name(p, 0), "I1");
    cr_expect_str_eq(ps_parser_slot_name(p, 13), "C1");
    cr_expect_eq(ps_parser_slot_id(p, 13), ps_slot_id("C1"));
    cr_expect_eq(ps_parser_ndense(p), 0);
    cr_expect(!ps_parser_wants_header(p));
    ps_example ex;
    ps_example_init(&ex);
    cr_assert_eq(parse(p, criteo_line("1", INTS, CATS), &ex), 0, "%s", err);
    cr_expect_eq(ex.label, 1.0f);
    cr_expect_eq(ex.ndense, 0);
    /* 11 integers and 24 categoricals are present. */
    cr_expect_eq(ex.nfeatures, 11 + 24);
    for (int i = 0; i < 13; i++) {
        char slot[8], tok[32];
        snprintf(slot, sizeof(slot), "I%d", i + 1);
        const ps_feature *f = find(p, &ex, slot, 0);
        if (!INTS[i]) {
            cr_expect_null(f, "%s is missing, yet has a feature", slot);
            continue;
        }
        cr_assert_not_null(f, "%s", slot);
        bucket_token(INTS[i], tok, sizeof(tok));
        cr_expect_eq(f->fid, fid(slot, tok), "%s = %s: wrong bucket (want '%s')", slot, INTS[i],
                     tok);
        cr_expect_eq(f->value, 1.0f);
        cr_expect_eq(f->slot_id, ps_slot_id(slot));
    }
    /* Spot checks of the rule itself: 3 -> 1, 1382 -> 52, 1e6 -> 190, -1
     * keeps its token, 1023/1024 straddle parse.c's table edge. */
    cr_expect_eq(find(p, &ex, "I5", 0)->fid, fid("I5", "1"));
    cr_expect_eq(find(p, &ex, "I2", 0)->fid, fid("I2", "52"));
    cr_expect_eq(find(p, &ex, "I8", 0)->fid, fid("I8", "190"));
    cr_expect_eq(find(p, &ex, "I6", 0)->fid, fid("I6", "-1"));
    cr_expect_eq(find(p, &ex, "I11", 0)->fid, fid("I11", "48"));
    cr_expect_eq(find(p, &ex, "I12", 0)->fid, fid("I12", "48"));
    for (int i = 0; i < 26; i++) {
        char slot[8];
        snprintf(slot, sizeof(slot), "C%d", i + 1);
        const ps_feature *f = find(p, &ex, slot, 0);
        if (!CATS[i]) {
            cr_expect_null(f, "%s", slot);
            continue;
        }
        cr_assert_not_null(f, "%s", slot);
        cr_expect_eq(f->fid, fid(slot, CATS[i]), "%s", slot);
        cr_expect_eq(ps_fid_slot(f->fid), ps_slot_id(slot));
    }
    cr_expect_eq(find(p, &ex, "C1", 0)->fid, ps_fid(ps_slot_id("C1"), "68fd1e64", 8));
    ps_example_deinit(&ex);
    ps_parser_free(p);
}

Test(criteo, dense_integers) {
    static const char *const kv[] = {"integers", "dense", NULL};
    ps_parser *p = make_parser(kv);
    cr_assert_eq(ps_parser_nslots(p), 26);
    cr_expect_str_eq(ps_parser_slot_name(p, 0), "C1");
    cr_expect_eq(ps_parser_slot_index(p, "I1"), -1);
    cr_expect_eq(ps_parser_ndense(p), 13);
    ps_example ex;
    ps_example_init(&ex);
    cr_assert_eq(parse(p, criteo_line("0", INTS, CATS), &ex), 0, "%s", err);
    cr_expect_eq(ex.label, 0.0f);
    cr_assert_eq(ex.ndense, 13);
    cr_expect_eq(ex.nfeatures, 24);
    for (int i = 0; i < 13; i++) {
        double want = 0;
        if (INTS[i] && atoll(INTS[i]) > 0)
            want = log1p((double)atoll(INTS[i]));
        cr_expect_float_eq(ex.dense[i], want, 1e-5, "I%d = %s: %g, want %g", i + 1,
                           INTS[i] ? INTS[i] : "(missing)", ex.dense[i], want);
    }
    cr_expect_eq(ex.dense[5], 0.0f, "negative maps to 0");
    cr_expect_eq(find(p, &ex, "C1", 0)->fid, fid("C1", "68fd1e64"));
    cr_expect_eq(find(p, &ex, "C1", 0)->slot, 0);
    ps_example_deinit(&ex);
    ps_parser_free(p);
}

/* empty_categories_as_value: an empty C field is the value "" of its slot
 * (C22 and C26 are empty in CATS); empty integers still produce nothing. */
Test(criteo, empty_categories_as_value) {
    static const char *const kv[] = {"empty_categories_as_value", "true", NULL};
    ps_parser *p = make_parser(kv);
    ps_example ex;
    ps_example_init(&ex);
    cr_assert_eq(parse(p, criteo_line("1", INTS, CATS), &ex), 0, "%s", err);
    cr_expect_eq(ex.nfeatures, 37, "11 integers + 26 categories, got %u", ex.nfeatures);
    cr_assert_not_null(find(p, &ex, "C22", 0));
    cr_expect_eq(find(p, &ex, "C22", 0)->fid, fid("C22", ""));
    cr_expect_eq(find(p, &ex, "C26", 0)->fid, fid("C26", ""));
    cr_expect_neq(fid("C22", ""), fid("C26", ""));
    cr_expect_eq(find(p, &ex, "C1", 0)->fid, fid("C1", "68fd1e64"));
    cr_expect_null(find(p, &ex, "I7", 0));
    ps_example_deinit(&ex);
    ps_parser_free(p);
}

Test(criteo, unlabelled_layout) {
    static const char *const kv[] = {"labelled", "false", NULL};
    ps_parser *p = make_parser(kv);
    ps_example ex;
    ps_example_init(&ex);
    cr_assert_eq(parse(p, criteo_line(NULL, INTS, CATS), &ex), 0, "%s", err);
    cr_expect(isnan(ex.label));
    cr_expect_eq(ex.nfeatures, 35);
    cr_expect_eq(find(p, &ex, "C1", 0)->fid, fid("C1", "68fd1e64"));
    expect_fail_s(p, criteo_line("1", INTS, CATS), "expected 39 fields, got 40");
    ps_example_deinit(&ex);
    ps_parser_free(p);

    /* And the labelled parser refuses the unlabelled layout. */
    p = make_parser(NULL);
    expect_fail_s(p, criteo_line(NULL, INTS, CATS), "expected 40 fields, got 39");
    ps_parser_free(p);
}

Test(criteo, all_fields_empty_is_a_valid_line) {
    static const char *const none13[13], *const none26[26];
    ps_parser *p = make_parser(NULL);
    ps_example ex;
    ps_example_init(&ex);
    cr_assert_eq(parse(p, criteo_line("0", none13, none26), &ex), 0, "%s", err);
    cr_expect_eq(ex.nfeatures, 0);
    ps_example_deinit(&ex);
    ps_parser_free(p);
}

Test(criteo, line_endings) {
    ps_parser *p = make_parser(NULL);
    ps_example a, b;
    ps_example_init(&a);
    ps_example_init(&b);
    char line[4096], crlf[4100];
    snprintf(line, sizeof(line), "%s", criteo_line("1", INTS, CATS));
    snprintf(crlf, sizeof(crlf), "%s\r\n", line);
    cr_assert_eq(parse(p, line, &a), 0, "%s", err);
    cr_assert_eq(parse(p, crlf, &b), 0, "CRLF: %s", err);
    cr_assert_eq(a.nfeatures, b.nfeatures);
    for (uint32_t i = 0; i < a.nfeatures; i++)
        cr_expect_eq(a.features[i].fid, b.features[i].fid);
    /* LF only, too, and a length that stops before the newline. */
    crlf[strlen(line)] = '\n';
    cr_expect_eq(ps_parser_parse(p, crlf, strlen(line) + 1, &b, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(ps_parser_parse(p, crlf, strlen(line), &b, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(b.features[b.nfeatures - 1].fid, a.features[a.nfeatures - 1].fid);
    ps_example_deinit(&a);
    ps_example_deinit(&b);
    ps_parser_free(p);
}

Test(criteo, does_not_read_past_len) {
    /* A line that is not NUL-terminated: the byte after it is a tab that
     * would make a 41st field if the parser looked. */
    ps_parser *p = make_parser(NULL);
    const char *good = criteo_line("1", INTS, CATS);
    size_t n = strlen(good);
    char *buf = malloc(n + 8);
    memcpy(buf, good, n);
    memcpy(buf + n, "\tzz\t", 4);
    ps_example ex;
    ps_example_init(&ex);
    cr_expect_eq(ps_parser_parse(p, buf, n, &ex, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(ex.nfeatures, 35);
    /* The last field ends at len: C26 is missing in this line. */
    cr_expect_null(find(p, &ex, "C26", 0));
    free(buf);
    ps_example_deinit(&ex);
    ps_parser_free(p);
}

Test(criteo, hostile_lines) {
    ps_parser *p = make_parser(NULL);
    char line[8192];
    const char *good = criteo_line("1", INTS, CATS);

    expect_fail_s(p, "0\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11", "expected 40 fields, got 12");
    snprintf(line, sizeof(line), "%s\textra", good);
    expect_fail_s(p, line, "expected 40 fields, got 41");
    snprintf(line, sizeof(line), "%s\t", good);
    expect_fail_s(p, line, "expected 40 fields, got 41"); /* trailing tab */
    expect_fail_s(p, "1", "expected 40 fields, got 1");
    expect_fail_s(p, criteo_line("x", INTS, CATS), "label is not 0/1: 'x'");
    expect_fail_s(p, criteo_line("2", INTS, CATS), "label is not 0/1: '2'");
    expect_fail_s(p, criteo_line("", INTS, CATS), "label is not 0/1: ''");
    expect_fail_s(p, criteo_line("1.0", INTS, CATS), "label is not 0/1");
    /* A field-count problem wins over the content error it causes. */
    expect_fail_s(p, "click\tI1\tI2", "expected 40 fields, got 3");

    const char *ints[13];
    memcpy(ints, INTS, sizeof(ints));
    ints[2] = "12a";
    expect_fail_s(p, criteo_line("0", ints, CATS), "I3 is not an integer: '12a'");
    ints[2] = "1.5";
    expect_fail_s(p, criteo_line("0", ints, CATS), "I3 is not an integer");
    ints[2] = "-";
    expect_fail_s(p, criteo_line("0", ints, CATS), "I3 is not an integer");
    ints[2] = "99999999999999999999";
    expect_fail_s(p, criteo_line("0", ints, CATS), "I3 is not an integer");

    /* Empty lines. */
    expect_fail(p, "", 0, "empty line");
    expect_fail_s(p, "\n", "empty line");
    expect_fail_s(p, "\r\n", "empty line");

    /* Embedded NUL: the length says the line goes on. */
    memcpy(line, good, strlen(good) + 1);
    line[20] = '\0';
    expect_fail(p, line, strlen(good), "embedded NUL at byte 20");

    /* Invalid UTF-8: a stray continuation byte, an overlong '/', a UTF-16
     * surrogate, a code point above U+10FFFF, a truncated sequence. */
    static const char *const bad_utf8[] = {"\x80", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                                           "\xe2\x82", "\xff"};
    for (size_t i = 0; i < sizeof(bad_utf8) / sizeof(*bad_utf8); i++) {
        const char *cats[26];
        memcpy(cats, CATS, sizeof(cats));
        cats[25] = bad_utf8[i];
        expect_fail_s(p, criteo_line("1", INTS, cats), "invalid UTF-8 at byte");
    }
    /* ... while valid UTF-8 is a token like any other. */
    {
        const char *cats[26];
        memcpy(cats, CATS, sizeof(cats));
        cats[0] = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
        ps_example ex;
        ps_example_init(&ex);
        cr_expect_eq(parse(p, criteo_line("1", INTS, cats), &ex), 0, "%s", err);
        cr_expect_eq(find(p, &ex, "C1", 0)->fid, fid("C1", cats[0]));
        ps_example_deinit(&ex);
    }

    /* Overlong line, and a reason that stays short and printable whatever
     * the line holds. */
    char *big = malloc(65537);
    memset(big, 'a', 65537);
    expect_fail(p, big, 65537, "line longer than 65536 bytes");
    /* Exactly the limit plus its newline is fine as far as length goes (the
     * field count then fails). */
    big[65536] = '\n';
    expect_fail(p, big, 65537, "expected 40 fields, got 1");
    free(big);
    char esc[64];
    snprintf(esc, sizeof(esc), "\x1b[31m%s", "0000000000000000000000000000000000000000");
    expect_fail_s(p, criteo_line(esc, INTS, CATS), "label is not 0/1: '?[31m");
    cr_expect(strchr(err, '\x1b') == NULL);
    ps_parser_free(p);

    static const char *const kv[] = {"max_line_bytes", "100", NULL};
    p = make_parser(kv);
    expect_fail_s(p, good, "line longer than 100 bytes");
    ps_parser_free(p);
}

Test(criteo, example_buffers_are_reused) {
    ps_parser *p = make_parser(NULL);
    ps_example ex;
    ps_example_init(&ex);
    cr_assert_eq(parse(p, criteo_line("1", INTS, CATS), &ex), 0);
    ps_feature *features = ex.features;
    uint32_t cap = ex.features_cap;
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(parse(p, criteo_line(i % 2 ? "1" : "0", INTS, CATS), &ex), 0);
    cr_expect_eq(ex.features, features);
    cr_expect_eq(ex.features_cap, cap);
    /* A bad line does not break the next good one. */
    expect_fail_s(p, "garbage", "expected 40 fields");
    cr_assert_eq(parse(p, criteo_line("1", INTS, CATS), &ex), 0);
    cr_expect_eq(ex.nfeatures, 35);
    ps_example_deinit(&ex);
    ps_parser_free(p);
}

/* ---- csv ----------------------------------------------------------------- */

static const char *const CSV_KV[] = {"format", "csv", NULL};

Test(csv, header_then_rows) {
    ps_parser *p = make_parser(CSV_KV);
    cr_expect(ps_parser_wants_header(p));
    ps_example ex;
    ps_example_init(&ex);
    expect_fail_s(p, "1,0,a,b", "no header line read yet");
    const char *hdr = "id,click,hour,site_id,device_ip\n";
    cr_assert_eq(ps_parser_header(p, hdr, strlen(hdr), err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_parser_nslots(p), 3);
    cr_expect_str_eq(ps_parser_slot_name(p, 0), "hour");
    cr_expect_str_eq(ps_parser_slot_name(p, 1), "site_id");
    cr_expect_str_eq(ps_parser_slot_name(p, 2), "device_ip");
    cr_expect_eq(ps_parser_slot_index(p, "id"), -1);
    cr_expect_eq(ps_parser_slot_index(p, "click"), -1);

    cr_assert_eq(parse(p, "10000169349117863715,1,14102100,1fbe01fe,ddd2926e", &ex), 0, "%s",
                 err);
    cr_expect_eq(ex.label, 1.0f);
    cr_assert_eq(ex.nfeatures, 3);
    cr_expect_eq(find(p, &ex, "hour", 0)->fid, fid("hour", "14102100"));
    cr_expect_eq(find(p, &ex, "site_id", 0)->fid, fid("site_id", "1fbe01fe"));
    cr_expect_eq(find(p, &ex, "device_ip", 0)->fid, fid("device_ip", "ddd2926e"));
    cr_expect_eq(find(p, &ex, "device_ip", 0)->slot, 2);

    /* Empty fields are missing; the last one too. */
    cr_assert_eq(parse(p, "7,0,,1fbe01fe,\r\n", &ex), 0, "%s", err);
    cr_expect_eq(ex.label, 0.0f);
    cr_expect_eq(ex.nfeatures, 1);

    expect_fail_s(p, "7,0,1,2", "expected 5 fields, got 4");
    expect_fail_s(p, "7,0,1,2,3,", "expected 5 fields, got 6");
    expect_fail_s(p, "7,2,1,2,3", "label is not 0/1: '2'");
    expect_fail_s(p, "7,yes,1,2,3", "label is not 0/1: 'yes'");
    expect_fail_s(p, "7,\"0\",1,2,3", "label is not 0/1");
    expect_fail_s(p, "", "empty line");

    /* A later file may order its columns differently: same slots. */
    const char *hdr2 = "click,device_ip,id,site_id,hour,new_col\r\n";
    cr_assert_eq(ps_parser_header(p, hdr2, strlen(hdr2), err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_parser_nslots(p), 4);
    cr_assert_eq(parse(p, "0,ddd2926e,7,1fbe01fe,14102100,x", &ex), 0, "%s", err);
    cr_expect_eq(find(p, &ex, "device_ip", 0)->fid, fid("device_ip", "ddd2926e"));
    cr_expect_eq(find(p, &ex, "device_ip", 0)->slot, 2);
    cr_expect_eq(find(p, &ex, "new_col", 0)->slot, 3);
    ps_example_deinit(&ex);
    ps_parser_free(p);
}

Test(csv, bad_headers_leave_the_old_one) {
    ps_parser *p = make_parser(CSV_KV);
    const char *ok = "id,click,a";
    cr_assert_eq(ps_parser_header(p, ok, strlen(ok), err, sizeof(err)), 0, "%s", err);
    static const char *const bad[][2] = {
        {"id,a,b", "header has no label column 'click'"},
        {"click,a,a", "header names column 'a' twice"},
        {"click,a,,b", "header column 3 has an empty name"},
        {"click,a,", "header column 3 has an empty name"},
        {"", "empty line"},
        {"click,0123456789012345678901234567890123456789012345678901234567890123456789",
         "longer than 63 bytes"},
        {"click,\xff", "invalid UTF-8"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        err[0] = '\0';
        cr_expect_eq(ps_parser_header(p, bad[i][0], strlen(bad[i][0]), err, sizeof(err)),
                     PS_EPARSE, "header '%s' accepted", bad[i][0]);
        cr_expect(strstr(err, bad[i][1]) != NULL, "reason '%s', want '%s'", err, bad[i][1]);
    }
    ps_example ex;
    ps_example_init(&ex);
    cr_expect_eq(parse(p, "1,1,x", &ex), 0, "%s", err);
    cr_expect_eq(ex.nfeatures, 1);
    cr_expect_eq(find(p, &ex, "a", 0)->fid, fid("a", "x"));
    ps_example_deinit(&ex);
    ps_parser_free(p);

    /* The other formats have no header. */
    p = make_parser(NULL);
    cr_expect_eq(ps_parser_header(p, ok, strlen(ok), err, sizeof(err)), PS_EPARSE);
    ps_parser_free(p);
}

/* Feed a whole buffer the way the worker's reader will: first line to the
 * header, the rest to parse. Returns the number of examples, or -1 on the
 * first error. */
static int feed_csv(ps_parser *p, const char *text) {
    ps_example ex;
    ps_example_init(&ex);
    int n = 0;
    bool header = true;
    const char *s = text;
    while (*s) {
        const char *nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s + 1) : strlen(s);
        int r = header ? ps_parser_header(p, s, len, err, sizeof(err))
                       : ps_parser_parse(p, s, len, &ex, err, sizeof(err));
        if (r < 0) {
            n = -1;
            break;
        }
        n += !header;
        header = false;
        s += len;
    }
    ps_example_deinit(&ex);
    return n;
}

Test(csv, header_only_file) {
    ps_parser *p = make_parser(CSV_KV);
    cr_expect_eq(feed_csv(p, "id,click,hour,site_id\n"), 0, "%s", err);
    cr_expect_eq(ps_parser_nslots(p), 2);
    /* A byte-order mark does not rename the first column. */
    cr_expect_eq(feed_csv(p, "\xef\xbb\xbfid,click,hour,site_id\r\n1,0,14102100,x\r\n"), 1,
                 "%s", err);
    cr_expect_eq(ps_parser_nslots(p), 2);
    cr_expect_eq(feed_csv(p, "id,click,hour,site_id\n1,0,14102100,x\n2,1,14102101,y\n"), 2, "%s",
                 err);
    ps_parser_free(p);
}

Test(csv, unlabelled_and_custom_columns) {
    static const char *const kv[] = {"format", "csv", "labelled", "false", NULL};
    ps_parser *p = make_parser(kv);
    const char *hdr = "id,hour,site_id";
    cr_assert_eq(ps_parser_header(p, hdr, strlen(hdr), err, sizeof(err)), 0, "%s", err);
    ps_example ex;
    ps_example_init(&ex);
    cr_assert_eq(parse(p, "1,14102100,x", &ex), 0, "%s", err);
    cr_expect(isnan(ex.label));
    cr_expect_eq(ex.nfeatures, 2);
    ps_parser_free(p);

    static const char *const kv2[] = {"format", "csv", "label_column", "y", "ignore_columns",
                                      "ts, uid", NULL};
    p = make_parser(kv2);
    hdr = "ts,a,y,uid,b";
    cr_assert_eq(ps_parser_header(p, hdr, strlen(hdr), err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_parser_nslots(p), 2);
    cr_assert_eq(parse(p, "5,x,1,u7,z", &ex), 0, "%s", err);
    cr_expect_eq(ex.label, 1.0f);
    cr_expect_eq(find(p, &ex, "a", 0)->fid, fid("a", "x"));
    cr_expect_eq(find(p, &ex, "b", 0)->fid, fid("b", "z"));
    ps_example_deinit(&ex);
    ps_parser_free(p);
}

/* ---- libsvm -------------------------------------------------------------- */

Test(libsvm, pairs_and_labels) {
    static const char *const kv[] = {"format", "libsvm", NULL};
    ps_parser *p = make_parser(kv);
    cr_assert_eq(ps_parser_nslots(p), 1);
    cr_expect_str_eq(ps_parser_slot_name(p, 0), "f");
    ps_example ex;
    ps_example_init(&ex);
    cr_assert_eq(parse(p, "1 3:0.5 17:1  \t 42:-2e-3\r\n", &ex), 0, "%s", err);
    cr_expect_eq(ex.label, 1.0f);
    cr_assert_eq(ex.nfeatures, 3);
    cr_expect_eq(ex.features[0].fid, fid("f", "3"));
    cr_expect_float_eq(ex.features[0].value, 0.5f, 1e-7);
    cr_expect_eq(ex.features[1].fid, fid("f", "17"));
    cr_expect_eq(ex.features[1].value, 1.0f);
    cr_expect_eq(ex.features[2].fid, fid("f", "42"));
    cr_expect_float_eq(ex.features[2].value, -2e-3f, 1e-9);
    cr_expect_eq(ex.features[2].slot, 0);

    static const struct {
        const char *line;
        float label;
    } labels[] = {{"0 1:1", 0}, {"1 1:1", 1}, {"-1 1:1", 0}, {"+1 1:1", 1}, {"1", 1}};
    for (size_t i = 0; i < sizeof(labels) / sizeof(*labels); i++) {
        cr_assert_eq(parse(p, labels[i].line, &ex), 0, "'%s': %s", labels[i].line, err);
        cr_expect_eq(ex.label, labels[i].label, "'%s'", labels[i].line);
    }
    cr_expect_eq(ex.nfeatures, 0, "a label alone is an example without features");

    expect_fail_s(p, "2 1:1", "label is not 0/1 or -1/+1: '2'");
    expect_fail_s(p, "1.5 1:1", "label is not 0/1");
    expect_fail_s(p, "1 3", "pair '3' has no ':'");
    expect_fail_s(p, "1 3:1 7", "pair '7' has no ':'");
    expect_fail_s(p, "1 :1", "index is not a non-negative integer");
    expect_fail_s(p, "1 a:1", "index is not a non-negative integer");
    expect_fail_s(p, "1 -3:1", "index is not a non-negative integer");
    expect_fail_s(p, "1 3:", "value is not a number");
    expect_fail_s(p, "1 3:abc", "value is not a finite number");
    expect_fail_s(p, "1 3:1:2", "value is not a finite number");
    expect_fail_s(p, "1 3:nan", "value is not a finite number");
    expect_fail_s(p, "1 3:inf", "value is not a finite number");
    expect_fail_s(p, "1 3:1e39", "value is not a finite number"); /* beyond float */
    expect_fail_s(p, "   ", "empty line");
    ps_example_deinit(&ex);
    ps_parser_free(p);

    static const char *const kv2[] = {"format", "libsvm", "libsvm_slot", "w", NULL};
    p = make_parser(kv2);
    ps_example_init(&ex);
    cr_assert_eq(parse(p, "0 5:1", &ex), 0);
    cr_expect_eq(ex.features[0].fid, fid("w", "5"));
    ps_example_deinit(&ex);
    ps_parser_free(p);
}

Test(libsvm, many_features_grow_the_example) {
    static const char *const kv[] = {"format", "libsvm", NULL};
    ps_parser *p = make_parser(kv);
    char *line = malloc(60000);
    size_t n = (size_t)sprintf(line, "1");
    for (int i = 0; i < 5000; i++)
        n += (size_t)sprintf(line + n, " %d:1", i);
    ps_example ex;
    ps_example_init(&ex);
    cr_assert_eq(ps_parser_parse(p, line, n, &ex, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(ex.nfeatures, 5000);
    cr_expect_eq(ex.features[4999].fid, fid("f", "4999"));
    free(line);
    ps_example_deinit(&ex);
    ps_parser_free(p);
}

/* ---- slots --------------------------------------------------------------- */

static const char *const SLOTS_KV[] = {"format", "slots", NULL};

Test(slots, sequences_and_new_slots) {
    ps_parser *p = make_parser(SLOTS_KV);
    cr_expect_eq(ps_parser_nslots(p), 0);
    ps_example ex;
    ps_example_init(&ex);
    cr_assert_eq(parse(p, "1 user:u1 item:i9\thist:a hist:b  hist:c ctx:k:v", &ex), 0, "%s", err);
    cr_expect_eq(ex.label, 1.0f);
    cr_assert_eq(ex.nfeatures, 6);
    cr_assert_eq(ps_parser_nslots(p), 4);
    cr_expect_str_eq(ps_parser_slot_name(p, 0), "user");
    cr_expect_str_eq(ps_parser_slot_name(p, 2), "hist");
    cr_expect_eq(find(p, &ex, "user", 0)->fid, fid("user", "u1"));
    cr_expect_eq(find(p, &ex, "item", 0)->fid, fid("item", "i9"));
    cr_expect_eq(find(p, &ex, "hist", 0)->fid, fid("hist", "a"));
    cr_expect_eq(find(p, &ex, "hist", 1)->fid, fid("hist", "b"));
    cr_expect_eq(find(p, &ex, "hist", 2)->fid, fid("hist", "c"));
    cr_expect_null(find(p, &ex, "hist", 3));
    cr_expect_eq(find(p, &ex, "hist", 2)->slot, 2);
    /* The value is everything after the first ':'. */
    cr_expect_eq(find(p, &ex, "ctx", 0)->fid, fid("ctx", "k:v"));

    /* Same slots, other order: indices are stable. */
    cr_assert_eq(parse(p, "0 hist:z user:u2", &ex), 0, "%s", err);
    cr_expect_eq(ex.label, 0.0f);
    cr_expect_eq(ex.features[0].slot, 2);
    cr_expect_eq(ex.features[1].slot, 0);
    cr_expect_eq(ps_parser_nslots(p), 4);
    cr_assert_eq(parse(p, "0", &ex), 0, "%s", err);
    cr_expect_eq(ex.nfeatures, 0);

    expect_fail_s(p, "1 user:u1 item", "token 'item' has no ':'");
    expect_fail_s(p, "1 :x", "token ':x' has an empty slot name");
    expect_fail_s(p, "1 hist:", "token 'hist:' has an empty value");
    expect_fail_s(p, "x user:u1", "label is not 0/1: 'x'");
    expect_fail_s(p, "-1 user:u1", "label is not 0/1");
    expect_fail_s(p, "1 0123456789012345678901234567890123456789012345678901234567890123456:v",
                  "slot name longer than 63 bytes");
    ps_example_deinit(&ex);
    ps_parser_free(p);
}

Test(slots, max_slots_and_id_collisions) {
    static const char *const kv[] = {"format", "slots", "max_slots", "2", NULL};
    ps_parser *p = make_parser(kv);
    ps_example ex;
    ps_example_init(&ex);
    cr_assert_eq(parse(p, "1 a:1 b:2", &ex), 0, "%s", err);
    expect_fail_s(p, "1 a:1 c:2", "slot 'c' would exceed max_slots = 2");
    cr_expect_eq(ps_parser_nslots(p), 2);
    ps_parser_free(p);

    /* Find two names whose 16-bit slot ids collide (birthday bound: a few
     * hundred names). */
    static uint16_t seen_by[65536];
    static char names[65536][12];
    memset(seen_by, 0, sizeof(seen_by));
    char a[12] = "", b[12] = "";
    for (int i = 1; i < 65536 && !a[0]; i++) {
        snprintf(names[i], sizeof(names[i]), "s%d", i);
        uint16_t id = ps_slot_id(names[i]);
        if (seen_by[id]) {
            strcpy(a, names[seen_by[id]]);
            strcpy(b, names[i]);
        }
        seen_by[id] = (uint16_t)i;
    }
    cr_assert(a[0], "no collision found");
    cr_assert_eq(ps_slot_id(a), ps_slot_id(b));
    p = make_parser(SLOTS_KV);
    char line[64];
    snprintf(line, sizeof(line), "1 %s:x", a);
    cr_assert_eq(parse(p, line, &ex), 0, "%s", err);
    snprintf(line, sizeof(line), "1 %s:x %s:y", a, b);
    char want[64];
    snprintf(want, sizeof(want), "slot '%s' has the same id", b);
    expect_fail_s(p, line, want);
    cr_expect_eq(ps_parser_slot_index(p, b), -1);
    cr_expect_eq(ps_parser_slot_index(p, a), 0);
    ps_example_deinit(&ex);
    ps_parser_free(p);
}

Test(names, tables) {
    cr_expect_str_eq(ps_input_format_name(PS_INPUT_CRITEO), "criteo");
    cr_expect_str_eq(ps_input_format_name(PS_INPUT_SLOTS), "slots");
    cr_expect_str_eq(ps_input_format_name((ps_input_format)99), "?");
    cr_expect_str_eq(ps_integers_mode_name(PS_INTEGERS_DENSE), "dense");
}

/* Each Criteo integer slot can be bucketized or dense on its own. */
Test(criteo, integer_modes_per_slot) {
    const char *kv[] = {"integers", "bucketize", "dense_integers", "I2, I13", NULL};
    ps_parser *p = make_parser(kv);
    cr_assert_eq(ps_parser_ndense(p), 2);
    ps_example ex;
    ps_example_init(&ex);
    /* label, I1..I13, C1..C26 */
    char line[1024] = "1\t5\t7\t10";
    for (int i = 4; i <= 13; i++)
        strcat(line, i == 13 ? "\t20" : "\t");
    for (int i = 0; i < 26; i++)
        strcat(line, "\tab");
    cr_assert_eq(parse(p, line, &ex), 0, "%s", err);
    cr_assert_eq(ex.ndense, 2);
    cr_assert_float_eq(ex.dense[0], (float)log1p(7.0), 1e-6);  /* I2 */
    cr_assert_float_eq(ex.dense[1], (float)log1p(20.0), 1e-6); /* I13 */
    /* I1 = 5 and I3 = 10 bucketized: floor(log(x)^2) = 2 and 5 */
    bool saw1 = false, saw3 = false, saw2 = false;
    for (uint32_t k = 0; k < ex.nfeatures; k++) {
        saw1 |= ex.features[k].fid == fid("I1", "2");
        saw3 |= ex.features[k].fid == fid("I3", "5");
        saw2 |= ex.features[k].slot_id == ps_slot_id("I2");
    }
    cr_assert(saw1 && saw3 && !saw2);
    ps_example_deinit(&ex);
    ps_parser_free(p);
    /* The other way round, and contradictions rejected. */
    const char *kv2[] = {"integers", "dense", "bucketize_integers", "I1", NULL};
    p = make_parser(kv2);
    cr_assert_eq(ps_parser_ndense(p), 12);
    ps_parser_free(p);
    ps_input_config c;
    ps_input_config_init(&c);
    cr_assert_eq(ps_input_config_set(&c, "dense_integers", "I14", err, sizeof(err)), PS_ECONFIG);
    cr_assert_eq(ps_input_config_set(&c, "dense_integers", "I1", err, sizeof(err)), 0);
    cr_assert_eq(ps_input_config_set(&c, "bucketize_integers", "I1", err, sizeof(err)), 0);
    cr_assert_eq(ps_input_config_check(&c, err, sizeof(err)), PS_ECONFIG);
    ps_input_config_deinit(&c);
}
