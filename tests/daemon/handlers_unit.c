/* SPDX-License-Identifier: MIT */
/*
 * The built-in handlers, driven directly: a libnetd server on the test's loop hands each
 * connection to netd_handler_connection(), and real client sockets talk to it. No daemon:
 * what is tested is echo, discard, banner and proxy themselves, and once, with two worker
 * threads, netd_handler_adopt() after a proxy pair moved between loops.
 *
 * HANDLERS_UNIT_VERBOSE=1 prints each test's event log.
 */
#include "config.h"

#include "handlers/handlers.h"
#include "harness.h"

#include <errno.h>
#include <event2/event.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MIB (1u << 20)
#define CHUNK (64u * 1024)

/* ------------------------------------------------------------------------------------ */
/* Data and checksums                                                                   */
/* ------------------------------------------------------------------------------------ */

/* FNV-1a, fed incrementally: the same value however a stream is cut into 'data' events. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}
#define FNV0 14695981039346656037ull

/* Deterministic, non-repeating bytes, so a reordered or duplicated chunk changes the sum. */
static char *make_data(size_t n, uint32_t seed)
{
    char *p = malloc(n);
    uint32_t x = seed | 1;

    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (char)x;
    }
    return p;
}

/* ------------------------------------------------------------------------------------ */
/* Fixture                                                                              */
/* ------------------------------------------------------------------------------------ */

/* What the upstream test server (behind a proxy) does with its connection. */
enum up_mode {
    UP_ECHO,         /* pipe(s, s) */
    UP_REPLY_AT_END, /* counts bytes; on 'end' (allowHalfOpen) replies "got N" and ends */
    UP_SLOW_SINK,    /* paused for a while, then reads and counts everything */
    UP_SEND_END,     /* writes `total` bytes, then end() */
    UP_SEND_DESTROY, /* writes `total` bytes, then destroy() once they are in the kernel */
    UP_BYE_FIRST     /* end("bye\n") at once (allowHalfOpen), then reads on */
};

typedef struct fx {
    nd_loop_t *loop;
    th_log_t log;            /* everything, in order */
    th_log_t clog;           /* the client's own events: their order is the contract */
    char dir[64], path[128]; /* unix upstream */
    int unix_upstream;

    /* the handler under test */
    netd_handler_cfg_t cfg;
    netd_handler_env_t env;
    nd_server_t *srv;
    int half_open;
    nd_socket_t *served;   /* the handler's socket (a proxy's client side); until 'close' */
    nd_socket_t *upstream; /* a proxy's upstream socket (upstream_opened); until 'close' */
    int opened, failed, failed_code;
    char failed_name[32];
    uint64_t served_bytes_read;
    int served_closed, upstream_closed;

    /* the upstream test server */
    nd_server_t *up;
    int up_mode;
    nd_socket_t *up_conn;
    uint64_t up_bytes;
    uint64_t up_sum;
    int up_closed;

    /* the test client */
    nd_socket_t *cli;
    char *tx;
    size_t total, sent;
    uint64_t rx_bytes, rx_sum;
    char rx[256]; /* the first bytes received, for text checks */
    int cli_ended, cli_closed, cli_had_error;
    int end_after_send;
    int cli_half_open;
    size_t send_at_end; /* bytes of tx to send once 'end' arrived (client half-open) */
    unsigned pause_client_ms;
    int proxy_not_half_open; /* the proxy's server without allowHalfOpen */

    void (*on_rx)(struct fx *f);       /* after each 'data' of the client, if set */
    void (*on_up_ready)(struct fx *f); /* upstream listening; default: start the proxy */

    /* slow upstream */
    size_t max_up_buffer;
    int stall_checked, stall_paused;
    size_t stall_buffer;
} fx_t;

static fx_t *fx_new(void)
{
    fx_t *f = calloc(1, sizeof(*f));

    ck_assert_ptr_nonnull(f);
    f->loop = th_loop_new();
    return f;
}

static void fx_done(fx_t *f)
{
    if (getenv("HANDLERS_UNIT_VERBOSE"))
        fprintf(stderr, "%s: %s; max upstream buffer %zu, at the stall %zu (paused %d)\n",
                tcase_name(), th_log_str(&f->log), f->max_up_buffer, f->stall_buffer,
                f->stall_paused);
    th_finish(f->loop);
    if (f->path[0])
        unlink(f->path);
    if (f->dir[0])
        rmdir(f->dir);
    free(f->tx);
    free(f);
}

static void on_server_closed(void *self, const nd_event_t *ev, void *arg)
{
    nd_loop_unref(arg);
}

/* The loop is kept alive until 'close' itself: a group's 'close' arrives through the
 * mailbox once its workers' connections are gone, and the mailbox keeps no loop alive
 * (a closing server does not either). */
static void close_server(fx_t *f, nd_server_t *s)
{
    if (s != NULL && nd_server_listening(s)) {
        nd_loop_ref(f->loop);
        ck_assert_int_eq(nd_server_close(s, on_server_closed, f->loop), 0);
    }
}

