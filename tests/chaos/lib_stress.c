/* SPDX-License-Identifier: MIT */
/*
 * lib_stress: the chaos run for libnetd alone (issue 10). One process, 4 worker loops in
 * threads serving three server groups (two echo groups and an in-process proxy whose
 * upstream is the first), clients on a loop of their own sending verified byte streams,
 * and every worker moving, pausing, ending and destroying its sockets at random while
 * the owner closes a group and listens again. Seeded like tests/chaos/chaos.c: a seed
 * replays the decisions, not the interleavings. Built to run under TSan.
 *
 * The work runs in a forked child whose stderr goes to a file, so the parent can say
 * whether a sanitizer reported anything, whatever the child's exit status.
 */
#include "config.h"

#include "chaos.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <event2/event.h>
#include <netd/net.h>

#define NW 4
#define MAX_CHUNK (300 * 1024)
#define MAX_TOTAL ((uint64_t)(SLOW == 1 ? 1024 : SLOW == 2 ? 512 : 128) * 1024)
#define MAX_STREAMS (SLOW == 1 ? 64 : SLOW == 2 ? 48 : 16)
#define WORKER_TICK_MS (SLOW == 1 ? 3 : SLOW == 2 ? 5 : 10)
#define STALL_MS (10000 * SLOW)
#define SETTLE_MS (10000 * SLOW)

/* ------------------------------------------------------------------ report */

static uint64_t g_seed;
static unsigned g_seconds;
static _Atomic int g_failures;
static pthread_mutex_t g_print = PTHREAD_MUTEX_INITIALIZER;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    int n = atomic_fetch_add(&g_failures, 1) + 1;
    if (n > 40)
        return;
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&g_print);
    printf("lib_stress: FAIL seed=%" PRIu64 ": ", g_seed);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
    pthread_mutex_unlock(&g_print);
    va_end(ap);
}

#define COUNTERS(X)                                                                                \
    X(streams)                                                                                     \
    X(streams_to_e1)                                                                               \
    X(streams_to_e2)                                                                               \
    X(streams_to_proxy)                                                                            \
    X(stream_complete)                                                                             \
    X(stream_killed)                                                                               \
    X(stream_abrupt_explained)                                                                     \
    X(bytes_verified)                                                                              \
    X(accepted)                                                                                    \
    X(move_calls)                                                                                  \
    X(move_notify_calls)                                                                           \
    X(move_refused)                                                                                \
    X(move_adopted)                                                                                \
    X(move_failed)                                                                                 \
    X(pairs_moved)                                                                                 \
    X(destroy)                                                                                     \
    X(end)                                                                                         \
    X(pause)                                                                                       \
    X(resume)                                                                                      \
    X(proxy_pairs)                                                                                 \
    X(group_close)                                                                                 \
    X(group_relisten)                                                                              \
    X(get_connections)

enum {
#define C_ENUM(n) C_##n,
    COUNTERS(C_ENUM)
#undef C_ENUM
        C__N
};
static const char *const counter_names[] = {
#define C_NAME(n) #n,
    COUNTERS(C_NAME)
#undef C_NAME
};
static _Atomic uint64_t counters[C__N];

static void count(int c)
{
    atomic_fetch_add_explicit(&counters[c], 1, memory_order_relaxed);
}

/* ------------------------------------------------------------------ the world */

enum { G_E1, G_E2, G_P, G__N }; /* echo, echo that closes and listens again, proxy to E1 */
static const char *const group_names[] = {"e1", "e2", "proxy"};

static nd_loop_t *owner;
static nd_loop_t *wl[NW];
static nd_thread_t *wt[NW];
static nd_loop_t *cl; /* the clients' loop */
static nd_thread_t *ct;
static nd_server_t *groups[G__N];
static _Atomic int ports[G__N];   /* 0 while not listening */
static _Atomic unsigned e2_epoch; /* bumped when E2 starts closing and when it listens */
static _Atomic int g_stop;        /* the chaos is over: workers stop their operations */
static _Atomic int clients_done;

/* Per client port: the server side ended this connection on purpose (a legitimate early
 * end), and whether a port is one of the clients' live streams (only those are ended). */
static _Atomic uint8_t port_flag[65536];
static _Atomic uint8_t client_port[65536];

static _Thread_local int tl_widx = -1; /* which worker this thread is; -1 elsewhere */

/* ------------------------------------------------------------------ server side */

enum rec_kind { R_ECHO, R_PCLIENT, R_UPSTREAM };

/* One server-side socket, owned by the worker whose list holds it. A record leaves its
 * list when a move starts and joins the target's list on adopt; meanwhile nobody
 * touches it. */
typedef struct rec {
    nd_socket_t *sock;
    enum rec_kind kind;
    int widx;
    _Atomic int owner; /* the worker whose list last took it: readable from any thread, so
                          the pair check below is no race of ours when the library splits */
    bool in_list;
    bool closed;
    bool busy;             /* a move of it (or of its pair) is under way: not picked again */
    struct rec *peer;      /* a proxy pair's other half */
    uint64_t resume_at;    /* explicitly paused until then (0: not paused by us) */
    struct move_ctx *move; /* a notify move in flight */
    TAILQ_ENTRY(rec) link;
} rec_t;

