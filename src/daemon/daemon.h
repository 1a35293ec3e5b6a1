/* SPDX-License-Identifier: MIT */
/*
 * netd's shared state: the daemon (main thread), its servers, its worker threads and
 * their connection registries, and the few counters that cross threads (atomics).
 */
#ifndef NETD_DAEMON_H
#define NETD_DAEMON_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <jansson.h>
#include <netd/net.h>

#include "conf.h"
#include "protocol.h"

/* Descriptors kept for operators and proxy upstreams (CONTROL.md Transport). */
#define NETD_FD_RESERVE 64

typedef struct netd netd_t;
typedef struct netd_worker netd_worker_t;
typedef struct netd_server netd_server_t;
typedef struct netd_conn netd_conn_t;
typedef struct netd_client netd_client_t;

/* ----------------------------------------------------------------------- logging */

/* log.c. Any thread. -v adds DEBUG (reload diffs, moves), -vv TRACE (every connection). */
enum {
    NETD_LOG_ERROR = 0,
    NETD_LOG_WARN = 1,
    NETD_LOG_INFO = 2,
    NETD_LOG_DEBUG = 3,
    NETD_LOG_TRACE = 4
};
extern int netd_log_level;
/* Journald (JOURNAL_STREAM names stderr): "<N>" priority prefixes; else timestamps. */
void netd_log_init(void);
void netd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* For lines that can repeat fast (one per failed connection): at most a few per second
 * per key (a string literal naming the kind); the rest are counted, and the count is
 * logged once the second is over (netd_log_flush, or the next line of that kind). */
