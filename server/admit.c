/* Feature admission: a counting Bloom filter of 4-bit counters and Poisson
 * inclusion (design note and trade-offs in admit.h).
 *
 * Layout. Two counters per byte (counter i in the low nibble of byte i/2 when
 * i is even), in blocks of PS_ADMIT_BLOCK bytes with a dirty flag each, so a
 * write-back saves only the blocks that changed since the previous one.
 *
 * Sending (a bucket range moving away, README "Resharding"). From
 * send_begin() to send_end(), every counter a commit or a merge raises is
 * recorded once (a bitmap of m bits and the list of those set); a halving,
 * which only lowers counters, records none. So a counter not recorded holds
 * no more than the value last sent. The first round is a copy of every
 * block; each later one the recorded counters with their values, and the
 * record starts again empty. Both are copies taken by send_round(), so a
 * round's pages show one moment of the filter whatever happens between
 * them. A later round costs a few bytes per counter raised since the one
 * before, not a block per block touched: under a stream of new keys every
 * block is touched within a few hundred pushes, which would make the round
 * taken after the freeze the whole filter again (measured: 8 MiB, a pause
 * of 75 to 400 ms on a loaded 2-core machine).
 *
 * Staging. decide() reads through an overlay: a small open-addressing map
 * from counter index to its staged value, filled by this request's
 * occurrences. commit() writes the overlay into the counters; abort() drops
 * it. The overlay is the only per-request state and is cleared by both. */

#include "admit.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "keys.h"

#define K 4                      /* positions per key */
#define COUNTER_MAX 15
#define GOLDEN_GAMMA UINT64_C(0x9e3779b97f4a7c15)
#define HEADER_VERSION 1
#define OV_EMPTY UINT64_MAX

typedef struct header {
    uint32_t version;
    uint32_t k;
    uint64_t m;
    uint64_t seed;
    uint64_t trials;
    uint64_t halvings;
} header;

struct ps_admit {
    uint32_t after;              /* N; <= 1: no filter */
    bool always;                 /* P = 1 */
    uint64_t threshold;          /* admit when a uniform u64 < threshold */
    uint64_t seed, hseed;
    uint64_t m;                  /* counters (0 without a filter) */
    uint8_t *cells;              /* nblocks * PS_ADMIT_BLOCK bytes */
    uint8_t *dirty;              /* per block */
    size_t nblocks;

    /* Sending: the counters raised since the current round began. */
    bool sending;
    bool send_lost;              /* a raise went unrecorded (no memory) */
    uint32_t rounds;             /* taken since send_begin() */
    uint64_t *raised;            /* m bits */
    uint64_t *raised_ids;
    size_t raised_n, raised_cap;
    /* The round being sent: a copy of every block (the first), or of the
     * counters raised before it (the later ones). */
    struct {
        header hdr;
        uint8_t *data;
        uint32_t *ids;
        const void **ptrs;
        size_t *lens;
        size_t nblocks;
        uint64_t *cids;
        uint8_t *cvals;
        size_t ncounters;
    } round;
    uint64_t nonzero, trials, halvings;

    /* Overlay of the request being decided. */
    uint64_t *ov_idx;
    uint8_t *ov_val;
    uint32_t *ov_used;           /* slots in use, to clear them */
    size_t ov_cap, ov_n;
    uint64_t ov_trials;
};

int ps_admit_new(const ps_table_config *cfg, ps_admit **ret_admit) {
    if (cfg->admit_after <= 1 && cfg->admit_probability >= 1) {
        *ret_admit = NULL;
        return 0;
    }
    ps_admit *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->after = cfg->admit_after;
    a->seed = cfg->seed;
    a->hseed = ps_mix64(cfg->seed ^ UINT64_C(0x61646d6974746564)); /* "admitted" */
    double t = ldexp(cfg->admit_probability, 64);
    a->always = t >= 18446744073709551616.0;
    a->threshold = a->always ? UINT64_MAX : (uint64_t)t;
    if (a->after > 1) {
        a->m = cfg->admit_bloom_bits;
        size_t bytes = (size_t)((a->m + 1) / 2);
        a->nblocks = (bytes + PS_ADMIT_BLOCK - 1) / PS_ADMIT_BLOCK;
        /* calloc: the pages are committed as counters become non-zero. */
        a->cells = calloc(a->nblocks, PS_ADMIT_BLOCK);
        a->dirty = calloc(a->nblocks, 1);
        if (!a->cells || !a->dirty) {
            ps_admit_free(a);
            return -ENOMEM;
        }
    }
    *ret_admit = a;
    return 0;
}

