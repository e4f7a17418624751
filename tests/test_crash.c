/* Crash recovery through the real binaries.
 *
 * sync: a worker trains on a fixed input while shards are killed with
 * SIGKILL at random moments and restarted; the final state must equal, bit
 * for bit, the state a run without crashes reaches on the same input (one
 * worker, max_in_flight = 0, so the order of updates is the same). That holds
 * only if no acknowledged push is lost and none is applied twice.
 *
 * interval=MS: a crash may lose acknowledged pushes, but only those of about
 * the last MS, and the shard restarts from a consistent state.
 *
 * Outages: a worker rides out a shard that is down for seconds or read-only
 * for seconds, warning about it, and ends in the uninterrupted state too; an
 * outage longer than [worker] outage_timeout_s ends it with exit 1 and an
 * "error" naming the shard. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "harness.h"
#include "keys.h"

#define LR_BODY(durability) LR_BODY_FLUSH(durability, "300")
#define LR_BODY_FLUSH(durability, flush_ms) PS_TEST_LR_BODY(durability, flush_ms)

static ps_cluster cl;

/* The worker of the test running now, 0 once reaped: an assertion that
 * fails while it trains leaves it to teardown, which must not leave it
 * retrying against shards that are gone. */
static pid_t worker_pid;

static void teardown(void) {
    if (worker_pid > 0) {
        kill(worker_pid, SIGKILL);
        waitpid(worker_pid, NULL, 0);
        worker_pid = 0;
    }
    ps_cluster_teardown(&cl, NULL);
}

/* Reaps the worker if it has exited (asserting it succeeded); false then. */
static bool worker_running(pid_t *worker) {
    int status;
    if (*worker && waitpid(*worker, &status, WNOHANG) == *worker) {
        *worker = 0;
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker failed early (status %d)", status);
    }
    return *worker != 0;
}

/* What happens to the shards while the worker trains. */
typedef struct disturbance {
    int (*run)(pid_t *worker);   /* returns how often it struck */
    int min_strikes;             /* fewer: the input is too small to show anything */
    const char *log_must;        /* the worker's log holds "shard 1 (ADDR) <it>" */
} disturbance;

/* Kill a random shard at a random moment, five times, while the worker
 * runs; a deterministic seed keeps failures reproducible. */
static int kill_random_shards(pid_t *worker) {
    unsigned seed = 2024;
    int kills = 0;
    for (int k = 0; k < 5; k++) {
        usleep(100000 + (useconds_t)(rand_r(&seed) % 250000));
        if (!worker_running(worker))
            break;
        int shard = rand_r(&seed) % cl.nshards;
        cr_assert_eq(ps_cluster_restart(&cl, shard, SIGKILL), 0, "restart of shard %d", shard);
        kills++;
    }
    return kills;
}

static const disturbance random_kills = {kill_random_shards, 3, NULL};

/* Writes the input file into the worker's pipe, all but its last line at
 * the pace the worker reads, then waits for release before the last line
 * and the end of input: until then the worker cannot finish, so every
 * disturbance strikes a worker that is still training. A failed write means
 * the worker is gone; its exit status tells why. */
typedef struct feeder {
    pthread_t thread;
    int fd;
    char *text;
    size_t len;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool released;
} feeder;

static void *feed_input(void *arg) {
    feeder *f = arg;
    size_t held = f->len; /* from the start of the last line */
    while (held > 0 && f->text[held - 1] == '\n')
        held--;
    while (held > 0 && f->text[held - 1] != '\n')
        held--;
    bool ok = ps_write_all(f->fd, f->text, held);
    pthread_mutex_lock(&f->mu);
    while (!f->released)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    if (ok)
        ps_write_all(f->fd, f->text + held, f->len - held);
    close(f->fd);
    return NULL;
}

