/* Tests for one shard (server/shard.h): its tables over RocksDB, the push
 * log, write-back and exactly-once sequencing, on a temporary directory.
 *
 * What a user depends on: a push retried with the same (client, seq) is
 * answered "already applied" and not applied twice, also across a restart;
 * with durability = sync, kill -9 after the commit loses no acknowledged
 * push and applies none twice, whether or not a write-back happened in
 * between (the crash is a child process that _exit()s without closing); a
 * clean close keeps everything, in either durability mode; and a data
 * directory is never opened by the wrong shard or with a changed table
 * layout. */

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"
#include "config.h"
#include "error.h"
#include "keys.h"
#include "optim.h"
#include "shard.h"
#include "table.h"

/* ---- fixtures ------------------------------------------------------------------ */

static char root[PS_PATH_MAX];
static char datadir[PS_PATH_MAX + 16];

static void setup(void) {
    const char *base = getenv("TMPDIR");
    snprintf(root, sizeof(root), "%s/ctrps-test-shard-XXXXXX", base && *base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(root), "mkdtemp: %s", strerror(errno));
    snprintf(datadir, sizeof(datadir), "%s/shard0", root);
}

static void teardown(void) { ps_rm_tree(root); }

TestSuite(shard, .init = setup, .fini = teardown, .timeout = 60);

typedef struct cfg_opts {
    const char *durability;      /* "sync" or "interval=MS" */
    unsigned emb_memory_rows;
    unsigned emb_dim;
    const char *emb_optimizer;
    unsigned buckets;
    unsigned flush_dirty_rows;
    bool extra_table;
    const char *emb_extra;       /* more [table.emb] lines */
} cfg_opts;

static ps_config *load_config(cfg_opts o) {
    static int nconf;
    char path[PS_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/c%d.ini", root, nconf++);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f,
            "[cluster]\n"
            "shards = 127.0.0.1:7101, 127.0.0.1:7102\n"
            "buckets = %u\n"
            "[server]\n"
            "durability = %s\n"
            "fsync = no\n"
            "flush_interval_ms = 3600000\n"
            "flush_dirty_rows = %u\n"
            "[table.emb]\n"
            "dim = %u\n"
            "optimizer = %s\n"
            "init = normal\n"
            "init_std = 0.1\n"
            "memory_rows = %u\n"
            "slots = C1, C2\n"
            "%s"
            "[table.wide]\n"
            "dim = 1\n"
            "optimizer = adagrad\n"
            "memory_rows = 64\n"
            "slots = I1\n",
            o.buckets ? o.buckets : 64, o.durability ? o.durability : "sync",
            o.flush_dirty_rows ? o.flush_dirty_rows : 1000000, o.emb_dim ? o.emb_dim : 4,
            o.emb_optimizer ? o.emb_optimizer : "ftrl", o.emb_memory_rows ? o.emb_memory_rows : 1024,
            o.emb_extra ? o.emb_extra : "");
    if (o.extra_table)
        fprintf(f, "[table.extra]\ndim = 2\nslots = X1\n");
    fclose(f);
    char err[512] = "";
    ps_config *cfg = NULL;
    cr_assert_eq(ps_config_load(path, NULL, &cfg, err, sizeof(err)), 0, "%s", err);
    return cfg;
}

static ps_shard *open_shard(const ps_config *cfg, uint32_t id) {
    ps_shard_options so = {.shard_id = id, .data_dir = datadir};
    char err[512] = "";
    ps_shard *s = NULL;
    int r = ps_shard_open(cfg, &so, &s, err, sizeof(err));
    cr_assert_eq(r, 0, "ps_shard_open: %d %s", r, err);
    return s;
}

/* ---- a deterministic workload and its expected state --------------------------- */

#define NEMB 48
#define NWIDE 16
#define DIM 4

static uint64_t emb_key[NEMB], wide_key[NWIDE];

/* Keys this shard (0 of 2) owns under 64 buckets. */
static void make_keys(void) {
    size_t ne = 0, nw = 0;
    for (uint32_t i = 0; ne < NEMB || nw < NWIDE; i++) {
        char v[16];
        int len = snprintf(v, sizeof(v), "v%u", i);
        if (ne < NEMB) {
            uint64_t k = ps_fid(ps_slot_id("C1"), v, (size_t)len);
            if (ps_key_owner(k, 64, 2) == 0)
                emb_key[ne++] = k;
        }
        if (nw < NWIDE) {
            uint64_t k = ps_fid(ps_slot_id("I1"), v, (size_t)len);
            if (ps_key_owner(k, 64, 2) == 0)
                wide_key[nw++] = k;
        }
    }
}

typedef struct push_spec {
    bool wide;
    size_t n;
    size_t idx[5];
    uint64_t keys[5];
    float grads[5 * DIM];
    uint64_t client, seq;
} push_spec;

/* Push i of the workload: emb or wide, 1..5 keys (sometimes repeated),
 * clients 1..3 with increasing seqs. `spread` picks keys from a wider range
 * so a small memory tier must evict. */
static push_spec spec_of(uint32_t i) {
    push_spec p;
    memset(&p, 0, sizeof(p));
    p.wide = i % 3 == 2;
    p.n = 1 + i % 5;
    size_t universe = p.wide ? NWIDE : NEMB;
    uint32_t dim = p.wide ? 1 : DIM;
    for (size_t j = 0; j < p.n; j++) {
        p.idx[j] = (i * 7 + j * 13 + (j == 3 ? 0 : j)) % universe;
        if (j == 4)
            p.idx[j] = p.idx[0]; /* a key twice in one push */
        p.keys[j] = p.wide ? wide_key[p.idx[j]] : emb_key[p.idx[j]];
        for (uint32_t d = 0; d < dim; d++)
            p.grads[j * dim + d] = (float)((int)((i * 5 + j * 3 + d) % 11) - 5) / 4.0f;
    }
    p.client = 1 + i % 3;
    p.seq = i / 3 + 1;
    return p;
}

typedef struct model {
    const ps_table_config *emb_cfg, *wide_cfg;
    float emb[NEMB][3 * DIM];
    float wide[NWIDE][2];
    bool emb_made[NEMB], wide_made[NWIDE];
    uint64_t client_seq[4];
} model;

static void model_init(model *m, const ps_config *cfg) {
    memset(m, 0, sizeof(*m));
    m->emb_cfg = ps_config_table(cfg, "emb");
    m->wide_cfg = ps_config_table(cfg, "wide");
}

static void model_apply(model *m, const push_spec *p) {
    for (size_t j = 0; j < p->n; j++) {
        const ps_table_config *tc = p->wide ? m->wide_cfg : m->emb_cfg;
        float *state = p->wide ? m->wide[p->idx[j]] : m->emb[p->idx[j]];
        bool *made = p->wide ? &m->wide_made[p->idx[j]] : &m->emb_made[p->idx[j]];
        if (!*made) {
            float w[DIM];
            ps_optim_init_weights(tc, p->keys[j], w);
            ps_optim_init_row(&tc->opt, tc->dim, w, state);
            *made = true;
        }
        ps_optim_apply(&tc->opt, tc->dim, state, p->grads + j * tc->dim);
    }
    m->client_seq[p->client] = p->seq;
}

/* Failures in a forked child cannot use Criterion's asserts: exit with a
 * code the parent reports. */
static void child_check(bool ok, int code, const char *fmt, ...) {
    if (ok)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    _exit(code);
}

/* Shard 0 opened in a crashing child (exit code 2 if it cannot be). */
static ps_shard *open_in_child(const ps_config *cfg) {
    ps_shard_options so = {.shard_id = 0, .data_dir = datadir};
    char err[512] = "";
    ps_shard *s = NULL;
    child_check(ps_shard_open(cfg, &so, &s, err, sizeof(err)) == 0, 2, "open: %s", err);
    return s;
}

static int do_push(ps_shard *s, const push_spec *p, ps_push_result *res, char *err, size_t errlen) {
    ps_table *t = ps_shard_table(s, p->wide ? "wide" : "emb");
    return ps_shard_push(s, t, p->keys, p->n, p->grads, p->client, p->seq, res, err, errlen);
}

/* Run pushes [from, to) against s, committing after each; usable in a child. */
static void run_pushes(ps_shard *s, uint32_t from, uint32_t to, model *m, bool in_child) {
    for (uint32_t i = from; i < to; i++) {
        push_spec p = spec_of(i);
        ps_push_result res;
        char err[512] = "";
        int r = do_push(s, &p, &res, err, sizeof(err));
        if (in_child) {
            child_check(r == 0, 10, "push %u: %d %s", i, r, err);
            child_check(res.applied == p.n && !res.already_applied, 11, "push %u not applied", i);
            child_check(ps_shard_commit(s) == 0, 12, "commit after push %u", i);
        } else {
            cr_assert_eq(r, 0, "push %u: %d %s", i, r, err);
            cr_assert_eq(res.applied, p.n);
            cr_assert(!res.already_applied);
            cr_assert_eq(ps_shard_commit(s), 0);
        }
        if (m)
            model_apply(m, &p);
    }
}

/* The shard's rows equal the model's, bit for bit, and no other row of
 * the key universe exists. */
static void expect_model(ps_shard *s, const model *m) {
    ps_table *emb = ps_shard_table(s, "emb"), *wide = ps_shard_table(s, "wide");
    cr_assert_not_null(emb);
    cr_assert_not_null(wide);
    char err[512] = "";
    for (size_t i = 0; i < NEMB; i++) {
        uint8_t found;
        float w[DIM], state[3 * DIM];
        cr_assert_eq(ps_table_lookup(emb, &emb_key[i], 1, &found, w, state, err, sizeof(err)), 0,
                     "%s", err);
        cr_assert_eq(found, m->emb_made[i], "emb key %zu: found %d", i, found);
        if (found)
            cr_assert(!memcmp(state, m->emb[i], sizeof(state)), "emb key %zu: state differs", i);
    }
    for (size_t i = 0; i < NWIDE; i++) {
        uint8_t found;
        float w[1], state[2];
        cr_assert_eq(ps_table_lookup(wide, &wide_key[i], 1, &found, w, state, err, sizeof(err)), 0,
                     "%s", err);
        cr_assert_eq(found, m->wide_made[i], "wide key %zu", i);
        if (found)
            cr_assert(!memcmp(state, m->wide[i], sizeof(state)), "wide key %zu: state differs", i);
    }
    for (uint64_t c = 1; c <= 3; c++)
        cr_assert_eq(ps_shard_client_seq(s, c), m->client_seq[c], "client %llu",
                     (unsigned long long)c);
}

