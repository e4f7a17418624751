#pragma once
/* Sorting store keys (server/store.h: bucket then fid, big-endian) into
 * RocksDB's order, for the two places that hand RocksDB many keys at once:
 * a request's misses (one MultiGet) and a write-back batch (sorted puts keep
 * the memtable's skiplist inserts cheap).
 *
 * A least-significant-digit radix sort on (bucket, fid) as integers: qsort
 * with a memcmp comparator cost ~14 calls per key, and sorting a request's
 * new keys was the largest item of row creation after RocksDB itself
 * (bench/README.md). Stable; digits in which every key agrees are skipped
 * (fids of one slot share their high bits). */

#include <stddef.h>
#include <stdint.h>

/* The keys are the first PS_STORE_KEY_LEN bytes of n items `stride` bytes
 * apart from base. Writes into ret_order[0..n) the item indices in
 * ascending key order (equal keys keep their input order). n < 2^32.
 * Returns 0 or -ENOMEM (ret_order untouched). */
int ps_keysort(const void *base, size_t n, size_t stride, uint32_t *ret_order);
