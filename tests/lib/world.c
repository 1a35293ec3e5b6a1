/* SPDX-License-Identifier: MIT */
/*
 * The thread suites' world (world.h): the owner loop and the worker loops, closures posted
 * between them, the clients on the owner loop, and failures reported from worker threads.
 */
#include "config.h"

#include "world.h"

#include <errno.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Thread_local int tl_worker = -1;

/* ------------------------------------------------------------------------------------ */
/* Failures off the owner thread                                                        */
/* ------------------------------------------------------------------------------------ */

/* The first failure on any thread, kept until the owner thread aborts with it. */
static nd_loop_t *g_owner;
static pthread_t g_owner_tid;
static pthread_mutex_t g_fail_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_fail[1024];
static atomic_int g_failed;

static void fail_now(void)
{
    char msg[sizeof(g_fail)];

    pthread_mutex_lock(&g_fail_mu);
    memcpy(msg, g_fail, sizeof(msg));
    pthread_mutex_unlock(&g_fail_mu);
    ck_abort_msg("%s", msg);
}

static void fail_on_owner(nd_loop_t *loop, void *arg)
{
    fail_now();
}

static void check_no_worker_failure(void)
{
    if (atomic_load(&g_failed))
        fail_now();
}

void world_fail(const char *file, int line, const char *fmt, ...)
{
    if (atomic_fetch_add(&g_failed, 1) == 0) {
        va_list ap;

        pthread_mutex_lock(&g_fail_mu);
        int n = snprintf(g_fail, sizeof(g_fail), "%s:%d: ", file, line);
        va_start(ap, fmt);
        vsnprintf(g_fail + n, sizeof(g_fail) - (size_t)n, fmt, ap);
        va_end(ap);
        pthread_mutex_unlock(&g_fail_mu);
        if (g_owner && pthread_equal(pthread_self(), g_owner_tid))
            fail_now();
        if (g_owner)
            nd_loop_post(g_owner, fail_on_owner, NULL);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Messages: a closure posted to a loop                                                 */
/* ------------------------------------------------------------------------------------ */

static void msg_run(nd_loop_t *loop, void *arg)
{
    msg_t *m = arg;

    m->fn(m);
    free(m);
}

msg_t *msg_new(msg_fn fn, int widx, long a, long b, void *p)
{
    msg_t *m = calloc(1, sizeof(*m));

    if (!m)
        abort();
    m->fn = fn;
    m->widx = widx;
    m->a = a;
    m->b = b;
    m->p = p;
    return m;
}

void send_msg(nd_loop_t *loop, msg_t *m)
{
    int rc = nd_loop_post(loop, msg_run, m);

    WCHECK(rc == 0, "nd_loop_post: %s", nd_err_name(rc));
    if (rc != 0)
        free(m);
}

void post_msg(nd_loop_t *loop, msg_fn fn, int widx, long a, long b, void *p)
{
    send_msg(loop, msg_new(fn, widx, a, b, p));
}

static void late_send(void *arg)
{
    send_msg(g_owner, arg);
}

/* ------------------------------------------------------------------------------------ */
/* The world: the owner loop (this thread) and worker loops in threads                  */
/* ------------------------------------------------------------------------------------ */

world_t *W;

void list_add(wlist_t *l, wconn_t *c)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = realloc(l->v, sizeof(*l->v) * (size_t)l->cap);
        if (!l->v)
            abort();
    }
    c->slot = l->n;
    l->v[l->n++] = c;
}

void list_remove(wlist_t *l, wconn_t *c)
{
    if (c->slot < 0)
        return;
    WCHECK(c->slot < l->n && l->v[c->slot] == c, "connection list out of step");
    l->v[c->slot] = l->v[--l->n];
    l->v[c->slot]->slot = c->slot;
    c->slot = -1;
}

wconn_t *wconn_new(nd_socket_t *sock, int widx)
{
    wconn_t *c = calloc(1, sizeof(*c));

    if (!c)
        abort();
    c->sock = sock;
    c->widx = widx;
    c->slot = -1;
    c->id = -1;
    return c;
}

