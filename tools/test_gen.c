/* Tests of the synthetic click-log generator: determinism, layout (every
 * line goes through the worker's own parsers), the label model's truth file,
 * and the Zipf value distributions. */

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gen.h"
#include "parse.h"

static char dir[64];
static char err[256];

static void setup(void) {
    snprintf(dir, sizeof(dir), "/tmp/ctrps-test-gen-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

TestSuite(gen, .init = setup, .fini = teardown, .timeout = 120);

static char *path_of(const char *name) {
    static char buf[4][256];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static char *slurp(const char *path, size_t *ret_len) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = '\0';
    fclose(f);
    if (ret_len)
        *ret_len = (size_t)n;
    return b;
}

static void run(ps_gen_options *o, const char *name) {
    o->out = path_of(name);
    int r = ps_gen_run(o, err, sizeof(err));
    cr_assert_eq(r, 0, "ps_gen_run: %d %s", r, err);
}

/* A number from the truth file; NAN if the key is absent or null. */
static double truth_num(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\": ", key);
    const char *p = strstr(json, pat);
    if (!p)
        return NAN;
    p += strlen(pat);
    if (!strncmp(p, "null", 4))
        return NAN;
    return strtod(p, NULL);
}

static char *truth_of(const char *name) {
    char path[300];
    snprintf(path, sizeof(path), "%s.truth.json", path_of(name));
    return slurp(path, NULL);
}

static ps_parser *parser(const char *format) {
    ps_input_config c;
    ps_input_config_init(&c);
    cr_assert_eq(ps_input_config_set(&c, "format", format, err, sizeof(err)), 0);
    ps_parser *p;
    cr_assert_eq(ps_parser_new(&c, &p, err, sizeof(err)), 0, "%s", err);
    ps_input_config_deinit(&c);
    return p;
}

/* ---- a small open-addressing counter of tokens ------------------------- */

typedef struct counter {
    char (*keys)[16];
    uint32_t *counts;
    size_t cap, n;
} counter;

static void counter_init(counter *c, size_t cap) {
    c->keys = calloc(cap, 16);
    c->counts = calloc(cap, sizeof(uint32_t));
    c->cap = cap;
    c->n = 0;
}

static void counter_add(counter *c, const char *tok, size_t len) {
    cr_assert(len < 16);
    uint64_t h = 1469598103934665603u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)tok[i]) * 1099511628211u;
    for (size_t i = h % c->cap;; i = (i + 1) % c->cap) {
        if (!c->counts[i]) {
            memcpy(c->keys[i], tok, len);
            c->keys[i][len] = '\0';
            c->counts[i] = 1;
            cr_assert(++c->n < c->cap / 2, "counter full");
            return;
        }
        if (strlen(c->keys[i]) == len && !memcmp(c->keys[i], tok, len)) {
            c->counts[i]++;
            return;
        }
    }
}

static int cmp_desc(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x < y) - (x > y);
}

/* Counts of the distinct tokens, most frequent first; returns how many. */
static size_t counter_sorted(const counter *c, uint32_t **ret) {
    uint32_t *v = malloc((c->n + 1) * sizeof(*v));
    size_t k = 0;
    for (size_t i = 0; i < c->cap; i++)
        if (c->counts[i])
            v[k++] = c->counts[i];
    qsort(v, k, sizeof(*v), cmp_desc);
    *ret = v;
    return k;
}

static void counter_free(counter *c) {
    free(c->keys);
    free(c->counts);
}

/* The n-th (0-based) tab-separated field of a line. */
static const char *field(const char *line, int n, size_t *ret_len) {
    for (int i = 0; i < n; i++)
        line = strchr(line, '\t') + 1;
    *ret_len = strcspn(line, "\t\n");
    return line;
}

/* ---- tests --------------------------------------------------------------- */

