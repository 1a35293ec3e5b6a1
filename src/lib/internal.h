/* SPDX-License-Identifier: MIT */
/*
 * Internal tier of libnetd (nd__ prefix): the handle base shared by servers and sockets,
 * the emitter, the loop's pending queue and ref accounting, and the struct layouts.
 */
#ifndef ND_INTERNAL_H
#define ND_INTERNAL_H

/*
 * Ownership across threads
 * ------------------------
 * One rule: an object belongs to one loop, and only that loop's thread touches it. Other
 * threads reach it only through the loop's mailbox, with a message that carries a counted
 * reference or hands the object over whole; never a bare pointer the owner may free.
 *
 * nd_loop_t      owned by: the thread running it. Touched by others: nd_loop_post /
 *                nd_loop_post_msg (mb_lock), the remote_refs and stats atomics. Freed by
 *                nd_loop_free on any thread once no thread runs it; messages still queued
 *                then get their drop().
 * handles        (servers, sockets) owned by: their h.loop. refcnt is plain (loop thread
 *                only): the library's own reference (owned), nd_*_hold, and a guard around
 *                every dispatch. Freed at refcnt 0, never before 'close' has run; a server
 *                that does not listen has no 'close': nd_server_free drops the library's
 *                reference instead.
 * nd__group_t    shared by the owner-side server (owner loop) and one worker-side server
 *                per member loop. Only the atomics (live counts, unclosed, max, fd_ceiling,
 *                closing, counters, refs) are shared; every other field is written before the
 *                members exist or by the owner only. Each message (group.c: member_req_t,
 *                listen_req_t, owner_check_t, handoff_msg_t) carries a counted reference
 *                (refs), dropped when it has run or been dropped; the group is freed at
 *                refs 0, after the owner and every member are gone.
 * accepted fds   in a handoff message (all a wake of the acceptor gave one worker): owned by
 *                the message until the worker's server takes each (deliver) or the message
 *                is dropped (closed, uncounted).
 * a moving socket from the DETACHED phase until the adopt runs it is on no loop's handle
 *                list: move_msg_t owns it (and its pair), with every event stopped; the
 *                source touches nothing of it after posting; the target re-assigns its
 *                events to its own base. It stays counted in its group the whole way, and
 *                its unread input (in) travels inside it.
 * a pair         (piped both ways) moves together; while one half is torn down and its
 *                'close' has not run, the other cannot move: the application's listeners
 *                on the closing half may still point at it (nd_socket_t.pair).
 *                One move at a time: from nd_socket_move until the adopt, a second move
 *                of either half, or an export, is refused (EBUSY); two departures would
 *                detach the pair twice from the loop it already left.
 */

#include "config.h"

#include <netd/net.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "encoding.h"

#define ND_EXPORT __attribute__((visibility("default")))

#define ND__DEFAULT_BACKLOG 511
#define ND__HOST_MAX 256     /* a host name given to connect or listen, with its NUL */
#define ND__READ_CHUNK 65536 /* one read; Node's slab size */
/* A piped socket whose reads bring at least this many bytes splices its next ones, until a
 * read brings less than a quarter of it (small messages are cheaper copied). */
#define ND__SPLICE_MIN 16384
#define ND__PIPE_POOL 8         /* empty splice pipes a loop keeps for reuse */
#define ND__READS_PER_WAKE 8    /* fairness cap for reads per readiness callback */
#define ND__ACCEPTS_PER_WAKE 64 /* fairness cap for accepts per readiness callback */
/* Node's default highWaterMark of a net.Socket, both ways: input read while nobody consumes
 * it stops at this many bytes; a write while connecting returns true below it. */
#define ND__READ_HWM 16384
#define ND__WRITE_HWM 16384

