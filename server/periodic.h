#pragma once
/* Periodic cluster checkpoints ([cluster] checkpoint_interval_s): shard 0
 * runs the same coordinator as `ctrps-cli checkpoint` on a thread of its
 * own, through the ordinary client library (its RPCs to itself are served by
 * its own loop), then prunes to checkpoint_retention. */

#include "config.h"

typedef struct ps_periodic ps_periodic;

/* NULL in *ret when the config asks for none. */
int ps_periodic_start(const ps_config *cfg, ps_periodic **ret);
void ps_periodic_stop(ps_periodic *p);
