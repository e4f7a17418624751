#include "live.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

void ps_train_live_init(ps_train_live *l, uint32_t nshards, const char *worker) {
    memset(l, 0, sizeof(*l));
    pthread_mutex_init(&l->mu, NULL);
    l->start_ns = ps_prom_now_ns();
    l->nshards = nshards;
    snprintf(l->worker, sizeof(l->worker), "%s", worker);
    l->window_auc = l->window_logloss = l->input_done = NAN;
}

void ps_train_live_deinit(ps_train_live *l) { pthread_mutex_destroy(&l->mu); }

bool ps_train_live_ready(void *ctx) {
    ps_train_live *l = ctx;
    pthread_mutex_lock(&l->mu);
    uint32_t total = 0;
    bool ready = l->client && ps_client_shards_ready(l->client, &total) >= total && total > 0;
    pthread_mutex_unlock(&l->mu);
    return ready;
}

int ps_train_live_render(void *ctx, ps_buf *out) {
    ps_train_live *l = ctx;
    pthread_mutex_lock(&l->mu);
    /* Copy the guarded fields; the atomics are read below. */
    struct {
        double window_auc, window_logloss, interval_examples_per_sec, staleness, input_done;
        ps_reader_pos pos;
        const char *path;
        uint32_t pass;
        bool client;
    } s = {l->window_auc, l->window_logloss, l->interval_examples_per_sec, l->staleness,
           l->input_done, l->pos, l->path, l->pass, l->client != NULL};
    ps_client_counters cc = {0};
    uint32_t connected = 0, nshards = l->nshards;
    if (l->client) {
        ps_client_counters_get(l->client, &cc);
        connected = ps_client_shards_ready(l->client, &nshards);
    }
    /* The file the reader stands in: how much of it is not trained yet
     * (in --follow mode, how far training is behind the writer). */
    struct stat st;
    double lag = s.path && strcmp(s.path, "-") && stat(s.path, &st) == 0 && (uint64_t)st.st_size >= s.pos.offset
                     ? (double)((uint64_t)st.st_size - s.pos.offset)
                     : NAN;
    pthread_mutex_unlock(&l->mu);

    char wl[96];
    ps_prom_labels(wl, sizeof(wl), "worker", l->worker, NULL);
    ps_prom p;
    ps_prom_init(&p, out, wl);
    uint64_t examples = atomic_load(&l->examples);
    double elapsed = (double)(ps_prom_now_ns() - l->start_ns) / 1e9;
    ps_prom_scalar(&p, "ctrps_worker_examples_total", PS_PROM_COUNTER, "examples trained on",
                   (double)examples);
    ps_prom_scalar(&p, "ctrps_worker_batches_total", PS_PROM_COUNTER, "minibatches trained on",
                   (double)atomic_load(&l->batches));
    ps_prom_scalar(&p, "ctrps_worker_examples_per_second", PS_PROM_GAUGE,
                   "examples trained per second over the last progress window",
                   s.interval_examples_per_sec);
    ps_prom_scalar(&p, "ctrps_worker_uptime_seconds", PS_PROM_GAUGE, "time since the worker started",
                   elapsed);
    ps_prom_scalar(&p, "ctrps_worker_window_auc", PS_PROM_GAUGE,
                   "progressive-validation AUC of the last progress window", s.window_auc);
    ps_prom_scalar(&p, "ctrps_worker_window_logloss", PS_PROM_GAUGE,
                   "progressive-validation logloss of the last progress window", s.window_logloss);
    ps_prom_scalar(&p, "ctrps_worker_staleness_batches", PS_PROM_GAUGE,
                   "mean batches whose pushes were unacknowledged when a pull was sent", s.staleness);
    ps_prom_family(&p, "ctrps_worker_pull_duration_seconds", PS_PROM_HISTOGRAM,
                   "pulls (sparse and dense) from submission to the last shard's answer");
    ps_prom_histogram_write(&p, "", &l->pull_latency);
    ps_prom_family(&p, "ctrps_worker_push_duration_seconds", PS_PROM_HISTOGRAM,
                   "pushes (sparse and dense) from submission to the last shard's acknowledgement");
    ps_prom_histogram_write(&p, "", &l->push_latency);
    ps_prom_scalar(&p, "ctrps_worker_requests_total", PS_PROM_COUNTER, "requests sent to the shards",
                   (double)cc.requests);
    ps_prom_scalar(&p, "ctrps_worker_reconnects_total", PS_PROM_COUNTER,
                   "connections to a shard made again after one was lost", (double)cc.reconnects);
    ps_prom_scalar(&p, "ctrps_worker_request_timeouts_total", PS_PROM_COUNTER,
                   "requests that got no answer in time", (double)cc.timeouts);
    ps_prom_scalar(&p, "ctrps_worker_shard_outages_total", PS_PROM_COUNTER,
                   "shard outages ridden out", (double)cc.outages);
    ps_prom_scalar(&p, "ctrps_worker_shards_connected", PS_PROM_GAUGE,
                   "shards connected now (what /readyz checks against the cluster's count)",
                   (double)connected);
    ps_prom_scalar(&p, "ctrps_worker_shards", PS_PROM_GAUGE, "shards in the cluster map", (double)nshards);
    ps_prom_scalar(&p, "ctrps_worker_input_pass", PS_PROM_GAUGE, "pass over the input (0-based)",
                   (double)s.pass);
    ps_prom_scalar(&p, "ctrps_worker_input_file_index", PS_PROM_GAUGE,
                   "index of the input file trained up to, in the expanded input list", (double)s.pos.file);
    ps_prom_scalar(&p, "ctrps_worker_input_offset_bytes", PS_PROM_GAUGE,
                   "byte offset in that file trained up to", (double)s.pos.offset);
    ps_prom_scalar(&p, "ctrps_worker_input_lines_total", PS_PROM_COUNTER,
                   "input lines consumed (every worker's share)", (double)s.pos.lines);
    ps_prom_scalar(&p, "ctrps_worker_input_done_ratio", PS_PROM_GAUGE,
                   "share of the run's input trained on (NaN when unknown: stdin, --follow)",
                   s.input_done);
    ps_prom_scalar(&p, "ctrps_worker_input_lag_bytes", PS_PROM_GAUGE,
                   "bytes of the current input file not trained on yet (NaN for stdin)", lag);
    ps_prom_scalar(&p, "ctrps_worker_ready", PS_PROM_GAUGE,
                   "1 while training and connected to every shard (what /readyz says)",
                   s.client && nshards > 0 && connected >= nshards ? 1 : 0);
    return ps_prom_finish(&p);
}
