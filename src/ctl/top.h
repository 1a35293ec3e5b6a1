/* SPDX-License-Identifier: MIT */
/*
 * netctl top: a live view of a running netd, refreshed every interval (hatop, redis-cli
 * --stat). Full screen on a terminal; one line per interval otherwise, for logs.
 */
#ifndef NETCTL_TOP_H
#define NETCTL_TOP_H

typedef struct netctl_top_opts {
    long long interval_ms; /* between refreshes; default 1000 */
    long long count;       /* refreshes before exiting; 0: until q or a signal */
    long long timeout_ms;  /* per request; 0 waits forever */
    const char *sort;      /* "bytes" (default), "age", "idle" */
} netctl_top_opts_t;

/* Runs until q, a signal, or `count` refreshes. Returns netctl's exit status: 0, 1 (the
 * daemon answered an error), 3 (cannot reach it, or no reply in time). */
int netctl_top(const char *socket_path, const netctl_top_opts_t *opts);

#endif
