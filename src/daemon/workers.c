/* SPDX-License-Identifier: MIT */
/*
 * Worker threads: each owns a loop and the registry of the connections it serves, runs
 * the handlers, enforces per-connection limits, and answers fan-out queries.
 */
#include "config.h"

#include "daemon.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>

#include "handlers/handlers.h"

/* ------------------------------------------------------------------ registry */

static netd_conn_t *conn_new(netd_worker_t *w, nd_socket_t *sock, netd_server_t *srv,
                             enum netd_role role)
{
    netd_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->id = netd_next_id(w->d);
    c->sock = sock;
    c->server = srv;
    c->worker = w;
    c->role = role;
    c->created_ms = netd_now_ms();
    netd_server_retain(srv);
    TAILQ_INSERT_TAIL(&w->conns, c, link);
    nd_socket_set_data(sock, c); /* the daemon's slot: handlers leave it alone */
    return c;
}

static void on_conn_close(void *sock, const nd_event_t *ev, void *arg);
static void on_idle(void *sock, const nd_event_t *ev, void *arg);

/* Our own listeners on a socket: attached at accept and again after every move. */
static void attach(netd_conn_t *c)
{
    nd_socket_on(c->sock, ND_EV_CLOSE, on_conn_close, c);
    nd_socket_set_high_water_mark(c->sock, atomic_load(&c->worker->d->high_water_mark));
    if (c->role == NETD_ROLE_CLIENT) {
        unsigned t = atomic_load(&c->server->timeout_ms);
        if (t)
            nd_socket_set_timeout(c->sock, t, on_idle, c);
    }
}

static void on_conn_close(void *sock, const nd_event_t *ev, void *arg)
{
    netd_conn_t *c = arg;
    netd_server_t *srv = c->server;
    if (c->role == NETD_ROLE_CLIENT) {
        atomic_fetch_add(&srv->bytes_read_closed, nd_socket_bytes_read(sock));
        atomic_fetch_add(&srv->bytes_written_closed, nd_socket_bytes_written(sock));
        netd_watch_emit(c->worker->d, "close", srv->id, c->id,
                        json_pack("{s:b}", "hadError", ev->had_error));
    }
    if (c->pair)
        c->pair->pair = NULL;
    TAILQ_REMOVE(&c->worker->conns, c, link);
    netd_server_release(srv);
    free(c);
}

static void on_idle(void *sock, const nd_event_t *ev, void *arg)
{
    netd_conn_t *c = arg;
    atomic_fetch_add(&c->worker->idle_timeouts, 1);
    netd_log(NETD_LOG_DEBUG, "socket %llu idle for %u ms: destroyed",
             (unsigned long long)c->id, atomic_load(&c->server->timeout_ms));
    nd_socket_destroy(sock);
}

static netd_worker_t *worker_of(netd_t *d, nd_server_t *ws)
{
    return &d->workers[nd_server_worker_index(ws)];
}

/* ------------------------------------------------------------------ handler hooks */

static void upstream_failed(void *ctx, nd_socket_t *client, const nd_error_t *err)
{
    netd_worker_t *w = ctx;
    atomic_fetch_add(&w->upstream_failed, 1);
    netd_conn_t *cc = nd_socket_data(client);
    netd_log_limited(NETD_LOG_WARN, "upstream", "server %s: proxy upstream: %s",
                     cc ? cc->server->label : "?", err ? err->message : "failed");
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

static void on_connection(void *ws, const nd_event_t *ev, void *arg)
{
    netd_server_t *srv = arg;
    netd_worker_t *w = worker_of(srv->d, ws);
    nd_socket_t *sock = ev->socket;
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
                 srv->label, (unsigned long long)c->id, peer ? peer : "(unix)",
                 nd_socket_remote_port(sock), w->index);
    }
    netd_watch_emit(w->d, "connection", srv->id, c->id, NULL);
    netd_handler_env_t env = env_of(w);
    netd_handler_connection(&sp->handler, sock, &env);
}

void netd_worker_server_init(nd_server_t *ws, int index, void *arg)
{
    nd_server_on(ws, ND_EV_CONNECTION, on_connection, arg);
}

/* ------------------------------------------------------------------ moves */

typedef struct move_req {
    netd_t *d;
    netd_conn_t *conn; /* the client (or lone) record; its pair moves along */
    int from, thread;
    int err;
    json_t *result; /* the socket object, built on the target */
    void *rebalance; /* set when part of a rebalance: report there, not to a client */
    netd_client_t *client;
    json_t *id;
} move_req_t;

