/* SPDX-License-Identifier: MIT */
/*
 * The live upgrade end to end: a running netd under load hands everything to a second
 * netd binary, and the clients notice nothing: no reset, no refused connect, every byte
 * intact and in order, the same socket ids and counts, every control call answered, the
 * old process exits 0. And each failure (the binary does not start, exits, speaks another
 * protocol, is killed halfway, is never ready) leaves the old netd serving everything.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"
#include "netd_proc.h"

#define Q np_q
#define CFG                                                                                        \
    "{'servers':[{'name':'echo','port':0,'host':'127.0.0.1'},"                                     \
    "{'name':'echo2','port':0,'host':'127.0.0.1'},"                                                \
    "{'name':'up','path':'up.sock'},"                                                              \
    "{'name':'px','port':0,'host':'127.0.0.1','handler':{'type':'proxy','path':'up.sock'}}]}"

/* ------------------------------------------------------------------ the "new" binary */

/* A second copy of netd (the real binary behind libtool's wrapper), as an operator
 * installs a new version next to the running one. */
static const char *new_binary(netd_proc_t *np)
{
    static char path[PATH_MAX + 32];
    char real[PATH_MAX + 32];
    const char *top = getenv("top_builddir") ? getenv("top_builddir") : ".";
    snprintf(real, sizeof(real), "%s/src/daemon/.libs/netd", top);
    if (access(real, X_OK) != 0)
        snprintf(real, sizeof(real), "%s/src/daemon/netd", top);
    snprintf(path, sizeof(path), "%s/netd-new", np->dir);
    int in = open(real, O_RDONLY), out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    ck_assert(in >= 0 && out >= 0);
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof(buf))) > 0)
        ck_assert(write(out, buf, (size_t)n) == n);
    close(in);
    close(out);
    return path;
}

/* ------------------------------------------------------------------ load */

/* Every connection streams bytes of its own pattern and checks the echo byte for byte. */
static unsigned char pat(uint64_t conn, uint64_t off)
{
    uint64_t x = off * 0x9E3779B97F4A7C15ull + conn * 0xBF58476D1CE4E5B9ull;
    return (unsigned char)((x >> 29) ^ (x >> 7));
}

typedef struct lconn {
    int fd;
    uint64_t sent, rcvd;
    uint64_t since; /* ms: when it last moved while something was in flight */
    uint64_t index;
} lconn_t;

typedef struct load {
    lconn_t *c;
    int n;
    atomic_bool stop;
    atomic_int errors;       /* a wrong byte */
    atomic_int ended;        /* a reset or an EOF nobody asked for */
    atomic_ullong bytes;     /* checked */
    atomic_ullong max_stall; /* ms */
    char first_error[256];
    pthread_t th;
    int ep;
} load_t;

#define WINDOW (32 * 1024)

