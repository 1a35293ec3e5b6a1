/* SPDX-License-Identifier: MIT */
/*
 * Mailboxes: nd_loop_post from many threads (order, exactly once, on the loop's thread),
 * a post waking a loop blocked in the kernel, an empty mailbox keeping nothing alive, and
 * nd_loop_stop_post / nd_thread_stop ending a loop another thread runs.
 */
#include "config.h"

#include "harness.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NSENDERS 4

static struct {
    nd_loop_t *loop;
    pthread_t tid;
    pthread_barrier_t go;
    int per;
    int next[NSENDERS]; /* owner thread only */
    long total;
    int out_of_order, wrong_thread;
    char first_bad[128];
    atomic_int post_failed;
} MB;

static void mb_msg(nd_loop_t *loop, void *arg)
{
    uintptr_t v = (uintptr_t)arg;
    int s = (int)(v >> 24), seq = (int)(v & 0xffffff);

    if (!pthread_equal(pthread_self(), MB.tid))
        MB.wrong_thread++;
    if (s < 0 || s >= NSENDERS || seq != MB.next[s]) {
        if (MB.out_of_order++ == 0)
            snprintf(MB.first_bad, sizeof(MB.first_bad), "sender %d: got %d, expected %d", s, seq,
                     s >= 0 && s < NSENDERS ? MB.next[s] : -1);
    } else {
        MB.next[s] = seq + 1;
    }
    if (++MB.total == (long)NSENDERS * MB.per)
        nd_loop_unref(loop);
}

static void *mb_sender(void *arg)
{
    uintptr_t s = (uintptr_t)arg;

    pthread_barrier_wait(&MB.go);
    for (int seq = 0; seq < MB.per; seq++)
        if (nd_loop_post(MB.loop, mb_msg, (void *)(s << 24 | (uintptr_t)seq)) != 0)
            atomic_fetch_add(&MB.post_failed, 1);
    return NULL;
}

/* Four threads post 10000 messages each at once: every one runs exactly once, on the
 * loop's thread, in the order its sender posted. */
START_TEST(test_post_many_senders)
{
    pthread_t th[NSENDERS];

    MB.loop = th_loop_new();
    MB.tid = pthread_self();
    MB.per = th_sanitized() ? 2500 : 10000;
    pthread_barrier_init(&MB.go, NULL, NSENDERS);
    /* The mailbox keeps nothing alive: hold the loop until the last message. */
    nd_loop_ref(MB.loop);
    for (uintptr_t s = 0; s < NSENDERS; s++)
        ck_assert_int_eq(pthread_create(&th[s], NULL, mb_sender, (void *)s), 0);
    th_run(MB.loop, 20000);
    for (int s = 0; s < NSENDERS; s++)
        pthread_join(th[s], NULL);
    /* Anything posted twice would still sit in the mailbox: give it two more turns. */
    nd_loop_run_once(MB.loop, 1);
    nd_loop_run_once(MB.loop, 1);
    ck_assert_int_eq(atomic_load(&MB.post_failed), 0);
    ck_assert_msg(MB.out_of_order == 0, "%d out of order; first: %s", MB.out_of_order,
                  MB.first_bad);
    ck_assert_int_eq(MB.wrong_thread, 0);
    ck_assert_int_eq(MB.total, (long)NSENDERS * MB.per);
    for (int s = 0; s < NSENDERS; s++)
        ck_assert_int_eq(MB.next[s], MB.per);
    pthread_barrier_destroy(&MB.go);
    th_finish(MB.loop);
}
END_TEST

static struct {
    nd_loop_t *loop;
    pid_t tid;
    atomic_int entered;
    atomic_int ran;
    double posted_at, ran_at;
    int state_seen;
} WK;

static void wk_entered(void *arg)
{
    atomic_store(&WK.entered, 1);
}

static void wk_msg(nd_loop_t *loop, void *arg)
{
    WK.ran_at = th_now_ms();
    atomic_fetch_add(&WK.ran, 1);
    nd_loop_unref(loop);
}

/* The state letter of a thread of this process ('S' while it sleeps in epoll_wait). */
static char thread_state(pid_t tid)
{
    char path[64], buf[512];
    FILE *f;

    snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
    f = fopen(path, "r");
    if (!f)
        return '?';
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return (rp && rp[1] == ' ') ? rp[2] : '?';
}

static void *wk_poster(void *arg)
{
    /* Wait until the loop thread has been inside the loop and is asleep: nothing but the
     * post can wake it then (the watchdog would, much later, and fails the test). */
    while (!atomic_load(&WK.entered))
        sched_yield();
    for (;;) {
        char st = thread_state(WK.tid);
        if (st == 'S' || st == '?') {
            WK.state_seen = st;
            break;
        }
        sched_yield();
    }
    WK.posted_at = th_now_ms();
    if (nd_loop_post(WK.loop, wk_msg, NULL) != 0)
        atomic_store(&WK.ran, -1000);
    return NULL;
}

