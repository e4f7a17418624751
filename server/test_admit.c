/* Tests for feature admission (server/admit.h).
 *
 * What a user depends on: with admit_after = N a key is admitted exactly on
 * its N-th push (keys without Bloom collisions, which a large filter makes
 * all of them); with admit_probability = P about a share P of new keys is
 * admitted; the decisions are a function of the push stream and the saved
 * state, so a filter loaded from a save, or fed the same pushes, decides the
 * same; an aborted request leaves no trace; and the filter forgets (halves)
 * instead of filling up. */

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admit.h"
#include "config.h"
#include "error.h"
#include "keys.h"

static ps_table_config cfg_of(double p, uint32_t after, uint64_t counters) {
    ps_table_config c;
    memset(&c, 0, sizeof(c));
    snprintf(c.name, sizeof(c.name), "t");
    c.dim = 1;
    c.seed = 77;
    c.admit_probability = p;
    c.admit_after = after;
    c.admit_bloom_bits = counters;
    return c;
}

static ps_admit *new_admit(double p, uint32_t after, uint64_t counters) {
    ps_table_config c = cfg_of(p, after, counters);
    ps_admit *a = NULL;
    cr_assert_eq(ps_admit_new(&c, &a), 0);
    cr_assert_not_null(a);
    return a;
}

/* One request of a single push of fid. */
static bool decide1(ps_admit *a, uint64_t fid) {
    bool ok;
    ps_admit_begin(a);
    cr_assert_eq(ps_admit_decide(a, fid, &ok), 0);
    ps_admit_commit(a);
    return ok;
}

static uint64_t key_of(uint64_t i) { return ps_mix64(i + 1000) ^ (UINT64_C(3) << 48); }

/* Saved state, as the meta column family would hold it: the last value put
 * for each id. */
#define MAXREC 64
typedef struct saved {
    uint32_t id[MAXREC];
    char *data[MAXREC];
    size_t len[MAXREC];
    size_t n;
    size_t puts;                 /* calls of the last save */
} saved;

static void put_rec(void *ctx, uint32_t id, const void *data, size_t len) {
    saved *s = ctx;
    s->puts++;
    size_t i = 0;
    while (i < s->n && s->id[i] != id)
        i++;
    cr_assert_lt(i, MAXREC);
    if (i == s->n)
        s->n++;
    else
        free(s->data[i]);
    s->id[i] = id;
    s->data[i] = malloc(len);
    memcpy(s->data[i], data, len);
    s->len[i] = len;
}

static void save(ps_admit *a, saved *s) {
    s->puts = 0;
    ps_admit_save(a, put_rec, s);
}

static int load(ps_admit *a, const saved *s) {
    for (size_t i = 0; i < s->n; i++)
        if (s->id[i] == PS_ADMIT_HEADER) {
            int r = ps_admit_load_header(a, s->data[i], s->len[i]);
            if (r < 0)
                return r;
        }
    for (size_t i = 0; i < s->n; i++)
        if (s->id[i] != PS_ADMIT_HEADER)
            cr_assert_eq(ps_admit_load_block(a, s->id[i], s->data[i], s->len[i]), 0);
    return 0;
}

static void saved_free(saved *s) {
    for (size_t i = 0; i < s->n; i++)
        free(s->data[i]);
    memset(s, 0, sizeof(*s));
}

Test(admit, off_unless_configured) {
    ps_table_config c = cfg_of(1.0, 1, 1024);
    ps_admit *a = (ps_admit *)&c;
    cr_assert_eq(ps_admit_new(&c, &a), 0);
    cr_assert_null(a, "admit_probability 1 and admit_after 1 admit every key: no filter");
    c.admit_after = 0;
    cr_assert_eq(ps_admit_new(&c, &a), 0);
    cr_assert_null(a);
    ps_admit_free(NULL);
}

