/* SPDX-License-Identifier: MIT */
/*
 * Sockets as streams over real loopback connections: write() return values, 'drain',
 * end(), string encodings, pause/resume, idle timeouts and pipe(), after Node v0.10.
 */
#include "config.h"

#include "harness.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define KIB 1024u
#define MIB (1024u * 1024u)

/* ------------------------------------------------------------------------------------ */
/* Small utilities                                                                      */
/* ------------------------------------------------------------------------------------ */

static void assert_buf_eq(const th_buf_t *b, const void *want, size_t n)
{
    ck_assert_uint_eq(b->len, n);
    ck_assert_msg(n == 0 || memcmp(b->p, want, n) == 0, "received bytes differ");
}

/* A byte stream with no short period, so lost, repeated or reordered chunks show up. */
static unsigned char pat(uint64_t i)
{
    return (unsigned char)(((i + 1) * 0x9E3779B97F4A7C15ull) >> 56);
}

static void pat_fill(unsigned char *dst, uint64_t off, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = pat(off + i);
}

/* The write() API does not take ownership, so the chunk is freed as soon as it returns:
 * a library that kept the pointer would read freed memory under ASan. */
static int write_pat(nd_socket_t *s, uint64_t off, size_t n, nd_write_cb cb, void *arg)
{
    unsigned char *tmp = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(tmp);
    pat_fill(tmp, off, n);
    int r = nd_socket_write(s, tmp, n, cb, arg);
    free(tmp);
    return r;
}

static double clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int str_starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int str_ends(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Fixed, small kernel buffers. Autotuning could otherwise swallow a whole transfer, and
 * a writer with a large send buffer is only woken once a third of it is free, so its
 * progress would come in bursts far apart. */
static void small_buffers(nd_socket_t *s)
{
    int fd = nd_socket_fd(s);
    int sz = 64 * 1024;
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
    ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)), 0);
}

/* 1 when s holds only whole, well-formed UTF-8 sequences. */
static int utf8_whole(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        if (c < 0x80)
            k = 1;
        else if ((c & 0xE0) == 0xC0)
            k = 2;
        else if ((c & 0xF0) == 0xE0)
            k = 3;
        else if ((c & 0xF8) == 0xF0)
            k = 4;
        else
            return 0;
        if (i + k > n)
            return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
        i += k;
    }
    return 1;
}

static int b64_value(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Strict standard-alphabet decoder for checking what setEncoding("base64") produced.
 * Returns the decoded length, or (size_t)-1 on a character outside the alphabet. */
static size_t b64_decode(const unsigned char *s, size_t n, unsigned char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '=')
            break;
        int v = b64_value(s[i]);
        if (v < 0)
            return (size_t)-1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return o;
}

/* ------------------------------------------------------------------------------------ */
/* A sink records what one socket saw                                                   */
/* ------------------------------------------------------------------------------------ */

/* Everything but 'lookup' (and 'data' unless with_data). */
static void sink_attach(nd_socket_t *s, th_sink_t *k, int with_data)
{
    unsigned mask = TH_SINK_ALL & ~TH_EVBIT(ND_EV_LOOKUP);
    th_sink_attach(s, k, with_data ? mask : mask & ~TH_EVBIT(ND_EV_DATA));
}

/* ------------------------------------------------------------------------------------ */
/* A reader that checks the pattern and can read slowly                                 */
/* ------------------------------------------------------------------------------------ */

typedef struct reader {
    nd_loop_t *loop;
    nd_socket_t *sock; /* NULL once closed */
    uint64_t got;
    uint64_t hash;
    int bad; /* 'data' events whose bytes differ from the pattern */
    int ndata, nend, nclose, nerror;
    int paused_by_us;
    int data_while_paused;
    unsigned pause_ms; /* pause this long after every 'data' */
    uint64_t rate;     /* or: read at most about this many bytes per second */
    uint64_t debt;
    th_timer_t *pending;
} reader_t;

static void reader_resume(void *arg)
{
    reader_t *r = arg;
    r->pending = NULL;
    r->paused_by_us = 0;
    if (r->sock)
        nd_socket_resume(r->sock);
}

static void reader_pause_for(reader_t *r, unsigned ms)
{
    r->paused_by_us = 1;
    nd_socket_pause(r->sock);
    r->pending = th_timer(r->loop, ms, reader_resume, r);
}

static void reader_ev(void *self, const nd_event_t *ev, void *arg)
{
    reader_t *r = arg;

    switch (ev->type) {
    case ND_EV_DATA: {
        const unsigned char *d = (const unsigned char *)ev->data;
        if (r->paused_by_us)
            r->data_while_paused++;
        for (size_t i = 0; i < ev->len; i++) {
            if (d[i] != pat(r->got + i)) {
                r->bad++;
                break;
            }
        }
        r->hash = th_fnv1a(r->hash, d, ev->len);
        r->got += ev->len;
        r->ndata++;
        if (r->pending)
            break;
        if (r->pause_ms) {
            reader_pause_for(r, r->pause_ms);
        } else if (r->rate) {
            r->debt += ev->len;
            if (r->debt >= 64 * KIB) {
                unsigned ms = (unsigned)(r->debt * 1000 / r->rate);
                r->debt = 0;
                reader_pause_for(r, ms ? ms : 1);
            }
        }
        break;
    }
    case ND_EV_END:
        r->nend++;
        break;
    case ND_EV_ERROR:
        r->nerror++;
        break;
    case ND_EV_CLOSE:
        r->nclose++;
        if (r->pending) {
            th_timer_cancel(r->pending);
            r->pending = NULL;
        }
        r->sock = NULL;
        break;
    default:
        break;
    }
}

static void reader_attach(reader_t *r, nd_loop_t *loop, nd_socket_t *s)
{
    r->loop = loop;
    r->sock = s;
    r->hash = TH_FNV0;
    ck_assert_int_eq(nd_socket_on(s, ND_EV_DATA, reader_ev, r), 0);
    ck_assert_int_eq(nd_socket_on(s, ND_EV_END, reader_ev, r), 0);
    ck_assert_int_eq(nd_socket_on(s, ND_EV_ERROR, reader_ev, r), 0);
    ck_assert_int_eq(nd_socket_on(s, ND_EV_CLOSE, reader_ev, r), 0);
}

/* ------------------------------------------------------------------------------------ */
/* The common context of the simpler tests                                              */
/* ------------------------------------------------------------------------------------ */

typedef struct ctx {
    th_pair_t p;
    th_sink_t cs; /* the client */
    th_sink_t ss; /* the server's side */
    int r[16];
    size_t bs[16];
    uint64_t u[4];
    int flag, flag2;
    int in_call; /* set around a library call, to catch events emitted inside it */
    int sync_events;
    int nwcb, wcb_err, ntimeout, ncb, ndrain;
    double t[4];
    th_timer_t *timer;
    char *text;
} ctx_t;

static void ctx_free(ctx_t *c)
{
    th_sink_free(&c->cs);
    th_sink_free(&c->ss);
    free(c->text);
}

static void hook_client_sink(th_pair_t *p)
{
    ctx_t *c = p->arg;
    sink_attach(p->client, &c->cs, 1);
}

static void hook_server_sink(th_pair_t *p)
{
    ctx_t *c = p->arg;
    sink_attach(p->conn, &c->ss, 1);
}

static void log_wcb(nd_socket_t *s, int err, void *arg)
{
    ctx_t *c = arg;
    c->nwcb++;
    c->wcb_err = err;
    if (c->in_call)
        c->sync_events++;
    th_log(&c->cs.log, "wcb:%s", err ? nd_err_name(err) : "0");
}

static void note_sync_error(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    if (c->in_call)
        c->sync_events++;
}

/* ------------------------------------------------------------------------------------ */
/* E. Writes                                                                            */
/* ------------------------------------------------------------------------------------ */

static void t57_connect(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    c->r[1] = nd_socket_write(self, "after", 5, NULL, NULL);
    c->r[2] = nd_socket_end(self, NULL, 0);
}

static void t57_connecting(th_pair_t *p)
{
    ctx_t *c = p->arg;
    sink_attach(p->client, &c->cs, 1);
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_CONNECT, t57_connect, c), 0);
    c->flag = nd_socket_connecting(p->client);
    c->r[0] = nd_socket_write(p->client, "before", 6, NULL, NULL);
}

/* case 57 */
START_TEST(write_before_connect_is_flushed_in_order)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = t57_connecting;
    c.p.accepted = hook_server_sink;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.flag, 1);
    ck_assert_int_eq(c.r[0], 1); /* queued while connecting, below the 16 KiB limit */
    ck_assert_int_ge(c.r[1], 0);
    ck_assert_int_eq(c.r[2], 0);
    ck_assert_str_eq(TH_BUF_STR(c.ss.data), "beforeafter");
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,finish,end,close");
    ck_assert_str_eq(th_log_str(&c.ss.log), "end,finish,close");
    ck_assert_int_eq(c.cs.had_error, 0);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

static void t58_wcb(nd_socket_t *s, int err, void *arg)
{
    log_wcb(s, err, arg);
    nd_socket_end(s, NULL, 0);
}

static void t58_connecting(th_pair_t *p)
{
    ctx_t *c = p->arg;
    sink_attach(p->client, &c->cs, 1);
    c->in_call = 1;
    c->r[0] = nd_socket_write(p->client, "abc", 3, t58_wcb, c);
    c->in_call = 0;
}

/* case 58, issue 12.10. Node's test-net-connect-buffer sees false only because it makes
 * its socket with highWaterMark 0; with the default (16 KiB) a small write while
 * connecting returns true, so no 'drain' follows. The callback runs after the connect. */
START_TEST(write_while_connecting_returns_1_and_calls_back_after_connect)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = t58_connecting;
    c.p.accepted = hook_server_sink;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.r[0], 1);
    ck_assert_int_eq(c.sync_events, 0);
    ck_assert_int_eq(c.nwcb, 1);
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,wcb:0,finish,end,close");
    ck_assert_str_eq(TH_BUF_STR(c.ss.data), "abc");
    ck_assert_int_eq(c.ss.nend, 1);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

static void t58b_connecting(th_pair_t *p)
{
    ctx_t *c = p->arg;
    sink_attach(p->client, &c->cs, 1);
    c->r[0] = nd_socket_end(p->client, "bye", 3);
    c->flag = nd_socket_writable(p->client);
}

/* case 58 */
START_TEST(end_with_data_while_connecting)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = t58b_connecting;
    c.p.accepted = hook_server_sink;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.r[0], 0);
    ck_assert_int_eq(c.flag, 0); /* not writable from the moment end() returns */
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,finish,end,close");
    ck_assert_str_eq(TH_BUF_STR(c.ss.data), "bye");
    ck_assert_str_eq(th_log_str(&c.ss.log), "end,finish,close");
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

/* Throttle: the server side writes into a paused client until write() says 0. */
typedef struct thr {
    th_pair_t p;
    reader_t rd;
    th_sink_t ss;
    uint64_t written;
    int zero_seen, nonzero_after_zero, bs_over;
    int ndrain, early_drain;
    size_t bs_at_zero, bs_at_drain;
    th_timer_t *resume;
} thr_t;

static void thr_resume(void *arg)
{
    thr_t *t = arg;
    t->resume = NULL;
    t->rd.paused_by_us = 0;
    if (t->rd.sock)
        nd_socket_resume(t->rd.sock);
}

static void thr_drain(void *self, const nd_event_t *ev, void *arg)
{
    thr_t *t = arg;
    t->ndrain++;
    if (!t->zero_seen)
        t->early_drain++;
    t->bs_at_drain = nd_socket_buffer_size(self);
    if (t->ndrain == 1)
        ck_assert_int_eq(nd_socket_end(self, NULL, 0), 0);
}

static void thr_connecting(th_pair_t *p)
{
    thr_t *t = p->arg;
    reader_attach(&t->rd, p->loop, p->client);
    nd_socket_pause(p->client);
    t->rd.paused_by_us = 1;
}

static void thr_accepted(th_pair_t *p)
{
    thr_t *t = p->arg;
    sink_attach(p->conn, &t->ss, 0);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_DRAIN, thr_drain, t), 0);
}

static void thr_write_one(thr_t *t, nd_socket_t *s, size_t chunk, int *r)
{
    *r = write_pat(s, t->written, chunk, NULL, NULL);
    ck_assert_int_ge(*r, 0);
    t->written += chunk;
    /* bufferSize counts bytes waiting in user memory: never more than was accepted. */
    if (nd_socket_buffer_size(s) > t->written)
        t->bs_over++;
}

static void thr_ready(th_pair_t *p)
{
    thr_t *t = p->arg;
    const size_t chunk = 64 * KIB;
    int r;

    while (!t->zero_seen && t->written < 1024ull * MIB) {
        thr_write_one(t, p->conn, chunk, &r);
        if (r == 0) {
            t->zero_seen = 1;
            t->bs_at_zero = nd_socket_buffer_size(p->conn);
        }
    }
    /* Writes after a 0 are still accepted; none may be lost. */
    for (int i = 0; i < 16; i++) {
        thr_write_one(t, p->conn, chunk, &r);
        if (r != 0)
            t->nonzero_after_zero++;
    }
    t->resume = th_timer(p->loop, 100, thr_resume, t);
}