Test(gen, defaults_are_documented_values) {
    ps_gen_options o;
    ps_gen_options_init(&o);
    cr_expect_eq(o.rows, 1000000);
    cr_expect_eq(o.format, PS_GEN_CRITEO);
    cr_expect_float_eq(o.ctr, 0.22, 1e-12);
    cr_expect_float_eq(o.zipf_s, 1.1, 1e-12);
    cr_expect_eq(o.vocab[0], 1460);
    cr_expect_eq(o.vocab[2], 1000000);
    cr_expect_eq(o.vocab[8], 3);
    cr_expect_eq(o.npairs, 6);
    cr_expect_eq(o.hist_max, 20);
    ps_gen_format f;
    cr_expect_eq(ps_gen_format_parse("slots", &f), 0);
    cr_expect_eq(f, PS_GEN_SLOTS);
    cr_expect_eq(ps_gen_format_parse("tsv", &f), -EINVAL);
    cr_expect_str_eq(ps_gen_format_name(PS_GEN_CRITEO), "criteo");
}

Test(gen, deterministic_given_the_seed) {
    ps_gen_options o;
    ps_gen_options_init(&o);
    o.rows = 20000;
    run(&o, "a.tsv");
    run(&o, "b.tsv");
    o.seed = 2;
    run(&o, "c.tsv");
    size_t na, nb, nc;
    char *a = slurp(path_of("a.tsv"), &na), *b = slurp(path_of("b.tsv"), &nb),
         *c = slurp(path_of("c.tsv"), &nc);
    cr_assert_eq(na, nb);
    cr_expect(memcmp(a, b, na) == 0, "same seed, different bytes");
    cr_expect(na != nc || memcmp(a, c, na) != 0, "different seeds, same bytes");
    /* Not merely shifted: the first lines differ too. */
    cr_expect(strncmp(a, c, strcspn(a, "\n")) != 0);
    char *ta = truth_of("a.tsv"), *tb = truth_of("b.tsv");
    /* The truth files differ only in the output path they name. */
    cr_expect_float_eq(truth_num(ta, "bayes_auc"), truth_num(tb, "bayes_auc"), 0);
    cr_expect_float_eq(truth_num(ta, "positives"), truth_num(tb, "positives"), 0);
    free(a);
    free(b);
    free(c);
    free(ta);
    free(tb);

    ps_gen_options_init(&o);
    o.rows = 5000;
    o.format = PS_GEN_SLOTS;
    run(&o, "s1.txt");
    run(&o, "s2.txt");
    a = slurp(path_of("s1.txt"), &na);
    b = slurp(path_of("s2.txt"), &nb);
    cr_expect(na == nb && memcmp(a, b, na) == 0);
    free(a);
    free(b);
}

/* Parse every line of a generated file; returns the row count and checks
 * each label against the line's first byte. */
static size_t parse_all(const char *path, const char *format, size_t *ret_positives,
                        size_t *ret_features, size_t *ret_max_slot_run) {
    ps_parser *p = parser(format);
    ps_example ex;
    ps_example_init(&ex);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    char *line = NULL;
    size_t cap = 0, rows = 0, pos = 0, features = 0, max_hist = 0;
    ssize_t n;
    int hist = ps_parser_slot_index(p, "hist");
    while ((n = getline(&line, &cap, f)) > 0) {
        rows++;
        int r = ps_parser_parse(p, line, (size_t)n, &ex, err, sizeof(err));
        cr_assert_eq(r, 0, "%s:%zu: %s", path, rows, err);
        cr_assert_eq(ex.label, (float)(line[0] - '0'));
        pos += ex.label == 1.0f;
        features += ex.nfeatures;
        if (hist < 0)
            hist = ps_parser_slot_index(p, "hist");
        size_t h = 0;
        for (uint32_t i = 0; i < ex.nfeatures; i++)
            h += hist >= 0 && ex.features[i].slot == hist;
        if (h > max_hist)
            max_hist = h;
    }
    free(line);
    fclose(f);
    ps_example_deinit(&ex);
    ps_parser_free(p);
    *ret_positives = pos;
    *ret_features = features;
    if (ret_max_slot_run)
        *ret_max_slot_run = max_hist;
    return rows;
}

