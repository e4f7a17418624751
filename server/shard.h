#pragma once
/* One shard: its tables, their RocksDB store, the push log, write-back and
 * the exactly-once bookkeeping. Knows nothing of sockets or protobuf: the RPC
 * handlers (server/service.c) translate requests into these calls.
 *
 * Threads. Every function here runs on the owner's loop thread, except that
 * the shard runs one write-back thread of its own which writes batches to
 * RocksDB (and, with fsync = everysec, syncs the push log once a second).
 * When a batch is done that thread calls the `notify` callback, after which
 * the owner calls ps_shard_tick() on its loop thread. With durability = sync
 * the owner may also start the push log's writer thread
 * (ps_shard_log_writer_start), which writes each turn's records while the
 * loop goes on.
 *
 * Write-back cycle (DESIGN.md "The shard"):
 *   idle --begin (interval or dirty-row count)--> writing --write done--> idle
 * begin: commit the push log, note its last lsn L, rotate it, copy every
 *   dirty row, the row counts, the client sequence numbers and L into one
 *   WriteBatch; hand it to the write-back thread.
 * done:  rows of that batch become clean (evictable); log segments covered
 *   by L are deleted. On a write error the same batch is retried (rows keep
 *   changing in memory; the retried batch still describes state at L, and
 *   the next batch supersedes it), and the shard is read-only until it
 *   succeeds: pushes are refused, pulls of existing rows still served. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "admit.h"
#include "cmap.h"
#include "config.h"
#include "table.h"

typedef struct ps_shard ps_shard;

typedef struct ps_shard_options {
    uint32_t shard_id;
    const char *data_dir;        /* this shard's own directory */
    void (*notify)(void *ctx);   /* from the write-back thread */
    void *notify_ctx;
    /* Optional: called after each record replayed at open, with the count
     * so far (recovery progress, for the metrics endpoint). */
    void (*on_replay)(void *ctx, uint64_t records);
    void *on_replay_ctx;
} ps_shard_options;

typedef struct ps_push_result {
    uint32_t applied, dropped_nonfinite;
    uint32_t rejected;           /* keys admission kept out (server/admit.h) */
    bool already_applied;
} ps_push_result;

/* XX(name, metric, help): counters, by their Stats name and their
 * Prometheus name (labelled there with shard). */
#define PS_SHARD_COUNTER_MAP(XX)                                                              \
    XX(flushes, "ctrps_flushes_total", "write-back rounds committed")                        \
    XX(flush_batches, "ctrps_flush_batches_total",                                           \
       "write-back batches committed (one per write-back group and round)")                   \
    XX(flushed_rows, "ctrps_flushed_rows_total", "rows written back")                        \
    XX(flush_errors, "ctrps_flush_errors_total", "write-back batches that failed (retried)") \
    XX(make_room_flushes, "ctrps_make_room_flushes_total",                                   \
       "synchronous write-backs forced by a full memory tier")                               \
    XX(pushes_already_applied, "ctrps_pushes_already_applied_total",                         \
       "replayed pushes answered without applying")                                          \
    XX(pushes_throttled, "ctrps_pushes_throttled_total",                                     \
       "pushes into a range being copied after which their connection paused")               \
    XX(replayed_records, "ctrps_recovery_replayed_records_total",                            \
       "push-log records replayed at start")                                                 \
    XX(replay_skipped_rows, "ctrps_recovery_replay_skipped_rows_total",                      \
       "rows of replayed records that the store held already (write-back groups)")            \
    XX(pushlog_bytes, "ctrps_pushlog_appended_bytes_total", "bytes appended to the push log") \
    XX(dense_dropped_nonfinite, "ctrps_dense_dropped_nonfinite_total",                       \
       "dense pushes dropped for a non-finite gradient")                                      \
    XX(moves_started, "ctrps_moves_started_total",                                           \
       "copies of a bucket range to another shard begun here (as the source)")                \
    XX(moves_dropped, "ctrps_moves_dropped_total",                                           \
       "bucket ranges handed to another shard and deleted here")                              \
    XX(move_rows_sent, "ctrps_move_rows_sent_total",                                         \
       "rows sent to another shard by a move, catch-up rounds included")                       \
    XX(move_rows_caught_up, "ctrps_move_rows_caught_up_total",                               \
       "rows a move sent again because a push changed them during the copy")                  \
    XX(move_rows_received, "ctrps_move_rows_received_total", "rows received from another shard by a move")

