/* SPDX-License-Identifier: MIT */
/*
 * What netd shows operators about itself: the counters workers keep per server and per
 * connection, the Prometheus text (metrics.c, one generator for the `metrics` command and
 * GET /metrics), the HTTP endpoint (http.c) and the access log (accesslog.c).
 */
#ifndef NETD_OBSERVE_H
#define NETD_OBSERVE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netd/net.h>

typedef struct netd netd_t;
typedef struct netd_server netd_server_t;
typedef struct netd_conn netd_conn_t;
typedef struct netd_worker netd_worker_t;
typedef struct netd_config netd_config_t;

/* The connection-duration histogram: upper bounds in ms, plus a +Inf bucket. */
#define NETD_DURATION_BOUNDS 12
#define NETD_DURATION_BUCKETS (NETD_DURATION_BOUNDS + 1)
extern const uint64_t netd_duration_bounds_ms[NETD_DURATION_BOUNDS];

/*
 * Per-server counters, embedded in the server record (daemon.h).
 * Written by: the workers, with relaxed atomic adds, through the counted reference each
 * connection record holds. Read by: the main loop when it builds the metrics. Bytes are
 * "settled": a worker adds what a connection moved since it last settled it (at close, and
 * in the fan-out every scrape runs first), so the totals only ever grow, whatever moves
 * and closes happen while a scrape is under way.
 */
typedef struct netd_server_obs {
    _Atomic uint64_t bytes_read, bytes_written;
    _Atomic uint64_t idle_timeouts, slow_destroyed, upstream_failed;
    _Atomic uint64_t duration[NETD_DURATION_BUCKETS]; /* per bucket, not cumulative */
    _Atomic uint64_t duration_ms_sum;
} netd_server_obs_t;

/* Why netd itself ended a connection (absent: the peer or an error ended it). */
enum netd_end {
    NETD_END_NONE = 0,
    NETD_END_TIMEOUT,
    NETD_END_SLOW,
    NETD_END_DESTROY,
    NETD_END_UPSTREAM
};

/* Per connection, in its record: touched only by the worker that holds the record, so it
 * travels with the record when the socket moves. */
typedef struct netd_conn_obs {
    uint64_t settled_read, settled_written; /* bytes already added to the server's */
    uint32_t moves;
    uint8_t end;   /* enum netd_end, the first reason given */
    bool peer_fin; /* the peer's FIN arrived */
    int error;     /* the socket's error code (negative), 0 for none */
} netd_conn_obs_t;

/* Per worker, in netd_worker_t: each written by its own worker only (single-writer
 * relaxed atomics), summed by the main loop on demand. */
typedef struct netd_worker_obs {
    _Atomic uint64_t moves_in, moves_out;    /* client connections */
    _Atomic uint64_t log_lines, log_dropped; /* access-log lines queued / dropped when full */
} netd_worker_obs_t;

/* ------------------------------------------------------------ text of the exposition */

/* A growing text buffer; after an allocation failure it keeps what it had and sets oom. */
typedef struct netd_text {
    char *buf;
    size_t len, cap;
    bool oom;
} netd_text_t;