/* case 59 */
START_TEST(throttle_write_returns_0_then_drain)
{
    thr_t t = {0};
    nd_loop_t *loop = th_loop_new();

    t.p.connecting = thr_connecting;
    t.p.accepted = thr_accepted;
    t.p.ready = thr_ready;
    th_pair_open(&t.p, loop, &t);
    th_run(loop, 20000);

    ck_assert_int_eq(t.zero_seen, 1);
    ck_assert_uint_gt(t.bs_at_zero, 0);
    ck_assert_int_eq(t.nonzero_after_zero, 0);
    ck_assert_int_eq(t.bs_over, 0);
    ck_assert_int_eq(t.ndrain, 1);
    ck_assert_int_eq(t.early_drain, 0);
    ck_assert_uint_eq(t.bs_at_drain, 0);
    ck_assert_uint_eq(t.rd.got, t.written);
    ck_assert_int_eq(t.rd.bad, 0);
    ck_assert_int_eq(t.rd.data_while_paused, 0);
    ck_assert_int_eq(t.rd.nend, 1);
    ck_assert_int_eq(t.rd.nclose, 1);
    ck_assert_str_eq(th_log_str(&t.ss.log), "finish,end,close");
    th_sink_free(&t.ss);
    th_finish(loop);
}
END_TEST

typedef struct slow {
    th_pair_t p;
    reader_t rd;
    th_sink_t ss;
    int nwcb, wcb_bad, wcb_order_bad;
} slow_t;

static void slow_wcb(nd_socket_t *s, int err, void *arg)
{
    slow_t *w = arg;
    if (err)
        w->wcb_bad++;
    w->nwcb++;
}

static void slow_connecting(th_pair_t *p)
{
    slow_t *w = p->arg;
    reader_attach(&w->rd, p->loop, p->client);
    w->rd.pause_ms = 20;
}

static void slow_accepted(th_pair_t *p)
{
    slow_t *w = p->arg;
    sink_attach(p->conn, &w->ss, 0);
}

static void slow_ready(th_pair_t *p)
{
    slow_t *w = p->arg;
    for (int i = 0; i < 10; i++)
        ck_assert_int_ge(write_pat(p->conn, (uint64_t)i * 200000, 200000, slow_wcb, w), 0);
    ck_assert_int_eq(nd_socket_end(p->conn, NULL, 0), 0);
}

/* case 60 */
START_TEST(every_write_callback_runs_against_a_slow_reader)
{
    slow_t w = {0};
    nd_loop_t *loop = th_loop_new();

    w.p.connecting = slow_connecting;
    w.p.accepted = slow_accepted;
    w.p.ready = slow_ready;
    th_pair_open(&w.p, loop, &w);
    th_run(loop, 45000);

    ck_assert_int_eq(w.nwcb, 10);
    ck_assert_int_eq(w.wcb_bad, 0);
    ck_assert_uint_eq(w.rd.got, 2000000);
    ck_assert_int_eq(w.rd.bad, 0);
    ck_assert_int_eq(w.rd.data_while_paused, 0);
    ck_assert_int_eq(w.rd.nend, 1);
    ck_assert_int_eq(w.rd.nclose, 1);
    ck_assert_int_eq(w.ss.nerror, 0);
    ck_assert_int_eq(w.ss.nclose, 1);
    th_sink_free(&w.ss);
    th_finish(loop);
}
END_TEST

static void t61_end(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    c->in_call = 1;
    c->r[0] = nd_socket_write(self, "x", 1, log_wcb, c);
    c->in_call = 0;
}

static void t61_connecting(th_pair_t *p)
{
    ctx_t *c = p->arg;
    sink_attach(p->client, &c->cs, 1);
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_END, t61_end, c), 0);
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_ERROR, note_sync_error, c), 0);
}

static void t61_ready(th_pair_t *p)
{
    ck_assert_int_eq(nd_socket_end(p->conn, NULL, 0), 0);
}

/* case 61: v0.10 emitted this 'error' synchronously; the header says never inside write().
 * Issue 12.13: v0.10's message, and the socket is not failed by it ('close' had_error 0). */
START_TEST(write_inside_end_without_half_open_gives_epipe)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = t61_connecting;
    c.p.accepted = hook_server_sink;
    c.p.ready = t61_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_msg(c.r[0] == -EPIPE || c.r[0] == 0, "write returned %d", c.r[0]);
    ck_assert_int_eq(c.sync_events, 0);
    ck_assert_int_eq(c.nwcb, 1);
    ck_assert_int_eq(c.wcb_err, -EPIPE);
    ck_assert_int_eq(c.cs.nerror, 1);
    ck_assert_str_eq(c.cs.error_name, "EPIPE");
    ck_assert_int_eq(c.cs.error_code, -EPIPE);
    ck_assert_str_eq(c.cs.error_message, "This socket has been ended by the other party");
    ck_assert_int_eq(c.cs.nclose, 1);
    ck_assert_int_eq(c.cs.had_error, 0);
    ck_assert_msg(str_starts(th_log_str(&c.cs.log), "connect,end,"), "client log: %s",
                  th_log_str(&c.cs.log));
    ck_assert_msg(str_ends(th_log_str(&c.cs.log), ",close"), "client log: %s",
                  th_log_str(&c.cs.log));
    ck_assert_uint_eq(c.ss.data.len, 0);
    ck_assert_int_eq(c.ss.nclose, 1);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

typedef struct gone {
    th_pair_t p;
    th_sink_t ss;
    int nwrites, nwcb, nwcb_err;
    th_timer_t *t;
} gone_t;

static void gone_wcb(nd_socket_t *s, int err, void *arg)
{
    gone_t *g = arg;
    g->nwcb++;
    if (err)
        g->nwcb_err++;
}

static void gone_tick(void *arg)
{
    gone_t *g = arg;
    g->t = NULL;
    if (!g->p.conn)
        return;
    if (g->nwrites == 200) {
        /* Never got an error: fail on the counts, but let the loop end. */
        nd_socket_destroy(g->p.conn);
        return;
    }
    g->nwrites++;
    nd_socket_write(g->p.conn, "x", 1, gone_wcb, g);
    g->t = th_timer(g->p.loop, 5, gone_tick, g);
}

static void gone_stop(void *self, const nd_event_t *ev, void *arg)
{
    gone_t *g = arg;
    if (g->t) {
        th_timer_cancel(g->t);
        g->t = NULL;
    }
}

static void gone_end(void *self, const nd_event_t *ev, void *arg)
{
    gone_t *g = arg;
    g->t = th_timer(g->p.loop, 20, gone_tick, g);
}

static void gone_accepted(th_pair_t *p)
{
    gone_t *g = p->arg;
    sink_attach(p->conn, &g->ss, 1);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_END, gone_end, g), 0);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_ERROR, gone_stop, g), 0);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_CLOSE, gone_stop, g), 0);
}

static void gone_ready(th_pair_t *p)
{
    nd_socket_destroy(p->client);
}

/* case 62: the server side is half-open so it stays writable after the client left. */
START_TEST(write_after_the_peer_is_gone_errors_and_still_calls_back)
{
    gone_t g = {0};
    nd_loop_t *loop = th_loop_new();

    g.p.server_half_open = 1;
    g.p.accepted = gone_accepted;
    g.p.ready = gone_ready;
    th_pair_open(&g.p, loop, &g);
    th_run(loop, 10000);

    ck_assert_int_ge(g.nwrites, 1);
    ck_assert_int_eq(g.ss.nerror, 1);
    ck_assert_msg(strcmp(g.ss.error_name, "EPIPE") == 0 ||
                      strcmp(g.ss.error_name, "ECONNRESET") == 0,
                  "error %s", g.ss.error_name);
    ck_assert_int_eq(g.nwcb, g.nwrites);
    ck_assert_int_ge(g.nwcb_err, 1);
    ck_assert_int_eq(g.ss.nclose, 1);
    ck_assert_int_eq(g.ss.had_error, 1);
    ck_assert_msg(str_ends(th_log_str(&g.ss.log), ",close"), "server log: %s",
                  th_log_str(&g.ss.log));
    th_sink_free(&g.ss);
    th_finish(loop);
}
END_TEST

static void t63_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_ERROR, note_sync_error, c), 0);
    c->r[1] = nd_socket_end(p->client, NULL, 0);
    c->flag = nd_socket_writable(p->client);
    c->in_call = 1;
    c->r[0] = nd_socket_write(p->client, "x", 1, log_wcb, c);
    c->in_call = 0;
}

/* case 63 */
START_TEST(write_after_end_fails_with_ewriteafterend_later)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = t63_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.r[1], 0);
    ck_assert_int_eq(c.flag, 0);
    ck_assert_int_eq(c.r[0], ND_EWRITEAFTEREND);
    ck_assert_int_eq(c.sync_events, 0);
    ck_assert_int_eq(c.nwcb, 1);
    ck_assert_int_eq(c.wcb_err, ND_EWRITEAFTEREND);
    ck_assert_int_eq(c.cs.nerror, 1);
    ck_assert_str_eq(c.cs.error_name, "EWRITEAFTEREND");
    ck_assert_int_eq(c.cs.error_code, ND_EWRITEAFTEREND);
    ck_assert_int_eq(c.cs.nclose, 1);
    ck_assert_msg(str_ends(th_log_str(&c.cs.log), ",close"), "client log: %s",
                  th_log_str(&c.cs.log));
    ck_assert_uint_eq(c.ss.data.len, 0); /* the "x" never left */
    ck_assert_int_eq(c.ss.nend, 1);
    ck_assert_int_eq(c.ss.nclose, 1);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

static void t66_finish(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    c->bs[9] = nd_socket_buffer_size(self);
}

static void t66_connecting(th_pair_t *p)
{
    ctx_t *c = p->arg;
    sink_attach(p->client, &c->cs, 1);
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_FINISH, t66_finish, c), 0);
    for (int i = 0; i < 9; i++) {
        char ch = (char)('1' + i);
        c->r[i] = nd_socket_write(p->client, &ch, 1, NULL, NULL);
        c->bs[i] = nd_socket_buffer_size(p->client);
    }
    c->u[0] = nd_socket_bytes_written(p->client);
    c->bs[9] = 12345; /* 'finish' overwrites it */
    c->r[9] = nd_socket_end(p->client, NULL, 0);
}

/* case 66 */
START_TEST(buffer_size_counts_writes_queued_while_connecting)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = t66_connecting;
    c.p.accepted = hook_server_sink;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    for (int i = 0; i < 9; i++) {
        ck_assert_int_eq(c.r[i], 1); /* queued, below Node's 16 KiB limit */
        ck_assert_uint_eq(c.bs[i], (size_t)i + 1);
    }
    ck_assert_uint_eq(c.u[0], 9);
    ck_assert_int_eq(c.r[9], 0);
    ck_assert_int_eq(c.cs.nfinish, 1);
    ck_assert_uint_eq(c.bs[9], 0);
    ck_assert_str_eq(TH_BUF_STR(c.ss.data), "123456789");
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

static void t_zero_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    c->in_call = 1;
    c->r[0] = nd_socket_write(p->client, "", 0, log_wcb, c);
    c->in_call = 0;
    c->r[1] = nd_socket_write(p->client, "z", 1, NULL, NULL);
    c->r[2] = nd_socket_end(p->client, NULL, 0);
}

START_TEST(zero_length_write_is_allowed_and_calls_back)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = t_zero_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.r[0], 1); /* connected and nothing queued */
    ck_assert_int_eq(c.sync_events, 0);
    ck_assert_int_eq(c.nwcb, 1);
    ck_assert_int_eq(c.wcb_err, 0);
    ck_assert_int_ge(c.r[1], 0);
    ck_assert_int_eq(c.r[2], 0);
    ck_assert_str_eq(TH_BUF_STR(c.ss.data), "z");
    ck_assert_int_eq(c.cs.nerror, 0);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

typedef struct order order_t;

typedef struct order_arg {
    order_t *o;
    int i;
} order_arg_t;

struct order {
    ctx_t c;
    order_arg_t args[5];
};

static void order_wcb(nd_socket_t *s, int err, void *arg)
{
    order_arg_t *a = arg;
    th_log(&a->o->c.cs.log, "w%d:%s", a->i, err ? nd_err_name(err) : "0");
}

static void order_ready(th_pair_t *p)
{
    order_t *o = p->arg;
    for (int i = 0; i < 5; i++) {
        o->args[i].o = o;
        o->args[i].i = i;
        ck_assert_int_ge(
            write_pat(p->client, (uint64_t)i * 200 * KIB, 200 * KIB, order_wcb, &o->args[i]), 0);
    }
    ck_assert_int_eq(nd_socket_end(p->client, NULL, 0), 0);
}

static void order_client(th_pair_t *p)
{
    order_t *o = p->arg;
    sink_attach(p->client, &o->c.cs, 1);
}

static void order_server(th_pair_t *p)
{
    order_t *o = p->arg;
    sink_attach(p->conn, &o->c.ss, 1);
}

/* Write callbacks come in write order, and end() flushes every queued byte before the
 * FIN: 'finish' follows the last callback. */
START_TEST(write_callbacks_run_in_order_before_finish)
{
    order_t o = {0};
    nd_loop_t *loop = th_loop_new();
    unsigned char *want = malloc(1000 * KIB);

    ck_assert_ptr_nonnull(want);
    pat_fill(want, 0, 1000 * KIB);
    o.c.p.connecting = order_client;
    o.c.p.accepted = order_server;
    o.c.p.ready = order_ready;
    th_pair_open(&o.c.p, loop, &o);
    th_run(loop, 10000);

    ck_assert_str_eq(th_log_str(&o.c.cs.log), "connect,w0:0,w1:0,w2:0,w3:0,w4:0,finish,end,close");
    assert_buf_eq(&o.c.ss.data, want, 1000 * KIB);
    ck_assert_int_eq(o.c.ss.nend, 1);
    free(want);
    ctx_free(&o.c);
    th_finish(loop);
}
END_TEST

