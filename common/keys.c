#include "keys.h"

#include <string.h>
#include <xxhash.h>

uint16_t ps_slot_id(const char *name) {
    return (uint16_t)(XXH3_64bits(name, strlen(name)) & 0xffff);
}

uint64_t ps_fid(uint16_t slot_id, const char *value, size_t len) {
    return ((uint64_t)slot_id << PS_FID_VALUE_BITS) | (XXH3_64bits(value, len) & PS_FID_VALUE_MASK);
}

uint32_t ps_dense_home(const char *name, uint32_t nshards) {
    return (uint32_t)(ps_mix64(XXH3_64bits(name, strlen(name))) % nshards);
}
