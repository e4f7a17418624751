/* Tests for the push log (server/pushlog.h): what makes an acknowledged push
 * survive kill -9 between two write-backs.
 *
 * What a user depends on: every committed record comes back on reopen, in
 * order, with its lsn and bytes, and only those after the covered lsn; a
 * crash mid-write (a torn tail) costs only the unacknowledged tail and the
 * log keeps working after it; damage anywhere else refuses to start rather
 * than silently dropping acknowledged pushes; truncation deletes exactly the
 * segments a write-back covered; and a push, once applied, can always be
 * logged (reserve, then append, never fails). */

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fsutil.h"
#include "error.h"
#include "pushlog.h"

/* ---- fixtures ------------------------------------------------------------------ */

static char dir[PS_PATH_MAX];

static void setup(void) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/ctrps-test-pushlog-XXXXXX", base && *base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static void teardown(void) { ps_rm_tree(dir); }

TestSuite(pushlog, .init = setup, .fini = teardown);

/* What replay delivered. */
typedef struct replayed {
    size_t n;
    uint64_t lsn[512];
    char *body[512];
    size_t len[512];
    int fail_at;                 /* return an error for this lsn (0 = never) */
} replayed;

static int on_replay(void *ctx, uint64_t lsn, const void *payload, size_t len) {
    replayed *r = ctx;
    if (r->fail_at && lsn == (uint64_t)r->fail_at)
        return PS_EPARSE;
    cr_assert_lt(r->n, 512);
    r->lsn[r->n] = lsn;
    r->body[r->n] = malloc(len + 1);
    memcpy(r->body[r->n], payload, len);
    r->len[r->n] = len;
    r->n++;
    return 0;
}

static void replayed_free(replayed *r) {
    for (size_t i = 0; i < r->n; i++)
        free(r->body[i]);
    memset(r, 0, sizeof(*r));
}

/* The body of record `lsn` in these tests: a deterministic string whose
 * length varies (0 bytes for every 7th). */
static size_t body_of(uint64_t lsn, char *out, size_t cap) {
    if (lsn % 7 == 0)
        return 0;
    size_t n = (size_t)(lsn * 37 % 300) + 1;
    cr_assert_leq(n, cap);
    for (size_t i = 0; i < n; i++)
        out[i] = (char)('a' + (lsn + i) % 26);
    return n;
}

static ps_pushlog *open_log(uint64_t covered, replayed *r) {
    char err[512] = "";
    ps_pushlog *log = NULL;
    int rc = ps_pushlog_open(dir, PS_FSYNC_NO, covered, on_replay, r, &log, err, sizeof(err));
    cr_assert_eq(rc, 0, "open: %d %s", rc, err);
    cr_assert_not_null(log);
    return log;
}

/* Append records first..last, each split over two iovecs, checking lsns. */
static void append_range(ps_pushlog *log, uint64_t first, uint64_t last) {
    for (uint64_t lsn = first; lsn <= last; lsn++) {
        char body[512];
        size_t n = body_of(lsn, body, sizeof(body));
        struct iovec iov[2] = {{body, n / 2}, {body + n / 2, n - n / 2}};
        uint64_t got = 0;
        cr_assert_eq(ps_pushlog_append(log, iov, 2, &got), 0);
        cr_assert_eq(got, lsn);
        cr_assert_eq(ps_pushlog_last_lsn(log), lsn);
    }
}

/* Replay delivered exactly records first..last, in order, with their bytes. */
static void expect_replayed(const replayed *r, uint64_t first, uint64_t last) {
    cr_assert_eq(r->n, last >= first ? last - first + 1 : 0, "replayed %zu records, expected %" PRIu64 "..%" PRIu64,
                 r->n, first, last);
    for (size_t i = 0; i < r->n; i++) {
        uint64_t lsn = first + i;
        cr_assert_eq(r->lsn[i], lsn, "record %zu has lsn %" PRIu64, i, r->lsn[i]);
        char body[512];
        size_t n = body_of(lsn, body, sizeof(body));
        cr_assert_eq(r->len[i], n, "lsn %" PRIu64 ": %zu bytes, appended %zu", lsn, r->len[i], n);
        cr_assert(!memcmp(r->body[i], body, n), "lsn %" PRIu64 ": bytes differ", lsn);
    }
}

/* Names of the segment files in dir ("<16 hex>.log", not the spares),
 * sorted; returns the count. */
static size_t list_segments(char names[][32], size_t cap) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || strncmp(e->d_name, "spare.", 6) == 0)
            continue;
        cr_assert_lt(n, cap);
        snprintf(names[n++], 32, "%.31s", e->d_name);
    }
    closedir(d);
    qsort(names, n, 32, (int (*)(const void *, const void *))strcmp);
    return n;
}

static void seg_path(uint64_t first, char *out, size_t cap) {
    snprintf(out, cap, "%s/%016" PRIx64 ".log", dir, first);
}

static off_t file_size(const char *path) {
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
    return st.st_size;
}

/* ---- replay ------------------------------------------------------------------------- */

