/* SPDX-License-Identifier: MIT */
/*
 * Threads: mailboxes (nd_loop_post, stop_post), loops in threads, server groups (balancing,
 * exact group-wide accounting, maxConnections, close, EMFILE) and live sockets moved between loops.
 */
#include "config.h"

#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAXW 4

/* ------------------------------------------------------------------------------------ */
/* Failures off the owner thread                                                        */
/* ------------------------------------------------------------------------------------ */

/*
 * Check's asserts write a message even when they pass and are not meant for other threads,
 * so code on worker threads uses WCHECK: the first failure is kept and the owner loop is
 * asked to abort with it. The owner thread aborts at once.
 */
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
    if (atomic_load(&g_failed)) fail_now();
}

__attribute__((format(printf, 3, 4))) static void wfail(const char *file, int line, const char *fmt,
                                                        ...)
{
    if (atomic_fetch_add(&g_failed, 1) == 0) {
        va_list ap;

        pthread_mutex_lock(&g_fail_mu);
        int n = snprintf(g_fail, sizeof(g_fail), "%s:%d: ", file, line);
        va_start(ap, fmt);
        vsnprintf(g_fail + n, sizeof(g_fail) - (size_t)n, fmt, ap);
        va_end(ap);
        pthread_mutex_unlock(&g_fail_mu);
        if (g_owner && pthread_equal(pthread_self(), g_owner_tid)) fail_now();
        if (g_owner) nd_loop_post(g_owner, fail_on_owner, NULL);
    }
}

#define WCHECK(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) wfail(__FILE__, __LINE__, __VA_ARGS__);                                       \
    } while (0)

/* For hot paths on the owner thread: no message unless it fails. */
#define OCHECK(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) ck_abort_msg(__VA_ARGS__);                                                    \
    } while (0)

/* ------------------------------------------------------------------------------------ */
/* Small helpers                                                                        */
/* ------------------------------------------------------------------------------------ */

