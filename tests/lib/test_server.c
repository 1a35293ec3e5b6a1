/* SPDX-License-Identifier: MIT */
/*
 * The Server: listen forms, address(), close and relisten, ref/unref, connection accounting
 * (maxConnections, connections, getConnections), and unix paths, fds and handles.
 */
#include "config.h"

#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define TIMEOUT_S 10
#define MAXC 24

/* ------------------------------------------------------------------------------------ */
/* Recorders: a server, the sockets it accepted, and client sockets, each counting its    */
/* events into one shared log. Tests steer them with hooks.                               */
/* ------------------------------------------------------------------------------------ */

typedef struct tctx tctx_t;
typedef struct srec srec_t;

typedef struct sconn {
    srec_t *s;
    nd_socket_t *sock; /* NULL once its 'close' ran: the library has freed it */
    int idx;
    char rx[256];
    size_t rxlen;
    int ends, closes;
} sconn_t;

struct srec {
    tctx_t *t;
    const char *tag; /* prefix in the log, or NULL */
    nd_server_t *srv;
    int listening, closes, errors, connections;
    int err_code, err_port;
    char err_name[32], err_syscall[32], err_address[512], err_message[512];
    nd_address_t addr;
    int addr_rc;
    sconn_t conns[MAXC];
    int nconns, conn_closes;
    void (*on_listening)(srec_t *s);
    void (*on_connection)(srec_t *s, sconn_t *c);
    void (*on_error)(srec_t *s);
    void (*on_close)(srec_t *s);
    void (*on_conn_data)(sconn_t *c);
    void (*on_conn_end)(sconn_t *c);
    void (*on_conn_close)(sconn_t *c);
};

typedef struct client {
    tctx_t *t;
    int idx;
    nd_socket_t *sock; /* NULL once its 'close' ran */
    char rx[256];
    size_t rxlen;
    int connects, ends, closes, errors, had_error;
    char err_name[32];
} client_t;

struct tctx {
    nd_loop_t *loop;
    th_log_t log;
    srec_t a, b;
    client_t cl[MAXC];
    int ncl, client_closes;
    void (*on_client_connect)(client_t *c);
    void (*on_client_data)(client_t *c);
    void (*on_client_error)(client_t *c);
    void (*on_client_close)(client_t *c);
    char dir[64];
    char path[512];
    int port, fd, step, n, in_call;
    int vals[MAXC];
    int nvals;
};

static void copy_str(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "(null)");
}

static void slog(srec_t *s, const char *what)
{
    if (s->tag)
        th_log(&s->t->log, "%s:%s", s->tag, what);
    else
        th_log(&s->t->log, "%s", what);
}

static void conn_on_data(void *self, const nd_event_t *ev, void *arg)
{
    sconn_t *c = arg;

    ck_assert_uint_le(c->rxlen + ev->len, sizeof(c->rx));
    memcpy(c->rx + c->rxlen, ev->data, ev->len);
    c->rxlen += ev->len;
    if (c->s->on_conn_data)
        c->s->on_conn_data(c);
}

static void conn_on_end(void *self, const nd_event_t *ev, void *arg)
{
    sconn_t *c = arg;

    c->ends++;
    if (c->s->on_conn_end)
        c->s->on_conn_end(c);
}

static void conn_on_close(void *self, const nd_event_t *ev, void *arg)
{
    sconn_t *c = arg;

    c->closes++;
    c->s->conn_closes++;
    if (c->s->on_conn_close)
        c->s->on_conn_close(c);
    c->sock = NULL;
}

static void srv_on_connection(void *self, const nd_event_t *ev, void *arg)
{
    srec_t *s = arg;

    ck_assert_ptr_eq(self, s->srv);
    ck_assert_int_eq(ev->type, ND_EV_CONNECTION);
    ck_assert_ptr_nonnull(ev->socket);
    ck_assert_int_lt(s->nconns, MAXC);
    sconn_t *c = &s->conns[s->nconns];
    c->s = s;
    c->idx = s->nconns++;
    c->sock = ev->socket;
    s->connections++;
    nd_socket_on(c->sock, ND_EV_DATA, conn_on_data, c);
    nd_socket_on(c->sock, ND_EV_END, conn_on_end, c);
    nd_socket_on(c->sock, ND_EV_CLOSE, conn_on_close, c);
    slog(s, "conn");
    if (s->on_connection)
        s->on_connection(s, c);
}

static void srv_on_listening(void *self, const nd_event_t *ev, void *arg)
{
    srec_t *s = arg;

    ck_assert_ptr_eq(self, s->srv);
    ck_assert_int_eq(ev->type, ND_EV_LISTENING);
    s->listening++;
    slog(s, "listening");
    if (s->on_listening)
        s->on_listening(s);
}

static void srv_on_error(void *self, const nd_event_t *ev, void *arg)
{
    srec_t *s = arg;
    char what[64];

    ck_assert_int_eq(ev->type, ND_EV_ERROR);
    ck_assert_ptr_nonnull(ev->error);
    s->errors++;
    s->err_code = ev->error->code;
    s->err_port = ev->error->port;
    copy_str(s->err_name, sizeof(s->err_name), ev->error->name);
    copy_str(s->err_syscall, sizeof(s->err_syscall), ev->error->syscall);
    copy_str(s->err_address, sizeof(s->err_address), ev->error->address);
    copy_str(s->err_message, sizeof(s->err_message), ev->error->message);
    snprintf(what, sizeof(what), "error:%s", s->err_name);
    slog(s, what);
    if (s->on_error)
        s->on_error(s);
}

static void srv_on_close(void *self, const nd_event_t *ev, void *arg)
{
    srec_t *s = arg;

    ck_assert_ptr_eq(self, s->srv);
    ck_assert_int_eq(ev->type, ND_EV_CLOSE);
    s->closes++;
    slog(s, "close");
    if (s->on_close)
        s->on_close(s);
}

static void tctx_init(tctx_t *t)
{
    memset(t, 0, sizeof(*t));
    t->loop = th_loop_new();
    t->fd = -1;
}

/* A server whose every event is recorded. with_listening 0 leaves 'listening' without
 * any listener, for the forms of listen that take no callback. */
static void srec_new_ex(tctx_t *t, srec_t *s, const char *tag, const nd_server_options_t *opts,
                        int with_listening)
{
    s->t = t;
    s->tag = tag;
    s->addr_rc = 1;
    s->srv = nd_server_new(t->loop, opts, srv_on_connection, s);
    ck_assert_ptr_nonnull(s->srv);
    if (with_listening)
        ck_assert_int_eq(nd_server_on(s->srv, ND_EV_LISTENING, srv_on_listening, s), 0);
    ck_assert_int_eq(nd_server_on(s->srv, ND_EV_ERROR, srv_on_error, s), 0);
    ck_assert_int_eq(nd_server_on(s->srv, ND_EV_CLOSE, srv_on_close, s), 0);
}

static void srec_new(tctx_t *t, srec_t *s, const char *tag)
{
    srec_new_ex(t, s, tag, NULL, 1);
}

static void srv_close(srec_t *s)
{
    ck_assert_int_eq(nd_server_close(s->srv, NULL, NULL), 0);
}

/* A failed listen emits 'error' only and leaves the server to the application: this hook
 * gives it back (from inside its own 'error' listener, which is allowed). */
static void hk_free(srec_t *s)
{
    ck_assert_int_eq(nd_server_free(s->srv), 0);
}

static void read_addr(srec_t *s)
{
    s->addr_rc = nd_server_address(s->srv, &s->addr);
}

static void destroy_open_conns(srec_t *s)
{
    for (int i = 0; i < s->nconns; i++)
        if (s->conns[i].sock)
            nd_socket_destroy(s->conns[i].sock);
}

/* Clients */

static void cl_on_connect(void *self, const nd_event_t *ev, void *arg)
{
    client_t *c = arg;

    c->connects++;
    if (c->t->on_client_connect)
        c->t->on_client_connect(c);
}

static void cl_on_data(void *self, const nd_event_t *ev, void *arg)
{
    client_t *c = arg;

    ck_assert_uint_le(c->rxlen + ev->len, sizeof(c->rx));
    memcpy(c->rx + c->rxlen, ev->data, ev->len);
    c->rxlen += ev->len;
    if (c->t->on_client_data)
        c->t->on_client_data(c);
}

static void cl_on_end(void *self, const nd_event_t *ev, void *arg)
{
    client_t *c = arg;

    c->ends++;
}

static void cl_on_error(void *self, const nd_event_t *ev, void *arg)
{
    client_t *c = arg;

    c->errors++;
    copy_str(c->err_name, sizeof(c->err_name), ev->error ? ev->error->name : NULL);
    if (c->t->on_client_error)
        c->t->on_client_error(c);
}

static void cl_on_close(void *self, const nd_event_t *ev, void *arg)
{
    client_t *c = arg;

    c->closes++;
    c->had_error = ev->had_error;
    c->t->client_closes++;
    if (c->t->on_client_close)
        c->t->on_client_close(c);
    c->sock = NULL;
}

static client_t *client_attach(tctx_t *t, nd_socket_t *sock)
{
    ck_assert_ptr_nonnull(sock);
    ck_assert_int_lt(t->ncl, MAXC);
    client_t *c = &t->cl[t->ncl];
    c->t = t;
    c->idx = t->ncl++;
    c->sock = sock;
    nd_socket_on(sock, ND_EV_CONNECT, cl_on_connect, c);
    nd_socket_on(sock, ND_EV_DATA, cl_on_data, c);
    nd_socket_on(sock, ND_EV_END, cl_on_end, c);
    nd_socket_on(sock, ND_EV_ERROR, cl_on_error, c);
    nd_socket_on(sock, ND_EV_CLOSE, cl_on_close, c);
    return c;
}

static client_t *client_tcp_host(tctx_t *t, const char *host, int family, int port)
{
    nd_connect_options_t o;

    memset(&o, 0, sizeof(o));
    o.host = host;
    o.family = family;
    o.port = port;
    return client_attach(t, nd_connect(t->loop, &o, NULL, NULL));
}

static client_t *client_tcp(tctx_t *t, int port)
{
    return client_tcp_host(t, "127.0.0.1", 4, port);
}

static client_t *client_path(tctx_t *t, const char *path)
{
    nd_connect_options_t o;

    memset(&o, 0, sizeof(o));
    o.path = path;
    return client_attach(t, nd_connect(t->loop, &o, NULL, NULL));
}

static void count_cb(void *self, const nd_event_t *ev, void *arg)
{
    (*(int *)arg)++;
}

/* Common hooks */

static void hk_addr_close(srec_t *s)
{
    read_addr(s);
    srv_close(s);
}

static void hk_conn_destroy(srec_t *s, sconn_t *c)
{
    nd_socket_destroy(c->sock);
}

static void hk_conn_destroy_and_close(srec_t *s, sconn_t *c)
{
    nd_socket_destroy(c->sock);
    srv_close(s);
}

static void hk_listening_connect_tcp(srec_t *s)
{
    read_addr(s);
    ck_assert_int_eq(s->addr_rc, 0);
    client_tcp(s->t, s->addr.port);
}

static void hk_listening_connect_path(srec_t *s)
{
    read_addr(s);
    client_path(s->t, s->t->path);
}

/* Unix paths and raw sockets */

static void make_path(tctx_t *t, const char *name)
{
    copy_str(t->dir, sizeof(t->dir), th_tmpdir());
    snprintf(t->path, sizeof(t->path), "%s/%s", t->dir, name);
}

static void remove_dir(tctx_t *t)
{
    unlink(t->path);
    rmdir(t->dir);
}

static int is_socket_file(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

static int path_missing(const char *path)
{
    struct stat st;

    return stat(path, &st) == -1 && errno == ENOENT;
}

/* A unix socket bound to path by plain syscalls, listening when backlog > 0. */
static int raw_unix_bind(const char *path, int backlog)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ck_assert_msg(fd >= 0, "socket: %s", strerror(errno));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    ck_assert_uint_lt(strlen(path), sizeof(sa.sun_path));
    strcpy(sa.sun_path, path);
    ck_assert_msg(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind %s: %s", path,
                  strerror(errno));
    if (backlog > 0)
        ck_assert_msg(listen(fd, backlog) == 0, "listen: %s", strerror(errno));
    return fd;
}

