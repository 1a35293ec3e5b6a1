/* SPDX-License-Identifier: MIT */
/*
 * The live upgrade, the new process's side: it loads the config and starts its workers,
 * says "ready", imports what comes (parked: nothing is read or written, so nothing is lost
 * if it dies), and on "commit" listens, starts every socket, answers "committed", answers
 * the `upgrade` request and tells systemd its pid. The old side is upgrade.c.
 */
#include "config.h"

#include "daemon.h"
#include "handover.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int netd_takeover_fd(void)
{
    const char *v = getenv("NETD_UPGRADE_FD");
    if (!v || !*v)
        return -1;
    char *end;
    long fd = strtol(v, &end, 10);
    unsetenv("NETD_UPGRADE_FD");
    if (*end || fd < 0 || fd > 65535 || fcntl((int)fd, F_GETFD) < 0)
        return -1;
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    return (int)fd;
}

/* One record to import on a worker. */
typedef struct in_item {
    const unsigned char *rec;
    size_t len;
    int fds[2];
    int n;
    netd_server_t *srv;
    uint64_t ids[2], age[2];
    int roles[2];
} in_item_t;

typedef struct in_batch in_batch_t;

typedef struct in_part { /* one worker's share of a batch, or of the start */
    nd_msg_t msg;
    netd_t *d;
    int index;
    in_item_t **items;
    size_t n, cap;
    int failed; /* the first error */
    int *remaining;
} in_part_t;

/* A batch of sockets being imported by the workers while the next one arrives. */
struct in_batch {
    unsigned char *bytes;
    in_item_t *all;
    size_t count;
    in_part_t *parts;
    in_batch_t *next;
};

static void part_back(nd_loop_t *loop, void *arg)
{
    in_part_t *p = arg;
    (*p->remaining)--;
}

static void worker_import(nd_loop_t *loop, void *arg)
{
    in_part_t *p = arg;
    netd_worker_t *w = &p->d->workers[p->index];
    for (size_t i = 0; i < p->n && !p->failed; i++) {
        in_item_t *it = p->items[i];
        nd_server_t *ws = it->srv ? it->srv->members[p->index] : NULL;
        nd_socket_t *socks[2];
        int rc = nd_socket_import(loop, it->rec, it->len, it->fds, it->n, ws, socks);
        if (rc != 0) {
            p->failed = rc;
            break;
        }
        it->fds[0] = it->fds[1] = -1; /* the sockets' now */
        netd_conn_t *c[2] = {NULL, NULL};
        for (int k = 0; k < it->n; k++) {
            /* Each record holds its counted reference on the server (conn_make). */
            c[k] = netd_worker_import_conn(
                w, socks[k], it->srv, it->roles[k] == 0 ? NETD_ROLE_CLIENT : NETD_ROLE_UPSTREAM,
                it->ids[k], it->age[k]);
            if (!c[k]) {
                nd_socket_destroy(socks[k]);
                p->failed = -ENOMEM;
            }
        }
        if (p->failed)
            break;
        if (c[1]) {
            c[0]->pair = c[1];
            c[1]->pair = c[0];
        }
        netd_worker_adopted(w, c[0]); /* listeners and handler back, as after a move */
    }
    nd_loop_post_msg(p->d->loop, &p->msg, part_back, p, NULL);
}

static void worker_start(nd_loop_t *loop, void *arg)
{
    in_part_t *p = arg;
    netd_worker_t *w = &p->d->workers[p->index];
    netd_conn_t *c;
    TAILQ_FOREACH(c, &w->conns, link) {
        if (!c->parked)
            continue;
        nd_socket_import_start(c->sock); /* and its pair */
        c->parked = false;
        if (c->pair)
            c->pair->parked = false;
    }
    nd_loop_post_msg(p->d->loop, &p->msg, part_back, p, NULL);
}

/* Runs fn on every worker with its part, and the main loop until all have answered. */
static void on_workers(netd_t *d, in_part_t *parts, void (*fn)(nd_loop_t *, void *))
{
    int remaining = d->nworkers;
    for (int i = 0; i < d->nworkers; i++) {
        parts[i].d = d;
        parts[i].index = i;
        parts[i].remaining = &remaining;
        nd_loop_post_msg(d->workers[i].loop, &parts[i].msg, fn, &parts[i], NULL);
    }
    while (remaining > 0)
        nd_loop_run_once(d->loop, 0);
}