/* Which worker this thread runs: -1 on the test's own thread. */
static _Thread_local int tl_worker = -1;

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double cpu_ms(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static void sem_wait_ms(sem_t *s, unsigned ms, const char *what)
{
    struct timespec ts;
    unsigned lim = th_scale(ms);
    int rc;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += lim / 1000;
    ts.tv_nsec += (long)(lim % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    while ((rc = sem_timedwait(s, &ts)) != 0 && errno == EINTR)
        ;
    ck_assert_msg(rc == 0, "timed out waiting for %s", what);
}

/* 1000 clients and their 1000 accepted peers need more descriptors than a default 1024. */
static void need_fds(rlim_t n)
{
    struct rlimit rl;

    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < n) {
        ck_assert_msg(rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= n,
                      "this test needs %lu descriptors; the hard limit is %lu", (unsigned long)n,
                      (unsigned long)rl.rlim_max);
        rl.rlim_cur = n;
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
}

/* A byte pattern without short periods, so a reordered or repeated chunk shows. */
static inline unsigned char pat(uint64_t i)
{
    return (unsigned char)((i * 0x9E3779B97F4A7C15ull) >> 56);
}

#define FNV0 0xcbf29ce484222325ull

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t fnv_pattern(uint64_t total)
{
    unsigned char buf[4096];
    uint64_t h = FNV0;

    for (uint64_t off = 0; off < total;) {
        size_t n = total - off < sizeof(buf) ? (size_t)(total - off) : sizeof(buf);
        for (size_t j = 0; j < n; j++)
            buf[j] = pat(off + j);
        h = fnv1a(h, buf, n);
        off += n;
    }
    return h;
}

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

/* ------------------------------------------------------------------------------------ */
/* Messages: a closure posted to a loop                                                 */
/* ------------------------------------------------------------------------------------ */

typedef struct msg msg_t;
typedef void (*msg_fn)(msg_t *m);
struct msg {
    msg_fn fn;
    int widx; /* the worker it concerns or comes from */
    long a, b, c;
    void *p;
};

static void msg_run(nd_loop_t *loop, void *arg)
{
    msg_t *m = arg;

    m->fn(m);
    free(m);
}

static msg_t *msg_new(msg_fn fn, int widx, long a, long b, void *p)
{
    msg_t *m = calloc(1, sizeof(*m));

    if (!m) abort();
    m->fn = fn;
    m->widx = widx;
    m->a = a;
    m->b = b;
    m->p = p;
    return m;
}

static void send_msg(nd_loop_t *loop, msg_t *m)
{
    int rc = nd_loop_post(loop, msg_run, m);

    WCHECK(rc == 0, "nd_loop_post: %s", nd_err_name(rc));
    if (rc != 0) free(m);
}

static void post_msg(nd_loop_t *loop, msg_fn fn, int widx, long a, long b, void *p)
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

/* A server-side connection as a worker sees it. Only the worker holding the socket touches
 * it; a move hands it over with the socket. */
typedef struct wconn {
    nd_socket_t *sock;
    int widx;   /* the worker holding it */
    int slot;   /* position in that worker's list, -1 when not listed */
    int target; /* the worker it is moving to */
    int id;     /* the client's id from its 4-byte hello, or -1 */
    unsigned char hdr[4];
    size_t hdrlen;
    int moving;
    long r1, r2;         /* a test's own results */
    unsigned char *held; /* 'data' that arrived between the move call and the adopt */
    size_t heldlen, heldcap;
} wconn_t;

typedef struct wlist {
    wconn_t **v;
    int n, cap;
} wlist_t;

typedef struct world world_t;
typedef struct hooks {
    /* On the worker's thread. */
    void (*conn)(world_t *w, int widx, nd_socket_t *sock);
    void (*adopt_ev)(world_t *w, int widx, nd_socket_t *sock);
    /* On the owner, for every server-side 'close' reported late: a = bytes read. */
    msg_fn sclosed;
    /* On the owner, when a socket closed on its old loop before a move took it. */
    msg_fn move_closed;
} hooks_t;

struct world {
    nd_loop_t *owner;
    int nw;
    nd_loop_t *wl[MAXW];
    nd_thread_t *wt[MAXW];
    pthread_t wtid[MAXW];
    nd_server_t *wsrv[MAXW]; /* written by worker i's init, read on worker i only */
    wlist_t list[MAXW];      /* worker i's live connections, worker i only */
    sem_t sem;
    atomic_int nconn[MAXW];     /* 'connection' events per worker */
    atomic_int nadopt_ev[MAXW]; /* ND_EV_ADOPT events per worker */
    atomic_int ninit;
    int left[MAXW]; /* handle counts at the end, written by the probe */
    double probe_start[MAXW];
    nd_server_t *group;
    int port;
    int waiting;              /* the owner's own ref: the test says when it is done */
    nd_server_options_t opts; /* for the group */
    hooks_t h;
};

static world_t *W;

static void list_add(wlist_t *l, wconn_t *c)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = realloc(l->v, sizeof(*l->v) * (size_t)l->cap);
        if (!l->v) abort();
    }
    c->slot = l->n;
    l->v[l->n++] = c;
}

static void list_remove(wlist_t *l, wconn_t *c)
{
    if (c->slot < 0) return;
    WCHECK(c->slot < l->n && l->v[c->slot] == c, "connection list out of step");
    l->v[c->slot] = l->v[--l->n];
    l->v[c->slot]->slot = c->slot;
    c->slot = -1;
}

