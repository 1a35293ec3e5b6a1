/* SPDX-License-Identifier: MIT */
/*
 * The access log: one line per closed connection of a server with "accessLog": true,
 * written to a file (reopened on SIGHUP) or to stderr (journald).
 *
 * Why a writer thread: a write to a file can wait on the disk and a write to stderr on
 * journald or a terminal, and neither a worker (the data plane) nor the main loop (the
 * acceptors, the control socket) may ever wait. So workers only format lines into their
 * own fixed chunks and hand full chunks (or, 10 ms after the first line, partial ones)
 * through the writer loop's mailbox; the writer writes them with plain blocking calls and
 * posts each chunk back to the worker it came from. A worker owns at most ALOG_CHUNKS
 * chunks: when all of them wait at the writer, new lines are dropped and counted
 * (netd_access_log_dropped_total), never queued without bound.
 */
#include "config.h"

#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>
#include <event2/event.h>

#define ALOG_CHUNK 8192
#define ALOG_CHUNKS 8 /* per worker: 64 KiB of lines in flight at most */
#define ALOG_FLUSH_MS 10
#define STDERR_PREFIX "netd: access: "
/* How long the writer waits for a log that takes nothing (a stuck pipe or journald)
 * before it gives up a chunk and counts its lines as dropped; much less once netd is
 * stopping, so that a stuck log never holds up the exit. */
#define ALOG_PATIENCE_MS 10000
#define ALOG_PATIENCE_STOPPING_MS 100

/*
 * A chunk of lines. Owned by: its worker while it fills it or holds it free; by the
 * writer from the post until it has written it; then by its worker again (posted back).
 * Freed when: at stop, by the main loop once every thread has ended, or by the mailbox's
 * drop when a loop is freed with the chunk still queued.
 */
typedef struct chunk {
    nd_msg_t msg;
    netd_alog_t *log;
    int worker;
    size_t len;
    struct chunk *next; /* on its worker's free list */
    char data[ALOG_CHUNK];
} chunk_t;

/* One worker's side. Owned by: that worker's thread; the main loop frees it at stop. */
typedef struct alog_worker {
    chunk_t *cur;  /* being filled */
    chunk_t *free; /* back from the writer */
    int allocated; /* chunks this worker owns, wherever they are */
    struct event *flush_ev;
} alog_worker_t;

/* A file to switch to, handed to the writer. */
typedef struct reopen {
    nd_msg_t msg;
    netd_alog_t *log;
    char path[]; /* "" for stderr */
} reopen_t;

/*
 * Owned by: the main loop, which creates and frees it. The writer thread alone touches
 * fd and to_stderr from its start to its end; workers touch only their own slot of
 * `workers` (set up before they start).
 */
struct netd_alog {
    netd_t *d;
    nd_loop_t *loop;
    nd_thread_t *thread;
    int fd;
    bool to_stderr;
    _Atomic bool stopping;    /* set by the main loop */
    int stop_fd;              /* an eventfd: wakes a writer waiting on the log */
    bool stuck;               /* writer: the log took nothing while stopping */
    _Atomic uint64_t dropped; /* written by the writer only: lines it gave up */
    alog_worker_t *workers;
    int nworkers;
};

/* ------------------------------------------------------------------ writer thread */

