/* Fuzz findings stay fixed: every input in tests/fuzz/corpus (the seeds and
 * each reproducer a fuzzer found, named crash-* / leak-* after the finding)
 * is replayed here through the very harness code the fuzzer ran
 * (tests/fuzz/fuzz_*.c, compiled with -DCTRPS_FUZZ_REPLAY), in the normal
 * and the sanitizer builds, with gcc. A harness invariant that fails traps,
 * which fails the test; so does any sanitizer report.
 *
 * Built and registered by tests/fuzz/meson.build, not by the
 * integration_tests list: it links the server and worker libraries, which
 * that list's tests (loopback clients of the daemons) do not.
 *
 * The per-finding tests below state the behaviour each fix restored, so a
 * regression names itself instead of showing up as a bare trap. */

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fuzz.h"
#include "optim.h"
#include "parse.h"

#ifndef CTRPS_FUZZ_CORPUS
#error "CTRPS_FUZZ_CORPUS (the tests/fuzz/corpus directory) must be defined"
#endif

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *read_all(const char *path, size_t *ret_len) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            buf = realloc(buf, cap *= 2);
            cr_assert_not_null(buf);
        }
    }
    cr_assert(!ferror(f), "%s: read error", path);
    fclose(f);
    *ret_len = len;
    return buf;
}

/* Replay every file of corpus/<target>, in name order; returns how many. */
static size_t replay(const char *target, int (*one)(const uint8_t *, size_t)) {
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/%s", CTRPS_FUZZ_CORPUS, target);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "%s: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        names = realloc(names, (n + 1) * sizeof(*names));
        cr_assert_not_null(names);
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(*names), by_name);
    for (size_t i = 0; i < n; i++) {
        char path[2048];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        size_t len;
        char *data = read_all(path, &len);
        /* On a trap, this line in the test's output names the input. */
        fprintf(stderr, "replaying %s\n", path);
        one((const uint8_t *)data, len);
        free(data);
        free(names[i]);
    }
    free(names);
    return n;
}

/* ---- every corpus input -------------------------------------------------- */

static void request_init(void) { fuzz_request_init(NULL, NULL); }
static void criteo_init(void) { fuzz_parse_criteo_init(NULL, NULL); }
static void libsvm_init(void) { fuzz_parse_libsvm_init(NULL, NULL); }

Test(fuzz_corpus, request, .init = request_init, .fini = fuzz_request_fini, .timeout = 300) {
    cr_assert_gt(replay("request", fuzz_request_one), 0);
}

Test(fuzz_corpus, parse_criteo, .init = criteo_init, .fini = fuzz_parse_criteo_fini,
     .timeout = 120) {
    cr_assert_gt(replay("parse_criteo", fuzz_parse_criteo_one), 0);
}

Test(fuzz_corpus, parse_csv, .timeout = 120) {
    cr_assert_gt(replay("parse_csv", fuzz_parse_csv_one), 0);
}

Test(fuzz_corpus, parse_libsvm, .init = libsvm_init, .fini = fuzz_parse_libsvm_fini,
     .timeout = 120) {
    cr_assert_gt(replay("parse_libsvm", fuzz_parse_libsvm_one), 0);
}

Test(fuzz_corpus, parse_slots, .timeout = 120) {
    cr_assert_gt(replay("parse_slots", fuzz_parse_slots_one), 0);
}

/* ---- findings ------------------------------------------------------------- */

/* Line `index` (0-based, without its "\n") of a corpus file, malloc'ed. */
static char *corpus_line(const char *target, const char *name, size_t index, size_t *ret_len) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s/%s", CTRPS_FUZZ_CORPUS, target, name);
    size_t len;
    char *data = read_all(path, &len);
    const char *pos = data, *end = data + len, *line = NULL;
    size_t n = 0;
    for (size_t i = 0; i <= index; i++)
        cr_assert(fuzz_next_line(&pos, end, &line, &n), "%s has no line %zu", path, index);
    char *copy = malloc(n + 1);
    cr_assert_not_null(copy);
    memcpy(copy, line, n);
    copy[n] = '\0';
    free(data);
    *ret_len = n;
    return copy;
}

