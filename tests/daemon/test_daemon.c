/* SPDX-License-Identifier: MIT */
/*
 * netd end to end: a real daemon per test (port 0, a temporary control socket), driven
 * through its control socket and real TCP/unix clients, checked against the contract in
 * CONTROL.md: every command and its reply fields, every error code, the config file and
 * reload, the handlers, connection counts, drain, socket activation, sd_notify and the
 * control socket itself.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "netd_proc.h"
#include "protocol.h"

/* One echo server on loopback, port 0. */
#define CFG_ECHO "{'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"

/* ------------------------------------------------------------------ small helpers */

/* The shared shorthands (netd_proc.h) under the names this suite has always used. */
#define Q np_q
#define ccall np_ccall
#define parse np_parse
#define call(np, ...) np_ccall((np)->ctl, __VA_ARGS__)
#define jint np_jint
#define jstr np_jstr
#define jobj np_jobj
#define jarr np_jarr
#define server_obj np_server_obj
#define server_port np_server_port
#define get_connections np_get_connections

static void check_one_of(const char *what, const char *got, const char *const *allowed)
{
    for (int i = 0; allowed[i]; i++)
        if (strcmp(got, allowed[i]) == 0)
            return;
    ck_abort_msg("%s: unexpected value \"%s\"", what, got);
}

/* Every field of a Server object (CONTROL.md "Objects"), with its type. */
static void check_server_object(const json_t *s)
{
    static const char *const states[] = {"listening", "closing", "closed", NULL};
    static const char *const balances[] = {"leastconn", "roundrobin", "reuseport", NULL};
    ck_assert_msg(json_is_object(s), "server should be an object: %s", np_json_str(s));
    ck_assert_int_gt(jint(s, "id"), 0);
    ck_assert_msg(*jstr(s, "name"), "empty name");
    check_one_of("state", jstr(s, "state"), states);
    json_t *a = jobj(s, "address");
    if (json_object_get(a, "path")) {
        jstr(a, "path");
        ck_assert_msg(json_object_size(a) == 1, "a path address has only \"path\": %s",
                      np_json_str(a));
    } else {
        jstr(a, "address");
        static const char *const fams[] = {"IPv4", "IPv6", NULL};
        check_one_of("address.family", jstr(a, "family"), fams);
        json_int_t port = jint(a, "port");
        ck_assert_msg(port > 0 && port <= 65535, "address.port %lld", (long long)port);
    }
    jstr(jobj(s, "handler"), "type");
    check_one_of("balance", jstr(s, "balance"), balances);
    ck_assert_msg(json_is_boolean(json_object_get(s, "allowHalfOpen")), "allowHalfOpen: %s",
                  np_json_str(s));
    json_t *mc = json_object_get(s, "maxConnections");
    ck_assert_msg(mc && (json_is_null(mc) || json_is_integer(mc)), "maxConnections: %s",
                  np_json_str(s));
    ck_assert_int_ge(jint(s, "timeout"), 0);
    ck_assert_int_gt(jint(s, "backlog"), 0);
    static const char *const counters[] = {"connections", "acceptedTotal", "rejectedTotal",
                                           "bytesReadTotal", "bytesWrittenTotal", NULL};
    for (int i = 0; counters[i]; i++)
        ck_assert_msg(jint(s, counters[i]) >= 0, "%s < 0", counters[i]);
}

/* Every field of a Socket object. */
static void check_socket_object(const json_t *k)
{
    static const char *const states[] = {"open", "readOnly", "writeOnly", "closing", NULL};
    static const char *const roles[] = {"client", "upstream", NULL};
    ck_assert_msg(json_is_object(k), "socket should be an object: %s", np_json_str(k));
    ck_assert_int_gt(jint(k, "id"), 0);
    ck_assert_int_gt(jint(k, "server"), 0);
    ck_assert_int_ge(jint(k, "thread"), 0);
    /* nd_is_ip (libnetd) also keeps libnetd.so needed under --as-needed: the harness
     * archive, linked after it, uses it too. */
    ck_assert_msg(nd_is_ip(jstr(k, "remoteAddress")) == 4 || nd_is_ip(jstr(k, "remoteAddress")) == 6,
                  "remoteAddress is not an IP: %s", np_json_str(k));
    jint(k, "remotePort");
    jstr(k, "remoteFamily");
    ck_assert_msg(nd_is_ip(jstr(k, "localAddress")) != 0, "localAddress is not an IP: %s",
                  np_json_str(k));
    jint(k, "localPort");
    static const char *const nums[] = {"bytesRead", "bytesWritten", "bufferSize", "ageMs",
                                       "idleMs", NULL};
    for (int i = 0; nums[i]; i++)
        ck_assert_msg(jint(k, nums[i]) >= 0, "%s < 0", nums[i]);
    check_one_of("state", jstr(k, "state"), states);
    check_one_of("role", jstr(k, "role"), roles);
}

/* The Server object of a server (by name), from `server`. */
static json_int_t server_id(netd_proc_t *np, const char *name)
{
    return jint(server_obj(np, name), "id");
}

/* servers[].connections of the named server (-1: not listed). */
static json_int_t listed_connections(netd_proc_t *np, const char *name)
{
    json_t *arr = jarr(np_ok(np_call(np, "{s:s}", "cmd", "servers")), "servers");
    size_t i;
    json_t *s;
    json_array_foreach(arr, i, s) if (strcmp(jstr(s, "name"), name) == 0) return jint(s, "connections");
    return -1;
}

static json_t *stats(netd_proc_t *np)
{
    return np_ok(np_call(np, "{s:s}", "cmd", "stats"));
}

/* Polls a stats counter until it reaches min. */
static json_int_t wait_stat_ge(netd_proc_t *np, const char *key, json_int_t min)
{
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    for (;;) {
        json_int_t v = jint(stats(np), key);
        if (v >= min)
            return v;
        ck_assert_msg(np_now_ms() < deadline, "stats.%s stayed at %lld, expected >= %lld", key,
                      (long long)v, (long long)min);
        np_pause_ms(10);
    }
}

/* Polls until getConnections and servers[].connections both equal `want`; on the way
 * neither may leave [lo, hi]. */
static void wait_count(netd_proc_t *np, const char *name, json_int_t want, json_int_t lo,
                       json_int_t hi)
{
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    for (;;) {
        json_int_t a = get_connections(np, name);
        json_int_t b = listed_connections(np, name);
        ck_assert_msg(a >= lo && a <= hi, "getConnections %lld outside [%lld, %lld]",
                      (long long)a, (long long)lo, (long long)hi);
        ck_assert_msg(b >= lo && b <= hi, "servers[].connections %lld outside [%lld, %lld]",
                      (long long)b, (long long)lo, (long long)hi);
        if (a == want && b == want)
            return;
        ck_assert_msg(np_now_ms() < deadline,
                      "connections never reached %lld: getConnections %lld, servers %lld",
                      (long long)want, (long long)a, (long long)b);
        np_pause_ms(10);
    }
}

/* The sockets of a server (a `sockets` reply). */
static json_t *sockets_of(netd_proc_t *np, const char *name)
{
    return np_ok(np_call(np, "{s:s, s:s}", "cmd", "sockets", "server", name));
}

/* The one socket of the named server whose remotePort is the client's local port. */
static json_t *socket_of_client(netd_proc_t *np, const char *name, int client_fd)
{
    int lport = np_local_port(client_fd);
    json_t *arr = jarr(sockets_of(np, name), "sockets");
    size_t i;
    json_t *k;
    json_array_foreach(arr, i, k) if (jint(k, "remotePort") == lport) return k;
    ck_abort_msg("no socket with remotePort %d in %s", lport, np_json_str(arr));
    return NULL;
}

/* Opens a TCP client and proves netd serves it with one echo round trip. */
static int echo_client(int port)
{
    int fd = np_tcp_connect(port);
    np_echo_check(fd, "ping\n");
    return fd;
}

static int listen_tcp0(netd_proc_t *np, const char *name, const char *handler_json)
{
    json_t *r;
    if (handler_json)
        r = call(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'%s','handler':%s}",
                 name, handler_json);
    else
        r = call(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'%s'}", name);
    np_ok(r);
    return (int)jint(jobj(jobj(r, "server"), "address"), "port");
}

/* A data pattern whose every byte depends on its offset: order and loss show. */
static void pattern(char *buf, size_t len, size_t offset)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)('a' + (offset + i) % 26);
}

static bool str_in(const char *hay, const char *needle)
{
    return hay && strstr(hay, needle) != NULL;
}

/* sun_path = path (asserted to fit). */
static void sun_set(struct sockaddr_un *sa, const char *path)
{
    size_t n = strlen(path);
    ck_assert_msg(n < sizeof(sa->sun_path), "unix path too long: %s", path);
    memcpy(sa->sun_path, path, n + 1);
}

/* ------------------------------------------------------------------ sd_notify sockets */

typedef struct notify_sock {
    int fd;
    char env[160]; /* NOTIFY_SOCKET=... */
} notify_sock_t;

static void notify_open(notify_sock_t *n, bool abstract)
{
    static int counter;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    socklen_t len;
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ck_assert_msg(n->fd >= 0, "socket: %s", strerror(errno));
    if (abstract) {
        char name[80];
        snprintf(name, sizeof(name), "netd-test-notify-%d-%d", (int)getpid(), counter++);
        sa.sun_path[0] = '\0';
        memcpy(sa.sun_path + 1, name, strlen(name));
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
        snprintf(n->env, sizeof(n->env), "NOTIFY_SOCKET=@%s", name);
    } else {
        char dir[PATH_MAX];
        np_mkdtemp(dir);
        char path[PATH_MAX + 16];
        snprintf(path, sizeof(path), "%s/notify.sock", dir);
        sun_set(&sa, path);
        len = sizeof(sa);
        snprintf(n->env, sizeof(n->env), "NOTIFY_SOCKET=%s", sa.sun_path);
    }
    ck_assert_msg(bind(n->fd, (struct sockaddr *)&sa, len) == 0, "bind notify: %s",
                  strerror(errno));
}

/* Reads datagrams until one holds `needle` (as a whole line); fails after the deadline.
 * Earlier datagrams that do not match are skipped (STATUS= updates...). */
