/* SPDX-License-Identifier: MIT */
/*
 * Worker threads: each owns a loop and the registry of the connections it serves, runs
 * the handlers, enforces per-connection limits, and answers fan-out queries with typed
 * slots. Moves between workers live in moves.c.
 */
#include "config.h"

#include "daemon.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>

#include "handlers/handlers.h"

/* ------------------------------------------------------------------ registry */

static void on_conn_close(void *sock, const nd_event_t *ev, void *arg);
static void on_idle(void *sock, const nd_event_t *ev, void *arg);

static netd_conn_t *conn_make(netd_worker_t *w, nd_socket_t *sock, netd_server_t *srv,
                              enum netd_role role, uint64_t id, uint64_t age_ms)
{
    netd_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->id = id;
    c->sock = sock;
    c->server = srv;
    c->role = role;
    c->created_ms = netd_now_ms() - age_ms;
    netd_server_retain(srv);
    netd_worker_insert(w, c);
    nd_socket_set_data(sock, c); /* the daemon's slot: handlers leave it alone */
    return c;
}

static netd_conn_t *conn_new(netd_worker_t *w, nd_socket_t *sock, netd_server_t *srv,
                             enum netd_role role)
{
    return conn_make(w, sock, srv, role, netd_next_id(w->d), 0);
}

netd_conn_t *netd_worker_import_conn(netd_worker_t *w, nd_socket_t *sock, netd_server_t *srv,
                                     enum netd_role role, uint64_t id, uint64_t age_ms)
{
    netd_conn_t *c = conn_make(w, sock, srv, role, id, age_ms);
    if (c)
        c->parked = true;
    return c;
}

void netd_conn_forget(netd_conn_t *c)
{
    if (c->pair)
        c->pair->pair = NULL;
    netd_worker_remove(c);
    netd_server_release(c->server);
    free(c);
}

void netd_worker_insert(netd_worker_t *w, netd_conn_t *c)
{
    c->worker = w;
    TAILQ_INSERT_TAIL(&w->conns, c, link);
}

void netd_worker_remove(netd_conn_t *c)
{
    TAILQ_REMOVE(&c->worker->conns, c, link);
}

/* Our own listeners on a socket: attached at accept and again after every move. */
static void attach(netd_conn_t *c)
{
    nd_socket_on(c->sock, ND_EV_CLOSE, on_conn_close, c);
    netd_obs_attach(c);
    nd_socket_set_high_water_mark(c->sock, atomic_load(&c->worker->d->high_water_mark));
    if (c->role == NETD_ROLE_CLIENT) {
        unsigned t = atomic_load(&c->server->timeout_ms);
        if (t)
            nd_socket_set_timeout(c->sock, t, on_idle, c);
    }
}

/* A watch event about a connection, with what every such event carries. */
static netd_event_t *conn_event(netd_conn_t *c, enum netd_event_kind kind)
{
    netd_event_t *e = netd_event_new(c->worker->d, kind, c->server);
    if (!e)
        return NULL;
    e->socket = c->id;
    e->thread = c->worker->index;
    const char *ra = nd_socket_remote_address(c->sock);
    if (ra) {
        snprintf(e->remote_address, sizeof(e->remote_address), "%s", ra);
        e->remote_port = nd_socket_remote_port(c->sock);
    }
    return e;
}

static void watch_close(netd_conn_t *c, const nd_event_t *ev)
{
    netd_event_t *e = conn_event(c, NETD_EV_CLOSE);
    if (!e)
        return;
    e->duration_ms = netd_now_ms() - c->created_ms;
    e->bytes_read = nd_socket_bytes_read(c->sock);
    e->bytes_written = nd_socket_bytes_written(c->sock);
    e->had_error = ev->had_error != 0;
    netd_event_post(e);
}

