#pragma once
/* The shard's network side: one libuv loop thread accepts connections,
 * reads frames, hands them to the RPC service, and writes replies.
 *
 * One loop turn: every readable connection's complete frames are handled
 * (replies collect in that connection's output buffer); then, in the check
 * phase, the shard commits the turn's push-log records with one write
 * (group commit) and only then are the turn's replies written. So an
 * acknowledged push is always in the log (durability = sync).
 *
 * Backpressure: a connection whose replies wait in the kernel beyond
 * max_pending_reply_bytes stops being read until they drain below half.
 * Shutdown (SIGTERM/SIGINT): stop accepting, close connections, and return
 * from ps_server_run() so the caller can write everything back. */

#include <stdint.h>

#include "config.h"
#include "metrics.h"
#include "service.h"
#include "shard.h"

typedef struct ps_server ps_server;

typedef struct ps_server_options {
    const char *host;            /* bind address */
    int port;                    /* 0 = ephemeral */
    const char *ready_file;      /* written with "host:port" once serving; may be NULL */
    ps_metrics *metrics;         /* borrowed: the page is published here every second,
                                  * /readyz says ready while serving; may be NULL */
} ps_server_options;

/* The loop is created here; the shard must be opened with
 * ps_server_notify_fn()/the server as its notify callback (see main.c). */
int ps_server_new(const ps_config *cfg, const ps_server_options *opts, ps_server **ret_server,
                  char *err, size_t errlen);
/* Attach the shard and its service, bind and listen. */
int ps_server_listen(ps_server *srv, ps_shard *shard, ps_service *svc, char *err, size_t errlen);
/* How long opening the shard took (the ctrps_recovery_duration_seconds gauge). */
void ps_server_set_recovery_seconds(ps_server *srv, double seconds);
/* Serve until SIGTERM or SIGINT. */
int ps_server_run(ps_server *srv);
void ps_server_free(ps_server *srv);

/* Thread-safe wake-up for the shard's write-back thread (ctx = server). */
void ps_server_notify(void *ctx);
