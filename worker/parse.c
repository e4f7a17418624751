/* Input-line parsers (see parse.h for the formats).
 *
 * Design note. The worker must parse well over 150k Criteo lines/s on one
 * core while a training step runs on the other, so the hot path is one pass
 * over the line with no allocation and no copy of the caller's bytes:
 *   - fields are found with memchr (glibc's is vectorised; a Criteo field is
 *     about 8 bytes, a call per field measured cheaper than a byte loop);
 *   - the NUL/UTF-8 check runs 8 bytes at a time and falls back to a full
 *     decoder only when a byte is NUL or >= 0x80, which clean logs never have;
 *   - value tokens are hashed in place (ps_fid takes pointer + length);
 *   - a wrong field count is only counted exactly when a line has already
 *     failed, so good lines pay nothing for the message.
 * Error paths may be slow: bad lines are rare and the worker rate-limits
 * their messages anyway.
 *
 * Invariants: the slot list only grows, and by_id[slot id] = index + 1 for
 * every slot in it, so a slot name is resolved with one hash and one compare.
 * Two names with the same 16-bit slot id would give their features the same
 * fid space, so adding the second one fails (like config loading does). */

#include "parse.h"

#include <ctype.h>
#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_key.h"
#include "error.h"
#include "keys.h"
#include "text.h"

/* ---- names -------------------------------------------------------------- */

static const char *const format_names[PS_INPUT_FORMAT_COUNT] = {PS_INPUT_FORMAT_MAP(PS_ENUM_STR)};
static const char *const integers_names[PS_INTEGERS_COUNT] = {PS_INTEGERS_MAP(PS_ENUM_STR)};

const char *ps_input_format_name(ps_input_format f) {
    return ps_enum_name(format_names, PS_INPUT_FORMAT_COUNT, (int)f);
}

const char *ps_integers_mode_name(ps_integers_mode m) {
    return ps_enum_name(integers_names, PS_INTEGERS_COUNT, (int)m);
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return PS_EPARSE;
}

/* At most 32 bytes of s, non-printable bytes as '?', "..." when cut: the
 * worker prints reasons to a log, and a hostile line must neither flood it
 * nor put terminal escapes in it. dst holds QUOTE_MAX bytes. */
