/* SPDX-License-Identifier: MIT */
/*
 * chaos: a seeded chaos run against a real netd (issue 10). It starts netd from the build
 * tree with 4 workers and, for SECONDS, throws verified data streams, control operations
 * (moves, rebalances, destroys, server churn), hostile control clients and SIGHUP reloads
 * at it, all at once, then checks that netd came through whole.
 *
 * Plain C with its own epoll loop and no libnetd, so a library bug cannot hide in the
 * tester; jansson reads the control protocol. One PRNG seeded from SEED draws the same
 * three numbers on every tick, whatever happens meanwhile, and each stream and control
 * client gets its own PRNG seeded from those draws: a seed replays the same decisions
 * (operations, sizes, endings, hostile clients), not the thread interleavings inside netd.
 */
#include "config.h"

#include "chaos.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <linux/sockios.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>

#define NTHREADS 4
#define MAX_CHUNK (300 * 1024)
#define MAX_TOTAL ((uint64_t)(SLOW == 1 ? 4096 : SLOW == 2 ? 2048 : 512) * 1024)
#define MAX_STREAMS (SLOW == 1 ? 96 : SLOW == 2 ? 64 : 24)
#define MAX_HOSTILE (SLOW == 1 ? 24 : 12)
#define TICK_MS (SLOW == 1 ? 4 : SLOW == 2 ? 6 : 12)
#define NREGULAR 4
#define MAX_PENDING 32   /* requests in flight on one regular control client */
#define MAX_CTL_EXTRAS 6 /* servers opened by `listen` at once */
#define NCFG_EXTRAS 3    /* servers the SIGHUP rewrites add, change and remove */
#define REPLY_TIMEOUT_MS (15000 * SLOW)
#define STALL_MS (15000 * SLOW)
#define SETTLE_MS (10000 * SLOW) /* the final checks wait this long for a condition */

/* ------------------------------------------------------------------ small things */

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "chaos: out of memory\n");
        exit(2);
    }
    return p;
}

static void *xrealloc(void *p, size_t size)
{
    p = realloc(p, size);
    if (!p) {
        fprintf(stderr, "chaos: out of memory\n");
        exit(2);
    }
    return p;
}

/* ------------------------------------------------------------------ report */

static uint64_t g_seed;
static unsigned g_seconds;
static int g_failures;
static char g_builddir[PATH_MAX];

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("chaos: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
}

/* Every failure line carries the seed, so a log excerpt is enough to replay it. */
static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    g_failures++;
    if (g_failures > 40) {
        if (g_failures == 41)
            printf("chaos: FAIL seed=%" PRIu64 ": (more failures are counted, not printed)\n",
                   g_seed);
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    printf("chaos: FAIL seed=%" PRIu64 ": ", g_seed);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
}

/* Operation counters by name ("move.ok", "stream.end.rst"), printed sorted at the end. */
typedef struct counter {
    char name[48];
    uint64_t n;
} counter_t;
static counter_t counters[256];
static int ncounters;

static void count_add(const char *name, uint64_t n)
{
    for (int i = 0; i < ncounters; i++) {
        if (strcmp(counters[i].name, name) == 0) {
            counters[i].n += n;
            return;
        }
    }
    if (ncounters < (int)(sizeof(counters) / sizeof(counters[0]))) {
        snprintf(counters[ncounters].name, sizeof(counters[0].name), "%s", name);
        counters[ncounters++].n = n;
    }
}

static void count(const char *name)
{
    count_add(name, 1);
}

static void countf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void countf(const char *fmt, ...)
{
    char name[48];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    count(name);
}

static uint64_t counter_get(const char *name)
{
    for (int i = 0; i < ncounters; i++)
        if (strcmp(counters[i].name, name) == 0)
            return counters[i].n;
    return 0;
}

static int by_counter_name(const void *a, const void *b)
{
    return strcmp(((const counter_t *)a)->name, ((const counter_t *)b)->name);
}

static void print_counters(void)
{
    qsort(counters, (size_t)ncounters, sizeof(counters[0]), by_counter_name);
    say("operations (seed=%" PRIu64 ", %u s, %s build):", g_seed, g_seconds, BUILD_NAME);
    for (int i = 0; i < ncounters; i++)
        printf("  %-40s %12" PRIu64 "\n", counters[i].name, counters[i].n);
    fflush(stdout);
}

/* ------------------------------------------------------------------ the netd process */

typedef struct netd {
    pid_t pid;
    bool exited;
    int status;
    char dir[32]; /* /tmp/netd-chaos-XXXXXX: short, for unix socket paths */
    char sock[108];
    char upsock[108];
    char config[PATH_MAX];
    char errlog[PATH_MAX];
    int up_port;
    const char *path;   /* the netd binary (absolute: netd runs in dir, for its core) */
    char exe[PATH_MAX]; /* what runs after the libtool wrapper, for gdb on a core */
    /* The control connection of the setup and the final checks (blocking, with deadlines). */
    int ctl;
    char *cbuf;
    size_t clen, ccap;
    json_int_t next_id;
    /* netd's descriptors after startup: how many, and what each one was. */
    int base_fds;
    char **base_links;
    int nbase_links;
} netd_t;

static netd_t N;

static bool netd_gone(void)
{
    if (N.exited)
        return true;
    int st;
    pid_t r = waitpid(N.pid, &st, WNOHANG);
    if (r == N.pid) {
        N.exited = true;
        N.status = st;
    }
    return N.exited;
}

static const char *status_text(int st)
{
    static char buf[64];
    if (WIFEXITED(st))
        snprintf(buf, sizeof(buf), "exit status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, sizeof(buf), "killed by signal %d (%s)", WTERMSIG(st),
                 strsignal(WTERMSIG(st)));
    else
        snprintf(buf, sizeof(buf), "wait status %d", st);
    return buf;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    size_t cap = 65536, len = 0;
    char *buf = xcalloc(1, cap);
    if (f) {
        size_t n;
        while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
            len += n;
            if (cap - len < 2) {
                cap *= 2;
                buf = xrealloc(buf, cap);
            }
        }
        fclose(f);
    }
    buf[len] = '\0';
    return buf;
}

/* The headers ASan, LSan, UBSan and TSan start their reports with. */
static const char *const sanitizer_marks[] = {"ERROR: AddressSanitizer",
                                              "ERROR: LeakSanitizer",
                                              "WARNING: ThreadSanitizer",
                                              "ERROR: ThreadSanitizer",
                                              "runtime error:",
                                              "AddressSanitizer:DEADLYSIGNAL",
                                              "ThreadSanitizer:DEADLYSIGNAL",
                                              NULL};

/* Reports the first sanitizer report in netd's stderr (its first lines: the kind and the
 * top frames); returns how many report headers there are. */
static int sanitizer_reports(void)
{
    char *text = read_text(N.errlog);
    const char *first = NULL;
    int n = 0;
    for (int i = 0; sanitizer_marks[i]; i++) {
        for (const char *p = strstr(text, sanitizer_marks[i]); p;
             p = strstr(p + 1, sanitizer_marks[i])) {
            n++;
            if (!first || p < first)
                first = p;
        }
    }
    if (first) {
        while (first > text && first[-1] != '\n')
            first--;
        fail("netd's stderr holds %d sanitizer report header(s); the first one:", n);
        const char *p = first;
        for (int line = 0; line < 80 && *p; line++) {
            const char *e = strchr(p, '\n');
            int len = e ? (int)(e - p) : (int)strlen(p);
            printf("    | %.*s\n", len, p);
            if (strncmp(p, "SUMMARY:", 8) == 0)
                break;
            p = e ? e + 1 : p + len;
        }
        fflush(stdout);
    }
    free(text);
    return n;
}

static void print_stderr_tail(int lines)
{
    char *text = read_text(N.errlog);
    size_t len = strlen(text);
    const char *p = text + len;
    int n = 0;
    while (p > text && n <= lines) {
        p--;
        if (*p == '\n')
            n++;
    }
    if (p > text)
        p++;
    printf("chaos: the last lines of netd's stderr (%s):\n", N.errlog);
    while (*p) {
        const char *e = strchr(p, '\n');
        int l = e ? (int)(e - p) : (int)strlen(p);
        printf("    | %.*s\n", l, p);
        p = e ? e + 1 : p + l;
    }
    fflush(stdout);
    free(text);
}

static int count_fds(pid_t pid, char ***links)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    char **out = NULL;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (links) {
            char path[600], target[256];
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            ssize_t l = readlink(path, target, sizeof(target) - 1);
            target[l > 0 ? l : 0] = '\0';
            out = xrealloc(out, (size_t)(n + 1) * sizeof(char *));
            size_t sz = strlen(e->d_name) + strlen(target) + 8;
            out[n] = xcalloc(1, sz);
            snprintf(out[n], sz, "%s -> %s", e->d_name, target);
        }
        n++;
    }
    closedir(d);
    if (links)
        *links = out;
    return n;
}

static void free_links(char **links, int n)
{
    for (int i = 0; i < n; i++)
        free(links[i]);
    free(links);
}

static void close_from(int lowfd)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0) == 0)
        return;
#endif
    for (int fd = lowfd; fd < 65536; fd++)
        close(fd);
}

static void netd_spawn(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("chaos: fork");
        exit(2);
    }
    if (pid == 0) {
        /* netd must never outlive us, whatever way we end. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int log = open(N.errlog, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
        int nul = open("/dev/null", O_RDONLY);
        if (log < 0 || nul < 0)
            _exit(127);
        /* A crash of the plain build leaves DIR/core; the report takes its stack from it. */
        struct rlimit core = {RLIM_INFINITY, RLIM_INFINITY};
        if (setrlimit(RLIMIT_CORE, &core) != 0) {
            getrlimit(RLIMIT_CORE, &core);
            core.rlim_cur = core.rlim_max;
            setrlimit(RLIMIT_CORE, &core);
        }
        if (chdir(N.dir) != 0)
            _exit(127);
        dup2(nul, 0);
        dup2(log, 1);
        dup2(log, 2);
        close_from(3);
        signal(SIGPIPE, SIG_DFL);
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        char threads[8];
        snprintf(threads, sizeof(threads), "%d", NTHREADS);
        execl(N.path, N.path, "-c", N.config, "-s", N.sock, "-t", threads, (char *)NULL);
        _exit(127);
    }
    N.pid = pid;
    N.exited = false;
}

/* ---- a netd that stops answering ---- */

static bool g_unresponsive; /* a request went unanswered past its deadline */

/* Once per run, when netd stops answering: every thread's stack (gdb, when installed),
 * kept in DIR/stacks.txt and summed up here, so the report shows where the loops stand. */
static void dump_stacks(const char *why)
{
    static bool done;
    if (done || netd_gone())
        return;
    done = true;
    g_unresponsive = true;
    char out[PATH_MAX + 16], cmd[2 * PATH_MAX + 256];
    snprintf(out, sizeof(out), "%s/stacks.txt", N.dir);
    snprintf(cmd, sizeof(cmd),
             "command -v gdb >/dev/null 2>&1 && timeout 120 gdb -p %d -batch -nx "
             "-ex 'set pagination off' -ex 'thread apply all bt 12' >'%s' 2>&1",
             (int)N.pid, out);
    fail("netd stopped answering (%s); its threads' stacks go to %s", why, out);
    if (system(cmd) != 0) {
        say("(no stacks: gdb is missing or could not attach)");
        return;
    }
    char *text = read_text(out);
    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        int l = e ? (int)(e - p) : (int)strlen(p);
        if (strncmp(p, "Thread ", 7) == 0 || (p[0] == '#' && l > 0))
            printf("    | %.*s\n", l > 200 ? 200 : l, p);
        p = e ? e + 1 : p + l;
    }
    fflush(stdout);
    free(text);
}

/* The stack of a netd killed by a signal, from its core (gdb, when installed): the first
 * lines go to the report, everything to DIR/crash-stacks.txt; the core is removed. */
static void core_stacks(void)
{
    char core[PATH_MAX + 32];
    snprintf(core, sizeof(core), "%s/core.%d", N.dir, (int)N.pid);
    if (access(core, R_OK) != 0)
        snprintf(core, sizeof(core), "%s/core", N.dir);
    if (access(core, R_OK) != 0 || !N.exe[0])
        return;
    char out[PATH_MAX + 32], cmd[4 * PATH_MAX];
    snprintf(out, sizeof(out), "%s/crash-stacks.txt", N.dir);
    snprintf(cmd, sizeof(cmd),
             "command -v gdb >/dev/null 2>&1 && timeout 120 gdb -batch -nx -ex 'bt 25' "
             "-ex 'thread apply all bt 12' '%s' '%s' >'%s' 2>&1",
             N.exe, core, out);
    if (system(cmd) == 0) {
        say("netd's crash, from its core (all threads in %s):", out);
        char *text = read_text(out);
        int shown = 0;
        for (const char *p = text; *p && shown < 25;) {
            const char *e = strchr(p, '\n');
            int l = e ? (int)(e - p) : (int)strlen(p);
            if (p[0] == '#') {
                printf("    | %.*s\n", l > 220 ? 220 : l, p);
                shown++;
            } else if (shown > 0 && strncmp(p, "Thread ", 7) == 0) {
                break; /* the crashing thread's stack is the first one */
            }
            p = e ? e + 1 : p + l;
        }
        fflush(stdout);
        free(text);
    }
    unlink(core);
}

