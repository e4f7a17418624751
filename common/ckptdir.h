#pragma once
/* Checkpoint directories on disk (the layout and manifest that
 * common/checkpoint.h's coordinator writes): listing, pruning, finding the
 * newest, and reading a manifest. Files only, no RPC: the shard reads them to
 * restore (server/barrier.h), the worker to resume. */

#include <stddef.h>
#include <stdint.h>

#define PS_CHECKPOINT_ID_MAX 64

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
