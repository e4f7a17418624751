#pragma once
/* The cluster map: which shard owns each bucket, the shards' addresses, and
 * an epoch (the map version) that only grows (DESIGN.md "Keys, buckets and
 * routing"; README "Resharding").
 *
 * Every shard stores the map it serves durably (server/shard.c, meta key
 * "cluster_map", written with fsync) and answers a request for a bucket it
 * does not own with WRONG_SHARD and its epoch; a client whose map is older
 * fetches the shard's map and resends (common/client.c). The first map of a
 * cluster is the even split of the config's `[cluster] buckets` over its
 * `shards`, at epoch `map_version`.
 *
 * The encoding (ps_cluster_map_encode) is this module's own, versioned by
 * its first byte: the store must not depend on protobuf (STYLE.md). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "keys.h"

typedef struct ps_cluster_map {
    uint64_t version;            /* the epoch */
    uint32_t buckets;
    char **shards;               /* owned, nshards "host:port", index = shard id */
    size_t nshards;
    uint32_t *owner;             /* owned, buckets: owner[bucket] = shard id */
} ps_cluster_map;

/* The even split of the config's buckets over its shards, at its
 * map_version. */
int ps_cluster_map_from_config(const ps_config *cfg, ps_cluster_map *ret_map);
/* An even split of `buckets` over the given shards at `version`
 * (ps_bucket_owner's contiguous ranges). Addresses are copied. */
int ps_cluster_map_even(uint64_t version, uint32_t buckets, char *const *shards, size_t nshards,
                        ps_cluster_map *ret_map);
int ps_cluster_map_copy(const ps_cluster_map *m, ps_cluster_map *ret_map);
/* Accepts a zeroed map. */
void ps_cluster_map_deinit(ps_cluster_map *m);

/* A map every owner of which names a listed shard; err says what is wrong. */
int ps_cluster_map_check(const ps_cluster_map *m, char *err, size_t errlen);
/* Whether two maps assign every bucket and address alike (epochs aside). */
bool ps_cluster_map_same_layout(const ps_cluster_map *a, const ps_cluster_map *b);

/* Serialise; *ret_buf is malloc'ed (caller frees). */
int ps_cluster_map_encode(const ps_cluster_map *m, char **ret_buf, size_t *ret_len);
/* Parse what ps_cluster_map_encode wrote; PS_EPROTO when it is not that. */
int ps_cluster_map_decode(const void *buf, size_t len, ps_cluster_map *ret_map);

static inline uint32_t ps_cluster_map_key_owner(const ps_cluster_map *m, uint64_t fid) {
    return m->owner[ps_bucket(fid, m->buckets)];
}