static void close_servers(fx_t *f)
{
    close_server(f, f->srv);
    close_server(f, f->up);
}

/* ---- the handler's server ---- */

static void on_upstream_opened(void *ctx, nd_socket_t *client, nd_socket_t *upstream);
static void on_upstream_failed(void *ctx, nd_socket_t *client, const nd_error_t *err);

static void on_served_close(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;

    f->served_bytes_read = nd_socket_bytes_read(self);
    f->served_closed++;
    th_log(&f->log, "served:close");
    f->served = NULL;
}

static void on_handler_connection(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;

    f->served = ev->socket;
    netd_handler_connection(&f->cfg, ev->socket, &f->env);
    nd_socket_on(ev->socket, ND_EV_CLOSE, on_served_close, f);
}

static void start_handler(fx_t *f, const netd_handler_ops_t *type, nd_listener_fn on_listening)
{
    nd_server_options_t o = {.allow_half_open = f->half_open};

    f->cfg.ops = type;
    f->env.upstream_opened = on_upstream_opened;
    f->env.upstream_failed = on_upstream_failed;
    f->env.ctx = f;
    f->srv = nd_server_new(f->loop, &o, on_handler_connection, f);
    ck_assert_ptr_nonnull(f->srv);
    ck_assert_int_eq(nd_server_once(f->srv, ND_EV_LISTENING, on_listening, f), 0);
    ck_assert_int_eq(nd_server_listen(f->srv, 0, "127.0.0.1", 0), 0);
}

/* ---- the test client ---- */

static void cli_pump(fx_t *f);

static void on_cli_data(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;

    if (f->rx_bytes < sizeof(f->rx) - 1) {
        size_t n = sizeof(f->rx) - 1 - f->rx_bytes;
        if (n > ev->len)
            n = ev->len;
        memcpy(f->rx + f->rx_bytes, ev->data, n);
    }
    f->rx_sum = fnv(f->rx_sum, ev->data, ev->len);
    f->rx_bytes += ev->len;
    if (f->on_rx)
        f->on_rx(f);
}

static void on_cli_end(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;

    f->cli_ended++;
    th_log(&f->log, "cli:end(%llu)", (unsigned long long)f->rx_bytes);
    th_log(&f->clog, "cli:end(%llu)", (unsigned long long)f->rx_bytes);
    if (f->send_at_end) {
        /* Our side is still open: talk now, then end. */
        f->total = f->send_at_end;
        f->send_at_end = 0;
        f->end_after_send = 1;
        cli_pump(f);
    }
}

static void on_cli_error(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;

    th_log(&f->log, "cli:error(%s)", ev->error->name);
    th_log(&f->clog, "cli:error(%s)", ev->error->name);
}

static void on_cli_close(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;

    f->cli_closed++;
    f->cli_had_error = ev->had_error;
    th_log(&f->log, "cli:close");
    th_log(&f->clog, "cli:close");
    f->cli = NULL;
    /* The test is over once its client is: the servers close after their last socket. */
    close_servers(f);
}

static void on_cli_drain(void *self, const nd_event_t *ev, void *arg)
{
    cli_pump(arg);
}

/* Writes f->tx in CHUNK pieces, waiting for 'drain' whenever write() returns 0, so the
 * client's own queue never holds more than one chunk; then ends if asked. */
static void cli_pump(fx_t *f)
{
    while (f->cli && f->sent < f->total) {
        size_t n = f->total - f->sent < CHUNK ? f->total - f->sent : CHUNK;
        int rc = nd_socket_write(f->cli, f->tx + f->sent, n, NULL, NULL);
        ck_assert_int_ge(rc, 0);
        f->sent += n;
        if (f->upstream && nd_socket_buffer_size(f->upstream) > f->max_up_buffer)
            f->max_up_buffer = nd_socket_buffer_size(f->upstream);
        if (rc == 0)
            return;
    }
    if (f->cli && f->sent == f->total && f->end_after_send) {
        f->end_after_send = 0;
        nd_socket_end(f->cli, NULL, 0);
    }
}

static void cli_resume(void *arg)
{
    fx_t *f = arg;

    th_log(&f->log, "cli:resume");
    if (f->cli)
        nd_socket_resume(f->cli);
}

static void on_cli_connect(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;

    th_log(&f->log, "cli:connect");
    th_log(&f->clog, "cli:connect");
    if (f->pause_client_ms) {
        /* A reader slower than the other end: read nothing for a while. */
        nd_socket_pause(self);
        th_timer(f->loop, f->pause_client_ms, cli_resume, f);
    }
    cli_pump(f);
}