static void load_note(load_t *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void load_note(load_t *l, const char *fmt, ...)
{
    if (l->first_error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->first_error, sizeof(l->first_error), fmt, ap);
    va_end(ap);
}

static void *load_main(void *arg)
{
    load_t *l = arg;
    unsigned char buf[16384];
    struct epoll_event evs[256];
    while (!atomic_load(&l->stop)) {
        int n = epoll_wait(l->ep, evs, 256, 10);
        uint64_t now = np_now_ms();
        for (int i = 0; i < n; i++) {
            lconn_t *c = &l->c[evs[i].data.u32];
            if (c->fd < 0)
                continue;
            if (evs[i].events & EPOLLIN) {
                ssize_t k = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (k > 0) {
                    for (ssize_t j = 0; j < k; j++) {
                        if (buf[j] != pat(c->index, c->rcvd + (uint64_t)j)) {
                            atomic_fetch_add(&l->errors, 1);
                            load_note(l, "conn %llu: byte %llu differs",
                                      (unsigned long long)c->index,
                                      (unsigned long long)(c->rcvd + (uint64_t)j));
                            break;
                        }
                    }
                    c->rcvd += (uint64_t)k;
                    c->since = now;
                    atomic_fetch_add(&l->bytes, (unsigned long long)k);
                } else if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                    atomic_fetch_add(&l->ended, 1);
                    load_note(l, "conn %llu: %s after %llu bytes", (unsigned long long)c->index,
                              k == 0 ? "EOF" : strerror(errno), (unsigned long long)c->rcvd);
                    epoll_ctl(l->ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    c->fd = -1;
                    continue;
                }
            }
            if ((evs[i].events & EPOLLOUT) && c->sent - c->rcvd < WINDOW) {
                size_t want = 1 + (size_t)(pat(c->index, c->sent) % 64) * 256;
                if (want > WINDOW - (c->sent - c->rcvd))
                    want = WINDOW - (c->sent - c->rcvd);
                for (size_t j = 0; j < want; j++)
                    buf[j] = pat(c->index, c->sent + j);
                ssize_t k = send(c->fd, buf, want, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (k > 0) {
                    if (c->sent == c->rcvd)
                        c->since = now;
                    c->sent += (uint64_t)k;
                }
            }
        }
        for (int i = 0; i < l->n; i++) {
            lconn_t *c = &l->c[i];
            if (c->fd >= 0 && c->sent > c->rcvd && now - c->since > atomic_load(&l->max_stall))
                atomic_store(&l->max_stall, now - c->since);
        }
    }
    return NULL;
}

static void load_start(load_t *l, int echo_port, int nechoes, int proxy_port, int nproxies)
{
    memset(l, 0, sizeof(*l));
    l->n = nechoes + nproxies;
    l->c = calloc((size_t)l->n, sizeof(*l->c));
    l->ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < l->n; i++) {
        lconn_t *c = &l->c[i];
        c->fd = np_tcp_connect(i < nechoes ? echo_port : proxy_port);
        c->index = (uint64_t)i;
        c->since = np_now_ms();
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
        ck_assert(epoll_ctl(l->ep, EPOLL_CTL_ADD, c->fd, &ev) == 0);
    }
    ck_assert(pthread_create(&l->th, NULL, load_main, l) == 0);
}

static void load_stop(load_t *l)
{
    atomic_store(&l->stop, true);
    pthread_join(l->th, NULL);
    for (int i = 0; i < l->n; i++)
        if (l->c[i].fd >= 0)
            close(l->c[i].fd);
    close(l->ep);
    free(l->c);
}

/* ------------------------------------------------------------------ connects and calls */

typedef struct prober {
    int port;
    const char *sock;
    atomic_bool stop;
    atomic_int ok, failed, calls, calls_failed;
    char why[256], call_why[320];
    pthread_t conn_th, ctl_th;
} prober_t;

static void *connector_main(void *arg)
{
    prober_t *p = arg;
    while (!atomic_load(&p->stop)) {
        int fd = np_tcp_try_connect(p->port);
        char b = 0;
        if (fd >= 0 && send(fd, "x", 1, MSG_NOSIGNAL) == 1 && recv(fd, &b, 1, 0) == 1 && b == 'x') {
            atomic_fetch_add(&p->ok, 1);
        } else {
            if (atomic_fetch_add(&p->failed, 1) == 0)
                snprintf(p->why, sizeof(p->why), "connect: %s", fd < 0 ? strerror(-fd) : "no echo");
        }
        if (fd >= 0)
            close(fd);
    }
    return NULL;
}

/* One call on a new connection, with plain syscalls (the harness's clients belong to the
 * test's thread): true when it was answered ok within 10 s; otherwise why, in `why`. */
static bool call_once(const char *path, char *why, size_t whylen)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    const char *req = "{\"cmd\":\"getConnections\",\"server\":\"echo\"}\n";
    char buf[512];
    size_t n = 0;
    uint64_t t0 = np_now_ms();
    buf[0] = '\0';
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        snprintf(why, whylen, "connect: %s", strerror(errno));
        close(fd);
        return false;
    }
    if (send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t)strlen(req)) {
        snprintf(why, whylen, "send: %s", strerror(errno));
        close(fd);
        return false;
    }
    while (n < sizeof(buf) - 1 && !memchr(buf, '\n', n)) {
        ssize_t k = recv(fd, buf + n, sizeof(buf) - 1 - n, 0);
        if (k <= 0) {
            buf[n] = '\0';
            snprintf(why, whylen, "%s after %llu ms, having read \"%.200s\"",
                     k == 0 ? "EOF" : strerror(errno), (unsigned long long)(np_now_ms() - t0), buf);
            close(fd);
            return false;
        }
        n += (size_t)k;
    }
    buf[n] = '\0';
    close(fd);
    if (strstr(buf, "\"ok\":true"))
        return true;
    snprintf(why, whylen, "reply: %.200s", buf);
    return false;
}