typedef struct ps_shard_counters {
#define PS_SHARD_COUNTER_FIELD(name, metric, help) uint64_t name;
    PS_SHARD_COUNTER_MAP(PS_SHARD_COUNTER_FIELD)
#undef PS_SHARD_COUNTER_FIELD
} ps_shard_counters;

/* Open the shard's store, check it was made for this shard and these
 * tables, and replay the push log. `cfg` is borrowed for the shard's life. */
int ps_shard_open(const ps_config *cfg, const ps_shard_options *opts, ps_shard **ret_shard,
                  char *err, size_t errlen);
/* Write everything back, then close. */
int ps_shard_close(ps_shard *s);

/* What a shard's store records about its layout (meta "identity" and
 * "schema/TABLE"), checked whenever the store is opened so that rows are
 * never read under another bucket map or row format. */
void ps_shard_identity(const ps_config *cfg, uint32_t shard, char *ret, size_t len);
void ps_shard_table_schema(const ps_table_config *tc, char *ret, size_t len);

uint32_t ps_shard_id(const ps_shard *s);
const ps_config *ps_shard_config(const ps_shard *s);
ps_table *ps_shard_table(ps_shard *s, const char *name);
size_t ps_shard_ntables(const ps_shard *s);
ps_table *ps_shard_table_at(ps_shard *s, size_t i);

/* Whether every key's bucket belongs to this shard under its map. */
bool ps_shard_owns_all(const ps_shard *s, const uint64_t *keys, size_t n);

/* The cluster map this shard serves (common/cmap.h): stored in its meta
 * column family, fsynced. The first open stores the config's even split;
 * later opens keep the stored map unless the config's map_version is
 * higher (an operator's explicit reset). Borrowed until the next
 * ps_shard_set_map(). */
const ps_cluster_map *ps_shard_map(const ps_shard *s);
/* Store (fsynced) and serve a newer map. A map of the same epoch and the
 * same layout is accepted as already installed; an older one, one of
 * another epoch with the same number, or one with another bucket count is
 * refused with PS_EPROTO and a reason in err. m is copied. */
int ps_shard_set_map(ps_shard *s, const ps_cluster_map *m, char *err, size_t errlen);

/* Moving a bucket range to another shard (README "Resharding"; the phases
 * are in proto/ctrps.proto, MoveRequest). One range at a time moves.
 *   track(): the copy begins while the range is still served: from now on
 *     the fids that pushes change in it are recorded, per table, until
 *     drop() or thaw(). In memory only: a restart forgets them, and the
 *     copy starts again. *ret_id names this tracking (never 0; a new one
 *     at every track()); ps_shard_track_id() is 0 when none runs (or the
 *     record was lost for want of memory). *ret_rows estimates the rows of
 *     the range, for progress.
 *   freeze(): from now on ps_shard_touches_frozen() is true for its keys
 *     (the service answers MOVING: clients pause); the same range again is
 *     accepted, another one refused. The frozen range is stored durably
 *     (meta "move", fsynced), so a restart keeps it frozen, and an open
 *     that finds its map no longer gives it the frozen range finishes the
 *     move by dropping it. With fence_only, only that record is written
 *     (a restart comes back frozen) and the range is still served: the
 *     fsync is then out of the cut-over's pause, and the freeze that
 *     follows changes memory only.
 *   move_export(): one page of stored rows of the tracked or frozen range,
 *     table by table. The first page of a tracked range comes back empty
 *     and not done until a write-back begun after track() has ended (it is
 *     started if none runs, and the loop goes on serving); of a range only
 *     frozen, everything is written back first.
 *   move_changed(): one page of catch-up round `round` (from 1): the rows
 *     pushes changed since the previous round, as they are now (read from
 *     memory or the store); a row no longer alive comes with length 0. The
 *     round after the current one begins at cursor 0, 0 (the recorded fids
 *     are taken); the current one can be paged again (a resent request).
 *     *ret_pending: fids recorded since the round began.
 *   adopt_rows() / adopt_seqs(): the target side; written with fsync (the
 *     first pass can be staged and ingested instead: stage_begin() below);
 *     adopt_seqs() takes move_seqs()'s arrays (masks NULL: a peer that sent
 *     none, every number below a bucket's highest counts as applied). Rows
 *     of the range dropped last here, above every key adopted into it
 *     since (a first pass, in store order), are not looked up first.
 *   drop(): delete the range's rows (in steps: see ps_shard_drop()), then thaw.
 *   thaw(): forget the frozen range (rollback before the map changed). */
