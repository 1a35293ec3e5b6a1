/* SPDX-License-Identifier: MIT */
/*
 * The commands on live sockets: `sockets`, `destroy`, `move` and `rebalance`. Workers
 * answer with typed slots (copies of their records); the main loop merges them with the
 * moves in flight, so a socket between two workers is listed, destroyed and counted too.
 */
#include "config.h"

#include "commands.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A growable array of socket copies: one worker's slot. */
typedef struct info_vec {
    size_t n, cap;
    netd_sockinfo_t *v;
} info_vec_t;

static netd_sockinfo_t *info_push(info_vec_t *vec)
{
    if (vec->n == vec->cap) {
        size_t cap = vec->cap ? vec->cap * 2 : 16;
        netd_sockinfo_t *v = realloc(vec->v, cap * sizeof(*v));
        if (!v)
            return NULL;
        vec->v = v;
        vec->cap = cap;
    }
    return &vec->v[vec->n++];
}

static void info_vecs_free(info_vec_t *vecs, int n)
{
    for (int i = 0; vecs && i < n; i++)
        free(vecs[i].v);
    free(vecs);
}

static bool socket_id_arg(netd_client_t *c, json_t *req, json_t *id, uint64_t *out)
{
    json_int_t v = json_integer_value(json_object_get(req, "socket"));
    if (v <= 0) {
        netd_reply_error(c, id, NETD_EARG, "socket: must be a socket id (1 or more)");
        return false;
    }
    *out = (uint64_t)v;
    return true;
}

/* ------------------------------------------------------------------ sockets */

typedef struct sockets_q {
    netd_pending_t *p;
    uint64_t server_id; /* 0: all */
    int role;           /* -1: all */
    long long limit, older, idle;
    netd_peer_filter_t peer;
    enum netd_sock_sort sort;
    uint64_t begin; /* moves retired after this are still listed */
    info_vec_t *slots;
    info_vec_t all; /* main loop: the merge */
} sockets_q_t;

static bool matches(const sockets_q_t *q, const netd_sockinfo_t *i)
{
    if (q->server_id && i->server != q->server_id)
        return false;
    if (q->role >= 0 && (int)i->role != q->role)
        return false;
    if (q->older && i->age_ms <= (uint64_t)q->older)
        return false;
    if (q->idle && i->idle_ms <= (uint64_t)q->idle)
        return false;
    return netd_peer_filter_match(&q->peer, i);
}

static void collect_sockets(netd_worker_t *w, void *arg)
{
    sockets_q_t *q = arg;
    info_vec_t *slot = &q->slots[w->index];
    netd_conn_t *c;
    TAILQ_FOREACH(c, &w->conns, link) {
        netd_sockinfo_t info;
        netd_sockinfo_of(c, &info);
        if (!matches(q, &info))
            continue;
        netd_sockinfo_t *e = info_push(slot);
        if (e)
            *e = info;
    }
}

static void add_moving(const netd_move_t *m, void *arg)
{
    sockets_q_t *q = arg;
    if (!matches(q, &m->listed))
        return;
    netd_sockinfo_t *e = info_push(&q->all);
    if (e)
        *e = m->listed;
}

/* By id; for one id, what a worker holds comes before the copy of a move. */
static int by_id(const void *a, const void *b)
{
    const netd_sockinfo_t *x = a, *y = b;
    if (x->id != y->id)
        return x->id < y->id ? -1 : 1;
    return (int)x->moving - (int)y->moving;
}

static void sockets_done(netd_t *d, void *arg)
{
    sockets_q_t *q = arg;
    for (int i = 0; i < d->nworkers; i++) {
        for (size_t k = 0; k < q->slots[i].n; k++) {
            netd_sockinfo_t *e = info_push(&q->all);
            if (e)
                *e = q->slots[i].v[k];
        }
    }
    /* A socket in transit when its source answered, and not yet there when its target
     * did, is in no worker's answer: the move registry lists it. */
    netd_moves_foreach_since(d, q->begin, add_moving, q);
    netd_moves_query_end(d, q->begin);
    if (q->all.n)
        qsort(q->all.v, q->all.n, sizeof(*q->all.v), by_id);
    size_t total = 0;
    for (size_t i = 0; i < q->all.n; i++)
        if (i == 0 || q->all.v[i].id != q->all.v[i - 1].id) /* seen by its source or target */
            q->all.v[total++] = q->all.v[i];                /* and by the registry: once */
    netd_sockinfo_sort(q->all.v, total, q->sort);
    json_t *arr = json_array();
    for (size_t i = 0; i < total && (long long)i < q->limit; i++)
        json_array_append_new(arr, netd_sockinfo_json(&q->all.v[i]));
    netd_pending_ok(q->p, json_pack("{s:o, s:I}", "sockets", arr, "total", (json_int_t)total));
    info_vecs_free(q->slots, d->nworkers);
    free(q->all.v);
    free(q);
}

