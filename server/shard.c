#include "shard.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dense.h"
#include "error.h"
#include "fsutil.h"
#include "keys.h"
#include "keyset.h"
#include "pushlog.h"
#include "store.h"

/* Column families: meta, dense, then one per table. */
#define CF_META 0
#define CF_DENSE 1
#define CF_TABLE0 2

#define REC_SPARSE_PUSH 1
#define REC_DENSE_PUSH 2
#define REC_DENSE_CREATE 3

/* Push-log record body for a sparse push; followed by the table name, the
 * keys and the gradients. clock_s is the table clock the push was applied
 * at, which replay sets again (0 in logs older than the field: replay keeps
 * the clock it has). */
typedef struct push_record {
    uint8_t type;
    uint8_t pad;
    uint16_t name_len;
    uint32_t n;
    uint32_t dim;
    uint32_t clock_s;
    uint64_t client_id;
    uint64_t seq;
} push_record;

/* Push-log record body for dense blocks (a push, or the creation of a block
 * from its initial values); followed per block by a dense_block_record, the
 * name and the floats. */
typedef struct dense_record {
    uint8_t type;
    uint8_t pad;
    uint16_t nblocks;
    uint32_t pad2;
    uint64_t client_id;
    uint64_t seq;
} dense_record;

typedef struct dense_block_record {
    uint16_t name_len;
    uint16_t pad;
    uint32_t len;
} dense_block_record;

/* The store keys of a table's rows in a copy's first pass, in order, and
 * each one's last_seen (MEMO_GONE: no live row of it here now). */
typedef struct memo_table {
    uint8_t (*key)[PS_STORE_KEY_LEN];
    uint32_t *seen;
    size_t n, cap;
    bool keyless;                /* past MEMO_MAX_ROWS: seen only, key freed */
} memo_table;
#define MEMO_GONE UINT32_MAX
/* Beyond this many rows, a catch-up page looks its rows up instead. */
#define MEMO_MAX_ROWS (16u << 20)

static void memo_free(memo_table *m) {
    free(m->key);
    free(m->seen);
    memset(m, 0, sizeof(*m));
}

static int memo_add(memo_table *m, const uint8_t *key, uint32_t seen) {
    if (m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 4096;
        uint32_t *sn = realloc(m->seen, cap * sizeof(*sn));
        if (!sn)
            return -ENOMEM;
        m->seen = sn;
        if (!m->keyless && cap > MEMO_MAX_ROWS) {
            free(m->key);
            m->key = NULL;
            m->keyless = true;
        }
        if (!m->keyless) {
            void *k = realloc(m->key, cap * sizeof(*m->key));
            if (!k)
                return -ENOMEM;
            m->key = k;
        }
        m->cap = cap;
    }
    if (!m->keyless)
        memcpy(m->key[m->n], key, PS_STORE_KEY_LEN);
    m->seen[m->n++] = seen;
    return 0;
}

/* The row of store key `key` in the memo, or -1. */
static ptrdiff_t memo_find(const memo_table *m, const uint8_t *key) {
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = memcmp(m->key[mid], key, PS_STORE_KEY_LEN);
        if (c == 0)
            return (ptrdiff_t)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* One table's staged rows: its file, the last key put (keys go strictly
 * ascending: a page sent again is skipped), and the keys and clocks of the
 * live rows, which join the live count at the ingest. */
typedef struct stage_table {
    ps_store_sst *w;             /* NULL: no rows yet */
    char path[PS_PATH_MAX + 64];
    uint8_t last[PS_STORE_KEY_LEN];
    memo_table rows;             /* the rows staged so far */
} stage_table;

/* Exactly-once bookkeeping per pushing client. A sparse push (client, seq)
 * is applied to the keys of each bucket b only if bucket b has not applied
 * seq yet: per bucket, not per shard, because a bucket range moves between
 * shards with its numbers (README "Resharding"), and because a client
 * re-routing a push after WRONG_SHARD sends a shard keys under a seq it may
 * have used there already for other buckets. What a bucket applied is a
 * window (seq_note()): bseq[b], the highest seq, and bmask[b], which of the
 * SEQ_WINDOW numbers below it were applied too. So a push resent under its
 * number after a later push of the client was applied first (its answer
 * lost with the connection, or refused READ_ONLY while the next one was on
 * the wire) is still applied once, not taken for a repeat. seq is the
 * highest applied anywhere (Hello's last_push_seq), adopted buckets'
 * included. dseq/dmask are the window of the dense pushes applied here,
 * which sequences dense pushes: not seq, which a move's adopted numbers
 * raise past a dense push still on its way here (max_in_flight > 0: the
 * next batch's sparse push applied on the source before this batch's
 * dense push reached a restarted home shard). */
typedef struct client_entry {
    uint64_t id;                 /* 0 = empty */
    uint64_t seq;
    uint64_t dseq, dmask;
    uint64_t *bseq;              /* owned, 2 * cfg->buckets entries: the seqs, */
    uint64_t *bmask;             /* then the masks (bseq + cfg->buckets) */
    bool dirty;                  /* changed since the last write-back began */
    /* With more than one write-back group: the groups whose slice of bseq
     * changed since that group's last batch (at most 64 groups). */
    uint64_t gdirty;
} client_entry;

/* A window of applied sequence numbers: the highest, hi, and a mask whose
 * bit d says whether hi - 1 - d was applied too. Numbers further below hi
 * count as applied: a client resends only pushes it has not seen answered,
 * and with max_in_flight batches unacknowledged at most a few later pushes
 * can overtake one. SEQ_UNKNOWN is the mask of a window whose numbers below
 * hi are not known (records written before the masks, a peer that sends
 * none): all taken as applied, the rule before windows. */
#define SEQ_WINDOW 64
#define SEQ_UNKNOWN (~(uint64_t)0)

static inline bool seq_fresh(uint64_t hi, uint64_t mask, uint64_t seq) {
    if (seq > hi)
        return true;
    uint64_t d = hi - seq;
    return seq && d >= 1 && d <= SEQ_WINDOW && !(mask >> (d - 1) & 1); /* 0 is no number */
}

static inline void seq_note(uint64_t *hi, uint64_t *mask, uint64_t seq) {
    if (seq > *hi) {
        uint64_t d = seq - *hi;
        uint64_t m = d >= SEQ_WINDOW ? 0 : *mask << d;
        if (*hi && d <= SEQ_WINDOW) /* the old highest, applied (0 is no number) */
            m |= (uint64_t)1 << (d - 1);
        *mask = m;
        *hi = seq;
    } else if (seq < *hi && *hi - seq <= SEQ_WINDOW) {
        *mask |= (uint64_t)1 << (*hi - seq - 1);
    }
}

/* Two records of one bucket's window: the later one (the higher hi) says
 * all; of equal ones, a number either holds as applied is. */
static inline void seq_merge(uint64_t *hi, uint64_t *mask, uint64_t qhi, uint64_t qmask) {
    if (qhi > *hi) {
        *hi = qhi;
        *mask = qmask;
    } else if (qhi == *hi) {
        *mask |= qmask;
    }
}

/* bseq changed (e->seq too, perhaps): every group's slice is saved again. */
static void seqs_changed(client_entry *e) {
    e->dirty = true;
    e->gdirty = ~(uint64_t)0;
}

typedef enum { FLUSH_IDLE, FLUSH_PENDING, FLUSH_DONE } flush_state;

typedef struct flush_job {
    ps_store_batch *batch;       /* meta entries; rows are added by the write-back thread */
    ps_table_dump *dumps;        /* per table: rows copied on the loop thread */
    bool rows_added;             /* dumps are in the batch (a retry must not re-add) */
    uint32_t *gens;              /* per table */
    uint32_t dense_gen;
    uint64_t covered_lsn;
    size_t rows;
    uint32_t group;              /* the write-back group of this batch */
    bool last;                   /* ... the round's last */
    bool *big;                   /* per table: a round large enough for fresh memtables */
    uint64_t *bucket_lsn;        /* the shard's bucket_lsn once this batch is stored */
} flush_job;

struct ps_shard {
    const ps_config *cfg;
    uint32_t id;
    char dir[PS_PATH_MAX];
    ps_store *store;
    ps_table **tables;
    size_t ntables;
    ps_dense *dense;
    ps_pushlog *log;
    bool replaying;
    uint64_t replay_covered;     /* while replaying: every record <= this is applied */
    /* Write-back in groups (see "Write-back in groups" below): the
     * groups, and per bucket the lsn up to which the store holds its rows
     * (meta "bucket_lsn"); the dense blocks go with group 0, up to
     * dense_lsn. A round writes every group once, in order; round_group is
     * the next one. */
    uint32_t ngroups;
    uint64_t *bucket_lsn;
    uint64_t dense_lsn;
    bool groups_reset;           /* the next group 0 batch clears the others' counts */
    bool round_active;
    uint32_t round_group;

    client_entry *clients;
    size_t nclients, clients_cap;

    ps_cluster_map map;          /* the map served; meta "cluster_map" holds it */
    bool fenced;                 /* meta "move" holds [frozen_lo, frozen_hi): a restart comes back frozen */
    bool frozen;                 /* ... and pulls and pushes of it answer MOVING (implies fenced) */
    uint32_t frozen_lo, frozen_hi;
    /* A range being copied away (ps_shard_track()): the fids pushes changed
     * since the current catch-up round began, per table, and the round
     * being sent (taken from them, sorted). */
    uint64_t track_id;           /* 0: none */
    uint32_t track_lo, track_hi;
    ps_keyset *tracked;
    uint32_t round_no;           /* the catch-up round taken last; 0: none yet */
    /* The first pass's walk of the tracked range, kept from one EXPORT
     * page to the next (export_walk_take()): at the row after exp_last
     * of table exp_table, for copy exp_track; begun at exp_born_ms. */
    ps_store_iter *exp_it;
    uint64_t exp_track;
    uint32_t exp_table;
    uint8_t exp_last[PS_STORE_KEY_LEN];
    uint64_t exp_born_ms;
    /* Pushes into the tracked range slowed at this level (ps_shard_set_throttle()). */
    uint32_t throttle;
    /* No periodic write-back begins before this (ps_shard_hold_writeback()):
     * a cut-over's small fsync'ed writes would queue behind its batch. */
    uint64_t hold_until_ms;
    uint32_t admit_round;        /* the round of admission filters taken last; 0: none yet */
    uint64_t **round;
    size_t *round_n;
    /* The target side: a range this process dropped (before a copy into it),
     * and per table the highest store key adopted into it since, so that
     * rows above it are known not to be stored here (ps_shard_adopt_rows()).
     * A restart forgets it: adoption then looks every row up. */
    uint32_t fresh_lo, fresh_hi; /* empty: none */
    /* Write-backs begun, and ended well; the one the tracked range's export
     * waits for (the first begun after track(): rows dirty before it). */
    uint64_t wb_begun, wb_done, track_wb;
    uint8_t (*fresh_top)[PS_STORE_KEY_LEN];
    bool *fresh_any;             /* per table: fresh_top is set */
    /* Ranges whose adopted sequence numbers are in an "aseq/" record that
     * the last batch of the next write-back round deletes (adopt_seqs()). */
    struct aseq_entry {
        uint64_t range;          /* lo << 32 | hi */
        uint64_t wb;             /* wb_begun when noted */
    } *aseq;
    size_t naseq, aseq_cap;
    /* The target side of a copy's first pass loaded in bulk
     * (ps_shard_stage_begin()): one SST file per table under
     * <dir>/staging, ingested when the pass ends. Not durable: a restart
     * forgets the copy, and the mover begins it again. */
    uint64_t stage_id;           /* 0: none */
    uint32_t stage_lo, stage_hi;
    struct stage_table *stage;   /* per table */
    /* After the ingest: per table, the rows the first pass stored here, so
     * that a catch-up page knows which rows it replaces (and their clock,
     * for the live count) without reading the store. In memory only, from
     * the ingest until the range is dropped or given to this shard, and
     * the copy begun again; a restart forgets it (pages then look up). */
    memo_table *memo;            /* NULL: none */
    uint32_t memo_lo, memo_hi;
    /* A drop under way (ps_shard_drop() in steps): its range, per table the
     * walk of its stored rows, the deletes, and the rows in memory before. */
    ps_forget *drop;             /* NULL: none */
    uint32_t drop_lo, drop_hi;
    ps_store_batch *drop_batch;
    uint64_t drop_in_memory;
    /* A stepped drop stored, its counts not yet: done once write-back
     * number settle_wb (one begun after the drop) has ended. */
    uint64_t settle_wb;          /* 0: none */
    uint32_t settle_lo, settle_hi;
    uint64_t settle_rows;

    /* Write-back thread and its single job slot. */
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    flush_state state;
    bool stop;
    atomic_bool closing;         /* the last write-back: no next dump to prepare */
    flush_job job;
    int job_result;
    char job_err[256];
    void (*notify)(void *ctx);
    void *notify_ctx;
    void (*on_replay)(void *ctx, uint64_t records);
    void *on_replay_ctx;

    uint64_t last_flush_ms, retry_at_ms;
    bool job_failed;             /* job holds a batch to retry */
    bool log_failed;             /* the push log has an unwritten tail */
    bool read_only;
    char store_error[512];

    ps_shard_counters c;
};

/* ---- helpers ------------------------------------------------------------ */

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool ps_shard_owns_all(const ps_shard *s, const uint64_t *keys, size_t n) {
    /* Shard 0 of a one-shard map owns every bucket (ps_cluster_map_check):
     * no key to hash. */
    if (s->map.nshards == 1 && s->id == 0)
        return true;
    for (size_t i = 0; i < n; i++)
        if (ps_cluster_map_key_owner(&s->map, keys[i]) != s->id)
            return false;
    return true;
}

/* ---- the cluster map ---------------------------------------------------- */

#define META_MAP "cluster_map"

static int store_map(ps_shard *s, const ps_cluster_map *m, char *err, size_t errlen) {
    char *buf;
    size_t len;
    int r = ps_cluster_map_encode(m, &buf, &len);
    if (r < 0)
        return r;
    ps_store_batch *b = ps_store_batch_new();
    if (!b) {
        free(buf);
        return -ENOMEM;
    }
    ps_store_batch_put(b, s->store, CF_META, META_MAP, strlen(META_MAP), buf, len);
    r = ps_store_write_sync(s->store, b, err, errlen);
    ps_store_batch_free(b);
    free(buf);
    return r;
}

/* The stored map, or the config's when none is stored or the config's
 * epoch is higher. */
static int load_map(ps_shard *s, char *err, size_t errlen) {
    char *v;
    size_t len;
    int r = ps_store_get(s->store, CF_META, META_MAP, strlen(META_MAP), &v, &len, err, errlen);
    if (r < 0)
        return r;
    ps_cluster_map stored = {0};
    if (v) {
        r = ps_cluster_map_decode(v, len, &stored);
        free(v);
        if (r < 0) {
            snprintf(err, errlen, "%s: the stored cluster map is unreadable", s->dir);
            return r;
        }
        if (stored.buckets != s->cfg->buckets) {
            snprintf(err, errlen, "%s: the stored cluster map has %u buckets, the config %u",
                     s->dir, stored.buckets, s->cfg->buckets);
            ps_cluster_map_deinit(&stored);
            return PS_ECONFIG;
        }
        if (stored.version >= s->cfg->map_version) {
            s->map = stored;
            return 0;
        }
        ps_cluster_map_deinit(&stored);
    }
    r = ps_cluster_map_from_config(s->cfg, &s->map);
    if (r < 0)
        return r;
    return store_map(s, &s->map, err, errlen);
}

const ps_cluster_map *ps_shard_map(const ps_shard *s) { return &s->map; }

/* ---- moving a range ------------------------------------------------------- */

static client_entry *client_slot(ps_shard *s, uint64_t id, bool insert);

#define META_MOVE "move"

