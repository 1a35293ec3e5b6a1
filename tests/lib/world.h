/* SPDX-License-Identifier: MIT */
/*
 * The thread suites' world (test_group, test_moves, test_thread_stress): an owner loop on
 * the test's thread, worker loops in threads serving a server group, closures posted
 * between them, clients on the owner loop, and failure reports from worker threads.
 * One world at a time per process: W and CL are the current one.
 */
#ifndef ND_TEST_WORLD_H
#define ND_TEST_WORLD_H

#include "harness.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define MAXW 4

/* ------------------------------------------------------------------ failures off the owner */

/*
 * Check's asserts write a message even when they pass and are not meant for other threads,
 * so code on worker threads uses WCHECK: the first failure is kept and the owner loop is
 * asked to abort with it. The owner thread aborts at once. world_end() aborts with a
 * failure that is still pending.
 */
void world_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define WCHECK(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond))                                                                               \
            world_fail(__FILE__, __LINE__, __VA_ARGS__);                                           \
    } while (0)

/* For hot paths on the owner thread: no message unless it fails. */
#define OCHECK(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg(__VA_ARGS__);                                                             \
    } while (0)

/* Which worker this thread runs: -1 on the test's own thread. */
extern _Thread_local int tl_worker;

/* ------------------------------------------------------------------ messages */

/* A closure posted to a loop: fn runs there with the message, which is then freed. */
typedef struct msg msg_t;
typedef void (*msg_fn)(msg_t *m);
struct msg {
    msg_fn fn;
    int widx; /* the worker it concerns or comes from */
    long a, b, c;
    void *p;
};

msg_t *msg_new(msg_fn fn, int widx, long a, long b, void *p);
/* Posts m to loop (WCHECKed; m is freed when the post fails). */
void send_msg(nd_loop_t *loop, msg_t *m);
void post_msg(nd_loop_t *loop, msg_fn fn, int widx, long a, long b, void *p);

/* ------------------------------------------------------------------ the world */

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

/* The current world (set by world_new, cleared by world_end). */
extern world_t *W;

/* The owner loop plus nw (<= MAXW) worker loops, each running in its own thread. */
world_t *world_new(int nw);
/* Releases the owner's own ref: the test has everything it waits for. */
void world_done(world_t *w);
/* After th_run(owner): every worker loop is empty, the threads stop, the owner is empty;
 * frees w. */
void world_end(world_t *w);

/* A group (w->group) over the first nw workers, not listening yet; 'error' on it fails
 * the test. */
nd_server_t *group_new(world_t *w, const nd_server_options_t *opts, int nw, nd_balance_t b);
/* A group over every worker with w->opts, listening on 127.0.0.1:0. */
void group_start(world_t *w, nd_balance_t b, nd_listener_fn on_listening);
/* Inside 'listening': the group's port (also kept in w->port). */
int group_port(world_t *w);
/* Closes the group; once it has closed, counts that in *closed and calls world_done. */
void group_close_done(world_t *w, int *closed);

/* A worker's list of its connections (on that worker only). */
void list_add(wlist_t *l, wconn_t *c);
void list_remove(wlist_t *l, wconn_t *c);
wconn_t *wconn_new(nd_socket_t *sock, int widx);
/* Appends to c->held ('data' that arrived while c was moving). */
void hold_bytes(wconn_t *c, const char *data, size_t len);
/* The generic server-side 'close' (arg: the wconn_t): off the list, h.sclosed reported
 * late with the bytes read, the wconn_t freed. */
void wc_close(void *self, const nd_event_t *ev, void *arg);
/* A connection the worker keeps, listed, until it closes (with wc_close). */
wconn_t *keep_conn(world_t *w, int widx, nd_socket_t *sock);
/* From the on_adopt of a move to c->target: c is listed on this worker again and closes
 * with wc_close. */
void wconn_adopted(wconn_t *c, nd_socket_t *sock);

/* From a worker: runs fn on the owner with a message from this worker. */
void report_now(msg_fn fn, long a, long b, void *p);

/* ------------------------------------------------------------------ clients on the owner */

typedef struct client client_t;
typedef struct clients {
    client_t *v;
    int n, closed, connected;
    void (*on_connect)(client_t *c);
    void (*on_data)(client_t *c, const char *data, size_t len); /* NULL: kept in rx */
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

/* The current clients: n of them, ids 0..n-1 (the test frees CL.v). */
extern clients_t CL;
void clients_init(int n);
/* Connects c to 127.0.0.1:port on the owner loop, with the CL hooks. */
void client_start(client_t *c, int port);
void clients_destroy_all(void);

#endif