void netd_cmd_sockets(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    uint64_t sid;
    if (!netd_cmd_optional_server(d, c, req, id, &sid))
        return;
    long long limit, older, idle;
    if (!netd_cmd_nonneg_arg(c, req, id, "limit", &limit, 1000) ||
        !netd_cmd_nonneg_arg(c, req, id, "olderThanMs", &older, 0) ||
        !netd_cmd_nonneg_arg(c, req, id, "idleMoreThanMs", &idle, 0))
        return;
    int role = NETD_ROLE_CLIENT;
    json_t *rv = json_object_get(req, "role");
    if (rv) {
        const char *r = json_string_value(rv);
        if (strcmp(r, "client") == 0)
            role = NETD_ROLE_CLIENT;
        else if (strcmp(r, "upstream") == 0)
            role = NETD_ROLE_UPSTREAM;
        else if (strcmp(r, "all") == 0)
            role = -1;
        else {
            netd_reply_error(c, id, NETD_EARG, "role: must be \"client\", \"upstream\" or \"all\"");
            return;
        }
    }
    netd_peer_filter_t peer = {0};
    json_t *pv = json_object_get(req, "peer");
    if (pv && netd_peer_filter_parse(json_string_value(pv), &peer) != 0) {
        netd_reply_error(c, id, NETD_EARG, "peer: must be ADDRESS, IPV4:PORT or [IPV6]:PORT");
        return;
    }
    json_t *sv = json_object_get(req, "sort");
    int sort = sv ? netd_sock_sort_parse(json_string_value(sv)) : NETD_SORT_ID;
    if (sort < 0) {
        netd_reply_error(c, id, NETD_EARG, "sort: must be \"bytes\", \"age\" or \"idle\"");
        return;
    }
    sockets_q_t *q = calloc(1, sizeof(*q));
    info_vec_t *slots = calloc((size_t)d->nworkers, sizeof(*slots));
    netd_pending_t *p = netd_cmd_pending(c, id, q, slots);
    if (!p)
        return;
    q->p = p;
    q->slots = slots;
    q->server_id = sid;
    q->limit = limit;
    q->older = older;
    q->idle = idle;
    q->role = role;
    q->peer = peer;
    q->sort = (enum netd_sock_sort)sort;
    q->begin = netd_moves_query_begin(d);
    if (netd_fanout(d, collect_sockets, sockets_done, q) != 0) {
        netd_moves_query_end(d, q->begin);
        netd_pending_error(p, "ENOMEM", "out of memory");
        free(slots);
        free(q);
    }
}

/* ------------------------------------------------------------------ destroy */

typedef struct destroy_q {
    netd_pending_t *p;
    uint64_t socket_id;
    bool *found; /* per worker */
} destroy_q_t;

static void destroy_one(netd_worker_t *w, void *arg)
{
    destroy_q_t *q = arg;
    netd_conn_t *c = netd_worker_find(w, q->socket_id);
    if (c) {
        netd_obs_end(c, NETD_END_DESTROY);
        nd_socket_destroy(c->sock);
        q->found[w->index] = true;
    }
}

static void destroy_done(netd_t *d, void *arg)
{
    destroy_q_t *q = arg;
    bool found = false;
    for (int i = 0; i < d->nworkers; i++)
        found = found || q->found[i];
    if (found)
        netd_pending_ok(q->p, json_pack("{s:i}", "destroyed", 1));
    else
        netd_pending_error(q->p, NETD_ENOSOCKET, "no socket with id %llu",
                           (unsigned long long)q->socket_id);
    free(q->found);
    free(q);
}

