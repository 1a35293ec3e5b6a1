/* SPDX-License-Identifier: MIT */
/*
 * libnetd: the semantics of Node's `net` module (v0.10 reference) in C, on libevent.
 *
 * This header is the manual. Read it top to bottom once; every function says what it
 * takes, what it returns, which events it causes later, and who owns what.
 *
 * General rules
 * -------------
 * Loops.    Every object belongs to one nd_loop_t, and every call on an object must be
 *           made on the thread that runs that loop, unless the function's comment says
 *           "any thread" (those end in _post or _mp). A loop is one libevent event_base.
 * Errors.   Fallible calls return 0 (or a documented non-negative value) on success and
 *           a negative code on failure: -errno for system errors, or one of the ND_E*
 *           codes below for conditions that are not errnos. nd_err_name() gives the
 *           name ("ECONNREFUSED", "ENOTFOUND"), nd_strerror() the message. Failures of
 *           asynchronous work arrive later as an 'error' event carrying an nd_error_t.
 *           Constructors are the one exception: a call that creates an object and returns
 *           it (nd_loop_new, nd_server_new, nd_server_new_group, nd_socket_new,
 *           nd_connect, nd_thread_start) returns NULL on failure with errno set, EINVAL for
 *           bad arguments (a NULL loop included), ENOMEM when out of memory, or the
 *           system's errno (EMFILE, EBADF, ENOTSOCK, EAGAIN...), and leaves nothing
 *           behind. Getters that return a pointer (nd_server_loop, nd_socket_data...)
 *           return NULL for "none" and leave errno alone.
 * Events.   Objects are emitters: nd_*_on() adds a listener, nd_*_once() a one-shot
 *           listener, nd_*_off() removes one. Several listeners per event run in the order
 *           they were added. Events are never emitted from inside the call that caused
 *           them: listen() emits 'listening' on a later loop turn, destroy() emits 'close'
 *           later, a failed write reports its error later.
 * Lifetime. Who frees what, and when (the rules are the same on every thread):
 *           - A socket is freed by the library right after its 'close' event has run every
 *             listener: after destroy(), a fatal error, or both ends done. Until then it
 *             stays alive whatever it holds: unread input, a held-back 'end', queued
 *             output. A socket that never connected and is never destroyed stays until
 *             nd_loop_free(). Any code may call it until its 'close' has returned; after
 *             that nobody may touch it, unless it holds it (nd_socket_hold), and then only
 *             to read its state or to release it, or to connect it again.
 *           - A server is freed by the library right after its 'close' event has run every
 *             listener (close() on a listening server). A server that is not listening
 *             has no 'close' to wait for: one that never listened, or whose listen failed
 *             (it emits 'error' and nothing else, as Node), stays the application's until
 *             it calls nd_server_free() (or listens again, or nd_loop_free() runs).
 *           - nd_*_hold() keeps the memory past 'close' (or past nd_server_free) until the
 *             matching nd_*_release(); a listener that listens or connects again from
 *             'close' takes the object back for the library.
 *           Destroying, closing or freeing an object from inside one of its own callbacks
 *           is always safe: the memory goes once the callback has returned.
 *           nd_loop_free() frees whatever is left on its loop, emitting nothing.
 * Signals.  The library never lets SIGPIPE kill the process: every send uses
 *           MSG_NOSIGNAL and nothing else writes to sockets. It never calls exit().
 * Strings.  Strings passed in and out are UTF-8 and NUL-terminated unless a length is
 *           given. Binary data is (pointer, length).
 */
#ifndef NETD_NET_H
#define NETD_NET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;

/* ------------------------------------------------------------------------------------ */
/* Error codes                                                                          */
/* ------------------------------------------------------------------------------------ */

/*
 * Codes that are not errnos, all below ND__ERRNO_MIN so they never collide with -errno.
 * X(name, value, message). The name is what nd_err_name() returns and what an error
 * object's `name` holds (Node's err.code).
 */
#define ND_ERRNO_MAP(X)                                                                            \
    X(ENOTFOUND, -10001, "getaddrinfo ENOTFOUND")                                                  \
    X(ENOTRUNNING, -10002, "Not running")                                                          \
    X(ELISTENING, -10003, "Server is already listening")                                           \
    X(EWRITEAFTEREND, -10004, "write after end")                                                   \
    X(ECLOSED, -10005, "This socket is closed")                                                    \
    X(EENCODING, -10006, "Unknown encoding")                                                       \
    X(ECONNECTING, -10007, "Socket is already connecting or connected")                            \
    X(EDNS, -10008, "DNS resolution failed")                                                       \
    X(ENOTCONNECTED, -10009, "Socket is not connected")                                            \
    X(EFORMAT, -10010, "Not an export record this version can read")

enum {
#define ND__ERRNO_ENUM(name, value, msg) ND_##name = (value),
    ND_ERRNO_MAP(ND__ERRNO_ENUM)
#undef ND__ERRNO_ENUM
        ND__ERRNO_MIN = -10000
};

/* The name of a code: "ECONNREFUSED", "ENOTFOUND", ... ("UNKNOWN" for unknown codes).
 * Accepts negative codes and positive errnos alike. Never NULL; static storage. */
const char *nd_err_name(int code);
/* A human message for a code; static storage, never NULL. */
const char *nd_strerror(int code);

/*
 * An asynchronous error, as given to 'error' and 'lookup' listeners and to callbacks.
 * Valid only for the duration of the callback: copy what you need.
 */
typedef struct nd_error {
    int code;         /* negative: -errno or ND_E* */
    const char *name; /* nd_err_name(code), e.g. "EADDRINUSE" */
    const char
        *syscall; /* "connect", "listen", "bind", "getaddrinfo", "read", "write"... or NULL */
    const char *address;  /* the IP or unix path involved, or NULL */
    int port;             /* the port involved, or -1 */
    const char *hostname; /* the name that failed to resolve (ENOTFOUND), or NULL */
    const char *message;  /* "connect ECONNREFUSED 127.0.0.1:8124", "listen EADDRINUSE ..." */
} nd_error_t;

/* ------------------------------------------------------------------------------------ */
/* Loops                                                                                */
/* ------------------------------------------------------------------------------------ */

typedef struct nd_loop nd_loop_t;

