/* SPDX-License-Identifier: MIT */
/*
 * nd_socket_t: net.Socket. Owns one connection's descriptor, its write queue and idle
 * timer; reads into the loop's shared buffer, so an idle socket holds no read memory.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <event2/buffer.h>

enum socket_state {
    SK_NEW,        /* no descriptor, not connecting */
    SK_RESOLVING,  /* waiting for the host's address */
    SK_CONNECTING, /* connect() in progress */
    SK_OPEN,       /* connected (or wrapped an fd) */
    SK_CLOSED      /* destroyed: 'close' pending or done */
};

enum socket_pending {
    PK_CONNECT = 1u << 0, /* a connect that completed inside connect() */
    PK_WRITECB = 1u << 1,
    PK_DRAIN = 1u << 2,
    PK_FINISH = 1u << 3,
    PK_ERROR = 1u << 4,
    PK_CLOSE = 1u << 5,
    PK_AUTOCLOSE = 1u << 6, /* both directions ended: close on the turn after 'finish' */
    PK_FLOW = 1u << 7,      /* buffered input (and a held-back 'end') to deliver */
};

/* An 'error' waiting for its turn. Several may wait: a refused write after end() or the
 * peer's FIN, then a failure of the connection itself. Kept as what makes it, its strings
 * copied behind it (a few dozen bytes: thousands of peers resetting at once queue as many),
 * and made into an nd_error_t only when it is emitted. */
typedef struct err_node {
    struct err_node *next;
    int code, port;
    const char *syscall;                      /* a string literal, or NULL */
    const char *address, *hostname, *message; /* into text, or NULL */
    char text[];
} err_node_t;

/* Copies str behind a node; returns where it went, or NULL for NULL. */
static const char *err_text(char **at, const char *str)
{
    if (!str)
        return NULL;
    size_t n = strlen(str) + 1;
    memcpy(*at, str, n);
    const char *p = *at;
    *at += n;
    return p;
}

typedef struct wreq {
    uint64_t mark; /* done once flushed(s) reaches it */
    nd_write_cb cb;
    void *arg;
    int err;
    bool done;
    TAILQ_ENTRY(wreq) link;
} wreq_t;

/* An endpoint in binary, as accept() and getsockname() give it: formatted only when asked,
 * so a connection nobody asks about carries 20 bytes per end instead of a text address. */
typedef struct endpoint {
    uint8_t family; /* 0 (unknown), 4 or 6; unix sockets keep their path in addr_text */
    uint16_t port;
    unsigned char addr[16];
} endpoint_t;

/* The text forms the getters hand out (valid until the socket is freed), and a unix
 * socket's local path: allocated when first needed. */
typedef struct addr_text {
    char remote[64];
    char local[sizeof(((struct sockaddr_un *)0)->sun_path)];
} addr_text_t;

/* What connect() was given, kept for errors and reconnects: client sockets only. */
typedef struct dial {
    nd__resolve_t *resolve;
    int port, family, local_port;
    char local_address[64];
    char target[64]; /* the IP dialled (a unix socket dials `name`) */
    char name[];     /* the host name, or the unix path */
} dial_t;

/* setEncoding's decoder and the text it produces: only for sockets that decode. */
typedef struct decoding {
    nd__decoder_t dec;
    nd__strbuf_t text;
} decoding_t;

/*
 * The socket. What every connection needs stays inline; what only some use is allocated
 * on first use and owned by the socket (freed with it, carried by a move): the write
 * event (a write that had to wait, or a connect), the idle timer (setTimeout), connect
 * parameters (clients), the decoder (setEncoding), text addresses (when asked), the
 * buffers (in: input nobody consumes yet; out: output the kernel did not take) and the
 * splice pipe (sp_r/sp_w: output spliced from a piped source, counted in queued()).
 */
struct nd_socket {
    nd__handle_t h;
    int fd;
    uint8_t state; /* enum socket_state */
    bool allow_half_open : 1;
    bool opt_readable : 1; /* reading allowed at all (false for fd sockets opened write-only) */
    bool opt_writable : 1; /* writing allowed at all */
    /* Reading, as Node's streams do it: input is read from the kernel once reading has
     * started; it is emitted as 'data' while flowing and not paused, and otherwise kept in
     * `in` until ND__READ_HWM bytes wait there, when reading stops. */
    bool paused : 1;       /* pause() (or a pipe's backpressure) and no resume() since */
    bool flowing : 1;      /* a 'data' listener was added, pipe() or resume() was called */
    bool read_started : 1; /* reading began: at accept or connect unless paused, or resume() */
    bool reading : 1;      /* read_ev added */
    bool writing : 1;      /* wev added */
    bool fin_rcvd : 1;     /* the peer's FIN was read; 'end' follows the buffered input */
    bool eof : 1;          /* 'end' was emitted */
    bool peer_ended : 1;   /* eof with allowHalfOpen false: writes now fail with EPIPE */
    bool ending : 1;       /* end() called: FIN once the queue is flushed */
    bool fin_sent : 1;
    bool need_drain : 1;  /* a write returned 0: emit 'drain' when the queue empties */
    bool had_error : 1;   /* a failure of the connection itself: 'close' has had_error 1 */
    bool error_gate : 1;  /* the one 'error' of a failed or closed connection was queued */
    bool error_nomem : 1; /* an error could not be stored: a bare ENOMEM 'error' is due */
    bool in_count : 1;    /* counted in its server's connections until destroyed */
    bool closed_done : 1; /* 'close' has run */
    bool timer_armed : 1;
    bool moving : 1; /* between nd_socket_move and the detach: reads wait for the target */
    bool no_delay : 1, keep_alive : 1, opts_set : 1;
    bool is_unix : 1;
    bool have_local : 1, have_remote : 1;
    bool pipe_end : 1, pipe_paused : 1;
    bool bulk : 1;    /* the last read filled a chunk: a pipe from here splices */
    bool spliced : 1; /* counted in the loop's splicers (it took a pipe once) */
    bool parked : 1;  /* exported to another process, or imported and not started: no I/O */
    uint8_t owed;     /* while parked: deferred work (PK_*) to pend again when it starts */
    uint16_t keep_alive_delay_s; /* more than TCP_KEEPIDLE takes anyway */
    unsigned timeout_ms;
    uint32_t sp_len;          /* bytes waiting in the splice pipe */
    int sp_r, sp_w;           /* the splice pipe holding output of this socket, or -1 */
    uint32_t high_water_mark; /* pipe pauses its source once more than this is queued */
    uint64_t last_active_us;  /* the loop's cached clock at the last read or write progress */
    struct event read_ev;
    struct event *wev;      /* write readiness (and connect completion); lazy */
    struct event *timer_ev; /* the idle timer; lazy */
    struct evbuffer *out;   /* output the kernel did not take yet; lazy */
    struct evbuffer *in;    /* input read but not yet emitted; lazy */
    TAILQ_HEAD(, wreq) wreqs;
    /* bytes_written counts bytes accepted by write() (queued ones too): it is also the
     * mark of the newest write; those handed to the kernel are flushed(s). */
    uint64_t bytes_written;
    uint64_t bytes_read;
    nd_server_t *server;
    struct err_node *errq; /* errors to emit, in order */
    dial_t *dial;
    decoding_t *decoding;
    addr_text_t *text;
    /* pipe: src->pipe_dst; dst->pipe_src points back so 'drain' can resume the source */
    nd_socket_t *pipe_dst, *pipe_src;
    /* The other half of a pair piped both ways. Unlike the pipes, the link outlives a
     * teardown until either 'close' has run: the application's listeners may still point
     * across it, so neither half may leave the loop alone before then (moves). */
    nd_socket_t *pair;
    endpoint_t local, remote;
};

static void on_readable(evutil_socket_t fd, short what, void *arg);
static void on_writable(evutil_socket_t fd, short what, void *arg);
static void on_timer(evutil_socket_t fd, short what, void *arg);
static void flush(nd_socket_t *s);
static void destroy_with(nd_socket_t *s, int code, const char *syscall, const char *address,
                         int port, const char *hostname);

/* ------------------------------------------------------------------ helpers */

static bool is_destroyed(const nd_socket_t *s)
{
    return s->state == SK_CLOSED;
}

/* Output not yet handed to the kernel: the buffer, and bytes waiting in the splice pipe
 * (which always go first: nothing is spliced while the buffer holds anything). */
static size_t queued(const nd_socket_t *s)
{
    return (s->out ? evbuffer_get_length(s->out) : 0) + s->sp_len;
}

/* Bytes handed to the kernel: everything write() accepted but what is still queued. */
static uint64_t flushed(const nd_socket_t *s)
{
    return s->bytes_written - queued(s);
}

static size_t buffered(const nd_socket_t *s)
{
    return s->in ? evbuffer_get_length(s->in) : 0;
}

static void update_active(nd_socket_t *s)
{
    bool active = false;
    switch (s->state) {
    case SK_RESOLVING:
    case SK_CONNECTING:
        active = true;
        break;
    case SK_OPEN:
        active = s->reading || s->writing || queued(s) > 0;
        break;
    default:
        break;
    }
    /* Output on its way keeps the loop alive even when unref'd: in Node a pending write is
     * a libuv request, which counts whatever the handle's ref says. */
    nd__handle_set_active_pinned(&s->h, active, s->state == SK_OPEN && queued(s) > 0);
}

static uint64_t now_us(nd_loop_t *loop)
{
    /* The loop's cached time: no syscall per read or write. */
    struct timeval tv;
    event_base_gettimeofday_cached(loop->base, &tv);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

static void touch(nd_socket_t *s)
{
    nd_loop_t *loop = s->h.loop;
    s->last_active_us = loop->io_now_us ? loop->io_now_us : now_us(loop);
    if (s->timeout_ms && !s->timer_armed && s->timer_ev && !s->parked) {
        struct timeval tv = nd__ms_tv(s->timeout_ms);
        evtimer_add(s->timer_ev, &tv);
        s->timer_armed = true;
    }
}

static void disarm_timer(nd_socket_t *s)
{
    if (s->timer_armed) {
        evtimer_del(s->timer_ev);
        s->timer_armed = false;
    }
}

/* 'data' is emitted as input arrives. */
static bool flowing_now(const nd_socket_t *s)
{
    return s->flowing && !s->paused;
}

static bool want_reading(const nd_socket_t *s)
{
    if (s->state != SK_OPEN || !s->read_started || s->fin_rcvd || !s->opt_readable || s->moving ||
        s->parked)
        return false;
    return flowing_now(s) || buffered(s) < ND__READ_HWM;
}

static void stop_reading(nd_socket_t *s)
{
    if (!s->reading)
        return;
    event_del(&s->read_ev);
    s->reading = false;
    update_active(s);
}

/* Reads from the kernel exactly while want_reading() says so: starts or stops. */
static void start_reading(nd_socket_t *s)
{
    if (!want_reading(s)) {
        stop_reading(s);
        return;
    }
    if (s->reading)
        return;
    event_add(&s->read_ev, NULL);
    s->reading = true;
    update_active(s);
}

/* Reading begins here (connect, an fd) unless the socket was paused before: as in Node, a
 * client paused before it connected reads nothing until resume(). */
static void begin_reading(nd_socket_t *s)
{
    if (!s->paused)
        s->read_started = true;
    start_reading(s);
}

/* The write event exists once a socket has had to wait for the kernel (or connects);
 * most connections of a server never do. Returns false when out of memory. */
static bool have_wev(nd_socket_t *s)
{
    if (!s->wev)
        s->wev = event_new(s->h.loop->base, s->fd, EV_WRITE | EV_PERSIST, on_writable, s);
    return s->wev != NULL;
}

static void start_writing(nd_socket_t *s)
{
    if (s->writing || s->fd < 0 || s->parked)
        return;
    if (!have_wev(s)) {
        destroy_with(s, -ENOMEM, "write", NULL, -1, NULL);
        return;
    }
    event_add(s->wev, NULL);
    s->writing = true;
    update_active(s);
}

static void stop_writing(nd_socket_t *s)
{
    if (s->writing) {
        event_del(s->wev);
        s->writing = false;
        update_active(s);
    }
}

static void endpoint_set(endpoint_t *ep, const struct sockaddr *sa)
{
    memset(ep, 0, sizeof(*ep));
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        ep->family = 4;
        ep->port = ntohs(in->sin_port);
        memcpy(ep->addr, &in->sin_addr, sizeof(in->sin_addr));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        ep->family = 6;
        ep->port = ntohs(in6->sin6_port);
        memcpy(ep->addr, &in6->sin6_addr, sizeof(in6->sin6_addr));
    }
}

