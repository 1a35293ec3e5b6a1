/* SPDX-License-Identifier: MIT */
/*
 * netd_proc: drive a real netd from a Check test. Starts netd as a child process with a
 * config in a fresh temporary directory and a control socket there, talks to it over the
 * control socket (one JSON request, one reply line, always with a deadline), signals it,
 * waits for its exit, and cleans everything up. Plus blocking TCP/unix test clients with
 * timeouts. Everything is on loopback or unix sockets.
 *
 * Failures abort the current test (ck_assert); the netd child gets PR_SET_PDEATHSIG and
 * an atexit hook kills it, so a failed test never leaves a daemon behind.
 */
#ifndef NETD_TEST_PROC_H
#define NETD_TEST_PROC_H

#include <check.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/un.h>
#include <jansson.h>

/* The default deadline of every wait, in ms, before th_scale (CK_TIMEOUT_MULTIPLIER). */
#define NP_TIMEOUT_MS 5000

/* One echo server on loopback, port 0 (an np_q text). */
#define NP_CFG_ECHO "{'servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"

/* ------------------------------------------------------------------ control clients */

/* One control connection: a unix stream socket and the bytes read past the last line. */
typedef struct np_client {
    int fd;
    char *buf;
    size_t len, cap;
} np_client_t;

/* Connects to a control socket path; NULL when the connect fails (errno set). */
np_client_t *np_client_open(const char *path);
void np_client_close(np_client_t *c);
/* Writes all of buf (MSG_NOSIGNAL). Returns 0, or -errno (EPIPE, ECONNRESET...). */
int np_client_send_raw(np_client_t *c, const void *buf, size_t len);
/* Sends one request line: compact JSON + "\n". req is stolen. Asserts the send worked. */
void np_client_send(np_client_t *c, json_t *req);
/* Reads one line (without its "\n") within timeout_ms (scaled). Returns a malloc'd
 * string, or NULL on EOF / error / timeout; *why (optional) says which ("eof",
 * "timeout", strerror). */
char *np_client_read_line(np_client_t *c, unsigned timeout_ms, const char **why);
/* Replies returned by the functions below belong to the test's pool (freed by
 * np_cleanup_all): never json_decref them. */
/* Reads one line and parses it; asserts it arrived in time and is a JSON object. */
json_t *np_client_recv(np_client_t *c, unsigned timeout_ms);
/* Sends req (stolen) and returns the reply (asserted to arrive). */
json_t *np_client_rpc(np_client_t *c, json_t *req);
/* json_pack(fmt, ...) as the request, then np_client_rpc. */
json_t *np_client_call(np_client_t *c, const char *fmt, ...);
/* 1 when the peer has closed (EOF or ECONNRESET) within timeout_ms; any data read
 * before the EOF is discarded. */
int np_client_wait_closed(np_client_t *c, unsigned timeout_ms);

/* ------------------------------------------------------------------ the daemon */

typedef struct np_opts {
    const char *config;         /* JSON text written to DIR/netd.json; NULL: "{}" */
    int threads;                /* -t N; 0: 2; < 0: no -t */
    const char *const *env;     /* extra "NAME=VALUE" entries, NULL-terminated, or NULL */
    int pass_fd;                /* > 0: a descriptor the child gets as fd 3 (socket
                                activation); 0: none */
    int listen_fds;             /* > 0: LISTEN_FDS=N and LISTEN_PID=<child pid> set in the
                                child after fork (pass_fd is fd 3) */
    const char *listen_fdnames; /* LISTEN_FDNAMES, or NULL */
    const char *listen_pid;     /* override LISTEN_PID (a wrong pid on purpose), or NULL */
    const char *sock_path;      /* control socket path; NULL: DIR/netd.sock; relative:
                                under DIR */
    bool no_sock_arg;           /* run without -s (sock_path says where netd will be) */
    bool no_config;             /* run without -c */
    bool no_wait;               /* do not wait for the ping (a start expected to fail) */
    const char *const *args;    /* more arguments, NULL-terminated, or NULL */
    rlim_t nofile;              /* > 0: netd's RLIMIT_NOFILE, soft and hard (the test keeps
                                its own, higher limit for its clients) */
} np_opts_t;

