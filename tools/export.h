#pragma once
/* Model export (`ctrps-cli export-model`): a cluster checkpoint turned into
 * the self-describing directory of docs/export-format.md, which
 * clients/python's ctrps.model.load() reads.
 *
 * Consistency. An export is always made from a checkpoint (common/
 * checkpoint.h): from a live cluster, the CLI first takes one (the barrier
 * pauses every worker at a batch boundary once its pushes are acknowledged,
 * each shard writes everything back and hard-links its database, training
 * resumes), then exports that copy exactly as `--checkpoint C` would. So an
 * export from a live cluster is the state at one barrier, equals the export
 * of the checkpoint it took, and workers pause only for the checkpoint
 * (hard links), not for the export. The copies are read here directly with
 * RocksDB, read-only (server/snapshot.h: the same table code, expiry clock
 * and checks a restored shard would use), so no shard needs to run. The
 * price: the checkpoint directory must be reachable from where the export
 * runs, which `ctrps-cli checkpoint` already requires (the shards write the
 * copies under the directory the CLI names; it writes the manifest there).
 *
 * Streaming. Rows are read a page at a time (ps_table_export over a
 * RocksDB iterator) and appended to the .npy files (tools/npy.h), whose
 * headers are completed at the end: memory does not grow with the table.
 * Dense blocks are held whole, one shard at a time (they are the dense
 * model, megabytes). Checksums are computed by reading each file back.
 *
 * The directory: config.ini (a byte copy of the config), TABLE.fids.npy,
 * TABLE.weights.npy, with state TABLE.state.npy, BLOCK.npy per dense block,
 * and manifest.json last (written to a temporary name, fsynced, renamed): a
 * directory without it is incomplete. On failure what was written is
 * removed. */

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

typedef struct ps_model_export_options {
    const ps_config *cfg;        /* loaded with ps_worker_config_ext */
    const char *checkpoint;      /* a checkpoint directory, or a root (its newest) */
    const char *dir;             /* output: must not exist or be empty */
    bool with_state;             /* also TABLE.state.npy */
    const char *source_kind;     /* manifest "source.kind": "cluster" | "checkpoint" */
} ps_model_export_options;

/* 0, or an error with a one-line message in err: -EINVAL / -EEXIST /
 * PS_ECONFIG for arguments that cannot work (an output directory that is
 * not empty, a checkpoint of another cluster layout), other codes for
 * failures on the way (I/O, a corrupt copy). */
int ps_model_export(const ps_model_export_options *o, char *err, size_t errlen);