static ps_shard_counters counters(const ps_shard *s) {
    ps_shard_counters c;
    ps_shard_counters_get(s, &c);
    return c;
}

/* Fork; the child runs fn(arg) and must _exit. Returns the child's exit
 * status, asserting it was 0. */
static void in_crashing_child(void (*fn)(void *), void *arg) {
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        fn(arg);
        _exit(99); /* fn must _exit itself: that is the crash */
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "child died of signal %d", WTERMSIG(status));
    cr_assert_eq(WEXITSTATUS(status), 0, "child failed with code %d (see stderr)",
                 WEXITSTATUS(status));
}

/* ---- exactly-once ------------------------------------------------------------------- */

Test(shard, repeated_seq_is_already_applied_and_not_applied_again) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    ps_shard *s = open_shard(cfg, 0);
    model m;
    model_init(&m, cfg);

    push_spec p = spec_of(0); /* emb, client 1, seq 1 */
    cr_assert_eq(p.client, 1);
    cr_assert_eq(p.seq, 1);
    ps_push_result res;
    char err[512] = "";
    cr_assert_eq(do_push(s, &p, &res, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(res.applied, p.n);
    cr_assert(!res.already_applied);
    cr_assert_eq(ps_shard_commit(s), 0);
    model_apply(&m, &p);

    /* The same seq again (a retry after a lost reply), even with other
     * gradients: answered, not applied. Also an older seq. */
    push_spec retry = p;
    for (size_t i = 0; i < retry.n * DIM; i++)
        retry.grads[i] = 100.0f;
    for (uint64_t seq = 0; seq <= 1; seq++) {
        retry.seq = seq;
        memset(&res, 0xff, sizeof(res));
        cr_assert_eq(do_push(s, &retry, &res, err, sizeof(err)), 0, "%s", err);
        cr_assert(res.already_applied, "seq %llu", (unsigned long long)seq);
        cr_assert_eq(res.applied, 0);
        cr_assert_eq(res.dropped_nonfinite, 0);
    }
    expect_model(s, &m);
    cr_assert_eq(counters(s).pushes_already_applied, 2);

    /* Gaps are fine. A number below the newest that these buckets have not
     * applied is applied once (a push resent after a later one overtook
     * it); one they applied, or one more than 64 below the newest, is a
     * repeat. */
    push_spec later = spec_of(0);
    struct {
        uint64_t seq;
        bool already;
    } steps[] = {{5, false}, {4, false}, {4, true}, {5, true}, {70, false},
                 {6, false}, {5, true},  {3, true}, {6, true}, {69, false}};
    for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
        later.seq = steps[k].seq;
        cr_assert_eq(do_push(s, &later, &res, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(res.already_applied, steps[k].already, "step %zu, seq %llu", k,
                     (unsigned long long)later.seq);
        if (!res.already_applied)
            model_apply(&m, &later);
    }
    cr_assert_eq(ps_shard_client_seq(s, 1), 70);
    m.client_seq[1] = 70; /* the model keeps the last applied */

    /* Clients are independent; client 0 is never sequenced. */
    push_spec other = spec_of(1); /* client 2, seq 1 */
    cr_assert_eq(do_push(s, &other, &res, err, sizeof(err)), 0);
    cr_assert(!res.already_applied);
    model_apply(&m, &other);
    push_spec anon = spec_of(2);
    anon.client = 0;
    anon.seq = 1;
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(do_push(s, &anon, &res, err, sizeof(err)), 0);
        cr_assert(!res.already_applied, "client 0 must not be de-duplicated");
        model_apply(&m, &anon);
    }
    m.client_seq[0] = 0;
    cr_assert_eq(ps_shard_commit(s), 0);
    expect_model(s, &m);
    cr_assert_eq(ps_shard_client_seq(s, 0), 0);
    cr_assert_eq(ps_shard_client_seq(s, 12345), 0, "an unknown client has seq 0");

    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

Test(shard, nonfinite_rows_are_counted_not_applied) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    ps_shard *s = open_shard(cfg, 0);
    model m;
    model_init(&m, cfg);
    push_spec p = spec_of(3); /* emb, 4 keys */
    cr_assert_eq(p.n, 4);
    p.grads[1 * DIM + 2] = NAN;
    ps_push_result res;
    char err[512] = "";
    cr_assert_eq(do_push(s, &p, &res, err, sizeof(err)), 0);
    cr_assert_eq(res.applied, 3);
    cr_assert_eq(res.dropped_nonfinite, 1);
    cr_assert_eq(ps_shard_commit(s), 0);
    /* Key 1 of this push appears only there: its row must not exist. */
    cr_assert(p.idx[1] != p.idx[0] && p.idx[1] != p.idx[2] && p.idx[1] != p.idx[3]);
    ps_table *emb = ps_shard_table(s, "emb");
    uint8_t found = 1;
    float w[DIM];
    cr_assert_eq(ps_table_lookup(emb, &p.keys[1], 1, &found, w, NULL, err, sizeof(err)), 0);
    cr_assert_eq(found, 0);
    cr_assert_eq(ps_shard_close(s), 0);
    s = open_shard(cfg, 0);
    emb = ps_shard_table(s, "emb");
    cr_assert_eq(ps_table_lookup(emb, &p.keys[1], 1, &found, w, NULL, err, sizeof(err)), 0);
    cr_assert_eq(found, 0, "created by the restart");
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

/* ---- crash recovery ----------------------------------------------------------------- */

typedef struct crash_args {
    const ps_config *cfg;
    uint32_t npush;
    uint32_t flush_after;        /* 0: no write-back before the crash */
    bool tick_flush;             /* write back through tick/notify, not flush_sync */
    bool expect_make_room;
    /* With tick_flush: the crash comes once this many groups' batches of
     * the round are stored (0: the whole round). */
    uint32_t groups;
} crash_args;

static int notify_pipe[2];

static void on_notify(void *ctx) {
    (void)ctx;
    char c = 1;
    ssize_t w = write(notify_pipe[1], &c, 1);
    (void)w;
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The daemon's write-back path, in a child: wait for the write-back
 * thread's notification, tick (which ends the batch and begins the next
 * group's), until `batches` batches (if not 0) or `rounds` rounds (if not
 * 0) are stored. */
static ps_shard_counters tick_until(ps_shard *s, uint64_t batches, uint64_t rounds) {
    ps_shard_counters c = {0};
    for (int k = 0; k < 10000; k++) {
        struct pollfd pfd = {.fd = notify_pipe[0], .events = POLLIN};
        child_check(poll(&pfd, 1, 30000) == 1, 3, "write-back never notified");
        char ch;
        child_check(read(notify_pipe[0], &ch, 1) == 1, 3, "read notify");
        ps_shard_tick(s, now_ms() + 3600 * 1000);
        ps_shard_counters_get(s, &c);
        if ((batches && c.flush_batches >= batches) || (rounds && c.flushes >= rounds))
            break;
    }
    return c;
}

static void crash_child(void *arg) {
    crash_args *a = arg;
    ps_shard_options so = {.shard_id = 0, .data_dir = datadir, .notify = on_notify};
    char err[512] = "";
    ps_shard *s = NULL;
    int r = ps_shard_open(a->cfg, &so, &s, err, sizeof(err));
    child_check(r == 0, 2, "open: %s", err);
    for (uint32_t i = 0; i < a->npush; i++) {
        run_pushes(s, i, i + 1, NULL, true);
        if (a->flush_after && i + 1 == a->flush_after) {
            if (a->tick_flush) {
                /* The daemon's path: tick starts a write-back, the thread
                 * notifies when a group's batch is stored, the next tick
                 * ends it and begins the next group's. */
                ps_shard_tick(s, now_ms() + 3600 * 1000);
                ps_shard_counters c2 = tick_until(s, a->groups, a->groups ? 0 : 1);
                child_check(a->groups ? c2.flushes == 0 && c2.flush_batches == a->groups
                                      : c2.flushes == 1,
                            4, "tick did not complete the write-back asked for (%llu, %llu)",
                            (unsigned long long)c2.flushes, (unsigned long long)c2.flush_batches);
            } else {
                child_check(ps_shard_flush_sync(s, err, sizeof(err)) == 0, 5, "flush: %s", err);
            }
        }
    }
    ps_shard_counters c;
    ps_shard_counters_get(s, &c);
    child_check(!a->expect_make_room || c.make_room_flushes > 0, 6,
                "the memory tier never filled: the test proves nothing");
    child_check(c.pushlog_bytes > 0, 7, "sync durability logged nothing");
    _exit(0); /* kill -9, as far as the files can tell: no close, no flush */
}

static void crash_and_recover_groups(cfg_opts o, uint32_t npush, uint32_t flush_after,
                                     bool tick_flush, bool expect_make_room, uint32_t groups) {
    make_keys();
    cr_assert_eq(pipe(notify_pipe), 0);
    ps_config *cfg = load_config(o);
    crash_args a = {cfg, npush, flush_after, tick_flush, expect_make_room, groups};
    in_crashing_child(crash_child, &a);

    model m;
    model_init(&m, cfg);
    for (uint32_t i = 0; i < npush; i++) {
        push_spec p = spec_of(i);
        model_apply(&m, &p);
    }
    ps_shard *s = open_shard(cfg, 0);
    ps_shard_counters c = counters(s);
    if (groups) {
        /* The groups not stored yet replay from the start, the others
         * skip the rows they hold. */
        cr_assert_eq(c.replayed_records, npush);
        cr_assert_gt(c.replay_skipped_rows, 0, "no pushed row in the stored groups");
    } else if (flush_after && !expect_make_room)
        cr_assert_eq(c.replayed_records, npush - flush_after,
                     "records covered by the write-back must not be replayed");
    else if (!expect_make_room)
        cr_assert_eq(c.replayed_records, npush);
    expect_model(s, &m);

    /* A client retrying its last push after the restart is told it was
     * applied. */
    push_spec last = spec_of(npush - 1);
    ps_push_result res;
    char err[512] = "";
    cr_assert_eq(do_push(s, &last, &res, err, sizeof(err)), 0, "%s", err);
    cr_assert(res.already_applied, "the retried push would be applied twice");

    /* And the recovered shard keeps working and survives another restart. */
    run_pushes(s, npush, npush + 6, &m, false);
    cr_assert_eq(ps_shard_close(s), 0);
    s = open_shard(cfg, 0);
    expect_model(s, &m);
    cr_assert_eq(counters(s).replayed_records, 0, "a clean close leaves nothing to replay");
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
    close(notify_pipe[0]);
    close(notify_pipe[1]);
}

static void crash_and_recover(cfg_opts o, uint32_t npush, uint32_t flush_after, bool tick_flush,
                              bool expect_make_room) {
    crash_and_recover_groups(o, npush, flush_after, tick_flush, expect_make_room, 0);
}

Test(shard, crash_replays_every_committed_push) {
    crash_and_recover((cfg_opts){0}, 30, 0, false, false);
}

Test(shard, crash_after_a_write_back_replays_only_the_rest) {
    crash_and_recover((cfg_opts){0}, 30, 12, false, false);
}

Test(shard, crash_after_a_tick_write_back_replays_only_the_rest) {
    crash_and_recover((cfg_opts){.flush_dirty_rows = 1}, 30, 17, true, false);
}

/* Write-back in groups: killed halfway through a round, with half the
 * groups stored as of push 17 and the rest as of none: each row gets every
 * push once. */
Test(shard, crash_in_the_middle_of_a_write_back_round) {
    crash_and_recover_groups((cfg_opts){.flush_dirty_rows = 1}, 30, 17, true, false, 32);
}

/* A push applied while a write-back round is under way, its record not
 * yet written when the next groups' batches dump its rows: each batch
 * writes the log's records first, so that after a kill -9 the push is
 * whole (replayed into the groups stored before it or not at all) and
 * its resend is a no-op. Without that, half the groups held it and the
 * other half never would. */
typedef struct midpush_args {
    const ps_config *cfg;
    uint32_t before, push;       /* pushes [0, before) committed, then push `push` */
} midpush_args;

static void midpush_child(void *arg) {
    midpush_args *a = arg;
    ps_shard_options so = {.shard_id = 0, .data_dir = datadir, .notify = on_notify};
    char err[512] = "";
    ps_shard *s = NULL;
    child_check(ps_shard_open(a->cfg, &so, &s, err, sizeof(err)) == 0, 2, "open: %s", err);
    run_pushes(s, 0, a->before, NULL, true);
    ps_shard_tick(s, now_ms() + 3600 * 1000); /* the round: group 0's batch */
    push_spec p = spec_of(a->push);
    ps_push_result res;
    child_check(do_push(s, &p, &res, err, sizeof(err)) == 0 && res.applied == p.n, 3, "push: %s",
                err); /* applied, its record in the log's buffer only */
    ps_shard_counters c = tick_until(s, 16, 0);
    child_check(c.flush_batches == 16 && c.flushes == 0, 5, "%llu batches",
                (unsigned long long)c.flush_batches);
    _exit(0); /* kill -9: no commit, no close */
}

Test(shard, a_push_during_a_round_is_whole_after_a_crash) {
    make_keys();
    cr_assert_eq(pipe(notify_pipe), 0);
    ps_config *cfg = load_config((cfg_opts){.flush_dirty_rows = 1});
    /* A push of emb keys in groups 1-15 (stored after it) and 16 on (not):
     * one bucket per group here, and shard 0 owns buckets 0-31. */
    uint32_t push = 0;
    for (uint32_t i = 20; i < 200 && !push; i++) {
        push_spec p = spec_of(i);
        bool low = false, high = false;
        for (size_t j = 0; j < p.n && !p.wide; j++) {
            uint32_t b = ps_bucket(p.keys[j], 64);
            low = low || (b >= 1 && b < 16);
            high = high || b >= 16;
        }
        push = low && high ? i : 0;
    }
    cr_assert_gt(push, 0, "no push spans both halves of the groups");
    midpush_args a = {cfg, 20, push};
    in_crashing_child(midpush_child, &a);
    model m;
    model_init(&m, cfg);
    for (uint32_t i = 0; i < 20; i++) {
        push_spec p = spec_of(i);
        model_apply(&m, &p);
    }
    push_spec p = spec_of(push);
    model_apply(&m, &p);
    ps_shard *s = open_shard(cfg, 0);
    cr_assert_gt(counters(s).replay_skipped_rows, 0);
    expect_model(s, &m);
    ps_push_result res;
    char err[512] = "";
    cr_assert_eq(do_push(s, &p, &res, err, sizeof(err)), 0, "%s", err);
    cr_assert(res.already_applied, "the resent push would be applied again");
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
    close(notify_pipe[0]);
    close(notify_pipe[1]);
}

Test(shard, crash_with_a_full_memory_tier) {
    /* 16 rows of memory for 48 keys: pushes force synchronous write-backs
     * (make_room) before the crash, and replay forces more. */
    crash_and_recover((cfg_opts){.emb_memory_rows = 16}, 90, 0, false, true);
}

/* ---- clean restarts --------------------------------------------------------------------- */

Test(shard, clean_close_and_reopen_keeps_state) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    ps_shard *s = open_shard(cfg, 0);
    cr_assert_eq(ps_shard_id(s), 0);
    cr_assert_eq(ps_shard_config(s), cfg);
    cr_assert_eq(ps_shard_ntables(s), 2);
    cr_assert_not_null(ps_shard_table(s, "wide"));
    cr_assert_null(ps_shard_table(s, "nope"));
    cr_assert_eq(ps_shard_table_at(s, 0), ps_shard_table(s, "emb"));
    model m;
    model_init(&m, cfg);
    run_pushes(s, 0, 25, &m, false);
    cr_assert_gt(counters(s).pushlog_bytes, 0);
    cr_assert_eq(ps_shard_close(s), 0);

    s = open_shard(cfg, 0);
    expect_model(s, &m);
    cr_assert_eq(counters(s).replayed_records, 0);
    ps_table_stats st;
    ps_table_stats_get(ps_shard_table(s, "emb"), &st);
    size_t made = 0;
    for (size_t i = 0; i < NEMB; i++)
        made += m.emb_made[i];
    cr_assert_eq(st.rows, made, "row count survives the restart");
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

Test(shard, interval_durability_keeps_state_across_a_clean_restart) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){.durability = "interval=100"});
    cr_assert_eq(cfg->server.durability, PS_DURABILITY_INTERVAL);
    ps_shard *s = open_shard(cfg, 0);
    model m;
    model_init(&m, cfg);
    run_pushes(s, 0, 25, &m, false);
    cr_assert_eq(counters(s).pushlog_bytes, 0, "interval durability keeps no push log");
    cr_assert_eq(ps_shard_close(s), 0);
    s = open_shard(cfg, 0);
    expect_model(s, &m);
    /* Retried pushes are still recognised. */
    push_spec last = spec_of(24);
    ps_push_result res;
    char err[512] = "";
    cr_assert_eq(do_push(s, &last, &res, err, sizeof(err)), 0);
    cr_assert(res.already_applied);
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

