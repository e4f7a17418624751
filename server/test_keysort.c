/* ps_keysort against qsort with memcmp, the order RocksDB uses. */

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "keysort.h"
#include "store.h"

typedef struct item {
    ps_store_key k;
    uint32_t seq;                /* input position, to check stability */
} item;

static int cmp_item(const void *a, const void *b) {
    const item *x = a, *y = b;
    int c = memcmp(x->k.b, y->k.b, PS_STORE_KEY_LEN);
    return c ? c : (x->seq > y->seq) - (x->seq < y->seq);
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* n keys: buckets below nbuckets, fids with the high bits `hi` and `vbits`
 * random low bits (few bits: many duplicates). */
static void check(size_t n, uint32_t nbuckets, uint64_t hi, int vbits) {
    item *it = malloc((n + 1) * sizeof(item));
    item *want = malloc((n + 1) * sizeof(item));
    uint32_t *order = malloc((n + 1) * sizeof(uint32_t));
    for (size_t i = 0; i < n; i++) {
        uint64_t v = vbits == 64 ? next_rand() : next_rand() & ((1ull << vbits) - 1);
        ps_store_key_encode((uint16_t)(next_rand() % nbuckets), hi | v, &it[i].k);
        it[i].seq = (uint32_t)i;
    }
    memcpy(want, it, n * sizeof(item));
    qsort(want, n, sizeof(item), cmp_item);
    cr_assert_eq(ps_keysort(it, n, sizeof(item), order), 0);
    for (size_t i = 0; i < n; i++) {
        const item *got = &it[order[i]];
        cr_assert(memcmp(got->k.b, want[i].k.b, PS_STORE_KEY_LEN) == 0, "n=%zu: key %zu out of order", n, i);
        cr_assert_eq(got->seq, want[i].seq, "n=%zu: equal keys reordered at %zu", n, i);
    }
    free(it);
    free(want);
    free(order);
}

Test(keysort, matches_memcmp_order_small) {
    for (size_t n = 0; n <= 100; n++)
        check(n, 1024, 0, 64);
}

Test(keysort, matches_memcmp_order_large) {
    check(20000, 65536, 0, 64);
    check(20000, 1024, 0x0123000000000000ull, 40); /* shared high bytes: skipped digits */
    check(20000, 1, 0, 64);                         /* one bucket */
}

Test(keysort, stable_on_duplicates) {
    check(5000, 3, 0xff00000000000000ull, 4);
    check(40, 2, 0, 2);
}
