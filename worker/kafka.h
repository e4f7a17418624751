#pragma once
/* Input lines from a Kafka topic (librdkafka): one message is one line.
 *
 * Source: kafka://HOST:PORT[,HOST:PORT...]/TOPIC. The workers of a group
 * share the topic's partitions statically: worker I of N reads partitions
 * I, I+N, I+2N, ... (assigned, not subscribed: no rebalance moves a
 * partition between workers in the middle of a batch, so the position a
 * worker reports at a checkpoint barrier covers exactly what it trained).
 *
 * Where reading starts, per partition: the position given to
 * ps_kafka_seek() (a checkpoint's, for --resume), else the offset the group
 * committed, else the earliest one retained. Without follow, reading ends
 * at each partition's high watermark as it was when the source opened: a
 * "pass" is the topic as it stood then. With follow it goes on until the
 * stop or quit flag.
 *
 * Offsets are never committed by librdkafka on its own
 * (enable.auto.commit = false, enable.auto.offset.store = false): the
 * worker commits a position with ps_kafka_commit() only once the pushes of
 * every example before it are acknowledged by the shards. Committed offsets
 * make a restarted worker go on where the last acknowledged batch ended (at
 * least once: a crash between an acknowledgement and its commit trains
 * those batches again); a cluster checkpoint records the position with the
 * shards' state, so --resume from it is exactly once.
 *
 * Thread use: one thread reads (next, position); ps_kafka_commit() may be
 * called from another (librdkafka's handle is thread-safe and the partition
 * list is fixed at open). */

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Partitions one worker reads at most: its position must fit one line of a
 * checkpoint manifest (libinih reads lines of up to 200 bytes). */
#define PS_KAFKA_MAX_PARTITIONS 8

typedef struct ps_kafka ps_kafka;

/* The offset of the next unread message of each partition this worker
 * reads (n = 0: not a Kafka position). */
typedef struct ps_kafka_pos {
    uint32_t n;
    int32_t partition[PS_KAFKA_MAX_PARTITIONS];
    int64_t next[PS_KAFKA_MAX_PARTITIONS];
} ps_kafka_pos;

typedef struct ps_kafka_options {
    const char *url;             /* kafka://BROKERS/TOPIC */
    const char *group;           /* group.id: where offsets are committed */
    const char *const *properties; /* extra librdkafka properties, "key=value" */
    size_t nproperties;
    uint32_t worker_index, num_workers;
    bool follow;
    size_t max_line;             /* longer messages are reported, not returned */
    const volatile sig_atomic_t *stop; /* may be NULL */
    const volatile sig_atomic_t *quit; /* may be NULL */
} ps_kafka_options;

/* Is s a kafka:// source? */
bool ps_kafka_is_url(const char *s);
/* Check a kafka:// source: brokers HOST:PORT[,HOST:PORT...] and a topic
 * of Kafka's legal characters. PS_ECONFIG with the reason in err. */
int ps_kafka_check_url(const char *url, char *err, size_t errlen);

/* Connect, find the topic's partitions, take this worker's share and where
 * each starts and (without follow) ends. Errors: PS_ECONFIG (bad URL or
 * property), PS_EUNAVAILABLE (no broker answered, no such topic, a worker
 * with no partition), PS_ELIMIT (more than PS_KAFKA_MAX_PARTITIONS). */
int ps_kafka_new(const ps_kafka_options *opts, ps_kafka **ret, char *err, size_t errlen);
void ps_kafka_free(ps_kafka *k);

/* The next message: 1 with the line (borrowed until the next call; a
 * trailing newline is cut off), a name for messages ("TOPIC/PARTITION") and
 * its offset; 0 at the end (see above); PS_EPARSE for a message longer than
 * max_line (skipped); another negative code on a fatal consumer error. */
int ps_kafka_next(ps_kafka *k, const char **ret_line, size_t *ret_len, const char **ret_name,
                  uint64_t *ret_offset, char *err, size_t errlen);

void ps_kafka_position(const ps_kafka *k, ps_kafka_pos *ret);
/* Before the first ps_kafka_next: start at pos (its partitions must be
 * among this worker's; PS_ECONFIG otherwise, e.g. another --num-workers). */
int ps_kafka_seek(ps_kafka *k, const ps_kafka_pos *pos, char *err, size_t errlen);
/* Messages before pos and in all, over this worker's partitions, from
 * where the run started to the end offsets; -ESPIPE in follow mode. */
int ps_kafka_progress(const ps_kafka *k, const ps_kafka_pos *pos, uint64_t *ret_done,
                      uint64_t *ret_total);
/* Commit pos for the group. Asynchronous commits are sent at most every
 * 200 ms (a later commit covers an earlier one; the latest one held back
 * is sent when the topic has no new message for a poll interval); sync
 * waits for the broker. */
int ps_kafka_commit(ps_kafka *k, const ps_kafka_pos *pos, bool sync, char *err, size_t errlen);

/* A position in checkpoint text: "v1 kafka topic=HASH P:OFFSET ...", and
 * back; the hash names the topic, so a checkpoint of another input is not
 * taken for this one. */
int ps_kafka_format_position(char *out, size_t outlen, const ps_kafka_pos *pos, uint64_t topic_hash);
bool ps_kafka_is_position(const char *s);
int ps_kafka_parse_position(const char *s, ps_kafka_pos *ret, uint64_t *ret_topic_hash);
/* The hash the position formats carry for a kafka:// source: its topic's. */
uint64_t ps_kafka_topic_hash(const char *url);