#define QUOTE_MAX 40
static const char *quote(char dst[QUOTE_MAX], const char *s, size_t n) {
    size_t m = n > 32 ? 32 : n, i;
    for (i = 0; i < m; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (n > m) {
        memcpy(dst + i, "...", 3);
        i += 3;
    }
    dst[i] = '\0';
    return dst;
}

/* ---- [input] configuration ---------------------------------------------- */

static void free_list(char **list, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

/* A slot or column name: 1..PS_NAME_MAX-1 bytes of printable ASCII without
 * whitespace, ':' (the slots format splits on it) or ',' (csv does). */
static int check_name(const char *s, size_t n, const char *what, char *err, size_t errlen) {
    char q[QUOTE_MAX];
    if (n == 0) {
        snprintf(err, errlen, "%s must not be empty", what);
        return PS_ECONFIG;
    }
    if (n >= PS_NAME_MAX) {
        snprintf(err, errlen, "%s '%s' is longer than %d bytes", what, quote(q, s, n),
                 PS_NAME_MAX - 1);
        return PS_ECONFIG;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == ':' || ch == ',') {
            snprintf(err, errlen, "%s '%s' may not contain spaces, ':', ',' or non-ASCII", what,
                     quote(q, s, n));
            return PS_ECONFIG;
        }
    }
    return 0;
}

static int check_key_value(const ps_config_key *k, const char *s, size_t len, char *err,
                           size_t errlen) {
    return check_name(s, len, k->name, err, errlen);
}

static int check_column(const ps_config_key *k, const char *s, size_t len, char *err,
                        size_t errlen) {
    (void)k;
    return check_name(s, len, "column name", err, errlen);
}

/* key=value, both non-empty, no blanks (librdkafka checks the rest when
 * the consumer is made). */
static int check_kafka_property(const ps_config_key *k, const char *s, size_t len, char *err,
                                size_t errlen) {
    (void)k;
    const char *eq = memchr(s, '=', len);
    bool blank = false;
    for (size_t i = 0; i < len; i++)
        blank |= s[i] == ' ' || s[i] == '\t';
    if (!eq || eq == s || eq == s + len - 1 || blank) {
        snprintf(err, errlen, "kafka property '%.*s': expected key=value", (int)len, s);
        return PS_ECONFIG;
    }
    return 0;
}

/* dense_integers, bucketize_integers: a list of I1..I13 (separated by
 * commas, spaces or tabs) into the bit set at the key's field. */
static int set_integer_fields(const ps_config_key *k, void *obj, const char *value, char *err,
                              size_t errlen) {
    uint16_t mask = 0;
    const char *q = value;
    while (*q) {
        while (*q == ' ' || *q == ',' || *q == '\t')
            q++;
        if (!*q)
            break;
        unsigned i;
        int used;
        if (sscanf(q, "I%u%n", &i, &used) != 1 || i < 1 || i > PS_CRITEO_INTS ||
            (q[used] && q[used] != ',' && q[used] != ' ' && q[used] != '\t')) {
            snprintf(err, errlen, "expected a list of I1..I%d, got '%s'", PS_CRITEO_INTS, value);
            return PS_ECONFIG;
        }
        mask |= (uint16_t)(1u << (i - 1));
        q += used;
    }
    *(uint16_t *)((char *)obj + k->offset) = mask;
    return 0;
}

/* Scope of an [input] key: the formats it applies to. */
#define FMT_BIT(f) (1u << (f))
#define FMT(f) FMT_BIT(PS_INPUT_##f)

/* In the order the unknown-key message lists them. */
#define INP ps_input_config
static const ps_config_key input_keys[] = {
    PS_KEY_ENUM("format", INP, format, format_names),
    PS_KEY_ENUM("integers", INP, integers, integers_names, .scope = FMT(CRITEO)),
    PS_KEY_CUSTOM("dense_integers", INP, dense_integers, set_integer_fields, .scope = FMT(CRITEO)),
    PS_KEY_CUSTOM("bucketize_integers", INP, bucketize_integers, set_integer_fields,
                  .scope = FMT(CRITEO)),
    PS_KEY_BOOL("labelled", INP, labelled),
    PS_KEY_STRING("label_column", INP, label_column, .check = check_key_value, .scope = FMT(CSV)),
    PS_KEY_STRINGS("ignore_columns", INP, ignore_columns, nignore_columns,
                   .flags = PS_KEY_EMPTY_ITEMS, .check = check_column, .scope = FMT(CSV)),
    PS_KEY_STRING("libsvm_slot", INP, libsvm_slot, .check = check_key_value,
                  .scope = FMT(LIBSVM)),
    PS_KEY_U32("max_line_bytes", INP, max_line_bytes, 64, 1u << 30),
    PS_KEY_U32("max_slots", INP, max_slots, 1, 65535),
    PS_KEY_U32("id_column", INP, id_column, 0, 65535),
    PS_KEY_STRING("kafka_group", INP, kafka_group, .check = check_key_value),
    PS_KEY_STRINGS("kafka_properties", INP, kafka_properties, nkafka_properties,
                   .check = check_kafka_property),
};
#undef INP
#define NINPUT_KEYS (sizeof(input_keys) / sizeof(input_keys[0]))
_Static_assert(NINPUT_KEYS <= 32, "ps_input_config.keys_set has a bit per key");

int ps_input_config_init(ps_input_config *c) {
    memset(c, 0, sizeof(*c));
    c->format = PS_INPUT_CRITEO;
    c->integers = PS_INTEGERS_BUCKETIZE;
    c->labelled = true;
    strcpy(c->label_column, "click");
    strcpy(c->libsvm_slot, "f");
    /* 64 KiB: a Criteo line is ~250 bytes, a slots line with a 1000-item
     * history ~15 KB; anything longer is far more likely a broken file (no
     * newlines) than a real example, and the reader's buffer is this size. */
    c->max_line_bytes = 64u << 10;
    c->max_slots = 1024;
    strcpy(c->kafka_group, "ctrps");
    c->ignore_columns = malloc(sizeof(char *));
    if (!c->ignore_columns || !(c->ignore_columns[0] = strdup("id"))) {
        free(c->ignore_columns);
        c->ignore_columns = NULL;
        return -ENOMEM;
    }
    c->nignore_columns = 1;
    return 0;
}

void ps_input_config_deinit(ps_input_config *c) {
    if (!c)
        return;
    ps_config_keys_free(input_keys, NINPUT_KEYS, c);
}

int ps_input_config_set(ps_input_config *c, const char *key, const char *value, char *err,
                        size_t errlen) {
    const ps_config_key *k = ps_config_key_find(input_keys, NINPUT_KEYS, key);
    if (!k) {
        size_t used = (size_t)snprintf(err, errlen, "unknown key (known:");
        for (size_t i = 0; i < NINPUT_KEYS && used < errlen; i++)
            used += (size_t)snprintf(err + used, errlen - used, "%s %s", i ? "," : "",
                                     input_keys[i].name);
        if (used < errlen)
            snprintf(err + used, errlen - used, ")");
        return PS_ECONFIG;
    }
    int r = ps_config_key_parse(k, c, value, err, errlen);
    if (r < 0)
        return r;
    c->keys_set |= 1u << (k - input_keys);
    return 0;
}

int ps_input_config_check(const ps_input_config *c, char *err, size_t errlen) {
    if ((unsigned)c->format >= PS_INPUT_FORMAT_COUNT ||
        (unsigned)c->integers >= PS_INTEGERS_COUNT) {
        snprintf(err, errlen, "invalid format or integers value");
        return PS_ECONFIG;
    }
    for (size_t i = 0; i < NINPUT_KEYS; i++) {
        const ps_config_key *k = &input_keys[i];
        if ((c->keys_set & (1u << i)) && k->scope && !(k->scope & FMT_BIT(c->format))) {
            snprintf(err, errlen, "key '%s' does not apply to format = %s", k->name,
                     format_names[c->format]);
            return PS_ECONFIG;
        }
    }
    if (c->dense_integers & c->bucketize_integers) {
        snprintf(err, errlen, "an integer field is in both dense_integers and bucketize_integers");
        return PS_ECONFIG;
    }
    if (!c->labelled && c->format != PS_INPUT_CRITEO && c->format != PS_INPUT_CSV) {
        snprintf(err, errlen, "labelled = false applies only to criteo and csv, not %s",
                 format_names[c->format]);
        return PS_ECONFIG;
    }
    if (c->format == PS_INPUT_CSV)
        for (size_t i = 0; i < c->nignore_columns; i++)
            if (!strcmp(c->ignore_columns[i], c->label_column)) {
                snprintf(err, errlen, "label column '%s' is also in ignore_columns",
                         c->label_column);
                return PS_ECONFIG;
            }
    return 0;
}

int ps_input_column(const ps_input_config *c, const char *line, size_t len, uint32_t col,
                    const char **ret_text, size_t *ret_len) {
    /* libsvm and slots split on runs of blanks, the others on one byte:
     * the same columns their parsers see. */
    bool runs = c->format == PS_INPUT_LIBSVM || c->format == PS_INPUT_SLOTS;
    char sep = c->format == PS_INPUT_CSV ? ',' : '\t';
    size_t i = 0;
    for (uint32_t k = 1; col > 0; k++) {
        if (runs)
            while (i < len && (line[i] == ' ' || line[i] == '\t'))
                i++;
        size_t start = i;
        while (i < len && (runs ? line[i] != ' ' && line[i] != '\t' : line[i] != sep))
            i++;
        if (k == col) {
            if (runs && start == len)
                break;
            *ret_text = line + start;
            *ret_len = i - start;
            return 0;
        }
        if (i == len)
            break;
        i++;
    }
    return -ENOENT;
}

bool ps_input_integer_is_dense(const ps_input_config *c, int i) {
    if (c->dense_integers & (1u << i))
        return true;
    if (c->bucketize_integers & (1u << i))
        return false;
    return c->integers == PS_INTEGERS_DENSE;
}

/* ---- examples ------------------------------------------------------------ */

void ps_example_init(ps_example *ex) { memset(ex, 0, sizeof(*ex)); }

void ps_example_deinit(ps_example *ex) {
    if (!ex)
        return;
    free(ex->features);
    free(ex->dense);
    memset(ex, 0, sizeof(*ex));
}

static int reserve_features(ps_example *ex, size_t n) {
    if (n <= ex->features_cap)
        return 0;
    if (n > UINT32_MAX / 2)
        return -ENOMEM;
    size_t cap = ex->features_cap ? ex->features_cap : 64;
    while (cap < n)
        cap *= 2;
    ps_feature *f = realloc(ex->features, cap * sizeof(*f));
    if (!f)
        return -ENOMEM;
    ex->features = f;
    ex->features_cap = (uint32_t)cap;
    return 0;
}

static int reserve_dense(ps_example *ex, size_t n) {
    if (n <= ex->dense_cap)
        return 0;
    float *d = realloc(ex->dense, n * sizeof(*d));
    if (!d)
        return -ENOMEM;
    ex->dense = d;
    ex->dense_cap = (uint32_t)n;
    return 0;
}

/* ---- the parser ---------------------------------------------------------- */

typedef struct slot_info {
    char name[PS_NAME_MAX];
    uint16_t id;
} slot_info;

/* csv column roles; values >= 0 are slot indices. */
enum { COL_LABEL = -1, COL_IGNORE = -2, COL_PENDING = -3 };

/* Integers below this use tables for the bucket and ln(1+x): Criteo's
 * counts are mostly small, and log() per field was a visible share of the
 * per-line cost. */
#define SMALL_INT 1024

struct ps_parser {
    ps_input_format format;
    ps_integers_mode integers;
    bool labelled;
    uint32_t max_line_bytes, max_slots;

    slot_info *slots;            /* owned */
    size_t nslots, slots_cap;
    uint16_t *by_id;             /* owned, 65536 entries: slot index + 1, 0 = none */

    /* criteo */
    uint16_t int_slot[PS_CRITEO_INTS], cat_slot[PS_CRITEO_CATS];
    int8_t dense_pos[PS_CRITEO_INTS]; /* index into ex->dense, or -1: bucketized */
    uint32_t ndense;
    uint16_t bucket_small[SMALL_INT];
    float log1p_small[SMALL_INT];

    /* csv */
    char label_column[PS_NAME_MAX];
    char **ignore;               /* owned */
    size_t nignore;
    int32_t *col_map;            /* owned; role of each column of the header */
    size_t ncols;
    bool have_header;

    /* libsvm */
    uint16_t libsvm_slot;
    locale_t c_locale;           /* strtod must not follow the process locale */
};

/* Find or add a slot. Allocates only when the slot is new. */
static int slot_get(ps_parser *p, const char *name, size_t n, uint16_t *ret_index, char *err,
                    size_t errlen) {
    char buf[PS_NAME_MAX], q[QUOTE_MAX], q2[QUOTE_MAX];
    if (n == 0)
        return fail(err, errlen, "empty slot name");
    if (n >= PS_NAME_MAX)
        return fail(err, errlen, "slot name longer than %d bytes: '%s'", PS_NAME_MAX - 1,
                    quote(q, name, n));
    memcpy(buf, name, n);
    buf[n] = '\0';
    uint16_t id = ps_slot_id(buf);
    uint16_t at = p->by_id[id];
    if (at) {
        /* Both names come from data (a csv header, a slots line): quote
         * both, or an earlier name's control bytes would reach the log. */
        const char *other = p->slots[at - 1].name;
        if (strcmp(other, buf) != 0)
            return fail(err, errlen, "slot '%s' has the same id 0x%04x as slot '%s'",
                        quote(q, name, n), id, quote(q2, other, strlen(other)));
        *ret_index = (uint16_t)(at - 1);
        return 0;
    }
    if (p->nslots >= p->max_slots)
        return fail(err, errlen, "slot '%s' would exceed max_slots = %u", quote(q, name, n),
                    p->max_slots);
    if (p->nslots == p->slots_cap) {
        size_t cap = p->slots_cap ? p->slots_cap * 2 : 64;
        slot_info *s = realloc(p->slots, cap * sizeof(*s));
        if (!s)
            return -ENOMEM;
        p->slots = s;
        p->slots_cap = cap;
    }
    slot_info *s = &p->slots[p->nslots];
    memcpy(s->name, buf, n + 1);
    s->id = id;
    p->by_id[id] = (uint16_t)(p->nslots + 1);
    *ret_index = (uint16_t)p->nslots++;
    return 0;
}

void ps_parser_free(ps_parser *p) {
    if (!p)
        return;
    free(p->slots);
    free(p->by_id);
    free_list(p->ignore, p->nignore);
    free(p->col_map);
    if (p->c_locale)
        freelocale(p->c_locale);
    free(p);
}

int ps_parser_new(const ps_input_config *c, ps_parser **ret_parser, char *err, size_t errlen) {
    int r = ps_input_config_check(c, err, errlen);
    if (r < 0)
        return r;
    ps_parser *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->format = c->format;
    p->integers = c->integers;
    p->labelled = c->labelled;
    p->max_line_bytes = c->max_line_bytes;
    p->max_slots = c->max_slots;
    r = -ENOMEM;
    if (!(p->by_id = calloc(65536, sizeof(*p->by_id))))
        goto fail;
    switch (p->format) {
    case PS_INPUT_CRITEO: {
        char name[8];
        for (int i = 0; i < PS_CRITEO_INTS; i++) {
            if (ps_input_integer_is_dense(c, i)) {
                p->dense_pos[i] = (int8_t)p->ndense++;
                continue;
            }
            p->dense_pos[i] = -1;
            snprintf(name, sizeof(name), "I%d", i + 1);
            if ((r = slot_get(p, name, strlen(name), &p->int_slot[i], err, errlen)) < 0)
                goto fail;
        }
        for (int i = 0; i < PS_CRITEO_CATS; i++) {
            snprintf(name, sizeof(name), "C%d", i + 1);
            if ((r = slot_get(p, name, strlen(name), &p->cat_slot[i], err, errlen)) < 0)
                goto fail;
        }
        for (int x = 0; x < SMALL_INT; x++) {
            p->bucket_small[x] = (uint16_t)(x > 2 ? floor(log((double)x) * log((double)x)) : x);
            p->log1p_small[x] = (float)log1p((double)x);
        }
        break;
    }
    case PS_INPUT_CSV:
        strcpy(p->label_column, c->label_column);
        if (c->nignore_columns) {
            if (!(p->ignore = calloc(c->nignore_columns, sizeof(char *))))
                goto fail;
            for (; p->nignore < c->nignore_columns; p->nignore++)
                if (!(p->ignore[p->nignore] = strdup(c->ignore_columns[p->nignore])))
                    goto fail;
        }
        break;
    case PS_INPUT_LIBSVM:
        if (!(p->c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0)))
            goto fail;
        if ((r = slot_get(p, c->libsvm_slot, strlen(c->libsvm_slot), &p->libsvm_slot, err,
                          errlen)) < 0)
            goto fail;
        break;
    case PS_INPUT_SLOTS:
    case PS_INPUT_FORMAT_COUNT:
        break;
    }
    *ret_parser = p;
    return 0;
fail:
    if (r == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    else if (r == PS_EPARSE)
        r = PS_ECONFIG; /* a slot-name problem in the config itself */
    ps_parser_free(p);
    return r;
}

bool ps_parser_wants_header(const ps_parser *p) { return p->format == PS_INPUT_CSV; }
size_t ps_parser_nslots(const ps_parser *p) { return p->nslots; }
const char *ps_parser_slot_name(const ps_parser *p, size_t slot) {
    return slot < p->nslots ? p->slots[slot].name : NULL;
}
uint16_t ps_parser_slot_id(const ps_parser *p, size_t slot) {
    return slot < p->nslots ? p->slots[slot].id : 0;
}
uint32_t ps_parser_ndense(const ps_parser *p) {
    return p->format == PS_INPUT_CRITEO ? p->ndense : 0;
}

int ps_parser_slot_index(const ps_parser *p, const char *name) {
    uint16_t at = p->by_id[ps_slot_id(name)];
    return at && !strcmp(p->slots[at - 1].name, name) ? at - 1 : -1;
}

/* ---- line checks --------------------------------------------------------- */

/* Offset of the first NUL or invalid UTF-8 byte (overlong forms, surrogates
 * and code points above U+10FFFF are invalid), or n when the line is clean. */
static size_t first_bad_byte(const unsigned char *s, size_t n, bool *ret_nul) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c == 0) {
            *ret_nul = true;
            return i;
        }
        if (c < 0x80) {
            i++;
            continue;
        }
        *ret_nul = false;
        size_t need;
        unsigned char lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf)
            need = 1;
        else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0)
                lo = 0xa0;
            else if (c == 0xed)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0)
                lo = 0x90;
            else if (c == 0xf4)
                hi = 0x8f;
        } else
            return i;
        if (n - i <= need)
            return i;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
        i += need + 1;
    }
    return n;
}

