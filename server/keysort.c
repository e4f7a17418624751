/* See keysort.h. Keys are unpacked once into 16-byte entries (fid, bucket,
 * index) so that the passes stream through a dense array instead of
 * chasing the items; 10 byte-wide passes at most, fewer for digits all keys
 * share. Short inputs take an insertion sort: a 256-bin pass costs more
 * than sorting a few dozen keys directly. */

#include "keysort.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

typedef struct ent {
    uint64_t fid;
    uint32_t bucket;
    uint32_t idx;
} ent;

enum { DIGITS = 10, SMALL = 48 };

static inline unsigned digit(const ent *e, int d) {
    return d < 8 ? (unsigned)(e->fid >> (8 * d)) & 0xff : (e->bucket >> (8 * (d - 8))) & 0xff;
}

static inline bool ent_less(const ent *a, const ent *b) {
    return a->bucket != b->bucket ? a->bucket < b->bucket : a->fid < b->fid;
}

static void insertion_sort(ent *a, size_t n) {
    for (size_t i = 1; i < n; i++) {
        ent x = a[i];
        size_t j = i;
        for (; j > 0 && ent_less(&x, &a[j - 1]); j--)
            a[j] = a[j - 1];
        a[j] = x;
    }
}

int ps_keysort(const void *base, size_t n, size_t stride, uint32_t *ret_order) {
    if (n == 0)
        return 0;
    ent *a = malloc(n * sizeof(ent));
    ent *b = n > SMALL ? malloc(n * sizeof(ent)) : NULL;
    if (!a || (n > SMALL && !b)) {
        free(a);
        free(b);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const uint8_t *k = (const uint8_t *)base + i * stride;
        a[i].bucket = ps_store_key_bucket(k);
        a[i].fid = ps_store_key_fid(k);
        a[i].idx = (uint32_t)i;
    }
    if (n <= SMALL) {
        insertion_sort(a, n);
    } else {
        _Static_assert(DIGITS == PS_STORE_KEY_LEN, "one pass per key byte");
        size_t (*hist)[256] = calloc(DIGITS, sizeof(*hist));
        if (!hist) {
            free(a);
            free(b);
            return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++)
            for (int d = 0; d < DIGITS; d++)
                hist[d][digit(&a[i], d)]++;
        for (int d = 0; d < DIGITS; d++) {
            size_t *h = hist[d];
            if (h[digit(&a[0], d)] == n)
                continue; /* every key has this digit: the pass would change nothing */
            size_t sum = 0;
            for (int v = 0; v < 256; v++) {
                size_t c = h[v];
                h[v] = sum;
                sum += c;
            }
            for (size_t i = 0; i < n; i++)
                b[h[digit(&a[i], d)]++] = a[i];
            ent *t = a;
            a = b;
            b = t;
        }
        free(hist);
    }
    for (size_t i = 0; i < n; i++)
        ret_order[i] = a[i].idx;
    free(a);
    free(b);
    return 0;
}
