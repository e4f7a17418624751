/* Tests for the in-place Pull and Push encoding (common/wire.h).
 *
 * What a user depends on: a request the in-place decoder takes means
 * exactly what protobuf-c's unpack makes of the same bytes, whatever the
 * bytes (random messages built field by field, then damaged byte by byte),
 * and it takes every request the client writes; the requests written in
 * place are protobuf-c's bytes; a Pull reply laid out in place decodes with
 * protobuf-c to the same values, wherever in the buffer it starts. */

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "ctrps.pb-c.h"
#include "frame.h"
#include "wire.h"

/* ---- helpers ------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

typedef struct bytes {
    uint8_t b[1 << 16];
    size_t n;
} bytes;

static void put(bytes *o, const void *p, size_t n) {
    if (o->n + n > sizeof(o->b))
        n = sizeof(o->b) - o->n;
    memcpy(o->b + o->n, p, n);
    o->n += n;
}

static void put_byte(bytes *o, uint8_t c) { put(o, &c, 1); }

/* v as a varint, now and then in more bytes than it needs. */
static void put_varint(bytes *o, uint64_t v) {
    size_t extra = below(8) == 0 ? below(4) : 0;
    while (v >= 0x80 || extra) {
        put_byte(o, (uint8_t)(v | 0x80));
        v >>= 7;
        if (v < 0x80 && extra)
            extra--;
    }
    put_byte(o, (uint8_t)v);
}

static void put_tag(bytes *o, uint32_t field, unsigned wt) { put_varint(o, (uint64_t)field << 3 | wt); }

static void put_len(bytes *o, uint32_t field, const bytes *body) {
    put_tag(o, field, 2);
    put_varint(o, body->n);
    put(o, body->b, body->n);
}

/* A field no message knows, of any wire type (a group now and then). */
static void put_unknown(bytes *o, uint32_t field) {
    static const unsigned wts[] = {0, 1, 2, 5, 3};
    unsigned wt = wts[below(below(16) == 0 ? 5 : 4)];
    put_tag(o, field, wt);
    uint8_t junk[12];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)rnd();
    if (wt == 0)
        put_varint(o, rnd() >> below(64));
    else if (wt == 1 || wt == 5)
        put(o, junk, wt == 1 ? 8 : 4);
    else if (wt == 2) {
        size_t n = below(6);
        put_varint(o, n);
        put(o, junk, n);
    }
}

/* A packed array of n elements of width bytes; now and then split in two
 * fields (protobuf-c joins them) or sent unpacked. */
static void put_array(bytes *o, uint32_t field, size_t n, size_t width) {
    bytes *b = calloc(1, sizeof(*b));
    size_t split = below(10) == 0 ? below(n + 1) : n;
    if (below(12) == 0) {
        for (size_t i = 0; i < n; i++) {
            put_tag(o, field, width == 8 ? 1 : 5);
            for (size_t j = 0; j < width; j++)
                put_byte(o, (uint8_t)rnd());
        }
        free(b);
        return;
    }
    for (size_t i = 0; i < split * width; i++)
        put_byte(b, (uint8_t)rnd());
    put_len(o, field, b);
    if (split < n) {
        b->n = 0;
        for (size_t i = 0; i < (n - split) * width; i++)
            put_byte(b, (uint8_t)rnd());
        put_len(o, field, b);
    }
    free(b);
}

/* A Request built field by field: mostly a Pull or Push, in any order,
 * with unknown fields, repeats and now and then another method. */
static void random_request(bytes *o) {
    o->n = 0;
    bytes *body = calloc(1, sizeof(*body));
    uint32_t method = below(8) == 0 ? (uint32_t)(10 + below(11)) : (below(2) ? 11 : 12);
    static const char *names[] = {"emb", "", "wide", "e\0b", "\xff\xfe"};
    size_t nfields = 1 + below(7);
    for (size_t i = 0; i < nfields; i++) {
        switch (below(8)) {
        case 0: {
            size_t k = below(5);
            bytes *t = calloc(1, sizeof(*t));
            put(t, names[k], k == 3 ? 3 : strlen(names[k]));
            put_len(body, 1, t);
            free(t);
            break;
        }
        case 1:
        case 2:
            put_array(body, 2, below(20), 8);
            break;
        case 3:
        case 4:
            put_array(body, 3, below(80), 4);
            break;
        case 5:
            put_tag(body, 4 + (uint32_t)below(2), 0);
            put_varint(body, rnd() >> below(64));
            break;
        case 6:
            put_unknown(body, 6 + (uint32_t)below(3000));
            break;
        default:
            break;
        }
    }
    if (below(10) == 0)
        put_unknown(o, (uint32_t)(2 + below(8)));
    if (below(4)) {
        put_tag(o, 1, 0);
        put_varint(o, rnd() >> below(64));
    }
    put_len(o, method, body);
    if (below(10) == 0) /* a second member of the oneof, or the same again */
        put_len(o, below(2) ? method : (uint32_t)(10 + below(11)), body);
    if (below(10) == 0)
        put_unknown(o, (uint32_t)(21 + below(100)));
    if (below(5) == 0) {
        put_tag(o, 1, 0);
        put_varint(o, rnd());
    }
    free(body);
}

