/* Authentication through real sockets: with auth_secret_file set, only a
 * client that proves the secret in Hello gets anything; no secret, a wrong
 * secret, a replayed handshake and a method before Hello are all refused,
 * and refusals carry no row data. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "client.h"
#include "ctrps.pb-c.h"
#include "error.h"
#include "harness.h"
#include "log.h"
#include "rpc.h"

static ps_cluster cl;
static char secret_path[64], wrong_path[64];

static void write_secret(char *path, const char *text) {
    snprintf(path, 64, "/tmp/ctrps-secret-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void setup(void) {
    write_secret(secret_path, "correct horse battery staple 42\n");
    write_secret(wrong_path, "correct horse battery staple 43\n");
    char body[1024];
    snprintf(body, sizeof(body),
             "buckets = 16\n[server]\nauth_secret_file = %s\n[table.emb]\ndim = 4\ninit = normal\n",
             secret_path);
    cr_assert_eq(ps_cluster_start(&cl, 1, body), 0);
}

static void teardown(void) {
    ps_cluster_teardown(&cl, NULL);
    unlink(secret_path);
    unlink(wrong_path);
}

/* A copy of the cluster config with the secret line replaced. */
static ps_config *config_with(const char *secret_line, char *path_out) {
    char *text = ps_read_file(cl.config);
    cr_assert_not_null(text);
    char *line = strstr(text, "auth_secret_file");
    char *eol = strchr(line, '\n');
    char out[8192];
    snprintf(out, sizeof(out), "%.*s%s%s", (int)(line - text), text, secret_line, eol);
    free(text);
    ps_cluster_path(&cl, "other.ini", path_out, 300);
    cr_assert_eq(ps_write_file(path_out, out), 0);
    ps_config *cfg;
    char err[256];
    cr_assert_eq(ps_config_load(path_out, NULL, &cfg, err, sizeof(err)), 0, "%s", err);
    return cfg;
}

static int pull_with(ps_config *cfg, char *err, size_t errlen) {
    ps_client *c;
    ps_client_options co = {.cfg = cfg, .name = "auth-test", .timeout_ms = 5000};
    int r = ps_client_new(&co, &c, err, errlen);
    if (r < 0)
        return r;
    uint64_t key = 7;
    float v[4];
    r = ps_client_pull(c, "emb", 4, &key, 1, v, err, errlen);
    ps_client_free(c);
    return r;
}

TestSuite(auth, .init = setup, .fini = teardown, .timeout = 60);

Test(auth, right_secret_is_served) {
    char err[512];
    cr_assert_eq(pull_with(cl.cfg, err, sizeof(err)), 0, "%s", err);
    /* A pull makes no row: a push does, for the CLI's lookup to find. */
    ps_client *c;
    ps_client_options co = {.cfg = cl.cfg, .name = "auth-test", .timeout_ms = 5000};
    cr_assert_eq(ps_client_new(&co, &c, err, sizeof(err)), 0, "%s", err);
    uint64_t key = 7;
    float g[4] = {0.5f, -0.5f, 0.25f, 1};
    cr_assert_eq(ps_client_push(c, "emb", 4, &key, 1, g, NULL, NULL, err, sizeof(err)), 0, "%s", err);
    ps_client_free(c);
    char *out;
    cr_assert_eq(ps_run_cli(&cl, &out, "lookup", "--table", "emb", "--fid", "7", NULL), 0);
    cr_assert(strstr(out, "7\tfound\t"), "%s", out);
    free(out);
}

Test(auth, no_secret_is_refused) {
    char path[300], err[512];
    ps_config *cfg = config_with("auth_secret_file = ", path);
    cr_assert_eq(pull_with(cfg, err, sizeof(err)), PS_EAUTH, "%s", err);
    cr_assert(strstr(err, "requires authentication"), "%s", err);
    ps_config_free(cfg);
    /* The CLI says so in one line and exits 1. */
    char *argv[] = {(char *)ps_test_bin("tools/ctrps-cli"), "--config", path, "lookup", "--table",
                    "emb", "--fid", "7", NULL};
    char *out, *errout;
    cr_assert_eq(ps_run(argv, &out, &errout), 1);
    cr_assert_str_eq(out, "");
    cr_assert(strstr(errout, "authentication"), "%s", errout);
    free(out);
    free(errout);
}