static int raw_unix_connect(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ck_assert_msg(fd >= 0, "socket: %s", strerror(errno));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, path);
    ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect %s: %s", path,
                  strerror(errno));
    return fd;
}

/* A TCP socket bound to 127.0.0.1:0 and not listening; *port set. */
static int raw_tcp_bound(int *port)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ck_assert_msg(fd >= 0, "socket: %s", strerror(errno));
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_msg(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "bind: %s", strerror(errno));
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

/* Containers without IPv6 have no ::1: only then is the IPv6 test skipped. */
static int have_ipv6_loopback(void)
{
    struct sockaddr_in6 sin6;
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return 0;
    memset(&sin6, 0, sizeof(sin6));
    sin6.sin6_family = AF_INET6;
    sin6.sin6_addr = in6addr_loopback;
    int ok = bind(fd, (struct sockaddr *)&sin6, sizeof(sin6)) == 0;
    close(fd);
    return ok;
}

static int is_one_of(const char *s, const char *a, const char *b)
{
    return strcmp(s, a) == 0 || strcmp(s, b) == 0;
}

/* A libevent timer that, unlike th_timer, does not keep the loop alive: it only fires if
 * something else (the server under test) keeps nd_loop_run() going. */
static void raw_timer_close(evutil_socket_t fd, short what, void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "timer");
    srv_close(&t->a);
}

static struct event *raw_timer(tctx_t *t, unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (long)(ms % 1000) * 1000};
    struct event *ev = evtimer_new(nd_loop_base(t->loop), raw_timer_close, t);

    ck_assert_ptr_nonnull(ev);
    ck_assert_int_eq(evtimer_add(ev, &tv), 0);
    return ev;
}

/* ------------------------------------------------------------------------------------ */
/* A. listen, address, close                                                             */
/* ------------------------------------------------------------------------------------ */

static const struct {
    const char *host;
    int backlog;
    const char *expect;
} port0_forms[] = {
    {NULL, 0, "0.0.0.0"},
    {"127.0.0.1", 511, "127.0.0.1"},
    {NULL, -1, "0.0.0.0"},
};

/* case 1 */
START_TEST(test_listen_port0_random)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, port0_forms[_i].host, port0_forms[_i].backlog),
                     0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    ck_assert_int_eq(t.a.addr_rc, 0);
    ck_assert_int_gt(t.a.addr.port, 100);
    ck_assert_int_le(t.a.addr.port, 65535);
    ck_assert_int_eq(t.a.addr.family, 4);
    ck_assert_str_eq(t.a.addr.address, port0_forms[_i].expect);
    th_finish(t.loop);
}
END_TEST

/* case 1: each port-0 listen gets its own port. */
START_TEST(test_listen_port0_distinct)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, "A");
    srec_new(&t, &t.b, "B");
    t.a.on_listening = hk_addr_close;
    t.b.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    ck_assert_int_eq(nd_server_listen(t.b.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_int_eq(t.a.listening, 1);
    ck_assert_int_eq(t.b.listening, 1);
    ck_assert_int_eq(t.a.closes, 1);
    ck_assert_int_eq(t.b.closes, 1);
    ck_assert_int_gt(t.a.addr.port, 100);
    ck_assert_int_gt(t.b.addr.port, 100);
    ck_assert_int_ne(t.a.addr.port, t.b.addr.port);
    th_finish(t.loop);
}
END_TEST

/* case 2: 'listening' comes on a later turn, and meanwhile the pending server keeps the
 * loop alive. */
START_TEST(test_listening_is_async)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    ck_assert_int_eq(t.a.listening, 0);
    ck_assert_str_eq(th_log_str(&t.log), "");
    ck_assert_int_gt(nd_loop_alive_count(t.loop), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    ck_assert_int_eq(nd_loop_alive_count(t.loop), 0);
    th_finish(t.loop);
}
END_TEST

/* case 2, case 3: close on the listen turn cancels 'listening'; 'close' comes once, with or
 * without a close callback (_i 0: with, 1: NULL). */
START_TEST(test_listen_close_same_turn)
{
    tctx_t t;
    int cb = 0;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, NULL, 0), 0);
    if (_i == 0)
        ck_assert_int_eq(nd_server_close(t.a.srv, count_cb, &cb), 0);
    else
        ck_assert_int_eq(nd_server_close(t.a.srv, NULL, NULL), 0);
    /* never from inside the call */
    ck_assert_int_eq(t.a.closes, 0);
    ck_assert_int_eq(cb, 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "close");
    ck_assert_int_eq(t.a.listening, 0);
    ck_assert_int_eq(t.a.errors, 0);
    ck_assert_int_eq(t.a.closes, 1);
    ck_assert_int_eq(cb, _i == 0 ? 1 : 0);
    th_finish(t.loop);
}
END_TEST

/* case 2: a listen that is going to fail and is closed on the same turn reports no error. */
START_TEST(test_listen_close_same_turn_cancels_error)
{
    tctx_t t;
    int port;
    int raw = th_raw_listen(&port);

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    ck_assert_int_eq(nd_server_listen(t.a.srv, port, "127.0.0.1", 0), 0);
    ck_assert_int_eq(nd_server_close(t.a.srv, NULL, NULL), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "close");
    ck_assert_int_eq(t.a.errors, 0);
    close(raw);
    th_finish(t.loop);
}
END_TEST

/* case 4: the listen callback is one-shot and the server listens again from inside its
 * own 'close' listener (which keeps it from being freed). */
static void c4_cb1(void *self, const nd_event_t *ev, void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "cb1");
    srv_close(&t->a);
}

static void c4_cb2(void *self, const nd_event_t *ev, void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "cb2");
    srv_close(&t->a);
}

static void c4_on_close(srec_t *s)
{
    if (s->closes == 1) {
        ck_assert_int_eq(nd_server_once(s->srv, ND_EV_LISTENING, c4_cb2, s->t), 0);
        ck_assert_int_eq(nd_server_listen(s->srv, 0, "127.0.0.1", 0), 0);
    }
}

START_TEST(test_relisten_from_close_listener)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_close = c4_on_close;
    ck_assert_int_eq(nd_server_once(t.a.srv, ND_EV_LISTENING, c4_cb1, &t), 0);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,cb1,close,listening,cb2,close");
    th_finish(t.loop);
}
END_TEST

/* case 4: held across its 'close', the server listens again later, from a timer. */
static void c4t_timer(void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "timer");
    ck_assert_int_eq(nd_server_listening(t->a.srv), 0);
    ck_assert_int_eq(nd_server_listen(t->a.srv, 0, "127.0.0.1", 0), 0);
    nd_server_release(t->a.srv);
}

static void c4t_on_close(srec_t *s)
{
    if (s->closes == 1)
        th_timer(s->t->loop, 30, c4t_timer, s->t);
}

START_TEST(test_relisten_held_from_timer)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    t.a.on_close = c4t_on_close;
    nd_server_hold(t.a.srv);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close,timer,listening,close");
    th_finish(t.loop);
}
END_TEST

/* Lifetime: a held server survives its 'close' until released. */
static void hold_timer(void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "timer");
    ck_assert_int_eq(nd_loop_handle_count(t->loop), 1);
    ck_assert_int_eq(nd_server_listening(t->a.srv), 0);
    ck_assert_int_eq(nd_server_close(t->a.srv, NULL, NULL), ND_ENOTRUNNING);
    ck_assert_ptr_eq(nd_server_loop(t->a.srv), t->loop);
    nd_server_release(t->a.srv);
}

static void hold_on_close(srec_t *s)
{
    th_timer(s->t->loop, 20, hold_timer, s->t);
}

START_TEST(test_hold_keeps_closed_server)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    t.a.on_close = hold_on_close;
    nd_server_hold(t.a.srv);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, NULL, 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close,timer");
    th_finish(t.loop);
}
END_TEST

/* case 5: host then backlog, backlog alone, defaults; the requested port is the one bound,
 * and the server accepts. */
static const struct {
    const char *host;
    int backlog;
} backlog_forms[] = {
    {NULL, 0},
    {"0.0.0.0", 127},
    {NULL, 127},
    {"127.0.0.1", -1},
};

START_TEST(test_backlog_forms)
{
    tctx_t t;
    int port = th_free_port();

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_listening_connect_tcp;
    t.a.on_connection = hk_conn_destroy_and_close;
    ck_assert_int_eq(
        nd_server_listen(t.a.srv, port, backlog_forms[_i].host, backlog_forms[_i].backlog), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,conn,close");
    ck_assert_int_eq(t.a.addr.port, port);
    ck_assert_int_eq(t.cl[0].connects, 1);
    ck_assert_int_eq(t.cl[0].closes, 1);
    th_finish(t.loop);
}
END_TEST

/* case 6: address() is ND_ENOTRUNNING before listen and set later with no callback. */
static void c6_timer(void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "timer");
    read_addr(&t->a);
    srv_close(&t->a);
}

START_TEST(test_address_without_callback)
{
    tctx_t t;
    nd_address_t a;

    tctx_init(&t);
    srec_new_ex(&t, &t.a, NULL, NULL, 0);
    ck_assert_int_eq(nd_server_address(t.a.srv, &a), ND_ENOTRUNNING);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_timer(t.loop, 100, c6_timer, &t);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "timer,close");
    ck_assert_int_eq(t.a.addr_rc, 0);
    ck_assert_int_gt(t.a.addr.port, 0);
    ck_assert_str_eq(t.a.addr.address, "127.0.0.1");
    th_finish(t.loop);
}
END_TEST

/* case 8 */
START_TEST(test_address_ipv4_loopback)
{
    tctx_t t;
    int port = th_free_port();

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, port, "127.0.0.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    ck_assert_int_eq(t.a.addr_rc, 0);
    ck_assert_str_eq(t.a.addr.address, "127.0.0.1");
    ck_assert_int_eq(t.a.addr.port, port);
    ck_assert_int_eq(t.a.addr.family, 4);
    ck_assert_str_eq(nd_family_name(t.a.addr.family), "IPv4");
    th_finish(t.loop);
}
END_TEST

/* case 8: ::1, and a family-6 client reaches it. */
static void v6_listening(srec_t *s)
{
    read_addr(s);
    ck_assert_int_eq(s->addr_rc, 0);
    client_tcp_host(s->t, "::1", 6, s->addr.port);
}

START_TEST(test_address_ipv6_loopback)
{
    tctx_t t;

    if (!have_ipv6_loopback()) {
        fprintf(stderr, "test_address_ipv6_loopback: no IPv6 loopback here, skipped\n");
        return;
    }
    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = v6_listening;
    t.a.on_connection = hk_conn_destroy_and_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "::1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,conn,close");
    ck_assert_str_eq(t.a.addr.address, "::1");
    ck_assert_int_eq(t.a.addr.family, 6);
    ck_assert_str_eq(nd_family_name(t.a.addr.family), "IPv6");
    ck_assert_int_gt(t.a.addr.port, 0);
    ck_assert_int_eq(t.cl[0].connects, 1);
    th_finish(t.loop);
}
END_TEST

/* case 9 (v0.10): no host binds 0.0.0.0 over IPv4, reachable on 127.0.0.1; _i 0 is port 0,
 * _i 1 a given port. */
START_TEST(test_host_omitted_binds_any_v4)
{
    tctx_t t;
    int port = _i == 0 ? 0 : th_free_port();

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_listening_connect_tcp;
    t.a.on_connection = hk_conn_destroy_and_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, port, NULL, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,conn,close");
    ck_assert_str_eq(t.a.addr.address, "0.0.0.0");
    ck_assert_int_eq(t.a.addr.family, 4);
    if (port)
        ck_assert_int_eq(t.a.addr.port, port);
    ck_assert_int_eq(t.cl[0].connects, 1);
    th_finish(t.loop);
}
END_TEST

/* case 10: a taken port is an async 'error' with every field, and nothing after it (no
 * 'close', as in Node). */
static const char *eaddrinuse_host;

static void c10_a_listening(srec_t *s)
{
    read_addr(s);
    ck_assert_int_eq(nd_server_listen(s->t->b.srv, s->addr.port, eaddrinuse_host, 0), 0);
}

static void c10_b_error(srec_t *s)
{
    srv_close(&s->t->a);
    hk_free(s);
}