static void wconn_free(wconn_t *c)
{
    free(c->held);
    free(c);
}

void hold_bytes(wconn_t *c, const char *data, size_t len)
{
    if (c->heldlen + len > c->heldcap) {
        c->heldcap = (c->heldlen + len) * 2;
        c->held = realloc(c->held, c->heldcap);
        if (!c->held)
            abort();
    }
    memcpy(c->held + c->heldlen, data, len);
    c->heldlen += len;
}

/*
 * From a worker: runs fn on the owner, posted from this worker's next turn. A connection
 * counts until its 'close' has run, so a report made from inside 'close' could reach the
 * owner before the count drops; from the next turn it cannot.
 */
static void report_late(msg_fn fn, long a, long b, void *p)
{
    int rc = nd_loop_defer(W->wl[tl_worker], late_send, msg_new(fn, tl_worker, a, b, p));

    WCHECK(rc == 0, "nd_loop_defer: %s", nd_err_name(rc));
}

void report_now(msg_fn fn, long a, long b, void *p)
{
    post_msg(W->owner, fn, tl_worker, a, b, p);
}

static void hello(msg_t *m)
{
    tl_worker = m->widx;
    W->wtid[m->widx] = pthread_self();
    sem_post(&W->sem);
}

/* The owner loop plus nw worker loops, each running in its own thread. */
world_t *world_new(int nw)
{
    world_t *w = calloc(1, sizeof(*w));

    ck_assert_ptr_nonnull(w);
    W = w;
    w->owner = th_loop_new();
    g_owner = w->owner;
    g_owner_tid = pthread_self();
    w->nw = nw;
    ck_assert_int_eq(sem_init(&w->sem, 0, 0), 0);
    for (int i = 0; i < nw; i++) {
        w->wl[i] = th_loop_new();
        w->wt[i] = nd_thread_start(w->wl[i]);
        ck_assert_msg(w->wt[i] != NULL, "nd_thread_start: %s", strerror(errno));
        post_msg(w->wl[i], hello, i, 0, 0, NULL);
    }
    for (int i = 0; i < nw; i++)
        th_sem_wait(&w->sem, 5000, "workers to start");
    for (int i = 0; i < nw; i++)
        ck_assert_msg(!pthread_equal(w->wtid[i], pthread_self()),
                      "worker %d runs on the test's thread", i);
    /* The test releases this ref when everything it waits for has arrived, so reports
     * still in the owner's mailbox are never left behind. */
    nd_loop_ref(w->owner);
    w->waiting = 1;
    return w;
}

void world_done(world_t *w)
{
    if (w->waiting) {
        w->waiting = 0;
        nd_loop_unref(w->owner);
    }
}

/* On worker i: its handle count, once in-flight closes have finished (bounded wait). */
static void probe_try(evutil_socket_t fd, short what, void *arg)
{
    int i = (int)(intptr_t)arg;
    int n = nd_loop_handle_count(W->wl[i]);

    if (n == 0 || th_now_ms() - W->probe_start[i] > th_scale(2000)) {
        W->left[i] = n;
        sem_post(&W->sem);
        return;
    }
    struct timeval tv = {0, 1000};
    event_base_once(nd_loop_base(W->wl[i]), -1, EV_TIMEOUT, probe_try, arg, &tv);
}

static void probe_start(msg_t *m)
{
    W->probe_start[m->widx] = th_now_ms();
    probe_try(-1, 0, (void *)(intptr_t)m->widx);
}

/* After th_run(owner): every worker loop is empty, the threads stop, the owner is empty. */
void world_end(world_t *w)
{
    check_no_worker_failure();
    for (int i = 0; i < w->nw; i++)
        post_msg(w->wl[i], probe_start, i, 0, 0, NULL);
    for (int i = 0; i < w->nw; i++)
        th_sem_wait(&w->sem, 5000, "the workers' handle counts");
    check_no_worker_failure();
    for (int i = 0; i < w->nw; i++)
        ck_assert_msg(w->left[i] == 0, "%d handle(s) still alive on worker %d", w->left[i], i);
    for (int i = 0; i < w->nw; i++) {
        nd_thread_stop(w->wt[i]);
        ck_assert_int_eq(nd_thread_join(w->wt[i]), 0);
    }
    check_no_worker_failure();
    for (int i = 0; i < w->nw; i++)
        free(w->list[i].v);
    sem_destroy(&w->sem);
    th_finish(w->owner);
    g_owner = NULL;
    W = NULL;
    free(w);
}

