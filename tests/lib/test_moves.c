/* SPDX-License-Identifier: MIT */
/*
 * Live sockets moved between loops: when the other side of a pair disappears at each step
 * (torn down before the call, between the call and the departure, after it), and between
 * the workers of a group (world.h): refusals, adopt on the target thread, a proxy pair,
 * stream integrity under load, unread input travelling with its socket.
 */
#include "config.h"

#include "world.h"

#include <errno.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------ */
/* A pair torn down around its move                                                     */
/* ------------------------------------------------------------------------------------ */

typedef struct pairt {
    th_log_t log; /* written by both threads, read after the join */
    nd_loop_t *a, *b;
    nd_socket_t *x, *y; /* x <-> y piped both ways, on loop a */
    int peer_fds[2];    /* the far ends of the two socketpairs */
    int move_rc;
    bool detached_alone;
} pairt_t;

static void pair_setup(pairt_t *t)
{
    memset(t, 0, sizeof(*t));
    t->a = th_loop_new();
    t->b = th_loop_new();
    int sx[2], sy[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sx), 0);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sy), 0);
    t->x = th_socket_on_fd(t->a, sx[0]);
    t->y = th_socket_on_fd(t->a, sy[0]);
    t->peer_fds[0] = sx[1];
    t->peer_fds[1] = sy[1];
    ck_assert_int_eq(nd_socket_pipe(t->x, t->y, 1), 0);
    ck_assert_int_eq(nd_socket_pipe(t->y, t->x, 1), 0);
    ck_assert_ptr_eq(nd_socket_pipe_peer(t->x), t->y);
}

static void on_close_log(void *sock, const nd_event_t *ev, void *arg)
{
    pairt_t *t = arg;
    th_log(&t->log, "%s-close@%s", sock == t->x ? "x" : "y",
           nd_socket_loop(sock) == t->a ? "a" : "b");
}

static void on_move(nd_socket_t *sock, nd_move_phase_t phase, int err, void *arg)
{
    pairt_t *t = arg;
    if (phase == ND_MOVE_DETACHED) {
        t->detached_alone = nd_socket_pipe_peer(sock) == NULL;
        th_log(&t->log, "detached");
    } else if (phase == ND_MOVE_ADOPTED) {
        th_log(&t->log, "adopted@%s", nd_socket_loop(sock) == t->b ? "b" : "a");
        nd_socket_on(sock, ND_EV_CLOSE, on_close_log, t);
        nd_socket_destroy(sock);
    } else {
        th_log(&t->log, "failed:%s", nd_err_name(err));
        nd_socket_destroy(sock); /* still on a: err says it never left */
    }
}

static void finish_pair(pairt_t *t, nd_thread_t *th)
{
    ck_assert_int_eq(nd_thread_join(th), 0); /* frees b after its pending closes */
    th_finish(t->a);
    close(t->peer_fds[0]);
    close(t->peer_fds[1]);
}

/* The other half is destroyed (its 'close' still to come) when the move is asked: the
 * proxy's listeners on it still point at x, so x must not leave alone. It used to move
 * anyway, and the half left behind destroyed x from the wrong thread. */
START_TEST(pair_half_closing_before_the_call_refuses_the_move)
{
    pairt_t t;
    pair_setup(&t);
    nd_thread_t *th = nd_thread_start(t.b);
    nd_socket_on(t.x, ND_EV_CLOSE, on_close_log, &t);
    nd_socket_on(t.y, ND_EV_CLOSE, on_close_log, &t);
    nd_socket_destroy(t.y);
    ck_assert_int_eq(nd_socket_move_notify(t.x, t.b, on_move, &t), -EBUSY);
    nd_socket_destroy(t.x); /* as the proxy's 'close' listener would */
    th_run(t.a, 5000);
    finish_pair(&t, th);
    ck_assert_str_eq(th_log_str(&t.log), "y-close@a,x-close@a");
}
END_TEST

static void destroy_y(void *arg)
{
    nd_socket_destroy(((pairt_t *)arg)->y);
}

/* The other half is torn down between the call and the departure, in the same turn (an
 * upstream's FIN closing it while a `move` waits to leave): the move fails and x stays.
 * It used to leave alone. */
START_TEST(pair_half_closing_after_the_call_fails_the_move)
{
    pairt_t t;
    pair_setup(&t);
    nd_thread_t *th = nd_thread_start(t.b);
    nd_socket_on(t.y, ND_EV_CLOSE, on_close_log, &t);
    /* Runs in the same pass as the departure, just before it: y's 'close' comes later. */
    ck_assert_int_eq(nd_loop_defer(t.a, destroy_y, &t), 0);
    ck_assert_int_eq(nd_socket_move_notify(t.x, t.b, on_move, &t), 0);
    th_run(t.a, 5000);
    finish_pair(&t, th);
    ck_assert_str_eq(th_log_str(&t.log), "failed:EBUSY,y-close@a");
}
END_TEST

static void y_closed_then_move(void *sock, const nd_event_t *ev, void *arg)
{
    pairt_t *t = arg;
    /* After the other half's 'close' has run, nothing ties x here: it moves alone. */
    t->move_rc = nd_socket_move_notify(t->x, t->b, on_move, t);
}

START_TEST(pair_half_closed_lets_the_other_move_alone)
{
    pairt_t t;
    pair_setup(&t);
    nd_thread_t *th = nd_thread_start(t.b);
    nd_socket_on(t.y, ND_EV_CLOSE, on_close_log, &t);
    nd_socket_on(t.y, ND_EV_CLOSE, y_closed_then_move, &t);
    nd_socket_destroy(t.y);
    th_run(t.a, 5000);
    finish_pair(&t, th);
    ck_assert_int_eq(t.move_rc, 0);
    ck_assert(t.detached_alone);
    ck_assert_str_eq(th_log_str(&t.log), "y-close@a,detached,adopted@b,x-close@b");
}
END_TEST

/* Both halves alive: they leave together, and DETACHED sees the pair. */
START_TEST(pair_moves_together)
{
    pairt_t t;
    pair_setup(&t);
    nd_thread_t *th = nd_thread_start(t.b);
    ck_assert_int_eq(nd_socket_move_notify(t.y, t.b, on_move, &t), 0);
    th_run(t.a, 5000);
    finish_pair(&t, th);
    ck_assert(!t.detached_alone);
    /* y's adopt destroyed y on b; x went with it and is freed with loop b. */
    ck_assert_str_eq(th_log_str(&t.log), "detached,adopted@b,y-close@b");
}
END_TEST