static void feeder_start(feeder *f, const char *data, int fd) {
    signal(SIGPIPE, SIG_IGN); /* a worker that died fails the write instead */
    *f = (feeder){.fd = fd, .text = ps_read_file(data)};
    cr_assert_not_null(f->text, "cannot read %s", data);
    f->len = strlen(f->text);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    cr_assert_eq(pthread_create(&f->thread, NULL, feed_input, f), 0);
}

static void feeder_finish(feeder *f) {
    pthread_mutex_lock(&f->mu);
    f->released = true;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thread, NULL);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f->text);
}

static char *train_and_export(const char *data, const disturbance *d) {
    char log[300];
    int input;
    worker_pid = ps_start_worker(&cl, &input, log, sizeof(log));
    feeder f;
    feeder_start(&f, data, input);
    int strikes = d ? d->run(&worker_pid) : 0;
    feeder_finish(&f);
    if (worker_pid) {
        pid_t pid = worker_pid;
        worker_pid = 0; /* reaped by the wait, whatever it asserts */
        ps_wait_worker(pid, log);
    }
    if (d) {
        cr_assert_geq(strikes, d->min_strikes, "the worker finished before the shards were disturbed");
        if (d->log_must) {
            char must[256];
            snprintf(must, sizeof(must), "shard 1 (127.0.0.1:%d) %s", cl.ports[1], d->log_must);
            char *text = ps_read_file(log);
            cr_assert(text && strstr(text, must), "the worker did not log \"%s\":\n%s", must, text);
            cr_log_info("worker log:\n%s", text);
            free(text);
        }
    }
    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "export", "--table", "wide", "--state", NULL), 0);
    return out;
}

/* The same table with feature admission on (server/admit.h): a key is
 * created on its second push, and then with probability 0.8. */
#define LR_ADMIT_BODY LR_BODY("sync") "admit_after = 2\nadmit_probability = 0.8\nadmit_bloom_bits = 65536\n"

static char *run_once(const char *body, const char *data, const disturbance *d) {
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    char path[300];
    ps_cluster_path(&cl, "data.tsv", path, sizeof(path));
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "cp %s %s", data, path);
    cr_assert_eq(system(cmd), 0);
    char *state = train_and_export(path, d);
    if (strstr(body, "admit_after") && !d) {
        /* Admission did refuse keys, or the comparison proves nothing (a
         * restarted shard counts from zero: look at the run without kills). */
        char *st = NULL;
        cr_assert_eq(ps_run_cli(&cl, &st, "stats", NULL), 0);
        const char *r = strstr(st, "\"rejected\":");
        cr_assert(r && strtoull(r + 11, NULL, 10) > 0, "no key was rejected: %s", st);
        free(st);
    } else if (strstr(body, "durability = sync") && !d) {
        /* Without admission or ttl_s, write-backs go a group of buckets at
         * a time: the kills of the disturbed run then fall between two
         * groups' batches too, which the comparison checks. */
        char *st = NULL;
        cr_assert_eq(ps_run_cli(&cl, &st, "stats", NULL), 0);
        const char *f = strstr(st, "\"flushes\":"), *b = strstr(st, "\"flush_batches\":");
        cr_assert(f && b, "no write-back counters: %s", st);
        unsigned long long rounds = strtoull(f + 10, NULL, 10), batches = strtoull(b + 16, NULL, 10);
        cr_assert(rounds > 0 && batches > rounds, "write-backs not in groups (%llu rounds, %llu batches)",
                  rounds, batches);
        free(st);
    }
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
    return state;
}

/* Generated input: enough rows to leave more than 1000 rows of state and
 * to keep the worker busy through most of the disturbances (5 kills take at
 * most 1.75 s plus restarts, an outage 3.3 s); the feeder holds the last
 * line back until they are over, so a faster machine only shortens the busy
 * part. Under the sanitizers the daemons are slower: fewer rows. */
#ifdef PS_TEST_UNDER_ASAN
#define CRASH_ROWS "25000"
#else
#define CRASH_ROWS "100000"
#endif

