/* SPDX-License-Identifier: MIT */
/*
 * netd's commands end to end (CONTROL.md): a real daemon per test, driven through its
 * control socket and real clients; every command and every field of its reply.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"
#include "netd_proc.h"
#include "protocol.h"

/* ================================================================== commands */

/* The sockets of a server (a `sockets` reply). */
static json_t *sockets_of(netd_proc_t *np, const char *name)
{
    return np_ok(np_call(np, "{s:s, s:s}", "cmd", "sockets", "server", name));
}

/* The one socket of the named server whose remotePort is the client's local port. */
static json_t *socket_of_client(netd_proc_t *np, const char *name, int client_fd)
{
    int lport = np_local_port(client_fd);
    json_t *arr = np_jarr(sockets_of(np, name), "sockets");
    size_t i;
    json_t *k;
    json_array_foreach(arr, i, k) {
        if (np_jint(k, "remotePort") == lport)
            return k;
    }
    ck_abort_msg("no socket with remotePort %d in %s", lport, np_json_str(arr));
    return NULL;
}

START_TEST(test_ping)
{
    netd_proc_t *np = np_start("{}", 2);
    json_t *r = np_ok(np_call(np, "{s:s, s:i}", "cmd", "ping", "id", 7));
    ck_assert_int_eq(np_jint(r, "id"), 7);
    ck_assert_str_eq(np_jstr(r, "version"), NETD_VERSION_STRING);
    ck_assert_int_eq(np_jint(r, "pid"), np->pid);
    json_int_t up1 = np_jint(r, "uptimeMs");
    ck_assert_int_ge(up1, 0);
    np_pause_ms(30);
    json_int_t up2 = np_jint(np_ok(np_call(np, "{s:s}", "cmd", "ping")), "uptimeMs");
    ck_assert_msg(up2 >= up1 + 20, "uptimeMs should grow: %lld then %lld", (long long)up1,
                  (long long)up2);
}
END_TEST

/* id: any JSON value, echoed back unchanged, on success and on error. */
START_TEST(test_id_echoed)
{
    netd_proc_t *np = np_start("{}", 2);
    static const char *const ids[] = {"42",   "'abc'",     "{'k':[1,2,{'x':null}]}", "1.5", "true",
                                      "null", "[1,'two']", "-9007199254740993",      NULL};
    for (int i = 0; ids[i]; i++) {
        const char *idtext = np_q("%s", ids[i]);
        json_t *want = np_parse(np_q("{'v':%s}", ids[i]));
        json_t *r = np_qcall(np, "{'id':%s,'cmd':'ping'}", idtext);
        np_ok(r);
        ck_assert_msg(json_equal(json_object_get(r, "id"), json_object_get(want, "v")),
                      "id %s came back as %s", idtext, np_json_str(json_object_get(r, "id")));
        r = np_qcall(np, "{'id':%s,'cmd':'no-such-command'}", idtext);
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
    json_t *r = np_ok(np_qcall(np, "{'id':'L','cmd':'listen','port':0,'host':'127.0.0.1'}"));
    ck_assert_str_eq(np_jstr(r, "id"), "L");
    json_t *s = np_jobj(r, "server");
    np_check_server_object(s);
    ck_assert_str_eq(np_jstr(s, "state"), "listening");
    json_t *a = np_jobj(s, "address");
    ck_assert_str_eq(np_jstr(a, "address"), "127.0.0.1");
    ck_assert_str_eq(np_jstr(a, "family"), "IPv4");
    int port = (int)np_jint(a, "port");
    ck_assert_int_gt(port, 0);
    ck_assert_str_eq(np_jstr(np_jobj(s, "handler"), "type"), "echo");
    ck_assert_str_eq(np_jstr(s, "balance"), "leastconn");
    ck_assert(json_is_false(json_object_get(s, "allowHalfOpen")));
    ck_assert(json_is_null(json_object_get(s, "maxConnections")));
    ck_assert_int_eq(np_jint(s, "timeout"), 0);
    ck_assert_int_eq(np_jint(s, "backlog"), 511);
    ck_assert_int_eq(np_jint(s, "connections"), 0);
    ck_assert_int_eq(np_jint(s, "acceptedTotal"), 0);
    /* The real port serves echo (the default handler). */
    int fd = np_echo_client(port);
    close(fd);
}
END_TEST

START_TEST(test_listen_path)
{
    netd_proc_t *np = np_start("{}", 2);
    char path[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/l.sock", np->dir);
    json_t *r = np_ok(np_call(np, "{s:s, s:s}", "cmd", "listen", "path", path));
    json_t *s = np_jobj(r, "server");
    np_check_server_object(s);
    json_t *a = np_jobj(s, "address");
    ck_assert_str_eq(np_jstr(a, "path"), path);
    ck_assert_int_eq(json_object_size(a), 1);
    /* Without a name, a server is named after its address: the path. */
    ck_assert_str_eq(np_jstr(s, "name"), path);
    int fd = np_unix_connect(path);
    np_echo_check(fd, "over unix\n");
    close(fd);
}
END_TEST

START_TEST(test_listen_options)
{
    netd_proc_t *np = np_start("{}", 2);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'opt',"
                                   "'backlog':16,'handler':{'type':'banner','text':'hi\\n'},"
                                   "'allowHalfOpen':true,'maxConnections':5,'timeout':60000,"
                                   "'noDelay':false,'keepAlive':1000,'balance':'roundrobin'}"));
    json_t *s = np_jobj(r, "server");
    np_check_server_object(s);
    ck_assert_str_eq(np_jstr(s, "name"), "opt");
    ck_assert_int_eq(np_jint(s, "backlog"), 16);
    json_t *h = np_jobj(s, "handler");
    ck_assert_str_eq(np_jstr(h, "type"), "banner");
    ck_assert_str_eq(np_jstr(h, "text"), "hi\n");
    ck_assert(json_is_true(json_object_get(s, "allowHalfOpen")));
    ck_assert_int_eq(np_jint(s, "maxConnections"), 5);
    ck_assert_int_eq(np_jint(s, "timeout"), 60000);
    ck_assert_str_eq(np_jstr(s, "balance"), "roundrobin");
    int fd = np_tcp_connect((int)np_jint(np_jobj(s, "address"), "port"));
    char buf[16];
    ck_assert_int_eq(np_recv_to_eof(fd, buf, sizeof(buf)), 3);
    ck_assert(memcmp(buf, "hi\n", 3) == 0);
    close(fd);
}
END_TEST

