/* Resharding through the real binaries (README "Resharding").
 *
 * Map epochs: every shard stores the cluster map it serves and survives a
 * kill -9 with it; a client routing by an older map is answered WRONG_SHARD
 * with the shard's epoch, fetches the newer map and resends the refused
 * keys to their owners without failing the call; and the state reached
 * equals the state of the same pushes on a cluster that never changed its
 * map (nothing lost, nothing applied twice). */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "harness.h"
#include "keys.h"
#include "optim_layout.h"

#define BUCKETS 64
#define MOVED_LO 0
#define MOVED_HI 16              /* buckets [MOVED_LO, MOVED_HI) go from shard 0 to 1 */
#define NKEYS 600
#define DIM 4

static const char *body =
    "buckets = 64\n"
    "[server]\ndurability = sync\nflush_interval_ms = 50\n"
    "[table.emb]\ndim = 4\noptimizer = ftrl\nalpha = 0.05\nbeta = 1.0\nlambda1 = 0.001\n"
    "init = normal\ninit_std = 0.01\nslots = C1\n";

static ps_cluster cl, ref;

static void teardown(void) {
    ps_cluster_teardown(&cl, &ref, NULL);
}

static ps_client *client_of(ps_cluster *c) {
    ps_client_options o = {.cfg = c->cfg, .name = "test_reshard", .timeout_ms = 20000};
    ps_client *cli;
    char err[256];
    cr_assert_eq(ps_client_new(&o, &cli, err, sizeof(err)), 0, "%s", err);
    return cli;
}

static uint64_t keys[NKEYS];

static void make_keys(void) {
    for (size_t i = 0; i < NKEYS; i++)
        keys[i] = ps_fid(ps_slot_id("C1"), (char *)&i, sizeof(i));
}

/* The same gradients on every call with the same round. */
static void push_round(ps_client *c, int round) {
    static float grads[NKEYS * DIM];
    for (size_t i = 0; i < NKEYS * DIM; i++)
        grads[i] = (float)((double)(ps_mix64(i * 131 + (uint64_t)round) >> 11) / 9007199254740992.0 - 0.5);
    char err[512];
    uint64_t applied, dropped;
    int rc = ps_client_push(c, "emb", DIM, keys, NKEYS, grads, &applied, &dropped, err, sizeof(err));
    cr_assert_eq(rc, 0, "push round %d: %s", round, err);
    cr_assert_eq(applied, NKEYS, "round %d", round);
}

/* Values and optimizer state of every key, found or not. */
static void read_all(ps_client *c, float *values, float *state, uint32_t width) {
    static uint8_t found[NKEYS];
    char err[512];
    int rc = ps_client_lookup(c, "emb", DIM, width, keys, NKEYS, found, values, state, err, sizeof(err));
    cr_assert_eq(rc, 0, "lookup: %s", err);
    for (size_t i = 0; i < NKEYS; i++)
        cr_assert(found[i], "key %zu not found", i);
}

/* Both clusters hold the same weights and optimizer state for every key. */
static void expect_same(ps_client *c, ps_client *r, const char *when) {
    static float v1[NKEYS * DIM], v2[NKEYS * DIM], s1[NKEYS * 64], s2[NKEYS * 64];
    uint32_t width = ps_optim_state_width(&cl.cfg->tables[0].opt, DIM);
    cr_assert_leq(width, 64);
    read_all(c, v1, s1, width);
    read_all(r, v2, s2, width);
    cr_assert_eq(memcmp(v1, v2, sizeof(v1)), 0, "%s: weights differ from the unmoved cluster's", when);
    cr_assert_eq(memcmp(s1, s2, NKEYS * width * sizeof(float)), 0,
                 "%s: optimizer state differs from the unmoved cluster's", when);
}

/* The map that moves [MOVED_LO, MOVED_HI) to shard 1, at `version`. */
static void moved_map(uint64_t version, ps_cluster_map *ret) {
    cr_assert_eq(ps_cluster_map_from_config(cl.cfg, ret), 0);
    ret->version = version;
    for (uint32_t b = MOVED_LO; b < MOVED_HI; b++)
        ret->owner[b] = 1;
}

static void install(ps_client *admin, int shard, const ps_cluster_map *m) {
    char err[512];
    ps_cluster_map held;
    cr_assert_eq(ps_client_install_map(admin, (uint32_t)shard, m, &held, err, sizeof(err)), 0,
                 "install on shard %d: %s", shard, err);
    cr_assert_eq(held.version, m->version);
    ps_cluster_map_deinit(&held);
}

/* The shards' first map lists the addresses of the config they started
 * from, before their ports were known: epoch 2 lists the real ones. */
static void install_real_addresses(ps_client *c) {
    ps_cluster_map m;
    cr_assert_eq(ps_cluster_map_from_config(cl.cfg, &m), 0);
    m.version = 2;
    for (int i = 0; i < 2; i++)
        install(c, i, &m);
    ps_cluster_map_deinit(&m);
}

/* Which buckets a shard's rows are in: bit b set when some row of bucket b
 * is stored there. */
static uint64_t buckets_on(ps_client *c, uint32_t shard) {
    ps_export_cursor cur = {0};
    uint64_t mask = 0;
    for (;;) {
        ps_export_page page;
        char err[512];
        cr_assert_eq(ps_client_export_page(c, shard, "emb", 0, false, &cur, &page, err, sizeof(err)), 0,
                     "export: %s", err);
        for (size_t i = 0; i < page.n; i++)
            mask |= UINT64_C(1) << ps_bucket(page.keys[i], BUCKETS);
        bool done = page.done;
        ps_export_page_deinit(&page);
        if (done)
            return mask;
    }
}