/* Creates a loop with its own event_base. Returns NULL with errno set: ENOMEM, EMFILE or
 * ENFILE (it needs four descriptors: the mailbox's eventfd, epoll's and libevent's signal
 * socketpair; they are checked before libevent is asked, which would end the process
 * without them). The loop belongs to the thread that runs it. */
nd_loop_t *nd_loop_new(void);

/*
 * Runs the loop until no ref'd handle is active (Node's exit rule): a listening server,
 * a socket that is connecting, reading, or has output queued, and any pending event
 * keep it running; unref'd handles, socket idle timers and sockets that read nothing (paused
 * before they opened, or with their input buffer full) do not. Output still queued keeps
 * the loop running even on an unref'd socket, until it is written (in Node a pending write
 * is a request, which keeps the process alive whatever the handle's ref says).
 * Returns 0 when the loop ran out of work, 1 when nd_loop_stop() ended it, or a
 * negative code if libevent failed.
 */
int nd_loop_run(nd_loop_t *loop);

/* Runs one iteration: waits for at least one event unless nonblocking is set. Returns 1
 * if ref'd work remains afterwards, 0 if not. */
int nd_loop_run_once(nd_loop_t *loop, int nonblocking);

/* Makes nd_loop_run() return after the current iteration. Loop thread only. */
void nd_loop_stop(nd_loop_t *loop);

/* Frees the loop and every handle still attached to it, without emitting events.
 * Must not be called from inside nd_loop_run(). */
void nd_loop_free(nd_loop_t *loop);

/* The loop's event_base, for the application's own timers and signals. Owned by the
 * loop. */
struct event_base *nd_loop_base(nd_loop_t *loop);

/* Number of servers and sockets attached to the loop and not yet freed. Tests assert
 * that it is 0 at the end. */
int nd_loop_handle_count(const nd_loop_t *loop);

/* Number of active, ref'd handles: what keeps nd_loop_run() running. */
int nd_loop_alive_count(const nd_loop_t *loop);

/*
 * Points this loop's resolver at one nameserver ("127.0.0.1:5353" or "[::1]:53") instead
 * of the system's resolv.conf, and stops it from searching domains. The hosts file
 * (/etc/hosts) is still consulted first. Returns 0, -EINVAL for a bad address, -ENOMEM.
 */
int nd_loop_set_nameserver(nd_loop_t *loop, const char *addr_port);

/* Keeps the loop alive for the application's own events on nd_loop_base() (a timer, a
 * signal): nd_loop_run() does not return while the count of such refs is above 0. */
void nd_loop_ref(nd_loop_t *loop);
void nd_loop_unref(nd_loop_t *loop);

/* Adds a callback that runs on a later turn of this loop. Loop thread only. Returns 0 or
 * -ENOMEM. Pending callbacks keep the loop alive. */
int nd_loop_defer(nd_loop_t *loop, void (*fn)(void *arg), void *arg);

/* ------------------------------------------------------------------------------------ */
/* Events                                                                               */
/* ------------------------------------------------------------------------------------ */

typedef enum nd_event_type {
    /* Server events */
    ND_EV_LISTENING,  /* bound and accepting */
    ND_EV_CONNECTION, /* ev->socket: the new connection, owned by the library */
    /* Socket events */
    ND_EV_LOOKUP,  /* ev->error (NULL on success), ev->address, ev->family (4 or 6) */
    ND_EV_CONNECT, /* connected; writes queued before it are being flushed */
    ND_EV_DATA,    /* ev->data, ev->len: bytes, or a UTF-8 string if an encoding is set.
                      Emitted only while the socket flows: once a 'data' listener is added,
                      pipe() or resume() is called, and not paused. Before that the input
                      waits in the socket (see nd_socket_pause); nothing is lost */
    ND_EV_END,     /* the peer sent FIN, and every byte before it was emitted: 'end' waits
                      behind unread input (Node), and comes at once when none waits */
    ND_EV_TIMEOUT, /* idle for the setTimeout() delay; nothing is closed */
    ND_EV_DRAIN,   /* the write queue emptied after a write() that returned 0 */
    ND_EV_FINISH,  /* our FIN was sent after end() and every queued byte was written */
    /* Both */
    ND_EV_ERROR, /* ev->error. Sockets: a failure of the connection itself is reported once,
                    and 'close' (had_error 1) follows; a write on a destroyed socket is
                    reported once per connection ("This socket is closed"); each write refused
                    after end() (EWRITEAFTEREND) or after the peer's FIN (EPIPE, "This socket
                    has been ended by the other party") is reported, and the socket goes on to
                    its natural end, with had_error 0, as in v0.10 (Node 20 destroys on the
                    EPIPE). Servers: a listen failure, and nothing after it: no 'close' */
    ND_EV_CLOSE, /* ev->had_error (sockets): the last event; the object is freed after it */
    /* Worker-side server of a group */
    ND_EV_ADOPT, /* ev->socket: a live socket moved to this loop; re-attach listeners */
    ND_EV__COUNT
} nd_event_type_t;

typedef struct nd_socket nd_socket_t;
typedef struct nd_server nd_server_t;

typedef struct nd_event {
    nd_event_type_t type;
    const nd_error_t *error; /* ERROR; LOOKUP when it failed */
    nd_socket_t *socket;     /* CONNECTION */
    const char *data;        /* DATA: not NUL-terminated for bytes; NUL-terminated strings */
    size_t len;              /* DATA: bytes in data (without the NUL) */
    const char *address;     /* LOOKUP: the resolved IP as text */
    int family;              /* LOOKUP: 4 or 6 */
    int had_error;           /* CLOSE of a socket: 1 if closed because of an error */
} nd_event_t;

/*
 * A listener. `self` is the nd_server_t* or nd_socket_t* that emitted; `arg` is what was
 * given to nd_*_on(). The event and everything it points to is valid only during the call.
 */
typedef void (*nd_listener_fn)(void *self, const nd_event_t *ev, void *arg);

/* ------------------------------------------------------------------------------------ */
/* Addresses and isIP                                                                   */
/* ------------------------------------------------------------------------------------ */

typedef struct nd_address {
    char address[108]; /* "127.0.0.1", "::1", or the unix path */
    int family;        /* 4, 6, or 0 for a unix path */
    int port;          /* 0 for a unix path */
} nd_address_t;

/* "IPv4", "IPv6", or NULL for a unix socket or family 0. */
const char *nd_family_name(int family);

