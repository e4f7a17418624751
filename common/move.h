#pragma once
/* Moving bucket ranges between shards (README "Resharding"), driven from a
 * client (ctrps-cli move, ctrps-cli reshard).
 *
 * A move of [lo, hi) from its owner S to shard T, the phases of
 * proto/ctrps.proto's MoveRequest:
 *   1. S freezes the range (durably): its pulls and pushes answer MOVING,
 *      and clients pause them;
 *   2. pages of S's stored rows of the range are copied into T's store,
 *      then every client's push sequence numbers for those buckets;
 *   3. the map of the next epoch, giving the range to T, is installed on
 *      T, then S (the commit point), then every other shard;
 *   4. S drops the range and thaws.
 * Interrupted before 3 (a kill of S or T, or of the mover), the move is
 * resumed by running it again (every phase can be repeated) or rolled back
 * by ps_move_abort(); after 3, S finishes step 4 by itself when it
 * restarts. Limit: the range stays paused during the copy (no catch-up of
 * pushes applied during a copy): the pause lasts as long as the copy. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client.h"
#include "cmap.h"

typedef struct ps_move_progress {
    uint32_t lo, hi, from, to;
    uint64_t rows;               /* copied so far */
    double elapsed_s;
    bool done;
} ps_move_progress;

/* Called after every copied page and once when the move is done. */
typedef void (*ps_move_progress_fn)(void *ctx, const ps_move_progress *p);

/* The newest map held by shards 0..nshards-1 of the client's config. */
int ps_move_current_map(ps_client *c, uint32_t nshards, ps_cluster_map *ret_map, char *err,
                        size_t errlen);

/* Move [lo, hi), which one shard owns in *cur, to shard `to`; the new map
 * lists `shards` (nshards addresses, which must include every shard *cur
 * names, at the same index). On success *cur is the new map. */
int ps_move_range(ps_client *c, ps_cluster_map *cur, uint32_t lo, uint32_t hi, uint32_t to,
                  char *const *shards, size_t nshards, ps_move_progress_fn fn, void *ctx,
                  char *err, size_t errlen);

/* Move every bucket of [lo, hi) that `to` does not own yet, owner run by
 * owner run. */
int ps_move_buckets(ps_client *c, ps_cluster_map *cur, uint32_t lo, uint32_t hi, uint32_t to,
                    char *const *shards, size_t nshards, ps_move_progress_fn fn, void *ctx,
                    char *err, size_t errlen);

/* Move the cluster to the even split of cur's buckets over the first
 * `ntarget` of `shards` (the new shard set: shards[i] must be cur's shard
 * i where both list one), range by range. */
int ps_move_reshard(ps_client *c, ps_cluster_map *cur, char *const *shards, size_t nshards,
                    uint32_t ntarget, ps_move_progress_fn fn, void *ctx, char *err, size_t errlen);

/* Give up a move that did not reach its map change: thaw the range on
 * shard `from`. */
int ps_move_abort(ps_client *c, uint32_t from, char *err, size_t errlen);