void netd_text_printf(netd_text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A Prometheus label value: backslash, quote and newline escaped. */
void netd_text_label(netd_text_t *t, const char *value);

/* ------------------------------------------------------------ hooks on the workers */

/* Worker thread: listens for the peer's FIN and for errors (again after every move). */
void netd_obs_attach(netd_conn_t *c);
/* Worker thread: netd is about to destroy c for `why`; counts it on its server. */
void netd_obs_end(netd_conn_t *c, enum netd_end why);
/* Worker thread, inside the 'close' of a client connection: settles its bytes, observes
 * its duration and writes its access-log line. */
void netd_obs_closed(netd_conn_t *c, const nd_event_t *ev);
/* Worker thread: adds what c moved since it was last settled to its server's totals. */
void netd_obs_settle(netd_conn_t *c);
/* Worker threads: a client connection leaves w (DETACHED) / arrives on w (ADOPTED). */
void netd_obs_move_out(netd_worker_t *w, netd_conn_t *c);
void netd_obs_move_in(netd_worker_t *w, netd_conn_t *c);
/* The phrase for how a connection ended: "FIN", "RST", "timeout", "ECONNREFUSED"... */
const char *netd_obs_end_name(const netd_conn_t *c, bool had_error);

/* ------------------------------------------------------------ main loop */

/* Before the workers start: the access log's writer (its file opened now, so that a bad
 * path stops netd at startup) and the state of this module. 0, or -1 after logging why. */
int netd_observe_init(netd_t *d, int nworkers);
/* After the workers start: the HTTP endpoint, if configured. 0, or -1 after logging.
 * `patient` (taking over from a running netd, which still holds the port until it
 * exits): a busy port is tried again every 100 ms for up to 30 s instead. */
int netd_observe_start(netd_t *d, bool patient);
/* After the worker threads ended, before any loop is freed: writes what the access log
 * still holds, stops its writer and the endpoint, frees everything. */
void netd_observe_stop(netd_t *d);
/* SIGHUP: reopens the access-log file (logrotate moved it). */
void netd_observe_reopen(netd_t *d);
/* A reload loaded cfg: a new accessLog path or metrics address applies from now on. */
void netd_observe_reload(netd_t *d, const netd_config_t *cfg);
/* A server's group closed (inside its 'close'): its counters carry over to the next
 * server of the same name, so a reopened server's series never go backwards. */
void netd_obs_server_closed(netd_t *d, netd_server_t *s);

/*
 * The metrics text, for the `metrics` command and GET /metrics alike: every worker first
 * settles the bytes of its connections (one fan-out, shared by every request that arrives
 * while it runs), then the main loop builds the text and calls cb(d, text, arg), text
 * NULL when out of memory; text is valid during the call only. Returns 0, or -ENOMEM
 * (then cb never runs).
 */
typedef void (*netd_metrics_cb)(netd_t *d, const char *text, size_t len, void *arg);
int netd_metrics_collect(netd_t *d, netd_metrics_cb cb, void *arg);

/* ------------------------------------------------------- `sockets`: --peer, --sort */

struct netd_sockinfo;
/* A peer filter: address (normalised text) and optionally port; `on` false matches all. */
typedef struct netd_peer_filter {
    bool on;
    char address[64];
    int port; /* 0: any */
} netd_peer_filter_t;
/* "ADDR", "ADDR:PORT" (IPv4), "IPV6" or "[IPV6]:PORT". 0, or -1 for anything else. */
int netd_peer_filter_parse(const char *s, netd_peer_filter_t *out);
bool netd_peer_filter_match(const netd_peer_filter_t *f, const struct netd_sockinfo *i);
/* Orders of `sockets`: by id (default), most bytes, oldest, most idle first. */
enum netd_sock_sort { NETD_SORT_ID = 0, NETD_SORT_BYTES, NETD_SORT_AGE, NETD_SORT_IDLE };
/* "bytes", "age", "idle" -> the order; -1 for anything else. */
int netd_sock_sort_parse(const char *s);
void netd_sockinfo_sort(struct netd_sockinfo *v, size_t n, enum netd_sock_sort by);

/* --------------------------------------------------------- inside this module */

typedef struct netd_http netd_http_t;
typedef struct netd_alog netd_alog_t;

/* The module's state: d->obs. Owned by: the main loop; workers reach `alog` only, which
 * is set before they start and stays until they have ended. */
typedef struct netd_observe {
    struct netd_metrics *metrics;
    netd_alog_t *alog;
    netd_http_t *http;
    char *http_host;          /* what the endpoint serves now (NULL: off) */
    int http_port;            /* as configured (0: any free port) */
    char *log_path;           /* the access log's file; NULL: stderr */
    struct event *http_retry; /* taking over: the port is not free yet */
    int http_tries;
} netd_observe_t;

/* --metrics HOST:PORT, [V6]:PORT or PORT (host 127.0.0.1). 0, or -1 with a message. */
int netd_metrics_parse_addr(const char *arg, char **host, int *port, char *err, size_t errlen);

/* metrics.c */
struct netd_metrics *netd_metrics_new(void);
/* At exit, after the HTTP endpoint and the control clients are gone. */
void netd_metrics_free(netd_t *d, struct netd_metrics *m);

/* http.c: the endpoint on the main loop. NULL after logging why (not for EADDRINUSE when
 * quiet_busy: then errno says so). */
netd_http_t *netd_http_start(netd_t *d, const char *host, int port, bool quiet_busy);
void netd_http_free(netd_http_t *h);

/* accesslog.c: the writer thread and the per-worker buffers. */
/* path NULL: stderr. NULL after logging why. */
netd_alog_t *netd_alog_start(netd_t *d, const char *path, int nworkers);
void netd_alog_line(netd_alog_t *a, netd_worker_t *w, const char *line, size_t len);
void netd_alog_reopen(netd_alog_t *a, const char *path);
/* Lines the writer gave up on (a log that took nothing for too long). */
uint64_t netd_alog_dropped(netd_alog_t *a);
void netd_alog_stop(netd_alog_t *a);

#endif