/* Strip "\n" / "\r\n", then reject overlong, empty, NUL and bad UTF-8. */
static int prep_line(const ps_parser *p, const char *s, size_t *len, char *err, size_t errlen) {
    size_t n = *len;
    if (n && s[n - 1] == '\n')
        n--;
    if (n && s[n - 1] == '\r')
        n--;
    if (n > p->max_line_bytes)
        return fail(err, errlen, "line longer than %u bytes", p->max_line_bytes);
    if (n == 0)
        return fail(err, errlen, "empty line");
    /* Eight bytes at a time: any byte that is 0 or >= 0x80 sends the line to
     * the exact check. */
    const uint64_t ones = UINT64_C(0x0101010101010101), highs = UINT64_C(0x8080808080808080);
    uint64_t bad = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        bad |= (((w - ones) & ~w) | w) & highs;
    }
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        bad |= (c == 0) | (c >= 0x80);
    }
    if (bad) {
        bool nul = false;
        size_t at = first_bad_byte((const unsigned char *)s, n, &nul);
        if (at < n)
            return fail(err, errlen, nul ? "embedded NUL at byte %zu" : "invalid UTF-8 at byte %zu",
                        at);
    }
    *len = n;
    return 0;
}

static size_t count_char(const char *s, size_t n, char c) {
    size_t k = 0;
    const char *end = s + n;
    while ((s = memchr(s, c, (size_t)(end - s)))) {
        k++;
        s++;
    }
    return k;
}

