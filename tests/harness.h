#pragma once
/* Loopback integration-test harness: start real ctrps-server processes on
 * 127.0.0.1 with ephemeral ports, wait for readiness by polling their ready
 * files, run ctrps-cli, and stop every process by its PID.
 *
 * Each child gets PR_SET_PDEATHSIG = SIGKILL, so a test process that dies
 * (a crash or a failed assertion) never leaves a daemon behind. A shard
 * restarted with ps_cluster_restart() binds the port it had, so running
 * clients reconnect to it. */

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "config.h"

#define PS_TEST_MAX_SHARDS 8

/* The LR cluster the crash and resharding tests
 * train: one dim-1 FTRL table over the 39 Criteo slots, one worker pushing
 * synchronously (max_in_flight = 0) so the order of updates is fixed. */
#define PS_TEST_LR_BODY(durability, flush_ms)                                                      \
    "buckets = 128\n"                                                                              \
    "[server]\ndurability = " durability "\nflush_interval_ms = " flush_ms "\n"                    \
    "[input]\nformat = criteo\nintegers = bucketize\n"                                             \
    "[model]\ntype = lr\nbatch_size = 64\nmax_in_flight = 0\n"                                     \
    "[worker]\ntimeout_ms = 60000\n"                                                               \
    "[table.wide]\ndim = 1\noptimizer = ftrl\nalpha = 0.05\nbeta = 0.001\nlambda1 = 0.0001\n"       \
    "slots = I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13\n"                             \
    "slots = C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13\n"                             \
    "slots = C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24, C25, C26\n"

/* PS_TEST_UNDER_ASAN is defined in the sanitizer build, where the daemons
 * run several times slower: tests that size their work by rows use fewer. */
#if defined(__SANITIZE_ADDRESS__)
#define PS_TEST_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PS_TEST_UNDER_ASAN 1
#endif
#endif

typedef struct ps_cluster {
    char dir[256];               /* temporary directory, removed by ps_cluster_destroy */
    char config[320];            /* the cluster config with the real ports */
    char body[8192];             /* everything but [cluster] shards */
    char host[64];               /* of every shard: "127.0.0.1", "localhost", "[::1]" */
    int nshards;
    pid_t pids[PS_TEST_MAX_SHARDS];
    int ports[PS_TEST_MAX_SHARDS];
    ps_config *cfg;              /* parsed config (client side) */
    const char *restore;         /* if set, shards start with --restore <it> */
    const char *log_level;       /* if set, shards (re)started from now on get --log-level <it> */
} ps_cluster;

/* Path of a built binary ("server/ctrps-server"), from CTRPS_BUILD_ROOT. */
const char *ps_test_bin(const char *rel);

/* Create the directory and start n shards. `body` is INI text for every
 * section but the shard list ([cluster] buckets, [server], [table.*], ...);
 * it must not contain "shards =". Returns 0 or a negative error. */
int ps_cluster_start(ps_cluster *c, int nshards, const char *body);
/* The same, each shard first restoring its data from checkpoint `restore`. */
int ps_cluster_start_restored(ps_cluster *c, int nshards, const char *body, const char *restore);
/* The same with the shards at host (as written in [cluster] shards and
 * --listen: a name, an IPv4 address or "[IPv6]"); restore may be NULL. */
int ps_cluster_start_at(ps_cluster *c, const char *host, int nshards, const char *body,
                        const char *restore);
/* Start shard i (again), on its old port if it had one. */
int ps_cluster_start_shard(ps_cluster *c, int i);
/* Send sig to shard i and wait for it to exit (SIGKILL after 20 s).
 * Returns its exit status as from waitpid, or -1. */
int ps_cluster_stop_shard(ps_cluster *c, int i, int sig);
int ps_cluster_restart(ps_cluster *c, int i, int sig);
/* Stop every shard with SIGTERM and remove the directory. Returns the
 * number of problems found on the way: a shard that did not exit 0 after
 * SIGTERM, or a shard log holding a sanitizer report (ASan, UBSan, LSan).
 * Tests assert that it is 0, so a daemon's memory error fails the test. */