Test(pushlog, reopen_replays_every_record_in_order) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    cr_assert_eq(r.n, 0, "a new log replays nothing");
    cr_assert_eq(ps_pushlog_last_lsn(log), 0);
    append_range(log, 1, 40);
    cr_assert_eq(ps_pushlog_commit(log), 0);
    append_range(log, 41, 100);
    cr_assert_eq(ps_pushlog_commit(log), 0);
    ps_pushlog_close(log);

    log = open_log(0, &r);
    expect_replayed(&r, 1, 100);
    cr_assert_eq(ps_pushlog_last_lsn(log), 100);
    /* Appends continue the sequence. */
    append_range(log, 101, 110);
    cr_assert_eq(ps_pushlog_commit(log), 0);
    ps_pushlog_close(log);
    replayed_free(&r);

    log = open_log(0, &r);
    expect_replayed(&r, 1, 110);
    ps_pushlog_close(log);
    replayed_free(&r);
}

Test(pushlog, bytes_counts_what_was_written) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 20);
    cr_assert_eq(ps_pushlog_bytes(log), 0, "nothing reaches the file before commit");
    cr_assert_eq(ps_pushlog_commit(log), 0);
    uint64_t want = 0;
    for (uint64_t lsn = 1; lsn <= 20; lsn++) {
        char body[512];
        want += 4 + 4 + 8 + body_of(lsn, body, sizeof(body));
    }
    cr_assert_eq(ps_pushlog_bytes(log), want);
    char path[PS_PATH_MAX + 32];
    seg_path(1, path, sizeof(path));
    cr_assert_eq((uint64_t)file_size(path), want);
    ps_pushlog_close(log);
}

Test(pushlog, records_up_to_the_covered_lsn_are_skipped) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 30);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    append_range(log, 31, 60);
    cr_assert_eq(ps_pushlog_commit(log), 0);
    ps_pushlog_close(log);

    const uint64_t covered[] = {0, 1, 29, 30, 31, 59, 60};
    for (size_t i = 0; i < sizeof(covered) / sizeof(covered[0]); i++) {
        log = open_log(covered[i], &r);
        expect_replayed(&r, covered[i] + 1, 60);
        cr_assert_eq(ps_pushlog_last_lsn(log), 60);
        ps_pushlog_close(log);
        replayed_free(&r);
    }
}

Test(pushlog, covered_beyond_the_log_continues_after_it) {
    /* The store may cover more than the log still holds (segments already
     * dropped): nothing replays and new records follow the covered lsn, so
     * they are not mistaken for covered ones on the next start. */
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 5);
    ps_pushlog_close(log);
    log = open_log(9, &r);
    cr_assert_eq(r.n, 0);
    cr_assert_eq(ps_pushlog_last_lsn(log), 9);
    uint64_t lsn;
    struct iovec iov = {"x", 1};
    cr_assert_eq(ps_pushlog_append(log, &iov, 1, &lsn), 0);
    cr_assert_eq(lsn, 10);
    ps_pushlog_close(log);
    log = open_log(9, &r);
    cr_assert_eq(r.n, 1);
    cr_assert_eq(r.lsn[0], 10);
    ps_pushlog_close(log);
    replayed_free(&r);
}

Test(pushlog, a_failing_replay_callback_fails_open) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 10);
    ps_pushlog_close(log);
    r.fail_at = 4;
    char err[512] = "";
    log = NULL;
    int rc = ps_pushlog_open(dir, PS_FSYNC_NO, 0, on_replay, &r, &log, err, sizeof(err));
    cr_assert_eq(rc, PS_EPARSE);
    cr_assert_null(log);
    cr_assert(strstr(err, "4"), "'%s' should name the lsn", err);
    replayed_free(&r);
}

/* ---- torn tails and corruption ------------------------------------------------------ */

/* Offset of the end of record `upto` (1-based) in segment 1, which holds
 * records 1..n from append_range. */
static off_t end_of_record(uint64_t upto) {
    off_t off = 0;
    for (uint64_t lsn = 1; lsn <= upto; lsn++) {
        char body[512];
        off += 16 + (off_t)body_of(lsn, body, sizeof(body));
    }
    return off;
}

Test(pushlog, torn_tail_is_cut_and_appends_continue) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 10);
    ps_pushlog_close(log);

    char path[PS_PATH_MAX + 32];
    seg_path(1, path, sizeof(path));
    cr_assert_eq(file_size(path), end_of_record(10));
    /* A crash in the middle of writing record 10: keep 5 of its bytes. */
    cr_assert_eq(truncate(path, end_of_record(9) + 5), 0);

    log = open_log(0, &r);
    expect_replayed(&r, 1, 9);
    cr_assert_eq(ps_pushlog_last_lsn(log), 9);
    cr_assert_eq(file_size(path), end_of_record(9), "the torn bytes are cut off");
    append_range(log, 10, 15);
    cr_assert_eq(ps_pushlog_commit(log), 0);
    ps_pushlog_close(log);
    replayed_free(&r);

    /* The repaired segment is no longer the last one: it must read clean. */
    log = open_log(0, &r);
    expect_replayed(&r, 1, 15);
    ps_pushlog_close(log);
    replayed_free(&r);
}

