/* SPDX-License-Identifier: MIT */
/*
 * netd as a process end to end: drain on SIGTERM and SIGINT, a second SIGTERM, the
 * shutdown deadline, and the control socket itself (mode, path, a second netd, a stale
 * socket, idle clients).
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

/* ================================================================== drain */

START_TEST(test_sigterm_drain)
{
    np_notify_t n;
    np_notify_open(&n, false);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {.config = np_q(NP_CFG_ECHO), .env = env};
    netd_proc_t *np = np_start_ex(&o);
    np_expect_notify(&n, "READY=1");
    int port = np_server_port(np, "echo");
    int fd = np_echo_client(port);
    /* Pending data: sent, not yet read back, when the signal comes. */
    enum { N = 32768 };
    char *out = malloc(N), *in = malloc(N);
    np_pattern(out, N, 3);
    np_send_all(fd, out, N);
    np_signal(np, SIGTERM);
    np_expect_notify(&n, "STOPPING=1");
    ck_assert_int_eq(np_recv_exact(fd, in, N), N);
    ck_assert(memcmp(in, out, N) == 0);
    free(out);
    free(in);
    /* Still served while draining, but nothing new is accepted. */
    np_echo_check(fd, "more while draining");
    np_assert_not_listening(np, port);
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
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
    np_opts_t o = {.config = np_q(NP_CFG_ECHO), .args = args};
    netd_proc_t *np = np_start_ex(&o);
    ck_assert_int_eq(np_jint(np_ok(np_qcall(np, "{'cmd':'ping'}")), "pid"), np->pid);
    int fd = np_echo_client(np_server_port(np, "echo"));
    np_signal(np, SIGINT);
    np_echo_check(fd, "draining on SIGINT");
    close(fd);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 0);
}
END_TEST

START_TEST(test_second_sigterm)
{
    np_notify_t n;
    np_notify_open(&n, false);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {.config = np_q("{'shutdownTimeoutMs':60000,"
                                  "'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"),
                   .env = env};
    netd_proc_t *np = np_start_ex(&o);
    np_expect_notify(&n, "READY=1");
    int fd = np_echo_client(np_server_port(np, "echo"));
    np_signal(np, SIGTERM);
    np_expect_notify(&n, "STOPPING=1");
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
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int fd = np_echo_client(np_server_port(np, "echo"));
    np_ok(np_qcall(np, "{'cmd':'shutdown','timeoutMs':300}"));
    int st = np_wait_exit(np, NP_TIMEOUT_MS);
    ck_assert_msg(st == 1, "the deadline cut a connection: status %d (want 1)", st);
    ck_assert_int_eq(np_expect_eof(fd), 1);
    close(fd);
}
END_TEST

/* ================================================================== the control socket */

START_TEST(test_control_mode)
{
    netd_proc_t *np = np_start(np_q("{'control':{'mode':'0660'}}"), 2);
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
    np_opts_t o = {.config = np_q("{'control':{'path':'c.sock'}}"),
                   .sock_path = "c.sock",
                   .no_sock_arg = true};
    netd_proc_t *np = np_start_ex(&o);
    ck_assert_msg(np_str_in(np->sock, "/c.sock"), "%s", np->sock);
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
}
END_TEST

/* -s wins over the config's control.path. */
START_TEST(test_control_path_s_wins)
{
    netd_proc_t *np = np_start(np_q("{'control':{'path':'other.sock'}}"), 2);
    char other[PATH_MAX + 16];
    snprintf(other, sizeof(other), "%s/other.sock", np->dir);
    struct stat st;
    ck_assert_msg(stat(other, &st) != 0, "control.path was used despite -s");
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_second_netd_refused)
{
    netd_proc_t *first = np_start(np_q(NP_CFG_ECHO), 2);
    np_opts_t o = {.config = "{}", .sock_path = first->sock, .no_wait = true};
    netd_proc_t *second = np_start_ex(&o);
    int st = np_wait_exit(second, NP_TIMEOUT_MS);
    ck_assert_msg(st > 0, "a second netd on the same control path: status %d", st);
    ck_assert_msg(np_str_in(np_stderr(second), "another netd answers"), "stderr: %s",
                  np_stderr(second));
    /* The first one is untouched, its socket still in place. */
    np_ok(np_qcall(first, "{'cmd':'ping'}"));
    np_client_t *c = np_connect(first);
    json_t *r = np_ok(np_ccall(c, "{'cmd':'ping'}"));
    ck_assert_int_eq(np_jint(r, "pid"), first->pid);
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
    np_sun_set(&sa, path);
    ck_assert(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    close(fd);
    np_opts_t o = {.config = "{}", .sock_path = path};
    netd_proc_t *np = np_start_ex(&o);
    np_ok(np_qcall(np, "{'cmd':'ping'}"));
}
END_TEST

START_TEST(test_control_idle_timeout)
{
    netd_proc_t *np = np_start(np_q("{'control':{'idleTimeout':300}}"), 2);
    np_client_t *idle = np_connect(np);
    np_ok(np_ccall(idle, "{'cmd':'ping'}"));
    np_client_t *w = np_connect(np);
    np_ok(np_ccall(w, "{'cmd':'watch'}"));
    ck_assert_msg(np_client_wait_closed(idle, NP_TIMEOUT_MS),
                  "an idle control client was not closed after control.idleTimeout");
    /* The watcher, just as idle, stays (well past two idle periods). */
    ck_assert_msg(!np_client_wait_closed(w, 700), "a watcher was closed for idleness");
    np_client_t *fresh = np_connect(np);
    np_ok(np_ccall(fresh, "{'cmd':'ping'}"));
}
END_TEST

/* ================================================================== suite */

int main(void)
{
    Suite *s = suite_create("process");
    TCase *tc;

    tc = np_tcase(s, "drain", 20);
    tcase_add_test(tc, test_sigterm_drain);
    tcase_add_test(tc, test_sigint_foreground);
    tcase_add_test(tc, test_second_sigterm);
    tcase_add_test(tc, test_shutdown_deadline);

    tc = np_tcase(s, "control", 20);
    tcase_add_test(tc, test_control_mode);
    tcase_add_test(tc, test_control_default_mode);
    tcase_add_test(tc, test_control_path_from_config);
    tcase_add_test(tc, test_control_path_s_wins);
    tcase_add_test(tc, test_second_netd_refused);
    tcase_add_test(tc, test_stale_socket_replaced);
    tcase_add_test(tc, test_control_idle_timeout);
    return np_run_suite(s);
}
