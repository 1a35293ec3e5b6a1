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
