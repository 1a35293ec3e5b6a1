/* SPDX-License-Identifier: MIT */
/*
 * Name resolution in connect and listen: the 'lookup' event, ENOTFOUND, destroy during a
 * lookup, and IP literals, all against the test's own DNS responder (tests/lib/dnsd.h).
 */
#include "config.h"

#include "dnsd.h"
#include "harness.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define EVBIT(e) (1u << (e))

typedef struct t {
    nd_loop_t *loop;
    th_dnsd_t *dnsd;
    nd_server_t *server;
    int port;
    th_log_t log;
    unsigned mask;
    int returned; /* set once nd_socket_connect() has returned */
    int lookups, connects, errors, closes, s_conns;
    char lookup_addr[64];
    int lookup_family;
    char lookup_err[32];
    int lookup_had_address;
    int err_code, err_port;
    char err_name[32], err_syscall[32], err_hostname[128], err_message[256];
    nd_connect_options_t copts;
    int retries;
    char remote[64];
    nd_socket_t *client;
} t_t;

/* A loop with the responder, which knows test.netd (A) and six.netd (AAAA) only. */
static t_t *t_new(void)
{
    t_t *t = calloc(1, sizeof(*t));

    ck_assert_ptr_nonnull(t);
    t->loop = th_loop_new();
    t->dnsd = th_dnsd_start(t->loop);
    th_dnsd_add(t->dnsd, "test.netd", "127.0.0.1");
    th_dnsd_add(t->dnsd, "six.netd", "::1");
    t->mask = EVBIT(ND_EV_LOOKUP) | EVBIT(ND_EV_CONNECT) | EVBIT(ND_EV_ERROR) | EVBIT(ND_EV_CLOSE);
    return t;
}

static void t_done(t_t *t)
{
    th_dnsd_free(t->dnsd);
    th_finish(t->loop);
    free(t);
}

static void close_server(t_t *t)
{
    if (t->server) {
        ck_assert_int_eq(nd_server_close(t->server, NULL, NULL), 0);
        t->server = NULL;
    }
}

static void c_log(void *self, const nd_event_t *ev, void *arg)
{
    t_t *t = arg;
    int logit = (t->mask & EVBIT(ev->type)) != 0;

    switch (ev->type) {
    case ND_EV_LOOKUP:
        /* Never from inside nd_socket_connect(), whatever the host. */
        ck_assert_msg(t->returned, "'lookup' emitted synchronously");
        t->lookups++;
        if (ev->error) {
            snprintf(t->lookup_err, sizeof(t->lookup_err), "%s", ev->error->name);
            t->lookup_had_address = ev->address != NULL;
            if (logit)
                th_log(&t->log, "lookup:%s", ev->error->name);
        } else {
            ck_assert_ptr_nonnull(ev->address);
            snprintf(t->lookup_addr, sizeof(t->lookup_addr), "%s", ev->address);
            t->lookup_family = ev->family;
            if (logit)
                th_log(&t->log, "lookup");
        }
        break;
    case ND_EV_CONNECT:
        t->connects++;
        snprintf(t->remote, sizeof(t->remote), "%s",
                 nd_socket_remote_address(self) ? nd_socket_remote_address(self) : "(null)");
        if (logit)
            th_log(&t->log, "connect");
        break;
    case ND_EV_ERROR: {
        const nd_error_t *e = ev->error;
        ck_assert_ptr_nonnull(e);
        t->errors++;
        t->err_code = e->code;
        t->err_port = e->port;
        snprintf(t->err_name, sizeof(t->err_name), "%s", e->name);
        snprintf(t->err_syscall, sizeof(t->err_syscall), "%s", e->syscall ? e->syscall : "(null)");
        snprintf(t->err_hostname, sizeof(t->err_hostname), "%s",
                 e->hostname ? e->hostname : "(null)");
        snprintf(t->err_message, sizeof(t->err_message), "%s", e->message ? e->message : "(null)");
        if (logit)
            th_log(&t->log, "error:%s", e->name);
        break;
    }
    case ND_EV_CLOSE:
        t->closes++;
        if (logit)
            th_log(&t->log, "close:%d", ev->had_error ? 1 : 0);
        break;
    default:
        if (logit)
            th_log(&t->log, "ev%d", (int)ev->type);
        break;
    }
}

