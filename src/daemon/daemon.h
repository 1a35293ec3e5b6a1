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
#include "observe.h"
#include "protocol.h"

/* Descriptors kept for operators and proxy upstreams (CONTROL.md Transport). */
#define NETD_FD_RESERVE 64

typedef struct netd netd_t;
typedef struct netd_worker netd_worker_t;
typedef struct netd_server netd_server_t;
typedef struct netd_conn netd_conn_t;
typedef struct netd_client netd_client_t;
typedef struct netd_pending netd_pending_t;
typedef struct netd_move netd_move_t;

/*
 * Ownership across threads
 * ------------------------
 * netd runs one main loop (control socket, signals, the acceptors of every server group)
 * and N worker loops (the connections). Every type below says which loop owns it, who
 * else may touch it and how, and when it is freed. The rules behind all of them:
 *   - A message between threads carries a counted reference or hands its object over
 *     whole (the sender stops touching it when it posts); never a bare pointer to
 *     something the sender may still free.
 *   - Messages that must arrive embed their mailbox node (nd_msg_t), allocated with what
 *     they carry before anything is committed, so posting cannot fail half way.
 *   - Only the main loop writes to control clients, and only the main loop builds JSON:
 *     workers fill typed slots (a fan-out) or typed messages (moves, watch events).
 *   - A socket in transit between workers is never in no one's hands: the move that
 *     carries it is registered on the main loop from before it leaves until after it
 *     arrives, so it is listed (`moving`), destroyable, counted and waited for.
 */

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

/* --------------------------------------------------------------- deferred replies */

/*
 * A control request that is answered later (listen, close, every fan-out, move).
 * Owned by: the main loop. Holds a reference on its client, which stays busy (its later
 * requests wait, so replies keep their order) until this one is answered. Freed by
 * netd_pending_ok / netd_pending_error, which reply unless the client has gone.
 */
struct netd_pending {
    netd_client_t *client;
    json_t *id;
    int waits_for; /* on a server's waiter list: NETD_WAIT_* */
    TAILQ_ENTRY(netd_pending) link;
};
TAILQ_HEAD(netd_pending_list, netd_pending);

enum { NETD_WAIT_NONE, NETD_WAIT_LISTEN, NETD_WAIT_CLOSE };

