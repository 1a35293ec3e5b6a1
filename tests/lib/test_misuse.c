/* SPDX-License-Identifier: MIT */
/*
 * Misuse of the public API: NULL and empty arguments, calls in the wrong state, and
 * destroying or closing objects from inside their own callbacks. No crash, no leak, a
 * clear error code, and nothing emitted that the header does not promise.
 *
 * Where the header is silent about a NULL object or argument, these tests expect -EINVAL
 * from calls that return an int error, NULL / 0 from getters, and nothing at all from
 * void calls; each such case is marked "silent" below.
 */
#include "config.h"

#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------ */
/* Helpers                                                                              */
/* ------------------------------------------------------------------------------------ */

static int str_ends(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static void nop_listener(void *self, const nd_event_t *ev, void *arg) {}

static void nop_count(nd_server_t *server, int err, int count, void *arg) {}

static void nop_defer(void *arg) {}

typedef struct ctx {
    th_pair_t p;
    th_sink_t cs, ss;
    int r[16];
    int flag;
    int in_call, sync_events;
    int nwcb, wcb_err, ncb;
    th_timer_t *timer;
    uint64_t u;
} ctx_t;

static void ctx_free(ctx_t *c)
{
    th_sink_free(&c->cs);
    th_sink_free(&c->ss);
}

static void hook_client_sink(th_pair_t *p)
{
    ctx_t *c = p->arg;
    th_sink_attach(p->client, &c->cs, TH_SINK_ALL);
}

static void hook_server_sink(th_pair_t *p)
{
    ctx_t *c = p->arg;
    th_sink_attach(p->conn, &c->ss, TH_SINK_ALL);
}

static void log_wcb(nd_socket_t *s, int err, void *arg)
{
    ctx_t *c = arg;
    c->nwcb++;
    c->wcb_err = err;
    if (c->in_call)
        c->sync_events++;
    th_log(&c->cs.log, "wcb:%s", err ? nd_err_name(err) : "0");
}

static void note_sync(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    if (c->in_call)
        c->sync_events++;
}

/* Server side of the server tests: an event log and the count of each event. */
typedef struct srv {
    nd_loop_t *loop;
    nd_server_t *s;
    th_log_t log;
    int nlistening, nconnection, nerror, nclose;
    int r[8];
    char error_name[32];
    nd_socket_t *conns[4];
    int conn_end_seen_at_close;
    th_sink_t cs, ks; /* a client and the accepted socket */
} srv_t;

static void srv_ev(void *self, const nd_event_t *ev, void *arg)
{
    srv_t *v = arg;
    switch (ev->type) {
    case ND_EV_LISTENING:
        v->nlistening++;
        th_log(&v->log, "listening");
        break;
    case ND_EV_CONNECTION:
        v->nconnection++;
        th_log(&v->log, "connection");
        break;
    case ND_EV_ERROR:
        v->nerror++;
        snprintf(v->error_name, sizeof(v->error_name), "%s", ev->error->name);
        th_log(&v->log, "error:%s", ev->error->name);
        break;
    case ND_EV_CLOSE:
        v->nclose++;
        th_log(&v->log, "close");
        break;
    default:
        break;
    }
}

static nd_server_t *srv_new(srv_t *v, nd_loop_t *loop)
{
    v->loop = loop;
    v->s = nd_server_new(loop, NULL, NULL, NULL);
    ck_assert_ptr_nonnull(v->s);
    ck_assert_int_eq(nd_server_on(v->s, ND_EV_LISTENING, srv_ev, v), 0);
    ck_assert_int_eq(nd_server_on(v->s, ND_EV_CONNECTION, srv_ev, v), 0);
    ck_assert_int_eq(nd_server_on(v->s, ND_EV_ERROR, srv_ev, v), 0);
    ck_assert_int_eq(nd_server_on(v->s, ND_EV_CLOSE, srv_ev, v), 0);
    return v->s;
}

static void close_on_listening(void *self, const nd_event_t *ev, void *arg)
{
    ck_assert_int_eq(nd_server_close(self, NULL, NULL), 0);
}

/* A server the test never got listening must still be closed to be freed: the lifetime
 * rule frees objects only after 'close'. */
static void srv_listen_then_close(srv_t *v)
{
    ck_assert_int_eq(nd_server_once(v->s, ND_EV_LISTENING, close_on_listening, v), 0);
    ck_assert_int_eq(nd_server_listen(v->s, 0, "127.0.0.1", 0), 0);
    th_run(v->loop, 5000);
}

/* ------------------------------------------------------------------------------------ */
/* Error names                                                                          */
/* ------------------------------------------------------------------------------------ */

START_TEST(err_name_and_strerror_of_unknown_codes)
{
    static const int unknown[] = {-99999, ND__ERRNO_MIN, -10011, -20000, INT_MIN, INT_MAX, 99999};
    nd_loop_t *loop = th_loop_new();

    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        const char *name = nd_err_name(unknown[i]);
        const char *msg = nd_strerror(unknown[i]);
        ck_assert_ptr_nonnull(name);
        ck_assert_msg(strcmp(name, "UNKNOWN") == 0, "nd_err_name(%d) = %s", unknown[i], name);
        ck_assert_ptr_nonnull(msg);
        ck_assert_msg(msg[0] != '\0', "nd_strerror(%d) is empty", unknown[i]);
    }
    th_finish(loop);
}
END_TEST

static const struct nd_code {
    int code;
    const char *name;
    const char *msg;
} nd_codes[] = {
#define X(n, v, m) {ND_##n, #n, m},
    ND_ERRNO_MAP(X)
#undef X
};

#define NCODES (sizeof(nd_codes) / sizeof(nd_codes[0]))

START_TEST(every_nd_code_has_its_own_name_and_message)
{
    nd_loop_t *loop = th_loop_new();

    for (size_t i = 0; i < NCODES; i++) {
        ck_assert_int_lt(nd_codes[i].code, ND__ERRNO_MIN);
        ck_assert_str_eq(nd_err_name(nd_codes[i].code), nd_codes[i].name);
        ck_assert_str_eq(nd_strerror(nd_codes[i].code), nd_codes[i].msg);
        for (size_t j = 0; j < i; j++) {
            ck_assert_int_ne(nd_codes[i].code, nd_codes[j].code);
            ck_assert_str_ne(nd_err_name(nd_codes[i].code), nd_err_name(nd_codes[j].code));
        }
        /* Nor may a library code borrow the name of a system error. */
        for (int e = 1; e < 200; e++)
            ck_assert_msg(strcmp(nd_err_name(-e), nd_codes[i].name) != 0,
                          "errno %d is also named %s", e, nd_codes[i].name);
    }
    th_finish(loop);
}
END_TEST