/* ---- field parsers ------------------------------------------------------- */

static int parse_label01(const char *s, size_t n, float *ret, char *err, size_t errlen) {
    char q[QUOTE_MAX];
    if (n == 1 && (s[0] == '0' || s[0] == '1')) {
        *ret = (float)(s[0] - '0');
        return 0;
    }
    return fail(err, errlen, "label is not 0/1: '%s'", quote(q, s, n));
}

/* Decimal integer, optional '-', at most 18 digits (so no overflow check is
 * needed: every Criteo count fits with room to spare). */
static bool parse_i64(const char *s, size_t n, int64_t *ret) {
    size_t i = 0;
    bool neg = false;
    if (n && s[0] == '-') {
        neg = true;
        i = 1;
    }
    if (i == n || n - i > 18)
        return false;
    uint64_t v = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned)((unsigned char)s[i] - '0');
        if (d > 9)
            return false;
        v = v * 10 + d;
    }
    *ret = neg ? -(int64_t)v : (int64_t)v;
    return true;
}

/* Decimal text of v into buf (>= 21 bytes); returns the length. */
static size_t fmt_i64(char *buf, int64_t v) {
    char tmp[24];
    size_t n = 0, k = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        buf[k++] = '-';
    while (n)
        buf[k++] = tmp[--n];
    return k;
}