typedef struct takeover {
    netd_t *d;
    int ch;
    uint64_t deadline;
    const char *test; /* NETD_TEST_UPGRADE: failure injection for the upgrade tests */
    in_part_t *parts; /* the start */
    in_batch_t *batches;
    int importing; /* workers' parts still to answer */
    int control_fd;
    size_t nsockets, nservers;
    int prev_pid;
    uint64_t t0;
    struct held_server {
        netd_server_t *s;
        int fds[NETD_HO_MAX_FDS];
        int nfds;
        char *path;
    } * servers;
    size_t cap;
    char why[512];
} takeover_t;

static int tk_fail(takeover_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int tk_fail(takeover_t *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->why, sizeof(t->why), fmt, ap);
    va_end(ap);
    return -1;
}

/* A batch's header, then "more" packets until all its bytes are here. */
static int recv_batch(takeover_t *t, netd_ho_msg_t *head, unsigned char **bytes, size_t *n)
{
    size_t want = (size_t)json_integer_value(json_object_get(head->msg, "bytes"));
    if (want > (size_t)1 << 34)
        return tk_fail(t, "a batch of %zu bytes", want);
    *bytes = malloc(want ? want : 1);
    if (!*bytes)
        return tk_fail(t, "out of memory");
    *n = 0;
    size_t k = head->plen < want ? head->plen : want;
    memcpy(*bytes, head->payload, k);
    *n = k;
    while (*n < want) {
        netd_ho_msg_t m;
        int rc = netd_ho_recv(t->ch, &m, t->deadline);
        if (rc != 0)
            return tk_fail(t, "the old netd went away mid-batch: %s", strerror(-rc));
        if (strcmp(m.type, "more") != 0 || m.plen > want - *n) {
            netd_ho_msg_free(&m);
            return tk_fail(t, "a batch's bytes do not add up");
        }
        memcpy(*bytes + *n, m.payload, m.plen);
        *n += m.plen;
        netd_ho_msg_free(&m);
    }
    return 0;
}

static int ack(takeover_t *t, const netd_ho_msg_t *head)
{
    json_t *seq = json_object_get(head->msg, "seq");
    int rc = netd_ho_send(t->ch, json_pack("{s:s, s:O}", "t", "ack", "seq", seq), NULL, 0, NULL, 0,
                          t->deadline);
    if (rc != 0)
        return tk_fail(t, "acknowledging a batch: %s", strerror(-rc));
    if (t->test && strcmp(t->test, "die-after-batch") == 0)
        raise(SIGKILL); /* the tests' crash halfway */
    return 0;
}

/* A batch of sockets: acknowledged at once (its descriptors are ours now), imported
 * parked by the workers meanwhile; commit waits for every import (finish_imports). */
