/* libFuzzer target: the server's request path, from bytes on a connection
 * to response frames (common/frame.h, server/service.h, server/shard.h).
 *
 * Input layout: one control byte, then the connection's byte stream.
 *   bit 7      talk to the service that requires authentication (the fuzzer
 *              cannot compute the HMAC, so it explores the refusals);
 *   bits 0-3   k: 0 = hand the stream to the frame reader in one piece, else
 *              in pieces of 1..2^k bytes from a generator seeded by the
 *              control byte, so frames get split at every offset as TCP
 *              would split them.
 * Every whole frame goes to ps_service_handle() exactly as server/net.c
 * does; a frame over max_frame (PS_ELIMIT), a frame that is not a Request
 * (PS_EPROTO) or a reply that asks to close ends the input, as it would
 * end the connection.
 *
 * One real shard (RocksDB, push log, write-back thread) in a fresh temporary
 * directory serves every input: opening RocksDB per input would cost more
 * than the request. So state carries over between inputs, like a server
 * that has had many connections; the harness undoes only what would wedge
 * every later input (a checkpoint barrier left up), and it ticks the shard
 * after each input so write-back and eviction run. Every RESTART_EVERY
 * inputs it closes the shard and opens it again: what the fuzzer stored
 * (dense block names, client ids, rows) must load.
 *
 * Oracles besides the sanitizers: a decodable Request gets exactly one
 * Response frame that decodes, echoes the id, carries the result of the
 * method asked (or no result and a message on error), and whose array
 * lengths agree with the keys and the table's dimension; served weights are
 * finite; a push
 * acknowledgement only for an applied push.
 *
 * Checkpoint TAKE writes a RocksDB copy to a directory the client names;
 * the harness redirects it into its temporary directory (eight names, so
 * the "already exists" path is taken too) rather than let the fuzzer
 * create directories anywhere. */

#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "auth.h"
#include "config.h"
#include "ctrps.pb-c.h"
#include "error.h"
#include "frame.h"
#include "fuzz.h"
#include "keys.h"
#include "service.h"
#include "shard.h"

#define MAX_FRAME (1u << 20)
#define CKPT_NAMES 8
/* A restart (write-back, RocksDB close and open) took ~30 ms, the time of
 * ~100 inputs under ASan: every 5000 inputs it costs ~2% of the run. */
#define RESTART_EVERY 5000

static struct {
    char root[PS_PATH_MAX];
    ps_config *cfg;
    ps_shard *shard;
    ps_service *svc;             /* no authentication */
    ps_service *svc_auth;        /* a secret is configured */
    char pending[PS_NAME_MAX];   /* checkpoint barrier seen up on svc */
    uint64_t inputs;
} F;

/* Small on purpose: one table's memory tier holds 64 rows, so eviction and
 * synchronous write-back happen within a few requests; 256 keys per request
 * keep the limit reachable with inputs of a few KiB. */
static const char config_text[] =
    "[cluster]\n"
    "shards = 127.0.0.1:7101\n"
    "buckets = 16\n"
    "[server]\n"
    "durability = sync\n"
    "fsync = no\n"
    "memory_mb = 1\n"
    "flush_interval_ms = 1000\n"
    "flush_dirty_rows = 256\n"
    "max_keys_per_request = 256\n"
    "[table.emb]\n"
    "dim = 4\n"
    "optimizer = ftrl\n"
    "init = normal\n"
    "init_std = 0.01\n"
    "memory_rows = 64\n"
    "slots = C1, C2\n"
    "[table.wide]\n"
    "dim = 2\n"
    "optimizer = adagrad\n"
    "rowwise = true\n"
    "slots = I1\n"
    "[table.adm]\n"
    "dim = 1\n"
    "admit_after = 2\n"
    "admit_bloom_bits = 1024\n"
    "memory_rows = 64\n"
    "slots = C3\n";

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