static void on_conn_close(void *sock, const nd_event_t *ev, void *arg)
{
    netd_conn_t *c = arg;
    netd_server_t *srv = c->server;
    if (c->role == NETD_ROLE_CLIENT) {
        atomic_fetch_add(&srv->bytes_read_closed, nd_socket_bytes_read(sock));
        atomic_fetch_add(&srv->bytes_written_closed, nd_socket_bytes_written(sock));
        netd_obs_closed(c, ev);
        watch_close(c, ev);
    }
    /* Paired records are always on the same worker (moves.c keeps it so). */
    if (c->pair)
        c->pair->pair = NULL;
    netd_worker_remove(c);
    nd_socket_set_data(sock, NULL);
    netd_server_release(srv);
    free(c);
}

static void on_idle(void *sock, const nd_event_t *ev, void *arg)
{
    netd_conn_t *c = arg;
    atomic_fetch_add(&c->worker->idle_timeouts, 1);
    netd_obs_end(c, NETD_END_TIMEOUT);
    netd_log(NETD_LOG_DEBUG, "socket %llu idle for %u ms: destroyed", (unsigned long long)c->id,
             atomic_load(&c->server->timeout_ms));
    nd_socket_destroy(sock);
}

static netd_worker_t *worker_of(netd_t *d, nd_server_t *ws)
{
    return &d->workers[nd_server_worker_index(ws)];
}

/* A socket that reaches a worker after the exit cut, or for a server whose connections
 * are being destroyed, does not get to live. */
static bool doomed(const netd_worker_t *w, const netd_server_t *srv)
{
    return w->cut || atomic_load(&srv->destroying);
}

/* ------------------------------------------------------------------ handler hooks */

static void upstream_failed(void *ctx, nd_socket_t *client, const nd_error_t *err)
{
    netd_worker_t *w = ctx;
    atomic_fetch_add(&w->upstream_failed, 1);
    netd_conn_t *cc = nd_socket_data(client);
    if (cc)
        netd_obs_end(cc, NETD_END_UPSTREAM);
    netd_log_limited(NETD_LOG_WARN, "upstream", "server %s: proxy upstream: %s",
                     cc ? netd_server_label(cc->server) : "?", err ? err->message : "failed");
}

static void upstream_opened(void *ctx, nd_socket_t *client, nd_socket_t *upstream)
{
    netd_worker_t *w = ctx;
    netd_conn_t *cc = nd_socket_data(client);
    if (!cc)
        return;
    netd_conn_t *uc = conn_new(w, upstream, cc->server, NETD_ROLE_UPSTREAM);
    if (!uc)
        return;
    /* The server's socket options apply to both legs of a proxied connection: with Nagle
     * on the upstream leg, small requests would wait for the upstream's ACKs. */
    const netd_listen_spec_t *sp = &cc->server->spec;
    if (sp->no_delay)
        nd_socket_set_no_delay(upstream, 1);
    if (sp->keep_alive_ms >= 0)
        nd_socket_set_keep_alive(upstream, 1, (unsigned)sp->keep_alive_ms);
    uc->pair = cc;
    cc->pair = uc;
    attach(uc);
}

static netd_handler_env_t env_of(netd_worker_t *w)
{
    return (netd_handler_env_t){.upstream_failed = upstream_failed,
                                .upstream_opened = upstream_opened,
                                .ctx = w};
}

/* ------------------------------------------------------------------ accept side */

static void watch_connection(netd_conn_t *c)
{
    netd_event_t *e = conn_event(c, NETD_EV_CONNECTION);
    if (e)
        netd_event_post(e);
}