typedef struct worker {
    int idx;
    rng_t rng;
    struct event *tick;
    TAILQ_HEAD(, rec) recs;
    int nrecs;
    _Atomic int left; /* handle count at the end, -1 until probed */
} worker_t;
static worker_t workers[NW];

static void rec_attach(rec_t *r);

static void list_add(rec_t *r, int widx)
{
    if (r->in_list)
        return;
    r->widx = widx;
    atomic_store(&r->owner, widx);
    TAILQ_INSERT_TAIL(&workers[widx].recs, r, link);
    workers[widx].nrecs++;
    r->in_list = true;
}

static void list_del(rec_t *r)
{
    if (!r->in_list)
        return;
    if (r->widx != tl_widx)
        fail("record of worker %d taken off its list on worker %d", r->widx, tl_widx);
    TAILQ_REMOVE(&workers[r->widx].recs, r, link);
    workers[r->widx].nrecs--;
    r->in_list = false;
}

static void on_rec_close(void *sock, const nd_event_t *ev, void *arg)
{
    rec_t *r = arg;
    if (tl_widx < 0 || tl_widx >= NW || nd_socket_loop(sock) != wl[tl_widx])
        fail("'close' of a socket on a thread that does not own it");
    list_del(r);
    r->closed = true;
    if (r->peer) {
        /* The pair lives and dies together (as netd's proxy). */
        rec_t *p = r->peer;
        p->peer = NULL;
        r->peer = NULL;
        int other = atomic_load(&p->owner);
        if (other != tl_widx)
            fail("a proxy pair split across loops: one half closes on worker %d, the other "
                 "half belongs to worker %d",
                 tl_widx, other);
        else
            nd_socket_destroy(p->sock);
    }
    nd_socket_set_data(sock, NULL);
    if (!r->move)
        free(r); /* else the move's FAILED report frees it */
}

static void on_rec_error(void *sock, const nd_event_t *ev, void *arg)
{
    nd_socket_destroy(sock); /* 'close' follows; the pair goes with it */
}

static void on_echo_end(void *sock, const nd_event_t *ev, void *arg)
{
    nd_socket_end(sock, NULL, 0); /* as netd's echo: a self-pipe does not end itself */
}

static void on_upstream_connect(void *sock, const nd_event_t *ev, void *arg)
{
    rec_t *u = arg;
    if (u->peer)
        nd_socket_resume(u->peer->sock);
}

/* Our listeners, at creation and again after every move (the library drops them). */
static void rec_attach(rec_t *r)
{
    nd_socket_set_data(r->sock, r);
    nd_socket_on(r->sock, ND_EV_CLOSE, on_rec_close, r);
    nd_socket_on(r->sock, ND_EV_ERROR, on_rec_error, r);
    if (r->kind == R_ECHO)
        nd_socket_on(r->sock, ND_EV_END, on_echo_end, r);
}

/* On the target: the socket and its pair arrived; their records join this worker. Runs
 * for whichever of on_adopt, the notify and the 'adopt' event comes first. */
static void adopt_records(nd_socket_t *sock)
{
    nd_socket_t *both[2] = {sock, nd_socket_pipe_peer(sock)};
    for (int i = 0; i < 2; i++) {
        if (!both[i])
            continue;
        rec_t *r = nd_socket_data(both[i]);
        if (!r || r->in_list)
            continue;
        if (nd_socket_loop(both[i]) != wl[tl_widx]) {
            fail("a pair half is on another loop after the adopt on worker %d", tl_widx);
            continue;
        }
        list_add(r, tl_widx);
        r->busy = false;
        rec_attach(r);
        count(C_move_adopted);
    }
    if (both[1])
        count(C_pairs_moved);
}

static void on_adopt_cb(nd_socket_t *sock, void *arg)
{
    adopt_records(sock);
}

static void on_adopt_event(void *ws, const nd_event_t *ev, void *arg)
{
    adopt_records(ev->socket);
}

typedef struct move_ctx {
    rec_t *r, *peer; /* taken off the source's list at DETACHED */
} move_ctx_t;

static void on_move(nd_socket_t *sock, nd_move_phase_t phase, int err, void *arg)
{
    move_ctx_t *m = arg;
    rec_t *r = m->r;
    if (phase == ND_MOVE_DETACHED) {
        nd_socket_t *p = nd_socket_pipe_peer(sock);
        m->peer = p ? nd_socket_data(p) : NULL;
        list_del(r);
        if (m->peer)
            list_del(m->peer);
        return;
    }
    r->move = NULL;
    if (phase == ND_MOVE_ADOPTED) {
        adopt_records(sock);
    } else {
        count(C_move_failed);
        if (r->closed) {
            free(r); /* its 'close' ran here while the move waited */
        } else {
            r->busy = false;
            list_add(r, tl_widx);
            if (r->peer)
                r->peer->busy = false;
        }
    }
    free(m);
}

