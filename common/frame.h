#pragma once
/* Wire framing: a 4-byte big-endian length, then one protobuf message
 * (DESIGN.md "Wire protocol"). The reader accumulates bytes from a stream
 * and yields whole frames; the writer appends encoded frames to a buffer.
 * No sockets here: the server's and the client's network layers feed them. */

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define PS_FRAME_HEADER 4

/* The 4-byte header of a frame whose payload is len bytes, at p. */
void ps_frame_header(uint8_t *p, uint32_t len);
/* Append one frame holding msg. */
int ps_frame_append(ps_buf *out, const ProtobufCMessage *msg);

typedef struct ps_frame_reader {
    char *buf;                   /* owned */
    size_t start, end, cap;
    uint32_t max_frame;
} ps_frame_reader;

void ps_frame_reader_init(ps_frame_reader *r, uint32_t max_frame);
void ps_frame_reader_deinit(ps_frame_reader *r);
/* Writable space for the next read (at least 64 KiB, or the rest of a frame
 * whose length is known, so a large frame is read straight into place). */
int ps_frame_reader_space(ps_frame_reader *r, char **ret_ptr, size_t *ret_len);
void ps_frame_reader_commit(ps_frame_reader *r, size_t n);
/* 1 and the next whole frame's payload (borrowed until the next call), 0 if
 * no whole frame is buffered yet, PS_ELIMIT if the announced length exceeds
 * max_frame: the stream cannot be resynchronised, so close it. */
int ps_frame_reader_next(ps_frame_reader *r, const char **ret_frame, size_t *ret_len);
/* Bytes buffered but not yet returned as frames. */
size_t ps_frame_reader_pending(const ps_frame_reader *r);
