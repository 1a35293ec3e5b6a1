/* SPDX-License-Identifier: MIT */
/*
 * The live upgrade (DESIGN.md 2b), the old process's side: a new netd binary takes over
 * the control socket, every listener and every established connection of the running
 * one, over a SOCK_SEQPACKET channel (handover.c). The new side is takeover.c.
 *
 * Old process: starts the new binary with the channel (NETD_UPGRADE_FD) and waits for
 * its "ready"; holds control requests back until nothing is in flight; parks and exports
 * the control socket, the servers' listeners and every connection (each worker its own,
 * on its own thread); sends them in batches of at most 253 descriptors, each
 * acknowledged; then "commit". On "committed" it lets go of everything and exits 0. On
 * any failure before that (the binary does not start, speaks another protocol, dies,
 * times out) every export is aborted and it goes on serving: it never closed a thing.
 * */
#include "config.h"

#include "daemon.h"
#include "handover.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <event2/event.h>

extern char **environ;

void netd_upgrade_init(netd_t *d, int argc, char **argv)
{
    d->argv = calloc((size_t)argc + 1, sizeof(char *));
    for (int i = 0; d->argv && i < argc; i++)
        d->argv[i] = strdup(argv[i]);
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n > 0) {
        buf[n] = '\0';
        d->exe = strdup(buf);
    }
}

/* ================================================================== old side */

typedef struct ho_item { /* one exported record: a socket, or a proxy pair */
    nd_export_t ex;
    netd_conn_t *conns[2]; /* the worker's records: touched by that worker only */
    int n;
    uint64_t ids[2], server;
    int roles[2];
    uint64_t age_ms[2];
} ho_item_t;

typedef struct ho_member { /* a reuseport worker's own listener */
    netd_server_t *srv;
    int fd;
} ho_member_t;

typedef struct upgrade upgrade_t;

typedef struct ho_slot { /* one worker's part, filled on that worker */
    nd_msg_t msg;
    upgrade_t *u;
    int index;
    ho_item_t *items;
    size_t n, cap;
    ho_member_t *members;
    size_t nmembers;
    int busy; /* sockets not quiet when it gave up */
    int err;
    struct event *retry;
} ho_slot_t;

typedef struct ho_server {
    netd_server_t *s;
    int fd;
} ho_server_t;

struct upgrade {
    netd_t *d;
    netd_pending_t *p; /* the `upgrade` request, or NULL (SIGUSR2) */
    pid_t child;
    int ch;
    struct event *ch_ev, *timer;
    uint64_t t0_wall, deadline;
    enum { U_STARTING, U_SETTLING, U_EXPORTING, U_SENDING } stage;
    bool exported;
    int control_fd;
    netd_client_export_t *clients;
    size_t nclients;
    ho_server_t *srv;
    size_t nsrv;
    netd_server_t **rp; /* reuseport servers, for the workers */
    size_t nrp;
    ho_slot_t *slots;
    int slots_out;
    uint64_t batch, acked;
    const char *cancel; /* why it must stop (SIGTERM), set while the workers export */
};

/* -vv: how long each step took, from the request on. */
static void step(upgrade_t *u, const char *what)
{
    netd_log(NETD_LOG_DEBUG, "upgrade: %s at +%llu ms", what,
             (unsigned long long)(netd_wall_ms() - u->t0_wall));
}

static void upgrade_free(upgrade_t *u)
{
    if (u->ch_ev)
        event_free(u->ch_ev);
    if (u->timer)
        event_free(u->timer);
    if (u->ch >= 0)
        close(u->ch);
    for (int i = 0; u->slots && i < u->d->nworkers; i++) {
        free(u->slots[i].items);
        free(u->slots[i].members);
    }
    free(u->slots);
    free(u->srv);
    free(u->rp);
    u->d->upgrade = NULL;
    free(u);
}

/* ---- workers: export, abort, commit (each on its own thread) ---- */

static void slot_done(ho_slot_t *slot);

static ho_item_t *slot_push(ho_slot_t *slot)
{
    if (slot->n == slot->cap) {
        size_t cap = slot->cap ? slot->cap * 2 : 64;
        ho_item_t *v = realloc(slot->items, cap * sizeof(*v));
        if (!v)
            return NULL;
        slot->items = v;
        slot->cap = cap;
    }
    ho_item_t *it = &slot->items[slot->n++];
    memset(it, 0, sizeof(*it));
    return it;
}

