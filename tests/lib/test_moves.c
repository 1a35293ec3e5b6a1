/* SPDX-License-Identifier: MIT */
/*
 * Moving live sockets between loops when the other side disappears at each step: the
 * pair torn down before the call, between the call and the departure, after it. Each
 * case failed before its fix (the concurrency issue).
 */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

typedef struct pairt {
    th_log_t log; /* written by both threads, read after the join */
    nd_loop_t *a, *b;
    nd_socket_t *x, *y; /* x <-> y piped both ways, on loop a */
    int peer_fds[2];    /* the far ends of the two socketpairs */
    int move_rc;
    bool detached_alone;
} pairt_t;

static nd_socket_t *wrap(nd_loop_t *loop, int fd)
{
    nd_socket_options_t o;
    nd_socket_options_init(&o);
    o.fd = fd;
    o.readable = 1;
    o.writable = 1;
    nd_socket_t *s = nd_socket_new(loop, &o);
    ck_assert_ptr_nonnull(s);
    return s;
}

static void pair_setup(pairt_t *t)
{
    memset(t, 0, sizeof(*t));
    t->a = th_loop_new();
    t->b = th_loop_new();
    int sx[2], sy[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sx), 0);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sy), 0);
    t->x = wrap(t->a, sx[0]);
    t->y = wrap(t->a, sy[0]);
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

int main(void)
{
    Suite *s = suite_create("moves");
    TCase *tc = tcase_create("pairs");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, pair_half_closing_before_the_call_refuses_the_move);
    tcase_add_test(tc, pair_half_closing_after_the_call_fails_the_move);
    tcase_add_test(tc, pair_half_closed_lets_the_other_move_alone);
    tcase_add_test(tc, pair_moves_together);
    tcase_add_test(tc, second_move_of_a_moving_pair_is_refused);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
