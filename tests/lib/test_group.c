/* SPDX-License-Identifier: MIT */
/*
 * Server groups over worker threads (world.h): every connection served once whatever the
 * balance, exact group-wide accounting through closes, destroys and moves, maxConnections,
 * the connections property, EMFILE at accept, and bad group arguments.
 */
#include "config.h"

#include "world.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/* The 4-byte client ids, big-endian. */
static void put32(unsigned char *b, uint32_t v)
{
    b[0] = (unsigned char)(v >> 24);
    b[1] = (unsigned char)(v >> 16);
    b[2] = (unsigned char)(v >> 8);
    b[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static void noop_init(nd_server_t *ws, int index, void *arg) {}

/* ------------------------------------------------------------------------------------ */
/* Groups: every connection once, balancing                                             */
/* ------------------------------------------------------------------------------------ */

static const nd_balance_t balances[] = {ND_BALANCE_LEASTCONN, ND_BALANCE_ROUNDROBIN,
                                        ND_BALANCE_REUSEPORT};

static int big_n(void)
{
    return th_sanitized() ? 200 : 1000;
}

static struct {
    int n;
    atomic_int *seen; /* 'connection' events per client id */
    int echoed, gclosed;
    nd_server_stats_t stats;
} ONCE;

/* Worker: reads the client's 4-byte id, counts it, echoes it back. */
static void once_data(void *self, const nd_event_t *ev, void *arg)
{
    wconn_t *c = arg;

    WCHECK(c->hdrlen + ev->len <= 4, "more than the 4-byte id from a client");
    if (c->hdrlen + ev->len > 4)
        return;
    memcpy(c->hdr + c->hdrlen, ev->data, ev->len);
    c->hdrlen += ev->len;
    if (c->hdrlen < 4)
        return;
    c->id = (int)get32(c->hdr);
    WCHECK(c->id >= 0 && c->id < ONCE.n, "bad client id %d", c->id);
    if (c->id >= 0 && c->id < ONCE.n)
        atomic_fetch_add(&ONCE.seen[c->id], 1);
    int rc = nd_socket_write(c->sock, c->hdr, 4, NULL, NULL);
    WCHECK(rc >= 0, "echo write: %s", nd_err_name(rc));
}

static void once_conn(world_t *w, int widx, nd_socket_t *sock)
{
    wconn_t *c = keep_conn(w, widx, sock);

    nd_socket_on(sock, ND_EV_DATA, once_data, c);
}

static void once_cl_connect(client_t *c)
{
    unsigned char b[4];

    put32(b, (uint32_t)c->id);
    OCHECK(nd_socket_write(c->sock, b, 4, NULL, NULL) >= 0, "client write failed");
}

static void once_cl_data(client_t *c, const char *data, size_t len)
{
    OCHECK(c->rxlen + len <= 4, "client %d: more than its id echoed", c->id);
    memcpy(c->rx + c->rxlen, data, len);
    c->rxlen += len;
    if (c->rxlen == 4) {
        OCHECK(get32(c->rx) == (uint32_t)c->id, "client %d got id %u back", c->id, get32(c->rx));
        ONCE.echoed++;
        nd_socket_end(c->sock, NULL, 0);
    }
}

static void once_gclose(void *self, const nd_event_t *ev, void *arg)
{
    ONCE.gclosed++;
    nd_server_stats(self, &ONCE.stats);
    world_done(W);
}

static void once_cl_close(client_t *c)
{
    OCHECK(!c->had_error, "client %d closed with an error (%s)", c->id, c->err);
    if (CL.closed == CL.n)
        ck_assert_int_eq(nd_server_close(W->group, once_gclose, NULL), 0);
}

static void once_listening(void *self, const nd_event_t *ev, void *arg)
{
    int port = group_port(W);

    /* All at once: the acceptor, the mailboxes and the workers run concurrently. */
    for (int i = 0; i < CL.n; i++)
        client_start(&CL.v[i], port);
}

/* Every connection gets exactly one 'connection' event on one worker, whatever the policy;
 * with reuseport every worker accepts on its own listener and all are served. */
START_TEST(test_group_each_connection_once)
{
    world_t *w = world_new(4);

    ONCE.n = big_n();
    th_need_fds((rlim_t)ONCE.n * 2 + 200);
    ONCE.seen = calloc((size_t)ONCE.n, sizeof(atomic_int));
    clients_init(ONCE.n);
    CL.on_connect = once_cl_connect;
    CL.on_data = once_cl_data;
    CL.on_close = once_cl_close;
    w->h.conn = once_conn;
    group_start(w, balances[_i], once_listening);
    th_run(w->owner, 60000);
    int sum = 0;
    for (int i = 0; i < w->nw; i++)
        sum += atomic_load(&w->nconn[i]);
    ck_assert_int_eq(sum, ONCE.n);
    for (int i = 0; i < ONCE.n; i++)
        ck_assert_msg(atomic_load(&ONCE.seen[i]) == 1, "client %d: %d 'connection' events", i,
                      atomic_load(&ONCE.seen[i]));
    ck_assert_int_eq(ONCE.echoed, ONCE.n);
    ck_assert_int_eq(CL.closed, ONCE.n);
    ck_assert_int_eq(ONCE.gclosed, 1);
    ck_assert_uint_eq(ONCE.stats.accepted, (uint64_t)ONCE.n);
    ck_assert_uint_eq(ONCE.stats.connections, 0);
    ck_assert_uint_eq(ONCE.stats.rejected, 0);
    ck_assert_int_eq(atomic_load(&w->ninit), w->nw);
    world_end(w);
    free(ONCE.seen);
    free(CL.v);
}
END_TEST

static struct {
    nd_balance_t b;
    int n, got;
    int seq_bad;
    char first_bad[160];
    int gclosed;
} SEQ;

static void seq_got(msg_t *m)
{
    world_t *w = W;
    int k = SEQ.got++;
    int lo = INT32_MAX, hi = 0;

    for (int i = 0; i < w->nw; i++) {
        int v = atomic_load(&w->nconn[i]);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    if (SEQ.b == ND_BALANCE_ROUNDROBIN && m->widx != k % w->nw && SEQ.seq_bad++ == 0)
        snprintf(SEQ.first_bad, sizeof(SEQ.first_bad), "connection %d went to worker %d", k,
                 m->widx);
    if (SEQ.b == ND_BALANCE_LEASTCONN && hi - lo > 1 && SEQ.seq_bad++ == 0)
        snprintf(SEQ.first_bad, sizeof(SEQ.first_bad),
                 "after connection %d (to worker %d) counts range %d..%d", k, m->widx, lo, hi);
    if (SEQ.got < SEQ.n) {
        client_start(&CL.v[SEQ.got], w->port);
    } else {
        clients_destroy_all();
    }
}

static void seq_conn(world_t *w, int widx, nd_socket_t *sock)
{
    keep_conn(w, widx, sock);
    report_now(seq_got, 0, 0, NULL);
}

static void seq_cl_close(client_t *c)
{
    if (CL.closed == CL.n)
        group_close_done(W, &SEQ.gclosed);
}

static void seq_listening(void *self, const nd_event_t *ev, void *arg)
{
    client_start(&CL.v[0], group_port(W));
}

/* One connection at a time, each waiting for its 'connection': leastconn keeps the live
 * counts within one of each other at every step; roundrobin sends connection k to worker
 * k % 4, so each gets exactly a quarter. */
START_TEST(test_group_balance_sequential)
{
    world_t *w = world_new(4);

    SEQ.b = _i == 0 ? ND_BALANCE_LEASTCONN : ND_BALANCE_ROUNDROBIN;
    SEQ.n = big_n();
    th_need_fds((rlim_t)SEQ.n * 2 + 200);
    clients_init(SEQ.n);
    CL.on_close = seq_cl_close;
    w->h.conn = seq_conn;
    group_start(w, SEQ.b, seq_listening);
    th_run(w->owner, 60000);
    ck_assert_msg(SEQ.seq_bad == 0, "%s: %d bad steps; first: %s", nd_balance_name(SEQ.b),
                  SEQ.seq_bad, SEQ.first_bad);
    ck_assert_int_eq(SEQ.got, SEQ.n);
    for (int i = 0; i < w->nw; i++)
        ck_assert_int_eq(atomic_load(&w->nconn[i]), SEQ.n / w->nw);
    ck_assert_int_eq(SEQ.gclosed, 1);
    world_end(w);
    free(CL.v);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* getConnections, exact through connects, closes, destroys and moves                   */
/* ------------------------------------------------------------------------------------ */

enum { GC_CONNECT, GC_CLIENT_CLOSE, GC_SERVER_DESTROY, GC_MOVE, GC_ALL_CLOSE, GC_CLOSE };
static const char *const gc_phase_names[] = {"connect", "client-close", "server-destroy",
                                             "move",    "all-close",    "close"};

static struct {
    int n, nclose, ndestroy, nmove;
    int phase, checking;
    int conns, sclosed, adopted;
    int expect, replies, ask;
    int destroy_left, destroy_asked;
    int move_left, move_asked, inflight;
    int gclosed;
} GC;

static void gc_next_phase(void);
static void gc_destroyed(msg_t *m);
static void gc_moved(msg_t *m);
static void gc_adopt_rep(msg_t *m);

static void gc_reply(void)
{
    if (++GC.replies == 2)
        gc_next_phase();
}

static void gc_owner_count(nd_server_t *server, int err, int count, void *arg)
{
    ck_assert_int_eq(err, 0);
    ck_assert_msg(count == GC.expect, "after %s: getConnections on the owner gave %d, not %d",
                  gc_phase_names[GC.phase], count, GC.expect);
    gc_reply();
}

static void gc_worker_count_rep(msg_t *m)
{
    ck_assert_int_eq(m->b, 0);
    ck_assert_msg(m->a == GC.expect, "after %s: getConnections on worker %d gave %ld, not %d",
                  gc_phase_names[GC.phase], m->widx, m->a, GC.expect);
    gc_reply();
}

static void gc_inflight_rep(msg_t *m)
{
    ck_assert_int_eq(m->b, 0);
    ck_assert_msg(m->a == GC.expect,
                  "with moves in flight: getConnections on worker %d gave %ld, not %d", m->widx,
                  m->a, GC.expect);
    GC.inflight++;
}

/* Worker: getConnections on its own worker-side server; a says which reply it is. */
static void gc_wcount_cb(nd_server_t *server, int err, int count, void *arg)
{
    WCHECK(tl_worker >= 0, "getConnections called back off the worker's thread");
    report_now((intptr_t)arg ? gc_inflight_rep : gc_worker_count_rep, count, err, NULL);
}

static void gc_wask(msg_t *m)
{
    int rc = nd_server_get_connections(W->wsrv[tl_worker], gc_wcount_cb, (void *)(intptr_t)m->a);

    WCHECK(rc == 0, "getConnections on worker %d: %s", tl_worker, nd_err_name(rc));
}

static void gc_check(int expect)
{
    world_t *w = W;
    nd_server_stats_t st;

    GC.checking = 1;
    GC.expect = expect;
    GC.replies = 0;
    nd_server_stats(w->group, &st);
    ck_assert_msg(st.connections == (uint64_t)expect, "after %s: stats.connections %lu, not %d",
                  gc_phase_names[GC.phase], (unsigned long)st.connections, expect);
    ck_assert_int_eq(nd_server_get_connections(w->group, gc_owner_count, NULL), 0);
    post_msg(w->wl[GC.ask++ % w->nw], gc_wask, 0, 0, 0, NULL);
}

static void gc_wdestroy(msg_t *m)
{
    wlist_t *l = &W->list[tl_worker];
    long d = 0;

    while (d < m->a && l->n > 0) {
        wconn_t *c = l->v[l->n - 1];
        list_remove(l, c);
        nd_socket_destroy(c->sock);
        d++;
    }
    report_now(gc_destroyed, d, 0, NULL);
}

static void gc_adopted(nd_socket_t *sock, void *arg)
{
    wconn_t *c = arg;

    wconn_adopted(c, sock);
    report_now(gc_adopt_rep, 0, 0, NULL);
}

/* Worker: moves up to a sockets to the next worker, then asks getConnections while they
 * are in flight. */
static void gc_wmove(msg_t *m)
{
    wlist_t *l = &W->list[tl_worker];
    int to = (tl_worker + 1) % W->nw;
    long d = 0;

    while (d < m->a && l->n > 0) {
        wconn_t *c = l->v[l->n - 1];
        list_remove(l, c);
        c->target = to;
        c->moving = 1;
        int rc = nd_socket_move(c->sock, W->wl[to], gc_adopted, c);
        WCHECK(rc == 0, "nd_socket_move: %s", nd_err_name(rc));
        d++;
    }
    report_now(gc_moved, d, 0, NULL);
    int rc = nd_server_get_connections(W->wsrv[tl_worker], gc_wcount_cb, (void *)1);
    WCHECK(rc == 0, "getConnections on worker %d: %s", tl_worker, nd_err_name(rc));
}

static void gc_progress(void)
{
    int want_closed = -1;

    if (GC.checking)
        return;
    switch (GC.phase) {
    case GC_CONNECT:
        if (GC.conns == GC.n)
            gc_check(GC.n);
        return;
    case GC_CLIENT_CLOSE:
        want_closed = GC.nclose;
        break;
    case GC_SERVER_DESTROY:
        if (GC.destroy_left > 0)
            return;
        want_closed = GC.nclose + GC.ndestroy;
        break;
    case GC_MOVE:
        if (GC.move_left == 0 && GC.adopted == GC.nmove && GC.inflight == GC.move_asked)
            gc_check(GC.n - GC.nclose - GC.ndestroy);
        return;
    case GC_ALL_CLOSE:
        want_closed = GC.n;
        break;
    default:
        return;
    }
    ck_assert_int_le(GC.sclosed, want_closed);
    if (GC.sclosed == want_closed)
        gc_check(GC.n - GC.sclosed);
}

static void gc_destroyed(msg_t *m)
{
    GC.destroy_left -= (int)m->a;
    if (GC.destroy_left > 0) {
        ck_assert_msg(GC.destroy_asked < W->nw, "the workers hold fewer than %d sockets",
                      GC.ndestroy);
        post_msg(W->wl[GC.destroy_asked++], gc_wdestroy, 0, GC.destroy_left, 0, NULL);
    }
    gc_progress();
}

static void gc_moved(msg_t *m)
{
    GC.move_left -= (int)m->a;
    if (GC.move_left > 0) {
        ck_assert_msg(GC.move_asked < W->nw, "the workers hold fewer than %d sockets", GC.nmove);
        /* At most a quarter from each worker, so every worker sends and receives. */
        int k = GC.move_left < GC.nmove / W->nw ? GC.move_left : GC.nmove / W->nw;
        if (GC.move_asked == W->nw - 1)
            k = GC.move_left;
        post_msg(W->wl[GC.move_asked++], gc_wmove, 0, k, 0, NULL);
    }
    gc_progress();
}

static void gc_adopt_rep(msg_t *m)
{
    GC.adopted++;
    gc_progress();
}

static void gc_sclosed(msg_t *m)
{
    GC.sclosed++;
    gc_progress();
}

static void gc_conn_rep(msg_t *m)
{
    GC.conns++;
    gc_progress();
}

static void gc_gclose(void *self, const nd_event_t *ev, void *arg)
{
    GC.gclosed++;
    if (CL.closed == CL.n)
        world_done(W);
}

static void gc_cl_close(client_t *c)
{
    if (GC.gclosed && CL.closed == CL.n)
        world_done(W);
}

static void gc_next_phase(void)
{
    GC.checking = 0;
    GC.phase++;
    switch (GC.phase) {
    case GC_CLIENT_CLOSE:
        /* Spread over the clients, so every worker loses some. */
        for (int i = 0, k = 0; i < CL.n && k < GC.nclose; i++)
            if (i % 10 < 3 && CL.v[i].sock) {
                nd_socket_destroy(CL.v[i].sock);
                k++;
            }
        break;
    case GC_SERVER_DESTROY:
        GC.destroy_left = GC.ndestroy;
        GC.destroy_asked = 1;
        post_msg(W->wl[0], gc_wdestroy, 0, GC.destroy_left, 0, NULL);
        break;
    case GC_MOVE:
        GC.move_left = GC.nmove;
        GC.move_asked = 1;
        post_msg(W->wl[0], gc_wmove, 0, GC.nmove / W->nw, 0, NULL);
        break;
    case GC_ALL_CLOSE:
        clients_destroy_all();
        break;
    case GC_CLOSE:
        ck_assert_int_eq(nd_server_close(W->group, gc_gclose, NULL), 0);
        return;
    }
    gc_progress();
}

static void gc_conn(world_t *w, int widx, nd_socket_t *sock)
{
    keep_conn(w, widx, sock);
    report_now(gc_conn_rep, 0, 0, NULL);
}

static void gc_listening(void *self, const nd_event_t *ev, void *arg)
{
    int port = group_port(W);

    for (int i = 0; i < CL.n; i++)
        client_start(&CL.v[i], port);
}

/* getConnections, on the owner and on a worker-side server, is exact after 1000 connects,
 * 300 closes from clients, 200 destroys on the workers, and 100 moves between workers
 * (also while those moves are in flight). */
START_TEST(test_group_get_connections_exact)
{
    world_t *w = world_new(4);

    GC.n = big_n();
    GC.nclose = GC.n * 3 / 10;
    GC.ndestroy = GC.n / 5;
    GC.nmove = GC.n / 10;
    th_need_fds((rlim_t)GC.n * 2 + 200);
    clients_init(GC.n);
    CL.on_close = gc_cl_close;
    w->h.conn = gc_conn;
    w->h.sclosed = gc_sclosed;
    group_start(w, ND_BALANCE_LEASTCONN, gc_listening);
    th_run(w->owner, 60000);
    ck_assert_int_eq(GC.phase, GC_CLOSE);
    ck_assert_int_eq(GC.gclosed, 1);
    ck_assert_int_eq(GC.sclosed, GC.n);
    ck_assert_int_eq(GC.adopted, GC.nmove);
    int adopts = 0;
    for (int i = 0; i < w->nw; i++)
        adopts += atomic_load(&w->nadopt_ev[i]);
    ck_assert_int_eq(adopts, GC.nmove);
    world_end(w);
    free(CL.v);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* maxConnections over the group, and close waiting for every worker                    */
/* ------------------------------------------------------------------------------------ */

#define MC_MAX 50
#define MC_CLIENTS 200

static struct {
    int ok, rejected, settled;
    int sclosed, pongs;
    int kept; /* the one client left open */
    int last_destroyed, gclosed, gclosed_early;
    nd_server_stats_t stats;
    int count_reply;
} MC;

static void mc_conn(world_t *w, int widx, nd_socket_t *sock)
{
    keep_conn(w, widx, sock);
    int rc = nd_socket_write(sock, "ok", 2, NULL, NULL);
    WCHECK(rc >= 0, "write: %s", nd_err_name(rc));
}

static void mc_maybe_done(void)
{
    if (CL.closed == CL.n && MC.gclosed && MC.sclosed == MC_MAX)
        world_done(W);
}

static void mc_gclose(void *self, const nd_event_t *ev, void *arg)
{
    MC.gclosed++;
    if (!MC.last_destroyed)
        MC.gclosed_early++;
    mc_maybe_done();
}

static void mc_pong(msg_t *m)
{
    if (++MC.pongs < W->nw)
        return;
    /* Every worker has handled its closes and answered: 'close' must still wait. */
    ck_assert_msg(MC.gclosed == 0, "'close' fired while a worker still holds a connection");
    MC.last_destroyed = 1;
    nd_socket_destroy(CL.v[MC.kept].sock);
}

static void mc_ping(msg_t *m)
{
    report_now(mc_pong, 0, 0, NULL);
}

static void mc_sclosed(msg_t *m)
{
    MC.sclosed++;
    if (MC.sclosed == MC_MAX - 1) {
        for (int i = 0; i < W->nw; i++)
            post_msg(W->wl[i], mc_ping, i, 0, 0, NULL);
    } else if (MC.sclosed == MC_MAX) {
        ck_assert_int_eq(MC.last_destroyed, 1);
    }
    mc_maybe_done();
}

static void mc_count(nd_server_t *server, int err, int count, void *arg)
{
    ck_assert_int_eq(err, 0);
    ck_assert_int_eq(count, MC_MAX);
    MC.count_reply++;
    /* Close with one connection kept: all but one client go. */
    ck_assert_int_eq(nd_server_close(W->group, mc_gclose, NULL), 0);
    MC.kept = -1;
    for (int i = 0; i < CL.n; i++) {
        client_t *c = &CL.v[i];
        if (!c->ok)
            continue;
        if (MC.kept < 0)
            MC.kept = i;
        else
            nd_socket_destroy(c->sock);
    }
}

static void mc_settle(void)
{
    if (MC.settled || MC.ok + MC.rejected < MC_CLIENTS)
        return;
    MC.settled = 1;
    ck_assert_int_eq(MC.ok, MC_MAX);
    ck_assert_int_eq(MC.rejected, MC_CLIENTS - MC_MAX);
    nd_server_stats(W->group, &MC.stats);
    ck_assert_int_eq(nd_server_get_connections(W->group, mc_count, NULL), 0);
}

static void mc_cl_data(client_t *c, const char *data, size_t len)
{
    OCHECK(c->rxlen + len <= 2, "client %d: more than \"ok\"", c->id);
    memcpy(c->rx + c->rxlen, data, len);
    c->rxlen += len;
    if (c->rxlen == 2) {
        OCHECK(memcmp(c->rx, "ok", 2) == 0, "client %d got something else than ok", c->id);
        c->ok = 1;
        MC.ok++;
        mc_settle();
    }
}

static void mc_cl_close(client_t *c)
{
    if (!MC.settled) {
        /* Closed at once by the limit: no data, and EOF or a reset. */
        ck_assert_msg(c->rxlen == 0, "a rejected client got %zu bytes", c->rxlen);
        ck_assert_msg(c->errors == 0 || strcmp(c->err, "ECONNRESET") == 0,
                      "a rejected client got %s", c->err);
        MC.rejected++;
        mc_settle();
    }
    mc_maybe_done();
}

static void mc_listening(void *self, const nd_event_t *ev, void *arg)
{
    int port = group_port(W);

    for (int i = 0; i < CL.n; i++)
        client_start(&CL.v[i], port);
}

/* 200 clients at once against maxConnections 50 on a group of four: exactly 50
 * 'connection' events, 150 closed at once without data. Then close waits for the last
 * connection, held by one worker, and fires once it closes. */
START_TEST(test_group_max_connections)
{
    world_t *w = world_new(4);

    clients_init(MC_CLIENTS);
    CL.on_data = mc_cl_data;
    CL.on_close = mc_cl_close;
    w->h.conn = mc_conn;
    w->h.sclosed = mc_sclosed;
    group_start(w, ND_BALANCE_LEASTCONN, mc_listening);
    nd_server_set_max_connections(w->group, MC_MAX);
    ck_assert_int_eq(nd_server_max_connections(w->group), MC_MAX);
    th_run(w->owner, 30000);
    int sum = 0;
    for (int i = 0; i < w->nw; i++)
        sum += atomic_load(&w->nconn[i]);
    ck_assert_int_eq(sum, MC_MAX);
    ck_assert_uint_eq(MC.stats.accepted, MC_MAX);
    ck_assert_uint_eq(MC.stats.rejected, MC_CLIENTS - MC_MAX);
    ck_assert_uint_eq(MC.stats.connections, MC_MAX);
    ck_assert_int_eq(MC.count_reply, 1);
    ck_assert_int_eq(MC.sclosed, MC_MAX);
    ck_assert_int_eq(MC.gclosed, 1);
    ck_assert_int_eq(MC.gclosed_early, 0);
    ck_assert_int_eq(CL.closed, MC_CLIENTS);
    world_end(w);
    free(CL.v);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* The connections property                                                             */
/* ------------------------------------------------------------------------------------ */

static struct {
    int before, after_handoff, after_close, gclosed, sclosed;
} CP;

static void cp_gclose(void *self, const nd_event_t *ev, void *arg)
{
    CP.gclosed++;
    CP.after_close = nd_server_connections(self);
    world_done(W);
}

static void cp_sclosed(msg_t *m)
{
    CP.sclosed++;
    ck_assert_int_eq(nd_server_close(W->group, cp_gclose, NULL), 0);
}

static void cp_got(msg_t *m)
{
    CP.after_handoff = nd_server_connections(W->group);
    clients_destroy_all();
}

static void cp_conn(world_t *w, int widx, nd_socket_t *sock)
{
    keep_conn(w, widx, sock);
    report_now(cp_got, 0, 0, NULL);
}

static void cp_listening(void *self, const nd_event_t *ev, void *arg)
{
    CP.before = nd_server_connections(self);
    client_start(&CL.v[0], group_port(W));
}

/* Node's server.connections turns null once a socket went to another process: here -1 on
 * the owner as soon as one connection was handed to a worker, and it stays -1. */
START_TEST(test_group_connections_property)
{
    world_t *w = world_new(2);

    clients_init(1);
    w->h.conn = cp_conn;
    w->h.sclosed = cp_sclosed;
    group_start(w, ND_BALANCE_LEASTCONN, cp_listening);
    th_run(w->owner, 10000);
    ck_assert_int_eq(CP.before, 0);
    ck_assert_int_eq(CP.after_handoff, -1);
    ck_assert_int_eq(CP.after_close, -1);
    ck_assert_int_eq(CP.sclosed, 1);
    ck_assert_int_eq(CP.gclosed, 1);
    world_end(w);
    free(CL.v);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* EMFILE at accept                                                                     */
/* ------------------------------------------------------------------------------------ */

#define EM_CLIENTS 100
#define EM_SPARE_FDS 40

static struct {
    int fds[EM_CLIENTS];
    int port;
    struct rlimit saved;
    int lowered;
    sem_t go;
    pthread_t th;
    int th_started;
    atomic_int connected, served, failed;
    int paused_seen;
    double t0, c0, wall, cpu;
    uint64_t accepted_at_pause;
    int clients_done, sclosed, gclosed;
    nd_server_stats_t end_stats;
} EM;

static void em_gclose(void *self, const nd_event_t *ev, void *arg)
{
    EM.gclosed++;
    nd_server_stats(self, &EM.end_stats);
    world_done(W);
}

static void em_maybe_done(void)
{
    if (EM.clients_done && EM.sclosed == EM_CLIENTS)
        ck_assert_int_eq(nd_server_close(W->group, em_gclose, NULL), 0);
}

static void em_clients_done(msg_t *m)
{
    EM.clients_done = 1;
    em_maybe_done();
}

static void em_sclosed(msg_t *m)
{
    EM.sclosed++;
    em_maybe_done();
}

static void *em_clients(void *arg)
{
    struct sockaddr_in sin;

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)EM.port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* The sockets exist already: connecting needs no descriptor, accepting does. */
    for (int i = 0; i < EM_CLIENTS; i++) {
        if (connect(EM.fds[i], (struct sockaddr *)&sin, sizeof(sin)) != 0)
            atomic_fetch_add(&EM.failed, 1);
        else
            atomic_fetch_add(&EM.connected, 1);
    }
    sem_wait(&EM.go);
    /*
     * Each close frees a descriptor on the server side, which must start accepting again.
     * Served in whatever order replies come, not by index: with reuseport each worker has
     * its own queue, and a client waiting in one queue while the other worker takes every
     * freed descriptor for later clients (all held until read) would wait for good.
     */
    struct pollfd pfd[EM_CLIENTS];
    int of[EM_CLIENTS]; /* pfd[k] is client of[k] */
    size_t got[EM_CLIENTS];
    char buf[EM_CLIENTS][2];
    int left = EM_CLIENTS, idle_ms = 0;
    memset(got, 0, sizeof(got));
    while (left > 0 && idle_ms < 20000) {
        int n = 0;
        for (int i = 0; i < EM_CLIENTS; i++) {
            if (EM.fds[i] >= 0) {
                of[n] = i;
                pfd[n++] = (struct pollfd){.fd = EM.fds[i], .events = POLLIN};
            }
        }
        int ready = poll(pfd, (nfds_t)n, 100);
        idle_ms = ready > 0 ? 0 : idle_ms + 100;
        for (int k = 0; k < n && ready > 0; k++) {
            int i = of[k];
            if (!pfd[k].revents)
                continue;
            ssize_t r = recv(EM.fds[i], buf[i] + got[i], 2 - got[i], MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r > 0 && (got[i] += (size_t)r) < 2)
                continue;
            if (got[i] == 2 && memcmp(buf[i], "ok", 2) == 0)
                atomic_fetch_add(&EM.served, 1);
            else
                atomic_fetch_add(&EM.failed, 1);
            close(EM.fds[i]);
            EM.fds[i] = -1;
            left--;
        }
    }
    for (int i = 0; i < EM_CLIENTS; i++) {
        if (EM.fds[i] >= 0) {
            atomic_fetch_add(&EM.failed, 1); /* never answered within 20 s */
            close(EM.fds[i]);
            EM.fds[i] = -1;
        }
    }
    post_msg(W->owner, em_clients_done, -1, 0, 0, NULL);
    return NULL;
}

static void em_window_end(void *arg)
{
    EM.wall = th_now_ms() - EM.t0;
    EM.cpu = th_cpu_ms() - EM.c0;
    sem_post(&EM.go);
}

static void em_poll(void *arg)
{
    nd_server_stats_t st;

    nd_server_stats(W->group, &st);
    if (st.accept_paused >= 1 &&
        atomic_load(&EM.connected) + atomic_load(&EM.failed) == EM_CLIENTS) {
        /* Paused, every client waiting: from here on nothing should burn CPU. */
        EM.paused_seen = 1;
        EM.accepted_at_pause = st.accepted;
        EM.t0 = th_now_ms();
        EM.c0 = th_cpu_ms();
        th_timer(W->owner, 1000, em_window_end, NULL);
        return;
    }
    th_timer(W->owner, 5, em_poll, NULL);
}

/*
 * The descriptor limit that leaves exactly `spare` numbers free: new descriptors take the
 * lowest free number, so holes below an inherited high descriptor count too.
 */
static rlim_t limit_leaving(int spare)
{
    static unsigned char open_fd[65536];
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;

    ck_assert_ptr_nonnull(d);
    memset(open_fd, 0, sizeof(open_fd));
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd >= 0 && fd < (int)sizeof(open_fd))
            open_fd[fd] = 1;
    }
    /* The directory's own descriptor is free again after this. */
    open_fd[dirfd(d)] = 0;
    closedir(d);
    int fd = 0;
    for (int freed = 0; freed < spare; fd++)
        if (!open_fd[fd])
            freed++;
    return (rlim_t)fd;
}

static void em_listening(void *self, const nd_event_t *ev, void *arg)
{
    struct rlimit rl;

    EM.port = group_port(W);
    for (int i = 0; i < EM_CLIENTS; i++) {
        EM.fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(EM.fds[i], 0);
    }
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &EM.saved), 0);
    rl = EM.saved;
    rl.rlim_cur = limit_leaving(EM_SPARE_FDS);
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    EM.lowered = 1;
    ck_assert_int_eq(pthread_create(&EM.th, NULL, em_clients, NULL), 0);
    EM.th_started = 1;
    th_timer(W->owner, 5, em_poll, NULL);
}

static void em_conn(world_t *w, int widx, nd_socket_t *sock)
{
    keep_conn(w, widx, sock);
    int rc = nd_socket_write(sock, "ok", 2, NULL, NULL);
    WCHECK(rc >= 0, "write: %s", nd_err_name(rc));
}

/* Out of descriptors, the acceptor pauses (counted), does not spin while paused, and
 * accepts again once connections close: every client is served in the end. Whoever
 * accepts: the owner (resumed by the owner's check), the first worker (worker_accepts) or
 * every worker (reuseport), both resumed by the member's resume request. */
static void em_run(nd_balance_t balance, int worker_accepts)
{
    world_t *w = world_new(2);

    sem_init(&EM.go, 0, 0);
    w->h.conn = em_conn;
    w->h.sclosed = em_sclosed;
    w->opts.worker_accepts = worker_accepts;
    group_start(w, balance, em_listening);
    th_run(w->owner, 30000);
    if (EM.lowered)
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &EM.saved), 0);
    if (EM.th_started)
        pthread_join(EM.th, NULL);
    ck_assert_int_eq(atomic_load(&EM.failed), 0);
    ck_assert_int_eq(atomic_load(&EM.served), EM_CLIENTS);
    ck_assert_int_eq(EM.paused_seen, 1);
    ck_assert_uint_lt(EM.accepted_at_pause, EM_CLIENTS);
    ck_assert_uint_ge(EM.end_stats.accept_paused, 1);
    ck_assert_uint_eq(EM.end_stats.accepted, EM_CLIENTS);
    ck_assert_msg(EM.cpu < 0.3 * EM.wall, "%.0f ms of CPU in %.0f ms while paused", EM.cpu,
                  EM.wall);
    int sum = 0;
    for (int i = 0; i < w->nw; i++)
        sum += atomic_load(&w->nconn[i]);
    ck_assert_int_eq(sum, EM_CLIENTS);
    ck_assert_int_eq(EM.gclosed, 1);
    world_end(w);
    sem_destroy(&EM.go);
}

