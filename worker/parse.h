#pragma once
/* Input-line parsers for the worker (DESIGN.md "The worker"): Criteo TSV,
 * CSV with a header line (Avazu), libsvm, and the generic
 * `label slot:value ...` format, plus the [input] config section that picks
 * one of them.
 *
 * A parser turns one line (pointer + length; no NUL needed, the buffer is
 * never written) into a ps_example: a 0/1 label, sparse features and a dense
 * vector. Each feature carries its fid (common/keys.h: slot id in the top 16
 * bits, XXH3 of the raw value token in the low 48) and the index of its slot
 * in the parser's slot list, so the worker maps slot -> table with one array
 * lookup per feature.
 *
 * Formats:
 *   criteo  label, I1..I13, C1..C26, tab-separated (40 fields; 39 with
 *           `labelled = false`, the layout of Criteo's unlabelled test file).
 *           Empty fields are missing and produce nothing. The integers are
 *           either bucketized (`integers = bucketize`, the default: slot In
 *           gets the token "b", b = floor(ln(x)^2) for x > 2, else x itself;
 *           negative x keep their own token "-1") or dense
 *           (`integers = dense`: dense[n-1] = ln(1+x), 0 when missing or
 *           negative), in which case the slot list is C1..C26 only.
 *   csv     comma-separated, first line a header naming the columns. The
 *           label column (`label_column`, default click) must be 0/1; the
 *           `ignore_columns` (default id) are skipped; every other column is a
 *           categorical slot named by its header. Quotes are not interpreted:
 *           a field is the raw bytes between commas (Avazu has no quotes; a
 *           quoted comma shows up as a field-count error, never as a silent
 *           shift). Empty fields are missing.
 *   libsvm  `label idx:val idx:val ...`, label 0/1 or -1/+1; idx (decimal
 *           digits) becomes the value token of one slot (`libsvm_slot`,
 *           default f); val, a finite number, becomes the feature's value.
 *   slots   `label slot:value slot:value ...`; a slot may repeat (a behaviour
 *           sequence `hist:a hist:b`); the value is everything after the
 *           first ':' and is hashed raw.
 *   libsvm and slots split on runs of spaces and tabs.
 *
 * Every format accepts a trailing "\n" or "\r\n" (CRLF files parse; a CSV
 * header may start with a UTF-8 byte-order mark), and
 * rejects with PS_EPARSE and a short reason: a line longer than
 * max_line_bytes, an empty line, an embedded NUL byte, invalid UTF-8, a wrong
 * field count, a label that is not 0/1, a malformed number or pair. Reasons
 * quote at most 32 bytes of the offending token with non-printable bytes
 * shown as '?', so a log line stays one short line whatever the input.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* ---- [input] configuration -------------------------------------------- */

#define PS_INPUT_FORMAT_MAP(XX)                                                \
    XX(CRITEO, "criteo")                                                       \
    XX(CSV, "csv")                                                             \
    XX(LIBSVM, "libsvm")                                                       \
    XX(SLOTS, "slots")

typedef enum ps_input_format {
#define PS_INPUT_FORMAT_ENUM(name, str) PS_INPUT_##name,
    PS_INPUT_FORMAT_MAP(PS_INPUT_FORMAT_ENUM)
#undef PS_INPUT_FORMAT_ENUM
    PS_INPUT_FORMAT_COUNT
} ps_input_format;

#define PS_INTEGERS_MAP(XX)                                                    \
    XX(BUCKETIZE, "bucketize")                                                 \
    XX(DENSE, "dense")

typedef enum ps_integers_mode {
#define PS_INTEGERS_ENUM(name, str) PS_INTEGERS_##name,
    PS_INTEGERS_MAP(PS_INTEGERS_ENUM)
#undef PS_INTEGERS_ENUM
    PS_INTEGERS_COUNT
} ps_integers_mode;

/* Static names ("criteo", "dense"), or "?" outside the enum. */
const char *ps_input_format_name(ps_input_format f);
const char *ps_integers_mode_name(ps_integers_mode m);

#define PS_CRITEO_INTS 13
#define PS_CRITEO_CATS 26

/* Keys of [input] (name = default):
 *   format = criteo           criteo | csv | libsvm | slots
 *   integers = bucketize      bucketize | dense                (criteo only)
 *   dense_integers =          I fields taken as dense whatever `integers` says
 *   bucketize_integers =      I fields bucketized whatever `integers` says
 *                             (comma lists of I1..I13, criteo only; so each
 *                             integer slot can be either)
 *   labelled = true           false: no label column, label = NAN
 *                                                     (criteo and csv only)
 *   label_column = click      (csv only)
 *   ignore_columns = id       comma list, may be empty         (csv only)
 *   libsvm_slot = f           (libsvm only)
 *   max_line_bytes = 65536    [64, 1 GiB]; longer lines are rejected
 *   max_slots = 1024          [1, 65535]; cap on distinct slots that CSV
 *                             headers and slots-format lines may introduce
 *   id_column = 0             [0, 65535]; 1-based column whose raw text
 *                             `ctrps-worker --predict` writes before each
 *                             probability (0: none); columns are split as
 *                             the format splits them (tab, comma, runs of
 *                             blanks). The parser still parses the whole
 *                             line: for csv, name the column in
 *                             ignore_columns (Avazu's id is by default)
 *   kafka_group = ctrps       group.id under which a kafka:// input's
 *                             offsets are committed (worker/kafka.h)
 *   kafka_properties =        comma list of key=value librdkafka consumer
 *                             properties (security.protocol=ssl, ...)
 * A key that does not apply to the chosen format is rejected by
 * ps_input_config_check(), as config.c does for optimizer keys: a silently
 * ignored setting is a bug nobody sees. */