/* The number of write-back groups follows the durability (one without a
 * push log): a store written in one batch reopened with groups, written in
 * groups, and reopened in one batch again keeps every row, the live count
 * and the clients' numbers (cseq/ and gseq/, whichever is newer). */
Test(shard, write_back_groups_change_with_the_durability_and_keep_the_state) {
    make_keys();
    enum { N = 5 };
    const char *modes[N] = {"interval=100", "sync", "interval=100", "sync", "interval=100"};
    model m;
    ps_config *cfgs[N];
    for (int k = 0; k < N; k++)
        cfgs[k] = load_config((cfg_opts){.durability = modes[k]});
    model_init(&m, cfgs[0]);
    for (int k = 0; k < N; k++) {
        ps_shard *s = open_shard(cfgs[k], 0);
        if (k)
            expect_model(s, &m);
        run_pushes(s, (uint32_t)k * 10, (uint32_t)k * 10 + 10, &m, false);
        push_spec last = spec_of((uint32_t)k * 10 + 9);
        ps_push_result res;
        char err[512] = "";
        cr_assert_eq(do_push(s, &last, &res, err, sizeof(err)), 0, "%s", err);
        cr_assert(res.already_applied, "mode %s: a resend applied again", modes[k]);
        ps_table_stats st;
        ps_table_stats_get(ps_shard_table(s, "emb"), &st);
        size_t made = 0;
        for (size_t i = 0; i < NEMB; i++)
            made += m.emb_made[i];
        cr_assert_eq(st.rows, made, "mode %s: the live count", modes[k]);
        cr_assert_eq(ps_shard_flush_sync(s, err, sizeof(err)), 0, "%s", err);
        ps_shard_counters c = counters(s);
        cr_assert_gt(c.flushes, 0);
        if (k % 2) /* sync: in groups */
            cr_assert_gt(c.flush_batches, c.flushes, "mode %s: one batch a round", modes[k]);
        else
            cr_assert_eq(c.flush_batches, c.flushes, "mode %s: groups", modes[k]);
        cr_assert_eq(ps_shard_close(s), 0);
    }
    for (int k = 0; k < N; k++)
        ps_config_free(cfgs[k]);
}

static void interval_crash_child(void *arg) {
    const ps_config *cfg = arg;
    ps_shard *s = open_in_child(cfg);
    char err[512] = "";
    run_pushes(s, 0, 20, NULL, true);
    child_check(ps_shard_flush_sync(s, err, sizeof(err)) == 0, 3, "flush: %s", err);
    run_pushes(s, 20, 30, NULL, true);
    _exit(0);
}

Test(shard, interval_durability_crash_keeps_what_was_written_back) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){.durability = "interval=100"});
    in_crashing_child(interval_crash_child, cfg);
    model m;
    model_init(&m, cfg);
    for (uint32_t i = 0; i < 20; i++) {
        push_spec p = spec_of(i);
        model_apply(&m, &p);
    }
    ps_shard *s = open_shard(cfg, 0);
    /* Pushes 20..29 may be lost (no log); rows only they touched are not
     * checked. Every row pushes 0..19 reached must hold at least their
     * state: compare the rows that 20..29 did not touch. */
    bool touched_emb[NEMB] = {0}, touched_wide[NWIDE] = {0};
    for (uint32_t i = 20; i < 30; i++) {
        push_spec p = spec_of(i);
        for (size_t j = 0; j < p.n; j++)
            (p.wide ? touched_wide : touched_emb)[p.idx[j]] = true;
    }
    char err[512] = "";
    size_t checked = 0;
    for (size_t i = 0; i < NEMB; i++) {
        if (touched_emb[i] || !m.emb_made[i])
            continue;
        uint8_t found;
        float w[DIM], state[3 * DIM];
        cr_assert_eq(ps_table_lookup(ps_shard_table(s, "emb"), &emb_key[i], 1, &found, w, state,
                                     err, sizeof(err)),
                     0);
        cr_assert_eq(found, 1, "emb key %zu written back, then lost", i);
        cr_assert(!memcmp(state, m.emb[i], sizeof(state)), "emb key %zu", i);
        checked++;
    }
    cr_assert_gt(checked, 5, "the workload left too few rows to check");
    cr_assert_geq(ps_shard_client_seq(s, 1), m.client_seq[1]);
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