static void w_on_connection(void *self, const nd_event_t *ev, void *arg)
{
    world_t *w = arg;
    int i = tl_worker;

    WCHECK(i >= 0 && i < w->nw, "'connection' on a thread that is no worker (%d)", i);
    WCHECK(self == w->wsrv[i], "'connection' on worker %d from another worker's server", i);
    WCHECK(nd_socket_loop(ev->socket) == w->wl[i], "connection on worker %d has another loop", i);
    WCHECK(nd_socket_server(ev->socket) == self, "socket's server is not the worker's server");
    atomic_fetch_add(&w->nconn[i], 1);
    if (w->h.conn)
        w->h.conn(w, i, ev->socket);
}

static void w_on_adopt_ev(void *self, const nd_event_t *ev, void *arg)
{
    world_t *w = arg;
    int i = tl_worker;

    WCHECK(i >= 0 && i < w->nw, "'adopt' on a thread that is no worker (%d)", i);
    WCHECK(self == w->wsrv[i], "'adopt' on worker %d from another worker's server", i);
    WCHECK(ev->socket != NULL && nd_socket_loop(ev->socket) == w->wl[i],
           "adopted socket is not on worker %d's loop", i);
    atomic_fetch_add(&w->nadopt_ev[i], 1);
    if (w->h.adopt_ev)
        w->h.adopt_ev(w, i, ev->socket);
}

static void w_init(nd_server_t *ws, int index, void *arg)
{
    world_t *w = arg;

    WCHECK(tl_worker == index, "init for worker %d ran on the thread of %d", index, tl_worker);
    WCHECK(nd_server_worker_index(ws) == index, "worker index %d, expected %d",
           nd_server_worker_index(ws), index);
    WCHECK(nd_server_loop(ws) == w->wl[index], "worker-side server on another loop");
    w->wsrv[index] = ws;
    nd_server_on(ws, ND_EV_CONNECTION, w_on_connection, w);
    nd_server_on(ws, ND_EV_ADOPT, w_on_adopt_ev, w);
    atomic_fetch_add(&w->ninit, 1);
}

static void on_group_error(void *self, const nd_event_t *ev, void *arg)
{
    ck_abort_msg("group server error: %s", ev->error->message);
}

nd_server_t *group_new(world_t *w, const nd_server_options_t *opts, int nw, nd_balance_t b)
{
    nd_server_t *g = nd_server_new_group(w->owner, opts, w->wl, nw, b, w_init, w);

    ck_assert_msg(g != NULL, "nd_server_new_group: %s", strerror(errno));
    w->group = g;
    ck_assert_int_eq(nd_server_on(g, ND_EV_ERROR, on_group_error, w), 0);
    return g;
}

void group_start(world_t *w, nd_balance_t b, nd_listener_fn on_listening)
{
    nd_server_t *g = group_new(w, &w->opts, w->nw, b);

    ck_assert_int_eq(nd_server_on(g, ND_EV_LISTENING, on_listening, w), 0);
    ck_assert_int_eq(nd_server_listen(g, 0, "127.0.0.1", 2048), 0);
}

/* Inside 'listening'. */
int group_port(world_t *w)
{
    nd_address_t a;

    ck_assert_int_eq(nd_server_address(w->group, &a), 0);
    ck_assert_int_gt(a.port, 0);
    w->port = a.port;
    return a.port;
}

static void group_closed(void *self, const nd_event_t *ev, void *arg)
{
    (*(int *)arg)++;
    world_done(W);
}

