#pragma once
/* The durable row store: a thin layer over RocksDB's C API.
 *
 * One column family per table ("t.<name>"), one for shard metadata ("meta")
 * and one for dense parameter blocks ("dense"). Row keys are 10 bytes: the
 * bucket (2 bytes, big-endian) then the fid (8 bytes, big-endian), so one
 * bucket is one contiguous key range (DESIGN.md "The shard"). Values are
 * opaque here; server/table.c owns their format.
 *
 * The store is safe to call from several threads, as RocksDB is: the shard's
 * loop thread reads (MultiGet) while the flush thread writes batches. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ps_store ps_store;
typedef struct ps_store_batch ps_store_batch;
typedef struct ps_store_iter ps_store_iter;

#define PS_STORE_KEY_LEN 10

typedef struct ps_store_key {
    uint8_t b[PS_STORE_KEY_LEN];
} ps_store_key;

static inline void ps_store_key_encode(uint16_t bucket, uint64_t fid, ps_store_key *ret) {
    ret->b[0] = (uint8_t)(bucket >> 8);
    ret->b[1] = (uint8_t)bucket;
    for (int i = 0; i < 8; i++)
        ret->b[2 + i] = (uint8_t)(fid >> (56 - 8 * i));
}

static inline uint16_t ps_store_key_bucket(const uint8_t *k) {
    return (uint16_t)((uint16_t)k[0] << 8 | k[1]);
}

static inline uint64_t ps_store_key_fid(const uint8_t *k) {
    uint64_t fid = 0;
    for (int i = 0; i < 8; i++)
        fid = (fid << 8) | k[2 + i];
    return fid;
}

/* A compaction filter: RocksDB calls it, from its compaction threads and
 * possibly from several at once, for each key a compaction of the column
 * family rewrites (the newest version of the key in the compaction's
 * input); returning true drops the key. This is how expired rows leave the
 * disk without a scan (DESIGN.md "The shard"). */
typedef bool (*ps_store_filter_fn)(void *ctx, const void *key, size_t klen, const void *value,
                                   size_t vlen);
typedef struct ps_store_cf_filter {
    ps_store_filter_fn fn;       /* NULL: no filter */
    void *ctx;                   /* owned by the store from ps_store_open() on, */
    void (*free_ctx)(void *ctx); /* which frees it with this once closed */
} ps_store_cf_filter;

typedef struct ps_store_options {
    uint64_t block_cache_mb;     /* 0: PS_DEFAULT_BLOCK_CACHE_MB (config.h) */
    uint64_t write_buffer_mb;    /* memtable size per column family; 0: PS_DEFAULT_WRITE_BUFFER_MB */
    bool sync_writes;            /* fsync every batch (fsync = always) */
    const ps_store_cf_filter *filters; /* NULL, or one per requested cf */
    /* The requested cfs from this index on hold table rows; the ones before
     * it (and "default") hold a few metadata keys, and their memtables go
     * without the bloom filter that a first Pull of a new row needs. */
    size_t first_row_cf;
    /* Open an existing database without writing to it (a checkpoint copy
     * that other readers share): every requested cf must exist, nothing is
     * created, and writes, compactions and checkpoints fail. */
    bool read_only;
} ps_store_options;

/* Open (creating if missing) the database in `dir` with the given column
 * families; cf index i names cf_names[i]. Column families on disk that are
 * not listed are kept (opened, unused). On failure writes RocksDB's message
 * to err. *ret_store is freed with ps_store_close(). */
int ps_store_open(const char *dir, const char *const *cf_names, size_t ncf,
                  const ps_store_options *opts, ps_store **ret_store, char *err, size_t errlen);
void ps_store_close(ps_store *s);

/* Look up n keys, sorted ascending, in one RocksDB MultiGet. For each key
 * found, calls found(ctx, i, value, len); the value is borrowed for the
 * duration of the call. Returns 0, or PS_ESTORE with the message in err. */
typedef void (*ps_store_found_fn)(void *ctx, size_t i, const void *value, size_t len);
int ps_store_multiget(ps_store *s, int cf, const ps_store_key *keys, size_t n, ps_store_found_fn found,
                      void *ctx, char *err, size_t errlen);

/* Point read; *ret_value is malloc'ed (caller frees) or NULL when missing. */
int ps_store_get(ps_store *s, int cf, const void *key, size_t klen, char **ret_value, size_t *ret_len,
                 char *err, size_t errlen);

ps_store_batch *ps_store_batch_new(void);
void ps_store_batch_free(ps_store_batch *b);
void ps_store_batch_put(ps_store_batch *b, ps_store *s, int cf, const void *key, size_t klen,
                        const void *value, size_t vlen);
void ps_store_batch_delete(ps_store_batch *b, ps_store *s, int cf, const void *key, size_t klen);
/* Delete every key in [start, end) (RocksDB DeleteRange: one tombstone). */
void ps_store_batch_delete_range(ps_store_batch *b, ps_store *s, int cf, const void *start,
                                 size_t slen, const void *end, size_t elen);
