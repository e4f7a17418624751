/* Kafka input through the real binaries, against librdkafka's mock cluster
 * (rdkafka_mock.h: a broker on loopback TCP inside this test process; no
 * external Kafka).
 *
 * - A topic of one partition holds the lines of a generated file in order:
 *   a worker reading it ends in exactly the state a worker reading the file
 *   reaches (max_in_flight = 0), and a second run of the same group trains
 *   nothing: the offsets were committed.
 * - Exactly once across a crash: a checkpoint is taken while the worker
 *   reads the topic, the worker is killed with SIGKILL after it, a fresh
 *   cluster restored from the checkpoint and a worker resumed from it end
 *   in the uninterrupted state, and the examples before the checkpoint's
 *   offset plus those the resumed worker trained are every message once.
 * - Two workers share a topic of three partitions: together they train
 *   every message once, and a second run of the group trains nothing. */
#include <criterion/criterion.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static const char *body = "buckets = 128\n"
                          "[server]\ndurability = sync\nflush_interval_ms = 500\n"
                          "[input]\nformat = criteo\nintegers = bucketize\nkafka_group = test-group\n"
                          "[model]\ntype = lr\nbatch_size = 64\nmax_in_flight = 0\n"
                          "[table.wide]\ndim = 1\noptimizer = ftrl\nalpha = 0.05\nbeta = 0.001\n"
                          "lambda1 = 0.0001\n"
                          "slots = I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13\n"
                          "slots = C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13\n"
                          "slots = C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24, C25, C26\n";

/* The crash test must still be training when the checkpoint is taken and
 * when the worker is killed right after it. */
#ifdef PS_TEST_UNDER_ASAN
#define ROWS 5000
#else
#define ROWS 10000
#endif

static ps_cluster cl;
static char data[64], ckroot[64];
static rd_kafka_t *mock_rk;
static rd_kafka_mock_cluster_t *mock;
static char url[512], url3[512];
static const char *bootstraps;

/* Messages of one topic, line i to partition i % partitions, in order. */
static void produce(const char *bs, const char *topic, int partitions) {
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    cr_assert_eq(rd_kafka_conf_set(conf, "bootstrap.servers", bs, why, sizeof(why)), RD_KAFKA_CONF_OK);
    /* Idempotent: retries cannot reorder a partition's messages. */
    cr_assert_eq(rd_kafka_conf_set(conf, "enable.idempotence", "true", why, sizeof(why)), RD_KAFKA_CONF_OK);
    cr_assert_eq(rd_kafka_conf_set(conf, "linger.ms", "5", why, sizeof(why)), RD_KAFKA_CONF_OK);
    cr_assert_eq(rd_kafka_conf_set(conf, "batch.num.messages", "64", why, sizeof(why)), RD_KAFKA_CONF_OK);
    rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
    cr_assert_not_null(p, "producer: %s", why);
    FILE *f = fopen(data, "r");
    cr_assert_not_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int i = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        rd_kafka_resp_err_t e;
        while ((e = rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(i % partitions),
                                      RD_KAFKA_V_VALUE(line, (size_t)n), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                      RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(p, 10);
        cr_assert_eq(e, 0, "produce: %s", rd_kafka_err2str(e));
        i++;
    }
    free(line);
    fclose(f);
    cr_assert_eq(i, ROWS);
    cr_assert_eq(rd_kafka_flush(p, 60000), 0, "messages left unsent");
    rd_kafka_destroy(p);
}

static void setup(void) {
    snprintf(data, sizeof(data), "/tmp/ctrps-kdata-XXXXXX");
    int fd = mkstemp(data);
    close(fd);
    snprintf(ckroot, sizeof(ckroot), "/tmp/ctrps-kckpt-XXXXXX");
    cr_assert_not_null(mkdtemp(ckroot));
    char rows[16];
    snprintf(rows, sizeof(rows), "%d", ROWS);
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "gen", "--rows", rows, "--seed", "41",
                    "--format", "criteo", "--out", data, NULL};
    cr_assert_eq(ps_run(argv, NULL, NULL), 0);

    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* The mock cluster's host client connects nowhere: not worth a notice. */
    cr_assert_eq(rd_kafka_conf_set(conf, "log_level", "3", why, sizeof(why)), RD_KAFKA_CONF_OK);
    mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
    cr_assert_not_null(mock_rk, "%s", why);
    mock = rd_kafka_mock_cluster_new(mock_rk, 1);
    cr_assert_not_null(mock, "mock cluster");
    const char *bs = bootstraps = rd_kafka_mock_cluster_bootstraps(mock);
    cr_assert_eq(rd_kafka_mock_topic_create(mock, "clicks", 1, 1), 0);
    produce(bs, "clicks", 1);
    snprintf(url, sizeof(url), "kafka://%s/clicks", bs);
    snprintf(url3, sizeof(url3), "kafka://%s/clicks3", bs);
}