static void count_drain(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    c->ndrain++;
}

static void t_nodrain_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_DRAIN, count_drain, c), 0);
    for (int i = 0; i < 3; i++)
        c->r[i] = nd_socket_write(p->client, "0123456789", 10, NULL, NULL);
    ck_assert_int_eq(nd_socket_end(p->client, NULL, 0), 0);
}

START_TEST(no_drain_without_a_write_that_returned_0)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = t_nodrain_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(c.r[i], 1);
    ck_assert_int_eq(c.ndrain, 0);
    ck_assert_str_eq(TH_BUF_STR(c.ss.data), "012345678901234567890123456789");
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* E. Encodings                                                                         */
/* ------------------------------------------------------------------------------------ */

typedef struct enc {
    ctx_t c;
    const char *encoding; /* for setEncoding on the receiving side */
    int bad_chunks;       /* 'data' strings that break the encoding's chunking rule */
    int not_terminated;   /* 'data' strings without the NUL after them */
    int pad_seen;         /* base64: a chunk with '=' was already seen */
    size_t chars;
    const unsigned char *send; /* bytes the server side writes, or NULL */
    size_t nsend;
    size_t sent;
    th_timer_t *t;
} enc_t;

static void enc_check_string(enc_t *e, const nd_event_t *ev)
{
    if (ev->data[ev->len] != '\0')
        e->not_terminated++;
}

static void u8_check(void *self, const nd_event_t *ev, void *arg)
{
    enc_t *e = arg;
    enc_check_string(e, ev);
    if (!utf8_whole((const unsigned char *)ev->data, ev->len))
        e->bad_chunks++;
}

static void a_check(void *self, const nd_event_t *ev, void *arg)
{
    enc_t *e = arg;
    enc_check_string(e, ev);
    if (ev->len % 3 != 0) {
        e->bad_chunks++;
        return;
    }
    for (size_t i = 0; i < ev->len; i += 3) {
        if (memcmp(ev->data + i, "\xe3\x81\x82", 3) != 0) {
            e->bad_chunks++;
            return;
        }
    }
    e->chars += ev->len / 3;
}

static void u8large_accepted(th_pair_t *p)
{
    enc_t *e = p->arg;
    sink_attach(p->conn, &e->c.ss, 0);
    ck_assert_int_eq(nd_socket_set_encoding(p->conn, "utf8"), 0);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_DATA, a_check, e), 0);
}

static void u8large_ready(th_pair_t *p)
{
    enc_t *e = p->arg;
    e->c.r[0] = nd_socket_write_string(p->client, e->c.text, "utf8", NULL, NULL);
    e->c.u[0] = nd_socket_bytes_written(p->client);
    e->c.r[1] = nd_socket_end(p->client, NULL, 0);
}

/* case 67 */
START_TEST(utf8_large_string_arrives_as_whole_characters)
{
    enc_t e = {0};
    nd_loop_t *loop = th_loop_new();
    const size_t n = 40960;

    e.c.text = malloc(n * 3 + 1);
    ck_assert_ptr_nonnull(e.c.text);
    for (size_t i = 0; i < n; i++)
        memcpy(e.c.text + 3 * i, "\xe3\x81\x82", 3); /* あ */
    e.c.text[n * 3] = '\0';
    e.c.p.connecting = hook_client_sink;
    e.c.p.accepted = u8large_accepted;
    e.c.p.ready = u8large_ready;
    th_pair_open(&e.c.p, loop, &e);
    th_run(loop, 10000);

    ck_assert_int_ge(e.c.r[0], 0);
    ck_assert_uint_eq(e.c.u[0], n * 3);
    ck_assert_int_eq(e.c.r[1], 0);
    ck_assert_int_eq(e.bad_chunks, 0);
    ck_assert_int_eq(e.not_terminated, 0);
    ck_assert_uint_eq(e.chars, n);
    ck_assert_int_eq(e.c.ss.nend, 1);
    ctx_free(&e.c);
    th_finish(loop);
}
END_TEST

static void drip_tick(void *arg)
{
    enc_t *e = arg;
    e->t = NULL;
    if (!e->c.p.conn)
        return;
    ck_assert_int_ge(nd_socket_write(e->c.p.conn, e->send + e->sent, 1, NULL, NULL), 0);
    if (++e->sent < e->nsend)
        e->t = th_timer(e->c.p.loop, 10, drip_tick, e);
    else
        ck_assert_int_eq(nd_socket_end(e->c.p.conn, NULL, 0), 0);
}

static void drip_stop(void *self, const nd_event_t *ev, void *arg)
{
    enc_t *e = arg;
    if (e->t) {
        th_timer_cancel(e->t);
        e->t = NULL;
    }
}

static void drip_accepted(th_pair_t *p)
{
    enc_t *e = p->arg;
    sink_attach(p->conn, &e->c.ss, 1);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_CLOSE, drip_stop, e), 0);
}

static void drip_ready(th_pair_t *p)
{
    enc_t *e = p->arg;
    nd_socket_set_no_delay(p->conn, 1);
    drip_tick(e);
}

static void u8split_connecting(th_pair_t *p)
{
    enc_t *e = p->arg;
    ck_assert_int_eq(nd_socket_set_encoding(p->client, "utf8"), 0);
    sink_attach(p->client, &e->c.cs, 1);
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_DATA, u8_check, e), 0);
}

/* case 67: a multibyte sequence split across reads is joined again. Each byte goes out
 * alone, 10 ms apart, so the reader sees the pieces in separate reads. */
START_TEST(utf8_sequences_split_across_reads_are_joined)
{
    enc_t e = {0};
    nd_loop_t *loop = th_loop_new();
    static const char text[] = "a\xe3\x81\x82\xe2\x82\xac\xf0\x9f\x98\x80"; /* aあ€😀 */

    e.send = (const unsigned char *)text;
    e.nsend = sizeof(text) - 1;
    e.c.p.connecting = u8split_connecting;
    e.c.p.accepted = drip_accepted;
    e.c.p.ready = drip_ready;
    th_pair_open(&e.c.p, loop, &e);
    th_run(loop, 5000);

    ck_assert_uint_eq(e.sent, e.nsend);
    ck_assert_str_eq(TH_BUF_STR(e.c.cs.data), text);
    ck_assert_int_eq(e.bad_chunks, 0);
    ck_assert_int_eq(e.not_terminated, 0);
    ck_assert_int_eq(e.c.cs.nend, 1);
    ctx_free(&e.c);
    th_finish(loop);
}
END_TEST

static void echo_data(void *self, const nd_event_t *ev, void *arg)
{
    ck_assert_int_ge(nd_socket_write(self, ev->data, ev->len, NULL, NULL), 0);
}

static void latin1_connecting(th_pair_t *p)
{
    enc_t *e = p->arg;
    ck_assert_int_eq(nd_socket_set_encoding(p->client, "latin1"), 0);
    sink_attach(p->client, &e->c.cs, 1);
}

static void latin1_accepted(th_pair_t *p)
{
    enc_t *e = p->arg;
    sink_attach(p->conn, &e->c.ss, 1);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_DATA, echo_data, e), 0);
}

static void latin1_ready(th_pair_t *p)
{
    enc_t *e = p->arg;
    /* U+0000 cannot travel in a NUL-terminated string: it goes as a raw byte. */
    e->c.r[0] = nd_socket_write(p->client, "", 1, NULL, NULL);
    e->c.r[1] = nd_socket_write_string(p->client, e->c.text, "binary", NULL, NULL);
    e->c.r[2] = nd_socket_end(p->client, NULL, 0);
}

/* Appends code point cp (< 0x800) as UTF-8. */
static size_t put_utf8(unsigned char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    o[0] = (unsigned char)(0xC0 | (cp >> 6));
    o[1] = (unsigned char)(0x80 | (cp & 0x3F));
    return 2;
}

/* case 68 */
START_TEST(latin1_round_trips_all_256_byte_values)
{
    enc_t e = {0};
    nd_loop_t *loop = th_loop_new();
    unsigned char raw[256], want[512];
    size_t nwant = 0, ntext = 0;

    e.c.text = malloc(512);
    ck_assert_ptr_nonnull(e.c.text);
    for (unsigned i = 0; i < 256; i++) {
        raw[i] = (unsigned char)i;
        nwant += put_utf8(want + nwant, i);
        if (i > 0)
            ntext += put_utf8((unsigned char *)e.c.text + ntext, i);
    }
    e.c.text[ntext] = '\0';
    e.c.p.connecting = latin1_connecting;
    e.c.p.accepted = latin1_accepted;
    e.c.p.ready = latin1_ready;
    th_pair_open(&e.c.p, loop, &e);
    th_run(loop, 5000);

    ck_assert_int_ge(e.c.r[0], 0);
    ck_assert_int_ge(e.c.r[1], 0);
    ck_assert_int_eq(e.c.r[2], 0);
    assert_buf_eq(&e.c.ss.data, raw, sizeof(raw)); /* "binary" wrote one byte per char */
    assert_buf_eq(&e.c.cs.data, want, nwant);      /* latin1 decoded each byte to a char */
    ck_assert_int_eq(e.c.cs.nend, 1);
    ctx_free(&e.c);
    th_finish(loop);
}
END_TEST

/* Sends strings in given encodings from the client; the server side gets raw bytes. */
typedef struct wstr {
    ctx_t c;
    const char *const *strs;
    const char *const *encs;
    int n;
} wstr_t;

static void wstr_ready(th_pair_t *p)
{
    wstr_t *w = p->arg;
    for (int i = 0; i < w->n; i++)
        w->c.r[i] = nd_socket_write_string(p->client, w->strs[i], w->encs[i], NULL, NULL);
    w->c.u[0] = nd_socket_bytes_written(p->client);
    ck_assert_int_eq(nd_socket_end(p->client, NULL, 0), 0);
}

static void wstr_client(th_pair_t *p)
{
    wstr_t *w = p->arg;
    sink_attach(p->client, &w->c.cs, 1);
}

static void wstr_server(th_pair_t *p)
{
    wstr_t *w = p->arg;
    sink_attach(p->conn, &w->c.ss, 1);
}

static void run_write_strings(const char *const *strs, const char *const *encs, int n,
                              const void *want, size_t nwant)
{
    wstr_t w = {0};
    nd_loop_t *loop = th_loop_new();

    w.strs = strs;
    w.encs = encs;
    w.n = n;
    w.c.p.connecting = wstr_client;
    w.c.p.accepted = wstr_server;
    w.c.p.ready = wstr_ready;
    th_pair_open(&w.c.p, loop, &w);
    th_run(loop, 5000);

    for (int i = 0; i < n; i++)
        ck_assert_msg(w.c.r[i] >= 0, "write_string #%d returned %d", i, w.c.r[i]);
    ck_assert_uint_eq(w.c.u[0], nwant); /* bytesWritten counts encoded bytes */
    assert_buf_eq(&w.c.ss.data, want, nwant);
    ck_assert_int_eq(w.c.ss.nend, 1);
    ctx_free(&w.c);
    th_finish(loop);
}

START_TEST(hex_strings_are_written_as_bytes)
{
    static const char *const strs[] = {"00ff7f80414243", "DEADbeef"};
    static const char *const encs[] = {"hex", "hex"};
    static const unsigned char want[] = {0x00, 0xff, 0x7f, 0x80, 'A', 'B',
                                         'C',  0xde, 0xad, 0xbe, 0xef};
    run_write_strings(strs, encs, 2, want, sizeof(want));
}
END_TEST

START_TEST(invalid_hex_stops_at_the_first_bad_pair)
{
    static const char *const strs[] = {"4142zz43", "414"};
    static const char *const encs[] = {"hex", "hex"};
    run_write_strings(strs, encs, 2, "ABA", 3);
}
END_TEST

START_TEST(base64_strings_are_written_as_bytes)
{
    static const char *const strs[] = {"AAEC/w==", "SGVsbG8", "SGVs\nbG8=", "-_8"};
    static const char *const encs[] = {"base64", "base64", "base64", "base64"};
    static const unsigned char want[] = {0x00, 0x01, 0x02, 0xff, 'H', 'e', 'l',  'l',
                                         'o',  'H',  'e',  'l',  'l', 'o', 0xfb, 0xff};
    run_write_strings(strs, encs, 4, want, sizeof(want));
}
END_TEST

START_TEST(utf16le_and_ucs2_strings_are_written_as_bytes)
{
    /* hé€😀 then A: the emoji needs a surrogate pair. */
    static const char *const strs[] = {"h\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", "A"};
    static const char *const encs[] = {"utf16le", "ucs2"};
    static const unsigned char want[] = {0x68, 0x00, 0xe9, 0x00, 0xac, 0x20,
                                         0x3d, 0xd8, 0x00, 0xde, 0x41, 0x00};
    run_write_strings(strs, encs, 2, want, sizeof(want));
}
END_TEST

START_TEST(utf8_and_default_encoding_write_the_text_as_is)
{
    static const char *const strs[] = {"caf\xc3\xa9", "!"};
    static const char *const encs[] = {"utf8", NULL};
    run_write_strings(strs, encs, 2, "caf\xc3\xa9!", 6);
}
END_TEST

/* The server side writes e->send in stages; the client decodes with e->encoding. */
typedef struct stage {
    size_t upto; /* write bytes [previous upto, upto) then wait */
} stage_t;