Test(admit, admitted_exactly_on_the_nth_push) {
    for (uint32_t n = 2; n <= 15; n += 13) {
        ps_admit *a = new_admit(1.0, n, 1u << 20);
        enum { KEYS = 2000 };
        /* Rounds over every key, so pushes of different keys interleave. */
        for (uint32_t round = 1; round <= n + 1; round++)
            for (uint64_t k = 0; k < KEYS; k++) {
                bool ok = decide1(a, key_of(k));
                /* After admission the table holds the row and nothing asks
                 * again; asking anyway, the count stays at or above n. */
                cr_assert_eq(ok, round >= n, "N = %u: key %llu, push %u: %s", n,
                             (unsigned long long)k, round, ok ? "admitted early" : "not admitted");
            }
        ps_admit_stats st;
        ps_admit_stats_get(a, &st);
        cr_assert_eq(st.trials, (uint64_t)KEYS * (n + 1));
        cr_assert_eq(st.halvings, 0, "2000 keys in 2^20 counters must not trigger a halving");
        ps_admit_free(a);
    }
}

Test(admit, occurrences_within_one_request_count) {
    ps_admit *a = new_admit(1.0, 3, 1u << 16);
    bool ok[4];
    ps_admit_begin(a);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(ps_admit_decide(a, 42, &ok[i]), 0);
    ps_admit_commit(a);
    cr_assert(!ok[0] && !ok[1] && ok[2] && ok[3], "%d %d %d %d", ok[0], ok[1], ok[2], ok[3]);
    ps_admit_free(a);
}

Test(admit, poisson_rate_is_close_to_p) {
    const double ps[] = {0.0, 0.05, 0.3, 0.9};
    for (size_t t = 0; t < sizeof(ps) / sizeof(ps[0]); t++) {
        ps_admit *a = new_admit(ps[t], 0, 0);
        ps_admit *b = new_admit(ps[t], 0, 0);
        enum { N = 200000 };
        uint64_t admitted = 0;
        ps_admit_begin(a);
        ps_admit_begin(b);
        for (uint64_t k = 0; k < N; k++) {
            bool x, y;
            cr_assert_eq(ps_admit_decide(a, key_of(k), &x), 0);
            cr_assert_eq(ps_admit_decide(b, key_of(k), &y), 0);
            cr_assert_eq(x, y, "the same stream must decide the same");
            admitted += x;
        }
        ps_admit_commit(a);
        ps_admit_commit(b);
        double rate = (double)admitted / N, sd = sqrt(ps[t] * (1 - ps[t]) / N);
        cr_assert(fabs(rate - ps[t]) <= 5 * sd + 1e-12, "P = %g: admitted %.5f of new keys", ps[t], rate);
        cr_log_info("P = %g: admitted %.5f (sd %.5f)", ps[t], rate, sd);
        ps_admit_free(a);
        ps_admit_free(b);
    }
}

Test(admit, repeated_trials_of_one_key_are_independent) {
    /* A key pushed r times is admitted by then with probability 1-(1-P)^r:
     * the trial number, not only the key, seeds each decision. */
    ps_admit *a = new_admit(0.25, 0, 0);
    enum { KEYS = 20000, R = 4 };
    uint64_t by_r = 0;
    for (uint64_t k = 0; k < KEYS; k++)
        for (int r = 0; r < R; r++)
            if (decide1(a, key_of(k))) {
                by_r++;
                break;
            }
    double want = 1 - pow(0.75, R), rate = (double)by_r / KEYS, sd = sqrt(want * (1 - want) / KEYS);
    cr_assert(fabs(rate - want) <= 5 * sd, "admitted within %d pushes: %.4f, expected %.4f", R, rate, want);
    ps_admit_free(a);
}

/* The same pushes from a filter in state `s` (or fresh) and a second one
 * decide identically; returns the number admitted. */