static void fill_meta(ho_item_t *it, int i, const netd_conn_t *c)
{
    it->conns[i] = (netd_conn_t *)c;
    it->ids[i] = c->id;
    it->roles[i] = c->role;
    it->age_ms[i] = netd_now_ms() - c->created_ms;
}

/* Exports what is quiet; returns how many are not (yet). */
static int export_pass(netd_worker_t *w, ho_slot_t *slot)
{
    int busy = 0;
    netd_conn_t *c;
    TAILQ_FOREACH(c, &w->conns, link) {
        if (c->parked)
            continue;
        /* A pair goes from its client side, as one record. */
        if (c->role == NETD_ROLE_UPSTREAM && c->pair)
            continue;
        nd_export_t ex;
        int rc = nd_socket_export(c->sock, &ex);
        if (rc == ND_ECLOSED)
            continue; /* closing here anyway: nothing to hand over */
        if (rc != 0) {
            busy++;
            continue;
        }
        ho_item_t *it = slot_push(slot);
        if (!it) {
            nd_socket_export_abort(&ex);
            slot->err = -ENOMEM;
            return busy + 1;
        }
        it->ex = ex;
        it->n = ex.nfds;
        it->server = c->server->id;
        fill_meta(it, 0, c);
        c->parked = true;
        if (ex.nfds == 2) {
            netd_conn_t *pc = c->pair;
            if (!pc || pc->sock != ex.socks[1]) {
                /* The library took a pair the records do not know: give it back. */
                nd_socket_export_abort(&it->ex);
                c->parked = false;
                slot->n--;
                slot->err = -EPROTO;
                return busy + 1;
            }
            fill_meta(it, 1, pc);
            pc->parked = true;
        }
    }
    return busy;
}

static void export_retry(evutil_socket_t fd, short what, void *arg)
{
    ho_slot_t *slot = arg;
    netd_worker_t *w = &slot->u->d->workers[slot->index];
    slot->busy = export_pass(w, slot);
    if (slot->busy && !slot->err && netd_now_ms() < slot->u->deadline) {
        struct timeval tv = {0, 1000};
        evtimer_add(slot->retry, &tv);
        return;
    }
    event_free(slot->retry);
    slot->retry = NULL;
    slot_done(slot);
}

static void back_to_main(nd_loop_t *loop, void *arg);

static void slot_done(ho_slot_t *slot)
{
    nd_loop_post_msg(slot->u->d->loop, &slot->msg, back_to_main, slot, NULL);
}

static void worker_export(nd_loop_t *loop, void *arg)
{
    ho_slot_t *slot = arg;
    upgrade_t *u = slot->u;
    netd_worker_t *w = &u->d->workers[slot->index];
    /* Reuseport listeners of this worker: accepting stops, the kernel keeps queueing. */
    slot->members = calloc(u->nrp ? u->nrp : 1, sizeof(*slot->members));
    for (size_t i = 0; slot->members && i < u->nrp; i++) {
        nd_server_t *ws = u->rp[i]->members[slot->index];
        int fd = ws ? nd_server_export(ws) : -1;
        slot->members[slot->nmembers++] = (ho_member_t){u->rp[i], fd};
        if (fd < 0)
            slot->err = -EBADF;
    }
    slot->busy = export_pass(w, slot);
    /* Not quiet yet (a proxy's upstream still connecting, an event owed): try again in a
     * millisecond, until the deadline. */
    if (slot->busy && !slot->err && netd_now_ms() < u->deadline &&
        (slot->retry = evtimer_new(nd_loop_base(loop), export_retry, slot)) != NULL) {
        struct timeval tv = {0, 1000};
        evtimer_add(slot->retry, &tv);
        return;
    }
    slot_done(slot);
}

static void worker_abort(nd_loop_t *loop, void *arg)
{
    ho_slot_t *slot = arg;
    for (size_t i = 0; i < slot->n; i++) {
        ho_item_t *it = &slot->items[i];
        for (int k = 0; k < it->n; k++)
            it->conns[k]->parked = false;
        nd_socket_export_abort(&it->ex);
    }
    for (size_t i = 0; i < slot->nmembers; i++) {
        nd_server_t *ws = slot->members[i].srv->members[slot->index];
        if (ws && slot->members[i].fd >= 0)
            nd_server_export_abort(ws);
    }
    slot->n = 0;
    slot->nmembers = 0;
    slot_done(slot);
}