Test(auth, wrong_secret_is_refused) {
    char line[128], path[300], err[512];
    snprintf(line, sizeof(line), "auth_secret_file = %s", wrong_path);
    ps_config *cfg = config_with(line, path);
    cr_assert_eq(pull_with(cfg, err, sizeof(err)), PS_EAUTH, "%s", err);
    cr_assert(strstr(err, "authentication failed"), "%s", err);
    ps_config_free(cfg);
}

/* ---- raw handshakes --------------------------------------------------------------- */

static Ctrps__Response *hello(int fd, uint64_t client_id, const uint8_t *cnonce, const uint8_t *mac) {
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__HelloRequest h = CTRPS__HELLO_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_HELLO;
    req.hello = &h;
    h.protocol_version = PS_PROTOCOL_VERSION;
    h.client_id = client_id;
    h.client_nonce.data = (uint8_t *)cnonce;
    h.client_nonce.len = PS_AUTH_NONCE;
    if (mac) {
        h.auth_response.data = (uint8_t *)mac;
        h.auth_response.len = PS_AUTH_MAC;
    }
    ps_raw_send(fd, &req);
    return ps_raw_recv(fd);
}

Test(auth, replayed_handshake_is_refused) {
    ps_auth_secret s;
    char err[256];
    cr_assert_eq(ps_auth_load(secret_path, &s, err, sizeof(err)), 0, "%s", err);
    uint8_t cn[PS_AUTH_NONCE] = {1, 2, 3};
    /* A good handshake, recorded. */
    int fd = ps_raw_connect(cl.ports[0]);
    Ctrps__Response *r1 = hello(fd, 99, cn, NULL);
    cr_assert(r1 && r1->hello && !r1->hello->authenticated && r1->hello->auth_challenge.len == PS_AUTH_NONCE);
    uint8_t mac[PS_AUTH_MAC];
    ps_auth_mac(&s, r1->hello->auth_challenge.data, cn, 99, mac);
    ctrps__response__free_unpacked(r1, NULL);
    Ctrps__Response *r2 = hello(fd, 99, cn, mac);
    cr_assert(r2 && r2->status == CTRPS__STATUS__OK && r2->hello->authenticated);
    ctrps__response__free_unpacked(r2, NULL);
    close(fd);
    /* Replay it straight away on a new connection: no challenge is out. */
    fd = ps_raw_connect(cl.ports[0]);
    Ctrps__Response *r3 = hello(fd, 99, cn, mac);
    cr_assert(r3 && r3->status == CTRPS__STATUS__UNAUTHENTICATED);
    ctrps__response__free_unpacked(r3, NULL);
    ps_raw_assert_closed(fd);
    close(fd);
    /* Replay it after asking for a challenge: a fresh nonce, a wrong answer. */
    fd = ps_raw_connect(cl.ports[0]);
    Ctrps__Response *r4 = hello(fd, 99, cn, NULL);
    cr_assert(r4 && r4->hello && r4->hello->auth_challenge.len == PS_AUTH_NONCE);
    ctrps__response__free_unpacked(r4, NULL);
    Ctrps__Response *r5 = hello(fd, 99, cn, mac);
    cr_assert(r5 && r5->status == CTRPS__STATUS__UNAUTHENTICATED);
    ctrps__response__free_unpacked(r5, NULL);
    ps_raw_assert_closed(fd);
    close(fd);
    ps_auth_wipe(&s);
}

Test(auth, methods_before_hello_learn_nothing) {
    int fd = ps_raw_connect(cl.ports[0]);
    uint64_t key = 7;
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__PullRequest pull = CTRPS__PULL_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_PULL;
    req.pull = &pull;
    pull.table = "emb";
    pull.n_keys = 1;
    pull.keys = &key;
    Ctrps__StatsRequest st = CTRPS__STATS_REQUEST__INIT;
    for (int i = 0; i < 3; i++) {
        req.id = 10 + (uint64_t)i;
        if (i == 1) {
            req.method_case = CTRPS__REQUEST__METHOD_STATS;
            req.stats = &st;
        }
        ps_raw_send(fd, &req);
        Ctrps__Response *r = ps_raw_recv(fd);
        cr_assert_not_null(r);
        cr_assert_eq(r->status, CTRPS__STATUS__UNAUTHENTICATED);
        cr_assert_eq(r->result_case, CTRPS__RESPONSE__RESULT__NOT_SET, "a refusal carried data");
        cr_assert(!strstr(r->message, "emb"), "%s", r->message);
        ctrps__response__free_unpacked(r, NULL);
    }
    /* Three refusals and the connection is gone. */
    ps_raw_assert_closed(fd);
    close(fd);
    /* Meanwhile authenticated clients are served. */
    char err[512];
    cr_assert_eq(pull_with(cl.cfg, err, sizeof(err)), 0, "%s", err);
}

