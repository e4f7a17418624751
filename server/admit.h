#pragma once
/* Feature admission for one table (KDD'13 "Ad Click Prediction" §4.1;
 * DESIGN.md "Feature lifecycle"): whether a push may create the row of a key
 * the table does not hold.
 *
 * Two rules, either or both:
 *  - admit_after = N >= 2: a counting Bloom filter counts the pushes of keys
 *    not in the table; a key passes on its N-th. 4-bit saturating counters
 *    (N <= 15), k = 4 positions per key, conservative update (only the
 *    positions holding the minimum are incremented, which keeps a key's
 *    count from being inflated by keys that share some of its counters);
 *    the estimate is the minimum over the k counters. It can only be too
 *    high (a false positive admits a key early), never too low.
 *  - admit_probability = P < 1: Poisson inclusion; each push of a key not in
 *    the table (that passed the filter, when there is one) admits it with
 *    probability P.
 * Only pushes count, not pulls: pushes are what the push log replays, so
 * replay rebuilds the filter exactly; and only pushes of keys not in the
 * table, so the keys already in the table do not fill the filter.
 *
 * Determinism. A decision is a function of (table seed, fid, the filter's
 * counters, the trial number), where the trial number counts every decision
 * the table ever took. All of that is state saved with each write-back
 * (ps_admit_save() into the batch that records the push-log position), so
 * replaying the log after that position, or resuming from a checkpoint,
 * takes the same decisions.
 *
 * Forgetting. Without decay the filter would fill up over days of a stream
 * and admit everything. When a quarter of the counters are non-zero, every
 * counter is halved (a deterministic event in the push stream). So a key
 * must reach N pushes within roughly the time it takes the stream to bring
 * m*ln(4/3)/k ~ 0.07*m new keys. The false-positive rate for N = 2 (a new
 * key finding all k counters non-zero) is at most (1/4)^4 = 0.4% just before
 * a halving, and far less after it; for larger N it is smaller still. Size
 * admit_bloom_bits (the number of counters, m) to about 15x the distinct new
 * keys a key may take to recur.
 *
 * A request's decisions are staged: begin(), decide() per occurrence in
 * order (each sees the occurrences before it), then commit() or abort().
 * Nothing changes the filter before commit(), so a push that fails later
 * (no room in the memory tier) leaves it as it was.
 *
 * Not thread-safe: the shard's loop thread owns it. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct ps_admit ps_admit;

/* *ret_admit is NULL when the table admits every key (admit_probability 1,
 * admit_after <= 1). Free with ps_admit_free(). */
int ps_admit_new(const ps_table_config *cfg, ps_admit **ret_admit);
void ps_admit_free(ps_admit *a);

void ps_admit_begin(ps_admit *a);
/* One push of fid, a key the table does not hold. */
int ps_admit_decide(ps_admit *a, uint64_t fid, bool *ret_admit);
void ps_admit_commit(ps_admit *a);
void ps_admit_abort(ps_admit *a);

/* Persistence: a header record (id PS_ADMIT_HEADER) and the filter's
 * counters in blocks of PS_ADMIT_BLOCK bytes (ids 0..). save() passes the
 * header and every block changed since the previous save to put(); `data` is
 * borrowed for the call. A block never saved is all zeros. To load, pass the
 * header first: PS_ECONFIG means it was saved with other parameters (or is
 * corrupt), and then the filter starts empty and its next save overwrites
 * every block. */
#define PS_ADMIT_HEADER UINT32_MAX
#define PS_ADMIT_BLOCK 4096
typedef void (*ps_admit_put_fn)(void *ctx, uint32_t id, const void *data, size_t len);
void ps_admit_save(ps_admit *a, ps_admit_put_fn put, void *ctx);
int ps_admit_load_header(ps_admit *a, const void *data, size_t len);
int ps_admit_load_block(ps_admit *a, uint32_t id, const void *data, size_t len);

/* Moving with a bucket range (README "Resharding"). A Bloom filter cannot
 * be split by key range, so the source S sends its whole filter and the
 * target T merges it into its own, counter by counter with max():
 *  - for every key of the moved range, T's estimate (a minimum over its k
 *    counters) is then >= S's: the error stays one-sided (too high);
 *  - the keys of T's other ranges may see estimates raised: a false
 *    positive of the same kind, bounded by S's fill (at most a quarter of
 *    the counters are non-zero);
 *  - max() is idempotent and commutative: a page merged twice (a copy
 *    begun again, a resent page) changes nothing more;
 *  - T keeps its own trial number and halvings; a merge that leaves a
 *    quarter of T's counters non-zero has T's next commit halve them, as
 *    the arrival of that many new keys would.
 * The source side: send_begin() (the copy begins), then rounds.
 * send_round() takes the first round, a copy of every block, or a later
 * one, the counters raised since the round before (a halving raises none)
 * with their values now; send_pending() counts those raised since the
 * current round began. send_page() fills *ret with the round's next page
 * of at most about max_bytes (at least one block or counter), borrowed
 * until the next send_round() or send_end(); *offset (0 at a round's
 * start) moves past it; true once the round is done. A round can be paged
 * again until the next send_round(). So once the last round, taken after
 * the range froze, is merged, every counter of T is >= S's at that moment.
 * send_round() fails (-ENOMEM) if a raise could not be recorded: the
 * sending must begin again. send_end() frees it all.
 * The target side: merge_check() first (PS_ECONFIG: no filter here, or one
 * of another layout, i.e. another admit_bloom_bits or seed; PS_EPARSE: a
 * block beyond the filter or of another length, a counter beyond it or
 * above 15), then merge(). Merged counters are written back at the next
 * save. */
typedef struct ps_admit_page {
    const void *header;          /* the filter's layout, a record as save() puts it */
    size_t header_len;
    size_t nblocks;              /* a first round's whole blocks */
    const uint32_t *block_ids;
    const void *const *blocks;
    const size_t *block_lens;    /* PS_ADMIT_BLOCK each */
    size_t ncounters;            /* a later round's single counters */
    const uint64_t *counter_ids;
    const uint8_t *counter_values;
} ps_admit_page;
int ps_admit_send_begin(ps_admit *a);
int ps_admit_send_round(ps_admit *a);
uint64_t ps_admit_send_pending(const ps_admit *a);
bool ps_admit_send_page(const ps_admit *a, uint64_t *offset, size_t max_bytes,
                        ps_admit_page *ret);
void ps_admit_send_end(ps_admit *a);
int ps_admit_merge_check(const ps_admit *a, const ps_admit_page *p);
void ps_admit_merge(ps_admit *a, const ps_admit_page *p);

typedef struct ps_admit_stats {
    uint64_t counters;           /* m */
    uint64_t nonzero;            /* counters > 0 */
    uint64_t trials;             /* decisions taken */
    uint64_t halvings;
} ps_admit_stats;
void ps_admit_stats_get(const ps_admit *a, ps_admit_stats *ret);