/* ---- identity and schema checks -------------------------------------------------------- */

static void expect_open_fails(const ps_config *cfg, uint32_t id, const char *needle1,
                              const char *needle2) {
    ps_shard_options so = {.shard_id = id, .data_dir = datadir};
    char err[512] = "";
    ps_shard *s = (ps_shard *)0x1;
    int r = ps_shard_open(cfg, &so, &s, err, sizeof(err));
    cr_assert_eq(r, PS_ECONFIG, "open succeeded or failed otherwise (%d): %s", r, err);
    cr_assert_eq(s, (ps_shard *)0x1, "*ret_shard written on failure");
    cr_assert(strstr(err, needle1), "'%s' lacks '%s'", err, needle1);
    if (needle2)
        cr_assert(strstr(err, needle2), "'%s' lacks '%s'", err, needle2);
}

Test(shard, another_shard_or_a_changed_layout_cannot_open_the_data) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    ps_shard *s = open_shard(cfg, 0);
    model m;
    model_init(&m, cfg);
    run_pushes(s, 0, 10, &m, false);
    cr_assert_eq(ps_shard_close(s), 0);

    expect_open_fails(cfg, 1, "shard=0", "shard=1");

    ps_config *dim8 = load_config((cfg_opts){.emb_dim = 8});
    expect_open_fails(dim8, 0, "emb", "dim=8");
    ps_config_free(dim8);

    ps_config *gl = load_config((cfg_opts){.emb_optimizer = "ftrl_group_lasso"});
    expect_open_fails(gl, 0, "emb", "ftrl_group_lasso");
    ps_config_free(gl);

    ps_config *b128 = load_config((cfg_opts){.buckets = 128});
    expect_open_fails(b128, 0, "buckets=64", "buckets=128");
    ps_config_free(b128);

    /* None of the refusals damaged anything, or left the store locked. */
    s = open_shard(cfg, 0);
    expect_model(s, &m);
    cr_assert_eq(ps_shard_close(s), 0);

    /* Adding a table is allowed and keeps the others' rows. */
    ps_config *more = load_config((cfg_opts){.extra_table = true});
    s = open_shard(more, 0);
    cr_assert_eq(ps_shard_ntables(s), 3);
    model m2 = m;
    m2.emb_cfg = ps_config_table(more, "emb");
    m2.wide_cfg = ps_config_table(more, "wide");
    expect_model(s, &m2);
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(more);
    ps_config_free(cfg);
}

Test(shard, owns_all) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    ps_shard *s = open_shard(cfg, 0);
    cr_assert(ps_shard_owns_all(s, emb_key, NEMB));
    cr_assert(ps_shard_owns_all(s, NULL, 0));
    uint64_t foreign = 0;
    for (uint64_t k = 1; !foreign; k++)
        if (ps_key_owner(k, 64, 2) == 1)
            foreign = k;
    uint64_t mixed[3] = {emb_key[0], foreign, emb_key[1]};
    cr_assert_not(ps_shard_owns_all(s, mixed, 3));
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

/* ---- feature lifecycle under replay ------------------------------------------------------ */

/* The workload of spec_of() with admission and expiry on the emb table and
 * a fake table clock one second per push, far past the wall clock (the
 * shard's own clock updates are then ignored: the table clock never goes
 * back). Some pushes are rejected, some rows expire and come back. After
 * kill -9 and replay, every decision must come out the same: the recovered
 * table equals the one of a run without the crash, bit for bit. */
#define LIFECYCLE "admit_after = 2\nadmit_probability = 0.7\nadmit_bloom_bits = 4096\nttl_s = 12\n"

static uint32_t lifecycle_base;

static void set_clocks(ps_shard *s, uint32_t i) {
    for (size_t t = 0; t < ps_shard_ntables(s); t++)
        ps_table_set_clock(ps_shard_table_at(s, t), lifecycle_base + i);
}

static void lifecycle_pushes(ps_shard *s, uint32_t from, uint32_t to, bool in_child) {
    for (uint32_t i = from; i < to; i++) {
        set_clocks(s, i);
        push_spec p = spec_of(i);
        ps_push_result res;
        char err[512] = "";
        int r = do_push(s, &p, &res, err, sizeof(err));
        bool ok = r == 0 && !res.already_applied && res.applied + res.rejected == p.n &&
                  ps_shard_commit(s) == 0;
        if (in_child)
            child_check(ok, 10, "push %u: %d %s", i, r, err);
        else
            cr_assert(ok, "push %u: %d %s", i, r, err);
    }
}

typedef struct snapshot {
    uint8_t found[NEMB];
    float state[NEMB][3 * DIM];
    ps_table_stats st;
} snapshot;

static void take_snapshot(ps_shard *s, snapshot *ret) {
    ps_table *emb = ps_shard_table(s, "emb");
    char err[512] = "";
    for (size_t i = 0; i < NEMB; i++) {
        float w[DIM];
        cr_assert_eq(ps_table_lookup(emb, &emb_key[i], 1, &ret->found[i], w, ret->state[i], err,
                                     sizeof(err)),
                     0, "%s", err);
    }
    ps_table_stats_get(emb, &ret->st);
}

typedef struct lifecycle_args {
    const ps_config *cfg;
    uint32_t npush, flush_after;
} lifecycle_args;

static void lifecycle_child(void *arg) {
    lifecycle_args *a = arg;
    ps_shard_options so = {.shard_id = 0, .data_dir = datadir};
    char err[512] = "";
    ps_shard *s = NULL;
    child_check(ps_shard_open(a->cfg, &so, &s, err, sizeof(err)) == 0, 2, "open: %s", err);
    lifecycle_pushes(s, 0, a->flush_after, true);
    child_check(ps_shard_flush_sync(s, err, sizeof(err)) == 0, 5, "flush: %s", err);
    lifecycle_pushes(s, a->flush_after, a->npush, true);
    _exit(0);
}

static void lifecycle_replay(cfg_opts o, bool expect_make_room) {
    make_keys();
    lifecycle_base = (uint32_t)time(NULL) + 10000000u;
    o.emb_extra = LIFECYCLE;
    ps_config *cfg = load_config(o);
    enum { NPUSH = 120, FLUSH_AFTER = 50 };

    /* The reference: the same pushes, no crash. */
    snprintf(datadir, sizeof(datadir), "%s/reference", root);
    ps_shard *s = open_shard(cfg, 0);
    lifecycle_pushes(s, 0, NPUSH, false);
    snapshot ref;
    take_snapshot(s, &ref);
    cr_assert_gt(ref.st.rejected, 10, "admission rejected nothing: the test would prove nothing");
    cr_assert_gt(ref.st.admitted, 10);
    cr_assert_gt(ref.st.expired, 5, "nothing expired: the test would prove nothing");
    size_t live = 0;
    for (size_t i = 0; i < NEMB; i++)
        live += ref.found[i];
    cr_assert(live > 5 && live < NEMB, "%zu live rows", live);
    cr_assert_eq(ref.st.rows, live, "the live-row count");
    if (expect_make_room)
        cr_assert_gt(counters(s).make_room_flushes, 0, "the memory tier never filled");
    cr_assert_eq(ps_shard_close(s), 0);

    /* The crash: a write-back after FLUSH_AFTER pushes, kill -9 at the end. */
    snprintf(datadir, sizeof(datadir), "%s/crashed", root);
    lifecycle_args a = {cfg, NPUSH, FLUSH_AFTER};
    in_crashing_child(lifecycle_child, &a);
    s = open_shard(cfg, 0);
    if (!expect_make_room)
        cr_assert_eq(counters(s).replayed_records, NPUSH - FLUSH_AFTER);
    snapshot got;
    take_snapshot(s, &got);
    for (size_t i = 0; i < NEMB; i++) {
        cr_assert_eq(got.found[i], ref.found[i], "emb key %zu: found %d after replay, %d without crash",
                     i, got.found[i], ref.found[i]);
        if (ref.found[i])
            cr_assert(!memcmp(got.state[i], ref.state[i], sizeof(ref.state[i])),
                      "emb key %zu: state differs after replay", i);
    }
    cr_assert_eq(got.st.rows, ref.st.rows, "live rows after replay");
    for (size_t t = 0; t < ps_shard_ntables(s); t++)
        cr_assert_eq(ps_table_clock(ps_shard_table_at(s, t)), lifecycle_base + NPUSH - 1,
                     "replay restores the clock of the last push, in every table");

    /* Both go on alike: the filter and the trial count came back too. */
    lifecycle_pushes(s, NPUSH, NPUSH + 40, false);
    take_snapshot(s, &got);
    cr_assert_eq(ps_shard_close(s), 0);
    snprintf(datadir, sizeof(datadir), "%s/reference", root);
    s = open_shard(cfg, 0);
    lifecycle_pushes(s, NPUSH, NPUSH + 40, false);
    take_snapshot(s, &ref);
    cr_assert_eq(ps_shard_close(s), 0);
    for (size_t i = 0; i < NEMB; i++) {
        cr_assert_eq(got.found[i], ref.found[i], "emb key %zu after more pushes", i);
        if (ref.found[i])
            cr_assert(!memcmp(got.state[i], ref.state[i], sizeof(ref.state[i])), "emb key %zu", i);
    }
    ps_config_free(cfg);
}

Test(shard, admission_and_expiry_decide_the_same_after_kill9_and_replay) {
    lifecycle_replay((cfg_opts){0}, false);
}

Test(shard, admission_and_expiry_replay_through_a_full_memory_tier) {
    lifecycle_replay((cfg_opts){.emb_memory_rows = 16}, true);
}

/* ---- moving a range: the record of changed rows --------------------------------- */

typedef struct changed_rows {
    uint64_t fid[NEMB];
    float w[NEMB][DIM];
    size_t len[NEMB];
    size_t n;
} changed_rows;

static int collect_changed(void *ctx, uint64_t fid, const void *value, size_t len) {
    changed_rows *c = ctx;
    cr_assert_lt(c->n, NEMB);
    c->fid[c->n] = fid;
    c->len[c->n] = len;
    if (len) /* the stored value: a 16-byte header, then the state, weights first */
        memcpy(c->w[c->n], (const char *)value + 16, sizeof(c->w[0]));
    c->n++;
    return 0;
}

