#include "frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

#define READ_CHUNK (64u << 10)

void ps_frame_header(uint8_t *p, uint32_t len) {
    p[0] = (uint8_t)(len >> 24);
    p[1] = (uint8_t)(len >> 16);
    p[2] = (uint8_t)(len >> 8);
    p[3] = (uint8_t)len;
}

int ps_frame_append(ps_buf *out, const ProtobufCMessage *msg) {
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > UINT32_MAX)
        return PS_ELIMIT;
    int r = ps_buf_reserve(out, PS_FRAME_HEADER + n);
    if (r < 0)
        return r;
    uint8_t *p = (uint8_t *)out->data + out->len;
    ps_frame_header(p, (uint32_t)n);
    protobuf_c_message_pack(msg, p + PS_FRAME_HEADER);
    out->len += PS_FRAME_HEADER + n;
    return 0;
}

void ps_frame_reader_init(ps_frame_reader *r, uint32_t max_frame) {
    memset(r, 0, sizeof(*r));
    r->max_frame = max_frame;
}

void ps_frame_reader_deinit(ps_frame_reader *r) {
    free(r->buf);
    memset(r, 0, sizeof(*r));
}

static uint32_t peek_len(const ps_frame_reader *r) {
    const uint8_t *p = (const uint8_t *)r->buf + r->start;
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int ps_frame_reader_space(ps_frame_reader *r, char **ret_ptr, size_t *ret_len) {
    size_t have = r->end - r->start;
    size_t want = READ_CHUNK;
    if (have >= PS_FRAME_HEADER) {
        uint32_t len = peek_len(r);
        /* An oversized frame is refused by next(); never allocate for it. */
        if (len <= r->max_frame && PS_FRAME_HEADER + (size_t)len > have &&
            PS_FRAME_HEADER + (size_t)len - have > want)
            want = PS_FRAME_HEADER + (size_t)len - have;
    }
    if (r->cap - r->end < want) {
        /* Slide the unread bytes to the front before growing. */
        if (r->start > 0) {
            memmove(r->buf, r->buf + r->start, have);
            r->start = 0;
            r->end = have;
        }
        if (r->cap - r->end < want) {
            size_t cap = r->cap ? r->cap : READ_CHUNK;
            while (cap - r->end < want)
                cap *= 2;
            char *b = realloc(r->buf, cap);
            if (!b)
                return -ENOMEM;
            r->buf = b;
            r->cap = cap;
        }
    }
    *ret_ptr = r->buf + r->end;
    *ret_len = r->cap - r->end;
    return 0;
}

void ps_frame_reader_commit(ps_frame_reader *r, size_t n) { r->end += n; }

int ps_frame_reader_next(ps_frame_reader *r, const char **ret_frame, size_t *ret_len) {
    size_t have = r->end - r->start;
    if (have < PS_FRAME_HEADER)
        return 0;
    uint32_t len = peek_len(r);
    if (len > r->max_frame)
        return PS_ELIMIT;
    if (have < PS_FRAME_HEADER + (size_t)len)
        return 0;
    *ret_frame = r->buf + r->start + PS_FRAME_HEADER;
    *ret_len = len;
    r->start += PS_FRAME_HEADER + len;
    if (r->start == r->end)
        r->start = r->end = 0; /* the frame stays readable: the next read only reuses the space */
    return 1;
}

size_t ps_frame_reader_pending(const ps_frame_reader *r) { return r->end - r->start; }