static void on_connection(void *ws, const nd_event_t *ev, void *arg)
{
    netd_server_t *srv = arg;
    netd_worker_t *w = worker_of(srv->d, ws);
    nd_socket_t *sock = ev->socket;
    if (doomed(w, srv)) {
        nd_socket_destroy(sock);
        return;
    }
    netd_conn_t *c = conn_new(w, sock, srv, NETD_ROLE_CLIENT);
    if (!c) {
        nd_socket_destroy(sock);
        return;
    }
    const netd_listen_spec_t *sp = &srv->spec;
    if (sp->no_delay)
        nd_socket_set_no_delay(sock, 1);
    if (sp->keep_alive_ms >= 0)
        nd_socket_set_keep_alive(sock, 1, (unsigned)sp->keep_alive_ms);
    attach(c);
    if (netd_log_level >= NETD_LOG_TRACE) {
        const char *peer = nd_socket_remote_address(sock);
        netd_log(NETD_LOG_TRACE, "server %s: connection %llu from %s:%d handed to thread %d",
                 netd_server_label(srv), (unsigned long long)c->id, peer ? peer : "(unix)",
                 nd_socket_remote_port(sock), w->index);
    }
    watch_connection(c);
    netd_handler_env_t env = env_of(w);
    netd_handler_connection(&sp->handler, sock, &env);
}

void netd_worker_server_init(nd_server_t *ws, int index, void *arg)
{
    netd_server_t *srv = arg;
    srv->members[index] = ws; /* this worker's slot, read only on this worker */
    nd_server_on(ws, ND_EV_CONNECTION, on_connection, arg);
    netd_server_release(srv); /* the reference netd_server_open took for this init */
}

void netd_worker_adopted(netd_worker_t *w, netd_conn_t *c)
{
    netd_conn_t *both[2] = {c, c->pair};
    for (int i = 0; i < 2; i++)
        if (both[i])
            attach(both[i]);
    netd_conn_t *client = c->role == NETD_ROLE_CLIENT ? c : c->pair;
    if (client) {
        netd_handler_env_t env = env_of(w);
        netd_handler_adopt(&client->server->spec.handler, client->sock, &env);
    }
    /* Destroyed only now, with every listener back: its 'close' finds the records. */
    if (doomed(w, c->server))
        for (int i = 0; i < 2; i++)
            if (both[i])
                nd_socket_destroy(both[i]->sock);
}

void netd_conn_apply_timeout(netd_conn_t *c)
{
    nd_socket_off(c->sock, ND_EV_TIMEOUT, on_idle, c);
    unsigned t = atomic_load(&c->server->timeout_ms);
    nd_socket_set_timeout(c->sock, t, t ? on_idle : NULL, c);
}

netd_conn_t *netd_worker_find(netd_worker_t *w, uint64_t id)
{
    netd_conn_t *c;
    TAILQ_FOREACH(c, &w->conns, link)
        if (c->id == id)
            return c;
    return NULL;
}

/* ------------------------------------------------------------------ limits */

static void sweep(evutil_socket_t fd, short what, void *arg)
{
    netd_worker_t *w = arg;
    /* A pipe pauses its source at the high-water mark, so a stalled queue stops growing
     * there: past the lower of the two limits it counts as stalled. */
    size_t limit = atomic_load(&w->d->max_buffered_bytes);
    size_t hwm = atomic_load(&w->d->high_water_mark);
    if (hwm > 0 && hwm < limit)
        limit = hwm;
    unsigned stall_ms = atomic_load(&w->d->stall_ms);
    netd_conn_t *c, *next;
    for (c = TAILQ_FIRST(&w->conns); c; c = next) {
        next = TAILQ_NEXT(c, link);
        size_t queued = nd_socket_buffer_size(c->sock);
        /* A reader that takes nothing while its queue is at the limit. */
        if (queued > 0 && queued >= limit && nd_socket_idle_ms(c->sock) >= stall_ms) {
            atomic_fetch_add(&w->slow_destroyed, 1);
            netd_obs_end(c, NETD_END_SLOW);
            netd_log(NETD_LOG_WARN,
                     "socket %llu: %zu bytes queued, no progress for %u ms: destroyed",
                     (unsigned long long)c->id, queued, stall_ms);
            nd_socket_destroy(c->sock);
        }
    }
}

/* ------------------------------------------------------------------ threads */

static void worker_setup(nd_loop_t *loop, void *arg)
{
    netd_worker_t *w = arg;
    w->sweep_ev = event_new(nd_loop_base(loop), -1, EV_PERSIST, sweep, w);
    struct timeval tv = {1, 0};
    if (w->sweep_ev)
        event_add(w->sweep_ev, &tv);
}