/* ---- the blocking control connection ---- */

static int unix_connect(const char *path, bool nonblock)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static bool send_all_deadline(int fd, const char *p, size_t len, uint64_t deadline)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return false;
        int left = (int)((int64_t)deadline - (int64_t)now_ms());
        if (left <= 0)
            return false;
        struct pollfd pfd = {fd, POLLOUT, 0};
        poll(&pfd, 1, left);
    }
    return true;
}

/* netd closes a control client idle for control.idleTimeout (5 min by default), as
 * CONTROL.md says: the setup connection, quiet for the whole run, is opened again. */
static void sync_reopen_if_closed(void)
{
    char b;
    struct pollfd pfd = {N.ctl, POLLIN, 0};
    if (N.ctl < 0 || poll(&pfd, 1, 0) <= 0 || N.clen > 0 ||
        recv(N.ctl, &b, 1, MSG_PEEK | MSG_DONTWAIT) != 0)
        return;
    close(N.ctl);
    N.ctl = unix_connect(N.sock, false);
    count("setup-connection.reopened");
}

/* One request on the setup connection, its reply (a new reference), or NULL with the
 * reason in *why. */
static json_t *sync_call(json_t *req, unsigned timeout_ms, const char **why)
{
    static const char *dummy;
    if (!why)
        why = &dummy;
    if (g_unresponsive)
        timeout_ms = timeout_ms < 2000 ? timeout_ms : 2000; /* it did not answer before */
    uint64_t deadline = now_ms() + timeout_ms;
    sync_reopen_if_closed();
    json_int_t id = ++N.next_id;
    json_object_set_new(req, "id", json_integer(id));
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    size_t n = strlen(text);
    text = xrealloc(text, n + 2);
    text[n] = '\n';
    bool sent = send_all_deadline(N.ctl, text, n + 1, deadline);
    free(text);
    if (!sent) {
        *why = "send failed";
        return NULL;
    }
    for (;;) {
        char *nl = N.clen ? memchr(N.cbuf, '\n', N.clen) : NULL;
        if (nl) {
            size_t l = (size_t)(nl - N.cbuf);
            json_t *r = json_loadb(N.cbuf, l, 0, NULL);
            memmove(N.cbuf, nl + 1, N.clen - l - 1);
            N.clen -= l + 1;
            if (!r || json_integer_value(json_object_get(r, "id")) != id) {
                json_decref(r);
                *why = "a reply that is not JSON or not ours";
                return NULL;
            }
            return r;
        }
        int left = (int)((int64_t)deadline - (int64_t)now_ms());
        if (left <= 0) {
            *why = "timeout";
            dump_stacks("a request on the setup connection timed out");
            return NULL;
        }
        struct pollfd pfd = {N.ctl, POLLIN, 0};
        if (poll(&pfd, 1, left) <= 0)
            continue;
        if (N.ccap - N.clen < 65536) {
            N.ccap = N.ccap ? N.ccap * 2 : 262144;
            N.cbuf = xrealloc(N.cbuf, N.ccap);
        }
        ssize_t got = recv(N.ctl, N.cbuf + N.clen, N.ccap - N.clen, 0);
        if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) {
            *why = got == 0 ? "netd closed the connection" : strerror(errno);
            return NULL;
        }
        if (got > 0)
            N.clen += (size_t)got;
    }
}

/* sync_call for requests that must succeed: NULL (and a failure line) otherwise. */
static json_t *sync_ok(json_t *req, const char *what)
{
    const char *why = NULL;
    json_t *r = sync_call(req, REPLY_TIMEOUT_MS, &why);
    if (!r) {
        fail("%s: no reply (%s)", what, why);
        return NULL;
    }
    if (!json_is_true(json_object_get(r, "ok"))) {
        char *t = json_dumps(r, JSON_COMPACT);
        fail("%s: %s", what, t);
        free(t);
        json_decref(r);
        return NULL;
    }
    return r;
}

static int free_tcp_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sin, &len) == 0)
        port = ntohs(sin.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* ------------------------------------------------------------------ servers */

/* What the run knows of one server of netd. Entries are never removed: ended streams keep
 * the index of theirs, and judging their endings needs its history. */
typedef struct srv {
    uint64_t id; /* 0 until netd has said */
    char name[48];
    int port;              /* TCP port; 0 for a unix path */
    bool proxy;            /* handler proxy: a pair per connection */
    bool half_open;        /* allowHalfOpen */
    bool upstream;         /* a proxy's upstream ("up", "upunix"): its sockets are not ours */
    bool core;             /* in every config: never closed during the run */
    bool ctl_extra;        /* opened by `listen` */
    bool cfg_extra;        /* opened by a reload */
    bool listening;        /* believed to accept: a stream target */
    uint64_t closed_ms;    /* a close (or a reload closing it) was sent; 0: never */
    uint64_t destroy_ms;   /* a close with destroy was sent */
    uint64_t destroyed_ms; /* ... and answered: its connections must be gone soon after */
    uint64_t limited_ms;   /* a maxConnections was set */
    uint64_t timeout_ms;   /* an idle timeout was set */
} srv_t;

static srv_t *srvs;
static int nsrvs, capsrvs;

static int srv_add(void)
{
    if (nsrvs == capsrvs) {
        capsrvs = capsrvs ? capsrvs * 2 : 64;
        srvs = xrealloc(srvs, (size_t)capsrvs * sizeof(*srvs));
    }
    memset(&srvs[nsrvs], 0, sizeof(srvs[0]));
    return nsrvs++;
}

/* id -> index, open addressing (ids only ever get added). */
static int *srv_hash;
static size_t srv_hash_cap, srv_hash_n;

static void srv_hash_put(uint64_t id, int idx)
{
    if ((srv_hash_n + 1) * 2 > srv_hash_cap) {
        size_t cap = srv_hash_cap ? srv_hash_cap * 2 : 256;
        int *h = xcalloc(cap, sizeof(int));
        for (size_t i = 0; i < cap; i++)
            h[i] = -1;
        for (size_t i = 0; i < srv_hash_cap; i++) {
            if (srv_hash[i] < 0)
                continue;
            size_t k = mix64(srvs[srv_hash[i]].id) & (cap - 1);
            while (h[k] >= 0)
                k = (k + 1) & (cap - 1);
            h[k] = srv_hash[i];
        }
        free(srv_hash);
        srv_hash = h;
        srv_hash_cap = cap;
    }
    size_t k = mix64(id) & (srv_hash_cap - 1);
    while (srv_hash[k] >= 0)
        k = (k + 1) & (srv_hash_cap - 1);
    srv_hash[k] = idx;
    srv_hash_n++;
}

static int srv_find(uint64_t id)
{
    if (!srv_hash_cap || !id)
        return -1;
    size_t k = mix64(id) & (srv_hash_cap - 1);
    while (srv_hash[k] >= 0) {
        if (srvs[srv_hash[k]].id == id)
            return srv_hash[k];
        k = (k + 1) & (srv_hash_cap - 1);
    }
    return -1;
}

static void srv_set_id(int idx, uint64_t id)
{
    srvs[idx].id = id;
    srv_hash_put(id, idx);
}

/* The listening server of that name we know, or -1. */
static int srv_live_by_name(const char *name)
{
    for (int i = nsrvs - 1; i >= 0; i--)
        if (srvs[i].id && srvs[i].listening && strcmp(srvs[i].name, name) == 0)
            return i;
    return -1;
}

/* Learns a server from its JSON object (a `servers` entry or a `listen` reply). */
static int srv_learn(json_t *o)
{
    uint64_t id = (uint64_t)json_integer_value(json_object_get(o, "id"));
    if (!id)
        return -1;
    int idx = srv_find(id);
    if (idx < 0) {
        idx = srv_add();
        srv_t *v = &srvs[idx];
        snprintf(v->name, sizeof(v->name), "%s", json_string_value(json_object_get(o, "name")));
        json_t *addr = json_object_get(o, "address");
        v->port = (int)json_integer_value(json_object_get(addr, "port"));
        const char *h = json_string_value(json_object_get(json_object_get(o, "handler"), "type"));
        v->proxy = h && strcmp(h, "proxy") == 0;
        v->half_open = json_is_true(json_object_get(o, "allowHalfOpen"));
        v->cfg_extra = strncmp(v->name, "cfg", 3) == 0;
        v->ctl_extra = v->name[0] == 'x';
        v->listening = true;
        srv_set_id(idx, id);
    }
    const char *st = json_string_value(json_object_get(o, "state"));
    if (st && strcmp(st, "listening") != 0)
        srvs[idx].listening = false;
    return idx;
}

/* ------------------------------------------------------------------ the event loop */

typedef struct io io_t;
typedef void (*io_fn)(io_t *io, uint32_t events);
struct io {
    int fd;
    uint32_t mask; /* what epoll watches now */
    bool added;
    io_fn on;
};

static int ep = -1;

static void io_watch(io_t *io, uint32_t mask)
{
    if (io->fd < 0)
        return;
    if (io->added && io->mask == mask)
        return;
    struct epoll_event ev = {.events = mask, .data.ptr = io};
    if (!io->added) {
        if (epoll_ctl(ep, EPOLL_CTL_ADD, io->fd, &ev) == 0)
            io->added = true;
    } else {
        epoll_ctl(ep, EPOLL_CTL_MOD, io->fd, &ev);
    }
    io->mask = mask;
}

/* Closes the descriptor; events already fetched for it see fd -1 and are dropped. */
static void io_close(io_t *io)
{
    if (io->fd < 0)
        return;
    if (io->added)
        epoll_ctl(ep, EPOLL_CTL_DEL, io->fd, NULL);
    close(io->fd);
    io->fd = -1;
    io->added = false;
}

static uint8_t gen_buf[MAX_CHUNK];
static uint8_t rx_buf[256 * 1024];
static uint8_t cmp_buf[256 * 1024];

/* ------------------------------------------------------------------ streams */

enum end_mode { END_CLOSE, END_HALFCLOSE, END_RST, END_ABANDON, END__N };
static const char *const end_names[] = {"close", "halfclose", "rst", "abandon"};

enum outcome {
    OUT_LIVE,
    OUT_COMPLETE,   /* every byte came back (and EOF where expected) */
    OUT_KILLED,     /* the test ended it on purpose (RST, abandon) */
    OUT_ABRUPT,     /* netd ended it early: judged at the end (legitimate or not) */
    OUT_CORRUPT,    /* a wrong byte: always a failure */
    OUT_STALLED,    /* no progress for STALL_MS: always a failure */
    OUT_UNFINISHED, /* still running when the wind-down deadline passed: a failure */
    OUT_SURVIVED    /* alive well after `close {"destroy": true}` of its server: a failure */
};
static const char *const outcome_names[] = {"live",    "complete", "killed",     "abrupt",
                                            "corrupt", "stalled",  "unfinished", "survived"};

typedef struct stream {
    io_t io;
    uint64_t serial;
    int srv;
    enum end_mode mode;
    rng_t rng;     /* chunk sizes, pauses */
    uint64_t seed; /* content */
    uint64_t total;
    uint64_t kill_at;  /* RST/abandon: when this many bytes were sent (or received) */
    bool kill_on_recv; /* kill_at counts received bytes rather than sent ones */
    uint64_t window;   /* at most this much sent and not yet echoed */
    uint64_t sent, recvd;
    uint64_t chunk_left;
    bool connecting, shut, ended;
    uint64_t pause_until; /* a slow reader: not reading until then */
    unsigned pace_ms;     /* a trickle: small chunks this far apart, so it lives long */
    uint64_t next_send_ms;
    uint16_t lport;
    enum outcome outcome;
    int err; /* errno of an abrupt end; 0 for EOF */
    uint64_t start_ms, end_ms, progress_ms;
    int destroys;      /* `destroy` of its socket that netd confirmed */
    int destroy_tries; /* `destroy` of its socket sent (whatever the answer) */
    int moves;         /* `move` of its socket that netd confirmed */
    uint64_t netd_id;  /* its socket's id in the last listing that showed it */
    int netd_thread;
    struct stream *next; /* every stream, for the final judgement */
    struct stream *live_next, *live_prev;
} stream_t;

static stream_t *all_streams;
static stream_t *live_streams;
static int nlive_streams;
static uint64_t stream_serial;
static stream_t *by_port[65536];

static void stream_unlive(stream_t *s)
{
    if (s->live_prev)
        s->live_prev->live_next = s->live_next;
    else
        live_streams = s->live_next;
    if (s->live_next)
        s->live_next->live_prev = s->live_prev;
    s->live_next = s->live_prev = NULL;
    nlive_streams--;
}

static void stream_end(stream_t *s, enum outcome o, int err)
{
    if (s->ended)
        return;
    s->ended = true;
    s->outcome = o;
    s->err = err;
    s->end_ms = now_ms();
    if (by_port[s->lport] == s)
        by_port[s->lport] = NULL;
    io_close(&s->io);
    stream_unlive(s);
    countf("stream.outcome.%s", outcome_names[o]);
}

static void stream_kill(stream_t *s)
{
    if (s->mode == END_RST) {
        struct linger l = {1, 0};
        setsockopt(s->io.fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    }
    stream_end(s, OUT_KILLED, 0);
}

static const char *srv_desc(int idx)
{
    static char buf[4][96];
    static int k;
    char *b = buf[k++ & 3];
    const srv_t *v = &srvs[idx];
    snprintf(b, sizeof(buf[0]), "%s(id %" PRIu64 ", %s%s)", v->name, v->id,
             v->proxy ? "proxy" : "echo", v->half_open ? ", allowHalfOpen" : "");
    return b;
}

static void stream_update_mask(stream_t *s);
static json_t *sync_call(json_t *req, unsigned timeout_ms, const char **why);

/* Evidence for a stall: our kernel queues, and netd's own view of the connection (its
 * `sockets` entry: thread, state, bytes, queued output), so the report says which side
 * holds the bytes. */
static void stall_evidence(stream_t *s, char *out, size_t len)
{
    int unread = -1, unsent = -1;
    if (s->io.fd >= 0) {
        ioctl(s->io.fd, FIONREAD, &unread);
        ioctl(s->io.fd, TIOCOUTQ, &unsent);
    }
    int n = snprintf(out, len, "our kernel queues: %d unread, %d unsent; netd: ", unread, unsent);
    json_t *r = g_unresponsive ? NULL
                               : sync_call(json_pack("{s:s, s:s, s:i}", "cmd", "sockets", "role",
                                                     "all", "limit", 100000),
                                           5000, NULL);
    bool found = false;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(r, "sockets"), i, e) {
        if (json_integer_value(json_object_get(e, "remotePort")) != s->lport ||
            json_integer_value(json_object_get(e, "server")) != (json_int_t)srvs[s->srv].id)
            continue;
        json_t *keep = json_pack(
            "{s:O, s:O, s:O, s:O, s:O, s:O, s:O}", "id", json_object_get(e, "id"), "thread",
            json_object_get(e, "thread"), "state", json_object_get(e, "state"), "bytesRead",
            json_object_get(e, "bytesRead"), "bytesWritten", json_object_get(e, "bytesWritten"),
            "bufferSize", json_object_get(e, "bufferSize"), "idleMs", json_object_get(e, "idleMs"));
        char *t = json_dumps(keep, JSON_COMPACT);
        json_decref(keep);
        if (n > 0 && (size_t)n < len)
            n += snprintf(out + n, len - (size_t)n, "%s", t);
        free(t);
        found = true;
    }
    if (!found && n > 0 && (size_t)n < len)
        snprintf(out + n, len - (size_t)n, r ? "not listed" : "no answer to sockets");
    json_decref(r);
}

static bool stream_kill_due(stream_t *s)
{
    if (s->mode != END_RST && s->mode != END_ABANDON)
        return false;
    return s->kill_on_recv ? s->recvd >= s->kill_at : s->sent >= s->kill_at;
}

/* Sends while the window, the plan and the kernel allow. */
static void stream_pump(stream_t *s)
{
    size_t budget = 1024 * 1024; /* fairness between streams per event */
    while (!s->ended && !s->connecting && !s->shut && s->sent < s->total && budget > 0) {
        if (stream_kill_due(s)) {
            stream_kill(s);
            return;
        }
        if (s->sent - s->recvd >= s->window)
            break;
        if (s->chunk_left == 0 && s->pace_ms && now_ms() < s->next_send_ms)
            break; /* the sweep sends the next one */
        if (s->chunk_left == 0)
            s->chunk_left = rng_log(&s->rng, 1, s->pace_ms ? 2048 : MAX_CHUNK);
        uint64_t n = s->chunk_left;
        if (n > s->total - s->sent)
            n = s->total - s->sent;
        gen_fill(s->seed, s->sent, gen_buf, (size_t)n);
        ssize_t w = send(s->io.fd, gen_buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            stream_end(s, OUT_ABRUPT, errno);
            return;
        }
        s->sent += (uint64_t)w;
        s->chunk_left -= (uint64_t)w;
        budget -= (size_t)w < budget ? (size_t)w : budget;
        s->progress_ms = now_ms();
        count_add("bytes.sent", (uint64_t)w);
        if ((uint64_t)w < n)
            break; /* the kernel is full: wait for EPOLLOUT */
        if (s->pace_ms && s->chunk_left == 0)
            s->next_send_ms = now_ms() + s->pace_ms;
    }
    if (s->ended)
        return;
    if (stream_kill_due(s)) {
        stream_kill(s);
        return;
    }
    if (s->sent == s->total && !s->shut && s->mode == END_HALFCLOSE) {
        shutdown(s->io.fd, SHUT_WR);
        s->shut = true;
    }
    if (s->mode == END_CLOSE && s->recvd == s->total) {
        stream_end(s, OUT_COMPLETE, 0); /* nothing to send (total 0) */
        return;
    }
    stream_update_mask(s);
}

static void stream_update_mask(stream_t *s)
{
    if (s->ended)
        return;
    uint32_t m = 0;
    if (s->connecting) {
        m = EPOLLOUT;
    } else {
        if (s->pause_until == 0)
            m |= EPOLLIN | EPOLLRDHUP;
        /* Not while the window is full: level-triggered EPOLLOUT would spin; the echo
         * that frees the window calls stream_pump. */
        if (!s->shut && s->sent < s->total && s->sent - s->recvd < s->window &&
            (!s->pace_ms || s->chunk_left > 0 || now_ms() >= s->next_send_ms))
            m |= EPOLLOUT;
    }
    io_watch(&s->io, m);
}

static void stream_verify(stream_t *s, const uint8_t *data, size_t n)
{
    gen_fill(s->seed, s->recvd, cmp_buf, n);
    if (memcmp(data, cmp_buf, n) == 0)
        return;
    size_t i = 0;
    while (data[i] == cmp_buf[i])
        i++;
    fail("stream %" PRIu64 " to %s: byte %" PRIu64 " is 0x%02x, expected 0x%02x (%" PRIu64
         " of %" PRIu64 " sent, moved %d time(s), ending %s)",
         s->serial, srv_desc(s->srv), s->recvd + i, data[i], cmp_buf[i], s->sent, s->total,
         s->moves, end_names[s->mode]);
    stream_end(s, OUT_CORRUPT, 0);
}

static void stream_read(stream_t *s)
{
    for (int rounds = 0; rounds < 8 && !s->ended && s->pause_until == 0; rounds++) {
        ssize_t n = recv(s->io.fd, rx_buf, sizeof(rx_buf), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            stream_end(s, OUT_ABRUPT, errno);
            return;
        }
        if (n == 0) {
            if (s->shut && s->recvd == s->total)
                stream_end(s, OUT_COMPLETE, 0);
            else
                stream_end(s, OUT_ABRUPT, 0);
            return;
        }
        if (s->recvd + (uint64_t)n > s->sent) {
            fail("stream %" PRIu64 " to %s: %" PRIu64 " bytes came back, only %" PRIu64
                 " were sent",
                 s->serial, srv_desc(s->srv), s->recvd + (uint64_t)n, s->sent);
            stream_end(s, OUT_CORRUPT, 0);
            return;
        }
        stream_verify(s, rx_buf, (size_t)n);
        if (s->ended)
            return;
        s->recvd += (uint64_t)n;
        s->progress_ms = now_ms();
        count_add("bytes.verified", (uint64_t)n);
        if (stream_kill_due(s)) {
            stream_kill(s);
            return;
        }
        if (s->mode == END_CLOSE && s->recvd == s->total) {
            stream_end(s, OUT_COMPLETE, 0); /* our FIN: netd closes its side */
            return;
        }
        /* A slow reader now and then: netd's pipes pause, and paused pairs get moved. */
        if (rng_pct(&s->rng, 2))
            s->pause_until = now_ms() + rng_range(&s->rng, 10, 300);
    }
    if (!s->ended)
        stream_pump(s);
}

static void stream_on(io_t *io, uint32_t events)
{
    stream_t *s = (stream_t *)io;
    if (s->ended)
        return;
    if (s->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            stream_end(s, OUT_ABRUPT, err);
            return;
        }
        s->connecting = false;
        s->progress_ms = now_ms();
        stream_pump(s);
        return;
    }
    if (events & (EPOLLHUP | EPOLLERR))
        s->pause_until = 0; /* a slow reader still hears about a reset at once */
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        stream_read(s);
    if (!s->ended && (events & EPOLLOUT))
        stream_pump(s);
}

