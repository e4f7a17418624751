/* The in-memory tier of one table.
 *
 * Layout. Rows live in a slab of fixed-size slots (header + optimizer state),
 * allocated once for the table's capacity; the OS commits pages as slots are
 * first used. A linear-probing index maps fid -> slot; its keys sit in their
 * own array so a probe touches one cache line, not the slab. Removal uses
 * backward-shift deletion, so there are no tombstones and probe lengths stay
 * short at the 50% maximum load we size for.
 *
 * Dirty tracking by generation. `gen` is the current write-back generation;
 * a row modified in generation g has row->gen = g and was appended to the
 * dirty list once. collect() writes the list, and bumps gen; committed(g)
 * advances committed_gen. A row is dirty iff row->gen > committed_gen, and
 * rows loaded from RocksDB have gen 0. So "clean" always means "RocksDB holds
 * this exact state", which is what makes eviction of clean rows safe.
 *
 * Eviction is CLOCK over the slots: a row touched since the hand last passed
 * gets a second chance; dirty rows are skipped; rows touched by the current
 * request (row->op == op) are skipped, which pins every row a request
 * resolved until the request is done.
 *
 * A request resolves all its keys before changing anything (memory lookups,
 * one sorted MultiGet for the misses, creation), then applies; if resolution
 * fails nothing was modified, which gives Push its all-or-nothing rule. */

#include "table.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "keys.h"
#include "optim.h"

#define ROW_PERSISTED 0x1        /* RocksDB holds a version of this row */
#define ROW_REF 0x2              /* CLOCK reference bit */
#define ROW_FREE 0x4             /* slot holds no row (given back by a failed request) */

#define EMPTY UINT32_MAX

typedef struct row {
    uint64_t key;
    uint32_t gen;                /* write-back generation of the last change; 0 = clean */
    uint32_t op;                 /* last request that resolved it (pin) */
    uint32_t updates;            /* pushes applied */
    uint32_t last_seen;          /* unix seconds */
    uint16_t bucket;
    uint16_t flags;
    uint32_t pad;
    float state[];
} row;

/* Stored value: this header, then state_width little-endian floats. */
typedef struct value_header {
    uint8_t version;
    uint8_t flags;
    uint16_t reserved;
    uint32_t width;
    uint32_t updates;
    uint32_t last_seen;
} value_header;

#define VALUE_VERSION 1

typedef struct miss {
    ps_store_key skey;
    size_t idx;                  /* position in the request */
} miss;

struct ps_table {
    const ps_table_config *cfg;
    uint32_t nbuckets, dim, width;
    ps_store *store;
    int cf;

    size_t row_size;
    char *slab;
    uint64_t capacity, used, nfree;
    uint64_t hand;

    uint64_t *ikeys;
    uint32_t *islots;
    uint64_t imask;

    uint32_t gen, committed_gen, op;
    uint32_t *dirty;             /* slots dirtied in generation `gen` */
    size_t ndirty, dirty_cap;
    /* Generations dumped for write-back and not committed yet, oldest
     * first, each with its rows that have not been changed since (those
     * moved on to a later generation): with ndirty, the rows awaiting
     * write-back, without scanning the slab. Usually one entry. */
    struct pending_gen {
        uint32_t gen;
        uint64_t rows;
    } *pending;
    size_t npending, pending_cap;
    uint64_t persisted_rows, new_rows;

    uint32_t now;
    bool read_only;              /* refuse to create rows */
    ps_table_make_room_fn make_room;
    void *make_room_ctx;

    /* Per-request scratch, grown on demand and kept. */
    row **rows;
    miss *misses;
    float *w_init;
    uint8_t *finite;
    size_t scratch_cap;

    ps_table_stats st;
};

static inline row *slot_row(const ps_table *t, uint32_t slot) {
    return (row *)(t->slab + (size_t)slot * t->row_size);
}

static inline uint64_t index_home(const ps_table *t, uint64_t key) {
    /* High bits of the mix: the bucket uses the low ones. */
    return (ps_mix64(key) >> 17) & t->imask;
}

static uint32_t index_find(const ps_table *t, uint64_t key) {
    for (uint64_t i = index_home(t, key);; i = (i + 1) & t->imask) {
        uint32_t s = t->islots[i];
        if (s == EMPTY)
            return EMPTY;
        if (t->ikeys[i] == key)
            return s;
    }
}

