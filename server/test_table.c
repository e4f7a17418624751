/* Tests for one table's memory tier in front of its RocksDB column family
 * (server/table.h), against a real store in a temporary directory.
 *
 * What a user depends on: Pull reads a key without a row as its deterministic
 * initial weights, creating no row (Lookup does not find it, nothing is
 * written back, `rows` does not count it) until a push does, and Lookup
 * never creates one; Push applies exactly one optimizer
 * step per occurrence of a key, in order, skipping non-finite gradients
 * without creating rows for them; a bounded memory tier loses nothing,
 * whatever the eviction and write-back order (every row reads back bit for
 * bit through RocksDB); a dirty row is never dropped, so a request that
 * cannot get room fails whole; export walks rows in store order with the
 * freshest state; and the stats add up. */

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"
#include "config.h"
#include "error.h"
#include "keys.h"
#include "optim.h"
#include "store.h"
#include "table.h"

/* ---- fixtures ------------------------------------------------------------------ */

static char dir[PS_PATH_MAX];
static ps_store *store;
static const char *const cf_names[] = {"t.test"};

static void open_store(void) {
    char err[512] = "";
    int r = ps_store_open(dir, cf_names, 1, NULL, &store, err, sizeof(err));
    cr_assert_eq(r, 0, "ps_store_open: %s", err);
}

static void setup(void) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/ctrps-test-table-XXXXXX", base && *base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
    open_store();
}

static void teardown(void) {
    ps_store_close(store);
    store = NULL;
    ps_rm_tree(dir);
}

TestSuite(table, .init = setup, .fini = teardown);

#define NBUCKETS 64
#define MAXW (3 * 16)            /* widest state in these tests */

static ps_table_config table_cfg(ps_optimizer_kind kind, uint32_t dim, ps_init_kind init) {
    ps_table_config c;
    memset(&c, 0, sizeof(c));
    snprintf(c.name, sizeof(c.name), "test");
    c.dim = dim;
    c.opt.kind = kind;
    c.opt.alpha = 0.05;
    c.opt.beta = 1.0;
    c.opt.lambda1 = 0.01;
    c.opt.lambda2 = 0.001;
    c.opt.lambda21 = kind == PS_OPT_FTRL_GROUP_LASSO ? 0.02 : 0;
    c.opt.lr = 0.05;
    c.opt.initial_accumulator_value = 0.1;
    c.opt.eps = 1e-8;
    c.opt.accum_max = INFINITY;
    c.init = init;
    c.init_std = 0.1;
    c.seed = 1234;
    /* Config loading's defaults: every key admitted, rows never expire. */
    c.admit_probability = 1.0;
    c.admit_bloom_bits = 1u << 24;
    return c;
}

static ps_table *new_table(const ps_table_config *cfg, uint64_t capacity, uint64_t persisted) {
    ps_table *t = NULL;
    cr_assert_eq(ps_table_new(cfg, NBUCKETS, capacity, store, 0, persisted, &t), 0);
    return t;
}

/* The state a row gets from the init rule, as the optimizer defines it. */
static void init_state(const ps_table_config *cfg, uint64_t key, float *state) {
    float w[16];
    ps_optim_init_weights(cfg, key, w);
    ps_optim_init_row(&cfg->opt, cfg->dim, w, state);
}

/* A deterministic gradient for (key, step). */
static void grad_of(uint32_t dim, uint64_t key, uint32_t step, float *g) {
    for (uint32_t j = 0; j < dim; j++)
        g[j] = (float)(((key * 31 + step * 7 + j * 3) % 17) - 8) / 8.0f;
}

/* Write back every dirty row, as the shard does: collect, write, commit. */
static size_t flush(ps_table *t) {
    ps_store_batch *b = ps_store_batch_new();
    uint32_t gen;
    size_t n = ps_table_collect(t, b, &gen);
    cr_assert_eq(ps_store_batch_count(b), n);
    char err[512] = "";
    cr_assert_eq(ps_store_write(store, b, err, sizeof(err)), 0, "%s", err);
    ps_table_committed(t, gen);
    ps_store_batch_free(b);
    return n;
}

static void lookup_state(ps_table *t, uint64_t key, uint8_t *found, float *w, float *state) {
    char err[512] = "";
    int r = ps_table_lookup(t, &key, 1, found, w, state, err, sizeof(err));
    cr_assert_eq(r, 0, "lookup: %s", err);
}

static void expect_state(ps_table *t, uint64_t key, const float *want) {
    uint8_t found = 0;
    float w[16], state[MAXW];
    lookup_state(t, key, &found, w, state);
    uint32_t width = ps_table_state_width(t);
    cr_assert_eq(found, 1, "key %llu not found", (unsigned long long)key);
    cr_assert(!memcmp(state, want, width * sizeof(float)), "key %llu: state differs",
              (unsigned long long)key);
    cr_assert(!memcmp(w, want, ps_table_dim(t) * sizeof(float)), "key %llu: weights differ",
              (unsigned long long)key);
}