/* Damage: bytes changed, cut off, or inserted. */
static void damage(bytes *o) {
    size_t times = 1 + below(3);
    for (size_t t = 0; t < times && o->n; t++) {
        switch (below(4)) {
        case 0:
            o->b[below(o->n)] = (uint8_t)rnd();
            break;
        case 1:
            o->b[below(o->n)] ^= (uint8_t)(1u << below(8));
            break;
        case 2:
            o->n = below(o->n);
            break;
        default: {
            size_t at = below(o->n + 1), k = 1 + below(3);
            if (o->n + k > sizeof(o->b))
                break;
            memmove(o->b + at + k, o->b + at, o->n - at);
            for (size_t i = 0; i < k; i++)
                o->b[at + i] = (uint8_t)rnd();
            o->n += k;
        }
        }
    }
}

/* The in-place decoder agrees with protobuf-c: when it takes a request,
 * protobuf-c reads the same method, id, table and arrays from it. Returns
 * whether it took it. */
static bool agree(const uint8_t *b, size_t n) {
    ps_wire_keyed k;
    int taken = ps_wire_keyed_decode(b, n, &k);
    cr_assert(taken == 0 || taken == 1);
    if (!taken)
        return false;
    Ctrps__Request *req = ctrps__request__unpack(NULL, n, b);
    cr_assert(req, "the in-place decoder took bytes protobuf-c refuses");
    cr_assert_eq(req->id, k.id);
    const char *table;
    size_t nkeys, ngrads = 0;
    const uint64_t *keys;
    const float *grads = NULL;
    if (k.method == PS_WIRE_PULL) {
        cr_assert_eq(req->method_case, CTRPS__REQUEST__METHOD_PULL);
        table = req->pull->table, nkeys = req->pull->n_keys, keys = req->pull->keys;
    } else {
        cr_assert_eq(k.method, PS_WIRE_PUSH);
        cr_assert_eq(req->method_case, CTRPS__REQUEST__METHOD_PUSH);
        Ctrps__PushRequest *p = req->push;
        table = p->table, nkeys = p->n_keys, keys = p->keys;
        ngrads = p->n_grads, grads = p->grads;
        cr_assert_eq(p->client_id, k.client_id);
        cr_assert_eq(p->seq, k.seq);
    }
    /* protobuf-c's string holds every byte, then a NUL. */
    cr_assert(table[k.table_len] == 0 && (!k.table_len || !memcmp(table, k.table, k.table_len)));
    cr_assert_eq(nkeys, k.n_keys);
    cr_assert(!nkeys || !memcmp(keys, k.keys, nkeys * 8));
    cr_assert_eq(ngrads, k.n_grads);
    cr_assert(!ngrads || !memcmp(grads, k.grads, ngrads * 4));
    ctrps__request__free_unpacked(req, NULL);
    return true;
}

static uint8_t *pack_request(const Ctrps__Request *req, size_t *ret_n) {
    size_t n = ctrps__request__get_packed_size(req);
    uint8_t *b = malloc(n + 1);
    ctrps__request__pack(req, b);
    *ret_n = n;
    return b;
}

/* ---- requests ------------------------------------------------------------------ */

Test(wire, random_requests_read_as_protobuf_c_reads_them) {
    bytes *o = calloc(1, sizeof(*o));
    size_t taken = 0, damaged_taken = 0;
    for (int i = 0; i < 20000; i++) {
        random_request(o);
        taken += agree(o->b, o->n);
        damage(o);
        damaged_taken += agree(o->b, o->n);
    }
    /* Both branches ran: the decoder takes most built requests, and some
     * damaged ones (a changed key byte is still a request). */
    cr_assert_gt(taken, 5000, "taken %zu", taken);
    cr_assert_gt(damaged_taken, 500, "damaged taken %zu", damaged_taken);
    free(o);
}

