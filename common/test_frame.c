/* Tests for wire framing (common/frame.h): a 4-byte big-endian length, then
 * one protobuf message (DESIGN.md "Wire protocol").
 *
 * What a user depends on: whatever way TCP cuts the byte stream, the reader
 * yields the same frames in order; an announced length over the limit is
 * refused before any memory is committed to it (a hostile peer cannot make
 * the server allocate 4 GiB with four bytes); and a large frame is read
 * straight into place, without quadratic copying. */

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ctrps.pb-c.h"
#include "error.h"
#include "frame.h"

/* ---- helpers ------------------------------------------------------------------ */

/* Feed bytes into the reader exactly as a socket read loop would: ask for
 * space, copy at most `chunk` bytes into it, commit. */
static void feed(ps_frame_reader *r, const char *data, size_t len, size_t chunk) {
    size_t off = 0;
    while (off < len) {
        char *p;
        size_t room;
        cr_assert_eq(ps_frame_reader_space(r, &p, &room), 0);
        cr_assert_gt(room, 0, "reader offered no space");
        size_t n = len - off;
        if (n > room)
            n = room;
        if (n > chunk)
            n = chunk;
        memcpy(p, data + off, n);
        ps_frame_reader_commit(r, n);
        off += n;
    }
}

static void put_header(char *p, uint32_t len) {
    p[0] = (char)(len >> 24);
    p[1] = (char)(len >> 16);
    p[2] = (char)(len >> 8);
    p[3] = (char)len;
}

/* A stream of frames with distinct payloads (including an empty one). */
typedef struct stream {
    char *data;
    size_t len;
    size_t nframes;
    size_t off[8], flen[8];      /* payload offsets and lengths */
} stream;

/* With `big`, one frame is larger than the reader's 64 KiB read chunk. */
static void make_stream(stream *s, bool big) {
    static const size_t lens[] = {5, 0, 1, 300, 4, 70000, 2};
    s->nframes = sizeof(lens) / sizeof(lens[0]);
    size_t total = 0;
    for (size_t i = 0; i < s->nframes; i++)
        total += PS_FRAME_HEADER + lens[i];
    s->data = malloc(total);
    s->len = 0;
    for (size_t i = 0; i < s->nframes; i++) {
        size_t len = !big && lens[i] > 1000 ? 1000 : lens[i];
        put_header(s->data + s->len, (uint32_t)len);
        s->len += PS_FRAME_HEADER;
        s->off[i] = s->len;
        s->flen[i] = len;
        for (size_t j = 0; j < len; j++)
            s->data[s->len + j] = (char)(i * 31 + j * 7 + 1);
        s->len += len;
    }
}

/* Pull every whole frame now buffered, checking each against the stream;
 * returns how many were taken. */
static size_t drain(ps_frame_reader *r, const stream *s, size_t *next) {
    size_t got = 0;
    for (;;) {
        const char *f;
        size_t flen;
        int rc = ps_frame_reader_next(r, &f, &flen);
        cr_assert_geq(rc, 0, "next: %d", rc);
        if (rc == 0)
            return got;
        cr_assert_lt(*next, s->nframes, "more frames than were sent");
        cr_assert_eq(flen, s->flen[*next], "frame %zu: length %zu, sent %zu", *next, flen,
                     s->flen[*next]);
        cr_assert(!memcmp(f, s->data + s->off[*next], flen), "frame %zu: payload differs", *next);
        (*next)++;
        got++;
    }
}

/* ---- stream reassembly ---------------------------------------------------------- */

Test(frame, several_frames_in_one_read) {
    stream s;
    make_stream(&s, true);
    ps_frame_reader r;
    ps_frame_reader_init(&r, 1u << 20);
    feed(&r, s.data, s.len, SIZE_MAX);
    size_t next = 0;
    cr_assert_eq(drain(&r, &s, &next), s.nframes);
    cr_assert_eq(ps_frame_reader_pending(&r), 0);
    ps_frame_reader_deinit(&r);
    free(s.data);
}