static void expect_notify(notify_sock_t *n, const char *needle)
{
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    char seen[2048] = "";
    for (;;) {
        int left = (int)((int64_t)deadline - (int64_t)np_now_ms());
        ck_assert_msg(left > 0, "no \"%s\" on NOTIFY_SOCKET; got: %s", needle, seen);
        struct pollfd pfd = {n->fd, POLLIN, 0};
        if (poll(&pfd, 1, left) <= 0)
            continue;
        char buf[1024];
        ssize_t len = recv(n->fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
        if (len <= 0)
            continue;
        buf[len] = '\0';
        strncat(seen, buf, sizeof(seen) - strlen(seen) - 2);
        strcat(seen, "|");
        /* Lines of the datagram. */
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
            if (strcmp(line, needle) == 0)
                return;
    }
}

/* ------------------------------------------------------------------ an upstream for proxy */

/* A small echo server on the test's side, in a thread: serves one connection at a time,
 * echoes until EOF, then writes "bye\n" and shuts its side down (so both half-closes
 * show), then closes. */
typedef struct upstream {
    int lfd;
    int port;
    char path[PATH_MAX];
    int stop[2];
    pthread_t th;
    atomic_int accepted, saw_eof;
} upstream_t;

static void *upstream_main(void *arg)
{
    upstream_t *u = arg;
    for (;;) {
        struct pollfd p[2] = {{u->lfd, POLLIN, 0}, {u->stop[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0)
            continue;
        if (p[1].revents)
            return NULL;
        int c = accept4(u->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        atomic_fetch_add(&u->accepted, 1);
        char buf[65536];
        for (;;) {
            struct pollfd q[2] = {{c, POLLIN, 0}, {u->stop[0], POLLIN, 0}};
            if (poll(q, 2, -1) < 0)
                continue;
            if (q[1].revents) {
                close(c);
                return NULL;
            }
            ssize_t n = recv(c, buf, sizeof(buf), 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n == 0) {
                atomic_fetch_add(&u->saw_eof, 1);
                send(c, "bye\n", 4, MSG_NOSIGNAL);
                shutdown(c, SHUT_WR);
                /* Wait for the far side to close (or the stop), then go. */
                for (;;) {
                    struct pollfd r[2] = {{c, POLLIN, 0}, {u->stop[0], POLLIN, 0}};
                    if (poll(r, 2, -1) < 0)
                        continue;
                    if (r[1].revents) {
                        close(c);
                        return NULL;
                    }
                    if (recv(c, buf, sizeof(buf), 0) <= 0)
                        break;
                }
                break;
            }
            if (n < 0)
                break;
            size_t off = 0;
            while (off < (size_t)n) {
                ssize_t w = send(c, buf + off, (size_t)n - off, MSG_NOSIGNAL);
                if (w <= 0)
                    break;
                off += (size_t)w;
            }
        }
        close(c);
    }
}

static void upstream_start(upstream_t *u, const char *unix_path)
{
    memset(u, 0, sizeof(*u));
    if (unix_path) {
        snprintf(u->path, sizeof(u->path), "%s", unix_path);
        u->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        sun_set(&sa, unix_path);
        ck_assert_msg(bind(u->lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind: %s",
                      strerror(errno));
        ck_assert(listen(u->lfd, 16) == 0);
    } else {
        u->lfd = np_tcp_listen(&u->port);
    }
    ck_assert(pipe2(u->stop, O_CLOEXEC) == 0);
    ck_assert(pthread_create(&u->th, NULL, upstream_main, u) == 0);
}

static void upstream_stop(upstream_t *u)
{
    ck_assert(write(u->stop[1], "x", 1) == 1);
    pthread_join(u->th, NULL);
    close(u->stop[0]);
    close(u->stop[1]);
    close(u->lfd);
}

/* ================================================================== commands */

START_TEST(test_ping)
{
    netd_proc_t *np = np_start("{}", 2);
    json_t *r = np_ok(np_call(np, "{s:s, s:i}", "cmd", "ping", "id", 7));
    ck_assert_int_eq(jint(r, "id"), 7);
    ck_assert_str_eq(jstr(r, "version"), NETD_VERSION_STRING);
    ck_assert_int_eq(jint(r, "pid"), np->pid);
    json_int_t up1 = jint(r, "uptimeMs");
    ck_assert_int_ge(up1, 0);
    np_pause_ms(30);
    json_int_t up2 = jint(np_ok(np_call(np, "{s:s}", "cmd", "ping")), "uptimeMs");
    ck_assert_msg(up2 >= up1 + 20, "uptimeMs should grow: %lld then %lld", (long long)up1,
                  (long long)up2);
}
END_TEST

/* id: any JSON value, echoed back unchanged, on success and on error. */
START_TEST(test_id_echoed)
{
    netd_proc_t *np = np_start("{}", 2);
    static const char *const ids[] = {"42", "'abc'", "{'k':[1,2,{'x':null}]}", "1.5", "true",
                                      "null", "[1,'two']", "-9007199254740993", NULL};
    for (int i = 0; ids[i]; i++) {
        const char *idtext = Q("%s", ids[i]);
        json_t *want = parse(Q("{'v':%s}", ids[i]));
        json_t *r = call(np, "{'id':%s,'cmd':'ping'}", idtext);
        np_ok(r);
        ck_assert_msg(json_equal(json_object_get(r, "id"), json_object_get(want, "v")),
                      "id %s came back as %s", idtext, np_json_str(json_object_get(r, "id")));
        r = call(np, "{'id':%s,'cmd':'no-such-command'}", idtext);
        np_expect_error(r, "ECOMMAND", NULL);
        ck_assert_msg(json_equal(json_object_get(r, "id"), json_object_get(want, "v")),
                      "id %s came back as %s in an error", idtext,
                      np_json_str(json_object_get(r, "id")));
        json_decref(want);
    }
}
END_TEST

START_TEST(test_listen_port0_fields)
{
    netd_proc_t *np = np_start("{}", 2);
    json_t *r = np_ok(call(np, "{'id':'L','cmd':'listen','port':0,'host':'127.0.0.1'}"));
    ck_assert_str_eq(jstr(r, "id"), "L");
    json_t *s = jobj(r, "server");
    check_server_object(s);
    ck_assert_str_eq(jstr(s, "state"), "listening");
    json_t *a = jobj(s, "address");
    ck_assert_str_eq(jstr(a, "address"), "127.0.0.1");
    ck_assert_str_eq(jstr(a, "family"), "IPv4");
    int port = (int)jint(a, "port");
    ck_assert_int_gt(port, 0);
    ck_assert_str_eq(jstr(jobj(s, "handler"), "type"), "echo");
    ck_assert_str_eq(jstr(s, "balance"), "leastconn");
    ck_assert(json_is_false(json_object_get(s, "allowHalfOpen")));
    ck_assert(json_is_null(json_object_get(s, "maxConnections")));
    ck_assert_int_eq(jint(s, "timeout"), 0);
    ck_assert_int_eq(jint(s, "backlog"), 511);
    ck_assert_int_eq(jint(s, "connections"), 0);
    ck_assert_int_eq(jint(s, "acceptedTotal"), 0);
    /* The real port serves echo (the default handler). */
    int fd = echo_client(port);
    close(fd);
}
END_TEST

START_TEST(test_listen_path)
{
    netd_proc_t *np = np_start("{}", 2);
    char path[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/l.sock", np->dir);
    json_t *r = np_ok(np_call(np, "{s:s, s:s}", "cmd", "listen", "path", path));
    json_t *s = jobj(r, "server");
    check_server_object(s);
    json_t *a = jobj(s, "address");
    ck_assert_str_eq(jstr(a, "path"), path);
    ck_assert_int_eq(json_object_size(a), 1);
    /* Without a name, a server is named after its address: the path. */
    ck_assert_str_eq(jstr(s, "name"), path);
    int fd = np_unix_connect(path);
    np_echo_check(fd, "over unix\n");
    close(fd);
}
END_TEST

START_TEST(test_listen_options)
{
    netd_proc_t *np = np_start("{}", 2);
    json_t *r = np_ok(call(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'opt',"
                               "'backlog':16,'handler':{'type':'banner','text':'hi\\n'},"
                               "'allowHalfOpen':true,'maxConnections':5,'timeout':60000,"
                               "'noDelay':false,'keepAlive':1000,'balance':'roundrobin'}"));
    json_t *s = jobj(r, "server");
    check_server_object(s);
    ck_assert_str_eq(jstr(s, "name"), "opt");
    ck_assert_int_eq(jint(s, "backlog"), 16);
    json_t *h = jobj(s, "handler");
    ck_assert_str_eq(jstr(h, "type"), "banner");
    ck_assert_str_eq(jstr(h, "text"), "hi\n");
    ck_assert(json_is_true(json_object_get(s, "allowHalfOpen")));
    ck_assert_int_eq(jint(s, "maxConnections"), 5);
    ck_assert_int_eq(jint(s, "timeout"), 60000);
    ck_assert_str_eq(jstr(s, "balance"), "roundrobin");
    int fd = np_tcp_connect((int)jint(jobj(s, "address"), "port"));
    char buf[16];
    ck_assert_int_eq(np_recv_to_eof(fd, buf, sizeof(buf)), 3);
    ck_assert(memcmp(buf, "hi\n", 3) == 0);
    close(fd);
}
END_TEST

START_TEST(test_listen_reuseport)
{
    netd_proc_t *np = np_start("{}", 2);
    json_t *r = np_ok(call(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'rp',"
                               "'balance':'reuseport'}"));
    json_t *s = jobj(r, "server");
    check_server_object(s);
    ck_assert_str_eq(jstr(s, "balance"), "reuseport");
    int port = (int)jint(jobj(s, "address"), "port");
    int fds[4];
    for (int i = 0; i < 4; i++)
        fds[i] = echo_client(port);
    ck_assert_int_eq(get_connections(np, "rp"), 4);
    for (int i = 0; i < 4; i++)
        close(fds[i]);
}
END_TEST

/* An entry without a name is named after its address ("127.0.0.1:8124"). */
START_TEST(test_listen_default_name)
{
    netd_proc_t *np = np_start("{}", 2);
    int port = th_free_port();
    json_t *r = np_ok(call(np, "{'cmd':'listen','port':%d,'host':'127.0.0.1'}", port));
    char want[64];
    snprintf(want, sizeof(want), "127.0.0.1:%d", port);
    ck_assert_str_eq(jstr(jobj(r, "server"), "name"), want);
    ck_assert_int_eq(server_port(np, want), port);
}
END_TEST

START_TEST(test_servers_list)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    char path[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/s.sock", np->dir);
    np_ok(np_call(np, "{s:s, s:s, s:s}", "cmd", "listen", "path", path, "name", "u"));
    json_t *arr = jarr(np_ok(call(np, "{'cmd':'servers','id':3}")), "servers");
    ck_assert_int_eq(json_array_size(arr), 2);
    size_t i;
    json_t *s;
    bool echo = false, u = false;
    json_array_foreach(arr, i, s)
    {
        check_server_object(s);
        echo = echo || strcmp(jstr(s, "name"), "echo") == 0;
        u = u || strcmp(jstr(s, "name"), "u") == 0;
    }
    ck_assert(echo && u);
    ck_assert_int_ne(jint(json_array_get(arr, 0), "id"), jint(json_array_get(arr, 1), "id"));
}
END_TEST

START_TEST(test_server_by_id_and_name)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    json_t *byname = server_obj(np, "echo");
    check_server_object(byname);
    json_int_t id = jint(byname, "id");
    json_t *byid = jobj(np_ok(np_call(np, "{s:s, s:I}", "cmd", "server", "server", id)), "server");
    check_server_object(byid);
    ck_assert_int_eq(jint(byid, "id"), id);
    ck_assert_str_eq(jstr(byid, "name"), "echo");
    /* getConnections and sockets take either too. */
    ck_assert_int_eq(jint(np_ok(np_call(np, "{s:s, s:I}", "cmd", "getConnections", "server", id)),
                          "count"),
                     0);
}
END_TEST

START_TEST(test_get_connections)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    ck_assert_int_eq(get_connections(np, "echo"), 0);
    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = echo_client(port);
        ck_assert_int_eq(get_connections(np, "echo"), i + 1);
    }
    json_t *s = server_obj(np, "echo");
    ck_assert_int_eq(jint(s, "connections"), 3);
    ck_assert_int_eq(jint(s, "acceptedTotal"), 3);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    wait_count(np, "echo", 0, 0, 3);
}
END_TEST

START_TEST(test_sockets_fields)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    json_int_t sid = server_id(np, "echo");
    int fd = np_tcp_connect(port);
    np_echo_check(fd, "hello");
    json_t *r = np_ok(call(np, "{'cmd':'sockets','id':'s'}"));
    ck_assert_int_eq(jint(r, "total"), 1);
    json_t *arr = jarr(r, "sockets");
    ck_assert_int_eq(json_array_size(arr), 1);
    json_t *k = json_array_get(arr, 0);
    check_socket_object(k);
    ck_assert_int_eq(jint(k, "server"), sid);
    ck_assert_str_eq(jstr(k, "remoteAddress"), "127.0.0.1");
    ck_assert_int_eq(jint(k, "remotePort"), np_local_port(fd));
    ck_assert_str_eq(jstr(k, "remoteFamily"), "IPv4");
    ck_assert_str_eq(jstr(k, "localAddress"), "127.0.0.1");
    ck_assert_int_eq(jint(k, "localPort"), port);
    ck_assert_int_eq(jint(k, "bytesRead"), 5);
    /* The echo reached us; the counter follows the write() that sent it. */
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    while (jint(k, "bytesWritten") < 5) {
        ck_assert_msg(np_now_ms() < deadline, "bytesWritten stays below 5: %s", np_json_str(k));
        np_pause_ms(10);
        k = socket_of_client(np, "echo", fd);
    }
    ck_assert_int_eq(jint(k, "bytesWritten"), 5);
    ck_assert_int_lt(jint(k, "thread"), 2);
    ck_assert_str_eq(jstr(k, "state"), "open");
    ck_assert_str_eq(jstr(k, "role"), "client");
    close(fd);
}
END_TEST

START_TEST(test_sockets_filter_server)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int p1 = server_port(np, "echo");
    int p2 = listen_tcp0(np, "two", NULL);
    int a = echo_client(p1), b = echo_client(p2), c = echo_client(p2);
    json_int_t id2 = server_id(np, "two");
    json_t *r = np_ok(call(np, "{'cmd':'sockets','server':'two'}"));
    ck_assert_int_eq(jint(r, "total"), 2);
    size_t i;
    json_t *k;
    json_array_foreach(jarr(r, "sockets"), i, k) ck_assert_int_eq(jint(k, "server"), id2);
    r = np_ok(call(np, "{'cmd':'sockets','server':%lld}", (long long)server_id(np, "echo")));
    ck_assert_int_eq(jint(r, "total"), 1);
    ck_assert_int_eq(jint(json_array_get(jarr(r, "sockets"), 0), "remotePort"), np_local_port(a));
    r = np_ok(call(np, "{'cmd':'sockets'}"));
    ck_assert_int_eq(jint(r, "total"), 3);
    ck_assert_int_eq(json_array_size(jarr(r, "sockets")), 3);
    close(a);
    close(b);
    close(c);
}
END_TEST

START_TEST(test_sockets_filter_limit)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    int fds[5];
    for (int i = 0; i < 5; i++)
        fds[i] = echo_client(port);
    json_t *r = np_ok(call(np, "{'cmd':'sockets','limit':2}"));
    ck_assert_int_eq(json_array_size(jarr(r, "sockets")), 2);
    ck_assert_int_eq(jint(r, "total"), 5); /* total: all matching, not the page */
    r = np_ok(call(np, "{'cmd':'sockets','limit':0}"));
    ck_assert_int_eq(json_array_size(jarr(r, "sockets")), 0);
    ck_assert_int_eq(jint(r, "total"), 5);
    r = np_ok(call(np, "{'cmd':'sockets','limit':100}"));
    ck_assert_int_eq(json_array_size(jarr(r, "sockets")), 5);
    for (int i = 0; i < 5; i++)
        close(fds[i]);
}
END_TEST

/* Polls `sockets` until the socket of client fd has `field` >= min. */
static void wait_socket_field(netd_proc_t *np, int fd, const char *field, json_int_t min)
{
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    for (;;) {
        json_int_t v = jint(socket_of_client(np, "echo", fd), field);
        if (v >= min)
            return;
        ck_assert_msg(np_now_ms() < deadline, "%s stayed at %lld", field, (long long)v);
        np_pause_ms(20);
    }
}

START_TEST(test_sockets_filter_older)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    int old = echo_client(port);
    wait_socket_field(np, old, "ageMs", 700);
    int young = echo_client(port);
    json_t *r = np_ok(call(np, "{'cmd':'sockets','olderThanMs':350}"));
    ck_assert_msg(jint(r, "total") == 1, "olderThanMs 350: %s", np_json_str(r));
    json_t *k = json_array_get(jarr(r, "sockets"), 0);
    ck_assert_int_eq(jint(k, "remotePort"), np_local_port(old));
    ck_assert_int_gt(jint(k, "ageMs"), 350);
    r = np_ok(call(np, "{'cmd':'sockets','olderThanMs':0}"));
    ck_assert_int_eq(jint(r, "total"), 2);
    r = np_ok(call(np, "{'cmd':'sockets','olderThanMs':3600000}"));
    ck_assert_int_eq(jint(r, "total"), 0);
    ck_assert_int_eq(json_array_size(jarr(r, "sockets")), 0);
    close(old);
    close(young);
}
END_TEST

START_TEST(test_sockets_filter_idle)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    int idle = echo_client(port);
    int busy = echo_client(port);
    wait_socket_field(np, idle, "idleMs", 700);
    np_echo_check(busy, "still here");
    json_t *r = np_ok(call(np, "{'cmd':'sockets','idleMoreThanMs':350}"));
    ck_assert_msg(jint(r, "total") == 1, "idleMoreThanMs 350: %s", np_json_str(r));
    json_t *k = json_array_get(jarr(r, "sockets"), 0);
    ck_assert_int_eq(jint(k, "remotePort"), np_local_port(idle));
    ck_assert_int_gt(jint(k, "idleMs"), 350);
    r = np_ok(call(np, "{'cmd':'sockets','idleMoreThanMs':3600000}"));
    ck_assert_int_eq(jint(r, "total"), 0);
    close(idle);
    close(busy);
}
END_TEST

