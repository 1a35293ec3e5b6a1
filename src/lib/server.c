/*
 * nd_server_t: net.Server. Owns the listening descriptor, accepts connections, counts
 * them, and emits listening / connection / error / close on later loop turns.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

enum server_state {
    SRV_IDLE,      /* never listened, or closed */
    SRV_RESOLVING, /* listen() on a host name: waiting for the address */
    SRV_LISTENING, /* bound; 'listening' may still be pending */
    SRV_FAILED,    /* the listen attempt failed: its 'error' is pending */
    SRV_CLOSING    /* stopped accepting; 'close' waits for the last connection */
};

enum server_pending {
    SP_LISTENING = 1u << 0,
    SP_ERROR = 1u << 1, /* listen failure: 'error' (and nothing after it, as in Node) */
    SP_CLOSE = 1u << 2,
    SP_COUNT = 1u << 3, /* getConnections callbacks */
};

typedef struct count_req {
    nd_count_fn cb;
    void *arg;
    STAILQ_ENTRY(count_req) link;
} count_req_t;

struct nd_server {
    nd__handle_t h;
    enum server_state state;
    int fd;
    bool allow_half_open;
    bool accepting;       /* accept_ev is added */
    bool unlink_on_close; /* we created the unix socket file: dirfd, base, dev, ino name it */
    bool ipv6_only;       /* "::" accepts IPv6 clients only */
    bool close_owed;      /* SP_CLOSE is pending: 'close' is emitted even if listen() came since */
    int max_connections;
    int nconn; /* live connections: lowered when one is destroyed */
    int nopen; /* connections whose 'close' has not run yet: a closing server waits for 0 */
    int dirfd;        /* the directory our unix socket file was created in, or -1 */
    dev_t file_dev;   /* ... and that file, so close removes it and nothing else */
    ino_t file_ino;
    size_t base;      /* offset of the file's name in path */
    int backlog;
    int port; /* requested, for errors */
    char host[256];
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct event accept_ev;
    struct event backoff_ev;
    unsigned backoff_ms;
    nd__resolve_t *resolve;
    nd__error_store_t *err; /* allocated on the first listen failure */
    STAILQ_HEAD(, count_req) counts;
    uint64_t accepted_total, rejected_total, accept_paused_total;
    int fd_ceiling;     /* accept pauses for descriptors >= this (0: none) */
    nd__group_t *group; /* NULL for a plain server */
    unsigned accept_gen; /* a worker_accepts acceptor: the listen its descriptor is from */
    int index;          /* worker-side server: its member index; -1 otherwise */
};

/* A server group: the owner-side server plus one worker-side server per member loop. The
 * atomics are the only state shared between threads; everything else of a member is
 * touched on that member's thread only, and the owner fields on the owner's thread. */
typedef struct group_member {
    nd_loop_t *loop;
    nd_server_t *server;  /* the worker-side server, on `loop`'s thread */
    _Atomic int64_t live; /* live connections of the group held by this member */
} group_member_t;

struct nd__group {
    nd_server_t *owner; /* owner thread only; NULL once the owner is freed */
    nd_loop_t *owner_loop;
    nd_balance_t balance;
    int n;
    group_member_t *m;
    nd_worker_init_fn init;
    void *init_arg;
    bool allow_half_open;
    bool ipv6_only;
    _Atomic unsigned rr_next; /* the acceptor's, and the owner's when it closes */
    int rp_waiting, rp_err; /* members' listen replies still due, first failure */
    bool shared;        /* worker_accepts: the first member accepts for the group */
    /* worker_accepts: the listen generation the acceptor may accept for, 0 for none (closed,
     * or exported by nd_server_export). The acceptor holds accept_lock around a wake's
     * accepts and posts, so the owner, once it set this under the lock, knows that every
     * connection accepted before is posted, and that no more will be. */
    pthread_mutex_t accept_lock;
    _Atomic unsigned accept_gen;
    bool owner_accepts; /* owner thread: the owner's loop accepts (the default, or the
                           acceptor could not take the listener) */
    unsigned listen_gen;    /* replies of an older listen attempt are ignored */
    _Atomic int64_t live;   /* every live connection of the group, wherever it is */
    _Atomic int64_t unclosed; /* connections whose 'close' has not run: a closing owner waits */
    _Atomic int max;        /* maxConnections, read by reuseport workers */
    _Atomic int fd_ceiling; /* descriptor reserve, read by reuseport workers */
    _Atomic bool closing;
    _Atomic bool accept_paused;
    _Atomic uint64_t accepted, rejected, handoff_failed, paused_total;
    _Atomic int refs;
};

typedef struct group_msg {
    nd__msg_t node; /* embedded: posting cannot fail */
    nd__group_t *g;
    int index;
    int err;
    unsigned gen;
    int fd;       /* a shared listener for the acceptor, when owns_fd */
    bool owns_fd; /* closed if the message is dropped */
    char ip[64];
    int port, backlog;
} group_msg_t;

static void group_release(nd__group_t *g);
static void group_post(nd__group_t *g, nd_loop_t *to, void (*fn)(nd_loop_t *, void *),
                       group_msg_t *msg);
static void group_unlisten_members(nd__group_t *g);
static bool group_is_owner(const nd_server_t *s)
{
    return s->group && s->index < 0;
}

static void on_accept(evutil_socket_t fd, short what, void *arg);
static void accept_some(nd_server_t *s);
static void stop_acceptor(nd__group_t *g);
static void on_backoff(evutil_socket_t fd, short what, void *arg);
static void unlink_own_file(nd_server_t *s);

static void update_active(nd_server_t *s)
{
    /* A closing group waits for connections on other loops: its 'close' is still owed, so
     * the owner's loop must not end before it. */
    nd__handle_set_active(&s->h, s->state == SRV_RESOLVING || s->state == SRV_LISTENING ||
                                     (s->state == SRV_CLOSING && s->group && s->index < 0));
}

ND_EXPORT nd_server_t *nd_server_new(nd_loop_t *loop, const nd_server_options_t *opts,
                                     nd_listener_fn on_connection, void *arg)
{
    if (!loop) {
        errno = EINVAL;
        return NULL;
    }
    nd_server_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL; /* errno: ENOMEM */
    nd__handle_init(&s->h, loop, ND__SERVER);
    s->fd = -1;
    s->dirfd = -1;
    s->index = -1;
    s->allow_half_open = opts && opts->allow_half_open;
    s->ipv6_only = opts && opts->ipv6_only;
    STAILQ_INIT(&s->counts);
    event_assign(&s->backoff_ev, loop->base, -1, 0, on_backoff, s);
    int rc = on_connection ? nd_server_on(s, ND_EV_CONNECTION, on_connection, arg) : 0;
    if (rc != 0) {
        nd__handle_release(&s->h);
        errno = -rc; /* ENOMEM */
        return NULL;
    }
    return s;
}

void nd__server_free(nd_server_t *s)
{
    if (s->accepting)
        event_del(&s->accept_ev);
    event_del(&s->backoff_ev);
    if (s->fd >= 0)
        close(s->fd);
    if (s->dirfd >= 0)
        close(s->dirfd); /* a server freed while listening leaves its file, as a process exit */
    if (s->resolve)
        nd__resolve_cancel(s->resolve);
    count_req_t *c;
    while ((c = STAILQ_FIRST(&s->counts)) != NULL) {
        STAILQ_REMOVE_HEAD(&s->counts, link);
        free(c);
    }
    nd__group_t *g = s->group;
    if (g && s->index < 0) {
        /* The owner goes: free the worker-side servers on their threads, let them go. */
        g->owner = NULL;
        for (int i = 0; i < g->n; i++) {
            group_msg_t *msg = calloc(1, sizeof(*msg));
            if (msg) {
                msg->index = i;
                group_post(g, g->m[i].loop, NULL, msg);
            }
            nd_loop_unref_mp(g->m[i].loop);
        }
    } else if (g) {
        g->m[s->index].server = NULL;
    }
    free(s->err);
    nd__handle_fini(&s->h);
    free(s);
    if (g)
        group_release(g);
}

