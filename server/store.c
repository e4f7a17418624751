#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <rocksdb/c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "error.h"

struct ps_store {
    rocksdb_t *db;
    rocksdb_options_t *options;
    rocksdb_block_based_table_options_t *table_options;
    rocksdb_cache_t *cache;
    rocksdb_filterpolicy_t *filter; /* owned by table_options */
    rocksdb_readoptions_t *ropts;
    rocksdb_readoptions_t *scan_ropts; /* whole-range walks: the block cache is left alone */
    rocksdb_writeoptions_t *wopts;
    rocksdb_column_family_handle_t **cfs; /* requested ones first, then extras */
    size_t ncf, ncf_open;
    bool read_only;
    /* Column families of metadata (those before first_row_cf, "default",
     * unlisted ones): the shared options without the memtable filter. */
    rocksdb_options_t *meta_options;
    /* Column families with a compaction filter have their own options. */
    rocksdb_options_t **cf_options;       /* per requested cf, or NULL */
    rocksdb_compactionfilter_t **cf_filters;
    size_t ncf_options;
    /* Background compactions: one thread, started on first use; a flag per
     * column family for a whole-family one (ps_store_compact without
     * wait), and a queue of key ranges (ps_store_reclaim_range). */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t compactor;
    bool compactor_started, compactor_stop;
    uint8_t *compact_wanted;     /* per open cf */
    struct compact_range *ranges; /* oldest first */
};

/* A key range of one family to compact, its keys after the struct. */
typedef struct compact_range {
    struct compact_range *next;
    int cf;
    size_t slen, elen;
    unsigned char keys[];
} compact_range;

struct ps_store_batch {
    rocksdb_writebatch_t *wb;
};

struct ps_store_iter {
    rocksdb_iterator_t *it;
};

static int take_error(char *rerr, char *err, size_t errlen) {
    if (!rerr)
        return 0;
    snprintf(err, errlen, "%s", rerr);
    rocksdb_free(rerr);
    return PS_ESTORE;
}