/* Each refusal goes to protobuf-c, which decides: these are the shapes
 * protobuf-c reads differently from a single packed array, or refuses. */
Test(wire, refuses_what_protobuf_c_must_decide) {
    static const struct {
        const char *what;
        const char *b;
        size_t n;
    } cases[] = {
        {"keys twice (joined)", "\x5a\x14\x12\x08\1\0\0\0\0\0\0\0\x12\x08\2\0\0\0\0\0\0\0", 22},
        {"keys unpacked", "\x5a\x09\x11\1\0\0\0\0\0\0\0", 11},
        {"keys not whole", "\x5a\x05\x12\x03\1\2\3", 7},
        {"grads not whole", "\x62\x04\x1a\x02\1\2", 6},
        {"pull then push", "\x5a\x00\x62\x00", 4},
        {"pull twice (merged)", "\x5a\x00\x5a\x00", 4},
        {"lookup", "\x6a\x00", 2},
        {"no method", "\x08\x01", 2},
        {"empty", "", 0},
        {"field 0", "\x00\x01\x5a\x00", 4},
        {"group", "\x5a\x02\x33\x34", 4},
        {"id as bytes", "\x0a\x00\x5a\x00", 4},
        {"varint of 11 bytes", "\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01\x5a\x00", 14},
        {"length past the end", "\x5a\x05\x12\x08", 4},
        {"length prefix of 6 bytes", "\x5a\x80\x80\x80\x80\x80\x00", 7},
        {"truncated tag", "\x5a\x00\x80", 3},
        {"fixed64 cut short", "\x5a\x00\x39\1\2\3", 6},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ps_wire_keyed k;
        cr_assert_eq(ps_wire_keyed_decode((const uint8_t *)cases[i].b, cases[i].n, &k), 0, "%s",
                     cases[i].what);
        agree((const uint8_t *)cases[i].b, cases[i].n);
    }
    /* Unknown fields of every kind are skipped, in both messages. */
    static const char unknown[] = "\x18\x05\x29\1\2\3\4\5\6\7\x08\x5a\x12\x1d\1\2\3\4\x32\x01x"
                                  "\x12\x08\7\0\0\0\0\0\0\0\xa8\x02\x07";
    ps_wire_keyed k;
    cr_assert_eq(ps_wire_keyed_decode((const uint8_t *)unknown, sizeof(unknown) - 1, &k), 1);
    cr_assert_eq(k.n_keys, 1);
    cr_assert(agree((const uint8_t *)unknown, sizeof(unknown) - 1));
}

/* Fields left out are absent, not empty: a Push with no table and no
 * arrays (corpus/request/crash-in-place-no-table: the shard copied the
 * name from NULL) has NULL pointers and zero lengths, protobuf-c an empty
 * name and no arrays. An empty array sent is there, with a pointer. */
Test(wire, absent_fields_have_no_pointer) {
    ps_wire_keyed k;
    cr_assert_eq(ps_wire_keyed_decode((const uint8_t *)"\x08\x07\x62\x00", 4, &k), 1);
    cr_assert_eq(k.method, PS_WIRE_PUSH);
    cr_assert(!k.table && !k.table_len && !k.keys && !k.n_keys && !k.grads && !k.n_grads);
    cr_assert(agree((const uint8_t *)"\x08\x07\x62\x00", 4));
    cr_assert_eq(ps_wire_keyed_decode((const uint8_t *)"\x5a\x02\x12\x00", 4, &k), 1);
    cr_assert(k.keys && !k.n_keys);
    cr_assert(agree((const uint8_t *)"\x5a\x02\x12\x00", 4));
}

