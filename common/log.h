#pragma once
/* Logging for the daemons and tools: one line per event on stderr with a UTC
 * timestamp, the level and the program name. Library modules do not log; they
 * return codes and the daemon logs once, where the error is handled. */

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#define PS_LOG_LEVEL_MAP(XX)                                                   \
    XX(DEBUG, "debug")                                                         \
    XX(INFO, "info")                                                           \
    XX(WARN, "warn")                                                           \
    XX(ERROR, "error")

typedef enum {
#define PS_LOG_LEVEL_ENUM(name, str) PS_LOG_##name,
    PS_LOG_LEVEL_MAP(PS_LOG_LEVEL_ENUM)
#undef PS_LOG_LEVEL_ENUM
    PS_LOG_LEVEL_COUNT
} ps_log_level;

/* Static name ("warn"), or "?" outside the enum. */
const char *ps_log_level_name(ps_log_level level);
/* The value of a --log-level option: "debug", "info", "warn" or "error".
 * PS_ECONFIG for anything else, *ret_level untouched. */
int ps_log_level_parse(const char *s, ps_log_level *ret_level);

void ps_log_init(const char *program, ps_log_level min_level);
void ps_log(ps_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void ps_logv(ps_log_level level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* Rate-limited lines, for events a peer can cause at will (failed
 * authentications, refused requests): at most one line per limiter per
 * PS_LOG_LIMIT_MS; the lines in between are counted, and the next line that
 * passes says how many were suppressed. One limiter per reason, so a flood
 * of one kind does not hide another. A limiter is used by one thread (the
 * shard's loop); zero-initialize it. Returns true if the line was logged. */
#define PS_LOG_LIMIT_MS 1000
typedef struct ps_log_limit {
    uint64_t next_ms;            /* monotonic; lines before it are suppressed */
    uint64_t suppressed;
} ps_log_limit;
bool ps_log_limited(ps_log_limit *l, ps_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define ps_debug(...) ps_log(PS_LOG_DEBUG, __VA_ARGS__)
#define ps_info(...) ps_log(PS_LOG_INFO, __VA_ARGS__)
#define ps_warn(...) ps_log(PS_LOG_WARN, __VA_ARGS__)
#define ps_error(...) ps_log(PS_LOG_ERROR, __VA_ARGS__)