static void configure(ps_store *s, const ps_store_options *o) {
    s->options = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(s->options, 1);
    rocksdb_options_set_create_missing_column_families(s->options, 1);
    /* Two cores: one background job each for flush and compaction keeps
     * compaction from starving the loop thread. */
    rocksdb_options_increase_parallelism(s->options, 2);
    rocksdb_options_set_max_background_jobs(s->options, 2);
    uint64_t write_buffer_mb = o && o->write_buffer_mb ? o->write_buffer_mb : PS_DEFAULT_WRITE_BUFFER_MB;
    rocksdb_options_set_write_buffer_size(s->options, (size_t)write_buffer_mb << 20);
    /* One memtable filling while the last one is flushed, not two: a
     * write-back fills memtables faster than RocksDB flushes them, so a
     * third only waits full in memory (the batch then waits for the flush
     * either way). With 8 MiB faulted in ahead of the rows instead of 32
     * (table.c), this took 50-55 MiB off the peak RSS under pushes at 1M
     * rows, the write-back no slower within this machine's noise
     * (bench/README.md, "Memory per row: the memtables"). */
    rocksdb_options_set_max_write_buffer_number(s->options, 2);
    rocksdb_options_set_level_compaction_dynamic_level_bytes(s->options, 1);
    /* Rows are float32 optimizer state: measured to compress poorly, so the
     * CPU of compressing every block is not worth it. */
    rocksdb_options_set_compression(s->options, rocksdb_no_compression);
    /* Debian builds RocksDB with assertions on, and its info-LOG writer
     * asserts (aborting the shard) when it is used again after a failed
     * write, which a full disk causes. Errors reach us as statuses anyway,
     * so RocksDB logs only fatal events (level 4). */
    rocksdb_options_set_info_log_level(s->options, 4);
    rocksdb_options_set_keep_log_file_num(s->options, 3);
    /* The SST bloom filter below does not cover the memtables, which hold
     * the recent write-backs: without this, the first Pull of a new row
     * searches each memtable's skiplist for it, and row creation spent ~80%
     * of the loop thread there (callgrind, bench/README.md). A whole-key
     * bloom filter per memtable answers "absent" for nearly all of them.
     * Ratio 0.02 of write_buffer_size: 0.32 MiB for a 16 MiB memtable,
     * which holds ~70k rows, ~38 bits a row (0.1 gave 190 bits, and 3.2
     * MiB per memtable allocated and zeroed with it). The families of
     * metadata go without (meta_options below): their filters, 3.2 MiB
     * each of three, were allocated whether written or not. */
    rocksdb_options_set_memtable_whole_key_filtering(s->options, 1);
    rocksdb_options_set_memtable_prefix_bloom_size_ratio(s->options, 0.02);

    s->table_options = rocksdb_block_based_options_create();
    uint64_t block_cache_mb = o && o->block_cache_mb ? o->block_cache_mb : PS_DEFAULT_BLOCK_CACHE_MB;
    s->cache = rocksdb_cache_create_lru((size_t)block_cache_mb << 20);
    rocksdb_block_based_options_set_block_cache(s->table_options, s->cache);
    /* A whole-key bloom filter makes a MultiGet of never-seen keys (the first
     * Pull of new rows) skip the data blocks. */
    s->filter = rocksdb_filterpolicy_create_bloom_full(10);
    rocksdb_block_based_options_set_filter_policy(s->table_options, s->filter);
    rocksdb_block_based_options_set_cache_index_and_filter_blocks(s->table_options, 1);
    rocksdb_block_based_options_set_pin_l0_filter_and_index_blocks_in_cache(s->table_options, 1);
    rocksdb_options_set_block_based_table_factory(s->options, s->table_options);
    s->meta_options = rocksdb_options_create_copy(s->options);
    rocksdb_options_set_memtable_whole_key_filtering(s->meta_options, 0);
    rocksdb_options_set_memtable_prefix_bloom_size_ratio(s->meta_options, 0);

    s->ropts = rocksdb_readoptions_create();
    s->scan_ropts = rocksdb_readoptions_create();
    rocksdb_readoptions_set_fill_cache(s->scan_ropts, 0);
    /* Read 2 MiB at a time, not a pread per 4 KiB block: a move's EXPORT
     * of 1M rows took 0.93 s of the source's CPU, 0.60 s with this. */
    rocksdb_readoptions_set_readahead_size(s->scan_ropts, 2 << 20);
    s->wopts = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->wopts, o && o->sync_writes);
}

typedef struct filter_state {
    ps_store_filter_fn fn;
    void *ctx;
    void (*free_ctx)(void *ctx);
} filter_state;

static void free_filter_state(void *state) {
    filter_state *f = state;
    if (f->free_ctx)
        f->free_ctx(f->ctx);
    free(f);
}

static unsigned char run_filter(void *state, int level, const char *key, size_t klen,
                                const char *value, size_t vlen, char **new_value,
                                size_t *new_vlen, unsigned char *value_changed) {
    (void)level;
    (void)new_value;
    (void)new_vlen;
    *value_changed = 0;
    filter_state *f = state;
    return f->fn(f->ctx, key, klen, value, vlen) ? 1 : 0;
}

static const char *filter_name(void *state) {
    (void)state;
    return "ctrps.expiry";
}

/* Options of a filtered column family: the shared ones plus its filter.
 * Takes every filter's ctx, also on failure. */
