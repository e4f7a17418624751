#pragma once
/* Prometheus text exposition (format 0.0.4), written into a ps_buf: one
 * writer for the shard's and the worker's /metrics, so that every family
 * gets its HELP and TYPE once, label values are escaped, and histograms
 * have cumulative buckets, _sum and _count, the way `promtool check
 * metrics` wants them.
 *
 * Samples belong to the family named last; a family named again right
 * after itself (one family walked over several tables) is not repeated.
 * Families must not be interleaved: name each one once, then its samples.
 * Errors (out of memory) are remembered and returned by ps_prom_finish().
 *
 * Names follow Prometheus conventions, which the callers keep: base units
 * in the name (_seconds, _bytes), counters end in _total, and what varies
 * (method, table, shard) is a label, never part of the name. */

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef enum { PS_PROM_COUNTER, PS_PROM_GAUGE, PS_PROM_HISTOGRAM } ps_prom_type;

typedef struct ps_prom {
    ps_buf *out;                 /* borrowed */
    const char *const_labels;    /* rendered pairs added to every sample ("" = none) */
    char family[128];            /* the current family's name */
    ps_prom_type type;
    int err;
} ps_prom;

/* const_labels: rendered by ps_prom_labels() (borrowed while writing). */
void ps_prom_init(ps_prom *p, ps_buf *out, const char *const_labels);
/* Start a family: "# HELP" and "# TYPE" lines, unless it is the current one. */
void ps_prom_family(ps_prom *p, const char *name, ps_prom_type type, const char *help);
/* One sample of the current counter or gauge; labels "" or from ps_prom_labels(). */
void ps_prom_u64(ps_prom *p, const char *labels, uint64_t value);
void ps_prom_f64(ps_prom *p, const char *labels, double value);
/* family + one unlabelled sample, for the many scalar metrics. */
void ps_prom_scalar(ps_prom *p, const char *name, ps_prom_type type, const char *help, double value);
/* 0, or the first error (-ENOMEM, -ENAMETOOLONG). */
int ps_prom_finish(const ps_prom *p);

/* Render label pairs (name, value, name, value, ..., NULL) into ret, values
 * escaped (backslash, double quote, newline): `a="x",b="y"`. Returns 0 or
 * -ENAMETOOLONG when ret is too small. */
int ps_prom_labels(char *ret, size_t len, ...) __attribute__((sentinel));

/* A latency histogram shared between the thread that observes and the one
 * that renders: relaxed atomics, no lock. Bucket bounds (seconds) are
 * fixed: 100 us to 10 s, three per decade. */
#define PS_PROM_LATENCY_BUCKETS 16

typedef struct ps_prom_histogram {
    _Atomic uint64_t counts[PS_PROM_LATENCY_BUCKETS + 1];  /* the last is +Inf */
    _Atomic uint64_t sum_ns;
} ps_prom_histogram;

void ps_prom_histogram_observe(ps_prom_histogram *h, uint64_t ns);
/* The _bucket, _sum and _count samples of the current histogram family. */
void ps_prom_histogram_write(ps_prom *p, const char *labels, const ps_prom_histogram *h);

/* A monotonic clock in nanoseconds, for timing what goes in a histogram. */
uint64_t ps_prom_now_ns(void);