static uint32_t push1(ps_table *t, uint64_t key, const float *g) {
    uint32_t applied = 99, dropped = 99;
    char err[512] = "";
    cr_assert_eq(ps_table_push(t, &key, 1, g, &applied, &dropped, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(dropped, 0);
    return applied;
}

static bool found1(ps_table *t, uint64_t key) {
    uint8_t found = 7;
    float w[16];
    lookup_state(t, key, &found, w, NULL);
    return found;
}

static ps_table_stats stats(const ps_table *t) {
    ps_table_stats s;
    ps_table_stats_get(t, &s);
    return s;
}

/* ---- pull / lookup ------------------------------------------------------------------ */

Test(table, pull_reads_the_init_rule_and_creates_no_row) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 8, PS_INIT_NORMAL);
    ps_table *t = new_table(&cfg, 1024, 0);
    uint64_t keys[50];
    for (size_t i = 0; i < 50; i++)
        keys[i] = ps_fid(3, (const char *)&i, sizeof(i));
    float values[50 * 8];
    char err[512] = "";
    cr_assert_eq(ps_table_pull(t, keys, 50, values, err, sizeof(err)), 0, "%s", err);
    int nonzero = 0;
    for (size_t i = 0; i < 50; i++) {
        float w[8];
        ps_optim_init_weights(&cfg, keys[i], w);
        cr_assert(!memcmp(values + i * 8, w, sizeof(w)), "row %zu: not ps_optim_init_weights", i);
        nonzero += w[0] != 0;
        cr_assert(!found1(t, keys[i]), "key %zu: a pull created a row Lookup finds", i);
    }
    cr_assert_gt(nonzero, 40, "normal init gave zeros: the test would prove nothing");

    /* A second pull returns the same weights (from the rows the first one
     * left in memory). Nothing is a row yet, nothing awaits write-back. */
    float again[50 * 8];
    cr_assert_eq(ps_table_pull(t, keys, 50, again, err, sizeof(err)), 0);
    cr_assert(!memcmp(values, again, sizeof(values)));
    ps_table_stats s = stats(t);
    cr_assert_eq(s.rows, 0, "a pull creates no row");
    cr_assert_eq(s.rows_in_memory, 50, "the pulled keys' init rows are kept in memory");
    cr_assert_eq(s.dirty_rows, 0, "nothing to write back");
    cr_assert_eq(s.pulled_rows, 100);
    cr_assert_eq(s.admitted, 0);
    cr_assert_eq(ps_table_dirty_count(t), 0);
    cr_assert_eq(flush(t), 0, "a pull wrote rows back");

    /* The first push makes each a row, starting from the init rule's full
     * state (w, z and n: the kept row is exactly the init rule's). */
    float grads[50 * 8];
    for (size_t i = 0; i < 50; i++)
        grad_of(8, keys[i], 0, grads + i * 8);
    uint32_t applied, dropped;
    cr_assert_eq(ps_table_push(t, keys, 50, grads, &applied, &dropped, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(applied, 50);
    for (size_t i = 0; i < 50; i++) {
        float state[24];
        init_state(&cfg, keys[i], state);
        ps_optim_apply(&cfg.opt, 8, state, grads + i * 8);
        expect_state(t, keys[i], state);
    }
    s = stats(t);
    cr_assert_eq(s.rows, 50);
    cr_assert_eq(s.rows_in_memory, 50);
    cr_assert_eq(s.dirty_rows, 50, "pushed rows await write-back");
    cr_assert_eq(s.admitted, 50, "the push created the rows");
    ps_table_free(t);
}

/* 400k dim-16 FTRL rows fill 90 MB of slab and grow the index to 1M
 * entries: past the sizes at which threads fault the slab and the next
 * index in ahead of the loop (server/prefault.h). What the loop reads and
 * writes there must be what it would have without them. */
Test(table, rows_created_where_memory_is_faulted_in_ahead_read_back_exactly) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 16, PS_INIT_NORMAL);
    enum { NKEYS = 400000, BATCH = 10000 };
    ps_table *t = new_table(&cfg, NKEYS, 0);
    uint64_t *keys = malloc(NKEYS * sizeof(uint64_t));
    float *values = malloc((size_t)BATCH * 16 * sizeof(float)), *grads = malloc((size_t)BATCH * 16 * sizeof(float));
    for (size_t i = 0; i < NKEYS; i++)
        keys[i] = ps_fid((uint16_t)(i % 7), (const char *)&i, sizeof(i));
    char err[512] = "";
    for (size_t b = 0; b < NKEYS; b += BATCH) {
        cr_assert_eq(ps_table_pull(t, keys + b, BATCH, values, err, sizeof(err)), 0, "%s", err);
        for (size_t i = 0; i < BATCH; i += 97) {
            float w[16];
            ps_optim_init_weights(&cfg, keys[b + i], w);
            cr_assert(!memcmp(values + i * 16, w, sizeof(w)), "key %zu", b + i);
        }
        for (size_t i = 0; i < BATCH; i++)
            grad_of(16, keys[b + i], 0, grads + i * 16);
        uint32_t applied, dropped;
        cr_assert_eq(ps_table_push(t, keys + b, BATCH, grads, &applied, &dropped, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(applied, BATCH);
    }
    ps_table_stats s = stats(t);
    cr_assert_eq(s.rows, NKEYS);
    cr_assert_eq(s.rows_in_memory, NKEYS, "no row was evicted: the tier holds them all");
    for (size_t i = 0; i < NKEYS; i += 101) {
        float state[MAXW], g[16];
        init_state(&cfg, keys[i], state);
        grad_of(16, keys[i], 0, g);
        ps_optim_apply(&cfg.opt, 16, state, g);
        expect_state(t, keys[i], state);
    }
    free(keys);
    free(values);
    free(grads);
    ps_table_free(t);
}

Test(table, zero_init_pulls_zeros) {
    ps_table_config cfg = table_cfg(PS_OPT_ADAGRAD, 4, PS_INIT_ZERO);
    ps_table *t = new_table(&cfg, 64, 0);
    uint64_t keys[3] = {1, 2, UINT64_MAX};
    float values[12];
    memset(values, 0x7f, sizeof(values));
    char err[512] = "";
    cr_assert_eq(ps_table_pull(t, keys, 3, values, err, sizeof(err)), 0, "%s", err);
    for (size_t i = 0; i < 12; i++)
        cr_assert(values[i] == 0 && !signbit(values[i]), "value %zu is %g", i, values[i]);
    float state[8];
    init_state(&cfg, 2, state);
    cr_assert_eq(state[4], 0.1f, "acc starts at initial_accumulator_value");
    /* The pulled row becomes a row from that state at its first push. */
    float g[4] = {0.5f, -0.25f, 1, 0};
    ps_optim_apply(&cfg.opt, 4, state, g);
    cr_assert_eq(push1(t, 2, g), 1);
    expect_state(t, 2, state);
    ps_table_free(t);
}

Test(table, lookup_never_creates) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_NORMAL);
    ps_table *t = new_table(&cfg, 64, 0);
    uint64_t keys[10];
    for (size_t i = 0; i < 10; i++)
        keys[i] = 1000 + i;
    uint8_t found[10];
    float w[40], state[120];
    memset(found, 0xee, sizeof(found));
    memset(w, 0x7f, sizeof(w));
    memset(state, 0x7f, sizeof(state));
    char err[512] = "";
    cr_assert_eq(ps_table_lookup(t, keys, 10, found, w, state, err, sizeof(err)), 0, "%s", err);
    for (size_t i = 0; i < 10; i++)
        cr_assert_eq(found[i], 0);
    for (size_t i = 0; i < 40; i++)
        cr_assert_eq(w[i], 0.0f, "missing rows read as zeros");
    for (size_t i = 0; i < 120; i++)
        cr_assert_eq(state[i], 0.0f);
    ps_table_stats s = stats(t);
    cr_assert_eq(s.rows, 0);
    cr_assert_eq(s.rows_in_memory, 0);
    cr_assert_eq(s.dirty_rows, 0);
    cr_assert_eq(s.looked_up_rows, 10);

    /* Pull every other key: no row either. Push them: lookup finds
     * exactly those, with the weights a pull then reads. */
    uint64_t pulled[5];
    for (size_t i = 0; i < 5; i++)
        pulled[i] = keys[2 * i];
    float pw[20], g[20];
    cr_assert_eq(ps_table_pull(t, pulled, 5, pw, err, sizeof(err)), 0);
    cr_assert_eq(ps_table_lookup(t, keys, 10, found, w, NULL, err, sizeof(err)), 0);
    for (size_t i = 0; i < 10; i++)
        cr_assert_eq(found[i], 0, "key %zu: found after a pull", i);
    for (size_t i = 0; i < 5; i++)
        grad_of(4, pulled[i], 0, g + i * 4);
    uint32_t applied, dropped;
    cr_assert_eq(ps_table_push(t, pulled, 5, g, &applied, &dropped, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_table_pull(t, pulled, 5, pw, err, sizeof(err)), 0);
    cr_assert_eq(ps_table_lookup(t, keys, 10, found, w, NULL, err, sizeof(err)), 0,
                 "ret_state may be NULL");
    for (size_t i = 0; i < 10; i++) {
        cr_assert_eq(found[i], i % 2 == 0, "key %zu", i);
        if (i % 2 == 0)
            cr_assert(!memcmp(w + i * 4, pw + (i / 2) * 4, 4 * sizeof(float)));
        else
            for (size_t j = 0; j < 4; j++)
                cr_assert_eq(w[i * 4 + j], 0.0f);
    }
    cr_assert_eq(stats(t).rows, 5);

    /* Still true once the rows live only in RocksDB. */
    flush(t);
    ps_table_free(t);
    t = new_table(&cfg, 64, 5);
    cr_assert_eq(ps_table_lookup(t, keys, 10, found, w, NULL, err, sizeof(err)), 0);
    for (size_t i = 0; i < 10; i++)
        cr_assert_eq(found[i], i % 2 == 0, "key %zu after reload", i);
    cr_assert_eq(stats(t).rows, 5);
    cr_assert_eq(stats(t).dirty_rows, 0, "lookup dirtied nothing");
    ps_table_free(t);
}

/* ---- push ------------------------------------------------------------------------------ */

typedef struct optim_case {
    ps_optimizer_kind kind;
    bool rowwise;
    ps_init_kind init;
} optim_case;

ParameterizedTestParameters(table, push_is_one_step_per_occurrence) {
    static optim_case cases[] = {
        {PS_OPT_FTRL, false, PS_INIT_NORMAL},
        {PS_OPT_FTRL, false, PS_INIT_ZERO},
        {PS_OPT_FTRL_GROUP_LASSO, false, PS_INIT_NORMAL},
        {PS_OPT_ADAGRAD, false, PS_INIT_NORMAL},
        {PS_OPT_ADAGRAD, true, PS_INIT_ZERO},
    };
    return cr_make_param_array(optim_case, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(optim_case *c, table, push_is_one_step_per_occurrence) {
    ps_table_config cfg = table_cfg(c->kind, 8, c->init);
    cfg.opt.rowwise = c->rowwise;
    ps_table *t = new_table(&cfg, 256, 0);
    uint32_t width = ps_table_state_width(t);
    cr_assert_eq(width, ps_optim_state_width(&cfg.opt, 8));

    /* Keys 1..6; key 1 is pulled first (so it exists), the others are
     * created by the push. Key 2 appears three times, key 3 twice. */
    float w[8];
    char err[512] = "";
    uint64_t one = 1;
    cr_assert_eq(ps_table_pull(t, &one, 1, w, err, sizeof(err)), 0);

    float model[7][MAXW];
    for (uint64_t k = 1; k <= 6; k++)
        init_state(&cfg, k, model[k]);

    for (uint32_t round = 0; round < 3; round++) {
        const uint64_t keys[] = {2, 1, 3, 2, 4, 2, 3, 5 + (round % 2)};
        const size_t n = sizeof(keys) / sizeof(keys[0]);
        float grads[8 * 8];
        for (size_t i = 0; i < n; i++) {
            grad_of(8, keys[i], (uint32_t)(round * 10 + i), grads + i * 8);
            cr_assert_eq(ps_optim_apply(&cfg.opt, 8, model[keys[i]], grads + i * 8), 0);
        }
        uint32_t applied = 99, dropped = 99;
        cr_assert_eq(ps_table_push(t, keys, n, grads, &applied, &dropped, err, sizeof(err)), 0,
                     "%s", err);
        cr_assert_eq(applied, n);
        cr_assert_eq(dropped, 0);
        for (uint64_t k = 1; k <= 6; k++) {
            if (k == 6 && round == 0)
                continue;
            expect_state(t, k, model[k]);
        }
        /* The same must hold after a write-back and reload from RocksDB. */
        if (round == 1) {
            flush(t);
            uint64_t persisted = ps_table_persisted_rows(t);
            ps_table_free(t);
            t = new_table(&cfg, 256, persisted);
        }
    }
    ps_table_stats s = stats(t);
    cr_assert_eq(s.rows, 6);
    ps_table_free(t);
}

Test(table, nonfinite_rows_are_dropped_and_not_created) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_NORMAL);
    ps_table *t = new_table(&cfg, 64, 0);
    char err[512] = "";
    float w[4];
    uint64_t existing = 7;
    float g7[4];
    grad_of(4, existing, 100, g7);
    cr_assert_eq(push1(t, existing, g7), 1);

    float model_a[12], model_7[12], before_7[12];
    init_state(&cfg, 10, model_a);
    init_state(&cfg, 7, model_7);
    ps_optim_apply(&cfg.opt, 4, model_7, g7);
    memcpy(before_7, model_7, sizeof(before_7));

    /* a: finite; b: NaN; c: +Inf in its last element; 7: -Inf (exists);
     * a again: NaN in one occurrence, finite in another. */
    const uint64_t keys[] = {10, 11, 12, 7, 10, 10};
    float grads[6 * 4];
    for (size_t i = 0; i < 6; i++)
        grad_of(4, keys[i], (uint32_t)i, grads + i * 4);
    grads[1 * 4 + 0] = NAN;
    grads[2 * 4 + 3] = INFINITY;
    grads[3 * 4 + 1] = -INFINITY;
    grads[4 * 4 + 2] = NAN;
    ps_optim_apply(&cfg.opt, 4, model_a, grads + 0 * 4);
    ps_optim_apply(&cfg.opt, 4, model_a, grads + 5 * 4);

    uint32_t applied = 0, dropped = 0;
    cr_assert_eq(ps_table_push(t, keys, 6, grads, &applied, &dropped, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(applied, 2);
    cr_assert_eq(dropped, 4);
    expect_state(t, 10, model_a);
    expect_state(t, 7, before_7);
    uint8_t found;
    float state[12];
    lookup_state(t, 11, &found, w, state);
    cr_assert_eq(found, 0, "a row whose only gradient was NaN must not be created");
    lookup_state(t, 12, &found, w, state);
    cr_assert_eq(found, 0);
    ps_table_stats s = stats(t);
    cr_assert_eq(s.rows, 2);
    cr_assert_eq(s.dropped_nonfinite, 4);
    cr_assert_eq(s.pushed_rows, 3, "key 7's first push, then key 10's two");
    ps_table_free(t);
}

/* ---- bounded memory -------------------------------------------------------------------- */

Test(table, small_tier_round_trips_many_rows_through_rocksdb) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_NORMAL);
    ps_table *t = new_table(&cfg, 16, 0);
    cr_assert_eq(stats(t).capacity, 16);
    enum { NKEYS = 1000, BATCH = 8 };
    static float model[NKEYS][12];
    static uint32_t steps[NKEYS];
    static bool created[NKEYS];
    uint64_t key_of[NKEYS];
    for (size_t i = 0; i < NKEYS; i++)
        key_of[i] = ps_fid((uint16_t)(i % 5), (const char *)&i, sizeof(i));

    char err[512] = "";
    size_t next_new = 0;
    uint64_t rng = 88172645463325252ull;
    for (int req = 0; next_new < NKEYS; req++) {
        /* Half new keys, half keys seen before (most of them evicted by
         * now, so they come back from RocksDB). */
        uint64_t keys[BATCH];
        size_t idx[BATCH];
        for (size_t b = 0; b < BATCH; b++) {
            size_t i;
            if (b % 2 == 0 || next_new == 0) {
                i = next_new < NKEYS ? next_new++ : 0;
            } else {
                rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                i = rng % next_new;
            }
            idx[b] = i;
            keys[b] = key_of[i];
        }
        if (req % 3 == 0) {
            /* A pull first: creates the new rows (or loads old ones). */
            float w[BATCH * 4];
            cr_assert_eq(ps_table_pull(t, keys, BATCH, w, err, sizeof(err)), 0, "req %d: %s", req,
                         err);
            for (size_t b = 0; b < BATCH; b++) {
                size_t i = idx[b];
                if (!created[i]) {
                    init_state(&cfg, key_of[i], model[i]);
                    created[i] = true;
                }
                cr_assert(!memcmp(w + b * 4, model[i], 4 * sizeof(float)),
                          "req %d: pulled weights of key %zu differ", req, i);
            }
        }
        float grads[BATCH * 4];
        for (size_t b = 0; b < BATCH; b++) {
            size_t i = idx[b];
            if (!created[i]) {
                init_state(&cfg, key_of[i], model[i]);
                created[i] = true;
            }
            grad_of(4, key_of[i], steps[i]++, grads + b * 4);
            ps_optim_apply(&cfg.opt, 4, model[i], grads + b * 4);
        }
        uint32_t applied, dropped;
        cr_assert_eq(ps_table_push(t, keys, BATCH, grads, &applied, &dropped, err, sizeof(err)), 0,
                     "req %d: %s", req, err);
        cr_assert_eq(applied, BATCH);
        ps_table_stats s = stats(t);
        cr_assert_leq(s.rows_in_memory, 16);
        cr_assert_eq(s.dirty_rows, ps_table_dirty_count(t));
        /* Write back after every request: a request's rows are at most 8
         * and all dirty, so 16 slots always hold them. */
        flush(t);
        cr_assert_eq(stats(t).dirty_rows, 0);
    }
    ps_table_stats s = stats(t);
    cr_assert_eq(s.rows, NKEYS);
    cr_assert_eq(ps_table_persisted_rows(t), NKEYS);
    cr_assert_gt(s.evictions, NKEYS - 16);
    cr_assert_gt(s.memory_misses, NKEYS);

    /* Every row reads back exactly, 16 at a time (a request pins its rows,
     * so it may touch at most `capacity` rows not in memory). */
    for (size_t i = 0; i < NKEYS; i += 16) {
        uint64_t keys[16];
        uint8_t found[16];
        float w[16 * 4], state[16 * 12];
        size_t n = NKEYS - i < 16 ? NKEYS - i : 16;
        memcpy(keys, key_of + i, n * sizeof(uint64_t));
        cr_assert_eq(ps_table_lookup(t, keys, n, found, w, state, err, sizeof(err)), 0, "%s", err);
        for (size_t k = 0; k < n; k++) {
            cr_assert_eq(found[k], 1, "key %zu lost", i + k);
            cr_assert(!memcmp(state + k * 12, model[i + k], sizeof(model[0])),
                      "key %zu: state differs after eviction", i + k);
        }
    }
    /* And from a fresh table over the same store (a restart). */
    ps_table_free(t);
    t = new_table(&cfg, 16, NKEYS);
    for (size_t i = 0; i < NKEYS; i += 97)
        expect_state(t, key_of[i], model[i]);
    cr_assert_eq(stats(t).rows, NKEYS);
    ps_table_free(t);
}

/* Fill a capacity-16 table with 16 dirty rows (keys 1..16). */
static ps_table *full_of_dirty_rows(const ps_table_config *cfg) {
    ps_table *t = new_table(cfg, 16, 0);
    uint64_t keys[16];
    float grads[16 * 4];
    for (size_t i = 0; i < 16; i++) {
        keys[i] = i + 1;
        grad_of(4, keys[i], 0, grads + i * 4);
    }
    uint32_t applied, dropped;
    char err[512] = "";
    cr_assert_eq(ps_table_push(t, keys, 16, grads, &applied, &dropped, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(stats(t).dirty_rows, 16);
    return t;
}

/* Snapshot of everything a client can observe of keys 1..40. */
typedef struct observed {
    uint8_t found[40];
    float state[40 * 12];
    ps_table_stats s;
} observed;

static void observe(ps_table *t, observed *o) {
    memset(o, 0, sizeof(*o));
    /* Lookups of rows in memory, or absent from memory and store, need no
     * free slot: safe on a full tier. */
    for (size_t i = 0; i < 40; i++) {
        float w[4];
        char err[512] = "";
        uint64_t key = i + 1;
        int r = ps_table_lookup(t, &key, 1, &o->found[i], w, o->state + i * 12, err, sizeof(err));
        cr_assert_eq(r, 0, "lookup of key %zu failed (rows left pinned or dirty?): %s", i + 1, err);
    }
    ps_table_stats_get(t, &o->s);
    o->s.looked_up_rows = 0; /* the observation itself */
}

static void expect_unchanged(const observed *a, const observed *b) {
    cr_assert(!memcmp(a->found, b->found, sizeof(a->found)), "the failed request created rows");
    cr_assert(!memcmp(a->state, b->state, sizeof(a->state)), "the failed request changed rows");
    cr_assert_eq(a->s.rows, b->s.rows);
    cr_assert_eq(a->s.dirty_rows, b->s.dirty_rows);
    cr_assert_eq(a->s.rows_in_memory, b->s.rows_in_memory);
}

Test(table, dirty_rows_are_never_evicted) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_ZERO);
    ps_table *t = full_of_dirty_rows(&cfg);
    observed before, after;
    observe(t, &before);

    char err[512] = "";
    uint64_t key = 100;
    float w[4], g[4] = {1, 1, 1, 1};
    uint32_t applied = 0, dropped = 0;
    cr_assert_eq(ps_table_pull(t, &key, 1, w, err, sizeof(err)), PS_ELIMIT);
    cr_assert(strstr(err, "test"), "'%s' should name the table", err);
    err[0] = '\0';
    cr_assert_eq(ps_table_push(t, &key, 1, g, &applied, &dropped, err, sizeof(err)), PS_ELIMIT);
    cr_assert_neq(err[0], '\0', "an error without a message");
    observe(t, &after);
    expect_unchanged(&before, &after);

    /* A push to rows already in memory needs no room and still works. */
    uint64_t k3 = 3;
    cr_assert_eq(ps_table_push(t, &k3, 1, g, &applied, &dropped, err, sizeof(err)), 0, "%s", err);

    /* Once written back, they can go. */
    flush(t);
    cr_assert_eq(ps_table_pull(t, &key, 1, w, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(stats(t).rows, 16, "the pull created no row");
    cr_assert_eq(stats(t).evictions, 1, "one clean row made room for the pulled key");
    cr_assert_eq(push1(t, key, g), 1);
    cr_assert_eq(stats(t).rows, 17);
    ps_table_free(t);
}

/* Regression: resolve() used to create rows one by one and return PS_ELIMIT
 * at the first slot it could not get, leaving the rows it had already
 * created (dirty, init state, visible to Lookup, written back by the next
 * flush). A request now takes every slot it needs before creating a row. */
Test(table, failed_push_changes_nothing_when_some_rows_fit) {
    /* 10 dirty rows, 6 clean ones: a push of 10 new keys gets 6 slots and
     * then fails. The rows it created for the first 6 must not survive the
     * failure (the push is all-or-nothing). */
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_ZERO);
    ps_table *t = full_of_dirty_rows(&cfg);
    flush(t);
    uint64_t dirty_keys[10];
    float g[10 * 4];
    for (size_t i = 0; i < 10; i++) {
        dirty_keys[i] = i + 1;
        grad_of(4, i + 1, 1, g + i * 4);
    }
    uint32_t applied, dropped;
    char err[512] = "";
    cr_assert_eq(ps_table_push(t, dirty_keys, 10, g, &applied, &dropped, err, sizeof(err)), 0);
    observed before, after;
    observe(t, &before);

    uint64_t fresh[10];
    for (size_t i = 0; i < 10; i++)
        fresh[i] = 21 + i;
    cr_assert_eq(ps_table_push(t, fresh, 10, g, &applied, &dropped, err, sizeof(err)), PS_ELIMIT);
    observe(t, &after);
    expect_unchanged(&before, &after);
    ps_table_free(t);
}

Test(table, request_larger_than_the_tier_fails_and_changes_nothing) {
    /* Same bug: 16 of the 17 new rows are created before the 17th fails. */
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_ZERO);
    ps_table *t = new_table(&cfg, 16, 0);
    observed before, after;
    observe(t, &before);
    uint64_t keys[17];
    float w[17 * 4];
    for (size_t i = 0; i < 17; i++)
        keys[i] = i + 1;
    char err[512] = "";
    cr_assert_eq(ps_table_pull(t, keys, 17, w, err, sizeof(err)), PS_ELIMIT);
    observe(t, &after);
    expect_unchanged(&before, &after);
    ps_table_free(t);
}

/* make_room callback: write back everything, as the shard does. */
typedef struct room_ctx {
    ps_table *t;
    int calls;
    int fail;
} room_ctx;

static int make_room(void *ctx) {
    room_ctx *rc = ctx;
    rc->calls++;
    if (rc->fail)
        return PS_ESTORE;
    flush(rc->t);
    return 0;
}

Test(table, make_room_flushes_so_requests_proceed) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_ZERO);
    ps_table *t = full_of_dirty_rows(&cfg);
    room_ctx rc = {.t = t};
    ps_table_set_make_room(t, make_room, &rc);

    float model[12];
    init_state(&cfg, 100, model);
    float g[4] = {0.5f, -0.5f, 0.25f, 1};
    ps_optim_apply(&cfg.opt, 4, model, g);
    uint64_t key = 100;
    uint32_t applied, dropped;
    char err[512] = "";
    cr_assert_eq(ps_table_push(t, &key, 1, g, &applied, &dropped, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(rc.calls, 1);
    cr_assert_eq(applied, 1);
    expect_state(t, 100, model);
    cr_assert_eq(stats(t).rows, 17);

    /* The flushed rows read back from RocksDB (one of them was evicted). */
    for (uint64_t k = 1; k <= 16; k++) {
        float st[12];
        float gk[4];
        init_state(&cfg, k, st);
        grad_of(4, k, 0, gk);
        ps_optim_apply(&cfg.opt, 4, st, gk);
        expect_state(t, k, st);
    }

    /* A make_room that cannot flush leaves the request failing cleanly. */
    ps_table_free(t);
    t = full_of_dirty_rows(&cfg);
    rc = (room_ctx){.t = t, .fail = 1};
    ps_table_set_make_room(t, make_room, &rc);
    observed before, after;
    observe(t, &before);
    cr_assert_eq(ps_table_push(t, &key, 1, g, &applied, &dropped, err, sizeof(err)), PS_ELIMIT);
    cr_assert_geq(rc.calls, 1);
    observe(t, &after);
    expect_unchanged(&before, &after);
    ps_table_free(t);
}

/* ---- export ---------------------------------------------------------------------------- */

typedef struct exported {
    size_t n;
    uint64_t keys[256];
    float state[256][12];
} exported;

static void on_row(void *ctx, uint64_t key, const float *state) {
    exported *e = ctx;
    cr_assert_lt(e->n, 256);
    e->keys[e->n] = key;
    memcpy(e->state[e->n], state, sizeof(e->state[0]));
    e->n++;
}

static int store_order(uint64_t a, uint64_t b) {
    ps_store_key ka, kb;
    ps_store_key_encode((uint16_t)ps_bucket(a, NBUCKETS), a, &ka);
    ps_store_key_encode((uint16_t)ps_bucket(b, NBUCKETS), b, &kb);
    return memcmp(ka.b, kb.b, PS_STORE_KEY_LEN);
}

Test(table, export_walks_store_order_with_memory_overriding) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_NORMAL);
    ps_table *t = new_table(&cfg, 256, 0);
    enum { N = 60 };
    uint64_t keys[N];
    float grads[N * 4];
    for (size_t i = 0; i < N; i++) {
        keys[i] = ps_fid(1, (const char *)&i, sizeof(i));
        grad_of(4, keys[i], 0, grads + i * 4);
    }
    uint32_t applied, dropped;
    char err[512] = "";
    cr_assert_eq(ps_table_push(t, keys, N, grads, &applied, &dropped, err, sizeof(err)), 0);
    flush(t);
    /* Change the first 10 rows again without writing them back, and create
     * one row that only memory holds. */
    cr_assert_eq(ps_table_push(t, keys, 10, grads, &applied, &dropped, err, sizeof(err)), 0);
    uint64_t mem_only = 424242;
    float w[4];
    cr_assert_eq(push1(t, mem_only, grads), 1);

    exported all = {0};
    ps_store_key last;
    size_t count = 0;
    bool done = false;
    cr_assert_eq(ps_table_export(t, NULL, 1000, on_row, &all, &last, &count, &done), 0);
    cr_assert_eq(count, N);
    cr_assert_eq(all.n, N);
    cr_assert(done);
    for (size_t i = 1; i < N; i++)
        cr_assert_lt(store_order(all.keys[i - 1], all.keys[i]), 0, "rows %zu, %zu out of order", i - 1,
                     i);
    for (size_t i = 0; i < N; i++) {
        cr_assert_neq(all.keys[i], mem_only, "rows only in memory are not exported before a flush");
        size_t k = 0;
        while (keys[k] != all.keys[i])
            k++;
        float model[12];
        init_state(&cfg, keys[k], model);
        ps_optim_apply(&cfg.opt, 4, model, grads + k * 4);
        if (k < 10)
            ps_optim_apply(&cfg.opt, 4, model, grads + k * 4);
        cr_assert(!memcmp(all.state[i], model, sizeof(model)),
                  "exported key %zu is not its current state%s", k,
                  k < 10 ? " (the stored copy instead of memory's?)" : "");
    }

    /* Paging with `after` yields the same rows, each once. */
    exported paged = {0};
    const ps_store_key *after = NULL;
    ps_store_key cursor;
    int pages = 0;
    do {
        cr_assert_eq(ps_table_export(t, after, 7, on_row, &paged, &cursor, &count, &done), 0);
        cr_assert_leq(count, 7);
        after = &cursor;
        pages++;
        cr_assert_lt(pages, 100);
    } while (!done);
    cr_assert_eq(paged.n, N);
    cr_assert(!memcmp(paged.keys, all.keys, sizeof(uint64_t) * N));
    cr_assert(!memcmp(paged.state, all.state, sizeof(float) * 12 * N));

    /* After a flush the memory-only row is exported too; a key only
     * pulled is no row, and never exported. */
    uint64_t pulled_only = 434343;
    cr_assert_eq(ps_table_pull(t, &pulled_only, 1, w, err, sizeof(err)), 0);
    flush(t);
    exported again = {0};
    cr_assert_eq(ps_table_export(t, NULL, 1000, on_row, &again, &last, &count, &done), 0);
    cr_assert_eq(again.n, N + 1);
    for (size_t i = 0; i < again.n; i++)
        cr_assert_neq(again.keys[i], pulled_only, "a key only pulled was exported");
    ps_table_free(t);
}