typedef struct netd_proc {
    pid_t pid;
    char dir[PATH_MAX];    /* the temporary directory (realpath'd) */
    char sock[PATH_MAX];   /* the control socket path */
    char config[PATH_MAX]; /* DIR/netd.json */
    char errlog[PATH_MAX]; /* DIR/stderr.txt: netd's stderr (and stdout) */
    bool exited;
    int status;       /* the wait status, once exited */
    np_client_t *ctl; /* the control connection used by np_call (opened at start) */
    bool owns_dir;
} netd_proc_t;

/* The netd binary: $top_builddir/src/daemon/netd (top_builddir default "."). */
const char *np_netd_path(void);
/* A new temporary directory (realpath'd, mode 0700) in out (PATH_MAX). */
void np_mkdtemp(char *out);

/* Starts netd; unless o->no_wait, waits until it answers ping (and checks pid) and keeps
 * that connection as np->ctl. Asserts on failure, with netd's stderr in the message. */
netd_proc_t *np_start_ex(const np_opts_t *o);
/* np_start_ex with a config text and a thread count. */
netd_proc_t *np_start(const char *config, int threads);
/* A netd that another one started (a live upgrade's new process): the test process
 * must be a child subreaper (prctl PR_SET_CHILD_SUBREAPER) so the orphan is its child.
 * It shares old's directory, control socket and stderr file, and takes over the
 * directory's cleanup; it is stopped and checked like any other. */
netd_proc_t *np_adopt(netd_proc_t *old, pid_t pid);
/* Writes a new config file (atomically: written aside, renamed into place). */
void np_write_config(netd_proc_t *np, const char *config);
/* A request on np->ctl: json_pack(fmt, ...) sent, the reply returned (asserted). */
json_t *np_call(netd_proc_t *np, const char *fmt, ...);
/* A new control connection to this netd (asserted). */
np_client_t *np_connect(netd_proc_t *np);
/* kill(pid, sig). */
void np_signal(netd_proc_t *np, int sig);
/* Waits for the exit within timeout_ms (scaled). Returns the exit status (0-255), 128+N
 * when killed by signal N, or -1 on timeout. */
int np_wait_exit(netd_proc_t *np, unsigned timeout_ms);
/* netd's stderr so far (malloc'd, NUL-terminated). */
char *np_stderr(netd_proc_t *np);
/* Waits until netd's stderr holds needle (fails the test, showing stderr, after
 * NP_TIMEOUT_MS scaled). */
void np_wait_log(netd_proc_t *np, const char *needle);
/* Kills netd if it still runs, reaps it, closes the control connection, removes the
 * directory (when it made it) and frees np. NULL is fine. */
void np_stop(netd_proc_t *np);

/* Runs `netd --check -c FILE` on a config text; returns the exit status and, when out is
 * given, the combined stdout+stderr (malloc'd). */
int np_check_config(const char *config, char **out);

/* Stops every netd, closes every client and frees every reply of the test: a checked
 * teardown (tcase_add_checked_fixture(tc, NULL, np_cleanup_all)). */
void np_cleanup_all(void);
/* The runner's parent directory of all temporary directories (NP_TMPROOT), made before
 * the suite runs and removed after it, so failed tests leave nothing behind. */
void np_tmproot_init(void);
void np_tmproot_cleanup(void);

/* ------------------------------------------------------------------ replies */

/* Asserts reply.ok == true (message: the reply); returns the reply (not consumed). */
json_t *np_ok(json_t *reply);
/* Asserts reply.ok == false with error.code == code, error.message a non-empty string
 * (containing `in_message` when non-NULL). */