START_TEST(test_listen_reuseport)
{
    netd_proc_t *np = np_start("{}", 2);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'rp',"
                                   "'balance':'reuseport'}"));
    json_t *s = np_jobj(r, "server");
    np_check_server_object(s);
    ck_assert_str_eq(np_jstr(s, "balance"), "reuseport");
    int port = (int)np_jint(np_jobj(s, "address"), "port");
    int fds[4];
    for (int i = 0; i < 4; i++)
        fds[i] = np_echo_client(port);
    ck_assert_int_eq(np_get_connections(np, "rp"), 4);
    for (int i = 0; i < 4; i++)
        close(fds[i]);
}
END_TEST

/* An entry without a name is named after its address ("127.0.0.1:8124"). */
START_TEST(test_listen_default_name)
{
    netd_proc_t *np = np_start("{}", 2);
    int port = th_free_port();
    json_t *r = np_ok(np_qcall(np, "{'cmd':'listen','port':%d,'host':'127.0.0.1'}", port));
    char want[64];
    snprintf(want, sizeof(want), "127.0.0.1:%d", port);
    ck_assert_str_eq(np_jstr(np_jobj(r, "server"), "name"), want);
    ck_assert_int_eq(np_server_port(np, want), port);
}
END_TEST

START_TEST(test_servers_list)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    char path[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/s.sock", np->dir);
    np_ok(np_call(np, "{s:s, s:s, s:s}", "cmd", "listen", "path", path, "name", "u"));
    json_t *arr = np_jarr(np_ok(np_qcall(np, "{'cmd':'servers','id':3}")), "servers");
    ck_assert_int_eq(json_array_size(arr), 2);
    size_t i;
    json_t *s;
    bool echo = false, u = false;
    json_array_foreach(arr, i, s) {
        np_check_server_object(s);
        echo = echo || strcmp(np_jstr(s, "name"), "echo") == 0;
        u = u || strcmp(np_jstr(s, "name"), "u") == 0;
    }
    ck_assert(echo && u);
    ck_assert_int_ne(np_jint(json_array_get(arr, 0), "id"), np_jint(json_array_get(arr, 1), "id"));
}
END_TEST

START_TEST(test_server_by_id_and_name)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    json_t *byname = np_server_obj(np, "echo");
    np_check_server_object(byname);
    json_int_t id = np_jint(byname, "id");
    json_t *byid = np_jobj(np_ok(np_call(np, "{s:s, s:I}", "cmd", "server", "server", id)),
                           "server");
    np_check_server_object(byid);
    ck_assert_int_eq(np_jint(byid, "id"), id);
    ck_assert_str_eq(np_jstr(byid, "name"), "echo");
    /* getConnections and sockets take either too. */
    ck_assert_int_eq(
        np_jint(np_ok(np_call(np, "{s:s, s:I}", "cmd", "getConnections", "server", id)), "count"),
        0);
}
END_TEST

