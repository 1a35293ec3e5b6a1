/* SPDX-License-Identifier: MIT */
/*
 * GET /metrics over HTTP (libevent's evhttp) on the main loop: the same text as the
 * `metrics` command, in the Prometheus text format 0.0.4. Other paths get 404, methods
 * other than GET and HEAD get 405. A scrape waits for one short fan-out (metrics.c) and
 * never blocks: its reply is sent when the text is ready.
 */
#include "config.h"

#include "daemon.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
/* Scrapers reconnect as they like: an idle or stalled HTTP client goes after this. */
#define HTTP_TIMEOUT_S 10
/* Out of descriptors, the listener rests this long (libevent would retry at once,
 * forever: the level-triggered listener stays readable). */
#define HTTP_ACCEPT_PAUSE_MS 200

/* A request waiting for its text. evhttp keeps `req` valid until we reply, even when its
 * client has gone (the reply then just frees it), but frees it with the whole server:
 * netd_http_free answers what is left first. */
typedef struct scrape {
    struct evhttp_request *req; /* NULL once answered by netd_http_free */
    bool head;
    netd_http_t *h;
    LIST_ENTRY(scrape) link;
} scrape_t;

/* Owned by: the main loop (d->obs->http). */
struct netd_http {
    netd_t *d;
    struct evhttp *http;
    struct evconnlistener *listener; /* evhttp's, for the EMFILE pause */
    struct event *resume_ev;
    uint64_t last_warning_ms;
    LIST_HEAD(, scrape) waiting;
};

/* The endpoint of this process (there is at most one): libevent's accept-error callback
 * gets evhttp's pointer, not ours. Main loop only. */
static netd_http_t *current;

/* A short plain-text answer. (evhttp_send_error would drop our headers, Allow included.) */
static void reply_plain(struct evhttp_request *req, int code, const char *reason, const char *text)
{
    struct evbuffer *body = evbuffer_new();
    if (!body) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    evbuffer_add_printf(body, "%s\n", text);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; charset=utf-8");
    evhttp_send_reply(req, code, reason, body);
    evbuffer_free(body);
}

static void reply_text(netd_t *d, const char *text, size_t len, void *arg)
{
    scrape_t *sr = arg;
    if (sr->req) {
        LIST_REMOVE(sr, link);
        if (!text) {
            reply_plain(sr->req, HTTP_INTERNAL, "Internal Server Error", "out of memory");
        } else {
            struct evbuffer *body = evbuffer_new();
            struct evkeyvalq *headers = evhttp_request_get_output_headers(sr->req);
            if (!body || (!sr->head && evbuffer_add(body, text, len) != 0)) {
                reply_plain(sr->req, HTTP_INTERNAL, "Internal Server Error", "out of memory");
            } else {
                evhttp_add_header(headers, "Content-Type", CONTENT_TYPE);
                /* HEAD: the headers a GET would get, no body (evhttp would send it). */
                char n[32];
                snprintf(n, sizeof(n), "%zu", len);
                if (sr->head)
                    evhttp_add_header(headers, "Content-Length", n);
                evhttp_send_reply(sr->req, HTTP_OK, "OK", body);
            }
            if (body)
                evbuffer_free(body);
        }
    }
    free(sr);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    netd_http_t *h = arg;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    if (!path || strcmp(path, "/metrics") != 0) {
        reply_plain(req, HTTP_NOTFOUND, "Not Found", "netd serves /metrics only");
        return;
    }
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(headers, "Allow", "GET, HEAD");
        reply_plain(req, 405, "Method Not Allowed", "only GET and HEAD");
        return;
    }
    scrape_t *sr = calloc(1, sizeof(*sr));
    if (!sr) {
        reply_plain(req, HTTP_INTERNAL, "Internal Server Error", "out of memory");
        return;
    }
    sr->req = req;
    sr->head = cmd == EVHTTP_REQ_HEAD;
    sr->h = h;
    LIST_INSERT_HEAD(&h->waiting, sr, link);
    if (netd_metrics_collect(h->d, reply_text, sr) != 0) {
        LIST_REMOVE(sr, link);
        free(sr);
        reply_plain(req, HTTP_INTERNAL, "Internal Server Error", "out of memory");
    }
}

