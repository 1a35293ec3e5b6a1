/* SPDX-License-Identifier: MIT */
/*
 * netload: a closed-loop load generator for echo-style servers, over TCP or a unix socket.
 *
 *   netload MODE TARGET [-c CONNS] [-s SIZE] [-t THREADS] [-d SECONDS] [-w WARMUP_S]
 *                       [--skip-greeting N]
 *
 * MODE    pingpong  CONNS connections each send SIZE bytes and wait for SIZE bytes back,
 *                   over and over: requests/s, MB/s, latency percentiles.
 *         connect   CONNS slots each connect, echo 1 byte, close (RST), over and over:
 *                   connections/s and the latency of the whole cycle.
 *         idle      open CONNS connections, check each with a 1-byte echo, print a `ready`
 *                   line, hold them for SECONDS, then exit: how many succeeded and stayed.
 * TARGET  host:port, [v6addr]:port, or a unix socket path (anything containing '/').
 *
 * It deliberately uses no libnetd: the thing under test must not also be the thing measuring.
 * Each thread owns an epoll set, a share of the connections and a latency histogram, so the
 * hot path takes no locks and allocates nothing; results are merged once at the end.
 *
 * The last line on stdout is machine-readable (key=value pairs), e.g.
 *   mode=pingpong conns=100 size=64 reqs_per_s=... mb_per_s=... p50_us=... p99_us=...
 *   max_us=... total_reqs=... errors=N
 * MB is 10^6 bytes of payload echoed back (one direction).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------ options */

enum mode { MODE_PINGPONG, MODE_CONNECT, MODE_IDLE };

struct options {
    enum mode mode;
    const char *mode_name;
    const char *target;
    int conns;
    size_t size;
    int threads;
    double duration_s;
    double warmup_s;
    size_t skip_greeting; /* bytes a server sends first on each connection, to discard */
};

static struct options opt = {
    .conns = 100, .size = 64, .threads = 1, .duration_s = 5, .warmup_s = 1, .skip_greeting = 0};

/* Where to connect: resolved once, copied into every connect(). */
static struct sockaddr_storage target_addr;
static socklen_t target_len;

/* ------------------------------------------------------------------------------ clock */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------------ histogram */

/*
 * A log-linear latency histogram in nanoseconds: values below 2*SUB are exact, above that
 * each power of two is split into SUB buckets, so the error is under 1/SUB (1.6 %) at any
 * scale, memory is fixed and recording is a few instructions.
 */
#define HIST_SUB_BITS 6
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_EXACT (HIST_SUB << 1) /* values below this get a bucket each */
#define HIST_BUCKETS (64u * HIST_SUB)

struct histo {
    uint64_t count[HIST_BUCKETS];
    uint64_t n;
    uint64_t max;
};

static unsigned hist_index(uint64_t v)
{
    if (v < HIST_EXACT)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - HIST_SUB_BITS;
    return (shift + 1) * HIST_SUB + (unsigned)(v >> shift) - HIST_SUB;
}

/* The middle of a bucket's range: the best single guess for any value recorded in it. */
static uint64_t hist_value(unsigned idx)
{
    if (idx < HIST_EXACT)
        return idx;
    unsigned shift = idx / HIST_SUB - 1;
    uint64_t low = (uint64_t)(idx - (shift + 1) * HIST_SUB + HIST_SUB) << shift;
    return low + ((1ull << shift) >> 1);
}

static void hist_record(struct histo *h, uint64_t v)
{
    h->count[hist_index(v)]++;
    h->n++;
    if (v > h->max)
        h->max = v;
}

static void hist_merge(struct histo *into, const struct histo *from)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->count[i] += from->count[i];
    into->n += from->n;
    if (from->max > into->max)
        into->max = from->max;
}

