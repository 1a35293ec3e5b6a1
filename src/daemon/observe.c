/* SPDX-License-Identifier: MIT */
/*
 * The workers' side of observation (how each connection ended, its duration, its moves,
 * its bytes settled into its server's totals, its access-log line) and the module's life
 * on the main loop: start, SIGHUP reopen, reload, stop.
 */
#include "config.h"

#include "daemon.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <event2/event.h>

/* ------------------------------------------------------------------ workers */

static void on_peer_end(void *sock, const nd_event_t *ev, void *arg)
{
    netd_conn_t *c = arg;
    c->obs.peer_fin = true;
}

static void on_sock_error(void *sock, const nd_event_t *ev, void *arg)
{
    netd_conn_t *c = arg;
    if (!c->obs.error && ev->error)
        c->obs.error = ev->error->code;
}

void netd_obs_attach(netd_conn_t *c)
{
    if (c->role != NETD_ROLE_CLIENT)
        return;
    nd_socket_on(c->sock, ND_EV_END, on_peer_end, c);
    nd_socket_on(c->sock, ND_EV_ERROR, on_sock_error, c);
}

void netd_obs_end(netd_conn_t *c, enum netd_end why)
{
    if (c->role != NETD_ROLE_CLIENT)
        return;
    if (c->obs.end == NETD_END_NONE)
        c->obs.end = (uint8_t)why;
    netd_server_obs_t *o = &c->server->obs;
    if (why == NETD_END_TIMEOUT)
        atomic_fetch_add_explicit(&o->idle_timeouts, 1, memory_order_relaxed);
    else if (why == NETD_END_SLOW)
        atomic_fetch_add_explicit(&o->slow_destroyed, 1, memory_order_relaxed);
    else if (why == NETD_END_UPSTREAM)
        atomic_fetch_add_explicit(&o->upstream_failed, 1, memory_order_relaxed);
}

void netd_obs_settle(netd_conn_t *c)
{
    uint64_t r = nd_socket_bytes_read(c->sock), w = nd_socket_bytes_written(c->sock);
    if (r > c->obs.settled_read) {
        atomic_fetch_add_explicit(&c->server->obs.bytes_read, r - c->obs.settled_read,
                                  memory_order_relaxed);
        c->obs.settled_read = r;
    }
    if (w > c->obs.settled_written) {
        atomic_fetch_add_explicit(&c->server->obs.bytes_written, w - c->obs.settled_written,
                                  memory_order_relaxed);
        c->obs.settled_written = w;
    }
}

void netd_obs_move_out(netd_worker_t *w, netd_conn_t *c)
{
    if (!c || c->role != NETD_ROLE_CLIENT)
        return;
    c->obs.moves++;
    atomic_fetch_add_explicit(&w->obs.moves_out, 1, memory_order_relaxed);
}

void netd_obs_move_in(netd_worker_t *w, netd_conn_t *c)
{
    if (c && c->role == NETD_ROLE_CLIENT)
        atomic_fetch_add_explicit(&w->obs.moves_in, 1, memory_order_relaxed);
}

const char *netd_obs_end_name(const netd_conn_t *c, bool had_error)
{
    switch ((enum netd_end)c->obs.end) {
    case NETD_END_TIMEOUT:
        return "timeout";
    case NETD_END_SLOW:
        return "slow";
    case NETD_END_DESTROY:
        return "destroy";
    case NETD_END_UPSTREAM:
        return "upstream";
    case NETD_END_NONE:
        break;
    }
    /* An error after the peer's FIN (a write refused: EPIPE) ends nothing by itself. */
    if (had_error || (c->obs.error && !c->obs.peer_fin)) {
        if (c->obs.error == -ECONNRESET || c->obs.error == ECONNRESET)
            return "RST";
        return c->obs.error ? nd_err_name(c->obs.error) : "error";
    }
    /* No FIN and no error: netd's side (a handler) ended it. */
    return c->obs.peer_fin ? "FIN" : "local";
}

/* A line being built: appends stop at the end of the buffer, never past it. */
typedef struct linebuf {
    char *buf;
    size_t cap, len;
} linebuf_t;

