#pragma once
/* Consistent cluster checkpoints (DESIGN.md "The shard": checkpoints).
 *
 * Taking one (ps_checkpoint_take), from any client:
 *   1. BEGIN on every shard: the barrier is up; every response now tells the
 *      workers, and each, at its next batch boundary, waits until its pushes
 *      are acknowledged, REPORTs its input position to shard 0 and pauses;
 *   2. wait until every worker connected to any shard has reported (so no
 *      push is in flight anywhere and every position matches the state);
 *   3. TAKE on every shard: write everything back, RocksDB checkpoint (hard
 *      links) into ROOT/ID/shard-N;
 *   4. write ROOT/ID/manifest (last: a directory without one is incomplete
 *      and ignored), then END: workers resume.
 * Any failure ENDs the barrier and removes ROOT/ID.
 *
 * The manifest is INI text:
 *   [checkpoint]  id, time, shards, buckets
 *   [shard.N]     address, path, flushed_lsn
 *   [worker.NAME] client_id, position
 * ctrps-server --restore and ctrps-worker --resume read it. */

#include <stddef.h>
#include <stdint.h>

#include "ckptdir.h"
#include "client.h"
#include "config.h"

/* Take a checkpoint under root (created if missing). Waits at most wait_s
 * seconds for the workers. *ret_id gets the checkpoint's name. */
int ps_checkpoint_take(ps_client *c, const ps_config *cfg, const char *root, uint32_t wait_s,
                       char *ret_id, size_t idlen, char *err, size_t errlen);

/* The worker's half of the barrier, at a batch boundary once every push is
 * acknowledged: report the input position after the last pushed batch for
 * barrier id to shard 0 (PS_EUNAVAILABLE: the barrier is already over, so
 * nothing to wait for), then wait until the coordinator ends it. */
int ps_checkpoint_report(ps_client *c, const char *id, const char *worker, const char *position,
                         char *err, size_t errlen);
int ps_checkpoint_wait_end(ps_client *c, const char *id, char *err, size_t errlen);