/* 4 if input is an IPv4 address in dotted-decimal, 6 if IPv6, 0 otherwise (NULL gives 0).
 * Exactly Node v0.10's tables: no inet_aton shortcuts, no leading-zero octets. */
int nd_is_ip(const char *input);
int nd_is_ipv4(const char *input); /* 1 or 0 */
int nd_is_ipv6(const char *input); /* 1 or 0 */

/* ------------------------------------------------------------------------------------ */
/* Server                                                                               */
/* ------------------------------------------------------------------------------------ */

typedef struct nd_server_options {
    int allow_half_open; /* accepted sockets do not end their side after the peer's FIN */
    int ipv6_only;       /* listening on "::" (or another IPv6 address) accepts IPv6 clients
                            only; by default "::" is dual-stack, as in libuv and Node, and IPv4
                            clients appear as ::ffff:a.b.c.d (modern Node's ipv6Only) */
    int worker_accepts;  /* groups (leastconn, roundrobin): the group's first worker accepts
                            for all of them instead of the owner's loop (see
                            nd_server_new_group); ignored by other servers */
} nd_server_options_t;

/*
 * createServer. opts may be NULL (defaults). If on_connection is not NULL it is added as a
 * 'connection' listener with arg. Returns NULL with errno EINVAL (NULL loop) or ENOMEM.
 * It keeps nothing alive until it listens. Freed after its 'close', or by nd_server_free()
 * while it does not listen (see Lifetime).
 */
nd_server_t *nd_server_new(nd_loop_t *loop, const nd_server_options_t *opts,
                           nd_listener_fn on_connection, void *arg);

/*
 * Starts listening on a TCP port. host NULL means INADDR_ANY (0.0.0.0); a host that is
 * not an IP literal is resolved first. port 0 picks a random port. backlog <= 0 means
 * 511. SO_REUSEADDR is always set. An IPv6 host ("::") is dual-stack unless the server was
 * made with ipv6_only. Returns 0 when the attempt started: 'listening' is emitted on a
 * later turn, or 'error' (code, syscall "listen" or "bind", address, port) and nothing else,
 * as in Node (v0.10's code and today; a 'close' no longer follows). The server then stays,
 * idle and the application's: listen may be called again (from the 'error' listener too,
 * as the reference's EADDRINUSE retry example does), close() gives ND_ENOTRUNNING, and
 * nd_server_free() gives it back. listen right after close() is allowed, even while old
 * connections drain (they still count): see nd_server_close.
 * Synchronous failures: -EINVAL (port out of 0..65535), ND_ELISTENING (already listening
 * or about to).
 */
int nd_server_listen(nd_server_t *server, int port, const char *host, int backlog);

/*
 * Listens on a unix socket path. Any file already at the path gives EADDRINUSE (as an
 * async 'error', like every listen failure), as in Node: a socket file left behind by a dead
 * process is not removed, whether anything answers there or not, and the call never waits
 * on it. Removing a leftover is the caller's decision: nd_unix_path_probe() tells a live
 * listener (even one whose backlog is full) from a file nobody answers at, without
 * blocking; unlink it and listen again if that file is yours to remove. (The library's
 * earlier probe connected, blocking, and unlinked what refused; a socket bound but not yet
 * listening refuses too, so that was never safe.)
 * The file created here is removed when the server closes, and only that file: the
 * library keeps the directory it was created in open (O_DIRECTORY|O_NOFOLLOW, after
 * resolving symlinks in the path once) with the file's device and inode, and unlinks that
 * directory entry only if it still is that inode. A path whose symlinks were repointed since,
 * or a file someone else put there after removing ours, is left alone. A server freed while
 * listening (nd_loop_free) leaves its file, as a process that exits does.
 * Errors as nd_server_listen(), with address = path.
 */
int nd_server_listen_path(nd_server_t *server, const char *path, int backlog);

/*
 * What is at a unix socket path, asked without blocking and without changing anything:
 * 1 when a listener answers there (a full backlog, EAGAIN, counts: it is alive, only busy),
 * 0 when the socket file is there but nobody accepts (ECONNREFUSED: a leftover of a dead
 * process, or a socket bound by someone who has not listened yet), -ENOENT when there is no
 * file, -ENOTSOCK for a file that is not a socket, or another -errno. It belongs to no
 * loop (like nd_is_ip).
 */
int nd_unix_path_probe(const char *path);

/*
 * Listens on an existing, already bound descriptor (TCP or unix). The server takes
 * ownership of fd and closes it when it closes. A descriptor that is not a socket gives
 * an async 'error' EINVAL (v0.10) or ENOTSOCK. The file of a unix socket taken this way is
 * never removed.
 */
int nd_server_listen_fd(nd_server_t *server, int fd, int backlog);

/* Listens on another listening server's handle (Node's listen(server._handle)): a dup()
 * of its descriptor. The other server is not changed. */
int nd_server_listen_handle(nd_server_t *server, const nd_server_t *other, int backlog);

/* Listens on a socket's descriptor (a dup()), e.g. one bound but not connected. */
int nd_server_listen_socket_handle(nd_server_t *server, const nd_socket_t *sock, int backlog);

/*
 * Stops accepting at once and keeps existing connections; 'close' is emitted once the
 * last connection's 'close' has run (on a later turn, even with none). If on_close is not
 * NULL it is added as a one-shot 'close' listener. Returns 0, or ND_ENOTRUNNING when the
 * server is not listening (never listened, its listen failed, already closed or closing),
 * in which case nothing is emitted (v0.10 threw "Not running"). A close on the same turn as
 * listen() cancels 'listening' and any listen 'error': only 'close' is emitted.
 * Listening again right after close() is allowed (Node). With no connection left, 'close'
 * comes first, then 'listening'. While connections still drain, that close() never emits
 * 'close' (the server listens again, as in Node); the connections count on, and the next
 * close() gives one 'close', which runs every on_close given so far.
 */
int nd_server_close(nd_server_t *server, nd_listener_fn on_close, void *arg);

/* The bound address (as the OS reports it). 0, or ND_ENOTRUNNING before the bind. */
int nd_server_address(const nd_server_t *server, nd_address_t *out);

/* unref: the listening server no longer keeps the loop alive. ref undoes it. Both may be
 * called before listen; they are remembered. */
void nd_server_ref(nd_server_t *server);
void nd_server_unref(nd_server_t *server);