static void run_eaddrinuse(const char *host, const char *expect_address)
{
    tctx_t t;

    eaddrinuse_host = host;
    tctx_init(&t);
    srec_new(&t, &t.a, "A");
    srec_new(&t, &t.b, "B");
    t.a.on_listening = c10_a_listening;
    t.b.on_error = c10_b_error;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, host, 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "A:listening,B:error:EADDRINUSE,A:close");
    ck_assert_int_eq(t.b.err_code, -EADDRINUSE);
    ck_assert_str_eq(t.b.err_name, "EADDRINUSE");
    ck_assert_msg(is_one_of(t.b.err_syscall, "listen", "bind"), "syscall %s", t.b.err_syscall);
    ck_assert_str_eq(t.b.err_address, expect_address);
    ck_assert_int_eq(t.b.err_port, t.a.addr.port);
    ck_assert_msg(strstr(t.b.err_message, "EADDRINUSE") != NULL, "message %s", t.b.err_message);
    ck_assert_int_eq(t.b.listening, 0);
    th_finish(t.loop);
}

START_TEST(test_eaddrinuse_second_server)
{
    run_eaddrinuse("127.0.0.1", "127.0.0.1");
}
END_TEST

/* case 10: the same with both servers on INADDR_ANY. */
START_TEST(test_eaddrinuse_any_host)
{
    run_eaddrinuse(NULL, "0.0.0.0");
}
END_TEST

/* case 10, case 95: the port is held by a socket outside the library; the bind failure is
 * turned into an asynchronous 'error' (listen() itself returns 0). */
START_TEST(test_eaddrinuse_raw_listener)
{
    tctx_t t;
    int port;
    int raw = th_raw_listen(&port);

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    ck_assert_int_eq(nd_server_listen(t.a.srv, port, "127.0.0.1", 0), 0);
    ck_assert_int_eq(t.a.errors, 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "error:EADDRINUSE");
    ck_assert_int_eq(t.a.err_code, -EADDRINUSE);
    ck_assert_int_eq(t.a.err_port, port);
    ck_assert_str_eq(t.a.err_address, "127.0.0.1");
    /* The failed server stays the application's, idle, until it is freed. */
    ck_assert_int_eq(nd_server_listening(t.a.srv), 0);
    ck_assert_int_eq(nd_loop_handle_count(t.loop), 1);
    ck_assert_int_eq(nd_server_free(t.a.srv), 0);
    ck_assert_int_eq(nd_loop_handle_count(t.loop), 0);
    close(raw);
    th_finish(t.loop);
}
END_TEST

/* case 10, case 11: the reference's retry example, as written there: on EADDRINUSE wait,
 * close (which fails: the server is not listening) and listen again once the port is free.
 * Issue 12.2: the failed server emits no 'close' and is not freed, so no hold is needed (it
 * used to be freed after a 'close', and this was a use after free). */
static void retry_timer(void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "timer");
    close(t->fd); /* the port is now free */
    t->fd = -1;
    ck_assert_int_eq(nd_server_close(t->a.srv, NULL, NULL), ND_ENOTRUNNING);
    ck_assert_int_eq(nd_server_listen(t->a.srv, t->port, "127.0.0.1", 0), 0);
}

static void retry_on_error(srec_t *s)
{
    if (strcmp(s->err_name, "EADDRINUSE") == 0)
        th_timer(s->t->loop, 50, retry_timer, s->t);
}

START_TEST(test_eaddrinuse_retry_after_timer)
{
    tctx_t t;

    tctx_init(&t);
    t.fd = th_raw_listen(&t.port);
    srec_new(&t, &t.a, NULL);
    t.a.on_error = retry_on_error;
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, t.port, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "error:EADDRINUSE,timer,listening,close");
    ck_assert_int_eq(t.a.addr.port, t.port);
    th_finish(t.loop);
}
END_TEST

/* case 11: after a listen error, listen again from inside the 'error' listener; closing it
 * there first reports ND_ENOTRUNNING and emits nothing. */
static void c11_on_error(srec_t *s)
{
    ck_assert_int_eq(nd_server_close(s->srv, NULL, NULL), ND_ENOTRUNNING);
    ck_assert_int_eq(nd_server_listen(s->srv, 0, "127.0.0.1", 0), 0);
}

START_TEST(test_relisten_after_error_in_close)
{
    tctx_t t;
    int port;
    int raw = th_raw_listen(&port);

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_error = c11_on_error;
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, port, "127.0.0.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "error:EADDRINUSE,listening,close");
    ck_assert_int_ne(t.a.addr.port, port);
    close(raw);
    th_finish(t.loop);
}
END_TEST

/* case 12 as the header has it: listen while listening (or about to) is ND_ELISTENING,
 * synchronously, and changes nothing. */
static void elistening_on_listening(srec_t *s)
{
    ck_assert_int_eq(nd_server_listen(s->srv, 0, NULL, 0), ND_ELISTENING);
    ck_assert_int_eq(nd_server_listen_path(s->srv, s->t->path, 0), ND_ELISTENING);
    hk_addr_close(s);
}

START_TEST(test_listen_while_listening_elistening)
{
    tctx_t t;

    tctx_init(&t);
    make_path(&t, "never.sock");
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = elistening_on_listening;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), ND_ELISTENING);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    ck_assert_str_eq(t.a.addr.address, "127.0.0.1");
    ck_assert(path_missing(t.path));
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* Ports outside 0..65535 are refused synchronously, leaving the server usable. */
START_TEST(test_listen_bad_port_einval)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, -1, NULL, 0), -EINVAL);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 65536, NULL, 0), -EINVAL);
    th_run(t.loop, 1000);
    ck_assert_str_eq(th_log_str(&t.log), "");
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    th_finish(t.loop);
}
END_TEST

/* case 4 (test-net-server-listen-remove-callback), issue 12.4: close() then listen() at once,
 * with no connection: 'close' comes, then 'listening' again (Node's order). */
static void relisten_cb(void *self, const nd_event_t *ev, void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "cb%d", ++t->n);
    ck_assert_int_eq(nd_server_close(t->a.srv, NULL, NULL), 0);
    if (t->n == 1) {
        ck_assert_int_eq(nd_server_once(t->a.srv, ND_EV_LISTENING, relisten_cb, t), 0);
        ck_assert_int_eq(nd_server_listen(t->a.srv, 0, "127.0.0.1", 0), 0);
    }
}

START_TEST(test_listen_right_after_close)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    ck_assert_int_eq(nd_server_once(t.a.srv, ND_EV_LISTENING, relisten_cb, &t), 0);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,cb1,close,listening,cb2,close");
    th_finish(t.loop);
}
END_TEST

/* Issue 12.4: listening again while connections drain works too. As in Node, that close()
 * then never emits 'close' (the server listens); the connection still counts, and the next
 * close() gives one 'close', which runs the first close's callback as well. */
static void drain_close_cb(void *self, const nd_event_t *ev, void *arg)
{
    th_log(&((tctx_t *)arg)->log, "closecb");
}

static void drain_count2(nd_server_t *srv, int err, int count, void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "count=%d", count);
    ck_assert_int_eq(nd_server_close(srv, drain_close_cb, t), 0);
}

static void drain_conn_close(sconn_t *c)
{
    ck_assert_int_eq(nd_server_get_connections(c->s->srv, drain_count2, c->s->t), 0);
}

static void drain_count1(nd_server_t *srv, int err, int count, void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "count=%d", count);
    nd_socket_destroy(t->a.conns[0].sock);
}

static void drain_listening(srec_t *s)
{
    if (s->listening == 1) {
        hk_listening_connect_tcp(s);
        return;
    }
    ck_assert_int_eq(nd_server_get_connections(s->srv, drain_count1, s->t), 0);
}

static void drain_connection(srec_t *s, sconn_t *c)
{
    ck_assert_int_eq(nd_server_close(s->srv, drain_close_cb, s->t), 0);
    ck_assert_int_eq(nd_server_listen(s->srv, 0, "127.0.0.1", 0), 0);
}

START_TEST(test_listen_while_closing_with_connections)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = drain_listening;
    t.a.on_connection = drain_connection;
    t.a.on_conn_close = drain_conn_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log),
                     "listening,conn,listening,count=1,count=0,close,closecb,closecb");
    ck_assert_int_eq(t.a.listening, 2);
    ck_assert_int_eq(t.cl[0].closes, 1);
    th_finish(t.loop);
}
END_TEST

/* case 13: binding an address this host does not have sends no traffic, and fails. */
static int nonlocal_bind_allowed(void)
{
    FILE *f = fopen("/proc/sys/net/ipv4/ip_nonlocal_bind", "r");
    int v = 0;

    if (f) {
        if (fscanf(f, "%d", &v) != 1)
            v = 0;
        fclose(f);
    }
    return v != 0;
}

START_TEST(test_listen_eaddrnotavail)
{
    tctx_t t;

    if (nonlocal_bind_allowed()) {
        fprintf(stderr, "test_listen_eaddrnotavail: ip_nonlocal_bind is on, skipped\n");
        return;
    }
    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 1, "1.1.1.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_int_eq(t.a.listening, 0);
    ck_assert_int_eq(t.a.errors, 1);
    ck_assert_int_eq(t.a.closes, 0);
    ck_assert_int_eq(nd_server_free(t.a.srv), 0);
    ck_assert_msg(is_one_of(t.a.err_name, "EADDRNOTAVAIL", "EACCES"), "error %s", t.a.err_name);
    ck_assert(t.a.err_code == -EADDRNOTAVAIL || t.a.err_code == -EACCES);
    ck_assert_str_eq(t.a.err_address, "1.1.1.1");
    ck_assert_int_eq(t.a.err_port, 1);
    ck_assert_msg(is_one_of(t.a.err_syscall, "listen", "bind"), "syscall %s", t.a.err_syscall);
    th_finish(t.loop);
}
END_TEST

/* case 16: close on a server that never listened is ND_ENOTRUNNING, emits nothing, and
 * its callback is never registered. */
START_TEST(test_close_never_listened_enotrunning)
{
    tctx_t t;
    int cb = 0;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_close(t.a.srv, count_cb, &cb), ND_ENOTRUNNING);
    th_run(t.loop, 1000);
    ck_assert_str_eq(th_log_str(&t.log), "");
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    ck_assert_int_eq(cb, 0);
    th_finish(t.loop);
}
END_TEST

/* case 16: a second close while closing is ND_ENOTRUNNING; 'close' still comes once. */
static int close_twice_cb1, close_twice_cb2;

static void close_twice_listening(srec_t *s)
{
    ck_assert_int_eq(nd_server_close(s->srv, count_cb, &close_twice_cb1), 0);
    ck_assert_int_eq(nd_server_close(s->srv, count_cb, &close_twice_cb2), ND_ENOTRUNNING);
}

START_TEST(test_close_twice_enotrunning)
{
    tctx_t t;

    close_twice_cb1 = close_twice_cb2 = 0;
    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = close_twice_listening;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    ck_assert_int_eq(close_twice_cb1, 1);
    ck_assert_int_eq(close_twice_cb2, 0);
    th_finish(t.loop);
}
END_TEST

/* case 15: listening is 0 before listen, 1 in 'listening', 0 in 'close'. */
static void c15_listening(srec_t *s)
{
    s->t->vals[s->t->nvals++] = nd_server_listening(s->srv);
    srv_close(s);
}

static void c15_close(srec_t *s)
{
    s->t->vals[s->t->nvals++] = nd_server_listening(s->srv);
}

START_TEST(test_listening_flag)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = c15_listening;
    t.a.on_close = c15_close;
    ck_assert_int_eq(nd_server_listening(t.a.srv), 0);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    ck_assert_int_eq(t.nvals, 2);
    ck_assert_int_eq(t.vals[0], 1);
    ck_assert_int_eq(t.vals[1], 0);
    th_finish(t.loop);
}
END_TEST

/* case 17: 'close' waits for every accepted connection and comes once. The connections
 * are destroyed one per turn so that a premature 'close' would show. */
static void c17_timer(void *arg)
{
    tctx_t *t = arg;

    ck_assert_int_eq(t->a.closes, 0);
    nd_socket_destroy(t->a.conns[0].sock);
}

static void c17_on_connection(srec_t *s, sconn_t *c)
{
    if (s->nconns == 3) {
        srv_close(s);
        th_log(&s->t->log, "close-called");
        th_timer(s->t->loop, 30, c17_timer, s->t);
    }
}

