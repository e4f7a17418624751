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
 * this exact state" (or, for a ROW_INIT row, below, "the init rule gives this
 * exact state"), which is what makes eviction of clean rows safe.
 *
 * What a pull leaves in memory (ROW_INIT). A pull of a key without a row (no
 * admission filter) places the init rule's row in a slot, so that the push
 * that usually follows finds it, and so that later pulls copy it instead of
 * drawing 16 normals again. That row is not a row of the table yet: it is
 * clean without being stored, uncounted in `rows`, not found by Lookup, not
 * exported or moved; the first push applied to it makes it a row (counted,
 * dirty, `admitted`), exactly as a push creates the row of a key no pull
 * cached. Eviction just drops it (no disk_live_until: no store holds it),
 * and a later pull recreates the identical row, since the init rule is a
 * pure function of the table's config and the fid (optim.c). So a pull
 * writes nothing to RocksDB, and a restart, an eviction or a crash changes
 * nothing any client can observe: the table is what the pushes made it,
 * with or without pulls in between (as with admission: "Pull creates no
 * row, Lookup does not find it"). Writing these rows back was ~70% of the
 * instructions of creating rows by pulls (bench/README.md "Row creation").
 * A dead row stays dead when pulled, reading as new.
 *
 * Eviction is CLOCK over the slots: a row touched since the hand last passed
 * gets a second chance; dirty rows are skipped; rows touched by the current
 * request (row->op == op) are skipped, which pins every row a request
 * resolved until the request is done.
 *
 * A request resolves all its keys before changing anything (memory lookups,
 * one sorted MultiGet for the misses, admission decisions staged in the
 * filter's overlay, slots for the rows to create), then applies; if
 * resolution fails nothing was modified, which gives Push its all-or-nothing
 * rule.
 *
 * Feature lifecycle (DESIGN.md). Every decision is a function of the push
 * stream, so that push-log replay and checkpoint resume rebuild the same
 * table:
 *  - Clock. `now` is the table's clock; each push-log record carries the
 *    clock its push was applied at and replay sets it back (shard.c). A row's
 *    last_seen is the clock of its last push (or of its creation by a pull);
 *    pulls do not refresh it, since pulls are not logged.
 *  - Death. A row is dead when ttl_s has passed since last_seen, or when a
 *    push left ||w||_2 <= expire_below (ROW_DEAD). The second is decided per
 *    push request, after all its updates: a decision at write-back would
 *    depend on when write-backs happen, which replay does not reproduce. A
 *    dead row reads as absent; a push to it asks admission and, if let in,
 *    starts it again from the init rule. expire_below forgets FTRL's z and n
 *    with the weights (ALGORITHMS.md §3 keeps them for a reason: a zero row
 *    comes back once |z| > lambda1): it trades that for space, opt-in.
 *  - Leaving memory. A ROW_DEAD row is written back as a delete and freed
 *    once that delete is committed. A ttl-expired row is freed as soon as it
 *    is not in the current generation's dirty list: every stored version of
 *    it is older, hence expired too. The CLOCK hand takes dead rows before
 *    any live one, and ps_table_sweep() frees them a bounded number of slots
 *    per tick.
 *  - Leaving disk. RocksDB's compaction filter (expiry_filter) drops a
 *    stored row with last_seen + ttl_s <= E, where E is the clock at which
 *    the newest committed write-back was dumped, not the wall clock. Any
 *    push not covered by that write-back was applied at a clock >= E (the
 *    clock never goes backwards), so a row dead at E is dead for every push
 *    replay can bring: dropping it cannot change what replay rebuilds. With
 *    the wall clock, a restart after a long pause would drop rows that the
 *    replayed pushes, at their recorded times, still found alive.
 *  - Counting. `rows` counts live rows, kept by last_seen in a ring of
 *    buckets of ttl_s/256 seconds: a push moves its row to the current
 *    bucket, and a bucket whose rows are all past ttl_s leaves the count
 *    (and adds to `expired`). So compactions need not report what they drop,
 *    and the count is exact up to one bucket width. The ring is saved with
 *    each write-back.
 *  - Reading the store. A key missing from memory is looked for in RocksDB
 *    only while RocksDB may hold a live row of it: a row that was there when
 *    the table was opened, or one that CLOCK evicted while live. Every other
 *    stored row is a dead one (the sweep frees a row only once each stored
 *    version of it is expired, a ROW_DEAD one only once its delete is
 *    committed), and a dead row reads as absent. So disk_live_until is the
 *    clock at which all those rows are dead: last_seen + ttl_s of the latest
 *    live eviction, the clock of the last write-back + ttl_s for a store
 *    opened with rows (ps_table_load_state), never without ttl_s. On a
 *    stream whose live rows fit in memory, which admission and expiry are
 *    for, the keys never admitted or long expired (most misses) then cost no
 *    MultiGet: on the soak's drifting stream those reads grew with RocksDB
 *    (memtables, L0 files) and made the shard's cost per example rise over
 *    the run (bench/README.md). */

#include "table.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "admit.h"
#include "error.h"
#include "keys.h"
#include "keysort.h"
#include "optim.h"
#include "prefault.h"

#define ROW_PERSISTED 0x1        /* RocksDB holds a version of this row */
#define ROW_REF 0x2              /* CLOCK reference bit */
#define ROW_FREE 0x4             /* slot holds no row (given back by a failed request) */
#define ROW_DEAD 0x8             /* killed by expire_below; its delete awaits write-back */
#define ROW_BORN 0x10            /* dead, and admitted again by the current push */
#define ROW_INIT 0x20            /* cached by a pull: the init rule's row, not a row yet */

#define EMPTY UINT32_MAX
#define NOT_ABSENT UINT32_MAX    /* absent_of[] of a key that has a row */

/* One entry of the row index (open addressing, linear probing): a key and
 * its slot + 1, 0 marking a free entry. Key and slot side by side make a
 * probe one cache miss where separate key and slot arrays made two (the
 * index was a fifth of the loop thread under the push benchmark, nearly
 * all misses). Packed, the entry keeps the 12 bytes of the two arrays; one
 * entry in eight straddles two lines. */
typedef struct __attribute__((packed)) ientry {
    uint64_t key;
    uint32_t slot;
} ientry;

typedef struct row {
    uint64_t key;
    uint32_t gen;                /* write-back generation of the last change; 0 = clean */
    uint32_t op;                 /* last request that resolved it (pin) */
    uint32_t updates;            /* pushes applied */
    uint32_t last_seen;          /* table clock of the last push (or creation) */
    uint16_t bucket;
    uint16_t flags;
    uint16_t group;              /* write-back group of the bucket */
    uint16_t pad;
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
#define VALUE_DELETE 0           /* in a dump record: delete the key */

typedef struct miss {
    ps_store_key skey;
    size_t idx;                  /* position in the request */
} miss;

/* The compaction filter's view of the table; RocksDB's threads read it. */
typedef struct expiry {
    uint32_t ttl;
    _Atomic uint32_t clock;      /* E: see the design note */
    _Atomic uint64_t dropped;    /* rows the filter removed */
} expiry;

/* Live rows by last_seen: a ring of nb buckets of `width` seconds covering
 * [base, base + nb); bucket b holds rows with last_seen in
 * [b*width, (b+1)*width). Rows older than `since` count as of `since` (rows
 * the ring was not kept for). nb = 0 without ttl_s: just the total. */
typedef struct ledger {
    uint64_t live;
    uint64_t retired;            /* rows that left by ttl_s */
    uint32_t ttl, width, nb;
    uint32_t since;
    uint64_t base;
    uint64_t *h;
} ledger;

/* One write-back group: the rows of a fixed part of the buckets. `gen` is
 * its current generation, and a row of it is dirty iff row->gen >
 * committed_gen. pending: generations dumped for write-back and not
 * committed yet, oldest first, each with its rows that have not been
 * changed since (those moved on to a later generation): with ndirty, the
 * rows awaiting write-back, without scanning the slab. Usually one entry.
 * `live`: the group's share of the live count, with more than one group
 * (any split of the total works: only its changes by pushes to the
 * group's rows must be in it; group 0's is not read, but derived from the
 * total when saved). */
typedef struct wgroup {
    uint32_t gen, committed_gen;
    uint32_t *dirty;             /* slots dirtied in generation `gen` */
    size_t ndirty, dirty_cap;
    struct pending_gen {
        uint32_t gen;
        uint32_t clock;          /* table clock when dumped */
        uint64_t rows;
    } *pending;
    size_t npending, pending_cap;
    uint32_t committed_clock;    /* clock of the newest committed dump */
    int64_t live;
} wgroup;

struct ps_table {
    const ps_table_config *cfg;
    uint32_t nbuckets, dim, width;
    ps_store *store;
    int cf;

    size_t row_size;
    char *slab;
    size_t slab_len;             /* bytes mapped */
    ps_prefault *pf;             /* faults the slab in ahead of `used` */
    size_t prefault_next;        /* slab offset of used at which to ask again */
    uint64_t capacity, used, nfree;
    uint64_t hand;
    /* Slots the sweep freed, taken before never-used ones so that the
     * committed slab tracks the live rows, not every row ever created (with
     * expiry the tier would otherwise fill up to memory_mb). Entries may be
     * stale (the CLOCK hand took the slot meanwhile): take_slot checks. At
     * most capacity entries; a slot that does not fit is still found by the
     * hand. malloc'd: pages commit as the stack grows. */
    uint32_t *freed;
    uint64_t nfreed;

    ientry *ix;
    uint64_t imask;
    uint64_t icount, imax;       /* entries in use; the size it may grow to */

    uint32_t op;
    /* Write-back groups (design note: "Write-back in groups"), each with
     * its own generations and dirty list; ndirty counts them all. */
    wgroup *grp;
    uint32_t ngroups;
    size_t ndirty;
    _Atomic size_t ndirty_seen;  /* ndirty, for the write-back thread's dump_prepare() */

    uint32_t now;
    bool read_only;              /* refuse to create rows */
    ps_table_make_room_fn make_room;
    void *make_room_ctx;

    /* Feature lifecycle. */
    ps_admit *admit;             /* NULL: every key is admitted */
    expiry *exp;                 /* owned by the store; NULL without ttl_s */
    uint32_t ttl;
    double expire_below;
    ledger lg;
    uint64_t sweep_hand;
    uint64_t last_sweep_ms, last_compact_ms;
    /* The clock from which RocksDB holds no live row that memory lacks
     * (design note: "Reading the store"); UINT64_MAX: unknown, always read. */
    uint64_t disk_live_until;

    /* Per-request scratch, grown on demand and kept. */
    row **rows;
    miss *misses;
    float *w_init;
    uint8_t *finite;
    uint8_t *decision;           /* per key: DEC_* */
    uint32_t *absent_of;         /* per key without a row: its index in absent[] */
    miss *absent;                /* distinct keys without a row */
    row **absent_row;            /* created row per absent key, or NULL */
    uint8_t *want;               /* per absent key: create it */
    uint8_t *live;               /* per key: resolve() found a live row (read while at hand) */
    size_t nborn;                /* rows decide() marked ROW_BORN */
    size_t nabsent;
    size_t scratch_cap;

    ps_table_stats st;
};

#define HUGE_PAGE ((size_t)2 << 20)

/* What slab_map() maps for `bytes`: whole huge pages. */
static size_t huge_len(size_t bytes) { return (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1); }

/* The slab: anonymous memory the OS commits on first use, asked for in
 * transparent huge pages (MADV_HUGEPAGE; Debian's THP mode is "madvise").
 * Rows are taken in slot order, so the slab fills from its start and a
 * 2 MiB page is ~9,000 rows: with 4 KiB pages, creating rows paid a page
 * fault every 18 rows, ~0.3 s per 1M rows on this VM (bench/README.md "Row
 * creation"). Mapped 2 MiB-aligned so that the kernel can use huge pages
 * from the first byte; where it cannot, it is 4 KiB pages as before. */
static char *slab_map(size_t bytes, size_t *ret_len) {
    size_t len = huge_len(bytes);
    char *p = mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    size_t head = (HUGE_PAGE - ((uintptr_t)p & (HUGE_PAGE - 1))) & (HUGE_PAGE - 1);
    if (head)
        munmap(p, head);
    if (HUGE_PAGE - head)
        munmap(p + head + len, HUGE_PAGE - head);
    (void)madvise(p + head, len, MADV_HUGEPAGE); /* a hint: without it, small pages */
    *ret_len = len;
    return p + head;
}

/* The index's arrays, zeroed: in huge pages too once they are that large
 * (as the slab, above). With 4 KiB pages each insert into an index of
 * millions of entries was a TLB miss besides the cache miss, and growing it
 * took a page fault per 1,024 entries: creating rows by pulls went from
 * 1.34M to 2.13M rows/s (medians, bench/README.md "Row creation: the init
 * rule in vector registers"). */
static void *index_map(size_t bytes) {
    if (bytes >= HUGE_PAGE) {
        size_t len;
        return slab_map(bytes, &len);
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void index_unmap(void *p, size_t bytes) {
    if (p)
        munmap(p, bytes >= HUGE_PAGE ? huge_len(bytes) : bytes);
}

/* The slab is faulted in ahead of the rows by a thread (prefault.h) once
 * PREFAULT_FROM of it is in use, so that tables that stay small never
 * start one; then PREFAULT_AHEAD past the last row taken, asked for again
 * every PREFAULT_STEP. 8 MiB is ~37k dim-16 FTRL rows, at most that much
 * committed beyond the rows: creating rows is bound by the thread zeroing
 * fresh pages, not by how far ahead it may go, and 32 MiB made loads no
 * faster but was 32 MiB of every growing table's peak (bench/README.md,
 * "Memory per row: the memtables"). */
#define PREFAULT_FROM ((size_t)8 << 20)
#define PREFAULT_AHEAD ((size_t)8 << 20)
#define PREFAULT_STEP ((size_t)2 << 20)

static inline void prefault_ahead(ps_table *t) {
    size_t at = (size_t)t->used * t->row_size;
    if (at >= t->prefault_next) {
        ps_prefault_ahead(t->pf, at, PREFAULT_AHEAD);
        t->prefault_next = at + PREFAULT_STEP;
    }
}

static inline row *slot_row(const ps_table *t, uint32_t slot) {
    return (row *)(t->slab + (size_t)slot * t->row_size);
}

static inline uint64_t index_home(const ps_table *t, uint64_t key) {
    /* High bits of the mix: the bucket uses the low ones. */
    return (ps_mix64(key) >> 17) & t->imask;
}

static inline uint32_t index_find_from(const ps_table *t, uint64_t key, uint64_t home) {
    for (uint64_t i = home;; i = (i + 1) & t->imask) {
        uint32_t s = t->ix[i].slot;
        if (s == 0)
            return EMPTY;
        if (t->ix[i].key == key)
            return s - 1;
    }
}

static uint32_t index_find(const ps_table *t, uint64_t key) {
    return index_find_from(t, key, index_home(t, key));
}

/* Both ends of the entry: the same line but for the one in eight that
 * straddles two. always_inline: gcc 12 takes a function whose only effect
 * is __builtin_prefetch for a const one and drops its calls, which left
 * create_absent and index_grow without any prefetch until this was seen in
 * their code (bench/README.md "Row creation: the init rule in vector
 * registers"). */
static inline __attribute__((always_inline)) void prefetch_home(const ps_table *t, uint64_t home) {
    const char *e = (const char *)&t->ix[home];
    __builtin_prefetch(e, 1);
    __builtin_prefetch(e + sizeof(ientry) - 1, 1);
}

static inline __attribute__((always_inline)) void prefetch_entry(const ps_table *t, uint64_t key) {
    prefetch_home(t, index_home(t, key));
}

static void index_insert(ps_table *t, uint64_t key, uint32_t slot) {
    uint64_t i = index_home(t, key);
    while (t->ix[i].slot != 0)
        i = (i + 1) & t->imask;
    t->ix[i].key = key;
    t->ix[i].slot = slot + 1;
    t->icount++;
}

/* Double the index, reinserting every entry. The index starts small and
 * grows with the rows, at most to imax (twice the tier's capacity): sized
 * for the whole memory_mb up front, it cost a page fault per row at
 * start-up and recovery (seconds for a restart; bench/restart.sh). */
static int index_grow(ps_table *t) {
    uint64_t old = t->imask + 1, size = old * 2;
    ientry *ix = index_map(size * sizeof(ientry)); /* zeroed: slot 0 is free */
    if (!ix)
        return -ENOMEM;
    ientry *oix = t->ix;
    t->ix = ix;
    t->imask = size - 1;
    t->icount = 0;
    /* The old entries are read in order, but land at random in the new
     * index: fetch their entries a few ahead, as create_absent does. */
    enum { AHEAD = 8 };
    for (uint64_t i = 0; i < old; i++) {
        if (i + AHEAD < old && oix[i + AHEAD].slot)
            prefetch_entry(t, oix[i + AHEAD].key);
        if (oix[i].slot)
            index_insert(t, oix[i].key, oix[i].slot - 1);
    }
    index_unmap(oix, old * sizeof(ientry));
    return 0;
}

static void index_remove(ps_table *t, uint64_t key) {
    uint64_t i = index_home(t, key);
    while (t->ix[i].key != key || t->ix[i].slot == 0)
        i = (i + 1) & t->imask;
    /* Backward shift: pull later entries of the cluster into the hole when
     * the hole lies on their probe path. */
    uint64_t hole = i;
    for (uint64_t j = (i + 1) & t->imask; t->ix[j].slot != 0; j = (j + 1) & t->imask) {
        uint64_t home = index_home(t, t->ix[j].key);
        bool on_path = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (on_path) {
            t->ix[hole] = t->ix[j];
            hole = j;
        }
    }
    t->ix[hole].slot = 0;
    t->icount--;
}

/* ---- the ledger of live rows ------------------------------------------------- */

static uint64_t lg_bucket(const ledger *lg, uint32_t last_seen) {
    return (last_seen > lg->since ? last_seen : lg->since) / lg->width;
}

/* The oldest bucket that can hold a live row at clock now: the first b with
 * b*width + width-1 + ttl > now. */
static uint64_t lg_first_live(const ledger *lg, uint32_t now) {
    uint64_t span = (uint64_t)lg->ttl + lg->width - 1;
    return now >= span ? (now - span) / lg->width + 1 : 0;
}

static int lg_init(ledger *lg, uint32_t ttl, uint64_t live) {
    memset(lg, 0, sizeof(*lg));
    lg->live = live;
    lg->ttl = ttl;
    if (!ttl)
        return 0;
    /* 256 buckets over ttl_s: the count is exact up to ttl_s/256 seconds,
     * and the ring saved with each write-back is 2 KiB. */
    lg->width = ttl / 256 ? ttl / 256 : 1;
    /* Live buckets at any clock span at most ttl/width + 2. */
    lg->nb = ttl / lg->width + 3;
    lg->h = calloc(lg->nb, sizeof(uint64_t));
    return lg->h ? 0 : -ENOMEM;
}

/* Every live row counts as pushed at now (no history kept for them). */
static void lg_reset(ledger *lg, uint32_t now) {
    if (!lg->nb)
        return;
    memset(lg->h, 0, lg->nb * sizeof(uint64_t));
    lg->since = now;
    lg->base = lg_first_live(lg, now);
    lg->h[lg_bucket(lg, now) % lg->nb] = lg->live;
}

/* Retire the buckets whose rows are all past ttl at clock now. */
static void lg_advance(ledger *lg, uint32_t now) {
    if (!lg->nb)
        return;
    uint64_t target = lg_first_live(lg, now);
    while (lg->base < target) {
        if (target - lg->base >= lg->nb) {
            for (uint32_t i = 0; i < lg->nb; i++) {
                lg->retired += lg->h[i];
                lg->live -= lg->h[i];
                lg->h[i] = 0;
            }
            lg->base = target;
            break;
        }
        uint64_t *c = &lg->h[lg->base % lg->nb];
        lg->retired += *c;
        lg->live -= *c;
        *c = 0;
        lg->base++;
    }
}

static bool lg_in_ring(const ledger *lg, uint64_t b) { return b >= lg->base && b < lg->base + lg->nb; }

static void lg_add(ledger *lg, uint32_t last_seen) {
    if (lg->nb) {
        uint64_t b = lg_bucket(lg, last_seen);
        if (!lg_in_ring(lg, b))
            return; /* dead already (or a clock the ring does not cover) */
        lg->h[b % lg->nb]++;
    }
    lg->live++;
}

static void lg_sub(ledger *lg, uint32_t last_seen) {
    if (lg->nb) {
        uint64_t b = lg_bucket(lg, last_seen);
        if (!lg_in_ring(lg, b) || lg->h[b % lg->nb] == 0)
            return; /* retired with its bucket */
        lg->h[b % lg->nb]--;
    }
    if (lg->live)
        lg->live--;
}

/* ---- the compaction filter ------------------------------------------------------ */

static bool expiry_filter(void *ctx, const void *key, size_t klen, const void *value, size_t vlen) {
    (void)key;
    expiry *e = ctx;
    value_header h;
    if (klen != PS_STORE_KEY_LEN || vlen < sizeof(h))
        return false;
    memcpy(&h, value, sizeof(h));
    uint32_t clock = atomic_load_explicit(&e->clock, memory_order_relaxed);
    if ((uint64_t)h.last_seen + e->ttl > clock)
        return false;
    atomic_fetch_add_explicit(&e->dropped, 1, memory_order_relaxed);
    return true;
}

int ps_table_store_filter(const ps_table_config *cfg, ps_store_cf_filter *ret) {
    memset(ret, 0, sizeof(*ret));
    if (!cfg->ttl_s)
        return 0;
    expiry *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->ttl = cfg->ttl_s;
    ret->fn = expiry_filter;
    ret->ctx = e;
    ret->free_ctx = free;
    return 0;
}

void ps_table_set_store_filter(ps_table *t, void *filter_ctx) { t->exp = filter_ctx; }

static void expiry_advance(ps_table *t, uint32_t clock) {
    if (t->exp && clock > atomic_load_explicit(&t->exp->clock, memory_order_relaxed))
        atomic_store_explicit(&t->exp->clock, clock, memory_order_relaxed);
}

/* ---- life and death of rows ------------------------------------------------------ */

static inline bool row_dead(const ps_table *t, const row *r) {
    return (r->flags & ROW_DEAD) || (t->ttl && (uint64_t)r->last_seen + t->ttl <= t->now);
}

/* A row that reads as present: not dead, and not a pull's ROW_INIT cache. */
static inline bool row_live(const ps_table *t, const row *r) {
    return !row_dead(t, r) && !(r->flags & ROW_INIT);
}

/* The row of key in memory, NULL when there is none or only a pull's
 * ROW_INIT cache (which is no row: what the store holds decides). */
static row *memory_row(const ps_table *t, uint64_t key) {
    uint32_t s = index_find(t, key);
    return s != EMPTY && !(slot_row(t, s)->flags & ROW_INIT) ? slot_row(t, s) : NULL;
}

/* A row enters or leaves the live count (a ROW_DEAD row left it already). */
static void count_row(ps_table *t, const row *r) {
    lg_add(&t->lg, r->last_seen);
    t->grp[r->group].live++;
}
static void uncount_row(ps_table *t, const row *r) {
    if (!(r->flags & ROW_DEAD)) {
        lg_sub(&t->lg, r->last_seen);
        t->grp[r->group].live--;
    }
}

size_t ps_table_row_bytes(const ps_table_config *cfg) {
    size_t width = ps_optim_state_width(&cfg->opt, cfg->dim);
    size_t row_size = (sizeof(row) + width * sizeof(float) + 7) & ~(size_t)7;
    /* The index holds two entries per row at 50% load. */
    return row_size + 2 * sizeof(ientry);
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
    t->ngroups = 1;
    t->grp = calloc(1, sizeof(wgroup));
    if (t->grp)
        t->grp[0].gen = 1;
    t->ttl = cfg->ttl_s;
    t->expire_below = cfg->expire_below;
    t->disk_live_until = UINT64_MAX;
    uint64_t imax = 16;
    while (imax < 2 * capacity)
        imax <<= 1;
    t->imax = imax;
    uint64_t isize = imax < 1024 ? imax : 1024;
    t->imask = isize - 1;
    t->slab = slab_map(capacity * t->row_size, &t->slab_len);
    if (t->slab)
        t->pf = ps_prefault_new(t->slab, t->slab_len); /* NULL: the loop faults the slab in */
    t->prefault_next = PREFAULT_FROM;
    /* Zeroed: slot 0 marks a free entry. */
    t->ix = index_map(isize * sizeof(ientry));
    t->freed = malloc(capacity * sizeof(uint32_t));
    int r = lg_init(&t->lg, cfg->ttl_s, persisted_rows);
    if (r == 0)
        r = ps_admit_new(cfg, &t->admit);
    if (r < 0 || !t->grp || !t->slab || !t->ix || !t->freed || capacity >= EMPTY) {
        ps_table_free(t);
        return -ENOMEM;
    }
    *ret_table = t;
    return 0;
}

void ps_table_free(ps_table *t) {
    if (!t)
        return;
    ps_prefault_free(t->pf); /* joins its thread before the slab goes */
    if (t->slab)
        munmap(t->slab, t->slab_len);
    index_unmap(t->ix, (t->imask + 1) * sizeof(ientry));
    free(t->freed);
    for (uint32_t g = 0; t->grp && g < t->ngroups; g++) {
        free(t->grp[g].dirty);
        free(t->grp[g].pending);
    }
    free(t->grp);
    free(t->rows);
    free(t->misses);
    free(t->w_init);
    free(t->finite);
    free(t->decision);
    free(t->absent_of);
    free(t->absent);
    free(t->absent_row);
    free(t->want);
    free(t->live);
    free(t->lg.h);
    ps_admit_free(t->admit);
    free(t);
}

void ps_table_set_make_room(ps_table *t, ps_table_make_room_fn fn, void *ctx) {
    t->make_room = fn;
    t->make_room_ctx = ctx;
}

void ps_table_set_clock(ps_table *t, uint32_t now_s) {
    if (now_s <= t->now)
        return;
    bool first = t->now == 0;
    t->now = now_s;
    /* Rows counted before the clock was ever set have no time: count them
     * as of now. */
    if (first)
        lg_reset(&t->lg, now_s);
    else
        lg_advance(&t->lg, now_s);
}

uint32_t ps_table_clock(const ps_table *t) { return t->now; }
void ps_table_set_read_only(ps_table *t, bool read_only) { t->read_only = read_only; }
const ps_table_config *ps_table_config_of(const ps_table *t) { return t->cfg; }
uint32_t ps_table_dim(const ps_table *t) { return t->dim; }
uint32_t ps_table_state_width(const ps_table *t) { return t->width; }
int ps_table_cf(const ps_table *t) { return t->cf; }

ps_admit *ps_table_admit(ps_table *t) { return t->admit; }

#define GROW(ptr, cap) ((ptr) = grow_array((ptr), (cap), sizeof(*(ptr)), &ok))

static void *grow_array(void *p, size_t n, size_t size, bool *ok) {
    void *q = realloc(p, n * size);
    if (!q) {
        *ok = false;
        return p;
    }
    return q;
}

static int reserve_scratch(ps_table *t, size_t n) {
    if (n <= t->scratch_cap)
        return 0;
    size_t cap = t->scratch_cap ? t->scratch_cap : 256;
    while (cap < n)
        cap *= 2;
    bool ok = true;
    GROW(t->rows, cap);
    GROW(t->misses, cap);
    GROW(t->finite, cap);
    GROW(t->decision, cap);
    GROW(t->absent_of, cap);
    GROW(t->absent, cap);
    GROW(t->absent_row, cap);
    GROW(t->want, cap);
    GROW(t->live, cap);
    if (!ok)
        return -ENOMEM;
    if (!t->w_init && !(t->w_init = malloc(t->dim * sizeof(float))))
        return -ENOMEM;
    t->scratch_cap = cap;
    return 0;
}

static bool is_dirty(const ps_table *t, const row *r) {
    return r->gen > t->grp[r->group].committed_gen;
}

static uint16_t group_of(const ps_table *t, uint32_t bucket) {
    return (uint16_t)((uint64_t)bucket * t->ngroups / t->nbuckets);
}

static inline void prefetch_row(const ps_table *t, const row *r) {
    for (size_t off = 0; off < t->row_size; off += 64)
        __builtin_prefetch((const char *)r + off, 1);
}

/* A dirty row of an uncommitted batch leaves it (changed again, or freed). */
static void pending_leave(ps_table *t, const row *r) {
    wgroup *g = &t->grp[r->group];
    for (size_t i = 0; i < g->npending; i++)
        if (g->pending[i].gen == r->gen) {
            g->pending[i].rows--;
            break;
        }
}

static void mark_dirty(ps_table *t, row *r) {
    wgroup *g = &t->grp[r->group];
    if (r->gen == g->gen)
        return;
    if (r->gen > g->committed_gen) /* leaves a batch in flight for this generation */
        pending_leave(t, r);
    if (g->ndirty == g->dirty_cap) {
        size_t cap = g->dirty_cap ? 2 * g->dirty_cap : 1024;
        uint32_t *d = realloc(g->dirty, cap * sizeof(*d));
        if (!d)
            abort(); /* cannot lose track of a dirty row; grows by doubling, so rare */
        g->dirty = d;
        g->dirty_cap = cap;
    }
    r->gen = g->gen;
    g->dirty[g->ndirty++] = (uint32_t)(((char *)r - t->slab) / t->row_size);
    t->ndirty++;
    atomic_store_explicit(&t->ndirty_seen, t->ndirty, memory_order_relaxed);
}

/* A dead row whose memory can go: not in the dirty list being built (the
 * next dump reads it), and, if killed by expire_below, its delete committed.
 * A ttl-expired row may go even while a batch with it is in flight: every
 * stored version of it is at least as old, so expired too. */
static bool reclaimable(const ps_table *t, const row *r) {
    if ((r->flags & ROW_FREE) || !row_dead(t, r))
        return false;
    if (is_dirty(t, r) && (r->gen == t->grp[r->group].gen || (r->flags & ROW_DEAD)))
        return false;
    return true;
}

/* Take a reclaimable row out of the index (the caller frees its slot). */
static void release_row(ps_table *t, row *r) {
    if (is_dirty(t, r))
        pending_leave(t, r);
    index_remove(t, r->key);
}

/* A free slot: a never-used one, else a CLOCK victim (a dead row before any
 * live one). Returns EMPTY when every row is dirty or pinned by the current
 * request. */
static uint32_t take_slot(ps_table *t) {
    while (t->nfreed) {
        uint32_t s = t->freed[--t->nfreed];
        const row *r = slot_row(t, s);
        if ((r->flags & ROW_FREE) && r->op != t->op)
            return s;
    }
    if (t->used < t->capacity) {
        prefault_ahead(t);
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
        if (reclaimable(t, r)) {
            release_row(t, r);
            return s;
        }
        if (is_dirty(t, r))
            continue;
        if (r->flags & ROW_REF) {
            r->flags &= (uint16_t)~ROW_REF;
            continue;
        }
        /* A live row now only in RocksDB: misses read the store until it is
         * dead. A ROW_INIT row is in no store: it just goes. */
        uint64_t until = t->ttl ? (uint64_t)r->last_seen + t->ttl : UINT64_MAX;
        if (!(r->flags & ROW_INIT) && until > t->disk_live_until)
            t->disk_live_until = until;
        index_remove(t, r->key);
        t->st.evictions++;
        return s;
    }
    return EMPTY;
}

/* Take a slot and hold it, empty, for the current request: it is pinned
 * and marked free, so neither a later take nor a flush touches it. */
static uint32_t acquire_slot(ps_table *t, char *err, size_t errlen) {
    /* Every held slot may become an entry: keep the load at most 1/2. */
    if ((t->icount + t->nfree + 1) * 2 > t->imask + 1 && t->imask + 1 < t->imax && index_grow(t) < 0) {
        snprintf(err, errlen, "table %s: out of memory growing the row index", t->cfg->name);
        return EMPTY;
    }
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
    r->group = group_of(t, bucket);
    r->flags = ROW_REF;
    index_insert(t, key, s);
    return r;
}

static row *new_row(ps_table *t, uint64_t key, uint16_t bucket, char *err, size_t errlen) {
    uint32_t s = acquire_slot(t, err, errlen);
    return s == EMPTY ? NULL : place_row(t, s, key, bucket);
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

/* A dead row starts again from the init rule, as a row just created; a
 * ROW_INIT row, uncounted and holding the init rule's state, becomes one. */
static void rebirth(ps_table *t, row *r) {
    if (!(r->flags & ROW_INIT)) {
        uncount_row(t, r);
        init_row(t, r);
    }
    r->flags &= (uint16_t)~(ROW_DEAD | ROW_BORN | ROW_INIT);
    r->updates = 0;
    r->last_seen = t->now;
    mark_dirty(t, r);
    count_row(t, r);
}

/* Resolve keys[i] for every i with (!mask || mask[i]) into t->rows[i]: from
 * memory, else from RocksDB (one MultiGet), else NULL; a key with no row
 * gets absent_of[i], its index among the request's distinct such keys
 * (absent[0..nabsent)). Every resolved row is pinned for this request. Dead
 * rows resolve too: callers decide what they read as. */
static int resolve(ps_table *t, const uint64_t *keys, size_t n, const uint8_t *mask, char *err,
                   size_t errlen) {
    int r = reserve_scratch(t, n);
    if (r < 0)
        return r;
    t->op++;
    t->nabsent = 0;
    for (size_t i = 0; i < n; i++)
        t->absent_of[i] = NOT_ABSENT;
    /* A request's keys are random over a table far larger than the caches,
     * so each probe and each row is a cache miss. Looking a few keys ahead
     * and prefetching overlaps those misses instead of paying them one after
     * another (measured in bench/README.md). */
    enum { AHEAD = 8 };
    uint64_t home[AHEAD]; /* of keys i .. i + AHEAD - 1, as prefetched */
    /* In blocks: a block's row headers, prefetched as their keys are
     * found, are pinned once the block's last key is found, by then in
     * cache, instead of in a second pass over all n. */
    enum { BLOCK = 64 };
    for (size_t i = 0; i < n && i < AHEAD; i++) {
        home[i] = index_home(t, keys[i]);
        prefetch_home(t, home[i]);
    }
    size_t nmiss = 0;
    for (size_t b = 0; b < n; b += BLOCK) {
        size_t e = b + BLOCK < n ? b + BLOCK : n;
        for (size_t i = b; i < e; i++) {
            uint64_t h = home[i % AHEAD];
            if (i + AHEAD < n) { /* its slot is free now: key i's home was read */
                home[i % AHEAD] = index_home(t, keys[i + AHEAD]);
                prefetch_home(t, home[i % AHEAD]);
            }
            uint32_t s = (mask && !mask[i]) ? EMPTY : index_find_from(t, keys[i], h);
            t->rows[i] = s == EMPTY ? NULL : slot_row(t, s);
            if (t->rows[i])
                __builtin_prefetch(t->rows[i], 1);
        }
        for (size_t i = b; i < e; i++) {
            if (mask && !mask[i])
                continue;
            row *rw = t->rows[i];
            if (rw) {
                rw->op = t->op;
                rw->flags |= ROW_REF;
                t->live[i] = row_live(t, rw);
            } else {
                miss *m = &t->misses[nmiss++];
                ps_store_key_encode((uint16_t)ps_bucket(keys[i], t->nbuckets), keys[i], &m->skey);
                m->idx = i;
            }
        }
    }
    if (nmiss == 0)
        return 0;
    /* No live row of a missing key can be in RocksDB: all read as absent. */
    bool read_store = t->now < t->disk_live_until;
    if (read_store)
        t->st.memory_misses += nmiss;

    /* Sorted, de-duplicated keys for one MultiGet. */
    miss *uniq = malloc(nmiss * sizeof(miss));
    row **found = calloc(nmiss, sizeof(row *));
    size_t *slot_of = malloc(nmiss * sizeof(size_t));
    uint32_t *order = malloc(nmiss * sizeof(uint32_t));
    if (!uniq || !found || !slot_of || !order ||
        ps_keysort(t->misses, nmiss, sizeof(miss), order) < 0) {
        free(order);
        r = -ENOMEM;
        goto out;
    }
    /* uniq[] holds the sorted misses for a moment. */
    for (size_t i = 0; i < nmiss; i++)
        uniq[i] = t->misses[order[i]];
    memcpy(t->misses, uniq, nmiss * sizeof(miss));
    free(order);
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
    r = read_store ? ps_store_multiget(t->store, t->cf, skeys, nuniq, on_found, &lc, err, errlen) : 0;
    free(skeys);
    if (r == 0)
        r = lc.err;
    if (r < 0)
        goto out;
    /* The keys RocksDB does not hold either, once each. uniq[] is reused
     * for their absent index. */
    for (size_t u = 0; u < nuniq; u++) {
        if (found[u])
            continue;
        t->absent[t->nabsent] = uniq[u];
        t->absent_row[t->nabsent] = NULL;
        uniq[u].idx = t->nabsent++;
    }
    for (size_t i = 0; i < nmiss; i++) {
        size_t u = slot_of[i], at = t->misses[i].idx;
        t->rows[at] = found[u];
        if (found[u])
            t->live[at] = row_live(t, found[u]);
        else
            t->absent_of[at] = (uint32_t)uniq[u].idx;
    }
out:
    free(uniq);
    free(found);
    free(slot_of);
    return r;
}

/* Create the rows of the absent keys with want[a] (every absent key when
 * want is NULL) from the init rule, and resolve their keys to them. Takes
 * every slot before creating any: if the tier cannot hold them all, the
 * request fails with nothing created (and no row of it written back by a
 * make_room flush in between). Returns the number created in *ret_created. */
static int create_absent(ps_table *t, size_t n, const uint8_t *want, bool by_pull,
                         size_t *ret_created, char *err, size_t errlen) {
    size_t ncreate = 0;
    for (size_t a = 0; a < t->nabsent; a++)
        ncreate += !want || want[a];
    *ret_created = 0;
    if (ncreate == 0)
        return 0;
    if (t->read_only) {
        /* New rows could not be written back: refuse, create nothing. */
        snprintf(err, errlen, "table %s: %zu of the keys have no row yet, and the store is "
                              "read-only: rows cannot be created",
                 t->cfg->name, ncreate);
        return PS_EREAD_ONLY;
    }
    uint32_t *slots = malloc(ncreate * sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    for (size_t k = 0; k < ncreate; k++) {
        slots[k] = acquire_slot(t, err, errlen);
        if (slots[k] == EMPTY) {
            free(slots); /* the slots taken so far stay free */
            return PS_ELIMIT;
        }
    }
    /* Each insert lands at a random index entry, a cache miss in an index
     * of millions: fetch a few keys' entries ahead (15% of the shard's time
     * creating rows before; bench/README.md "Row creation"). */
    enum { AHEAD = 8 };
    for (size_t a = 0, k = 0; a < t->nabsent; a++) {
        if (a + AHEAD < t->nabsent)
            prefetch_entry(t, ps_store_key_fid(t->absent[a + AHEAD].skey.b));
        if (want && !want[a])
            continue;
        const uint8_t *sk = t->absent[a].skey.b;
        row *rw = place_row(t, slots[k++], ps_store_key_fid(sk), ps_store_key_bucket(sk));
        init_row(t, rw);
        if (by_pull) {
            /* Clean without a stored version, uncounted: design note. */
            rw->flags |= ROW_INIT;
        } else {
            mark_dirty(t, rw);
            count_row(t, rw);
        }
        t->absent_row[a] = rw;
    }
    free(slots);
    for (size_t i = 0; i < n; i++)
        if (!t->rows[i] && t->absent_of[i] != NOT_ABSENT && t->absent_row[t->absent_of[i]])
            t->rows[i] = t->absent_row[t->absent_of[i]];
    *ret_created = ncreate;
    return 0;
}

int ps_table_pull(ps_table *t, const uint64_t *keys, size_t n, float *ret_values, char *err,
                  size_t errlen) {
    int r = resolve(t, keys, n, NULL, err, errlen);
    if (r < 0)
        return r;
    if (!t->admit) {
        /* Every key is admitted, so the push that usually follows a pull
         * will create the row: keep the init rule's row in memory for it
         * now (ROW_INIT, design note), computed once. A pull creates no row;
         * a dead row stays dead and reads as new. (Not while read-only, as
         * before ROW_INIT: new keys are refused.) */
        size_t created;
        r = create_absent(t, n, NULL, true, &created, err, errlen);
        if (r < 0)
            return r;
    }
    /* resolve() touched each row's first line; the weights run past it. */
    enum { AHEAD = 8 };
    size_t wend = sizeof(row) + t->dim * sizeof(float);
    for (size_t i = 0; i < n; i++) {
        if (i + AHEAD < n && t->rows[i + AHEAD])
            for (size_t off = 64; off < wend; off += 64)
                __builtin_prefetch((const char *)t->rows[i + AHEAD] + off);
        row *rw = t->rows[i];
        if (rw && !row_dead(t, rw))
            memcpy(ret_values + i * t->dim, rw->state, t->dim * sizeof(float));
        else /* no row, or a dead one: the key reads as new */
            ps_optim_init_weights(t->cfg, keys[i], ret_values + i * t->dim);
    }
    t->st.pulled_rows += n;
    return 0;
}

static bool all_finite(const float *g, uint32_t dim) {
    uint32_t j = 0;
#if defined(__SSE2__)
    /* Four at a time, no branch per element: an element is finite unless
     * all its exponent bits are set (Inf, NaN). */
    const __m128i expo = _mm_set1_epi32(0x7f800000);
    __m128i bad = _mm_setzero_si128();
    for (; j + 4 <= dim; j += 4) {
        __m128i e = _mm_and_si128(_mm_loadu_si128((const __m128i *)(g + j)), expo);
        bad = _mm_or_si128(bad, _mm_cmpeq_epi32(e, expo));
    }
    if (_mm_movemask_epi8(bad))
        return false;
#endif
    for (; j < dim; j++)
        if (!isfinite(g[j]))
            return false;
    return true;
}

static float weight_norm(const ps_table *t, const row *r) {
    double s = 0;
    for (uint32_t j = 0; j < t->dim; j++)
        s += (double)r->state[j] * r->state[j];
    return (float)sqrt(s);
}

enum { DEC_SKIP, DEC_APPLY, DEC_REJECT };

/* Which keys of a push update a row, in order: a key with a live row does;
 * a key without one (or with a dead one) asks admission, and once admitted
 * its later occurrences in the push update the row it gets. Decisions are
 * staged in the filter; *ret_rejected counts the refused occurrences. */
static int decide(ps_table *t, const uint64_t *keys, size_t n, uint32_t *ret_rejected) {
    uint32_t rejected = 0;
    t->nborn = 0;
    if (t->nabsent) /* an empty push has no scratch at all */
        memset(t->want, 0, t->nabsent);
    if (t->admit)
        ps_admit_begin(t->admit);
    for (size_t i = 0; i < n; i++) {
        if (!t->finite[i]) {
            t->decision[i] = DEC_SKIP;
            continue;
        }
        row *rw = t->rows[i];
        /* live[] spares a read of the row: only a dead one is looked at
         * again, in case an earlier key of this push was its own. */
        bool in_table = rw ? t->live[i] || (rw->flags & ROW_BORN) : t->want[t->absent_of[i]];
        bool ok = true;
        if (!in_table && t->admit) {
            int r = ps_admit_decide(t->admit, keys[i], &ok);
            if (r < 0)
                return r;
        }
        if (!ok) {
            t->decision[i] = DEC_REJECT;
            rejected++;
            continue;
        }
        t->decision[i] = DEC_APPLY;
        if (!in_table && rw) {
            rw->flags |= ROW_BORN;
            t->nborn++;
        } else if (!in_table)
            t->want[t->absent_of[i]] = 1;
    }
    *ret_rejected = rejected;
    return 0;
}

int ps_table_push(ps_table *t, const uint64_t *keys, size_t n, const float *grads,
                  uint32_t *ret_applied, uint32_t *ret_dropped, char *err, size_t errlen) {
    int r = reserve_scratch(t, n);
    if (r < 0)
        return r;
    uint32_t dropped = 0, rejected = 0;
    for (size_t i = 0; i < n; i++) {
        t->finite[i] = all_finite(grads + i * t->dim, t->dim);
        dropped += !t->finite[i];
    }
    r = resolve(t, keys, n, t->finite, err, errlen);
    if (r < 0)
        return r;
    size_t created = 0;
    r = decide(t, keys, n, &rejected);
    if (r == 0)
        r = create_absent(t, n, t->want, false, &created, err, errlen);
    if (r < 0) {
        for (size_t i = 0; i < n; i++)
            if (t->rows[i])
                t->rows[i]->flags &= (uint16_t)~ROW_BORN;
        if (t->admit)
            ps_admit_abort(t->admit);
        return r;
    }
    /* Nothing can fail from here on. */
    if (t->admit)
        ps_admit_commit(t->admit);
    uint64_t admitted = created;
    for (size_t i = 0; i < n && t->nborn; i++)
        if (t->decision[i] == DEC_APPLY && (t->rows[i]->flags & ROW_BORN)) {
            rebirth(t, t->rows[i]);
            admitted++;
        }
    /* A row's optimizer state spans several cache lines and a request's rows
     * are scattered over the slab: fetch the whole row a few rows ahead. */
    enum { AHEAD = 4 };
    ps_optim_step step;
    ps_optim_step_init(&step, &t->cfg->opt, t->dim);
    for (size_t i = 0; i < n; i++) {
        if (i + AHEAD < n && t->decision[i + AHEAD] == DEC_APPLY)
            prefetch_row(t, t->rows[i + AHEAD]);
        if (t->decision[i] != DEC_APPLY)
            continue;
        row *rw = t->rows[i];
        /* The gradient is finite (checked above), but the update may still
         * overflow float32: then the row is left as it was and counted. */
        if (ps_optim_step_apply(&step, rw->state, grads + i * t->dim) < 0) {
            dropped++;
            continue;
        }
        rw->updates++;
        if (rw->last_seen != t->now) {
            uncount_row(t, rw);
            rw->last_seen = t->now;
            count_row(t, rw);
        }
        mark_dirty(t, rw);
    }
    /* expire_below, once the whole push is applied (design note). */
    for (size_t i = 0; i < n && t->expire_below > 0; i++) {
        row *rw = t->rows[i];
        if (t->decision[i] != DEC_APPLY || (rw->flags & ROW_DEAD) ||
            weight_norm(t, rw) > t->expire_below)
            continue;
        uncount_row(t, rw);
        rw->flags |= ROW_DEAD;
        mark_dirty(t, rw);
        t->st.expired++;
    }
    uint32_t applied = (uint32_t)(n - dropped - rejected);
    t->st.pushed_rows += applied;
    t->st.dropped_nonfinite += dropped;
    t->st.admitted += admitted;
    t->st.rejected += rejected;
    *ret_applied = applied;
    *ret_dropped = dropped;
    return 0;
}

int ps_table_lookup(ps_table *t, const uint64_t *keys, size_t n, uint8_t *ret_found,
                    float *ret_values, float *ret_state, char *err, size_t errlen) {
    int r = resolve(t, keys, n, NULL, err, errlen);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        row *rw = t->rows[i];
        bool live = rw && row_live(t, rw);
        ret_found[i] = live;
        if (live) {
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
    ps_store_iter *it = ps_store_scan_new(t->store, t->cf, after ? after->b : NULL,
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
        const row *mr = memory_row(t, key);
        value_header h;
        memcpy(&h, v, sizeof(h));
        if (mr) {
            if (!row_dead(t, mr))
                fn(ctx, key, mr->state);
        } else if (!t->ttl || (uint64_t)h.last_seen + t->ttl > t->now) {
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

size_t ps_table_value_len(const ps_table *t) { return sizeof(value_header) + t->width * sizeof(float); }

int ps_table_row_value(ps_table *t, uint64_t key, void *value, bool *ret_found, char *err,
                       size_t errlen) {
    const row *mr = memory_row(t, key);
    if (mr) {
        *ret_found = !row_dead(t, mr);
        if (*ret_found) {
            value_header h = {.version = VALUE_VERSION,
                              .width = t->width,
                              .updates = mr->updates,
                              .last_seen = mr->last_seen};
            memcpy(value, &h, sizeof(h));
            memcpy((char *)value + sizeof(h), mr->state, t->width * sizeof(float));
        }
        return 0;
    }
    ps_store_key sk;
    ps_store_key_encode((uint16_t)ps_bucket(key, t->nbuckets), key, &sk);
    char *have;
    size_t len;
    int r = ps_store_get(t->store, t->cf, sk.b, PS_STORE_KEY_LEN, &have, &len, err, errlen);
    if (r < 0)
        return r;
    *ret_found = false;
    if (have && len == ps_table_value_len(t)) {
        value_header h;
        memcpy(&h, have, sizeof(h));
        if (!t->ttl || (uint64_t)h.last_seen + t->ttl > t->now) {
            memcpy(value, have, len);
            *ret_found = true;
        }
    }
    free(have);
    return 0;
}

static int cmp_store_key(const void *a, const void *b) { return memcmp(a, b, PS_STORE_KEY_LEN); }

/* A row stored here before its copy is adopted again leaves the count. */
static void adopt_uncount(void *ctx, size_t i, const void *value, size_t len) {
    (void)i;
    if (len >= sizeof(value_header)) {
        value_header old;
        memcpy(&old, value, sizeof(old));
        lg_sub(&((ps_table *)ctx)->lg, old.last_seen);
    }
}

int ps_table_adopt_check(const ps_table *t, const uint64_t *keys, const size_t *lens, size_t n,
                         char *err, size_t errlen) {
    size_t want = ps_table_value_len(t);
    for (size_t i = 0; i < n; i++) {
        if (lens[i] != want && lens[i] != 0) {
            snprintf(err, errlen, "adopted row of %zu bytes; this table stores %zu", lens[i], want);
            return PS_EPROTO;
        }
        if (index_find(t, keys[i]) != EMPTY) {
            snprintf(err, errlen, "adopted key %016llx has a row in memory here",
                     (unsigned long long)keys[i]);
            return PS_EPROTO;
        }
    }
    return 0;
}

uint32_t ps_table_value_last_seen(const void *value) {
    value_header h;
    memcpy(&h, value, sizeof(h));
    return h.last_seen;
}

/* An adopted live row, stored: counted, and, as only RocksDB holds it,
 * misses read the store again (a shard that opened empty had stopped
 * reading it). */
static void count_adopted(ps_table *t, uint32_t last_seen) {
    lg_add(&t->lg, last_seen);
    uint64_t until = t->ttl ? (uint64_t)last_seen + t->ttl : UINT64_MAX;
    if (until > t->disk_live_until)
        t->disk_live_until = until;
}

void ps_table_count_adopted(ps_table *t, const uint32_t *last_seen, size_t n) {
    for (size_t i = 0; i < n; i++)
        count_adopted(t, last_seen[i]);
}

int ps_table_adopt(ps_table *t, const uint64_t *keys, const void *const *values,
                   const size_t *lens, size_t n, bool fresh, const ps_adopt_prior *prior,
                   ps_store_batch *b, char *err, size_t errlen) {
    int rc = ps_table_adopt_check(t, keys, lens, n, err, errlen);
    if (rc < 0)
        return rc;
    if (!fresh && n) {
        /* A row copied again (a later catch-up round, or a copy resumed
         * after an interruption) replaces its earlier copy in the count:
         * what the caller knows of, then one MultiGet of the rest, in key
         * order. */
        ps_store_key *sk = malloc(n * sizeof(*sk));
        if (!sk)
            return -ENOMEM;
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (!prior || !prior[i].known)
                ps_store_key_encode((uint16_t)ps_bucket(keys[i], t->nbuckets), keys[i], &sk[m++]);
        qsort(sk, m, sizeof(*sk), cmp_store_key);
        int r = m ? ps_store_multiget(t->store, t->cf, sk, m, adopt_uncount, t, err, errlen) : 0;
        for (size_t i = 0; r == 0 && prior && i < n; i++)
            if (prior[i].known && prior[i].stored)
                lg_sub(&t->lg, prior[i].last_seen);
        free(sk);
        if (r < 0)
            return r;
    }
    for (size_t i = 0; i < n; i++) {
        ps_store_key sk;
        ps_store_key_encode((uint16_t)ps_bucket(keys[i], t->nbuckets), keys[i], &sk);
        if (lens[i] == 0) {
            ps_store_batch_delete(b, t->store, t->cf, sk.b, PS_STORE_KEY_LEN);
            continue;
        }
        count_adopted(t, ps_table_value_last_seen(values[i]));
        ps_store_batch_put(b, t->store, t->cf, sk.b, PS_STORE_KEY_LEN, values[i], lens[i]);
    }
    return 0;
}

bool ps_table_range_dirty(const ps_table *t, uint32_t lo, uint32_t hi) {
    for (uint64_t s = 0; s < t->used; s++) {
        const row *r = slot_row(t, (uint32_t)s);
        if (!(r->flags & ROW_FREE) && r->bucket >= lo && r->bucket < hi && is_dirty(t, r))
            return true;
    }
    return false;
}

int ps_table_forget_memory(ps_table *t, uint32_t lo, uint32_t hi, char *err, size_t errlen) {
    if (ps_table_range_dirty(t, lo, hi)) {
        snprintf(err, errlen, "a row of buckets %u-%u is not written back", lo, hi - 1);
        return PS_EPROTO;
    }
    for (uint64_t s = 0; s < t->used; s++) {
        row *r = slot_row(t, (uint32_t)s);
        if ((r->flags & ROW_FREE) || r->bucket < lo || r->bucket >= hi)
            continue;
        /* A row RocksDB holds leaves the live count in the store walk; one
         * that only memory holds (not written back yet) here; a ROW_INIT
         * row was never counted. */
        if (!(r->flags & (ROW_PERSISTED | ROW_INIT)))
            uncount_row(t, r);
        release_row(t, r);
        r->flags = ROW_FREE;
        t->nfree++;
        if (t->nfreed < t->capacity)
            t->freed[t->nfreed++] = (uint32_t)s;
    }
    return 0;
}

void ps_table_forget_begin(ps_forget *f, uint32_t lo, uint32_t hi) {
    memset(f, 0, sizeof(*f));
    f->lo = lo;
    f->hi = hi;
    ps_store_key_encode((uint16_t)lo, 0, &f->next);
}

void ps_table_forget_deinit(ps_forget *f) {
    free(f->seen);
    f->seen = NULL;
}

int ps_table_forget_stored(ps_table *t, ps_forget *f, size_t budget) {
    if (f->done)
        return 0;
    ps_store_iter *it = ps_store_scan_new(t->store, t->cf, f->next.b, PS_STORE_KEY_LEN);
    if (!it)
        return -ENOMEM;
    size_t walked = 0;
    bool end = true;
    for (; ps_store_iter_valid(it); ps_store_iter_next(it)) {
        size_t klen, vlen;
        const uint8_t *k = ps_store_iter_key(it, &klen);
        const char *v = ps_store_iter_value(it, &vlen);
        if (klen != PS_STORE_KEY_LEN || ps_store_key_bucket(k) >= f->hi)
            break;
        if (budget && walked == budget) { /* go on from this key next time */
            memcpy(f->next.b, k, PS_STORE_KEY_LEN);
            end = false;
            break;
        }
        walked++;
        if (vlen < sizeof(value_header))
            continue;
        if (f->n == f->cap) {
            size_t cap = f->cap ? 2 * f->cap : 4096;
            uint32_t *sn = realloc(f->seen, cap * sizeof(*sn));
            if (!sn) {
                ps_store_iter_free(it);
                return -ENOMEM;
            }
            f->seen = sn;
            f->cap = cap;
        }
        value_header h;
        memcpy(&h, v, sizeof(h));
        f->seen[f->n++] = h.last_seen;
    }
    ps_store_iter_free(it);
    f->rows += walked;
    f->done = end;
    return 0;
}

/* The store keys of buckets [lo, hi): from the first key of lo up to
 * (not including) the first of hi. */
typedef struct range_keys {
    ps_store_key start;
    uint8_t stop[PS_STORE_KEY_LEN + 1];
    size_t stop_len;
} range_keys;

static void range_keys_of(uint32_t lo, uint32_t hi, range_keys *rk) {
    ps_store_key_encode((uint16_t)lo, 0, &rk->start);
    if (hi < 65536) {
        rk->stop[0] = (uint8_t)(hi >> 8);
        rk->stop[1] = (uint8_t)hi;
        rk->stop_len = 2;
    } else { /* past every key */
        memset(rk->stop, 0xff, sizeof(rk->stop));
        rk->stop_len = sizeof(rk->stop);
    }
}

void ps_table_forget_end(ps_table *t, ps_forget *f, ps_store_batch *b) {
    /* The rows leave the count only now, when every table's walk is over
     * (a write-back between two steps saves the count as it was, with the
     * rows stored), and b deletes them. No tombstone over a range that
     * holds nothing (a move's target, as a rule): a file ingested into it
     * then needs no memtable flush first. */
    for (size_t i = 0; i < f->n; i++)
        lg_sub(&t->lg, f->seen[i]);
    if (f->rows) {
        range_keys rk;
        range_keys_of(f->lo, f->hi, &rk);
        ps_store_batch_delete_range(b, t->store, t->cf, rk.start.b, PS_STORE_KEY_LEN, rk.stop,
                                    rk.stop_len);
    }
    ps_table_forget_deinit(f);
}

int ps_table_reclaim(ps_table *t, uint32_t lo, uint32_t hi, char *err, size_t errlen) {
    range_keys rk;
    range_keys_of(lo, hi, &rk);
    return ps_store_reclaim_range(t->store, t->cf, rk.start.b, PS_STORE_KEY_LEN, rk.stop,
                                  rk.stop_len, err, errlen);
}

size_t ps_table_dirty_count(const ps_table *t) { return t->ndirty; }
uint64_t ps_table_capacity(const ps_table *t) { return t->capacity; }

#define DUMP_KEY_SPACE 16 /* store key (10 bytes), padded so values stay aligned */

uint32_t ps_table_groups(const ps_table *t) { return t->ngroups; }

/* The clock of the oldest group's newest committed batch: the store holds
 * every group's rows as of it. */
static uint32_t oldest_committed_clock(const ps_table *t) {
    uint32_t clock = t->grp[0].committed_clock;
    for (uint32_t g = 1; g < t->ngroups; g++)
        clock = t->grp[g].committed_clock < clock ? t->grp[g].committed_clock : clock;
    return clock;
}

int ps_table_set_groups(ps_table *t, uint32_t ngroups) {
    if (ngroups == 0 || ngroups > t->nbuckets || ngroups > UINT16_MAX + 1 ||
        (ngroups > 1 && (t->admit || t->ttl)))
        return -EINVAL;
    if (ngroups == t->ngroups)
        return 0;
    for (uint32_t g = 0; g < t->ngroups; g++)
        if (t->grp[g].ndirty || t->grp[g].npending)
            return -EINVAL;
    wgroup *grp = calloc(ngroups, sizeof(*grp));
    if (!grp)
        return -ENOMEM;
    /* Every row is clean: generation 1 on, as a new table; each group's
     * share of the live count starts at 0 (group 0's is what the others
     * leave of the total: ps_table_save_group()). */
    uint32_t clock = oldest_committed_clock(t);
    for (uint32_t g = 0; g < t->ngroups; g++) {
        free(t->grp[g].dirty);
        free(t->grp[g].pending);
    }
    free(t->grp);
    t->grp = grp;
    t->ngroups = ngroups;
    for (uint32_t g = 0; g < ngroups; g++) {
        grp[g].gen = 1;
        grp[g].committed_clock = clock;
    }
    for (uint64_t i = 0; i < t->used; i++) {
        row *r = slot_row(t, (uint32_t)i);
        r->gen = 0;
        r->group = group_of(t, r->bucket);
    }
    return 0;
}

void ps_writeback_group_buckets(uint32_t nbuckets, uint32_t ngroups, uint32_t g, uint32_t *ret_lo,
                                uint32_t *ret_hi) {
    /* The buckets b with b * ngroups / nbuckets == g (group_of()). */
    uint64_t n = nbuckets, m = ngroups;
    *ret_lo = (uint32_t)((g * n + m - 1) / m);
    *ret_hi = (uint32_t)((((uint64_t)g + 1) * n + m - 1) / m);
}

size_t ps_table_group_dirty(const ps_table *t, uint32_t g) { return t->grp[g].ndirty; }

size_t ps_table_dump_dirty(ps_table *t, ps_table_dump *d, uint32_t *ret_gen) {
    return ps_table_dump_group(t, 0, d, ret_gen);
}

size_t ps_table_dump_group(ps_table *t, uint32_t group, ps_table_dump *d, uint32_t *ret_gen) {
    wgroup *g = &t->grp[group];
    d->store = t->store;
    d->cf = t->cf;
    d->value_len = sizeof(value_header) + t->width * sizeof(float);
    d->rec_size = DUMP_KEY_SPACE + d->value_len;
    d->n = 0;
    if (d->cap < g->ndirty) {
        char *recs = realloc(d->recs, g->ndirty * d->rec_size);
        if (!recs)
            abort(); /* cannot write back, and cannot forget the rows */
        d->recs = recs;
        d->cap = g->ndirty;
    }
    for (size_t i = 0; i < g->ndirty; i++) {
        row *r = slot_row(t, g->dirty[i]);
        value_header h = {.version = VALUE_VERSION,
                          .width = t->width,
                          .updates = r->updates,
                          .last_seen = r->last_seen};
        if (r->flags & ROW_DEAD) {
            /* Killed by expire_below: delete the stored version, if any. */
            if (!(r->flags & ROW_PERSISTED))
                continue;
            r->flags &= (uint16_t)~ROW_PERSISTED;
            h.version = VALUE_DELETE;
        } else {
            r->flags |= ROW_PERSISTED;
        }
        char *rec = d->recs + d->n++ * d->rec_size;
        ps_store_key_encode(r->bucket, r->key, (ps_store_key *)rec);
        memcpy(rec + DUMP_KEY_SPACE, &h, sizeof(h));
        if (h.version != VALUE_DELETE)
            memcpy(rec + DUMP_KEY_SPACE + sizeof(h), r->state, t->width * sizeof(float));
    }
    if (g->npending == g->pending_cap) {
        size_t cap = g->pending_cap ? 2 * g->pending_cap : 4;
        struct pending_gen *p = realloc(g->pending, cap * sizeof(*p));
        if (!p)
            abort(); /* as for the dirty list: the count must not be lost */
        g->pending = p;
        g->pending_cap = cap;
    }
    g->pending[g->npending++] = (struct pending_gen){g->gen, t->now, g->ndirty};
    t->ndirty -= g->ndirty;
    g->ndirty = 0;
    atomic_store_explicit(&t->ndirty_seen, t->ndirty, memory_order_relaxed);
    *ret_gen = g->gen++;
    return d->n;
}

static void dump_release(ps_table_dump *d) {
    free(d->recs);
    d->recs = NULL;
    d->cap = 0;
}

void ps_table_dump_prepare(const ps_table *t, ps_table_dump *d) {
    /* Room for the rows dirty now, or the last dump's if more, and a
     * quarter over: the dump comes later, after more pushes. */
    size_t n = atomic_load_explicit(&t->ndirty_seen, memory_order_relaxed);
    n = n > d->n ? n : d->n;
    n += n / 4;
    if (d->recs || n == 0 || d->rec_size == 0)
        return;
    d->recs = malloc(n * d->rec_size);
    if (!d->recs)
        return; /* dump_dirty allocates (or aborts) */
    d->cap = n;
    /* Fault every page in now: a first touch costs a page fault, and here
     * (~1 s for the 232 MB of 1M rows on this VM, bench/README.md) it is
     * the write-back thread's, not the loop's. A store to each page, made
     * volatile: gcc turns a malloc() and a memset() of it to 0 into
     * calloc(), which touches nothing (it did, and the loop took the
     * faults). */
    volatile char *p = d->recs;
    size_t bytes = n * d->rec_size, page = (size_t)sysconf(_SC_PAGESIZE);
    for (size_t off = 0; off < bytes; off += page)
        p[off] = 0;
    p[bytes - 1] = 0;
}

void ps_table_dump_put(ps_table_dump *d, ps_store_batch *b) {
    if (d->n == 0) {
        if (!d->keep)
            dump_release(d);
        return;
    }
    uint32_t *order = malloc(d->n * sizeof(uint32_t));
    if (!order || ps_keysort(d->recs, d->n, d->rec_size, order) < 0)
        abort(); /* as in dump_dirty: the rows cannot be forgotten */
    /* Room for them all at once (deletes are smaller than puts): a batch
     * grown put by put copies itself at each doubling. Without the room,
     * the puts still work. */
    (void)ps_store_batch_reserve(b, d->store, d->cf, d->n, PS_STORE_KEY_LEN, d->value_len);
    for (size_t i = 0; i < d->n; i++) {
        const char *rec = d->recs + order[i] * d->rec_size;
        const char *value = rec + DUMP_KEY_SPACE;
        if (((const value_header *)value)->version == VALUE_DELETE)
            ps_store_batch_delete(b, d->store, d->cf, rec, PS_STORE_KEY_LEN);
        else
            ps_store_batch_put(b, d->store, d->cf, rec, PS_STORE_KEY_LEN, value, d->value_len);
    }
    free(order);
    /* The batch holds the rows now: give their copy back before RocksDB
     * copies them a third time, into a memtable. Kept for the next dump, it
     * was a whole dirty set's worth (216 bytes a row) resident for good, and
     * at the peak of every write-back beside the batch and the memtable
     * (bench/README.md "Memory per row"). dump_prepare() makes the next
     * one's room once the batch is written and freed. A group's dump, a
     * small part of the dirty rows, is kept for the next group instead:
     * its pages are then faulted in once. */
    if (!d->keep)
        dump_release(d);
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

void ps_table_committed(ps_table *t, uint32_t gen) { ps_table_committed_group(t, 0, gen); }

void ps_table_committed_group(ps_table *t, uint32_t group, uint32_t gen) {
    wgroup *g = &t->grp[group];
    if (gen > g->committed_gen)
        g->committed_gen = gen;
    size_t keep = 0;
    for (size_t i = 0; i < g->npending; i++) {
        if (g->pending[i].gen > g->committed_gen)
            g->pending[keep++] = g->pending[i];
        else if (g->pending[i].clock > g->committed_clock)
            g->committed_clock = g->pending[i].clock;
    }
    g->npending = keep;
    /* The compaction filter may go as far as every group's stored rows. */
    expiry_advance(t, oldest_committed_clock(t));
}

uint64_t ps_table_persisted_rows(const ps_table *t) { return t->lg.live; }

uint64_t ps_table_slots_used(const ps_table *t) { return t->used; }

void ps_table_stats_get(const ps_table *t, ps_table_stats *ret) {
    *ret = t->st;
    ret->rows = t->lg.live;
    ret->rows_in_memory = t->used - t->nfree; /* evicted slots are reused at once */
    ret->capacity = t->capacity;
    /* Rows awaiting write-back, including those of batches in flight. */
    uint64_t dirty = t->ndirty;
    for (uint32_t g = 0; g < t->ngroups; g++)
        for (size_t i = 0; i < t->grp[g].npending; i++)
            dirty += t->grp[g].pending[i].rows;
    ret->dirty_rows = dirty;
    ret->expired = t->st.expired + t->lg.retired;
    ret->rocksdb_bytes = ps_store_cf_size(t->store, t->cf);
}

/* ---- the table's own state in the meta column family --------------------------- */

/* "live/NAME": the ledger and the clock of the write-back it belongs to. */
typedef struct ledger_record {
    uint32_t version;
    uint32_t ttl, width, nb;
    uint32_t since, clock;
    uint64_t base, live;
} ledger_record;

#define LEDGER_VERSION 1

typedef struct save_ctx {
    ps_table *t;
    ps_store_batch *b;
    int cf;
} save_ctx;

/* "admit/NAME/" then the record id, 4 bytes big-endian. */
static size_t admit_key(const ps_table *t, uint32_t id, char *key, size_t len) {
    int n = snprintf(key, len, "admit/%s/", t->cfg->name);
    for (int i = 0; i < 4; i++)
        key[n + i] = (char)(id >> (24 - 8 * i));
    return (size_t)n + 4;
}

static void put_admit(void *ctx, uint32_t id, const void *data, size_t len) {
    save_ctx *sc = ctx;
    char key[PS_NAME_MAX + 16];
    size_t klen = admit_key(sc->t, id, key, sizeof(key));
    ps_store_batch_put(sc->b, sc->t->store, sc->cf, key, klen, data, len);
}

void ps_table_save_state(ps_table *t, ps_store_batch *b, int meta_cf) {
    save_ctx sc = {t, b, meta_cf};
    if (t->admit)
        ps_admit_save(t->admit, put_admit, &sc);
    const ledger *lg = &t->lg;
    size_t len = sizeof(ledger_record) + lg->nb * sizeof(uint64_t);
    char *v = malloc(len);
    if (!v)
        abort(); /* the batch must describe the table; tiny and rare */
    ledger_record rec = {.version = LEDGER_VERSION,
                         .ttl = lg->ttl,
                         .width = lg->width,
                         .nb = lg->nb,
                         .since = lg->since,
                         .clock = t->now,
                         .base = lg->base,
                         .live = lg->live};
    memcpy(v, &rec, sizeof(rec));
    if (lg->nb)
        memcpy(v + sizeof(rec), lg->h, lg->nb * sizeof(uint64_t));
    char key[PS_NAME_MAX + 8];
    int klen = snprintf(key, sizeof(key), "live/%s", t->cfg->name);
    ps_store_batch_put(b, t->store, meta_cf, key, (size_t)klen, v, len);
    free(v);
}

/* "glive/NAME/" and the group, 2 bytes big-endian: a group's share of the
 * live count and the clock of the write-back that saved it. */
typedef struct group_record {
    int64_t live;
    uint32_t clock, pad;
} group_record;

static size_t group_key(const ps_table *t, uint32_t g, char *key, size_t len) {
    int n = snprintf(key, len, "glive/%s/", t->cfg->name);
    key[n] = (char)(g >> 8);
    key[n + 1] = (char)g;
    return (size_t)n + 2;
}

static void put_group(ps_table *t, uint32_t g, int64_t live, ps_store_batch *b, int meta_cf) {
    group_record rec = {.live = live, .clock = t->now};
    char key[PS_NAME_MAX + 16];
    size_t klen = group_key(t, g, key, sizeof(key));
    ps_store_batch_put(b, t->store, meta_cf, key, klen, &rec, sizeof(rec));
}

void ps_table_save_group(ps_table *t, uint32_t group, ps_store_batch *b, int meta_cf) {
    if (t->ngroups == 1) {
        ps_table_save_state(t, b, meta_cf);
        return;
    }
    /* Group 0's share is what the others leave of the total: it takes the
     * changes no push makes (rows moved in or out, README "Resharding"),
     * which write-back saves, as it did with one group. */
    int64_t live = t->grp[group].live;
    if (group == 0) {
        live = (int64_t)t->lg.live;
        for (uint32_t g = 1; g < t->ngroups; g++)
            live -= t->grp[g].live;
    }
    put_group(t, group, live, b, meta_cf);
}

void ps_table_clear_groups(ps_table *t, ps_store_batch *b, int meta_cf) {
    for (uint32_t g = 1; g < t->ngroups; g++)
        put_group(t, g, 0, b, meta_cf);
}

int ps_table_load_groups(ps_table *t, uint32_t stored_groups, int meta_cf, char *err,
                         size_t errlen) {
    int64_t total = 0;
    uint32_t clock = UINT32_MAX;
    for (uint32_t g = 0; g < stored_groups; g++) {
        char key[PS_NAME_MAX + 16], *v;
        size_t klen = group_key(t, g, key, sizeof(key)), len;
        int r = ps_store_get(t->store, meta_cf, key, klen, &v, &len, err, errlen);
        if (r < 0)
            return r;
        group_record rec = {0};
        if (v && len == sizeof(rec)) {
            memcpy(&rec, v, sizeof(rec));
            clock = rec.clock < clock ? rec.clock : clock;
        } else if (g == 0) { /* none saved in groups yet: the whole table's count */
            rec.live = (int64_t)t->lg.live;
        }
        free(v);
        total += rec.live;
        if (t->ngroups == stored_groups) /* else every share starts at 0 (set_groups()) */
            t->grp[g].live = rec.live;
    }
    t->lg.live = total > 0 ? (uint64_t)total : 0;
    /* The oldest group's clock: replay brings every group's pushes since
     * its own write-back, at their clocks, which are at least that. */
    if (clock != UINT32_MAX && clock > t->now)
        t->now = clock;
    if (t->now)
        lg_reset(&t->lg, t->now);
    if (t->ttl && t->now && t->disk_live_until != 0 &&
        (t->disk_live_until == UINT64_MAX || t->disk_live_until < (uint64_t)t->now + t->ttl))
        t->disk_live_until = (uint64_t)t->now + t->ttl;
    return 0;
}

static int load_ledger(ps_table *t, int meta_cf, char *err, size_t errlen) {
    char key[PS_NAME_MAX + 8];
    int klen = snprintf(key, sizeof(key), "live/%s", t->cfg->name);
    char *v;
    size_t len;
    int r = ps_store_get(t->store, meta_cf, key, (size_t)klen, &v, &len, err, errlen);
    if (r < 0)
        return r;
    ledger *lg = &t->lg;
    ledger_record rec;
    if (v && len >= sizeof(rec)) {
        memcpy(&rec, v, sizeof(rec));
        if (rec.version == LEDGER_VERSION) {
            /* The clock never goes back, whatever the ring's parameters. */
            if (rec.clock > t->now)
                t->now = rec.clock;
            expiry_advance(t, rec.clock);
        }
        if (rec.version == LEDGER_VERSION && rec.ttl == lg->ttl && rec.width == lg->width &&
            rec.nb == lg->nb && len == sizeof(rec) + lg->nb * sizeof(uint64_t)) {
            lg->since = rec.since;
            lg->base = rec.base;
            lg->live = rec.live;
            if (lg->nb)
                memcpy(lg->h, v + sizeof(rec), lg->nb * sizeof(uint64_t));
            free(v);
            return 0;
        }
    }
    free(v);
    /* No ring for this ttl_s: the rows from the meta count (ps_table_new)
     * count as pushed now, or at the first clock set. */
    if (t->now)
        lg_reset(lg, t->now);
    return 0;
}

static int load_admit(ps_table *t, int meta_cf, char *err, size_t errlen) {
    char key[PS_NAME_MAX + 16];
    size_t klen = admit_key(t, PS_ADMIT_HEADER, key, sizeof(key));
    char *v;
    size_t len;
    int r = ps_store_get(t->store, meta_cf, key, klen, &v, &len, err, errlen);
    if (r < 0 || !v)
        return r;
    r = ps_admit_load_header(t->admit, v, len);
    free(v);
    if (r < 0)
        return 0; /* other parameters: start empty (admit.h) */
    size_t plen = klen - 4;
    ps_store_iter *it = ps_store_iter_new(t->store, meta_cf, key, plen);
    if (!it)
        return -ENOMEM;
    for (; ps_store_iter_valid(it); ps_store_iter_next(it)) {
        size_t kl, vl;
        const char *k = ps_store_iter_key(it, &kl);
        const char *val = ps_store_iter_value(it, &vl);
        if (kl != plen + 4 || memcmp(k, key, plen))
            break;
        uint32_t id = 0;
        for (int i = 0; i < 4; i++)
            id = (id << 8) | (uint8_t)k[plen + i];
        if (id == PS_ADMIT_HEADER)
            continue;
        r = ps_admit_load_block(t->admit, id, val, vl);
        if (r < 0) {
            snprintf(err, errlen, "table %s: admission filter block %u in the store is corrupt",
                     t->cfg->name, id);
            break;
        }
    }
    ps_store_iter_free(it);
    return r;
}

/* Whether the table's column family holds any row, dead or alive. */
static bool store_has_rows(ps_table *t) {
    ps_store_iter *it = ps_store_iter_new(t->store, t->cf, NULL, 0);
    bool any = !it || ps_store_iter_valid(it);
    ps_store_iter_free(it);
    return any;
}

int ps_table_load_state(ps_table *t, int meta_cf, char *err, size_t errlen) {
    int r = load_ledger(t, meta_cf, err, errlen);
    /* Rows stored by a write-back have last_seen <= the clock it saved with
     * the ledger (t->now here): dead ttl_s after it (design note). */
    if (r == 0 && !store_has_rows(t))
        t->disk_live_until = 0;
    else if (r == 0 && t->ttl && t->now)
        t->disk_live_until = (uint64_t)t->now + t->ttl;
    if (r == 0 && t->admit)
        r = load_admit(t, meta_cf, err, errlen);
    return r;
}

/* ---- housekeeping ------------------------------------------------------------------- */

size_t ps_table_sweep(ps_table *t, size_t budget) {
    size_t freed = 0;
    for (size_t k = 0; k < budget && k < t->used; k++) {
        if (t->sweep_hand >= t->used)
            t->sweep_hand = 0;
        /* Between requests: no row is pinned. */
        row *r = slot_row(t, (uint32_t)t->sweep_hand++);
        if (!reclaimable(t, r))
            continue;
        release_row(t, r);
        r->flags = ROW_FREE;
        t->nfree++;
        freed++;
        if (t->nfreed < t->capacity)
            t->freed[t->nfreed++] = (uint32_t)(t->sweep_hand - 1);
    }
    return freed;
}

#define SWEEP_EVERY_MS 100

void ps_table_tick(ps_table *t, uint64_t now_ms) {
    if (!t->ttl && t->expire_below <= 0)
        return;
    /* Once every push to this table is in a committed write-back, replay
     * will bring none before now: the filter may go up to now. Without this
     * an idle table would keep its expired rows on disk until its next
     * push. */
    bool pending = t->ndirty > 0;
    for (uint32_t g = 0; g < t->ngroups && !pending; g++)
        pending = t->grp[g].npending > 0;
    if (!pending)
        expiry_advance(t, t->now);
    if (!t->last_sweep_ms) {
        t->last_sweep_ms = t->last_compact_ms = now_ms;
        return;
    }
    /* The sweep passes over the whole tier once per quarter of ttl_s
     * (between 1 s and 1 min), in steps of at least 1024 slots. */
    uint64_t since = now_ms - t->last_sweep_ms;
    if (since >= SWEEP_EVERY_MS) {
        uint64_t period = t->ttl ? (uint64_t)t->ttl * 250 : 60000;
        period = period < 1000 ? 1000 : period > 60000 ? 60000 : period;
        uint64_t budget = t->used * since / period;
        ps_table_sweep(t, budget < 1024 ? 1024 : budget);
        t->last_sweep_ms = now_ms;
    }
    /* RocksDB's own compactions run the filter on the files they rewrite,
     * but the largest level is rewritten rarely, and a memtable that does
     * not fill up is never flushed: every ttl_s (at least 1 s, at most 1 h)
     * the store's compaction thread compacts the whole table, so the space
     * of expired rows comes back within about two ttl_s. The price is one
     * rewrite of the table per ttl_s. */
    uint64_t every = t->ttl ? (uint64_t)t->ttl * 1000 : 3600000;
    every = every < 1000 ? 1000 : every > 3600000 ? 3600000 : every;
    if (now_ms - t->last_compact_ms >= every) {
        char err[256];
        ps_store_compact(t->store, t->cf, false, err, sizeof(err));
        t->last_compact_ms = now_ms;
    }
}