START_TEST(err_name_takes_errnos_of_either_sign)
{
    static const struct {
        int e;
        const char *name;
    } tab[] = {{ECONNREFUSED, "ECONNREFUSED"},
               {EPIPE, "EPIPE"},
               {ENOENT, "ENOENT"},
               {EINVAL, "EINVAL"},
               {EADDRINUSE, "EADDRINUSE"},
               {ECONNRESET, "ECONNRESET"}};
    nd_loop_t *loop = th_loop_new();

    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
        ck_assert_str_eq(nd_err_name(-tab[i].e), tab[i].name);
        ck_assert_str_eq(nd_err_name(tab[i].e), tab[i].name);
        ck_assert_ptr_nonnull(nd_strerror(-tab[i].e));
        ck_assert_ptr_nonnull(nd_strerror(tab[i].e));
    }
    th_finish(loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* NULL and empty arguments                                                             */
/* ------------------------------------------------------------------------------------ */

/* silent: nd_loop_run and nd_loop_run_once with a NULL loop. */
START_TEST(loop_run_takes_null)
{
    nd_loop_t *loop = th_loop_new();

    ck_assert_int_eq(nd_loop_run(NULL), -EINVAL);
    ck_assert_int_eq(nd_loop_run_once(NULL, 1), -EINVAL);
    th_finish(loop);
}
END_TEST

/* silent: void calls with a NULL loop do nothing (nd_loop_free(NULL) as free(NULL)). */
START_TEST(loop_void_calls_take_null)
{
    nd_loop_t *loop = th_loop_new();

    nd_loop_stop(NULL);
    nd_loop_free(NULL);
    nd_loop_ref(NULL);
    nd_loop_unref(NULL);
    nd_loop_ref_mp(NULL);
    nd_loop_unref_mp(NULL);
    th_finish(loop);
}
END_TEST

/* silent: getters of a NULL loop answer NULL, or 0 / -EINVAL for counts. */
START_TEST(loop_getters_take_null)
{
    nd_loop_t *loop = th_loop_new();
    nd_loop_stats_t st;

    ck_assert_ptr_null(nd_loop_base(NULL));
    int hc = nd_loop_handle_count(NULL);
    ck_assert_msg(hc == 0 || hc == -EINVAL, "handle_count(NULL) = %d", hc);
    int ac = nd_loop_alive_count(NULL);
    ck_assert_msg(ac == 0 || ac == -EINVAL, "alive_count(NULL) = %d", ac);
    nd_loop_stats(NULL, &st);
    nd_loop_stats(loop, NULL);
    th_finish(loop);
}
END_TEST

static void nop_post(nd_loop_t *loop, void *arg) {}

/* documented for post (-EINVAL); silent for the rest (-EINVAL, NULL with EINVAL). */
START_TEST(loop_functions_with_callbacks_take_null)
{
    nd_loop_t *loop = th_loop_new();

    ck_assert_int_eq(nd_loop_defer(NULL, nop_defer, NULL), -EINVAL);
    ck_assert_int_eq(nd_loop_defer(loop, NULL, NULL), -EINVAL);
    ck_assert_int_eq(nd_loop_post(NULL, nop_post, NULL), -EINVAL);
    ck_assert_int_eq(nd_loop_post(loop, NULL, NULL), -EINVAL);
    ck_assert_int_eq(nd_loop_stop_post(NULL), -EINVAL);
    ck_assert_int_eq(nd_loop_set_nameserver(NULL, "127.0.0.1:53"), -EINVAL);
    errno = 0;
    ck_assert_ptr_null(nd_thread_start(NULL));
    ck_assert_int_eq(errno, EINVAL);
    nd_thread_stop(NULL);
    ck_assert_int_eq(nd_thread_join(NULL), -EINVAL);
    /* Nothing was queued by the refused calls: the loop has no work. */
    ck_assert_int_eq(nd_loop_alive_count(loop), 0);
    th_run(loop, 1000);
    th_finish(loop);
}
END_TEST

/* documented: parse gives -EINVAL for other names; silent for NULL and empty. */
START_TEST(balance_parse_takes_null_and_unknown_names)
{
    nd_loop_t *loop = th_loop_new();

    ck_assert_int_eq(nd_balance_parse(NULL), -EINVAL);
    ck_assert_int_eq(nd_balance_parse(""), -EINVAL);
    ck_assert_int_eq(nd_balance_parse("random"), -EINVAL);
    ck_assert_int_eq(nd_balance_parse("leastconn"), ND_BALANCE_LEASTCONN);
    ck_assert_str_eq(nd_balance_name(ND_BALANCE_REUSEPORT), "reuseport");
    (void)nd_balance_name((nd_balance_t)42); /* silent: anything but a crash */
    th_finish(loop);
}
END_TEST

/* documented: NULL with EINVAL for no workers; silent for a NULL owner. */
START_TEST(server_group_with_bad_arguments)
{
    nd_loop_t *loop = th_loop_new();
    nd_loop_t *const workers[1] = {loop};

    errno = 0;
    ck_assert_ptr_null(
        nd_server_new_group(NULL, NULL, workers, 1, ND_BALANCE_LEASTCONN, NULL, NULL));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(nd_server_new_group(loop, NULL, NULL, 0, ND_BALANCE_LEASTCONN, NULL, NULL));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(
        nd_server_new_group(loop, NULL, workers, 0, ND_BALANCE_ROUNDROBIN, NULL, NULL));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(
        nd_server_new_group(loop, NULL, workers, -1, ND_BALANCE_ROUNDROBIN, NULL, NULL));
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_int_eq(nd_loop_handle_count(loop), 0);
    th_finish(loop);
}
END_TEST

/* documented (net.h, Errors): every constructor answers bad arguments with NULL and errno
 * EINVAL, and leaves nothing behind. nd_thread_start and nd_connect are above. */
START_TEST(constructors_take_bad_arguments)
{
    nd_loop_t *loop = th_loop_new();
    nd_loop_t *const bad_workers[2] = {loop, NULL};
    nd_loop_t *const workers[1] = {loop};
    nd_socket_options_t o;

    errno = 0;
    ck_assert_ptr_null(nd_server_new(NULL, NULL, nop_listener, NULL));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(nd_socket_new(NULL, NULL));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(
        nd_server_new_group(loop, NULL, bad_workers, 2, ND_BALANCE_LEASTCONN, NULL, NULL));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(nd_server_new_group(loop, NULL, workers, 1, (nd_balance_t)42, NULL, NULL));
    ck_assert_int_eq(errno, EINVAL);
    /* A descriptor that is not open: the system's errno. */
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(close(fd), 0);
    nd_socket_options_init(&o);
    o.fd = fd;
    errno = 0;
    ck_assert_ptr_null(nd_socket_new(loop, &o));
    ck_assert_int_eq(errno, EBADF);
    ck_assert_int_eq(nd_loop_handle_count(loop), 0);
    ck_assert_int_eq(nd_loop_alive_count(loop), 0);
    th_finish(loop);
}
END_TEST

/* documented: a loop that cannot get its descriptors (the mailbox's, and the three
 * libevent's base needs) is NULL with EMFILE, and gives back everything it took (ASan
 * checks the memory, the lowest free descriptor the rest). libevent 2.1 itself would
 * exit() the process inside event_base_new without them: with 0, 1 or 2 free this test's
 * process ended with status 1 before nd_loop_new checked first. With 4 free it works. */
START_TEST(loop_new_without_descriptors_gives_emfile)
{
    int free_fds = _i;
    struct rlimit old, low;
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
    int probe = open("/dev/null", O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(probe, 0);
    ck_assert_int_eq(close(probe), 0);
    low = old;
    low.rlim_cur = (rlim_t)probe + 16;
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
    int taken[16], n = 0, fd;
    while (n < 16 && (fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
        taken[n++] = fd;
    ck_assert_int_ge(n, free_fds);
    for (int i = 0; i < free_fds; i++)
        close(taken[--n]);
    errno = 0;
    nd_loop_t *loop = nd_loop_new();
    int err = errno;
    if (loop)
        nd_loop_free(loop);
    for (int i = 0; i < n; i++)
        close(taken[i]);
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
    if (free_fds < 4) {
        ck_assert_ptr_null(loop);
        ck_assert_int_eq(err, EMFILE);
    } else {
        ck_assert_ptr_nonnull(loop);
    }
    /* Nothing stayed open: the lowest free descriptor is the same as before. */
    fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    ck_assert_int_eq(fd, probe);
    ck_assert_int_eq(close(fd), 0);
}
END_TEST

/* documented: -EINVAL for a bad address. */
START_TEST(set_nameserver_rejects_bad_addresses)
{
    static const char *const bad[] = {"",     "not-an-address", "127.0.0.1:99999",
                                      "[::1", "127.0.0.1:",     "1.2.3.4.5:53"};
    nd_loop_t *loop = th_loop_new();

    ck_assert_int_eq(nd_loop_set_nameserver(loop, NULL), -EINVAL);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(nd_loop_set_nameserver(loop, bad[i]) == -EINVAL, "\"%s\" accepted", bad[i]);
    ck_assert_int_eq(nd_loop_set_nameserver(loop, "127.0.0.1:5353"), 0);
    th_finish(loop);
}
END_TEST

/* documented for nd_is_ip(NULL); silent for v4/v6, expected the same. */
START_TEST(is_ip_takes_null_and_empty)
{
    nd_loop_t *loop = th_loop_new();

    ck_assert_int_eq(nd_is_ip(NULL), 0);
    ck_assert_int_eq(nd_is_ipv4(NULL), 0);
    ck_assert_int_eq(nd_is_ipv6(NULL), 0);
    ck_assert_int_eq(nd_is_ip(""), 0);
    ck_assert_int_eq(nd_is_ipv4(""), 0);
    ck_assert_int_eq(nd_is_ipv6(""), 0);
    /* documented: "IPv4", "IPv6", or NULL for family 0; silent for other numbers. */
    ck_assert_str_eq(nd_family_name(4), "IPv4");
    ck_assert_str_eq(nd_family_name(6), "IPv6");
    ck_assert_ptr_null(nd_family_name(0));
    ck_assert_ptr_null(nd_family_name(5));
    ck_assert_ptr_null(nd_family_name(-1));
    th_finish(loop);
}
END_TEST

/* silent throughout: a NULL server. */
START_TEST(server_functions_take_a_null_server)
{
    nd_loop_t *loop = th_loop_new();
    nd_address_t a;
    int n;

    ck_assert_ptr_null(nd_server_new(NULL, NULL, NULL, NULL));
    ck_assert_int_eq(nd_server_listen(NULL, 0, "127.0.0.1", 0), -EINVAL);
    ck_assert_int_eq(nd_server_listen_path(NULL, "/tmp/nd-never", 0), -EINVAL);
    ck_assert_int_eq(nd_server_listen_fd(NULL, -1, 0), -EINVAL);
    ck_assert_int_eq(nd_server_listen_handle(NULL, NULL, 0), -EINVAL);
    ck_assert_int_eq(nd_server_listen_socket_handle(NULL, NULL, 0), -EINVAL);
    ck_assert_int_eq(nd_server_close(NULL, NULL, NULL), -EINVAL);
    ck_assert_int_eq(nd_server_address(NULL, &a), -EINVAL);
    nd_server_ref(NULL);
    nd_server_unref(NULL);
    nd_server_set_max_connections(NULL, 3);
    n = nd_server_max_connections(NULL);
    ck_assert_msg(n == 0 || n == -EINVAL, "max_connections(NULL) = %d", n);
    n = nd_server_connections(NULL);
    ck_assert_msg(n == 0 || n == -EINVAL, "connections(NULL) = %d", n);
    ck_assert_int_eq(nd_server_get_connections(NULL, nop_count, NULL), -EINVAL);
    ck_assert_int_eq(nd_server_listening(NULL), 0);
    ck_assert_int_eq(nd_server_on(NULL, ND_EV_CLOSE, nop_listener, NULL), -EINVAL);
    ck_assert_int_eq(nd_server_once(NULL, ND_EV_CLOSE, nop_listener, NULL), -EINVAL);
    ck_assert_int_eq(nd_server_off(NULL, ND_EV_CLOSE, nop_listener, NULL), -EINVAL);
    nd_server_hold(NULL);
    nd_server_release(NULL);
    ck_assert_ptr_null(nd_server_loop(NULL));
    nd_server_set_data(NULL, &a);
    ck_assert_ptr_null(nd_server_data(NULL));
    ck_assert_int_eq(nd_server_worker_index(NULL), -1);
    nd_server_stats_t st;
    nd_server_stats(NULL, &st);
    ck_assert_int_eq(nd_loop_handle_count(loop), 0);
    th_finish(loop);
}
END_TEST

/* silent: NULL out, NULL callback, NULL listener, events out of range. */
START_TEST(server_functions_take_null_arguments)
{
    srv_t v = {0};
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    ck_assert_int_eq(nd_server_address(v.s, NULL), -EINVAL);
    ck_assert_int_eq(nd_server_get_connections(v.s, NULL, NULL), -EINVAL);
    ck_assert_int_eq(nd_server_on(v.s, ND_EV_CLOSE, NULL, NULL), -EINVAL);
    ck_assert_int_eq(nd_server_once(v.s, ND_EV_CLOSE, NULL, NULL), -EINVAL);
    ck_assert_int_eq(nd_server_on(v.s, ND_EV__COUNT, nop_listener, NULL), -EINVAL);
    ck_assert_int_eq(nd_server_on(v.s, (nd_event_type_t)-1, nop_listener, NULL), -EINVAL);
    ck_assert_int_eq(nd_server_once(v.s, ND_EV__COUNT, nop_listener, NULL), -EINVAL);
    int r = nd_server_off(v.s, ND_EV_CLOSE, NULL, NULL);
    ck_assert_msg(r == -EINVAL || r == -ENOENT, "off(NULL fn) = %d", r);
    ck_assert_int_eq(nd_server_listen_path(v.s, NULL, 0), -EINVAL);
    ck_assert_int_eq(nd_server_listen_path(v.s, "", 0), -EINVAL);
    ck_assert_int_eq(nd_server_listen_handle(v.s, NULL, 0), -EINVAL);
    ck_assert_int_eq(nd_server_listen_socket_handle(v.s, NULL, 0), -EINVAL);
    nd_server_stats(v.s, NULL);
    /* None of that started anything: the server still listens normally. */
    srv_listen_then_close(&v);
    ck_assert_str_eq(th_log_str(&v.log), "listening,close");
    th_finish(loop);
}
END_TEST

/* documented: -EINVAL for a port out of 0..65535; a synchronous failure emits nothing. */
START_TEST(listen_rejects_ports_out_of_range)
{
    srv_t v = {0};
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    ck_assert_int_eq(nd_server_listen(v.s, -1, "127.0.0.1", 0), -EINVAL);
    ck_assert_int_eq(nd_server_listen(v.s, 65536, "127.0.0.1", 0), -EINVAL);
    ck_assert_int_eq(nd_server_listen(v.s, INT_MAX, NULL, 0), -EINVAL);
    ck_assert_int_eq(nd_server_listen(v.s, INT_MIN, NULL, 0), -EINVAL);
    ck_assert_int_eq(nd_server_listening(v.s), 0);
    th_run(loop, 1000);
    ck_assert_str_eq(th_log_str(&v.log), "");
    srv_listen_then_close(&v);
    ck_assert_str_eq(th_log_str(&v.log), "listening,close");
    th_finish(loop);
}
END_TEST

static void relisten_in_listening(void *self, const nd_event_t *ev, void *arg)
{
    srv_t *v = arg;
    v->r[2] = nd_server_listen(self, 0, "127.0.0.1", 0);
    v->r[3] = nd_server_listen_path(self, "/tmp/nd-misuse-never.sock", 0);
    ck_assert_int_eq(nd_server_close(self, NULL, NULL), 0);
}

/* documented: ND_ELISTENING, whether 'listening' already came or not. */
START_TEST(listen_twice_gives_elistening)
{
    srv_t v = {0};
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    ck_assert_int_eq(nd_server_once(v.s, ND_EV_LISTENING, relisten_in_listening, &v), 0);
    v.r[0] = nd_server_listen(v.s, 0, "127.0.0.1", 0);
    v.r[1] = nd_server_listen(v.s, 0, "127.0.0.1", 0);
    th_run(loop, 5000);

    ck_assert_int_eq(v.r[0], 0);
    ck_assert_int_eq(v.r[1], ND_ELISTENING);
    ck_assert_int_eq(v.r[2], ND_ELISTENING);
    ck_assert_int_eq(v.r[3], ND_ELISTENING);
    ck_assert_str_eq(th_log_str(&v.log), "listening,close");
    ck_assert_int_eq(access("/tmp/nd-misuse-never.sock", F_OK), -1);
    th_finish(loop);
}
END_TEST

static void count_close_cb(void *self, const nd_event_t *ev, void *arg)
{
    int *n = arg;
    (*n)++;
}

/* documented: ND_ENOTRUNNING and nothing emitted. */
START_TEST(close_a_server_that_never_listened)
{
    srv_t v = {0};
    int ncb = 0;
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    ck_assert_int_eq(nd_server_close(v.s, count_close_cb, &ncb), ND_ENOTRUNNING);
    th_run(loop, 1000);
    ck_assert_str_eq(th_log_str(&v.log), "");
    ck_assert_int_eq(ncb, 0);
    srv_listen_then_close(&v);
    ck_assert_str_eq(th_log_str(&v.log), "listening,close");
    ck_assert_int_eq(ncb, 0); /* the refused close did not leave its callback behind */
    th_finish(loop);
}
END_TEST

static void close_twice_in_listening(void *self, const nd_event_t *ev, void *arg)
{
    srv_t *v = arg;
    v->r[0] = nd_server_close(self, count_close_cb, &v->r[4]);
    v->r[1] = nd_server_close(self, count_close_cb, &v->r[5]);
}

static void close_again_in_close(void *self, const nd_event_t *ev, void *arg)
{
    srv_t *v = arg;
    v->r[2] = nd_server_close(self, NULL, NULL);
}

/* documented: the second close gives ND_ENOTRUNNING ("closing" or "already closed"). */
START_TEST(close_a_server_twice)
{
    srv_t v = {0};
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    nd_server_hold(v.s);
    ck_assert_int_eq(nd_server_once(v.s, ND_EV_LISTENING, close_twice_in_listening, &v), 0);
    ck_assert_int_eq(nd_server_on(v.s, ND_EV_CLOSE, close_again_in_close, &v), 0);
    ck_assert_int_eq(nd_server_listen(v.s, 0, "127.0.0.1", 0), 0);
    th_run(loop, 5000);

    ck_assert_int_eq(v.r[0], 0);
    ck_assert_int_eq(v.r[1], ND_ENOTRUNNING);
    ck_assert_int_eq(v.r[2], ND_ENOTRUNNING);
    ck_assert_int_eq(v.r[4], 1);
    ck_assert_int_eq(v.r[5], 0);
    ck_assert_str_eq(th_log_str(&v.log), "listening,close");
    /* Held, so still valid after its 'close'. */
    ck_assert_int_eq(nd_server_close(v.s, NULL, NULL), ND_ENOTRUNNING);
    ck_assert_int_eq(nd_server_listening(v.s), 0);
    nd_server_release(v.s);
    th_run(loop, 1000);
    ck_assert_int_eq(v.nclose, 1);
    th_finish(loop);
}
END_TEST

/* documented: a close on the listen turn cancels 'listening'; only 'close' follows. */
START_TEST(close_twice_on_the_listen_turn)
{
    srv_t v = {0};
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    ck_assert_int_eq(nd_server_listen(v.s, 0, "127.0.0.1", 0), 0);
    v.r[0] = nd_server_close(v.s, NULL, NULL);
    v.r[1] = nd_server_close(v.s, NULL, NULL);
    th_run(loop, 5000);

    ck_assert_int_eq(v.r[0], 0);
    ck_assert_int_eq(v.r[1], ND_ENOTRUNNING);
    ck_assert_str_eq(th_log_str(&v.log), "close");
    th_finish(loop);
}
END_TEST

START_TEST(close_the_server_inside_listening)
{
    srv_t v = {0};
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    ck_assert_int_eq(nd_server_once(v.s, ND_EV_LISTENING, close_on_listening, &v), 0);
    ck_assert_int_eq(nd_server_listen(v.s, 0, "127.0.0.1", 0), 0);
    th_run(loop, 5000);
    ck_assert_str_eq(th_log_str(&v.log), "listening,close");
    ck_assert_int_eq(v.nconnection, 0);
    th_finish(loop);
}
END_TEST

static void cic_conn_end(void *self, const nd_event_t *ev, void *arg)
{
    srv_t *v = arg;
    th_log(&v->log, "conn-end");
}

static void cic_server_close(void *self, const nd_event_t *ev, void *arg)
{
    srv_t *v = arg;
    v->conn_end_seen_at_close = v->ks.nend;
}

static void cic_connection(void *self, const nd_event_t *ev, void *arg)
{
    srv_t *v = arg;
    v->r[0] = nd_server_close(self, NULL, NULL);
    th_sink_attach(ev->socket, &v->ks, TH_SINK_ALL);
    ck_assert_int_eq(nd_socket_on(ev->socket, ND_EV_END, cic_conn_end, v), 0);
}

static void cic_listening(void *self, const nd_event_t *ev, void *arg)
{
    srv_t *v = arg;
    int port = th_server_port(self);
    nd_socket_t *c = th_connect(v->loop, port, NULL, NULL);
    th_sink_attach(c, &v->cs, TH_SINK_ALL);
    ck_assert_int_eq(nd_socket_end(c, "x", 1), 0);
}

/* documented: the server's 'close' waits for the connection it already accepted. */
START_TEST(close_the_server_inside_connection)
{
    srv_t v = {0};
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    ck_assert_int_eq(nd_server_on(v.s, ND_EV_CONNECTION, cic_connection, &v), 0);
    ck_assert_int_eq(nd_server_on(v.s, ND_EV_CLOSE, cic_server_close, &v), 0);
    ck_assert_int_eq(nd_server_once(v.s, ND_EV_LISTENING, cic_listening, &v), 0);
    ck_assert_int_eq(nd_server_listen(v.s, 0, "127.0.0.1", 0), 0);
    th_run(loop, 5000);

    ck_assert_int_eq(v.r[0], 0);
    ck_assert_str_eq(th_log_str(&v.log), "listening,connection,conn-end,close");
    ck_assert_int_eq(v.conn_end_seen_at_close, 1);
    ck_assert_str_eq(TH_BUF_STR(v.ks.data), "x");
    ck_assert_int_eq(v.ks.nclose, 1);
    ck_assert_str_eq(th_log_str(&v.cs.log), "connect,finish,end,close");
    th_sink_free(&v.ks);
    th_sink_free(&v.cs);
    th_finish(loop);
}
END_TEST

/* documented: -ENOENT. */
START_TEST(server_off_of_a_listener_never_added)
{
    srv_t v = {0};
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    ck_assert_int_eq(nd_server_off(v.s, ND_EV_LISTENING, nop_listener, NULL), -ENOENT);
    ck_assert_int_eq(nd_server_on(v.s, ND_EV_LISTENING, nop_listener, &v), 0);
    /* Same fn, other arg, or other event: not that listener. */
    ck_assert_int_eq(nd_server_off(v.s, ND_EV_LISTENING, nop_listener, NULL), -ENOENT);
    ck_assert_int_eq(nd_server_off(v.s, ND_EV_CLOSE, nop_listener, &v), -ENOENT);
    ck_assert_int_eq(nd_server_off(v.s, ND_EV_LISTENING, nop_listener, &v), 0);
    ck_assert_int_eq(nd_server_off(v.s, ND_EV_LISTENING, nop_listener, &v), -ENOENT);
    srv_listen_then_close(&v);
    ck_assert_str_eq(th_log_str(&v.log), "listening,close");
    th_finish(loop);
}
END_TEST

/* documented: address() before the bind is ND_ENOTRUNNING. */
START_TEST(server_address_before_listen)
{
    srv_t v = {0};
    nd_address_t a;
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    ck_assert_int_eq(nd_server_address(v.s, &a), ND_ENOTRUNNING);
    srv_listen_then_close(&v);
    th_finish(loop);
}
END_TEST

/* documented: a descriptor that is not a socket gives an async 'error' EINVAL or ENOTSOCK,
 * then 'close'; the server owns (and closes) the descriptor. */
START_TEST(listen_fd_on_a_regular_file)
{
    srv_t v = {0};
    nd_loop_t *loop = th_loop_new();
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

    ck_assert_int_ge(fd, 0);
    srv_new(&v, loop);
    ck_assert_int_eq(nd_server_listen_fd(v.s, fd, 0), 0);
    th_run(loop, 5000);

    ck_assert_int_eq(v.nlistening, 0);
    ck_assert_int_eq(v.nerror, 1);
    ck_assert_msg(strcmp(v.error_name, "EINVAL") == 0 || strcmp(v.error_name, "ENOTSOCK") == 0,
                  "error %s", v.error_name);
    ck_assert_int_eq(v.nclose, 0); /* a failed listen emits no 'close' */
    ck_assert_int_eq(nd_server_free(v.s), 0);
    th_finish(loop);
}
END_TEST

/* silent: fd -1. Either a synchronous failure or an async 'error' then 'close'; never
 * 'listening'. */
START_TEST(listen_fd_minus_one)
{
    srv_t v = {0};
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    nd_server_hold(v.s);
    int r = nd_server_listen_fd(v.s, -1, 0);
    th_run(loop, 5000);
    if (r < 0) {
        ck_assert_msg(r == -EINVAL || r == -EBADF, "listen_fd(-1) = %d", r);
        ck_assert_str_eq(th_log_str(&v.log), "");
    } else {
        ck_assert_int_eq(v.nerror, 1);
        ck_assert_int_eq(v.nclose, 1);
        ck_assert_int_eq(v.nlistening, 0);
    }
    v.log.len = 0;
    v.log.buf[0] = '\0';
    srv_listen_then_close(&v);
    ck_assert_str_eq(th_log_str(&v.log), "listening,close");
    nd_server_release(v.s);
    th_run(loop, 1000);
    th_finish(loop);
}
END_TEST

/* silent: listen on the handle of a server that is not listening. Either refused at
 * once, or an async 'error' then 'close'; never 'listening'. */
START_TEST(listen_handle_of_a_server_that_is_not_listening)
{
    srv_t v = {0}, other = {0};
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    srv_new(&other, loop);
    nd_server_hold(v.s);
    int r = nd_server_listen_handle(v.s, other.s, 0);
    th_run(loop, 5000);
    ck_assert_int_eq(v.nlistening, 0);
    if (r < 0) {
        ck_assert_str_eq(th_log_str(&v.log), "");
    } else {
        ck_assert_int_eq(v.nerror, 1);
        ck_assert_int_eq(v.nclose, 1);
    }
    v.log.len = 0;
    v.log.buf[0] = '\0';
    srv_listen_then_close(&v);
    srv_listen_then_close(&other);
    nd_server_release(v.s);
    th_run(loop, 1000);
    ck_assert_str_eq(th_log_str(&other.log), "listening,close");
    th_finish(loop);
}
END_TEST

/* silent: a NULL socket. */
START_TEST(socket_functions_take_a_null_socket)
{
    nd_loop_t *loop = th_loop_new();
    nd_connect_options_t o = {.port = 1, .host = "127.0.0.1"};
    nd_address_t a;

    nd_socket_options_init(NULL);
    ck_assert_ptr_null(nd_socket_new(NULL, NULL));
    ck_assert_int_eq(nd_socket_connect(NULL, &o), -EINVAL);
    ck_assert_int_eq(nd_socket_write(NULL, "x", 1, NULL, NULL), -EINVAL);
    ck_assert_int_eq(nd_socket_write_string(NULL, "x", NULL, NULL, NULL), -EINVAL);
    ck_assert_int_eq(nd_socket_end(NULL, NULL, 0), -EINVAL);
    nd_socket_destroy(NULL);
    nd_socket_pause(NULL);
    nd_socket_resume(NULL);
    ck_assert_int_eq(nd_socket_is_paused(NULL), 0);
    ck_assert_int_eq(nd_socket_set_encoding(NULL, "utf8"), -EINVAL);
    nd_socket_set_timeout(NULL, 10, nop_listener, NULL);
    nd_socket_set_no_delay(NULL, 1);
    nd_socket_set_keep_alive(NULL, 1, 1000);
    ck_assert_int_eq(nd_socket_address(NULL, &a), -EINVAL);
    ck_assert_ptr_null(nd_socket_remote_address(NULL));
    ck_assert_int_eq(nd_socket_remote_port(NULL), 0);
    ck_assert_ptr_null(nd_socket_remote_family(NULL));
    ck_assert_ptr_null(nd_socket_local_address(NULL));
    ck_assert_int_eq(nd_socket_local_port(NULL), 0);
    ck_assert_uint_eq(nd_socket_bytes_read(NULL), 0);
    ck_assert_uint_eq(nd_socket_bytes_written(NULL), 0);
    ck_assert_uint_eq(nd_socket_buffer_size(NULL), 0);
    ck_assert_int_eq(nd_socket_readable(NULL), 0);
    ck_assert_int_eq(nd_socket_writable(NULL), 0);
    ck_assert_int_eq(nd_socket_connecting(NULL), 0);
    int d = nd_socket_destroyed(NULL);
    ck_assert_msg(d == 0 || d == 1, "destroyed(NULL) = %d", d);
    ck_assert_ptr_null(nd_socket_server(NULL));
    nd_socket_ref(NULL);
    nd_socket_unref(NULL);
    ck_assert_int_eq(nd_socket_pipe(NULL, NULL, 1), -EINVAL); /* documented */
    int u = nd_socket_unpipe(NULL);
    ck_assert_msg(u == -EINVAL || u == -ENOENT, "unpipe(NULL) = %d", u);
    ck_assert_int_eq(nd_socket_on(NULL, ND_EV_DATA, nop_listener, NULL), -EINVAL);
    ck_assert_int_eq(nd_socket_once(NULL, ND_EV_DATA, nop_listener, NULL), -EINVAL);
    ck_assert_int_eq(nd_socket_off(NULL, ND_EV_DATA, nop_listener, NULL), -EINVAL);
    nd_socket_hold(NULL);
    nd_socket_release(NULL);
    ck_assert_ptr_null(nd_socket_loop(NULL));
    ck_assert_int_eq(nd_socket_fd(NULL), -1);
    nd_socket_set_data(NULL, &a);
    ck_assert_ptr_null(nd_socket_data(NULL));
    ck_assert_uint_eq(nd_socket_idle_ms(NULL), 0);
    ck_assert_ptr_null(nd_socket_pipe_peer(NULL));
    ck_assert_int_eq(nd_socket_move(NULL, loop, NULL, NULL), -EINVAL); /* documented */
    ck_assert_int_eq(nd_socket_move_notify(NULL, loop, NULL, NULL), -EINVAL);
    ck_assert_int_eq(nd_loop_handle_count(loop), 0);
    th_finish(loop);
}
END_TEST

/* documented: defaults are fd -1 and everything false. */
START_TEST(socket_options_init_sets_node_defaults)
{
    nd_loop_t *loop = th_loop_new();
    nd_socket_options_t o;

    memset(&o, 0x55, sizeof(o));
    nd_socket_options_init(&o);
    ck_assert_int_eq(o.fd, -1);
    ck_assert_int_eq(o.allow_half_open, 0);
    /* v0.10's code: readable and writable unless told otherwise */
    ck_assert_int_eq(o.readable, 1);
    ck_assert_int_eq(o.writable, 1);
    th_finish(loop);
}
END_TEST

/* documented: NULL with errno set for an fd that is not a socket. */
START_TEST(socket_new_on_a_file_descriptor_that_is_not_a_socket)
{
    nd_loop_t *loop = th_loop_new();
    nd_socket_options_t o;
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

    ck_assert_int_ge(fd, 0);
    nd_socket_options_init(&o);
    o.fd = fd;
    o.readable = o.writable = 1;
    errno = 0;
    ck_assert_ptr_null(nd_socket_new(loop, &o));
    ck_assert_int_eq(errno, ENOTSOCK);
    ck_assert_int_eq(nd_loop_handle_count(loop), 0);
    /* Ownership passes only with a socket: the descriptor is still ours. */
    ck_assert_int_eq(close(fd), 0);
    th_finish(loop);
}
END_TEST

/* documented: NULL with errno EINVAL, and no socket left behind. */
START_TEST(nd_connect_with_bad_arguments)
{
    nd_loop_t *loop = th_loop_new();
    nd_connect_options_t o;

    memset(&o, 0, sizeof(o));
    o.port = th_refused_port();
    o.host = "127.0.0.1";
    errno = 0;
    ck_assert_ptr_null(nd_connect(NULL, &o, NULL, NULL));
    ck_assert_int_eq(errno, EINVAL); /* silent for a NULL loop */
    errno = 0;
    ck_assert_ptr_null(nd_connect(loop, NULL, NULL, NULL));
    ck_assert_int_eq(errno, EINVAL);
    o.port = 70000;
    errno = 0;
    ck_assert_ptr_null(nd_connect(loop, &o, nop_listener, NULL));
    ck_assert_int_eq(errno, EINVAL);
    o.port = 80;
    o.local_address = "foobar";
    errno = 0;
    ck_assert_ptr_null(nd_connect(loop, &o, nop_listener, NULL));
    ck_assert_int_eq(errno, EINVAL);
    th_run(loop, 1000);
    th_finish(loop);
}
END_TEST

typedef struct lone {
    nd_loop_t *loop;
    nd_socket_t *s;
    th_sink_t k;
    int r[8];
    int in_call, sync_events;
    int nwcb, wcb_err, nclose_in_close;
} lone_t;

static void lone_wcb(nd_socket_t *s, int err, void *arg)
{
    lone_t *l = arg;
    l->nwcb++;
    l->wcb_err = err;
    if (l->in_call)
        l->sync_events++;
    th_log(&l->k.log, "wcb:%s", err ? nd_err_name(err) : "0");
}

static void lone_sync(void *self, const nd_event_t *ev, void *arg)
{
    lone_t *l = arg;
    if (l->in_call)
        l->sync_events++;
}

static nd_socket_t *lone_new(lone_t *l, nd_loop_t *loop)
{
    l->loop = loop;
    l->s = nd_socket_new(loop, NULL);
    ck_assert_ptr_nonnull(l->s);
    th_sink_attach(l->s, &l->k, TH_SINK_ALL);
    ck_assert_int_eq(nd_socket_on(l->s, ND_EV_ERROR, lone_sync, l), 0);
    ck_assert_int_eq(nd_socket_on(l->s, ND_EV_CLOSE, lone_sync, l), 0);
    return l->s;
}

/* documented: -EINVAL for a bad port or NULL opts or a local_address that is not an IP;
 * silent: family other than 4 and 6 (-EINVAL expected). A synchronous failure emits
 * nothing, and the socket can still be destroyed normally. */
START_TEST(connect_with_bad_options)
{
    lone_t l = {0};
    nd_loop_t *loop = th_loop_new();
    nd_connect_options_t o;

    lone_new(&l, loop);
    memset(&o, 0, sizeof(o));
    o.host = "127.0.0.1";
    ck_assert_int_eq(nd_socket_connect(l.s, NULL), -EINVAL);
    o.port = 70000;
    ck_assert_int_eq(nd_socket_connect(l.s, &o), -EINVAL);
    o.port = -1;
    ck_assert_int_eq(nd_socket_connect(l.s, &o), -EINVAL);
    o.port = 65536;
    ck_assert_int_eq(nd_socket_connect(l.s, &o), -EINVAL);
    o.port = 80;
    o.local_address = "foobar";
    ck_assert_int_eq(nd_socket_connect(l.s, &o), -EINVAL);
    o.local_address = NULL;
    o.family = 5;
    ck_assert_int_eq(nd_socket_connect(l.s, &o), -EINVAL);
    ck_assert_int_eq(nd_socket_connecting(l.s), 0);
    th_run(loop, 1000);
    ck_assert_str_eq(th_log_str(&l.k.log), "");
    nd_socket_destroy(l.s);
    th_run(loop, 1000);
    ck_assert_str_eq(th_log_str(&l.k.log), "close");
    ck_assert_int_eq(l.k.had_error, 0);
    th_sink_free(&l.k);
    th_finish(loop);
}
END_TEST

static void twice_connecting(th_pair_t *p)
{
    ctx_t *c = p->arg;
    th_sink_attach(p->client, &c->cs, TH_SINK_ALL);
    c->r[0] = nd_socket_connect(p->client, &p->copts);
}

static void twice_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    c->r[1] = nd_socket_connect(p->client, &p->copts);
    ck_assert_int_eq(nd_socket_end(p->client, NULL, 0), 0);
}

/* documented: ND_ECONNECTING while connecting and once connected. */
START_TEST(connect_twice_gives_econnecting)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = twice_connecting;
    c.p.accepted = hook_server_sink;
    c.p.ready = twice_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.r[0], ND_ECONNECTING);
    ck_assert_int_eq(c.r[1], ND_ECONNECTING);
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,finish,end,close");
    ck_assert_int_eq(c.ss.nclose, 1);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

/* documented: ND_ECLOSED between destroy and 'close'. */
START_TEST(connect_after_destroy_gives_eclosed)
{
    lone_t l = {0};
    nd_loop_t *loop = th_loop_new();
    nd_connect_options_t o;

    lone_new(&l, loop);
    memset(&o, 0, sizeof(o));
    o.port = th_refused_port();
    o.host = "127.0.0.1";
    nd_socket_destroy(l.s);
    ck_assert_int_eq(nd_socket_connect(l.s, &o), ND_ECLOSED);
    th_run(loop, 5000);
    ck_assert_str_eq(th_log_str(&l.k.log), "close");
    th_sink_free(&l.k);
    th_finish(loop);
}
END_TEST

/* documented: ND_ECLOSED, reported later to cb and as 'error'; 'close' follows. */
START_TEST(write_on_a_socket_that_never_connected)
{
    lone_t l = {0};
    nd_loop_t *loop = th_loop_new();

    lone_new(&l, loop);
    l.in_call = 1;
    l.r[0] = nd_socket_write(l.s, "x", 1, lone_wcb, &l);
    l.in_call = 0;
    th_run(loop, 5000);

    ck_assert_int_eq(l.r[0], ND_ECLOSED);
    ck_assert_int_eq(l.sync_events, 0);
    ck_assert_int_eq(l.nwcb, 1);
    ck_assert_int_eq(l.wcb_err, ND_ECLOSED);
    ck_assert_int_eq(l.k.nerror, 1);
    ck_assert_str_eq(l.k.error_name, "ECLOSED");
    ck_assert_int_eq(l.k.nclose, 1);
    ck_assert_msg(strcmp(th_log_str(&l.k.log), "wcb:ECLOSED,error:ECLOSED,close") == 0 ||
                      strcmp(th_log_str(&l.k.log), "error:ECLOSED,wcb:ECLOSED,close") == 0,
                  "log %s", th_log_str(&l.k.log));
    th_sink_free(&l.k);
    th_finish(loop);
}
END_TEST

/* case 65 (v0.10: "This socket is closed."), documented: ND_ECLOSED after destroy, reported
 * to cb and as 'error' (before 'close', which is always the last event). */
START_TEST(write_after_destroy_gives_eclosed)
{
    lone_t l = {0};
    nd_loop_t *loop = th_loop_new();

    lone_new(&l, loop);
    nd_socket_destroy(l.s);
    l.in_call = 1;
    l.r[0] = nd_socket_write(l.s, "x", 1, lone_wcb, &l);
    l.r[1] = nd_socket_write_string(l.s, "y", NULL, NULL, NULL);
    l.in_call = 0;
    th_run(loop, 5000);

    ck_assert_int_eq(l.r[0], ND_ECLOSED);
    ck_assert_int_eq(l.r[1], ND_ECLOSED);
    ck_assert_int_eq(l.sync_events, 0);
    ck_assert_int_eq(l.nwcb, 1);
    ck_assert_int_eq(l.wcb_err, ND_ECLOSED);
    ck_assert_int_eq(l.k.nclose, 1);
    ck_assert_int_eq(l.k.nerror, 1);
    ck_assert_str_eq(l.k.error_name, "ECLOSED");
    ck_assert_msg(str_ends(th_log_str(&l.k.log), ",close"), "log %s", th_log_str(&l.k.log));
    th_sink_free(&l.k);
    th_finish(loop);
}
END_TEST

static void wae_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_ERROR, note_sync, c), 0);
    c->r[0] = nd_socket_end(p->client, NULL, 0);
    c->in_call = 1;
    c->r[1] = nd_socket_write(p->client, "x", 1, log_wcb, c);
    c->r[2] = nd_socket_write_string(p->client, "y", "utf8", NULL, NULL);
    c->r[3] = nd_socket_end(p->client, "z", 1);
    c->in_call = 0;
    c->u = nd_socket_bytes_written(p->client);
}