/* ---- what the shard logs ------------------------------------------------------------ */

static char *shard0_log(void) {
    char path[300];
    ps_cluster_path(&cl, "shard-0.log", path, sizeof(path));
    return ps_read_file(path);
}

/* Count the lines holding needle; add up the "(N more like it suppressed)"
 * counts they carry. */
static int count_lines(const char *text, const char *needle, uint64_t *ret_suppressed) {
    int n = 0;
    uint64_t suppressed = 0;
    for (const char *p = text; p && *p;) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        char line[2048];
        snprintf(line, sizeof(line), "%.*s", (int)len, p);
        if (strstr(line, needle)) {
            n++;
            char *m = strstr(line, " more like it suppressed)");
            char *open = m;
            while (open && open > line && *open != '(')
                open--;
            if (open && *open == '(')
                suppressed += strtoull(open + 1, NULL, 10);
        }
        p = eol ? eol + 1 : p + len;
    }
    *ret_suppressed = suppressed;
    return n;
}

/* A replayed answer with no challenge outstanding: refused and closed. */
static void one_failed_auth(void) {
    static const uint8_t cn[PS_AUTH_NONCE] = {4, 5, 6};
    static const uint8_t mac[PS_AUTH_MAC] = {7};
    int fd = ps_raw_connect(cl.ports[0]);
    Ctrps__Response *r = hello(fd, 5, cn, mac);
    cr_assert(r && r->status == CTRPS__STATUS__UNAUTHENTICATED);
    ctrps__response__free_unpacked(r, NULL);
    ps_raw_assert_closed(fd);
    close(fd);
}

/* A failed authentication is logged with the peer's address; a flood of
 * them gives about one line a second, and the lines account for every
 * failure: logged ones plus the suppressed counts they report. */
Test(auth, failed_authentications_are_logged_at_a_limited_rate) {
    enum { FLOOD = 60 };
    for (int i = 0; i < FLOOD; i++)
        one_failed_auth();
    /* Past the limiter's second: the next line reports what it held back. */
    usleep((PS_LOG_LIMIT_MS + 200) * 1000);
    one_failed_auth();
    char *log = shard0_log();
    uint64_t suppressed;
    int lines = count_lines(log, "authentication failed", &suppressed);
    cr_assert_geq(lines, 2, "failed authentications were not logged:\n%s", log);
    cr_assert_lt(lines, FLOOD / 2, "%d lines for %d failures: not rate-limited:\n%s", lines, FLOOD + 1, log);
    cr_assert_eq((uint64_t)lines + suppressed, (uint64_t)FLOOD + 1,
                 "%d lines + %llu suppressed != %d failures:\n%s", lines, (unsigned long long)suppressed,
                 FLOOD + 1, log);
    cr_assert(strstr(log, "from 127.0.0.1:"), "the log does not name the peer:\n%s", log);
    free(log);
}

/* Requests refused before authentication are logged too. */
Test(auth, refused_requests_are_logged) {
    int fd = ps_raw_connect(cl.ports[0]);
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__StatsRequest st = CTRPS__STATS_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_STATS;
    req.stats = &st;
    ps_raw_send(fd, &req);
    Ctrps__Response *r = ps_raw_recv(fd);
    cr_assert(r && r->status == CTRPS__STATUS__UNAUTHENTICATED);
    ctrps__response__free_unpacked(r, NULL);
    close(fd);
    /* The reply leaves after the line is written (same loop turn). */
    char *log = shard0_log();
    cr_assert(log && strstr(log, "request refused: UNAUTHENTICATED: authenticate with Hello first"),
              "no line for the refused request:\n%s", log);
    free(log);
}
