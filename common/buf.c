#include "buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void ps_buf_init(ps_buf *b) { memset(b, 0, sizeof(*b)); }

void ps_buf_deinit(ps_buf *b) {
    free(b->data);
    memset(b, 0, sizeof(*b));
}

int ps_buf_reserve(ps_buf *b, size_t more) {
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d)
        return -ENOMEM;
    b->data = d;
    b->cap = cap;
    return 0;
}

char *ps_buf_take(ps_buf *b, size_t *ret_len) {
    char *d = b->data;
    *ret_len = b->len;
    memset(b, 0, sizeof(*b));
    return d;
}