Test(gen, criteo_rows_parse_and_match_the_truth) {
    ps_gen_options o;
    ps_gen_options_init(&o);
    o.rows = 50000;
    run(&o, "c.tsv");
    size_t pos, features;
    size_t rows = parse_all(path_of("c.tsv"), "criteo", &pos, &features, NULL);
    cr_assert_eq(rows, 50000);
    /* Real Criteo rows carry ~33 of 39 features; the missing rates are the
     * real file's. */
    double per_row = (double)features / (double)rows;
    cr_expect(per_row > 30 && per_row < 36, "%.2f features per row", per_row);

    char *t = truth_of("c.tsv");
    static const char *const keys[] = {"rows", "positives", "ctr", "mean_p", "bayes_auc",
                                       "bayes_logloss", "main_effects_auc", "auc_rows",
                                       "seed", "bias", "logit_std_main", "logit_std_cross",
                                       "zipf_s", "cross_scale"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(*keys); i++)
        cr_expect(!isnan(truth_num(t, keys[i])), "truth lacks %s:\n%s", keys[i], t);
    cr_expect(strstr(t, "\"format\": \"criteo\"") != NULL);
    cr_expect_eq(truth_num(t, "rows"), 50000);
    cr_expect_eq(truth_num(t, "positives"), (double)pos, "truth and file disagree on labels");
    double ctr = truth_num(t, "ctr");
    cr_expect_float_eq(ctr, (double)pos / 50000, 1e-6);
    cr_expect(ctr > 0.19 && ctr < 0.25, "ctr %.4f", ctr);
    double bayes = truth_num(t, "bayes_auc"), main = truth_num(t, "main_effects_auc");
    cr_expect(bayes > 0.8 && bayes < 0.95, "bayes_auc %.4f", bayes);
    /* The planted crosses carry real signal: the brief asks for >= 0.04. */
    cr_expect(bayes > main + 0.04, "bayes_auc %.4f, main_effects_auc %.4f", bayes, main);
    /* The true probabilities beat the constant predictor by a wide margin. */
    double h = -(ctr * log(ctr) + (1 - ctr) * log(1 - ctr));
    cr_expect(truth_num(t, "bayes_logloss") < h - 0.05, "logloss %.4f, entropy %.4f",
              truth_num(t, "bayes_logloss"), h);
    /* The scales are calibrated: the cross part has the std asked for. */
    cr_expect_float_eq(truth_num(t, "logit_std_cross"), o.cross_scale, 0.1 * o.cross_scale);
    free(t);
}

Test(gen, no_crosses_means_main_effects_are_everything) {
    ps_gen_options o;
    ps_gen_options_init(&o);
    o.rows = 20000;
    o.cross_scale = 0;
    run(&o, "n.tsv");
    char *t = truth_of("n.tsv");
    cr_expect_float_eq(truth_num(t, "bayes_auc"), truth_num(t, "main_effects_auc"), 1e-9, "%s",
                       t);
    cr_expect_float_eq(truth_num(t, "logit_std_cross"), 0, 1e-12);
    free(t);
}

Test(gen, ctr_follows_the_option) {
    ps_gen_options o;
    ps_gen_options_init(&o);
    o.rows = 40000;
    o.ctr = 0.05;
    run(&o, "low.tsv");
    char *t = truth_of("low.tsv");
    double ctr = truth_num(t, "ctr");
    cr_expect(ctr > 0.04 && ctr < 0.06, "ctr %.4f for a 0.05 target", ctr);
    free(t);
}

