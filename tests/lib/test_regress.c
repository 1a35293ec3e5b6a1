/* SPDX-License-Identifier: MIT */
/*
 * Regression tests for library bugs found while building on the library: each failed
 * before its fix.
 */
#include <stdio.h>
#include <string.h>

#include "harness.h"

typedef struct selfpipe {
    th_log_t log;
    char got[16];
    size_t ngot;
} selfpipe_t;

static void sp_connection(void *server, const nd_event_t *ev, void *arg)
{
    nd_socket_pipe(ev->socket, ev->socket, 1); /* echo */
    nd_server_close(server, NULL, NULL);
}

static void sp_data(void *sock, const nd_event_t *ev, void *arg)
{
    selfpipe_t *t = arg;
    memcpy(t->got + t->ngot, ev->data, ev->len < 8 ? ev->len : 8);
    t->ngot += ev->len;
}

static void sp_end(void *sock, const nd_event_t *ev, void *arg)
{
    th_log(&((selfpipe_t *)arg)->log, "end");
}

static void sp_close(void *sock, const nd_event_t *ev, void *arg)
{
    th_log(&((selfpipe_t *)arg)->log, "close");
}

static void sp_listening(void *server, const nd_event_t *ev, void *arg)
{
    nd_address_t a;
    nd_server_address(server, &a);
    nd_connect_options_t o = {.port = a.port, .host = "127.0.0.1", .allow_half_open = 1};
    nd_socket_t *c = nd_connect(nd_server_loop(server), &o, NULL, NULL);
    nd_socket_on(c, ND_EV_DATA, sp_data, arg);
    nd_socket_on(c, ND_EV_END, sp_end, arg);
    nd_socket_on(c, ND_EV_CLOSE, sp_close, arg);
    nd_socket_end(c, "abc", 3);
}

/* pipe(s, s) on an allowHalfOpen socket used to skip ending the destination because it
 * was the source itself: the echo never sent its FIN. */
START_TEST(self_pipe_ends_with_its_input_when_half_open)
{
    nd_loop_t *loop = th_loop_new();
    selfpipe_t t = {0};
    nd_server_options_t so = {.allow_half_open = 1};
    nd_server_t *s = nd_server_new(loop, &so, sp_connection, &t);
    nd_server_on(s, ND_EV_LISTENING, sp_listening, &t);
    ck_assert_int_eq(nd_server_listen(s, 0, "127.0.0.1", 0), 0);
    th_run(loop, 5000);
    ck_assert_int_eq(t.ngot, 3);
    ck_assert(memcmp(t.got, "abc", 3) == 0);
    ck_assert_str_eq(th_log_str(&t.log), "end,close");
    th_finish(loop);
}
END_TEST

typedef struct gclose {
    nd_loop_t *owner, *worker;
    int closes;
    int conns;
    nd_socket_t *held; /* on the worker */
    nd_server_t *group;
} gclose_t;

static void gc_worker_release(nd_loop_t *loop, void *arg)
{
    gclose_t *g = arg;
    nd_socket_destroy(g->held);
}

static void gc_connection(void *ws, const nd_event_t *ev, void *arg)
{
    gclose_t *g = arg;
    g->held = ev->socket;
    g->conns++;
}

static void gc_init(nd_server_t *ws, int index, void *arg)
{
    nd_server_on(ws, ND_EV_CONNECTION, gc_connection, arg);
}

static void gc_close(void *server, const nd_event_t *ev, void *arg)
{
    ((gclose_t *)arg)->closes++;
}

static void gc_timer(void *arg)
{
    gclose_t *g = arg;
    /* The worker lets its connection go only now, long after the owner's close(). */
    nd_loop_post(g->worker, gc_worker_release, g);
}

static void gc_client_connect(void *sock, const nd_event_t *ev, void *arg)
{
    gclose_t *g = arg;
    nd_server_close(g->group, gc_close, g);
    nd_socket_unref(sock); /* only the group's owed 'close' may keep the loop now */
    th_timer(g->owner, 100, gc_timer, g);
}