static inline void add_feature(ps_example *ex, const ps_parser *p, uint16_t slot, const char *v,
                               size_t n, float value) {
    uint16_t id = p->slots[slot].id;
    ps_feature *f = &ex->features[ex->nfeatures++];
    f->fid = ps_fid(id, v, n);
    f->value = value;
    f->slot_id = id;
    f->slot = slot;
}

/* ---- criteo -------------------------------------------------------------- */

static int criteo_count_error(const ps_parser *p, const char *s, size_t n, char *err,
                              size_t errlen) {
    size_t want = (p->labelled ? 1 : 0) + PS_CRITEO_INTS + PS_CRITEO_CATS;
    size_t got = count_char(s, n, '\t') + 1;
    if (got != want)
        return fail(err, errlen, "expected %zu fields, got %zu", want, got);
    return 0;
}

static int parse_criteo(ps_parser *p, const char *s, size_t n, ps_example *ex, char *err,
                        size_t errlen) {
    const char *end = s + n, *f = s, *fe;
    bool more = true;
    int r;
    char q[QUOTE_MAX];
    if ((r = reserve_features(ex, PS_CRITEO_INTS + PS_CRITEO_CATS)) < 0)
        return r;
    if (p->ndense && (r = reserve_dense(ex, p->ndense)) < 0)
        return r;
    ex->ndense = p->ndense;

/* Advance to the next tab-separated field [f, fe); a missing field is a
 * field-count error. */
#define NEXT_FIELD()                                                           \
    do {                                                                       \
        if (!more)                                                             \
            goto bad_line;                                                  \
        fe = memchr(f, '\t', (size_t)(end - f));                               \
        if (!fe) {                                                             \
            fe = end;                                                          \
            more = false;                                                      \
        }                                                                      \
    } while (0)
#define SKIP_FIELD()                                                           \
    do {                                                                       \
        if (more)                                                              \
            f = fe + 1;                                                        \
    } while (0)

    if (p->labelled) {
        NEXT_FIELD();
        if (parse_label01(f, (size_t)(fe - f), &ex->label, err, errlen) < 0)
            goto bad_line;
        SKIP_FIELD();
    } else {
        ex->label = NAN;
    }
    for (int i = 0; i < PS_CRITEO_INTS; i++) {
        NEXT_FIELD();
        size_t len = (size_t)(fe - f);
        bool dense = p->dense_pos[i] >= 0;
        if (len == 0) {
            if (dense)
                ex->dense[p->dense_pos[i]] = 0;
        } else {
            int64_t x;
            if (!parse_i64(f, len, &x)) {
                fail(err, errlen, "I%d is not an integer: '%s'", i + 1, quote(q, f, len));
                goto bad_line;
            }
            if (dense) {
                /* ln(1+x) is undefined at x = -1 and meaningless below; real
                 * Criteo has I2 in {-1,-2,-3} on ~10% of rows. Mapping them to
                 * 0 merges them with x = 0 and with missing, a loss only the
                 * dense mode has: bucketize keeps them apart. */
                ex->dense[p->dense_pos[i]] = x <= 0 ? 0.0f
                               : x < SMALL_INT ? p->log1p_small[x]
                                               : (float)log1p((double)x);
            } else {
                int64_t b = x < 0            ? x
                            : x < SMALL_INT ? p->bucket_small[x]
                                            : (int64_t)floor(log((double)x) * log((double)x));
                char tok[24];
                add_feature(ex, p, p->int_slot[i], tok, fmt_i64(tok, b), 1.0f);
            }
        }
        SKIP_FIELD();
    }
    for (int i = 0; i < PS_CRITEO_CATS; i++) {
        NEXT_FIELD();
        if (fe > f)
            add_feature(ex, p, p->cat_slot[i], f, (size_t)(fe - f), 1.0f);
        SKIP_FIELD();
    }
    if (more)
        goto bad_line;
    return 0;
#undef NEXT_FIELD
#undef SKIP_FIELD

bad_line:
    /* A line with the wrong number of fields usually fails on some field's
     * content first; the count is the more useful reason then. Otherwise the
     * content reason already in err stands. */
    criteo_count_error(p, s, n, err, errlen);
    return PS_EPARSE;
}