static void clear_dir(void) {
    char names[16][32];
    size_t n = list_segments(names, 16);
    for (size_t i = 0; i < n; i++) {
        char path[PS_PATH_MAX + 40];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        cr_assert_eq(unlink(path), 0);
    }
}

Test(pushlog, a_tear_anywhere_in_the_last_record_is_cut) {
    /* Inside the length, inside the CRC, inside the lsn, inside the body. */
    char path[PS_PATH_MAX + 32];
    seg_path(1, path, sizeof(path));
    for (off_t keep = end_of_record(2) + 1; keep < end_of_record(3); keep++) {
        clear_dir();
        replayed r = {0};
        ps_pushlog *log = open_log(0, &r);
        append_range(log, 1, 3);
        ps_pushlog_close(log);
        cr_assert_eq(truncate(path, keep), 0);
        log = open_log(0, &r);
        expect_replayed(&r, 1, 2);
        cr_assert_eq(ps_pushlog_last_lsn(log), 2, "torn at %jd", (intmax_t)keep);
        ps_pushlog_close(log);
        replayed_free(&r);
        cr_assert_eq(file_size(path), end_of_record(2));
    }
}

Test(pushlog, garbage_after_the_last_record_is_cut) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 10);
    ps_pushlog_close(log);
    char path[PS_PATH_MAX + 32];
    seg_path(1, path, sizeof(path));

    /* Bytes that are not a record: a header announcing 100 bytes, a bad
     * CRC over them, and some junk. */
    int fd = open(path, O_WRONLY | O_APPEND);
    cr_assert_geq(fd, 0);
    char junk[120];
    memset(junk, 0xab, sizeof(junk));
    uint32_t len = 100;
    memcpy(junk, &len, 4);
    cr_assert_eq(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    close(fd);

    log = open_log(0, &r);
    expect_replayed(&r, 1, 10);
    cr_assert_eq(file_size(path), end_of_record(10));
    append_range(log, 11, 12);
    ps_pushlog_close(log);
    replayed_free(&r);

    log = open_log(0, &r);
    expect_replayed(&r, 1, 12);
    ps_pushlog_close(log);
    replayed_free(&r);
}

Test(pushlog, corruption_in_an_older_segment_fails_open) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 5);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    append_range(log, 6, 10);
    ps_pushlog_close(log);

    char names[8][32];
    cr_assert_eq(list_segments(names, 8), 2);
    char path[PS_PATH_MAX + 32];
    seg_path(1, path, sizeof(path));
    /* Flip one byte inside record 3's body. */
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    off_t at = end_of_record(2) + 16 + 1;
    char c;
    cr_assert_eq(pread(fd, &c, 1, at), 1);
    c ^= 0x20;
    cr_assert_eq(pwrite(fd, &c, 1, at), 1);
    close(fd);
    off_t size_before = file_size(path);

    char err[512] = "";
    log = NULL;
    int rc = ps_pushlog_open(dir, PS_FSYNC_NO, 0, on_replay, &r, &log, err, sizeof(err));
    cr_assert_lt(rc, 0, "open must refuse to skip acknowledged pushes");
    cr_assert_null(log);
    cr_assert(strstr(err, "0000000000000001.log"), "'%s' should name the segment", err);
    cr_assert_eq(file_size(path), size_before, "a failed open must not truncate anything");
    cr_assert_eq(list_segments(names, 8), 2, "a failed open must not create or delete segments");
    replayed_free(&r);
}

Test(pushlog, truncated_older_segment_fails_open) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 5);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    append_range(log, 6, 10);
    ps_pushlog_close(log);
    char path[PS_PATH_MAX + 32];
    seg_path(1, path, sizeof(path));
    cr_assert_eq(truncate(path, end_of_record(4) + 3), 0);
    char err[512] = "";
    log = NULL;
    cr_assert_lt(ps_pushlog_open(dir, PS_FSYNC_NO, 0, on_replay, &r, &log, err, sizeof(err)), 0);
    cr_assert_null(log);
    replayed_free(&r);
}

Test(pushlog, segment_with_a_gap_in_lsns_fails_open) {
    /* Segment names say where each starts; a record that does not follow
     * its predecessor means a lost segment. */
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 5);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    append_range(log, 6, 10);
    ps_pushlog_close(log);
    char from[PS_PATH_MAX + 32], to[PS_PATH_MAX + 32];
    seg_path(6, from, sizeof(from));
    seg_path(7, to, sizeof(to));
    cr_assert_eq(rename(from, to), 0);
    char err[512] = "";
    log = NULL;
    cr_assert_lt(ps_pushlog_open(dir, PS_FSYNC_NO, 0, on_replay, &r, &log, err, sizeof(err)), 0);
    cr_assert_null(log);
    replayed_free(&r);
}