/* As nd__address_from would have made it from the sockaddr. */
static void endpoint_format(const endpoint_t *ep, char *buf, size_t size)
{
    buf[0] = '\0';
    if (ep->family)
        inet_ntop(ep->family == 6 ? AF_INET6 : AF_INET, ep->addr, buf, (socklen_t)size);
}

static addr_text_t *text_of(nd_socket_t *s)
{
    if (!s->text)
        s->text = calloc(1, sizeof(*s->text));
    return s->text;
}

static void cache_local(nd_socket_t *s)
{
    if (s->have_local || s->fd < 0)
        return;
    nd__sockaddr_t sa;
    sa.sa.sa_family = AF_UNSPEC; /* the analyzer does not know getsockname fills it */
    socklen_t len = sizeof(sa);
    if (getsockname(s->fd, &sa.sa, &len) != 0)
        return;
    if (sa.sa.sa_family == AF_UNIX) {
        /* A unix path has no binary form: kept as text (rare enough to allocate). */
        nd_address_t a;
        nd__address_from(&a, &sa.sa, len);
        if (!text_of(s))
            return;
        memcpy(s->text->local, a.address, sizeof(s->text->local));
        memset(&s->local, 0, sizeof(s->local));
    } else {
        endpoint_set(&s->local, &sa.sa);
    }
    s->have_local = true;
}

static void cache_remote(nd_socket_t *s)
{
    if (s->have_remote || s->fd < 0)
        return;
    nd__sockaddr_t sa;
    sa.sa.sa_family = AF_UNSPEC; /* as in cache_local */
    socklen_t len = sizeof(sa);
    if (getpeername(s->fd, &sa.sa, &len) == 0) {
        endpoint_set(&s->remote, &sa.sa);
        s->have_remote = true;
    }
}

static void apply_options(nd_socket_t *s)
{
    if (s->fd < 0 || s->is_unix || !s->opts_set)
        return;
    int v = s->no_delay;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &v, sizeof(v));
    v = s->keep_alive;
    setsockopt(s->fd, SOL_SOCKET, SO_KEEPALIVE, &v, sizeof(v));
    if (s->keep_alive && s->keep_alive_delay_s > 0) {
        int d = (int)s->keep_alive_delay_s;
        setsockopt(s->fd, IPPROTO_TCP, TCP_KEEPIDLE, &d, sizeof(d));
    }
}

/* ------------------------------------------------------------------ lifetime */

static void init_socket(nd_socket_t *s, nd_loop_t *loop)
{
    nd__handle_init(&s->h, loop, ND__SOCKET);
    s->fd = -1;
    s->sp_r = s->sp_w = -1;
    s->opt_readable = s->opt_writable = true;
    TAILQ_INIT(&s->wreqs);
}

static void bind_fd(nd_socket_t *s, int fd)
{
    s->fd = fd;
    event_assign(&s->read_ev, s->h.loop->base, fd, EV_READ | EV_PERSIST, on_readable, s);
    if (s->wev)
        event_assign(s->wev, s->h.loop->base, fd, EV_WRITE | EV_PERSIST, on_writable, s);
}

static void complete_wreqs(nd_socket_t *s, int err)
{
    wreq_t *w;
    bool any = false;
    TAILQ_FOREACH(w, &s->wreqs, link) {
        if (!w->done && (err || flushed(s) >= w->mark)) {
            w->done = true;
            w->err = err;
            any = true;
        } else if (!w->done) {
            break;
        }
    }
    if (any)
        nd__handle_pend(&s->h, PK_WRITECB);
}

static void unpipe_both(nd_socket_t *s)
{
    if (s->pipe_dst) {
        if (s->pipe_dst->pipe_src == s)
            s->pipe_dst->pipe_src = NULL;
        s->pipe_dst = NULL;
    }
    if (s->pipe_src) {
        if (s->pipe_src->pipe_dst == s)
            s->pipe_src->pipe_dst = NULL;
        s->pipe_src = NULL;
    }
}

/* Output waiting in the splice pipe is dropped with the pipe (as destroy drops `out`);
 * the socket stops counting as one the loop keeps pipes for. */
static void drop_splice_pipe(nd_socket_t *s)
{
    if (s->sp_r >= 0) {
        close(s->sp_r);
        close(s->sp_w);
        s->sp_r = s->sp_w = -1;
    }
    s->sp_len = 0;
    if (s->spliced) {
        s->spliced = false;
        nd__loop_splicer_gone(s->h.loop);
    }
}

/* Stops all I/O and releases the descriptor; 'close' follows on a later turn. */
static void teardown(nd_socket_t *s)
{
    if (is_destroyed(s))
        return;
    if (s->dial && s->dial->resolve) {
        nd__resolve_cancel(s->dial->resolve);
        s->dial->resolve = NULL;
    }
    stop_reading(s);
    stop_writing(s);
    disarm_timer(s);
    if (s->fd >= 0) {
        cache_local(s);
        cache_remote(s);
        close(s->fd);
        s->fd = -1;
    }
    if (s->out)
        evbuffer_drain(s->out, evbuffer_get_length(s->out));
    drop_splice_pipe(s);
    /* Unread input stays until 'close': a 'data' listener still running may be reading it. */
    complete_wreqs(s, ND_ECLOSED);
    unpipe_both(s);
    nd__handle_unpend(&s->h, PK_CONNECT | PK_DRAIN | PK_FLOW);
    s->state = SK_CLOSED;
    if (s->in_count) {
        /* Node lowers the server's count inside destroy(), not at 'close'. */
        s->in_count = false;
        nd__server_connection_destroyed(s->server);
    }
    nd__handle_pend(&s->h, PK_CLOSE);
    update_active(s);
}

/*
 * Queues an 'error'. A gated one (the failure of the connection, or a write on a closed
 * socket) is reported at most once per connection, as v0.10's errorEmitted; the others (a
 * write refused after end() or the peer's FIN) each time, as v0.10's writeAfterEnd and
 * writeAfterFIN do. message, when not NULL, replaces the "syscall CODE address" text.
 */
static void queue_error(nd_socket_t *s, bool gated, int code, const char *syscall,
                        const char *address, int port, const char *hostname, const char *message)
{
    if (s->closed_done)
        return; /* 'close' is the last event of a connection */
    if (gated) {
        if (s->error_gate)
            return;
        s->error_gate = true;
    }
    size_t text = (address ? strlen(address) + 1 : 0) + (hostname ? strlen(hostname) + 1 : 0) +
                  (message ? strlen(message) + 1 : 0);
    err_node_t *e = malloc(sizeof(*e) + text);
    if (!e) {
        s->error_nomem = true;
    } else {
        char *at = e->text;
        e->code = code;
        e->port = port;
        e->syscall = syscall;
        e->address = err_text(&at, address);
        e->hostname = err_text(&at, hostname);
        e->message = err_text(&at, message);
        e->next = NULL;
        err_node_t **tail = &s->errq;
        while (*tail)
            tail = &(*tail)->next;
        *tail = e;
    }
    nd__handle_pend(&s->h, PK_ERROR);
}

static void set_error(nd_socket_t *s, int code, const char *syscall, const char *address, int port,
                      const char *hostname)
{
    queue_error(s, true, code, syscall, address, port, hostname, NULL);
}

/* A fatal error: 'error' then 'close' with had_error 1. Later failures of the same
 * connection are not reported. */
static void destroy_with(nd_socket_t *s, int code, const char *syscall, const char *address,
                         int port, const char *hostname)
{
    if (is_destroyed(s))
        return;
    s->had_error = true;
    set_error(s, code, syscall, address, port, hostname);
    teardown(s);
}

static void free_errors(nd_socket_t *s)
{
    err_node_t *e;
    while ((e = s->errq) != NULL) {
        s->errq = e->next;
        free(e);
    }
    s->error_nomem = false;
}

static void unpair(nd_socket_t *s)
{
    if (s->pair) {
        if (s->pair->pair == s)
            s->pair->pair = NULL;
        s->pair = NULL;
    }
}

void nd__socket_free(nd_socket_t *s)
{
    unpair(s);
    if (s->dial && s->dial->resolve)
        nd__resolve_cancel(s->dial->resolve);
    free(s->dial);
    if (s->reading)
        event_del(&s->read_ev);
    if (s->wev)
        event_free(s->wev); /* deletes it first if pending */
    if (s->timer_ev)
        event_free(s->timer_ev);
    if (s->fd >= 0)
        close(s->fd);
    drop_splice_pipe(s);
    if (s->out)
        evbuffer_free(s->out);
    if (s->in)
        evbuffer_free(s->in);
    wreq_t *w;
    while ((w = TAILQ_FIRST(&s->wreqs)) != NULL) {
        TAILQ_REMOVE(&s->wreqs, w, link);
        free(w);
    }
    unpipe_both(s);
    if (s->decoding) {
        nd__strbuf_free(&s->decoding->text);
        free(s->decoding);
    }
    free(s->text);
    free_errors(s);
    nd__handle_fini(&s->h);
    free(s);
}

/* ------------------------------------------------------------------ construction */

ND_EXPORT void nd_socket_options_init(nd_socket_options_t *o)
{
    /* v0.10's code (and Node since): an fd socket is readable and writable unless told
     * otherwise (`options.readable !== false`); its docs said false. */
    if (o)
        *o = (nd_socket_options_t){.fd = -1, .readable = 1, .writable = 1};
}

ND_EXPORT nd_socket_t *nd_socket_new(nd_loop_t *loop, const nd_socket_options_t *opts)
{
    if (!loop) {
        errno = EINVAL;
        return NULL;
    }
    int fd = opts ? opts->fd : -1;
    int type = 0;
    socklen_t tl = sizeof(type);
    if (fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0)
        return NULL; /* errno: ENOTSOCK or EBADF */
    nd_socket_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL; /* errno: ENOMEM */
    init_socket(s, loop);
    s->allow_half_open = opts && opts->allow_half_open;
    if (fd >= 0) {
        nd__set_nonblock_cloexec(fd);
        bind_fd(s, fd);
        nd__sockaddr_t sa;
        socklen_t len = sizeof(sa);
        s->is_unix = getsockname(fd, &sa.sa, &len) == 0 && sa.sa.sa_family == AF_UNIX;
        s->opt_readable = opts->readable;
        s->opt_writable = opts->writable;
        s->state = SK_OPEN;
        begin_reading(s);
    }
    return s;
}

nd_socket_t *nd__socket_accepted(nd_server_t *srv, int fd, bool allow_half_open,
                                 const struct sockaddr *peer, socklen_t peerlen)
{
    nd_socket_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    init_socket(s, nd_server_loop(srv));
    s->allow_half_open = allow_half_open;
    s->server = srv;
    s->in_count = true; /* the server counts it from here */
    s->state = SK_OPEN;
    bind_fd(s, fd);
    s->is_unix = peer->sa_family == AF_UNIX;
    if (!s->is_unix) {
        endpoint_set(&s->remote, peer);
        s->have_remote = true;
    }
    return s;
}

void nd__socket_start(nd_socket_t *s)
{
    /* An accepted socket reads at once, as Node's does (before the 'connection' listener's
     * pause() could matter): a pause there keeps the input in its buffer. */
    touch(s);
    s->read_started = true;
    start_reading(s);
}

/* ------------------------------------------------------------------ connect */

static void on_connected(nd_socket_t *s)
{
    s->state = SK_OPEN;
    cache_local(s);
    cache_remote(s);
    apply_options(s);
    touch(s);
    nd_event_t ev = {.type = ND_EV_CONNECT};
    nd__emit(&s->h.em, s, &ev);
    if (s->state != SK_OPEN)
        return;
    begin_reading(s);
    if (queued(s) > 0 || (s->ending && !s->fin_sent))
        flush(s); /* writes queued while connecting, then the FIN of an early end() */
    update_active(s);
}