START_TEST(test_post_wakes_blocked_loop)
{
    pthread_t th;

    WK.loop = th_loop_new();
    WK.tid = (pid_t)syscall(SYS_gettid);
    nd_loop_ref(WK.loop);
    ck_assert_int_eq(nd_loop_defer(WK.loop, wk_entered, NULL), 0);
    ck_assert_int_eq(pthread_create(&th, NULL, wk_poster, NULL), 0);
    th_run(WK.loop, 10000);
    pthread_join(th, NULL);
    ck_assert_int_eq(atomic_load(&WK.ran), 1);
    ck_assert_int_eq(WK.state_seen, 'S');
    /* Woken by the post itself, not by some later timer. */
    ck_assert_msg(WK.ran_at - WK.posted_at < th_scale(1000), "the post took %.0f ms to run",
                  WK.ran_at - WK.posted_at);
    th_finish(WK.loop);
}
END_TEST

static int na_ran;

static void na_msg(nd_loop_t *loop, void *arg)
{
    na_ran++;
    nd_loop_unref(loop);
}

/* A loop whose mailbox has been used, and is empty, does not keep nd_loop_run() going. */
START_TEST(test_mailbox_not_alive)
{
    nd_loop_t *loop = th_loop_new();

    th_run(loop, 2000);
    nd_loop_ref(loop);
    ck_assert_int_eq(nd_loop_post(loop, na_msg, NULL), 0);
    th_run(loop, 2000);
    ck_assert_int_eq(na_ran, 1);
    ck_assert_int_eq(nd_loop_alive_count(loop), 0);
    /* Nothing posted: the mailbox alone must not block. */
    ck_assert_int_eq(nd_loop_run(loop), 0);
    ck_assert_int_eq(na_ran, 1);
    ck_assert_int_eq(nd_loop_post(NULL, na_msg, NULL), -EINVAL);
    ck_assert_int_eq(nd_loop_post(loop, NULL, NULL), -EINVAL);
    th_finish(loop);
}
END_TEST

static struct {
    nd_loop_t *loop;
    sem_t started;
    int rc;
    pthread_t runner;
} SP;

static void *sp_run(void *arg)
{
    SP.rc = nd_loop_run(SP.loop);
    return NULL;
}

static void sp_started(nd_loop_t *loop, void *arg)
{
    SP.runner = pthread_self();
    sem_post(&SP.started);
}

/* nd_loop_stop_post ends a loop another thread runs, even one kept alive by a ref; and a
 * loop started with nd_thread_start ends with nd_thread_stop and is freed by join. */
START_TEST(test_stop_post_stops_worker)
{
    pthread_t th;

    SP.loop = th_loop_new();
    sem_init(&SP.started, 0, 0);
    nd_loop_ref_mp(SP.loop);
    ck_assert_int_eq(pthread_create(&th, NULL, sp_run, NULL), 0);
    ck_assert_int_eq(nd_loop_post(SP.loop, sp_started, NULL), 0);
    th_sem_wait(&SP.started, 5000, "the loop to run a message");
    ck_assert_int_eq(nd_loop_stop_post(SP.loop), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_int_eq(SP.rc, 1);
    ck_assert(pthread_equal(SP.runner, th));
    nd_loop_unref_mp(SP.loop);
    th_finish(SP.loop);

    /* Through nd_thread: the loop runs on a thread of its own until stopped. */
    SP.loop = th_loop_new();
    nd_thread_t *t = nd_thread_start(SP.loop);
    ck_assert_msg(t != NULL, "nd_thread_start: %s", strerror(errno));
    ck_assert_int_eq(nd_loop_post(SP.loop, sp_started, NULL), 0);
    th_sem_wait(&SP.started, 5000, "the thread to run a message");
    ck_assert(!pthread_equal(SP.runner, pthread_self()));
    nd_thread_stop(t);
    ck_assert_int_eq(nd_thread_join(t), 0);
    sem_destroy(&SP.started);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* Suite                                                                                */
/* ------------------------------------------------------------------------------------ */

int main(void)
{
    Suite *s = suite_create("mailbox");
    TCase *tc;

    tc = th_tcase(s, "mailbox", 30);
    tcase_add_test(tc, test_post_many_senders);
    tcase_add_test(tc, test_post_wakes_blocked_loop);
    tcase_add_test(tc, test_mailbox_not_alive);
    tcase_add_test(tc, test_stop_post_stops_worker);
    return th_run_suite(s);
}