/* A new stream to server idx, its whole plan drawn from its own PRNG. */
static void stream_start(int idx, uint64_t seed)
{
    srv_t *v = &srvs[idx];
    stream_t *s = xcalloc(1, sizeof(*s));
    s->serial = ++stream_serial;
    s->srv = idx;
    s->rng.s = seed;
    s->seed = rng_next(&s->rng);
    s->mode = (enum end_mode)rng_below(&s->rng, END__N);
    s->pace_ms = rng_pct(&s->rng, 25) ? (unsigned)rng_range(&s->rng, 5, 100) : 0;
    s->total = rng_pct(&s->rng, 3) ? 0 : rng_log(&s->rng, 1, s->pace_ms ? 65536 : MAX_TOTAL);
    s->kill_on_recv = rng_pct(&s->rng, 50);
    s->kill_at = rng_below(&s->rng, s->total + 1);
    s->window = rng_log(&s->rng, 4096, 2 * 1024 * 1024);
    s->start_ms = s->progress_ms = now_ms();
    s->io.on = stream_on;
    s->io.fd = -1;
    s->next = all_streams;
    all_streams = s;
    s->live_next = live_streams;
    if (live_streams)
        live_streams->live_prev = s;
    live_streams = s;
    nlive_streams++;
    countf("stream.to.%s", v->core ? v->name : v->ctl_extra ? "ctl-extra" : "cfg-extra");
    countf("stream.end.%s", end_names[s->mode]);
    if (s->pace_ms)
        count("stream.trickle");

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail("socket: %s", strerror(errno));
        stream_end(s, OUT_KILLED, errno);
        return;
    }
    s->io.fd = fd;
    if (rng_pct(&s->rng, 50)) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)v->port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = connect(fd, (struct sockaddr *)&sin, sizeof(sin));
    if (rc != 0 && errno != EINPROGRESS) {
        stream_end(s, OUT_ABRUPT, errno);
        return;
    }
    /* The local port is bound by connect(): known before netd can list the socket. */
    struct sockaddr_in me;
    socklen_t len = sizeof(me);
    getsockname(fd, (struct sockaddr *)&me, &len);
    s->lport = ntohs(me.sin_port);
    by_port[s->lport] = s;
    s->connecting = rc != 0;
    if (s->connecting)
        stream_update_mask(s);
    else
        stream_pump(s);
}

/* ------------------------------------------------------------------ control clients */

enum ctl_kind {
    CTL_REGULAR,           /* well-behaved: every reply read and checked, in order */
    CTL_ONESHOT,           /* one request (close with wait), checked, then hung up */
    CTL_LISTER,            /* `sockets` every 100 ms, so moves and destroys find live ids */
    H_HANGUP_BEFORE_REPLY, /* requests, then hangs up before any reply */
    H_MIDLINE,             /* hangs up in the middle of a line */
    H_AFTER_MOVE,          /* a move, then hangs up at once */
    H_MOVE_REPLY_HANGUP,   /* a move, hangs up as soon as its reply arrives (netctl) */
    H_PIPELINE_NOREAD,     /* many requests, reads nothing */
    H_WATCH_NOREAD,        /* watch, reads nothing */
    H_GARBAGE,             /* garbage lines, replies read and dropped */
    CTL__N
};
static const char *const ctl_names[] = {
    "regular",           "oneshot",           "lister",          "hangup-before-reply", "midline",
    "hangup-after-move", "move-reply-hangup", "pipeline-noread", "watch-noread",        "garbage"};

#define OPS(X)                                                                                     \
    X(PING, "ping")                                                                                \
    X(SOCKETS, "sockets")                                                                          \
    X(MOVE, "move")                                                                                \
    X(REBALANCE, "rebalance")                                                                      \
    X(DESTROY, "destroy")                                                                          \
    X(LISTEN, "listen")                                                                            \
    X(SET, "set")                                                                                  \
    X(CLOSE, "close")                                                                              \
    X(GETCONN, "getConnections")                                                                   \
    X(SERVERS, "servers")                                                                          \
    X(SERVER, "server")                                                                            \
    X(STATS, "stats")                                                                              \
    X(METRICS, "metrics")                                                                          \
    X(HELP, "help")                                                                                \
    X(WATCH, "watch")

enum op {
#define OP_ENUM(e, s) OP_##e,
    OPS(OP_ENUM)
#undef OP_ENUM
        OP__N
};
static const char *const op_names[] = {
#define OP_NAME(e, s) s,
    OPS(OP_NAME)
#undef OP_NAME
};

/* The error codes each command may legitimately answer in this run; anything else is a
 * failure. A server or socket can always vanish between our listing and the request. */
static bool code_allowed(enum op op, const char *code)
{
    switch (op) {
    case OP_MOVE:
        return !strcmp(code, "ENOSOCKET") || !strcmp(code, "EBUSY");
    case OP_DESTROY:
        return !strcmp(code, "ENOSOCKET");
    case OP_REBALANCE:
    case OP_GETCONN:
    case OP_SERVER:
    case OP_SOCKETS:
        return !strcmp(code, "ENOSERVER");
    case OP_SET:
        return !strcmp(code, "ENOSERVER");
    default:
        return false;
    }
}