/* A listen attempt failed: report it as 'error' on a later turn. No 'close' follows (Node
 * emits none): the server stays, idle, for another listen() or nd_server_free(). */
static void fail_listen(nd_server_t *s, int code, const char *syscall, const char *address,
                        int port)
{
    nd__error_set(&s->err, code, syscall, address, port, NULL);
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    s->state = SRV_FAILED;
    nd__handle_pend(&s->h, SP_ERROR);
    update_active(s);
}

static void start_accepting(nd_server_t *s)
{
    if (s->accepting || s->fd < 0)
        return;
    event_assign(&s->accept_ev, s->h.loop->base, s->fd, EV_READ | EV_PERSIST, on_accept, s);
    event_add(&s->accept_ev, NULL);
    s->accepting = true;
}

static void stop_accepting(nd_server_t *s)
{
    if (s->accepting) {
        event_del(&s->accept_ev);
        s->accepting = false;
    }
    event_del(&s->backoff_ev);
}

static int share_listener(nd_server_t *s);

/* The descriptor is bound (or adopted): listen and schedule 'listening'. A group whose
 * first worker accepts (worker_accepts) gets a duplicate of the descriptor there; if that
 * cannot be sent, or the worker cannot take it, the owner accepts as without the option. */
static void finish_listen(nd_server_t *s, const char *address, int port)
{
    if (listen(s->fd, s->backlog) != 0) {
        fail_listen(s, -errno, "listen", address, port);
        return;
    }
    s->state = SRV_LISTENING;
    if (s->group)
        s->group->owner_accepts = !(s->group->shared && share_listener(s) == 0);
    if (!s->group || s->group->owner_accepts)
        start_accepting(s);
    nd__handle_pend(&s->h, SP_LISTENING);
    update_active(s);
}

static int check_can_listen(nd_server_t *s)
{
    if (s->group && !group_is_owner(s))
        return -EINVAL; /* a worker-side server listens through its group's owner */
    /* After close(), listening again is allowed at once, even while connections drain
     * (Node: test-net-server-listen-remove-callback); they still count. */
    if (s->state == SRV_CLOSING)
        return 0;
    /* From inside the 'error' listener of a failed listen, listening again is allowed. */
    if (s->state == SRV_FAILED && !(s->h.pending & SP_ERROR))
        return 0;
    if (s->state != SRV_IDLE)
        return ND_ELISTENING;
    return 0;
}

static void restart(nd_server_t *s, int backlog)
{
    /* A server listening again after its 'close' ran belongs to the library again. */
    if (!s->h.owned) {
        s->h.owned = true;
        nd__handle_retain(&s->h);
    }
    s->backlog = backlog > 0 ? backlog : ND__DEFAULT_BACKLOG;
    if (s->group) {
        atomic_store(&s->group->closing, false);
        s->group->listen_gen++;
    }
    unlink_own_file(s); /* nothing left normally: close() did it */
    s->path[0] = '\0';
    s->backoff_ms = 0;
}

static void listen_reuseport(nd_server_t *s, const char *ip, int port);

