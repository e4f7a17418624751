#pragma once
/* RPC handlers: decode a Request frame, check it, call the shard, encode the
 * Response frame. The only server module that sees protobuf; it never sees a
 * socket (server/net.c owns those).
 *
 * Everything a peer sends is checked here before the shard sees it: the
 * method, the table, key and value counts against the table's dimension and
 * the configured limits, and key ownership. A rejected request changes no
 * state and gets an error status; only a frame that is not a Request at all
 * makes the caller close that one connection. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "buf.h"
#include "promtext.h"
#include "shard.h"

typedef struct ps_service ps_service;

/* Per-connection protocol state, owned by the connection. */
typedef struct ps_session ps_session;
struct ps_session {
    char client_name[64];        /* from Hello */
    bool hello_done;
    bool authenticated;          /* always true without a configured secret */
    bool has_challenge;          /* a server nonce is out, good for one answer */
    uint8_t challenge[PS_AUTH_NONCE];
    uint32_t refused;            /* requests refused before authentication */
    uint64_t client_id;
    /* The last request's outcome, for the network layer's log: 0 or the
     * status of its refusal (rpc.h: ps_status_name), the message sent with
     * it, and whether it was a failed authentication (a Hello). */
    int last_status;
    bool last_auth_failed;
    char last_error[160];
    /* Set by a push into a range being copied (ps_shard_throttle_ms()):
     * the network layer reads nothing more from the connection for this
     * many ms, then clears it. */
    uint32_t pause_ms;
    /* Owned: where a Pull's or Push's arrays are copied when they do not
     * sit aligned in the frame (service.c, in_place()); kept for the next. */
    void *scratch;
    size_t scratch_cap;
};

/* Counters kept by the network layer, reported through Stats. */
typedef void (*ps_service_extra_counters_fn)(void *ctx, void (*add)(void *acc, const char *name,
                                                                      uint64_t value),
                                             void *acc);

/* secret may be NULL or empty: no authentication. It is copied. */
int ps_service_new(ps_shard *shard, const ps_auth_secret *secret, ps_service **ret_service);
/* Start and end a connection's session (the checkpoint barrier counts the
 * connected workers: a checkpoint waits for each of them). */
void ps_service_session_init(ps_service *svc, ps_session *sess);
void ps_service_session_deinit(ps_service *svc, ps_session *sess);
void ps_service_free(ps_service *svc);
void ps_service_set_extra_counters(ps_service *svc, ps_service_extra_counters_fn fn, void *ctx);

/* Handle one frame and append its response frame to out. *ret_push is set
 * when the response acknowledges applied pushes: it must not leave before
 * ps_shard_commit() succeeded. *ret_close asks the caller to close the
 * connection once the response is written (a failed authentication).
 * Returns PS_EPROTO when the frame does not decode as a Request (close the
 * connection now), else 0. */
int ps_service_handle(ps_service *svc, ps_session *sess, const char *frame, size_t len, ps_buf *out,
                      bool *ret_push, bool *ret_close);

/* Every counter, gauge and request latency histogram of the service, its
 * shard and its tables, in Prometheus text (no row data). */
int ps_service_metrics(ps_service *svc, ps_prom *p);

/* Total requests and errors so far (for logs). */
void ps_service_totals(const ps_service *svc, uint64_t *ret_requests, uint64_t *ret_errors);