/* ---- csv ----------------------------------------------------------------- */

int ps_parser_header(ps_parser *p, const char *line, size_t len, char *err, size_t errlen) {
    if (p->format != PS_INPUT_CSV)
        return fail(err, errlen, "format %s has no header line", format_names[p->format]);
    int r = prep_line(p, line, &len, err, errlen);
    if (r < 0)
        return r;
    /* Spreadsheet exports start with a UTF-8 byte-order mark; left in, it
     * would rename the first column ("\xef\xbb\xbfid" is not "id"). */
    if (len >= 3 && !memcmp(line, "\xef\xbb\xbf", 3)) {
        line += 3;
        len -= 3;
    }
    size_t ncols = count_char(line, len, ',') + 1;
    int32_t *map = malloc(ncols * sizeof(*map));
    if (!map)
        return -ENOMEM;
    char q[QUOTE_MAX];
    const char *f = line, *end = line + len;
    bool have_label = false;
    /* First pass: names and roles, so a bad header changes nothing. */
    for (size_t i = 0; i < ncols; i++) {
        const char *fe = memchr(f, ',', (size_t)(end - f));
        if (!fe)
            fe = end;
        size_t n = (size_t)(fe - f);
        if (n == 0) {
            r = fail(err, errlen, "header column %zu has an empty name", i + 1);
            goto out;
        }
        if (n >= PS_NAME_MAX) {
            r = fail(err, errlen, "header column %zu name longer than %d bytes: '%s'", i + 1,
                     PS_NAME_MAX - 1, quote(q, f, n));
            goto out;
        }
        /* Duplicates: compare with the earlier columns (headers are short and
         * rare, so quadratic is fine). */
        const char *g = line;
        for (size_t j = 0; j < i; j++) {
            const char *ge = memchr(g, ',', (size_t)(end - g));
            if ((size_t)(ge - g) == n && !memcmp(g, f, n)) {
                r = fail(err, errlen, "header names column '%s' twice", quote(q, f, n));
                goto out;
            }
            g = ge + 1;
        }
        map[i] = COL_PENDING;
        if (n == strlen(p->label_column) && !memcmp(f, p->label_column, n)) {
            map[i] = p->labelled ? COL_LABEL : COL_IGNORE;
            have_label = true;
        }
        for (size_t k = 0; k < p->nignore; k++)
            if (n == strlen(p->ignore[k]) && !memcmp(f, p->ignore[k], n))
                map[i] = COL_IGNORE;
        if (fe < end)
            f = fe + 1;
    }
    if (p->labelled && !have_label) {
        r = fail(err, errlen, "header has no label column '%s'", p->label_column);
        goto out;
    }
    /* Second pass: slots. A failure here may leave new slots in the list,
     * which is harmless: the list only grows and unused slots get no
     * features. */
    f = line;
    for (size_t i = 0; i < ncols; i++) {
        const char *fe = memchr(f, ',', (size_t)(end - f));
        if (!fe)
            fe = end;
        if (map[i] == COL_PENDING) {
            uint16_t slot;
            if ((r = slot_get(p, f, (size_t)(fe - f), &slot, err, errlen)) < 0)
                goto out;
            map[i] = slot;
        }
        if (fe < end)
            f = fe + 1;
    }
    free(p->col_map);
    p->col_map = map;
    p->ncols = ncols;
    p->have_header = true;
    return 0;
out:
    free(map);
    return r;
}