Test(gen, criteo_fields_look_like_criteo) {
    ps_gen_options o;
    ps_gen_options_init(&o);
    o.rows = 50000;
    run(&o, "c.tsv");
    FILE *f = fopen(path_of("c.tsv"), "r");
    char *line = NULL;
    size_t cap = 0, rows = 0, empty_c22 = 0, empty_i12 = 0, neg_i2 = 0, empty_c1 = 0;
    counter c1, c3, c9;
    counter_init(&c1, 1 << 14);
    counter_init(&c3, 1 << 17);
    counter_init(&c9, 16);
    while (getline(&line, &cap, f) > 0) {
        rows++;
        size_t len;
        const char *v;
        /* 40 tab-separated fields, categoricals empty or 8 lowercase hex. */
        size_t tabs = 0;
        for (const char *p = line; *p; p++)
            tabs += *p == '\t';
        cr_assert_eq(tabs, 39);
        for (int k = 14; k < 40; k++) {
            v = field(line, k, &len);
            cr_assert(len == 0 || len == 8, "row %zu field %d: %zu bytes", rows, k, len);
            for (size_t i = 0; i < len; i++)
                cr_assert(strchr("0123456789abcdef", v[i]) != NULL);
        }
        v = field(line, 14, &len);
        empty_c1 += len == 0;
        if (len)
            counter_add(&c1, v, len);
        v = field(line, 16, &len);
        if (len)
            counter_add(&c3, v, len);
        v = field(line, 22, &len);
        if (len)
            counter_add(&c9, v, len);
        field(line, 35, &len);
        empty_c22 += len == 0;
        field(line, 12, &len);
        empty_i12 += len == 0;
        v = field(line, 2, &len);
        neg_i2 += len && v[0] == '-';
    }
    free(line);
    fclose(f);
    cr_assert_eq(rows, 50000);
    /* Missing rates as in the real file: C1 never, C22 82%, I12 77%; I2
     * negative on ~10% of rows. */
    cr_expect_eq(empty_c1, 0);
    cr_expect(fabs((double)empty_c22 / rows - 0.818) < 0.02, "C22 empty %zu", empty_c22);
    cr_expect(fabs((double)empty_i12 / rows - 0.773) < 0.02, "I12 empty %zu", empty_i12);
    cr_expect(fabs((double)neg_i2 / rows - 0.097) < 0.01, "I2 negative %zu", neg_i2);

    /* Zipf head: the most frequent C1 value is far more frequent than the
     * median one, and the rank-frequency slope is about -s. */
    uint32_t *v1;
    size_t k1 = counter_sorted(&c1, &v1);
    cr_assert(k1 > 100, "%zu distinct C1 values", k1);
    cr_expect(v1[0] > 50 * v1[k1 / 2], "top %u, median %u", v1[0], v1[k1 / 2]);
    double slope = log((double)v1[0] / v1[9]) / log(10.0);
    cr_expect(slope > 0.9 && slope < 1.3, "rank 1 vs 10 slope %.3f (s = 1.1)", slope);

    /* Exact head probabilities on a 3-value field: k^-1.1 normalised. */
    uint32_t *v9;
    size_t k9 = counter_sorted(&c9, &v9);
    cr_assert_eq(k9, 3);
    double z = 1 + pow(2, -1.1) + pow(3, -1.1);
    for (int k = 0; k < 3; k++)
        cr_expect(fabs((double)v9[k] / rows - pow(k + 1, -1.1) / z) < 0.01, "C9 rank %d: %u", k,
                  v9[k]);

    /* The tail of a million-value field: many values seen once, and as many
     * distinct values as Zipf(1e6, 1.1) predicts for this many draws (this
     * exercises the rejection-inversion part of the sampler). */
    uint32_t *v3;
    size_t k3 = counter_sorted(&c3, &v3);
    size_t once = 0, draws = 0;
    for (size_t i = 0; i < k3; i++) {
        once += v3[i] == 1;
        draws += v3[i];
    }
    cr_expect(once > k3 / 2, "%zu of %zu C3 values seen once", once, k3);
    double zn = 0, expect_distinct = 0;
    for (int k = 1; k <= 1000000; k++)
        zn += pow(k, -1.1);
    for (int k = 1; k <= 1000000; k++)
        expect_distinct += 1 - pow(1 - pow(k, -1.1) / zn, (double)draws);
    cr_expect(fabs((double)k3 / expect_distinct - 1) < 0.03, "%zu distinct C3, expected %.0f", k3,
              expect_distinct);
    cr_expect(fabs((double)v3[0] / draws - 1 / zn) < 0.01, "C3 top share %.4f, expected %.4f",
              (double)v3[0] / draws, 1 / zn);
    free(v1);
    free(v3);
    free(v9);
    counter_free(&c1);
    counter_free(&c3);
    counter_free(&c9);
}

