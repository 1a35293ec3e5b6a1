/* SPDX-License-Identifier: MIT */
/*
 * netd under systemd end to end: socket activation (LISTEN_FDS by name and number, a
 * wrong LISTEN_PID) and sd_notify on a path and an abstract socket.
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
    netd_proc_t *np = start_activated(np_q("{'servers':[{'name':'web','fd':'web'}]}"), lfd, "web",
                                      NULL);
    close(lfd); /* netd has its own */
    json_t *s = np_server_obj(np, "web");
    np_check_server_object(s);
    ck_assert_int_eq(np_jint(np_jobj(s, "address"), "port"), port);
    int fd = np_echo_client(port);
    ck_assert_int_eq(np_get_connections(np, "web"), 1);
    close(fd);
}
END_TEST

START_TEST(test_activation_by_number)
{
    int port;
    int lfd = np_tcp_listen(&port);
    netd_proc_t *np = start_activated(np_q("{'servers':[{'name':'n','fd':3}]}"), lfd, NULL, NULL);
    close(lfd);
    ck_assert_int_eq(np_server_port(np, "n"), port);
    int fd = np_echo_client(port);
    close(fd);
}
END_TEST

/* A named descriptor binds to the config server of that name instead of its own bind. */
START_TEST(test_activation_named_server)
{
    int port;
    int lfd = np_tcp_listen(&port);
    netd_proc_t *np = start_activated(
        np_q("{'servers':[{'name':'web','port':0,'host':'127.0.0.1'}]}"), lfd, "web", NULL);
    close(lfd);
    ck_assert_int_eq(np_server_port(np, "web"), port);
    int fd = np_echo_client(port);
    close(fd);
}
END_TEST

START_TEST(test_activation_listen_fd)
{
    int port;
    int lfd = np_tcp_listen(&port);
    netd_proc_t *np = start_activated("{}", lfd, "web", NULL);
    close(lfd);
    np_expect_error(np_qcall(np, "{'cmd':'listen','fd':9}"), "EBADF", NULL);
    np_expect_error(np_qcall(np, "{'cmd':'listen','fd':'other'}"), "EBADF", NULL);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'listen','fd':3,'name':'inh'}"));
    ck_assert_int_eq(np_jint(np_jobj(np_jobj(r, "server"), "address"), "port"), port);
    int fd = np_echo_client(port);
    ck_assert_int_eq(np_get_connections(np, "inh"), 1);
    close(fd);
}
END_TEST

START_TEST(test_activation_listen_fd_name)
{
    int port;
    int lfd = np_tcp_listen(&port);
    netd_proc_t *np = start_activated("{}", lfd, "web", NULL);
    close(lfd);
    json_t *r = np_ok(
        np_qcall(np, "{'cmd':'listen','fd':'web','handler':{'type':'banner','text':'w\\n'}}"));
    ck_assert_int_eq(np_jint(np_jobj(np_jobj(r, "server"), "address"), "port"), port);
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
    np_expect_error(np_qcall(np, "{'cmd':'listen','fd':3}"), "EBADF", NULL);
    np_expect_error(np_qcall(np, "{'cmd':'listen','fd':'web'}"), "EBADF", NULL);
}
END_TEST

/* ================================================================== sd_notify */

static void notify_lifecycle(bool abstract)
{
    np_notify_t n;
    np_notify_open(&n, abstract);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {.config = np_q(NP_CFG_ECHO), .env = env};
    netd_proc_t *np = np_start_ex(&o);
    np_expect_notify(&n, "READY=1");
    np_signal(np, SIGTERM);
    np_expect_notify(&n, "STOPPING=1");
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

/* ================================================================== suite */

int main(void)
{
    Suite *s = suite_create("systemd");
    TCase *tc;

    tc = np_tcase(s, "activation", 20);
    tcase_add_test(tc, test_activation_by_name);
    tcase_add_test(tc, test_activation_by_number);
    tcase_add_test(tc, test_activation_named_server);
    tcase_add_test(tc, test_activation_listen_fd);
    tcase_add_test(tc, test_activation_listen_fd_name);
    tcase_add_test(tc, test_activation_wrong_pid);

    tc = np_tcase(s, "notify", 20);
    tcase_add_test(tc, test_notify_path);
    tcase_add_test(tc, test_notify_abstract);
    return np_run_suite(s);
}