static void bind_ip(nd_server_t *s, const char *ip, int port)
{
    if (s->group && s->group->balance == ND_BALANCE_REUSEPORT) {
        listen_reuseport(s, ip, port);
        return;
    }
    nd__sockaddr_t sa;
    socklen_t len = nd__sockaddr_ip(&sa, ip, port, 0);
    if (!len) {
        fail_listen(s, -EINVAL, "listen", ip, port);
        return;
    }
    s->fd = socket(sa.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        fail_listen(s, -errno, "listen", ip, port);
        return;
    }
    int one = 1;
    setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* Dual stack unless asked otherwise, as libuv: "::" takes IPv4 clients too
     * (::ffff:127.0.0.1). Set either way, whatever the system's bindv6only default. */
    if (sa.sa.sa_family == AF_INET6) {
        int v6only = s->ipv6_only;
        setsockopt(s->fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
    }
    if (bind(s->fd, &sa.sa, len) != 0) {
        fail_listen(s, -errno, "listen", ip, port);
        return;
    }
    finish_listen(s, ip, port);
}

static void on_listen_resolved(void *arg, int err, const char *ip, int family)
{
    nd_server_t *s = arg;
    s->resolve = NULL;
    if (err) {
        nd__error_set(&s->err, err, "getaddrinfo", NULL, s->port, s->host);
        s->state = SRV_FAILED;
        nd__handle_pend(&s->h, SP_ERROR);
        update_active(s);
        return;
    }
    bind_ip(s, ip, s->port);
}

ND_EXPORT int nd_server_listen(nd_server_t *s, int port, const char *host, int backlog)
{
    if (!s || port < 0 || port > 65535)
        return -EINVAL;
    if (host && !*host)
        host = NULL;
    if (host && strlen(host) >= sizeof(s->host))
        return -EINVAL;
    int rc = check_can_listen(s);
    if (rc)
        return rc;
    restart(s, backlog);
    s->port = port;
    if (!host || nd_is_ip(host)) {
        bind_ip(s, host ? host : "0.0.0.0", port);
        return 0;
    }
    snprintf(s->host, sizeof(s->host), "%s", host);
    s->state = SRV_RESOLVING;
    s->resolve = nd__resolve_start(s->h.loop, host, 0, on_listen_resolved, s);
    if (!s->resolve) {
        s->state = SRV_IDLE;
        return -ENOMEM;
    }
    update_active(s);
    return 0;
}

/*
 * The directory a unix socket path names, opened so that a later close can find the file
 * again without trusting the name: symlinks in the path are resolved once, here, and the
 * descriptor then stays on that directory whatever happens to the path. -1 on failure.
 */
static int open_parent(const char *path, size_t *base)
{
    const char *slash = strrchr(path, '/');
    *base = slash ? (size_t)(slash - path) + 1 : 0;
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    char *real = realpath(dir, NULL);
    if (!real)
        return -1;
    int fd = open(real, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    free(real);
    return fd;
}

/* After the bind: remember the file just created, by directory and inode, if the path still
 * leads to it. Otherwise (the path changed under us) the file is never removed by us. */
static void remember_file(nd_server_t *s, int dirfd, size_t base)
{
    struct stat in_dir, by_path;
    if (dirfd >= 0 && fstatat(dirfd, s->path + base, &in_dir, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISSOCK(in_dir.st_mode) && stat(s->path, &by_path) == 0 &&
        in_dir.st_dev == by_path.st_dev && in_dir.st_ino == by_path.st_ino) {
        s->dirfd = dirfd;
        s->base = base;
        s->file_dev = in_dir.st_dev;
        s->file_ino = in_dir.st_ino;
        s->unlink_on_close = true;
        return;
    }
    if (dirfd >= 0)
        close(dirfd);
}

/* Removes the socket file this server created, if that directory entry still is it: a file
 * someone else put there since (or a symlink swapped into the path) is left alone. */
static void unlink_own_file(nd_server_t *s)
{
    if (s->unlink_on_close) {
        struct stat st;
        if (fstatat(s->dirfd, s->path + s->base, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            st.st_dev == s->file_dev && st.st_ino == s->file_ino)
            unlinkat(s->dirfd, s->path + s->base, 0);
        s->unlink_on_close = false;
    }
    if (s->dirfd >= 0) {
        close(s->dirfd);
        s->dirfd = -1;
    }
}

ND_EXPORT int nd_server_listen_path(nd_server_t *s, const char *path, int backlog)
{
    if (!s || !path || !*path)
        return -EINVAL;
    if (s->group && s->group->balance == ND_BALANCE_REUSEPORT)
        return -EINVAL; /* reuseport is TCP only */
    int rc = check_can_listen(s);
    if (rc)
        return rc;
    restart(s, backlog);
    s->port = -1;
    nd__sockaddr_t sa;
    int len = nd__sockaddr_unix(&sa, path);
    if (len < 0) {
        fail_listen(s, len, "listen", path, -1);
        return 0;
    }
    s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        fail_listen(s, -errno, "listen", path, -1);
        return 0;
    }
    /* A file already at path, live or left over, is EADDRINUSE, as in Node: removing a
     * leftover is the caller's decision (nd_unix_path_probe tells which it is). */
    size_t base;
    int dirfd = open_parent(path, &base);
    if (bind(s->fd, &sa.sa, (socklen_t)len) != 0) {
        int e = errno;
        if (dirfd >= 0)
            close(dirfd);
        fail_listen(s, -e, "listen", path, -1);
        return 0;
    }
    snprintf(s->path, sizeof(s->path), "%s", path);
    remember_file(s, dirfd, base);
    finish_listen(s, path, -1);
    return 0;
}

ND_EXPORT int nd_unix_path_probe(const char *path)
{
    if (!path || !*path)
        return -EINVAL;
    nd__sockaddr_t sa;
    int len = nd__sockaddr_unix(&sa, path);
    if (len < 0)
        return len;
    struct stat st;
    if (lstat(path, &st) != 0)
        return -errno;
    if (!S_ISSOCK(st.st_mode))
        return -ENOTSOCK;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* Non-blocking: a unix connect completes at once or fails at once. A listener whose
     * backlog is full answers EAGAIN: it is alive, only busy. */
    int rc = 1;
    if (connect(fd, &sa.sa, (socklen_t)len) != 0) {
        if (errno == ECONNREFUSED)
            rc = 0;
        else if (errno != EAGAIN && errno != EINPROGRESS)
            rc = -errno;
    }
    close(fd);
    return rc;
}

static int listen_on_fd(nd_server_t *s, int fd, int backlog)
{
    if (s->group && s->group->balance == ND_BALANCE_REUSEPORT) {
        close(fd);
        return -EINVAL;
    }
    restart(s, backlog);
    s->port = -1;
    s->fd = fd;
    int type = 0;
    socklen_t tl = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM) {
        /* v0.10 reported anything but a stream socket as EINVAL. */
        fail_listen(s, -EINVAL, "listen", NULL, -1);
        return 0;
    }
    int rc = nd__set_nonblock_cloexec(fd);
    if (rc) {
        fail_listen(s, rc, "listen", NULL, -1);
        return 0;
    }
    finish_listen(s, NULL, -1);
    return 0;
}

ND_EXPORT int nd_server_listen_fd_path(nd_server_t *s, int fd, const char *path, int backlog)
{
    if (!s || fd < 0 || !path || !*path || strlen(path) >= sizeof(s->path))
        return -EINVAL;
    int rc = check_can_listen(s);
    if (rc)
        return rc;
    rc = listen_on_fd(s, fd, backlog);
    if (rc || s->state != SRV_LISTENING)
        return rc;
    /* The file is this server's from now on, as if it had bound it: removed at close if
     * that directory entry still is this file. */
    snprintf(s->path, sizeof(s->path), "%s", path);
    size_t base;
    int dirfd = open_parent(path, &base);
    remember_file(s, dirfd, base);
    return 0;
}

ND_EXPORT int nd_server_listen_fd(nd_server_t *s, int fd, int backlog)
{
    if (!s || fd < 0)
        return -EINVAL;
    int rc = check_can_listen(s);
    if (rc)
        return rc;
    return listen_on_fd(s, fd, backlog);
}

static int listen_dup(nd_server_t *s, int fd, int backlog)
{
    if (fd < 0)
        return -EBADF;
    int rc = check_can_listen(s);
    if (rc)
        return rc;
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0)
        return -errno;
    return listen_on_fd(s, copy, backlog);
}

ND_EXPORT int nd_server_listen_handle(nd_server_t *s, const nd_server_t *other, int backlog)
{
    if (!s || !other || s == other)
        return -EINVAL;
    return listen_dup(s, other->fd, backlog);
}

ND_EXPORT int nd_server_listen_socket_handle(nd_server_t *s, const nd_socket_t *sock,
                                             int backlog)
{
    if (!s || !sock)
        return -EINVAL;
    return listen_dup(s, nd_socket_fd(sock), backlog);
}

/* Live connections (getConnections): the whole group's for a group. */
static int64_t live_count(const nd_server_t *s)
{
    if (s->group)
        return atomic_load_explicit(&s->group->live, memory_order_seq_cst);
    return s->nconn;
}

/* Connections whose 'close' has not run yet: they hold back the server's 'close', so that
 * it stays the last event of the server. */
static int64_t open_count(const nd_server_t *s)
{
    if (s->group)
        return atomic_load_explicit(&s->group->unclosed, memory_order_seq_cst);
    return s->nopen;
}

static void maybe_finish_close(nd_server_t *s)
{
    if (s->state == SRV_CLOSING && !s->close_owed && open_count(s) == 0) {
        s->close_owed = true;
        nd__handle_pend(&s->h, SP_CLOSE);
    }
}

ND_EXPORT int nd_server_close(nd_server_t *s, nd_listener_fn on_close, void *arg)
{
    if (!s)
        return -EINVAL;
    if (s->group && !group_is_owner(s))
        return -EINVAL; /* a worker-side server closes with its group */
    if (s->state == SRV_IDLE || s->state == SRV_CLOSING)
        return ND_ENOTRUNNING;
    if (s->group) {
        bool shared = s->group->shared && !s->group->owner_accepts;
        /* The acceptor stops at once, as the owner's own accepting would: what is queued
         * stays for whoever else holds the socket, or goes with its last descriptor. */
        if (shared)
            stop_acceptor(s->group);
        /* Set before live is read (seq_cst): a worker dropping to zero either sees it and
         * tells us, or we see zero here. */
        atomic_store_explicit(&s->group->closing, true, memory_order_seq_cst);
        if (shared || s->group->balance == ND_BALANCE_REUSEPORT)
            group_unlisten_members(s->group);
    }
    if (on_close)
        nd_server_once(s, ND_EV_CLOSE, on_close, arg);
    /* Whatever the listen attempt would still report is cancelled: only 'close' comes. */
    nd__handle_unpend(&s->h, SP_LISTENING | SP_ERROR);
    if (s->resolve) {
        nd__resolve_cancel(s->resolve);
        s->resolve = NULL;
    }
    stop_accepting(s);
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    unlink_own_file(s);
    s->state = SRV_CLOSING;
    update_active(s);
    maybe_finish_close(s);
    return 0;
}

static void emit_simple(nd_server_t *s, nd_event_type_t type, const nd_error_t *err)
{
    nd_event_t ev = {.type = type, .error = err};
    nd__emit(&s->h.em, s, &ev);
}

static void emit_close(nd_server_t *s)
{
    s->close_owed = false;
    /* listen() may have come after close(): then 'close' is emitted and it listens on. */
    if (s->state == SRV_CLOSING) {
        s->state = SRV_IDLE;
        update_active(s);
    }
    emit_simple(s, ND_EV_CLOSE, NULL);
    /* Unless a listener listened again, the library's reference ends here. */
    if (s->state == SRV_IDLE && s->h.owned) {
        s->h.owned = false;
        nd__handle_release(&s->h);
    }
}

void nd__server_process(nd_server_t *s, uint32_t bits)
{
    if (bits & SP_COUNT) {
        STAILQ_HEAD(, count_req) reqs = STAILQ_HEAD_INITIALIZER(reqs);
        STAILQ_CONCAT(&reqs, &s->counts);
        count_req_t *c;
        while ((c = STAILQ_FIRST(&reqs)) != NULL) {
            STAILQ_REMOVE_HEAD(&reqs, link);
            c->cb(s, 0, (int)live_count(s), c->arg);
            free(c);
        }
    }
    /* An owed 'close' comes first: close() then listen() on one turn gives 'close' then
     * 'listening', as in Node. */
    if ((bits & SP_CLOSE) && s->close_owed)
        emit_close(s);
    if ((bits & SP_LISTENING) && s->state == SRV_LISTENING)
        emit_simple(s, ND_EV_LISTENING, NULL);
    if ((bits & SP_ERROR) && s->state == SRV_FAILED) {
        nd_error_t bare = {.code = -ENOMEM, .name = "ENOMEM", .port = -1, .message = "ENOMEM"};
        s->state = SRV_IDLE; /* listen() from inside the listener is allowed */
        update_active(s);
        emit_simple(s, ND_EV_ERROR, s->err ? &s->err->err : &bare);
    }
}

static void group_uncount_live(nd__group_t *g, int index);
static void group_uncount_open(nd__group_t *g);

void nd__server_connection_destroyed(nd_server_t *s)
{
    s->nconn--;
    ND__STAT_ADD(s->h.loop->stats.connections, -1);
    if (s->group) {
        group_uncount_live(s->group, s->index);
        return;
    }
    /* A slot came free: accepting may resume if descriptors ran out earlier. */
    if (s->state == SRV_LISTENING && !s->accepting && s->fd >= 0) {
        event_del(&s->backoff_ev);
        start_accepting(s);
    }
}

void nd__server_connection_closed(nd_server_t *s)
{
    if (s->group) {
        group_uncount_open(s->group);
        return;
    }
    s->nopen--;
    maybe_finish_close(s);
}

static void pause_accepting(nd_server_t *s)
{
    stop_accepting(s);
    s->accept_paused_total++;
    if (s->group) {
        atomic_fetch_add(&s->group->paused_total, 1);
        atomic_store(&s->group->accept_paused, true);
    }
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : 10;
    if (s->backoff_ms > 1000)
        s->backoff_ms = 1000;
    struct timeval tv = nd__ms_tv(s->backoff_ms);
    event_add(&s->backoff_ev, &tv);
}

static void on_backoff(evutil_socket_t fd, short what, void *arg)
{
    nd_server_t *s = arg;
    if (s->state == SRV_LISTENING)
        start_accepting(s);
}

/* Counts a new connection, or refuses it for maxConnections. A group counts with a CAS so
 * that the limit holds exactly when several threads accept at once (reuseport). */
static bool admit(nd_server_t *s)
{
    nd__group_t *g = s->group;
    if (!g) {
        if (s->max_connections > 0 && s->nconn >= s->max_connections) {
            s->rejected_total++;
            return false;
        }
        return true;
    }
    if (atomic_load(&g->closing)) {
        atomic_fetch_add(&g->rejected, 1);
        return false;
    }
    int max = atomic_load_explicit(&g->max, memory_order_relaxed);
    int64_t cur = atomic_load(&g->live);
    do {
        if (max > 0 && cur >= max) {
            atomic_fetch_add(&g->rejected, 1);
            return false;
        }
    } while (!atomic_compare_exchange_weak(&g->live, &cur, cur + 1));
    atomic_fetch_add(&g->unclosed, 1);
    atomic_fetch_add(&g->accepted, 1);
    if (g->balance == ND_BALANCE_REUSEPORT)
        atomic_fetch_add(&g->m[s->index].live, 1); /* its own; the acceptor picks first */
    return true;
}

/* An accepted connection that could not reach the application: it is closed, counted,
 * and no longer holds a place in the group. */
static void handoff_lost(nd__group_t *g, int index, int fd)
{
    close(fd);
    atomic_fetch_add(&g->handoff_failed, 1);
    group_uncount_live(g, index);
    group_uncount_open(g);
}

/* Gives an accepted descriptor to the application on this loop: 'connection'. */
static void deliver(nd_server_t *s, int fd, const struct sockaddr *peer, socklen_t plen)
{
    nd_socket_t *sock = nd__socket_accepted(s, fd, s->allow_half_open, peer, plen);
    if (!sock) {
        if (s->group) {
            handoff_lost(s->group, s->index, fd);
        } else {
            close(fd);
            s->rejected_total++;
        }
        return;
    }
    s->nconn++;
    s->nopen++;
    s->accepted_total++;
    ND__STAT_ADD(s->h.loop->stats.connections, 1);
    ND__STAT_ADD(s->h.loop->stats.accepted, 1);
    nd_event_t ev = {.type = ND_EV_CONNECTION, .socket = sock};
    nd__emit(&s->h.em, s, &ev);
    nd__socket_start(sock);
}

/* One accepted connection on its way to a worker. A unix peer keeps only its family,
 * which is all a socket reads of it. */
typedef struct handoff_conn {
    int fd;
    socklen_t plen;
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } peer;
} handoff_conn_t;