static void index_insert(ps_table *t, uint64_t key, uint32_t slot) {
    uint64_t i = index_home(t, key);
    while (t->islots[i] != EMPTY)
        i = (i + 1) & t->imask;
    t->ikeys[i] = key;
    t->islots[i] = slot;
}

static void index_remove(ps_table *t, uint64_t key) {
    uint64_t i = index_home(t, key);
    while (t->ikeys[i] != key || t->islots[i] == EMPTY)
        i = (i + 1) & t->imask;
    /* Backward shift: pull later entries of the cluster into the hole when
     * the hole lies on their probe path. */
    uint64_t hole = i;
    for (uint64_t j = (i + 1) & t->imask; t->islots[j] != EMPTY; j = (j + 1) & t->imask) {
        uint64_t home = index_home(t, t->ikeys[j]);
        bool on_path = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (on_path) {
            t->ikeys[hole] = t->ikeys[j];
            t->islots[hole] = t->islots[j];
            hole = j;
        }
    }
    t->islots[hole] = EMPTY;
}

size_t ps_table_row_bytes(const ps_table_config *cfg) {
    size_t width = ps_optim_state_width(&cfg->opt, cfg->dim);
    size_t row_size = (sizeof(row) + width * sizeof(float) + 7) & ~(size_t)7;
    /* The index holds two entries per row at 50% load. */
    return row_size + 2 * (sizeof(uint64_t) + sizeof(uint32_t));
}

int ps_table_new(const ps_table_config *cfg, uint32_t nbuckets, uint64_t capacity, ps_store *store,
                 int cf, uint64_t persisted_rows, ps_table **ret_table) {
    if (capacity < 16)
        capacity = 16;
    ps_table *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->cfg = cfg;
    t->nbuckets = nbuckets;
    t->dim = cfg->dim;
    t->width = ps_optim_state_width(&cfg->opt, cfg->dim);
    t->store = store;
    t->cf = cf;
    t->row_size = (sizeof(row) + t->width * sizeof(float) + 7) & ~(size_t)7;
    t->capacity = capacity;
    t->gen = 1;
    t->persisted_rows = persisted_rows;
    uint64_t isize = 16;
    while (isize < 2 * capacity)
        isize <<= 1;
    t->imask = isize - 1;
    /* malloc, not calloc, for the slab: pages are committed on first use. */
    t->slab = malloc(capacity * t->row_size);
    t->ikeys = malloc(isize * sizeof(uint64_t));
    t->islots = malloc(isize * sizeof(uint32_t));
    if (!t->slab || !t->ikeys || !t->islots || capacity >= EMPTY) {
        ps_table_free(t);
        return -ENOMEM;
    }
    memset(t->islots, 0xff, isize * sizeof(uint32_t));
    *ret_table = t;
    return 0;
}

void ps_table_free(ps_table *t) {
    if (!t)
        return;
    free(t->slab);
    free(t->ikeys);
    free(t->islots);
    free(t->dirty);
    free(t->pending);
    free(t->rows);
    free(t->misses);
    free(t->w_init);
    free(t->finite);
    free(t);
}

void ps_table_set_make_room(ps_table *t, ps_table_make_room_fn fn, void *ctx) {
    t->make_room = fn;
    t->make_room_ctx = ctx;
}

void ps_table_set_clock(ps_table *t, uint32_t now_s) { t->now = now_s; }
void ps_table_set_read_only(ps_table *t, bool read_only) { t->read_only = read_only; }
const ps_table_config *ps_table_config_of(const ps_table *t) { return t->cfg; }
uint32_t ps_table_dim(const ps_table *t) { return t->dim; }
uint32_t ps_table_state_width(const ps_table *t) { return t->width; }
int ps_table_cf(const ps_table *t) { return t->cf; }

