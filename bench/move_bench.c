/* Resharding benchmark: a move of a bucket range between two shards while a
 * client trains on every key (README "Resharding", common/move.h).
 *
 * Starts two ctrps-server processes on loopback (ports picked first and
 * written into the config: moved maps carry the config's addresses),
 * creates --rows dim-16 FTRL rows by Push (pushed rows are stored and so
 * moved; rows only a pull created live in memory only), picks the bucket
 * range of shard 0 that holds --move-rows of them, then, while a load thread
 * with its own client pulls and pushes batches of random keys over all rows,
 * moves the range with ps_move_range() --runs times, back and forth. Prints
 * per run: rows moved, seconds and rows/s of the copy, catch-up rounds, the
 * mover's pause (freeze to the source's new map), the longest request the
 * load saw during the move (the pause as a client sees it), pull and push
 * rows/s before, during and after the move, and the shards' CPU seconds;
 * then the medians. Last, with the shards stopped, it iterates the moved
 * range on the final owner's RocksDB with ps_store_iter (what EXPORT does
 * without the copy) and prints the ratio of the copy's rate to that. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"
#include "client.h"
#include "cmap.h"
#include "config.h"
#include "keys.h"
#include "move.h"
#include "store.h"

#define DIM 16
#define NSHARDS 2

typedef struct opts {
    uint64_t rows, move_rows;
    uint32_t buckets, batch, runs;
    double seconds;              /* load before and after each move */
    double load_rate;            /* pushed rows/s the load keeps to; 0: as fast as it can */
    bool load;
    const char *dir, *server, *durability;
} opts;