/* The connections one wake of the acceptor gives one worker: one message and at most one
 * wakeup for all of them. The descriptors are the message's until the worker's server
 * takes them (deliver), or it is dropped (closed). */
typedef struct handoff_msg {
    nd__msg_t node; /* embedded: posting cannot fail */
    nd__group_t *g;
    int index, n;
    handoff_conn_t c[];
} handoff_msg_t;

static void handoff_msg(nd_loop_t *loop, void *arg)
{
    handoff_msg_t *msg = arg;
    nd__group_t *g = msg->g;
    for (int k = 0; k < msg->n; k++) {
        /* Looked up for each: a 'connection' listener cannot free the worker-side server
         * (only its group can), but reading it again costs nothing. */
        nd_server_t *ws = g->m[msg->index].server;
        handoff_conn_t *c = &msg->c[k];
        socklen_t plen = c->plen < sizeof(c->peer) ? c->plen : (socklen_t)sizeof(c->peer);
        if (ws) {
            ND__STAT_ADD(loop->stats.handed_off, 1);
            deliver(ws, c->fd, &c->peer.sa, plen);
        } else {
            handoff_lost(g, msg->index, c->fd);
        }
    }
    group_release(g);
    free(msg);
}

/* The worker's loop was freed before the message ran (the process exits): the
 * descriptors are closed with it. */
static void handoff_drop(void *arg)
{
    handoff_msg_t *msg = arg;
    for (int k = 0; k < msg->n; k++)
        close(msg->c[k].fd);
    group_release(msg->g);
    free(msg);
}

