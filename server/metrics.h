#pragma once
/* The Prometheus endpoint ([server] metrics_listen = HOST:PORT): GET
 * /metrics serves the latest text the loop thread published (it renders
 * every second; see net.c), from libmicrohttpd's own thread. Counters and
 * gauges only: no row, key or value ever appears there. */

#include <stddef.h>

typedef struct ps_metrics ps_metrics;

int ps_metrics_start(const char *hostport, ps_metrics **ret, char *err, size_t errlen);
/* The port it listens on (the configured one, or the one port 0 got). */
int ps_metrics_port(const ps_metrics *m);
/* Replace the served text (copied). Thread-safe. */
void ps_metrics_publish(ps_metrics *m, const char *text, size_t len);
void ps_metrics_stop(ps_metrics *m);
