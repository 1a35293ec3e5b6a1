/* SPDX-License-Identifier: MIT */
/*
 * Test harness shared by the Check suites: loops with a watchdog, an event log for
 * asserting order, timers that keep the loop alive, and helpers for raw peer sockets.
 * Everything here is test-only and never linked into libnetd.
 */
#ifndef ND_TEST_HARNESS_H
#define ND_TEST_HARNESS_H

#include <check.h>
#include <semaphore.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <netd/net.h>

/* A test case added to s with a timeout in seconds (Check scales it by
 * CK_TIMEOUT_MULTIPLIER itself). */
TCase *th_tcase(Suite *s, const char *name, double timeout_s);
/* Runs every test of s and frees it: main()'s exit status (0 when all passed). */
int th_run_suite(Suite *s);

/* CK_TIMEOUT_MULTIPLIER (default 1) applied to ms. */
unsigned th_scale(unsigned ms);

/* 1 when built with a sanitizer that makes things slow (TSan): tests scale sizes down. */
int th_sanitized(void);

/* Monotonic time in ms, and the CPU time (user + system) this process has used. */
double th_now_ms(void);
double th_cpu_ms(void);

/* sem_wait with a deadline of th_scale(ms); fails the test ("timed out waiting for
 * what") when it passes. */
void th_sem_wait(sem_t *s, unsigned ms, const char *what);

/* Raises the soft RLIMIT_NOFILE to at least n (fails the test if the hard limit is
 * lower): 1000 clients and their 1000 accepted peers need more than a default 1024. */
void th_need_fds(rlim_t n);

/* A byte pattern without short periods, so a lost, reordered or repeated chunk shows;
 * th_pat_fill writes th_pat(off), th_pat(off + 1)... into dst. */
static inline unsigned char th_pat(uint64_t i)
{
    return (unsigned char)((i * 0x9E3779B97F4A7C15ull) >> 56);
}
void th_pat_fill(unsigned char *dst, uint64_t off, size_t n);

/* FNV-1a over a byte stream: start from TH_FNV0, feed every chunk in order. */
#define TH_FNV0 0xcbf29ce484222325ull
uint64_t th_fnv1a(uint64_t h, const void *p, size_t n);

/* A new loop; fails the test if it cannot be made. */
nd_loop_t *th_loop_new(void);

/* Runs the loop to completion; fails the test ("loop did not finish in N ms") if it is
 * still running after th_scale(timeout_ms). */
void th_run(nd_loop_t *loop, unsigned timeout_ms);

/* Asserts that no handle is left alive (nd_loop_handle_count == 0) and frees the loop. */
void th_finish(nd_loop_t *loop);

/* An ordered log of events: th_log(l, "connect") appends "connect" separated by ','. */
typedef struct th_log {
    char buf[8192];
    size_t len;
} th_log_t;
void th_log(th_log_t *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define th_log_str(l) ((const char *)(l)->buf)

/* A growing byte buffer, always NUL-terminated after len (TH_BUF_STR). */
typedef struct th_buf {
    unsigned char *p;
    size_t len, cap;
} th_buf_t;
void th_buf_add(th_buf_t *b, const void *d, size_t n);
void th_buf_free(th_buf_t *b);
#define TH_BUF_STR(b) ((b).p ? (const char *)(b).p : "")

/* What one socket saw: every event in the attach mask counted, all but 'data' logged
 * ("lookup", "connect", "end", "finish", "drain", "timeout", "error:NAME", "close"),
 * the bytes of 'data' kept. th_sink_free releases the bytes. */
typedef struct th_sink {
    th_log_t log;
    th_buf_t data;
    int ndata, nlookup, nconnect, nend, nfinish, nerror, nclose, had_error;
    int error_code;
    char error_name[32];
    char error_message[160];
} th_sink_t;
#define TH_EVBIT(e) (1u << (e))
/* The events of a connection's life, not 'drain' nor 'timeout'. */
#define TH_SINK_ALL                                                                                \
    (TH_EVBIT(ND_EV_LOOKUP) | TH_EVBIT(ND_EV_CONNECT) | TH_EVBIT(ND_EV_DATA) |                     \
     TH_EVBIT(ND_EV_END) | TH_EVBIT(ND_EV_FINISH) | TH_EVBIT(ND_EV_ERROR) | TH_EVBIT(ND_EV_CLOSE))
void th_sink_attach(nd_socket_t *s, th_sink_t *k, unsigned mask);
void th_sink_free(th_sink_t *k);

/* A connected pair on one loop: a server on 127.0.0.1:0 that takes one connection and
 * closes (so the loop ends by itself once both sides are gone), and a client to it. Set
 * the hooks and half-open flags in *p (zeroed) before th_pair_open; client and conn
 * become NULL once their 'close' has run. */
typedef struct th_pair th_pair_t;
typedef void (*th_pair_fn)(th_pair_t *p);
struct th_pair {
    nd_loop_t *loop;
    nd_socket_t *client;
    nd_socket_t *conn;          /* the server's side */
    nd_connect_options_t copts; /* what the client connected with */
    int port;
    int parts;
    int client_half_open;
    int server_half_open;
    th_pair_fn connecting; /* the client exists and is still connecting */
    th_pair_fn accepted;   /* the server's side exists: attach its listeners here */
    th_pair_fn ready;      /* both sides are connected */
    void *arg;
};
void th_pair_open(th_pair_t *p, nd_loop_t *loop, void *arg);

/* The port a listening server is bound to (asserted). */
int th_server_port(nd_server_t *server);
/* nd_connect to 127.0.0.1:port (asserted to start), on_connect its 'connect' listener. */
nd_socket_t *th_connect(nd_loop_t *loop, int port, nd_listener_fn on_connect, void *arg);
/* A socket over a connected descriptor (a socketpair end...), readable and writable. */
nd_socket_t *th_socket_on_fd(nd_loop_t *loop, int fd);

/* A one-shot timer on the loop's base that keeps the loop alive until it fires (ms is
 * not scaled). cancel with th_timer_cancel before it fires if needed. */
typedef struct th_timer th_timer_t;
th_timer_t *th_timer(nd_loop_t *loop, unsigned ms, void (*fn)(void *arg), void *arg);
void th_timer_cancel(th_timer_t *t);

/* Listening sockets made with plain syscalls, for tests that need a raw peer.
 * th_raw_listen: bound to 127.0.0.1:0, listening; *port set. Returns the fd. */
int th_raw_listen(int *port);
/* Blocking connect to 127.0.0.1:port; returns fd. */
int th_raw_connect(int port);
/* A port on 127.0.0.1 where nothing listens (bound then closed). */
int th_free_port(void);
/* A port on 127.0.0.1 that refuses connections for the rest of the process: bound and
 * never listening, so no other program (a test running alongside) can take it, and no
 * connect picks it as its own source port (which would connect to itself). */
int th_refused_port(void);
/* A fresh temporary directory for unix socket paths; the path buffer is static per call
 * site: copy it. Removed by th_finish? No: the caller removes files it created. */
const char *th_tmpdir(void);

#endif