typedef struct pending {
    json_int_t id;
    enum op op;
    uint64_t sent_ms;
    stream_t *stream; /* destroy/move: the stream whose socket it is, if ours */
    int srv;          /* listen/close/set: our server entry; -1 */
    int thread;       /* move: the target */
    bool credit;      /* destroy of a proxy's upstream-side socket */
} pending_t;

typedef struct ctl {
    io_t io;
    enum ctl_kind kind;
    rng_t rng;
    char *in;
    size_t inlen, incap;
    char *out;
    size_t outlen, outoff, outcap;
    pending_t *pend;
    size_t phead, ptail, pcap; /* FIFO of requests awaiting replies (checked kinds) */
    json_int_t next_id;
    uint64_t close_at; /* hostile: hang up then (0: not by time) */
    bool closed;
    struct ctl *next;
} ctl_t;

static ctl_t *ctls;      /* every open client */
static ctl_t *ctl_grave; /* closed, freed after the current batch of events */
static ctl_t *regular[NREGULAR];
static ctl_t *lister;
static uint64_t lister_last_ms;
static bool g_winding; /* the chaos is over: nothing new is sent */
static int nhostile;

/* Destroys of upstream-side sockets: each may legitimately end one proxied stream that
 * was alive while it ran (matched at the end). */
typedef struct credit {
    uint64_t from_ms, to_ms;
    bool used;
} credit_t;
static credit_t *credits;
static size_t ncredits, capcredits;

/* What the last `sockets` listing said. */
typedef struct known {
    uint64_t id;
    int srv; /* our index, -1 unknown */
    bool upstream_role;
    int thread;
    stream_t *stream; /* ours, if its remote port is one of our live streams */
} known_t;
static known_t *known;
static size_t nknown, capknown;

static bool is_checked(enum ctl_kind k)
{
    return k == CTL_REGULAR || k == CTL_ONESHOT || k == CTL_LISTER;
}

static void ctl_close(ctl_t *c)
{
    if (c->closed)
        return;
    c->closed = true;
    io_close(&c->io);
    if (c->kind >= H_HANGUP_BEFORE_REPLY)
        nhostile--;
    for (int i = 0; i < NREGULAR; i++)
        if (regular[i] == c)
            regular[i] = NULL;
    if (lister == c)
        lister = NULL;
    ctl_t **pp = &ctls;
    while (*pp && *pp != c)
        pp = &(*pp)->next;
    if (*pp)
        *pp = c->next;
    c->next = ctl_grave;
    ctl_grave = c;
}

static void ctl_free_grave(void)
{
    while (ctl_grave) {
        ctl_t *c = ctl_grave;
        ctl_grave = c->next;
        free(c->in);
        free(c->out);
        free(c->pend);
        free(c);
    }
}

static void ctl_update_mask(ctl_t *c)
{
    if (c->closed)
        return;
    uint32_t m = 0;
    /* The no-read kinds leave replies in the kernel: netd's output queue must cope. */
    if (c->kind != H_PIPELINE_NOREAD && c->kind != H_WATCH_NOREAD)
        m |= EPOLLIN | EPOLLRDHUP;
    if (c->outoff < c->outlen)
        m |= EPOLLOUT;
    io_watch(&c->io, m);
}

static void ctl_flush(ctl_t *c)
{
    while (!c->closed && c->outoff < c->outlen) {
        ssize_t n = send(c->io.fd, c->out + c->outoff, c->outlen - c->outoff,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            if (is_checked(c->kind))
                fail("control client (%s): send: %s", ctl_names[c->kind], strerror(errno));
            ctl_close(c);
            return;
        }
        c->outoff += (size_t)n;
    }
    if (c->outoff == c->outlen)
        c->outoff = c->outlen = 0;
    ctl_update_mask(c);
}

static void ctl_write_raw(ctl_t *c, const char *data, size_t len)
{
    if (c->outlen + len > c->outcap) {
        c->outcap = (c->outlen + len) * 2;
        c->out = xrealloc(c->out, c->outcap);
    }
    memcpy(c->out + c->outlen, data, len);
    c->outlen += len;
}

/* Queues one request line (req stolen), remembering it when replies are checked. */
static pending_t *ctl_request(ctl_t *c, enum op op, json_t *req)
{
    json_int_t id = ++c->next_id;
    json_object_set_new(req, "id", json_integer(id));
    json_object_set_new(req, "cmd", json_string(op_names[op]));
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    ctl_write_raw(c, text, strlen(text));
    ctl_write_raw(c, "\n", 1);
    free(text);
    countf("ctl.%s.%s", ctl_names[c->kind], op_names[op]);
    if (!is_checked(c->kind))
        return NULL;
    if (c->ptail - c->phead == c->pcap) {
        size_t cap = c->pcap ? c->pcap * 2 : 16;
        pending_t *p = xcalloc(cap, sizeof(*p));
        for (size_t i = c->phead; i < c->ptail; i++)
            p[i - c->phead] = c->pend[i % c->pcap];
        free(c->pend);
        c->pend = p;
        c->ptail -= c->phead;
        c->phead = 0;
        c->pcap = cap;
    }
    pending_t *p = &c->pend[c->ptail++ % c->pcap];
    memset(p, 0, sizeof(*p));
    p->id = id;
    p->op = op;
    p->sent_ms = now_ms();
    p->srv = -1;
    return p;
}

static size_t ctl_npending(const ctl_t *c)
{
    return c->ptail - c->phead;
}

static void ctl_on(io_t *io, uint32_t events);

static ctl_t *ctl_open(enum ctl_kind kind, uint64_t seed)
{
    int fd = unix_connect(N.sock, true);
    if (fd < 0) {
        countf("ctl.connect.%s", strerror(-fd));
        if (is_checked(kind) && fd != -EAGAIN)
            fail("control connect (%s): %s", ctl_names[kind], strerror(-fd));
        return NULL;
    }
    ctl_t *c = xcalloc(1, sizeof(*c));
    c->io.fd = fd;
    c->io.on = ctl_on;
    c->kind = kind;
    c->rng.s = seed;
    c->next = ctls;
    ctls = c;
    if (kind >= H_HANGUP_BEFORE_REPLY)
        nhostile++;
    countf("ctl.open.%s", ctl_names[kind]);
    return c;
}

/* ---- replies ---- */

static void learn_sockets(json_t *arr)
{
    nknown = 0;
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e) {
        if (nknown == capknown) {
            capknown = capknown ? capknown * 2 : 512;
            known = xrealloc(known, capknown * sizeof(*known));
        }
        known_t *k = &known[nknown++];
        k->id = (uint64_t)json_integer_value(json_object_get(e, "id"));
        k->srv = srv_find((uint64_t)json_integer_value(json_object_get(e, "server")));
        k->thread = (int)json_integer_value(json_object_get(e, "thread"));
        const char *role = json_string_value(json_object_get(e, "role"));
        k->upstream_role = role && strcmp(role, "upstream") == 0;
        /* CONTROL.md's Socket object: a socket in transit is "moving", with its target. */
        const char *st = json_string_value(json_object_get(e, "state"));
        static const char *const states[] = {"open",    "readOnly", "writeOnly",
                                             "closing", "moving",   NULL};
        bool known_state = false;
        for (int j = 0; st && states[j]; j++)
            known_state = known_state || strcmp(st, states[j]) == 0;
        if (!known_state || !role || (!k->upstream_role && strcmp(role, "client") != 0) ||
            k->thread < 0 || k->thread >= NTHREADS) {
            char *t = json_dumps(e, JSON_COMPACT);
            fail("sockets: an entry outside the contract: %.300s", t);
            free(t);
        }
        k->stream = NULL;
        json_t *rp = json_object_get(e, "remotePort");
        if (!k->upstream_role && json_is_integer(rp) && k->srv >= 0) {
            stream_t *s = by_port[(uint16_t)json_integer_value(rp)];
            if (s && s->srv == k->srv) {
                k->stream = s;
                s->netd_id = k->id;
                s->netd_thread = k->thread;
            }
        }
    }
}

static void learn_servers(json_t *arr)
{
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e)
        srv_learn(e);
    /* A listening server missing from the list has gone (a reload closed it). */
    bool *seen = xcalloc((size_t)nsrvs, sizeof(bool));
    json_array_foreach(arr, i, e) {
        int idx = srv_find((uint64_t)json_integer_value(json_object_get(e, "id")));
        if (idx >= 0)
            seen[idx] = true;
    }
    for (int k = 0; k < nsrvs; k++)
        if (srvs[k].id && srvs[k].listening && !seen[k] && !srvs[k].core)
            srvs[k].listening = false;
    free(seen);
}

static void reply_checked(ctl_t *c, json_t *r, pending_t *p)
{
    bool ok = json_is_true(json_object_get(r, "ok"));
    const char *code = ok ? NULL
                          : json_string_value(json_object_get(json_object_get(r, "error"), "code"));
    countf("reply.%s.%s", op_names[p->op], ok ? "ok" : code ? code : "?");
    if (!ok) {
        if (!code || !code_allowed(p->op, code)) {
            char *t = json_dumps(r, JSON_COMPACT);
            fail("unexpected reply to %s: %s", op_names[p->op], t);
            free(t);
        }
        if (p->op == OP_LISTEN && p->srv >= 0)
            srvs[p->srv].listening = false;
        return;
    }
    switch (p->op) {
    case OP_SOCKETS: {
        json_t *arr = json_object_get(r, "sockets");
        if ((json_int_t)json_array_size(arr) > json_integer_value(json_object_get(r, "total")))
            fail("sockets: %zu listed but total says %lld", json_array_size(arr),
                 (long long)json_integer_value(json_object_get(r, "total")));
        learn_sockets(arr);
        break;
    }
    case OP_SERVERS:
        learn_servers(json_object_get(r, "servers"));
        break;
    case OP_LISTEN: {
        json_t *o = json_object_get(r, "server");
        uint64_t id = (uint64_t)json_integer_value(json_object_get(o, "id"));
        srv_t *v = &srvs[p->srv];
        if (!id) {
            fail("listen: reply without a server id");
            break;
        }
        int seen = srv_find(id);
        if (seen >= 0) {
            /* A `servers` reply on another client listed it first: keep that entry, and
             * retire ours (never a target, never counted). */
            if (v->limited_ms && !srvs[seen].limited_ms)
                srvs[seen].limited_ms = v->limited_ms;
            srvs[seen].ctl_extra = true;
            v->listening = false;
            v->closed_ms = 1;
            break;
        }
        v->port = (int)json_integer_value(json_object_get(json_object_get(o, "address"), "port"));
        srv_set_id(p->srv, id);
        break;
    }
    case OP_MOVE: {
        json_t *so = json_object_get(r, "socket");
        int t = (int)json_integer_value(json_object_get(so, "thread"));
        if (!json_is_integer(json_object_get(so, "thread")) || t != p->thread)
            fail("move to thread %d: the reply says thread %d", p->thread, t);
        if (p->stream)
            p->stream->moves++;
        break;
    }
    case OP_DESTROY:
        if (p->stream)
            p->stream->destroys++;
        if (p->credit) {
            if (ncredits == capcredits) {
                capcredits = capcredits ? capcredits * 2 : 64;
                credits = xrealloc(credits, capcredits * sizeof(*credits));
            }
            credits[ncredits++] = (credit_t){p->sent_ms, now_ms(), false};
        }
        break;
    case OP_REBALANCE:
        count_add("rebalance.moved", (uint64_t)json_integer_value(json_object_get(r, "moved")));
        break;
    case OP_CLOSE:
        if (p->srv >= 0 && srvs[p->srv].destroy_ms)
            srvs[p->srv].destroyed_ms = now_ms();
        break;
    case OP_GETCONN:
        if (json_integer_value(json_object_get(r, "count")) < 0)
            fail("getConnections: negative count");
        break;
    default:
        break;
    }
}

static void ctl_line(ctl_t *c, const char *line, size_t len)
{
    if (c->kind == H_MOVE_REPLY_HANGUP) {
        count("hostile.move-reply-hangup.replied");
        ctl_close(c); /* as netctl does: the reply read, the connection gone at once */
        return;
    }
    if (!is_checked(c->kind))
        return; /* garbage clients: replies read and dropped */
    json_error_t err;
    json_t *r = json_loadb(line, len, 0, &err);
    if (!r || !json_is_object(r)) {
        fail("control reply is not a JSON object: %.200s", line);
        json_decref(r);
        return;
    }
    if (ctl_npending(c) == 0) {
        fail("control reply to no request: %.200s", line);
        json_decref(r);
        return;
    }
    pending_t p = c->pend[c->phead++ % c->pcap];
    json_t *id = json_object_get(r, "id");
    if (!json_is_integer(id) || json_integer_value(id) != p.id) {
        char *t = json_dumps(r, JSON_COMPACT);
        fail("reply out of order on a %s client: expected id %lld (%s), got %.200s",
             ctl_names[c->kind], (long long)p.id, op_names[p.op], t);
        free(t);
    } else {
        reply_checked(c, r, &p);
    }
    json_decref(r);
    if (c->kind == CTL_ONESHOT && ctl_npending(c) == 0)
        ctl_close(c);
}

