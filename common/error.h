#pragma once
/* Error codes. Functions return 0 on success, a negative errno, or one of the
 * project codes below (a reserved negative block well below any errno);
 * ps_strerror() covers both. */

#define PS_ERRNO_MAP(XX)                                                      \
    XX(CONFIG, "invalid configuration")                                       \
    XX(PARSE, "malformed input")                                              \
    XX(PROTO, "protocol error")                                               \
    XX(WRONG_SHARD, "key belongs to another shard")                           \
    XX(UNKNOWN_TABLE, "unknown table")                                        \
    XX(DIM, "dimension mismatch")                                             \
    XX(STORE, "storage error")                                                \
    XX(READ_ONLY, "store is read-only")                                       \
    XX(REMOTE, "server returned an error")                                    \
    XX(UNAVAILABLE, "shard unavailable")                                      \
    XX(TIMEOUT, "deadline exceeded")                                          \
    XX(LIMIT, "limit exceeded")                                               \
    XX(AUTH, "authentication failed")                                         \
    XX(NOT_FOUND, "not found")                                                \
    XX(NONFINITE, "non-finite value")                                                \
    XX(CLOSED, "closed")                                                      \
    XX(MOVING, "bucket range is moving")

enum {
    PS_ERR_BASE = -30000,
#define PS_ERR_ENUM(name, msg) PS_E##name,
    PS_ERRNO_MAP(PS_ERR_ENUM)
#undef PS_ERR_ENUM
    PS_ERR_END
};

/* Static string for any return code: project code, negative errno or 0. */
const char *ps_strerror(int err);
