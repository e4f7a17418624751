#include "fuzz_parse.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fuzz.h"
#include "keys.h"

/* Longest reason we accept: two quoted tokens (32 bytes + "..." each) and
 * the words around them fit easily; a reason that grows with the input
 * would not. */
#define REASON_MAX 200

void fuzz_parser_init(fuzz_parser *fp, const char *const *kv, fuzz_reference_fn ref,
                      void *ref_ctx) {
    memset(fp, 0, sizeof(*fp));
    ps_input_config c;
    char err[256];
    FUZZ_CHECK(ps_input_config_init(&c) == 0);
    for (size_t i = 0; kv[i]; i += 2)
        FUZZ_CHECK(ps_input_config_set(&c, kv[i], kv[i + 1], err, sizeof(err)) == 0);
    FUZZ_CHECK(ps_parser_new(&c, &fp->p, err, sizeof(err)) == 0);
    fp->labelled = c.labelled;
    ps_input_config_deinit(&c);
    ps_example_init(&fp->ex);
    ps_example_init(&fp->ex2);
    fp->ref = ref;
    fp->ref_ctx = ref_ctx;
}

void fuzz_parser_deinit(fuzz_parser *fp) {
    ps_parser_free(fp->p);
    ps_example_deinit(&fp->ex);
    ps_example_deinit(&fp->ex2);
    memset(fp, 0, sizeof(*fp));
}

size_t fuzz_strip_cr(const char *line, size_t len) {
    return len && line[len - 1] == '\r' ? len - 1 : len;
}

size_t fuzz_split(const char *s, size_t n, char sep, const char **ret_f, size_t *ret_len,
                  size_t max) {
    const char *end = s + n, *f = s;
    size_t k = 0;
    for (;;) {
        const char *fe = memchr(f, sep, (size_t)(end - f));
        if (!fe)
            fe = end;
        if (k < max) {
            ret_f[k] = f;
            ret_len[k] = (size_t)(fe - f);
        }
        k++;
        if (fe == end)
            return k;
        f = fe + 1;
    }
}

uint16_t fuzz_slot_id(const char *name, size_t n) {
    char buf[PS_NAME_MAX];
    FUZZ_CHECK(n < sizeof(buf));
    memcpy(buf, name, n);
    buf[n] = '\0';
    return ps_slot_id(buf);
}

static void check_reason(int r, const char *err, size_t errlen) {
    FUZZ_CHECK(r == PS_EPARSE);
    size_t n = strnlen(err, errlen);
    FUZZ_CHECK(n > 0 && n < errlen && n <= REASON_MAX);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK((unsigned char)err[i] >= 0x20 && (unsigned char)err[i] < 0x7f);
}

static void check_example(const fuzz_parser *fp, const ps_example *ex, size_t len) {
    const ps_parser *p = fp->p;
    if (fp->labelled)
        FUZZ_CHECK(ex->label == 0.0f || ex->label == 1.0f);
    else
        FUZZ_CHECK(isnan(ex->label));
    FUZZ_CHECK(ex->ndense == ps_parser_ndense(p));
    FUZZ_CHECK(ex->ndense <= ex->dense_cap);
    for (uint32_t i = 0; i < ex->ndense; i++)
        FUZZ_CHECK(isfinite(ex->dense[i]) && ex->dense[i] >= 0.0f);
    /* Every feature takes at least one byte of the line and a separator. */
    FUZZ_CHECK(ex->nfeatures <= ex->features_cap);
    FUZZ_CHECK(ex->nfeatures <= len / 2 + 1);
    size_t nslots = ps_parser_nslots(p);
    for (uint32_t i = 0; i < ex->nfeatures; i++) {
        const ps_feature *f = &ex->features[i];
        FUZZ_CHECK(f->slot < nslots);
        FUZZ_CHECK(f->slot_id == ps_parser_slot_id(p, f->slot));
        FUZZ_CHECK(ps_fid_slot(f->fid) == f->slot_id);
        FUZZ_CHECK(isfinite(f->value));
        const char *name = ps_parser_slot_name(p, f->slot);
        FUZZ_CHECK(name && ps_slot_id(name) == f->slot_id);
        FUZZ_CHECK(ps_parser_slot_index(p, name) == (int)f->slot);
    }
}