/* ---- write-back bookkeeping ---------------------------------------------------------------- */

Test(table, collect_and_committed_track_dirty_rows) {
    ps_table_config cfg = table_cfg(PS_OPT_ADAGRAD, 4, PS_INIT_ZERO);
    ps_table *t = new_table(&cfg, 64, 5);
    cr_assert_eq(stats(t).rows, 5, "rows the store already holds count");
    uint64_t keys[3] = {1, 2, 3};
    float g[12] = {1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4};
    uint32_t applied, dropped;
    char err[512] = "";
    cr_assert_eq(ps_table_push(t, keys, 3, g, &applied, &dropped, err, sizeof(err)), 0);
    cr_assert_eq(ps_table_dirty_count(t), 3);
    cr_assert_eq(stats(t).rows, 8);

    ps_store_batch *b = ps_store_batch_new();
    uint32_t gen1;
    cr_assert_eq(ps_table_collect(t, b, &gen1), 3);
    cr_assert_eq(ps_table_dirty_count(t), 0, "collected rows leave the dirty list");
    cr_assert_eq(stats(t).dirty_rows, 3, "...but stay dirty until committed");
    cr_assert_eq(ps_table_persisted_rows(t), 8);

    /* A row changed while its batch is in flight is collected again. */
    cr_assert_eq(ps_table_push(t, keys, 1, g, &applied, &dropped, err, sizeof(err)), 0);
    cr_assert_eq(stats(t).dirty_rows, 3, "key 1 moved to the current generation, not counted twice");
    ps_store_batch *b2 = ps_store_batch_new();
    uint32_t gen2;
    cr_assert_eq(ps_table_collect(t, b2, &gen2), 1);
    cr_assert_eq(stats(t).dirty_rows, 3, "two batches in flight: 2 rows and 1 row");
    cr_assert_gt(gen2, gen1);
    cr_assert_eq(ps_store_write(store, b, err, sizeof(err)), 0);
    ps_table_committed(t, gen1);
    cr_assert_eq(stats(t).dirty_rows, 1, "key 1 awaits the second batch");
    cr_assert_eq(ps_store_write(store, b2, err, sizeof(err)), 0);
    ps_table_committed(t, gen2);
    cr_assert_eq(stats(t).dirty_rows, 0);
    ps_store_batch *b3 = ps_store_batch_new();
    uint32_t gen3;
    cr_assert_eq(ps_table_collect(t, b3, &gen3), 0);
    cr_assert_eq(ps_store_batch_count(b3), 0);
    ps_store_batch_free(b);
    ps_store_batch_free(b2);
    ps_store_batch_free(b3);
    cr_assert_eq(stats(t).rows, 8, "rewriting a row does not count it twice");
    ps_table_free(t);
}