static void gen_input(char *data) {
    int fd = mkstemp(data);
    cr_assert_geq(fd, 0);
    close(fd);
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "gen", "--rows", CRASH_ROWS, "--seed",
                    "21", "--format", "criteo", "--out", data, NULL};
    cr_assert_eq(ps_run(argv, NULL, NULL), 0);
}

static void remove_input(const char *data) {
    unlink(data);
    char truth[600];
    snprintf(truth, sizeof(truth), "%s.truth.json", data);
    unlink(truth);
}

static void disturbed_matches_uninterrupted(const char *body, const disturbance *d) {
    char data[] = "/tmp/ctrps-crash-XXXXXX";
    gen_input(data);
    char *clean = run_once(body, data, NULL);
    char *disturbed = run_once(body, data, d);
    size_t lines = 0;
    for (const char *p = clean; *p; p++)
        lines += *p == '\n';
    cr_assert_gt(lines, 1000, "too little state to compare");
    cr_assert_str_eq(disturbed, clean, "state after the disturbance differs from the uninterrupted run");
    free(clean);
    free(disturbed);
    remove_input(data);
}

Test(crash, sync_kill9_during_training_ends_in_the_uninterrupted_state, .timeout = 600) {
    disturbed_matches_uninterrupted(LR_BODY("sync"), &random_kills);
}

/* With admission, the decisions replayed from the push log and those of the
 * filter saved with each write-back must be the ones the uninterrupted run
 * took: a wrong one creates a row the other run does not have. */
Test(crash, sync_kill9_with_admission_ends_in_the_uninterrupted_state, .timeout = 600) {
    disturbed_matches_uninterrupted(LR_ADMIT_BODY, &random_kills);
}

/* interval mode: push one gradient of 1 to a key every few milliseconds and
 * note when each push was acknowledged; kill -9; after the restart the row
 * must hold exactly the first k pushes, for a k that includes every push
 * acknowledged more than the interval (plus the write's duration) before the
 * kill. AdaGrad with g = 1 makes k readable: acc = initial + k. */
Test(crash, interval_kill9_loses_at_most_the_interval, .fini = teardown, .timeout = 120) {
    const int interval_ms = 200;
    cr_assert_eq(ps_cluster_start(&cl, 1,
                                  "buckets = 16\n[server]\ndurability = interval=200\n"
                                  "[table.acc]\ndim = 1\noptimizer = adagrad\nlr = 0.01\n"
                                  "initial_accumulator_value = 0.5\n"),
                 0);
    ps_client *c;
    char err[256];
    ps_client_options co = {.cfg = cl.cfg, .name = "crash"};
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    uint64_t key = 42;
    float g = 1.0f;
    enum { N = 400 };
    static double acked_at[N];
    struct timespec ts;
    int n = 0;
    for (; n < N; n++) {
        cr_assert_eq(ps_client_push(c, "acc", 1, &key, 1, &g, NULL, NULL, err, sizeof(err)), 0, "%s", err);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        acked_at[n] = ts.tv_sec + ts.tv_nsec * 1e-9;
        usleep(2000);
    }
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double killed_at = ts.tv_sec + ts.tv_nsec * 1e-9;
    ps_client_free(c);
    cr_assert_eq(ps_cluster_restart(&cl, 0, SIGKILL), 0);
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    uint8_t found;
    float w, state[2];
    cr_assert_eq(ps_client_lookup(c, "acc", 1, 2, &key, 1, &found, &w, state, err, sizeof(err)), 0);
    ps_client_free(c);
    double k = found ? state[1] - 0.5 : 0;
    cr_assert(fabs(k - round(k)) < 1e-3, "acc %g is not initial + a whole number of pushes", state[1]);
    int kept = (int)round(k);
    /* Consistent: w is what exactly `kept` pushes of g = 1 produce. */
    double wexp = 0, acc = 0.5;
    for (int i = 0; i < kept; i++) {
        acc = (float)(acc + 1);
        wexp = (float)(wexp - 0.01 * 1 / (sqrt(acc) + 1e-8));
    }
    cr_assert(fabs(w - wexp) <= 1e-6, "w %g does not match %d pushes (%g)", (double)w, kept, wexp);
    cr_assert_leq(kept, n);
    /* Bounded loss: every push acknowledged well before the kill survived.
     * The slack covers one write-back's duration and scheduling. */
    int must = 0;
    for (int i = 0; i < n; i++)
        if (acked_at[i] < killed_at - (interval_ms + 800) / 1000.0)
            must = i + 1;
    cr_assert_geq(kept, must, "lost pushes acknowledged more than %d ms before the kill (kept %d of %d, "
                              "needed %d)",
                  interval_ms + 800, kept, n, must);
    cr_log_info("interval=%d ms: kept %d of %d acknowledged pushes", interval_ms, kept, n);
}