void ps_admit_free(ps_admit *a) {
    if (!a)
        return;
    free(a->cells);
    free(a->dirty);
    ps_admit_send_end(a);
    free(a->ov_idx);
    free(a->ov_val);
    free(a->ov_used);
    free(a);
}

/* ---- counters ------------------------------------------------------------ */

static inline uint8_t cell_get(const ps_admit *a, uint64_t i) {
    uint8_t b = a->cells[i >> 1];
    return (i & 1) ? b >> 4 : b & 0xf;
}

static inline void cell_set(ps_admit *a, uint64_t i, uint8_t v) {
    uint8_t *b = &a->cells[i >> 1];
    *b = (i & 1) ? (uint8_t)((*b & 0x0f) | (v << 4)) : (uint8_t)((*b & 0xf0) | v);
    a->dirty[(i >> 1) / PS_ADMIT_BLOCK] = 1;
}

/* Record a raised counter for the next round (sending only). */
static void raise_note(ps_admit *a, uint64_t i) {
    if (!a->sending || (a->raised[i >> 6] >> (i & 63) & 1))
        return;
    if (a->raised_n == a->raised_cap) {
        size_t cap = a->raised_cap ? 2 * a->raised_cap : 1024;
        uint64_t *ids = realloc(a->raised_ids, cap * sizeof(*ids));
        if (!ids) {
            a->send_lost = true;
            return;
        }
        a->raised_ids = ids;
        a->raised_cap = cap;
    }
    a->raised[i >> 6] |= UINT64_C(1) << (i & 63);
    a->raised_ids[a->raised_n++] = i;
}

/* Raise counter i to v, if v is above it. */
static void raise_to(ps_admit *a, uint64_t i, uint8_t v) {
    uint8_t c = cell_get(a, i);
    if (v <= c)
        return;
    a->nonzero += c == 0;
    cell_set(a, i, v);
    raise_note(a, i);
}

/* Non-zero counters of one block. */
static uint64_t block_nonzero(const uint8_t *p) {
    uint64_t n = 0;
    for (size_t i = 0; i < PS_ADMIT_BLOCK; i++)
        n += ((p[i] & 0x0f) != 0) + ((p[i] & 0xf0) != 0);
    return n;
}

/* Double hashing: position j = h1 + j*h2, mapped to [0, m) by the high bits
 * of a 128-bit product (no modulo, any m). */
static void positions(const ps_admit *a, uint64_t fid, uint64_t pos[K]) {
    uint64_t h1 = ps_mix64(fid ^ a->hseed);
    uint64_t h2 = ps_mix64(h1 + GOLDEN_GAMMA) | 1;
    for (int j = 0; j < K; j++)
        pos[j] = (uint64_t)(((unsigned __int128)(h1 + (uint64_t)j * h2) * a->m) >> 64);
}

/* Every counter halves: a nibble-wise shift of each byte. */
static void halve(ps_admit *a) {
    uint64_t nonzero = 0;
    size_t bytes = a->nblocks * PS_ADMIT_BLOCK;
    for (size_t i = 0; i < bytes; i++) {
        uint8_t b = (uint8_t)((a->cells[i] >> 1) & 0x77);
        a->cells[i] = b;
        nonzero += (b & 0x0f) != 0;
        nonzero += (b & 0xf0) != 0;
    }
    memset(a->dirty, 1, a->nblocks);
    a->nonzero = nonzero;
    a->halvings++;
}

/* ---- the overlay --------------------------------------------------------- */

static size_t ov_home(const ps_admit *a, uint64_t idx) {
    return (size_t)(ps_mix64(idx) & (a->ov_cap - 1));
}