void netd_destroy_socket(netd_t *d, netd_pending_t *p, uint64_t socket_id)
{
    /* In transit: destroyed where it lands (moves.c runs this again on arrival). */
    netd_move_t *m = netd_move_find(d, socket_id);
    if (m) {
        TAILQ_INSERT_TAIL(&m->destroys, p, link);
        return;
    }
    destroy_q_t *q = calloc(1, sizeof(*q));
    bool *found = calloc((size_t)d->nworkers, sizeof(bool));
    if (!q || !found) {
        free(q);
        free(found);
        netd_pending_error(p, "ENOMEM", "out of memory");
        return;
    }
    q->p = p;
    q->socket_id = socket_id;
    q->found = found;
    if (netd_fanout(d, destroy_one, destroy_done, q) != 0) {
        netd_pending_error(p, "ENOMEM", "out of memory");
        free(found);
        free(q);
    }
}

void netd_cmd_destroy(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    uint64_t sid;
    if (!socket_id_arg(c, req, id, &sid))
        return;
    netd_pending_t *p = netd_pending_new(c, id);
    if (p)
        netd_destroy_socket(d, p, sid);
}

/* ------------------------------------------------------------------ move */

typedef struct move_q {
    netd_pending_t *p;
    uint64_t socket_id;
    int thread;
    int lookups; /* a socket found where it just left is looked for again */
    struct located {
        bool found;
        netd_sockinfo_t info;
    } * slots;
} move_q_t;

static void move_q_free(move_q_t *q)
{
    free(q->slots);
    free(q);
}

static void locate_one(netd_worker_t *w, void *arg)
{
    move_q_t *q = arg;
    netd_conn_t *c = netd_worker_find(w, q->socket_id);
    if (c) {
        q->slots[w->index].found = true;
        netd_sockinfo_of(c, &q->slots[w->index].info);
    }
}

static void located(netd_t *d, void *arg);

static void move_arrived(netd_t *d, netd_move_t *m, void *arg)
{
    move_q_t *q = arg;
    if (m->rc == -ESRCH && q->lookups < 3) {
        /* It left its worker before this move began: find it again. */
        memset(q->slots, 0, (size_t)d->nworkers * sizeof(*q->slots));
        q->lookups++;
        if (netd_fanout(d, locate_one, located, q) == 0)
            return;
    }
    if (m->rc == 0)
        netd_pending_ok(q->p, json_pack("{s:o}", "socket", netd_sockinfo_json(&m->arrived)));
    else if (m->rc == ND_ECLOSED || m->rc == -ESRCH)
        netd_pending_error(q->p, NETD_ENOSOCKET, "socket %llu closed before it moved",
                           (unsigned long long)q->socket_id);
    else if (m->rc == -EBUSY)
        netd_pending_error(
            q->p, NETD_EBUSY,
            "socket %llu cannot move now (connecting, or piped to a socket that is not its pair)",
            (unsigned long long)q->socket_id);
    else
        netd_pending_error(q->p, nd_err_name(m->rc), "%s", nd_strerror(m->rc));
    move_q_free(q);
}

static void located(netd_t *d, void *arg)
{
    move_q_t *q = arg;
    const netd_sockinfo_t *info = NULL;
    for (int i = 0; i < d->nworkers; i++)
        if (q->slots[i].found)
            info = &q->slots[i].info;
    if (!info) {
        netd_pending_error(q->p, NETD_ENOSOCKET, "no socket with id %llu",
                           (unsigned long long)q->socket_id);
        move_q_free(q);
        return;
    }
    /* Only the main loop starts moves: nothing else can have moved it meanwhile, but a
     * `rebalance` may have started one. */
    if (netd_move_find(d, q->socket_id)) {
        netd_pending_error(q->p, NETD_EBUSY, "socket %llu is moving",
                           (unsigned long long)q->socket_id);
        move_q_free(q);
        return;
    }
    if (info->thread == q->thread) {
        netd_pending_ok(q->p, json_pack("{s:o}", "socket", netd_sockinfo_json(info)));
        move_q_free(q);
        return;
    }
    netd_move_t *m = netd_move_new(d, info, q->thread, move_arrived, q);
    if (!m) {
        netd_pending_error(q->p, "ENOMEM", "out of memory");
        move_q_free(q);
        return;
    }
    netd_move_start(d, m);
}