static int take_sockets(takeover_t *t, netd_ho_msg_t *head)
{
    netd_t *d = t->d;
    in_batch_t *b = calloc(1, sizeof(*b));
    if (!b)
        return tk_fail(t, "out of memory");
    b->next = t->batches;
    t->batches = b;
    size_t n = 0;
    if (recv_batch(t, head, &b->bytes, &n) != 0)
        return -1;
    json_t *items = json_object_get(head->msg, "items");
    b->count = json_array_size(items);
    b->all = calloc(b->count ? b->count : 1, sizeof(*b->all));
    b->parts = calloc((size_t)d->nworkers, sizeof(*b->parts));
    if (!b->all || !b->parts)
        return tk_fail(t, "out of memory");
    for (size_t i = 0; i < b->count; i++)
        b->all[i].fds[0] = b->all[i].fds[1] = -1;
    size_t at = 0;
    int fdi = 0;
    for (size_t i = 0; i < b->count; i++) {
        json_t *e = json_array_get(items, i);
        in_item_t *it = &b->all[i];
        json_t *socks = json_object_get(e, "socks");
        int ns = (int)json_array_size(socks);
        it->len = (size_t)json_integer_value(json_object_get(e, "len"));
        it->srv = netd_server_by_id(d, (uint64_t)json_integer_value(json_object_get(e, "server")));
        if (ns < 1 || ns > 2 || it->len > n - at || fdi + ns > head->nfds || !it->srv)
            return tk_fail(t, "a socket record does not match its batch");
        it->n = ns;
        it->rec = b->bytes + at;
        at += it->len;
        for (int k = 0; k < it->n; k++) {
            json_t *sk = json_array_get(socks, (size_t)k);
            it->fds[k] = head->fds[fdi];
            head->fds[fdi++] = -1; /* taken out of the packet's care */
            it->ids[k] = (uint64_t)json_integer_value(json_object_get(sk, "id"));
            it->age[k] = (uint64_t)json_integer_value(json_object_get(sk, "ageMs"));
            const char *role = json_string_value(json_object_get(sk, "role"));
            it->roles[k] = role && strcmp(role, "upstream") == 0;
        }
        /* The same thread as before when there is one, so the spread stays as it was. */
        int w = (int)(json_integer_value(json_object_get(e, "thread")) % d->nworkers);
        in_part_t *p = &b->parts[w];
        if (p->n == p->cap) {
            size_t cap = p->cap ? p->cap * 2 : 64;
            in_item_t **v = realloc(
                p->items, cap * sizeof(in_item_t *)); // NOLINT(bugprone-sizeof-expression)
            if (!v)
                return tk_fail(t, "out of memory");
            p->items = v;
            p->cap = cap;
        }
        p->items[p->n++] = it;
        t->nsockets += (size_t)it->n;
    }
    if (ack(t, head) != 0)
        return -1;
    for (int i = 0; i < d->nworkers; i++) {
        b->parts[i].d = d;
        b->parts[i].index = i;
        b->parts[i].remaining = &t->importing;
        t->importing++;
        nd_loop_post_msg(d->workers[i].loop, &b->parts[i].msg, worker_import, &b->parts[i], NULL);
    }
    return 0;
}

/* Waits for every batch's import; the first failure, or 0. */
static int finish_imports(takeover_t *t)
{
    while (t->importing > 0)
        nd_loop_run_once(t->d->loop, 0);
    for (in_batch_t *b = t->batches; b; b = b->next)
        for (int i = 0; b->parts && i < t->d->nworkers; i++)
            if (b->parts[i].failed)
                return tk_fail(t, "importing a socket: %s", nd_strerror(b->parts[i].failed));
    return 0;
}

static void batches_free(takeover_t *t)
{
    in_batch_t *b;
    while ((b = t->batches) != NULL) {
        t->batches = b->next;
        for (size_t i = 0; b->all && i < b->count; i++)
            for (int k = 0; k < 2; k++)
                if (b->all[i].fds[k] >= 0)
                    close(b->all[i].fds[k]); /* not imported: ours to close */
        for (int i = 0; b->parts && i < t->d->nworkers; i++)
            free(b->parts[i].items);
        free(b->parts);
        free(b->all);
        free(b->bytes);
        free(b);
    }
}

static int take_clients(takeover_t *t, netd_ho_msg_t *head)
{
    netd_t *d = t->d;
    unsigned char *bytes = NULL;
    size_t n = 0;
    if (recv_batch(t, head, &bytes, &n) != 0) {
        free(bytes);
        return -1;
    }
    json_t *items = json_object_get(head->msg, "items");
    size_t at = 0;
    int rc = 0;
    for (size_t i = 0; i < json_array_size(items) && rc == 0; i++) {
        json_t *e = json_array_get(items, i);
        size_t len = (size_t)json_integer_value(json_object_get(e, "len"));
        size_t unread = (size_t)json_integer_value(json_object_get(e, "unread"));
        if (len > n - at || unread > n - at - len || (int)i >= head->nfds) {
            rc = tk_fail(t, "a control client's record does not match its batch");
            break;
        }
        netd_client_export_t st = {
            .watching = json_is_true(json_object_get(e, "watching")),
            .eof = json_is_true(json_object_get(e, "eof")),
            .events = (unsigned)json_integer_value(json_object_get(e, "events")),
            .unread = (const char *)bytes + at + len,
            .nunread = unread,
        };
        netd_client_t *c = netd_control_import(d, bytes + at, len, head->fds[i], &st);
        if (c) {
            head->fds[i] = -1;
            if (json_is_true(json_object_get(e, "requester"))) {
                d->upgrade_requester = c;
                json_decref(d->upgrade_reply_id);
                d->upgrade_reply_id = json_incref(json_object_get(e, "replyId"));
            }
        } else {
            netd_log(NETD_LOG_WARN, "upgrade: a control client could not be taken over");
        }
        at += len + unread;
    }
    free(bytes);
    return rc == 0 ? ack(t, head) : -1;
}