Test(reshard, a_client_follows_a_newer_map_and_applies_each_push_once, .fini = teardown,
     .timeout = 240) {
    make_keys();
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    cr_assert_eq(ps_cluster_start(&ref, 2, body), 0);
    ps_client *admin = client_of(&cl);

    ps_cluster_map m1;
    char err[512];
    cr_assert_eq(ps_client_cluster_map(admin, 0, &m1, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(m1.version, 1, "the first map is the config's even split at map_version");
    for (uint32_t b = 0; b < BUCKETS; b++)
        cr_assert_eq(m1.owner[b], ps_bucket_owner(b, BUCKETS, 2));
    ps_cluster_map_deinit(&m1);

    /* Epoch 2 moves buckets 0-15 to shard 1 (still empty: this test is about
     * routing, rows move with `ctrps-cli move`). Target first, then source,
     * as a move's cut-over does. */
    ps_cluster_map m2;
    moved_map(2, &m2);
    install(admin, 1, &m2);
    install(admin, 0, &m2);
    install(admin, 0, &m2); /* the same map again: accepted */
    ps_cluster_map older;
    moved_map(1, &older);
    cr_assert_neq(ps_client_install_map(admin, 0, &older, NULL, err, sizeof(err)), 0,
                  "an older epoch must be refused");
    cr_assert(strstr(err, "not above"), "%s", err);
    ps_cluster_map_deinit(&older);

    /* A client that knows only the config's map (epoch 1) and one on a
     * cluster that never moved: the same pushes end in the same state. */
    ps_client *c = client_of(&cl), *r = client_of(&ref);
    for (int round = 0; round < 3; round++) {
        push_round(c, round);
        push_round(r, round);
    }
    ps_client_counters cc;
    ps_client_counters_get(c, &cc);
    cr_assert_eq(cc.map_version, 2, "the client took the newer map");
    cr_assert_geq(cc.rerouted, 1, "a WRONG_SHARD part was re-routed");
    cr_assert_geq(cc.map_fetches, 1);
    cr_assert_lt(cc.map_fetches, 3, "one fetch serves every later call");

    expect_same(c, r, "after the move");

    uint64_t moved = ((UINT64_C(1) << MOVED_HI) - 1) & ~((UINT64_C(1) << MOVED_LO) - 1);
    cr_assert_eq(buckets_on(c, 0) & moved, 0, "shard 0 stores rows of buckets it gave away");
    cr_assert_eq(buckets_on(c, 1) & moved, moved, "shard 1 stores the moved buckets' rows");

    /* kill -9: the map survives, and a fresh client (epoch 1 again) gets
     * there too. */
    ps_client_free(c);
    cr_assert_eq(ps_cluster_restart(&cl, 0, SIGKILL), 0);
    ps_client *fresh = client_of(&cl);
    ps_cluster_map back;
    cr_assert_eq(ps_client_cluster_map(fresh, 0, &back, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(back.version, 2);
    cr_assert(ps_cluster_map_same_layout(&back, &m2), "shard 0 lost its map in the restart");
    ps_cluster_map_deinit(&back);
    push_round(fresh, 3);
    push_round(r, 3);
    expect_same(fresh, r, "after the restart");

    ps_cluster_map_deinit(&m2);
    ps_client_free(fresh);
    ps_client_free(r);
    ps_client_free(admin);
}

/* The map held by `shard`, its version. */
static uint64_t map_version_of(ps_client *c, uint32_t shard) {
    ps_cluster_map m;
    char err[512];
    cr_assert_eq(ps_client_cluster_map(c, shard, &m, err, sizeof(err)), 0, "%s", err);
    uint64_t v = m.version;
    ps_cluster_map_deinit(&m);
    return v;
}

/* Restart every shard of cl from checkpoint `ckpt`, on its own port. */
static void restore_all(const char *ckpt) {
    cl.restore = ckpt;
    for (int i = 0; i < cl.nshards; i++)
        cr_assert_eq(ps_cluster_restart(&cl, i, SIGTERM), 0);
    cl.restore = NULL;
}

static char *take_checkpoint(const char *root) {
    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "checkpoint", "--dir", root, NULL), 0);
    out[strcspn(out, "\n")] = '\0';
    return out;
}

/* Checkpoints taken before and after a move (ctrps-cli move) restore to
 * working clusters: each with the map and the rows of its moment, serving
 * pulls and pushes, and equal to a cluster that never moved. */
Test(reshard, checkpoints_before_and_after_a_move_restore, .fini = teardown, .timeout = 240) {
    make_keys();
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    cr_assert_eq(ps_cluster_start(&ref, 2, body), 0);
    char root[300];
    ps_cluster_path(&cl, "ckpt", root, sizeof(root));
    ps_client *c = client_of(&cl), *r = client_of(&ref);
    install_real_addresses(c);
    uint32_t width = ps_optim_state_width(&cl.cfg->tables[0].opt, DIM);
    static float va[NKEYS * DIM], sa[NKEYS * 64], v1[NKEYS * DIM], s1[NKEYS * 64];
    cr_assert_leq(width, 64);

    push_round(c, 0);
    push_round(r, 0);
    read_all(c, va, sa, width);
    char *before = take_checkpoint(root);
    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "move", "--buckets", "0-15", "--to", "1", NULL), 0);
    free(out);
    push_round(c, 1);
    push_round(r, 1);
    sleep(1); /* checkpoint names sort by time, to the second */
    char *after = take_checkpoint(root);
    push_round(c, 2); /* after the checkpoint: gone with the restore */

    /* After the move: the moved map, rows where it puts them, and the same
     * next push as the unmoved cluster. */
    restore_all(after);
    cr_assert_eq(map_version_of(c, 0), 3);
    cr_assert_eq(map_version_of(c, 1), 3);
    uint64_t moved = (UINT64_C(1) << 16) - 1;
    cr_assert_eq(buckets_on(c, 0) & moved, 0, "shard 0 holds moved buckets after the restore");
    push_round(c, 3);
    push_round(r, 3);
    expect_same(c, r, "restored after the move");
    ps_client_free(c);

    /* Before the move: the first map and the rows of that moment, for a
     * fresh client (one holding the newer map would be sent back and forth:
     * workers restart from the checkpoint with it). */
    restore_all(before);
    ps_client *fresh = client_of(&cl);
    cr_assert_eq(map_version_of(fresh, 0), 2);
    cr_assert_eq(map_version_of(fresh, 1), 2);
    cr_assert_eq(buckets_on(fresh, 0) & moved, moved, "shard 0 lacks its buckets after the restore");
    read_all(fresh, v1, s1, width);
    cr_assert_eq(memcmp(v1, va, sizeof(v1)), 0, "restored before the move: weights differ");
    cr_assert_eq(memcmp(s1, sa, NKEYS * width * sizeof(float)), 0,
                 "restored before the move: optimizer state differs");
    push_round(fresh, 4);
    free(before);
    free(after);
    ps_client_free(fresh);
    ps_client_free(r);
}

/* A move phase over [lo, hi) sent on fd, answered with status `expect`. */
static void raw_move(int fd, Ctrps__MoveRequest__Phase phase, uint32_t lo, uint32_t hi,
                     uint32_t round, uint32_t throttle, Ctrps__Status expect) {
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__MoveRequest mv = CTRPS__MOVE_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_MOVE;
    req.move = &mv;
    mv.phase = phase;
    mv.bucket_lo = lo;
    mv.bucket_hi = hi;
    mv.round = round;
    mv.throttle = throttle;
    ps_raw_send(fd, &req);
    Ctrps__Response *r = ps_raw_recv(fd);
    cr_assert_not_null(r);
    cr_assert_eq(r->status, expect, "move phase %d: %s", phase, r->message);
    ctrps__response__free_unpacked(r, NULL);
}

/* A shard keeps push sequence numbers per bucket: a seq it applied for one
 * bucket is still new for another bucket (a re-routed part carries the seq
 * of the call it came from), a resend to the same bucket is answered as
 * already applied, and an older seq the bucket never applied (a push
 * overtaken by a later one) is applied once. */
