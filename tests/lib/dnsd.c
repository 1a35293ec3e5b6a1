/* SPDX-License-Identifier: MIT */
/*
 * The test DNS responder (tests/lib/dnsd.h): one UDP socket on 127.0.0.1 read by a raw
 * libevent event on the test's loop, a name table, and the optionally delayed replies.
 */
#include "config.h"

#include "dnsd.h"

#include "harness.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#define TYPE_A 1
#define TYPE_AAAA 28
#define CLASS_IN 1
#define RCODE_NXDOMAIN 3
#define HEADER_LEN 12
/* Plain DNS over UDP without EDNS: resolvers accept nothing longer. */
#define MAX_REPLY 512

struct record {
    char name[256]; /* lower case, no trailing dot */
    int type;
    unsigned char addr[16];
};

struct pending {
    LIST_ENTRY(pending) link;
    th_dnsd_t *d;
    struct event *timer;
    struct sockaddr_storage peer;
    socklen_t peer_len;
    size_t len;
    unsigned char reply[MAX_REPLY];
};

struct th_dnsd {
    nd_loop_t *loop;
    int fd;
    int port;
    struct event *read_ev;
    struct record *records;
    size_t nrecords;
    int queries;
    unsigned delay_ms;
    LIST_HEAD(pending_list, pending) pending;
};

static void put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static unsigned get16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

/* Reads the question name into dotted lower case. Returns the offset just past the name,
 * or 0 when it is malformed; compression pointers never appear in a question. */
static size_t parse_qname(const unsigned char *msg, size_t len, char *out, size_t out_size)
{
    size_t pos = HEADER_LEN, n = 0;

    for (;;) {
        if (pos >= len)
            return 0;
        unsigned label = msg[pos++];
        if (label == 0)
            break;
        if (label > 63 || pos + label > len || n + label + 2 > out_size)
            return 0;
        if (n > 0)
            out[n++] = '.';
        for (unsigned i = 0; i < label; i++)
            out[n++] = (char)tolower(msg[pos + i]);
        pos += label;
    }
    out[n] = '\0';
    return pos;
}

/* Builds the reply to one query in p->reply. Returns 0, or -1 for a packet to ignore. */
static int answer(th_dnsd_t *d, const unsigned char *q, size_t qlen, struct pending *p)
{
    char name[256];

    if (qlen < HEADER_LEN)
        return -1;
    unsigned flags = get16(q + 2);
    /* Only standard queries (QR 0, opcode 0) with exactly one question. */
    if ((flags & 0xf800) != 0 || get16(q + 4) != 1)
        return -1;
    size_t end = parse_qname(q, qlen, name, sizeof(name));
    if (end == 0 || end + 4 > qlen)
        return -1;
    unsigned qtype = get16(q + end), qclass = get16(q + end + 2);
    end += 4;

    int known = 0;
    unsigned char *out = p->reply;
    size_t n = end, answers = 0;
    memcpy(out, q, end); /* id and question verbatim: resolvers match both */
    for (size_t i = 0; i < d->nrecords; i++) {
        const struct record *r = &d->records[i];
        if (strcmp(r->name, name) != 0)
            continue;
        known = 1;
        if ((unsigned)r->type != qtype || qclass != CLASS_IN)
            continue;
        size_t rdlen = r->type == TYPE_A ? 4 : 16;
        if (n + 12 + rdlen > MAX_REPLY)
            break;
        put16(out + n, 0xc000 | HEADER_LEN); /* the name: a pointer to the question's */
        put16(out + n + 2, qtype);
        put16(out + n + 4, CLASS_IN);
        put16(out + n + 6, 0);
        put16(out + n + 8, 60); /* TTL */
        put16(out + n + 10, (unsigned)rdlen);
        memcpy(out + n + 12, r->addr, rdlen);
        n += 12 + rdlen;
        answers++;
    }
    d->queries++;

    /* QR, RD as asked, RA; NXDOMAIN only when the name is unknown altogether. */
    put16(out + 2, 0x8000 | (flags & 0x0100) | 0x0080 | (known ? 0 : RCODE_NXDOMAIN));
    put16(out + 6, (unsigned)answers);
    put16(out + 8, 0);
    put16(out + 10, 0);
    p->len = n;
    return 0;
}

static void send_reply(th_dnsd_t *d, const struct pending *p)
{
    /* UDP: a lost reply is the resolver's business (it retries), as on a real network. */
    (void)sendto(d->fd, p->reply, p->len, 0, (const struct sockaddr *)&p->peer, p->peer_len);
}

