/* The push log's writer thread (server/pushlog.h): in durability = sync no
 * reply that follows a push leaves the shard before the push's record is in
 * the log file. PS_TEST_PUSHLOG_DELAY_MS holds each of the writer's writes
 * back, so a reply that overtook its write would find the file without the
 * record (or, after kill -9, the push lost). The file is read the moment a
 * reply arrives: no timing is asserted. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctrps.pb-c.h"
#include "harness.h"

#define DIM 4

static const char *body =
    "buckets = 16\n"
    "[server]\n"
    "durability = sync\n"
    /* No write-back during a test: it would rotate the log and drop the
     * segments holding the records counted below. */
    "flush_interval_ms = 3600000\n"
    "flush_dirty_rows = 100000000\n"
    "[table.emb]\n"
    "dim = 4\n"
    "optimizer = adagrad\n"
    "init = zero\n"
    "slots = C1\n";

static ps_cluster cl;

static void setup(void) {
    signal(SIGPIPE, SIG_IGN);
    /* Inherited by the shard: each log write waits this long first. */
    setenv("PS_TEST_PUSHLOG_DELAY_MS", "300", 1);
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
}

static void teardown(void) { cr_assert_eq(ps_cluster_destroy(&cl), 0); }

/* Whole records in the shard's push-log segments now: from each
 * segment's first lsn on, up to a torn record or a record of an earlier
 * segment the file was written over from (server/pushlog.h). */
static unsigned records_in_log(void) {
    char dir[400];
    snprintf(dir, sizeof(dir), "%s/data/shard-0/pushlog", cl.dir);
    DIR *d = opendir(dir);
    cr_assert(d, "%s", dir);
    unsigned n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t nl = strlen(e->d_name);
        if (nl < 4 || strcmp(e->d_name + nl - 4, ".log"))
            continue;
        char path[700];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        uint64_t lsn = strtoull(e->d_name, NULL, 16);
        size_t len;
        char *data = ps_read_file_len(path, &len);
        cr_assert(data, "%s", path);
        for (size_t off = 0; off + 8 <= len; lsn++) {
            uint32_t plen;
            uint64_t rec_lsn;
            memcpy(&plen, data + off, 4);
            if (plen < 8 || off + 8 + plen > len)
                break;
            memcpy(&rec_lsn, data + off + 8, 8);
            if (rec_lsn != lsn)
                break;
            off += 8 + plen;
            n++;
        }
        free(data);
    }
    closedir(d);
    return n;
}

static void send_push(int fd, uint64_t id, uint64_t key, float g) {
    float grads[DIM];
    for (int i = 0; i < DIM; i++)
        grads[i] = g;
    ps_raw_send_push(fd, id, "emb", &key, 1, grads, DIM, 0, 0);
}

static void send_pull(int fd, uint64_t id, uint64_t key) { ps_raw_send_pull(fd, id, "emb", &key, 1); }

/* The next reply on fd: an OK one with the id expected. */
static Ctrps__Response *recv_ok(int fd, uint64_t id) {
    Ctrps__Response *resp = ps_raw_recv(fd);
    cr_assert(resp, "connection closed before reply %llu", (unsigned long long)id);
    cr_assert_eq(resp->status, CTRPS__STATUS__OK, "reply %llu: %s", (unsigned long long)id,
                 resp->message);
    cr_assert_eq(resp->id, id);
    return resp;
}

static float pull_first(int fd, uint64_t id, uint64_t key) {
    send_pull(fd, id, key);
    Ctrps__Response *resp = recv_ok(fd, id);
    cr_assert_eq(resp->result_case, CTRPS__RESPONSE__RESULT_PULL);
    cr_assert_eq(resp->pull->n_values, DIM);
    float v = resp->pull->values[0];
    ctrps__response__free_unpacked(resp, NULL);
    return v;
}

TestSuite(logwriter, .init = setup, .fini = teardown, .timeout = 120);

Test(logwriter, push_ack_after_its_record_is_written) {
    int fd = ps_raw_connect(cl.ports[0]);
    cr_assert_eq(records_in_log(), 0);
    send_push(fd, 1, 7, 1.0f);
    Ctrps__Response *resp = recv_ok(fd, 1);
    cr_assert_eq(resp->result_case, CTRPS__RESPONSE__RESULT_PUSH);
    cr_assert_eq(resp->push->applied, 1);
    ctrps__response__free_unpacked(resp, NULL);
    cr_assert_eq(records_in_log(), 1, "the push was acknowledged before its record was written");
    close(fd);
}

/* Many pushes in flight on one connection: they span several log writes
 * (each turn's records wait for the write in flight), and every ack still
 * comes in order and only once its own record is in the file. */
Test(logwriter, pipelined_acks_in_order_after_their_records) {
    int fd = ps_raw_connect(cl.ports[0]);
    enum { N = 40 };
    for (uint64_t i = 1; i <= N; i++)
        send_push(fd, i, 100 + i, 0.5f);
    for (uint64_t i = 1; i <= N; i++) {
        Ctrps__Response *resp = recv_ok(fd, i);
        ctrps__response__free_unpacked(resp, NULL);
        unsigned n = records_in_log();
        cr_assert_geq(n, i, "ack %llu arrived with only %u records in the log",
                      (unsigned long long)i, n);
    }
    close(fd);
}

/* A pull on another connection must not show a pushed value before the
 * push's record is written: it would let a reader act on a value that a
 * crash could still take back. The reader pulls until it sees the change. */
Test(logwriter, pull_shows_push_only_after_its_record_is_written) {
    int a = ps_raw_connect(cl.ports[0]);
    int b = ps_raw_connect(cl.ports[0]);
    send_push(a, 1, 9, 1.0f); /* the row exists from here on */
    ctrps__response__free_unpacked(recv_ok(a, 1), NULL);
    cr_assert_eq(records_in_log(), 1);
    float before = pull_first(b, 1, 9);
    send_push(a, 2, 9, 1.0f);
    uint64_t id = 2;
    for (;;) {
        float v = pull_first(b, id++, 9);
        if (v != before) {
            cr_assert_eq(records_in_log(), 2,
                         "a pull showed the pushed value before the push's record was written");
            break;
        }
        cr_assert_lt(id, 1000000, "the pushed value never showed");
    }
    ctrps__response__free_unpacked(recv_ok(a, 2), NULL);
    close(a);
    close(b);
}

/* An acknowledged push survives kill -9 at once, while the writer is slow. */
Test(logwriter, acked_push_survives_kill_9) {
    int fd = ps_raw_connect(cl.ports[0]);
    send_push(fd, 1, 11, 1.0f);
    ctrps__response__free_unpacked(recv_ok(fd, 1), NULL);
    close(fd);
    cr_assert_eq(ps_cluster_stop_shard(&cl, 0, SIGKILL) >= 0, 1);
    cr_assert_eq(ps_cluster_start_shard(&cl, 0), 0);
    fd = ps_raw_connect(cl.ports[0]);
    cr_assert_neq(pull_first(fd, 1, 11), 0.0f, "the acknowledged push was lost");
    close(fd);
}
