#pragma once
/* Logging for the daemons and tools: one line per event on stderr with a UTC
 * timestamp, the level and the program name. Library modules do not log; they
 * return codes and the daemon logs once, where the error is handled. */

#include <stdarg.h>

typedef enum { PS_LOG_DEBUG, PS_LOG_INFO, PS_LOG_WARN, PS_LOG_ERROR } ps_log_level;

void ps_log_init(const char *program, ps_log_level min_level);
void ps_log(ps_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define ps_debug(...) ps_log(PS_LOG_DEBUG, __VA_ARGS__)
#define ps_info(...) ps_log(PS_LOG_INFO, __VA_ARGS__)
#define ps_warn(...) ps_log(PS_LOG_WARN, __VA_ARGS__)
#define ps_error(...) ps_log(PS_LOG_ERROR, __VA_ARGS__)
