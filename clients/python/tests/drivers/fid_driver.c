/* Test driver for clients/python/tests/test_keys.py: the C side's keys
 * (common/keys.h). Usage: fid_driver NBUCKETS NSHARDS. Reads
 * "slot<TAB>value" lines on stdin and prints per line
 *   slot_id fid bucket owner dense_home
 * (dense_home of the value taken as a block name). Built by meson
 * (clients/python/meson.build). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keys.h"

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    uint32_t nbuckets = (uint32_t)strtoul(argv[1], NULL, 10);
    uint32_t nshards = (uint32_t)strtoul(argv[2], NULL, 10);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        if (line[n - 1] == '\n')
            line[--n] = '\0';
        char *tab = memchr(line, '\t', (size_t)n);
        if (!tab) {
            fprintf(stderr, "fid_driver: line without a tab\n");
            return 2;
        }
        *tab = '\0';
        const char *value = tab + 1;
        uint16_t sid = ps_slot_id(line);
        uint64_t fid = ps_fid(sid, value, (size_t)(line + n - value));
        printf("%u %" PRIu64 " %u %u %u\n", sid, fid, ps_bucket(fid, nbuckets),
               ps_key_owner(fid, nbuckets, nshards), ps_dense_home(value, nshards));
    }
    free(line);
    return 0;
}
