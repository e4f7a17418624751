#pragma once
/* A set of 64-bit keys: open addressing with linear probing, grown by
 * doubling at a load of 1/2. The shard records in one the fids a push
 * changed in a bucket range that is being copied to another shard, so that
 * the copy can catch up on them (README "Resharding"): adding is O(1) on
 * the push path, and the set holds each key once however often it is
 * pushed. */

#include <stddef.h>
#include <stdint.h>

typedef struct ps_keyset {
    uint64_t *slots;             /* 0 = empty; key 0 is kept in has_zero */
    size_t cap, n;               /* cap: a power of two, or 0 */
    int has_zero;
} ps_keyset;

/* Returns 0 or -ENOMEM (the set is unchanged then). */
int ps_keyset_add(ps_keyset *s, uint64_t key);
size_t ps_keyset_size(const ps_keyset *s);
/* The keys, sorted ascending, into a malloc'ed array the caller frees
 * (NULL when empty); the set is left empty. Returns the count, or
 * -ENOMEM with the set unchanged. */
int64_t ps_keyset_take_sorted(ps_keyset *s, uint64_t **ret_keys);
void ps_keyset_clear(ps_keyset *s);
