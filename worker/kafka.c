/* Kafka input (kafka.h): a librdkafka consumer with a static assignment.
 *
 * State per partition of this worker: next (offset of the next message not
 * yet returned: what a position and a commit carry), end (high watermark at
 * open; unused in follow mode), start (where this run began, for progress)
 * and done. The consumer is assigned once, at the first ps_kafka_next(), so
 * that ps_kafka_seek() may still move the starts; from then on only `next`
 * changes, on the reading thread. Commits read a position handed over by
 * the caller, never this state; they share only the throttle and the
 * pending commit, under commit_mu. */
#include "kafka.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "error.h"
#include "log.h"

#define META_TIMEOUT_MS 10000
#define POLL_MS 100
#define ASYNC_COMMIT_EVERY_S 0.2

typedef struct part {
    int32_t id;
    int64_t start, next, end;
    bool done;
} part;

struct ps_kafka {
    ps_kafka_options o;
    rd_kafka_t *rk;
    char *topic;
    part parts[PS_KAFKA_MAX_PARTITIONS];
    uint32_t nparts;
    bool assigned;
    rd_kafka_message_t *held;    /* the message last returned */
    char name[300];              /* "TOPIC/PARTITION" of it */
    double last_warn;
    /* Commits, from the training thread; a throttled one waits in pending
     * until the next commit or until the reading thread finds the topic
     * idle (so a follower's last batches do not stay uncommitted). */
    pthread_mutex_t commit_mu;
    double last_commit;
    ps_kafka_pos pending;        /* pending.n == 0: none */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- the source URL ------------------------------------------------------------------- */

#define SCHEME "kafka://"

bool ps_kafka_is_url(const char *s) { return strncmp(s, SCHEME, strlen(SCHEME)) == 0; }

/* Kafka's legal topic names: [a-zA-Z0-9._-], at most 249 bytes. */
static bool valid_topic(const char *t) {
    size_t n = strlen(t);
    if (n == 0 || n > 249 || !strcmp(t, ".") || !strcmp(t, ".."))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)t[i]) && !strchr("._-", t[i]))
            return false;
    return true;
}

/* HOST:PORT with a port in 1..65535; HOST may be [IPv6]. */
static bool valid_broker(const char *b, size_t len) {
    const char *colon = NULL;
    for (size_t i = 0; i < len; i++)
        if (b[i] == ':')
            colon = b + i;
    if (!colon || colon == b || (size_t)(colon - b) == len - 1)
        return false;
    unsigned long port = 0;
    for (const char *p = colon + 1; p < b + len; p++) {
        if (!isdigit((unsigned char)*p))
            return false;
        port = port * 10 + (unsigned long)(*p - '0');
        if (port > 65535)
            return false;
    }
    for (const char *p = b; p < colon; p++)
        if (isspace((unsigned char)*p) || *p == '/')
            return false;
    return port > 0;
}

int ps_kafka_check_url(const char *url, char *err, size_t errlen) {
    if (!ps_kafka_is_url(url)) {
        snprintf(err, errlen, "'%s': not a kafka:// source", url);
        return PS_ECONFIG;
    }
    const char *brokers = url + strlen(SCHEME), *slash = strchr(brokers, '/');
    if (!slash) {
        snprintf(err, errlen, "'%s': expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC", url);
        return PS_ECONFIG;
    }
    for (const char *b = brokers; b <= slash;) {
        const char *e = memchr(b, ',', (size_t)(slash - b));
        if (!e)
            e = slash;
        if (!valid_broker(b, (size_t)(e - b))) {
            snprintf(err, errlen, "'%s': broker '%.*s' is not HOST:PORT", url, (int)(e - b), b);
            return PS_ECONFIG;
        }
        b = e + 1;
    }
    if (!valid_topic(slash + 1)) {
        snprintf(err, errlen, "'%s': topic '%s' is not a Kafka topic name ([a-zA-Z0-9._-], 1 to 249)",
                 url, slash + 1);
        return PS_ECONFIG;
    }
    return 0;
}

uint64_t ps_kafka_topic_hash(const char *url) {
    const char *slash = strchr(url + strlen(SCHEME), '/');
    const char *topic = slash ? slash + 1 : url;
    return XXH64(topic, strlen(topic), 0x6b61666b61ULL);
}

/* ---- open ------------------------------------------------------------------------------ */