static void c17_conn_close(sconn_t *c)
{
    srec_t *s = c->s;

    th_log(&s->t->log, "sclose%d", c->idx);
    if (c->idx < 2) {
        ck_assert_int_eq(s->closes, 0);
        nd_socket_destroy(s->conns[c->idx + 1].sock);
    }
}

static void c17_on_close(srec_t *s)
{
    s->t->vals[0] = nd_server_connections(s->srv);
}

static void c17_listening(srec_t *s)
{
    read_addr(s);
    for (int i = 0; i < 3; i++)
        client_tcp(s->t, s->addr.port);
}

START_TEST(test_close_waits_for_connections)
{
    tctx_t t;
    const char *prefix = "listening,conn,conn,conn,close-called,sclose0,sclose1,";

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = c17_listening;
    t.a.on_connection = c17_on_connection;
    t.a.on_conn_close = c17_conn_close;
    t.a.on_close = c17_on_close;
    t.vals[0] = -99;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    /* the last socket's 'close' and the server's may come in either order on that turn */
    ck_assert_msg(strncmp(th_log_str(&t.log), prefix, strlen(prefix)) == 0, "log %s",
                  th_log_str(&t.log));
    ck_assert_msg(is_one_of(th_log_str(&t.log) + strlen(prefix), "sclose2,close", "close,sclose2"),
                  "log %s", th_log_str(&t.log));
    ck_assert_int_eq(t.a.closes, 1);
    ck_assert_int_eq(t.vals[0], 0);
    ck_assert_int_eq(t.client_closes, 3);
    th_finish(t.loop);
}
END_TEST

/* case 17: after close() new clients are refused at once while the existing connection
 * still carries data both ways. */
static void c17b_on_connection(srec_t *s, sconn_t *c)
{
    srv_close(s);
    th_log(&s->t->log, "close-called");
    client_tcp(s->t, s->addr.port);
}

static void c17b_client_error(client_t *c)
{
    th_log(&c->t->log, "client%d:error:%s", c->idx, c->err_name);
}

static void c17b_client_close(client_t *c)
{
    if (c->idx == 1)
        ck_assert_int_eq(nd_socket_write(c->t->cl[0].sock, "ping", 4, NULL, NULL), 1);
}

static void c17b_conn_data(sconn_t *c)
{
    if (c->rxlen == 4)
        ck_assert_int_ge(nd_socket_end(c->sock, "pong", 4), 0);
}

START_TEST(test_close_stops_accepting)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_listening_connect_tcp;
    t.a.on_connection = c17b_on_connection;
    t.a.on_conn_data = c17b_conn_data;
    t.on_client_error = c17b_client_error;
    t.on_client_close = c17b_client_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log),
                     "listening,conn,close-called,client1:error:ECONNREFUSED,close");
    ck_assert_int_eq(t.a.connections, 1);
    ck_assert_uint_eq(t.a.conns[0].rxlen, 4);
    ck_assert_int_eq(memcmp(t.a.conns[0].rx, "ping", 4), 0);
    ck_assert_uint_eq(t.cl[0].rxlen, 4);
    ck_assert_int_eq(memcmp(t.cl[0].rx, "pong", 4), 0);
    ck_assert_int_eq(t.cl[0].errors, 0);
    ck_assert_int_eq(t.cl[1].connects, 0);
    ck_assert_int_eq(t.cl[1].had_error, 1);
    th_finish(t.loop);
}
END_TEST

/* case 18: close(cb) adds a one-shot listener: after a relisten and a second close it does
 * not run again. */
static int c18_cb;

static void c18_listening(srec_t *s)
{
    if (s->listening == 1)
        ck_assert_int_eq(nd_server_close(s->srv, count_cb, &c18_cb), 0);
    else
        srv_close(s);
}

static void c18_close(srec_t *s)
{
    if (s->closes == 1)
        ck_assert_int_eq(nd_server_listen(s->srv, 0, "127.0.0.1", 0), 0);
}

START_TEST(test_close_cb_one_shot)
{
    tctx_t t;

    c18_cb = 0;
    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = c18_listening;
    t.a.on_close = c18_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close,listening,close");
    ck_assert_int_eq(c18_cb, 1);
    th_finish(t.loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* ref / unref                                                                           */
/* ------------------------------------------------------------------------------------ */

/* case 19: an unref'd listening server lets nd_loop_run() return; it is still listening
 * and can be closed afterwards. */
START_TEST(test_unref_lets_loop_return)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    nd_server_unref(t.a.srv);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening");
    ck_assert_int_eq(nd_server_listening(t.a.srv), 1);
    ck_assert_int_eq(nd_loop_alive_count(t.loop), 0);
    srv_close(&t.a);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    th_finish(t.loop);
}
END_TEST

/* case 19: unref twice then ref once: ref and unref are flags, not counts, so the server
 * keeps the loop running until a timer that does not itself keep it alive closes it. */
static void refcheck_listening(srec_t *s)
{
    s->t->vals[0] = nd_loop_alive_count(s->t->loop);
}

START_TEST(test_unref_then_ref_keeps_alive)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = refcheck_listening;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    nd_server_unref(t.a.srv);
    nd_server_unref(t.a.srv);
    nd_server_ref(t.a.srv);
    struct event *ev = raw_timer(&t, 100);
    th_run(t.loop, 3000);
    event_free(ev);
    ck_assert_str_eq(th_log_str(&t.log), "listening,timer,close");
    ck_assert_int_ge(t.vals[0], 1);
    th_finish(t.loop);
}
END_TEST

/* case 20 as the header has it: unref before listen is remembered. */
START_TEST(test_unref_before_listen_remembered)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = refcheck_listening;
    nd_server_unref(t.a.srv);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening");
    ck_assert_int_eq(t.vals[0], 0);
    ck_assert_int_eq(nd_server_listening(t.a.srv), 1);
    srv_close(&t.a);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    th_finish(t.loop);
}
END_TEST

/* unref then ref before listen: the last call wins and the server is ref'd. */
START_TEST(test_unref_ref_before_listen)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = refcheck_listening;
    nd_server_unref(t.a.srv);
    nd_server_unref(t.a.srv);
    nd_server_ref(t.a.srv);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    struct event *ev = raw_timer(&t, 100);
    th_run(t.loop, 3000);
    event_free(ev);
    ck_assert_str_eq(th_log_str(&t.log), "listening,timer,close");
    ck_assert_int_ge(t.vals[0], 1);
    th_finish(t.loop);
}
END_TEST

/* The unref survives a close and a relisten of the same server. */
static void unref_relisten_close(srec_t *s)
{
    if (s->closes == 1)
        ck_assert_int_eq(nd_server_listen(s->srv, 0, "127.0.0.1", 0), 0);
}

static void unref_relisten_listening(srec_t *s)
{
    if (s->listening == 1)
        srv_close(s);
    else
        s->t->vals[0] = nd_loop_alive_count(s->t->loop);
}

START_TEST(test_unref_survives_relisten)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = unref_relisten_listening;
    t.a.on_close = unref_relisten_close;
    t.vals[0] = -1;
    nd_server_unref(t.a.srv);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close,listening");
    ck_assert_int_eq(t.vals[0], 0);
    srv_close(&t.a);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close,listening,close");
    th_finish(t.loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* B. Connection accounting                                                              */
/* ------------------------------------------------------------------------------------ */

/* case 21: an accepted socket knows its server; a client socket has none. */
static void c21_on_connection(srec_t *s, sconn_t *c)
{
    ck_assert_ptr_eq(nd_socket_server(c->sock), s->srv);
    s->t->vals[0] = nd_server_connections(s->srv);
    nd_socket_destroy(c->sock);
}

static void c21_conn_close(sconn_t *c)
{
    srv_close(c->s);
}

static void c21_client_connect(client_t *c)
{
    c->t->vals[1] = nd_socket_server(c->sock) == NULL;
}

START_TEST(test_socket_server_is_server)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_listening_connect_tcp;
    t.a.on_connection = c21_on_connection;
    t.a.on_conn_close = c21_conn_close;
    t.on_client_connect = c21_client_connect;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,conn,close");
    ck_assert_int_eq(t.vals[0], 1);
    ck_assert_int_eq(t.vals[1], 1);
    ck_assert_int_eq(t.cl[0].closes, 1);
    th_finish(t.loop);
}
END_TEST

/* case 22: maxConnections 10, 20 clients one after another. The accepted ten stay open, so
 * the first ten clients to close must be the rejected ones; then the accepted ones are
 * let go. */
#define C22_N 20
#define C22_MAX 10

static void c22_on_connection(srec_t *s, sconn_t *c)
{
    ck_assert_int_eq(nd_socket_write(c->sock, "hello", 5, NULL, NULL), 1);
}

static void c22_client_connect(client_t *c)
{
    if (c->idx + 1 < C22_N)
        client_tcp(c->t, c->t->port);
}

static void c22_client_close(client_t *c)
{
    tctx_t *t = c->t;

    t->vals[t->nvals++] = c->idx;
    if (t->nvals == C22_N - C22_MAX)
        destroy_open_conns(&t->a);
    if (t->nvals == C22_N)
        srv_close(&t->a);
}

static void c22_listening(srec_t *s)
{
    read_addr(s);
    s->t->port = s->addr.port;
    client_tcp(s->t, s->t->port);
}

START_TEST(test_max_connections_10_of_20)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    nd_server_set_max_connections(t.a.srv, C22_MAX);
    t.a.on_listening = c22_listening;
    t.a.on_connection = c22_on_connection;
    t.on_client_connect = c22_client_connect;
    t.on_client_close = c22_client_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 5000);
    ck_assert_int_eq(t.a.connections, C22_MAX);
    ck_assert_int_eq(t.ncl, C22_N);
    ck_assert_int_eq(t.nvals, C22_N);
    for (int i = 0; i < C22_N; i++) {
        ck_assert_int_eq(t.cl[i].closes, 1);
        if (i < C22_MAX) {
            ck_assert_uint_eq(t.cl[i].rxlen, 5);
            ck_assert_int_eq(memcmp(t.cl[i].rx, "hello", 5), 0);
        } else {
            ck_assert_uint_eq(t.cl[i].rxlen, 0);
        }
    }
    for (int i = 0; i < C22_N - C22_MAX; i++)
        ck_assert_msg(t.vals[i] >= C22_MAX, "close #%d was client %d, which was accepted", i,
                      t.vals[i]);
    ck_assert_int_eq(t.a.closes, 1);
    th_finish(t.loop);
}
END_TEST

/* case 23: with maxConnections 1, closing the one connection makes room for the next. */
static void c23_start(tctx_t *t)
{
    client_tcp(t, t->port);
}

static void c23_client_connect(client_t *c)
{
    char b[4];

    snprintf(b, sizeof(b), "%d", c->idx);
    /* a rejected client may see its write fail: only the server side is asserted */
    nd_socket_write(c->sock, b, 1, NULL, NULL);
}

static void c23_client_close(client_t *c)
{
    tctx_t *t = c->t;

    /* a rejected client is gone: end the accepted one to free the slot */
    if (c->idx == 1)
        nd_socket_destroy(t->cl[0].sock);
    else if (c->idx == 3)
        nd_socket_destroy(t->cl[2].sock);
}

static void c23_conn_data(sconn_t *c)
{
    th_log(&c->s->t->log, "recv:%.*s", (int)c->rxlen, c->rx);
    /* the accepted client's byte has arrived: now try one that must be rejected */
    c23_start(c->s->t);
}

static void c23_conn_close(sconn_t *c)
{
    if (c->idx == 0)
        c23_start(c->s->t);
    else
        srv_close(c->s);
}

static void c23_listening(srec_t *s)
{
    read_addr(s);
    s->t->port = s->addr.port;
    c23_start(s->t);
}

START_TEST(test_max_connections_close_makes_room)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    nd_server_set_max_connections(t.a.srv, 1);
    t.a.on_listening = c23_listening;
    t.a.on_conn_data = c23_conn_data;
    t.a.on_conn_close = c23_conn_close;
    t.on_client_connect = c23_client_connect;
    t.on_client_close = c23_client_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 5000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,conn,recv:0,conn,recv:2,close");
    ck_assert_int_eq(t.ncl, 4);
    ck_assert_int_eq(t.a.connections, 2);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(t.cl[i].closes, 1);
    /* the rejected ones were ended or reset by the server, never served */
    ck_assert_int_ge(t.cl[1].ends + t.cl[1].errors, 1);
    ck_assert_int_ge(t.cl[3].ends + t.cl[3].errors, 1);
    ck_assert_uint_eq(t.cl[1].rxlen, 0);
    ck_assert_uint_eq(t.cl[3].rxlen, 0);
    th_finish(t.loop);
}
END_TEST

