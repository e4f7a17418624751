/* Hostile input through real sockets. Each case gets an error status or a
 * closed connection; a second, well-behaved client keeps being served
 * throughout, and no rejected request changes the shard's state. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client.h"
#include "ctrps.pb-c.h"
#include "harness.h"
#include "keys.h"

static const char *body =
    "buckets = 64\n"
    "[server]\n"
    "max_keys_per_request = 5000\n"
    "max_frame_bytes = 1048576\n"
    "[table.emb]\n"
    "dim = 8\n"
    "optimizer = ftrl\n"
    "init = normal\n"
    "slots = C1\n"
    "[table.adm]\n"
    "dim = 1\n"
    "admit_after = 3\n"
    "admit_bloom_bits = 65536\n"
    "slots = C2\n";

static ps_cluster cl;
static ps_client *good;
static uint64_t keys0[64]; /* keys owned by shard 0 */
static uint64_t key1, key1b; /* keys owned by shard 1 */

static void setup(void) {
    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(ps_cluster_start(&cl, 2, body), 0);
    char err[256];
    ps_client_options co = {.cfg = cl.cfg, .name = "good", .timeout_ms = 10000};
    cr_assert_eq(ps_client_new(&co, &good, err, sizeof(err)), 0, "%s", err);
    size_t n = 0;
    key1 = key1b = 0;
    for (uint64_t i = 1; n < 64 || !key1b; i++) {
        uint32_t owner = ps_key_owner(i, cl.cfg->buckets, 2);
        if (owner == 0 && n < 64)
            keys0[n++] = i;
        else if (owner == 1 && !key1)
            key1 = i;
        else if (owner == 1 && !key1b)
            key1b = i;
    }
    /* Some state to protect. */
    float grads[64 * 8];
    for (int i = 0; i < 64 * 8; i++)
        grads[i] = (float)((i % 7) - 3) * 0.01f;
    cr_assert_eq(ps_client_push(good, "emb", 8, keys0, 64, grads, NULL, NULL, err, sizeof(err)), 0,
                 "%s", err);
}

static void teardown(void) {
    ps_client_free(good);
    ps_cluster_teardown(&cl, NULL);
}

/* The good client's view of shard 0: every row's full state. */
static void snapshot(float *ret_state) {
    uint8_t found[64];
    float values[64 * 8];
    char err[256];
    int r = ps_client_lookup(good, "emb", 8, 24, keys0, 64, found, values, ret_state, err, sizeof(err));
    cr_assert_eq(r, 0, "good client refused: %s", err);
    for (int i = 0; i < 64; i++)
        cr_assert(found[i]);
}

static void assert_unchanged(const float *before) {
    float after[64 * 24];
    snapshot(after);
    cr_assert_eq(memcmp(before, after, sizeof(after)), 0, "state changed by a rejected request");
}

static Ctrps__Status roundtrip_status(const Ctrps__Request *req, char *msg, size_t msglen) {
    int fd = ps_raw_connect(cl.ports[0]);
    ps_raw_send(fd, req);
    Ctrps__Response *resp = ps_raw_recv(fd);
    cr_assert_not_null(resp, "connection closed instead of an error status");
    cr_assert_eq(resp->id, req->id);
    Ctrps__Status s = resp->status;
    snprintf(msg, msglen, "%s", resp->message ? resp->message : "");
    ctrps__response__free_unpacked(resp, NULL);
    close(fd);
    return s;
}

TestSuite(hostile, .init = setup, .fini = teardown, .timeout = 120);

Test(hostile, truncated_frame_then_disconnect) {
    float before[64 * 24];
    snapshot(before);
    int fd = ps_raw_connect(cl.ports[0]);
    uint8_t partial[14] = {0, 0, 0x03, 0xe8, 0x08, 0x01}; /* says 1000 bytes, sends 10 */
    ps_raw_send_bytes(fd, partial, sizeof(partial));
    /* The server keeps serving others while this frame is incomplete. */
    assert_unchanged(before);
    close(fd);
    assert_unchanged(before);
}

Test(hostile, length_prefix_2_pow_31_closes_connection) {
    float before[64 * 24];
    snapshot(before);
    int fd = ps_raw_connect(cl.ports[0]);
    uint8_t hdr[8] = {0x80, 0, 0, 0, 1, 2, 3, 4};
    ps_raw_send_bytes(fd, hdr, sizeof(hdr));
    ps_raw_assert_closed(fd);
    close(fd);
    assert_unchanged(before);
}