/* 0, or -1 when the log took nothing for the writer's patience, or failed. */
static int write_all(netd_alog_t *a, const struct iovec *iov, int n)
{
    struct iovec v[64];
    memcpy(v, iov, (size_t)n * sizeof(*v));
    struct iovec *p = v;
    while (n > 0) {
        if (a->stuck && atomic_load(&a->stopping))
            return -1; /* one wait at exit is enough */
        /* A pipe or socket that polls writable takes a write of PIPE_BUF bytes without
         * waiting; a regular file always polls writable. */
        bool stopping = atomic_load(&a->stopping);
        struct pollfd pfd[2] = {{a->fd, POLLOUT, 0}, {a->stop_fd, POLLIN, 0}};
        int ready = poll(pfd, stopping ? 1 : 2,
                         stopping ? ALOG_PATIENCE_STOPPING_MS : ALOG_PATIENCE_MS);
        if ((ready < 0 && errno == EINTR) ||
            (ready > 0 && !(pfd[0].revents & ~POLLNVAL) && pfd[1].revents))
            continue; /* stopping now: wait again, briefly */
        if (ready == 0) {
            a->stuck = stopping;
            return -1;
        }
        ssize_t w = writev(a->fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1; /* a log that cannot be written is not worth stopping for */
        }
        while (n > 0 && (size_t)w >= p->iov_len) {
            w -= (ssize_t)p->iov_len;
            p++;
            n--;
        }
        if (n > 0) {
            p->iov_base = (char *)p->iov_base + w;
            p->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* Whole lines, each write at most PIPE_BUF bytes, so that on a pipe (journald) netd's
 * other log lines never land inside one; on stderr each line gets netd's prefix. When the
 * log gives up, the lines not written are counted as dropped. */
static void write_lines(netd_alog_t *a, const char *data, size_t len)
{
    const char *end = data + len;
    const size_t plen = a->to_stderr ? strlen(STDERR_PREFIX) : 0;
    struct iovec iov[64];
    while (data < end) {
        int n = 0;
        size_t batch = 0;
        const char *p = data;
        while (p < end && n + 2 <= 64) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t line = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
            if (n > 0 && batch + plen + line > PIPE_BUF)
                break;
            if (plen)
                iov[n++] = (struct iovec){(void *)STDERR_PREFIX, plen};
            iov[n++] = (struct iovec){(void *)p, line};
            batch += plen + line;
            p += line;
        }
        if (write_all(a, iov, n) != 0) {
            uint64_t lost = 0;
            for (const char *q = data; q < end; q++)
                lost += *q == '\n';
            atomic_fetch_add(&a->dropped, lost);
            return;
        }
        data = p;
    }
}

uint64_t netd_alog_dropped(netd_alog_t *a)
{
    return a ? atomic_load(&a->dropped) : 0;
}

static void chunk_back(nd_loop_t *loop, void *arg);

static void write_chunk(nd_loop_t *loop, void *arg)
{
    chunk_t *c = arg;
    netd_alog_t *a = c->log;
    write_lines(a, c->data, c->len);
    c->len = 0;
    nd_loop_post_msg(a->d->workers[c->worker].loop, &c->msg, chunk_back, c, free);
}

static void do_reopen(nd_loop_t *loop, void *arg)
{
    reopen_t *r = arg;
    netd_alog_t *a = r->log;
    if (r->path[0]) {
        /* O_NONBLOCK only for the open: a FIFO without a reader must not hang us. */
        int fd = open(r->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0640);
        if (fd < 0) {
            netd_log(NETD_LOG_ERROR,
                     "access log: cannot open %s (%s); still writing to the "
                     "previous one",
                     r->path, strerror(errno));
            free(r);
            return;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        if (!a->to_stderr)
            close(a->fd);
        a->fd = fd;
        a->to_stderr = false;
    } else {
        if (!a->to_stderr)
            close(a->fd);
        a->fd = STDERR_FILENO;
        a->to_stderr = true;
    }
    free(r);
}

/* ------------------------------------------------------------------ workers */

static void post_chunk(alog_worker_t *aw)
{
    chunk_t *c = aw->cur;
    aw->cur = NULL;
    nd_loop_post_msg(c->log->loop, &c->msg, write_chunk, c, free);
}

static void chunk_back(nd_loop_t *loop, void *arg)
{
    chunk_t *c = arg;
    alog_worker_t *aw = &c->log->workers[c->worker];
    c->next = aw->free;
    aw->free = c;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    alog_worker_t *aw = arg;
    if (aw->cur && aw->cur->len > 0)
        post_chunk(aw);
}

/* A chunk with room for len more bytes, or NULL: all of them are at the writer. */
static chunk_t *room_for(netd_alog_t *a, alog_worker_t *aw, int index, size_t len)
{
    if (aw->cur && aw->cur->len + len <= ALOG_CHUNK)
        return aw->cur;
    if (aw->cur)
        post_chunk(aw);
    chunk_t *c = aw->free;
    if (c) {
        aw->free = c->next;
    } else if (aw->allocated < ALOG_CHUNKS && (c = malloc(sizeof(*c))) != NULL) {
        aw->allocated++;
        c->log = a;
        c->worker = index;
    }
    if (c)
        c->len = 0;
    aw->cur = c;
    return c;
}

void netd_alog_line(netd_alog_t *a, netd_worker_t *w, const char *line, size_t len)
{
    alog_worker_t *aw = &a->workers[w->index];
    chunk_t *c = len <= ALOG_CHUNK ? room_for(a, aw, w->index, len) : NULL;
    if (!c) {
        atomic_fetch_add_explicit(&w->obs.log_dropped, 1, memory_order_relaxed);
        return;
    }
    bool first = c->len == 0;
    memcpy(c->data + c->len, line, len);
    c->len += len;
    atomic_fetch_add_explicit(&w->obs.log_lines, 1, memory_order_relaxed);
    if (!first)
        return;
    /* The first line of a chunk starts the clock: lines reach the log within ~10 ms,
     * and a busy worker sends one message per chunk, not one per line. */
    if (!aw->flush_ev)
        aw->flush_ev = evtimer_new(nd_loop_base(w->loop), on_flush, aw);
    struct timeval tv = {0, (suseconds_t)ALOG_FLUSH_MS * 1000};
    if (aw->flush_ev)
        evtimer_add(aw->flush_ev, &tv);
    else
        post_chunk(aw);
}

/* ------------------------------------------------------------------ main loop */

static int open_log(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0640);
    if (fd >= 0)
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

netd_alog_t *netd_alog_start(netd_t *d, const char *path, int nworkers)
{
    netd_alog_t *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->d = d;
    a->fd = STDERR_FILENO;
    a->to_stderr = true;
    a->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (a->stop_fd < 0) {
        free(a);
        return NULL;
    }
    a->nworkers = nworkers;
    a->workers = calloc((size_t)nworkers, sizeof(*a->workers));
    if (!a->workers) {
        close(a->stop_fd);
        free(a);
        return NULL;
    }
    if (path) {
        a->fd = open_log(path);
        if (a->fd < 0) {
            netd_log(NETD_LOG_ERROR, "access log: cannot open %s: %s", path, strerror(errno));
            close(a->stop_fd);
            free(a->workers);
            free(a);
            return NULL;
        }
        a->to_stderr = false;
    }
    a->loop = nd_loop_new();
    a->thread = a->loop ? nd_thread_start(a->loop) : NULL;
    if (!a->thread) {
        netd_log(NETD_LOG_ERROR, "access log: cannot start the writer thread");
        if (a->loop)
            nd_loop_free(a->loop);
        if (!a->to_stderr)
            close(a->fd);
        close(a->stop_fd);
        free(a->workers);
        free(a);
        return NULL;
    }
    return a;
}

void netd_alog_reopen(netd_alog_t *a, const char *path)
{
    size_t n = path ? strlen(path) : 0;
    reopen_t *r = calloc(1, sizeof(*r) + n + 1);
    if (!r) {
        netd_log(NETD_LOG_ERROR, "access log: out of memory: not reopened");
        return;
    }
    r->log = a;
    if (n)
        memcpy(r->path, path, n + 1);
    nd_loop_post_msg(a->loop, &r->msg, do_reopen, r, free);
}

void netd_alog_stop(netd_alog_t *a)
{
    if (!a)
        return;
    /* The writer finishes what was posted before its stop (a stuck log: losing it after a
     * short wait); what the chunks' return trips leave in the workers' mailboxes goes when
     * those loops are freed. */
    atomic_store(&a->stopping, true);
    uint64_t one = 1;
    if (write(a->stop_fd, &one, sizeof(one)) < 0) { /* full: it is awake anyway */
    }
    nd_thread_stop(a->thread);
    nd_thread_join(a->thread);
    /* Every thread has ended: the lines the workers had not handed over yet are written
     * here, and their chunks freed. */
    for (int i = 0; i < a->nworkers; i++) {
        alog_worker_t *aw = &a->workers[i];
        if (aw->cur) {
            write_lines(a, aw->cur->data, aw->cur->len);
            free(aw->cur);
        }
        while (aw->free) {
            chunk_t *c = aw->free;
            aw->free = c->next;
            free(c);
        }
        if (aw->flush_ev)
            event_free(aw->flush_ev);
    }
    if (!a->to_stderr)
        close(a->fd);
    close(a->stop_fd);
    free(a->workers);
    free(a);
}
