/* SPDX-License-Identifier: MIT */
/*
 * The loop's resolver: its evdns base (created on first use, or for the nameserver a test
 * names) and nd__resolve, which answers a host name with one IP literal on a later turn.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/dns.h>

#define ND__HOSTS_FILE "/etc/hosts"

ND_EXPORT int nd_loop_set_nameserver(nd_loop_t *loop, const char *addr_port)
{
    if (!loop || !addr_port || strlen(addr_port) >= sizeof(loop->nameserver))
        return -EINVAL;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (evutil_parse_sockaddr_port(addr_port, (struct sockaddr *)&ss, &len) != 0)
        return -EINVAL;
    snprintf(loop->nameserver, sizeof(loop->nameserver), "%s", addr_port);
    if (loop->dns) {
        evdns_base_free(loop->dns, 1);
        loop->dns = NULL;
    }
    return 0;
}

struct evdns_base *nd__loop_dns(nd_loop_t *loop)
{
    if (loop->dns)
        return loop->dns;
    if (loop->nameserver[0]) {
        loop->dns = evdns_base_new(loop->base, 0);
        if (!loop->dns)
            return NULL;
        if (evdns_base_nameserver_ip_add(loop->dns, loop->nameserver) != 0) {
            evdns_base_free(loop->dns, 0);
            loop->dns = NULL;
            return NULL;
        }
        /* Named explicitly: given NULL, libevent knows only "localhost", not the file. */
        evdns_base_load_hosts(loop->dns, ND__HOSTS_FILE);
        /* Tests answer quickly or not at all: no long retries against a dead responder. */
        evdns_base_set_option(loop->dns, "timeout:", "2");
        evdns_base_set_option(loop->dns, "attempts:", "2");
    } else {
        loop->dns = evdns_base_new(loop->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                                   EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (!loop->dns)
            return NULL;
    }
    return loop->dns;
}

struct nd__resolve {
    nd__defer_t node; /* embedded: completing never needs memory, so never fails */
    nd_loop_t *loop;
    nd__resolve_cb cb;
    void *arg;
    bool cancelled;
    struct evdns_getaddrinfo_request *req; /* while evdns owes us a callback */
    int err;
    int family;
    char ip[64];
};

static void resolve_complete(void *arg)
{
    nd__resolve_t *r = arg;
    if (!r->cancelled)
        r->cb(r->arg, r->err, r->err ? NULL : r->ip, r->family);
    free(r);
}

static void resolve_got(int result, struct evutil_addrinfo *res, void *arg)
{
    nd__resolve_t *r = arg;
    r->req = NULL;
    if (result == 0 && res) {
        nd_address_t a;
        nd__address_from(&a, res->ai_addr, (socklen_t)res->ai_addrlen);
        memcpy(r->ip, a.address, sizeof(r->ip) - 1); /* an IP literal fits in 64 */
        r->ip[sizeof(r->ip) - 1] = '\0';
        r->family = a.family;
        r->err = 0;
    } else {
        r->err = (result == EVUTIL_EAI_NONAME || result == EVUTIL_EAI_NODATA ||
                  result == EVUTIL_EAI_FAIL || result == 0)
                     ? ND_ENOTFOUND
                     : ND_EDNS;
    }
    if (res)
        evutil_freeaddrinfo(res);
    if (result == EVUTIL_EAI_CANCEL || r->cancelled || r->loop->freeing) {
        free(r);
        return;
    }
    /* evdns may answer from inside evdns_getaddrinfo(): always hop to a later turn. */
    nd__loop_defer_node(r->loop, &r->node, resolve_complete, r, free);
}

nd__resolve_t *nd__resolve_start(nd_loop_t *loop, const char *host, int family, nd__resolve_cb cb,
                                 void *arg)
{
    nd__resolve_t *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->loop = loop;
    r->cb = cb;
    r->arg = arg;
    int kind = nd_is_ip(host);
    if (kind) {
        /* As dns.lookup does: a literal is its own answer, whatever family was asked. */
        snprintf(r->ip, sizeof(r->ip), "%s", host);
        r->family = kind;
    } else if (strcasecmp(host, "localhost") == 0) {
        snprintf(r->ip, sizeof(r->ip), "%s", family == 6 ? "::1" : "127.0.0.1");
        r->family = family == 6 ? 6 : 4;
    } else {
        struct evdns_base *dns = nd__loop_dns(loop);
        if (!dns) {
            free(r);
            return NULL;
        }
        struct evutil_addrinfo hints;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = family == 6 ? AF_INET6 : family == 4 ? AF_INET : AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_protocol = IPPROTO_TCP;
        /* evdns may have answered (and deferred) before this returns: r->req is then NULL. */
        struct evdns_getaddrinfo_request *req = evdns_getaddrinfo(dns, host, NULL, &hints,
                                                                  resolve_got, r);
        if (req)
            r->req = req;
        return r;
    }
    nd__loop_defer_node(loop, &r->node, resolve_complete, r, free);
    return r;
}

void nd__resolve_cancel(nd__resolve_t *r)
{
    /* Whichever callback is still due (evdns's or the deferred one) frees r. */
    r->cancelled = true;
    if (r->req)
        evdns_getaddrinfo_cancel(r->req);
}