static int reserve_scratch(ps_table *t, size_t n) {
    if (n <= t->scratch_cap)
        return 0;
    size_t cap = t->scratch_cap ? t->scratch_cap : 256;
    while (cap < n)
        cap *= 2;
    row **rows = realloc(t->rows, cap * sizeof(*rows));
    if (rows)
        t->rows = rows;
    miss *misses = realloc(t->misses, cap * sizeof(*misses));
    if (misses)
        t->misses = misses;
    uint8_t *finite = realloc(t->finite, cap);
    if (finite)
        t->finite = finite;
    if (!rows || !misses || !finite)
        return -ENOMEM;
    if (!t->w_init && !(t->w_init = malloc(t->dim * sizeof(float))))
        return -ENOMEM;
    t->scratch_cap = cap;
    return 0;
}

static bool is_dirty(const ps_table *t, const row *r) { return r->gen > t->committed_gen; }

static inline void prefetch_row(const ps_table *t, const row *r) {
    for (size_t off = 0; off < t->row_size; off += 64)
        __builtin_prefetch((const char *)r + off, 1);
}

static void mark_dirty(ps_table *t, row *r) {
    if (r->gen == t->gen)
        return;
    if (is_dirty(t, r)) /* leaves a batch in flight for this generation */
        for (size_t i = 0; i < t->npending; i++)
            if (t->pending[i].gen == r->gen) {
                t->pending[i].rows--;
                break;
            }
    if (t->ndirty == t->dirty_cap) {
        size_t cap = t->dirty_cap ? 2 * t->dirty_cap : 1024;
        uint32_t *d = realloc(t->dirty, cap * sizeof(*d));
        if (!d)
            abort(); /* cannot lose track of a dirty row; grows by doubling, so rare */
        t->dirty = d;
        t->dirty_cap = cap;
    }
    r->gen = t->gen;
    t->dirty[t->ndirty++] = (uint32_t)(((char *)r - t->slab) / t->row_size);
}

/* A free slot: a never-used one, else a CLOCK victim. Returns EMPTY when
 * every row is dirty or pinned by the current request. */
static uint32_t take_slot(ps_table *t) {
    if (t->used < t->capacity) {
        slot_row(t, (uint32_t)t->used)->flags = 0;
        return (uint32_t)t->used++;
    }
    for (uint64_t scanned = 0; scanned < 2 * t->capacity; scanned++) {
        uint32_t s = (uint32_t)t->hand;
        t->hand = t->hand + 1 == t->capacity ? 0 : t->hand + 1;
        row *r = slot_row(t, s);
        if (r->op == t->op)
            continue;
        if (r->flags & ROW_FREE)
            return s;
        if (is_dirty(t, r))
            continue;
        if (r->flags & ROW_REF) {
            r->flags &= (uint16_t)~ROW_REF;
            continue;
        }
        index_remove(t, r->key);
        t->st.evictions++;
        return s;
    }
    return EMPTY;
}

/* Take a slot and hold it, empty, for the current request: it is pinned
 * and marked free, so neither a later take nor a flush touches it. */
static uint32_t acquire_slot(ps_table *t, char *err, size_t errlen) {
    uint32_t s = take_slot(t);
    if (s == EMPTY && t->make_room && t->make_room(t->make_room_ctx) == 0)
        s = take_slot(t);
    if (s == EMPTY) {
        snprintf(err, errlen,
                 "table %s: memory tier (%llu rows) is full of rows this request uses or that "
                 "await write-back; raise memory_mb or send fewer keys per request",
                 t->cfg->name, (unsigned long long)t->capacity);
        return EMPTY;
    }
    row *r = slot_row(t, s);
    if (!(r->flags & ROW_FREE))
        t->nfree++;
    r->flags = ROW_FREE;
    r->gen = 0;
    r->op = t->op;
    return s;
}

/* Put key's row into a slot from acquire_slot(). */
static row *place_row(ps_table *t, uint32_t s, uint64_t key, uint16_t bucket) {
    row *r = slot_row(t, s);
    t->nfree--;
    r->key = key;
    r->gen = 0;
    r->op = t->op;
    r->updates = 0;
    r->last_seen = t->now;
    r->bucket = bucket;
    r->flags = ROW_REF;
    index_insert(t, key, s);
    return r;
}

static row *new_row(ps_table *t, uint64_t key, uint16_t bucket, char *err, size_t errlen) {
    uint32_t s = acquire_slot(t, err, errlen);
    return s == EMPTY ? NULL : place_row(t, s, key, bucket);
}