static int conf_set(rd_kafka_conf_t *conf, const char *key, const char *value, char *err,
                    size_t errlen) {
    char why[512];
    if (rd_kafka_conf_set(conf, key, value, why, sizeof(why)) != RD_KAFKA_CONF_OK) {
        snprintf(err, errlen, "kafka property %s=%s: %s", key, value, why);
        return PS_ECONFIG;
    }
    return 0;
}

static int make_consumer(ps_kafka *k, const char *brokers, char *err, size_t errlen) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* Offsets move only when the worker commits what the shards acknowledged. */
    static const char *const fixed[][2] = {
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"enable.partition.eof", "true"},
        {"auto.offset.reset", "earliest"},
    };
    int r = conf_set(conf, "bootstrap.servers", brokers, err, errlen);
    if (r == 0)
        r = conf_set(conf, "group.id", k->o.group, err, errlen);
    for (size_t i = 0; r == 0 && i < k->o.nproperties; i++) {
        const char *p = k->o.properties[i], *eq = strchr(p, '=');
        char key[256];
        if (!eq || eq == p || (size_t)(eq - p) >= sizeof(key)) {
            snprintf(err, errlen, "kafka property '%s': expected key=value", p);
            r = PS_ECONFIG;
            break;
        }
        snprintf(key, sizeof(key), "%.*s", (int)(eq - p), p);
        for (size_t j = 0; j < sizeof(fixed) / sizeof(fixed[0]); j++) {
            if (!strcmp(key, fixed[j][0])) {
                snprintf(err, errlen, "kafka property %s: set by ctrps (offsets are committed "
                         "only after the shards acknowledged the pushes)", key);
                r = PS_ECONFIG;
            }
        }
        if (r == 0 && (!strcmp(key, "bootstrap.servers") || !strcmp(key, "group.id"))) {
            snprintf(err, errlen, "kafka property %s: given by the kafka:// source and "
                     "[input] kafka_group", key);
            r = PS_ECONFIG;
        }
        if (r == 0)
            r = conf_set(conf, key, eq + 1, err, errlen);
    }
    for (size_t j = 0; r == 0 && j < sizeof(fixed) / sizeof(fixed[0]); j++)
        r = conf_set(conf, fixed[j][0], fixed[j][1], err, errlen);
    if (r < 0) {
        rd_kafka_conf_destroy(conf);
        return r;
    }
    char why[512];
    k->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
    if (!k->rk) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "kafka consumer: %s", why);
        return PS_ECONFIG;
    }
    rd_kafka_poll_set_consumer(k->rk);
    return 0;
}

/* This worker's partitions of the topic, in ascending order. */
static int take_partitions(ps_kafka *k, char *err, size_t errlen) {
    rd_kafka_topic_t *t = rd_kafka_topic_new(k->rk, k->topic, NULL);
    if (!t) {
        snprintf(err, errlen, "kafka topic %s: %s", k->topic, rd_kafka_err2str(rd_kafka_last_error()));
        return PS_ECONFIG;
    }
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t e = rd_kafka_metadata(k->rk, 0, t, &md, META_TIMEOUT_MS);
    rd_kafka_topic_destroy(t);
    if (e) {
        snprintf(err, errlen, "kafka metadata of %s from %s: %s", k->topic, k->o.url, rd_kafka_err2str(e));
        return PS_EUNAVAILABLE;
    }
    int r = 0;
    if (md->topic_cnt != 1 || md->topics[0].err) {
        snprintf(err, errlen, "kafka topic %s: %s", k->topic,
                 md->topic_cnt ? rd_kafka_err2str(md->topics[0].err) : "not in the metadata");
        r = PS_EUNAVAILABLE;
        goto out;
    }
    int n = md->topics[0].partition_cnt;
    /* Partition ids are 0..n-1; take ours in order. */
    uint32_t mine = 0;
    for (int p = 0; p < n; p++)
        mine += (uint32_t)p % k->o.num_workers == k->o.worker_index;
    if (mine == 0) {
        snprintf(err, errlen, "kafka topic %s has %d partitions: worker %u of %u has none (run at most "
                 "%d workers on it)", k->topic, n, k->o.worker_index, k->o.num_workers, n);
        r = PS_ECONFIG;
        goto out;
    }
    if (mine > PS_KAFKA_MAX_PARTITIONS) {
        snprintf(err, errlen, "kafka topic %s has %d partitions: worker %u of %u would read %u, more "
                 "than %d (run more workers)", k->topic, n, k->o.worker_index, k->o.num_workers, mine,
                 PS_KAFKA_MAX_PARTITIONS);
        r = PS_ELIMIT;
        goto out;
    }
    for (int p = 0; p < n; p++)
        if ((uint32_t)p % k->o.num_workers == k->o.worker_index)
            k->parts[k->nparts++].id = p;
out:
    rd_kafka_metadata_destroy(md);
    return r;
}

