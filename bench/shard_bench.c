/* Shard throughput benchmark: starts one ctrps-server, drives it over
 * loopback with the client library, and measures Pull, Push and Lookup rows
 * per second for dim-16 FTRL rows; then stops the shard and measures raw
 * RocksDB MultiGet and WriteBatch rates on the very same database, so the
 * figures can be read as ratios on a noisy machine.
 *
 * Scenarios (flags): --keys N distinct keys, --memory-mb for the memory tier,
 * --zipf S for the access skew (0 = uniform), --durability sync|interval=MS.
 * Each measurement runs --runs times for --seconds; the median is printed. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"
#include "client.h"
#include "config.h"
#include "keys.h"
#include "store.h"

#define DIM 16
#define WIDTH (3 * DIM)

typedef struct opts {
    uint64_t keys;
    uint64_t memory_mb;
    uint64_t block_cache_mb;     /* 0: the server's default */
    uint64_t write_buffer_mb;    /* 0: the server's default */
    bool stored_load;            /* at the end, first pulls of as many new keys again */
    double zipf;
    const char *durability;
    uint32_t batch, inflight, runs;
    double seconds;
    uint64_t requests;           /* > 0: each repetition sends exactly this many requests */
    uint32_t pool;               /* precomputed requests, cycled */
    double warmup;               /* seconds of warm-up before a phase, at most */
    const char *ops;             /* phases to run: a subset of "pull,push,lookup" */
    const char *dir;
    const char *server;
    bool keep;
} opts;

/* ---- Zipf sampling by rejection-inversion (Hormann & Derflinger, 1996) --- */

typedef struct zipf {
    double s, n, hx0, hn, threshold;
    uint64_t state;
} zipf;

static double z_h(const zipf *z, double x) {
    double e = 1 - z->s;
    return fabs(e) < 1e-9 ? log(x) : (pow(x, e) - 1) / e;
}

static double z_hinv(const zipf *z, double x) {
    double e = 1 - z->s;
    return fabs(e) < 1e-9 ? exp(x) : pow(x * e + 1, 1 / e);
}

static double z_uniform(zipf *z) {
    z->state += 0x9e3779b97f4a7c15ull;
    return (double)(ps_mix64(z->state) >> 11) * (1.0 / 9007199254740992.0);
}

static void zipf_init(zipf *z, double s, uint64_t n, uint64_t seed) {
    z->s = s;
    z->n = (double)n;
    z->state = seed;
    z->hx0 = z_h(z, 1.5) - 1;
    z->hn = z_h(z, z->n + 0.5);
    z->threshold = 2 - z_hinv(z, z_h(z, 2.5) - pow(2, -s));
}

/* Rank in [0, n). */
static uint64_t zipf_next(zipf *z) {
    if (z->s <= 0)
        return (uint64_t)(z_uniform(z) * z->n);
    for (;;) {
        double u = z->hn + z_uniform(z) * (z->hx0 - z->hn);
        double x = z_hinv(z, u);
        double k = floor(x + 0.5);
        if (k < 1)
            k = 1;
        if (k > z->n)
            k = z->n;
        if (k - x <= z->threshold || u >= z_h(z, k + 0.5) - pow(k, -z->s))
            return (uint64_t)k - 1;
    }
}

/* ---- the shard process ------------------------------------------------------ */

static pid_t server_pid;

static void stop_server(void) {
    if (server_pid <= 0)
        return;
    kill(server_pid, SIGTERM);
    int status;
    waitpid(server_pid, &status, 0);
    server_pid = 0;
}