size_t ps_store_batch_count(const ps_store_batch *b);
/* Make room in b for n more puts of klen-byte keys and vlen-byte values
 * into cf, so that they append without the batch regrowing. A batch grows
 * by doubling, copying itself each time: a write-back of 1M rows held a
 * dead 2/3 copy of itself at its last doubling, beside the dump it was
 * built from (bench/README.md "Memory per row"). Costs a memcpy of the
 * room (its pages are touched now, not as the puts come). Returns 0, or
 * -ENOMEM (b unchanged; puts still work, growing as before). */
int ps_store_batch_reserve(ps_store_batch *b, ps_store *s, int cf, size_t n, size_t klen,
                           size_t vlen);
/* Apply the batch atomically (through RocksDB's WAL). */
int ps_store_write(ps_store *s, ps_store_batch *b, char *err, size_t errlen);
/* The same, and fsync the WAL before returning, whatever sync_writes says
 * (rare writes that must survive a power loss: the cluster map). */
int ps_store_write_sync(ps_store *s, ps_store_batch *b, char *err, size_t errlen);

/* Give back the space of [start, end) of family cf, deleted already (a
 * range tombstone written): the files wholly inside it go now, and the
 * store's compaction thread compacts the rest of the range soon (the files
 * that hold keys on both sides of its ends). Until then a later iteration
 * over the range (rows ingested into it again) walks the deleted keys as
 * well. A close before that leaves them to RocksDB's own compactions. */
int ps_store_reclaim_range(ps_store *s, int cf, const void *start, size_t slen, const void *end,
                           size_t elen, char *err, size_t errlen);

/* Ordered iteration over a column family from `start` (inclusive). */
ps_store_iter *ps_store_iter_new(ps_store *s, int cf, const void *start, size_t slen);
/* The same for a walk over a whole range (a move's copy, a drop, an
 * export): the blocks it reads do not go into the block cache, and the
 * files are read 2 MiB at a time. Measured on 1M rows read cold
 * (bench/README.md): 0.65M rows/s through the cache, whose inserts and
 * evictions cost most of the time, 2.7M without, 4.3-4.9M with the
 * readahead too; and the rows pulls keep hot stay cached. */
ps_store_iter *ps_store_scan_new(ps_store *s, int cf, const void *start, size_t slen);
bool ps_store_iter_valid(ps_store_iter *it);
void ps_store_iter_next(ps_store_iter *it);
const void *ps_store_iter_key(ps_store_iter *it, size_t *ret_len);
const void *ps_store_iter_value(ps_store_iter *it, size_t *ret_len);
void ps_store_iter_free(ps_store_iter *it);

/* Approximate bytes on disk and in memtables for all column families. */
uint64_t ps_store_size(ps_store *s);
/* The same for one column family. */
uint64_t ps_store_cf_size(ps_store *s, int cf);
/* RocksDB's estimate of the bytes compaction has yet to rewrite, all families. */
uint64_t ps_store_pending_compaction_bytes(ps_store *s);
/* Compactions running now (flushes not counted). */
uint32_t ps_store_running_compactions(ps_store *s);
/* Compact the whole column family (its memtable flushed first), so that
 * its compaction filter sees every key and the space of the keys it drops
 * (and of deleted keys) is given back. wait: run it now, on this thread
 * (seconds for a large family); otherwise the store's compaction thread
 * runs it soon and this returns at once (a family asked for twice before
 * its turn is compacted once). */
int ps_store_compact(ps_store *s, int cf, bool wait, char *err, size_t errlen);
/* Start a new memtable for the column family (its current one, if not
 * empty, is flushed in the background; returns without waiting for that).
 * For a large batch of sorted keys written next: RocksDB's skiplist insert
 * is O(1) for a key after every key in the memtable, but a full search from
 * the top level for a key that lands between older entries (bench/README.md
 * "Write-back"). */
int ps_store_switch_memtable(ps_store *s, int cf, char *err, size_t errlen);

/* Consistent, hard-linked copy of the whole database into `dir` (which must
 * not exist). */
int ps_store_checkpoint(ps_store *s, const char *dir, char *err, size_t errlen);

/* A sorted file of one column family's rows built outside the database and
 * then ingested whole (RocksDB SstFileWriter, IngestExternalFile): a bulk
 * load that skips the WAL and the memtables. Keys must come strictly
 * ascending. Nothing in it is durable or visible before ps_store_sst_ingest(). */
typedef struct ps_store_sst ps_store_sst;
int ps_store_sst_open(ps_store *s, int cf, const char *path, ps_store_sst **ret_sst, char *err,
                      size_t errlen);
/* vlen 0: a deletion of the key. */
int ps_store_sst_put(ps_store_sst *w, const void *key, size_t klen, const void *value, size_t vlen,
                     char *err, size_t errlen);
uint64_t ps_store_sst_count(const ps_store_sst *w);
/* Finish the file (fsync'ed) and ingest it into its column family, moved
 * (hard-linked) into the database: durable on return, and newer than
 * every version of its keys written before (a memtable holding any of
 * them is flushed first). A file with no rows is not ingested. */
int ps_store_sst_ingest(ps_store_sst *w, char *err, size_t errlen);
/* Free the writer; the file stays where it is (the caller removes it). */
void ps_store_sst_free(ps_store_sst *w);