static void connect_addr(nd_socket_t *s, const nd__sockaddr_t *sa, socklen_t len,
                         const char *address, int port)
{
    int fd = socket(sa->sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        destroy_with(s, -errno, "connect", address, port, NULL);
        return;
    }
    bind_fd(s, fd);
    s->state = SK_CONNECTING;
    dial_t *dl = s->dial;
    if (!s->is_unix)
        snprintf(dl->target, sizeof(dl->target), "%s", address);
    if (dl->local_address[0] || dl->local_port) {
        nd__sockaddr_t la;
        const char *lip = dl->local_address[0]           ? dl->local_address
                          : sa->sa.sa_family == AF_INET6 ? "::"
                                                         : "0.0.0.0";
        socklen_t llen = nd__sockaddr_ip(&la, lip, dl->local_port,
                                         sa->sa.sa_family == AF_INET6 ? 6 : 4);
        if (!llen) {
            destroy_with(s, -EINVAL, "bind", lip, dl->local_port, NULL);
            return;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, &la.sa, llen) != 0) {
            destroy_with(s, -errno, "bind", lip, dl->local_port, NULL);
            return;
        }
    }
    if (connect(fd, &sa->sa, len) == 0) {
        nd__handle_pend(&s->h, PK_CONNECT); /* 'connect' is never emitted from connect() */
    } else if (errno == EINPROGRESS || (errno == EAGAIN && sa->sa.sa_family != AF_UNIX)) {
        /* A unix connect never goes on in the background: EAGAIN there means the
         * listener's backlog is full, and it is reported as the failure it is. */
        start_writing(s);
    } else {
        destroy_with(s, -errno, "connect", address, port, NULL);
        return;
    }
    update_active(s);
}

static void on_resolved(void *arg, int err, const char *ip, int family)
{
    nd_socket_t *s = arg;
    dial_t *dl = s->dial;
    dl->resolve = NULL;
    nd__handle_retain(&s->h);
    /* Node looks up names only: an IP literal connects without a 'lookup' event. A failed
     * lookup names the host and leaves the port unset, as Node does. */
    if (!nd_is_ip(dl->name)) {
        nd__error_store_t *lerr = NULL;
        nd_error_t bare = {.code = err, .name = nd_err_name(err), .port = -1};
        if (err && nd__error_set(&lerr, err, "getaddrinfo", NULL, -1, dl->name) != 0)
            bare.message = bare.name;
        nd_event_t ev = {.type = ND_EV_LOOKUP,
                         .error = err ? (lerr ? &lerr->err : &bare) : NULL,
                         .address = ip,
                         .family = err ? 0 : family};
        nd__emit(&s->h.em, s, &ev);
        free(lerr);
    }
    if (s->state == SK_RESOLVING) {
        if (err) {
            destroy_with(s, err, "getaddrinfo", NULL, -1, dl->name);
        } else {
            nd__sockaddr_t sa;
            socklen_t len = nd__sockaddr_ip(&sa, ip, dl->port, family);
            if (len)
                connect_addr(s, &sa, len, ip, dl->port);
            else
                destroy_with(s, -EINVAL, "connect", ip, dl->port, NULL);
        }
    }
    nd__handle_release(&s->h);
}

static void reset_connection(nd_socket_t *s)
{
    /* A socket reused through connect() starts a new connection: fresh counters. */
    if (!s->h.owned) {
        s->h.owned = true;
        nd__handle_retain(&s->h);
    }
    s->bytes_read = s->bytes_written = 0;
    s->fin_rcvd = s->eof = s->peer_ended = s->ending = s->fin_sent = false;
    s->need_drain = s->had_error = s->error_gate = s->closed_done = false;
    s->read_started = s->in_count = false;
    free_errors(s);
    if (s->in)
        evbuffer_drain(s->in, evbuffer_get_length(s->in));
    s->have_local = s->have_remote = false;
    s->opt_readable = s->opt_writable = true;
    s->server = NULL;
    memset(&s->local, 0, sizeof(s->local));
    memset(&s->remote, 0, sizeof(s->remote));
    if (s->decoding)
        nd__decoder_init(&s->decoding->dec, s->decoding->dec.enc);
}

ND_EXPORT int nd_socket_connect(nd_socket_t *s, const nd_connect_options_t *o)
{
    if (!s || !o)
        return -EINVAL;
    if (!o->path && (o->port < 0 || o->port > 65535))
        return -EINVAL;
    if (o->path && (!*o->path || strlen(o->path) >= sizeof(((addr_text_t *)0)->local)))
        return o->path && *o->path ? -ENAMETOOLONG : -EINVAL;
    if (!o->path && o->local_address && *o->local_address && !nd_is_ip(o->local_address))
        return -EINVAL; /* v0.10: "localAddress should be a valid IP" */
    if (!o->path && (o->local_port < 0 || o->local_port > 65535))
        return -EINVAL;
    if (o->family != 0 && o->family != 4 && o->family != 6)
        return -EINVAL;
    if (o->host && strlen(o->host) >= ND__HOST_MAX)
        return -EINVAL;
    if (s->state == SK_CLOSED && !s->closed_done)
        return ND_ECLOSED;
    if (s->state != SK_NEW && s->state != SK_CLOSED)
        return ND_ECONNECTING;
    const char *name = o->path ? o->path : o->host && *o->host ? o->host : "localhost";
    dial_t *dl = calloc(1, sizeof(*dl) + strlen(name) + 1);
    if (!dl)
        return -ENOMEM;
    reset_connection(s);
    free(s->dial);
    s->dial = dl;
    s->allow_half_open = s->allow_half_open || o->allow_half_open;
    dl->port = o->port;
    dl->family = o->family; /* 0: any family, as v0.10's dns.lookup */
    dl->local_port = o->local_port;
    snprintf(dl->local_address, sizeof(dl->local_address), "%s",
             o->local_address ? o->local_address : "");
    memcpy(dl->name, name, strlen(name) + 1);
    if (o->path) {
        s->is_unix = true;
        nd__sockaddr_t sa;
        int len = nd__sockaddr_unix(&sa, dl->name);
        s->state = SK_CONNECTING;
        connect_addr(s, &sa, (socklen_t)len, dl->name, -1);
        return 0;
    }
    s->is_unix = false;
    s->state = SK_RESOLVING;
    dl->resolve = nd__resolve_start(s->h.loop, dl->name, dl->family, on_resolved, s);
    if (!dl->resolve) {
        s->state = SK_NEW;
        return -ENOMEM;
    }
    update_active(s);
    return 0;
}

ND_EXPORT nd_socket_t *nd_connect(nd_loop_t *loop, const nd_connect_options_t *opts,
                                  nd_listener_fn on_connect, void *arg)
{
    nd_socket_t *s = nd_socket_new(loop, NULL);
    if (!s)
        return NULL; /* errno: EINVAL or ENOMEM */
    int rc = on_connect ? nd_socket_once(s, ND_EV_CONNECT, on_connect, arg) : 0;
    if (rc == 0)
        rc = nd_socket_connect(s, opts);
    if (rc != 0) {
        nd__handle_release(&s->h);
        errno = rc < 0 && rc > ND__ERRNO_MIN ? -rc : EINVAL;
        return NULL;
    }
    return s;
}

/* ------------------------------------------------------------------ reading */

static bool decodes(const nd_socket_t *s)
{
    return s->decoding && s->decoding->dec.enc != ND_ENC_NONE;
}

static void emit_data(nd_socket_t *s, const char *data, size_t len)
{
    if (decodes(s)) {
        nd__strbuf_t *text = &s->decoding->text;
        text->len = 0;
        if (nd__decoder_write(&s->decoding->dec, (const unsigned char *)data, len, text) != 0) {
            destroy_with(s, -ENOMEM, "read", NULL, -1, NULL);
            return;
        }
        if (text->len == 0)
            return;
        data = text->ptr;
        len = text->len;
    }
    nd_event_t ev = {.type = ND_EV_DATA, .data = data, .len = len};
    nd__emit(&s->h.em, s, &ev);
    nd_socket_t *dst = s->pipe_dst;
    if (dst && !is_destroyed(s) && nd_socket_write(dst, data, len, NULL, NULL) == 0 &&
        s->pipe_dst == dst && !is_destroyed(dst) && queued(dst) > dst->high_water_mark) {
        /* Backpressure: hold the source until the destination drains. */
        nd_socket_pause(s);
        s->pipe_paused = true;
    }
}

static bool both_ends_done(const nd_socket_t *s)
{
    return s->state == SK_OPEN && s->fin_sent && (s->eof || !s->opt_readable);
}

/* Both directions are done: the connection ends cleanly, one turn after 'finish' (at
 * 'end' and the turn after it, the socket is not yet destroyed). */
static void schedule_autoclose(nd_socket_t *s)
{
    if (both_ends_done(s) && !(s->h.pending & PK_FINISH))
        nd__handle_pend(&s->h, PK_AUTOCLOSE);
}

/* The peer's FIN, once every byte before it was delivered: 'end', then our side ends
 * unless allowHalfOpen. */
static void emit_end(nd_socket_t *s)
{
    s->eof = true;
    if (!s->allow_half_open)
        s->peer_ended = true;
    if (decodes(s) && s->decoding->dec.npartial) {
        nd__strbuf_t *text = &s->decoding->text;
        text->len = 0;
        if (nd__decoder_end(&s->decoding->dec, text) == 0 && text->len) {
            nd_event_t dev = {.type = ND_EV_DATA, .data = text->ptr, .len = text->len};
            nd__emit(&s->h.em, s, &dev);
            if (is_destroyed(s))
                return;
        }
    }
    nd_event_t ev = {.type = ND_EV_END};
    nd__emit(&s->h.em, s, &ev);
    if (is_destroyed(s))
        return;
    nd_socket_t *dst = s->pipe_dst;
    if (dst && s->pipe_end) /* also pipe(s, s): an echo ends when its input ends */
        nd_socket_end(dst, NULL, 0);
    if (is_destroyed(s))
        return;
    if (!s->allow_half_open)
        nd_socket_end(s, NULL, 0);
    schedule_autoclose(s);
}

/* 'end' comes only after the buffered input was delivered (Node: test-net-socket-close-
 * after-end); with nothing buffered it comes at once, whether anyone reads or not. */
static void maybe_end(nd_socket_t *s)
{
    if (s->fin_rcvd && !s->eof && buffered(s) == 0 && !s->moving && !is_destroyed(s))
        emit_end(s);
}

/* Emits buffered input while the socket flows, one 'data' per chunk, then a held-back
 * 'end'. A listener may pause, move or destroy the socket at any chunk. */
static void deliver(nd_socket_t *s)
{
    while (flowing_now(s) && !s->moving && !s->parked && !is_destroyed(s) && buffered(s) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(s->in, -1, NULL, &v, 1) < 1)
            break;
        emit_data(s, v.iov_base, v.iov_len);
        if (is_destroyed(s))
            return; /* the input goes at 'close'; later listeners of this 'data' read it */
        evbuffer_drain(s->in, v.iov_len);
    }
    maybe_end(s);
    start_reading(s);
}

/* Keeps input nobody consumes yet. Returns 0, or -ENOMEM (the socket is destroyed). */
static int buffer_input(nd_socket_t *s, const char *data, size_t len)
{
    if ((!s->in && !(s->in = evbuffer_new())) || evbuffer_add(s->in, data, len) != 0) {
        destroy_with(s, -ENOMEM, "read", NULL, -1, NULL);
        return -ENOMEM;
    }
    return 0;
}

/* ------------------------------------------------------------------ splice */

/*
 * The bulk path of a pipe: bytes go from the source's descriptor into a kernel pipe and from
 * there into the destination's descriptor (splice(2)), never through user memory. It is
 * taken only where nothing in user space needs to see the bytes: the source has no 'data'
 * listener and decodes nothing, no input waits in its buffer, and the destination is open
 * with nothing in its own output buffer (so the bytes keep their order). The pipe belongs
 * to the destination while it holds bytes: they are its queued output (bufferSize,
 * backpressure against its high-water mark, 'drain', the FIN after them) exactly as if
 * write() had queued them, and they go with it when it moves or are dropped when it is
 * destroyed. Anything else falls back to reading into the loop's buffer.
 */