static uint64_t run_stream(ps_admit *a, uint64_t from, uint64_t to, bool *out) {
    uint64_t n = 0;
    for (uint64_t i = from; i < to; i++) {
        /* Key i % 700 recurs: some keys reach N, others do not. */
        out[i - from] = decide1(a, key_of((i * 7919) % 700));
        n += out[i - from];
    }
    return n;
}

Test(admit, saved_state_decides_like_the_original) {
    enum { A = 3000, B = 3000 };
    static bool x[B], y[B];
    saved s = {0};
    ps_admit *a = new_admit(0.5, 3, 65536);
    run_stream(a, 0, A, x);
    save(a, &s);
    cr_assert_gt(s.puts, 1, "the header and the changed blocks");
    ps_admit *b = new_admit(0.5, 3, 65536);
    cr_assert_eq(load(b, &s), 0);
    uint64_t na = run_stream(a, A, A + B, x), nb = run_stream(b, A, A + B, y);
    cr_assert_gt(na, 0);
    cr_assert_lt(na, B);
    cr_assert_eq(na, nb);
    cr_assert(!memcmp(x, y, sizeof(x)), "a filter loaded from the save decides differently");

    /* An incremental save writes only what changed: nothing, right after
     * one. */
    save(a, &s);
    save(a, &s);
    cr_assert_eq(s.puts, 1, "only the header when no counter changed");

    /* Saved with other parameters: refused, and the filter starts empty. */
    ps_admit *c = new_admit(0.5, 3, 8192);
    cr_assert_eq(load(c, &s), PS_ECONFIG);
    ps_admit_stats st;
    ps_admit_stats_get(c, &st);
    cr_assert_eq(st.nonzero, 0);
    cr_assert_eq(st.trials, 0);
    saved fresh = {0};
    save(c, &fresh);
    cr_assert_eq(fresh.puts, 1 + 1, "every block is rewritten after a mismatch (8192 counters: 1 block)");
    saved_free(&fresh);
    saved_free(&s);
    ps_admit_free(a);
    ps_admit_free(b);
    ps_admit_free(c);
}

Test(admit, abort_leaves_no_trace) {
    enum { N = 2000 };
    static bool x[N], y[N];
    ps_admit *a = new_admit(0.5, 2, 4096), *b = new_admit(0.5, 2, 4096);
    ps_admit_begin(a);
    for (uint64_t k = 0; k < 500; k++) {
        bool ok;
        cr_assert_eq(ps_admit_decide(a, key_of(k), &ok), 0);
    }
    ps_admit_abort(a);
    run_stream(a, 0, N, x);
    run_stream(b, 0, N, y);
    cr_assert(!memcmp(x, y, sizeof(x)), "an aborted request changed later decisions");
    saved sa = {0}, sb = {0};
    save(a, &sa);
    save(b, &sb);
    cr_assert_eq(sa.n, sb.n);
    for (size_t i = 0; i < sa.n; i++)
        cr_assert(sa.len[i] == sb.len[i] && !memcmp(sa.data[i], sb.data[i], sa.len[i]));
    saved_free(&sa);
    saved_free(&sb);
    ps_admit_free(a);
    ps_admit_free(b);
}

Test(admit, a_full_filter_halves_instead_of_admitting_everything) {
    /* 4096 counters, N = 2, a stream of distinct keys (none recurs, so any
     * admission is a false positive). Without decay the filter would fill
     * and admit nearly every key; halving keeps the rate low. */
    ps_admit *a = new_admit(1.0, 2, 4096);
    enum { KEYS = 50000 };
    uint64_t fp = 0;
    for (uint64_t k = 0; k < KEYS; k++)
        fp += decide1(a, key_of(k));
    ps_admit_stats st;
    ps_admit_stats_get(a, &st);
    cr_assert_gt(st.halvings, 10);
    cr_assert_lt(st.nonzero * 4, st.counters, "halving keeps a quarter or less non-zero");
    double rate = (double)fp / KEYS;
    cr_assert_lt(rate, 0.01, "false-positive rate %.4f", rate);
    cr_log_info("N = 2, m = 4096, %d distinct keys: %llu halvings, false positives %.4f", KEYS,
                (unsigned long long)st.halvings, rate);
    ps_admit_free(a);
}