/* documented: ND_EWRITEAFTEREND for write, write_string and end(data) after end(); one
 * 'error' however many writes failed. */
START_TEST(writing_after_end_gives_ewriteafterend)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = wae_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.r[0], 0);
    ck_assert_int_eq(c.r[1], ND_EWRITEAFTEREND);
    ck_assert_int_eq(c.r[2], ND_EWRITEAFTEREND);
    ck_assert_int_eq(c.r[3], ND_EWRITEAFTEREND);
    ck_assert_int_eq(c.sync_events, 0);
    ck_assert_int_eq(c.nwcb, 1);
    ck_assert_int_eq(c.wcb_err, ND_EWRITEAFTEREND);
    /* v0.10's writeAfterEnd reports every refused write, and none of them fails the
     * connection: 'close' has had_error 0. */
    ck_assert_int_eq(c.cs.nerror, 3);
    ck_assert_str_eq(c.cs.error_name, "EWRITEAFTEREND");
    ck_assert_int_eq(c.cs.nclose, 1);
    ck_assert_int_eq(c.cs.had_error, 0);
    ck_assert_uint_eq(c.ss.data.len, 0);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

static void nulldata_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    c->r[0] = nd_socket_write(p->client, NULL, 5, log_wcb, c);
    c->r[1] = nd_socket_write(p->client, NULL, 0, NULL, NULL);
    c->r[2] = nd_socket_write_string(p->client, NULL, NULL, NULL, NULL);
    c->r[3] = nd_socket_write_string(p->client, "", NULL, NULL, NULL);
    c->r[4] = nd_socket_write(p->client, "ok", 2, NULL, NULL);
    c->r[5] = nd_socket_end(p->client, NULL, 0);
}