static bool can_splice(const nd_socket_t *s, const nd_socket_t *dst)
{
    return dst && s->bulk && !decodes(s) && !nd__emitter_has(&s->h.em, ND_EV_DATA) &&
           buffered(s) == 0 && dst->state == SK_OPEN && dst->fd >= 0 && !dst->ending &&
           !dst->peer_ended && dst->opt_writable && !dst->moving &&
           (!dst->out || evbuffer_get_length(dst->out) == 0);
}

/* Moves what the pipe holds into the descriptor, as far as the kernel takes it; an emptied
 * pipe goes back to the loop's pool. The caller completes the flush (flush()). */
static void splice_out(nd_socket_t *s)
{
    while (s->sp_len > 0) {
        ssize_t w = splice(s->sp_r, NULL, s->fd, NULL, s->sp_len,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (w > 0) {
            s->sp_len -= (uint32_t)w;
            ND__STAT_ADD(s->h.loop->stats.bytes_written, (uint64_t)w);
            ND__STAT_ADD(s->h.loop->stats.bytes_spliced, (uint64_t)w);
            touch(s);
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            destroy_with(s, -errno, "write", NULL, -1, NULL);
            return;
        }
        break;
    }
    if (s->sp_len == 0 && s->sp_r >= 0) {
        nd__loop_pipe_put(s->h.loop, s->sp_r, s->sp_w);
        s->sp_r = s->sp_w = -1;
    }
}

enum splice_result { SP_AGAIN, SP_DONE, SP_RECV };

/* One read of src spliced into dst. SP_AGAIN: read again; SP_DONE: stop for now;
 * SP_RECV: read this one with recv() instead (EOF, a full pipe, no pipe to be had, a
 * descriptor that cannot splice). */
static enum splice_result splice_step(nd_socket_t *s, nd_socket_t *dst)
{
    if (dst->sp_r < 0 && nd__loop_pipe_get(s->h.loop, &dst->sp_r, &dst->sp_w) != 0) {
        s->bulk = false; /* no descriptors for a pipe: the buffered path still works */
        return SP_RECV;
    }
    if (!dst->spliced) {
        dst->spliced = true;
        s->h.loop->splicers++;
    }
    /* One read's worth, as recv() would take: past the high-water mark the destination
     * queues at most one read more before the source pauses. */
    ssize_t n = splice(s->fd, NULL, dst->sp_w, NULL, ND__READ_CHUNK,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n <= 0) {
        int e = n < 0 ? errno : 0;
        if (dst->sp_len == 0) {
            nd__loop_pipe_put(s->h.loop, dst->sp_r, dst->sp_w);
            dst->sp_r = dst->sp_w = -1;
        }
        if (n < 0 && (e == EAGAIN || e == EWOULDBLOCK) && dst->sp_len == 0)
            return SP_DONE; /* nothing to read */
        if (n < 0 && e == EINTR)
            return SP_AGAIN;
        if (n < 0 && e != EAGAIN && e != EWOULDBLOCK)
            s->bulk = false; /* e.g. EINVAL: this descriptor does not splice */
        return SP_RECV;      /* EOF, an error, or the pipe is full: recv tells which */
    }
    s->bytes_read += (uint64_t)n;
    ND__STAT_ADD(s->h.loop->stats.bytes_read, (uint64_t)n);
    touch(s);
    dst->bytes_written += (uint64_t)n;
    dst->sp_len += (uint32_t)n;
    if (n < ND__SPLICE_MIN / 4)
        s->bulk = false; /* small reads again: copying is cheaper */
    flush(dst);
    if (is_destroyed(s))
        return SP_DONE;
    if (!is_destroyed(dst) && queued(dst) > 0) {
        /* As a write() that returned 0: 'drain' comes when the queue empties, and the
         * source waits past the destination's high-water mark. */
        dst->need_drain = true;
        if (queued(dst) > dst->high_water_mark) {
            nd_socket_pause(s);
            s->pipe_paused = true;
            return SP_DONE;
        }
    }
    return (size_t)n < ND__READ_CHUNK ? SP_DONE : SP_AGAIN;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    nd_socket_t *s = arg;
    nd_loop_t *loop = s->h.loop;
    char *buf = (char *)loop->scratch;
    nd__loop_awake(loop);
    /* libevent's cached clock is the same for every callback of this wake: read it once
     * here for every read and write (an echo's too) this callback touches. */
    loop->io_now_us = now_us(loop);
    nd__handle_retain(&s->h);
    for (int i = 0; i < ND__READS_PER_WAKE && s->reading; i++) {
        if (s->bulk && flowing_now(s) && can_splice(s, s->pipe_dst)) {
            enum splice_result r = splice_step(s, s->pipe_dst);
            if (r == SP_AGAIN)
                continue;
            if (r == SP_DONE)
                break;
        }
        /* The common case emits straight from the loop's read buffer: no copy. Otherwise the
         * bytes queue behind what waits already, and a socket that does not flow reads no
         * more than ND__READ_HWM ahead. */
        size_t have = buffered(s);
        bool direct = flowing_now(s) && have == 0;
        size_t room = ND__READ_CHUNK;
        if (!flowing_now(s))
            room = have >= ND__READ_HWM ? 0 : ND__READ_HWM - have;
        if (room == 0) {
            stop_reading(s);
            break;
        }
        ssize_t n = recv(s->fd, buf, room, 0);
        if (n > 0) {
            s->bytes_read += (uint64_t)n;
            ND__STAT_ADD(s->h.loop->stats.bytes_read, (uint64_t)n);
            touch(s);
            /* A large read: if this socket is piped, the next ones may splice. */
            s->bulk = (size_t)n >= ND__SPLICE_MIN;
            if (direct)
                emit_data(s, buf, (size_t)n);
            else if (buffer_input(s, buf, (size_t)n) == 0)
                deliver(s);
            start_reading(s); /* stops once the buffer is full and nobody reads */
            if ((size_t)n < room)
                break;
        } else if (n == 0) {
            s->fin_rcvd = true;
            stop_reading(s);
            maybe_end(s);
            break;
        } else {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                destroy_with(s, -errno, "read", NULL, -1, NULL);
            break;
        }
    }
    nd__handle_release(&s->h); /* may free s, never the loop */
    loop->io_now_us = 0;
}

/* ------------------------------------------------------------------ writing */

static void send_fin(nd_socket_t *s)
{
    if (s->fin_sent || s->fd < 0)
        return;
    s->fin_sent = true;
    shutdown(s->fd, SHUT_WR);
    nd__handle_pend(&s->h, PK_FINISH);
}

/* Writes as much of the queue as the kernel takes: the splice pipe first, then the buffer
 * with one sendmsg of many chains. */
static void flush(nd_socket_t *s)
{
    if (s->sp_len > 0) {
        splice_out(s);
        if (is_destroyed(s))
            return;
    }
    while (s->sp_len == 0 && queued(s) > 0) {
        struct evbuffer_iovec v[64];
        struct iovec iov[64];
        int n = evbuffer_peek(s->out, -1, NULL, v, 64);
        if (n > 64)
            n = 64;
        for (int i = 0; i < n; i++) {
            iov[i].iov_base = v[i].iov_base;
            iov[i].iov_len = v[i].iov_len;
        }
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(s->fd, &msg, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            destroy_with(s, -errno, "write", NULL, -1, NULL);
            return;
        }
        evbuffer_drain(s->out, (size_t)w);
        ND__STAT_ADD(s->h.loop->stats.bytes_written, (uint64_t)w);
        touch(s);
        if (n < 64 && queued(s) > 0)
            break; /* the kernel took less than offered: wait for writability */
    }
    complete_wreqs(s, 0);
    if (queued(s) > 0) {
        start_writing(s);
        return;
    }
    stop_writing(s);
    if (s->need_drain) {
        s->need_drain = false;
        nd__handle_pend(&s->h, PK_DRAIN);
    }
    if (s->ending)
        send_fin(s);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    nd_socket_t *s = arg;
    nd__loop_awake(s->h.loop);
    nd__handle_retain(&s->h);
    if (s->state == SK_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err == EINPROGRESS) {
            nd__handle_release(&s->h);
            return;
        }
        stop_writing(s);
        if (err) {
            dial_t *dl = s->dial;
            destroy_with(s, -err, "connect", s->is_unix ? dl->name : dl->target,
                         s->is_unix ? -1 : dl->port, NULL);
        } else {
            on_connected(s);
        }
    } else if (s->state == SK_OPEN) {
        flush(s);
    }
    nd__handle_release(&s->h);
}

enum write_failure {
    WF_FATAL,   /* the connection fails: 'error', then 'close' with had_error 1 */
    WF_CLOSED,  /* a write on a destroyed socket: one 'error' per connection */
    WF_REFUSED, /* after end() or the peer's FIN: reported every time, the socket goes on */
};

static int fail_write(nd_socket_t *s, int code, nd_write_cb cb, void *arg, enum write_failure how)
{
    if (cb) {
        wreq_t *w = calloc(1, sizeof(*w));
        if (w) {
            w->cb = cb;
            w->arg = arg;
            w->err = code;
            w->done = true;
            TAILQ_INSERT_TAIL(&s->wreqs, w, link);
            nd__handle_pend(&s->h, PK_WRITECB);
        }
    }
    if (how == WF_FATAL)
        destroy_with(s, code, "write", NULL, -1, NULL);
    else if (how == WF_CLOSED)
        set_error(s, code, "write", NULL, -1, NULL);
    else if (code == -EPIPE) /* v0.10's writeAfterFIN: code EPIPE, no syscall */
        queue_error(s, false, code, NULL, NULL, -1, NULL,
                    "This socket has been ended by the other party");
    else
        queue_error(s, false, code, "write", NULL, -1, NULL, NULL);
    return code;
}

ND_EXPORT int nd_socket_write(nd_socket_t *s, const void *data, size_t len, nd_write_cb cb,
                              void *arg)
{
    if (!s || (!data && len))
        return -EINVAL;
    if (s->parked)
        return -EBUSY;   /* its state is on its way to another process: nothing may change */
    if (is_destroyed(s)) /* v0.10: "This socket is closed", once per connection */
        return fail_write(s, ND_ECLOSED, cb, arg, WF_CLOSED);
    if (!s->opt_writable || s->state == SK_NEW) /* v0.10: "This socket is closed" */
        return fail_write(s, ND_ECLOSED, cb, arg, WF_FATAL);
    if (s->ending)
        return fail_write(s, ND_EWRITEAFTEREND, cb, arg, WF_REFUSED);
    if (s->peer_ended)
        return fail_write(s, -EPIPE, cb, arg, WF_REFUSED);

    s->bytes_written += len;
    size_t done = 0;
    if (s->state == SK_OPEN && queued(s) == 0 && len > 0) {
        ssize_t n = send(s->fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                int e = -errno;
                return fail_write(s, e, cb, arg, WF_FATAL); /* e.g. ECONNRESET after a RST */
            }
            n = 0;
        }
        done = (size_t)n;
        ND__STAT_ADD(s->h.loop->stats.bytes_written, done);
        if (done)
            touch(s);
    }
    if (done < len) {
        if (!s->out && !(s->out = evbuffer_new()))
            return fail_write(s, -ENOMEM, cb, arg, WF_FATAL);
        evbuffer_add(s->out, (const char *)data + done, len - done);
    }
    if (cb) {
        wreq_t *w = calloc(1, sizeof(*w));
        if (!w)
            return fail_write(s, -ENOMEM, NULL, NULL, WF_FATAL);
        w->cb = cb;
        w->arg = arg;
        w->mark = s->bytes_written;
        TAILQ_INSERT_TAIL(&s->wreqs, w, link);
        if (s->state == SK_OPEN && queued(s) == 0)
            complete_wreqs(s, 0);
    }
    if (queued(s) == 0 && s->state == SK_OPEN)
        return 1;
    if (s->state == SK_OPEN) {
        start_writing(s);
    } else if (queued(s) < ND__WRITE_HWM) {
        /* Connecting: Node's write() returns true below its buffer limit (16 KiB). */
        update_active(s);
        return 1;
    }
    s->need_drain = true;
    update_active(s);
    return 0;
}