/* Value at quantile q (0..1); never above the exact maximum. */
static uint64_t hist_quantile(const struct histo *h, double q)
{
    if (h->n == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->n);
    if (rank >= h->n)
        rank = h->n - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->count[i];
        if (seen > rank) {
            uint64_t v = hist_value(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

/* ------------------------------------------------------------------------------ connections */

enum slot_state {
    ST_BACKOFF,    /* failed; reopened once retry_at passes (pingpong, connect) */
    ST_CONNECTING, /* non-blocking connect in progress: waiting for writability */
    ST_GREETING,   /* discarding the server's greeting */
    ST_ACTIVE,     /* a request is in flight */
    ST_HELD,       /* idle mode: checked and held */
    ST_DEAD,       /* idle mode: failed for good */
};

struct slot {
    int fd;
    enum slot_state state;
    bool want_out;     /* EPOLLOUT currently registered */
    size_t greet_left; /* greeting bytes still to discard */
    size_t req_size;   /* bytes in the current request */
    size_t sent, recvd;
    uint64_t t_start;  /* request (or, in connect mode, connection) start */
    uint64_t retry_at; /* ST_BACKOFF: when to reopen */
};

struct worker {
    pthread_t tid;
    int id;
    int epfd;
    struct slot *slots;
    int nslots;
    int next_open; /* idle mode: next slot not yet opened */
    int inflight;  /* idle mode: slots between open and checked */
    int backoff;   /* slots waiting in ST_BACKOFF */
    const char *sendbuf;
    char *recvbuf;
    size_t recvcap;
    struct histo hist; /* latencies of requests completed inside the window */
    uint64_t done_in_window;
    uint64_t done_total;
    uint64_t errors;
    uint64_t held_ok;
    uint64_t dropped;
};

/* The run's timeline, set by main before any worker starts. */
static uint64_t t_measure_from, t_measure_to;
/* Idle mode: workers report setup done here; main then sets hold_until and releases them. */
static pthread_barrier_t idle_barrier;
static uint64_t t_hold_until;
static uint64_t t_setup_deadline;

/* Idle mode connects at most this many at once (across all threads), so the server's
 * accept backlog never overflows: an overflowed SYN is retried a second later by the
 * kernel, which would measure TCP's retransmit timer rather than the server. */
#define IDLE_INFLIGHT_TOTAL 256
#define BACKOFF_NS 1000000u /* 1 ms before reopening a failed slot */

/* ------------------------------------------------------------------------------ sockets */

static void epoll_set(struct worker *w, struct slot *s, bool add, bool want_out)
{
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = s};
    if (epoll_ctl(w->epfd, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, s->fd, &ev) < 0) {
        perror("netload: epoll_ctl");
        exit(1);
    }
    s->want_out = want_out;
}

/* Client-side socket options: no Nagle delay on our requests, and an abortive close
 * (RST) so a high connection rate does not fill the port range with TIME_WAIT. */
static void tune_socket(int fd)
{
    if (target_addr.ss_family == AF_UNIX)
        return;
    int one = 1;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

static void slot_close(struct slot *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

static void slot_fail(struct worker *w, struct slot *s);
static void slot_ready(struct worker *w, struct slot *s);

/* Start a non-blocking connect; the slot continues in slot_ready or slot_fail. */
static void slot_open(struct worker *w, struct slot *s)
{
    s->fd = socket(target_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        slot_fail(w, s);
        return;
    }
    tune_socket(s->fd);
    s->t_start = now_ns();
    s->greet_left = opt.skip_greeting;
    if (connect(s->fd, (struct sockaddr *)&target_addr, target_len) == 0) {
        epoll_set(w, s, true, false);
        slot_ready(w, s);
    } else if (errno == EINPROGRESS) {
        s->state = ST_CONNECTING;
        epoll_set(w, s, true, true);
    } else {
        slot_fail(w, s);
    }
}

/* A connection broke. Pingpong and connect keep the load constant by reopening after a
 * short pause (a pause, so a dead server costs an error count, not a spinning CPU); idle
 * mode counts the loss and moves on. */
static void slot_fail(struct worker *w, struct slot *s)
{
    w->errors++;
    slot_close(s);
    if (opt.mode == MODE_IDLE) {
        if (s->state != ST_HELD)
            w->inflight--;
        s->state = ST_DEAD;
        return;
    }
    s->state = ST_BACKOFF;
    s->retry_at = now_ns() + BACKOFF_NS;
    w->backoff++;
}

/* ------------------------------------------------------------------------------ requests */

/* Push as much of the current request as the socket takes; wait for writability for the
 * rest. Returns false if the connection failed. */
static bool slot_write(struct worker *w, struct slot *s)
{
    while (s->sent < s->req_size) {
        ssize_t n = send(s->fd, w->sendbuf + s->sent, s->req_size - s->sent, MSG_NOSIGNAL);
        if (n > 0) {
            s->sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!s->want_out)
                epoll_set(w, s, false, true);
            return true;
        }
        return false;
    }
    if (s->want_out)
        epoll_set(w, s, false, false);
    return true;
}

static bool request_start(struct worker *w, struct slot *s, uint64_t now)
{
    s->state = ST_ACTIVE;
    s->req_size = opt.mode == MODE_PINGPONG ? opt.size : 1;
    s->sent = s->recvd = 0;
    if (opt.mode == MODE_PINGPONG)
        s->t_start = now; /* connect mode times the whole cycle, from slot_open */
    return slot_write(w, s);
}

/* The connection is up (and, if asked, the greeting is gone): send the first request. */
static void slot_ready(struct worker *w, struct slot *s)
{
    if (s->greet_left > 0) {
        s->state = ST_GREETING;
        if (s->want_out)
            epoll_set(w, s, false, false);
        return;
    }
    if (!request_start(w, s, now_ns()))
        slot_fail(w, s);
}

static bool in_window(uint64_t t)
{
    return t >= t_measure_from && t < t_measure_to;
}

/* The whole echo is back. Returns false if the slot must not be read any further now. */
static bool request_done(struct worker *w, struct slot *s)
{
    uint64_t now = now_ns();
    w->done_total++;
    if (in_window(now)) {
        w->done_in_window++;
        hist_record(&w->hist, now - s->t_start);
    }
    switch (opt.mode) {
    case MODE_PINGPONG:
        if (!request_start(w, s, now))
            slot_fail(w, s);
        return false; /* level-triggered epoll reports the next reply when it comes */
    case MODE_CONNECT:
        slot_close(s);
        slot_open(w, s);
        return false;
    case MODE_IDLE:
        s->state = ST_HELD;
        w->held_ok++;
        w->inflight--;
        return false;
    }
    return false;
}

/* Account for n bytes that arrived: first the greeting, then the echo. Returns false on a
 * protocol error (more bytes back than we sent). */
static bool consume(struct worker *w, struct slot *s, size_t n, bool *complete)
{
    if (s->state == ST_GREETING) {
        size_t g = n < s->greet_left ? n : s->greet_left;
        s->greet_left -= g;
        n -= g;
        if (s->greet_left > 0)
            return true;
        if (!request_start(w, s, now_ns()))
            return false;
    }
    s->recvd += n;
    if (s->recvd > s->sent)
        return false;
    *complete = s->recvd == s->req_size;
    return true;
}

static void slot_readable(struct worker *w, struct slot *s)
{
    for (;;) {
        /* While discarding a greeting, read no further than its end, so the first echo
         * bytes are never mistaken for greeting. */
        size_t want = s->state == ST_GREETING && s->greet_left < w->recvcap ? s->greet_left
                                                                            : w->recvcap;
        ssize_t n = recv(s->fd, w->recvbuf, want, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) { /* EOF or reset: the server gave up on us */
            slot_fail(w, s);
            return;
        }
        bool complete = false;
        if (!consume(w, s, (size_t)n, &complete)) {
            slot_fail(w, s);
            return;
        }
        if (complete && !request_done(w, s))
            return;
        /* A short read means the socket is most likely drained: skip the recv that would
         * only say EAGAIN, level-triggered epoll tells us if more is there. */
        if ((size_t)n < want)
            return;
    }
}

static void slot_connected(struct worker *w, struct slot *s)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
        slot_fail(w, s);
        return;
    }
    slot_ready(w, s);
}

static void slot_event(struct worker *w, struct slot *s, uint32_t events)
{
    switch (s->state) {
    case ST_CONNECTING:
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            slot_connected(w, s);
        return;
    case ST_HELD:
        /* A held connection has nothing to say: any event means the server dropped it. */
        w->dropped++;
        w->held_ok--;
        slot_close(s);
        s->state = ST_DEAD;
        return;
    case ST_GREETING:
    case ST_ACTIVE:
        if ((events & EPOLLOUT) && s->state == ST_ACTIVE && !slot_write(w, s)) {
            slot_fail(w, s);
            return;
        }
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            slot_readable(w, s);
        return;
    case ST_BACKOFF:
    case ST_DEAD:
        return;
    }
}

/* ------------------------------------------------------------------------------ worker loops */

static void reopen_due(struct worker *w, uint64_t now)
{
    for (int i = 0; i < w->nslots && w->backoff > 0; i++) {
        struct slot *s = &w->slots[i];
        if (s->state == ST_BACKOFF && s->retry_at <= now) {
            w->backoff--;
            slot_open(w, s);
        }
    }
}

/* Wait for events until `until`, dispatching them; returns false once `until` has passed. */
static bool poll_once(struct worker *w, uint64_t until)
{
    struct epoll_event evs[256];
    uint64_t now = now_ns();
    if (now >= until)
        return false;
    uint64_t left_ms = (until - now) / 1000000u + 1;
    int timeout = w->backoff > 0 ? 1 : (int)(left_ms > 100 ? 100 : left_ms);
    int n = epoll_wait(w->epfd, evs, 256, timeout);
    if (n < 0 && errno != EINTR) {
        perror("netload: epoll_wait");
        exit(1);
    }
    for (int i = 0; i < n; i++)
        slot_event(w, evs[i].data.ptr, evs[i].events);
    if (w->backoff > 0)
        reopen_due(w, now_ns());
    return true;
}

static void run_closed_loop(struct worker *w)
{
    for (int i = 0; i < w->nslots; i++)
        slot_open(w, &w->slots[i]);
    while (poll_once(w, t_measure_to)) {
    }
}

/* Idle mode setup: open this worker's share a batch at a time, each checked by one echo. */
static void run_idle_setup(struct worker *w, int max_inflight)
{
    for (;;) {
        while (w->inflight < max_inflight && w->next_open < w->nslots) {
            w->inflight++;
            slot_open(w, &w->slots[w->next_open++]);
        }
        if (w->inflight == 0 && w->next_open == w->nslots)
            return;
        if (!poll_once(w, t_setup_deadline))
            break;
    }
    /* Deadline passed: whatever is still connecting counts as failed. */
    for (int i = 0; i < w->nslots; i++) {
        struct slot *s = &w->slots[i];
        if (i >= w->next_open)
            w->errors++; /* never even tried */
        else if (s->state != ST_HELD && s->state != ST_DEAD)
            slot_fail(w, s);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    if (opt.mode != MODE_IDLE) {
        run_closed_loop(w);
        return NULL;
    }
    int max_inflight = IDLE_INFLIGHT_TOTAL / opt.threads;
    run_idle_setup(w, max_inflight > 0 ? max_inflight : 1);
    pthread_barrier_wait(&idle_barrier); /* setup done */
    pthread_barrier_wait(&idle_barrier); /* main has set t_hold_until */
    while (poll_once(w, t_hold_until)) {
    }
    return NULL;
}

/* ------------------------------------------------------------------------------ setup */

static void usage(void)
{
    fprintf(stderr, "usage: netload pingpong|connect|idle HOST:PORT|PATH [-c CONNS] [-s SIZE]\n"
                    "               [-t THREADS] [-d SECONDS] [-w WARMUP_S] [--skip-greeting N]\n");
    exit(2);
}

static long parse_long(const char *s, long min, long max, const char *what)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, "netload: bad %s '%s' (%ld..%ld)\n", what, s, min, max);
        exit(2);
    }
    return v;
}

