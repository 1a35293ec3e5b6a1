/* SPDX-License-Identifier: MIT */
/*
 * The shared test harness (tests/lib/harness.h): loop watchdog, event log, loop-keeping
 * timers, and raw-socket helpers. Failures abort the current Check test, never return.
 */
#include "config.h"

#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

TCase *th_tcase(Suite *s, const char *name, double timeout_s)
{
    TCase *tc = tcase_create(name);

    tcase_set_timeout(tc, timeout_s);
    suite_add_tcase(s, tc);
    return tc;
}

int th_run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);

    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

unsigned th_scale(unsigned ms)
{
    const char *env = getenv("CK_TIMEOUT_MULTIPLIER");
    double mult = 1.0;

    if (env && *env) {
        char *end;
        double v = strtod(env, &end);
        /* Check itself rejects a bad multiplier; a test should not fail over it. */
        if (*end == '\0' && v > 0)
            mult = v;
    }
    double scaled = (double)ms * mult;
    if (scaled >= (double)UINT_MAX)
        return UINT_MAX;
    return (unsigned)(scaled + 0.5);
}

int th_sanitized(void)
{
#ifdef ND_TSAN
    return 1;
#else
    return 0;
#endif
}

double th_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

double th_cpu_ms(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

void th_sem_wait(sem_t *s, unsigned ms, const char *what)
{
    struct timespec ts;
    unsigned lim = th_scale(ms);
    int rc;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += lim / 1000;
    ts.tv_nsec += (long)(lim % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    while ((rc = sem_timedwait(s, &ts)) != 0 && errno == EINTR)
        ;
    ck_assert_msg(rc == 0, "timed out waiting for %s", what);
}

void th_need_fds(rlim_t n)
{
    struct rlimit rl;

    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < n) {
        ck_assert_msg(rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= n,
                      "this test needs %lu descriptors; the hard limit is %lu", (unsigned long)n,
                      (unsigned long)rl.rlim_max);
        rl.rlim_cur = n;
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
}

void th_pat_fill(unsigned char *dst, uint64_t off, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = th_pat(off + i);
}

uint64_t th_fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

nd_loop_t *th_loop_new(void)
{
    nd_loop_t *loop = nd_loop_new();
    ck_assert_msg(loop != NULL, "nd_loop_new failed");
    return loop;
}

static void watchdog_fired(evutil_socket_t fd, short what, void *arg)
{
    ck_abort_msg("loop did not finish in %u ms", *(const unsigned *)arg);
}

void th_run(nd_loop_t *loop, unsigned timeout_ms)
{
    unsigned limit = th_scale(timeout_ms);
    struct timeval tv = {.tv_sec = limit / 1000, .tv_usec = (long)(limit % 1000) * 1000};
    /* A raw event: nd_loop_run() counts only the library's refs, so the watchdog cannot
     * itself keep the loop running. */
    struct event *dog = evtimer_new(nd_loop_base(loop), watchdog_fired, &limit);

    ck_assert_msg(dog != NULL, "evtimer_new failed");
    evtimer_add(dog, &tv);
    int rc = nd_loop_run(loop);
    event_free(dog);
    ck_assert_msg(rc >= 0, "nd_loop_run failed: %s", nd_strerror(rc));
}

void th_finish(nd_loop_t *loop)
{
    int left = nd_loop_handle_count(loop);
    /* Free first: a failed assertion exits the forked test, and a leak report from the
     * sanitizer would then replace Check's message. */
    nd_loop_free(loop);
    ck_assert_msg(left == 0, "%d handle(s) still attached to the loop", left);
}

void th_log(th_log_t *log, const char *fmt, ...)
{
    size_t room = sizeof(log->buf) - log->len;
    va_list ap;

    if (log->len > 0) {
        ck_assert_msg(room > 1, "th_log overflow");
        log->buf[log->len++] = ',';
        log->buf[log->len] = '\0';
        room--;
    }
    va_start(ap, fmt);
    int n = vsnprintf(log->buf + log->len, room, fmt, ap);
    va_end(ap);
    ck_assert_msg(n >= 0 && (size_t)n < room, "th_log overflow");
    log->len += (size_t)n;
}

void th_buf_add(th_buf_t *b, const void *d, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        ck_assert_ptr_nonnull(p);
        b->p = p;
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void th_buf_free(th_buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static void sink_ev(void *self, const nd_event_t *ev, void *arg)
{
    th_sink_t *k = arg;

    switch (ev->type) {
    case ND_EV_LOOKUP:
        k->nlookup++;
        th_log(&k->log, "lookup");
        break;
    case ND_EV_CONNECT:
        k->nconnect++;
        th_log(&k->log, "connect");
        break;
    case ND_EV_DATA:
        k->ndata++;
        th_buf_add(&k->data, ev->data, ev->len);
        break;
    case ND_EV_END:
        k->nend++;
        th_log(&k->log, "end");
        break;
    case ND_EV_FINISH:
        k->nfinish++;
        th_log(&k->log, "finish");
        break;
    case ND_EV_DRAIN:
        th_log(&k->log, "drain");
        break;
    case ND_EV_TIMEOUT:
        th_log(&k->log, "timeout");
        break;
    case ND_EV_ERROR:
        k->nerror++;
        k->error_code = ev->error->code;
        snprintf(k->error_name, sizeof(k->error_name), "%s", ev->error->name);
        snprintf(k->error_message, sizeof(k->error_message), "%s", ev->error->message);
        th_log(&k->log, "error:%s", ev->error->name);
        break;
    case ND_EV_CLOSE:
        k->nclose++;
        k->had_error = ev->had_error;
        th_log(&k->log, "close");
        break;
    default:
        break;
    }
}

void th_sink_attach(nd_socket_t *s, th_sink_t *k, unsigned mask)
{
    for (int e = ND_EV_LOOKUP; e < ND_EV__COUNT; e++)
        if (mask & TH_EVBIT(e))
            ck_assert_int_eq(nd_socket_on(s, (nd_event_type_t)e, sink_ev, k), 0);
}

void th_sink_free(th_sink_t *k)
{
    th_buf_free(&k->data);
}

int th_server_port(nd_server_t *server)
{
    nd_address_t a;

    ck_assert_int_eq(nd_server_address(server, &a), 0);
    return a.port;
}

nd_socket_t *th_connect(nd_loop_t *loop, int port, nd_listener_fn on_connect, void *arg)
{
    nd_connect_options_t o;

    memset(&o, 0, sizeof(o));
    o.port = port;
    o.host = "127.0.0.1";
    nd_socket_t *s = nd_connect(loop, &o, on_connect, arg);
    ck_assert_msg(s != NULL, "nd_connect 127.0.0.1:%d: %s", port, strerror(errno));
    return s;
}

nd_socket_t *th_socket_on_fd(nd_loop_t *loop, int fd)
{
    nd_socket_options_t o;

    nd_socket_options_init(&o);
    o.fd = fd;
    o.readable = 1;
    o.writable = 1;
    nd_socket_t *s = nd_socket_new(loop, &o);
    ck_assert_ptr_nonnull(s);
    return s;
}

static void pair_step(th_pair_t *p)
{
    if (++p->parts == 2 && p->ready)
        p->ready(p);
}

static void pair_client_closed(void *self, const nd_event_t *ev, void *arg)
{
    th_pair_t *p = arg;
    if (p->client == self)
        p->client = NULL;
}

static void pair_conn_closed(void *self, const nd_event_t *ev, void *arg)
{
    th_pair_t *p = arg;
    if (p->conn == self)
        p->conn = NULL;
}

static void pair_connected(void *self, const nd_event_t *ev, void *arg)
{
    pair_step(arg);
}

static void pair_connection(void *self, const nd_event_t *ev, void *arg)
{
    th_pair_t *p = arg;

    ck_assert_ptr_null(p->conn);
    p->conn = ev->socket;
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_CLOSE, pair_conn_closed, p), 0);
    /* One connection per pair: the server's 'close' then follows the connection's, so
     * the loop ends by itself when the test is done. */
    ck_assert_int_eq(nd_server_close(self, NULL, NULL), 0);
    if (p->accepted)
        p->accepted(p);
    pair_step(p);
}

static void pair_listening(void *self, const nd_event_t *ev, void *arg)
{
    th_pair_t *p = arg;
    nd_address_t a;

    ck_assert_int_eq(nd_server_address(self, &a), 0);
    p->port = a.port;
    memset(&p->copts, 0, sizeof(p->copts));
    p->copts.port = a.port;
    p->copts.host = "127.0.0.1";
    p->copts.allow_half_open = p->client_half_open;
    p->client = nd_connect(p->loop, &p->copts, pair_connected, p);
    ck_assert_ptr_nonnull(p->client);
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_CLOSE, pair_client_closed, p), 0);
    if (p->connecting)
        p->connecting(p);
}

