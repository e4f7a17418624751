#pragma once
/* Prediction (ctrps-worker --predict): the trained model scores every input
 * line without training and without creating anything on the shards.
 *
 * The feed (feed.h, with output_lines) reads and parses as training does and
 * keeps, per batch, every input line in order with the example it became or
 * a mark for a line it rejected. The prediction thread reads each batch's
 * rows with Lookup (read-only: a key never trained scores with a zero row,
 * exactly as the holdout does), runs the model's forward pass with the dense
 * blocks read once from the shards, and writes one output line per input
 * line. The next batch's lookups are sent before the current batch computes.
 *
 * Output: "%.9g" of the probability, "nan" for a rejected line (a malformed,
 * blank or over-long line), so output line k belongs to input line k of this
 * worker's share (a CSV header gets none); with [input] id_column the
 * column's raw text and a tab come first. The stream is flushed after every
 * batch, so --follow output is live. */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "batch.h"
#include "client.h"
#include "config.h"
#include "model.h"
#include "train.h"

#define PS_PREDICT_MAX_TABLES 16

/* Lookups of one batch's rows, one call per table: started, then waited. */
typedef struct ps_predict_lookup {
    ps_call *calls[PS_PREDICT_MAX_TABLES];
    uint8_t *found[PS_PREDICT_MAX_TABLES]; /* owned until the wait */
    int ncalls;
} ps_predict_lookup;

/* Start a Lookup of every table's unique keys of b into the table's values
 * (zeros for keys not found). However it returns, *l holds what was started
 * and must be passed to ps_predict_lookup_wait(). */
int ps_predict_lookup_start(ps_client *c, ps_batch *b, ps_predict_lookup *l);
/* Wait for every call of l (all of them, even after an error) and free its
 * buffers. 0 or the first error, its message in err. */
int ps_predict_lookup_wait(ps_predict_lookup *l, char *err, size_t errlen);

/* Read the model's dense blocks from the shards (never creating them: a
 * model that was not trained is an error). */
int ps_predict_load_dense(ps_client *c, ps_model *m, char *err, size_t errlen);

/* Score the input of o (inputs, follow, worker share, max_examples, stop;
 * passes, holdout and resume must be unset) into out until it ends. *ret:
 * examples scored, lines written, malformed lines, and for labelled input
 * the AUC, logloss and calibration of the scores; filled even on an error. */
int ps_predict_run(const ps_train_options *o, FILE *out, ps_train_result *ret, char *err,
                   size_t errlen);
