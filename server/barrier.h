#pragma once
/* The shard's half of a cluster checkpoint (common/checkpoint.h tells the
 * whole protocol; service.c only translates its messages into these calls).
 *
 * State: idle (pending "") --begin(id)--> up(id) --end(id)--> idle. While
 * up, workers report their input positions (shard 0 collects them for the
 * coordinator) and take(id, dir) copies the shard's database. The barrier
 * also knows which workers are connected now: the coordinator waits for
 * each of them to report.
 *
 * restore() is the other end: a shard's data replaced by its copy in a
 * checkpoint, before the shard opens.
 *
 * Not thread-safe: the shard's loop thread owns the barrier. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shard.h"

typedef struct ps_barrier ps_barrier;

typedef struct ps_barrier_arrival {
    uint64_t client_id;
    char worker[64];
    char position[256];
} ps_barrier_arrival;

/* shard is borrowed for the barrier's life. */
int ps_barrier_new(ps_shard *shard, ps_barrier **ret_barrier);
void ps_barrier_free(ps_barrier *b);

/* The checkpoint in progress, "" if none; borrowed until the next begin/end. */
const char *ps_barrier_pending(const ps_barrier *b);

/* Each checks id (1..PS_NAME_MAX-1 bytes, else PS_EPROTO) and names the
 * barrier it acts on: PS_EUNAVAILABLE when another one (begin) or none
 * (report, take) is up. end() of a barrier that is not up does nothing. */
int ps_barrier_check_id(const ps_barrier *b, const char *id, char *err, size_t errlen);
int ps_barrier_begin(ps_barrier *b, const char *id, char *err, size_t errlen);
int ps_barrier_report(ps_barrier *b, const char *id, uint64_t client_id, const char *worker,
                      const char *position, char *err, size_t errlen);
/* Write everything back and copy the database into dir, which must be the
 * coordinator's layout (absolute .../ckpt-*\/shard-N, no "." or ".."
 * components): a peer cannot have the shard write elsewhere. */
int ps_barrier_take(ps_barrier *b, const char *id, const char *dir, uint64_t *ret_lsn, char *err,
                    size_t errlen);
int ps_barrier_end(ps_barrier *b, const char *id, char *err, size_t errlen);

/* The reports for the pending barrier; borrowed until the next call. */
const ps_barrier_arrival *ps_barrier_reports(const ps_barrier *b, size_t *ret_n);

/* Connected workers, by connection (any pointer unique to it). hello()
 * records a connection's client after each successful Hello (a client whose
 * name is not a worker's is forgotten); gone() when it closes. */
int ps_barrier_hello(ps_barrier *b, const void *conn, uint64_t client_id, const char *client_name);
void ps_barrier_gone(ps_barrier *b, const void *conn);
/* Client ids of the workers connected now, n of them; borrowed until the
 * next hello() or gone(). */
const uint64_t *ps_barrier_workers(const ps_barrier *b, size_t *ret_n);

/* Replace the data of shard `shard` under dir (its db and push log) with
 * its copy in checkpoint ckpt (a checkpoint directory, or a root holding
 * some: the newest). */
int ps_barrier_restore(const char *ckpt, uint32_t shard, const char *dir, char *err, size_t errlen);