/* Starts: the group's committed offsets, else the earliest retained;
 * ends: the high watermarks now. */
static int find_offsets(ps_kafka *k, char *err, size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)k->nparts);
    for (uint32_t i = 0; i < k->nparts; i++)
        rd_kafka_topic_partition_list_add(l, k->topic, k->parts[i].id);
    rd_kafka_resp_err_t e = rd_kafka_committed(k->rk, l, META_TIMEOUT_MS);
    int r = 0;
    if (e) {
        snprintf(err, errlen, "kafka committed offsets of group %s: %s", k->o.group, rd_kafka_err2str(e));
        r = PS_EUNAVAILABLE;
    }
    for (uint32_t i = 0; r == 0 && i < k->nparts; i++) {
        part *p = &k->parts[i];
        int64_t low, high;
        e = rd_kafka_query_watermark_offsets(k->rk, k->topic, p->id, &low, &high, META_TIMEOUT_MS);
        if (e) {
            snprintf(err, errlen, "kafka offsets of %s/%d: %s", k->topic, p->id, rd_kafka_err2str(e));
            r = PS_EUNAVAILABLE;
            break;
        }
        int64_t committed = l->elems[i].err ? RD_KAFKA_OFFSET_INVALID : l->elems[i].offset;
        p->start = p->next = committed >= 0 ? committed : low;
        p->end = high;
    }
    rd_kafka_topic_partition_list_destroy(l);
    return r;
}

int ps_kafka_new(const ps_kafka_options *opts, ps_kafka **ret, char *err, size_t errlen) {
    int r = ps_kafka_check_url(opts->url, err, errlen);
    if (r < 0)
        return r;
    if (opts->num_workers == 0 || opts->worker_index >= opts->num_workers || !opts->group ||
        !opts->group[0]) {
        snprintf(err, errlen, "kafka: bad worker index or empty group");
        return PS_ECONFIG;
    }
    ps_kafka *k = calloc(1, sizeof(*k));
    if (!k)
        return -ENOMEM;
    k->o = *opts;
    pthread_mutex_init(&k->commit_mu, NULL);
    if (!k->o.max_line)
        k->o.max_line = 1u << 20;
    const char *brokers = opts->url + strlen(SCHEME), *slash = strchr(brokers, '/');
    char *b = strndup(brokers, (size_t)(slash - brokers));
    k->topic = strdup(slash + 1);
    if (!b || !k->topic) {
        free(b);
        ps_kafka_free(k);
        return -ENOMEM;
    }
    r = make_consumer(k, b, err, errlen);
    free(b);
    if (r == 0)
        r = take_partitions(k, err, errlen);
    if (r == 0)
        r = find_offsets(k, err, errlen);
    if (r < 0) {
        ps_kafka_free(k);
        return r;
    }
    k->last_commit = now_s();
    *ret = k;
    return 0;
}

void ps_kafka_free(ps_kafka *k) {
    if (!k)
        return;
    if (k->held)
        rd_kafka_message_destroy(k->held);
    if (k->rk) {
        rd_kafka_consumer_close(k->rk);
        rd_kafka_destroy(k->rk);
    }
    free(k->topic);
    pthread_mutex_destroy(&k->commit_mu);
    free(k);
}

/* ---- reading ----------------------------------------------------------------------------- */

static void flush_pending(ps_kafka *k);

static part *find_part(ps_kafka *k, int32_t id) {
    for (uint32_t i = 0; i < k->nparts; i++)
        if (k->parts[i].id == id)
            return &k->parts[i];
    return NULL;
}

static bool all_done(const ps_kafka *k) {
    if (k->o.follow)
        return false;
    for (uint32_t i = 0; i < k->nparts; i++)
        if (!k->parts[i].done)
            return false;
    return true;
}

static bool stopped(const ps_kafka *k) {
    return (k->o.stop && *k->o.stop) || (k->o.quit && *k->o.quit);
}

static int assign(ps_kafka *k, char *err, size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)k->nparts);
    for (uint32_t i = 0; i < k->nparts; i++) {
        part *p = &k->parts[i];
        rd_kafka_topic_partition_list_add(l, k->topic, p->id)->offset = p->next;
        p->done = p->next >= p->end;
    }
    rd_kafka_resp_err_t e = rd_kafka_assign(k->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
        snprintf(err, errlen, "kafka assign %s: %s", k->topic, rd_kafka_err2str(e));
        return PS_EUNAVAILABLE;
    }
    k->assigned = true;
    return 0;
}