/* The shard's write-back: one dump reused, its copy of the rows given back
 * once they are in the batch (beside entries the batch held already), and
 * every dirty row reaching the store, write-back after write-back. */
Test(table, dump_put_writes_every_dirty_row_and_frees_the_copy) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 16, PS_INIT_NORMAL);
    ps_table *t = new_table(&cfg, 1024, 0);
    enum { N = 300 };
    uint64_t keys[N];
    float g[N * 16];
    for (uint64_t i = 0; i < N; i++) {
        keys[i] = i * 2654435761u + 7;
        grad_of(16, keys[i], 0, g + i * 16);
    }
    ps_table_dump d = {0};
    char err[512] = "";
    for (uint32_t round = 0; round < 2; round++) {
        size_t n = round == 0 ? N : N / 2; /* the second round dirties half */
        uint32_t applied, dropped, gen;
        cr_assert_eq(ps_table_push(t, keys, n, g, &applied, &dropped, err, sizeof(err)), 0, "%s", err);
        ps_store_batch *b = ps_store_batch_new();
        ps_store_batch_put(b, store, 0, "other", 5, "x", 1);
        cr_assert_eq(ps_table_dump_dirty(t, &d, &gen), n);
        ps_table_dump_put(&d, b);
        cr_assert_null(d.recs, "the rows' copy is given back once in the batch");
        cr_assert_eq(d.n, n, "...and the count stays for the caller");
        cr_assert_eq(ps_store_batch_count(b), n + 1);
        cr_assert_eq(ps_store_write(store, b, err, sizeof(err)), 0, "%s", err);
        ps_store_batch_free(b);
        ps_table_committed(t, gen);
    }
    ps_table_dump_deinit(&d);
    cr_assert_eq(stats(t).dirty_rows, 0);

    /* A table with nothing in memory reads every row back from the store. */
    ps_table *fresh = new_table(&cfg, 1024, N);
    for (size_t i = 0; i < N; i++) {
        uint8_t found = 0;
        float w[16], state[MAXW];
        lookup_state(t, keys[i], &found, w, state);
        cr_assert_eq(found, 1);
        expect_state(fresh, keys[i], state);
    }
    ps_table_free(fresh);
    ps_table_free(t);
}