static int cmp_miss(const void *a, const void *b) {
    return memcmp(((const miss *)a)->skey.b, ((const miss *)b)->skey.b, PS_STORE_KEY_LEN);
}

typedef struct load_ctx {
    ps_table *t;
    miss *misses;
    int err;
    char *errbuf;
    size_t errlen;
    row **found;                 /* per distinct miss: loaded row or NULL */
} load_ctx;

static void on_found(void *ctx, size_t i, const void *value, size_t len) {
    load_ctx *lc = ctx;
    ps_table *t = lc->t;
    if (lc->err)
        return;
    value_header h;
    if (len < sizeof(h)) {
        lc->err = PS_ESTORE;
        snprintf(lc->errbuf, lc->errlen, "table %s: stored row is truncated", t->cfg->name);
        return;
    }
    memcpy(&h, value, sizeof(h));
    if (h.version != VALUE_VERSION || h.width != t->width || len != sizeof(h) + t->width * sizeof(float)) {
        lc->err = PS_ESTORE;
        snprintf(lc->errbuf, lc->errlen,
                 "table %s: stored row has version %u width %u, expected version %u width %u",
                 t->cfg->name, h.version, h.width, VALUE_VERSION, t->width);
        return;
    }
    miss *m = &lc->misses[i];
    uint64_t key = ps_store_key_fid(m->skey.b);
    uint16_t bucket = (uint16_t)((m->skey.b[0] << 8) | m->skey.b[1]);
    row *r = new_row(t, key, bucket, lc->errbuf, lc->errlen);
    if (!r) {
        lc->err = PS_ELIMIT;
        return;
    }
    r->flags |= ROW_PERSISTED;
    r->updates = h.updates;
    r->last_seen = h.last_seen;
    memcpy(r->state, (const char *)value + sizeof(h), t->width * sizeof(float));
    lc->found[i] = r;
}

static void init_row(ps_table *t, row *r) {
    ps_optim_init_weights(t->cfg, r->key, t->w_init);
    ps_optim_init_row(&t->cfg->opt, t->dim, t->w_init, r->state);
}

/* Resolve keys[i] for every i with (!mask || mask[i]) into t->rows[i]:
 * from memory, else from RocksDB (one MultiGet), else newly created when
 * `create`, else NULL. Every resolved row is pinned for this request. */
