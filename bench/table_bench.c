/* One table's push and pull in process: no network, no push log, no
 * write-back (the rows stay dirty in memory), so what it times is the
 * memory tier's own work per row, the part of a shard's loop thread that
 * grows with the rows a request carries: finding each key's row, the
 * optimizer step, marking it dirty. A steadier figure than shard_bench's
 * on a shared machine, and one a profiler sees alone.
 *
 * Creates --keys dim-16 FTRL rows by push (printing ns per row created,
 * which includes faulting in fresh memory), then times --requests requests
 * of --batch sorted random keys over them, --runs times, and prints the
 * median (and range) of ns per row for each phase. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchutil.h"
#include "config.h"
#include "fsutil.h"
#include "store.h"
#include "table.h"

#define DIM 16

typedef struct opts {
    uint64_t keys;
    uint32_t batch, requests, runs;
    const char *ops;
    const char *dir;
} opts;

static void usage(FILE *f) {
    fprintf(f,
            "usage: table_bench [options]\n"
            "  --keys N       rows created first (default 1000000)\n"
            "  --batch K      keys per request, sorted, drawn uniformly (default 10000)\n"
            "  --requests R   requests per timed run (default 200)\n"
            "  --runs R       timed runs per phase; medians are printed (default 5, at most %d)\n"
            "  --ops LIST     phases: push,pull (default both)\n"
            "  --dir DIR      the table's RocksDB directory (default /tmp/ctrps-table-bench); wiped\n",
            BENCH_MAX_RUNS);
}

static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void report(const char *name, const double *ns, uint32_t runs) {
    double lo = ns[0], hi = ns[0];
    for (uint32_t i = 1; i < runs; i++) {
        lo = ns[i] < lo ? ns[i] : lo;
        hi = ns[i] > hi ? ns[i] : hi;
    }
    double med = bench_median(ns, runs);
    printf("%s_ns_per_row %.1f (%.1f-%.1f)\n", name, med, lo, hi);
    printf("%s_rows_per_sec %.0f\n", name, 1e9 / med);
}

int main(int argc, char **argv) {
    opts o = {.keys = 1000000, .batch = 10000, .requests = 200, .runs = 5, .ops = "push,pull",
              .dir = "/tmp/ctrps-table-bench"};
    static const struct option lopts[] = {
        {"keys", required_argument, NULL, 'k'},     {"batch", required_argument, NULL, 'b'},
        {"requests", required_argument, NULL, 'r'}, {"runs", required_argument, NULL, 'n'},
        {"ops", required_argument, NULL, 'o'},      {"dir", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
        switch (c) {
        case 'k': o.keys = strtoull(optarg, NULL, 10); break;
        case 'b': o.batch = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'r': o.requests = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'n': o.runs = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'o': o.ops = optarg; break;
        case 'd': o.dir = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || o.keys == 0 || o.batch == 0 || o.requests == 0 || o.runs == 0 ||
        o.runs > BENCH_MAX_RUNS) {
        usage(stderr);
        return 2;
    }
    char err[512] = "";
    ps_rm_tree(o.dir);
    const char *cfs[] = {"t.emb", "meta"};
    ps_store *store;
    if (ps_store_open(o.dir, cfs, 2, NULL, &store, err, sizeof(err)) < 0) {
        fprintf(stderr, "table_bench: %s: %s\n", o.dir, err);
        return 1;
    }
    ps_table_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    snprintf(cfg.name, sizeof(cfg.name), "emb");
    cfg.dim = DIM;
    cfg.opt.kind = PS_OPT_FTRL;
    cfg.opt.alpha = 0.05;
    cfg.opt.beta = 1.0;
    cfg.opt.lambda1 = 0.01;
    cfg.opt.lambda2 = 0.001;
    cfg.opt.accum_max = INFINITY;
    cfg.init = PS_INIT_NORMAL;
    cfg.init_std = 0.01;
    cfg.seed = 1;
    cfg.admit_probability = 1.0;
    ps_table *t;
    if (ps_table_new(&cfg, 1024, 2 * o.keys, store, 0, 0, &t) < 0) {
        fprintf(stderr, "table_bench: no memory for %" PRIu64 " rows\n", o.keys);
        return 1;
    }
    /* As a shard opens it: the store is empty, so no miss reads it. */
    if (ps_table_load_state(t, 1, err, sizeof(err)) < 0) {
        fprintf(stderr, "table_bench: %s\n", err);
        return 1;
    }
    uint64_t rng = 88172645463325252ULL;
    uint64_t *all = malloc(o.keys * sizeof(uint64_t));
    uint64_t *reqs = malloc((size_t)o.requests * o.batch * sizeof(uint64_t));
    float *grads = malloc((size_t)o.batch * DIM * sizeof(float));
    float *vals = malloc((size_t)o.batch * DIM * sizeof(float));
    if (!all || !reqs || !grads || !vals) {
        fprintf(stderr, "table_bench: out of memory\n");
        return 1;
    }
    for (uint64_t i = 0; i < o.keys; i++)
        all[i] = xorshift(&rng);
    for (size_t i = 0; i < (size_t)o.batch * DIM; i++)
        grads[i] = (float)((double)(xorshift(&rng) % 2001) - 1000.0) * 1e-4f;
    uint32_t applied, dropped;
    double t0 = bench_now_s();
    for (uint64_t i = 0; i < o.keys; i += o.batch) {
        size_t n = o.keys - i < o.batch ? (size_t)(o.keys - i) : o.batch;
        memcpy(reqs, all + i, n * sizeof(uint64_t));
        qsort(reqs, n, sizeof(uint64_t), cmp_u64);
        if (ps_table_push(t, reqs, n, grads, &applied, &dropped, err, sizeof(err)) < 0) {
            fprintf(stderr, "table_bench: create: %s\n", err);
            return 1;
        }
    }
    printf("# table_bench keys=%" PRIu64 " batch=%u requests=%u runs=%u\n", o.keys, o.batch,
           o.requests, o.runs);
    printf("create_ns_per_row %.1f\n", (bench_now_s() - t0) * 1e9 / (double)o.keys);
    for (uint32_t r = 0; r < o.requests; r++) {
        uint64_t *k = reqs + (size_t)r * o.batch;
        for (uint32_t j = 0; j < o.batch; j++)
            k[j] = all[xorshift(&rng) % o.keys];
        qsort(k, o.batch, sizeof(uint64_t), cmp_u64);
    }
    static const char *const phases[] = {"push", "pull"};
    for (int ph = 0; ph < 2; ph++) {
        if (!strstr(o.ops, phases[ph]))
            continue;
        double ns[BENCH_MAX_RUNS];
        for (uint32_t run = 0; run < o.runs; run++) {
            double s = bench_now_s();
            for (uint32_t r = 0; r < o.requests; r++) {
                uint64_t *k = reqs + (size_t)r * o.batch;
                int rc = ph == 0 ? ps_table_push(t, k, o.batch, grads, &applied, &dropped, err, sizeof(err))
                                 : ps_table_pull(t, k, o.batch, vals, err, sizeof(err));
                if (rc < 0) {
                    fprintf(stderr, "table_bench: %s: %s\n", phases[ph], err);
                    return 1;
                }
            }
            ns[run] = (bench_now_s() - s) * 1e9 / ((double)o.requests * o.batch);
        }
        report(phases[ph], ns, o.runs);
    }
    ps_table_free(t);
    ps_store_close(store);
    ps_rm_tree(o.dir);
    free(all);
    free(reqs);
    free(grads);
    free(vals);
    return 0;
}