static double parse_seconds(const char *s, const char *what)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || v < 0 || v > 86400) {
        fprintf(stderr, "netload: bad %s '%s'\n", what, s);
        exit(2);
    }
    return v;
}

static void parse_args(int argc, char **argv)
{
    if (argc < 3)
        usage();
    opt.mode_name = argv[1];
    if (strcmp(argv[1], "pingpong") == 0)
        opt.mode = MODE_PINGPONG;
    else if (strcmp(argv[1], "connect") == 0)
        opt.mode = MODE_CONNECT;
    else if (strcmp(argv[1], "idle") == 0)
        opt.mode = MODE_IDLE;
    else
        usage();
    opt.target = argv[2];
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (strcmp(a, "-c") == 0)
            opt.conns = (int)parse_long(v, 1, 1000000, "connection count");
        else if (strcmp(a, "-s") == 0)
            opt.size = (size_t)parse_long(v, 1, 64L << 20, "size");
        else if (strcmp(a, "-t") == 0)
            opt.threads = (int)parse_long(v, 1, 256, "thread count");
        else if (strcmp(a, "-d") == 0)
            opt.duration_s = parse_seconds(v, "duration");
        else if (strcmp(a, "-w") == 0)
            opt.warmup_s = parse_seconds(v, "warmup");
        else if (strcmp(a, "--skip-greeting") == 0)
            opt.skip_greeting = (size_t)parse_long(v, 0, 1 << 20, "greeting length");
        else
            usage();
    }
    if (opt.threads > opt.conns)
        opt.threads = opt.conns;
}