START_TEST(test_sockets_filter_role)
{
    upstream_t up;
    netd_proc_t *np = np_start("{}", 2);
    upstream_start(&up, NULL);
    int port = listen_tcp0(np, "px", Q("{'type':'proxy','port':%d}", up.port));
    int fd = np_tcp_connect(port);
    np_echo_check(fd, "through the proxy");
    json_t *r = np_ok(call(np, "{'cmd':'sockets'}"));
    ck_assert_int_eq(jint(r, "total"), 1);
    ck_assert_str_eq(jstr(json_array_get(jarr(r, "sockets"), 0), "role"), "client");
    r = np_ok(call(np, "{'cmd':'sockets','role':'client'}"));
    ck_assert_int_eq(jint(r, "total"), 1);
    ck_assert_str_eq(jstr(json_array_get(jarr(r, "sockets"), 0), "role"), "client");
    r = np_ok(call(np, "{'cmd':'sockets','role':'upstream'}"));
    ck_assert_int_eq(jint(r, "total"), 1);
    json_t *u = json_array_get(jarr(r, "sockets"), 0);
    check_socket_object(u);
    ck_assert_str_eq(jstr(u, "role"), "upstream");
    ck_assert_int_eq(jint(u, "remotePort"), up.port);
    r = np_ok(call(np, "{'cmd':'sockets','role':'all'}"));
    ck_assert_int_eq(jint(r, "total"), 2);
    /* Upstreams are not counted in their server's connections. */
    ck_assert_int_eq(get_connections(np, "px"), 1);
    ck_assert_int_eq(listed_connections(np, "px"), 1);
    close(fd);
    upstream_stop(&up);
}
END_TEST

START_TEST(test_destroy)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    int keep = echo_client(port);
    int fd = echo_client(port);
    json_int_t id = jint(socket_of_client(np, "echo", fd), "id");
    json_t *r = np_ok(call(np, "{'cmd':'destroy','socket':%lld,'id':1}", (long long)id));
    ck_assert_int_eq(jint(r, "destroyed"), 1);
    ck_assert_int_eq(np_expect_eof(fd), 1);
    wait_count(np, "echo", 1, 1, 2);
    /* The other connection is untouched; the destroyed one is gone for good. */
    np_echo_check(keep, "untouched");
    np_expect_error(call(np, "{'cmd':'destroy','socket':%lld}", (long long)id), "ENOSOCKET", NULL);
    close(fd);
    close(keep);
}
END_TEST

START_TEST(test_move)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    int fd = echo_client(port);
    json_t *k = socket_of_client(np, "echo", fd);
    json_int_t id = jint(k, "id");
    int from = (int)jint(k, "thread"), to = 1 - from;

    /* Bytes in flight across the move: sent before it, unread, then more after it. */
    enum { PART = 48 * 1024 };
    char *out = malloc(2 * PART), *in = malloc(2 * PART);
    ck_assert(out && in);
    pattern(out, 2 * PART, 0);
    np_send_all(fd, out, PART);
    json_t *r = np_ok(call(np, "{'cmd':'move','socket':%lld,'thread':%d,'id':'m'}",
                           (long long)id, to));
    json_t *moved = jobj(r, "socket");
    check_socket_object(moved);
    ck_assert_int_eq(jint(moved, "id"), id);
    ck_assert_int_eq(jint(moved, "thread"), to);
    /* One reply per request: the next request gets its own. */
    r = np_ok(call(np, "{'cmd':'ping','id':'after-move'}"));
    ck_assert_msg(json_is_string(json_object_get(r, "id")) && strcmp(jstr(r, "id"), "after-move") == 0,
                  "move was answered twice: the ping got %s", np_json_str(r));
    np_send_all(fd, out + PART, PART);
    size_t got = np_recv_exact(fd, in, 2 * PART);
    ck_assert_msg(got == 2 * PART, "echo after the move: %zu of %d bytes", got, 2 * PART);
    ck_assert_msg(memcmp(in, out, 2 * PART) == 0, "bytes lost or reordered across the move");
    free(out);
    free(in);

    k = socket_of_client(np, "echo", fd);
    ck_assert_int_eq(jint(k, "thread"), to);
    ck_assert_int_eq(jint(k, "id"), id);
    ck_assert_int_eq(jint(k, "bytesRead"), 5 + 2 * PART);
    /* Moving to the thread it is on: nothing to do, still a success. */
    r = np_ok(call(np, "{'cmd':'move','socket':%lld,'thread':%d}", (long long)id, to));
    ck_assert_int_eq(jint(jobj(r, "socket"), "thread"), to);
    /* And back again. */
    r = np_ok(call(np, "{'cmd':'move','socket':%lld,'thread':%d}", (long long)id, from));
    ck_assert_int_eq(jint(jobj(r, "socket"), "thread"), from);
    np_echo_check(fd, "home again");
    /* A thread that does not exist. */
    np_expect_error(call(np, "{'cmd':'move','socket':%lld,'thread':2}", (long long)id), "EARG",
                    "thread");
    ck_assert_int_eq(get_connections(np, "echo"), 1);
    close(fd);
}
END_TEST

/* Every move gets exactly one reply, in order: a ping right after each one must get the
 * ping's reply. (A socket that arrives on its target thread before the fan-out reaches
 * that thread must not be answered twice.) */
START_TEST(test_move_replies_once)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int fd = echo_client(server_port(np, "echo"));
    json_t *k = socket_of_client(np, "echo", fd);
    json_int_t id = jint(k, "id");
    int at = (int)jint(k, "thread");
    enum { INFLIGHT = 16384 };
    char out[INFLIGHT], in[INFLIGHT];
    for (int i = 0; i < 40; i++) {
        at = 1 - at;
        /* Bytes in flight make the owner busy while the fan-out runs. */
        pattern(out, INFLIGHT, (size_t)i);
        np_send_all(fd, out, INFLIGHT);
        json_t *r = np_ok(call(np, "{'cmd':'move','socket':%lld,'thread':%d,'id':'move%d'}",
                               (long long)id, at, i));
        ck_assert_msg(strcmp(jstr(r, "id"), Q("move%d", i)) == 0, "move %d: reply %s", i,
                      np_json_str(r));
        ck_assert_int_eq(jint(jobj(r, "socket"), "thread"), at);
        r = np_ok(call(np, "{'cmd':'ping','id':'ping%d'}", i));
        ck_assert_msg(strcmp(jstr(r, "id"), Q("ping%d", i)) == 0,
                      "after move %d, the ping got another reply: %s", i, np_json_str(r));
        ck_assert_int_eq(np_recv_exact(fd, in, INFLIGHT), INFLIGHT);
        ck_assert_msg(memcmp(in, out, INFLIGHT) == 0, "move %d: echo corrupted", i);
    }
    np_echo_check(fd, "after 40 moves");
    close(fd);
}
END_TEST

/* Per-thread live connections from `sockets`. */
static void thread_counts(netd_proc_t *np, int *counts, int n)
{
    memset(counts, 0, sizeof(int) * (size_t)n);
    json_t *arr = jarr(np_ok(call(np, "{'cmd':'sockets'}")), "sockets");
    size_t i;
    json_t *k;
    json_array_foreach(arr, i, k)
    {
        int t = (int)jint(k, "thread");
        ck_assert_int_lt(t, n);
        counts[t]++;
    }
}

START_TEST(test_rebalance)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    int fds[8];
    for (int i = 0; i < 8; i++)
        fds[i] = echo_client(port);
    /* Everything onto thread 0. */
    json_t *arr = jarr(np_ok(call(np, "{'cmd':'sockets'}")), "sockets");
    size_t i;
    json_t *k;
    json_array_foreach(arr, i, k) if (jint(k, "thread") != 0)
        np_ok(call(np, "{'cmd':'move','socket':%lld,'thread':0}", (long long)jint(k, "id")));
    int counts[2];
    thread_counts(np, counts, 2);
    ck_assert_int_eq(counts[0], 8);
    ck_assert_int_eq(counts[1], 0);

    json_t *r = np_ok(call(np, "{'cmd':'rebalance','id':'rb'}"));
    ck_assert_int_ge(jint(r, "moved"), 3);
    thread_counts(np, counts, 2);
    ck_assert_msg(abs(counts[0] - counts[1]) <= 1, "after rebalance: %d and %d", counts[0],
                  counts[1]);
    /* The threads array of stats tells the same. */
    json_t *th = jarr(stats(np), "threads");
    json_int_t t0 = jint(json_array_get(th, 0), "connections");
    json_int_t t1 = jint(json_array_get(th, 1), "connections");
    ck_assert_msg(t0 + t1 == 8 && llabs(t0 - t1) <= 1, "stats.threads connections %lld and %lld",
                  (long long)t0, (long long)t1);
    for (int j = 0; j < 8; j++) {
        np_echo_check(fds[j], "after rebalance");
        close(fds[j]);
    }
    /* Balanced already: nothing moves. */
    wait_count(np, "echo", 0, 0, 8);
    ck_assert_int_eq(jint(np_ok(call(np, "{'cmd':'rebalance','server':'echo'}")), "moved"), 0);
}
END_TEST

START_TEST(test_set_max_connections)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    json_t *r = np_ok(call(np, "{'cmd':'set','server':'echo','maxConnections':2}"));
    json_t *s = jobj(r, "server");
    check_server_object(s);
    ck_assert_int_eq(jint(s, "maxConnections"), 2);
    int a = echo_client(port), b = echo_client(port);
    int c = np_tcp_connect(port);
    ck_assert_msg(np_expect_eof(c) == 1, "a connection over maxConnections should be closed");
    close(c);
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    while (jint(server_obj(np, "echo"), "rejectedTotal") < 1) {
        ck_assert_msg(np_now_ms() < deadline, "rejectedTotal did not rise");
        np_pause_ms(10);
    }
    ck_assert_int_ge(jint(stats(np), "rejectedTotal"), 1);
    ck_assert_int_eq(get_connections(np, "echo"), 2);
    np_echo_check(a, "still served");
    r = np_ok(call(np, "{'cmd':'set','server':'echo','maxConnections':null}"));
    ck_assert(json_is_null(json_object_get(jobj(r, "server"), "maxConnections")));
    int d = echo_client(port);
    ck_assert_int_eq(get_connections(np, "echo"), 3);
    close(a);
    close(b);
    close(d);
}
END_TEST

START_TEST(test_set_timeout)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    int before = echo_client(port);
    json_t *r = np_ok(call(np, "{'cmd':'set','server':'echo','timeout':200}"));
    ck_assert_int_eq(jint(jobj(r, "server"), "timeout"), 200);
    ck_assert_int_eq(jint(server_obj(np, "echo"), "timeout"), 200);
    int after = echo_client(port);
    /* Both idle: netd destroys them. */
    ck_assert_msg(np_expect_eof(before) == 1, "an idle connection (opened before set) lives on");
    ck_assert_msg(np_expect_eof(after) == 1, "an idle connection (opened after set) lives on");
    wait_stat_ge(np, "idleTimeoutTotal", 2);
    wait_count(np, "echo", 0, 0, 2);
    /* timeout 0: none. */
    r = np_ok(call(np, "{'cmd':'set','server':'echo','timeout':0}"));
    ck_assert_int_eq(jint(jobj(r, "server"), "timeout"), 0);
    close(before);
    close(after);
}
END_TEST

START_TEST(test_stats)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 3);
    int port = server_port(np, "echo");
    int a = echo_client(port), b = echo_client(port); /* 5 bytes each way, each */
    json_t *r = np_ok(call(np, "{'cmd':'stats','id':'st'}"));
    ck_assert_int_eq(jint(r, "pid"), np->pid);
    ck_assert_str_eq(jstr(r, "version"), NETD_VERSION_STRING);
    ck_assert_int_ge(jint(r, "uptimeMs"), 0);
    ck_assert_int_eq(jint(r, "connections"), 2);
    ck_assert_int_eq(jint(r, "acceptedTotal"), 2);
    ck_assert_int_eq(jint(r, "rejectedTotal"), 0);
    ck_assert_int_ge(jint(r, "bytesReadTotal"), 10);
    if (jint(r, "bytesWrittenTotal") < 10) /* counted just after the write() */
        wait_stat_ge(np, "bytesWrittenTotal", 10);
    static const char *const zero[] = {"acceptPausedTotal", "handoffFailedTotal",
                                       "idleTimeoutTotal", "slowDestroyedTotal",
                                       "upstreamFailedTotal", NULL};
    for (int i = 0; zero[i]; i++)
        ck_assert_msg(jint(r, zero[i]) == 0, "%s should be 0: %s", zero[i], np_json_str(r));
    ck_assert_int_gt(jint(r, "fdLimit"), 64);
    ck_assert_int_eq(jint(r, "servers"), 1);
    json_t *th = jarr(r, "threads");
    ck_assert_int_eq(json_array_size(th), 3);
    json_int_t conns = 0;
    for (size_t i = 0; i < 3; i++) {
        json_t *t = json_array_get(th, i);
        ck_assert_int_eq(jint(t, "id"), (json_int_t)i);
        conns += jint(t, "connections");
        ck_assert_int_ge(jint(t, "acceptedTotal"), 0);
        ck_assert_int_ge(jint(t, "handoffsTotal"), 0);
        ck_assert_int_ge(jint(t, "bytesReadTotal"), 0);
        ck_assert_int_ge(jint(t, "bytesWrittenTotal"), 0);
    }
    ck_assert_int_eq(conns, 2);
    close(a);
    close(b);
    /* Closed connections keep their bytes in the totals. */
    wait_count(np, "echo", 0, 0, 2);
    r = stats(np);
    ck_assert_int_eq(jint(r, "connections"), 0);
    ck_assert_int_ge(jint(r, "bytesReadTotal"), 10);
    json_t *s = server_obj(np, "echo");
    ck_assert_int_eq(jint(s, "bytesReadTotal"), 10);
    ck_assert_int_eq(jint(s, "bytesWrittenTotal"), 10);
}
END_TEST

/* The value of a metric line "name value" (no labels); -1 when absent. */
static double metric_value(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, name, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return -1;
}