static void worker_commit(nd_loop_t *loop, void *arg)
{
    ho_slot_t *slot = arg;
    for (size_t i = 0; i < slot->n; i++) {
        ho_item_t *it = &slot->items[i];
        for (int k = 0; k < it->n; k++)
            netd_conn_forget(it->conns[k]);
        nd_socket_export_commit(&it->ex);
    }
    for (size_t i = 0; i < slot->nmembers; i++) {
        nd_server_t *ws = slot->members[i].srv->members[slot->index];
        if (ws && slot->members[i].fd >= 0)
            nd_server_export_commit(ws);
    }
    slot->n = 0;
    slot->nmembers = 0;
    slot_done(slot);
}

static void fail(upgrade_t *u, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void send_all(upgrade_t *u);
static void after_abort(upgrade_t *u);
static void after_commit(upgrade_t *u);

/* Main loop: a worker finished its part of the current step. */
static void back_to_main(nd_loop_t *loop, void *arg)
{
    ho_slot_t *slot = arg;
    upgrade_t *u = slot->u;
    if (--u->slots_out > 0)
        return;
    if (u->stage == U_EXPORTING && u->cancel) {
        fail(u, "%s", u->cancel);
    } else if (u->stage == U_EXPORTING) {
        int busy = 0, err = 0;
        for (int i = 0; i < u->d->nworkers; i++) {
            busy += u->slots[i].busy;
            if (u->slots[i].err)
                err = u->slots[i].err;
        }
        if (err)
            fail(u, "a worker could not export its connections: %s", nd_strerror(err));
        else if (busy)
            fail(u,
                 "%d connection(s) stayed busy (connecting, or an event owed) until the deadline",
                 busy);
        else
            send_all(u);
    } else if (u->stage == U_SENDING) {
        /* the workers' commit or abort */
        if (u->d->handed_over)
            after_commit(u);
        else
            after_abort(u);
    }
}

static void to_workers(upgrade_t *u, void (*fn)(nd_loop_t *, void *))
{
    u->slots_out = u->d->nworkers;
    for (int i = 0; i < u->d->nworkers; i++)
        nd_loop_post_msg(u->d->workers[i].loop, &u->slots[i].msg, fn, &u->slots[i], NULL);
}

/* ---- failure: everything back ---- */

static char fail_why[512];

static void after_abort(upgrade_t *u)
{
    netd_t *d = u->d;
    for (size_t i = 0; i < u->nsrv; i++)
        if (u->srv[i].fd >= 0)
            nd_server_export_abort(u->srv[i].s->group);
    if (u->control_fd >= 0 && d->control)
        nd_server_export_abort(d->control);
    d->upgrading = false;
    netd_control_export_abort(d, u->clients, u->nclients);
    u->clients = NULL;
    netd_log(NETD_LOG_ERROR, "upgrade failed, still serving everything: %s", fail_why);
    netd_notify("READY=1\nSTATUS=upgrade failed; serving");
    if (u->p)
        netd_pending_error(u->p, NETD_EUPGRADE, "%s", fail_why);
    upgrade_free(u);
    if (d->drain_after_upgrade) {
        d->drain_after_upgrade = false;
        netd_drain(d, d->cfg.shutdown_timeout_ms);
    }
}

void netd_upgrade_cancel(netd_t *d, const char *why)
{
    upgrade_t *u = d->upgrade;
    if (!u)
        return;
    if (u->stage == U_EXPORTING)
        u->cancel = why; /* the workers' answers come first, then everything goes back */
    else
        fail(u, "%s", why);
}

static void fail(upgrade_t *u, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fail_why, sizeof(fail_why), fmt, ap);
    va_end(ap);
    if (u->ch_ev)
        event_del(u->ch_ev);
    if (u->timer)
        event_del(u->timer);
    if (u->child > 0) {
        kill(u->child, SIGKILL);
        while (waitpid(u->child, NULL, 0) < 0 && errno == EINTR)
            ;
        u->child = 0;
    }
    if (u->exported) {
        u->stage = U_SENDING; /* back_to_main: the workers' abort, then after_abort */
        to_workers(u, worker_abort);
        return;
    }
    after_abort(u);
}

/* ---- the old side's steps ---- */