static Ctrps__Response *raw_push(int fd, uint64_t client_id, uint64_t seq, uint64_t key) {
    float g[DIM] = {0.5f, 0.5f, 0.5f, 0.5f};
    ps_raw_send_push(fd, seq, "emb", &key, 1, g, DIM, client_id, seq);
    Ctrps__Response *r = ps_raw_recv(fd);
    cr_assert_not_null(r);
    cr_assert_eq(r->status, CTRPS__STATUS__OK, "%s", r->message);
    return r;
}

/* raw_push(), answered already applied or not as `already` says. */
static void expect_raw_push(int fd, uint64_t seq, uint64_t key, bool already, const char *what) {
    Ctrps__Response *r = raw_push(fd, 77, seq, key);
    cr_assert_eq(r->push->already_applied, already, "seq %llu: %s", (unsigned long long)seq, what);
    if (!already)
        cr_assert_eq(r->push->applied, 1, "seq %llu: %s", (unsigned long long)seq, what);
    ctrps__response__free_unpacked(r, NULL);
}

Test(reshard, sequence_numbers_are_kept_per_bucket, .fini = teardown, .timeout = 60) {
    make_keys();
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
    uint64_t a = 0, b = 0;
    for (size_t i = 0; i < NKEYS && !b; i++) {
        if (!a)
            a = keys[i];
        else if (ps_bucket(keys[i], BUCKETS) != ps_bucket(a, BUCKETS))
            b = keys[i];
    }
    int fd = ps_raw_connect(cl.ports[0]);
    Ctrps__Response *r = ps_raw_hello(fd, 77);
    ctrps__response__free_unpacked(r, NULL);

    r = raw_push(fd, 77, 9, a);
    cr_assert_not(r->push->already_applied);
    ctrps__response__free_unpacked(r, NULL);
    r = raw_push(fd, 77, 9, b);
    cr_assert_not(r->push->already_applied, "seq 9 is new for the other bucket");
    cr_assert_eq(r->push->applied, 1);
    ctrps__response__free_unpacked(r, NULL);
    r = raw_push(fd, 77, 9, a);
    cr_assert(r->push->already_applied, "a resend to the same bucket");
    ctrps__response__free_unpacked(r, NULL);
    expect_raw_push(fd, 8, b, false, "overtaken by 9, taken for a repeat");
    expect_raw_push(fd, 8, b, true, "again");
    /* ... and after kill -9 (write-back or push-log replay). */
    cr_assert_eq(ps_cluster_restart(&cl, 0, SIGKILL), 0);
    fd = ps_raw_connect(cl.ports[0]);
    r = ps_raw_hello(fd, 77);
    cr_assert_eq(r->hello->last_push_seq, 9);
    ctrps__response__free_unpacked(r, NULL);
    expect_raw_push(fd, 9, b, true, "again, after kill -9");
    expect_raw_push(fd, 8, b, true, "again, after kill -9");
    expect_raw_push(fd, 7, b, false, "never applied, after kill -9");

    /* A move phase naming buckets outside the cluster is refused, and
     * deletes nothing (bucket numbers are 16 bits in the store key). */
    raw_move(fd, CTRPS__MOVE_REQUEST__PHASE__DROP, 65536 + 10, 65536 + 100, 0, 0,
             CTRPS__STATUS__BAD_REQUEST);
    raw_move(fd, CTRPS__MOVE_REQUEST__PHASE__FREEZE, 65536 + 10, 65536 + 100, 0, 0,
             CTRPS__STATUS__BAD_REQUEST);
    r = raw_push(fd, 77, 9, b);
    cr_assert(r->push->already_applied, "the row and its sequence numbers are still there");
    ctrps__response__free_unpacked(r, NULL);
}

/* `move --buckets 0-15 --to 1` on cl, stopped (SIGSTOP by the failpoint
 * of common/move.c) at `at`. Its pid; its stdout in *ret_fd. */
static pid_t start_move_stopped_at(const char *at, int *ret_fd) {
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "--config", cl.config, "--timeout",
                    "60000", "move", "--buckets", "0-15", "--to", "1", NULL};
    setenv("CTRPS_TEST_MOVE_STOP", at, 1);
    pid_t pid = ps_spawn_stdout(argv, ret_fd);
    unsetenv("CTRPS_TEST_MOVE_STOP");
    cr_assert_gt(pid, 0);
    int status;
    cr_assert_eq(waitpid(pid, &status, WUNTRACED), pid);
    cr_assert(WIFSTOPPED(status), "the mover did not stop at %s (status %d)", at, status);
    return pid;
}

/* Let a mover stopped by start_move_stopped_at() go on; assert it ends
 * well. Its output into out. */
static void finish_move(pid_t pid, int fd, char *out, size_t len) {
    int status;
    kill(pid, SIGCONT);
    ps_read_fd(fd, out, len);
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the move failed: %s", out);
}

/* Both clusters with the same three rounds of pushes; then `move
 * --buckets 0-15 --to 1` on cl, stopped once its first pass is staged on
 * the target. Its pid; its stdout in *ret_fd. */
static pid_t start_move_stopped_when_staged(ps_client **ret_c, ps_client **ret_r, int *ret_fd) {
    make_keys();
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    cr_assert_eq(ps_cluster_start(&ref, 2, body), 0);
    ps_client *c = client_of(&cl), *r = client_of(&ref);
    install_real_addresses(c);
    for (int round = 0; round < 3; round++) {
        push_round(c, round);
        push_round(r, round);
    }
    pid_t pid = start_move_stopped_at("staged", ret_fd);
    *ret_c = c;
    *ret_r = r;
    return pid;
}

/* The target stages a copy's first pass and ingests it at the end: killed
 * (SIGKILL) with the pass staged, it has lost it, and the mover begins the
 * copy again (the target's restart leaves no staging file); the moved
 * state equals an unmoved cluster's. */
Test(reshard, a_target_killed_in_the_first_pass_has_the_copy_begun_again, .fini = teardown,
     .timeout = 120) {
    ps_client *c, *r;
    int fd;
    pid_t pid = start_move_stopped_when_staged(&c, &r, &fd);
    char staging[400];
    snprintf(staging, sizeof(staging), "%s/data/shard-1/staging", cl.dir);
    cr_assert_eq(access(staging, F_OK), 0, "no staging directory on the target");
    cr_assert_eq(ps_cluster_restart(&cl, 1, SIGKILL), 0);
    cr_assert_neq(access(staging, F_OK), 0, "the restarted target kept its staging files");
    char out[4096];
    finish_move(pid, fd, out, sizeof(out));
    cr_assert(strstr(out, "copy begun again 1 times"), "%s", out);
    cr_assert_neq(access(staging, F_OK), 0, "a staging file left after the ingest");

    uint64_t moved = ((UINT64_C(1) << MOVED_HI) - 1) & ~((UINT64_C(1) << MOVED_LO) - 1);
    ps_client *fresh = client_of(&cl);
    cr_assert_eq(buckets_on(fresh, 0) & moved, 0, "shard 0 stores rows of buckets it gave away");
    cr_assert_eq(buckets_on(fresh, 1) & moved, moved, "shard 1 stores the moved buckets' rows");
    expect_same(fresh, r, "after the move");
    push_round(fresh, 3);
    push_round(r, 3);
    expect_same(fresh, r, "after a push to the moved rows");
    /* Every row counted once on each shard. */
    char *st = NULL;
    cr_assert_eq(ps_run_cli(&cl, &st, "stats", NULL), 0);
    unsigned long long rows = 0;
    for (const char *p = st; (p = strstr(p, "\"rows\":"));)
        rows += strtoull(p += 7, NULL, 10);
    cr_assert_eq(rows, NKEYS, "rows counted over the shards: %s", st);
    free(st);
    ps_client_free(fresh);
    ps_client_free(c);
    ps_client_free(r);
}

