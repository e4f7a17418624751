#pragma once
/* RPC conventions shared by the server and the clients: the protocol version,
 * the method list, and the mapping between wire status codes and our error
 * codes. */

#include "cmap.h"
#include "ctrps.pb-c.h"

#define PS_PROTOCOL_VERSION 1

/* Every method: XX(name, ONEOF_TAG). Dispatch, counters and names come from
 * this one list. */
#define PS_METHOD_MAP(XX)                                                                     \
    XX(hello, HELLO)                                                                          \
    XX(pull, PULL)                                                                            \
    XX(push, PUSH)                                                                            \
    XX(lookup, LOOKUP)                                                                        \
    XX(stats, STATS)                                                                          \
    XX(cluster_map, CLUSTER_MAP)                                                              \
    XX(export, EXPORT)                                                                        \
    XX(dense_pull, DENSE_PULL)                                                                \
    XX(dense_push, DENSE_PUSH)                                                                \
    XX(checkpoint, CHECKPOINT)                                                                \
    XX(move, MOVE)

typedef enum {
#define PS_METHOD_ENUM(name, tag) PS_METHOD_##tag,
    PS_METHOD_MAP(PS_METHOD_ENUM)
#undef PS_METHOD_ENUM
    PS_METHOD_COUNT
} ps_method;

/* Our error code -> wire status, and back. */
Ctrps__Status ps_status_from_error(int err);
int ps_error_from_status(Ctrps__Status status);
const char *ps_status_name(Ctrps__Status status);

/* Cluster maps on the wire. from_wire copies into *ret_map (checked with
 * ps_cluster_map_check; err says why not). to_wire points m's fields at
 * map's arrays: borrowed, valid while map is. */
int ps_rpc_map_from_wire(const Ctrps__ClusterMapResponse *m, ps_cluster_map *ret_map, char *err,
                         size_t errlen);
void ps_rpc_map_to_wire(const ps_cluster_map *map, Ctrps__ClusterMapResponse *m);