static void move_reply(nd_loop_t *loop, void *arg)
{
    move_req_t *m = arg;
    if (m->rebalance) {
        netd_rebalance_moved(m->d, m->rebalance, m->result != NULL);
        json_decref(m->result);
        free(m);
        return;
    }
    if (netd_client_alive(m->client)) {
        if (m->result)
            netd_reply_ok(m->client, m->id, json_pack("{s:O}", "socket", m->result));
        else if (m->err == ND_ECLOSED)
            netd_reply_error(m->client, m->id, NETD_ENOSOCKET, "socket closed before it moved");
        else
            netd_reply_error(m->client, m->id, nd_err_name(m->err), "%s", nd_strerror(m->err));
    }
    if (m->client)
        netd_client_done(m->client);
    json_decref(m->result);
    json_decref(m->id);
    free(m);
}

/* The records follow their sockets: out of the source's list when they leave, into the
 * target's when they arrive, each on its own thread. */
static void on_move(nd_socket_t *sock, nd_move_phase_t phase, int err, void *arg)
{
    move_req_t *m = arg;
    netd_conn_t *c = m->conn;
    netd_conn_t *both[2] = {c, phase == ND_MOVE_FAILED ? NULL : c->pair};
    if (phase == ND_MOVE_DETACHED) {
        for (int i = 0; i < 2; i++)
            if (both[i])
                TAILQ_REMOVE(&m->d->workers[m->from].conns, both[i], link);
        return;
    }
    if (phase == ND_MOVE_ADOPTED) {
        netd_worker_t *w = &m->d->workers[m->thread];
        for (int i = 0; i < 2; i++) {
            if (!both[i])
                continue;
            both[i]->worker = w;
            TAILQ_INSERT_TAIL(&w->conns, both[i], link);
            attach(both[i]);
        }
        netd_conn_t *client = c->role == NETD_ROLE_CLIENT ? c : c->pair;
        netd_log(NETD_LOG_DEBUG, "socket %llu moved from thread %d to thread %d",
                 (unsigned long long)c->id, m->from, m->thread);
        if (client) {
            netd_handler_env_t env = env_of(w);
            netd_handler_adopt(&client->server->spec.handler, client->sock, &env);
        }
        m->result = netd_conn_json(c);
    } else {
        m->err = err; /* c may be gone: never touch it here */
    }
    m->conn = NULL;
    nd_loop_post(m->d->loop, move_reply, m);
}

/*
 * On the owning thread: start moving a connection (and its proxy pair) to another
 * worker. Returns 0 (the reply follows) or a negative code.
 */
static int start_move(netd_worker_t *w, netd_conn_t *c, int thread, netd_client_t *client,
                      json_t *id, void *rebalance)
{
    if (c->role == NETD_ROLE_UPSTREAM && c->pair)
        c = c->pair; /* a pair moves from its client side */
    if (thread == w->index)
        return -EALREADY;
    move_req_t *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->d = w->d;
    m->conn = c;
    m->from = w->index;
    m->thread = thread;
    m->client = client;
    m->id = json_incref(id);
    m->rebalance = rebalance;
    int rc = nd_socket_move_notify(c->sock, w->d->workers[thread].loop, on_move, m);
    if (rc != 0) {
        json_decref(m->id);
        free(m);
    }
    return rc;
}

int netd_worker_move(netd_worker_t *w, netd_conn_t *c, int thread, netd_client_t *client,
                     json_t *id)
{
    return start_move(w, c, thread, client, id, NULL);
}

