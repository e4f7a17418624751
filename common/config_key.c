#include "config_key.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "text.h"

static void *field(const ps_config_key *k, void *obj) { return (char *)obj + k->offset; }

static size_t get_count(const ps_config_key *k, const void *obj) {
    const char *p = (const char *)obj + k->count_offset;
    return k->count_size == sizeof(uint32_t) ? *(const uint32_t *)p : *(const uint64_t *)p;
}

static void set_count(const ps_config_key *k, void *obj, size_t n) {
    char *p = (char *)obj + k->count_offset;
    if (k->count_size == sizeof(uint32_t))
        *(uint32_t *)p = (uint32_t)n;
    else
        *(uint64_t *)p = n;
}

static int fail_range(const ps_config_key *k, const char *s, size_t len, char *err, size_t errlen) {
    snprintf(err, errlen, "expected an integer in [%" PRIu64 ", %" PRIu64 "], got '%.*s'", k->umin,
             k->umax, (int)len, s);
    return PS_ECONFIG;
}

/* s[0..len) as an integer in k's range. */
static int parse_uint(const ps_config_key *k, const char *s, size_t len, uint64_t *ret, char *err,
                      size_t errlen) {
    char buf[32];
    uint64_t v;
    if (len >= sizeof(buf))
        return fail_range(k, s, len, err, errlen);
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (ps_parse_u64(buf, &v) < 0 || v < k->umin || v > k->umax)
        return fail_range(k, s, len, err, errlen);
    *ret = v;
    return 0;
}

static int parse_bool(const char *value, bool *ret, char *err, size_t errlen) {
    if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes"))
        *ret = true;
    else if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no"))
        *ret = false;
    else {
        snprintf(err, errlen, "expected true or false, got '%s'", value);
        return PS_ECONFIG;
    }
    return 0;
}

static int parse_enum(const ps_config_key *k, const char *value, int *ret, char *err,
                      size_t errlen) {
    if (ps_enum_parse(k->names, k->nnames, value, ret) == 0)
        return 0;
    char expected[192];
    ps_enum_expected(k->names, k->nnames, expected, sizeof(expected));
    snprintf(err, errlen, "expected %s, got '%s'", expected, value);
    return PS_ECONFIG;
}

/* A list's items, skipping empty ones unless the key wants them: the
 * iteration every list type shares. */
static bool next_item(const ps_config_key *k, const char **cursor, const char **ret_item,
                      size_t *ret_len) {
    while (ps_list_next(cursor, ret_item, ret_len))
        if (*ret_len > 0 || (k->flags & PS_KEY_EMPTY_ITEMS))
            return true;
    return false;
}

static void free_strings(char **list, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

/* Owned strings: the new items are collected (and checked) apart, then
 * appended or swapped in, so a rejected value changes nothing. */
static int parse_strings(const ps_config_key *k, void *obj, const char *value, char *err,
                         size_t errlen) {
    char **items = NULL;
    size_t n = 0, len;
    const char *item;
    int r = 0;
    while (next_item(k, &value, &item, &len)) {
        if (k->check && (r = k->check(k, item, len, err, errlen)) < 0)
            goto fail;
        char **grown = realloc(items, (n + 1) * sizeof(*items));
        if (!grown)
            goto nomem;
        items = grown;
        if (!(items[n] = strndup(item, len)))
            goto nomem;
        n++;
    }
    char ***list = field(k, obj);
    size_t old = get_count(k, obj);
    if (!(k->flags & PS_KEY_APPEND)) {
        free_strings(*list, old);
        *list = items;
        set_count(k, obj, n);
        return 0;
    }
    if (n == 0) {
        free(items);
        return 0;
    }
    char **joined = realloc(*list, (old + n) * sizeof(*joined));
    if (!joined)
        goto nomem;
    memcpy(joined + old, items, n * sizeof(*items));
    free(items);
    *list = joined;
    set_count(k, obj, old + n);
    return 0;
nomem:
    snprintf(err, errlen, "out of memory");
    r = -ENOMEM;
fail:
    free_strings(items, n);
    return r;
}

/* Fixed arrays (NAMES, U32S): called once with store = false to check every
 * item, then with store = true to store them, so a rejected value changes
 * nothing. */
static int parse_array(const ps_config_key *k, void *obj, const char *value, bool store,
                       char *err, size_t errlen) {
    const char *cursor = value, *item;
    size_t n = 0, len;
    int r;
    while (next_item(k, &cursor, &item, &len)) {
        if (n == k->cap || (k->type == PS_KT_NAMES && len >= k->size)) {
            if (k->type == PS_KT_NAMES)
                snprintf(err, errlen, "at most %zu names of at most %zu characters", k->cap,
                         k->size - 1);
            else
                snprintf(err, errlen, "at most %zu values", k->cap);
            return PS_ECONFIG;
        }
        if (k->type == PS_KT_NAMES) {
            if (k->check && (r = k->check(k, item, len, err, errlen)) < 0)
                return r;
            if (store) {
                char *dst = (char *)field(k, obj) + n * k->size;
                memcpy(dst, item, len);
                dst[len] = '\0';
            }
        } else {
            uint64_t v;
            if ((r = parse_uint(k, item, len, &v, err, errlen)) < 0)
                return r;
            if (store)
                ((uint32_t *)field(k, obj))[n] = (uint32_t)v;
        }
        n++;
    }
    if (store)
        set_count(k, obj, n);
    return 0;
}

const ps_config_key *ps_config_key_find(const ps_config_key *keys, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(keys[i].name, name))
            return &keys[i];
    return NULL;
}

