/* libFuzzer target: libsvm lines (worker/parse.h, format = libsvm).
 *
 * Two parsers, the default slot "f" and a custom slot with the smallest
 * max_line_bytes. The reference model splits an accepted line on runs of
 * spaces and tabs itself and checks the label (0/1 or -1/+1) and every
 * idx:val pair: fid of the index token in the libsvm slot, value = the
 * number as strtod reads it in the C locale (the process's locale is C). */

#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "fuzz_parse.h"
#include "keys.h"

typedef struct libsvm_ref {
    const char *slot;
} libsvm_ref;


static void libsvm_check(void *ctx, const ps_parser *p, const char *line, size_t len,
                         const ps_example *ex) {
    const libsvm_ref *c = ctx;
    const char *pos = line, *end = line + len, *t;
    size_t n;
    FUZZ_CHECK(fuzz_next_token(&pos, end, &t, &n));
    float label = n == 1 && t[0] == '0'   ? 0.0f
                  : n == 1 && t[0] == '1' ? 1.0f
                  : n == 2 && !memcmp(t, "-1", 2) ? 0.0f
                  : n == 2 && !memcmp(t, "+1", 2) ? 1.0f
                                                  : -1.0f;
    FUZZ_CHECK(label >= 0.0f && ex->label == label);
    uint16_t id = ps_slot_id(c->slot);
    uint32_t k = 0;
    while (fuzz_next_token(&pos, end, &t, &n)) {
        const char *colon = memchr(t, ':', n);
        FUZZ_CHECK(colon && colon > t);
        size_t il = (size_t)(colon - t), vl = n - il - 1;
        FUZZ_CHECK(il <= 20 && vl > 0 && vl < 64);
        for (size_t i = 0; i < il; i++)
            FUZZ_CHECK(t[i] >= '0' && t[i] <= '9');
        char num[64];
        memcpy(num, colon + 1, vl);
        num[vl] = '\0';
        char *ne;
        double v = strtod(num, &ne);
        FUZZ_CHECK(ne == num + vl);
        FUZZ_CHECK(k < ex->nfeatures);
        const ps_feature *f = &ex->features[k++];
        FUZZ_CHECK(!strcmp(ps_parser_slot_name(p, f->slot), c->slot));
        FUZZ_CHECK(f->fid == ps_fid(id, t, il));
        FUZZ_CHECK(f->value == (float)v);
    }
    FUZZ_CHECK(k == ex->nfeatures);
}

#define NVARIANTS 2

/* The libsvm slot list is fixed when the parser is built: one parser per
 * variant serves every input and carries nothing from one to the next. */
static fuzz_parser parsers[NVARIANTS];
static libsvm_ref refs[NVARIANTS] = {{"f"}, {"feat"}};

FUZZ_FINI(parse_libsvm) {
    for (size_t v = 0; v < NVARIANTS; v++)
        fuzz_parser_deinit(&parsers[v]);
}

FUZZ_INIT(parse_libsvm) {
    (void)argc, (void)argv;
    static const char *const plain[] = {"format", "libsvm", NULL};
    static const char *const custom[] = {"format", "libsvm", "libsvm_slot", "feat",
                                         "max_line_bytes", "64", NULL};
    const char *const *variants[NVARIANTS] = {plain, custom};
    for (size_t v = 0; v < NVARIANTS; v++)
        fuzz_parser_init(&parsers[v], variants[v], libsvm_check, &refs[v]);
    return 0;
}

FUZZ_ENTRY(parse_libsvm) {
    for (size_t v = 0; v < NVARIANTS; v++)
        fuzz_parse_lines(&parsers[v], (const char *)data, (const char *)data + size);
    return 0;
}
