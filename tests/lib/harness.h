/* SPDX-License-Identifier: MIT */
/*
 * Test harness shared by the Check suites: loops with a watchdog, an event log for
 * asserting order, timers that keep the loop alive, and helpers for raw peer sockets.
 * Everything here is test-only and never linked into libnetd.
 */
#ifndef ND_TEST_HARNESS_H
#define ND_TEST_HARNESS_H

#include <check.h>
#include <stddef.h>
#include <netd/net.h>

/* CK_TIMEOUT_MULTIPLIER (default 1) applied to ms. */
unsigned th_scale(unsigned ms);

/* 1 when built with a sanitizer that makes things slow (TSan): tests scale sizes down. */
int th_sanitized(void);

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
/* A fresh temporary directory for unix socket paths; the path buffer is static per call
 * site: copy it. Removed by th_finish? No: the caller removes files it created. */
const char *th_tmpdir(void);

#endif