static int resolve(ps_table *t, const uint64_t *keys, size_t n, const uint8_t *mask, bool create,
                   char *err, size_t errlen) {
    int r = reserve_scratch(t, n);
    if (r < 0)
        return r;
    t->op++;
    /* A request's keys are random over a table far larger than the caches,
     * so each probe and each row is a cache miss. Looking a few keys ahead
     * and prefetching overlaps those misses instead of paying them one after
     * another (measured in bench/README.md). */
    enum { AHEAD = 8 };
    for (size_t i = 0; i < n && i < AHEAD; i++)
        __builtin_prefetch(&t->ikeys[index_home(t, keys[i])]);
    for (size_t i = 0; i < n; i++) {
        if (i + AHEAD < n) {
            uint64_t h = index_home(t, keys[i + AHEAD]);
            __builtin_prefetch(&t->ikeys[h]);
            __builtin_prefetch(&t->islots[h]);
        }
        uint32_t s = (mask && !mask[i]) ? EMPTY : index_find(t, keys[i]);
        t->rows[i] = s == EMPTY ? NULL : slot_row(t, s);
        if (t->rows[i])
            __builtin_prefetch(t->rows[i], 1);
    }
    size_t nmiss = 0;
    for (size_t i = 0; i < n; i++) {
        if (mask && !mask[i])
            continue;
        row *rw = t->rows[i];
        if (rw) {
            rw->op = t->op;
            rw->flags |= ROW_REF;
        } else {
            miss *m = &t->misses[nmiss++];
            ps_store_key_encode((uint16_t)ps_bucket(keys[i], t->nbuckets), keys[i], &m->skey);
            m->idx = i;
        }
    }
    if (nmiss == 0)
        return 0;
    t->st.memory_misses += nmiss;

    /* Sorted, de-duplicated keys for one MultiGet. */
    qsort(t->misses, nmiss, sizeof(miss), cmp_miss);
    uint32_t *slots = NULL;
    miss *uniq = malloc(nmiss * sizeof(miss));
    row **found = calloc(nmiss, sizeof(row *));
    size_t *slot_of = malloc(nmiss * sizeof(size_t));
    if (!uniq || !found || !slot_of) {
        r = -ENOMEM;
        goto out;
    }
    size_t nuniq = 0;
    for (size_t i = 0; i < nmiss; i++) {
        if (i == 0 || memcmp(t->misses[i].skey.b, t->misses[i - 1].skey.b, PS_STORE_KEY_LEN) != 0)
            uniq[nuniq++] = t->misses[i];
        slot_of[i] = nuniq - 1;
    }
    ps_store_key *skeys = malloc(nuniq * sizeof(*skeys));
    if (!skeys) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < nuniq; i++)
        skeys[i] = uniq[i].skey;
    load_ctx lc = {.t = t, .misses = uniq, .errbuf = err, .errlen = errlen, .found = found};
    r = ps_store_multiget(t->store, t->cf, skeys, nuniq, on_found, &lc, err, errlen);
    free(skeys);
    if (r == 0)
        r = lc.err;
    if (r < 0)
        goto out;
    /* Take every slot the new rows need before creating any: if the tier
     * cannot hold them all, the request fails with nothing created (and no
     * row of it written back by a make_room flush in between). */
    size_t ncreate = 0;
    for (size_t u = 0; u < nuniq && create; u++)
        ncreate += !found[u];
    if (ncreate && t->read_only) {
        /* New rows could not be written back: refuse, create nothing. */
        snprintf(err, errlen, "table %s: %zu of the keys have no row yet, and the store is "
                              "read-only: rows cannot be created",
                 t->cfg->name, ncreate);
        r = PS_EREAD_ONLY;
        goto out;
    }
    if (ncreate && !(slots = malloc(ncreate * sizeof(*slots)))) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t k = 0; k < ncreate; k++) {
        slots[k] = acquire_slot(t, err, errlen);
        if (slots[k] == EMPTY) {
            r = PS_ELIMIT; /* the slots taken so far stay free */
            goto out;
        }
    }
    for (size_t u = 0, k = 0; u < nuniq && create; u++) {
        if (found[u])
            continue;
        uint64_t key = ps_store_key_fid(uniq[u].skey.b);
        uint16_t bucket = (uint16_t)((uniq[u].skey.b[0] << 8) | uniq[u].skey.b[1]);
        row *rw = place_row(t, slots[k++], key, bucket);
        init_row(t, rw);
        mark_dirty(t, rw);
        t->new_rows++;
        found[u] = rw;
    }
    for (size_t i = 0; i < nmiss; i++)
        t->rows[t->misses[i].idx] = found[slot_of[i]];
out:
    free(uniq);
    free(found);
    free(slot_of);
    free(slots);
    return r;
}

int ps_table_pull(ps_table *t, const uint64_t *keys, size_t n, float *ret_values, char *err,
                  size_t errlen) {
    int r = resolve(t, keys, n, NULL, true, err, errlen);
    if (r < 0)
        return r;
    /* resolve() touched each row's first line; the weights run past it. */
    enum { AHEAD = 8 };
    size_t wend = sizeof(row) + t->dim * sizeof(float);
    for (size_t i = 0; i < n; i++) {
        if (i + AHEAD < n)
            for (size_t off = 64; off < wend; off += 64)
                __builtin_prefetch((const char *)t->rows[i + AHEAD] + off);
        row *rw = t->rows[i];
        rw->last_seen = t->now;
        memcpy(ret_values + i * t->dim, rw->state, t->dim * sizeof(float));
    }
    t->st.pulled_rows += n;
    return 0;
}

static bool all_finite(const float *g, uint32_t dim) {
    for (uint32_t j = 0; j < dim; j++)
        if (!isfinite(g[j]))
            return false;
    return true;
}

