/* Test driver for clients/python/tests/test_parse.py: what the worker's
 * parser (worker/parse.c) makes of each line. Arguments are [input] keys as
 * KEY=VALUE; stdin holds the lines (for csv the first one is the header).
 * Prints per line either
 *   ok LABEL fid:slot_id:value ... | dense ...
 * or
 *   err REASON
 * with floats as %.9g (exact for float32). Built by meson
 * (clients/python/meson.build). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse.h"

int main(int argc, char **argv) {
    ps_input_config c;
    char err[512];
    if (ps_input_config_init(&c) < 0)
        return 1;
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "parse_driver: argument '%s' is not KEY=VALUE\n", argv[i]);
            return 2;
        }
        *eq = '\0';
        if (ps_input_config_set(&c, argv[i], eq + 1, err, sizeof(err)) < 0) {
            fprintf(stderr, "parse_driver: %s: %s\n", argv[i], err);
            return 2;
        }
    }
    ps_parser *p;
    if (ps_parser_new(&c, &p, err, sizeof(err)) < 0) {
        fprintf(stderr, "parse_driver: %s\n", err);
        return 2;
    }
    ps_example ex;
    ps_example_init(&ex);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int first = 1;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        if (first && ps_parser_wants_header(p)) {
            first = 0;
            if (ps_parser_header(p, line, (size_t)n, err, sizeof(err)) < 0)
                printf("header err %s\n", err);
            else
                printf("header ok\n");
            continue;
        }
        first = 0;
        if (ps_parser_parse(p, line, (size_t)n, &ex, err, sizeof(err)) < 0) {
            printf("err %s\n", err);
            continue;
        }
        printf("ok %.9g", (double)ex.label);
        for (uint32_t k = 0; k < ex.nfeatures; k++)
            printf(" %" PRIu64 ":%u:%.9g", ex.features[k].fid, ex.features[k].slot_id,
                   (double)ex.features[k].value);
        printf(" |");
        for (uint32_t k = 0; k < ex.ndense; k++)
            printf(" %.9g", (double)ex.dense[k]);
        putchar('\n');
    }
    free(line);
    ps_example_deinit(&ex);
    ps_parser_free(p);
    ps_input_config_deinit(&c);
    return 0;
}