/* The client's requests: protobuf-c's bytes, taken by the decoder. */
Test(wire, written_requests_are_protobuf_c_bytes) {
    static const uint64_t ids[] = {0, 1, 127, 128, 1ull << 40, UINT64_MAX};
    static const char *tables[] = {"", "emb", "a_rather_long_table_name_of_some_length"};
    static const size_t counts[] = {0, 1, 3, 200};
    uint64_t keys[200];
    float grads[200 * 5];
    for (size_t i = 0; i < 200; i++)
        keys[i] = rnd();
    for (size_t i = 0; i < 200 * 5; i++)
        grads[i] = (float)(int64_t)rnd() / 1e9f;
    for (size_t m = 0; m < 2; m++)
        for (size_t a = 0; a < 6; a++)
            for (size_t t = 0; t < 3; t++)
                for (size_t c = 0; c < 4; c++)
                    for (size_t g = 0; g < 2; g++) {
                        bool push = m == 1;
                        Ctrps__Request req = CTRPS__REQUEST__INIT;
                        Ctrps__PullRequest pull = CTRPS__PULL_REQUEST__INIT;
                        Ctrps__PushRequest pu = CTRPS__PUSH_REQUEST__INIT;
                        req.id = ids[a];
                        size_t n = counts[c];
                        if (push) {
                            req.method_case = CTRPS__REQUEST__METHOD_PUSH;
                            req.push = &pu;
                            pu.table = (char *)tables[t];
                            pu.n_keys = n, pu.keys = keys;
                            pu.n_grads = n * 5, pu.grads = grads;
                            pu.client_id = ids[(a + c) % 6];
                            pu.seq = ids[(a + t) % 6];
                        } else {
                            req.method_case = CTRPS__REQUEST__METHOD_PULL;
                            req.pull = &pull;
                            pull.table = (char *)tables[t];
                            pull.n_keys = n, pull.keys = keys;
                        }
                        size_t want_n;
                        uint8_t *want = pack_request(&req, &want_n);
                        ps_wire_keyed k = {
                            .id = req.id,
                            .method = push ? PS_WIRE_PUSH : PS_WIRE_PULL,
                            .table = (const uint8_t *)tables[t],
                            .table_len = strlen(tables[t]),
                            .keys = (const uint8_t *)keys,
                            .n_keys = n,
                            .grads = push && g ? (const uint8_t *)grads : NULL,
                            .n_grads = push ? n * 5 : 0,
                            .client_id = push ? pu.client_id : 0,
                            .seq = push ? pu.seq : 0,
                        };
                        cr_assert_eq(ps_wire_keyed_len(&k), want_n);
                        uint8_t *got = malloc(want_n + 1);
                        uint8_t *gp = NULL;
                        cr_assert_eq(ps_wire_keyed_write(&k, got, &gp), got + want_n);
                        if (push && !g && n) { /* the caller fills the gradients */
                            cr_assert(gp >= got && gp + n * 20 <= got + want_n);
                            memcpy(gp, grads, n * 20);
                        }
                        cr_assert(!memcmp(got, want, want_n), "method %zu id %zu table %zu n %zu",
                                  m, a, t, c);
                        cr_assert(agree(got, want_n));
                        free(got);
                        free(want);
                    }
}

/* ---- pull replies --------------------------------------------------------------- */

static bool reply_agrees(const uint8_t *b, size_t n) {
    ps_wire_pull_reply pr;
    int taken = ps_wire_pull_reply_decode(b, n, &pr);
    cr_assert(taken == 0 || taken == 1);
    if (!taken)
        return false;
    Ctrps__Response *resp = ctrps__response__unpack(NULL, n, b);
    cr_assert(resp, "the in-place decoder took a reply protobuf-c refuses");
    cr_assert_eq(resp->id, pr.id);
    cr_assert_eq(resp->status, CTRPS__STATUS__OK);
    cr_assert_eq(resp->result_case, CTRPS__RESPONSE__RESULT_PULL);
    cr_assert_eq(resp->pull->dim, pr.dim);
    cr_assert_eq(resp->pull->n_values, pr.n_values);
    cr_assert(!pr.n_values || !memcmp(resp->pull->values, pr.values, pr.n_values * 4));
    const char *pending = resp->checkpoint_pending ? resp->checkpoint_pending : "";
    cr_assert(pending[pr.pending_len] == 0 && !memcmp(pending, pr.pending ? (const char *)pr.pending : "", pr.pending_len));
    ctrps__response__free_unpacked(resp, NULL);
    return true;
}