static int pick_member(nd__group_t *g)
{
    if (g->balance == ND_BALANCE_ROUNDROBIN)
        return (int)(atomic_fetch_add_explicit(&g->rr_next, 1, memory_order_relaxed) %
                     (unsigned)g->n);
    int best = 0;
    int64_t least = atomic_load_explicit(&g->m[0].live, memory_order_relaxed);
    for (int i = 1; i < g->n; i++) {
        int64_t v = atomic_load_explicit(&g->m[i].live, memory_order_relaxed);
        if (v < least) {
            least = v;
            best = i;
        }
    }
    return best;
}

/* The owner passes what one wake accepted through the workers' mailboxes, one message per
 * worker that gets any (member[k] says which); every connection counts all along. */
static void hand_off(nd_server_t *s, const handoff_conn_t *conns, const int *member, int n)
{
    nd__group_t *g = s->group;
    for (int i = 0; i < g->n; i++) {
        int count = 0;
        for (int k = 0; k < n; k++)
            count += member[k] == i;
        if (count == 0)
            continue;
        handoff_msg_t *msg = malloc(sizeof(*msg) + (size_t)count * sizeof(msg->c[0]));
        if (msg) {
            msg->index = i;
            msg->n = 0;
        }
        for (int k = 0; k < n; k++) {
            if (member[k] != i)
                continue;
            if (msg)
                msg->c[msg->n++] = conns[k];
            else
                handoff_lost(g, i, conns[k].fd);
        }
        if (msg) {
            msg->g = g;
            atomic_fetch_add(&g->refs, 1);
            nd__loop_post_node(g->m[i].loop, &msg->node, handoff_msg, msg, handoff_drop);
        }
    }
}

/* Accepts what is queued (up to a wake's cap) and serves or hands it off. */
static void accept_some(nd_server_t *s)
{
    /* Connections for other members are collected, then posted together. */
    handoff_conn_t batch[ND__ACCEPTS_PER_WAKE];
    int member[ND__ACCEPTS_PER_WAKE];
    int nbatch = 0;
    nd__loop_awake(s->h.loop);
    /* worker_accepts: the acceptor's wake is one unit against an export (see held). */
    pthread_mutex_t *lock = s->group && s->group->shared && s->index >= 0
                                ? &s->group->accept_lock
                                : NULL;
    if (lock) {
        pthread_mutex_lock(lock);
        if (atomic_load(&s->group->accept_gen) != s->accept_gen) {
            stop_accepting(s); /* closed or exported: not ours to accept from any more */
            pthread_mutex_unlock(lock);
            return;
        }
    }
    nd__handle_retain(&s->h);
    for (int i = 0; i < ND__ACCEPTS_PER_WAKE && s->state == SRV_LISTENING; i++) {
        if (lock && atomic_load(&s->group->accept_gen) != s->accept_gen)
            break; /* closed or exported by a listener of this wake's own 'connection' */
        nd__sockaddr_t peer;
        socklen_t plen = sizeof(peer);
        int fd = accept4(s->fd, &peer.sa, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: stop, and retry from a timer or when one closes. */
                pause_accepting(s);
                break;
            }
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EINVAL) {
                /* Not listening any more: a shared listener its owner shut down (the close
                 * reaches this member next). Readable for good: stop watching it. */
                stop_accepting(s);
            }
            break; /* EAGAIN, or an error accept never reports as 'error' */
        }
        int ceiling = s->group ? atomic_load_explicit(&s->group->fd_ceiling, memory_order_relaxed)
                               : s->fd_ceiling;
        if (ceiling > 0 && fd >= ceiling) {
            /* Descriptors are handed out lowest first: this one is in the reserve. Give it
             * back and pause, as on EMFILE, so the reserve stays for others. */
            close(fd);
            pause_accepting(s);
            break;
        }
        s->backoff_ms = 0;
        if (s->group && s->group->accept_paused)
            atomic_store(&s->group->accept_paused, false);
        if (!admit(s)) {
            close(fd);
            continue;
        }
        if (s->group && s->group->balance != ND_BALANCE_REUSEPORT) {
            /* The acceptor: picked now, counted now (the next pick of this wake sees it);
             * its own are served at once, the others go in one message per member. */
            int m = pick_member(s->group);
            atomic_fetch_add(&s->group->m[m].live, 1);
            if (m == s->index) {
                /* As if handed over by the group's listener, which it is. */
                ND__STAT_ADD(s->h.loop->stats.handed_off, 1);
                deliver(s, fd, &peer.sa, plen);
                continue;
            }
            handoff_conn_t *c = &batch[nbatch];
            c->fd = fd;
            c->plen = plen;
            memcpy(&c->peer, &peer, plen < sizeof(c->peer) ? plen : sizeof(c->peer));
            member[nbatch++] = m;
        } else {
            deliver(s, fd, &peer.sa, plen);
        }
    }
    if (nbatch > 0)
        hand_off(s, batch, member, nbatch);
    if (lock)
        pthread_mutex_unlock(lock);
    nd__handle_release(&s->h);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    accept_some(arg);
}

ND_EXPORT int nd_server_address(const nd_server_t *s, nd_address_t *out)
{
    if (!s || !out)
        return -EINVAL;
    if (s->state != SRV_LISTENING || s->fd < 0)
        return ND_ENOTRUNNING;
    nd__sockaddr_t sa;
    socklen_t len = sizeof(sa);
    if (getsockname(s->fd, &sa.sa, &len) != 0)
        return -errno;
    nd__address_from(out, &sa.sa, len);
    if (out->family == 0 && s->path[0])
        snprintf(out->address, sizeof(out->address), "%s", s->path);
    return 0;
}

ND_EXPORT void nd_server_ref(nd_server_t *s)
{
    if (!s)
        return;
    s->h.user_ref = true;
    update_active(s);
}

ND_EXPORT void nd_server_unref(nd_server_t *s)
{
    if (!s)
        return;
    s->h.user_ref = false;
    update_active(s);
}

ND_EXPORT void nd_server_set_max_connections(nd_server_t *s, int max)
{
    if (!s)
        return;
    s->max_connections = max > 0 ? max : 0;
    if (s->group)
        atomic_store(&s->group->max, s->max_connections);
}

ND_EXPORT int nd_server_set_fd_reserve(nd_server_t *s, int reserve)
{
    if (!s || reserve < 0)
        return -EINVAL;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -errno;
    int ceiling = 0;
    if (reserve > 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)INT_MAX)
        ceiling = (int)rl.rlim_cur - reserve;
    if (reserve > 0 && ceiling <= 0)
        ceiling = 1;
    s->fd_ceiling = ceiling;
    if (s->group)
        atomic_store(&s->group->fd_ceiling, ceiling);
    return 0;
}

ND_EXPORT int nd_server_max_connections(const nd_server_t *s)
{
    return s ? s->max_connections : 0;
}

ND_EXPORT int nd_server_connections(const nd_server_t *s)
{
    if (!s)
        return -EINVAL;
    /* A group's owner hands every connection to a worker (its acceptor keeps some, but
     * that is another loop too): -1 from the first on, as Node's null. */
    if (group_is_owner(s) && s->group->balance != ND_BALANCE_REUSEPORT &&
        atomic_load(&s->group->accepted) > 0)
        return -1;
    return s->nconn;
}

