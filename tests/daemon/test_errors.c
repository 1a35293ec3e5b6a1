/* SPDX-License-Identifier: MIT */
/*
 * netd's error replies end to end (CONTROL.md "Errors"): every error code, the request
 * line's limits, and a control connection that survives bad requests.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
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

/* ================================================================== errors */

START_TEST(test_eparse)
{
    netd_proc_t *np = np_start("{}", 2);
    static const char *const lines[] = {"hello\n",
                                        "{\"cmd\":\"ping\"\n",
                                        "{\"cmd\":\"ping\",}\n",
                                        "{\"cmd\":\"p\xff\xfeing\",\"id\":1}\n", /* invalid UTF-8 */
                                        "{\"id\":5,\"cmd\":\"ping\" garbage}\n",
                                        "{\"cmd\":'ping'}\n",
                                        NULL};
    for (int i = 0; lines[i]; i++) {
        ck_assert_int_eq(np_client_send_raw(np->ctl, lines[i], strlen(lines[i])), 0);
        json_t *r = np_client_recv(np->ctl, NP_TIMEOUT_MS);
        np_expect_error(r, "EPARSE", NULL);
        ck_assert_msg(json_is_null(json_object_get(r, "id")), "EPARSE: id must be null: %s",
                      np_json_str(r));
    }
    /* The connection is still good. */
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_eparse_duplicate_keys)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    static const char *const lines[] = {
        "{\"cmd\":\"ping\",\"cmd\":\"ping\"}\n", "{\"id\":1,\"id\":2,\"cmd\":\"ping\"}\n",
        "{\"cmd\":\"close\",\"server\":\"echo\",\"server\":\"echo\"}\n", NULL};
    for (int i = 0; lines[i]; i++) {
        ck_assert_int_eq(np_client_send_raw(np->ctl, lines[i], strlen(lines[i])), 0);
        np_expect_error(np_client_recv(np->ctl, NP_TIMEOUT_MS), "EPARSE", NULL);
    }
    /* The close never ran. */
    ck_assert_str_eq(np_jstr(np_server_obj(np, "echo"), "state"), "listening");
}
END_TEST

START_TEST(test_erequest)
{
    netd_proc_t *np = np_start("{}", 2);
    static const char *const lines[] = {"[1,2]",
                                        "[]",
                                        "\"ping\"",
                                        "42",
                                        "null",
                                        "true",
                                        "{}",
                                        "{'id':3}",
                                        "{'cmd':5}",
                                        "{'cmd':null}",
                                        "{'cmd':['ping']}",
                                        "{'cmd':{'name':'ping'}}",
                                        NULL};
    for (int i = 0; lines[i]; i++) {
        char *line = np_q("%s\n", lines[i]);
        ck_assert_int_eq(np_client_send_raw(np->ctl, line, strlen(line)), 0);
        json_t *r = np_client_recv(np->ctl, NP_TIMEOUT_MS);
        np_expect_error(r, "EREQUEST", NULL);
    }
    /* An object with an id gets it back. */
    json_t *r = np_qcall(np, "{'id':'x','cmd':7}");
    np_expect_error(r, "EREQUEST", NULL);
    ck_assert_str_eq(np_jstr(r, "id"), "x");
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_ecommand)
{
    netd_proc_t *np = np_start("{}", 2);
    json_t *r = np_qcall(np, "{'cmd':'frobnicate','id':'f'}");
    np_expect_error(r, "ECOMMAND", NULL);
    ck_assert_str_eq(np_jstr(r, "id"), "f");
    np_expect_error(np_qcall(np, "{'cmd':''}"), "ECOMMAND", NULL);
    np_expect_error(np_qcall(np, "{'cmd':'PING'}"), "ECOMMAND", NULL);
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
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
    {"{'cmd':'set','server':'echo','timeout':'soon'}", "timeout"},
    {"{'cmd':'set','server':'echo','timeout':true}", "timeout"},
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
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    json_t *before = json_deep_copy(np_server_obj(np, "echo"));
    for (size_t i = 0; i < sizeof(earg_cases) / sizeof(earg_cases[0]); i++) {
        json_t *r = np_qcall(np, "%s", earg_cases[i].req);
        json_t *err = json_object_get(r, "error");
        const char *code = json_string_value(json_object_get(err, "code"));
        const char *msg = json_string_value(json_object_get(err, "message"));
        ck_assert_msg(json_is_false(json_object_get(r, "ok")) && code && strcmp(code, "EARG") == 0,
                      "%s: expected EARG, got %s", np_q("%s", earg_cases[i].req), np_json_str(r));
        ck_assert_msg(msg && *msg, "%s: no message: %s", np_q("%s", earg_cases[i].req),
                      np_json_str(r));
        if (earg_cases[i].names)
            ck_assert_msg(strstr(msg, earg_cases[i].names) != NULL,
                          "%s: the message should name \"%s\": %s", np_q("%s", earg_cases[i].req),
                          earg_cases[i].names, np_json_str(r));
    }
    /* Nothing was affected: the same one server, nothing new, still pingable. */
    json_t *arr = np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers");
    ck_assert_int_eq(json_array_size(arr), 1);
    json_t *after = np_server_obj(np, "echo");
    ck_assert_int_eq(np_jint(after, "id"), np_jint(before, "id"));
    ck_assert_int_eq(np_jint(after, "timeout"), np_jint(before, "timeout"));
    ck_assert(json_equal(json_object_get(after, "maxConnections"),
                         json_object_get(before, "maxConnections")));
    json_decref(before);
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_enoserver)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    static const char *const reqs[] = {"{'cmd':'server','server':999}",
                                       "{'cmd':'server','server':'nope'}",
                                       "{'cmd':'getConnections','server':999}",
                                       "{'cmd':'getConnections','server':'nope'}",
                                       "{'cmd':'close','server':999}",
                                       "{'cmd':'close','server':'nope'}",
                                       "{'cmd':'set','server':999,'timeout':1}",
                                       "{'cmd':'set','server':'nope','maxConnections':1}",
                                       "{'cmd':'sockets','server':999}",
                                       "{'cmd':'sockets','server':'nope'}",
                                       "{'cmd':'rebalance','server':999}",
                                       "{'cmd':'rebalance','server':'nope'}",
                                       NULL};
    for (int i = 0; reqs[i]; i++)
        np_expect_error(np_qcall(np, "%s", reqs[i]), "ENOSERVER", NULL);
    np_ok(np_qcall(np, "{'cmd':'server','server':'echo'}"));
}
END_TEST

