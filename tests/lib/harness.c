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
#include <unistd.h>

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

    ck_assert_msg(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "bind: %s",
                  strerror(errno));
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

    ck_assert_msg(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "bind: %s",
                  strerror(errno));
    int port = bound_port(fd);
    close(fd);
    return port;
}

const char *th_tmpdir(void)
{
    static char path[64];

    snprintf(path, sizeof(path), "/tmp/ndtest.XXXXXX");
    ck_assert_msg(mkdtemp(path) != NULL, "mkdtemp: %s", strerror(errno));
    return path;
}
