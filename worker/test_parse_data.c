/* The parsers against the real click logs in CTRPS_SHARED_DATA (the first
 * 10k rows of Criteo's train and test files and of Avazu's train file).
 * Expected values are read from the files here with an independent split
 * (strsep on a copy), never from parse.c. Skips (exit 77) without the data. */

#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "keys.h"
#include "parse.h"

static char err[256];

typedef struct lines {
    char **v;
    size_t n;
} lines;

/* Every line of a file, newline kept. */
static lines read_lines(const char *rel) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", ps_test_data_dir(), rel);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s", path);
    lines L = {0};
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&buf, &cap, f)) > 0) {
        L.v = realloc(L.v, (L.n + 1) * sizeof(char *));
        L.v[L.n++] = strndup(buf, (size_t)n);
    }
    free(buf);
    fclose(f);
    return L;
}

static void free_lines(lines *L) {
    for (size_t i = 0; i < L->n; i++)
        free(L->v[i]);
    free(L->v);
}

/* Split a copy of line (newline removed) on sep; returns the field count and
 * the fields (pointers into *ret_copy, which the caller frees). */
static size_t split(const char *line, const char *sep, char ***ret_fields, char **ret_copy) {
    char *copy = strdup(line);
    copy[strcspn(copy, "\r\n")] = '\0';
    char **fields = NULL;
    size_t n = 0;
    char *s = copy, *tok;
    while ((tok = strsep(&s, sep))) {
        fields = realloc(fields, (n + 1) * sizeof(char *));
        fields[n++] = tok;
    }
    *ret_fields = fields;
    *ret_copy = copy;
    return n;
}

static ps_parser *make_parser(const char *const *kv) {
    ps_input_config c;
    cr_assert_eq(ps_input_config_init(&c), 0);
    for (; kv && kv[0]; kv += 2)
        cr_assert_eq(ps_input_config_set(&c, kv[0], kv[1], err, sizeof(err)), 0, "%s", err);
    ps_parser *p = NULL;
    cr_assert_eq(ps_parser_new(&c, &p, err, sizeof(err)), 0, "%s", err);
    ps_input_config_deinit(&c);
    return p;
}

static const ps_feature *find(const ps_parser *p, const ps_example *ex, const char *slot) {
    int idx = ps_parser_slot_index(p, slot);
    for (uint32_t i = 0; idx >= 0 && i < ex->nfeatures; i++)
        if (ex->features[i].slot == idx)
            return &ex->features[i];
    return NULL;
}

/* floor(ln(x)^2) for x > 2, else x: computed here with pow(), apart from
 * parse.c's tables. */
static void bucket_token(const char *text, char *out, size_t outlen) {
    long long x = atoll(text);
    if (x > 2)
        x = (long long)floor(pow(log((double)x), 2.0));
    snprintf(out, outlen, "%lld", x);
}

/* Check one Criteo example against the fields of its line. off = 1 when the
 * line has a label column. */
static void check_criteo_row(const ps_parser *p, const ps_example *ex, char **fields, int off,
                             bool dense, size_t row) {
    uint32_t want_features = 0;
    for (int i = 0; i < 13; i++) {
        char slot[8], tok[32];
        snprintf(slot, sizeof(slot), "I%d", i + 1);
        const char *v = fields[off + i];
        if (dense) {
            double want = *v && atoll(v) > 0 ? log1p((double)atoll(v)) : 0.0;
            cr_assert_float_eq(ex->dense[i], want, 1e-5 * (1 + want), "row %zu %s", row, slot);
            continue;
        }
        const ps_feature *f = find(p, ex, slot);
        if (!*v) {
            cr_assert_null(f, "row %zu %s empty but has a feature", row, slot);
            continue;
        }
        want_features++;
        cr_assert_not_null(f, "row %zu %s", row, slot);
        bucket_token(v, tok, sizeof(tok));
        cr_assert_eq(f->fid, ps_fid(ps_slot_id(slot), tok, strlen(tok)),
                     "row %zu %s = %s: want bucket %s", row, slot, v, tok);
    }
    for (int i = 0; i < 26; i++) {
        char slot[8];
        snprintf(slot, sizeof(slot), "C%d", i + 1);
        const char *v = fields[off + 13 + i];
        const ps_feature *f = find(p, ex, slot);
        if (!*v) {
            cr_assert_null(f, "row %zu %s", row, slot);
            continue;
        }
        want_features++;
        cr_assert_not_null(f, "row %zu %s", row, slot);
        cr_assert_eq(f->fid, ps_fid(ps_slot_id(slot), v, strlen(v)), "row %zu %s", row, slot);
        cr_assert_eq(f->value, 1.0f);
    }
    cr_assert_eq(ex->nfeatures, want_features, "row %zu: %u features, want %u", row,
                 ex->nfeatures, want_features);
}

