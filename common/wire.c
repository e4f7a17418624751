#include "wire.h"

#include <errno.h>
#include <string.h>

#include "error.h"
#include "frame.h"

/* Wire types and the tags written here (field number << 3 | wire type). */
enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };
#define TAG(field, wt) ((uint8_t)((field) << 3 | (wt)))

/* Request.method and Response.result span these field numbers. */
#define ONEOF_FIRST 10
#define ONEOF_LAST 20

/* ---- reading ----------------------------------------------------------------
 *
 * Every limit below is protobuf-c's (protobuf-c.c: parse_tag_and_wiretype,
 * scan_length_prefix_data, the varint scan), or stricter: what protobuf-c
 * would refuse, or read differently, is refused here and goes to it. */

typedef struct rd {
    const uint8_t *p, *end;
} rd;

/* A varint of at most max bytes; values wrap to 64 bits as protobuf-c's do. */
static bool rd_varint(rd *r, unsigned max, uint64_t *ret) {
    uint64_t v = 0;
    for (unsigned i = 0; i < max && i < (size_t)(r->end - r->p); i++) {
        v |= (uint64_t)(r->p[i] & 0x7f) << (7 * i);
        if (!(r->p[i] & 0x80)) {
            r->p += i + 1;
            *ret = v;
            return true;
        }
    }
    return false;
}

/* A tag of a field number >= 1, in at most 4 bytes: protobuf-c reads 5,
 * truncating the fifth to 32 bits; numbers that need it are left to it. */
static bool rd_tag(rd *r, uint32_t *ret_field, unsigned *ret_wt) {
    uint64_t v;
    if (!rd_varint(r, 4, &v) || v >> 3 == 0)
        return false;
    *ret_field = (uint32_t)(v >> 3);
    *ret_wt = (unsigned)(v & 7);
    return true;
}

/* A length-delimited field's bytes (length prefix: at most 5 bytes). */
static bool rd_len(rd *r, const uint8_t **ret, size_t *ret_len) {
    uint64_t n;
    if (!rd_varint(r, 5, &n) || n > (uint64_t)(r->end - r->p))
        return false;
    *ret = r->p;
    *ret_len = (size_t)n;
    r->p += n;
    return true;
}

/* Step over a field no message here knows. Groups (wire types 3, 4) are
 * refused, as protobuf-c refuses them. */
static bool rd_skip(rd *r, unsigned wt) {
    uint64_t v;
    const uint8_t *b;
    size_t n = 0;
    switch (wt) {
    case WT_VARINT:
        return rd_varint(r, 10, &v);
    case WT_LEN:
        return rd_len(r, &b, &n);
    case WT_I64:
        n = 8;
        break;
    case WT_I32:
        n = 4;
        break;
    default:
        return false;
    }
    if (n > (size_t)(r->end - r->p))
        return false;
    r->p += n;
    return true;
}

/* A packed repeated field of width-byte elements, sent once: *ret, NULL
 * until then, points at its bytes (in the frame) even when it is empty. */
static bool rd_packed(rd *r, unsigned wt, size_t width, const uint8_t **ret, size_t *ret_n) {
    size_t n;
    if (wt != WT_LEN || *ret || !rd_len(r, ret, &n) || n % width)
        return false;
    *ret_n = n / width;
    return true;
}

/* Read a message field by field: field(r, number, wire type, ctx) reads
 * or skips each one, and says false to refuse the message. */
typedef bool field_fn(rd *r, uint32_t f, unsigned wt, void *ctx);

static bool each_field(const uint8_t *b, size_t len, field_fn *field, void *ctx) {
    rd r = {b, b + len};
    while (r.p < r.end) {
        uint32_t f;
        unsigned wt;
        if (!rd_tag(&r, &f, &wt) || !field(&r, f, wt, ctx))
            return false;
    }
    return true;
}

/* An envelope (Request, Response) being read: its oneof member `want`,
 * taken once (protobuf-c merges a repeated one); any other refused. */
typedef struct envelope {
    uint32_t want;
    const uint8_t *sub;
    size_t sublen;
    void *msg;                   /* the ps_wire_keyed or ps_wire_pull_reply filled */
} envelope;

static bool rd_member(rd *r, uint32_t f, unsigned wt, envelope *e) {
    return f == e->want && wt == WT_LEN && !e->sub && rd_len(r, &e->sub, &e->sublen);
}