static size_t resident_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    cr_assert_not_null(f);
    cr_assert_eq(fscanf(f, "%lu %lu", &size, &resident), 2);
    fclose(f);
    return resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* dump_prepare() (the write-back thread's, after a batch is written) makes
 * the next dump's room resident, for the rows dirty by then with a quarter
 * over, so that the loop thread's dump_dirty() takes no page fault. */
Test(table, dump_prepare_faults_the_next_dumps_room_in) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 16, PS_INIT_NORMAL);
    /* Room above glibc's largest mmap threshold (32 MiB): fresh pages,
     * which a calloc() would leave untouched. */
    enum { N = 160000 };
    ps_table *t = new_table(&cfg, N, 0);
    uint64_t *keys = malloc(N * sizeof(uint64_t));
    float *g = malloc((size_t)N * 16 * sizeof(float));
    cr_assert(keys && g);
    for (uint64_t i = 0; i < N; i++) {
        keys[i] = i * 2654435761u + 7;
        grad_of(16, keys[i], 0, g + i * 16);
    }
    char err[512] = "";
    uint32_t applied, dropped, gen;
    cr_assert_eq(ps_table_push(t, keys, N / 2, g, &applied, &dropped, err, sizeof(err)), 0, "%s", err);
    ps_table_dump d = {0};
    cr_assert_eq(ps_table_dump_dirty(t, &d, &gen), N / 2);
    ps_store_batch *b = ps_store_batch_new();
    ps_table_dump_put(&d, b);
    ps_store_batch_free(b);
    ps_table_committed(t, gen);
    /* More rows dirty now than the last dump held. */
    cr_assert_eq(ps_table_push(t, keys, N, g, &applied, &dropped, err, sizeof(err)), 0, "%s", err);
    size_t before = resident_bytes();
    ps_table_dump_prepare(t, &d);
    size_t grew = resident_bytes() - before;
    cr_assert_geq(d.cap, N + N / 4);
    cr_assert_geq(grew, d.cap * d.rec_size * 9 / 10, "%zu bytes resident of %zu prepared", grew,
                  d.cap * d.rec_size);
    char *room = d.recs;
    cr_assert_eq(ps_table_dump_dirty(t, &d, &gen), N);
    cr_assert_eq(d.recs, room, "the dump used the prepared room");
    ps_table_dump_deinit(&d);
    free(keys);
    free(g);
    ps_table_free(t);
}

Test(table, row_bytes_and_accessors) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 16, PS_INIT_ZERO);
    ps_table *t = new_table(&cfg, 100, 0);
    cr_assert_eq(ps_table_dim(t), 16);
    cr_assert_eq(ps_table_state_width(t), 48);
    cr_assert_eq(ps_table_cf(t), 0);
    cr_assert_eq(ps_table_config_of(t), &cfg);
    cr_assert_geq(ps_table_row_bytes(&cfg), 48 * sizeof(float), "a row holds at least its state");
    cr_assert_eq(stats(t).capacity, 100);
    ps_table_free(t);
}

/* ---- feature lifecycle: admission ------------------------------------------------------- */

Test(table, unadmitted_keys_read_as_the_init_rule_and_store_nothing) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_NORMAL);
    cfg.admit_after = 3;
    ps_table *t = new_table(&cfg, 64, 0);
    uint64_t key = ps_fid(7, "new", 3);
    char err[512] = "";

    /* A pull neither creates the row nor counts as an occurrence. */
    float w[4], init[12];
    init_state(&cfg, key, init);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(ps_table_pull(t, &key, 1, w, err, sizeof(err)), 0, "%s", err);
        cr_assert(!memcmp(w, init, sizeof(w)), "an unknown key must read as the init rule");
    }
    cr_assert(!found1(t, key));
    cr_assert_eq(stats(t).rows, 0);

    /* Pushes 1 and 2 are rejected: nothing applied, nothing stored. */
    float g[3][4];
    for (int p = 0; p < 3; p++)
        grad_of(4, key, (uint32_t)p, g[p]);
    cr_assert_eq(push1(t, key, g[0]), 0);
    cr_assert_eq(push1(t, key, g[1]), 0);
    cr_assert(!found1(t, key));
    ps_table_stats s = stats(t);
    cr_assert_eq(s.rejected, 2);
    cr_assert_eq(s.admitted, 0);
    cr_assert_eq(s.rows, 0);
    cr_assert_eq(s.dirty_rows, 0);
    cr_assert_eq(flush(t), 0, "a rejected key has nothing to write back");

    /* Push 3 creates the row from the init rule and applies only itself. */
    cr_assert_eq(push1(t, key, g[2]), 1);
    float want[12];
    memcpy(want, init, sizeof(want));
    ps_optim_apply(&cfg.opt, 4, want, g[2]);
    expect_state(t, key, want);
    s = stats(t);
    cr_assert_eq(s.admitted, 1);
    cr_assert_eq(s.rejected, 2);
    cr_assert_eq(s.rows, 1);
    cr_assert_eq(s.pushed_rows, 1);
    /* Once in the table, every push applies. */
    cr_assert_eq(push1(t, key, g[0]), 1);
    ps_optim_apply(&cfg.opt, 4, want, g[0]);
    expect_state(t, key, want);
    ps_table_free(t);
}

Test(table, admission_decides_per_occurrence_within_a_push) {
    ps_table_config cfg = table_cfg(PS_OPT_ADAGRAD, 1, PS_INIT_ZERO);
    cfg.admit_after = 2;
    ps_table *t = new_table(&cfg, 64, 0);
    /* Key a three times, key b once: a's first push is rejected, its second
     * admits it and its third updates the new row; b is rejected. */
    uint64_t keys[4] = {11, 22, 11, 11};
    float g[4] = {0.5f, 0.25f, -1.0f, 2.0f};
    uint32_t applied, dropped;
    char err[512] = "";
    cr_assert_eq(ps_table_push(t, keys, 4, g, &applied, &dropped, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(applied, 2);
    cr_assert_eq(dropped, 0);
    cr_assert_eq(stats(t).rejected, 2);
    float want[2];
    init_state(&cfg, 11, want);
    ps_optim_apply(&cfg.opt, 1, want, &g[2]);
    ps_optim_apply(&cfg.opt, 1, want, &g[3]);
    expect_state(t, 11, want);
    cr_assert(!found1(t, 22));
    ps_table_free(t);
}

Test(table, a_push_that_cannot_get_room_takes_no_admission_decision) {
    /* 16 rows of memory, all dirty: a push of 20 keys that admission lets
     * in fails whole, and must leave the filter as it was: the same keys
     * pushed later count from zero. */
    ps_table_config cfg = table_cfg(PS_OPT_ADAGRAD, 1, PS_INIT_ZERO);
    cfg.admit_after = 2;
    ps_table *t = new_table(&cfg, 16, 0);
    uint64_t hot[16];
    float g[20];
    for (int i = 0; i < 20; i++)
        g[i] = 0.5f;
    for (int i = 0; i < 16; i++)
        hot[i] = 5000 + (uint64_t)i;
    uint32_t applied, dropped;
    char err[512] = "";
    for (int k = 0; k < 2; k++)
        cr_assert_eq(ps_table_push(t, hot, 16, g, &applied, &dropped, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(stats(t).rows, 16);
    uint64_t fresh[20];
    for (int i = 0; i < 20; i++)
        fresh[i] = 9000 + (uint64_t)(i / 2); /* each key twice: admitted by its second */
    cr_assert_eq(ps_table_push(t, fresh, 20, g, &applied, &dropped, err, sizeof(err)), PS_ELIMIT);
    flush(t);
    /* Now there is room; had the failed push counted, these would be let
     * in on their first occurrence. */
    for (int i = 0; i < 10; i++)
        cr_assert_eq(push1(t, 9000 + (uint64_t)i, g), 0, "key %d was counted by the failed push", i);
    ps_table_free(t);
}

/* ---- feature lifecycle: expiry ----------------------------------------------------------- */

#define T0 2000000000u           /* the table clock where expiry tests start */

Test(table, expired_keys_read_as_new) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_NORMAL);
    cfg.ttl_s = 100;
    ps_table *t = new_table(&cfg, 64, 0);
    ps_table_set_clock(t, T0);
    uint64_t key = ps_fid(2, "old", 3);
    float g[4], init[12], want[12];
    grad_of(4, key, 0, g);
    init_state(&cfg, key, init);
    cr_assert_eq(push1(t, key, g), 1);
    memcpy(want, init, sizeof(want));
    ps_optim_apply(&cfg.opt, 4, want, g);

    /* Pulls do not keep a row alive: only pushes do. */
    char err[512] = "";
    float w[4];
    ps_table_set_clock(t, T0 + 99);
    cr_assert_eq(ps_table_pull(t, &key, 1, w, err, sizeof(err)), 0);
    cr_assert(!memcmp(w, want, sizeof(w)));
    expect_state(t, key, want);
    cr_assert_eq(stats(t).rows, 1);

    ps_table_set_clock(t, T0 + 100);
    cr_assert(!found1(t, key), "a row not pushed for ttl_s must be gone");
    ps_table_stats s = stats(t);
    cr_assert_eq(s.rows, 0);
    cr_assert_eq(s.expired, 1);

    /* Pull reads the init rule, creating no row (nor reviving the dead
     * one); a push starts from the init rule, not from the old state. */
    cr_assert_eq(ps_table_pull(t, &key, 1, w, err, sizeof(err)), 0);
    cr_assert(!memcmp(w, init, sizeof(w)), "an expired key must read as new");
    cr_assert(!found1(t, key), "a pull revived an expired row");
    cr_assert_eq(stats(t).rows, 0);
    grad_of(4, key, 1, g);
    cr_assert_eq(push1(t, key, g), 1);
    memcpy(want, init, sizeof(want));
    ps_optim_apply(&cfg.opt, 4, want, g);
    expect_state(t, key, want);
    cr_assert_eq(stats(t).rows, 1);
    ps_table_free(t);
}

/* A dead row's key twice in one push, under admission: once an occurrence
 * is admitted, the row it brought back from the init rule takes every
 * later occurrence without asking again (push() reads whether each row is
 * live once, before the decisions: a later occurrence must see an earlier
 * one's rebirth). So a key applied once in the push was refused the first
 * time and admitted the second: its state is the init rule plus the
 * second gradient, never the first. */
Test(table, a_dead_key_twice_in_one_push_is_admitted_once_and_updated_after) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_NORMAL);
    cfg.ttl_s = 100;
    cfg.admit_probability = 0.5;
    ps_table *t = new_table(&cfg, 1024, 0);
    ps_table_set_clock(t, T0);
    enum { NKEYS = 200 };
    float g[8], init[12], want[12];
    for (uint32_t k = 0; k < NKEYS; k++) {
        uint64_t key = ps_fid(2, "twice", 5) + k;
        grad_of(4, key, 0, g);
        int tries = 0;
        while (push1(t, key, g) == 0)
            cr_assert_lt(++tries, 200, "key %u never admitted", k);
    }
    ps_table_set_clock(t, T0 + 100);
    int both = 0, second = 0;
    for (uint32_t k = 0; k < NKEYS; k++) {
        uint64_t key = ps_fid(2, "twice", 5) + k;
        cr_assert(!found1(t, key), "the row must be dead");
        uint64_t keys[2] = {key, key};
        grad_of(4, key, 1, g);
        grad_of(4, key, 2, g + 4);
        uint32_t applied = 0, dropped = 0;
        char err[512] = "";
        cr_assert_eq(ps_table_push(t, keys, 2, g, &applied, &dropped, err, sizeof(err)), 0, "%s",
                     err);
        init_state(&cfg, key, init);
        memcpy(want, init, sizeof(want));
        if (applied == 2) {
            both++;
            ps_optim_apply(&cfg.opt, 4, want, g);
            ps_optim_apply(&cfg.opt, 4, want, g + 4);
        } else if (applied == 1) {
            second++;
            ps_optim_apply(&cfg.opt, 4, want, g + 4);
        } else {
            cr_assert(!found1(t, key));
            continue;
        }
        expect_state(t, key, want);
    }
    cr_expect_gt(both, 50);
    cr_expect_gt(second, 10);
    ps_table_free(t);
}