/* ---- moving with a bucket range (admit.h) ---- */

/* A round as the target receives it: its pages gathered. */
#define MOVE_BLOCKS 8
#define MOVE_M (MOVE_BLOCKS * 2 * PS_ADMIT_BLOCK)
#define MAXC 256
typedef struct gathered {
    uint8_t header[64];
    size_t header_len;
    uint32_t block_ids[MOVE_BLOCKS];
    uint8_t blocks[MOVE_BLOCKS][PS_ADMIT_BLOCK];
    size_t nblocks;
    uint64_t counter_ids[MAXC];
    uint8_t counter_values[MAXC];
    size_t ncounters;
    size_t pages;
} gathered;

/* What send_page() counts a block and a counter as, on the wire. */
#define BLOCKS_BYTES(n) ((n) * (PS_ADMIT_BLOCK + 16))
#define COUNTERS_BYTES(n) ((n) * 12)

/* Take a round of a and page it, max_bytes a page. */
static void send_round(ps_admit *a, size_t max_bytes, gathered *g) {
    memset(g, 0, sizeof(*g));
    cr_assert_eq(ps_admit_send_round(a), 0);
    uint64_t off = 0;
    bool done = false;
    while (!done) {
        ps_admit_page p;
        bool first = g->pages == 0;
        done = ps_admit_send_page(a, &off, max_bytes, &p);
        g->pages++;
        if (!p.nblocks && !p.ncounters) {
            cr_assert(done && first, "an empty page ends an empty round");
            break;
        }
        cr_assert_leq(p.header_len, sizeof(g->header));
        memcpy(g->header, p.header, p.header_len);
        g->header_len = p.header_len;
        for (size_t i = 0; i < p.nblocks; i++) {
            cr_assert_lt(g->nblocks, MOVE_BLOCKS);
            cr_assert_eq(p.block_lens[i], PS_ADMIT_BLOCK);
            g->block_ids[g->nblocks] = p.block_ids[i];
            memcpy(g->blocks[g->nblocks++], p.blocks[i], PS_ADMIT_BLOCK);
        }
        for (size_t i = 0; i < p.ncounters; i++) {
            cr_assert_lt(g->ncounters, MAXC);
            g->counter_ids[g->ncounters] = p.counter_ids[i];
            g->counter_values[g->ncounters++] = p.counter_values[i];
        }
    }
}

static ps_admit_page page_of(const gathered *g, const void **ptrs, size_t *lens) {
    for (size_t i = 0; i < g->nblocks; i++) {
        ptrs[i] = g->blocks[i];
        lens[i] = PS_ADMIT_BLOCK;
    }
    return (ps_admit_page){.header = g->header,
                           .header_len = g->header_len,
                           .nblocks = g->nblocks,
                           .block_ids = g->block_ids,
                           .blocks = ptrs,
                           .block_lens = lens,
                           .ncounters = g->ncounters,
                           .counter_ids = g->counter_ids,
                           .counter_values = g->counter_values};
}

static int merge(ps_admit *b, const gathered *g) {
    const void *ptrs[MOVE_BLOCKS];
    size_t lens[MOVE_BLOCKS];
    ps_admit_page p = page_of(g, ptrs, lens);
    int r = ps_admit_merge_check(b, &p);
    if (r == 0)
        ps_admit_merge(b, &p);
    return r;
}

