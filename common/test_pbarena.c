/* Tests for the protobuf-c arena (common/pbarena.h): a message decoded
 * through it reads as one decoded with malloc, every allocation is aligned,
 * and a reset hands the same memory out again (one chunk for a steady
 * stream of like messages) unless the chunk is larger than it keeps. */

#include <criterion/criterion.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ctrps.pb-c.h"
#include "pbarena.h"

#define ROWS 5000

/* An IMPORT of ROWS rows of distinct values, one bytes field each: the
 * form that costs protobuf-c an allocation per row. */
static uint8_t *import_frame(size_t *ret_len) {
    static uint64_t keys[ROWS];
    static uint8_t vals[ROWS][24];
    static ProtobufCBinaryData v[ROWS];
    for (size_t i = 0; i < ROWS; i++) {
        keys[i] = i * 7;
        memset(vals[i], (int)(i % 251), sizeof(vals[i]));
        v[i] = (ProtobufCBinaryData){sizeof(vals[i]), vals[i]};
    }
    Ctrps__MoveRows rows = CTRPS__MOVE_ROWS__INIT;
    rows.table = "emb";
    rows.n_keys = rows.n_values = ROWS;
    rows.keys = keys;
    rows.values = v;
    Ctrps__MoveRequest m = CTRPS__MOVE_REQUEST__INIT;
    m.phase = CTRPS__MOVE_REQUEST__PHASE__IMPORT;
    m.rows = &rows;
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_MOVE;
    req.move = &m;
    *ret_len = ctrps__request__get_packed_size(&req);
    uint8_t *buf = malloc(*ret_len);
    cr_assert_not_null(buf);
    ctrps__request__pack(&req, buf);
    return buf;
}

static void check_import(const Ctrps__Request *req) {
    cr_assert_not_null(req);
    const Ctrps__MoveRows *rows = req->move->rows;
    cr_assert_str_eq(rows->table, "emb");
    cr_assert_eq(rows->n_keys, ROWS);
    cr_assert_eq(rows->n_values, ROWS);
    for (size_t i = 0; i < ROWS; i++) {
        cr_assert_eq(rows->keys[i], i * 7);
        cr_assert_eq(rows->values[i].len, 24);
        for (size_t j = 0; j < 24; j++)
            cr_assert_eq(rows->values[i].data[j], i % 251, "row %zu byte %zu", i, j);
    }
}

Test(pbarena, a_message_decoded_in_the_arena_reads_as_with_malloc) {
    size_t len;
    uint8_t *buf = import_frame(&len);
    ps_pbarena a;
    ps_pbarena_init(&a, 8u << 20);
    Ctrps__Request *req = ctrps__request__unpack(&a.pb, len, buf);
    check_import(req);
    ctrps__request__free_unpacked(req, &a.pb); /* allowed, and frees nothing */
    check_import(req);
    /* A malformed frame fails as without the arena. */
    cr_assert_null(ctrps__request__unpack(&a.pb, len - 1, buf));
    ps_pbarena_deinit(&a);
    free(buf);
}

Test(pbarena, allocations_are_aligned_and_apart) {
    ps_pbarena a;
    ps_pbarena_init(&a, 1u << 20);
    char *prev = NULL;
    for (size_t n = 1; n < 3000; n += 7) {
        char *p = ps_pbarena_alloc(&a, n);
        cr_assert_not_null(p);
        cr_assert_eq((uintptr_t)p % alignof(max_align_t), 0, "%zu bytes at %p", n, (void *)p);
        memset(p, 0xab, n); /* ASan: all of it is ours */
        cr_assert(p != prev);
        prev = p;
    }
    cr_assert_not_null(ps_pbarena_alloc(&a, 5u << 20), "larger than any chunk so far");
    cr_assert_not_null(ps_pbarena_alloc(&a, 0));
    cr_assert_null(ps_pbarena_alloc(&a, SIZE_MAX - 4));
    ps_pbarena_deinit(&a);
}

Test(pbarena, a_reset_hands_the_newest_chunk_out_again_up_to_keep) {
    size_t len;
    uint8_t *buf = import_frame(&len);
    ps_pbarena a;
    ps_pbarena_init(&a, 8u << 20);
    check_import(ctrps__request__unpack(&a.pb, len, buf));
    ps_pbarena_reset(&a);
    /* The second message fits the chunk the first one grew: one chunk. */
    Ctrps__Request *req = ctrps__request__unpack(&a.pb, len, buf);
    check_import(req);
    cr_assert_not_null(a.chunks);
    void *first = ps_pbarena_alloc(&a, 1);
    ps_pbarena_reset(&a);
    cr_assert_eq(ps_pbarena_alloc(&a, 1) != first, true, "memory after the message's");
    ps_pbarena_reset(&a);
    void *again = ps_pbarena_alloc(&a, 1);
    ps_pbarena_reset(&a);
    cr_assert_eq(ps_pbarena_alloc(&a, 1), again, "a reset hands out the same memory");
    ps_pbarena_deinit(&a);
    /* Kept nothing: a chunk over `keep` goes at the reset. */
    ps_pbarena_init(&a, 1024);
    check_import(ctrps__request__unpack(&a.pb, len, buf));
    ps_pbarena_reset(&a);
    cr_assert_null(a.chunks);
    ps_pbarena_deinit(&a);
    free(buf);
}