/* maxConnections: further connections are closed at once with no 'connection' event.
 * 0 or negative means unlimited (the default). */
void nd_server_set_max_connections(nd_server_t *server, int max);
int nd_server_max_connections(const nd_server_t *server);

/* Keeps `reserve` descriptors of the open-file limit (RLIMIT_NOFILE, read now) for the
 * rest of the process: an accepted descriptor that falls in the reserve is closed and
 * accepting pauses as on EMFILE (counted in accept_paused), resuming when a connection
 * closes or after a backoff. 0 turns it off. Returns 0 or -EINVAL. */
int nd_server_set_fd_reserve(nd_server_t *server, int reserve);

/* The deprecated `connections` property: live connections of this server, or -1 (Node's
 * null) once the server has handed sockets to other loops. A connection counts from its
 * accept until it is destroyed: destroy() lowers the count at once, inside the call (Node's
 * _connections--), before its 'close'; destroying twice lowers it once. */
int nd_server_connections(const nd_server_t *server);

/* getConnections(cb): always called back on a later turn with err 0 and the count. */
typedef void (*nd_count_fn)(nd_server_t *server, int err, int count, void *arg);
int nd_server_get_connections(nd_server_t *server, nd_count_fn cb, void *arg);

/* 1 while listening (bound, not closed). */
int nd_server_listening(const nd_server_t *server);

int nd_server_on(nd_server_t *server, nd_event_type_t ev, nd_listener_fn fn, void *arg);
int nd_server_once(nd_server_t *server, nd_event_type_t ev, nd_listener_fn fn, void *arg);
/* Removes the first listener with this fn and arg. Returns 0, or -ENOENT. */
int nd_server_off(nd_server_t *server, nd_event_type_t ev, nd_listener_fn fn, void *arg);

/*
 * Gives back a server that is not listening: one that never listened, or whose listen
 * failed (also from inside its 'error' listener), or that is held after its 'close'. No
 * event is emitted; a listen 'error' not yet emitted never will be. The memory goes at once,
 * or once the running callback of this server returns, or at the last nd_server_release()
 * if it is held; until then only the holder may touch it, to release it. A group's
 * owner takes its worker-side servers with it. Returns 0, -EBUSY while it listens, resolves
 * its host or closes (close it: the library frees it after 'close'), -EINVAL for NULL or a
 * worker-side server.
 */
int nd_server_free(nd_server_t *server);

/* hold: the library will not free the server after 'close' (nor nd_server_free) until
 * nd_server_release(). Use it to keep a server across a close, e.g. to listen again later
 * from a timer. */
void nd_server_hold(nd_server_t *server);
void nd_server_release(nd_server_t *server);

/* The loop a server belongs to. */
nd_loop_t *nd_server_loop(const nd_server_t *server);

/* Application data slot, never touched by the library. */
void nd_server_set_data(nd_server_t *server, void *data);
void *nd_server_data(const nd_server_t *server);

/* ------------------------------------------------------------------------------------ */
/* Socket                                                                               */
/* ------------------------------------------------------------------------------------ */

typedef struct nd_socket_options {
    int fd;              /* an existing connected descriptor to wrap, or -1 (0 is a valid fd:
                            set it explicitly; a zeroed struct means fd 0) */
    int allow_half_open; /* see ND_EV_END */
    int readable;        /* with fd: read from it (0: reading stays off) */
    int writable;        /* with fd: allow writes (0: write gives ECLOSED) */
} nd_socket_options_t;

/* Initialises options to Node's defaults: fd -1, allow_half_open 0, readable and writable
 * 1. v0.10's docs said readable and writable default to false, but its code (and Node
 * since) opens an fd socket readable and writable unless told false; inherited descriptors
 * (socket activation) rely on it, so the code is followed. */
void nd_socket_options_init(nd_socket_options_t *opts);

/*
 * new net.Socket([options]). opts may be NULL. With an fd the socket is open at once
 * (no 'connect' event) and takes ownership of the descriptor, which is made non-blocking.
 * Returns NULL with errno set: EINVAL (NULL loop), ENOMEM, or for an fd that is not a
 * socket ENOTSOCK (EBADF if it is not open); the descriptor then stays the caller's.
 */
nd_socket_t *nd_socket_new(nd_loop_t *loop, const nd_socket_options_t *opts);

typedef struct nd_connect_options {
    int port;                  /* TCP: 0..65535 */
    const char *host;          /* TCP: NULL means "localhost" */
    const char *local_address; /* TCP: an IP literal to bind to, or NULL */
    int local_port;            /* TCP: 0 for any */
    int family;                /* TCP: 0 any (v0.10's dns.lookup: an AAAA-only name works; a
                                  name with both answers IPv4 first), 4 or 6 */
    const char *path;          /* unix socket: when not NULL, port/host are ignored */
    int allow_half_open;
} nd_connect_options_t;

/*
 * socket.connect(options). A host name is resolved first, emitting 'lookup'; an IP literal
 * is not looked up and emits no 'lookup', as in Node (v0.10 passed literals through
 * dns.lookup too). Then it connects, on a later turn: 'connect' on success, or 'error'
 * (ENOTFOUND with the host name and no port, as Node; ECONNREFUSED, ENOENT for a missing
 * path, EADDRINUSE for a taken local port, ...) then 'close' with had_error 1. A socket
 * whose 'close' has run may connect again (from inside its 'close' listener or while held):
 * counters restart.
 * Synchronous failures: -EINVAL (port out of range, NULL opts, a local_address that is not
 * an IP: v0.10's "localAddress should be a valid IP"), ND_ECONNECTING (connecting or
 * connected), ND_ECLOSED (destroyed and not yet closed).
 */
int nd_socket_connect(nd_socket_t *sock, const nd_connect_options_t *opts);

/* net.connect / createConnection: nd_socket_new + optional one-shot 'connect' listener
 * + nd_socket_connect. Returns NULL with errno set on a synchronous failure: the -errno
 * nd_socket_connect returned (EINVAL...), EINVAL for NULL loop, ENOMEM. */
nd_socket_t *nd_connect(nd_loop_t *loop, const nd_connect_options_t *opts,
                        nd_listener_fn on_connect, void *arg);

/* Called once the bytes of a write have been handed to the kernel (err 0), or with the
 * error that prevented it (EPIPE, ECLOSED, EWRITEAFTEREND, ...). Always on a later turn. */