static void ctl_read(ctl_t *c)
{
    for (;;) {
        if (c->incap - c->inlen < 65536) {
            c->incap = c->incap ? c->incap * 2 : 131072;
            c->in = xrealloc(c->in, c->incap);
        }
        ssize_t n = recv(c->io.fd, c->in + c->inlen, c->incap - c->inlen, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (n <= 0) {
            /* A dying netd closes its sockets a moment before it can be reaped. */
            bool expected_eof = !is_checked(c->kind) && c->kind != H_MOVE_REPLY_HANGUP;
            for (int i = 0; i < 50 && !expected_eof && !netd_gone(); i++)
                sleep_ms(10);
            if (netd_gone()) {
                ctl_close(c); /* the death is the failure, reported once */
                return;
            }
            if (is_checked(c->kind)) {
                if (ctl_npending(c) > 0 || c->kind == CTL_REGULAR)
                    fail("netd closed a well-behaved control client (%s, %zu request(s) "
                         "unanswered): %s",
                         ctl_names[c->kind], ctl_npending(c), n == 0 ? "EOF" : strerror(errno));
            }
            if (c->kind == H_MOVE_REPLY_HANGUP)
                fail("move: netd closed the connection without a reply");
            ctl_close(c);
            return;
        }
        c->inlen += (size_t)n;
        size_t start = 0;
        for (;;) {
            char *nl = memchr(c->in + start, '\n', c->inlen - start);
            if (!nl)
                break;
            size_t l = (size_t)(nl - (c->in + start));
            *nl = '\0';
            ctl_line(c, c->in + start, l);
            if (c->closed)
                return;
            start += l + 1;
        }
        memmove(c->in, c->in + start, c->inlen - start);
        c->inlen -= start;
    }
}

static void ctl_on(io_t *io, uint32_t events)
{
    ctl_t *c = (ctl_t *)io;
    if (c->closed)
        return;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
        if (c->kind == H_PIPELINE_NOREAD || c->kind == H_WATCH_NOREAD) {
            ctl_close(c); /* netd hung up on a client that reads nothing: fine */
            return;
        }
        ctl_read(c);
    }
    if (!c->closed && (events & EPOLLOUT))
        ctl_flush(c);
}

/* ------------------------------------------------------------------ choosing targets */

/* A stream target: listening, with a TCP port, not closing. */
static int pick_stream_server(uint64_t r)
{
    int cand[512], n = 0;
    for (int i = 0; i < nsrvs && n < 512; i++) {
        srv_t *v = &srvs[i];
        if (v->id && v->listening && v->port > 0 && !v->closed_ms)
            cand[n++] = i;
    }
    return n ? cand[r % (uint64_t)n] : -1;
}

static int pick_ctl_extra(uint64_t r)
{
    int cand[64], n = 0;
    for (int i = 0; i < nsrvs && n < 64; i++)
        if (srvs[i].ctl_extra && srvs[i].id && srvs[i].listening && !srvs[i].closed_ms)
            cand[n++] = i;
    return n ? cand[r % (uint64_t)n] : -1;
}

static int count_ctl_extras(void)
{
    int n = 0;
    for (int i = 0; i < nsrvs; i++)
        if (srvs[i].ctl_extra && !srvs[i].closed_ms)
            n++;
    return n;
}

/* Mostly a listening server; now and then any server we ever knew (ENOSERVER then). */
static int pick_any_server(uint64_t r)
{
    int cand[512], n = 0;
    bool listening = (r >> 40) % 5 != 0;
    for (int i = nsrvs - 1; i >= 0 && n < 512; i--)
        if (srvs[i].id && (!listening || (srvs[i].listening && !srvs[i].closed_ms)))
            cand[n++] = i;
    return n ? cand[r % (uint64_t)n] : -1;
}

static json_t *server_ref(int idx, uint64_t r)
{
    /* By id or by name: both are accepted wherever a server is. */
    if (r & 1 || srvs[idx].closed_ms)
        return json_integer((json_int_t)srvs[idx].id);
    return json_string(srvs[idx].name);
}

static const char *const balances[] = {"leastconn", "roundrobin", "reuseport"};

/* ------------------------------------------------------------------ control operations */

static ctl_t *regular_client(uint64_t r)
{
    int i = (int)(r % NREGULAR);
    if (!regular[i])
        regular[i] = ctl_open(CTL_REGULAR, mix64(r));
    return regular[i];
}

static uint64_t listen_serial;

static void op_listen(ctl_t *c, rng_t *r, uint64_t pick)
{
    if (count_ctl_extras() >= MAX_CTL_EXTRAS)
        return;
    int idx = srv_add();
    srv_t *v = &srvs[idx];
    snprintf(v->name, sizeof(v->name), "x%" PRIu64, ++listen_serial);
    v->ctl_extra = true;
    v->listening = true;
    bool path = rng_pct(r, 15);
    json_t *req = json_pack("{s:s}", "name", v->name);
    if (path) {
        char p[108];
        snprintf(p, sizeof(p), "%s/%.24s.sock", N.dir, v->name);
        json_object_set_new(req, "path", json_string(p));
        json_object_set_new(req, "balance", json_string(balances[rng_below(r, 2)]));
    } else {
        json_object_set_new(req, "port", json_integer(0));
        json_object_set_new(req, "host", json_string("127.0.0.1"));
        json_object_set_new(req, "balance", json_string(balances[rng_below(r, 3)]));
    }
    v->proxy = rng_pct(r, 40);
    v->half_open = rng_pct(r, 50);
    json_object_set_new(req, "allowHalfOpen", json_boolean(v->half_open));
    if (v->proxy) {
        if (rng_pct(r, 50))
            json_object_set_new(req, "handler",
                                json_pack("{s:s, s:i, s:s}", "type", "proxy", "port", N.up_port,
                                          "host", "127.0.0.1"));
        else
            json_object_set_new(req, "handler",
                                json_pack("{s:s, s:s}", "type", "proxy", "path", N.upsock));
    } else {
        json_object_set_new(req, "handler", json_pack("{s:s}", "type", "echo"));
    }
    if (rng_pct(r, 10)) {
        json_object_set_new(req, "maxConnections", json_integer((json_int_t)rng_range(r, 1, 50)));
        v->limited_ms = now_ms();
    }
    pending_t *p = ctl_request(c, OP_LISTEN, req);
    if (p)
        p->srv = idx;
}

/* close goes on a connection of its own, not the regular client given: with wait, its
 * reply comes only once every connection of that server has ended, and the regular
 * clients' later requests would wait behind it. */
static void op_close(ctl_t *unused, rng_t *r, uint64_t pick)
{
    int idx = pick_ctl_extra(pick);
    if (idx < 0)
        return;
    ctl_t *c = ctl_open(CTL_ONESHOT, rng_next(r));
    if (!c)
        return;
    srv_t *v = &srvs[idx];
    bool destroy = rng_pct(r, 50);
    uint64_t now = now_ms();
    v->closed_ms = now;
    v->listening = false;
    if (destroy)
        v->destroy_ms = now;
    json_t *req = json_pack("{s:o, s:b}", "server", server_ref(idx, rng_next(r)), "destroy",
                            destroy);
    if (rng_pct(r, 30))
        json_object_set_new(req, "wait", json_false());
    pending_t *p = ctl_request(c, OP_CLOSE, req);
    if (p)
        p->srv = idx;
    ctl_flush(c);
}

static void op_set(ctl_t *c, rng_t *r, uint64_t pick)
{
    int idx = pick_ctl_extra(pick);
    json_t *req;
    if (idx < 0 || rng_pct(r, 20)) {
        /* A core server: values that change nothing, so its streams stay strict. */
        idx = pick_any_server(pick);
        if (idx < 0 || !srvs[idx].core)
            return;
        req = json_pack("{s:o, s:n, s:i}", "server", server_ref(idx, rng_next(r)), "maxConnections",
                        "timeout", 0);
    } else {
        srv_t *v = &srvs[idx];
        req = json_pack("{s:o}", "server", server_ref(idx, rng_next(r)));
        if (rng_pct(r, 70)) {
            if (rng_pct(r, 50)) {
                json_object_set_new(req, "maxConnections", json_null());
            } else {
                json_object_set_new(req, "maxConnections",
                                    json_integer((json_int_t)rng_range(r, 1, 100)));
                if (!v->limited_ms)
                    v->limited_ms = now_ms();
            }
        }
        if (rng_pct(r, 40)) {
            unsigned t = rng_pct(r, 50) ? 0 : (unsigned)rng_range(r, 300, 3000);
            json_object_set_new(req, "timeout", json_integer(t));
            if (t && !v->timeout_ms)
                v->timeout_ms = now_ms();
        }
    }
    ctl_request(c, OP_SET, req);
}

/* A socket to move: most often one of a live stream of ours (a listing goes stale
 * fast), otherwise anything listed, proxy upstreams and the upstream servers' sockets
 * included. */
static known_t *pick_known(rng_t *r, uint64_t pick)
{
    if (!nknown)
        return NULL;
    if (rng_pct(r, 60)) {
        size_t start = (size_t)(pick % nknown);
        for (size_t i = 0; i < nknown; i++) {
            known_t *k = &known[(start + i) % nknown];
            if (k->stream && !k->stream->ended)
                return k;
        }
    }
    return &known[pick % nknown];
}

static void move_one(ctl_t *c, known_t *k, int thread)
{
    pending_t *p = ctl_request(
        c, OP_MOVE, json_pack("{s:I, s:i}", "socket", (json_int_t)k->id, "thread", thread));
    if (p) {
        p->thread = thread;
        p->stream = k->stream;
    }
}

/* One move, or a storm: many sockets to one thread, pipelined, which also gives the
 * next rebalance something to do. */
static void op_move(ctl_t *c, rng_t *r, uint64_t pick)
{
    if (!nknown)
        return;
    int thread = (int)rng_below(r, NTHREADS);
    if (rng_pct(r, 20)) {
        int n = (int)rng_range(r, 5, 20);
        count("move.storm");
        for (int i = 0; i < n && ctl_npending(c) < MAX_PENDING; i++)
            move_one(c, pick_known(r, rng_next(r)), thread);
        return;
    }
    move_one(c, pick_known(r, pick), thread);
}

/*
 * destroy: only sockets whose ending we can account for. A client socket of one of our
 * streams marks that stream; a proxy's upstream leg (or the upstream server's side of it)
 * belongs to a stream we cannot name from the listing, so it becomes a credit that may
 * explain one proxied stream's early end, or that of a direct stream to the upstream
 * server (its socket there looks the same until the listing matches it). Anything else
 * is left alone.
 */
static void op_destroy(ctl_t *c, rng_t *r, uint64_t pick)
{
    if (rng_pct(r, 10) || !nknown) {
        ctl_request(c, OP_DESTROY, json_pack("{s:I}", "socket", (json_int_t)(1ULL << 52)));
        return;
    }
    known_t *k = &known[pick % nknown];
    bool credit = false;
    if (!k->stream) {
        if (k->srv < 0)
            return;
        srv_t *v = &srvs[k->srv];
        if (!(k->upstream_role && v->proxy) && !(v->upstream && !k->upstream_role))
            return;
        credit = true;
    }
    pending_t *p = ctl_request(c, OP_DESTROY, json_pack("{s:I}", "socket", (json_int_t)k->id));
    if (p) {
        p->stream = k->stream;
        p->credit = credit;
    }
    if (k->stream)
        k->stream->destroy_tries++;
    count(credit ? "destroy.upstream-side" : "destroy.stream");
}

static void op_sockets(ctl_t *c, rng_t *r, uint64_t pick)
{
    json_t *req = json_pack("{s:s}", "role", "all");
    if (rng_pct(r, 10)) {
        int idx = pick_any_server(pick);
        if (idx >= 0)
            json_object_set_new(req, "server", server_ref(idx, rng_next(r)));
    }
    if (rng_pct(r, 10))
        json_object_set_new(req, "limit", json_integer((json_int_t)rng_range(r, 0, 50)));
    ctl_request(c, OP_SOCKETS, req);
}

static void op_rebalance(ctl_t *c, rng_t *r, uint64_t pick)
{
    json_t *req = json_object();
    int idx = rng_pct(r, 50) ? pick_any_server(pick) : -1;
    if (idx >= 0)
        json_object_set_new(req, "server", server_ref(idx, rng_next(r)));
    ctl_request(c, OP_REBALANCE, req);
}

static void op_on_server(ctl_t *c, rng_t *r, uint64_t pick, enum op op)
{
    int idx = pick_any_server(pick);
    if (idx >= 0)
        ctl_request(c, op, json_pack("{s:o}", "server", server_ref(idx, rng_next(r))));
}

static void op_getconn(ctl_t *c, rng_t *r, uint64_t pick)
{
    op_on_server(c, r, pick, OP_GETCONN);
}

static void op_server(ctl_t *c, rng_t *r, uint64_t pick)
{
    op_on_server(c, r, pick, OP_SERVER);
}

static void op_servers(ctl_t *c, rng_t *r, uint64_t pick)
{
    ctl_request(c, OP_SERVERS, json_object());
}

static void op_stats(ctl_t *c, rng_t *r, uint64_t pick)
{
    ctl_request(c, OP_STATS, json_object());
}

static void op_metrics(ctl_t *c, rng_t *r, uint64_t pick)
{
    ctl_request(c, OP_METRICS, json_object());
}

static void op_ping(ctl_t *c, rng_t *r, uint64_t pick)
{
    ctl_request(c, OP_PING, json_object());
}

static void op_help(ctl_t *c, rng_t *r, uint64_t pick)
{
    ctl_request(c, OP_HELP, json_object());
}

