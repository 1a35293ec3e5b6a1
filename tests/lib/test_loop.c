/* SPDX-License-Identifier: MIT */
/*
 * The loop: Node's exit rule (only active, ref'd handles keep it running), deferred
 * callbacks, application refs, stop, and the mailbox seen from one other thread.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#include "harness.h"

START_TEST(test_empty_loop_returns)
{
    nd_loop_t *loop = th_loop_new();
    ck_assert_int_eq(nd_loop_run(loop), 0);
    ck_assert_int_eq(nd_loop_alive_count(loop), 0);
    th_finish(loop);
}
END_TEST

static void count_cb(void *arg)
{
    (*(int *)arg)++;
}

static void defer_again(void *arg)
{
    int *n = arg;
    if (++*n < 5)
        nd_loop_defer(NULL, count_cb, arg); /* NULL loop: refused, not a crash */
}

START_TEST(test_defer_runs_later_in_order)
{
    nd_loop_t *loop = th_loop_new();
    int n = 0;
    ck_assert_int_eq(nd_loop_defer(loop, count_cb, &n), 0);
    ck_assert_int_eq(nd_loop_defer(loop, count_cb, &n), 0);
    ck_assert_int_eq(n, 0); /* never from inside the call */
    ck_assert_int_eq(nd_loop_defer(loop, NULL, &n), -EINVAL);
    th_run(loop, 2000);
    ck_assert_int_eq(n, 2);
    int m = 0;
    nd_loop_defer(loop, defer_again, &m);
    th_run(loop, 2000);
    ck_assert_int_eq(m, 1);
    th_finish(loop);
}
END_TEST

static void unref_cb(void *arg)
{
    nd_loop_unref(arg);
}

START_TEST(test_app_ref_keeps_loop)
{
    nd_loop_t *loop = th_loop_new();
    nd_loop_ref(loop);
    ck_assert_int_eq(nd_loop_alive_count(loop), 1);
    th_timer(loop, 50, unref_cb, loop);
    th_run(loop, 2000);
    ck_assert_int_eq(nd_loop_alive_count(loop), 0);
    th_finish(loop);
}
END_TEST

START_TEST(test_unref_server_lets_loop_end)
{
    nd_loop_t *loop = th_loop_new();
    nd_server_t *s = nd_server_new(loop, NULL, NULL, NULL);
    ck_assert_int_eq(nd_server_listen(s, 0, "127.0.0.1", 0), 0);
    ck_assert_int_eq(nd_loop_alive_count(loop), 1);
    nd_server_unref(s);
    ck_assert_int_eq(nd_loop_alive_count(loop), 0);
    th_run(loop, 2000); /* returns although the server still listens */
    ck_assert_int_eq(nd_server_listening(s), 1);
    ck_assert_int_eq(nd_server_close(s, NULL, NULL), 0);
    th_run(loop, 2000);
    th_finish(loop);
}
END_TEST

static void stop_cb(void *arg)
{
    nd_loop_stop(arg);
}

START_TEST(test_stop_returns_one)
{
    nd_loop_t *loop = th_loop_new();
    nd_loop_ref(loop);
    nd_loop_defer(loop, stop_cb, loop);
    ck_assert_int_eq(nd_loop_run(loop), 1);
    nd_loop_unref(loop);
    th_finish(loop);
}
END_TEST

typedef struct {
    nd_loop_t *loop;
    atomic_int ran;
    int order_ok;
    int last;
} post_ctx_t;

static void post_cb(nd_loop_t *loop, void *arg)
{
    post_ctx_t *c = arg;
    int n = atomic_fetch_add(&c->ran, 1) + 1;
    if (n != c->last + 1)
        c->order_ok = 0;
    c->last = n;
    if (n == 1000)
        nd_loop_unref_mp(loop);
}

static void *poster(void *arg)
{
    post_ctx_t *c = arg;
    for (int i = 0; i < 1000; i++)
        nd_loop_post(c->loop, post_cb, c);
    return NULL;
}

/* A loop blocked in epoll wakes for messages from another thread and runs each once. */
START_TEST(test_post_from_thread)
{
    post_ctx_t c = {.order_ok = 1};
    c.loop = th_loop_new();
    atomic_init(&c.ran, 0);
    nd_loop_ref_mp(c.loop);
    pthread_t t;
    pthread_create(&t, NULL, poster, &c);
    th_run(c.loop, 5000);
    pthread_join(t, NULL);
    ck_assert_int_eq(atomic_load(&c.ran), 1000);
    ck_assert(c.order_ok);
    th_finish(c.loop);
}
END_TEST

/* The mailbox itself never keeps a loop alive. */
START_TEST(test_mailbox_is_unrefd)
{
    nd_loop_t *loop = th_loop_new();
    ck_assert_int_eq(nd_loop_run(loop), 0);
    th_finish(loop);
}
END_TEST

static void stats_cb(nd_loop_t *loop, void *arg)
{
    (void)loop;
    (void)arg;
}

START_TEST(test_thread_start_stop_join)
{
    nd_loop_t *loop = th_loop_new();
    nd_thread_t *t = nd_thread_start(loop);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(nd_loop_post(loop, stats_cb, NULL), 0);
    nd_loop_stats_t st;
    nd_loop_stats(loop, &st);
    ck_assert_int_eq(st.connections, 0);
    ck_assert_int_eq(nd_thread_join(t), 0); /* stops, joins and frees the loop */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("loop");
    TCase *tc = tcase_create("loop");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_empty_loop_returns);
    tcase_add_test(tc, test_defer_runs_later_in_order);
    tcase_add_test(tc, test_app_ref_keeps_loop);
    tcase_add_test(tc, test_unref_server_lets_loop_end);
    tcase_add_test(tc, test_stop_returns_one);
    tcase_add_test(tc, test_post_from_thread);
    tcase_add_test(tc, test_mailbox_is_unrefd);
    tcase_add_test(tc, test_thread_start_stop_join);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
