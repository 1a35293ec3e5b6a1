/* SPDX-License-Identifier: MIT */
/*
 * The loop: one event_base, the pending queue that makes every event asynchronous, the ref
 * accounting behind Node's exit rule, the mailbox between threads, and the per-loop read
 * buffer and splice pipes. Handles are in handle.c, the resolver in resolve.c.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <event2/dns.h>

static void run_pending(evutil_socket_t fd, short what, void *arg);
static void on_mailbox(evutil_socket_t fd, short what, void *arg);
static void mailbox_settle(nd_loop_t *loop);
static void pool_trim(nd_loop_t *loop, int keep);

/* libevent 2.1 ends the process (event_sock_err, then exit) when a base cannot get its
 * descriptors: epoll's, and the socketpair it keeps for signals. Make sure that many are
 * free first, so a full table is EMFILE for the caller, as for any other call. */
#define ND__BASE_DESCRIPTORS 3

/* 0 when that many descriptors are free now, or the errno of the open that failed. */
static int base_descriptors_free(void)
{
    int fds[ND__BASE_DESCRIPTORS], got = 0, err = 0;
    while (got < ND__BASE_DESCRIPTORS) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            err = errno;
            break;
        }
        fds[got++] = fd;
    }
    while (got > 0)
        close(fds[--got]);
    return err;
}

ND_EXPORT nd_loop_t *nd_loop_new(void)
{
    nd_loop_t *loop = calloc(1, sizeof(*loop));
    if (!loop)
        return NULL; /* errno: ENOMEM */
    loop->mb_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int err = loop->mb_fd < 0 ? errno : base_descriptors_free();
    if (!err)
        err = pthread_mutex_init(&loop->mb_lock, NULL);
    if (err) {
        if (loop->mb_fd >= 0)
            close(loop->mb_fd);
        free(loop);
        errno = err; /* EMFILE or ENFILE: no descriptor for the mailbox or the base */
        return NULL;
    }
    /* One base per thread and never touched by another: no libevent locking at all. */
    struct event_config *cfg = event_config_new();
    if (cfg) {
        event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
        loop->base = event_base_new_with_config(cfg);
        event_config_free(cfg);
    }
    loop->scratch = malloc(ND__READ_CHUNK);
    if (!loop->base || !loop->scratch) {
        if (loop->base)
            event_base_free(loop->base);
        free(loop->scratch);
        pthread_mutex_destroy(&loop->mb_lock);
        close(loop->mb_fd);
        free(loop);
        errno = ENOMEM; /* with its descriptors there, a base fails only without memory */
        return NULL;
    }
    TAILQ_INIT(&loop->handles);
    TAILQ_INIT(&loop->pending);
    STAILQ_INIT(&loop->defers);
    STAILQ_INIT(&loop->mb_queue);
    event_assign(&loop->pending_ev, loop->base, -1, 0, run_pending, loop);
    /* The mailbox is a plain libevent event: it never counts in loop->alive. */
    event_assign(&loop->mb_ev, loop->base, loop->mb_fd, EV_READ | EV_PERSIST, on_mailbox, loop);
    event_add(&loop->mb_ev, NULL);
    return loop;
}

void nd__loop_arm_pending(nd_loop_t *loop)
{
    if (!loop->pending_armed) {
        loop->pending_armed = true;
        event_active(&loop->pending_ev, 0, 0);
    }
}

static bool has_pending(const nd_loop_t *loop)
{
    return !TAILQ_EMPTY(&loop->pending) || !STAILQ_EMPTY(&loop->defers);
}

/* Runs everything that was pending when the pass began; work queued meanwhile waits for
 * the next pass, so a callback that re-arms itself cannot starve I/O. */
