#pragma once
/* Shared by the libFuzzer targets in this folder and by their replay in a
 * normal build (tests/test_fuzz_regressions.c).
 *
 * Each target defines its entry points with FUZZ_ENTRY / FUZZ_INIT. In a
 * fuzz build (clang, -fsanitize=fuzzer) they are libFuzzer's
 * LLVMFuzzerTestOneInput / LLVMFuzzerInitialize; compiled with
 * -DCTRPS_FUZZ_REPLAY they become fuzz_<name>_one / fuzz_<name>_init, so one
 * test binary can link every target and replay reproducers through exactly
 * the code the fuzzer ran, under gcc and its sanitizers too.
 *
 * A violated invariant is __builtin_trap(): libFuzzer reports it as a crash
 * and saves the input; under Criterion the test dies with SIGILL. */

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef CTRPS_FUZZ_REPLAY
#define FUZZ_ENTRY(name) int fuzz_##name##_one(const uint8_t *data, size_t size)
#define FUZZ_INIT(name) int fuzz_##name##_init(int *argc, char ***argv)
#define FUZZ_FINI(name) void fuzz_##name##_fini(void)
#else
#define FUZZ_ENTRY(name) int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
#define FUZZ_INIT(name) int LLVMFuzzerInitialize(int *argc, char ***argv)
#define FUZZ_FINI(name) void fuzz_##name##_fini(void)
#endif

/* Every entry point, for -Wmissing-prototypes and for the replay test. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);
#define FUZZ_DECLARE(name)                                                     \
    int fuzz_##name##_one(const uint8_t *data, size_t size);                   \
    int fuzz_##name##_init(int *argc, char ***argv);                           \
    void fuzz_##name##_fini(void);
FUZZ_DECLARE(request)
FUZZ_DECLARE(parse_criteo)
FUZZ_DECLARE(parse_csv)
FUZZ_DECLARE(parse_libsvm)
FUZZ_DECLARE(parse_slots)
#undef FUZZ_DECLARE

#define FUZZ_CHECK(cond)                                                       \
    do {                                                                       \
        if (!(cond))                                                           \
            __builtin_trap();                                                  \
    } while (0)

/* Iterate over the '\n'-separated lines of [*pos, end): the next line
 * without its '\n' as [*ret_line, *ret_line + *ret_len). The part after the
 * last '\n' is a line too (a file need not end in a newline), so "a\nb"
 * gives "a" and "b", and "a\n" gives only "a". */
static inline int fuzz_next_line(const char **pos, const char *end, const char **ret_line,
                                 size_t *ret_len) {
    if (*pos >= end)
        return 0;
    const char *nl = memchr(*pos, '\n', (size_t)(end - *pos));
    const char *e = nl ? nl : end;
    *ret_line = *pos;
    *ret_len = (size_t)(e - *pos);
    *pos = nl ? nl + 1 : end;
    return 1;
}
