/* SPDX-License-Identifier: MIT */
/*
 * The second performance round's paths, held to the library's rules: a pipe that splices
 * (bytes never in user memory) still delivers every byte in order, lets a 'data' listener
 * see what follows it, and keeps a write queued behind the spliced bytes; an idle accepted
 * socket stays small; a group's worker acceptor stops at close(); a loop busy with a wake
 * runs messages posted meanwhile without a wakeup.
 */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "config.h"

#include "harness.h"

/* Byte p of the test stream: known at any offset, so a reader checks order as it goes. */
static unsigned char pattern(uint64_t p)
{
    return (unsigned char)((p * 31u + 7u) ^ (p >> 13));
}

/* ------------------------------------------------------------------------------------ */
/* A bulk pipe: writer -> front (piped to) -> uplink -> sink                            */
/* ------------------------------------------------------------------------------------ */

#define BULK_CHUNK 65536

typedef struct bulk {
    nd_loop_t *loop;
    nd_server_t *front, *sink_srv;
    nd_socket_t *writer, *front_sock, *uplink, *sink;
    uint64_t total;  /* bytes the writer sends */
    uint64_t sent;   /* bytes written so far */
    uint64_t got;    /* bytes the sink read */
    uint64_t bad_at; /* first offset whose byte was wrong, + 1 */
    int sink_ended;
    /* a 'data' listener added to the front socket once the sink has `listen_after` bytes */
    uint64_t listen_after;
    uint64_t read_at_listen, listened;
    /* a write into the uplink while it has spliced bytes queued */
    int mark_written;
    uint64_t mark_at;
    int polls;
    /* front and uplink piped both ways, exported and taken back before the mark */
    int export_pair, exported;
} bulk_t;

static const char MARK[] = "MARK";

static void sink_data(void *sock, const nd_event_t *ev, void *arg);

/* The sink checks every byte against the pattern, with the mark (if written) where the
 * uplink had accepted mark_at bytes when it was written. */
static void sink_check(bulk_t *b, const unsigned char *d, size_t len)
{
    for (size_t i = 0; i < len && !b->bad_at; i++) {
        uint64_t p = b->got + i;
        unsigned char want;
        if (b->mark_written && p >= b->mark_at && p < b->mark_at + 4)
            want = (unsigned char)MARK[p - b->mark_at];
        else if (b->mark_written && p >= b->mark_at + 4)
            want = pattern(p - 4);
        else
            want = pattern(p);
        if (d[i] != want)
            b->bad_at = p + 1;
    }
    b->got += len;
}

static void front_data(void *sock, const nd_event_t *ev, void *arg)
{
    ((bulk_t *)arg)->listened += ev->len;
}

static void sink_data(void *sock, const nd_event_t *ev, void *arg)
{
    bulk_t *b = arg;
    sink_check(b, (const unsigned char *)ev->data, ev->len);
    if (b->listen_after && !b->read_at_listen && b->got >= b->listen_after) {
        b->read_at_listen = nd_socket_bytes_read(b->front_sock);
        nd_socket_on(b->front_sock, ND_EV_DATA, front_data, b);
    }
}

static void sink_end(void *sock, const nd_event_t *ev, void *arg)
{
    bulk_t *b = arg;
    b->sink_ended = 1;
    nd_socket_end(sock, NULL, 0);
    nd_server_close(b->front, NULL, NULL);
    nd_server_close(b->sink_srv, NULL, NULL);
}

static void sink_connection(void *server, const nd_event_t *ev, void *arg)
{
    bulk_t *b = arg;
    b->sink = ev->socket;
    if (b->mark_at == UINT64_MAX)
        nd_socket_pause(b->sink); /* the mark test: nothing drains until the mark is in */
    nd_socket_on(b->sink, ND_EV_DATA, sink_data, b);
    nd_socket_on(b->sink, ND_EV_END, sink_end, b);
}