START_TEST(test_metrics)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    int a = echo_client(port);
    /* The worker counts what it wrote just after send(): the client may have read the echo
     * first. */
    wait_stat_ge(np, "bytesWrittenTotal", 5);
    json_t *st = stats(np);
    json_t *r = np_ok(call(np, "{'cmd':'metrics'}"));
    const char *text = jstr(r, "text");
    /* Every sample line has the netd_ prefix (or the standard process_ one); every counter
     * ends in _total. */
    char *copy = strdup(text);
    int samples = 0;
    for (char *line = strtok(copy, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[128], type[32];
            ck_assert_int_eq(sscanf(line + 7, "%127s %31s", name, type), 2);
            ck_assert_msg(strncmp(name, "netd_", 5) == 0 || strncmp(name, "process_", 8) == 0,
                          "metric without netd_: %s", line);
            if (strcmp(type, "counter") == 0)
                ck_assert_msg(strlen(name) > 6 && strcmp(name + strlen(name) - 6, "_total") == 0,
                              "counter without _total: %s", line);
        } else if (line[0] != '#') {
            ck_assert_msg(strncmp(line, "netd_", 5) == 0 || strncmp(line, "process_", 8) == 0,
                          "sample without netd_: %s", line);
            samples++;
        }
    }
    free(copy);
    ck_assert_int_gt(samples, 5);
    /* The same figures as stats. */
    static const struct {
        const char *metric, *field;
    } same[] = {{"netd_accepted_total", "acceptedTotal"},
                {"netd_rejected_total", "rejectedTotal"},
                {"netd_bytes_read_total", "bytesReadTotal"},
                {"netd_bytes_written_total", "bytesWrittenTotal"},
                {"netd_accept_paused_total", "acceptPausedTotal"},
                {"netd_handoff_failed_total", "handoffFailedTotal"},
                {"netd_idle_timeout_total", "idleTimeoutTotal"},
                {"netd_slow_destroyed_total", "slowDestroyedTotal"},
                {"netd_upstream_failed_total", "upstreamFailedTotal"},
                {"netd_connections", "connections"}};
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
        double v = metric_value(text, same[i].metric);
        ck_assert_msg(v >= 0, "metric %s missing:\n%s", same[i].metric, text);
        ck_assert_msg((json_int_t)v == jint(st, same[i].field), "%s = %g, stats.%s = %lld",
                      same[i].metric, v, same[i].field, (long long)jint(st, same[i].field));
    }
    close(a);
}
END_TEST

static json_t *next_event(np_client_t *w)
{
    json_t *e = np_client_recv(w, NP_TIMEOUT_MS);
    jstr(e, "event");
    return e;
}

START_TEST(test_watch_order)
{
    netd_proc_t *np = np_start("{}", 2);
    np_client_t *w = np_connect(np);
    json_t *r = np_ok(ccall(w, "{'cmd':'watch','id':'w'}"));
    ck_assert_str_eq(jstr(r, "id"), "w");
    int port = listen_tcp0(np, "wsrv", NULL);
    json_int_t sid = server_id(np, "wsrv");
    json_t *e = next_event(w);
    ck_assert_msg(strcmp(jstr(e, "event"), "listening") == 0, "first event: %s", np_json_str(e));
    ck_assert_int_eq(jint(e, "server"), sid);
    int fd = echo_client(port);
    e = next_event(w);
    ck_assert_msg(strcmp(jstr(e, "event"), "connection") == 0, "second event: %s", np_json_str(e));
    ck_assert_int_eq(jint(e, "server"), sid);
    json_int_t sock = jint(e, "socket");
    ck_assert_int_eq(sock, jint(socket_of_client(np, "wsrv", fd), "id"));
    close(fd);
    e = next_event(w);
    ck_assert_msg(strcmp(jstr(e, "event"), "close") == 0, "third event: %s", np_json_str(e));
    ck_assert_int_eq(jint(e, "server"), sid);
    ck_assert_int_eq(jint(e, "socket"), sock);
    /* The server's own close. */
    np_ok(call(np, "{'cmd':'close','server':'wsrv'}"));
    e = next_event(w);
    ck_assert_msg(strcmp(jstr(e, "event"), "close") == 0, "fourth event: %s", np_json_str(e));
    ck_assert_int_eq(jint(e, "server"), sid);
    ck_assert_msg(json_object_get(e, "socket") == NULL || json_is_null(json_object_get(e, "socket")),
                  "a server's close names no socket: %s", np_json_str(e));
}
END_TEST

START_TEST(test_watch_filter)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    np_client_t *w = np_connect(np);
    np_ok(ccall(w, "{'cmd':'watch','events':['close']}"));
    int fd = echo_client(port);
    json_int_t sock = jint(socket_of_client(np, "echo", fd), "id");
    close(fd);
    json_t *e = next_event(w);
    ck_assert_msg(strcmp(jstr(e, "event"), "close") == 0, "only close events asked: %s",
                  np_json_str(e));
    ck_assert_int_eq(jint(e, "socket"), sock);
    /* The watcher does not count as a connection. */
    wait_count(np, "echo", 0, 0, 1);
}
END_TEST

START_TEST(test_shutdown)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    json_t *r = np_ok(call(np, "{'cmd':'shutdown','id':'bye'}"));
    ck_assert(json_is_true(json_object_get(r, "draining")));
    ck_assert_str_eq(jstr(r, "id"), "bye");
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 0);
    struct stat st;
    ck_assert_msg(stat(np->sock, &st) != 0 && errno == ENOENT,
                  "the control socket should be removed at exit");
}
END_TEST

START_TEST(test_help)
{
    static const char *const cmds[] = {"ping", "listen", "close", "servers", "server",
                                       "getConnections", "sockets", "destroy", "move",
                                       "rebalance", "set", "stats", "metrics", "watch",
                                       "shutdown", "help", NULL};
    netd_proc_t *np = np_start("{}", 2);
    json_t *arr = jarr(np_ok(call(np, "{'cmd':'help'}")), "commands");
    for (int i = 0; cmds[i]; i++) {
        bool found = false;
        size_t k;
        json_t *c;
        json_array_foreach(arr, k, c)
        {
            if (strcmp(jstr(c, "cmd"), cmds[i]) == 0) {
                ck_assert_msg(*jstr(c, "usage"), "%s: empty usage", cmds[i]);
                found = true;
            }
        }
        ck_assert_msg(found, "help does not list %s", cmds[i]);
    }
}
END_TEST

/* close waits (by default) for the server's 'close': after its last connection ended. */
START_TEST(test_close_wait)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    json_int_t sid = server_id(np, "echo");
    int fd = echo_client(port);
    np_client_t *c = np_connect(np);
    np_client_send(c, parse(Q("{'cmd':'close','server':'echo','id':'c'}")));
    /* Not listening any more, but the held connection is still served. */
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    int rc;
    /* (A connect racing the listener's close may be reset: try again.) */
    while ((rc = np_tcp_try_connect(port)) >= 0 || rc == -ECONNRESET) {
        if (rc >= 0)
            close(rc);
        ck_assert_msg(np_now_ms() < deadline, "the port still accepts after close");
        np_pause_ms(10);
    }
    ck_assert_int_eq(rc, -ECONNREFUSED);
    np_echo_check(fd, "still served");
    ck_assert_str_eq(jstr(server_obj(np, "echo"), "state"), "closing");
    const char *why = NULL;
    char *early = np_client_read_line(c, 200, &why);
    ck_assert_msg(early == NULL, "close replied before its connections ended: %s", early);
    close(fd);
    json_t *r = np_ok(np_client_recv(c, NP_TIMEOUT_MS));
    ck_assert_str_eq(jstr(r, "id"), "c");
    json_t *s = jobj(r, "server");
    check_server_object(s);
    ck_assert_int_eq(jint(s, "id"), sid);
    ck_assert_str_eq(jstr(s, "state"), "closed");
    /* A closed server leaves servers. */
    ck_assert_int_eq(json_array_size(jarr(np_ok(call(np, "{'cmd':'servers'}")), "servers")), 0);
}
END_TEST

START_TEST(test_close_destroy)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    int a = echo_client(port), b = echo_client(port);
    json_t *r = np_ok(call(np, "{'cmd':'close','server':'echo','destroy':true}"));
    ck_assert_str_eq(jstr(jobj(r, "server"), "state"), "closed");
    ck_assert_int_eq(np_expect_eof(a), 1);
    ck_assert_int_eq(np_expect_eof(b), 1);
    ck_assert_int_eq(json_array_size(jarr(np_ok(call(np, "{'cmd':'servers'}")), "servers")), 0);
    ck_assert_int_eq(np_tcp_try_connect(port), -ECONNREFUSED);
    close(a);
    close(b);
}
END_TEST

START_TEST(test_close_nowait)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    int fd = echo_client(port);
    json_t *r = np_ok(call(np, "{'cmd':'close','server':'echo','wait':false}"));
    ck_assert_str_eq(jstr(jobj(r, "server"), "state"), "closing");
    /* Closing: a second close is refused. */
    np_expect_error(call(np, "{'cmd':'close','server':'echo'}"), "ENOTRUNNING", NULL);
    np_echo_check(fd, "served while closing");
    close(fd);
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    while (json_array_size(jarr(np_ok(call(np, "{'cmd':'servers'}")), "servers")) != 0) {
        ck_assert_msg(np_now_ms() < deadline, "the closed server stays in servers");
        np_pause_ms(10);
    }
}
END_TEST

/* ================================================================== errors */