/* The window the random kills above rarely hit: a push applied and logged
 * whose acknowledgement never arrived. The client resends it after the
 * restart with the same (client id, sequence number); the shard must answer
 * "already applied" and not apply it again. */
static int hello_as(uint64_t client_id, uint64_t *ret_last_seq) {
    int fd = ps_raw_connect(cl.ports[0]);
    Ctrps__Response *r = ps_raw_hello(fd, client_id);
    *ret_last_seq = r->hello->last_push_seq;
    ctrps__response__free_unpacked(r, NULL);
    return fd;
}

static Ctrps__Response *push_seq(int fd, uint64_t client_id, uint64_t seq, uint64_t key, float g) {
    ps_raw_send_push(fd, seq, "acc", &key, 1, &g, 1, client_id, seq);
    Ctrps__Response *r = ps_raw_recv(fd);
    cr_assert_not_null(r);
    return r;
}

Test(crash, push_replayed_after_kill9_is_applied_once, .fini = teardown, .timeout = 60) {
    cr_assert_eq(ps_cluster_start(&cl, 1,
                                  "buckets = 16\n[server]\ndurability = sync\nflush_interval_ms = 3600000\n"
                                  "[table.acc]\ndim = 1\noptimizer = adagrad\nlr = 0.01\n"
                                  "initial_accumulator_value = 0.5\n"),
                 0);
    uint64_t last;
    int fd = hello_as(77, &last);
    cr_assert_eq(last, 0);
    Ctrps__Response *r = push_seq(fd, 77, 1, 5, 1.0f);
    cr_assert(r->status == CTRPS__STATUS__OK && r->push->applied == 1 && !r->push->already_applied);
    ctrps__response__free_unpacked(r, NULL);
    close(fd);
    /* Killed before writing back: the sequence number lives in the push log. */
    cr_assert_eq(ps_cluster_restart(&cl, 0, SIGKILL), 0);
    fd = hello_as(77, &last);
    cr_assert_eq(last, 1, "the shard forgot client 77's last push");
    r = push_seq(fd, 77, 1, 5, 1.0f);
    cr_assert(r->status == CTRPS__STATUS__OK && r->push->already_applied && r->push->applied == 0);
    ctrps__response__free_unpacked(r, NULL);
    r = push_seq(fd, 77, 2, 5, 1.0f);
    cr_assert(r->status == CTRPS__STATUS__OK && r->push->applied == 1 && !r->push->already_applied);
    ctrps__response__free_unpacked(r, NULL);
    close(fd);
    /* acc = 0.5 + two pushes of g = 1, not three. */
    char *out;
    cr_assert_eq(ps_run_cli(&cl, &out, "export", "--table", "acc", "--state", NULL), 0);
    cr_assert(strstr(out, "5\tacc\t2.5\n"), "%s", out);
    free(out);
    /* And after a clean restart the sequence number comes from RocksDB. */
    cr_assert_eq(ps_cluster_restart(&cl, 0, SIGTERM), 0);
    fd = hello_as(77, &last);
    cr_assert_eq(last, 2);
    close(fd);
}

/* ---- riding out outages ---------------------------------------------------------- */

#define OUTAGE_S 3

/* Shard 1 is killed early in the run and comes back OUTAGE_S later, on the
 * same port and data directory; the worker waits for it meanwhile. */
