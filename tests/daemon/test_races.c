/* SPDX-License-Identifier: MIT */
/*
 * Races between threads, moves and clients (the concurrency issue), against a real netd
 * with 4 worker threads: the other side disappears at each step of a move, replies
 * keep their order, sockets in transit are listed, destroyed and cut. Each test failed
 * (or crashed netd under ASan) before the fix; every run ends with netd exiting on its
 * own and any sanitizer report failing the test (netd_proc.c).
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "netd_proc.h"

#define CFG_ECHO "{'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"
#define THREADS 4

static int open_clients(int port, int *fds, int n)
{
    for (int i = 0; i < n; i++)
        fds[i] = np_tcp_connect(port);
    return n;
}

static void close_all(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* The ids of every client socket of a server, in id order, once there are `want` (the
 * clients' connects return before netd has registered them). */
static size_t socket_ids(netd_proc_t *np, const char *server, json_int_t *ids, size_t want)
{
    uint64_t deadline = np_now_ms() + th_scale(NP_TIMEOUT_MS);
    for (;;) {
        json_t *r = np_ok(
            np_call(np, "{s:s, s:s, s:i}", "cmd", "sockets", "server", server, "limit", 100000));
        size_t i, n = 0;
        json_t *k;
        json_array_foreach(np_jarr(r, "sockets"), i, k)
            if (n < want)
                ids[n++] = np_jint(k, "id");
        if (n >= want || np_now_ms() > deadline)
            return n;
        np_pause_ms(10);
    }
}

static uint64_t rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* K control clients, each sending M move requests in one write (pipelined), for random
 * sockets of ids[] to random threads. Every request must get exactly one reply. */
typedef struct movers {
    np_client_t *c[16];
    int k, m;
    int read[16]; /* replies already read, per client */
    int ok;       /* moves answered ok so far */
} movers_t;

static void movers_start(netd_proc_t *np, movers_t *mv, int k, int m, const json_int_t *ids,
                         size_t nids, uint64_t seed)
{
    mv->k = k;
    mv->m = m;
    mv->ok = 0;
    for (int i = 0; i < k; i++) {
        mv->read[i] = 0;
        mv->c[i] = np_connect(np);
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        for (int j = 0; j < m; j++)
            fprintf(f, "{\"id\":%d,\"cmd\":\"move\",\"socket\":%lld,\"thread\":%d}\n", j,
                    (long long)ids[rng(&seed) % nids], (int)(rng(&seed) % THREADS));
        fclose(f);
        ck_assert_int_eq(np_client_send_raw(mv->c[i], buf, len), 0);
        free(buf);
    }
}

/* Reads the next reply of mover i: in order, ok or one of the codes a move may meet. */
static void movers_read(movers_t *mv, int i)
{
    json_t *r = np_client_recv(mv->c[i], 20000);
    ck_assert_int_eq(np_jint(r, "id"), mv->read[i]);
    mv->read[i]++;
    if (json_is_true(json_object_get(r, "ok"))) {
        mv->ok++;
        return;
    }
    const char *code = np_jstr(np_jobj(r, "error"), "code");
    ck_assert_msg(strcmp(code, "EBUSY") == 0 || strcmp(code, "ENOSOCKET") == 0, "move: %s",
                  np_json_str(r));
}

/* Waits for every mover's first reply: netd works through each one's requests in order,
 * so from then on the rest of its moves are under way. */
static void movers_under_way(movers_t *mv)
{
    for (int i = 0; i < mv->k; i++)
        movers_read(mv, i);
}

/* Reads every reply not read yet; returns how many moves were ok. */
static int movers_finish(movers_t *mv)
{
    for (int i = 0; i < mv->k; i++)
        while (mv->read[i] < mv->m)
            movers_read(mv, i);
    return mv->ok;
}

/* ------------------------------------------------------------------ move replies */

/*
 * A streaming socket moved 40 times among 4 threads while 250 connections are open, each
 * `move` from a new control client that hangs up right after the reply (as netctl does)
 * or even before it. The target's adopt used to reply and release the client before the
 * other workers had answered: netd then held a freed client (SIGSEGV in 3 runs of 4).
 */