/* NULL when out of memory: then the ENOMEM reply has been sent already. */
netd_pending_t *netd_pending_new(netd_client_t *c, json_t *id);
void netd_pending_ok(netd_pending_t *p, json_t *fields /* stolen, may be NULL */);
/* Frees p without a reply: its client went to another process with the request. */
void netd_pending_drop(netd_pending_t *p);
void netd_pending_error(netd_pending_t *p, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ------------------------------------------------------------------------- servers */

enum netd_server_state { NETD_SRV_STARTING, NETD_SRV_LISTENING, NETD_SRV_CLOSING, NETD_SRV_CLOSED };

/*
 * A server the daemon opened (config or `listen`).
 * Owned by: the main loop, on d->servers from netd_server_open until its group's 'close'.
 * Touched by workers: through the counted reference each connection record holds
 * (netd_server_retain, atomic); they read `id`, `spec` (immutable once opened, except
 * max_connections, which only the main loop reads) and the atomics.
 * Freed when: the main loop's reference (dropped at 'close') and every record's are gone.
 */
struct netd_server {
    uint64_t id;
    netd_t *d;
    /* spec.name alone may change after open (a retired server becomes "NAME#ID"), and
     * only the main loop reads it; workers read netd_server_label(). */
    netd_listen_spec_t spec;
    /* The name workers show (watch, sockets, the access log): the name at open, then, for
     * an unnamed server bound at once, its address name. A worker may accept before the
     * main loop knows the address (worker_accepts), so the switch is published with
     * release and read with acquire; both strings live as long as the record. */
    _Atomic(const char *) label;
    char *label_open, *label_bound;
    struct netd_unix_file *unix_file; /* the socket file netd made for a path server */
    _Atomic unsigned timeout_ms;
    _Atomic bool destroying;      /* `close {"destroy":true}`: sockets that arrive are destroyed */
    enum netd_server_state state; /* main loop */
    bool inherited_fd;            /* socket activation: never closed on reload */
    bool from_config;             /* opened from the config file: reload manages it */
    nd_server_t *group;           /* owner-side server, main loop */
    nd_address_t address;         /* as bound */
    nd_server_stats_t final;      /* the group's counters when it closed */
    _Atomic uint64_t bytes_read_closed, bytes_written_closed; /* of ended connections */
    _Atomic int refs;                 /* main's + one per live connection record */
    netd_server_obs_t obs;            /* per-server metrics: atomics the workers add to */
    struct netd_pending_list waiters; /* `listen` and `close` answered at an event */
    /* The worker-side server of each worker (slot i written once, by worker i, and read
     * only by it): where a socket handed over by an upgrade is counted. */
    nd_server_t **members;
    /* Counters carried over from the process this one took over from (upgrade). */
    nd_server_stats_t carried;
    /* Called once, when the server listened (code NULL) or failed to (startup and reload
     * batches, lifecycle.c). Main loop. */
    void (*settled)(netd_server_t *s, const char *code, const char *message, void *arg);
    void *settled_arg;
    TAILQ_ENTRY(netd_server) link;
};

/* The server's name as workers show it (any thread). */
static inline const char *netd_server_label(const netd_server_t *s)
{
    return atomic_load_explicit(&s->label, memory_order_acquire);
}

void netd_server_retain(netd_server_t *s);
void netd_server_release(netd_server_t *s);

/* -------------------------------------------------------------------- connections */

enum netd_role { NETD_ROLE_CLIENT, NETD_ROLE_UPSTREAM };

/*
 * One live socket and what the daemon knows of it.
 * Owned by: the worker whose `conns` list holds it; while it moves, by the netd_move_t
 * carrying it (on no list; nobody else touches it). The main loop never dereferences a
 * record: it sees netd_sockinfo_t copies. A proxy's two records point at each other
 * (`pair`) only while both are on the same worker.
 * Freed when: its socket's 'close' has run, on the owning worker.
 */
struct netd_conn {
    uint64_t id;
    nd_socket_t *sock;
    netd_server_t *server; /* a counted reference */
    netd_worker_t *worker;
    enum netd_role role;
    bool parked;         /* exported or imported by an upgrade, not yet settled */
    uint64_t created_ms; /* monotonic, for ageMs and a 'close' event's durationMs */
    netd_conn_t *pair;   /* client <-> upstream of a proxy */
    netd_conn_obs_t obs; /* how it ended, moves, bytes settled (observe.h) */
    TAILQ_ENTRY(netd_conn) link;
};

/* A copy of one socket's figures, made on its worker and read on the main loop. */
typedef struct netd_sockinfo {
    uint64_t id, server;
    int thread;
    enum netd_role role;
    bool moving;
    const char *state; /* a string literal */
    char remote_address[64], local_address[64];
    int remote_port, local_port;
    int remote_family; /* 4, 6, or 0 (unix) */
    uint64_t bytes_read, bytes_written, buffer_size, age_ms, idle_ms;
    uint64_t created_ms;   /* netd_now_ms() at its start: the age order, whichever worker
                            measured age_ms when */
    char server_name[128]; /* "serverName" (truncated past 127 bytes) */
} netd_sockinfo_t;

void netd_sockinfo_of(const netd_conn_t *c, netd_sockinfo_t *out);
json_t *netd_sockinfo_json(const netd_sockinfo_t *info);

/* ------------------------------------------------------------------------- workers */

/*
 * A worker thread and its loop.
 * Owned by: its own thread for everything but the fields set before the thread starts
 * (index, d, loop, thread), which are read-only from then on; the atomics are counters
 * any thread may read.
 */
struct netd_worker {
    int index;
    netd_t *d;
    nd_loop_t *loop;
    nd_thread_t *thread;
    TAILQ_HEAD(, netd_conn) conns; /* worker thread only */
    bool cut;                      /* worker thread only: the exit cut ran; arrivals die */
    struct event *sweep_ev;        /* limits: stalled slow readers */
    _Atomic uint64_t idle_timeouts, slow_destroyed, upstream_failed;
    netd_worker_obs_t obs; /* moves and access-log counters (observe.h) */
};

/* ----------------------------------------------------------------------- moves */

/*
 * One live socket (with its proxy pair) moving between workers, for `move` or
 * `rebalance`.
 * Owned by: whoever holds it, in turn: the main loop creates it and registers it in
 * d->moves; the start message hands it to the source worker; the library's move carries
 * it (with the records) to the target worker; the completion message hands it back to
 * the main loop, which retires it. The registry fields (marked main) are touched only by
 * the main loop, the others only by the current holder.
 * Freed when: retired and no `sockets` query that began while it was in flight is still
 * waiting (so that query still lists it as `moving`).
 */
struct netd_move {
    nd_msg_t msg; /* the hop in progress */
    netd_t *d;
    uint64_t socket_id;
    int from, to;
    /* written by the workers that hold it */
    int rc;                  /* 0 when it arrived; -ESRCH not on the source (any more),
                               ND_ECLOSED, -EBUSY, ... */
    netd_conn_t *conns[2];   /* the records in transit */
    netd_sockinfo_t arrived; /* as the target sees it on arrival */
    /* main */
    netd_sockinfo_t listed; /* what `sockets` shows while it moves */
    void (*done)(netd_t *d, netd_move_t *m, void *arg);
    void *arg;
    struct netd_pending_list destroys; /* `destroy` requests that arrived meanwhile */
    uint64_t retired_seq;              /* 0 while in flight */
    TAILQ_ENTRY(netd_move) link;
};
TAILQ_HEAD(netd_move_list, netd_move);

/* Main loop: registers a move of m->socket_id from m->from to m->to and starts it; done
 * runs on the main loop once it arrived or failed (m->rc). m is retired after done. */
void netd_move_start(netd_t *d, netd_move_t *m);
netd_move_t *netd_move_new(netd_t *d, const netd_sockinfo_t *info, int to,
                           void (*done)(netd_t *d, netd_move_t *m, void *arg), void *arg);
/* Main loop: the registered move of a socket, or NULL. */
netd_move_t *netd_move_find(netd_t *d, uint64_t socket_id);
/* Main loop: `sockets` queries see moves that were in flight at any time while they ran. */
uint64_t netd_moves_query_begin(netd_t *d);
void netd_moves_query_end(netd_t *d, uint64_t begin);
/* Calls fn for every move in flight now or retired after `begin`. */
void netd_moves_foreach_since(netd_t *d, uint64_t begin,
                              void (*fn)(const netd_move_t *m, void *arg), void *arg);
void netd_moves_free_all(netd_t *d);

/* --------------------------------------------------------------------- fan-out */

/*
 * Runs fn(worker, ctx) on every worker thread. Each fn writes only its own worker's slot
 * of ctx (a typed array indexed by w->index, allocated by the caller); once all have
 * answered, done(d, ctx) runs on the main loop, which alone reads the slots (the
 * mailbox's lock orders the workers' writes before). The fan-out's messages are
 * allocated up front: once it returns 0, every worker answers and done runs exactly once.
 * Returns 0 or -ENOMEM (then nothing runs).
 */
typedef void (*netd_fanout_fn)(netd_worker_t *w, void *ctx);
typedef void (*netd_fanout_done)(netd_t *d, void *ctx);
int netd_fanout(netd_t *d, netd_fanout_fn fn, netd_fanout_done done, void *ctx);

/* ------------------------------------------------------------------- watch events */

enum netd_event_kind { NETD_EV_LISTENING, NETD_EV_CONNECTION, NETD_EV_CLOSE, NETD_EV_ERROR };

/* One `watch` event, filled on the thread where it happened and handed to the main loop,
 * which builds the line. */
typedef struct netd_event {
    nd_msg_t msg;
    netd_t *d;
    enum netd_event_kind kind;
    uint64_t server, socket; /* socket 0: a server's own event */
    int thread;              /* -1 for server events */
    uint64_t time_ms;        /* since the epoch */
    char remote_address[64];
    int remote_port;
    uint64_t duration_ms, bytes_read, bytes_written; /* socket 'close' */
    bool had_error;
    char code[32], message[256]; /* server 'error' */
    char server_name[];
} netd_event_t;

/* Any thread: a new event for server s (NULL when nobody watches or out of memory). */
netd_event_t *netd_event_new(netd_t *d, enum netd_event_kind kind, const netd_server_t *s);
/* Any thread: hands the event to the main loop (cannot fail). */
void netd_event_post(netd_event_t *ev);
uint64_t netd_wall_ms(void);

/* ---------------------------------------------------------------------- the daemon */

/*
 * The daemon.
 * Owned by: the main loop. Workers read the fields fixed before they start (loop,
 * workers, nworkers, worker_loops) and the atomics; nothing else.
 */
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
    struct netd_reload *reload;   /* the reload in progress, or NULL */
    bool started;                 /* every configured server listened: READY=1 was sent */
    struct netd_clients *clients; /* control.c's */
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
    bool finish_expired; /* the exit's bound on waiting passed */
    /* live upgrade (upgrade.c) */
    bool upgrading;   /* control requests wait: an upgrade is handing everything over */
    bool handed_over; /* everything went to the new process: leave its files alone */
    struct upgrade *upgrade;
    bool drain_after_upgrade; /* a SIGTERM came during an upgrade: drain once it is undone */
    char **argv;              /* as started, to start the new binary the same way */
    char *exe;                /* the binary we run (its real path at start) */
    netd_client_t *upgrade_requester; /* new side: the client whose `upgrade` we answer */
    json_t *upgrade_reply_id;
    /* moves in flight and recently retired (main loop) */
    struct netd_move_list moves, moves_retired;
    uint64_t move_seq;
    int fanouts_open; /* fan-outs whose answers are still due */
    struct queries {
        uint64_t *begin;
        size_t n, cap;
    } move_queries;                     /* `sockets` queries still waiting: their begin marks */
    struct netd_activation *activation; /* systemd.c's: inherited listening descriptors */
    int fd_limit;
    uint64_t paused_seen; /* acceptPausedTotal at the last overload check */
    /* limits read by workers; the reload may change them */
    _Atomic size_t max_buffered_bytes;
    _Atomic size_t high_water_mark;
    _Atomic unsigned stall_ms;
    struct netd_closed_totals *closed;      /* stats.c's: what servers that are gone counted */
    struct netd_closed_names *closed_names; /* servers.c's */
    netd_observe_t *obs;      /* metrics, the HTTP endpoint, the access log (observe.c) */
    const char *metrics_flag; /* --metrics: wins over the config's, on reload too */
};