static int meta_write_sync(ps_shard *s, const char *key, const void *v, size_t len, char *err,
                           size_t errlen) {
    ps_store_batch *b = ps_store_batch_new();
    if (!b)
        return -ENOMEM;
    if (v)
        ps_store_batch_put(b, s->store, CF_META, key, strlen(key), v, len);
    else
        ps_store_batch_delete(b, s->store, CF_META, key, strlen(key));
    int r = ps_store_write_sync(s->store, b, err, errlen);
    ps_store_batch_free(b);
    return r;
}

/* A kept walk holds the files and memtables it reads from (RocksDB frees
 * a flushed memtable only when no iterator reads it): one older than this
 * is not continued but begun again, so that write-backs under a push load
 * during a long first pass leave at most about a second of memtables
 * pinned; the tick frees one that has aged so (a mover that went away). */
#define EXPORT_WALK_AGE_MS 1000

static void export_walk_end(ps_shard *s) {
    ps_store_iter_free(s->exp_it);
    s->exp_it = NULL;
}

static void track_end(ps_shard *s) {
    export_walk_end(s);
    for (size_t i = 0; s->tracked && i < s->ntables; i++) {
        ps_keyset_clear(&s->tracked[i]);
        free(s->round[i]);
        s->round[i] = NULL;
        s->round_n[i] = 0;
    }
    s->track_id = 0;
    s->round_no = 0;
    s->throttle = 0;
    for (size_t i = 0; s->tables && i < s->ntables; i++)
        if (ps_table_admit(s->tables[i]))
            ps_admit_send_end(ps_table_admit(s->tables[i]));
    s->admit_round = 0;
}

static bool in_range(uint32_t b, uint32_t lo, uint32_t hi) { return b >= lo && b < hi; }

/* t's position in the shard's tables (ntables if it is not one). */
static size_t table_index(const ps_shard *s, const ps_table *t) {
    size_t ti = 0;
    while (ti < s->ntables && s->tables[ti] != t)
        ti++;
    return ti;
}

/* The moving range's keys of a push just applied, for the next catch-up
 * round. Without memory for them the tracking ends: the copy starts again
 * rather than miss a change. */
static void track_push(ps_shard *s, const ps_table *t, const uint64_t *keys, size_t n) {
    if (!s->track_id || s->replaying)
        return;
    size_t ti = table_index(s, t);
    for (size_t i = 0; i < n && ti < s->ntables; i++)
        if (in_range(ps_bucket(keys[i], s->map.buckets), s->track_lo, s->track_hi) &&
            ps_keyset_add(&s->tracked[ti], keys[i]) < 0) {
            track_end(s);
            return;
        }
}

uint64_t ps_shard_track_id(const ps_shard *s) { return s->track_id; }

uint64_t ps_shard_track_pending(const ps_shard *s) {
    uint64_t n = 0;
    for (size_t i = 0; s->track_id && i < s->ntables; i++)
        n += ps_keyset_size(&s->tracked[i]);
    return n;
}

static int check_range(const ps_shard *s, uint32_t lo, uint32_t hi, char *err, size_t errlen) {
    if (lo >= hi || hi > s->map.buckets) {
        snprintf(err, errlen, "bucket range %u-%u is not within 0-%u", lo, hi, s->map.buckets);
        return PS_EPROTO;
    }
    return 0;
}

int ps_shard_track(ps_shard *s, uint32_t lo, uint32_t hi, uint64_t *ret_id, uint64_t *ret_rows,
                   char *err, size_t errlen) {
    int r = check_range(s, lo, hi, err, errlen);
    if (r < 0)
        return r;
    if (s->fenced && (s->frozen_lo != lo || s->frozen_hi != hi)) {
        snprintf(err, errlen, "buckets %u-%u are moving already", s->frozen_lo, s->frozen_hi - 1);
        return PS_EPROTO;
    }
    if (s->track_id && (s->track_lo != lo || s->track_hi != hi)) {
        snprintf(err, errlen, "buckets %u-%u are being copied already (ctrps-cli move --abort)",
                 s->track_lo, s->track_hi - 1);
        return PS_EPROTO;
    }
    uint32_t owned = 0;
    for (uint32_t b = 0; b < s->map.buckets; b++)
        owned += s->map.owner[b] == s->id;
    for (uint32_t b = lo; b < hi; b++)
        if (s->map.owner[b] != s->id) {
            snprintf(err, errlen, "bucket %u is not owned by shard %u", b, s->id);
            return PS_EWRONG_SHARD;
        }
    if (!s->tracked) {
        s->tracked = calloc(s->ntables, sizeof(*s->tracked));
        s->round = calloc(s->ntables, sizeof(*s->round));
        s->round_n = calloc(s->ntables, sizeof(*s->round_n));
        if (!s->tracked || !s->round || !s->round_n)
            return -ENOMEM;
    }
    track_end(s); /* a copy begun again records from now */
    static uint64_t count;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t id = ((uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec) ^ (++count << 48);
    s->track_id = id ? id : 1;
    s->track_lo = lo;
    s->track_hi = hi;
    s->track_wb = s->wb_begun + 1;
    for (size_t i = 0; i < s->ntables; i++) {
        ps_admit *a = ps_table_admit(s->tables[i]); /* the whole filter goes (admit.h) */
        if (a && (r = ps_admit_send_begin(a)) < 0) {
            track_end(s);
            return r;
        }
    }
    s->c.moves_started++;
    uint64_t rows = 0;
    for (size_t i = 0; i < s->ntables; i++) {
        ps_table_stats st;
        ps_table_stats_get(s->tables[i], &st);
        rows += st.rows;
    }
    *ret_id = s->track_id;
    *ret_rows = owned ? rows * (hi - lo) / owned : 0; /* fids spread evenly over buckets */
    return 0;
}

int ps_shard_freeze(ps_shard *s, uint32_t lo, uint32_t hi, bool fence_only, char *err,
                    size_t errlen) {
    int rc = check_range(s, lo, hi, err, errlen);
    if (rc < 0)
        return rc;
    if (s->fenced) {
        if (s->frozen_lo == lo && s->frozen_hi == hi) {
            s->frozen = s->frozen || !fence_only;
            return 0;
        }
        snprintf(err, errlen, "buckets %u-%u are moving already", s->frozen_lo, s->frozen_hi - 1);
        return PS_EPROTO;
    }
    if (s->track_id && (s->track_lo != lo || s->track_hi != hi)) {
        snprintf(err, errlen, "buckets %u-%u are being copied already", s->track_lo, s->track_hi - 1);
        return PS_EPROTO;
    }
    for (uint32_t b = lo; b < hi; b++)
        if (s->map.owner[b] != s->id) {
            snprintf(err, errlen, "bucket %u is not owned by shard %u", b, s->id);
            return PS_EWRONG_SHARD;
        }
    uint32_t v[2] = {lo, hi};
    int r = meta_write_sync(s, META_MOVE, v, sizeof(v), err, errlen);
    if (r < 0)
        return r;
    s->fenced = true;
    s->frozen = !fence_only;
    s->frozen_lo = lo;
    s->frozen_hi = hi;
    return 0;
}

int ps_shard_thaw(ps_shard *s, char *err, size_t errlen) {
    track_end(s);
    if (!s->fenced)
        return 0;
    int r = meta_write_sync(s, META_MOVE, NULL, 0, err, errlen);
    if (r == 0)
        s->fenced = s->frozen = false;
    return r;
}

bool ps_shard_frozen(const ps_shard *s, uint32_t *ret_lo, uint32_t *ret_hi) {
    if (s->frozen) {
        *ret_lo = s->frozen_lo;
        *ret_hi = s->frozen_hi;
    }
    return s->frozen;
}

static bool touches(const ps_shard *s, const uint64_t *keys, size_t n, uint32_t lo, uint32_t hi) {
    for (size_t i = 0; i < n; i++)
        if (in_range(ps_bucket(keys[i], s->map.buckets), lo, hi))
            return true;
    return false;
}

bool ps_shard_touches_frozen(const ps_shard *s, const uint64_t *keys, size_t n) {
    return s->frozen && touches(s, keys, n, s->frozen_lo, s->frozen_hi);
}

int ps_shard_set_throttle(ps_shard *s, uint32_t lo, uint32_t hi, uint32_t level, char *err,
                          size_t errlen) {
    if (!s->track_id || s->track_lo != lo || s->track_hi != hi) {
        snprintf(err, errlen, "no copy of buckets %u-%u to throttle", lo, hi - 1);
        return PS_EPROTO;
    }
    s->throttle = level < 4 ? level : 3;
    return 0;
}

/* What the refusals this replaced cost a writer that waits for each push:
 * 1-3 of every 4 pushes refused, each resent after the client's 20 ms,
 * make 20/3, 20 and 60 ms a push. */
const uint32_t PS_THROTTLE_MS[4] = {0, 7, 20, 60};

uint32_t ps_shard_throttle_ms(ps_shard *s, const uint64_t *keys, size_t n) {
    if (!s->throttle || !s->track_id || !touches(s, keys, n, s->track_lo, s->track_hi))
        return 0;
    s->c.pushes_throttled++;
    return PS_THROTTLE_MS[s->throttle];
}

static void flush_end(ps_shard *s, uint64_t now_ms);
static int flush_begin(ps_shard *s);
static size_t total_dirty(const ps_shard *s);

static flush_state flush_state_now(ps_shard *s) {
    pthread_mutex_lock(&s->mu);
    flush_state st = s->state;
    pthread_mutex_unlock(&s->mu);
    return st;
}

/* The write-back thread's state, on the loop thread; a batch it has
 * finished is ended first, which may begin the round's next one: the state
 * after that is returned (FLUSH_PENDING or FLUSH_IDLE; FLUSH_DONE if that
 * one is done already, to be ended at the next poll). */
static flush_state writeback_poll(ps_shard *s, uint64_t now_ms) {
    flush_state st = flush_state_now(s);
    if (st != FLUSH_DONE)
        return st;
    flush_end(s, now_ms);
    return flush_state_now(s);
}

/* A write-back begun on the write-back thread, for a caller that asks
 * again later instead of waiting. */
static int writeback_begin(ps_shard *s, char *err, size_t errlen) {
    int r = flush_begin(s);
    if (r < 0)
        snprintf(err, errlen, "write-back: %s", ps_strerror(r));
    return r;
}

/* The error of a shard whose last write-back failed (it retries it). */
static int writeback_failed(const ps_shard *s, char *err, size_t errlen) {
    snprintf(err, errlen, "write-back failed: %s", s->store_error);
    return PS_EREAD_ONLY;
}

/* *ret_done: write-back number `wb` (counted by wb_begun) or a later one
 * has ended. If not, and none runs, one is begun on the write-back thread,
 * for a caller that asks again later instead of waiting. */
static int writeback_reached(ps_shard *s, uint64_t wb, bool *ret_done, char *err, size_t errlen) {
    flush_state st = writeback_poll(s, mono_ms());
    if (s->job_failed)
        return writeback_failed(s, err, errlen);
    *ret_done = s->wb_done >= wb;
    if (*ret_done || st != FLUSH_IDLE)
        return 0;
    return writeback_begin(s, err, errlen);
}

/* Whether the store holds every row of the tracked range as of track()
 * (changes since are recorded): a write-back begun after it has ended, or
 * nothing is dirty. Starts that write-back if none runs, on the write-back
 * thread: the loop goes on serving meanwhile. */
static int export_ready(ps_shard *s, bool *ret_ready, char *err, size_t errlen) {
    flush_state st = writeback_poll(s, mono_ms());
    if (st == FLUSH_IDLE && !s->round_active && !s->job_failed && s->wb_done < s->track_wb &&
        total_dirty(s) == 0)
        s->track_wb = s->wb_done; /* every row is in the store: none to wait for */
    return writeback_reached(s, s->track_wb, ret_ready, err, errlen);
}

/* The first pass reads the range in one walk, not one per page: each new
 * walk seeks every file that holds part of the range and reads 2 MiB
 * ahead in each (ps_store_scan_new()), most of which the next page's walk
 * read again. A kept walk reads the store as it was at the page that
 * began it, later ones never: rows changed since TRACK go again in the
 * catch-up rounds anyway, so the copy ends the same. The walk left after
 * a page is taken up by the EXPORT that asks for the page after it (same
 * copy, table and cursor) within EXPORT_WALK_AGE_MS of its start; any
 * other request begins a new one. */
static ps_store_iter *export_walk_take(ps_shard *s, bool may, uint32_t table,
                                       const uint8_t *after, uint64_t *ret_born_ms) {
    ps_store_iter *it = s->exp_it;
    uint64_t now = mono_ms();
    *ret_born_ms = now;
    if (!it)
        return NULL;
    s->exp_it = NULL;
    if (may && after && s->exp_track == s->track_id && s->exp_table == table &&
        !memcmp(s->exp_last, after, PS_STORE_KEY_LEN) &&
        now < s->exp_born_ms + EXPORT_WALK_AGE_MS) {
        *ret_born_ms = s->exp_born_ms;
        return it;
    }
    ps_store_iter_free(it);
    return NULL;
}

static void export_walk_keep(ps_shard *s, ps_store_iter *it, uint64_t born_ms, uint32_t table,
                             const uint8_t *after) {
    export_walk_end(s);
    s->exp_it = it;
    s->exp_track = s->track_id;
    s->exp_table = table;
    memcpy(s->exp_last, after, PS_STORE_KEY_LEN);
    s->exp_born_ms = born_ms;
}

int ps_shard_move_export(ps_shard *s, uint32_t lo, uint32_t hi, uint32_t *table_index,
                         uint8_t *after, size_t *alen, size_t limit, ps_shard_move_row_fn fn,
                         void *ctx, bool *ret_done, char *err, size_t errlen) {
    bool frozen = s->frozen && s->frozen_lo == lo && s->frozen_hi == hi;
    bool tracked = s->track_id && s->track_lo == lo && s->track_hi == hi;
    if (!frozen && !tracked) {
        snprintf(err, errlen, "export of buckets %u-%u, which are not moving from here", lo, hi - 1);
        return PS_EPROTO;
    }
    int r;
    if (*table_index == 0 && *alen == 0) {
        bool ready = true;
        r = tracked ? export_ready(s, &ready, err, errlen) : ps_shard_flush_sync(s, err, errlen);
        if (r < 0)
            return r;
        if (!ready) {
            *ret_done = false;
            return 0;
        }
    }
    size_t count = 0;
    while (*table_index < s->ntables && count < limit) {
        ps_table *t = s->tables[*table_index];
        ps_store_key start;
        ps_store_key_encode((uint16_t)lo, 0, &start);
        bool resume = *alen == PS_STORE_KEY_LEN;
        uint64_t born;
        ps_store_iter *it = export_walk_take(s, tracked && !frozen, *table_index,
                                             resume ? after : NULL, &born);
        if (!it)
            it = ps_store_scan_new(s->store, ps_table_cf(t), resume ? after : start.b,
                                   PS_STORE_KEY_LEN);
        if (!it)
            return -ENOMEM;
        bool table_done = true;
        r = 0;
        for (; ps_store_iter_valid(it); ps_store_iter_next(it)) {
            size_t klen, vlen;
            const uint8_t *k = ps_store_iter_key(it, &klen);
            const void *v = ps_store_iter_value(it, &vlen);
            if (klen != PS_STORE_KEY_LEN || ps_store_key_bucket(k) >= hi)
                break;
            if (resume && !memcmp(k, after, PS_STORE_KEY_LEN))
                continue;
            if (count == limit) {
                table_done = false;
                break;
            }
            r = fn(ctx, ps_store_key_fid(k), v, vlen);
            if (r < 0)
                break;
            s->c.move_rows_sent++;
            memcpy(after, k, PS_STORE_KEY_LEN);
            *alen = PS_STORE_KEY_LEN;
            count++;
        }
        if (r == 0 && !table_done && tracked && !frozen)
            export_walk_keep(s, it, born, *table_index, after);
        else
            ps_store_iter_free(it);
        if (r < 0)
            return r;
        if (!table_done)
            break;
        (*table_index)++;
        *alen = 0;
        if (count)
            break; /* one table per page */
    }
    *ret_done = *table_index >= s->ntables;
    return 0;
}

/* A catch-up round begins: what was recorded becomes the round, sorted. */
static int round_take(ps_shard *s) {
    for (size_t i = 0; i < s->ntables; i++) {
        free(s->round[i]);
        s->round[i] = NULL;
        s->round_n[i] = 0;
        int64_t n = ps_keyset_take_sorted(&s->tracked[i], &s->round[i]);
        if (n < 0)
            return (int)n;
        s->round_n[i] = (size_t)n;
    }
    return 0;
}

int ps_shard_move_changed(ps_shard *s, uint32_t lo, uint32_t hi, uint32_t round,
                          uint32_t *table_index, uint64_t *offset, size_t limit,
                          ps_shard_move_row_fn fn, void *ctx, bool *ret_done, uint64_t *ret_pending,
                          char *err, size_t errlen) {
    if (!s->track_id || s->track_lo != lo || s->track_hi != hi) {
        snprintf(err, errlen, "no changes of buckets %u-%u are recorded here", lo, hi - 1);
        return PS_EPROTO;
    }
    int r;
    if (round == s->round_no + 1 && *table_index == 0 && *offset == 0) {
        if ((r = round_take(s)) < 0)
            return r;
        s->round_no = round;
    } else if (round != s->round_no || round == 0 || *table_index > s->ntables) {
        snprintf(err, errlen, "catch-up round %u of buckets %u-%u: the current one is %u", round, lo,
                 hi - 1, s->round_no);
        return PS_EPROTO;
    }
    size_t count = 0;
    char *value = NULL;
    r = 0;
    while (*table_index < s->ntables && count < limit) {
        ps_table *t = s->tables[*table_index];
        const uint64_t *keys = s->round[*table_index];
        size_t n = s->round_n[*table_index];
        free(value);
        value = malloc(ps_table_value_len(t));
        if (!value)
            return -ENOMEM;
        while (*offset < n && count < limit && r == 0) {
            bool found;
            uint64_t fid = keys[*offset];
            r = ps_table_row_value(t, fid, value, &found, err, errlen);
            if (r == 0)
                r = fn(ctx, fid, value, found ? ps_table_value_len(t) : 0);
            if (r == 0) {
                (*offset)++;
                count++;
                s->c.move_rows_sent++;
                s->c.move_rows_caught_up++;
            }
        }
        if (r < 0 || *offset < n)
            break;
        (*table_index)++;
        *offset = 0;
        if (count)
            break; /* one table per page */
    }
    free(value);
    if (r < 0)
        return r;
    *ret_done = *table_index >= s->ntables;
    *ret_pending = ps_shard_track_pending(s);
    return 0;
}

int ps_shard_move_seqs(ps_shard *s, uint32_t lo, uint32_t hi, uint64_t **ret_ids,
                       uint64_t **ret_seqs, uint64_t **ret_masks, size_t *ret_n) {
    size_t w = hi - lo;
    uint64_t *ids = malloc((s->nclients + 1) * sizeof(uint64_t));
    uint64_t *seqs = malloc((s->nclients * w + 1) * sizeof(uint64_t));
    uint64_t *masks = malloc((s->nclients * w + 1) * sizeof(uint64_t));
    if (!ids || !seqs || !masks) {
        free(ids);
        free(seqs);
        free(masks);
        return -ENOMEM;
    }
    size_t n = 0;
    for (size_t i = 0; i < s->clients_cap; i++) {
        client_entry *e = &s->clients[i];
        if (!e->id)
            continue;
        ids[n] = e->id;
        memcpy(seqs + n * w, e->bseq + lo, w * sizeof(uint64_t));
        memcpy(masks + n * w, e->bmask + lo, w * sizeof(uint64_t));
        n++;
    }
    *ret_ids = ids;
    *ret_seqs = seqs;
    *ret_masks = masks;
    *ret_n = n;
    return 0;
}

/* [lo, hi) holds no rows now: adoption into it may skip its lookups
 * (without memory for the marks, it looks every row up). */
static void fresh_begin(ps_shard *s, uint32_t lo, uint32_t hi) {
    if (!s->fresh_top) {
        s->fresh_top = calloc(s->ntables, sizeof(*s->fresh_top));
        s->fresh_any = calloc(s->ntables, sizeof(*s->fresh_any));
        if (!s->fresh_top || !s->fresh_any) {
            free(s->fresh_top);
            free(s->fresh_any);
            s->fresh_top = NULL;
            s->fresh_any = NULL;
            return;
        }
    }
    memset(s->fresh_any, 0, s->ntables * sizeof(*s->fresh_any));
    s->fresh_lo = lo;
    s->fresh_hi = hi;
}

/* Whether none of keys (of table ti) can be stored here: all in the range
 * dropped last and above every key adopted into it since. Moves the mark
 * past them either way. */
static bool adopt_fresh(ps_shard *s, size_t ti, const uint64_t *keys, size_t n) {
    if (!s->fresh_top || ti >= s->ntables || !n)
        return false;
    bool fresh = true;
    uint8_t lo[PS_STORE_KEY_LEN], hi[PS_STORE_KEY_LEN];
    for (size_t i = 0; i < n; i++) {
        uint32_t b = ps_bucket(keys[i], s->map.buckets);
        fresh = fresh && in_range(b, s->fresh_lo, s->fresh_hi);
        ps_store_key k;
        ps_store_key_encode((uint16_t)b, keys[i], &k);
        if (i == 0 || memcmp(k.b, lo, PS_STORE_KEY_LEN) < 0)
            memcpy(lo, k.b, PS_STORE_KEY_LEN);
        if (i == 0 || memcmp(k.b, hi, PS_STORE_KEY_LEN) > 0)
            memcpy(hi, k.b, PS_STORE_KEY_LEN);
    }
    uint8_t *top = s->fresh_top[ti];
    fresh = fresh && (!s->fresh_any[ti] || memcmp(lo, top, PS_STORE_KEY_LEN) > 0);
    if (!s->fresh_any[ti] || memcmp(hi, top, PS_STORE_KEY_LEN) > 0)
        memcpy(top, hi, PS_STORE_KEY_LEN);
    s->fresh_any[ti] = true;
    return fresh;
}

static int check_not_owned(const ps_shard *s, const uint64_t *keys, size_t n, char *err,
                           size_t errlen) {
    for (size_t i = 0; i < n; i++)
        if (s->map.owner[ps_bucket(keys[i], s->map.buckets)] == s->id) {
            snprintf(err, errlen, "adopting a row of bucket %u, which shard %u owns already",
                     ps_bucket(keys[i], s->map.buckets), s->id);
            return PS_EPROTO;
        }
    return 0;
}

static void memo_end(ps_shard *s) {
    for (size_t i = 0; s->memo && i < s->ntables; i++)
        memo_free(&s->memo[i]);
    free(s->memo);
    s->memo = NULL;
}

static void stage_end(ps_shard *s);
static bool stage_overlaps(const ps_shard *s, uint32_t lo, uint32_t hi);
static int flush_sync(ps_shard *s, bool always, char *err, size_t errlen);

int ps_shard_adopt_rows(ps_shard *s, ps_table *t, const uint64_t *keys, const void *const *values,
                        const size_t *lens, size_t n, char *err, size_t errlen) {
    int rc = check_not_owned(s, keys, n, err, errlen);
    if (rc < 0)
        return rc;
    /* A staged file ingested later would hide these rows: the staged copy
     * is given up (the mover, told so, begins it again). */
    for (size_t i = 0; i < n && s->stage_id; i++) {
        uint32_t b = ps_bucket(keys[i], s->map.buckets);
        if (stage_overlaps(s, b, b + 1))
            stage_end(s);
    }
    size_t ti = table_index(s, t);
    /* A copy's first pass (rows in store order into a range just dropped)
     * need not look for earlier copies of its rows. */
    bool fresh = adopt_fresh(s, ti, keys, n);
    /* A catch-up page over an ingested first pass: the memo says what it
     * replaces. */
    memo_table *m = !fresh && s->memo && ti < s->ntables && !s->memo[ti].keyless ? &s->memo[ti] : NULL;
    ps_adopt_prior *prior = m ? malloc(n * sizeof(*prior)) : NULL;
    ptrdiff_t *at = m ? malloc(n * sizeof(*at)) : NULL;
    if (m && (!prior || !at)) {
        free(prior);
        free(at);
        return -ENOMEM;
    }
    for (size_t i = 0; m && i < n; i++) {
        ps_store_key k;
        uint32_t bk = ps_bucket(keys[i], s->map.buckets);
        ps_store_key_encode((uint16_t)bk, keys[i], &k);
        at[i] = in_range(bk, s->memo_lo, s->memo_hi) ? memo_find(m, k.b) : -1;
        prior[i].known = at[i] >= 0;
        prior[i].stored = at[i] >= 0 && m->seen[at[i]] != MEMO_GONE;
        prior[i].last_seen = at[i] >= 0 ? m->seen[at[i]] : 0;
    }
    ps_store_batch *b = ps_store_batch_new();
    int r = b ? ps_table_adopt(t, keys, values, lens, n, fresh, prior, b, err, errlen) : -ENOMEM;
    if (r == 0)
        r = ps_store_write_sync(s->store, b, err, errlen);
    ps_store_batch_free(b);
    for (size_t i = 0; m && r == 0 && i < n; i++)
        if (at[i] >= 0)
            m->seen[at[i]] = lens[i] ? ps_table_value_last_seen(values[i]) : MEMO_GONE;
    if (m && r < 0) /* counted or not: the memo no longer knows */
        memo_end(s);
    free(prior);
    free(at);
    if (r == 0)
        s->c.move_rows_received += n;
    return r;
}

/* "aseqw/LO-HI": the clients' sequence numbers adopted with buckets [LO, HI),
 * stored with fsync as they come (a move's cut-over): per client its id,
 * HI - LO seqs and their HI - LO masks (seq_note()), 8 bytes each. The
 * cseq/ (gseq/) records of the next write-back round hold them, and its
 * last batch deletes the record; an open applies any record left before
 * the push log is replayed. So a cut-over costs one small write, not a
 * write-back of every dirty row. "aseq/LO-HI", written before the masks,
 * has no masks (SEQ_UNKNOWN). */
static const char *const aseq_prefix[2] = {"aseq/", "aseqw/"};

static void aseq_key(int masks, uint32_t lo, uint32_t hi, char *ret, size_t len) {
    snprintf(ret, len, "%s%u-%u", aseq_prefix[masks], lo, hi);
}

static int aseq_note(ps_shard *s, uint32_t lo, uint32_t hi) {
    uint64_t range = (uint64_t)lo << 32 | hi;
    for (size_t i = 0; i < s->naseq; i++)
        if (s->aseq[i].range == range)
            return 0;
    if (s->naseq == s->aseq_cap) {
        size_t cap = s->aseq_cap ? 2 * s->aseq_cap : 8;
        struct aseq_entry *a = realloc(s->aseq, cap * sizeof(*a));
        if (!a)
            return -ENOMEM;
        s->aseq = a;
        s->aseq_cap = cap;
    }
    s->aseq[s->naseq++] = (struct aseq_entry){range, s->wb_begun};
    return 0;
}

static int aseq_write(ps_shard *s, uint32_t lo, uint32_t hi, const uint64_t *ids, size_t n,
                      char *err, size_t errlen) {
    size_t w = hi - lo, len = n * (1 + 2 * w) * 8;
    uint8_t *v = malloc(len + 1);
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const client_entry *e = client_slot(s, ids[i], false);
        uint8_t *p = v + i * (1 + 2 * w) * 8;
        memcpy(p, &ids[i], 8);
        memcpy(p + 8, e->bseq + lo, w * 8);
        memcpy(p + (1 + w) * 8, e->bmask + lo, w * 8);
    }
    char key[32];
    aseq_key(1, lo, hi, key, sizeof(key));
    int r = aseq_note(s, lo, hi);
    if (r == 0)
        r = meta_write_sync(s, key, v, len, err, errlen);
    free(v);
    return r;
}