START_TEST(test_move_then_hang_up)
{
    netd_proc_t *np = np_start(np_q(CFG_ECHO), THREADS);
    int port = np_server_port(np, "echo");
    int stream = np_tcp_connect(port);
    np_echo_check(stream, "first");
    int n = NP_SANITIZED ? 120 : 250;
    int *fds = calloc((size_t)n, sizeof(int));
    open_clients(port, fds, n);
    json_int_t sid = np_socket_id_of(np, "echo", stream);
    for (int i = 0; i < 40; i++) {
        char req[128];
        int len = snprintf(req, sizeof(req),
                           "{\"id\":%d,\"cmd\":\"move\",\"socket\":%lld,\"thread\":%d}\n", i,
                           (long long)sid, i % THREADS);
        for (int tries = 0;; tries++) {
            np_client_t *c = np_connect(np);
            ck_assert_int_eq(np_client_send_raw(c, req, (size_t)len), 0);
            if (i % 4 == 3) {
                np_client_close(c); /* before the reply: the move goes on without it */
                break;
            }
            json_t *r = np_client_recv(c, NP_TIMEOUT_MS);
            np_client_close(c); /* at once: netd may still be finishing the move */
            ck_assert_int_eq(np_jint(r, "id"), i);
            json_t *err = json_object_get(r, "error");
            if (err && strcmp(np_jstr(err, "code"), "EBUSY") == 0 && tries < 100) {
                np_pause_ms(10); /* the move of the unanswered request is still going */
                continue;
            }
            ck_assert_int_eq(np_jint(np_jobj(np_ok(r), "socket"), "thread"), i % THREADS);
            break;
        }
        char chunk[32];
        snprintf(chunk, sizeof(chunk), "chunk %d", i);
        np_echo_check(stream, chunk);
    }
    np_ok(np_call(np, "{s:s}", "cmd", "ping"));
    ck_assert_int_eq(np_get_connections(np, "echo"), n + 1);
    close_all(fds, n);
    close(stream);
    free(fds);
}
END_TEST

/* Requests pipelined on one connection are answered in order, the moves (answered
 * later, from the main loop) included. `busy` used to clear when the move started. */
START_TEST(test_pipelined_replies_keep_their_order)
{
    netd_proc_t *np = np_start(np_q(CFG_ECHO), THREADS);
    int port = np_server_port(np, "echo");
    int a = np_tcp_connect(port), b = np_tcp_connect(port);
    np_echo_check(a, "a");
    np_echo_check(b, "b");
    json_int_t ia = np_socket_id_of(np, "echo", a), ib = np_socket_id_of(np, "echo", b);
    np_client_t *c = np_connect(np);
    for (int round = 0; round < 10; round++) {
        char *text = np_q(
            "{'id':1,'cmd':'move','socket':%lld,'thread':%d}\n{'id':2,'cmd':'ping'}\n"
            "{'id':3,'cmd':'move','socket':%lld,'thread':%d}\n"
            "{'id':4,'cmd':'getConnections','server':'echo'}\n"
            "{'id':5,'cmd':'sockets'}\n{'id':6,'cmd':'rebalance'}\n{'id':7,'cmd':'ping'}\n",
            (long long)ia, (round + 1) % THREADS, (long long)ib, (round + 2) % THREADS);
        ck_assert_int_eq(np_client_send_raw(c, text, strlen(text)), 0);
        for (int id = 1; id <= 7; id++) {
            json_t *r = np_ok(np_client_recv(c, NP_TIMEOUT_MS));
            ck_assert_msg(np_jint(r, "id") == id, "reply %d came as %s", id, np_json_str(r));
        }
    }
    np_echo_check(a, "a again");
    np_echo_check(b, "b again");
    close(a);
    close(b);
}
END_TEST

/* ------------------------------------------------------------------ proxy pairs */

/*
 * A proxy pair whose upstream side ends (the client half-closes, the upstream echo ends
 * in turn) while a `move` of the pair is on its way. The library used to move the client
 * alone when the upstream had been torn down in the same turn, while the daemon moved
 * both records: the upstream's 'close' then freed a record owned by another thread.
 */