static nd_socket_t *new_client(t_t *t)
{
    static const nd_event_type_t evs[] = {ND_EV_LOOKUP, ND_EV_CONNECT, ND_EV_ERROR, ND_EV_CLOSE};
    nd_socket_t *s = nd_socket_new(t->loop, NULL);

    ck_assert_ptr_nonnull(s);
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        ck_assert_int_eq(nd_socket_on(s, evs[i], c_log, t), 0);
    return s;
}

static void connect_to(t_t *t, nd_socket_t *s, const char *host, int port, int family)
{
    memset(&t->copts, 0, sizeof(t->copts));
    t->copts.host = host;
    t->copts.port = port;
    t->copts.family = family;
    t->returned = 0;
    ck_assert_int_eq(nd_socket_connect(s, &t->copts), 0);
    t->returned = 1;
}

static void on_connection(void *self, const nd_event_t *ev, void *arg)
{
    t_t *t = arg;

    t->s_conns++;
    /* The client side decides how each test ends; the server only needs to let go. */
    ck_assert_int_eq(nd_socket_end(ev->socket, NULL, 0), 0);
}

static void abort_on_server_error(void *self, const nd_event_t *ev, void *arg)
{
    ck_abort_msg("server error: %s", ev->error ? ev->error->message : "?");
}

static void set_flag(void *self, const nd_event_t *ev, void *arg)
{
    *(int *)arg = 1;
}

static void wait_listening(t_t *t, nd_server_t *s)
{
    int listening = 0;

    ck_assert_int_eq(nd_server_once(s, ND_EV_LISTENING, set_flag, &listening), 0);
    for (int i = 0; i < 1000 && !listening; i++)
        ck_assert_int_ge(nd_loop_run_once(t->loop, 0), 0);
    ck_assert_msg(listening, "no 'listening'");
}

static void serve(t_t *t, const char *host)
{
    nd_address_t a;
    nd_server_t *s = nd_server_new(t->loop, NULL, on_connection, t);

    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(nd_server_on(s, ND_EV_ERROR, abort_on_server_error, NULL), 0);
    ck_assert_int_eq(nd_server_listen(s, 0, host, 0), 0);
    wait_listening(t, s);
    ck_assert_int_eq(nd_server_address(s, &a), 0);
    t->port = a.port;
    t->server = s;
}

static int have_ipv6(void)
{
    struct sockaddr_in6 a;
    int fd = socket(AF_INET6, SOCK_STREAM, 0);

    if (fd < 0)
        return 0;
    memset(&a, 0, sizeof(a));
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    int ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static void destroy_self(void *self, const nd_event_t *ev, void *arg)
{
    nd_socket_destroy(self);
}

static void close_server_ev(void *self, const nd_event_t *ev, void *arg)
{
    close_server(arg);
}

/* ------------------------------------------------------------------------------------ */

/* case 35 */
START_TEST(test_lookup_before_connect)
{
    t_t *t = t_new();

    serve(t, "127.0.0.1");
    nd_socket_t *c = new_client(t);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CONNECT, destroy_self, NULL), 0);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CLOSE, close_server_ev, t), 0);
    connect_to(t, c, "test.netd", t->port, 0);
    th_log(&t->log, "returned");
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&t->log), "returned,lookup,connect,close:0");
    ck_assert_str_eq(t->lookup_addr, "127.0.0.1");
    ck_assert_int_eq(t->lookup_family, 4);
    ck_assert_str_eq(t->remote, "127.0.0.1");
    ck_assert_int_gt(th_dnsd_queries(t->dnsd), 0);
    t_done(t);
}
END_TEST

/* case 41 */
START_TEST(test_lookup_family_6)
{
    if (!have_ipv6()) {
        fprintf(stderr, "skipped: no IPv6 loopback\n");
        return;
    }
    t_t *t = t_new();

    serve(t, "::1");
    nd_socket_t *c = new_client(t);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CONNECT, destroy_self, NULL), 0);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CLOSE, close_server_ev, t), 0);
    connect_to(t, c, "six.netd", t->port, 6);
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&t->log), "lookup,connect,close:0");
    ck_assert_str_eq(t->lookup_addr, "::1");
    ck_assert_int_eq(t->lookup_family, 6);
    ck_assert_str_eq(t->remote, "::1");
    ck_assert_int_gt(th_dnsd_queries(t->dnsd), 0);
    t_done(t);
}
END_TEST

