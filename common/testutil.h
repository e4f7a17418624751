#pragma once
/* Helpers for the Criterion tests (not linked into the daemons).
 *
 * The test runner (meson test) sets CTRPS_VECTORS to tests/vectors and
 * CTRPS_SHARED_DATA to the directory of real click logs, which exists in CI
 * and may be absent on a fresh clone. A test program that needs the real data
 * defines its main with PS_TEST_MAIN_REQUIRES_DATA(): it exits 77, which meson
 * reports as SKIP, when the data is missing. */

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static inline const char *ps_test_env(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

static inline const char *ps_test_vectors_dir(void) { return ps_test_env("CTRPS_VECTORS", "tests/vectors"); }
static inline const char *ps_test_data_dir(void) { return ps_test_env("CTRPS_SHARED_DATA", "../shared/data"); }

static inline int ps_test_data_present(void) {
    struct stat st;
    return stat(ps_test_data_dir(), &st) == 0 && S_ISDIR(st.st_mode);
}

#define PS_TEST_MAIN_REQUIRES_DATA()                                                   \
    int main(int argc, char *argv[]) {                                                 \
        if (!ps_test_data_present()) {                                                 \
            fprintf(stderr, "skip: %s not found\n", ps_test_data_dir());               \
            return 77;                                                                 \
        }                                                                              \
        struct criterion_test_set *tests = criterion_initialize();                     \
        int result = 0;                                                                \
        if (criterion_handle_args(argc, argv, true))                                   \
            result = !criterion_run_all_tests(tests);                                  \
        criterion_finalize(tests);                                                     \
        return result;                                                                 \
    }