static wconn_t *wconn_new(nd_socket_t *sock, int widx)
{
    wconn_t *c = calloc(1, sizeof(*c));

    if (!c) abort();
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

static void hold_bytes(wconn_t *c, const char *data, size_t len)
{
    if (c->heldlen + len > c->heldcap) {
        c->heldcap = (c->heldlen + len) * 2;
        c->held = realloc(c->held, c->heldcap);
        if (!c->held) abort();
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

static void report_now(msg_fn fn, long a, long b, void *p)
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
static world_t *world_new(int nw)
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
        sem_wait_ms(&w->sem, 5000, "workers to start");
    for (int i = 0; i < nw; i++)
        ck_assert_msg(!pthread_equal(w->wtid[i], pthread_self()),
                      "worker %d runs on the test's thread", i);
    /* The test releases this ref when everything it waits for has arrived, so reports
     * still in the owner's mailbox are never left behind. */
    nd_loop_ref(w->owner);
    w->waiting = 1;
    return w;
}

static void world_done(world_t *w)
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

    if (n == 0 || now_ms() - W->probe_start[i] > th_scale(2000)) {
        W->left[i] = n;
        sem_post(&W->sem);
        return;
    }
    struct timeval tv = {0, 1000};
    event_base_once(nd_loop_base(W->wl[i]), -1, EV_TIMEOUT, probe_try, arg, &tv);
}

static void probe_start(msg_t *m)
{
    W->probe_start[m->widx] = now_ms();
    probe_try(-1, 0, (void *)(intptr_t)m->widx);
}

/* After th_run(owner): every worker loop is empty, the threads stop, the owner is empty. */
static void world_end(world_t *w)
{
    check_no_worker_failure();
    for (int i = 0; i < w->nw; i++)
        post_msg(w->wl[i], probe_start, i, 0, 0, NULL);
    for (int i = 0; i < w->nw; i++)
        sem_wait_ms(&w->sem, 5000, "the workers' handle counts");
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
    if (w->h.conn) w->h.conn(w, i, ev->socket);
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
    if (w->h.adopt_ev) w->h.adopt_ev(w, i, ev->socket);
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

static void group_start(world_t *w, nd_balance_t b, nd_listener_fn on_listening)
{
    nd_server_t *g = nd_server_new_group(w->owner, &w->opts, w->wl, w->nw, b, w_init, w);

    ck_assert_msg(g != NULL, "nd_server_new_group: %s", strerror(errno));
    w->group = g;
    ck_assert_int_eq(nd_server_on(g, ND_EV_LISTENING, on_listening, w), 0);
    ck_assert_int_eq(nd_server_on(g, ND_EV_ERROR, on_group_error, w), 0);
    ck_assert_int_eq(nd_server_listen(g, 0, "127.0.0.1", 2048), 0);
}

/* Inside 'listening'. */
static int group_port(world_t *w)
{
    nd_address_t a;

    ck_assert_int_eq(nd_server_address(w->group, &a), 0);
    ck_assert_int_gt(a.port, 0);
    w->port = a.port;
    return a.port;
}

/* The generic server-side 'close': off the list, reported late with the bytes read. */
static void wc_close(void *self, const nd_event_t *ev, void *arg)
{
    wconn_t *c = arg;
    int i = tl_worker;

    WCHECK(i == c->widx, "'close' of worker %d's connection on worker %d", c->widx, i);
    list_remove(&W->list[i], c);
    /* A socket that closes between nd_socket_move() and the detach never moves: its old
     * listeners see the 'close' and no on_adopt follows. */
    if (c->moving) {
        WCHECK(W->h.move_closed != NULL, "a socket closed while it was being moved");
        if (W->h.move_closed) report_now(W->h.move_closed, 0, 0, NULL);
    }
    if (W->h.sclosed) report_late(W->h.sclosed, (long)nd_socket_bytes_read(c->sock), c->id, NULL);
    wconn_free(c);
}

/* A connection the worker keeps, listed, until it closes. */
static wconn_t *keep_conn(world_t *w, int widx, nd_socket_t *sock)
{
    wconn_t *c = wconn_new(sock, widx);

    list_add(&w->list[widx], c);
    nd_socket_on(sock, ND_EV_CLOSE, wc_close, c);
    return c;
}

/* ------------------------------------------------------------------------------------ */
/* Clients on the owner loop                                                            */
/* ------------------------------------------------------------------------------------ */

typedef struct client client_t;
typedef struct clients {
    client_t *v;
    int n, closed, connected;
    void (*on_connect)(client_t *c);
    void (*on_data)(client_t *c, const char *data, size_t len);
    void (*on_close)(client_t *c);
} clients_t;

struct client {
    nd_socket_t *sock; /* NULL once its 'close' ran */
    int id;
    int connects, ends, errors, closes, had_error;
    char err[32];
    unsigned char rx[64];
    size_t rxlen;
    uint64_t sent, rcvd;
    int ok;
};

static clients_t CL;

static void clients_init(int n)
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
    if (CL.on_connect) CL.on_connect(c);
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
    if (CL.on_close) CL.on_close(c);
}

static void client_start(client_t *c, int port)
{
    nd_connect_options_t o;

    memset(&o, 0, sizeof(o));
    o.port = port;
    o.host = "127.0.0.1";
    c->sock = nd_connect(g_owner, &o, cl_connect, c);
    ck_assert_msg(c->sock != NULL, "nd_connect: %s", strerror(errno));
    nd_socket_on(c->sock, ND_EV_DATA, cl_data, c);
    nd_socket_on(c->sock, ND_EV_END, cl_end, c);
    nd_socket_on(c->sock, ND_EV_ERROR, cl_error, c);
    nd_socket_on(c->sock, ND_EV_CLOSE, cl_close, c);
}

static void clients_destroy_all(void)
{
    for (int i = 0; i < CL.n; i++)
        if (CL.v[i].sock) nd_socket_destroy(CL.v[i].sock);
}

/* ------------------------------------------------------------------------------------ */
/* Mailboxes                                                                            */
/* ------------------------------------------------------------------------------------ */

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

    if (!pthread_equal(pthread_self(), MB.tid)) MB.wrong_thread++;
    if (s < 0 || s >= NSENDERS || seq != MB.next[s]) {
        if (MB.out_of_order++ == 0)
            snprintf(MB.first_bad, sizeof(MB.first_bad), "sender %d: got %d, expected %d", s, seq,
                     s >= 0 && s < NSENDERS ? MB.next[s] : -1);
    } else {
        MB.next[s] = seq + 1;
    }
    if (++MB.total == (long)NSENDERS * MB.per) nd_loop_unref(loop);
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
    WK.ran_at = now_ms();
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
    if (!f) return '?';
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
    WK.posted_at = now_ms();
    if (nd_loop_post(WK.loop, wk_msg, NULL) != 0) atomic_store(&WK.ran, -1000);
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
    sem_wait_ms(&SP.started, 5000, "the loop to run a message");
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
    sem_wait_ms(&SP.started, 5000, "the thread to run a message");
    ck_assert(!pthread_equal(SP.runner, pthread_self()));
    nd_thread_stop(t);
    ck_assert_int_eq(nd_thread_join(t), 0);
    sem_destroy(&SP.started);
}
END_TEST

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
    if (c->hdrlen + ev->len > 4) return;
    memcpy(c->hdr + c->hdrlen, ev->data, ev->len);
    c->hdrlen += ev->len;
    if (c->hdrlen < 4) return;
    c->id = (int)get32(c->hdr);
    WCHECK(c->id >= 0 && c->id < ONCE.n, "bad client id %d", c->id);
    if (c->id >= 0 && c->id < ONCE.n) atomic_fetch_add(&ONCE.seen[c->id], 1);
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
    if (CL.closed == CL.n) ck_assert_int_eq(nd_server_close(W->group, once_gclose, NULL), 0);
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
    need_fds((rlim_t)ONCE.n * 2 + 200);
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

