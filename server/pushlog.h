#pragma once
/* The push log: what makes an acknowledged push survive kill -9 between two
 * write-backs (DESIGN.md "The shard", durability = sync).
 *
 * An append-only sequence of segment files "<first lsn, 16 hex>.log" in one
 * directory, like Redis's AOF. A record is
 *     u32 payload length | u32 CRC-32C of the payload | payload
 * and its payload starts with its log sequence number (lsn), which increases
 * by one per record. Records are buffered by append() and written with one
 * write() by commit(), which the shard calls once per loop turn before any
 * acknowledgement of that turn leaves (group commit).
 *
 * Truncation: a write-back batch records the last lsn it covers; rotate()
 * starts a new segment at that point, and once the batch is committed
 * drop_covered() retires the segments wholly covered by it: the first is
 * kept as "spare.<its last lsn>" and becomes the next segment, written over
 * from its start, the others are deleted (deleting a large one held the
 * writer thread for a second). A spare's old records left after the new
 * ones have lsns below the segment's first: replay stops there, and
 * rotate() and close() cut them off. close() keeps the spare for the next
 * process, whose open() writes over it if all its records are older than
 * the log's next lsn (else deletes it).
 *
 * Recovery: open() replays every record with lsn > the covered lsn, in
 * order, through a callback. A torn or corrupt record at the tail of the
 * last segment (a crash mid-write) ends replay and is cut off; corruption
 * anywhere else is an error, since skipping it would silently lose pushes. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "config.h"

typedef struct ps_pushlog ps_pushlog;

/* Called for each replayed record; payload is borrowed for the call. A
 * negative return stops replay and fails open(). */
typedef int (*ps_pushlog_replay_fn)(void *ctx, uint64_t lsn, const void *payload, size_t len);

int ps_pushlog_open(const char *dir, ps_fsync_policy fsync, uint64_t covered_lsn,
                    ps_pushlog_replay_fn replay, void *ctx, ps_pushlog **ret_log, char *err,
                    size_t errlen);
/* open(), and new records get lsns above used_lsn too (>= covered_lsn):
 * the caller's store may hold parts written back up to it, which must
 * never see a later record's lsn as one they hold. */
int ps_pushlog_open_after(const char *dir, ps_fsync_policy fsync, uint64_t covered_lsn,
                          uint64_t used_lsn, ps_pushlog_replay_fn replay, void *ctx,
                          ps_pushlog **ret_log, char *err, size_t errlen);
void ps_pushlog_close(ps_pushlog *log);

/* Make room in the buffer for a record whose body is len bytes, so that the
 * append() that follows cannot fail. The shard reserves before it applies a
 * push and appends after: a push is then never applied without its record. */
int ps_pushlog_reserve(ps_pushlog *log, size_t len);
/* Buffer one record whose body is the concatenation of iov[0..niov); its
 * payload is the body prefixed with the lsn assigned (*ret_lsn). Nothing
 * reaches the file before commit(). */
int ps_pushlog_append(ps_pushlog *log, const struct iovec *iov, int niov, uint64_t *ret_lsn);

/* Write the buffered records (and fdatasync with fsync = always), after
 * waiting for the writer thread's write in flight. */
int ps_pushlog_commit(ps_pushlog *log);

/* Start the writer thread. notify(ctx) is called from it after each write,
 * under the log's lock: it must only wake the loop (uv_async_send). */
int ps_pushlog_writer_start(ps_pushlog *log, void (*notify)(void *ctx), void *ctx);
/* Wait for the write in flight (its result is returned) and stop the
 * thread; no notify() runs after it returns. commit() works as before. */
int ps_pushlog_writer_stop(ps_pushlog *log);
bool ps_pushlog_writer_running(const ps_pushlog *log);
/* With the writer started and no write in flight: hand every buffered
 * record to the writer. 1 if a write is now in flight, 0 if nothing was
 * buffered. */
int ps_pushlog_submit(ps_pushlog *log);
/* Take the result of a finished write: *ret_busy says whether one is still
 * in flight; a negative return is the error of the write just taken. */
int ps_pushlog_poll(ps_pushlog *log, bool *ret_busy);
/* Every record up to this lsn is in the file (and synced, fsync = always). */
uint64_t ps_pushlog_durable_lsn(const ps_pushlog *log);
/* fdatasync the current segment; for fsync = everysec, from any thread. */
int ps_pushlog_sync(ps_pushlog *log);

uint64_t ps_pushlog_last_lsn(const ps_pushlog *log);
/* Commit, then continue in a new segment whose first record will be
 * last_lsn + 1. */
int ps_pushlog_rotate(ps_pushlog *log);
/* Retire segments all of whose records have lsn <= covered: on the writer
 * thread when it runs (at the latest before writer_stop() returns), else
 * here. */
int ps_pushlog_drop_covered(ps_pushlog *log, uint64_t covered);

/* Bytes appended since open, for stats. */
uint64_t ps_pushlog_bytes(const ps_pushlog *log);

uint32_t ps_crc32c(uint32_t crc, const void *data, size_t len);