/* A control call every few ms, each on a new connection, as a script would. */
static void *caller_main(void *arg)
{
    prober_t *p = arg;
    while (!atomic_load(&p->stop)) {
        char why[256];
        bool ok = call_once(p->sock, why, sizeof(why));
        atomic_fetch_add(&p->calls, 1);
        if (!ok && atomic_fetch_add(&p->calls_failed, 1) == 0)
            snprintf(p->call_why, sizeof(p->call_why), "%s", why);
        np_pause_ms(5);
    }
    return NULL;
}

static void probes_start(prober_t *p, int port, const char *sock)
{
    memset(p, 0, sizeof(*p));
    p->port = port;
    p->sock = sock;
    ck_assert(pthread_create(&p->conn_th, NULL, connector_main, p) == 0);
    ck_assert(pthread_create(&p->ctl_th, NULL, caller_main, p) == 0);
}

static void probes_stop(prober_t *p)
{
    atomic_store(&p->stop, true);
    pthread_join(p->conn_th, NULL);
    pthread_join(p->ctl_th, NULL);
}

/* The ids of the live client sockets, sorted (sockets lists them in id order). */
static size_t socket_ids(netd_proc_t *np, json_int_t *ids, size_t cap)
{
    json_t *r = np_ok(np_call(np, "{s:s, s:i}", "cmd", "sockets", "limit", 100000));
    size_t i, n = 0;
    json_t *k;
    json_array_foreach(np_jarr(r, "sockets"), i, k)
        if (n < cap)
            ids[n++] = np_jint(k, "id");
    return n;
}

static void wait_sockets(netd_proc_t *np, json_int_t want)
{
    uint64_t deadline = np_now_ms() + th_scale(10000);
    json_int_t got;
    while ((got = np_jint(np_ok(np_call(np, "{s:s, s:s}", "cmd", "sockets", "role", "all")),
                          "total")) < want &&
           np_now_ms() < deadline)
        np_pause_ms(20);
    ck_assert_int_ge(got, want);
}

/* Waits until the streams have carried more bytes than they can hold in flight (so the
 * process serving now echoed some of them) and the connector and the caller have each
 * been answered again: the traffic runs through whichever process serves at the call. */
static void wait_progress(load_t *l, prober_t *p)
{
    unsigned long long bytes = atomic_load(&l->bytes) + (unsigned long long)l->n * WINDOW;
    int ok = atomic_load(&p->ok), calls = atomic_load(&p->calls);
    uint64_t deadline = np_now_ms() + th_scale(10000);
    while ((atomic_load(&l->bytes) <= bytes || atomic_load(&p->ok) <= ok ||
            atomic_load(&p->calls) <= calls) &&
           np_now_ms() < deadline)
        np_pause_ms(10);
    ck_assert_msg(atomic_load(&l->bytes) > bytes, "the streams stalled: %llu bytes, want > %llu",
                  (unsigned long long)atomic_load(&l->bytes), bytes);
    ck_assert_int_gt(atomic_load(&p->ok), ok);
    ck_assert_int_gt(atomic_load(&p->calls), calls);
}

/* ------------------------------------------------------------------ the upgrade */