/* The mix of control operations, in percent of the control ticks. */
static const struct {
    unsigned weight;
    const char *name; /* for --without */
    void (*fn)(ctl_t *c, rng_t *r, uint64_t pick);
} control_mix[] = {
    {12, "sockets", op_sockets},    {30, "move", op_move},
    {6, "rebalance", op_rebalance}, {10, "destroy", op_destroy},
    {5, "listen", op_listen},       {4, "set", op_set},
    {4, "close", op_close},         {6, "getConnections", op_getconn},
    {6, "servers", op_servers},     {2, "server", op_server},
    {5, "stats", op_stats},         {3, "metrics", op_metrics},
    {5, "ping", op_ping},           {2, "help", op_help},
};

static void op_control(uint64_t a, uint64_t b, uint64_t pick)
{
    rng_t r = {b};
    ctl_t *c = regular_client(a >> 48);
    if (!c || ctl_npending(c) >= MAX_PENDING) {
        count("ctl.skipped-busy");
        return;
    }
    unsigned total = 0;
    for (size_t i = 0; i < sizeof(control_mix) / sizeof(control_mix[0]); i++)
        total += control_mix[i].weight;
    unsigned w = (unsigned)((a >> 32) % total);
    for (size_t i = 0; i < sizeof(control_mix) / sizeof(control_mix[0]); i++) {
        if (w < control_mix[i].weight) {
            if (enabled(control_mix[i].name))
                control_mix[i].fn(c, &r, pick);
            break;
        }
        w -= control_mix[i].weight;
    }
    ctl_flush(c);
}

/* ------------------------------------------------------------------ hostile clients */

/* A request a hostile client may send: nothing that changes what our streams expect
 * (moves are harmless by contract; destroys and closes are not sent from here). */
static json_t *harmless_request(rng_t *r)
{
    switch (rng_below(r, 9)) {
    case 0:
        return json_pack("{s:s, s:s}", "cmd", "sockets", "role", "all");
    case 1:
        return json_pack("{s:s}", "cmd", "servers");
    case 2:
        return json_pack("{s:s}", "cmd", "stats");
    case 3:
        return json_pack("{s:s}", "cmd", "rebalance");
    case 4:
        if (nknown && enabled("hostile-moves"))
            return json_pack("{s:s, s:I, s:i}", "cmd", "move", "socket",
                             (json_int_t)known[rng_below(r, nknown)].id, "thread",
                             (int)rng_below(r, NTHREADS));
        return json_pack("{s:s}", "cmd", "ping");
    case 5:
        return json_pack("{s:s}", "cmd", "help");
    case 6:
        return json_pack("{s:s}", "cmd", "metrics");
    case 7: {
        int idx = pick_any_server(rng_next(r));
        if (idx >= 0)
            return json_pack("{s:s, s:I}", "cmd", "getConnections", "server",
                             (json_int_t)srvs[idx].id);
        return json_pack("{s:s}", "cmd", "ping");
    }
    default:
        return json_pack("{s:s, s:I}", "cmd", "destroy", "socket", (json_int_t)(1ULL << 52));
    }
}

static void write_json_line(ctl_t *c, json_t *req, rng_t *r)
{
    if (rng_pct(r, 70))
        json_object_set_new(req, "id", json_integer((json_int_t)rng_below(r, 1000000)));
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    ctl_write_raw(c, text, strlen(text));
    ctl_write_raw(c, "\n", 1);
    free(text);
}

/* One garbage line: the parser's edges, never longer than netd's 1 MiB line limit. */
static void write_garbage(ctl_t *c, rng_t *r)
{
    static char buf[200 * 1024];
    size_t n = 0;
    switch (rng_below(r, 10)) {
    case 0: /* raw bytes, NULs and invalid UTF-8 included */
        n = (size_t)rng_range(r, 1, 4096);
        for (size_t i = 0; i < n; i++) {
            buf[i] = (char)rng_below(r, 256);
            if (buf[i] == '\n')
                buf[i] = 'n';
        }
        break;
    case 1: /* deep nesting */
        n = (size_t)rng_range(r, 1, 20000);
        memset(buf, rng_pct(r, 50) ? '[' : '{', n);
        break;
    case 2: {
        static const char *const v[] = {"[1,2,3]",    "\"str\"",     "42",
                                        "null",       "true",        "{}",
                                        "{\"id\":1}", "{\"cmd\":7}", "{\"cmd\":null}"};
        n = (size_t)snprintf(buf, sizeof(buf), "%s", v[rng_below(r, 9)]);
        break;
    }
    case 3:
        n = (size_t)snprintf(buf, sizeof(buf), "{\"cmd\":\"frobnicate%u\"}",
                             (unsigned)rng_below(r, 100));
        break;
    case 4: {
        static const char *const v[] = {"{\"cmd\":\"move\",\"socket\":\"abc\",\"thread\":-1}",
                                        "{\"cmd\":\"move\",\"socket\":1,\"thread\":99}",
                                        "{\"cmd\":\"sockets\",\"limit\":-5}",
                                        "{\"cmd\":\"sockets\",\"role\":\"nobody\"}",
                                        "{\"cmd\":\"destroy\",\"socket\":0}",
                                        "{\"cmd\":\"getConnections\",\"server\":[1]}",
                                        "{\"cmd\":\"listen\",\"port\":70000}",
                                        "{\"cmd\":\"listen\",\"port\":0,\"balance\":\"random\"}",
                                        "{\"cmd\":\"set\",\"server\":\"nope\",\"timeout\":-1}",
                                        "{\"cmd\":\"close\",\"server\":\"no-such-server\"}",
                                        "{\"cmd\":\"ping\",\"extra\":1}",
                                        "{\"cmd\":\"watch\",\"events\":[\"bogus\"]}",
                                        "{\"cmd\":\"rebalance\",\"server\":18446744073709551615}",
                                        "{\"cmd\":\"shutdown\",\"timeoutMs\":\"soon\"}"};
        n = (size_t)snprintf(buf, sizeof(buf), "%s", v[rng_below(r, sizeof(v) / sizeof(v[0]))]);
        break;
    }
    case 5:
        n = (size_t)snprintf(buf, sizeof(buf), "{\"cmd\":\"ping\",\"cmd\":\"ping\"}");
        break;
    case 6:
        n = (size_t)snprintf(buf, sizeof(buf), "{\"cmd\":\"ping\",\"id\":\"\xff\xfe\xc0\"}");
        break;
    case 7: /* a long string */
        n = (size_t)rng_range(r, 1000, sizeof(buf) - 64);
        memcpy(buf, "{\"cmd\":\"ping\",\"id\":\"", 20);
        memset(buf + 20, 'a', n - 22);
        memcpy(buf + n - 2, "\"}", 2);
        break;
    case 8:
        n = (size_t)snprintf(buf, sizeof(buf), "\r\n\n \t\r");
        break;
    default:
        n = (size_t)snprintf(buf, sizeof(buf), "{\"cmd\":\"ping\",\"id\":%u}\r",
                             (unsigned)rng_below(r, 1000));
        break;
    }
    ctl_write_raw(c, buf, n);
    ctl_write_raw(c, "\n", 1);
}

static void op_hostile(uint64_t a, uint64_t b)
{
    if (nhostile >= MAX_HOSTILE) {
        count("hostile.skipped-max");
        return;
    }
    enum ctl_kind kind = (enum ctl_kind)(H_HANGUP_BEFORE_REPLY +
                                         (a >> 32) % (CTL__N - H_HANGUP_BEFORE_REPLY));
    if (!enabled(ctl_names[kind]) ||
        ((kind == H_AFTER_MOVE || kind == H_MOVE_REPLY_HANGUP) && !enabled("hostile-moves")))
        return;
    ctl_t *c = ctl_open(kind, b);
    if (!c)
        return;
    rng_t *r = &c->rng;
    uint64_t now = now_ms();
    switch (kind) {
    case H_HANGUP_BEFORE_REPLY: {
        int n = (int)rng_range(r, 1, 3);
        for (int i = 0; i < n; i++)
            write_json_line(c, harmless_request(r), r);
        ctl_flush(c);
        ctl_close(c);
        break;
    }
    case H_MIDLINE: {
        if (rng_pct(r, 50))
            write_json_line(c, harmless_request(r), r);
        json_t *req = harmless_request(r);
        char *text = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        size_t len = strlen(text);
        ctl_write_raw(c, text, (size_t)rng_range(r, 1, len - 1));
        free(text);
        ctl_flush(c);
        ctl_close(c);
        break;
    }
    case H_AFTER_MOVE:
    case H_MOVE_REPLY_HANGUP:
        if (!nknown) {
            ctl_close(c);
            break;
        }
        write_json_line(c,
                        json_pack("{s:s, s:I, s:i}", "cmd", "move", "socket",
                                  (json_int_t)known[rng_below(r, nknown)].id, "thread",
                                  (int)rng_below(r, NTHREADS)),
                        r);
        ctl_flush(c);
        if (kind == H_AFTER_MOVE)
            ctl_close(c);
        else
            c->close_at = now + REPLY_TIMEOUT_MS; /* a missing reply is a failure */
        break;
    case H_PIPELINE_NOREAD: {
        int n = (int)rng_range(r, 20, 400);
        for (int i = 0; i < n; i++)
            write_json_line(c, harmless_request(r), r);
        c->close_at = now + rng_range(r, 200, 3000);
        ctl_flush(c);
        break;
    }
    case H_WATCH_NOREAD:
        write_json_line(c,
                        rng_pct(r, 50)
                            ? json_pack("{s:s}", "cmd", "watch")
                            : json_pack("{s:s, s:[s]}", "cmd", "watch", "events", "close"),
                        r);
        c->close_at = now + rng_range(r, 300, 5000);
        ctl_flush(c);
        break;
    default: {
        int n = (int)rng_range(r, 1, 10);
        for (int i = 0; i < n; i++)
            write_garbage(c, r);
        c->close_at = now + rng_range(r, 50, 1000);
        ctl_flush(c);
        break;
    }
    }
}

/* ------------------------------------------------------------------ config and reloads */

typedef struct cfg_extra {
    bool present;
    int variant; /* handler, allowHalfOpen, balance: an index into a few combinations */
} cfg_extra_t;
static cfg_extra_t cfgx[NCFG_EXTRAS];

static json_t *core_servers(void)
{
    return json_pack(
        "[{s:s, s:i, s:s, s:s, s:{s:s}},"
        " {s:s, s:i, s:s, s:s, s:b, s:{s:s}},"
        " {s:s, s:s, s:b, s:{s:s}},"
        " {s:s, s:i, s:s, s:s, s:b, s:{s:s, s:i, s:s}},"
        " {s:s, s:i, s:s, s:s, s:b, s:{s:s, s:s}}]",
        "name", "echo", "port", 0, "host", "127.0.0.1", "balance", "leastconn", "handler", "type",
        "echo", "name", "up", "port", N.up_port, "host", "127.0.0.1", "balance", "roundrobin",
        "allowHalfOpen", 1, "handler", "type", "echo", "name", "upunix", "path", N.upsock,
        "allowHalfOpen", 1, "handler", "type", "echo", "name", "proxyH", "port", 0, "host",
        "127.0.0.1", "balance", "reuseport", "allowHalfOpen", 1, "handler", "type", "proxy", "port",
        N.up_port, "host", "127.0.0.1", "name", "proxyN", "port", 0, "host", "127.0.0.1", "balance",
        "leastconn", "allowHalfOpen", 0, "handler", "type", "proxy", "path", N.upsock);
}

static void write_config(bool with_extras)
{
    json_t *servers = core_servers();
    for (int i = 0; with_extras && i < NCFG_EXTRAS; i++) {
        if (!cfgx[i].present)
            continue;
        int v = cfgx[i].variant;
        char name[16];
        snprintf(name, sizeof(name), "cfg%d", i + 1);
        json_t *h = v % 2 ? json_pack("{s:s, s:i, s:s}", "type", "proxy", "port", N.up_port, "host",
                                      "127.0.0.1")
                          : json_pack("{s:s}", "type", "echo");
        json_array_append_new(servers,
                              json_pack("{s:s, s:i, s:s, s:s, s:b, s:o}", "name", name, "port", 0,
                                        "host", "127.0.0.1", "balance", balances[(v / 2) % 3],
                                        "allowHalfOpen", (v / 6) % 2, "handler", h));
    }
    json_t *cfg = json_pack("{s:i, s:i, s:{s:i}, s:o}", "threads", NTHREADS, "shutdownTimeoutMs",
                            10000, "control", "maxClients", 256, "servers", servers);
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof(tmp), "%s.new", N.config);
    if (json_dump_file(cfg, tmp, JSON_INDENT(1)) != 0 || rename(tmp, N.config) != 0) {
        fprintf(stderr, "chaos: cannot write %s: %s\n", N.config, strerror(errno));
        exit(2);
    }
    json_decref(cfg);
}