static void resolve_target(void)
{
    const char *t = opt.target;
    if (strchr(t, '/')) {
        struct sockaddr_un *un = (struct sockaddr_un *)&target_addr;
        if (strlen(t) >= sizeof un->sun_path) {
            fprintf(stderr, "netload: unix path too long: %s\n", t);
            exit(2);
        }
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, t);
        target_len = sizeof *un;
        return;
    }
    char host[256];
    const char *colon = strrchr(t, ':');
    if (!colon || colon == t || (size_t)(colon - t) >= sizeof host) {
        fprintf(stderr, "netload: target must be HOST:PORT or a path: %s\n", t);
        exit(2);
    }
    memcpy(host, t, (size_t)(colon - t));
    host[colon - t] = '\0';
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') { /* [::1]:port */
        h[strlen(h) - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(h, colon + 1, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "netload: %s: %s\n", t, gai_strerror(rc));
        exit(2);
    }
    memcpy(&target_addr, res->ai_addr, res->ai_addrlen);
    target_len = res->ai_addrlen;
    freeaddrinfo(res);
}

/* Every connection is a descriptor; raise the soft limit as far as allowed and refuse a
 * run that would not fit rather than report EMFILE as the server's errors. */
static void check_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    rlim_t need = (rlim_t)opt.conns + 16u + 2u * (rlim_t)opt.threads;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        fprintf(stderr, "netload: %d connections need %lu descriptors, limit is %lu\n", opt.conns,
                (unsigned long)need, (unsigned long)rl.rlim_cur);
        exit(2);
    }
}