static int parse_csv(ps_parser *p, const char *s, size_t n, ps_example *ex, char *err,
                     size_t errlen) {
    if (!p->have_header)
        return fail(err, errlen, "no header line read yet");
    int r;
    if ((r = reserve_features(ex, p->ncols)) < 0)
        return r;
    ex->ndense = 0;
    ex->label = NAN;
    const char *end = s + n, *f = s;
    bool more = true;
    for (size_t i = 0; i < p->ncols; i++) {
        if (!more)
            goto bad_line;
        const char *fe = memchr(f, ',', (size_t)(end - f));
        if (!fe) {
            fe = end;
            more = false;
        }
        int32_t role = p->col_map[i];
        size_t len = (size_t)(fe - f);
        if (role == COL_LABEL) {
            if (parse_label01(f, len, &ex->label, err, errlen) < 0)
                goto bad_line;
        } else if (role >= 0 && len) {
            add_feature(ex, p, (uint16_t)role, f, len, 1.0f);
        }
        if (more)
            f = fe + 1;
    }
    if (!more)
        return 0;
bad_line: {
    /* As for criteo: a wrong field count is the more useful reason. */
    size_t got = count_char(s, n, ',') + 1;
    if (got != p->ncols)
        return fail(err, errlen, "expected %zu fields, got %zu", p->ncols, got);
    return PS_EPARSE;
}
}

/* ---- libsvm and slots ---------------------------------------------------- */

static inline bool is_space(char c) { return c == ' ' || c == '\t'; }

/* Next whitespace-delimited token at or after *pos, as [*ret_tok, *pos). */
static inline bool next_token(const char **pos, const char *end, const char **ret_tok) {
    const char *t = *pos;
    while (t < end && is_space(*t))
        t++;
    if (t == end)
        return false;
    const char *e = t;
    while (e < end && !is_space(*e))
        e++;
    *ret_tok = t;
    *pos = e;
    return true;
}

