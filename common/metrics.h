#pragma once
/* The HTTP endpoint of a long-running process (--metrics-listen, or
 * [server] metrics_listen): served by libmicrohttpd from its own thread, so
 * a slow scraper never stalls the shard's loop or the worker's training.
 *
 *   GET /metrics  Prometheus text (common/promtext.h): the text last
 *                 published, or, when a render function is set, what it
 *                 writes now (it runs on the endpoint's thread, so it may
 *                 read only atomics or state under a short lock)
 *   GET /healthz  200 while the process runs (liveness)
 *   GET /readyz   200 once the owner said it is ready, 503 before and after
 *                 (a shard: recovered and serving; a worker: connected to
 *                 every shard)
 *
 * Counters and gauges only: no row, key or value ever appears there. */

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

typedef struct ps_metrics ps_metrics;

/* Writes the whole page into out (appending); 0 or a negative error. */
typedef int (*ps_metrics_render_fn)(void *ctx, ps_buf *out);

int ps_metrics_start(const char *hostport, ps_metrics **ret, char *err, size_t errlen);
/* The port it listens on (the configured one, or the one port 0 got). */
int ps_metrics_port(const ps_metrics *m);
/* Replace the served text (copied). Thread-safe. */
void ps_metrics_publish(ps_metrics *m, const char *text, size_t len);
/* Render every GET /metrics with fn instead (NULL: back to the published
 * text). Thread-safe; fn and ctx must outlive the endpoint or the next call. */
void ps_metrics_set_render(ps_metrics *m, ps_metrics_render_fn fn, void *ctx);
/* What /readyz answers. Thread-safe; false at start. */
void ps_metrics_set_ready(ps_metrics *m, bool ready);
void ps_metrics_stop(ps_metrics *m);