static void front_connection(void *server, const nd_event_t *ev, void *arg)
{
    bulk_t *b = arg;
    nd_address_t a;
    nd_server_address(b->sink_srv, &a);
    nd_connect_options_t o = {.port = a.port, .host = "127.0.0.1"};
    b->front_sock = ev->socket;
    b->uplink = nd_connect(b->loop, &o, NULL, NULL);
    ck_assert_ptr_nonnull(b->uplink);
    ck_assert_int_eq(nd_socket_pipe(b->front_sock, b->uplink, 1), 0);
    if (b->export_pair)
        ck_assert_int_eq(nd_socket_pipe(b->uplink, b->front_sock, 1), 0);
}

/* Writes the stream as fast as the front takes it: until a write queues, then at 'drain'. */
static void writer_more(void *sock, const nd_event_t *ev, void *arg)
{
    bulk_t *b = arg;
    unsigned char chunk[BULK_CHUNK];
    while (b->sent < b->total) {
        for (size_t i = 0; i < BULK_CHUNK; i++)
            chunk[i] = pattern(b->sent + i);
        b->sent += BULK_CHUNK;
        if (nd_socket_write(sock, chunk, BULK_CHUNK, NULL, NULL) <= 0)
            return; /* 'drain' brings us back */
    }
    nd_socket_end(sock, NULL, 0);
}

static void bulk_start(bulk_t *b, uint64_t total)
{
    b->loop = th_loop_new();
    b->total = total;
    b->sink_srv = nd_server_new(b->loop, NULL, sink_connection, b);
    b->front = nd_server_new(b->loop, NULL, front_connection, b);
    ck_assert_int_eq(nd_server_listen(b->sink_srv, 0, "127.0.0.1", 0), 0);
    ck_assert_int_eq(nd_server_listen(b->front, 0, "127.0.0.1", 0), 0);
    /* Both bind at once: the address is known before 'listening'. */
    nd_address_t a;
    ck_assert_int_eq(nd_server_address(b->front, &a), 0);
    nd_connect_options_t o = {.port = a.port, .host = "127.0.0.1"};
    b->writer = nd_connect(b->loop, &o, writer_more, b);
    ck_assert_ptr_nonnull(b->writer);
    nd_socket_on(b->writer, ND_EV_DRAIN, writer_more, b);
}

static uint64_t spliced(nd_loop_t *loop)
{
    nd_loop_stats_t st;
    nd_loop_stats(loop, &st);
    return st.bytes_spliced;
}

/* 16 MiB through a pipe: every byte arrives in order, and most of them never came up to
 * user memory. */
START_TEST(test_bulk_pipe_splices_in_order)
{
    bulk_t b = {0};
    bulk_start(&b, 16u << 20);
    th_run(b.loop, 30000);
    ck_assert_msg(b.bad_at == 0, "wrong byte at offset %llu", (unsigned long long)b.bad_at - 1);
    ck_assert_uint_eq(b.got, b.total);
    ck_assert_int_eq(b.sink_ended, 1);
    uint64_t sp = spliced(b.loop);
    ck_assert_msg(sp >= b.total / 2, "only %llu of %llu bytes spliced", (unsigned long long)sp,
                  (unsigned long long)b.total);
    th_finish(b.loop);
}
END_TEST

/* A 'data' listener added in the middle of a spliced stream sees every byte read from then
 * on: splicing stops for a source somebody listens to. */
START_TEST(test_data_listener_stops_splicing)
{
    bulk_t b = {0};
    b.listen_after = 2u << 20;
    bulk_start(&b, 12u << 20);
    th_run(b.loop, 30000);
    ck_assert_msg(b.bad_at == 0, "wrong byte at offset %llu", (unsigned long long)b.bad_at - 1);
    ck_assert_uint_eq(b.got, b.total);
    ck_assert_msg(b.read_at_listen > 0, "the listener was never added");
    ck_assert_uint_eq(b.listened, b.total - b.read_at_listen);
    ck_assert_uint_gt(spliced(b.loop), 0);
    th_finish(b.loop);
}
END_TEST

/* The mark is written into the uplink while bytes the front spliced wait in its queue: it
 * goes out after them, at the offset bytesWritten gave when it was written. */