void group_close_done(world_t *w, int *closed)
{
    ck_assert_int_eq(nd_server_close(w->group, group_closed, closed), 0);
}

/* The generic server-side 'close': off the list, reported late with the bytes read. */
void wc_close(void *self, const nd_event_t *ev, void *arg)
{
    wconn_t *c = arg;
    int i = tl_worker;

    WCHECK(i == c->widx, "'close' of worker %d's connection on worker %d", c->widx, i);
    list_remove(&W->list[i], c);
    /* A socket that closes between nd_socket_move() and the detach never moves: its old
     * listeners see the 'close' and no on_adopt follows. */
    if (c->moving) {
        WCHECK(W->h.move_closed != NULL, "a socket closed while it was being moved");
        if (W->h.move_closed)
            report_now(W->h.move_closed, 0, 0, NULL);
    }
    if (W->h.sclosed)
        report_late(W->h.sclosed, (long)nd_socket_bytes_read(c->sock), c->id, NULL);
    wconn_free(c);
}

/* A connection the worker keeps, listed, until it closes. */
wconn_t *keep_conn(world_t *w, int widx, nd_socket_t *sock)
{
    wconn_t *c = wconn_new(sock, widx);

    list_add(&w->list[widx], c);
    nd_socket_on(sock, ND_EV_CLOSE, wc_close, c);
    return c;
}

void wconn_adopted(wconn_t *c, nd_socket_t *sock)
{
    WCHECK(tl_worker == c->target, "on_adopt for worker %d ran on worker %d", c->target, tl_worker);
    WCHECK(sock == c->sock, "on_adopt got another socket");
    c->widx = tl_worker;
    c->moving = 0;
    list_add(&W->list[tl_worker], c);
    nd_socket_on(sock, ND_EV_CLOSE, wc_close, c);
}

/* ------------------------------------------------------------------------------------ */
/* Clients on the owner loop                                                            */
/* ------------------------------------------------------------------------------------ */

clients_t CL;

void clients_init(int n)
{
    CL.v = calloc((size_t)n, sizeof(client_t));
    ck_assert_ptr_nonnull(CL.v);
    CL.n = n;
    for (int i = 0; i < n; i++)
        CL.v[i].id = i;
}

static void cl_connect(void *self, const nd_event_t *ev, void *arg)
{
    client_t *c = arg;

    c->connects++;
    CL.connected++;
    if (CL.on_connect)
        CL.on_connect(c);
}

static void cl_data(void *self, const nd_event_t *ev, void *arg)
{
    client_t *c = arg;

    if (CL.on_data) {
        CL.on_data(c, ev->data, ev->len);
        return;
    }
    OCHECK(c->rxlen + ev->len <= sizeof(c->rx), "client %d: too much data", c->id);
    memcpy(c->rx + c->rxlen, ev->data, ev->len);
    c->rxlen += ev->len;
}

static void cl_end(void *self, const nd_event_t *ev, void *arg)
{
    ((client_t *)arg)->ends++;
}

static void cl_error(void *self, const nd_event_t *ev, void *arg)
{
    client_t *c = arg;

    c->errors++;
    snprintf(c->err, sizeof(c->err), "%s", ev->error->name);
}

static void cl_close(void *self, const nd_event_t *ev, void *arg)
{
    client_t *c = arg;

    c->closes++;
    c->had_error = ev->had_error;
    c->sock = NULL;
    CL.closed++;
    if (CL.on_close)
        CL.on_close(c);
}

void client_start(client_t *c, int port)
{
    c->sock = th_connect(g_owner, port, cl_connect, c);
    nd_socket_on(c->sock, ND_EV_DATA, cl_data, c);
    nd_socket_on(c->sock, ND_EV_END, cl_end, c);
    nd_socket_on(c->sock, ND_EV_ERROR, cl_error, c);
    nd_socket_on(c->sock, ND_EV_CLOSE, cl_close, c);
}

void clients_destroy_all(void)
{
    for (int i = 0; i < CL.n; i++)
        if (CL.v[i].sock)
            nd_socket_destroy(CL.v[i].sock);
}