void netd_log_limited(int level, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Main loop, once a second: logs the counts of suppressed lines. */
void netd_log_flush(void);

/* ------------------------------------------------------------------------- servers */

enum netd_server_state { NETD_SRV_STARTING, NETD_SRV_LISTENING, NETD_SRV_CLOSING, NETD_SRV_CLOSED };

/* A configured server: its group lives on the main loop; workers read the immutable spec
 * and the atomics. Freed when its group is gone and no connection refers to it. */
struct netd_server {
    uint64_t id;
    netd_t *d;
    /* immutable once listening, but for the atomics below and spec.name, which only the
     * main thread reads (a retired server is renamed "NAME#ID") */
    netd_listen_spec_t spec;
    char *label;                  /* the name at open: immutable, for workers' log lines */
    struct netd_unix_file *unix_file; /* the socket file netd made for a path server */
    _Atomic unsigned timeout_ms;
    enum netd_server_state state; /* main thread */
    bool inherited_fd;            /* socket activation: never closed on reload */
    bool from_config;             /* opened from the config file: reload manages it */
    nd_server_t *group;           /* owner-side server, main thread */
    nd_address_t address;         /* as bound */
    nd_server_stats_t final;      /* the group's counters when it closed */
    _Atomic uint64_t bytes_read_closed, bytes_written_closed; /* of ended connections */
    _Atomic int refs; /* main's + one per live connection record */
    netd_client_t *listen_client; /* a `listen` waiting for 'listening' */
    json_t *listen_id;
    TAILQ_HEAD(, netd_waiter) close_waiters; /* `close` with wait */
    /* Called once, when the server listened (code NULL) or failed to (startup and reload
     * batches, lifecycle.c). Main thread. */
    void (*settled)(netd_server_t *s, const char *code, const char *message, void *arg);
    void *settled_arg;
    TAILQ_ENTRY(netd_server) link;
};

void netd_server_retain(netd_server_t *s);
void netd_server_release(netd_server_t *s);

/* A control request that is answered later (a `close` waiting for 'close'). */
typedef struct netd_waiter {
    netd_client_t *client;
    json_t *id;
    TAILQ_ENTRY(netd_waiter) link;
} netd_waiter_t;

/* -------------------------------------------------------------------- connections */

enum netd_role { NETD_ROLE_CLIENT, NETD_ROLE_UPSTREAM };

/* One live socket, registered on the worker thread that owns it. */
struct netd_conn {
    uint64_t id;
    nd_socket_t *sock;
    netd_server_t *server;
    netd_worker_t *worker;
    enum netd_role role;
    uint64_t created_ms;
    netd_conn_t *pair; /* client <-> upstream of a proxy */
    TAILQ_ENTRY(netd_conn) link;
};

/* ------------------------------------------------------------------------- workers */

struct netd_worker {
    int index;
    netd_t *d;
    nd_loop_t *loop;
    nd_thread_t *thread;
    TAILQ_HEAD(, netd_conn) conns; /* worker thread only */
    struct event *sweep_ev;        /* limits: stalled slow readers */
    _Atomic uint64_t idle_timeouts, slow_destroyed, upstream_failed;
};

/* --------------------------------------------------------------- control clients */

struct netd_client;

/* ---------------------------------------------------------------------- the daemon */

struct netd {
    nd_loop_t *loop; /* main loop: control socket, signals, acceptors */
    netd_config_t cfg;
    char *config_file; /* NULL: built-in default */
    char control_path[108];
    bool control_default;                /* no -s, no control.path: the default path */
    struct netd_unix_file *control_file; /* removed at exit if it still is ours */
    nd_server_t *control;
    /* The servers of the config file as last loaded (what reload compares with, so a
     * `set` never makes a server look changed). Main thread. */
    netd_listen_spec_t *loaded;
    size_t nloaded;
    struct netd_reload *reload; /* the reload in progress, or NULL */
    bool started;               /* every configured server listened: READY=1 was sent */
    int nclients;
    TAILQ_HEAD(, netd_client) clients;
    TAILQ_HEAD(netd_server_list, netd_server) servers;
    netd_worker_t *workers;
    int nworkers;
    nd_loop_t **worker_loops;
    uint64_t started_ms;
    _Atomic uint64_t next_id; /* servers and sockets, never reused */
    _Atomic int watchers;     /* workers only post events while someone watches */
    bool draining;
    int exit_code;
    struct event *drain_timer;
    int sigterm_count;
    /* socket activation */
    int listen_fds_start, listen_fds_count;
    char **listen_fd_names;
    bool *listen_fd_used;
    int fd_limit;
    uint64_t paused_seen; /* acceptPausedTotal at the last overload check */
    /* limits read by workers; the reload may change them */
    _Atomic size_t max_buffered_bytes;
    _Atomic size_t high_water_mark;
    _Atomic unsigned stall_ms;
    struct {
        uint64_t accepted, rejected, accept_paused, handoff_failed;
    } closed; /* totals of servers that are gone */
    struct {
        uint64_t id;
        char name[128];
    } *closed_ids; /* servers that closed, for a clear ENOTRUNNING */
    size_t nclosed, closed_cap;
};

uint64_t netd_now_ms(void);
uint64_t netd_next_id(netd_t *d);

/* workers.c: threads, the registry, moves, fan-out queries. */
int netd_workers_start(netd_t *d, int n);
void netd_workers_stop(netd_t *d);
/* Destroys every connection on every worker (the drain deadline passed). */
void netd_workers_cut(netd_t *d);
/* The worker init of a server group: attaches 'connection'/'adopt' on a worker thread. */
void netd_worker_server_init(nd_server_t *worker_server, int index, void *arg);
json_t *netd_conn_json(const netd_conn_t *c);
netd_conn_t *netd_worker_find(netd_worker_t *w, uint64_t id);
/* On the owning worker: moves c (and its proxy pair) to worker `thread`; the reply to the
 * control client follows from the main loop. Returns 0 or a negative code. */
int netd_worker_move(netd_worker_t *w, netd_conn_t *c, int thread, netd_client_t *client,
                     json_t *id);
int netd_worker_move_rebalance(netd_worker_t *w, netd_conn_t *c, int thread, void *rebalance);
/* Applies the server's current idle timeout to a live connection (worker thread). */
void netd_conn_apply_timeout(netd_conn_t *c);

/*
 * Fan-out: runs fn(worker, arg) on every worker thread; each returns a JSON value (or
 * NULL); once all have answered, done(d, results[nworkers], arg) runs on the main loop
 * and the results are freed after it.
 */
typedef json_t *(*netd_fanout_fn)(netd_worker_t *w, void *arg);
typedef void (*netd_fanout_done)(netd_t *d, json_t **results, void *arg);
int netd_fanout(netd_t *d, netd_fanout_fn fn, netd_fanout_done done, void *arg);

/* servers.c: the server record's lifecycle. */
netd_server_t *netd_server_find(netd_t *d, const json_t *ref);
json_t *netd_server_json(netd_server_t *s, uint64_t live_bytes_read, uint64_t live_bytes_written);
/* Opens a server from a spec (stolen on success). Replies to client (if any) once
 * listening or failed. Returns 0 when the attempt started, or fills code/msg. */
int netd_server_open(netd_t *d, netd_listen_spec_t *spec, netd_client_t *client, json_t *id,
                     const char **code, char *msg, size_t msglen);
void netd_server_close(netd_server_t *s, bool destroy_conns);
/* Main thread: gives a server another name (a retired one becomes "NAME#ID"). */
int netd_server_rename(netd_server_t *s, const char *name);
/* Servers that closed: a second close says ENOTRUNNING rather than "no such server". */
bool netd_server_closed_before(netd_t *d, const json_t *ref);

/* control.c */
int netd_control_start(netd_t *d);
void netd_control_stop(netd_t *d);
/* Sends one reply line to a client: {"id":id,"ok":true, ...fields} (fields stolen). */
void netd_reply_ok(netd_client_t *c, json_t *id, json_t *fields);
void netd_reply_error(netd_client_t *c, json_t *id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A command that answers later calls netd_client_done once it has replied, so the next
 * request of that client runs. */
void netd_client_hold(netd_client_t *c);
void netd_client_done(netd_client_t *c);
bool netd_client_alive(const netd_client_t *c);
void netd_client_watch(netd_client_t *c, json_t *events);
int netd_watch_event_known(const char *name);
void netd_control_broadcast(netd_t *d, const char *event, json_t *line);
/* Events for `watch`, from any thread. */
void netd_watch_emit(netd_t *d, const char *event, uint64_t server, uint64_t socket,
                     json_t *extra /* stolen, may be NULL */);

/* commands.c: dispatch of one parsed request. */
void netd_command_run(netd_t *d, netd_client_t *c, const netd_command_t *cmd, json_t *req,
                      json_t *id);
int netd_commands_check(void);
/* Main loop: one move of a rebalance ended (ok: the socket arrived). */
void netd_rebalance_moved(netd_t *d, void *rebalance, bool ok);

/* lifecycle.c: startup, drain and reload. */
/* Opens every server of d->cfg; once all listened, READY=1. If one fails, netd exits 1
 * naming it, without READY (CONTROL.md Config file). */
void netd_start_servers(netd_t *d);
/* Starts the drain (SIGTERM or `shutdown`). */
void netd_drain(netd_t *d, unsigned timeout_ms);
/* Ends the main loop once a drain has seen every server close. */
void netd_maybe_drained(netd_t *d);
/* SIGHUP (client NULL) or `reload`: validates the file, applies the difference with the
 * file as last loaded, and (for a client) replies with added/removed/changed/kept once
 * every new server listened or failed. Refused while draining (ESHUTDOWN) or while
 * another reload runs (EBUSY). */
void netd_reload(netd_t *d, netd_client_t *client, json_t *id);
/* Frees the file as last loaded (at exit). */
void netd_loaded_free(netd_t *d);

/* stats.c */
json_t *netd_stats_json(netd_t *d);
char *netd_metrics_text(netd_t *d);
/* acceptPausedTotal alone (the once-a-second overload log line). */
uint64_t netd_stats_accept_paused(netd_t *d);
/* Keeps a closing server's totals in the daemon's (inside its 'close'). */
void netd_stats_closed_server(netd_t *d, nd_server_t *group);

/* systemd.c */
void netd_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Reads LISTEN_FDS/LISTEN_FDNAMES (checked against LISTEN_PID), makes the fds
 * non-blocking; clears the variables. */
void netd_listen_fds_init(netd_t *d);
/* The inherited fd for a spec's fd/fd_name: >= 0, or -1 (EBADF). */
int netd_listen_fd_lookup(netd_t *d, const netd_listen_spec_t *spec);

#endif
