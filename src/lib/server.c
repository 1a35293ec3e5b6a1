/* SPDX-License-Identifier: MIT */
/*
 * nd_server_t: net.Server. Owns the listening descriptor, accepts connections, counts
 * them, and emits listening / connection / error / close on later loop turns: the life of
 * one server on one loop. What a group adds across threads is in group.c.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static void on_accept(evutil_socket_t fd, short what, void *arg);
static void on_backoff(evutil_socket_t fd, short what, void *arg);
static void unlink_own_file(nd_server_t *s);

void nd__server_update_active(nd_server_t *s)
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
        nd__group_owner_gone(g);
    } else if (g) {
        g->m[s->index].server = NULL;
    }
    free(s->err);
    nd__handle_fini(&s->h);
    free(s);
    if (g)
        nd__group_release(g);
}

/* A listen attempt failed: report it as 'error' on a later turn. No 'close' follows (Node
 * emits none): the server stays, idle, for another listen() or nd_server_free(). */
void nd__server_fail_listen(nd_server_t *s, int code, const char *syscall, const char *address,
                            int port)
{
    nd__error_set(&s->err, code, syscall, address, port, NULL);
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    s->state = SRV_FAILED;
    nd__handle_pend(&s->h, SP_ERROR);
    nd__server_update_active(s);
}

void nd__server_start_accepting(nd_server_t *s)
{
    if (s->accepting || s->fd < 0 || s->exported)
        return;
    event_assign(&s->accept_ev, s->h.loop->base, s->fd, EV_READ | EV_PERSIST, on_accept, s);
    event_add(&s->accept_ev, NULL);
    s->accepting = true;
}

void nd__server_stop_accepting(nd_server_t *s)
{
    if (s->accepting) {
        event_del(&s->accept_ev);
        s->accepting = false;
    }
    event_del(&s->backoff_ev);
}

/* The descriptor is bound (or adopted): listen and schedule 'listening'. A group whose
 * first worker accepts (worker_accepts) gets a duplicate of the descriptor there; if that
 * cannot be sent, or the worker cannot take it, the owner accepts as without the option. */
static void finish_listen(nd_server_t *s, const char *address, int port)
{
    if (listen(s->fd, s->backlog) != 0) {
        nd__server_fail_listen(s, -errno, "listen", address, port);
        return;
    }
    s->state = SRV_LISTENING;
    s->exported = false;
    if (s->group)
        s->group->owner_accepts = !(s->group->shared && nd__group_share_listener(s) == 0);
    if (!s->group || s->group->owner_accepts)
        nd__server_start_accepting(s);
    nd__handle_pend(&s->h, SP_LISTENING);
    nd__server_update_active(s);
}