/* The records of one prefix (masks: 1 for aseqw/). */
static int aseq_load_prefix(ps_shard *s, int masks) {
    const char *prefix = aseq_prefix[masks];
    size_t plen = strlen(prefix);
    ps_store_iter *it = ps_store_iter_new(s->store, CF_META, prefix, plen);
    if (!it)
        return -ENOMEM;
    int r = 0;
    for (; r == 0 && ps_store_iter_valid(it); ps_store_iter_next(it)) {
        size_t klen, vlen;
        const char *k = ps_store_iter_key(it, &klen);
        const uint8_t *v = (const uint8_t *)ps_store_iter_value(it, &vlen);
        if (klen <= plen || memcmp(k, prefix, plen))
            break;
        char name[32];
        uint32_t lo, hi;
        if (klen - plen >= sizeof(name))
            continue;
        memcpy(name, k + plen, klen - plen);
        name[klen - plen] = '\0';
        if (sscanf(name, "%u-%u", &lo, &hi) != 2 || lo >= hi || hi > s->cfg->buckets)
            continue;
        size_t w = hi - lo, each = (1 + (1 + masks) * w) * 8;
        if (vlen % each)
            continue;
        /* The later per bucket: a later adoption of a bucket carries larger
         * seqs than an earlier one, and cseq/ than an adoption it holds. */
        for (size_t i = 0; r == 0 && i < vlen / each; i++) {
            const uint8_t *p = v + i * each;
            uint64_t id, q, m = SEQ_UNKNOWN;
            memcpy(&id, p, 8);
            client_entry *e = client_slot(s, id, true);
            if (!e) {
                r = -ENOMEM;
                break;
            }
            for (size_t b = 0; b < w; b++) {
                memcpy(&q, p + (1 + b) * 8, 8);
                if (masks)
                    memcpy(&m, p + (1 + w + b) * 8, 8);
                seq_merge(&e->bseq[lo + b], &e->bmask[lo + b], q, m);
                e->seq = e->seq > q ? e->seq : q;
            }
            seqs_changed(e);
        }
        if (r == 0)
            r = aseq_note(s, lo, hi);
    }
    ps_store_iter_free(it);
    return r;
}

static int aseq_load(ps_shard *s) {
    int r = aseq_load_prefix(s, 0);
    return r < 0 ? r : aseq_load_prefix(s, 1);
}

int ps_shard_adopt_seqs(ps_shard *s, uint32_t lo, uint32_t hi, const uint64_t *ids,
                        const uint64_t *seqs, const uint64_t *masks, size_t n, char *err,
                        size_t errlen) {
    int rc = check_range(s, lo, hi, err, errlen);
    if (rc < 0)
        return rc;
    size_t w = hi - lo;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == 0) { /* the empty slot's id: client 0 is not sequenced */
            snprintf(err, errlen, "sequence numbers of client id 0");
            return PS_EPROTO;
        }
    }
    for (size_t i = 0; i < n; i++) {
        client_entry *e = client_slot(s, ids[i], true);
        if (!e)
            return -ENOMEM;
        for (size_t b = 0; b < w; b++) {
            uint64_t q = seqs[i * w + b];
            e->bseq[lo + b] = q;
            e->bmask[lo + b] = masks ? masks[i * w + b] : SEQ_UNKNOWN;
            e->seq = e->seq > q ? e->seq : q;
        }
        seqs_changed(e);
    }
    /* Durable before the map may name this shard the owner: one small
     * record, not a write-back (which would also have had to be forced: the
     * clients' entries are not among the dirty rows one is begun for, and a
     * target often has none). */
    return aseq_write(s, lo, hi, ids, n, err, errlen);
}

/* ---- a first pass loaded in bulk (the target side) ---- */

static bool stage_overlaps(const ps_shard *s, uint32_t lo, uint32_t hi) {
    return s->stage_id && lo < s->stage_hi && s->stage_lo < hi;
}

static void stage_path(const ps_shard *s, char *ret, size_t len) {
    snprintf(ret, len, "%s/staging", s->dir);
}

/* Forget the staged copy, if any, and remove its files. */
static void stage_end(ps_shard *s) {
    for (size_t i = 0; s->stage && i < s->ntables; i++) {
        stage_table *st = &s->stage[i];
        if (st->w) {
            ps_store_sst_free(st->w);
            unlink(st->path); /* gone already once ingested (moved into db/) */
        }
        memo_free(&st->rows);
        memset(st, 0, sizeof(*st));
    }
    if (s->stage_id) {
        char dir[PS_PATH_MAX + 16];
        stage_path(s, dir, sizeof(dir));
        rmdir(dir); /* when empty: another process's files stay for its open */
    }
    s->stage_id = 0;
}