typedef struct rstr {
    enc_t e;
    const stage_t *stages;
    int nstages, at;
    nd_listener_fn check;
} rstr_t;

static void rstr_tick(void *arg)
{
    rstr_t *r = arg;
    enc_t *e = &r->e;
    e->t = NULL;
    if (!e->c.p.conn)
        return;
    size_t upto = r->stages[r->at].upto;
    ck_assert_int_ge(nd_socket_write(e->c.p.conn, e->send + e->sent, upto - e->sent, NULL, NULL),
                     0);
    e->sent = upto;
    if (++r->at < r->nstages)
        e->t = th_timer(e->c.p.loop, 20, rstr_tick, r);
    else
        ck_assert_int_eq(nd_socket_end(e->c.p.conn, NULL, 0), 0);
}

static void rstr_connecting(th_pair_t *p)
{
    rstr_t *r = p->arg;
    ck_assert_int_eq(nd_socket_set_encoding(p->client, r->e.encoding), 0);
    sink_attach(p->client, &r->e.c.cs, 1);
    if (r->check)
        ck_assert_int_eq(nd_socket_on(p->client, ND_EV_DATA, r->check, r), 0);
}

static void rstr_accepted(th_pair_t *p)
{
    rstr_t *r = p->arg;
    sink_attach(p->conn, &r->e.c.ss, 0);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_CLOSE, drip_stop, &r->e), 0);
}

static void rstr_ready(th_pair_t *p)
{
    nd_socket_set_no_delay(p->conn, 1);
    rstr_tick(p->arg);
}

static void run_read_strings(rstr_t *r)
{
    nd_loop_t *loop = th_loop_new();
    r->e.c.p.connecting = rstr_connecting;
    r->e.c.p.accepted = rstr_accepted;
    r->e.c.p.ready = rstr_ready;
    th_pair_open(&r->e.c.p, loop, r);
    th_run(loop, 10000);
    ck_assert_int_eq(r->at, r->nstages);
    ck_assert_int_eq(r->e.c.cs.nend, 1);
    ck_assert_int_eq(r->e.c.cs.nclose, 1);
    th_finish(loop);
}

static void hex_check(void *self, const nd_event_t *ev, void *arg)
{
    rstr_t *r = arg;
    enc_check_string(&r->e, ev);
    if (ev->len % 2 != 0)
        r->e.bad_chunks++;
}

START_TEST(set_encoding_hex_gives_lowercase_pairs)
{
    rstr_t r = {0};
    unsigned char bytes[256];
    char want[513];
    const stage_t stages[] = {{1}, {256}};

    for (int i = 0; i < 256; i++) {
        bytes[i] = (unsigned char)i;
        snprintf(want + 2 * i, 3, "%02x", i);
    }
    r.e.encoding = "hex";
    r.e.send = bytes;
    r.e.nsend = sizeof(bytes);
    r.stages = stages;
    r.nstages = 2;
    r.check = hex_check;
    run_read_strings(&r);

    ck_assert_str_eq(TH_BUF_STR(r.e.c.cs.data), want);
    ck_assert_int_eq(r.e.bad_chunks, 0);
    ck_assert_int_eq(r.e.not_terminated, 0);
    ctx_free(&r.e.c);
}
END_TEST

static void b64_check(void *self, const nd_event_t *ev, void *arg)
{
    rstr_t *r = arg;
    enc_check_string(&r->e, ev);
    if (ev->len == 0)
        return;
    /* Only the last string may be short or padded: one after it is a violation. */
    if (r->e.pad_seen)
        r->e.bad_chunks++;
    if (ev->len % 4 != 0 || memchr(ev->data, '=', ev->len) != NULL)
        r->e.pad_seen = 1;
}

START_TEST(set_encoding_base64_emits_whole_groups)
{
    rstr_t r = {0};
    const size_t n = 100003; /* not a multiple of 3: the end needs padding */
    unsigned char *bytes = malloc(n);
    unsigned char *back = malloc(n + 16);
    /* Odd cuts, so groups straddle reads. */
    const stage_t stages[] = {{1}, {5}, {65537}, {n}};

    ck_assert_ptr_nonnull(bytes);
    ck_assert_ptr_nonnull(back);
    pat_fill(bytes, 0, n);
    r.e.encoding = "base64";
    r.e.send = bytes;
    r.e.nsend = n;
    r.stages = stages;
    r.nstages = 4;
    r.check = b64_check;
    run_read_strings(&r);

    ck_assert_int_eq(r.e.bad_chunks, 0);
    ck_assert_int_eq(r.e.not_terminated, 0);
    ck_assert_uint_eq(r.e.c.cs.data.len, (n + 2) / 3 * 4);
    size_t got = b64_decode(r.e.c.cs.data.p, r.e.c.cs.data.len, back);
    ck_assert_uint_eq(got, n);
    ck_assert(memcmp(back, bytes, n) == 0);
    free(bytes);
    free(back);
    ctx_free(&r.e.c);
}
END_TEST

static void u16_check(void *self, const nd_event_t *ev, void *arg)
{
    rstr_t *r = arg;
    enc_check_string(&r->e, ev);
    /* A character split at a read boundary would show as a replacement character. */
    if (!utf8_whole((const unsigned char *)ev->data, ev->len) ||
        (ev->len >= 3 && memmem(ev->data, ev->len, "\xef\xbf\xbd", 3) != NULL))
        r->e.bad_chunks++;
}

START_TEST(set_encoding_utf16le_never_splits_characters)
{
    rstr_t r = {0};
    const size_t units = 20000;
    /* a😀é as UTF-16LE: 'a', a surrogate pair, 'é'. */
    static const unsigned char unit16[8] = {0x61, 0x00, 0x3d, 0xd8, 0x00, 0xde, 0xe9, 0x00};
    static const char unit8[] = "a\xf0\x9f\x98\x80\xc3\xa9";
    unsigned char *bytes = malloc(units * 8);
    char *want = malloc(units * 7 + 1);
    /* Cut after the first byte of 'a', then after the high surrogate. */
    const stage_t stages[] = {{1}, {4}, {units * 8}};

    ck_assert_ptr_nonnull(bytes);
    ck_assert_ptr_nonnull(want);
    for (size_t i = 0; i < units; i++) {
        memcpy(bytes + 8 * i, unit16, 8);
        memcpy(want + 7 * i, unit8, 7);
    }
    want[units * 7] = '\0';
    r.e.encoding = "utf16le";
    r.e.send = bytes;
    r.e.nsend = units * 8;
    r.stages = stages;
    r.nstages = 3;
    r.check = u16_check;
    run_read_strings(&r);

    ck_assert_int_eq(r.e.bad_chunks, 0);
    ck_assert_int_eq(r.e.not_terminated, 0);
    ck_assert_uint_eq(r.e.c.cs.data.len, units * 7);
    ck_assert(memcmp(r.e.c.cs.data.p, want, units * 7) == 0);
    free(bytes);
    free(want);
    ctx_free(&r.e.c);
}
END_TEST

static void null_enc_connecting(th_pair_t *p)
{
    ck_assert_int_eq(nd_socket_set_encoding(p->client, "hex"), 0);
    rstr_connecting(p);
}

START_TEST(set_encoding_null_turns_decoding_off)
{
    rstr_t r = {0};
    static const unsigned char bytes[] = {0x01, 0x02, 0x00, 0xff};
    const stage_t stages[] = {{4}};
    nd_loop_t *loop = th_loop_new();

    r.e.encoding = NULL; /* applied after "hex": back to bytes */
    r.e.send = bytes;
    r.e.nsend = sizeof(bytes);
    r.stages = stages;
    r.nstages = 1;
    r.e.c.p.connecting = null_enc_connecting;
    r.e.c.p.accepted = rstr_accepted;
    r.e.c.p.ready = rstr_ready;
    th_pair_open(&r.e.c.p, loop, &r);
    th_run(loop, 5000);

    assert_buf_eq(&r.e.c.cs.data, bytes, sizeof(bytes));
    ck_assert_int_eq(r.e.c.cs.nend, 1);
    ctx_free(&r.e.c);
    th_finish(loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* F. Reading, pause/resume                                                             */
/* ------------------------------------------------------------------------------------ */

#define PR_MSG "This was the year he fell to pieces."

typedef struct pr pr_t;

typedef struct prc {
    pr_t *pr;
    int i;
    nd_socket_t *sock;
    int paused_at_start;
    int ndata, ndata_at_teardown, torn;
    int nclose;
    th_buf_t got;
    th_timer_t *t;
} prc_t;

struct pr {
    nd_loop_t *loop;
    int nconn;
    prc_t c[5];
};

static void pr_conn(void *self, const nd_event_t *ev, void *arg)
{
    pr_t *pr = arg;
    ck_assert_int_eq(nd_socket_end(ev->socket, PR_MSG, strlen(PR_MSG)), 0);
    if (++pr->nconn == 5)
        ck_assert_int_eq(nd_server_close(self, NULL, NULL), 0);
}

static void pr_teardown(void *arg)
{
    prc_t *c = arg;
    c->t = NULL;
    c->torn = 1;
    c->ndata_at_teardown = c->ndata;
    if (c->sock)
        nd_socket_resume(c->sock);
}

static void pr_client_ev(void *self, const nd_event_t *ev, void *arg)
{
    prc_t *c = arg;
    switch (ev->type) {
    case ND_EV_CONNECT:
        c->t = th_timer(c->pr->loop, 100, pr_teardown, c);
        break;
    case ND_EV_DATA:
        c->ndata++;
        th_buf_add(&c->got, ev->data, ev->len);
        break;
    case ND_EV_CLOSE:
        c->nclose++;
        c->sock = NULL;
        if (c->t) {
            th_timer_cancel(c->t);
            c->t = NULL;
        }
        break;
    default:
        break;
    }
}

static void pr_listening(void *self, const nd_event_t *ev, void *arg)
{
    pr_t *pr = arg;
    int port = th_server_port(self);
    for (int i = 0; i < 5; i++) {
        prc_t *c = &pr->c[i];
        c->pr = pr;
        c->i = i;
        c->sock = th_connect(pr->loop, port, NULL, NULL);
        switch (i) {
        case 0:
            nd_socket_resume(c->sock);
            break;
        case 1:
            nd_socket_pause(c->sock);
            nd_socket_resume(c->sock);
            break;
        case 2:
            nd_socket_pause(c->sock);
            break;
        case 3:
            nd_socket_resume(c->sock);
            nd_socket_pause(c->sock);
            nd_socket_resume(c->sock);
            break;
        case 4:
            nd_socket_resume(c->sock);
            nd_socket_resume(c->sock);
            nd_socket_pause(c->sock);
            break;
        }
        c->paused_at_start = nd_socket_is_paused(c->sock);
        ck_assert_int_eq(nd_socket_on(c->sock, ND_EV_CONNECT, pr_client_ev, c), 0);
        ck_assert_int_eq(nd_socket_on(c->sock, ND_EV_DATA, pr_client_ev, c), 0);
        ck_assert_int_eq(nd_socket_on(c->sock, ND_EV_CLOSE, pr_client_ev, c), 0);
    }
}

/* case 69: clients 0, 1 and 3 read at once (3 'data' events in Node's count); 2 and 4
 * read nothing until a timer resumes them 100 ms after they connected. */
START_TEST(pause_and_resume_before_connect_last_call_wins)
{
    pr_t pr = {0};
    nd_loop_t *loop = th_loop_new();
    static const int paused[5] = {0, 0, 1, 0, 1};

    pr.loop = loop;
    nd_server_t *srv = nd_server_new(loop, NULL, pr_conn, &pr);
    ck_assert_ptr_nonnull(srv);
    ck_assert_int_eq(nd_server_once(srv, ND_EV_LISTENING, pr_listening, &pr), 0);
    ck_assert_int_eq(nd_server_listen(srv, 0, "127.0.0.1", 0), 0);
    th_run(loop, 5000);

    ck_assert_int_eq(pr.nconn, 5);
    for (int i = 0; i < 5; i++) {
        prc_t *c = &pr.c[i];
        ck_assert_msg(c->paused_at_start == paused[i], "client %d paused %d", i,
                      c->paused_at_start);
        ck_assert_int_eq(c->nclose, 1);
        ck_assert_str_eq(TH_BUF_STR(c->got), PR_MSG);
        if (paused[i]) {
            ck_assert_int_eq(c->torn, 1);
            ck_assert_msg(c->ndata_at_teardown == 0, "paused client %d read before resume", i);
        }
        th_buf_free(&c->got);
    }
    th_finish(loop);
}
END_TEST

typedef struct cyc {
    th_pair_t p;
    reader_t rd;
    uint64_t total;
    int cycles, violations;
    uint64_t snapshot;
    th_timer_t *t;
    int paused;
} cyc_t;

static void cyc_resume(void *arg)
{
    cyc_t *y = arg;
    y->t = NULL;
    if (y->rd.got != y->snapshot)
        y->violations++;
    y->cycles++;
    y->paused = 0;
    if (y->rd.sock)
        nd_socket_resume(y->rd.sock);
}

static void cyc_data(void *self, const nd_event_t *ev, void *arg)
{
    cyc_t *y = arg;
    if (y->paused)
        y->violations++;
    /* reader_ev ran first, so rd.got already counts this chunk. */
    if (y->cycles < 3 && !y->t && y->rd.got >= (uint64_t)(y->cycles + 1) * MIB) {
        nd_socket_pause(self);
        y->paused = 1;
        y->snapshot = y->rd.got;
        y->t = th_timer(y->p.loop, 100, cyc_resume, y);
    }
}

static void cyc_close(void *self, const nd_event_t *ev, void *arg)
{
    cyc_t *y = arg;
    if (y->t) {
        th_timer_cancel(y->t);
        y->t = NULL;
    }
}

static void cyc_connecting(th_pair_t *p)
{
    cyc_t *y = p->arg;
    reader_attach(&y->rd, p->loop, p->client);
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_DATA, cyc_data, y), 0);
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_CLOSE, cyc_close, y), 0);
}