/* A consumer error that librdkafka retries by itself (a broker down, a
 * leader moving): say so every few seconds and keep polling. */
static void warn_transient(ps_kafka *k, const rd_kafka_message_t *m) {
    double t = now_s();
    if (t - k->last_warn < 5)
        return;
    k->last_warn = t;
    ps_warn("kafka %s: %s (retrying)", k->topic, rd_kafka_message_errstr(m));
}

int ps_kafka_next(ps_kafka *k, const char **ret_line, size_t *ret_len, const char **ret_name,
                  uint64_t *ret_offset, char *err, size_t errlen) {
    if (k->held) {
        rd_kafka_message_destroy(k->held);
        k->held = NULL;
    }
    if (!k->assigned) {
        int r = assign(k, err, errlen);
        if (r < 0)
            return r;
    }
    for (;;) {
        if (all_done(k) || (k->o.follow && stopped(k)))
            return 0;
        if (!k->o.follow && k->o.quit && *k->o.quit)
            return 0;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(k->rk, POLL_MS);
        if (!m) {
            flush_pending(k);
            continue;
        }
        part *p = m->rkt && !strcmp(rd_kafka_topic_name(m->rkt), k->topic) ? find_part(k, m->partition)
                                                                           : NULL;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            /* Offsets below the end that hold no message (transaction
             * markers, compacted away) are passed too. */
            if (p && !k->o.follow) {
                if (m->offset <= p->end && m->offset > p->next)
                    p->next = m->offset;
                p->done = p->done || m->offset >= p->end;
            }
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->err) {
            bool fatal = m->err == RD_KAFKA_RESP_ERR__FATAL || m->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
                         m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
                         m->err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
                         m->err == RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED;
            if (fatal) {
                snprintf(err, errlen, "kafka %s: %s", k->topic, rd_kafka_message_errstr(m));
                rd_kafka_message_destroy(m);
                return PS_EUNAVAILABLE;
            }
            warn_transient(k, m);
            rd_kafka_message_destroy(m);
            continue;
        }
        if (!p || m->offset < p->next || (!k->o.follow && m->offset >= p->end)) {
            /* Not ours, seen already, or after the end of this pass. */
            if (p && !k->o.follow && m->offset >= p->end)
                p->done = true;
            rd_kafka_message_destroy(m);
            continue;
        }
        p->next = m->offset + 1;
        if (!k->o.follow && p->next >= p->end)
            p->done = true;
        k->held = m;
        snprintf(k->name, sizeof(k->name), "%s/%d", k->topic, p->id);
        *ret_name = k->name;
        *ret_offset = (uint64_t)m->offset;
        size_t len = m->len;
        const char *s = m->payload ? m->payload : "";
        if (len > k->o.max_line)
            return PS_EPARSE;
        if (len && s[len - 1] == '\n')
            len--;
        if (len && s[len - 1] == '\r')
            len--;
        *ret_line = s;
        *ret_len = len;
        return 1;
    }
}

void ps_kafka_position(const ps_kafka *k, ps_kafka_pos *ret) {
    ps_kafka_pos p = {.n = k->nparts};
    for (uint32_t i = 0; i < k->nparts; i++) {
        p.partition[i] = k->parts[i].id;
        p.next[i] = k->parts[i].next;
    }
    *ret = p;
}

int ps_kafka_seek(ps_kafka *k, const ps_kafka_pos *pos, char *err, size_t errlen) {
    if (k->assigned) {
        snprintf(err, errlen, "kafka: seek after reading began");
        return -EINVAL;
    }
    for (uint32_t i = 0; i < pos->n; i++) {
        if (!find_part(k, pos->partition[i])) {
            snprintf(err, errlen, "kafka %s: the position names partition %d, which is not this "
                     "worker's (%u of %u): resume with the same --worker-index/--num-workers",
                     k->topic, pos->partition[i], k->o.worker_index, k->o.num_workers);
            return PS_ECONFIG;
        }
    }
    for (uint32_t i = 0; i < pos->n; i++) {
        part *p = find_part(k, pos->partition[i]);
        p->start = p->next = pos->next[i];
    }
    return 0;
}

