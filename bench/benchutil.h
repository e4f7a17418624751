#pragma once
/* Helpers the C benchmark drivers share: a monotonic clock, a process's
 * CPU time, medians of a few repetitions, and the benchmark key space. */

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

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

/* CPU seconds (user + system) of a /proc stat file: a process's or a
 * thread's. With prefix, only a thread whose name begins with it counts. */
static inline double bench_stat_cpu_s(const char *path, const char *prefix) {
    char buf[1024];
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *open = strchr(buf, '('), *p = strrchr(buf, ')');
    if (prefix && (!open || strncmp(open + 1, prefix, strlen(prefix))))
        return 0;
    unsigned long long ut = 0, st = 0;
    /* after "pid (comm)": state ppid pgrp session tty tpgid flags minflt
     * cminflt majflt cmajflt utime stime */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* CPU seconds (user + system) a process has used, from /proc. */
static inline double bench_cpu_s(pid_t pid) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    return bench_stat_cpu_s(path, NULL);
}

/* CPU seconds of a process's threads named prefix... (RocksDB's flush and
 * compaction threads: "rocksdb:"), living ones only. */
static inline double bench_threads_cpu_s(pid_t pid, const char *prefix) {
    char path[96];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    double total = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%d/task/%.16s/stat", (int)pid, e->d_name);
        total += bench_stat_cpu_s(path, prefix);
    }
    closedir(d);
    return total;
}

/* Rank -> fid of slot C1: scattered, so popularity does not follow key
 * order, and spread evenly over the buckets. */
static inline uint64_t bench_rank_fid(uint64_t rank) {
    return ((uint64_t)ps_slot_id("C1") << PS_FID_VALUE_BITS) | (ps_mix64(rank + 1) & PS_FID_VALUE_MASK);
}
