#include "harness.h"

#include "fsutil.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define READY_TIMEOUT_MS 60000
#define STOP_TIMEOUT_MS 20000

const char *ps_test_bin(const char *rel) {
    static char path[4][1024];
    static int next;
    char *p = path[next++ % 4];
    const char *root = getenv("CTRPS_BUILD_ROOT");
    snprintf(p, sizeof(path[0]), "%s/%s", root && *root ? root : "build", rel);
    return p;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ps_cluster_path(const ps_cluster *c, const char *name, char *out, size_t outlen) {
    snprintf(out, outlen, "%s/%s", c->dir, name);
}

int ps_write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f)
        return -errno;
    size_t n = strlen(text);
    int r = fwrite(text, 1, n, f) == n ? 0 : -EIO;
    if (fclose(f) != 0)
        r = -errno;
    return r;
}

char *ps_read_file(const char *path) { return ps_read_file_len(path, NULL); }

char *ps_read_file_len(const char *path, size_t *ret_len) {
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *b = malloc(cap);
    size_t n;
    while (b && (n = fread(b + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            char *g = realloc(b, cap *= 2);
            if (!g) {
                free(b);
                b = NULL;
            }
            b = g;
        }
    }
    fclose(f);
    if (b)
        b[len] = '\0';
    if (b && ret_len)
        *ret_len = len;
    return b;
}

static int write_config(ps_cluster *c) {
    char text[sizeof(c->body) + 512];
    int n = snprintf(text, sizeof(text), "[cluster]\nshards = ");
    for (int i = 0; i < c->nshards; i++)
        n += snprintf(text + n, sizeof(text) - (size_t)n, "%s%s:%d", i ? ", " : "", c->host,
                      c->ports[i] ? c->ports[i] : 1 + i);
    snprintf(text + n, sizeof(text) - (size_t)n, "\n%s\n", c->body);
    int r = ps_write_file(c->config, text);
    if (r < 0)
        return r;
    ps_config_free(c->cfg);
    c->cfg = NULL;
    char err[512];
    r = ps_config_load(c->config, NULL, &c->cfg, err, sizeof(err));
    if (r < 0)
        fprintf(stderr, "harness: %s\n", err);
    return r;
}

static pid_t spawn(char *const argv[], int out_fd, int err_fd) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* Child: die with the test process, whatever happens to it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    if (out_fd >= 0)
        dup2(out_fd, 1);
    if (err_fd >= 0)
        dup2(err_fd, 2);
    execv(argv[0], argv);
    _exit(127);
}

int ps_cluster_start_shard(ps_cluster *c, int i) {
    char ready[300], log[300], data[300], shard[16], listen[96];
    snprintf(ready, sizeof(ready), "%s/ready-%d", c->dir, i);
    snprintf(log, sizeof(log), "%s/shard-%d.log", c->dir, i);
    snprintf(data, sizeof(data), "%s/data", c->dir);
    snprintf(shard, sizeof(shard), "%d", i);
    snprintf(listen, sizeof(listen), "%s:%d", c->host, c->ports[i]);
    unlink(ready);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    char *argv[] = {(char *)ps_test_bin("server/ctrps-server"), "--config", c->config, "--shard",
                    shard, "--listen", listen, "--ready-file", ready, "--data-dir", data,
                    "--log-level", (char *)(c->log_level ? c->log_level : "info"),
                    c->restore ? "--restore" : NULL, (char *)c->restore, NULL};
    pid_t pid = spawn(argv, fd, fd);
    if (fd >= 0)
        close(fd);
    if (pid < 0)
        return -errno;
    c->pids[i] = pid;
    /* Poll for the ready file; fail fast if the server exits instead. */
    long long deadline = now_ms() + READY_TIMEOUT_MS;
    while (now_ms() < deadline) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            c->pids[i] = 0;
            fprintf(stderr, "harness: shard %d exited during start; log %s\n", i, log);
            return -ECHILD;
        }
        char *text = ps_read_file(ready);
        if (text) {
            char *colon = strrchr(text, ':');
            int port = colon ? atoi(colon + 1) : 0;
            free(text);
            if (port > 0) {
                c->ports[i] = port;
                return 0;
            }
        }
        sleep_ms(10);
    }
    ps_cluster_stop_shard(c, i, SIGKILL);
    return -ETIMEDOUT;
}

