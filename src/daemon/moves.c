/* SPDX-License-Identifier: MIT */
/*
 * Moving live sockets between workers (`move`, `rebalance`): the main loop's registry of
 * moves in flight, and the worker side that hands a socket's records to the library's
 * move and takes them back on the target. The ownership of a netd_move_t passes along
 * its hops (daemon.h); its registry fields belong to the main loop alone.
 */
#include "config.h"

#include "daemon.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ registry (main) */

netd_move_t *netd_move_new(netd_t *d, const netd_sockinfo_t *info, int to,
                           void (*done)(netd_t *d, netd_move_t *m, void *arg), void *arg)
{
    netd_move_t *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->d = d;
    m->socket_id = info->id;
    m->from = info->thread;
    m->to = to;
    m->listed = *info;
    m->listed.moving = true;
    m->listed.thread = to; /* CONTROL.md: a socket in transit shows its target */
    m->done = done;
    m->arg = arg;
    TAILQ_INIT(&m->destroys);
    return m;
}

netd_move_t *netd_move_find(netd_t *d, uint64_t socket_id)
{
    netd_move_t *m;
    TAILQ_FOREACH(m, &d->moves, link)
        if (m->socket_id == socket_id)
            return m;
    return NULL;
}

/* A retired move is kept while a `sockets` query that began before it retired waits. */
static void reclaim(netd_t *d)
{
    uint64_t oldest = d->move_seq + 1;
    for (size_t i = 0; i < d->move_queries.n; i++)
        if (d->move_queries.begin[i] < oldest)
            oldest = d->move_queries.begin[i];
    netd_move_t *m, *next;
    for (m = TAILQ_FIRST(&d->moves_retired); m; m = next) {
        next = TAILQ_NEXT(m, link);
        if (m->retired_seq <= oldest) {
            TAILQ_REMOVE(&d->moves_retired, m, link);
            free(m);
        }
    }
}

uint64_t netd_moves_query_begin(netd_t *d)
{
    struct queries *q = &d->move_queries;
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 8;
        uint64_t *b = realloc(q->begin, cap * sizeof(*b));
        if (!b)
            return d->move_seq; /* not remembered: retired moves may be freed early */
        q->begin = b;
        q->cap = cap;
    }
    q->begin[q->n++] = d->move_seq;
    return d->move_seq;
}

void netd_moves_query_end(netd_t *d, uint64_t begin)
{
    struct queries *q = &d->move_queries;
    for (size_t i = 0; i < q->n; i++) {
        if (q->begin[i] == begin) {
            q->begin[i] = q->begin[--q->n];
            break;
        }
    }
    reclaim(d);
}

void netd_moves_foreach_since(netd_t *d, uint64_t begin,
                              void (*fn)(const netd_move_t *m, void *arg), void *arg)
{
    const netd_move_t *m;
    TAILQ_FOREACH(m, &d->moves, link)
        fn(m, arg);
    TAILQ_FOREACH(m, &d->moves_retired, link)
        if (m->retired_seq > begin)
            fn(m, arg);
}

void netd_moves_free_all(netd_t *d)
{
    netd_move_t *m;
    /* Moves still in flight when the exit's wait ran out: their sockets went with the
     * worker loops; the records they carried go here. */
    while ((m = TAILQ_FIRST(&d->moves)) != NULL) {
        TAILQ_REMOVE(&d->moves, m, link);
        for (int i = 0; i < 2; i++) {
            if (m->conns[i]) {
                netd_server_release(m->conns[i]->server);
                free(m->conns[i]);
            }
        }
        free(m);
    }
    while ((m = TAILQ_FIRST(&d->moves_retired)) != NULL) {
        TAILQ_REMOVE(&d->moves_retired, m, link);
        free(m);
    }
    free(d->move_queries.begin);
    d->move_queries.begin = NULL;
    d->move_queries.n = d->move_queries.cap = 0;
}

/* Main loop: the move arrived or failed. */
static void move_completed(nd_loop_t *loop, void *arg)
{
    netd_move_t *m = arg;
    netd_t *d = m->d;
    TAILQ_REMOVE(&d->moves, m, link);
    m->retired_seq = ++d->move_seq;
    TAILQ_INSERT_TAIL(&d->moves_retired, m, link);
    m->done(d, m, m->arg);
    /* `destroy` requests that found it in transit run again, now that it has a home. */
    netd_pending_t *p;
    while ((p = TAILQ_FIRST(&m->destroys)) != NULL) {
        TAILQ_REMOVE(&m->destroys, p, link);
        netd_destroy_socket(d, p, m->socket_id);
    }
    reclaim(d);
}

