#include "rpc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

Ctrps__Status ps_status_from_error(int err) {
    switch (err) {
    case 0:
        return CTRPS__STATUS__OK;
    case PS_EWRONG_SHARD:
        return CTRPS__STATUS__WRONG_SHARD;
    case PS_EUNKNOWN_TABLE:
        return CTRPS__STATUS__UNKNOWN_TABLE;
    case PS_EDIM:
        return CTRPS__STATUS__BAD_DIMENSION;
    case PS_EPROTO:
    case PS_EPARSE:
    case -EINVAL:
        return CTRPS__STATUS__BAD_REQUEST;
    case PS_EAUTH:
        return CTRPS__STATUS__UNAUTHENTICATED;
    case PS_EREAD_ONLY:
        return CTRPS__STATUS__READ_ONLY;
    case PS_ELIMIT:
        return CTRPS__STATUS__LIMIT_EXCEEDED;
    case PS_EUNAVAILABLE:
        return CTRPS__STATUS__UNAVAILABLE;
    case PS_ENOT_FOUND:
        return CTRPS__STATUS__NOT_FOUND;
    case PS_EMOVING:
        return CTRPS__STATUS__MOVING;
    default:
        return CTRPS__STATUS__INTERNAL;
    }
}

int ps_error_from_status(Ctrps__Status status) {
    switch (status) {
    case CTRPS__STATUS__OK:
        return 0;
    case CTRPS__STATUS__WRONG_SHARD:
        return PS_EWRONG_SHARD;
    case CTRPS__STATUS__UNKNOWN_TABLE:
        return PS_EUNKNOWN_TABLE;
    case CTRPS__STATUS__BAD_DIMENSION:
        return PS_EDIM;
    case CTRPS__STATUS__BAD_REQUEST:
        return PS_EPROTO;
    case CTRPS__STATUS__UNAUTHENTICATED:
        return PS_EAUTH;
    case CTRPS__STATUS__READ_ONLY:
        return PS_EREAD_ONLY;
    case CTRPS__STATUS__LIMIT_EXCEEDED:
        return PS_ELIMIT;
    case CTRPS__STATUS__UNAVAILABLE:
        return PS_EUNAVAILABLE;
    case CTRPS__STATUS__NOT_FOUND:
        return PS_ENOT_FOUND;
    case CTRPS__STATUS__MOVING:
        return PS_EMOVING;
    default:
        return PS_EREMOTE;
    }
}

const char *ps_status_name(Ctrps__Status status) {
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&ctrps__status__descriptor, (int)status);
    return v ? v->name : "UNKNOWN";
}

int ps_rpc_map_from_wire(const Ctrps__ClusterMapResponse *m, ps_cluster_map *ret_map, char *err,
                         size_t errlen) {
    if (m->n_owner != m->buckets || !m->n_shards) {
        snprintf(err, errlen, "cluster map of %u buckets with %zu owners and %zu shards", m->buckets,
                 m->n_owner, m->n_shards);
        return PS_EPROTO;
    }
    ps_cluster_map map = {.version = m->version, .buckets = m->buckets};
    map.shards = calloc(m->n_shards + 1, sizeof(char *));
    map.owner = malloc(m->n_owner * sizeof(uint32_t) + 1);
    bool ok = map.shards && map.owner;
    for (size_t i = 0; ok && i < m->n_shards; i++)
        ok = (map.shards[map.nshards++] = strdup(m->shards[i] ? m->shards[i] : "")) != NULL;
    if (!ok) {
        ps_cluster_map_deinit(&map);
        snprintf(err, errlen, "%s", ps_strerror(-ENOMEM));
        return -ENOMEM;
    }
    memcpy(map.owner, m->owner, m->n_owner * sizeof(uint32_t));
    int r = ps_cluster_map_check(&map, err, errlen);
    if (r < 0) {
        ps_cluster_map_deinit(&map);
        return r;
    }
    *ret_map = map;
    return 0;
}

void ps_rpc_map_to_wire(const ps_cluster_map *map, Ctrps__ClusterMapResponse *m) {
    ctrps__cluster_map_response__init(m);
    m->version = map->version;
    m->buckets = map->buckets;
    m->n_shards = map->nshards;
    m->shards = map->shards;
    m->n_owner = map->buckets;
    m->owner = map->owner;
}
