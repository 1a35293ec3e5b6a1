/* SPDX-License-Identifier: MIT */
/*
 * Server groups: one owner-side server and a worker-side server per member loop, the
 * messages between their threads (create, free, listen and its reply, stop listening,
 * resume, the owner's check, handoff), the group's counts and moves between members.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * Every message holds a reference on the group (refs) from its post until it has run or
 * its loop dropped it. No message is ever lost to a failed allocation: create, free,
 * resume and the owner's check are embedded in the group; a stop is allocated with the
 * listen it undoes; a listen that cannot be allocated fails that listen ('error'); a
 * handoff that cannot be allocated closes its connections and counts them
 * (handoff_failed).
 */

static void hold(nd__group_t *g)
{
    atomic_fetch_add(&g->refs, 1);
}

void nd__group_release(nd__group_t *g)
{
    if (atomic_fetch_sub(&g->refs, 1) == 1) {
        for (int i = 0; i < g->n; i++)
            free(g->m[i].unlisten);
        pthread_mutex_destroy(&g->accept_lock);
        free(g->m);
        free(g);
    }
}

/* ------------------------------------------------------------------ member requests */

/* A member request whose loop was freed before running it. */
static void member_req_drop(void *arg)
{
    member_req_t *r = arg;
    nd__group_release(r->g);
}

/* r's g and index are set once, when it is made: a resume may be posted again while its
 * previous run still reads them. */
static void member_req_init(member_req_t *r, nd__group_t *g, int index)
{
    r->g = g;
    r->index = index;
}

static void member_req_post(member_req_t *r, void (*fn)(nd_loop_t *, void *), void (*drop)(void *))
{
    hold(r->g);
    nd__loop_post_node(r->g->m[r->index].loop, &r->node, fn, r, drop);
}

static void member_create_msg(nd_loop_t *loop, void *arg)
{
    member_req_t *r = arg;
    nd__group_t *g = r->g;
    nd_server_options_t opts = {.allow_half_open = g->allow_half_open};
    nd_server_t *ws = nd_server_new(loop, &opts, NULL, NULL);
    if (ws) {
        ws->group = g;
        ws->index = r->index;
        hold(g); /* dropped when ws is freed */
        g->m[r->index].server = ws;
        if (g->init)
            g->init(ws, r->index, g->init_arg);
    }
    nd__group_release(g);
}

/* Mailboxes are FIFO per sender: this runs before any handoff to that member. */
static void member_create_post(nd__group_t *g, int index)
{
    member_req_post(&g->m[index].create, member_create_msg, member_req_drop);
}

static void member_free_msg(nd_loop_t *loop, void *arg)
{
    member_req_t *r = arg;
    nd_server_t *ws = r->g->m[r->index].server;
    if (ws && ws->h.owned) {
        ws->h.owned = false;
        nd__handle_release(&ws->h);
    }
    nd__group_release(r->g);
}

static void member_free_post(nd__group_t *g, int index)
{
    member_req_post(&g->m[index].free, member_free_msg, member_req_drop);
}

void nd__group_owner_gone(nd__group_t *g)
{
    g->owner = NULL;
    for (int i = 0; i < g->n; i++) {
        member_free_post(g, i);
        nd_loop_unref_mp(g->m[i].loop);
    }
}

static void member_resume_msg(nd_loop_t *loop, void *arg)
{
    member_req_t *r = arg;
    nd__group_t *g = r->g;
    group_member_t *m = &g->m[r->index];
    /* Cleared first: a slot that comes free after this posts another resume. */
    atomic_store(&m->resume_queued, false);
    nd_server_t *ws = m->server;
    if (ws && ws->state == SRV_LISTENING && !ws->accepting && ws->fd >= 0) {
        event_del(&ws->backoff_ev);
        nd__server_start_accepting(ws);
    }
    nd__group_release(g);
}

static void member_resume_drop(void *arg)
{
    member_req_t *r = arg;
    atomic_store(&r->g->m[r->index].resume_queued, false);
    nd__group_release(r->g);
}

/* Any thread. One resume in flight is enough: it looks at the listener when it runs. */
static void member_resume_post(nd__group_t *g, int index)
{
    if (!atomic_exchange(&g->m[index].resume_queued, true))
        member_req_post(&g->m[index].resume, member_resume_msg, member_resume_drop);
}