/* maxConnections reads back; the default is unlimited (0). */
START_TEST(test_max_connections_getter)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    ck_assert_int_eq(nd_server_max_connections(t.a.srv), 0);
    nd_server_set_max_connections(t.a.srv, 5);
    ck_assert_int_eq(nd_server_max_connections(t.a.srv), 5);
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    ck_assert_int_eq(nd_server_max_connections(t.a.srv), 5);
    nd_server_set_max_connections(t.a.srv, 0);
    ck_assert_int_eq(nd_server_max_connections(t.a.srv), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    th_finish(t.loop);
}
END_TEST

/* A limit set back to 0 (_i 0) or a negative one (_i 1) is unlimited again. */
static void unlimited_on_connection(srec_t *s, sconn_t *c)
{
    if (s->nconns == 3) {
        destroy_open_conns(s);
        srv_close(s);
    }
}

static void unlimited_listening(srec_t *s)
{
    read_addr(s);
    for (int i = 0; i < 3; i++)
        client_tcp(s->t, s->addr.port);
}

START_TEST(test_max_connections_nonpositive_unlimited)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    nd_server_set_max_connections(t.a.srv, 1);
    nd_server_set_max_connections(t.a.srv, _i == 0 ? 0 : -1);
    t.a.on_listening = unlimited_listening;
    t.a.on_connection = unlimited_on_connection;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,conn,conn,conn,close");
    ck_assert_int_eq(t.client_closes, 3);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(t.cl[i].errors, 0);
    th_finish(t.loop);
}
END_TEST

/* case 24: destroy twice counts once: 10, then 9 and stays 9. */
#define C24_N 10

static void c24_gc(nd_server_t *srv, int err, int count, void *arg)
{
    tctx_t *t = arg;

    ck_assert_ptr_eq(srv, t->a.srv);
    th_log(&t->log, "gc:%d:%d", err, count);
    srv_close(&t->a);
    destroy_open_conns(&t->a);
}

static void c24_conn_close(sconn_t *c)
{
    tctx_t *t = c->s->t;

    if (c->idx == 0) {
        t->vals[2] = nd_server_connections(c->s->srv);
        ck_assert_int_eq(nd_server_get_connections(c->s->srv, c24_gc, t), 0);
    }
}

static void c24_on_connection(srec_t *s, sconn_t *c)
{
    if (s->nconns < C24_N)
        return;
    ck_assert_int_eq(nd_server_connections(s->srv), C24_N);
    nd_socket_destroy(s->conns[0].sock);
    s->t->vals[0] = nd_server_connections(s->srv);
    nd_socket_destroy(s->conns[0].sock);
    s->t->vals[1] = nd_server_connections(s->srv);
}

static void c24_listening(srec_t *s)
{
    read_addr(s);
    for (int i = 0; i < C24_N; i++)
        client_tcp(s->t, s->addr.port);
}

START_TEST(test_destroy_twice_counts_once)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = c24_listening;
    t.a.on_connection = c24_on_connection;
    t.a.on_conn_close = c24_conn_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 5000);
    /* Issue 12.11: as in Node (test-net-stream), destroy() lowers the count at once, 10 to
     * 9, and a second destroy() changes nothing; it stays 9 in that socket's 'close'. */
    ck_assert_int_eq(t.vals[0], C24_N - 1);
    ck_assert_int_eq(t.vals[1], C24_N - 1);
    ck_assert_int_eq(t.vals[2], C24_N - 1);
    ck_assert_int_eq(t.a.conns[0].closes, 1);
    ck_assert_msg(strstr(th_log_str(&t.log), "gc:0:9") != NULL, "log %s", th_log_str(&t.log));
    ck_assert_int_eq(t.a.closes, 1);
    ck_assert_int_eq(t.client_closes, C24_N);
    th_finish(t.loop);
}
END_TEST

/* case 25: getConnections calls back on a later turn with the live count. */
static void c25_gc(nd_server_t *srv, int err, int count, void *arg)
{
    tctx_t *t = arg;

    ck_assert_msg(!t->in_call, "getConnections called back from inside the call");
    th_log(&t->log, "gc:%d:%d", err, count);
    if (count == 0) {
        client_tcp(t, t->a.addr.port);
        client_tcp(t, t->a.addr.port);
    } else {
        srv_close(&t->a);
        destroy_open_conns(&t->a);
    }
}

static void c25_get(srec_t *s)
{
    s->t->in_call = 1;
    ck_assert_int_eq(nd_server_get_connections(s->srv, c25_gc, s->t), 0);
    s->t->in_call = 0;
}

static void c25_listening(srec_t *s)
{
    read_addr(s);
    c25_get(s);
}

static void c25_on_connection(srec_t *s, sconn_t *c)
{
    if (s->nconns == 2)
        c25_get(s);
}

START_TEST(test_get_connections_async)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = c25_listening;
    t.a.on_connection = c25_on_connection;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,gc:0:0,conn,conn,gc:0:2,close");
    ck_assert_int_eq(t.client_closes, 2);
    th_finish(t.loop);
}
END_TEST

/* case 25: even a server that never listened answers, later, with 0; the pending answer
 * keeps the loop running. */
static void c25b_gc(nd_server_t *srv, int err, int count, void *arg)
{
    tctx_t *t = arg;

    ck_assert_msg(!t->in_call, "getConnections called back from inside the call");
    th_log(&t->log, "gc:%d:%d", err, count);
    ck_assert_int_eq(nd_server_listen(srv, 0, "127.0.0.1", 0), 0);
}

START_TEST(test_get_connections_not_listening)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    t.in_call = 1;
    ck_assert_int_eq(nd_server_get_connections(t.a.srv, c25b_gc, &t), 0);
    t.in_call = 0;
    ck_assert_str_eq(th_log_str(&t.log), "");
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "gc:0:0,listening,close");
    th_finish(t.loop);
}
END_TEST

/* case 27: on one loop the connections property is the live count, never -1 (null). */
static void c27_on_connection(srec_t *s, sconn_t *c)
{
    tctx_t *t = s->t;

    t->vals[t->nvals++] = nd_server_connections(s->srv);
    if (s->nconns == 3)
        nd_socket_destroy(s->conns[0].sock);
}

static void c27_conn_close(sconn_t *c)
{
    tctx_t *t = c->s->t;

    t->vals[t->nvals++] = nd_server_connections(c->s->srv);
    if (c->idx < 2)
        nd_socket_destroy(c->s->conns[c->idx + 1].sock);
    else
        srv_close(c->s);
}

static void c27_on_close(srec_t *s)
{
    s->t->vals[s->t->nvals++] = nd_server_connections(s->srv);
}

static void c27_listening(srec_t *s)
{
    s->t->vals[s->t->nvals++] = nd_server_connections(s->srv);
    read_addr(s);
    for (int i = 0; i < 3; i++)
        client_tcp(s->t, s->addr.port);
}

START_TEST(test_connections_property)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = c27_listening;
    t.a.on_connection = c27_on_connection;
    t.a.on_conn_close = c27_conn_close;
    t.a.on_close = c27_on_close;
    ck_assert_int_eq(nd_server_connections(t.a.srv), 0);
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_int_eq(t.nvals, 8);
    ck_assert_int_eq(t.vals[0], 0); /* listening */
    ck_assert_int_eq(t.vals[1], 1); /* connections */
    ck_assert_int_eq(t.vals[2], 2);
    ck_assert_int_eq(t.vals[3], 3);
    /* inside each socket's 'close' the count is 3 - closed so far, or that plus the one
     * closing if the library lowers it after the listeners */
    ck_assert_msg(t.vals[4] == 2 || t.vals[4] == 3, "first close: %d", t.vals[4]);
    ck_assert_msg(t.vals[5] == 1 || t.vals[5] == 2, "second close: %d", t.vals[5]);
    ck_assert_msg(t.vals[6] == 0 || t.vals[6] == 1, "third close: %d", t.vals[6]);
    ck_assert_int_eq(t.vals[7], 0); /* server 'close' */
    th_finish(t.loop);
}
END_TEST

/* 'connection' listeners run in the order added, starting with the one given to
 * nd_server_new; off() removes one, and a once listener runs for one connection only. */
static void lo_first(void *self, const nd_event_t *ev, void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "first");
    t->vals[t->nvals++] = ev->socket == NULL;
}

static void lo_once(void *self, const nd_event_t *ev, void *arg)
{
    th_log(&((tctx_t *)arg)->log, "once");
}

static void lo_removed(void *self, const nd_event_t *ev, void *arg)
{
    th_log(&((tctx_t *)arg)->log, "removed");
}

static void lo_client_close(client_t *c)
{
    if (c->idx == 0)
        client_tcp(c->t, c->t->port);
}

static void lo_on_connection(srec_t *s, sconn_t *c)
{
    nd_socket_destroy(c->sock);
    if (s->nconns == 2)
        srv_close(s);
}

static void lo_listening(srec_t *s)
{
    read_addr(s);
    s->t->port = s->addr.port;
    client_tcp(s->t, s->t->port);
}

START_TEST(test_connection_listener_order)
{
    tctx_t t;

    tctx_init(&t);
    /* built by hand: lo_first must be the constructor's listener */
    t.a.t = &t;
    t.a.addr_rc = 1;
    t.a.srv = nd_server_new(t.loop, NULL, lo_first, &t);
    ck_assert_ptr_nonnull(t.a.srv);
    ck_assert_int_eq(nd_server_on(t.a.srv, ND_EV_CONNECTION, lo_removed, &t), 0);
    ck_assert_int_eq(nd_server_on(t.a.srv, ND_EV_CONNECTION, srv_on_connection, &t.a), 0);
    ck_assert_int_eq(nd_server_once(t.a.srv, ND_EV_CONNECTION, lo_once, &t), 0);
    ck_assert_int_eq(nd_server_off(t.a.srv, ND_EV_CONNECTION, lo_removed, &t), 0);
    ck_assert_int_eq(nd_server_off(t.a.srv, ND_EV_CONNECTION, lo_removed, &t), -ENOENT);
    ck_assert_int_eq(nd_server_on(t.a.srv, ND_EV_LISTENING, srv_on_listening, &t.a), 0);
    ck_assert_int_eq(nd_server_on(t.a.srv, ND_EV_CLOSE, srv_on_close, &t.a), 0);
    t.a.on_listening = lo_listening;
    t.a.on_connection = lo_on_connection;
    t.on_client_close = lo_client_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,first,conn,once,first,conn,close");
    ck_assert_int_eq(t.vals[0], 0);
    ck_assert_int_eq(t.vals[1], 0);
    th_finish(t.loop);
}
END_TEST

/* allowHalfOpen on the server: an accepted socket stays writable after the peer's FIN. */
static void half_client_connect(client_t *c)
{
    ck_assert_int_ge(nd_socket_end(c->sock, "x", 1), 0);
}

/* Only with allowHalfOpen is the accepted side still ours to write after 'end'. */
static void half_conn_end(sconn_t *c)
{
    th_log(&c->s->t->log, "send");
    if (c->s->t->step) {
        c->s->t->vals[0] = nd_socket_writable(c->sock);
        ck_assert_int_ge(nd_socket_end(c->sock, "late", 4), 0);
    }
}

static void half_conn_close(sconn_t *c)
{
    srv_close(c->s);
}

static void run_half_open(int allow, const char *expect_log, const char *expect_rx)
{
    tctx_t t;
    nd_server_options_t o = {.allow_half_open = allow};

    tctx_init(&t);
    t.step = allow;
    srec_new_ex(&t, &t.a, NULL, &o, 1);
    t.a.on_listening = hk_listening_connect_tcp;
    t.a.on_conn_end = half_conn_end;
    t.a.on_conn_close = half_conn_close;
    t.on_client_connect = half_client_connect;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), expect_log);
    ck_assert_uint_eq(t.a.conns[0].rxlen, 1);
    ck_assert_int_eq(t.a.conns[0].rx[0], 'x');
    ck_assert_uint_eq(t.cl[0].rxlen, strlen(expect_rx));
    ck_assert_int_eq(memcmp(t.cl[0].rx, expect_rx, t.cl[0].rxlen), 0);
    ck_assert_int_eq(t.cl[0].ends, 1);
    ck_assert_int_eq(t.cl[0].closes, 1);
    ck_assert_int_eq(t.cl[0].had_error, 0);
    if (allow)
        ck_assert_int_eq(t.vals[0], 1);
    th_finish(t.loop);
}

