#include "error.h"

#include <string.h>

const char *ps_strerror(int err) {
    switch (err) {
    case 0:
        return "success";
#define PS_ERR_CASE(name, msg)                                                 \
    case PS_E##name:                                                           \
        return msg;
        PS_ERRNO_MAP(PS_ERR_CASE)
#undef PS_ERR_CASE
    default:
        break;
    }
    if (err < 0 && err > PS_ERR_BASE)
        return strerror(-err);
    return "unknown error";
}