void th_pair_open(th_pair_t *p, nd_loop_t *loop, void *arg)
{
    nd_server_options_t so = {.allow_half_open = p->server_half_open};

    p->loop = loop;
    p->arg = arg;
    nd_server_t *srv = nd_server_new(loop, &so, pair_connection, p);
    ck_assert_ptr_nonnull(srv);
    ck_assert_int_eq(nd_server_once(srv, ND_EV_LISTENING, pair_listening, p), 0);
    ck_assert_int_eq(nd_server_listen(srv, 0, "127.0.0.1", 0), 0);
}

struct th_timer {
    struct event *ev;
    nd_loop_t *loop;
    void (*fn)(void *arg);
    void *arg;
    int firing;
};

static void th_timer_fired(evutil_socket_t fd, short what, void *arg)
{
    th_timer_t *t = arg;

    /* Unref only after fn: fn may start new work, and the loop must not see a zero ref
     * count in between and stop. */
    t->firing = 1;
    t->fn(t->arg);
    nd_loop_unref(t->loop);
    event_free(t->ev);
    free(t);
}

th_timer_t *th_timer(nd_loop_t *loop, unsigned ms, void (*fn)(void *arg), void *arg)
{
    th_timer_t *t = calloc(1, sizeof(*t));
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (long)(ms % 1000) * 1000};

    ck_assert_msg(t != NULL, "out of memory");
    t->loop = loop;
    t->fn = fn;
    t->arg = arg;
    t->ev = evtimer_new(nd_loop_base(loop), th_timer_fired, t);
    ck_assert_msg(t->ev != NULL, "evtimer_new failed");
    evtimer_add(t->ev, &tv);
    nd_loop_ref(loop);
    return t;
}