int ps_shard_track(ps_shard *s, uint32_t lo, uint32_t hi, uint64_t *ret_id, uint64_t *ret_rows,
                   char *err, size_t errlen);
uint64_t ps_shard_track_id(const ps_shard *s);
/* Changes recorded for the next catch-up round (0 without a copy). */
uint64_t ps_shard_track_pending(const ps_shard *s);
int ps_shard_freeze(ps_shard *s, uint32_t lo, uint32_t hi, bool fence_only, char *err,
                    size_t errlen);
int ps_shard_thaw(ps_shard *s, char *err, size_t errlen);
bool ps_shard_frozen(const ps_shard *s, uint32_t *ret_lo, uint32_t *ret_hi);
bool ps_shard_touches_frozen(const ps_shard *s, const uint64_t *keys, size_t n);
/* Slowing the writers of a range being copied, so that catch-up rounds
 * shrink however fast clients push into it: at `level` 1-3 (0: off), until
 * the copy ends, a push touching the tracked range is applied and its
 * connection then reads nothing for PS_THROTTLE_MS[level] ms (the service
 * pauses it). Pushes are never refused for it: a client keeps several on
 * the wire, and a refused one would be resent after a later one was
 * applied: still applied once (a bucket keeps which numbers below its
 * highest it applied), but out of the client's order, so the model would
 * differ from an unthrottled run's.
 * throttle_ms() is that pause for a push of keys just applied (0: none;
 * counted). */
extern const uint32_t PS_THROTTLE_MS[4];
int ps_shard_set_throttle(ps_shard *s, uint32_t lo, uint32_t hi, uint32_t level, char *err,
                          size_t errlen);
uint32_t ps_shard_throttle_ms(ps_shard *s, const uint64_t *keys, size_t n);
/* Hold periodic write-backs for `ms` (0: no more), or until the next map
 * is installed: a cut-over's fsync'ed writes (the target's last round and
 * sequence numbers, both maps) would otherwise wait behind a write-back's
 * batch in RocksDB's write queue. A table half full of dirty rows still
 * writes back. Returns whether a write-back is running now. */
bool ps_shard_hold_writeback(ps_shard *s, uint32_t ms);
/* Called per row with the fid and the stored value (borrowed). */
typedef int (*ps_shard_move_row_fn)(void *ctx, uint64_t fid, const void *value, size_t len);
/* Rows of [lo, hi) of table *table_index after store key `after` (alen 0:
 * from the start), at most limit, the range tracked or frozen; *table_index and
 * after (PS_STORE_KEY_LEN bytes) move past the page; *ret_done when none
 * are left in any table. */
int ps_shard_move_export(ps_shard *s, uint32_t lo, uint32_t hi, uint32_t *table_index,
                         uint8_t *after, size_t *alen, size_t limit, ps_shard_move_row_fn fn,
                         void *ctx, bool *ret_done, char *err, size_t errlen);
int ps_shard_move_changed(ps_shard *s, uint32_t lo, uint32_t hi, uint32_t round,
                          uint32_t *table_index, uint64_t *offset, size_t limit, ps_shard_move_row_fn fn, void *ctx,
                          bool *ret_done, uint64_t *ret_pending, char *err, size_t errlen);