static int configure_filters(ps_store *s, const ps_store_cf_filter *filters, size_t ncf) {
    s->cf_options = calloc(ncf + 1, sizeof(*s->cf_options));
    s->cf_filters = calloc(ncf + 1, sizeof(*s->cf_filters));
    int r = s->cf_options && s->cf_filters ? 0 : -ENOMEM;
    if (r == 0)
        s->ncf_options = ncf;
    for (size_t i = 0; filters && i < ncf; i++) {
        if (!filters[i].fn)
            continue;
        filter_state *f = r == 0 ? malloc(sizeof(*f)) : NULL;
        if (!f) {
            if (filters[i].free_ctx)
                filters[i].free_ctx(filters[i].ctx);
            r = -ENOMEM;
            continue;
        }
        *f = (filter_state){filters[i].fn, filters[i].ctx, filters[i].free_ctx};
        /* RocksDB frees the state when the filter is destroyed (at close). */
        s->cf_filters[i] = rocksdb_compactionfilter_create(f, free_filter_state, run_filter, filter_name);
        s->cf_options[i] = rocksdb_options_create_copy(s->options);
        rocksdb_options_set_compaction_filter(s->cf_options[i], s->cf_filters[i]);
    }
    return r;
}

int ps_store_open(const char *dir, const char *const *cf_names, size_t ncf,
                  const ps_store_options *opts, ps_store **ret_store, char *err, size_t errlen) {
    ps_store *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    configure(s, opts);
    if (configure_filters(s, opts ? opts->filters : NULL, ncf) < 0) {
        ps_store_close(s);
        return -ENOMEM;
    }

    /* RocksDB refuses to open a database without naming every column family
     * it holds, so list the existing ones and open the union. */
    char *rerr = NULL;
    size_t nexisting = 0;
    char **existing = rocksdb_list_column_families(s->options, dir, &nexisting, &rerr);
    if (rerr) { /* no database yet */
        rocksdb_free(rerr);
        rerr = NULL;
        if (existing)
            rocksdb_list_column_families_destroy(existing, 0);
        existing = NULL;
        nexisting = 0;
    }
    size_t cap = ncf + nexisting + 1;
    const char **names = calloc(cap, sizeof(char *));
    const rocksdb_options_t **cfopts = calloc(cap, sizeof(*cfopts));
    s->cfs = calloc(cap, sizeof(*s->cfs));
    s->compact_wanted = calloc(cap, 1);
    int r = -ENOMEM;
    if (!names || !cfopts || !s->cfs || !s->compact_wanted)
        goto out;
    size_t n = 0;
    for (size_t i = 0; i < ncf; i++)
        names[n++] = cf_names[i];
    bool has_default = false;
    for (size_t i = 0; i < ncf; i++)
        has_default |= !strcmp(cf_names[i], "default");
    for (size_t e = 0; e < nexisting; e++) {
        bool listed = false;
        for (size_t i = 0; i < ncf; i++)
            listed |= !strcmp(existing[e], cf_names[i]);
        if (!listed) {
            names[n++] = existing[e];
            has_default |= !strcmp(existing[e], "default");
        }
    }
    if (!has_default)
        names[n++] = "default";
    /* A read-only store never writes a memtable: none needs a filter. */
    size_t first_row_cf = opts && opts->read_only ? n : opts ? opts->first_row_cf : 0;
    for (size_t i = 0; i < n; i++) {
        if (i < ncf && s->cf_options[i])
            cfopts[i] = s->cf_options[i];
        else
            cfopts[i] = i < ncf && i >= first_row_cf ? s->options : s->meta_options;
    }
    if (opts && opts->read_only) {
        if (!existing) {
            snprintf(err, errlen, "%s: no RocksDB database here", dir);
            r = PS_ESTORE;
            goto out;
        }
        s->db = rocksdb_open_for_read_only_column_families(s->options, dir, (int)n, names, cfopts,
                                                           s->cfs, 0, &rerr);
    } else {
        s->db = rocksdb_open_column_families(s->options, dir, (int)n, names, cfopts, s->cfs, &rerr);
    }
    r = take_error(rerr, err, errlen);
    if (r == 0) {
        s->ncf = ncf;
        s->ncf_open = n;
        s->read_only = opts && opts->read_only;
    }
out:
    if (existing)
        rocksdb_list_column_families_destroy(existing, nexisting);
    free(names);
    free(cfopts);
    if (r < 0) {
        ps_store_close(s);
        return r;
    }
    *ret_store = s;
    return 0;
}