static double vmin(const double *v, uint32_t n) {
    double m = v[0];
    for (uint32_t i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

static double vmax(const double *v, uint32_t n) {
    double m = v[0];
    for (uint32_t i = 1; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

/* ---- the shard processes ------------------------------------------------------- */

static pid_t pids[NSHARDS];

static void stop_shards(void) {
    for (int i = 0; i < NSHARDS; i++)
        if (pids[i] > 0)
            kill(pids[i], SIGTERM);
    for (int i = 0; i < NSHARDS; i++)
        if (pids[i] > 0) {
            int status;
            waitpid(pids[i], &status, 0);
            pids[i] = 0;
        }
}

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int start_shard(const opts *o, const char *config, int i, int port) {
    char ready[1200], log[1200], shard[16], listen[64];
    snprintf(ready, sizeof(ready), "%s/ready-%d", o->dir, i);
    snprintf(log, sizeof(log), "%s/shard-%d.log", o->dir, i);
    snprintf(shard, sizeof(shard), "%d", i);
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    unlink(ready);
    pid_t parent = getpid();
    pids[i] = fork();
    if (pids[i] == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        execl(o->server, o->server, "--config", config, "--shard", shard, "--listen", listen,
              "--ready-file", ready, "--data-dir", o->dir, (char *)NULL);
        _exit(127);
    }
    for (int t = 0; t < 120000; t++) {
        if (access(ready, F_OK) == 0)
            return 0;
        int status;
        if (waitpid(pids[i], &status, WNOHANG) == pids[i]) {
            pids[i] = 0;
            fprintf(stderr, "move_bench: shard %d exited; see %s\n", i, log);
            return -1;
        }
        usleep(1000);
    }
    fprintf(stderr, "move_bench: shard %d not ready; see %s\n", i, log);
    return -1;
}

static double rusage_s(const struct rusage *r) {
    return (double)(r->ru_utime.tv_sec + r->ru_stime.tv_sec) +
           (double)(r->ru_utime.tv_usec + r->ru_stime.tv_usec) * 1e-6;
}

/* CPU seconds of this process: the mover and the load thread. */
static double self_cpu_s(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return rusage_s(&r);
}

/* Wait until both shards have written back every row the creation pushed,
 * so that the first move's CPU and time are the move's. */
static int wait_written_back(ps_client *c) {
    char err[512];
    for (int t = 0; t < 600; t++) {
        uint64_t dirty = 0;
        for (uint32_t i = 0; i < NSHARDS; i++) {
            ps_shard_stats st;
            if (ps_client_stats(c, i, &st, err, sizeof(err)) < 0) {
                fprintf(stderr, "move_bench: stats: %s\n", err);
                return -1;
            }
            for (size_t k = 0; k < st.ntables; k++)
                dirty += st.tables[k].stats.dirty_rows;
            ps_shard_stats_deinit(&st);
        }
        if (!dirty)
            return 0;
        usleep(200000);
    }
    fprintf(stderr, "move_bench: rows still not written back after 120 s\n");
    return -1;
}

/* ---- the training load ------------------------------------------------------------ */

enum { PH_BEFORE, PH_DURING, PH_AFTER, PH_IDLE, PH_STOP };

typedef struct phase_stats {
    uint64_t pull_rows, push_rows, requests;
    double max_pull_s, max_push_s;
    double max_at;               /* when the longest request began (monotonic s) */
    double *lat;                 /* every request's latency, for percentiles */
    size_t nlat, cap;
} phase_stats;

typedef struct load {
    const opts *o;
    const ps_config *cfg;
    atomic_int phase;
    pthread_mutex_t mu;          /* guards st while the load thread writes it */
    phase_stats st[PH_IDLE];
    int failed;
    char err[512];
} load;

static void record(load *l, int ph, bool push, double t0, double lat, uint32_t rows) {
    if (ph >= PH_IDLE)
        return;
    pthread_mutex_lock(&l->mu);
    phase_stats *s = &l->st[ph];
    if (lat > s->max_pull_s && lat > s->max_push_s)
        s->max_at = t0;
    if (push) {
        s->push_rows += rows;
        s->max_push_s = lat > s->max_push_s ? lat : s->max_push_s;
    } else {
        s->pull_rows += rows;
        s->max_pull_s = lat > s->max_pull_s ? lat : s->max_pull_s;
    }
    s->requests++;
    if (s->nlat == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 4096;
        double *p = realloc(s->lat, cap * sizeof(double));
        if (p) {
            s->lat = p;
            s->cap = cap;
        }
    }
    if (s->nlat < s->cap)
        s->lat[s->nlat++] = lat;
    pthread_mutex_unlock(&l->mu);
}

/* One pull and one push of `batch` random keys at a time, each waited for:
 * a worker with max_in_flight = 0. Each request counts in the phase it
 * began in. */
static void *load_main(void *arg) {
    load *l = arg;
    const opts *o = l->o;
    ps_client *c;
    ps_client_options co = {.cfg = l->cfg, .name = "move_bench_load", .timeout_ms = 600000};
    if (ps_client_new(&co, &c, l->err, sizeof(l->err)) < 0) {
        l->failed = 1;
        return NULL;
    }
    uint64_t *keys = malloc(o->batch * sizeof(uint64_t));
    float *vals = malloc((size_t)o->batch * DIM * sizeof(float));
    float *grads = malloc((size_t)o->batch * DIM * sizeof(float));
    uint64_t state = 777, paced = 0;
    double pace_t0 = bench_now_s();
    int ph;
    while ((ph = atomic_load(&l->phase)) != PH_STOP) {
        if (ph == PH_IDLE) {
            usleep(1000);
            pace_t0 = bench_now_s();
            paced = 0;
            continue;
        }
        if (o->load_rate > 0) {
            double due = pace_t0 + (double)paced / o->load_rate - bench_now_s();
            if (due > 0)
                usleep((useconds_t)(due * 1e6));
            if (due < -0.5) { /* fell behind (a pause): no burst to catch up */
                pace_t0 = bench_now_s();
                paced = 0;
            }
            paced += o->batch;
        }
        for (uint32_t i = 0; i < o->batch; i++)
            keys[i] = bench_rank_fid(ps_mix64(++state) % o->rows);
        double t = bench_now_s();
        if (ps_client_pull(c, "emb", DIM, keys, o->batch, vals, l->err, sizeof(l->err)) < 0) {
            l->failed = 1;
            break;
        }
        record(l, ph, false, t, bench_now_s() - t, o->batch);
        for (size_t i = 0; i < (size_t)o->batch * DIM; i++)
            grads[i] = 0.01f * (vals[i] > 0 ? 1.0f : -1.0f);
        ph = atomic_load(&l->phase);
        t = bench_now_s();
        if (ps_client_push(c, "emb", DIM, keys, o->batch, grads, NULL, NULL, l->err,
                           sizeof(l->err)) < 0) {
            l->failed = 1;
            break;
        }
        record(l, ph, true, t, bench_now_s() - t, o->batch);
    }
    free(keys);
    free(vals);
    free(grads);
    ps_client_free(c);
    return NULL;
}

static double percentile(phase_stats *s, double q) {
    if (!s->nlat)
        return 0;
    qsort(s->lat, s->nlat, sizeof(double), bench_cmp_double);
    size_t i = (size_t)(q * (double)(s->nlat - 1) + 0.5);
    return s->lat[i];
}

/* ---- the move ---------------------------------------------------------------------- */

/* With no load, a move begins once the shards are idle: below 5% of a core
 * over SETTLE_WINDOWS windows of 250 ms in a row (at most 30 s), so that
 * the flushes and compactions of the rows just created or moved do not
 * share the cores with the copy (a compaction a drop suggested may begin
 * a few hundred ms after it). Returns the seconds waited. */
#define SETTLE_WINDOWS 4
static double settle(void) {
    double t0 = bench_now_s(), prev = -1;
    int idle = 0;
    while (bench_now_s() - t0 < 30) {
        double cpu = 0;
        for (int i = 0; i < NSHARDS; i++)
            cpu += bench_cpu_s(pids[i]);
        idle = prev >= 0 && cpu - prev < 0.05 * 0.25 ? idle + 1 : 0;
        if (idle == SETTLE_WINDOWS)
            break;
        prev = cpu;
        usleep(250000);
    }
    return bench_now_s() - t0;
}

typedef struct move_watch {
    uint64_t export_rows;        /* the last progress report of the first pass */
    double export_s;
    ps_move_progress last;
} move_watch;

static void on_progress(void *ctx, const ps_move_progress *p) {
    move_watch *w = ctx;
    if (!p->rounds && !p->done) {
        w->export_rows = p->rows;
        w->export_s = p->elapsed_s;
    }
    w->last = *p;
}

typedef struct run_result {
    double settle_s, rows, copy_s, copy_rate, move_s, move_rate, export_rate, rounds, pause_ms, client_pause_ms, client_pause_at;
    double freeze_ms, last_round_ms, last_round_rows, map_ms, throttle;
    double pull[3], push[3], p99_ms[3], src_cpu, dst_cpu, self_cpu;
    double src_bg_cpu, dst_bg_cpu; /* of those, RocksDB's flushes and compactions */
} run_result;

/* "name median (min-max)" of one field of every run. */
static void summary(const char *name, int prec, const run_result *res, uint32_t n, size_t off) {
    double v[BENCH_MAX_RUNS] = {0};
    for (uint32_t i = 0; i < n; i++)
        memcpy(&v[i], (const char *)&res[i] + off, sizeof(double));
    printf("%s %.*f (%.*f-%.*f)\n", name, prec, bench_median(v, n), prec, vmin(v, n), prec, vmax(v, n));
}

/* ---- raw RocksDB -------------------------------------------------------------------------- */

static volatile uint64_t raw_sink;

/* A store with the shards' column families (the table's is index 2), at
 * `dir`: a stopped shard's database, or a fresh one. NULL: reported. */
static ps_store *raw_open(const char *dir) {
    const char *cfs[] = {"meta", "dense", "t.emb"};
    ps_store *st;
    ps_store_options so = {0};
    char err[512];
    if (ps_store_open(dir, cfs, 3, &so, &st, err, sizeof(err)) < 0) {
        fprintf(stderr, "move_bench: raw open of %s: %s\n", dir, err);
        return NULL;
    }
    return st;
}

typedef int (*raw_row_fn)(void *ctx, const uint8_t *key, const void *value, size_t vlen);

/* Each row of buckets [lo, hi) of the table to fn, in key order, until fn
 * fails (its result). `scan`: with the read options of the shard's
 * whole-range walks (no block cache fill, read ahead), as EXPORT reads,
 * else a plain iterator's. */
static int raw_walk(ps_store *st, uint32_t lo, uint32_t hi, bool scan, raw_row_fn fn, void *ctx,
                    uint64_t *ret_rows) {
    ps_store_key start;
    ps_store_key_encode((uint16_t)lo, 0, &start);
    ps_store_iter *it = scan ? ps_store_scan_new(st, 2, start.b, PS_STORE_KEY_LEN)
                             : ps_store_iter_new(st, 2, start.b, PS_STORE_KEY_LEN);
    int r = 0;
    uint64_t n = 0;
    for (; r == 0 && ps_store_iter_valid(it); ps_store_iter_next(it)) {
        size_t klen, vlen;
        const uint8_t *k = ps_store_iter_key(it, &klen);
        if (klen != PS_STORE_KEY_LEN || ps_store_key_bucket(k) >= hi)
            break;
        const void *v = ps_store_iter_value(it, &vlen);
        r = fn(ctx, k, v, vlen);
        n++;
    }
    ps_store_iter_free(it);
    *ret_rows = n;
    return r;
}

/* raw_iterate's row: the value copied out, as EXPORT's copy does. */
typedef struct raw_copy {
    char buf[4096];
    uint64_t sum;
} raw_copy;

static int raw_copy_row(void *ctx, const uint8_t *key, const void *value, size_t vlen) {
    (void)key;
    raw_copy *c = ctx;
    memcpy(c->buf, value, vlen < sizeof(c->buf) ? vlen : sizeof(c->buf));
    c->sum += (uint8_t)c->buf[vlen / 2];
    return 0;
}

/* Iterate [lo, hi) of the table on a stopped shard's database, freshly
 * opened: rows/s and CPU seconds, each touching its value as EXPORT's copy
 * does (raw_walk() says what `scan` does). */
static int raw_iterate(const opts *o, int shard, uint32_t lo, uint32_t hi, bool scan,
                       uint64_t *ret_rows, double *ret_s, double *ret_cpu) {
    char db[1200];
    snprintf(db, sizeof(db), "%s/shard-%d/db", o->dir, shard);
    ps_store *st = raw_open(db);
    raw_copy *c = calloc(1, sizeof(*c));
    if (!st || !c) {
        ps_store_close(st);
        free(c);
        return -1;
    }
    double c0 = self_cpu_s(), t0 = bench_now_s();
    raw_walk(st, lo, hi, scan, raw_copy_row, c, ret_rows);
    *ret_s = bench_now_s() - t0;
    *ret_cpu = self_cpu_s() - c0;
    raw_sink += c->sum; /* the copies are not optimised away */
    free(c);
    ps_store_close(st);
    return 0;
}

/* raw_local_copy's row: into the SST file. */
typedef struct raw_sst {
    ps_store_sst *w;
    char err[512];
} raw_sst;

static int raw_sst_row(void *ctx, const uint8_t *key, const void *value, size_t vlen) {
    raw_sst *a = ctx;
    return ps_store_sst_put(a->w, key, PS_STORE_KEY_LEN, value, vlen, a->err, sizeof(a->err));
}

/* The least a copy that ends in an ingested file can do, on this machine:
 * in one process and one thread, no network, no other process, scan
 * [lo, hi) of the stopped shard's table as the copy's EXPORT does, write
 * the rows into an SST file (SstFileWriter, the target's staging) and
 * ingest it into a fresh store. Wall-clock and CPU seconds, the ingest's
 * tail (Finish, read-back, ingest) apart. */
static int raw_local_copy(const opts *o, int shard, uint32_t lo, uint32_t hi, int run,
                          uint64_t *ret_rows, double *ret_s, double *ret_cpu, double *ret_tail_s) {
    char db[1200], dst[1200], sst[1300], cmd[2600];
    snprintf(db, sizeof(db), "%s/shard-%d/db", o->dir, shard);
    snprintf(dst, sizeof(dst), "%s/raw-copy-%d", o->dir, run);
    snprintf(sst, sizeof(sst), "%s/staging.sst", dst);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", dst, dst);
    if (system(cmd) != 0)
        return -1;
    ps_store *src = raw_open(db), *to = src ? raw_open(dst) : NULL;
    if (!to) {
        ps_store_close(src);
        return -1;
    }
    double c0 = self_cpu_s(), t0 = bench_now_s(), t1 = t0;
    raw_sst a = {.err = ""};
    *ret_rows = 0;
    int r = ps_store_sst_open(to, 2, sst, &a.w, a.err, sizeof(a.err));
    if (r == 0) {
        r = raw_walk(src, lo, hi, true, raw_sst_row, &a, ret_rows);
        t1 = bench_now_s();
        if (r == 0)
            r = ps_store_sst_ingest(a.w, a.err, sizeof(a.err));
    }
    *ret_s = bench_now_s() - t0;
    *ret_tail_s = bench_now_s() - t1;
    *ret_cpu = self_cpu_s() - c0;
    ps_store_sst_free(a.w);
    ps_store_close(to);
    ps_store_close(src);
    if (r < 0)
        fprintf(stderr, "move_bench: raw copy: %s\n", a.err);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dst);
    if (system(cmd) != 0)
        return -1;
    return r < 0 ? -1 : 0;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: move_bench [options]\n"
            "  --rows N          rows created by Push over both shards (default 2100000)\n"
            "  --move-rows M     the moved range: shard 0's first buckets holding at least M\n"
            "                    rows (default 1000000)\n"
            "  --buckets B       [cluster] buckets (default 1024)\n"
            "  --batch K         keys per pull and push of the load (default 4096)\n"
            "  --runs R          moves, back and forth; medians are reported (default 3)\n"
            "  --seconds T       load measured before and after each move (default 3)\n"
            "  --no-load         move with no client load\n"
            "  --load-rate R     the load pushes at most R rows/s (and pulls as many);\n"
            "                    default 0: as fast as one request at a time goes\n"
            "  --durability D    sync | interval=MS (default sync)\n"
            "  --dir DIR         work directory (default /tmp/ctrps-move-bench); wiped first\n"
            "  --server PATH     ctrps-server binary (default build/server/ctrps-server)\n");
}

int main(int argc, char **argv) {
    ps_client_keep_freed_memory(); /* the bench relays the move, as ctrps-cli does */
    opts o = {.rows = 2100000, .move_rows = 1000000, .buckets = 1024, .batch = 4096, .runs = 3,
              .seconds = 3, .load = true, .dir = "/tmp/ctrps-move-bench",
              .server = "build/server/ctrps-server", .durability = "sync"};
    static const struct option lo[] = {
        {"rows", required_argument, 0, 'n'},    {"move-rows", required_argument, 0, 'm'},
        {"buckets", required_argument, 0, 'B'}, {"batch", required_argument, 0, 'b'},
        {"runs", required_argument, 0, 'r'},    {"seconds", required_argument, 0, 's'},
        {"no-load", no_argument, 0, 'L'},       {"durability", required_argument, 0, 'd'},
        {"dir", required_argument, 0, 'D'},     {"server", required_argument, 0, 'S'},
        {"load-rate", required_argument, 0, 'R'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'n': o.rows = strtoull(optarg, NULL, 10); break;
        case 'm': o.move_rows = strtoull(optarg, NULL, 10); break;
        case 'B': o.buckets = (uint32_t)atoi(optarg); break;
        case 'b': o.batch = (uint32_t)atoi(optarg); break;
        case 'r': o.runs = (uint32_t)atoi(optarg); break;
        case 's': o.seconds = atof(optarg); break;
        case 'L': o.load = false; break;
        case 'R': o.load_rate = atof(optarg); break;
        case 'd': o.durability = optarg; break;
        case 'D': o.dir = optarg; break;
        case 'S': o.server = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (o.runs < 1 || o.runs > BENCH_MAX_RUNS || o.batch < 1 || o.rows < o.batch || o.buckets < 2 ||
        o.buckets > 65536) {
        usage(stderr);
        return 2;
    }
    char cmd[1300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", o.dir, o.dir);
    if (system(cmd) != 0)
        return 1;

    /* The moved range: shard 0's buckets from its first on, until they hold
     * move_rows of the rows. */
    uint64_t *per_bucket = calloc(o.buckets, sizeof(uint64_t));
    for (uint64_t i = 0; i < o.rows; i++)
        per_bucket[ps_bucket(bench_rank_fid(i), o.buckets)]++;
    uint32_t rlo = 0, rhi = 0;
    uint64_t range_rows = 0;
    while (rhi < o.buckets && ps_bucket_owner(rhi, o.buckets, NSHARDS) == 0 && range_rows < o.move_rows)
        range_rows += per_bucket[rhi++];
    free(per_bucket);
    if (range_rows < o.move_rows)
        fprintf(stderr, "move_bench: shard 0 holds only %" PRIu64 " rows; moving all of them\n",
                range_rows);

    int ports[NSHARDS];
    for (int i = 0; i < NSHARDS; i++)
        if ((ports[i] = free_port()) <= 0)
            return 1;
    uint64_t mem = (o.rows * 320 >> 20) + 64; /* either shard may hold every row */
    char config[1200];
    snprintf(config, sizeof(config), "%s/bench.ini", o.dir);
    FILE *f = fopen(config, "w");
    fprintf(f,
            "[cluster]\nshards = 127.0.0.1:%d, 127.0.0.1:%d\nbuckets = %u\n"
            "[server]\ndurability = %s\nmemory_mb = %" PRIu64 "\n"
            "[table.emb]\ndim = %d\noptimizer = ftrl\ninit = normal\nslots = C1\n",
            ports[0], ports[1], o.buckets, o.durability, mem, DIM);
    fclose(f);
    atexit(stop_shards);
    for (int i = 0; i < NSHARDS; i++)
        if (start_shard(&o, config, i, ports[i]) < 0)
            return 1;

    ps_config *cfg;
    char err[1024];
    if (ps_config_load(config, NULL, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    ps_client *cl;
    ps_client_options co = {.cfg = cfg, .name = "move_bench", .timeout_ms = 600000};
    if (ps_client_new(&co, &cl, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }

    /* Every row is created by a Push, in rank order. */
    double t0 = bench_now_s();
    uint64_t *keys = malloc((size_t)o.batch * sizeof(uint64_t));
    float *grads = malloc((size_t)o.batch * DIM * sizeof(float));
    for (size_t i = 0; i < (size_t)o.batch * DIM; i++)
        grads[i] = (float)((double)(i % 97) / 97.0 - 0.5) * 0.01f;
    for (uint64_t base = 0; base < o.rows; base += o.batch) {
        uint32_t n = (uint32_t)(o.rows - base < o.batch ? o.rows - base : o.batch);
        for (uint32_t i = 0; i < n; i++)
            keys[i] = bench_rank_fid(base + i);
        if (ps_client_push(cl, "emb", DIM, keys, n, grads, NULL, NULL, err, sizeof(err)) < 0) {
            fprintf(stderr, "move_bench: load: %s\n", err);
            return 1;
        }
    }
    double load_s = bench_now_s() - t0;
    free(keys);
    free(grads);
    if (wait_written_back(cl) < 0)
        return 1;

    double la[3] = {0, 0, 0};
    getloadavg(la, 3);
    printf("# move_bench rows=%" PRIu64 " buckets=%u range=%u-%u range_rows=%" PRIu64
           " batch=%u runs=%u seconds=%.1f load=%s load_rate=%.0f durability=%s loadavg=%.2f,%.2f,%.2f\n",
           o.rows, o.buckets, rlo, rhi - 1, range_rows, o.batch, o.runs, o.seconds,
           o.load ? "pull+push" : "none", o.load_rate, o.durability, la[0], la[1], la[2]);
    printf("create_rows_per_sec %.0f\n", (double)o.rows / load_s);
    fflush(stdout);

    load ld = {.o = &o, .cfg = cfg, .phase = PH_IDLE};
    pthread_mutex_init(&ld.mu, NULL);
    pthread_t th;
    if (o.load && pthread_create(&th, NULL, load_main, &ld) != 0)
        return 1;

    ps_cluster_map cur;
    if (ps_move_current_map(cl, NSHARDS, &cur, err, sizeof(err)) < 0) {
        fprintf(stderr, "move_bench: %s\n", err);
        return 1;
    }
    ps_cluster_map list; /* the moves replace cur, whose addresses ps_move_range reads */
    if (ps_cluster_map_copy(&cur, &list) < 0)
        return 1;
    run_result res[BENCH_MAX_RUNS];
    memset(res, 0, sizeof(res));
    uint32_t to = 1;
    for (uint32_t run = 0; run < o.runs; run++, to ^= 1) {
        run_result *rr = &res[run];
        pthread_mutex_lock(&ld.mu);
        memset(ld.st, 0, sizeof(ld.st));
        pthread_mutex_unlock(&ld.mu);
        double ph_s[3];
        double settle_s = o.load ? 0 : settle();
        atomic_store(&ld.phase, PH_BEFORE);
        double p0 = bench_now_s();
        if (o.load)
            usleep((useconds_t)(o.seconds * 1e6));
        double p1 = bench_now_s();
        double c0[NSHARDS], bg0[NSHARDS];
        for (int i = 0; i < NSHARDS; i++) {
            c0[i] = bench_cpu_s(pids[i]);
            bg0[i] = bench_threads_cpu_s(pids[i], "rocksdb:");
        }
        double s0 = self_cpu_s();
        atomic_store(&ld.phase, PH_DURING);
        move_watch w = {0};
        int r = ps_move_range(cl, &cur, rlo, rhi, to, list.shards, list.nshards, on_progress, &w, err,
                              sizeof(err));
        double p2 = bench_now_s();
        atomic_store(&ld.phase, PH_AFTER);
        if (r < 0) {
            fprintf(stderr, "move_bench: move: %s\n", err);
            return 1;
        }
        rr->self_cpu = self_cpu_s() - s0;
        rr->src_cpu = bench_cpu_s(pids[to ^ 1]) - c0[to ^ 1];
        rr->dst_cpu = bench_cpu_s(pids[to]) - c0[to];
        rr->src_bg_cpu = bench_threads_cpu_s(pids[to ^ 1], "rocksdb:") - bg0[to ^ 1];
        rr->dst_bg_cpu = bench_threads_cpu_s(pids[to], "rocksdb:") - bg0[to];
        if (o.load)
            usleep((useconds_t)(o.seconds * 1e6));
        double p3 = bench_now_s();
        atomic_store(&ld.phase, PH_IDLE);
        usleep(200000); /* the request in flight ends in the old phase */
        if (ld.failed) {
            fprintf(stderr, "move_bench: load: %s\n", ld.err);
            return 1;
        }
        ph_s[0] = p1 - p0;
        ph_s[1] = p2 - p1;
        ph_s[2] = p3 - p2;
        rr->settle_s = settle_s;
        rr->rows = (double)w.last.rows;
        rr->copy_s = w.last.commit_s;
        rr->copy_rate = w.last.commit_s > 0 ? (double)w.last.rows / w.last.commit_s : 0;
        rr->move_s = w.last.elapsed_s;
        rr->move_rate = w.last.elapsed_s > 0 ? (double)w.last.rows / w.last.elapsed_s : 0;
        rr->export_rate = w.export_s > 0 ? (double)w.export_rows / w.export_s : 0;
        rr->rounds = w.last.rounds;
        rr->pause_ms = w.last.pause_s * 1e3;
        rr->freeze_ms = w.last.freeze_s * 1e3;
        rr->last_round_ms = w.last.last_round_s * 1e3;
        rr->last_round_rows = (double)w.last.last_round_rows;
        rr->map_ms = w.last.map_s * 1e3;
        rr->throttle = w.last.throttle;
        pthread_mutex_lock(&ld.mu);
        phase_stats *d = &ld.st[PH_DURING];
        rr->client_pause_ms = (d->max_pull_s > d->max_push_s ? d->max_pull_s : d->max_push_s) * 1e3;
        rr->client_pause_at = d->requests ? d->max_at - p1 : 0;
        for (int p = 0; p < 3; p++) {
            rr->pull[p] = ph_s[p] > 0 ? (double)ld.st[p].pull_rows / ph_s[p] : 0;
            rr->push[p] = ph_s[p] > 0 ? (double)ld.st[p].push_rows / ph_s[p] : 0;
            rr->p99_ms[p] = percentile(&ld.st[p], 0.99) * 1e3;
            free(ld.st[p].lat);
            ld.st[p].lat = NULL;
            ld.st[p].nlat = ld.st[p].cap = 0;
        }
        pthread_mutex_unlock(&ld.mu);
        getloadavg(la, 3);
        printf("run %u: moved buckets %u-%u from shard %u to shard %u: %.0f rows copied and committed "
               "in %.2f s (%.0f rows/s; first pass %.0f rows/s), with the source's drop %.2f s, "
               "%.0f catch-up rounds, pause %.1f ms "
               "(freeze %.1f, last round %.1f for %.0f rows, maps %.1f), writers slowed at level %.0f (of 3), "
               "longest request during the move %.1f ms (began %.2f s into it); pull rows/s before/during/after "
               "%.0f/%.0f/%.0f, push %.0f/%.0f/%.0f, p99 request ms %.1f/%.1f/%.1f; "
               "CPU s source %.2f target %.2f mover+load %.2f (RocksDB's flushes and compactions: "
               "source %.2f, target %.2f); loadavg %.2f; settled %.1f s before\n",
               run, rlo, rhi - 1, to ^ 1, to, rr->rows, rr->copy_s, rr->copy_rate, rr->export_rate,
               rr->move_s, rr->rounds, rr->pause_ms, rr->freeze_ms, rr->last_round_ms, rr->last_round_rows,
               rr->map_ms, rr->throttle, rr->client_pause_ms, rr->client_pause_at, rr->pull[0], rr->pull[1], rr->pull[2],
               rr->push[0], rr->push[1], rr->push[2], rr->p99_ms[0], rr->p99_ms[1], rr->p99_ms[2],
               rr->src_cpu, rr->dst_cpu, rr->self_cpu, rr->src_bg_cpu, rr->dst_bg_cpu, la[0],
               rr->settle_s);
        fflush(stdout);
    }
    atomic_store(&ld.phase, PH_STOP);
    if (o.load)
        pthread_join(th, NULL);
    uint32_t owner = cur.owner[rlo];
    ps_cluster_map_deinit(&cur);
    ps_cluster_map_deinit(&list);
    ps_client_free(cl);
    stop_shards();

    const char *ph[3] = {"before", "during", "after"};
    summary("moved_rows", 0, res, o.runs, offsetof(run_result, rows));
    summary("copy_s", 2, res, o.runs, offsetof(run_result, copy_s));
    summary("copy_rows_per_sec", 0, res, o.runs, offsetof(run_result, copy_rate));
    summary("first_pass_rows_per_sec", 0, res, o.runs, offsetof(run_result, export_rate));
    summary("move_s", 2, res, o.runs, offsetof(run_result, move_s));
    summary("move_rows_per_sec", 0, res, o.runs, offsetof(run_result, move_rate));
    summary("catchup_rounds", 0, res, o.runs, offsetof(run_result, rounds));
    summary("pause_ms", 1, res, o.runs, offsetof(run_result, pause_ms));
    summary("pause_freeze_ms", 1, res, o.runs, offsetof(run_result, freeze_ms));
    summary("pause_last_round_ms", 1, res, o.runs, offsetof(run_result, last_round_ms));
    summary("pause_last_round_rows", 0, res, o.runs, offsetof(run_result, last_round_rows));
    summary("pause_maps_ms", 1, res, o.runs, offsetof(run_result, map_ms));
    if (o.load) {
        summary("longest_request_during_move_ms", 1, res, o.runs,
                offsetof(run_result, client_pause_ms));
        for (int p = 0; p < 3; p++) {
            char name[64];
            snprintf(name, sizeof(name), "pull_rows_per_sec_%s", ph[p]);
            summary(name, 0, res, o.runs, offsetof(run_result, pull) + p * sizeof(double));
            snprintf(name, sizeof(name), "push_rows_per_sec_%s", ph[p]);
            summary(name, 0, res, o.runs, offsetof(run_result, push) + p * sizeof(double));
            snprintf(name, sizeof(name), "p99_request_ms_%s", ph[p]);
            summary(name, 1, res, o.runs, offsetof(run_result, p99_ms) + p * sizeof(double));
        }
    }
    summary("source_cpu_s", 2, res, o.runs, offsetof(run_result, src_cpu));
    summary("target_cpu_s", 2, res, o.runs, offsetof(run_result, dst_cpu));
    summary("mover_and_load_cpu_s", 2, res, o.runs, offsetof(run_result, self_cpu));

    /* Raw iteration of the moved range where it is now, as often: with a
     * plain iterator, and as a scan that leaves the block cache alone (as
     * the copy's own reads do). */
    double copy[BENCH_MAX_RUNS], move[BENCH_MAX_RUNS];
    for (uint32_t i = 0; i < o.runs; i++) {
        copy[i] = res[i].copy_rate;
        move[i] = res[i].move_rate;
    }
    for (int scan = 0; scan < 2; scan++) {
        const char *name = scan ? "raw_scan" : "raw_iter";
        double raw_rate[BENCH_MAX_RUNS], raw_cpu[BENCH_MAX_RUNS];
        uint64_t raw_rows = 0;
        for (uint32_t i = 0; i < o.runs; i++) {
            double s;
            if (raw_iterate(&o, (int)owner, rlo, rhi, scan, &raw_rows, &s, &raw_cpu[i]) < 0)
                return 1;
            raw_rate[i] = s > 0 ? (double)raw_rows / s : 0;
        }
        double raw = bench_median(raw_rate, o.runs);
        printf("%s_rows %" PRIu64 "\n", name, raw_rows);
        printf("%s_rows_per_sec %.0f (%.0f-%.0f)\n", name, raw, vmin(raw_rate, o.runs),
               vmax(raw_rate, o.runs));
        printf("%s_cpu_s %.3f\n", name, bench_median(raw_cpu, o.runs));
        printf("ratio_copy_to_%s %.2f\n", name, bench_median(copy, o.runs) / raw);
        printf("ratio_move_to_%s %.2f\n", name, bench_median(move, o.runs) / raw);
    }
    /* And against the least any copy of it into an ingested file costs. */
    double lc_rate[BENCH_MAX_RUNS], lc_cpu[BENCH_MAX_RUNS], lc_tail[BENCH_MAX_RUNS];
    uint64_t lc_rows = 0;
    for (uint32_t i = 0; i < o.runs; i++) {
        double s;
        if (raw_local_copy(&o, (int)owner, rlo, rhi, (int)i, &lc_rows, &s, &lc_cpu[i], &lc_tail[i]) < 0)
            return 1;
        lc_rate[i] = s > 0 ? (double)lc_rows / s : 0;
        lc_tail[i] *= 1e3;
    }
    double lc = bench_median(lc_rate, o.runs);
    printf("raw_local_copy_rows %" PRIu64 "\n", lc_rows);
    printf("raw_local_copy_rows_per_sec %.0f (%.0f-%.0f)\n", lc, vmin(lc_rate, o.runs),
           vmax(lc_rate, o.runs));
    printf("raw_local_copy_cpu_s %.3f\n", bench_median(lc_cpu, o.runs));
    printf("raw_local_copy_ingest_ms %.1f (%.1f-%.1f)\n", bench_median(lc_tail, o.runs),
           vmin(lc_tail, o.runs), vmax(lc_tail, o.runs));
    printf("ratio_copy_to_raw_local_copy %.2f\n", bench_median(copy, o.runs) / lc);
    getloadavg(la, 3);
    printf("loadavg_end %.2f,%.2f,%.2f\n", la[0], la[1], la[2]);
    ps_config_free(cfg);
    return 0;
}
