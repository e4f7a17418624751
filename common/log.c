#include "log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "text.h"

static const char *const ps_log_level_names[PS_LOG_LEVEL_COUNT] = {PS_LOG_LEVEL_MAP(PS_ENUM_STR)};
PS_ENUM_FUNCTIONS(ps_log_level, ps_log_level, PS_LOG_LEVEL_COUNT)

static const char *log_program = "ctrps";
static ps_log_level log_min = PS_LOG_INFO;

void ps_log_init(const char *program, ps_log_level min_level) {
    log_program = program;
    log_min = min_level;
}

void ps_log(ps_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ps_logv(level, fmt, ap);
    va_end(ap);
}

bool ps_log_limited(ps_log_limit *l, ps_log_level level, const char *fmt, ...) {
    if (level < log_min)
        return false;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    if (now < l->next_ms) {
        l->suppressed++;
        return false;
    }
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (l->suppressed)
        ps_log(level, "%s (%llu more like it suppressed)", msg, (unsigned long long)l->suppressed);
    else
        ps_log(level, "%s", msg);
    l->suppressed = 0;
    l->next_ms = now + PS_LOG_LIMIT_MS;
    return true;
}

void ps_logv(ps_log_level level, const char *fmt, va_list ap) {
    if (level < log_min)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[2048];
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, ps_log_level_name(level), log_program);
    if (n > 0 && (size_t)n < sizeof(line))
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    /* One write per line so lines from several threads never interleave. */
    size_t len = strnlen(line, sizeof(line) - 2);
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
}