START_TEST(test_eparse)
{
    netd_proc_t *np = np_start("{}", 2);
    static const char *const lines[] = {
        "hello\n", "{\"cmd\":\"ping\"\n", "{\"cmd\":\"ping\",}\n",
        "{\"cmd\":\"p\xff\xfeing\",\"id\":1}\n", /* invalid UTF-8 */
        "{\"id\":5,\"cmd\":\"ping\" garbage}\n", "{\"cmd\":'ping'}\n", NULL};
    for (int i = 0; lines[i]; i++) {
        ck_assert_int_eq(np_client_send_raw(np->ctl, lines[i], strlen(lines[i])), 0);
        json_t *r = np_client_recv(np->ctl, NP_TIMEOUT_MS);
        np_expect_error(r, "EPARSE", NULL);
        ck_assert_msg(json_is_null(json_object_get(r, "id")), "EPARSE: id must be null: %s",
                      np_json_str(r));
    }
    /* The connection is still good. */
    np_ok(call(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_eparse_duplicate_keys)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    static const char *const lines[] = {
        "{\"cmd\":\"ping\",\"cmd\":\"ping\"}\n",
        "{\"id\":1,\"id\":2,\"cmd\":\"ping\"}\n",
        "{\"cmd\":\"close\",\"server\":\"echo\",\"server\":\"echo\"}\n", NULL};
    for (int i = 0; lines[i]; i++) {
        ck_assert_int_eq(np_client_send_raw(np->ctl, lines[i], strlen(lines[i])), 0);
        np_expect_error(np_client_recv(np->ctl, NP_TIMEOUT_MS), "EPARSE", NULL);
    }
    /* The close never ran. */
    ck_assert_str_eq(jstr(server_obj(np, "echo"), "state"), "listening");
}
END_TEST

START_TEST(test_erequest)
{
    netd_proc_t *np = np_start("{}", 2);
    static const char *const lines[] = {"[1,2]", "[]", "\"ping\"", "42", "null", "true",
                                        "{}", "{'id':3}", "{'cmd':5}", "{'cmd':null}",
                                        "{'cmd':['ping']}", "{'cmd':{'name':'ping'}}", NULL};
    for (int i = 0; lines[i]; i++) {
        char *line = Q("%s\n", lines[i]);
        ck_assert_int_eq(np_client_send_raw(np->ctl, line, strlen(line)), 0);
        json_t *r = np_client_recv(np->ctl, NP_TIMEOUT_MS);
        np_expect_error(r, "EREQUEST", NULL);
    }
    /* An object with an id gets it back. */
    json_t *r = call(np, "{'id':'x','cmd':7}");
    np_expect_error(r, "EREQUEST", NULL);
    ck_assert_str_eq(jstr(r, "id"), "x");
    np_ok(call(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_ecommand)
{
    netd_proc_t *np = np_start("{}", 2);
    json_t *r = call(np, "{'cmd':'frobnicate','id':'f'}");
    np_expect_error(r, "ECOMMAND", NULL);
    ck_assert_str_eq(jstr(r, "id"), "f");
    np_expect_error(call(np, "{'cmd':''}"), "ECOMMAND", NULL);
    np_expect_error(call(np, "{'cmd':'PING'}"), "ECOMMAND", NULL);
    np_ok(call(np, "{'cmd':'ping'}"));
}
END_TEST

/* Every EARG case: the request, and what the message must name. */
static const struct {
    const char *req, *names;
} earg_cases[] = {
    {"{'cmd':'ping','foo':1}", "foo"},
    {"{'cmd':'stats','verbose':true}", "verbose"},
    {"{'cmd':'servers','x':1}", "x"},
    {"{'cmd':'metrics','x':1}", "x"},
    {"{'cmd':'help','x':1}", "x"},
    {"{'cmd':'listen'}", NULL},
    {"{'cmd':'listen','port':'80'}", "port"},
    {"{'cmd':'listen','port':70000}", "port"},
    {"{'cmd':'listen','port':65536}", "port"},
    {"{'cmd':'listen','port':-1}", "port"},
    {"{'cmd':'listen','port':1.5}", "port"},
    {"{'cmd':'listen','port':0,'path':'/tmp/x.sock'}", NULL},
    {"{'cmd':'listen','port':0,'fd':3}", NULL},
    {"{'cmd':'listen','port':0,'host':5}", "host"},
    {"{'cmd':'listen','port':0,'host':'not a host!'}", "host"},
    {"{'cmd':'listen','port':0,'bogus':1}", "bogus"},
    {"{'cmd':'listen','port':0,'backlog':'x'}", "backlog"},
    {"{'cmd':'listen','port':0,'backlog':-1}", "backlog"},
    {"{'cmd':'listen','port':0,'name':5}", "name"},
    {"{'cmd':'listen','port':0,'handler':'echo'}", "handler"},
    {"{'cmd':'listen','port':0,'handler':{'type':'nope'}}", "handler"},
    {"{'cmd':'listen','port':0,'handler':{}}", "handler"},
    {"{'cmd':'listen','port':0,'handler':{'type':'banner'}}", "text"},
    {"{'cmd':'listen','port':0,'handler':{'type':'proxy'}}", "port"},
    {"{'cmd':'listen','port':0,'handler':{'type':'proxy','port':70000}}", "port"},
    {"{'cmd':'listen','port':0,'handler':{'type':'echo','extra':1}}", "extra"},
    {"{'cmd':'listen','port':0,'allowHalfOpen':'yes'}", "allowHalfOpen"},
    {"{'cmd':'listen','port':0,'maxConnections':-1}", "maxConnections"},
    {"{'cmd':'listen','port':0,'maxConnections':'5'}", "maxConnections"},
    {"{'cmd':'listen','port':0,'timeout':-5}", "timeout"},
    {"{'cmd':'listen','port':0,'timeout':'5 seconds'}", "timeout"},
    {"{'cmd':'listen','port':0,'noDelay':1}", "noDelay"},
    {"{'cmd':'listen','port':0,'keepAlive':'on'}", "keepAlive"},
    {"{'cmd':'listen','port':0,'keepAlive':-1}", "keepAlive"},
    {"{'cmd':'listen','port':0,'balance':'random'}", "balance"},
    {"{'cmd':'listen','port':0,'balance':1}", "balance"},
    {"{'cmd':'listen','fd':-1}", "fd"},
    {"{'cmd':'listen','fd':true}", "fd"},
    {"{'cmd':'server'}", "server"},
    {"{'cmd':'server','server':true}", "server"},
    {"{'cmd':'server','server':null}", "server"},
    {"{'cmd':'server','server':1,'x':1}", "x"},
    {"{'cmd':'getConnections'}", "server"},
    {"{'cmd':'getConnections','server':[1]}", "server"},
    {"{'cmd':'close'}", "server"},
    {"{'cmd':'close','server':'echo','destroy':'yes'}", "destroy"},
    {"{'cmd':'close','server':'echo','wait':1}", "wait"},
    {"{'cmd':'sockets','limit':-1}", "limit"},
    {"{'cmd':'sockets','limit':'10'}", "limit"},
    {"{'cmd':'sockets','olderThanMs':-1}", "olderThanMs"},
    {"{'cmd':'sockets','olderThanMs':'1'}", "olderThanMs"},
    {"{'cmd':'sockets','idleMoreThanMs':-1}", "idleMoreThanMs"},
    {"{'cmd':'sockets','role':'server'}", "role"},
    {"{'cmd':'sockets','role':1}", "role"},
    {"{'cmd':'sockets','server':false}", "server"},
    {"{'cmd':'destroy'}", "socket"},
    {"{'cmd':'destroy','socket':'1'}", "socket"},
    {"{'cmd':'destroy','socket':-1}", "socket"},
    {"{'cmd':'move','socket':1}", "thread"},
    {"{'cmd':'move','thread':0}", "socket"},
    {"{'cmd':'move','socket':1,'thread':-1}", "thread"},
    {"{'cmd':'move','socket':1,'thread':'0'}", "thread"},
    {"{'cmd':'move','socket':-3,'thread':0}", "socket"},
    {"{'cmd':'rebalance','server':[1]}", "server"},
    {"{'cmd':'rebalance','all':true}", "all"},
    {"{'cmd':'set'}", "server"},
    {"{'cmd':'set','server':'echo','timeout':-1}", "timeout"},
    {"{'cmd':'set','server':'echo','timeout':'1'}", "timeout"},
    {"{'cmd':'set','server':'echo','maxConnections':-1}", "maxConnections"},
    {"{'cmd':'set','server':'echo','maxConnections':'5'}", "maxConnections"},
    {"{'cmd':'set','server':'echo','backlog':5}", "backlog"},
    {"{'cmd':'watch','events':'connection'}", "events"},
    {"{'cmd':'watch','events':[1]}", "events"},
    {"{'cmd':'watch','events':['bogus']}", "bogus"},
    {"{'cmd':'shutdown','timeoutMs':-1}", "timeoutMs"},
    {"{'cmd':'shutdown','timeoutMs':'1'}", "timeoutMs"},
    {"{'cmd':'shutdown','now':true}", "now"},
};

START_TEST(test_earg)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    json_t *before = json_deep_copy(server_obj(np, "echo"));
    for (size_t i = 0; i < sizeof(earg_cases) / sizeof(earg_cases[0]); i++) {
        json_t *r = call(np, "%s", earg_cases[i].req);
        json_t *err = json_object_get(r, "error");
        const char *code = json_string_value(json_object_get(err, "code"));
        const char *msg = json_string_value(json_object_get(err, "message"));
        ck_assert_msg(json_is_false(json_object_get(r, "ok")) && code && strcmp(code, "EARG") == 0,
                      "%s: expected EARG, got %s", Q("%s", earg_cases[i].req), np_json_str(r));
        ck_assert_msg(msg && *msg, "%s: no message: %s", Q("%s", earg_cases[i].req),
                      np_json_str(r));
        if (earg_cases[i].names)
            ck_assert_msg(strstr(msg, earg_cases[i].names) != NULL,
                          "%s: the message should name \"%s\": %s", Q("%s", earg_cases[i].req),
                          earg_cases[i].names, np_json_str(r));
    }
    /* Nothing was affected: the same one server, nothing new, still pingable. */
    json_t *arr = jarr(np_ok(call(np, "{'cmd':'servers'}")), "servers");
    ck_assert_int_eq(json_array_size(arr), 1);
    json_t *after = server_obj(np, "echo");
    ck_assert_int_eq(jint(after, "id"), jint(before, "id"));
    ck_assert_int_eq(jint(after, "timeout"), jint(before, "timeout"));
    ck_assert(json_equal(json_object_get(after, "maxConnections"),
                         json_object_get(before, "maxConnections")));
    json_decref(before);
    np_ok(call(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_enoserver)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    static const char *const reqs[] = {
        "{'cmd':'server','server':999}",        "{'cmd':'server','server':'nope'}",
        "{'cmd':'getConnections','server':999}", "{'cmd':'getConnections','server':'nope'}",
        "{'cmd':'close','server':999}",         "{'cmd':'close','server':'nope'}",
        "{'cmd':'set','server':999,'timeout':1}", "{'cmd':'set','server':'nope','maxConnections':1}",
        "{'cmd':'sockets','server':999}",       "{'cmd':'sockets','server':'nope'}",
        "{'cmd':'rebalance','server':999}",     "{'cmd':'rebalance','server':'nope'}",
        NULL};
    for (int i = 0; reqs[i]; i++)
        np_expect_error(call(np, "%s", reqs[i]), "ENOSERVER", NULL);
    np_ok(call(np, "{'cmd':'server','server':'echo'}"));
}
END_TEST

START_TEST(test_enosocket)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    np_expect_error(call(np, "{'cmd':'destroy','socket':99999}"), "ENOSOCKET", NULL);
    np_expect_error(call(np, "{'cmd':'move','socket':99999,'thread':0}"), "ENOSOCKET", NULL);
    /* A server's id is not a socket id. */
    json_int_t sid = server_id(np, "echo");
    np_expect_error(call(np, "{'cmd':'destroy','socket':%lld}", (long long)sid), "ENOSOCKET", NULL);
}
END_TEST

START_TEST(test_enotrunning_after_close)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    json_int_t sid = server_id(np, "echo");
    np_ok(call(np, "{'cmd':'close','server':%lld}", (long long)sid));
    /* Close twice: the server is not running (Node's ERR_SERVER_NOT_RUNNING). */
    np_expect_error(call(np, "{'cmd':'close','server':%lld}", (long long)sid), "ENOTRUNNING", NULL);
}
END_TEST

START_TEST(test_eexist)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    np_expect_error(call(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'echo'}"),
                    "EEXIST", "echo");
    np_ok(call(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'dup'}"));
    np_expect_error(call(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'dup'}"),
                    "EEXIST", "dup");
    ck_assert_int_eq(json_array_size(jarr(np_ok(call(np, "{'cmd':'servers'}")), "servers")), 2);
}
END_TEST

START_TEST(test_eaddrinuse_raw)
{
    netd_proc_t *np = np_start("{}", 2);
    int port;
    int held = np_tcp_listen(&port);
    json_t *r = call(np, "{'cmd':'listen','port':%d,'host':'127.0.0.1'}", port);
    np_expect_error(r, "EADDRINUSE", NULL);
    np_expect_error(call(np, "{'cmd':'listen','port':%d}", port), "EADDRINUSE", NULL);
    /* A failed listen leaves no server behind. */
    ck_assert_int_eq(json_array_size(jarr(np_ok(call(np, "{'cmd':'servers'}")), "servers")), 0);
    close(held);
    np_ok(call(np, "{'cmd':'listen','port':%d,'host':'127.0.0.1'}", port));
}
END_TEST

START_TEST(test_eaddrinuse_own)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    np_expect_error(call(np, "{'cmd':'listen','port':%d,'host':'127.0.0.1','name':'again'}", port),
                    "EADDRINUSE", NULL);
    np_expect_error(call(np, "{'cmd':'listen','port':%d,'name':'again','balance':'reuseport'}", port),
                    "EADDRINUSE", NULL);
    ck_assert_int_eq(json_array_size(jarr(np_ok(call(np, "{'cmd':'servers'}")), "servers")), 1);
}
END_TEST

START_TEST(test_ebadf)
{
    netd_proc_t *np = np_start("{}", 2);
    np_expect_error(call(np, "{'cmd':'listen','fd':9}"), "EBADF", NULL);
    np_expect_error(call(np, "{'cmd':'listen','fd':3}"), "EBADF", NULL);
    np_expect_error(call(np, "{'cmd':'listen','fd':0}"), "EBADF", NULL);
    np_expect_error(call(np, "{'cmd':'listen','fd':'web'}"), "EBADF", NULL);
    /* The control socket's own descriptor is not an inherited one either. */
    for (int fd = 1; fd < 12; fd++)
        np_expect_error(call(np, "{'cmd':'listen','fd':%d,'name':'f%d'}", fd, fd), "EBADF", NULL);
    ck_assert_int_eq(json_array_size(jarr(np_ok(call(np, "{'cmd':'servers'}")), "servers")), 0);
}
END_TEST

/* Sends one line of `size` bytes (a JSON object padded by a long id) plus "\n" when
 * `newline`; returns the send result (the far end may stop reading: EPIPE is fine). */
static int send_big_line(np_client_t *c, size_t size, bool newline)
{
    char *line = malloc(size + 1);
    ck_assert(line != NULL);
    const char *head = "{\"cmd\":\"ping\",\"id\":\"";
    size_t h = strlen(head);
    memcpy(line, head, h);
    memset(line + h, 'x', size - h - 2);
    memcpy(line + size - 2, "\"}", 2);
    line[size] = '\n';
    int rc = np_client_send_raw(c, line, size + (newline ? 1 : 0));
    free(line);
    return rc;
}

START_TEST(test_etoobig)
{
    netd_proc_t *np = np_start("{}", 2);
    np_client_t *c = np_connect(np);
    int rc = send_big_line(c, NETD_MAX_LINE + 4096, true);
    ck_assert_msg(rc == 0 || rc == -EPIPE || rc == -ECONNRESET, "send: %s", strerror(-rc));
    json_t *r = np_client_recv(c, NP_TIMEOUT_MS);
    np_expect_error(r, "ETOOBIG", NULL);
    ck_assert(json_is_null(json_object_get(r, "id")));
    ck_assert_msg(np_client_wait_closed(c, NP_TIMEOUT_MS), "ETOOBIG: the connection stays open");
    /* Nothing else was affected. */
    np_ok(call(np, "{'cmd':'ping'}"));
}
END_TEST

/* A line with no end yet is too big as soon as it passes 1 MiB. */
START_TEST(test_etoobig_unterminated)
{
    netd_proc_t *np = np_start("{}", 2);
    np_client_t *c = np_connect(np);
    int rc = send_big_line(c, NETD_MAX_LINE + 65536, false);
    ck_assert_msg(rc == 0 || rc == -EPIPE || rc == -ECONNRESET, "send: %s", strerror(-rc));
    const char *why = NULL;
    char *line = np_client_read_line(c, 3000, &why);
    ck_assert_msg(line != NULL,
                  "no ETOOBIG reply to an unterminated line of 1 MiB + 64 KiB (%s): netd keeps "
                  "buffering it",
                  why);
    json_t *r = parse(line);
    free(line);
    np_expect_error(r, "ETOOBIG", NULL);
    json_decref(r);
    ck_assert(np_client_wait_closed(c, NP_TIMEOUT_MS));
    np_ok(call(np, "{'cmd':'ping'}"));
}
END_TEST

/* 1 MiB exactly is allowed. */
START_TEST(test_line_at_limit)
{
    netd_proc_t *np = np_start("{}", 2);
    ck_assert_int_eq(send_big_line(np->ctl, NETD_MAX_LINE, true), 0);
    json_t *r = np_ok(np_client_recv(np->ctl, NP_TIMEOUT_MS));
    ck_assert_int_eq(strlen(jstr(r, "id")), NETD_MAX_LINE - strlen("{\"cmd\":\"ping\",\"id\":\"\"}"));
    np_ok(call(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_ebusy)
{
    netd_proc_t *np = np_start(Q("{'control':{'maxClients':2}}"), 2);
    /* np->ctl is the first client. */
    np_client_t *two = np_connect(np);
    np_ok(ccall(two, "{'cmd':'ping'}"));
    np_client_t *three = np_connect(np);
    json_t *r = np_client_recv(three, NP_TIMEOUT_MS);
    np_expect_error(r, "EBUSY", NULL);
    ck_assert(np_client_wait_closed(three, NP_TIMEOUT_MS));
    np_client_close(three);
    /* The first two are unaffected. */
    np_ok(call(np, "{'cmd':'ping'}"));
    np_ok(ccall(two, "{'cmd':'ping'}"));
    /* A slot frees when a client leaves. */
    np_client_close(two);
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    for (;;) {
        np_client_t *c = np_connect(np);
        np_client_send(c, parse(Q("{'cmd':'ping'}")));
        json_t *rr = np_client_recv(c, NP_TIMEOUT_MS);
        if (json_is_true(json_object_get(rr, "ok")))
            break;
        np_expect_error(rr, "EBUSY", NULL);
        np_client_close(c);
        ck_assert_msg(np_now_ms() < deadline, "the slot of a closed client never freed");
        np_pause_ms(10);
    }
}
END_TEST

START_TEST(test_eshutdown)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int port = server_port(np, "echo");
    int fd = echo_client(port);
    json_t *r = np_ok(call(np, "{'cmd':'shutdown','timeoutMs':20000}"));
    ck_assert(json_is_true(json_object_get(r, "draining")));
    np_expect_error(call(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'late'}"),
                    "ESHUTDOWN", NULL);
    /* Control still answers while draining; the held connection is still served. */
    np_ok(call(np, "{'cmd':'ping'}"));
    np_echo_check(fd, "draining");
    close(fd);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 0);
}
END_TEST