ND_EXPORT int nd_server_get_connections(nd_server_t *s, nd_count_fn cb, void *arg)
{
    if (!s || !cb)
        return -EINVAL;
    count_req_t *c = malloc(sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->cb = cb;
    c->arg = arg;
    STAILQ_INSERT_TAIL(&s->counts, c, link);
    nd__handle_pend(&s->h, SP_COUNT);
    return 0;
}

ND_EXPORT int nd_server_listening(const nd_server_t *s)
{
    return s && s->state == SRV_LISTENING;
}

ND_EXPORT int nd_server_on(nd_server_t *s, nd_event_type_t ev, nd_listener_fn fn, void *arg)
{
    return s ? nd__emitter_on(&s->h.em, ev, fn, arg, false) : -EINVAL;
}

ND_EXPORT int nd_server_once(nd_server_t *s, nd_event_type_t ev, nd_listener_fn fn, void *arg)
{
    return s ? nd__emitter_on(&s->h.em, ev, fn, arg, true) : -EINVAL;
}

ND_EXPORT int nd_server_off(nd_server_t *s, nd_event_type_t ev, nd_listener_fn fn, void *arg)
{
    return s ? nd__emitter_off(&s->h.em, ev, fn, arg) : -EINVAL;
}

ND_EXPORT int nd_server_free(nd_server_t *s)
{
    if (!s)
        return -EINVAL;
    if (s->group && !group_is_owner(s))
        return -EINVAL; /* freed with its group */
    if (s->state != SRV_IDLE && s->state != SRV_FAILED)
        return -EBUSY; /* listening, resolving or closing: close it, 'close' frees it */
    nd__handle_unpend(&s->h, SP_ERROR); /* a failure not yet reported never will be */
    s->state = SRV_IDLE;
    if (s->h.owned) {
        s->h.owned = false;
        nd__handle_release(&s->h);
    }
    return 0;
}

ND_EXPORT void nd_server_hold(nd_server_t *s)
{
    if (s)
        nd__handle_retain(&s->h);
}

ND_EXPORT void nd_server_release(nd_server_t *s)
{
    if (s)
        nd__handle_release(&s->h);
}

ND_EXPORT nd_loop_t *nd_server_loop(const nd_server_t *s)
{
    return s ? s->h.loop : NULL;
}

ND_EXPORT void nd_server_set_data(nd_server_t *s, void *data)
{
    if (s)
        s->h.data = data;
}

ND_EXPORT void *nd_server_data(const nd_server_t *s)
{
    return s ? s->h.data : NULL;
}

/* ------------------------------------------------------------------ groups */

/* A message whose loop was freed before running it: give back what it holds. */
static void drop_msg(void *arg)
{
    group_msg_t *msg = arg;
    if (msg->owns_fd)
        close(msg->fd);
    group_release(msg->g);
    free(msg);
}

static void member_free_msg(nd_loop_t *loop, void *arg)
{
    group_msg_t *msg = arg;
    nd_server_t *ws = msg->g->m[msg->index].server;
    if (ws && ws->h.owned) {
        ws->h.owned = false;
        nd__handle_release(&ws->h);
    }
    group_release(msg->g);
    free(msg);
}

/* Posts msg (which it owns from now on) to a member or the owner, holding a group ref.
 * The node is embedded in msg: posting cannot fail. */
static void group_post(nd__group_t *g, nd_loop_t *to, void (*fn)(nd_loop_t *, void *),
                       group_msg_t *msg)
{
    msg->g = g;
    atomic_fetch_add(&g->refs, 1);
    nd__loop_post_node(to, &msg->node, fn ? fn : member_free_msg, msg, drop_msg);
}

static void group_release(nd__group_t *g)
{
    if (atomic_fetch_sub(&g->refs, 1) == 1) {
        pthread_mutex_destroy(&g->accept_lock);
        free(g->m);
        free(g);
    }
}

static void owner_check_msg(nd_loop_t *loop, void *arg)
{
    group_msg_t *msg = arg;
    nd_server_t *owner = msg->g->owner;
    if (owner) {
        maybe_finish_close(owner);
        /* A slot came free: accept again if descriptors ran out. */
        if (owner->state == SRV_LISTENING && !owner->accepting && owner->fd >= 0 &&
            msg->g->owner_accepts) {
            event_del(&owner->backoff_ev);
            start_accepting(owner);
        }
    }
    group_release(msg->g);
    free(msg);
}

static void member_resume_msg(nd_loop_t *loop, void *arg)
{
    group_msg_t *msg = arg;
    nd_server_t *ws = msg->g->m[msg->index].server;
    if (ws && ws->state == SRV_LISTENING && !ws->accepting && ws->fd >= 0) {
        event_del(&ws->backoff_ev);
        start_accepting(ws);
    }
    group_release(msg->g);
    free(msg);
}

/* A connection of the group was destroyed (or never reached the application): it no longer
 * counts; a listener that ran out of descriptors may accept again. */
static void group_uncount_live(nd__group_t *g, int index)
{
    if (index >= 0)
        atomic_fetch_sub(&g->m[index].live, 1);
    atomic_fetch_sub_explicit(&g->live, 1, memory_order_seq_cst);
    if (atomic_load(&g->accept_paused)) {
        /* Whoever accepts may again: the owner (it checks that it is the one), and every
         * member with reuseport or the first with worker_accepts. */
        if (g->balance != ND_BALANCE_REUSEPORT) {
            group_msg_t *msg = calloc(1, sizeof(*msg));
            if (msg)
                group_post(g, g->owner_loop, owner_check_msg, msg);
        }
        int accepting = g->balance == ND_BALANCE_REUSEPORT ? g->n : g->shared ? 1 : 0;
        for (int i = 0; i < accepting; i++) {
            group_msg_t *msg = calloc(1, sizeof(*msg));
            if (msg) {
                msg->index = i;
                group_post(g, g->m[i].loop, member_resume_msg, msg);
            }
        }
    }
}

/* ... and its 'close' has run: a closing owner waiting for the last one is told. */
static void group_uncount_open(nd__group_t *g)
{
    int64_t left = atomic_fetch_sub_explicit(&g->unclosed, 1, memory_order_seq_cst) - 1;
    /* closing is set before unclosed is read (seq_cst): either the owner sees 0, or we see
     * closing and tell it. */
    if (left == 0 && atomic_load_explicit(&g->closing, memory_order_seq_cst)) {
        group_msg_t *msg = calloc(1, sizeof(*msg));
        if (msg)
            group_post(g, g->owner_loop, owner_check_msg, msg);
    }
}

static void member_create_msg(nd_loop_t *loop, void *arg)
{
    group_msg_t *msg = arg;
    nd__group_t *g = msg->g;
    nd_server_options_t opts = {.allow_half_open = g->allow_half_open};
    nd_server_t *ws = nd_server_new(loop, &opts, NULL, NULL);
    if (ws) {
        ws->group = g;
        ws->index = msg->index;
        atomic_fetch_add(&g->refs, 1); /* dropped when ws is freed */
        g->m[msg->index].server = ws;
        if (g->init)
            g->init(ws, msg->index, g->init_arg);
    }
    group_release(g);
    free(msg);
}

ND_EXPORT nd_server_t *nd_server_new_group(nd_loop_t *owner, const nd_server_options_t *opts,
                                           nd_loop_t *const *workers, int nworkers,
                                           nd_balance_t balance, nd_worker_init_fn init,
                                           void *arg)
{
    if (!owner || !workers || nworkers <= 0 || (unsigned)balance > ND_BALANCE_REUSEPORT) {
        errno = EINVAL;
        return NULL;
    }
    for (int i = 0; i < nworkers; i++) {
        if (!workers[i]) {
            errno = EINVAL;
            return NULL;
        }
    }
    nd__group_t *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->m = calloc((size_t)nworkers, sizeof(*g->m));
    nd_server_t *s = g->m ? nd_server_new(owner, opts, NULL, NULL) : NULL;
    if (!s) {
        free(g->m);
        free(g);
        return NULL;
    }
    g->owner = s;
    g->owner_loop = owner;
    g->balance = balance;
    g->n = nworkers;
    g->init = init;
    g->init_arg = arg;
    g->allow_half_open = opts && opts->allow_half_open;
    g->ipv6_only = opts && opts->ipv6_only;
    g->shared = opts && opts->worker_accepts && balance != ND_BALANCE_REUSEPORT;
    /* Recursive: a 'connection' listener on the acceptor's loop may export the listener
     * (a group whose owner is its first worker) while the acceptor holds it. */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&g->accept_lock, &ma);
    pthread_mutexattr_destroy(&ma);
    atomic_init(&g->refs, 1); /* the owner's */
    s->group = g;
    for (int i = 0; i < nworkers; i++) {
        g->m[i].loop = workers[i];
        nd_loop_ref_mp(workers[i]);
        group_msg_t *msg = calloc(1, sizeof(*msg));
        /* Mailboxes are FIFO per sender: this runs before any handoff to that worker. */
        if (msg) {
            msg->index = i;
            group_post(g, workers[i], member_create_msg, msg);
        }
    }
    return s;
}

