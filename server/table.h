#pragma once
/* One sparse embedding table on one shard: a bounded in-memory tier that is
 * the authoritative working copy of the rows it holds, in front of the
 * RocksDB column family that durably holds every row.
 *
 * Rows are created from the table's init rule by Push (once admission lets
 * the key in, server/admit.h); Pull reads a key without a row as the init
 * rule and creates no row (when the table admits every key it keeps that
 * init row in memory for the push that follows, never written back or
 * counted: table.c); rows are read with one MultiGet per request when they
 * are not in memory, and
 * updated in memory by the optimizer. Dirty rows reach RocksDB only through
 * the write-back's dumps (below), which the shard puts in its batches. A
 * clean row can be dropped at any time (it is in RocksDB, or is the init
 * rule's row of a key only pulled); a dirty row only
 * after the batch that holds it was committed.
 *
 * Rows die (DESIGN.md "Feature lifecycle") when not pushed for ttl_s seconds
 * of the table's clock, or when a push leaves their weights' L2 norm at or
 * below expire_below. A dead row reads as a key the table never held: Pull
 * serves the init rule, Lookup says not found, a push goes through
 * admission. The rules in table.c say how the dead leave memory and disk.
 *
 * Not thread-safe: the shard's loop thread owns every table (the compaction
 * filter from ps_table_store_filter() is the one part RocksDB's threads
 * call). */

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

/* The compaction filter that drops this table's expired rows from RocksDB,
 * for ps_store_open() (ret->fn is NULL when the table has no ttl_s). The
 * store owns ret->ctx; give it to the table with set_store_filter() once
 * both exist, so that the filter follows the table's expiry clock. */
int ps_table_store_filter(const ps_table_config *cfg, ps_store_cf_filter *ret);
void ps_table_set_store_filter(ps_table *t, void *filter_ctx);
/* While the store cannot write, requests that would create rows fail with
 * PS_EREAD_ONLY; existing rows are still served (and evicted when clean). */
void ps_table_set_read_only(ps_table *t, bool read_only);
/* The table's clock (unix seconds): a row's last-seen time is the clock of
 * its last push, and ttl_s is measured on it. It never goes backwards (an
 * earlier time is ignored). The shard sets it once per turn, and during
 * push-log replay to each record's own clock, so that replay sees the
 * times the pushes first saw. */
void ps_table_set_clock(ps_table *t, uint32_t now_s);
uint32_t ps_table_clock(const ps_table *t);

const ps_table_config *ps_table_config_of(const ps_table *t);
uint32_t ps_table_dim(const ps_table *t);
uint32_t ps_table_state_width(const ps_table *t);
int ps_table_cf(const ps_table *t);
/* The table's admission filter (server/admit.h), borrowed for the table's
 * life; NULL when it admits every key. The shard moves it with a bucket
 * range (ps_shard_move_admit(), ps_shard_adopt_admit()). */
struct ps_admit *ps_table_admit(ps_table *t);

/* Weights of n rows into ret_values (n * dim). A key without a (live) row
 * reads as the init rule; the row is created then only when the table
 * admits every key. */
int ps_table_pull(ps_table *t, const uint64_t *keys, size_t n, float *ret_values, char *err,
                  size_t errlen);

/* One optimizer step per key with grads (n * dim), in key order (a key that
 * appears twice is updated twice). Rows whose gradient is not finite are
 * left untouched, not created, and counted in *ret_dropped. A key without a
 * live row asks admission; when it is refused its gradient is dropped and
 * counted as rejected (n - applied - dropped of them). Either every finite
 * row is applied or, on error, none is (nor is any admission decision). */
int ps_table_push(ps_table *t, const uint64_t *keys, size_t n, const float *grads,
                  uint32_t *ret_applied, uint32_t *ret_dropped, char *err, size_t errlen);

/* Read-only: never creates rows. ret_found[i] is 1 or 0; missing (and dead)
 * rows read as zeros. ret_state (n * state_width) may be NULL. */
int ps_table_lookup(ps_table *t, const uint64_t *keys, size_t n, uint8_t *ret_found,
                    float *ret_values, float *ret_state, char *err, size_t errlen);

/* Export rows in store order starting after `after` (a store key, or NULL to
 * start at the beginning), at most `limit` rows. Rows still only in memory
 * are not seen: flush first. Memory rows override their stored copy; dead
 * rows are left out. */
typedef void (*ps_table_row_fn)(void *ctx, uint64_t key, const float *state);
int ps_table_export(ps_table *t, const ps_store_key *after, size_t limit, ps_table_row_fn fn,
                    void *ctx, ps_store_key *ret_last, size_t *ret_count, bool *ret_done);