START_TEST(test_get_connections)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    ck_assert_int_eq(np_get_connections(np, "echo"), 0);
    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = np_echo_client(port);
        ck_assert_int_eq(np_get_connections(np, "echo"), i + 1);
    }
    json_t *s = np_server_obj(np, "echo");
    ck_assert_int_eq(np_jint(s, "connections"), 3);
    ck_assert_int_eq(np_jint(s, "acceptedTotal"), 3);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    np_wait_count(np, "echo", 0, 0, 3);
}
END_TEST

START_TEST(test_sockets_fields)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    json_int_t sid = np_server_id(np, "echo");
    int fd = np_tcp_connect(port);
    np_echo_check(fd, "hello");
    json_t *r = np_ok(np_qcall(np, "{'cmd':'sockets','id':'s'}"));
    ck_assert_int_eq(np_jint(r, "total"), 1);
    json_t *arr = np_jarr(r, "sockets");
    ck_assert_int_eq(json_array_size(arr), 1);
    json_t *k = json_array_get(arr, 0);
    np_check_socket_object(k);
    ck_assert_int_eq(np_jint(k, "server"), sid);
    ck_assert_str_eq(np_jstr(k, "remoteAddress"), "127.0.0.1");
    ck_assert_int_eq(np_jint(k, "remotePort"), np_local_port(fd));
    ck_assert_str_eq(np_jstr(k, "remoteFamily"), "IPv4");
    ck_assert_str_eq(np_jstr(k, "localAddress"), "127.0.0.1");
    ck_assert_int_eq(np_jint(k, "localPort"), port);
    ck_assert_int_eq(np_jint(k, "bytesRead"), 5);
    /* The echo reached us; the counter follows the write() that sent it. */
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    while (np_jint(k, "bytesWritten") < 5) {
        ck_assert_msg(np_now_ms() < deadline, "bytesWritten stays below 5: %s", np_json_str(k));
        np_pause_ms(10);
        k = socket_of_client(np, "echo", fd);
    }
    ck_assert_int_eq(np_jint(k, "bytesWritten"), 5);
    ck_assert_int_lt(np_jint(k, "thread"), 2);
    ck_assert_str_eq(np_jstr(k, "state"), "open");
    ck_assert_str_eq(np_jstr(k, "role"), "client");
    close(fd);
}
END_TEST

START_TEST(test_sockets_filter_server)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int p1 = np_server_port(np, "echo");
    int p2 = np_listen_tcp0(np, "two", NULL);
    int a = np_echo_client(p1), b = np_echo_client(p2), c = np_echo_client(p2);
    json_int_t id2 = np_server_id(np, "two");
    json_t *r = np_ok(np_qcall(np, "{'cmd':'sockets','server':'two'}"));
    ck_assert_int_eq(np_jint(r, "total"), 2);
    size_t i;
    json_t *k;
    json_array_foreach(np_jarr(r, "sockets"), i, k)
        ck_assert_int_eq(np_jint(k, "server"), id2);
    r = np_ok(np_qcall(np, "{'cmd':'sockets','server':%lld}", (long long)np_server_id(np, "echo")));
    ck_assert_int_eq(np_jint(r, "total"), 1);
    ck_assert_int_eq(np_jint(json_array_get(np_jarr(r, "sockets"), 0), "remotePort"),
                     np_local_port(a));
    r = np_ok(np_qcall(np, "{'cmd':'sockets'}"));
    ck_assert_int_eq(np_jint(r, "total"), 3);
    ck_assert_int_eq(json_array_size(np_jarr(r, "sockets")), 3);
    close(a);
    close(b);
    close(c);
}
END_TEST

START_TEST(test_sockets_filter_limit)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int fds[5];
    for (int i = 0; i < 5; i++)
        fds[i] = np_echo_client(port);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'sockets','limit':2}"));
    ck_assert_int_eq(json_array_size(np_jarr(r, "sockets")), 2);
    ck_assert_int_eq(np_jint(r, "total"), 5); /* total: all matching, not the page */
    r = np_ok(np_qcall(np, "{'cmd':'sockets','limit':0}"));
    ck_assert_int_eq(json_array_size(np_jarr(r, "sockets")), 0);
    ck_assert_int_eq(np_jint(r, "total"), 5);
    r = np_ok(np_qcall(np, "{'cmd':'sockets','limit':100}"));
    ck_assert_int_eq(json_array_size(np_jarr(r, "sockets")), 5);
    for (int i = 0; i < 5; i++)
        close(fds[i]);
}
END_TEST

/* Polls `sockets` until the socket of client fd has `field` >= min. */
static void wait_socket_field(netd_proc_t *np, int fd, const char *field, json_int_t min)
{
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    for (;;) {
        json_int_t v = np_jint(socket_of_client(np, "echo", fd), field);
        if (v >= min)
            return;
        ck_assert_msg(np_now_ms() < deadline, "%s stayed at %lld", field, (long long)v);
        np_pause_ms(20);
    }
}

