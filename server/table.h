#pragma once
/* One sparse embedding table on one shard: a bounded in-memory tier that is
 * the authoritative working copy of the rows it holds, in front of the
 * RocksDB column family that durably holds every row.
 *
 * Rows are created by Pull and Push from the table's init rule, read with one
 * MultiGet per request when they are not in memory, and updated in memory by
 * the optimizer. Dirty rows reach RocksDB only through ps_table_collect(),
 * which the shard calls to build a write-back batch. A clean row can be
 * dropped at any time (it is in RocksDB); a dirty row only after the batch
 * that holds it was committed.
 *
 * Not thread-safe: the shard's loop thread owns every table. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "store.h"
#include "tablestats.h"

typedef struct ps_table ps_table;

/* Called when every row in memory is dirty or in use by the current request:
 * the shard writes back (synchronously) so rows become evictable. */
typedef int (*ps_table_make_room_fn)(void *ctx);

/* `cfg` is borrowed for the table's lifetime; `store` too (cf = its column
 * family). `persisted_rows` is the row count the store holds (from meta). */
int ps_table_new(const ps_table_config *cfg, uint32_t nbuckets, uint64_t capacity, ps_store *store,
                 int cf, uint64_t persisted_rows, ps_table **ret_table);
void ps_table_free(ps_table *t);

void ps_table_set_make_room(ps_table *t, ps_table_make_room_fn fn, void *ctx);
/* While the store cannot write, requests that would create rows fail with
 * PS_EREAD_ONLY; existing rows are still served (and evicted when clean). */
void ps_table_set_read_only(ps_table *t, bool read_only);
/* Coarse clock for the rows' last-seen field; the shard sets it per turn. */
void ps_table_set_clock(ps_table *t, uint32_t now_s);

const ps_table_config *ps_table_config_of(const ps_table *t);
uint32_t ps_table_dim(const ps_table *t);
uint32_t ps_table_state_width(const ps_table *t);
int ps_table_cf(const ps_table *t);

/* Weights of n rows into ret_values (n * dim), creating missing rows from
 * the init rule. */
int ps_table_pull(ps_table *t, const uint64_t *keys, size_t n, float *ret_values, char *err,
                  size_t errlen);

/* One optimizer step per key with grads (n * dim), in key order (a key that
 * appears twice is updated twice). Rows whose gradient is not finite are
 * left untouched, not created, and counted in *ret_dropped. Either every
 * finite row is applied or, on error, none is. */
int ps_table_push(ps_table *t, const uint64_t *keys, size_t n, const float *grads,
                  uint32_t *ret_applied, uint32_t *ret_dropped, char *err, size_t errlen);

/* Read-only: never creates rows. ret_found[i] is 1 or 0; missing rows read
 * as zeros. ret_state (n * state_width) may be NULL. */
int ps_table_lookup(ps_table *t, const uint64_t *keys, size_t n, uint8_t *ret_found,
                    float *ret_values, float *ret_state, char *err, size_t errlen);

/* Export rows in store order starting after `after` (a store key, or NULL to
 * start at the beginning), at most `limit` rows. Rows still only in memory
 * are not seen: flush first. Memory rows override their stored copy. */
typedef void (*ps_table_row_fn)(void *ctx, uint64_t key, const float *state);
int ps_table_export(ps_table *t, const ps_store_key *after, size_t limit, ps_table_row_fn fn,
                    void *ctx, ps_store_key *ret_last, size_t *ret_count, bool *ret_done);

/* Write-back. dump_dirty() copies every row dirtied since the previous
 * dump into d (on the loop thread: a memcpy per row) and returns the flush
 * generation they belong to; dump_put() sorts them by store key and adds
 * them to a batch as blind puts (on any thread: RocksDB inserts sorted keys
 * into its memtable far faster than random ones, measured in
 * bench/README.md); committed(gen) marks them clean once the batch reached
 * RocksDB. collect() is dump + put in one call. */
typedef struct ps_table_dump {
    ps_store *store;
    int cf;
    size_t rec_size, value_len;  /* record: store key, pad, value */
    size_t n, cap;
    char *recs;                  /* owned */
} ps_table_dump;

size_t ps_table_dirty_count(const ps_table *t);
uint64_t ps_table_capacity(const ps_table *t);
size_t ps_table_dump_dirty(ps_table *t, ps_table_dump *d, uint32_t *ret_gen);
void ps_table_dump_put(ps_table_dump *d, ps_store_batch *b);
void ps_table_dump_deinit(ps_table_dump *d);
size_t ps_table_collect(ps_table *t, ps_store_batch *b, uint32_t *ret_gen);
void ps_table_committed(ps_table *t, uint32_t gen);
/* Rows the store holds once the last collected batch is committed. */
uint64_t ps_table_persisted_rows(const ps_table *t);

void ps_table_stats_get(const ps_table *t, ps_table_stats *ret);
/* Bytes of memory one row costs in the tier (slab plus index). */
size_t ps_table_row_bytes(const ps_table_config *cfg);