/* Only root can try another uid: a peer of another user gets EPERM and is closed. */
START_TEST(test_eperm)
{
    if (geteuid() != 0)
        return; /* nothing to try without a second user */
    netd_proc_t *np = np_start(Q("{'control':{'mode':'0666'}}"), 2);
    ck_assert(chmod(np->dir, 0711) == 0);
    char parent[PATH_MAX];
    snprintf(parent, sizeof(parent), "%s", np->dir);
    *strrchr(parent, '/') = '\0';
    chmod(parent, 0711); /* NP_TMPROOT */
    int p[2];
    ck_assert(pipe(p) == 0);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        char out[512] = "setuid failed";
        if (setgroups(0, NULL) == 0 && setgid(65534) == 0 && setuid(65534) == 0) {
            int fd = socket(AF_UNIX, SOCK_STREAM, 0);
            struct sockaddr_un sa = {.sun_family = AF_UNIX};
            sun_set(&sa, np->sock);
            if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
                snprintf(out, sizeof(out), "connect: %s", strerror(errno));
            } else {
                const char *req = "{\"cmd\":\"ping\"}\n";
                send(fd, req, strlen(req), MSG_NOSIGNAL);
                struct timeval tv = {5, 0};
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
                size_t n = 0;
                ssize_t k;
                while (n < sizeof(out) - 1 && (k = recv(fd, out + n, sizeof(out) - 1 - n, 0)) > 0)
                    n += (size_t)k;
                out[n] = '\0';
                if (k < 0 && errno != ECONNRESET)
                    snprintf(out + n, sizeof(out) - n, " (not closed: %s)", strerror(errno));
            }
        }
        ssize_t w = write(p[1], out, strlen(out));
        (void)w;
        _exit(0);
    }
    close(p[1]);
    char buf[512];
    ssize_t n = read(p[0], buf, sizeof(buf) - 1);
    close(p[0]);
    waitpid(pid, NULL, 0);
    ck_assert(n > 0);
    buf[n] = '\0';
    ck_assert_msg(strstr(buf, "\"EPERM\"") && !strstr(buf, "not closed"),
                  "a peer of another user: %s", buf);
    /* One EPERM line, nothing else: the ping was never answered. */
    ck_assert_msg(!strstr(buf, "\"ok\":true"), "another user was answered: %s", buf);
    np_ok(call(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_bad_requests_keep_connection)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    static const char *const lines[] = {
        "garbage\n", "[1]\n", "{\"cmd\":\"nope\"}\n", "{\"cmd\":\"ping\",\"x\":1}\n",
        "{\"cmd\":\"server\",\"server\":999}\n", "{\"cmd\":\"destroy\",\"socket\":999}\n",
        "{\"cmd\":\"close\",\"server\":\"nope\"}\n", "{\"a\":1,\"a\":2}\n", NULL};
    /* All in one write: answered in order, one line each. */
    char all[1024] = "";
    for (int i = 0; lines[i]; i++)
        strcat(all, lines[i]);
    strcat(all, "{\"cmd\":\"ping\",\"id\":\"last\"}\n");
    ck_assert_int_eq(np_client_send_raw(np->ctl, all, strlen(all)), 0);
    static const char *const codes[] = {"EPARSE", "EREQUEST", "ECOMMAND", "EARG", "ENOSERVER",
                                        "ENOSOCKET", "ENOSERVER", "EPARSE", NULL};
    for (int i = 0; codes[i]; i++)
        np_expect_error(np_client_recv(np->ctl, NP_TIMEOUT_MS), codes[i], NULL);
    json_t *r = np_ok(np_client_recv(np->ctl, NP_TIMEOUT_MS));
    ck_assert_str_eq(jstr(r, "id"), "last");
    /* CRLF from telnet-like clients and empty lines are fine too. */
    const char *crlf = "\r\n\n{\"cmd\":\"ping\",\"id\":2}\r\n";
    ck_assert_int_eq(np_client_send_raw(np->ctl, crlf, strlen(crlf)), 0);
    r = np_ok(np_client_recv(np->ctl, NP_TIMEOUT_MS));
    ck_assert_int_eq(jint(r, "id"), 2);
    ck_assert_str_eq(jstr(server_obj(np, "echo"), "state"), "listening");
}
END_TEST

/* ================================================================== config */

START_TEST(test_config_valid)
{
    const char *cfg = Q("{'threads':3,'shutdownTimeoutMs':5000,"
                        "'control':{'mode':'0600','maxClients':8,'idleTimeout':60000},"
                        "'limits':{'highWaterMark':65536,'maxBufferedBytes':1048576,'stallMs':5000},"
                        "'servers':["
                        "{'name':'e','port':0,'host':'127.0.0.1','handler':{'type':'echo','greeting':'hello\\r\\n'}},"
                        "{'path':'rel.sock'},"
                        "{'name':'b','port':0,'host':'127.0.0.1','handler':{'type':'banner','text':'bye\\n'}},"
                        "{'name':'d','port':0,'host':'127.0.0.1','handler':{'type':'discard'},'timeout':60000}]}");
    np_opts_t o = {.config = cfg, .threads = 0};
    o.args = NULL;
    netd_proc_t *np = np_start_ex(&o);
    json_t *arr = jarr(np_ok(call(np, "{'cmd':'servers'}")), "servers");
    ck_assert_int_eq(json_array_size(arr), 4);
    char relpath[PATH_MAX + 16];
    snprintf(relpath, sizeof(relpath), "%s/rel.sock", np->dir);
    /* A relative path resolves against the config file's directory; the entry is named
     * after it. */
    json_t *u = server_obj(np, relpath);
    ck_assert_str_eq(jstr(jobj(u, "address"), "path"), relpath);
    int fd = np_unix_connect(relpath);
    np_echo_check(fd, "rel");
    close(fd);
    json_t *e = server_obj(np, "e");
    ck_assert_str_eq(jstr(jobj(e, "handler"), "greeting"), "hello\r\n");
    ck_assert_int_eq(jint(server_obj(np, "d"), "timeout"), 60000);
    ck_assert_str_eq(jstr(jobj(server_obj(np, "b"), "handler"), "text"), "bye\n");
    /* -t 2 (np_start's default) wins over threads: 3. */
    ck_assert_int_eq(json_array_size(jarr(stats(np), "threads")), 2);
}
END_TEST

START_TEST(test_config_threads)
{
    /* Without -t: the config's thread count. */
    np_opts_t o = {.config = Q("{'threads':3}"), .threads = -1};
    netd_proc_t *np = np_start_ex(&o);
    ck_assert_int_eq(json_array_size(jarr(stats(np), "threads")), 3);
}
END_TEST

START_TEST(test_check_valid)
{
    char *out = NULL;
    int st = np_check_config(Q("{'threads':2,'servers':[{'name':'a','port':8124,'host':'127.0.0.1'},"
                               "{'path':'run/echo.sock','handler':{'type':'proxy','port':80}}]}"),
                             &out);
    ck_assert_msg(st == 0, "--check on a valid file: status %d: %s", st, out);
    free(out);
    out = NULL;
    ck_assert_int_eq(np_check_config("{}", &out), 0);
    free(out);
}
END_TEST

static const struct {
    const char *config, *field;
} invalid_configs[] = {
    {"{'threads':'2'}", "threads"},
    {"{'threads':-1}", "threads"},
    {"{'serverz':[]}", "serverz"},
    {"{'servers':[{'port':70000}]}", "servers[0].port"},
    {"{'servers':[{'port':0},{'port':'80'}]}", "servers[1].port"},
    {"{'servers':[{'port':0,'handler':{'type':'gopher'}}]}", "servers[0].handler.type"},
    {"{'servers':[{'port':0,'handler':{'type':'banner'}}]}", "servers[0].handler.text"},
    {"{'servers':[{'port':0,'colour':'red'}]}", "servers[0].colour"},
    {"{'servers':[{'name':'a','port':0},{'name':'a','port':0}]}", "servers[1].name"},
    {"{'servers':{}}", "servers"},
    {"{'control':{'mode':'rw'}}", "control.mode"},
    {"{'control':{'mode':600}}", "control.mode"},
    {"{'control':{'maxClients':0}}", "control.maxClients"},
    {"{'control':{'pth':'x'}}", "control.pth"},
    {"{'control':{'group':'no-such-group-netd-test'}}", "control.group"},
    {"{'limits':{'highWaterMark':'big'}}", "limits.highWaterMark"},
    {"{'shutdownTimeoutMs':-5}", "shutdownTimeoutMs"},
    {"{'threads':1,'threads':2}", NULL}, /* duplicate keys */
    {"{'servers':[", NULL},              /* not JSON */
    {"[]", NULL},
};

START_TEST(test_check_invalid)
{
    char *out = NULL;
    const char *cfg = Q("%s", invalid_configs[_i].config);
    int st = np_check_config(cfg, &out);
    ck_assert_msg(st == 2, "--check on %s: status %d (want 2): %s", cfg, st, out);
    if (invalid_configs[_i].field)
        ck_assert_msg(str_in(out, invalid_configs[_i].field),
                      "--check on %s should name %s: %s", cfg, invalid_configs[_i].field, out);
    free(out);
}
END_TEST

/* Without --check, an invalid file stops netd with status 2 before anything listens. */
START_TEST(test_invalid_config_exits_2)
{
    np_opts_t o = {.config = Q("{'servers':[{'port':70000}]}"), .no_wait = true};
    netd_proc_t *np = np_start_ex(&o);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 2);
    ck_assert_msg(str_in(np_stderr(np), "servers[0].port"), "stderr: %s", np_stderr(np));
    struct stat st;
    ck_assert(stat(np->sock, &st) != 0);
}
END_TEST

START_TEST(test_reload)
{
    notify_sock_t n;
    notify_open(&n, false);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {
        .config = Q("{'servers':["
                    "{'name':'a','port':0,'host':'127.0.0.1'},"
                    "{'name':'b','port':0,'host':'127.0.0.1'},"
                    "{'name':'d','port':0,'host':'127.0.0.1','handler':{'type':'echo','greeting':'v1\\n'}}]}"),
        .env = env};
    netd_proc_t *np = np_start_ex(&o);
    expect_notify(&n, "READY=1");
    json_int_t a_id = server_id(np, "a"), d_id = server_id(np, "d");
    int a_port = server_port(np, "a"), b_port = server_port(np, "b");
    int held = echo_client(a_port);

    /* a unchanged (keys reordered, a default spelled out), b removed, c added, d changed. */
    np_write_config(np, Q("{'servers':["
                          "{'host':'127.0.0.1','port':0,'name':'a','noDelay':true},"
                          "{'name':'c','port':0,'host':'127.0.0.1','handler':{'type':'banner','text':'c\\n'}},"
                          "{'name':'d','port':0,'host':'127.0.0.1','handler':{'type':'echo','greeting':'v2\\n'}}]}"));
    np_signal(np, SIGHUP);
    expect_notify(&n, "RELOADING=1");
    expect_notify(&n, "READY=1");

    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    for (;;) {
        json_t *arr = jarr(np_ok(call(np, "{'cmd':'servers'}")), "servers");
        bool has_b = false;
        size_t i;
        json_t *s;
        json_array_foreach(arr, i, s) has_b = has_b || strcmp(jstr(s, "name"), "b") == 0;
        if (!has_b && json_array_size(arr) == 3)
            break;
        ck_assert_msg(np_now_ms() < deadline, "after reload: %s", np_json_str(arr));
        np_pause_ms(10);
    }
    /* Unchanged: the same server (ids are never reused), its connection alive. */
    ck_assert_int_eq(server_id(np, "a"), a_id);
    ck_assert_int_eq(server_port(np, "a"), a_port);
    np_echo_check(held, "survived the reload");
    int fd = echo_client(a_port);
    close(fd);
    /* Removed: no longer listening. */
    ck_assert_int_eq(np_tcp_try_connect(b_port), -ECONNREFUSED);
    /* Added: listening with its handler. */
    fd = np_tcp_connect(server_port(np, "c"));
    char buf[8];
    ck_assert_int_eq(np_recv_to_eof(fd, buf, sizeof(buf)), 2);
    close(fd);
    /* Changed: closed and opened anew. */
    ck_assert_int_ne(server_id(np, "d"), d_id);
    fd = np_tcp_connect(server_port(np, "d"));
    ck_assert_int_eq(np_recv_exact(fd, buf, 3), 3);
    ck_assert(memcmp(buf, "v2\n", 3) == 0);
    close(fd);
    close(held);
    close(n.fd);
}
END_TEST

START_TEST(test_reload_invalid_keeps)
{
    notify_sock_t n;
    notify_open(&n, false);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {.config = Q("{'servers':[{'name':'a','port':0,'host':'127.0.0.1'},"
                               "{'name':'b','port':0,'host':'127.0.0.1'}]}"),
                   .env = env};
    netd_proc_t *np = np_start_ex(&o);
    expect_notify(&n, "READY=1");
    json_int_t a_id = server_id(np, "a"), b_id = server_id(np, "b");
    int held = echo_client(server_port(np, "a"));
    np_write_config(np, Q("{'servers':[{'name':'a','port':70000}]}"));
    np_signal(np, SIGHUP);
    expect_notify(&n, "RELOADING=1");
    expect_notify(&n, "READY=1");
    json_t *arr = jarr(np_ok(call(np, "{'cmd':'servers'}")), "servers");
    ck_assert_msg(json_array_size(arr) == 2, "after a refused reload: %s", np_json_str(arr));
    ck_assert_int_eq(server_id(np, "a"), a_id);
    ck_assert_int_eq(server_id(np, "b"), b_id);
    np_echo_check(held, "kept");
    ck_assert_msg(str_in(np_stderr(np), "servers[0].port"), "the log should name the field: %s",
                  np_stderr(np));
    /* A later valid reload still works. */
    np_write_config(np, Q("{'servers':[{'name':'a','port':0,'host':'127.0.0.1'}]}"));
    np_signal(np, SIGHUP);
    expect_notify(&n, "RELOADING=1");
    expect_notify(&n, "READY=1");
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    while (json_array_size(jarr(np_ok(call(np, "{'cmd':'servers'}")), "servers")) != 1) {
        ck_assert_msg(np_now_ms() < deadline, "b was not removed by the valid reload");
        np_pause_ms(10);
    }
    ck_assert_int_eq(server_id(np, "a"), a_id);
    np_echo_check(held, "kept again");
    close(held);
    close(n.fd);
}
END_TEST

/* ================================================================== handlers */