static void free_pending(struct pending *p)
{
    LIST_REMOVE(p, link);
    event_free(p->timer);
    free(p);
}

static void delayed_reply(evutil_socket_t fd, short what, void *arg)
{
    struct pending *p = arg;

    send_reply(p->d, p);
    free_pending(p);
}

static void readable(evutil_socket_t fd, short what, void *arg)
{
    th_dnsd_t *d = arg;
    unsigned char buf[1500];

    for (;;) {
        struct pending *p = calloc(1, sizeof(*p));
        if (p == NULL)
            return;
        p->peer_len = sizeof(p->peer);
        ssize_t got = recvfrom(d->fd, buf, sizeof(buf), 0, (struct sockaddr *)&p->peer,
                               &p->peer_len);
        if (got < 0 || answer(d, buf, (size_t)got, p) < 0) {
            free(p);
            if (got < 0 && errno != EINTR)
                return; /* drained (EAGAIN) */
            continue;
        }
        if (d->delay_ms == 0) {
            send_reply(d, p);
            free(p);
            continue;
        }
        /* Each delayed reply has its own timer; none keeps the loop alive, so a test that
         * destroys a socket during its lookup still finishes. */
        struct timeval tv = {.tv_sec = d->delay_ms / 1000,
                             .tv_usec = (long)(d->delay_ms % 1000) * 1000};
        p->d = d;
        p->timer = evtimer_new(nd_loop_base(d->loop), delayed_reply, p);
        if (p->timer == NULL) {
            free(p);
            continue;
        }
        LIST_INSERT_HEAD(&d->pending, p, link);
        evtimer_add(p->timer, &tv);
    }
}

th_dnsd_t *th_dnsd_start(nd_loop_t *loop)
{
    th_dnsd_t *d = calloc(1, sizeof(*d));
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    char ns[32];

    ck_assert_msg(d != NULL, "out of memory");
    d->loop = loop;
    LIST_INIT(&d->pending);
    d->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ck_assert_msg(d->fd >= 0, "socket: %s", strerror(errno));
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_msg(bind(d->fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "bind: %s",
                  strerror(errno));
    ck_assert_msg(getsockname(d->fd, (struct sockaddr *)&sin, &len) == 0, "getsockname: %s",
                  strerror(errno));
    d->port = ntohs(sin.sin_port);

    d->read_ev = event_new(nd_loop_base(loop), d->fd, EV_READ | EV_PERSIST, readable, d);
    ck_assert_msg(d->read_ev != NULL, "event_new failed");
    event_add(d->read_ev, NULL);

    snprintf(ns, sizeof(ns), "127.0.0.1:%d", d->port);
    int rc = nd_loop_set_nameserver(loop, ns);
    ck_assert_msg(rc == 0, "nd_loop_set_nameserver(%s): %s", ns, nd_strerror(rc));
    return d;
}

int th_dnsd_port(const th_dnsd_t *d)
{
    return d->port;
}

void th_dnsd_add(th_dnsd_t *d, const char *name, const char *ip)
{
    struct record r;
    size_t n = strlen(name);

    memset(&r, 0, sizeof(r));
    if (n > 0 && name[n - 1] == '.')
        n--; /* "example.com." and "example.com" are the same name */
    ck_assert_msg(n > 0 && n < sizeof(r.name), "bad name '%s'", name);
    for (size_t i = 0; i < n; i++)
        r.name[i] = (char)tolower((unsigned char)name[i]);
    if (inet_pton(AF_INET, ip, r.addr) == 1)
        r.type = TYPE_A;
    else if (inet_pton(AF_INET6, ip, r.addr) == 1)
        r.type = TYPE_AAAA;
    else
        ck_abort_msg("th_dnsd_add: '%s' is not an IP address", ip);

    struct record *grown = realloc(d->records, (d->nrecords + 1) * sizeof(*grown));
    ck_assert_msg(grown != NULL, "out of memory");
    d->records = grown;
    d->records[d->nrecords++] = r;
}

int th_dnsd_queries(const th_dnsd_t *d)
{
    return d->queries;
}

void th_dnsd_set_delay(th_dnsd_t *d, unsigned delay_ms)
{
    d->delay_ms = delay_ms;
}

void th_dnsd_free(th_dnsd_t *d)
{
    if (d == NULL)
        return;
    while (!LIST_EMPTY(&d->pending))
        free_pending(LIST_FIRST(&d->pending));
    event_free(d->read_ev);
    close(d->fd);
    free(d->records);
    free(d);
}
