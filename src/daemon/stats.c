/*
 * The daemon's counters: one X-macro list drives the `stats` reply and the Prometheus
 * `metrics` text, so the two never disagree. Figures are summed on demand from the
 * per-thread and per-server atomics.
 */
#include "config.h"

#include "daemon.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct totals {
    uint64_t connections, accepted, rejected, bytes_read, bytes_written, accept_paused,
        handoff_failed, idle_timeouts, slow_destroyed, upstream_failed, servers;
} totals_t;

/* X(json field, metric name, type, help, totals field) */
#define NETD_STATS(X)                                                                        \
    X("connections", "netd_connections", "gauge", "Live client connections.", connections)  \
    X("acceptedTotal", "netd_accepted_total", "counter", "Connections accepted.", accepted)  \
    X("rejectedTotal", "netd_rejected_total", "counter",                                   \
      "Connections closed at once because of maxConnections.", rejected)                   \
    X("bytesReadTotal", "netd_bytes_read_total", "counter", "Bytes read from sockets.",     \
      bytes_read)                                                                            \
    X("bytesWrittenTotal", "netd_bytes_written_total", "counter",                          \
      "Bytes written to sockets.", bytes_written)                                           \
    X("acceptPausedTotal", "netd_accept_paused_total", "counter",                          \
      "Times accepting paused for lack of descriptors.", accept_paused)                     \
    X("handoffFailedTotal", "netd_handoff_failed_total", "counter",                        \
      "Accepted connections a worker could not take.", handoff_failed)                      \
    X("idleTimeoutTotal", "netd_idle_timeout_total", "counter",                            \
      "Connections destroyed for idleness.", idle_timeouts)                                 \
    X("slowDestroyedTotal", "netd_slow_destroyed_total", "counter",                        \
      "Connections destroyed for a stalled, oversized write queue.", slow_destroyed)        \
    X("upstreamFailedTotal", "netd_upstream_failed_total", "counter",                      \
      "Proxy upstream connects that failed.", upstream_failed)                              \
    X("servers", "netd_servers", "gauge", "Servers open.", servers)

static void sum(netd_t *d, totals_t *t)
{
    memset(t, 0, sizeof(*t));
    t->accepted = d->closed.accepted;
    t->rejected = d->closed.rejected;
    t->accept_paused = d->closed.accept_paused;
    t->handoff_failed = d->closed.handoff_failed;
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
    {
        t->servers++;
        /* Counted by the process this one took over from (upgrade). */
        t->accepted += s->carried.accepted;
        t->rejected += s->carried.rejected;
        t->accept_paused += s->carried.accept_paused;
        t->handoff_failed += s->carried.handoff_failed;
        if (!s->group)
            continue;
        nd_server_stats_t st;
        nd_server_stats(s->group, &st);
        t->connections += st.connections;
        t->accepted += st.accepted;
        t->rejected += st.rejected;
        t->accept_paused += st.accept_paused;
        t->handoff_failed += st.handoff_failed;
    }
    for (int i = 0; i < d->nworkers; i++) {
        netd_worker_t *w = &d->workers[i];
        nd_loop_stats_t ls;
        nd_loop_stats(w->loop, &ls);
        t->bytes_read += ls.bytes_read;
        t->bytes_written += ls.bytes_written;
        t->idle_timeouts += atomic_load(&w->idle_timeouts);
        t->slow_destroyed += atomic_load(&w->slow_destroyed);
        t->upstream_failed += atomic_load(&w->upstream_failed);
    }
}

uint64_t netd_stats_accept_paused(netd_t *d)
{
    totals_t t;
    sum(d, &t);
    return t.accept_paused;
}

void netd_stats_closed_server(netd_t *d, nd_server_t *group)
{
    nd_server_stats_t st;
    nd_server_stats(group, &st);
    d->closed.accepted += st.accepted;
    d->closed.rejected += st.rejected;
    d->closed.accept_paused += st.accept_paused;
    d->closed.handoff_failed += st.handoff_failed;
}