ND_EXPORT int nd_socket_write_string(nd_socket_t *s, const char *str, const char *encoding,
                                     nd_write_cb cb, void *arg)
{
    if (!s || !str)
        return -EINVAL;
    int enc = nd__encoding_parse(encoding);
    if (enc < 0)
        return enc;
    if (enc == ND_ENC_UTF8)
        return nd_socket_write(s, str, strlen(str), cb, arg);
    nd__strbuf_t b = {0};
    if (nd__encode((nd__encoding_t)enc, str, strlen(str), &b) != 0) {
        nd__strbuf_free(&b);
        return -ENOMEM;
    }
    int rc = nd_socket_write(s, b.ptr ? b.ptr : "", b.len, cb, arg);
    nd__strbuf_free(&b);
    return rc;
}

ND_EXPORT int nd_socket_end(nd_socket_t *s, const void *data, size_t len)
{
    if (!s)
        return -EINVAL;
    if (s->state == SK_NEW || is_destroyed(s))
        return 0; /* v0.10: end() on a socket that never connected does nothing */
    int rc = 0;
    if (data && len)
        rc = nd_socket_write(s, data, len, NULL, NULL); /* after end(): EWRITEAFTEREND */
    if (s->ending || is_destroyed(s))
        return rc < 0 ? rc : 0;
    s->ending = true;
    if (s->state == SK_OPEN && queued(s) == 0)
        send_fin(s);
    return rc < 0 ? rc : 0;
}

ND_EXPORT void nd_socket_destroy(nd_socket_t *s)
{
    if (s)
        teardown(s);
}

/* ------------------------------------------------------------------ deferred events */

static void emit_simple(nd_socket_t *s, nd_event_type_t type)
{
    nd_event_t ev = {.type = type};
    nd__emit(&s->h.em, s, &ev);
}

void nd__socket_process(nd_socket_t *s, uint32_t bits)
{
    if ((bits & PK_CONNECT) && s->state == SK_CONNECTING) {
        stop_writing(s);
        on_connected(s);
    }
    if ((bits & PK_FLOW) && !is_destroyed(s))
        deliver(s);
    /* 'error' comes before the write callbacks it failed (v0.10 and libuv order). Errors
     * queued by these listeners wait for the next turn. */
    if (bits & PK_ERROR) {
        err_node_t *list = s->errq;
        bool nomem = s->error_nomem;
        s->errq = NULL;
        s->error_nomem = false;
        while (list) {
            err_node_t *e = list;
            list = e->next;
            if (!s->closed_done) {
                nd__error_store_t store, *st = &store;
                nd__error_set(&st, e->code, e->syscall, e->address, e->port, e->hostname);
                if (e->message)
                    nd__error_set_message(st, e->message);
                nd_event_t ev = {.type = ND_EV_ERROR, .error = &st->err};
                nd__emit(&s->h.em, s, &ev);
            }
            free(e);
        }
        if (nomem && !s->closed_done) {
            nd_error_t bare = {.code = -ENOMEM, .name = "ENOMEM", .port = -1, .message = "ENOMEM"};
            nd_event_t ev = {.type = ND_EV_ERROR, .error = &bare};
            nd__emit(&s->h.em, s, &ev);
        }
    }
    if (bits & PK_WRITECB) {
        wreq_t *w;
        while ((w = TAILQ_FIRST(&s->wreqs)) != NULL && w->done) {
            TAILQ_REMOVE(&s->wreqs, w, link);
            w->cb(s, w->err, w->arg);
            free(w);
        }
    }
    if ((bits & PK_DRAIN) && !is_destroyed(s)) {
        if (!s->ending) /* after end() only 'finish' comes (v0.10 and Node) */
            emit_simple(s, ND_EV_DRAIN);
        nd_socket_t *src = s->pipe_src;
        if (src && src->pipe_paused && !is_destroyed(src)) {
            src->pipe_paused = false;
            nd_socket_resume(src);
        }
    }
    if (bits & PK_FINISH) {
        emit_simple(s, ND_EV_FINISH);
        schedule_autoclose(s);
    }
    if ((bits & PK_AUTOCLOSE) && both_ends_done(s))
        teardown(s);
    if ((bits & PK_CLOSE) && is_destroyed(s) && !s->closed_done) {
        s->closed_done = true;
        if (s->in)
            evbuffer_drain(s->in, evbuffer_get_length(s->in));
        /* The server stays until this 'close' has run (its own 'close' comes after). */
        nd_server_t *srv = s->server;
        /* From its 'close' on the other half may move alone: a move asked now leaves on
         * a later turn, after every listener of this last event has run. */
        unpair(s);
        nd_event_t ev = {.type = ND_EV_CLOSE, .had_error = s->had_error};
        nd__emit(&s->h.em, s, &ev);
        if (srv) {
            if (s->server == srv)
                s->server = NULL;
            nd__server_connection_closed(srv);
        }
        if (s->state == SK_CLOSED && s->h.owned) {
            s->h.owned = false;
            nd__handle_release(&s->h);
        }
    }
}

/* ------------------------------------------------------------------ flow control */

/* Buffered input (or a held-back 'end') is delivered on a later turn, as Node's resume()
 * does on the next tick. */
static void schedule_flow(nd_socket_t *s)
{
    if (flowing_now(s) && !is_destroyed(s) && !s->parked &&
        (buffered(s) > 0 || (s->fin_rcvd && !s->eof)))
        nd__handle_pend(&s->h, PK_FLOW);
}

/* A 'data' listener or a pipe: 'data' flows unless the socket was paused. */
static void start_flowing(nd_socket_t *s)
{
    s->flowing = true;
    schedule_flow(s);
    start_reading(s);
}

ND_EXPORT void nd_socket_pause(nd_socket_t *s)
{
    if (!s)
        return;
    /* As in Node, reading goes on into the socket's buffer up to its high-water mark. */
    s->paused = true;
    start_reading(s);
}

ND_EXPORT void nd_socket_resume(nd_socket_t *s)
{
    if (!s)
        return;
    s->paused = false;
    s->pipe_paused = false;
    if (s->state == SK_OPEN)
        s->read_started = true;
    start_flowing(s);
}

ND_EXPORT int nd_socket_is_paused(const nd_socket_t *s)
{
    return s && s->paused;
}

ND_EXPORT int nd_socket_set_encoding(nd_socket_t *s, const char *encoding)
{
    if (!s)
        return -EINVAL;
    if (!encoding) {
        if (s->decoding)
            nd__decoder_init(&s->decoding->dec, ND_ENC_NONE);
        return 0;
    }
    int enc = nd__encoding_parse(encoding);
    if (enc < 0)
        return enc;
    if (!s->decoding && !(s->decoding = calloc(1, sizeof(*s->decoding))))
        return -ENOMEM;
    nd__decoder_init(&s->decoding->dec, (nd__encoding_t)enc);
    return 0;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    nd_socket_t *s = arg;
    s->timer_armed = false;
    if (!s->timeout_ms || is_destroyed(s))
        return;
    uint64_t now = now_us(s->h.loop);
    uint64_t idle_ms = now > s->last_active_us ? (now - s->last_active_us) / 1000 : 0;
    if (idle_ms < s->timeout_ms) {
        /* Activity since the timer was armed: wait for the rest of the idle period. */
        uint64_t rest = s->timeout_ms - idle_ms;
        struct timeval tv = {(time_t)(rest / 1000), (suseconds_t)((rest % 1000) * 1000)};
        evtimer_add(s->timer_ev, &tv);
        s->timer_armed = true;
        return;
    }
    nd__handle_retain(&s->h);
    emit_simple(s, ND_EV_TIMEOUT);
    nd__handle_release(&s->h);
}

ND_EXPORT void nd_socket_set_timeout(nd_socket_t *s, unsigned ms, nd_listener_fn cb, void *arg)
{
    if (!s || is_destroyed(s))
        return;
    if (ms == 0) {
        s->timeout_ms = 0;
        disarm_timer(s);
        if (cb)
            nd_socket_off(s, ND_EV_TIMEOUT, cb, arg);
        return;
    }
    /* The timer exists once a timeout is asked for: most connections never have one. */
    if (!s->timer_ev && !(s->timer_ev = evtimer_new(s->h.loop->base, on_timer, s)))
        return; /* out of memory: no 'timeout' will come */
    if (cb)
        nd_socket_once(s, ND_EV_TIMEOUT, cb, arg);
    s->timeout_ms = ms;
    disarm_timer(s);
    touch(s);
}

ND_EXPORT void nd_socket_set_no_delay(nd_socket_t *s, int no_delay)
{
    if (!s || is_destroyed(s))
        return;
    s->no_delay = no_delay != 0;
    s->opts_set = true;
    if (s->state == SK_OPEN && s->fd >= 0 && !s->is_unix) {
        int v = s->no_delay;
        setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &v, sizeof(v));
    }
}

ND_EXPORT void nd_socket_set_keep_alive(nd_socket_t *s, int enable, unsigned initial_delay_ms)
{
    if (!s || is_destroyed(s))
        return;
    s->keep_alive = enable != 0;
    if (initial_delay_ms / 1000 > 0)
        s->keep_alive_delay_s = initial_delay_ms / 1000 > UINT16_MAX
                                    ? UINT16_MAX
                                    : (uint16_t)(initial_delay_ms / 1000);
    s->opts_set = true;
    if (s->state == SK_OPEN && s->fd >= 0 && !s->is_unix) {
        int v = s->keep_alive;
        setsockopt(s->fd, SOL_SOCKET, SO_KEEPALIVE, &v, sizeof(v));
        if (s->keep_alive && s->keep_alive_delay_s > 0) {
            int d = (int)s->keep_alive_delay_s;
            setsockopt(s->fd, IPPROTO_TCP, TCP_KEEPIDLE, &d, sizeof(d));
        }
    }
}

/* ------------------------------------------------------------------ pipe */

ND_EXPORT int nd_socket_set_high_water_mark(nd_socket_t *s, size_t bytes)
{
    if (!s)
        return -EINVAL;
    s->high_water_mark = bytes > UINT32_MAX ? UINT32_MAX : (uint32_t)bytes;
    return 0;
}

ND_EXPORT int nd_socket_pipe(nd_socket_t *src, nd_socket_t *dst, int end_dst)
{
    if (!src || !dst)
        return -EINVAL;
    if (src->pipe_dst)
        return -EBUSY;
    if (is_destroyed(src) || is_destroyed(dst))
        return ND_ECLOSED;
    src->pipe_dst = dst;
    src->pipe_end = end_dst != 0;
    dst->pipe_src = src;
    if (dst != src && dst->pipe_dst == src) {
        unpair(src);
        unpair(dst);
        src->pair = dst;
        dst->pair = src;
    }
    start_flowing(src); /* unlike Node's pipe(), a paused source stays paused */
    return 0;
}

ND_EXPORT int nd_socket_unpipe(nd_socket_t *src)
{
    if (!src)
        return -EINVAL;
    if (!src->pipe_dst)
        return -ENOENT;
    if (src->pipe_dst->pipe_src == src)
        src->pipe_dst->pipe_src = NULL;
    if (src->pair == src->pipe_dst)
        unpair(src); /* split on purpose: each half may move on its own */
    src->pipe_dst = NULL;
    if (src->pipe_paused) {
        src->pipe_paused = false;
        nd_socket_resume(src);
    }
    return 0;
}

/* ------------------------------------------------------------------ properties */

ND_EXPORT int nd_socket_address(const nd_socket_t *cs, nd_address_t *out)
{
    nd_socket_t *s = (nd_socket_t *)cs;
    if (!s || !out)
        return -EINVAL;
    cache_local(s);
    if (!s->have_local)
        return ND_ENOTCONNECTED;
    memset(out, 0, sizeof(*out));
    if (s->is_unix) {
        if (s->text)
            memcpy(out->address, s->text->local, sizeof(s->text->local));
        if (!out->address[0] && s->dial)
            snprintf(out->address, sizeof(out->address), "%s", s->dial->name);
        return 0;
    }
    endpoint_format(&s->local, out->address, sizeof(out->address));
    out->family = s->local.family;
    out->port = s->local.port;
    return 0;
}

/* The endpoint's text, in storage that lives as long as the socket; NULL when out of
 * memory. */
static const char *endpoint_text(nd_socket_t *s, bool remote)
{
    if (!text_of(s))
        return NULL;
    char *buf = remote ? s->text->remote : s->text->local;
    endpoint_format(remote ? &s->remote : &s->local, buf, sizeof(s->text->remote));
    return buf;
}