/* SIGHUP, sometimes with a rewritten file: config servers added, changed, removed. */
static void op_sighup(uint64_t a, uint64_t b)
{
    rng_t r = {b};
    if (!enabled("sighup"))
        return;
    if ((a >> 32) & 1) {
        uint64_t now = now_ms();
        for (int i = 0; i < NCFG_EXTRAS; i++) {
            cfg_extra_t next = {rng_pct(&r, 60), (int)rng_below(&r, 12)};
            bool changes = next.present != cfgx[i].present ||
                           (next.present && next.variant != cfgx[i].variant);
            if (changes && cfgx[i].present) {
                char name[16];
                snprintf(name, sizeof(name), "cfg%d", i + 1);
                int idx = srv_live_by_name(name);
                if (idx >= 0) {
                    srvs[idx].closed_ms = now; /* the reload closes it */
                    srvs[idx].listening = false;
                }
            }
            cfgx[i] = next;
        }
        write_config(true);
        count("sighup.rewritten");
    }
    count("sighup");
    kill(N.pid, SIGHUP);
}

/* ------------------------------------------------------------------ the run */

static rng_t g_rng;

static void tick(void)
{
    /* Three draws per tick, always: the sequence of decisions depends on the seed only. */
    uint64_t a = rng_next(&g_rng), b = rng_next(&g_rng), c = rng_next(&g_rng);
    /* a: bits 0-15 the action, 32-47 its variant, 48-63 which client; b seeds the new
     * object's own PRNG; c picks among what exists (servers, sockets). */
    unsigned what = (unsigned)((a & 0xffff) % 1000);
    if (what < 250) {
        if (nlive_streams >= MAX_STREAMS) {
            count("stream.skipped-max");
            return;
        }
        int idx = pick_stream_server(c);
        if (idx >= 0)
            stream_start(idx, b);
    } else if (what < 600) {
        op_control(a, b, c);
    } else if (what < 650) {
        op_hostile(a, b);
    } else if (what < 653) {
        op_sighup(a, b);
    }
}

/* Timers of streams and clients: paused readers resume, hostile clients hang up on time,
 * and nothing may wait longer than its deadline. */
static void sweep(void)
{
    uint64_t now = now_ms();
    for (stream_t *s = live_streams, *next; s; s = next) {
        next = s->live_next;
        if (s->pause_until && now >= s->pause_until) {
            s->pause_until = 0;
            stream_update_mask(s);
            stream_read(s);
            continue;
        }
        if (s->pace_ms && !s->connecting && s->chunk_left == 0 && now >= s->next_send_ms &&
            s->sent < s->total) {
            stream_pump(s);
            if (s->ended)
                continue;
        }
        const srv_t *v = &srvs[s->srv];
        if (v->destroyed_ms && now > v->destroyed_ms + 5000 * SLOW && !s->connecting) {
            /* CONTROL.md: close with destroy also destroys sockets in transit. */
            fail("stream %" PRIu64 " to %s still open %u ms after `close {\"destroy\": true}` "
                 "of its server was answered (sent %" PRIu64 ", %" PRIu64 " echoed, moved %d "
                 "time(s), local port %u)",
                 s->serial, srv_desc(s->srv), 5000 * SLOW, s->sent, s->recvd, s->moves, s->lport);
            stream_end(s, OUT_SURVIVED, 0);
            continue;
        }
        if (!s->pause_until && now > s->progress_ms && now - s->progress_ms > STALL_MS) {
            char evidence[512];
            stall_evidence(s, evidence, sizeof(evidence));
            fail("stream %" PRIu64 " to %s stalled: no progress for %u ms (%s; sent %" PRIu64
                 " of %" PRIu64 ", %" PRIu64 " echoed, moved %d time(s), ending %s%s%s, local port "
                 "%u); %s",
                 s->serial, srv_desc(s->srv), (unsigned)STALL_MS,
                 s->connecting ? "connecting" : "connected", s->sent, s->total, s->recvd, s->moves,
                 end_names[s->mode], s->shut ? ", FIN sent" : "", s->pace_ms ? ", trickle" : "",
                 s->lport, evidence);
            stream_end(s, OUT_STALLED, 0);
        }
    }
    if (!g_winding && now - lister_last_ms >= 100) {
        if (!lister)
            lister = ctl_open(CTL_LISTER, now);
        if (lister && ctl_npending(lister) == 0) {
            ctl_request(lister, OP_SOCKETS, json_pack("{s:s}", "role", "all"));
            ctl_flush(lister);
            lister_last_ms = now;
        }
    }
    for (ctl_t *c = ctls, *next; c; c = next) {
        next = c->next;
        if (is_checked(c->kind) && ctl_npending(c) > 0) {
            pending_t *p = &c->pend[c->phead % c->pcap];
            uint64_t limit = p->op == OP_CLOSE ? 4 * (uint64_t)REPLY_TIMEOUT_MS : REPLY_TIMEOUT_MS;
            if (now > p->sent_ms && now - p->sent_ms > limit) {
                fail("no reply to %s (id %lld) on a %s client after %" PRIu64 " ms",
                     op_names[p->op], (long long)p->id, ctl_names[c->kind], now - p->sent_ms);
                dump_stacks("a control request went unanswered");
                ctl_close(c);
                continue;
            }
        }
        if (c->close_at && now >= c->close_at) {
            if (c->kind == H_MOVE_REPLY_HANGUP)
                fail("move: no reply within %u ms (a client that hangs up after the reply)",
                     (unsigned)REPLY_TIMEOUT_MS);
            ctl_close(c);
        }
    }
}

static void dispatch(int timeout_ms)
{
    struct epoll_event evs[256];
    int n = epoll_wait(ep, evs, 256, timeout_ms);
    for (int i = 0; i < n; i++) {
        io_t *io = evs[i].data.ptr;
        if (io->fd >= 0)
            io->on(io, evs[i].events);
    }
    ctl_free_grave();
}

static bool g_died; /* netd ended before we stopped it */

static bool check_alive(void)
{
    if (g_unresponsive)
        return false; /* a hung netd: the stacks are printed; nothing more to learn */
    if (!netd_gone())
        return true;
    if (!g_died)
        fail("netd died during the run: %s", status_text(N.status));
    g_died = true;
    return false;
}

static bool run(unsigned seconds)
{
    uint64_t start = now_ms(), end = start + (uint64_t)seconds * 1000;
    uint64_t next_tick = start, next_sweep = start;
    while (check_alive()) {
        uint64_t now = now_ms();
        if (now >= end)
            return true;
        /* Late ticks run in a burst, so a slow machine gets the same number of decisions. */
        for (int burst = 0; now >= next_tick && burst < 50; burst++) {
            tick();
            next_tick += TICK_MS;
        }
        if (now > next_tick + 1000)
            next_tick = now;
        if (now >= next_sweep) {
            sweep();
            next_sweep = now + 10;
        }
        uint64_t wake = next_tick < next_sweep ? next_tick : next_sweep;
        dispatch(wake > now ? (int)(wake - now) : 0);
    }
    return false;
}

/* After the chaos: hostile clients hang up, regular ones get their replies, streams
 * finish on their own (RST and abandon ones end at their planned point). */
static bool wind_down(void)
{
    g_winding = true;
    /* Trickles send the rest at once: one started late may be planned to outlast the
     * deadline below. */
    for (stream_t *s = live_streams, *next; s; s = next) {
        next = s->live_next;
        s->pace_ms = 0;
        stream_pump(s);
    }
    for (ctl_t *c = ctls, *next; c; c = next) {
        next = c->next;
        if (!is_checked(c->kind))
            ctl_close(c);
    }
    ctl_free_grave();
    uint64_t deadline = now_ms() + STALL_MS + 5000;
    uint64_t next_sweep = 0;
    for (;;) {
        if (!check_alive())
            return false;
        bool waiting = nlive_streams > 0;
        for (ctl_t *c = ctls; c; c = c->next)
            waiting = waiting || ctl_npending(c) > 0;
        if (!waiting)
            break;
        uint64_t now = now_ms();
        if (now >= deadline) {
            for (stream_t *s = live_streams, *next; s; s = next) {
                next = s->live_next;
                fail("stream %" PRIu64 " to %s unfinished at the end (sent %" PRIu64 " of %" PRIu64
                     ", %" PRIu64 " echoed, ending %s%s, moved %d time(s), last seen as socket "
                     "%" PRIu64 " on thread %d)",
                     s->serial, srv_desc(s->srv), s->sent, s->total, s->recvd, end_names[s->mode],
                     s->shut ? ", FIN sent" : "", s->moves, s->netd_id, s->netd_thread);
                stream_end(s, OUT_UNFINISHED, 0);
            }
            for (ctl_t *c = ctls; c; c = c->next)
                if (ctl_npending(c) > 0)
                    fail("%zu control request(s) unanswered at the end (%s client, first: %s)",
                         ctl_npending(c), ctl_names[c->kind],
                         op_names[c->pend[c->phead % c->pcap].op]);
            break;
        }
        if (now >= next_sweep) {
            sweep();
            next_sweep = now + 50;
        }
        dispatch(20);
    }
    while (ctls)
        ctl_close(ctls);
    ctl_free_grave();
    return true;
}

/* ------------------------------------------------------------------ judging the streams */

static int by_to_ms(const void *a, const void *b)
{
    const credit_t *x = a, *y = b;
    return x->to_ms < y->to_ms ? -1 : x->to_ms > y->to_ms;
}

/*
 * Which early endings netd may cause. A stream that netd ended before its plan (EOF or
 * RST before every byte came back, a refused connect) is legitimate only when:
 *  - the test destroyed its socket (`destroy` answered destroyed:1), or
 *  - its server was closed with destroy:true before it ended, or
 *  - its server was closed (by `close` or by a reload) or had a maxConnections, and not
 *    one byte came back (never accepted, or rejected over the limit), or
 *  - its server had an idle timeout set, or
 *  - it half-closed through a proxy without allowHalfOpen (the upstream's answer after
 *    the client's FIN is lost by design: proxy.c), or
 *  - it was proxied and a destroy of a proxy's upstream-side socket ran during its life
 *    (each such destroy explains one stream at most).
 * Moves, rebalances, reloads that keep the server, hostile clients: never.
 */
static bool explained(const stream_t *s)
{
    const srv_t *v = &srvs[s->srv];
    if (s->destroys > 0)
        return true;
    if (v->destroy_ms && v->destroy_ms <= s->end_ms)
        return true;
    if (s->recvd == 0 && v->closed_ms && v->closed_ms <= s->end_ms)
        return true;
    if (s->recvd == 0 && v->limited_ms && v->limited_ms <= s->end_ms)
        return true;
    if (v->timeout_ms && v->timeout_ms <= s->end_ms)
        return true;
    if (s->mode == END_HALFCLOSE && s->shut && v->proxy && !v->half_open)
        return true;
    return false;
}

static void judge(bool netd_died)
{
    stream_t **open = NULL;
    size_t nopen = 0;
    uint64_t nstreams = 0, moved = 0;
    for (stream_t *s = all_streams; s; s = s->next) {
        nstreams++;
        moved += s->moves > 0;
        if (s->outcome != OUT_ABRUPT)
            continue;
        if (netd_died) {
            count("stream.abrupt.netd-died"); /* the death is the failure */
            continue;
        }
        if (explained(s)) {
            count("stream.abrupt.explained");
            continue;
        }
        open = xrealloc(open, (nopen + 1) * sizeof(*open));
        open[nopen++] = s;
    }
    count_add("stream.moved-at-least-once", moved);
    /* Credits against proxied streams alive while the destroy ran: earliest-ending first. */
    if (ncredits)
        qsort(credits, ncredits, sizeof(*credits), by_to_ms);
    for (size_t k = 0; k < ncredits; k++) {
        stream_t *best = NULL;
        size_t bi = 0;
        for (size_t i = 0; i < nopen; i++) {
            stream_t *s = open[i];
            /* A destroy of the upstream server's side may also have hit one of our direct
             * streams to it, when the listing had not matched that socket to it yet. */
            if (!s || !(srvs[s->srv].proxy || srvs[s->srv].upstream) ||
                s->start_ms > credits[k].to_ms || s->end_ms < credits[k].from_ms)
                continue;
            if (!best || s->end_ms < best->end_ms) {
                best = s;
                bi = i;
            }
        }
        if (best) {
            open[bi] = NULL;
            credits[k].used = true;
            count("stream.abrupt.upstream-destroyed");
        }
    }
    for (size_t i = 0; i < nopen; i++) {
        stream_t *s = open[i];
        if (!s)
            continue;
        fail("stream %" PRIu64 " to %s ended early without cause: %s after %" PRIu64 " of %" PRIu64
             " bytes echoed (%" PRIu64 " sent, ending %s%s%s, moved %d time(s), %d destroy(s) "
             "sent for it and refused, lived %" PRIu64 " ms, last seen as socket %" PRIu64
             " on thread %d, local port %u)",
             s->serial, srv_desc(s->srv), s->err ? strerror(s->err) : "EOF", s->recvd, s->total,
             s->sent, end_names[s->mode], s->shut ? ", FIN sent" : "",
             s->pace_ms ? ", trickle" : "", s->moves, s->destroy_tries, s->end_ms - s->start_ms,
             s->netd_id, s->netd_thread, s->lport);
    }
    free(open);
    count_add("stream.total", nstreams);
}

/* ------------------------------------------------------------------ startup and the end */