/* silent: NULL data with a length, NULL strings: -EINVAL and nothing else happens, the
 * socket stays usable. NULL data with length 0 is an empty write or -EINVAL. */
START_TEST(write_with_null_data)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = nulldata_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.r[0], -EINVAL);
    ck_assert_msg(c.r[1] >= 0 || c.r[1] == -EINVAL, "write(NULL, 0) = %d", c.r[1]);
    ck_assert_int_eq(c.r[2], -EINVAL);
    ck_assert_int_ge(c.r[3], 0);
    ck_assert_int_ge(c.r[4], 0);
    ck_assert_int_eq(c.r[5], 0);
    ck_assert_int_eq(c.nwcb, 0);
    ck_assert_int_eq(c.cs.nerror, 0);
    ck_assert_str_eq(TH_BUF_STR(c.ss.data), "ok");
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,finish,end,close");
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

static void badenc_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_ERROR, note_sync, c), 0);
    c->r[0] = nd_socket_write_string(p->client, "abc", "klingon", log_wcb, c);
    c->r[1] = nd_socket_write_string(p->client, "abc", "utf-9", log_wcb, c);
    c->u = nd_socket_bytes_written(p->client);
    c->r[2] = nd_socket_write_string(p->client, "ok", NULL, NULL, NULL);
    c->r[3] = nd_socket_end(p->client, NULL, 0);
}