static void gc_listening(void *server, const nd_event_t *ev, void *arg)
{
    gclose_t *g = arg;
    nd_address_t a;
    nd_server_address(server, &a);
    nd_connect_options_t o = {.port = a.port, .host = "127.0.0.1"};
    nd_connect(g->owner, &o, gc_client_connect, g);
}

/* A closing group used to let its owner's loop end before the workers' last connection
 * closed, so its 'close' never came. */
START_TEST(closing_group_keeps_its_owner_loop_until_close)
{
    gclose_t g = {0};
    g.owner = th_loop_new();
    nd_loop_t *w = nd_loop_new();
    g.worker = w;
    nd_thread_t *t = nd_thread_start(w);
    g.group = nd_server_new_group(g.owner, NULL, &w, 1, ND_BALANCE_LEASTCONN, gc_init, &g);
    nd_server_on(g.group, ND_EV_LISTENING, gc_listening, &g);
    ck_assert_int_eq(nd_server_listen(g.group, 0, "127.0.0.1", 0), 0);
    th_run(g.owner, 5000);
    ck_assert_int_eq(g.conns, 1);
    ck_assert_int_eq(g.closes, 1);
    th_run(g.owner, 5000); /* the client sees the worker's FIN and closes */
    th_finish(g.owner);
    ck_assert_int_eq(nd_thread_join(t), 0);
}
END_TEST

typedef struct hwm {
    nd_loop_t *loop;
    size_t mark;
    nd_socket_t *server_sock, *client;
    size_t queued_when_paused;
    int polls;
} hwm_t;

static void hwm_connection(void *server, const nd_event_t *ev, void *arg)
{
    hwm_t *h = arg;
    h->server_sock = ev->socket;
    nd_socket_set_high_water_mark(ev->socket, h->mark);
    nd_socket_pipe(ev->socket, ev->socket, 1);
    nd_server_close(server, NULL, NULL);
}

static void hwm_poll(void *arg)
{
    hwm_t *h = arg;
    if (h->server_sock && nd_socket_is_paused(h->server_sock)) {
        h->queued_when_paused = nd_socket_buffer_size(h->server_sock);
        nd_socket_destroy(h->server_sock);
        nd_socket_destroy(h->client);
        return;
    }
    if (++h->polls < 250)
        th_timer(h->loop, 20, hwm_poll, h);
}

static void hwm_listening(void *server, const nd_event_t *ev, void *arg)
{
    hwm_t *h = arg;
    nd_address_t a;
    nd_server_address(server, &a);
    nd_connect_options_t o = {.port = a.port, .host = "127.0.0.1"};
    h->client = nd_connect(h->loop, &o, NULL, NULL);
    nd_socket_pause(h->client); /* a reader that never reads */
    static char chunk[65536];
    for (int i = 0; i < 512; i++) /* 32 MiB: far more than loopback buffers hold */
        nd_socket_write(h->client, chunk, sizeof(chunk), NULL, NULL);
    th_timer(h->loop, 20, hwm_poll, h);
}

static size_t run_hwm(size_t mark)
{
    hwm_t h = {0};
    h.loop = th_loop_new();
    h.mark = mark;
    nd_server_t *s = nd_server_new(h.loop, NULL, hwm_connection, &h);
    nd_server_on(s, ND_EV_LISTENING, hwm_listening, &h);
    ck_assert_int_eq(nd_server_listen(s, 0, "127.0.0.1", 0), 0);
    th_run(h.loop, 10000);
    th_finish(h.loop);
    return h.queued_when_paused;
}

/* A pipe pauses its source only once the destination queues more than its high-water
 * mark, and no more than one read (64 KiB) beyond it. */
START_TEST(pipe_pauses_past_the_high_water_mark)
{
    size_t q = run_hwm(256 * 1024);
    ck_assert_msg(q > 256 * 1024 && q <= 256 * 1024 + 65536, "queued when paused: %zu", q);
    q = run_hwm(0);
    ck_assert_msg(q > 0 && q <= 65536, "queued when paused with mark 0: %zu", q);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("regress");
    TCase *tc = tcase_create("regress");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, self_pipe_ends_with_its_input_when_half_open);
    tcase_add_test(tc, closing_group_keeps_its_owner_loop_until_close);
    tcase_add_test(tc, pipe_pauses_past_the_high_water_mark);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
