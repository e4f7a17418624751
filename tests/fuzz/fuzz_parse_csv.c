/* libFuzzer target: CSV with a header line (worker/parse.h, format = csv).
 *
 * The input's first line goes to ps_parser_header(), every other line to
 * ps_parser_parse(), through three parsers: Avazu's defaults (label click,
 * id ignored), an unlabelled one with no ignored columns and room for only
 * four slots, and one with a custom label column and two ignored ones. A
 * reference model maps each accepted line's fields to features by the
 * header's column names, independently of parse.c. */

#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "fuzz_parse.h"
#include "keys.h"

typedef struct csv_ref {
    const char *label;           /* label column */
    bool labelled;
    const char *const *ignore;   /* NULL-terminated */
    char *header;                /* owned: the accepted header, BOM and "\r" stripped */
    size_t header_len;
} csv_ref;

static bool is_named(const char *f, size_t n, const char *name) {
    return n == strlen(name) && !memcmp(f, name, n);
}

#define CSV_MAX_COLS 256

static void csv_check(void *ctx, const ps_parser *p, const char *line, size_t len,
                      const ps_example *ex) {
    const csv_ref *c = ctx;
    FUZZ_CHECK(c->header); /* no line parses before a header did */
    static const char *hs[CSV_MAX_COLS], *fs[CSV_MAX_COLS];
    static size_t hl[CSV_MAX_COLS], fl[CSV_MAX_COLS];
    size_t ncols = fuzz_split(c->header, c->header_len, ',', hs, hl, CSV_MAX_COLS);
    FUZZ_CHECK(fuzz_split(line, len, ',', fs, fl, CSV_MAX_COLS) == ncols);
    if (ncols > CSV_MAX_COLS)
        return; /* wider than the model; the generic checks still ran */
    uint32_t k = 0;
    bool saw_label = false;
    for (size_t j = 0; j < ncols; j++) {
        const char *name = hs[j], *f = fs[j];
        size_t nn = hl[j], n = fl[j];
        if (is_named(name, nn, c->label)) {
            if (c->labelled) {
                FUZZ_CHECK(n == 1 && (f[0] == '0' || f[0] == '1'));
                FUZZ_CHECK(ex->label == (float)(f[0] - '0'));
                saw_label = true;
            }
            continue;
        }
        bool ignored = false;
        for (size_t i = 0; c->ignore[i]; i++)
            ignored |= is_named(name, nn, c->ignore[i]);
        if (ignored || n == 0)
            continue;
        FUZZ_CHECK(k < ex->nfeatures);
        const ps_feature *ft = &ex->features[k++];
        const char *sn = ps_parser_slot_name(p, ft->slot);
        FUZZ_CHECK(is_named(name, nn, sn));
        FUZZ_CHECK(ft->fid == ps_fid(fuzz_slot_id(name, nn), f, n));
        FUZZ_CHECK(ft->value == 1.0f);
    }
    FUZZ_CHECK(saw_label == c->labelled);
    FUZZ_CHECK(k == ex->nfeatures);
}

static void remember_header(csv_ref *c, const char *line, size_t len) {
    len = fuzz_strip_cr(line, len);
    if (len >= 3 && !memcmp(line, "\xef\xbb\xbf", 3)) {
        line += 3;
        len -= 3;
    }
    free(c->header);
    c->header = malloc(len ? len : 1);
    FUZZ_CHECK(c->header);
    if (len)
        memcpy(c->header, line, len);
    c->header_len = len;
}

FUZZ_ENTRY(parse_csv) {
    static const char *const none[] = {NULL};
    static const char *const two[] = {"a", "b", NULL};
    static const char *const avazu[] = {"format", "csv", NULL};
    static const char *const unlabelled[] = {"format", "csv", "labelled", "false",
                                             "ignore_columns", "", "max_slots", "4", NULL};
    static const char *const custom[] = {"format", "csv", "label_column", "y",
                                         "ignore_columns", "a, b", NULL};
    static const char *const avazu_ignore[] = {"id", NULL};
    csv_ref refs[] = {
        {.label = "click", .labelled = true, .ignore = avazu_ignore},
        {.label = "click", .labelled = false, .ignore = none},
        {.label = "y", .labelled = true, .ignore = two},
    };
    const char *const *variants[] = {avazu, unlabelled, custom};
    for (size_t v = 0; v < sizeof(variants) / sizeof(*variants); v++) {
        fuzz_parser fp;
        fuzz_parser_init(&fp, variants[v], csv_check, &refs[v]);
        const char *pos = (const char *)data, *end = pos + size, *line;
        size_t len;
        if (fuzz_next_line(&pos, end, &line, &len) && fuzz_parse_header(&fp, line, len) == 0)
            remember_header(&refs[v], line, len);
        fuzz_parse_lines(&fp, pos, end);
        fuzz_parser_deinit(&fp);
        free(refs[v].header);
    }
    return 0;
}