int nd__server_check_can_listen(nd_server_t *s)
{
    if (s->group && !nd__group_is_owner(s))
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

void nd__server_restart(nd_server_t *s, int backlog)
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

static void bind_ip(nd_server_t *s, const char *ip, int port)
{
    if (s->group && s->group->balance == ND_BALANCE_REUSEPORT) {
        nd__group_listen_reuseport(s, ip, port);
        return;
    }
    nd__sockaddr_t sa;
    socklen_t len = nd__sockaddr_ip(&sa, ip, port, 0);
    if (!len) {
        nd__server_fail_listen(s, -EINVAL, "listen", ip, port);
        return;
    }
    s->fd = socket(sa.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        nd__server_fail_listen(s, -errno, "listen", ip, port);
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
        nd__server_fail_listen(s, -errno, "listen", ip, port);
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
        nd__server_update_active(s);
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
    int rc = nd__server_check_can_listen(s);
    if (rc)
        return rc;
    nd__server_restart(s, backlog);
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
    nd__server_update_active(s);
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
    int rc = nd__server_check_can_listen(s);
    if (rc)
        return rc;
    nd__server_restart(s, backlog);
    s->port = -1;
    nd__sockaddr_t sa;
    int len = nd__sockaddr_unix(&sa, path);
    if (len < 0) {
        nd__server_fail_listen(s, len, "listen", path, -1);
        return 0;
    }
    s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        nd__server_fail_listen(s, -errno, "listen", path, -1);
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
        nd__server_fail_listen(s, -e, "listen", path, -1);
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
    nd__server_restart(s, backlog);
    s->port = -1;
    s->fd = fd;
    int type = 0;
    socklen_t tl = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM) {
        /* v0.10 reported anything but a stream socket as EINVAL. */
        nd__server_fail_listen(s, -EINVAL, "listen", NULL, -1);
        return 0;
    }
    int rc = nd__set_nonblock_cloexec(fd);
    if (rc) {
        nd__server_fail_listen(s, rc, "listen", NULL, -1);
        return 0;
    }
    finish_listen(s, NULL, -1);
    return 0;
}

ND_EXPORT int nd_server_listen_fd_path(nd_server_t *s, int fd, const char *path, int backlog)
{
    if (!s || fd < 0 || !path || !*path || strlen(path) >= sizeof(s->path))
        return -EINVAL;
    int rc = nd__server_check_can_listen(s);
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
    int rc = nd__server_check_can_listen(s);
    if (rc)
        return rc;
    return listen_on_fd(s, fd, backlog);
}

static int listen_dup(nd_server_t *s, int fd, int backlog)
{
    if (fd < 0)
        return -EBADF;
    int rc = nd__server_check_can_listen(s);
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

ND_EXPORT int nd_server_listen_socket_handle(nd_server_t *s, const nd_socket_t *sock, int backlog)
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

void nd__server_maybe_finish_close(nd_server_t *s)
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
    if (s->group && !nd__group_is_owner(s))
        return -EINVAL; /* a worker-side server closes with its group */
    if (s->state == SRV_IDLE || s->state == SRV_CLOSING)
        return ND_ENOTRUNNING;
    if (s->group) {
        bool shared = s->group->shared && !s->group->owner_accepts;
        /* The acceptor stops at once, as the owner's own accepting would: what is queued
         * stays for whoever else holds the socket, or goes with its last descriptor. */
        if (shared)
            nd__group_stop_acceptor(s->group);
        /* Set before live is read (seq_cst): a worker dropping to zero either sees it and
         * tells us, or we see zero here. */
        atomic_store_explicit(&s->group->closing, true, memory_order_seq_cst);
        if (shared || s->group->balance == ND_BALANCE_REUSEPORT)
            nd__group_unlisten_members(s->group);
    }
    if (on_close)
        nd_server_once(s, ND_EV_CLOSE, on_close, arg);
    /* Whatever the listen attempt would still report is cancelled: only 'close' comes. */
    nd__handle_unpend(&s->h, SP_LISTENING | SP_ERROR);
    if (s->resolve) {
        nd__resolve_cancel(s->resolve);
        s->resolve = NULL;
    }
    nd__server_stop_accepting(s);
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    unlink_own_file(s);
    s->state = SRV_CLOSING;
    nd__server_update_active(s);
    nd__server_maybe_finish_close(s);
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
        nd__server_update_active(s);
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
        nd__server_update_active(s);
        emit_simple(s, ND_EV_ERROR, s->err ? &s->err->err : &bare);
    }
}

void nd__server_connection_destroyed(nd_server_t *s)
{
    s->nconn--;
    ND__STAT_ADD(s->h.loop->stats.connections, -1);
    if (s->group) {
        nd__group_uncount_live(s->group, s->index);
        return;
    }
    /* A slot came free: accepting may resume if descriptors ran out earlier. */
    if (s->state == SRV_LISTENING && !s->accepting && s->fd >= 0) {
        event_del(&s->backoff_ev);
        nd__server_start_accepting(s);
    }
}

void nd__server_connection_closed(nd_server_t *s)
{
    if (s->group) {
        nd__group_uncount_open(s->group);
        return;
    }
    s->nopen--;
    nd__server_maybe_finish_close(s);
}

static void pause_accepting(nd_server_t *s)
{
    nd__server_stop_accepting(s);
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
        nd__server_start_accepting(s);
}

/* Counts a new connection, or refuses it for maxConnections. A group counts with a CAS so
 * that the limit holds exactly when several threads accept at once (reuseport). */
static bool admit(nd_server_t *s)
{
    if (s->group)
        return nd__group_admit(s->group, s->index);
    if (s->max_connections > 0 && s->nconn >= s->max_connections) {
        s->rejected_total++;
        return false;
    }
    return true;
}