int ps_config_key_parse(const ps_config_key *k, void *obj, const char *value, char *err,
                        size_t errlen) {
    void *f = field(k, obj);
    uint64_t u;
    int r;
    switch (k->type) {
    case PS_KT_BOOL:
        return parse_bool(value, f, err, errlen);
    case PS_KT_U32:
    case PS_KT_U64:
    case PS_KT_SIZE:
        if ((r = parse_uint(k, value, strlen(value), &u, err, errlen)) < 0)
            return r;
        if (k->type == PS_KT_U32)
            *(uint32_t *)f = (uint32_t)u;
        else if (k->type == PS_KT_U64)
            *(uint64_t *)f = u;
        else
            *(size_t *)f = (size_t)u;
        return 0;
    case PS_KT_DOUBLE: {
        double v;
        if (ps_parse_double(value, &v) < 0 || v < k->dmin || v > k->dmax) {
            snprintf(err, errlen, "expected a number in [%g, %g], got '%s'", k->dmin, k->dmax,
                     value);
            return PS_ECONFIG;
        }
        *(double *)f = v;
        return 0;
    }
    case PS_KT_STRING: {
        size_t len = strlen(value);
        if (k->check && (r = k->check(k, value, len, err, errlen)) < 0)
            return r;
        if (len >= k->size) {
            snprintf(err, errlen, "value longer than %zu characters", k->size - 1);
            return PS_ECONFIG;
        }
        memcpy(f, value, len + 1);
        return 0;
    }
    case PS_KT_ENUM:
        return parse_enum(k, value, f, err, errlen);
    case PS_KT_STRINGS:
        return parse_strings(k, obj, value, err, errlen);
    case PS_KT_NAMES:
    case PS_KT_U32S:
        if ((r = parse_array(k, obj, value, false, err, errlen)) < 0)
            return r;
        return parse_array(k, obj, value, true, err, errlen);
    case PS_KT_CUSTOM:
        return k->parse(k, obj, value, err, errlen);
    }
    snprintf(err, errlen, "key of unknown type %d", (int)k->type);
    return PS_ECONFIG;
}

int ps_config_key_set(const ps_config_key *keys, size_t n, void *obj, const char *name,
                      const char *value, const ps_config_key **ret_key, char *err, size_t errlen) {
    const ps_config_key *k = ps_config_key_find(keys, n, name);
    if (!k) {
        snprintf(err, errlen, "unknown key");
        return PS_ECONFIG;
    }
    int r = ps_config_key_parse(k, obj, value, err, errlen);
    if (r < 0)
        return r;
    if (ret_key)
        *ret_key = k;
    return 0;
}

/* Append printf output at *pos; false once it no longer fits. */
static bool put(char *out, size_t outlen, size_t *pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool put(char *out, size_t outlen, size_t *pos, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = *pos < outlen ? vsnprintf(out + *pos, outlen - *pos, fmt, ap) : -1;
    va_end(ap);
    if (n < 0 || (size_t)n >= outlen - *pos)
        return false;
    *pos += (size_t)n;
    return true;
}

int ps_config_key_format(const ps_config_key *k, const void *obj, char *out, size_t outlen) {
    const void *f = (const char *)obj + k->offset;
    size_t pos = 0, n;
    bool ok = true;
    switch (k->type) {
    case PS_KT_BOOL:
        ok = put(out, outlen, &pos, "%s", *(const bool *)f ? "true" : "false");
        break;
    case PS_KT_U32:
        ok = put(out, outlen, &pos, "%" PRIu32, *(const uint32_t *)f);
        break;
    case PS_KT_U64:
        ok = put(out, outlen, &pos, "%" PRIu64, *(const uint64_t *)f);
        break;
    case PS_KT_SIZE:
        ok = put(out, outlen, &pos, "%zu", *(const size_t *)f);
        break;
    case PS_KT_DOUBLE: {
        double v = *(const double *)f;
        char buf[40];
        if (!isfinite(v))
            return -ERANGE;
        snprintf(buf, sizeof(buf), "%.15g", v);
        if (strtod(buf, NULL) != v)
            snprintf(buf, sizeof(buf), "%.17g", v);
        ok = put(out, outlen, &pos, "%s", buf);
        break;
    }
    case PS_KT_STRING:
        ok = put(out, outlen, &pos, "%s", (const char *)f);
        break;
    case PS_KT_ENUM:
        ok = put(out, outlen, &pos, "%s", ps_enum_name(k->names, k->nnames, *(const int *)f));
        break;
    case PS_KT_STRINGS:
    case PS_KT_NAMES:
    case PS_KT_U32S:
        n = get_count(k, obj);
        for (size_t i = 0; i < n && ok; i++) {
            const char *sep = i ? ", " : "";
            if (k->type == PS_KT_STRINGS)
                ok = put(out, outlen, &pos, "%s%s", sep, (*(char **const *)f)[i]);
            else if (k->type == PS_KT_NAMES)
                ok = put(out, outlen, &pos, "%s%s", sep, (const char *)f + i * k->size);
            else
                ok = put(out, outlen, &pos, "%s%" PRIu32, sep, ((const uint32_t *)f)[i]);
        }
        if (ok && n == 0)
            ok = put(out, outlen, &pos, "%s", "");
        break;
    case PS_KT_CUSTOM:
        return PS_ECONFIG;
    }
    return ok ? 0 : -ENOSPC;
}

void ps_config_keys_free(const ps_config_key *keys, size_t n, void *obj) {
    for (size_t i = 0; i < n; i++) {
        const ps_config_key *k = &keys[i];
        if (k->type != PS_KT_STRINGS)
            continue;
        char ***list = field(k, obj);
        free_strings(*list, get_count(k, obj));
        *list = NULL;
        set_count(k, obj, 0);
    }
}
