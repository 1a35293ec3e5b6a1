/* SPDX-License-Identifier: MIT */
/*
 * The Prometheus text (exposition format 0.0.4), built on the main loop from the servers'
 * and workers' atomics after one fan-out in which each worker settles its connections'
 * bytes. Series are labelled by server name, never by id: a server that closes hands its
 * counters on to the next one of that name, so a reload that reopens it continues them.
 */
#include "config.h"

#include "daemon.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* 5 ms to a day: short request/response exchanges up to long-lived sessions. */
const uint64_t netd_duration_bounds_ms[NETD_DURATION_BOUNDS] = {
    5, 50, 500, 1000, 5000, 15000, 60000, 300000, 900000, 3600000, 14400000, 86400000};

/* Names whose counters are kept after their last server closed: enough for any reload,
 * bounded against a client that opens servers under ever new names. */
#define RETIRED_MAX 256

/* ------------------------------------------------------------------ text */

void netd_text_printf(netd_text_t *t, const char *fmt, ...)
{
    if (t->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (t->buf && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 16384;
        while (cap < t->len + (size_t)n + 1)
            cap *= 2;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->oom = true;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

void netd_text_label(netd_text_t *t, const char *value)
{
    for (const char *p = value; *p; p++) {
        size_t run = strcspn(p, "\\\"\n");
        if (run) {
            netd_text_printf(t, "%.*s", (int)run, p);
            p += run;
            if (!*p)
                break;
        }
        netd_text_printf(t, "\\%c", *p == '\n' ? 'n' : *p);
    }
}

/* ------------------------------------------------------------------ per server rows */

/* One server name's figures: live servers of that name (a closing one and its successor
 * during a reload) plus what closed servers of that name left. */
typedef struct srow {
    const char *name;
    uint64_t connections, accepted, rejected, bytes_read, bytes_written, idle_timeouts,
        slow_destroyed, upstream_failed;
    uint64_t duration[NETD_DURATION_BUCKETS];
    uint64_t duration_ms_sum;
} srow_t;

/* X(metric, type, help, srow field): one row per name in each family. */
#define NETD_SERVER_FAMILIES(X)                                                                    \
    X("netd_server_connections", "gauge", "Live client connections of the server.", connections)   \
    X("netd_server_accepted_total", "counter", "Connections the server accepted.", accepted)       \
    X("netd_server_rejected_total", "counter",                                                     \
      "Connections the server closed at once because of maxConnections.", rejected)                \
    X("netd_server_bytes_read_total", "counter",                                                   \
      "Bytes read from the server's client connections.", bytes_read)                              \
    X("netd_server_bytes_written_total", "counter",                                                \
      "Bytes written to the server's client connections.", bytes_written)                          \
    X("netd_server_idle_timeout_total", "counter",                                                 \
      "Connections of the server destroyed for idleness.", idle_timeouts)                          \
    X("netd_server_slow_destroyed_total", "counter",                                               \
      "Connections of the server destroyed for a stalled, oversized write queue.", slow_destroyed) \
    X("netd_server_upstream_failed_total", "counter",                                              \
      "Proxy upstream connects of the server that failed.", upstream_failed)

typedef struct retired {
    srow_t totals; /* totals.name is owned */
    uint64_t seq;  /* when it was last added to: the oldest goes first */
} retired_t;

/* A collection in progress: the requests it will answer. */
typedef struct waiter {
    netd_metrics_cb cb;
    void *arg;
    struct waiter *next;
} waiter_t;

/* The process's own figures, read off the main loop: counting 10,000 descriptors takes
 * milliseconds (more through /proc/self/fd), which the acceptors must not wait for. */
typedef struct proc_figures {
    double cpu_seconds;
    unsigned long long rss_bytes, vm_bytes, max_fds;
    long long open_fds; /* -1: unknown */
} proc_figures_t;

/* The process query of a collection: posted to the process thread, which fills `figures`
 * and posts it back to the main loop; whoever holds it last frees it (a loop freed with it
 * still queued drops it). */
typedef struct proc_query {
    nd_msg_t msg;
    netd_t *d;
    proc_figures_t figures;
} proc_query_t;

/* Owned by: the main loop (d->obs->metrics). */
struct netd_metrics {
    retired_t retired[RETIRED_MAX];
    size_t nretired;
    uint64_t seq;
    waiter_t *waiters; /* answered by the collection in flight */
    bool collecting;
    int parts_due;     /* the workers' fan-out and the process query */
    double start_time; /* process_start_time_seconds */
    nd_loop_t *proc_loop;
    nd_thread_t *proc_thread;
    proc_figures_t proc; /* from the latest process query */
};

static double process_start_time(void)
{
    /* Field 22 of /proc/self/stat is the start in clock ticks after boot; btime in
     * /proc/stat is the boot in seconds since the epoch. */
    double start = 0;
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) {
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
        unsigned long long ticks = 0;
        if (p && sscanf(p + 2,
                        "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d "
                        "%*d %*d %*d %*d %llu",
                        &ticks) == 1)
            start = (double)ticks / (double)sysconf(_SC_CLK_TCK);
    }
    f = fopen("/proc/stat", "r");
    unsigned long long btime = 0;
    while (f && fgets(buf, sizeof(buf), f))
        if (sscanf(buf, "btime %llu", &btime) == 1)
            break;
    if (f)
        fclose(f);
    return (double)btime + start;
}

struct netd_metrics *netd_metrics_new(void)
{
    struct netd_metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->start_time = process_start_time();
    m->proc_loop = nd_loop_new();
    m->proc_thread = m->proc_loop ? nd_thread_start(m->proc_loop) : NULL;
    if (!m->proc_thread) {
        if (m->proc_loop)
            nd_loop_free(m->proc_loop);
        free(m);
        return NULL;
    }
    return m;
}

void netd_metrics_free(netd_t *d, struct netd_metrics *m)
{
    if (!m)
        return;
    /* A query still at the process thread runs first; its return trip to the main loop
     * waits there and is dropped with it. */
    nd_thread_stop(m->proc_thread);
    nd_thread_join(m->proc_thread);
    for (size_t i = 0; i < m->nretired; i++)
        free((char *)m->retired[i].totals.name);
    /* A collection cut short by the exit: its requests get their "no" (a control client
     * is gone by now, an HTTP request was answered by netd_http_free): what they hold is
     * freed. */
    while (m->waiters) {
        waiter_t *w = m->waiters;
        m->waiters = w->next;
        w->cb(d, NULL, 0, w->arg);
        free(w);
    }
    free(m);
}

static void add_row(srow_t *to, const srow_t *from)
{
    to->connections += from->connections;
    to->accepted += from->accepted;
    to->rejected += from->rejected;
    to->bytes_read += from->bytes_read;
    to->bytes_written += from->bytes_written;
    to->idle_timeouts += from->idle_timeouts;
    to->slow_destroyed += from->slow_destroyed;
    to->upstream_failed += from->upstream_failed;
    for (int i = 0; i < NETD_DURATION_BUCKETS; i++)
        to->duration[i] += from->duration[i];
    to->duration_ms_sum += from->duration_ms_sum;
}

static void server_row(netd_server_t *s, srow_t *r)
{
    memset(r, 0, sizeof(*r));
    /* The name it opened under: a closing server that gave its name to its successor is
     * renamed NAME#ID, yet it is the same series. */
    r->name = netd_server_label(s);
    nd_server_stats_t st = s->final;
    if (s->group)
        nd_server_stats(s->group, &st);
    r->connections = st.connections;
    /* What the process this one took over from had counted (upgrade), as `servers`. */
    r->accepted = st.accepted + s->carried.accepted;
    r->rejected = st.rejected + s->carried.rejected;
    netd_server_obs_t *o = &s->obs;
    r->bytes_read = atomic_load_explicit(&o->bytes_read, memory_order_relaxed);
    r->bytes_written = atomic_load_explicit(&o->bytes_written, memory_order_relaxed);
    r->idle_timeouts = atomic_load_explicit(&o->idle_timeouts, memory_order_relaxed);
    r->slow_destroyed = atomic_load_explicit(&o->slow_destroyed, memory_order_relaxed);
    r->upstream_failed = atomic_load_explicit(&o->upstream_failed, memory_order_relaxed);
    for (int i = 0; i < NETD_DURATION_BUCKETS; i++)
        r->duration[i] = atomic_load_explicit(&o->duration[i], memory_order_relaxed);
    r->duration_ms_sum = atomic_load_explicit(&o->duration_ms_sum, memory_order_relaxed);
}

static retired_t *retired_find(struct netd_metrics *m, const char *name)
{
    for (size_t i = 0; i < m->nretired; i++)
        if (strcmp(m->retired[i].totals.name, name) == 0)
            return &m->retired[i];
    return NULL;
}

void netd_obs_server_closed(netd_t *d, netd_server_t *s)
{
    struct netd_metrics *m = d->obs ? d->obs->metrics : NULL;
    if (!m)
        return;
    srow_t row;
    server_row(s, &row);
    row.connections = 0;
    retired_t *r = retired_find(m, netd_server_label(s));
    if (!r) {
        char *name = strdup(netd_server_label(s));
        if (!name)
            return; /* its series may restart at 0 after a reopen: no worse than before */
        if (m->nretired < RETIRED_MAX) {
            r = &m->retired[m->nretired++];
        } else {
            r = &m->retired[0];
            for (size_t i = 1; i < m->nretired; i++)
                if (m->retired[i].seq < r->seq)
                    r = &m->retired[i];
            free((char *)r->totals.name);
        }
        memset(r, 0, sizeof(*r));
        r->totals.name = name;
    }
    const char *name = r->totals.name;
    add_row(&r->totals, &row);
    r->totals.name = name;
    r->seq = ++m->seq;
}

/* Rows for the names of the servers open now, in the order they were opened. */
static srow_t *server_rows(netd_t *d, size_t *n)
{
    size_t cap = 0;
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
        cap++;
    srow_t *rows = calloc(cap ? cap : 1, sizeof(*rows));
    if (!rows)
        return NULL;
    *n = 0;
    TAILQ_FOREACH(s, &d->servers, link) {
        srow_t r;
        server_row(s, &r);
        size_t i = 0;
        while (i < *n && strcmp(rows[i].name, r.name) != 0)
            i++;
        if (i == *n) {
            rows[(*n)++] = r;
            retired_t *old = retired_find(d->obs->metrics, r.name);
            if (old)
                add_row(&rows[i], &old->totals);
        } else {
            add_row(&rows[i], &r);
        }
    }
    return rows;
}

static void family(netd_text_t *t, const char *name, const char *type, const char *help)
{
    netd_text_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void server_metrics(netd_t *d, netd_text_t *t)
{
    size_t n = 0;
    srow_t *rows = server_rows(d, &n);
    if (!rows) {
        t->oom = true;
        return;
    }
#define NETD_SERVER_FAMILY(metric, type, help, field)                                              \
    family(t, metric, type, help);                                                                 \
    for (size_t i = 0; i < n; i++) {                                                               \
        netd_text_printf(t, metric "{server=\"");                                                  \
        netd_text_label(t, rows[i].name);                                                          \
        netd_text_printf(t, "\"} %llu\n", (unsigned long long)rows[i].field);                      \
    }
    NETD_SERVER_FAMILIES(NETD_SERVER_FAMILY)
#undef NETD_SERVER_FAMILY

    const char *h = "netd_server_connection_duration_seconds";
    family(t, h, "histogram", "How long the server's client connections lasted.");
    for (size_t i = 0; i < n; i++) {
        uint64_t cumulative = 0;
        for (int b = 0; b < NETD_DURATION_BUCKETS; b++) {
            cumulative += rows[i].duration[b];
            netd_text_printf(t, "%s_bucket{server=\"", h);
            netd_text_label(t, rows[i].name);
            if (b < NETD_DURATION_BOUNDS)
                netd_text_printf(t, "\",le=\"%g\"} %llu\n",
                                 (double)netd_duration_bounds_ms[b] / 1000.0,
                                 (unsigned long long)cumulative);
            else
                netd_text_printf(t, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cumulative);
        }
        netd_text_printf(t, "%s_sum{server=\"", h);
        netd_text_label(t, rows[i].name);
        netd_text_printf(t, "\"} %.3f\n%s_count{server=\"",
                         (double)rows[i].duration_ms_sum / 1000.0, h);
        netd_text_label(t, rows[i].name);
        netd_text_printf(t, "\"} %llu\n", (unsigned long long)cumulative);
    }
    free(rows);
}

/* ------------------------------------------------------------------ per thread */

typedef struct trow {
    uint64_t connections, accepted, handoffs, moves_in, moves_out, bytes_read, bytes_written;
} trow_t;

#define NETD_THREAD_FAMILIES(X)                                                                    \
    X("netd_thread_connections", "gauge", "Live connections the worker thread serves.",            \
      connections)                                                                                 \
    X("netd_thread_accepted_total", "counter",                                                     \
      "Connections the worker thread began to serve (handed to it or, reuseport, its own).",       \
      accepted)                                                                                    \
    X("netd_thread_handoffs_total", "counter",                                                     \
      "Accepted connections handed to the worker thread.", handoffs)                               \
    X("netd_thread_moves_in_total", "counter",                                                     \
      "Live client connections moved to the worker thread.", moves_in)                             \
    X("netd_thread_moves_out_total", "counter",                                                    \
      "Live client connections moved away from the worker thread.", moves_out)                     \
    X("netd_thread_bytes_read_total", "counter", "Bytes the worker thread read.", bytes_read)      \
    X("netd_thread_bytes_written_total", "counter",                                                \
      "Bytes the worker thread handed to the kernel.", bytes_written)

static void thread_metrics(netd_t *d, netd_text_t *t)
{
    trow_t *rows = calloc((size_t)d->nworkers + 1, sizeof(*rows));
    if (!rows) {
        t->oom = true;
        return;
    }
    for (int i = 0; i < d->nworkers; i++) {
        netd_worker_t *w = &d->workers[i];
        nd_loop_stats_t ls;
        nd_loop_stats(w->loop, &ls);
        rows[i] = (trow_t){
            .connections = ls.connections,
            .accepted = ls.accepted,
            .handoffs = ls.handed_off,
            .moves_in = atomic_load_explicit(&w->obs.moves_in, memory_order_relaxed),
            .moves_out = atomic_load_explicit(&w->obs.moves_out, memory_order_relaxed),
            .bytes_read = ls.bytes_read,
            .bytes_written = ls.bytes_written};
    }
#define NETD_THREAD_FAMILY(metric, type, help, field)                                              \
    family(t, metric, type, help);                                                                 \
    for (int i = 0; i < d->nworkers; i++)                                                          \
        netd_text_printf(t, metric "{thread=\"%d\"} %llu\n", i, (unsigned long long)rows[i].field);
    NETD_THREAD_FAMILIES(NETD_THREAD_FAMILY)
#undef NETD_THREAD_FAMILY
    free(rows);
}

/* ------------------------------------------------------------------ the process */

/* Open descriptors, with poll(2) over the descriptor table in slices: an unused slot
 * reports POLLNVAL. A third of the cost of reading /proc/self/fd, but still ~0.3 us per
 * descriptor, so a count serves the scrapes of the next second (Prometheus scrapes every
 * 15 s or so; a scraper polling ten times a second does not make netd count ten times). */
#define FD_COUNT_MAX_AGE_MS 1000

static long long count_fds_now(void)
{
    long long table = 0;
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "FDSize: %lld", &table) == 1)
            break;
    if (f)
        fclose(f);
    if (table <= 0)
        return -1;
    enum { SLICE = 4096 };
    static struct pollfd p[SLICE]; /* the process thread's alone */
    long long open = 0;
    for (long long base = 0; base < table; base += SLICE) {
        int n = table - base < SLICE ? (int)(table - base) : SLICE;
        for (int i = 0; i < n; i++)
            p[i] = (struct pollfd){.fd = (int)(base + i), .events = 0};
        if (poll(p, (nfds_t)n, 0) < 0)
            return -1;
        for (int i = 0; i < n; i++)
            open += !(p[i].revents & POLLNVAL);
    }
    return open;
}

/* Process thread only. */
static long long count_fds(void)
{
    static long long last = -1;
    static uint64_t when;
    uint64_t now = netd_now_ms();
    if (last < 0 || now - when >= FD_COUNT_MAX_AGE_MS) {
        last = count_fds_now();
        when = now;
    }
    return last;
}

/* Process thread. */
static void proc_read(proc_figures_t *out)
{
    struct rusage ru;
    out->cpu_seconds = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        out->cpu_seconds = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    unsigned long long vm_pages = 0, rss_pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%llu %llu", &vm_pages, &rss_pages) != 2)
            vm_pages = rss_pages = 0;
        fclose(f);
    }
    unsigned long long page = (unsigned long long)sysconf(_SC_PAGESIZE);
    out->rss_bytes = rss_pages * page;
    out->vm_bytes = vm_pages * page;
    struct rlimit rl = {0, 0};
    getrlimit(RLIMIT_NOFILE, &rl);
    out->max_fds = rl.rlim_cur == RLIM_INFINITY ? 0ULL : (unsigned long long)rl.rlim_cur;
    out->open_fds = count_fds();
}