void netd_cmd_move(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    uint64_t sid;
    if (!socket_id_arg(c, req, id, &sid))
        return;
    json_int_t t = json_integer_value(json_object_get(req, "thread"));
    if (t < 0 || t >= d->nworkers) {
        netd_reply_error(c, id, NETD_EARG, "thread: must be 0-%d", d->nworkers - 1);
        return;
    }
    if (netd_move_find(d, sid)) {
        netd_reply_error(c, id, NETD_EBUSY, "socket %llu is moving", (unsigned long long)sid);
        return;
    }
    move_q_t *q = calloc(1, sizeof(*q));
    struct located *slots = calloc((size_t)d->nworkers, sizeof(*slots));
    netd_pending_t *p = netd_cmd_pending(c, id, q, slots);
    if (!p)
        return;
    q->p = p;
    q->socket_id = sid;
    q->thread = (int)t;
    q->slots = slots;
    if (netd_fanout(d, locate_one, located, q) != 0) {
        netd_pending_error(p, "ENOMEM", "out of memory");
        move_q_free(q);
    }
}

/* ---- rebalance: count per thread, plan moves from the fullest to the emptiest ---- */

typedef struct rebalance {
    netd_pending_t *p;
    uint64_t server_id;
    info_vec_t *slots;
    int pending; /* moves started and not yet back */
    int moved;
} rebalance_t;

static void collect_movable(netd_worker_t *w, void *arg)
{
    rebalance_t *rb = arg;
    netd_conn_t *c;
    TAILQ_FOREACH(c, &w->conns, link) {
        if (c->role != NETD_ROLE_CLIENT || (rb->server_id && c->server->id != rb->server_id))
            continue;
        netd_sockinfo_t *e = info_push(&rb->slots[w->index]);
        if (e)
            netd_sockinfo_of(c, e);
    }
}

static void rebalance_reply(netd_t *d, rebalance_t *rb)
{
    netd_pending_ok(rb->p, json_pack("{s:i}", "moved", rb->moved));
    info_vecs_free(rb->slots, d->nworkers);
    free(rb);
}

static void rebalance_one_done(netd_t *d, netd_move_t *m, void *arg)
{
    rebalance_t *rb = arg;
    if (m->rc == 0)
        rb->moved++;
    if (--rb->pending == 0)
        rebalance_reply(d, rb);
}

static void rebalance_counted(netd_t *d, void *arg)
{
    rebalance_t *rb = arg;
    int n = d->nworkers;
    int *count = calloc((size_t)n, sizeof(int));
    size_t *next = calloc((size_t)n, sizeof(size_t));
    if (!count || !next) {
        free(count);
        free(next);
        netd_pending_error(rb->p, "ENOMEM", "out of memory");
        info_vecs_free(rb->slots, n);
        free(rb);
        return;
    }
    for (int i = 0; i < n; i++)
        count[i] = (int)rb->slots[i].n;
    /* Greedy: one connection from the fullest to the emptiest until they differ by at most
     * one, so no thread holds more than one above the mean. */
    rb->pending = 1; /* held while the moves start: none may finish the reply early */
    for (;;) {
        int hi = 0, lo = 0;
        for (int i = 1; i < n; i++) {
            if (count[i] > count[hi])
                hi = i;
            if (count[i] < count[lo])
                lo = i;
        }
        if (count[hi] - count[lo] <= 1 || next[hi] >= rb->slots[hi].n)
            break;
        const netd_sockinfo_t *info = &rb->slots[hi].v[next[hi]++];
        count[hi]--;
        count[lo]++;
        if (netd_move_find(d, info->id))
            continue; /* already moving (a `move` in flight): it counts where it goes */
        netd_move_t *m = netd_move_new(d, info, lo, rebalance_one_done, rb);
        if (!m)
            continue;
        rb->pending++;
        netd_move_start(d, m);
    }
    free(count);
    free(next);
    /* Completions come through the main loop's mailbox, so none has run yet. */
    if (--rb->pending == 0)
        rebalance_reply(d, rb);
}

void netd_cmd_rebalance(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    uint64_t sid;
    if (!netd_cmd_optional_server(d, c, req, id, &sid))
        return;
    rebalance_t *rb = calloc(1, sizeof(*rb));
    info_vec_t *slots = calloc((size_t)d->nworkers, sizeof(*slots));
    netd_pending_t *p = netd_cmd_pending(c, id, rb, slots);
    if (!p)
        return;
    rb->p = p;
    rb->server_id = sid;
    rb->slots = slots;
    if (netd_fanout(d, collect_movable, rebalance_counted, rb) != 0) {
        netd_pending_error(p, "ENOMEM", "out of memory");
        free(slots);
        free(rb);
    }
}