Test(gen, slots_rows_parse_and_share_item_tokens) {
    ps_gen_options o;
    ps_gen_options_init(&o);
    o.rows = 30000;
    o.format = PS_GEN_SLOTS;
    run(&o, "s.txt");
    size_t pos, features, max_hist;
    size_t rows = parse_all(path_of("s.txt"), "slots", &pos, &features, &max_hist);
    cr_assert_eq(rows, 30000);
    cr_expect_eq(max_hist, o.hist_max, "longest history %zu", max_hist);
    /* 4 fixed slots plus hist_max / 2 history items on average. */
    double per_row = (double)features / (double)rows;
    cr_expect(per_row > 13 && per_row < 15, "%.2f features per row", per_row);

    /* Layout: the fixed slots first, in order; history items are item
     * tokens (the most frequent item shows up in histories). */
    FILE *f = fopen(path_of("s.txt"), "r");
    char *line = NULL;
    size_t cap = 0, empty_hist = 0;
    counter items, hist;
    counter_init(&items, 1 << 16);
    counter_init(&hist, 1 << 16);
    while (getline(&line, &cap, f) > 0) {
        char user[16], item[16], cat[16], ctx[16];
        int label, used = 0;
        cr_assert_eq(sscanf(line, "%d user:%15s item:%15s cat:%15s ctx:%15s%n", &label, user, item,
                            cat, ctx, &used),
                     5, "%s", line);
        counter_add(&items, item, strlen(item));
        const char *p = line + used;
        empty_hist += *p == '\n';
        while ((p = strstr(p, " hist:"))) {
            p += 6;
            counter_add(&hist, p, strcspn(p, " \n"));
        }
    }
    free(line);
    fclose(f);
    cr_expect(empty_hist > 0, "some rows have an empty history");
    uint32_t *vi, *vh;
    size_t ki = counter_sorted(&items, &vi), kh = counter_sorted(&hist, &vh);
    cr_expect(vi[0] > 50 * vi[ki / 2], "item head %u, median %u", vi[0], vi[ki / 2]);
    /* The top item is the same in both roles: same vocabulary, same tokens. */
    cr_assert(kh > 0);
    double share_i = (double)vi[0] / rows;
    char top_item[16] = "", top_hist[16] = "";
    for (size_t i = 0; i < items.cap; i++)
        if (items.counts[i] == vi[0])
            strcpy(top_item, items.keys[i]);
    for (size_t i = 0; i < hist.cap; i++)
        if (hist.counts[i] == vh[0])
            strcpy(top_hist, hist.keys[i]);
    cr_expect_str_eq(top_item, top_hist);
    cr_expect(share_i > 0.05, "top item share %.3f", share_i);

    char *t = truth_of("s.txt");
    cr_expect(strstr(t, "\"format\": \"slots\"") != NULL);
    cr_expect_eq(truth_num(t, "positives"), (double)pos);
    double ctr = truth_num(t, "ctr");
    cr_expect(ctr > 0.19 && ctr < 0.25, "ctr %.4f", ctr);
    double bayes = truth_num(t, "bayes_auc"), main = truth_num(t, "main_effects_auc");
    cr_expect(bayes > main + 0.04, "bayes_auc %.4f, main_effects_auc %.4f", bayes, main);
    free(t);
    free(vi);
    free(vh);
    counter_free(&items);
    counter_free(&hist);
}