bool ps_shard_stage_forget(ps_shard *s) {
    bool had = s->stage_id != 0;
    stage_end(s);
    return had;
}

int ps_shard_stage_begin(ps_shard *s, uint32_t lo, uint32_t hi, uint64_t id, char *err,
                         size_t errlen) {
    int r = check_range(s, lo, hi, err, errlen);
    if (r < 0)
        return r;
    if (!id) {
        snprintf(err, errlen, "a staged copy needs an id");
        return PS_EPROTO;
    }
    stage_end(s);
    memo_end(s);
    if (!s->stage && !(s->stage = calloc(s->ntables, sizeof(*s->stage))))
        return -ENOMEM;
    char dir[PS_PATH_MAX + 16];
    stage_path(s, dir, sizeof(dir));
    r = ps_mkdir_p(dir);
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", dir, ps_strerror(r));
        return r;
    }
    s->stage_id = id;
    s->stage_lo = lo;
    s->stage_hi = hi;
    return 0;
}

static int stage_known(const ps_shard *s, uint64_t id, char *err, size_t errlen) {
    if (id && id == s->stage_id)
        return 0;
    snprintf(err, errlen, "no staged copy %016llx here (this shard restarted, or dropped it)",
             (unsigned long long)id);
    return PS_ENOT_FOUND;
}

/* Put one page into the table's staging file; keys at or below the last
 * one put are a page sent again, already in. */
static int stage_put(ps_shard *s, size_t ti, const uint64_t *keys, const void *const *values,
                     const size_t *lens, size_t n, char *err, size_t errlen) {
    stage_table *st = &s->stage[ti];
    if (!st->w) {
        char dir[PS_PATH_MAX + 16];
        stage_path(s, dir, sizeof(dir));
        snprintf(st->path, sizeof(st->path), "%s/%016llx.%zu.sst", dir,
                 (unsigned long long)s->stage_id, ti);
        int r = ps_store_sst_open(s->store, ps_table_cf(s->tables[ti]), st->path, &st->w, err,
                                  errlen);
        if (r < 0)
            return r;
    }
    for (size_t i = 0; i < n; i++) {
        ps_store_key k;
        ps_store_key_encode((uint16_t)ps_bucket(keys[i], s->map.buckets), keys[i], &k);
        if (ps_store_sst_count(st->w) && memcmp(k.b, st->last, PS_STORE_KEY_LEN) <= 0)
            continue;
        int r = ps_store_sst_put(st->w, k.b, PS_STORE_KEY_LEN, values[i], lens[i], err, errlen);
        if (r < 0)
            return r;
        memcpy(st->last, k.b, PS_STORE_KEY_LEN);
        if (lens[i] && memo_add(&st->rows, k.b, ps_table_value_last_seen(values[i])) < 0)
            return -ENOMEM;
    }
    return 0;
}

int ps_shard_stage_rows(ps_shard *s, uint64_t id, ps_table *t, const uint64_t *keys,
                        const void *const *values, const size_t *lens, size_t n, char *err,
                        size_t errlen) {
    int r = stage_known(s, id, err, errlen);
    if (r == 0)
        r = check_not_owned(s, keys, n, err, errlen);
    for (size_t i = 0; r == 0 && i < n; i++) {
        uint32_t b = ps_bucket(keys[i], s->map.buckets);
        if (!in_range(b, s->stage_lo, s->stage_hi)) {
            snprintf(err, errlen, "a staged row of bucket %u, outside the copy's %u-%u", b,
                     s->stage_lo, s->stage_hi - 1);
            r = PS_EPROTO;
        }
    }
    size_t ti = table_index(s, t);
    if (r == 0 && ti >= s->ntables)
        r = PS_EUNKNOWN_TABLE;
    if (r == 0)
        r = ps_table_adopt_check(t, keys, lens, n, err, errlen);
    if (r < 0)
        return r;
    /* The rows move the fresh marks as adopted rows do: catch-up pages
     * below them look their rows up once the file is in. */
    adopt_fresh(s, ti, keys, n);
    r = stage_put(s, ti, keys, values, lens, n, err, errlen);
    if (r < 0) { /* the file is unusable: the copy begins again */
        stage_end(s);
        return r;
    }
    s->c.move_rows_received += n;
    return 0;
}

int ps_shard_stage_ingest(ps_shard *s, uint64_t id, char *err, size_t errlen) {
    int r = stage_known(s, id, err, errlen);
    for (size_t i = 0; r == 0 && i < s->ntables; i++) {
        stage_table *st = &s->stage[i];
        if (!st->w)
            continue;
        r = ps_store_sst_ingest(st->w, err, errlen);
        if (r == 0) /* in the store: its live rows count */
            ps_table_count_adopted(s->tables[i], st->rows.seen, st->rows.n);
    }
    /* The staged rows, known now to be stored here, for the catch-up. */
    memo_end(s);
    if (r == 0 && (s->memo = calloc(s->ntables, sizeof(*s->memo)))) {
        for (size_t i = 0; i < s->ntables; i++) {
            s->memo[i] = s->stage[i].rows;
            memset(&s->stage[i].rows, 0, sizeof(s->stage[i].rows));
        }
        s->memo_lo = s->stage_lo;
        s->memo_hi = s->stage_hi;
    }
    /* Done, or failed (a table's file may be in): either way the staged
     * copy is over; a failed one is begun again after a drop. */
    stage_end(s);
    return r;
}

/* ---- admission filters (a copy's both sides) ---- */

int ps_shard_move_admit(ps_shard *s, uint32_t lo, uint32_t hi, uint32_t round,
                        uint32_t *table_index, uint64_t *offset, size_t max_bytes,
                        ps_admit_page *ret_page, bool *ret_done, uint64_t *ret_pending, char *err,
                        size_t errlen) {
    if (!s->track_id || s->track_lo != lo || s->track_hi != hi) {
        snprintf(err, errlen, "no copy of buckets %u-%u runs here", lo, hi - 1);
        return PS_EPROTO;
    }
    if (round == s->admit_round + 1 && *table_index == 0 && *offset == 0) {
        for (size_t i = 0; i < s->ntables; i++) {
            ps_admit *a = ps_table_admit(s->tables[i]);
            int r = a ? ps_admit_send_round(a) : 0;
            if (r < 0) { /* a change went unrecorded: the copy begins again */
                track_end(s);
                snprintf(err, errlen, "admission filter round: %s", ps_strerror(r));
                return r;
            }
        }
        s->admit_round = round;
    } else if (round != s->admit_round || round == 0 || *table_index > s->ntables) {
        snprintf(err, errlen, "admission filter round %u of buckets %u-%u: the current one is %u",
                 round, lo, hi - 1, s->admit_round);
        return PS_EPROTO;
    }
    /* One table per page: the first from the cursor with some left. */
    memset(ret_page, 0, sizeof(*ret_page));
    while (*table_index < s->ntables) {
        ps_admit *a = ps_table_admit(s->tables[*table_index]);
        bool done = !a || ps_admit_send_page(a, offset, max_bytes, ret_page);
        if (!done)
            break;
        (*table_index)++;
        *offset = 0;
        if (ret_page->nblocks || ret_page->ncounters)
            break;
    }
    *ret_done = *table_index >= s->ntables;
    *ret_pending = 0;
    for (size_t i = 0; i < s->ntables; i++)
        if (ps_table_admit(s->tables[i]))
            *ret_pending += ps_admit_send_pending(ps_table_admit(s->tables[i]));
    return 0;
}

int ps_shard_adopt_admit(ps_shard *s, ps_table *t, const ps_admit_page *p, char *err,
                         size_t errlen) {
    ps_admit *a = ps_table_admit(t);
    const char *name = ps_table_config_of(t)->name;
    int r = ps_admit_merge_check(a, p);
    if (r == PS_ECONFIG) {
        snprintf(err, errlen,
                 "table %s: the sender's admission filter does not match this shard's (none "
                 "here, or another admit_bloom_bits or seed: the configs must agree)",
                 name);
        return PS_EPROTO;
    }
    if (r < 0) {
        snprintf(err, errlen,
                 "table %s: admission filter blocks or counters beyond the filter, or blocks "
                 "not of %d bytes, or counters above 15",
                 name, PS_ADMIT_BLOCK);
        return r;
    }
    ps_admit_merge(a, p);
    /* Durable before the answer, in a write-back that covers every push
     * applied before the merge: replay after a restart brings only later
     * ones, so decisions stay a function of the log. A crash before it
     * commits loses the merge, but then the page was not acknowledged: the
     * mover sends it again (or fails, and the move run again begins the
     * copy again). Always a write-back: the filter's blocks are not among
     * the dirty rows one is otherwise begun for. */
    return flush_sync(s, true, err, errlen);
}

static uint64_t memory_rows(const ps_shard *s) {
    uint64_t n = 0;
    for (size_t i = 0; i < s->ntables; i++) {
        ps_table_stats st;
        ps_table_stats_get(s->tables[i], &st);
        n += st.rows_in_memory;
    }
    return n;
}

static void wait_flush(ps_shard *s);

static void drop_end(ps_shard *s) {
    for (size_t i = 0; s->drop && i < s->ntables; i++)
        ps_table_forget_deinit(&s->drop[i]);
    free(s->drop);
    s->drop = NULL;
    ps_store_batch_free(s->drop_batch);
    s->drop_batch = NULL;
}

static int range_given_away(const ps_shard *s, uint32_t lo, uint32_t hi, char *err,
                            size_t errlen) {
    for (uint32_t b = lo; b < hi; b++)
        if (s->map.owner[b] == s->id) {
            snprintf(err, errlen, "bucket %u is still owned by shard %u: install the new map first",
                     b, s->id);
            return PS_EPROTO;
        }
    return 0;
}

/* Whether a drop in steps may begin: no write-back runs (one may hold
 * rows of the range, and would write them after the delete), and no row
 * of the range is dirty. Else a write-back is begun if none runs, on the
 * write-back thread, and the loop goes on serving: the caller asks again. */
static int drop_ready(ps_shard *s, uint32_t lo, uint32_t hi, bool *ret_ready, char *err,
                      size_t errlen) {
    flush_state st = writeback_poll(s, mono_ms());
    *ret_ready = false;
    if (st != FLUSH_IDLE)
        return 0;
    if (s->job_failed)
        return writeback_failed(s, err, errlen);
    bool dirty = false;
    for (size_t i = 0; i < s->ntables && !dirty; i++)
        dirty = ps_table_range_dirty(s->tables[i], lo, hi);
    if (!dirty) {
        *ret_ready = true;
        return 0;
    }
    return writeback_begin(s, err, errlen);
}

/* The first step of a drop: checks, and every row of the range out of
 * memory (written back first if some are dirty). */
static int drop_begin(ps_shard *s, uint32_t lo, uint32_t hi, char *err, size_t errlen) {
    int r = range_given_away(s, lo, hi, err, errlen);
    if (r < 0)
        return r;
    memo_end(s);
    /* A write-back under way (or failed, to be retried) may hold rows of
     * the range: it goes first, or it would write them back after the
     * delete. Rows of the range still dirty are written back only if some
     * are (a target's range has none: its own rows need not wait). Once
     * they are out of memory, no later write-back holds any. (A stepped
     * drop comes here only when drop_ready() found none of that.) */
    wait_flush(s);
    r = s->job_failed ? ps_shard_flush_sync(s, err, errlen) : 0;
    if (r < 0)
        return r;
    s->drop_in_memory = memory_rows(s);
    for (size_t i = 0; i < s->ntables && r == 0; i++) {
        r = ps_table_forget_memory(s->tables[i], lo, hi, err, errlen);
        if (r == PS_EPROTO) { /* dirty rows in the range */
            r = ps_shard_flush_sync(s, err, errlen);
            if (r == 0)
                r = ps_table_forget_memory(s->tables[i], lo, hi, err, errlen);
        }
    }
    if (r < 0)
        return r;
    s->drop = calloc(s->ntables, sizeof(*s->drop));
    s->drop_batch = ps_store_batch_new();
    if (!s->drop || !s->drop_batch) {
        drop_end(s);
        return -ENOMEM;
    }
    for (size_t i = 0; i < s->ntables; i++)
        ps_table_forget_begin(&s->drop[i], lo, hi);
    s->drop_lo = lo;
    s->drop_hi = hi;
    return 0;
}

/* The last call of a stepped drop: the counts it changed go to the store
 * with the next write-back, begun here (on the write-back thread) once
 * none runs: *ret_more until it has ended. The loop goes on serving
 * meanwhile; a synchronous write-back here held it 1.1-1.6 s under a
 * saturating push load (bench/README.md). */
static int drop_settle(ps_shard *s, bool *ret_more, uint64_t *ret_rows, char *err, size_t errlen) {
    bool done;
    int r = writeback_reached(s, s->settle_wb, &done, err, errlen);
    if (r < 0)
        return r;
    if (ret_rows)
        *ret_rows = s->settle_rows;
    *ret_more = !done;
    if (done)
        s->settle_wb = 0;
    return 0;
}

int ps_shard_drop(ps_shard *s, uint32_t lo, uint32_t hi, size_t budget, bool *ret_more,
                  uint64_t *ret_rows, char *err, size_t errlen) {
    int r = check_range(s, lo, hi, err, errlen);
    if (r < 0)
        return r;
    if (s->settle_wb && s->settle_lo == lo && s->settle_hi == hi && budget)
        return drop_settle(s, ret_more, ret_rows, err, errlen);
    s->settle_wb = 0; /* another drop: the next periodic write-back saves the counts */
    if (s->drop && (s->drop_lo != lo || s->drop_hi != hi))
        drop_end(s); /* given up (its mover gone): nothing of it is stored */
    if (!s->drop && budget) { /* stepped: no write-back waited for on the loop */
        bool ready;
        if ((r = range_given_away(s, lo, hi, err, errlen)) < 0 ||
            (r = drop_ready(s, lo, hi, &ready, err, errlen)) < 0)
            return r;
        if (!ready) {
            *ret_more = true;
            if (ret_rows)
                *ret_rows = 0;
            return 0;
        }
    }
    if (!s->drop && (r = drop_begin(s, lo, hi, err, errlen)) < 0)
        return r;
    /* The stored rows, a budget's worth per call. */
    size_t left = budget;
    uint64_t total = 0;
    bool done = true;
    for (size_t i = 0; i < s->ntables && r == 0; i++) {
        ps_forget *f = &s->drop[i];
        uint64_t before = f->rows;
        if (!f->done && (!budget || left))
            r = ps_table_forget_stored(s->tables[i], f, left);
        if (budget)
            left -= f->rows - before < left ? f->rows - before : left;
        done = done && f->done;
        total += f->rows;
    }
    if (r < 0) {
        drop_end(s); /* a drop asked again begins again */
        return r;
    }
    *ret_more = !done;
    if (!done) {
        if (ret_rows)
            *ret_rows = total; /* walked so far */
        return 0;
    }
    for (size_t i = 0; i < s->ntables; i++)
        ps_table_forget_end(s->tables[i], &s->drop[i], s->drop_batch);
    r = ps_store_write_sync(s->store, s->drop_batch, err, errlen);
    drop_end(s);
    for (size_t i = 0; r == 0 && total && i < s->ntables; i++)
        r = ps_table_reclaim(s->tables[i], lo, hi, err, errlen);
    if (r == 0 && s->fenced && s->frozen_lo == lo && s->frozen_hi == hi) {
        r = ps_shard_thaw(s, err, errlen);
        s->c.moves_dropped += r == 0;
    }
    if (r == 0 && s->track_id && s->track_lo == lo && s->track_hi == hi)
        track_end(s);
    if (r == 0 && stage_overlaps(s, lo, hi))
        stage_end(s);
    if (r == 0)
        fresh_begin(s, lo, hi);
    /* The live counts changed (if any row went): write-back saves them. */
    if (r == 0 && (total || memory_rows(s) != s->drop_in_memory)) {
        if (!budget)
            r = ps_shard_flush_sync(s, err, errlen);
        else {
            s->settle_wb = s->wb_begun + 1;
            s->settle_lo = lo;
            s->settle_hi = hi;
            s->settle_rows = total;
            return drop_settle(s, ret_more, ret_rows, err, errlen);
        }
    }
    if (r == 0 && ret_rows)
        *ret_rows = total;
    return r;
}