Test(hostile, bytes_that_are_not_protobuf_close_connection) {
    float before[64 * 24];
    snapshot(before);
    int fd = ps_raw_connect(cl.ports[0]);
    uint8_t junk[4 + 12] = {0, 0, 0, 12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                            0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    ps_raw_send_bytes(fd, junk, sizeof(junk));
    ps_raw_assert_closed(fd);
    close(fd);
    assert_unchanged(before);
}

Test(hostile, request_without_method_is_bad_request) {
    float before[64 * 24];
    snapshot(before);
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    req.id = 77;
    char msg[256];
    cr_assert_eq(roundtrip_status(&req, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST);
    assert_unchanged(before);
}

Test(hostile, unknown_table) {
    float before[64 * 24];
    snapshot(before);
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__PushRequest push = CTRPS__PUSH_REQUEST__INIT;
    float g[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    req.id = 5;
    req.method_case = CTRPS__REQUEST__METHOD_PUSH;
    req.push = &push;
    push.table = "no_such_table";
    push.n_keys = 1;
    push.keys = keys0;
    push.n_grads = 8;
    push.grads = g;
    char msg[256];
    cr_assert_eq(roundtrip_status(&req, msg, sizeof(msg)), CTRPS__STATUS__UNKNOWN_TABLE);
    cr_assert(strstr(msg, "no_such_table"), "%s", msg);
    assert_unchanged(before);
}

Test(hostile, wrong_gradient_dimension) {
    float before[64 * 24];
    snapshot(before);
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__PushRequest push = CTRPS__PUSH_REQUEST__INIT;
    float g[2 * 8 - 1];
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++)
        g[i] = 0.5f;
    req.id = 6;
    req.method_case = CTRPS__REQUEST__METHOD_PUSH;
    req.push = &push;
    push.table = "emb";
    push.n_keys = 2;
    push.keys = keys0;
    push.n_grads = 15;
    push.grads = g;
    char msg[256];
    cr_assert_eq(roundtrip_status(&req, msg, sizeof(msg)), CTRPS__STATUS__BAD_DIMENSION);
    assert_unchanged(before);
}

Test(hostile, keys_of_another_shard) {
    float before[64 * 24];
    snapshot(before);
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__PushRequest push = CTRPS__PUSH_REQUEST__INIT;
    uint64_t keys[2] = {keys0[0], key1}; /* one of ours, one of shard 1: all-or-nothing */
    float g[16];
    for (int i = 0; i < 16; i++)
        g[i] = 1.0f;
    req.id = 7;
    req.method_case = CTRPS__REQUEST__METHOD_PUSH;
    req.push = &push;
    push.table = "emb";
    push.n_keys = 2;
    push.keys = keys;
    push.n_grads = 16;
    push.grads = g;
    char msg[256];
    cr_assert_eq(roundtrip_status(&req, msg, sizeof(msg)), CTRPS__STATUS__WRONG_SHARD);
    assert_unchanged(before);
}

Test(hostile, nan_and_inf_gradients_are_dropped) {
    float before[64 * 24];
    snapshot(before);
    float g[3 * 8];
    for (int i = 0; i < 24; i++)
        g[i] = 0.25f;
    g[3] = NAN;
    g[8 + 7] = INFINITY;
    g[16] = -INFINITY;
    char err[256];
    uint64_t applied = 99, dropped = 99;
    cr_assert_eq(ps_client_push(good, "emb", 8, keys0, 3, g, &applied, &dropped, err, sizeof(err)), 0,
                 "%s", err);
    cr_assert_eq(applied, 0);
    cr_assert_eq(dropped, 3);
    assert_unchanged(before);
    /* A never-seen key with a NaN gradient is not created either. */
    uint64_t fresh = keys0[63] + 1000003;
    while (ps_key_owner(fresh, cl.cfg->buckets, 2) != 0)
        fresh++;
    cr_assert_eq(ps_client_push(good, "emb", 8, &fresh, 1, g, &applied, &dropped, err, sizeof(err)), 0);
    uint8_t found = 1;
    float v[8], st[24];
    cr_assert_eq(ps_client_lookup(good, "emb", 8, 24, &fresh, 1, &found, v, st, err, sizeof(err)), 0);
    cr_assert_eq(found, 0);
}

Test(hostile, too_many_keys_is_a_named_limit) {
    float before[64 * 24];
    snapshot(before);
    size_t n = 6000;
    uint64_t *keys = calloc(n, sizeof(uint64_t));
    for (size_t i = 0; i < n; i++)
        keys[i] = keys0[i % 64];
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__PullRequest pull = CTRPS__PULL_REQUEST__INIT;
    req.id = 9;
    req.method_case = CTRPS__REQUEST__METHOD_PULL;
    req.pull = &pull;
    pull.table = "emb";
    pull.n_keys = n;
    pull.keys = keys;
    char msg[256];
    cr_assert_eq(roundtrip_status(&req, msg, sizeof(msg)), CTRPS__STATUS__LIMIT_EXCEEDED);
    cr_assert(strstr(msg, "max_keys_per_request"), "%s", msg);
    free(keys);
    assert_unchanged(before);
}

Test(hostile, disconnect_mid_request_and_before_reply) {
    float before[64 * 24];
    snapshot(before);
    /* Half a valid frame, then gone. */
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__PullRequest pull = CTRPS__PULL_REQUEST__INIT;
    req.id = 10;
    req.method_case = CTRPS__REQUEST__METHOD_PULL;
    req.pull = &pull;
    pull.table = "emb";
    pull.n_keys = 64;
    pull.keys = keys0;
    size_t n = protobuf_c_message_get_packed_size(&req.base);
    uint8_t *buf = malloc(n + 4);
    uint32_t be = htonl((uint32_t)n);
    memcpy(buf, &be, 4);
    protobuf_c_message_pack(&req.base, buf + 4);
    int fd = ps_raw_connect(cl.ports[0]);
    ps_raw_send_bytes(fd, buf, (n + 4) / 2);
    close(fd);
    /* Many whole requests, then gone before reading any reply. */
    for (int k = 0; k < 5; k++) {
        fd = ps_raw_connect(cl.ports[0]);
        for (int i = 0; i < 200; i++)
            ps_raw_send_bytes(fd, buf, n + 4);
        close(fd);
    }
    free(buf);
    assert_unchanged(before);
}

Test(hostile, many_requests_in_flight_answered_by_id) {
    int fd = ps_raw_connect(cl.ports[0]);
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__LookupRequest lk = CTRPS__LOOKUP_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_LOOKUP;
    req.lookup = &lk;
    lk.table = "emb";
    for (int i = 0; i < 50; i++) {
        req.id = 1000 + (uint64_t)i;
        lk.n_keys = 1;
        lk.keys = &keys0[i % 64];
        ps_raw_send(fd, &req);
    }
    bool seen[50] = {false};
    for (int i = 0; i < 50; i++) {
        Ctrps__Response *resp = ps_raw_recv(fd);
        cr_assert_not_null(resp);
        cr_assert_eq(resp->status, CTRPS__STATUS__OK);
        cr_assert(resp->id >= 1000 && resp->id < 1050);
        cr_assert(!seen[resp->id - 1000]);
        seen[resp->id - 1000] = true;
        cr_assert(resp->lookup && resp->lookup->n_found == 1 && resp->lookup->found[0]);
        ctrps__response__free_unpacked(resp, NULL);
    }
    close(fd);
}

/* A peer cannot have the shard write its checkpoint copy where it likes:
 * only the coordinator's layout ROOT/ckpt-ID/shard-N, absolute, is taken. */
Test(hostile, checkpoint_take_only_into_the_coordinators_layout) {
    const char *bad[] = {"/tmp/ctrps-evil", "relative/ckpt-1/shard-0", "/tmp/ckpt-1/shard-1",
                         "/tmp/x/../ckpt-1/shard-0", "/tmp/notckpt/shard-0"};
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__CheckpointRequest cr = CTRPS__CHECKPOINT_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_CHECKPOINT;
    req.checkpoint = &cr;
    cr.id = "ckpt-hostile";
    cr.phase = CTRPS__CHECKPOINT_REQUEST__PHASE__BEGIN;
    char msg[256];
    cr_assert_eq(roundtrip_status(&req, msg, sizeof(msg)), CTRPS__STATUS__OK, "%s", msg);
    cr.phase = CTRPS__CHECKPOINT_REQUEST__PHASE__TAKE;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr.dir = (char *)bad[i];
        cr_assert_eq(roundtrip_status(&req, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "%s", bad[i]);
        struct stat st;
        cr_assert(stat(bad[i], &st) < 0, "%s was created", bad[i]);
    }
    cr.phase = CTRPS__CHECKPOINT_REQUEST__PHASE__END;
    cr.dir = "";
    cr_assert_eq(roundtrip_status(&req, msg, sizeof(msg)), CTRPS__STATUS__OK, "%s", msg);
}

/* A move phase to shard 0; the response (caller frees it). */
static Ctrps__Response *move_roundtrip(Ctrps__MoveRequest *m) {
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    req.id = 9;
    req.method_case = CTRPS__REQUEST__METHOD_MOVE;
    req.move = m;
    int fd = ps_raw_connect(cl.ports[0]);
    ps_raw_send(fd, &req);
    Ctrps__Response *resp = ps_raw_recv(fd);
    cr_assert_not_null(resp, "connection closed instead of an answer");
    close(fd);
    return resp;
}

static Ctrps__Status move_status(Ctrps__MoveRequest *m, char *msg, size_t msglen) {
    Ctrps__Response *resp = move_roundtrip(m);
    Ctrps__Status s = resp->status;
    snprintf(msg, msglen, "%s", resp->message ? resp->message : "");
    ctrps__response__free_unpacked(resp, NULL);
    return s;
}

/* Admission filter blocks and counters (a move's ADMIT and IMPORT phases)
 * that do not fit the filter are refused with an error. */
Test(hostile, admission_filter_blocks_that_do_not_fit) {
    float before[64 * 24];
    snapshot(before);
    char msg[256];
    Ctrps__MoveRequest m = CTRPS__MOVE_REQUEST__INIT;
    m.phase = CTRPS__MOVE_REQUEST__PHASE__ADMIT;
    m.round = 1;
    m.bucket_lo = 0;
    m.bucket_hi = 1;
    cr_assert_eq(move_status(&m, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST,
                 "filter blocks of a range no copy runs for: %s", msg);
    /* A real page: a copy of bucket 0 begun, its first round of blocks. */
    m.phase = CTRPS__MOVE_REQUEST__PHASE__TRACK;
    ctrps__response__free_unpacked(move_roundtrip(&m), NULL);
    m.phase = CTRPS__MOVE_REQUEST__PHASE__ADMIT;
    Ctrps__Response *page = move_roundtrip(&m);
    cr_assert_eq(page->status, CTRPS__STATUS__OK, "%s", page->message);
    Ctrps__AdmitBlocks *ab = page->move->admit;
    cr_assert(ab && ab->n_ids >= 1 && !strcmp(ab->table, "adm"), "no blocks of table adm");
    Ctrps__MoveRequest thaw = CTRPS__MOVE_REQUEST__INIT;
    thaw.phase = CTRPS__MOVE_REQUEST__PHASE__THAW;
    ctrps__response__free_unpacked(move_roundtrip(&thaw), NULL);

    Ctrps__MoveRequest im = CTRPS__MOVE_REQUEST__INIT;
    im.phase = CTRPS__MOVE_REQUEST__PHASE__IMPORT;
    Ctrps__AdmitBlocks bad = *ab;
    im.admit = &bad;
    bad.n_ids = bad.n_blocks = 1;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__OK,
                 "a block of the filter's own: %s", msg);
    uint32_t beyond = 1000;
    bad.ids = &beyond;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "block id 1000");
    bad.ids = ab->ids;
    ProtobufCBinaryData shorter = ab->blocks[0];
    shorter.len--;
    bad.blocks = &shorter;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "a short block");
    bad.blocks = ab->blocks;
    bad.header.len = 5;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "a cut header");
    bad.header = ab->header;
    bad.n_blocks = 0;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "ids without blocks");
    bad.n_blocks = 1;
    uint64_t cid = 65536;
    uint8_t cval = 15;
    bad.n_counter_ids = 1;
    bad.counter_ids = &cid;
    bad.counter_values.data = &cval;
    bad.counter_values.len = 1;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "a counter beyond the filter");
    cid = 0;
    cval = 16;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "a counter above 15");
    cval = 1;
    bad.counter_values.len = 0;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "a counter without a value");
    bad.counter_values.len = 1;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__OK, "a counter that fits: %s", msg);
    bad.table = "emb";
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "a table without a filter");
    cr_assert(strstr(msg, "admission filter"), "%s", msg);
    bad.table = "no_such_table";
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__UNKNOWN_TABLE);
    ctrps__response__free_unpacked(page, NULL);
    assert_unchanged(before);
}

