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
#include <time.h>

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

/* A dropped range's space comes back soon without any further write: the
 * store's compaction thread compacts the files that hold keys on both
 * sides of the range's ends (a move's drop, DeleteFilesInRange alone
 * could not free them). */
Test(store, a_reclaimed_range_is_compacted_away_without_further_writes) {
    ps_store *s = open_store(false);
    ps_store_batch *b = ps_store_batch_new();
    cr_assert_not_null(b);
    static char value[1024];
    for (uint64_t i = 0; i < 20000; i++) { /* buckets 0-7 interleaved: every file holds all */
        ps_store_key k;
        ps_store_key_encode((uint16_t)(i % 8), i, &k);
        memset(value, (int)i, sizeof(value));
        ps_store_batch_put(b, s, 1, k.b, PS_STORE_KEY_LEN, value, sizeof(value));
    }
    char err[512] = "";
    cr_assert_eq(ps_store_write(s, b, err, sizeof(err)), 0, "%s", err);
    ps_store_batch_free(b);
    ps_store_close(s); /* the rows into SST files */
    s = open_store(false);
    uint64_t before = ps_store_cf_size(s, 1);
    cr_assert_gt(before, 19u << 20, "%llu bytes", (unsigned long long)before);
    /* Buckets 0-5 go: three quarters of the rows. */
    ps_store_key lo, hi;
    ps_store_key_encode(0, 0, &lo);
    ps_store_key_encode(6, 0, &hi);
    b = ps_store_batch_new();
    ps_store_batch_delete_range(b, s, 1, lo.b, PS_STORE_KEY_LEN, hi.b, PS_STORE_KEY_LEN);
    cr_assert_eq(ps_store_write(s, b, err, sizeof(err)), 0, "%s", err);
    ps_store_batch_free(b);
    cr_assert_eq(ps_store_reclaim_range(s, 1, lo.b, PS_STORE_KEY_LEN, hi.b, PS_STORE_KEY_LEN, err,
                                        sizeof(err)),
                 0, "%s", err);
    uint64_t after = before;
    for (int i = 0; i < 200 && after > before / 2; i++) {
        nanosleep(&(struct timespec){.tv_nsec = 50 * 1000 * 1000}, NULL);
        after = ps_store_cf_size(s, 1);
    }
    cr_assert_leq(after, before / 2, "%llu of %llu bytes left after 10 s",
                  (unsigned long long)after, (unsigned long long)before);
    /* The rows outside the range are all there. */
    for (uint64_t i = 6; i < 20000; i += 8) {
        ps_store_key k;
        ps_store_key_encode((uint16_t)(i % 8), i, &k);
        char *v = NULL;
        size_t len = 0;
        cr_assert_eq(ps_store_get(s, 1, k.b, PS_STORE_KEY_LEN, &v, &len, err, sizeof(err)), 0);
        cr_assert(v && len == sizeof(value) && (uint8_t)v[0] == (uint8_t)i, "row %llu", (unsigned long long)i);
        free(v);
    }
    ps_store_close(s);
}

/* A memtable's bloom filter is allocated (and zeroed) with the memtable:
 * only the column families of rows keep one, so each metadata family
 * saves it (0.02 of write_buffer_mb; 3.2 MiB each with the ratio of 0.1
 * before). A fresh store has no SST file, so a family's size is its
 * memtable's, which RocksDB counts from the first write on: one key each. */
Test(store, only_row_families_have_a_memtable_filter) {
    char err[512] = "";
    ps_store_options so = {.write_buffer_mb = 64, .first_row_cf = 1};
    ps_store *s = NULL;
    cr_assert_eq(ps_store_open(dir, cf_names, 2, &so, &s, err, sizeof(err)), 0, "%s", err);
    ps_store_batch *b = ps_store_batch_new();
    cr_assert_not_null(b);
    ps_store_batch_put(b, s, 0, "k", 1, "v", 1);
    ps_store_batch_put(b, s, 1, "k", 1, "v", 1);
    cr_assert_eq(ps_store_write(s, b, err, sizeof(err)), 0, "%s", err);
    ps_store_batch_free(b);
    uint64_t meta = ps_store_cf_size(s, 0), rows = ps_store_cf_size(s, 1);
    /* 0.02 of 64 MiB: 1.28 MiB of filter. */
    cr_assert_geq(rows, meta + (1u << 20), "rows' memtable %llu bytes, meta's %llu",
                  (unsigned long long)rows, (unsigned long long)meta);
    ps_store_close(s);
}
