/* Tests for the config-key tables (common/config_key.h) on a section made
 * up here, one key per type: what each type accepts, the reasons it gives,
 * and that a rejected value leaves the struct as it was. The real sections
 * are tested through the loader (test_config.c, worker/test_parse.c,
 * worker/test_wconfig.c). */

#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_key.h"
#include "error.h"

typedef enum { RED, GREEN, BLUE } colour;
static const char *const colour_names[] = {[RED] = "red", [GREEN] = "green", [BLUE] = "blue"};

typedef struct section {
    bool on;
    uint32_t u32;
    uint64_t u64;
    size_t sz;
    double d;
    char s[8];
    colour c;
    char **list;                 /* appends */
    uint32_t nlist;
    char **strict;               /* replaces; empty items reach the check */
    size_t nstrict;
    char names[3][4];
    uint32_t nnames;
    uint32_t vals[3];
    uint32_t nvals;
    int custom;
} section;

static int check_no_x(const ps_config_key *k, const char *s, size_t len, char *err, size_t errlen) {
    if (len == 0 || memchr(s, 'x', len)) {
        snprintf(err, errlen, "%s item '%.*s' is empty or has an x", k->name, (int)len, s);
        return PS_ECONFIG;
    }
    return 0;
}

static int parse_twice(const ps_config_key *k, void *obj, const char *value, char *err,
                       size_t errlen) {
    int v = atoi(value);
    if (v < 0) {
        snprintf(err, errlen, "negative");
        return PS_ECONFIG;
    }
    *(int *)((char *)obj + k->offset) = 2 * v;
    return 0;
}

#define S section
static const ps_config_key keys[] = {
    PS_KEY_BOOL("on", S, on),
    PS_KEY_U32("u32", S, u32, 1, 10),
    PS_KEY_U64("u64", S, u64, 0, UINT64_MAX),
    PS_KEY_SIZE("sz", S, sz, 2, 3),
    PS_KEY_DOUBLE("d", S, d, -1, 1.5),
    PS_KEY_STRING("s", S, s, .scope = 4),
    PS_KEY_ENUM("c", S, c, colour_names),
    PS_KEY_STRINGS("list", S, list, nlist, .flags = PS_KEY_APPEND),
    PS_KEY_STRINGS("strict", S, strict, nstrict, .flags = PS_KEY_EMPTY_ITEMS,
                   .check = check_no_x),
    PS_KEY_NAMES("names", S, names, nnames),
    PS_KEY_U32S("vals", S, vals, nvals, 5, 9),
    PS_KEY_CUSTOM("custom", S, custom, parse_twice),
};
#undef S
#define N (sizeof(keys) / sizeof(keys[0]))

static char err[256];

static int set(section *s, const char *k, const char *v) {
    err[0] = '\0';
    return ps_config_key_set(keys, N, s, k, v, NULL, err, sizeof(err));
}

/* value must be rejected with reason_part, leaving s bit for bit as it was. */
static void expect_rejected(section *s, const char *k, const char *v, const char *reason_part) {
    section before;
    memcpy(&before, s, sizeof(before));
    cr_expect_eq(set(s, k, v), PS_ECONFIG, "%s = %s accepted", k, v);
    cr_expect(strstr(err, reason_part) != NULL, "%s = %s: reason '%s' lacks '%s'", k, v, err,
              reason_part);
    cr_expect(!memcmp(&before, s, sizeof(before)), "%s = %s changed the struct", k, v);
}