/* Every memtable to an SST file before close. RocksDB does not flush at
 * close while its WAL holds the data, so the next open replayed the WAL of
 * everything written since the last flush (the shard's final write-back:
 * ~1 s of CPU for 500k rows, most of a clean restart; bench/README.md
 * "Shard restart"), and flushed the result to L0 anyway. Flushed here, the
 * WAL is obsolete and the next open has nothing to replay. On failure
 * (a full disk) the WAL still holds every write, and the next open
 * replays it as after a crash. */
static void flush_all(ps_store *s) {
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    if (!fo)
        return;
    rocksdb_flushoptions_set_wait(fo, 1);
    for (size_t i = 0; i < s->ncf_open; i++) {
        char *rerr = NULL;
        rocksdb_flush_cf(s->db, fo, s->cfs[i], &rerr);
        rocksdb_free(rerr);
    }
    rocksdb_flushoptions_destroy(fo);
}

void ps_store_close(ps_store *s) {
    if (!s)
        return;
    if (s->compactor_started) {
        pthread_mutex_lock(&s->mu);
        s->compactor_stop = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        /* A running manual compaction returns early once paused. */
        rocksdb_disable_manual_compaction(s->db);
        pthread_join(s->compactor, NULL);
    }
    while (s->ranges) { /* not begun: left to RocksDB's own compactions */
        compact_range *next = s->ranges->next;
        free(s->ranges);
        s->ranges = next;
    }
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->compact_wanted);
    if (s->db && !s->read_only)
        flush_all(s);
    if (s->db) {
        for (size_t i = 0; i < s->ncf_open; i++)
            rocksdb_column_family_handle_destroy(s->cfs[i]);
        rocksdb_close(s->db);
    }
    free(s->cfs);
    for (size_t i = 0; i < s->ncf_options; i++) {
        if (s->cf_options[i])
            rocksdb_options_destroy(s->cf_options[i]);
        if (s->cf_filters[i])
            rocksdb_compactionfilter_destroy(s->cf_filters[i]);
    }
    free(s->cf_options);
    free(s->cf_filters);
    if (s->ropts)
        rocksdb_readoptions_destroy(s->ropts);
    if (s->scan_ropts)
        rocksdb_readoptions_destroy(s->scan_ropts);
    if (s->wopts)
        rocksdb_writeoptions_destroy(s->wopts);
    if (s->options)
        rocksdb_options_destroy(s->options);
    if (s->meta_options)
        rocksdb_options_destroy(s->meta_options);
    if (s->table_options)
        rocksdb_block_based_options_destroy(s->table_options);
    if (s->cache)
        rocksdb_cache_destroy(s->cache);
    free(s);
}

int ps_store_multiget(ps_store *s, int cf, const ps_store_key *keys, size_t n, ps_store_found_fn found,
                      void *ctx, char *err, size_t errlen) {
    if (n == 0)
        return 0;
    /* One allocation for the three per-key arrays. */
    size_t bytes = n * (sizeof(char *) + sizeof(size_t) + sizeof(rocksdb_pinnableslice_t *) + sizeof(char *));
    char *mem = malloc(bytes);
    if (!mem)
        return -ENOMEM;
    const char **klist = (const char **)mem;
    size_t *klens = (size_t *)(klist + n);
    rocksdb_pinnableslice_t **vals = (rocksdb_pinnableslice_t **)(klens + n);
    char **errs = (char **)(vals + n);
    for (size_t i = 0; i < n; i++) {
        klist[i] = (const char *)keys[i].b;
        klens[i] = PS_STORE_KEY_LEN;
        errs[i] = NULL;
    }
    rocksdb_batched_multi_get_cf(s->db, s->ropts, s->cfs[cf], n, klist, klens, vals, errs, true);
    int r = 0;
    for (size_t i = 0; i < n; i++) {
        if (errs[i]) {
            if (r == 0)
                r = take_error(errs[i], err, errlen);
            else
                rocksdb_free(errs[i]);
        }
        if (vals[i]) {
            size_t len;
            const char *v = rocksdb_pinnableslice_value(vals[i], &len);
            if (r == 0)
                found(ctx, i, v, len);
            rocksdb_pinnableslice_destroy(vals[i]);
        }
    }
    free(mem);
    return r;
}