/* Every counter of a (MOVE_M of them), through a first round. */
static uint8_t *counters_of(ps_admit *a) {
    static gathered g;
    cr_assert_eq(ps_admit_send_begin(a), 0);
    send_round(a, BLOCKS_BYTES(MOVE_BLOCKS), &g);
    ps_admit_send_end(a);
    uint8_t *c = calloc(MOVE_M, 1);
    for (size_t b = 0; b < g.nblocks; b++)
        for (size_t j = 0; j < 2 * PS_ADMIT_BLOCK; j++) {
            uint8_t byte = g.blocks[b][j / 2];
            c[(size_t)g.block_ids[b] * 2 * PS_ADMIT_BLOCK + j] = (j & 1) ? byte >> 4 : byte & 0xf;
        }
    return c;
}

Test(admit, a_merged_filter_counts_the_senders_pushes) {
    ps_admit *src = new_admit(1.0, 3, MOVE_M), *dst = new_admit(1.0, 3, MOVE_M),
             *alone = new_admit(1.0, 3, MOVE_M);
    enum { KEYS = 300 };
    /* Keys 0..299 pushed twice on the source; keys 1000.. once on the
     * target (its own ranges). */
    for (int round = 0; round < 2; round++)
        for (uint64_t k = 0; k < KEYS; k++)
            cr_assert_not(decide1(src, key_of(k)));
    for (uint64_t k = 1000; k < 1000 + KEYS; k++) {
        cr_assert_not(decide1(dst, key_of(k)));
        cr_assert_not(decide1(alone, key_of(k)));
    }
    static gathered g;
    cr_assert_eq(ps_admit_send_begin(src), 0);
    send_round(src, BLOCKS_BYTES(3), &g);
    cr_assert_eq(g.nblocks, MOVE_BLOCKS, "the first round sends every block");
    cr_assert_eq(g.pages, 3, "8 blocks in pages of 3");
    ps_admit_send_end(src);
    cr_assert_eq(merge(dst, &g), 0);
    uint8_t *before = counters_of(dst);
    cr_assert_eq(merge(dst, &g), 0);
    uint8_t *again = counters_of(dst), *sc = counters_of(src);
    cr_assert_eq(memcmp(before, again, MOVE_M), 0, "merging a page twice changes nothing more");
    for (uint64_t i = 0; i < MOVE_M; i++)
        cr_assert_geq(before[i], sc[i], "counter %llu below the sender's", (unsigned long long)i);
    ps_admit_stats st_dst, st_alone;
    ps_admit_stats_get(dst, &st_dst);
    ps_admit_stats_get(alone, &st_alone);
    cr_assert_eq(st_dst.trials, st_alone.trials, "the target keeps its own trial number");
    /* The third push anywhere admits the moved keys: on the target now as
     * on the source; a target that merged nothing counts them from zero. */
    for (uint64_t k = 0; k < KEYS; k++) {
        cr_assert(decide1(dst, key_of(k)), "moved key %llu not admitted on its third push",
                  (unsigned long long)k);
        cr_assert_not(decide1(alone, key_of(k)));
    }
    /* The target's own keys: counted as before, not more. */
    for (uint64_t k = 1000; k < 1000 + KEYS; k++)
        cr_assert_not(decide1(dst, key_of(k)), "one push before and one now make two, not three");
    free(before);
    free(again);
    free(sc);
    ps_admit_free(src);
    ps_admit_free(dst);
    ps_admit_free(alone);
}