typedef void (*nd_write_cb)(nd_socket_t *sock, int err, void *arg);

/*
 * Writes bytes. Before 'connect' they are queued and flushed in order once connected.
 * With nothing queued and the socket open, the kernel is tried at once.
 * Returns 1 when nothing stays queued in user memory, 0 when some of it is queued ('drain'
 * follows once the queue empties, unless end() was called by then), or a negative code for
 * a write that fails: the failure is also reported on a later turn as 'error' (and to cb).
 * While connecting, 1 means the queue is still below Node's 16 KiB buffer limit (Node's
 * write() is true there; Node's test-net-connect-buffer sees false only because it sets
 * highWaterMark 0), 0 that it has reached it. ND_EWRITEAFTEREND after end(); EPIPE after
 * the peer's FIN when allowHalfOpen is false; ND_ECLOSED after destroy or on a socket that
 * was never connected; the kernel's error (ECONNRESET, EPIPE) when the connection is gone,
 * e.g. after the peer's RST. cb may be NULL. len 0 is allowed.
 */
int nd_socket_write(nd_socket_t *sock, const void *data, size_t len, nd_write_cb cb, void *arg);

/*
 * Writes a string in an encoding: "utf8" (default when NULL), "utf16le"/"ucs2", "hex",
 * "base64", "ascii", "latin1"/"binary". The string is UTF-8 text (for hex and base64 the
 * encoded text); the bytes written are its encoding. Invalid hex stops at the first bad
 * pair, as Node does. Returns as nd_socket_write(), or ND_EENCODING synchronously for an
 * unknown encoding (nothing is written).
 */
int nd_socket_write_string(nd_socket_t *sock, const char *str, const char *encoding, nd_write_cb cb,
                           void *arg);

/*
 * end([data]): writes data (may be NULL) then sends FIN once the queue is flushed
 * ('finish'; no 'drain' after end(), as in v0.10 and Node). The socket is no longer
 * writable at once. On a socket that never connected it does nothing; while connecting it
 * ends after connecting. Returns 0 or a negative code as nd_socket_write().
 */
int nd_socket_end(nd_socket_t *sock, const void *data, size_t len);

/* destroy(): no more I/O; queued output and unread input are dropped; its server's count
 * drops at once (Node); 'close' (had_error 0) follows on a later turn, exactly once however
 * often it is called. */
void nd_socket_destroy(nd_socket_t *sock);

/*
 * pause()/resume(), and reading as Node's streams do it. A socket reads from the kernel
 * once it is open (an accepted socket at once; a client at 'connect' unless paused before;
 * an fd socket when made). Its input is emitted as 'data' while it flows; otherwise it waits
 * in the socket, up to 16 KiB (Node's high-water mark; Node reads whole 64 KiB chunks
 * until past it, libnetd stops at exactly 16 KiB), and reading stops until it flows again;
 * the peer's 'end' waits behind it. Reads into that buffer count as activity for
 * setTimeout, as in Node. It flows once a 'data' listener is added, pipe() is called or
 * resume() is called, and not while paused; waiting input is emitted on a later turn,
 * first, in order, then a held-back 'end'. Removing the 'data' listener does not stop the
 * flow (Node): input with no listener is then dropped; resume() with no listener is how a
 * socket drops what the peer sends (Node's socket.resume()).
 * pause(): no 'data' until resume(); reading goes on into the buffer up to 16 KiB (a
 * socket paused before it connected reads nothing). resume(): flows, and reads again.
 * Either may be called before connect; the last call wins.
 */
void nd_socket_pause(nd_socket_t *sock);
void nd_socket_resume(nd_socket_t *sock);
int nd_socket_is_paused(const nd_socket_t *sock);

/* setEncoding: 'data' then carries UTF-8 strings decoded from the bytes. NULL turns
 * decoding off (bytes again). utf8 and utf16le never split a character across 'data'
 * events; base64 holds back an incomplete 3-byte group. Returns 0 or ND_EENCODING. */
int nd_socket_set_encoding(nd_socket_t *sock, const char *encoding);

/*
 * setTimeout(ms, [cb]): emits 'timeout' after ms of inactivity (reads and writes, including
 * write progress, count as activity). It does not close anything and does not keep the
 * loop alive. 0 disables it and removes cb if given (v0.10). cb is added as a one-shot
 * 'timeout' listener. After destroy it does nothing.
 */
void nd_socket_set_timeout(nd_socket_t *sock, unsigned ms, nd_listener_fn cb, void *arg);

/* setNoDelay(noDelay): TCP_NODELAY (Nagle off when 1). Sockets start with Nagle on.
 * Remembered until connected; a no-op on unix sockets and after close. */
void nd_socket_set_no_delay(nd_socket_t *sock, int no_delay);

/* setKeepAlive(enable, initialDelayMs): SO_KEEPALIVE; a delay > 0 sets TCP_KEEPIDLE to
 * delay/1000 seconds (truncated), 0 leaves it unchanged. Remembered until connected. */
void nd_socket_set_keep_alive(nd_socket_t *sock, int enable, unsigned initial_delay_ms);

/* address(): the local bound address. 0, or ND_ENOTCONNECTED when never bound. Still
 * readable inside 'close'. */
int nd_socket_address(const nd_socket_t *sock, nd_address_t *out);

/* Cached remote/local endpoint: NULL / 0 while unknown; still valid inside 'close'.
 * Families are "IPv4", "IPv6", or NULL for unix sockets. */
const char *nd_socket_remote_address(const nd_socket_t *sock);
int nd_socket_remote_port(const nd_socket_t *sock);
const char *nd_socket_remote_family(const nd_socket_t *sock);
const char *nd_socket_local_address(const nd_socket_t *sock);
int nd_socket_local_port(const nd_socket_t *sock);

/* Byte counters of the current connection. bytesWritten counts bytes accepted by write(),
 * queued ones included. */
uint64_t nd_socket_bytes_read(const nd_socket_t *sock);
uint64_t nd_socket_bytes_written(const nd_socket_t *sock);
/* Milliseconds since the last read or write progress (or since the socket opened); 0 for a
 * socket that never opened. Uses the loop's cached clock. */
uint64_t nd_socket_idle_ms(const nd_socket_t *sock);

/* Bytes queued in user memory, waiting for the kernel. */
size_t nd_socket_buffer_size(const nd_socket_t *sock);