static void after_commit(upgrade_t *u)
{
    netd_t *d = u->d;
    netd_log(NETD_LOG_INFO, "upgrade: pid %d serves everything now; exiting", (int)u->child);
    u->child = 0; /* it lives on: never killed or waited for here */
    d->exit_code = 0;
    nd_loop_stop(d->loop);
    upgrade_free(u);
}

/* "committed": everything is the new process's. Let go of it all, without an event. */
static void commit(upgrade_t *u)
{
    netd_t *d = u->d;
    d->handed_over = true;
    d->draining = true; /* nothing new starts here any more */
    for (size_t i = 0; i < u->nsrv; i++)
        if (u->srv[i].fd >= 0 && u->srv[i].s->group)
            nd_server_export_commit(u->srv[i].s->group);
    netd_control_export_commit(d, u->clients, u->nclients);
    u->clients = NULL;
    if (u->p) {
        netd_pending_drop(u->p); /* the new process answers it */
        u->p = NULL;
    }
    if (d->control) {
        nd_server_export_commit(d->control);
        d->control = NULL;
    }
    to_workers(u, worker_commit); /* then after_commit */
}

/* Waits for one packet of the given type; "abort" (with the new process's reason) and
 * anything else fail the upgrade. Returns 0, or -1 after fail(). */
static int expect(upgrade_t *u, const char *type, netd_ho_msg_t *m)
{
    int rc = netd_ho_recv(u->ch, m, u->deadline);
    if (rc == -ETIMEDOUT) {
        fail(u, "the new netd did not answer within the timeout (waiting for %s)", type);
        return -1;
    }
    if (rc != 0) {
        fail(u, "the new netd went away (waiting for %s: %s)", type, strerror(-rc));
        return -1;
    }
    if (strcmp(m->type, "abort") == 0) {
        fail(u, "the new netd gave up: %s",
             json_string_value(json_object_get(m->msg, "why")) ?: "no reason given");
        netd_ho_msg_free(m);
        return -1;
    }
    if (strcmp(m->type, type) != 0) {
        fail(u, "the new netd sent \"%s\" where \"%s\" was due", m->type, type);
        netd_ho_msg_free(m);
        return -1;
    }
    return 0;
}

static int send_or_fail(upgrade_t *u, json_t *msg, const void *payload, size_t plen, const int *fds,
                        int nfds)
{
    const char *t = json_string_value(json_object_get(msg, "t"));
    char type[32];
    snprintf(type, sizeof(type), "%s", t ? t : "?");
    int rc = netd_ho_send(u->ch, msg, payload, plen, fds, nfds, u->deadline);
    if (rc == -EPIPE || rc == -ECONNRESET) {
        fail(u, "the new netd went away (sending %s)", type);
        return -1;
    }
    if (rc != 0) {
        fail(u, "sending %s to the new netd: %s", type, strerror(-rc));
        return -1;
    }
    return 0;
}

/* One batch: the header with the descriptors and the first bytes, "more" packets with the
 * rest. Its ack is collected later (collect_acks): batches go out back to back. */
static int send_batch(upgrade_t *u, json_t *head, const unsigned char *bytes, size_t n,
                      const int *fds, int nfds)
{
    uint64_t seq = ++u->batch;
    json_object_set_new(head, "seq", json_integer((json_int_t)seq));
    json_object_set_new(head, "bytes", json_integer((json_int_t)n));
    size_t first = n < NETD_HO_PAYLOAD_MAX ? n : NETD_HO_PAYLOAD_MAX;
    if (send_or_fail(u, head, bytes, first, fds, nfds) != 0)
        return -1;
    for (size_t at = first; at < n;) {
        size_t k = n - at < NETD_HO_PAYLOAD_MAX ? n - at : NETD_HO_PAYLOAD_MAX;
        if (send_or_fail(u, json_pack("{s:s}", "t", "more"), bytes + at, k, NULL, 0) != 0)
            return -1;
        at += k;
    }
    return 0;
}

/* Every batch sent so far is acknowledged, in order: the new process holds them. */
static int collect_acks(upgrade_t *u)
{
    while (u->acked < u->batch) {
        netd_ho_msg_t m;
        if (expect(u, "ack", &m) != 0)
            return -1;
        bool ok = (uint64_t)json_integer_value(json_object_get(m.msg, "seq")) == u->acked + 1;
        netd_ho_msg_free(&m);
        if (!ok) {
            fail(u, "the new netd acknowledged another batch");
            return -1;
        }
        u->acked++;
    }
    return 0;
}