static void worker_init(struct worker *w, int id, int nslots, const char *sendbuf)
{
    memset(w, 0, sizeof *w);
    w->id = id;
    w->nslots = nslots;
    w->sendbuf = sendbuf;
    w->recvcap = opt.size > 65536 ? opt.size : 65536;
    w->recvbuf = malloc(w->recvcap);
    w->slots = calloc((size_t)nslots, sizeof *w->slots);
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!w->recvbuf || !w->slots || w->epfd < 0) {
        perror("netload: worker setup");
        exit(1);
    }
    for (int i = 0; i < nslots; i++)
        w->slots[i].fd = -1;
}

static void worker_release(struct worker *w)
{
    for (int i = 0; i < w->nslots; i++)
        slot_close(&w->slots[i]);
    close(w->epfd);
    free(w->slots);
    free(w->recvbuf);
}

/* ------------------------------------------------------------------------------ report */

struct totals {
    struct histo hist;
    uint64_t done_in_window, done_total, errors, held_ok, dropped;
};

static void sum_workers(struct worker *ws, struct totals *t)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < opt.threads; i++) {
        hist_merge(&t->hist, &ws[i].hist);
        t->done_in_window += ws[i].done_in_window;
        t->done_total += ws[i].done_total;
        t->errors += ws[i].errors;
        t->held_ok += ws[i].held_ok;
        t->dropped += ws[i].dropped;
    }
}

static void report_latency(const struct histo *h)
{
    printf(" p50_us=%.1f p99_us=%.1f max_us=%.1f", hist_quantile(h, 0.50) / 1e3,
           hist_quantile(h, 0.99) / 1e3, h->max / 1e3);
}