START_TEST(test_proxy_pair_closing_while_moving)
{
    netd_proc_t *np = np_start(np_q("{'servers':[{'name':'up','path':'up.sock'},"
                                    "{'name':'px','port':0,'host':'127.0.0.1','allowHalfOpen':true,"
                                    "'handler':{'type':'proxy','path':'up.sock'}}]}"),
                               THREADS);
    int port = np_server_port(np, "px");
    np_client_t *ctl = np_connect(np);
    int attempts = NP_SANITIZED ? 40 : 100;
    for (int i = 0; i < attempts; i++) {
        int fd = np_tcp_connect(port);
        np_echo_check(fd, "through the proxy");
        json_int_t sid = np_socket_id_of(np, "px", fd);
        char req[128];
        int len = snprintf(req, sizeof(req),
                           "{\"id\":%d,\"cmd\":\"move\",\"socket\":%lld,\"thread\":%d}\n", i,
                           (long long)sid, i % THREADS);
        /* The FIN and the move leave together: they often reach the worker in one turn. */
        ck_assert_int_eq(np_client_send_raw(ctl, req, (size_t)len), 0);
        shutdown(fd, SHUT_WR);
        json_t *r = np_client_recv(ctl, NP_TIMEOUT_MS);
        ck_assert_int_eq(np_jint(r, "id"), i);
        if (!json_is_true(json_object_get(r, "ok"))) {
            const char *code = np_jstr(np_jobj(r, "error"), "code");
            ck_assert_msg(strcmp(code, "EBUSY") == 0 || strcmp(code, "ENOSOCKET") == 0, "move: %s",
                          np_json_str(r));
        }
        ck_assert_int_eq(np_expect_eof(fd), 1);
        close(fd);
    }
    np_ok(np_call(np, "{s:s}", "cmd", "ping"));
    /* Every pair ended: no record left behind on any thread. */
    uint64_t deadline = np_now_ms() + th_scale(5000);
    json_int_t left;
    while ((left = np_jint(np_ok(np_call(np, "{s:s, s:s}", "cmd", "sockets", "role", "all")),
                           "total")) != 0 &&
           np_now_ms() < deadline)
        np_pause_ms(20);
    ck_assert_int_eq(left, 0);
}
END_TEST

/* ------------------------------------------------------------------ exit paths */

/* A listen the library refuses at once (reuseport on an inherited descriptor) used to
 * leave its group on the main loop, freed at exit after the worker loops: a
 * use-after-free at SIGTERM. */
START_TEST(test_listen_refused_at_once_then_exit)
{
    int lport;
    int lfd = np_tcp_listen(&lport);
    np_opts_t o = {.config = "{}",
                   .threads = THREADS,
                   .pass_fd = lfd,
                   .listen_fds = 1,
                   .listen_fdnames = "web"};
    netd_proc_t *np = np_start_ex(&o);
    close(lfd);
    /* Named "web", it takes the inherited descriptor of that name instead of the port. */
    json_t *r = np_call(np, "{s:s, s:i, s:s, s:s, s:s}", "cmd", "listen", "port", 0, "host",
                        "127.0.0.1", "balance", "reuseport", "name", "web");
    np_expect_error(r, "EINVAL", "reuseport");
    /* The name is free for a good listen: nothing of the refused one is left. */
    np_ok(np_call(np, "{s:s, s:i, s:s, s:s}", "cmd", "listen", "port", 0, "host", "127.0.0.1",
                  "name", "web"));
    ck_assert_int_eq(np_server_port(np, "web"), lport);
    np_signal(np, SIGTERM);
    ck_assert_int_eq(np_wait_exit(np, 10000), 0);
}
END_TEST

/* ------------------------------------------------------------------ sockets in transit */

/* While moves fly, every `sockets` answer lists each connection exactly once: a socket
 * between two workers is shown as "moving". It used to be missing now and then. */