static bool netd_start(void)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        N.up_port = free_tcp_port();
        memset(cfgx, 0, sizeof(cfgx));
        write_config(false);
        netd_spawn();
        uint64_t deadline = now_ms() + 10000 * SLOW;
        while (now_ms() < deadline && !netd_gone()) {
            int fd = unix_connect(N.sock, false);
            if (fd >= 0) {
                N.ctl = fd;
                break;
            }
            sleep_ms(10);
        }
        if (N.ctl >= 0) {
            json_t *r = sync_ok(json_pack("{s:s}", "cmd", "ping"), "ping after startup");
            if (r) {
                json_decref(r);
                return true;
            }
        }
        if (!netd_gone()) {
            kill(N.pid, SIGKILL);
            waitpid(N.pid, &N.status, 0);
            N.exited = true;
        }
        say("netd did not start (attempt %d, %s); its stderr:", attempt + 1, status_text(N.status));
        print_stderr_tail(20);
        if (N.ctl >= 0)
            close(N.ctl);
        N.ctl = -1;
    }
    return false;
}

static bool learn_core(void)
{
    json_t *r = sync_ok(json_pack("{s:s}", "cmd", "servers"), "servers after startup");
    if (!r)
        return false;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(r, "servers"), i, e) {
        int idx = srv_learn(e);
        if (idx < 0)
            continue;
        srvs[idx].core = true;
        srvs[idx].upstream = !strcmp(srvs[idx].name, "up") || !strcmp(srvs[idx].name, "upunix");
    }
    json_decref(r);
    int ncore = 0;
    for (int k = 0; k < nsrvs; k++)
        ncore += srvs[k].core;
    if (ncore != 5) {
        fail("netd lists %d servers after startup, the config has 5", ncore);
        return false;
    }
    return true;
}

/* Polls cond() until it holds or the deadline passes. */
static bool wait_for(bool (*cond)(void), unsigned ms)
{
    uint64_t deadline = now_ms() + ms;
    for (;;) {
        if (cond())
            return true;
        if (now_ms() >= deadline || netd_gone())
            return false;
        sleep_ms(50);
    }
}

static char last_state[1024];

static bool only_core_servers(void)
{
    json_t *r = sync_call(json_pack("{s:s}", "cmd", "servers"), REPLY_TIMEOUT_MS, NULL);
    if (!r)
        return false;
    size_t i, n = 0, core = 0;
    json_t *e;
    last_state[0] = '\0';
    json_array_foreach(json_object_get(r, "servers"), i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        const char *st = json_string_value(json_object_get(e, "state"));
        size_t l = strlen(last_state);
        snprintf(last_state + l, sizeof(last_state) - l, "%s%s(%s)", n ? ", " : "", name, st);
        n++;
        int idx = srv_find((uint64_t)json_integer_value(json_object_get(e, "id")));
        if (idx >= 0 && srvs[idx].core && st && strcmp(st, "listening") == 0)
            core++;
    }
    json_decref(r);
    return n == 5 && core == 5;
}

static bool no_connections(void)
{
    last_state[0] = '\0';
    bool zero = true;
    for (int i = 0; i < nsrvs; i++) {
        if (!srvs[i].core)
            continue;
        json_t *r = sync_call(
            json_pack("{s:s, s:I}", "cmd", "getConnections", "server", (json_int_t)srvs[i].id),
            REPLY_TIMEOUT_MS, NULL);
        json_int_t n = r ? json_integer_value(json_object_get(r, "count")) : -1;
        json_decref(r);
        size_t l = strlen(last_state);
        snprintf(last_state + l, sizeof(last_state) - l, "%s=%lld ", srvs[i].name, (long long)n);
        zero = zero && n == 0;
    }
    json_t *r = sync_call(json_pack("{s:s, s:s, s:i}", "cmd", "sockets", "role", "all", "limit", 5),
                          REPLY_TIMEOUT_MS, NULL);
    json_int_t total = r ? json_integer_value(json_object_get(r, "total")) : -1;
    size_t l = strlen(last_state);
    char *t = r ? json_dumps(json_object_get(r, "sockets"), JSON_COMPACT) : NULL;
    snprintf(last_state + l, sizeof(last_state) - l, "sockets total=%lld %.600s", (long long)total,
             t ? t : "");
    free(t);
    json_decref(r);
    return zero && total == 0;
}

static bool fds_at_baseline(void)
{
    return count_fds(N.pid, NULL) == N.base_fds;
}

static void report_fd_difference(void)
{
    char **now = NULL;
    int n = count_fds(N.pid, &now);
    printf("chaos: netd's descriptors: %d after startup, %d now; new or changed:\n", N.base_fds, n);
    for (int i = 0; i < n; i++) {
        bool same = false;
        for (int k = 0; k < N.nbase_links && !same; k++)
            same = strcmp(now[i], N.base_links[k]) == 0;
        if (!same)
            printf("    %s\n", now[i]);
    }
    fflush(stdout);
    free_links(now, n);
}

/* A close that was not answered waits behind connections that did not end: a new setup
 * connection (the old one has the close queued), and what netd says of them. */
static void explain_close(const srv_t *v)
{
    if (N.ctl >= 0)
        close(N.ctl);
    N.clen = 0;
    N.ctl = unix_connect(N.sock, false);
    if (N.ctl < 0)
        return;
    json_t *r = sync_call(
        json_pack("{s:s, s:I, s:s}", "cmd", "sockets", "server", (json_int_t)v->id, "role", "all"),
        REPLY_TIMEOUT_MS, NULL);
    char *t = r ? json_dumps(r, JSON_COMPACT) : NULL;
    printf("chaos: %s still holds: %s\n", v->name, t ? t : "(no reply)");
    fflush(stdout);
    free(t);
    json_decref(r);
}

/* Everything that must hold once the chaos is over; netd is alive when this starts. */
static void final_checks(void)
{
    /* Servers the run opened go; the config goes back to the one netd started with. */
    for (int i = 0; i < nsrvs; i++) {
        srv_t *v = &srvs[i];
        if (!v->ctl_extra || !v->id || v->closed_ms)
            continue;
        v->closed_ms = now_ms();
        json_t *r = sync_call(json_pack("{s:s, s:I}", "cmd", "close", "server", (json_int_t)v->id),
                              4 * REPLY_TIMEOUT_MS, NULL);
        if (!r) {
            fail("close %s at the end: no reply", v->name);
            explain_close(v);
        } else if (!json_is_true(json_object_get(r, "ok"))) {
            char *t = json_dumps(r, JSON_COMPACT);
            fail("close %s at the end: %s", v->name, t);
            free(t);
        }
        json_decref(r);
    }
    write_config(false);
    kill(N.pid, SIGHUP);
    if (!wait_for(only_core_servers, SETTLE_MS) && check_alive())
        fail("after restoring the config, netd still lists: %s", last_state);
    if (!check_alive())
        return;
    if (!wait_for(no_connections, SETTLE_MS) && check_alive())
        fail("connections left once every client had gone: %s", last_state);
    if (!check_alive())
        return;
    if (!wait_for(fds_at_baseline, SETTLE_MS) && check_alive()) {
        fail("netd holds %d descriptors, %d after startup", count_fds(N.pid, NULL), N.base_fds);
        report_fd_difference();
    }
    if (!check_alive())
        return;
    json_t *r = sync_ok(json_pack("{s:s}", "cmd", "ping"), "ping at the end");
    json_decref(r);
}

static void stop_netd(void)
{
    if (netd_gone())
        return;
    kill(N.pid, SIGTERM);
    uint64_t deadline = now_ms() + 15000 * SLOW;
    while (!netd_gone() && now_ms() < deadline)
        sleep_ms(10);
    if (!netd_gone()) {
        fail("netd did not exit within %d ms of SIGTERM", 15000 * SLOW);
        kill(N.pid, SIGKILL);
        waitpid(N.pid, &N.status, 0);
        N.exited = true;
        return;
    }
    if (!WIFEXITED(N.status) || WEXITSTATUS(N.status) != 0)
        fail("netd's exit after SIGTERM: %s (expected exit status 0)", status_text(N.status));
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void free_all(void)
{
    for (stream_t *s = all_streams, *next; s; s = next) {
        next = s->next;
        free(s);
    }
    all_streams = NULL;
    free(srvs);
    free(srv_hash);
    free(credits);
    free(known);
    free(N.cbuf);
    free_links(N.base_links, N.nbase_links);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: chaos [--seed N] [--seconds N] [--netd PATH] [--without LIST] [--keep]\n"
            "  --seed N        the PRNG seed (default: random, printed)\n"
            "  --seconds N     how long the chaos lasts (default 20)\n"
            "  --netd PATH     the netd binary (default: src/daemon/netd of this build)\n"
            "  --without LIST  skip these operations (comma-separated): move, rebalance,\n"
            "                  destroy, listen, set, close, sockets, servers, server, stats,\n"
            "                  metrics, ping, help, getConnections, sighup, and the hostile\n"
            "                  clients hangup-before-reply, midline, hangup-after-move,\n"
            "                  move-reply-hangup, pipeline-noread, watch-noread, garbage;\n"
            "                  hostile-moves: no move from any hostile client\n"
            "  --keep          keep the temporary directory (config, netd's stderr)\n");
    exit(2);
}

static uint64_t random_seed(void)
{
    uint64_t s = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, &s, sizeof(s)) != (ssize_t)sizeof(s))
        s = (uint64_t)now_ms() ^ ((uint64_t)getpid() << 32);
    if (fd >= 0)
        close(fd);
    return s % 1000000000000ULL; /* short enough to type */
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    bool have_seed = false, keep = false;
    g_seconds = 20;
    const char *netd_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc && argv[i + 1][0]) {
            g_seed = strtoull(argv[++i], NULL, 10);
            have_seed = true;
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            i++; /* `make chaos` without SEED passes an empty one */
        } else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            g_seconds = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--netd") && i + 1 < argc) {
            netd_path = argv[++i];
        } else if (!strcmp(argv[i], "--without") && i + 1 < argc) {
            without_add(argv[++i]);
        } else if (!strcmp(argv[i], "--keep")) {
            keep = true;
        } else {
            usage();
        }
    }
    if (!have_seed)
        g_seed = random_seed();
    g_rng.s = g_seed;

    /* The build tree this binary belongs to: <build>/tests/chaos/chaos. */
    char exe[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    exe[l > 0 ? l : 0] = '\0';
    for (int up = 0; up < 3; up++) {
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = '\0';
    }
    snprintf(g_builddir, sizeof(g_builddir), "%s", exe);
    static char default_netd[PATH_MAX + 32];
    snprintf(default_netd, sizeof(default_netd), "%s/src/daemon/netd", g_builddir);
    static char abs_netd[PATH_MAX];
    N.path = netd_path ? netd_path : default_netd;
    if (realpath(N.path, abs_netd))
        N.path = abs_netd;

    snprintf(N.dir, sizeof(N.dir), "/tmp/netd-chaos-XXXXXX");
    if (!mkdtemp(N.dir)) {
        perror("chaos: mkdtemp");
        return 2;
    }
    snprintf(N.sock, sizeof(N.sock), "%s/netd.sock", N.dir);
    snprintf(N.upsock, sizeof(N.upsock), "%s/up.sock", N.dir);
    snprintf(N.config, sizeof(N.config), "%s/netd.json", N.dir);
    snprintf(N.errlog, sizeof(N.errlog), "%s/stderr.txt", N.dir);
    N.ctl = -1;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDNAMES");
    unsetenv("NETD_SOCKET");

    say("seed=%" PRIu64 " seconds=%u build=%s threads=%d netd=%s dir=%s", g_seed, g_seconds,
        BUILD_NAME, NTHREADS, N.path, N.dir);
    ep = epoll_create1(EPOLL_CLOEXEC);
    bool alive = netd_start() && learn_core();
    if (alive) {
        char proc_exe[64];
        snprintf(proc_exe, sizeof(proc_exe), "/proc/%d/exe", (int)N.pid);
        ssize_t n = readlink(proc_exe, N.exe, sizeof(N.exe) - 1);
        N.exe[n > 0 ? n : 0] = '\0';
        N.base_fds = count_fds(N.pid, &N.base_links);
        N.nbase_links = N.base_fds;
        say("netd pid %d up, %d descriptors", (int)N.pid, N.base_fds);
        alive = run(g_seconds) && wind_down();
    }
    if (alive)
        alive = check_alive();
    if (alive) {
        final_checks();
        if (check_alive())
            stop_netd();
    } else if (N.pid > 0 && !netd_gone()) {
        kill(N.pid, SIGKILL);
        waitpid(N.pid, &N.status, 0);
    }
    bool died = (N.exited && g_died) || g_unresponsive;
    if (sanitizer_reports() == 0 && died) {
        print_stderr_tail(30);
        if (N.exited && WIFSIGNALED(N.status))
            core_stacks();
    }
    judge(died);
    print_counters();
    while (ctls)
        ctl_close(ctls);
    ctl_free_grave();
    if (N.ctl >= 0)
        close(N.ctl);
    for (stream_t *s = live_streams; s; s = s->live_next)
        io_close(&s->io);
    close(ep);
    if (g_failures) {
        say("FAILED seed=%" PRIu64 ": %d failure(s); netd's stderr and config are kept in %s",
            g_seed, g_failures, N.dir);
        say("replay: make -C %s chaos SEED=%" PRIu64 " SECONDS=%u", g_builddir, g_seed, g_seconds);
    } else {
        say("PASS seed=%" PRIu64 " (%u s, %" PRIu64 " streams, %" PRIu64 " bytes verified)", g_seed,
            g_seconds, counter_get("stream.total"), counter_get("bytes.verified"));
        if (!keep)
            nftw(N.dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    }
    free_all();
    return g_failures ? 1 : 0;
}
