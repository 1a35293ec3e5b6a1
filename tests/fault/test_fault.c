/* SPDX-License-Identifier: MIT */
/*
 * netd under overload, faults and hostile input (issue 7): a real daemon per test, driven
 * over loopback and unix sockets only, every wait bounded.
 *
 *   fd exhaustion   RLIMIT_NOFILE=256 and 600 connection attempts
 *   slow readers    256 MiB into an echo / a proxy nobody reads; the stall limit
 *   resets          1000 resets mid-write, 1000 early half-closes
 *   drain           SIGTERM with 500 connections streaming; a second SIGTERM
 *   control abuse   hostile lines, 200 clients past the limit, another uid, a 2 MiB line
 *   config abuse    --check and SIGHUP with broken files
 *   soak            churn at about 1000 connects/s for NETD_SOAK_SECONDS
 *
 * Memory and CPU bounds hold in the plain build only (sanitizers keep freed memory back
 * and slow everything down); under sanitizers the same tests check behaviour alone and
 * move less data. Each test prints its figures on stderr ("fault: ...").
 */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "netd_proc.h"
#include "protocol.h"

#define SANITIZED NP_SANITIZED
#define MiB (1024 * 1024)

/* ================================================================== small helpers */

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "fault: %s\n", line);
}

#define Q np_q

/* Polls cond every 20 ms until it holds, or fails the test with the message. */
#define WAIT_FOR(cond, ms, ...)                                                                    \
    do {                                                                                           \
        uint64_t wait_deadline_ = np_now_ms() + th_scale(ms);                                      \
        while (!(cond)) {                                                                          \
            if (np_now_ms() > wait_deadline_)                                                      \
                ck_abort_msg(__VA_ARGS__);                                                         \
            np_pause_ms(20);                                                                       \
        }                                                                                          \
    } while (0)

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: reproducible, thread-local by construction (state passed in). */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* ------------------------------------------------------------------ /proc figures */