static void seq_gclose(void *self, const nd_event_t *ev, void *arg)
{
    SEQ.gclosed++;
    world_done(W);
}

static void seq_cl_close(client_t *c)
{
    if (CL.closed == CL.n) ck_assert_int_eq(nd_server_close(W->group, seq_gclose, NULL), 0);
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
    need_fds((rlim_t)SEQ.n * 2 + 200);
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
    if (++GC.replies == 2) gc_next_phase();
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

    WCHECK(tl_worker == c->target, "on_adopt for worker %d ran on worker %d", c->target, tl_worker);
    WCHECK(sock == c->sock, "on_adopt got another socket");
    c->widx = tl_worker;
    c->moving = 0;
    list_add(&W->list[tl_worker], c);
    nd_socket_on(sock, ND_EV_CLOSE, wc_close, c);
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

    if (GC.checking) return;
    switch (GC.phase) {
    case GC_CONNECT:
        if (GC.conns == GC.n) gc_check(GC.n);
        return;
    case GC_CLIENT_CLOSE:
        want_closed = GC.nclose;
        break;
    case GC_SERVER_DESTROY:
        if (GC.destroy_left > 0) return;
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
    if (GC.sclosed == want_closed) gc_check(GC.n - GC.sclosed);
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
        if (GC.move_asked == W->nw - 1) k = GC.move_left;
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
    if (CL.closed == CL.n) world_done(W);
}

static void gc_cl_close(client_t *c)
{
    if (GC.gclosed && CL.closed == CL.n) world_done(W);
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
    need_fds((rlim_t)GC.n * 2 + 200);
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
    ST.sfnv = fnv1a(ST.sfnv, data, len);
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
    if (tl_worker != ST.cur) ST.wrong_thread++;
    if (ST.moving) {
        ST.events_while_moving++;
        if (ST.heldlen + ev->len > ST.heldcap) {
            ST.heldcap = (ST.heldlen + ev->len) * 2;
            ST.held = realloc(ST.held, ST.heldcap);
            if (!ST.held) abort();
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
    if (!ST.moving && !ST.sclosed_here) st_next_step();
}

static void st_adopt(nd_socket_t *sock, void *arg)
{
    WCHECK(arg == &ST, "on_adopt got another arg");
    if (tl_worker != ST.target || !pthread_equal(pthread_self(), W->wtid[ST.target]))
        ST.wrong_thread++;
    if (sock != ST.ss || nd_socket_loop(sock) != W->wl[ST.target]) ST.wrong_socket++;
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
    if (sock != ST.ss || widx != ST.target) ST.wrong_socket++;
}

static void st_finish_if_done(void);

static void st_sreport(msg_t *m)
{
    ST.sreported++;
    st_finish_if_done();
}

static void st_sclose(void *self, const nd_event_t *ev, void *arg)
{
    if (tl_worker != ST.cur) ST.wrong_thread++;
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
    ST.sfnv = FNV0;
    st_attach(sock);
}

/* Owner: the client writes the pattern with backpressure and checks the echo. */
static void st_cwrite(void)
{
    while (ST.sent < ST.total) {
        size_t n = ST.total - ST.sent < ST_CHUNK ? (size_t)(ST.total - ST.sent) : ST_CHUNK;
        for (size_t j = 0; j < n; j++)
            ST.chunk[j] = pat(ST.sent + j);
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
            if (b[j] != pat(ST.rcvd + j)) {
                ST.cbad = 1;
                ST.bad_at = ST.rcvd + j;
                break;
            }
    ST.cfnv = fnv1a(ST.cfnv, ev->data, ev->len);
    ST.rcvd += ev->len;
}

static void st_cclose(void *self, const nd_event_t *ev, void *arg)
{
    ST.cclosed++;
    ST.chad_error = ev->had_error;
    ST.cli_written = nd_socket_bytes_written(ST.cli);
    st_finish_if_done();
}

static void st_gclose(void *self, const nd_event_t *ev, void *arg)
{
    ST.gclosed++;
    world_done(W);
}

static void st_finish_if_done(void)
{
    if (ST.cclosed && ST.sreported) ck_assert_int_eq(nd_server_close(W->group, st_gclose, NULL), 0);
}

static void st_listening(void *self, const nd_event_t *ev, void *arg)
{
    nd_connect_options_t o;

    memset(&o, 0, sizeof(o));
    o.port = group_port(W);
    o.host = "127.0.0.1";
    ST.cli = nd_connect(W->owner, &o, st_cconnect, NULL);
    ck_assert_msg(ST.cli != NULL, "nd_connect: %s", strerror(errno));
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
    ST.cfnv = FNV0;
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
    if (CL.closed == CL.n && MC.gclosed && MC.sclosed == MC_MAX) world_done(W);
}

static void mc_gclose(void *self, const nd_event_t *ev, void *arg)
{
    MC.gclosed++;
    if (!MC.last_destroyed) MC.gclosed_early++;
    mc_maybe_done();
}

static void mc_pong(msg_t *m)
{
    if (++MC.pongs < W->nw) return;
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
        if (!c->ok) continue;
        if (MC.kept < 0)
            MC.kept = i;
        else
            nd_socket_destroy(c->sock);
    }
}

static void mc_settle(void)
{
    if (MC.settled || MC.ok + MC.rejected < MC_CLIENTS) return;
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
    nd_server_t *g =
        nd_server_new_group(w->owner, NULL, &w->wl[0], 1, ND_BALANCE_LEASTCONN, w_init, w);
    ck_assert_msg(g != NULL, "nd_server_new_group: %s", strerror(errno));
    w->group = g;
    nd_server_on(g, ND_EV_LISTENING, rf_group_listening, w);
    nd_server_on(g, ND_EV_ERROR, on_group_error, w);
    ck_assert_int_eq(nd_server_listen(g, 0, "127.0.0.1", 0), 0);
}

static void rf_maybe_ready(void)
{
    if (RF.connected == 2 && RF.npeers == 2) rf_refusals();
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

static void ad_maybe_done(void);

static void ad_gclose(void *self, const nd_event_t *ev, void *arg)
{
    AD.gclosed++;
    world_done(W);
}

static void ad_maybe_done(void)
{
    if (AD.sclosed && CL.closed == CL.n)
        ck_assert_int_eq(nd_server_close(W->group, ad_gclose, NULL), 0);
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
    if (c->rxlen == 9) nd_socket_end(c->sock, NULL, 0);
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
    /* Each close frees a descriptor on the server side, which must start accepting again. */
    for (int i = 0; i < EM_CLIENTS; i++) {
        char buf[2];
        size_t got = 0;
        while (got < 2) {
            ssize_t n = recv(EM.fds[i], buf + got, 2 - got, 0);
            if (n <= 0) break;
            got += (size_t)n;
        }
        if (got == 2 && memcmp(buf, "ok", 2) == 0)
            atomic_fetch_add(&EM.served, 1);
        else
            atomic_fetch_add(&EM.failed, 1);
        close(EM.fds[i]);
        EM.fds[i] = -1;
    }
    post_msg(g_owner, em_clients_done, -1, 0, 0, NULL);
    return NULL;
}

static void em_window_end(void *arg)
{
    EM.wall = now_ms() - EM.t0;
    EM.cpu = cpu_ms() - EM.c0;
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
        EM.t0 = now_ms();
        EM.c0 = cpu_ms();
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
        if (e->d_name[0] != '.' && fd >= 0 && fd < (int)sizeof(open_fd)) open_fd[fd] = 1;
    }
    /* The directory's own descriptor is free again after this. */
    open_fd[dirfd(d)] = 0;
    closedir(d);
    int fd = 0;
    for (int freed = 0; freed < spare; fd++)
        if (!open_fd[fd]) freed++;
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
 * accepts again once connections close: every client is served in the end. */
START_TEST(test_group_emfile_pauses_accept)
{
    world_t *w = world_new(2);

    sem_init(&EM.go, 0, 0);
    w->h.conn = em_conn;
    w->h.sclosed = em_sclosed;
    group_start(w, ND_BALANCE_LEASTCONN, em_listening);
    th_run(w->owner, 30000);
    if (EM.lowered) ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &EM.saved), 0);
    if (EM.th_started) pthread_join(EM.th, NULL);
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
END_TEST

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
    return pat(((uint64_t)id << 32) + off);
}

static void ss_sdata(void *self, const nd_event_t *ev, void *arg);

static void ss_echo(wconn_t *c, const char *data, size_t len)
{
    /* r1: the worker ended it; writing after that would be an error of ours. */
    if (c->r1) return;
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

    WCHECK(tl_worker == c->target, "on_adopt for worker %d ran on worker %d", c->target, tl_worker);
    WCHECK(sock == c->sock, "on_adopt got another socket");
    c->widx = tl_worker;
    c->moving = 0;
    list_add(&W->list[tl_worker], c);
    nd_socket_on(sock, ND_EV_DATA, ss_sdata, c);
    nd_socket_on(sock, ND_EV_CLOSE, wc_close, c);
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

    if (l->n == 0) return;
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

    if (tl_rng == 1) tl_rng = 7919u * (unsigned)(widx + 1);
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
        if (c->sock && !c->ok && c->ends == 0 && c->errors == 0) return c;
    }
    return NULL;
}

static void ss_tick(void *arg)
{
    world_t *w = W;

    if (now_ms() >= SS.deadline) {
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
            if ((c = ss_pick()) != NULL) nd_socket_destroy(c->sock);
        } else {
            long what = r < 88 ? 0 : r < 94 ? 1 : 2;
            if (what == 0) SS.moves_asked++;
            post_msg(w->wl[rnd(&SS.rng) % (unsigned)w->nw], ss_waction, 0, what, 0, NULL);
        }
    }
    th_timer(w->owner, 1, ss_tick, NULL);
}