/* A mover killed with the first pass staged, then `move --abort`: the
 * source is thawed, the target has removed its staging files, nothing
 * moved, and the same move run again completes, equal to an unmoved
 * cluster. */
Test(reshard, move_abort_removes_the_targets_staged_copy, .fini = teardown, .timeout = 120) {
    ps_client *c, *r;
    int fd, status;
    pid_t pid = start_move_stopped_when_staged(&c, &r, &fd);
    kill(pid, SIGKILL);
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    close(fd);
    char staging[400];
    snprintf(staging, sizeof(staging), "%s/data/shard-1/staging", cl.dir);
    cr_assert_eq(access(staging, F_OK), 0, "no staging directory on the target");

    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "move", "--abort", "0", NULL), 0, "%s", out);
    cr_assert(strstr(out, "staged copies removed: 1"), "%s", out);
    free(out);
    cr_assert_neq(access(staging, F_OK), 0, "the target kept its staging files after the abort");
    uint64_t moved = ((UINT64_C(1) << MOVED_HI) - 1) & ~((UINT64_C(1) << MOVED_LO) - 1);
    cr_assert_eq(buckets_on(c, 1) & moved, 0, "rows of an aborted move are visible on the target");
    push_round(c, 3);
    push_round(r, 3);
    expect_same(c, r, "after the abort");

    out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "--timeout", "60000", "move", "--buckets", "0-15", "--to", "1",
                            NULL),
                 0, "the move after the abort failed: %s", out);
    free(out);
    ps_client *fresh = client_of(&cl);
    cr_assert_eq(buckets_on(fresh, 1) & moved, moved, "shard 1 stores the moved buckets' rows");
    expect_same(fresh, r, "after the move that followed the abort");
    ps_client_free(fresh);
    ps_client_free(c);
    ps_client_free(r);
}

/* ---- online moves while a worker trains --------------------------------------- */

#define LR_BODY PS_TEST_LR_BODY("sync", "300")

#ifdef PS_TEST_UNDER_ASAN
#define MOVE_ROWS "6000"
#else
#define MOVE_ROWS "45000"
#endif

/* The worker reads its input from a pipe that a thread fills a third at a
 * time: the second third only once the cluster has grown, the last once it
 * has shrunk again, so the worker cannot finish before the moves however
 * fast the machine is. A batch holds batch_size lines whatever the pipe
 * delivers at once, so the run trains as it would from the file. */
typedef struct feeder {
    pthread_t thread;
    int fd;                      /* the pipe's write end */
    char *text;
    size_t len, cut[2];          /* line boundaries at a third and at two thirds */
    int opened;                  /* gates open: 0, 1 or 2 */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} feeder;

static void *feed(void *arg) {
    feeder *f = arg;
    size_t from = 0;
    for (int gate = 0; gate <= 2; gate++) {
        pthread_mutex_lock(&f->mu);
        while (f->opened < gate)
            pthread_cond_wait(&f->cv, &f->mu);
        pthread_mutex_unlock(&f->mu);
        size_t to = gate < 2 ? f->cut[gate] : f->len;
        if (!ps_write_all(f->fd, f->text + from, to - from))
            break;
        from = to;
    }
    close(f->fd);
    return NULL;
}

static void feeder_open(feeder *f, int gates) {
    pthread_mutex_lock(&f->mu);
    f->opened = gates;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* The end of the line that holds offset `at`. */
static size_t line_end(const char *text, size_t len, size_t at) {
    const char *nl = memchr(text + at, '\n', len - at);
    return nl ? (size_t)(nl - text) + 1 : len;
}

/* Start a worker on the cluster reading `data` through a feeder, with the
 * gates `opened` already open. */
static pid_t start_fed_worker(const char *data, feeder *f, int opened, char *log, size_t loglen) {
    memset(f, 0, sizeof(*f));
    f->text = ps_read_file_len(data, &f->len);
    cr_assert(f->text && f->len > 0);
    f->cut[0] = line_end(f->text, f->len, f->len / 3);
    f->cut[1] = line_end(f->text, f->len, 2 * f->len / 3);
    f->opened = opened;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    int fds[2];
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0); /* shards restarted later must not hold the write end */
    ps_cluster_path(&cl, "worker.log", log, loglen);
    char *argv[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cl.config, "--input", "-",
                    "--log-level", "warn", NULL};
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        int err = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fds[0], 0);
        dup2(null, 1);
        dup2(err, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[0]);
    f->fd = fds[1];
    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(pthread_create(&f->thread, NULL, feed, f), 0);
    return pid;
}

static void feeder_join(feeder *f) {
    feeder_open(f, 2);
    pthread_join(f->thread, NULL);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f->text);
}

/* Three shards listed, two in use: the map of epoch 2 splits the buckets
 * evenly over shards 0 and 1 and gives shard 2 none, as a cluster of two
 * that a third machine is about to join. */
static const char *lr_body = LR_BODY; /* what the clusters below start with */

static void start_two_of_three(void) {
    cr_assert_eq(ps_cluster_start(&cl, 3, lr_body), 0);
    ps_client *admin = client_of(&cl);
    ps_cluster_map m;
    cr_assert_eq(ps_cluster_map_from_config(cl.cfg, &m), 0);
    m.version = 2;
    for (uint32_t b = 0; b < m.buckets; b++)
        m.owner[b] = ps_bucket_owner(b, m.buckets, 2);
    for (int i = 0; i < 3; i++)
        install(admin, i, &m);
    ps_cluster_map_deinit(&m);
    ps_client_free(admin);
}

static void write_two_shard_config(char *path, size_t len) {
    ps_cluster_path(&cl, "two.ini", path, len);
    char text[12000];
    snprintf(text, sizeof(text), "[cluster]\nshards = 127.0.0.1:%d, 127.0.0.1:%d\n%s", cl.ports[0],
             cl.ports[1], cl.body);
    cr_assert_eq(ps_write_file(path, text), 0);
}