static void cyc_ready(th_pair_t *p)
{
    cyc_t *y = p->arg;
    ck_assert_int_ge(write_pat(p->conn, 0, y->total, NULL, NULL), 0);
    ck_assert_int_eq(nd_socket_end(p->conn, NULL, 0), 0);
}

/* case 70 */
START_TEST(paused_socket_gets_no_data_across_100ms)
{
    cyc_t y = {0};
    nd_loop_t *loop = th_loop_new();

    y.total = 4 * MIB;
    y.p.connecting = cyc_connecting;
    y.p.ready = cyc_ready;
    th_pair_open(&y.p, loop, &y);
    th_run(loop, 10000);

    ck_assert_int_eq(y.cycles, 3);
    ck_assert_int_eq(y.violations, 0);
    ck_assert_uint_eq(y.rd.got, y.total);
    ck_assert_int_eq(y.rd.bad, 0);
    ck_assert_int_eq(y.rd.nend, 1);
    ck_assert_int_eq(y.rd.nclose, 1);
    th_finish(loop);
}
END_TEST

typedef struct pcx {
    nd_loop_t *loop;
    nd_server_t *srv;
    nd_socket_t *client, *conn;
    int connected, client_closed, conn_closed, server_closed;
} pcx_t;

static void pcx_conn(void *self, const nd_event_t *ev, void *arg)
{
    pcx_t *x = arg;
    x->conn = ev->socket;
    nd_socket_unref(x->conn);
}

static void pcx_connected(void *self, const nd_event_t *ev, void *arg)
{
    pcx_t *x = arg;
    x->connected++;
}

static void pcx_closed(void *self, const nd_event_t *ev, void *arg)
{
    pcx_t *x = arg;
    if (self == x->client)
        x->client_closed++;
    else
        x->conn_closed++;
}

static void pcx_server_closed(void *self, const nd_event_t *ev, void *arg)
{
    pcx_t *x = arg;
    x->server_closed++;
}

static void pcx_listening(void *self, const nd_event_t *ev, void *arg)
{
    pcx_t *x = arg;
    int port = th_server_port(self);
    x->client = th_connect(x->loop, port, pcx_connected, x);
    nd_socket_pause(x->client);
    ck_assert_int_eq(nd_socket_on(x->client, ND_EV_CLOSE, pcx_closed, x), 0);
}

/* case 71: the loop ends with the connection still open; the test then closes it all. */
START_TEST(paused_client_and_unrefd_server_let_the_loop_end)
{
    pcx_t x = {0};
    nd_loop_t *loop = th_loop_new();

    x.loop = loop;
    x.srv = nd_server_new(loop, NULL, pcx_conn, &x);
    ck_assert_ptr_nonnull(x.srv);
    nd_server_unref(x.srv);
    ck_assert_int_eq(nd_server_once(x.srv, ND_EV_LISTENING, pcx_listening, &x), 0);
    ck_assert_int_eq(nd_server_on(x.srv, ND_EV_CLOSE, pcx_server_closed, &x), 0);
    ck_assert_int_eq(nd_server_listen(x.srv, 0, "127.0.0.1", 0), 0);
    th_run(loop, 3000);

    ck_assert_int_eq(x.connected, 1);
    ck_assert_int_eq(nd_socket_is_paused(x.client), 1);
    ck_assert_int_eq(x.client_closed, 0);
    /* The accept may not have run before the loop ran out of ref'd work. */
    if (x.conn) {
        ck_assert_int_eq(nd_socket_on(x.conn, ND_EV_CLOSE, pcx_closed, &x), 0);
        nd_socket_destroy(x.conn);
    }
    nd_socket_destroy(x.client);
    ck_assert_int_eq(nd_server_close(x.srv, NULL, NULL), 0);
    th_run(loop, 3000);

    ck_assert_int_eq(x.client_closed, 1);
    ck_assert_int_eq(x.conn_closed, x.conn ? 1 : 0);
    ck_assert_int_eq(x.server_closed, 1);
    th_finish(loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* G. Timeouts                                                                          */
/* ------------------------------------------------------------------------------------ */

static void t73_on(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    c->ntimeout++;
    th_log(&c->cs.log, "timeout");
    if (c->ntimeout == 1)
        nd_socket_set_timeout(self, 50, NULL, NULL); /* arm it again, without a cb */
    else
        nd_socket_destroy(self);
}

static void t73_cb(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    c->ncb++;
    th_log(&c->cs.log, "cb");
}

static void t73_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_TIMEOUT, t73_on, c), 0);
    nd_socket_set_timeout(p->client, 50, t73_cb, c);
}

/* case 73 */
START_TEST(set_timeout_callback_is_one_shot)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = t73_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.ntimeout, 2);
    ck_assert_int_eq(c.ncb, 1);
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,timeout,cb,timeout,close");
    ck_assert_int_eq(c.cs.had_error, 0);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

static void count_timeout(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    c->ntimeout++;
    th_log(&c->cs.log, "timeout");
}

static void count_cb(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    c->ncb++;
    th_log(&c->cs.log, "cb");
}

static void destroy_client_timer(void *arg)
{
    ctx_t *c = arg;
    c->timer = NULL;
    if (c->p.client)
        nd_socket_destroy(c->p.client);
}

static void t74_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_TIMEOUT, count_timeout, c), 0);
    nd_socket_set_timeout(p->client, 50, count_cb, c);
    nd_socket_set_timeout(p->client, 0, NULL, NULL);
    c->timer = th_timer(p->loop, 100, destroy_client_timer, c);
}

/* case 74 */
START_TEST(set_timeout_0_disables_the_timer)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = t74_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.ntimeout, 0);
    ck_assert_int_eq(c.ncb, 0);
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,close");
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

static void t74b_on(void *self, const nd_event_t *ev, void *arg)
{
    count_timeout(self, ev, arg);
    nd_socket_destroy(self);
}

static void t74b_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_TIMEOUT, t74b_on, c), 0);
    nd_socket_set_timeout(p->client, 50, count_cb, c);
    nd_socket_set_timeout(p->client, 0, count_cb, c); /* v0.10: also removes count_cb */
    nd_socket_set_timeout(p->client, 30, NULL, NULL);
}

/* case 74, v0.10: setTimeout(0, cb) removes cb as well. */
START_TEST(set_timeout_0_with_callback_removes_it)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = t74b_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.ntimeout, 1);
    ck_assert_int_eq(c.ncb, 0);
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,timeout,close");
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

static void t75_timeout(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    c->ntimeout++;
    if (nd_socket_destroyed(self) || !nd_socket_writable(self))
        c->flag++;
    if (c->ntimeout == 1) {
        /* Coarse clock: it never runs ahead of the loop's own notion of time. */
        c->t[0] = clock_ms(CLOCK_MONOTONIC_COARSE);
        ck_assert_int_ge(nd_socket_write(self, "hello", 5, NULL, NULL), 0);
    } else if (c->ntimeout == 2) {
        c->t[1] = clock_ms(CLOCK_MONOTONIC);
        ck_assert_int_eq(nd_socket_end(self, "bye", 3), 0);
    }
}

static void t75_accepted(th_pair_t *p)
{
    ctx_t *c = p->arg;
    sink_attach(p->conn, &c->ss, 1);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_TIMEOUT, t75_timeout, c), 0);
    nd_socket_set_timeout(p->conn, 50, NULL, NULL);
}

/* case 75 */
START_TEST(timeout_does_not_close_and_a_write_restarts_it)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = t75_accepted;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.ntimeout, 2);
    ck_assert_int_eq(c.flag, 0);
    ck_assert_msg(c.t[1] - c.t[0] >= 50.0, "second timeout %.1f ms after the write",
                  c.t[1] - c.t[0]);
    ck_assert_str_eq(TH_BUF_STR(c.cs.data), "hellobye");
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,end,finish,close");
    ck_assert_int_eq(c.ss.nclose, 1);
    ck_assert_int_eq(c.ss.had_error, 0);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

#define T76 300

static void t76_ping(void *arg)
{
    ctx_t *c = arg;
    c->timer = NULL;
    ck_assert_ptr_nonnull(c->p.client);
    c->t[0] = clock_ms(CLOCK_MONOTONIC_COARSE);
    ck_assert_int_ge(nd_socket_write(c->p.client, "ping", 4, NULL, NULL), 0);
}

static void t76_timeout(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    c->ntimeout++;
    c->t[1] = clock_ms(CLOCK_MONOTONIC);
    /* The handler must close the socket itself. */
    nd_socket_destroy(self);
}

static void t76_client_timeout(void *self, const nd_event_t *ev, void *arg)
{
    ctx_t *c = arg;
    c->ncb++;
}

static void t76_connecting(th_pair_t *p)
{
    ctx_t *c = p->arg;
    sink_attach(p->client, &c->cs, 1);
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_TIMEOUT, t76_client_timeout, c), 0);
    nd_socket_set_timeout(p->client, 0, NULL, NULL);
}

static void t76_accepted(th_pair_t *p)
{
    ctx_t *c = p->arg;
    sink_attach(p->conn, &c->ss, 1);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_TIMEOUT, t76_timeout, c), 0);
    nd_socket_set_timeout(p->conn, T76, NULL, NULL);
}

static void t76_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    c->timer = th_timer(p->loop, 100, t76_ping, c);
}

/* case 76: the idle time counts from the last read, not from when the timer was set. */
START_TEST(timeout_fires_after_idleness_since_the_last_activity)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = t76_connecting;
    c.p.accepted = t76_accepted;
    c.p.ready = t76_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.ntimeout, 1);
    ck_assert_int_eq(c.ncb, 0);
    ck_assert_str_eq(TH_BUF_STR(c.ss.data), "ping");
    double idle = c.t[1] - c.t[0];
    ck_assert_msg(idle >= T76 && idle <= T76 + 800, "timeout after %.1f ms idle", idle);
    ck_assert_int_eq(c.cs.nend, 1);
    ck_assert_int_eq(c.cs.nclose, 1);
    ck_assert_int_eq(c.ss.nclose, 1);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

#define T77 500

typedef struct prog {
    th_pair_t p;
    reader_t rd;
    th_sink_t ss;
    uint64_t total;
    int ntimeout;
    double t_start, t_finish;
} prog_t;

static void prog_timeout(void *self, const nd_event_t *ev, void *arg)
{
    prog_t *g = arg;
    g->ntimeout++;
}

static void prog_finish(void *self, const nd_event_t *ev, void *arg)
{
    prog_t *g = arg;
    g->t_finish = clock_ms(CLOCK_MONOTONIC);
    /* From here the reader drains kernel buffers with no progress to report. */
    nd_socket_set_timeout(self, 0, NULL, NULL);
}

static void prog_connecting(th_pair_t *p)
{
    prog_t *g = p->arg;
    reader_attach(&g->rd, p->loop, p->client);
    /* Rate-limited so the transfer lasts well over T77 whatever the read size. */
    g->rd.rate = 4 * MIB;
}

static void prog_accepted(th_pair_t *p)
{
    prog_t *g = p->arg;
    sink_attach(p->conn, &g->ss, 0);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_TIMEOUT, prog_timeout, g), 0);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_FINISH, prog_finish, g), 0);
}

static void prog_ready(th_pair_t *p)
{
    prog_t *g = p->arg;
    small_buffers(p->conn);
    small_buffers(p->client);
    nd_socket_set_timeout(p->conn, T77, NULL, NULL);
    g->t_start = clock_ms(CLOCK_MONOTONIC);
    /* Queued all at once: only the library's progress can count as activity. */
    for (uint64_t off = 0; off < g->total; off += MIB)
        ck_assert_int_ge(write_pat(p->conn, off, MIB, NULL, NULL), 0);
    ck_assert_int_eq(nd_socket_end(p->conn, NULL, 0), 0);
}

/* case 77 */
START_TEST(write_progress_to_a_slow_reader_counts_as_activity)
{
    prog_t g = {0};
    nd_loop_t *loop = th_loop_new();

    g.total = 8 * MIB; /* not scaled down: the transfer must outlast T77 */
    g.p.connecting = prog_connecting;
    g.p.accepted = prog_accepted;
    g.p.ready = prog_ready;
    th_pair_open(&g.p, loop, &g);
    th_run(loop, 30000);

    ck_assert_int_eq(g.ntimeout, 0);
    /* Meaningful only if the writer was busy for longer than the timeout. */
    ck_assert_msg(g.t_finish - g.t_start > T77, "writer finished in %.1f ms",
                  g.t_finish - g.t_start);
    ck_assert_uint_eq(g.rd.got, g.total);
    ck_assert_int_eq(g.rd.bad, 0);
    ck_assert_int_eq(g.rd.nend, 1);
    ck_assert_int_eq(g.ss.nclose, 1);
    th_sink_free(&g.ss);
    th_finish(loop);
}
END_TEST

typedef struct lone {
    nd_loop_t *loop;
    nd_socket_t *sock;
    th_log_t log;
    th_timer_t *t;
    int ncb;
} lone_t;