/* documented: ND_EENCODING synchronously and nothing written. The header calls it a
 * synchronous failure, so neither the callback nor 'error' is expected. */
START_TEST(write_string_with_an_unknown_encoding)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = badenc_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.r[0], ND_EENCODING);
    ck_assert_int_eq(c.r[1], ND_EENCODING);
    ck_assert_uint_eq(c.u, 0);
    ck_assert_int_ge(c.r[2], 0);
    ck_assert_int_eq(c.r[3], 0);
    ck_assert_int_eq(c.nwcb, 0);
    ck_assert_int_eq(c.cs.nerror, 0);
    ck_assert_str_eq(TH_BUF_STR(c.ss.data), "ok");
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,finish,end,close");
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

static void setenc_connecting(th_pair_t *p)
{
    ctx_t *c = p->arg;
    th_sink_attach(p->client, &c->cs, TH_SINK_ALL);
    c->r[0] = nd_socket_set_encoding(p->client, "hex");
    c->r[1] = nd_socket_set_encoding(p->client, "bogus");
    c->r[2] = nd_socket_set_encoding(p->client, "utf-9");
}

static void setenc_ready(th_pair_t *p)
{
    ck_assert_int_eq(nd_socket_end(p->conn, "\x01\xab", 2), 0);
}

/* documented: ND_EENCODING; a refused name leaves the previous encoding in place. */
START_TEST(set_encoding_with_an_unknown_name)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = setenc_connecting;
    c.p.accepted = hook_server_sink;
    c.p.ready = setenc_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.r[0], 0);
    ck_assert_int_eq(c.r[1], ND_EENCODING);
    ck_assert_int_eq(c.r[2], ND_EENCODING);
    ck_assert_str_eq(TH_BUF_STR(c.cs.data), "01ab");
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