Test(config_key, scalars) {
    section s = {0};
    cr_assert_eq(set(&s, "on", "yes"), 0);
    cr_expect(s.on);
    cr_assert_eq(set(&s, "u32", "10"), 0);
    cr_expect_eq(s.u32, 10);
    cr_assert_eq(set(&s, "u64", "18446744073709551615"), 0);
    cr_expect_eq(s.u64, UINT64_MAX);
    cr_assert_eq(set(&s, "sz", "3"), 0);
    cr_expect_eq(s.sz, 3);
    cr_assert_eq(set(&s, "d", "-0.5"), 0);
    cr_expect_eq(s.d, -0.5);
    cr_assert_eq(set(&s, "s", "1234567"), 0);
    cr_expect_str_eq(s.s, "1234567");
    cr_assert_eq(set(&s, "c", "blue"), 0);
    cr_expect_eq(s.c, BLUE);
    cr_assert_eq(set(&s, "custom", "21"), 0);
    cr_expect_eq(s.custom, 42);

    expect_rejected(&s, "on", "maybe", "expected true or false, got 'maybe'");
    expect_rejected(&s, "u32", "0", "expected an integer in [1, 10], got '0'");
    expect_rejected(&s, "u32", "11", "got '11'");
    expect_rejected(&s, "u32", "1.0", "got '1.0'");
    expect_rejected(&s, "u32", "", "got ''");
    expect_rejected(&s, "u64", "18446744073709551616", "[0, 18446744073709551615]");
    expect_rejected(&s, "sz", "4", "[2, 3]");
    expect_rejected(&s, "d", "1.6", "expected a number in [-1, 1.5], got '1.6'");
    expect_rejected(&s, "d", "nan", "got 'nan'");
    expect_rejected(&s, "s", "12345678", "longer than 7 characters");
    expect_rejected(&s, "c", "Red", "expected red, green or blue, got 'Red'");
    expect_rejected(&s, "custom", "-1", "negative");
    expect_rejected(&s, "nope", "1", "unknown key");
}

Test(config_key, owned_lists_append_or_replace) {
    section s = {0};
    cr_assert_eq(set(&s, "list", "a, b,,c "), 0);
    cr_assert_eq(set(&s, "list", ""), 0);
    cr_assert_eq(set(&s, "list", "d"), 0);
    cr_assert_eq(s.nlist, 4, "a repeated key appends; empty items are skipped");
    cr_expect_str_eq(s.list[0], "a");
    cr_expect_str_eq(s.list[2], "c");
    cr_expect_str_eq(s.list[3], "d");

    cr_assert_eq(set(&s, "strict", "p, q"), 0);
    cr_assert_eq(set(&s, "strict", "r"), 0);
    cr_assert_eq(s.nstrict, 1, "without PS_KEY_APPEND a repeated key replaces");
    cr_expect_str_eq(s.strict[0], "r");
    expect_rejected(&s, "strict", "s,,t", "item '' is empty");
    expect_rejected(&s, "strict", "s, x", "item 'x'");
    cr_assert_eq(set(&s, "strict", ""), 0);
    cr_expect_eq(s.nstrict, 0);
    cr_expect_null(s.strict);

    ps_config_keys_free(keys, N, &s);
    cr_expect_null(s.list);
    cr_expect_eq(s.nlist, 0);
    ps_config_keys_free(keys, N, &s); /* twice is fine; ASan checks both */
}

Test(config_key, fixed_arrays_are_all_or_nothing) {
    section s = {0};
    cr_assert_eq(set(&s, "names", "ab, c"), 0);
    cr_assert_eq(s.nnames, 2);
    cr_expect_str_eq(s.names[1], "c");
    expect_rejected(&s, "names", "a, b, c, d", "at most 3 names of at most 3 characters");
    expect_rejected(&s, "names", "z, abcd", "at most 3 names");
    cr_assert_eq(set(&s, "names", ""), 0);
    cr_expect_eq(s.nnames, 0);

    cr_assert_eq(set(&s, "vals", "5, 9,,7"), 0);
    cr_assert_eq(s.nvals, 3);
    cr_expect_eq(s.vals[2], 7);
    expect_rejected(&s, "vals", "6, 4", "expected an integer in [5, 9], got '4'");
    expect_rejected(&s, "vals", "6, 6, 6, 6", "at most 3 values");
}

Test(config_key, find_and_scope) {
    const ps_config_key *k = ps_config_key_find(keys, N, "s");
    cr_assert_not_null(k);
    cr_expect_eq(k->scope, 4);
    cr_expect_eq(k->size, 8);
    cr_expect_null(ps_config_key_find(keys, N, "S"));
    section s = {0};
    const ps_config_key *got = NULL;
    cr_assert_eq(ps_config_key_set(keys, N, &s, "c", "green", &got, err, sizeof(err)), 0);
    cr_expect_eq(got, &keys[6]);
}