int ps_store_get(ps_store *s, int cf, const void *key, size_t klen, char **ret_value, size_t *ret_len,
                 char *err, size_t errlen) {
    char *rerr = NULL;
    size_t len = 0;
    char *v = rocksdb_get_cf(s->db, s->ropts, s->cfs[cf], key, klen, &len, &rerr);
    int r = take_error(rerr, err, errlen);
    if (r < 0)
        return r;
    *ret_value = v;
    *ret_len = len;
    return 0;
}

ps_store_batch *ps_store_batch_new(void) {
    ps_store_batch *b = malloc(sizeof(*b));
    if (!b)
        return NULL;
    b->wb = rocksdb_writebatch_create();
    return b;
}

void ps_store_batch_free(ps_store_batch *b) {
    if (!b)
        return;
    rocksdb_writebatch_destroy(b->wb);
    free(b);
}

void ps_store_batch_put(ps_store_batch *b, ps_store *s, int cf, const void *key, size_t klen,
                        const void *value, size_t vlen) {
    rocksdb_writebatch_put_cf(b->wb, s->cfs[cf], key, klen, value, vlen);
}

void ps_store_batch_delete_range(ps_store_batch *b, ps_store *s, int cf, const void *start,
                                 size_t slen, const void *end, size_t elen) {
    rocksdb_writebatch_delete_range_cf(b->wb, s->cfs[cf], start, slen, end, elen);
}

void ps_store_batch_delete(ps_store_batch *b, ps_store *s, int cf, const void *key, size_t klen) {
    rocksdb_writebatch_delete_cf(b->wb, s->cfs[cf], key, klen);
}

static int compact_later(ps_store *s, int cf, compact_range *cr, char *err, size_t errlen);

int ps_store_reclaim_range(ps_store *s, int cf, const void *start, size_t slen, const void *end,
                           size_t elen, char *err, size_t errlen) {
    char *rerr = NULL;
    rocksdb_delete_file_in_range_cf(s->db, s->cfs[cf], start, slen, end, elen, &rerr);
    int r = take_error(rerr, err, errlen);
    if (r < 0)
        return r;
    compact_range *cr = malloc(sizeof(*cr) + slen + elen);
    if (!cr)
        return -ENOMEM;
    *cr = (compact_range){.cf = cf, .slen = slen, .elen = elen};
    memcpy(cr->keys, start, slen);
    memcpy(cr->keys + slen, end, elen);
    return compact_later(s, cf, cr, err, errlen);
}

size_t ps_store_batch_count(const ps_store_batch *b) { return (size_t)rocksdb_writebatch_count(b->wb); }

static size_t varint_len(uint64_t v) {
    size_t n = 1;
    for (; v >= 128; v >>= 7)
        n++;
    return n;
}

/* The C API has no reserve. A WriteBatch is a std::string that a put
 * appends to; a rollback to a save point shrinks the string, which keeps
 * its capacity. So: one put of a value as large as the room wanted (from
 * calloc: pages the kernel maps to its zero page, never resident), then a
 * rollback. */