/* How a run is disturbed while ctrps-cli reshard moves ranges. */
typedef enum {
    CALM,
    KILL_ANY_TIME,               /* shard 0 killed at a random moment of each reshard */
    KILL_IN_CUTOVER,             /* in each move's cut-over: 2 -> 3 the source, 3 -> 2 the target */
} disturbance;

/* Run `ctrps-cli [--config cfg] --timeout 60000 reshard`, disturbed. */
static void reshard(const char *cfg, disturbance how, unsigned *seed) {
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "--config", (char *)cfg, "--timeout",
                    "60000", "reshard", NULL};
    if (how == CALM) {
        char *out = NULL, *err = NULL;
        int rc = ps_run(argv, &out, &err);
        cr_assert_eq(rc, 0, "reshard failed: %s", err ? err : "");
        cr_assert(out && strstr(out, "map version"), "%s", out ? out : "");
        cr_log_info("reshard: %s", out);
        free(out);
        free(err);
        return;
    }
    int fd;
    if (how == KILL_IN_CUTOVER)
        setenv("CTRPS_TEST_MOVE_STOP", "cutover", 1); /* common/move.c: the mover stops there */
    pid_t pid = ps_spawn_stdout(argv, &fd);
    unsetenv("CTRPS_TEST_MOVE_STOP");
    cr_assert_gt(pid, 0);
    int status, stops = 0;
    if (how == KILL_ANY_TIME) {
        usleep(20000 + (useconds_t)(rand_r(seed) % 150000));
        cr_assert_eq(ps_cluster_restart(&cl, 0, SIGKILL), 0);
        waitpid(pid, &status, 0);
    } else {
        /* Both reshards move two ranges: 2 -> 3 moves 0 -> 1 then 1 -> 2,
         * 3 -> 2 moves 1 -> 0 then 2 -> 1. Killing shard 0, then shard 1,
         * kills the sources of the first and the targets of the second. */
        while (waitpid(pid, &status, WUNTRACED) == pid && WIFSTOPPED(status)) {
            cr_assert_eq(ps_cluster_restart(&cl, stops++ % 2, SIGKILL), 0);
            kill(pid, SIGCONT);
        }
        cr_assert_eq(stops, 2, "the mover stopped in %d cut-overs, not 2", stops);
    }
    close(fd);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "reshard with a kill failed (status %d)",
              status);
}

/* A counter of one shard, or summed over all with shard < 0, from
 * ctrps-cli stats. */
static unsigned long long stat_of(int shard, const char *name) {
    char *st = NULL;
    cr_assert_eq(ps_run_cli(&cl, &st, "stats", NULL), 0);
    char key[64], at[32];
    snprintf(key, sizeof(key), "\"%s\":", name);
    snprintf(at, sizeof(at), "\"shard\":%d,", shard);
    const char *p = shard < 0 ? st : strstr(st, at);
    unsigned long long n = 0;
    while (p && (p = strstr(p, key))) {
        p += strlen(key);
        n += strtoull(p, NULL, 10);
        if (shard >= 0)
            break;
    }
    free(st);
    return n;
}

/* Poll `shard`'s counter `name` until it is above zero, while the worker runs. */
static void wait_stat(pid_t w, int shard, const char *name, const char *why) {
    for (int i = 0; stat_of(shard, name) == 0; i++) {
        int status;
        cr_assert_eq(waitpid(w, &status, WNOHANG), 0, "the worker ended (status %d) %s", status, why);
        cr_assert_lt(i, 2400, "no %s after 120 s %s", name, why);
        usleep(50000);
    }
}

/* The optimizer state of key (table emb, FTRL: w z n) on cl; it must exist. */
static void state_of(ps_client *c, uint64_t key, float st[64]) {
    uint32_t width = ps_optim_state_width(&cl.cfg->tables[0].opt, DIM);
    cr_assert_leq(width, 64);
    float v[DIM];
    uint8_t found;
    char err[512];
    cr_assert_eq(ps_client_lookup(c, "emb", DIM, width, &key, 1, &found, v, st, err, sizeof(err)), 0,
                 "%s", err);
    cr_assert(found, "key %016llx has no row", (unsigned long long)key);
}

/* n[0] of key (table emb) on cl. */
static float n_of(ps_client *c, uint64_t key) {
    float st[64];
    state_of(c, key, st);
    return st[2 * DIM];
}

/* Poll until c's parts have been answered MOVING `want` times in all. */
static void wait_moving_waits(ps_client *c, uint64_t want) {
    for (int i = 0;; i++) {
        ps_client_counters cc;
        ps_client_counters_get(c, &cc);
        if (cc.moving_waits >= want)
            return;
        cr_assert_lt(i, 2000, "%llu parts answered MOVING, not %llu",
                     (unsigned long long)cc.moving_waits, (unsigned long long)want);
        usleep(1000);
    }
}

/* While a range is copied, the source slows the pushes into it (the
 * catch-up rounds must shrink). It must not do so by refusing some of a
 * client's pushes and applying later ones: a worker keeps several pushes
 * on the wire (max_in_flight, 2 by default), and a refused push resent
 * after a later one was applied was taken for a repeat (before a bucket
 * kept a window of numbers), which lost it. Pipelined pushes into a range
 * copied at the highest throttle are each applied, once, in order. */
Test(reshard, pipelined_pushes_into_a_throttled_range_are_each_applied_once, .fini = teardown,
     .timeout = 60) {
    make_keys();
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
    uint32_t b = ps_bucket(keys[0], BUCKETS);
    int admin = ps_raw_connect(cl.ports[0]);
    ctrps__response__free_unpacked(ps_raw_hello(admin, 0), NULL);
    raw_move(admin, CTRPS__MOVE_REQUEST__PHASE__TRACK, b, b + 1, 0, 0, CTRPS__STATUS__OK);
    raw_move(admin, CTRPS__MOVE_REQUEST__PHASE__CHANGED, b, b + 1, 1, 3, CTRPS__STATUS__OK);

    enum { PUSHES = 8 };
    int fd = ps_raw_connect(cl.ports[0]);
    ctrps__response__free_unpacked(ps_raw_hello(fd, 77), NULL);
    float g[DIM] = {0.5f, 0.5f, 0.5f, 0.5f};
    for (uint64_t seq = 1; seq <= PUSHES; seq++)
        ps_raw_send_push(fd, seq, "emb", &keys[0], 1, g, DIM, 77, seq);
    for (uint64_t seq = 1; seq <= PUSHES; seq++) {
        Ctrps__Response *r = ps_raw_recv(fd);
        cr_assert_not_null(r);
        cr_assert_eq(r->id, seq);
        cr_assert_eq(r->status, CTRPS__STATUS__OK, "push %llu: %s", (unsigned long long)seq,
                     r->message);
        cr_assert_eq(r->push->applied, 1, "push %llu", (unsigned long long)seq);
        ctrps__response__free_unpacked(r, NULL);
    }
    /* Each applied once: n = 8 * 0.5^2 per element, exactly. */
    ps_client *c = client_of(&cl);
    float st[64];
    state_of(c, keys[0], st);
    for (int i = 0; i < DIM; i++)
        cr_assert_eq(st[2 * DIM + i], PUSHES * 0.25f, "n[%d] = %g", i, st[2 * DIM + i]);
    unsigned long long slowed = stat_of(0, "pushes_throttled");
    cr_assert_gt(slowed, 0, "no push was slowed");
    ps_client_free(c);
    close(fd);
    close(admin);
}