Test(pushlog, a_missing_segment_fails_open) {
    /* Segments 1 (1..5), 6 (6..10), 11 (11..12); losing segment 6 must not
     * silently skip lsns 6..10, unless the store covers them. */
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 5);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    append_range(log, 6, 10);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    append_range(log, 11, 12);
    ps_pushlog_close(log);
    char path[PS_PATH_MAX + 32];
    seg_path(6, path, sizeof(path));
    cr_assert_eq(unlink(path), 0);

    char err[512] = "";
    log = NULL;
    int rc = ps_pushlog_open(dir, PS_FSYNC_NO, 0, on_replay, &r, &log, err, sizeof(err));
    cr_assert_lt(rc, 0, "lsns 6..10 are gone: open must not succeed");
    cr_assert_null(log);
    cr_assert(strstr(err, "000000000000000b.log"), "'%s' should name the segment after the gap", err);
    replayed_free(&r);

    /* Covered by the store: the gap is harmless. */
    log = open_log(10, &r);
    expect_replayed(&r, 11, 12);
    ps_pushlog_close(log);
    replayed_free(&r);
}

Test(pushlog, a_missing_first_segment_fails_open) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 5);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    append_range(log, 6, 10);
    ps_pushlog_close(log);
    char path[PS_PATH_MAX + 32];
    seg_path(1, path, sizeof(path));
    cr_assert_eq(unlink(path), 0);
    char err[512] = "";
    log = NULL;
    cr_assert_lt(ps_pushlog_open(dir, PS_FSYNC_NO, 3, on_replay, &r, &log, err, sizeof(err)), 0,
                 "lsns 4..5 are gone");
    cr_assert_null(log);
    replayed_free(&r);
    log = open_log(5, &r);
    expect_replayed(&r, 6, 10);
    ps_pushlog_close(log);
    replayed_free(&r);
}

/* ---- rotation and truncation --------------------------------------------------------- */

Test(pushlog, rotate_then_drop_covered_deletes_exactly_the_covered_segments) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 5);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    append_range(log, 6, 10);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    cr_assert_eq(ps_pushlog_rotate(log), 0, "rotating an empty segment is a no-op");
    append_range(log, 11, 12);
    cr_assert_eq(ps_pushlog_commit(log), 0);

    char names[8][32];
    cr_assert_eq(list_segments(names, 8), 3);
    cr_assert_str_eq(names[0], "0000000000000001.log");
    cr_assert_str_eq(names[1], "0000000000000006.log");
    cr_assert_str_eq(names[2], "000000000000000b.log");

    cr_assert_eq(ps_pushlog_drop_covered(log, 4), 0);
    cr_assert_eq(list_segments(names, 8), 3, "lsn 5 of segment 1 is not covered by 4");
    cr_assert_eq(ps_pushlog_drop_covered(log, 5), 0);
    cr_assert_eq(list_segments(names, 8), 2);
    cr_assert_str_eq(names[0], "0000000000000006.log");
    cr_assert_eq(ps_pushlog_drop_covered(log, 9), 0);
    cr_assert_eq(list_segments(names, 8), 2);
    cr_assert_eq(ps_pushlog_drop_covered(log, 10), 0);
    cr_assert_eq(list_segments(names, 8), 1);
    cr_assert_str_eq(names[0], "000000000000000b.log");
    cr_assert_eq(ps_pushlog_drop_covered(log, 1000), 0);
    cr_assert_eq(list_segments(names, 8), 1, "the current segment is never deleted");

    /* The log still works, and a restart covering 10 replays the rest. */
    append_range(log, 13, 14);
    ps_pushlog_close(log);
    log = open_log(10, &r);
    expect_replayed(&r, 11, 14);
    ps_pushlog_close(log);
    replayed_free(&r);
}

Test(pushlog, dropped_state_survives_reopen) {
    /* After a drop and a restart, the dropped segments stay gone and the
     * next drop still finds the right ones. */
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 3);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    append_range(log, 4, 6);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    cr_assert_eq(ps_pushlog_drop_covered(log, 3), 0);
    ps_pushlog_close(log);

    log = open_log(3, &r);
    expect_replayed(&r, 4, 6);
    append_range(log, 7, 8);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    cr_assert_eq(ps_pushlog_drop_covered(log, 8), 0);
    char names[8][32];
    size_t n = list_segments(names, 8);
    cr_assert_eq(n, 1, "only the current segment remains, got %zu (%s ...)", n, names[0]);
    cr_assert_str_eq(names[0], "0000000000000009.log");
    ps_pushlog_close(log);
    replayed_free(&r);
    log = open_log(8, &r);
    cr_assert_eq(r.n, 0);
    ps_pushlog_close(log);
}

/* ---- fsync policies ------------------------------------------------------------------ */

Test(pushlog, fsync_always_and_sync_work) {
    char err[512] = "";
    ps_pushlog *log = NULL;
    replayed r = {0};
    cr_assert_eq(ps_pushlog_open(dir, PS_FSYNC_ALWAYS, 0, on_replay, &r, &log, err, sizeof(err)), 0,
                 "%s", err);
    append_range(log, 1, 3);
    cr_assert_eq(ps_pushlog_commit(log), 0);
    cr_assert_eq(ps_pushlog_sync(log), 0);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    ps_pushlog_close(log);
    log = open_log(0, &r);
    expect_replayed(&r, 1, 3);
    ps_pushlog_close(log);
    replayed_free(&r);
}