ND_EXPORT const char *nd_socket_remote_address(const nd_socket_t *cs)
{
    nd_socket_t *s = (nd_socket_t *)cs;
    if (!s || s->is_unix)
        return NULL;
    if (s->state == SK_OPEN)
        cache_remote(s);
    return s->have_remote ? endpoint_text(s, true) : NULL;
}

ND_EXPORT int nd_socket_remote_port(const nd_socket_t *s)
{
    return nd_socket_remote_address(s) ? s->remote.port : 0;
}

ND_EXPORT const char *nd_socket_remote_family(const nd_socket_t *s)
{
    return nd_socket_remote_address(s) ? nd_family_name(s->remote.family) : NULL;
}

ND_EXPORT const char *nd_socket_local_address(const nd_socket_t *cs)
{
    nd_socket_t *s = (nd_socket_t *)cs;
    if (!s || s->is_unix)
        return NULL;
    if (s->state == SK_OPEN || s->state == SK_CONNECTING)
        cache_local(s);
    return s->have_local ? endpoint_text(s, false) : NULL;
}

ND_EXPORT int nd_socket_local_port(const nd_socket_t *s)
{
    return nd_socket_local_address(s) ? s->local.port : 0;
}

ND_EXPORT uint64_t nd_socket_idle_ms(const nd_socket_t *s)
{
    if (!s || !s->last_active_us)
        return 0;
    uint64_t now = now_us(s->h.loop);
    return now > s->last_active_us ? (now - s->last_active_us) / 1000 : 0;
}

ND_EXPORT uint64_t nd_socket_bytes_read(const nd_socket_t *s)
{
    return s ? s->bytes_read : 0;
}

ND_EXPORT uint64_t nd_socket_bytes_written(const nd_socket_t *s)
{
    return s ? s->bytes_written : 0;
}

ND_EXPORT size_t nd_socket_buffer_size(const nd_socket_t *s)
{
    return s ? queued(s) : 0;
}

ND_EXPORT int nd_socket_readable(const nd_socket_t *s)
{
    return s && s->state == SK_OPEN && s->opt_readable && !s->eof;
}

ND_EXPORT int nd_socket_writable(const nd_socket_t *s)
{
    return s && !is_destroyed(s) && s->state != SK_NEW && s->opt_writable && !s->ending &&
           !s->peer_ended;
}

ND_EXPORT int nd_socket_destroyed(const nd_socket_t *s)
{
    return s && is_destroyed(s);
}

ND_EXPORT int nd_socket_connecting(const nd_socket_t *s)
{
    return s && (s->state == SK_RESOLVING || s->state == SK_CONNECTING);
}

ND_EXPORT nd_server_t *nd_socket_server(const nd_socket_t *s)
{
    return s ? s->server : NULL;
}

ND_EXPORT void nd_socket_ref(nd_socket_t *s)
{
    if (!s)
        return;
    s->h.user_ref = true;
    update_active(s);
}

ND_EXPORT void nd_socket_unref(nd_socket_t *s)
{
    if (!s)
        return;
    s->h.user_ref = false;
    update_active(s);
}

static int add_listener(nd_socket_t *s, nd_event_type_t ev, nd_listener_fn fn, void *arg, bool once)
{
    if (!s)
        return -EINVAL;
    int rc = nd__emitter_on(&s->h.em, ev, fn, arg, once);
    if (rc == 0 && ev == ND_EV_DATA)
        start_flowing(s); /* Node: on('data') resumes a stream that was not paused */
    return rc;
}

ND_EXPORT int nd_socket_on(nd_socket_t *s, nd_event_type_t ev, nd_listener_fn fn, void *arg)
{
    return add_listener(s, ev, fn, arg, false);
}

ND_EXPORT int nd_socket_once(nd_socket_t *s, nd_event_type_t ev, nd_listener_fn fn, void *arg)
{
    return add_listener(s, ev, fn, arg, true);
}

ND_EXPORT int nd_socket_off(nd_socket_t *s, nd_event_type_t ev, nd_listener_fn fn, void *arg)
{
    return s ? nd__emitter_off(&s->h.em, ev, fn, arg) : -EINVAL;
}

ND_EXPORT void nd_socket_hold(nd_socket_t *s)
{
    if (s)
        nd__handle_retain(&s->h);
}

ND_EXPORT void nd_socket_release(nd_socket_t *s)
{
    if (s)
        nd__handle_release(&s->h);
}

ND_EXPORT nd_loop_t *nd_socket_loop(const nd_socket_t *s)
{
    return s ? s->h.loop : NULL;
}

ND_EXPORT int nd_socket_fd(const nd_socket_t *s)
{
    return s ? s->fd : -1;
}

ND_EXPORT void nd_socket_set_data(nd_socket_t *s, void *data)
{
    if (s)
        s->h.data = data;
}

ND_EXPORT void *nd_socket_data(const nd_socket_t *s)
{
    return s ? s->h.data : NULL;
}

/* ------------------------------------------------------------------ moving between loops */

typedef struct move_msg {
    nd__msg_t node;
    nd_socket_t *sock, *peer;  /* peer: the other half of a proxy pair, or NULL */
    nd_socket_t *peer_at_call; /* the pair when nd_socket_move was called (held) */
    bool writing[2];
    uint32_t pending[2];
    int to[2]; /* member index in the socket's group, or -1 */
    nd_adopt_fn on_adopt;
    nd_move_fn notify;
    void *arg;
    nd_loop_t *target;
} move_msg_t;

ND_EXPORT nd_socket_t *nd_socket_pipe_peer(const nd_socket_t *s)
{
    if (s && s->pipe_dst && s->pipe_dst != s && s->pipe_dst->pipe_dst == s &&
        s->pipe_src == s->pipe_dst)
        return s->pipe_dst;
    return NULL;
}

/* Why s cannot leave its loop now, or 0. */
static int move_blocker(const nd_socket_t *s, const nd_socket_t *peer)
{
    if (is_destroyed(s))
        return ND_ECLOSED;
    if (s->state != SK_OPEN)
        return -EBUSY;
    /* A pipe to anything but itself or its pair would be cut in two. */
    if (s->pipe_dst && s->pipe_dst != s && s->pipe_dst != peer)
        return -EBUSY;
    if (s->pipe_src && s->pipe_src != s && s->pipe_src != peer)
        return -EBUSY;
    return 0;
}

static int move_check(nd_socket_t *s, nd_loop_t *target, nd_socket_t **peerp, int to[2])
{
    nd_socket_t *peer = nd_socket_pipe_peer(s);
    /* Its pair is torn down but its 'close' has not run: the listeners that tie the two
     * together still run here. The socket waits (and usually goes with it). */
    if (s->pair && s->pair != peer)
        return is_destroyed(s) ? ND_ECLOSED : -EBUSY;
    int rc = move_blocker(s, peer);
    if (!rc && peer)
        rc = move_blocker(peer, s);
    if (rc)
        return rc;
    nd_socket_t *both[2] = {s, peer};
    for (int i = 0; i < 2; i++) {
        to[i] = -1;
        if (both[i] && both[i]->server) {
            to[i] = nd__server_member_of(both[i]->server, target);
            if (to[i] < 0)
                return to[i];
        }
    }
    *peerp = peer;
    return 0;
}

/* On the owner: stop every event, leave the loop's books; the fd and state stay put. */
static void detach(nd_socket_t *s, int to, bool *writing, uint32_t *pending)
{
    *writing = s->writing;
    stop_reading(s);
    stop_writing(s);
    disarm_timer(s);
    *pending = s->h.pending;
    nd__handle_unpend(&s->h, s->h.pending);
    nd__handle_set_active(&s->h, false);
    if (s->server && to >= 0)
        nd__server_move_out(s->server, to);
    if (s->spliced)
        nd__loop_splicer_gone(s->h.loop); /* its pipe, if any, goes with it */
    /* Listeners belong to the code that ran on this loop; the adopter attaches its own. */
    s->h.em.n = 0;
    s->h.em.has = 0;
    TAILQ_REMOVE(&s->h.loop->handles, &s->h, link);
    s->h.loop->nhandles--;
}

static void adopt(nd_socket_t *s, nd_loop_t *loop, int to, bool writing, uint32_t pending)
{
    s->h.loop = loop;
    TAILQ_INSERT_TAIL(&loop->handles, &s->h, link);
    loop->nhandles++;
    if (s->spliced)
        loop->splicers++;
    bind_fd(s, s->fd);
    if (s->timer_ev)
        event_assign(s->timer_ev, loop->base, -1, 0, on_timer, s);
    if (s->server && to >= 0)
        s->server = nd__server_move_in(s->server, to);
    ND__STAT_ADD(loop->stats.moved_in, 1);
    s->moving = false;
    start_reading(s); /* if not paused: the paused state travelled with the socket */
    schedule_flow(s); /* input read on the old loop goes first, in order */
    if (writing)
        start_writing(s);
    touch(s);
    nd__handle_pend(&s->h, pending);
    update_active(s);
}

static void adopt_msg(nd_loop_t *loop, void *arg)
{
    move_msg_t *m = arg;
    nd_socket_t *both[2] = {m->sock, m->peer};
    for (int i = 0; i < 2; i++) {
        if (both[i]) {
            adopt(both[i], loop, m->to[i], m->writing[i], m->pending[i]);
            nd__handle_retain(&both[i]->h);
        }
    }
    if (m->on_adopt)
        m->on_adopt(m->sock, m->arg);
    if (m->notify)
        m->notify(m->sock, ND_MOVE_ADOPTED, 0, m->arg);
    for (int i = 0; i < 2; i++)
        if (both[i] && both[i]->server && !is_destroyed(both[i]))
            nd__server_emit_adopt(both[i]->server, both[i]);
    for (int i = 0; i < 2; i++)
        if (both[i])
            nd__handle_release(&both[i]->h);
    free(m);
}

/* The target loop was freed with the sockets still in its mailbox (the process exits):
 * they belong to that loop now and go with it, without events. */
static void adopt_dropped(void *arg)
{
    move_msg_t *m = arg;
    nd_socket_t *both[2] = {m->sock, m->peer};
    for (int i = 0; i < 2; i++) {
        if (!both[i])
            continue;
        both[i]->h.loop = m->target;
        TAILQ_INSERT_TAIL(&m->target->handles, &both[i]->h, link);
        m->target->nhandles++;
        if (both[i]->spliced)
            m->target->splicers++;
        nd__socket_free(both[i]);
    }
    free(m);
}

/* Runs from the owner's defer queue, outside every callback of the socket, so no frame
 * of this loop still holds it when the target thread takes over. */
static void do_move(void *arg)
{
    move_msg_t *m = arg;
    nd_socket_t *s = m->sock;
    nd_socket_t *peer = NULL;
    /* Checked again: the socket may have closed or been piped since the call. */
    int rc = move_check(s, m->target, &peer, m->to);
    nd_socket_t *held[2] = {s, m->peer_at_call};
    for (int i = 0; rc && i < 2; i++) {
        if (held[i] && !is_destroyed(held[i])) {
            held[i]->moving = false; /* it stays: read again */
            start_reading(held[i]);
            schedule_flow(held[i]);
        }
    }
    if (!rc && m->peer_at_call && m->peer_at_call != peer)
        m->peer_at_call->moving = false; /* no longer its pair: it stays here */
    if (m->peer_at_call)
        nd__handle_release(&m->peer_at_call->h);
    nd__handle_release(&s->h); /* the guard nd_socket_move took; s is alive if rc == 0 */
    if (rc) {
        if (m->notify)
            m->notify(s, ND_MOVE_FAILED, rc, m->arg);
        free(m);
        return;
    }
    m->peer = peer;
    if (m->notify)
        m->notify(s, ND_MOVE_DETACHED, 0, m->arg);
    detach(s, m->to[0], &m->writing[0], &m->pending[0]);
    if (peer)
        detach(peer, m->to[1], &m->writing[1], &m->pending[1]);
    /* The message node is part of m: posting cannot fail and strand the sockets. */
    nd__loop_post_node(m->target, &m->node, adopt_msg, m, adopt_dropped);
}

