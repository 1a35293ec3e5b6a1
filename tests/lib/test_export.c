/* SPDX-License-Identifier: MIT */
/*
 * Handing live sockets to another process (nd_socket_export / nd_socket_import): across a
 * real fork(), with the descriptors passed by SCM_RIGHTS, the stream carries on intact:
 * unread input, queued output, the pipes of a pair. Plus the refusals: an unknown record
 * version, a socket that is not quiet, and the abort that gives a socket back.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define BIG (4 * 1024 * 1024)

static unsigned char pattern_at(size_t i)
{
    return (unsigned char)((i * 7 + i / 251) & 0xff);
}

/* ------------------------------------------------------------------ passing a record */

static void write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        ck_assert(k > 0);
        p += k;
        n -= (size_t)k;
    }
}

static bool read_all(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n > 0) {
        ssize_t k = read(fd, p, n);
        if (k <= 0)
            return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

/* The record's length with the descriptors (SCM_RIGHTS), then the record. */
static void send_record(int ch, const nd_export_t *ex)
{
    uint64_t len = ex->len;
    struct iovec iov = {&len, sizeof(len)};
    union {
        char buf[CMSG_SPACE(sizeof(int) * 2)];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof(ctl));
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = ctl.buf,
                        .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)ex->nfds)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)ex->nfds);
    memcpy(CMSG_DATA(cm), ex->fds, sizeof(int) * (size_t)ex->nfds);
    ck_assert(sendmsg(ch, &mh, 0) == (ssize_t)sizeof(len));
    write_all(ch, ex->data, ex->len);
}