static void process_metrics(netd_t *d, netd_text_t *t)
{
    struct netd_metrics *m = d->obs->metrics;
    const proc_figures_t *p = &m->proc;
    family(t, "process_start_time_seconds", "gauge",
           "Start time of the process since the epoch in seconds.");
    netd_text_printf(t, "process_start_time_seconds %.2f\n", m->start_time);
    family(t, "process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.");
    netd_text_printf(t, "process_cpu_seconds_total %.3f\n", p->cpu_seconds);
    family(t, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    netd_text_printf(t, "process_resident_memory_bytes %llu\n", p->rss_bytes);
    family(t, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    netd_text_printf(t, "process_virtual_memory_bytes %llu\n", p->vm_bytes);
    if (p->open_fds >= 0) {
        family(t, "process_open_fds", "gauge", "Number of open file descriptors.");
        netd_text_printf(t, "process_open_fds %lld\n", p->open_fds);
    }
    family(t, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
    netd_text_printf(t, "process_max_fds %llu\n", p->max_fds);
}

/* ------------------------------------------------------------------ the whole text */

static void access_log_metrics(netd_t *d, netd_text_t *t)
{
    uint64_t lines = 0, dropped = netd_alog_dropped(d->obs->alog);
    for (int i = 0; i < d->nworkers; i++) {
        lines += atomic_load_explicit(&d->workers[i].obs.log_lines, memory_order_relaxed);
        dropped += atomic_load_explicit(&d->workers[i].obs.log_dropped, memory_order_relaxed);
    }
    family(t, "netd_access_log_lines_total", "counter",
           "Access-log lines handed to the log writer.");
    netd_text_printf(t, "netd_access_log_lines_total %llu\n", (unsigned long long)lines);
    family(t, "netd_access_log_dropped_total", "counter",
           "Access-log lines dropped: the buffer was full, or the log took nothing for 10 s.");
    netd_text_printf(t, "netd_access_log_dropped_total %llu\n", (unsigned long long)dropped);
}

static void build(netd_t *d, netd_text_t *t)
{
    family(t, "netd_build_info", "gauge", "The running netd's version; the value is always 1.");
    netd_text_printf(t, "netd_build_info{version=\"");
    netd_text_label(t, NETD_VERSION_STRING);
    netd_text_printf(t, "\"} 1\n");
    netd_stats_metrics(d, t);
    server_metrics(d, t);
    thread_metrics(d, t);
    access_log_metrics(d, t);
    process_metrics(d, t);
}

/* ------------------------------------------------------------------ collection */

/* Worker thread: what each client connection moved since it was last settled goes to its
 * server's totals now. */
static void settle_worker(netd_worker_t *w, void *ctx)
{
    (void)ctx;
    netd_conn_t *c;
    TAILQ_FOREACH(c, &w->conns, link)
        if (c->role == NETD_ROLE_CLIENT)
            netd_obs_settle(c);
}

static void part_done(netd_t *d, struct netd_metrics *m)
{
    if (--m->parts_due > 0)
        return;
    m->collecting = false;
    waiter_t *list = m->waiters;
    m->waiters = NULL; /* requests made by the callbacks below start a new collection */
    netd_text_t t = {0};
    build(d, &t);
    while (list) {
        waiter_t *w = list;
        list = w->next;
        if (t.oom)
            w->cb(d, NULL, 0, w->arg);
        else
            w->cb(d, t.buf, t.len, w->arg);
        free(w);
    }
    free(t.buf);
}

static void workers_settled(netd_t *d, void *ctx)
{
    part_done(d, ctx);
}

static void proc_back(nd_loop_t *loop, void *arg)
{
    proc_query_t *q = arg;
    netd_t *d = q->d;
    struct netd_metrics *m = d->obs->metrics;
    m->proc = q->figures;
    free(q);
    part_done(d, m);
}

static void proc_run(nd_loop_t *loop, void *arg)
{
    proc_query_t *q = arg;
    proc_read(&q->figures);
    nd_loop_post_msg(q->d->loop, &q->msg, proc_back, q, free);
}

int netd_metrics_collect(netd_t *d, netd_metrics_cb cb, void *arg)
{
    struct netd_metrics *m = d->obs->metrics;
    waiter_t *w = malloc(sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->cb = cb;
    w->arg = arg;
    if (!m->collecting) {
        proc_query_t *q = calloc(1, sizeof(*q));
        if (!q || netd_fanout(d, settle_worker, workers_settled, m) != 0) {
            free(q);
            free(w);
            return -ENOMEM;
        }
        m->collecting = true;
        m->parts_due = 2;
        q->d = d;
        nd_loop_post_msg(m->proc_loop, &q->msg, proc_run, q, free);
    }
    w->next = m->waiters;
    m->waiters = w;
    return 0;
}
