#include "addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "config.h"
#include "error.h"

static void set_port(struct sockaddr_storage *ss, int port) {
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

int ps_addr_list_from(const struct addrinfo *ai, int port, ps_addr_list *ret_list) {
    ps_addr_list l = {0};
    for (; ai && l.n < PS_ADDR_MAX; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof(l.addr[0]))
            continue;
        /* getaddrinfo returns one entry per socket type unless hinted; the
         * hints below ask for TCP only, but skip repeats all the same. */
        bool seen = false;
        for (int i = 0; i < l.n && !seen; i++)
            seen = !memcmp(&l.addr[i], ai->ai_addr, ai->ai_addrlen);
        if (seen)
            continue;
        memset(&l.addr[l.n], 0, sizeof(l.addr[0]));
        memcpy(&l.addr[l.n], ai->ai_addr, ai->ai_addrlen);
        set_port(&l.addr[l.n], port);
        l.n++;
    }
    if (l.n == 0)
        return PS_EPARSE;
    *ret_list = l;
    return 0;
}

int ps_addr_resolve(const char *host, int port, bool passive, ps_addr_list *ret_list, char *err,
                    size_t errlen) {
    /* A private loop: libuv resolves synchronously when given no callback,
     * and a loop of our own keeps this safe from any thread. */
    uv_loop_t loop;
    int r = uv_loop_init(&loop);
    if (r < 0) {
        snprintf(err, errlen, "cannot resolve '%s': %s", host, uv_strerror(r));
        return r;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = passive ? AI_PASSIVE : 0};
    uv_getaddrinfo_t req;
    r = uv_getaddrinfo(&loop, &req, NULL, host, NULL, &hints);
    if (r == 0) {
        r = ps_addr_list_from(req.addrinfo, port, ret_list) == 0 ? 0 : UV_EAI_NODATA;
        uv_freeaddrinfo(req.addrinfo);
    }
    uv_loop_close(&loop);
    if (r < 0)
        snprintf(err, errlen, "cannot resolve '%s': %s", host, uv_strerror(r));
    return r;
}

int ps_addr_resolve_hostport(const char *hostport, bool passive, ps_addr_list *ret_list, char *err,
                             size_t errlen) {
    char host[256];
    int port;
    if (ps_parse_hostport(hostport, host, sizeof(host), &port) < 0) {
        snprintf(err, errlen, "expected HOST:PORT (a name, an IPv4 address or [IPv6]), got '%s'",
                 hostport);
        return PS_ECONFIG;
    }
    return ps_addr_resolve(host, port, passive, ret_list, err, errlen);
}

void ps_addr_format(const struct sockaddr *sa, char *buf, size_t len) {
    char ip[INET6_ADDRSTRLEN + 16] = "?";
    if (sa->sa_family == AF_INET) {
        uv_ip4_name((const struct sockaddr_in *)sa, ip, sizeof(ip));
        snprintf(buf, len, "%s:%d", ip, ps_addr_port(sa));
    } else if (sa->sa_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)sa, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%d", ip, ps_addr_port(sa));
    } else {
        snprintf(buf, len, "(family %d)", sa->sa_family);
    }
}

int ps_addr_port(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    if (sa->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    return -1;
}

bool ps_addr_is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return true;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return false;
}
