/* Tests for the enum-name and comma-list helpers (common/text.h) and the
 * log-level parser built on them (common/log.h). */

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "text.h"

static const char *const colours[] = {"red", "green", "blue"};

Test(enum, name_and_parse_round_trip) {
    for (int i = 0; i < 3; i++) {
        int v = -1;
        cr_assert_eq(ps_enum_parse(colours, 3, ps_enum_name(colours, 3, i), &v), 0);
        cr_assert_eq(v, i);
    }
    cr_assert_str_eq(ps_enum_name(colours, 3, 3), "?");
    cr_assert_str_eq(ps_enum_name(colours, 3, -1), "?");
}

Test(enum, unknown_names_leave_the_output_alone) {
    const char *bad[] = {"", "Red", "red ", "gree", "greens"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        int v = 7;
        cr_assert_eq(ps_enum_parse(colours, 3, bad[i], &v), PS_ECONFIG, "'%s'", bad[i]);
        cr_assert_eq(v, 7, "'%s' wrote the output", bad[i]);
    }
}

Test(enum, expected_lists_the_names) {
    char buf[64];
    ps_enum_expected(colours, 3, buf, sizeof(buf));
    cr_assert_str_eq(buf, "red, green or blue");
    ps_enum_expected(colours, 2, buf, sizeof(buf));
    cr_assert_str_eq(buf, "red or green");
    ps_enum_expected(colours, 1, buf, sizeof(buf));
    cr_assert_str_eq(buf, "red");
    ps_enum_expected(colours, 3, buf, 8);
    cr_assert_str_eq(buf, "red, gr", "truncated, still terminated");
}

/* Items of value joined as "[a][b]..." (empty items as "[]"). */
static void items(const char *value, char *out, size_t outlen) {
    const char *item;
    size_t len, used = 0;
    out[0] = '\0';
    while (ps_list_next(&value, &item, &len))
        used += (size_t)snprintf(out + used, outlen - used, "[%.*s]", (int)len, item);
}

Test(list, splits_and_trims) {
    static const char *const cases[][2] = {
        {"a", "[a]"},
        {"a,b,c", "[a][b][c]"},
        {" a , b\t,\tc ", "[a][b][c]"},
        {"host:1, host:2", "[host:1][host:2]"},
        {"two words, x", "[two words][x]"},
        {"", ""},
        {"  \t ", ""},
        {"a,,b", "[a][][b]"},
        {",a", "[][a]"},
        {",", "[]"},
        {"a,", "[a]"},
        {"a, ", "[a]"},
        {"a, ,b", "[a][][b]"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        char out[128];
        items(cases[i][0], out, sizeof(out));
        cr_expect_str_eq(out, cases[i][1], "'%s'", cases[i][0]);
    }
}

Test(log, level_names) {
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        ps_log_level l = PS_LOG_ERROR;
        cr_assert_eq(ps_log_level_parse(names[i], &l), 0);
        cr_assert_eq((int)l, i);
        cr_assert_str_eq(ps_log_level_name(l), names[i]);
    }
    ps_log_level l = PS_LOG_WARN;
    cr_assert_eq(ps_log_level_parse("verbose", &l), PS_ECONFIG);
    cr_assert_eq(ps_log_level_parse("INFO", &l), PS_ECONFIG);
    cr_assert_eq(l, PS_LOG_WARN);
}