static rec_t *rec_new(nd_socket_t *sock, enum rec_kind kind)
{
    rec_t *r = calloc(1, sizeof(*r));
    if (!r)
        abort();
    r->sock = sock;
    r->kind = kind;
    list_add(r, tl_widx);
    rec_attach(r);
    return r;
}

static void on_echo_connection(void *ws, const nd_event_t *ev, void *arg)
{
    count(C_accepted);
    rec_new(ev->socket, R_ECHO);
    nd_socket_pipe(ev->socket, ev->socket, 1);
}

/* The proxy: each client gets an upstream connection to E1 on the same loop, the two piped
 * both ways; the client is read only once the upstream is connected. */
static void on_proxy_connection(void *ws, const nd_event_t *ev, void *arg)
{
    count(C_accepted);
    nd_socket_t *c = ev->socket;
    rec_t *cr = rec_new(c, R_PCLIENT);
    nd_socket_pause(c);
    nd_connect_options_t o = {.port = atomic_load(&ports[G_E1]),
                              .host = "127.0.0.1",
                              .family = 4,
                              .allow_half_open = 1};
    nd_socket_t *u = nd_connect(wl[tl_widx], &o, NULL, NULL);
    if (!u) {
        nd_socket_destroy(c);
        return;
    }
    rec_t *ur = rec_new(u, R_UPSTREAM);
    nd_socket_on(u, ND_EV_CONNECT, on_upstream_connect, ur);
    cr->peer = ur;
    ur->peer = cr;
    nd_socket_pipe(c, u, 1);
    nd_socket_pipe(u, c, 1);
    count(C_proxy_pairs);
}

static void worker_init(nd_server_t *ws, int index, void *arg)
{
    intptr_t g = (intptr_t)arg;
    nd_server_on(ws, ND_EV_CONNECTION, g == G_P ? on_proxy_connection : on_echo_connection, NULL);
    nd_server_on(ws, ND_EV_ADOPT, on_adopt_event, NULL);
}

/* The client port a record's ending affects: its own peer's, or through the pair. */
static int client_port_of(rec_t *r)
{
    rec_t *c = r->kind == R_UPSTREAM ? r->peer : r;
    if (!c)
        return 0;
    int port = nd_socket_remote_port(c->sock);
    return port > 0 && port < 65536 && atomic_load(&client_port[port]) ? port : 0;
}

static rec_t *pick_rec(worker_t *w)
{
    if (!w->nrecs)
        return NULL;
    int k = (int)rng_below(&w->rng, (uint64_t)w->nrecs);
    rec_t *r = TAILQ_FIRST(&w->recs);
    while (k-- > 0)
        r = TAILQ_NEXT(r, link);
    return r;
}

static void worker_op(worker_t *w)
{
    rec_t *r = pick_rec(w);
    unsigned what = (unsigned)rng_below(&w->rng, 100);
    if (!r || r->closed || r->busy)
        return;
    if (what < 50) {
        int to = (int)rng_below(&w->rng, NW);
        bool notify = rng_pct(&w->rng, 50);
        if (!enabled(notify ? "move-notify" : "move"))
            return;
        if (notify) {
            move_ctx_t *m = calloc(1, sizeof(*m));
            if (!m)
                abort();
            m->r = r;
            int rc = nd_socket_move_notify(r->sock, wl[to], on_move, m);
            count(C_move_notify_calls);
            if (rc != 0) {
                free(m);
                if (rc != -EALREADY)
                    count(C_move_refused);
            } else {
                r->move = m;
                r->busy = true;
                if (r->peer)
                    r->peer->busy = true;
            }
        } else {
            /* A plain move: the records leave now, since nothing reports the detach. */
            nd_socket_t *p = nd_socket_pipe_peer(r->sock);
            int rc = nd_socket_move(r->sock, wl[to], rng_pct(&w->rng, 50) ? on_adopt_cb : NULL,
                                    NULL);
            count(C_move_calls);
            if (rc == 0 && to != w->idx) {
                list_del(r);
                r->busy = true;
                if (p && nd_socket_data(p)) {
                    list_del(nd_socket_data(p));
                    ((rec_t *)nd_socket_data(p))->busy = true;
                }
            } else if (rc != 0) {
                count(C_move_refused);
            }
        }
    } else if (what < 54) {
        int port = client_port_of(r);
        if (!port || !enabled("destroy"))
            return;
        atomic_store(&port_flag[port], 1);
        count(C_destroy);
        nd_socket_destroy(r->sock);
    } else if (what < 58) {
        int port = client_port_of(r);
        if (!port || !enabled("end"))
            return;
        atomic_store(&port_flag[port], 1);
        count(C_end);
        nd_socket_end(r->sock, NULL, 0);
    } else if (what < 70) {
        if (r->resume_at || !enabled("pause"))
            return;
        nd_socket_pause(r->sock);
        r->resume_at = now_ms() + rng_range(&w->rng, 5, 200);
        count(C_pause);
    }
}