/* readable / writable as Node's stream flags; destroyed once destroy() ran or it closed;
 * connecting between connect() and 'connect'. */
int nd_socket_readable(const nd_socket_t *sock);
int nd_socket_writable(const nd_socket_t *sock);
int nd_socket_destroyed(const nd_socket_t *sock);
int nd_socket_connecting(const nd_socket_t *sock);

/* The server that accepted this socket, or NULL for a client socket. */
nd_server_t *nd_socket_server(const nd_socket_t *sock);

/* ref/unref: as for servers; remembered before connect and applied in order. */
void nd_socket_ref(nd_socket_t *sock);
void nd_socket_unref(nd_socket_t *sock);

/*
 * pipe(dst): every 'data' of src is written to dst; when a write returns 0 src is paused
 * until dst's 'drain'; when src ends, dst is ended (unless end_dst is 0). pipe(s, s) is
 * the echo server. src flows from now on, but a src paused before stays paused until
 * resume() (Node's pipe() would resume it; a proxy holding its client until the upstream
 * connects relies on this). Returns 0, -EINVAL (NULL), -EBUSY (src already piped). Piping
 * ends when either side closes. Bytes are handed over without an extra copy where possible.
 */
int nd_socket_pipe(nd_socket_t *src, nd_socket_t *dst, int end_dst);
/* The destination's high-water mark for pipes into it: a source is paused only once more
 * than `bytes` wait in this socket's queue (default 0: as soon as anything waits), and
 * resumed at its 'drain'. Bounds memory per connection to about bytes + 64 KiB of output,
 * plus the paused source's 16 KiB of input. */
int nd_socket_set_high_water_mark(nd_socket_t *sock, size_t bytes);

/* Stops a pipe started from src. Returns 0 or -ENOENT. */
int nd_socket_unpipe(nd_socket_t *src);

/* Listeners. Adding a 'data' listener makes the socket flow (see nd_socket_pause). */
int nd_socket_on(nd_socket_t *sock, nd_event_type_t ev, nd_listener_fn fn, void *arg);
int nd_socket_once(nd_socket_t *sock, nd_event_type_t ev, nd_listener_fn fn, void *arg);
int nd_socket_off(nd_socket_t *sock, nd_event_type_t ev, nd_listener_fn fn, void *arg);

/* hold: the library will not free the socket after its 'close' until nd_socket_release(). */
void nd_socket_hold(nd_socket_t *sock);
void nd_socket_release(nd_socket_t *sock);

nd_loop_t *nd_socket_loop(const nd_socket_t *sock);
/* The descriptor, or -1 when there is none. Do not close it. */
int nd_socket_fd(const nd_socket_t *sock);

void nd_socket_set_data(nd_socket_t *sock, void *data);
void *nd_socket_data(const nd_socket_t *sock);

/* ------------------------------------------------------------------------------------ */
/* Threads: mailboxes, loops in threads, server groups, moving live sockets             */
/* ------------------------------------------------------------------------------------ */

/*
 * Threads talk only through mailboxes: each loop has a locked queue plus an eventfd; the
 * loop drains the whole queue on each wake. The mailbox never keeps a loop alive.
 * Functions marked "any thread" may be called from any thread; every other function in
 * this header belongs to the thread running the object's loop.
 */

/* Any thread. Runs fn(loop, arg) on the loop's thread on a later turn. Messages from one
 * sender run in the order they were posted. Returns 0, -EINVAL, -ENOMEM. */
int nd_loop_post(nd_loop_t *loop, void (*fn)(nd_loop_t *loop, void *arg), void *arg);

/*
 * A message node embedded in the caller's own struct, so that posting cannot fail: a
 * message that must arrive (a reply, a socket in transit) is allocated together with
 * what it carries, before anything is committed. The node's contents are private.
 */
typedef struct nd_msg {
    void *priv_[5];
} nd_msg_t;

/* Any thread. Runs fn(loop, arg) on the loop's thread on a later turn, as nd_loop_post,
 * using the caller's node: it cannot fail. The node belongs to the mailbox until fn
 * starts; fn may post it again. If the loop is freed first, drop(arg) runs instead (on
 * the freeing thread; drop may be NULL). */
void nd_loop_post_msg(nd_loop_t *loop, nd_msg_t *msg, void (*fn)(nd_loop_t *loop, void *arg),
                      void *arg, void (*drop)(void *arg));

/* Any thread. Keeps the loop alive (like nd_loop_ref) / lets it go; atomic. */
void nd_loop_ref_mp(nd_loop_t *loop);
void nd_loop_unref_mp(nd_loop_t *loop);

/* Any thread. A message that makes nd_loop_run() return. Returns 0 or -ENOMEM. */
int nd_loop_stop_post(nd_loop_t *loop);

/* Per-thread counters, written by the loop's own thread and readable from any thread
 * (relaxed atomics): a snapshot, summed on request. The list is written once, here: the
 * struct, the library's counters and their copy come from it. */
#define ND_LOOP_STATS(X)                                                                           \
    X(connections) /* live sockets owned by this loop that belong to a server */                   \
    X(accepted)    /* connections accepted by listeners on this loop */                            \
    X(handed_off)  /* connections this loop got from its group's acceptor: another        \
                        loop's accept, or its own as a worker_accepts group's acceptor */        \
    X(moved_in)    /* live sockets moved to this loop */                                           \
    X(bytes_read)                                                                                  \
    X(bytes_written) /* bytes handed to the kernel */                                              \
    X(bytes_spliced) /* of bytes_written: moved by a pipe kernel to kernel (splice(2)),     \
                        never copied through user memory */

typedef struct nd_loop_stats {
#define ND__LOOP_STAT_FIELD(name) uint64_t name;
    ND_LOOP_STATS(ND__LOOP_STAT_FIELD)
#undef ND__LOOP_STAT_FIELD
} nd_loop_stats_t;

/* Any thread. */
void nd_loop_stats(const nd_loop_t *loop, nd_loop_stats_t *out);

typedef struct nd_thread nd_thread_t;

/*
 * Starts a thread that runs nd_loop_run(loop) with every signal blocked (signals are
 * handled by the main loop only). From now on the loop belongs to that thread. The thread
 * holds a ref on the loop (nd_loop_ref_mp) until nd_thread_stop, so a worker waits for
 * work. Returns NULL with errno set: EINVAL (NULL loop), ENOMEM, or pthread_create's
 * code (EAGAIN).
 */
