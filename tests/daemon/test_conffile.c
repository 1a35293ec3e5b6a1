/* SPDX-License-Identifier: MIT */
/*
 * netd's config file end to end: a valid file served as written, the thread count,
 * --check on valid and invalid files, exit status 2, reload and a reload that fails.
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

/* ================================================================== config */

START_TEST(test_config_valid)
{
    const char *cfg = np_q(
        "{'threads':3,'shutdownTimeoutMs':5000,"
        "'control':{'mode':'0600','maxClients':8,'idleTimeout':60000},"
        "'limits':{'highWaterMark':65536,'maxBufferedBytes':1048576,'stallMs':5000},"
        "'servers':["
        "{'name':'e','port':0,'host':'127.0.0.1','handler':{'type':'echo','greeting':'hello\\r\\n'}"
        "},"
        "{'path':'rel.sock'},"
        "{'name':'b','port':0,'host':'127.0.0.1','handler':{'type':'banner','text':'bye\\n'}},"
        "{'name':'d','port':0,'host':'127.0.0.1','handler':{'type':'discard'},'timeout':60000}]}");
    np_opts_t o = {.config = cfg, .threads = 0};
    o.args = NULL;
    netd_proc_t *np = np_start_ex(&o);
    json_t *arr = np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers");
    ck_assert_int_eq(json_array_size(arr), 4);
    char relpath[PATH_MAX + 16];
    snprintf(relpath, sizeof(relpath), "%s/rel.sock", np->dir);
    /* A relative path resolves against the config file's directory; the entry is named
     * after it. */
    json_t *u = np_server_obj(np, relpath);
    ck_assert_str_eq(np_jstr(np_jobj(u, "address"), "path"), relpath);
    int fd = np_unix_connect(relpath);
    np_echo_check(fd, "rel");
    close(fd);
    json_t *e = np_server_obj(np, "e");
    ck_assert_str_eq(np_jstr(np_jobj(e, "handler"), "greeting"), "hello\r\n");
    ck_assert_int_eq(np_jint(np_server_obj(np, "d"), "timeout"), 60000);
    ck_assert_str_eq(np_jstr(np_jobj(np_server_obj(np, "b"), "handler"), "text"), "bye\n");
    /* -t 2 (np_start's default) wins over threads: 3. */
    ck_assert_int_eq(json_array_size(np_jarr(np_stats(np), "threads")), 2);
}
END_TEST

START_TEST(test_config_threads)
{
    /* Without -t: the config's thread count. */
    np_opts_t o = {.config = np_q("{'threads':3}"), .threads = -1};
    netd_proc_t *np = np_start_ex(&o);
    ck_assert_int_eq(json_array_size(np_jarr(np_stats(np), "threads")), 3);
}
END_TEST

