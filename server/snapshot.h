#pragma once
/* A shard's database opened read-only, without a running shard: the copy a
 * cluster checkpoint holds (ROOT/ckpt-ID/shard-N, common/checkpoint.h), read
 * to export the model it holds (tools/export.h).
 *
 * A checkpoint copy is the shard's whole state: the barrier wrote every row
 * and dense block back just before the copy, and the copy alone restores the
 * shard (server/barrier.h). So the tables opened here over the copy, with
 * the state and clock saved with that write-back, export exactly the rows a
 * shard restored from it would (ps_table_export: same code, same expiry
 * clock), and nothing here writes to the copy, so several readers, and
 * `ctrps-server --restore` later, may share it.
 *
 * Opening checks that the copy was made by shard `shard` of a cluster with
 * this config's shard count, buckets and table schemas (the checks a shard
 * makes at open), so rows are never read under another layout. Memory: the
 * tables' memory tiers stay empty (export reads RocksDB page by page); the
 * dense blocks are loaded whole (they are the dense model, megabytes). */

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "dense.h"
#include "table.h"

typedef struct ps_snapshot ps_snapshot;

/* Open the RocksDB database in dir read-only. cfg is borrowed for the
 * snapshot's life. Free with ps_snapshot_free(). */
int ps_snapshot_open(const ps_config *cfg, uint32_t shard, const char *dir,
                     ps_snapshot **ret_snapshot, char *err, size_t errlen);
void ps_snapshot_free(ps_snapshot *s);

/* The table of that name (NULL if the config has none), borrowed for the
 * snapshot's life; read it with ps_table_export(). */
ps_table *ps_snapshot_table(ps_snapshot *s, const char *name);
/* The dense blocks the shard held (ps_dense_count/ps_dense_at), borrowed. */
const ps_dense *ps_snapshot_dense(const ps_snapshot *s);