static void worker_tick(evutil_socket_t fd, short what, void *arg)
{
    worker_t *w = arg;
    uint64_t now = now_ms();
    bool stop = atomic_load(&g_stop);
    rec_t *r, *next;
    for (r = TAILQ_FIRST(&w->recs); r; r = next) {
        next = TAILQ_NEXT(r, link);
        if (r->resume_at && (stop || now >= r->resume_at)) {
            r->resume_at = 0;
            nd_socket_resume(r->sock);
            count(C_resume);
        }
    }
    if (stop)
        return;
    int n = (int)rng_range(&w->rng, 1, 3);
    for (int i = 0; i < n; i++)
        worker_op(w);
}

static void worker_setup(nd_loop_t *loop, void *arg)
{
    worker_t *w = arg;
    tl_widx = w->idx;
    w->tick = event_new(nd_loop_base(loop), -1, EV_PERSIST, worker_tick, w);
    struct timeval tv = {0, WORKER_TICK_MS * 1000};
    event_add(w->tick, &tv);
}

/* At the end, on each worker: its timer goes, then its handle count once in-flight closes
 * have finished (a bounded wait). */
static void probe_try(evutil_socket_t fd, short what, void *arg)
{
    worker_t *w = arg;
    static _Thread_local uint64_t start;
    if (!start)
        start = now_ms();
    int n = nd_loop_handle_count(wl[w->idx]);
    if (n == 0 || now_ms() - start > SETTLE_MS) {
        atomic_store(&w->left, n);
        return;
    }
    struct timeval tv = {0, 5000};
    event_base_once(nd_loop_base(wl[w->idx]), -1, EV_TIMEOUT, probe_try, w, &tv);
}

static void worker_probe(nd_loop_t *loop, void *arg)
{
    worker_t *w = arg;
    if (w->tick) {
        event_free(w->tick);
        w->tick = NULL;
    }
    probe_try(-1, 0, w);
}

/* ------------------------------------------------------------------ clients */

enum mode { M_CLOSE, M_HALFCLOSE, M_KILL, M__N };

typedef struct cstream {
    nd_socket_t *sock;
    uint64_t serial;
    int group;
    enum mode mode;
    rng_t rng;
    uint64_t seed, total, kill_at, window, sent, recvd;
    bool connected, wait_drain, ended, killed, got_end, complete;
    int err;
    int lport;
    unsigned epoch;
    uint64_t start_ms, progress_ms;
    LIST_ENTRY(cstream) link;
} cstream_t;

static LIST_HEAD(, cstream) cstreams = LIST_HEAD_INITIALIZER(cstreams);
static int ncstreams;
static rng_t crng;
static uint64_t cserial;
static struct event *ctick;
static uint8_t cbuf[MAX_CHUNK];
static uint8_t cmp[256 * 1024];
static _Atomic int client_left = -1;

static void cs_pump(cstream_t *s);

static void cs_verify(cstream_t *s, const char *data, size_t n)
{
    size_t off = 0;
    while (off < n) {
        size_t k = n - off < sizeof(cmp) ? n - off : sizeof(cmp);
        gen_fill(s->seed, s->recvd + off, cmp, k);
        if (memcmp(data + off, cmp, k) != 0) {
            size_t i = 0;
            while ((uint8_t)data[off + i] == cmp[i])
                i++;
            fail("stream %" PRIu64 " to %s: byte %" PRIu64 " is 0x%02x, expected 0x%02x", s->serial,
                 group_names[s->group], s->recvd + off + i, (uint8_t)data[off + i], cmp[i]);
            s->killed = true; /* reported; its ending is no longer judged */
            nd_socket_destroy(s->sock);
            return;
        }
        off += k;
    }
}

static void cs_kill(cstream_t *s)
{
    s->killed = true;
    nd_socket_destroy(s->sock);
}

static void on_cs_data(void *sock, const nd_event_t *ev, void *arg)
{
    cstream_t *s = arg;
    if (s->killed)
        return;
    if (s->recvd + ev->len > s->sent) {
        fail("stream %" PRIu64 " to %s: %" PRIu64 " bytes back, %" PRIu64 " sent", s->serial,
             group_names[s->group], s->recvd + ev->len, s->sent);
        cs_kill(s);
        return;
    }
    cs_verify(s, ev->data, ev->len);
    if (s->killed)
        return;
    s->recvd += ev->len;
    s->progress_ms = now_ms();
    atomic_fetch_add_explicit(&counters[C_bytes_verified], ev->len, memory_order_relaxed);
    if (s->mode == M_KILL && s->recvd >= s->kill_at) {
        cs_kill(s);
        return;
    }
    if (s->mode == M_CLOSE && s->recvd == s->total && !s->ended) {
        nd_socket_end(sock, NULL, 0);
        s->ended = true;
    }
    cs_pump(s);
}