/* Milliseconds as a struct timeval, for libevent timers. */
static inline struct timeval nd__ms_tv(unsigned ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* ------------------------------------------------------------------------- errors */

/* Allocated only when an error happens, so healthy connections carry one pointer. */
typedef struct nd__error_store {
    nd_error_t err;
    char address[1024];
    char hostname[256];
    char message[1400];
} nd__error_store_t;

/* Fills *st, allocating it first if NULL. Returns 0 or -ENOMEM (then *st stays NULL and
 * the caller reports the bare code). */
int nd__error_set(nd__error_store_t **st, int code, const char *syscall, const char *address,
                  int port, const char *hostname);
/* Replaces the message built by nd__error_set (Node's fixed texts, e.g. v0.10's "This socket
 * has been ended by the other party"). */
void nd__error_set_message(nd__error_store_t *st, const char *message);

/* ------------------------------------------------------------------------ emitter */

typedef struct nd__listener {
    nd_listener_fn fn;
    void *arg;
    uint8_t type;
    bool once;
    bool dead; /* removed while an emit was running; compacted afterwards */
} nd__listener_t;

typedef struct nd__emitter {
    nd__listener_t *v;
    unsigned n, cap;
    unsigned depth; /* nested emits in progress */
    uint32_t has;   /* bit per event type with at least one live listener */
} nd__emitter_t;

int nd__emitter_on(nd__emitter_t *em, nd_event_type_t type, nd_listener_fn fn, void *arg,
                   bool once);
int nd__emitter_off(nd__emitter_t *em, nd_event_type_t type, nd_listener_fn fn, void *arg);
/* Calls every live listener of ev->type in order; listeners added meanwhile wait for the
 * next emit. The caller guards the emitting object's lifetime. */
void nd__emit(nd__emitter_t *em, void *self, const nd_event_t *ev);
void nd__emitter_free(nd__emitter_t *em);
static inline bool nd__emitter_has(const nd__emitter_t *em, nd_event_type_t t)
{
    return (em->has >> t) & 1u;
}

/* ------------------------------------------------------------------------- handles */

enum nd__kind { ND__SERVER = 1, ND__SOCKET = 2 };

typedef struct nd__handle nd__handle_t;

struct nd__handle {
    nd_loop_t *loop;
    uint8_t kind;
    bool user_ref;    /* ref()/unref() */
    bool counted;     /* currently counted in loop->alive */
    bool owned;       /* the library's reference: dropped after 'close' has run */
    unsigned refcnt;  /* owned + holds + dispatch guards; freed at 0 */
    uint32_t pending; /* kind-specific bits of deferred work */
    nd__emitter_t em;
    void *data;
    TAILQ_ENTRY(nd__handle) link;         /* loop->handles */
    TAILQ_ENTRY(nd__handle) pending_link; /* loop->pending while pending != 0 */
};

TAILQ_HEAD(nd__handle_list, nd__handle);

void nd__handle_init(nd__handle_t *h, nd_loop_t *loop, uint8_t kind);
/* Unlinks from the loop and frees the listeners; the kind's free calls it. */
void nd__handle_fini(nd__handle_t *h);
/* Schedules deferred work bits; processed on a later turn by the kind's process fn. */
void nd__handle_pend(nd__handle_t *h, uint32_t bits);
void nd__handle_unpend(nd__handle_t *h, uint32_t bits);
/* Recomputes whether the handle keeps the loop alive: an active handle does while it is
 * ref'd; a pinned one does whatever ref/unref say (libuv's active requests, e.g. queued
 * writes). set_active(h, false) takes the handle off the loop's books entirely. */
void nd__handle_set_active(nd__handle_t *h, bool active);
void nd__handle_set_active_pinned(nd__handle_t *h, bool active, bool pinned);
void nd__handle_retain(nd__handle_t *h);
/* Drops a reference; frees the handle when none is left. */
void nd__handle_release(nd__handle_t *h);

void nd__server_process(nd_server_t *s, uint32_t bits);
void nd__socket_process(nd_socket_t *s, uint32_t bits);
void nd__server_free(nd_server_t *s);
void nd__socket_free(nd_socket_t *s);

/* ---------------------------------------------------------------------------- loop */

struct evdns_base;
typedef struct nd__defer nd__defer_t;
struct nd__defer {
    void (*fn)(void *arg);
    void *arg;
    bool owned;              /* allocated by nd_loop_defer, freed after fn */
    void (*drop)(void *arg); /* embedded node whose loop is freed before fn ran; or NULL */
    STAILQ_ENTRY(nd__defer) link;
};

typedef struct nd__msg nd__msg_t;
struct nd__msg {
    void (*fn)(nd_loop_t *loop, void *arg);
    void *arg;
    bool owned;              /* allocated by nd_loop_post, freed after fn */
    void (*drop)(void *arg); /* if the loop is freed before fn ran; may be NULL */
    STAILQ_ENTRY(nd__msg) link;
};

/* Per-thread counters: written only by the loop's thread, read by any (relaxed). */
typedef struct nd__loop_stats {
#define ND__LOOP_STAT_ATOMIC(name) _Atomic uint64_t name;
    ND_LOOP_STATS(ND__LOOP_STAT_ATOMIC)
#undef ND__LOOP_STAT_ATOMIC
} nd__loop_stats_t;

/* Single-writer counter update: no locked instruction on the hot path. */
#define ND__STAT_ADD(field, n)                                                                     \
    atomic_store_explicit(&(field), atomic_load_explicit(&(field), memory_order_relaxed) + (n),    \
                          memory_order_relaxed)

struct nd_loop {
    struct event_base *base;
    /* mailbox: the only door between threads */
    pthread_mutex_t mb_lock;
    STAILQ_HEAD(nd__msg_list, nd__msg) mb_queue;
    bool mb_signalled; /* under mb_lock: an eventfd write is outstanding */
    /* The loop's thread is busy with a wake and will look at the mailbox before it waits
     * again (run_pending runs last, see nd__loop_awake): posts need not write the eventfd.
     * Written by the loop's thread, read by posters under mb_lock. */
    _Atomic bool mb_awake;
    bool awake;         /* loop thread: mb_awake as last set */
    unsigned mb_credit; /* loop thread: wakes left that use mb_awake since the last message */
    int mb_fd;          /* eventfd */
    struct event mb_ev;
    _Atomic int remote_refs;
    nd__loop_stats_t stats;
    struct event pending_ev; /* activated whenever handles or defers are pending */
    bool pending_armed;
    bool stop;
    bool running;
    bool freeing;
    bool stop_when_drained; /* nd_thread_stop: finish what is pending, then return */
    int alive;              /* active ref'd handles + application refs */
    int nhandles;
    struct nd__handle_list handles;
    struct nd__handle_list pending;
    unsigned npending;
    STAILQ_HEAD(, nd__defer) defers;
    struct evdns_base *dns;
    char nameserver[64];
    unsigned char *scratch;      /* ND__READ_CHUNK bytes for reads: no allocation per read */
    uint64_t io_now_us;          /* the cached clock of the socket I/O callback running, or 0:
                               taken once per callback, not once per read and per write */
    int pipes[ND__PIPE_POOL][2]; /* empty splice pipes (read end, write end) */
    int npipes;
    int splicers; /* live sockets that have spliced: the pool keeps no more pipes than that,
                     so descriptors come back when they close */
};

void nd__loop_arm_pending(nd_loop_t *loop);

/* Wakes that follow a message and still tell posters "no eventfd needed": a loop that
 * gets messages often (a worker fed connections) saves a syscall on both sides for each
 * one that arrives while it is busy; one that does not pays nothing. */
#define ND__MB_CREDIT 64

/* Called at the start of the loop's I/O callbacks: while the loop is busy, posts to it need
 * not wake it, as long as it looks at the mailbox before it waits (run_pending, armed here,
 * runs after every callback of this wake). */
static inline void nd__loop_awake(nd_loop_t *loop)
{
    if (loop->mb_credit && !loop->awake) {
        loop->awake = true;
        atomic_store_explicit(&loop->mb_awake, true, memory_order_relaxed);
        nd__loop_arm_pending(loop);
    }
}
/* Defers with a node the caller embedded in its own struct: cannot fail. */
void nd__loop_defer_node(nd_loop_t *loop, nd__defer_t *node, void (*fn)(void *arg), void *arg,
                         void (*drop)(void *arg));
/* Posts with a node the caller embedded in its own message: cannot fail. */
void nd__loop_post_node(nd_loop_t *loop, nd__msg_t *node, void (*fn)(nd_loop_t *, void *),
                        void *arg, void (*drop)(void *arg));
/* An empty pipe for splicing, from the loop's pool or new (non-blocking, close-on-exec).
 * Returns 0, or -errno (EMFILE: the caller copies instead). */
int nd__loop_pipe_get(nd_loop_t *loop, int *r, int *w);
/* Gives back a pipe that holds nothing; kept for reuse or closed. */
void nd__loop_pipe_put(nd_loop_t *loop, int r, int w);
/* A socket that spliced is gone from the loop: the pool shrinks to the splicers left. */
void nd__loop_splicer_gone(nd_loop_t *loop);
/* The loop's resolver, created on first use. NULL when out of memory. */
struct evdns_base *nd__loop_dns(nd_loop_t *loop);

/* --------------------------------------------------------------------- socket addr */

typedef union nd__sockaddr {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
    struct sockaddr_un un;
    struct sockaddr_storage ss;
} nd__sockaddr_t;

/* Fills an nd_address_t from a sockaddr. */
void nd__address_from(nd_address_t *out, const struct sockaddr *sa, socklen_t len);
/* Parses an IP literal with a port into a sockaddr. Returns its length, or 0 if `ip` is not
 * an IP literal of the given family (0 = either). */
socklen_t nd__sockaddr_ip(nd__sockaddr_t *out, const char *ip, int port, int family);
/* A unix sockaddr for path. Returns its length, or -ENAMETOOLONG. */
int nd__sockaddr_unix(nd__sockaddr_t *out, const char *path);
int nd__set_nonblock_cloexec(int fd);

/* A connection of server s was destroyed: it no longer counts (getConnections, `connections`,
 * maxConnections), as Node lowers the count inside destroy(). Called once per connection. */
void nd__server_connection_destroyed(nd_server_t *s);
/* ... and its 'close' has run: a closing server's own 'close' may come now, so it stays the
 * last event of the server. Called once per connection, after the above. */
void nd__server_connection_closed(nd_server_t *s);
/* A socket imported from another process joins s's count (not its accepted total). */
void nd__server_connection_imported(nd_server_t *s);

/* Server groups (group.c): moving a socket between members of its group. */
typedef struct nd__group nd__group_t;
/* The member index of `target` in ws's group, or -EXDEV. */
int nd__server_member_of(const nd_server_t *ws, const nd_loop_t *target);
/* On the source thread: the socket leaves ws (it still counts in the group). */
void nd__server_move_out(nd_server_t *ws, int to);
/* On the target thread: the member `to`'s server takes the socket; returns it. */
nd_server_t *nd__server_move_in(nd_server_t *old_ws, int to);
void nd__server_emit_adopt(nd_server_t *ws, nd_socket_t *sock);

#endif

/* ------------------------------------------------------------------------ resolver */

/* Resolves a host name to one IP literal. The callback always runs on a later loop turn
 * (never from inside nd__resolve_start), with err 0 and the address, or ND_ENOTFOUND /
 * ND_EDNS. IP literals and "localhost" are answered without a query. */
typedef void (*nd__resolve_cb)(void *arg, int err, const char *ip, int family);
typedef struct nd__resolve nd__resolve_t;
nd__resolve_t *nd__resolve_start(nd_loop_t *loop, const char *host, int family, nd__resolve_cb cb,
                                 void *arg);
/* The callback will not run. Safe until the callback has run. */
void nd__resolve_cancel(nd__resolve_t *r);

/* A socket for a descriptor accept4() returned on server s; NULL when out of memory. */
nd_socket_t *nd__socket_accepted(nd_server_t *s, int fd, bool allow_half_open,
                                 const struct sockaddr *peer, socklen_t peerlen);
/* Starts reading on a socket just handed to the application. */
void nd__socket_start(nd_socket_t *sock);