static int start_server(const opts *o, const char *config, char *addr, size_t addrlen) {
    char ready[1200], log[1200];
    snprintf(ready, sizeof(ready), "%s/ready", o->dir);
    snprintf(log, sizeof(log), "%s/server.log", o->dir);
    unlink(ready);
    pid_t parent = getpid();
    server_pid = fork();
    if (server_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        execl(o->server, o->server, "--config", config, "--shard", "0", "--listen", "127.0.0.1:0",
              "--ready-file", ready, "--data-dir", o->dir, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 60000; i++) {
        FILE *f = fopen(ready, "r");
        if (f) {
            char *ok = fgets(addr, (int)addrlen, f);
            fclose(f);
            if (ok) {
                addr[strcspn(addr, "\n")] = '\0';
                return 0;
            }
        }
        int status;
        if (waitpid(server_pid, &status, WNOHANG) == server_pid) {
            fprintf(stderr, "shard_bench: server exited; see %s\n", log);
            return -1;
        }
        usleep(1000);
    }
    return -1;
}

/* ---- load generation ------------------------------------------------------------- */

typedef enum { OP_PULL, OP_PUSH, OP_LOOKUP } op_kind;
static const char *op_names[] = {"pull", "push", "lookup"};

typedef struct slot_buf {
    ps_call *call;
    float *values;
    uint8_t *found;
} slot_buf;

/* The next request of the pool: it goes on from where the last phase or
 * repetition stopped, so that successive runs walk the whole pool instead
 * of its first few hundred requests again and again (with a pool larger
 * than a run covers, a restart at 0 measured a pool that small). */
static uint64_t pool_cursor;

/* Keep `inflight` calls going for `seconds`; returns rows/s, and the rows
 * sent in *ret_rows (if not NULL). */
static double drive(ps_client *c, const opts *o, op_kind op, uint64_t **pool, const float *grads,
                    double seconds, uint64_t *ret_rows) {
    slot_buf *slots = calloc(o->inflight, sizeof(*slots));
    for (uint32_t i = 0; i < o->inflight; i++) {
        slots[i].values = malloc((size_t)o->batch * WIDTH * sizeof(float));
        slots[i].found = malloc(o->batch);
    }
    char err[512];
    uint64_t rows = 0, sent = 0;
    double start = bench_now_s(), end = start + seconds;
    bool stop = false;
    for (;;) {
        for (uint32_t i = 0; i < o->inflight; i++) {
            slot_buf *s = &slots[i];
            if (s->call) {
                if (ps_call_wait(s->call, err, sizeof(err)) < 0) {
                    fprintf(stderr, "shard_bench: %s failed: %s\n", op_names[op], err);
                    exit(1);
                }
                s->call = NULL;
                rows += o->batch;
            }
            if (stop)
                continue;
            uint64_t *keys = pool[pool_cursor++ % o->pool];
            sent++;
            int r = op == OP_PULL ? ps_client_pull_start(c, "emb", DIM, keys, o->batch, s->values, &s->call)
                    : op == OP_PUSH
                        ? ps_client_push_start(c, "emb", DIM, keys, o->batch, grads, &s->call)
                        : ps_client_lookup_start(c, "emb", DIM, 0, keys, o->batch, s->found, s->values,
                                                 NULL, &s->call);
            if (r < 0) {
                fprintf(stderr, "shard_bench: start failed\n");
                exit(1);
            }
        }
        if (stop)
            break;
        stop = o->requests ? sent >= o->requests : bench_now_s() >= end;
    }
    double rate = (double)rows / (bench_now_s() - start);
    for (uint32_t i = 0; i < o->inflight; i++) {
        free(slots[i].values);
        free(slots[i].found);
    }
    free(slots);
    if (ret_rows)
        *ret_rows = rows;
    return rate;
}

/* Pull keys never pulled before, fid(o, *next), fid(o, *next + 1), ...
 * (shuffled within each request, so they are not in key order), `inflight`
 * requests at a time, until `seconds` have passed or `limit` is reached
 * (the last request may be short); returns rows/s, and adds the rows pulled
 * to *ret_pulled. */
static double drive_fresh(ps_client *c, const opts *o, uint64_t (*fid)(const opts *, uint64_t), uint64_t *next,
                          uint64_t limit, double seconds, uint64_t *ret_pulled) {
    slot_buf *slots = calloc(o->inflight, sizeof(*slots));
    uint64_t **keys = calloc(o->inflight, sizeof(uint64_t *));
    uint32_t *sent = calloc(o->inflight, sizeof(uint32_t));
    for (uint32_t i = 0; i < o->inflight; i++) {
        slots[i].values = malloc((size_t)o->batch * DIM * sizeof(float));
        keys[i] = malloc((size_t)o->batch * sizeof(uint64_t));
    }
    char err[512];
    uint64_t rows = 0;
    double start = bench_now_s(), end = start + seconds;
    bool stop = false;
    for (;;) {
        for (uint32_t i = 0; i < o->inflight; i++) {
            slot_buf *s = &slots[i];
            if (s->call) {
                if (ps_call_wait(s->call, err, sizeof(err)) < 0) {
                    fprintf(stderr, "shard_bench: pull of fresh keys failed: %s\n", err);
                    exit(1);
                }
                s->call = NULL;
                rows += sent[i];
            }
            if (stop || *next >= limit)
                continue;
            uint32_t n = (uint32_t)(limit - *next < o->batch ? limit - *next : o->batch);
            for (uint32_t k = 0; k < n; k++)
                keys[i][k] = fid(o, *next + (uint64_t)((k * 2654435761u) % n));
            *next += n;
            sent[i] = n;
            if (ps_client_pull_start(c, "emb", DIM, keys[i], n, s->values, &s->call) < 0)
                exit(1);
        }
        if (stop)
            break;
        stop = bench_now_s() >= end || *next >= limit;
    }
    double rate = (double)rows / (bench_now_s() - start);
    for (uint32_t i = 0; i < o->inflight; i++) {
        free(slots[i].values);
        free(keys[i]);
    }
    free(slots);
    free(keys);
    free(sent);
    *ret_pulled += rows;
    return rate;
}

static ps_table_stats server_table_stats(ps_client *c) {
    ps_shard_stats st;
    ps_table_stats t = {0};
    char err[512];
    if (ps_client_stats(c, 0, &st, err, sizeof(err)) < 0)
        return t;
    if (st.ntables)
        t = st.tables[0].stats;
    ps_shard_stats_deinit(&st);
    return t;
}

static uint64_t server_misses(ps_client *c) { return server_table_stats(c).memory_misses; }

/* Wait (up to 10 minutes) until the shard has written back every dirty
 * row, so that the write-back of the load does not run under the
 * measurements; the seconds waited. */
static double wait_written_back(ps_client *c) {
    double t0 = bench_now_s();
    while (server_table_stats(c).dirty_rows > 0 && bench_now_s() - t0 < 600)
        usleep(100000);
    return bench_now_s() - t0;
}

/* The i-th key the load reads and then pushes: from the highest rank down.
 * The order matters only when the tier is smaller than the keys: it then
 * ends up holding the last keys loaded, which this way are the ones Zipf
 * draws most, as on a shard that has served such a load for a while (in
 * rank order it held the coldest, and the timed phases measured the tier
 * filling up). */
static uint64_t load_fid(const opts *o, uint64_t i) { return bench_rank_fid(o->keys - 1 - i); }

/* The i-th key of the cold phase: ranks in order. */
static uint64_t rank_fid(const opts *o, uint64_t i) {
    (void)o;
    return bench_rank_fid(i);
}

/* Wait (up to an hour) until RocksDB has no compaction running or pending:
 * the load leaves gigabytes to compact, which otherwise runs under the timed
 * phases (half the shard's samples at 30M keys); the seconds waited. */
static double wait_compacted(ps_client *c) {
    double t0 = bench_now_s();
    char err[512];
    while (bench_now_s() - t0 < 3600) {
        ps_shard_stats st;
        if (ps_client_stats(c, 0, &st, err, sizeof(err)) < 0)
            break;
        bool settled = st.rocksdb_pending_compaction_bytes == 0 && st.rocksdb_running_compactions == 0;
        ps_shard_stats_deinit(&st);
        if (settled)
            break;
        usleep(200000);
    }
    return bench_now_s() - t0;
}

/* Warm-up before a phase: o->warmup seconds; when that is longer than a
 * repetition, windows of o->seconds (rate and share of rows read from
 * RocksDB printed) until two in a row are within 5% or the time is spent. */
static void warm_up(ps_client *c, const opts *o, op_kind op, uint64_t **pool, const float *grads) {
    if (o->warmup <= o->seconds) {
        if (o->warmup > 0)
            drive(c, o, op, pool, grads, o->warmup, NULL);
        return;
    }
    double spent = 0, last = 0;
    while (spent < o->warmup) {
        uint64_t misses0 = server_misses(c), rows;
        double t0 = bench_now_s();
        double rate = drive(c, o, op, pool, grads, o->seconds, &rows);
        spent += bench_now_s() - t0;
        printf("warmup_%s t=%.0fs rows_per_sec %.0f memory_miss_fraction %.4f\n", op_names[op], spent,
               rate, (double)(server_misses(c) - misses0) / (double)rows);
        fflush(stdout);
        if (last > 0 && fabs(rate - last) <= 0.05 * last)
            return;
        last = rate;
    }
}

/* ---- raw RocksDB ------------------------------------------------------------------------- */

static void count_found(void *ctx, size_t i, const void *v, size_t len) {
    (void)i;
    (void)v;
    *(uint64_t *)ctx += len > 0;
}

static int cmp_key(const void *a, const void *b) { return memcmp(a, b, PS_STORE_KEY_LEN); }

static void raw_rocksdb(const opts *o, uint64_t **pool, uint32_t nbuckets, uint64_t cold_lo,
                        uint64_t cold_hi, double *ret_get, double *ret_put, double *ret_cold) {
    char db[1200], err[512];
    snprintf(db, sizeof(db), "%s/shard-0/db", o->dir);
    const char *cfs[] = {"meta", "dense", "t.emb"};
    ps_store *st;
    ps_store_options so = {.block_cache_mb = o->block_cache_mb};
    if (ps_store_open(db, cfs, 3, &so, &st, err, sizeof(err)) < 0) {
        fprintf(stderr, "shard_bench: raw open: %s\n", err);
        exit(1);
    }
    ps_store_key *keys = malloc((size_t)o->batch * sizeof(*keys));
    double gets[16], puts[16];
    size_t vlen = 16 + WIDTH * sizeof(float);
    char *val = calloc(1, vlen);
    for (uint32_t run = 0; run < o->runs; run++) {
        uint64_t rows = 0, found = 0, next = 0;
        double start = bench_now_s();
        while (bench_now_s() - start < o->seconds) {
            uint64_t *k = pool[next++ % o->pool];
            for (uint32_t i = 0; i < o->batch; i++)
                ps_store_key_encode((uint16_t)ps_bucket(k[i], nbuckets), k[i], &keys[i]);
            /* The shard sorts its misses too: same work on both sides. */
            qsort(keys, o->batch, sizeof(*keys), cmp_key);
            if (ps_store_multiget(st, 2, keys, o->batch, count_found, &found, err, sizeof(err)) < 0) {
                fprintf(stderr, "shard_bench: multiget: %s\n", err);
                exit(1);
            }
            rows += o->batch;
        }
        gets[run] = (double)rows / (bench_now_s() - start);
        if (found * 10 < rows * 9)
            fprintf(stderr, "shard_bench: only %" PRIu64 " of %" PRIu64 " keys found in RocksDB\n",
                    found, rows);
        rows = 0;
        start = bench_now_s();
        while (bench_now_s() - start < o->seconds) {
            uint64_t *k = pool[next++ % o->pool];
            ps_store_batch *b = ps_store_batch_new();
            for (uint32_t i = 0; i < o->batch; i++) {
                ps_store_key_encode((uint16_t)ps_bucket(k[i], nbuckets), k[i], &keys[i]);
                ps_store_batch_put(b, st, 2, keys[i].b, PS_STORE_KEY_LEN, val, vlen);
            }
            if (ps_store_write(st, b, err, sizeof(err)) < 0) {
                fprintf(stderr, "shard_bench: write: %s\n", err);
                exit(1);
            }
            ps_store_batch_free(b);
            rows += o->batch;
        }
        puts[run] = (double)rows / (bench_now_s() - start);
    }
    *ret_get = bench_median(gets, o->runs);
    *ret_put = bench_median(puts, o->runs);
    /* The cold range, keys never read in this process: the same work a cold
     * pull asks of RocksDB. */
    *ret_cold = 0;
    uint64_t next = cold_lo;
    double colds[16];
    for (uint32_t run = 0; cold_hi > cold_lo && run < o->runs; run++) {
        uint64_t rows = 0, found = 0;
        double start = bench_now_s();
        while (bench_now_s() - start < o->seconds && next + o->batch <= cold_hi) {
            for (uint32_t i = 0; i < o->batch; i++) {
                uint64_t k = bench_rank_fid(next + (uint64_t)((i * 2654435761u) % o->batch));
                ps_store_key_encode((uint16_t)ps_bucket(k, nbuckets), k, &keys[i]);
            }
            next += o->batch;
            qsort(keys, o->batch, sizeof(*keys), cmp_key);
            if (ps_store_multiget(st, 2, keys, o->batch, count_found, &found, err, sizeof(err)) < 0)
                exit(1);
            rows += o->batch;
        }
        colds[run] = (double)rows / (bench_now_s() - start);
    }
    if (cold_hi > cold_lo)
        *ret_cold = bench_median(colds, o->runs);
    free(keys);
    free(val);
    ps_store_close(st);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: shard_bench [options]\n"
            "  --keys N          distinct keys (default 1000000)\n"
            "  --memory-mb M     shard memory tier (default: the server's 1024, or enough\n"
            "                    for every key if more)\n"
            "  --block-cache-mb M  RocksDB block cache of the shard and of the raw reads\n"
            "                    (default: the server's, 256)\n"
            "  --write-buffer-mb M  the shard's RocksDB memtable size (default: the server's, 16)\n"
            "  --zipf S          access skew; 0 = uniform (default 0)\n"
            "  --durability D    sync | interval=MS (default sync)\n"
            "  --batch B         keys per request (default 4096)\n"
            "  --inflight K      requests in flight, also in the load's first pulls (default 8)\n"
            "  --runs R          repetitions per measurement; the median is reported (default 5)\n"
            "  --seconds T       length of one repetition (default 2)\n"
            "  --requests N      each repetition sends exactly N requests instead (for\n"
            "                    instruction counts under callgrind: the same work every run)\n"
            "  --pool N          distinct requests drawn up front and cycled (default 256);\n"
            "                    with a tier smaller than the keys, draw more keys than the\n"
            "                    tier holds, or the timed phases read a cycled set it holds\n"
            "  --warmup S        warm-up before each phase (default 1 s); above --seconds,\n"
            "                    windows of --seconds until two in a row are within 5%% or S\n"
            "                    is spent, each printed (the memory tier filling up)\n"
            "  --ops LIST        phases to run, of pull,push,lookup (default all three)\n"
            "  --stored-load     at the end, once every row is written back and compacted,\n"
            "                    first pulls of as many new keys again: rows created per\n"
            "                    second on a store that holds rows (the tier holds both)\n"
            "  --dir DIR         work directory (default /tmp/ctrps-bench); wiped first\n"
            "  --server PATH     ctrps-server binary (default build/server/ctrps-server)\n");
}

