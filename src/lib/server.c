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
#include <sys/stat.h>
#include <unistd.h>

enum server_state {
    SRV_IDLE,      /* never listened, or closed */
    SRV_RESOLVING, /* listen() on a host name: waiting for the address */
    SRV_LISTENING, /* bound; 'listening' may still be pending */
    SRV_FAILED,    /* the listen attempt failed: 'error' then 'close' pending */
    SRV_CLOSING    /* stopped accepting; 'close' waits for the last connection */
};

enum server_pending {
    SP_LISTENING = 1u << 0,
    SP_ERROR = 1u << 1, /* listen failure: 'error' then 'close' */
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
    bool unlink_on_close; /* we created the unix socket file */
    bool handed_off;      /* sockets went to other loops: `connections` reads -1 */
    int max_connections;
    int nconn;
    int backlog;
    int port; /* requested, for errors */
    char host[256];
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct event accept_ev;
    struct event backoff_ev;
    unsigned backoff_ms;
    nd__resolve_t *resolve;
    nd__error_store_t err;
    STAILQ_HEAD(, count_req) counts;
    uint64_t accepted_total, rejected_total, accept_paused_total;
};

static void on_accept(evutil_socket_t fd, short what, void *arg);
static void on_backoff(evutil_socket_t fd, short what, void *arg);

static void update_active(nd_server_t *s)
{
    nd__handle_set_active(&s->h,
                          s->state == SRV_RESOLVING || s->state == SRV_LISTENING);
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
        return NULL;
    nd__handle_init(&s->h, loop, ND__SERVER);
    s->fd = -1;
    s->allow_half_open = opts && opts->allow_half_open;
    STAILQ_INIT(&s->counts);
    event_assign(&s->backoff_ev, loop->base, -1, 0, on_backoff, s);
    if (on_connection && nd_server_on(s, ND_EV_CONNECTION, on_connection, arg) != 0) {
        nd__handle_release(&s->h);
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
    if (s->resolve)
        nd__resolve_cancel(s->resolve);
    count_req_t *c;
    while ((c = STAILQ_FIRST(&s->counts)) != NULL) {
        STAILQ_REMOVE_HEAD(&s->counts, link);
        free(c);
    }
    nd__handle_fini(&s->h);
    free(s);
}

/* A listen attempt failed: report it as 'error' then 'close' on a later turn. */
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

/* The descriptor is bound (or adopted): listen and schedule 'listening'. */
static void finish_listen(nd_server_t *s, const char *address, int port)
{
    if (listen(s->fd, s->backlog) != 0) {
        fail_listen(s, -errno, "listen", address, port);
        return;
    }
    s->state = SRV_LISTENING;
    start_accepting(s);
    nd__handle_pend(&s->h, SP_LISTENING);
    update_active(s);
}

static int check_can_listen(nd_server_t *s)
{
    if (s->state == SRV_CLOSING)
        return ND_ECLOSED;
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
    s->unlink_on_close = false;
    s->path[0] = '\0';
    s->backoff_ms = 0;
}

static void bind_ip(nd_server_t *s, const char *ip, int port)
{
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
    if (sa.sa.sa_family == AF_INET6) /* "::" then means IPv6 only, like an explicit host */
        setsockopt(s->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
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

/* A live server answers a connect; a file left by a dead process refuses it. */
static bool path_is_stale(const nd__sockaddr_t *sa, int len)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    bool stale = connect(fd, &sa->sa, (socklen_t)len) != 0 && errno == ECONNREFUSED;
    close(fd);
    return stale;
}

ND_EXPORT int nd_server_listen_path(nd_server_t *s, const char *path, int backlog)
{
    if (!s || !path || !*path)
        return -EINVAL;
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
    if (bind(s->fd, &sa.sa, (socklen_t)len) != 0) {
        int e = errno;
        struct stat st;
        if (e == EADDRINUSE && lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) &&
            path_is_stale(&sa, len) && unlink(path) == 0 &&
            bind(s->fd, &sa.sa, (socklen_t)len) == 0)
            e = 0;
        if (e) {
            fail_listen(s, -e, "listen", path, -1);
            return 0;
        }
    }
    snprintf(s->path, sizeof(s->path), "%s", path);
    s->unlink_on_close = true;
    finish_listen(s, path, -1);
    return 0;
}

static int listen_on_fd(nd_server_t *s, int fd, int backlog)
{
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

static void maybe_finish_close(nd_server_t *s)
{
    if (s->state == SRV_CLOSING && s->nconn == 0)
        nd__handle_pend(&s->h, SP_CLOSE);
}

ND_EXPORT int nd_server_close(nd_server_t *s, nd_listener_fn on_close, void *arg)
{
    if (!s)
        return -EINVAL;
    if (s->state == SRV_IDLE || s->state == SRV_CLOSING)
        return ND_ENOTRUNNING;
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
    if (s->unlink_on_close) {
        unlink(s->path);
        s->unlink_on_close = false;
    }
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
    s->state = SRV_IDLE;
    update_active(s);
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
            c->cb(s, 0, s->nconn, c->arg);
            free(c);
        }
    }
    if ((bits & SP_LISTENING) && s->state == SRV_LISTENING)
        emit_simple(s, ND_EV_LISTENING, NULL);
    if ((bits & SP_ERROR) && s->state == SRV_FAILED) {
        emit_simple(s, ND_EV_ERROR, &s->err.err);
        /* 'close' directly follows a listen 'error', unless a listener started over. */
        if (s->state == SRV_FAILED)
            emit_close(s);
        return;
    }
    if ((bits & SP_CLOSE) && s->state == SRV_CLOSING && s->nconn == 0)
        emit_close(s);
}