START_TEST(test_group_emfile_pauses_accept)
{
    em_run(ND_BALANCE_LEASTCONN, 0);
}
END_TEST

START_TEST(test_group_emfile_pauses_accept_worker_accepts)
{
    em_run(ND_BALANCE_ROUNDROBIN, 1);
}
END_TEST

START_TEST(test_group_emfile_pauses_accept_reuseport)
{
    em_run(ND_BALANCE_REUSEPORT, 0);
}
END_TEST

static struct {
    int before, after, worker_after;
    int reported, gclosed;
} DC;

static void dc_maybe_done(void)
{
    if (DC.reported && CL.closed == CL.n)
        group_close_done(W, &DC.gclosed);
}

static void dc_report(msg_t *m)
{
    DC.reported++;
    DC.before = (int)m->a;
    DC.after = (int)m->b;
    DC.worker_after = (int)m->c;
    dc_maybe_done();
}

static void dc_cl_close(client_t *c)
{
    dc_maybe_done();
}

static void dc_conn(world_t *w, int widx, nd_socket_t *sock)
{
    nd_server_stats_t st;
    nd_server_t *ws = nd_socket_server(sock);

    nd_server_stats(ws, &st);
    long before = (long)st.connections;
    nd_socket_destroy(sock);
    nd_server_stats(ws, &st);
    msg_t *m = msg_new(dc_report, widx, before, (long)st.connections, NULL);
    m->c = nd_server_connections(ws);
    send_msg(W->owner, m);
}

