#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "config.h"
#include "error.h"

struct ps_metrics {
    struct MHD_Daemon *daemon;
    pthread_mutex_t mu;
    char *text;                  /* owned */
    size_t len;
    ps_metrics_render_fn render; /* under mu */
    void *render_ctx;
    atomic_bool ready;
};

static struct MHD_Response *fixed(const char *text) {
    return MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
}

/* The /metrics page: rendered now (under mu, so that set_render() never
 * races a render in progress), or the text last published. */
static struct MHD_Response *metrics_page(ps_metrics *m, unsigned *ret_code) {
    struct MHD_Response *resp = NULL;
    pthread_mutex_lock(&m->mu);
    if (m->render) {
        ps_buf b;
        ps_buf_init(&b);
        if (m->render(m->render_ctx, &b) == 0) {
            size_t len;
            char *text = ps_buf_take(&b, &len);
            resp = MHD_create_response_from_buffer(len, text ? text : (char *)"",
                                                   text ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
            if (!resp)
                free(text);
            *ret_code = MHD_HTTP_OK;
        } else {
            resp = fixed("metrics unavailable\n");
            *ret_code = MHD_HTTP_INTERNAL_SERVER_ERROR;
        }
        ps_buf_deinit(&b);
    } else {
        resp = MHD_create_response_from_buffer(m->len, m->text ? m->text : (char *)"",
                                               MHD_RESPMEM_MUST_COPY);
        *ret_code = MHD_HTTP_OK;
    }
    pthread_mutex_unlock(&m->mu);
    return resp;
}

static enum MHD_Result serve(void *cls, struct MHD_Connection *conn, const char *url,
                             const char *method, const char *version, const char *upload,
                             size_t *upload_len, void **state) {
    ps_metrics *m = cls;
    (void)version;
    (void)upload;
    (void)upload_len;
    (void)state;
    struct MHD_Response *resp;
    unsigned code = MHD_HTTP_OK;
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (get && strcmp(url, "/metrics") == 0) {
        resp = metrics_page(m, &code);
    } else if (get && strcmp(url, "/healthz") == 0) {
        resp = fixed("ok\n");
    } else if (get && strcmp(url, "/readyz") == 0) {
        bool ready = atomic_load(&m->ready);
        resp = fixed(ready ? "ready\n" : "not ready\n");
        code = ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
    } else {
        resp = fixed("served here: GET /metrics, /healthz, /readyz\n");
        code = MHD_HTTP_NOT_FOUND;
    }
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4");
    enum MHD_Result r = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return r;
}

int ps_metrics_start(const char *hostport, ps_metrics **ret, char *err, size_t errlen) {
    ps_addr_list addrs;
    char why[256];
    int r = ps_addr_resolve_hostport(hostport, true, &addrs, why, sizeof(why));
    if (r < 0) {
        snprintf(err, errlen, "metrics listen address: %s", why);
        return r;
    }
    struct sockaddr *sa = (struct sockaddr *)&addrs.addr[0];
    int port = ps_addr_port(sa);
    ps_metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    pthread_mutex_init(&m->mu, NULL);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | (sa->sa_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    m->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, serve, m,
                                 MHD_OPTION_SOCK_ADDR, sa,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)16,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (!m->daemon) {
        snprintf(err, errlen, "metrics endpoint: cannot listen on %s", hostport);
        pthread_mutex_destroy(&m->mu);
        free(m);
        return -EADDRINUSE;
    }
    *ret = m;
    return 0;
}

int ps_metrics_port(const ps_metrics *m) {
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(m->daemon, MHD_DAEMON_INFO_BIND_PORT);
    return i ? i->port : 0;
}

void ps_metrics_publish(ps_metrics *m, const char *text, size_t len) {
    char *copy = malloc(len + 1);
    if (!copy)
        return; /* keep serving the previous text */
    memcpy(copy, text, len);
    pthread_mutex_lock(&m->mu);
    free(m->text);
    m->text = copy;
    m->len = len;
    pthread_mutex_unlock(&m->mu);
}

void ps_metrics_set_render(ps_metrics *m, ps_metrics_render_fn fn, void *ctx) {
    pthread_mutex_lock(&m->mu);
    m->render = fn;
    m->render_ctx = ctx;
    pthread_mutex_unlock(&m->mu);
}

void ps_metrics_set_ready(ps_metrics *m, bool ready) { atomic_store(&m->ready, ready); }

void ps_metrics_stop(ps_metrics *m) {
    if (!m)
        return;
    MHD_stop_daemon(m->daemon);
    pthread_mutex_destroy(&m->mu);
    free(m->text);
    free(m);
}
