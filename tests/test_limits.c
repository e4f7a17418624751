/* Every limit on what a peer controls: it holds, it is counted, and the
 * shard keeps serving everyone else. (Keys per request and hostile frames
 * are in test_hostile.c.) */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "harness.h"
#include "keys.h"

static ps_cluster cl;

static void start(const char *server_keys) {
    char body[2048];
    snprintf(body, sizeof(body), "buckets = 16\n[server]\n%s\n[table.emb]\ndim = 16\ninit = normal\n",
             server_keys);
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
}

static void teardown(void) { ps_cluster_teardown(&cl, NULL); }

static double counter(const char *name) {
    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "stats", NULL), 0);
    char pat[128];
    snprintf(pat, sizeof(pat), "\"%s\":", name);
    const char *p = strstr(out, pat);
    cr_assert_not_null(p, "no counter %s in %s", name, out);
    double v = strtod(p + strlen(pat), NULL);
    free(out);
    return v;
}

static void good_client_works(void) {
    char *out = NULL;
    cr_assert_eq(ps_run_cli(&cl, &out, "pull", "--table", "emb", "--fid", "3", NULL), 0);
    cr_assert(strncmp(out, "3\t", 2) == 0, "%s", out);
    free(out);
}

TestSuite(limits, .fini = teardown, .timeout = 60);

Test(limits, max_connections) {
    start("max_connections = 3");
    int fds[3];
    for (int i = 0; i < 3; i++)
        fds[i] = ps_raw_connect(cl.ports[0]);
    /* Wait until all three are accepted, then a fourth is turned away. */
    usleep(100000);
    int extra = ps_raw_connect(cl.ports[0]);
    ps_raw_assert_closed(extra);
    close(extra);
    close(fds[0]);
    usleep(100000);
    good_client_works();
    cr_assert_geq(counter("connections_rejected"), 1);
    close(fds[1]);
    close(fds[2]);
}

Test(limits, idle_timeout) {
    start("idle_timeout_s = 1");
    int fd = ps_raw_connect(cl.ports[0]);
    ps_raw_assert_closed(fd); /* within 10 s; the timeout is 1 s */
    close(fd);
    good_client_works();
    cr_assert_geq(counter("connections_closed_idle"), 1);
}

Test(limits, max_frame_bytes) {
    start("max_frame_bytes = 65536");
    int fd = ps_raw_connect(cl.ports[0]);
    uint8_t hdr[4] = {0, 1, 0, 1}; /* 65537: one byte over */
    ps_raw_send_bytes(fd, hdr, sizeof(hdr));
    ps_raw_assert_closed(fd);
    close(fd);
    /* Exactly at the limit is fine: a pull of 8,000 keys is ~64 KB. */
    good_client_works();
    cr_assert_geq(counter("frames_too_large"), 1);
}

/* A client that sends a stream of requests and never reads: the shard stops
 * reading it (bounded memory) instead of queueing replies without end, and
 * answers everything, in any order, once the client reads. */
Test(limits, inflight_and_pending_reply_bytes_pause_a_greedy_client) {
    start("max_inflight_per_conn = 8\nmax_pending_reply_bytes = 65536");
    int fd = ps_raw_connect(cl.ports[0]);
    enum { N = 300, KEYS = 512 };
    static uint64_t keys[KEYS];
    for (int i = 0; i < KEYS; i++)
        keys[i] = (uint64_t)i + 1;
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__PullRequest pull = CTRPS__PULL_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_PULL;
    req.pull = &pull;
    pull.table = "emb";
    pull.n_keys = KEYS;
    pull.keys = keys;
    /* Send from a thread-free loop: the kernel buffers fill, then send()
     * would block, so send what fits without blocking and read later. */
    int sent = 0;
    for (; sent < N; sent++) {
        req.id = 1000 + (uint64_t)sent;
        struct pollfd pf = {fd, POLLOUT, 0};
        if (poll(&pf, 1, 200) <= 0)
            break; /* the shard stopped reading us: that is the point */
        ps_raw_send(fd, &req);
    }
    cr_assert_gt(sent, 8, "could not send more than the in-flight limit");
    /* Others are served meanwhile. */
    good_client_works();
    double paused = counter("reads_paused_inflight") + counter("reads_paused");
    cr_assert_geq(paused, 1, "the shard never paused the greedy connection");
    /* Now read: every request sent is answered exactly once. */
    bool seen[N] = {false};
    for (int i = 0; i < sent; i++) {
        Ctrps__Response *r = ps_raw_recv(fd);
        cr_assert_not_null(r, "connection closed after %d replies", i);
        cr_assert_eq(r->status, CTRPS__STATUS__OK, "%s", r->message);
        uint64_t k = r->id - 1000;
        cr_assert(k < (uint64_t)sent && !seen[k]);
        seen[k] = true;
        cr_assert_eq(r->pull->n_values, (size_t)KEYS * 16);
        ctrps__response__free_unpacked(r, NULL);
    }
    close(fd);
}

/* Requests larger than a loop turn's budget (256 KiB of frames), pipelined
 * on two connections: the shard handles them a turn at a time, stops
 * reading a connection while its frames wait (counted), serves others
 * meanwhile, and answers every one exactly once, in order. */
Test(limits, frames_past_a_turns_budget_wait_for_the_next_turn) {
    start("max_inflight_per_conn = 64");
    enum { CONNS = 2, N = 12, KEYS = 4096, DIM = 16 }; /* ~300 KB a request */
    static uint64_t keys[KEYS];
    static float grads[KEYS * DIM];
    for (int i = 0; i < KEYS; i++)
        keys[i] = (uint64_t)i * 7 + 1;
    for (int i = 0; i < KEYS * DIM; i++)
        grads[i] = 0.001f * (float)(i % 13);
    int fd[CONNS];
    int sent[CONNS] = {0};
    for (int c = 0; c < CONNS; c++)
        fd[c] = ps_raw_connect(cl.ports[0]);
    /* Interleave the connections; stop sending on one whose buffers are
     * full (the shard is not reading it) instead of blocking. */
    for (int round = 0; round < N; round++) {
        for (int c = 0; c < CONNS; c++) {
            struct pollfd pf = {fd[c], POLLOUT, 0};
            if (sent[c] < round || poll(&pf, 1, 200) <= 0)
                continue;
            uint64_t id = 1000 * (uint64_t)(c + 1) + (uint64_t)round;
            ps_raw_send_push(fd[c], id, "emb", keys, KEYS, grads, KEYS * DIM, 0, 0);
            sent[c]++;
        }
    }
    for (int c = 0; c < CONNS; c++)
        cr_assert_geq(sent[c], 2, "connection %d sent only %d requests", c, sent[c]);
    good_client_works();
    cr_assert_geq(counter("frames_deferred"), 1, "no frame ever waited for the next turn");
    for (int c = 0; c < CONNS; c++) {
        for (int i = 0; i < sent[c]; i++) {
            Ctrps__Response *r = ps_raw_recv(fd[c]);
            cr_assert_not_null(r, "connection %d closed after %d replies", c, i);
            cr_assert_eq(r->status, CTRPS__STATUS__OK, "%s", r->message);
            cr_assert_eq(r->id, 1000 * (uint64_t)(c + 1) + (uint64_t)i, "replies out of order");
            cr_assert_eq(r->result_case, CTRPS__RESPONSE__RESULT_PUSH);
            cr_assert_eq(r->push->applied, KEYS);
            ctrps__response__free_unpacked(r, NULL);
        }
        close(fd[c]);
    }
    good_client_works();
}