int ps_store_batch_reserve(ps_store_batch *b, ps_store *s, int cf, size_t n, size_t klen,
                           size_t vlen) {
    /* A put in a batch: type byte, column family id (not for the default
     * family), then the key and the value, each after its varint length. */
    uint32_t id = rocksdb_column_family_handle_get_id(s->cfs[cf]);
    size_t one = 1 + (id ? varint_len(id) : 0) + varint_len(klen) + klen + varint_len(vlen) + vlen;
    if (n == 0 || one > (UINT32_MAX - 64) / n)
        return n == 0 ? 0 : -ENOMEM; /* a value of a put is < 4 GiB */
    size_t room = n * one;
    char *zeros = calloc(1, room);
    if (!zeros)
        return -ENOMEM;
    rocksdb_writebatch_set_save_point(b->wb);
    rocksdb_writebatch_put(b->wb, "", 0, zeros, room);
    free(zeros);
    char *rerr = NULL;
    rocksdb_writebatch_rollback_to_save_point(b->wb, &rerr);
    if (rerr) { /* cannot happen: the save point was just set */
        rocksdb_free(rerr);
        abort();
    }
    return 0;
}

int ps_store_write(ps_store *s, ps_store_batch *b, char *err, size_t errlen) {
    char *rerr = NULL;
    rocksdb_write(s->db, s->wopts, b->wb, &rerr);
    return take_error(rerr, err, errlen);
}

int ps_store_write_sync(ps_store *s, ps_store_batch *b, char *err, size_t errlen) {
    rocksdb_writeoptions_t *w = rocksdb_writeoptions_create();
    if (!w)
        return -ENOMEM;
    rocksdb_writeoptions_set_sync(w, 1);
    char *rerr = NULL;
    rocksdb_write(s->db, w, b->wb, &rerr);
    rocksdb_writeoptions_destroy(w);
    return take_error(rerr, err, errlen);
}

static ps_store_iter *iter_new(ps_store *s, const rocksdb_readoptions_t *ro, int cf,
                               const void *start, size_t slen) {
    ps_store_iter *it = malloc(sizeof(*it));
    if (!it)
        return NULL;
    it->it = rocksdb_create_iterator_cf(s->db, ro, s->cfs[cf]);
    if (slen)
        rocksdb_iter_seek(it->it, start, slen);
    else
        rocksdb_iter_seek_to_first(it->it);
    return it;
}

ps_store_iter *ps_store_iter_new(ps_store *s, int cf, const void *start, size_t slen) {
    return iter_new(s, s->ropts, cf, start, slen);
}

ps_store_iter *ps_store_scan_new(ps_store *s, int cf, const void *start, size_t slen) {
    return iter_new(s, s->scan_ropts, cf, start, slen);
}

bool ps_store_iter_valid(ps_store_iter *it) { return rocksdb_iter_valid(it->it); }
void ps_store_iter_next(ps_store_iter *it) { rocksdb_iter_next(it->it); }

const void *ps_store_iter_key(ps_store_iter *it, size_t *ret_len) {
    return rocksdb_iter_key(it->it, ret_len);
}

const void *ps_store_iter_value(ps_store_iter *it, size_t *ret_len) {
    return rocksdb_iter_value(it->it, ret_len);
}

void ps_store_iter_free(ps_store_iter *it) {
    if (!it)
        return;
    rocksdb_iter_destroy(it->it);
    free(it);
}

static uint64_t cf_property(ps_store *s, size_t cf, const char *name) {
    char *v = rocksdb_property_value_cf(s->db, s->cfs[cf], name);
    uint64_t n = v ? strtoull(v, NULL, 10) : 0;
    rocksdb_free(v);
    return n;
}

uint64_t ps_store_cf_size(ps_store *s, int cf) {
    return cf_property(s, (size_t)cf, "rocksdb.live-sst-files-size") +
           cf_property(s, (size_t)cf, "rocksdb.cur-size-all-mem-tables");
}

uint64_t ps_store_size(ps_store *s) {
    uint64_t total = 0;
    for (size_t i = 0; i < s->ncf_open; i++)
        total += ps_store_cf_size(s, (int)i);
    return total;
}

uint64_t ps_store_pending_compaction_bytes(ps_store *s) {
    uint64_t total = 0;
    for (size_t i = 0; i < s->ncf_open; i++)
        total += cf_property(s, i, "rocksdb.estimate-pending-compaction-bytes");
    return total;
}