START_TEST(test_sockets_lists_sockets_in_transit)
{
    netd_proc_t *np = np_start(np_q(CFG_ECHO), THREADS);
    int port = np_server_port(np, "echo");
    enum { N = 100 };
    int fds[N];
    open_clients(port, fds, N);
    json_int_t ids[N];
    ck_assert_int_eq(socket_ids(np, "echo", ids, N), N);
    movers_t mv;
    movers_start(np, &mv, 6, NP_SANITIZED ? 15 : 40, ids, N, 42);
    np_client_t *q = np_connect(np);
    int moving_seen = 0;
    for (int round = 0; round < 60; round++) {
        json_t *r = np_ok(np_ccall(q, "{'cmd':'sockets','server':'echo','limit':1000}"));
        ck_assert_int_eq(np_jint(r, "total"), N);
        json_t *arr = np_jarr(r, "sockets");
        ck_assert_int_eq(json_array_size(arr), N);
        json_int_t prev = 0;
        size_t i;
        json_t *k;
        json_array_foreach(arr, i, k) {
            json_int_t id = np_jint(k, "id");
            ck_assert_msg(id > prev, "ids out of order or twice: %lld after %lld", (long long)id,
                          (long long)prev);
            prev = id;
            if (strcmp(np_jstr(k, "state"), "moving") == 0)
                moving_seen++;
        }
    }
    movers_finish(&mv);
    fprintf(stderr, "races: %d sockets seen in transit\n", moving_seen);
    for (int i = 0; i < N; i++)
        np_echo_check(fds[i], "still here");
    close_all(fds, N);
}
END_TEST

/* `close {"destroy":true}` while moves fly: every connection ends, those in transit
 * included, and the close is answered. One that arrived after the destroy went by used
 * to live on and hold the server's 'close' (the reply) forever. */
START_TEST(test_close_destroy_reaches_sockets_in_transit)
{
    netd_proc_t *np = np_start(np_q(CFG_ECHO), THREADS);
    int port = np_server_port(np, "echo");
    enum { N = 100 };
    int fds[N];
    open_clients(port, fds, N);
    json_int_t ids[N];
    ck_assert_int_eq(socket_ids(np, "echo", ids, N), N);
    movers_t mv;
    movers_start(np, &mv, 6, NP_SANITIZED ? 15 : 40, ids, N, 7);
    movers_under_way(&mv);
    np_ok(np_call(np, "{s:s, s:s, s:b}", "cmd", "close", "server", "echo", "destroy", 1));
    for (int i = 0; i < N; i++)
        ck_assert_msg(np_expect_eof(fds[i]) == 1, "connection %d was not ended", i);
    movers_finish(&mv);
    ck_assert_int_eq(
        np_jint(np_ok(np_call(np, "{s:s, s:s}", "cmd", "sockets", "role", "all")), "total"), 0);
    close_all(fds, N);
}
END_TEST

/* The exit cut (a second SIGTERM) while moves fly: sockets that arrive on a worker after
 * its cut are destroyed on arrival, every connection ends, and netd exits 1 without a
 * leak. One in transit used to survive the cut, and the server never closed. */
START_TEST(test_exit_cut_with_moves_in_flight)
{
    netd_proc_t *np = np_start(np_q(CFG_ECHO), THREADS);
    int port = np_server_port(np, "echo");
    enum { N = 100 };
    int fds[N];
    open_clients(port, fds, N);
    json_int_t ids[N];
    ck_assert_int_eq(socket_ids(np, "echo", ids, N), N);
    movers_t mv;
    movers_start(np, &mv, 6, NP_SANITIZED ? 15 : 40, ids, N, 99);
    movers_under_way(&mv);
    np_signal(np, SIGTERM);
    np_wait_log(np, "draining:"); /* the first starts the drain; the second cuts */
    np_signal(np, SIGTERM);
    ck_assert_int_eq(np_wait_exit(np, 10000), 1);
    for (int i = 0; i < N; i++)
        ck_assert_msg(np_expect_eof(fds[i]) == 1, "connection %d was not ended", i);
    close_all(fds, N);
    for (int i = 0; i < mv.k; i++)
        np_client_close(mv.c[i]);
}
END_TEST

static Suite *races_suite(void)
{
    Suite *s = suite_create("races");
    TCase *tc = np_tcase(s, "moves", 60);
    tcase_add_test(tc, test_move_then_hang_up);
    tcase_add_test(tc, test_pipelined_replies_keep_their_order);
    tcase_add_test(tc, test_proxy_pair_closing_while_moving);
    tcase_add_test(tc, test_listen_refused_at_once_then_exit);
    tcase_add_test(tc, test_sockets_lists_sockets_in_transit);
    tcase_add_test(tc, test_close_destroy_reaches_sockets_in_transit);
    tcase_add_test(tc, test_exit_cut_with_moves_in_flight);
    return s;
}

int main(void)
{
    return np_run_suite(races_suite());
}