int netd_workers_start(netd_t *d, int n)
{
    d->workers = calloc((size_t)n, sizeof(*d->workers));
    d->worker_loops = calloc((size_t)n, sizeof(nd_loop_t *)); // NOLINT(bugprone-sizeof-expression)
    if (!d->workers || !d->worker_loops)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        netd_worker_t *w = &d->workers[i];
        w->index = i;
        w->d = d;
        TAILQ_INIT(&w->conns);
        w->loop = nd_loop_new();
        if (!w->loop)
            return -ENOMEM;
        d->worker_loops[i] = w->loop;
        if (nd_loop_post(w->loop, worker_setup, w) != 0)
            return -ENOMEM;
        w->thread = nd_thread_start(w->loop);
        if (!w->thread)
            return -errno;
        d->nworkers = i + 1;
    }
    return 0;
}

static void worker_teardown(nd_loop_t *loop, void *arg)
{
    netd_worker_t *w = arg;
    if (w->sweep_ev) {
        event_free(w->sweep_ev);
        w->sweep_ev = NULL;
    }
    /* Whatever is still open at exit is cut (the drain deadline passed), and whatever
     * arrives later (a move or a handoff in flight) is cut on arrival. */
    w->cut = true;
    netd_conn_t *c, *next;
    for (c = TAILQ_FIRST(&w->conns); c; c = next) {
        next = TAILQ_NEXT(c, link);
        netd_obs_end(c, NETD_END_DESTROY);
        nd_socket_destroy(c->sock);
    }
}

void netd_workers_cut(netd_t *d)
{
    for (int i = 0; i < d->nworkers; i++)
        if (!d->workers[i].cut) /* read on main: only an optimisation, set on the worker */
            nd_loop_post(d->workers[i].loop, worker_teardown, &d->workers[i]);
}

void netd_workers_stop(netd_t *d)
{
    for (int i = 0; i < d->nworkers; i++)
        nd_loop_post(d->workers[i].loop, worker_teardown, &d->workers[i]);
    for (int i = 0; i < d->nworkers; i++) {
        nd_thread_wait(d->workers[i].thread); /* the loop stays: netd_workers_free */
        d->workers[i].thread = NULL;
    }
}

void netd_workers_free(netd_t *d)
{
    for (int i = 0; i < d->nworkers; i++) {
        nd_loop_free(d->workers[i].loop);
        d->workers[i].loop = NULL;
    }
    free(d->workers);
    free(d->worker_loops);
    d->workers = NULL;
    d->worker_loops = NULL;
    d->nworkers = 0;
}

/* ------------------------------------------------------------------ fan-out */

typedef struct fanout fanout_t;

typedef struct fanout_part {
    nd_msg_t msg; /* main -> worker, then back */
    fanout_t *f;
    int index;
} fanout_part_t;

struct fanout {
    netd_t *d;
    netd_fanout_fn fn;
    netd_fanout_done done;
    void *ctx;
    int remaining; /* main loop only */
    fanout_part_t parts[];
};

static void fanout_back(nd_loop_t *loop, void *arg)
{
    fanout_part_t *p = arg;
    fanout_t *f = p->f;
    if (--f->remaining > 0)
        return;
    f->d->fanouts_open--;
    f->done(f->d, f->ctx);
    free(f);
}

static void fanout_run(nd_loop_t *loop, void *arg)
{
    fanout_part_t *p = arg;
    fanout_t *f = p->f;
    f->fn(&f->d->workers[p->index], f->ctx);
    nd_loop_post_msg(f->d->loop, &p->msg, fanout_back, p, NULL);
}

/* A worker loop freed with the part still queued (exit): the answer will never come. */
static void fanout_dropped(void *arg)
{
    fanout_part_t *p = arg;
    if (--p->f->remaining == 0)
        free(p->f); /* the main loop has stopped: nobody waits for done */
}