uint32_t ps_store_running_compactions(ps_store *s) {
    uint64_t n = 0;
    return rocksdb_property_int(s->db, "rocksdb.num-running-compactions", &n) == 0 ? (uint32_t)n : 0;
}

/* Compact [start, end) of family cf, or the whole family with NULL ends. */
static int compact_now(ps_store *s, size_t cf, const void *start, size_t slen, const void *end,
                       size_t elen) {
    rocksdb_compactoptions_t *o = rocksdb_compactoptions_create();
    if (!o)
        return -ENOMEM;
    /* Automatic compactions keep running beside this one. It flushes the
     * family's memtable first, so the filter sees every row. */
    rocksdb_compactoptions_set_exclusive_manual_compaction(o, 0);
    rocksdb_compact_range_cf_opt(s->db, s->cfs[cf], o, start, slen, end, elen);
    rocksdb_compactoptions_destroy(o);
    return 0;
}

static void *compactor(void *arg) {
    ps_store *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->compactor_stop) {
        compact_range *cr = s->ranges;
        if (cr) {
            s->ranges = cr->next;
            pthread_mutex_unlock(&s->mu);
            compact_now(s, (size_t)cr->cf, cr->keys, cr->slen, cr->keys + cr->slen, cr->elen);
            free(cr);
            pthread_mutex_lock(&s->mu);
            continue;
        }
        size_t cf = 0;
        while (cf < s->ncf_open && !s->compact_wanted[cf])
            cf++;
        if (cf == s->ncf_open) {
            pthread_cond_wait(&s->cv, &s->mu);
            continue;
        }
        s->compact_wanted[cf] = 0;
        pthread_mutex_unlock(&s->mu);
        compact_now(s, cf, NULL, 0, NULL, 0);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Hand work to the compaction thread (started now if need be): a range, or
 * with cr NULL the whole family cf. cr is taken. */
static int compact_later(ps_store *s, int cf, compact_range *cr, char *err, size_t errlen) {
    int r = 0;
    pthread_mutex_lock(&s->mu);
    if (!s->compactor_started) {
        r = -pthread_create(&s->compactor, NULL, compactor, s);
        s->compactor_started = r == 0;
    }
    if (r == 0 && cr) {
        compact_range **tail = &s->ranges;
        while (*tail)
            tail = &(*tail)->next;
        *tail = cr;
    } else if (r == 0) {
        s->compact_wanted[cf] = 1;
    } else {
        free(cr);
        snprintf(err, errlen, "compaction thread: %s", strerror(-r));
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return r;
}

int ps_store_compact(ps_store *s, int cf, bool wait, char *err, size_t errlen) {
    return wait ? compact_now(s, (size_t)cf, NULL, 0, NULL, 0)
                : compact_later(s, cf, NULL, err, errlen);
}

int ps_store_switch_memtable(ps_store *s, int cf, char *err, size_t errlen) {
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    if (!fo)
        return -ENOMEM;
    rocksdb_flushoptions_set_wait(fo, 0);
    char *rerr = NULL;
    rocksdb_flush_cf(s->db, fo, s->cfs[cf], &rerr);
    rocksdb_flushoptions_destroy(fo);
    return take_error(rerr, err, errlen);
}

int ps_store_checkpoint(ps_store *s, const char *dir, char *err, size_t errlen) {
    char *rerr = NULL;
    rocksdb_checkpoint_t *cp = rocksdb_checkpoint_object_create(s->db, &rerr);
    int r = take_error(rerr, err, errlen);
    if (r < 0)
        return r;
    /* log_size_for_flush = 0: flush memtables so the copy needs no WAL. */
    rocksdb_checkpoint_create(cp, dir, 0, &rerr);
    rocksdb_checkpoint_object_destroy(cp);
    return take_error(rerr, err, errlen);
}

struct ps_store_sst {
    ps_store *s;
    int cf;
    rocksdb_envoptions_t *env;
    rocksdb_sstfilewriter_t *w;
    char *path;
    uint64_t n;
    bool finished;
};

int ps_store_sst_open(ps_store *s, int cf, const char *path, ps_store_sst **ret_sst, char *err,
                      size_t errlen) {
    ps_store_sst *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->s = s;
    w->cf = cf;
    w->path = strdup(path);
    w->env = rocksdb_envoptions_create();
    /* The family's own options: the file's table format is the family's. */
    const rocksdb_options_t *o = (size_t)cf < s->ncf_options && s->cf_options[cf]
                                     ? s->cf_options[cf]
                                     : s->options;
    w->w = w->env ? rocksdb_sstfilewriter_create(w->env, o) : NULL;
    if (!w->path || !w->w) {
        ps_store_sst_free(w);
        return -ENOMEM;
    }
    char *rerr = NULL;
    rocksdb_sstfilewriter_open(w->w, path, &rerr);
    int r = take_error(rerr, err, errlen);
    if (r < 0) {
        ps_store_sst_free(w);
        return r;
    }
    *ret_sst = w;
    return 0;
}

int ps_store_sst_put(ps_store_sst *w, const void *key, size_t klen, const void *value, size_t vlen,
                     char *err, size_t errlen) {
    char *rerr = NULL;
    if (vlen)
        rocksdb_sstfilewriter_put(w->w, key, klen, value, vlen, &rerr);
    else
        rocksdb_sstfilewriter_delete(w->w, key, klen, &rerr);
    int r = take_error(rerr, err, errlen);
    w->n += r == 0;
    return r;
}

uint64_t ps_store_sst_count(const ps_store_sst *w) { return w->n; }

/* The writer drops the file it writes from the page cache as it goes: the
 * rows ingested from it, read next (the range's pulls, a move onwards),
 * would come from disk. The kernel reads it back (asynchronously) on
 * WILLNEED, at most 8 MiB a call here: hence the windows. The file keeps
 * its pages as the ingest moves it into the store (a hard link). */
#define READAHEAD_WINDOW (8 << 20)

static void readahead_file(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) == 0)
        for (off_t at = 0; at < st.st_size; at += READAHEAD_WINDOW)
            (void)posix_fadvise(fd, at, READAHEAD_WINDOW, POSIX_FADV_WILLNEED);
    close(fd);
}

