#pragma once
/* Pull and Push on the wire without protobuf-c's copies (issue 10).
 *
 * protobuf-c's unpack allocates and copies every packed array of a message
 * and its pack copies them again into the frame: for 10,000 dim-16 rows
 * that is 640 KiB per copy, on the two cores the shard and its client
 * share. This module reads and writes exactly the messages of the hot path
 * (proto/ctrps.proto: Request with a PullRequest or PushRequest, Response
 * with a PullResponse) in place:
 *
 *   - ps_wire_keyed_decode() points into a received Request frame. It takes
 *     only what it can read exactly as protobuf-c would (each array once,
 *     packed, as every encoder writes them) and says 0 to anything else,
 *     well-formed or not: the caller hands those to protobuf-c, so every
 *     refusal and every oddity of the format keeps its old outcome.
 *   - ps_wire_keyed_len() / ps_wire_keyed_write() write a Pull or Push
 *     Request byte for byte as protobuf-c packs it, the gradients optionally
 *     left for the caller to gather straight into the frame.
 *   - ps_wire_pull_reply_reserve() lays out a Pull Response frame whose
 *     values the caller writes in place (the shard's table copies its rows
 *     there); ps_wire_pull_reply_decode() finds them in a received one.
 *
 * Arrays in frames are little-endian (the protobuf wire format); on a
 * big-endian host (PS_WIRE_IN_PLACE is 0) the decoders say 0, the client
 * packs with protobuf-c, and the Pull reply's floats are put in wire order
 * by ps_wire_pull_reply_finish(). Pointers into a frame are byte pointers: a
 * packed array sits at any offset, so reading it as uint64_t or float needs
 * memcpy, or a check of its alignment. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define PS_WIRE_IN_PLACE (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)

/* Request.method's field numbers for the two methods decoded here. */
#define PS_WIRE_PULL 11
#define PS_WIRE_PUSH 12

/* A Pull or Push request. Decoded: every pointer is borrowed from the frame
 * (until the frame's buffer changes), table is not NUL-terminated. To
 * write: borrowed from the caller for the call. */
typedef struct ps_wire_keyed {
    uint64_t id;
    int method;                  /* PS_WIRE_PULL or PS_WIRE_PUSH */
    const uint8_t *table;
    size_t table_len;
    const uint8_t *keys;         /* n_keys fixed64, little-endian; NULL if absent */
    size_t n_keys;
    const uint8_t *grads;        /* push: n_grads floats, little-endian; NULL if absent */
    size_t n_grads;
    uint64_t client_id, seq;     /* push */
} ps_wire_keyed;

/* 1 and *ret filled if the Request frame (len bytes) is a Pull or Push this
 * module reads exactly as protobuf-c does; 0 otherwise (another method, an
 * array sent twice or unpacked, a malformed field, ...): decode it with
 * protobuf-c. Fields unknown to the messages are skipped. */
int ps_wire_keyed_decode(const uint8_t *frame, size_t len, ps_wire_keyed *ret);

/* Payload bytes of k as a Request (the frame header not included). */
size_t ps_wire_keyed_len(const ps_wire_keyed *k);
/* Write k as protobuf-c packs it at dst (ps_wire_keyed_len(k) bytes). With
 * k->grads NULL and k->n_grads > 0 the gradients' bytes are left for the
 * caller: *ret_grads says where (any alignment). Returns dst's end. */
uint8_t *ps_wire_keyed_write(const ps_wire_keyed *k, uint8_t *dst, uint8_t **ret_grads);

/* Reserve in out a whole frame: a Response to request id carrying
 * checkpoint_pending (NULL or "" for none) and a PullResponse of dim and
 * n_values floats, all written but the floats. *ret_values is where they
 * go, aligned for float (the dim field's varint is padded with
 * continuation bytes for that: valid protobuf, read by every decoder).
 * out->len is left alone: once the values are in, ps_wire_pull_reply_finish()
 * adds the frame to out; or leave it, to drop the frame. -ENOMEM, or
 * PS_ELIMIT over 4 GiB. */
int ps_wire_pull_reply_reserve(ps_buf *out, uint64_t id, const char *pending, uint32_t dim,
                               size_t n_values, float **ret_values, size_t *ret_len);
/* The values (n_values, from the reserve) in wire order, and the frame of
 * len bytes counted in out. */
void ps_wire_pull_reply_finish(ps_buf *out, float *values, size_t n_values, size_t len);

/* A Pull Response with status OK, as found in a received frame: pointers
 * borrowed from it. */
typedef struct ps_wire_pull_reply {
    uint64_t id;
    uint32_t dim;
    const uint8_t *values;       /* n_values floats, little-endian; NULL if absent */
    size_t n_values;
    const uint8_t *pending;      /* checkpoint_pending, not NUL-terminated; NULL if none */
    size_t pending_len;
} ps_wire_pull_reply;

/* 1 and *ret filled if the Response frame is an OK answer carrying a
 * PullResponse that this module reads exactly as protobuf-c does; 0
 * otherwise (errors, other results, anything unusual): decode it with
 * protobuf-c. */
int ps_wire_pull_reply_decode(const uint8_t *frame, size_t len, ps_wire_pull_reply *ret);