/* A frozen range found at open: the move either committed (the map gives
 * the range away: finish it) or not (stay frozen for ctrps-cli move to
 * resume or roll back). */
static int load_move(ps_shard *s, char *err, size_t errlen) {
    char *v;
    size_t len;
    int r = ps_store_get(s->store, CF_META, META_MOVE, strlen(META_MOVE), &v, &len, err, errlen);
    if (r < 0 || !v)
        return r;
    uint32_t range[2] = {0, 0};
    if (len == sizeof(range))
        memcpy(range, v, sizeof(range));
    free(v);
    if (range[0] >= range[1] || range[1] > s->map.buckets)
        return meta_write_sync(s, META_MOVE, NULL, 0, err, errlen);
    s->fenced = s->frozen = true;
    s->frozen_lo = range[0];
    s->frozen_hi = range[1];
    for (uint32_t b = range[0]; b < range[1]; b++)
        if (s->map.owner[b] == s->id)
            return 0;
    bool more;
    return ps_shard_drop(s, range[0], range[1], 0, &more, NULL, err, errlen);
}

bool ps_shard_hold_writeback(ps_shard *s, uint32_t ms) {
    s->hold_until_ms = ms ? mono_ms() + ms : 0;
    pthread_mutex_lock(&s->mu);
    bool running = s->state == FLUSH_PENDING;
    pthread_mutex_unlock(&s->mu);
    return running;
}

int ps_shard_set_map(ps_shard *s, const ps_cluster_map *m, char *err, size_t errlen) {
    int r = ps_cluster_map_check(m, err, errlen);
    if (r < 0)
        return r;
    if (m->buckets != s->map.buckets) {
        snprintf(err, errlen, "a map of %u buckets for a cluster of %u", m->buckets, s->map.buckets);
        return PS_EPROTO;
    }
    if (m->version == s->map.version && ps_cluster_map_same_layout(m, &s->map))
        return 0;
    if (m->version <= s->map.version) {
        snprintf(err, errlen, "map version %llu is not above the version held, %llu",
                 (unsigned long long)m->version, (unsigned long long)s->map.version);
        return PS_EPROTO;
    }
    ps_cluster_map copy;
    r = ps_cluster_map_copy(m, &copy);
    if (r < 0)
        return r;
    r = store_map(s, &copy, err, errlen);
    if (r < 0) {
        ps_cluster_map_deinit(&copy);
        return r;
    }
    ps_cluster_map_deinit(&s->map);
    s->map = copy;
    s->hold_until_ms = 0; /* a cut-over's map: write-backs may go on */
    for (uint32_t b = s->memo_lo; s->memo && b < s->memo_hi; b++)
        if (s->map.owner[b] == s->id) { /* pushes change its rows here now */
            memo_end(s);
            break;
        }
    return 0;
}

static int meta_get_u64(ps_shard *s, const char *key, uint64_t *ret, char *err, size_t errlen) {
    char *v;
    size_t len;
    int r = ps_store_get(s->store, CF_META, key, strlen(key), &v, &len, err, errlen);
    if (r < 0)
        return r;
    *ret = 0;
    if (v && len == 8)
        memcpy(ret, v, 8);
    free(v);
    return 0;
}

/* ---- client sequence numbers ------------------------------------------- */

static client_entry *client_slot(ps_shard *s, uint64_t id, bool insert) {
    if (insert && 2 * (s->nclients + 1) > s->clients_cap) {
        size_t cap = s->clients_cap ? 2 * s->clients_cap : 64;
        client_entry *grown = calloc(cap, sizeof(*grown));
        if (!grown)
            return NULL;
        for (size_t i = 0; i < s->clients_cap; i++) {
            if (!s->clients[i].id)
                continue;
            size_t j = ps_mix64(s->clients[i].id) & (cap - 1);
            while (grown[j].id)
                j = (j + 1) & (cap - 1);
            grown[j] = s->clients[i];
        }
        free(s->clients);
        s->clients = grown;
        s->clients_cap = cap;
    }
    if (!s->clients_cap)
        return NULL;
    size_t j = ps_mix64(id) & (s->clients_cap - 1);
    while (s->clients[j].id && s->clients[j].id != id)
        j = (j + 1) & (s->clients_cap - 1);
    if (s->clients[j].id == id)
        return &s->clients[j];
    if (!insert)
        return NULL;
    uint64_t *bseq = calloc(2 * (size_t)s->cfg->buckets, sizeof(uint64_t));
    if (!bseq)
        return NULL;
    s->clients[j].id = id;
    s->clients[j].bseq = bseq;
    s->clients[j].bmask = bseq + s->cfg->buckets;
    s->nclients++;
    return &s->clients[j];
}

uint64_t ps_shard_client_seq(const ps_shard *s, uint64_t client_id) {
    client_entry *e = client_slot((ps_shard *)s, client_id, false);
    return e ? e->seq : 0;
}

/* "cseq/ID": a client's bseq array, then its bmask array, buckets * 8
 * bytes each (without the masks before seq windows: SEQ_UNKNOWN; stores
 * written before per-bucket sequencing hold only "client/ID": every bucket
 * then starts at the client's seq, which is what that store applied). */
static void client_key(const char *prefix, uint64_t id, char *ret, size_t *ret_len) {
    size_t n = strlen(prefix);
    memcpy(ret, prefix, n);
    for (int b = 0; b < 8; b++)
        ret[n + b] = (char)(id >> (56 - 8 * b));
    *ret_len = n + 8;
}

/* "gseq/ID/G": with more than one group, a client's bseq entries of group
 * G's buckets, and "gmask/ID/G" their bmask entries (none before seq
 * windows: SEQ_UNKNOWN), in that group's batch: the seqs of exactly the
 * pushes its
 * rows there hold. (A whole array in group 0's batch would claim pushes
 * that later groups' rows do not hold yet, and whose records a crash may
 * lose before they are written: a resent push would be skipped there.) */
static void client_gseq_key(const char *prefix, uint64_t id, uint32_t g, char *ret,
                            size_t *ret_len) {
    client_key(prefix, id, ret, ret_len);
    ret[*ret_len] = (char)(g >> 8);
    ret[*ret_len + 1] = (char)g;
    *ret_len += 2;
}

static int load_bucket_seqs(ps_shard *s, uint32_t stored_groups) {
    for (size_t i = 0; i < s->clients_cap; i++) {
        client_entry *e = &s->clients[i];
        if (!e->id)
            continue;
        char key[24], err[256], *v;
        size_t klen, vlen;
        client_key("cseq/", e->id, key, &klen);
        int r = ps_store_get(s->store, CF_META, key, klen, &v, &vlen, err, sizeof(err));
        if (r < 0)
            return r;
        size_t nb = s->cfg->buckets;
        if (v && (vlen == nb * sizeof(uint64_t) || vlen == 2 * nb * sizeof(uint64_t))) {
            memcpy(e->bseq, v, nb * sizeof(uint64_t));
            for (size_t b = 0; b < nb; b++)
                e->bmask[b] = SEQ_UNKNOWN;
            if (vlen > nb * sizeof(uint64_t))
                memcpy(e->bmask, v + nb * sizeof(uint64_t), nb * sizeof(uint64_t));
        } else if (stored_groups <= 1) { /* a store from before per-bucket numbers */
            for (size_t b = 0; b < nb; b++) {
                e->bseq[b] = e->seq;
                e->bmask[b] = SEQ_UNKNOWN;
            }
        }
        /* Else each group's slice says (a group with none holds no push
         * of the client; replay raises what the log has since). Not the
         * client's highest: a bucket that never saw a seq would take a
         * push re-routed to it under that seq for a repeat. */
        free(v);
        /* Groups' slices (gseq/): the newer of the two per bucket (a store
         * that went from groups back to one batch has stale slices). */
        for (uint32_t g = 0; stored_groups > 1 && g < stored_groups; g++) {
            uint32_t lo, hi;
            ps_writeback_group_buckets(s->cfg->buckets, stored_groups, g, &lo, &hi);
            char *mv;
            size_t mlen, w = hi - lo;
            client_gseq_key("gseq/", e->id, g, key, &klen);
            r = ps_store_get(s->store, CF_META, key, klen, &v, &vlen, err, sizeof(err));
            if (r < 0)
                return r;
            client_gseq_key("gmask/", e->id, g, key, &klen);
            r = ps_store_get(s->store, CF_META, key, klen, &mv, &mlen, err, sizeof(err));
            if (r < 0) {
                free(v);
                return r;
            }
            bool masks = mv && mlen == w * sizeof(uint64_t);
            for (uint32_t b = lo; v && vlen == w * sizeof(uint64_t) && b < hi; b++) {
                uint64_t q, m = SEQ_UNKNOWN;
                memcpy(&q, v + (b - lo) * sizeof(uint64_t), sizeof(q));
                if (masks)
                    memcpy(&m, mv + (b - lo) * sizeof(uint64_t), sizeof(m));
                seq_merge(&e->bseq[b], &e->bmask[b], q, m);
            }
            free(v);
            free(mv);
        }
    }
    return 0;
}

/* stored_groups: meta "wb_groups" at open (gseq/ records, if > 1). */
static int load_clients(ps_shard *s, uint32_t stored_groups) {
    const char prefix[] = "client/";
    ps_store_iter *it = ps_store_iter_new(s->store, CF_META, prefix, sizeof(prefix) - 1);
    if (!it)
        return -ENOMEM;
    int r = 0;
    for (; ps_store_iter_valid(it); ps_store_iter_next(it)) {
        size_t klen, vlen;
        const char *k = ps_store_iter_key(it, &klen);
        const char *v = ps_store_iter_value(it, &vlen);
        if (klen != sizeof(prefix) - 1 + 8 || memcmp(k, prefix, sizeof(prefix) - 1))
            break;
        uint64_t id = 0, seq;
        for (int i = 0; i < 8; i++)
            id = (id << 8) | (uint8_t)k[sizeof(prefix) - 1 + i];
        if (vlen != 8 && vlen != 16 && vlen != 24)
            continue;
        memcpy(&seq, v, 8);
        client_entry *e = client_slot(s, id, true);
        if (!e) {
            r = -ENOMEM;
            break;
        }
        e->seq = seq;
        e->dseq = seq; /* a store from before dseq: what it used for dense pushes */
        e->dmask = SEQ_UNKNOWN;
        if (vlen >= 16)
            memcpy(&e->dseq, v + 8, 8);
        if (vlen == 24)
            memcpy(&e->dmask, v + 16, 8);
    }
    ps_store_iter_free(it);
    return r < 0 ? r : load_bucket_seqs(s, stored_groups);
}

/* ---- read-only state ------------------------------------------------------- */

/* The store or the push log cannot write (disk full, read-only file system,
 * an I/O error): refuse pushes and row creation, keep serving what exists,
 * and keep retrying; see ps_shard_tick(). */
static void set_read_only(ps_shard *s, bool on, const char *why) {
    s->read_only = on;
    if (on)
        snprintf(s->store_error, sizeof(s->store_error), "%s", why);
    else
        s->store_error[0] = '\0';
    for (size_t i = 0; i < s->ntables; i++)
        ps_table_set_read_only(s->tables[i], on);
}

/* ---- write-back ---------------------------------------------------------- */

/* Write-back in groups. The dirty rows reach RocksDB a group of buckets
 * at a time (table.h): each group's rows are dumped on the loop thread
 * just before its own batch, so no copy of the whole dirty set, nor a
 * batch or memtable of it, is ever alive (bench/README.md "Memory per
 * row"). Each batch stores, with its rows, "bucket_lsn": per bucket the
 * push-log lsn up to which the store holds its rows. Replay applies a
 * record's keys only in buckets below the record's lsn, so a crash
 * between two groups' batches applies no push twice, and flushed_lsn (the
 * least of them) is where replay begins. What is the whole table's, not a
 * group's (the admission filter, the live count's clock ring) cannot be
 * split that way: a shard with a table that has admission or ttl_s writes
 * back in one group, the whole dirty set in one batch, as before; so does a
 * shard without a push log (`durability = interval`).
 * Each batch also holds the clients' sequence numbers of its buckets
 * (gseq/), and group 0's the dense blocks (dense records are replayed past
 * its "dense_lsn") and each client's highest number (client/). */
#define WRITEBACK_GROUPS 64

static uint32_t wanted_groups(const ps_shard *s) {
    /* Without a log of every push there is no replay to bring the groups
     * stored earlier in a round, and the clients' numbers, up to the
     * later ones: one group, one consistent batch. */
    if (s->cfg->server.durability != PS_DURABILITY_SYNC)
        return 1;
    for (size_t i = 0; i < s->ntables; i++)
        if (ps_table_admit(s->tables[i]) || ps_table_config_of(s->tables[i])->ttl_s)
            return 1;
    return s->cfg->buckets < WRITEBACK_GROUPS ? s->cfg->buckets : WRITEBACK_GROUPS;
}

static uint64_t least_bucket_lsn(const ps_shard *s, const uint64_t *lsn) {
    uint64_t least = UINT64_MAX;
    for (uint32_t b = 0; b < s->cfg->buckets; b++)
        least = lsn[b] < least ? lsn[b] : least;
    return least;
}

/* Rows of one table in a write-back round from which its column family
 * gets a fresh memtable first (below, a switch would make an SST of a few
 * rows per write-back). */
#define SWITCH_MEMTABLE_ROWS 65536

/* A fresh memtable for each table with a large part in the write-back
 * round: before its first group's batch (each group's keys then follow
 * the last group's, all after the memtable's last key) and after its
 * last. A failed switch only loses its gain: writes report the store's
 * errors. */
static void switch_large_memtables(ps_shard *s) {
    char err[256];
    for (size_t i = 0; i < s->ntables; i++)
        if (s->job.big[i])
            (void)ps_store_switch_memtable(s->store, s->job.dumps[i].cf, err, sizeof(err));
}