START_TEST(test_sockets_filter_older)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int old = np_echo_client(port);
    wait_socket_field(np, old, "ageMs", 700);
    int young = np_echo_client(port);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'sockets','olderThanMs':350}"));
    ck_assert_msg(np_jint(r, "total") == 1, "olderThanMs 350: %s", np_json_str(r));
    json_t *k = json_array_get(np_jarr(r, "sockets"), 0);
    ck_assert_int_eq(np_jint(k, "remotePort"), np_local_port(old));
    ck_assert_int_gt(np_jint(k, "ageMs"), 350);
    r = np_ok(np_qcall(np, "{'cmd':'sockets','olderThanMs':0}"));
    ck_assert_int_eq(np_jint(r, "total"), 2);
    r = np_ok(np_qcall(np, "{'cmd':'sockets','olderThanMs':3600000}"));
    ck_assert_int_eq(np_jint(r, "total"), 0);
    ck_assert_int_eq(json_array_size(np_jarr(r, "sockets")), 0);
    close(old);
    close(young);
}
END_TEST

START_TEST(test_sockets_filter_idle)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int idle = np_echo_client(port);
    int busy = np_echo_client(port);
    wait_socket_field(np, idle, "idleMs", 700);
    np_echo_check(busy, "still here");
    json_t *r = np_ok(np_qcall(np, "{'cmd':'sockets','idleMoreThanMs':350}"));
    ck_assert_msg(np_jint(r, "total") == 1, "idleMoreThanMs 350: %s", np_json_str(r));
    json_t *k = json_array_get(np_jarr(r, "sockets"), 0);
    ck_assert_int_eq(np_jint(k, "remotePort"), np_local_port(idle));
    ck_assert_int_gt(np_jint(k, "idleMs"), 350);
    r = np_ok(np_qcall(np, "{'cmd':'sockets','idleMoreThanMs':3600000}"));
    ck_assert_int_eq(np_jint(r, "total"), 0);
    close(idle);
    close(busy);
}
END_TEST

START_TEST(test_sockets_filter_role)
{
    np_upstream_t up;
    netd_proc_t *np = np_start("{}", 2);
    np_upstream_start(&up, NULL);
    int port = np_listen_tcp0(np, "px", np_q("{'type':'proxy','port':%d}", up.port));
    int fd = np_tcp_connect(port);
    np_echo_check(fd, "through the proxy");
    json_t *r = np_ok(np_qcall(np, "{'cmd':'sockets'}"));
    ck_assert_int_eq(np_jint(r, "total"), 1);
    ck_assert_str_eq(np_jstr(json_array_get(np_jarr(r, "sockets"), 0), "role"), "client");
    r = np_ok(np_qcall(np, "{'cmd':'sockets','role':'client'}"));
    ck_assert_int_eq(np_jint(r, "total"), 1);
    ck_assert_str_eq(np_jstr(json_array_get(np_jarr(r, "sockets"), 0), "role"), "client");
    r = np_ok(np_qcall(np, "{'cmd':'sockets','role':'upstream'}"));
    ck_assert_int_eq(np_jint(r, "total"), 1);
    json_t *u = json_array_get(np_jarr(r, "sockets"), 0);
    np_check_socket_object(u);
    ck_assert_str_eq(np_jstr(u, "role"), "upstream");
    ck_assert_int_eq(np_jint(u, "remotePort"), up.port);
    r = np_ok(np_qcall(np, "{'cmd':'sockets','role':'all'}"));
    ck_assert_int_eq(np_jint(r, "total"), 2);
    /* Upstreams are not counted in their server's connections. */
    ck_assert_int_eq(np_get_connections(np, "px"), 1);
    ck_assert_int_eq(np_listed_connections(np, "px"), 1);
    close(fd);
    np_upstream_stop(&up);
}
END_TEST

START_TEST(test_destroy)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int keep = np_echo_client(port);
    int fd = np_echo_client(port);
    json_int_t id = np_jint(socket_of_client(np, "echo", fd), "id");
    json_t *r = np_ok(np_qcall(np, "{'cmd':'destroy','socket':%lld,'id':1}", (long long)id));
    ck_assert_int_eq(np_jint(r, "destroyed"), 1);
    ck_assert_int_eq(np_expect_eof(fd), 1);
    np_wait_count(np, "echo", 1, 1, 2);
    /* The other connection is untouched; the destroyed one is gone for good. */
    np_echo_check(keep, "untouched");
    np_expect_error(np_qcall(np, "{'cmd':'destroy','socket':%lld}", (long long)id), "ENOSOCKET",
                    NULL);
    close(fd);
    close(keep);
}
END_TEST