static void mark_poll(void *arg)
{
    bulk_t *b = arg;
    if (b->uplink && nd_socket_buffer_size(b->uplink) > 0 && nd_socket_is_paused(b->front_sock) &&
        spliced(b->loop) > 0) {
        if (b->export_pair && !b->exported) {
            /* The record carries bytes, not the kernel pipe: the spliced ones go back in
             * front of the output buffer, where they were in the queue's order. */
            size_t queued = nd_socket_buffer_size(b->uplink);
            uint64_t written = nd_socket_bytes_written(b->uplink);
            nd_export_t ex;
            int rc = nd_socket_export(b->front_sock, &ex);
            if (rc == -EBUSY) {
                th_timer(b->loop, 10, mark_poll, b);
                return;
            }
            ck_assert_int_eq(rc, 0);
            ck_assert_int_eq(ex.nfds, 2);
            ck_assert_uint_eq(nd_socket_buffer_size(b->uplink), queued);
            ck_assert_uint_eq(nd_socket_bytes_written(b->uplink), written);
            /* Taken back, it flushes at once what the kernel takes now (the sink is paused,
             * its buffers may still have room): less may stay queued, nothing is lost, and
             * the sink's check finds every byte in order. */
            nd_socket_export_abort(&ex);
            ck_assert_uint_le(nd_socket_buffer_size(b->uplink), queued);
            ck_assert_uint_eq(nd_socket_bytes_written(b->uplink), written);
            b->exported = 1;
        }
        b->mark_at = nd_socket_bytes_written(b->uplink);
        b->mark_written = 1;
        ck_assert_int_ge(nd_socket_write(b->uplink, MARK, 4, NULL, NULL), 0);
        nd_socket_resume(b->sink);
        return;
    }
    ck_assert_msg(++b->polls < 1000, "the uplink never queued spliced bytes");
    th_timer(b->loop, 10, mark_poll, b);
}

/* A mark written while the uplink holds spliced bytes (the sink starts paused) arrives
 * after every one of them; with export_pair, front and uplink are a pair exported at that
 * moment and taken back (abort) first. */
static void mark_behind_spliced_bytes(int export_pair)
{
    bulk_t b = {0};
    b.mark_at = UINT64_MAX;
    b.export_pair = export_pair;
    bulk_start(&b, 64u << 20); /* more than loopback buffers hold */
    th_timer(b.loop, 10, mark_poll, &b);
    th_run(b.loop, 30000);
    ck_assert_int_eq(b.exported, export_pair);
    ck_assert_int_eq(b.mark_written, 1);
    ck_assert_msg(b.bad_at == 0, "wrong byte at offset %llu (mark at %llu)",
                  (unsigned long long)b.bad_at - 1, (unsigned long long)b.mark_at);
    ck_assert_uint_eq(b.got, b.total + 4);
    th_finish(b.loop);
}

START_TEST(test_write_queues_behind_spliced_bytes)
{
    mark_behind_spliced_bytes(0);
}
END_TEST

/* Exported while spliced bytes wait in the uplink's queue, and taken back: every byte
 * still arrives in order, the mark after them. */
