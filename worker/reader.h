#pragma once
/* Input lines for the worker: files, globs, directories (their files in name
 * order), and "-" for stdin, read in the order given; optionally followed
 * like `tail -F` for online learning.
 *
 * Follow mode: at the end of the last input the reader waits for more: lines
 * appended to the current file, a replaced or truncated file (read again from
 * its start), new files in a followed directory or glob (taken in name
 * order). A final line without its newline is held back until the newline
 * arrives, so a half-written line is never parsed. ps_reader_next() returns
 * 0 once the stop flag is set and everything complete has been read.
 *
 * Sharding: with num_workers N, worker I takes lines I, I+N, I+2N, ... of the
 * whole input (counting every line, including bad ones), so N workers on the
 * same inputs see disjoint shares and together see every line.
 *
 * Position: (input index, file index, byte offset, line count) identifies
 * where reading stands; a reader can be started again from it (checkpoints).
 * For stdin, which cannot seek, the line count is the position.
 *
 * Kafka: a single input kafka://BROKERS/TOPIC reads the topic's messages as
 * lines through kafka.h (sharded by partition, not by line; read once, like
 * stdin; the position is the offsets of this worker's partitions). */

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kafka.h"

typedef struct ps_reader ps_reader;

typedef struct ps_reader_options {
    const char *const *inputs;   /* borrowed for the reader's life */
    size_t ninputs;
    bool follow;
    uint32_t worker_index, num_workers;
    size_t max_line;             /* longer lines are reported, not returned; default 1 MiB */
    uint32_t poll_ms;            /* follow-mode polling interval; default 100 */
    bool headers;                /* the first line of every file is a header (CSV) */
    bool report_idle;            /* follow mode: ps_reader_next returns 3 after each
                                  * wait for input (a consumer can pass on what it has) */
    const volatile sig_atomic_t *stop; /* may be NULL */
    const volatile sig_atomic_t *quit; /* may be NULL; as stop, for a consumer that
                                        * gave up (not a signal handler) */
    const char *kafka_group;     /* kafka:// only: group.id for committed offsets */
    const char *const *kafka_properties; /* kafka:// only: extra "key=value" */
    size_t nkafka_properties;
} ps_reader_options;

typedef struct ps_reader_pos {
    uint32_t file;               /* index into the expanded file list */
    uint64_t offset;             /* byte offset of the next unread line */
    uint64_t lines;              /* lines consumed in total (all workers' shares) */
    ps_kafka_pos kafka;          /* a kafka:// input's offsets (kafka.n > 0) */
} ps_reader_pos;

/* Expand the inputs (an input that matches nothing is an error, except in
 * follow mode for a directory or glob, which may fill later). */
int ps_reader_new(const ps_reader_options *opts, ps_reader **ret_reader, char *err, size_t errlen);
void ps_reader_free(ps_reader *r);

/* The next line of this worker's share, without its newline (and without a
 * '\r' before it). Returns 1 with the line (borrowed until the next call),
 * its file name and 1-based line number; 2 for a file's header line (with
 * `headers`: every worker gets every header, and headers are not counted in
 * the shares); 3 with nothing filled after a poll interval spent waiting for
 * input (follow mode with report_idle only; call again to go on reading);
 * 0 at the end of input (or on stop in follow mode); PS_EPARSE
 * for a line longer than max_line (skipped; the location is filled, the line
 * is not); another negative code on a read error (err is filled). */
int ps_reader_next(ps_reader *r, const char **ret_line, size_t *ret_len, const char **ret_file,
                   uint64_t *ret_lineno, char *err, size_t errlen);

/* Start over from the first input (for --passes); not for stdin. */
int ps_reader_rewind(ps_reader *r);
bool ps_reader_seekable(const ps_reader *r);

void ps_reader_position(const ps_reader *r, ps_reader_pos *ret);
/* Bytes of the input before `pos` and in all, from the files' sizes when
 * they were listed: for progress estimates (a file that grows or shrinks
 * later makes them approximate). -ESPIPE for stdin and in follow mode, where
 * the end is unknown. */
int ps_reader_progress(const ps_reader *r, const ps_reader_pos *pos, uint64_t *ret_done,
                       uint64_t *ret_total);
/* Resume at a position taken from an earlier reader over the same inputs. */
int ps_reader_seek(ps_reader *r, const ps_reader_pos *pos, char *err, size_t errlen);

/* Record that everything before pos is trained and acknowledged: for a
 * kafka:// input, commit its offsets for the group (asynchronous ones at a
 * bounded rate; sync waits for the broker). Nothing for files and stdin.
 * Safe from another thread than the reading one. */
int ps_reader_commit(ps_reader *r, const ps_reader_pos *pos, bool sync, char *err, size_t errlen);
/* Is the input a kafka:// source? */
bool ps_reader_is_kafka(const ps_reader *r);