static bool keyed_field(rd *r, uint32_t f, unsigned wt, void *ctx) {
    ps_wire_keyed *k = ctx;
    bool push = k->method == PS_WIRE_PUSH;
    if (f == 1)
        return wt == WT_LEN && rd_len(r, &k->table, &k->table_len);
    if (f == 2)
        return rd_packed(r, wt, 8, &k->keys, &k->n_keys);
    if (push && f == 3)
        return rd_packed(r, wt, 4, &k->grads, &k->n_grads);
    if (push && (f == 4 || f == 5))
        return wt == WT_VARINT && rd_varint(r, 10, f == 4 ? &k->client_id : &k->seq);
    return rd_skip(r, wt);
}

static bool request_field(rd *r, uint32_t f, unsigned wt, void *ctx) {
    envelope *e = ctx;
    ps_wire_keyed *k = e->msg;
    if (f == 1)
        return wt == WT_VARINT && rd_varint(r, 10, &k->id);
    if (f >= ONEOF_FIRST && f <= ONEOF_LAST) {
        if (!e->want && (f == PS_WIRE_PULL || f == PS_WIRE_PUSH))
            e->want = f;
        return rd_member(r, f, wt, e);
    }
    return rd_skip(r, wt);
}

int ps_wire_keyed_decode(const uint8_t *frame, size_t len, ps_wire_keyed *ret) {
    ps_wire_keyed k = {0};
    envelope e = {.msg = &k};
    if (!PS_WIRE_IN_PLACE || !each_field(frame, len, request_field, &e) || !e.sub)
        return 0;
    k.method = (int)e.want;
    if (!each_field(e.sub, e.sublen, keyed_field, &k))
        return 0;
    *ret = k;
    return 1;
}

static bool pull_field(rd *r, uint32_t f, unsigned wt, void *ctx) {
    ps_wire_pull_reply *pr = ctx;
    uint64_t v;
    if (f == 1) {
        if (wt != WT_VARINT || !rd_varint(r, 10, &v))
            return false;
        pr->dim = (uint32_t)v; /* protobuf-c keeps the low 32 bits too */
        return true;
    }
    if (f == 2)
        return rd_packed(r, wt, 4, &pr->values, &pr->n_values);
    return rd_skip(r, wt);
}

static bool response_field(rd *r, uint32_t f, unsigned wt, void *ctx) {
    envelope *e = ctx;
    ps_wire_pull_reply *pr = e->msg;
    uint64_t v;
    switch (f) {
    case 1:
        return wt == WT_VARINT && rd_varint(r, 10, &pr->id);
    case 2: /* status: anything but OK is protobuf-c's */
        return wt == WT_VARINT && rd_varint(r, 10, &v) && (uint32_t)v == 0;
    case 3: /* message, map_version: not needed */
        return wt == WT_LEN && rd_skip(r, wt);
    case 4:
        return wt == WT_VARINT && rd_skip(r, wt);
    case 5:
        return wt == WT_LEN && rd_len(r, &pr->pending, &pr->pending_len);
    default:
        if (f >= ONEOF_FIRST && f <= ONEOF_LAST)
            return rd_member(r, f, wt, e);
        return rd_skip(r, wt);
    }
}

int ps_wire_pull_reply_decode(const uint8_t *frame, size_t len, ps_wire_pull_reply *ret) {
    ps_wire_pull_reply pr = {0};
    envelope e = {.want = PS_WIRE_PULL, .msg = &pr};
    if (!PS_WIRE_IN_PLACE || !each_field(frame, len, response_field, &e) || !e.sub ||
        !each_field(e.sub, e.sublen, pull_field, &pr))
        return 0;
    *ret = pr;
    return 1;
}

/* ---- writing ---------------------------------------------------------------- */

static size_t varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* v in exactly width >= varint_len(v) bytes: the extra ones are
 * continuation bytes carrying zeros, which every decoder reads as v. */
static uint8_t *put_varint_width(uint8_t *p, uint64_t v, size_t width) {
    for (size_t i = 1; i < width; i++) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v) { return put_varint_width(p, v, varint_len(v)); }

/* A length-delimited field of n bytes, all told. */
static size_t field_len(size_t n) { return 1 + varint_len(n) + n; }

/* A length-delimited field's tag and length: its n bytes go after. */
static uint8_t *put_len(uint8_t *p, uint8_t tag, size_t n) {
    *p++ = tag;
    return put_varint(p, n);
}

static uint8_t *put_bytes(uint8_t *p, uint8_t tag, const void *b, size_t n) {
    p = put_len(p, tag, n);
    memcpy(p, b, n);
    return p + n;
}