int ps_table_push(ps_table *t, const uint64_t *keys, size_t n, const float *grads,
                  uint32_t *ret_applied, uint32_t *ret_dropped, char *err, size_t errlen) {
    int r = reserve_scratch(t, n);
    if (r < 0)
        return r;
    uint32_t dropped = 0;
    for (size_t i = 0; i < n; i++) {
        t->finite[i] = all_finite(grads + i * t->dim, t->dim);
        dropped += !t->finite[i];
    }
    r = resolve(t, keys, n, t->finite, true, err, errlen);
    if (r < 0)
        return r;
    /* A row's optimizer state spans several cache lines and a request's rows
     * are scattered over the slab: fetch the whole row a few rows ahead. */
    enum { AHEAD = 4 };
    for (size_t i = 0; i < n; i++) {
        if (i + AHEAD < n && t->rows[i + AHEAD])
            prefetch_row(t, t->rows[i + AHEAD]);
        row *rw = t->rows[i];
        if (!rw)
            continue;
        /* The gradient is finite (checked above), but the update may still
         * overflow float32: then the row is left as it was and counted. */
        if (ps_optim_apply(&t->cfg->opt, t->dim, rw->state, grads + i * t->dim) < 0) {
            dropped++;
            continue;
        }
        rw->updates++;
        rw->last_seen = t->now;
        mark_dirty(t, rw);
    }
    t->st.pushed_rows += n - dropped;
    t->st.dropped_nonfinite += dropped;
    *ret_applied = (uint32_t)(n - dropped);
    *ret_dropped = dropped;
    return 0;
}

int ps_table_lookup(ps_table *t, const uint64_t *keys, size_t n, uint8_t *ret_found,
                    float *ret_values, float *ret_state, char *err, size_t errlen) {
    int r = resolve(t, keys, n, NULL, false, err, errlen);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        row *rw = t->rows[i];
        ret_found[i] = rw != NULL;
        if (rw) {
            memcpy(ret_values + i * t->dim, rw->state, t->dim * sizeof(float));
            if (ret_state)
                memcpy(ret_state + i * t->width, rw->state, t->width * sizeof(float));
        } else {
            memset(ret_values + i * t->dim, 0, t->dim * sizeof(float));
            if (ret_state)
                memset(ret_state + i * t->width, 0, t->width * sizeof(float));
        }
    }
    t->st.looked_up_rows += n;
    return 0;
}

int ps_table_export(ps_table *t, const ps_store_key *after, size_t limit, ps_table_row_fn fn,
                    void *ctx, ps_store_key *ret_last, size_t *ret_count, bool *ret_done) {
    ps_store_iter *it = ps_store_iter_new(t->store, t->cf, after ? after->b : NULL,
                                          after ? PS_STORE_KEY_LEN : 0);
    if (!it)
        return -ENOMEM;
    if (after && ps_store_iter_valid(it)) {
        size_t klen;
        const void *k = ps_store_iter_key(it, &klen);
        if (klen == PS_STORE_KEY_LEN && !memcmp(k, after->b, PS_STORE_KEY_LEN))
            ps_store_iter_next(it);
    }
    size_t count = 0;
    int r = 0;
    while (count < limit && ps_store_iter_valid(it)) {
        size_t klen, vlen;
        const uint8_t *k = ps_store_iter_key(it, &klen);
        const char *v = ps_store_iter_value(it, &vlen);
        if (klen != PS_STORE_KEY_LEN || vlen != sizeof(value_header) + t->width * sizeof(float)) {
            r = PS_ESTORE;
            break;
        }
        uint64_t key = ps_store_key_fid(k);
        uint32_t s = index_find(t, key);
        if (s != EMPTY) {
            fn(ctx, key, slot_row(t, s)->state);
        } else {
            /* The iterator's bytes may be unaligned for floats: copy. */
            float buf[256];
            float *tmp = t->width <= 256 ? buf : malloc(t->width * sizeof(float));
            if (!tmp) {
                r = -ENOMEM;
                break;
            }
            memcpy(tmp, v + sizeof(value_header), t->width * sizeof(float));
            fn(ctx, key, tmp);
            if (tmp != buf)
                free(tmp);
        }
        memcpy(ret_last->b, k, PS_STORE_KEY_LEN);
        count++;
        ps_store_iter_next(it);
    }
    *ret_done = !ps_store_iter_valid(it);
    *ret_count = count;
    ps_store_iter_free(it);
    return r;
}

size_t ps_table_dirty_count(const ps_table *t) { return t->ndirty; }
uint64_t ps_table_capacity(const ps_table *t) { return t->capacity; }