Test(gen, rejects_bad_options) {
    ps_gen_options o;

    ps_gen_options_init(&o);
    o.out = NULL;
    cr_expect_eq(ps_gen_run(&o, err, sizeof(err)), -EINVAL);
    cr_expect(strstr(err, "output file is required") != NULL, "%s", err);

    struct {
        const char *reason;
        ps_gen_options o;
    } bad[8];
    for (int i = 0; i < 8; i++) {
        ps_gen_options_init(&bad[i].o);
        bad[i].o.out = path_of("never.tsv");
    }
    bad[0].o.rows = 0, bad[0].reason = "rows must be at least 1";
    bad[1].o.ctr = 0, bad[1].reason = "ctr must be in";
    bad[2].o.zipf_s = 0, bad[2].reason = "zipf_s must be in";
    bad[3].o.cross_scale = NAN, bad[3].reason = "cross_scale must be in";
    bad[4].o.cross_rank = 0, bad[4].reason = "cross_rank must be in";
    bad[5].o.pairs[2][1] = bad[5].o.pairs[2][0], bad[5].reason = "pair 3 must name two different";
    bad[6].o.vocab[4] = 0, bad[6].reason = "vocab of C5 must be at least 1";
    bad[7].o.format = PS_GEN_SLOTS, bad[7].o.items = 0, bad[7].reason = "at least 1";
    for (int i = 0; i < 8; i++) {
        err[0] = '\0';
        cr_expect_eq(ps_gen_run(&bad[i].o, err, sizeof(err)), -EINVAL, "case %d", i);
        cr_expect(strstr(err, bad[i].reason) != NULL, "case %d: '%s'", i, err);
    }
    struct stat st;
    cr_expect_neq(stat(path_of("never.tsv"), &st), 0, "a rejected run wrote its file");
}

Test(gen, unwritable_output_is_an_error) {
    ps_gen_options o;
    ps_gen_options_init(&o);
    o.rows = 10;
    o.out = "/nonexistent-dir/x.tsv";
    int r = ps_gen_run(&o, err, sizeof(err));
    cr_expect_eq(r, -ENOENT);
    cr_expect(strstr(err, "/nonexistent-dir/x.tsv") != NULL, "%s", err);
}

Test(gen, tiny_worlds_work) {
    /* One value per field, one row: nothing divides by zero, the truth
     * still parses (AUC undefined with a single class: null). */
    ps_gen_options o;
    ps_gen_options_init(&o);
    o.rows = 1;
    o.vocab_scale = 1e-9;
    run(&o, "tiny.tsv");
    char *t = truth_of("tiny.tsv");
    cr_expect_eq(truth_num(t, "rows"), 1);
    cr_expect(strstr(t, "\"bayes_auc\": null") != NULL, "%s", t);
    free(t);
    size_t pos, features;
    cr_expect_eq(parse_all(path_of("tiny.tsv"), "criteo", &pos, &features, NULL), 1);

    o.format = PS_GEN_SLOTS;
    o.hist_max = 0;
    o.rows = 100;
    run(&o, "tiny.txt");
    cr_expect_eq(parse_all(path_of("tiny.txt"), "slots", &pos, &features, NULL), 100);
    cr_expect_eq(features, 400);
}

/* ---- drift ------------------------------------------------------------------ */

/* Criteo fields small enough that a 20,000-row period sees all their values:
 * C6 C9 C14 C17 C20 C22 C23 C25 (0-based). */
static const int small_fields[] = {5, 8, 13, 16, 19, 21, 22, 24};
#define NSMALL (sizeof(small_fields) / sizeof(*small_fields))

/* The distinct tokens of the small fields in rows [from, to) of a file, one
 * counter per field. */
static void tokens_of(const char *path, size_t from, size_t to, counter *c) {
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    char *line = NULL;
    size_t cap = 0, i = 0;
    for (size_t k = 0; k < NSMALL; k++)
        counter_init(&c[k], 4096);
    while (getline(&line, &cap, f) > 0 && i < to) {
        if (i++ < from)
            continue;
        for (size_t k = 0; k < NSMALL; k++) {
            size_t len;
            const char *t = field(line, 14 + small_fields[k], &len);
            if (len)
                counter_add(&c[k], t, len);
        }
    }
    free(line);
    fclose(f);
}