/* The clients' sequence numbers of an IMPORT that do not fit the range
 * (one per bucket, masks for every client or for none), or name client 0
 * (the id of an empty entry in the shard's table of clients), are refused;
 * the server goes on serving. */
Test(hostile, import_sequence_numbers_that_do_not_fit) {
    float before[64 * 24];
    snapshot(before);
    char msg[256];
    uint64_t seqs[2] = {5, 6}, masks[2] = {0, 1};
    Ctrps__ClientSeqs a = CTRPS__CLIENT_SEQS__INIT, b = CTRPS__CLIENT_SEQS__INIT;
    a.client_id = 4242;
    a.n_seq = 2;
    a.seq = seqs;
    a.n_mask = 2;
    a.mask = masks;
    b = a;
    b.client_id = 4343;
    Ctrps__ClientSeqs *list[2] = {&a, &b};
    Ctrps__MoveRequest im = CTRPS__MOVE_REQUEST__INIT;
    im.phase = CTRPS__MOVE_REQUEST__PHASE__IMPORT;
    im.bucket_lo = 10;
    im.bucket_hi = 12;
    im.n_seqs = 2;
    im.seqs = list;
    b.n_seq = 1;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "one seq, two buckets");
    b.n_seq = 2;
    b.n_mask = 0;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "masks for one client");
    cr_assert(strstr(msg, "masks"), "%s", msg);
    b.n_mask = 2;
    b.client_id = 0;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "client id 0");
    cr_assert(strstr(msg, "client id 0"), "%s", msg);
    b.client_id = 4343;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__OK, "numbers that fit: %s", msg);
    assert_unchanged(before);
}

