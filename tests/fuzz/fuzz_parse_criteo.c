/* libFuzzer target: Criteo TSV lines (worker/parse.h, format = criteo).
 *
 * Every line of the input goes through four parsers: bucketized and dense
 * integers, labelled and not, one of them with the smallest max_line_bytes.
 * A reference model written from parse.h's description, not from parse.c,
 * recomputes every feature of an accepted line: field count, label, the
 * integer buckets ("b" = floor(ln(x)^2) for x > 2, else x), ln(1+x) for
 * dense integers, and each categorical field's fid. */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "fuzz_parse.h"
#include "keys.h"

typedef struct criteo_ref {
    bool labelled, dense;
} criteo_ref;

/* Optional '-', then 1..18 decimal digits. */
static bool ref_int(const char *s, size_t n, long long *ret) {
    char buf[24];
    size_t digits = n && s[0] == '-' ? n - 1 : n;
    if (digits == 0 || digits > 18)
        return false;
    for (size_t i = n - digits; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    *ret = strtoll(buf, NULL, 10);
    return true;
}

static const ps_feature *next_feature(const ps_example *ex, uint32_t *k) {
    FUZZ_CHECK(*k < ex->nfeatures);
    return &ex->features[(*k)++];
}

static void check_fid(const ps_parser *p, const ps_feature *f, const char *slot, const char *tok,
                      size_t n) {
    FUZZ_CHECK(!strcmp(ps_parser_slot_name(p, f->slot), slot));
    FUZZ_CHECK(f->fid == ps_fid(ps_slot_id(slot), tok, n));
    FUZZ_CHECK(f->value == 1.0f);
}

#define CRITEO_FIELDS (1 + PS_CRITEO_INTS + PS_CRITEO_CATS)

static void criteo_check(void *ctx, const ps_parser *p, const char *line, size_t len,
                         const ps_example *ex) {
    const criteo_ref *c = ctx;
    const char *fs[CRITEO_FIELDS];
    size_t fl[CRITEO_FIELDS];
    size_t first = c->labelled ? 1 : 0;
    FUZZ_CHECK(fuzz_split(line, len, '\t', fs, fl, CRITEO_FIELDS) ==
               first + PS_CRITEO_INTS + PS_CRITEO_CATS);
    if (c->labelled) {
        FUZZ_CHECK(fl[0] == 1 && (fs[0][0] == '0' || fs[0][0] == '1'));
        FUZZ_CHECK(ex->label == (float)(fs[0][0] - '0'));
    }
    uint32_t k = 0;
    char slot[8], tok[32];
    for (int i = 0; i < PS_CRITEO_INTS; i++) {
        const char *f = fs[first + (size_t)i];
        size_t n = fl[first + (size_t)i];
        long long x = 0;
        bool present = n > 0;
        if (present)
            FUZZ_CHECK(ref_int(f, n, &x));
        if (c->dense) {
            float want = present && x > 0 ? (float)log1p((double)x) : 0.0f;
            FUZZ_CHECK(ex->dense[i] == want);
        } else if (present) {
            long long b = x <= 2 ? x : (long long)floor(log((double)x) * log((double)x));
            snprintf(slot, sizeof(slot), "I%d", i + 1);
            int tl = snprintf(tok, sizeof(tok), "%lld", b);
            check_fid(p, next_feature(ex, &k), slot, tok, (size_t)tl);
        }
    }
    for (int i = 0; i < PS_CRITEO_CATS; i++) {
        size_t j = first + PS_CRITEO_INTS + (size_t)i;
        if (fl[j] == 0)
            continue;
        snprintf(slot, sizeof(slot), "C%d", i + 1);
        check_fid(p, next_feature(ex, &k), slot, fs[j], fl[j]);
    }
    FUZZ_CHECK(k == ex->nfeatures);
}

#define NVARIANTS 4

/* The criteo slot list is fixed when the parser is built, so one parser per
 * variant serves every input without carrying anything from one to the
 * next (building four per input would halve the executions). */
static fuzz_parser parsers[NVARIANTS];
static criteo_ref refs[NVARIANTS] = {{true, false}, {true, true}, {false, true}, {false, false}};

FUZZ_FINI(parse_criteo) {
    for (size_t v = 0; v < NVARIANTS; v++)
        fuzz_parser_deinit(&parsers[v]);
}

FUZZ_INIT(parse_criteo) {
    (void)argc, (void)argv;
    static const char *const bucketize[] = {NULL};
    static const char *const dense[] = {"integers", "dense", NULL};
    static const char *const dense_unlabelled[] = {"integers", "dense", "labelled", "false", NULL};
    static const char *const short_unlabelled[] = {"labelled", "false", "max_line_bytes", "64",
                                                   NULL};
    const char *const *variants[NVARIANTS] = {bucketize, dense, dense_unlabelled, short_unlabelled};
    for (size_t v = 0; v < NVARIANTS; v++)
        fuzz_parser_init(&parsers[v], variants[v], criteo_check, &refs[v]);
    return 0;
}

FUZZ_ENTRY(parse_criteo) {
    for (size_t v = 0; v < NVARIANTS; v++)
        fuzz_parse_lines(&parsers[v], (const char *)data, (const char *)data + size);
    return 0;
}
