#include "rpc.h"

#include <errno.h>

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
    default:
        return PS_EREMOTE;
    }
}

const char *ps_status_name(Ctrps__Status status) {
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&ctrps__status__descriptor, (int)status);
    return v ? v->name : "UNKNOWN";
}