void nd__server_connection_closed(nd_server_t *s)
{
    s->nconn--;
    maybe_finish_close(s);
    /* A slot came free: accepting may resume if descriptors ran out earlier. */
    if (s->state == SRV_LISTENING && !s->accepting && s->fd >= 0) {
        event_del(&s->backoff_ev);
        start_accepting(s);
    }
}

static void pause_accepting(nd_server_t *s)
{
    stop_accepting(s);
    s->accept_paused_total++;
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : 10;
    if (s->backoff_ms > 1000)
        s->backoff_ms = 1000;
    struct timeval tv = {s->backoff_ms / 1000, (s->backoff_ms % 1000) * 1000};
    event_add(&s->backoff_ev, &tv);
}

static void on_backoff(evutil_socket_t fd, short what, void *arg)
{
    nd_server_t *s = arg;
    if (s->state == SRV_LISTENING)
        start_accepting(s);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    nd_server_t *s = arg;
    nd__handle_retain(&s->h);
    for (int i = 0; i < ND__ACCEPTS_PER_WAKE && s->state == SRV_LISTENING; i++) {
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
            break; /* EAGAIN, or an error accept never reports as 'error' */
        }
        s->backoff_ms = 0;
        if (s->max_connections > 0 && s->nconn >= s->max_connections) {
            close(fd);
            s->rejected_total++;
            continue;
        }
        nd_socket_t *sock = nd__socket_accepted(s, fd, s->allow_half_open, &peer.sa, plen);
        if (!sock) {
            close(fd);
            s->rejected_total++;
            continue;
        }
        s->nconn++;
        s->accepted_total++;
        nd_event_t ev = {.type = ND_EV_CONNECTION, .socket = sock};
        nd__emit(&s->h.em, s, &ev);
        nd__socket_start(sock);
    }
    nd__handle_release(&s->h);
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
    if (s)
        s->max_connections = max > 0 ? max : 0;
}

ND_EXPORT int nd_server_max_connections(const nd_server_t *s)
{
    return s ? s->max_connections : 0;
}

ND_EXPORT int nd_server_connections(const nd_server_t *s)
{
    if (!s)
        return -EINVAL;
    return s->handed_off ? -1 : s->nconn;
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