/* case 34 */
START_TEST(test_unknown_name_enotfound)
{
    t_t *t = t_new();
    nd_socket_t *c = new_client(t);

    connect_to(t, c, "nope.netd", 4242, 0);
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&t->log), "lookup:ENOTFOUND,error:ENOTFOUND,close:1");
    /* v0.10's (err, undefined, undefined): no address with a failed lookup. */
    ck_assert_int_eq(t->lookup_had_address, 0);
    ck_assert_int_eq(t->err_code, ND_ENOTFOUND);
    ck_assert_str_eq(t->err_hostname, "nope.netd");
    /* Issue 12.15: Node leaves err.port unset on a failed lookup (-1 here). */
    ck_assert_int_eq(t->err_port, -1);
    ck_assert_str_eq(t->err_syscall, "getaddrinfo");
    ck_assert_msg(strncmp(t->err_message, "getaddrinfo ENOTFOUND", 21) == 0, "message '%s'",
                  t->err_message);
    ck_assert_int_eq(t->connects, 0);
    ck_assert_int_gt(th_dnsd_queries(t->dnsd), 0);
    t_done(t);
}
END_TEST

/* case 36 */
START_TEST(test_end_right_after_connect_to_bad_name)
{
    t_t *t = t_new();
    nd_socket_t *c = new_client(t);

    connect_to(t, c, "nope.netd", 4242, 0);
    ck_assert_int_eq(nd_socket_end(c, NULL, 0), 0);
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&t->log), "lookup:ENOTFOUND,error:ENOTFOUND,close:1");
    t_done(t);
}
END_TEST

static void destroy_client(void *arg)
{
    t_t *t = arg;
    nd_socket_t *c = t->client;

    /* The query is out and its answer is still 150 ms away. */
    ck_assert_int_gt(th_dnsd_queries(t->dnsd), 0);
    ck_assert_int_eq(t->lookups, 0);
    ck_assert_int_eq(nd_socket_connecting(c), 1);
    nd_socket_destroy(c);
}

static void late_end(void *arg)
{
    close_server(arg);
}

/* case 37 */
START_TEST(test_destroy_during_lookup)
{
    t_t *t = t_new();

    th_dnsd_set_delay(t->dnsd, 200);
    /* A real server: were the connect to go ahead after all, it would succeed. */
    serve(t, "127.0.0.1");
    t->mask = EVBIT(ND_EV_CONNECT) | EVBIT(ND_EV_ERROR) | EVBIT(ND_EV_CLOSE);
    nd_socket_t *c = new_client(t);
    t->client = c;
    connect_to(t, c, "test.netd", t->port, 0);
    th_timer(t->loop, 50, destroy_client, t);
    /* Past the delayed answer, which must find nothing to act on. */
    th_timer(t->loop, 400, late_end, t);
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&t->log), "close:0");
    ck_assert_int_eq(t->connects, 0);
    ck_assert_int_eq(t->s_conns, 0);
    t_done(t);
}
END_TEST

/* Issue 12.13: an IP literal is not looked up at all, as in Node: no 'lookup', no query. */
START_TEST(test_ip_literal_lookup_without_query)
{
    t_t *t = t_new();

    serve(t, "127.0.0.1");
    nd_socket_t *c = new_client(t);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CONNECT, destroy_self, NULL), 0);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CLOSE, close_server_ev, t), 0);
    connect_to(t, c, "127.0.0.1", t->port, 0);
    th_log(&t->log, "returned");
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&t->log), "returned,connect,close:0");
    ck_assert_int_eq(t->lookups, 0);
    ck_assert_str_eq(t->remote, "127.0.0.1");
    ck_assert_int_eq(th_dnsd_queries(t->dnsd), 0);
    t_done(t);
}
END_TEST

START_TEST(test_ipv6_literal_lookup_without_query)
{
    if (!have_ipv6()) {
        fprintf(stderr, "skipped: no IPv6 loopback\n");
        return;
    }
    t_t *t = t_new();

    serve(t, "::1");
    nd_socket_t *c = new_client(t);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CONNECT, destroy_self, NULL), 0);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CLOSE, close_server_ev, t), 0);
    connect_to(t, c, "::1", t->port, 0);
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&t->log), "connect,close:0");
    ck_assert_int_eq(t->lookups, 0);
    ck_assert_str_eq(t->remote, "::1");
    ck_assert_int_eq(th_dnsd_queries(t->dnsd), 0);
    t_done(t);
}
END_TEST