/* Parts refused MOVING wait and are sent again in the order they were
 * sent first. They were sent again newest first: of two pipelined pushes
 * into a frozen range, the second could then be applied before the first,
 * which came after it and was taken for a repeat (before a bucket kept a
 * window of numbers; now it would be applied out of order).
 * Each round freezes a key's bucket (raw FREEZE), starts two pushes of it,
 * waits until both wait on MOVING, and thaws: n must count both. The old
 * order (reversed at every refusal) lost one in half of the rounds. */
Test(reshard, pushes_refused_moving_go_again_in_order, .fini = teardown, .timeout = 60) {
    make_keys();
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
    int admin = ps_raw_connect(cl.ports[0]);
    ctrps__response__free_unpacked(ps_raw_hello(admin, 0), NULL);
    ps_client *c = client_of(&cl);
    float g[DIM] = {0.5f, 0.5f, 0.5f, 0.5f};
    char err[512];
    for (int round = 0; round < 6; round++) {
        uint64_t key = keys[round];
        uint32_t b = ps_bucket(key, BUCKETS);
        raw_move(admin, CTRPS__MOVE_REQUEST__PHASE__FREEZE, b, b + 1, 0, 0, CTRPS__STATUS__OK);
        ps_client_counters before;
        ps_client_counters_get(c, &before);
        ps_call *calls[2];
        for (int i = 0; i < 2; i++)
            cr_assert_eq(ps_client_push_start(c, "emb", DIM, &key, 1, g, &calls[i]), 0);
        wait_moving_waits(c, before.moving_waits + 2);
        raw_move(admin, CTRPS__MOVE_REQUEST__PHASE__THAW, 0, 0, 0, 0, CTRPS__STATUS__OK);
        for (int i = 0; i < 2; i++)
            cr_assert_eq(ps_call_wait(calls[i], err, sizeof(err)), 0, "round %d: %s", round, err);
        float n = n_of(c, key);
        cr_assert_eq(n, 2 * 0.25f, "round %d: n = %g, not both pushes", round, n);
    }
    ps_client_free(c);
    close(admin);
}

/* A push refused MOVING while a later push of the same client, touching
 * only buckets that are not moving, is applied first: sent again under
 * its old number, its keys in the later push's bucket were taken for a
 * repeat. A part refused whole at every attempt was applied nowhere, and
 * goes again under a new number. Push 1 = {a (frozen bucket), b}, push 2 =
 * {b}, on the wire together; push 2 is applied, push 1 refused; thaw:
 * b saw both. */
Test(reshard, a_refused_push_is_not_lost_behind_a_later_one, .fini = teardown, .timeout = 60) {
    make_keys();
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
    uint64_t a = keys[0], b = 0;
    uint32_t ba = ps_bucket(a, BUCKETS);
    for (size_t i = 1; i < NKEYS && !b; i++)
        if (ps_bucket(keys[i], BUCKETS) != ba)
            b = keys[i];
    int admin = ps_raw_connect(cl.ports[0]);
    ctrps__response__free_unpacked(ps_raw_hello(admin, 0), NULL);
    ps_client *c = client_of(&cl);
    raw_move(admin, CTRPS__MOVE_REQUEST__PHASE__FREEZE, ba, ba + 1, 0, 0, CTRPS__STATUS__OK);
    float g[2 * DIM] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    uint64_t both[2] = {a, b};
    ps_call *first, *second;
    cr_assert_eq(ps_client_push_start(c, "emb", DIM, both, 2, g, &first), 0);
    cr_assert_eq(ps_client_push_start(c, "emb", DIM, &b, 1, g, &second), 0);
    char err[512];
    cr_assert_eq(ps_call_wait(second, err, sizeof(err)), 0, "%s", err);
    wait_moving_waits(c, 1);
    cr_assert_eq(n_of(c, b), 0.25f, "the second push first");
    raw_move(admin, CTRPS__MOVE_REQUEST__PHASE__THAW, 0, 0, 0, 0, CTRPS__STATUS__OK);
    cr_assert_eq(ps_call_wait(first, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(n_of(c, a), 0.25f);
    cr_assert_eq(n_of(c, b), 0.5f, "key b lost the first push (n = %g)", n_of(c, b));
    ps_client_free(c);
    close(admin);
}

/* MOVE_ROWS Criteo-shaped rows of `seed` (ctrps-cli gen) into a new file
 * named from the template `path` (XXXXXX), which is replaced. */
static void gen_rows(char *path, const char *seed) {
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "gen", "--rows", MOVE_ROWS, "--seed",
                    (char *)seed, "--format", "criteo", "--out", path, NULL};
    cr_assert_eq(ps_run(argv, NULL, NULL), 0);
}

/* Train on data while the cluster goes 2 -> 3 -> 2 shards (or not, with
 * grow = false); the exported state at the end, and in *ret_applied (if
 * not NULL) the rows the shards applied, summed, and the pushes they took
 * for repeats (counters since their start). */
static char *train_counting(const char *data, bool grow, disturbance how,
                            unsigned long long ret_applied[2]) {
    start_two_of_three();
    char log[300], two[300];
    write_two_shard_config(two, sizeof(two));
    feeder f;
    pid_t w = start_fed_worker(data, &f, grow ? 0 : 2, log, sizeof(log));
    unsigned seed = 7;
    if (grow) {
        wait_stat(w, -1, "pushed_rows", "before its first push");
        reshard(cl.config, how, &seed); /* 2 -> 3, while the worker trains on the first third */
        feeder_open(&f, 1);
        wait_stat(w, 2, "pulled_rows", "without training on shard 2");
        reshard(two, how, &seed);       /* 3 -> 2 */
    }
    feeder_join(&f);
    ps_wait_worker(w, log);
    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "export", "--table", "wide", "--state", NULL), 0);
    if (grow) {
        char *st = NULL;
        cr_assert_eq(ps_run_cli(&cl, &st, "stats", NULL), 0);
        /* Shard 2 gave every row back, and had some: it pulled rows. */
        const char *s2 = strstr(st, "\"shard\":2,");
        cr_assert(s2 && strstr(s2, "\"rows\":0,"), "shard 2 kept rows after 3 -> 2: %s", st);
        const char *pulled = strstr(s2, "\"pulled_rows\":");
        cr_assert(pulled && strtoull(pulled + 14, NULL, 10) > 0, "shard 2 never served: %s", s2);
        free(st);
    }
    if (ret_applied) {
        ret_applied[0] = stat_of(-1, "pushed_rows");
        ret_applied[1] = stat_of(-1, "pushes_already_applied");
    }
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
    memset(&cl, 0, sizeof(cl));
    return out;
}

