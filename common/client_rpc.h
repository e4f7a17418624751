#pragma once
/* For modules of the RPC client library only (common/move.c): raw
 * requests to one shard through a ps_client. */

#include "client.h"
#include "ctrps.pb-c.h"

/* Send req (its id is set here) to shard; _finish() waits for the answer,
 * which must be OK and hold `want`, and frees the call; *ret_resp (NULL:
 * not wanted) is the caller's, freed with ctrps__response__free_unpacked().
 * Several requests to one shard can be in flight: they reach it in the
 * order they were started (resent in that order after a reconnect). */
int ps_client_call_start(ps_client *c, uint32_t shard, Ctrps__Request *req, ps_call **ret_call,
                         char *err, size_t errlen);
int ps_client_call_finish(ps_call *call, uint32_t shard, Ctrps__Response__ResultCase want,
                          Ctrps__Response **ret_resp, char *err, size_t errlen);