static size_t ov_find(const ps_admit *a, uint64_t idx) {
    size_t s = ov_home(a, idx);
    while (a->ov_idx[s] != OV_EMPTY && a->ov_idx[s] != idx)
        s = (s + 1) & (a->ov_cap - 1);
    return s;
}

/* Room for `more` entries at under half load. */
static int ov_reserve(ps_admit *a, size_t more) {
    if (2 * (a->ov_n + more) <= a->ov_cap)
        return 0;
    size_t cap = a->ov_cap ? a->ov_cap : 64;
    while (2 * (a->ov_n + more) > cap)
        cap *= 2;
    uint64_t *idx = malloc(cap * sizeof(*idx));
    uint8_t *val = malloc(cap);
    uint32_t *used = malloc(cap / 2 * sizeof(*used));
    if (!idx || !val || !used || cap > UINT32_MAX) {
        free(idx);
        free(val);
        free(used);
        return -ENOMEM;
    }
    for (size_t s = 0; s < cap; s++)
        idx[s] = OV_EMPTY;
    uint64_t *old_idx = a->ov_idx;
    uint8_t *old_val = a->ov_val;
    uint32_t *old_used = a->ov_used;
    size_t n = a->ov_n;
    a->ov_idx = idx;
    a->ov_val = val;
    a->ov_used = used;
    a->ov_cap = cap;
    a->ov_n = 0;
    for (size_t u = 0; u < n; u++) {
        size_t from = old_used[u];
        size_t s = ov_find(a, old_idx[from]);
        a->ov_idx[s] = old_idx[from];
        a->ov_val[s] = old_val[from];
        a->ov_used[a->ov_n++] = (uint32_t)s;
    }
    free(old_idx);
    free(old_val);
    free(old_used);
    return 0;
}

static uint8_t ov_get(const ps_admit *a, uint64_t idx) {
    if (a->ov_n) {
        size_t s = ov_find(a, idx);
        if (a->ov_idx[s] == idx)
            return a->ov_val[s];
    }
    return cell_get(a, idx);
}

static void ov_set(ps_admit *a, uint64_t idx, uint8_t v) {
    size_t s = ov_find(a, idx);
    if (a->ov_idx[s] == OV_EMPTY) {
        a->ov_idx[s] = idx;
        a->ov_used[a->ov_n++] = (uint32_t)s;
    }
    a->ov_val[s] = v;
}

static void ov_clear(ps_admit *a) {
    for (size_t u = 0; u < a->ov_n; u++)
        a->ov_idx[a->ov_used[u]] = OV_EMPTY;
    a->ov_n = 0;
    a->ov_trials = 0;
}

/* ---- decisions ------------------------------------------------------------ */

void ps_admit_begin(ps_admit *a) { ov_clear(a); }

int ps_admit_decide(ps_admit *a, uint64_t fid, bool *ret_admit) {
    bool pass = true;
    if (a->after > 1) {
        int r = ov_reserve(a, K);
        if (r < 0)
            return r;
        uint64_t pos[K];
        uint8_t c[K], min = COUNTER_MAX;
        positions(a, fid, pos);
        for (int j = 0; j < K; j++) {
            c[j] = ov_get(a, pos[j]);
            if (c[j] < min)
                min = c[j];
        }
        if (min < COUNTER_MAX) {
            for (int j = 0; j < K; j++)
                if (c[j] == min)
                    ov_set(a, pos[j], (uint8_t)(min + 1));
            min++;
        }
        pass = min >= a->after;
    }
    uint64_t trial = a->trials + a->ov_trials++;
    if (pass && !a->always)
        pass = ps_mix64(ps_mix64(fid ^ a->seed) + trial * GOLDEN_GAMMA) < a->threshold;
    *ret_admit = pass;
    return 0;
}

void ps_admit_commit(ps_admit *a) {
    for (size_t u = 0; u < a->ov_n; u++) { /* staged values are increments */
        size_t s = a->ov_used[u];
        raise_to(a, a->ov_idx[s], a->ov_val[s]);
    }
    a->trials += a->ov_trials;
    ov_clear(a);
    if (a->m && a->nonzero * 4 >= a->m)
        halve(a);
}

void ps_admit_abort(ps_admit *a) { ov_clear(a); }