Test(frame, split_at_every_byte_boundary) {
    stream s;
    make_stream(&s, false);
    /* Two reads, cut at k, for every k; frames come out complete and in
     * order, and no frame is returned before its last byte arrived. */
    for (size_t k = 0; k <= s.len; k++) {
        ps_frame_reader r;
        ps_frame_reader_init(&r, 1u << 20);
        size_t next = 0;
        feed(&r, s.data, k, SIZE_MAX);
        drain(&r, &s, &next);
        size_t whole = 0;
        while (whole < s.nframes && s.off[whole] + s.flen[whole] <= k)
            whole++;
        cr_assert_eq(next, whole, "cut at %zu: %zu frames out, %zu complete", k, next, whole);
        cr_assert_eq(ps_frame_reader_pending(&r), k - (whole ? s.off[whole - 1] + s.flen[whole - 1] : 0));
        feed(&r, s.data + k, s.len - k, SIZE_MAX);
        drain(&r, &s, &next);
        cr_assert_eq(next, s.nframes, "cut at %zu", k);
        cr_assert_eq(ps_frame_reader_pending(&r), 0);
        ps_frame_reader_deinit(&r);
    }
    free(s.data);
}

Test(frame, one_byte_per_read) {
    stream s;
    make_stream(&s, true);
    ps_frame_reader r;
    ps_frame_reader_init(&r, 1u << 20);
    size_t next = 0;
    for (size_t i = 0; i < s.len; i++) {
        feed(&r, s.data + i, 1, 1);
        drain(&r, &s, &next);
        /* Exactly the frames whose last byte is in are out. */
        size_t whole = 0;
        while (whole < s.nframes && s.off[whole] + s.flen[whole] <= i + 1)
            whole++;
        cr_assert_eq(next, whole, "after byte %zu", i);
    }
    cr_assert_eq(next, s.nframes);
    ps_frame_reader_deinit(&r);
    free(s.data);
}

Test(frame, odd_sized_reads_interleaved_with_next) {
    stream s;
    make_stream(&s, true);
    static const size_t chunks[] = {1, 3, 7, 4096, 65536, 65537, 100000};
    for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        ps_frame_reader r;
        ps_frame_reader_init(&r, 1u << 20);
        size_t next = 0, off = 0;
        while (off < s.len) {
            size_t n = s.len - off < chunks[c] ? s.len - off : chunks[c];
            feed(&r, s.data + off, n, n);
            off += n;
            drain(&r, &s, &next);
        }
        cr_assert_eq(next, s.nframes, "chunk %zu", chunks[c]);
        ps_frame_reader_deinit(&r);
    }
    free(s.data);
}

Test(frame, zero_length_frame) {
    char bytes[4 + 4 + 3];
    put_header(bytes, 0);
    put_header(bytes + 4, 0);
    bytes[8] = 0, bytes[9] = 0, bytes[10] = 0; /* start of a third header */
    ps_frame_reader r;
    ps_frame_reader_init(&r, 1024);
    feed(&r, bytes, sizeof(bytes), SIZE_MAX);
    const char *f = NULL;
    size_t len = 99;
    cr_assert_eq(ps_frame_reader_next(&r, &f, &len), 1);
    cr_assert_eq(len, 0);
    cr_assert_eq(ps_frame_reader_next(&r, &f, &len), 1);
    cr_assert_eq(len, 0);
    cr_assert_eq(ps_frame_reader_next(&r, &f, &len), 0, "3 bytes of a header are not a frame");
    cr_assert_eq(ps_frame_reader_pending(&r), 3);
    /* A zero-length payload is a valid, empty Request. */
    Ctrps__Request *req = ctrps__request__unpack(NULL, 0, (const uint8_t *)"");
    cr_assert_not_null(req);
    cr_assert_eq(req->method_case, CTRPS__REQUEST__METHOD__NOT_SET);
    ctrps__request__free_unpacked(req, NULL);
    ps_frame_reader_deinit(&r);
}

/* ---- limits ------------------------------------------------------------------------ */

Test(frame, oversized_length_is_refused_without_allocating) {
    ps_frame_reader r;
    ps_frame_reader_init(&r, 1u << 20);
    char hdr[4];
    put_header(hdr, 0xffffffffu);
    feed(&r, hdr, 4, SIZE_MAX);
    const char *f;
    size_t len;
    cr_assert_eq(ps_frame_reader_next(&r, &f, &len), PS_ELIMIT);
    cr_assert_eq(ps_frame_reader_next(&r, &f, &len), PS_ELIMIT, "the refusal is sticky");
    /* Asking for space now must not size the buffer for the announced 4 GiB. */
    char *p;
    size_t room;
    cr_assert_eq(ps_frame_reader_space(&r, &p, &room), 0);
    cr_assert_lt(r.cap, (size_t)1 << 20, "reader grew to %zu bytes for a refused frame", r.cap);
    cr_assert_lt(room, (size_t)1 << 20);
    ps_frame_reader_deinit(&r);
}