static bool counter_has(const counter *c, const char *tok) {
    for (size_t i = 0; i < c->cap; i++)
        if (c->counts[i] && !strcmp(c->keys[i], tok))
            return true;
    return false;
}

/* Values of a in period 0 that period 1 no longer has, over all small
 * fields: returns the share retired, sets *ret_n to the values of period 0. */
static double retired_share(const char *path, size_t period, size_t *ret_n) {
    counter a[NSMALL], b[NSMALL];
    tokens_of(path, 0, period, a);
    tokens_of(path, period, 2 * period, b);
    size_t n = 0, gone = 0;
    for (size_t k = 0; k < NSMALL; k++) {
        for (size_t i = 0; i < a[k].cap; i++)
            if (a[k].counts[i]) {
                n++;
                gone += !counter_has(&b[k], a[k].keys[i]);
            }
        counter_free(&a[k]);
        counter_free(&b[k]);
    }
    *ret_n = n;
    return n ? (double)gone / (double)n : 0;
}

Test(gen, drift_churns_values_and_is_deterministic) {
    ps_gen_options o;
    ps_gen_options_init(&o);
    o.rows = 40000;
    o.drift_period = 20000;
    o.drift_churn = 0.5;
    run(&o, "d1.tsv");
    run(&o, "d2.tsv");
    size_t n1, n2;
    char *a = slurp(path_of("d1.tsv"), &n1), *b = slurp(path_of("d2.tsv"), &n2);
    cr_expect(n1 == n2 && memcmp(a, b, n1) == 0, "same options, different bytes");
    free(b);
    o.seed = 2;
    run(&o, "d3.tsv");
    b = slurp(path_of("d3.tsv"), &n2);
    cr_expect(n1 != n2 || memcmp(a, b, n1) != 0, "different seeds, same bytes");
    free(b);
    free(a);

    /* Half of the ~120 values of the small fields retire at the boundary
     * (binomial: std ~0.05); no drift in the first period's own halves. */
    size_t n;
    double share = retired_share(path_of("d1.tsv"), 20000, &n);
    cr_expect(n > 100, "only %zu values seen", n);
    cr_expect(share > 0.35 && share < 0.65, "retired share %.3f of %zu, churn 0.5", share, n);
    cr_expect_lt(retired_share(path_of("d1.tsv"), 10000, &n), 0.01);

    /* Churn 0 keeps every value; drift off is the old output, row for row. */
    o.seed = 1;
    o.drift_churn = 0;
    run(&o, "d4.tsv");
    cr_expect_lt(retired_share(path_of("d4.tsv"), 20000, &n), 0.01);
    o.drift_period = 0;
    o.drift_churn = 0.5;
    run(&o, "d5.tsv");
    ps_gen_options p;
    ps_gen_options_init(&p);
    p.rows = 40000;
    run(&p, "d6.tsv");
    a = slurp(path_of("d5.tsv"), &n1);
    b = slurp(path_of("d6.tsv"), &n2);
    cr_expect(n1 == n2 && memcmp(a, b, n1) == 0, "drift options without a period changed rows");
    free(a);
    free(b);
    char *t = truth_of("d1.tsv");
    cr_expect_float_eq(truth_num(t, "drift_period"), 20000, 0);
    cr_expect_float_eq(truth_num(t, "drift_churn"), 0.5, 1e-9);
    free(t);
}

/* Mean |CTR(period 2) - CTR(period 0)| over the small fields' values seen at
 * least 1000 times in both. */
