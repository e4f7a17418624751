#pragma once
/* Moving bucket ranges between shards (README "Resharding"), driven from a
 * client (ctrps-cli move, ctrps-cli reshard).
 *
 * A move of [lo, hi) from its owner S to shard T, the phases of
 * proto/ctrps.proto's MoveRequest:
 *   1. S starts recording the fids pushes change in the range (TRACK); T
 *      drops what an earlier, interrupted copy left;
 *   2. pages of S's stored rows of the range are copied into T's store
 *      while S goes on serving the range;
 *   3. catch-up rounds: the rows changed since the previous round, as they
 *      are now, until a round leaves few changes behind (or after 8);
 *      then the tables' admission filters (server/admit.h): the whole
 *      filters, then the counters raised since, until a round is small;
 *      T merges them into its own with max();
 *   4. S fences the range (stores the freeze durably, still serving it);
 *      S and T hold their write-backs; catch-up rounds until one leaves
 *      very few changes (rounds that do not shrink slow the range's
 *      pushes on S);
 *   5. S freezes the range (in memory): its pulls and pushes answer
 *      MOVING, and clients pause them; the last changes are copied, then
 *      every client's push sequence numbers for those buckets, and the
 *      filters' counters raised since their last round;
 *   6. the map of the next epoch, giving the range to T, is installed on
 *      T, then S (the commit point: the pause ends), then every other shard;
 *   7. S drops the range and thaws.
 * A restart of S before 6 loses its record of changes: the copy begins
 * again (with the range frozen if it was fenced). T stages the first pass
 * (step 2) in SST files and ingests them when the pass ends: a restart of
 * T before that loses them, and the copy begins again too. What T
 * acknowledged after the ingest is durable, and every call can be
 * repeated, so a later restart of T or of the mover is ridden out or
 * resumed by running the move again; or the move is rolled back by
 * ps_move_abort(). After 6, S finishes step 7 by
 * itself when it restarts. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client.h"
#include "cmap.h"

typedef struct ps_move_progress {
    uint32_t lo, hi, from, to;
    uint64_t rows;               /* copied so far, catch-up rounds included */
    uint64_t estimated_rows;     /* the source's estimate of the range's rows */
    uint32_t rounds;             /* catch-up rounds so far */
    uint32_t throttle;           /* pushes into the range slowed: level 1-3 (0: none), server/shard.h */
    uint32_t restarts;           /* copies begun again after the source or the target restarted */
    double t0, elapsed_s;        /* the copy's start (monotonic s) and its time so far */
    double commit_s;             /* when done: t0 to the new map on the source (the source's
                                  * drop of the range comes after, within elapsed_s) */
    double pause_s;              /* when done: freeze to the new map on the source, made of: */
    double freeze_s;             /*   the source's FREEZE (in memory: the fence stored it) */
    double last_round_s;         /*   the last changes copied with the range frozen, */
    uint64_t last_round_rows;    /*   this many rows */
    double map_s;                /*   the new map installed on the target, then the source */
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
 * shard `from`, then have every other shard forget a staged first pass
 * (how many had one: *ret_unstaged). */
int ps_move_abort(ps_client *c, uint32_t from, uint32_t *ret_unstaged, char *err, size_t errlen);