/* ---- persistence ------------------------------------------------------------ */

static header header_of(const ps_admit *a) {
    return (header){.version = HEADER_VERSION,
                    .k = K,
                    .m = a->m,
                    .seed = a->seed,
                    .trials = a->trials,
                    .halvings = a->halvings};
}

/* Whether a header describes a filter of this one's layout: the same
 * counters at the same positions of every key. */
static bool same_layout(const ps_admit *a, const void *data, size_t len, header *ret) {
    if (len != sizeof(*ret))
        return false;
    memcpy(ret, data, sizeof(*ret));
    return ret->version == HEADER_VERSION && ret->k == K && ret->m == a->m && ret->seed == a->seed;
}

void ps_admit_save(ps_admit *a, ps_admit_put_fn put, void *ctx) {
    header h = header_of(a);
    put(ctx, PS_ADMIT_HEADER, &h, sizeof(h));
    for (size_t b = 0; b < a->nblocks; b++) {
        if (!a->dirty[b])
            continue;
        put(ctx, (uint32_t)b, a->cells + b * PS_ADMIT_BLOCK, PS_ADMIT_BLOCK);
        a->dirty[b] = 0;
    }
}

int ps_admit_load_header(ps_admit *a, const void *data, size_t len) {
    header h;
    if (!same_layout(a, data, len, &h)) {
        /* Counters laid out for another filter mean nothing here: start
         * empty, and overwrite every stored block at the next save. */
        if (a->m) {
            memset(a->cells, 0, a->nblocks * PS_ADMIT_BLOCK);
            memset(a->dirty, 1, a->nblocks);
        }
        a->nonzero = a->trials = a->halvings = 0;
        return PS_ECONFIG;
    }
    a->trials = h.trials;
    a->halvings = h.halvings;
    return 0;
}

int ps_admit_load_block(ps_admit *a, uint32_t id, const void *data, size_t len) {
    if (id >= a->nblocks || len != PS_ADMIT_BLOCK)
        return PS_EPARSE;
    uint8_t *dst = a->cells + (size_t)id * PS_ADMIT_BLOCK;
    a->nonzero -= block_nonzero(dst);
    memcpy(dst, data, PS_ADMIT_BLOCK);
    a->nonzero += block_nonzero(dst);
    return 0;
}

/* ---- moving with a bucket range ------------------------------------------------ */

static void round_free(ps_admit *a) {
    free(a->round.data);
    free(a->round.ids);
    free(a->round.ptrs);
    free(a->round.lens);
    free(a->round.cids);
    free(a->round.cvals);
    memset(&a->round, 0, sizeof(a->round));
}

int ps_admit_send_begin(ps_admit *a) {
    ps_admit_send_end(a);
    if (!a->m)
        return 0;
    a->raised = calloc((a->m + 63) / 64, sizeof(uint64_t));
    if (!a->raised)
        return -ENOMEM;
    a->sending = true;
    return 0;
}

void ps_admit_send_end(ps_admit *a) {
    round_free(a);
    free(a->raised);
    free(a->raised_ids);
    a->raised = a->raised_ids = NULL;
    a->raised_n = a->raised_cap = 0;
    a->sending = a->send_lost = false;
    a->rounds = 0;
}

/* The first round: a copy of every block. */
static int round_blocks(ps_admit *a) {
    size_t n = a->nblocks;
    a->round.data = malloc(n * PS_ADMIT_BLOCK);
    a->round.ids = malloc(n * sizeof(*a->round.ids));
    a->round.ptrs = malloc(n * sizeof(*a->round.ptrs));
    a->round.lens = malloc(n * sizeof(*a->round.lens));
    if (!a->round.data || !a->round.ids || !a->round.ptrs || !a->round.lens)
        return -ENOMEM;
    memcpy(a->round.data, a->cells, n * PS_ADMIT_BLOCK);
    for (size_t b = 0; b < n; b++) {
        a->round.ids[b] = (uint32_t)b;
        a->round.ptrs[b] = a->round.data + b * PS_ADMIT_BLOCK;
        a->round.lens[b] = PS_ADMIT_BLOCK;
    }
    a->round.nblocks = n;
    return 0;
}