int ps_cluster_destroy(ps_cluster *c);
/* ps_cluster_destroy() of each cluster (a NULL-terminated list) for a
 * test's .fini: Criterion ignores assertions that fail there (the test
 * still passes), so a problem aborts the test process instead, once every
 * cluster is stopped, which fails the run. */
void ps_cluster_teardown(ps_cluster *c, ...);

/* Run `ctrps-cli --config <cluster config> args...` (NULL-terminated).
 * Captures stdout into a malloc'ed string (*ret_out, may be NULL) and
 * returns the exit code (or -1). */
int ps_run_cli(ps_cluster *c, char **ret_out, ...) __attribute__((sentinel));
/* Run any argv (NULL-terminated), capturing stdout and stderr separately. */
int ps_run(char *const argv[], char **ret_out, char **ret_err);
/* Start argv in the background (it dies with the test process); *ret_fd
 * reads its stdout. Returns its pid, or -1. Wait for it with waitpid(). */
pid_t ps_spawn_stdout(char *const argv[], int *ret_fd);
/* Read fd until end of file or until buf (cap bytes) is full, NUL-terminate
 * what was read and close fd; returns the length read. */
size_t ps_read_fd(int fd, char *buf, size_t cap);
/* Write all n bytes to fd; false when a write fails (e.g. the reader is
 * gone: its exit status tells why). */
bool ps_write_all(int fd, const char *p, size_t n);

/* Start ctrps-worker on the cluster's config, reading its input from a
 * pipe (--input -) whose write end goes to *ret_input: the caller decides
 * when the input ends, so the worker is still training for as long as the
 * caller needs, however fast the machine. stdout (the result line) goes to
 * the cluster file worker.out, stderr to worker.log, whose path goes to
 * log; returns its pid. ps_wait_worker() reaps it and asserts it exited 0,
 * printing its log when not. */
pid_t ps_start_worker(ps_cluster *c, int *ret_input, char *log, size_t loglen);
void ps_wait_worker(pid_t pid, const char *log);

/* Path of a file in the cluster directory. */
void ps_cluster_path(const ps_cluster *c, const char *name, char *out, size_t outlen);
/* Write text to a file; returns 0 or -errno. */
int ps_write_file(const char *path, const char *text);
/* Read a whole file (malloc'ed, NUL-terminated), or NULL; _len also
 * gives its length (for binary files). */
char *ps_read_file(const char *path);
char *ps_read_file_len(const char *path, size_t *ret_len);

/* ---- raw protocol access, for tests that must send what no client would ---- */

#include "ctrps.pb-c.h"

/* Connected TCP socket to 127.0.0.1:port (asserts on failure). */
int ps_raw_connect(int port);
/* Send bytes; stops quietly if the server already closed the connection. */
void ps_raw_send_bytes(int fd, const void *p, size_t n);
/* Send one framed Request. */
void ps_raw_send(int fd, const Ctrps__Request *req);
/* Send a Push of nkeys keys and their grads (nkeys * dim floats) to table,
 * as request id, with the client's id and sequence number (0, 0: none). */
void ps_raw_send_push(int fd, uint64_t id, const char *table, const uint64_t *keys, size_t nkeys,
                      const float *grads, size_t ngrads, uint64_t client_id, uint64_t seq);
/* Send a Pull of nkeys keys of table, as request id. */
void ps_raw_send_pull(int fd, uint64_t id, const char *table, const uint64_t *keys, size_t nkeys);
/* Next Response (caller frees with ctrps__response__free_unpacked), or NULL
 * when the server closed the connection; asserts if nothing arrives within
 * 10 s or the bytes do not decode. */
Ctrps__Response *ps_raw_recv(int fd);
/* Hello as client_id (protocol version 1, no authentication), asserted
 * answered OK; the answer (caller frees it). */
Ctrps__Response *ps_raw_hello(int fd, uint64_t client_id);
/* Assert that the server closes the connection within 10 s. */
void ps_raw_assert_closed(int fd);
