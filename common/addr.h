#pragma once
/* Network addresses from the config: resolving a HOST and PORT (a DNS name,
 * an IPv4 literal or an IPv6 literal, as ps_parse_hostport() returns them)
 * with libuv's getaddrinfo, and printing a resolved address back.
 *
 * Names are resolved where an address is used, never once at load: a
 * listener resolves its bind host when it starts, and the client resolves a
 * shard's name again before every connection attempt, so a shard restarted
 * at a new address (a rescheduled Kubernetes pod) is found under its name. */

#include <netdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define PS_ADDR_MAX 8            /* addresses kept per name */
#define PS_ADDR_STRLEN 64        /* "[v6%zone]:port" fits */

typedef struct ps_addr_list {
    int n;
    struct sockaddr_storage addr[PS_ADDR_MAX];
} ps_addr_list;

/* Resolve host and port, blocking (for listeners, at start). passive: a
 * listen address, where "0.0.0.0" and "::" mean every interface. On error
 * err says which name failed and why ("cannot resolve 'x.invalid':
 * unknown node or service") and a negative libuv error is returned;
 * *ret_list is written only on success, with at least one address. */
int ps_addr_resolve(const char *host, int port, bool passive, ps_addr_list *ret_list, char *err,
                    size_t errlen);

/* The same for "HOST:PORT" text (ps_parse_hostport); PS_ECONFIG with
 * "expected HOST:PORT" in err when it does not parse. */
int ps_addr_resolve_hostport(const char *hostport, bool passive, ps_addr_list *ret_list, char *err,
                             size_t errlen);

/* Copy the IPv4 and IPv6 entries of a getaddrinfo() result (borrowed),
 * at most PS_ADDR_MAX, in its order, into *ret_list; PS_EPARSE (nothing
 * written) when it holds none. For callers that resolve asynchronously. */
int ps_addr_list_from(const struct addrinfo *ai, int port, ps_addr_list *ret_list);

/* "1.2.3.4:80" or "[::1]:80" into buf (at least PS_ADDR_STRLEN bytes). */
void ps_addr_format(const struct sockaddr *sa, char *buf, size_t len);
/* The port of an AF_INET or AF_INET6 address, or -1. */
int ps_addr_port(const struct sockaddr *sa);
/* True for 127.0.0.0/8, ::1 and IPv4-mapped loopback. */
bool ps_addr_is_loopback(const struct sockaddr *sa);