/* A growing byte buffer for a batch's records. */
typedef struct bytes {
    unsigned char *p;
    size_t len, cap;
} bytes_t;

static int bytes_add(bytes_t *b, const void *data, size_t n)
{
    if (n == 0)
        return 0;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + n)
            cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

static json_t *server_record(upgrade_t *u, const netd_server_t *s)
{
    netd_t *d = u->d;
    nd_server_stats_t st = s->carried;
    if (s->group) {
        nd_server_stats_t now;
        nd_server_stats(s->group, &now);
        st.accepted += now.accepted;
        st.rejected += now.rejected;
        st.handoff_failed += now.handoff_failed;
        st.accept_paused += now.accept_paused;
    }
    char *dir = NULL;
    if (s->from_config && d->config_file) {
        char *copy = strdup(d->config_file);
        dir = copy ? strdup(dirname(copy)) : NULL;
        free(copy);
    }
    json_t *o = json_pack(
        "{s:s, s:I, s:s, s:O, s:o, s:b, s:b, s:i, s:I, s:s, s:o, s:{s:I, s:I, s:I, s:I}, s:I, s:I}",
        "t", "server", "id", (json_int_t)s->id, "name", s->spec.name, "source", s->spec.source,
        "baseDir", dir ? json_string(dir) : json_null(), "fromConfig", s->from_config,
        "inheritedFd", s->inherited_fd, "maxConnections", s->spec.max_connections, "timeout",
        (json_int_t)atomic_load(&s->timeout_ms), "balance", nd_balance_name(s->spec.balance),
        "path",
        s->address.family == 0 && s->address.address[0] ? json_string(s->address.address)
                                                        : json_null(),
        "counters", "accepted", (json_int_t)st.accepted, "rejected", (json_int_t)st.rejected,
        "handoffFailed", (json_int_t)st.handoff_failed, "acceptPaused",
        (json_int_t)st.accept_paused, "bytesReadClosed",
        (json_int_t)atomic_load(&s->bytes_read_closed), "bytesWrittenClosed",
        (json_int_t)atomic_load(&s->bytes_written_closed));
    free(dir);
    return o;
}

static int send_servers(upgrade_t *u)
{
    netd_t *d = u->d;
    for (size_t i = 0; i < u->nsrv; i++) {
        netd_server_t *s = u->srv[i].s;
        int fds[1 + 256];
        int nfds = 0;
        fds[nfds++] = u->srv[i].fd;
        if (s->spec.balance == ND_BALANCE_REUSEPORT) {
            for (int w = 0; w < d->nworkers && nfds < (int)(sizeof(fds) / sizeof(fds[0])); w++)
                for (size_t k = 0; k < u->slots[w].nmembers; k++)
                    if (u->slots[w].members[k].srv == s)
                        fds[nfds++] = u->slots[w].members[k].fd;
        }
        if (send_or_fail(u, server_record(u, s), NULL, 0, fds, nfds) != 0)
            return -1;
    }
    return 0;
}

/* Every worker's records, in batches of at most NETD_HO_MAX_FDS descriptors. */
static int send_sockets(upgrade_t *u)
{
    netd_t *d = u->d;
    json_t *items = json_array();
    bytes_t b = {0};
    int fds[NETD_HO_MAX_FDS];
    int nfds = 0;
    int rc = 0;
    for (int w = 0; w <= d->nworkers && rc == 0; w++) {
        for (size_t k = 0; w < d->nworkers && k < u->slots[w].n; k++) {
            ho_item_t *it = &u->slots[w].items[k];
            if (nfds + it->n > NETD_HO_MAX_FDS) {
                rc = send_batch(u, json_pack("{s:s, s:O}", "t", "sockets", "items", items), b.p,
                                b.len, fds, nfds);
                json_array_clear(items);
                b.len = 0;
                nfds = 0;
                if (rc)
                    break;
            }
            json_t *socks = json_array();
            for (int i = 0; i < it->n; i++)
                json_array_append_new(
                    socks, json_pack("{s:I, s:s, s:I}", "id", (json_int_t)it->ids[i], "role",
                                     it->roles[i] == NETD_ROLE_CLIENT ? "client" : "upstream",
                                     "ageMs", (json_int_t)it->age_ms[i]));
            json_array_append_new(items, json_pack("{s:i, s:I, s:I, s:o}", "thread", w, "server",
                                                   (json_int_t)it->server, "len",
                                                   (json_int_t)it->ex.len, "socks", socks));
            if (bytes_add(&b, it->ex.data, it->ex.len) != 0) {
                fail(u, "out of memory");
                rc = -1;
                break;
            }
            for (int i = 0; i < it->n; i++)
                fds[nfds++] = it->ex.fds[i];
        }
    }
    if (rc == 0 && nfds > 0)
        rc = send_batch(u, json_pack("{s:s, s:O}", "t", "sockets", "items", items), b.p, b.len, fds,
                        nfds);
    json_decref(items);
    free(b.p);
    return rc;
}

