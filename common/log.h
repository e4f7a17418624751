#pragma once
/* Logging for the daemons and tools: one line per event on stderr with a UTC
 * timestamp, the level and the program name. Library modules do not log; they
 * return codes and the daemon logs once, where the error is handled. */

#include <stdarg.h>

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

#define ps_debug(...) ps_log(PS_LOG_DEBUG, __VA_ARGS__)
#define ps_info(...) ps_log(PS_LOG_INFO, __VA_ARGS__)
#define ps_warn(...) ps_log(PS_LOG_WARN, __VA_ARGS__)
#define ps_error(...) ps_log(PS_LOG_ERROR, __VA_ARGS__)