START_TEST(test_move)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int fd = np_echo_client(port);
    json_t *k = socket_of_client(np, "echo", fd);
    json_int_t id = np_jint(k, "id");
    int from = (int)np_jint(k, "thread"), to = 1 - from;

    /* Bytes in flight across the move: sent before it, unread, then more after it. */
    enum { PART = 48 * 1024 };
    char *out = malloc(2 * PART), *in = malloc(2 * PART);
    ck_assert(out && in);
    np_pattern(out, 2 * PART, 0);
    np_send_all(fd, out, PART);
    json_t *r = np_ok(
        np_qcall(np, "{'cmd':'move','socket':%lld,'thread':%d,'id':'m'}", (long long)id, to));
    json_t *moved = np_jobj(r, "socket");
    np_check_socket_object(moved);
    ck_assert_int_eq(np_jint(moved, "id"), id);
    ck_assert_int_eq(np_jint(moved, "thread"), to);
    /* One reply per request: the next request gets its own. */
    r = np_ok(np_qcall(np, "{'cmd':'ping','id':'after-move'}"));
    ck_assert_msg(json_is_string(json_object_get(r, "id")) &&
                      strcmp(np_jstr(r, "id"), "after-move") == 0,
                  "move was answered twice: the ping got %s", np_json_str(r));
    np_send_all(fd, out + PART, PART);
    size_t got = np_recv_exact(fd, in, 2 * PART);
    ck_assert_msg(got == 2 * PART, "echo after the move: %zu of %d bytes", got, 2 * PART);
    ck_assert_msg(memcmp(in, out, 2 * PART) == 0, "bytes lost or reordered across the move");
    free(out);
    free(in);

    k = socket_of_client(np, "echo", fd);
    ck_assert_int_eq(np_jint(k, "thread"), to);
    ck_assert_int_eq(np_jint(k, "id"), id);
    ck_assert_int_eq(np_jint(k, "bytesRead"), 5 + 2 * PART);
    /* Moving to the thread it is on: nothing to do, still a success. */
    r = np_ok(np_qcall(np, "{'cmd':'move','socket':%lld,'thread':%d}", (long long)id, to));
    ck_assert_int_eq(np_jint(np_jobj(r, "socket"), "thread"), to);
    /* And back again. */
    r = np_ok(np_qcall(np, "{'cmd':'move','socket':%lld,'thread':%d}", (long long)id, from));
    ck_assert_int_eq(np_jint(np_jobj(r, "socket"), "thread"), from);
    np_echo_check(fd, "home again");
    /* A thread that does not exist. */
    np_expect_error(np_qcall(np, "{'cmd':'move','socket':%lld,'thread':2}", (long long)id), "EARG",
                    "thread");
    ck_assert_int_eq(np_get_connections(np, "echo"), 1);
    close(fd);
}
END_TEST

/* Every move gets exactly one reply, in order: a ping right after each one must get the
 * ping's reply. (A socket that arrives on its target thread before the fan-out reaches
 * that thread must not be answered twice.) */
START_TEST(test_move_replies_once)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int fd = np_echo_client(np_server_port(np, "echo"));
    json_t *k = socket_of_client(np, "echo", fd);
    json_int_t id = np_jint(k, "id");
    int at = (int)np_jint(k, "thread");
    enum { INFLIGHT = 16384 };
    char out[INFLIGHT], in[INFLIGHT];
    for (int i = 0; i < 40; i++) {
        at = 1 - at;
        /* Bytes in flight make the owner busy while the fan-out runs. */
        np_pattern(out, INFLIGHT, (size_t)i);
        np_send_all(fd, out, INFLIGHT);
        json_t *r = np_ok(np_qcall(np, "{'cmd':'move','socket':%lld,'thread':%d,'id':'move%d'}",
                                   (long long)id, at, i));
        ck_assert_msg(strcmp(np_jstr(r, "id"), np_q("move%d", i)) == 0, "move %d: reply %s", i,
                      np_json_str(r));
        ck_assert_int_eq(np_jint(np_jobj(r, "socket"), "thread"), at);
        r = np_ok(np_qcall(np, "{'cmd':'ping','id':'ping%d'}", i));
        ck_assert_msg(strcmp(np_jstr(r, "id"), np_q("ping%d", i)) == 0,
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
    json_t *arr = np_jarr(np_ok(np_qcall(np, "{'cmd':'sockets'}")), "sockets");
    size_t i;
    json_t *k;
    json_array_foreach(arr, i, k) {
        int t = (int)np_jint(k, "thread");
        ck_assert_int_lt(t, n);
        counts[t]++;
    }
}

START_TEST(test_rebalance)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int fds[8];
    for (int i = 0; i < 8; i++)
        fds[i] = np_echo_client(port);
    /* Everything onto thread 0. */
    json_t *arr = np_jarr(np_ok(np_qcall(np, "{'cmd':'sockets'}")), "sockets");
    size_t i;
    json_t *k;
    json_array_foreach(arr, i, k)
        if (np_jint(k, "thread") != 0)
            np_ok(np_qcall(np, "{'cmd':'move','socket':%lld,'thread':0}",
                           (long long)np_jint(k, "id")));
    int counts[2];
    thread_counts(np, counts, 2);
    ck_assert_int_eq(counts[0], 8);
    ck_assert_int_eq(counts[1], 0);

    json_t *r = np_ok(np_qcall(np, "{'cmd':'rebalance','id':'rb'}"));
    ck_assert_int_ge(np_jint(r, "moved"), 3);
    thread_counts(np, counts, 2);
    ck_assert_msg(abs(counts[0] - counts[1]) <= 1, "after rebalance: %d and %d", counts[0],
                  counts[1]);
    /* The threads array of stats tells the same. */
    json_t *th = np_jarr(np_stats(np), "threads");
    json_int_t t0 = np_jint(json_array_get(th, 0), "connections");
    json_int_t t1 = np_jint(json_array_get(th, 1), "connections");
    ck_assert_msg(t0 + t1 == 8 && llabs(t0 - t1) <= 1, "stats.threads connections %lld and %lld",
                  (long long)t0, (long long)t1);
    for (int j = 0; j < 8; j++) {
        np_echo_check(fds[j], "after rebalance");
        close(fds[j]);
    }
    /* Balanced already: nothing moves. */
    np_wait_count(np, "echo", 0, 0, 8);
    ck_assert_int_eq(np_jint(np_ok(np_qcall(np, "{'cmd':'rebalance','server':'echo'}")), "moved"),
                     0);
}
END_TEST