nd_thread_t *nd_thread_start(nd_loop_t *loop);

/* Any thread but the worker's own. Posts a stop message: once it runs (after every
 * message posted before it) the loop finishes its pending events ('close' of sockets
 * destroyed by those messages included) and returns, whatever else it holds. */
void nd_thread_stop(nd_thread_t *t);

/* Waits for the thread to end and frees it; then frees the loop (nd_loop_free) on the
 * caller's thread. Returns 0 or -errno of pthread_join. */
int nd_thread_join(nd_thread_t *t);

/* As nd_thread_join, but the loop is left to the caller, who frees it with
 * nd_loop_free() when it chooses: e.g. after freeing another loop whose servers still
 * post to this one (messages posted to a loop whose thread ended wait, and are dropped
 * when it is freed). */
int nd_thread_wait(nd_thread_t *t);

/* How a server group hands connections to its workers. */
typedef enum nd_balance {
    ND_BALANCE_LEASTCONN = 0, /* the worker with the fewest live connections of the group */
    ND_BALANCE_ROUNDROBIN,    /* each worker in turn */
    ND_BALANCE_REUSEPORT      /* each worker accepts on its own SO_REUSEPORT listener (TCP) */
} nd_balance_t;

/* "leastconn", "roundrobin", "reuseport" and back. parse returns -EINVAL for others. */
int nd_balance_parse(const char *name);
const char *nd_balance_name(nd_balance_t b);

/*
 * Called on each worker's thread once its worker-side server exists, before any
 * connection reaches it: attach 'connection' (and 'adopt') listeners here. index is the
 * worker's position in the array given to nd_server_new_group.
 */
typedef void (*nd_worker_init_fn)(nd_server_t *worker_server, int index, void *arg);

/*
 * A server group (Node's cluster over threads): the returned server lives on `owner` and
 * is where listen, close, address, maxConnections, getConnections and ref/unref are called;
 * one worker-side server per worker loop emits 'connection' (and 'adopt' for moved
 * sockets) on that worker's thread. The worker loops must be running in threads
 * (nd_thread_start) or be the owner itself. The group refs its workers while it exists.
 *
 * Counting: a connection counts from accept4 until it is destroyed (inside destroy(), as
 * Node), including while it sits in a mailbox or is being moved. getConnections (on the
 * owner or any worker-side server) gives that exact count; maxConnections holds over the
 * whole group (extra connections are closed at once, no 'connection'); 'close' on the owner
 * comes once the 'close' of every connection of the group has run, on whichever worker. `connections` on the owner reads -1 once a socket
 * was handed to a worker (Node's null). A handoff that fails (the worker cannot take it)
 * closes the descriptor and is counted in nd_server_stats().handoff_failed.
 *
 * Who accepts: by default the owner's loop accepts and posts each wake's connections to
 * the workers (one message per worker). With opts->worker_accepts (leastconn, roundrobin)
 * the first worker accepts on a duplicate of the owner's descriptor instead, serves those
 * the policy gives it and posts the others: the owner's loop is not woken per connection
 * (a thread woken per connection less: the cost of a handoff falls to about reuseport's).
 * Everything above holds either way and 'listening' comes as soon as the owner listens;
 * close() (and nd_server_export) stops the acceptor at once, as it stops the owner: what
 * is still queued stays on the socket for whoever else holds it. But a worker's
 * 'connection' is no longer ordered after what the owner's loop does meanwhile (a client
 * on the owner's loop may see its server's 'connection' before its own 'connect').
 * Returns NULL with errno set (EINVAL for a NULL owner, no workers, a NULL worker or an
 * unknown balance; ENOMEM).
 */
nd_server_t *nd_server_new_group(nd_loop_t *owner, const nd_server_options_t *opts,
                                 nd_loop_t *const *workers, int nworkers, nd_balance_t balance,
                                 nd_worker_init_fn init, void *arg);

/* For a worker-side server: its index in the group; -1 for any other server. */
int nd_server_worker_index(const nd_server_t *server);

/* Counters of one server (of its whole group for the owner). Any thread may read a
 * group's counters through its owner pointer only via a message; on the owner thread:
 * direct. */
typedef struct nd_server_stats {
    uint64_t connections; /* live, exact over the group */
    uint64_t accepted;    /* accepted and counted */
    uint64_t rejected;    /* closed at once because of maxConnections */
    uint64_t handoff_failed;
    uint64_t accept_paused; /* times accepting paused for lack of descriptors */
} nd_server_stats_t;
void nd_server_stats(const nd_server_t *server, nd_server_stats_t *out);

/*
 * Moves a live socket to another loop (Node's child.send(msg, socket)). On a later turn
 * the owner stops the socket's events and posts it to `target`; there it carries on with
 * its descriptor, input read but not yet emitted (delivered first on the target, in order,
 * once a listener makes it flow), unsent output, pending write callbacks, decoder state,
 * options (noDelay, keepAlive, timeout, encoding, allowHalfOpen, paused, flowing), counters
 * and server membership. Its listeners are dropped: on the target, on_adopt(sock, arg) runs (if
 * given), and the target's worker-side server of the same group emits ND_EV_ADOPT with
 * ev->socket, so the application attaches its listeners again. The nd_socket_t pointer
 * stays the same; between the call and the adopt nobody may touch it. Nothing is lost or
 * duplicated: from the call on no more 'data' is emitted here, and bytes the kernel holds
 * are read on the target, in order. If the socket closes before it leaves (destroyed, a
 * write error), nothing moves: its 'close' runs here and on_adopt never does.
 * A socket piped both ways with another (a proxy pair) moves together with it; while
 * one half is destroyed but its 'close' has not run, the other cannot move (-EBUSY, also
 * reported as ND_MOVE_FAILED when it happens between the call and the departure), since
 * the application's listeners on the closing half may still point at it.
 * Returns 0; -EBUSY while connecting or resolving, when piped to a socket that is not
 * its pair, while a move of it or of its pair is already on its way, or while it is
 * exported (nd_socket_export); ND_ECLOSED when destroyed; -EXDEV when it belongs to a server that is not a
 * group or target is not a loop of its group; -EINVAL for NULL; 0 and nothing happens
 * when target is its own loop.
 */
typedef void (*nd_adopt_fn)(nd_socket_t *sock, void *arg);
int nd_socket_move(nd_socket_t *sock, nd_loop_t *target, nd_adopt_fn on_adopt, void *arg);