int ps_cluster_start(ps_cluster *c, int nshards, const char *body) {
    return ps_cluster_start_restored(c, nshards, body, NULL);
}

int ps_cluster_start_restored(ps_cluster *c, int nshards, const char *body, const char *restore) {
    return ps_cluster_start_at(c, "127.0.0.1", nshards, body, restore);
}

int ps_cluster_start_at(ps_cluster *c, const char *host, int nshards, const char *body,
                        const char *restore) {
    memset(c, 0, sizeof(*c));
    snprintf(c->host, sizeof(c->host), "%s", host);
    c->restore = restore;
    const char *tmp = getenv("TMPDIR"); /* a loop that keeps its runs can give each its own */
    snprintf(c->dir, sizeof(c->dir), "%s/ctrps-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(c->dir))
        return -errno;
    snprintf(c->config, sizeof(c->config), "%s/cluster.ini", c->dir);
    snprintf(c->body, sizeof(c->body), "%s", body);
    c->nshards = nshards;
    int r = write_config(c);
    for (int i = 0; i < nshards && r == 0; i++)
        r = ps_cluster_start_shard(c, i);
    /* Now the ports are known: rewrite the config clients will read. A
     * later restart must not restore again. */
    if (r == 0)
        r = write_config(c);
    c->restore = NULL;
    return r;
}

int ps_cluster_stop_shard(ps_cluster *c, int i, int sig) {
    pid_t pid = c->pids[i];
    if (pid <= 0)
        return -1;
    kill(pid, sig);
    long long deadline = now_ms() + STOP_TIMEOUT_MS;
    int status = -1;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (w < 0) {
            status = -1;
            break;
        }
        if (now_ms() > deadline) {
            fprintf(stderr, "harness: shard %d ignored signal %d; killing\n", i, sig);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        sleep_ms(5);
    }
    c->pids[i] = 0;
    return status;
}

int ps_cluster_restart(ps_cluster *c, int i, int sig) {
    ps_cluster_stop_shard(c, i, sig);
    return ps_cluster_start_shard(c, i);
}

int ps_cluster_destroy(ps_cluster *c) {
    int problems = 0;
    for (int i = 0; i < c->nshards; i++) {
        if (c->pids[i] <= 0)
            continue;
        int status = ps_cluster_stop_shard(c, i, SIGTERM);
        if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "harness: shard %d did not stop cleanly (status %d)\n", i, status);
            problems++;
        }
    }
    for (int i = 0; i < c->nshards && c->dir[0]; i++) {
        char path[300];
        snprintf(path, sizeof(path), "%s/shard-%d.log", c->dir, i);
        char *log = ps_read_file(path);
        if (log && (strstr(log, "Sanitizer") || strstr(log, "runtime error"))) {
            fprintf(stderr, "harness: sanitizer report in %s:\n%s\n", path, log);
            problems++;
        }
        free(log);
    }
    ps_config_free(c->cfg);
    c->cfg = NULL;
    if (c->dir[0] && !getenv("CTRPS_TEST_KEEP") && problems == 0)
        ps_rm_tree(c->dir);
    c->dir[0] = '\0';
    return problems;
}

void ps_cluster_teardown(ps_cluster *c, ...) {
    int problems = 0;
    va_list ap;
    va_start(ap, c);
    for (; c; c = va_arg(ap, ps_cluster *))
        problems += ps_cluster_destroy(c);
    va_end(ap);
    if (problems) {
        fprintf(stderr, "harness: %d problem(s) at teardown, see above\n", problems);
        abort();
    }
}

