#pragma once
/* Streaming training against the shards (DESIGN.md "The worker").
 *
 * Two threads. The reader thread (feed.h) reads lines, parses them and fills
 * minibatches (unique keys per table); the training thread pulls each
 * batch's rows, runs the model, scores every example before training on it
 * (progressive validation), and pushes the summed sparse gradients and the
 * dense gradients.
 *
 * Pipeline and staleness: the next batch's pull is sent while the current
 * batch computes, and pushes are not waited for, as long as the batches whose
 * pushes are unacknowledged when a pull is sent (the current one included)
 * number at most max_in_flight. max_in_flight = 0 makes every step
 * synchronous: pull, compute, push, wait; one worker on the same input then
 * always ends in the same state. */

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "client.h"
#include "config.h"
#include "feed.h"
#include "reader.h"

typedef struct ps_train_options {
    const ps_config *cfg;        /* loaded with ps_worker_config_ext */
    const char *const *inputs;
    size_t ninputs;
    bool follow;
    const char *holdout;         /* may be NULL */
    uint32_t worker_index, num_workers;
    uint64_t max_examples;       /* 0 = no limit */
    uint32_t passes;             /* >= 1 */
    const volatile sig_atomic_t *stop;
    FILE *progress;              /* progress lines; NULL = none */
    const char *resume;          /* checkpoint (or directory of them) to resume from */
} ps_train_options;

typedef struct ps_train_result {
    uint64_t examples, malformed, batches;
    double seconds, examples_per_sec;
    double auc, logloss, calibration;
    bool has_holdout;
    double holdout_auc, holdout_logloss;
    uint64_t holdout_examples;
    double mean_staleness;
    uint64_t reconnects;
    uint64_t checkpoints;        /* barriers this worker paused at */
    bool predicted;              /* a --predict run (predict.h): lines is set */
    uint64_t lines;              /* output lines written */
} ps_train_result;

/* What a run of o reads (for --predict too, predict.h): the feed's options. */
void ps_train_feed_options(const ps_train_options *o, ps_feed_options *ret);
/* The run's client, which logs each shard outage as it begins, while it
 * lasts and when it ends. The shards wait for every client named
 * "ctrps-worker..." at a checkpoint barrier: a client that never pushes
 * takes another name. Caller frees with ps_client_free(). */
int ps_train_client_new(const ps_train_options *o, const char *name, ps_client **ret_client,
                        char *err, size_t errlen);

/* Nothing done: counters 0, metrics NaN. */
void ps_train_result_init(ps_train_result *r);

/* Train until the input ends (or stop, or max_examples). *ret is filled
 * even on an error: what was done before it. */
int ps_train_run(const ps_train_options *o, ps_train_result *ret, char *err, size_t errlen);

/* The final line: one JSON object (NaN as null), with "error": error last
 * when error is not NULL (what was done before it still counts); a
 * prediction run adds "lines". */
void ps_train_result_json(const ps_train_result *r, const char *error, FILE *out);