/* A move asked while one is on its way, for the socket or for its pair (a `move` of a
 * proxy's upstream while the client side is moving): refused, and the first goes on
 * alone. The second used to be accepted and detached the pair a second time from the
 * loop it had already left (heap corruption, found by the chaos run). */
START_TEST(second_move_of_a_moving_pair_is_refused)
{
    pairt_t t;
    pair_setup(&t);
    nd_loop_t *c = th_loop_new();
    nd_thread_t *th = nd_thread_start(t.b);
    nd_thread_t *thc = nd_thread_start(c);
    ck_assert_int_eq(nd_socket_move_notify(t.y, t.b, on_move, &t), 0);
    ck_assert_int_eq(nd_socket_move_notify(t.y, c, on_move, &t), -EBUSY);
    ck_assert_int_eq(nd_socket_move_notify(t.x, c, on_move, &t), -EBUSY);
    ck_assert_int_eq(nd_socket_move(t.x, t.b, NULL, NULL), -EBUSY);
    th_run(t.a, 5000);
    ck_assert_int_eq(nd_thread_join(thc), 0);
    finish_pair(&t, th);
    ck_assert_str_eq(th_log_str(&t.log), "detached,adopted@b,y-close@b");
}
END_TEST

/* The hash of the first `total` bytes of th_pat. */
static uint64_t fnv_pattern(uint64_t total)
{
    unsigned char buf[4096];
    uint64_t h = TH_FNV0;

    for (uint64_t off = 0; off < total;) {
        size_t n = total - off < sizeof(buf) ? (size_t)(total - off) : sizeof(buf);
        th_pat_fill(buf, off, n);
        h = th_fnv1a(h, buf, n);
        off += n;
    }
    return h;
}

/* ------------------------------------------------------------------------------------ */
/* A stream echoed through a socket that keeps moving                                   */
/* ------------------------------------------------------------------------------------ */

#define ST_CHUNK (64u * 1024u)

static struct {
    uint64_t total;
    int moves_wanted;
    /* Owner: the client. */
    nd_socket_t *cli;
    uint64_t sent, rcvd, cfnv, bad_at, cli_written;
    int cbad, wait_drain, cclosed, chad_error;
    unsigned char chunk[ST_CHUNK];
    /* Server side: touched only by the worker that holds the socket; a move hands it on. */
    nd_socket_t *ss;
    uint64_t srx, stx, sfnv, step, next_at;
    int cur, target, moving, moves_started, adopted, s_wait_drain, end_pending, ended;
    int sclosed_here;
    int events_while_moving, wrong_thread, wrong_socket;
    unsigned char *held;
    size_t heldlen, heldcap;
    uint64_t s_bytes_read, s_bytes_written;
    /* Owner again. */
    int sreported, gclosed;
} ST;

static void st_sdata(void *self, const nd_event_t *ev, void *arg);
static void st_send(void *self, const nd_event_t *ev, void *arg);
static void st_sdrain(void *self, const nd_event_t *ev, void *arg);
static void st_sclose(void *self, const nd_event_t *ev, void *arg);
static void st_adopt(nd_socket_t *sock, void *arg);

static void st_attach(nd_socket_t *s)
{
    nd_socket_on(s, ND_EV_DATA, st_sdata, NULL);
    nd_socket_on(s, ND_EV_END, st_send, NULL);
    nd_socket_on(s, ND_EV_DRAIN, st_sdrain, NULL);
    nd_socket_on(s, ND_EV_CLOSE, st_sclose, NULL);
}

static void st_echo(const char *data, size_t len)
{
    ST.sfnv = th_fnv1a(ST.sfnv, data, len);
    ST.srx += len;
    int rc = nd_socket_write(ST.ss, data, len, NULL, NULL);
    WCHECK(rc >= 0, "echo write: %s", nd_err_name(rc));
    ST.stx += len;
    if (rc == 0 && !ST.s_wait_drain) {
        nd_socket_pause(ST.ss);
        ST.s_wait_drain = 1;
    }
}

/*
 * Not moving: moves on when the byte count passed the next mark (so the moves spread
 * evenly over the stream while both directions flow), else ends once the client has.
 */
static void st_next_step(void)
{
    if (ST.moves_started < ST.moves_wanted && ST.srx >= ST.next_at) {
        ST.next_at += ST.step;
        ST.moves_started++;
        ST.target = (ST.cur + 1) % W->nw;
        ST.moving = 1;
        int rc = nd_socket_move(ST.ss, W->wl[ST.target], st_adopt, &ST);
        WCHECK(rc == 0, "move %d: %s", ST.moves_started, nd_err_name(rc));
        return;
    }
    if (ST.end_pending && !ST.ended) {
        ST.ended = 1;
        nd_socket_end(ST.ss, NULL, 0);
    }
}

/*
 * Events can still reach our listeners between nd_socket_move() and the detach on a later
 * turn, when we may not touch the socket: they are kept and acted on after the adopt.
 */
static void st_sdata(void *self, const nd_event_t *ev, void *arg)
{
    if (tl_worker != ST.cur)
        ST.wrong_thread++;
    if (ST.moving) {
        ST.events_while_moving++;
        if (ST.heldlen + ev->len > ST.heldcap) {
            ST.heldcap = (ST.heldlen + ev->len) * 2;
            ST.held = realloc(ST.held, ST.heldcap);
            if (!ST.held)
                abort();
        }
        memcpy(ST.held + ST.heldlen, ev->data, ev->len);
        ST.heldlen += ev->len;
        return;
    }
    st_echo(ev->data, ev->len);
    st_next_step();
}

/* The server allows half-open, so its side ends only after every echo was written. */
static void st_send(void *self, const nd_event_t *ev, void *arg)
{
    ST.end_pending = 1;
    if (ST.moving) {
        ST.events_while_moving++;
        return;
    }
    st_next_step();
}