START_TEST(test_echo_greeting)
{
    netd_proc_t *np = np_start("{}", 2);
    int port = listen_tcp0(np, "g", Q("{'type':'echo','greeting':'hello\\r\\n'}"));
    int fd = np_tcp_connect(port);
    char buf[16];
    ck_assert_int_eq(np_recv_exact(fd, buf, 7), 7);
    ck_assert(memcmp(buf, "hello\r\n", 7) == 0);
    np_echo_check(fd, "abc");
    np_echo_check(fd, "defgh\n");
    close(fd);
}
END_TEST

START_TEST(test_echo_half_close)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int fd = np_tcp_connect(server_port(np, "echo"));
    enum { N = 100000 };
    char *out = malloc(N), *in = malloc(N + 16);
    pattern(out, N, 7);
    np_send_all(fd, out, N);
    ck_assert(shutdown(fd, SHUT_WR) == 0);
    /* Everything echoed, then FIN. */
    ssize_t got = np_recv_to_eof(fd, in, N + 16);
    ck_assert_int_eq(got, N);
    ck_assert(memcmp(in, out, N) == 0);
    free(out);
    free(in);
    close(fd);
    wait_count(np, "echo", 0, 0, 1);
}
END_TEST

START_TEST(test_discard)
{
    netd_proc_t *np = np_start("{}", 2);
    int port = listen_tcp0(np, "dis", "{\"type\":\"discard\"}");
    int fd = np_tcp_connect(port);
    enum { N = 200000 };
    char *buf = malloc(N);
    pattern(buf, N, 0);
    np_send_all(fd, buf, N);
    free(buf);
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    json_int_t got;
    for (;;) {
        json_t *arr = jarr(np_ok(np_call(np, "{s:s, s:s}", "cmd", "sockets", "server", "dis")),
                           "sockets");
        /* (Not listed until netd has accepted it: no reply tells us when.) */
        ck_assert_int_le(json_array_size(arr), 1);
        got = 0;
        if (json_array_size(arr) == 1) {
            got = jint(json_array_get(arr, 0), "bytesRead");
            ck_assert_int_eq(jint(json_array_get(arr, 0), "bytesWritten"), 0);
        }
        if (got >= N)
            break;
        ck_assert_msg(np_now_ms() < deadline, "bytesRead stayed at %lld of %d", (long long)got, N);
        np_pause_ms(10);
    }
    ck_assert_int_eq(got, N);
    /* Nothing comes back: after our FIN, netd ends without a byte. */
    ck_assert(shutdown(fd, SHUT_WR) == 0);
    ck_assert_int_eq(np_expect_eof(fd), 1);
    close(fd);
    wait_count(np, "dis", 0, 0, 1);
    json_t *s = server_obj(np, "dis");
    ck_assert_int_eq(jint(s, "bytesReadTotal"), N);
    ck_assert_int_eq(jint(s, "bytesWrittenTotal"), 0);
}
END_TEST

START_TEST(test_banner)
{
    netd_proc_t *np = np_start("{}", 2);
    int port = listen_tcp0(np, "ban", "{\"type\":\"banner\",\"text\":\"goodbye\\n\"}");
    for (int i = 0; i < 3; i++) {
        int fd = np_tcp_connect(port);
        char buf[64];
        ssize_t n = np_recv_to_eof(fd, buf, sizeof(buf));
        ck_assert_int_eq(n, 8);
        ck_assert(memcmp(buf, "goodbye\n", 8) == 0);
        close(fd);
    }
    json_t *s = server_obj(np, "ban");
    ck_assert_int_eq(jint(s, "acceptedTotal"), 3);
    wait_count(np, "ban", 0, 0, 3);
}
END_TEST

static void proxy_roundtrip(int fd, upstream_t *up)
{
    np_echo_check(fd, "hello upstream\n");
    /* A bigger transfer, in steps: both directions through the pipes. */
    enum { STEP = 16384, STEPS = 16 };
    char out[STEP], in[STEP];
    for (int i = 0; i < STEPS; i++) {
        pattern(out, STEP, (size_t)i * STEP);
        np_send_all(fd, out, STEP);
        ck_assert_int_eq(np_recv_exact(fd, in, STEP), STEP);
        ck_assert_msg(memcmp(in, out, STEP) == 0, "proxy corrupted step %d", i);
    }
    /* Half-close: our FIN reaches the upstream, which still answers, then ends. */
    ck_assert(shutdown(fd, SHUT_WR) == 0);
    char buf[64];
    ssize_t n = np_recv_to_eof(fd, buf, sizeof(buf));
    ck_assert_msg(n == 4 && memcmp(buf, "bye\n", 4) == 0,
                  "after our FIN: %zd bytes from the upstream (want \"bye\\n\" then EOF)", n);
    ck_assert_int_eq(atomic_load(&up->saw_eof), 1);
}

START_TEST(test_proxy_tcp)
{
    upstream_t up;
    netd_proc_t *np = np_start("{}", 2);
    upstream_start(&up, NULL);
    /* allowHalfOpen is what lets the client's FIN through while the upstream answers. */
    json_t *r = np_ok(call(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'px',"
                               "'allowHalfOpen':true,'handler':{'type':'proxy','port':%d,"
                               "'host':'127.0.0.1'}}",
                           up.port));
    json_t *h = jobj(jobj(r, "server"), "handler");
    ck_assert_str_eq(jstr(h, "type"), "proxy");
    ck_assert_int_eq(jint(h, "port"), up.port);
    ck_assert_str_eq(jstr(h, "host"), "127.0.0.1");
    int port = (int)jint(jobj(jobj(r, "server"), "address"), "port");
    int fd = np_tcp_connect(port);
    proxy_roundtrip(fd, &up);
    close(fd);
    wait_count(np, "px", 0, 0, 1);
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    while (jint(np_ok(call(np, "{'cmd':'sockets','role':'all'}")), "total") != 0) {
        ck_assert_msg(np_now_ms() < deadline, "the upstream socket outlives its client");
        np_pause_ms(10);
    }
    upstream_stop(&up);
}
END_TEST

START_TEST(test_proxy_unix_upstream)
{
    upstream_t up;
    netd_proc_t *np = np_start("{}", 2);
    char path[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/up.sock", np->dir);
    upstream_start(&up, path);
    json_t *r = np_ok(call(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'pu',"
                               "'allowHalfOpen':true,'handler':{'type':'proxy','path':'%s'}}",
                           path));
    ck_assert_str_eq(jstr(jobj(jobj(r, "server"), "handler"), "path"), path);
    int fd = np_tcp_connect((int)jint(jobj(jobj(r, "server"), "address"), "port"));
    proxy_roundtrip(fd, &up);
    close(fd);
    upstream_stop(&up);
}
END_TEST

START_TEST(test_proxy_refused)
{
    netd_proc_t *np = np_start("{}", 2);
    int dead = th_free_port();
    int port = listen_tcp0(np, "pr", Q("{'type':'proxy','port':%d}", dead));
    int fd = np_tcp_connect(port);
    np_send_all(fd, "anyone?", 7);
    ck_assert_msg(np_expect_eof(fd) == 1, "a client of a refused upstream should be closed");
    close(fd);
    wait_stat_ge(np, "upstreamFailedTotal", 1);
    wait_count(np, "pr", 0, 0, 1);
    ck_assert_int_eq(jint(np_ok(call(np, "{'cmd':'sockets','role':'all'}")), "total"), 0);
    /* Counted again for a second client. */
    fd = np_tcp_connect(port);
    ck_assert_int_eq(np_expect_eof(fd), 1);
    close(fd);
    wait_stat_ge(np, "upstreamFailedTotal", 2);
}
END_TEST

/* A slow upstream: backpressure holds the queue at the high-water mark instead of
 * buffering everything the client sends. The upstream is a listening socket nobody
 * accepts from: the kernel completes the handshake and nobody ever reads. */
START_TEST(test_proxy_backpressure)
{
    int up_port;
    int up = np_tcp_listen(&up_port);
    netd_proc_t *np = np_start(Q("{'limits':{'highWaterMark':65536}}"), 2);
    int port = listen_tcp0(np, "slow", Q("{'type':'proxy','port':%d}", up_port));
    int fd = np_tcp_connect(port);
    ck_assert(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
    enum { CHUNK = 65536 };
    static char chunk[CHUNK];
    memset(chunk, 'z', sizeof(chunk));
    size_t sent = 0;
    const size_t cap = (size_t)256 << 20;
    for (;;) {
        ssize_t n = send(fd, chunk, sizeof(chunk), MSG_NOSIGNAL);
        if (n > 0) {
            sent += (size_t)n;
            ck_assert_msg(sent < cap, "sent %zu bytes to a proxy whose upstream never reads: "
                                      "no backpressure", sent);
            continue;
        }
        ck_assert_msg(n < 0 && errno == EAGAIN, "send: %s", strerror(errno));
        struct pollfd p = {fd, POLLOUT, 0};
        if (poll(&p, 1, (int)th_scale(300)) == 0)
            break; /* stalled: every buffer on the way is full */
    }
    json_t *arr = jarr(np_ok(call(np, "{'cmd':'sockets','role':'all'}")), "sockets");
    ck_assert_int_eq(json_array_size(arr), 2);
    size_t i;
    json_t *k;
    json_array_foreach(arr, i, k)
    {
        json_int_t queued = jint(k, "bufferSize");
        ck_assert_msg(queued <= 65536 + 4 * CHUNK,
                      "%s socket queues %lld bytes (highWaterMark 65536; sent %zu)",
                      jstr(k, "role"), (long long)queued, sent);
        if (strcmp(jstr(k, "role"), "client") == 0)
            ck_assert_msg(jint(k, "bytesRead") < (json_int_t)sent || sent < 2 * CHUNK,
                          "netd read everything (%lld of %zu): the client was never paused",
                          (long long)jint(k, "bytesRead"), sent);
    }
    close(fd);
    close(up);
}
END_TEST

/* ================================================================== counts */

static void close_fds(int *fds, int from, int to)
{
    for (int i = from; i < to; i++) {
        close(fds[i]);
        fds[i] = -1;
    }
}

START_TEST(test_counts)
{
    int threads = _i == 0 ? 2 : 4;
    netd_proc_t *np = np_start(Q(CFG_ECHO), threads);
    int port = server_port(np, "echo");
    int fds[20];
    int held = 0;
    /* Open 10: exact at every step (each has had an echo round trip). */
    for (int i = 0; i < 10; i++) {
        fds[held++] = echo_client(port);
        ck_assert_int_eq(get_connections(np, "echo"), held);
        ck_assert_int_eq(listed_connections(np, "echo"), held);
    }
    ck_assert_int_eq(jint(stats(np), "connections"), 10);
    /* Close 3. */
    close_fds(fds, 0, 3);
    wait_count(np, "echo", 7, 7, 10);
    ck_assert_int_eq(jint(stats(np), "connections"), 7);
    /* Open 5 more. */
    for (int i = 0; i < 5; i++) {
        fds[held++] = echo_client(port);
        ck_assert_int_eq(get_connections(np, "echo"), 7 + i + 1);
        ck_assert_int_eq(listed_connections(np, "echo"), 7 + i + 1);
    }
    /* The per-thread counts add up. */
    json_t *th = jarr(stats(np), "threads");
    ck_assert_int_eq(json_array_size(th), threads);
    json_int_t sum = 0;
    for (int i = 0; i < threads; i++)
        sum += jint(json_array_get(th, (size_t)i), "connections");
    ck_assert_int_eq(sum, 12);
    ck_assert_int_eq(jint(np_ok(call(np, "{'cmd':'sockets'}")), "total"), 12);
    /* Close 6, then the rest. */
    close_fds(fds, 3, 9);
    wait_count(np, "echo", 6, 6, 12);
    close_fds(fds, 9, held);
    wait_count(np, "echo", 0, 0, 6);
    json_t *s = server_obj(np, "echo");
    ck_assert_int_eq(jint(s, "acceptedTotal"), 15);
    ck_assert_int_eq(jint(stats(np), "connections"), 0);
}
END_TEST

/* ================================================================== drain */

START_TEST(test_sigterm_drain)
{
    notify_sock_t n;
    notify_open(&n, false);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {.config = Q(CFG_ECHO), .env = env};
    netd_proc_t *np = np_start_ex(&o);
    expect_notify(&n, "READY=1");
    int port = server_port(np, "echo");
    int fd = echo_client(port);
    /* Pending data: sent, not yet read back, when the signal comes. */
    enum { N = 32768 };
    char *out = malloc(N), *in = malloc(N);
    pattern(out, N, 3);
    np_send_all(fd, out, N);
    np_signal(np, SIGTERM);
    expect_notify(&n, "STOPPING=1");
    ck_assert_int_eq(np_recv_exact(fd, in, N), N);
    ck_assert(memcmp(in, out, N) == 0);
    free(out);
    free(in);
    /* Still served while draining, but nothing new is accepted. */
    np_echo_check(fd, "more while draining");
    ck_assert_int_eq(np_tcp_try_connect(port), -ECONNREFUSED);
    np_ok(call(np, "{'cmd':'ping'}"));
    ck_assert_msg(np_wait_exit(np, 100) == -1, "netd exited with a connection still open");
    close(fd);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 0);
    close(n.fd);
}
END_TEST

/* SIGINT drains like SIGTERM; -f is accepted and netd never forks (the pid we started
 * is the one that answers and exits). */
START_TEST(test_sigint_foreground)
{
    static const char *const args[] = {"-f", NULL};
    np_opts_t o = {.config = Q(CFG_ECHO), .args = args};
    netd_proc_t *np = np_start_ex(&o);
    ck_assert_int_eq(jint(np_ok(call(np, "{'cmd':'ping'}")), "pid"), np->pid);
    int fd = echo_client(server_port(np, "echo"));
    np_signal(np, SIGINT);
    np_echo_check(fd, "draining on SIGINT");
    close(fd);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 0);
}
END_TEST

START_TEST(test_second_sigterm)
{
    notify_sock_t n;
    notify_open(&n, false);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {.config = Q("{'shutdownTimeoutMs':60000,"
                               "'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"),
                   .env = env};
    netd_proc_t *np = np_start_ex(&o);
    expect_notify(&n, "READY=1");
    int fd = echo_client(server_port(np, "echo"));
    np_signal(np, SIGTERM);
    expect_notify(&n, "STOPPING=1");
    np_signal(np, SIGTERM);
    int st = np_wait_exit(np, 3000);
    ck_assert_msg(st == 1, "a second SIGTERM while draining: exit status %d (want 1, promptly)",
                  st);
    ck_assert_int_eq(np_expect_eof(fd), 1);
    close(fd);
    close(n.fd);
}
END_TEST