static void teardown(void) {
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf %s %s %s.truth.json", ckroot, data, data);
    cr_expect_eq(system(cmd), 0);
    if (mock)
        rd_kafka_mock_cluster_destroy(mock);
    if (mock_rk)
        rd_kafka_destroy(mock_rk);
}

TestSuite(kafka, .init = setup, .fini = teardown, .timeout = 300);

/* Run a worker to its end; returns its JSON line. */
static char *run_worker(const char *input, const char *resume, const char *index, const char *count) {
    char *argv[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cl.config, "--input",
                    (char *)input, "--log-level", "warn", "--worker-index", (char *)index,
                    "--num-workers", (char *)count, resume ? "--resume" : NULL, (char *)resume, NULL};
    char *out, *err;
    cr_assert_eq(ps_run(argv, &out, &err), 0, "worker failed: %s\n%s", out, err);
    free(err);
    return out;
}

static unsigned long long examples_of(const char *json) {
    const char *e = strstr(json, "\"examples\":");
    cr_assert_not_null(e, "%s", json);
    return strtoull(e + 11, NULL, 10);
}

static char *export_state(void) {
    char *out;
    cr_assert_eq(ps_run_cli(&cl, &out, "export", "--table", "wide", "--state", NULL), 0);
    return out;
}

/* The state a worker reaches on the file. */
static char *reference_state(void) {
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    free(run_worker(data, NULL, "0", "1"));
    char *ref = export_state();
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
    return ref;
}

static void killed_after_a_checkpoint_and_resumed(const char *reference);

/* The topic trains as its file; a second run of the group trains nothing;
 * then a run killed after a checkpoint and resumed from it trains every
 * message exactly once (killed_after_a_checkpoint_and_resumed). */
Test(kafka, a_topic_trains_as_its_file_commits_and_resumes_exactly_once) {
    char *reference = reference_state();
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    char *out = run_worker(url, NULL, "0", "1");
    cr_assert_eq(examples_of(out), ROWS, "%s", out);
    free(out);
    char *got = export_state();
    cr_assert_str_eq(got, reference, "the Kafka run differs from the file run");
    free(got);
    /* The group's offsets are at the end: nothing is trained twice. */
    out = run_worker(url, NULL, "0", "1");
    cr_assert_eq(examples_of(out), 0, "a second run trained again: %s", out);
    free(out);
    got = export_state();
    cr_assert_str_eq(got, reference);
    free(got);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
    killed_after_a_checkpoint_and_resumed(reference);
    free(reference);
}

/* Until the shards hold rows: the worker is connected and training. */
static void wait_training(pid_t worker) {
    for (int i = 0; i < 600; i++) {
        char *st = NULL;
        cr_assert_eq(ps_run_cli(&cl, &st, "stats", NULL), 0);
        const char *r = strstr(st, "\"rows\":");
        bool rows = r && strtoull(r + 7, NULL, 10) > 0;
        free(st);
        if (rows)
            return;
        int status;
        cr_assert_eq(waitpid(worker, &status, WNOHANG), 0, "the worker exited before training");
        usleep(20000);
    }
    cr_assert_fail("the worker never trained");
}