/* A later round: the recorded counters, whose list it takes. */
static int round_counters(ps_admit *a) {
    size_t n = a->raised_n;
    a->round.cvals = malloc(n + 1);
    if (!a->round.cvals)
        return -ENOMEM;
    a->round.cids = a->raised_ids;
    for (size_t k = 0; k < n; k++)
        a->round.cvals[k] = cell_get(a, a->round.cids[k]);
    a->round.ncounters = n;
    a->raised_ids = NULL;
    a->raised_cap = 0;
    return 0;
}

int ps_admit_send_round(ps_admit *a) {
    if (!a->m)
        return 0;
    if (!a->sending || a->send_lost)
        return -ENOMEM; /* a raise went unrecorded: only a new beginning is exact */
    round_free(a);
    /* What the round holds is taken: record afresh (every bit set is
     * listed, so clearing whole words clears no other). */
    for (size_t k = 0; k < a->raised_n; k++)
        a->raised[a->raised_ids[k] >> 6] = 0;
    int r = a->rounds ? round_counters(a) : round_blocks(a);
    a->raised_n = 0;
    if (r < 0) {
        a->send_lost = true;
        return r;
    }
    a->round.hdr = header_of(a);
    a->rounds++;
    return 0;
}

uint64_t ps_admit_send_pending(const ps_admit *a) { return a->raised_n; }

bool ps_admit_send_page(const ps_admit *a, uint64_t *offset, size_t max_bytes,
                        ps_admit_page *ret) {
    memset(ret, 0, sizeof(*ret));
    size_t total = a->round.nblocks + a->round.ncounters; /* one of them is 0 */
    if (*offset >= total)
        return true;
    size_t each = a->round.nblocks ? PS_ADMIT_BLOCK + 16 : 12;
    size_t n = max_bytes / each ? max_bytes / each : 1;
    n = n < total - *offset ? n : (size_t)(total - *offset);
    ret->header = &a->round.hdr;
    ret->header_len = sizeof(a->round.hdr);
    if (a->round.nblocks) {
        ret->nblocks = n;
        ret->block_ids = a->round.ids + *offset;
        ret->blocks = a->round.ptrs + *offset;
        ret->block_lens = a->round.lens + *offset;
    } else {
        ret->ncounters = n;
        ret->counter_ids = a->round.cids + *offset;
        ret->counter_values = a->round.cvals + *offset;
    }
    *offset += n;
    return *offset >= total;
}

int ps_admit_merge_check(const ps_admit *a, const ps_admit_page *p) {
    header h;
    if (!a || !a->m || !same_layout(a, p->header, p->header_len, &h))
        return PS_ECONFIG;
    for (size_t i = 0; i < p->nblocks; i++)
        if (p->block_ids[i] >= a->nblocks || p->block_lens[i] != PS_ADMIT_BLOCK)
            return PS_EPARSE;
    for (size_t i = 0; i < p->ncounters; i++)
        if (p->counter_ids[i] >= a->m || p->counter_values[i] > COUNTER_MAX)
            return PS_EPARSE;
    return 0;
}

void ps_admit_merge(ps_admit *a, const ps_admit_page *p) {
    for (size_t b = 0; b < p->nblocks; b++) {
        const uint8_t *src = p->blocks[b];
        uint64_t base = (uint64_t)p->block_ids[b] * 2 * PS_ADMIT_BLOCK;
        for (size_t j = 0; j < PS_ADMIT_BLOCK; j++) {
            if (!src[j]) /* most of a filter: at most a quarter of it is not */
                continue;
            if (base + 2 * j < a->m)
                raise_to(a, base + 2 * j, src[j] & 0xf);
            if (base + 2 * j + 1 < a->m)
                raise_to(a, base + 2 * j + 1, src[j] >> 4);
        }
    }
    for (size_t i = 0; i < p->ncounters; i++)
        raise_to(a, p->counter_ids[i], p->counter_values[i]);
}

void ps_admit_stats_get(const ps_admit *a, ps_admit_stats *ret) {
    ret->counters = a->m;
    ret->nonzero = a->nonzero;
    ret->trials = a->trials;
    ret->halvings = a->halvings;
}
