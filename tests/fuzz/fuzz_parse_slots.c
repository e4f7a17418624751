/* libFuzzer target: `label slot:value ...` lines (worker/parse.h,
 * format = slots).
 *
 * Two parsers: the defaults, and one with room for only three slots and the
 * smallest max_line_bytes. Both live for the whole input, so slots that one
 * line introduces are looked up by the next. The reference model splits an
 * accepted line itself and checks each token's slot name and fid (the value
 * is everything after the first ':', hashed raw). */

#include <string.h>

#include "fuzz.h"
#include "fuzz_parse.h"
#include "keys.h"


static void slots_check(void *ctx, const ps_parser *p, const char *line, size_t len,
                        const ps_example *ex) {
    (void)ctx;
    const char *pos = line, *end = line + len, *t;
    size_t n;
    FUZZ_CHECK(fuzz_next_token(&pos, end, &t, &n));
    FUZZ_CHECK(n == 1 && (t[0] == '0' || t[0] == '1'));
    FUZZ_CHECK(ex->label == (float)(t[0] - '0'));
    uint32_t k = 0;
    while (fuzz_next_token(&pos, end, &t, &n)) {
        const char *colon = memchr(t, ':', n);
        FUZZ_CHECK(colon && colon > t && colon < t + n - 1);
        size_t nl = (size_t)(colon - t);
        FUZZ_CHECK(k < ex->nfeatures);
        const ps_feature *f = &ex->features[k++];
        const char *name = ps_parser_slot_name(p, f->slot);
        FUZZ_CHECK(strlen(name) == nl && !memcmp(name, t, nl));
        FUZZ_CHECK(f->fid == ps_fid(fuzz_slot_id(t, nl), colon + 1, n - nl - 1));
        FUZZ_CHECK(f->value == 1.0f);
    }
    FUZZ_CHECK(k == ex->nfeatures);
}

FUZZ_ENTRY(parse_slots) {
    static const char *const plain[] = {"format", "slots", NULL};
    static const char *const small[] = {"format", "slots", "max_slots", "3", "max_line_bytes",
                                        "64", NULL};
    const char *const *variants[] = {plain, small};
    for (size_t v = 0; v < sizeof(variants) / sizeof(*variants); v++) {
        fuzz_parser fp;
        fuzz_parser_init(&fp, variants[v], slots_check, NULL);
        fuzz_parse_lines(&fp, (const char *)data, (const char *)data + size);
        fuzz_parser_deinit(&fp);
    }
    return 0;
}
