#pragma once
/* Dense parameter blocks (the MLP, cross layers, CAN biases): named float
 * arrays held by their home shard and updated there with Adam, so every
 * worker trains one shared dense model (DESIGN.md "The shard").
 *
 * A block is created by the first DensePull that brings initial values
 * (workers initialise deterministically from the model seed, so concurrent
 * first pulls agree). Like rows, blocks live in memory and are written back
 * with the shard's batches, tracked by generation: dirty iff gen >
 * committed_gen. Not thread-safe: the shard's loop thread owns it. */

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "store.h"

typedef struct ps_dense ps_dense;

int ps_dense_new(const ps_dense_config *cfg, ps_dense **ret_dense);
void ps_dense_free(ps_dense *d);

/* Restore a block from its stored value (at shard open). */
int ps_dense_load(ps_dense *d, const char *name, size_t name_len, const void *value, size_t len);

/* Load every block a store's dense column family holds (at shard open, or
 * to read a checkpoint copy). PS_ESTORE names a corrupt block in err. */
int ps_dense_load_all(ps_dense *d, ps_store *store, int cf, char *err, size_t errlen);

/* Blocks in load or creation order: block i's name and weights, borrowed
 * until the next call that changes blocks. */
size_t ps_dense_count(const ps_dense *d);
void ps_dense_at(const ps_dense *d, size_t i, const char **ret_name, const float **ret_w,
                 size_t *ret_len);

/* The block's weights (borrowed until the next call that changes blocks). */
int ps_dense_get(ps_dense *d, const char *name, const float **ret_w, size_t *ret_len);
/* Create a block from initial values; PS_EDIM if it exists with another
 * length, 0 (and nothing changes) if it exists with this one. */
int ps_dense_create(ps_dense *d, const char *name, const float *init, size_t len);
/* Whether a gradient could be applied: PS_ENOT_FOUND, PS_EDIM, PS_ENONFINITE. */
int ps_dense_check(ps_dense *d, const char *name, const float *g, size_t len);
/* One Adam step (ps_dense_check() must have passed). */
void ps_dense_apply(ps_dense *d, const char *name, const float *g, size_t len);

/* Write-back: put every block changed since the previous dump into b and
 * return their generation; committed(gen) marks them clean. */
size_t ps_dense_dump(ps_dense *d, ps_store *store, int cf, ps_store_batch *b, uint32_t *ret_gen);
void ps_dense_committed(ps_dense *d, uint32_t gen);

/* Blocks changed since the last dump. */
size_t ps_dense_dirty(const ps_dense *d);
uint64_t ps_dense_floats(const ps_dense *d);
