#pragma once
/* Config-key tables: how the keys of an INI section land in the fields of a
 * C struct. Every section is one: [cluster], [server] and [table.*]
 * (config.c), the dense part of [model] (config.c), [input]
 * (worker/parse.c), [model] and [worker] (worker/wconfig.c).
 *
 * A section is an array of ps_config_key, one entry per key, built with the
 * PS_KEY_* macros below: the key's name, the type of its value, where the
 * value lives in the section's struct (offsetof, checked against the type
 * at compile time) and its limits. ps_config_key_set() finds a key by name
 * and parses a value into the struct; the loader adds "FILE:LINE: [section]
 * key 'k': " to the reason. Because each entry says where its value lives
 * and how it is typed, a table can be walked the other way too, to write
 * every key's effective value back out (an exported model's manifest, say):
 * all types but PS_KT_CUSTOM hold everything that needs; a CUSTOM key points
 * at its field but would need a formatting function next to its parser.
 *
 * Parsing is strict and all or nothing: a value that does not parse, is out
 * of range or fails the key's check leaves the struct as it was and returns
 * PS_ECONFIG with a one-line reason ("expected an integer in [1, 65536],
 * got '0'"); -ENOMEM when a list cannot grow. Values arrive as libinih hands
 * them over: trimmed, inline comment removed. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    PS_KT_BOOL,    /* bool: true | yes | 1, false | no | 0 */
    PS_KT_U32,     /* uint32_t in [umin, umax] */
    PS_KT_U64,     /* uint64_t in [umin, umax] */
    PS_KT_SIZE,    /* size_t in [umin, umax] */
    PS_KT_DOUBLE,  /* finite double in [dmin, dmax] */
    PS_KT_STRING,  /* char[size]: at most size - 1 characters, then check */
    PS_KT_ENUM,    /* an enum (int-sized): the index of the value in names */
    PS_KT_STRINGS, /* comma list into an owned char ** and its count */
    PS_KT_NAMES,   /* comma list into char[cap][size] and a uint32_t count */
    PS_KT_U32S,    /* comma list into uint32_t[cap] and a uint32_t count,
                    * each in [umin, umax] */
    PS_KT_CUSTOM,  /* parse() does it all (its field is at offset) */
} ps_config_key_type;

/* Flags of list keys. Without PS_KEY_APPEND a list replaces the previous
 * one: a repeated key appends only with it (slots, shards). Empty items
 * ("a,,b") are skipped unless PS_KEY_EMPTY_ITEMS hands them to check. */
#define PS_KEY_APPEND 1u
#define PS_KEY_EMPTY_ITEMS 2u

typedef struct ps_config_key ps_config_key;
struct ps_config_key {
    const char *name;
    ps_config_key_type type;
    size_t offset;               /* the value's field in the section struct */
    size_t size;                 /* STRING, NAMES: bytes of one string */
    size_t count_offset;         /* lists: the item count's field */
    size_t count_size;           /* ... its width, 4 or 8 bytes */
    size_t cap;                  /* NAMES, U32S: the array's length */
    uint64_t umin, umax;         /* integer types, U32S items: inclusive */
    double dmin, dmax;           /* DOUBLE: inclusive */
    const char *const *names;    /* ENUM: borrowed, static */
    size_t nnames;
    unsigned flags;              /* PS_KEY_APPEND, PS_KEY_EMPTY_ITEMS */
    /* What the key applies to, as the section defines it (a bit per
     * optimizer in [table.*], per input format in [input]); 0 = always.
     * The section rejects a key set outside its scope once it knows. */
    unsigned scope;
    /* STRING, STRINGS (each item), NAMES (each item), optional: accept
     * s[0..len) (not NUL-terminated) or write a reason and return < 0. */
    int (*check)(const ps_config_key *k, const char *s, size_t len, char *err, size_t errlen);
    /* CUSTOM: parse value into obj; same contract as ps_config_key_parse. */
    int (*parse)(const ps_config_key *k, void *obj, const char *value, char *err, size_t errlen);
};

/* The key named `name` in keys[0..n), or NULL. */
const ps_config_key *ps_config_key_find(const ps_config_key *keys, size_t n, const char *name);

/* Parse value into key k's field of obj, the section's struct. 0, or
 * PS_ECONFIG with a reason in err (obj unchanged), or -ENOMEM. */
int ps_config_key_parse(const ps_config_key *k, void *obj, const char *value, char *err,
                        size_t errlen);

/* ps_config_key_find() then ps_config_key_parse(). An unknown name is
 * PS_ECONFIG with the reason "unknown key". On success *ret_key (when
 * ret_key is not NULL) is the key's entry, e.g. to note that it was set. */
int ps_config_key_set(const ps_config_key *keys, size_t n, void *obj, const char *name,
                      const char *value, const ps_config_key **ret_key, char *err, size_t errlen);

/* Write key k's value in obj as text the INI file could hold: parsing it
 * back gives the same value (doubles in the shorter of %.15g and %.17g that
 * parses back exactly; lists joined with ", "; booleans true/false).
 * PS_ECONFIG for a CUSTOM key (its section formats it), -ERANGE for a
 * double no file can hold (accum_max's default, infinity: "no bound"),
 * -ENOSPC when out is too small. */
