/* Tests for the RocksDB layer (server/store.h), in a temporary directory.
 *
 * What a shard depends on: a clean close leaves nothing for the next open
 * to replay (every memtable is in an SST file and the write-ahead log is
 * empty: a clean restart spent most of its time replaying it), with every
 * row still there after the reopen; and a read-only open of a closed store
 * reads it without writing; room reserved in a batch changes nothing it
 * writes. */

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "fsutil.h"
#include "store.h"

static char dir[PS_PATH_MAX];
static const char *const cf_names[] = {"meta", "t.test"};

static void setup(void) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/ctrps-test-store-XXXXXX", base && *base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static void teardown(void) { ps_rm_tree(dir); }

TestSuite(store, .init = setup, .fini = teardown);

static ps_store *open_store(bool read_only) {
    char err[512] = "";
    ps_store_options so = {.read_only = read_only};
    ps_store *s = NULL;
    int r = ps_store_open(dir, cf_names, 2, &so, &s, err, sizeof(err));
    cr_assert_eq(r, 0, "ps_store_open: %s", err);
    return s;
}

/* Bytes in the write-ahead log files (NNNNNN.log; the info log is "LOG"). */
static long long wal_bytes(void) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    long long total = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 4 || strcmp(e->d_name + len - 4, ".log"))
            continue;
        char path[PS_PATH_MAX + 256];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        struct stat st;
        cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
        total += st.st_size;
    }
    closedir(d);
    return total;
}

#define NROWS 2000

static void write_rows(ps_store *s) {
    ps_store_batch *b = ps_store_batch_new();
    cr_assert_not_null(b);
    for (uint64_t i = 0; i < NROWS; i++) {
        ps_store_key k;
        ps_store_key_encode((uint16_t)(i % 7), i, &k);
        uint64_t v[8] = {i, i * 3, ~i};
        ps_store_batch_put(b, s, 1, k.b, PS_STORE_KEY_LEN, v, sizeof(v));
    }
    ps_store_batch_put(b, s, 0, "flushed_lsn", 11, &(uint64_t){42}, 8);
    char err[512] = "";
    cr_assert_eq(ps_store_write(s, b, err, sizeof(err)), 0, "%s", err);
    ps_store_batch_free(b);
}

static void check_rows(ps_store *s) {
    char err[512] = "";
    for (uint64_t i = 0; i < NROWS; i++) {
        ps_store_key k;
        ps_store_key_encode((uint16_t)(i % 7), i, &k);
        char *v = NULL;
        size_t len = 0;
        cr_assert_eq(ps_store_get(s, 1, k.b, PS_STORE_KEY_LEN, &v, &len, err, sizeof(err)), 0, "%s", err);
        cr_assert_not_null(v, "row %llu lost", (unsigned long long)i);
        uint64_t want[8] = {i, i * 3, ~i};
        cr_assert_eq(len, sizeof(want));
        cr_assert_eq(memcmp(v, want, len), 0, "row %llu differs", (unsigned long long)i);
        free(v);
    }
}

Test(store, clean_close_leaves_no_wal_to_replay) {
    ps_store *s = open_store(false);
    write_rows(s);
    cr_assert_gt(wal_bytes(), NROWS * 64, "the write went through the WAL");
    ps_store_close(s);
    cr_assert_eq(wal_bytes(), 0, "a clean close flushed every memtable");

    s = open_store(false);
    check_rows(s);
    char err[512] = "";
    char *v = NULL;
    size_t len = 0;
    cr_assert_eq(ps_store_get(s, 0, "flushed_lsn", 11, &v, &len, err, sizeof(err)), 0, "%s", err);
    cr_assert(v && len == 8 && !memcmp(v, &(uint64_t){42}, 8));
    free(v);
    ps_store_close(s);
    cr_assert_eq(wal_bytes(), 0);
}

Test(store, read_only_open_reads_a_closed_store) {
    ps_store *s = open_store(false);
    write_rows(s);
    ps_store_close(s);
    s = open_store(true);
    check_rows(s);
    ps_store_close(s); /* must not try to flush a read-only database */
    s = open_store(false);
    check_rows(s);
    ps_store_close(s);
}

/* Room made in a batch holding entries already keeps them (and its count),
 * and the puts that fill the room all reach the store. */
Test(store, reserve_keeps_the_batch_and_its_puts) {
    ps_store *s = open_store(false);
    ps_store_batch *b = ps_store_batch_new();
    cr_assert_not_null(b);
    ps_store_batch_put(b, s, 0, "flushed_lsn", 11, &(uint64_t){42}, 8);
    cr_assert_eq(ps_store_batch_reserve(b, s, 1, NROWS, PS_STORE_KEY_LEN, 64), 0);
    cr_assert_eq(ps_store_batch_count(b), 1);
    for (uint64_t i = 0; i < NROWS; i++) {
        ps_store_key k;
        ps_store_key_encode((uint16_t)(i % 7), i, &k);
        uint64_t v[8] = {i, i * 3, ~i};
        ps_store_batch_put(b, s, 1, k.b, PS_STORE_KEY_LEN, v, sizeof(v));
    }
    cr_assert_eq(ps_store_batch_count(b), NROWS + 1);
    char err[512] = "";
    cr_assert_eq(ps_store_write(s, b, err, sizeof(err)), 0, "%s", err);
    ps_store_batch_free(b);
    check_rows(s);
    char *v = NULL;
    size_t len = 0;
    cr_assert_eq(ps_store_get(s, 0, "flushed_lsn", 11, &v, &len, err, sizeof(err)), 0, "%s", err);
    cr_assert(v && len == 8 && !memcmp(v, &(uint64_t){42}, 8));
    free(v);
    /* The reservation's own put left nothing behind. */
    cr_assert_eq(ps_store_get(s, 0, "", 0, &v, &len, err, sizeof(err)), 0, "%s", err);
    cr_assert_null(v);
    ps_store_close(s);
}