START_TEST(test_set_max_connections)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    json_t *r = np_ok(np_qcall(np, "{'cmd':'set','server':'echo','maxConnections':2}"));
    json_t *s = np_jobj(r, "server");
    np_check_server_object(s);
    ck_assert_int_eq(np_jint(s, "maxConnections"), 2);
    int a = np_echo_client(port), b = np_echo_client(port);
    int c = np_tcp_connect(port);
    ck_assert_msg(np_expect_eof(c) == 1, "a connection over maxConnections should be closed");
    close(c);
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    while (np_jint(np_server_obj(np, "echo"), "rejectedTotal") < 1) {
        ck_assert_msg(np_now_ms() < deadline, "rejectedTotal did not rise");
        np_pause_ms(10);
    }
    /* Exactly the one connection over the limit, in the server's count and the totals. */
    ck_assert_int_eq(np_jint(np_server_obj(np, "echo"), "rejectedTotal"), 1);
    ck_assert_int_eq(np_wait_stat_ge(np, "rejectedTotal", 1), 1);
    ck_assert_int_eq(np_get_connections(np, "echo"), 2);
    np_echo_check(a, "still served");
    r = np_ok(np_qcall(np, "{'cmd':'set','server':'echo','maxConnections':null}"));
    ck_assert(json_is_null(json_object_get(np_jobj(r, "server"), "maxConnections")));
    int d = np_echo_client(port);
    ck_assert_int_eq(np_get_connections(np, "echo"), 3);
    close(a);
    close(b);
    close(d);
}
END_TEST

START_TEST(test_set_timeout)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int before = np_echo_client(port);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'set','server':'echo','timeout':200}"));
    ck_assert_int_eq(np_jint(np_jobj(r, "server"), "timeout"), 200);
    ck_assert_int_eq(np_jint(np_server_obj(np, "echo"), "timeout"), 200);
    int after = np_echo_client(port);
    /* Both idle: netd destroys them. */
    ck_assert_msg(np_expect_eof(before) == 1, "an idle connection (opened before set) lives on");
    ck_assert_msg(np_expect_eof(after) == 1, "an idle connection (opened after set) lives on");
    np_wait_stat_ge(np, "idleTimeoutTotal", 2);
    np_wait_count(np, "echo", 0, 0, 2);
    /* A duration string, as listen and the config take (CONTROL.md "Durations"). */
    r = np_ok(np_qcall(np, "{'cmd':'set','server':'echo','timeout':'2m'}"));
    ck_assert_int_eq(np_jint(np_jobj(r, "server"), "timeout"), 120000);
    np_expect_error(np_qcall(np, "{'cmd':'set','server':'echo','timeout':'2 weeks'}"), "EARG",
                    "timeout");
    ck_assert_int_eq(np_jint(np_server_obj(np, "echo"), "timeout"), 120000);
    /* timeout 0: none. */
    r = np_ok(np_qcall(np, "{'cmd':'set','server':'echo','timeout':0}"));
    ck_assert_int_eq(np_jint(np_jobj(r, "server"), "timeout"), 0);
    close(before);
    close(after);
}
END_TEST

