#include "promtext.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const double latency_bounds[PS_PROM_LATENCY_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,   0.1,     0.25,   0.5,   1,     2.5,   5,    10};

void ps_prom_init(ps_prom *p, ps_buf *out, const char *const_labels) {
    memset(p, 0, sizeof(*p));
    p->out = out;
    p->const_labels = const_labels ? const_labels : "";
}

int ps_prom_finish(const ps_prom *p) { return p->err; }

static void put(ps_prom *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(ps_prom *p, const char *fmt, ...) {
    if (p->err)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || ps_buf_reserve(p->out, (size_t)n + 1) < 0) {
        p->err = -ENOMEM;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(p->out->data + p->out->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    p->out->len += (size_t)n;
}

static const char *type_name(ps_prom_type t) {
    return t == PS_PROM_COUNTER ? "counter" : t == PS_PROM_GAUGE ? "gauge" : "histogram";
}

void ps_prom_family(ps_prom *p, const char *name, ps_prom_type type, const char *help) {
    if (!strcmp(p->family, name))
        return;
    if (strlen(name) >= sizeof(p->family)) {
        p->err = p->err ? p->err : -ENAMETOOLONG;
        return;
    }
    strcpy(p->family, name);
    p->type = type;
    /* HELP text escapes only backslash and newline; ours have neither. */
    put(p, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type_name(type));
}

/* name{const,labels} with the right commas, or a bare name. */
static void sample_name(ps_prom *p, const char *suffix, const char *labels, const char *extra) {
    const char *parts[3] = {p->const_labels, labels ? labels : "", extra ? extra : ""};
    put(p, "%s%s", p->family, suffix);
    bool any = false;
    for (int i = 0; i < 3; i++) {
        if (!parts[i][0])
            continue;
        put(p, "%s%s", any ? "," : "{", parts[i]);
        any = true;
    }
    if (any)
        put(p, "}");
}

void ps_prom_u64(ps_prom *p, const char *labels, uint64_t value) {
    sample_name(p, "", labels, NULL);
    put(p, " %llu\n", (unsigned long long)value);
}

static void put_double(ps_prom *p, double v) {
    if (isnan(v))
        put(p, " NaN\n");
    else if (isinf(v))
        put(p, " %sInf\n", v > 0 ? "+" : "-");
    else
        put(p, " %.17g\n", v);
}

void ps_prom_f64(ps_prom *p, const char *labels, double value) {
    sample_name(p, "", labels, NULL);
    put_double(p, value);
}

void ps_prom_scalar(ps_prom *p, const char *name, ps_prom_type type, const char *help, double value) {
    ps_prom_family(p, name, type, help);
    ps_prom_f64(p, "", value);
}

int ps_prom_labels(char *ret, size_t len, ...) {
    va_list ap;
    va_start(ap, len);
    size_t at = 0;
    int r = 0;
    const char *name;
    while ((name = va_arg(ap, const char *)) != NULL) {
        const char *value = va_arg(ap, const char *);
        int n = snprintf(ret + at, len - at, "%s%s=\"", at ? "," : "", name);
        if (n < 0 || (size_t)n >= len - at) {
            r = -ENAMETOOLONG;
            break;
        }
        at += (size_t)n;
        for (const char *c = value; *c && r == 0; c++) {
            const char *esc = *c == '\\' ? "\\\\" : *c == '"' ? "\\\"" : *c == '\n' ? "\\n" : NULL;
            size_t need = esc ? 2 : 1;
            if (at + need >= len) {
                r = -ENAMETOOLONG;
                break;
            }
            if (esc)
                memcpy(ret + at, esc, 2);
            else
                ret[at] = *c;
            at += need;
        }
        if (r < 0 || at + 1 >= len) {
            r = -ENAMETOOLONG;
            break;
        }
        ret[at++] = '"';
        ret[at] = 0;
    }
    va_end(ap);
    if (r < 0 || len == 0)
        return -ENAMETOOLONG;
    ret[at] = 0;
    return 0;
}

void ps_prom_histogram_observe(ps_prom_histogram *h, uint64_t ns) {
    double s = (double)ns / 1e9;
    size_t i = 0;
    while (i < PS_PROM_LATENCY_BUCKETS && s > latency_bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

void ps_prom_histogram_write(ps_prom *p, const char *labels, const ps_prom_histogram *h) {
    /* _count is the sum of the buckets read here, so the cumulative counts
     * and _count agree even while another thread observes. */
    uint64_t cum = 0;
    for (size_t i = 0; i <= PS_PROM_LATENCY_BUCKETS; i++) {
        cum += atomic_load_explicit(&h->counts[i], memory_order_relaxed);
        char le[32];
        if (i < PS_PROM_LATENCY_BUCKETS)
            snprintf(le, sizeof(le), "le=\"%g\"", latency_bounds[i]);
        else
            snprintf(le, sizeof(le), "le=\"+Inf\"");
        sample_name(p, "_bucket", labels, le);
        put(p, " %llu\n", (unsigned long long)cum);
    }
    sample_name(p, "_sum", labels, NULL);
    put_double(p, (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9);
    sample_name(p, "_count", labels, NULL);
    put(p, " %llu\n", (unsigned long long)cum);
}

uint64_t ps_prom_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