static void *flush_thread(void *arg) {
    ps_shard *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        if (s->state != FLUSH_PENDING) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 1;
            int w = pthread_cond_timedwait(&s->cv, &s->mu, &until);
            if (w == ETIMEDOUT && s->log && s->cfg->server.fsync == PS_FSYNC_EVERYSEC) {
                pthread_mutex_unlock(&s->mu);
                ps_pushlog_sync(s->log);
                pthread_mutex_lock(&s->mu);
            }
            continue;
        }
        ps_store_batch *b = s->job.batch;
        pthread_mutex_unlock(&s->mu);
        if (!s->job.rows_added) {
            for (size_t i = 0; i < s->ntables; i++)
                ps_table_dump_put(&s->job.dumps[i], b);
            s->job.rows_added = true;
        }
        char err[256] = "";
        /* A large batch goes into fresh memtables: its sorted keys then all
         * land after the memtable's last key, RocksDB's cheap insert, where
         * keys falling between those of older batches each cost a search
         * from the skiplist's top (10.5k instructions a row; see
         * ps_store_switch_memtable). */
        if (s->job.group == 0)
            switch_large_memtables(s);
        int r = ps_store_write(s->store, b, err, sizeof(err));
        if (r == 0) {
            /* And out of them once written: the full memtables go to disk
             * now, from here, where the switch would otherwise wait for the
             * next write, perhaps on the loop (a move's, or a cut-over's):
             * a new memtable's bloom filter to clear, a flush of a whole
             * memtable beside it. */
            if (s->job.last)
                switch_large_memtables(s);
            /* Written (a failed batch stays, for the retry): free it here,
             * before the next dumps are faulted in, so that the two are
             * never resident together (table.h). */
            ps_store_batch_free(b);
            s->job.batch = NULL;
            if (!s->closing)
                for (size_t i = 0; i < s->ntables; i++)
                    ps_table_dump_prepare(s->tables[i], &s->job.dumps[i]);
        }
        pthread_mutex_lock(&s->mu);
        s->job_result = r;
        snprintf(s->job_err, sizeof(s->job_err), "%s", err);
        s->state = FLUSH_DONE;
        pthread_cond_broadcast(&s->cv);
        if (s->notify) {
            pthread_mutex_unlock(&s->mu);
            s->notify(s->notify_ctx);
            pthread_mutex_lock(&s->mu);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void submit(ps_shard *s) {
    pthread_mutex_lock(&s->mu);
    s->state = FLUSH_PENDING;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static size_t total_dirty(const ps_shard *s) {
    size_t n = ps_dense_dirty(s->dense);
    for (size_t i = 0; i < s->ntables; i++)
        n += ps_table_dirty_count(s->tables[i]);
    return n;
}

static void flush_group0(ps_shard *s, flush_job *j);
static void flush_group_seqs(ps_shard *s, flush_job *j, uint32_t lo, uint32_t hi);

/* Build the next write-back batch on the loop thread and hand it over: the
 * next group's, beginning a round if none is under way. */
static int flush_begin(ps_shard *s) {
    int r = 0;
    flush_job *j = &s->job;
    if (!s->round_active) {
        if (s->log) {
            r = ps_pushlog_rotate(s->log);
            if (r < 0)
                return r;
        }
        for (size_t i = 0; i < s->ntables; i++)
            j->big[i] = ps_table_dirty_count(s->tables[i]) >= SWITCH_MEMTABLE_ROWS;
        s->round_active = true;
        s->round_group = 0;
        s->wb_begun++;
    } else if (s->log) {
        /* As the rotation does for the first: the records of every push
         * the batch holds are written first, so that a kill -9 cannot
         * leave a push in the store without its record, which replay
         * needs to bring the other groups' rows up to it. */
        r = ps_pushlog_commit(s->log);
        if (r < 0)
            return r;
    }
    j->batch = ps_store_batch_new();
    if (!j->batch)
        return -ENOMEM;
    uint32_t g = s->round_group;
    j->group = g;
    j->last = g + 1 == s->ngroups;
    /* During replay the log is not open yet (and a full memory tier can force
     * a write-back): the batch covers exactly the records replayed so far. */
    j->covered_lsn = s->log ? ps_pushlog_last_lsn(s->log) : s->replay_covered;
    j->rows = 0;
    j->rows_added = false;
    for (size_t i = 0; i < s->ntables; i++) {
        ps_table *t = s->tables[i];
        j->rows += ps_table_dump_group(t, g, &j->dumps[i], &j->gens[i]);
        char key[PS_NAME_MAX + 8];
        snprintf(key, sizeof(key), "rows/%s", ps_table_config_of(t)->name);
        uint64_t rows = ps_table_persisted_rows(t);
        ps_store_batch_put(j->batch, s->store, CF_META, key, strlen(key), &rows, 8);
        ps_table_save_group(t, g, j->batch, CF_META);
    }
    /* Its buckets are stored up to covered_lsn now (never back: replay with
     * a full memory tier writes back rows the log has not reached yet,
     * which are the stored ones). */
    memcpy(j->bucket_lsn, s->bucket_lsn, s->cfg->buckets * sizeof(uint64_t));
    uint32_t lo, hi;
    ps_writeback_group_buckets(s->cfg->buckets, s->ngroups, g, &lo, &hi);
    for (uint32_t b = lo; b < hi; b++)
        if (j->bucket_lsn[b] < j->covered_lsn)
            j->bucket_lsn[b] = j->covered_lsn;
    ps_store_batch_put(j->batch, s->store, CF_META, "bucket_lsn", 10, j->bucket_lsn,
                       s->cfg->buckets * sizeof(uint64_t));
    uint64_t flushed = least_bucket_lsn(s, j->bucket_lsn);
    ps_store_batch_put(j->batch, s->store, CF_META, "flushed_lsn", 11, &flushed, 8);
    ps_store_batch_put(j->batch, s->store, CF_META, "wb_groups", 9, &s->ngroups, 4);
    if (g == 0)
        flush_group0(s, j);
    flush_group_seqs(s, j, lo, hi);
    submit(s);
    return 0;
}

/* What group 0's batch holds besides rows: the dense blocks and each
 * client's highest sequence number (with one group, its whole bseq too),
 * as of its covered_lsn. */
static void flush_group0(ps_shard *s, flush_job *j) {
    for (size_t i = 0; s->groups_reset && i < s->ntables; i++)
        ps_table_clear_groups(s->tables[i], j->batch, CF_META);
    j->rows += ps_dense_dump(s->dense, s->store, CF_DENSE, j->batch, &j->dense_gen);
    uint64_t dense_lsn = j->covered_lsn > s->dense_lsn ? j->covered_lsn : s->dense_lsn;
    ps_store_batch_put(j->batch, s->store, CF_META, "dense_lsn", 9, &dense_lsn, 8);
    for (size_t i = 0; i < s->clients_cap; i++) {
        client_entry *e = &s->clients[i];
        if (!e->id || !e->dirty)
            continue;
        char key[16];
        size_t klen;
        client_key("client/", e->id, key, &klen);
        uint64_t seqs[3] = {e->seq, e->dseq, e->dmask};
        ps_store_batch_put(j->batch, s->store, CF_META, key, klen, seqs, sizeof(seqs));
        if (s->ngroups == 1) {
            client_key("cseq/", e->id, key, &klen);
            ps_store_batch_put(j->batch, s->store, CF_META, key, klen, e->bseq,
                               2 * s->cfg->buckets * sizeof(uint64_t));
        }
        e->dirty = false;
    }
}

/* The clients' slices of the group's buckets (gseq/, above); and, in a
 * round's last batch, the adopted seqs (aseq/) its batches hold. */
static void flush_group_seqs(ps_shard *s, flush_job *j, uint32_t lo, uint32_t hi) {
    uint64_t bit = (uint64_t)1 << j->group;
    size_t nclients = s->ngroups > 1 ? s->clients_cap : 0; /* one group: cseq/ */
    for (size_t i = 0; i < nclients; i++) {
        client_entry *e = &s->clients[i];
        if (!e->id || !(e->gdirty & bit))
            continue;
        char key[24];
        size_t klen;
        client_gseq_key("gseq/", e->id, j->group, key, &klen);
        ps_store_batch_put(j->batch, s->store, CF_META, key, klen, e->bseq + lo,
                           (hi - lo) * sizeof(uint64_t));
        client_gseq_key("gmask/", e->id, j->group, key, &klen);
        ps_store_batch_put(j->batch, s->store, CF_META, key, klen, e->bmask + lo,
                           (hi - lo) * sizeof(uint64_t));
        e->gdirty &= ~bit;
    }
    if (!j->last)
        return;
    /* Adopted seqs noted before this round began are in its batches now. */
    size_t keep = 0;
    for (size_t i = 0; i < s->naseq; i++) {
        if (s->aseq[i].wb >= s->wb_begun) {
            s->aseq[keep++] = s->aseq[i];
            continue;
        }
        char key[32];
        uint64_t range = s->aseq[i].range;
        for (int masks = 0; masks < 2; masks++) {
            aseq_key(masks, (uint32_t)(range >> 32), (uint32_t)range, key, sizeof(key));
            ps_store_batch_delete(j->batch, s->store, CF_META, key, strlen(key));
        }
    }
    s->naseq = keep;
}

static void flush_end(ps_shard *s, uint64_t now_ms) {
    flush_job *j = &s->job;
    pthread_mutex_lock(&s->mu);
    int r = s->job_result;
    char err[256];
    snprintf(err, sizeof(err), "%s", s->job_err);
    s->state = FLUSH_IDLE;
    pthread_mutex_unlock(&s->mu);
    if (r < 0) {
        /* Keep the batch and retry it: it is the only record of the rows it
         * holds as of covered_lsn (their log segments are still kept). */
        s->c.flush_errors++;
        s->job_failed = true;
        char why[300];
        snprintf(why, sizeof(why), "write-back: %s", err[0] ? err : ps_strerror(r));
        set_read_only(s, true, why);
        s->retry_at_ms = now_ms + 1000;
        return;
    }
    for (size_t i = 0; i < s->ntables; i++)
        ps_table_committed_group(s->tables[i], j->group, j->gens[i]);
    if (j->group == 0) {
        s->groups_reset = false;
        ps_dense_committed(s->dense, j->dense_gen);
        if (j->covered_lsn > s->dense_lsn)
            s->dense_lsn = j->covered_lsn;
    }
    memcpy(s->bucket_lsn, j->bucket_lsn, s->cfg->buckets * sizeof(uint64_t));
    s->c.flushed_rows += j->rows;
    s->c.flush_batches++;
    ps_store_batch_free(j->batch);
    j->batch = NULL;
    s->job_failed = false;
    if (!s->log_failed)
        set_read_only(s, false, NULL);
    if (!j->last) {
        s->round_group++;
        /* The next group at once, unless a cut-over holds write-backs or
         * the push log has an unwritten tail (the tick goes on with the
         * round after either, or after a failed begin). */
        if (now_ms >= s->hold_until_ms && !s->log_failed)
            (void)flush_begin(s);
        return;
    }
    s->round_active = false;
    if (s->log)
        ps_pushlog_drop_covered(s->log, least_bucket_lsn(s, s->bucket_lsn));
    s->c.flushes++;
    s->wb_done = s->wb_begun; /* one round at a time */
    s->last_flush_ms = now_ms;
}

static void wait_flush(ps_shard *s) {
    pthread_mutex_lock(&s->mu);
    while (s->state == FLUSH_PENDING)
        pthread_cond_wait(&s->cv, &s->mu);
    bool done = s->state == FLUSH_DONE;
    pthread_mutex_unlock(&s->mu);
    if (done)
        flush_end(s, mono_ms());
}

static bool flush_due(const ps_shard *s, uint64_t now_ms) {
    const ps_server_config *sc = &s->cfg->server;
    size_t dirty = total_dirty(s);
    if (dirty == 0)
        return false;
    uint32_t every = sc->durability == PS_DURABILITY_INTERVAL ? sc->interval_ms : sc->flush_interval_ms;
    if (now_ms >= s->hold_until_ms &&
        (dirty >= sc->flush_dirty_rows || now_ms - s->last_flush_ms >= every))
        return true;
    /* Dirty rows cannot be evicted: write back before a table's memory tier
     * is half dirty, so new rows never wait for a synchronous write-back. */
    for (size_t i = 0; i < s->ntables; i++)
        if (ps_table_dirty_count(s->tables[i]) * 2 >= ps_table_capacity(s->tables[i]))
            return true;
    return false;
}

void ps_shard_tick(ps_shard *s, uint64_t now_ms) {
    /* Never taken up again (now_ms, the loop's clock, is at most a little
     * behind mono_ms(), which export_walk_take() asks). */
    if (s->exp_it && now_ms > s->exp_born_ms + EXPORT_WALK_AGE_MS)
        export_walk_end(s);
    flush_state st = writeback_poll(s, now_ms);
    if (st != FLUSH_IDLE)
        return;
    if (s->log_failed && now_ms >= s->retry_at_ms) {
        /* The push log's unwritten tail is still buffered: write it. */
        if (ps_pushlog_commit(s->log) == 0) {
            s->log_failed = false;
            if (!s->job_failed)
                set_read_only(s, false, NULL);
        } else {
            s->retry_at_ms = now_ms + 1000;
        }
    }
    if (s->job_failed) {
        if (now_ms >= s->retry_at_ms)
            submit(s);
        return;
    }
    uint32_t now_s = (uint32_t)time(NULL);
    for (size_t i = 0; i < s->ntables; i++) {
        ps_table_set_clock(s->tables[i], now_s);
        ps_table_tick(s->tables[i], now_ms);
    }
    bool go_on = s->round_active && now_ms >= s->hold_until_ms;
    if (!s->log_failed && (go_on || flush_due(s, now_ms))) {
        int r = flush_begin(s);
        if (r < 0) {
            char why[300];
            snprintf(why, sizeof(why), "push log: %s", ps_strerror(r));
            s->log_failed = true;
            s->retry_at_ms = now_ms + 1000;
            set_read_only(s, true, why);
        }
    }
}

/* Runs the round under way to its end, waiting; false when a batch
 * failed (job_failed). */
static int finish_round(ps_shard *s, char *err, size_t errlen) {
    wait_flush(s);
    if (s->job_failed) {
        submit(s);
        wait_flush(s);
    }
    while (!s->job_failed && s->round_active) {
        if (flush_state_now(s) == FLUSH_IDLE) { /* held, or a begin failed */
            int r = flush_begin(s);
            if (r < 0) {
                snprintf(err, errlen, "write-back: %s", ps_strerror(r));
                return r;
            }
        }
        wait_flush(s);
    }
    return 0;
}

static int flush_sync(ps_shard *s, bool always, char *err, size_t errlen) {
    /* A round under way dumped its first groups earlier: what changed in
     * them since is in a second round. */
    int r = finish_round(s, err, errlen);
    if (r < 0)
        return r;
    if (!s->job_failed && (always || total_dirty(s) > 0)) {
        r = flush_begin(s);
        if (r < 0) {
            snprintf(err, errlen, "write-back: %s", ps_strerror(r));
            return r;
        }
        r = finish_round(s, err, errlen);
        if (r < 0)
            return r;
    }
    if (s->job_failed)
        return writeback_failed(s, err, errlen);
    return 0;
}

int ps_shard_flush_sync(ps_shard *s, char *err, size_t errlen) {
    return flush_sync(s, false, err, errlen);
}

int ps_shard_checkpoint(ps_shard *s, const char *dir, uint64_t *ret_lsn, char *err, size_t errlen) {
    if (s->log_failed) {
        snprintf(err, errlen, "store is read-only: %s", s->store_error);
        return PS_EREAD_ONLY;
    }
    /* A write-back even with nothing dirty: it also records the push-log
     * position and the clients' sequence numbers, which the copy needs
     * without the log. */
    int r = ps_shard_commit(s);
    if (r == 0)
        r = flush_sync(s, true, err, errlen);
    if (r < 0)
        return r;
    r = ps_store_checkpoint(s->store, dir, err, errlen);
    if (r < 0)
        return r;
    *ret_lsn = s->log ? ps_pushlog_last_lsn(s->log) : 0;
    return 0;
}

static int make_room(void *ctx) {
    ps_shard *s = ctx;
    char err[256];
    s->c.make_room_flushes++;
    return ps_shard_flush_sync(s, err, sizeof(err));
}

/* ---- pushes --------------------------------------------------------------- */

/* Pushes are logged in sync mode, except while the log itself is replayed. */
static bool logging(const ps_shard *s) {
    return s->log && !s->replaying && s->cfg->server.durability == PS_DURABILITY_SYNC;
}


/* A push of seq from client e was applied (a dense one, or) to keys
 * (their buckets saw it). */
static void note_seq(client_entry *e, uint64_t seq) {
    e->seq = e->seq > seq ? e->seq : seq;
    e->dirty = true;
}

/* A dense push of seq from client e was applied. */
static void note_dense_seq(client_entry *e, uint64_t seq) {
    note_seq(e, seq);
    seq_note(&e->dseq, &e->dmask, seq);
}

static void note_seqs(ps_shard *s, client_entry *e, const uint64_t *keys, size_t n, uint64_t seq) {
    uint32_t nb = s->cfg->buckets;
    for (size_t i = 0; i < n; i++) {
        uint32_t b = ps_bucket(keys[i], nb);
        seq_note(&e->bseq[b], &e->bmask[b], seq);
    }
    note_seq(e, seq);
    seqs_changed(e);
}

static int apply_push(ps_shard *s, ps_table *t, const uint64_t *keys, size_t n, const float *grads,
                      uint64_t client_id, uint64_t seq, ps_push_result *ret, char *err,
                      size_t errlen) {
    const char *name = ps_table_config_of(t)->name;
    uint32_t dim = ps_table_dim(t);
    push_record rec = {.type = REC_SPARSE_PUSH,
                       .name_len = (uint16_t)strlen(name),
                       .n = (uint32_t)n,
                       .dim = dim,
                       .clock_s = ps_table_clock(t),
                       .client_id = client_id,
                       .seq = seq};
    size_t body = sizeof(rec) + rec.name_len + n * 8 + n * dim * sizeof(float);
    bool log = logging(s);
    client_entry *e = NULL;
    if (client_id) {
        e = client_slot(s, client_id, true);
        if (!e)
            return -ENOMEM;
    }
    /* Reserve first so that, once applied, the record cannot fail to log. */
    if (log) {
        int r = ps_pushlog_reserve(s->log, body);
        if (r < 0) {
            snprintf(err, errlen, "push of %zu rows does not fit in a push-log record", n);
            return r;
        }
    }
    int r = ps_table_push(t, keys, n, grads, &ret->applied, &ret->dropped_nonfinite, err, errlen);
    if (r < 0)
        return r;
    track_push(s, t, keys, n);
    ret->rejected = (uint32_t)n - ret->applied - ret->dropped_nonfinite;
    if (log) {
        uint64_t lsn;
        struct iovec iov[4] = {{&rec, sizeof(rec)},
                               {(void *)name, rec.name_len},
                               {(void *)keys, n * 8},
                               {(void *)grads, n * dim * sizeof(float)}};
        ps_pushlog_append(s->log, iov, 4, &lsn);
    }
    if (e)
        note_seqs(s, e, keys, n, seq);
    return 0;
}

int ps_shard_push(ps_shard *s, ps_table *t, const uint64_t *keys, size_t n, const float *grads,
                  uint64_t client_id, uint64_t seq, ps_push_result *ret, char *err, size_t errlen) {
    memset(ret, 0, sizeof(*ret));
    if (s->log_failed) {
        /* Pushes applied in memory wait for their log records: until those
         * are written, not even a resend may be acknowledged. */
        snprintf(err, errlen, "store is read-only: %s", s->store_error);
        return PS_EREAD_ONLY;
    }
    /* Keys of buckets that saw this seq already are left out; none left:
     * the whole push was applied before. */
    client_entry *e = client_id ? client_slot(s, client_id, false) : NULL;
    size_t fresh = n;
    uint32_t nb = s->cfg->buckets;
    if (e) {
        fresh = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t b = ps_bucket(keys[i], nb);
            fresh += seq_fresh(e->bseq[b], e->bmask[b], seq);
        }
    }
    if (fresh == 0 && n > 0) {
        ret->already_applied = true;
        s->c.pushes_already_applied++;
        return 0;
    }
    if (s->read_only) {
        snprintf(err, errlen, "store is read-only: %s", s->store_error);
        return PS_EREAD_ONLY;
    }
    if (fresh == n)
        return apply_push(s, t, keys, n, grads, client_id, seq, ret, err, errlen);
    uint32_t dim = ps_table_dim(t);
    uint64_t *fk = malloc(fresh * sizeof(uint64_t));
    float *fg = malloc(fresh * dim * sizeof(float));
    int r = -ENOMEM;
    if (fk && fg) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t b = ps_bucket(keys[i], nb);
            if (!seq_fresh(e->bseq[b], e->bmask[b], seq))
                continue;
            fk[m] = keys[i];
            memcpy(fg + m * dim, grads + i * dim, dim * sizeof(float));
            m++;
        }
        r = apply_push(s, t, fk, fresh, fg, client_id, seq, ret, err, errlen);
    }
    free(fk);
    free(fg);
    return r;
}