/* utime + stime of a process, in seconds. */
static double cpu_seconds(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "open %s: %s", path, strerror(errno));
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    ck_assert(p != NULL);
    /* After "pid (comm)": field 3 is the state; utime and stime are fields 14 and 15. */
    unsigned long long ut = 0, st = 0;
    ck_assert(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) ==
              2);
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int count_substr(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* ------------------------------------------------------------------ control shortcuts */

static json_t *stats(netd_proc_t *np)
{
    return np_ok(np_call(np, "{s:s}", "cmd", "stats"));
}

static long long stat_of(netd_proc_t *np, const char *key)
{
    json_t *v = json_object_get(stats(np), key);
    ck_assert_msg(json_is_integer(v), "stats has no integer %s", key);
    return (long long)json_integer_value(v);
}

static long long server_int(netd_proc_t *np, const char *name, const char *key)
{
    return (long long)json_integer_value(json_object_get(np_server_obj(np, name), key));
}

/* ------------------------------------------------------------------ sockets */

static void raise_nofile(rlim_t want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur >= want)
        return;
    rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

static rlim_t nofile_limit(void)
{
    struct rlimit rl;
    ck_assert(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    return rl.rlim_cur;
}

/* A non-blocking connect to 127.0.0.1:port: the fd (in progress or connected), or -errno. */
static int tcp_connect_nb(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* Sends everything (blocking socket with timeouts): 0 or -errno. */
static int send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EPIPE;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Echo round trip with a deadline per call: 1 when data came back intact. */
static int echo_ok(int fd, const char *data)
{
    size_t n = strlen(data);
    char buf[256];
    ck_assert(n < sizeof(buf));
    if (send_all(fd, data, n) != 0)
        return 0;
    size_t got = np_recv_exact(fd, buf, n);
    return got == n && memcmp(buf, data, n) == 0;
}

/* ------------------------------------------------------------------ the byte pattern */

/* A random table with a prime period: any byte lost, doubled or reordered shows up as a
 * mismatch at a known offset. pat_at(off) is valid for PAT_SPAN bytes. */
#define PAT_PERIOD 1048573u
#define PAT_SPAN 65536u
static uint8_t pat[PAT_PERIOD + PAT_SPAN];

static void pat_init(void)
{
    static bool done;
    if (done)
        return;
    uint64_t s = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < PAT_PERIOD; i++)
        pat[i] = (uint8_t)(rng_next(&s) >> 56);
    memcpy(pat + PAT_PERIOD, pat, PAT_SPAN);
    done = true;
}

static const uint8_t *pat_at(uint64_t off)
{
    return pat + off % PAT_PERIOD;
}

/* ------------------------------------------------------------------ a netd with a low fd limit */

/* The test process keeps a high limit for its own clients; netd gets nofile (soft and
 * hard), set in the child before exec. */
static netd_proc_t *start_nofile(const char *config, int threads, rlim_t nofile)
{
    np_opts_t o = {.config = config, .threads = threads, .nofile = nofile};
    return np_start_ex(&o);
}

#define CFG_ECHO "{'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"

/* ================================================================== fd exhaustion */

#define FLOOD 600
#define KEEP 20

START_TEST(test_fd_exhaustion)
{
    raise_nofile(4096);
    ck_assert_msg(nofile_limit() >= FLOOD + KEEP + 64, "the test needs %d descriptors, has %llu",
                  FLOOD + KEEP + 64, (unsigned long long)nofile_limit());
    netd_proc_t *np = start_nofile(Q(CFG_ECHO), 2, 256);
    ck_assert_int_eq(stat_of(np, "fdLimit"), 256);
    int port = np_server_port(np, "echo");

    /* Established and echoing before the flood. */
    int keep[KEEP];
    for (int i = 0; i < KEEP; i++) {
        keep[i] = np_tcp_connect(port);
        ck_assert_msg(echo_ok(keep[i], "before"), "keep[%d] does not echo", i);
    }
    long long paused0 = stat_of(np, "acceptPausedTotal");
    ck_assert_int_eq(paused0, 0);

    /* The flood: 600 attempts at once. */
    uint64_t t_flood = np_now_ms();
    int flood[FLOOD];
    for (int i = 0; i < FLOOD; i++) {
        flood[i] = tcp_connect_nb(port);
        ck_assert_msg(flood[i] >= 0, "connect %d: %s", i, strerror(-flood[i]));
    }
    WAIT_FOR(stat_of(np, "acceptPausedTotal") > 0, 10000,
             "600 connections against a limit of 256: accepting never paused");

    /* Saturated: an operator still gets in, old connections still echo. */
    np_ok(np_call(np, "{s:s}", "cmd", "ping"));
    np_client_t *fresh = np_connect(np);
    np_ok(np_client_call(fresh, "{s:s}", "cmd", "ping"));
    np_ok(np_client_call(fresh, "{s:s}", "cmd", "stats"));
    for (int i = 0; i < KEEP; i++)
        ck_assert_msg(echo_ok(keep[i], "saturated"), "keep[%d] stopped echoing while saturated", i);
    int fds_sat = np_fd_count(np->pid);
    ck_assert_msg(fds_sat <= 256, "netd holds %d descriptors under a limit of 256", fds_sat);

    /* No accept busy loop: CPU over 3 s while saturated. */
    long long p1 = stat_of(np, "acceptPausedTotal");
    double c0 = cpu_seconds(np->pid);
    uint64_t w0 = np_now_ms();
    np_pause_ms(3000);
    double c1 = cpu_seconds(np->pid);
    double wall = (double)(np_now_ms() - w0) / 1000.0;
    long long p2 = stat_of(np, "acceptPausedTotal");
    double cpu_pct = 100.0 * (c1 - c0) / wall;
    ck_assert_msg(p2 > p1, "acceptPausedTotal did not rise while saturated (%lld -> %lld)", p1, p2);
#if !SANITIZED
    ck_assert_msg(cpu_pct < 10.0, "netd used %.1f%% of a core while saturated (busy loop?)",
                  cpu_pct);
#endif
    /* How many of the flood were served: those echo, the others wait or were refused. */
    int served = 0;
    for (int i = 0; i < FLOOD; i++) {
        if (send(flood[i], "x", 1, MSG_NOSIGNAL) != 1)
            continue;
    }
    /* Wait for the echoes themselves (poll), counting every one that comes. */
    struct pollfd *pf = calloc(FLOOD, sizeof(*pf));
    ck_assert_ptr_nonnull(pf);
    for (int i = 0; i < FLOOD; i++)
        pf[i] = (struct pollfd){.fd = flood[i], .events = POLLIN};
    uint64_t echo_until = np_now_ms() + th_scale(5000);
    while (served == 0 && np_now_ms() < echo_until) {
        if (poll(pf, FLOOD, 100) <= 0)
            continue;
        for (int i = 0; i < FLOOD; i++) {
            char c;
            if ((pf[i].revents & POLLIN) && recv(flood[i], &c, 1, MSG_DONTWAIT) == 1 && c == 'x') {
                served++;
                pf[i].fd = -1; /* counted: poll skips it from now on */
            }
        }
    }
    free(pf);
    ck_assert_msg(served > 0, "no flood connection was served at all");
    for (int i = 0; i < KEEP; i++)
        ck_assert_msg(echo_ok(keep[i], "still"), "keep[%d] stopped echoing", i);

    /* One rate-limited log line: at most one a second since the flood began. */
    double secs = (double)(np_now_ms() - t_flood) / 1000.0;
    const char *err = np_stderr(np);
    int lines = count_substr(err, "accepting paused");
    ck_assert_msg(lines >= 1, "no 'accepting paused' line in netd's log:\n%s", err);
    ck_assert_msg(lines <= (int)secs + 2, "%d 'accepting paused' lines in %.1f s: not rate-limited",
                  lines, secs);

    /* The flood goes away: new connections are served again. */
    for (int i = 0; i < FLOOD; i++)
        close(flood[i]);
    uint64_t t_close = np_now_ms();
    int fd = -1;
    for (;;) {
        fd = np_tcp_try_connect(port);
        if (fd >= 0) {
            struct timeval tv = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
            if (echo_ok(fd, "again"))
                break;
            close(fd);
            fd = -1;
        }
        ck_assert_msg(np_now_ms() - t_close < th_scale(10000),
                      "10 s after the flood closed, new connections are still not served");
        np_pause_ms(50);
    }
    double recover_s = (double)(np_now_ms() - t_close) / 1000.0;
    close(fd);
    for (int i = 0; i < KEEP; i++)
        ck_assert_msg(echo_ok(keep[i], "after"), "keep[%d] stopped echoing after the flood", i);
    for (int i = 0; i < KEEP; i++)
        close(keep[i]);
    WAIT_FOR(stat_of(np, "connections") == 0, 5000, "connections never went back to 0");
    note("fd exhaustion: limit 256, %d flood connections served, netd fds %d while saturated, "
         "CPU %.2f%% of a core over %.1f s, acceptPausedTotal %lld -> %lld, %d log line(s) in "
         "%.1f s, served again %.2f s after the flood closed",
         served, fds_sat, cpu_pct, wall, p1, p2, lines, secs, recover_s);
}
END_TEST

/* ================================================================== slow readers */

/* One direction of a transfer: pattern bytes from base, written to wfd, read from rfd. */
typedef struct flow {
    int wfd, rfd;
    uint64_t base, total, sent, recvd;
} flow_t;

static void sample_rss(pid_t pid, long *max_kb, uint64_t *next_ms)
{
    if (np_now_ms() < *next_ms)
        return;
    long kb = np_rss_kb(pid);
    if (kb > *max_kb)
        *max_kb = kb;
    *next_ms = np_now_ms() + 50;
}

/* Writes, never reads, until everything is sent or nothing moves for stall_ms. */
static void flow_write_until_stalled(flow_t *f, unsigned stall_ms, pid_t pid, long *max_kb)
{
    uint64_t last = np_now_ms(), next = 0;
    while (f->sent < f->total) {
        sample_rss(pid, max_kb, &next);
        uint64_t left = f->total - f->sent;
        size_t n = left < PAT_SPAN ? (size_t)left : PAT_SPAN;
        ssize_t k = send(f->wfd, pat_at(f->base + f->sent), n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            f->sent += (uint64_t)k;
            last = np_now_ms();
            continue;
        }
        ck_assert_msg(k < 0 && (errno == EAGAIN || errno == EINTR), "send after %llu bytes: %s",
                      (unsigned long long)f->sent, k < 0 ? strerror(errno) : "0");
        if (np_now_ms() - last >= stall_ms)
            return;
        struct pollfd p = {f->wfd, POLLOUT, 0};
        poll(&p, 1, 20);
    }
}

/* Writes the rest while reading everything back, checking every byte. */
static void flow_finish(flow_t *f, pid_t pid, long *max_kb, unsigned timeout_ms)
{
    static uint8_t buf[PAT_SPAN];
    uint64_t deadline = np_now_ms() + th_scale(timeout_ms), next = 0;
    while (f->recvd < f->total) {
        ck_assert_msg(np_now_ms() < deadline, "transfer stuck: %llu of %llu sent, %llu back",
                      (unsigned long long)f->sent, (unsigned long long)f->total,
                      (unsigned long long)f->recvd);
        sample_rss(pid, max_kb, &next);
        struct pollfd p[2] = {{f->rfd, POLLIN, 0}, {f->wfd, POLLOUT, 0}};
        int nfds = f->sent < f->total && f->wfd != f->rfd ? 2 : 1;
        if (f->sent < f->total && f->wfd == f->rfd)
            p[0].events |= POLLOUT;
        poll(p, (nfds_t)nfds, 50);
        while (f->sent < f->total) {
            uint64_t left = f->total - f->sent;
            size_t n = left < PAT_SPAN ? (size_t)left : PAT_SPAN;
            ssize_t k = send(f->wfd, pat_at(f->base + f->sent), n, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (k <= 0)
                break;
            f->sent += (uint64_t)k;
        }
        for (;;) {
            ssize_t k = recv(f->rfd, buf, sizeof(buf), MSG_DONTWAIT);
            if (k < 0 && (errno == EAGAIN || errno == EINTR))
                break;
            ck_assert_msg(k > 0, "%s after %llu of %llu bytes", k == 0 ? "EOF" : strerror(errno),
                          (unsigned long long)f->recvd, (unsigned long long)f->total);
            ck_assert_msg(memcmp(buf, pat_at(f->base + f->recvd), (size_t)k) == 0,
                          "bytes differ in the %zd-byte read at offset %llu", k,
                          (unsigned long long)f->recvd);
            f->recvd += (uint64_t)k;
        }
    }
}

static uint64_t slow_total(void)
{
    return (uint64_t)(SANITIZED ? 64 : 256) * MiB;
}

/* The largest bufferSize among the sockets netd lists (role all). */
static long long max_buffer_size(netd_proc_t *np)
{
    json_t *r = np_ok(np_call(np, "{s:s, s:s}", "cmd", "sockets", "role", "all"));
    long long max = 0;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(r, "sockets"), i, s) {
        long long b = (long long)json_integer_value(json_object_get(s, "bufferSize"));
        if (b > max)
            max = b;
    }
    return max;
}

/* Queued output of one connection stays near the high-water mark (1 MiB by default) plus
 * one read (64 KiB): a behaviour check that holds under sanitizers too. */
#define QUEUE_BOUND (1 * MiB + 128 * 1024)

static void check_rss_growth(const char *what, long base_kb, long max_kb)
{
    note("%s: netd RSS %ld kB -> max %ld kB (+%.1f MiB)", what, base_kb, max_kb,
         (double)(max_kb - base_kb) / 1024.0);
#if !SANITIZED
    ck_assert_msg(max_kb - base_kb <= 16 * 1024,
                  "%s: netd's RSS grew by %ld kB (limit 16 MiB): it buffers what the reader does "
                  "not take",
                  what, max_kb - base_kb);
#endif
}

START_TEST(test_slow_reader_echo)
{
    pat_init();
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int fd = np_tcp_connect(port);
    ck_assert(echo_ok(fd, "warm"));
    long base = np_rss_kb(np->pid), max = base;

    flow_t f = {.wfd = fd, .rfd = fd, .base = 12345, .total = slow_total()};
    uint64_t t0 = np_now_ms();
    flow_write_until_stalled(&f, 1000, np->pid, &max);
    ck_assert_msg(f.sent < f.total, "all %llu bytes went in although nobody read: where are they?",
                  (unsigned long long)f.total);
    long long queued = max_buffer_size(np);
    long stalled_kb = np_rss_kb(np->pid);
    if (stalled_kb > max)
        max = stalled_kb;
    ck_assert_msg(queued <= QUEUE_BOUND, "netd queues %lld bytes for a reader that takes nothing",
                  queued);
    uint64_t stalled_at = f.sent;
    /* The reader wakes up: everything comes back, in order, and reading resumed. */
    flow_finish(&f, np->pid, &max, 120000);
    double secs = (double)(np_now_ms() - t0) / 1000.0;
    ck_assert(echo_ok(fd, "after"));
    close(fd);
    note("slow reader (echo): writer stalled after %.1f MiB with netd queueing %lld bytes; "
         "then %llu MiB echoed intact in %.1f s",
         (double)stalled_at / MiB, queued, (unsigned long long)(f.total / MiB), secs);
    check_rss_growth("slow reader (echo)", base, max);
}
END_TEST

/* Accepts one connection within the default deadline. */
static int accept_one(int lfd)
{
    struct pollfd p = {lfd, POLLIN, 0};
    ck_assert_msg(poll(&p, 1, (int)th_scale(NP_TIMEOUT_MS)) == 1, "the upstream saw no connect");
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    ck_assert_msg(fd >= 0, "accept: %s", strerror(errno));
    return fd;
}

START_TEST(test_slow_reader_proxy)
{
    pat_init();
    int uport;
    int lfd = np_tcp_listen(&uport);
    netd_proc_t *np = np_start(
        Q("{'servers':[{'name':'proxy','port':0,'host':'127.0.0.1','allowHalfOpen':true,"
          "'handler':{'type':'proxy','port':%d,'host':'127.0.0.1'}}]}",
          uport),
        2);
    int port = np_server_port(np, "proxy");
    int client = np_tcp_connect(port);
    int up = accept_one(lfd);
    /* Both ways work before the test. */
    np_send_all(client, "ping", 4);
    char b4[4];
    ck_assert(np_recv_exact(up, b4, 4) == 4 && memcmp(b4, "ping", 4) == 0);
    np_send_all(up, "pong", 4);
    ck_assert(np_recv_exact(client, b4, 4) == 4 && memcmp(b4, "pong", 4) == 0);

    /* client -> upstream, the upstream does not read. */
    long base = np_rss_kb(np->pid), max = base;
    flow_t a = {.wfd = client, .rfd = up, .base = 777, .total = slow_total()};
    flow_write_until_stalled(&a, 1000, np->pid, &max);
    ck_assert(a.sent < a.total);
    long long qa = max_buffer_size(np);
    ck_assert_msg(qa <= QUEUE_BOUND, "proxy queues %lld bytes toward a stalled upstream", qa);
    uint64_t stalled_a = a.sent;
    flow_finish(&a, np->pid, &max, 120000);
    check_rss_growth("slow reader (proxy, upstream not reading)", base, max);

    /* upstream -> client, the client does not read. */
    base = np_rss_kb(np->pid);
    max = base;
    flow_t b = {.wfd = up, .rfd = client, .base = 4242, .total = slow_total()};
    flow_write_until_stalled(&b, 1000, np->pid, &max);
    ck_assert(b.sent < b.total);
    long long qb = max_buffer_size(np);
    ck_assert_msg(qb <= QUEUE_BOUND, "proxy queues %lld bytes toward a stalled client", qb);
    uint64_t stalled_b = b.sent;
    flow_finish(&b, np->pid, &max, 120000);
    check_rss_growth("slow reader (proxy, client not reading)", base, max);
    note("slow reader (proxy): stalled after %.1f MiB (to upstream) and %.1f MiB (to client), "
         "queues %lld / %lld bytes; %llu MiB each way intact",
         (double)stalled_a / MiB, (double)stalled_b / MiB, qa, qb,
         (unsigned long long)(slow_total() / MiB));
    close(client);
    close(up);
    close(lfd);
    WAIT_FOR(stat_of(np, "connections") == 0, 5000, "the proxy pair did not close");
}
END_TEST

/* Past limits.maxBufferedBytes with no progress for limits.stallMs: destroyed and counted.
 * The pipe pauses its source, so the queue is built by the banner handler's one big write. */
START_TEST(test_slow_reader_destroyed)
{
    size_t text_len = (size_t)8 * MiB;
    char *text = malloc(text_len + 1);
    ck_assert(text != NULL);
    memset(text, 'b', text_len);
    text[text_len] = '\0';
    char *cfg = NULL;
    ck_assert(asprintf(&cfg,
                       "{\"limits\":{\"maxBufferedBytes\":65536,\"stallMs\":500},"
                       "\"servers\":[{\"name\":\"banner\",\"port\":0,\"host\":\"127.0.0.1\","
                       "\"handler\":{\"type\":\"banner\",\"text\":\"%s\"}},"
                       "{\"name\":\"echo\",\"port\":0,\"host\":\"127.0.0.1\"}]}",
                       text) > 0);
    free(text);
    netd_proc_t *np = np_start(cfg, 2);
    free(cfg);
    int bport = np_server_port(np, "banner"), eport = np_server_port(np, "echo");
    int echo = np_tcp_connect(eport);
    ck_assert(echo_ok(echo, "bystander"));

    /* A reader that keeps up gets all 8 MiB: the limit is about stalls, not size. */
    int good = np_tcp_connect(bport);
    char *buf = malloc(text_len + 1);
    ck_assert(buf != NULL);
    ssize_t got = np_recv_to_eof(good, buf, text_len + 1);
    ck_assert_msg(got == (ssize_t)text_len, "a reading client got %zd of %zu banner bytes", got,
                  text_len);
    close(good);
    ck_assert_int_eq(stat_of(np, "slowDestroyedTotal"), 0);

    /* A reader that takes nothing. */
    int slow = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 4096;
    setsockopt(slow, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)bport)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert(connect(slow, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    uint64_t t0 = np_now_ms();
    WAIT_FOR(stat_of(np, "slowDestroyedTotal") >= 1, 10000,
             "a client that reads nothing of 8 MiB queued was never destroyed "
             "(maxBufferedBytes 65536, stallMs 500)");
    double after = (double)(np_now_ms() - t0) / 1000.0;
    ck_assert_msg(after >= 0.4, "destroyed after %.2f s, before stallMs (0.5 s) passed", after);
    /* The client sees the connection cut short: fewer bytes than the banner, then RST/EOF. */
    struct timeval tv = {5, 0};
    setsockopt(slow, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    size_t total = 0;
    for (;;) {
        ssize_t k = recv(slow, buf, text_len, 0);
        if (k <= 0) {
            ck_assert_msg(k == 0 || errno == ECONNRESET, "slow reader: recv: %s", strerror(errno));
            break;
        }
        total += (size_t)k;
    }
    close(slow);
    free(buf);
    ck_assert_msg(total < text_len, "the destroyed client still got the whole banner");
    const char *err = np_stderr(np);
    ck_assert_msg(strstr(err, "no progress") != NULL, "no log line for the destroy:\n%s", err);
    ck_assert(echo_ok(echo, "unaffected"));
    close(echo);
    WAIT_FOR(stat_of(np, "connections") == 0, 5000, "connections did not go back to 0");
    ck_assert_int_eq(stat_of(np, "slowDestroyedTotal"), 1);
    note("slow reader destroyed: %.2f s after connect (stallMs 500, sweep 1 s), client got "
         "%zu of %zu bytes; a reading client got all of them",
         after, total, text_len);
}
END_TEST

/* ================================================================== resets and half-closes */

#define CHURN_N 1000
#define CHURN_BATCH 100

START_TEST(test_resets_half_closes)
{
    pat_init();
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int base_fds = np_fd_count(np->pid);

    /* 1000 clients send 64 KiB and reset while netd is echoing. */
    int fds[CHURN_BATCH];
    int resets = 0;
    for (int done = 0; done < CHURN_N; done += CHURN_BATCH) {
        for (int i = 0; i < CHURN_BATCH; i++)
            fds[i] = np_tcp_connect(port);
        for (int i = 0; i < CHURN_BATCH; i++) {
            ssize_t k = send(fds[i], pat_at((uint64_t)(done + i) * 7), 65536,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            ck_assert_msg(k > 0, "send: %s", k < 0 ? strerror(errno) : "0");
        }
        for (int i = 0; i < CHURN_BATCH; i++) {
            np_rst_close(fds[i]);
            resets++;
        }
    }
    np_ok(np_call(np, "{s:s}", "cmd", "ping"));

    /* 1000 clients half-close at once: netd ends its side (allowHalfOpen false). */
    int eofs = 0;
    for (int done = 0; done < CHURN_N; done += CHURN_BATCH) {
        for (int i = 0; i < CHURN_BATCH; i++) {
            fds[i] = np_tcp_connect(port);
            ck_assert(shutdown(fds[i], SHUT_WR) == 0);
        }
        for (int i = 0; i < CHURN_BATCH; i++) {
            /* Half of them wait for netd's FIN, the others just go. */
            if (i % 2 == 0) {
                ck_assert_msg(np_expect_eof(fds[i]) == 1, "no EOF after a half-close");
                eofs++;
            }
            close(fds[i]);
        }
    }
    np_ok(np_call(np, "{s:s}", "cmd", "ping"));
    /* Both counts: a connection accepted but still on its way to a worker is the server's
     * already and no thread's yet (the clients that closed without waiting). */
    WAIT_FOR(stat_of(np, "connections") == 0 && server_int(np, "echo", "connections") == 0, 10000,
             "stats.connections stays at %lld, the server's at %lld", stat_of(np, "connections"),
             server_int(np, "echo", "connections"));
    json_t *gc = np_ok(np_call(np, "{s:s, s:s}", "cmd", "getConnections", "server", "echo"));
    ck_assert_int_eq(json_integer_value(json_object_get(gc, "count")), 0);
    json_t *sk = np_ok(np_call(np, "{s:s, s:s}", "cmd", "sockets", "role", "all"));
    ck_assert_int_eq(json_integer_value(json_object_get(sk, "total")), 0);
    WAIT_FOR(np_fd_count(np->pid) <= base_fds, 10000, "netd holds %d descriptors, %d before",
             np_fd_count(np->pid), base_fds);
    int end_fds = np_fd_count(np->pid);
    long long accepted = stat_of(np, "acceptedTotal");
    ck_assert_int_ge(accepted, 2 * CHURN_N);
    /* Still serving. */
    int fd = np_tcp_connect(port);
    ck_assert(echo_ok(fd, "alive"));
    close(fd);
    note("resets/half-closes: %d resets mid-write, %d half-closes (%d waited for EOF), "
         "acceptedTotal %lld, connections 0, fds %d -> %d",
         resets, CHURN_N, eofs, accepted, base_fds, end_fds);
}
END_TEST

/* ================================================================== drain */

#define DRAIN_CLIENTS 500
#define DRAIN_BYTES 65536

typedef struct dclient {
    int fd;
    size_t sent, recvd;
    bool shut, eof, connected;
} dclient_t;

/* One poll round over all clients: send up to `until` bytes each (then half-close when
 * `shut_when_done`), read and check what comes back. Returns the clients that saw EOF. */
static int drain_round(dclient_t *c, int n, size_t until, bool shut_when_done, struct pollfd *p)
{
    static uint8_t buf[65536];
    for (int i = 0; i < n; i++) {
        p[i].fd = c[i].eof ? -1 : c[i].fd;
        p[i].events = POLLIN | (c[i].sent < until || !c[i].connected ? POLLOUT : 0);
        p[i].revents = 0;
    }
    poll(p, (nfds_t)n, 50);
    int eofs = 0;
    for (int i = 0; i < n; i++) {
        dclient_t *x = &c[i];
        if (x->eof) {
            eofs++;
            continue;
        }
        if (p[i].revents & (POLLOUT | POLLERR | POLLHUP))
            x->connected = true;
        uint64_t base = (uint64_t)i * 104729u;
        while (x->sent < until) {
            size_t want = until - x->sent < 4096 ? until - x->sent : 4096;
            ssize_t k = send(x->fd, pat_at(base + x->sent), want, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (k <= 0) {
                ck_assert_msg(k < 0 && (errno == EAGAIN || errno == EINTR || errno == ENOTCONN),
                              "client %d: send after %zu bytes: %s", i, x->sent,
                              k < 0 ? strerror(errno) : "0");
                break;
            }
            x->sent += (size_t)k;
        }
        if (shut_when_done && x->sent == DRAIN_BYTES && !x->shut) {
            ck_assert(shutdown(x->fd, SHUT_WR) == 0);
            x->shut = true;
        }
        for (;;) {
            ssize_t k = recv(x->fd, buf, sizeof(buf), MSG_DONTWAIT);
            if (k < 0 && (errno == EAGAIN || errno == EINTR || errno == ENOTCONN))
                break;
            ck_assert_msg(k >= 0, "client %d: recv after %zu of %d bytes back: %s", i, x->recvd,
                          DRAIN_BYTES, strerror(errno));
            if (k == 0) {
                ck_assert_msg(x->recvd == DRAIN_BYTES,
                              "client %d: closed by netd with %zu of its %d bytes echoed", i,
                              x->recvd, DRAIN_BYTES);
                x->eof = true;
                eofs++;
                break;
            }
            ck_assert_msg(x->recvd + (size_t)k <= x->sent &&
                              memcmp(buf, pat_at(base + x->recvd), (size_t)k) == 0,
                          "client %d: wrong bytes at offset %zu", i, x->recvd);
            x->recvd += (size_t)k;
        }
    }
    return eofs;
}

/* 1 when a connect to the port is refused; a connect that succeeds is closed at once, so
 * it never holds a drain open. */
static int refused(int port)
{
    int fd = np_tcp_try_connect(port);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    return fd == -ECONNREFUSED;
}

START_TEST(test_drain)
{
    pat_init();
    raise_nofile(4096);
    netd_proc_t *np = np_start(
        Q("{'shutdownTimeoutMs':20000,'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"),
        2);
    int port = np_server_port(np, "echo");
    dclient_t *c = calloc(DRAIN_CLIENTS, sizeof(*c));
    struct pollfd *p = calloc(DRAIN_CLIENTS, sizeof(*p));
    ck_assert(c && p);
    for (int i = 0; i < DRAIN_CLIENTS; i++) {
        c[i].fd = tcp_connect_nb(port);
        ck_assert_msg(c[i].fd >= 0, "connect %d: %s", i, strerror(-c[i].fd));
    }
    /* Every client has sent half and had it echoed: 500 connections mid-stream. */
    uint64_t deadline = np_now_ms() + th_scale(30000);
    for (;;) {
        drain_round(c, DRAIN_CLIENTS, DRAIN_BYTES / 2, false, p);
        int ready = 0;
        for (int i = 0; i < DRAIN_CLIENTS; i++)
            ready += c[i].recvd == DRAIN_BYTES / 2;
        if (ready == DRAIN_CLIENTS)
            break;
        ck_assert_msg(np_now_ms() < deadline, "only %d clients got their first half back", ready);
    }
    ck_assert_int_eq(stat_of(np, "connections"), DRAIN_CLIENTS);

    uint64_t t_term = np_now_ms();
    np_signal(np, SIGTERM);
    WAIT_FOR(strstr(np_stderr(np), "draining") != NULL, 5000, "netd did not start draining");
    /* Draining: no new connections... */
    WAIT_FOR(refused(port), 5000, "netd still accepts connections while draining");
    ck_assert_msg(np_wait_exit(np, 0) < 0, "netd exited with connections still open");
    /* ...but the open ones keep being served: the second half, then a half-close. */
    int eofs = 0;
    while (eofs < DRAIN_CLIENTS) {
        eofs = drain_round(c, DRAIN_CLIENTS, DRAIN_BYTES, true, p);
        ck_assert_msg(np_now_ms() < deadline, "%d of %d clients were closed after their echo", eofs,
                      DRAIN_CLIENTS);
    }
    for (int i = 0; i < DRAIN_CLIENTS; i++)
        close(c[i].fd);
    int st = np_wait_exit(np, 20000);
    double secs = (double)(np_now_ms() - t_term) / 1000.0;
    ck_assert_msg(st == 0, "netd exited with %d after a clean drain; stderr:\n%s", st,
                  np_stderr(np));
    ck_assert_msg(secs < 20.0, "the drain took %.1f s, past shutdownTimeoutMs", secs);
    free(c);
    free(p);
    note("drain: %d connections x %d bytes all echoed after SIGTERM; exit 0 %.2f s after it",
         DRAIN_CLIENTS, DRAIN_BYTES, secs);
}
END_TEST

START_TEST(test_second_sigterm)
{
    netd_proc_t *np = np_start(
        Q("{'shutdownTimeoutMs':30000,'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"),
        2);
    int fd = np_tcp_connect(np_server_port(np, "echo"));
    ck_assert(echo_ok(fd, "held"));
    np_signal(np, SIGTERM);
    WAIT_FOR(strstr(np_stderr(np), "draining") != NULL, 5000, "no drain after SIGTERM");
    np_pause_ms(300);
    ck_assert_msg(np_wait_exit(np, 0) < 0, "netd exited while a connection was open");
    ck_assert_msg(echo_ok(fd, "still served"), "the held connection is not served while draining");
    uint64_t t = np_now_ms();
    np_signal(np, SIGTERM);
    int st = np_wait_exit(np, 5000);
    ck_assert_msg(st == 1, "a second SIGTERM: exit status %d (want 1)", st);
    ck_assert_int_eq(np_expect_eof(fd), 1);
    close(fd);
    note("second SIGTERM: exit 1 after %llu ms with a connection held",
         (unsigned long long)(np_now_ms() - t));
}
END_TEST

/* ================================================================== control abuse */

/* A data-plane client that streams through echo the whole time and checks every byte. */
typedef struct streamer {
    pthread_t th;
    int port;
    atomic_bool stop;
    uint64_t bytes, rounds, sum_sent, sum_recv;
    char error[256];
} streamer_t;

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static void *streamer_main(void *arg)
{
    streamer_t *s = arg;
    uint8_t *buf = malloc(PAT_SPAN);
    int fd = np_tcp_try_connect(s->port);
    if (fd < 0 || !buf) {
        snprintf(s->error, sizeof(s->error), "connect: %s", strerror(-fd));
        free(buf);
        return NULL;
    }
    uint64_t seed = 42;
    s->sum_sent = s->sum_recv = 0xcbf29ce484222325ULL;
    while (!atomic_load(&s->stop)) {
        size_t n = 1 + (size_t)(rng_next(&seed) % 16384);
        const uint8_t *src = pat_at(s->bytes);
        if (send_all(fd, src, n) != 0) {
            snprintf(s->error, sizeof(s->error), "send after %llu bytes: %s",
                     (unsigned long long)s->bytes, strerror(errno));
            break;
        }
        s->sum_sent = fnv(s->sum_sent, src, n);
        size_t got = np_recv_exact(fd, buf, n);
        s->sum_recv = fnv(s->sum_recv, buf, got);
        if (got != n || memcmp(buf, src, n) != 0) {
            snprintf(s->error, sizeof(s->error), "echo at %llu: %zu of %zu bytes, %s",
                     (unsigned long long)s->bytes, got, n, got == n ? "content differs" : "short");
            break;
        }
        s->bytes += n;
        s->rounds++;
    }
    close(fd);
    free(buf);
    return NULL;
}

/* One hostile request line and the code it must get. */
typedef struct hostile {
    char *line; /* malloc'd, without the newline */
    size_t len;
    const char *code;       /* NULL: ok */
    json_int_t id;          /* > 0: must be echoed; 0: id must be null */
    const char *in_message; /* or NULL */
    char what[96];
} hostile_t;

typedef struct hostiles {
    hostile_t *v;
    size_t n, cap;
} hostiles_t;

static void add_raw(hostiles_t *h, const void *line, size_t len, const char *code, json_int_t id,
                    const char *in_message, const char *what)
{
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 64;
        h->v = realloc(h->v, h->cap * sizeof(*h->v));
        ck_assert(h->v != NULL);
    }
    hostile_t *x = &h->v[h->n++];
    x->line = malloc(len + 1);
    ck_assert(x->line != NULL);
    memcpy(x->line, line, len);
    x->line[len] = '\0';
    x->len = len;
    ck_assert_msg(memchr(line, '\n', len) == NULL, "a hostile line with a newline: %s", what);
    x->code = code;
    x->id = id;
    x->in_message = in_message;
    snprintf(x->what, sizeof(x->what), "%s", what);
}

static void add_str(hostiles_t *h, const char *line, const char *code, json_int_t id,
                    const char *in_message)
{
    add_raw(h, line, strlen(line), code, id, in_message, line);
}

/* add_str with ' for " (see Q). */
static void add_q(hostiles_t *h, const char *code, json_int_t id, const char *in_message,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void add_q(hostiles_t *h, const char *code, json_int_t id, const char *in_message,
                  const char *fmt, ...)
{
    char *text = NULL;
    va_list ap;
    va_start(ap, fmt);
    ck_assert(vasprintf(&text, fmt, ap) >= 0);
    va_end(ap);
    for (char *p = text; *p; p++)
        if (*p == '\'')
            *p = '"';
    add_str(h, text, code, id, in_message);
    free(text);
}

/* {"id":N, ...body}: a request whose id must come back (body uses ' for "). */
static void add_id(hostiles_t *h, json_int_t *id, const char *code, const char *in_message,
                   const char *body)
{
    json_int_t k = ++*id;
    add_q(h, code, k, in_message, "{'id':%lld,%s", (long long)k, body);
}

/* Values that an argument of this type must refuse. */
static const char *const *wrong_values(netd_argtype_t t)
{
    static const char *const v_int[] = {"\"1\"", "1.5", "true", "null", "[1]", "{}", NULL};
    static const char *const v_string[] = {"1", "true", "null", "[\"x\"]", NULL};
    static const char *const v_bool[] = {"1", "\"true\"", "null", NULL};
    static const char *const v_object[] = {"[]", "\"echo\"", "1", NULL};
    static const char *const v_strarr[] = {"\"close\"", "[1]", "[null]", "{}", NULL};
    static const char *const v_server[] = {"true", "1.5", "null", "{}", NULL};
    static const char *const v_int_null[] = {"\"1\"", "true", "2.5", NULL};
    static const char *const v_int_str[] = {"true", "null", "3.5", NULL};
    static const char *const v_int_false[] = {"true", "\"1000\"", "null", NULL};
    static const char *const v_duration[] = {"true", "null", "1.5", "[1]", NULL};
    static const char *const v_duration_false[] = {"true", "null", "2.5", "{}", NULL};
    static const char *const none[] = {NULL};
    switch (t) {
    case NETD_ARG_INT:
        return v_int;
    case NETD_ARG_STRING:
        return v_string;
    case NETD_ARG_BOOL:
        return v_bool;
    case NETD_ARG_OBJECT:
        return v_object;
    case NETD_ARG_STRING_ARRAY:
        return v_strarr;
    case NETD_ARG_SERVER:
        return v_server;
    case NETD_ARG_INT_OR_NULL:
        return v_int_null;
    case NETD_ARG_INT_OR_STRING:
        return v_int_str;
    case NETD_ARG_INT_OR_FALSE:
        return v_int_false;
    case NETD_ARG_DURATION:
        return v_duration;
    case NETD_ARG_DURATION_OR_FALSE:
        return v_duration_false;
    case NETD_ARG_ANY:
        return none;
    }
    return none;
}

/* A valid value for a required argument, so that only the argument under test is wrong. */
static const char *valid_value(const char *arg)
{
    if (strcmp(arg, "server") == 0)
        return "\"echo\"";
    if (strcmp(arg, "socket") == 0)
        return "1";
    if (strcmp(arg, "thread") == 0)
        return "0";
    return NULL;
}

/* Every argument of every command (from the shared table), each with every wrong type. */
static int add_wrong_types(hostiles_t *h, json_int_t *id)
{
    int n = 0;
    for (const netd_command_t *c = netd_commands; c->name; c++) {
        for (const netd_arg_t *a = c->args; a->name; a++) {
            for (const char *const *v = wrong_values(a->type); *v; v++) {
                char line[512];
                int len = snprintf(line, sizeof(line), "{\"id\":%lld,\"cmd\":\"%s\",\"%s\":%s",
                                   (long long)++*id, c->name, a->name, *v);
                for (const netd_arg_t *r = c->args; r->name; r++)
                    if (r->required && r != a)
                        len += snprintf(line + len, sizeof(line) - (size_t)len, ",\"%s\":%s",
                                        r->name, valid_value(r->name));
                snprintf(line + len, sizeof(line) - (size_t)len, "}");
                add_raw(h, line, strlen(line), "EARG", *id, a->name, line);
                n++;
            }
        }
    }
    return n;
}

static void add_hostiles(hostiles_t *h, json_int_t *id)
{
    uint64_t seed = 7;
    /* Binary garbage (never a newline, never empty). */
    for (int k = 0; k < 8; k++) {
        uint8_t g[300];
        size_t n = 16 + (size_t)(rng_next(&seed) % 280);
        for (size_t i = 0; i < n; i++) {
            g[i] = (uint8_t)(rng_next(&seed) >> 56);
            if (g[i] == '\n' || g[i] == '\r')
                g[i] = 0;
        }
        g[0] = k % 2 ? '{' : (uint8_t)(0x80 | k);
        add_raw(h, g, n, "EPARSE", 0, NULL, "binary garbage");
    }
    add_raw(h, "\0\0\0\0", 4, "EPARSE", 0, NULL, "NUL bytes");
    add_raw(h, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11, "EPARSE", 0, NULL,
            "a TLS ClientHello");
    add_str(h, "GET / HTTP/1.1", "EPARSE", 0, NULL);
    add_str(h, "   \t ", "EPARSE", 0, NULL);
    /* Invalid UTF-8. */
    add_str(h, "{\"cmd\":\"\xff\xfe\"}", "EPARSE", 0, NULL);
    add_str(h, "{\"cmd\":\"ping\",\"id\":\"\xc0\xaf\"}", "EPARSE", 0, NULL);     /* overlong */
    add_str(h, "{\"cmd\":\"ping\",\"id\":\"\xed\xa0\x80\"}", "EPARSE", 0, NULL); /* surrogate */
    add_str(h, "{\"cmd\":\"ping\",\"id\":\"\xe2\x82\"}", "EPARSE", 0, NULL);     /* truncated */
    add_str(h, "{\"cmd\":\"ping\",\"id\":\"\xf8\x88\x80\x80\x80\"}", "EPARSE", 0, NULL);
    add_str(h, "{\"cmd\":\"ping\",\"id\":\"\xf4\x90\x80\x80\"}", "EPARSE", 0,
            NULL); /* > U+10FFFF */
    add_str(h, "{\"\x80\":1,\"cmd\":\"ping\"}", "EPARSE", 0, NULL);
    add_str(h, "{\"cmd\":\"ping\",\"id\":\"\\ud800\"}", "EPARSE", 0, NULL); /* lone surrogate */
    add_str(h, "{\"cmd\":\"ping\",\"id\":\"a\\u0000b\"}", "EPARSE", 0, NULL);
    /* Deep nesting. */
    {
        size_t depth = 10000;
        char *deep = malloc(5 * depth + 64);
        ck_assert(deep != NULL);
        memset(deep, '[', depth);
        memset(deep + depth, ']', depth);
        add_raw(h, deep, 2 * depth, "EPARSE", 0, NULL, "10000-deep [[[...]]]");
        add_raw(h, deep, depth, "EPARSE", 0, NULL, "10000 unclosed [");
        size_t k = 0;
        for (size_t i = 0; i < depth; i++) {
            memcpy(deep + k, "{\"a\":", 5);
            k += 5;
        }
        add_raw(h, deep, k, "EPARSE", 0, NULL, "deep {\"a\":{\"a\":...");
        int n = snprintf(deep, 64, "{\"cmd\":\"ping\",\"id\":");
        memset(deep + n, '[', depth / 4);
        memset(deep + n + depth / 4, ']', depth / 4);
        deep[n + depth / 2] = '}';
        add_raw(h, deep, (size_t)n + depth / 2 + 1, "EPARSE", 0, NULL, "ping with a 2500-deep id");
        free(deep);
    }
    /* Not JSON, or more than one value. */
    add_str(h, "{\"cmd\":\"ping\"", "EPARSE", 0, NULL);
    add_str(h, "{\"cmd\":\"ping\"} x", "EPARSE", 0, NULL);
    add_str(h, "{\"cmd\":\"ping\"}{\"cmd\":\"ping\"}", "EPARSE", 0, NULL);
    add_str(h, "{'cmd':'ping'}", "EPARSE", 0, NULL);
    add_str(h, "{\"cmd\":\"ping\",\"id\":NaN}", "EPARSE", 0, NULL);
    add_str(h, "{\"cmd\":\"ping\",\"id\":1e999}", "EPARSE", 0, NULL);
    add_str(h, "{\"cmd\":\"destroy\",\"socket\":123456789012345678901234567890}", "EPARSE", 0,
            NULL);
    add_str(h, "{\"cmd\":\"ping\"} // comment", "EPARSE", 0, NULL);
    add_str(h, "{\"cmd\":\"ping\",}", "EPARSE", 0, NULL);
    /* Duplicate keys, at the top and nested (a handler that would open a server). */
    add_str(h, "{\"cmd\":\"ping\",\"cmd\":\"ping\"}", "EPARSE", 0, NULL);
    add_str(h, "{\"cmd\":\"ping\",\"id\":1,\"id\":2}", "EPARSE", 0, NULL);
    add_str(h, "{\"cmd\":\"shutdown\",\"cmd\":\"ping\"}", "EPARSE", 0, NULL);
    add_q(h, "EPARSE", 0, NULL,
          "{'cmd':'listen','port':0,'handler':{'type':'echo','type':'discard'}}");
    /* Not a request. */
    add_str(h, "[]", "EREQUEST", 0, NULL);
    add_str(h, "\"ping\"", "EREQUEST", 0, NULL);
    add_str(h, "42", "EREQUEST", 0, NULL);
    add_str(h, "null", "EREQUEST", 0, NULL);
    add_str(h, "{}", "EREQUEST", 0, NULL);
    {
        json_int_t k = ++*id;
        add_q(h, "EREQUEST", k, NULL, "{'id':%lld}", (long long)k);
    }
    add_id(h, id, "EREQUEST", NULL, "'cmd':1}");
    add_id(h, id, "EREQUEST", NULL, "'cmd':null}");
    add_id(h, id, "EREQUEST", NULL, "'cmd':['ping']}");
    /* Unknown commands. */
    add_id(h, id, "ECOMMAND", NULL, "'cmd':'PING'}");
    add_id(h, id, "ECOMMAND", NULL, "'cmd':''}");
    add_id(h, id, "ECOMMAND", NULL, "'cmd':'ping '}");
    add_id(h, id, "ECOMMAND", NULL, "'cmd':'\\u00e9t\\u00e9'}");
    {
        char big[5000];
        json_int_t k = ++*id;
        int n = snprintf(big, sizeof(big), "{\"id\":%lld,\"cmd\":\"", (long long)k);
        memset(big + n, 'z', 4000);
        snprintf(big + n + 4000, sizeof(big) - (size_t)n - 4000, "\"}");
        add_raw(h, big, strlen(big), "ECOMMAND", k, NULL, "a 4000-byte command name");
    }
    /* Unknown fields. */
    add_id(h, id, "EARG", "bogus", "'cmd':'ping','bogus':1}");
    add_id(h, id, "EARG", "verbose", "'cmd':'stats','verbose':true}");
    add_id(h, id, "EARG", "Port", "'cmd':'listen','Port':0}");
    add_id(h, id, "EARG", "handler.bogus",
           "'cmd':'listen','port':0,'handler':{'type':'echo','bogus':1}}");
    /* Missing or contradictory arguments, bad values. */
    add_id(h, id, "EARG", "server", "'cmd':'server'}");
    add_id(h, id, "EARG", "socket", "'cmd':'destroy'}");
    add_id(h, id, "EARG", "thread", "'cmd':'move','socket':1}");
    add_id(h, id, "EARG", NULL, "'cmd':'listen'}");
    add_id(h, id, "EARG", NULL, "'cmd':'listen','port':0,'path':'/tmp/x'}");
    add_id(h, id, "EARG", "handler.type", "'cmd':'listen','port':0,'handler':{'type':'nope'}}");
    add_id(h, id, "EARG", "host", "'cmd':'listen','port':0,'host':'not a host!'}");
    add_id(h, id, "EARG", "balance", "'cmd':'listen','port':0,'balance':'random'}");
    add_id(h, id, "EARG", "events", "'cmd':'watch','events':['bogus']}");
    add_id(h, id, "EARG", "role", "'cmd':'sockets','role':'nobody'}");
    /* Negative and huge numbers. */
    static const struct {
        const char *args, *code, *field;
    } nums[] = {
        {"'cmd':'listen','port':-1", "EARG", "port"},
        {"'cmd':'listen','port':70000", "EARG", "port"},
        {"'cmd':'listen','port':9223372036854775807", "EARG", "port"},
        {"'cmd':'listen','port':-9223372036854775808", "EARG", "port"},
        {"'cmd':'listen','port':0,'backlog':0", "EARG", "backlog"},
        {"'cmd':'listen','port':0,'backlog':-1", "EARG", "backlog"},
        {"'cmd':'listen','port':0,'backlog':2147483648", "EARG", "backlog"},
        {"'cmd':'listen','port':0,'timeout':-1", "EARG", "timeout"},
        {"'cmd':'listen','port':0,'timeout':4294967296", "EARG", "timeout"},
        {"'cmd':'listen','port':0,'maxConnections':-5", "EARG", "maxConnections"},
        {"'cmd':'listen','port':0,'maxConnections':4294967296", "EARG", "maxConnections"},
        {"'cmd':'listen','port':0,'keepAlive':-1", "EARG", "keepAlive"},
        {"'cmd':'listen','fd':-1", "EARG", "fd"},
        {"'cmd':'listen','fd':2147483648", "EARG", "fd"},
        {"'cmd':'sockets','limit':-1", "EARG", "limit"},
        {"'cmd':'sockets','olderThanMs':-1", "EARG", "olderThanMs"},
        {"'cmd':'sockets','idleMoreThanMs':-9223372036854775808", "EARG", "idleMoreThanMs"},
        {"'cmd':'sockets','limit':9223372036854775807", NULL, NULL},
        {"'cmd':'destroy','socket':-1", "EARG", "socket"},
        {"'cmd':'destroy','socket':0", "EARG", "socket"},
        {"'cmd':'destroy','socket':-0", "EARG", "socket"},
        {"'cmd':'destroy','socket':9223372036854775807", "ENOSOCKET", NULL},
        {"'cmd':'move','socket':9223372036854775807,'thread':-1", "EARG", "thread"},
        {"'cmd':'move','socket':9223372036854775807,'thread':2", "EARG", "thread"},
        {"'cmd':'move','socket':9223372036854775807,'thread':9223372036854775807", "EARG",
         "thread"},
        {"'cmd':'move','socket':9223372036854775807,'thread':1", "ENOSOCKET", NULL},
        {"'cmd':'set','server':'echo','timeout':-1", "EARG", "timeout"},
        {"'cmd':'set','server':'echo','timeout':9223372036854775807", "EARG", "timeout"},
        {"'cmd':'set','server':'echo','maxConnections':-1", "EARG", "maxConnections"},
        {"'cmd':'set','server':'echo','maxConnections':9223372036854775807", "EARG",
         "maxConnections"},
        {"'cmd':'server','server':-1", "ENOSERVER", NULL},
        {"'cmd':'server','server':9223372036854775807", "ENOSERVER", NULL},
        {"'cmd':'getConnections','server':-9223372036854775808", "ENOSERVER", NULL},
        {"'cmd':'close','server':9223372036854775807", "ENOSERVER", NULL},
        {"'cmd':'rebalance','server':'nope'", "ENOSERVER", NULL},
        {"'cmd':'shutdown','timeoutMs':-1", "EARG", "timeoutMs"},
        {"'cmd':'shutdown','timeoutMs':-9223372036854775808", "EARG", "timeoutMs"},
    };
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        char body[256];
        snprintf(body, sizeof(body), "%s}", nums[i].args);
        add_id(h, id, nums[i].code, nums[i].field, body);
    }
}

/* Sends each line and checks its reply on one connection, which must stay open. */
static void run_hostiles(np_client_t *c, const hostiles_t *h, int *by_code_parse, int *total)
{
    for (size_t i = 0; i < h->n; i++) {
        const hostile_t *x = &h->v[i];
        int rc = np_client_send_raw(c, x->line, x->len);
        ck_assert_msg(rc == 0, "sending hostile #%zu (%s): %s", i, x->what, strerror(-rc));
        rc = np_client_send_raw(c, "\n", 1);
        ck_assert_msg(rc == 0, "sending hostile #%zu (%s): %s", i, x->what, strerror(-rc));
        const char *why = NULL;
        char *line = np_client_read_line(c, NP_TIMEOUT_MS, &why);
        ck_assert_msg(line != NULL, "no reply to hostile #%zu (%s): %s", i, x->what, why);
        json_error_t err;
        json_t *r = json_loads(line, JSON_REJECT_DUPLICATES, &err);
        ck_assert_msg(json_is_object(r), "reply to #%zu (%s) is not an object: %.300s", i, x->what,
                      line);
        free(line);
        if (x->code) {
            ck_assert_msg(json_is_false(json_object_get(r, "ok")), "#%zu (%.80s): want %s, got %s",
                          i, x->what, x->code, np_json_str(r));
            json_t *e = json_object_get(r, "error");
            const char *code = json_string_value(json_object_get(e, "code"));
            const char *msg = json_string_value(json_object_get(e, "message"));
            ck_assert_msg(code && strcmp(code, x->code) == 0, "#%zu (%.80s): want %s, got %s", i,
                          x->what, x->code, np_json_str(r));
            ck_assert_msg(msg && *msg, "#%zu: no message: %s", i, np_json_str(r));
            if (x->in_message)
                ck_assert_msg(strstr(msg, x->in_message) != NULL,
                              "#%zu (%.80s): the message should name \"%s\": %s", i, x->what,
                              x->in_message, msg);
            if (strcmp(code, "EPARSE") == 0)
                (*by_code_parse)++;
        } else {
            ck_assert_msg(json_is_true(json_object_get(r, "ok")), "#%zu (%.80s): want ok, got %s",
                          i, x->what, np_json_str(r));
        }
        json_t *id = json_object_get(r, "id");
        if (x->id > 0)
            ck_assert_msg(json_integer_value(id) == x->id, "#%zu (%.80s): id %s not echoed: %s", i,
                          x->what, np_json_str(id), np_json_str(r));
        else
            ck_assert_msg(json_is_null(id), "#%zu (%.80s): id should be null: %s", i, x->what,
                          np_json_str(r));
        json_decref(r);
        (*total)++;
    }
}

/* A 2 MiB line: ETOOBIG, then the connection closes. */
static void check_etoobig(netd_proc_t *np)
{
    np_client_t *c = np_connect(np);
    size_t n = 2 * MiB;
    char *line = malloc(n + 1);
    ck_assert(line != NULL);
    int k = snprintf(line, n, "{\"cmd\":\"ping\",\"id\":\"");
    memset(line + k, 'x', n - (size_t)k - 3);
    memcpy(line + n - 3, "\"}\n", 3);
    int rc = np_client_send_raw(c, line, n);
    free(line);
    ck_assert_msg(rc == 0 || rc == -EPIPE || rc == -ECONNRESET, "2 MiB line: send: %s",
                  strerror(-rc));
    json_t *r = np_client_recv(c, NP_TIMEOUT_MS);
    np_expect_error(r, "ETOOBIG", NULL);
    ck_assert(json_is_null(json_object_get(r, "id")));
    ck_assert_msg(np_client_wait_closed(c, NP_TIMEOUT_MS), "ETOOBIG: the connection stays open");
    np_client_close(c);
}

/* 200 control clients at once on top of np->ctl: maxClients (64) are served, every other
 * one gets one EBUSY and EOF. */
#define CTL_CLIENTS 200

static void check_too_many_clients(netd_proc_t *np, int *ok_out, int *busy_out)
{
    np_client_t *c[CTL_CLIENTS];
    for (int i = 0; i < CTL_CLIENTS; i++)
        c[i] = np_connect(np);
    int ok = 0, busy = 0;
    for (int i = 0; i < CTL_CLIENTS; i++) {
        int rc = np_client_send_raw(c[i], "{\"cmd\":\"ping\"}\n", 15);
        ck_assert_msg(rc == 0 || rc == -EPIPE || rc == -ECONNRESET, "client %d: send: %s", i,
                      strerror(-rc));
    }
    for (int i = 0; i < CTL_CLIENTS; i++) {
        json_t *r = np_client_recv(c[i], NP_TIMEOUT_MS);
        if (json_is_true(json_object_get(r, "ok"))) {
            ok++;
            continue;
        }
        np_expect_error(r, "EBUSY", NULL);
        busy++;
        /* Exactly one reply, then EOF: the ping sent after the refusal is never answered. */
        const char *why = NULL;
        char *more = np_client_read_line(c[i], NP_TIMEOUT_MS, &why);
        ck_assert_msg(more == NULL &&
                          (strcmp(why, "eof") == 0 || strcmp(why, strerror(ECONNRESET)) == 0),
                      "client %d: after EBUSY: %s (want EOF)", i, more ? more : why);
    }
    ck_assert_msg(ok == NETD_DEFAULT_MAX_CLIENTS - 1 && busy == CTL_CLIENTS - ok,
                  "200 extra clients: %d served, %d EBUSY (want %d served: 64 with np->ctl)", ok,
                  busy, NETD_DEFAULT_MAX_CLIENTS - 1);
    for (int i = 0; i < CTL_CLIENTS; i++)
        np_client_close(c[i]);
    *ok_out = ok;
    *busy_out = busy;
}

/* A peer of another uid: connect as nobody; one EPERM reply, then EOF. Returns 0 when it
 * could not be tried (not root). */
static int check_eperm(netd_proc_t *np)
{
    if (geteuid() != 0)
        return 0;
    /* The socket is 0666: only its owner's uid check stands in the way. */
    char buf[561];
    int last = np_request_as_nobody(np, "{\"cmd\":\"stats\"}\n", buf, sizeof(buf));
    /* One line, EPERM, then EOF (no error on the last read), and the stats never
     * answered. */
    ck_assert_msg(strstr(buf, "\"EPERM\"") && last == 0 && !strstr(buf, "\"ok\":true") &&
                      count_substr(buf, "\n") == 1,
                  "a peer of another uid got: %s (the last read: %s)", buf,
                  last > 0 ? strerror(last) : "none or EOF");
    return 1;
}

START_TEST(test_control_abuse)
{
    pat_init();
    raise_nofile(4096);
    netd_proc_t *np = np_start(
        Q("{'control':{'mode':'0666'},'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"),
        2);
    streamer_t st = {.port = np_server_port(np, "echo")};
    atomic_init(&st.stop, false);
    ck_assert(pthread_create(&st.th, NULL, streamer_main, &st) == 0);

    int ok = 0, busy = 0;
    check_too_many_clients(np, &ok, &busy);

    hostiles_t h = {0};
    json_int_t id = 1000;
    int generated = add_wrong_types(&h, &id);
    add_hostiles(&h, &id);
    np_client_t *c = np_connect(np);
    int parse_errors = 0, total = 0;
    run_hostiles(c, &h, &parse_errors, &total);
    ck_assert_int_ge(total, 60);
    /* The connection survived all of it, in order. */
    np_ok(np_client_call(c, "{s:s, s:i}", "cmd", "ping", "id", 1));
    /* A burst of them in one write, answered in order. */
    {
        size_t cap = 0;
        for (size_t i = 0; i < h.n; i++)
            cap += h.v[i].len + 1;
        char *burst = malloc(cap);
        ck_assert(burst != NULL);
        size_t len = 0;
        for (size_t i = 0; i < h.n; i++) {
            memcpy(burst + len, h.v[i].line, h.v[i].len);
            len += h.v[i].len;
            burst[len++] = '\n';
        }
        ck_assert_int_eq(np_client_send_raw(c, burst, len), 0);
        free(burst);
        for (size_t i = 0; i < h.n; i++) {
            json_t *r = np_client_recv(c, NP_TIMEOUT_MS);
            const char *code = json_string_value(
                json_object_get(json_object_get(r, "error"), "code"));
            ck_assert_msg(h.v[i].code ? code && strcmp(code, h.v[i].code) == 0 : code == NULL,
                          "burst #%zu (%.80s): want %s, got %s", i, h.v[i].what,
                          h.v[i].code ? h.v[i].code : "ok", np_json_str(r));
        }
    }
    np_client_close(c);

    check_etoobig(np);
    int eperm = check_eperm(np);

    /* Nothing else was affected: the daemon, its server, its data. */
    np_ok(np_call(np, "{s:s}", "cmd", "ping"));
    json_t *srv = np_server_obj(np, "echo");
    ck_assert_str_eq(json_string_value(json_object_get(srv, "state")), "listening");
    ck_assert_int_eq(
        json_array_size(json_object_get(np_ok(np_call(np, "{s:s}", "cmd", "servers")), "servers")),
        1);
    np_pause_ms(200);
    atomic_store(&st.stop, true);
    pthread_join(st.th, NULL);
    ck_assert_msg(st.error[0] == '\0', "the data-plane client during the abuse: %s", st.error);
    ck_assert_msg(st.bytes > 0 && st.sum_sent == st.sum_recv,
                  "data-plane checksum: %llu bytes, sent %016llx, received %016llx",
                  (unsigned long long)st.bytes, (unsigned long long)st.sum_sent,
                  (unsigned long long)st.sum_recv);
    note("control abuse: %d hostile lines (%d generated from the command table: every argument "
         "of every command with wrong types; %d EPARSE) each with its code, on one connection "
         "and again as one burst; 200 extra clients: %d served, %d EBUSY+EOF; 2 MiB line: "
         "ETOOBIG+EOF; other uid: %s; data plane meanwhile: %llu bytes in %llu round trips, "
         "checksum %016llx both ways",
         total, generated, parse_errors, ok, busy, eperm ? "EPERM+EOF" : "not tried (not root)",
         (unsigned long long)st.bytes, (unsigned long long)st.rounds,
         (unsigned long long)st.sum_sent);
    for (size_t i = 0; i < h.n; i++)
        free(h.v[i].line);
    free(h.v);
}
END_TEST

/* Every line gets a reply, even when the parser's own error text would quote half of a
 * UTF-8 character: jansson's "invalid escape near '"\<first byte>'" cuts a multi-byte
 * character after a backslash, and a reply built from that text is not valid JSON text.
 * Found by tests/fuzz/fuzz_control. These lines are valid UTF-8 themselves. */
START_TEST(test_eparse_reply_always_sent)
{
    static const char *const lines[] = {
        "{\"cmd\":\"ping\",\"id\":\"\\\xc3\xa9\"}",         /* "\é" */
        "{\"cmd\":\"ping\",\"id\":\"\\\xe2\x82\xac\"}",     /* "\€" */
        "{\"cmd\":\"ping\",\"id\":\"\\\xf0\x9f\x98\x80\"}", /* "\😀" */
        "{\"\\\xc3\xa9\":1}",                               /* a key "\é" */
        "{\"cmd\":\"ping\",\"id\":\"\\u\xc3\xa9\"}",        /* "\ué" */
        "{\"cmd\":\"watch\",\"events\\\xc6\xa4\xdd\xdd\xd3\xdd\xdd\xdc\"\",\"\"]}", /* the fuzzer's */
    };
    netd_proc_t *np = np_start("{}", 2);
    np_client_t *c = np_connect(np);
    int missing = 0;
    char first[160] = "";
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        ck_assert_int_eq(np_client_send_raw(c, lines[i], strlen(lines[i])), 0);
        ck_assert_int_eq(np_client_send_raw(c, "\n", 1), 0);
        /* A ping right behind it: its reply must not be the first thing that comes. */
        np_client_send(c, json_pack("{s:s, s:i}", "cmd", "ping", "id", (int)i + 1));
        json_t *r = np_client_recv(c, NP_TIMEOUT_MS);
        if (json_is_true(json_object_get(r, "ok"))) {
            /* No reply to the bad line: this is the ping's. */
            ck_assert_int_eq(json_integer_value(json_object_get(r, "id")), (int)i + 1);
            if (!missing++)
                snprintf(first, sizeof(first), "%s", lines[i]);
            continue;
        }
        np_expect_error(r, "EPARSE", NULL);
        np_ok(np_client_recv(c, NP_TIMEOUT_MS));
    }
    ck_assert_msg(missing == 0,
                  "%d of %zu malformed lines got no reply at all (the next request's reply came "
                  "first), e.g. %s",
                  missing, sizeof(lines) / sizeof(lines[0]), first);
}
END_TEST

/* ================================================================== config abuse */

static char *long_path(int n)
{
    static char buf[512];
    snprintf(buf, sizeof(buf), "/tmp/");
    memset(buf + 5, 'p', (size_t)n);
    buf[5 + n] = '\0';
    return buf;
}

typedef struct bad_config {
    const char *text; /* ' for " */
    const char *field;
} bad_config_t;

static const bad_config_t bad_configs[] = {
    {"{'servers':[{'port':0", "netd.json:1:"},
    {"{'threads':'4'}", "threads"},
    {"{'threads':-1}", "threads"},
    {"{'threads':1.5}", "threads"},
    {"{'shutdownTimeoutMs':'soon'}", "shutdownTimeoutMs"},
    {"{'control':'x'}", "control"},
    {"{'control':{'maxClients':0}}", "control.maxClients"},
    {"{'control':{'mode':'0999'}}", "control.mode"},
    {"{'control':{'idleTimeout':-5}}", "control.idleTimeout"},
    {"{'limits':{'stallMs':true}}", "limits.stallMs"},
    {"{'limits':{'maxBufferedBytes':0}}", "limits.maxBufferedBytes"},
    {"{'limits':{'highWaterMark':'1M'}}", "limits.highWaterMark"},
    {"{'servers':{}}", "servers"},
    {"{'servers':[1]}", "servers[0]"},
    {"{'servers':[{'port':'80'}]}", "servers[0].port"},
    {"{'servers':[{'port':70000}]}", "servers[0].port"},
    {"{'servers':[{'port':-1}]}", "servers[0].port"},
    {"{'servers':[{'port':0,'handler':{'type':'nope'}}]}", "servers[0].handler.type"},
    {"{'servers':[{'port':0,'handler':'echo'}]}", "servers[0].handler"},
    {"{'servers':[{'port':0,'handler':{'type':'proxy','port':70000}}]}", "servers[0].handler.port"},
    {"{'servers':[{'port':0,'name':'a'},{'port':0,'name':'a'}]}", "servers[1].name"},
    {"{'servers':[{'port':0,'allowHalfOpen':'yes'}]}", "servers[0].allowHalfOpen"},
    {"{'servers':[{'port':0,'host':'bad host!'}]}", "servers[0].host"},
    {"{'servers':[{'port':0,'maxConnections':-1}]}", "servers[0].maxConnections"},
    {"{'bogus':1}", "bogus"},
    {"{'threads':1,'threads':2}", "threads"},
    {"[]", "top level"},
    {"", "netd.json"},
};

START_TEST(test_config_check)
{
    int n = (int)(sizeof(bad_configs) / sizeof(bad_configs[0]));
    for (int i = 0; i < n; i++) {
        char *out = NULL;
        int st = np_check_config(Q("%s", bad_configs[i].text), &out);
        ck_assert_msg(st == 2, "--check on %s: exit %d (want 2): %s", bad_configs[i].text, st, out);
        ck_assert_msg(strstr(out, bad_configs[i].field) != NULL,
                      "--check on %s: the message does not name %s: %s", bad_configs[i].text,
                      bad_configs[i].field, out);
        free(out);
    }
    /* Paths too long for a unix socket, once resolved. */
    const char *longs[] = {"{'servers':[{'path':'%s'}]}", "{'control':{'path':'%s'}}",
                           "{'servers':[{'port':0,'handler':{'type':'proxy','path':'%s'}}]}"};
    const char *fields[] = {"servers[0].path", "control.path", "servers[0].handler.path"};
    for (int i = 0; i < 3; i++) {
        char *out = NULL;
        int st = np_check_config(Q(longs[i], long_path(110)), &out);
        ck_assert_msg(st == 2 && strstr(out, fields[i]), "--check, path too long: exit %d: %s", st,
                      out);
        free(out);
        n++;
    }
    /* A relative path that is short but too long once resolved against the file's dir. */
    char *out = NULL;
    int st = np_check_config(Q("{'servers':[{'path':'%s'}]}", long_path(100) + 5), &out);
    ck_assert_msg(st == 2 && strstr(out, "servers[0].path") && strstr(out, "resolved"),
                  "--check, relative path too long once resolved: exit %d: %s", st, out);
    free(out);
    n++;
    /* And a valid one passes, so exit 2 above is about the fields. */
    ck_assert_int_eq(np_check_config(Q(CFG_ECHO), NULL), 0);
    note("config --check: %d broken files, each exit 2 naming the field", n);
}
END_TEST

static const char *const bad_reloads[] = {
    "{'servers':[{'name':'a','port':0,'host':'127.0.0.1'}",
    "{'servers':[{'name':'a','port':'0','host':'127.0.0.1'}]}",
    "{'servers':[{'name':'a','port':0,'host':'127.0.0.1','handler':{'type':'nope'}}]}",
    "{'servers':[{'name':'a','port':70000,'host':'127.0.0.1'}]}",
    "{'servers':[{'name':'a','path':'%s'}]}",
    "{'servers':[],'threads':'x'}",
};

START_TEST(test_config_sighup)
{
    netd_proc_t *np = np_start(Q("{'servers':[{'name':'a','port':0,'host':'127.0.0.1'}]}"), 2);
    json_t *before = json_deep_copy(np_server_obj(np, "a"));
    int port = np_server_port(np, "a");
    int fd = np_tcp_connect(port);
    ck_assert(echo_ok(fd, "before"));
    int n = (int)(sizeof(bad_reloads) / sizeof(bad_reloads[0]));
    for (int i = 0; i < n; i++) {
        np_write_config(np, Q(bad_reloads[i], long_path(110)));
        np_signal(np, SIGHUP);
        WAIT_FOR(count_substr(np_stderr(np), "reload refused") == i + 1, 5000,
                 "no 'reload refused' line for %s; stderr:\n%s", bad_reloads[i], np_stderr(np));
        json_t *srvs = json_object_get(np_ok(np_call(np, "{s:s}", "cmd", "servers")), "servers");
        ck_assert_msg(json_array_size(srvs) == 1, "after a refused reload: %s", np_json_str(srvs));
        json_t *now = json_array_get(srvs, 0);
        ck_assert_int_eq(json_integer_value(json_object_get(now, "id")),
                         json_integer_value(json_object_get(before, "id")));
        ck_assert_msg(
            json_equal(json_object_get(now, "address"), json_object_get(before, "address")) &&
                json_equal(json_object_get(now, "handler"), json_object_get(before, "handler")),
            "the server changed: %s, was %s", np_json_str(now), np_json_str(before));
        ck_assert_str_eq(json_string_value(json_object_get(now, "state")), "listening");
        ck_assert_msg(echo_ok(fd, "kept"), "the connection broke on a refused reload");
    }
    /* The last message names the field too. */
    const char *err = np_stderr(np);
    ck_assert_msg(strstr(err, "servers[0].port") && strstr(err, "servers[0].handler.type") &&
                      strstr(err, "servers[0].path") && strstr(err, "threads"),
                  "reload refusals do not name the fields:\n%s", err);
    /* A good file is applied, so the refusals above were about the files. */
    np_write_config(np, Q("{'servers':[{'name':'a','port':0,'host':'127.0.0.1'},"
                          "{'name':'b','port':0,'host':'127.0.0.1'}]}"));
    np_signal(np, SIGHUP);
    WAIT_FOR(json_array_size(
                 json_object_get(np_ok(np_call(np, "{s:s}", "cmd", "servers")), "servers")) == 2,
             5000, "a valid reload was not applied");
    ck_assert_int_eq(server_int(np, "a", "id"), json_integer_value(json_object_get(before, "id")));
    ck_assert(echo_ok(fd, "after"));
    close(fd);
    json_decref(before);
    note("config SIGHUP: %d broken files refused, server and its connection kept; a valid one "
         "applied",
         n);
}
END_TEST

/* ================================================================== soak */

typedef struct soak_worker {
    pthread_t th;
    int port, index;
    uint64_t deadline_ms, start_ms;
    unsigned rate; /* connects per second for this thread */
    uint64_t connects, normal, half, resets, abrupt, bytes, errors;
    char error[256];
} soak_worker_t;

static void soak_error(soak_worker_t *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void soak_error(soak_worker_t *w, const char *fmt, ...)
{
    w->errors++;
    if (w->error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->error, sizeof(w->error), fmt, ap);
    va_end(ap);
}

static void *soak_main(void *arg)
{
    soak_worker_t *w = arg;
    uint8_t *buf = malloc(PAT_SPAN);
    uint64_t seed = 0x1234567ULL + (uint64_t)w->index * 7919;
    while (buf) {
        uint64_t now = np_now_ms();
        if (now >= w->deadline_ms)
            break;
        if (w->connects * 1000 >= (uint64_t)w->rate * (now - w->start_ms)) {
            np_pause_ms(1);
            continue;
        }
        int fd = np_tcp_try_connect(w->port);
        if (fd < 0) {
            soak_error(w, "connect: %s", strerror(-fd));
            continue;
        }
        w->connects++;
        uint64_t r = rng_next(&seed);
        /* Mostly small messages, some up to 64 KiB. */
        size_t size = r % 4 == 0 ? 1 + (size_t)((r >> 8) % PAT_SPAN)
                                 : 1 + (size_t)((r >> 8) % 2048);
        uint64_t off = rng_next(&seed);
        const uint8_t *src = pat_at(off);
        int action = (int)((r >> 32) % 10);
        if (action < 6) { /* a full round trip, then a normal close */
            if (send_all(fd, src, size) != 0) {
                soak_error(w, "send: %s", strerror(errno));
            } else {
                size_t got = np_recv_exact(fd, buf, size);
                if (got != size || memcmp(buf, src, size) != 0)
                    soak_error(w, "echo: %zu of %zu bytes%s", got, size,
                               got == size ? ", content differs" : "");
                w->bytes += got;
            }
            w->normal++;
            close(fd);
        } else if (action == 6) { /* half-close: everything back, then netd's FIN */
            if (send_all(fd, src, size) != 0 || shutdown(fd, SHUT_WR) != 0) {
                soak_error(w, "send/shutdown: %s", strerror(errno));
            } else {
                size_t got = np_recv_exact(fd, buf, size);
                if (got != size || memcmp(buf, src, size) != 0)
                    soak_error(w, "half-close echo: %zu of %zu bytes", got, size);
                else if (np_expect_eof(fd) != 1)
                    soak_error(w, "no EOF after a half-close");
                w->bytes += got;
            }
            w->half++;
            close(fd);
        } else if (action < 9) { /* reset mid-write */
            ssize_t k = send(fd, src, size, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)k;
            np_rst_close(fd);
            w->resets++;
        } else { /* read a little, then close with the rest unread */
            if (send_all(fd, src, size) != 0) {
                soak_error(w, "send: %s", strerror(errno));
            } else {
                size_t part = size / 2 + 1;
                size_t got = np_recv_exact(fd, buf, part);
                if (got != part || memcmp(buf, src, part) != 0)
                    soak_error(w, "partial echo: %zu of %zu bytes", got, part);
            }
            w->abrupt++;
            close(fd);
        }
    }
    free(buf);
    return NULL;
}

#define SOAK_THREADS 4

START_TEST(test_soak)
{
    pat_init();
    raise_nofile(4096);
    const char *env = getenv("NETD_SOAK_SECONDS");
    int secs = env && *env ? atoi(env) : (SANITIZED ? 5 : 20);
    if (secs < 2)
        secs = 2;
    netd_proc_t *np = np_start(Q(CFG_ECHO), SOAK_THREADS);
    int port = np_server_port(np, "echo");
    int base_fds = np_fd_count(np->pid);

    soak_worker_t w[SOAK_THREADS];
    memset(w, 0, sizeof(w));
    uint64_t start = np_now_ms();
    for (int i = 0; i < SOAK_THREADS; i++) {
        w[i].port = port;
        w[i].index = i;
        w[i].start_ms = start;
        w[i].deadline_ms = start + (uint64_t)secs * 1000;
        w[i].rate = 1000 / SOAK_THREADS;
        ck_assert(pthread_create(&w[i].th, NULL, soak_main, &w[i]) == 0);
    }
    /* Resident memory: where it settles after a warm-up, then how far it moves. */
    uint64_t warm = (uint64_t)secs * 1000 / 4;
    if (warm < 2000)
        warm = 2000;
    long settled = 0, lo = 0, hi = 0, first = np_rss_kb(np->pid);
    while (np_now_ms() < start + (uint64_t)secs * 1000) {
        np_pause_ms(250);
        long kb = np_rss_kb(np->pid);
        uint64_t t = np_now_ms() - start;
        if (t < warm) {
            settled = kb; /* the last sample of the warm-up */
            continue;
        }
        if (!lo || kb < lo)
            lo = kb;
        if (kb > hi)
            hi = kb;
    }
    uint64_t total = 0, errors = 0, normal = 0, half = 0, resets = 0, abrupt = 0, bytes = 0;
    const char *first_error = NULL;
    for (int i = 0; i < SOAK_THREADS; i++) {
        pthread_join(w[i].th, NULL);
        total += w[i].connects;
        errors += w[i].errors;
        normal += w[i].normal;
        half += w[i].half;
        resets += w[i].resets;
        abrupt += w[i].abrupt;
        bytes += w[i].bytes;
        if (w[i].error[0] && !first_error)
            first_error = w[i].error;
    }
    double elapsed = (double)(np_now_ms() - start) / 1000.0;
    long end_kb = np_rss_kb(np->pid);
    WAIT_FOR(stat_of(np, "connections") == 0, 10000, "connections stay at %lld after the soak",
             stat_of(np, "connections"));
    WAIT_FOR(np_fd_count(np->pid) <= base_fds, 10000,
             "netd holds %d descriptors after the soak, %d before", np_fd_count(np->pid), base_fds);
    int end_fds = np_fd_count(np->pid);
    long long accepted = stat_of(np, "acceptedTotal");
    note("soak: %.1f s, %d threads (netd -t %d), %llu connects (%.0f/s): %llu round trips, %llu "
         "half-closes, %llu resets, %llu abrupt closes, %.1f MiB echoed; %llu errors; netd RSS "
         "%ld kB at start, settled %ld kB, then %ld..%ld kB (%+.1f%%), %ld kB at the end; fds "
         "%d -> %d; acceptedTotal %lld",
         elapsed, SOAK_THREADS, SOAK_THREADS, (unsigned long long)total, (double)total / elapsed,
         (unsigned long long)normal, (unsigned long long)half, (unsigned long long)resets,
         (unsigned long long)abrupt, (double)bytes / MiB, (unsigned long long)errors, first,
         settled, lo, hi, settled ? 100.0 * (double)(hi - settled) / (double)settled : 0.0, end_kb,
         base_fds, end_fds, accepted);
    ck_assert_msg(errors == 0, "%llu unexpected errors during the soak; first: %s",
                  (unsigned long long)errors, first_error);
    ck_assert_msg(accepted >= (long long)total, "netd accepted %lld of %llu connects", accepted,
                  (unsigned long long)total);
    /* Not a speed check (the benchmark does those): only that the churn really ran. */
    ck_assert_msg((double)total >= 0.1 * 1000.0 * elapsed || SANITIZED,
                  "only %.0f connects/s: the churn stalled", (double)total / elapsed);
#if !SANITIZED
    ck_assert_msg(hi <= settled + settled / 10,
                  "netd's RSS went from %ld kB (settled) to %ld kB: more than 10%%", settled, hi);
    ck_assert_msg(lo >= settled - settled / 10,
                  "netd's RSS went from %ld kB (settled) down to %ld kB: more than 10%%", settled,
                  lo);
#endif
    np_ok(np_call(np, "{s:s}", "cmd", "ping"));
}
END_TEST

/* ================================================================== suite */

static Suite *fault_suite(void)
{
    Suite *s = suite_create("fault");
    TCase *tc = np_tcase(s, "fd_exhaustion", 60);
    tcase_add_test(tc, test_fd_exhaustion);

    tc = np_tcase(s, "slow_readers", SANITIZED ? 240 : 120);
    tcase_add_test(tc, test_slow_reader_echo);
    tcase_add_test(tc, test_slow_reader_proxy);
    tcase_add_test(tc, test_slow_reader_destroyed);

    tc = np_tcase(s, "resets", 90);
    tcase_add_test(tc, test_resets_half_closes);

    tc = np_tcase(s, "drain", 90);
    tcase_add_test(tc, test_drain);
    tcase_add_test(tc, test_second_sigterm);

    tc = np_tcase(s, "control_abuse", 90);
    tcase_add_test(tc, test_control_abuse);
    tcase_add_test(tc, test_eparse_reply_always_sent);

    tc = np_tcase(s, "config_abuse", 60);
    tcase_add_test(tc, test_config_check);
    tcase_add_test(tc, test_config_sighup);

    const char *env = getenv("NETD_SOAK_SECONDS");
    int soak = env && *env ? atoi(env) : (SANITIZED ? 5 : 20);
    tc = np_tcase(s, "soak", soak + 60);
    tcase_add_test(tc, test_soak);
    return s;
}

int main(void)
{
    raise_nofile(4096);
    return np_run_suite(fault_suite());
}