static void member_unlisten_msg(nd_loop_t *loop, void *arg)
{
    member_req_t *r = arg;
    nd_server_t *ws = r->g->m[r->index].server;
    if (ws && ws->fd >= 0) {
        nd__server_stop_accepting(ws);
        close(ws->fd);
        ws->fd = -1;
        ws->state = SRV_IDLE;
    }
    nd__group_release(r->g);
    free(r);
}

static void member_unlisten_drop(void *arg)
{
    member_req_t *r = arg;
    nd__group_release(r->g);
    free(r);
}

/* Owner thread: the stop that undoes a listen is made before the listen is sent. Kept
 * until used, so a listen after a listen reuses it. */
static bool member_unlisten_prepare(nd__group_t *g, int index)
{
    if (!g->m[index].unlisten) {
        member_req_t *r = calloc(1, sizeof(*r));
        if (!r)
            return false;
        member_req_init(r, g, index);
        g->m[index].unlisten = r;
    }
    return true;
}

/* Sends the stops prepared for the members' listens: a member without one was never sent
 * a listener, and has nothing to stop. */
void nd__group_unlisten_members(nd__group_t *g)
{
    for (int i = 0; i < g->n; i++) {
        member_req_t *r = g->m[i].unlisten;
        if (!r)
            continue;
        g->m[i].unlisten = NULL;
        member_req_post(r, member_unlisten_msg, member_unlisten_drop);
    }
}

void nd__group_resume_acceptor(nd__group_t *g)
{
    member_resume_post(g, 0);
}

/* ------------------------------------------------------------------ the owner's check */

static void owner_check_msg(nd_loop_t *loop, void *arg)
{
    nd__group_t *g = arg;
    /* Cleared before anything is read (seq_cst): a change after this posts again. */
    atomic_store_explicit(&g->check.queued, false, memory_order_seq_cst);
    nd_server_t *owner = g->owner;
    if (owner) {
        nd__server_maybe_finish_close(owner);
        /* A slot came free: accept again if descriptors ran out. */
        if (owner->state == SRV_LISTENING && !owner->accepting && owner->fd >= 0 &&
            g->owner_accepts) {
            event_del(&owner->backoff_ev);
            nd__server_start_accepting(owner);
        }
    }
    nd__group_release(g);
}

static void owner_check_drop(void *arg)
{
    nd__group_t *g = arg;
    atomic_store(&g->check.queued, false);
    nd__group_release(g);
}

/* Any thread, after the change the owner should see. */
static void owner_check_post(nd__group_t *g)
{
    if (atomic_exchange_explicit(&g->check.queued, true, memory_order_seq_cst))
        return; /* one is queued and has not looked yet: it will see this change */
    hold(g);
    nd__loop_post_node(g->owner_loop, &g->check.node, owner_check_msg, g, owner_check_drop);
}

/* ------------------------------------------------------------------ counting */

bool nd__group_admit(nd__group_t *g, int index)
{
    if (atomic_load(&g->closing)) {
        atomic_fetch_add(&g->rejected, 1);
        return false;
    }
    int max = atomic_load_explicit(&g->max, memory_order_relaxed);
    int64_t cur = atomic_load(&g->live);
    do {
        if (max > 0 && cur >= max) {
            atomic_fetch_add(&g->rejected, 1);
            return false;
        }
    } while (!atomic_compare_exchange_weak(&g->live, &cur, cur + 1));
    atomic_fetch_add(&g->unclosed, 1);
    atomic_fetch_add(&g->accepted, 1);
    if (g->balance == ND_BALANCE_REUSEPORT)
        atomic_fetch_add(&g->m[index].live, 1); /* its own; the acceptor picks first */
    return true;
}

void nd__group_uncount_live(nd__group_t *g, int index)
{
    if (index >= 0)
        atomic_fetch_sub(&g->m[index].live, 1);
    atomic_fetch_sub_explicit(&g->live, 1, memory_order_seq_cst);
    if (atomic_load(&g->accept_paused)) {
        /* Whoever accepts may again: the owner (it checks that it is the one), and every
         * member with reuseport or the first with worker_accepts. */
        if (g->balance != ND_BALANCE_REUSEPORT)
            owner_check_post(g);
        int accepting = g->balance == ND_BALANCE_REUSEPORT ? g->n : g->shared ? 1 : 0;
        for (int i = 0; i < accepting; i++)
            member_resume_post(g, i);
    }
}