/* Log a dense record: header, then per block its header, name and floats. */
static int log_dense(ps_shard *s, uint8_t type, size_t n, const char *const *names,
                     const float *const *values, const size_t *lens, uint64_t client_id,
                     uint64_t seq, bool reserve_only) {
    dense_record rec = {.type = type, .nblocks = (uint16_t)n, .client_id = client_id, .seq = seq};
    size_t body = sizeof(rec);
    for (size_t i = 0; i < n; i++)
        body += sizeof(dense_block_record) + strlen(names[i]) + lens[i] * sizeof(float);
    if (reserve_only)
        return ps_pushlog_reserve(s->log, body);
    struct iovec *iov = malloc((1 + 3 * n) * sizeof(*iov));
    dense_block_record *br = malloc(n * sizeof(*br) + 1);
    if (!iov || !br) {
        free(iov);
        free(br);
        return -ENOMEM;
    }
    iov[0] = (struct iovec){&rec, sizeof(rec)};
    for (size_t i = 0; i < n; i++) {
        br[i] = (dense_block_record){.name_len = (uint16_t)strlen(names[i]), .len = (uint32_t)lens[i]};
        iov[1 + 3 * i] = (struct iovec){&br[i], sizeof(br[i])};
        iov[2 + 3 * i] = (struct iovec){(void *)names[i], br[i].name_len};
        iov[3 + 3 * i] = (struct iovec){(void *)values[i], lens[i] * sizeof(float)};
    }
    uint64_t lsn;
    int r = ps_pushlog_append(s->log, iov, (int)(1 + 3 * n), &lsn);
    free(iov);
    free(br);
    return r;
}

int ps_shard_dense_get(ps_shard *s, const char *name, const float *init, size_t init_len,
                       const float **ret_w, size_t *ret_len, char *err, size_t errlen) {
    int r = ps_dense_get(s->dense, name, ret_w, ret_len);
    if (r == PS_ENOT_FOUND && init) {
        if (s->read_only) {
            snprintf(err, errlen, "store is read-only: %s", s->store_error);
            return PS_EREAD_ONLY;
        }
        uint64_t max = s->cfg->server.max_dense_floats;
        if (ps_dense_floats(s->dense) + init_len > max) {
            snprintf(err, errlen, "dense block '%.64s' of %zu floats would pass max_dense_floats = %llu",
                     name, init_len, (unsigned long long)max);
            return PS_ELIMIT;
        }
        bool log = logging(s);
        if (log && (r = log_dense(s, REC_DENSE_CREATE, 1, &name, &init, &init_len, 0, 0, true)) < 0)
            return r;
        r = ps_dense_create(s->dense, name, init, init_len);
        if (r == 0 && log)
            log_dense(s, REC_DENSE_CREATE, 1, &name, &init, &init_len, 0, 0, false);
        if (r == 0)
            r = ps_dense_get(s->dense, name, ret_w, ret_len);
    }
    if (r == PS_ENOT_FOUND)
        snprintf(err, errlen, "dense block '%.64s' does not exist (a DensePull with initial values creates it)", name);
    else if (r == PS_ENONFINITE)
        snprintf(err, errlen, "initial values of dense block '%.64s' are not finite", name);
    else if (r == 0 && init && *ret_len != init_len) {
        snprintf(err, errlen, "dense block '%.64s' has %zu values, not %zu", name, *ret_len, init_len);
        r = PS_EDIM;
    }
    return r;
}

static int apply_dense(ps_shard *s, size_t n, const char *const *names, const float *const *grads,
                       const size_t *lens, uint64_t client_id, uint64_t seq, char *err,
                       size_t errlen) {
    for (size_t i = 0; i < n; i++) {
        int r = ps_dense_check(s->dense, names[i], grads[i], lens[i]);
        if (r < 0) {
            snprintf(err, errlen, "dense block '%.64s': %s", names[i],
                     r == PS_ENOT_FOUND ? "does not exist"
                     : r == PS_EDIM     ? "gradient length differs from the block's"
                                        : "gradient is not finite; push dropped");
            if (r == PS_ENONFINITE)
                s->c.dense_dropped_nonfinite++;
            return r;
        }
    }
    client_entry *e = client_id ? client_slot(s, client_id, true) : NULL;
    if (client_id && !e)
        return -ENOMEM;
    bool log = logging(s);
    int r = log ? log_dense(s, REC_DENSE_PUSH, n, names, grads, lens, client_id, seq, true) : 0;
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++)
        ps_dense_apply(s->dense, names[i], grads[i], lens[i]);
    if (log)
        log_dense(s, REC_DENSE_PUSH, n, names, grads, lens, client_id, seq, false);
    if (e)
        note_dense_seq(e, seq);
    return 0;
}

int ps_shard_dense_push(ps_shard *s, size_t n, const char *const *names, const float *const *grads,
                        const size_t *lens, uint64_t client_id, uint64_t seq, bool *ret_already,
                        char *err, size_t errlen) {
    *ret_already = false;
    if (s->log_failed) {
        snprintf(err, errlen, "store is read-only: %s", s->store_error);
        return PS_EREAD_ONLY;
    }
    const client_entry *de = client_id ? client_slot(s, client_id, false) : NULL;
    if (de && !seq_fresh(de->dseq, de->dmask, seq)) {
        *ret_already = true;
        s->c.pushes_already_applied++;
        return 0;
    }
    if (s->read_only) {
        snprintf(err, errlen, "store is read-only: %s", s->store_error);
        return PS_EREAD_ONLY;
    }
    return apply_dense(s, n, names, grads, lens, client_id, seq, err, errlen);
}

static void log_write_failed(ps_shard *s, int r) {
    if (s->log_failed)
        return;
    char why[300];
    snprintf(why, sizeof(why), "push log write: %s", ps_strerror(r));
    s->log_failed = true;
    s->retry_at_ms = 0;
    set_read_only(s, true, why);
}

int ps_shard_commit(ps_shard *s) {
    if (!s->log)
        return 0;
    int r = ps_pushlog_commit(s->log);
    if (r < 0)
        log_write_failed(s, r);
    return r;
}

int ps_shard_log_writer_start(ps_shard *s, void (*notify)(void *ctx), void *ctx) {
    if (!logging(s))
        return 0; /* interval durability or no log: nothing is written per turn */
    const char *off = getenv("PS_PUSHLOG_WRITER");
    if (off && strcmp(off, "0") == 0)
        return 0;
    return ps_pushlog_writer_start(s->log, notify, ctx);
}

int ps_shard_log_writer_stop(ps_shard *s) {
    if (!s->log)
        return 0;
    int r = ps_pushlog_writer_stop(s->log);
    if (r < 0)
        log_write_failed(s, r);
    return r;
}

int ps_shard_commit_begin(ps_shard *s, uint64_t *ret_lsn) {
    if (!s->log)
        return 0;
    /* After a failed write the shard retries synchronously, as it did
     * before the writer thread: pushes are refused meanwhile. */
    if (!ps_pushlog_writer_running(s->log) || s->log_failed)
        return ps_shard_commit(s);
    int r = ps_pushlog_submit(s->log);
    if (r > 0)
        *ret_lsn = ps_pushlog_last_lsn(s->log);
    return r;
}

int ps_shard_commit_poll(ps_shard *s, bool *ret_busy, uint64_t *ret_durable) {
    bool busy = false;
    int r = s->log ? ps_pushlog_poll(s->log, &busy) : 0;
    if (r < 0)
        log_write_failed(s, r);
    *ret_busy = busy;
    *ret_durable = s->log ? ps_pushlog_durable_lsn(s->log) : UINT64_MAX;
    return r;
}

/* Replay a dense record: blocks are copied out (unaligned in the log). */
static int replay_dense(ps_shard *s, const char *payload, size_t len) {
    dense_record rec;
    memcpy(&rec, payload, sizeof(rec));
    size_t n = rec.nblocks, off = sizeof(rec);
    char(*names)[PS_NAME_MAX * 2] = calloc(n + 1, sizeof(*names));
    const char **name_ptrs = calloc(n + 1, sizeof(char *));
    float **vals = calloc(n + 1, sizeof(float *));
    size_t *lens = calloc(n + 1, sizeof(size_t));
    int r = (names && name_ptrs && vals && lens) ? 0 : -ENOMEM;
    for (size_t i = 0; i < n && r == 0; i++) {
        dense_block_record br;
        if (off + sizeof(br) > len) {
            r = PS_EPARSE;
            break;
        }
        memcpy(&br, payload + off, sizeof(br));
        off += sizeof(br);
        if (br.name_len >= sizeof(names[0]) || off + br.name_len + (size_t)br.len * 4 > len) {
            r = PS_EPARSE;
            break;
        }
        memcpy(names[i], payload + off, br.name_len);
        name_ptrs[i] = names[i];
        off += br.name_len;
        lens[i] = br.len;
        vals[i] = malloc((size_t)br.len * 4 + 1);
        if (!vals[i]) {
            r = -ENOMEM;
            break;
        }
        memcpy(vals[i], payload + off, (size_t)br.len * 4);
        off += (size_t)br.len * 4;
    }
    if (r == 0 && off != len)
        r = PS_EPARSE;
    char err[256];
    if (r == 0 && rec.type == REC_DENSE_CREATE)
        r = n == 1 ? ps_dense_create(s->dense, name_ptrs[0], vals[0], lens[0]) : PS_EPARSE;
    else if (r == 0)
        r = apply_dense(s, n, name_ptrs, (const float *const *)vals, lens, rec.client_id, rec.seq,
                        err, sizeof(err));
    for (size_t i = 0; i < n && vals; i++)
        free(vals[i]);
    free(names);
    free(name_ptrs);
    free(vals);
    free(lens);
    return r;
}

/* A logged push, applied to the keys whose buckets the store holds only
 * up to an earlier lsn (write-back in groups); its client's numbers are
 * noted for all. */
static int replay_push(ps_shard *s, ps_table *t, uint64_t lsn, const push_record *rec,
                       uint64_t *keys, float *grads) {
    uint32_t nb = s->cfg->buckets, dim = rec->dim;
    size_t m = 0;
    for (size_t i = 0; i < rec->n; i++)
        m += lsn > s->bucket_lsn[ps_bucket(keys[i], nb)];
    if (m < rec->n && rec->client_id) {
        client_entry *e = client_slot(s, rec->client_id, true);
        if (!e)
            return -ENOMEM;
        note_seqs(s, e, keys, rec->n, rec->seq);
    }
    if (m < rec->n) {
        s->c.replay_skipped_rows += rec->n - m;
        m = 0;
        for (size_t i = 0; i < rec->n; i++) {
            if (lsn <= s->bucket_lsn[ps_bucket(keys[i], nb)])
                continue;
            keys[m] = keys[i];
            memmove(grads + m * dim, grads + i * dim, dim * sizeof(float));
            m++;
        }
        if (m == 0)
            return 0;
    }
    ps_push_result res;
    char err[256];
    return apply_push(s, t, keys, m, grads, rec->client_id, rec->seq, &res, err, sizeof(err));
}

static int replay_one(ps_shard *s, uint64_t lsn, const void *payload, size_t len) {
    push_record rec;
    if (len >= 1 && (((const uint8_t *)payload)[0] == REC_DENSE_PUSH ||
                     ((const uint8_t *)payload)[0] == REC_DENSE_CREATE)) {
        if (len < sizeof(dense_record))
            return PS_EPARSE;
        s->replay_covered = lsn - 1;
        int r = 0;
        if (lsn > s->dense_lsn) {
            r = replay_dense(s, payload, len);
        } else { /* the store holds its blocks: only the client's number */
            dense_record dr;
            memcpy(&dr, payload, sizeof(dr));
            client_entry *e = dr.client_id ? client_slot(s, dr.client_id, true) : NULL;
            if (dr.client_id && !e)
                r = -ENOMEM;
            if (e)
                note_dense_seq(e, dr.seq);
        }
        if (r == 0) {
            s->c.replayed_records++;
            s->replay_covered = lsn;
        }
        return r;
    }
    if (len < sizeof(rec))
        return PS_EPARSE;
    memcpy(&rec, payload, sizeof(rec));
    if (rec.type != REC_SPARSE_PUSH)
        return PS_EPARSE;
    size_t need = sizeof(rec) + rec.name_len + (size_t)rec.n * 8 + (size_t)rec.n * rec.dim * 4;
    if (len != need)
        return PS_EPARSE;
    const char *p = (const char *)payload + sizeof(rec);
    char name[PS_NAME_MAX];
    if (rec.name_len >= sizeof(name))
        return PS_EPARSE;
    memcpy(name, p, rec.name_len);
    name[rec.name_len] = '\0';
    ps_table *t = ps_shard_table(s, name);
    if (!t || ps_table_dim(t) != rec.dim)
        return PS_EUNKNOWN_TABLE;
    s->replay_covered = lsn - 1;
    /* The clock the push saw, which every table had then (a record from
     * before clocks were logged: now). */
    for (size_t i = 0; i < s->ntables; i++)
        ps_table_set_clock(s->tables[i], rec.clock_s ? rec.clock_s : (uint32_t)time(NULL));
    /* Copy out: the payload's arrays are not aligned for uint64/float. */
    uint64_t *keys = malloc((size_t)rec.n * 8 + 1);
    float *grads = malloc((size_t)rec.n * rec.dim * 4 + 1);
    int r = -ENOMEM;
    if (keys && grads) {
        memcpy(keys, p + rec.name_len, (size_t)rec.n * 8);
        memcpy(grads, p + rec.name_len + (size_t)rec.n * 8, (size_t)rec.n * rec.dim * 4);
        r = replay_push(s, t, lsn, &rec, keys, grads);
    }
    free(keys);
    free(grads);
    if (r == 0) {
        s->c.replayed_records++;
        s->replay_covered = lsn;
    }
    return r;
}