static char *train_while_resharding(const char *data, bool grow, disturbance how) {
    return train_counting(data, grow, how, NULL);
}

/* Fail unless the export `got` equals `want`, the unmoved run's; if not,
 * say how many lines differ and show the first few of both sides, so that
 * a failure in CI tells a lost update (a row's state behind) from a doubled
 * one or a row missing. */
static void expect_export(const char *got, const char *want, const char *what) {
    if (strcmp(got, want) == 0)
        return;
    size_t differ = 0, lines = 0;
    const char *g = got, *w = want;
    while (*g || *w) {
        size_t gl = strcspn(g, "\n"), wl = strcspn(w, "\n");
        if (gl != wl || memcmp(g, w, gl) != 0) {
            if (differ < 4) {
                cr_log_error("%s, line %zu:\n  unmoved: %.*s\n  moved:   %.*s", what, lines + 1,
                             (int)(wl > 400 ? 400 : wl), w, (int)(gl > 400 ? 400 : gl), g);
            }
            differ++;
        }
        lines++;
        g += gl + (g[gl] == '\n');
        w += wl + (w[wl] == '\n');
    }
    cr_assert_fail("the state after 2 -> 3 -> 2 %s differs from the unmoved run: %zu of %zu lines "
                   "(the first ones logged above)",
                   what, differ, lines);
}

/* One unmoved run, then the same input through 2 -> 3 -> 2 shards: calm;
 * with shard 0 (the source of the first move, then the target of the
 * third) killed with SIGKILL at a random moment of each ctrps-cli reshard;
 * and with a source, then a target, killed inside each move's cut-over
 * (the range frozen, the map not flipped yet). All end in the same state. */
Test(reshard, training_through_2_3_2_shards_ends_in_the_unmoved_state, .fini = teardown,
     .timeout = 600) {
    char data[] = "/tmp/ctrps-reshard-XXXXXX";
    gen_rows(data, "21");
    char *clean = train_while_resharding(data, false, CALM);
    size_t lines = 0;
    for (const char *p = clean; *p; p++)
        lines += *p == '\n';
    cr_assert_gt(lines, 1000, "too little state to compare");
    char *moved = train_while_resharding(data, true, CALM);
    expect_export(moved, clean, "undisturbed");
    char *killed = train_while_resharding(data, true, KILL_ANY_TIME);
    expect_export(killed, clean, "with shard 0 killed");
    char *cut = train_while_resharding(data, true, KILL_IN_CUTOVER);
    expect_export(cut, clean, "with kills in the cut-overs");
    free(clean);
    free(moved);
    free(killed);
    free(cut);
    unlink(data);
    char truth[600];
    snprintf(truth, sizeof(truth), "%s.truth.json", data);
    unlink(truth);
}

/* A worker with pushes in flight (max_in_flight = 2, the default) through
 * 2 -> 3 -> 2 shards: its pulls may see other states than the unmoved
 * run's (a pull can overtake a push resent after MOVING), so the exports
 * are not compared; but every push is applied once: the shards apply as
 * many rows as in the unmoved run, and take no push for a repeat (nothing
 * is lost in transit without kills). */
Test(reshard, an_async_worker_through_2_3_2_shards_has_each_push_applied_once, .fini = teardown,
     .timeout = 300) {
    static char async_body[sizeof(LR_BODY) + 8];
    const char *at = strstr(LR_BODY, "max_in_flight = 0");
    cr_assert_not_null(at);
    snprintf(async_body, sizeof(async_body), "%.*smax_in_flight = 2%s", (int)(at - LR_BODY), LR_BODY,
             at + strlen("max_in_flight = 0"));
    lr_body = async_body;
    char data[] = "/tmp/ctrps-reshard-XXXXXX";
    gen_rows(data, "22");
    unsigned long long still[2], moved[2];
    free(train_counting(data, false, CALM, still));
    free(train_counting(data, true, CALM, moved));
    lr_body = LR_BODY;
    cr_log_info("rows applied: unmoved %llu, moved %llu; pushes taken for repeats %llu, %llu",
                still[0], moved[0], still[1], moved[1]);
    cr_assert_gt(still[0], 1000);
    cr_assert_eq(moved[1], 0, "%llu pushes taken for repeats through the moves", moved[1]);
    cr_assert_eq(moved[0], still[0], "rows applied through the moves: %llu, unmoved %llu", moved[0],
                 still[0]);
    unlink(data);
}

/* ---- the admission filter moves with a range (issue 12) ---- */

/* admit_after = 3; no write-back but the ones the move and the pushes ask
 * for, so a restart finds only what the move made durable, and replays the
 * log after it. Frames of 64 KiB: the filter's 128 blocks go in pages of 7. */
static const char *admit_body =
    "buckets = 64\n"
    "[server]\ndurability = sync\nflush_interval_ms = 600000\nmax_frame_bytes = 65536\n"
    "[table.emb]\ndim = 4\noptimizer = ftrl\nalpha = 0.05\nbeta = 1.0\nlambda1 = 0.001\n"
    "admit_after = 3\nadmit_bloom_bits = 1048576\nslots = C1\n";

#define GROUP 40

/* Keys of the moved buckets, group g of GROUP. */
static void moved_keys(int g, uint64_t *ret) {
    size_t n = 0;
    for (uint64_t i = 1000000 * (uint64_t)(g + 1); n < GROUP; i++) {
        uint64_t k = ps_fid(ps_slot_id("C1"), (char *)&i, sizeof(i));
        if (ps_bucket(k, BUCKETS) - MOVED_LO < MOVED_HI - MOVED_LO) /* unsigned: one compare */
            ret[n++] = k;
    }
}

static void push_group(ps_client *c, const uint64_t *k) {
    float grads[GROUP * DIM];
    for (size_t i = 0; i < GROUP * DIM; i++)
        grads[i] = 0.25f;
    char err[512];
    cr_assert_eq(ps_client_push(c, "emb", DIM, k, GROUP, grads, NULL, NULL, err, sizeof(err)), 0,
                 "push: %s", err);
}

/* A two-shard cluster of admit_body and a client of it; groups 0 and 1 of
 * the moved buckets' keys into a and b. */
static ps_client *start_admit_cluster(uint64_t *a, uint64_t *b) {
    cr_assert_eq(ps_cluster_start(&cl, 2, admit_body), 0);
    ps_client *c = client_of(&cl);
    install_real_addresses(c);
    moved_keys(0, a);
    moved_keys(1, b);
    return c;
}