void np_expect_error(json_t *reply, const char *code, const char *in_message);
/* Compact text of a JSON value, in a static ring of buffers (for messages). */
const char *np_json_str(const json_t *v);

/* ------------------------------------------------------------------ data clients */

/* Blocking TCP connect to 127.0.0.1:port with SO_RCVTIMEO/SO_SNDTIMEO of
 * NP_TIMEOUT_MS (scaled); asserted. CLOEXEC. */
int np_tcp_connect(int port);
/* The same, returning -errno instead of asserting (ECONNREFUSED...). */
int np_tcp_try_connect(int port);
/* Asserts that netd no longer listens on 127.0.0.1:port: a connect is refused, or, when
 * another program (a test running alongside) has taken the freed port since, none of
 * netd's descriptors is a listening socket on it. */
void np_assert_not_listening(netd_proc_t *np, int port);
/* Blocking unix stream connect with the same timeouts; asserted. */
int np_unix_connect(const char *path);
/* A listening TCP socket on 127.0.0.1:0 (CLOEXEC); *port set. */
int np_tcp_listen(int *port);
/* Local port of a connected socket. */
int np_local_port(int fd);
/* send() everything (MSG_NOSIGNAL); asserted. */
void np_send_all(int fd, const void *buf, size_t len);
/* Reads exactly len bytes within the socket timeout; returns how many arrived (< len on
 * EOF, error or timeout). */
size_t np_recv_exact(int fd, void *buf, size_t len);
/* Reads until EOF into buf (at most cap); returns the count, or -1 on error/timeout. */
ssize_t np_recv_to_eof(int fd, void *buf, size_t cap);
/* 1 when the peer closed (EOF or ECONNRESET) within the socket timeout, with no data
 * first; 0 when data came, -1 on timeout. */
int np_expect_eof(int fd);
/* Sends data and asserts that exactly it comes back (an echo round trip). */
void np_echo_check(int fd, const char *data);

/* ------------------------------------------------------------------ shorthands */

/* 1 in sanitizer builds (ASan, TSan): suites scale sizes and rates down. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || defined(ND_ASAN) ||           \
    defined(ND_TSAN)
#define NP_SANITIZED 1
#else
#define NP_SANITIZED 0
#endif

/* printf, then every ' becomes " (JSON in a test without a backslash on every quote).
 * The text lives until 16 more calls. */