typedef struct sync_check {
    int *returned;
    int seen;
} sync_check_t;

static void lookup_after_return(void *self, const nd_event_t *ev, void *arg)
{
    sync_check_t *sc = arg;

    ck_assert_int_eq(*sc->returned, 1);
    sc->seen++;
}

/* 'lookup' never runs inside nd_socket_connect(), for a name, a failure or localhost. */
START_TEST(test_lookup_never_synchronous)
{
    static const char *const hosts[] = {"test.netd", "nope.netd", "localhost"};
    t_t *t = t_new();
    int returned = 0;
    sync_check_t sc = {.returned = &returned};
    nd_connect_options_t o;

    t->mask = 0;
    for (size_t i = 0; i < 3; i++) {
        nd_socket_t *s = nd_socket_new(t->loop, NULL);
        ck_assert_ptr_nonnull(s);
        ck_assert_int_eq(nd_socket_on(s, ND_EV_LOOKUP, lookup_after_return, &sc), 0);
        ck_assert_int_eq(nd_socket_on(s, ND_EV_LOOKUP, destroy_self, NULL), 0);
        memset(&o, 0, sizeof(o));
        o.host = hosts[i];
        o.port = 9;
        returned = 0;
        ck_assert_int_eq(nd_socket_connect(s, &o), 0);
        returned = 1;
    }
    th_run(t->loop, 5000);

    ck_assert_int_eq(sc.seen, 3);
    t_done(t);
}
END_TEST

/* The hosts file answers "localhost" before any nameserver is asked. */
START_TEST(test_localhost_from_hosts_file)
{
    t_t *t = t_new();

    serve(t, "127.0.0.1");
    nd_socket_t *c = new_client(t);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CONNECT, destroy_self, NULL), 0);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CLOSE, close_server_ev, t), 0);
    connect_to(t, c, "localhost", t->port, 0);
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&t->log), "lookup,connect,close:0");
    ck_assert_str_eq(t->lookup_addr, "127.0.0.1");
    ck_assert_int_eq(th_dnsd_queries(t->dnsd), 0);
    t_done(t);
}
END_TEST

static void reconnect_to_good_name(void *self, const nd_event_t *ev, void *arg)
{
    t_t *t = arg;

    if (t->retries-- > 0) {
        connect_to(t, self, "test.netd", t->port, 0);
    } else {
        close_server(t);
    }
}

/* After ENOTFOUND and 'close', the same socket resolves and connects. */
START_TEST(test_reconnect_after_enotfound)
{
    t_t *t = t_new();

    serve(t, "127.0.0.1");
    t->retries = 1;
    nd_socket_t *c = new_client(t);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CONNECT, destroy_self, NULL), 0);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CLOSE, reconnect_to_good_name, t), 0);
    connect_to(t, c, "nope.netd", t->port, 0);
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&t->log),
                     "lookup:ENOTFOUND,error:ENOTFOUND,close:1,lookup,connect,close:0");
    ck_assert_str_eq(t->lookup_addr, "127.0.0.1");
    ck_assert_int_eq(t->s_conns, 1);
    t_done(t);
}
END_TEST

typedef struct pair {
    t_t *t;
    th_log_t log;
} pair_t;

static void pair_log(void *self, const nd_event_t *ev, void *arg)
{
    pair_t *p = arg;

    if (ev->type == ND_EV_LOOKUP)
        th_log(&p->log, "lookup:%s", ev->error ? ev->error->name : ev->address);
    else if (ev->type == ND_EV_CONNECT)
        th_log(&p->log, "connect");
    else if (ev->type == ND_EV_ERROR)
        th_log(&p->log, "error:%s", ev->error->name);
    else if (ev->type == ND_EV_CLOSE)
        th_log(&p->log, "close:%d", ev->had_error ? 1 : 0);
}

static void pair_closed(void *self, const nd_event_t *ev, void *arg)
{
    t_t *t = arg;

    if (++t->closes == 2)
        close_server(t);
}

