/* SPDX-License-Identifier: MIT */
/*
 * Seeing netd work, end to end against a real daemon: GET /metrics over HTTP and the
 * `metrics` command (the same text: per-server series by name, per-thread series, the
 * duration histogram, process_* figures), `watch` event fields, `sockets` --peer/--sort
 * and serverName, and the access log (its format, how each connection ended, reopen on
 * SIGHUP, lines dropped and counted when the writer cannot keep up).
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "netd_proc.h"

#define Q np_q

/* Polls cond every 10 ms until it holds; fails with the message after the (scaled)
 * default deadline. */
#define WAIT_UNTIL(cond, ...)                                                                      \
    do {                                                                                           \
        uint64_t dl_ = np_now_ms() + th_scale(NP_TIMEOUT_MS);                                      \
        while (!(cond)) {                                                                          \
            ck_assert_msg(np_now_ms() < dl_, __VA_ARGS__);                                         \
            np_pause_ms(10);                                                                       \
        }                                                                                          \
    } while (0)

/* ------------------------------------------------------------------ helpers */

/* The port of the HTTP endpoint, from netd's log line (port 0 in the tests). */
static int metrics_port(netd_proc_t *np)
{
    int port = 0;
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    while (port == 0) {
        const char *err = np_stderr(np); /* the test's pool */
        const char *p = strstr(err, "metrics: serving http://127.0.0.1:");
        if (p)
            port = atoi(p + strlen("metrics: serving http://127.0.0.1:"));
        ck_assert_msg(port > 0 || np_now_ms() < deadline, "no metrics line in netd's log:\n%s",
                      err);
        if (!port)
            np_pause_ms(10);
    }
    return port;
}

typedef struct http_reply {
    int status;
    char *raw;        /* the whole response */
    const char *body; /* inside raw */
    size_t body_len;
} http_reply_t;

static http_reply_t http(int port, const char *method, const char *path)
{
    int fd = np_tcp_connect(port);
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", method,
                     path);
    np_send_all(fd, req, (size_t)n);
    size_t cap = (size_t)4 << 20;
    http_reply_t r = {0};
    r.raw = calloc(1, cap + 1);
    ck_assert(r.raw != NULL);
    ssize_t got = np_recv_to_eof(fd, r.raw, cap);
    close(fd);
    ck_assert_msg(got > 0, "%s %s: no response", method, path);
    r.raw[got] = '\0';
    ck_assert_msg(sscanf(r.raw, "HTTP/1.%*d %d", &r.status) == 1, "not HTTP: %.80s", r.raw);
    char *sep = strstr(r.raw, "\r\n\r\n");
    ck_assert_msg(sep != NULL, "no end of headers: %.200s", r.raw);
    *sep = '\0';
    r.body = sep + 4;
    r.body_len = (size_t)got - (size_t)(r.body - r.raw);
    return r;
}

/* A response header's value ("" when absent), in a static buffer. */
static const char *header(const http_reply_t *r, const char *name)
{
    static char value[256];
    value[0] = '\0';
    size_t n = strlen(name);
    for (const char *p = strstr(r->raw, "\r\n"); p; p = strstr(p + 2, "\r\n")) {
        if (strncasecmp(p + 2, name, n) == 0 && p[2 + n] == ':') {
            const char *v = p + 2 + n + 1;
            while (*v == ' ')
                v++;
            size_t len = strcspn(v, "\r");
            snprintf(value, sizeof(value), "%.*s", (int)len, v);
            break;
        }
    }
    return value;
}

/* The value of one series ("name" or "name{labels}"), or -1 when it is not there. */
static double mval(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return -1;
}

/* process_start_time_seconds of whoever answers on port, or -1 when nobody does. */
static double start_time_on(int port)
{
    int fd = np_tcp_try_connect(port);
    if (fd < 0)
        return -1;
    close(fd);
    http_reply_t r = http(port, "GET", "/metrics");
    double v = mval(r.body, "process_start_time_seconds");
    free(r.raw);
    return v;
}

/* How many sample lines name this series (the format allows one). */
static int mcount(const char *text, const char *series)
{
    int count = 0;
    size_t n = strlen(series);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            count++;
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return count;
}

/* The `metrics` command's text (belongs to the reply pool). */
static const char *metrics(netd_proc_t *np)
{
    return np_jstr(np_ok(np_call(np, "{s:s}", "cmd", "metrics")), "text");
}

static double server_metric(netd_proc_t *np, const char *metric, const char *server)
{
    char series[256];
    snprintf(series, sizeof(series), "%s{server=\"%s\"}", metric, server);
    return mval(metrics(np), series);
}

/* Opens a client and proves it is served with one echo of `data`. */
static int echo_client(int port, const char *data)
{
    int fd = np_tcp_connect(port);
    np_echo_check(fd, data);
    return fd;
}

/* A whole file, NUL-terminated (malloc'd); NULL when it does not exist. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) {
            char *b = realloc(buf, cap * 2);
            if (!b)
                break;
            buf = b;
            cap *= 2;
        }
    }
    fclose(f);
    ck_assert(buf != NULL);
    buf[len] = '\0';
    return buf;
}

static int count_lines(const char *text)
{
    int n = 0;
    for (const char *p = text; p && *p; p++)
        n += *p == '\n';
    return n;
}

/* Lines in a file (0 when it does not exist). */
static int file_lines(const char *path)
{
    char *t = slurp(path);
    int n = t ? count_lines(t) : 0;
    free(t);
    return n;
}

/* One access-log line, parsed. */
typedef struct alog {
    char time[40], server[128], peer[80], end[32];
    long long socket, duration, in, out;
    int thread, moves;
} alog_t;

static alog_t parse_alog(const char *line)
{
    alog_t a;
    memset(&a, 0, sizeof(a));
    int n = sscanf(line,
                   "%39s %127s %79s socket=%lld thread=%d duration_ms=%lld in=%lld out=%lld "
                   "moves=%d end=%31s",
                   a.time, a.server, a.peer, &a.socket, &a.thread, &a.duration, &a.in, &a.out,
                   &a.moves, a.end);
    ck_assert_msg(n == 10, "access-log line not in the documented format (%d fields): %s", n, line);
    return a;
}

/* The line of the access log (text) whose peer is 127.0.0.1:port; asserted to be there
 * exactly once. */
static alog_t alog_for_port(const char *text, int port)
{
    char peer[64];
    snprintf(peer, sizeof(peer), " 127.0.0.1:%d ", port);
    const char *hit = strstr(text, peer);
    ck_assert_msg(hit != NULL, "no access-log line for %s in:\n%s", peer, text);
    ck_assert_msg(strstr(hit + 1, peer) == NULL, "two lines for %s in:\n%s", peer, text);
    const char *start = hit;
    while (start > text && start[-1] != '\n')
        start--;
    char line[1024];
    snprintf(line, sizeof(line), "%.*s", (int)strcspn(start, "\n"), start);
    return parse_alog(line);
}