static int take_server(takeover_t *t, netd_ho_msg_t *m)
{
    netd_t *d = t->d;
    char err[512];
    netd_server_t *s = netd_server_import(d, m->msg, err, sizeof(err));
    if (!s)
        return tk_fail(t, "server %s: %s",
                       json_string_value(json_object_get(m->msg, "name")) ?: "?", err);
    if (s->spec.balance == ND_BALANCE_REUSEPORT && m->nfds != 1 + d->nworkers)
        return tk_fail(t, "server %s: reuseport with %d worker listeners, and %d threads here",
                       s->spec.name, m->nfds - 1, d->nworkers);
    if (t->nservers == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        void *v = realloc(t->servers, cap * sizeof(*t->servers));
        if (!v)
            return tk_fail(t, "out of memory");
        t->servers = v;
        t->cap = cap;
    }
    struct held_server *h = &t->servers[t->nservers++];
    memset(h, 0, sizeof(*h));
    h->s = s;
    h->nfds = m->nfds;
    for (int i = 0; i < m->nfds; i++) {
        h->fds[i] = m->fds[i];
        m->fds[i] = -1;
    }
    const char *path = json_string_value(json_object_get(m->msg, "path"));
    h->path = path ? strdup(path) : NULL;
    return 0;
}

static int take_activation(takeover_t *t, netd_ho_msg_t *m)
{
    json_t *names = json_object_get(m->msg, "names");
    if (m->nfds <= 0 || (size_t)m->nfds != json_array_size(names))
        return tk_fail(t, "socket activation descriptors do not match their names");
    const char *nv[NETD_HO_MAX_FDS];
    for (int i = 0; i < m->nfds; i++)
        nv[i] = json_string_value(json_array_get(names, (size_t)i));
    char err[256];
    if (netd_activation_adopt(t->d, m->fds, nv, m->nfds, err, sizeof(err)) != 0)
        return tk_fail(t, "%s", err);
    return 0;
}

/* "commit": listen, start, answer. Nothing can fail the old process any more after the
 * "committed" that follows: what fails here is logged. */
static int take_commit(takeover_t *t)
{
    netd_t *d = t->d;
    if (finish_imports(t) != 0)
        return -1;
    for (size_t i = 0; i < t->nservers; i++) {
        struct held_server *h = &t->servers[i];
        int rc = netd_server_import_listen(h->s, h->fds, h->nfds, h->path);
        if (rc != 0)
            netd_log(NETD_LOG_ERROR, "upgrade: server %s cannot listen: %s", h->s->spec.name,
                     nd_strerror(rc));
        h->nfds = 0;
    }
    if (t->control_fd >= 0 && netd_control_adopt_listener(d, t->control_fd) != 0)
        netd_log(NETD_LOG_ERROR, "upgrade: the control socket cannot be served");
    t->control_fd = -1;
    on_workers(d, t->parts, worker_start);
    netd_control_start_clients(d);
    int rc = netd_ho_send(t->ch, json_pack("{s:s}", "t", "committed"), NULL, 0, NULL, 0,
                          t->deadline);
    if (rc != 0)
        netd_log(NETD_LOG_WARN, "upgrade: could not confirm to the old netd: %s", strerror(-rc));
    return 0;
}

static void takeover_free(takeover_t *t)
{
    if (t->importing > 0)
        finish_imports(t); /* the workers still use the batches */
    batches_free(t);
    for (size_t i = 0; i < t->nservers; i++) {
        for (int k = 0; k < t->servers[i].nfds; k++)
            if (t->servers[i].fds[k] >= 0)
                close(t->servers[i].fds[k]);
        free(t->servers[i].path);
    }
    free(t->servers);
    for (int i = 0; t->parts && i < t->d->nworkers; i++)
        free(t->parts[i].items);
    free(t->parts);
    if (t->control_fd >= 0)
        close(t->control_fd);
}