START_TEST(test_upgrade_under_load)
{
    ck_assert(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    netd_proc_t *old = np_start(Q(CFG), 2);
    const char *bin = new_binary(old);
    int echo = np_server_port(old, "echo"), px = np_server_port(old, "px");
    int nechoes = NP_SANITIZED ? 200 : 1000, nproxies = NP_SANITIZED ? 50 : 200;
    load_t l;
    load_start(&l, echo, nechoes, px, nproxies);
    /* Clients' sockets plus both legs of every proxy pair. */
    wait_sockets(old, nechoes + 2 * nproxies);
    prober_t p;
    /* New connections come and go on a server of their own, so the streams' count is
     * exact. */
    probes_start(&p, np_server_port(old, "echo2"), old->sock);
    wait_progress(&l, &p);

    json_int_t before_conns[2] = {np_get_connections(old, "echo"), np_get_connections(old, "px")};
    static json_int_t ids_before[4096], ids_after[4096];
    size_t nids = socket_ids(old, ids_before, 4096);
    json_t *r = np_ok(
        np_call(old, "{s:s, s:s, s:i}", "cmd", "upgrade", "exec", bin, "timeoutMs", 30000));
    pid_t newpid = (pid_t)np_jint(r, "pid");
    ck_assert_int_ne(newpid, old->pid);
    ck_assert_int_eq(np_jint(r, "previousPid"), old->pid);
    ck_assert_int_eq(np_jint(r, "servers"), 4);
    ck_assert_int_ge(np_jint(r, "sockets"), nechoes + 2 * nproxies);
    fprintf(stderr, "upgrade: %lld sockets in %lld ms\n", (long long)np_jint(r, "sockets"),
            (long long)np_jint(r, "ms"));
    ck_assert_int_eq(np_wait_exit(old, 10000), 0); /* the old process exits 0 */
    netd_proc_t *nu = np_adopt(old, newpid);
    nu->ctl = np_client_open(nu->sock);
    ck_assert_ptr_nonnull(nu->ctl);
    wait_progress(&l, &p); /* and the streams go on through the new process */

    ck_assert_int_eq(np_get_connections(nu, "echo"), before_conns[0]);
    ck_assert_int_eq(np_get_connections(nu, "px"), before_conns[1]);
    /* The long-lived sockets kept their ids (the connector's come and go: compare those
     * present before that are still there, which must be all of the streams'). */
    size_t nafter = socket_ids(nu, ids_after, 4096);
    size_t kept = 0;
    for (size_t i = 0, j = 0; i < nids && j < nafter;) {
        if (ids_before[i] == ids_after[j]) {
            kept++;
            i++;
            j++;
        } else if (ids_before[i] < ids_after[j]) {
            i++;
        } else {
            j++;
        }
    }
    ck_assert_int_ge(kept, (size_t)(nechoes + nproxies));
    probes_stop(&p);
    load_stop(&l);
    fprintf(stderr,
            "upgrade: %llu bytes checked, longest stall %llu ms, %d connects (%d failed), %d calls "
            "(%d failed)\n",
            (unsigned long long)atomic_load(&l.bytes),
            (unsigned long long)atomic_load(&l.max_stall), atomic_load(&p.ok),
            atomic_load(&p.failed), atomic_load(&p.calls), atomic_load(&p.calls_failed));
    ck_assert_msg(atomic_load(&l.errors) == 0, "wrong bytes: %s", l.first_error);
    ck_assert_msg(atomic_load(&l.ended) == 0, "connections ended: %s", l.first_error);
    ck_assert_msg(atomic_load(&p.failed) == 0, "connects failed: %s", p.why);
    ck_assert_msg(atomic_load(&p.calls_failed) == 0, "control calls failed: %s", p.call_why);
    ck_assert_int_gt(atomic_load(&p.ok), 0);
}
END_TEST

/* SIGUSR2 does the same without a control request; a second upgrade from the new
 * process works too, and socket ids go on where they were. */
START_TEST(test_upgrade_by_signal_twice)
{
    ck_assert(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    netd_proc_t *a = np_start(Q(CFG), 2);
    int echo = np_server_port(a, "echo");
    int fd = np_tcp_connect(echo);
    np_echo_check(fd, "one");
    json_int_t id = np_socket_id_of(a, "echo", fd);
    np_signal(a, SIGUSR2);
    ck_assert_int_eq(np_wait_exit(a, 10000), 0);
    np_echo_check(fd, "two");
    /* Who serves now: the pid in ping. */
    np_client_t *c = np_client_open(a->sock);
    ck_assert_ptr_nonnull(c);
    pid_t bpid = (pid_t)np_jint(np_ok(np_ccall(c, "{'cmd':'ping'}")), "pid");
    np_client_close(c);
    ck_assert_int_ne(bpid, a->pid);
    netd_proc_t *b = np_adopt(a, bpid);
    b->ctl = np_client_open(b->sock);
    ck_assert_int_eq(np_socket_id_of(b, "echo", fd), id);
    json_t *r = np_ok(np_call(b, "{s:s}", "cmd", "upgrade"));
    pid_t cpid = (pid_t)np_jint(r, "pid");
    ck_assert_int_eq(np_wait_exit(b, 10000), 0);
    netd_proc_t *cc = np_adopt(b, cpid);
    cc->ctl = np_client_open(cc->sock);
    np_echo_check(fd, "three");
    ck_assert_int_eq(np_socket_id_of(cc, "echo", fd), id);
    int fd2 = np_tcp_connect(echo);
    np_echo_check(fd2, "new");
    ck_assert_int_gt(np_socket_id_of(cc, "echo", fd2), id); /* ids never reused */
    close(fd);
    close(fd2);
}
END_TEST

/* The daemon's counters go on in the new process (DESIGN 2b): the threads' byte and
 * destroy counts included, not only the servers' (the new threads start from zero). */
START_TEST(test_upgrade_keeps_daemon_totals)
{
    ck_assert(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    netd_proc_t *a = np_start(Q(CFG), 2);
    int fd = np_tcp_connect(np_server_port(a, "echo"));
    np_echo_check(fd, "0123456789");
    np_wait_stat_ge(a, "bytesWrittenTotal", 10);
    /* One connection destroyed for idleness. */
    np_ok(np_qcall(a, "{'cmd':'set','server':'echo2','timeout':50}"));
    int idle = np_tcp_connect(np_server_port(a, "echo2"));
    ck_assert_int_eq(np_expect_eof(idle), 1);
    close(idle);
    json_t *before = np_ok(np_qcall(a, "{'cmd':'stats'}"));
    ck_assert_int_ge(np_jint(before, "idleTimeoutTotal"), 1);
    json_t *r = np_ok(np_qcall(a, "{'cmd':'upgrade'}"));
    ck_assert_int_eq(np_wait_exit(a, 10000), 0);
    netd_proc_t *b = np_adopt(a, (pid_t)np_jint(r, "pid"));
    b->ctl = np_client_open(b->sock);
    json_t *after = np_ok(np_qcall(b, "{'cmd':'stats'}"));
    const char *keys[] = {"acceptedTotal",    "bytesReadTotal",     "bytesWrittenTotal",
                          "idleTimeoutTotal", "slowDestroyedTotal", "upstreamFailedTotal"};
    /* Nothing ran between the two calls but the upgrade: each total is the same. */
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        ck_assert_msg(np_jint(after, keys[i]) == np_jint(before, keys[i]),
                      "%s changed across the upgrade: %s -> %s", keys[i], np_json_str(before),
                      np_json_str(after));
    np_echo_check(fd, "after");
    close(fd);
}
END_TEST

/* The taken-over servers accept as the ones netd opens do: on the first worker
 * (worker_accepts), never on the main loop, which serves the control socket and is not to
 * be woken for every connection. Its wake-ups are its voluntary context switches. */
static long main_thread_wakeups(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/task/%d/status", (int)pid, (int)pid);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    long n = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "voluntary_ctxt_switches: %ld", &n) == 1)
            break;
    fclose(f);
    ck_assert_int_ge(n, 0);
    return n;
}

/* 40 connections one after the other: woken for each, the main loop switches 40 times or
 * more; otherwise only its timers (once a second) wake it. */
static long wakeups_for_connections(netd_proc_t *np)
{
    int port = np_server_port(np, "echo");
    long before = main_thread_wakeups(np->pid);
    for (int i = 0; i < 40; i++) {
        int fd = np_tcp_connect(port);
        np_echo_check(fd, "x");
        close(fd);
    }
    return main_thread_wakeups(np->pid) - before;
}

START_TEST(test_upgrade_workers_still_accept)
{
    ck_assert(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    netd_proc_t *a = np_start(Q(CFG), 2);
    long w = wakeups_for_connections(a);
    ck_assert_msg(w < 20, "before the upgrade, the main loop woke %ld times", w);
    json_t *r = np_ok(np_qcall(a, "{'cmd':'upgrade'}"));
    ck_assert_int_eq(np_wait_exit(a, 10000), 0);
    netd_proc_t *b = np_adopt(a, (pid_t)np_jint(r, "pid"));
    b->ctl = np_client_open(b->sock);
    w = wakeups_for_connections(b);
    ck_assert_msg(w < 20, "after the upgrade, the main loop woke %ld times", w);
}
END_TEST

/* ------------------------------------------------------------------ failures */

/* After a failed upgrade the old netd serves everything: the streams (checked byte for
 * byte meanwhile), new connections, control calls. */
static void check_still_serving(netd_proc_t *np, load_t *l, prober_t *p)
{
    wait_progress(l, p);
    np_ok(np_call(np, "{s:s}", "cmd", "ping"));
    probes_stop(p);
    load_stop(l);
    ck_assert_msg(atomic_load(&l->errors) == 0, "wrong bytes: %s", l->first_error);
    ck_assert_msg(atomic_load(&l->ended) == 0, "connections ended: %s", l->first_error);
    ck_assert_msg(atomic_load(&p->failed) == 0, "connects failed: %s", p->why);
    ck_assert_msg(atomic_load(&p->calls_failed) == 0, "control calls failed: %s", p->call_why);
    ck_assert_int_gt(atomic_load(&p->ok), 0);
}

static void failed_upgrade(const char *test_env, const char *exec, unsigned timeout_ms,
                           const char *in_message)
{
    ck_assert(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    char envvar[64];
    snprintf(envvar, sizeof(envvar), "NETD_TEST_UPGRADE=%s", test_env ? test_env : "");
    const char *env[] = {envvar, NULL};
    np_opts_t o = {.config = Q(CFG), .threads = 2, .env = test_env ? env : NULL};
    netd_proc_t *np = np_start_ex(&o);
    const char *bin = exec ? exec : new_binary(np);
    load_t l;
    load_start(&l, np_server_port(np, "echo"), NP_SANITIZED ? 50 : 200, np_server_port(np, "px"),
               NP_SANITIZED ? 20 : 50);
    prober_t p;
    probes_start(&p, np_server_port(np, "echo"), np->sock);
    wait_progress(&l, &p);
    json_t *r = np_call(np, "{s:s, s:s, s:i}", "cmd", "upgrade", "exec", bin, "timeoutMs",
                        (int)timeout_ms);
    np_expect_error(r, "EUPGRADE", in_message);
    fprintf(stderr, "upgrade refused as it should: %s\n", np_jstr(np_jobj(r, "error"), "message"));
    check_still_serving(np, &l, &p);
    /* Nothing of the failed attempt is left: a good upgrade works afterwards. */
    if (!test_env) {
        r = np_ok(np_call(np, "{s:s, s:s}", "cmd", "upgrade", "exec", new_binary(np)));
        ck_assert_int_eq(np_wait_exit(np, 10000), 0);
        np_adopt(np, (pid_t)np_jint(r, "pid"));
    }
}

START_TEST(test_upgrade_binary_missing)
{
    failed_upgrade(NULL, "/nonexistent/netd", 5000, "cannot run");
}
END_TEST

START_TEST(test_upgrade_binary_exits)
{
    failed_upgrade(NULL, "/bin/false", 5000, "exited with status 1");
}
END_TEST

START_TEST(test_upgrade_other_protocol)
{
    failed_upgrade("proto", NULL, 5000, "protocol 999");
}
END_TEST

START_TEST(test_upgrade_killed_halfway)
{
    failed_upgrade("die-after-batch", NULL, 10000, "went away");
}
END_TEST

START_TEST(test_upgrade_never_ready)
{
    failed_upgrade("no-ready", NULL, 700, "not ready within the timeout");
}
END_TEST

/* A SIGTERM during an upgrade undoes the upgrade, then drains: netd exits 0 and the
 * request gets its EUPGRADE. */
START_TEST(test_sigterm_during_upgrade)
{
    ck_assert(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    const char *env[] = {"NETD_TEST_UPGRADE=no-ready", NULL};
    np_opts_t o = {.config = Q(CFG), .threads = 2, .env = env};
    netd_proc_t *np = np_start_ex(&o);
    np_client_t *c = np_connect(np);
    np_client_send(c, json_pack("{s:s, s:s, s:i, s:i}", "cmd", "upgrade", "exec", new_binary(np),
                                "timeoutMs", 60000, "id", 5));
    /* The new process has started (and, told not to, never says it is ready). */
    np_wait_log(np, "upgrade: started");
    np_signal(np, SIGTERM);
    json_t *r = np_client_recv(c, NP_TIMEOUT_MS);
    ck_assert_int_eq(np_jint(r, "id"), 5);
    np_expect_error(r, "EUPGRADE", "told to stop");
    np_client_close(c);
    ck_assert_int_eq(np_wait_exit(np, 10000), 0);
}
END_TEST

/* ------------------------------------------------------------------ a restart */

/* What a restart keeps (systemd's descriptor store): at the stop, the TCP listener goes
 * to the store (FDSTORE=1, FDNAME=the server's name); a client that connects while no
 * netd runs waits in the kernel's queue; the next netd gets the descriptor back by name
 * and answers it. (Established connections end with the drain: only an upgrade keeps
 * those.) The test plays systemd's part. */
START_TEST(test_restart_keeps_queued_connections)
{
    char dir[PATH_MAX], path[PATH_MAX + 16], env[PATH_MAX + 32];
    np_mkdtemp(dir);
    snprintf(path, sizeof(path), "%s/notify", dir);
    int ns = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    ck_assert(strlen(path) < sizeof(sa.sun_path));
    memcpy(sa.sun_path, path, strlen(path) + 1);
    ck_assert(bind(ns, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    snprintf(env, sizeof(env), "NOTIFY_SOCKET=%s", path);
    const char *envv[] = {env, NULL};
    np_opts_t o = {.config = Q("{'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"),
                   .threads = 2,
                   .env = envv};
    netd_proc_t *a = np_start_ex(&o);
    int port = np_server_port(a, "echo");
    np_signal(a, SIGTERM);
    ck_assert_int_eq(np_wait_exit(a, 10000), 0);
    /* The store's message: FDSTORE=1, FDNAME=echo, and the listener. */
    int stored = -1;
    for (int i = 0; i < 16 && stored < 0; i++) {
        char buf[512];
        union {
            char b[CMSG_SPACE(sizeof(int) * 4)];
            struct cmsghdr align;
        } ctl;
        struct iovec iov = {buf, sizeof(buf) - 1};
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = ctl.b,
                            .msg_controllen = sizeof(ctl.b)};
        ssize_t n = recvmsg(ns, &mh, MSG_DONTWAIT);
        if (n <= 0)
            break;
        buf[n] = '\0';
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        if (strstr(buf, "FDSTORE=1") && strstr(buf, "FDNAME=echo") && cm &&
            cm->cmsg_type == SCM_RIGHTS)
            memcpy(&stored, CMSG_DATA(cm), sizeof(int));
    }
    ck_assert_msg(stored >= 0, "no FDSTORE=1 with the listener at the stop");
    /* No netd runs: a client connects anyway and sends. */
    int fd = np_tcp_connect(port);
    np_send_all(fd, "queued", 6);
    np_opts_t o2 = {.config = Q("{'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"),
                    .threads = 2,
                    .pass_fd = stored,
                    .listen_fds = 1,
                    .listen_fdnames = "echo"};
    netd_proc_t *b = np_start_ex(&o2);
    close(stored);
    char got[8];
    ck_assert_int_eq(np_recv_exact(fd, got, 6), 6);
    ck_assert(memcmp(got, "queued", 6) == 0);
    ck_assert_int_eq(np_server_port(b, "echo"), port);
    close(fd);
    close(ns);
    unlink(path);
    rmdir(dir);
}
END_TEST

/* A socket-activated netd upgrades too: the inherited listener travels with its name, and
 * the new process finds it by name and by number (fd 3) as the old one did, on reload
 * and on listen, while its own descriptors (event loops, threads) stay untouched. */
START_TEST(test_upgrade_socket_activated)
{
    ck_assert(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    int port;
    int lfd = np_tcp_listen(&port);
    const char *cfg = Q("{'servers':[{'name':'web','fd':'web'}]}");
    np_opts_t o = {.config = cfg,
                   .threads = 2,
                   .pass_fd = lfd,
                   .listen_fds = 1,
                   .listen_fdnames = "web"};
    netd_proc_t *a = np_start_ex(&o);
    close(lfd);
    int fd = np_tcp_connect(port);
    np_echo_check(fd, "before");
    json_t *r = np_ok(np_call(a, "{s:s, s:s}", "cmd", "upgrade", "exec", new_binary(a)));
    pid_t bpid = (pid_t)np_jint(r, "pid");
    ck_assert_int_eq(np_wait_exit(a, 10000), 0);
    netd_proc_t *b = np_adopt(a, bpid);
    b->ctl = np_client_open(b->sock);
    ck_assert_ptr_nonnull(b->ctl);
    np_echo_check(fd, "after");
    int fd2 = np_tcp_connect(port);
    np_echo_check(fd2, "new");
    /* The reload keeps the server on the inherited descriptor. */
    np_ok(np_call(b, "{s:s}", "cmd", "reload"));
    np_echo_check(fd2, "reloaded");
    ck_assert_int_eq(np_server_port(b, "web"), port);
    /* Closed, the descriptor stays inherited: listen finds it by number, then by name. */
    close(fd); /* a close answers once its connections have ended */
    close(fd2);
    np_ok(np_call(b, "{s:s, s:s}", "cmd", "close", "server", "web"));
    r = np_ok(np_call(b, "{s:s, s:i, s:s}", "cmd", "listen", "fd", 3, "name", "three"));
    ck_assert_int_eq(np_jint(np_jobj(np_jobj(r, "server"), "address"), "port"), port);
    fd = np_tcp_connect(port);
    np_echo_check(fd, "by number");
    close(fd);
    np_ok(np_call(b, "{s:s, s:s}", "cmd", "close", "server", "three"));
    np_ok(np_call(b, "{s:s, s:s, s:s}", "cmd", "listen", "fd", "web", "name", "named"));
    fd = np_tcp_connect(port);
    np_echo_check(fd, "by name");
    close(fd);
    np_ok(np_call(b, "{s:s}", "cmd", "ping"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("upgrade");
    TCase *tc = np_tcase(s, "upgrade", 90);
    tcase_add_test(tc, test_upgrade_under_load);
    tcase_add_test(tc, test_upgrade_by_signal_twice);
    tcase_add_test(tc, test_upgrade_keeps_daemon_totals);
    tcase_add_test(tc, test_upgrade_workers_still_accept);
    tcase_add_test(tc, test_upgrade_binary_missing);
    tcase_add_test(tc, test_upgrade_binary_exits);
    tcase_add_test(tc, test_upgrade_other_protocol);
    tcase_add_test(tc, test_upgrade_killed_halfway);
    tcase_add_test(tc, test_upgrade_never_ready);
    tcase_add_test(tc, test_sigterm_during_upgrade);
    tcase_add_test(tc, test_restart_keeps_queued_connections);
    tcase_add_test(tc, test_upgrade_socket_activated);
    return np_run_suite(s);
}
