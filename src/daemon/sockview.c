/* SPDX-License-Identifier: MIT */
/*
 * How `sockets` narrows and orders its answer for an operator looking for one peer or for
 * the busiest, oldest or idlest connections: the peer filter and the sort orders, applied
 * by cmd_sockets.c on the main loop to the workers' copies.
 */
#include "config.h"

#include "daemon.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

/* The library prints addresses with inet_ntop: normalising the operator's text the same
 * way makes "0:0::1" find "::1". */
static bool normalise(const char *in, char *out, size_t cap)
{
    unsigned char buf[sizeof(struct in6_addr)];
    int family = strchr(in, ':') ? AF_INET6 : AF_INET;
    return inet_pton(family, in, buf) == 1 && inet_ntop(family, buf, out, (socklen_t)cap);
}

int netd_peer_filter_parse(const char *s, netd_peer_filter_t *out)
{
    memset(out, 0, sizeof(*out));
    char addr[64];
    const char *port = NULL;
    size_t n = strlen(s);
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || (close[1] && close[1] != ':') || (size_t)(close - s - 1) >= sizeof(addr))
            return -1;
        memcpy(addr, s + 1, (size_t)(close - s - 1));
        addr[close - s - 1] = '\0';
        port = close[1] ? close + 2 : NULL;
    } else {
        const char *colon = strchr(s, ':');
        bool v4_port = colon && !strchr(colon + 1, ':'); /* one colon: IPv4 and a port */
        size_t len = v4_port ? (size_t)(colon - s) : n;
        if (len >= sizeof(addr))
            return -1;
        memcpy(addr, s, len);
        addr[len] = '\0';
        port = v4_port ? colon + 1 : NULL;
    }
    if (!normalise(addr, out->address, sizeof(out->address)))
        return -1;
    if (port) {
        char *end;
        long v = strtol(port, &end, 10);
        if (!*port || *end || v < 1 || v > 65535)
            return -1;
        out->port = (int)v;
    }
    out->on = true;
    return 0;
}

bool netd_peer_filter_match(const netd_peer_filter_t *f, const netd_sockinfo_t *i)
{
    if (!f->on)
        return true;
    if (strcmp(f->address, i->remote_address) != 0)
        return false;
    return f->port == 0 || f->port == i->remote_port;
}

int netd_sock_sort_parse(const char *s)
{
    if (strcmp(s, "bytes") == 0)
        return NETD_SORT_BYTES;
    if (strcmp(s, "age") == 0)
        return NETD_SORT_AGE;
    if (strcmp(s, "idle") == 0)
        return NETD_SORT_IDLE;
    return -1;
}

/* Larger first; equal ones by id, so that the order is stable from one call to the next. */
static int desc(uint64_t a, uint64_t b, const netd_sockinfo_t *x, const netd_sockinfo_t *y)
{
    if (a != b)
        return a > b ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int by_bytes(const void *a, const void *b)
{
    const netd_sockinfo_t *x = a, *y = b;
    return desc(x->bytes_read + x->bytes_written, y->bytes_read + y->bytes_written, x, y);
}

/* Oldest first. By the start, not by age_ms: each worker measured its ages at its own
 * moment, so two sockets started a millisecond apart on two workers could swap. */
static int by_age(const void *a, const void *b)
{
    const netd_sockinfo_t *x = a, *y = b;
    return desc(UINT64_MAX - x->created_ms, UINT64_MAX - y->created_ms, x, y);
}

static int by_idle(const void *a, const void *b)
{
    const netd_sockinfo_t *x = a, *y = b;
    return desc(x->idle_ms, y->idle_ms, x, y);
}

void netd_sockinfo_sort(netd_sockinfo_t *v, size_t n, enum netd_sock_sort by)
{
    int (*cmp)(const void *, const void *) = by == NETD_SORT_BYTES  ? by_bytes
                                             : by == NETD_SORT_AGE  ? by_age
                                             : by == NETD_SORT_IDLE ? by_idle
                                                                    : NULL;
    if (cmp && n > 1)
        qsort(v, n, sizeof(*v), cmp);
}