/* documented: end() on a socket that never connected does nothing. */
START_TEST(end_on_a_socket_that_never_connected)
{
    lone_t l = {0};
    nd_loop_t *loop = th_loop_new();

    lone_new(&l, loop);
    ck_assert_int_eq(nd_socket_end(l.s, NULL, 0), 0);
    th_run(loop, 1000);
    ck_assert_str_eq(th_log_str(&l.k.log), "");
    nd_socket_destroy(l.s);
    th_run(loop, 1000);
    ck_assert_str_eq(th_log_str(&l.k.log), "close");
    th_sink_free(&l.k);
    th_finish(loop);
}
END_TEST

static void endtwice_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    c->r[0] = nd_socket_end(p->client, NULL, 0);
    c->r[1] = nd_socket_end(p->client, NULL, 0);
}

/* silent: a second end() without data; v0.10's stream ignores it. */
START_TEST(end_twice_is_harmless)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = endtwice_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.r[0], 0);
    ck_assert_int_eq(c.r[1], 0);
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,finish,end,close");
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

/* documented: 'close' exactly once however often destroy() is called. */
START_TEST(destroy_twice_on_a_new_socket)
{
    lone_t l = {0};
    nd_loop_t *loop = th_loop_new();

    lone_new(&l, loop);
    nd_socket_destroy(l.s);
    nd_socket_destroy(l.s);
    ck_assert_int_eq(nd_socket_destroyed(l.s), 1);
    th_run(loop, 1000);
    ck_assert_str_eq(th_log_str(&l.k.log), "close");
    ck_assert_int_eq(l.k.had_error, 0);
    th_sink_free(&l.k);
    th_finish(loop);
}
END_TEST

static void destroy2_ready(th_pair_t *p)
{
    nd_socket_destroy(p->client);
    nd_socket_destroy(p->client);
}

START_TEST(destroy_twice_on_a_connected_socket)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = destroy2_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,close");
    ck_assert_int_eq(c.cs.had_error, 0);
    ck_assert_int_eq(c.ss.nclose, 1);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

typedef struct cnt {
    nd_loop_t *loop;
    nd_server_t *s;
    nd_socket_t *conns[2];
    int nconn, nclosed;
    int count_after_first;
    th_timer_t *t;
} cnt_t;

static void cnt_later(void *arg)
{
    cnt_t *x = arg;
    x->t = NULL;
    x->count_after_first = nd_server_connections(x->s);
    nd_socket_destroy(x->conns[1]);
}

static void cnt_conn_closed(void *self, const nd_event_t *ev, void *arg)
{
    cnt_t *x = arg;
    if (++x->nclosed == 1)
        x->t = th_timer(x->loop, 20, cnt_later, x);
}

static void cnt_connection(void *self, const nd_event_t *ev, void *arg)
{
    cnt_t *x = arg;
    x->conns[x->nconn++] = ev->socket;
    ck_assert_int_eq(nd_socket_on(ev->socket, ND_EV_CLOSE, cnt_conn_closed, x), 0);
    if (x->nconn < 2)
        return;
    ck_assert_int_eq(nd_server_close(self, NULL, NULL), 0);
    nd_socket_destroy(x->conns[0]);
    nd_socket_destroy(x->conns[0]);
}

static void cnt_listening(void *self, const nd_event_t *ev, void *arg)
{
    cnt_t *x = arg;
    int port = th_server_port(self);
    for (int i = 0; i < 2; i++)
        th_connect(x->loop, port, NULL, NULL);
}

/* case 24: the server's count drops once for a socket destroyed twice. */
START_TEST(destroy_twice_lowers_the_server_count_once)
{
    cnt_t x = {0};
    nd_loop_t *loop = th_loop_new();

    x.loop = loop;
    x.s = nd_server_new(loop, NULL, cnt_connection, &x);
    ck_assert_ptr_nonnull(x.s);
    nd_server_hold(x.s);
    ck_assert_int_eq(nd_server_once(x.s, ND_EV_LISTENING, cnt_listening, &x), 0);
    ck_assert_int_eq(nd_server_listen(x.s, 0, "127.0.0.1", 0), 0);
    th_run(loop, 5000);

    ck_assert_int_eq(x.nconn, 2);
    ck_assert_int_eq(x.count_after_first, 1);
    ck_assert_int_eq(x.nclosed, 2);
    ck_assert_int_eq(nd_server_connections(x.s), 0);
    nd_server_release(x.s);
    th_run(loop, 1000);
    th_finish(loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* Destroying a socket inside each of its callbacks                                     */
/* ------------------------------------------------------------------------------------ */

static void destroy_self(void *self, const nd_event_t *ev, void *arg)
{
    nd_socket_destroy(self);
}

/* lookup and error need no peer: the port is one where nothing listens. */
static void run_destroy_unconnected(nd_event_type_t at, const char *want)
{
    lone_t l = {0};
    nd_loop_t *loop = th_loop_new();
    nd_connect_options_t o;

    lone_new(&l, loop);
    ck_assert_int_eq(nd_socket_on(l.s, at, destroy_self, NULL), 0);
    memset(&o, 0, sizeof(o));
    o.port = th_refused_port();
    o.host = "localhost"; /* a name: an IP literal connects without 'lookup' */
    ck_assert_int_eq(nd_socket_connect(l.s, &o), 0);
    th_run(loop, 5000);
    ck_assert_str_eq(th_log_str(&l.k.log), want);
    ck_assert_int_eq(l.k.nclose, 1);
    th_sink_free(&l.k);
    th_finish(loop);
}

START_TEST(destroy_inside_lookup)
{
    /* Destroyed before the connect started: no 'connect', no ECONNREFUSED. */
    run_destroy_unconnected(ND_EV_LOOKUP, "lookup,close");
}
END_TEST

/* case 32: exactly one 'error' and one 'close'. */
START_TEST(destroy_inside_error)
{
    run_destroy_unconnected(ND_EV_ERROR, "lookup,error:ECONNREFUSED,close");
}
END_TEST

typedef struct dcb {
    ctx_t c;
    nd_event_type_t at;
    int server_action; /* 0 nothing, 1 write "abc" twice, 2 end() */
    int nafter;        /* events of the destroying type after the first */
    int seen;
    th_timer_t *resume;
} dcb_t;

static void dcb_destroy(void *self, const nd_event_t *ev, void *arg)
{
    dcb_t *d = arg;
    if (d->seen++)
        d->nafter++;
    nd_socket_destroy(self);
    nd_socket_destroy(self);
}

static void dcb_connecting(th_pair_t *p)
{
    dcb_t *d = p->arg;
    th_sink_attach(p->client, &d->c.cs,
                   TH_SINK_ALL | TH_EVBIT(ND_EV_TIMEOUT) | TH_EVBIT(ND_EV_DRAIN));
    ck_assert_int_eq(nd_socket_on(p->client, d->at, dcb_destroy, d), 0);
}

static void dcb_resume(void *arg)
{
    dcb_t *d = arg;
    d->resume = NULL;
    if (d->c.p.conn)
        nd_socket_resume(d->c.p.conn);
}

static void dcb_conn_closed(void *self, const nd_event_t *ev, void *arg)
{
    dcb_t *d = arg;
    if (d->resume) {
        th_timer_cancel(d->resume);
        d->resume = NULL;
    }
}

static void dcb_accepted(th_pair_t *p)
{
    dcb_t *d = p->arg;
    th_sink_attach(p->conn, &d->c.ss, TH_SINK_ALL);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_CLOSE, dcb_conn_closed, d), 0);
    if (d->at == ND_EV_DRAIN)
        nd_socket_pause(p->conn);
}