/* A page of rows whose values do not add up (MoveRows' packed form: one
 * length per key, the values one after the other) is refused before any
 * row is read: lengths that run past the bytes, bytes left over, a length
 * per key missing, both forms at once. */
Test(hostile, import_rows_whose_values_do_not_add_up) {
    float before[64 * 24];
    snapshot(before);
    char msg[256];
    uint64_t keys[2] = {key1 < key1b ? key1 : key1b, key1 < key1b ? key1b : key1};
    uint32_t lens[2] = {8, 8};
    uint8_t bytes[16] = {0};
    Ctrps__MoveRows rows = CTRPS__MOVE_ROWS__INIT;
    rows.table = "emb";
    rows.n_keys = 2;
    rows.keys = keys;
    rows.n_value_lens = 2;
    rows.value_lens = lens;
    rows.value_bytes.data = bytes;
    rows.value_bytes.len = 15;
    Ctrps__MoveRequest im = CTRPS__MOVE_REQUEST__INIT;
    im.phase = CTRPS__MOVE_REQUEST__PHASE__IMPORT;
    im.bucket_lo = 0;
    im.bucket_hi = 64;
    im.rows = &rows;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "one byte short");
    cr_assert(strstr(msg, "runs past"), "%s", msg);
    rows.value_bytes.len = 16;
    lens[1] = UINT32_MAX;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "a length of 4 GiB");
    cr_assert(strstr(msg, "runs past"), "%s", msg);
    lens[1] = 7;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "a byte left over");
    cr_assert(strstr(msg, "left after"), "%s", msg);
    lens[1] = 8;
    rows.n_value_lens = 1;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "one length for two keys");
    cr_assert(strstr(msg, "value lengths"), "%s", msg);
    rows.n_value_lens = 2;
    ProtobufCBinaryData vals[2] = {{8, bytes}, {8, bytes + 8}};
    rows.n_values = 2;
    rows.values = vals;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "both forms");
    cr_assert(strstr(msg, "value lengths"), "%s", msg);
    /* Each form alone gets past the format, to the rows themselves: 8 bytes
     * are no row of table emb. */
    rows.n_value_lens = 0;
    rows.value_bytes.len = 0;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "rows of 8 bytes");
    cr_assert(strstr(msg, "row of 8 bytes"), "%s", msg);
    rows.n_values = 0;
    rows.n_value_lens = 2;
    rows.value_bytes.len = 16;
    cr_assert_eq(move_status(&im, msg, sizeof(msg)), CTRPS__STATUS__BAD_REQUEST, "rows of 8 bytes");
    cr_assert(strstr(msg, "row of 8 bytes"), "%s", msg);
    assert_unchanged(before);
}