/* Moving bucket ranges between shards (README "Resharding").
 * row_value(): the row of `key` as the store holds it once written back
 * (memory first, then RocksDB) into value (ps_table_value_len() bytes);
 * *ret_found is false for a key without a live row.
 * adopt(): stored row values copied from another shard's store, put into b;
 * keys not stored here yet join the live count (with `fresh`, the caller
 * knows none is, and with `prior` (NULL: nothing known) what some are: no
 * lookups for those). A value of length 0 is a
 * row the source no longer has: its copy here, if any, is deleted. A value
 * of another width, or a key with a row in memory (this shard must not own
 * its bucket), is refused before anything changes. */
size_t ps_table_value_len(const ps_table *t);
int ps_table_row_value(ps_table *t, uint64_t key, void *value, bool *ret_found, char *err,
                       size_t errlen);
/* What the caller knows of a key's copy here before adopt(): `known`
 * false: look it up; else `stored` says whether a live row of it is stored,
 * last stamped `last_seen`. */
typedef struct ps_adopt_prior {
    bool known, stored;
    uint32_t last_seen;
} ps_adopt_prior;
int ps_table_adopt(ps_table *t, const uint64_t *keys, const void *const *values,
                   const size_t *lens, size_t n, bool fresh, const ps_adopt_prior *prior,
                   ps_store_batch *b, char *err, size_t errlen);
/* Forgetting every row of buckets [lo, hi), in steps, so that a large
 * range does not hold a shard's loop for the whole walk of its stored
 * rows: forget_memory() (the rows in memory, which must be clean; those
 * not stored leave the live count), then forget_stored() until f->done,
 * each step walking at most `budget` stored rows (0: all; f->rows counts
 * them), then forget_end(): only then do the walked rows leave the live
 * count, and b deletes the range. Nothing may store rows of the range
 * meanwhile (a range the shard does not own). forget_deinit() gives up a
 * walk. */
typedef struct ps_forget {
    uint32_t lo, hi;
    ps_store_key next;           /* the walk goes on from this store key */
    uint32_t *seen;              /* last_seen of the live rows walked */
    size_t n, cap;
    uint64_t rows;
    bool done;
} ps_forget;
int ps_table_forget_memory(ps_table *t, uint32_t lo, uint32_t hi, char *err, size_t errlen);
/* Whether a row of buckets [lo, hi) in memory is not written back. */
bool ps_table_range_dirty(const ps_table *t, uint32_t lo, uint32_t hi);
void ps_table_forget_begin(ps_forget *f, uint32_t lo, uint32_t hi);
/* forget_stored(): 0, or -ENOMEM. */
int ps_table_forget_stored(ps_table *t, ps_forget *f, size_t budget);
void ps_table_forget_end(ps_table *t, ps_forget *f, ps_store_batch *b);
/* After a drop of [lo, hi) is stored: give the space back (the store's
 * files wholly inside the range go now, the rest compacts in the
 * background), so that rows ingested into the range again are not read
 * past the deleted ones. */
int ps_table_reclaim(ps_table *t, uint32_t lo, uint32_t hi, char *err, size_t errlen);
void ps_table_forget_deinit(ps_forget *f);
/* Adoption in two steps, for rows that reach the store by another way than
 * b (an ingested file, built from a copy's first pass into a range just
 * dropped): adopt_check() refuses what adopt() refuses; value_last_seen()
 * reads a stored value's clock; count_adopted() counts those rows live
 * once they are stored (no lookups: none was stored here before). */
int ps_table_adopt_check(const ps_table *t, const uint64_t *keys, const size_t *lens, size_t n,
                         char *err, size_t errlen);
uint32_t ps_table_value_last_seen(const void *value);
void ps_table_count_adopted(ps_table *t, const uint32_t *last_seen, size_t n);

/* Write-back. dump_dirty() copies every row dirtied since the previous
 * dump into d (on the loop thread: a memcpy per row) and returns the flush
 * generation they belong to; dump_put() sorts them by store key and adds
 * them to a batch as blind puts (on any thread: RocksDB inserts sorted keys
 * into its memtable far faster than random ones, measured in
 * bench/README.md) and frees the copy (d->n stays, for the caller), so
 * that it is not resident beside the batch while RocksDB copies that into
 * a memtable; dump_prepare() then allocates the next dump's room (the
 * rows dirty by then, or as many as this dump if more, and a quarter over)
 * and faults it in, on the write-back thread once the batch is written, so
 * that the loop thread's dump_dirty() finds it ready (a dump that grew
 * past it faulted its new pages on the loop: 0.7-1.6 s under a saturating
 * push load).
 * committed(gen) marks them clean once the batch reached RocksDB.
 * collect() is dump + put in one call. */