Test(table, expired_rows_in_rocksdb_read_as_new) {
    ps_table_config cfg = table_cfg(PS_OPT_ADAGRAD, 2, PS_INIT_NORMAL);
    cfg.ttl_s = 50;
    cfg.admit_after = 2; /* pulls then create nothing */
    ps_table *t = new_table(&cfg, 64, 0);
    ps_table_set_clock(t, T0);
    uint64_t key = 4242;
    float g[2] = {1, -1};
    cr_assert_eq(push1(t, key, g), 0);
    cr_assert_eq(push1(t, key, g), 1);
    flush(t);
    ps_table_free(t);
    /* A new table: the row is only in RocksDB now. */
    t = new_table(&cfg, 64, 1);
    ps_table_set_clock(t, T0 + 49);
    cr_assert(found1(t, key));
    ps_table_free(t);
    t = new_table(&cfg, 64, 1);
    ps_table_set_clock(t, T0 + 50);
    cr_assert(!found1(t, key), "a stored row past ttl_s must read as absent");
    char err[512] = "";
    float w[2], init[4];
    init_state(&cfg, key, init);
    cr_assert_eq(ps_table_pull(t, &key, 1, w, err, sizeof(err)), 0);
    cr_assert(!memcmp(w, init, sizeof(w)));
    /* And it is a new key to admission too: one push is not enough. */
    cr_assert_eq(push1(t, key, g), 0);
    ps_table_free(t);
}

/* A store whose column family runs the table's compaction filter. */
static void reopen_store_with_filter(const ps_table_config *cfg, void **ret_ctx) {
    ps_store_close(store);
    ps_store_cf_filter f;
    cr_assert_eq(ps_table_store_filter(cfg, &f), 0);
    cr_assert_not_null(f.fn);
    *ret_ctx = f.ctx;
    ps_store_options so = {.filters = &f};
    char err[512] = "";
    cr_assert_eq(ps_store_open(dir, cf_names, 1, &so, &store, err, sizeof(err)), 0, "%s", err);
}

static uint64_t compacted_bytes(void) {
    char err[512] = "";
    cr_assert_eq(ps_store_compact(store, 0, true, err, sizeof(err)), 0, "%s", err);
    return ps_store_cf_size(store, 0);
}

static bool stored(uint64_t key) {
    ps_store_key sk;
    ps_store_key_encode((uint16_t)ps_bucket(key, NBUCKETS), key, &sk);
    char *v = NULL, err[512] = "";
    size_t len;
    cr_assert_eq(ps_store_get(store, 0, sk.b, PS_STORE_KEY_LEN, &v, &len, err, sizeof(err)), 0);
    free(v);
    return v != NULL;
}

Test(table, compaction_drops_rows_expired_at_the_committed_clock) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 8, PS_INIT_ZERO);
    cfg.ttl_s = 1000;
    void *filter_ctx;
    reopen_store_with_filter(&cfg, &filter_ctx);
    ps_table *t = new_table(&cfg, 1 << 15, 0);
    ps_table_set_store_filter(t, filter_ctx);
    enum { N = 20000, BATCH = 500 };
    static uint64_t keys[N];
    static float grads[BATCH * 8];
    for (size_t i = 0; i < N; i++)
        keys[i] = ps_fid(1, (const char *)&i, sizeof(i));
    for (size_t i = 0; i < BATCH * 8; i++)
        grads[i] = 0.125f;
    char err[512] = "";
    uint32_t applied, dropped;
    /* The first half pushed at T0, the second at T0 + 600. */
    for (size_t i = 0; i < N; i += BATCH) {
        ps_table_set_clock(t, i < N / 2 ? T0 : T0 + 600);
        cr_assert_eq(ps_table_push(t, keys + i, BATCH, grads, &applied, &dropped, err, sizeof(err)), 0,
                     "%s", err);
    }
    flush(t);
    uint64_t full = compacted_bytes();
    cr_assert_gt(full, (uint64_t)N * 8 * 3 * 4, "the rows are on disk");

    /* The table's clock passes ttl_s for the first half, but no write-back
     * at that clock was committed: a replayed push could still find those
     * rows alive, so compaction must keep them. */
    ps_table_set_clock(t, T0 + 1500);
    cr_assert_eq(compacted_bytes(), full, "compaction dropped rows before a write-back committed the clock");
    cr_assert(stored(keys[0]));

    /* A committed write-back at that clock: the first half goes. */
    cr_assert_eq(flush(t), 0);
    uint64_t half = compacted_bytes();
    cr_assert_lt(half, full * 6 / 10, "disk did not shrink: %llu -> %llu bytes",
                 (unsigned long long)full, (unsigned long long)half);
    cr_assert_gt(half, full * 4 / 10);
    cr_assert(!stored(keys[0]));
    cr_assert(stored(keys[N - 1]));
    ps_table_stats s = stats(t);
    cr_assert_eq(s.rows, N / 2);
    cr_assert_eq(s.expired, N / 2);
    cr_assert_eq(s.rocksdb_bytes, half);

    /* And everything, once the second half has expired too. */
    ps_table_set_clock(t, T0 + 1600);
    flush(t);
    cr_assert_lt(compacted_bytes(), full / 100);
    cr_assert_eq(stats(t).rows, 0);
    cr_log_info("compaction: %llu -> %llu bytes with half the rows expired",
                (unsigned long long)full, (unsigned long long)half);
    ps_table_free(t);
}

Test(table, sweep_frees_dead_rows_once_no_batch_needs_them) {
    ps_table_config cfg = table_cfg(PS_OPT_ADAGRAD, 1, PS_INIT_ZERO);
    cfg.ttl_s = 10;
    ps_table *t = new_table(&cfg, 256, 0);
    ps_table_set_clock(t, T0);
    float g[100];
    uint64_t keys[100];
    for (int i = 0; i < 100; i++) {
        keys[i] = 70000 + (uint64_t)i;
        g[i] = 1;
    }
    uint32_t applied, dropped;
    char err[512] = "";
    cr_assert_eq(ps_table_push(t, keys, 60, g, &applied, &dropped, err, sizeof(err)), 0);
    flush(t);
    cr_assert_eq(ps_table_push(t, keys + 60, 40, g, &applied, &dropped, err, sizeof(err)), 0);
    cr_assert_eq(stats(t).rows_in_memory, 100);
    cr_assert_eq(ps_table_sweep(t, 1000), 0, "nothing has expired");

    ps_table_set_clock(t, T0 + 10);
    /* 60 clean rows go; 40 expired rows are in the dirty list the next
     * write-back reads, and stay until it was dumped. */
    cr_assert_eq(ps_table_sweep(t, 1000), 60);
    cr_assert_eq(stats(t).rows_in_memory, 40);
    ps_store_batch *b = ps_store_batch_new();
    uint32_t gen;
    ps_table_collect(t, b, &gen);
    cr_assert_eq(ps_table_sweep(t, 1000), 40, "rows of a batch in flight are expired in every version");
    cr_assert_eq(stats(t).dirty_rows, 0);
    cr_assert_eq(ps_store_write(store, b, err, sizeof(err)), 0);
    ps_table_committed(t, gen);
    ps_store_batch_free(b);
    cr_assert_eq(stats(t).rows_in_memory, 0);
    cr_assert_eq(stats(t).rows, 0);
    /* New rows take the freed slots, not untouched ones: the tier's memory
     * follows the live rows, not every row ever created. */
    cr_assert_eq(ps_table_slots_used(t), 100);
    uint64_t fresh[100];
    for (int i = 0; i < 100; i++)
        fresh[i] = 90000 + (uint64_t)i;
    cr_assert_eq(ps_table_push(t, fresh, 100, g, &applied, &dropped, err, sizeof(err)), 0);
    cr_assert_eq(stats(t).rows_in_memory, 100);
    cr_assert_eq(ps_table_slots_used(t), 100, "%llu slots for 100 rows",
                 (unsigned long long)ps_table_slots_used(t));
    for (int i = 0; i < 100; i++) {
        cr_assert(found1(t, fresh[i]));
        cr_assert(!found1(t, keys[i]));
    }
    ps_table_free(t);
}