static int start_move(nd_socket_t *s, nd_loop_t *target, nd_adopt_fn on_adopt, nd_move_fn notify,
                      void *arg)
{
    if (!s || !target)
        return -EINVAL;
    if (target == s->h.loop)
        return 0;
    nd_socket_t *peer = NULL;
    int to[2];
    int rc = move_check(s, target, &peer, to);
    if (rc)
        return rc;
    /* One move at a time, for either half of a pair: a second departure would detach the
     * sockets from a loop they already left. A parked socket belongs to an export. */
    if (s->moving || s->parked || (peer && (peer->moving || peer->parked)))
        return -EBUSY;
    move_msg_t *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->sock = s;
    m->on_adopt = on_adopt;
    m->notify = notify;
    m->arg = arg;
    m->target = target;
    nd__handle_retain(&s->h);
    if (nd_loop_defer(s->h.loop, do_move, m) != 0) {
        nd__handle_release(&s->h);
        free(m);
        return -ENOMEM;
    }
    /* No more 'data' here from now on: what the kernel holds is read on the target. */
    m->peer_at_call = peer;
    if (peer)
        nd__handle_retain(&peer->h);
    nd_socket_t *both[2] = {s, peer};
    for (int i = 0; i < 2; i++) {
        if (both[i]) {
            both[i]->moving = true;
            stop_reading(both[i]);
        }
    }
    return 0;
}

ND_EXPORT int nd_socket_move(nd_socket_t *s, nd_loop_t *target, nd_adopt_fn on_adopt, void *arg)
{
    return start_move(s, target, on_adopt, NULL, arg);
}

ND_EXPORT int nd_socket_move_notify(nd_socket_t *s, nd_loop_t *target, nd_move_fn fn, void *arg)
{
    if (!fn)
        return -EINVAL;
    if (s && target == s->h.loop)
        return -EALREADY; /* no phase would ever be reported */
    return start_move(s, target, NULL, fn, arg);
}

/* ------------------------------------------------------------------ exporting to another process */

/*
 * The record: "NDSK", a version byte, the number of sockets (1, or 2 for a pair), then
 * per socket a fixed list of fields (below), each integer little-endian. A version this
 * code does not know is refused whole: fields are never guessed.
 */
#define EXPORT_MAGIC "NDSK"
#define EXPORT_VERSION 1

enum export_flag {
    XF_HALF_OPEN = 1u << 0,
    XF_READABLE = 1u << 1,
    XF_WRITABLE = 1u << 2,
    XF_PAUSED = 1u << 3,
    XF_FLOWING = 1u << 4,
    XF_READ_STARTED = 1u << 5,
    XF_FIN_RCVD = 1u << 6,
    XF_EOF = 1u << 7,
    XF_PEER_ENDED = 1u << 8,
    XF_ENDING = 1u << 9,
    XF_FIN_SENT = 1u << 10,
    XF_NEED_DRAIN = 1u << 11,
    XF_NO_DELAY = 1u << 12,
    XF_KEEP_ALIVE = 1u << 13,
    XF_OPTS_SET = 1u << 14,
    XF_UNIX = 1u << 15,
    XF_HAVE_LOCAL = 1u << 16,
    XF_HAVE_REMOTE = 1u << 17,
    XF_PIPE_END = 1u << 18,
    XF_PIPE_PAUSED = 1u << 19,
    XF_PIPE_SELF = 1u << 20, /* pipe(s, s): an echo */
    XF_PIPE_PEER = 1u << 21, /* piped to the other socket of the record */
    XF_USER_REF = 1u << 22,
    /* Events owed when it was exported: owed on the other side (a listener there gets them). */
    XF_OWE_FLOW = 1u << 23,
    XF_OWE_DRAIN = 1u << 24,
    XF_OWE_FINISH = 1u << 25,
    XF_OWE_AUTOCLOSE = 1u << 26,
    XF_IN_SERVER = 1u << 27, /* counted in its server's connections: the importer's joins */
};

/* Deferred work that may travel: the rest (a connect, errors, write callbacks, 'close')
 * means the socket is not quiet. */
#define PK_TRAVELS (PK_FLOW | PK_DRAIN | PK_FINISH | PK_AUTOCLOSE)

typedef struct wbuf {
    unsigned char *p;
    size_t len, cap;
    bool failed;
} wbuf_t;

/* Room for n more bytes; false (and the record failed) when out of memory. */
static bool reserve(wbuf_t *w, size_t n)
{
    if (w->failed)
        return false;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 512;
        while (cap < w->len + n)
            cap *= 2;
        unsigned char *p = realloc(w->p, cap);
        if (!p) {
            w->failed = true;
            return false;
        }
        w->p = p;
        w->cap = cap;
    }
    return true;
}

static void put(wbuf_t *w, const void *data, size_t n)
{
    if (!reserve(w, n))
        return;
    memcpy(w->p + w->len, data, n);
    w->len += n;
}

static void put_u64(wbuf_t *w, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    put(w, b, 8);
}

static void put_str(wbuf_t *w, const char *str)
{
    size_t n = strlen(str);
    put_u64(w, n);
    put(w, str, n);
}

static void put_evbuffer(wbuf_t *w, struct evbuffer *b)
{
    size_t n = b ? evbuffer_get_length(b) : 0;
    put_u64(w, n);
    /* Copied out, not drained: an abort leaves the socket exactly as it was. */
    if (n == 0 || !reserve(w, n))
        return;
    evbuffer_copyout(b, w->p + w->len, n);
    w->len += n;
}

static void put_address(wbuf_t *w, const nd_address_t *a)
{
    put_u64(w, (uint64_t)a->family);
    put_u64(w, (uint64_t)a->port);
    put_str(w, a->address);
}

typedef struct rbuf {
    const unsigned char *p;
    size_t len, at;
    bool bad;
} rbuf_t;

static uint64_t get_u64(rbuf_t *r)
{
    if (r->bad || r->len - r->at < 8) {
        r->bad = true;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)r->p[r->at + (size_t)i] << (8 * i);
    r->at += 8;
    return v;
}

/* The next n bytes, or NULL (malformed). */
static const unsigned char *get_bytes(rbuf_t *r, uint64_t n)
{
    if (r->bad || n > r->len - r->at) {
        r->bad = true;
        return NULL;
    }
    const unsigned char *p = r->p + r->at;
    r->at += (size_t)n;
    return p;
}

static void get_str(rbuf_t *r, char *out, size_t cap)
{
    uint64_t n = get_u64(r);
    const unsigned char *p = get_bytes(r, n);
    if (!p || n >= cap) {
        r->bad = true;
        out[0] = '\0';
        return;
    }
    memcpy(out, p, (size_t)n);
    out[n] = '\0';
}

static void get_address(rbuf_t *r, nd_address_t *a)
{
    a->family = (int)get_u64(r);
    a->port = (int)get_u64(r);
    get_str(r, a->address, sizeof(a->address));
}

static uint32_t export_flags(const nd_socket_t *s, const nd_socket_t *peer)
{
    uint32_t f = 0;
#define XF_SET(cond, bit)                                                                          \
    if (cond)                                                                                      \
    f |= (bit)
    XF_SET(s->allow_half_open, XF_HALF_OPEN);
    XF_SET(s->opt_readable, XF_READABLE);
    XF_SET(s->opt_writable, XF_WRITABLE);
    XF_SET(s->paused, XF_PAUSED);
    XF_SET(s->flowing, XF_FLOWING);
    XF_SET(s->read_started, XF_READ_STARTED);
    XF_SET(s->fin_rcvd, XF_FIN_RCVD);
    XF_SET(s->eof, XF_EOF);
    XF_SET(s->peer_ended, XF_PEER_ENDED);
    XF_SET(s->ending, XF_ENDING);
    XF_SET(s->fin_sent, XF_FIN_SENT);
    XF_SET(s->need_drain, XF_NEED_DRAIN);
    XF_SET(s->no_delay, XF_NO_DELAY);
    XF_SET(s->keep_alive, XF_KEEP_ALIVE);
    XF_SET(s->opts_set, XF_OPTS_SET);
    XF_SET(s->is_unix, XF_UNIX);
    XF_SET(s->have_local, XF_HAVE_LOCAL);
    XF_SET(s->have_remote, XF_HAVE_REMOTE);
    XF_SET(s->pipe_end, XF_PIPE_END);
    XF_SET(s->pipe_paused, XF_PIPE_PAUSED);
    XF_SET(s->pipe_dst == s, XF_PIPE_SELF);
    XF_SET(peer && s->pipe_dst == peer, XF_PIPE_PEER);
    XF_SET(s->h.user_ref, XF_USER_REF);
    XF_SET((s->h.pending | s->owed) & PK_FLOW, XF_OWE_FLOW);
    XF_SET((s->h.pending | s->owed) & PK_DRAIN, XF_OWE_DRAIN);
    XF_SET((s->h.pending | s->owed) & PK_FINISH, XF_OWE_FINISH);
    XF_SET((s->h.pending | s->owed) & PK_AUTOCLOSE, XF_OWE_AUTOCLOSE);
    XF_SET(s->server && s->in_count, XF_IN_SERVER);
#undef XF_SET
    return f;
}

/* An endpoint as the record carries it (the text form nd_socket_address gives). */
static void put_endpoint(wbuf_t *w, nd_socket_t *s, bool remote)
{
    nd_address_t a;
    memset(&a, 0, sizeof(a));
    const endpoint_t *ep = remote ? &s->remote : &s->local;
    if (!remote && s->is_unix && s->text)
        memcpy(a.address, s->text->local, sizeof(s->text->local));
    else
        endpoint_format(ep, a.address, sizeof(a.address));
    a.family = ep->family;
    a.port = ep->port;
    put_address(w, &a);
}

static void export_one(wbuf_t *w, nd_socket_t *s, const nd_socket_t *peer)
{
    cache_local(s);
    cache_remote(s);
    put_u64(w, export_flags(s, peer));
    put_u64(w, s->keep_alive_delay_s);
    put_u64(w, s->timeout_ms);
    put_u64(w, s->high_water_mark);
    /* The record's queued and flushed totals: every write's mark is bytes_written here, and
     * what was flushed is what no longer waits in the queue. */
    put_u64(w, s->bytes_written);
    put_u64(w, flushed(s));
    put_u64(w, s->bytes_read);
    put_u64(w, s->bytes_written);
    put_u64(w, nd_socket_idle_ms(s));
    nd__decoder_t none = {.enc = ND_ENC_NONE};
    const nd__decoder_t *dec = s->decoding ? &s->decoding->dec : &none;
    put_u64(w, (uint64_t)dec->enc);
    put_u64(w, dec->npartial);
    put(w, dec->partial, sizeof(dec->partial));
    put_endpoint(w, s, false);
    put_endpoint(w, s, true);
    put_str(w, s->is_unix && s->dial ? s->dial->name : "");
    put_evbuffer(w, s->in);
    put_evbuffer(w, s->out); /* the splice pipe's bytes were moved in front (unsplice) */
}

/* Output waiting in the splice pipe goes in front of the output buffer, where it was in the
 * queue's order: a record carries bytes, not a kernel pipe. All the memory is taken before
 * the pipe is read, so this either moves every byte or changes nothing. Returns 0 or
 * -ENOMEM. */
static int unsplice(nd_socket_t *s)
{
    if (s->sp_len == 0)
        return 0;
    size_t n = s->sp_len;
    struct evbuffer *b = evbuffer_new();
    struct evbuffer_iovec v; /* one vector: n contiguous bytes, read straight into */
    if (!b || evbuffer_reserve_space(b, (ev_ssize_t)n, &v, 1) != 1 ||
        (!s->out && !(s->out = evbuffer_new()))) {
        if (b)
            evbuffer_free(b);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < n) {
        /* the bytes are there: no EAGAIN */
        ssize_t r = read(s->sp_r, (char *)v.iov_base + got, n - got);
        if (r > 0)
            got += (size_t)r;
        else if (r < 0 && errno == EINTR)
            continue;
        else
            break; /* cannot happen on our own pipe */
    }
    v.iov_len = got;
    evbuffer_commit_space(b, &v, 1);
    evbuffer_prepend_buffer(s->out, b);
    evbuffer_free(b);
    nd__loop_pipe_put(s->h.loop, s->sp_r, s->sp_w);
    s->sp_r = s->sp_w = -1;
    s->sp_len = 0;
    return 0;
}