/* One whole catch-up round, its first page asked twice (a resent request
 * pages the same round again); returns the changes recorded meanwhile. */
static uint64_t changed_round(ps_shard *s, uint32_t lo, uint32_t hi, uint32_t round,
                              changed_rows *out) {
    uint32_t ti = 0;
    uint64_t off = 0, pending = 0;
    bool done = false;
    char err[512] = "";
    for (int k = 0; k < 2; k++) {
        memset(out, 0, sizeof(*out));
        ti = 0, off = 0;
        cr_assert_eq(ps_shard_move_changed(s, lo, hi, round, &ti, &off, 5, collect_changed, out,
                                           &done, &pending, err, sizeof(err)),
                     0, "%s", err);
    }
    while (!done)
        cr_assert_eq(ps_shard_move_changed(s, lo, hi, round, &ti, &off, 5, collect_changed, out,
                                           &done, &pending, err, sizeof(err)),
                     0, "%s", err);
    return pending;
}

/* A range being copied away: a catch-up round brings exactly the rows that
 * pushes changed in it since the previous round, once each, as they are
 * now; the record ends with thaw(), and only one range is copied at once. */
Test(shard, a_copied_range_records_the_rows_pushes_change) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    ps_shard *s = open_shard(cfg, 0);
    ps_table *emb = ps_shard_table(s, "emb");
    char err[512] = "";
    uint64_t tid = 0, est = 0;
    uint32_t lo = 0, hi = 16; /* of the buckets 0-31 shard 0 owns */
    cr_assert_eq(ps_shard_track(s, 32, 40, &tid, &est, err, sizeof(err)), PS_EWRONG_SHARD);
    cr_assert_eq(ps_shard_track(s, lo, hi, &tid, &est, err, sizeof(err)), 0, "%s", err);
    cr_assert_neq(tid, 0);
    cr_assert_eq(ps_shard_track_id(s), tid);
    uint64_t other;
    cr_assert_eq(ps_shard_track(s, 16, 20, &other, &est, err, sizeof(err)), PS_EPROTO,
                 "a second range is refused while one is copied");
    cr_assert_eq(ps_shard_freeze(s, 16, 20, false, err, sizeof(err)), PS_EPROTO);

    /* Every key pushed twice: each comes once, with its latest value. */
    float g[NEMB * DIM];
    for (size_t i = 0; i < NEMB * DIM; i++)
        g[i] = 0.01f * (float)(i % 7) - 0.02f;
    ps_push_result res;
    for (int k = 0; k < 2; k++)
        cr_assert_eq(ps_shard_push(s, emb, emb_key, NEMB, g, 0, 0, &res, err, sizeof(err)), 0, "%s",
                     err);
    size_t inside = 0;
    for (size_t i = 0; i < NEMB; i++)
        inside += ps_bucket(emb_key[i], 64) < hi;
    cr_assert_gt(inside, 0);
    cr_assert_lt(inside, NEMB, "some keys must lie outside the range");
    changed_rows c;
    cr_assert_eq(changed_round(s, lo, hi, 1, &c), 0);
    cr_assert_eq(c.n, inside);
    for (size_t j = 0; j < c.n; j++) {
        cr_assert_lt(ps_bucket(c.fid[j], 64), hi);
        cr_assert_eq(c.len[j], 16 + 3 * DIM * sizeof(float), "FTRL stores w, z, n");
        uint8_t found;
        float w[DIM];
        cr_assert_eq(ps_table_lookup(emb, &c.fid[j], 1, &found, w, NULL, err, sizeof(err)), 0);
        cr_assert(found);
        cr_assert_arr_eq(w, c.w[j], sizeof(w));
    }
    /* Nothing new: an empty round. One key pushed during it: the next
     * round's only row. */
    cr_assert_eq(changed_round(s, lo, hi, 2, &c), 0);
    cr_assert_eq(c.n, 0);
    uint64_t key = c.fid[0];
    for (size_t i = 0; i < NEMB; i++)
        if (ps_bucket(emb_key[i], 64) < hi)
            key = emb_key[i];
    cr_assert_eq(ps_shard_push(s, emb, &key, 1, g, 0, 0, &res, err, sizeof(err)), 0);
    cr_assert_eq(changed_round(s, lo, hi, 3, &c), 0);
    cr_assert_eq(c.n, 1);
    cr_assert_eq(c.fid[0], key);

    uint32_t ti = 0;
    uint64_t off = 0, pending;
    bool done;
    cr_assert_eq(ps_shard_move_changed(s, lo, hi, 5, &ti, &off, 5, collect_changed, &c, &done,
                                       &pending, err, sizeof(err)),
                 PS_EPROTO, "a round skipped");
    /* Slowed: every push into the range pauses its connection for the
     * level's time (and is counted), none outside it, and no throttle
     * without the copy. */
    cr_assert_eq(ps_shard_throttle_ms(s, &key, 1), 0, "no throttle before one is set");
    for (uint32_t level = 1; level <= 3; level++) {
        cr_assert_eq(ps_shard_set_throttle(s, lo, hi, level, err, sizeof(err)), 0, "%s", err);
        for (int i = 0; i < 2; i++)
            cr_assert_eq(ps_shard_throttle_ms(s, &key, 1), PS_THROTTLE_MS[level]);
    }
    cr_assert(PS_THROTTLE_MS[1] > 0 && PS_THROTTLE_MS[1] < PS_THROTTLE_MS[2] &&
              PS_THROTTLE_MS[2] < PS_THROTTLE_MS[3]);
    cr_assert_eq(counters(s).pushes_throttled, 6);
    uint64_t outside = c.fid[0];
    for (size_t i = 0; i < NEMB; i++)
        if (ps_bucket(emb_key[i], 64) >= hi)
            outside = emb_key[i];
    cr_assert_eq(ps_shard_throttle_ms(s, &outside, 1), 0);
    cr_assert_eq(ps_shard_thaw(s, err, sizeof(err)), 0);
    cr_assert_eq(ps_shard_track_id(s), 0);
    cr_assert_eq(ps_shard_throttle_ms(s, &key, 1), 0, "the throttle ends with the copy");
    cr_assert_eq(counters(s).pushes_throttled, 6);
    cr_assert_eq(ps_shard_set_throttle(s, lo, hi, 2, err, sizeof(err)), PS_EPROTO);
    cr_assert_eq(ps_shard_move_changed(s, lo, hi, 4, &ti, &off, 5, collect_changed, &c, &done,
                                       &pending, err, sizeof(err)),
                 PS_EPROTO, "no record after thaw");
    cr_assert_eq(counters(s).moves_started, 1);
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

/* A fence stores the freeze and goes on serving the range; a restart
 * comes back with it frozen; the freeze after a fence writes nothing, and
 * thaw() ends both. */