/* The group's offsets are at the end of the topic from the run before:
 * this one reads from its start under another group. */
static void killed_after_a_checkpoint_and_resumed(const char *reference) {
    /* Fetches of one record batch (64 messages, see produce()) answered
     * after 20 ms: the worker reads at most 3200 messages a second (the
     * topic lasts >= 1.5 s) and is mid-stream at the checkpoint and the
     * kill. Through kafka_properties, which this tests too. */
    char b[4096];
    const char *model = strstr(body, "[model]");
    snprintf(b, sizeof(b), "%.*skafka_properties = max.partition.fetch.bytes=1\n%s", (int)(model - body),
             body, model);
    memcpy(strstr(b, "kafka_group = test-group"), "kafka_group = crash-grou", 24);
    cr_assert_eq(rd_kafka_mock_broker_set_rtt(mock, 1, 20), 0);
    cr_assert_eq(ps_cluster_start(&cl, 2, b), 0);
    int fd;
    char *argv[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cl.config, "--input", url,
                    "--log-level", "warn", NULL};
    pid_t pid = ps_spawn_stdout(argv, &fd);
    cr_assert_gt(pid, 0);
    wait_training(pid);
    char *ckpt = NULL;
    cr_assert_eq(ps_run_cli(&cl, &ckpt, "checkpoint", "--dir", ckroot, "--wait", "60", NULL), 0);
    ckpt[strcspn(ckpt, "\n")] = '\0';
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    close(fd);
    cr_assert(WIFSIGNALED(status), "the worker had finished before it was killed: add rows");
    cr_assert_eq(rd_kafka_mock_broker_set_rtt(mock, 1, 0), 0);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);

    char manifest[512];
    snprintf(manifest, sizeof(manifest), "%s/manifest", ckpt);
    char *m = ps_read_file(manifest);
    cr_assert_not_null(m, "no manifest at %s", manifest);
    const char *pos = strstr(m, "v1 kafka topic=");
    cr_assert_not_null(pos, "no Kafka position in %s", m);
    const char *p0 = strstr(pos, " 0:");
    cr_assert_not_null(p0, "%s", m);
    unsigned long long before = strtoull(p0 + 3, NULL, 10);
    cr_assert(before > 0 && before < ROWS, "the checkpoint is not mid-stream: %s", m);
    free(m);

    /* The group committed more than the checkpoint holds; --resume wins. */
    cr_assert_eq(ps_cluster_start_restored(&cl, 2, b, ckroot), 0);
    char *out = run_worker(url, ckroot, "0", "1");
    cr_assert_eq(before + examples_of(out), ROWS, "not every message once: %llu before, %s", before, out);
    free(out);
    char *resumed = export_state();
    cr_assert_str_eq(resumed, reference, "the resumed run differs from the uninterrupted one");
    free(resumed);
    free(ckpt);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
}

Test(kafka, workers_of_a_group_share_the_partitions) {
    cr_assert_eq(rd_kafka_mock_topic_create(mock, "clicks3", 3, 1), 0);
    produce(bootstraps, "clicks3", 3);
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    char *argv0[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cl.config, "--input", url3,
                     "--log-level", "warn", "--worker-index", "0", "--num-workers", "2", NULL};
    char *argv1[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cl.config, "--input", url3,
                     "--log-level", "warn", "--worker-index", "1", "--num-workers", "2", NULL};
    int fd0, fd1;
    pid_t w0 = ps_spawn_stdout(argv0, &fd0), w1 = ps_spawn_stdout(argv1, &fd1);
    cr_assert(w0 > 0 && w1 > 0);
    unsigned long long total = 0, got[2];
    int fds[2] = {fd0, fd1};
    pid_t pids[2] = {w0, w1};
    for (int i = 0; i < 2; i++) {
        char json[4096];
        ps_read_fd(fds[i], json, sizeof(json));
        int status;
        waitpid(pids[i], &status, 0);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker %d: %s", i, json);
        got[i] = examples_of(json);
        total += got[i];
    }
    /* Partitions 0 and 2 to worker 0, partition 1 to worker 1. */
    cr_assert_eq(total, ROWS, "%llu + %llu", got[0], got[1]);
    cr_assert_eq(got[1], ROWS / 3 + (ROWS % 3 > 1), "%llu + %llu", got[0], got[1]);
    for (int i = 0; i < 2; i++) {
        char *out = run_worker(url3, NULL, i ? "1" : "0", "2");
        cr_assert_eq(examples_of(out), 0, "worker %d trained again: %s", i, out);
        free(out);
    }
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
}