/* proto3 writes no field that holds its default, as protobuf-c packs. */
static size_t keyed_body_len(const ps_wire_keyed *k) {
    size_t n = 0;
    if (k->table_len)
        n += field_len(k->table_len);
    if (k->n_keys)
        n += field_len(k->n_keys * 8);
    if (k->method == PS_WIRE_PUSH) {
        if (k->n_grads)
            n += field_len(k->n_grads * 4);
        if (k->client_id)
            n += 1 + varint_len(k->client_id);
        if (k->seq)
            n += 1 + varint_len(k->seq);
    }
    return n;
}

size_t ps_wire_keyed_len(const ps_wire_keyed *k) {
    return (k->id ? 1 + varint_len(k->id) : 0) + field_len(keyed_body_len(k));
}

uint8_t *ps_wire_keyed_write(const ps_wire_keyed *k, uint8_t *dst, uint8_t **ret_grads) {
    uint8_t *p = dst;
    if (k->id) {
        *p++ = TAG(1, WT_VARINT);
        p = put_varint(p, k->id);
    }
    p = put_len(p, TAG(k->method, WT_LEN), keyed_body_len(k));
    if (k->table_len)
        p = put_bytes(p, TAG(1, WT_LEN), k->table, k->table_len);
    if (k->n_keys)
        p = put_bytes(p, TAG(2, WT_LEN), k->keys, k->n_keys * 8);
    if (k->method != PS_WIRE_PUSH)
        return p;
    if (k->n_grads) {
        p = put_len(p, TAG(3, WT_LEN), k->n_grads * 4);
        if (k->grads)
            memcpy(p, k->grads, k->n_grads * 4);
        else
            *ret_grads = p;
        p += k->n_grads * 4;
    }
    if (k->client_id) {
        *p++ = TAG(4, WT_VARINT);
        p = put_varint(p, k->client_id);
    }
    if (k->seq) {
        *p++ = TAG(5, WT_VARINT);
        p = put_varint(p, k->seq);
    }
    return p;
}

int ps_wire_pull_reply_reserve(ps_buf *out, uint64_t id, const char *pending, uint32_t dim,
                               size_t n_values, float **ret_values, size_t *ret_len) {
    enum { MAX_VARINT = 10 };
    size_t plen = pending ? strlen(pending) : 0;
    if (n_values > UINT32_MAX / sizeof(float))
        return PS_ELIMIT;
    size_t vbytes = n_values * sizeof(float);
    size_t head = (id ? 1 + varint_len(id) : 0) + (plen ? field_len(plen) : 0);
    size_t vhead = n_values ? 1 + varint_len(vbytes) : 0; /* the values' tag and length */
    /* At most: the widest dim varint, and its field's longest length prefix. */
    size_t most = PS_FRAME_HEADER + head + 1 + 5 + 1 + MAX_VARINT + vhead + vbytes;
    if (most - PS_FRAME_HEADER > UINT32_MAX)
        return PS_ELIMIT;
    int r = ps_buf_reserve(out, most);
    if (r < 0)
        return r;
    uint8_t *start = (uint8_t *)out->data + out->len;
    /* Each byte more of dim's varint moves the values one (or two, where
     * the field's length prefix grows) bytes on: five widths cover every
     * remainder. */
    size_t width = varint_len(dim), sub = 0, at = 0;
    for (; width <= MAX_VARINT; width++) {
        sub = 1 + width + vhead + vbytes;
        at = PS_FRAME_HEADER + head + 1 + varint_len(sub) + 1 + width + vhead;
        if (!n_values || (uintptr_t)(start + at) % _Alignof(float) == 0)
            break;
    }
    size_t len = at + vbytes;
    ps_frame_header(start, (uint32_t)(len - PS_FRAME_HEADER));
    uint8_t *p = start + PS_FRAME_HEADER;
    if (id) {
        *p++ = TAG(1, WT_VARINT);
        p = put_varint(p, id);
    }
    if (plen)
        p = put_bytes(p, TAG(5, WT_LEN), pending, plen);
    p = put_len(p, TAG(PS_WIRE_PULL, WT_LEN), sub);
    *p++ = TAG(1, WT_VARINT);
    p = put_varint_width(p, dim, width);
    if (n_values)
        p = put_len(p, TAG(2, WT_LEN), vbytes);
    *ret_values = (float *)(void *)p;
    *ret_len = len;
    return 0;
}

void ps_wire_pull_reply_finish(ps_buf *out, float *values, size_t n_values, size_t len) {
    if (!PS_WIRE_IN_PLACE) {
        uint32_t *w = (uint32_t *)(void *)values;
        for (size_t i = 0; i < n_values; i++)
            w[i] = __builtin_bswap32(w[i]);
    }
    out->len += len;
}