/* The phases of a move, for nd_socket_move_notify. */
typedef enum nd_move_phase {
    ND_MOVE_DETACHED, /* source thread: the socket (and pair) leave now; no more events here */
    ND_MOVE_ADOPTED,  /* target thread: the socket carries on here (listeners dropped) */
    ND_MOVE_FAILED    /* source thread: the move did not happen (err: why; the socket may be
                         closed already and must not be touched) */
} nd_move_phase_t;
typedef void (*nd_move_fn)(nd_socket_t *sock, nd_move_phase_t phase, int err, void *arg);

/* As nd_socket_move, with fn told of every phase: exactly one of DETACHED then ADOPTED,
 * or FAILED, after a 0 return (-EALREADY when target is its own loop: nothing to
 * report). An application that keeps per-thread records of its sockets moves them in
 * DETACHED (source) and ADOPTED (target); in DETACHED, nd_socket_pipe_peer(sock) is the
 * pair that moves with it (NULL: it moves alone). */
int nd_socket_move_notify(nd_socket_t *sock, nd_loop_t *target, nd_move_fn fn, void *arg);

/* The socket whose pipe pairs with this one both ways, or NULL. */
nd_socket_t *nd_socket_pipe_peer(const nd_socket_t *sock);

/* ------------------------------------------------------------------------------------ */
/* Handing sockets to another process                                                   */
/* ------------------------------------------------------------------------------------ */

/*
 * A socket's whole state as a record another process can import: Node's
 * child.send(socket) across a process boundary (the daemon's live upgrade). The record is
 * a versioned byte string; the descriptors travel beside it (SCM_RIGHTS). It carries
 * unread input already in user space, queued output, end and half-close state, paused
 * and flowing, encoding and the decoder's held-back bytes, the idle timeout and how long
 * the socket has been idle, noDelay, keepAlive, the high-water mark, counters, addresses,
 * and the pipes of an echo (pipe(s, s)) or a pair (piped both ways: one record, two
 * descriptors). Listeners and write callbacks do not travel: the importer attaches its
 * own, as after a move.
 */
typedef struct nd_export {
    unsigned char *data; /* the record */
    size_t len;
    int fds[2]; /* the descriptors, in the record's order; still this process's */
    int nfds;
    nd_socket_t *socks[2]; /* private */
} nd_export_t;

/*
 * Exports sock (with its pair, if piped both ways). Only a quiet socket exports: open,
 * not moving, no event pending, no write callback owed, no error queued; otherwise -EBUSY
 * (try again on a later turn) or ND_ECLOSED (destroyed). Never call it from inside one of
 * the socket's own listeners.
 * On success the socket(s) are parked: no event, no I/O, the idle timer stopped; writes
 * return -EBUSY. Then exactly one of:
 *   nd_socket_export_commit(): the other process holds it now: the socket(s) are freed
 *     here without any event (counted out of their server), our descriptors closed; the
 *     connection itself goes on in the other process. Drop every pointer to them first.
 *   nd_socket_export_abort(): it stays: the socket(s) carry on as if nothing happened.
 * Both free the record.
 */
int nd_socket_export(nd_socket_t *sock, nd_export_t *out);
void nd_socket_export_commit(nd_export_t *ex);
void nd_socket_export_abort(nd_export_t *ex);
/* Frees the record only (both calls above do it). */
void nd_export_free(nd_export_t *ex);

/*
 * Imports a record on `loop`, taking fds (as many as the record has sockets: 1, or 2 for
 * a pair; on success they belong to the sockets). The sockets are parked until
 * nd_socket_import_start(): nothing is read or written, so the process handing them over
 * can still take them back if this one fails before starting them. `server` (or NULL) is
 * the server they count in from now on, for each socket that counted in one where it
 * came from (a pair's outgoing half did not): a worker-side server of a group counts them
 * in the group, as a move in does (not as accepted). out[0] is the record's first socket,
 * out[1] its pair or NULL. Returns 0, ND_EFORMAT (another version, or malformed: nothing
 * is taken), -EINVAL, -ENOMEM.
 */
int nd_socket_import(nd_loop_t *loop, const void *data, size_t len, const int *fds, int nfds,
                     nd_server_t *server, nd_socket_t *out[2]);
/* Starts an imported socket (and its pair): reading, writing what is queued, the idle
 * timer, and buffered input or a held-back 'end' on a later turn. */
void nd_socket_import_start(nd_socket_t *sock);

/*
 * A server's listening descriptor, for another process: accepting stops at once (the
 * kernel keeps queueing connections on the descriptor). Returns the descriptor (still
 * this process's), -ENOTSOCK... ND_ENOTRUNNING when it does not listen itself (a group's
 * worker-side server without a listener of its own, a closed server). Then one of:
 *   nd_server_export_commit(): the other process listens on it now: the server closes
 *     here without touching the socket file of a unix path (it belongs to the other
 *     process), and emits 'close' as usual once its connections are gone.
 *   nd_server_export_abort(): accepting resumes.
 * For a group's owner, the group's worker-side servers stop too when they listen (reuseport):
 * export those on their own loops. A worker_accepts group's acceptor stops with its owner:
 * this may wait for the acceptor's current wake to finish posting what it accepted, so
 * everything the caller posts to a worker afterwards arrives behind those connections.
 */
int nd_server_export(nd_server_t *server);
/* The importing side of a server on a unix path: as nd_server_listen_fd, and the socket
 * file at path (which the other process created) is this server's: removed when it
 * closes, if that directory entry is still that file. */
int nd_server_listen_fd_path(nd_server_t *server, int fd, const char *path, int backlog);
/* The importing side of a reuseport group: the owner's bound descriptor and one
 * listening descriptor per worker (n must be the group's number of workers), all taken.
 * 'listening' follows as for nd_server_listen. Returns 0, -EINVAL (not a reuseport
 * group's owner, or n differs), or as nd_server_listen. Other servers import with
 * nd_server_listen_fd. */
int nd_server_listen_reuseport_fds(nd_server_t *server, int owner_fd, const int *member_fds, int n,
                                   int backlog);
void nd_server_export_commit(nd_server_t *server);
void nd_server_export_abort(nd_server_t *server);

#ifdef __cplusplus
}
#endif

#endif /* NETD_NET_H */