/* The offset group `group` committed on partition 0 of topic, or -1. */
static long long committed(const char *topic, const char *group) {
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    cr_assert_eq(rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps, why, sizeof(why)), RD_KAFKA_CONF_OK);
    cr_assert_eq(rd_kafka_conf_set(conf, "group.id", group, why, sizeof(why)), RD_KAFKA_CONF_OK);
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
    cr_assert_not_null(c, "%s", why);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, 0);
    cr_assert_eq(rd_kafka_committed(c, l, 10000), 0);
    long long off = l->elems[0].err ? -1 : l->elems[0].offset;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(c);
    return off;
}

/* --follow: the worker trains what arrives, commits as the shards
 * acknowledge (not only at its end), and on SIGTERM finishes and exits 0
 * having trained every message once. */
Test(kafka, follow_commits_while_running_and_stops_on_sigterm) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
    int fd;
    char *argv[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cl.config, "--input", url,
                    "--follow", "--log-level", "warn", NULL};
    pid_t pid = ps_spawn_stdout(argv, &fd);
    cr_assert_gt(pid, 0);
    /* The last batch is partial and waits for more messages; the full
     * one before it waits too (the trainer takes the next batch before it
     * trains the current one): every batch before those two is trained,
     * acknowledged and committed while the worker runs. */
    long long want = ROWS - ROWS % 64 - 64, got = -1;
    for (int i = 0; i < 1200 && got < want; i++) {
        usleep(50000);
        got = committed("clicks", "test-group");
    }
    cr_assert_eq(got, want, "committed %lld while following", got);
    kill(pid, SIGTERM);
    char json[4096];
    ps_read_fd(fd, json, sizeof(json));
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s", json);
    cr_assert_eq(examples_of(json), ROWS, "%s", json);
    cr_assert_eq(committed("clicks", "test-group"), ROWS);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
}

Test(kafka, bad_sources_are_refused_with_a_reason) {
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
    static const char *bad[][2] = {
        {"kafka://localhost/clicks", "is not HOST:PORT"},
        {"kafka://127.0.0.1:9092", "expected kafka://HOST:PORT"},
        {"kafka://127.0.0.1:9092/bad topic", "is not a Kafka topic name"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *argv[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cl.config, "--input",
                        (char *)bad[i][0], NULL};
        char *out, *err;
        cr_assert_eq(ps_run(argv, &out, &err), 2, "%s: %s", bad[i][0], err);
        cr_assert(strstr(err, bad[i][1]), "%s: %s", bad[i][0], err);
        cr_assert(strstr(out, "\"error\":"), "%s", out);
        free(out);
        free(err);
    }
    /* More workers than partitions: the one without any says so. */
    char *argv[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", cl.config, "--input", url,
                    "--worker-index", "1", "--num-workers", "2", NULL};
    char *out, *err;
    cr_assert_eq(ps_run(argv, &out, &err), 2, "%s", err);
    cr_assert(strstr(err, "has none"), "%s", err);
    free(out);
    free(err);
    cr_assert_eq(ps_cluster_destroy(&cl), 0);
}
