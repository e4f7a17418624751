#pragma once
/* What a running worker shows on its metrics endpoint (--metrics-listen):
 * written by the training thread as it goes, read by the endpoint's thread
 * when it is scraped. Counters and histograms are atomics; the rest (the
 * window's AUC and logloss, the input position, the client) sits under a
 * mutex held only to copy a few fields, so a scrape never stalls training.
 *
 * Families (README "Metrics"): ctrps_worker_examples_total,
 * ctrps_worker_batches_total, ctrps_worker_examples_per_second,
 * ctrps_worker_window_auc, ctrps_worker_window_logloss,
 * ctrps_worker_staleness_batches, ctrps_worker_pull_duration_seconds,
 * ctrps_worker_push_duration_seconds, ctrps_worker_reconnects_total,
 * ctrps_worker_shards_connected, ctrps_worker_input_*. */

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "client.h"
#include "promtext.h"
#include "reader.h"

typedef struct ps_train_live {
    _Atomic uint64_t examples, batches;
    ps_prom_histogram pull_latency, push_latency;  /* handed to the client */
    uint64_t start_ns;           /* set by ps_train_live_init */
    uint32_t nshards;            /* set by ps_train_live_init */
    char worker[64];             /* label value */

    pthread_mutex_t mu;          /* guards the rest */
    ps_client *client;           /* while training; NULL before and after */
    double window_auc, window_logloss;   /* of the last window ended (NaN before) */
    double interval_examples_per_sec;    /* over the last window */
    double staleness;            /* mean unacknowledged batches at a pull */
    double input_done;           /* share of the input read; NaN when unknown */
    ps_reader_pos pos;           /* after the last batch trained */
    const char *path;            /* its file (the reader's; NULL: none or stdin) */
    uint32_t pass;
} ps_train_live;

void ps_train_live_init(ps_train_live *l, uint32_t nshards, const char *worker);
void ps_train_live_deinit(ps_train_live *l);
/* The whole page (a ps_metrics_render_fn; ctx is the ps_train_live). */
int ps_train_live_render(void *ctx, ps_buf *out);
/* Ready: training, and connected to every shard (ctx is the ps_train_live). */
bool ps_train_live_ready(void *ctx);