static void run_pending(evutil_socket_t fd, short what, void *arg)
{
    nd_loop_t *loop = arg;
    loop->pending_armed = false;

    STAILQ_HEAD(, nd__defer) defers = STAILQ_HEAD_INITIALIZER(defers);
    STAILQ_CONCAT(&defers, &loop->defers);

    /* Handles stay on the loop's list until popped, so pend/unpend never see a foreign
     * list head; only as many as were queued when the pass began are run. */
    unsigned n = loop->npending;
    nd__handle_t *h;
    while (n-- > 0 && (h = TAILQ_FIRST(&loop->pending)) != NULL) {
        uint32_t bits = h->pending;
        nd__handle_unpend(h, bits);
        nd__handle_retain(h);
        if (h->kind == ND__SERVER)
            nd__server_process((nd_server_t *)h, bits);
        else
            nd__socket_process((nd_socket_t *)h, bits);
        nd__handle_release(h);
    }
    nd__defer_t *d;
    while ((d = STAILQ_FIRST(&defers)) != NULL) {
        STAILQ_REMOVE_HEAD(&defers, link);
        bool owned = d->owned; /* an embedded node may be freed by its own fn */
        d->fn(d->arg);
        if (owned)
            free(d);
    }
    if (loop->awake)
        mailbox_settle(loop);
    if (has_pending(loop))
        nd__loop_arm_pending(loop);
}

ND_EXPORT int nd_loop_run_once(nd_loop_t *loop, int nonblocking)
{
    if (!loop)
        return -EINVAL;
    loop->running = true;
    int rc = event_base_loop(loop->base, nonblocking ? EVLOOP_NONBLOCK : EVLOOP_ONCE);
    loop->running = false;
    if (rc < 0)
        return -EIO;
    return loop->alive > 0 || has_pending(loop) ||
           atomic_load_explicit(&loop->remote_refs, memory_order_acquire) > 0;
}

ND_EXPORT int nd_loop_run(nd_loop_t *loop)
{
    if (!loop)
        return -EINVAL;
    loop->stop = false;
    while (loop->alive > 0 || has_pending(loop) ||
           atomic_load_explicit(&loop->remote_refs, memory_order_acquire) > 0) {
        if (loop->stop)
            return 1;
        if (loop->stop_when_drained && !has_pending(loop))
            return 1;
        int rc = nd_loop_run_once(loop, 0);
        if (rc < 0)
            return rc;
    }
    return loop->stop ? 1 : 0;
}

ND_EXPORT void nd_loop_stop(nd_loop_t *loop)
{
    if (!loop)
        return;
    loop->stop = true;
    event_base_loopbreak(loop->base);
}

ND_EXPORT void nd_loop_free(nd_loop_t *loop)
{
    if (!loop)
        return;
    loop->freeing = true;
    if (loop->dns) {
        /* Fail what is in flight so every resolve's memory comes back now. */
        evdns_base_free(loop->dns, 1);
        loop->dns = NULL;
    }
    nd__handle_t *h;
    while ((h = TAILQ_FIRST(&loop->handles)) != NULL) {
        nd__handle_unpend(h, h->pending);
        if (h->kind == ND__SERVER)
            nd__server_free((nd_server_t *)h);
        else
            nd__socket_free((nd_socket_t *)h);
    }
    nd__defer_t *d;
    while ((d = STAILQ_FIRST(&loop->defers)) != NULL) {
        STAILQ_REMOVE_HEAD(&loop->defers, link);
        if (d->owned)
            free(d);
        else if (d->drop)
            d->drop(d->arg);
    }
    nd__msg_t *m;
    while ((m = STAILQ_FIRST(&loop->mb_queue)) != NULL) {
        STAILQ_REMOVE_HEAD(&loop->mb_queue, link);
        bool owned = m->owned;
        if (m->drop)
            m->drop(m->arg); /* may free m itself when embedded */
        if (owned)
            free(m);
    }
    event_del(&loop->mb_ev);
    close(loop->mb_fd);
    pthread_mutex_destroy(&loop->mb_lock);
    event_del(&loop->pending_ev);
    event_base_free(loop->base);
    pool_trim(loop, 0);
    free(loop->scratch);
    free(loop);
}

/* Closes pooled pipes until at most `keep` are left. */
static void pool_trim(nd_loop_t *loop, int keep)
{
    while (loop->npipes > keep) {
        loop->npipes--;
        close(loop->pipes[loop->npipes][0]);
        close(loop->pipes[loop->npipes][1]);
    }
}