static void lone_timeout(void *self, const nd_event_t *ev, void *arg)
{
    lone_t *l = arg;
    l->ncb++;
    th_log(&l->log, "timeout");
    nd_socket_destroy(self);
    if (l->t) {
        th_timer_cancel(l->t);
        l->t = NULL;
    }
}

static void lone_close(void *self, const nd_event_t *ev, void *arg)
{
    lone_t *l = arg;
    th_log(&l->log, "close");
    l->sock = NULL;
}

static void lone_timer(void *arg)
{
    lone_t *l = arg;
    l->t = NULL;
    th_log(&l->log, "timer");
    if (l->sock)
        nd_socket_destroy(l->sock);
}

/* case 78: idle timers do not keep the loop alive, so a th_timer does until then. */
START_TEST(timeout_on_a_socket_that_never_connected)
{
    lone_t l = {0};
    nd_loop_t *loop = th_loop_new();

    l.loop = loop;
    l.sock = nd_socket_new(loop, NULL);
    ck_assert_ptr_nonnull(l.sock);
    ck_assert_int_eq(nd_socket_on(l.sock, ND_EV_CLOSE, lone_close, &l), 0);
    nd_socket_set_timeout(l.sock, 20, lone_timeout, &l);
    l.t = th_timer(loop, 1000, lone_timer, &l);
    th_run(loop, 5000);

    ck_assert_int_eq(l.ncb, 1);
    ck_assert_str_eq(th_log_str(&l.log), "timeout,close");
    th_finish(loop);
}
END_TEST

/* case 78 */
START_TEST(set_timeout_after_destroy_does_nothing)
{
    lone_t l = {0};
    nd_loop_t *loop = th_loop_new();

    l.loop = loop;
    l.sock = nd_socket_new(loop, NULL);
    ck_assert_ptr_nonnull(l.sock);
    ck_assert_int_eq(nd_socket_on(l.sock, ND_EV_CLOSE, lone_close, &l), 0);
    nd_socket_destroy(l.sock);
    nd_socket_set_timeout(l.sock, 1, lone_timeout, &l);
    l.t = th_timer(loop, 50, lone_timer, &l);
    th_run(loop, 5000);

    ck_assert_int_eq(l.ncb, 0);
    ck_assert_str_eq(th_log_str(&l.log), "close,timer");
    th_finish(loop);
}
END_TEST

static void t78c_ready(th_pair_t *p)
{
    ctx_t *c = p->arg;
    nd_socket_destroy(p->client);
    nd_socket_set_timeout(p->client, 1, count_cb, c);
    c->timer = th_timer(p->loop, 50, destroy_client_timer, c);
}

/* case 78, on a connected socket */
START_TEST(set_timeout_after_destroying_a_connected_socket_does_nothing)
{
    ctx_t c = {0};
    nd_loop_t *loop = th_loop_new();

    c.p.connecting = hook_client_sink;
    c.p.accepted = hook_server_sink;
    c.p.ready = t78c_ready;
    th_pair_open(&c.p, loop, &c);
    th_run(loop, 5000);

    ck_assert_int_eq(c.ncb, 0);
    ck_assert_str_eq(th_log_str(&c.cs.log), "connect,close");
    ck_assert_int_eq(c.cs.had_error, 0);
    ck_assert_int_eq(c.ss.nclose, 1);
    ctx_free(&c);
    th_finish(loop);
}
END_TEST

#define NUNREF 6

typedef struct unr {
    nd_loop_t *loop;
    nd_server_t *srv;
    nd_socket_t *cli[NUNREF];
    nd_socket_t *conn[NUNREF];
    int nconn, connected, ntimeout, nclose, server_closed;
} unr_t;

static const unsigned unref_delays[NUNREF] = {8000, 5000, 3000, 6000, 2000, 4000};

static void unr_count(void *self, const nd_event_t *ev, void *arg)
{
    unr_t *u = arg;
    if (ev->type == ND_EV_TIMEOUT)
        u->ntimeout++;
    else if (ev->type == ND_EV_CLOSE)
        u->nclose++;
}

static void unr_server_closed(void *self, const nd_event_t *ev, void *arg)
{
    unr_t *u = arg;
    u->server_closed++;
}

static void unr_conn(void *self, const nd_event_t *ev, void *arg)
{
    unr_t *u = arg;
    ck_assert_int_lt(u->nconn, NUNREF);
    u->conn[u->nconn++] = ev->socket;
    ck_assert_int_ge(nd_socket_write(ev->socket, "hello", 5, NULL, NULL), 0);
    nd_socket_unref(ev->socket);
    ck_assert_int_eq(nd_socket_on(ev->socket, ND_EV_CLOSE, unr_count, u), 0);
}

static void unr_connected(void *self, const nd_event_t *ev, void *arg)
{
    unr_t *u = arg;
    if (++u->connected < NUNREF)
        return;
    for (int i = 0; i < NUNREF; i++) {
        nd_socket_set_timeout(u->cli[i], unref_delays[i], NULL, NULL);
        nd_socket_unref(u->cli[i]);
    }
}

static void unr_listening(void *self, const nd_event_t *ev, void *arg)
{
    unr_t *u = arg;
    int port = th_server_port(self);
    for (int i = 0; i < NUNREF; i++) {
        u->cli[i] = th_connect(u->loop, port, unr_connected, u);
        ck_assert_int_eq(nd_socket_on(u->cli[i], ND_EV_TIMEOUT, unr_count, u), 0);
        ck_assert_int_eq(nd_socket_on(u->cli[i], ND_EV_CLOSE, unr_count, u), 0);
    }
}