static nd_socket_t *pair_socket(t_t *t, pair_t *p, const char *host)
{
    static const nd_event_type_t evs[] = {ND_EV_LOOKUP, ND_EV_CONNECT, ND_EV_ERROR, ND_EV_CLOSE};
    nd_connect_options_t o;
    nd_socket_t *s = nd_socket_new(t->loop, NULL);

    ck_assert_ptr_nonnull(s);
    for (size_t i = 0; i < 4; i++)
        ck_assert_int_eq(nd_socket_on(s, evs[i], pair_log, p), 0);
    ck_assert_int_eq(nd_socket_on(s, ND_EV_CONNECT, destroy_self, NULL), 0);
    ck_assert_int_eq(nd_socket_on(s, ND_EV_CLOSE, pair_closed, t), 0);
    memset(&o, 0, sizeof(o));
    o.host = host;
    o.port = t->port;
    ck_assert_int_eq(nd_socket_connect(s, &o), 0);
    return s;
}

/* Two lookups in flight at once each get their own answer. */
START_TEST(test_concurrent_lookups_independent)
{
    t_t *t = t_new();
    pair_t good = {.t = t}, bad = {.t = t};

    serve(t, "127.0.0.1");
    pair_socket(t, &bad, "nope.netd");
    pair_socket(t, &good, "test.netd");
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&good.log), "lookup:127.0.0.1,connect,close:0");
    ck_assert_str_eq(th_log_str(&bad.log), "lookup:ENOTFOUND,error:ENOTFOUND,close:1");
    ck_assert_int_ge(th_dnsd_queries(t->dnsd), 2);
    t_done(t);
}
END_TEST

static void connect_to_listener(void *self, const nd_event_t *ev, void *arg)
{
    t_t *t = arg;
    nd_address_t a;

    ck_assert_int_eq(nd_server_address(self, &a), 0);
    ck_assert_str_eq(a.address, "127.0.0.1");
    ck_assert_int_eq(a.family, 4);
    ck_assert_int_gt(a.port, 0);
    t->port = a.port;
    nd_socket_t *c = new_client(t);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CONNECT, destroy_self, NULL), 0);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CLOSE, close_server_ev, t), 0);
    connect_to(t, c, "127.0.0.1", t->port, 0);
}

/* listen(0, 'test.netd') resolves the name, then binds the address it got. */
START_TEST(test_listen_on_host_name)
{
    t_t *t = t_new();
    int listening = 0;
    nd_server_t *s = nd_server_new(t->loop, NULL, on_connection, t);

    ck_assert_ptr_nonnull(s);
    t->server = s;
    ck_assert_int_eq(nd_server_on(s, ND_EV_ERROR, abort_on_server_error, NULL), 0);
    ck_assert_int_eq(nd_server_on(s, ND_EV_LISTENING, set_flag, &listening), 0);
    ck_assert_int_eq(nd_server_on(s, ND_EV_LISTENING, connect_to_listener, t), 0);
    ck_assert_int_eq(nd_server_listen(s, 0, "test.netd", 0), 0);
    th_run(t->loop, 5000);

    ck_assert_int_eq(listening, 1);
    ck_assert_int_gt(th_dnsd_queries(t->dnsd), 0);
    ck_assert_int_eq(t->s_conns, 1);
    ck_assert_str_eq(th_log_str(&t->log), "connect,close:0"); /* the client dials a literal */
    t_done(t);
}
END_TEST

static void server_log(void *self, const nd_event_t *ev, void *arg)
{
    t_t *t = arg;

    if (ev->type == ND_EV_ERROR)
        th_log(&t->log, "error:%s", ev->error->name);
    else if (ev->type == ND_EV_LISTENING)
        th_log(&t->log, "listening");
    else if (ev->type == ND_EV_CLOSE)
        th_log(&t->log, "close");
}

START_TEST(test_listen_on_unknown_name)
{
    t_t *t = t_new();
    nd_server_t *s = nd_server_new(t->loop, NULL, on_connection, t);

    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(nd_server_on(s, ND_EV_ERROR, server_log, t), 0);
    ck_assert_int_eq(nd_server_on(s, ND_EV_LISTENING, server_log, t), 0);
    ck_assert_int_eq(nd_server_on(s, ND_EV_CLOSE, server_log, t), 0);
    ck_assert_int_eq(nd_server_listen(s, 0, "nope.netd", 0), 0);
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&t->log), "error:ENOTFOUND"); /* no 'close' (issue 12.2) */
    ck_assert_int_gt(th_dnsd_queries(t->dnsd), 0);
    ck_assert_int_eq(nd_server_free(s), 0);
    t_done(t);
}
END_TEST