START_TEST(test_check_valid)
{
    char *out = NULL;
    int st = np_check_config(
        np_q("{'threads':2,'servers':[{'name':'a','port':8124,'host':'127.0.0.1'},"
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
    const char *cfg = np_q("%s", invalid_configs[_i].config);
    int st = np_check_config(cfg, &out);
    ck_assert_msg(st == 2, "--check on %s: status %d (want 2): %s", cfg, st, out);
    if (invalid_configs[_i].field)
        ck_assert_msg(np_str_in(out, invalid_configs[_i].field), "--check on %s should name %s: %s",
                      cfg, invalid_configs[_i].field, out);
    free(out);
}
END_TEST

/* Without --check, an invalid file stops netd with status 2 before anything listens. */
START_TEST(test_invalid_config_exits_2)
{
    np_opts_t o = {.config = np_q("{'servers':[{'port':70000}]}"), .no_wait = true};
    netd_proc_t *np = np_start_ex(&o);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 2);
    ck_assert_msg(np_str_in(np_stderr(np), "servers[0].port"), "stderr: %s", np_stderr(np));
    struct stat st;
    ck_assert(stat(np->sock, &st) != 0);
}
END_TEST

START_TEST(test_reload)
{
    np_notify_t n;
    np_notify_open(&n, false);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {.config = np_q("{'servers':["
                                  "{'name':'a','port':0,'host':'127.0.0.1'},"
                                  "{'name':'b','port':0,'host':'127.0.0.1'},"
                                  "{'name':'d','port':0,'host':'127.0.0.1','handler':{'type':'echo'"
                                  ",'greeting':'v1\\n'}}]}"),
                   .env = env};
    netd_proc_t *np = np_start_ex(&o);
    np_expect_notify(&n, "READY=1");
    json_int_t a_id = np_server_id(np, "a"), d_id = np_server_id(np, "d");
    int a_port = np_server_port(np, "a"), b_port = np_server_port(np, "b");
    int held = np_echo_client(a_port);

    /* a unchanged (keys reordered, a default spelled out), b removed, c added, d changed. */
    np_write_config(
        np,
        np_q("{'servers':["
             "{'host':'127.0.0.1','port':0,'name':'a','noDelay':true},"
             "{'name':'c','port':0,'host':'127.0.0.1','handler':{'type':'banner','text':'c\\n'}},"
             "{'name':'d','port':0,'host':'127.0.0.1','handler':{'type':'echo','greeting':'v2\\n'}}"
             "]}"));
    np_signal(np, SIGHUP);
    np_expect_notify(&n, "RELOADING=1");
    np_expect_notify(&n, "READY=1");

    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    for (;;) {
        json_t *arr = np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers");
        bool has_b = false;
        size_t i;
        json_t *s;
        json_array_foreach(arr, i, s)
            has_b = has_b || strcmp(np_jstr(s, "name"), "b") == 0;
        if (!has_b && json_array_size(arr) == 3)
            break;
        ck_assert_msg(np_now_ms() < deadline, "after reload: %s", np_json_str(arr));
        np_pause_ms(10);
    }
    /* Unchanged: the same server (ids are never reused), its connection alive. */
    ck_assert_int_eq(np_server_id(np, "a"), a_id);
    ck_assert_int_eq(np_server_port(np, "a"), a_port);
    np_echo_check(held, "survived the reload");
    int fd = np_echo_client(a_port);
    close(fd);
    /* Removed: no longer listening. */
    np_assert_not_listening(np, b_port);
    /* Added: listening with its handler. */
    fd = np_tcp_connect(np_server_port(np, "c"));
    char buf[8];
    ck_assert_int_eq(np_recv_to_eof(fd, buf, sizeof(buf)), 2);
    close(fd);
    /* Changed: closed and opened anew. */
    ck_assert_int_ne(np_server_id(np, "d"), d_id);
    fd = np_tcp_connect(np_server_port(np, "d"));
    ck_assert_int_eq(np_recv_exact(fd, buf, 3), 3);
    ck_assert(memcmp(buf, "v2\n", 3) == 0);
    close(fd);
    close(held);
    close(n.fd);
}
END_TEST

START_TEST(test_reload_invalid_keeps)
{
    np_notify_t n;
    np_notify_open(&n, false);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {.config = np_q("{'servers':[{'name':'a','port':0,'host':'127.0.0.1'},"
                                  "{'name':'b','port':0,'host':'127.0.0.1'}]}"),
                   .env = env};
    netd_proc_t *np = np_start_ex(&o);
    np_expect_notify(&n, "READY=1");
    json_int_t a_id = np_server_id(np, "a"), b_id = np_server_id(np, "b");
    int held = np_echo_client(np_server_port(np, "a"));
    np_write_config(np, np_q("{'servers':[{'name':'a','port':70000}]}"));
    np_signal(np, SIGHUP);
    np_expect_notify(&n, "RELOADING=1");
    np_expect_notify(&n, "READY=1");
    json_t *arr = np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers");
    ck_assert_msg(json_array_size(arr) == 2, "after a refused reload: %s", np_json_str(arr));
    ck_assert_int_eq(np_server_id(np, "a"), a_id);
    ck_assert_int_eq(np_server_id(np, "b"), b_id);
    np_echo_check(held, "kept");
    ck_assert_msg(np_str_in(np_stderr(np), "servers[0].port"), "the log should name the field: %s",
                  np_stderr(np));
    /* A later valid reload still works. */
    np_write_config(np, np_q("{'servers':[{'name':'a','port':0,'host':'127.0.0.1'}]}"));
    np_signal(np, SIGHUP);
    np_expect_notify(&n, "RELOADING=1");
    np_expect_notify(&n, "READY=1");
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    while (json_array_size(np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers")) != 1) {
        ck_assert_msg(np_now_ms() < deadline, "b was not removed by the valid reload");
        np_pause_ms(10);
    }
    ck_assert_int_eq(np_server_id(np, "a"), a_id);
    np_echo_check(held, "kept again");
    close(held);
    close(n.fd);
}
END_TEST

/* ================================================================== suite */

int main(void)
{
    Suite *s = suite_create("conffile");
    TCase *tc;

    tc = np_tcase(s, "config", 20);
    tcase_add_test(tc, test_config_valid);
    tcase_add_test(tc, test_config_threads);
    tcase_add_test(tc, test_check_valid);
    tcase_add_loop_test(tc, test_check_invalid, 0,
                        (int)(sizeof(invalid_configs) / sizeof(invalid_configs[0])));
    tcase_add_test(tc, test_invalid_config_exits_2);
    tcase_add_test(tc, test_reload);
    tcase_add_test(tc, test_reload_invalid_keeps);
    return np_run_suite(s);
}