START_TEST(test_server_allow_half_open)
{
    run_half_open(1, "listening,conn,send,close", "late");
}
END_TEST

/* Without it the accepted socket ends its side by itself on the peer's FIN. */
START_TEST(test_server_default_not_half_open)
{
    run_half_open(0, "listening,conn,send,close", "");
}
END_TEST

/* The loop and data accessors. */
START_TEST(test_server_accessors)
{
    tctx_t t;
    int cookie;

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    ck_assert_ptr_eq(nd_server_loop(t.a.srv), t.loop);
    ck_assert_ptr_null(nd_server_data(t.a.srv));
    nd_server_set_data(t.a.srv, &cookie);
    ck_assert_ptr_eq(nd_server_data(t.a.srv), &cookie);
    ck_assert_int_eq(nd_server_listening(t.a.srv), 0);
    ck_assert_int_eq(nd_server_connections(t.a.srv), 0);
    ck_assert_int_eq(nd_loop_handle_count(t.loop), 1);
    /* a server that never listened keeps nothing alive */
    ck_assert_int_eq(nd_loop_alive_count(t.loop), 0);
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    th_finish(t.loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* J. Unix sockets, fds and handles                                                      */
/* ------------------------------------------------------------------------------------ */

/* case 90, case 94: listen on a path, address() is the path, a client talks to it, close
 * removes the file. */
static void up_listening(srec_t *s)
{
    read_addr(s);
    s->t->vals[0] = is_socket_file(s->t->path);
    client_path(s->t, s->t->path);
}

static void up_on_connection(srec_t *s, sconn_t *c)
{
    ck_assert_int_eq(nd_socket_write(c->sock, "hi", 2, NULL, NULL), 1);
}

static void up_client_data(client_t *c)
{
    if (c->rxlen == 2)
        ck_assert_int_ge(nd_socket_end(c->sock, NULL, 0), 0);
}

static void close_server_on_conn_close(sconn_t *c)
{
    srv_close(c->s);
}

START_TEST(test_unix_listen_connect)
{
    tctx_t t;

    tctx_init(&t);
    make_path(&t, "s.sock");
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = up_listening;
    t.a.on_connection = up_on_connection;
    t.a.on_conn_close = close_server_on_conn_close;
    t.on_client_data = up_client_data;
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, t.path, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,conn,close");
    ck_assert_int_eq(t.a.addr_rc, 0);
    ck_assert_str_eq(t.a.addr.address, t.path);
    ck_assert_int_eq(t.a.addr.family, 0);
    ck_assert_int_eq(t.a.addr.port, 0);
    ck_assert_ptr_null(nd_family_name(t.a.addr.family));
    ck_assert_int_eq(t.vals[0], 1);
    ck_assert_uint_eq(t.cl[0].rxlen, 2);
    ck_assert_int_eq(memcmp(t.cl[0].rx, "hi", 2), 0);
    ck_assert_int_eq(t.cl[0].closes, 1);
    ck_assert_int_eq(t.cl[0].had_error, 0);
    ck_assert(path_missing(t.path));
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* case 90: connect to a path in every form: nd_connect with and without a callback, and
 * nd_socket_connect on a new socket, with port and host ignored because a path is set. */
#define UF_N 4
static int uf_cb;

static void uf_connect_cb(void *self, const nd_event_t *ev, void *arg)
{
    uf_cb++;
}

static void uf_listening(srec_t *s)
{
    tctx_t *t = s->t;
    nd_connect_options_t o;
    nd_socket_options_t so;
    nd_socket_t *sock;

    memset(&o, 0, sizeof(o));
    o.path = t->path;
    client_attach(t, nd_connect(t->loop, &o, uf_connect_cb, NULL));
    client_attach(t, nd_connect(t->loop, &o, NULL, NULL));

    sock = nd_socket_new(t->loop, NULL);
    ck_assert_ptr_nonnull(sock);
    client_attach(t, sock);
    ck_assert_int_eq(nd_socket_connect(sock, &o), 0);

    nd_socket_options_init(&so);
    sock = nd_socket_new(t->loop, &so);
    ck_assert_ptr_nonnull(sock);
    client_attach(t, sock);
    o.port = 70000;
    o.host = "not an address";
    ck_assert_int_eq(nd_socket_connect(sock, &o), 0);
}

static void uf_on_connection(srec_t *s, sconn_t *c)
{
    ck_assert_int_ge(nd_socket_end(c->sock, "ok", 2), 0);
}

static void uf_conn_close(sconn_t *c)
{
    if (c->s->conn_closes == UF_N)
        srv_close(c->s);
}

START_TEST(test_unix_connect_forms)
{
    tctx_t t;

    uf_cb = 0;
    tctx_init(&t);
    make_path(&t, "forms.sock");
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = uf_listening;
    t.a.on_connection = uf_on_connection;
    t.a.on_conn_close = uf_conn_close;
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, t.path, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_int_eq(t.a.connections, UF_N);
    ck_assert_int_eq(uf_cb, 1);
    for (int i = 0; i < UF_N; i++) {
        ck_assert_int_eq(t.cl[i].connects, 1);
        ck_assert_int_eq(t.cl[i].errors, 0);
        ck_assert_uint_eq(t.cl[i].rxlen, 2);
        ck_assert_int_eq(memcmp(t.cl[i].rx, "ok", 2), 0);
        ck_assert_int_eq(t.cl[i].closes, 1);
    }
    ck_assert_int_eq(t.a.closes, 1);
    ck_assert(path_missing(t.path));
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* case 90: listen on a path with a 'listening' listener (_i 0), a one-shot one (_i 1), or
 * none at all (_i 2, where a timer connects instead). */
static void ulf_once(void *self, const nd_event_t *ev, void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "once");
    client_path(t, t->path);
}

static void ulf_timer(void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "timer");
    client_path(t, t->path);
}

START_TEST(test_unix_listen_forms)
{
    tctx_t t;
    static const char *expect[] = {"listening,conn,close", "once,conn,close", "timer,conn,close"};

    tctx_init(&t);
    make_path(&t, "lf.sock");
    srec_new_ex(&t, &t.a, NULL, NULL, _i == 0);
    t.a.on_listening = hk_listening_connect_path;
    t.a.on_connection = hk_conn_destroy_and_close;
    if (_i == 1)
        ck_assert_int_eq(nd_server_once(t.a.srv, ND_EV_LISTENING, ulf_once, &t), 0);
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, t.path, _i == 2 ? 1 : 0), 0);
    if (_i == 2)
        th_timer(t.loop, 50, ulf_timer, &t);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), expect[_i]);
    ck_assert_int_eq(t.cl[0].connects, 1);
    ck_assert_int_eq(t.cl[0].closes, 1);
    ck_assert(path_missing(t.path));
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* case 92: a path in a directory that does not exist: 'error' with address = path, no
 * 'listening', no 'close'. */
START_TEST(test_unix_missing_directory)
{
    tctx_t t;
    char path[600];

    tctx_init(&t);
    make_path(&t, "nope");
    snprintf(path, sizeof(path), "%s/fadfa.sock", t.path);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, path, 0), 0);
    th_run(t.loop, 2000);
    ck_assert_int_eq(t.a.listening, 0);
    ck_assert_int_eq(t.a.errors, 1);
    ck_assert_int_eq(t.a.closes, 0);
    ck_assert_int_eq(nd_server_free(t.a.srv), 0);
    /* libuv maps this ENOENT to EACCES; either is the same failure */
    ck_assert_msg(is_one_of(t.a.err_name, "ENOENT", "EACCES"), "error %s", t.a.err_name);
    ck_assert(t.a.err_code == -ENOENT || t.a.err_code == -EACCES);
    ck_assert_str_eq(t.a.err_address, path);
    ck_assert_msg(is_one_of(t.a.err_syscall, "listen", "bind"), "syscall %s", t.a.err_syscall);
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* case 96, issue 12.6: the socket file of a dead process, bound only (_i 0) or bound and
 * listening (_i 1) before its descriptor was closed without unlink, is EADDRINUSE, as in
 * Node, and stays where it is: removing a leftover is the caller's decision, and
 * nd_unix_path_probe tells it that nobody answers there. */
START_TEST(test_unix_leftover_socket_eaddrinuse)
{
    tctx_t t;

    tctx_init(&t);
    make_path(&t, "stale.sock");
    close(raw_unix_bind(t.path, _i == 0 ? 0 : 5));
    ck_assert(is_socket_file(t.path));
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    t.a.on_error = hk_free;
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, t.path, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "error:EADDRINUSE");
    ck_assert_str_eq(t.a.err_address, t.path);
    ck_assert(is_socket_file(t.path));
    ck_assert_int_eq(nd_unix_path_probe(t.path), 0);
    unlink(t.path);
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* case 96: a live server's path is EADDRINUSE; the failed server leaves the live one's
 * file alone, and the live one still serves. */
static void ul_a_listening(srec_t *s)
{
    ck_assert_int_eq(nd_server_listen_path(s->t->b.srv, s->t->path, 0), 0);
}

static void ul_b_error(srec_t *s)
{
    s->t->vals[0] = is_socket_file(s->t->path);
    client_path(s->t, s->t->path);
    hk_free(s);
}

START_TEST(test_unix_live_server_eaddrinuse)
{
    tctx_t t;

    tctx_init(&t);
    make_path(&t, "live.sock");
    srec_new(&t, &t.a, "A");
    srec_new(&t, &t.b, "B");
    t.a.on_listening = ul_a_listening;
    t.a.on_connection = hk_conn_destroy_and_close;
    t.b.on_error = ul_b_error;
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, t.path, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "A:listening,B:error:EADDRINUSE,A:conn,A:close");
    ck_assert_int_eq(t.b.err_code, -EADDRINUSE);
    ck_assert_str_eq(t.b.err_address, t.path);
    ck_assert_int_eq(t.vals[0], 1);
    ck_assert_int_eq(t.cl[0].connects, 1);
    ck_assert(path_missing(t.path));
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* case 96: the same against a listener outside the library, which keeps its file and
 * keeps accepting. */
START_TEST(test_unix_live_raw_eaddrinuse)
{
    tctx_t t;

    tctx_init(&t);
    make_path(&t, "raw.sock");
    int raw = raw_unix_bind(t.path, 16);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    t.a.on_error = hk_free;
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, t.path, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "error:EADDRINUSE");
    ck_assert_str_eq(t.a.err_address, t.path);
    ck_assert(is_socket_file(t.path));
    ck_assert_int_eq(nd_unix_path_probe(t.path), 1);
    close(raw_unix_connect(t.path));
    close(raw);
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* case 96: a path longer than sun_path is ENAMETOOLONG, reported like any listen error. */
START_TEST(test_unix_path_too_long)
{
    tctx_t t;
    char name[201];

    tctx_init(&t);
    memset(name, 'a', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    make_path(&t, name);
    ck_assert_uint_gt(strlen(t.path), sizeof(((struct sockaddr_un *)0)->sun_path));
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    t.a.on_error = hk_free;
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, t.path, 0), 0);
    th_run(t.loop, 2000);
    /* nothing was created: clean up first so that a failure leaves no directory */
    remove_dir(&t);
    ck_assert_str_eq(th_log_str(&t.log), "error:ENAMETOOLONG");
    ck_assert_int_eq(t.a.err_code, -ENAMETOOLONG);
    ck_assert_str_eq(t.a.err_address, t.path);
    th_finish(t.loop);
}
END_TEST

/* Only a socket file is ever taken for stale: a regular file at the path is in use and
 * must survive untouched. */