Test(admit, a_merge_needs_the_same_layout_and_fitting_blocks_and_counters) {
    ps_admit *src = new_admit(1.0, 3, MOVE_M);
    decide1(src, key_of(1));
    static gathered g;
    cr_assert_eq(ps_admit_send_begin(src), 0);
    send_round(src, BLOCKS_BYTES(MOVE_BLOCKS), &g);
    g.nblocks = 1;
    g.counter_ids[0] = MOVE_M - 1;
    g.counter_values[0] = 15;
    g.ncounters = 1;
    const void *ptrs[MOVE_BLOCKS];
    size_t lens[MOVE_BLOCKS];
    ps_admit_page p = page_of(&g, ptrs, lens);
    ps_admit *same = new_admit(0.5, 2, MOVE_M); /* other N and P: the same counters */
    cr_assert_eq(ps_admit_merge_check(same, &p), 0);
    ps_admit *bigger = new_admit(1.0, 3, 2 * MOVE_M);
    cr_assert_eq(ps_admit_merge_check(bigger, &p), PS_ECONFIG);
    ps_table_config c = cfg_of(1.0, 3, MOVE_M);
    c.seed = 78;
    ps_admit *reseeded;
    cr_assert_eq(ps_admit_new(&c, &reseeded), 0);
    cr_assert_eq(ps_admit_merge_check(reseeded, &p), PS_ECONFIG);
    cr_assert_eq(ps_admit_merge_check(NULL, &p), PS_ECONFIG, "no filter here");
    ps_admit *poisson = new_admit(0.5, 1, MOVE_M);
    cr_assert_eq(ps_admit_merge_check(poisson, &p), PS_ECONFIG, "no counters here");
    p.header_len--;
    cr_assert_eq(ps_admit_merge_check(same, &p), PS_ECONFIG);
    p.header_len++;
    lens[0] = PS_ADMIT_BLOCK - 1;
    cr_assert_eq(ps_admit_merge_check(same, &p), PS_EPARSE, "a short block");
    lens[0] = PS_ADMIT_BLOCK;
    g.block_ids[0] = MOVE_BLOCKS;
    cr_assert_eq(ps_admit_merge_check(same, &p), PS_EPARSE, "a block beyond the filter");
    g.block_ids[0] = 0;
    g.counter_ids[0] = MOVE_M;
    cr_assert_eq(ps_admit_merge_check(same, &p), PS_EPARSE, "a counter beyond the filter");
    g.counter_ids[0] = 0;
    g.counter_values[0] = 16;
    cr_assert_eq(ps_admit_merge_check(same, &p), PS_EPARSE, "a counter above 15");
    g.counter_values[0] = 15;
    cr_assert_eq(ps_admit_merge_check(same, &p), 0);
    ps_admit_free(src);
    ps_admit_free(same);
    ps_admit_free(bigger);
    ps_admit_free(reseeded);
    ps_admit_free(poisson);
}

Test(admit, later_rounds_send_the_raised_counters_and_a_halving_none) {
    /* A stream of distinct keys on the source with a round after every
     * push: each round holds only the counters that push raised (at most
     * k), also when the push halved the filter, and the target that merged
     * every round never holds a counter below the source's. */
    ps_admit *src = new_admit(1.0, 3, MOVE_M), *dst = new_admit(1.0, 3, MOVE_M);
    static gathered g;
    cr_assert_eq(ps_admit_send_begin(src), 0);
    send_round(src, BLOCKS_BYTES(MOVE_BLOCKS), &g);
    cr_assert_eq(merge(dst, &g), 0);
    ps_admit_stats st = {0};
    uint64_t k = 0;
    while (st.halvings < 2) {
        decide1(src, key_of(k++));
        uint64_t pending = ps_admit_send_pending(src);
        cr_assert(pending >= 1 && pending <= 4, "a push of a new key raises 1 to k counters: %llu",
                  (unsigned long long)pending);
        send_round(src, COUNTERS_BYTES(2), &g);
        cr_assert_eq(g.nblocks, 0);
        cr_assert_eq(g.ncounters, pending);
        cr_assert_eq(g.pages, (pending + 1) / 2, "pages of 2 counters");
        cr_assert_eq(ps_admit_send_pending(src), 0);
        cr_assert_eq(merge(dst, &g), 0);
        ps_admit_stats_get(src, &st);
    }
    uint8_t *sc = counters_of(src), *dc = counters_of(dst);
    for (uint64_t i = 0; i < MOVE_M; i++)
        cr_assert_geq(dc[i], sc[i], "counter %llu below the sender's", (unsigned long long)i);
    free(sc);
    free(dc);
    ps_admit_free(src);
    ps_admit_free(dst);
}