static void on_cs_drain(void *sock, const nd_event_t *ev, void *arg)
{
    cstream_t *s = arg;
    s->wait_drain = false;
    s->progress_ms = now_ms();
    cs_pump(s);
}

static void on_cs_end(void *sock, const nd_event_t *ev, void *arg)
{
    cstream_t *s = arg;
    s->got_end = true;
    if (s->recvd == s->total && s->sent == s->total && s->ended)
        s->complete = true;
    nd_socket_destroy(sock);
}

static void on_cs_error(void *sock, const nd_event_t *ev, void *arg)
{
    cstream_t *s = arg;
    if (!s->err)
        s->err = ev->error->code;
}

/* Judged at 'close': netd-free rules, the library's own. */
static void on_cs_close(void *sock, const nd_event_t *ev, void *arg)
{
    cstream_t *s = arg;
    if (s->lport > 0) {
        atomic_store(&client_port[s->lport], 0);
    }
    if (s->complete) {
        count(C_stream_complete);
    } else if (s->killed) {
        count(C_stream_killed);
    } else {
        bool flagged = s->lport > 0 && atomic_load(&port_flag[s->lport]);
        bool e2_churn = s->group == G_E2 && s->recvd == 0 && atomic_load(&e2_epoch) != s->epoch;
        if (flagged || e2_churn)
            count(C_stream_abrupt_explained);
        else
            fail("stream %" PRIu64 " to %s ended early without cause: %s after %" PRIu64
                 " of %" PRIu64 " bytes echoed (%" PRIu64 " sent, mode %d%s)",
                 s->serial, group_names[s->group], s->err ? nd_err_name(s->err) : "end", s->recvd,
                 s->total, s->sent, (int)s->mode, s->got_end ? ", FIN received" : "");
    }
    LIST_REMOVE(s, link);
    ncstreams--;
    free(s);
}

static void cs_pump(cstream_t *s)
{
    while (s->connected && !s->killed && !s->wait_drain && s->sent < s->total &&
           s->sent - s->recvd < s->window) {
        if (s->mode == M_KILL && s->sent >= s->kill_at) {
            cs_kill(s);
            return;
        }
        uint64_t n = rng_log(&s->rng, 1, MAX_CHUNK);
        if (n > s->total - s->sent)
            n = s->total - s->sent;
        gen_fill(s->seed, s->sent, cbuf, (size_t)n);
        int rc = nd_socket_write(s->sock, cbuf, (size_t)n, NULL, NULL);
        if (rc < 0)
            return; /* 'error' and 'close' follow */
        s->sent += n;
        s->progress_ms = now_ms();
        if (rc == 0)
            s->wait_drain = true;
    }
    if (s->connected && !s->killed && s->mode == M_KILL && s->sent >= s->kill_at) {
        cs_kill(s);
        return;
    }
    if (s->connected && !s->killed && !s->ended && s->sent == s->total &&
        (s->mode == M_HALFCLOSE || (s->mode == M_CLOSE && s->recvd == s->total))) {
        nd_socket_end(s->sock, NULL, 0);
        s->ended = true;
    }
}

static void on_cs_connect(void *sock, const nd_event_t *ev, void *arg)
{
    cstream_t *s = arg;
    s->connected = true;
    s->progress_ms = now_ms();
    s->lport = nd_socket_local_port(sock);
    if (s->lport > 0 && s->lport < 65536) {
        atomic_store(&port_flag[s->lport], 0);
        atomic_store(&client_port[s->lport], 1);
    } else {
        s->lport = 0;
    }
    cs_pump(s);
}

static void cs_start(void)
{
    int g = (int)rng_below(&crng, G__N);
    int port = atomic_load(&ports[g]);
    if (!port || !enabled(group_names[g]))
        return;
    cstream_t *s = calloc(1, sizeof(*s));
    if (!s)
        abort();
    s->serial = ++cserial;
    s->group = g;
    s->rng.s = rng_next(&crng);
    s->seed = rng_next(&s->rng);
    s->mode = (enum mode)rng_below(&s->rng, M__N);
    s->total = rng_pct(&s->rng, 3) ? 0 : rng_log(&s->rng, 1, MAX_TOTAL);
    s->kill_at = rng_below(&s->rng, s->total + 1);
    s->window = rng_log(&s->rng, 4096, 1024 * 1024);
    s->epoch = atomic_load(&e2_epoch);
    s->start_ms = s->progress_ms = now_ms();
    nd_connect_options_t o = {.port = port, .host = "127.0.0.1", .family = 4, .allow_half_open = 1};
    s->sock = nd_connect(cl, &o, on_cs_connect, s);
    if (!s->sock) {
        fail("nd_connect: %s", strerror(errno));
        free(s);
        return;
    }
    nd_socket_on(s->sock, ND_EV_DATA, on_cs_data, s);
    nd_socket_on(s->sock, ND_EV_DRAIN, on_cs_drain, s);
    nd_socket_on(s->sock, ND_EV_END, on_cs_end, s);
    nd_socket_on(s->sock, ND_EV_ERROR, on_cs_error, s);
    nd_socket_on(s->sock, ND_EV_CLOSE, on_cs_close, s);
    LIST_INSERT_HEAD(&cstreams, s, link);
    ncstreams++;
    count(C_streams);
    count(g == G_E1 ? C_streams_to_e1 : g == G_E2 ? C_streams_to_e2 : C_streams_to_proxy);
}