START_TEST(test_stats)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 3);
    int port = np_server_port(np, "echo");
    int a = np_echo_client(port), b = np_echo_client(port); /* 5 bytes each way, each */
    json_t *r = np_ok(np_qcall(np, "{'cmd':'stats','id':'st'}"));
    ck_assert_int_eq(np_jint(r, "pid"), np->pid);
    ck_assert_str_eq(np_jstr(r, "version"), NETD_VERSION_STRING);
    ck_assert_int_ge(np_jint(r, "uptimeMs"), 0);
    ck_assert_int_eq(np_jint(r, "connections"), 2);
    ck_assert_int_eq(np_jint(r, "acceptedTotal"), 2);
    ck_assert_int_eq(np_jint(r, "rejectedTotal"), 0);
    ck_assert_int_ge(np_jint(r, "bytesReadTotal"), 10);
    if (np_jint(r, "bytesWrittenTotal") < 10) /* counted just after the write() */
        np_wait_stat_ge(np, "bytesWrittenTotal", 10);
    static const char *const zero[] = {"acceptPausedTotal",   "handoffFailedTotal",
                                       "idleTimeoutTotal",    "slowDestroyedTotal",
                                       "upstreamFailedTotal", NULL};
    for (int i = 0; zero[i]; i++)
        ck_assert_msg(np_jint(r, zero[i]) == 0, "%s should be 0: %s", zero[i], np_json_str(r));
    ck_assert_int_gt(np_jint(r, "fdLimit"), 64);
    ck_assert_int_eq(np_jint(r, "servers"), 1);
    json_t *th = np_jarr(r, "threads");
    ck_assert_int_eq(json_array_size(th), 3);
    json_int_t conns = 0;
    for (size_t i = 0; i < 3; i++) {
        json_t *t = json_array_get(th, i);
        ck_assert_int_eq(np_jint(t, "id"), (json_int_t)i);
        conns += np_jint(t, "connections");
        ck_assert_int_ge(np_jint(t, "acceptedTotal"), 0);
        ck_assert_int_ge(np_jint(t, "handoffsTotal"), 0);
        ck_assert_int_ge(np_jint(t, "bytesReadTotal"), 0);
        ck_assert_int_ge(np_jint(t, "bytesWrittenTotal"), 0);
    }
    ck_assert_int_eq(conns, 2);
    close(a);
    close(b);
    /* Closed connections keep their bytes in the totals. */
    np_wait_count(np, "echo", 0, 0, 2);
    r = np_stats(np);
    ck_assert_int_eq(np_jint(r, "connections"), 0);
    ck_assert_int_ge(np_jint(r, "bytesReadTotal"), 10);
    json_t *s = np_server_obj(np, "echo");
    ck_assert_int_eq(np_jint(s, "bytesReadTotal"), 10);
    ck_assert_int_eq(np_jint(s, "bytesWrittenTotal"), 10);
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
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int a = np_echo_client(port);
    /* The worker counts what it wrote just after send(): the client may have read the echo
     * first. */
    np_wait_stat_ge(np, "bytesWrittenTotal", 5);
    json_t *st = np_stats(np);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'metrics'}"));
    const char *text = np_jstr(r, "text");
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
        ck_assert_msg((json_int_t)v == np_jint(st, same[i].field), "%s = %g, stats.%s = %lld",
                      same[i].metric, v, same[i].field, (long long)np_jint(st, same[i].field));
    }
    close(a);
}
END_TEST

static json_t *next_event(np_client_t *w)
{
    json_t *e = np_client_recv(w, NP_TIMEOUT_MS);
    np_jstr(e, "event");
    return e;
}

START_TEST(test_watch_order)
{
    netd_proc_t *np = np_start("{}", 2);
    np_client_t *w = np_connect(np);
    json_t *r = np_ok(np_ccall(w, "{'cmd':'watch','id':'w'}"));
    ck_assert_str_eq(np_jstr(r, "id"), "w");
    int port = np_listen_tcp0(np, "wsrv", NULL);
    json_int_t sid = np_server_id(np, "wsrv");
    json_t *e = next_event(w);
    ck_assert_msg(strcmp(np_jstr(e, "event"), "listening") == 0, "first event: %s", np_json_str(e));
    ck_assert_int_eq(np_jint(e, "server"), sid);
    int fd = np_echo_client(port);
    e = next_event(w);
    ck_assert_msg(strcmp(np_jstr(e, "event"), "connection") == 0, "second event: %s",
                  np_json_str(e));
    ck_assert_int_eq(np_jint(e, "server"), sid);
    json_int_t sock = np_jint(e, "socket");
    ck_assert_int_eq(sock, np_jint(socket_of_client(np, "wsrv", fd), "id"));
    close(fd);
    e = next_event(w);
    ck_assert_msg(strcmp(np_jstr(e, "event"), "close") == 0, "third event: %s", np_json_str(e));
    ck_assert_int_eq(np_jint(e, "server"), sid);
    ck_assert_int_eq(np_jint(e, "socket"), sock);
    /* The server's own close. */
    np_ok(np_qcall(np, "{'cmd':'close','server':'wsrv'}"));
    e = next_event(w);
    ck_assert_msg(strcmp(np_jstr(e, "event"), "close") == 0, "fourth event: %s", np_json_str(e));
    ck_assert_int_eq(np_jint(e, "server"), sid);
    ck_assert_msg(json_object_get(e, "socket") == NULL ||
                      json_is_null(json_object_get(e, "socket")),
                  "a server's close names no socket: %s", np_json_str(e));
}
END_TEST

