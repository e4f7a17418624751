#pragma once
/* Growable byte buffer: replies and frames are built in one, metrics text
 * too. No protocol here (common/frame.h writes frames into it). */

#include <stddef.h>

typedef struct ps_buf {
    char *data;                  /* owned */
    size_t len, cap;
} ps_buf;

void ps_buf_init(ps_buf *b);
void ps_buf_deinit(ps_buf *b);
/* Room for `more` bytes after len; -ENOMEM leaves b as it was. */
int ps_buf_reserve(ps_buf *b, size_t more);
/* Hand the bytes to the caller (who frees them) and leave b empty. */
char *ps_buf_take(ps_buf *b, size_t *ret_len);