int netd_fanout(netd_t *d, netd_fanout_fn fn, netd_fanout_done done, void *ctx)
{
    fanout_t *f = calloc(1, sizeof(*f) + (size_t)d->nworkers * sizeof(fanout_part_t));
    if (!f)
        return -ENOMEM;
    f->d = d;
    f->fn = fn;
    f->done = done;
    f->ctx = ctx;
    f->remaining = d->nworkers;
    d->fanouts_open++;
    for (int i = 0; i < d->nworkers; i++) {
        f->parts[i].f = f;
        f->parts[i].index = i;
        nd_loop_post_msg(d->workers[i].loop, &f->parts[i].msg, fanout_run, &f->parts[i],
                         fanout_dropped);
    }
    return 0; // NOLINT(clang-analyzer-unix.Malloc): the posted parts own f now
}

/* ------------------------------------------------------------------ describing */

static const char *state_of(const nd_socket_t *s)
{
    if (nd_socket_destroyed(s))
        return "closing";
    int r = nd_socket_readable(s), wr = nd_socket_writable(s);
    if (r && wr)
        return "open";
    if (r)
        return "readOnly";
    if (wr)
        return "writeOnly";
    return "closing";
}

void netd_sockinfo_of(const netd_conn_t *c, netd_sockinfo_t *out)
{
    const nd_socket_t *s = c->sock;
    memset(out, 0, sizeof(*out));
    out->id = c->id;
    out->server = c->server->id;
    snprintf(out->server_name, sizeof(out->server_name), "%s", netd_server_label(c->server));
    out->thread = c->worker->index;
    out->role = c->role;
    out->state = state_of(s);
    const char *ra = nd_socket_remote_address(s), *la = nd_socket_local_address(s);
    const char *rf = nd_socket_remote_family(s);
    if (ra) {
        snprintf(out->remote_address, sizeof(out->remote_address), "%s", ra);
        out->remote_port = nd_socket_remote_port(s);
        out->remote_family = rf && strcmp(rf, "IPv6") == 0 ? 6 : 4;
    }
    if (la) {
        snprintf(out->local_address, sizeof(out->local_address), "%s", la);
        out->local_port = nd_socket_local_port(s);
    }
    out->bytes_read = nd_socket_bytes_read(s);
    out->bytes_written = nd_socket_bytes_written(s);
    out->buffer_size = nd_socket_buffer_size(s);
    out->created_ms = c->created_ms;
    out->age_ms = netd_now_ms() - c->created_ms;
    out->idle_ms = nd_socket_idle_ms(s);
    if (out->idle_ms > out->age_ms)
        out->idle_ms = out->age_ms; /* two clocks: the loop's cached one and ours */
}

json_t *netd_sockinfo_json(const netd_sockinfo_t *i)
{
    bool ip = i->remote_address[0] != '\0';
    bool lip = i->local_address[0] != '\0';
    return json_pack(
        "{s:I, s:I, s:s, s:i, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:I, s:s, s:s}", "id",
        (json_int_t)i->id, "server", (json_int_t)i->server, "serverName", i->server_name, "thread",
        i->thread, "remoteAddress", ip ? json_string(i->remote_address) : json_null(), "remotePort",
        ip ? json_integer(i->remote_port) : json_null(), "remoteFamily",
        ip ? json_string(nd_family_name(i->remote_family)) : json_null(), "localAddress",
        lip ? json_string(i->local_address) : json_null(), "localPort",
        lip ? json_integer(i->local_port) : json_null(), "bytesRead", (json_int_t)i->bytes_read,
        "bytesWritten", (json_int_t)i->bytes_written, "bufferSize", (json_int_t)i->buffer_size,
        "ageMs", (json_int_t)i->age_ms, "idleMs", (json_int_t)i->idle_ms, "state",
        i->moving ? "moving" : i->state, "role",
        i->role == NETD_ROLE_CLIENT ? "client" : "upstream");
}