/* Why s cannot be exported now, or 0: open and quiet (nothing pending to emit, no write
 * callback owed, no error queued), and piped only to itself or to its pair. */
static int export_blocker(const nd_socket_t *s, const nd_socket_t *peer)
{
    if (is_destroyed(s))
        return ND_ECLOSED;
    if (s->state != SK_OPEN || s->moving || s->parked || (s->h.pending & ~PK_TRAVELS) || s->errq ||
        s->error_nomem || !TAILQ_EMPTY(&s->wreqs))
        return -EBUSY;
    if (s->pair && s->pair != peer)
        return -EBUSY;
    if (s->pipe_dst && s->pipe_dst != s && s->pipe_dst != peer)
        return -EBUSY;
    if (s->pipe_src && s->pipe_src != s && s->pipe_src != peer)
        return -EBUSY;
    return 0;
}

static void park(nd_socket_t *s)
{
    s->parked = true;
    /* What was owed waits with it: emitted here again after an abort, there after an
     * import. */
    s->owed = s->h.pending & PK_TRAVELS;
    nd__handle_unpend(&s->h, s->owed);
    stop_reading(s);
    stop_writing(s);
    disarm_timer(s);
    update_active(s);
}

static void unpark(nd_socket_t *s)
{
    s->parked = false;
    if (is_destroyed(s))
        return;
    if (s->timeout_ms &&
        (s->timer_ev || (s->timer_ev = evtimer_new(s->h.loop->base, on_timer, s)))) {
        struct timeval tv = nd__ms_tv(s->timeout_ms);
        evtimer_add(s->timer_ev, &tv);
        s->timer_armed = true;
    }
    start_reading(s);
    if (queued(s) > 0 || (s->ending && !s->fin_sent))
        flush(s);
    nd__handle_pend(&s->h, s->owed);
    s->owed = 0;
    schedule_flow(s);
    update_active(s);
}

ND_EXPORT int nd_socket_export(nd_socket_t *s, nd_export_t *out)
{
    if (!s || !out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    nd_socket_t *peer = nd_socket_pipe_peer(s);
    int rc = export_blocker(s, peer);
    if (!rc && peer)
        rc = export_blocker(peer, s);
    if (!rc)
        rc = unsplice(s);
    if (!rc && peer)
        rc = unsplice(peer);
    if (rc)
        return rc;
    wbuf_t w = {0};
    put(&w, EXPORT_MAGIC, 4);
    unsigned char hdr[2] = {EXPORT_VERSION, peer ? 2 : 1};
    put(&w, hdr, 2);
    export_one(&w, s, peer);
    if (peer)
        export_one(&w, peer, s);
    if (w.failed) {
        free(w.p);
        return -ENOMEM;
    }
    out->data = w.p;
    out->len = w.len;
    out->socks[0] = s;
    out->socks[1] = peer;
    out->fds[0] = s->fd;
    out->nfds = 1;
    if (peer)
        out->fds[out->nfds++] = peer->fd;
    park(s);
    if (peer)
        park(peer);
    return 0;
}

ND_EXPORT void nd_socket_export_abort(nd_export_t *ex)
{
    for (int i = 0; ex && i < 2; i++)
        if (ex->socks[i])
            unpark(ex->socks[i]);
    nd_export_free(ex);
}

/* The socket now lives in another process: it leaves this one without an event. */
static void let_go(nd_socket_t *s)
{
    if (s->in_count) {
        s->in_count = false;
        nd__server_connection_destroyed(s->server);
    }
    if (s->server) {
        nd__server_connection_closed(s->server);
        s->server = NULL;
    }
    unpair(s);
    nd__handle_unpend(&s->h, s->h.pending);
    nd__handle_set_active(&s->h, false);
    nd__socket_free(s); /* closes our copy of the descriptor; theirs carries on */
}

ND_EXPORT void nd_socket_export_commit(nd_export_t *ex)
{
    if (!ex)
        return;
    nd_socket_t *a = ex->socks[0], *b = ex->socks[1];
    if (a)
        unpipe_both(a);
    if (b)
        unpipe_both(b);
    if (a)
        let_go(a);
    if (b)
        let_go(b);
    nd_export_free(ex);
}

ND_EXPORT void nd_export_free(nd_export_t *ex)
{
    if (!ex)
        return;
    free(ex->data);
    ex->data = NULL;
    ex->len = 0;
    ex->socks[0] = ex->socks[1] = NULL;
}

static int import_one(rbuf_t *r, nd_socket_t *s, uint32_t *flags)
{
    uint32_t f = (uint32_t)get_u64(r);
    *flags = f;
    s->allow_half_open = f & XF_HALF_OPEN;
    s->opt_readable = f & XF_READABLE;
    s->opt_writable = f & XF_WRITABLE;
    s->paused = f & XF_PAUSED;
    s->flowing = f & XF_FLOWING;
    s->read_started = f & XF_READ_STARTED;
    s->fin_rcvd = f & XF_FIN_RCVD;
    s->eof = f & XF_EOF;
    s->peer_ended = f & XF_PEER_ENDED;
    s->ending = f & XF_ENDING;
    s->fin_sent = f & XF_FIN_SENT;
    s->need_drain = f & XF_NEED_DRAIN;
    s->no_delay = f & XF_NO_DELAY;
    s->keep_alive = f & XF_KEEP_ALIVE;
    s->opts_set = f & XF_OPTS_SET;
    s->is_unix = f & XF_UNIX;
    s->have_local = f & XF_HAVE_LOCAL;
    s->have_remote = f & XF_HAVE_REMOTE;
    s->pipe_end = f & XF_PIPE_END;
    s->pipe_paused = f & XF_PIPE_PAUSED;
    s->h.user_ref = f & XF_USER_REF;
    s->owed = (f & XF_OWE_FLOW ? PK_FLOW : 0) | (f & XF_OWE_DRAIN ? PK_DRAIN : 0) |
              (f & XF_OWE_FINISH ? PK_FINISH : 0) | (f & XF_OWE_AUTOCLOSE ? PK_AUTOCLOSE : 0);
    uint64_t kad = get_u64(r);
    s->keep_alive_delay_s = kad > UINT16_MAX ? UINT16_MAX : (uint16_t)kad;
    s->timeout_ms = (unsigned)get_u64(r);
    uint64_t hwm = get_u64(r);
    s->high_water_mark = hwm > UINT32_MAX ? UINT32_MAX : (uint32_t)hwm;
    (void)get_u64(r); /* queued and flushed totals: here they follow from bytes_written and */
    (void)get_u64(r); /* the output queue carried below */
    s->bytes_read = get_u64(r);
    s->bytes_written = get_u64(r);
    uint64_t idle = get_u64(r);
    uint64_t enc = get_u64(r), npartial = get_u64(r);
    const unsigned char *partial = get_bytes(r, sizeof(((nd__decoder_t *)0)->partial));
    if (r->bad || enc > ND_ENC_LATIN1 || npartial > sizeof(((nd__decoder_t *)0)->partial))
        return -1;
    if (enc != ND_ENC_NONE || npartial) {
        if (!(s->decoding = calloc(1, sizeof(*s->decoding))))
            return -1;
        nd__decoder_init(&s->decoding->dec, (nd__encoding_t)enc);
        memcpy(s->decoding->dec.partial, partial, sizeof(s->decoding->dec.partial));
        s->decoding->dec.npartial = (unsigned)npartial;
    }
    nd_address_t a;
    for (int i = 0; i < 2; i++) {
        get_address(r, &a);
        endpoint_t *ep = i == 0 ? &s->local : &s->remote;
        memset(ep, 0, sizeof(*ep));
        ep->port = (uint16_t)a.port;
        if ((a.family == 4 && inet_pton(AF_INET, a.address, ep->addr) == 1) ||
            (a.family == 6 && inet_pton(AF_INET6, a.address, ep->addr) == 1)) {
            ep->family = (uint8_t)a.family;
        } else if (i == 0 && a.address[0]) {
            if (!text_of(s)) /* a unix socket's local path */
                return -1;
            snprintf(s->text->local, sizeof(s->text->local), "%s", a.address);
        }
    }
    char path[sizeof(((addr_text_t *)0)->local)];
    get_str(r, path, sizeof(path));
    if (path[0]) {
        /* A unix client's path, as connect() keeps it. */
        if (!(s->dial = calloc(1, sizeof(*s->dial) + strlen(path) + 1)))
            return -1;
        memcpy(s->dial->name, path, strlen(path) + 1);
    }
    for (int i = 0; i < 2 && !r->bad; i++) {
        uint64_t n = get_u64(r);
        const unsigned char *p = get_bytes(r, n);
        if (!p || n == 0)
            continue;
        struct evbuffer **b = i == 0 ? &s->in : &s->out;
        if ((!*b && !(*b = evbuffer_new())) || evbuffer_add(*b, p, (size_t)n) != 0)
            return -1;
    }
    if (r->bad)
        return -1;
    /* The idle timer goes on from where it was. */
    uint64_t now = now_us(s->h.loop), ago = (idle > 0x7fffffff ? 0x7fffffff : idle) * 1000u;
    s->last_active_us = now > ago ? now - ago : 1;
    return 0;
}

ND_EXPORT int nd_socket_import(nd_loop_t *loop, const void *data, size_t len, const int *fds,
                               int nfds, nd_server_t *server, nd_socket_t *out[2])
{
    if (!loop || !data || !fds || !out || nfds < 1 || nfds > 2)
        return -EINVAL;
    out[0] = out[1] = NULL;
    rbuf_t r = {data, len, 0, false};
    const unsigned char *magic = get_bytes(&r, 4);
    const unsigned char *hdr = get_bytes(&r, 2);
    if (!magic || memcmp(magic, EXPORT_MAGIC, 4) != 0 || !hdr)
        return ND_EFORMAT;
    if (hdr[0] != EXPORT_VERSION || hdr[1] != nfds)
        return ND_EFORMAT;
    nd_socket_t *socks[2] = {NULL, NULL};
    uint32_t flags[2] = {0, 0};
    int rc = 0;
    for (int i = 0; i < nfds && !rc; i++) {
        nd_socket_t *s = calloc(1, sizeof(*s));
        if (!s) {
            rc = -ENOMEM;
            break;
        }
        init_socket(s, loop);
        socks[i] = s;
        if (import_one(&r, s, &flags[i]) != 0)
            rc = r.bad ? ND_EFORMAT : -ENOMEM;
    }
    if (!rc && r.at != r.len)
        rc = ND_EFORMAT; /* trailing bytes: not a record of this version */
    for (int i = 0; !rc && i < nfds; i++)
        if ((flags[i] & XF_PIPE_PEER) && nfds != 2)
            rc = ND_EFORMAT; /* piped to a pair that is not in the record */
    if (rc) {
        for (int i = 0; i < 2; i++)
            if (socks[i])
                nd__socket_free(socks[i]); /* fd still -1: the caller keeps its descriptors */
        return rc;
    }
    for (int i = 0; i < nfds; i++) {
        nd_socket_t *s = socks[i];
        bind_fd(s, fds[i]);
        s->state = SK_OPEN;
        s->parked = true;
        if (flags[i] & XF_PIPE_SELF) {
            s->pipe_dst = s->pipe_src = s;
        } else if (flags[i] & XF_PIPE_PEER) {
            s->pipe_dst = socks[1 - i];
            socks[1 - i]->pipe_src = s;
        }
        if (server && (flags[i] & XF_IN_SERVER)) {
            s->server = server;
            s->in_count = true;
            nd__server_connection_imported(server);
        }
    }
    if (nfds == 2 && socks[0]->pipe_dst == socks[1] && socks[1]->pipe_dst == socks[0]) {
        socks[0]->pair = socks[1];
        socks[1]->pair = socks[0];
    }
    out[0] = socks[0];
    out[1] = socks[1];
    return 0;
}

ND_EXPORT void nd_socket_import_start(nd_socket_t *s)
{
    if (!s || !s->parked)
        return;
    nd_socket_t *peer = s->pair;
    apply_options(s);
    unpark(s);
    if (peer && peer->parked) {
        apply_options(peer);
        unpark(peer);
    }
}