/* case 79: the shortest timeout is 2 s, the loop must be done well before. */
START_TEST(unrefd_sockets_with_timers_let_the_loop_end)
{
    unr_t u = {0};
    nd_loop_t *loop = th_loop_new();

    u.loop = loop;
    u.srv = nd_server_new(loop, NULL, unr_conn, &u);
    ck_assert_ptr_nonnull(u.srv);
    ck_assert_int_eq(nd_server_once(u.srv, ND_EV_LISTENING, unr_listening, &u), 0);
    ck_assert_int_eq(nd_server_on(u.srv, ND_EV_CLOSE, unr_server_closed, &u), 0);
    ck_assert_int_eq(nd_server_listen(u.srv, 0, "127.0.0.1", 0), 0);
    nd_server_unref(u.srv);
    double t0 = clock_ms(CLOCK_MONOTONIC);
    th_run(loop, 1500);
    double took = clock_ms(CLOCK_MONOTONIC) - t0;

    ck_assert_int_eq(u.connected, NUNREF);
    ck_assert_int_eq(u.ntimeout, 0);
    ck_assert_int_eq(u.nclose, 0);
    ck_assert_msg(took < 2000, "loop ran %.0f ms", took);

    for (int i = 0; i < NUNREF; i++)
        nd_socket_destroy(u.cli[i]);
    for (int i = 0; i < u.nconn; i++)
        nd_socket_destroy(u.conn[i]);
    ck_assert_int_eq(nd_server_close(u.srv, NULL, NULL), 0);
    th_run(loop, 3000);

    ck_assert_int_eq(u.nclose, NUNREF + u.nconn);
    ck_assert_int_eq(u.server_closed, 1);
    ck_assert_int_eq(u.ntimeout, 0);
    th_finish(loop);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* pipe()                                                                               */
/* ------------------------------------------------------------------------------------ */

typedef struct echo {
    th_pair_t p;
    uint64_t total, sent, got;
    uint64_t hsent, hgot;
    int pipe_r, ended, nend, nclose, nerror;
    unsigned char *chunk;
} echo_t;

#define ECHO_CHUNK (256 * KIB)

static void echo_pump(echo_t *e)
{
    nd_socket_t *s = e->p.client;
    while (s && e->sent < e->total) {
        size_t n = e->total - e->sent < ECHO_CHUNK ? (size_t)(e->total - e->sent) : ECHO_CHUNK;
        pat_fill(e->chunk, e->sent, n);
        e->hsent = th_fnv1a(e->hsent, e->chunk, n);
        int r = nd_socket_write(s, e->chunk, n, NULL, NULL);
        ck_assert_int_ge(r, 0);
        e->sent += n;
        if (r == 0)
            return; /* 'drain' calls again */
    }
    if (s && !e->ended) {
        e->ended = 1;
        ck_assert_int_eq(nd_socket_end(s, NULL, 0), 0);
    }
}

static void echo_client_ev(void *self, const nd_event_t *ev, void *arg)
{
    echo_t *e = arg;
    switch (ev->type) {
    case ND_EV_DATA:
        e->hgot = th_fnv1a(e->hgot, ev->data, ev->len);
        e->got += ev->len;
        break;
    case ND_EV_DRAIN:
        echo_pump(e);
        break;
    case ND_EV_END:
        e->nend++;
        break;
    case ND_EV_ERROR:
        e->nerror++;
        break;
    case ND_EV_CLOSE:
        e->nclose++;
        break;
    default:
        break;
    }
}

static void echo_connecting(th_pair_t *p)
{
    static const nd_event_type_t evs[] = {ND_EV_DATA, ND_EV_DRAIN, ND_EV_END, ND_EV_ERROR,
                                          ND_EV_CLOSE};
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        ck_assert_int_eq(nd_socket_on(p->client, evs[i], echo_client_ev, p->arg), 0);
}

static void echo_accepted(th_pair_t *p)
{
    echo_t *e = p->arg;
    e->pipe_r = nd_socket_pipe(p->conn, p->conn, 1);
}

static void echo_ready(th_pair_t *p)
{
    echo_pump(p->arg);
}

START_TEST(pipe_to_itself_echoes_16_mib)
{
    echo_t e = {0};
    nd_loop_t *loop = th_loop_new();

    e.total = th_sanitized() ? 4 * MIB : 16 * MIB;
    e.hsent = e.hgot = TH_FNV0;
    e.chunk = malloc(ECHO_CHUNK);
    ck_assert_ptr_nonnull(e.chunk);
    e.p.connecting = echo_connecting;
    e.p.accepted = echo_accepted;
    e.p.ready = echo_ready;
    th_pair_open(&e.p, loop, &e);
    th_run(loop, 30000);

    ck_assert_int_eq(e.pipe_r, 0);
    ck_assert_uint_eq(e.sent, e.total);
    ck_assert_uint_eq(e.got, e.total);
    ck_assert_msg(e.hgot == e.hsent, "echoed bytes differ from the sent ones");
    ck_assert_int_eq(e.nend, 1);
    ck_assert_int_eq(e.nerror, 0);
    ck_assert_int_eq(e.nclose, 1);
    free(e.chunk);
    th_finish(loop);
}
END_TEST

/* Two pairs: A.client writes, A.conn is the pipe's source, B.conn its destination and
 * B.client the reader at the far end. */
typedef struct bp {
    th_pair_t a, b;
    int nready;
    reader_t rd;
    uint64_t total;
    int pipe_r;
    th_timer_t *poll;
    size_t last;
    int same, polls, checked;
    int src_paused;
    size_t dst_queue, producer_queue;
} bp_t;

static void bp_check(bp_t *x)
{
    x->checked = 1;
    x->src_paused = x->a.conn ? nd_socket_is_paused(x->a.conn) : -1;
    x->dst_queue = x->b.conn ? nd_socket_buffer_size(x->b.conn) : 0;
    x->rd.paused_by_us = 0;
    if (x->rd.sock)
        nd_socket_resume(x->rd.sock);
}

static void bp_poll(void *arg)
{
    bp_t *x = arg;
    x->poll = NULL;
    size_t q = x->a.client ? nd_socket_buffer_size(x->a.client) : 0;
    x->polls++;
    x->same = (q == x->last) ? x->same + 1 : 0;
    x->last = q;
    x->producer_queue = q;
    /* Settled (or everything went through, which the checks then reject). */
    if ((q > 0 && x->same >= 3) || q == 0 || x->polls >= 150)
        bp_check(x);
    else
        x->poll = th_timer(x->a.loop, 20, bp_poll, x);
}

static void bp_start(bp_t *x)
{
    small_buffers(x->a.client);
    small_buffers(x->a.conn);
    small_buffers(x->b.client);
    small_buffers(x->b.conn);
    x->pipe_r = nd_socket_pipe(x->a.conn, x->b.conn, 1);
    ck_assert_int_ge(write_pat(x->a.client, 0, x->total, NULL, NULL), 0);
    ck_assert_int_eq(nd_socket_end(x->a.client, NULL, 0), 0);
    x->poll = th_timer(x->a.loop, 20, bp_poll, x);
}

static void bp_ready(th_pair_t *p)
{
    bp_t *x = p->arg;
    if (++x->nready == 2)
        bp_start(x);
}

static void bp_b_connecting(th_pair_t *p)
{
    bp_t *x = p->arg;
    reader_attach(&x->rd, p->loop, p->client);
    nd_socket_pause(p->client);
    x->rd.paused_by_us = 1;
}

START_TEST(pipe_pauses_the_source_while_the_destination_is_full)
{
    bp_t x = {0};
    nd_loop_t *loop = th_loop_new();

    x.total = 8 * MIB;
    x.a.ready = bp_ready;
    x.b.connecting = bp_b_connecting;
    x.b.ready = bp_ready;
    th_pair_open(&x.a, loop, &x);
    th_pair_open(&x.b, loop, &x);
    th_run(loop, 20000);

    ck_assert_int_eq(x.pipe_r, 0);
    ck_assert_int_eq(x.checked, 1);
    ck_assert_int_eq(x.src_paused, 1);
    ck_assert_uint_gt(x.dst_queue, 0);
    ck_assert_msg(x.dst_queue <= 2 * MIB, "destination queued %zu bytes", x.dst_queue);
    ck_assert_uint_gt(x.producer_queue, 0); /* the producer was held back */
    ck_assert_uint_eq(x.rd.got, x.total);
    ck_assert_int_eq(x.rd.bad, 0);
    ck_assert_int_eq(x.rd.data_while_paused, 0);
    ck_assert_int_eq(x.rd.nend, 1);
    ck_assert_int_eq(x.rd.nclose, 1);
    th_finish(loop);
}
END_TEST

typedef struct pe {
    th_pair_t a, b;
    int nready;
    int end_dst;
    int pipe_r, unpipe_r[2];
    int unpipe; /* test unpipe() after the first bytes */
    int unpiped;
    th_sink_t a_conn, b_client;
    th_timer_t *t;
    int b_end_at_timer, b_writable_at_timer;
    size_t b_len_at_timer;
} pe_t;

static void pe_timer(void *arg)
{
    pe_t *x = arg;
    x->t = NULL;
    x->b_end_at_timer = x->b_client.nend;
    x->b_len_at_timer = x->b_client.data.len;
    ck_assert_ptr_nonnull(x->b.conn);
    x->b_writable_at_timer = nd_socket_writable(x->b.conn);
    ck_assert_int_eq(nd_socket_end(x->b.conn, NULL, 0), 0);
}

static void pe_a_conn_closed(void *self, const nd_event_t *ev, void *arg)
{
    pe_t *x = arg;
    if (!x->end_dst || x->unpipe)
        x->t = th_timer(x->a.loop, 200, pe_timer, x);
}

static void pe_b_data(void *self, const nd_event_t *ev, void *arg)
{
    pe_t *x = arg;
    if (!x->unpipe || x->unpiped || x->b_client.data.len < 3)
        return;
    x->unpiped = 1;
    x->unpipe_r[0] = nd_socket_unpipe(x->a.conn);
    x->unpipe_r[1] = nd_socket_unpipe(x->a.conn);
    ck_assert_ptr_nonnull(x->a.client);
    ck_assert_int_ge(nd_socket_write(x->a.client, "two", 3, NULL, NULL), 0);
    ck_assert_int_eq(nd_socket_end(x->a.client, NULL, 0), 0);
}

static void pe_a_accepted(th_pair_t *p)
{
    pe_t *x = p->arg;
    sink_attach(p->conn, &x->a_conn, 1);
    ck_assert_int_eq(nd_socket_on(p->conn, ND_EV_CLOSE, pe_a_conn_closed, x), 0);
}

static void pe_b_connecting(th_pair_t *p)
{
    pe_t *x = p->arg;
    sink_attach(p->client, &x->b_client, 1);
    ck_assert_int_eq(nd_socket_on(p->client, ND_EV_DATA, pe_b_data, x), 0);
}

static void pe_ready(th_pair_t *p)
{
    pe_t *x = p->arg;
    if (++x->nready < 2)
        return;
    x->pipe_r = nd_socket_pipe(x->a.conn, x->b.conn, x->end_dst);
    if (x->unpipe) {
        ck_assert_int_ge(nd_socket_write(x->a.client, "one", 3, NULL, NULL), 0);
    } else {
        ck_assert_int_ge(nd_socket_write(x->a.client, "hello", 5, NULL, NULL), 0);
        ck_assert_int_eq(nd_socket_end(x->a.client, NULL, 0), 0);
    }
}

static void run_pipe_end(pe_t *x)
{
    nd_loop_t *loop = th_loop_new();
    x->a.accepted = pe_a_accepted;
    x->a.ready = pe_ready;
    x->b.connecting = pe_b_connecting;
    x->b.ready = pe_ready;
    th_pair_open(&x->a, loop, x);
    th_pair_open(&x->b, loop, x);
    th_run(loop, 5000);
    ck_assert_int_eq(x->pipe_r, 0);
    th_finish(loop);
}

START_TEST(pipe_ends_the_destination_when_the_source_ends)
{
    pe_t x = {0};

    x.end_dst = 1;
    run_pipe_end(&x);

    ck_assert_str_eq(TH_BUF_STR(x.b_client.data), "hello");
    ck_assert_str_eq(th_log_str(&x.b_client.log), "connect,end,finish,close");
    ck_assert_str_eq(TH_BUF_STR(x.a_conn.data), "hello");
    ck_assert_int_eq(x.a_conn.nend, 1);
    th_sink_free(&x.a_conn);
    th_sink_free(&x.b_client);
}
END_TEST

START_TEST(pipe_with_end_dst_0_leaves_the_destination_open)
{
    pe_t x = {0};

    x.end_dst = 0;
    run_pipe_end(&x);

    ck_assert_int_eq(x.b_end_at_timer, 0);
    ck_assert_int_eq(x.b_writable_at_timer, 1);
    ck_assert_uint_eq(x.b_len_at_timer, 5);
    ck_assert_str_eq(TH_BUF_STR(x.b_client.data), "hello");
    /* 'end' only came from our own end() after the timer. */
    ck_assert_str_eq(th_log_str(&x.b_client.log), "connect,end,finish,close");
    th_sink_free(&x.a_conn);
    th_sink_free(&x.b_client);
}
END_TEST

START_TEST(unpipe_stops_forwarding)
{
    pe_t x = {0};

    x.end_dst = 1;
    x.unpipe = 1;
    run_pipe_end(&x);

    ck_assert_int_eq(x.unpiped, 1);
    ck_assert_int_eq(x.unpipe_r[0], 0);
    ck_assert_int_eq(x.unpipe_r[1], -ENOENT);
    ck_assert_str_eq(TH_BUF_STR(x.a_conn.data), "onetwo");
    ck_assert_uint_eq(x.b_len_at_timer, 3);
    ck_assert_int_eq(x.b_end_at_timer, 0); /* the source's end was not passed on either */
    ck_assert_str_eq(TH_BUF_STR(x.b_client.data), "one");
    ck_assert_int_eq(x.b_client.nend, 1);
    th_sink_free(&x.a_conn);
    th_sink_free(&x.b_client);
}
END_TEST

/* ------------------------------------------------------------------------------------ */

/* ------------------------------------------------------------------------------------ */
/* Issue 12: input nobody reads yet, and writes around connect and end()               */
/* ------------------------------------------------------------------------------------ */

/* A server whose accepted socket gets its 'data' listener only from a timer, after some
 * asynchronous setup, as ported Node code often does. */
typedef struct late {
    nd_loop_t *loop;
    nd_server_t *srv;
    nd_socket_t *conn; /* until its 'close' */
    th_log_t log;
    size_t total; /* what the client sends, then end() */
    unsigned attach_ms;
    uint64_t read_at_attach;
    uint64_t sum;
    size_t got;
} late_t;

static void late_data(void *self, const nd_event_t *ev, void *arg)
{
    late_t *l = arg;
    /* Bytes in the order they were sent: the running sum of the pattern's prefix. */
    for (size_t i = 0; i < ev->len; i++)
        ck_assert_uint_eq((unsigned char)ev->data[i], pat(l->got + i));
    l->sum = th_fnv1a(l->sum, ev->data, ev->len);
    l->got += ev->len;
}

static void late_attach(void *arg)
{
    late_t *l = arg;
    ck_assert_ptr_nonnull(l->conn);
    ck_assert_int_eq(nd_socket_destroyed(l->conn), 0);
    l->read_at_attach = nd_socket_bytes_read(l->conn);
    th_log(&l->log, "attach");
    ck_assert_int_eq(nd_socket_on(l->conn, ND_EV_DATA, late_data, l), 0);
}

static void late_event(void *self, const nd_event_t *ev, void *arg)
{
    late_t *l = arg;
    if (ev->type == ND_EV_END) {
        th_log(&l->log, "end(%zu)", l->got);
    } else if (ev->type == ND_EV_CLOSE) {
        th_log(&l->log, "close");
        l->conn = NULL;
        ck_assert_int_eq(nd_server_close(l->srv, NULL, NULL), 0);
    }
}

static void late_connection(void *self, const nd_event_t *ev, void *arg)
{
    late_t *l = arg;
    l->conn = ev->socket;
    ck_assert_int_eq(nd_socket_on(l->conn, ND_EV_END, late_event, l), 0);
    ck_assert_int_eq(nd_socket_on(l->conn, ND_EV_CLOSE, late_event, l), 0);
    th_timer(l->loop, l->attach_ms, late_attach, l);
}

static void late_client_connect(void *self, const nd_event_t *ev, void *arg)
{
    late_t *l = arg;
    ck_assert_int_ge(write_pat(self, 0, l->total, NULL, NULL), 0);
    ck_assert_int_eq(nd_socket_end(self, NULL, 0), 0);
}

static void run_late(late_t *l, size_t total)
{
    nd_address_t a;
    nd_connect_options_t o = {.host = "127.0.0.1"};

    memset(l, 0, sizeof(*l));
    l->loop = th_loop_new();
    l->total = total;
    l->attach_ms = 200;
    l->sum = TH_FNV0;
    l->srv = nd_server_new(l->loop, NULL, late_connection, l);
    ck_assert_ptr_nonnull(l->srv);
    ck_assert_int_eq(nd_server_listen(l->srv, 0, "127.0.0.1", 0), 0);
    ck_assert_int_eq(nd_loop_run_once(l->loop, 0), 1); /* 'listening' */
    ck_assert_int_eq(nd_server_address(l->srv, &a), 0);
    o.port = a.port;
    nd_socket_t *c = nd_connect(l->loop, &o, late_client_connect, l);
    ck_assert_ptr_nonnull(c);
    th_run(l->loop, 10000);
}

/* case 47, issue 12.1: the 'data' listener comes 200 ms after 'connection'. Nothing is
 * lost: the bytes wait in the socket, which stays alive ('end' waits behind them); they
 * flow once the listener is there, then 'end', then 'close'. This was a use after free. */
START_TEST(data_listener_added_late_gets_the_bytes_then_end)
{
    late_t l;

    run_late(&l, 5);
    ck_assert_str_eq(th_log_str(&l.log), "attach,end(5),close");
    ck_assert_uint_eq(l.read_at_attach, 5);
    ck_assert_uint_eq(l.got, 5);
    th_finish(l.loop);
}
END_TEST

/* Issue 12.1: with nobody reading, a socket reads Node's high-water mark (16 KiB) ahead and
 * stops; the rest waits in the kernel and flows, in order, once a listener comes. */
START_TEST(unread_input_stops_at_16_kib_and_flows_later)
{
    late_t l;
    unsigned char *want = malloc(MIB);

    ck_assert_ptr_nonnull(want);
    pat_fill(want, 0, MIB);
    run_late(&l, MIB);
    ck_assert_uint_eq(l.read_at_attach, 16 * KIB);
    ck_assert_str_eq(th_log_str(&l.log), "attach,end(1048576),close");
    ck_assert_uint_eq(l.got, MIB);
    ck_assert(l.sum == th_fnv1a(TH_FNV0, want, MIB));
    free(want);
    th_finish(l.loop);
}
END_TEST

/* Issue 12 (checked, and confirmed): a paused socket goes on reading into its buffer, as
 * Node's does, so a peer that keeps sending keeps it from going idle; 'timeout' comes only
 * once the peer has stopped. The bytes read meanwhile are delivered at resume(). */
typedef struct trickle {
    nd_loop_t *loop;
    nd_server_t *srv;
    nd_socket_t *conn, *client;
    int sent, stopped, datas, timeouts;
    size_t got;
    uint64_t read_at_timeout;
    int datas_at_timeout, stopped_at_timeout;
} trickle_t;

#define TRICKLE_N 25

static void trickle_send(void *arg)
{
    trickle_t *t = arg;
    if (!t->client)
        return;
    ck_assert_int_ge(nd_socket_write(t->client, "x", 1, NULL, NULL), 0);
    if (++t->sent < TRICKLE_N)
        th_timer(t->loop, 40, trickle_send, t);
    else
        t->stopped = 1;
}

static void trickle_data(void *self, const nd_event_t *ev, void *arg)
{
    trickle_t *t = arg;
    t->datas++;
    t->got += ev->len;
    if (t->got == TRICKLE_N) {
        nd_socket_destroy(t->client);
        nd_socket_destroy(self);
        ck_assert_int_eq(nd_server_close(t->srv, NULL, NULL), 0);
    }
}

static void trickle_timeout(void *self, const nd_event_t *ev, void *arg)
{
    trickle_t *t = arg;
    t->timeouts++;
    t->stopped_at_timeout = t->stopped;
    t->datas_at_timeout = t->datas;
    t->read_at_timeout = nd_socket_bytes_read(self);
    nd_socket_resume(self);
}

static void trickle_connection(void *self, const nd_event_t *ev, void *arg)
{
    trickle_t *t = arg;
    t->conn = ev->socket;
    ck_assert_int_eq(nd_socket_on(t->conn, ND_EV_DATA, trickle_data, t), 0);
    nd_socket_pause(t->conn);
    nd_socket_set_timeout(t->conn, th_scale(400), trickle_timeout, t);
}

static void trickle_client_connect(void *self, const nd_event_t *ev, void *arg)
{
    trickle_send(arg);
}

START_TEST(paused_socket_reads_on_and_times_out_only_when_the_peer_stops)
{
    trickle_t t = {0};
    nd_address_t a;
    nd_connect_options_t o = {.host = "127.0.0.1"};

    t.loop = th_loop_new();
    t.srv = nd_server_new(t.loop, NULL, trickle_connection, &t);
    ck_assert_ptr_nonnull(t.srv);
    ck_assert_int_eq(nd_server_listen(t.srv, 0, "127.0.0.1", 0), 0);
    ck_assert_int_eq(nd_loop_run_once(t.loop, 0), 1);
    ck_assert_int_eq(nd_server_address(t.srv, &a), 0);
    o.port = a.port;
    t.client = nd_connect(t.loop, &o, trickle_client_connect, &t);
    ck_assert_ptr_nonnull(t.client);
    th_run(t.loop, 10000);

    ck_assert_int_eq(t.timeouts, 1);
    ck_assert_int_eq(t.stopped_at_timeout, 1);
    ck_assert_uint_eq(t.read_at_timeout, TRICKLE_N);
    ck_assert_int_eq(t.datas_at_timeout, 0);
    ck_assert_uint_eq(t.got, TRICKLE_N);
    th_finish(t.loop);
}
END_TEST

/* Issue 12.9: after end(), only 'finish' follows the queue emptying; 'drain' does not
 * (v0.10 and Node: no 'drain' once ending). */
typedef struct nodrain {
    nd_loop_t *loop;
    nd_server_t *srv;
    nd_socket_t *conn;
    th_log_t log;
    int zero_after;
} nodrain_t;

static void nodrain_sink(void *self, const nd_event_t *ev, void *arg) {}

static void nodrain_resume(void *arg)
{
    nodrain_t *n = arg;
    th_log(&n->log, "resume");
    ck_assert_int_eq(nd_socket_on(n->conn, ND_EV_DATA, nodrain_sink, NULL), 0);
    nd_socket_resume(n->conn);
}

static void nodrain_connection(void *self, const nd_event_t *ev, void *arg)
{
    nodrain_t *n = arg;
    n->conn = ev->socket;
    small_buffers(n->conn);
    nd_socket_pause(n->conn);
    ck_assert_int_eq(nd_server_close(n->srv, NULL, NULL), 0);
}

static void nodrain_event(void *self, const nd_event_t *ev, void *arg)
{
    nodrain_t *n = arg;
    if (ev->type == ND_EV_DRAIN)
        th_log(&n->log, "drain");
    else if (ev->type == ND_EV_FINISH)
        th_log(&n->log, "finish");
    else if (ev->type == ND_EV_CLOSE)
        th_log(&n->log, "close");
}

static void nodrain_connect(void *self, const nd_event_t *ev, void *arg)
{
    nodrain_t *n = arg;
    uint64_t off = 0;
    int r;

    small_buffers(self);
    /* The peer reads 16 KiB and stops: fill the kernel, then queue 1 MiB of our own. */
    do {
        r = write_pat(self, off, 64 * KIB, NULL, NULL);
        ck_assert_int_ge(r, 0);
        off += 64 * KIB;
    } while (nd_socket_buffer_size(self) < MIB && off < 256 * MIB);
    ck_assert_int_eq(r, 0);
    th_log(&n->log, "full");
    ck_assert_int_eq(nd_socket_end(self, NULL, 0), 0);
    th_timer(n->loop, 50, nodrain_resume, n);
}

START_TEST(no_drain_after_end_only_finish)
{
    nodrain_t n = {0};
    nd_address_t a;
    nd_connect_options_t o = {.host = "127.0.0.1"};

    n.loop = th_loop_new();
    n.srv = nd_server_new(n.loop, NULL, nodrain_connection, &n);
    ck_assert_ptr_nonnull(n.srv);
    ck_assert_int_eq(nd_server_listen(n.srv, 0, "127.0.0.1", 0), 0);
    ck_assert_int_eq(nd_loop_run_once(n.loop, 0), 1);
    ck_assert_int_eq(nd_server_address(n.srv, &a), 0);
    o.port = a.port;
    nd_socket_t *c = nd_connect(n.loop, &o, nodrain_connect, &n);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_DRAIN, nodrain_event, &n), 0);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_FINISH, nodrain_event, &n), 0);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CLOSE, nodrain_event, &n), 0);
    th_run(n.loop, 20000);

    ck_assert_str_eq(th_log_str(&n.log), "full,resume,finish,close");
    th_finish(n.loop);
}
END_TEST

