#pragma once
/* The checks every input-line parser target shares (worker/parse.h).
 *
 * fuzz_parse_line() hands one line to ps_parser_parse() in an exact-size heap
 * copy (so ASan sees any read past the line's end, which a slice of the
 * fuzzer's buffer would hide), then checks the result against the contract
 * in parse.h:
 *   - the return code is 0 or PS_EPARSE (ENOMEM cannot happen at these
 *     sizes);
 *   - a reason is one short line of printable ASCII, whatever the input;
 *   - an example has a 0/1 label (NAN when unlabelled), ndense as the
 *     parser says, finite values, and every feature's fid carries its slot's
 *     16-bit id in the top bits, with a slot index inside the slot list;
 *   - the same line with "\n" or "\r\n" appended parses identically;
 *   - the format's own reference model (a callback, written independently
 *     of parse.c) agrees with every fid, value and label.
 * A violation traps. */

#include <stdbool.h>
#include <stddef.h>

#include "parse.h"

/* Called after a successful parse with the line as the parser saw it (line
 * ending stripped). It traps on disagreement. */
typedef void (*fuzz_reference_fn)(void *ctx, const ps_parser *p, const char *line, size_t len,
                                  const ps_example *ex);

typedef struct fuzz_parser {
    ps_parser *p;                /* owned */
    bool labelled;
    ps_example ex, ex2;          /* reused from line to line, as the worker does */
    fuzz_reference_fn ref;
    void *ref_ctx;
} fuzz_parser;

/* Build a parser from [input] settings: a NULL-terminated list of key,
 * value pairs. The settings are fixed by the target, so a refusal traps. */
void fuzz_parser_init(fuzz_parser *fp, const char *const *kv, fuzz_reference_fn ref, void *ref_ctx);
void fuzz_parser_deinit(fuzz_parser *fp);

/* Parse one line (no '\n' in it) with every check; returns the parse's
 * result. */
int fuzz_parse_line(fuzz_parser *fp, const char *line, size_t len);
/* fuzz_parse_line() on every '\n'-separated line of [pos, end). */
void fuzz_parse_lines(fuzz_parser *fp, const char *pos, const char *end);
/* The same for a CSV header line (ps_parser_header). */
int fuzz_parse_header(fuzz_parser *fp, const char *line, size_t len);

/* Helpers for the reference models. */
/* Strip a trailing "\r" as the parsers do (the "\n" is already gone). */
size_t fuzz_strip_cr(const char *line, size_t len);
/* Split [s, s+n) on sep into at most max fields (pointer and length each);
 * returns the number of fields there are, which may exceed max (then only
 * max are filled). An empty string is one empty field. */
size_t fuzz_split(const char *s, size_t n, char sep, const char **ret_f, size_t *ret_len,
                  size_t max);
/* Slot id of a name given as pointer + length. */
uint16_t fuzz_slot_id(const char *name, size_t n);

/* The reference models' tokenizer: the next token of [*pos, end), split on
 * runs of spaces and tabs (written apart from the parser's own). */
bool fuzz_next_token(const char **pos, const char *end, const char **ret_t, size_t *ret_n);