ND_EXPORT int nd_server_worker_index(const nd_server_t *s)
{
    return s && s->group ? s->index : -1;
}

ND_EXPORT void nd_server_stats(const nd_server_t *s, nd_server_stats_t *out)
{
    if (!s || !out)
        return;
    memset(out, 0, sizeof(*out));
    nd__group_t *g = s->group;
    if (!g) {
        out->connections = (uint64_t)s->nconn;
        out->accepted = s->accepted_total;
        out->rejected = s->rejected_total;
        out->accept_paused = s->accept_paused_total;
        return;
    }
    out->connections = (uint64_t)atomic_load(&g->live);
    out->accepted = atomic_load(&g->accepted);
    out->rejected = atomic_load(&g->rejected);
    out->handoff_failed = atomic_load(&g->handoff_failed);
    out->accept_paused = atomic_load(&g->paused_total);
}

ND_EXPORT int nd_balance_parse(const char *name)
{
    if (!name)
        return -EINVAL;
    if (!strcmp(name, "leastconn"))
        return ND_BALANCE_LEASTCONN;
    if (!strcmp(name, "roundrobin"))
        return ND_BALANCE_ROUNDROBIN;
    if (!strcmp(name, "reuseport"))
        return ND_BALANCE_REUSEPORT;
    return -EINVAL;
}

ND_EXPORT const char *nd_balance_name(nd_balance_t b)
{
    switch (b) {
    case ND_BALANCE_LEASTCONN:
        return "leastconn";
    case ND_BALANCE_ROUNDROBIN:
        return "roundrobin";
    case ND_BALANCE_REUSEPORT:
        return "reuseport";
    }
    return NULL;
}

/* --- reuseport: every member listens on the owner's address with its own socket --- */

static void rp_reply_msg(nd_loop_t *loop, void *arg)
{
    group_msg_t *msg = arg;
    nd__group_t *g = msg->g;
    nd_server_t *s = g->owner;
    if (s && msg->gen == g->listen_gen && s->state == SRV_LISTENING && g->rp_waiting > 0 &&
        g->balance != ND_BALANCE_REUSEPORT) {
        /* The acceptor's answer: 'listening' is out already; if it could not take the
         * listener, the owner accepts. */
        g->rp_waiting = 0;
        if (msg->err) {
            g->owner_accepts = true;
            start_accepting(s);
        }
    } else if (s && msg->gen == g->listen_gen && s->state == SRV_LISTENING &&
               g->rp_waiting > 0) {
        if (msg->err && !g->rp_err)
            g->rp_err = msg->err;
        if (--g->rp_waiting == 0) {
            if (g->rp_err) {
                group_unlisten_members(g);
                fail_listen(s, g->rp_err, "listen", s->host, s->port);
            } else {
                nd__handle_pend(&s->h, SP_LISTENING);
            }
        }
    }
    group_release(g);
    free(msg);
}

