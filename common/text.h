#pragma once
/* Small text helpers shared by the config loader, the worker's model code
 * and the command lines: the name table of an enum and comma-separated
 * lists. (The strict number and host:port parsers are in config.h.)
 *
 * Enums with names follow one pattern: an X-macro list
 *   #define PS_THING_MAP(XX) XX(ONE, "one") XX(TWO, "two")
 * generates the enum (header) and its name table (the module's .c):
 *   const char *const ps_thing_names[PS_THING_COUNT] = {PS_THING_MAP(PS_ENUM_STR)};
 * and PS_ENUM_FUNCTIONS(ps_thing, ps_thing, PS_THING_COUNT) defines
 * ps_thing_name() and ps_thing_parse() over it. */

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* The name column of an XX(NAME, "name") X-macro, as array elements. */
#define PS_ENUM_STR(name, str) str,
/* The number of entries of an X-macro: (0 MAP(PS_ENUM_ONE)), for enums
 * that keep no _COUNT member so switches over them stay exhaustive. */
#define PS_ENUM_ONE(name, str) +1

/* names[value] (static), or "?" for a value outside [0, n). */
const char *ps_enum_name(const char *const names[], size_t n, int value);
/* The index of s in names[0..n); PS_ECONFIG when s is none of them,
 * *ret_value then untouched. Exact, case-sensitive match. */
int ps_enum_parse(const char *const names[], size_t n, const char *s, int *ret_value);

/* Defines, over the array PREFIX##_names[N] (the module's, static or not):
 *   const char *PREFIX##_name(TYPE v);             see ps_enum_name()
 *   int PREFIX##_parse(const char *s, TYPE *ret);  see ps_enum_parse()
 * The header declares both, with their comments. */
#define PS_ENUM_FUNCTIONS(PREFIX, TYPE, N)                                                         \
    const char *PREFIX##_name(TYPE v) { return ps_enum_name(PREFIX##_names, (N), (int)v); }      \
    int PREFIX##_parse(const char *s, TYPE *ret) {                                                 \
        int v;                                                                                     \
        int r = ps_enum_parse(PREFIX##_names, (N), s, &v);                                         \
        if (r == 0)                                                                                \
            *ret = (TYPE)v;                                                                        \
        return r;                                                                                  \
    }

/* Write "a, b or c" (the names joined for an "expected ..." message) into
 * buf, truncated to buflen. */
void ps_enum_expected(const char *const names[], size_t n, char *buf, size_t buflen);

/* Walk a comma-separated list. *cursor starts at the value; each call stores
 * the next item (trimmed of spaces and tabs; not NUL-terminated, it points
 * into the value) in *ret_item and *ret_len, advances *cursor and returns
 * true, or returns false when the list is done. Items may be empty: "a,,b"
 * has three and "," one. A blank value has none, and a comma followed by
 * nothing but blanks ends the list ("a," and "a, " are just "a"). Whether
 * an empty item is an error or skipped is the caller's choice. */
bool ps_list_next(const char **cursor, const char **ret_item, size_t *ret_len);

/* Write s as a JSON string literal: quotes, backslashes and control
 * characters escaped, other bytes (UTF-8) as they are. */
void ps_json_string(FILE *f, const char *s);