static void connect_client(fx_t *f)
{
    nd_address_t a;
    nd_connect_options_t o = {.host = "127.0.0.1", .allow_half_open = f->cli_half_open};

    ck_assert_int_eq(nd_server_address(f->srv, &a), 0);
    o.port = a.port;
    f->rx_sum = FNV0;
    f->cli = nd_connect(f->loop, &o, on_cli_connect, f);
    ck_assert_ptr_nonnull(f->cli);
    nd_socket_on(f->cli, ND_EV_DATA, on_cli_data, f);
    nd_socket_on(f->cli, ND_EV_END, on_cli_end, f);
    nd_socket_on(f->cli, ND_EV_ERROR, on_cli_error, f);
    nd_socket_on(f->cli, ND_EV_CLOSE, on_cli_close, f);
    nd_socket_on(f->cli, ND_EV_DRAIN, on_cli_drain, f);
}

static void on_handler_listening(void *self, const nd_event_t *ev, void *arg)
{
    connect_client(arg);
}

/* ------------------------------------------------------------------------------------ */
/* echo                                                                                 */
/* ------------------------------------------------------------------------------------ */

/* _i: the server's allowHalfOpen. Either way the client's FIN comes back after the echo. */
START_TEST(test_echo_greeting_then_1mib)
{
    fx_t *f = fx_new();
    char greeting[] = "hello\r\n";

    f->cfg.greeting = greeting;
    f->half_open = _i;
    f->total = MIB;
    f->tx = make_data(f->total, 1);
    f->end_after_send = 1;
    start_handler(f, &netd_handler_echo, on_handler_listening);
    th_run(f->loop, 10000);

    uint64_t want = fnv(fnv(FNV0, greeting, 7), f->tx, f->total);
    ck_assert_uint_eq(f->rx_bytes, 7 + MIB);
    ck_assert_msg(memcmp(f->rx, greeting, 7) == 0, "greeting first, got \"%.7s\"", f->rx);
    ck_assert_msg(f->rx_sum == want, "echoed bytes differ from what was sent");
    ck_assert_str_eq(th_log_str(&f->clog), "cli:connect,cli:end(1048583),cli:close");
    ck_assert_int_eq(f->served_closed, 1);
    ck_assert_int_eq(f->cli_had_error, 0);
    fx_done(f);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* discard                                                                              */
/* ------------------------------------------------------------------------------------ */

/* _i: the server's allowHalfOpen. Either way the client's FIN gets ours back. */
START_TEST(test_discard_10mib)
{
    fx_t *f = fx_new();

    f->half_open = _i;
    f->total = 10 * MIB;
    f->tx = make_data(f->total, 2);
    f->end_after_send = 1;
    start_handler(f, &netd_handler_discard, on_handler_listening);
    th_run(f->loop, 10000);

    ck_assert_uint_eq(f->served_bytes_read, 10 * MIB);
    ck_assert_uint_eq(f->rx_bytes, 0);
    ck_assert_int_eq(f->cli_ended, 1);
    ck_assert_int_eq(f->served_closed, 1);
    ck_assert_int_eq(f->cli_had_error, 0);
    fx_done(f);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* banner                                                                               */
/* ------------------------------------------------------------------------------------ */

START_TEST(test_banner_text_then_eof)
{
    fx_t *f = fx_new();
    char text[] = "goodbye\n";

    f->cfg.text = text;
    f->half_open = _i;
    start_handler(f, &netd_handler_banner, on_handler_listening);
    th_run(f->loop, 5000);

    ck_assert_uint_eq(f->rx_bytes, strlen(text));
    ck_assert_str_eq(f->rx, text);
    /* The text, then EOF; the client's automatic end lets both sides close. */
    ck_assert_str_eq(th_log_str(&f->clog), "cli:connect,cli:end(8),cli:close");
    ck_assert_int_eq(f->served_closed, 1);
    ck_assert_int_eq(f->cli_had_error, 0);
    fx_done(f);
}
END_TEST

/* The client talks to the banner before it ends: what it sends is read and dropped, so its
 * FIN is seen and the connection closes. (libnetd keeps unread input, as Node does, and
 * holds the peer's 'end' behind it: without the handler's resume() this hung.) */
START_TEST(test_banner_drops_client_data)
{
    fx_t *f = fx_new();
    char text[] = "goodbye\n";

    f->cfg.text = text;
    f->half_open = _i;
    f->total = 200000;
    f->tx = make_data(f->total, 7);
    f->end_after_send = 1;
    start_handler(f, &netd_handler_banner, on_handler_listening);
    th_run(f->loop, 5000);

    ck_assert_str_eq(f->rx, text);
    ck_assert_int_eq(f->served_closed, 1);
    ck_assert_uint_eq(f->served_bytes_read, f->total);
    ck_assert_int_eq(f->cli_closed, 1);
    ck_assert_int_eq(f->cli_had_error, 0);
    fx_done(f);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* proxy                                                                                */
/* ------------------------------------------------------------------------------------ */

static void on_upstream_close(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;

    f->upstream_closed++;
    th_log(&f->log, "upstream:close");
    f->upstream = NULL;
}

static void on_upstream_opened(void *ctx, nd_socket_t *client, nd_socket_t *upstream)
{
    fx_t *f = ctx;

    ck_assert_ptr_eq(client, f->served);
    f->opened++;
    f->upstream = upstream;
    nd_socket_on(upstream, ND_EV_CLOSE, on_upstream_close, f);
}

static void on_upstream_failed(void *ctx, nd_socket_t *client, const nd_error_t *err)
{
    fx_t *f = ctx;

    ck_assert_ptr_eq(client, f->served);
    f->failed++;
    f->failed_code = err->code;
    snprintf(f->failed_name, sizeof(f->failed_name), "%s", err->name);
    th_log(&f->log, "upstream_failed(%s)", err->name);
}

/* ---- the upstream test server ---- */

static void on_up_data(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;

    f->up_bytes += ev->len;
    f->up_sum = fnv(f->up_sum, ev->data, ev->len);
}

static void on_up_end(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;

    th_log(&f->log, "up:end(%llu)", (unsigned long long)f->up_bytes);
    if (f->up_mode == UP_REPLY_AT_END) {
        char reply[64];
        int n = snprintf(reply, sizeof(reply), "got %llu\n", (unsigned long long)f->up_bytes);
        /* Half-open: our side is still writable after the client's FIN came through. */
        ck_assert_int_ge(nd_socket_write(self, reply, (size_t)n, NULL, NULL), 0);
        nd_socket_end(self, NULL, 0);
    }
}

static void on_up_close(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;

    f->up_closed++;
    th_log(&f->log, "up:close");
    f->up_conn = NULL;
}

static void up_resume(void *arg)
{
    fx_t *f = arg;

    /* The stall is at its deepest: everything between client and sink is full. */
    f->stall_checked = 1;
    f->stall_paused = f->served && nd_socket_is_paused(f->served);
    f->stall_buffer = f->upstream ? nd_socket_buffer_size(f->upstream) : (size_t)-1;
    th_log(&f->log, "stall");
    if (f->up_conn)
        nd_socket_resume(f->up_conn);
}

static void up_sent(nd_socket_t *sock, int err, void *arg)
{
    /* Every byte is in the kernel: a destroy now still delivers them, then FIN. */
    ck_assert_int_eq(err, 0);
    nd_socket_destroy(sock);
}

static void on_up_connection(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;
    nd_socket_t *s = ev->socket;

    f->up_conn = s;
    f->up_sum = FNV0;
    nd_socket_on(s, ND_EV_DATA, on_up_data, f);
    nd_socket_on(s, ND_EV_END, on_up_end, f);
    nd_socket_on(s, ND_EV_CLOSE, on_up_close, f);
    switch (f->up_mode) {
    case UP_ECHO:
        nd_socket_pipe(s, s, 1);
        break;
    case UP_SLOW_SINK:
        nd_socket_pause(s);
        th_timer(f->loop, 300, up_resume, f);
        break;
    case UP_SEND_END:
        nd_socket_end(s, f->tx, f->total);
        break;
    case UP_SEND_DESTROY:
        nd_socket_write(s, f->tx, f->total, up_sent, f);
        break;
    case UP_BYE_FIRST:
        nd_socket_end(s, "bye\n", 4);
        break;
    default:
        break;
    }
}

static void on_up_listening(void *self, const nd_event_t *ev, void *arg)
{
    fx_t *f = arg;
    nd_address_t a;

    if (f->unix_upstream) {
        f->cfg.path = f->path;
    } else {
        ck_assert_int_eq(nd_server_address(f->up, &a), 0);
        f->cfg.port = a.port; /* cfg.host stays NULL: the default, 127.0.0.1 */
    }
    if (f->on_up_ready)
        f->on_up_ready(f);
    else
        start_handler(f, &netd_handler_proxy, on_handler_listening);
}

/* Upstream server first (its address goes into the proxy's cfg), then the proxy, then the
 * client. The proxy's server is allowHalfOpen, as the proxy wants, unless the test says. */
static void start_proxy(fx_t *f, int mode, int unix_upstream, int up_half_open)
{
    nd_server_options_t o = {.allow_half_open = up_half_open};

    f->up_mode = mode;
    f->half_open = !f->proxy_not_half_open;
    f->unix_upstream = unix_upstream;
    f->up = nd_server_new(f->loop, &o, on_up_connection, f);
    ck_assert_ptr_nonnull(f->up);
    ck_assert_int_eq(nd_server_once(f->up, ND_EV_LISTENING, on_up_listening, f), 0);
    if (unix_upstream) {
        snprintf(f->dir, sizeof(f->dir), "%s", th_tmpdir());
        snprintf(f->path, sizeof(f->path), "%s/up.sock", f->dir);
        ck_assert_int_eq(nd_server_listen_path(f->up, f->path, 0), 0);
    } else {
        ck_assert_int_eq(nd_server_listen(f->up, 0, "127.0.0.1", 0), 0);
    }
}

static void assert_pair_gone(fx_t *f)
{
    ck_assert_int_eq(f->opened, 1);
    ck_assert_int_eq(f->served_closed, 1);
    ck_assert_int_eq(f->upstream_closed, 1);
    ck_assert_int_eq(f->cli_closed, 1);
}

/* _i: 0 TCP upstream, 1 unix upstream. 1 MiB out, echoed back, then a half-close passed
 * through both ways. */
START_TEST(test_proxy_echo_both_ways)
{
    fx_t *f = fx_new();

    f->total = MIB;
    f->tx = make_data(f->total, 3);
    f->end_after_send = 1;
    start_proxy(f, UP_ECHO, _i, 0);
    th_run(f->loop, 10000);

    ck_assert_uint_eq(f->up_bytes, MIB);
    ck_assert_uint_eq(f->rx_bytes, MIB);
    ck_assert_msg(f->rx_sum == fnv(FNV0, f->tx, f->total), "bytes differ after the round trip");
    ck_assert_msg(f->up_sum == fnv(FNV0, f->tx, f->total), "upstream got other bytes");
    ck_assert_int_eq(f->failed, 0);
    ck_assert_int_eq(f->cli_ended, 1);
    ck_assert_int_eq(f->cli_had_error, 0);
    assert_pair_gone(f);
    fx_done(f);
}
END_TEST

/* _i: 0 TCP, 1 unix. The client sends and ends; the upstream sees 'end' and only then
 * replies; the reply must still reach the client, which then sees EOF; all close. */
START_TEST(test_proxy_half_close)
{
    fx_t *f = fx_new();

    f->total = 100000;
    f->tx = make_data(f->total, 4);
    f->end_after_send = 1;
    start_proxy(f, UP_REPLY_AT_END, _i, 1);
    th_run(f->loop, 10000);

    ck_assert_str_eq(f->rx, "got 100000\n");
    const char *log = th_log_str(&f->log);
    const char *up_end = strstr(log, "up:end(100000)");
    const char *cli_end = strstr(log, "cli:end(11)");
    ck_assert_msg(up_end && cli_end && up_end < cli_end, "order: %s", log);
    ck_assert_int_eq(f->up_closed, 1);
    ck_assert_int_eq(f->cli_had_error, 0);
    assert_pair_gone(f);
    fx_done(f);
}
END_TEST

/* _i: 0 TCP, 1 unix. The other direction: the upstream says "bye" and ends first; the
 * client (half-open) gets 'end', and only then sends 100000 bytes and ends. They must all
 * reach the upstream, which the proxy's upstream socket allows only if it is half-open. */
START_TEST(test_proxy_half_close_upstream_first)
{
    fx_t *f = fx_new();

    f->tx = make_data(100000, 9);
    f->cli_half_open = 1;
    f->send_at_end = 100000;
    start_proxy(f, UP_BYE_FIRST, _i, 1);
    th_run(f->loop, 10000);

    ck_assert_str_eq(f->rx, "bye\n");
    ck_assert_uint_eq(f->up_bytes, 100000);
    ck_assert_msg(f->up_sum == fnv(FNV0, f->tx, 100000), "upstream got other bytes");
    const char *log = th_log_str(&f->log);
    const char *cli_end = strstr(log, "cli:end(4)");
    const char *up_end = strstr(log, "up:end(100000)");
    ck_assert_msg(cli_end && up_end && cli_end < up_end, "order: %s", log);
    ck_assert_int_eq(f->cli_had_error, 0);
    assert_pair_gone(f);
    fx_done(f);
}
END_TEST

/* What proxy.c documents for a server without allowHalfOpen: the client's FIN still reaches
 * the upstream, but the library ends the client's side at once, the pair closes, and the
 * upstream's late reply has nowhere to go. Nothing hangs and nothing leaks. */
START_TEST(test_proxy_without_half_open)
{
    fx_t *f = fx_new();

    f->total = 100000;
    f->tx = make_data(f->total, 10);
    f->end_after_send = 1;
    f->proxy_not_half_open = 1;
    start_proxy(f, UP_REPLY_AT_END, 0, 1);
    th_run(f->loop, 10000);

    ck_assert_uint_eq(f->up_bytes, 100000);
    ck_assert_ptr_nonnull(strstr(th_log_str(&f->log), "up:end(100000)"));
    ck_assert_int_eq(f->up_closed, 1);
    ck_assert_int_eq(f->cli_ended, 1);
    assert_pair_gone(f);
    fx_done(f);
}
END_TEST

/* _i: 0 a free TCP port (ECONNREFUSED), 1 a unix path nobody listens on (ENOENT). */
START_TEST(test_proxy_upstream_refused)
{
    fx_t *f = fx_new();
    static const int want[] = {-ECONNREFUSED, -ENOENT};
    static const char *const names[] = {"ECONNREFUSED", "ENOENT"};

    if (_i == 0) {
        f->cfg.port = th_refused_port();
    } else {
        snprintf(f->dir, sizeof(f->dir), "%s", th_tmpdir());
        snprintf(f->path, sizeof(f->path), "%s/nobody.sock", f->dir);
        f->cfg.path = f->path;
    }
    f->half_open = 1;
    f->tx = make_data(16, 5);
    f->total = 16; /* sent while the upstream is failing: must not matter */
    start_handler(f, &netd_handler_proxy, on_handler_listening);
    th_run(f->loop, 5000);

    ck_assert_int_eq(f->opened, 1);
    ck_assert_int_eq(f->failed, 1);
    ck_assert_int_eq(f->failed_code, want[_i]);
    ck_assert_str_eq(f->failed_name, names[_i]);
    ck_assert_int_eq(f->served_closed, 1);
    ck_assert_int_eq(f->upstream_closed, 1);
    ck_assert_int_eq(f->cli_closed, 1);
    ck_assert_uint_eq(f->rx_bytes, 0);
    fx_done(f);
}
END_TEST

static void sample_up_buffer(void *arg);

static void sample_again(fx_t *f)
{
    if (f->cli != NULL)
        th_timer(f->loop, 5, sample_up_buffer, f);
}

static void sample_up_buffer(void *arg)
{
    fx_t *f = arg;

    if (f->upstream && nd_socket_buffer_size(f->upstream) > f->max_up_buffer)
        f->max_up_buffer = nd_socket_buffer_size(f->upstream);
    sample_again(f);
}

/* The client pushes 32 MiB; the upstream reads nothing for 300 ms. The pipe must pause
 * the proxy's client side rather than queue the difference in the proxy. */
START_TEST(test_proxy_slow_upstream_bounded)
{
    fx_t *f = fx_new();
    /* Not scaled down under sanitizers: less than the kernel can buffer would not stall. */
    size_t total = 32 * MIB;

    f->total = total;
    f->tx = make_data(f->total, 6);
    f->end_after_send = 1;
    start_proxy(f, UP_SLOW_SINK, 0, 0);
    th_timer(f->loop, 5, sample_up_buffer, f);
    th_run(f->loop, 30000);

    ck_assert_int_eq(f->stall_checked, 1);
    ck_assert_msg(f->stall_paused, "the proxy's client side was not paused during the stall");
    ck_assert_uint_lt(f->stall_buffer, 4 * MIB);
    ck_assert_uint_lt(f->max_up_buffer, 4 * MIB);
    ck_assert_uint_eq(f->sent, total);
    ck_assert_uint_eq(f->up_bytes, total);
    ck_assert_msg(f->up_sum == fnv(FNV0, f->tx, f->total), "upstream got other bytes");
    ck_assert_int_eq(f->cli_ended, 1);
    assert_pair_gone(f);
    fx_done(f);
}
END_TEST

/* _i: 0 the upstream sends 1 MiB and ends, 1 it sends 1 MiB and is destroyed. The client
 * reads late and still gets every byte, then EOF; then everything closes. */
START_TEST(test_proxy_upstream_closes_first)
{
    fx_t *f = fx_new();

    f->total = MIB;
    f->tx = make_data(f->total, 7);
    f->sent = f->total;       /* the client itself sends nothing... */
    f->pause_client_ms = 200; /* ...and reads only once the upstream is long done */
    start_proxy(f, _i == 0 ? UP_SEND_END : UP_SEND_DESTROY, 0, 0);
    th_run(f->loop, 10000);

    ck_assert_uint_eq(f->rx_bytes, MIB);
    ck_assert_msg(f->rx_sum == fnv(FNV0, f->tx, f->total), "the client got other bytes");
    const char *log = th_log_str(&f->log);
    const char *resumed = strstr(log, "cli:resume");
    ck_assert_msg(resumed != NULL && strstr(resumed, "cli:end(1048576)") != NULL, "%s", log);
    if (_i == 1) {
        /* The upstream really was gone before the client read anything. */
        const char *up_close = strstr(log, "up:close");
        ck_assert_msg(up_close != NULL && up_close < resumed, "%s", log);
    }
    ck_assert_int_eq(f->cli_had_error, 0);
    assert_pair_gone(f);
    fx_done(f);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* adopt: a proxy pair moved to another worker's loop                                   */
/* ------------------------------------------------------------------------------------ */

/*
 * Two worker loops in threads serve a group; the client and the upstream echo server live
 * on the test's loop (the group's owner). After a first round trip the pair is moved to the
 * other worker, where netd_handler_adopt() must link it again: a second round trip flows,
 * and a reset client then takes the whole pair down (only the re-attached listeners can
 * do that: nothing else closes an idle upstream). A move tried while the upstream is still
 * connecting is refused.
 * Worker threads never call ck_assert: they record into atomics the test thread checks.
 */
#define MOVE_A (256u * 1024)
#define MOVE_B (256u * 1024)

static struct mv {
    fx_t *f;
    nd_loop_t *wl[2];
    nd_thread_t *wt[2];
    _Atomic(nd_socket_t *) served;
    atomic_int served_on;  /* worker that got 'connection', -1 before */
    atomic_int adopted_on; /* worker that got 'adopt', -1 before */
    atomic_int move_rc;
    atomic_int early_move_rc; /* a move tried while the upstream is still connecting */
    atomic_int peer_found;    /* nd_socket_pipe_peer() != NULL at adopt */
    atomic_int served_closes;
    atomic_int left[2]; /* worker handle counts at the end */
    struct timespec probe_until;
    sem_t sem;
} MV;

static void mv_on_served_close(void *self, const nd_event_t *ev, void *arg)
{
    atomic_fetch_add(&MV.served_closes, 1);
}

static void mv_on_connection(void *self, const nd_event_t *ev, void *arg)
{
    int i = (int)(intptr_t)arg;

    atomic_store(&MV.served, ev->socket);
    atomic_store(&MV.served_on, i);
    netd_handler_connection(&MV.f->cfg, ev->socket, &MV.f->env);
    /* Refused: half a pair must never leave while its other half is still dialling. */
    atomic_store(&MV.early_move_rc, nd_socket_move(ev->socket, MV.wl[1 - i], NULL, NULL));
    nd_socket_on(ev->socket, ND_EV_CLOSE, mv_on_served_close, NULL);
}

static void mv_adopted_owner(nd_loop_t *loop, void *arg)
{
    fx_t *f = arg;

    /* On the test's thread again: the second half goes through the moved pair. */
    th_log(&f->log, "adopted");
    f->total = MOVE_A + MOVE_B;
    cli_pump(f);
}

static void mv_on_adopt(void *self, const nd_event_t *ev, void *arg)
{
    int i = (int)(intptr_t)arg;

    atomic_store(&MV.adopted_on, i);
    atomic_store(&MV.peer_found, nd_socket_pipe_peer(ev->socket) != NULL);
    netd_handler_adopt(&MV.f->cfg, ev->socket, &MV.f->env);
    /* The test's own listener was dropped by the move as well. */
    nd_socket_on(ev->socket, ND_EV_CLOSE, mv_on_served_close, NULL);
    nd_loop_post(MV.f->loop, mv_adopted_owner, MV.f);
}

static void mv_init(nd_server_t *ws, int index, void *arg)
{
    nd_server_on(ws, ND_EV_CONNECTION, mv_on_connection, (void *)(intptr_t)index);
    nd_server_on(ws, ND_EV_ADOPT, mv_on_adopt, (void *)(intptr_t)index);
}

static void mv_failed_owner(nd_loop_t *loop, void *arg)
{
    fx_t *f = arg;

    /* The move was refused: end the test now; the assertions say why. */
    if (f->cli)
        nd_socket_destroy(f->cli);
}

static void mv_move(nd_loop_t *loop, void *arg)
{
    int from = atomic_load(&MV.served_on);
    int rc = nd_socket_move(atomic_load(&MV.served), MV.wl[1 - from], NULL, NULL);

    atomic_store(&MV.move_rc, rc);
    if (rc != 0)
        nd_loop_post(MV.f->loop, mv_failed_owner, MV.f);
}

static void mv_on_rx(fx_t *f)
{
    if (f->rx_bytes == MOVE_A) {
        /* The first half is back: the pair is connected and idle. Move it. */
        th_log(&f->log, "move");
        int from = atomic_load(&MV.served_on);
        ck_assert_int_ge(from, 0);
        ck_assert_int_eq(nd_loop_post(MV.wl[from], mv_move, NULL), 0);
    } else if (f->rx_bytes == MOVE_A + MOVE_B) {
        /* A reset, not a FIN: the proxy's client side fails with ECONNRESET, and only
         * the pair link re-attached by adopt can close the upstream. */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        th_log(&f->log, "reset");
        ck_assert_int_eq(setsockopt(nd_socket_fd(f->cli), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)),
                         0);
        nd_socket_destroy(f->cli);
    }
}

static void mv_start_group(fx_t *f)
{
    nd_server_options_t o = {.allow_half_open = 1};

    f->cfg.ops = &netd_handler_proxy;
    f->srv = nd_server_new_group(f->loop, &o, MV.wl, 2, ND_BALANCE_ROUNDROBIN, mv_init, NULL);
    ck_assert_ptr_nonnull(f->srv);
    ck_assert_int_eq(nd_server_once(f->srv, ND_EV_LISTENING, on_handler_listening, f), 0);
    ck_assert_int_eq(nd_server_listen(f->srv, 0, "127.0.0.1", 0), 0);
}

/* On worker i: its handle count once in-flight closes are done (bounded wait). */
static void mv_probe(evutil_socket_t fd, short what, void *arg)
{
    int i = (int)(intptr_t)arg;
    int n = nd_loop_handle_count(MV.wl[i]);
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    if (n == 0 || now.tv_sec > MV.probe_until.tv_sec) {
        atomic_store(&MV.left[i], n);
        sem_post(&MV.sem);
        return;
    }
    struct timeval tv = {0, 1000};
    event_base_once(nd_loop_base(MV.wl[i]), -1, EV_TIMEOUT, mv_probe, arg, &tv);
}

static void mv_probe_start(nd_loop_t *loop, void *arg)
{
    mv_probe(-1, 0, arg);
}

START_TEST(test_proxy_adopt_after_move)
{
    fx_t *f = fx_new();

    memset(&MV, 0, sizeof(MV));
    MV.f = f;
    atomic_store(&MV.served_on, -1);
    atomic_store(&MV.adopted_on, -1);
    atomic_store(&MV.move_rc, 1);
    ck_assert_int_eq(sem_init(&MV.sem, 0, 0), 0);
    for (int i = 0; i < 2; i++) {
        MV.wl[i] = th_loop_new();
        MV.wt[i] = nd_thread_start(MV.wl[i]);
        ck_assert_ptr_nonnull(MV.wt[i]);
    }
    /* No hooks: the proxy must cope without them. */
    f->tx = make_data(MOVE_A + MOVE_B, 8);
    f->total = MOVE_A; /* the rest once adopted */
    f->on_rx = mv_on_rx;
    f->on_up_ready = mv_start_group;
    start_proxy(f, UP_ECHO, 0, 0);
    th_run(f->loop, 10000);

    /* Everything is closed on the test's side; the workers must be empty too. */
    clock_gettime(CLOCK_MONOTONIC, &MV.probe_until);
    MV.probe_until.tv_sec += 3;
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(nd_loop_post(MV.wl[i], mv_probe_start, (void *)(intptr_t)i), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(sem_wait(&MV.sem), 0);
    for (int i = 0; i < 2; i++) {
        nd_thread_stop(MV.wt[i]);
        ck_assert_int_eq(nd_thread_join(MV.wt[i]), 0);
    }
    sem_destroy(&MV.sem);

    ck_assert_int_eq(atomic_load(&MV.early_move_rc), -EBUSY);
    ck_assert_int_eq(atomic_load(&MV.move_rc), 0);
    ck_assert_int_ge(atomic_load(&MV.served_on), 0);
    ck_assert_int_eq(atomic_load(&MV.adopted_on), 1 - atomic_load(&MV.served_on));
    ck_assert_int_eq(atomic_load(&MV.peer_found), 1);
    ck_assert_uint_eq(f->rx_bytes, MOVE_A + MOVE_B);
    ck_assert_msg(f->rx_sum == fnv(FNV0, f->tx, MOVE_A + MOVE_B), "bytes differ");
    ck_assert_uint_eq(f->up_bytes, MOVE_A + MOVE_B);
    ck_assert_int_eq(f->up_closed, 1);
    ck_assert_int_eq(atomic_load(&MV.served_closes), 1);
    ck_assert_msg(atomic_load(&MV.left[0]) == 0 && atomic_load(&MV.left[1]) == 0,
                  "handles left: worker 0 %d, worker 1 %d (served on %d, adopted on %d)",
                  atomic_load(&MV.left[0]), atomic_load(&MV.left[1]), atomic_load(&MV.served_on),
                  atomic_load(&MV.adopted_on));
    const char *log = th_log_str(&f->log);
    ck_assert_msg(strncmp(log, "cli:connect,move,adopted,reset,", 31) == 0, "%s", log);
    ck_assert_msg(strstr(log, "up:end(524288)") != NULL, "%s", log);
    fx_done(f);
}
END_TEST

/* ------------------------------------------------------------------------------------ */

static Suite *handlers_suite(void)
{
    Suite *s = suite_create("handlers");
    TCase *tc;

    tc = th_tcase(s, "echo", 15);
    tcase_add_loop_test(tc, test_echo_greeting_then_1mib, 0, 2);

    tc = th_tcase(s, "discard", 15);
    tcase_add_loop_test(tc, test_discard_10mib, 0, 2);

    tc = th_tcase(s, "banner", 10);
    tcase_add_loop_test(tc, test_banner_text_then_eof, 0, 2);
    tcase_add_loop_test(tc, test_banner_drops_client_data, 0, 2);

    tc = th_tcase(s, "proxy", 40);
    tcase_add_loop_test(tc, test_proxy_echo_both_ways, 0, 2);
    tcase_add_loop_test(tc, test_proxy_half_close, 0, 2);
    tcase_add_loop_test(tc, test_proxy_half_close_upstream_first, 0, 2);
    tcase_add_test(tc, test_proxy_without_half_open);
    tcase_add_loop_test(tc, test_proxy_upstream_refused, 0, 2);
    tcase_add_test(tc, test_proxy_slow_upstream_bounded);
    tcase_add_loop_test(tc, test_proxy_upstream_closes_first, 0, 2);

    tc = th_tcase(s, "adopt", 20);
    tcase_add_test(tc, test_proxy_adopt_after_move);
    return s;
}

int main(void)
{
    return th_run_suite(handlers_suite());
}
