#pragma once
/* The feed: the worker's reader thread and the batch queue between it and
 * the training thread.
 *
 * A fixed set of batches circulates: free -> filled by the reader thread ->
 * ready (FIFO) -> taken by the trainer -> given back -> free. The reader
 * thread reads lines (ps_reader), parses them (ps_parser), counts and names
 * bad lines at a bounded rate, and hands over a batch when it is full or the
 * input ends. The number of batches bounds how far it parses ahead, so the
 * feed's memory does not depend on the input.
 *
 * States and the functions that move them:
 *   new      ps_feed_new(): parser and reader open, no batch, no thread;
 *            ps_feed_seek() may move the reader (resume)
 *   running  ps_feed_start(): batches allocated, the thread reads
 *   done     the thread met the end of the input (every pass), the stop
 *            flag, max_examples, or an error; ready batches still drain
 *   stopped  ps_feed_stop(): the thread is told to quit and joined
 * ps_feed_free() stops a running feed first. */

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "parse.h"
#include "reader.h"

typedef struct ps_feed ps_feed;

typedef struct ps_feed_options {
    const ps_input_config *input; /* borrowed for the feed's life */
    const char *const *inputs;   /* borrowed for the feed's life */
    size_t ninputs;
    bool follow;
    uint32_t worker_index, num_workers;
    uint32_t passes;             /* >= 1; a non-seekable input is read once */
    uint64_t max_examples;       /* 0 = no limit */
    uint32_t malformed_log_per_s; /* warnings about bad lines per second */
    const volatile sig_atomic_t *stop; /* may be NULL; borrowed */
    /* --predict: every line but a CSV header gets an output line in its
     * batch (ps_batch_note_line), a rejected or blank one too, and a batch
     * is handed over when it holds batch_size lines rather than examples;
     * with input->id_column, each line's id text is kept. */
    bool output_lines;
} ps_feed_options;

typedef struct ps_feed_counters {
    uint64_t examples;           /* parsed into batches */
    uint64_t malformed;          /* lines skipped: unparsable or too long */
} ps_feed_counters;

/* Open the parser and the reader (ps_reader_new's errors, in err). Caller
 * frees with ps_feed_free(). */
int ps_feed_new(const ps_feed_options *opts, ps_feed **ret_feed, char *err, size_t errlen);
/* Stop the thread if it runs, then free everything; accepts NULL. */
void ps_feed_free(ps_feed *f);

/* Dense inputs per example of the parser (for ps_batch_layout_init). */
uint32_t ps_feed_ndense(const ps_feed *f);
/* Before ps_feed_start: continue reading at a position (ps_reader_seek). */
int ps_feed_seek(ps_feed *f, const ps_reader_pos *pos, char *err, size_t errlen);

/* Everything up to pos (a batch's end) is trained and its pushes are
 * acknowledged: ps_reader_commit() (Kafka offsets; nothing for files).
 * From the training thread, while the reader thread runs. */
int ps_feed_commit(ps_feed *f, const ps_reader_pos *pos, bool sync, char *err, size_t errlen);
bool ps_feed_is_kafka(const ps_feed *f);

/* Allocate the batches (of batch_size examples, laid out by L, which must
 * outlive the feed) and start the reader thread. */
int ps_feed_start(ps_feed *f, const ps_batch_layout *L, uint32_t batch_size);

/* The next filled batch, in input order; blocks until one is ready. NULL
 * once the thread is done and every batch was taken. The batch is borrowed
 * until ps_feed_give_back(). */
ps_batch *ps_feed_take(ps_feed *f);
/* The same without blocking: NULL when no batch is ready now. */
ps_batch *ps_feed_try_take(ps_feed *f);
void ps_feed_give_back(ps_feed *f, ps_batch *b);

/* Tell the thread to quit at its next batch and join it. Returns the error
 * that ended reading (a read error, a bad CSV header, an input in which
 * every line was malformed: PS_EPARSE naming the format and the first bad
 * line), with its message in err, or 0. Idempotent; err is left alone when
 * 0 is returned. */
int ps_feed_stop(ps_feed *f, char *err, size_t errlen);

/* Safe from any thread. */
void ps_feed_counters_get(const ps_feed *f, ps_feed_counters *ret);