START_TEST(test_unix_regular_file_not_removed)
{
    tctx_t t;
    char buf[8] = {0};

    tctx_init(&t);
    make_path(&t, "file");
    int fd = open(t.path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "keep", 4), 4);
    close(fd);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    t.a.on_error = hk_free;
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, t.path, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "error:EADDRINUSE");
    ck_assert_str_eq(t.a.err_address, t.path);
    ck_assert_int_eq(nd_unix_path_probe(t.path), -ENOTSOCK);
    fd = open(t.path, O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(read(fd, buf, sizeof(buf)), 4);
    close(fd);
    ck_assert_str_eq(buf, "keep");
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* case 94: the file is gone by 'close', so the same server can listen on the same path
 * again from inside its 'close' listener. */
static void urel_close(srec_t *s)
{
    s->t->vals[s->t->nvals++] = path_missing(s->t->path);
    if (s->closes == 1)
        ck_assert_int_eq(nd_server_listen_path(s->srv, s->t->path, 0), 0);
}

START_TEST(test_unix_close_removes_file_relisten)
{
    tctx_t t;

    tctx_init(&t);
    make_path(&t, "again.sock");
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    t.a.on_close = urel_close;
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, t.path, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close,listening,close");
    ck_assert_int_eq(t.nvals, 2);
    ck_assert_int_eq(t.vals[0], 1);
    ck_assert_int_eq(t.vals[1], 1);
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* case 93, case 94: listen on the fd of a bound unix socket: address() is the path,
 * clients connect, and close leaves the file (the server did not create it). */
START_TEST(test_unix_listen_fd_keeps_file)
{
    tctx_t t;

    tctx_init(&t);
    make_path(&t, "fd.sock");
    int fd = raw_unix_bind(t.path, 0);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_listening_connect_path;
    t.a.on_connection = hk_conn_destroy_and_close;
    ck_assert_int_eq(nd_server_listen_fd(t.a.srv, fd, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,conn,close");
    ck_assert_int_eq(t.a.addr_rc, 0);
    ck_assert_str_eq(t.a.addr.address, t.path);
    ck_assert_int_eq(t.a.addr.family, 0);
    ck_assert_int_eq(t.cl[0].connects, 1);
    ck_assert(is_socket_file(t.path));
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* case 93: listen on the fd of a TCP socket that is bound (_i 0) or already listening
 * (_i 1) outside the library. */
START_TEST(test_tcp_listen_fd)
{
    tctx_t t;
    int port;
    int fd = _i == 0 ? raw_tcp_bound(&port) : th_raw_listen(&port);

    tctx_init(&t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_listening_connect_tcp;
    t.a.on_connection = hk_conn_destroy_and_close;
    ck_assert_int_eq(nd_server_listen_fd(t.a.srv, fd, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,conn,close");
    ck_assert_int_eq(t.a.addr.port, port);
    ck_assert_str_eq(t.a.addr.address, "127.0.0.1");
    ck_assert_int_eq(t.a.addr.family, 4);
    ck_assert_int_eq(t.cl[0].connects, 1);
    th_finish(t.loop);
}
END_TEST

/* The server owns a descriptor given to listen_fd: it is closed by the time of 'close'. */
static void fdclosed_on_close(srec_t *s)
{
    errno = 0;
    s->t->vals[0] = fcntl(s->t->fd, F_GETFD) == -1 && errno == EBADF;
}

START_TEST(test_listen_fd_closed_with_server)
{
    tctx_t t;
    int port;

    tctx_init(&t);
    t.fd = raw_tcp_bound(&port);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    t.a.on_close = fdclosed_on_close;
    ck_assert_int_eq(nd_server_listen_fd(t.a.srv, t.fd, 0), 0);
    th_run(t.loop, 2000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    ck_assert_int_eq(t.a.addr.port, port);
    ck_assert_int_eq(t.vals[0], 1);
    th_finish(t.loop);
}
END_TEST

/* case 93: a descriptor that is not a socket, a regular file (_i 0) or a pipe (_i 1, as
 * stdin often is), gives an async EINVAL or ENOTSOCK, never 'listening'. */
START_TEST(test_listen_fd_not_a_socket)
{
    tctx_t t;
    int fd, p[2] = {-1, -1};

    tctx_init(&t);
    make_path(&t, "regular");
    if (_i == 0) {
        fd = open(t.path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
    } else {
        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        fd = p[0];
    }
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen_fd(t.a.srv, fd, 0), 0);
    ck_assert_int_eq(t.a.errors, 0);
    th_run(t.loop, 2000);
    ck_assert_int_eq(t.a.listening, 0);
    ck_assert_int_eq(t.a.errors, 1);
    ck_assert_int_eq(t.a.closes, 0);
    ck_assert_int_eq(nd_server_free(t.a.srv), 0);
    ck_assert_msg(is_one_of(t.a.err_name, "EINVAL", "ENOTSOCK"), "error %s", t.a.err_name);
    ck_assert(t.a.err_code == -EINVAL || t.a.err_code == -ENOTSOCK);
    if (p[1] >= 0)
        close(p[1]);
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* case 93: a server listening on another's handle shares its port; closing it leaves the
 * original listening. */
static void lh_a_listening(srec_t *s)
{
    read_addr(s);
    s->t->port = s->addr.port;
    ck_assert_int_eq(nd_server_listen_handle(s->t->b.srv, s->srv, 0), 0);
}

static void lh_b_listening(srec_t *s)
{
    read_addr(s);
    for (int i = 0; i < 4; i++)
        client_tcp(s->t, s->t->port);
}

static void lh_client_close(client_t *c)
{
    tctx_t *t = c->t;

    if (t->client_closes == 4)
        srv_close(&t->b);
}

static void lh_b_close(srec_t *s)
{
    s->t->vals[0] = nd_server_listening(s->t->a.srv);
    s->t->step = 1;
    client_tcp(s->t, s->t->port);
}

static void lh_a_connection(srec_t *s, sconn_t *c)
{
    nd_socket_destroy(c->sock);
    if (s->t->step == 1)
        srv_close(s);
}

START_TEST(test_listen_handle_tcp)
{
    tctx_t t;

    tctx_init(&t);
    srec_new(&t, &t.a, "A");
    srec_new(&t, &t.b, "B");
    t.a.on_listening = lh_a_listening;
    t.b.on_listening = lh_b_listening;
    t.a.on_connection = lh_a_connection;
    t.b.on_connection = hk_conn_destroy;
    t.b.on_close = lh_b_close;
    t.on_client_close = lh_client_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_int_eq(t.b.addr_rc, 0);
    ck_assert_int_eq(t.b.addr.port, t.a.addr.port);
    ck_assert_str_eq(t.b.addr.address, "127.0.0.1");
    /* the first four went to either server */
    ck_assert_int_eq(t.a.connections + t.b.connections, 5);
    ck_assert_int_eq(t.vals[0], 1);
    ck_assert_int_eq(t.a.closes, 1);
    ck_assert_int_eq(t.b.closes, 1);
    ck_assert_int_eq(t.client_closes, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(t.cl[i].connects, 1);
    th_finish(t.loop);
}
END_TEST

/* case 94: a server on another's unix handle does not remove the file when it closes; the
 * owner does. */
static void lhu_a_listening(srec_t *s)
{
    ck_assert_int_eq(nd_server_listen_handle(s->t->b.srv, s->srv, 0), 0);
}

static void lhu_b_listening(srec_t *s)
{
    read_addr(s);
    srv_close(s);
}

static void lhu_b_close(srec_t *s)
{
    s->t->vals[0] = is_socket_file(s->t->path);
    client_path(s->t, s->t->path);
}

START_TEST(test_listen_handle_unix_keeps_file)
{
    tctx_t t;

    tctx_init(&t);
    make_path(&t, "h.sock");
    srec_new(&t, &t.a, "A");
    srec_new(&t, &t.b, "B");
    t.a.on_listening = lhu_a_listening;
    t.a.on_connection = hk_conn_destroy_and_close;
    t.b.on_listening = lhu_b_listening;
    t.b.on_close = lhu_b_close;
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, t.path, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "A:listening,B:listening,B:close,A:conn,A:close");
    ck_assert_str_eq(t.b.addr.address, t.path);
    ck_assert_int_eq(t.vals[0], 1);
    ck_assert(path_missing(t.path));
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* case 93: listen on a socket's handle (a bound, unconnected socket made from an fd); the
 * server keeps working after that socket is destroyed. */
static nd_socket_t *sh_sock;
static int sh_sock_closes;

static void sh_sock_close(void *self, const nd_event_t *ev, void *arg)
{
    sh_sock_closes++;
}

static void sh_listening(srec_t *s)
{
    read_addr(s);
    nd_socket_destroy(sh_sock);
}

static void sh_after_sock_close(void *self, const nd_event_t *ev, void *arg)
{
    tctx_t *t = arg;

    client_tcp(t, t->a.addr.port);
}

START_TEST(test_listen_socket_handle)
{
    tctx_t t;
    int port;
    nd_socket_options_t so;

    sh_sock_closes = 0;
    tctx_init(&t);
    nd_socket_options_init(&so);
    so.fd = raw_tcp_bound(&port);
    sh_sock = nd_socket_new(t.loop, &so);
    ck_assert_ptr_nonnull(sh_sock);
    nd_socket_on(sh_sock, ND_EV_CLOSE, sh_sock_close, &t);
    nd_socket_on(sh_sock, ND_EV_CLOSE, sh_after_sock_close, &t);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = sh_listening;
    t.a.on_connection = hk_conn_destroy_and_close;
    ck_assert_int_eq(nd_server_listen_socket_handle(t.a.srv, sh_sock, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,conn,close");
    ck_assert_int_eq(t.a.addr.port, port);
    ck_assert_int_eq(sh_sock_closes, 1);
    ck_assert_int_eq(t.cl[0].connects, 1);
    th_finish(t.loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */

/* ------------------------------------------------------------------------------------ */
/* Issue 12: a failed server stays the application's; dual stack; unix paths          */
/* ------------------------------------------------------------------------------------ */

/* Issue 12.2: who frees a server that does not listen. One never listened: the application,
 * with nd_server_free() (the loop would at its end). A listening one refuses (-EBUSY): close
 * it, and the library frees it after 'close'. A failed group owner frees its members too. */
static void free_group_error(void *self, const nd_event_t *ev, void *arg)
{
    tctx_t *t = arg;

    th_log(&t->log, "error:%s", ev->error->name);
    ck_assert_int_eq(nd_server_listening(self), 0);
    ck_assert_int_eq(nd_server_free(self), 0); /* from inside its own listener */
}

START_TEST(test_free_a_server_that_does_not_listen)
{
    tctx_t t;
    int port;
    int raw = th_raw_listen(&port);

    tctx_init(&t);
    nd_server_t *idle = nd_server_new(t.loop, NULL, NULL, NULL);
    ck_assert_ptr_nonnull(idle);
    ck_assert_int_eq(nd_loop_handle_count(t.loop), 1);
    ck_assert_int_eq(nd_server_free(idle), 0);
    ck_assert_int_eq(nd_loop_handle_count(t.loop), 0);
    ck_assert_int_eq(nd_server_free(NULL), -EINVAL);

    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "127.0.0.1", 0), 0);
    ck_assert_int_eq(nd_server_free(t.a.srv), -EBUSY); /* about to listen */
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    ck_assert_int_eq(nd_loop_handle_count(t.loop), 0); /* freed after 'close' */

    /* A group whose only worker is the owner's own loop: its listen fails. */
    nd_loop_t *self = t.loop;
    nd_server_t *g = nd_server_new_group(t.loop, NULL, &self, 1, ND_BALANCE_LEASTCONN, NULL, NULL);
    ck_assert_ptr_nonnull(g);
    ck_assert_int_eq(nd_server_on(g, ND_EV_ERROR, free_group_error, &t), 0);
    ck_assert_int_eq(nd_server_listen(g, port, "127.0.0.1", 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close,error:EADDRINUSE");
    close(raw);
    th_finish(t.loop);
}
END_TEST

/* Issue 12.3: "::" is dual-stack, as in libuv: an IPv4 client is served and seen as
 * ::ffff:127.0.0.1 (case 81's dual-stack form). With ipv6_only it is refused. */
static void ds_on_connection(srec_t *s, sconn_t *c)
{
    snprintf(s->t->path, sizeof(s->t->path), "%s %s",
             nd_socket_remote_address(c->sock) ? nd_socket_remote_address(c->sock) : "(null)",
             nd_socket_remote_family(c->sock) ? nd_socket_remote_family(c->sock) : "(null)");
    nd_socket_destroy(c->sock);
}

static void ds_client_close(client_t *c)
{
    srv_close(&c->t->a);
}

START_TEST(test_listen_any_ipv6_is_dual_stack)
{
    tctx_t t;
    nd_server_options_t o = {.ipv6_only = _i};

    if (!have_ipv6_loopback()) {
        fprintf(stderr, "test_listen_any_ipv6_is_dual_stack: no IPv6, skipped\n");
        return;
    }
    tctx_init(&t);
    srec_new_ex(&t, &t.a, NULL, &o, 1);
    t.a.on_listening = hk_listening_connect_tcp; /* to 127.0.0.1 */
    t.a.on_connection = ds_on_connection;
    t.on_client_close = ds_client_close;
    ck_assert_int_eq(nd_server_listen(t.a.srv, 0, "::", 0), 0);
    th_run(t.loop, 3000);
    if (_i == 0) {
        ck_assert_str_eq(th_log_str(&t.log), "listening,conn,close");
        ck_assert_str_eq(t.path, "::ffff:127.0.0.1 IPv6");
        ck_assert_int_eq(t.cl[0].connects, 1);
    } else {
        ck_assert_str_eq(th_log_str(&t.log), "listening,close");
        ck_assert_int_eq(t.cl[0].connects, 0);
        ck_assert_str_eq(t.cl[0].err_name, "ECONNREFUSED");
    }
    th_finish(t.loop);
}
END_TEST

/* Issues 12.5 and 11.1: a live listener whose backlog is full. listen_path() returns at
 * once and reports EADDRINUSE later (it used to hang in a blocking connect), and
 * nd_unix_path_probe() calls it alive without blocking either. */
START_TEST(test_unix_busy_live_path_never_blocks)
{
    tctx_t t;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int pending[8], npending = 0;

    tctx_init(&t);
    make_path(&t, "busy.sock");
    int raw = raw_unix_bind(t.path, 1);
    ck_assert_int_eq(listen(raw, 0), 0);
    ck_assert_uint_lt(strlen(t.path), sizeof(sa.sun_path));
    memcpy(sa.sun_path, t.path, strlen(t.path) + 1);
    /* Fill its backlog: non-blocking connects until one is told EAGAIN. */
    for (;;) {
        ck_assert_int_lt(npending, 8);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
            ck_assert_int_eq(errno, EAGAIN);
            close(fd);
            break;
        }
        pending[npending++] = fd;
    }
    ck_assert_int_eq(nd_unix_path_probe(t.path), 1);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = hk_addr_close;
    t.a.on_error = hk_free;
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, t.path, 0), 0);
    ck_assert_int_eq(t.a.errors, 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "error:EADDRINUSE");
    ck_assert(is_socket_file(t.path));
    for (int i = 0; i < npending; i++)
        close(pending[i]);
    close(raw);
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* nd_unix_path_probe: what sits at a path, without blocking and without touching it. */
START_TEST(test_unix_path_probe)
{
    tctx_t t;
    char other[600];

    tctx_init(&t);
    make_path(&t, "probe.sock");
    ck_assert_int_eq(nd_unix_path_probe(t.path), -ENOENT);
    ck_assert_int_eq(nd_unix_path_probe(NULL), -EINVAL);
    ck_assert_int_eq(nd_unix_path_probe(""), -EINVAL);
    int live = raw_unix_bind(t.path, 4);
    ck_assert_int_eq(nd_unix_path_probe(t.path), 1);
    close(live); /* the file stays: a leftover nobody answers */
    ck_assert_int_eq(nd_unix_path_probe(t.path), 0);
    ck_assert(is_socket_file(t.path));
    snprintf(other, sizeof(other), "%s/file", t.dir);
    int fd = open(other, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(nd_unix_path_probe(other), -ENOTSOCK);
    unlink(other);
    remove_dir(&t);
    th_finish(t.loop);
}
END_TEST

/* Issue 11.2: close removes only the file this server created. Bound through a symlinked
 * directory that is then pointed elsewhere (_i 0), the other directory's file of the same
 * name survives and ours goes; after someone else replaced our file (_i 1), theirs stays. */
static void swap_listening(srec_t *s)
{
    tctx_t *t = s->t;
    char a[128], b[128], link[128], theirs[256];

    snprintf(a, sizeof(a), "%s/a/s.sock", t->dir);
    ck_assert(is_socket_file(a));
    if (t->n == 0) {
        snprintf(link, sizeof(link), "%s/l", t->dir);
        snprintf(b, sizeof(b), "%s/b", t->dir);
        ck_assert_int_eq(unlink(link), 0);
        ck_assert_int_eq(symlink(b, link), 0);
        snprintf(theirs, sizeof(theirs), "%s/b/s.sock", t->dir);
    } else {
        ck_assert_int_eq(unlink(a), 0);
        snprintf(theirs, sizeof(theirs), "%s", a);
    }
    t->fd = raw_unix_bind(theirs, 1);
    srv_close(s);
}

static void swap_closed(srec_t *s)
{
    tctx_t *t = s->t;
    char a[128], b[128];

    snprintf(a, sizeof(a), "%s/a/s.sock", t->dir);
    snprintf(b, sizeof(b), "%s/b/s.sock", t->dir);
    if (t->n == 0) {
        t->vals[0] = is_socket_file(b); /* theirs */
        t->vals[1] = path_missing(a);   /* ours */
    } else {
        t->vals[0] = is_socket_file(a); /* theirs, where ours was */
        t->vals[1] = 1;
    }
}

START_TEST(test_unix_close_removes_only_its_own_file)
{
    tctx_t t;
    char a[128], b[128], link[128], path[256];

    tctx_init(&t);
    t.n = _i;
    copy_str(t.dir, sizeof(t.dir), th_tmpdir());
    snprintf(a, sizeof(a), "%s/a", t.dir);
    snprintf(b, sizeof(b), "%s/b", t.dir);
    snprintf(link, sizeof(link), "%s/l", t.dir);
    ck_assert_int_eq(mkdir(a, 0700), 0);
    ck_assert_int_eq(mkdir(b, 0700), 0);
    ck_assert_int_eq(symlink(a, link), 0);
    snprintf(path, sizeof(path), "%s/s.sock", link);
    srec_new(&t, &t.a, NULL);
    t.a.on_listening = swap_listening;
    t.a.on_close = swap_closed;
    ck_assert_int_eq(nd_server_listen_path(t.a.srv, path, 0), 0);
    th_run(t.loop, 3000);
    ck_assert_str_eq(th_log_str(&t.log), "listening,close");
    ck_assert_msg(t.vals[0] == 1, "the other process's socket file was removed");
    ck_assert_msg(t.vals[1] == 1, "our own socket file was left behind");
    close(t.fd);
    snprintf(path, sizeof(path), "%s/s.sock", a);
    unlink(path);
    snprintf(path, sizeof(path), "%s/s.sock", b);
    unlink(path);
    unlink(link);
    rmdir(a);
    rmdir(b);
    rmdir(t.dir);
    th_finish(t.loop);
}
END_TEST

static TCase *tcase(Suite *s, const char *name)
{
    TCase *tc = tcase_create(name);

    tcase_set_timeout(tc, TIMEOUT_S);
    suite_add_tcase(s, tc);
    return tc;
}

static Suite *server_suite(void)
{
    Suite *s = suite_create("server");
    TCase *tc;

    tc = tcase(s, "listen");
    tcase_add_loop_test(tc, test_listen_port0_random, 0,
                        (int)(sizeof(port0_forms) / sizeof(port0_forms[0])));
    tcase_add_test(tc, test_listen_port0_distinct);
    tcase_add_test(tc, test_listening_is_async);
    tcase_add_loop_test(tc, test_backlog_forms, 0,
                        (int)(sizeof(backlog_forms) / sizeof(backlog_forms[0])));
    tcase_add_test(tc, test_address_without_callback);
    tcase_add_test(tc, test_address_ipv4_loopback);
    tcase_add_test(tc, test_address_ipv6_loopback);
    tcase_add_loop_test(tc, test_host_omitted_binds_any_v4, 0, 2);
    tcase_add_test(tc, test_listen_while_listening_elistening);
    tcase_add_test(tc, test_listen_bad_port_einval);
    tcase_add_test(tc, test_listening_flag);
    tcase_add_test(tc, test_server_accessors);

    tc = tcase(s, "listen_errors");
    tcase_add_test(tc, test_eaddrinuse_second_server);
    tcase_add_test(tc, test_eaddrinuse_any_host);
    tcase_add_test(tc, test_eaddrinuse_raw_listener);
    tcase_add_test(tc, test_eaddrinuse_retry_after_timer);
    tcase_add_test(tc, test_relisten_after_error_in_close);
    tcase_add_test(tc, test_listen_eaddrnotavail);
    tcase_add_test(tc, test_free_a_server_that_does_not_listen);
    tcase_add_loop_test(tc, test_listen_any_ipv6_is_dual_stack, 0, 2);

    tc = tcase(s, "close");
    tcase_add_loop_test(tc, test_listen_close_same_turn, 0, 2);
    tcase_add_test(tc, test_listen_close_same_turn_cancels_error);
    tcase_add_test(tc, test_relisten_from_close_listener);
    tcase_add_test(tc, test_relisten_held_from_timer);
    tcase_add_test(tc, test_hold_keeps_closed_server);
    tcase_add_test(tc, test_listen_right_after_close);
    tcase_add_test(tc, test_listen_while_closing_with_connections);
    tcase_add_test(tc, test_close_never_listened_enotrunning);
    tcase_add_test(tc, test_close_twice_enotrunning);
    tcase_add_test(tc, test_close_waits_for_connections);
    tcase_add_test(tc, test_close_stops_accepting);
    tcase_add_test(tc, test_close_cb_one_shot);

    tc = tcase(s, "ref");
    tcase_add_test(tc, test_unref_lets_loop_return);
    tcase_add_test(tc, test_unref_then_ref_keeps_alive);
    tcase_add_test(tc, test_unref_before_listen_remembered);
    tcase_add_test(tc, test_unref_ref_before_listen);
    tcase_add_test(tc, test_unref_survives_relisten);

    tc = tcase(s, "accounting");
    tcase_add_test(tc, test_socket_server_is_server);
    tcase_add_test(tc, test_max_connections_10_of_20);
    tcase_add_test(tc, test_max_connections_close_makes_room);
    tcase_add_test(tc, test_max_connections_getter);
    tcase_add_loop_test(tc, test_max_connections_nonpositive_unlimited, 0, 2);
    tcase_add_test(tc, test_destroy_twice_counts_once);
    tcase_add_test(tc, test_get_connections_async);
    tcase_add_test(tc, test_get_connections_not_listening);
    tcase_add_test(tc, test_connections_property);
    tcase_add_test(tc, test_connection_listener_order);
    tcase_add_test(tc, test_server_allow_half_open);
    tcase_add_test(tc, test_server_default_not_half_open);

    tc = tcase(s, "unix");
    tcase_add_test(tc, test_unix_listen_connect);
    tcase_add_test(tc, test_unix_connect_forms);
    tcase_add_loop_test(tc, test_unix_listen_forms, 0, 3);
    tcase_add_test(tc, test_unix_missing_directory);
    tcase_add_loop_test(tc, test_unix_leftover_socket_eaddrinuse, 0, 2);
    tcase_add_test(tc, test_unix_live_server_eaddrinuse);
    tcase_add_test(tc, test_unix_live_raw_eaddrinuse);
    tcase_add_test(tc, test_unix_path_too_long);
    tcase_add_test(tc, test_unix_regular_file_not_removed);
    tcase_add_test(tc, test_unix_close_removes_file_relisten);
    tcase_add_test(tc, test_unix_busy_live_path_never_blocks);
    tcase_add_test(tc, test_unix_path_probe);
    tcase_add_loop_test(tc, test_unix_close_removes_only_its_own_file, 0, 2);

    tc = tcase(s, "handles");
    tcase_add_test(tc, test_unix_listen_fd_keeps_file);
    tcase_add_loop_test(tc, test_tcp_listen_fd, 0, 2);
    tcase_add_test(tc, test_listen_fd_closed_with_server);
    tcase_add_loop_test(tc, test_listen_fd_not_a_socket, 0, 2);
    tcase_add_test(tc, test_listen_handle_tcp);
    tcase_add_test(tc, test_listen_handle_unix_keeps_file);
    tcase_add_test(tc, test_listen_socket_handle);

    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(server_suite());

    srunner_run_all(sr, CK_NORMAL);
    int failures = srunner_ntests_failed(sr);
    srunner_free(sr);
    return (failures == 0) ? 0 : 1;
}