static void criteo_file(const char *rel, bool labelled, bool dense) {
    const char *kv[8] = {0};
    int k = 0;
    if (!labelled)
        kv[k++] = "labelled", kv[k++] = "false";
    if (dense)
        kv[k++] = "integers", kv[k++] = "dense";
    ps_parser *p = make_parser(kv);
    lines L = read_lines(rel);
    cr_assert_eq(L.n, 10000, "%s has %zu lines", rel, L.n);
    ps_example ex;
    ps_example_init(&ex);
    size_t positives = 0, want_positives = 0, total_features = 0;
    int off = labelled ? 1 : 0;
    for (size_t i = 0; i < L.n; i++) {
        int r = ps_parser_parse(p, L.v[i], strlen(L.v[i]), &ex, err, sizeof(err));
        cr_assert_eq(r, 0, "%s:%zu: %s", rel, i + 1, err);
        char **fields, *copy;
        size_t nf = split(L.v[i], "\t", &fields, &copy);
        cr_assert_eq(nf, (size_t)(39 + off));
        if (labelled) {
            cr_assert_eq(ex.label, (float)atoi(fields[0]), "row %zu", i + 1);
            want_positives += !strcmp(fields[0], "1");
            positives += ex.label == 1.0f;
        } else {
            cr_assert(isnan(ex.label));
        }
        check_criteo_row(p, &ex, fields, off, dense, i + 1);
        total_features += ex.nfeatures;
        free(fields);
        free(copy);
    }
    cr_expect_eq(positives, want_positives);
    if (labelled)
        cr_expect(positives > 1000 && positives < 4000, "%zu positives", positives);
    /* Criteo rows carry about 33 of their 39 features when bucketized. */
    double per_row = (double)total_features / (double)L.n;
    if (dense)
        cr_expect(per_row > 20 && per_row <= 26, "%.2f features per row", per_row);
    else
        cr_expect(per_row > 28 && per_row <= 39, "%.2f features per row", per_row);
    ps_example_deinit(&ex);
    free_lines(&L);
    ps_parser_free(p);
}

Test(criteo_data, train_every_row_bucketized) {
    criteo_file("criteo/train-first10k.tsv", true, false);
}

Test(criteo_data, train_every_row_dense) { criteo_file("criteo/train-first10k.tsv", true, true); }

Test(criteo_data, test_file_unlabelled) {
    criteo_file("criteo/test-first10k-unlabelled.tsv", false, false);
}