static void resume_accepting(evutil_socket_t fd, short what, void *arg)
{
    netd_http_t *h = arg;
    evconnlistener_enable(h->listener);
}

/* EMFILE, ENFILE, ENOBUFS, ENOMEM: stop accepting for a while (one warning a minute). */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    netd_http_t *h = current;
    if (!h || h->listener != lev)
        return;
    uint64_t now = netd_now_ms();
    if (now - h->last_warning_ms >= 60000 || h->last_warning_ms == 0) {
        netd_log(NETD_LOG_WARN, "metrics: accept: %s; pausing the HTTP endpoint for %d ms",
                 strerror(err), HTTP_ACCEPT_PAUSE_MS);
        h->last_warning_ms = now;
    }
    evconnlistener_disable(lev);
    struct timeval tv = {0, (suseconds_t)HTTP_ACCEPT_PAUSE_MS * 1000};
    evtimer_add(h->resume_ev, &tv);
}

netd_http_t *netd_http_start(netd_t *d, const char *host, int port, bool quiet_busy)
{
    netd_http_t *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->d = d;
    LIST_INIT(&h->waiting);
    h->http = evhttp_new(nd_loop_base(d->loop));
    if (!h->http) {
        free(h);
        return NULL;
    }
    /* Every method reaches on_request, which answers 405 itself (evhttp would say 501). */
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_timeout(h->http, HTTP_TIMEOUT_S);
    evhttp_set_max_headers_size(h->http, 16384);
    evhttp_set_max_body_size(h->http, 4096);
    evhttp_set_gencb(h->http, on_request, h);
    struct evhttp_bound_socket *bound = evhttp_bind_socket_with_handle(h->http, host,
                                                                       (ev_uint16_t)port);
    if (!bound) {
        int err = errno ? errno : EADDRNOTAVAIL;
        if (!(quiet_busy && err == EADDRINUSE))
            netd_log(NETD_LOG_ERROR, "metrics: cannot serve HTTP on %s:%d (%s)", host, port,
                     strerror(err));
        evhttp_free(h->http);
        free(h);
        errno = err;
        return NULL;
    }
    h->listener = evhttp_bound_socket_get_listener(bound);
    h->resume_ev = evtimer_new(nd_loop_base(d->loop), resume_accepting, h);
    if (!h->resume_ev) {
        evhttp_free(h->http);
        free(h);
        return NULL;
    }
    evconnlistener_set_error_cb(h->listener, on_accept_error);
    current = h;
    /* The bound address, port 0 resolved: tests and operators read it from this line. */
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t sl = sizeof(ss);
    char addr[64] = "?";
    int bport = port;
    if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
            char a[INET6_ADDRSTRLEN];
            inet_ntop(AF_INET6, &s6->sin6_addr, a, sizeof(a));
            snprintf(addr, sizeof(addr), "[%s]", a);
            bport = ntohs(s6->sin6_port);
        } else {
            const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof(addr));
            bport = ntohs(s4->sin_port);
        }
    }
    netd_log(NETD_LOG_INFO, "metrics: serving http://%s:%d/metrics", addr, bport);
    return h;
}

void netd_http_free(netd_http_t *h)
{
    if (!h)
        return;
    /* evhttp_free frees the requests still waiting: answer them while they exist. The
     * collection still calls reply_text, which then only frees the record. */
    scrape_t *sr;
    while ((sr = LIST_FIRST(&h->waiting)) != NULL) {
        LIST_REMOVE(sr, link);
        reply_plain(sr->req, HTTP_SERVUNAVAIL, "Service Unavailable", "metrics endpoint closing");
        sr->req = NULL;
        sr->h = NULL;
    }
    if (current == h)
        current = NULL;
    event_free(h->resume_ev);
    evhttp_free(h->http);
    free(h);
}
