#pragma once
/* Feature ids and buckets (DESIGN.md "Keys, buckets and routing").
 *
 * fid = slot id in the top 16 bits | XXH3-64 of the raw value in the low 48.
 * Every client hashes identically, so `ctrps-cli lookup --slot C3 --value x`
 * finds the row the worker trained. A slot id is derived from the slot's name
 * (the low 16 bits of its XXH3), so it is stable when slots are added to or
 * removed from a config; config loading rejects two slots whose ids collide.
 *
 * bucket = mix(fid) % nbuckets, where mix is a 64-bit finalizer: the low bits
 * of an fid are already uniform, but the mix keeps bucket choice independent
 * of the in-memory hash index, which uses other bits of the same mix. */

#include <stddef.h>
#include <stdint.h>

#define PS_FID_VALUE_BITS 48
#define PS_FID_VALUE_MASK ((UINT64_C(1) << PS_FID_VALUE_BITS) - 1)

uint16_t ps_slot_id(const char *name);
uint64_t ps_fid(uint16_t slot_id, const char *value, size_t len);

static inline uint16_t ps_fid_slot(uint64_t fid) { return (uint16_t)(fid >> PS_FID_VALUE_BITS); }

/* splitmix64's finalizer: a bijection with good avalanche. */
static inline uint64_t ps_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return x;
}

static inline uint32_t ps_bucket(uint64_t fid, uint32_t nbuckets) {
    return (uint32_t)(ps_mix64(fid) % nbuckets);
}

/* Bucket owner under the cluster map: contiguous ranges of buckets, so each
 * shard's rows are a few key ranges in its store and a future resharding
 * moves whole ranges. */
static inline uint32_t ps_bucket_owner(uint32_t bucket, uint32_t nbuckets, uint32_t nshards) {
    return (uint32_t)(((uint64_t)bucket * nshards) / nbuckets);
}

static inline uint32_t ps_key_owner(uint64_t fid, uint32_t nbuckets, uint32_t nshards) {
    return ps_bucket_owner(ps_bucket(fid, nbuckets), nbuckets, nshards);
}

/* Home shard of a dense parameter block: chosen by hashing its name
 * (DESIGN.md "The shard"). */
uint32_t ps_dense_home(const char *name, uint32_t nshards);