/* Every client's sequence numbers for buckets [lo, hi): *ret_ids (n),
 * *ret_seqs (n * (hi - lo): each bucket's highest applied) and *ret_masks
 * (the same shape: which of the 64 numbers below it were applied too, bit
 * d for seq - 1 - d), malloc'ed, the caller frees all three. */
int ps_shard_move_seqs(ps_shard *s, uint32_t lo, uint32_t hi, uint64_t **ret_ids,
                       uint64_t **ret_seqs, uint64_t **ret_masks, size_t *ret_n);
int ps_shard_adopt_rows(ps_shard *s, ps_table *t, const uint64_t *keys, const void *const *values,
                        const size_t *lens, size_t n, char *err, size_t errlen);
int ps_shard_adopt_seqs(ps_shard *s, uint32_t lo, uint32_t hi, const uint64_t *ids,
                        const uint64_t *seqs, const uint64_t *masks, size_t n, char *err,
                        size_t errlen);
/* drop() walks at most `budget` stored rows a call (0: all): *ret_more
 * says to call it again with the same range (the loop serves other
 * requests between calls); with a budget, a range with dirty rows, or a
 * write-back under way, first has the call begin one (on the write-back
 * thread) and answer *ret_more, instead of writing back on the loop. The
 * range's rows leave the count and the store at the last call, which then
 * thaws (*ret_rows: the rows dropped; with *ret_more, the rows walked so
 * far, 0 while a write-back is waited for). A drop of another range meanwhile
 * gives up the one under way, which has changed nothing stored yet (its
 * rows are out of memory, and read from the store again if needed). */
int ps_shard_drop(ps_shard *s, uint32_t lo, uint32_t hi, size_t budget, bool *ret_more,
                  uint64_t *ret_rows, char *err, size_t errlen);
/* The admission filters go with a copy (server/admit.h, "Moving with a
 * bucket range"): track() begins recording the counters pushes raise.
 *   move_admit(): one page of round `round` (from 1), one table's, into
 *     *ret_page (borrowed until the next round begins or the copy ends):
 *     round 1 every block of every filter, each later round the counters
 *     raised since the round before, at about max_bytes a page. The round
 *     after the current one begins at cursor 0, 0 (and takes what it sends
 *     then); the current one can be paged again. *ret_pending: counters
 *     raised since the current round began. A change that could not be
 *     recorded (no memory) ends the tracking: the copy begins again.
 *   adopt_admit(): the target side: check the page (PS_EPROTO: another
 *     layout; PS_EPARSE: blocks or counters that do not fit; nothing is
 *     merged then), merge it with max(), and write back (durable on
 *     return). */
int ps_shard_move_admit(ps_shard *s, uint32_t lo, uint32_t hi, uint32_t round,
                        uint32_t *table_index, uint64_t *offset, size_t max_bytes,
                        ps_admit_page *ret_page, bool *ret_done, uint64_t *ret_pending, char *err,
                        size_t errlen);
int ps_shard_adopt_admit(ps_shard *s, ps_table *t, const ps_admit_page *p, char *err,
                         size_t errlen);
/* A copy's first pass loaded in bulk (the target side): stage_begin(),
 * after drop() of [lo, hi), names the copy `id` (the source's track id);
 * stage_rows() takes its pages of rows (in store order, per table) into
 * SST files under <data dir>/staging, not durable and not visible;
 * stage_ingest() ingests them into the store (durable on return) and counts
 * the rows. Catch-up pages go through adopt_rows() after the ingest (the
 * ingested file would hide rows written before it). A copy this shard does
 * not know (never begun, or lost to a restart, a drop() or a plain
 * adopt_rows() of the range) is answered PS_ENOT_FOUND: the mover begins the
 * copy again. Staging files go at the ingest, at a drop of the range, at
 * stage_forget() (a move given up), at close, and at open after a crash;
 * never into a checkpoint (not under db/). */
int ps_shard_stage_begin(ps_shard *s, uint32_t lo, uint32_t hi, uint64_t id, char *err,
                         size_t errlen);
int ps_shard_stage_rows(ps_shard *s, uint64_t id, ps_table *t, const uint64_t *keys,
                        const void *const *values, const size_t *lens, size_t n, char *err,
                        size_t errlen);