static inline int grow_one(ps_example *ex) {
    return ex->nfeatures < ex->features_cap ? 0 : reserve_features(ex, ex->nfeatures + 1u);
}

static int parse_libsvm(ps_parser *p, const char *s, size_t n, ps_example *ex, char *err,
                        size_t errlen) {
    const char *pos = s, *end = s + n, *t;
    char q[QUOTE_MAX];
    int r;
    ex->ndense = 0;
    if (!next_token(&pos, end, &t))
        return fail(err, errlen, "empty line");
    size_t tl = (size_t)(pos - t);
    if (tl == 1 && (t[0] == '0' || t[0] == '1'))
        ex->label = (float)(t[0] - '0');
    else if (tl == 2 && t[1] == '1' && (t[0] == '-' || t[0] == '+'))
        ex->label = t[0] == '+';
    else
        return fail(err, errlen, "label is not 0/1 or -1/+1: '%s'", quote(q, t, tl));
    while (next_token(&pos, end, &t)) {
        tl = (size_t)(pos - t);
        const char *colon = memchr(t, ':', tl);
        if (!colon)
            return fail(err, errlen, "pair '%s' has no ':'", quote(q, t, tl));
        size_t il = (size_t)(colon - t), vl = tl - il - 1;
        bool digits = il > 0 && il <= 20;
        for (size_t k = 0; digits && k < il; k++)
            digits = t[k] >= '0' && t[k] <= '9';
        if (!digits)
            return fail(err, errlen, "pair '%s': index is not a non-negative integer",
                        quote(q, t, tl));
        /* strtod needs a NUL; copy the value (numbers are short) rather than
         * write into the caller's buffer. */
        char num[64];
        if (vl == 0 || vl >= sizeof(num))
            return fail(err, errlen, "pair '%s': value is not a number", quote(q, t, tl));
        memcpy(num, colon + 1, vl);
        num[vl] = '\0';
        char *ne;
        double v = strtod_l(num, &ne, p->c_locale);
        if (ne != num + vl || !isfinite(v) || !isfinite((float)v))
            return fail(err, errlen, "pair '%s': value is not a finite number", quote(q, t, tl));
        if ((r = grow_one(ex)) < 0)
            return r;
        add_feature(ex, p, p->libsvm_slot, t, il, (float)v);
    }
    return 0;
}

static int parse_slots(ps_parser *p, const char *s, size_t n, ps_example *ex, char *err,
                       size_t errlen) {
    const char *pos = s, *end = s + n, *t;
    char q[QUOTE_MAX];
    int r;
    ex->ndense = 0;
    if (!next_token(&pos, end, &t))
        return fail(err, errlen, "empty line");
    if ((r = parse_label01(t, (size_t)(pos - t), &ex->label, err, errlen)) < 0)
        return r;
    /* Lines repeat the same few slot names; remembering the last one skips
     * the hash for runs like hist:a hist:b hist:c. */
    const char *last_name = NULL;
    size_t last_len = 0;
    uint16_t last_slot = 0;
    while (next_token(&pos, end, &t)) {
        size_t tl = (size_t)(pos - t);
        const char *colon = memchr(t, ':', tl);
        if (!colon)
            return fail(err, errlen, "token '%s' has no ':'", quote(q, t, tl));
        size_t nl = (size_t)(colon - t), vl = tl - nl - 1;
        if (nl == 0)
            return fail(err, errlen, "token '%s' has an empty slot name", quote(q, t, tl));
        if (vl == 0)
            return fail(err, errlen, "token '%s' has an empty value", quote(q, t, tl));
        uint16_t slot;
        if (last_name && nl == last_len && !memcmp(t, last_name, nl)) {
            slot = last_slot;
        } else {
            if ((r = slot_get(p, t, nl, &slot, err, errlen)) < 0)
                return r;
            last_name = t, last_len = nl, last_slot = slot;
        }
        if ((r = grow_one(ex)) < 0)
            return r;
        add_feature(ex, p, slot, colon + 1, vl, 1.0f);
    }
    return 0;
}

int ps_parser_parse(ps_parser *p, const char *line, size_t len, ps_example *ex, char *err,
                    size_t errlen) {
    int r = prep_line(p, line, &len, err, errlen);
    if (r < 0)
        return r;
    ex->nfeatures = 0;
    switch (p->format) {
    case PS_INPUT_CRITEO:
        return parse_criteo(p, line, len, ex, err, errlen);
    case PS_INPUT_CSV:
        return parse_csv(p, line, len, ex, err, errlen);
    case PS_INPUT_LIBSVM:
        return parse_libsvm(p, line, len, ex, err, errlen);
    case PS_INPUT_SLOTS:
        return parse_slots(p, line, len, ex, err, errlen);
    case PS_INPUT_FORMAT_COUNT:
        break;
    }
    return fail(err, errlen, "unknown format");
}
