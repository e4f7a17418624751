#include "text.h"

#include <stdio.h>
#include <string.h>

#include "error.h"

const char *ps_enum_name(const char *const names[], size_t n, int value) {
    return value >= 0 && (size_t)value < n ? names[value] : "?";
}

int ps_enum_parse(const char *const names[], size_t n, const char *s, int *ret_value) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(s, names[i])) {
            *ret_value = (int)i;
            return 0;
        }
    return PS_ECONFIG;
}

void ps_enum_expected(const char *const names[], size_t n, char *buf, size_t buflen) {
    size_t used = 0;
    if (buflen)
        buf[0] = '\0';
    for (size_t i = 0; i < n && used < buflen; i++) {
        const char *sep = i == 0 ? "" : i + 1 == n ? " or " : ", ";
        int w = snprintf(buf + used, buflen - used, "%s%s", sep, names[i]);
        if (w < 0)
            return;
        used += (size_t)w;
    }
}

static bool is_blank(char c) { return c == ' ' || c == '\t'; }

bool ps_list_next(const char **cursor, const char **ret_item, size_t *ret_len) {
    const char *p = *cursor;
    while (is_blank(*p))
        p++;
    if (!*p) {
        *cursor = p;
        return false;
    }
    const char *start = p;
    while (*p && *p != ',')
        p++;
    const char *end = p;
    while (end > start && is_blank(end[-1]))
        end--;
    *ret_item = start;
    *ret_len = (size_t)(end - start);
    *cursor = *p == ',' ? p + 1 : p;
    return true;
}

void ps_json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}