int ps_shard_stage_ingest(ps_shard *s, uint64_t id, char *err, size_t errlen);
/* Forget the staged copy, if any, and remove its files; whether there was one. */
bool ps_shard_stage_forget(ps_shard *s);

/* Apply a push (all-or-nothing) and log it. client_id 0 skips sequencing;
 * otherwise a seq at or below the client's last applied one is answered as
 * already applied. The acknowledgement may leave only after
 * ps_shard_commit(). */
int ps_shard_push(ps_shard *s, ps_table *t, const uint64_t *keys, size_t n, const float *grads,
                  uint64_t client_id, uint64_t seq, ps_push_result *ret, char *err, size_t errlen);
uint64_t ps_shard_client_seq(const ps_shard *s, uint64_t client_id);

/* Dense blocks. get() returns a block's weights (borrowed until the next
 * change), creating it from init (init_len floats) when it is missing and
 * init is given. push() applies one Adam step per block, all blocks or none
 * (unknown block, length mismatch, non-finite gradient). */
int ps_shard_dense_get(ps_shard *s, const char *name, const float *init, size_t init_len,
                       const float **ret_w, size_t *ret_len, char *err, size_t errlen);
int ps_shard_dense_push(ps_shard *s, size_t n, const char *const *names, const float *const *grads,
                        const size_t *lens, uint64_t client_id, uint64_t seq, bool *ret_already,
                        char *err, size_t errlen);

/* Group commit: write this turn's log records. Call before sending the
 * turn's replies; an error means those replies must not say OK. Waits for
 * the writer thread's write in flight first. */
int ps_shard_commit(ps_shard *s);

/* Group commit off the loop thread (pushlog.h). With durability = sync,
 * writer_start() starts the push log's writer thread; notify(ctx) is called
 * from it after each write and must only wake the loop. Elsewhere (interval,
 * no log, PS_PUSHLOG_WRITER=0 in the environment) it does nothing and
 * commit_begin() commits synchronously. writer_stop() waits for the write
 * in flight and stops the thread (then no notify runs).
 *
 * commit_begin(), at the end of a loop turn with no write in flight:
 *   1: a write of every record so far is in flight; the turn's replies wait
 *      until commit_poll() says *ret_durable >= *ret_lsn;
 *   0: every record is written (or there are none): replies may leave;
 *   < 0: a synchronous write failed: replies must not say OK.
 * commit_poll() takes a finished write's result: *ret_busy while it is still
 * in flight; a negative return is that write's error (the shard is then
 * read-only and retries, as after a failed commit). A write that is done
 * but whose *ret_durable is below the lsn awaited failed (another commit
 * took its result). */
int ps_shard_log_writer_start(ps_shard *s, void (*notify)(void *ctx), void *ctx);
int ps_shard_log_writer_stop(ps_shard *s);
int ps_shard_commit_begin(ps_shard *s, uint64_t *ret_lsn);
int ps_shard_commit_poll(ps_shard *s, bool *ret_busy, uint64_t *ret_durable);

/* Start or finish write-back as due. now_ms is a monotonic clock. */
void ps_shard_tick(ps_shard *s, uint64_t now_ms);
/* Write back every dirty row now and wait for it (export, shutdown). */
int ps_shard_flush_sync(ps_shard *s, char *err, size_t errlen);

/* Write everything back and make a consistent RocksDB checkpoint (hard
 * links) in dir, which must not exist; *ret_lsn is the push-log position it
 * includes. The copy alone restores the shard (ctrps-server --restore). */
int ps_shard_checkpoint(ps_shard *s, const char *dir, uint64_t *ret_lsn, char *err, size_t errlen);

/* Non-empty while the store refuses writes. */
const char *ps_shard_store_error(const ps_shard *s);
bool ps_shard_read_only(const ps_shard *s);

void ps_shard_counters_get(const ps_shard *s, ps_shard_counters *ret);
uint64_t ps_shard_store_bytes(ps_shard *s);
uint64_t ps_shard_pending_compaction_bytes(ps_shard *s);
uint32_t ps_shard_running_compactions(ps_shard *s);