Test(table, the_clock_hand_takes_dead_rows_before_live_ones) {
    ps_table_config cfg = table_cfg(PS_OPT_ADAGRAD, 1, PS_INIT_ZERO);
    cfg.ttl_s = 100;
    ps_table *t = new_table(&cfg, 16, 0);
    float g[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    uint64_t old[8], live[8], fresh[8];
    for (int i = 0; i < 8; i++) {
        old[i] = 100 + (uint64_t)i;
        live[i] = 200 + (uint64_t)i;
        fresh[i] = 300 + (uint64_t)i;
    }
    uint32_t applied, dropped;
    char err[512] = "";
    ps_table_set_clock(t, T0);
    cr_assert_eq(ps_table_push(t, old, 8, g, &applied, &dropped, err, sizeof(err)), 0);
    ps_table_set_clock(t, T0 + 50);
    cr_assert_eq(ps_table_push(t, live, 8, g, &applied, &dropped, err, sizeof(err)), 0);
    flush(t);
    ps_table_set_clock(t, T0 + 120);
    float w[8];
    cr_assert_eq(ps_table_pull(t, fresh, 8, w, err, sizeof(err)), 0, "%s", err);
    ps_table_stats s = stats(t);
    cr_assert_eq(s.evictions, 0, "a live row was evicted while dead ones held memory");
    cr_assert_eq(s.rows_in_memory, 16);
    uint64_t misses = s.memory_misses;
    uint8_t found[8];
    cr_assert_eq(ps_table_lookup(t, live, 8, found, w, NULL, err, sizeof(err)), 0);
    cr_assert_eq(stats(t).memory_misses, misses, "the live rows are still in memory");
    ps_table_free(t);
}

Test(table, expire_below_drops_zero_rows_when_pushed) {
    /* FTRL with lambda1 = 0.5: one push of g = 1 leaves |z| = 1 > lambda1,
     * so w != 0; a second push of g = -1 brings |z| under lambda1: w = 0
     * exactly (see ALGORITHMS.md §1). */
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 1, PS_INIT_ZERO);
    cfg.opt.lambda1 = 0.5;
    cfg.opt.lambda2 = 0;
    cfg.expire_below = 1e-12;
    ps_table *t = new_table(&cfg, 64, 0);
    float up = 1, down = -1, small = 0.25f;
    uint64_t kept = 1, zero = 2, never = 3;

    /* A row whose first push leaves w = 0 is never stored. */
    cr_assert_eq(push1(t, never, &small), 1);
    cr_assert(!found1(t, never));
    cr_assert_eq(stats(t).expired, 1);
    cr_assert_eq(stats(t).rows, 0);

    cr_assert_eq(push1(t, kept, &up), 1);
    cr_assert_eq(push1(t, zero, &up), 1);
    cr_assert(found1(t, zero));
    cr_assert_eq(flush(t), 2, "two live rows written; nothing for the one never stored");
    cr_assert(stored(kept) && stored(zero));

    cr_assert_eq(push1(t, zero, &down), 1);
    cr_assert(!found1(t, zero), "a row with ||w|| <= expire_below is dropped");
    ps_table_stats s = stats(t);
    cr_assert_eq(s.rows, 1);
    cr_assert_eq(s.expired, 2);
    cr_assert_eq(flush(t), 1, "the write-back deletes it");
    cr_assert(!stored(zero));
    cr_assert(stored(kept));
    cr_assert_eq(stats(t).rows_in_memory, 3);
    cr_assert_eq(ps_table_sweep(t, 64), 2, "once deleted (or never stored), the dead leave memory");
    cr_assert_eq(stats(t).rows_in_memory, 1);

    /* The trade-off: z and n are gone, a new push starts from the init
     * rule (FTRL would otherwise have continued from z). */
    cr_assert_eq(push1(t, zero, &up), 1);
    float want[3];
    init_state(&cfg, zero, want);
    ps_optim_apply(&cfg.opt, 1, want, &up);
    expect_state(t, zero, want);
    ps_table_free(t);
}

Test(table, an_idle_table_lets_the_filter_reach_its_clock) {
    ps_table_config cfg = table_cfg(PS_OPT_ADAGRAD, 4, PS_INIT_ZERO);
    cfg.ttl_s = 100;
    void *filter_ctx;
    reopen_store_with_filter(&cfg, &filter_ctx);
    ps_table *t = new_table(&cfg, 1024, 0);
    ps_table_set_store_filter(t, filter_ctx);
    float g[4] = {1, 2, 3, 4};
    uint64_t a = 1, b = 2;
    ps_table_set_clock(t, T0);
    cr_assert_eq(push1(t, a, g), 1);
    flush(t);
    /* A push not yet written back: the filter must stay at T0, since replay
     * could bring this push (at T0 + 100) and find a alive... */
    ps_table_set_clock(t, T0 + 50);
    cr_assert_eq(push1(t, b, g), 1);
    ps_table_set_clock(t, T0 + 100);
    ps_table_tick(t, 1000);
    ps_table_tick(t, 2000);
    compacted_bytes();
    cr_assert(stored(a), "dropped while a push newer than the last write-back was not covered");
    /* A write-back at T0 + 100 lets it go as far as that... */
    flush(t);
    compacted_bytes();
    cr_assert(!stored(a));
    ps_table_set_clock(t, T0 + 150);
    compacted_bytes();
    cr_assert(stored(b), "b expired at T0 + 150, a clock no write-back committed");
    /* ...and with every push written back, ticks advance it without
     * further write-backs. */
    ps_table_tick(t, 3000);
    compacted_bytes();
    cr_assert(!stored(b), "an idle table keeps expired rows on disk");
    ps_table_free(t);
}

/* ---- reading the store only when it may hold a live row memory lacks ----------------- */

/* The fixture's store with a meta column family (1) beside the table's (0). */
static void reopen_store_with_meta(void) {
    static const char *const names[] = {"t.test", "t.meta"};
    ps_store_close(store);
    char err[512] = "";
    cr_assert_eq(ps_store_open(dir, names, 2, NULL, &store, err, sizeof(err)), 0, "%s", err);
}

/* A table as the shard opens it: its saved state loaded. */
static ps_table *open_table(const ps_table_config *cfg, uint64_t capacity) {
    ps_table *t = new_table(cfg, capacity, 0);
    char err[512] = "";
    cr_assert_eq(ps_table_load_state(t, 1, err, sizeof(err)), 0, "%s", err);
    return t;
}

/* A write-back as the shard does it: the rows and the table's state. */
static void flush_with_state(ps_table *t) {
    ps_store_batch *b = ps_store_batch_new();
    uint32_t gen;
    ps_table_collect(t, b, &gen);
    ps_table_save_state(t, b, 1);
    char err[512] = "";
    cr_assert_eq(ps_store_write(store, b, err, sizeof(err)), 0, "%s", err);
    ps_table_committed(t, gen);
    ps_store_batch_free(b);
}

static void pull_new_keys(ps_table *t, uint64_t first, size_t n) {
    char err[512] = "";
    for (size_t i = 0; i < n; i++) {
        uint64_t key = first + i;
        float w[4];
        cr_assert_eq(ps_table_pull(t, &key, 1, w, err, sizeof(err)), 0, "%s", err);
        if (i % 8 == 7)
            flush_with_state(t); /* the created rows, so they may be evicted */
    }
}

Test(table, misses_read_the_store_only_while_it_may_hold_live_rows) {
    reopen_store_with_meta();
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_NORMAL);
    cfg.ttl_s = 50;
    ps_table *t = open_table(&cfg, 16);
    ps_table_set_clock(t, T0);
    /* An empty store: new keys cost no read. */
    pull_new_keys(t, 1000, 8);
    cr_assert_eq(stats(t).memory_misses, 0, "nothing stored: no key is looked for in RocksDB");

    /* A pushed row, written back, then evicted while live. */
    uint64_t key = 7;
    float g[4], want[12];
    grad_of(4, key, 0, g);
    init_state(&cfg, key, want);
    cr_assert_eq(push1(t, key, g), 1);
    ps_optim_apply(&cfg.opt, 4, want, g);
    flush_with_state(t);
    pull_new_keys(t, 2000, 32);
    cr_assert_gt(stats(t).evictions, 0);
    expect_state(t, key, want); /* read back from RocksDB, not taken as new */
    cr_assert_gt(stats(t).memory_misses, 0, "after a live eviction misses read the store");

    /* ttl_s after the last evicted row's push, every stored row is dead. */
    ps_table_set_clock(t, T0 + 50);
    flush_with_state(t);
    uint64_t misses = stats(t).memory_misses;
    pull_new_keys(t, 4000, 4);
    cr_assert_eq(stats(t).memory_misses, misses, "no stored row is alive: no read");

    /* Reopened on a store with rows: they may be alive for ttl_s after the
     * clock of the last write-back. */
    ps_table_set_clock(t, T0 + 60);
    cr_assert_eq(push1(t, key, g), 1);
    init_state(&cfg, key, want); /* it had expired: it starts again */
    ps_optim_apply(&cfg.opt, 4, want, g);
    flush_with_state(t);
    ps_table_free(t);
    t = open_table(&cfg, 16);
    ps_table_set_clock(t, T0 + 109);
    expect_state(t, key, want);
    cr_assert_gt(stats(t).memory_misses, 0);
    ps_table_free(t);
    t = open_table(&cfg, 16);
    ps_table_set_clock(t, T0 + 110);
    cr_assert(!found1(t, key), "dead ttl_s after its push");
    cr_assert_eq(stats(t).memory_misses, 0);
    ps_table_free(t);

    /* Without ttl_s a stored row lives forever: a reopened table reads. */
    cfg.ttl_s = 0;
    t = open_table(&cfg, 16);
    ps_table_set_clock(t, T0 + 1000);
    expect_state(t, key, want);
    cr_assert_gt(stats(t).memory_misses, 0);
    ps_table_free(t);
}