int netd_takeover(netd_t *d, int ch)
{
    takeover_t t = {.d = d, .ch = ch, .control_fd = -1, .test = getenv("NETD_TEST_UPGRADE")};
    const char *tv = getenv("NETD_UPGRADE_TIMEOUT_MS");
    unsigned long timeout = tv ? strtoul(tv, NULL, 10) : 30000;
    t.deadline = netd_now_ms() + (timeout ? timeout : 30000);
    t.parts = calloc((size_t)d->nworkers, sizeof(*t.parts));
    int rc = t.parts ? 0 : tk_fail(&t, "out of memory");
    if (rc == 0 && t.test && strcmp(t.test, "no-ready") == 0)
        pause(); /* the tests' binary that never gets ready: the old one times out */
    int proto = t.test && strcmp(t.test, "proto") == 0 ? 999 : NETD_UPGRADE_PROTO;
    if (rc == 0 && netd_ho_send(ch,
                                json_pack("{s:s, s:i, s:s, s:i}", "t", "ready", "proto", proto,
                                          "version", NETD_VERSION_STRING, "pid", (int)getpid()),
                                NULL, 0, NULL, 0, t.deadline) != 0)
        rc = tk_fail(&t, "the old netd went away before ready");
    bool committed = false;
    while (rc == 0 && !committed) {
        netd_ho_msg_t m;
        int r = netd_ho_recv(ch, &m, t.deadline);
        if (r != 0) {
            rc = tk_fail(&t, "the old netd %s", r == -ETIMEDOUT ? "stopped sending" : "went away");
            break;
        }
        if (strcmp(m.type, "begin") == 0) {
            atomic_store(&d->next_id,
                         (uint64_t)json_integer_value(json_object_get(m.msg, "nextId")));
            t.prev_pid = (int)json_integer_value(json_object_get(m.msg, "pid"));
            t.t0 = (uint64_t)json_integer_value(json_object_get(m.msg, "t0"));
            netd_stats_closed_load(d, json_object_get(m.msg, "closed"));
        } else if (strcmp(m.type, "activation") == 0) {
            rc = take_activation(&t, &m);
        } else if (strcmp(m.type, "control") == 0 && m.nfds == 1) {
            t.control_fd = m.fds[0];
            m.fds[0] = -1;
            const char *path = json_string_value(json_object_get(m.msg, "path"));
            if (path)
                snprintf(d->control_path, sizeof(d->control_path), "%s", path);
        } else if (strcmp(m.type, "server") == 0) {
            rc = take_server(&t, &m);
        } else if (strcmp(m.type, "sockets") == 0) {
            rc = take_sockets(&t, &m);
        } else if (strcmp(m.type, "clients") == 0) {
            rc = take_clients(&t, &m);
        } else if (strcmp(m.type, "commit") == 0) {
            rc = take_commit(&t);
            committed = rc == 0;
        } else {
            rc = tk_fail(&t, "unexpected \"%s\" from the old netd", m.type);
        }
        netd_ho_msg_free(&m);
    }
    if (rc != 0) {
        netd_log(NETD_LOG_ERROR, "upgrade: taking over failed: %s", t.why);
        netd_ho_send(ch, json_pack("{s:s, s:s}", "t", "abort", "why", t.why), NULL, 0, NULL, 0,
                     netd_now_ms() + 1000);
        takeover_free(&t);
        close(ch);
        return -1;
    }
    close(ch);
    uint64_t ms = netd_wall_ms() - t.t0;
    if (d->upgrade_requester) {
        netd_reply_ok(d->upgrade_requester, d->upgrade_reply_id,
                      json_pack("{s:i, s:i, s:I, s:I, s:I}", "pid", (int)getpid(), "previousPid",
                                t.prev_pid, "servers", (json_int_t)t.nservers, "sockets",
                                (json_int_t)t.nsockets, "ms", (json_int_t)ms));
    }
    json_decref(d->upgrade_reply_id);
    d->upgrade_reply_id = NULL;
    d->upgrade_requester = NULL;
    netd_log(NETD_LOG_INFO,
             "upgrade: took over from pid %d: %zu server(s), %zu socket record(s) in %llu ms",
             t.prev_pid, t.nservers, t.nsockets, (unsigned long long)ms);
    netd_notify("MAINPID=%d\nREADY=1\nSTATUS=serving (took over from pid %d)", (int)getpid(),
                t.prev_pid);
    takeover_free(&t);
    return 0;
}