void nd__group_uncount_open(nd__group_t *g)
{
    int64_t left = atomic_fetch_sub_explicit(&g->unclosed, 1, memory_order_seq_cst) - 1;
    /* closing is set before unclosed is read (seq_cst): either the owner sees 0, or we see
     * closing and tell it. */
    if (left == 0 && atomic_load_explicit(&g->closing, memory_order_seq_cst))
        owner_check_post(g);
}

void nd__group_handoff_lost(nd__group_t *g, int index, int fd)
{
    close(fd);
    atomic_fetch_add(&g->handoff_failed, 1);
    nd__group_uncount_live(g, index);
    nd__group_uncount_open(g);
}

/* ------------------------------------------------------------------ creation */

ND_EXPORT nd_server_t *nd_server_new_group(nd_loop_t *owner, const nd_server_options_t *opts,
                                           nd_loop_t *const *workers, int nworkers,
                                           nd_balance_t balance, nd_worker_init_fn init, void *arg)
{
    if (!owner || !workers || nworkers <= 0 || (unsigned)balance > ND_BALANCE_REUSEPORT) {
        errno = EINVAL;
        return NULL;
    }
    for (int i = 0; i < nworkers; i++) {
        if (!workers[i]) {
            errno = EINVAL;
            return NULL;
        }
    }
    nd__group_t *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL; /* errno: ENOMEM */
    g->m = calloc((size_t)nworkers, sizeof(*g->m));
    nd_server_t *s = g->m ? nd_server_new(owner, opts, NULL, NULL) : NULL;
    if (!s) {
        free(g->m);
        free(g);
        errno = ENOMEM;
        return NULL;
    }
    g->owner = s;
    g->owner_loop = owner;
    g->balance = balance;
    g->n = nworkers;
    g->init = init;
    g->init_arg = arg;
    g->allow_half_open = opts && opts->allow_half_open;
    g->ipv6_only = opts && opts->ipv6_only;
    g->shared = opts && opts->worker_accepts && balance != ND_BALANCE_REUSEPORT;
    /* Recursive: a 'connection' listener on the acceptor's loop may export the listener
     * (a group whose owner is its first worker) while the acceptor holds it. */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&g->accept_lock, &ma);
    pthread_mutexattr_destroy(&ma);
    atomic_init(&g->refs, 1); /* the owner's */
    s->group = g;
    for (int i = 0; i < nworkers; i++) {
        g->m[i].loop = workers[i];
        member_req_init(&g->m[i].create, g, i);
        member_req_init(&g->m[i].free, g, i);
        member_req_init(&g->m[i].resume, g, i);
    }
    for (int i = 0; i < nworkers; i++) {
        nd_loop_ref_mp(workers[i]);
        member_create_post(g, i);
    }
    return s;
}

ND_EXPORT int nd_server_worker_index(const nd_server_t *s)
{
    return s && s->group ? s->index : -1;
}

ND_EXPORT int nd_balance_parse(const char *name)
{
    if (!name)
        return -EINVAL;
    if (!strcmp(name, "leastconn"))
        return ND_BALANCE_LEASTCONN;
    if (!strcmp(name, "roundrobin"))
        return ND_BALANCE_ROUNDROBIN;
    if (!strcmp(name, "reuseport"))
        return ND_BALANCE_REUSEPORT;
    return -EINVAL;
}

ND_EXPORT const char *nd_balance_name(nd_balance_t b)
{
    switch (b) {
    case ND_BALANCE_LEASTCONN:
        return "leastconn";
    case ND_BALANCE_ROUNDROBIN:
        return "roundrobin";
    case ND_BALANCE_REUSEPORT:
        return "reuseport";
    }
    return NULL;
}

/* ------------------------------------------------------------------ handoff */

/* The connections one wake of the acceptor gives one worker: one message and at most one
 * wakeup for all of them. The descriptors are the message's until the worker's server
 * takes them (deliver), or it is dropped (closed). */
typedef struct handoff_msg {
    nd__msg_t node; /* embedded: posting cannot fail */
    nd__group_t *g;
    int index, n;
    handoff_conn_t c[];
} handoff_msg_t;