static void dc_listening(void *self, const nd_event_t *ev, void *arg)
{
    client_start(&CL.v[0], group_port(W));
}

/* case 24, issue 12.11: in a group too, destroy() lowers the count at once (the group's
 * exact count and the worker's own), as Node lowers _connections inside destroy(). */
START_TEST(test_group_destroy_uncounts_at_once)
{
    world_t *w = world_new(1);

    memset(&DC, 0, sizeof(DC));
    clients_init(1);
    CL.on_close = dc_cl_close;
    w->h.conn = dc_conn;
    group_start(w, ND_BALANCE_LEASTCONN, dc_listening);
    th_run(w->owner, 10000);
    ck_assert_int_eq(DC.reported, 1);
    ck_assert_int_eq(DC.before, 1);
    ck_assert_int_eq(DC.after, 0);
    ck_assert_int_eq(DC.worker_after, 0);
    ck_assert_int_eq(DC.gclosed, 1);
    world_end(w);
    free(CL.v);
}
END_TEST

START_TEST(test_balance_names_and_bad_groups)
{
    nd_loop_t *loop = th_loop_new();

    ck_assert_int_eq(nd_balance_parse("leastconn"), ND_BALANCE_LEASTCONN);
    ck_assert_int_eq(nd_balance_parse("roundrobin"), ND_BALANCE_ROUNDROBIN);
    ck_assert_int_eq(nd_balance_parse("reuseport"), ND_BALANCE_REUSEPORT);
    ck_assert_int_eq(nd_balance_parse("random"), -EINVAL);
    ck_assert_int_eq(nd_balance_parse(""), -EINVAL);
    ck_assert_str_eq(nd_balance_name(ND_BALANCE_LEASTCONN), "leastconn");
    ck_assert_str_eq(nd_balance_name(ND_BALANCE_ROUNDROBIN), "roundrobin");
    ck_assert_str_eq(nd_balance_name(ND_BALANCE_REUSEPORT), "reuseport");
    errno = 0;
    ck_assert_ptr_null(
        nd_server_new_group(loop, NULL, NULL, 0, ND_BALANCE_LEASTCONN, noop_init, NULL));
    ck_assert_int_eq(errno, EINVAL);
    nd_server_t *plain = nd_server_new(loop, NULL, NULL, NULL);
    ck_assert_ptr_nonnull(plain);
    ck_assert_int_eq(nd_server_worker_index(plain), -1);
    /* Listen and close on the same turn: only 'close' follows, and it frees the server. */
    ck_assert_int_eq(nd_server_listen(plain, 0, "127.0.0.1", 0), 0);
    ck_assert_int_eq(nd_server_close(plain, NULL, NULL), 0);
    th_run(loop, 2000);
    th_finish(loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* Suite                                                                                */
/* ------------------------------------------------------------------------------------ */

int main(void)
{
    Suite *s = suite_create("group");
    TCase *tc;

    tc = th_tcase(s, "group", 90);
    tcase_add_test(tc, test_balance_names_and_bad_groups);
    tcase_add_loop_test(tc, test_group_each_connection_once, 0, 3);
    tcase_add_loop_test(tc, test_group_balance_sequential, 0, 2);
    tcase_add_test(tc, test_group_get_connections_exact);
    tcase_add_test(tc, test_group_max_connections);
    tcase_add_test(tc, test_group_connections_property);
    tcase_add_test(tc, test_group_emfile_pauses_accept);
    tcase_add_test(tc, test_group_emfile_pauses_accept_worker_accepts);
    tcase_add_test(tc, test_group_emfile_pauses_accept_reuseport);
    tcase_add_test(tc, test_group_destroy_uncounts_at_once);
    return th_run_suite(s);
}