/* Issue 12.10: while connecting, write() returns true below Node's 16 KiB buffer limit and
 * false from it on (Node 20: 5 bytes true, +16000 true, +1000 false); 'drain' follows the
 * false one only. */
typedef struct hwm {
    nd_loop_t *loop;
    nd_server_t *srv;
    th_log_t log;
    size_t got;
} hwm_t;

static void hwm_sdata(void *self, const nd_event_t *ev, void *arg)
{
    hwm_t *h = arg;
    h->got += ev->len;
}

static void hwm_sevent(void *self, const nd_event_t *ev, void *arg)
{
    hwm_t *h = arg;
    if (ev->type == ND_EV_END)
        th_log(&h->log, "server end(%zu)", h->got);
}

static void hwm_connection(void *self, const nd_event_t *ev, void *arg)
{
    hwm_t *h = arg;
    ck_assert_int_eq(nd_socket_on(ev->socket, ND_EV_DATA, hwm_sdata, h), 0);
    ck_assert_int_eq(nd_socket_on(ev->socket, ND_EV_END, hwm_sevent, h), 0);
    ck_assert_int_eq(nd_server_close(h->srv, NULL, NULL), 0);
}

static void hwm_event(void *self, const nd_event_t *ev, void *arg)
{
    hwm_t *h = arg;
    if (ev->type == ND_EV_CONNECT) {
        th_log(&h->log, "connect");
    } else if (ev->type == ND_EV_DRAIN) {
        th_log(&h->log, "drain");
        ck_assert_int_eq(nd_socket_end(self, NULL, 0), 0);
    }
}

START_TEST(write_while_connecting_is_true_below_16_kib)
{
    hwm_t h = {0};
    nd_address_t a;
    nd_connect_options_t o = {.host = "127.0.0.1"};

    h.loop = th_loop_new();
    h.srv = nd_server_new(h.loop, NULL, hwm_connection, &h);
    ck_assert_ptr_nonnull(h.srv);
    ck_assert_int_eq(nd_server_listen(h.srv, 0, "127.0.0.1", 0), 0);
    ck_assert_int_eq(nd_loop_run_once(h.loop, 0), 1);
    ck_assert_int_eq(nd_server_address(h.srv, &a), 0);
    o.port = a.port;
    nd_socket_t *c = nd_connect(h.loop, &o, NULL, NULL);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_CONNECT, hwm_event, &h), 0);
    ck_assert_int_eq(nd_socket_on(c, ND_EV_DRAIN, hwm_event, &h), 0);
    th_log(&h.log, "w=%d", write_pat(c, 0, 5, NULL, NULL));
    th_log(&h.log, "w=%d", write_pat(c, 5, 16000, NULL, NULL));
    th_log(&h.log, "w=%d", write_pat(c, 16005, 1000, NULL, NULL));
    ck_assert_uint_eq(nd_socket_buffer_size(c), 17005);
    th_run(h.loop, 10000);

    ck_assert_str_eq(th_log_str(&h.log), "w=1,w=1,w=0,connect,drain,server end(17005)");
    th_finish(h.loop);
}
END_TEST

/* Issue 12.7: output queued on an unref'd socket keeps the loop running until it is
 * written (Node: a pending write is a libuv request, which keeps the process alive). */
typedef struct unref_reader {
    int lfd;
    size_t got;
} unref_reader_t;

static void *unref_read_all(void *arg)
{
    unref_reader_t *r = arg;
    int fd = accept(r->lfd, NULL, NULL);
    char buf[64 * 1024];
    ssize_t n;

    if (fd < 0)
        return NULL;
    struct timespec ts = {0, 200 * 1000 * 1000}; /* let the writer's queue build up */
    nanosleep(&ts, NULL);
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        r->got += (size_t)n;
    close(fd);
    return NULL;
}

static void unref_connect(void *self, const nd_event_t *ev, void *arg)
{
    size_t total = *(size_t *)arg;
    nd_socket_unref(self);
    ck_assert_int_ge(write_pat(self, 0, total, NULL, NULL), 0);
    ck_assert_uint_gt(nd_socket_buffer_size(self), 0);
    ck_assert_int_eq(nd_socket_end(self, NULL, 0), 0);
}

START_TEST(unrefd_socket_with_queued_output_keeps_the_loop)
{
    nd_loop_t *loop = th_loop_new();
    unref_reader_t r = {0};
    int port;
    size_t total = 4 * MIB;
    pthread_t tid;
    nd_connect_options_t o = {.host = "127.0.0.1"};

    r.lfd = th_raw_listen(&port);
    ck_assert_int_eq(pthread_create(&tid, NULL, unref_read_all, &r), 0);
    o.port = port;
    nd_socket_t *c = nd_connect(loop, &o, unref_connect, &total);
    ck_assert_ptr_nonnull(c);
    th_run(loop, 10000);
    /* The loop returned: everything was handed to the kernel, and our FIN after it. */
    nd_socket_destroy(c);
    th_run(loop, 1000);
    ck_assert_int_eq(pthread_join(tid, NULL), 0);
    close(r.lfd);
    ck_assert_uint_eq(r.got, total);
    th_finish(loop);
}
END_TEST

static Suite *stream_suite(void)
{
    Suite *s = suite_create("stream");
    TCase *tc;

    tc = th_tcase(s, "write", 30);
    tcase_add_test(tc, write_before_connect_is_flushed_in_order);
    tcase_add_test(tc, write_while_connecting_returns_1_and_calls_back_after_connect);
    tcase_add_test(tc, end_with_data_while_connecting);
    tcase_add_test(tc, throttle_write_returns_0_then_drain);
    tcase_add_test(tc, write_inside_end_without_half_open_gives_epipe);
    tcase_add_test(tc, write_after_the_peer_is_gone_errors_and_still_calls_back);
    tcase_add_test(tc, write_after_end_fails_with_ewriteafterend_later);
    tcase_add_test(tc, buffer_size_counts_writes_queued_while_connecting);
    tcase_add_test(tc, zero_length_write_is_allowed_and_calls_back);
    tcase_add_test(tc, write_callbacks_run_in_order_before_finish);
    tcase_add_test(tc, no_drain_without_a_write_that_returned_0);
    tcase_add_test(tc, no_drain_after_end_only_finish);
    tcase_add_test(tc, write_while_connecting_is_true_below_16_kib);
    tcase_add_test(tc, unrefd_socket_with_queued_output_keeps_the_loop);

    tc = th_tcase(s, "unread", 30);
    tcase_add_test(tc, data_listener_added_late_gets_the_bytes_then_end);
    tcase_add_test(tc, unread_input_stops_at_16_kib_and_flows_later);
    tcase_add_test(tc, paused_socket_reads_on_and_times_out_only_when_the_peer_stops);

    tc = th_tcase(s, "slow", 60);
    tcase_add_test(tc, every_write_callback_runs_against_a_slow_reader);

    tc = th_tcase(s, "encoding", 20);
    tcase_add_test(tc, utf8_large_string_arrives_as_whole_characters);
    tcase_add_test(tc, utf8_sequences_split_across_reads_are_joined);
    tcase_add_test(tc, latin1_round_trips_all_256_byte_values);
    tcase_add_test(tc, hex_strings_are_written_as_bytes);
    tcase_add_test(tc, invalid_hex_stops_at_the_first_bad_pair);
    tcase_add_test(tc, base64_strings_are_written_as_bytes);
    tcase_add_test(tc, utf16le_and_ucs2_strings_are_written_as_bytes);
    tcase_add_test(tc, utf8_and_default_encoding_write_the_text_as_is);
    tcase_add_test(tc, set_encoding_hex_gives_lowercase_pairs);
    tcase_add_test(tc, set_encoding_base64_emits_whole_groups);
    tcase_add_test(tc, set_encoding_utf16le_never_splits_characters);
    tcase_add_test(tc, set_encoding_null_turns_decoding_off);

    tc = th_tcase(s, "pause", 20);
    tcase_add_test(tc, pause_and_resume_before_connect_last_call_wins);
    tcase_add_test(tc, paused_socket_gets_no_data_across_100ms);
    tcase_add_test(tc, paused_client_and_unrefd_server_let_the_loop_end);

    tc = th_tcase(s, "timeout", 40);
    tcase_add_test(tc, set_timeout_callback_is_one_shot);
    tcase_add_test(tc, set_timeout_0_disables_the_timer);
    tcase_add_test(tc, set_timeout_0_with_callback_removes_it);
    tcase_add_test(tc, timeout_does_not_close_and_a_write_restarts_it);
    tcase_add_test(tc, timeout_fires_after_idleness_since_the_last_activity);
    tcase_add_test(tc, write_progress_to_a_slow_reader_counts_as_activity);
    tcase_add_test(tc, timeout_on_a_socket_that_never_connected);
    tcase_add_test(tc, set_timeout_after_destroy_does_nothing);
    tcase_add_test(tc, set_timeout_after_destroying_a_connected_socket_does_nothing);
    tcase_add_test(tc, unrefd_sockets_with_timers_let_the_loop_end);

    tc = th_tcase(s, "pipe", 40);
    tcase_add_test(tc, pipe_to_itself_echoes_16_mib);
    tcase_add_test(tc, pipe_pauses_the_source_while_the_destination_is_full);
    tcase_add_test(tc, pipe_ends_the_destination_when_the_source_ends);
    tcase_add_test(tc, pipe_with_end_dst_0_leaves_the_destination_open);
    tcase_add_test(tc, unpipe_stops_forwarding);

    return s;
}

int main(void)
{
    return th_run_suite(stream_suite());
}
