#include "keyset.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static inline size_t home(uint64_t key, size_t cap) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t)key & (cap - 1);
}

static void put(uint64_t *slots, size_t cap, uint64_t key) {
    size_t i = home(key, cap);
    while (slots[i] && slots[i] != key)
        i = (i + 1) & (cap - 1);
    slots[i] = key;
}

static int grow(ps_keyset *s) {
    size_t cap = s->cap ? 2 * s->cap : 1024;
    uint64_t *slots = calloc(cap, sizeof(uint64_t));
    if (!slots)
        return -ENOMEM;
    for (size_t i = 0; i < s->cap; i++)
        if (s->slots[i])
            put(slots, cap, s->slots[i]);
    free(s->slots);
    s->slots = slots;
    s->cap = cap;
    return 0;
}

int ps_keyset_add(ps_keyset *s, uint64_t key) {
    if (key == 0) {
        s->has_zero = 1;
        return 0;
    }
    if (2 * (s->n + 1) > s->cap) {
        int r = grow(s);
        if (r < 0)
            return r;
    }
    size_t i = home(key, s->cap);
    while (s->slots[i]) {
        if (s->slots[i] == key)
            return 0;
        i = (i + 1) & (s->cap - 1);
    }
    s->slots[i] = key;
    s->n++;
    return 0;
}

size_t ps_keyset_size(const ps_keyset *s) { return s->n + (s->has_zero ? 1 : 0); }

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int64_t ps_keyset_take_sorted(ps_keyset *s, uint64_t **ret_keys) {
    size_t n = ps_keyset_size(s);
    if (n == 0) {
        *ret_keys = NULL;
        return 0;
    }
    uint64_t *keys = malloc(n * sizeof(uint64_t));
    if (!keys)
        return -ENOMEM;
    size_t m = 0;
    if (s->has_zero)
        keys[m++] = 0;
    for (size_t i = 0; i < s->cap; i++)
        if (s->slots[i])
            keys[m++] = s->slots[i];
    qsort(keys, m, sizeof(uint64_t), cmp_u64);
    ps_keyset_clear(s);
    *ret_keys = keys;
    return (int64_t)m;
}

void ps_keyset_clear(ps_keyset *s) {
    free(s->slots);
    memset(s, 0, sizeof(*s));
}
