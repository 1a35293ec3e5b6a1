/* SPDX-License-Identifier: MIT */
/*
 * nd_thread_t: a loop running in a thread of its own, with every signal blocked there so
 * that signals reach the main loop only.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>

struct nd_thread {
    pthread_t tid;
    nd_loop_t *loop;
    bool stopped;
};

static void *thread_main(void *arg)
{
    nd_thread_t *t = arg;
    nd_loop_run(t->loop);
    return NULL;
}

ND_EXPORT nd_thread_t *nd_thread_start(nd_loop_t *loop)
{
    if (!loop) {
        errno = EINVAL;
        return NULL;
    }
    nd_thread_t *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL; /* errno: ENOMEM */
    t->loop = loop;
    /* Held until nd_thread_stop: a worker waits for work instead of exiting when idle. */
    nd_loop_ref_mp(loop);
    /* The new thread inherits this mask: block everything around its creation. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&t->tid, NULL, thread_main, t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        atomic_fetch_sub(&loop->remote_refs, 1);
        free(t);
        errno = rc;
        return NULL;
    }
    return t;
}

static void stop_msg(nd_loop_t *loop, void *arg)
{
    /* In mailbox order: everything posted before the stop has run; what they left pending
     * (a 'close' after a destroy) runs too, then the loop returns. */
    atomic_fetch_sub(&loop->remote_refs, 1);
    loop->stop_when_drained = true;
}

ND_EXPORT void nd_thread_stop(nd_thread_t *t)
{
    if (!t || t->stopped)
        return;
    t->stopped = true;
    if (nd_loop_post(t->loop, stop_msg, NULL) != 0) {
        atomic_fetch_sub(&t->loop->remote_refs, 1);
        nd_loop_stop_post(t->loop);
    }
}

ND_EXPORT int nd_thread_wait(nd_thread_t *t)
{
    if (!t)
        return -EINVAL;
    nd_thread_stop(t);
    int rc = pthread_join(t->tid, NULL);
    free(t);
    return -rc;
}

ND_EXPORT int nd_thread_join(nd_thread_t *t)
{
    if (!t)
        return -EINVAL;
    nd_thread_stop(t);
    int rc = pthread_join(t->tid, NULL);
    nd_loop_free(t->loop);
    free(t);
    return -rc;
}