/* How many keys of the group have a row. */
static size_t rows_of(ps_client *c, const uint64_t *k) {
    uint8_t found[GROUP];
    float values[GROUP * DIM];
    char err[512];
    cr_assert_eq(ps_client_lookup(c, "emb", DIM, 0, k, GROUP, found, values, NULL, err, sizeof(err)),
                 0, "lookup: %s", err);
    size_t n = 0;
    for (size_t i = 0; i < GROUP; i++)
        n += found[i];
    return n;
}

/* A key pushed twice on the range's owner, then moved (`ctrps-cli move`),
 * has its row at its third push, on the new owner, as it would have had
 * without the move; a key pushed once before and once after has none. The
 * new owner keeps the counts it merged through a kill -9 (the merge is
 * written back before the move goes on; later pushes are replayed from its
 * log), neither losing nor adding any. */
Test(reshard, admission_counts_move_with_the_range, .fini = teardown, .timeout = 120) {
    /* a, c: twice before the move; b, d, e: once. */
    static uint64_t a[GROUP], b[GROUP], cc[GROUP], d[GROUP], e[GROUP];
    ps_client *c = start_admit_cluster(a, b);
    moved_keys(2, cc);
    moved_keys(3, d);
    moved_keys(4, e);
    for (int round = 0; round < 2; round++) {
        push_group(c, a);
        push_group(c, cc);
    }
    push_group(c, b);
    push_group(c, d);
    push_group(c, e);
    cr_assert_eq(rows_of(c, a), 0, "a key has a row after two pushes");

    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "move", "--buckets", "0-15", "--to", "1", NULL), 0);
    free(out);
    cr_assert_eq(map_version_of(c, 1), 3);
    cr_assert_eq(rows_of(c, a), 0, "the move made rows");

    push_group(c, a); /* third push, on shard 1 */
    cr_assert_eq(rows_of(c, a), GROUP, "keys pushed twice before the move and once after");
    push_group(c, b);
    push_group(c, d);
    cr_assert_eq(rows_of(c, b), 0, "keys pushed once before the move and once after");

    cr_assert_eq(ps_cluster_restart(&cl, 1, SIGKILL), 0);
    cr_assert_eq(rows_of(c, a), GROUP, "rows lost in the restart");
    push_group(c, cc);
    cr_assert_eq(rows_of(c, cc), GROUP, "after a restart: twice before the move, once after");
    push_group(c, d);
    cr_assert_eq(rows_of(c, d), GROUP, "after a restart: once before the move, twice after");
    push_group(c, e);
    cr_assert_eq(rows_of(c, e), 0, "after a restart: once before the move, once after");
    ps_client_free(c);
}


/* Counts the source took after the filters' first round go in the later
 * ones: keys pushed twice while the mover waits after that round (the
 * range still served) have their row at their third push on the new owner. */
Test(reshard, admission_counts_raised_after_the_first_round_move_too, .fini = teardown,
     .timeout = 120) {
    static uint64_t a[GROUP], b[GROUP];
    ps_client *c = start_admit_cluster(a, b);
    int fd;
    pid_t pid = start_move_stopped_at("admitted", &fd);
    for (int round = 0; round < 2; round++)
        push_group(c, a);
    push_group(c, b);
    char out[4096];
    finish_move(pid, fd, out, sizeof(out));
    cr_assert_eq(map_version_of(c, 1), 3, "%s", out);
    push_group(c, a);
    push_group(c, b);
    cr_assert_eq(rows_of(c, a), GROUP, "keys pushed twice after the first round, once after the move");
    cr_assert_eq(rows_of(c, b), 0, "keys pushed once after the first round, once after the move");
    ps_client_free(c);
}

/* The source or the target killed (SIGKILL) inside the cut-over, the range
 * frozen: the copy goes on (the source's restart has it begin again, the
 * filters whole again; the target has what it merged in its store) and
 * the moved keys' counts arrive, neither lost nor counted twice. */
Test(reshard, admission_counts_move_through_a_kill_in_the_cutover, .fini = teardown,
     .timeout = 120) {
    for (int victim = 0; victim < 2; victim++) {
        static uint64_t a[GROUP], b[GROUP];
        ps_client *c = start_admit_cluster(a, b);
        for (int round = 0; round < 2; round++)
            push_group(c, a);
        push_group(c, b);
        int fd;
        pid_t pid = start_move_stopped_at("cutover", &fd);
        cr_assert_eq(ps_cluster_restart(&cl, victim, SIGKILL), 0);
        char out[4096];
        finish_move(pid, fd, out, sizeof(out));
        cr_assert(strstr(out, victim ? "copy begun again 0 times" : "copy begun again 1 times"),
                  "shard %d killed: %s", victim, out);
        push_group(c, a);
        push_group(c, b);
        cr_assert_eq(rows_of(c, a), GROUP, "shard %d killed: keys pushed twice before, once after",
                     victim);
        cr_assert_eq(rows_of(c, b), 0, "shard %d killed: keys pushed once before, once after", victim);
        ps_client_free(c);
        cr_assert_eq(ps_cluster_destroy(&cl), 0);
        memset(&cl, 0, sizeof(cl));
    }
}

/* The sequence numbers of the moved buckets survive a kill -9 of their new
 * owner: a push the old owner applied, resent to the new one after its
 * restart, is answered as already applied. (They are written back before
 * the map flips: with nothing else dirty on the target, that write-back
 * was skipped, and the restart lost them.) Which numbers below the highest
 * were applied moves too: one the old owner applied after a later one is
 * a repeat, one it never applied is new. */
Test(reshard, a_restarted_target_keeps_the_moved_sequence_numbers, .fini = teardown,
     .timeout = 60) {
    make_keys();
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    ps_client *c = client_of(&cl);
    install_real_addresses(c);
    uint64_t a = 0;
    for (size_t i = 0; i < NKEYS && !a; i++)
        if (ps_bucket(keys[i], BUCKETS) - MOVED_LO < MOVED_HI - MOVED_LO)
            a = keys[i];
    int fd = ps_raw_connect(cl.ports[0]);
    ctrps__response__free_unpacked(ps_raw_hello(fd, 77), NULL);
    expect_raw_push(fd, 9, a, false, "first");
    expect_raw_push(fd, 7, a, false, "overtaken by 9");
    close(fd);
    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "move", "--buckets", "0-15", "--to", "1", NULL), 0);
    free(out);
    cr_assert_eq(ps_cluster_restart(&cl, 1, SIGKILL), 0);
    fd = ps_raw_connect(cl.ports[1]);
    ctrps__response__free_unpacked(ps_raw_hello(fd, 77), NULL);
    expect_raw_push(fd, 9, a, true, "the target forgot the moved bucket's seq in its restart");
    expect_raw_push(fd, 7, a, true, "the target forgot that it was applied before the move");
    expect_raw_push(fd, 8, a, false, "never applied, taken for a repeat after the move");
    close(fd);
    ps_client_free(c);
}