Test(wire, pull_reply_in_place_decodes_anywhere_in_the_buffer) {
    static const uint64_t ids[] = {0, 5, 300, UINT64_MAX};
    static const uint32_t dims[] = {0, 1, 16, 200, 20000};
    static const size_t counts[] = {0, 1, 7, 100};
    static const char *pendings[] = {NULL, "", "ckpt-1"};
    for (size_t a = 0; a < 4; a++)
        for (size_t d = 0; d < 5; d++)
            for (size_t c = 0; c < 4; c++)
                for (size_t s = 0; s < 3; s++)
                    for (size_t before = 0; before < 8; before++) {
                        ps_buf out;
                        ps_buf_init(&out);
                        cr_assert_eq(ps_buf_reserve(&out, before), 0);
                        if (before)
                            memset(out.data, 0xee, before);
                        out.len = before;
                        size_t nv = counts[c] * dims[d];
                        if (nv > 100000)
                            nv = 100000;
                        float *v;
                        size_t len;
                        cr_assert_eq(ps_wire_pull_reply_reserve(&out, ids[a], pendings[s], dims[d],
                                                                nv, &v, &len), 0);
                        cr_assert(!nv || (uintptr_t)v % _Alignof(float) == 0);
                        for (size_t i = 0; i < nv; i++)
                            v[i] = (float)i * 0.5f - 3.0f;
                        ps_wire_pull_reply_finish(&out, v, nv, len);
                        cr_assert_eq(out.len, before + len);
                        const uint8_t *f = (const uint8_t *)out.data + before;
                        uint32_t flen = (uint32_t)f[0] << 24 | (uint32_t)f[1] << 16 |
                                        (uint32_t)f[2] << 8 | f[3];
                        cr_assert_eq(flen + PS_FRAME_HEADER, len);
                        Ctrps__Response *resp = ctrps__response__unpack(NULL, flen, f + 4);
                        cr_assert(resp);
                        cr_assert_eq(resp->id, ids[a]);
                        cr_assert_eq(resp->result_case, CTRPS__RESPONSE__RESULT_PULL);
                        cr_assert_eq(resp->pull->dim, dims[d]);
                        cr_assert_eq(resp->pull->n_values, nv);
                        for (size_t i = 0; i < nv; i++)
                            cr_assert_eq(resp->pull->values[i], (float)i * 0.5f - 3.0f);
                        cr_assert_str_eq(resp->checkpoint_pending,
                                         pendings[s] ? pendings[s] : "");
                        ctrps__response__free_unpacked(resp, NULL);
                        cr_assert(reply_agrees(f + 4, flen));
                        ps_buf_deinit(&out);
                    }
}

/* Replies of every kind, packed by protobuf-c, then damaged. */
Test(wire, random_replies_read_as_protobuf_c_reads_them) {
    bytes *o = calloc(1, sizeof(*o));
    float vals[64];
    for (size_t i = 0; i < 64; i++)
        vals[i] = (float)i;
    size_t taken = 0;
    for (int i = 0; i < 20000; i++) {
        Ctrps__Response resp = CTRPS__RESPONSE__INIT;
        Ctrps__PullResponse pull = CTRPS__PULL_RESPONSE__INIT;
        Ctrps__PushResponse push = CTRPS__PUSH_RESPONSE__INIT;
        resp.id = rnd() >> below(64);
        resp.status = below(4) ? CTRPS__STATUS__OK : (Ctrps__Status)below(12);
        resp.message = below(4) ? (char *)"" : (char *)"why";
        resp.map_version = below(4) ? 0 : rnd();
        resp.checkpoint_pending = below(3) ? (char *)"" : (char *)"ck";
        if (below(6)) {
            pull.dim = (uint32_t)below(20);
            pull.n_values = below(65);
            pull.values = vals;
            resp.result_case = CTRPS__RESPONSE__RESULT_PULL;
            resp.pull = &pull;
        } else if (below(2)) {
            push.applied = (uint32_t)rnd();
            resp.result_case = CTRPS__RESPONSE__RESULT_PUSH;
            resp.push = &push;
        }
        o->n = ctrps__response__get_packed_size(&resp);
        ctrps__response__pack(&resp, o->b);
        bool added = below(4) == 0;
        if (added) {
            bytes *u = calloc(1, sizeof(*u));
            put_unknown(u, (uint32_t)(21 + below(100)));
            put(o, u->b, u->n);
            free(u);
        }
        bool took = reply_agrees(o->b, o->n);
        if (!added) /* every OK Pull reply protobuf-c writes is taken */
            cr_assert_eq(took, resp.status == CTRPS__STATUS__OK &&
                                   resp.result_case == CTRPS__RESPONSE__RESULT_PULL);
        taken += took;
        damage(o);
        reply_agrees(o->b, o->n);
    }
    cr_assert_gt(taken, 5000, "taken %zu", taken);
    free(o);
}