static void st_sdrain(void *self, const nd_event_t *ev, void *arg)
{
    if (ST.moving) {
        ST.events_while_moving++;
        return;
    }
    if (ST.s_wait_drain) {
        ST.s_wait_drain = 0;
        nd_socket_resume(ST.ss);
    }
}

static void st_later(nd_loop_t *loop, void *arg)
{
    if (!ST.moving && !ST.sclosed_here)
        st_next_step();
}

static void st_adopt(nd_socket_t *sock, void *arg)
{
    WCHECK(arg == &ST, "on_adopt got another arg");
    if (tl_worker != ST.target || !pthread_equal(pthread_self(), W->wtid[ST.target]))
        ST.wrong_thread++;
    if (sock != ST.ss || nd_socket_loop(sock) != W->wl[ST.target])
        ST.wrong_socket++;
    ST.cur = ST.target;
    ST.moving = 0;
    ST.adopted++;
    st_attach(sock);
    if (ST.heldlen > 0) {
        size_t n = ST.heldlen;
        ST.heldlen = 0;
        st_echo((const char *)ST.held, n);
    }
    /* A queue that emptied during the move owes no 'drain' we could still see. */
    if (ST.s_wait_drain && nd_socket_buffer_size(sock) == 0) {
        ST.s_wait_drain = 0;
        nd_socket_resume(sock);
    }
    /* Held bytes may have passed a mark, or the client ended meanwhile: act on a later
     * turn, after the worker-side server's 'adopt'. */
    WCHECK(nd_loop_post(W->wl[ST.cur], st_later, NULL) == 0, "post to self failed");
}

static void st_adopt_ev(world_t *w, int widx, nd_socket_t *sock)
{
    if (sock != ST.ss || widx != ST.target)
        ST.wrong_socket++;
}

static void st_finish_if_done(void);

static void st_sreport(msg_t *m)
{
    ST.sreported++;
    st_finish_if_done();
}

static void st_sclose(void *self, const nd_event_t *ev, void *arg)
{
    if (tl_worker != ST.cur)
        ST.wrong_thread++;
    WCHECK(!ev->had_error, "the server side closed with an error");
    ST.sclosed_here = 1;
    ST.s_bytes_read = nd_socket_bytes_read(ST.ss);
    ST.s_bytes_written = nd_socket_bytes_written(ST.ss);
    report_now(st_sreport, 0, 0, NULL);
}

static void st_conn(world_t *w, int widx, nd_socket_t *sock)
{
    WCHECK(ST.ss == NULL, "a second connection");
    ST.ss = sock;
    ST.cur = widx;
    ST.sfnv = TH_FNV0;
    st_attach(sock);
}

/* Owner: the client writes the pattern with backpressure and checks the echo. */
static void st_cwrite(void)
{
    while (ST.sent < ST.total) {
        size_t n = ST.total - ST.sent < ST_CHUNK ? (size_t)(ST.total - ST.sent) : ST_CHUNK;
        for (size_t j = 0; j < n; j++)
            ST.chunk[j] = th_pat(ST.sent + j);
        int rc = nd_socket_write(ST.cli, ST.chunk, n, NULL, NULL);
        OCHECK(rc >= 0, "client write: %s", nd_err_name(rc));
        ST.sent += n;
        if (rc == 0) {
            ST.wait_drain = 1;
            return;
        }
    }
    ck_assert_int_eq(nd_socket_end(ST.cli, NULL, 0), 0);
}

static void st_cconnect(void *self, const nd_event_t *ev, void *arg)
{
    st_cwrite();
}

static void st_cdrain(void *self, const nd_event_t *ev, void *arg)
{
    if (ST.wait_drain) {
        ST.wait_drain = 0;
        st_cwrite();
    }
}

static void st_cdata(void *self, const nd_event_t *ev, void *arg)
{
    const unsigned char *b = (const unsigned char *)ev->data;

    if (!ST.cbad)
        for (size_t j = 0; j < ev->len; j++)
            if (b[j] != th_pat(ST.rcvd + j)) {
                ST.cbad = 1;
                ST.bad_at = ST.rcvd + j;
                break;
            }
    ST.cfnv = th_fnv1a(ST.cfnv, ev->data, ev->len);
    ST.rcvd += ev->len;
}

static void st_cclose(void *self, const nd_event_t *ev, void *arg)
{
    ST.cclosed++;
    ST.chad_error = ev->had_error;
    ST.cli_written = nd_socket_bytes_written(ST.cli);
    st_finish_if_done();
}

static void st_finish_if_done(void)
{
    if (ST.cclosed && ST.sreported)
        group_close_done(W, &ST.gclosed);
}

static void st_listening(void *self, const nd_event_t *ev, void *arg)
{
    ST.cli = th_connect(W->owner, group_port(W), st_cconnect, NULL);
    nd_socket_on(ST.cli, ND_EV_DATA, st_cdata, NULL);
    nd_socket_on(ST.cli, ND_EV_DRAIN, st_cdrain, NULL);
    nd_socket_on(ST.cli, ND_EV_CLOSE, st_cclose, NULL);
}

/* 64 MiB echoed through a server-side socket that moves between four workers 200 times
 * while bytes flow both ways: everything arrives, in order, and the moved socket's
 * counters cover the whole stream. */