static int replay_record(void *ctx, uint64_t lsn, const void *payload, size_t len) {
    ps_shard *s = ctx;
    int r = replay_one(s, lsn, payload, len);
    if (r == 0 && s->on_replay)
        s->on_replay(s->on_replay_ctx, s->c.replayed_records);
    return r;
}

/* ---- open / close --------------------------------------------------------- */

/* The write-back groups (shard.c, "Write-back in groups") and how far the
 * store holds each bucket and the dense blocks; *ret_covered: where replay
 * begins; *ret_stored: the groups the store was written in (0: none
 * recorded). A store written before groups holds all at flushed_lsn. */
static int load_groups(ps_shard *s, uint64_t *ret_covered, uint32_t *ret_stored, char *err,
                       size_t errlen) {
    uint64_t covered;
    int r = meta_get_u64(s, "flushed_lsn", &covered, err, errlen);
    if (r < 0)
        return r;
    char *v;
    size_t len;
    uint32_t stored = 0;
    r = ps_store_get(s->store, CF_META, "wb_groups", 9, &v, &len, err, errlen);
    if (r < 0)
        return r;
    if (v && len == 4)
        memcpy(&stored, v, 4);
    free(v);
    r = ps_store_get(s->store, CF_META, "bucket_lsn", 10, &v, &len, err, errlen);
    if (r < 0)
        return r;
    bool have = v && len == s->cfg->buckets * sizeof(uint64_t);
    for (uint32_t b = 0; b < s->cfg->buckets; b++)
        s->bucket_lsn[b] = covered;
    if (have)
        memcpy(s->bucket_lsn, v, len);
    free(v);
    r = meta_get_u64(s, "dense_lsn", &s->dense_lsn, err, errlen); /* 0 when absent */
    if (r < 0)
        return r;
    if (s->dense_lsn < covered)
        s->dense_lsn = covered;
    /* As many groups as the tables allow (wanted_groups() asks what
     * ps_table_set_groups() does); the live counts of a store saved in
     * groups, whatever their number now. */
    s->ngroups = wanted_groups(s);
    for (size_t i = 0; i < s->ntables; i++) {
        r = ps_table_set_groups(s->tables[i], s->ngroups);
        if (r == 0 && stored > 1)
            r = ps_table_load_groups(s->tables[i], stored, CF_META, err, errlen);
        if (r < 0)
            return r;
        s->job.dumps[i].keep = s->ngroups > 1;
    }
    s->groups_reset = s->ngroups > 1 && stored != s->ngroups;
    *ret_covered = covered;
    *ret_stored = stored;
    return 0;
}

static int load_dense(ps_shard *s, char *err, size_t errlen) {
    int r = ps_dense_new(&s->cfg->dense, &s->dense);
    return r < 0 ? r : ps_dense_load_all(s->dense, s->store, CF_DENSE, err, errlen);
}

void ps_shard_identity(const ps_config *cfg, uint32_t shard, char *ret, size_t len) {
    snprintf(ret, len, "shard=%u shards=%u buckets=%u", shard, cfg->nshards, cfg->buckets);
}

void ps_shard_table_schema(const ps_table_config *tc, char *ret, size_t len) {
    snprintf(ret, len, "dim=%u optimizer=%s state_width=%u", tc->dim,
             ps_optimizer_name(tc->opt.kind), ps_optim_state_width(&tc->opt, tc->dim));
}

static int check_identity(ps_shard *s, ps_store_batch *b, char *err, size_t errlen) {
    char want[128];
    ps_shard_identity(s->cfg, s->id, want, sizeof(want));
    char *have;
    size_t len;
    int r = ps_store_get(s->store, CF_META, "identity", 8, &have, &len, err, errlen);
    if (r < 0)
        return r;
    if (have && (len != strlen(want) || memcmp(have, want, len))) {
        snprintf(err, errlen, "%s holds data of '%.*s' but this server is '%s'", s->dir, (int)len,
                 have, want);
        free(have);
        return PS_ECONFIG;
    }
    free(have);
    ps_store_batch_put(b, s->store, CF_META, "identity", 8, want, strlen(want));
    for (size_t i = 0; i < s->cfg->ntables; i++) {
        const ps_table_config *tc = &s->cfg->tables[i];
        char key[PS_NAME_MAX + 8], schema[128];
        snprintf(key, sizeof(key), "schema/%s", tc->name);
        ps_shard_table_schema(tc, schema, sizeof(schema));
        r = ps_store_get(s->store, CF_META, key, strlen(key), &have, &len, err, errlen);
        if (r < 0)
            return r;
        if (have && (len != strlen(schema) || memcmp(have, schema, len))) {
            snprintf(err, errlen, "table %s was created with '%.*s'; the config now says '%s'",
                     tc->name, (int)len, have, schema);
            free(have);
            return PS_ECONFIG;
        }
        free(have);
        ps_store_batch_put(b, s->store, CF_META, key, strlen(key), schema, strlen(schema));
    }
    return 0;
}

static uint64_t table_capacity(const ps_config *cfg, const ps_table_config *tc) {
    if (tc->memory_rows)
        return tc->memory_rows;
    uint32_t shared = 0;
    for (uint32_t i = 0; i < cfg->ntables; i++)
        shared += cfg->tables[i].memory_rows == 0;
    uint64_t budget = cfg->server.memory_mb << 20;
    return budget / (shared ? shared : 1) / ps_table_row_bytes(tc);
}

int ps_shard_open(const ps_config *cfg, const ps_shard_options *opts, ps_shard **ret_shard,
                  char *err, size_t errlen) {
    ps_shard *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->cfg = cfg;
    s->id = opts->shard_id;
    s->notify = opts->notify;
    s->notify_ctx = opts->notify_ctx;
    s->on_replay = opts->on_replay;
    s->on_replay_ctx = opts->on_replay_ctx;
    snprintf(s->dir, sizeof(s->dir), "%s", opts->data_dir);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->last_flush_ms = mono_ms();

    ps_store_batch *b = NULL;
    const char **cfs = NULL;
    char **names = NULL;
    ps_store_cf_filter *filters = NULL;
    int r = ps_mkdir_p(s->dir);
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", s->dir, ps_strerror(r));
        goto fail;
    }
    /* Staging files of a copy this process no longer knows (a crash):
     * never ingested, never needed again. */
    char stage_dir[PS_PATH_MAX + 16];
    stage_path(s, stage_dir, sizeof(stage_dir));
    r = ps_rm_tree(stage_dir);
    if (r < 0 && r != -ENOENT) {
        snprintf(err, errlen, "%s: %s", stage_dir, ps_strerror(r));
        goto fail;
    }
    s->ntables = cfg->ntables;
    size_t ncf = CF_TABLE0 + cfg->ntables;
    cfs = calloc(ncf, sizeof(char *));
    filters = calloc(ncf, sizeof(*filters));
    names = calloc(cfg->ntables + 1, sizeof(char *));
    s->tables = calloc(cfg->ntables + 1, sizeof(ps_table *));
    s->job.gens = calloc(cfg->ntables + 1, sizeof(uint32_t));
    s->job.dumps = calloc(cfg->ntables + 1, sizeof(ps_table_dump));
    s->job.big = calloc(cfg->ntables + 1, sizeof(bool));
    s->job.bucket_lsn = calloc(cfg->buckets, sizeof(uint64_t));
    s->bucket_lsn = calloc(cfg->buckets, sizeof(uint64_t));
    r = -ENOMEM;
    if (!cfs || !filters || !names || !s->tables || !s->job.gens || !s->job.dumps ||
        !s->job.big || !s->job.bucket_lsn || !s->bucket_lsn)
        goto fail;
    cfs[CF_META] = "meta";
    cfs[CF_DENSE] = "dense";
    for (size_t i = 0; i < cfg->ntables; i++) {
        if (asprintf(&names[i], "t.%s", cfg->tables[i].name) < 0)
            goto fail;
        cfs[CF_TABLE0 + i] = names[i];
        if (ps_table_store_filter(&cfg->tables[i], &filters[CF_TABLE0 + i]) < 0)
            goto fail;
    }
    char dbdir[PS_PATH_MAX + 8];
    snprintf(dbdir, sizeof(dbdir), "%s/db", s->dir);
    ps_store_options so = {.sync_writes = cfg->server.fsync == PS_FSYNC_ALWAYS,
                           .filters = filters,
                           .first_row_cf = CF_TABLE0,
                           .block_cache_mb = cfg->server.block_cache_mb,
                           .write_buffer_mb = cfg->server.write_buffer_mb};
    r = ps_store_open(dbdir, cfs, ncf, &so, &s->store, err, errlen);
    /* The store owns the filters' state now, even when open failed. */
    for (size_t i = 0; i < ncf; i++)
        filters[i].fn = NULL;
    if (r < 0)
        goto fail;

    b = ps_store_batch_new();
    r = b ? check_identity(s, b, err, errlen) : -ENOMEM;
    if (r < 0)
        goto fail;
    r = ps_store_write(s->store, b, err, errlen);
    if (r < 0)
        goto fail;
    r = load_map(s, err, errlen);
    if (r < 0)
        goto fail;

    for (size_t i = 0; i < cfg->ntables; i++) {
        const ps_table_config *tc = &cfg->tables[i];
        char key[PS_NAME_MAX + 8];
        snprintf(key, sizeof(key), "rows/%s", tc->name);
        uint64_t rows;
        r = meta_get_u64(s, key, &rows, err, errlen);
        if (r < 0)
            goto fail;
        r = ps_table_new(tc, cfg->buckets, table_capacity(cfg, tc), s->store, CF_TABLE0 + (int)i,
                         rows, &s->tables[i]);
        if (r < 0) {
            snprintf(err, errlen, "table %s: %s", tc->name, ps_strerror(r));
            goto fail;
        }
        ps_table_set_make_room(s->tables[i], make_room, s);
        ps_table_set_store_filter(s->tables[i], filters[CF_TABLE0 + i].ctx);
        /* Its state and clock as of the last write-back: the push log is
         * replayed on top, each record at its own clock. */
        r = ps_table_load_state(s->tables[i], CF_META, err, errlen);
        if (r < 0)
            goto fail;
    }
    uint64_t covered;
    uint32_t stored_groups;
    r = load_groups(s, &covered, &stored_groups, err, errlen);
    if (r < 0)
        goto fail;
    r = load_clients(s, stored_groups);
    if (r == 0)
        r = aseq_load(s);
    if (r < 0)
        goto fail;
    r = load_dense(s, err, errlen);
    if (r < 0)
        goto fail;

    r = pthread_create(&s->thread, NULL, flush_thread, s);
    if (r != 0) {
        r = -r;
        goto fail;
    }
    s->thread_started = true;

    char logdir[PS_PATH_MAX + 16];
    snprintf(logdir, sizeof(logdir), "%s/pushlog", s->dir);
    s->replaying = true;
    s->replay_covered = covered;
    /* Replay from the least bucket's lsn; new records go past the greatest
     * (a group stored up to it must never take a later record for one it
     * holds). */
    uint64_t used = s->dense_lsn;
    for (uint32_t bk = 0; bk < cfg->buckets; bk++)
        used = s->bucket_lsn[bk] > used ? s->bucket_lsn[bk] : used;
    r = ps_pushlog_open_after(logdir, cfg->server.fsync, covered, used, replay_record, s, &s->log,
                              err, errlen);
    s->replaying = false;
    if (r < 0)
        goto fail;
    for (size_t i = 0; i < cfg->ntables; i++)
        ps_table_set_clock(s->tables[i], (uint32_t)time(NULL));
    r = load_move(s, err, errlen);
    if (r < 0)
        goto fail;
    ps_store_batch_free(b);
    free(filters);
    for (size_t i = 0; i < cfg->ntables; i++)
        free(names[i]);
    free(names);
    free(cfs);
    *ret_shard = s;
    return 0;
fail:
    ps_store_batch_free(b);
    for (size_t i = 0; filters && i < CF_TABLE0 + cfg->ntables; i++)
        if (filters[i].fn && filters[i].free_ctx)
            filters[i].free_ctx(filters[i].ctx);
    free(filters);
    if (names)
        for (size_t i = 0; i < cfg->ntables; i++)
            free(names[i]);
    free(names);
    free(cfs);
    ps_shard_close(s);
    return r;
}

int ps_shard_close(ps_shard *s) {
    if (!s)
        return 0;
    int r = 0;
    if (s->thread_started) {
        char err[256];
        if (s->log)
            ps_shard_commit(s);
        s->closing = true;
        r = ps_shard_flush_sync(s, err, sizeof(err));
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    ps_pushlog_close(s->log);
    ps_dense_free(s->dense);
    for (size_t i = 0; i < s->ntables && s->tables; i++)
        ps_table_free(s->tables[i]);
    free(s->tables);
    s->tables = NULL; /* track_end() below has no filters to stop sending */
    if (s->job.batch)
        ps_store_batch_free(s->job.batch);
    free(s->job.gens);
    for (size_t i = 0; i < s->ntables && s->job.dumps; i++)
        ps_table_dump_deinit(&s->job.dumps[i]);
    free(s->job.dumps);
    free(s->job.big);
    free(s->job.bucket_lsn);
    free(s->bucket_lsn);
    track_end(s);
    free(s->tracked);
    free(s->round);
    free(s->round_n);
    free(s->aseq);
    memo_end(s);
    drop_end(s);
    free(s->fresh_top);
    free(s->fresh_any);
    stage_end(s);
    free(s->stage);
    for (size_t i = 0; s->clients && i < s->clients_cap; i++)
        free(s->clients[i].bseq);
    free(s->clients);
    ps_cluster_map_deinit(&s->map);
    ps_store_close(s->store);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    return r;
}

uint32_t ps_shard_id(const ps_shard *s) { return s->id; }
const ps_config *ps_shard_config(const ps_shard *s) { return s->cfg; }
size_t ps_shard_ntables(const ps_shard *s) { return s->ntables; }
ps_table *ps_shard_table_at(ps_shard *s, size_t i) { return s->tables[i]; }

ps_table *ps_shard_table(ps_shard *s, const char *name) {
    for (size_t i = 0; i < s->ntables; i++)
        if (!strcmp(ps_table_config_of(s->tables[i])->name, name))
            return s->tables[i];
    return NULL;
}

const char *ps_shard_store_error(const ps_shard *s) { return s->store_error; }
bool ps_shard_read_only(const ps_shard *s) { return s->read_only; }

void ps_shard_counters_get(const ps_shard *s, ps_shard_counters *ret) {
    *ret = s->c;
    ret->pushlog_bytes = s->log ? ps_pushlog_bytes(s->log) : 0;
}

uint64_t ps_shard_store_bytes(ps_shard *s) { return ps_store_size(s->store); }

uint64_t ps_shard_pending_compaction_bytes(ps_shard *s) {
    return ps_store_pending_compaction_bytes(s->store);
}

uint32_t ps_shard_running_compactions(ps_shard *s) { return ps_store_running_compactions(s->store); }