/* ---- reserve / append ----------------------------------------------------------------- */

Test(pushlog, reserve_refuses_records_over_the_limit) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    cr_assert_eq(ps_pushlog_reserve(log, (size_t)1 << 31), PS_ELIMIT);
    cr_assert_eq(ps_pushlog_reserve(log, SIZE_MAX - 4), PS_ELIMIT, "no overflow in the size check");
    cr_assert_eq(ps_pushlog_reserve(log, 100), 0);
    ps_pushlog_close(log);
}

/* In a child whose data size is capped just above what it uses, append a
 * record of `body` bytes, after reserving it or not; returns the child's
 * exit status (0: append succeeded, 1: it failed, else: it crashed). */
static int append_under_memory_cap(size_t body, int reserve_first) {
    char *data = malloc(body);
    memset(data, 'r', body);
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (reserve_first && ps_pushlog_reserve(log, body) < 0)
            _exit(3);
        /* RLIMIT_DATA, not RLIMIT_AS: glibc grows a thread's arena by
         * mprotect inside address space it reserved earlier, which only the
         * data limit counts (Linux >= 4.7). */
        unsigned long kb = 0;
        char line[256];
        FILE *f = fopen("/proc/self/status", "r");
        if (!f)
            _exit(4);
        while (fgets(line, sizeof(line), f))
            if (sscanf(line, "VmData: %lu kB", &kb) == 1)
                break;
        fclose(f);
        if (!kb)
            _exit(4);
        struct rlimit lim;
        lim.rlim_cur = lim.rlim_max = (rlim_t)kb * 1024 + (256u << 10);
        if (setrlimit(RLIMIT_DATA, &lim) < 0)
            _exit(5);
        struct iovec iov = {data, body};
        uint64_t lsn;
        _exit(ps_pushlog_append(log, &iov, 1, &lsn) == 0 ? 0 : 1);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    ps_pushlog_close(log);
    free(data);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

Test(pushlog, reserve_then_append_never_fails) {
#if defined(__SANITIZE_ADDRESS__)
    teardown(); /* a skipped test's .fini does not run */
    cr_skip_test("ASan's allocator does not honour a data-size cap the way glibc's does");
#endif
    /* Far beyond the 256 KiB of slack, and sized so that the record (16
     * bytes of header and lsn, then the body) just passes a power of two:
     * a reservation a few bytes short leaves no spare capacity to hide in. */
    const size_t body = (8u << 20) - 8;
    /* The cap bites: without a reservation the append must allocate and
     * fails. (If this ever succeeds, the test below proves nothing.) */
    cr_assert_eq(append_under_memory_cap(body, 0), 1, "the memory cap did not bite");
    cr_assert_eq(append_under_memory_cap(body, 1), 0,
                 "append after reserve of the same size needed memory");
}

/* ---- CRC-32C ------------------------------------------------------------------------- */

/* Bit-at-a-time reference (RFC 3720 B.4 polynomial, reflected). */
static uint32_t crc32c_ref(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = crc & 1 ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
    }
    return ~crc;
}

Test(pushlog, crc32c_known_values) {
    cr_assert_eq(ps_crc32c(0, "123456789", 9), 0xE3069283u);
    cr_assert_eq(ps_crc32c(0, "", 0), 0);
    /* RFC 3720 B.4 test vectors. */
    uint8_t buf[32];
    memset(buf, 0, 32);
    cr_assert_eq(ps_crc32c(0, buf, 32), 0x8A9136AAu);
    memset(buf, 0xff, 32);
    cr_assert_eq(ps_crc32c(0, buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    cr_assert_eq(ps_crc32c(0, buf, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)(31 - i);
    cr_assert_eq(ps_crc32c(0, buf, 32), 0x113FDB5Cu);
}

Test(pushlog, crc32c_matches_reference_at_every_length_and_alignment) {
    /* Covers the 8-byte main loop and the byte tail of whichever path this
     * CPU takes, at unaligned starts. */
    uint8_t data[600];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 167 + 13);
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n + off <= sizeof(data); n += n < 40 ? 1 : 37)
            cr_assert_eq(ps_crc32c(0, data + off, n), crc32c_ref(0, data + off, n), "off %zu len %zu",
                         off, n);
}

Test(pushlog, crc32c_chains) {
    const char *s = "123456789";
    for (size_t k = 0; k <= 9; k++)
        cr_assert_eq(ps_crc32c(ps_crc32c(0, s, k), s + k, 9 - k), 0xE3069283u, "split at %zu", k);
}

/* ---- the writer thread ----------------------------------------------------------------- */

static void count_notify(void *ctx) { __atomic_fetch_add((int *)ctx, 1, __ATOMIC_SEQ_CST); }

/* Wait (polling) for the write in flight; returns its result. */
static int wait_written(ps_pushlog *log) {
    for (;;) {
        bool busy = true;
        int rc = ps_pushlog_poll(log, &busy);
        if (!busy)
            return rc;
        sched_yield();
    }
}

/* Records appended while a write is in flight go in the next one, in order;
 * durable_lsn() says what is written, and every write notifies. */
Test(pushlog, writer_thread_writes_turns_in_order) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    int notified = 0;
    cr_assert_eq(ps_pushlog_writer_start(log, count_notify, &notified), 0);
    cr_assert_eq(ps_pushlog_submit(log), 0, "nothing to write");
    uint64_t next = 1;
    for (int turn = 0; turn < 50; turn++) {
        append_range(log, next, next + (uint64_t)turn % 5);
        next += (uint64_t)turn % 5 + 1;
        cr_assert_eq(ps_pushlog_submit(log), 1);
        uint64_t covers = next - 1;
        append_range(log, next, next + 2); /* the next turn, while it writes */
        next += 3;
        cr_assert_eq(wait_written(log), 0);
        cr_assert_geq(ps_pushlog_durable_lsn(log), covers);
        cr_assert_lt(ps_pushlog_durable_lsn(log), next - 3 + 1, "the next turn's records wait");
    }
    cr_assert_eq(__atomic_load_n(&notified, __ATOMIC_SEQ_CST), 50);
    cr_assert_eq(ps_pushlog_writer_stop(log), 0);
    cr_assert_eq(ps_pushlog_commit(log), 0);
    cr_assert_eq(ps_pushlog_durable_lsn(log), next - 1);
    ps_pushlog_close(log);
    log = open_log(0, &r);
    expect_replayed(&r, 1, next - 1);
    ps_pushlog_close(log);
    replayed_free(&r);
}