char *np_q(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* JSON text parsed (asserted valid, duplicate keys refused); a new reference. */
json_t *np_parse(const char *text);
/* A request given as np_q text, sent on c; the reply (asserted to arrive). */
json_t *np_ccall(np_client_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A request given as np_q text, sent on np->ctl; the reply (asserted to arrive). */
json_t *np_qcall(netd_proc_t *np, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Typed members of a reply, asserted to be there with that type. */
json_int_t np_jint(const json_t *o, const char *key);
const char *np_jstr(const json_t *o, const char *key);
json_t *np_jobj(const json_t *o, const char *key);
json_t *np_jarr(const json_t *o, const char *key);
/* The server object of a server by name, its TCP port, its getConnections. */
json_t *np_server_obj(netd_proc_t *np, const char *name);
int np_server_port(netd_proc_t *np, const char *name);
json_int_t np_get_connections(netd_proc_t *np, const char *name);
/* The socket id netd gives the connection whose client side is fd (asserted found). */
json_int_t np_socket_id_of(netd_proc_t *np, const char *server, int fd);
/* Resident memory of a process in KiB (VmRSS). */
long np_rss_kb(pid_t pid);
/* Open descriptors of a process (/proc/PID/fd). */
int np_fd_count(pid_t pid);
/* close() that sends RST instead of FIN. */
void np_rst_close(int fd);

/* hay (may be NULL) contains needle. */
bool np_str_in(const char *hay, const char *needle);
/* *sa = an AF_UNIX address with sun_path = path (asserted to fit). */
void np_sun_set(struct sockaddr_un *sa, const char *path);
/* A data pattern whose every byte depends on its offset: order and loss show. */
void np_pattern(char *buf, size_t len, size_t offset);

/* ------------------------------------------------------------------ suites */

/* A test case of s with the checked teardown np_cleanup_all and a timeout in seconds. */
TCase *np_tcase(Suite *s, const char *name, int timeout);
/* main() of a daemon suite: SIGPIPE ignored, the temporary root made, every test of s
 * run, the root removed. Returns the exit status. */
int np_run_suite(Suite *s);

/* ------------------------------------------------------------------ objects and counts */

/* Every field of a Server / Socket object (CONTROL.md "Objects"), with its type. */
void np_check_server_object(const json_t *s);
void np_check_socket_object(const json_t *k);
/* The id of a server by name. */
json_int_t np_server_id(netd_proc_t *np, const char *name);
/* servers[].connections of the named server (-1: not listed). */
json_int_t np_listed_connections(netd_proc_t *np, const char *name);
/* The `stats` reply (asserted ok). */
json_t *np_stats(netd_proc_t *np);
/* Polls a stats counter until it reaches min; returns it. */
json_int_t np_wait_stat_ge(netd_proc_t *np, const char *key, json_int_t min);
/* Polls until getConnections and servers[].connections both equal want; on the way
 * neither may leave [lo, hi]. */
void np_wait_count(netd_proc_t *np, const char *name, json_int_t want, json_int_t lo,
                   json_int_t hi);
/* A TCP client proved served with one echo round trip ("ping\n"). */
int np_echo_client(int port);
/* `listen` on 127.0.0.1:0 named name, with a handler (JSON text) or the default one;
 * returns the port. */
int np_listen_tcp0(netd_proc_t *np, const char *name, const char *handler_json);

/* ------------------------------------------------------------------ sd_notify */

typedef struct np_notify {
    int fd;
    char env[160]; /* NOTIFY_SOCKET=... */
} np_notify_t;

/* A datagram socket for netd's sd_notify: a path in a fresh directory, or an abstract
 * name; n->env is the variable to give netd. The test closes n->fd. */
void np_notify_open(np_notify_t *n, bool abstract);
/* Reads datagrams until one holds needle as a whole line; fails after NP_TIMEOUT_MS.
 * Earlier datagrams that do not match are skipped (STATUS= updates...). */
void np_expect_notify(np_notify_t *n, const char *needle);

/* ------------------------------------------------------------------ an upstream for proxy */

/* A small echo server on the test's side, in a thread: serves one connection at a time,
 * echoes until EOF, then writes "bye\n" and shuts its side down (so both half-closes
 * show), then closes. */
typedef struct np_upstream {
    int lfd;
    int port;
    char path[PATH_MAX];
    int stop[2];
    pthread_t th;
    atomic_int accepted, saw_eof;
} np_upstream_t;

/* On 127.0.0.1:0 (u->port), or on a unix path when unix_path is given. */
void np_upstream_start(np_upstream_t *u, const char *unix_path);
void np_upstream_stop(np_upstream_t *u);

/* ------------------------------------------------------------------ another user */

/* Root only: as user nobody, connects to np's control socket (made reachable: np->dir and
 * its parent get mode 0711), sends line and reads until EOF, 5 s or cap - 1 bytes. out
 * (cap bytes) gets what arrived, or "connect: <error>" / "setuid failed". Returns the
 * errno of the read that ended it: 0 for EOF (or a full buffer), EAGAIN for the timeout,
 * ECONNRESET...; -1 when nothing was read. */
int np_request_as_nobody(netd_proc_t *np, const char *line, char *out, size_t cap);

/* ------------------------------------------------------------------ time */

uint64_t np_now_ms(void);
/* Sleeps ms (polling intervals only: never a stand-in for a condition). */
void np_pause_ms(unsigned ms);

#endif