__attribute__((format(printf, 2, 3))) static void put(linebuf_t *l, const char *fmt, ...)
{
    if (l->len + 1 >= l->cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->buf + l->len, l->cap - l->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        l->len += (size_t)n < l->cap - l->len ? (size_t)n : l->cap - l->len - 1;
}

/* A server name stays one word: anything beyond a plain name is written as a JSON-style
 * quoted string. */
static void put_name(linebuf_t *l, const char *name)
{
    if (*name && strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                              "0123456789._:/@+-[]") == strlen(name)) {
        put(l, "%s", name);
        return;
    }
    put(l, "\"");
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        if (*p == '"' || *p == '\\')
            put(l, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            put(l, "\\u%04x", *p);
        else
            put(l, "%c", *p);
    }
    put(l, "\"");
}

/* "2025-01-31T12:00:00.123Z echo 127.0.0.1:51234 socket=17 thread=1 duration_ms=5007
 * in=212 out=198 moves=0 end=FIN" (netd.json(5)). UTC: gmtime_r takes no lock. A line
 * too long for the buffer (a name of hundreds of bytes) is cut short, still one line. */
static size_t format_line(char *buf, size_t cap, const netd_conn_t *c, uint64_t duration_ms,
                          bool had_error)
{
    linebuf_t l = {buf, cap, 0};
    uint64_t now = netd_wall_ms();
    time_t secs = (time_t)(now / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    l.len = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    put(&l, ".%03uZ ", (unsigned)(now % 1000));
    put_name(&l, netd_server_label(c->server)); /* spec.name may change on the main loop */
    const char *ra = nd_socket_remote_address(c->sock);
    const char *fam = nd_socket_remote_family(c->sock);
    if (!ra)
        put(&l, " unix");
    else if (fam && strcmp(fam, "IPv6") == 0)
        put(&l, " [%s]:%d", ra, nd_socket_remote_port(c->sock));
    else
        put(&l, " %s:%d", ra, nd_socket_remote_port(c->sock));
    put(&l, " socket=%llu thread=%d duration_ms=%llu in=%llu out=%llu moves=%u end=%s",
        (unsigned long long)c->id, c->worker->index, (unsigned long long)duration_ms,
        (unsigned long long)nd_socket_bytes_read(c->sock),
        (unsigned long long)nd_socket_bytes_written(c->sock), c->obs.moves,
        netd_obs_end_name(c, had_error));
    if (l.len + 1 >= cap)
        l.len = cap - 2;
    buf[l.len++] = '\n';
    buf[l.len] = '\0';
    return l.len;
}

void netd_obs_closed(netd_conn_t *c, const nd_event_t *ev)
{
    netd_obs_settle(c);
    uint64_t ms = netd_now_ms() - c->created_ms;
    int b = 0;
    while (b < NETD_DURATION_BOUNDS && ms > netd_duration_bounds_ms[b])
        b++;
    netd_server_obs_t *o = &c->server->obs;
    atomic_fetch_add_explicit(&o->duration[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&o->duration_ms_sum, ms, memory_order_relaxed);
    netd_observe_t *obs = c->worker->d->obs;
    if (!c->server->spec.access_log || !obs || !obs->alog)
        return;
    char line[1024];
    size_t len = format_line(line, sizeof(line), c, ms, ev->had_error != 0);
    netd_alog_line(obs->alog, c->worker, line, len);
}

/* ------------------------------------------------------------------ main loop */

int netd_metrics_parse_addr(const char *arg, char **host, int *port, char *err, size_t errlen)
{
    const char *colon = strrchr(arg, ':');
    const char *p = colon ? colon + 1 : arg;
    char *end;
    long v = strtol(p, &end, 10);
    if (!*p || *end || v < 0 || v > 65535) {
        snprintf(err, errlen, "--metrics: \"%s\" is not HOST:PORT, [IPV6]:PORT or PORT", arg);
        return -1;
    }
    char h[256] = "127.0.0.1";
    if (colon) {
        size_t n = (size_t)(colon - arg);
        if (n >= 2 && arg[0] == '[' && arg[n - 1] == ']') {
            arg++;
            n -= 2;
        }
        if (n == 0 || n >= sizeof(h)) {
            snprintf(err, errlen, "--metrics: empty or too long host in \"%s\"", arg);
            return -1;
        }
        memcpy(h, arg, n);
        h[n] = '\0';
    }
    *host = strdup(h);
    *port = (int)v;
    return *host ? 0 : -1;
}

static bool same(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

int netd_observe_init(netd_t *d, int nworkers)
{
    netd_observe_t *o = calloc(1, sizeof(*o));
    if (!o || !(o->metrics = netd_metrics_new())) {
        free(o);
        netd_log(NETD_LOG_ERROR, "out of memory");
        return -1;
    }
    d->obs = o;
    char err[256];
    if (d->metrics_flag) {
        if (netd_metrics_parse_addr(d->metrics_flag, &o->http_host, &o->http_port, err,
                                    sizeof(err)) != 0) {
            netd_log(NETD_LOG_ERROR, "%s", err);
            return -1;
        }
    } else if (d->cfg.metrics_port >= 0 && d->cfg.metrics_host) {
        o->http_host = strdup(d->cfg.metrics_host);
        o->http_port = d->cfg.metrics_port;
    }
    if (d->cfg.access_log && !(o->log_path = strdup(d->cfg.access_log)))
        return -1;
    o->alog = netd_alog_start(d, o->log_path, nworkers);
    return o->alog ? 0 : -1;
}

#define HTTP_RETRY_MS 100
#define HTTP_RETRIES 300

static void http_retry(evutil_socket_t fd, short what, void *arg)
{
    netd_t *d = arg;
    netd_observe_t *o = d->obs;
    bool last = ++o->http_tries >= HTTP_RETRIES;
    o->http = netd_http_start(d, o->http_host, o->http_port, !last);
    if (o->http || last || errno != EADDRINUSE)
        return; /* serving, or given up (logged): netd goes on without metrics */
    struct timeval tv = {0, (suseconds_t)HTTP_RETRY_MS * 1000};
    evtimer_add(o->http_retry, &tv);
}

int netd_observe_start(netd_t *d, bool patient)
{
    netd_observe_t *o = d->obs;
    if (!o || !o->http_host)
        return 0;
    o->http = netd_http_start(d, o->http_host, o->http_port, patient);
    if (o->http)
        return 0;
    if (!patient || errno != EADDRINUSE)
        return -1;
    netd_log(NETD_LOG_INFO, "metrics: %s:%d still served by the netd taken over from; waiting",
             o->http_host, o->http_port);
    o->http_retry = evtimer_new(nd_loop_base(d->loop), http_retry, d);
    if (!o->http_retry)
        return -1;
    struct timeval tv = {0, (suseconds_t)HTTP_RETRY_MS * 1000};
    evtimer_add(o->http_retry, &tv);
    return 0;
}

void netd_observe_stop(netd_t *d)
{
    netd_observe_t *o = d->obs;
    if (!o)
        return;
    if (o->http_retry)
        event_free(o->http_retry);
    netd_http_free(o->http);
    netd_alog_stop(o->alog);
    netd_metrics_free(d, o->metrics);
    free(o->http_host);
    free(o->log_path);
    free(o);
    d->obs = NULL;
}

void netd_observe_reopen(netd_t *d)
{
    netd_observe_t *o = d->obs;
    if (o && o->alog && o->log_path)
        netd_alog_reopen(o->alog, o->log_path);
}

void netd_observe_reload(netd_t *d, const netd_config_t *cfg)
{
    netd_observe_t *o = d->obs;
    if (!o)
        return;
    if (!same(cfg->access_log, o->log_path)) {
        char *path = cfg->access_log ? strdup(cfg->access_log) : NULL;
        if (!cfg->access_log || path) {
            free(o->log_path);
            o->log_path = path;
            netd_log(NETD_LOG_INFO, "access log: now %s", path ? path : "stderr");
            netd_alog_reopen(o->alog, path);
        }
    }
    if (d->metrics_flag)
        return; /* the command line's address stays */
    const char *host = cfg->metrics_port >= 0 ? cfg->metrics_host : NULL;
    if (same(host, o->http_host) && (!host || cfg->metrics_port == o->http_port))
        return;
    /* The old endpoint goes first: the new one may want the same port. */
    if (o->http_retry)
        evtimer_del(o->http_retry);
    netd_http_free(o->http);
    o->http = NULL;
    free(o->http_host);
    o->http_host = host ? strdup(host) : NULL;
    o->http_port = cfg->metrics_port;
    if (!o->http_host) {
        netd_log(NETD_LOG_INFO, "metrics: HTTP endpoint off");
        return;
    }
    o->http = netd_http_start(d, o->http_host, o->http_port, false);
}