START_TEST(test_move_stream_integrity)
{
    world_t *w = world_new(4);

    ST.total = th_sanitized() ? (8u << 20) : (64u << 20);
    ST.moves_wanted = th_sanitized() ? 40 : 200;
    ST.step = ST.total / (uint64_t)(ST.moves_wanted + 1);
    ST.next_at = ST.step;
    ST.cfnv = TH_FNV0;
    /* Half-open, so that a client's FIN seen while the socket moves cannot end our side
     * before the echo of the bytes kept meanwhile is written. */
    w->opts.allow_half_open = 1;
    w->h.conn = st_conn;
    w->h.adopt_ev = st_adopt_ev;
    group_start(w, ND_BALANCE_ROUNDROBIN, st_listening);
    th_run(w->owner, 120000);
    uint64_t want = fnv_pattern(ST.total);
    ck_assert_msg(!ST.cbad, "echo differs from what was sent at byte %lu",
                  (unsigned long)ST.bad_at);
    ck_assert_uint_eq(ST.rcvd, ST.total);
    ck_assert_uint_eq(ST.cli_written, ST.total);
    ck_assert_uint_eq(ST.cfnv, want);
    ck_assert_uint_eq(ST.srx, ST.total);
    ck_assert_uint_eq(ST.stx, ST.total);
    ck_assert_uint_eq(ST.sfnv, want);
    ck_assert_uint_eq(ST.s_bytes_read, ST.total);
    ck_assert_uint_eq(ST.s_bytes_written, ST.total);
    ck_assert_int_eq(ST.chad_error, 0);
    ck_assert_msg(ST.moves_started == ST.moves_wanted,
                  "%d moves of %d; next at %lu; %d events while moving", ST.moves_started,
                  ST.moves_wanted, (unsigned long)ST.next_at, ST.events_while_moving);
    ck_assert_int_eq(ST.adopted, ST.moves_wanted);
    int adopts = 0;
    for (int i = 0; i < w->nw; i++)
        adopts += atomic_load(&w->nadopt_ev[i]);
    ck_assert_int_eq(adopts, ST.moves_wanted);
    ck_assert_int_eq(ST.wrong_thread, 0);
    ck_assert_int_eq(ST.wrong_socket, 0);
    ck_assert_int_eq(ST.gclosed, 1);
    ck_assert_int_eq(ST.sreported, 1);
    world_end(w);
    free(ST.held);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* Moves: refusals, the adopt event, proxy pairs                                        */
/* ------------------------------------------------------------------------------------ */

static struct {
    nd_server_t *plain;
    nd_socket_t *peer[2]; /* the plain server's accepted sockets */
    int npeers;
    nd_socket_t *c1, *c2;
    int connected;
    int rc_connecting, rc_resolving, rc_null, rc_plain_server, rc_self, rc_one_way, rc_destroyed,
        rc_unpipe;
    nd_loop_t *c1_loop_after_self;
    char peer_rx[16];
    size_t peer_rxlen;
    int closes; /* c1, c2 and both peers */
    int plain_closed, gclosed, sclosed, reported;
    long w_rc_outside, w_rc_self, w_loop_ok;
} RF;

static void rf_maybe_done(void)
{
    if (RF.plain_closed && RF.gclosed && RF.sclosed == 1 && CL.closed == CL.n && RF.closes == 4)
        world_done(W);
}

static void rf_plain_close(void *self, const nd_event_t *ev, void *arg)
{
    RF.plain_closed++;
    rf_maybe_done();
}

static void rf_gclose(void *self, const nd_event_t *ev, void *arg)
{
    RF.gclosed++;
    rf_maybe_done();
}

static void rf_sock_close(void *self, const nd_event_t *ev, void *arg)
{
    RF.closes++;
    rf_maybe_done();
}

static void rf_cl_close(client_t *c)
{
    rf_maybe_done();
}

static void rf_sclosed(msg_t *m)
{
    RF.sclosed++;
    rf_maybe_done();
}

/* Owner, from worker 0: its results; everything closes. */
static void rf_group_rep(msg_t *m)
{
    RF.w_rc_outside = m->a;
    RF.w_rc_self = m->b;
    RF.w_loop_ok = (long)(intptr_t)m->p;
    RF.reported++;
    clients_destroy_all();
    nd_socket_destroy(RF.c1);
    ck_assert_int_eq(nd_server_close(W->group, rf_gclose, NULL), 0);
    ck_assert_int_eq(nd_server_close(RF.plain, rf_plain_close, NULL), 0);
}

static void rf_wdata(void *self, const nd_event_t *ev, void *arg)
{
    wconn_t *c = arg;

    /* Still here after the move to its own loop: the listeners were not dropped. */
    WCHECK(ev->len == 2 && memcmp(ev->data, "hi", 2) == 0, "worker 0 got unexpected data");
    post_msg(W->owner, rf_group_rep, 0, c->r1, c->r2,
             (void *)(intptr_t)(nd_socket_loop(c->sock) == W->wl[0]));
}

static void rf_conn(world_t *w, int widx, nd_socket_t *sock)
{
    wconn_t *c = keep_conn(w, widx, sock);

    c->r1 = nd_socket_move(sock, w->wl[1], NULL, NULL);
    c->r2 = nd_socket_move(sock, w->wl[0], NULL, NULL);
    nd_socket_on(sock, ND_EV_DATA, rf_wdata, c);
}

static void rf_cl_connect(client_t *c)
{
    nd_socket_write(c->sock, "hi", 2, NULL, NULL);
}

static void rf_group_listening(void *self, const nd_event_t *ev, void *arg)
{
    client_start(&CL.v[0], group_port(W));
}

/* Owner: every refusal a socket on the owner can meet, then the group stage. */
static void rf_refusals(void)
{
    world_t *w = W;

    RF.rc_plain_server = nd_socket_move(RF.peer[0], w->wl[1], NULL, NULL);
    RF.rc_self = nd_socket_move(RF.c1, w->owner, NULL, NULL);
    RF.c1_loop_after_self = nd_socket_loop(RF.c1);
    /* Nothing happened: c1 still writes on this loop. */
    ck_assert_int_ge(nd_socket_write(RF.c1, "ping", 4, NULL, NULL), 0);
    ck_assert_int_eq(nd_socket_pipe(RF.c1, RF.c2, 0), 0);
    RF.rc_one_way = nd_socket_move(RF.c1, w->wl[1], NULL, NULL);
    RF.rc_unpipe = nd_socket_unpipe(RF.c1);
    nd_socket_destroy(RF.c2);
    RF.rc_destroyed = nd_socket_move(RF.c2, w->wl[1], NULL, NULL);

    /* A group over worker 0 only: worker 1 is not one of its loops. */
    nd_server_t *g = group_new(w, NULL, 1, ND_BALANCE_LEASTCONN);
    nd_server_on(g, ND_EV_LISTENING, rf_group_listening, w);
    ck_assert_int_eq(nd_server_listen(g, 0, "127.0.0.1", 0), 0);
}

static void rf_maybe_ready(void)
{
    if (RF.connected == 2 && RF.npeers == 2)
        rf_refusals();
}

static void rf_connected(void *self, const nd_event_t *ev, void *arg)
{
    RF.connected++;
    rf_maybe_ready();
}

static void rf_peer_data(void *self, const nd_event_t *ev, void *arg)
{
    ck_assert_uint_le(RF.peer_rxlen + ev->len, sizeof(RF.peer_rx));
    memcpy(RF.peer_rx + RF.peer_rxlen, ev->data, ev->len);
    RF.peer_rxlen += ev->len;
}

static void rf_plain_conn(void *self, const nd_event_t *ev, void *arg)
{
    ck_assert_int_lt(RF.npeers, 2);
    RF.peer[RF.npeers++] = ev->socket;
    nd_socket_on(ev->socket, ND_EV_DATA, rf_peer_data, NULL);
    nd_socket_on(ev->socket, ND_EV_CLOSE, rf_sock_close, NULL);
    rf_maybe_ready();
}

static void rf_plain_listening(void *self, const nd_event_t *ev, void *arg)
{
    world_t *w = W;
    nd_address_t a;
    nd_connect_options_t o;

    ck_assert_int_eq(nd_server_address(self, &a), 0);
    memset(&o, 0, sizeof(o));
    o.port = a.port;
    o.host = "127.0.0.1";
    RF.c1 = nd_connect(w->owner, &o, rf_connected, NULL);
    ck_assert_ptr_nonnull(RF.c1);
    ck_assert(nd_socket_connecting(RF.c1));
    RF.rc_connecting = nd_socket_move(RF.c1, w->wl[1], NULL, NULL);
    o.host = "localhost";
    RF.c2 = nd_connect(w->owner, &o, rf_connected, NULL);
    ck_assert_ptr_nonnull(RF.c2);
    RF.rc_resolving = nd_socket_move(RF.c2, w->wl[1], NULL, NULL);
    RF.rc_null = nd_socket_move(NULL, w->wl[1], NULL, NULL);
    nd_socket_on(RF.c1, ND_EV_CLOSE, rf_sock_close, NULL);
    nd_socket_on(RF.c2, ND_EV_CLOSE, rf_sock_close, NULL);
}

/* What nd_socket_move refuses: a socket still connecting or resolving (EBUSY), one piped
 * one way (EBUSY), a destroyed one (ECLOSED), one of a plain server or to a loop outside
 * its group (EXDEV), NULL (EINVAL); moving to its own loop is 0 and changes nothing. */
START_TEST(test_move_refusals)
{
    world_t *w = world_new(2);

    clients_init(1);
    CL.on_connect = rf_cl_connect;
    CL.on_close = rf_cl_close;
    w->h.conn = rf_conn;
    w->h.sclosed = rf_sclosed;
    RF.plain = nd_server_new(w->owner, NULL, rf_plain_conn, NULL);
    ck_assert_ptr_nonnull(RF.plain);
    nd_server_on(RF.plain, ND_EV_LISTENING, rf_plain_listening, NULL);
    ck_assert_int_eq(nd_server_listen(RF.plain, 0, "127.0.0.1", 0), 0);
    th_run(w->owner, 10000);
    ck_assert_int_eq(RF.rc_connecting, -EBUSY);
    ck_assert_int_eq(RF.rc_resolving, -EBUSY);
    ck_assert_int_eq(RF.rc_null, -EINVAL);
    ck_assert_int_eq(RF.rc_plain_server, -EXDEV);
    ck_assert_int_eq(RF.rc_self, 0);
    ck_assert_ptr_eq(RF.c1_loop_after_self, w->owner);
    ck_assert_int_eq(RF.rc_one_way, -EBUSY);
    ck_assert_int_eq(RF.rc_unpipe, 0);
    ck_assert_int_eq(RF.rc_destroyed, ND_ECLOSED);
    ck_assert_int_eq(RF.reported, 1);
    ck_assert_int_eq(RF.w_rc_outside, -EXDEV);
    ck_assert_int_eq(RF.w_rc_self, 0);
    ck_assert_int_eq(RF.w_loop_ok, 1);
    ck_assert_uint_eq(RF.peer_rxlen, 4);
    ck_assert(memcmp(RF.peer_rx, "ping", 4) == 0);
    for (int i = 0; i < w->nw; i++)
        ck_assert_int_eq(atomic_load(&w->nadopt_ev[i]), 0);
    nd_loop_stats_t ls;
    nd_loop_stats(w->wl[1], &ls);
    ck_assert_uint_eq(ls.moved_in, 0);
    nd_loop_stats(w->wl[0], &ls);
    ck_assert_uint_eq(ls.moved_in, 0);
    world_end(w);
    free(CL.v);
}
END_TEST

static struct {
    nd_socket_t *sock; /* the moved socket, set on worker 0 before the move */
    atomic_int move_rc, on_adopt_calls, adopt_thread_ok, adopt_loop_ok, adopt_sock_ok;
    atomic_int ev_thread_ok, ev_sock_ok;
    uint64_t moved_in;
    long s_bytes_read;
    int adopted, sclosed, gclosed;
} AD;

static void ad_echo(void *self, const nd_event_t *ev, void *arg)
{
    wconn_t *c = arg;
    int rc = nd_socket_write(c->sock, ev->data, ev->len, NULL, NULL);

    WCHECK(tl_worker == 1, "'data' of the moved socket on worker %d", tl_worker);
    WCHECK(rc >= 0, "echo write: %s", nd_err_name(rc));
}

static void ad_adopted(msg_t *m)
{
    AD.adopted++;
    ck_assert_int_ge(nd_socket_write(CL.v[0].sock, "late", 4, NULL, NULL), 0);
}

static void ad_on_adopt(nd_socket_t *sock, void *arg)
{
    wconn_t *c = arg;

    atomic_fetch_add(&AD.on_adopt_calls, 1);
    atomic_store(&AD.adopt_thread_ok, tl_worker == 1 && pthread_equal(pthread_self(), W->wtid[1]));
    atomic_store(&AD.adopt_loop_ok, nd_socket_loop(sock) == W->wl[1]);
    atomic_store(&AD.adopt_sock_ok, sock == c->sock);
    c->widx = 1;
    list_add(&W->list[1], c);
    nd_socket_on(sock, ND_EV_CLOSE, wc_close, c);
    nd_socket_on(sock, ND_EV_DATA, ad_echo, c);
    report_now(ad_adopted, 0, 0, NULL);
}

static void ad_adopt_ev(world_t *w, int widx, nd_socket_t *sock)
{
    atomic_store(&AD.ev_thread_ok, tl_worker == 1 && pthread_equal(pthread_self(), w->wtid[1]));
    atomic_store(&AD.ev_sock_ok, sock == AD.sock);
}

static void ad_conn(world_t *w, int widx, nd_socket_t *sock)
{
    wconn_t *c = wconn_new(sock, widx);

    WCHECK(widx == 0, "roundrobin gave the first connection to worker %d", widx);
    AD.sock = sock;
    c->target = 1;
    /* Straight from 'connection': nothing is read here; the client's first bytes must
     * reach the target. */
    atomic_store(&AD.move_rc, nd_socket_move(sock, w->wl[1], ad_on_adopt, c));
}

static void ad_maybe_done(void)
{
    if (AD.sclosed && CL.closed == CL.n)
        group_close_done(W, &AD.gclosed);
}

static void ad_sclosed(msg_t *m)
{
    AD.sclosed++;
    AD.s_bytes_read = m->a;
    ad_maybe_done();
}

static void ad_cl_connect(client_t *c)
{
    ck_assert_int_ge(nd_socket_write(c->sock, "early", 5, NULL, NULL), 0);
}

static void ad_cl_data(client_t *c, const char *data, size_t len)
{
    OCHECK(c->rxlen + len <= 9, "too much echoed");
    memcpy(c->rx + c->rxlen, data, len);
    c->rxlen += len;
    if (c->rxlen == 9)
        nd_socket_end(c->sock, NULL, 0);
}

static void ad_cl_close(client_t *c)
{
    ad_maybe_done();
}

static void ad_listening(void *self, const nd_event_t *ev, void *arg)
{
    client_start(&CL.v[0], group_port(W));
}

/* A socket moved from worker 0 to worker 1 straight from its 'connection': on_adopt and
 * the worker-side server's ND_EV_ADOPT both run on worker 1's thread, once, with the same
 * socket; bytes sent before and after the move are all read there, in order. */
START_TEST(test_move_adopt_on_target_thread)
{
    world_t *w = world_new(2);

    clients_init(1);
    CL.on_connect = ad_cl_connect;
    CL.on_data = ad_cl_data;
    CL.on_close = ad_cl_close;
    w->h.conn = ad_conn;
    w->h.adopt_ev = ad_adopt_ev;
    w->h.sclosed = ad_sclosed;
    group_start(w, ND_BALANCE_ROUNDROBIN, ad_listening);
    th_run(w->owner, 10000);
    nd_loop_stats_t ls;
    nd_loop_stats(w->wl[1], &ls);
    AD.moved_in = ls.moved_in;
    ck_assert_int_eq(atomic_load(&AD.move_rc), 0);
    ck_assert_int_eq(atomic_load(&AD.on_adopt_calls), 1);
    ck_assert_int_eq(atomic_load(&AD.adopt_thread_ok), 1);
    ck_assert_int_eq(atomic_load(&AD.adopt_loop_ok), 1);
    ck_assert_int_eq(atomic_load(&AD.adopt_sock_ok), 1);
    ck_assert_int_eq(atomic_load(&w->nadopt_ev[0]), 0);
    ck_assert_int_eq(atomic_load(&w->nadopt_ev[1]), 1);
    ck_assert_int_eq(atomic_load(&AD.ev_thread_ok), 1);
    ck_assert_int_eq(atomic_load(&AD.ev_sock_ok), 1);
    ck_assert_int_eq(atomic_load(&w->nconn[0]), 1);
    ck_assert_int_eq(atomic_load(&w->nconn[1]), 0);
    ck_assert_uint_eq(AD.moved_in, 1);
    ck_assert_int_eq(AD.adopted, 1);
    ck_assert_uint_eq(CL.v[0].rxlen, 9);
    ck_assert(memcmp(CL.v[0].rx, "earlylate", 9) == 0);
    ck_assert_int_eq(CL.v[0].had_error, 0);
    ck_assert_int_eq(AD.s_bytes_read, 9);
    ck_assert_int_eq(AD.sclosed, 1);
    ck_assert_int_eq(AD.gclosed, 1);
    world_end(w);
    free(CL.v);
}
END_TEST

static struct {
    nd_server_t *up_srv;
    int up_port;
    nd_socket_t *in, *up; /* worker 0's pair, then worker 1's */
    atomic_int adopt_in, adopt_up, adopt_thread_ok, adopt_other;
    atomic_int later_up_loop_ok, later_peers_ok;
    int ready, moved, sclosed, echo_closes, up_srv_closed, gclosed, closing;
} PX;

static void px_maybe_done(void);

static void px_ready(msg_t *m)
{
    PX.ready++;
    ck_assert_int_ge(nd_socket_write(CL.v[0].sock, "before", 6, NULL, NULL), 0);
}

static void px_moved(msg_t *m)
{
    PX.moved++;
    ck_assert_int_ge(nd_socket_write(CL.v[0].sock, "after", 5, NULL, NULL), 0);
}

static void px_check_later(nd_loop_t *loop, void *arg)
{
    atomic_store(&PX.later_up_loop_ok, nd_socket_loop(PX.up) == W->wl[1]);
    atomic_store(&PX.later_peers_ok,
                 nd_socket_pipe_peer(PX.in) == PX.up && nd_socket_pipe_peer(PX.up) == PX.in);
    report_now(px_moved, 0, 0, NULL);
}

static void px_adopted(nd_socket_t *sock, void *arg)
{
    wconn_t *c = arg;

    if (tl_worker == 1 && pthread_equal(pthread_self(), W->wtid[1]))
        atomic_fetch_add(&PX.adopt_thread_ok, 1);
    if (sock == PX.up) {
        atomic_fetch_add(&PX.adopt_up, 1);
        return;
    }
    if (sock != PX.in) {
        atomic_fetch_add(&PX.adopt_other, 1);
        return;
    }
    atomic_fetch_add(&PX.adopt_in, 1);
    c->widx = 1;
    list_add(&W->list[1], c);
    nd_socket_on(sock, ND_EV_CLOSE, wc_close, c);
    /* Its partner's adoption is checked on a later turn of this loop. */
    WCHECK(nd_loop_post(W->wl[1], px_check_later, NULL) == 0, "post to self failed");
}

static void px_wmove(msg_t *m)
{
    int rc = nd_socket_move(PX.in, W->wl[1], px_adopted, m->p);

    WCHECK(rc == 0, "moving the proxy pair: %s", nd_err_name(rc));
}

static void px_up_connect(void *self, const nd_event_t *ev, void *arg)
{
    int r1 = nd_socket_pipe(PX.in, PX.up, 1);
    int r2 = nd_socket_pipe(PX.up, PX.in, 1);

    WCHECK(r1 == 0 && r2 == 0, "pipe: %s %s", nd_err_name(r1), nd_err_name(r2));
    WCHECK(nd_socket_pipe_peer(PX.in) == PX.up && nd_socket_pipe_peer(PX.up) == PX.in,
           "the two pipes do not pair");
    report_now(px_ready, 0, 0, NULL);
}

static void px_conn(world_t *w, int widx, nd_socket_t *sock)
{
    nd_connect_options_t o;

    WCHECK(widx == 0, "roundrobin gave the first connection to worker %d", widx);
    PX.in = sock;
    memset(&o, 0, sizeof(o));
    o.port = PX.up_port;
    o.host = "127.0.0.1";
    PX.up = nd_connect(w->wl[widx], &o, px_up_connect, NULL);
    WCHECK(PX.up != NULL, "upstream connect: %s", strerror(errno));
}

static void px_cl_data(client_t *c, const char *data, size_t len)
{
    OCHECK(c->rxlen + len <= 11, "too much echoed");
    memcpy(c->rx + c->rxlen, data, len);
    c->rxlen += len;
    if (c->rxlen == 6 && !PX.moved) {
        ck_assert(memcmp(c->rx, "before", 6) == 0);
        post_msg(W->wl[0], px_wmove, 0, 0, 0, wconn_new(PX.in, 0));
    } else if (c->rxlen == 11) {
        nd_socket_end(c->sock, NULL, 0);
    }
}

static void px_gclose(void *self, const nd_event_t *ev, void *arg)
{
    PX.gclosed++;
    px_maybe_done();
}

static void px_up_srv_close(void *self, const nd_event_t *ev, void *arg)
{
    PX.up_srv_closed++;
    px_maybe_done();
}

static void px_maybe_done(void)
{
    if (PX.gclosed && PX.up_srv_closed) {
        world_done(W);
        return;
    }
    if (PX.sclosed && PX.echo_closes && CL.closed == CL.n && !PX.closing) {
        PX.closing = 1;
        ck_assert_int_eq(nd_server_close(W->group, px_gclose, NULL), 0);
        ck_assert_int_eq(nd_server_close(PX.up_srv, px_up_srv_close, NULL), 0);
    }
}

static void px_sclosed(msg_t *m)
{
    PX.sclosed++;
    px_maybe_done();
}

static void px_cl_close(client_t *c)
{
    px_maybe_done();
}

static void px_echo_close(void *self, const nd_event_t *ev, void *arg)
{
    PX.echo_closes++;
    px_maybe_done();
}

static void px_echo_conn(void *self, const nd_event_t *ev, void *arg)
{
    ck_assert_int_eq(nd_socket_pipe(ev->socket, ev->socket, 1), 0);
    nd_socket_on(ev->socket, ND_EV_CLOSE, px_echo_close, NULL);
}

static void px_group_listening(void *self, const nd_event_t *ev, void *arg)
{
    client_start(&CL.v[0], group_port(W));
}

static void px_up_listening(void *self, const nd_event_t *ev, void *arg)
{
    nd_address_t a;

    ck_assert_int_eq(nd_server_address(self, &a), 0);
    PX.up_port = a.port;
    group_start(W, ND_BALANCE_ROUNDROBIN, px_group_listening);
}

/* A proxy pair (an accepted socket and its upstream connection, piped both ways) moves
 * as one: both end up on the target loop, still paired, and data flows both ways after. */
START_TEST(test_move_proxy_pair)
{
    world_t *w = world_new(2);

    clients_init(1);
    CL.on_data = px_cl_data;
    CL.on_close = px_cl_close;
    w->h.conn = px_conn;
    w->h.sclosed = px_sclosed;
    PX.up_srv = nd_server_new(w->owner, NULL, px_echo_conn, NULL);
    ck_assert_ptr_nonnull(PX.up_srv);
    nd_server_on(PX.up_srv, ND_EV_LISTENING, px_up_listening, NULL);
    ck_assert_int_eq(nd_server_listen(PX.up_srv, 0, "127.0.0.1", 0), 0);
    th_run(w->owner, 10000);
    ck_assert_int_eq(PX.ready, 1);
    ck_assert_int_eq(PX.moved, 1);
    ck_assert_int_eq(atomic_load(&PX.adopt_in), 1);
    ck_assert_int_le(atomic_load(&PX.adopt_up), 1);
    ck_assert_int_eq(atomic_load(&PX.adopt_other), 0);
    ck_assert_int_eq(atomic_load(&PX.adopt_thread_ok),
                     atomic_load(&PX.adopt_in) + atomic_load(&PX.adopt_up));
    ck_assert_int_eq(atomic_load(&PX.later_up_loop_ok), 1);
    ck_assert_int_eq(atomic_load(&PX.later_peers_ok), 1);
    ck_assert_int_eq(atomic_load(&w->nadopt_ev[1]), 1);
    nd_loop_stats_t ls;
    nd_loop_stats(w->wl[1], &ls);
    ck_assert_uint_eq(ls.moved_in, 2);
    ck_assert_uint_eq(CL.v[0].rxlen, 11);
    ck_assert(memcmp(CL.v[0].rx, "beforeafter", 11) == 0);
    ck_assert_int_eq(CL.v[0].had_error, 0);
    ck_assert_int_eq(PX.sclosed, 1);
    ck_assert_int_eq(PX.echo_closes, 1);
    world_end(w);
    free(CL.v);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* Issue 12: unread input moves with its socket; destroy() uncounts at once              */
/* ------------------------------------------------------------------------------------ */

#define UI_FIRST 5000
#define UI_LATER 3000

static struct {
    atomic_int move_rc;
    atomic_long read_before_move;
    long got, bad_at;
    int checked, sclosed, gclosed, moved;
} UI;

static void ui_maybe_done(void);

static void ui_maybe_done(void)
{
    if (UI.checked && UI.sclosed && CL.closed == CL.n)
        group_close_done(W, &UI.gclosed);
}

static void ui_checked(msg_t *m)
{
    UI.checked++;
    UI.got = m->a;
    UI.bad_at = m->b;
    ui_maybe_done();
}

static void ui_sclosed(msg_t *m)
{
    UI.sclosed++;
    ui_maybe_done();
}

static void ui_cl_close(client_t *c)
{
    ui_maybe_done();
}

static void ui_write_pat(nd_socket_t *s, long off, size_t n)
{
    unsigned char *b = malloc(n);

    ck_assert_ptr_nonnull(b);
    for (size_t i = 0; i < n; i++)
        b[i] = th_pat((uint64_t)off + i);
    ck_assert_int_ge(nd_socket_write(s, b, n, NULL, NULL), 0);
    free(b);
}

/* Owner: the socket is on its way; the rest goes to wherever it is now. */
static void ui_moved(msg_t *m)
{
    UI.moved++;
    ui_write_pat(CL.v[0].sock, UI_FIRST, UI_LATER);
    nd_socket_end(CL.v[0].sock, NULL, 0);
}

static void ui_cl_connect(client_t *c)
{
    ui_write_pat(c->sock, 0, UI_FIRST);
}

/* Worker 1: every byte in order, the ones read on worker 0 first. */
static void ui_data(void *self, const nd_event_t *ev, void *arg)
{
    wconn_t *c = arg;

    WCHECK(tl_worker == 1, "'data' of the moved socket on worker %d", tl_worker);
    for (size_t i = 0; i < ev->len; i++)
        if (c->r2 < 0 && (unsigned char)ev->data[i] != th_pat((uint64_t)c->r1 + i))
            c->r2 = c->r1 + (long)i;
    c->r1 += (long)ev->len;
}

static void ui_end(void *self, const nd_event_t *ev, void *arg)
{
    wconn_t *c = arg;

    report_now(ui_checked, c->r1, c->r2, NULL);
}

static void ui_on_adopt(nd_socket_t *sock, void *arg)
{
    wconn_t *c = arg;

    c->widx = 1;
    c->r2 = -1;
    list_add(&W->list[1], c);
    nd_socket_on(sock, ND_EV_CLOSE, wc_close, c);
    nd_socket_on(sock, ND_EV_DATA, ui_data, c);
    nd_socket_on(sock, ND_EV_END, ui_end, c);
}

/* Worker 0: waits until the first part has been read into the socket, then moves it. */
static void ui_poll(evutil_socket_t fd, short what, void *arg)
{
    wconn_t *c = arg;

    if (nd_socket_bytes_read(c->sock) < UI_FIRST) {
        struct timeval tv = {0, 2000};
        event_base_once(nd_loop_base(W->wl[0]), -1, EV_TIMEOUT, ui_poll, c, &tv);
        return;
    }
    atomic_store(&UI.read_before_move, (long)nd_socket_bytes_read(c->sock));
    atomic_store(&UI.move_rc, nd_socket_move(c->sock, W->wl[1], ui_on_adopt, c));
    report_now(ui_moved, 0, 0, NULL);
}

static void ui_conn(world_t *w, int widx, nd_socket_t *sock)
{
    wconn_t *c = wconn_new(sock, widx);
    struct timeval tv = {0, 2000};

    WCHECK(widx == 0, "roundrobin gave the first connection to worker %d", widx);
    /* No 'data' listener here: what arrives waits in the socket. */
    event_base_once(nd_loop_base(w->wl[0]), -1, EV_TIMEOUT, ui_poll, c, &tv);
}

static void ui_listening(void *self, const nd_event_t *ev, void *arg)
{
    client_start(&CL.v[0], group_port(W));
}

/* Issue 12.1 with a move: input read on worker 0 while nobody listened there travels with
 * the socket and comes first on worker 1, in order, before what is read there. */
START_TEST(test_move_carries_unread_input)
{
    world_t *w = world_new(2);

    memset(&UI, 0, sizeof(UI));
    clients_init(1);
    CL.on_connect = ui_cl_connect;
    CL.on_close = ui_cl_close;
    w->h.conn = ui_conn;
    w->h.sclosed = ui_sclosed;
    group_start(w, ND_BALANCE_ROUNDROBIN, ui_listening);
    th_run(w->owner, 10000);
    ck_assert_int_eq(atomic_load(&UI.move_rc), 0);
    ck_assert_int_eq(atomic_load(&UI.read_before_move), UI_FIRST);
    ck_assert_int_eq(UI.moved, 1);
    ck_assert_int_eq(UI.checked, 1);
    ck_assert_int_eq(UI.got, UI_FIRST + UI_LATER);
    ck_assert_int_eq(UI.bad_at, -1);
    ck_assert_int_eq(CL.v[0].had_error, 0);
    ck_assert_int_eq(UI.gclosed, 1);
    world_end(w);
    free(CL.v);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* Suite                                                                                */
/* ------------------------------------------------------------------------------------ */

int main(void)
{
    Suite *s = suite_create("moves");
    TCase *tc;

    tc = th_tcase(s, "pairs", 10);
    tcase_add_test(tc, pair_half_closing_before_the_call_refuses_the_move);
    tcase_add_test(tc, pair_half_closing_after_the_call_fails_the_move);
    tcase_add_test(tc, pair_half_closed_lets_the_other_move_alone);
    tcase_add_test(tc, pair_moves_together);
    tcase_add_test(tc, second_move_of_a_moving_pair_is_refused);

    tc = th_tcase(s, "move", 150);
    tcase_add_test(tc, test_move_refusals);
    tcase_add_test(tc, test_move_adopt_on_target_thread);
    tcase_add_test(tc, test_move_proxy_pair);
    tcase_add_test(tc, test_move_stream_integrity);
    tcase_add_test(tc, test_move_carries_unread_input);

    return th_run_suite(s);
}