int nd__loop_pipe_get(nd_loop_t *loop, int *r, int *w)
{
    if (loop->npipes > 0) {
        loop->npipes--;
        *r = loop->pipes[loop->npipes][0];
        *w = loop->pipes[loop->npipes][1];
        return 0;
    }
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
        return -errno;
    *r = fds[0];
    *w = fds[1];
    return 0;
}

void nd__loop_pipe_put(nd_loop_t *loop, int r, int w)
{
    if (loop->npipes < ND__PIPE_POOL && loop->npipes < loop->splicers) {
        loop->pipes[loop->npipes][0] = r;
        loop->pipes[loop->npipes][1] = w;
        loop->npipes++;
        return;
    }
    close(r);
    close(w);
}

void nd__loop_splicer_gone(nd_loop_t *loop)
{
    loop->splicers--;
    pool_trim(loop, loop->splicers);
}

ND_EXPORT struct event_base *nd_loop_base(nd_loop_t *loop)
{
    if (!loop)
        return NULL;
    return loop->base;
}

ND_EXPORT int nd_loop_handle_count(const nd_loop_t *loop)
{
    if (!loop)
        return -EINVAL;
    return loop->nhandles;
}

ND_EXPORT int nd_loop_alive_count(const nd_loop_t *loop)
{
    if (!loop)
        return -EINVAL;
    return loop->alive;
}

ND_EXPORT void nd_loop_ref(nd_loop_t *loop)
{
    if (!loop)
        return;
    loop->alive++;
}

ND_EXPORT void nd_loop_unref(nd_loop_t *loop)
{
    if (!loop)
        return;
    if (loop->alive > 0)
        loop->alive--;
}

ND_EXPORT int nd_loop_defer(nd_loop_t *loop, void (*fn)(void *arg), void *arg)
{
    if (!loop || !fn)
        return -EINVAL;
    nd__defer_t *d = malloc(sizeof(*d));
    if (!d)
        return -ENOMEM;
    nd__loop_defer_node(loop, d, fn, arg, NULL);
    d->owned = true;
    return 0;
}

void nd__loop_defer_node(nd_loop_t *loop, nd__defer_t *node, void (*fn)(void *arg), void *arg,
                         void (*drop)(void *arg))
{
    node->fn = fn;
    node->arg = arg;
    node->owned = false;
    node->drop = drop;
    STAILQ_INSERT_TAIL(&loop->defers, node, link);
    nd__loop_arm_pending(loop);
}

/* ------------------------------------------------------------------ mailbox */

static void post_node(nd_loop_t *loop, nd__msg_t *m);

