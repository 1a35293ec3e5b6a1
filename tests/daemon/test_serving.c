/* SPDX-License-Identifier: MIT */
/*
 * netd serving connections end to end: the echo, discard, banner and proxy handlers over
 * real TCP and unix sockets, and connection counts exact at every step.
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

/* ================================================================== handlers */

START_TEST(test_echo_greeting)
{
    netd_proc_t *np = np_start("{}", 2);
    int port = np_listen_tcp0(np, "g", np_q("{'type':'echo','greeting':'hello\\r\\n'}"));
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
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), 2);
    int fd = np_tcp_connect(np_server_port(np, "echo"));
    enum { N = 100000 };
    char *out = malloc(N), *in = malloc(N + 16);
    np_pattern(out, N, 7);
    np_send_all(fd, out, N);
    ck_assert(shutdown(fd, SHUT_WR) == 0);
    /* Everything echoed, then FIN. */
    ssize_t got = np_recv_to_eof(fd, in, N + 16);
    ck_assert_int_eq(got, N);
    ck_assert(memcmp(in, out, N) == 0);
    free(out);
    free(in);
    close(fd);
    np_wait_count(np, "echo", 0, 0, 1);
}
END_TEST

START_TEST(test_discard)
{
    netd_proc_t *np = np_start("{}", 2);
    int port = np_listen_tcp0(np, "dis", "{\"type\":\"discard\"}");
    int fd = np_tcp_connect(port);
    enum { N = 200000 };
    char *buf = malloc(N);
    np_pattern(buf, N, 0);
    np_send_all(fd, buf, N);
    free(buf);
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    json_int_t got;
    for (;;) {
        json_t *arr = np_jarr(np_ok(np_call(np, "{s:s, s:s}", "cmd", "sockets", "server", "dis")),
                              "sockets");
        /* (Not listed until netd has accepted it: no reply tells us when.) */
        ck_assert_int_le(json_array_size(arr), 1);
        got = 0;
        if (json_array_size(arr) == 1) {
            got = np_jint(json_array_get(arr, 0), "bytesRead");
            ck_assert_int_eq(np_jint(json_array_get(arr, 0), "bytesWritten"), 0);
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
    np_wait_count(np, "dis", 0, 0, 1);
    json_t *s = np_server_obj(np, "dis");
    ck_assert_int_eq(np_jint(s, "bytesReadTotal"), N);
    ck_assert_int_eq(np_jint(s, "bytesWrittenTotal"), 0);
}
END_TEST

START_TEST(test_banner)
{
    netd_proc_t *np = np_start("{}", 2);
    int port = np_listen_tcp0(np, "ban", "{\"type\":\"banner\",\"text\":\"goodbye\\n\"}");
    for (int i = 0; i < 3; i++) {
        int fd = np_tcp_connect(port);
        char buf[64];
        ssize_t n = np_recv_to_eof(fd, buf, sizeof(buf));
        ck_assert_int_eq(n, 8);
        ck_assert(memcmp(buf, "goodbye\n", 8) == 0);
        close(fd);
    }
    json_t *s = np_server_obj(np, "ban");
    ck_assert_int_eq(np_jint(s, "acceptedTotal"), 3);
    np_wait_count(np, "ban", 0, 0, 3);
}
END_TEST

static void proxy_roundtrip(int fd, np_upstream_t *up)
{
    np_echo_check(fd, "hello upstream\n");
    /* A bigger transfer, in steps: both directions through the pipes. */
    enum { STEP = 16384, STEPS = 16 };
    char out[STEP], in[STEP];
    for (int i = 0; i < STEPS; i++) {
        np_pattern(out, STEP, (size_t)i * STEP);
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
    np_upstream_t up;
    netd_proc_t *np = np_start("{}", 2);
    np_upstream_start(&up, NULL);
    /* allowHalfOpen is what lets the client's FIN through while the upstream answers. */
    json_t *r = np_ok(np_qcall(np,
                               "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'px',"
                               "'allowHalfOpen':true,'handler':{'type':'proxy','port':%d,"
                               "'host':'127.0.0.1'}}",
                               up.port));
    json_t *h = np_jobj(np_jobj(r, "server"), "handler");
    ck_assert_str_eq(np_jstr(h, "type"), "proxy");
    ck_assert_int_eq(np_jint(h, "port"), up.port);
    ck_assert_str_eq(np_jstr(h, "host"), "127.0.0.1");
    int port = (int)np_jint(np_jobj(np_jobj(r, "server"), "address"), "port");
    int fd = np_tcp_connect(port);
    proxy_roundtrip(fd, &up);
    close(fd);
    np_wait_count(np, "px", 0, 0, 1);
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    while (np_jint(np_ok(np_qcall(np, "{'cmd':'sockets','role':'all'}")), "total") != 0) {
        ck_assert_msg(np_now_ms() < deadline, "the upstream socket outlives its client");
        np_pause_ms(10);
    }
    np_upstream_stop(&up);
}
END_TEST

START_TEST(test_proxy_unix_upstream)
{
    np_upstream_t up;
    netd_proc_t *np = np_start("{}", 2);
    char path[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/up.sock", np->dir);
    np_upstream_start(&up, path);
    json_t *r = np_ok(np_qcall(np,
                               "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'pu',"
                               "'allowHalfOpen':true,'handler':{'type':'proxy','path':'%s'}}",
                               path));
    ck_assert_str_eq(np_jstr(np_jobj(np_jobj(r, "server"), "handler"), "path"), path);
    int fd = np_tcp_connect((int)np_jint(np_jobj(np_jobj(r, "server"), "address"), "port"));
    proxy_roundtrip(fd, &up);
    close(fd);
    np_upstream_stop(&up);
}
END_TEST

START_TEST(test_proxy_refused)
{
    netd_proc_t *np = np_start("{}", 2);
    int dead = th_refused_port();
    int port = np_listen_tcp0(np, "pr", np_q("{'type':'proxy','port':%d}", dead));
    int fd = np_tcp_connect(port);
    np_send_all(fd, "anyone?", 7);
    ck_assert_msg(np_expect_eof(fd) == 1, "a client of a refused upstream should be closed");
    close(fd);
    np_wait_stat_ge(np, "upstreamFailedTotal", 1);
    np_wait_count(np, "pr", 0, 0, 1);
    ck_assert_int_eq(np_jint(np_ok(np_qcall(np, "{'cmd':'sockets','role':'all'}")), "total"), 0);
    /* Counted again for a second client. */
    fd = np_tcp_connect(port);
    ck_assert_int_eq(np_expect_eof(fd), 1);
    close(fd);
    np_wait_stat_ge(np, "upstreamFailedTotal", 2);
}
END_TEST

/* A slow upstream: backpressure holds the queue at the high-water mark instead of
 * buffering everything the client sends. The upstream is a listening socket nobody
 * accepts from: the kernel completes the handshake and nobody ever reads. */
START_TEST(test_proxy_backpressure)
{
    int up_port;
    int up = np_tcp_listen(&up_port);
    netd_proc_t *np = np_start(np_q("{'limits':{'highWaterMark':65536}}"), 2);
    int port = np_listen_tcp0(np, "slow", np_q("{'type':'proxy','port':%d}", up_port));
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
            ck_assert_msg(sent < cap,
                          "sent %zu bytes to a proxy whose upstream never reads: "
                          "no backpressure",
                          sent);
            continue;
        }
        ck_assert_msg(n < 0 && errno == EAGAIN, "send: %s", strerror(errno));
        struct pollfd p = {fd, POLLOUT, 0};
        if (poll(&p, 1, (int)th_scale(300)) == 0)
            break; /* stalled: every buffer on the way is full */
    }
    json_t *arr = np_jarr(np_ok(np_qcall(np, "{'cmd':'sockets','role':'all'}")), "sockets");
    ck_assert_int_eq(json_array_size(arr), 2);
    size_t i;
    json_t *k;
    json_array_foreach(arr, i, k) {
        json_int_t queued = np_jint(k, "bufferSize");
        ck_assert_msg(queued <= 65536 + 4 * CHUNK,
                      "%s socket queues %lld bytes (highWaterMark 65536; sent %zu)",
                      np_jstr(k, "role"), (long long)queued, sent);
        if (strcmp(np_jstr(k, "role"), "client") == 0)
            ck_assert_msg(np_jint(k, "bytesRead") < (json_int_t)sent || sent < 2 * CHUNK,
                          "netd read everything (%lld of %zu): the client was never paused",
                          (long long)np_jint(k, "bytesRead"), sent);
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
    netd_proc_t *np = np_start(np_q(NP_CFG_ECHO), threads);
    int port = np_server_port(np, "echo");
    int fds[20];
    int held = 0;
    /* Open 10: exact at every step (each has had an echo round trip). */
    for (int i = 0; i < 10; i++) {
        fds[held++] = np_echo_client(port);
        ck_assert_int_eq(np_get_connections(np, "echo"), held);
        ck_assert_int_eq(np_listed_connections(np, "echo"), held);
    }
    ck_assert_int_eq(np_jint(np_stats(np), "connections"), 10);
    /* Close 3. */
    close_fds(fds, 0, 3);
    np_wait_count(np, "echo", 7, 7, 10);
    ck_assert_int_eq(np_jint(np_stats(np), "connections"), 7);
    /* Open 5 more. */
    for (int i = 0; i < 5; i++) {
        fds[held++] = np_echo_client(port);
        ck_assert_int_eq(np_get_connections(np, "echo"), 7 + i + 1);
        ck_assert_int_eq(np_listed_connections(np, "echo"), 7 + i + 1);
    }
    /* The per-thread counts add up. */
    json_t *th = np_jarr(np_stats(np), "threads");
    ck_assert_int_eq(json_array_size(th), threads);
    json_int_t sum = 0;
    for (int i = 0; i < threads; i++)
        sum += np_jint(json_array_get(th, (size_t)i), "connections");
    ck_assert_int_eq(sum, 12);
    ck_assert_int_eq(np_jint(np_ok(np_qcall(np, "{'cmd':'sockets'}")), "total"), 12);
    /* Close 6, then the rest. */
    close_fds(fds, 3, 9);
    np_wait_count(np, "echo", 6, 6, 12);
    close_fds(fds, 9, held);
    np_wait_count(np, "echo", 0, 0, 6);
    json_t *s = np_server_obj(np, "echo");
    ck_assert_int_eq(np_jint(s, "acceptedTotal"), 15);
    ck_assert_int_eq(np_jint(np_stats(np), "connections"), 0);
}
END_TEST

/* ================================================================== suite */

int main(void)
{
    Suite *s = suite_create("serving");
    TCase *tc;

    tc = np_tcase(s, "handlers", 20);
    tcase_add_test(tc, test_echo_greeting);
    tcase_add_test(tc, test_echo_half_close);
    tcase_add_test(tc, test_discard);
    tcase_add_test(tc, test_banner);
    tcase_add_test(tc, test_proxy_tcp);
    tcase_add_test(tc, test_proxy_unix_upstream);
    tcase_add_test(tc, test_proxy_refused);
    tcase_add_test(tc, test_proxy_backpressure);

    tc = np_tcase(s, "counts", 30);
    tcase_add_loop_test(tc, test_counts, 0, 2);
    return np_run_suite(s);
}