static int kill_shard_for_a_while(pid_t *worker) {
    usleep(300000);
    if (!worker_running(worker))
        return 0;
    cr_assert_eq(ps_cluster_stop_shard(&cl, 1, SIGKILL), (int)SIGKILL, "kill of shard 1");
    sleep(OUTAGE_S);
    cr_assert(worker_running(worker), "the worker did not wait for the shard");
    cr_assert_eq(ps_cluster_start_shard(&cl, 1), 0, "restart of shard 1");
    return 1;
}

static void set_fsize(pid_t pid, rlim_t limit) {
    /* Only the soft limit, so it can be raised again (as in test_disk). */
    struct rlimit rl = {limit, RLIM_INFINITY};
    cr_assert_eq(prlimit(pid, RLIMIT_FSIZE, &rl, NULL), 0, "prlimit");
}

/* Shard 1 cannot write for OUTAGE_S (a file-size limit of 0: every write
 * that extends a file fails, as on a full disk), so it turns read-only and
 * refuses pushes and new rows, then recovers. */
static int read_only_for_a_while(pid_t *worker) {
    usleep(300000);
    if (!worker_running(worker))
        return 0;
    set_fsize(cl.pids[1], 0);
    sleep(OUTAGE_S);
    cr_assert(worker_running(worker), "the worker did not wait for the shard");
    set_fsize(cl.pids[1], RLIM_INFINITY);
    return 1;
}

Test(crash, worker_rides_out_a_shard_kill_and_ends_in_the_uninterrupted_state, .timeout = 600) {
    static const disturbance d = {kill_shard_for_a_while, 1, "unavailable"};
    disturbed_matches_uninterrupted(LR_BODY("sync"), &d);
}

/* No write-back during the run: the push log is what fails to write. A
 * RocksDB write (its WAL) that fails with EFBIG is not an error RocksDB
 * recovers from by itself, and the shard has no way yet to reopen the
 * store, so a write-back caught by the limit would keep the shard read-only
 * for good (a follow-up for the shard, not the worker). */
Test(crash, worker_rides_out_a_read_only_shard_and_ends_in_the_uninterrupted_state, .timeout = 600) {
    static const disturbance d = {read_only_for_a_while, 1, "unavailable: READ_ONLY"};
    disturbed_matches_uninterrupted(LR_BODY_FLUSH("sync", "3600000"), &d);
}

/* Past outage_timeout_s the worker gives up: exit 1, and its result line
 * still comes, with an "error" naming the shard. */
Test(crash, an_outage_past_outage_timeout_s_fails_naming_the_shard, .fini = teardown, .timeout = 300) {
    char data[] = "/tmp/ctrps-crash-XXXXXX";
    gen_input(data);
    cr_assert_eq(ps_cluster_start(&cl, 2, LR_BODY("sync") "[worker]\noutage_timeout_s = 2\n"), 0);
    char out[300], log[300];
    int input;
    pid_t pid = ps_start_worker(&cl, &input, log, sizeof(log));
    ps_cluster_path(&cl, "worker.out", out, sizeof(out));
    feeder f;
    feeder_start(&f, data, input);
    usleep(300000);
    cr_assert(worker_running(&pid), "the worker failed before the outage");
    cr_assert_eq(ps_cluster_stop_shard(&cl, 1, SIGKILL), (int)SIGKILL);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    feeder_finish(&f);
    remove_input(data);
    char *result = ps_read_file(out), *text = ps_read_file(log);
    cr_assert(result && text);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d; log:\n%s", status, text);
    char shard[64];
    snprintf(shard, sizeof(shard), "shard 1 (127.0.0.1:%d)", cl.ports[1]);
    const char *e = strstr(result, "\"error\":");
    cr_assert(e && strstr(e, shard) && strstr(e, "outage_timeout_s"), "result line: %s", result);
    cr_assert(strstr(text, shard) && strstr(text, "unavailable"), "no warning in the log:\n%s", text);
    free(result);
    free(text);
}