/* ---- what a pull leaves in memory (ROW_INIT) ------------------------------------------- */

/* A key only pulled is no row: nothing is written back or counted, the move
 * export does not see it, an eviction drops it without making later misses
 * read the store, and a pull after the eviction or a restart reads the
 * identical weights. A push makes it a row, which both then keep. */
Test(table, a_pulled_only_row_is_not_written_back_and_comes_back_identical) {
    reopen_store_with_meta();
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_NORMAL);
    cfg.ttl_s = 1000;
    ps_table *t = open_table(&cfg, 16);
    ps_table_set_clock(t, T0);
    enum { N = 12 };
    uint64_t keys[N];
    float first[N * 4], again[N * 4];
    for (size_t i = 0; i < N; i++)
        keys[i] = ps_fid(5, (const char *)&i, sizeof(i));
    char err[512] = "";
    cr_assert_eq(ps_table_pull(t, keys, N, first, err, sizeof(err)), 0, "%s", err);
    ps_table_stats s = stats(t);
    cr_assert_eq(s.rows, 0);
    cr_assert_eq(s.rows_in_memory, N);
    cr_assert_eq(s.dirty_rows, 0);
    flush_with_state(t);
    for (size_t i = 0; i < N; i++)
        cr_assert(!stored(keys[i]), "key %zu: a pulled-only row was written back", i);
    cr_assert_eq(ps_table_persisted_rows(t), 0);
    char value[256];
    bool found = true;
    cr_assert_lt(ps_table_value_len(t), sizeof(value));
    cr_assert_eq(ps_table_row_value(t, keys[3], value, &found, err, sizeof(err)), 0, "%s", err);
    cr_assert(!found, "a move would copy a pulled-only row");

    /* Pushes of 16 other keys take every slot: the pulled rows go. */
    uint64_t other[16];
    float g[16 * 4];
    for (size_t i = 0; i < 16; i++) {
        other[i] = 9000 + i;
        grad_of(4, other[i], 0, g + i * 4);
    }
    uint32_t applied, dropped;
    cr_assert_eq(ps_table_push(t, other, 16, g, &applied, &dropped, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(applied, 16);
    s = stats(t);
    cr_assert_eq(s.evictions, N);
    cr_assert_eq(s.rows, 16);
    flush_with_state(t);
    uint64_t misses = stats(t).memory_misses;
    cr_assert_eq(ps_table_pull(t, keys, 8, again, err, sizeof(err)), 0, "%s", err);
    cr_assert(!memcmp(again, first, 8 * 4 * sizeof(float)), "the recreated rows differ");
    cr_assert_eq(stats(t).memory_misses, misses,
                 "evicting pulled-only rows made misses look in the store");
    cr_assert_eq(stats(t).rows, 16);

    /* A push makes one of them a row, from the init rule's state. */
    float model[12];
    init_state(&cfg, keys[0], model);
    ps_optim_apply(&cfg.opt, 4, model, g);
    cr_assert_eq(push1(t, keys[0], g), 1);
    expect_state(t, keys[0], model);
    cr_assert_eq(stats(t).rows, 17);
    flush_with_state(t);
    cr_assert(stored(keys[0]));

    /* A restart keeps the count and the pushed row; the others read the
     * same weights again and are still no rows. */
    ps_table_free(t);
    t = open_table(&cfg, 16);
    ps_table_set_clock(t, T0 + 1);
    cr_assert_eq(stats(t).rows, 17, "the count changed across the restart");
    cr_assert_eq(ps_table_pull(t, keys + 1, N - 1, again, err, sizeof(err)), 0, "%s", err);
    cr_assert(!memcmp(again, first + 4, (N - 1) * 4 * sizeof(float)),
              "the rows recreated after a restart differ");
    expect_state(t, keys[0], model);
    for (size_t i = 1; i < N; i++)
        cr_assert(!found1(t, keys[i]), "key %zu", i);
    cr_assert_eq(stats(t).rows, 17);
    ps_table_free(t);
}

/* ---- write-back in groups ------------------------------------------------------------ */

/* Write back group g alone, as the shard does: dump, put, write, commit,
 * with the group's share of the live count. Returns the rows dumped and
 * checks that each lies in the group's buckets. */
static size_t flush_group(ps_table *t, uint32_t g) {
    ps_table_dump d = {0};
    uint32_t gen;
    size_t n = ps_table_dump_group(t, g, &d, &gen);
    uint32_t lo, hi;
    ps_writeback_group_buckets(NBUCKETS, ps_table_groups(t), g, &lo, &hi);
    for (size_t i = 0; i < d.n; i++) {
        const uint8_t *k = (const uint8_t *)d.recs + i * d.rec_size;
        uint32_t bucket = ps_store_key_bucket(k);
        cr_assert(bucket >= lo && bucket < hi, "group %u dumped a row of bucket %u", g, bucket);
    }
    ps_store_batch *b = ps_store_batch_new();
    ps_table_dump_put(&d, b);
    ps_table_save_group(t, g, b, 0);
    char err[512] = "";
    cr_assert_eq(ps_store_write(store, b, err, sizeof(err)), 0, "%s", err);
    ps_table_committed_group(t, g, gen);
    ps_store_batch_free(b);
    ps_table_dump_deinit(&d);
    return n;
}

Test(table, write_back_in_groups_dumps_each_group_alone_and_counts_add_up) {
    ps_table_config cfg = table_cfg(PS_OPT_FTRL, 4, PS_INIT_NORMAL);
    ps_table *t = new_table(&cfg, 256, 0);
    enum { G = 4, N = 64 };
    uint32_t lo, hi, next = 0;
    for (uint32_t g = 0; g < 3; g++) { /* 64 buckets in 3 groups: 22, 21, 21, no gap */
        ps_writeback_group_buckets(NBUCKETS, 3, g, &lo, &hi);
        cr_assert_eq(lo, next);
        next = hi;
    }
    cr_assert_eq(next, NBUCKETS);
    cr_assert_eq(ps_table_set_groups(t, G), 0);
    uint64_t keys[N];
    size_t in_group[G] = {0};
    float g4[4];
    for (size_t i = 0; i < N; i++) {
        keys[i] = 1000 + 7919 * i;
        in_group[ps_bucket(keys[i], NBUCKETS) * G / NBUCKETS]++;
        grad_of(4, keys[i], 0, g4);
        cr_assert_eq(push1(t, keys[i], g4), 1);
    }
    for (uint32_t g = 0; g < G; g++)
        cr_assert_gt(in_group[g], 0, "no key in group %u: the test proves less", g);
    cr_assert_eq(ps_table_set_groups(t, 2), -EINVAL, "regrouped with dirty rows");
    cr_assert_eq(ps_table_dirty_count(t), N);

    /* Group 1 alone: the others stay dirty, and a push into group 1 after
     * its dump is dirty again. */
    cr_assert_eq(flush_group(t, 1), in_group[1]);
    for (uint32_t g = 0; g < G; g++)
        cr_assert_eq(ps_table_group_dirty(t, g), g == 1 ? 0 : in_group[g]);
    cr_assert_eq(stats(t).dirty_rows, N - in_group[1]);
    size_t i1 = 0;
    while (ps_bucket(keys[i1], NBUCKETS) * G / NBUCKETS != 1)
        i1++;
    grad_of(4, keys[i1], 1, g4);
    cr_assert_eq(push1(t, keys[i1], g4), 1);
    cr_assert_eq(ps_table_group_dirty(t, 1), 1);
    for (uint32_t g = 0; g < G; g++)
        flush_group(t, g);
    cr_assert_eq(stats(t).dirty_rows, 0);
    cr_assert_eq(stats(t).rows, N);

    /* The shares saved by the groups add up to the count, read back by a
     * table of as many groups and by one of a single group. */
    float want[N][12];
    for (size_t i = 0; i < N; i++) {
        uint8_t found;
        float w[4];
        lookup_state(t, keys[i], &found, w, want[i]);
    }
    ps_table_free(t);
    const uint32_t regroup[] = {G, 1};
    for (size_t k = 0; k < 2; k++) {
        uint32_t groups = regroup[k];
        t = new_table(&cfg, 256, 0);
        char err[512] = "";
        cr_assert_eq(ps_table_load_state(t, 0, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(ps_table_set_groups(t, groups), 0);
        cr_assert_eq(ps_table_load_groups(t, G, 0, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(stats(t).rows, N, "%u groups: the shares do not add up", groups);
        for (size_t i = 0; i < N; i++)
            expect_state(t, keys[i], want[i]);
        ps_table_free(t);
    }

    /* The filter and the clock ring are the whole table's: one group. */
    ps_table_config adm = cfg;
    adm.admit_after = 2;
    t = new_table(&adm, 256, 0);
    cr_assert_eq(ps_table_set_groups(t, G), -EINVAL, "groups with an admission filter");
    ps_table_free(t);
    ps_table_config ttl = cfg;
    ttl.ttl_s = 3600;
    t = new_table(&ttl, 256, 0);
    cr_assert_eq(ps_table_set_groups(t, G), -EINVAL, "groups with ttl_s");
    ps_table_free(t);
}