typedef struct ps_table_dump {
    ps_store *store;
    int cf;
    size_t rec_size, value_len;  /* record: store key, pad, value */
    size_t n, cap;
    char *recs;                  /* owned */
    bool keep;                   /* dump_put() keeps recs for the next dump (a group's) */
} ps_table_dump;

size_t ps_table_dirty_count(const ps_table *t);
uint64_t ps_table_capacity(const ps_table *t);
size_t ps_table_dump_dirty(ps_table *t, ps_table_dump *d, uint32_t *ret_gen);
void ps_table_dump_put(ps_table_dump *d, ps_store_batch *b);
void ps_table_dump_prepare(const ps_table *t, ps_table_dump *d);
void ps_table_dump_deinit(ps_table_dump *d);
size_t ps_table_collect(ps_table *t, ps_store_batch *b, uint32_t *ret_gen);
void ps_table_committed(ps_table *t, uint32_t gen);

/* Write-back in groups. The buckets are split into `ngroups` groups of
 * consecutive buckets (ps_writeback_group_buckets(): [lo, hi) of group g), each with
 * its own dirty rows and generations, so that a write-back can go a group
 * at a time, each group's rows dumped just before its own batch: no copy
 * of every dirty row at once (shard.c, "Write-back in groups"). The
 * calls above are those of a table of one group, the default.
 * set_groups() only on a table without dirty rows or batches in flight,
 * and more than one group only without admission and ttl_s, whose state
 * (the admission filter, the live count's clock ring) is the whole
 * table's: -EINVAL otherwise.
 * save_group() adds what the table saves with group g's batch: with one
 * group, save_state(); with more, the group's share of the live count
 * ("glive/NAME/g") and the clock (group 0's share: what the others leave
 * of the total, so that it takes the changes no push makes). Any split of
 * the total is right as long as each group's saved share changes only by
 * the pushes to its rows: clear_groups() saves a share of 0 for groups 1
 * on, with group 0's first batch after the split changed (each of them
 * then holds no change since the store's last write-back). load_groups():
 * after load_state(), the shares saved by a store written with
 * `stored_groups` groups (> 1); the total when this table has another
 * number of groups. */
uint32_t ps_table_groups(const ps_table *t);
int ps_table_set_groups(ps_table *t, uint32_t ngroups);
void ps_writeback_group_buckets(uint32_t nbuckets, uint32_t ngroups, uint32_t g, uint32_t *ret_lo,
                                uint32_t *ret_hi);
size_t ps_table_group_dirty(const ps_table *t, uint32_t g);
size_t ps_table_dump_group(ps_table *t, uint32_t g, ps_table_dump *d, uint32_t *ret_gen);
void ps_table_committed_group(ps_table *t, uint32_t g, uint32_t gen);
void ps_table_save_group(ps_table *t, uint32_t g, ps_store_batch *b, int meta_cf);
void ps_table_clear_groups(ps_table *t, ps_store_batch *b, int meta_cf);
int ps_table_load_groups(ps_table *t, uint32_t stored_groups, int meta_cf, char *err,
                         size_t errlen);
/* Live rows the store holds once the last collected batch is committed. */
uint64_t ps_table_persisted_rows(const ps_table *t);
/* Slots of the memory tier ever used: its committed memory, in rows (freed
 * slots are reused before untouched ones). */
uint64_t ps_table_slots_used(const ps_table *t);

/* The table's own state besides its rows: the admission filter, the count
 * of live rows by last push time, and the expiry clock. save() adds it to
 * the write-back batch (call it right after dump_dirty(), on the loop
 * thread, so it describes the same point of the push stream); load() reads
 * it back at open, into the meta column family's "admit/NAME/..." and
 * "live/NAME" keys. State saved under other parameters (another
 * admit_bloom_bits, ttl_s, seed) is dropped: admission starts empty, and the
 * live rows all count as pushed at load time. */
void ps_table_save_state(ps_table *t, ps_store_batch *b, int meta_cf);
int ps_table_load_state(ps_table *t, int meta_cf, char *err, size_t errlen);

/* Housekeeping, from the shard's tick (now_ms monotonic): frees the memory
 * of dead rows a bounded number of slots at a time, and now and then asks
 * RocksDB to compact the table so that its filter drops expired rows and
 * the disk shrinks. Nothing to do for a table without ttl_s or
 * expire_below. */
void ps_table_tick(ps_table *t, uint64_t now_ms);
/* Free the memory of dead rows among the next `budget` slots. Returns how
 * many were freed. */
size_t ps_table_sweep(ps_table *t, size_t budget);

void ps_table_stats_get(const ps_table *t, ps_table_stats *ret);
/* Bytes of memory one row costs in the tier (slab plus index). */
size_t ps_table_row_bytes(const ps_table_config *cfg);