int main(int argc, char **argv) {
    opts o = {.keys = 1000000, .durability = "sync", .batch = 4096, .inflight = 8, .runs = 5,
              .seconds = 2, .pool = 256, .warmup = 1, .dir = "/tmp/ctrps-bench", .server = "build/server/ctrps-server"};
    static const struct option lo[] = {
        {"keys", required_argument, 0, 'k'},     {"memory-mb", required_argument, 0, 'm'},
        {"zipf", required_argument, 0, 'z'},     {"durability", required_argument, 0, 'd'},
        {"batch", required_argument, 0, 'b'},    {"inflight", required_argument, 0, 'i'},
        {"runs", required_argument, 0, 'r'},     {"seconds", required_argument, 0, 's'},
        {"dir", required_argument, 0, 'D'},      {"server", required_argument, 0, 'S'},
        {"requests", required_argument, 0, 'n'}, {"ops", required_argument, 0, 'o'},
        {"block-cache-mb", required_argument, 0, 'B'},
        {"write-buffer-mb", required_argument, 0, 'W'},
        {"pool", required_argument, 0, 'p'},     {"warmup", required_argument, 0, 'w'},
        {"stored-load", no_argument, 0, 'L'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'k': o.keys = strtoull(optarg, NULL, 10); break;
        case 'm': o.memory_mb = strtoull(optarg, NULL, 10); break;
        case 'z': o.zipf = atof(optarg); break;
        case 'd': o.durability = optarg; break;
        case 'b': o.batch = (uint32_t)atoi(optarg); break;
        case 'i': o.inflight = (uint32_t)atoi(optarg); break;
        case 'r': o.runs = (uint32_t)atoi(optarg); break;
        case 's': o.seconds = atof(optarg); break;
        case 'D': o.dir = optarg; break;
        case 'S': o.server = optarg; break;
        case 'n': o.requests = strtoull(optarg, NULL, 10); break;
        case 'o': o.ops = optarg; break;
        case 'B': o.block_cache_mb = strtoull(optarg, NULL, 10); break;
        case 'W': o.write_buffer_mb = strtoull(optarg, NULL, 10); break;
        case 'p': o.pool = (uint32_t)atoi(optarg); break;
        case 'w': o.warmup = atof(optarg); break;
        case 'L': o.stored_load = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (o.runs < 1 || o.runs > 16 || o.batch < 1 || o.inflight < 1 || o.keys < o.batch || o.pool < 1 ||
        o.warmup < 0) {
        usage(stderr);
        return 2;
    }
    char cmd[1300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", o.dir, o.dir);
    if (system(cmd) != 0)
        return 1;
    /* By default the server's own default tier (1 GiB), or one that holds
     * every key if that is more. A tier only just larger than the keys is
     * half dirty after ~0.7 s of uniform pushes and then writes back all the
     * time (flush_due in server/shard.c): it measured 1.8M pushed rows/s
     * where 1 GiB gave 3.4M. */
    uint64_t mem = ((o.stored_load ? 2 : 1) * o.keys * 300 >> 20) + 64;
    if (mem < 1024)
        mem = 1024;
    if (o.memory_mb)
        mem = o.memory_mb;
    char config[1200];
    snprintf(config, sizeof(config), "%s/bench.ini", o.dir);
    FILE *f = fopen(config, "w");
    fprintf(f,
            "[cluster]\nshards = 127.0.0.1:1\nbuckets = 1024\n"
            "[server]\ndurability = %s\nmemory_mb = %" PRIu64 "\n",
            o.durability, mem);
    if (o.block_cache_mb)
        fprintf(f, "block_cache_mb = %" PRIu64 "\n", o.block_cache_mb);
    if (o.write_buffer_mb)
        fprintf(f, "write_buffer_mb = %" PRIu64 "\n", o.write_buffer_mb);
    fprintf(f, "[table.emb]\ndim = %d\noptimizer = ftrl\ninit = normal\nslots = C1\n", DIM);
    fclose(f);

    char addr[128];
    if (start_server(&o, config, addr, sizeof(addr)) < 0)
        return 1;
    atexit(stop_server);
    ps_config *cfg;
    char err[512];
    if (ps_config_load(config, NULL, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    free(cfg->shards[0]);
    cfg->shards[0] = strdup(addr);
    ps_client *cl;
    ps_client_options co = {.cfg = cfg, .name = "shard_bench", .timeout_ms = 600000};
    if (ps_client_new(&co, &cl, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }

    /* Read every key once, in load_fid() order, `inflight` requests at a
     * time: a first pull creates no row, only its init values in the memory
     * tier (load_rows_per_sec, rows created per second). */
    double t0 = bench_now_s(), load_cpu0 = bench_cpu_s(server_pid), load_client_cpu0 = bench_cpu_s(getpid());
    uint64_t load_next = 0, loaded = 0;
    drive_fresh(cl, &o, load_fid, &load_next, o.keys, 1e9, &loaded);
    double load_s = bench_now_s() - t0, load_cpu_s = bench_cpu_s(server_pid) - load_cpu0,
           load_client_cpu_s = bench_cpu_s(getpid()) - load_client_cpu0;
    uint64_t *keys = malloc((size_t)o.batch * sizeof(uint64_t));
    /* Then push every key once, as training does after its pull: the rows
     * exist, and those the tier cannot hold are written to RocksDB, where
     * the cold phase and the raw reads find them. */
    float *load_grads = calloc((size_t)o.batch * DIM, sizeof(float));
    for (size_t i = 0; i < (size_t)o.batch * DIM; i++)
        load_grads[i] = 0.001f;
    t0 = bench_now_s();
    for (uint64_t base = 0; base < o.keys; base += o.batch) {
        uint32_t n = (uint32_t)(o.keys - base < o.batch ? o.keys - base : o.batch);
        for (uint32_t i = 0; i < n; i++)
            keys[i] = load_fid(&o, base + i);
        if (ps_client_push(cl, "emb", DIM, keys, n, load_grads, NULL, NULL, err, sizeof(err)) < 0) {
            fprintf(stderr, "persist: %s\n", err);
            return 1;
        }
    }
    double persist_s = bench_now_s() - t0;
    free(load_grads);
    double settle_s = wait_written_back(cl);
    double compact_s = wait_compacted(cl);

    /* Request pool: o.pool requests of batch keys drawn from the distribution. */
    zipf z;
    zipf_init(&z, o.zipf, o.keys, 12345);
    uint64_t **pool = malloc(o.pool * sizeof(uint64_t *));
    for (uint32_t p = 0; p < o.pool; p++) {
        pool[p] = malloc((size_t)o.batch * sizeof(uint64_t));
        for (uint32_t i = 0; i < o.batch; i++)
            pool[p][i] = bench_rank_fid(zipf_next(&z));
    }
    float *grads = malloc((size_t)o.batch * DIM * sizeof(float));
    for (size_t i = 0; i < (size_t)o.batch * DIM; i++)
        grads[i] = (float)((double)(i % 97) / 97.0 - 0.5) * 0.01f;

    printf("# shard_bench keys=%" PRIu64 " memory_mb=%" PRIu64 " zipf=%.2f durability=%s batch=%u "
           "inflight=%u runs=%u seconds=%.1f\n",
           o.keys, mem, o.zipf, o.durability, o.batch, o.inflight, o.runs, o.seconds);
    printf("load_rows_per_sec %.0f\n", (double)o.keys / load_s);
    printf("load_server_cpu_us_per_row %.3f\n", load_cpu_s * 1e6 / (double)o.keys);
    printf("load_client_cpu_us_per_row %.3f\n", load_client_cpu_s * 1e6 / (double)o.keys);
    printf("persist_rows_per_sec %.0f\n", (double)o.keys / persist_s);
    printf("persist_written_back_after_s %.1f\n", settle_s);
    printf("compaction_settled_after_s %.1f\n", compact_s);
    double rates[3] = {0, 0, 0};
    for (int op = 0; op < 3; op++) {
        if (o.ops && !strstr(o.ops, op_names[op]))
            continue;
        double v[16];
        if (!o.requests)
            warm_up(cl, &o, (op_kind)op, pool, grads);
        uint64_t misses0 = server_misses(cl);
        uint64_t rows = 0;
        double cpu0 = bench_cpu_s(server_pid), client_cpu0 = bench_cpu_s(getpid());
        double bg0 = bench_threads_cpu_s(server_pid, "rocksdb:");
        for (uint32_t r = 0; r < o.runs; r++) {
            uint64_t n;
            v[r] = drive(cl, &o, (op_kind)op, pool, grads, o.seconds, &n);
            rows += n;
        }
        rates[op] = bench_median(v, o.runs);
        printf("%s_rows_per_sec %.0f\n", op_names[op], rates[op]);
        /* Steadier than wall clock on a shared machine: the shard's CPU,
         * its RocksDB threads included. */
        printf("%s_server_cpu_us_per_row %.3f\n", op_names[op],
               (bench_cpu_s(server_pid) - cpu0) * 1e6 / (double)rows);
        /* The client's too (this process: the caller and the client's I/O
         * thread): on one machine both share the cores. */
        printf("%s_client_cpu_us_per_row %.3f\n", op_names[op],
               (bench_cpu_s(getpid()) - client_cpu0) * 1e6 / (double)rows);
        /* Of the shard's: RocksDB's own threads (flushes, compactions). */
        printf("%s_server_rocksdb_cpu_us_per_row %.3f\n", op_names[op],
               (bench_threads_cpu_s(server_pid, "rocksdb:") - bg0) * 1e6 / (double)rows);
        if (op != OP_PUSH && o.memory_mb) /* the share of rows read from RocksDB */
            printf("%s_memory_miss_fraction %.4f\n", op_names[op],
                   (double)(server_misses(cl) - misses0) / (double)rows);
        fflush(stdout);
    }
    /* Cold pulls: every key fresh and from a rank range that the load
     * evicted long ago and Zipf access almost never touches, so (nearly)
     * every row comes from RocksDB. The misses counter says how many did. */
    uint64_t cold_lo = o.keys / 4, cold_hi = 3 * (o.keys / 4), cold_next = cold_lo;
    double cold_rate = 0, cold_miss_frac = 0;
    if (o.memory_mb && o.keys >= (uint64_t)o.batch * 1024) { /* a cold range of >= 512 requests */
        uint64_t misses0 = server_misses(cl);
        double v[16];
        uint64_t pulled = 0;
        for (uint32_t r = 0; r < o.runs; r++) {
            v[r] = drive_fresh(cl, &o, rank_fid, &cold_next, cold_lo + (cold_hi - cold_lo) / 2, o.seconds, &pulled);
        }
        cold_rate = bench_median(v, o.runs);
        cold_miss_frac = pulled ? (double)(server_misses(cl) - misses0) / (double)pulled : 0;
        printf("cold_pull_rows_per_sec %.0f\n", cold_rate);
        printf("cold_pull_memory_miss_fraction %.3f\n", cold_miss_frac);
    }
    /* Rows created on a store that holds rows: a first pull then asks the
     * store's files (their filters) for each new key, where the load above
     * asked an empty store. Keys of ranks above every earlier one. */
    if (o.stored_load) {
        wait_written_back(cl);
        wait_compacted(cl);
        uint64_t next = o.keys, created = 0;
        double c0 = bench_cpu_s(server_pid);
        double rate = drive_fresh(cl, &o, rank_fid, &next, 2 * o.keys, 1e9, &created);
        printf("stored_load_rows_per_sec %.0f\n", rate);
        printf("stored_load_server_cpu_us_per_row %.3f\n",
               (bench_cpu_s(server_pid) - c0) * 1e6 / (double)(created ? created : 1));
    }
    ps_shard_stats st;
    if (ps_client_stats(cl, 0, &st, err, sizeof(err)) == 0) {
        if (st.ntables) {
            const ps_table_stats *t = &st.tables[0].stats;
            printf("shard_rows %" PRIu64 " rows_in_memory %" PRIu64 " memory_misses %" PRIu64 "\n",
                   t->rows, t->rows_in_memory, t->memory_misses);
        }
        ps_shard_stats_deinit(&st);
    }
    ps_client_free(cl);
    stop_server();

    double get_rate, put_rate, cold_get;
    /* Raw cold reads use the upper half of the cold range: keys the shard's
     * cold phase (lower half) did not touch. */
    raw_rocksdb(&o, pool, cfg->buckets, cold_rate > 0 ? cold_lo + (cold_hi - cold_lo) / 2 : 0,
                cold_rate > 0 ? cold_hi : 0, &get_rate, &put_rate, &cold_get);
    printf("raw_multiget_rows_per_sec %.0f\n", get_rate);
    if (cold_rate > 0) {
        printf("raw_multiget_cold_rows_per_sec %.0f\n", cold_get);
        printf("ratio_cold_pull_to_raw_cold_multiget %.2f\n", cold_rate / cold_get);
    }
    printf("raw_writebatch_rows_per_sec %.0f\n", put_rate);
    printf("ratio_pull_to_raw_multiget %.2f\n", rates[OP_PULL] / get_rate);
    printf("ratio_lookup_to_raw_multiget %.2f\n", rates[OP_LOOKUP] / get_rate);
    printf("ratio_push_to_raw_writebatch %.2f\n", rates[OP_PUSH] / put_rate);
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    printf("server_max_rss_mb %.0f\n", (double)ru.ru_maxrss / 1024.0);
    ps_config_free(cfg);
    return 0;
}