/* Issue 12 check: with no family given, a name is looked up in any family, as v0.10's
 * dns.lookup did: a host with only an AAAA record connects over IPv6. */
START_TEST(test_aaaa_only_name_any_family)
{
    if (!have_ipv6()) {
        fprintf(stderr, "skipped: no IPv6 loopback\n");
        return;
    }
    t_t *t = t_new();

    serve(t, "::1");
    nd_socket_t *c = new_client(t);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CONNECT, destroy_self, NULL), 0);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CLOSE, close_server_ev, t), 0);
    connect_to(t, c, "six.netd", t->port, 0);
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&t->log), "lookup,connect,close:0");
    ck_assert_str_eq(t->lookup_addr, "::1");
    ck_assert_int_eq(t->lookup_family, 6);
    ck_assert_str_eq(t->remote, "::1");
    t_done(t);
}
END_TEST

/* A name of /etc/hosts other than localhost, with its address; 0 when there is none. */
static int hosts_entry(char *name, size_t namelen, char *addr, size_t addrlen)
{
    FILE *f = fopen("/etc/hosts", "r");
    char line[512];
    int found = 0;

    if (!f)
        return 0;
    while (!found && fgets(line, sizeof(line), f)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *save = NULL;
        char *ip = strtok_r(line, " \t\r\n", &save);
        if (!ip || !nd_is_ip(ip))
            continue;
        char *n;
        while ((n = strtok_r(NULL, " \t\r\n", &save)) != NULL) {
            if (strcmp(n, "localhost") != 0 && strlen(n) < namelen && strchr(n, '.') == NULL) {
                snprintf(name, namelen, "%s", n);
                snprintf(addr, addrlen, "%s", ip);
                found = 1;
                break;
            }
        }
    }
    fclose(f);
    return found;
}

/* Issue 12.14: with a nameserver set (the test responder, which knows no such name), the
 * hosts file still answers first, as the header says. */
START_TEST(test_hosts_file_with_nameserver)
{
    char name[128], addr[64];
    t_t *t = t_new();

    ck_assert_msg(hosts_entry(name, sizeof(name), addr, sizeof(addr)),
                  "/etc/hosts names nothing but localhost");
    nd_socket_t *c = new_client(t);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_LOOKUP, destroy_self, NULL), 0);
    connect_to(t, c, name, 9, nd_is_ip(addr));
    th_run(t->loop, 5000);

    ck_assert_str_eq(th_log_str(&t->log), "lookup,close:0");
    ck_assert_str_eq(t->lookup_addr, addr);
    ck_assert_int_eq(th_dnsd_queries(t->dnsd), 0);
    t_done(t);
}
END_TEST

static Suite *dns_suite(void)
{
    Suite *s = suite_create("dns");
    TCase *tc = th_tcase(s, "lookup", 10);
    tcase_add_test(tc, test_lookup_before_connect);
    tcase_add_test(tc, test_lookup_family_6);
    tcase_add_test(tc, test_unknown_name_enotfound);
    tcase_add_test(tc, test_end_right_after_connect_to_bad_name);
    tcase_add_test(tc, test_destroy_during_lookup);
    tcase_add_test(tc, test_ip_literal_lookup_without_query);
    tcase_add_test(tc, test_ipv6_literal_lookup_without_query);
    tcase_add_test(tc, test_lookup_never_synchronous);
    tcase_add_test(tc, test_localhost_from_hosts_file);
    tcase_add_test(tc, test_reconnect_after_enotfound);
    tcase_add_test(tc, test_concurrent_lookups_independent);
    tcase_add_test(tc, test_aaaa_only_name_any_family);
    tcase_add_test(tc, test_hosts_file_with_nameserver);

    tc = th_tcase(s, "listen", 10);
    tcase_add_test(tc, test_listen_on_host_name);
    tcase_add_test(tc, test_listen_on_unknown_name);
    return s;
}

int main(void)
{
    return th_run_suite(dns_suite());
}
