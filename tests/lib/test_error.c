/* SPDX-License-Identifier: MIT */
/*
 * The error table: names and messages of errno values and of libnetd's own codes, and the
 * shape of asynchronous error objects.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"

START_TEST(test_errno_names)
{
    ck_assert_str_eq(nd_err_name(-ECONNREFUSED), "ECONNREFUSED");
    ck_assert_str_eq(nd_err_name(ECONNREFUSED), "ECONNREFUSED"); /* either sign */
    ck_assert_str_eq(nd_err_name(-EADDRINUSE), "EADDRINUSE");
    ck_assert_str_eq(nd_err_name(-ENOENT), "ENOENT");
    ck_assert_str_eq(nd_err_name(-EPIPE), "EPIPE");
    ck_assert_str_eq(nd_err_name(-EMFILE), "EMFILE");
    ck_assert_str_eq(nd_err_name(-ENAMETOOLONG), "ENAMETOOLONG");
}
END_TEST

START_TEST(test_own_codes)
{
    ck_assert_str_eq(nd_err_name(ND_ENOTFOUND), "ENOTFOUND");
    ck_assert_str_eq(nd_err_name(ND_ENOTRUNNING), "ENOTRUNNING");
    ck_assert_str_eq(nd_strerror(ND_ENOTRUNNING), "Not running");
    ck_assert_str_eq(nd_strerror(ND_EWRITEAFTEREND), "write after end");
    ck_assert_str_eq(nd_strerror(ND_ECLOSED), "This socket is closed");
    /* Own codes never collide with an errno. */
    ck_assert_int_lt(ND_ENOTFOUND, ND__ERRNO_MIN);
    ck_assert_int_lt(ND_ENOTCONNECTED, ND__ERRNO_MIN);
}
END_TEST

START_TEST(test_unknown_codes)
{
    ck_assert_str_eq(nd_err_name(-99999), "UNKNOWN");
    ck_assert_str_eq(nd_err_name(0), "UNKNOWN");
    ck_assert_ptr_nonnull(nd_strerror(-99999));
    ck_assert_ptr_nonnull(nd_strerror(0));
}
END_TEST

START_TEST(test_messages_of_errnos)
{
    ck_assert_str_eq(nd_strerror(-ECONNREFUSED), "Connection refused");
    ck_assert_str_eq(nd_strerror(-EADDRINUSE), "Address already in use");
}
END_TEST

typedef struct {
    int errors;
    char message[256];
    char name[32];
    char syscall[32];
    int port;
} err_seen_t;

static void on_error(void *self, const nd_event_t *ev, void *arg)
{
    err_seen_t *e = arg;
    e->errors++;
    snprintf(e->message, sizeof(e->message), "%s", ev->error->message);
    snprintf(e->name, sizeof(e->name), "%s", ev->error->name);
    snprintf(e->syscall, sizeof(e->syscall), "%s", ev->error->syscall);
    e->port = ev->error->port;
}

/* Node's shape: "connect ECONNREFUSED 127.0.0.1:PORT". */
START_TEST(test_error_object_shape)
{
    nd_loop_t *loop = th_loop_new();
    int port = th_refused_port();
    err_seen_t seen = {0};
    nd_connect_options_t o = {.port = port, .host = "127.0.0.1"};
    nd_socket_t *s = nd_connect(loop, &o, NULL, NULL);
    ck_assert_ptr_nonnull(s);
    nd_socket_on(s, ND_EV_ERROR, on_error, &seen);
    th_run(loop, 5000);
    ck_assert_int_eq(seen.errors, 1);
    ck_assert_str_eq(seen.name, "ECONNREFUSED");
    ck_assert_str_eq(seen.syscall, "connect");
    ck_assert_int_eq(seen.port, port);
    char want[64];
    snprintf(want, sizeof(want), "connect ECONNREFUSED 127.0.0.1:%d", port);
    ck_assert_str_eq(seen.message, want);
    th_finish(loop);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("error");
    TCase *tc = th_tcase(s, "table", 10);
    tcase_add_test(tc, test_errno_names);
    tcase_add_test(tc, test_own_codes);
    tcase_add_test(tc, test_unknown_codes);
    tcase_add_test(tc, test_messages_of_errnos);
    tcase_add_test(tc, test_error_object_shape);
    return th_run_suite(s);
}