static uint64_t cdeadline;

static void client_tick(evutil_socket_t fd, short what, void *arg)
{
    uint64_t now = now_ms();
    bool stop = atomic_load(&g_stop);
    if (!stop) {
        int n = (int)rng_range(&crng, 0, 3);
        for (int i = 0; i < n && ncstreams < MAX_STREAMS; i++)
            cs_start();
    } else if (!cdeadline) {
        cdeadline = now + STALL_MS + 5000;
    }
    cstream_t *s, *next;
    for (s = LIST_FIRST(&cstreams); s; s = next) {
        next = LIST_NEXT(s, link);
        if (!s->killed && now > s->progress_ms && now - s->progress_ms > STALL_MS) {
            fail("stream %" PRIu64 " to %s stalled: %s, sent %" PRIu64 " of %" PRIu64 ", %" PRIu64
                 " echoed, mode %d",
                 s->serial, group_names[s->group], s->connected ? "connected" : "connecting",
                 s->sent, s->total, s->recvd, (int)s->mode);
            s->killed = true;
            nd_socket_destroy(s->sock);
        } else if (cdeadline && now > cdeadline && !s->killed) {
            fail("stream %" PRIu64 " to %s unfinished at the end", s->serial,
                 group_names[s->group]);
            s->killed = true;
            nd_socket_destroy(s->sock);
        }
    }
    if (stop && ncstreams == 0 && !atomic_load(&clients_done)) {
        event_free(ctick);
        ctick = NULL;
        atomic_store(&client_left, nd_loop_handle_count(cl));
        atomic_store(&clients_done, 1);
    }
}

static void client_setup(nd_loop_t *loop, void *arg)
{
    tl_widx = 100;
    ctick = event_new(nd_loop_base(loop), -1, EV_PERSIST, client_tick, NULL);
    struct timeval tv = {0, 2000 * SLOW};
    event_add(ctick, &tv);
}

/* ------------------------------------------------------------------ the owner */

static rng_t orng;
static uint64_t deadline_ms;
static int phase;
static uint64_t phase_ms;
static struct event *otick;
static int closed_groups;
static _Atomic int counted[G__N];
static int count_pending;

static void on_group_listening(void *srv, const nd_event_t *ev, void *arg)
{
    intptr_t g = (intptr_t)arg;
    nd_address_t a;
    if (nd_server_address(srv, &a) == 0)
        atomic_store(&ports[g], a.port);
    if (g == G_E2)
        atomic_fetch_add(&e2_epoch, 1);
}

static void on_group_error(void *srv, const nd_event_t *ev, void *arg)
{
    fail("group %s: %s", group_names[(intptr_t)arg], ev->error->message);
}

static void group_start(int g);

static void on_group_close(void *srv, const nd_event_t *ev, void *arg)
{
    intptr_t g = (intptr_t)arg;
    atomic_store(&ports[g], 0);
    if (phase >= 3) {
        groups[g] = NULL;
        closed_groups++;
        return;
    }
    /* E2 closed in the chaos: the same server listens again (the library keeps a server
     * that listens again from its 'close'). */
    int rc = nd_server_listen(srv, 0, "127.0.0.1", 511);
    if (rc == 0) {
        count(C_group_relisten);
    } else {
        fail("group %s: listen again after 'close': %s", group_names[g], nd_err_name(rc));
        groups[g] = NULL;
        group_start((int)g);
    }
}

static void group_start(int g)
{
    nd_server_options_t opts = {.allow_half_open = g != G_E2};
    nd_balance_t b = (nd_balance_t)(g == G_E1   ? ND_BALANCE_LEASTCONN
                                    : g == G_E2 ? ND_BALANCE_ROUNDROBIN
                                                : ND_BALANCE_REUSEPORT);
    nd_server_t *s = nd_server_new_group(owner, &opts, wl, NW, b, worker_init, (void *)(intptr_t)g);
    if (!s) {
        fail("nd_server_new_group: %s", strerror(errno));
        return;
    }
    groups[g] = s;
    nd_server_on(s, ND_EV_LISTENING, on_group_listening, (void *)(intptr_t)g);
    nd_server_on(s, ND_EV_ERROR, on_group_error, (void *)(intptr_t)g);
    nd_server_on(s, ND_EV_CLOSE, on_group_close, (void *)(intptr_t)g);
    int rc = nd_server_listen(s, 0, "127.0.0.1", 511);
    if (rc)
        fail("listen %s: %s", group_names[g], nd_err_name(rc));
}