static void report(struct worker *ws, double setup_s)
{
    struct totals t;
    sum_workers(ws, &t);
    double secs = (double)(t_measure_to - t_measure_from) / 1e9;
    printf("mode=%s conns=%d", opt.mode_name, opt.conns);
    switch (opt.mode) {
    case MODE_PINGPONG:
        printf(" size=%zu reqs_per_s=%.0f mb_per_s=%.2f", opt.size, t.done_in_window / secs,
               (double)t.done_in_window * (double)opt.size / secs / 1e6);
        report_latency(&t.hist);
        printf(" total_reqs=%llu", (unsigned long long)t.done_total);
        break;
    case MODE_CONNECT:
        printf(" size=1 conns_per_s=%.0f", t.done_in_window / secs);
        report_latency(&t.hist);
        printf(" total_conns=%llu", (unsigned long long)t.done_total);
        break;
    case MODE_IDLE:
        printf(" ok=%llu dropped=%llu setup_s=%.2f", (unsigned long long)t.held_ok,
               (unsigned long long)t.dropped, setup_s);
        break;
    }
    printf(" errors=%llu\n", (unsigned long long)t.errors);
}

/* Idle mode, between setup and hold: the line a driver waits for before sampling RSS. */
static void report_ready(struct worker *ws, double setup_s)
{
    struct totals t;
    sum_workers(ws, &t);
    printf("ready ok=%llu errors=%llu setup_s=%.2f\n", (unsigned long long)t.held_ok,
           (unsigned long long)t.errors, setup_s);
    fflush(stdout);
}

/* ------------------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    resolve_target();
    check_fd_limit();
    signal(SIGPIPE, SIG_IGN);

    /* One read-only request pattern shared by all threads: requests are never built. */
    char *sendbuf = malloc(opt.size);
    if (!sendbuf) {
        perror("netload");
        return 1;
    }
    for (size_t i = 0; i < opt.size; i++)
        sendbuf[i] = (char)('a' + i % 26);

    struct worker *ws = calloc((size_t)opt.threads, sizeof *ws);
    if (!ws) {
        perror("netload");
        free(sendbuf);
        return 1;
    }
    for (int i = 0; i < opt.threads; i++)
        worker_init(&ws[i], i, opt.conns / opt.threads + (i < opt.conns % opt.threads), sendbuf);

    uint64_t t0 = now_ns();
    t_measure_from = t0 + (uint64_t)(opt.warmup_s * 1e9);
    t_measure_to = t_measure_from + (uint64_t)(opt.duration_s * 1e9);
    t_setup_deadline = t0 + 60ull * 1000000000u;
    if (opt.mode == MODE_IDLE)
        pthread_barrier_init(&idle_barrier, NULL, (unsigned)opt.threads + 1);

    for (int i = 0; i < opt.threads; i++)
        if (pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]) != 0) {
            fprintf(stderr, "netload: cannot start thread %d\n", i);
            exit(1); /* the other threads are mid-run: no orderly way back */
        }

    double setup_s = 0;
    if (opt.mode == MODE_IDLE) {
        pthread_barrier_wait(&idle_barrier);
        uint64_t ready = now_ns();
        setup_s = (double)(ready - t0) / 1e9;
        /* The hold is the window too, so the report's arithmetic stays uniform. */
        t_hold_until = ready + (uint64_t)(opt.duration_s * 1e9);
        t_measure_from = ready;
        t_measure_to = t_hold_until;
        report_ready(ws, setup_s);
        pthread_barrier_wait(&idle_barrier);
    }
    for (int i = 0; i < opt.threads; i++)
        pthread_join(ws[i].tid, NULL);

    report(ws, setup_s);
    /* Idle mode exits 3 when not every connection made it through, so a script notices. */
    int rc = 0;
    if (opt.mode == MODE_IDLE) {
        struct totals t;
        sum_workers(ws, &t);
        rc = t.held_ok == (uint64_t)opt.conns ? 0 : 3;
    }
    for (int i = 0; i < opt.threads; i++)
        worker_release(&ws[i]);
    free(ws);
    free(sendbuf);
    return rc;
}