static int send_clients(upgrade_t *u)
{
    json_t *items = json_array();
    bytes_t b = {0};
    int fds[NETD_HO_MAX_FDS];
    int nfds = 0, rc = 0;
    for (size_t i = 0; i <= u->nclients && rc == 0; i++) {
        if (i == u->nclients || nfds == NETD_HO_MAX_FDS) {
            if (nfds > 0)
                rc = send_batch(u, json_pack("{s:s, s:O}", "t", "clients", "items", items), b.p,
                                b.len, fds, nfds);
            json_array_clear(items);
            b.len = 0;
            nfds = 0;
            if (i == u->nclients)
                break;
        }
        netd_client_export_t *c = &u->clients[i];
        json_array_append_new(
            items, json_pack("{s:I, s:I, s:b, s:b, s:i, s:b, s:O}", "len", (json_int_t)c->ex.len,
                             "unread", (json_int_t)c->nunread, "watching", c->watching, "eof",
                             c->eof, "events", (int)c->events, "requester", c->requester, "replyId",
                             c->reply_id ? c->reply_id : json_null()));
        if (bytes_add(&b, c->ex.data, c->ex.len) != 0 ||
            (c->nunread && bytes_add(&b, c->unread, c->nunread) != 0)) {
            fail(u, "out of memory");
            rc = -1;
        }
        fds[nfds++] = c->ex.fds[0];
    }
    json_decref(items);
    free(b.p);
    return rc;
}

/* Everything the workers exported is in their slots: send it all, then commit. */
static void send_all(upgrade_t *u)
{
    netd_t *d = u->d;
    step(u, "exported");
    u->stage = U_SENDING;
    json_t *begin = json_pack("{s:s, s:i, s:I, s:I, s:i, s:o}", "t", "begin", "pid", (int)getpid(),
                              "nextId", (json_int_t)atomic_load(&d->next_id), "t0",
                              (json_int_t)u->t0_wall, "threads", d->nworkers, "closed",
                              netd_stats_closed_json(d));
    if (send_or_fail(u, begin, NULL, 0, NULL, 0) != 0)
        return;
    int fds[NETD_HO_MAX_FDS];
    const char *fd_names[NETD_HO_MAX_FDS];
    int n = netd_activation_list(d, fds, fd_names, NETD_HO_MAX_FDS);
    if (n > 0) {
        json_t *names = json_array();
        for (int i = 0; i < n; i++)
            json_array_append_new(names, fd_names[i] ? json_string(fd_names[i]) : json_null());
        if (send_or_fail(u, json_pack("{s:s, s:o}", "t", "activation", "names", names), NULL, 0,
                         fds, n) != 0)
            return;
    }
    if (send_or_fail(u, json_pack("{s:s, s:s}", "t", "control", "path", d->control_path), NULL, 0,
                     &u->control_fd, 1) != 0)
        return;
    if (send_servers(u) != 0 || send_sockets(u) != 0 || send_clients(u) != 0 ||
        collect_acks(u) != 0)
        return;
    if (send_or_fail(u, json_pack("{s:s}", "t", "commit"), NULL, 0, NULL, 0) != 0)
        return;
    netd_ho_msg_t m;
    step(u, "sent; commit");
    if (expect(u, "committed", &m) != 0)
        return;
    netd_ho_msg_free(&m);
    step(u, "committed");
    commit(u);
}

