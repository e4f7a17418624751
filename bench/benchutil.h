#pragma once
/* Helpers the C benchmark drivers share: a monotonic clock, medians of a
 * few repetitions, and the benchmark key space. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keys.h"

#define BENCH_MAX_RUNS 16

static inline double bench_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of n <= BENCH_MAX_RUNS values; v is left as it was. */
static inline double bench_median(const double *v, uint32_t n) {
    double s[BENCH_MAX_RUNS];
    memcpy(s, v, n * sizeof(double));
    qsort(s, n, sizeof(double), bench_cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* Rank -> fid of slot C1: scattered, so popularity does not follow key
 * order, and spread evenly over the buckets. */
static inline uint64_t bench_rank_fid(uint64_t rank) {
    return ((uint64_t)ps_slot_id("C1") << PS_FID_VALUE_BITS) | (ps_mix64(rank + 1) & PS_FID_VALUE_MASK);
}