#define DUMP_KEY_SPACE 16 /* store key (10 bytes), padded so values stay aligned */

size_t ps_table_dump_dirty(ps_table *t, ps_table_dump *d, uint32_t *ret_gen) {
    d->store = t->store;
    d->cf = t->cf;
    d->value_len = sizeof(value_header) + t->width * sizeof(float);
    d->rec_size = DUMP_KEY_SPACE + d->value_len;
    d->n = 0;
    if (d->cap < t->ndirty) {
        char *recs = realloc(d->recs, t->ndirty * d->rec_size);
        if (!recs)
            abort(); /* cannot write back, and cannot forget the rows */
        d->recs = recs;
        d->cap = t->ndirty;
    }
    for (size_t i = 0; i < t->ndirty; i++) {
        row *r = slot_row(t, t->dirty[i]);
        char *rec = d->recs + d->n++ * d->rec_size;
        ps_store_key_encode(r->bucket, r->key, (ps_store_key *)rec);
        value_header h = {.version = VALUE_VERSION,
                          .width = t->width,
                          .updates = r->updates,
                          .last_seen = r->last_seen};
        memcpy(rec + DUMP_KEY_SPACE, &h, sizeof(h));
        memcpy(rec + DUMP_KEY_SPACE + sizeof(h), r->state, t->width * sizeof(float));
        if (!(r->flags & ROW_PERSISTED)) {
            r->flags |= ROW_PERSISTED;
            t->new_rows--;
            t->persisted_rows++;
        }
    }
    if (t->npending == t->pending_cap) {
        size_t cap = t->pending_cap ? 2 * t->pending_cap : 4;
        struct pending_gen *g = realloc(t->pending, cap * sizeof(*g));
        if (!g)
            abort(); /* as for the dirty list: the count must not be lost */
        t->pending = g;
        t->pending_cap = cap;
    }
    t->pending[t->npending++] = (struct pending_gen){t->gen, t->ndirty};
    t->ndirty = 0;
    *ret_gen = t->gen++;
    return d->n;
}

static int cmp_rec_key(const void *a, const void *b) {
    return memcmp(*(const char *const *)a, *(const char *const *)b, PS_STORE_KEY_LEN);
}

void ps_table_dump_put(ps_table_dump *d, ps_store_batch *b) {
    if (d->n == 0)
        return;
    const char **order = malloc(d->n * sizeof(char *));
    if (!order)
        abort();
    for (size_t i = 0; i < d->n; i++)
        order[i] = d->recs + i * d->rec_size;
    qsort(order, d->n, sizeof(char *), cmp_rec_key);
    for (size_t i = 0; i < d->n; i++)
        ps_store_batch_put(b, d->store, d->cf, order[i], PS_STORE_KEY_LEN, order[i] + DUMP_KEY_SPACE,
                           d->value_len);
    free(order);
}

void ps_table_dump_deinit(ps_table_dump *d) {
    free(d->recs);
    memset(d, 0, sizeof(*d));
}

size_t ps_table_collect(ps_table *t, ps_store_batch *b, uint32_t *ret_gen) {
    ps_table_dump d = {0};
    size_t n = ps_table_dump_dirty(t, &d, ret_gen);
    ps_table_dump_put(&d, b);
    ps_table_dump_deinit(&d);
    return n;
}

void ps_table_committed(ps_table *t, uint32_t gen) {
    if (gen > t->committed_gen)
        t->committed_gen = gen;
    size_t keep = 0;
    for (size_t i = 0; i < t->npending; i++)
        if (t->pending[i].gen > t->committed_gen)
            t->pending[keep++] = t->pending[i];
    t->npending = keep;
}

uint64_t ps_table_persisted_rows(const ps_table *t) { return t->persisted_rows; }

void ps_table_stats_get(const ps_table *t, ps_table_stats *ret) {
    *ret = t->st;
    ret->rows = t->persisted_rows + t->new_rows;
    ret->rows_in_memory = t->used - t->nfree; /* evicted slots are reused at once */
    ret->capacity = t->capacity;
    /* Rows awaiting write-back, including those of batches in flight. */
    uint64_t dirty = t->ndirty;
    for (size_t i = 0; i < t->npending; i++)
        dirty += t->pending[i].rows;
    ret->dirty_rows = dirty;
}