/* Nothing in flight any more: park and export everything. */
static void export_all(upgrade_t *u)
{
    netd_t *d = u->d;
    step(u, "settled; exporting");
    u->stage = U_EXPORTING;
    u->exported = true;
    u->control_fd = d->control ? nd_server_export(d->control) : -1;
    size_t n = 0;
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
        n++;
    u->srv = calloc(n ? n : 1, sizeof(*u->srv));
    u->rp = calloc(n ? n : 1, sizeof(netd_server_t *)); // NOLINT(bugprone-sizeof-expression)
    u->slots = calloc((size_t)d->nworkers, sizeof(*u->slots));
    if (!u->srv || !u->rp || !u->slots) {
        u->exported = false;
        if (u->control_fd >= 0)
            nd_server_export_abort(d->control);
        u->control_fd = -1;
        fail(u, "out of memory");
        return;
    }
    TAILQ_FOREACH(s, &d->servers, link) {
        int fd = s->group ? nd_server_export(s->group) : -1;
        u->srv[u->nsrv++] = (ho_server_t){s, fd};
        if (s->spec.balance == ND_BALANCE_REUSEPORT)
            u->rp[u->nrp++] = s;
    }
    if (netd_control_export(d, u->p, &u->clients, &u->nclients) != 0) {
        fail(u, "out of memory");
        return;
    }
    for (int i = 0; i < d->nworkers; i++) {
        u->slots[i].u = u;
        u->slots[i].index = i;
    }
    /* Every handoff the acceptors posted before stopping reaches its worker first (the
     * mailbox keeps one sender's order): no accepted connection is left behind. */
    to_workers(u, worker_export);
}

static bool settled(upgrade_t *u)
{
    netd_t *d = u->d;
    if (d->fanouts_open || !TAILQ_EMPTY(&d->moves) || !netd_control_settled(d, u->p))
        return false;
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
        if (s->state != NETD_SRV_LISTENING)
            return false;
    return true;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    upgrade_t *u = arg;
    if (u->d->draining) {
        fail(u, "netd is draining");
        return;
    }
    uint64_t now = netd_now_ms();
    if (now >= u->deadline) {
        fail(u, u->stage == U_STARTING ? "the new netd was not ready within the timeout"
                                       : "requests in flight did not end within the timeout");
        return;
    }
    if (u->stage == U_SETTLING && settled(u)) {
        export_all(u);
        return;
    }
    /* Settling: look again in 5 ms. Starting: the timer may fire a hair early. */
    uint64_t wait = u->stage == U_SETTLING ? 5 : u->deadline - now;
    struct timeval tv = {(time_t)(wait / 1000), (suseconds_t)(wait % 1000) * 1000};
    evtimer_add(u->timer, &tv);
}

static void on_channel(evutil_socket_t fd, short what, void *arg)
{
    upgrade_t *u = arg;
    netd_ho_msg_t m;
    int rc = netd_ho_recv(u->ch, &m, netd_now_ms() + 1000);
    if (rc != 0) {
        /* The channel closed: the child is exiting; give it a moment to be reaped. */
        int st = 0;
        pid_t got = 0;
        for (int i = 0; i < 500 && got == 0; i++) {
            got = waitpid(u->child, &st, WNOHANG);
            if (got == 0)
                usleep(1000);
        }
        if (got == u->child) {
            u->child = 0;
            if (WIFEXITED(st))
                fail(u, "the new netd exited with status %d before it was ready (see its log)",
                     WEXITSTATUS(st));
            else
                fail(u, "the new netd was killed by signal %d before it was ready",
                     WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        } else {
            fail(u, "the new netd closed the channel before it was ready (%s)", strerror(-rc));
        }
        return;
    }
    if (strcmp(m.type, "abort") == 0) {
        fail(u, "the new netd gave up: %s",
             json_string_value(json_object_get(m.msg, "why")) ?: "no reason given");
        netd_ho_msg_free(&m);
        return;
    }
    json_int_t proto = json_integer_value(json_object_get(m.msg, "proto"));
    const char *version = json_string_value(json_object_get(m.msg, "version"));
    if (strcmp(m.type, "ready") != 0 || proto != NETD_UPGRADE_PROTO) {
        fail(u, "the new netd (%s) speaks upgrade protocol %lld; this one speaks %d",
             version ? version : "?", (long long)proto, NETD_UPGRADE_PROTO);
        netd_ho_msg_free(&m);
        return;
    }
    netd_log(NETD_LOG_INFO, "upgrade: netd %s (pid %d) is ready; handing over",
             version ? version : "?", (int)u->child);
    netd_ho_msg_free(&m);
    /* From here the channel is driven in blocking steps with the deadline. */
    event_del(u->ch_ev);
    u->stage = U_SETTLING;
    u->d->upgrading = true;
    on_timer(-1, 0, u);
}

/* The environment of the new process: ours, minus socket activation (its descriptors come
 * over the channel), plus the channel and the deadline. */
static char **child_env(int ch, unsigned timeout_ms)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 3, sizeof(char *));
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = environ[i];
        if (strncmp(e, "LISTEN_", 7) == 0 || strncmp(e, "NETD_UPGRADE_", 13) == 0)
            continue;
        env[k++] = (char *)e;
    }
    char fdvar[64], dlvar[64];
    snprintf(fdvar, sizeof(fdvar), "NETD_UPGRADE_FD=%d", ch);
    snprintf(dlvar, sizeof(dlvar), "NETD_UPGRADE_TIMEOUT_MS=%u", timeout_ms);
    env[k++] = strdup(fdvar);
    env[k++] = strdup(dlvar);
    return env;
}