/* With the writer thread running, drop_covered() hands the covered
 * segments to it: they leave the log's list at once and their files go on
 * that thread, oldest first, at the latest when it stops. The log goes on
 * working meanwhile, and a reopen replays what is not covered. */
Test(pushlog, the_writer_thread_deletes_the_covered_segments) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    int notified = 0;
    cr_assert_eq(ps_pushlog_writer_start(log, count_notify, &notified), 0);
    for (uint64_t lsn = 1; lsn <= 20; lsn += 5) {
        append_range(log, lsn, lsn + 4);
        cr_assert_eq(ps_pushlog_rotate(log), 0);
    }
    char names[8][32];
    cr_assert_eq(list_segments(names, 8), 5, "four full segments and the current one");
    cr_assert_eq(ps_pushlog_drop_covered(log, 10), 0);
    for (int i = 0; i < 5000 && list_segments(names, 8) > 3; i++)
        usleep(1000);
    cr_assert_eq(list_segments(names, 8), 3, "segments 1-5 and 6-10 deleted by the writer");
    cr_assert_str_eq(names[0], "000000000000000b.log");
    append_range(log, 21, 22);
    cr_assert_eq(ps_pushlog_submit(log), 1);
    cr_assert_eq(wait_written(log), 0);
    cr_assert_eq(ps_pushlog_drop_covered(log, 20), 0);
    cr_assert_eq(ps_pushlog_writer_stop(log), 0);
    cr_assert_eq(list_segments(names, 8), 1, "every handed segment is gone once it stops");
    cr_assert_str_eq(names[0], "0000000000000015.log");
    ps_pushlog_close(log);
    log = open_log(20, &r);
    expect_replayed(&r, 21, 22);
    ps_pushlog_close(log);
    replayed_free(&r);
}

/* commit() and rotate() with a write in flight wait for it: segments change
 * only between writes, so each record lands in the segment its lsn names,
 * and a write-back's covered lsn is in the file. close() waits too. */
Test(pushlog, rotate_and_close_wait_for_the_write_in_flight) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    int notified = 0;
    cr_assert_eq(ps_pushlog_writer_start(log, count_notify, &notified), 0);
    append_range(log, 1, 30);
    cr_assert_eq(ps_pushlog_submit(log), 1);
    append_range(log, 31, 40);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    cr_assert_eq(ps_pushlog_durable_lsn(log), 40, "rotate wrote every record before it");
    bool busy = true;
    cr_assert_eq(ps_pushlog_poll(log, &busy), 0);
    cr_assert(!busy);
    append_range(log, 41, 50);
    cr_assert_eq(ps_pushlog_submit(log), 1);
    append_range(log, 51, 55);
    ps_pushlog_close(log); /* the write in flight, then the rest */

    char names[8][32];
    cr_assert_eq(list_segments(names, 8), 2);
    cr_assert_str_eq(names[0], "0000000000000001.log");
    cr_assert_str_eq(names[1], "0000000000000029.log");
    log = open_log(40, &r);
    expect_replayed(&r, 41, 55);
    ps_pushlog_close(log);
    replayed_free(&r);
    log = open_log(0, &r);
    expect_replayed(&r, 1, 55);
    ps_pushlog_close(log);
    replayed_free(&r);
}

/* A write the file refuses keeps its records: the error comes back from
 * poll(), durable_lsn() stays, and the next commit writes them ahead of
 * those appended since, so nothing is lost or reordered. */