static ps_parser *parser_of(const char *format) {
    ps_input_config c;
    char err[256] = "";
    ps_parser *p = NULL;
    cr_assert_eq(ps_input_config_init(&c), 0);
    cr_assert_eq(ps_input_config_set(&c, "format", format, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_parser_new(&c, &p, err, sizeof(err)), 0, "%s", err);
    ps_input_config_deinit(&c);
    return p;
}

static void assert_printable(const char *s) {
    for (const char *c = s; *c; c++)
        cr_assert((unsigned char)*c >= 0x20 && (unsigned char)*c < 0x7f,
                  "byte 0x%02x at %zu of reason '%s'", (unsigned char)*c, (size_t)(c - s), s);
}

/* crash-slot-collision-reason-escape (parse_slots, parse_csv): two slot
 * names with the same 16-bit id, the first one holding an ANSI escape
 * sequence. The reason quoted the new name but printed the earlier one raw
 * (worker/parse.c slot_get), so one line of input could put terminal escapes
 * into the worker's log; parse.h promises every non-printable byte as '?'. */
Test(fuzz_regressions, slot_collision_reason_is_printable) {
    size_t len;
    char err[512] = "";
    ps_example ex;
    ps_example_init(&ex);

    ps_parser *p = parser_of("slots");
    char *line = corpus_line("parse_slots", "crash-slot-collision-reason-escape", 0, &len);
    cr_assert_eq(ps_parser_parse(p, line, len, &ex, err, sizeof(err)), PS_EPARSE);
    cr_assert_not_null(strstr(err, "has the same id"), "reason: %s", err);
    cr_assert_not_null(strstr(err, "'?[31mred'"), "reason: %s", err);
    assert_printable(err);
    free(line);
    ps_parser_free(p);

    p = parser_of("csv");
    line = corpus_line("parse_csv", "crash-slot-collision-reason-escape", 0, &len);
    err[0] = '\0';
    cr_assert_eq(ps_parser_header(p, line, len, err, sizeof(err)), PS_EPARSE);
    cr_assert_not_null(strstr(err, "has the same id"), "reason: %s", err);
    assert_printable(err);
    free(line);
    ps_parser_free(p);
    ps_example_deinit(&ex);
}

/* fuzz_request found that a Push decoded in place (common/wire.h) without
 * a table field had the shard copy its name from a NULL pointer: UB, if a
 * harmless one (corpus/request/crash-in-place-no-table, replayed by
 * fuzz_corpus/request; test_wire states the decoder's side). It is now
 * refused as protobuf-c's decoding was: unknown table ''. */

/* A move's IMPORT naming client id 0 in its sequence numbers (the id of an
 * empty entry in the shard's table of clients) had the shard write through
 * that entry's NULL array: SIGSEGV (found by test_hostile's
 * import_sequence_numbers_that_do_not_fit, not by a fuzzer; the seed
 * corpus/request/move-import-seqs, replayed by fuzz_corpus/request, puts
 * ClientSeqs in the fuzzer's reach). It is refused now: BAD_REQUEST. */

/* fuzz_request found that finite gradients near FLT_MAX overflowed FTRL's z
 * and n, and w became Inf/Inf = NaN, which Pull then served to every worker
 * (corpus/request/finding-ftrl-nan-weights). Such an update is now refused
 * like a non-finite gradient: the row stays bit-identical and finite. */
Test(fuzz_regressions, ftrl_weights_stay_finite) {
    ps_optim_params p = {.kind = PS_OPT_FTRL, .alpha = 0.05, .beta = 1.0, .accum_max = INFINITY};
    float w0[4] = {0.01f, -0.02f, 0.005f, 0.03f}, state[12], before[12];
    const float g[4] = {3e38f, -3e38f, 3e38f, -3e38f};
    ps_optim_init_row(&p, 4, w0, state);
    for (int push = 0; push < 2; push++) {
        memcpy(before, state, sizeof(state));
        int r = ps_optim_apply(&p, 4, state, g);
        for (int i = 0; i < 12; i++)
            cr_assert(isfinite(state[i]), "push %d: state[%d] = %g", push + 1, i, state[i]);
        if (r != 0) {
            cr_assert_eq(r, PS_ENONFINITE);
            cr_assert_eq(memcmp(before, state, sizeof(state)), 0, "a refused update changed the row");
        }
    }
    /* AdaGrad's accumulator overflows the same way. */
    ps_optim_params a = {.kind = PS_OPT_ADAGRAD, .lr = 0.05, .initial_accumulator_value = 0.1,
                         .eps = 1e-8, .accum_max = INFINITY};
    ps_optim_init_row(&a, 4, w0, state);
    int r = ps_optim_apply(&a, 4, state, g);
    cr_assert_eq(r, PS_ENONFINITE);
    for (int i = 0; i < 8; i++)
        cr_assert(isfinite(state[i]));
}