pid_t ps_spawn_stdout(char *const argv[], int *ret_fd) {
    int out[2];
    if (pipe(out) < 0)
        return -1;
    pid_t pid = spawn(argv, out[1], -1);
    close(out[1]);
    if (pid < 0) {
        close(out[0]);
        return -1;
    }
    *ret_fd = out[0];
    return pid;
}

size_t ps_read_fd(int fd, char *buf, size_t cap) {
    size_t len = 0;
    ssize_t n;
    while (len < cap - 1 && (n = read(fd, buf + len, cap - 1 - len)) > 0)
        len += (size_t)n;
    buf[len] = '\0';
    close(fd);
    return len;
}

bool ps_write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0)
            return false;
        p += w, n -= (size_t)w;
    }
    return true;
}

int ps_run(char *const argv[], char **ret_out, char **ret_err) {
    int out[2], err[2];
    if (pipe(out) < 0 || pipe(err) < 0)
        return -1;
    pid_t pid = spawn(argv, out[1], err[1]);
    close(out[1]);
    close(err[1]);
    if (pid < 0) {
        close(out[0]);
        close(err[0]);
        return -1;
    }
    /* Drain both pipes concurrently so neither child write can block. */
    char *bufs[2] = {NULL, NULL};
    size_t lens[2] = {0, 0}, caps[2] = {0, 0};
    struct pollfd pf[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    int open_fds = 2;
    while (open_fds > 0) {
        if (poll(pf, 2, -1) < 0 && errno != EINTR)
            break;
        for (int k = 0; k < 2; k++) {
            if (pf[k].fd < 0 || !(pf[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (lens[k] + 4096 + 1 > caps[k]) {
                caps[k] = caps[k] ? caps[k] * 2 : 8192;
                bufs[k] = realloc(bufs[k], caps[k]);
            }
            ssize_t n = read(pf[k].fd, bufs[k] + lens[k], 4096);
            if (n <= 0) {
                close(pf[k].fd);
                pf[k].fd = -1;
                open_fds--;
            } else {
                lens[k] += (size_t)n;
            }
        }
    }
    for (int k = 0; k < 2; k++) {
        if (!bufs[k])
            bufs[k] = malloc(1);
        bufs[k][lens[k]] = '\0';
    }
    int status;
    waitpid(pid, &status, 0);
    if (ret_out)
        *ret_out = bufs[0];
    else
        free(bufs[0]);
    if (ret_err)
        *ret_err = bufs[1];
    else {
        if (lens[1])
            fputs(bufs[1], stderr);
        free(bufs[1]);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

pid_t ps_start_worker(ps_cluster *c, int *ret_input, char *log, size_t loglen) {
    ps_cluster_path(c, "worker.log", log, loglen);
    char *argv[] = {(char *)ps_test_bin("worker/ctrps-worker"), "--config", c->config, "--input", "-",
                    "--log-level", "warn", NULL};
    /* Close-on-exec: a shard restarted later must not hold the write end,
     * or the worker never sees the end of its input. */
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0, "pipe2");
    pid_t pid = fork();
    if (pid == 0) {
        char result[300];
        ps_cluster_path(c, "worker.out", result, sizeof(result));
        int out = open(result, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int err = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(p[0], 0);
        dup2(out, 1);
        dup2(err, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[0]);
    *ret_input = p[1];
    return pid;
}

void ps_wait_worker(pid_t pid, const char *log) {
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char *text = ps_read_file(log);
        fprintf(stderr, "worker log:\n%s\n", text ? text : "");
        free(text);
    }
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker failed (status %d)", status);
}

int ps_run_cli(ps_cluster *c, char **ret_out, ...) {
    char *argv[64];
    int n = 0;
    argv[n++] = (char *)ps_test_bin("tools/ctrps-cli");
    argv[n++] = "--config";
    argv[n++] = c->config;
    va_list ap;
    va_start(ap, ret_out);
    char *a;
    while ((a = va_arg(ap, char *)) && n < 63)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return ps_run(argv, ret_out, NULL);
}

/* ---- raw protocol access ---------------------------------------------------- */

int ps_raw_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "connect: %s", strerror(errno));
    return fd;
}

void ps_raw_send_bytes(int fd, const void *p, size_t n) {
    const char *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        b += w;
        n -= (size_t)w;
    }
}

void ps_raw_send(int fd, const Ctrps__Request *req) {
    size_t n = protobuf_c_message_get_packed_size(&req->base);
    uint8_t *buf = malloc(n + 4);
    uint32_t be = htonl((uint32_t)n);
    memcpy(buf, &be, 4);
    protobuf_c_message_pack(&req->base, buf + 4);
    ps_raw_send_bytes(fd, buf, n + 4);
    free(buf);
}

void ps_raw_send_push(int fd, uint64_t id, const char *table, const uint64_t *keys, size_t nkeys,
                      const float *grads, size_t ngrads, uint64_t client_id, uint64_t seq) {
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__PushRequest push = CTRPS__PUSH_REQUEST__INIT;
    req.id = id;
    req.method_case = CTRPS__REQUEST__METHOD_PUSH;
    req.push = &push;
    push.table = (char *)table;
    push.n_keys = nkeys;
    push.keys = (uint64_t *)keys;
    push.n_grads = ngrads;
    push.grads = (float *)grads;
    push.client_id = client_id;
    push.seq = seq;
    ps_raw_send(fd, &req);
}

void ps_raw_send_pull(int fd, uint64_t id, const char *table, const uint64_t *keys, size_t nkeys) {
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__PullRequest pull = CTRPS__PULL_REQUEST__INIT;
    req.id = id;
    req.method_case = CTRPS__REQUEST__METHOD_PULL;
    req.pull = &pull;
    pull.table = (char *)table;
    pull.n_keys = nkeys;
    pull.keys = (uint64_t *)keys;
    ps_raw_send(fd, &req);
}

static int read_exact(int fd, void *p, size_t n) {
    char *b = p;
    while (n) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 10000) <= 0)
            return -ETIMEDOUT;
        ssize_t r = recv(fd, b, n, 0);
        if (r == 0)
            return -EPIPE;
        if (r < 0)
            return -errno;
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

Ctrps__Response *ps_raw_recv(int fd) {
    uint32_t be;
    int r = read_exact(fd, &be, 4);
    if (r == -EPIPE || r == -ECONNRESET)
        return NULL;
    cr_assert_eq(r, 0, "no response: %s", strerror(-r));
    uint32_t n = ntohl(be);
    uint8_t *buf = malloc(n + 1);
    cr_assert_eq(read_exact(fd, buf, n), 0);
    Ctrps__Response *resp = ctrps__response__unpack(NULL, n, buf);
    free(buf);
    cr_assert_not_null(resp, "undecodable response");
    return resp;
}

Ctrps__Response *ps_raw_hello(int fd, uint64_t client_id) {
    Ctrps__Request req = CTRPS__REQUEST__INIT;
    Ctrps__HelloRequest h = CTRPS__HELLO_REQUEST__INIT;
    req.method_case = CTRPS__REQUEST__METHOD_HELLO;
    req.hello = &h;
    h.protocol_version = 1;
    h.client_id = client_id;
    ps_raw_send(fd, &req);
    Ctrps__Response *r = ps_raw_recv(fd);
    cr_assert_not_null(r, "connection closed instead of a Hello answer");
    cr_assert_eq(r->status, CTRPS__STATUS__OK, "%s", r->message);
    return r;
}

void ps_raw_assert_closed(int fd) {
    char c;
    struct pollfd pf = {fd, POLLIN, 0};
    cr_assert_gt(poll(&pf, 1, 10000), 0, "server did not close the connection");
    ssize_t r = recv(fd, &c, 1, 0);
    cr_assert(r == 0 || (r < 0 && errno == ECONNRESET), "expected a closed connection");
}