START_TEST(test_export_abort_keeps_spliced_bytes_in_order)
{
    mark_behind_spliced_bytes(1);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* Memory of an idle connection                                                         */
/* ------------------------------------------------------------------------------------ */

#define IDLE_WARM 16
#define IDLE_N 256

typedef struct idle {
    int accepted;
    nd_socket_t *socks[IDLE_WARM + IDLE_N];
} idle_t;

static void idle_end(void *sock, const nd_event_t *ev, void *arg)
{
    nd_socket_end(sock, NULL, 0);
}

static void idle_close(void *sock, const nd_event_t *ev, void *arg) {}

/* What an echo server attaches (netd's own echo: a pipe to itself, 'end' and 'close'). */
static void idle_connection(void *server, const nd_event_t *ev, void *arg)
{
    idle_t *t = arg;
    nd_socket_pipe(ev->socket, ev->socket, 1);
    nd_socket_on(ev->socket, ND_EV_END, idle_end, t);
    nd_socket_on(ev->socket, ND_EV_CLOSE, idle_close, t);
    t->socks[t->accepted++] = ev->socket;
}

static void run_until_accepted(nd_loop_t *loop, idle_t *t, int n)
{
    for (int i = 0; t->accepted < n; i++) {
        ck_assert_msg(i < 100000, "only %d of %d connections accepted", t->accepted, n);
        nd_loop_run_once(loop, 0);
    }
}

/* An accepted echo connection that says nothing costs its socket and two listeners: no
 * buffers, no timer, no write event, no text addresses (1.7 KiB of heap before). */
START_TEST(test_idle_socket_heap)
{
    idle_t t = {0};
    int fds[IDLE_WARM + IDLE_N];
    nd_loop_t *loop = th_loop_new();
    nd_server_t *s = nd_server_new(loop, NULL, idle_connection, &t);
    ck_assert_int_eq(nd_server_listen(s, 0, "127.0.0.1", 0), 0);
    nd_address_t a;
    ck_assert_int_eq(nd_server_address(s, &a), 0);
    for (int i = 0; i < IDLE_WARM; i++)
        fds[i] = th_raw_connect(a.port);
    run_until_accepted(loop, &t, IDLE_WARM);
    struct mallinfo2 before = mallinfo2();
    for (int i = IDLE_WARM; i < IDLE_WARM + IDLE_N; i++)
        fds[i] = th_raw_connect(a.port);
    run_until_accepted(loop, &t, IDLE_WARM + IDLE_N);
    struct mallinfo2 after = mallinfo2();
    long per = ((long)after.uordblks - (long)before.uordblks) / IDLE_N;
#if defined(ND_ASAN) || defined(ND_TSAN)
    /* A sanitizer's allocator does not show in mallinfo2: nothing to measure here. */
    (void)per;
#else
    printf("fastpath: %ld bytes of heap per idle echo connection\n", per);
    ck_assert_msg(per > 0 && per <= 640, "%ld bytes of heap per idle connection", per);
#endif
    for (int i = 0; i < IDLE_WARM + IDLE_N; i++)
        close(fds[i]);
    nd_server_close(s, NULL, NULL);
    th_run(loop, 10000);
    th_finish(loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* Groups: the acceptor and close()                                                     */
/* ------------------------------------------------------------------------------------ */

static struct {
    atomic_int served;
    int listening, closed;
} QC;

static void qc_connection(void *ws, const nd_event_t *ev, void *arg)
{
    atomic_fetch_add(&QC.served, 1);
    nd_socket_destroy(ev->socket);
}

static void qc_init(nd_server_t *ws, int index, void *arg)
{
    nd_server_on(ws, ND_EV_CONNECTION, qc_connection, NULL);
}

static void qc_listening(void *server, const nd_event_t *ev, void *arg)
{
    QC.listening = 1;
}

static void qc_close(void *server, const nd_event_t *ev, void *arg)
{
    QC.closed = 1;
}

static void run_owner_until(nd_loop_t *loop, int *flag, const char *what)
{
    for (int i = 0; !*flag; i++) {
        ck_assert_msg(i < 100000, "no %s", what);
        nd_loop_run_once(loop, 0);
    }
}

/* worker_accepts: close() stops the first worker's accepting at once, as it stops an owner
 * that accepts: a connection that arrives afterwards stays queued on the socket for the
 * other process (here, the test) that holds it, and the socket still listens for it. */
START_TEST(test_close_stops_the_acceptor)
{
    nd_loop_t *owner = th_loop_new();
    nd_loop_t *w[2];
    nd_thread_t *t[2];
    for (int i = 0; i < 2; i++) {
        w[i] = nd_loop_new();
        ck_assert_ptr_nonnull(w[i]);
        t[i] = nd_thread_start(w[i]);
        ck_assert_ptr_nonnull(t[i]);
    }
    nd_balance_t bal = _i == 0 ? ND_BALANCE_LEASTCONN : ND_BALANCE_ROUNDROBIN;
    nd_server_options_t opts = {.worker_accepts = 1};
    nd_server_t *g = nd_server_new_group(owner, &opts, w, 2, bal, qc_init, NULL);
    ck_assert_ptr_nonnull(g);
    memset(&QC, 0, sizeof(QC));
    int port;
    int lfd = th_raw_listen(&port);
    int mine = dup(lfd); /* the group takes lfd; this test keeps the socket too */
    ck_assert_int_ge(mine, 0);
    nd_server_on(g, ND_EV_LISTENING, qc_listening, NULL);
    ck_assert_int_eq(nd_server_listen_fd(g, lfd, 0), 0);
    run_owner_until(owner, &QC.listening, "'listening'");
    int a = th_raw_connect(port);
    for (unsigned i = 0; atomic_load(&QC.served) < 1; i++) {
        ck_assert_msg(i < th_scale(10000), "the first client was not served");
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    ck_assert_int_eq(nd_server_close(g, qc_close, NULL), 0);
    int b = th_raw_connect(port); /* queued on the socket: nobody here may take it */
    int taken = accept(mine, NULL, NULL);
    ck_assert_msg(taken >= 0, "the socket no longer listens: %s", strerror(errno));
    run_owner_until(owner, &QC.closed, "'close'");
    ck_assert_int_eq(atomic_load(&QC.served), 1);
    char c;
    ck_assert_int_eq(read(a, &c, 1), 0); /* served, then ended by the worker */
    close(a);
    close(b);
    close(taken);
    close(mine);
    for (int i = 0; i < 2; i++) {
        nd_thread_stop(t[i]);
        ck_assert_int_eq(nd_thread_join(t[i]), 0);
    }
    th_finish(owner);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* Mailboxes of busy loops                                                              */
/* ------------------------------------------------------------------------------------ */

#define BUSY_N 20000

static struct {
    atomic_int running, release, ran;
} BZ;

static void bz_count(nd_loop_t *loop, void *arg)
{
    atomic_fetch_add(&BZ.ran, 1);
    /* Now and then the loop stays busy a little, so posts land while it works. */
    if ((atomic_load(&BZ.ran) & 255) == 0)
        for (volatile int i = 0; i < 20000; i++)
            ;
}

static void bz_hold(nd_loop_t *loop, void *arg)
{
    atomic_store(&BZ.running, 1);
    while (!atomic_load(&BZ.release))
        ;
}

static void wait_for(atomic_int *v, int want, const char *what)
{
    struct timespec ts = {0, 100000};
    for (unsigned i = 0; atomic_load(v) < want; i++) {
        ck_assert_msg(i < th_scale(10000) * 10, "%s: %d of %d", what, atomic_load(v), want);
        nanosleep(&ts, NULL);
    }
}

/* A loop that is busy does not need an eventfd write to notice a post: it looks at its
 * mailbox before it waits again. Nothing posted meanwhile may be stranded. */
START_TEST(test_busy_loop_runs_posts)
{
    memset(&BZ, 0, sizeof(BZ));
    nd_loop_t *w = nd_loop_new();
    ck_assert_ptr_nonnull(w);
    nd_thread_t *t = nd_thread_start(w);
    ck_assert_ptr_nonnull(t);
    /* Posted while a message holds the loop: no wakeup is written for it. */
    ck_assert_int_eq(nd_loop_post(w, bz_hold, NULL), 0);
    wait_for(&BZ.running, 1, "the holding message");
    ck_assert_int_eq(nd_loop_post(w, bz_count, NULL), 0);
    atomic_store(&BZ.release, 1);
    wait_for(&BZ.ran, 1, "posted while busy");
    /* Many posts against a loop going in and out of busy wakes. */
    for (int i = 1; i < BUSY_N; i++) {
        ck_assert_int_eq(nd_loop_post(w, bz_count, NULL), 0);
        if (i % 97 == 0) {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        }
    }
    wait_for(&BZ.ran, BUSY_N, "posts run");
    nd_thread_stop(t);
    ck_assert_int_eq(nd_thread_join(t), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fastpath");
    TCase *tc = tcase_create("splice");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_bulk_pipe_splices_in_order);
    tcase_add_test(tc, test_data_listener_stops_splicing);
    tcase_add_test(tc, test_write_queues_behind_spliced_bytes);
    tcase_add_test(tc, test_export_abort_keeps_spliced_bytes_in_order);
    suite_add_tcase(s, tc);
    tc = tcase_create("memory");
    tcase_add_test(tc, test_idle_socket_heap);
    suite_add_tcase(s, tc);
    tc = tcase_create("groups");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, test_close_stops_the_acceptor, 0, 2);
    suite_add_tcase(s, tc);
    tc = tcase_create("mailbox");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_busy_loop_runs_posts);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