ND_EXPORT int nd_loop_post(nd_loop_t *loop, void (*fn)(nd_loop_t *, void *), void *arg)
{
    if (!loop || !fn)
        return -EINVAL;
    nd__msg_t *m = malloc(sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->fn = fn;
    m->arg = arg;
    m->owned = true;
    m->drop = NULL;
    post_node(loop, m);
    return 0;
}

void nd__loop_post_node(nd_loop_t *loop, nd__msg_t *node, void (*fn)(nd_loop_t *, void *),
                        void *arg, void (*drop)(void *arg))
{
    node->fn = fn;
    node->arg = arg;
    node->owned = false;
    node->drop = drop;
    post_node(loop, node);
}

_Static_assert(sizeof(nd__msg_t) <= sizeof(nd_msg_t), "nd_msg_t must hold a mailbox node");
_Static_assert(_Alignof(nd__msg_t) <= _Alignof(nd_msg_t), "nd_msg_t must align a mailbox node");

ND_EXPORT void nd_loop_post_msg(nd_loop_t *loop, nd_msg_t *msg, void (*fn)(nd_loop_t *, void *),
                                void *arg, void (*drop)(void *arg))
{
    nd__loop_post_node(loop, (nd__msg_t *)(void *)msg, fn, arg, drop);
}

static void post_node(nd_loop_t *loop, nd__msg_t *m)
{
    pthread_mutex_lock(&loop->mb_lock);
    STAILQ_INSERT_TAIL(&loop->mb_queue, m, link);
    /* One wake per batch: the loop drains everything queued when it wakes. None while it
     * is busy: it looks at the queue before it waits again. */
    bool wake = !loop->mb_signalled && !atomic_load_explicit(&loop->mb_awake, memory_order_relaxed);
    if (wake)
        loop->mb_signalled = true;
    pthread_mutex_unlock(&loop->mb_lock);
    if (wake) {
        uint64_t one = 1;
        ssize_t n = write(loop->mb_fd, &one, sizeof(one));
        (void)n; /* an eventfd write only fails on overflow, which still wakes */
    }
}

static void run_messages(nd_loop_t *loop, struct nd__msg_list *batch);

static void on_mailbox(evutil_socket_t fd, short what, void *arg)
{
    nd_loop_t *loop = arg;
    loop->mb_credit = ND__MB_CREDIT;
    nd__loop_awake(loop);
    uint64_t v;
    ssize_t n = read(loop->mb_fd, &v, sizeof(v));
    (void)n;
    struct nd__msg_list batch = STAILQ_HEAD_INITIALIZER(batch);
    pthread_mutex_lock(&loop->mb_lock);
    STAILQ_CONCAT(&batch, &loop->mb_queue);
    loop->mb_signalled = false;
    pthread_mutex_unlock(&loop->mb_lock);
    run_messages(loop, &batch);
}

/* The end of a busy wake (run_pending): messages posted meanwhile without a wakeup run
 * now; with none left, posters write the eventfd again before the loop waits. */
static void mailbox_settle(nd_loop_t *loop)
{
    struct nd__msg_list batch = STAILQ_HEAD_INITIALIZER(batch);
    pthread_mutex_lock(&loop->mb_lock);
    if (STAILQ_EMPTY(&loop->mb_queue)) {
        atomic_store_explicit(&loop->mb_awake, false, memory_order_relaxed);
        loop->awake = false;
        if (loop->mb_credit)
            loop->mb_credit--;
    } else {
        STAILQ_CONCAT(&batch, &loop->mb_queue);
        loop->mb_credit = ND__MB_CREDIT;
    }
    pthread_mutex_unlock(&loop->mb_lock);
    if (!STAILQ_EMPTY(&batch)) {
        /* Still awake: look again once these have run. */
        nd__loop_arm_pending(loop);
        run_messages(loop, &batch);
    }
}

static void run_messages(nd_loop_t *loop, struct nd__msg_list *batch)
{
    nd__msg_t *m;
    while ((m = STAILQ_FIRST(batch)) != NULL) {
        STAILQ_REMOVE_HEAD(batch, link);
        bool owned = m->owned; /* a caller's node may be freed by its own fn */
        m->fn(loop, m->arg);
        if (owned)
            free(m);
    }
}

static void nop_msg(nd_loop_t *loop, void *arg) {}

ND_EXPORT void nd_loop_ref_mp(nd_loop_t *loop)
{
    if (!loop)
        return;
    atomic_fetch_add_explicit(&loop->remote_refs, 1, memory_order_acq_rel);
}

ND_EXPORT void nd_loop_unref_mp(nd_loop_t *loop)
{
    if (!loop)
        return;
    atomic_fetch_sub_explicit(&loop->remote_refs, 1, memory_order_acq_rel);
    /* Wake the loop so that it re-checks whether anything still keeps it running. */
    nd_loop_post(loop, nop_msg, NULL);
}

static void stop_msg(nd_loop_t *loop, void *arg)
{
    nd_loop_stop(loop);
}

ND_EXPORT int nd_loop_stop_post(nd_loop_t *loop)
{
    if (!loop)
        return -EINVAL;
    return nd_loop_post(loop, stop_msg, NULL);
}

ND_EXPORT void nd_loop_stats(const nd_loop_t *loop, nd_loop_stats_t *out)
{
    if (!loop || !out)
        return;
    const nd__loop_stats_t *st = &loop->stats;
#define COPY_STAT(name) out->name = atomic_load_explicit(&st->name, memory_order_relaxed);
    ND_LOOP_STATS(COPY_STAT)
#undef COPY_STAT
}
