/* kafka.h without a broker: source URLs and checkpoint positions. Reading
 * through a (mock) cluster is tested end to end in tests/test_kafka.c. */
#include <criterion/criterion.h>
#include <string.h>

#include "error.h"
#include "kafka.h"

Test(kafka_url, accepts_brokers_and_a_topic) {
    char err[256];
    cr_assert(ps_kafka_is_url("kafka://h:1/t"));
    cr_assert_not(ps_kafka_is_url("/data/kafka://x"));
    cr_assert_eq(ps_kafka_check_url("kafka://127.0.0.1:9092/clicks", err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_kafka_check_url("kafka://a:1,b.example:65535/x.y_z-1", err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_kafka_check_url("kafka://[::1]:9092/t", err, sizeof(err)), 0, "%s", err);
}

Test(kafka_url, refuses_with_a_reason) {
    static const char *bad[][2] = {
        {"kafka://host/t", "is not HOST:PORT"},
        {"kafka://host:0/t", "is not HOST:PORT"},
        {"kafka://host:65536/t", "is not HOST:PORT"},
        {"kafka://host:9x/t", "is not HOST:PORT"},
        {"kafka://a:1,/t", "is not HOST:PORT"},
        {"kafka://:1/t", "is not HOST:PORT"},
        {"kafka://a:1", "expected kafka://HOST:PORT"},
        {"kafka://a:1/", "is not a Kafka topic name"},
        {"kafka://a:1/t/u", "is not a Kafka topic name"},
        {"kafka://a:1/..", "is not a Kafka topic name"},
        {"file.txt", "not a kafka:// source"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[256] = "";
        cr_assert_eq(ps_kafka_check_url(bad[i][0], err, sizeof(err)), PS_ECONFIG, "%s", bad[i][0]);
        cr_assert(strstr(err, bad[i][1]), "%s: %s", bad[i][0], err);
    }
}

Test(kafka_position, round_trips_and_names_its_topic) {
    ps_kafka_pos p = {.n = 3, .partition = {1, 4, 7}, .next = {0, 12345678901LL, 9}};
    uint64_t h = ps_kafka_topic_hash("kafka://a:1/clicks");
    cr_assert_eq(h, ps_kafka_topic_hash("kafka://b:2,c:3/clicks"), "brokers may move");
    cr_assert_neq(h, ps_kafka_topic_hash("kafka://a:1/views"));
    char s[256];
    cr_assert_eq(ps_kafka_format_position(s, sizeof(s), &p, h), 0);
    cr_assert(ps_kafka_is_position(s), "%s", s);
    ps_kafka_pos q;
    uint64_t hq;
    cr_assert_eq(ps_kafka_parse_position(s, &q, &hq), 0, "%s", s);
    cr_assert_eq(hq, h);
    cr_assert_eq(q.n, 3);
    for (uint32_t i = 0; i < 3; i++) {
        cr_assert_eq(q.partition[i], p.partition[i]);
        cr_assert_eq(q.next[i], p.next[i]);
    }
    /* The most a worker reads fits what a checkpoint keeps of a position
     * (256 bytes) and a manifest line (200 with its key). */
    ps_kafka_pos big = {.n = PS_KAFKA_MAX_PARTITIONS};
    for (uint32_t i = 0; i < big.n; i++) {
        big.partition[i] = 99999;
        big.next[i] = 99999999999LL;
    }
    cr_assert_eq(ps_kafka_format_position(s, sizeof(s), &big, h), 0);
    cr_assert_lt(strlen("position = ") + strlen(s), 200, "%s", s);
    cr_assert_eq(ps_kafka_format_position(s, 20, &p, h), PS_ELIMIT);
}

Test(kafka_position, refuses_what_it_did_not_write) {
    static const char *bad[] = {
        "v1 file=0 offset=0 lines=0 inputs=0123456789abcdef",
        "v1 kafka topic=00ff",
        "v1 kafka topic=00ff 1",
        "v1 kafka topic=00ff 1:",
        "v1 kafka topic=00ff -1:5",
        "v1 kafka topic=00ff 1:-5",
        "v1 kafka topic=00ff 1:5x",
        "v1 kafka topic=zz 1:5",
        "v1 kafka topic=1 0:1 1:1 2:1 3:1 4:1 5:1 6:1 7:1 8:1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ps_kafka_pos p;
        uint64_t h;
        cr_assert_eq(ps_kafka_parse_position(bad[i], &p, &h), PS_EPARSE, "%s", bad[i]);
    }
}