/* Waits until the file holds at least n lines; returns its text (malloc'd). */
static char *wait_lines(const char *path, int n)
{
    WAIT_UNTIL(file_lines(path) >= n, "%s has %d lines, expected %d", path, file_lines(path), n);
    return slurp(path);
}

static json_int_t socket_thread(netd_proc_t *np, json_int_t id)
{
    json_t *r = np_ok(np_call(np, "{s:s, s:s}", "cmd", "sockets", "role", "all"));
    size_t i;
    json_t *s;
    json_array_foreach(np_jarr(r, "sockets"), i, s)
        if (np_jint(s, "id") == id)
            return np_jint(s, "thread");
    ck_abort_msg("socket %lld not listed", (long long)id);
    return -1;
}

/* ================================================================== HTTP */

#define CFG_METRICS "{'metrics':{'port':0},'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"

START_TEST(test_http_endpoint)
{
    netd_proc_t *np = np_start(Q(CFG_METRICS), 2);
    int mport = metrics_port(np);
    const char *version = np_jstr(np_ok(np_call(np, "{s:s}", "cmd", "ping")), "version");

    http_reply_t r = http(mport, "GET", "/metrics");
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(header(&r, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    ck_assert_msg(r.body_len > 0 && r.body[r.body_len - 1] == '\n', "the text ends with \\n");
    char build[128];
    snprintf(build, sizeof(build), "netd_build_info{version=\"%s\"}", version);
    ck_assert_msg(mval(r.body, build) == 1, "%s 1 missing:\n%s", build, r.body);
    ck_assert_msg(mval(r.body, "netd_server_connections{server=\"echo\"}") == 0, "%s", r.body);
    ck_assert_msg(strstr(r.body, "id=\"") == NULL, "a series still has an id label:\n%s", r.body);

    /* One generator: the command's text has the same families in the same order. */
    const char *cmd = metrics(np);
    char *a = r.body ? strdup(r.body) : NULL, *b = strdup(cmd);
    char *sa = NULL, *sb = NULL;
    char *la = strtok_r(a, "\n", &sa), *lb = strtok_r(b, "\n", &sb);
    int families = 0;
    for (;;) {
        while (la && strncmp(la, "# TYPE ", 7) != 0)
            la = strtok_r(NULL, "\n", &sa);
        while (lb && strncmp(lb, "# TYPE ", 7) != 0)
            lb = strtok_r(NULL, "\n", &sb);
        if (!la || !lb)
            break;
        ck_assert_str_eq(la, lb);
        families++;
        la = strtok_r(NULL, "\n", &sa);
        lb = strtok_r(NULL, "\n", &sb);
    }
    ck_assert_msg(!la && !lb, "the HTTP text and the metrics command differ in families");
    ck_assert_int_gt(families, 20);
    free(a);
    free(b);
    free(r.raw);

    /* A query string is fine; HEAD has the headers and no body. */
    r = http(mport, "GET", "/metrics?x=1");
    ck_assert_int_eq(r.status, 200);
    free(r.raw);
    r = http(mport, "HEAD", "/metrics");
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(header(&r, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    ck_assert_int_gt(atoi(header(&r, "Content-Length")), 1000);
    ck_assert_msg(r.body_len == 0, "HEAD came with %zu body bytes", r.body_len);
    free(r.raw);

    /* Other paths: 404; other methods: 405 naming the allowed ones. */
    r = http(mport, "GET", "/");
    ck_assert_int_eq(r.status, 404);
    free(r.raw);
    r = http(mport, "GET", "/metricsx");
    ck_assert_int_eq(r.status, 404);
    free(r.raw);
    static const char *const refused[] = {"POST", "PUT", "DELETE", "OPTIONS", "PATCH"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        r = http(mport, refused[i], "/metrics");
        ck_assert_msg(r.status == 405, "%s /metrics: %d", refused[i], r.status);
        ck_assert_str_eq(header(&r, "Allow"), "GET, HEAD");
        free(r.raw);
    }
    np_ok(np_call(np, "{s:s}", "cmd", "ping"));
}
END_TEST

/* Many scrapes at once share one collection; one whose client left before the answer
 * does no harm. */
START_TEST(test_http_concurrent_scrapes)
{
    netd_proc_t *np = np_start(Q(CFG_METRICS), 2);
    int mport = metrics_port(np);
    enum { N = 24 };
    int fds[N];
    const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for (int i = 0; i < N; i++) {
        fds[i] = np_tcp_connect(mport);
        np_send_all(fds[i], req, sizeof(req) - 1);
    }
    int gone = np_tcp_connect(mport);
    np_send_all(gone, req, sizeof(req) - 1);
    np_rst_close(gone);
    char *buf = malloc((size_t)1 << 20);
    ck_assert(buf != NULL);
    for (int i = 0; i < N; i++) {
        ssize_t n = np_recv_to_eof(fds[i], buf, ((size_t)1 << 20) - 1);
        close(fds[i]);
        ck_assert_msg(n > 0, "scrape %d: no answer", i);
        buf[n] = '\0';
        ck_assert_msg(strncmp(buf, "HTTP/1.1 200", 12) == 0, "scrape %d: %.40s", i, buf);
        ck_assert_msg(strstr(buf, "process_max_fds ") != NULL, "scrape %d: text cut short", i);
    }
    free(buf);
    np_ok(np_call(np, "{s:s}", "cmd", "ping"));
    http_reply_t r = http(mport, "GET", "/metrics");
    ck_assert_int_eq(r.status, 200);
    free(r.raw);
}
END_TEST

/* utime + stime of a process, in seconds. */
static double cpu_seconds(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    ck_assert(f != NULL);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    ck_assert(
        p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2);
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Out of descriptors, the endpoint rests instead of spinning on a listener that stays
 * readable, and serves again once descriptors are back. */
START_TEST(test_http_emfile_pause)
{
    netd_proc_t *np = np_start(Q(CFG_METRICS), 1);
    int mport = metrics_port(np);
    struct rlimit old, low;
    ck_assert(prlimit(np->pid, RLIMIT_NOFILE, NULL, &old) == 0);
    low = old;
    low.rlim_cur = (rlim_t)np_fd_count(np->pid) + 4;
    ck_assert(prlimit(np->pid, RLIMIT_NOFILE, &low, NULL) == 0);
    enum { N = 24 };
    int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = np_tcp_connect(mport); /* the kernel completes them; netd runs out */
    const char *err = NULL;
    WAIT_UNTIL(strstr(err = np_stderr(np), "metrics: accept: Too many open files") != NULL,
               "no pause logged; netd's log starts:\n%.1500s", err);
    double c0 = cpu_seconds(np->pid);
    np_pause_ms(1000); /* a second in which a spinning listener would burn a core */
    double used = cpu_seconds(np->pid) - c0;
    ck_assert_msg(used < 0.3, "netd used %.2f s of CPU in 1 s while out of descriptors", used);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    ck_assert(prlimit(np->pid, RLIMIT_NOFILE, &old, NULL) == 0);
    http_reply_t r = http(mport, "GET", "/metrics");
    ck_assert_int_eq(r.status, 200);
    free(r.raw);
}
END_TEST

/* A live upgrade: the new netd serves the same metrics port once the old one lets it go,
 * and the access log goes on in the same file. */
START_TEST(test_metrics_across_upgrade)
{
    ck_assert(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    int mport;
    close(np_tcp_listen(&mport)); /* a port that was free a moment ago */
    netd_proc_t *a = np_start(Q("{'metrics':{'port':%d},'accessLog':'access.log','servers':"
                                "[{'name':'echo','port':0,'host':'127.0.0.1','accessLog':true}]}",
                                mport),
                              2);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/access.log", a->dir);
    int port = np_server_port(a, "echo");
    int fd = echo_client(port, "before");
    http_reply_t r = http(mport, "GET", "/metrics");
    double start_a = mval(r.body, "process_start_time_seconds");
    free(r.raw);
    np_pause_ms(20); /* the new process starts measurably later */
    json_t *up = np_ok(np_call(a, "{s:s}", "cmd", "upgrade"));
    pid_t bpid = (pid_t)np_jint(up, "pid");
    ck_assert_int_eq(np_wait_exit(a, 10000), 0);
    netd_proc_t *b = np_adopt(a, bpid);
    b->ctl = np_client_open(b->sock);
    double start_b = -1;
    /* (between the old netd's exit and the new one's next try, nobody answers) */
    WAIT_UNTIL((start_b = start_time_on(mport)) > start_a,
               "port %d: no answer from the new netd (start %f, the old one's %f)", mport, start_b,
               start_a);
    r = http(mport, "GET", "/metrics");
    ck_assert_int_eq(mval(r.body, "netd_server_connections{server=\"echo\"}"), 1);
    ck_assert_int_eq(mval(r.body, "netd_server_accepted_total{server=\"echo\"}"), 1);
    free(r.raw);
    np_echo_check(fd, "after");
    close(fd);
    close(echo_client(port, "new"));
    char *text = wait_lines(path, 2);
    ck_assert_int_eq(count_lines(text), 2);
    free(text);
    np_ok(np_call(b, "{s:s}", "cmd", "ping"));
}
END_TEST

START_TEST(test_metrics_flag)
{
    /* Off by default: no endpoint, no line. */
    netd_proc_t *np = np_start(Q("{'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"), 2);
    const char *err = np_stderr(np);
    ck_assert_msg(strstr(err, "metrics: serving") == NULL, "metrics served by default:\n%s", err);
    np_stop(np);

    /* --metrics, over the config's own. */
    const char *args[] = {"--metrics", "127.0.0.1:0", NULL};
    np_opts_t o = {.config = Q("{'metrics':{'port':1},'servers':[]}"), .args = args};
    np = np_start_ex(&o);
    int mport = metrics_port(np);
    ck_assert_int_ne(mport, 1);
    http_reply_t r = http(mport, "GET", "/metrics");
    ck_assert_int_eq(r.status, 200);
    free(r.raw);
    np_stop(np);

    /* A flag that is not an address: usage error, exit 2. */
    const char *bad[] = {"--metrics", "127.0.0.1:http", NULL};
    np_opts_t ob = {.config = "{}", .args = bad, .no_wait = true};
    np = np_start_ex(&ob);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 2);
    err = np_stderr(np);
    ck_assert_msg(strstr(err, "--metrics") != NULL, "message: %s", err);
}
END_TEST

START_TEST(test_metrics_bind_fails)
{
    int taken_port;
    int taken = np_tcp_listen(&taken_port);
    np_opts_t o = {.config = Q("{'metrics':{'port':%d}}", taken_port), .no_wait = true};
    netd_proc_t *np = np_start_ex(&o);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 1);
    const char *err = np_stderr(np);
    ck_assert_msg(strstr(err, "metrics: cannot serve HTTP") != NULL, "message: %s", err);
    close(taken);
}
END_TEST

START_TEST(test_config_errors)
{
    static const struct {
        const char *config, *message;
    } cases[] = {
        {"{'metrics':{}}", "metrics.port: required"},
        {"{'metrics':{'port':'9108'}}", "metrics.port: must be an integer 0-65535"},
        {"{'metrics':{'port':70000}}", "metrics.port: must be an integer 0-65535"},
        {"{'metrics':{'port':1,'host':'no such host!'}}", "metrics.host:"},
        {"{'metrics':{'port':1,'path':'/x'}}", "metrics.path: unknown key"},
        {"{'metrics':9108}", "metrics: must be an object"},
        {"{'accessLog':5}", "accessLog: must be a file path"},
        {"{'accessLog':''}", "accessLog: must be a file path"},
        {"{'servers':[{'port':0,'accessLog':'yes'}]}",
         "servers[0].accessLog: must be true or false"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out = NULL;
        int st = np_check_config(Q("%s", cases[i].config), &out);
        ck_assert_msg(st == 2, "%s: exit %d (%s)", cases[i].config, st, out);
        ck_assert_msg(out && strstr(out, cases[i].message), "%s: message \"%s\" lacks \"%s\"",
                      cases[i].config, out, cases[i].message);
        free(out);
    }
    char *out = NULL;
    ck_assert_int_eq(np_check_config(Q("{'metrics':{'port':9108,'host':'::1'},'accessLog':null,"
                                       "'servers':[{'port':0,'accessLog':true}]}"),
                                     &out),
                     0);
    free(out);
    /* `listen` takes accessLog as a boolean only. */
    netd_proc_t *np = np_start("{}", 1);
    np_expect_error(np_ccall(np->ctl, "{'cmd':'listen','port':0,'accessLog':1}"), "EARG",
                    "accessLog");
    json_t *r = np_ok(np_ccall(np->ctl, "{'cmd':'listen','port':0,'host':'127.0.0.1',"
                                        "'name':'logged','accessLog':true}"));
    ck_assert(json_is_true(json_object_get(np_jobj(r, "server"), "accessLog")));
    r = np_ok(np_ccall(np->ctl, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'plain'}"));
    ck_assert(json_is_false(json_object_get(np_jobj(r, "server"), "accessLog")));
}
END_TEST

/* ================================================================== the figures */

START_TEST(test_server_metrics)
{
    netd_proc_t *np = np_start(Q("{'metrics':{'port':0},'servers':["
                                 "{'name':'echo','port':0,'host':'127.0.0.1'},"
                                 "{'name':'tiny','port':0,'host':'127.0.0.1','maxConnections':1,"
                                 "'timeout':150}]}"),
                               2);
    int eport = np_server_port(np, "echo"), tport = np_server_port(np, "tiny");
    int mport = metrics_port(np);
    int a = echo_client(eport, "0123456789");
    int b = echo_client(eport, "ab");
    int c = echo_client(eport, "xyz");
    const char *t = metrics(np);
    ck_assert_int_eq(mval(t, "netd_server_connections{server=\"echo\"}"), 3);
    ck_assert_int_eq(mval(t, "netd_server_accepted_total{server=\"echo\"}"), 3);
    ck_assert_int_eq(mval(t, "netd_server_bytes_read_total{server=\"echo\"}"), 15);
    ck_assert_int_eq(mval(t, "netd_server_bytes_written_total{server=\"echo\"}"), 15);
    ck_assert_int_eq(mval(t, "netd_server_connections{server=\"tiny\"}"), 0);
    /* Per thread: the connections of every thread add up. */
    double threads = mval(t, "netd_thread_connections{thread=\"0\"}") +
                     mval(t, "netd_thread_connections{thread=\"1\"}");
    ck_assert_int_eq(threads, 3);

    /* tiny: one served (then cut for idleness), one refused by maxConnections. */
    int t1 = np_tcp_connect(tport);
    np_echo_check(t1, "t");
    int t2 = np_tcp_connect(tport);
    ck_assert_int_eq(np_expect_eof(t2), 1);
    WAIT_UNTIL(server_metric(np, "netd_server_rejected_total", "tiny") == 1, "rejected: %g",
               server_metric(np, "netd_server_rejected_total", "tiny"));
    WAIT_UNTIL(server_metric(np, "netd_server_idle_timeout_total", "tiny") == 1,
               "idle timeouts of tiny: %g",
               server_metric(np, "netd_server_idle_timeout_total", "tiny"));
    ck_assert_int_eq(server_metric(np, "netd_server_idle_timeout_total", "echo"), 0);
    close(t1);
    close(t2);

    /* More bytes on a live connection count before it closes (the scrape settles them). */
    np_echo_check(a, "more bytes");
    ck_assert_int_eq(server_metric(np, "netd_server_bytes_read_total", "echo"), 25);

    /* Closed: the histogram counts them; le="+Inf" equals _count; the sum is at least the
     * time they were held. */
    np_pause_ms(60); /* held a known while, so the duration sum has a lower bound */
    close(a);
    close(b);
    close(c);
    WAIT_UNTIL(server_metric(np, "netd_server_connections", "echo") == 0, "connections of echo");
    http_reply_t r = http(mport, "GET", "/metrics");
    t = r.body;
    ck_assert_int_eq(mval(t, "netd_server_connection_duration_seconds_count{server=\"echo\"}"), 3);
    ck_assert_int_eq(
        mval(t, "netd_server_connection_duration_seconds_bucket{server=\"echo\",le=\"+Inf\"}"), 3);
    ck_assert_int_eq(
        mval(t, "netd_server_connection_duration_seconds_bucket{server=\"echo\",le=\"0.005\"}"), 0);
    double sum = mval(t, "netd_server_connection_duration_seconds_sum{server=\"echo\"}");
    ck_assert_msg(sum >= 0.18, "3 connections held >= 60 ms each: sum %g", sum);
    ck_assert_int_eq(mval(t, "netd_server_bytes_read_total{server=\"echo\"}"), 25);
    ck_assert_int_eq(mval(t, "netd_server_accepted_total{server=\"tiny\"}"), 1);
    /* Each series once, cumulative buckets never decrease. */
    ck_assert_int_eq(mcount(t, "netd_server_connections{server=\"echo\"}"), 1);
    double prev = 0;
    static const char *const les[] = {"0.005", "0.05", "0.5",  "1",     "5",     "15",  "60",
                                      "300",   "900",  "3600", "14400", "86400", "+Inf"};
    for (size_t i = 0; i < sizeof(les) / sizeof(les[0]); i++) {
        char series[160];
        snprintf(series, sizeof(series),
                 "netd_server_connection_duration_seconds_bucket{server=\"tiny\",le=\"%s\"}",
                 les[i]);
        double v = mval(t, series);
        ck_assert_msg(v >= prev, "%s = %g after %g", series, v, prev);
        prev = v;
    }
    ck_assert_int_eq(prev, 1); /* tiny's idle one; the refused one never counted */
    free(r.raw);
}
END_TEST

/* A reload that reopens a server keeps its series: one per name, counters continuing. */
START_TEST(test_metrics_name_survives_reopen)
{
    netd_proc_t *np = np_start(Q("{'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"), 2);
    int old_port = np_server_port(np, "echo");
    int a = echo_client(old_port, "1234");
    np_write_config(np,
                    Q("{'servers':[{'name':'echo','port':0,'host':'127.0.0.1','backlog':100}]}"));
    np_signal(np, SIGHUP);
    WAIT_UNTIL(json_array_size(np_jarr(np_ok(np_call(np, "{s:s}", "cmd", "servers")), "servers")) ==
                   2,
               "the reload did not reopen echo");
    /* By name, `server` finds the old one (closing): the new one's port is in the list. */
    int new_port = 0;
    size_t i;
    json_t *o;
    json_array_foreach(np_jarr(np_ok(np_call(np, "{s:s}", "cmd", "servers")), "servers"), i, o) {
        if (strcmp(np_jstr(o, "state"), "listening") == 0)
            new_port = (int)np_jint(np_jobj(o, "address"), "port");
    }
    ck_assert_int_gt(new_port, 0);
    const char *t = metrics(np);
    ck_assert_int_eq(mcount(t, "netd_server_connections{server=\"echo\"}"), 1);
    ck_assert_int_eq(mval(t, "netd_server_connections{server=\"echo\"}"), 1);
    ck_assert_int_eq(mval(t, "netd_server_accepted_total{server=\"echo\"}"), 1);
    int b = echo_client(new_port, "56");
    t = metrics(np);
    ck_assert_int_eq(mval(t, "netd_server_connections{server=\"echo\"}"), 2);
    ck_assert_int_eq(mval(t, "netd_server_accepted_total{server=\"echo\"}"), 2);
    ck_assert_int_eq(mval(t, "netd_server_bytes_read_total{server=\"echo\"}"), 6);
    /* The old one ends: what it counted stays in the name's series. */
    close(a);
    WAIT_UNTIL(json_array_size(np_jarr(np_ok(np_call(np, "{s:s}", "cmd", "servers")), "servers")) ==
                   1,
               "the old echo did not close");
    t = metrics(np);
    ck_assert_int_eq(mcount(t, "netd_server_accepted_total{server=\"echo\"}"), 1);
    ck_assert_int_eq(mval(t, "netd_server_accepted_total{server=\"echo\"}"), 2);
    ck_assert_int_eq(mval(t, "netd_server_bytes_read_total{server=\"echo\"}"), 6);
    ck_assert_int_eq(mval(t, "netd_server_connection_duration_seconds_count{server=\"echo\"}"), 1);
    ck_assert_int_eq(mval(t, "netd_server_connections{server=\"echo\"}"), 1);
    close(b);
}
END_TEST

START_TEST(test_metrics_threads_and_moves)
{
    netd_proc_t *np = np_start(Q("{'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"), 2);
    int port = np_server_port(np, "echo");
    int fd = echo_client(port, "x");
    json_int_t id = np_socket_id_of(np, "echo", fd);
    json_int_t from = socket_thread(np, id), to = 1 - from;
    np_ok(np_call(np, "{s:s, s:I, s:I}", "cmd", "move", "socket", id, "thread", to));
    np_echo_check(fd, "after the move");
    const char *t = metrics(np);
    char s[128];
    snprintf(s, sizeof(s), "netd_thread_moves_out_total{thread=\"%lld\"}", (long long)from);
    ck_assert_int_eq(mval(t, s), 1);
    snprintf(s, sizeof(s), "netd_thread_moves_in_total{thread=\"%lld\"}", (long long)to);
    ck_assert_int_eq(mval(t, s), 1);
    snprintf(s, sizeof(s), "netd_thread_moves_in_total{thread=\"%lld\"}", (long long)from);
    ck_assert_int_eq(mval(t, s), 0);
    snprintf(s, sizeof(s), "netd_thread_connections{thread=\"%lld\"}", (long long)to);
    ck_assert_int_eq(mval(t, s), 1);
    snprintf(s, sizeof(s), "netd_thread_handoffs_total{thread=\"%lld\"}", (long long)from);
    ck_assert_int_eq(mval(t, s), 1);
    close(fd);
}
END_TEST

START_TEST(test_metrics_process)
{
    netd_proc_t *np = np_start(Q(CFG_METRICS), 2);
    json_t *st = np_ok(np_call(np, "{s:s}", "cmd", "stats"));
    int fds_before = np_fd_count(np->pid);
    const char *t = metrics(np);
    int fds_after = np_fd_count(np->pid);
    double open_fds = mval(t, "process_open_fds");
    ck_assert_msg(open_fds >= fds_before - 2 && open_fds <= fds_after + 2,
                  "process_open_fds %g, /proc says %d..%d", open_fds, fds_before, fds_after);
    ck_assert_int_eq(mval(t, "process_max_fds"), np_jint(st, "fdLimit"));
    double start = mval(t, "process_start_time_seconds");
    double now = (double)time(NULL);
    ck_assert_msg(start > now - 120 && start <= now + 1, "start %f, now %f", start, now);
    double rss = mval(t, "process_resident_memory_bytes");
    long kb = np_rss_kb(np->pid);
    ck_assert_msg(rss > 0.5 * (double)kb * 1024 && rss < 2.0 * (double)kb * 1024,
                  "resident %g bytes, VmRSS %ld kB", rss, kb);
    ck_assert_msg(mval(t, "process_cpu_seconds_total") >= 0, "no process_cpu_seconds_total");
}
END_TEST

/* ================================================================== watch */

static json_t *next_event(np_client_t *w, const char *want)
{
    json_t *e = np_client_recv(w, NP_TIMEOUT_MS);
    ck_assert_msg(strcmp(np_jstr(e, "event"), want) == 0, "expected %s, got %s", want,
                  np_json_str(e));
    return e;
}

START_TEST(test_watch_fields)
{
    netd_proc_t *np = np_start("{}", 2);
    np_client_t *w = np_connect(np);
    np_ok(np_ccall(w, "{'cmd':'watch'}"));
    uint64_t t0 = (uint64_t)time(NULL) * 1000 - 1000;
    json_t *r = np_ok(
        np_ccall(np->ctl, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'web'}"));
    json_int_t sid = np_jint(np_jobj(r, "server"), "id");
    int port = (int)np_jint(np_jobj(np_jobj(r, "server"), "address"), "port");
    json_t *e = next_event(w, "listening");
    ck_assert_int_eq(np_jint(e, "server"), sid);
    ck_assert_str_eq(np_jstr(e, "serverName"), "web");
    ck_assert_msg(np_jint(e, "timeMs") >= (json_int_t)t0, "timeMs %lld",
                  (long long)np_jint(e, "timeMs"));
    ck_assert_msg(json_object_get(e, "socket") == NULL, "a server event names no socket: %s",
                  np_json_str(e));

    int fd = echo_client(port, "hello");
    int fd_port = np_local_port(fd);
    e = next_event(w, "connection");
    json_int_t sock = np_jint(e, "socket");
    ck_assert_int_eq(sock, np_socket_id_of(np, "web", fd));
    ck_assert_str_eq(np_jstr(e, "serverName"), "web");
    ck_assert_int_eq(np_jint(e, "server"), sid);
    ck_assert_int_eq(np_jint(e, "thread"), socket_thread(np, sock));
    ck_assert_str_eq(np_jstr(e, "remoteAddress"), "127.0.0.1");
    ck_assert_int_eq(np_jint(e, "remotePort"), fd_port);
    json_int_t conn_ms = np_jint(e, "timeMs");
    uint64_t t1 = (uint64_t)time(NULL) * 1000 + 1000;
    ck_assert_msg(conn_ms >= (json_int_t)t0 && conn_ms <= (json_int_t)t1, "timeMs %lld not now",
                  (long long)conn_ms);
    ck_assert_msg(json_object_get(e, "durationMs") == NULL, "durationMs on a connection event");

    np_pause_ms(150); /* a known lifetime: durationMs has a lower bound */
    close(fd);
    e = next_event(w, "close");
    ck_assert_int_eq(np_jint(e, "socket"), sock);
    ck_assert_str_eq(np_jstr(e, "serverName"), "web");
    ck_assert_int_eq(np_jint(e, "remotePort"), fd_port);
    ck_assert_str_eq(np_jstr(e, "remoteAddress"), "127.0.0.1");
    ck_assert_msg(np_jint(e, "durationMs") >= 150, "durationMs %lld after 150 ms",
                  (long long)np_jint(e, "durationMs"));
    ck_assert_msg(np_jint(e, "timeMs") >= conn_ms + 150, "close timeMs %lld, connection %lld",
                  (long long)np_jint(e, "timeMs"), (long long)conn_ms);
    ck_assert_int_eq(np_jint(e, "bytesRead"), 5);
    ck_assert_int_eq(np_jint(e, "bytesWritten"), 5);
    ck_assert(json_is_false(json_object_get(e, "hadError")));

    /* A reset: the close says hadError. */
    fd = echo_client(port, "abc");
    e = next_event(w, "connection");
    int rport = (int)np_jint(e, "remotePort");
    np_rst_close(fd);
    e = next_event(w, "close");
    ck_assert_int_eq(np_jint(e, "remotePort"), rport);
    ck_assert(json_is_true(json_object_get(e, "hadError")));
    ck_assert_int_eq(np_jint(e, "bytesRead"), 3);
}
END_TEST

/* ================================================================== sockets */

START_TEST(test_sockets_peer_sort)
{
    netd_proc_t *np = np_start(Q("{'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"), 2);
    int port = np_server_port(np, "echo");
    char big[1001];
    memset(big, 'b', 1000);
    big[1000] = '\0';
    int c1 = echo_client(port, "0123456789"); /* oldest, 20 bytes each way in all */
    np_pause_ms(30);
    int c2 = echo_client(port, big); /* most bytes */
    np_pause_ms(30);
    int c3 = echo_client(port, "x"); /* newest */
    np_pause_ms(30);
    np_echo_check(c1, "!"); /* c1 active last: c2 is now the most idle */
    json_int_t i1 = np_socket_id_of(np, "echo", c1), i2 = np_socket_id_of(np, "echo", c2),
               i3 = np_socket_id_of(np, "echo", c3);

    static const struct {
        const char *sort;
        int order[3];
    } sorts[] = {{"bytes", {2, 1, 3}}, {"age", {1, 2, 3}}, {"idle", {2, 3, 1}}};
    json_int_t ids[4] = {0, i1, i2, i3};
    for (size_t k = 0; k < 3; k++) {
        json_t *r = np_ok(np_ccall(np->ctl, "{'cmd':'sockets','sort':'%s'}", sorts[k].sort));
        json_t *arr = np_jarr(r, "sockets");
        ck_assert_int_eq(json_array_size(arr), 3);
        for (size_t i = 0; i < 3; i++)
            ck_assert_msg(np_jint(json_array_get(arr, i), "id") == ids[sorts[k].order[i]],
                          "sort %s: position %zu is %s", sorts[k].sort, i, np_json_str(arr));
        ck_assert_str_eq(np_jstr(json_array_get(arr, 0), "serverName"), "echo");
    }
    /* The limit applies after the sort: the busiest one, out of 3. */
    json_t *r = np_ok(np_ccall(np->ctl, "{'cmd':'sockets','sort':'bytes','limit':1}"));
    ck_assert_int_eq(np_jint(r, "total"), 3);
    ck_assert_int_eq(np_jint(json_array_get(np_jarr(r, "sockets"), 0), "id"), i2);

    /* --peer: address and port pick one; the address alone all three. */
    r = np_ok(np_ccall(np->ctl, "{'cmd':'sockets','peer':'127.0.0.1:%d'}", np_local_port(c3)));
    ck_assert_int_eq(np_jint(r, "total"), 1);
    ck_assert_int_eq(np_jint(json_array_get(np_jarr(r, "sockets"), 0), "id"), i3);
    r = np_ok(np_ccall(np->ctl, "{'cmd':'sockets','peer':'127.0.0.1'}"));
    ck_assert_int_eq(np_jint(r, "total"), 3);
    r = np_ok(np_ccall(np->ctl, "{'cmd':'sockets','peer':'[::1]:%d'}", np_local_port(c3)));
    ck_assert_int_eq(np_jint(r, "total"), 0);
    r = np_ok(np_ccall(np->ctl, "{'cmd':'sockets','peer':'127.0.0.2'}"));
    ck_assert_int_eq(np_jint(r, "total"), 0);
    static const char *const bad_peers[] = {"bogus", "127.0.0.1:0", "127.0.0.1:x",
                                            "[::1",  "[::1]x",      ""};
    for (size_t i = 0; i < sizeof(bad_peers) / sizeof(bad_peers[0]); i++)
        np_expect_error(np_ccall(np->ctl, "{'cmd':'sockets','peer':'%s'}", bad_peers[i]), "EARG",
                        "peer");
    np_expect_error(np_ccall(np->ctl, "{'cmd':'sockets','sort':'size'}"), "EARG", "sort");
    np_expect_error(np_ccall(np->ctl, "{'cmd':'sockets','sort':1}"), "EARG", "sort");
    close(c1);
    close(c2);
    close(c3);
}
END_TEST

/* ================================================================== access log */

START_TEST(test_access_log_lines)
{
    netd_proc_t *np = np_start(Q("{'accessLog':'access.log','servers':["
                                 "{'name':'logged','port':0,'host':'127.0.0.1','accessLog':true},"
                                 "{'name':'quiet','port':0,'host':'127.0.0.1'}]}"),
                               1);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/access.log", np->dir);
    int lport = np_server_port(np, "logged"), qport = np_server_port(np, "quiet");
    /* quiet first: with one thread its lines, had it any, would come before. */
    int q = echo_client(qport, "quiet");
    close(q);
    enum { N = 5 };
    int fds[N], ports[N];
    json_int_t ids[N];
    static const char *const data[N] = {"a", "bb", "ccc", "dddd", "eeeee"};
    time_t before = time(NULL);
    for (int i = 0; i < N; i++) {
        fds[i] = echo_client(lport, data[i]);
        ports[i] = np_local_port(fds[i]);
        ids[i] = np_socket_id_of(np, "logged", fds[i]);
    }
    for (int i = 0; i < N; i++)
        close(fds[i]);
    char *text = wait_lines(path, N);
    ck_assert_int_eq(count_lines(text), N);
    for (int i = 0; i < N; i++) {
        alog_t a = alog_for_port(text, ports[i]);
        ck_assert_str_eq(a.server, "logged");
        ck_assert_int_eq(a.socket, ids[i]);
        ck_assert_int_eq(a.thread, 0);
        ck_assert_int_eq(a.in, (long long)strlen(data[i]));
        ck_assert_int_eq(a.out, (long long)strlen(data[i]));
        ck_assert_int_eq(a.moves, 0);
        ck_assert_str_eq(a.end, "FIN");
        ck_assert_msg(a.duration >= 0 && a.duration < 60000, "duration %lld", a.duration);
        /* 2025-01-31T12:00:00.123Z, now, in UTC */
        struct tm tm;
        memset(&tm, 0, sizeof(tm));
        const char *rest = strptime(a.time, "%Y-%m-%dT%H:%M:%S", &tm);
        ck_assert_msg(rest && rest[0] == '.' && strlen(rest) == 5 && rest[4] == 'Z',
                      "time \"%s\" is not ISO 8601 UTC with ms", a.time);
        time_t when = timegm(&tm);
        ck_assert_msg(when >= before - 1 && when <= time(NULL) + 1, "time %s is not now", a.time);
    }
    free(text);
    /* Nothing of quiet's, and the counters agree. */
    const char *t = metrics(np);
    ck_assert_int_eq(mval(t, "netd_access_log_lines_total"), N);
    ck_assert_int_eq(mval(t, "netd_access_log_dropped_total"), 0);
}
END_TEST

/* How each connection ended: FIN, RST, destroy, timeout, slow, upstream, and moves. */
START_TEST(test_access_log_endings)
{
    int dead_port;
    int dead = np_tcp_listen(&dead_port);
    close(dead); /* connects to it are refused */
    size_t text_len = (size_t)8 << 20;
    char *banner = malloc(text_len + 1);
    ck_assert(banner != NULL);
    memset(banner, 'b', text_len);
    banner[text_len] = '\0';
    char *cfg = NULL;
    ck_assert(
        asprintf(&cfg,
                 "{\"accessLog\": \"access.log\","
                 " \"limits\": {\"maxBufferedBytes\": 65536, \"stallMs\": 300},"
                 " \"servers\": ["
                 "{\"name\": \"echo\", \"port\": 0, \"host\": \"127.0.0.1\", \"accessLog\": true},"
                 "{\"name\": \"idle\", \"port\": 0, \"host\": \"127.0.0.1\", \"accessLog\": true,"
                 " \"timeout\": 150},"
                 "{\"name\": \"proxy\", \"port\": 0, \"host\": \"127.0.0.1\", \"accessLog\": true,"
                 " \"handler\": {\"type\": \"proxy\", \"port\": %d}},"
                 "{\"name\": \"banner\", \"port\": 0, \"host\": \"127.0.0.1\", \"accessLog\": true,"
                 " \"handler\": {\"type\": \"banner\", \"text\": \"%s\"}}]}",
                 dead_port, banner) > 0);
    free(banner);
    netd_proc_t *np = np_start(cfg, 2);
    free(cfg);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/access.log", np->dir);
    int eport = np_server_port(np, "echo");

    int fin = echo_client(eport, "fin");
    int rst = echo_client(eport, "rst");
    int des = echo_client(eport, "destroy");
    int mov = echo_client(eport, "move");
    int fin_port = np_local_port(fin), rst_port = np_local_port(rst), des_port = np_local_port(des),
        mov_port = np_local_port(mov);
    close(fin);
    np_rst_close(rst);
    np_ok(np_call(np, "{s:s, s:I}", "cmd", "destroy", "socket", np_socket_id_of(np, "echo", des)));
    ck_assert_int_eq(np_expect_eof(des), 1);
    close(des);
    json_int_t mid = np_socket_id_of(np, "echo", mov);
    np_ok(np_call(np, "{s:s, s:I, s:I}", "cmd", "move", "socket", mid, "thread",
                  1 - socket_thread(np, mid)));
    np_echo_check(mov, "moved");
    close(mov);

    int idle = np_tcp_connect(np_server_port(np, "idle"));
    int idle_port = np_local_port(idle);
    ck_assert_int_eq(np_expect_eof(idle), 1); /* cut after 150 ms */
    close(idle);

    int up = np_tcp_connect(np_server_port(np, "proxy"));
    int up_port = np_local_port(up);
    ck_assert_int_eq(np_expect_eof(up), 1);
    close(up);

    int slow = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 4096;
    setsockopt(slow, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)np_server_port(np, "banner"))};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert(connect(slow, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    int slow_port = np_local_port(slow);
    WAIT_UNTIL(server_metric(np, "netd_server_slow_destroyed_total", "banner") == 1,
               "the reader of nothing was not destroyed");
    close(slow);

    char *text = wait_lines(path, 7);
    const struct {
        const int *port;
        const char *server, *end;
        int moves;
    } want[] = {{&fin_port, "echo", "FIN", 0},      {&rst_port, "echo", "RST", 0},
                {&des_port, "echo", "destroy", 0},  {&mov_port, "echo", "FIN", 1},
                {&idle_port, "idle", "timeout", 0}, {&up_port, "proxy", "upstream", 0},
                {&slow_port, "banner", "slow", 0}};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        alog_t a = alog_for_port(text, *want[i].port);
        ck_assert_msg(strcmp(a.server, want[i].server) == 0 && strcmp(a.end, want[i].end) == 0 &&
                          a.moves == want[i].moves,
                      "expected %s end=%s moves=%d, got %s end=%s moves=%d", want[i].server,
                      want[i].end, want[i].moves, a.server, a.end, a.moves);
    }
    alog_t idle_line = alog_for_port(text, idle_port);
    ck_assert_msg(idle_line.duration >= 140, "idle cut after %lld ms", idle_line.duration);
    free(text);
    const char *t = metrics(np);
    ck_assert_int_eq(mval(t, "netd_server_idle_timeout_total{server=\"idle\"}"), 1);
    ck_assert_int_eq(mval(t, "netd_server_upstream_failed_total{server=\"proxy\"}"), 1);
    ck_assert_int_eq(mval(t, "netd_server_upstream_failed_total{server=\"echo\"}"), 0);
}
END_TEST

START_TEST(test_access_log_reopen)
{
    netd_proc_t *np = np_start(Q("{'accessLog':'access.log','servers':"
                                 "[{'name':'echo','port':0,'host':'127.0.0.1','accessLog':true}]}"),
                               2);
    char path[PATH_MAX + 32], rotated[PATH_MAX + 32], other[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/access.log", np->dir);
    snprintf(rotated, sizeof(rotated), "%s/access.log.1", np->dir);
    snprintf(other, sizeof(other), "%s/other.log", np->dir);
    int port = np_server_port(np, "echo");
    close(echo_client(port, "one"));
    free(wait_lines(path, 1));
    /* logrotate: move the file away, then SIGHUP. */
    ck_assert(rename(path, rotated) == 0);
    np_signal(np, SIGHUP);
    WAIT_UNTIL(access(path, F_OK) == 0, "SIGHUP did not reopen %s", path);
    int fd = echo_client(port, "two");
    int two = np_local_port(fd);
    close(fd);
    char *text = wait_lines(path, 1);
    alog_for_port(text, two);
    free(text);
    ck_assert_int_eq(file_lines(rotated), 1);
    /* A reload that names another file switches to it. */
    np_write_config(np, Q("{'accessLog':'other.log','servers':"
                          "[{'name':'echo','port':0,'host':'127.0.0.1','accessLog':true}]}"));
    np_signal(np, SIGHUP);
    WAIT_UNTIL(access(other, F_OK) == 0, "the reload did not open %s", other);
    close(echo_client(port, "three"));
    free(wait_lines(other, 1));
    ck_assert_int_eq(file_lines(path), 1);
    ck_assert_int_eq(file_lines(rotated), 1);
}
END_TEST

START_TEST(test_access_log_stderr)
{
    netd_proc_t *np = np_start(
        Q("{'servers':[{'name':'echo','port':0,'host':'127.0.0.1','accessLog':true}]}"), 2);
    int fd = echo_client(np_server_port(np, "echo"), "hi");
    int port = np_local_port(fd);
    close(fd);
    char want[64];
    snprintf(want, sizeof(want), " echo 127.0.0.1:%d socket=", port);
    const char *err = NULL; /* np_stderr's text belongs to the test's pool */
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    for (;;) {
        err = np_stderr(np);
        if (strstr(err, want) || np_now_ms() > deadline)
            break;
        np_pause_ms(10);
    }
    const char *hit = strstr(err, want);
    ck_assert_msg(hit != NULL, "no access-log line on stderr:\n%s", err);
    const char *start = hit;
    while (start > err && start[-1] != '\n')
        start--;
    ck_assert_msg(strncmp(start, "netd: access: ", 14) == 0, "line without netd's prefix: %.200s",
                  start);
    char line[512];
    snprintf(line, sizeof(line), "%.*s", (int)strcspn(start + 14, "\n"), start + 14);
    alog_t a = parse_alog(line);
    ck_assert_str_eq(a.end, "FIN");

    /* A name that needs quoting, and one longer than a line: each still one line. */
    char longname[3000];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    json_t *r = np_ok(np_call(np, "{s:s, s:i, s:s, s:s, s:b}", "cmd", "listen", "port", 0, "host",
                              "127.0.0.1", "name", "two words \"quoted\"", "accessLog", 1));
    int qport = (int)np_jint(np_jobj(np_jobj(r, "server"), "address"), "port");
    r = np_ok(np_call(np, "{s:s, s:i, s:s, s:s, s:b}", "cmd", "listen", "port", 0, "host",
                      "127.0.0.1", "name", longname, "accessLog", 1));
    int lport = (int)np_jint(np_jobj(np_jobj(r, "server"), "address"), "port");
    close(echo_client(qport, "q"));
    close(echo_client(lport, "l"));
    WAIT_UNTIL(strstr(err = np_stderr(np), "netd: access: ") &&
                   strstr(err, "\"two words \\\"quoted\\\"\" 127.0.0.1:") &&
                   strstr(err, "netd: access: 20") && strstr(err, "nnnnnnnnnn"),
               "no line for the quoted or the long name:\n%.2000s", err);
    for (const char *p = strstr(err, "nnnnnnnnnn"); p && *p && *p != '\n'; p++)
        ck_assert_msg(*p == 'n' || (unsigned char)*p >= 0x20, "control byte in the long line");
    np_ok(np_call(np, "{s:s}", "cmd", "ping"));
}
END_TEST

/* The writer blocked (a FIFO nobody reads): workers go on serving, lines past the bound
 * are dropped and counted, and once the reader drains, every line that was counted as
 * written arrives. */
START_TEST(test_access_log_drops_when_full)
{
    char dir[PATH_MAX], fifo[PATH_MAX + 16];
    np_mkdtemp(dir);
    snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
    ck_assert(mkfifo(fifo, 0600) == 0);
    int rd = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    ck_assert(rd >= 0);
    fcntl(rd, F_SETPIPE_SZ, 4096);
    netd_proc_t *np = np_start(Q("{'accessLog':'%s','servers':[{'name':'echo','port':0,"
                                 "'host':'127.0.0.1','accessLog':true}]}",
                                 fifo),
                               1);
    int port = np_server_port(np, "echo");
    const int n = NP_SANITIZED ? 1500 : 3000;
    for (int i = 0; i < n; i++)
        close(np_tcp_connect(port));
    double lines = 0, dropped = 0;
    WAIT_UNTIL((lines = mval(metrics(np), "netd_access_log_lines_total"),
                dropped = mval(metrics(np), "netd_access_log_dropped_total"), lines + dropped == n),
               "lines %g + dropped %g != %d connections", lines, dropped, n);
    ck_assert_msg(dropped > 0, "nothing dropped with the writer blocked (%g lines)", lines);
    ck_assert_msg(lines >= 100, "only %g lines kept: the bound is too tight", lines);
    /* The data plane never waited on the log. */
    int fd = echo_client(port, "still served");
    close(fd);
    WAIT_UNTIL((lines = mval(metrics(np), "netd_access_log_lines_total"),
                dropped = mval(metrics(np), "netd_access_log_dropped_total"),
                lines + dropped == n + 1),
               "the last connection's line is neither written nor dropped");
    /* Drain: every line counted as handed over arrives, whole. */
    size_t cap = (size_t)(lines + 10) * 256, len = 0;
    char *buf = malloc(cap + 1);
    ck_assert(buf != NULL);
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    int got = 0;
    while (got < (int)lines && np_now_ms() < deadline) {
        ssize_t k = read(rd, buf + len, cap - len);
        if (k > 0) {
            for (ssize_t i = 0; i < k; i++)
                got += buf[len + (size_t)i] == '\n';
            len += (size_t)k;
            continue;
        }
        struct pollfd p = {rd, POLLIN, 0};
        poll(&p, 1, 50);
    }
    buf[len] = '\0';
    ck_assert_msg(got == (int)lines, "read %d lines, %g counted as handed to the writer", got,
                  lines);
    char *save = NULL;
    for (char *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
        parse_alog(l);
    free(buf);
    close(rd);
    np_stop(np);
    unlink(fifo);
    rmdir(dir);
}
END_TEST

START_TEST(test_access_log_bad_path)
{
    np_opts_t o = {.config = "{\"accessLog\": \"/nonexistent-dir/x/access.log\"}", .no_wait = true};
    netd_proc_t *np = np_start_ex(&o);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 1);
    const char *err = np_stderr(np);
    ck_assert_msg(strstr(err, "/nonexistent-dir/x/access.log") != NULL, "message: %s", err);
}
END_TEST

/* ------------------------------------------------------------------ suite */

static Suite *observe_suite(void)
{
    Suite *s = suite_create("observe");
    TCase *tc = np_tcase(s, "http", 20);
    tcase_add_test(tc, test_http_endpoint);
    tcase_add_test(tc, test_http_concurrent_scrapes);
    tcase_add_test(tc, test_http_emfile_pause);
    tcase_add_test(tc, test_metrics_flag);
    tcase_add_test(tc, test_metrics_bind_fails);
    tcase_add_test(tc, test_config_errors);
    tc = np_tcase(s, "metrics", 20);
    tcase_add_test(tc, test_server_metrics);
    tcase_add_test(tc, test_metrics_name_survives_reopen);
    tcase_add_test(tc, test_metrics_threads_and_moves);
    tcase_add_test(tc, test_metrics_process);
    tcase_add_test(tc, test_metrics_across_upgrade);
    tc = np_tcase(s, "live", 20);
    tcase_add_test(tc, test_watch_fields);
    tcase_add_test(tc, test_sockets_peer_sort);
    tc = np_tcase(s, "access_log", 30);
    tcase_add_test(tc, test_access_log_lines);
    tcase_add_test(tc, test_access_log_endings);
    tcase_add_test(tc, test_access_log_reopen);
    tcase_add_test(tc, test_access_log_stderr);
    tcase_add_test(tc, test_access_log_drops_when_full);
    tcase_add_test(tc, test_access_log_bad_path);
    return s;
}

int main(void)
{
    return np_run_suite(observe_suite());
}