/* A worker loop freed with the move still queued (exit). The socket itself belongs to
 * that loop by now and is freed with it. */
static void move_dropped(void *arg)
{
    (void)arg; /* the main loop's registry frees m (netd_moves_free_all does not run for
                  in-flight moves: finish() waits for them) */
}

static void complete(netd_move_t *m)
{
    nd_loop_post_msg(m->d->loop, &m->msg, move_completed, m, NULL);
}

/* ------------------------------------------------------------------ on the workers */

/*
 * The library tells each phase on the thread where it happens. The records follow their
 * sockets: out of the source's list when they leave (with the pair only if the library
 * moves the pair: an upstream torn down in the same turn stays behind, unpaired), into
 * the target's when they arrive.
 */
static void on_move(nd_socket_t *sock, nd_move_phase_t phase, int err, void *arg)
{
    netd_move_t *m = arg;
    netd_worker_t *from = &m->d->workers[m->from];
    netd_worker_t *to = &m->d->workers[m->to];
    if (phase == ND_MOVE_DETACHED) {
        netd_conn_t *c = nd_socket_data(sock);
        netd_conn_t *pair = c->pair;
        nd_socket_t *peer = nd_socket_pipe_peer(sock);
        if (pair && (!peer || pair->sock != peer)) {
            /* The upstream stays (it is closing): the two records part here, on the one
             * thread that still holds both, so neither later touches the other. */
            pair->pair = NULL;
            c->pair = NULL;
            pair = NULL;
        }
        m->conns[0] = c;
        m->conns[1] = pair;
        netd_obs_move_out(from, c);
        netd_obs_move_out(from, pair);
        for (int i = 0; i < 2; i++)
            if (m->conns[i])
                netd_worker_remove(m->conns[i]);
        return;
    }
    if (phase == ND_MOVE_ADOPTED) {
        /* The records belong to the target's list from here: m lets go of them. */
        netd_conn_t *c = m->conns[0], *pair = m->conns[1];
        m->conns[0] = m->conns[1] = NULL;
        netd_worker_insert(to, c);
        if (pair)
            netd_worker_insert(to, pair);
        netd_obs_move_in(to, c);
        netd_obs_move_in(to, pair);
        /* The reply describes the socket that was asked for, either half of a pair. */
        netd_sockinfo_of(pair && pair->id == m->socket_id ? pair : c, &m->arrived);
        m->rc = 0;
        netd_log(NETD_LOG_DEBUG, "socket %llu moved from thread %d to thread %d",
                 (unsigned long long)c->id, m->from, to->index);
        netd_worker_adopted(to, c);
        complete(m);
        return;
    }
    m->rc = err; /* FAILED: the socket may be gone already; never touch it */
    complete(m);
}

/* Source worker: the start message. The socket is found again by id: it may have closed
 * since the main loop looked. */
static void move_begin(nd_loop_t *loop, void *arg)
{
    netd_move_t *m = arg;
    netd_worker_t *w = &m->d->workers[m->from];
    netd_conn_t *c = netd_worker_find(w, m->socket_id);
    if (!c) {
        /* Closed, or moved on by a move that was in flight when the main loop looked:
         * the main loop looks again (-ESRCH: not here). */
        m->rc = -ESRCH;
        complete(m);
        return;
    }
    if (c->role == NETD_ROLE_UPSTREAM && c->pair)
        c = c->pair; /* a pair moves from its client side */
    int rc = nd_socket_move_notify(c->sock, m->d->workers[m->to].loop, on_move, m);
    if (rc != 0) {
        if (rc == -EALREADY) { /* cannot happen: from != to; answer as arrived */
            netd_sockinfo_of(c, &m->arrived);
            rc = 0;
        }
        m->rc = rc;
        complete(m);
    }
}

void netd_move_start(netd_t *d, netd_move_t *m)
{
    TAILQ_INSERT_TAIL(&d->moves, m, link);
    nd_loop_post_msg(d->workers[m->from].loop, &m->msg, move_begin, m, move_dropped);
}