static void dcb_ready(th_pair_t *p)
{
    dcb_t *d = p->arg;
    switch (d->at) {
    case ND_EV_DATA:
        ck_assert_int_ge(nd_socket_write(p->conn, "abc", 3, NULL, NULL), 0);
        ck_assert_int_ge(nd_socket_write(p->conn, "def", 3, NULL, NULL), 0);
        break;
    case ND_EV_END:
        ck_assert_int_eq(nd_socket_end(p->conn, NULL, 0), 0);
        break;
    case ND_EV_TIMEOUT:
        nd_socket_set_timeout(p->client, 10, NULL, NULL);
        break;
    case ND_EV_FINISH:
        ck_assert_int_eq(nd_socket_end(p->client, NULL, 0), 0);
        break;
    case ND_EV_CLOSE:
        nd_socket_destroy(p->client);
        break;
    case ND_EV_DRAIN: {
        /* Fill the kernel against a paused peer until write() says 0. */
        static char chunk[64 * 1024];
        uint64_t total = 0;
        int r;
        do {
            r = nd_socket_write(p->client, chunk, sizeof(chunk), NULL, NULL);
            ck_assert_int_ge(r, 0);
            total += sizeof(chunk);
        } while (r != 0 && total < (1ull << 30));
        ck_assert_int_eq(r, 0);
        d->resume = th_timer(p->loop, 50, dcb_resume, d);
        break;
    }
    default:
        break;
    }
}

static void run_destroy_in(nd_event_type_t at, const char *want)
{
    dcb_t d = {0};
    nd_loop_t *loop = th_loop_new();

    d.at = at;
    d.c.p.connecting = dcb_connecting;
    d.c.p.accepted = dcb_accepted;
    d.c.p.ready = dcb_ready;
    th_pair_open(&d.c.p, loop, &d);
    th_run(loop, 10000);

    ck_assert_int_eq(d.seen, 1);
    ck_assert_int_eq(d.nafter, 0);
    ck_assert_str_eq(th_log_str(&d.c.cs.log), want);
    ck_assert_int_eq(d.c.cs.nclose, 1);
    ck_assert_int_eq(d.c.cs.had_error, 0);
    ck_assert_int_eq(d.c.ss.nclose, 1);
    ctx_free(&d.c);
    th_finish(loop);
}

START_TEST(destroy_inside_connect)
{
    run_destroy_in(ND_EV_CONNECT, "connect,close");
}
END_TEST

START_TEST(destroy_inside_data)
{
    run_destroy_in(ND_EV_DATA, "connect,close");
}
END_TEST

START_TEST(destroy_inside_end)
{
    dcb_t d = {0};
    nd_loop_t *loop = th_loop_new();

    /* The automatic end() may or may not send our FIN first: 'finish' is not logged. */
    d.at = ND_EV_END;
    d.c.p.connecting = dcb_connecting;
    d.c.p.accepted = dcb_accepted;
    d.c.p.ready = dcb_ready;
    th_pair_open(&d.c.p, loop, &d);
    th_run(loop, 5000);

    ck_assert_int_eq(d.seen, 1);
    ck_assert_int_eq(d.c.cs.nend, 1);
    ck_assert_int_le(d.c.cs.nfinish, 1);
    ck_assert_int_eq(d.c.cs.nerror, 0);
    ck_assert_int_eq(d.c.cs.nclose, 1);
    ck_assert_int_eq(d.c.cs.had_error, 0);
    ck_assert_msg(strncmp(th_log_str(&d.c.cs.log), "connect,end,", 12) == 0, "log %s",
                  th_log_str(&d.c.cs.log));
    ck_assert_int_eq(d.c.ss.nclose, 1);
    ctx_free(&d.c);
    th_finish(loop);
}
END_TEST

START_TEST(destroy_inside_timeout)
{
    run_destroy_in(ND_EV_TIMEOUT, "connect,timeout,close");
}
END_TEST

START_TEST(destroy_inside_drain)
{
    run_destroy_in(ND_EV_DRAIN, "connect,drain,close");
}
END_TEST

START_TEST(destroy_inside_finish)
{
    run_destroy_in(ND_EV_FINISH, "connect,finish,close");
}
END_TEST

START_TEST(destroy_inside_close)
{
    run_destroy_in(ND_EV_CLOSE, "connect,close");
}
END_TEST

static void destroy_in_wcb(nd_socket_t *s, int err, void *arg)
{
    ctx_t *c = arg;
    c->nwcb++;
    nd_socket_destroy(s);
}

static void dwcb_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    ck_assert_int_ge(nd_socket_write(p->client, "a", 1, destroy_in_wcb, c), 0);
}

START_TEST(destroy_inside_a_write_callback)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = dwcb_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.nwcb, 1);
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,close");
    ck_assert_str_eq(TH_BUF_STR(c.ss.data), "a");
    ck_assert_int_eq(c.ss.nclose, 1);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

static void dconn_connection(void *self, const nd_event_t *ev, void *arg)
{
    srv_t *v = arg;
    th_sink_attach(ev->socket, &v->ks, TH_SINK_ALL);
    nd_socket_destroy(ev->socket);
    ck_assert_int_eq(nd_server_close(self, NULL, NULL), 0);
}

static void dconn_listening(void *self, const nd_event_t *ev, void *arg)
{
    srv_t *v = arg;
    int port = th_server_port(self);
    nd_socket_t *c = th_connect(v->loop, port, NULL, NULL);
    th_sink_attach(c, &v->cs, TH_SINK_ALL);
}

START_TEST(destroy_the_accepted_socket_inside_connection)
{
    srv_t v = {0};
    nd_loop_t *loop = th_loop_new();

    srv_new(&v, loop);
    ck_assert_int_eq(nd_server_on(v.s, ND_EV_CONNECTION, dconn_connection, &v), 0);
    ck_assert_int_eq(nd_server_once(v.s, ND_EV_LISTENING, dconn_listening, &v), 0);
    ck_assert_int_eq(nd_server_listen(v.s, 0, "127.0.0.1", 0), 0);
    th_run(loop, 5000);

    ck_assert_str_eq(th_log_str(&v.log), "listening,connection,close");
    ck_assert_str_eq(th_log_str(&v.ks.log), "close");
    ck_assert_int_eq(v.cs.nclose, 1);
    ck_assert_int_eq(v.cs.nconnect, 1);
    th_sink_free(&v.ks);
    th_sink_free(&v.cs);
    th_finish(loop);
}
END_TEST

static void move_fn(nd_socket_t *sock, nd_move_phase_t phase, int err, void *arg)
{
    ctx_t *c = arg;
    c->ncb++;
}

static void move_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    c->r[0] = nd_socket_move(p->client, p->loop, NULL, NULL);
    c->r[1] = nd_socket_move_notify(p->client, p->loop, move_fn, c);
    c->r[2] = nd_socket_move(p->client, NULL, NULL, NULL);
    c->r[3] = nd_socket_move_notify(p->client, NULL, move_fn, c);
    ck_assert_int_eq(nd_socket_end(p->client, "x", 1), 0);
}

/* documented: a move to the socket's own loop is 0 (move) or -EALREADY (move_notify) and
 * nothing happens; -EINVAL for NULL (here the target). The socket carries on untouched. */
START_TEST(move_to_its_own_loop_or_to_null)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = move_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.r[0], 0);
    ck_assert_int_eq(c.r[1], -EALREADY);
    ck_assert_int_eq(c.r[2], -EINVAL);
    ck_assert_int_eq(c.r[3], -EINVAL);
    ck_assert_int_eq(c.ncb, 0);
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,finish,end,close");
    ck_assert_str_eq(TH_BUF_STR(c.ss.data), "x");
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* pipe, listeners and addresses on sockets                                             */
/* ------------------------------------------------------------------------------------ */

