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

#include "client.h"
#include "config.h"

#define PS_CHECKPOINT_ID_MAX 64

/* Take a checkpoint under root (created if missing). Waits at most wait_s
 * seconds for the workers. *ret_id gets the checkpoint's name. */
int ps_checkpoint_take(ps_client *c, const ps_config *cfg, const char *root, uint32_t wait_s,
                       char *ret_id, size_t idlen, char *err, size_t errlen);

/* Complete checkpoints under root, oldest first; free with
 * ps_checkpoint_list_free(). */
int ps_checkpoint_list(const char *root, char ***ret_ids, size_t *ret_n);
void ps_checkpoint_list_free(char **ids, size_t n);
/* Remove all but the newest `keep` complete checkpoints (and incomplete
 * leftovers older than the newest complete one). */
int ps_checkpoint_prune(const char *root, uint32_t keep, char *err, size_t errlen);

/* A checkpoint directory from a path that is one, or a root holding some
 * (the newest complete one). */
int ps_checkpoint_resolve(const char *path, char *ret_dir, size_t dirlen, char *err, size_t errlen);
/* Values from a checkpoint's manifest: [section] key. */
int ps_checkpoint_manifest_get(const char *dir, const char *section, const char *key, char *ret,
                               size_t retlen, char *err, size_t errlen);

/* A worker's input position in a manifest, and its name. */
int ps_checkpoint_format_position(char *out, size_t outlen, uint32_t file, uint64_t offset,
                                  uint64_t lines, uint64_t inputs_hash);
int ps_checkpoint_parse_position(const char *s, uint32_t *ret_file, uint64_t *ret_offset,
                                 uint64_t *ret_lines, uint64_t *ret_inputs_hash);
void ps_checkpoint_worker_name(char *out, size_t outlen, uint32_t index, uint32_t count);