static json_t *threads_json(netd_t *d)
{
    json_t *arr = json_array();
    for (int i = 0; i < d->nworkers; i++) {
        nd_loop_stats_t ls;
        nd_loop_stats(d->workers[i].loop, &ls);
        json_array_append_new(
            arr, json_pack("{s:i, s:I, s:I, s:I, s:I, s:I}", "id", i, "connections",
                           (json_int_t)ls.connections, "acceptedTotal", (json_int_t)ls.accepted,
                           "handoffsTotal", (json_int_t)ls.handed_off, "bytesReadTotal",
                           (json_int_t)ls.bytes_read, "bytesWrittenTotal",
                           (json_int_t)ls.bytes_written));
    }
    return arr;
}

json_t *netd_stats_json(netd_t *d)
{
    totals_t t;
    sum(d, &t);
    json_t *o = json_pack("{s:i, s:s, s:I}", "pid", (int)getpid(), "version", NETD_VERSION_STRING,
                          "uptimeMs", (json_int_t)(netd_now_ms() - d->started_ms));
#define NETD_STAT_JSON(field, metric, type, help, member)                                    \
    json_object_set_new(o, field, json_integer((json_int_t)t.member));
    NETD_STATS(NETD_STAT_JSON)
#undef NETD_STAT_JSON
    json_object_set_new(o, "fdLimit", json_integer(d->fd_limit));
    json_object_set_new(o, "threads", threads_json(d));
    return o;
}

static void append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf ? *buf + *len : NULL, *buf ? *cap - *len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (*buf && *len + (size_t)n < *cap) {
            *len += (size_t)n;
            return;
        }
        size_t ncap = *cap ? *cap * 2 : 4096;
        while (ncap < *len + (size_t)n + 1)
            ncap *= 2;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return;
        *buf = nb;
        *cap = ncap;
    }
}

char *netd_metrics_text(netd_t *d)
{
    totals_t t;
    sum(d, &t);
    char *buf = NULL;
    size_t len = 0, cap = 0;
#define NETD_STAT_METRIC(field, metric, type, help, member)                                  \
    append(&buf, &len, &cap, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", metric, help, metric,     \
           type, metric, (unsigned long long)t.member);
    NETD_STATS(NETD_STAT_METRIC)
#undef NETD_STAT_METRIC
    append(&buf, &len, &cap, "# HELP netd_uptime_seconds Seconds since netd started.\n"
                             "# TYPE netd_uptime_seconds gauge\nnetd_uptime_seconds %.3f\n",
           (double)(netd_now_ms() - d->started_ms) / 1000.0);
    append(&buf, &len, &cap, "# HELP netd_fd_limit Open-file limit.\n# TYPE netd_fd_limit gauge\n"
                             "netd_fd_limit %d\n",
           d->fd_limit);
    append(&buf, &len, &cap,
           "# HELP netd_thread_connections Live connections per worker thread.\n"
           "# TYPE netd_thread_connections gauge\n");
    for (int i = 0; i < d->nworkers; i++) {
        nd_loop_stats_t ls;
        nd_loop_stats(d->workers[i].loop, &ls);
        append(&buf, &len, &cap, "netd_thread_connections{thread=\"%d\"} %llu\n", i,
               (unsigned long long)ls.connections);
    }
    append(&buf, &len, &cap,
           "# HELP netd_server_connections Live connections per server.\n"
           "# TYPE netd_server_connections gauge\n");
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
    {
        nd_server_stats_t st = {0};
        if (s->group)
            nd_server_stats(s->group, &st);
        /* Label values escape backslash, quote and newline (the exposition format). */
        char name[256];
        size_t k = 0;
        for (const char *p = s->spec.name; *p && k + 2 < sizeof(name); p++) {
            if (*p == '\\' || *p == '"' || *p == '\n') {
                name[k++] = '\\';
                name[k++] = *p == '\n' ? 'n' : *p;
            } else {
                name[k++] = *p;
            }
        }
        name[k] = '\0';
        append(&buf, &len, &cap, "netd_server_connections{server=\"%s\",id=\"%llu\"} %llu\n",
               name, (unsigned long long)s->id, (unsigned long long)st.connections);
    }
    return buf;
}