static void handoff_msg(nd_loop_t *loop, void *arg)
{
    handoff_msg_t *msg = arg;
    nd__group_t *g = msg->g;
    for (int k = 0; k < msg->n; k++) {
        /* Looked up for each: a 'connection' listener cannot free the worker-side server
         * (only its group can), but reading it again costs nothing. */
        nd_server_t *ws = g->m[msg->index].server;
        handoff_conn_t *c = &msg->c[k];
        socklen_t plen = c->plen < sizeof(c->peer) ? c->plen : (socklen_t)sizeof(c->peer);
        if (ws) {
            ND__STAT_ADD(loop->stats.handed_off, 1);
            nd__server_deliver(ws, c->fd, &c->peer.sa, plen);
        } else {
            nd__group_handoff_lost(g, msg->index, c->fd);
        }
    }
    nd__group_release(g);
    free(msg);
}

/* The worker's loop was freed before the message ran (the process exits): the
 * descriptors are closed with it. */
static void handoff_drop(void *arg)
{
    handoff_msg_t *msg = arg;
    for (int k = 0; k < msg->n; k++)
        close(msg->c[k].fd);
    nd__group_release(msg->g);
    free(msg);
}

int nd__group_pick(nd__group_t *g)
{
    if (g->balance == ND_BALANCE_ROUNDROBIN)
        return (int)(atomic_fetch_add_explicit(&g->rr_next, 1, memory_order_relaxed) %
                     (unsigned)g->n);
    int best = 0;
    int64_t least = atomic_load_explicit(&g->m[0].live, memory_order_relaxed);
    for (int i = 1; i < g->n; i++) {
        int64_t v = atomic_load_explicit(&g->m[i].live, memory_order_relaxed);
        if (v < least) {
            least = v;
            best = i;
        }
    }
    return best;
}

/* One message per worker that gets any; every connection counts all along. A message
 * that cannot be allocated loses its connections the counted way (handoff_lost). */
void nd__group_hand_off(nd__group_t *g, const handoff_conn_t *conns, const int *member, int n)
{
    for (int i = 0; i < g->n; i++) {
        int count = 0;
        for (int k = 0; k < n; k++)
            count += member[k] == i;
        if (count == 0)
            continue;
        handoff_msg_t *msg = malloc(sizeof(*msg) + (size_t)count * sizeof(msg->c[0]));
        if (msg) {
            msg->index = i;
            msg->n = 0;
        }
        for (int k = 0; k < n; k++) {
            if (member[k] != i)
                continue;
            if (msg)
                msg->c[msg->n++] = conns[k];
            else
                nd__group_handoff_lost(g, i, conns[k].fd);
        }
        if (msg) {
            msg->g = g;
            hold(g);
            nd__loop_post_node(g->m[i].loop, &msg->node, handoff_msg, msg, handoff_drop);
        }
    }
}

/* ------------------------------------------------------------------ listening */

/* A member's listen, and on the way back its answer: one allocation, so that a member
 * that took the listen can always reply (the owner waits for every reply). */
typedef struct listen_req {
    nd__msg_t node;
    nd__group_t *g;
    int index;
    unsigned gen; /* the owner's listen_gen when sent: an older answer is ignored */
    int fd;       /* the listener to take, or -1 (reuseport: the member makes its own);
                     closed if the message is dropped */
    char ip[64];  /* reuseport without fd: the address to bind */
    int port, backlog;
    int err; /* the answer: 0 or -errno */
} listen_req_t;

static void listen_req_drop(void *arg)
{
    listen_req_t *r = arg;
    if (r->fd >= 0)
        close(r->fd);
    nd__group_release(r->g);
    free(r);
}

static void listen_reply_msg(nd_loop_t *loop, void *arg)
{
    listen_req_t *r = arg;
    nd__group_t *g = r->g;
    nd_server_t *s = g->owner;
    if (s && r->gen == g->listen_gen && s->state == SRV_LISTENING && g->rp_waiting > 0 &&
        g->balance != ND_BALANCE_REUSEPORT) {
        /* The acceptor's answer: 'listening' is out already; if it could not take the
         * listener, the owner accepts. */
        g->rp_waiting = 0;
        if (r->err) {
            g->owner_accepts = true;
            nd__server_start_accepting(s);
        }
    } else if (s && r->gen == g->listen_gen && s->state == SRV_LISTENING && g->rp_waiting > 0) {
        if (r->err && !g->rp_err)
            g->rp_err = r->err;
        if (--g->rp_waiting == 0) {
            if (g->rp_err) {
                nd__group_unlisten_members(g);
                nd__server_fail_listen(s, g->rp_err, "listen", s->host, s->port);
            } else {
                nd__handle_pend(&s->h, SP_LISTENING);
            }
        }
    }
    nd__group_release(g);
    free(r);
}