/* Run steps() in a child process (a crash: it ends with _exit, not
 * close()) and expect it to return 0; else the failed step's number. */
static void run_in_child(int (*steps)(void)) {
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(steps());
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child step %d failed",
              WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

static int failed_write_steps(void) {
    /* In a child: the file-size limit is per process. */
    signal(SIGXFSZ, SIG_IGN);
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    int notified = 0;
    if (ps_pushlog_writer_start(log, count_notify, &notified) < 0)
        return 2;
    append_range(log, 1, 10);
    if (ps_pushlog_commit(log) < 0)
        return 3;
    struct rlimit rl = {0, RLIM_INFINITY};
    setrlimit(RLIMIT_FSIZE, &rl);
    append_range(log, 11, 20);
    if (ps_pushlog_submit(log) != 1)
        return 4;
    append_range(log, 21, 25);
    if (wait_written(log) != -EFBIG || ps_pushlog_durable_lsn(log) != 10)
        return 5;
    if (ps_pushlog_commit(log) != -EFBIG)
        return 6;
    rl.rlim_cur = RLIM_INFINITY;
    setrlimit(RLIMIT_FSIZE, &rl);
    if (ps_pushlog_commit(log) != 0 || ps_pushlog_durable_lsn(log) != 25)
        return 7;
    ps_pushlog_close(log);
    return 0;
}

Test(pushlog, a_failed_write_keeps_its_records_for_the_retry) {
    run_in_child(failed_write_steps);
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    expect_replayed(&r, 1, 25);
    ps_pushlog_close(log);
    replayed_free(&r);
}

/* ---- spares: covered segments written over ------------------------------------- */

static ino_t inode_of(const char *path) {
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
    return st.st_ino;
}

/* The spare's path ("spare.<last lsn>") into p, if there is one. */
static bool spare_path_of(char *p, size_t cap) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(d)))
        if ((found = strncmp(e->d_name, "spare.", 6) == 0))
            snprintf(p, cap, "%s/%s", dir, e->d_name);
    closedir(d);
    return found;
}

static bool spare_exists(void) {
    char p[PS_PATH_MAX + 300];
    return spare_path_of(p, sizeof(p));
}

static int written_over_steps(void) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 30); /* the spare-to-be: 30 records */
    if (ps_pushlog_rotate(log) != 0)
        return 2;
    char p1[PS_PATH_MAX + 32];
    seg_path(1, p1, sizeof(p1));
    ino_t ino = inode_of(p1);
    append_range(log, 31, 32);
    if (ps_pushlog_drop_covered(log, 30) != 0 || !spare_exists() || access(p1, F_OK) == 0)
        return 3;
    if (ps_pushlog_rotate(log) != 0) /* segment 33 takes the spare */
        return 4;
    char p33[PS_PATH_MAX + 32];
    seg_path(33, p33, sizeof(p33));
    if (spare_exists() || inode_of(p33) != ino)
        return 5;
    append_range(log, 33, 36); /* far fewer bytes than the spare holds */
    if (ps_pushlog_commit(log) != 0 || file_size(p33) <= end_of_record(36) - end_of_record(32))
        return 6;
    return 0; /* a crash: no close, the old records stay after the new */
}

/* A covered segment is kept as a spare, and the next segment is that file
 * written over from its start: the spare's old records (lsns below the
 * segment's first) end its replay, after a crash as after close(), which
 * cuts them off. */
Test(pushlog, a_covered_segment_is_written_over_and_its_old_records_never_replay) {
    run_in_child(written_over_steps);
    char p33[PS_PATH_MAX + 32];
    seg_path(33, p33, sizeof(p33));
    off_t mine = end_of_record(36) - end_of_record(32);
    replayed r = {0};
    ps_pushlog *log = open_log(30, &r);
    expect_replayed(&r, 31, 36);
    cr_assert_eq(file_size(p33), mine, "the old records are cut off");
    append_range(log, 37, 40);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    append_range(log, 41, 42);
    ps_pushlog_close(log);
    replayed_free(&r);
    log = open_log(30, &r);
    expect_replayed(&r, 31, 42);
    ps_pushlog_close(log);
    replayed_free(&r);
}

/* rotate() cuts a written-over segment to its own records, so that an
 * older segment never holds a spare's; close() does too. */