/* Gives an accepted descriptor to the application on this loop: 'connection'. */
void nd__server_deliver(nd_server_t *s, int fd, const struct sockaddr *peer, socklen_t plen)
{
    nd_socket_t *sock = nd__socket_accepted(s, fd, s->allow_half_open, peer, plen);
    if (!sock) {
        if (s->group) {
            nd__group_handoff_lost(s->group, s->index, fd);
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

/* Accepts what is queued (up to a wake's cap) and serves or hands it off. */
static void accept_some(nd_server_t *s)
{
    /* Connections for other members are collected, then posted together. */
    handoff_conn_t batch[ND__ACCEPTS_PER_WAKE];
    int member[ND__ACCEPTS_PER_WAKE];
    int nbatch = 0;
    nd__loop_awake(s->h.loop);
    /* worker_accepts: the acceptor's wake is one unit against an export (see held). */
    pthread_mutex_t *lock = s->group && s->group->shared && s->index >= 0 ? &s->group->accept_lock
                                                                          : NULL;
    if (lock) {
        pthread_mutex_lock(lock);
        if (atomic_load(&s->group->accept_gen) != s->accept_gen) {
            nd__server_stop_accepting(s); /* closed or exported: not ours to accept from any more */
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
                nd__server_stop_accepting(s);
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
            int m = nd__group_pick(s->group);
            atomic_fetch_add(&s->group->m[m].live, 1);
            if (m == s->index) {
                /* As if handed over by the group's listener, which it is. */
                ND__STAT_ADD(s->h.loop->stats.handed_off, 1);
                nd__server_deliver(s, fd, &peer.sa, plen);
                continue;
            }
            handoff_conn_t *c = &batch[nbatch];
            c->fd = fd;
            c->plen = plen;
            memcpy(&c->peer, &peer, plen < sizeof(c->peer) ? plen : sizeof(c->peer));
            member[nbatch++] = m;
        } else {
            nd__server_deliver(s, fd, &peer.sa, plen);
        }
    }
    if (nbatch > 0)
        nd__group_hand_off(s->group, batch, member, nbatch);
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
    nd__server_update_active(s);
}

ND_EXPORT void nd_server_unref(nd_server_t *s)
{
    if (!s)
        return;
    s->h.user_ref = false;
    nd__server_update_active(s);
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
    if (nd__group_is_owner(s) && s->group->balance != ND_BALANCE_REUSEPORT &&
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
    if (s->group && !nd__group_is_owner(s))
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

/* The owner of a worker_accepts group whose first worker accepts (no fallback). */
static bool acceptor_is_member(const nd_server_t *s)
{
    return nd__group_is_owner(s) && s->group->shared && !s->group->owner_accepts;
}

ND_EXPORT int nd_server_export(nd_server_t *s)
{
    if (!s)
        return -EINVAL;
    if (s->fd < 0 || (s->state != SRV_LISTENING))
        return ND_ENOTRUNNING;
    if (acceptor_is_member(s))
        nd__group_stop_acceptor(s->group);
    nd__server_stop_accepting(s);
    s->exported = true;
    return s->fd;
}

ND_EXPORT void nd_server_export_abort(nd_server_t *s)
{
    if (!s)
        return;
    s->exported = false;
    if (s->state != SRV_LISTENING || s->fd < 0)
        return;
    if (acceptor_is_member(s)) {
        atomic_store(&s->group->accept_gen, s->group->listen_gen);
        nd__group_resume_acceptor(s->group); /* it watches its listener again */
        return;
    }
    /* A reuseport owner never accepts; any other owner does when its loop is the acceptor. */
    if (!nd__group_is_owner(s) ||
        (s->group->balance != ND_BALANCE_REUSEPORT && s->group->owner_accepts))
        nd__server_start_accepting(s);
}

ND_EXPORT void nd_server_export_commit(nd_server_t *s)
{
    if (!s)
        return;
    /* The socket file (if any) is the other process's now: never removed from here. */
    s->unlink_on_close = false;
    if (s->group && !nd__group_is_owner(s)) {
        /* A reuseport member: its listener goes; the group closes through its owner. */
        nd__server_stop_accepting(s);
        if (s->fd >= 0)
            close(s->fd);
        s->fd = -1;
        s->state = SRV_IDLE;
        return;
    }
    nd_server_close(s, NULL, NULL);
}