void th_timer_cancel(th_timer_t *t)
{
    /* From inside its own callback the timer is already spent and frees itself after. */
    if (t == NULL || t->firing)
        return;
    event_free(t->ev);
    nd_loop_unref(t->loop);
    free(t);
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in sin;

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sin;
}

/* CLOEXEC so that processes spawned by a test never inherit a raw peer. */
static int raw_socket(void)
{
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ck_assert_msg(fd >= 0, "socket: %s", strerror(errno));
    ck_assert_msg(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0,
                  "setsockopt SO_REUSEADDR: %s", strerror(errno));
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_in sin = {0};
    socklen_t len = sizeof(sin);

    ck_assert_msg(getsockname(fd, (struct sockaddr *)&sin, &len) == 0, "getsockname: %s",
                  strerror(errno));
    return ntohs(sin.sin_port);
}

int th_raw_listen(int *port)
{
    int fd = raw_socket();
    struct sockaddr_in sin = loopback(0);

    ck_assert_msg(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "bind: %s", strerror(errno));
    ck_assert_msg(listen(fd, 128) == 0, "listen: %s", strerror(errno));
    *port = bound_port(fd);
    return fd;
}

int th_raw_connect(int port)
{
    int fd = raw_socket();
    struct sockaddr_in sin = loopback(port);

    ck_assert_msg(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0,
                  "connect 127.0.0.1:%d: %s", port, strerror(errno));
    return fd;
}

int th_free_port(void)
{
    int fd = raw_socket();
    struct sockaddr_in sin = loopback(0);

    ck_assert_msg(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "bind: %s", strerror(errno));
    int port = bound_port(fd);
    close(fd);
    return port;
}

int th_refused_port(void)
{
    /* Kept open on purpose, and without SO_REUSEADDR: no other socket may bind the port. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = loopback(0);

    ck_assert_msg(fd >= 0, "socket: %s", strerror(errno));
    ck_assert_msg(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "bind: %s", strerror(errno));
    return bound_port(fd);
}

const char *th_tmpdir(void)
{
    static char path[64];

    snprintf(path, sizeof(path), "/tmp/ndtest.XXXXXX");
    ck_assert_msg(mkdtemp(path) != NULL, "mkdtemp: %s", strerror(errno));
    return path;
}