Test(pushlog, rotate_and_close_cut_a_written_over_segment) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    int notified = 0;
    cr_assert_eq(ps_pushlog_writer_start(log, count_notify, &notified), 0);
    append_range(log, 1, 40);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    append_range(log, 41, 41);
    cr_assert_eq(ps_pushlog_submit(log), 1);
    cr_assert_eq(wait_written(log), 0);
    cr_assert_eq(ps_pushlog_drop_covered(log, 40), 0);
    /* The writer thread retires it: wait for the spare. */
    for (int i = 0; i < 5000 && !spare_exists(); i++)
        usleep(1000);
    cr_assert(spare_exists(), "the covered segment is kept as a spare");
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    cr_assert(!spare_exists(), "segment 42 took the spare");
    append_range(log, 42, 44);
    cr_assert_eq(ps_pushlog_rotate(log), 0);
    char p42[PS_PATH_MAX + 32];
    seg_path(42, p42, sizeof(p42));
    cr_assert_eq(file_size(p42), end_of_record(44) - end_of_record(41));
    append_range(log, 45, 45);
    cr_assert_eq(ps_pushlog_writer_stop(log), 0);
    cr_assert_eq(ps_pushlog_drop_covered(log, 44), 0);
    char sp[PS_PATH_MAX + 300];
    cr_assert(spare_path_of(sp, sizeof(sp)), "without the writer thread, drop_covered() keeps the spare itself");
    char want[PS_PATH_MAX + 300];
    /* Segments 41 (lsn 41) and 42 (42-44) were covered: the first became
     * the spare, the other went. */
    snprintf(want, sizeof(want), "%s/spare.0000000000000029", dir);
    cr_assert_str_eq(sp, want, "named after its last lsn, 41");
    ino_t ino = inode_of(sp);
    ps_pushlog_close(log);
    cr_assert(spare_exists(), "close() keeps the spare (deleting 2.5 GB took a second here)");
    replayed_free(&r);
    log = open_log(44, &r);
    expect_replayed(&r, 45, 45);
    char p46[PS_PATH_MAX + 32];
    seg_path(46, p46, sizeof(p46));
    cr_assert(!spare_exists() && inode_of(p46) == ino, "the next process writes over it");
    append_range(log, 46, 47);
    ps_pushlog_close(log);
    replayed_free(&r);
    log = open_log(44, &r);
    expect_replayed(&r, 45, 47);
    ps_pushlog_close(log);
    replayed_free(&r);
}

/* Records of 40-byte bodies, lsns first..last. */
static void append_fixed(ps_pushlog *log, uint64_t first, uint64_t last) {
    for (uint64_t lsn = first; lsn <= last; lsn++) {
        char body[40];
        memset(body, (int)('A' + lsn % 26), sizeof(body));
        struct iovec iov = {body, sizeof(body)};
        uint64_t got = 0;
        cr_assert_eq(ps_pushlog_append(log, &iov, 1, &got), 0);
        cr_assert_eq(got, lsn);
    }
}

static int aligned_old_record_steps(void) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_fixed(log, 1, 20);
    if (ps_pushlog_rotate(log) != 0)
        return 2;
    append_fixed(log, 21, 21);
    if (ps_pushlog_drop_covered(log, 20) != 0 || ps_pushlog_rotate(log) != 0 || spare_exists())
        return 3;
    append_fixed(log, 22, 26); /* records 1-5's bytes; 6-20 stay after them */
    if (ps_pushlog_commit(log) != 0)
        return 4;
    /* Segment 21 becomes a spare, left behind by the crash. */
    if (ps_pushlog_drop_covered(log, 21) != 0 || !spare_exists())
        return 5;
    return 0;
}

/* When the new records end exactly where an old one began, that old record
 * is intact (its CRC holds): its lsn, below the segment's first, ends the
 * replay. */
Test(pushlog, an_intact_old_record_right_after_the_new_ones_ends_the_segment) {
    run_in_child(aligned_old_record_steps);
    replayed r = {0};
    ps_pushlog *log = open_log(21, &r);
    cr_assert(!spare_exists(), "segment 27 is the spare a crash left, written over");
    cr_assert_eq(r.n, 5, "replayed %zu records", r.n);
    for (size_t i = 0; i < r.n; i++)
        cr_assert_eq(r.lsn[i], 22 + i);
    cr_assert_eq(ps_pushlog_last_lsn(log), 26);
    char p22[PS_PATH_MAX + 32];
    seg_path(22, p22, sizeof(p22));
    cr_assert_eq(file_size(p22), 5 * (16 + 40), "the old records are cut off");
    ps_pushlog_close(log);
    replayed_free(&r);
}

/* A spare whose records are not all older than the segments to come (lsns
 * went back: a restored checkpoint) is deleted at open, never written over:
 * its records could pass for new ones. */
Test(pushlog, a_spare_with_lsns_at_or_past_the_next_segment_is_deleted) {
    replayed r = {0};
    ps_pushlog *log = open_log(0, &r);
    append_range(log, 1, 5);
    ps_pushlog_close(log);
    char sp[PS_PATH_MAX + 300];
    snprintf(sp, sizeof(sp), "%s/spare.0000000000000006", dir); /* last lsn 6: not below 6 */
    FILE *f = fopen(sp, "w");
    cr_assert_not_null(f);
    fputs("old records", f);
    fclose(f);
    log = open_log(0, &r);
    expect_replayed(&r, 1, 5);
    cr_assert(!spare_exists(), "the spare is deleted");
    char p6[PS_PATH_MAX + 32];
    seg_path(6, p6, sizeof(p6));
    cr_assert_eq(file_size(p6), 0, "segment 6 is a fresh file");
    ps_pushlog_close(log);
    replayed_free(&r);
}