static int reuseport_socket(const char *ip, int port, bool v6only, int *out)
{
    nd__sockaddr_t sa;
    socklen_t len = nd__sockaddr_ip(&sa, ip, port, 0);
    if (!len)
        return -EINVAL;
    int fd = socket(sa.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (sa.sa.sa_family == AF_INET6) {
        int v = v6only;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v, sizeof(v));
    }
    if (bind(fd, &sa.sa, len) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    *out = fd;
    return 0;
}

static void member_listen_msg(nd_loop_t *loop, void *arg)
{
    group_msg_t *msg = arg;
    nd__group_t *g = msg->g;
    nd_server_t *ws = g->m[msg->index].server;
    int err = ws ? 0 : -ENOMEM;
    if (ws && msg->owns_fd && g->balance != ND_BALANCE_REUSEPORT) {
        /* The group's one listener: this member accepts for all of them. */
        if (ws->fd >= 0) {
            stop_accepting(ws);
            close(ws->fd);
        }
        ws->fd = msg->fd;
        msg->fd = -1;
        ws->accept_gen = msg->gen;
        ws->state = SRV_LISTENING;
        start_accepting(ws);
    } else if (ws && ws->fd < 0) {
        int fd = msg->fd; /* handed over by another process (nd_server_listen_reuseport_fds) */
        msg->fd = -1;
        err = fd >= 0 ? 0 : reuseport_socket(msg->ip, msg->port, g->ipv6_only, &fd);
        if (!err && listen(fd, msg->backlog) != 0) {
            err = -errno;
            close(fd);
        }
        if (!err) {
            ws->fd = fd;
            ws->state = SRV_LISTENING;
            start_accepting(ws);
        }
    }
    if (msg->fd >= 0) { /* not taken: no worker-side server to take it */
        close(msg->fd);
        msg->fd = -1;
    }
    group_msg_t *reply = calloc(1, sizeof(*reply));
    if (reply) {
        reply->err = err;
        reply->gen = msg->gen;
        group_post(g, g->owner_loop, rp_reply_msg, reply);
    }
    group_release(g);
    free(msg);
}

/* worker_accepts (leastconn, roundrobin): the owner listens, and its acceptor (the first
 * member) accepts on a duplicate of the descriptor and hands each connection to the member
 * the policy picks, keeping those picked for itself: no thread is woken for a connection
 * but the one that serves it and, when that is another, the acceptor. Returns 0, or -1
 * when the duplicate cannot be made or sent (the owner accepts instead). */
static int share_listener(nd_server_t *s)
{
    nd__group_t *g = s->group;
    group_msg_t *msg = calloc(1, sizeof(*msg));
    int fd = msg ? fcntl(s->fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (fd < 0) {
        free(msg);
        return -1;
    }
    g->rp_waiting = 1;
    g->rp_err = 0;
    /* listen_gen counts listens from 1: never 0, which means "none". */
    atomic_store(&g->accept_gen, g->listen_gen);
    msg->index = 0;
    msg->gen = g->listen_gen;
    msg->fd = fd;
    msg->owns_fd = true;
    group_post(g, g->m[0].loop, member_listen_msg, msg);
    return 0;
}

static void member_unlisten_msg(nd_loop_t *loop, void *arg)
{
    group_msg_t *msg = arg;
    nd_server_t *ws = msg->g->m[msg->index].server;
    if (ws && ws->fd >= 0) {
        stop_accepting(ws);
        close(ws->fd);
        ws->fd = -1;
        ws->state = SRV_IDLE;
    }
    group_release(msg->g);
    free(msg);
}

static void group_unlisten_members(nd__group_t *g)
{
    for (int i = 0; i < g->n; i++) {
        group_msg_t *msg = calloc(1, sizeof(*msg));
        if (msg) {
            msg->index = i;
            group_post(g, g->m[i].loop, member_unlisten_msg, msg);
        }
    }
}

/* The owner holds the port with a bound, never-listening socket (so port 0 resolves to one
 * port for everyone); the members listen on it and accept by themselves. member_fds: the
 * members' listening descriptors handed over by another process, or NULL. */
static void start_reuseport(nd_server_t *s, int fd, const char *ip, const int *member_fds)
{
    nd__group_t *g = s->group;
    s->fd = fd;
    nd__sockaddr_t sa;
    socklen_t len = sizeof(sa);
    getsockname(fd, &sa.sa, &len);
    nd_address_t a;
    nd__address_from(&a, &sa.sa, len);
    snprintf(s->host, sizeof(s->host), "%s", ip);
    s->state = SRV_LISTENING;
    g->rp_waiting = g->n;
    g->rp_err = 0;
    for (int i = 0; i < g->n; i++) {
        group_msg_t *msg = calloc(1, sizeof(*msg));
        if (!msg) {
            g->rp_waiting--;
            g->rp_err = -ENOMEM;
            continue;
        }
        msg->index = i;
        msg->gen = g->listen_gen;
        msg->port = a.port;
        msg->backlog = s->backlog;
        msg->fd = member_fds ? member_fds[i] : -1;
        msg->owns_fd = msg->fd >= 0;
        memcpy(msg->ip, a.address, sizeof(msg->ip) - 1); /* an IP literal fits */
        group_post(g, g->m[i].loop, member_listen_msg, msg);
    }
    update_active(s);
}

static void listen_reuseport(nd_server_t *s, const char *ip, int port)
{
    nd__group_t *g = s->group;
    int fd = -1;
    int err = reuseport_socket(ip, port, g->ipv6_only, &fd);
    if (err) {
        fail_listen(s, err, "listen", ip, port);
        return;
    }
    start_reuseport(s, fd, ip, NULL);
}

ND_EXPORT int nd_server_listen_reuseport_fds(nd_server_t *s, int owner_fd, const int *member_fds,
                                             int n, int backlog)
{
    if (!s || owner_fd < 0 || !member_fds || !group_is_owner(s) ||
        s->group->balance != ND_BALANCE_REUSEPORT || n != s->group->n)
        return -EINVAL;
    int rc = check_can_listen(s);
    if (rc)
        return rc;
    restart(s, backlog);
    nd__set_nonblock_cloexec(owner_fd);
    for (int i = 0; i < n; i++)
        nd__set_nonblock_cloexec(member_fds[i]);
    nd__sockaddr_t sa;
    socklen_t len = sizeof(sa);
    if (getsockname(owner_fd, &sa.sa, &len) != 0)
        return -errno;
    nd_address_t a;
    nd__address_from(&a, &sa.sa, len);
    s->port = a.port;
    start_reuseport(s, owner_fd, a.address, member_fds);
    return 0;
}

/* --- moves between members --- */

int nd__server_member_of(const nd_server_t *ws, const nd_loop_t *target)
{
    if (!ws->group || ws->index < 0)
        return -EXDEV;
    for (int i = 0; i < ws->group->n; i++)
        if (ws->group->m[i].loop == target)
            return i;
    return -EXDEV;
}

void nd__server_move_out(nd_server_t *ws, int to)
{
    nd__group_t *g = ws->group;
    ws->nconn--;
    ND__STAT_ADD(ws->h.loop->stats.connections, -1);
    atomic_fetch_add(&g->m[to].live, 1);
    atomic_fetch_sub(&g->m[ws->index].live, 1);
}

nd_server_t *nd__server_move_in(nd_server_t *old_ws, int to)
{
    /* The group pointer never changes and the message's lock published it. */
    nd_server_t *ws = old_ws->group->m[to].server;
    ws->nconn++;
    ND__STAT_ADD(ws->h.loop->stats.connections, 1);
    return ws;
}

void nd__server_emit_adopt(nd_server_t *ws, nd_socket_t *sock)
{
    nd_event_t ev = {.type = ND_EV_ADOPT, .socket = sock};
    nd__handle_retain(&ws->h);
    nd__emit(&ws->h.em, ws, &ev);
    nd__handle_release(&ws->h);
}

/* ------------------------------------------------------------------ handing over */

void nd__server_connection_imported(nd_server_t *s)
{
    s->nconn++;
    s->nopen++;
    ND__STAT_ADD(s->h.loop->stats.connections, 1);
    nd__group_t *g = s->group;
    if (g) {
        atomic_fetch_add(&g->live, 1);
        atomic_fetch_add(&g->unclosed, 1);
        if (s->index >= 0)
            atomic_fetch_add(&g->m[s->index].live, 1);
    }
}

/* Once the lock is ours the acceptor has posted all it took and takes no more: whatever
 * this thread posts to a worker from now on arrives after those connections. */
static void stop_acceptor(nd__group_t *g)
{
    pthread_mutex_lock(&g->accept_lock);
    atomic_store(&g->accept_gen, 0);
    pthread_mutex_unlock(&g->accept_lock);
}

/* The owner of a worker_accepts group whose first worker accepts (no fallback). */
static bool acceptor_is_member(const nd_server_t *s)
{
    return group_is_owner(s) && s->group->shared && !s->group->owner_accepts;
}

ND_EXPORT int nd_server_export(nd_server_t *s)
{
    if (!s)
        return -EINVAL;
    if (s->fd < 0 || (s->state != SRV_LISTENING))
        return ND_ENOTRUNNING;
    if (acceptor_is_member(s))
        stop_acceptor(s->group);
    stop_accepting(s);
    return s->fd;
}

ND_EXPORT void nd_server_export_abort(nd_server_t *s)
{
    if (!s || s->state != SRV_LISTENING || s->fd < 0)
        return;
    if (acceptor_is_member(s)) {
        atomic_store(&s->group->accept_gen, s->group->listen_gen);
        group_msg_t *msg = calloc(1, sizeof(*msg));
        if (msg) /* the acceptor watches its listener again */
            group_post(s->group, s->group->m[0].loop, member_resume_msg, msg);
        return;
    }
    /* A reuseport owner never accepts; any other owner does when its loop is the acceptor. */
    if (!group_is_owner(s) ||
        (s->group->balance != ND_BALANCE_REUSEPORT && s->group->owner_accepts))
        start_accepting(s);
}

ND_EXPORT void nd_server_export_commit(nd_server_t *s)
{
    if (!s)
        return;
    /* The socket file (if any) is the other process's now: never removed from here. */
    s->unlink_on_close = false;
    if (s->group && !group_is_owner(s)) {
        /* A reuseport member: its listener goes; the group closes through its owner. */
        stop_accepting(s);
        if (s->fd >= 0)
            close(s->fd);
        s->fd = -1;
        s->state = SRV_IDLE;
        return;
    }
    nd_server_close(s, NULL, NULL);
}