static void on_count(nd_server_t *srv, int err, int n, void *arg)
{
    intptr_t g = (intptr_t)arg;
    count_pending--;
    if (err || n < 0)
        fail("getConnections on %s: err %d, count %d", group_names[g], err, n);
    atomic_store(&counted[g], n);
}

static void owner_done(void)
{
    event_free(otick);
    otick = NULL;
    nd_loop_unref(owner);
}

/* Phases: 0 chaos; 1 clients finish; 2 every count back to 0; 3 groups close; 4 probe. */
static void owner_tick(evutil_socket_t fd, short what, void *arg)
{
    uint64_t now = now_ms();
    switch (phase) {
    case 0:
        if (now >= deadline_ms) {
            atomic_store(&g_stop, 1);
            phase = 1;
            phase_ms = now;
            break;
        }
        if (groups[G_E2] && atomic_load(&ports[G_E2]) && rng_pct(&orng, 1) && enabled("relisten")) {
            atomic_fetch_add(&e2_epoch, 1);
            atomic_store(&ports[G_E2], 0);
            if (nd_server_close(groups[G_E2], NULL, NULL) == 0)
                count(C_group_close);
        }
        if (count_pending == 0 && rng_pct(&orng, 5)) {
            for (int g = 0; g < G__N; g++) {
                if (groups[g] &&
                    nd_server_get_connections(groups[g], on_count, (void *)(intptr_t)g) == 0) {
                    count_pending++;
                    count(C_get_connections);
                }
            }
        }
        break;
    case 1:
        if (atomic_load(&clients_done)) {
            phase = 2;
            phase_ms = now;
            for (int g = 0; g < G__N; g++)
                atomic_store(&counted[g], -1);
        }
        break;
    case 2: {
        /* getConnections must come back to 0 exactly: moves in flight included. */
        bool zero = true;
        for (int g = 0; g < G__N; g++)
            zero = zero && (atomic_load(&counted[g]) == 0 || !groups[g]);
        if (zero || now - phase_ms > SETTLE_MS) {
            if (!zero)
                for (int g = 0; g < G__N; g++)
                    if (groups[g] && atomic_load(&counted[g]) != 0)
                        fail("getConnections on %s says %d once every client has gone",
                             group_names[g], atomic_load(&counted[g]));
            phase = 3;
            phase_ms = now;
            for (int g = 0; g < G__N; g++) {
                if (!groups[g])
                    continue;
                if (nd_server_close(groups[g], NULL, NULL) != 0 && !atomic_load(&ports[g])) {
                    /* E2 is closing already: its 'close' (phase 3) ends it. */
                }
            }
            break;
        }
        if (count_pending == 0)
            for (int g = 0; g < G__N; g++)
                if (groups[g] &&
                    nd_server_get_connections(groups[g], on_count, (void *)(intptr_t)g) == 0)
                    count_pending++;
        break;
    }
    case 3: {
        bool all = true;
        for (int g = 0; g < G__N; g++)
            all = all && !groups[g];
        if (all || now - phase_ms > SETTLE_MS) {
            if (!all)
                fail("a group did not emit 'close' within %d ms of close()", SETTLE_MS);
            phase = 4;
            for (int i = 0; i < NW; i++) {
                atomic_store(&workers[i].left, -1);
                nd_loop_post(wl[i], worker_probe, &workers[i]);
            }
        }
        break;
    }
    case 4: {
        bool all = true;
        for (int i = 0; i < NW; i++)
            all = all && atomic_load(&workers[i].left) >= 0;
        if (all || now - phase_ms > 2 * SETTLE_MS) {
            for (int i = 0; i < NW; i++)
                if (atomic_load(&workers[i].left) != 0)
                    fail("worker %d: %d handle(s) left at the end", i,
                         atomic_load(&workers[i].left));
            owner_done();
        }
        break;
    }
    }
}

/* ------------------------------------------------------------------ main */