typedef struct ps_input_config {
    ps_input_format format;
    ps_integers_mode integers;
    uint16_t dense_integers;     /* bit i: I(i+1) listed in dense_integers */
    uint16_t bucketize_integers; /* bit i: I(i+1) listed in bucketize_integers */
    bool labelled;
    char label_column[PS_NAME_MAX];
    char **ignore_columns;       /* owned: each string and the array */
    size_t nignore_columns;
    char libsvm_slot[PS_NAME_MAX];
    uint32_t max_line_bytes;
    uint32_t max_slots;
    uint32_t id_column;
    char kafka_group[PS_NAME_MAX];
    char **kafka_properties;     /* owned: each string and the array */
    size_t nkafka_properties;
    uint32_t keys_set;           /* bit per key set explicitly (for _check) */
} ps_input_config;

/* Defaults as listed above. ps_input_config_deinit() frees the lists;
 * returns -ENOMEM if the default ignore list cannot be allocated. */
int ps_input_config_init(ps_input_config *c);
void ps_input_config_deinit(ps_input_config *c);
/* Set one key from its INI text (already trimmed, inline comment removed, as
 * libinih hands it over). Unknown key or bad value: PS_ECONFIG and a reason
 * in err (no file or line: the config loader adds them); c keeps its old
 * value for that key. */
int ps_input_config_set(ps_input_config *c, const char *key, const char *value, char *err,
                        size_t errlen);
/* Reject combinations once the whole section was read (a key set for another
 * format). PS_ECONFIG and a reason. */
int ps_input_config_check(const ps_input_config *c, char *err, size_t errlen);
/* Column col (1-based) of a line as format c->format splits it: its raw
 * bytes (borrowed from line). -ENOENT when the line has fewer columns. */
int ps_input_column(const ps_input_config *c, const char *line, size_t len, uint32_t col,
                    const char **ret_text, size_t *ret_len);
/* Whether Criteo integer field i (0-based: I1 is 0) is a dense input. */
bool ps_input_integer_is_dense(const ps_input_config *c, int i);

/* ---- Examples ----------------------------------------------------------- */

typedef struct ps_feature {
    uint64_t fid;                /* ps_fid(slot_id, raw value token) */
    float value;                 /* 1, or the libsvm value */
    uint16_t slot_id;            /* == ps_fid_slot(fid) */
    uint16_t slot;               /* index into the parser's slot list */
} ps_feature;

/* One parsed line. Visible because the worker's batching loop reads it per
 * feature. The arrays are owned by the example and reused from line to line:
 * they grow when a line needs more room and never shrink, so after the first
 * few lines parsing allocates nothing. Contents are valid until the next
 * parse into the same example. */
typedef struct ps_example {
    float label;                 /* 0 or 1; NAN when the input is unlabelled */
    uint32_t nfeatures;
    uint32_t ndense;
    ps_feature *features;        /* owned; nfeatures valid */
    float *dense;                /* owned; ndense valid */
    uint32_t features_cap, dense_cap;
} ps_example;

void ps_example_init(ps_example *ex);
void ps_example_deinit(ps_example *ex);

/* ---- Parser ------------------------------------------------------------- */

/* Opaque. States: new -> (csv: header) -> parse, parse, ...; a csv parser
 * takes a new header at the start of each file (the column order may change
 * between files). The slot list only grows: indices handed out stay valid for
 * the parser's life. criteo and libsvm fix it at construction; csv headers
 * and slots-format lines add slots the first time they name one. Not thread
 * safe: one parser per reader thread. */
typedef struct ps_parser ps_parser;

/* Build a parser from a checked config (the config is copied; the caller may
 * free it). PS_ECONFIG with a reason, or -ENOMEM. On success *ret_parser is
 * owned by the caller: ps_parser_free(). */
int ps_parser_new(const ps_input_config *c, ps_parser **ret_parser, char *err, size_t errlen);
void ps_parser_free(ps_parser *p);

/* True for csv: the first line of every file goes to ps_parser_header(). */
bool ps_parser_wants_header(const ps_parser *p);
/* Read a CSV header line (same line rules as ps_parser_parse). Rejects a
 * missing label column (when labelled), duplicate or empty column names, a
 * name of PS_NAME_MAX bytes or more, and a new slot whose 16-bit id collides
 * with another slot's: PS_EPARSE with a reason; the previous header, if any,
 * stays in force. -ENOMEM possible. Other formats: PS_EPARSE. */
int ps_parser_header(ps_parser *p, const char *line, size_t len, char *err, size_t errlen);
/* Parse one line into ex (its old contents are replaced). Returns 0,
 * PS_EPARSE with a reason in err (ex then holds garbage; skip the line), or
 * -ENOMEM when ex cannot grow. Never aborts on any input. */
int ps_parser_parse(ps_parser *p, const char *line, size_t len, ps_example *ex, char *err,
                    size_t errlen);

/* The slot list: names (borrowed until ps_parser_free) and 16-bit ids. */
size_t ps_parser_nslots(const ps_parser *p);
const char *ps_parser_slot_name(const ps_parser *p, size_t slot);
uint16_t ps_parser_slot_id(const ps_parser *p, size_t slot);
/* Index of a slot by name, or -1. */
int ps_parser_slot_index(const ps_parser *p, const char *name);
/* Length of the dense vector every example gets (13 for criteo with
 * integers = dense, else 0). */
uint32_t ps_parser_ndense(const ps_parser *p);