static int reuseport_socket(const char *ip, int port, bool v6only, int *out)
{
    nd__sockaddr_t sa;
    socklen_t len = nd__sockaddr_ip(&sa, ip, port, 0);
    if (!len)
        return -EINVAL;
    int fd = socket(sa.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (sa.sa.sa_family == AF_INET6) {
        int v = v6only;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v, sizeof(v));
    }
    if (bind(fd, &sa.sa, len) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    *out = fd;
    return 0;
}

static void member_listen_msg(nd_loop_t *loop, void *arg)
{
    listen_req_t *r = arg;
    nd__group_t *g = r->g;
    nd_server_t *ws = g->m[r->index].server;
    int err = ws ? 0 : -ENOMEM;
    if (ws && g->balance != ND_BALANCE_REUSEPORT) {
        /* The group's one listener: this member accepts for all of them. */
        if (ws->fd >= 0) {
            nd__server_stop_accepting(ws);
            close(ws->fd);
        }
        ws->fd = r->fd;
        r->fd = -1;
        ws->accept_gen = r->gen;
        ws->state = SRV_LISTENING;
        ws->exported = false; /* a new listener */
        nd__server_start_accepting(ws);
    } else if (ws && ws->fd < 0) {
        int fd = r->fd; /* handed over by another process (nd_server_listen_reuseport_fds) */
        r->fd = -1;
        err = fd >= 0 ? 0 : reuseport_socket(r->ip, r->port, g->ipv6_only, &fd);
        if (!err && listen(fd, r->backlog) != 0) {
            err = -errno;
            close(fd);
        }
        if (!err) {
            ws->fd = fd;
            ws->state = SRV_LISTENING;
            ws->exported = false; /* a new listener */
            nd__server_start_accepting(ws);
        }
    }
    if (r->fd >= 0) { /* not taken: no worker-side server to take it */
        close(r->fd);
        r->fd = -1;
    }
    /* The same message goes back with the answer, holding the same group reference. */
    r->err = err;
    nd__loop_post_node(g->owner_loop, &r->node, listen_reply_msg, r, listen_req_drop);
}

/* Owner thread. NULL when out of memory: the caller fails the listen or falls back. The
 * request owns fd from here (closed if it is NULL). */
static listen_req_t *listen_req_new(nd__group_t *g, int index, int fd)
{
    listen_req_t *r = member_unlisten_prepare(g, index) ? calloc(1, sizeof(*r)) : NULL;
    if (!r) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    r->g = g;
    r->index = index;
    r->gen = g->listen_gen;
    r->fd = fd;
    return r;
}

static void listen_req_post(nd__group_t *g, listen_req_t *r)
{
    hold(g);
    nd__loop_post_node(g->m[r->index].loop, &r->node, member_listen_msg, r, listen_req_drop);
}

/* worker_accepts (leastconn, roundrobin): the owner listens, and its acceptor (the first
 * member) accepts on a duplicate of the descriptor and hands each connection to the member
 * the policy picks, keeping those picked for itself: no thread is woken for a connection
 * but the one that serves it and, when that is another, the acceptor. */
int nd__group_share_listener(nd_server_t *s)
{
    nd__group_t *g = s->group;
    int fd = fcntl(s->fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    listen_req_t *r = listen_req_new(g, 0, fd);
    if (!r)
        return -1;
    g->rp_waiting = 1;
    g->rp_err = 0;
    /* listen_gen counts listens from 1: never 0, which means "none". */
    atomic_store(&g->accept_gen, g->listen_gen);
    listen_req_post(g, r);
    return 0;
}

/* The owner holds the port with a bound, never-listening socket (so port 0 resolves to one
 * port for everyone); the members listen on it and accept by themselves. member_fds: the
 * members' listening descriptors handed over by another process, or NULL. A member whose
 * listen cannot be sent counts as failed (ENOMEM): the listen fails with 'error'. */
static void start_reuseport(nd_server_t *s, int fd, const char *ip, const int *member_fds)
{
    nd__group_t *g = s->group;
    s->fd = fd;
    nd__sockaddr_t sa;
    socklen_t len = sizeof(sa);
    getsockname(fd, &sa.sa, &len);
    nd_address_t a;
    nd__address_from(&a, &sa.sa, len);
    snprintf(s->host, sizeof(s->host), "%s", ip);
    s->state = SRV_LISTENING;
    g->rp_waiting = g->n;
    g->rp_err = 0;
    for (int i = 0; i < g->n; i++) {
        listen_req_t *r = listen_req_new(g, i, member_fds ? member_fds[i] : -1);
        if (!r) {
            g->rp_waiting--;
            g->rp_err = -ENOMEM;
            continue;
        }
        r->port = a.port;
        r->backlog = s->backlog;
        memcpy(r->ip, a.address, sizeof(r->ip) - 1); /* an IP literal fits */
        listen_req_post(g, r);
    }
    if (g->rp_waiting == 0) { /* none was sent: no answer will come to fail it */
        nd__group_unlisten_members(g);
        nd__server_fail_listen(s, g->rp_err, "listen", s->host, s->port);
        return;
    }
    nd__server_update_active(s);
}

void nd__group_listen_reuseport(nd_server_t *s, const char *ip, int port)
{
    nd__group_t *g = s->group;
    int fd = -1;
    int err = reuseport_socket(ip, port, g->ipv6_only, &fd);
    if (err) {
        nd__server_fail_listen(s, err, "listen", ip, port);
        return;
    }
    start_reuseport(s, fd, ip, NULL);
}

ND_EXPORT int nd_server_listen_reuseport_fds(nd_server_t *s, int owner_fd, const int *member_fds,
                                             int n, int backlog)
{
    if (!s || owner_fd < 0 || !member_fds || !nd__group_is_owner(s) ||
        s->group->balance != ND_BALANCE_REUSEPORT || n != s->group->n)
        return -EINVAL;
    int rc = nd__server_check_can_listen(s);
    if (rc)
        return rc;
    nd__server_restart(s, backlog);
    nd__set_nonblock_cloexec(owner_fd);
    for (int i = 0; i < n; i++)
        nd__set_nonblock_cloexec(member_fds[i]);
    nd__sockaddr_t sa;
    socklen_t len = sizeof(sa);
    if (getsockname(owner_fd, &sa.sa, &len) != 0)
        return -errno;
    nd_address_t a;
    nd__address_from(&a, &sa.sa, len);
    s->port = a.port;
    start_reuseport(s, owner_fd, a.address, member_fds);
    return 0;
}

/* Once the lock is ours the acceptor has posted all it took and takes no more: whatever
 * this thread posts to a worker from now on arrives after those connections. */
void nd__group_stop_acceptor(nd__group_t *g)
{
    pthread_mutex_lock(&g->accept_lock);
    atomic_store(&g->accept_gen, 0);
    pthread_mutex_unlock(&g->accept_lock);
}

/* ------------------------------------------------------------------ moves between members */

int nd__server_member_of(const nd_server_t *ws, const nd_loop_t *target)
{
    if (!ws->group || ws->index < 0)
        return -EXDEV;
    for (int i = 0; i < ws->group->n; i++)
        if (ws->group->m[i].loop == target)
            return i;
    return -EXDEV;
}

void nd__server_move_out(nd_server_t *ws, int to)
{
    nd__group_t *g = ws->group;
    ws->nconn--;
    ND__STAT_ADD(ws->h.loop->stats.connections, -1);
    atomic_fetch_add(&g->m[to].live, 1);
    atomic_fetch_sub(&g->m[ws->index].live, 1);
}

nd_server_t *nd__server_move_in(nd_server_t *old_ws, int to)
{
    /* The group pointer never changes and the message's lock published it. */
    nd_server_t *ws = old_ws->group->m[to].server;
    ws->nconn++;
    ND__STAT_ADD(ws->h.loop->stats.connections, 1);
    return ws;
}

void nd__server_emit_adopt(nd_server_t *ws, nd_socket_t *sock)
{
    nd_event_t ev = {.type = ND_EV_ADOPT, .socket = sock};
    nd__handle_retain(&ws->h);
    nd__emit(&ws->h.em, ws, &ev);
    nd__handle_release(&ws->h);
}