static double ctr_shift(const char *path, size_t period) {
    typedef struct {
        char tok[16];
        int f;
        double n[2], pos[2];
    } tokstat;
    static tokstat ts[512];
    size_t nts = 0;
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    char *line = NULL;
    size_t cap = 0, i = 0;
    while (getline(&line, &cap, f) > 0) {
        size_t per = i++ / period;
        if (per != 0 && per != 2)
            continue;
        int e = per == 2;
        for (size_t k = 0; k < NSMALL; k++) {
            size_t len, j;
            const char *t = field(line, 14 + small_fields[k], &len);
            if (!len)
                continue;
            for (j = 0; j < nts; j++)
                if (ts[j].f == (int)k && !strncmp(ts[j].tok, t, len) && !ts[j].tok[len])
                    break;
            if (j == nts) {
                cr_assert_lt(nts, 512);
                memset(&ts[nts], 0, sizeof(ts[nts]));
                memcpy(ts[nts].tok, t, len);
                ts[nts++].f = (int)k;
            }
            ts[j].n[e]++;
            ts[j].pos[e] += line[0] == '1';
        }
    }
    free(line);
    fclose(f);
    double sum = 0;
    int m = 0;
    for (size_t j = 0; j < nts; j++)
        if (ts[j].n[0] >= 1000 && ts[j].n[1] >= 1000) {
            sum += fabs(ts[j].pos[1] / ts[j].n[1] - ts[j].pos[0] / ts[j].n[0]);
            m++;
        }
    cr_assert_gt(m, 10, "only %d values frequent enough", m);
    return sum / m;
}

Test(gen, drift_moves_the_truth) {
    /* Churn off, so the values stay and only their effects can move. */
    ps_gen_options o;
    ps_gen_options_init(&o);
    o.rows = 150000;
    o.drift_period = 50000;
    o.drift_churn = 0;
    o.drift_truth = 1;
    o.main_scale = 3;
    o.cross_scale = 0;
    o.int_scale = 0;
    run(&o, "t1.tsv");
    o.drift_truth = 0;
    run(&o, "t0.tsv");
    double moved = ctr_shift(path_of("t1.tsv"), 50000), still = ctr_shift(path_of("t0.tsv"), 50000);
    /* Fixed truth: sampling noise of CTRs over >= 1000 rows (~0.01). */
    cr_expect_lt(still, 0.02, "CTRs moved by %.4f without drift", still);
    cr_expect_gt(moved, 3 * still, "CTRs moved by %.4f with drift, %.4f without", moved, still);
}

/* RSS of a process in KiB, from /proc. */
static long vm_rss_kb(pid_t pid) {
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    if (!f)
        return -1;
    while (fgets(buf, sizeof(buf), f))
        if (!strncmp(buf, "VmRSS:", 6))
            kb = strtol(buf + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* Reads n lines from f. */
static void read_lines(FILE *f, size_t n) {
    char *line = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < n; i++)
        cr_assert_gt(getline(&line, &cap, f), 0, "stream ended after %zu lines", i);
    free(line);
}

Test(gen, a_drifting_stream_to_stdout_runs_in_constant_memory) {
    /* A practically endless drifting stream into a pipe: the generator's
     * RSS after 1.2M rows is that after 200k (nothing is kept per row
     * without a truth file), and it stops when the reader goes away. */
    int fd[2];
    cr_assert_eq(pipe(fd), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], STDOUT_FILENO);
        close(fd[1]);
        ps_gen_options o;
        ps_gen_options_init(&o);
        o.rows = UINT64_C(1) << 40;
        o.out = "-";
        o.drift_period = 100000;
        char e[256];
        _exit(ps_gen_run(&o, e, sizeof(e)) == 0 ? 0 : 3);
    }
    close(fd[1]);
    FILE *f = fdopen(fd[0], "r");
    cr_assert_not_null(f);
    read_lines(f, 200000);
    long before = vm_rss_kb(pid);
    read_lines(f, 1000000);
    long after = vm_rss_kb(pid);
    fclose(f);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_expect(WIFSIGNALED(status) && WTERMSIG(status) == SIGPIPE, "status %d", status);
    cr_expect_gt(before, 0);
    cr_expect_leq(after - before, 256, "RSS grew from %ld to %ld KiB", before, after);
}