uint64_t netd_now_ms(void);
uint64_t netd_next_id(netd_t *d);

/* workers.c: threads, the registry of connections, limits. */
int netd_workers_start(netd_t *d, int n);
/* Cuts what is left and ends every worker thread; their loops stay allocated (messages
 * posted to them wait) until netd_workers_free, so the main loop can be freed first. */
void netd_workers_stop(netd_t *d);
void netd_workers_free(netd_t *d);
/* Destroys every connection on every worker (the drain deadline passed); connections
 * that arrive on a worker afterwards are destroyed at once. */
void netd_workers_cut(netd_t *d);
/* The worker init of a server group: attaches 'connection'/'adopt' on a worker thread. */
void netd_worker_server_init(nd_server_t *worker_server, int index, void *arg);
netd_conn_t *netd_worker_find(netd_worker_t *w, uint64_t id);
/* Worker thread: a record arrives (a move) or leaves. */
void netd_worker_insert(netd_worker_t *w, netd_conn_t *c);
void netd_worker_remove(netd_conn_t *c);
/* Worker thread: the record of a socket handed over by an upgrade (parked: started
 * later), with the id and age it had in the old process. */
netd_conn_t *netd_worker_import_conn(netd_worker_t *w, nd_socket_t *sock, netd_server_t *srv,
                                     enum netd_role role, uint64_t id, uint64_t age_ms);