static bool same_float(float a, float b) { return (isnan(a) && isnan(b)) || a == b; }

static void check_same(const ps_example *a, const ps_example *b) {
    FUZZ_CHECK(same_float(a->label, b->label));
    FUZZ_CHECK(a->nfeatures == b->nfeatures && a->ndense == b->ndense);
    for (uint32_t i = 0; i < a->nfeatures; i++) {
        const ps_feature *x = &a->features[i], *y = &b->features[i];
        FUZZ_CHECK(x->fid == y->fid && same_float(x->value, y->value) &&
                   x->slot_id == y->slot_id && x->slot == y->slot);
    }
    for (uint32_t i = 0; i < a->ndense; i++)
        FUZZ_CHECK(same_float(a->dense[i], b->dense[i]));
}

/* Parse line + suffix from its own exact-size buffer and compare with the
 * first parse (result r, reason err). */
static void check_suffix(fuzz_parser *fp, const char *line, size_t len, const char *suffix, int r,
                         const char *err) {
    size_t sl = strlen(suffix);
    char *buf = malloc(len + sl);
    FUZZ_CHECK(buf);
    if (len)
        memcpy(buf, line, len);
    memcpy(buf + len, suffix, sl);
    char err2[512] = "";
    int r2 = ps_parser_parse(fp->p, buf, len + sl, &fp->ex2, err2, sizeof(err2));
    FUZZ_CHECK(r2 == r);
    if (r == 0)
        check_same(&fp->ex, &fp->ex2);
    else
        FUZZ_CHECK(!strcmp(err, err2));
    free(buf);
}

int fuzz_parse_line(fuzz_parser *fp, const char *line, size_t len) {
    /* malloc(0) may return NULL; one spare byte keeps a valid pointer while
     * the parser is still told len. */
    char *buf = malloc(len ? len : 1);
    FUZZ_CHECK(buf);
    if (len)
        memcpy(buf, line, len);
    size_t nslots = ps_parser_nslots(fp->p);
    char err[512] = "";
    int r = ps_parser_parse(fp->p, buf, len, &fp->ex, err, sizeof(err));
    FUZZ_CHECK(ps_parser_nslots(fp->p) >= nslots); /* the slot list only grows */
    if (r == 0) {
        check_example(fp, &fp->ex, len);
        if (fp->ref)
            fp->ref(fp->ref_ctx, fp->p, buf, fuzz_strip_cr(buf, len), &fp->ex);
    } else {
        check_reason(r, err, sizeof(err));
    }
    /* Which line ending a file uses changes nothing. */
    check_suffix(fp, buf, len, "\n", r, err);
    if (!len || buf[len - 1] != '\r')
        check_suffix(fp, buf, len, "\r\n", r, err);
    free(buf);
    return r;
}

void fuzz_parse_lines(fuzz_parser *fp, const char *pos, const char *end) {
    const char *line;
    size_t len;
    while (fuzz_next_line(&pos, end, &line, &len))
        fuzz_parse_line(fp, line, len);
}

int fuzz_parse_header(fuzz_parser *fp, const char *line, size_t len) {
    char *buf = malloc(len ? len : 1);
    FUZZ_CHECK(buf);
    if (len)
        memcpy(buf, line, len);
    char err[512] = "";
    size_t nslots = ps_parser_nslots(fp->p);
    int r = ps_parser_header(fp->p, buf, len, err, sizeof(err));
    FUZZ_CHECK(ps_parser_nslots(fp->p) >= nslots);
    if (r != 0)
        check_reason(r, err, sizeof(err));
    free(buf);
    return r;
}

static bool is_space(char c) { return c == ' ' || c == '\t'; }

bool fuzz_next_token(const char **pos, const char *end, const char **ret_t, size_t *ret_n) {
    const char *t = *pos;
    while (t < end && is_space(*t))
        t++;
    if (t == end)
        return false;
    const char *e = t;
    while (e < end && !is_space(*e))
        e++;
    *ret_t = t;
    *ret_n = (size_t)(e - t);
    *pos = e;
    return true;
}