START_TEST(test_watch_filter)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    np_client_t *w = np_connect(np);
    np_ok(np_ccall(w, "{'cmd':'watch','events':['close']}"));
    int fd = np_echo_client(port);
    json_int_t sock = np_jint(socket_of_client(np, "echo", fd), "id");
    close(fd);
    json_t *e = next_event(w);
    ck_assert_msg(strcmp(np_jstr(e, "event"), "close") == 0, "only close events asked: %s",
                  np_json_str(e));
    ck_assert_int_eq(np_jint(e, "socket"), sock);
    /* The watcher does not count as a connection. */
    np_wait_count(np, "echo", 0, 0, 1);
}
END_TEST

START_TEST(test_shutdown)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'shutdown','id':'bye'}"));
    ck_assert(json_is_true(json_object_get(r, "draining")));
    ck_assert_str_eq(np_jstr(r, "id"), "bye");
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 0);
    struct stat st;
    ck_assert_msg(stat(np->sock, &st) != 0 && errno == ENOENT,
                  "the control socket should be removed at exit");
}
END_TEST

START_TEST(test_help)
{
    static const char *const cmds[] = {
        "ping",    "listen",  "close",    "servers",   "server", "getConnections",
        "sockets", "destroy", "move",     "rebalance", "set",    "stats",
        "metrics", "watch",   "shutdown", "help",      NULL};
    netd_proc_t *np = np_start("{}", 2);
    json_t *arr = np_jarr(np_ok(np_qcall(np, "{'cmd':'help'}")), "commands");
    for (int i = 0; cmds[i]; i++) {
        bool found = false;
        size_t k;
        json_t *c;
        json_array_foreach(arr, k, c) {
            if (strcmp(np_jstr(c, "cmd"), cmds[i]) == 0) {
                ck_assert_msg(*np_jstr(c, "usage"), "%s: empty usage", cmds[i]);
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
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    json_int_t sid = np_server_id(np, "echo");
    int fd = np_echo_client(port);
    np_client_t *c = np_connect(np);
    np_client_send(c, np_parse(np_q("{'cmd':'close','server':'echo','id':'c'}")));
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
    ck_assert_str_eq(np_jstr(np_server_obj(np, "echo"), "state"), "closing");
    const char *why = NULL;
    char *early = np_client_read_line(c, 200, &why);
    ck_assert_msg(early == NULL, "close replied before its connections ended: %s", early);
    close(fd);
    json_t *r = np_ok(np_client_recv(c, NP_TIMEOUT_MS));
    ck_assert_str_eq(np_jstr(r, "id"), "c");
    json_t *s = np_jobj(r, "server");
    np_check_server_object(s);
    ck_assert_int_eq(np_jint(s, "id"), sid);
    ck_assert_str_eq(np_jstr(s, "state"), "closed");
    /* A closed server leaves servers. */
    ck_assert_int_eq(json_array_size(np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers")),
                     0);
}
END_TEST

START_TEST(test_close_destroy)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int a = np_echo_client(port), b = np_echo_client(port);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'close','server':'echo','destroy':true}"));
    ck_assert_str_eq(np_jstr(np_jobj(r, "server"), "state"), "closed");
    ck_assert_int_eq(np_expect_eof(a), 1);
    ck_assert_int_eq(np_expect_eof(b), 1);
    ck_assert_int_eq(json_array_size(np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers")),
                     0);
    np_assert_not_listening(np, port);
    close(a);
    close(b);
}
END_TEST

START_TEST(test_close_nowait)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int fd = np_echo_client(port);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'close','server':'echo','wait':false}"));
    ck_assert_str_eq(np_jstr(np_jobj(r, "server"), "state"), "closing");
    /* Closing: a second close is refused. */
    np_expect_error(np_qcall(np, "{'cmd':'close','server':'echo'}"), "ENOTRUNNING", NULL);
    np_echo_check(fd, "served while closing");
    close(fd);
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    while (json_array_size(np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers")) != 0) {
        ck_assert_msg(np_now_ms() < deadline, "the closed server stays in servers");
        np_pause_ms(10);
    }
}
END_TEST

/* ================================================================== suite */

int main(void)
{
    Suite *s = suite_create("commands");
    TCase *tc;

    tc = np_tcase(s, "commands", 20);
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
    return np_run_suite(s);
}