/* Worker thread: drops a record whose socket went to another process (no 'close'). */
void netd_conn_forget(netd_conn_t *c);
/* Worker thread: re-attaches the daemon's listeners and the handler after a move. */
void netd_worker_adopted(netd_worker_t *w, netd_conn_t *client_or_lone);
/* Applies the server's current idle timeout to a live connection (worker thread). */
void netd_conn_apply_timeout(netd_conn_t *c);

/* servers.c: the server record's lifecycle. */
netd_server_t *netd_server_find(netd_t *d, const json_t *ref);
/* The open server with that id (not one that closed), or NULL. */
netd_server_t *netd_server_by_id(netd_t *d, uint64_t id);
/* The Server object; live_* add the bytes of connections still open. */
json_t *netd_server_json(netd_server_t *s, uint64_t live_bytes_read, uint64_t live_bytes_written);
/* Opens a server from a spec (stolen on success). `p` (may be NULL) is answered once it
 * listens or fails. Returns 0 when the attempt started, or fills code/msg. */
int netd_server_open(netd_t *d, netd_listen_spec_t *spec, netd_pending_t *p, const char **code,
                     char *msg, size_t msglen);
void netd_server_close(netd_server_t *s, bool destroy_conns);
/* Main thread: gives a server another name (a retired one becomes "NAME#ID"). */
int netd_server_rename(netd_server_t *s, const char *name);
/* Servers that closed: a second close says ENOTRUNNING rather than "no such server". */
bool netd_server_closed_before(netd_t *d, const json_t *ref);
/* Upgrade, new side: a server record as the old process sent it (not listening yet), and
 * its listening on the descriptors that came with it (taken on success). */
