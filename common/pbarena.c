#include "pbarena.h"

#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>

struct ps_pbarena_chunk {
    ps_pbarena_chunk *next;
    size_t cap;
    alignas(max_align_t) unsigned char data[];
};

#define CHUNK_MIN (64u << 10)
#define ALIGN alignof(max_align_t)

static void *pb_alloc(void *ctx, size_t n) { return ps_pbarena_alloc(ctx, n); }

static void pb_free(void *ctx, void *p) {
    (void)ctx;
    (void)p;
}

void ps_pbarena_init(ps_pbarena *a, size_t keep) {
    *a = (ps_pbarena){.pb = {.alloc = pb_alloc, .free = pb_free, .allocator_data = a},
                      .keep = keep};
}

void *ps_pbarena_alloc(ps_pbarena *a, size_t n) {
    if (n > SIZE_MAX - ALIGN)
        return NULL;
    n = (n + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    ps_pbarena_chunk *c = a->chunks;
    if (!c || c->cap - a->used < n) {
        size_t cap = c && c->cap <= SIZE_MAX / 2 ? 2 * c->cap : CHUNK_MIN;
        if (cap < n)
            cap = n;
        if (cap > SIZE_MAX - sizeof(*c))
            return NULL;
        ps_pbarena_chunk *nc = malloc(sizeof(*nc) + cap);
        if (!nc)
            return NULL;
        nc->next = c;
        nc->cap = cap;
        a->chunks = c = nc;
        a->used = 0;
    }
    void *p = c->data + a->used;
    a->used += n;
    return p;
}

void ps_pbarena_reset(ps_pbarena *a) {
    ps_pbarena_chunk *c = a->chunks;
    if (!c)
        return;
    ps_pbarena_chunk *rest = c->next;
    if (c->cap > a->keep) {
        rest = c;
        a->chunks = NULL;
    } else {
        c->next = NULL;
    }
    while (rest) {
        ps_pbarena_chunk *next = rest->next;
        free(rest);
        rest = next;
    }
    a->used = 0;
}

void ps_pbarena_deinit(ps_pbarena *a) {
    a->keep = 0;
    ps_pbarena_reset(a);
}