/* documented: -EINVAL (NULL), -EBUSY (already piped), unpipe -ENOENT when not piped. */
START_TEST(pipe_misuse)
{
    lone_t a = {0}, b = {0}, c = {0};
    nd_loop_t *loop = th_loop_new();

    lone_new(&a, loop);
    lone_new(&b, loop);
    lone_new(&c, loop);
    ck_assert_int_eq(nd_socket_pipe(a.s, NULL, 1), -EINVAL);
    ck_assert_int_eq(nd_socket_pipe(NULL, b.s, 1), -EINVAL);
    ck_assert_int_eq(nd_socket_unpipe(a.s), -ENOENT);
    ck_assert_int_eq(nd_socket_pipe(a.s, b.s, 1), 0);
    ck_assert_int_eq(nd_socket_pipe(a.s, c.s, 1), -EBUSY);
    ck_assert_int_eq(nd_socket_pipe(a.s, b.s, 0), -EBUSY);
    ck_assert_int_eq(nd_socket_unpipe(a.s), 0);
    ck_assert_int_eq(nd_socket_unpipe(a.s), -ENOENT);
    ck_assert_int_eq(nd_socket_pipe(a.s, c.s, 1), 0); /* free again after unpipe */
    /* Piping ends when either side closes; destroying both must not trip over it. */
    nd_socket_destroy(c.s);
    nd_socket_destroy(a.s);
    nd_socket_destroy(b.s);
    th_run(loop, 1000);
    ck_assert_str_eq(th_log_str(&a.k.log), "close");
    ck_assert_str_eq(th_log_str(&b.k.log), "close");
    ck_assert_str_eq(th_log_str(&c.k.log), "close");
    th_sink_free(&a.k);
    th_sink_free(&b.k);
    th_sink_free(&c.k);
    th_finish(loop);
}
END_TEST

/* documented: off -ENOENT; silent: NULL fn and out-of-range events (-EINVAL). */
START_TEST(socket_listener_misuse)
{
    lone_t l = {0};
    nd_loop_t *loop = th_loop_new();

    lone_new(&l, loop);
    ck_assert_int_eq(nd_socket_on(l.s, ND_EV_DATA, NULL, NULL), -EINVAL);
    ck_assert_int_eq(nd_socket_once(l.s, ND_EV_DATA, NULL, NULL), -EINVAL);
    ck_assert_int_eq(nd_socket_on(l.s, ND_EV__COUNT, nop_listener, NULL), -EINVAL);
    ck_assert_int_eq(nd_socket_on(l.s, (nd_event_type_t)-1, nop_listener, NULL), -EINVAL);
    ck_assert_int_eq(nd_socket_off(l.s, ND_EV_DATA, nop_listener, NULL), -ENOENT);
    ck_assert_int_eq(nd_socket_once(l.s, ND_EV_DATA, nop_listener, &l), 0);
    ck_assert_int_eq(nd_socket_off(l.s, ND_EV_DATA, nop_listener, &l), 0);
    ck_assert_int_eq(nd_socket_off(l.s, ND_EV_DATA, nop_listener, &l), -ENOENT);
    nd_socket_destroy(l.s);
    th_run(loop, 1000);
    ck_assert_str_eq(th_log_str(&l.k.log), "close");
    th_sink_free(&l.k);
    th_finish(loop);
}
END_TEST

/* documented: ND_ENOTCONNECTED when never bound; silent: NULL out (-EINVAL). */
START_TEST(socket_address_misuse)
{
    lone_t l = {0};
    nd_address_t a;
    nd_loop_t *loop = th_loop_new();

    lone_new(&l, loop);
    ck_assert_int_eq(nd_socket_address(l.s, &a), ND_ENOTCONNECTED);
    ck_assert_int_eq(nd_socket_address(l.s, NULL), -EINVAL);
    ck_assert_ptr_null(nd_socket_remote_address(l.s));
    ck_assert_int_eq(nd_socket_remote_port(l.s), 0);
    ck_assert_int_eq(nd_socket_fd(l.s), -1);
    nd_socket_destroy(l.s);
    th_run(loop, 1000);
    th_sink_free(&l.k);
    th_finish(loop);
}
END_TEST

static void held_closed(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    c->flag++;
}

static void held_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    nd_socket_hold(p->client);
    c->u = (uint64_t)(uintptr_t)p->client;
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_CLOSE, held_closed, c), 0);
    ck_assert_int_eq(nd_socket_write(p->client, "hi", 2, NULL, NULL), 1);
    nd_socket_destroy(p->client);
}

/* case 54: after 'close', a held socket takes every call without crashing; write gives
 * ND_ECLOSED. */
START_TEST(calls_on_a_held_socket_after_close)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();
    nd_address_t a;

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = held_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    nd_socket_t *s = (nd_socket_t *)(uintptr_t)c.u;
    ck_assert_int_eq(c.flag, 1);
    ck_assert_int_eq(nd_socket_destroyed(s), 1);
    nd_socket_set_no_delay(s, 1);
    nd_socket_set_keep_alive(s, 1, 1000);
    nd_socket_set_timeout(s, 1, nop_listener, NULL);
    nd_socket_pause(s);
    nd_socket_resume(s);
    nd_socket_ref(s);
    nd_socket_unref(s);
    nd_socket_destroy(s);
    (void)nd_socket_buffer_size(s);
    (void)nd_socket_address(s, &a);
    (void)nd_socket_remote_address(s);
    (void)nd_socket_remote_port(s);
    ck_assert_int_eq(nd_socket_readable(s), 0);
    ck_assert_int_eq(nd_socket_writable(s), 0);
    ck_assert_int_eq(nd_socket_write(s, "x", 1, NULL, NULL), ND_ECLOSED);
    int r = nd_socket_end(s, NULL, 0);
    ck_assert_msg(r == 0 || r == ND_ECLOSED, "end after close = %d", r);
    th_run(loop, 1000);
    /* Nothing more was emitted: 'close' stays the last event. */
    ck_assert_int_eq(c.flag, 1);
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,close");
    nd_socket_release(s);
    th_run(loop, 1000);
    ck_assert_str_eq(TH_BUF_STR(c.ss.data), "hi");
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */

static Suite *misuse_suite(void)
{
    Suite *s = suite_create("misuse");
    TCase *tc;

    tc = th_tcase(s, "errors", 10);
    tcase_add_test(tc, err_name_and_strerror_of_unknown_codes);
    tcase_add_test(tc, every_nd_code_has_its_own_name_and_message);
    tcase_add_test(tc, err_name_takes_errnos_of_either_sign);

    tc = th_tcase(s, "null", 10);
    tcase_add_test(tc, loop_run_takes_null);
    tcase_add_test(tc, loop_void_calls_take_null);
    tcase_add_test(tc, loop_getters_take_null);
    tcase_add_test(tc, loop_functions_with_callbacks_take_null);
    tcase_add_test(tc, balance_parse_takes_null_and_unknown_names);
    tcase_add_test(tc, server_group_with_bad_arguments);
    tcase_add_test(tc, constructors_take_bad_arguments);
    tcase_add_loop_test(tc, loop_new_without_descriptors_gives_emfile, 0, 5);
    tcase_add_test(tc, set_nameserver_rejects_bad_addresses);
    tcase_add_test(tc, is_ip_takes_null_and_empty);
    tcase_add_test(tc, server_functions_take_a_null_server);
    tcase_add_test(tc, server_functions_take_null_arguments);
    tcase_add_test(tc, socket_functions_take_a_null_socket);
    tcase_add_test(tc, socket_options_init_sets_node_defaults);
    tcase_add_test(tc, socket_new_on_a_file_descriptor_that_is_not_a_socket);
    tcase_add_test(tc, nd_connect_with_bad_arguments);

    tc = th_tcase(s, "server", 15);
    tcase_add_test(tc, listen_rejects_ports_out_of_range);
    tcase_add_test(tc, listen_twice_gives_elistening);
    tcase_add_test(tc, close_a_server_that_never_listened);
    tcase_add_test(tc, close_a_server_twice);
    tcase_add_test(tc, close_twice_on_the_listen_turn);
    tcase_add_test(tc, close_the_server_inside_listening);
    tcase_add_test(tc, close_the_server_inside_connection);
    tcase_add_test(tc, server_off_of_a_listener_never_added);
    tcase_add_test(tc, server_address_before_listen);
    tcase_add_test(tc, listen_fd_on_a_regular_file);
    tcase_add_test(tc, listen_fd_minus_one);
    tcase_add_test(tc, listen_handle_of_a_server_that_is_not_listening);

    tc = th_tcase(s, "socket", 15);
    tcase_add_test(tc, connect_with_bad_options);
    tcase_add_test(tc, connect_twice_gives_econnecting);
    tcase_add_test(tc, connect_after_destroy_gives_eclosed);
    tcase_add_test(tc, write_on_a_socket_that_never_connected);
    tcase_add_test(tc, write_after_destroy_gives_eclosed);
    tcase_add_test(tc, writing_after_end_gives_ewriteafterend);
    tcase_add_test(tc, write_with_null_data);
    tcase_add_test(tc, write_string_with_an_unknown_encoding);
    tcase_add_test(tc, set_encoding_with_an_unknown_name);
    tcase_add_test(tc, end_on_a_socket_that_never_connected);
    tcase_add_test(tc, end_twice_is_harmless);
    tcase_add_test(tc, destroy_twice_on_a_new_socket);
    tcase_add_test(tc, destroy_twice_on_a_connected_socket);
    tcase_add_test(tc, destroy_twice_lowers_the_server_count_once);
    tcase_add_test(tc, pipe_misuse);
    tcase_add_test(tc, socket_listener_misuse);
    tcase_add_test(tc, socket_address_misuse);
    tcase_add_test(tc, calls_on_a_held_socket_after_close);
    tcase_add_test(tc, move_to_its_own_loop_or_to_null);

    tc = th_tcase(s, "destroy_in_callback", 20);
    tcase_add_test(tc, destroy_inside_lookup);
    tcase_add_test(tc, destroy_inside_error);
    tcase_add_test(tc, destroy_inside_connect);
    tcase_add_test(tc, destroy_inside_data);
    tcase_add_test(tc, destroy_inside_end);
    tcase_add_test(tc, destroy_inside_timeout);
    tcase_add_test(tc, destroy_inside_drain);
    tcase_add_test(tc, destroy_inside_finish);
    tcase_add_test(tc, destroy_inside_close);
    tcase_add_test(tc, destroy_inside_a_write_callback);
    tcase_add_test(tc, destroy_the_accepted_socket_inside_connection);

    return s;
}

int main(void)
{
    return th_run_suite(misuse_suite());
}