int ps_kafka_progress(const ps_kafka *k, const ps_kafka_pos *pos, uint64_t *ret_done,
                      uint64_t *ret_total) {
    if (k->o.follow)
        return -ESPIPE;
    uint64_t done = 0, total = 0;
    for (uint32_t i = 0; i < k->nparts; i++) {
        const part *p = &k->parts[i];
        int64_t at = p->start;
        for (uint32_t j = 0; j < pos->n; j++)
            if (pos->partition[j] == p->id)
                at = pos->next[j];
        if (p->end > p->start) {
            total += (uint64_t)(p->end - p->start);
            if (at > p->start)
                done += (uint64_t)((at < p->end ? at : p->end) - p->start);
        }
    }
    *ret_done = done;
    *ret_total = total;
    return 0;
}

/* Under commit_mu. */
static rd_kafka_resp_err_t commit_now(ps_kafka *k, const ps_kafka_pos *pos, bool sync) {
    k->last_commit = now_s();
    k->pending.n = 0;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)pos->n);
    for (uint32_t i = 0; i < pos->n; i++)
        rd_kafka_topic_partition_list_add(l, k->topic, pos->partition[i])->offset = pos->next[i];
    rd_kafka_resp_err_t e = rd_kafka_commit(k->rk, l, sync ? 0 : 1);
    rd_kafka_topic_partition_list_destroy(l);
    return e == RD_KAFKA_RESP_ERR__NO_OFFSET ? 0 : e;
}

static void flush_pending(ps_kafka *k) {
    pthread_mutex_lock(&k->commit_mu);
    if (k->pending.n) {
        ps_kafka_pos p = k->pending;
        rd_kafka_resp_err_t e = commit_now(k, &p, false);
        if (e)
            ps_warn("kafka commit to group %s: %s", k->o.group, rd_kafka_err2str(e));
    }
    pthread_mutex_unlock(&k->commit_mu);
}

int ps_kafka_commit(ps_kafka *k, const ps_kafka_pos *pos, bool sync, char *err, size_t errlen) {
    pthread_mutex_lock(&k->commit_mu);
    rd_kafka_resp_err_t e = 0;
    if (!sync && now_s() - k->last_commit < ASYNC_COMMIT_EVERY_S)
        k->pending = *pos;
    else
        e = commit_now(k, pos, sync);
    pthread_mutex_unlock(&k->commit_mu);
    if (e) {
        snprintf(err, errlen, "kafka commit to group %s: %s", k->o.group, rd_kafka_err2str(e));
        return PS_EUNAVAILABLE;
    }
    return 0;
}

/* ---- positions in checkpoints --------------------------------------------------------- */

#define POS_PREFIX "v1 kafka topic="

bool ps_kafka_is_position(const char *s) { return strncmp(s, POS_PREFIX, strlen(POS_PREFIX)) == 0; }

int ps_kafka_format_position(char *out, size_t outlen, const ps_kafka_pos *pos, uint64_t topic_hash) {
    int n = snprintf(out, outlen, POS_PREFIX "%016" PRIx64, topic_hash);
    for (uint32_t i = 0; i < pos->n && n > 0 && (size_t)n < outlen; i++)
        n += snprintf(out + n, outlen - (size_t)n, " %" PRId32 ":%" PRId64, pos->partition[i], pos->next[i]);
    return n > 0 && (size_t)n < outlen ? 0 : PS_ELIMIT;
}

int ps_kafka_parse_position(const char *s, ps_kafka_pos *ret, uint64_t *ret_topic_hash) {
    if (!ps_kafka_is_position(s))
        return PS_EPARSE;
    const char *q = s + strlen(POS_PREFIX);
    char *end;
    errno = 0;
    uint64_t h = strtoull(q, &end, 16);
    if (end == q || errno)
        return PS_EPARSE;
    ps_kafka_pos p = {0};
    for (q = end; *q;) {
        if (*q != ' ' || p.n == PS_KAFKA_MAX_PARTITIONS)
            return PS_EPARSE;
        q++;
        long pid = strtol(q, &end, 10);
        if (end == q || *end != ':' || pid < 0 || pid > INT32_MAX)
            return PS_EPARSE;
        q = end + 1;
        long long off = strtoll(q, &end, 10);
        if (end == q || off < 0 || errno)
            return PS_EPARSE;
        q = end;
        p.partition[p.n] = (int32_t)pid;
        p.next[p.n++] = off;
    }
    if (p.n == 0)
        return PS_EPARSE;
    *ret = p;
    *ret_topic_hash = h;
    return 0;
}