void netd_upgrade_start(netd_t *d, netd_pending_t *p, const char *exec, unsigned timeout_ms)
{
    const char *why = NULL;
    char msg[512];
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
        if (s->state == NETD_SRV_CLOSING && !why) {
            snprintf(msg, sizeof(msg), "server %s is closing: upgrade once it has closed",
                     s->spec.name);
            why = msg;
        }
    const char *exe = exec ? exec : d->exe;
    if (d->upgrade) {
        why = "an upgrade is already in progress";
    } else if (d->reload) {
        why = "a reload is still opening servers: upgrade after it";
    } else if (d->draining) {
        if (p)
            netd_pending_error(p, NETD_ESHUTDOWN, "netd is draining");
        return;
    } else if (!exe || !d->argv) {
        why = "netd does not know the binary it runs: give exec";
    } else if (access(exe, X_OK) != 0) {
        snprintf(msg, sizeof(msg), "cannot run %s: %s", exe, strerror(errno));
        why = msg;
    }
    if (why) {
        netd_log(NETD_LOG_ERROR, "upgrade refused: %s", why);
        if (p)
            netd_pending_error(p, NETD_EUPGRADE, "%s", why);
        return;
    }
    upgrade_t *u = calloc(1, sizeof(*u));
    int fds[2] = {-1, -1};
    char **env = NULL;
    if (!u || netd_ho_pair(fds) != 0 || !(env = child_env(fds[1], timeout_ms))) {
        snprintf(msg, sizeof(msg), "cannot set up the handover: %s", strerror(errno));
        if (fds[0] >= 0) {
            close(fds[0]);
            close(fds[1]);
        }
        free(u);
        free(env);
        netd_log(NETD_LOG_ERROR, "upgrade refused: %s", msg);
        if (p)
            netd_pending_error(p, NETD_EUPGRADE, "%s", msg);
        return;
    }
    u->d = d;
    u->p = p;
    u->ch = fds[0];
    u->control_fd = -1;
    u->t0_wall = netd_wall_ms();
    u->deadline = netd_now_ms() + timeout_ms;
    pid_t pid = fork();
    if (pid == 0) {
        /* Only async-signal-safe calls until exec: the environment was built before. */
        fcntl(fds[1], F_SETFD, 0);
        execve(exe, d->argv, env);
        _exit(127);
    }
    int fork_errno = errno;
    close(fds[1]);
    for (size_t i = 0; env[i]; i++)
        if (strncmp(env[i], "NETD_UPGRADE_", 13) == 0)
            free(env[i]);
    free(env);
    d->upgrade = u;
    if (pid < 0) {
        u->child = 0;
        fail(u, "fork: %s", strerror(fork_errno));
        return;
    }
    u->child = pid;
    u->ch_ev = event_new(nd_loop_base(d->loop), u->ch, EV_READ | EV_PERSIST, on_channel, u);
    u->timer = evtimer_new(nd_loop_base(d->loop), on_timer, u);
    struct timeval tv = {timeout_ms / 1000, (suseconds_t)(timeout_ms % 1000) * 1000};
    if (!u->ch_ev || !u->timer || event_add(u->ch_ev, NULL) != 0 ||
        evtimer_add(u->timer, &tv) != 0) {
        fail(u, "out of memory");
        return;
    }
    netd_log(NETD_LOG_INFO, "upgrade: started %s (pid %d), %u ms to take over", exe, (int)pid,
             timeout_ms);
    netd_notify("STATUS=upgrading: handing over to pid %d", (int)pid);
}
