/* SPDX-License-Identifier: MIT */
/*
 * The daemon's counters: one X-macro list drives the `stats` reply and the daemon-wide part
 * of the Prometheus text (metrics.c builds the rest), so the two never disagree. Figures
 * are summed on demand from the per-thread and per-server atomics.
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
#define NETD_STATS(X)                                                                              \
    X("connections", "netd_connections", "gauge", "Live client connections.", connections)         \
    X("acceptedTotal", "netd_accepted_total", "counter", "Connections accepted.", accepted)        \
    X("rejectedTotal", "netd_rejected_total", "counter",                                           \
      "Connections closed at once because of maxConnections.", rejected)                           \
    X("bytesReadTotal", "netd_bytes_read_total", "counter", "Bytes read from sockets.",            \
      bytes_read)                                                                                  \
    X("bytesWrittenTotal", "netd_bytes_written_total", "counter", "Bytes written to sockets.",     \
      bytes_written)                                                                               \
    X("acceptPausedTotal", "netd_accept_paused_total", "counter",                                  \
      "Times accepting paused for lack of descriptors.", accept_paused)                            \
    X("handoffFailedTotal", "netd_handoff_failed_total", "counter",                                \
      "Accepted connections a worker could not take.", handoff_failed)                             \
    X("idleTimeoutTotal", "netd_idle_timeout_total", "counter",                                    \
      "Connections destroyed for idleness.", idle_timeouts)                                        \
    X("slowDestroyedTotal", "netd_slow_destroyed_total", "counter",                                \
      "Connections destroyed for a stalled, oversized write queue.", slow_destroyed)               \
    X("upstreamFailedTotal", "netd_upstream_failed_total", "counter",                              \
      "Proxy upstream connects that failed.", upstream_failed)                                     \
    X("servers", "netd_servers", "gauge", "Servers open.", servers)

/* What the servers that are gone counted, and what the threads of the process this one
 * took over from (upgrade) counted: the daemon's totals never go down. */
struct netd_closed_totals {
    uint64_t accepted, rejected, accept_paused, handoff_failed;
    uint64_t bytes_read, bytes_written, idle_timeouts, slow_destroyed, upstream_failed;
};

int netd_stats_init(netd_t *d)
{
    d->closed = calloc(1, sizeof(*d->closed));
    return d->closed ? 0 : -1;
}

void netd_stats_free(netd_t *d)
{
    free(d->closed);
    d->closed = NULL;
}

static void sum(netd_t *d, totals_t *t)
{
    memset(t, 0, sizeof(*t));
    t->accepted = d->closed->accepted;
    t->rejected = d->closed->rejected;
    t->accept_paused = d->closed->accept_paused;
    t->handoff_failed = d->closed->handoff_failed;
    t->bytes_read = d->closed->bytes_read;
    t->bytes_written = d->closed->bytes_written;
    t->idle_timeouts = d->closed->idle_timeouts;
    t->slow_destroyed = d->closed->slow_destroyed;
    t->upstream_failed = d->closed->upstream_failed;
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link) {
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

void netd_stats_closed_server(netd_t *d, netd_server_t *s)
{
    nd_server_stats_t st;
    nd_server_stats(s->group, &st);
    struct netd_closed_totals *c = d->closed;
    c->accepted += st.accepted + s->carried.accepted;
    c->rejected += st.rejected + s->carried.rejected;
    c->accept_paused += st.accept_paused + s->carried.accept_paused;
    c->handoff_failed += st.handoff_failed + s->carried.handoff_failed;
}

json_t *netd_stats_closed_json(netd_t *d)
{
    const struct netd_closed_totals *c = d->closed;
    /* The threads' counters as they stand: the new process's threads start from zero. */
    totals_t t;
    sum(d, &t);
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "accepted",
                     (json_int_t)c->accepted, "rejected", (json_int_t)c->rejected, "acceptPaused",
                     (json_int_t)c->accept_paused, "handoffFailed", (json_int_t)c->handoff_failed,
                     "bytesRead", (json_int_t)t.bytes_read, "bytesWritten",
                     (json_int_t)t.bytes_written, "idleTimeouts", (json_int_t)t.idle_timeouts,
                     "slowDestroyed", (json_int_t)t.slow_destroyed, "upstreamFailed",
                     (json_int_t)t.upstream_failed);
}

static uint64_t uget(const json_t *o, const char *key)
{
    json_int_t v = json_integer_value(json_object_get(o, key));
    return v > 0 ? (uint64_t)v : 0;
}

void netd_stats_closed_load(netd_t *d, const json_t *closed)
{
    struct netd_closed_totals *c = d->closed;
    c->accepted = uget(closed, "accepted");
    c->rejected = uget(closed, "rejected");
    c->accept_paused = uget(closed, "acceptPaused");
    c->handoff_failed = uget(closed, "handoffFailed");
    c->bytes_read = uget(closed, "bytesRead");
    c->bytes_written = uget(closed, "bytesWritten");
    c->idle_timeouts = uget(closed, "idleTimeouts");
    c->slow_destroyed = uget(closed, "slowDestroyed");
    c->upstream_failed = uget(closed, "upstreamFailed");
}

static json_t *threads_json(netd_t *d)
{
    json_t *arr = json_array();
    for (int i = 0; i < d->nworkers; i++) {
        nd_loop_stats_t ls;
        nd_loop_stats(d->workers[i].loop, &ls);
        json_array_append_new(arr, json_pack("{s:i, s:I, s:I, s:I, s:I, s:I}", "id", i,
                                             "connections", (json_int_t)ls.connections,
                                             "acceptedTotal", (json_int_t)ls.accepted,
                                             "handoffsTotal", (json_int_t)ls.handed_off,
                                             "bytesReadTotal", (json_int_t)ls.bytes_read,
                                             "bytesWrittenTotal", (json_int_t)ls.bytes_written));
    }
    return arr;
}

json_t *netd_stats_json(netd_t *d)
{
    totals_t t;
    sum(d, &t);
    json_t *o = json_pack("{s:i, s:s, s:I}", "pid", (int)getpid(), "version", NETD_VERSION_STRING,
                          "uptimeMs", (json_int_t)(netd_now_ms() - d->started_ms));
#define NETD_STAT_JSON(field, metric, type, help, member)                                          \
    json_object_set_new(o, field, json_integer((json_int_t)t.member));
    NETD_STATS(NETD_STAT_JSON)
#undef NETD_STAT_JSON
    json_object_set_new(o, "fdLimit", json_integer(d->fd_limit));
    json_object_set_new(o, "threads", threads_json(d));
    return o;
}

void netd_stats_metrics(netd_t *d, netd_text_t *t)
{
    totals_t tot;
    sum(d, &tot);
#define NETD_STAT_METRIC(field, metric, type, help, member)                                        \
    netd_text_printf(t, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", metric, help, metric, type,       \
                     metric, (unsigned long long)tot.member);
    NETD_STATS(NETD_STAT_METRIC)
#undef NETD_STAT_METRIC
    netd_text_printf(t,
                     "# HELP netd_uptime_seconds Seconds since netd started.\n"
                     "# TYPE netd_uptime_seconds gauge\nnetd_uptime_seconds %.3f\n",
                     (double)(netd_now_ms() - d->started_ms) / 1000.0);
    netd_text_printf(t,
                     "# HELP netd_fd_limit Open-file limit.\n# TYPE netd_fd_limit gauge\n"
                     "netd_fd_limit %d\n",
                     d->fd_limit);
}