/* One record (malloc'd) and its descriptors, or NULL. */
static unsigned char *recv_record(int ch, size_t *len, int *fds, int *nfds)
{
    uint64_t l = 0;
    union {
        char buf[CMSG_SPACE(sizeof(int) * 2)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {&l, sizeof(l)};
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = ctl.buf,
                        .msg_controllen = sizeof(ctl.buf)};
    if (recvmsg(ch, &mh, MSG_WAITALL) != (ssize_t)sizeof(l))
        return NULL;
    *nfds = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        memcpy(fds, CMSG_DATA(cm), sizeof(int) * (size_t)k);
        *nfds = k;
    }
    *len = (size_t)l;
    unsigned char *buf = malloc(*len ? *len : 1);
    if (!read_all(ch, buf, *len)) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* ------------------------------------------------------------------ the importing child */

static void child_echo_close(void *sock, const nd_event_t *ev, void *arg)
{
    (*(int *)arg)++;
}

/*
 * The other process: takes one record from the channel, imports it; a lone socket
 * becomes an echo (pipe(s, s), which makes its buffered input flow); starts it; tells
 * the parent; runs until every socket has closed. Exit status 0 when all went well.
 */
static int child_main(int ch)
{
    nd_loop_t *loop = nd_loop_new();
    size_t len;
    int fds[2], nfds;
    unsigned char *rec = recv_record(ch, &len, fds, &nfds);
    if (!rec)
        return 10;
    nd_socket_t *s[2];
    int rc = nd_socket_import(loop, rec, len, fds, nfds, NULL, s);
    free(rec);
    if (rc != 0)
        return 11;
    int closes = 0;
    for (int i = 0; i < 2; i++)
        if (s[i])
            nd_socket_on(s[i], ND_EV_CLOSE, child_echo_close, &closes);
    if (!s[1] && nd_socket_pipe(s[0], s[0], 1) != 0)
        return 12;
    nd_socket_import_start(s[0]);
    char ok = 'I';
    if (write(ch, &ok, 1) != 1)
        return 13;
    nd_loop_run(loop);
    int left = nd_loop_handle_count(loop);
    nd_loop_free(loop);
    if (closes != nfds)
        return 14;
    return left == 0 ? 0 : 15;
}

/* Forks the importer before anything else exists, so it inherits no socket of the test:
 * every descriptor it gets comes through the channel. */
static pid_t fork_child(int *ch)
{
    int sp[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        close(sp[0]);
        _exit(child_main(sp[1]));
    }
    close(sp[1]);
    *ch = sp[0];
    return pid;
}

static int child_status(pid_t pid)
{
    int st = 0;
    ck_assert(waitpid(pid, &st, 0) == pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void wait_imported(int ch)
{
    struct pollfd p = {.fd = ch, .events = POLLIN};
    ck_assert_msg(poll(&p, 1, (int)th_scale(5000)) == 1, "the child never imported");
    char c = 0;
    ck_assert(read(ch, &c, 1) == 1 && c == 'I');
}

/* Runs the loop one turn at a time until cond(arg) holds. */
static void run_until(nd_loop_t *loop, bool (*cond)(void *), void *arg)
{
    uint64_t spins = 0;
    while (!cond(arg)) {
        nd_loop_run_once(loop, 1);
        usleep(1000);
        ck_assert_msg(++spins < th_scale(5000), "condition not reached");
    }
}

/* ------------------------------------------------------------------ a served connection */

typedef struct served {
    nd_loop_t *loop;
    nd_socket_t *sock; /* the accepted socket, no 'data' listener: input stays buffered */
    nd_server_t *server;
} served_t;

static void on_conn(void *server, const nd_event_t *ev, void *arg)
{
    served_t *t = arg;
    t->sock = ev->socket;
    /* Output the client does not read yet: most of it queues in user memory. */
    unsigned char *big = malloc(BIG);
    for (size_t i = 0; i < BIG; i++)
        big[i] = pattern_at(i);
    nd_socket_write(t->sock, big, BIG, NULL, NULL);
    free(big);
    nd_server_close(server, NULL, NULL);
}

static bool input_arrived(void *arg)
{
    served_t *t = arg;
    return t->sock && nd_socket_bytes_read(t->sock) == 7;
}

/* A client with a small receive buffer, so that most of the server's output queues. */
static int raw_connect_port(nd_server_t *s)
{
    nd_address_t a;
    ck_assert_int_eq(nd_server_address(s, &a), 0);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a.port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return fd;
}

static void read_exact(int fd, unsigned char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ck_assert_msg(poll(&p, 1, (int)th_scale(5000)) == 1, "read timed out at %zu of %zu", got,
                      n);
        ssize_t k = recv(fd, buf + got, n - got, 0);
        ck_assert_msg(k > 0, "connection ended at %zu of %zu", got, n);
        got += (size_t)k;
    }
}

/*
 * A served connection with unread input and queued output moves to another process:
 * the client then reads every queued byte, then the echo of what it had sent before the
 * handover, then the echo of what it sends after; ending its side ends the echo.
 */
START_TEST(export_across_fork_keeps_the_stream)
{
    int ch;
    pid_t pid = fork_child(&ch);
    served_t t = {0};
    t.loop = th_loop_new();
    t.server = nd_server_new(t.loop, NULL, on_conn, &t);
    ck_assert_int_eq(nd_server_listen(t.server, 0, "127.0.0.1", 0), 0);
    nd_loop_run_once(t.loop, 1);
    int client = raw_connect_port(t.server);
    ck_assert(send(client, "hello-1", 7, 0) == 7);
    run_until(t.loop, input_arrived, &t);
    size_t queued_before = nd_socket_buffer_size(t.sock);
    ck_assert_msg(queued_before > 0, "nothing queued: the test needs queued output");

    nd_export_t ex;
    ck_assert_int_eq(nd_socket_export(t.sock, &ex), 0);
    ck_assert_int_eq(ex.nfds, 1);
    /* Parked: nothing may change it now. */
    ck_assert_int_eq(nd_socket_write(t.sock, "x", 1, NULL, NULL), -EBUSY);
    send_record(ch, &ex);
    wait_imported(ch);
    nd_socket_export_commit(&ex);
    t.sock = NULL;

    unsigned char *got = malloc(BIG);
    read_exact(client, got, BIG);
    /* One assertion, not one per byte: each ck_assert reports its line to Check's
     * parent, and 4 Mi of them took longer than the case's timeout under TSan. */
    size_t diff = 0;
    while (diff < BIG && got[diff] == pattern_at(diff))
        diff++;
    ck_assert_msg(diff == BIG, "byte %zu of the queued output differs", diff);
    free(got);
    unsigned char echo[16];
    read_exact(client, echo, 7);
    ck_assert(memcmp(echo, "hello-1", 7) == 0);
    ck_assert(send(client, "hello-2", 7, 0) == 7);
    read_exact(client, echo, 7);
    ck_assert(memcmp(echo, "hello-2", 7) == 0);
    shutdown(client, SHUT_WR);
    ck_assert_int_eq(recv(client, echo, 1, 0), 0); /* the echo ended with its input */
    close(client);
    ck_assert_int_eq(child_status(pid), 0);
    close(ch);
    th_run(t.loop, 5000); /* the server's 'close': its connection left with the export */
    th_finish(t.loop);
}
END_TEST

/* ------------------------------------------------------------------ a pair */

/* A proxy-like pair piped both ways goes as one record with two descriptors and goes on
 * relaying both ways over there; a FIN still passes through. */
START_TEST(export_pair_across_fork)
{
    int ch;
    pid_t pid = fork_child(&ch);
    nd_loop_t *loop = th_loop_new();
    int a[2], b[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    nd_socket_t *x = th_socket_on_fd(loop, a[0]), *y = th_socket_on_fd(loop, b[0]);
    ck_assert_int_eq(nd_socket_pipe(x, y, 1), 0);
    ck_assert_int_eq(nd_socket_pipe(y, x, 1), 0);
    nd_loop_run_once(loop, 1);
    nd_export_t ex;
    ck_assert_int_eq(nd_socket_export(y, &ex), 0);
    ck_assert_int_eq(ex.nfds, 2);
    send_record(ch, &ex);
    wait_imported(ch);
    nd_socket_export_commit(&ex);
    ck_assert_int_eq(nd_loop_handle_count(loop), 0);

    unsigned char buf[16];
    ck_assert(send(a[1], "to-b", 4, 0) == 4);
    read_exact(b[1], buf, 4);
    ck_assert(memcmp(buf, "to-b", 4) == 0);
    ck_assert(send(b[1], "to-a", 4, 0) == 4);
    read_exact(a[1], buf, 4);
    ck_assert(memcmp(buf, "to-a", 4) == 0);
    close(a[1]); /* x's input ends: y is ended, then both close */
    ck_assert_int_eq(recv(b[1], buf, 1, 0), 0);
    close(b[1]);
    ck_assert_int_eq(child_status(pid), 0);
    close(ch);
    th_finish(loop);
}
END_TEST

/* ------------------------------------------------------------------ refusals */

static void on_data_count(void *sock, const nd_event_t *ev, void *arg)
{
    *(size_t *)arg += ev->len;
}

static bool five_read(void *arg)
{
    return nd_socket_bytes_read(arg) == 5;
}

/* A record of another version is refused whole (nothing taken); the exporter aborts and
 * the socket carries on, its buffered input delivered once a listener comes. */
START_TEST(unknown_version_refused_then_abort)
{
    nd_loop_t *loop = th_loop_new();
    nd_loop_t *other = th_loop_new();
    int sp[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
    nd_socket_t *s = th_socket_on_fd(loop, sp[0]);
    ck_assert(send(sp[1], "early", 5, 0) == 5);
    run_until(loop, five_read, s);
    nd_export_t ex;
    ck_assert_int_eq(nd_socket_export(s, &ex), 0);
    unsigned char *copy = malloc(ex.len);
    memcpy(copy, ex.data, ex.len);
    copy[4] = 99; /* the version byte */
    nd_socket_t *out[2];
    ck_assert_int_eq(nd_socket_import(other, copy, ex.len, ex.fds, ex.nfds, NULL, out), ND_EFORMAT);
    ck_assert_int_eq(nd_loop_handle_count(other), 0);
    ck_assert_int_ne(fcntl(sp[0], F_GETFD), -1); /* still open: nothing was taken */
    /* A lone socket's record claiming a pipe to a pair it does not carry (bit 21 of the
     * flags, the first field after the 6-byte header) is refused, not followed. */
    memcpy(copy, ex.data, ex.len);
    copy[6 + 2] |= 1u << 5;
    ck_assert_int_eq(nd_socket_import(other, copy, ex.len, ex.fds, ex.nfds, NULL, out), ND_EFORMAT);
    ck_assert_int_eq(nd_loop_handle_count(other), 0);
    /* A truncated record is refused the same way. */
    ck_assert_int_eq(nd_socket_import(other, ex.data, ex.len - 3, ex.fds, ex.nfds, NULL, out),
                     ND_EFORMAT);
    free(copy);
    nd_socket_export_abort(&ex);
    size_t got = 0;
    nd_socket_on(s, ND_EV_DATA, on_data_count, &got);
    ck_assert_int_eq(nd_socket_write(s, "back", 4, NULL, NULL), 1);
    unsigned char buf[8];
    read_exact(sp[1], buf, 4);
    ck_assert(memcmp(buf, "back", 4) == 0);
    close(sp[1]);
    th_run(loop, 5000);
    ck_assert_int_eq(got, 5);
    th_finish(loop);
    th_finish(other);
}
END_TEST

/* Only a quiet socket exports: connecting, destroyed, or piped to a third socket is not. */
START_TEST(only_quiet_sockets_export)
{
    nd_loop_t *loop = th_loop_new();
    nd_export_t ex;
    nd_connect_options_t o = {.port = th_refused_port(), .host = "127.0.0.1"};
    nd_socket_t *c = nd_connect(loop, &o, NULL, NULL);
    ck_assert_int_eq(nd_socket_export(c, &ex), -EBUSY); /* connecting */
    nd_socket_destroy(c);
    ck_assert_int_eq(nd_socket_export(c, &ex), ND_ECLOSED);
    int a[2], b[2], z[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, z), 0);
    nd_socket_t *x = th_socket_on_fd(loop, a[0]), *y = th_socket_on_fd(loop, b[0]),
                *w = th_socket_on_fd(loop, z[0]);
    nd_socket_pipe(x, y, 1);
    nd_socket_pipe(y, w, 1); /* y is piped to a third: cutting it would lose data */
    nd_loop_run_once(loop, 1);
    ck_assert_int_eq(nd_socket_export(x, &ex), -EBUSY);
    ck_assert_int_eq(nd_socket_export(y, &ex), -EBUSY);
    nd_socket_destroy(x);
    nd_socket_destroy(y);
    nd_socket_destroy(w);
    th_run(loop, 5000);
    close(a[1]);
    close(b[1]);
    close(z[1]);
    th_finish(loop);
}
END_TEST

/* ------------------------------------------------------------------ an exported server */

typedef struct held {
    int accepted, want;
    nd_socket_t *last;
} held_t;

static void held_conn(void *server, const nd_event_t *ev, void *arg)
{
    held_t *h = arg;
    h->accepted++;
    h->last = ev->socket;
}

static bool accepted_wanted(void *arg)
{
    held_t *h = arg;
    return h->accepted >= h->want;
}

/*
 * Between export and abort a server accepts nothing, even when one of its connections is
 * destroyed (a freed slot restarts a paused acceptor): a connection accepted here then
 * would be lost to the process taking the listener over. netd's control socket lost a
 * client this way during an upgrade. After the abort, the queued connection comes in.
 */
START_TEST(exported_server_accepts_nothing_until_abort)
{
    nd_loop_t *loop = th_loop_new();
    held_t h = {0};
    nd_server_t *s = nd_server_new(loop, NULL, held_conn, &h);
    ck_assert_int_eq(nd_server_listen(s, 0, "127.0.0.1", 0), 0);
    nd_address_t a;
    ck_assert_int_eq(nd_server_address(s, &a), 0);
    int c1 = th_raw_connect(a.port);
    h.want = 1;
    run_until(loop, accepted_wanted, &h);
    ck_assert_int_ge(nd_server_export(s), 0);
    nd_socket_destroy(h.last);       /* a slot comes free while exported */
    int c2 = th_raw_connect(a.port); /* queued by the kernel: the listener is readable */
    for (int i = 0; i < 20; i++) {
        nd_loop_run_once(loop, 1);
        usleep(1000);
    }
    ck_assert_msg(h.accepted == 1, "accepted while exported");
    nd_server_export_abort(s);
    h.want = 2;
    run_until(loop, accepted_wanted, &h);
    ck_assert_int_eq(h.accepted, 2);
    nd_socket_destroy(h.last);
    nd_server_close(s, NULL, NULL);
    close(c1);
    close(c2);
    th_run(loop, 5000); /* the connections' and the server's 'close' */
    th_finish(loop);
}
END_TEST

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("export");
    TCase *tc = th_tcase(s, "export", 20);
    tcase_add_test(tc, export_across_fork_keeps_the_stream);
    tcase_add_test(tc, export_pair_across_fork);
    tcase_add_test(tc, unknown_version_refused_then_abort);
    tcase_add_test(tc, only_quiet_sockets_export);
    tcase_add_test(tc, exported_server_accepts_nothing_until_abort);
    return th_run_suite(s);
}