static int stress(void)
{
    printf("lib_stress: seed=%" PRIu64 " seconds=%u build=%s workers=%d\n", g_seed, g_seconds,
           BUILD_NAME, NW);
    fflush(stdout);
    orng.s = g_seed;
    crng.s = mix64(g_seed ^ 0x100);
    owner = nd_loop_new();
    cl = nd_loop_new();
    if (!owner || !cl)
        return 2;
    for (int i = 0; i < NW; i++) {
        workers[i].idx = i;
        workers[i].rng.s = mix64(g_seed ^ (uint64_t)(i + 1));
        TAILQ_INIT(&workers[i].recs);
        wl[i] = nd_loop_new();
        if (!wl[i])
            return 2;
        nd_loop_post(wl[i], worker_setup, &workers[i]);
        wt[i] = nd_thread_start(wl[i]);
        if (!wt[i])
            return 2;
    }
    nd_loop_post(cl, client_setup, NULL);
    ct = nd_thread_start(cl);
    if (!ct)
        return 2;
    for (int g = 0; g < G__N; g++)
        group_start(g);
    deadline_ms = now_ms() + (uint64_t)g_seconds * 1000;
    nd_loop_ref(owner);
    otick = event_new(nd_loop_base(owner), -1, EV_PERSIST, owner_tick, NULL);
    struct timeval tv = {0, 10000};
    event_add(otick, &tv);
    nd_loop_run(owner);

    nd_thread_stop(ct);
    nd_thread_join(ct);
    if (atomic_load(&client_left) != 0)
        fail("client loop: %d handle(s) left at the end", atomic_load(&client_left));
    for (int i = 0; i < NW; i++) {
        nd_thread_stop(wt[i]);
        nd_thread_join(wt[i]);
    }
    int left = nd_loop_handle_count(owner);
    if (left != 0)
        fail("owner loop: %d handle(s) left at the end", left);
    nd_loop_free(owner);

    printf("lib_stress: operations (seed=%" PRIu64 ", %u s, %s build):\n", g_seed, g_seconds,
           BUILD_NAME);
    for (int i = 0; i < C__N; i++)
        printf("  %-40s %12" PRIu64 "\n", counter_names[i], atomic_load(&counters[i]));
    fflush(stdout);
    return atomic_load(&g_failures) ? 1 : 0;
}

static const char *const sanitizer_marks[] = {"ERROR: AddressSanitizer",  "ERROR: LeakSanitizer",
                                              "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer",
                                              "runtime error:",           NULL};

/* The parent: runs stress() in a child, then reads the child's stderr for sanitizer
 * reports and prints the first one up to its SUMMARY. */
static int supervise(void)
{
    char errlog[] = "/tmp/netd-lib-stress-XXXXXX";
    int fd = mkstemp(errlog);
    if (fd < 0) {
        perror("lib_stress: mkstemp");
        return 2;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd, 2);
        close(fd);
        _exit(stress());
    }
    close(fd);
    int st = 0;
    uint64_t limit = now_ms() + (uint64_t)g_seconds * 1000 + 180000ULL * SLOW;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (now_ms() > limit) {
            printf("lib_stress: FAIL seed=%" PRIu64 ": did not finish in time; killed\n", g_seed);
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            break;
        }
        usleep(20000);
    }
    FILE *f = fopen(errlog, "r");
    int reports = 0, printed = 0;
    bool in_report = false;
    char line[4096];
    while (f && fgets(line, sizeof(line), f)) {
        bool head = false;
        for (int i = 0; sanitizer_marks[i]; i++)
            head = head || strstr(line, sanitizer_marks[i]) != NULL;
        if (head) {
            reports++;
            in_report = reports == 1;
        }
        if (in_report && printed < 80) {
            printf("    | %s", line);
            printed++;
            if (strncmp(line, "SUMMARY:", 8) == 0)
                in_report = false;
        } else if (!reports && printed < 20 &&
                   (WIFSIGNALED(st) || !WIFEXITED(st) || WEXITSTATUS(st))) {
            printf("    | %s", line); /* whatever it said before dying */
            printed++;
        }
    }
    if (f)
        fclose(f);
    unlink(errlog);
    bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0 && reports == 0;
    if (reports)
        printf("lib_stress: FAIL seed=%" PRIu64
               ": %d sanitizer report header(s) (the first above)\n",
               g_seed, reports);
    if (!WIFEXITED(st))
        printf("lib_stress: FAIL seed=%" PRIu64 ": killed by signal %d\n", g_seed, WTERMSIG(st));
    if (ok) {
        printf("lib_stress: PASS seed=%" PRIu64 " (%u s)\n", g_seed, g_seconds);
    } else {
        printf("lib_stress: FAILED seed=%" PRIu64 " (exit status %d)\n", g_seed,
               WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        printf("lib_stress: replay: make chaos-lib SEED=%" PRIu64 " SECONDS=%u\n", g_seed,
               g_seconds);
    }
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    bool have_seed = false;
    g_seconds = 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            if (argv[++i][0]) {
                g_seed = strtoull(argv[i], NULL, 10);
                have_seed = true;
            }
        } else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            g_seconds = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--without") && i + 1 < argc) {
            without_add(argv[++i]);
        } else {
            fprintf(stderr, "usage: lib_stress [--seed N] [--seconds N] [--without LIST]\n"
                            "  LIST (comma-separated): move, move-notify, destroy, end, pause,\n"
                            "  relisten, and the stream targets e1, e2, proxy\n");
            return 2;
        }
    }
    if (!have_seed) {
        FILE *f = fopen("/dev/urandom", "r");
        if (!f || fread(&g_seed, sizeof(g_seed), 1, f) != 1)
            g_seed = (uint64_t)now_ms() ^ ((uint64_t)getpid() << 32);
        if (f)
            fclose(f);
        g_seed %= 1000000000000ULL;
    }
    return supervise();
}