int ps_store_sst_ingest(ps_store_sst *w, char *err, size_t errlen) {
    if (!w->n || w->finished)
        return 0;
    char *rerr = NULL;
    rocksdb_sstfilewriter_finish(w->w, &rerr);
    int r = take_error(rerr, err, errlen);
    if (r < 0)
        return r;
    w->finished = true;
    readahead_file(w->path);
    rocksdb_ingestexternalfileoptions_t *io = rocksdb_ingestexternalfileoptions_create();
    if (!io)
        return -ENOMEM;
    rocksdb_ingestexternalfileoptions_set_move_files(io, 1);
    /* Rows written since the file began (none, by the caller's protocol)
     * would be overwritten: the file takes a sequence number above them. */
    rocksdb_ingestexternalfileoptions_set_allow_global_seqno(io, 1);
    rocksdb_ingestexternalfileoptions_set_allow_blocking_flush(io, 1);
    const char *files[1] = {w->path};
    rocksdb_ingest_external_file_cf(w->s->db, w->s->cfs[w->cf], files, 1, io, &rerr);
    rocksdb_ingestexternalfileoptions_destroy(io);
    return take_error(rerr, err, errlen);
}

void ps_store_sst_free(ps_store_sst *w) {
    if (!w)
        return;
    if (w->w)
        rocksdb_sstfilewriter_destroy(w->w);
    if (w->env)
        rocksdb_envoptions_destroy(w->env);
    free(w->path);
    free(w);
}