int netd_worker_move_rebalance(netd_worker_t *w, netd_conn_t *c, int thread, void *rebalance)
{
    return start_move(w, c, thread, NULL, NULL, rebalance);
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
    size_t max_buffered = atomic_load(&w->d->max_buffered_bytes);
    unsigned stall_ms = atomic_load(&w->d->stall_ms);
    netd_conn_t *c, *next;
    for (c = TAILQ_FIRST(&w->conns); c; c = next) {
        next = TAILQ_NEXT(c, link);
        /* A reader that takes nothing while its queue is past the hard limit. */
        if (nd_socket_buffer_size(c->sock) > max_buffered && nd_socket_idle_ms(c->sock) >= stall_ms) {
            atomic_fetch_add(&w->slow_destroyed, 1);
            netd_log(NETD_LOG_WARN, "socket %llu: %zu bytes queued, no progress for %u ms: destroyed",
                     (unsigned long long)c->id, nd_socket_buffer_size(c->sock), stall_ms);
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
        nd_loop_post(w->loop, worker_setup, w);
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
    /* Whatever is still open at exit is cut: the drain deadline passed. */
    netd_conn_t *c, *next;
    for (c = TAILQ_FIRST(&w->conns); c; c = next) {
        next = TAILQ_NEXT(c, link);
        nd_socket_destroy(c->sock);
    }
}

void netd_workers_cut(netd_t *d)
{
    for (int i = 0; i < d->nworkers; i++)
        nd_loop_post(d->workers[i].loop, worker_teardown, &d->workers[i]);
}

void netd_workers_stop(netd_t *d)
{
    netd_workers_cut(d);
    for (int i = 0; i < d->nworkers; i++) {
        nd_thread_join(d->workers[i].thread); /* frees the loop too */
        d->workers[i].thread = NULL;
        d->workers[i].loop = NULL;
    }
    free(d->workers);
    free(d->worker_loops);
    d->workers = NULL;
    d->worker_loops = NULL;
    d->nworkers = 0;
}

/* ------------------------------------------------------------------ fan-out */

typedef struct fanout {
    netd_t *d;
    netd_fanout_fn fn;
    netd_fanout_done done;
    void *arg;
    int remaining;
    json_t **results;
} fanout_t;

typedef struct fanout_part {
    fanout_t *f;
    int index;
} fanout_part_t;

static void fanout_back(nd_loop_t *loop, void *arg)
{
    fanout_part_t *p = arg;
    fanout_t *f = p->f;
    free(p);
    if (--f->remaining > 0)
        return;
    f->done(f->d, f->results, f->arg);
    for (int i = 0; i < f->d->nworkers; i++)
        json_decref(f->results[i]);
    free(f->results);
    free(f);
}

static void fanout_run(nd_loop_t *loop, void *arg)
{
    fanout_part_t *p = arg;
    fanout_t *f = p->f;
    f->results[p->index] = f->fn(&f->d->workers[p->index], f->arg);
    nd_loop_post(f->d->loop, fanout_back, p);
}

int netd_fanout(netd_t *d, netd_fanout_fn fn, netd_fanout_done done, void *arg)
{
    fanout_t *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    f->results = calloc((size_t)d->nworkers, sizeof(json_t *));
    if (!f->results) {
        free(f);
        return -ENOMEM;
    }
    f->d = d;
    f->fn = fn;
    f->done = done;
    f->arg = arg;
    f->remaining = d->nworkers;
    for (int i = 0; i < d->nworkers; i++) {
        fanout_part_t *p = malloc(sizeof(*p));
        if (p) {
            p->f = f;
            p->index = i;
        }
        if (!p || nd_loop_post(d->workers[i].loop, fanout_run, p) != 0) {
            /* Cannot happen short of OOM; answer with what the others give. */
            free(p);
            f->remaining--;
        }
    }
    if (f->remaining == 0) {
        done(d, f->results, arg);
        free(f->results);
        free(f);
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

json_t *netd_conn_json(const netd_conn_t *c)
{
    const nd_socket_t *s = c->sock;
    const char *ra = nd_socket_remote_address(s), *la = nd_socket_local_address(s);
    const char *rf = nd_socket_remote_family(s);
    uint64_t age = netd_now_ms() - c->created_ms;
    uint64_t idle = nd_socket_idle_ms(s);
    if (idle > age)
        idle = age; /* two clocks: the loop's cached one and ours */
    return json_pack("{s:I, s:I, s:i, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:I, s:s, s:s}",
                     "id", (json_int_t)c->id, "server", (json_int_t)c->server->id, "thread",
                     c->worker->index, "remoteAddress", ra ? json_string(ra) : json_null(),
                     "remotePort", ra ? json_integer(nd_socket_remote_port(s)) : json_null(),
                     "remoteFamily", rf ? json_string(rf) : json_null(), "localAddress",
                     la ? json_string(la) : json_null(), "localPort",
                     la ? json_integer(nd_socket_local_port(s)) : json_null(), "bytesRead",
                     (json_int_t)nd_socket_bytes_read(s), "bytesWritten",
                     (json_int_t)nd_socket_bytes_written(s), "bufferSize",
                     (json_int_t)nd_socket_buffer_size(s), "ageMs",
                     (json_int_t)age, "idleMs", (json_int_t)idle, "state", state_of(s), "role",
                     c->role == NETD_ROLE_CLIENT ? "client" : "upstream");
}