static void ss_listening(void *self, const nd_event_t *ev, void *arg)
{
    group_port(W);
    SS.deadline = now_ms() + (th_sanitized() ? 500 : 2000);
    th_timer(W->owner, 1, ss_tick, NULL);
}

/* Four worker loops under random connects, writes, ends, destroys and moves for a while:
 * echoes stay in order, and at the end no handle is left on any loop and getConnections
 * says 0. */
START_TEST(test_group_stress)
{
    world_t *w = world_new(4);

    need_fds(SS_LIVE_MAX * 4 + 400);
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
/* Small contracts                                                                      */
/* ------------------------------------------------------------------------------------ */

static void noop_init(nd_server_t *ws, int index, void *arg) {}

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

static void ui_gclose(void *self, const nd_event_t *ev, void *arg)
{
    UI.gclosed++;
    world_done(W);
}

static void ui_maybe_done(void)
{
    if (UI.checked && UI.sclosed && CL.closed == CL.n)
        ck_assert_int_eq(nd_server_close(W->group, ui_gclose, NULL), 0);
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
        b[i] = pat((uint64_t)off + i);
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
        if (c->r2 < 0 && (unsigned char)ev->data[i] != pat((uint64_t)c->r1 + i))
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

static struct {
    int before, after, worker_after;
    int reported, gclosed;
} DC;

static void dc_gclose(void *self, const nd_event_t *ev, void *arg)
{
    DC.gclosed++;
    world_done(W);
}

static void dc_maybe_done(void)
{
    if (DC.reported && CL.closed == CL.n)
        ck_assert_int_eq(nd_server_close(W->group, dc_gclose, NULL), 0);
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

static TCase *tcase(Suite *s, const char *name, double timeout_s)
{
    TCase *tc = tcase_create(name);

    tcase_set_timeout(tc, timeout_s);
    suite_add_tcase(s, tc);
    return tc;
}

static Suite *threads_suite(void)
{
    Suite *s = suite_create("threads");
    TCase *tc;

    tc = tcase(s, "mailbox", 30);
    tcase_add_test(tc, test_post_many_senders);
    tcase_add_test(tc, test_post_wakes_blocked_loop);
    tcase_add_test(tc, test_mailbox_not_alive);
    tcase_add_test(tc, test_stop_post_stops_worker);

    tc = tcase(s, "group", 90);
    tcase_add_test(tc, test_balance_names_and_bad_groups);
    tcase_add_loop_test(tc, test_group_each_connection_once, 0, 3);
    tcase_add_loop_test(tc, test_group_balance_sequential, 0, 2);
    tcase_add_test(tc, test_group_get_connections_exact);
    tcase_add_test(tc, test_group_max_connections);
    tcase_add_test(tc, test_group_connections_property);
    tcase_add_test(tc, test_group_emfile_pauses_accept);
    tcase_add_test(tc, test_group_destroy_uncounts_at_once);

    tc = tcase(s, "move", 150);
    tcase_add_test(tc, test_move_refusals);
    tcase_add_test(tc, test_move_adopt_on_target_thread);
    tcase_add_test(tc, test_move_proxy_pair);
    tcase_add_test(tc, test_move_stream_integrity);
    tcase_add_test(tc, test_move_carries_unread_input);

    tc = tcase(s, "stress", 60);
    tcase_add_test(tc, test_group_stress);

    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(threads_suite());

    srunner_run_all(sr, CK_NORMAL);
    int failures = srunner_ntests_failed(sr);
    srunner_free(sr);
    return (failures == 0) ? 0 : 1;
}