Test(criteo_data, first_train_row_field_by_field) {
    lines L = read_lines("criteo/train-first10k.tsv");
    char **fields, *copy;
    cr_assert_eq(split(L.v[0], "\t", &fields, &copy), 40);
    /* What the file holds, as the brief and `head -1` show it. */
    cr_assert_str_eq(fields[0], "0");
    cr_assert_str_eq(fields[14], "68fd1e64");
    cr_assert_str_eq(fields[2], "1");

    ps_parser *p = make_parser(NULL);
    ps_example ex;
    ps_example_init(&ex);
    cr_assert_eq(ps_parser_parse(p, L.v[0], strlen(L.v[0]), &ex, err, sizeof(err)), 0, "%s",
                 err);
    cr_expect_eq(ex.label, 0.0f);
    const ps_feature *c1 = find(p, &ex, "C1");
    cr_assert_not_null(c1);
    cr_expect_eq(c1->fid, ps_fid(ps_slot_id("C1"), "68fd1e64", 8));
    cr_expect_eq(c1->slot_id, ps_slot_id("C1"));
    cr_expect_str_eq(ps_parser_slot_name(p, c1->slot), "C1");
    /* I5 of the first row is 1382: bucket floor(ln(1382)^2) = 52. */
    cr_assert_str_eq(fields[5], "1382");
    cr_expect_eq(find(p, &ex, "I5")->fid, ps_fid(ps_slot_id("I5"), "52", 2));
    check_criteo_row(p, &ex, fields, 1, false, 1);

    /* The same bytes with CRLF endings parse to the same features. */
    char crlf[4096];
    size_t n = strcspn(L.v[0], "\n");
    memcpy(crlf, L.v[0], n);
    memcpy(crlf + n, "\r\n", 2);
    ps_example ex2;
    ps_example_init(&ex2);
    cr_assert_eq(ps_parser_parse(p, crlf, n + 2, &ex2, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ex2.nfeatures, ex.nfeatures);
    for (uint32_t i = 0; i < ex.nfeatures; i++)
        cr_expect_eq(ex2.features[i].fid, ex.features[i].fid);

    /* The unlabelled test file is rejected by a labelled parser, with the
     * count as the reason. */
    lines T = read_lines("criteo/test-first10k-unlabelled.tsv");
    cr_expect_eq(ps_parser_parse(p, T.v[0], strlen(T.v[0]), &ex2, err, sizeof(err)), PS_EPARSE);
    cr_expect_str_eq(err, "expected 40 fields, got 39");
    free_lines(&T);

    ps_example_deinit(&ex);
    ps_example_deinit(&ex2);
    free(fields);
    free(copy);
    free_lines(&L);
    ps_parser_free(p);
}

Test(avazu_data, header_and_every_row) {
    static const char *const kv[] = {"format", "csv", NULL};
    ps_parser *p = make_parser(kv);
    lines L = read_lines("avazu/train-first10k.csv");
    cr_assert_eq(L.n, 10000);
    char **hdr, *hcopy;
    size_t ncols = split(L.v[0], ",", &hdr, &hcopy);
    cr_assert_eq(ncols, 24);
    cr_assert_str_eq(hdr[0], "id");
    cr_assert_str_eq(hdr[1], "click");
    cr_assert_eq(ps_parser_header(p, L.v[0], strlen(L.v[0]), err, sizeof(err)), 0, "%s", err);
    /* Every column but id and click is a slot, in header order. */
    cr_assert_eq(ps_parser_nslots(p), 22);
    for (size_t c = 2; c < ncols; c++)
        cr_expect_str_eq(ps_parser_slot_name(p, c - 2), hdr[c]);
    cr_expect_eq(ps_parser_slot_index(p, "hour"), 0);
    cr_expect_eq(ps_parser_slot_index(p, "id"), -1);
    cr_expect_eq(ps_parser_slot_index(p, "click"), -1);

    ps_example ex;
    ps_example_init(&ex);
    size_t positives = 0, want_positives = 0;
    for (size_t i = 1; i < L.n; i++) {
        int r = ps_parser_parse(p, L.v[i], strlen(L.v[i]), &ex, err, sizeof(err));
        cr_assert_eq(r, 0, "avazu:%zu: %s", i + 1, err);
        char **fields, *copy;
        cr_assert_eq(split(L.v[i], ",", &fields, &copy), ncols);
        cr_assert_eq(ex.label, (float)atoi(fields[1]), "row %zu", i + 1);
        want_positives += !strcmp(fields[1], "1");
        positives += ex.label == 1.0f;
        uint32_t want_features = 0;
        for (size_t c = 2; c < ncols; c++) {
            const ps_feature *f = find(p, &ex, hdr[c]);
            if (!*fields[c]) {
                cr_assert_null(f);
                continue;
            }
            want_features++;
            cr_assert_not_null(f, "row %zu column %s", i + 1, hdr[c]);
            cr_assert_eq(f->fid, ps_fid(ps_slot_id(hdr[c]), fields[c], strlen(fields[c])),
                         "row %zu column %s", i + 1, hdr[c]);
        }
        cr_assert_eq(ex.nfeatures, want_features, "row %zu", i + 1);
        /* Avazu has no empty fields: 22 features on every row. */
        cr_assert_eq(ex.nfeatures, 22, "row %zu", i + 1);
        if (i == 1) {
            /* The first data row, as the file shows it. */
            cr_assert_str_eq(fields[1], "0");
            cr_assert_str_eq(fields[2], "14102100");
            cr_expect_eq(find(p, &ex, "hour")->fid, ps_fid(ps_slot_id("hour"), "14102100", 8));
            cr_expect_eq(find(p, &ex, "site_id")->fid,
                         ps_fid(ps_slot_id("site_id"), "1fbe01fe", 8));
        }
        free(fields);
        free(copy);
    }
    cr_expect_eq(positives, want_positives);
    cr_expect(positives > 500 && positives < 3000, "%zu positives", positives);
    /* The header is not a data line: parsing it as one fails on the label. */
    cr_expect_eq(ps_parser_parse(p, L.v[0], strlen(L.v[0]), &ex, err, sizeof(err)), PS_EPARSE);
    cr_expect(strstr(err, "label is not 0/1: 'click'") != NULL, "%s", err);
    ps_example_deinit(&ex);
    free(hdr);
    free(hcopy);
    free_lines(&L);
    ps_parser_free(p);
}

Test(avazu_data, as_criteo_is_rejected) {
    /* The wrong format for a file fails every line with a count, and never
     * crashes. */
    ps_parser *p = make_parser(NULL);
    lines L = read_lines("avazu/train-first10k.csv");
    ps_example ex;
    ps_example_init(&ex);
    for (size_t i = 0; i < L.n; i++) {
        cr_assert_eq(ps_parser_parse(p, L.v[i], strlen(L.v[i]), &ex, err, sizeof(err)),
                     PS_EPARSE);
        cr_assert_str_eq(err, "expected 40 fields, got 1");
    }
    ps_example_deinit(&ex);
    free_lines(&L);
    ps_parser_free(p);
}

PS_TEST_MAIN_REQUIRES_DATA()