START_TEST(test_shutdown_deadline)
{
    netd_proc_t *np = np_start(Q(CFG_ECHO), 2);
    int fd = echo_client(server_port(np, "echo"));
    np_ok(call(np, "{'cmd':'shutdown','timeoutMs':300}"));
    int st = np_wait_exit(np, NP_TIMEOUT_MS);
    ck_assert_msg(st == 1, "the deadline cut a connection: status %d (want 1)", st);
    ck_assert_int_eq(np_expect_eof(fd), 1);
    close(fd);
}
END_TEST

/* ================================================================== socket activation */

static netd_proc_t *start_activated(const char *config, int lfd, const char *names,
                                    const char *listen_pid)
{
    np_opts_t o = {.config = config,
                   .pass_fd = lfd,
                   .listen_fds = 1,
                   .listen_fdnames = names,
                   .listen_pid = listen_pid};
    return np_start_ex(&o);
}

START_TEST(test_activation_by_name)
{
    int port;
    int lfd = np_tcp_listen(&port);
    netd_proc_t *np = start_activated(Q("{'servers':[{'name':'web','fd':'web'}]}"), lfd, "web",
                                      NULL);
    close(lfd); /* netd has its own */
    json_t *s = server_obj(np, "web");
    check_server_object(s);
    ck_assert_int_eq(jint(jobj(s, "address"), "port"), port);
    int fd = echo_client(port);
    ck_assert_int_eq(get_connections(np, "web"), 1);
    close(fd);
}
END_TEST

START_TEST(test_activation_by_number)
{
    int port;
    int lfd = np_tcp_listen(&port);
    netd_proc_t *np = start_activated(Q("{'servers':[{'name':'n','fd':3}]}"), lfd, NULL, NULL);
    close(lfd);
    ck_assert_int_eq(server_port(np, "n"), port);
    int fd = echo_client(port);
    close(fd);
}
END_TEST

/* A named descriptor binds to the config server of that name instead of its own bind. */
START_TEST(test_activation_named_server)
{
    int port;
    int lfd = np_tcp_listen(&port);
    netd_proc_t *np = start_activated(
        Q("{'servers':[{'name':'web','port':0,'host':'127.0.0.1'}]}"), lfd, "web", NULL);
    close(lfd);
    ck_assert_int_eq(server_port(np, "web"), port);
    int fd = echo_client(port);
    close(fd);
}
END_TEST

START_TEST(test_activation_listen_fd)
{
    int port;
    int lfd = np_tcp_listen(&port);
    netd_proc_t *np = start_activated("{}", lfd, "web", NULL);
    close(lfd);
    np_expect_error(call(np, "{'cmd':'listen','fd':9}"), "EBADF", NULL);
    np_expect_error(call(np, "{'cmd':'listen','fd':'other'}"), "EBADF", NULL);
    json_t *r = np_ok(call(np, "{'cmd':'listen','fd':3,'name':'inh'}"));
    ck_assert_int_eq(jint(jobj(jobj(r, "server"), "address"), "port"), port);
    int fd = echo_client(port);
    ck_assert_int_eq(get_connections(np, "inh"), 1);
    close(fd);
}
END_TEST

START_TEST(test_activation_listen_fd_name)
{
    int port;
    int lfd = np_tcp_listen(&port);
    netd_proc_t *np = start_activated("{}", lfd, "web", NULL);
    close(lfd);
    json_t *r = np_ok(call(np, "{'cmd':'listen','fd':'web','handler':{'type':'banner','text':'w\\n'}}"));
    ck_assert_int_eq(jint(jobj(jobj(r, "server"), "address"), "port"), port);
    int fd = np_tcp_connect(port);
    char buf[8];
    ck_assert_int_eq(np_recv_to_eof(fd, buf, sizeof(buf)), 2);
    close(fd);
}
END_TEST

/* LISTEN_FDS meant for another process is ignored. */
START_TEST(test_activation_wrong_pid)
{
    int port;
    int lfd = np_tcp_listen(&port);
    netd_proc_t *np = start_activated("{}", lfd, "web", "1");
    close(lfd);
    np_expect_error(call(np, "{'cmd':'listen','fd':3}"), "EBADF", NULL);
    np_expect_error(call(np, "{'cmd':'listen','fd':'web'}"), "EBADF", NULL);
}
END_TEST

/* ================================================================== sd_notify */

static void notify_lifecycle(bool abstract)
{
    notify_sock_t n;
    notify_open(&n, abstract);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {.config = Q(CFG_ECHO), .env = env};
    netd_proc_t *np = np_start_ex(&o);
    expect_notify(&n, "READY=1");
    np_signal(np, SIGTERM);
    expect_notify(&n, "STOPPING=1");
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 0);
    close(n.fd);
}

START_TEST(test_notify_path)
{
    notify_lifecycle(false);
}
END_TEST

START_TEST(test_notify_abstract)
{
    notify_lifecycle(true);
}
END_TEST

/* ================================================================== the control socket */

START_TEST(test_control_mode)
{
    netd_proc_t *np = np_start(Q("{'control':{'mode':'0660'}}"), 2);
    struct stat st;
    ck_assert(stat(np->sock, &st) == 0);
    ck_assert(S_ISSOCK(st.st_mode));
    ck_assert_msg((st.st_mode & 07777) == 0660, "mode %o, want 0660", st.st_mode & 07777);
    /* The temporary name is gone. */
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof(tmp), "%s.%d.tmp", np->sock, (int)np->pid);
    ck_assert(stat(tmp, &st) != 0);
}
END_TEST

START_TEST(test_control_default_mode)
{
    netd_proc_t *np = np_start("{}", 2);
    struct stat st;
    ck_assert(stat(np->sock, &st) == 0);
    ck_assert_msg((st.st_mode & 07777) == 0600, "mode %o, want 0600", st.st_mode & 07777);
}
END_TEST

START_TEST(test_control_path_from_config)
{
    /* No -s: the config's control.path, relative to the config file's directory. */
    np_opts_t o = {.config = Q("{'control':{'path':'c.sock'}}"), .sock_path = "c.sock",
                   .no_sock_arg = true};
    netd_proc_t *np = np_start_ex(&o);
    ck_assert_msg(str_in(np->sock, "/c.sock"), "%s", np->sock);
    np_ok(call(np, "{'cmd':'ping'}"));
}
END_TEST

/* -s wins over the config's control.path. */
START_TEST(test_control_path_s_wins)
{
    netd_proc_t *np = np_start(Q("{'control':{'path':'other.sock'}}"), 2);
    char other[PATH_MAX + 16];
    snprintf(other, sizeof(other), "%s/other.sock", np->dir);
    struct stat st;
    ck_assert_msg(stat(other, &st) != 0, "control.path was used despite -s");
    np_ok(call(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_second_netd_refused)
{
    netd_proc_t *first = np_start(Q(CFG_ECHO), 2);
    np_opts_t o = {.config = "{}", .sock_path = first->sock, .no_wait = true};
    netd_proc_t *second = np_start_ex(&o);
    int st = np_wait_exit(second, NP_TIMEOUT_MS);
    ck_assert_msg(st > 0, "a second netd on the same control path: status %d", st);
    ck_assert_msg(str_in(np_stderr(second), "another netd answers"), "stderr: %s",
                  np_stderr(second));
    /* The first one is untouched, its socket still in place. */
    np_ok(call(first, "{'cmd':'ping'}"));
    np_client_t *c = np_connect(first);
    json_t *r = np_ok(ccall(c, "{'cmd':'ping'}"));
    ck_assert_int_eq(jint(r, "pid"), first->pid);
}
END_TEST

/* A stale socket file (nobody answers) does not stop netd. */
START_TEST(test_stale_socket_replaced)
{
    char dir[PATH_MAX], path[PATH_MAX + 16];
    np_mkdtemp(dir);
    snprintf(path, sizeof(path), "%s/stale.sock", dir);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    sun_set(&sa, path);
    ck_assert(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    close(fd);
    np_opts_t o = {.config = "{}", .sock_path = path};
    netd_proc_t *np = np_start_ex(&o);
    np_ok(call(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_control_idle_timeout)
{
    netd_proc_t *np = np_start(Q("{'control':{'idleTimeout':300}}"), 2);
    np_client_t *idle = np_connect(np);
    np_ok(ccall(idle, "{'cmd':'ping'}"));
    np_client_t *w = np_connect(np);
    np_ok(ccall(w, "{'cmd':'watch'}"));
    ck_assert_msg(np_client_wait_closed(idle, NP_TIMEOUT_MS),
                  "an idle control client was not closed after control.idleTimeout");
    /* The watcher, just as idle, stays (well past two idle periods). */
    ck_assert_msg(!np_client_wait_closed(w, 700), "a watcher was closed for idleness");
    np_client_t *fresh = np_connect(np);
    np_ok(ccall(fresh, "{'cmd':'ping'}"));
}
END_TEST

/* ================================================================== suite */

static TCase *tcase(Suite *s, const char *name, int timeout)
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, NULL, np_cleanup_all);
    tcase_set_timeout(tc, timeout);
    suite_add_tcase(s, tc);
    return tc;
}

static Suite *daemon_suite(void)
{
    Suite *s = suite_create("netd");
    TCase *tc = tcase(s, "commands", 20);
    tcase_add_test(tc, test_ping);
    tcase_add_test(tc, test_id_echoed);
    tcase_add_test(tc, test_listen_port0_fields);
    tcase_add_test(tc, test_listen_path);
    tcase_add_test(tc, test_listen_options);
    tcase_add_test(tc, test_listen_reuseport);
    tcase_add_test(tc, test_listen_default_name);
    tcase_add_test(tc, test_servers_list);
    tcase_add_test(tc, test_server_by_id_and_name);
    tcase_add_test(tc, test_get_connections);
    tcase_add_test(tc, test_sockets_fields);
    tcase_add_test(tc, test_sockets_filter_server);
    tcase_add_test(tc, test_sockets_filter_limit);
    tcase_add_test(tc, test_sockets_filter_older);
    tcase_add_test(tc, test_sockets_filter_idle);
    tcase_add_test(tc, test_sockets_filter_role);
    tcase_add_test(tc, test_destroy);
    tcase_add_test(tc, test_move);
    tcase_add_test(tc, test_move_replies_once);
    tcase_add_test(tc, test_rebalance);
    tcase_add_test(tc, test_set_max_connections);
    tcase_add_test(tc, test_set_timeout);
    tcase_add_test(tc, test_stats);
    tcase_add_test(tc, test_metrics);
    tcase_add_test(tc, test_watch_order);
    tcase_add_test(tc, test_watch_filter);
    tcase_add_test(tc, test_shutdown);
    tcase_add_test(tc, test_help);
    tcase_add_test(tc, test_close_wait);
    tcase_add_test(tc, test_close_destroy);
    tcase_add_test(tc, test_close_nowait);

    tc = tcase(s, "errors", 20);
    tcase_add_test(tc, test_eparse);
    tcase_add_test(tc, test_eparse_duplicate_keys);
    tcase_add_test(tc, test_erequest);
    tcase_add_test(tc, test_ecommand);
    tcase_add_test(tc, test_earg);
    tcase_add_test(tc, test_enoserver);
    tcase_add_test(tc, test_enosocket);
    tcase_add_test(tc, test_enotrunning_after_close);
    tcase_add_test(tc, test_eexist);
    tcase_add_test(tc, test_eaddrinuse_raw);
    tcase_add_test(tc, test_eaddrinuse_own);
    tcase_add_test(tc, test_ebadf);
    tcase_add_test(tc, test_etoobig);
    tcase_add_test(tc, test_etoobig_unterminated);
    tcase_add_test(tc, test_line_at_limit);
    tcase_add_test(tc, test_ebusy);
    tcase_add_test(tc, test_eshutdown);
    tcase_add_test(tc, test_eperm);
    tcase_add_test(tc, test_bad_requests_keep_connection);

    tc = tcase(s, "config", 20);
    tcase_add_test(tc, test_config_valid);
    tcase_add_test(tc, test_config_threads);
    tcase_add_test(tc, test_check_valid);
    tcase_add_loop_test(tc, test_check_invalid, 0,
                        (int)(sizeof(invalid_configs) / sizeof(invalid_configs[0])));
    tcase_add_test(tc, test_invalid_config_exits_2);
    tcase_add_test(tc, test_reload);
    tcase_add_test(tc, test_reload_invalid_keeps);

    tc = tcase(s, "handlers", 20);
    tcase_add_test(tc, test_echo_greeting);
    tcase_add_test(tc, test_echo_half_close);
    tcase_add_test(tc, test_discard);
    tcase_add_test(tc, test_banner);
    tcase_add_test(tc, test_proxy_tcp);
    tcase_add_test(tc, test_proxy_unix_upstream);
    tcase_add_test(tc, test_proxy_refused);
    tcase_add_test(tc, test_proxy_backpressure);

    tc = tcase(s, "counts", 30);
    tcase_add_loop_test(tc, test_counts, 0, 2);

    tc = tcase(s, "drain", 20);
    tcase_add_test(tc, test_sigterm_drain);
    tcase_add_test(tc, test_sigint_foreground);
    tcase_add_test(tc, test_second_sigterm);
    tcase_add_test(tc, test_shutdown_deadline);

    tc = tcase(s, "activation", 20);
    tcase_add_test(tc, test_activation_by_name);
    tcase_add_test(tc, test_activation_by_number);
    tcase_add_test(tc, test_activation_named_server);
    tcase_add_test(tc, test_activation_listen_fd);
    tcase_add_test(tc, test_activation_listen_fd_name);
    tcase_add_test(tc, test_activation_wrong_pid);

    tc = tcase(s, "notify", 20);
    tcase_add_test(tc, test_notify_path);
    tcase_add_test(tc, test_notify_abstract);

    tc = tcase(s, "control", 20);
    tcase_add_test(tc, test_control_mode);
    tcase_add_test(tc, test_control_default_mode);
    tcase_add_test(tc, test_control_path_from_config);
    tcase_add_test(tc, test_control_path_s_wins);
    tcase_add_test(tc, test_second_netd_refused);
    tcase_add_test(tc, test_stale_socket_replaced);
    tcase_add_test(tc, test_control_idle_timeout);
    return s;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    np_tmproot_init();
    SRunner *sr = srunner_create(daemon_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    np_tmproot_cleanup();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