START_TEST(test_enosocket)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    np_expect_error(np_qcall(np, "{'cmd':'destroy','socket':99999}"), "ENOSOCKET", NULL);
    np_expect_error(np_qcall(np, "{'cmd':'move','socket':99999,'thread':0}"), "ENOSOCKET", NULL);
    /* A server's id is not a socket id. */
    json_int_t sid = np_server_id(np, "echo");
    np_expect_error(np_qcall(np, "{'cmd':'destroy','socket':%lld}", (long long)sid), "ENOSOCKET",
                    NULL);
}
END_TEST

START_TEST(test_enotrunning_after_close)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    json_int_t sid = np_server_id(np, "echo");
    np_ok(np_qcall(np, "{'cmd':'close','server':%lld}", (long long)sid));
    /* Close twice: the server is not running (Node's ERR_SERVER_NOT_RUNNING). */
    np_expect_error(np_qcall(np, "{'cmd':'close','server':%lld}", (long long)sid), "ENOTRUNNING",
                    NULL);
}
END_TEST

START_TEST(test_eexist)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    np_expect_error(np_qcall(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'echo'}"),
                    "EEXIST", "echo");
    np_ok(np_qcall(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'dup'}"));
    np_expect_error(np_qcall(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'dup'}"),
                    "EEXIST", "dup");
    ck_assert_int_eq(json_array_size(np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers")),
                     2);
}
END_TEST

START_TEST(test_eaddrinuse_raw)
{
    netd_proc_t *np = np_start("{}", 2);
    int port;
    int held = np_tcp_listen(&port);
    json_t *r = np_qcall(np, "{'cmd':'listen','port':%d,'host':'127.0.0.1'}", port);
    np_expect_error(r, "EADDRINUSE", NULL);
    np_expect_error(np_qcall(np, "{'cmd':'listen','port':%d}", port), "EADDRINUSE", NULL);
    /* A failed listen leaves no server behind. */
    ck_assert_int_eq(json_array_size(np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers")),
                     0);
    close(held);
    np_ok(np_qcall(np, "{'cmd':'listen','port':%d,'host':'127.0.0.1'}", port));
}
END_TEST

START_TEST(test_eaddrinuse_own)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    np_expect_error(
        np_qcall(np, "{'cmd':'listen','port':%d,'host':'127.0.0.1','name':'again'}", port),
        "EADDRINUSE", NULL);
    np_expect_error(
        np_qcall(np, "{'cmd':'listen','port':%d,'name':'again','balance':'reuseport'}", port),
        "EADDRINUSE", NULL);
    ck_assert_int_eq(json_array_size(np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers")),
                     1);
}
END_TEST

START_TEST(test_ebadf)
{
    netd_proc_t *np = np_start("{}", 2);
    np_expect_error(np_qcall(np, "{'cmd':'listen','fd':9}"), "EBADF", NULL);
    np_expect_error(np_qcall(np, "{'cmd':'listen','fd':3}"), "EBADF", NULL);
    np_expect_error(np_qcall(np, "{'cmd':'listen','fd':0}"), "EBADF", NULL);
    np_expect_error(np_qcall(np, "{'cmd':'listen','fd':'web'}"), "EBADF", NULL);
    /* The control socket's own descriptor is not an inherited one either. */
    for (int fd = 1; fd < 12; fd++)
        np_expect_error(np_qcall(np, "{'cmd':'listen','fd':%d,'name':'f%d'}", fd, fd), "EBADF",
                        NULL);
    ck_assert_int_eq(json_array_size(np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers")),
                     0);
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
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
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
    json_t *r = np_parse(line);
    free(line);
    np_expect_error(r, "ETOOBIG", NULL);
    json_decref(r);
    ck_assert(np_client_wait_closed(c, NP_TIMEOUT_MS));
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
}
END_TEST

/* 1 MiB exactly is allowed. */
START_TEST(test_line_at_limit)
{
    netd_proc_t *np = np_start("{}", 2);
    ck_assert_int_eq(send_big_line(np->ctl, NETD_MAX_LINE, true), 0);
    json_t *r = np_ok(np_client_recv(np->ctl, NP_TIMEOUT_MS));
    ck_assert_int_eq(strlen(np_jstr(r, "id")),
                     NETD_MAX_LINE - strlen("{\"cmd\":\"ping\",\"id\":\"\"}"));
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_ebusy)
{
    netd_proc_t *np = np_start(np_q("{'control':{'maxClients':2}}"), 2);
    /* np->ctl is the first client. */
    np_client_t *two = np_connect(np);
    np_ok(np_ccall(two, "{'cmd':'ping'}"));
    np_client_t *three = np_connect(np);
    json_t *r = np_client_recv(three, NP_TIMEOUT_MS);
    np_expect_error(r, "EBUSY", NULL);
    ck_assert(np_client_wait_closed(three, NP_TIMEOUT_MS));
    np_client_close(three);
    /* The first two are unaffected. */
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
    np_ok(np_ccall(two, "{'cmd':'ping'}"));
    /* A slot frees when a client leaves. */
    np_client_close(two);
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    for (;;) {
        np_client_t *c = np_connect(np);
        np_client_send(c, np_parse(np_q("{'cmd':'ping'}")));
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
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int port = np_server_port(np, "echo");
    int fd = np_echo_client(port);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'shutdown','timeoutMs':20000}"));
    ck_assert(json_is_true(json_object_get(r, "draining")));
    np_expect_error(np_qcall(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'late'}"),
                    "ESHUTDOWN", NULL);
    /* Control still answers while draining; the held connection is still served. */
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
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
    netd_proc_t *np = np_start(np_q("{'control':{'mode':'0666'}}"), 2);
    char buf[512];
    int last = np_request_as_nobody(np, "{\"cmd\":\"ping\"}\n", buf, sizeof(buf));
    ck_assert(buf[0] != '\0');
    ck_assert_msg(strstr(buf, "\"EPERM\"") && (last == 0 || last == ECONNRESET),
                  "a peer of another user: %s (the last read: %s)", buf,
                  last > 0 ? strerror(last) : "none or EOF");
    /* One EPERM line, nothing else: the ping was never answered. */
    ck_assert_msg(!strstr(buf, "\"ok\":true"), "another user was answered: %s", buf);
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_bad_requests_keep_connection)
{
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    static const char *const lines[] = {"garbage\n",
                                        "[1]\n",
                                        "{\"cmd\":\"nope\"}\n",
                                        "{\"cmd\":\"ping\",\"x\":1}\n",
                                        "{\"cmd\":\"server\",\"server\":999}\n",
                                        "{\"cmd\":\"destroy\",\"socket\":999}\n",
                                        "{\"cmd\":\"close\",\"server\":\"nope\"}\n",
                                        "{\"a\":1,\"a\":2}\n",
                                        NULL};
    /* All in one write: answered in order, one line each. */
    char all[1024] = "";
    for (int i = 0; lines[i]; i++)
        strcat(all, lines[i]);
    strcat(all, "{\"cmd\":\"ping\",\"id\":\"last\"}\n");
    ck_assert_int_eq(np_client_send_raw(np->ctl, all, strlen(all)), 0);
    static const char *const codes[] = {"EPARSE",    "EREQUEST",  "ECOMMAND", "EARG", "ENOSERVER",
                                        "ENOSOCKET", "ENOSERVER", "EPARSE",   NULL};
    for (int i = 0; codes[i]; i++)
        np_expect_error(np_client_recv(np->ctl, NP_TIMEOUT_MS), codes[i], NULL);
    json_t *r = np_ok(np_client_recv(np->ctl, NP_TIMEOUT_MS));
    ck_assert_str_eq(np_jstr(r, "id"), "last");
    /* CRLF from telnet-like clients and empty lines are fine too. */
    const char *crlf = "\r\n\n{\"cmd\":\"ping\",\"id\":2}\r\n";
    ck_assert_int_eq(np_client_send_raw(np->ctl, crlf, strlen(crlf)), 0);
    r = np_ok(np_client_recv(np->ctl, NP_TIMEOUT_MS));
    ck_assert_int_eq(np_jint(r, "id"), 2);
    ck_assert_str_eq(np_jstr(np_server_obj(np, "echo"), "state"), "listening");
}
END_TEST

/* ================================================================== suite */

int main(void)
{
    Suite *s = suite_create("errors");
    TCase *tc;

    tc = np_tcase(s, "errors", 20);
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
    return np_run_suite(s);
}