Test(frame, length_one_over_the_limit_is_refused_and_at_the_limit_accepted) {
    const uint32_t max = 100000;
    char *buf = calloc(1, 4 + max);
    ps_frame_reader r;
    const char *f;
    size_t len;

    ps_frame_reader_init(&r, max);
    put_header(buf, max + 1);
    feed(&r, buf, 4, SIZE_MAX);
    cr_assert_eq(ps_frame_reader_next(&r, &f, &len), PS_ELIMIT);
    ps_frame_reader_deinit(&r);

    ps_frame_reader_init(&r, max);
    put_header(buf, max);
    buf[4 + max - 1] = 'z';
    feed(&r, buf, 4 + max, SIZE_MAX);
    cr_assert_eq(ps_frame_reader_next(&r, &f, &len), 1);
    cr_assert_eq(len, max);
    cr_assert_eq(f[max - 1], 'z');
    ps_frame_reader_deinit(&r);
    free(buf);
}

Test(frame, large_frame_lands_in_place) {
    const size_t n = (6u << 20) + 12345; /* several MB, not a power of two */
    char *payload = malloc(n);
    for (size_t i = 0; i < n; i++)
        payload[i] = (char)(i * 2654435761u >> 13);
    ps_frame_reader r;
    ps_frame_reader_init(&r, 64u << 20);
    char hdr[4];
    put_header(hdr, (uint32_t)n);
    feed(&r, hdr, 4, SIZE_MAX);

    /* Once the length is known, the reader offers room for the whole rest of
     * the frame, and every later read continues exactly where the previous
     * one ended: the payload is never moved or re-allocated. */
    char *p;
    size_t room;
    cr_assert_eq(ps_frame_reader_space(&r, &p, &room), 0);
    cr_assert_geq(room, n, "room %zu for a frame with %zu bytes to go", room, n);
    char *expect = p;
    size_t off = 0;
    const size_t chunk = 100003; /* a typical socket read, not aligned */
    while (off < n) {
        cr_assert_eq(ps_frame_reader_space(&r, &p, &room), 0);
        cr_assert_eq(p, expect, "read %zu bytes in: the buffer moved", off);
        size_t k = n - off < chunk ? n - off : chunk;
        cr_assert_geq(room, k);
        memcpy(p, payload + off, k);
        ps_frame_reader_commit(&r, k);
        off += k;
        expect += k;
    }
    const char *f;
    size_t len;
    cr_assert_eq(ps_frame_reader_next(&r, &f, &len), 1);
    cr_assert_eq(len, n);
    cr_assert(!memcmp(f, payload, n));
    cr_assert_eq(ps_frame_reader_pending(&r), 0);
    ps_frame_reader_deinit(&r);
    free(payload);
}

/* ---- buffers and protobuf round trips ------------------------------------------------ */

Test(frame, buf_reserve_and_take) {
    ps_buf b;
    ps_buf_init(&b);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(ps_buf_reserve(&b, 10), 0);
    cr_assert_geq(b.cap, 10);
    memcpy(b.data, "0123456789", 10);
    b.len = 10;
    cr_assert_eq(ps_buf_reserve(&b, 100000), 0);
    cr_assert_geq(b.cap, 100010);
    cr_assert(!memcmp(b.data, "0123456789", 10), "reserve lost the contents");
    size_t len;
    char *d = ps_buf_take(&b, &len);
    cr_assert_eq(len, 10);
    cr_assert(!memcmp(d, "0123456789", 10));
    cr_assert_null(b.data);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.cap, 0);
    free(d);
    ps_buf_deinit(&b);
}