FUZZ_FINI(request) {
    ps_service_free(F.svc);
    ps_service_free(F.svc_auth);
    ps_shard_close(F.shard);
    ps_config_free(F.cfg);
    if (F.root[0])
        nftw(F.root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    memset(&F, 0, sizeof(F));
}

static void die(const char *what, const char *err) {
    fprintf(stderr, "fuzz_request: %s: %s\n", what, err);
    abort();
}

static void open_shard(void) {
    char path[PS_PATH_MAX + 32], err[1024] = "";
    snprintf(path, sizeof(path), "%s/shard-0", F.root);
    ps_shard_options so = {.shard_id = 0, .data_dir = path};
    if (ps_shard_open(F.cfg, &so, &F.shard, err, sizeof(err)) < 0)
        die("ps_shard_open", err);
    ps_auth_secret secret = {.len = 32};
    memcpy(secret.key, "fuzz-secret-fuzz-secret-fuzz-sec", 32);
    if (ps_service_new(F.shard, NULL, &F.svc) < 0 || ps_service_new(F.shard, &secret, &F.svc_auth) < 0)
        die("ps_service_new", "out of memory");
}

FUZZ_INIT(request) {
    (void)argc, (void)argv;
    const char *tmp = getenv("TMPDIR");
    snprintf(F.root, sizeof(F.root), "%s/ctrps-fuzz-request-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(F.root))
        die("mkdtemp", strerror(errno));
    char path[PS_PATH_MAX + 32], err[1024] = "";
    snprintf(path, sizeof(path), "%s/ctrps.ini", F.root);
    FILE *f = fopen(path, "w");
    if (!f || fputs(config_text, f) < 0 || fclose(f) != 0)
        die(path, strerror(errno));
    if (ps_config_load(path, NULL, &F.cfg, err, sizeof(err)) < 0)
        die("config", err);
    open_shard();
#ifndef CTRPS_FUZZ_REPLAY
    atexit(fuzz_request_fini);
#endif
    return 0;
}

/* A clean restart: everything the shard accepted so far (rows, dense blocks,
 * client sequence numbers, all of it fuzzer-made) is written back, and the
 * shard must open on it again. */
static void restart(void) {
    ps_service_free(F.svc);
    ps_service_free(F.svc_auth);
    F.svc = F.svc_auth = NULL;
    F.pending[0] = '\0';
    int r = ps_shard_close(F.shard);
    F.shard = NULL;
    if (r < 0)
        die("ps_shard_close", ps_strerror(r));
    open_shard();
}

static uint32_t be32(const char *p) {
    const uint8_t *u = (const uint8_t *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

static uint32_t table_dim(const char *name) {
    if (name && !strcmp(name, "emb"))
        return 4;
    if (name && !strcmp(name, "wide"))
        return 2;
    if (name && !strcmp(name, "adm"))
        return 1;
    return 0;
}

/* Served weights must be finite: server/optim.h promises finite row state
 * whatever finite gradients arrive (an update that would overflow float32
 * is refused; tests/test_fuzz_regressions.c, ftrl_weights_stay_finite). */
static void check_finite(const float *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(isfinite(v[i]));
}

/* The reply appended at out[before..]: one frame, a Response, consistent
 * with the request. */
static void check_reply(const Ctrps__Request *req, const ps_buf *out, size_t before, bool push_ack,
                        bool is_plain) {
    FUZZ_CHECK(out->len >= before + PS_FRAME_HEADER);
    uint32_t len = be32(out->data + before);
    FUZZ_CHECK(out->len == before + PS_FRAME_HEADER + len);
    Ctrps__Response *resp =
        ctrps__response__unpack(NULL, len, (const uint8_t *)out->data + before + PS_FRAME_HEADER);
    FUZZ_CHECK(resp);
    FUZZ_CHECK(resp->id == req->id);
    if (is_plain) {
        const char *p = resp->checkpoint_pending ? resp->checkpoint_pending : "";
        snprintf(F.pending, sizeof(F.pending), "%s", p);
    }
    if (resp->status != CTRPS__STATUS__OK) {
        FUZZ_CHECK(resp->result_case == CTRPS__RESPONSE__RESULT__NOT_SET);
        FUZZ_CHECK(resp->message && resp->message[0]);
        FUZZ_CHECK(!push_ack);
        ctrps__response__free_unpacked(resp, NULL);
        return;
    }
    FUZZ_CHECK(!resp->message || !resp->message[0]);
    /* Request.method and Response.result number their cases alike. */
    FUZZ_CHECK((int)resp->result_case == (int)req->method_case);
    FUZZ_CHECK(!push_ack || req->method_case == CTRPS__REQUEST__METHOD_PUSH ||
               req->method_case == CTRPS__REQUEST__METHOD_DENSE_PUSH);
    switch (req->method_case) {
    case CTRPS__REQUEST__METHOD_PULL: {
        uint32_t dim = table_dim(req->pull->table);
        FUZZ_CHECK(dim && resp->pull->dim == dim);
        FUZZ_CHECK(resp->pull->n_values == req->pull->n_keys * dim);
        check_finite(resp->pull->values, req->pull->n_keys * dim);
        break;
    }
    case CTRPS__REQUEST__METHOD_PUSH: {
        const Ctrps__PushResponse *p = resp->push;
        FUZZ_CHECK(table_dim(req->push->table));
        FUZZ_CHECK((size_t)p->applied + p->dropped_nonfinite <= req->push->n_keys);
        FUZZ_CHECK(!p->already_applied || (!push_ack && p->applied == 0));
        break;
    }
    case CTRPS__REQUEST__METHOD_LOOKUP: {
        const Ctrps__LookupResponse *l = resp->lookup;
        uint32_t dim = table_dim(req->lookup->table);
        FUZZ_CHECK(dim && l->dim == dim);
        FUZZ_CHECK(l->n_found == req->lookup->n_keys);
        FUZZ_CHECK(l->n_values == req->lookup->n_keys * dim);
        check_finite(l->values, req->lookup->n_keys * dim);
        if (req->lookup->with_state)
            FUZZ_CHECK(l->state_dim >= dim && l->n_state == req->lookup->n_keys * l->state_dim);
        break;
    }
    case CTRPS__REQUEST__METHOD_EXPORT: {
        const Ctrps__ExportResponse *e = resp->export;
        uint32_t dim = table_dim(req->export->table);
        FUZZ_CHECK(dim && e->dim == dim);
        FUZZ_CHECK(e->n_values == e->n_keys * dim);
        check_finite(e->values, e->n_keys * dim);
        FUZZ_CHECK(!req->export->limit || e->n_keys <= req->export->limit);
        if (req->export->with_state)
            FUZZ_CHECK(e->n_state == e->n_keys * e->state_dim);
        break;
    }
    case CTRPS__REQUEST__METHOD_MOVE: {
        /* A page of an admission filter: whole blocks, a value per counter. */
        const Ctrps__AdmitBlocks *ab = resp->move->admit;
        FUZZ_CHECK(!ab || (ab->n_blocks == ab->n_ids && ab->counter_values.len == ab->n_counter_ids));
        for (size_t i = 0; ab && i < ab->n_blocks; i++)
            FUZZ_CHECK(ab->blocks[i].len == 4096);
        break;
    }
    case CTRPS__REQUEST__METHOD_DENSE_PULL:
        FUZZ_CHECK(resp->dense_pull->n_blocks == req->dense_pull->n_names);
        for (size_t i = 0; i < resp->dense_pull->n_blocks; i++)
            check_finite(resp->dense_pull->blocks[i]->values, resp->dense_pull->blocks[i]->n_values);
        break;
    default:
        break;
    }
    ctrps__response__free_unpacked(resp, NULL);
}

/* A Checkpoint TAKE's directory, moved into our temporary directory.
 * Returns a repacked frame (caller frees) or NULL to use the original. */
static uint8_t *redirect_take(Ctrps__Request *req, size_t *ret_len) {
    if (req->method_case != CTRPS__REQUEST__METHOD_CHECKPOINT ||
        req->checkpoint->phase != CTRPS__CHECKPOINT_REQUEST__PHASE__TAKE ||
        !req->checkpoint->dir || !req->checkpoint->dir[0])
        return NULL;
    uint32_t h = 2166136261u;
    for (const char *p = req->checkpoint->dir; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    /* Into the temporary root, in the coordinator's layout (parent made
     * here, as the coordinator does), or one time in four in a shape the
     * shard must refuse. */
    char path[PS_PATH_MAX + 64];
    if (h % 4 == 0) {
        snprintf(path, sizeof(path), "%s/elsewhere-%u", F.root, h % CKPT_NAMES);
    } else {
        snprintf(path, sizeof(path), "%s/ckpt-%u", F.root, h % CKPT_NAMES);
        mkdir(path, 0755);
        strcat(path, "/shard-0");
    }
    char *orig = req->checkpoint->dir;
    req->checkpoint->dir = path;
    size_t n = ctrps__request__get_packed_size(req);
    uint8_t *buf = malloc(n ? n : 1);
    FUZZ_CHECK(buf);
    ctrps__request__pack(req, buf);
    req->checkpoint->dir = orig;
    *ret_len = n;
    return buf;
}

/* Handle one frame; returns false when the connection would be closed. */
static bool handle(ps_service *svc, ps_session *sess, const char *frame, size_t len, ps_buf *out) {
    Ctrps__Request *req = ctrps__request__unpack(NULL, len, (const uint8_t *)frame);
    size_t rlen = len;
    uint8_t *copy = req ? redirect_take(req, &rlen) : NULL;
    if (!copy) {
        /* An exact-size copy: inside the reader's buffer a read past the
         * frame's end would go unnoticed. */
        copy = malloc(len ? len : 1);
        FUZZ_CHECK(copy);
        if (len)
            memcpy(copy, frame, len);
    }
    size_t before = out->len;
    bool push_ack, close_it;
    int r = ps_service_handle(svc, sess, (const char *)copy, rlen, out, &push_ack, &close_it);
    free(copy);
    if (!req) {
        /* Not a Request: PS_EPROTO and no reply; the caller closes. */
        FUZZ_CHECK(r == PS_EPROTO && out->len == before);
        return false;
    }
    FUZZ_CHECK(r == 0);
    check_reply(req, out, before, push_ack, svc == F.svc);
    ctrps__request__free_unpacked(req, NULL);
    return !close_it;
}

/* A barrier one input raised would refuse every later input's checkpoint
 * requests: lower it, through a connection of its own. */
static void end_barrier(void) {
    if (!F.pending[0])
        return;
    Ctrps__CheckpointRequest ck = CTRPS__CHECKPOINT_REQUEST__INIT;
    ck.phase = CTRPS__CHECKPOINT_REQUEST__PHASE__END;
    char id[PS_NAME_MAX];
    snprintf(id, sizeof(id), "%s", F.pending);
    ck.id = id;
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_CHECKPOINT;
    req.checkpoint = &ck;
    size_t n = ctrps__request__get_packed_size(&req);
    uint8_t *buf = malloc(n ? n : 1);
    FUZZ_CHECK(buf);
    ctrps__request__pack(&req, buf);
    ps_session sess;
    ps_service_session_init(F.svc, &sess);
    ps_buf out;
    ps_buf_init(&out);
    handle(F.svc, &sess, (const char *)buf, n, &out);
    FUZZ_CHECK(!F.pending[0]);
    ps_buf_deinit(&out);
    ps_service_session_deinit(F.svc, &sess);
    free(buf);
}

FUZZ_ENTRY(request) {
    if (size == 0)
        return 0;
    uint8_t ctrl = data[0];
    data++, size--;
    ps_service *svc = ctrl & 0x80 ? F.svc_auth : F.svc;
    unsigned k = ctrl & 0x0f;
    uint32_t rng = 0x9e3779b9u ^ ctrl;

    ps_session sess;
    ps_service_session_init(svc, &sess);
    ps_frame_reader rd;
    ps_frame_reader_init(&rd, MAX_FRAME);
    ps_buf out;
    ps_buf_init(&out);
    bool open = true;
    size_t off = 0;
    while (open && off < size) {
        size_t want = size - off;
        if (k) {
            rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
            size_t piece = 1 + rng % (1u << k);
            if (piece < want)
                want = piece;
        }
        char *space;
        size_t room;
        FUZZ_CHECK(ps_frame_reader_space(&rd, &space, &room) == 0 && room > 0);
        if (want > room)
            want = room;
        memcpy(space, data + off, want);
        ps_frame_reader_commit(&rd, want);
        off += want;
        for (;;) {
            const char *frame;
            size_t len;
            int r = ps_frame_reader_next(&rd, &frame, &len);
            if (r == 0)
                break;
            if (r < 0) {
                FUZZ_CHECK(r == PS_ELIMIT);
                open = false;
                break;
            }
            FUZZ_CHECK(r == 1 && len <= MAX_FRAME);
            if (!(open = handle(svc, &sess, frame, len, &out)))
                break;
        }
        /* The network layer commits once per loop turn, before replies. */
        ps_shard_commit(F.shard);
        out.len = 0;
    }
    FUZZ_CHECK(ps_frame_reader_pending(&rd) <= size);
    ps_buf_deinit(&out);
    ps_frame_reader_deinit(&rd);
    ps_service_session_deinit(svc, &sess);
    end_barrier();
    ps_shard_tick(F.shard, mono_ms());
    if (++F.inputs % RESTART_EVERY == 0)
        restart();
    return 0;
}