Test(shard, a_fenced_range_is_served_until_frozen_and_a_restart_freezes_it) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    ps_shard *s = open_shard(cfg, 0);
    char err[512] = "";
    uint64_t key = emb_key[0];
    uint32_t b = ps_bucket(key, 64), lo, hi;
    cr_assert_eq(ps_shard_freeze(s, b, b + 1, true, err, sizeof(err)), 0, "%s", err);
    cr_assert_not(ps_shard_touches_frozen(s, &key, 1), "a fenced range is still served");
    cr_assert_not(ps_shard_frozen(s, &lo, &hi));
    cr_assert_eq(ps_shard_freeze(s, b + 1, b + 2, true, err, sizeof(err)), PS_EPROTO,
                 "another range is refused while one is fenced");
    cr_assert_eq(ps_shard_close(s), 0);

    s = open_shard(cfg, 0);
    cr_assert(ps_shard_touches_frozen(s, &key, 1), "the fence comes back as a freeze");
    cr_assert(ps_shard_frozen(s, &lo, &hi));
    cr_assert_eq(lo, b);
    cr_assert_eq(hi, b + 1);
    cr_assert_eq(ps_shard_thaw(s, err, sizeof(err)), 0, "%s", err);
    cr_assert_not(ps_shard_touches_frozen(s, &key, 1));
    cr_assert_eq(ps_shard_freeze(s, b, b + 1, true, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_shard_freeze(s, b, b + 1, false, err, sizeof(err)), 0, "%s", err);
    cr_assert(ps_shard_touches_frozen(s, &key, 1), "frozen after the fence");
    cr_assert_eq(ps_shard_thaw(s, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_shard_close(s), 0);

    s = open_shard(cfg, 0);
    cr_assert_not(ps_shard_touches_frozen(s, &key, 1), "thawed for good");
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

/* A held shard begins no periodic write-back until the hold ends or a new
 * map comes; a held shard says whether one is running. */
Test(shard, a_hold_keeps_periodic_write_backs_from_beginning) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    ps_shard *s = open_shard(cfg, 0);
    char err[512] = "";
    push_spec p = spec_of(0);
    ps_push_result res;
    cr_assert_eq(do_push(s, &p, &res, err, sizeof(err)), 0, "%s", err);
    uint64_t flushes = counters(s).flushes;
    cr_assert_not(ps_shard_hold_writeback(s, 7200 * 1000), "nothing runs yet");
    for (int i = 0; i < 20; i++) {
        ps_shard_tick(s, now_ms() + 3600 * 1000);
        usleep(1000);
    }
    cr_assert_eq(counters(s).flushes, flushes, "a write-back began during the hold");
    ps_shard_hold_writeback(s, 0);
    for (int i = 0; i < 5000 && counters(s).flushes == flushes; i++) {
        ps_shard_tick(s, now_ms() + 3600 * 1000);
        usleep(1000);
    }
    cr_assert_gt(counters(s).flushes, flushes, "no write-back after the hold");
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

/* Sequence numbers adopted with a range (a move's last page) are durable
 * at once, without a write-back: a crash right after keeps them, a later
 * write-back takes them into its own records, and a later adoption of
 * the same buckets wins. */
static void adopt_and_crash(void *arg) {
    const ps_config *cfg = arg;
    ps_shard *s = open_in_child(cfg);
    char err[512] = "";
    uint64_t ids[2] = {7, 9}, seqs[2 * 4] = {11, 12, 13, 14, 101, 102, 103, 104};
    child_check(ps_shard_adopt_seqs(s, 40, 44, ids, seqs, NULL, 2, err, sizeof(err)) == 0, 3, "adopt: %s",
                err);
    uint64_t later[1 * 2] = {15, 16};
    child_check(ps_shard_adopt_seqs(s, 40, 42, ids, later, NULL, 1, err, sizeof(err)) == 0, 4,
                "adopt: %s", err);
    _exit(0); /* no close, no write-back */
}

/* Client id's numbers for buckets [lo, hi): the highest of each, and its
 * mask unless want_masks is NULL. */
static void expect_windows(ps_shard *s, uint32_t lo, uint32_t hi, uint64_t id, const uint64_t *want,
                           const uint64_t *want_masks) {
    uint64_t *ids, *seqs, *masks;
    size_t n;
    cr_assert_eq(ps_shard_move_seqs(s, lo, hi, &ids, &seqs, &masks, &n), 0);
    size_t i = 0;
    while (i < n && ids[i] != id)
        i++;
    cr_assert_lt(i, n, "client %llu has no sequence numbers", (unsigned long long)id);
    for (uint32_t b = 0; b < hi - lo; b++) {
        cr_assert_eq(seqs[i * (hi - lo) + b], want[b], "client %llu, bucket %u",
                     (unsigned long long)id, lo + b);
        if (want_masks)
            cr_assert_eq(masks[i * (hi - lo) + b], want_masks[b],
                         "client %llu, bucket %u: mask %#llx", (unsigned long long)id, lo + b,
                         (unsigned long long)masks[i * (hi - lo) + b]);
    }
    free(ids);
    free(seqs);
    free(masks);
}

static void expect_seqs(ps_shard *s, uint32_t lo, uint32_t hi, uint64_t id, const uint64_t *want) {
    expect_windows(s, lo, hi, id, want, NULL);
}

Test(shard, adopted_sequence_numbers_survive_a_crash_without_a_write_back) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    in_crashing_child(adopt_and_crash, cfg);
    ps_shard *s = open_shard(cfg, 0);
    expect_seqs(s, 40, 44, 7, (uint64_t[]){15, 16, 13, 14});
    expect_seqs(s, 40, 44, 9, (uint64_t[]){101, 102, 103, 104});
    cr_assert_eq(ps_shard_client_seq(s, 9), 104);
    char err[512] = "";
    cr_assert_eq(ps_shard_flush_sync(s, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_shard_close(s), 0);
    s = open_shard(cfg, 0); /* from the write-back's records now */
    expect_seqs(s, 40, 44, 7, (uint64_t[]){15, 16, 13, 14});
    expect_seqs(s, 40, 44, 9, (uint64_t[]){101, 102, 103, 104});
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

/* One key of table emb pushed by `client` under `seq`. */
static ps_push_result push_key(ps_shard *s, uint64_t key, uint64_t client, uint64_t seq) {
    float g[DIM] = {0.5f, -0.25f, 0.125f, 1.0f};
    ps_push_result res;
    char err[512] = "";
    cr_assert_eq(ps_shard_push(s, ps_shard_table(s, "emb"), &key, 1, g, client, seq, &res, err,
                               sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(ps_shard_commit(s), 0);
    return res;
}

static uint64_t key_a, key_b;    /* emb keys of two buckets */

/* key_a and key_b: emb keys of two buckets, *ret_ba and *ret_bb. */
static void pick_two_buckets(const ps_config *cfg, uint32_t *ret_ba, uint32_t *ret_bb) {
    uint32_t nb = cfg->buckets;
    key_a = emb_key[0];
    size_t j = 1;
    while (ps_bucket(emb_key[j], nb) == ps_bucket(key_a, nb))
        j++;
    key_b = emb_key[j];
    *ret_ba = ps_bucket(key_a, nb);
    *ret_bb = ps_bucket(key_b, nb);
}

static void write_back_and_crash(void *arg) {
    const ps_config *cfg = arg;
    ps_shard *s = open_in_child(cfg);
    char err[512] = "";
    ps_push_result res = push_key(s, key_a, 7, 20);
    child_check(res.applied == 1, 3, "seq 20 not applied to key a");
    child_check(ps_shard_flush_sync(s, err, sizeof(err)) == 0, 4, "write-back: %s", err);
    _exit(0); /* no close */
}

/* A bucket keeps its own sequence numbers through a restart: with the
 * write-back in groups (durability = sync), a bucket that never saw a
 * seq of a client does not take the client's highest at the open. A push
 * part re-routed after WRONG_SHARD (a move's cut-over) reaches the new
 * owner under a seq that shard may have applied to its other buckets;
 * taking it for a repeat lost that part (integration_reshard, a target
 * restarted after adopting a range). After a clean close, and after a
 * kill -9 that followed a write-back. */
Test(shard, a_restart_keeps_each_buckets_own_sequence_numbers) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    uint32_t ba, bb;
    pick_two_buckets(cfg, &ba, &bb);
    ps_shard *s = open_shard(cfg, 0);
    cr_assert_eq(push_key(s, key_a, 7, 10).applied, 1);
    cr_assert_eq(ps_shard_close(s), 0);

    s = open_shard(cfg, 0);
    expect_seqs(s, ba, ba + 1, 7, (uint64_t[]){10});
    expect_seqs(s, bb, bb + 1, 7, (uint64_t[]){0});
    ps_push_result res = push_key(s, key_b, 7, 10);
    cr_assert(!res.already_applied, "seq 10 taken as applied in bucket %u, which never saw it", bb);
    cr_assert_eq(res.applied, 1);
    cr_assert(push_key(s, key_a, 7, 10).already_applied);
    cr_assert_eq(ps_shard_close(s), 0);

    in_crashing_child(write_back_and_crash, cfg);
    s = open_shard(cfg, 0);
    expect_seqs(s, ba, ba + 1, 7, (uint64_t[]){20});
    expect_seqs(s, bb, bb + 1, 7, (uint64_t[]){10});
    res = push_key(s, key_b, 7, 20);
    cr_assert(!res.already_applied, "seq 20 taken as applied in bucket %u after kill -9", bb);
    cr_assert_eq(res.applied, 1);
    cr_assert_eq(ps_shard_client_seq(s, 7), 20);
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

static void overtaken_and_crash(void *arg) {
    const ps_config *cfg = arg;
    ps_shard *s = open_in_child(cfg);
    child_check(push_key(s, key_a, 8, 30).applied == 1, 3, "seq 30 not applied");
    child_check(push_key(s, key_a, 8, 28).applied == 1, 4, "seq 28, overtaken by 30, not applied");
    _exit(0); /* no write-back: replay brings both */
}

/* A push overtaken by a later one of its client (resent after its answer
 * was lost with the connection, or after a READ_ONLY refusal while the
 * next one was on the wire) is applied once, not taken for a repeat: each
 * bucket keeps which of the 64 numbers below its highest it applied.
 * Through a clean restart (the write-back's records), a kill -9 (push-log
 * replay), and an adoption of the bucket's numbers by a move. */
Test(shard, a_push_overtaken_by_a_later_one_is_applied_once) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    uint32_t ba, bb;
    pick_two_buckets(cfg, &ba, &bb);
    ps_shard *s = open_shard(cfg, 0);
    cr_assert_eq(push_key(s, key_a, 8, 12).applied, 1);
    cr_assert_eq(push_key(s, key_a, 8, 10).applied, 1, "seq 10, overtaken by 12, taken for a repeat");
    cr_assert(push_key(s, key_a, 8, 10).already_applied);
    cr_assert(push_key(s, key_a, 8, 12).already_applied);
    expect_windows(s, ba, ba + 1, 8, (uint64_t[]){12}, (uint64_t[]){1u << 1});
    cr_assert_eq(ps_shard_close(s), 0);

    s = open_shard(cfg, 0);
    expect_windows(s, ba, ba + 1, 8, (uint64_t[]){12}, (uint64_t[]){1u << 1});
    cr_assert(push_key(s, key_a, 8, 10).already_applied, "after a restart");
    cr_assert(push_key(s, key_a, 8, 12).already_applied, "after a restart");
    cr_assert_eq(push_key(s, key_a, 8, 11).applied, 1, "seq 11, never applied, after a restart");
    cr_assert_eq(ps_shard_close(s), 0);

    in_crashing_child(overtaken_and_crash, cfg);
    s = open_shard(cfg, 0);
    uint64_t mask = 1u << 1 | 1u << 17 | 1u << 18 | 1u << 19; /* 28; 12, 11, 10 */
    expect_windows(s, ba, ba + 1, 8, (uint64_t[]){30}, (uint64_t[]){mask});
    cr_assert(push_key(s, key_a, 8, 30).already_applied, "after kill -9 and replay");
    cr_assert(push_key(s, key_a, 8, 28).already_applied, "after kill -9 and replay");
    cr_assert(push_key(s, key_a, 8, 11).already_applied, "after kill -9 and replay");
    cr_assert_eq(push_key(s, key_a, 8, 29).applied, 1, "seq 29, never applied, after kill -9");
    mask |= 1u << 0;

    /* Bucket a's window adopted for bucket b (as a move's target takes
     * it): the same numbers are repeats there, the others new. Without
     * masks (a peer from before them), every number below is a repeat. */
    uint64_t ids[1] = {8}, seqs[1] = {30}, masks[1] = {mask};
    char err[512] = "";
    cr_assert_eq(ps_shard_adopt_seqs(s, bb, bb + 1, ids, seqs, masks, 1, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert(push_key(s, key_b, 8, 28).already_applied, "adopted: seq 28 was applied");
    cr_assert_eq(push_key(s, key_b, 8, 27).applied, 1, "adopted: seq 27 never was");
    cr_assert_eq(ps_shard_adopt_seqs(s, bb, bb + 1, ids, seqs, NULL, 1, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert(push_key(s, key_b, 8, 26).already_applied, "adopted without masks");
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

/* One dense push of block "d" (4 floats) by client 9 under seq. */
static bool dense_push_seq(ps_shard *s, uint64_t seq) {
    const char *name = "d";
    float g[4] = {0.25f, -0.5f, 1.0f, 0.125f};
    const float *gp = g;
    size_t len = 4;
    bool already;
    char err[512] = "";
    cr_assert_eq(ps_shard_dense_push(s, 1, &name, &gp, &len, 9, seq, &already, err, sizeof(err)), 0,
                 "%s", err);
    cr_assert_eq(ps_shard_commit(s), 0);
    return already;
}

static void dense_push_and_crash(void *arg) {
    const ps_config *cfg = arg;
    ps_shard *s = open_in_child(cfg);
    child_check(!dense_push_seq(s, 60), 3, "dense seq 60 taken for a repeat");
    _exit(0); /* no close, no write-back: replay brings it */
}

/* Dense pushes are sequenced by the dense pushes a shard applied, not by
 * every number it holds for the client: a move's cut-over adopts the
 * buckets' numbers, which may be past a dense push of the same client not
 * yet arrived (max_in_flight > 0, the home shard restarted); that push was
 * taken for a repeat. Through a clean restart and a kill -9 too. */
Test(shard, adopted_numbers_do_not_sequence_dense_pushes) {
    ps_config *cfg = load_config((cfg_opts){0});
    ps_shard *s = open_shard(cfg, 0);
    const float init[4] = {0, 0, 0, 0}, *w;
    size_t wlen;
    char err[512] = "";
    cr_assert_eq(ps_shard_dense_get(s, "d", init, 4, &w, &wlen, err, sizeof(err)), 0, "%s", err);
    uint64_t ids[1] = {9}, seqs[4] = {50, 50, 50, 50};
    cr_assert_eq(ps_shard_adopt_seqs(s, 40, 44, ids, seqs, NULL, 1, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_shard_client_seq(s, 9), 50, "Hello's last_push_seq counts adopted numbers");
    cr_assert_not(dense_push_seq(s, 40), "dense seq 40 taken for a repeat of adopted seq 50");
    cr_assert(dense_push_seq(s, 40), "a resent dense push");
    cr_assert_not(dense_push_seq(s, 39), "a dense push overtaken by seq 40, not applied yet");
    cr_assert(dense_push_seq(s, 39));
    cr_assert_eq(ps_shard_close(s), 0);

    s = open_shard(cfg, 0);
    cr_assert(dense_push_seq(s, 40), "after a restart, a resent dense push");
    cr_assert(dense_push_seq(s, 39), "after a restart, the overtaken one");
    cr_assert_not(dense_push_seq(s, 38), "after a restart, one never applied");
    cr_assert_not(dense_push_seq(s, 41));
    cr_assert_eq(ps_shard_client_seq(s, 9), 50);
    cr_assert_eq(ps_shard_close(s), 0);

    in_crashing_child(dense_push_and_crash, cfg);
    s = open_shard(cfg, 0);
    cr_assert(dense_push_seq(s, 60), "after kill -9 and replay, a resent dense push");
    cr_assert(dense_push_seq(s, 38), "after kill -9 and replay, the window below it");
    cr_assert_not(dense_push_seq(s, 59));
    cr_assert_not(dense_push_seq(s, 61));
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

/* The rows of one export pass of [lo, hi), table emb only (keys and their
 * stored values, copied). */
typedef struct exported {
    size_t n;
    uint64_t fid[NEMB];
    char value[NEMB][64];
    size_t len[NEMB];
} exported;

static int collect_export(void *ctx, uint64_t fid, const void *value, size_t len) {
    exported *e = ctx;
    cr_assert_lt(e->n, NEMB);
    cr_assert_leq(len, sizeof(e->value[0]));
    e->fid[e->n] = fid;
    memcpy(e->value[e->n], value, len);
    e->len[e->n] = len;
    e->n++;
    return 0;
}

static size_t files_in(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    size_t n = 0;
    for (struct dirent *de; (de = readdir(d));)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

static uint64_t rows_of(ps_table *t) {
    ps_table_stats st;
    ps_table_stats_get(t, &st);
    return st.rows;
}

/* A stepped drop of a range whose rows are dirty (pushed before the map
 * gave it away) writes them back on the write-back thread, answering "more"
 * meanwhile, then drops them: out of the count, the store and memory; and
 * it answers "done" only once a write-back has stored the counts it
 * changed: the shard, killed (no close, no last write-back) right after,
 * reopens with them. */
typedef struct stepped_drop_args {
    const ps_config *cfg;
    uint64_t moved;              /* out of the child: through a pipe */
    int fd;
} stepped_drop_args;

static void stepped_drop_child(void *arg) {
    stepped_drop_args *a = arg;
    ps_shard *s = open_shard(a->cfg, 0);
    ps_table *emb = ps_shard_table(s, "emb");
    char err[512] = "";
    float g[DIM];
    for (size_t i = 0; i < DIM; i++)
        g[i] = 0.01f;
    ps_push_result res;
    uint64_t moved = 0;
    for (size_t i = 0; i < NEMB; i++) {
        child_check(ps_shard_push(s, emb, &emb_key[i], 1, g, 0, 0, &res, err, sizeof(err)) == 0, 2,
                    "push: %s", err);
        moved += ps_bucket(emb_key[i], 64) < 16;
    }
    child_check(moved > 0, 3, "no key in buckets 0-15");
    ps_cluster_map m;
    child_check(ps_cluster_map_copy(ps_shard_map(s), &m) == 0, 4, "map copy");
    m.version++;
    for (uint32_t b = 0; b < 16; b++)
        m.owner[b] = 1;
    child_check(ps_shard_set_map(s, &m, err, sizeof(err)) == 0, 5, "set map: %s", err);
    ps_cluster_map_deinit(&m);
    bool more = true;
    uint64_t dropped = 0;
    int calls = 0;
    while (more && calls < 100000) {
        child_check(ps_shard_drop(s, 0, 16, 1000, &more, &dropped, err, sizeof(err)) == 0, 6,
                    "drop: %s", err);
        child_check(calls++ > 0 || more, 7, "dirty rows: a write-back first");
        usleep(100);
    }
    child_check(!more, 8, "the drop never ended");
    child_check(dropped == moved, 9, "%llu rows dropped, %llu moved", (unsigned long long)dropped,
                (unsigned long long)moved);
    child_check(rows_of(emb) == NEMB - moved, 10, "rows counted: %llu",
                (unsigned long long)rows_of(emb));
    uint8_t found[NEMB];
    float w[NEMB * DIM];
    child_check(ps_table_lookup(emb, emb_key, NEMB, found, w, NULL, err, sizeof(err)) == 0, 11,
                "lookup: %s", err);
    for (size_t i = 0; i < NEMB; i++)
        child_check(found[i] == (ps_bucket(emb_key[i], 64) >= 16), 12, "key %zu", i);
    child_check(write(a->fd, &moved, sizeof(moved)) == sizeof(moved), 13, "pipe");
    _exit(0); /* kill -9: no close, no last write-back */
}

Test(shard, a_stepped_drop_of_dirty_rows_writes_back_off_the_loop) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    stepped_drop_args a = {.cfg = cfg, .fd = fds[1]};
    in_crashing_child(stepped_drop_child, &a);
    cr_assert_eq(read(fds[0], &a.moved, sizeof(a.moved)), (ssize_t)sizeof(a.moved));
    close(fds[0]);
    close(fds[1]);
    ps_shard *s = open_shard(cfg, 0);
    ps_table *emb = ps_shard_table(s, "emb");
    char err[512] = "";
    cr_assert_eq(rows_of(emb), NEMB - a.moved, "the counts the drop changed were stored");
    uint8_t found[NEMB];
    float w[NEMB * DIM];
    cr_assert_eq(ps_table_lookup(emb, emb_key, NEMB, found, w, NULL, err, sizeof(err)), 0);
    for (size_t i = 0; i < NEMB; i++)
        cr_assert_eq(found[i], ps_bucket(emb_key[i], 64) >= 16, "key %zu", i);
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

static int drop_all(ps_shard *s, uint32_t lo, uint32_t hi, char *err, size_t errlen) {
    bool more;
    return ps_shard_drop(s, lo, hi, 0, &more, NULL, err, errlen);
}

/* Shard 0 (buckets 0-31) with a row for every emb key, its whole range
 * tracked for a copy, as a move's source. */
static ps_shard *open_tracked_source(const ps_config *cfg) {
    char err[512] = "";
    ps_shard *s = open_shard(cfg, 0);
    float g[NEMB * DIM];
    for (size_t i = 0; i < NEMB * DIM; i++)
        g[i] = 0.01f * (float)(i % 5) - 0.02f;
    ps_push_result res;
    cr_assert_eq(ps_shard_push(s, ps_shard_table(s, "emb"), emb_key, NEMB, g, 0, 0, &res, err,
                               sizeof(err)),
                 0, "%s", err);
    uint64_t tid, est;
    cr_assert_eq(ps_shard_track(s, 0, 32, &tid, &est, err, sizeof(err)), 0, "%s", err);
    return s;
}

/* The next EXPORT page of buckets 0-31 after the cursor, 5 rows at most,
 * into ex (asked again while the source waits for its write-back). */
static void export_page(ps_shard *s, uint32_t *ti, uint8_t *after, size_t *alen, exported *ex,
                        bool *done) {
    char err[512] = "";
    ex->n = 0;
    for (int i = 0; !ex->n && !*done && i < 5000; i++) { /* empty until the write-back ends */
        cr_assert_eq(ps_shard_move_export(s, 0, 32, ti, after, alen, 5, collect_export, ex, done,
                                          err, sizeof(err)),
                     0, "%s", err);
        if (!ex->n)
            usleep(1000);
    }
}

static bool same_page(const exported *a, const exported *b) {
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (a->fid[i] != b->fid[i] || a->len[i] != b->len[i] ||
            memcmp(a->value[i], b->value[i], a->len[i]))
            return false;
    return true;
}

/* The first pass of a copy in pages of 5 rows: one walk goes on from page
 * to page (export_walk_take()), so a page asked for again (a mover that
 * lost the answer) must still be the same page, a pass begun again must
 * begin at the first row, and over the whole pass every row of the range
 * comes exactly once, with its stored value. */
Test(shard, a_first_pass_walks_on_from_page_to_page_and_a_page_asked_again_is_the_same) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    char err[512] = "";
    ps_shard *s = open_tracked_source(cfg);
    ps_table *emb = ps_shard_table(s, "emb");
    uint32_t ti = 0;
    uint8_t after[PS_STORE_KEY_LEN], first_after[PS_STORE_KEY_LEN];
    size_t alen = 0;
    bool done = false;
    exported first, page, again;
    export_page(s, &ti, after, &alen, &first, &done);
    cr_assert_eq(first.n, 5);
    memcpy(first_after, after, sizeof(after));
    /* The second page, then the same cursor again. */
    export_page(s, &ti, after, &alen, &page, &done);
    cr_assert_eq(page.n, 5);
    memcpy(after, first_after, sizeof(after));
    export_page(s, &ti, after, &alen, &again, &done);
    cr_assert(same_page(&page, &again), "the second page asked for again came back different");
    /* From the start again: the first page. */
    ti = 0;
    alen = 0;
    done = false;
    export_page(s, &ti, after, &alen, &again, &done);
    cr_assert(same_page(&first, &again), "a pass begun again did not begin at the first row");
    /* On to the end: each of the range's rows once, as stored. */
    bool seen[NEMB] = {false};
    size_t rows = 0;
    for (exported *p = &again; rows < NEMB + 1; export_page(s, &ti, after, &alen, p, &done)) {
        for (size_t i = 0; i < p->n; i++) {
            size_t k = 0;
            while (k < NEMB && emb_key[k] != p->fid[i])
                k++;
            cr_assert_lt(k, NEMB, "a row that was never pushed");
            cr_assert_lt(ps_bucket(p->fid[i], 64), 32);
            cr_assert_not(seen[k], "row %zu came twice", k);
            seen[k] = true;
            char stored[64];
            bool there = false;
            cr_assert_eq(ps_table_row_value(emb, p->fid[i], stored, &there, err, sizeof(err)), 0);
            cr_assert(there);
            cr_assert_eq(memcmp(stored, p->value[i], p->len[i]), 0);
            rows++;
        }
        if (done)
            break;
    }
    cr_assert(done);
    for (size_t k = 0; k < NEMB; k++)
        cr_assert_eq(seen[k], ps_bucket(emb_key[k], 64) < 32, "row %zu missing", k);
    cr_assert_eq(ps_shard_close(s), 0);
    ps_config_free(cfg);
}

/* The target of a move stages the first pass in an SST file and ingests it
 * at its end: nothing shows before, every row reads back and counts once
 * after (a catch-up page over an ingested row replaces it in the count); a
 * page sent again is not staged twice; a copy the target does not know
 * (another id, ended by a drop, or lost with a restart) is answered
 * PS_ENOT_FOUND; staging files go at the ingest, the drop, close and open. */
Test(shard, a_staged_first_pass_is_ingested_readable_and_counted_once) {
    make_keys();
    ps_config *cfg = load_config((cfg_opts){0});
    char err[512] = "";
    /* Shard 0 (buckets 0-31): rows pushed, then exported as a move does. */
    ps_shard *src = open_tracked_source(cfg);
    exported ex = {0};
    uint32_t ti = 0;
    uint8_t after[PS_STORE_KEY_LEN];
    size_t alen = 0;
    bool done = false;
    /* Only emb has rows; the first page is empty until a write-back ends. */
    for (int i = 0; !done && i < 5000; i++) {
        cr_assert_eq(ps_shard_move_export(src, 0, 32, &ti, after, &alen, NEMB, collect_export, &ex,
                                          &done, err, sizeof(err)),
                     0, "%s", err);
        if (!ex.n)
            usleep(1000);
    }
    cr_assert(done);
    cr_assert_eq(ex.n, NEMB);
    cr_assert_eq(ps_shard_close(src), 0);

    /* Shard 1 (buckets 32-63) takes them, in its own directory. */
    snprintf(datadir, sizeof(datadir), "%s/shard1", root);
    char staging[PS_PATH_MAX + 32];
    snprintf(staging, sizeof(staging), "%s/staging", datadir);
    ps_shard *dst = open_shard(cfg, 1);
    ps_table *demb = ps_shard_table(dst, "emb");
    const void *vals[NEMB];
    for (size_t i = 0; i < NEMB; i++)
        vals[i] = ex.value[i];
    size_t half = NEMB / 2;
    cr_assert_eq(drop_all(dst, 0, 32, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_shard_stage_rows(dst, 77, demb, ex.fid, vals, ex.len, half, err, sizeof(err)),
                 PS_ENOT_FOUND, "no copy staged yet");
    cr_assert_eq(ps_shard_stage_begin(dst, 0, 32, 77, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_shard_stage_rows(dst, 78, demb, ex.fid, vals, ex.len, half, err, sizeof(err)),
                 PS_ENOT_FOUND, "another copy's id");
    for (int k = 0; k < 2; k++) /* the first page, then sent again */
        cr_assert_eq(ps_shard_stage_rows(dst, 77, demb, ex.fid, vals, ex.len, half, err,
                                         sizeof(err)),
                     0, "%s", err);
    cr_assert_eq(ps_shard_stage_rows(dst, 77, demb, ex.fid + half, vals + half, ex.len + half,
                                     NEMB - half, err, sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(files_in(staging), 1, "one staging file for the one table with rows");
    cr_assert_eq(rows_of(demb), 0, "staged rows are not counted before the ingest");
    char stored[64];
    for (size_t i = 0; i < NEMB; i++) {
        bool there = true;
        cr_assert_eq(ps_table_row_value(demb, ex.fid[i], stored, &there, err, sizeof(err)), 0);
        cr_assert(!there, "a staged row read before the ingest");
    }
    cr_assert_eq(ps_shard_stage_ingest(dst, 77, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(files_in(staging), 0, "the staging file is moved into the store");
    cr_assert_eq(rows_of(demb), NEMB);
    ps_table_stats st;
    ps_table_stats_get(demb, &st);
    cr_assert_gt(st.rocksdb_bytes, 0);
    cr_assert_eq(counters(dst).move_rows_received, NEMB + half);
    cr_assert_eq(ps_shard_stage_ingest(dst, 77, err, sizeof(err)), PS_ENOT_FOUND,
                 "the staged copy is over");
    /* A catch-up page over an ingested row: replaced, counted once. */
    char newer[64];
    memcpy(newer, ex.value[3], ex.len[3]);
    float bumped = 42.0f;
    memcpy(newer + 16, &bumped, sizeof(bumped));
    memcpy(ex.value[3], newer, ex.len[3]);
    const void *nv = newer;
    cr_assert_eq(ps_shard_adopt_rows(dst, demb, &ex.fid[3], &nv, &ex.len[3], 1, err, sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(rows_of(demb), NEMB);
    /* Lookups read them (a shard that opened empty reads the store again). */
    uint8_t found[NEMB];
    float w[NEMB * DIM];
    cr_assert_eq(ps_table_lookup(demb, ex.fid, NEMB, found, w, NULL, err, sizeof(err)), 0);
    for (size_t i = 0; i < NEMB; i++) {
        cr_assert(found[i], "row %zu not found after the ingest", i);
        cr_assert_arr_eq(w + i * DIM, ex.value[i] + 16, DIM * sizeof(float));
    }
    cr_assert_eq(w[3 * DIM], 42.0f);

    /* A drop in steps of 3 stored rows: the rows count until the last
     * step, which takes them all out of the count and the store; a drop of
     * another range gives up the one under way, which changed nothing. */
    bool more = true;
    uint64_t dropped = 0;
    cr_assert_eq(ps_shard_drop(dst, 0, 32, 3, &more, &dropped, err, sizeof(err)), 0, "%s", err);
    cr_assert(more);
    uint64_t low = 0;
    cr_assert_eq(ps_shard_drop(dst, 0, 16, 0, &more, &low, err, sizeof(err)), 0, "%s", err);
    cr_assert_not(more);
    cr_assert_gt(low, 0);
    cr_assert_eq(rows_of(demb), NEMB - low, "only buckets 0-15 went");
    int steps = 0;
    more = true;
    while (more) {
        cr_assert_eq(ps_shard_drop(dst, 0, 32, 3, &more, &dropped, err, sizeof(err)), 0, "%s", err);
        steps++;
        if (more && dropped < NEMB - low) /* then the counts' write-back is waited for */
            cr_assert_eq(rows_of(demb), NEMB - low, "counted until the last step");
        usleep(100);
    }
    cr_assert_geq(steps, (NEMB - low) / 3);
    cr_assert_eq(dropped, NEMB - low);
    cr_assert_eq(rows_of(demb), 0);
    cr_assert_eq(ps_table_lookup(demb, ex.fid, NEMB, found, w, NULL, err, sizeof(err)), 0);
    for (size_t i = 0; i < NEMB; i++)
        cr_assert_not(found[i], "row %zu still there after the drop", i);
    /* A drop ends a staged copy and removes its file. */
    cr_assert_eq(ps_shard_stage_begin(dst, 0, 32, 79, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_shard_stage_rows(dst, 79, demb, ex.fid, vals, ex.len, half, err, sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(files_in(staging), 1);
    cr_assert_eq(drop_all(dst, 0, 32, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(files_in(staging), 0);
    cr_assert_eq(ps_shard_stage_ingest(dst, 79, err, sizeof(err)), PS_ENOT_FOUND);
    /* A plain adoption into the staged range ends it too (the file would
     * hide the adopted rows). */
    cr_assert_eq(ps_shard_stage_begin(dst, 0, 32, 80, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_shard_stage_rows(dst, 80, demb, ex.fid, vals, ex.len, half, err, sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(ps_shard_adopt_rows(dst, demb, &ex.fid[half], &vals[half], &ex.len[half], 1, err,
                                     sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(ps_shard_stage_ingest(dst, 80, err, sizeof(err)), PS_ENOT_FOUND);
    cr_assert_eq(files_in(staging), 0);

    /* Lost to a crash: the process dies with a staging file, which the next
     * open removes, and the copy is unknown there. */
    cr_assert_eq(drop_all(dst, 0, 32, err, sizeof(err)), 0, "%s", err);
    /* The drop's compaction runs on the store's thread: a fork while it
     * holds one of RocksDB's locks would leave the child waiting for it
     * forever. A close ends it. */
    cr_assert_eq(ps_shard_close(dst), 0);
    dst = open_shard(cfg, 1);
    demb = ps_shard_table(dst, "emb");
    cr_assert_eq(ps_shard_stage_begin(dst, 0, 32, 81, err, sizeof(err)), 0, "%s", err);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char e[512];
        int r = ps_shard_stage_rows(dst, 81, demb, ex.fid, vals, ex.len, NEMB, e, sizeof(e));
        _exit(r == 0 && files_in(staging) == 1 ? 0 : 1);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child did not stage its rows");
    cr_assert_eq(files_in(staging), 1, "the crashed child's staging file");
    cr_assert_eq(ps_shard_close(dst), 0);
    /* A clean close removes only its own staged copy: the child's file stays. */
    cr_assert_eq(files_in(staging), 1);
    dst = open_shard(cfg, 1);
    cr_assert_eq(files_in(staging), 0, "open removes a crashed copy's staging files");
    demb = ps_shard_table(dst, "emb");
    cr_assert_eq(rows_of(demb), 0);
    cr_assert_eq(ps_shard_stage_rows(dst, 81, demb, ex.fid, vals, ex.len, half, err, sizeof(err)),
                 PS_ENOT_FOUND);
    cr_assert_eq(ps_shard_stage_ingest(dst, 81, err, sizeof(err)), PS_ENOT_FOUND);
    cr_assert_eq(ps_shard_close(dst), 0);
    ps_config_free(cfg);
}