Test(frame, protobuf_requests_round_trip) {
    uint64_t pull_keys[] = {1, UINT64_MAX, 0x1234567890abcdefull};
    uint64_t push_keys[] = {42, 7};
    float grads[] = {0.5f, -1.25f, 3e-20f, -0.0f};

    Ctrps__PullRequest pull = CTRPS__PULL_REQUEST__INIT;
    pull.table = "emb";
    pull.n_keys = 3;
    pull.keys = pull_keys;
    Ctrps__Request r1 = CTRPS__REQUEST__INIT;
    r1.id = 1;
    r1.method_case = CTRPS__REQUEST__METHOD_PULL;
    r1.pull = &pull;

    Ctrps__PushRequest push = CTRPS__PUSH_REQUEST__INIT;
    push.table = "wide";
    push.n_keys = 2;
    push.keys = push_keys;
    push.n_grads = 4;
    push.grads = grads;
    push.client_id = 99;
    push.seq = UINT64_C(1) << 40;
    Ctrps__Request r2 = CTRPS__REQUEST__INIT;
    r2.id = UINT64_MAX;
    r2.method_case = CTRPS__REQUEST__METHOD_PUSH;
    r2.push = &push;

    Ctrps__Request r3 = CTRPS__REQUEST__INIT; /* packs to zero bytes */

    ps_buf out;
    ps_buf_init(&out);
    cr_assert_eq(ps_frame_append(&out, &r1.base), 0);
    cr_assert_eq(ps_frame_append(&out, &r2.base), 0);
    cr_assert_eq(ps_frame_append(&out, &r3.base), 0);
    size_t want = 3 * PS_FRAME_HEADER + protobuf_c_message_get_packed_size(&r1.base) +
                  protobuf_c_message_get_packed_size(&r2.base);
    cr_assert_eq(out.len, want);

    /* Byte by byte, then all at once: the same three messages. */
    for (size_t chunk = 1; chunk <= out.len; chunk = chunk == 1 ? out.len : out.len + 1) {
        ps_frame_reader rd;
        ps_frame_reader_init(&rd, 1u << 20);
        Ctrps__Request *got[3] = {0};
        size_t ngot = 0;
        for (size_t off = 0; off < out.len; off += chunk) {
            size_t k = out.len - off < chunk ? out.len - off : chunk;
            feed(&rd, out.data + off, k, k);
            const char *f;
            size_t len;
            int rc;
            while ((rc = ps_frame_reader_next(&rd, &f, &len)) == 1) {
                cr_assert_lt(ngot, 3);
                got[ngot] = ctrps__request__unpack(NULL, len, (const uint8_t *)f);
                cr_assert_not_null(got[ngot], "frame %zu does not unpack", ngot);
                ngot++;
            }
            cr_assert_eq(rc, 0);
        }
        cr_assert_eq(ngot, 3);

        cr_assert_eq(got[0]->id, 1);
        cr_assert_eq(got[0]->method_case, CTRPS__REQUEST__METHOD_PULL);
        cr_assert_str_eq(got[0]->pull->table, "emb");
        cr_assert_eq(got[0]->pull->n_keys, 3);
        cr_assert(!memcmp(got[0]->pull->keys, pull_keys, sizeof(pull_keys)));

        cr_assert_eq(got[1]->id, UINT64_MAX);
        cr_assert_eq(got[1]->method_case, CTRPS__REQUEST__METHOD_PUSH);
        cr_assert_str_eq(got[1]->push->table, "wide");
        cr_assert_eq(got[1]->push->n_keys, 2);
        cr_assert(!memcmp(got[1]->push->keys, push_keys, sizeof(push_keys)));
        cr_assert_eq(got[1]->push->n_grads, 4);
        cr_assert(!memcmp(got[1]->push->grads, grads, sizeof(grads)), "floats not bit-exact");
        cr_assert_eq(got[1]->push->client_id, 99);
        cr_assert_eq(got[1]->push->seq, UINT64_C(1) << 40);

        cr_assert_eq(got[2]->id, 0);
        cr_assert_eq(got[2]->method_case, CTRPS__REQUEST__METHOD__NOT_SET);
        for (size_t i = 0; i < 3; i++)
            ctrps__request__free_unpacked(got[i], NULL);
        ps_frame_reader_deinit(&rd);
    }
    ps_buf_deinit(&out);
}

Test(frame, append_writes_a_big_endian_length) {
    uint64_t keys[300];
    for (size_t i = 0; i < 300; i++)
        keys[i] = i;
    Ctrps__PullRequest pull = CTRPS__PULL_REQUEST__INIT;
    pull.table = "t";
    pull.n_keys = 300;
    pull.keys = keys;
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_PULL;
    req.pull = &pull;
    ps_buf out;
    ps_buf_init(&out);
    cr_assert_eq(ps_frame_append(&out, &req.base), 0);
    size_t n = protobuf_c_message_get_packed_size(&req.base);
    cr_assert_gt(n, 255, "the length must need more than one byte");
    const uint8_t *p = (const uint8_t *)out.data;
    cr_assert_eq(((size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3]), n);
    ps_buf_deinit(&out);
}