netd_server_t *netd_server_import(netd_t *d, const json_t *rec, char *err, size_t errlen);
int netd_server_import_listen(netd_server_t *s, int *fds, int nfds, const char *path);

/* control.c: the control socket and its clients. */
int netd_control_init(netd_t *d);
void netd_control_free(netd_t *d);
int netd_control_start(netd_t *d);
void netd_control_stop(netd_t *d);
/* Sends one reply line to a client: {"id":id,"ok":true, ...fields} (fields stolen). */
void netd_reply_ok(netd_client_t *c, json_t *id, json_t *fields);
void netd_reply_error(netd_client_t *c, json_t *id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void netd_client_watch(netd_client_t *c, json_t *events);
int netd_watch_event_known(const char *name);
/* Main loop: one event line to every watcher that asked for it. */
void netd_control_broadcast(netd_t *d, enum netd_event_kind kind, json_t *line);

/* control.c: the control socket and its clients in a live upgrade. A client's whole
 * state: its socket's export, and what the daemon holds for it. */
typedef struct netd_client_export {
    netd_client_t *c; /* the old process's */
    nd_export_t ex;
    bool watching, eof;
    unsigned events;
    const char *unread; /* requests not yet run */
    size_t nunread;
    bool requester;   /* it waits for the `upgrade` reply */
    json_t *reply_id; /* that request's id (NULL: it had none) */
} netd_client_export_t;
bool netd_control_settled(netd_t *d, const netd_pending_t *upgrade);
int netd_control_export(netd_t *d, const netd_pending_t *upgrade, netd_client_export_t **out,
                        size_t *n);
void netd_control_export_abort(netd_t *d, netd_client_export_t *items, size_t n);
void netd_control_export_commit(netd_t *d, netd_client_export_t *items, size_t n);
netd_client_t *netd_control_import(netd_t *d, const void *rec, size_t len, int fd,
                                   const netd_client_export_t *state);
void netd_control_start_clients(netd_t *d);
int netd_control_adopt_listener(netd_t *d, int fd);

/* upgrade.c: the live upgrade (DESIGN.md 2b). */
/* Remembers how this process was started, so the new binary starts the same way. */
void netd_upgrade_init(netd_t *d, int argc, char **argv);
/* Old side: starts an upgrade to `exec` (NULL: the binary we run); p (may be NULL: a
 * SIGUSR2) is answered by the new process, or with EUPGRADE here on failure. */
void netd_upgrade_start(netd_t *d, netd_pending_t *p, const char *exec, unsigned timeout_ms);
/* Old side: stops an upgrade in progress (everything goes back): a SIGTERM wins. */
void netd_upgrade_cancel(netd_t *d, const char *why);
/* New side: the channel descriptor from the old process, or -1 for a normal start. */
int netd_takeover_fd(void);
/* New side: takes everything over. 0 once this process serves it all; -1 (the old one
 * keeps serving) otherwise. */
int netd_takeover(netd_t *d, int ch);

/* cmd_sockets.c: destroys a socket wherever it is (in transit: once it lands), then
 * answers p. */
void netd_destroy_socket(netd_t *d, netd_pending_t *p, uint64_t socket_id);

/* commands.c: dispatch of one parsed request. */
void netd_command_run(netd_t *d, netd_client_t *c, const netd_command_t *cmd, json_t *req,
                      json_t *id);

/* lifecycle.c: startup, drain and reload. */
/* Opens every server of d->cfg; once all listened, READY=1. If one fails, netd exits 1
 * naming it, without READY (CONTROL.md Config file). */
void netd_start_servers(netd_t *d);
/* After an upgrade's takeover: the servers came with it; the file as loaded now is what a
 * reload compares with, and reloads may run. */
void netd_servers_taken_over(netd_t *d);
/* Starts the drain (SIGTERM or `shutdown`). */
void netd_drain(netd_t *d, unsigned timeout_ms);
/* Ends the main loop once a drain has seen every server close. */
void netd_maybe_drained(netd_t *d);
/* SIGHUP or `reload`: validates the file, applies the difference with the file as last
 * loaded, and (for `reload`) replies with added/removed/changed/kept/failed once
 * every new server listened or failed. Refused while draining (ESHUTDOWN) or while
 * another reload runs (EBUSY). */
void netd_reload(netd_t *d, netd_pending_t *reply /* NULL for SIGHUP */);
/* Frees the file as last loaded (at exit). */
void netd_loaded_free(netd_t *d);

/* stats.c: the daemon's totals. */
int netd_stats_init(netd_t *d);
void netd_stats_free(netd_t *d);
json_t *netd_stats_json(netd_t *d);
/* Appends the daemon-wide figures of `stats` to the metrics text (one list drives both). */
void netd_stats_metrics(netd_t *d, netd_text_t *t);
/* acceptPausedTotal alone (the once-a-second overload log line). */
uint64_t netd_stats_accept_paused(netd_t *d);
/* Keeps a closing server's totals in the daemon's (inside its 'close'). */
void netd_stats_closed_server(netd_t *d, netd_server_t *s);
/* Upgrade: the closed servers' totals and the threads' counters travel to the new process. */
json_t *netd_stats_closed_json(netd_t *d);
void netd_stats_closed_load(netd_t *d, const json_t *closed);

/* systemd.c: sd_notify, socket activation, the descriptor store. */
void netd_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Socket activation: takes LISTEN_FDS and LISTEN_FDNAMES when LISTEN_PID is ours (the
 * descriptors made non-blocking), and clears the variables. */
void netd_activation_init(netd_t *d);
/* The inherited descriptors (at most max) and their names (NULL: unnamed): how many. */
int netd_activation_list(netd_t *d, int *fds, const char **names, int max);
/* An upgrade's: n descriptors become the inherited set, numbered 3.. for the config and
 * `listen` wherever they are (fds[i] become -1). 0, or -1 with err (they stay the
 * caller's). */
int netd_activation_adopt(netd_t *d, int *fds, const char *const *names, int n, char *err,
                          size_t errlen);
void netd_activation_free(netd_t *d);
/* At the drain: every TCP listener (not reuseport) goes into systemd's descriptor store
 * under its server's name (FDSTORE=1), so a restart takes it back with the connections
 * that queued meanwhile. Stops accepting on them. */
void netd_fdstore_listeners(netd_t *d);
/* After startup: stored descriptors no server took are removed from the store. */
void netd_fdstore_forget_unused(netd_t *d);
/* The inherited fd for a spec's fd/fd_name: >= 0, or -1 (EBADF). */
int netd_listen_fd_lookup(netd_t *d, const netd_listen_spec_t *spec);

#endif
