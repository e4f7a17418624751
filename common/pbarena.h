#pragma once
/* An arena for protobuf-c's unpack (issue 12): every allocation of one
 * decoded message is a bump in a chunk, its frees do nothing, and the whole
 * message goes at once with ps_pbarena_reset().
 *
 * protobuf-c's unpack allocates each element of a repeated bytes field on
 * its own: a move's IMPORT page of 4,096 rows is 4,096 mallocs on the
 * target's loop, and as many frees after it, a fifth of the page's time.
 * Here they cost a pointer bump. A reset keeps the newest chunk (each new
 * one is at least twice the one before, so it is the largest) when it is at
 * most `keep` bytes: a steady stream of like messages then lives in one
 * chunk, allocated once. */

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct ps_pbarena_chunk ps_pbarena_chunk;

typedef struct ps_pbarena {
    ProtobufCAllocator pb;       /* pass &a->pb to unpack (and to free_unpacked, a no-op) */
    ps_pbarena_chunk *chunks;    /* newest first */
    size_t used;                 /* bytes taken from the newest */
    size_t keep;
} ps_pbarena;

void ps_pbarena_init(ps_pbarena *a, size_t keep);
/* n bytes aligned for any type; NULL without memory. */
void *ps_pbarena_alloc(ps_pbarena *a, size_t n);
/* Forget everything allocated: the memory is handed out again. */
void ps_pbarena_reset(ps_pbarena *a);
/* Free every chunk; a can be initialized again. */
void ps_pbarena_deinit(ps_pbarena *a);
