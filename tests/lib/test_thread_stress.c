/* SPDX-License-Identifier: MIT */
/*
 * Stress over a server group (world.h): many clients connecting, echoing, moving between
 * workers and closing at random, with every byte and every count checked at the end.
 */
#include "config.h"

#include "world.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------ */
/* Stress                                                                               */
/* ------------------------------------------------------------------------------------ */

#define SS_LIVE_MAX 64
#define SS_CLIENTS_MAX 20000

static struct {
    double deadline;
    unsigned rng;
    int live, winding, closing;
    int bad_data;
    char first_bad[128];
    int moves_asked, moves_done, adopted, moves_closed, sclosed, gclosed, final_count, got_final,
        done;
    uint64_t accepted_final;
    long wdestroys, wends, move_refused;
} SS;

static _Thread_local unsigned tl_rng = 1;

static unsigned rnd(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

static inline unsigned char ss_pat(int id, uint64_t off)
{
    return th_pat(((uint64_t)id << 32) + off);
}

static void ss_sdata(void *self, const nd_event_t *ev, void *arg);

static void ss_echo(wconn_t *c, const char *data, size_t len)
{
    /* r1: the worker ended it; writing after that would be an error of ours. */
    if (c->r1)
        return;
    int rc = nd_socket_write(c->sock, data, len, NULL, NULL);
    /* The peer may have ended or reset meanwhile: those failures are the client's doing. */
    WCHECK(rc >= 0 || rc == -EPIPE || rc == ND_ECLOSED || rc == ND_EWRITEAFTEREND, "echo write: %s",
           nd_err_name(rc));
}

static void ss_sdata(void *self, const nd_event_t *ev, void *arg)
{
    wconn_t *c = arg;

    if (c->moving) {
        hold_bytes(c, ev->data, ev->len);
        return;
    }
    ss_echo(c, ev->data, ev->len);
}

static void ss_maybe_done(void);

static void ss_adopt_rep(msg_t *m)
{
    SS.adopted++;
    ss_maybe_done();
}

static void ss_adopted(nd_socket_t *sock, void *arg)
{
    wconn_t *c = arg;

    wconn_adopted(c, sock);
    nd_socket_on(sock, ND_EV_DATA, ss_sdata, c);
    if (c->heldlen) {
        size_t n = c->heldlen;
        c->heldlen = 0;
        ss_echo(c, (const char *)c->held, n);
    }
    report_now(ss_adopt_rep, 0, 0, NULL);
}

static void ss_move_rep(msg_t *m)
{
    SS.moves_done += (int)m->a;
    SS.move_refused += m->b;
    ss_maybe_done();
}

/* Worker: one random action on one of its connections. */
static void ss_waction(msg_t *m)
{
    wlist_t *l = &W->list[tl_worker];

    if (l->n == 0)
        return;
    wconn_t *c = l->v[rnd(&tl_rng) % (unsigned)l->n];
    switch (m->a) {
    case 0: {
        int to = (tl_worker + 1 + (int)(rnd(&tl_rng) % (unsigned)(W->nw - 1))) % W->nw;
        list_remove(l, c);
        c->moving = 1;
        c->target = to;
        int rc = nd_socket_move(c->sock, W->wl[to], ss_adopted, c);
        if (rc == ND_ECLOSED) {
            /* Destroyed by an error and about to close: it stays here. */
            c->moving = 0;
            list_add(l, c);
        } else {
            WCHECK(rc == 0, "nd_socket_move: %s", nd_err_name(rc));
        }
        report_now(ss_move_rep, rc == 0, rc != 0, NULL);
        break;
    }
    case 1:
        list_remove(l, c);
        nd_socket_destroy(c->sock);
        break;
    default:
        if (!c->r1) {
            c->r1 = 1;
            nd_socket_end(c->sock, NULL, 0);
        }
        break;
    }
}

static void ss_conn(world_t *w, int widx, nd_socket_t *sock)
{
    wconn_t *c = keep_conn(w, widx, sock);

    if (tl_rng == 1)
        tl_rng = 7919u * (unsigned)(widx + 1);
    nd_socket_on(sock, ND_EV_DATA, ss_sdata, c);
}

static void ss_maybe_done(void)
{
    if (!SS.done && SS.got_final && SS.sclosed == (int)SS.accepted_final &&
        SS.adopted + SS.moves_closed == SS.moves_done) {
        SS.done = 1;
        nd_server_release(W->group);
        world_done(W);
    }
}

static void ss_move_closed(msg_t *m)
{
    SS.moves_closed++;
    ss_maybe_done();
}

static void ss_sclosed(msg_t *m)
{
    SS.sclosed++;
    ss_maybe_done();
}

static void ss_final(nd_server_t *server, int err, int count, void *arg)
{
    ck_assert_int_eq(err, 0);
    SS.final_count = count;
    SS.got_final = 1;
    ss_maybe_done();
}

static void ss_gclose(void *self, const nd_event_t *ev, void *arg)
{
    nd_server_stats_t st;

    SS.gclosed++;
    nd_server_stats(self, &st);
    SS.accepted_final = st.accepted;
    ck_assert_int_eq(nd_server_get_connections(self, ss_final, NULL), 0);
}

static void ss_try_close(void)
{
    if (SS.winding && CL.closed == CL.n && !SS.closing) {
        SS.closing = 1;
        /* Held so that getConnections can still be asked after its 'close'. */
        nd_server_hold(W->group);
        ck_assert_int_eq(nd_server_close(W->group, ss_gclose, NULL), 0);
    }
}

static void ss_cl_close(client_t *c)
{
    SS.live--;
    ss_try_close();
}

static void ss_cl_data(client_t *c, const char *data, size_t len)
{
    const unsigned char *b = (const unsigned char *)data;

    for (size_t j = 0; j < len; j++)
        if (b[j] != ss_pat(c->id, c->rcvd + j)) {
            if (SS.bad_data++ == 0)
                snprintf(SS.first_bad, sizeof(SS.first_bad), "client %d, byte %lu", c->id,
                         (unsigned long)(c->rcvd + j));
            break;
        }
    c->rcvd += len;
    OCHECK(c->rcvd <= c->sent, "client %d got %lu bytes back, sent %lu", c->id,
           (unsigned long)c->rcvd, (unsigned long)c->sent);
}

static client_t *ss_pick(void)
{
    for (int tries = 0; tries < 8 && CL.n > 0; tries++) {
        client_t *c = &CL.v[rnd(&SS.rng) % (unsigned)CL.n];
        if (c->sock && !c->ok && c->ends == 0 && c->errors == 0)
            return c;
    }
    return NULL;
}

static void ss_tick(void *arg)
{
    world_t *w = W;

    if (th_now_ms() >= SS.deadline) {
        SS.winding = 1;
        clients_destroy_all();
        ss_try_close();
        return;
    }
    for (int k = 0; k < 4; k++) {
        unsigned r = rnd(&SS.rng) % 100;
        client_t *c;
        if (r < 25) {
            if (SS.live < SS_LIVE_MAX && CL.n < SS_CLIENTS_MAX) {
                client_start(&CL.v[CL.n], w->port);
                CL.n++;
                SS.live++;
            }
        } else if (r < 55) {
            if ((c = ss_pick()) != NULL) {
                unsigned char buf[1024];
                size_t n = 1 + rnd(&SS.rng) % sizeof(buf);
                for (size_t j = 0; j < n; j++)
                    buf[j] = ss_pat(c->id, c->sent + j);
                int rc = nd_socket_write(c->sock, buf, n, NULL, NULL);
                /* A FIN or reset already read may not have been emitted yet. */
                OCHECK(rc >= 0 || rc == -EPIPE || rc == ND_ECLOSED, "client write: %s",
                       nd_err_name(rc));
                c->sent += n;
            }
        } else if (r < 62) {
            if ((c = ss_pick()) != NULL) {
                c->ok = 1; /* here: ended by us, so no more writes */
                nd_socket_end(c->sock, NULL, 0);
            }
        } else if (r < 68) {
            if ((c = ss_pick()) != NULL)
                nd_socket_destroy(c->sock);
        } else {
            long what = r < 88 ? 0 : r < 94 ? 1 : 2;
            if (what == 0)
                SS.moves_asked++;
            post_msg(w->wl[rnd(&SS.rng) % (unsigned)w->nw], ss_waction, 0, what, 0, NULL);
        }
    }
    th_timer(w->owner, 1, ss_tick, NULL);
}

static void ss_listening(void *self, const nd_event_t *ev, void *arg)
{
    group_port(W);
    SS.deadline = th_now_ms() + (th_sanitized() ? 500 : 2000);
    th_timer(W->owner, 1, ss_tick, NULL);
}

/* Four worker loops under random connects, writes, ends, destroys and moves for a while:
 * echoes stay in order, and at the end no handle is left on any loop and getConnections
 * says 0. */
START_TEST(test_group_stress)
{
    world_t *w = world_new(4);

    th_need_fds(SS_LIVE_MAX * 4 + 400);
    SS.rng = 12345;
    clients_init(SS_CLIENTS_MAX);
    CL.n = 0;
    CL.on_data = ss_cl_data;
    CL.on_close = ss_cl_close;
    w->h.conn = ss_conn;
    w->h.sclosed = ss_sclosed;
    w->h.move_closed = ss_move_closed;
    group_start(w, ND_BALANCE_LEASTCONN, ss_listening);
    th_run(w->owner, 30000);
    ck_assert_msg(SS.bad_data == 0, "%d clients got wrong echo; first: %s", SS.bad_data,
                  SS.first_bad);
    ck_assert_int_eq(SS.gclosed, 1);
    ck_assert_int_eq(SS.got_final, 1);
    ck_assert_int_eq(SS.final_count, 0);
    ck_assert_int_eq(SS.sclosed, (int)SS.accepted_final);
    int sum = 0, adopts = 0;
    for (int i = 0; i < w->nw; i++) {
        sum += atomic_load(&w->nconn[i]);
        adopts += atomic_load(&w->nadopt_ev[i]);
    }
    ck_assert_int_eq(sum, (int)SS.accepted_final);
    ck_assert_int_eq(SS.adopted + SS.moves_closed, SS.moves_done);
    ck_assert_int_eq(adopts, SS.adopted);
    ck_assert_int_gt(CL.n, 0);
    ck_assert_int_gt(SS.moves_done, 0);
    world_end(w);
    free(CL.v);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* Suite                                                                                */
/* ------------------------------------------------------------------------------------ */

int main(void)
{
    Suite *s = suite_create("thread_stress");
    TCase *tc;

    tc = th_tcase(s, "stress", 60);
    tcase_add_test(tc, test_group_stress);
    return th_run_suite(s);
}