int ps_config_key_format(const ps_config_key *k, const void *obj, char *out, size_t outlen);

/* Free what the keys' fields of obj own (PS_KT_STRINGS lists) and leave
 * them empty. */
void ps_config_keys_free(const ps_config_key *keys, size_t n, void *obj);

/* ---- table entries ------------------------------------------------------
 * PS_KEY_X(NAME, T, F, ...) describes key NAME stored in field F of struct
 * T (F may be a path such as opt.alpha); the optional trailing arguments
 * are more designated initializers (.scope = ..., .check = ...). A field
 * whose type does not fit the key type fails to compile. */

#define PS_KEY_FIELD_(T, F, CT)                                                                   \
    (offsetof(T, F) + 0 * sizeof(struct {                                                        \
         _Static_assert(_Generic(((T *)0)->F, CT: 1, default: 0), #T "." #F " is not " #CT);     \
         int unused_;                                                                            \
     }))
#define PS_KEY_FIELD_SIZE_(T, F, SZ)                                                              \
    (offsetof(T, F) + 0 * sizeof(struct {                                                        \
         _Static_assert(sizeof(((T *)0)->F) == (SZ), #T "." #F " has the wrong size");           \
         int unused_;                                                                            \
     }))
#define PS_KEY_COUNT_(T, C)                                                                       \
    .count_offset = offsetof(T, C), .count_size = sizeof(((T *)0)->C)

#define PS_KEY_BOOL(NAME, T, F, ...)                                                              \
    {.name = NAME, .type = PS_KT_BOOL, .offset = PS_KEY_FIELD_(T, F, bool), __VA_ARGS__}
#define PS_KEY_U32(NAME, T, F, LO, HI, ...)                                                       \
    {.name = NAME, .type = PS_KT_U32, .offset = PS_KEY_FIELD_(T, F, uint32_t), .umin = (LO),    \
     .umax = (HI), __VA_ARGS__}
#define PS_KEY_U64(NAME, T, F, LO, HI, ...)                                                       \
    {.name = NAME, .type = PS_KT_U64, .offset = PS_KEY_FIELD_(T, F, uint64_t), .umin = (LO),    \
     .umax = (HI), __VA_ARGS__}
#define PS_KEY_SIZE(NAME, T, F, LO, HI, ...)                                                      \
    {.name = NAME, .type = PS_KT_SIZE, .offset = PS_KEY_FIELD_(T, F, size_t), .umin = (LO),     \
     .umax = (HI), __VA_ARGS__}
#define PS_KEY_DOUBLE(NAME, T, F, LO, HI, ...)                                                    \
    {.name = NAME, .type = PS_KT_DOUBLE, .offset = PS_KEY_FIELD_(T, F, double), .dmin = (LO),   \
     .dmax = (HI), __VA_ARGS__}
#define PS_KEY_STRING(NAME, T, F, ...)                                                            \
    {.name = NAME, .type = PS_KT_STRING, .offset = PS_KEY_FIELD_(T, F, char *),                 \
     .size = sizeof(((T *)0)->F), __VA_ARGS__}
/* NAMES_ARRAY: an array (not a pointer) of the enum's names, in enum order. */
#define PS_KEY_ENUM(NAME, T, F, NAMES_ARRAY, ...)                                                 \
    {.name = NAME, .type = PS_KT_ENUM, .offset = PS_KEY_FIELD_SIZE_(T, F, sizeof(int)),         \
     .names = (NAMES_ARRAY), .nnames = sizeof(NAMES_ARRAY) / sizeof((NAMES_ARRAY)[0]),         \
     __VA_ARGS__}
#define PS_KEY_STRINGS(NAME, T, F, COUNT, ...)                                                    \
    {.name = NAME, .type = PS_KT_STRINGS, .offset = PS_KEY_FIELD_(T, F, char **),               \
     PS_KEY_COUNT_(T, COUNT), __VA_ARGS__}
#define PS_KEY_NAMES(NAME, T, F, COUNT, ...)                                                      \
    {.name = NAME, .type = PS_KT_NAMES, .offset = PS_KEY_FIELD_(T, F[0], char *),               \
     .size = sizeof(((T *)0)->F[0]), .cap = sizeof(((T *)0)->F) / sizeof(((T *)0)->F[0]),      \
     PS_KEY_COUNT_(T, COUNT), __VA_ARGS__}
#define PS_KEY_U32S(NAME, T, F, COUNT, LO, HI, ...)                                               \
    {.name = NAME, .type = PS_KT_U32S, .offset = PS_KEY_FIELD_(T, F, uint32_t *),               \
     .cap = sizeof(((T *)0)->F) / sizeof(((T *)0)->F[0]), PS_KEY_COUNT_(T, COUNT),             \
     .umin = (LO), .umax = (HI), __VA_ARGS__}
#define PS_KEY_CUSTOM(NAME, T, F, PARSE, ...)                                                     \
    {.name = NAME, .type = PS_KT_CUSTOM, .offset = offsetof(T, F), .size = sizeof(((T *)0)->F), \
     .parse = (PARSE), __VA_ARGS__}
