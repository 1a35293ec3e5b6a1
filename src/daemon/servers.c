/*
 * The server record's life: opening a configured or requested server as a libnetd group,
 * answering the `listen` that waits for it, closing it, and forgetting it once its group
 * has emitted 'close'.
 */
#include "config.h"

#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void netd_server_retain(netd_server_t *s)
{
    atomic_fetch_add(&s->refs, 1);
}

void netd_server_release(netd_server_t *s)
{
    if (atomic_fetch_sub(&s->refs, 1) == 1) {
        netd_listen_spec_free(&s->spec);
        free(s);
    }
}

static const char *state_name(enum netd_server_state st)
{
    switch (st) {
    case NETD_SRV_STARTING:
    case NETD_SRV_LISTENING:
        return "listening";
    case NETD_SRV_CLOSING:
        return "closing";
    case NETD_SRV_CLOSED:
        return "closed";
    }
    return "closed";
}

static json_t *address_json(const netd_server_t *s)
{
    const nd_address_t *a = &s->address;
    if (a->family == 0 && a->address[0])
        return json_pack("{s:s}", "path", a->address);
    if (a->family == 0)
        return s->spec.path ? json_pack("{s:s}", "path", s->spec.path) : json_null();
    return json_pack("{s:s, s:s, s:i}", "address", a->address, "family",
                     nd_family_name(a->family), "port", a->port);
}

json_t *netd_server_json(netd_server_t *s, uint64_t live_read, uint64_t live_written)
{
    nd_server_stats_t st = s->final;
    int max = s->spec.max_connections;
    if (s->group) {
        nd_server_stats(s->group, &st);
        max = nd_server_max_connections(s->group);
    }
    return json_pack(
        "{s:I, s:s, s:s, s:o, s:o, s:s, s:b, s:o, s:I, s:i, s:I, s:I, s:I, s:I, s:I}", "id",
        (json_int_t)s->id, "name", s->spec.name, "state", state_name(s->state), "address",
        address_json(s), "handler", netd_handler_describe(&s->spec.handler), "balance",
        nd_balance_name(s->spec.balance), "allowHalfOpen", s->spec.allow_half_open,
        "maxConnections", max > 0 ? json_integer(max) : json_null(), "timeout",
        (json_int_t)atomic_load(&s->timeout_ms), "backlog", s->spec.backlog, "connections",
        (json_int_t)st.connections, "acceptedTotal", (json_int_t)st.accepted, "rejectedTotal",
        (json_int_t)st.rejected, "bytesReadTotal",
        (json_int_t)(atomic_load(&s->bytes_read_closed) + live_read), "bytesWrittenTotal",
        (json_int_t)(atomic_load(&s->bytes_written_closed) + live_written));
}

netd_server_t *netd_server_find(netd_t *d, const json_t *ref)
{
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
    {
        if (json_is_integer(ref) && (json_int_t)s->id == json_integer_value(ref))
            return s;
        if (json_is_string(ref) && strcmp(s->spec.name, json_string_value(ref)) == 0 &&
            s->state != NETD_SRV_CLOSED)
            return s;
    }
    return NULL;
}

static netd_server_t *find_live_by_name(netd_t *d, const char *name)
{
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
        if (s->state != NETD_SRV_CLOSING && s->state != NETD_SRV_CLOSED &&
            strcmp(s->spec.name, name) == 0)
            return s;
    return NULL;
}

/* Answers every waiter of one kind: ok with the server object, or an error. */
static void answer_waiters(netd_server_t *s, int kind, const char *code, const char *msg)
{
    netd_pending_t *p, *next;
    for (p = TAILQ_FIRST(&s->waiters); p; p = next) {
        next = TAILQ_NEXT(p, link);
        if (p->waits_for != kind)
            continue;
        TAILQ_REMOVE(&s->waiters, p, link);
        if (code)
            netd_pending_error(p, code, "%s", msg);
        else
            netd_pending_ok(p, json_pack("{s:o}", "server", netd_server_json(s, 0, 0)));
    }
}

static void server_event(netd_server_t *s, enum netd_event_kind kind, const nd_error_t *err)
{
    netd_event_t *e = netd_event_new(s->d, kind, s);
    if (!e)
        return;
    if (err) {
        snprintf(e->code, sizeof(e->code), "%s", err->name);
        snprintf(e->message, sizeof(e->message), "%s", err->message);
    }
    netd_event_post(e);
}

/* Two TCP addresses one listener could not both have: same port, and the same IP or a
 * wildcard on either side (a dual-stack "::" takes IPv4 too). */
static bool addresses_clash(const nd_address_t *a, const nd_address_t *b)
{
    if (!a->family || !b->family || a->port != b->port)
        return false;
    bool wa = strcmp(a->address, "0.0.0.0") == 0 || strcmp(a->address, "::") == 0;
    bool wb = strcmp(b->address, "0.0.0.0") == 0 || strcmp(b->address, "::") == 0;
    return wa || wb || strcmp(a->address, b->address) == 0;
}

/* Another live server of ours bound where s just bound. Only reuseport lets the kernel
 * accept that; host names (`localhost`) are compared as the addresses they resolved to. */
static netd_server_t *clashing_server(netd_t *d, const netd_server_t *s)
{
    netd_server_t *o;
    TAILQ_FOREACH(o, &d->servers, link)
        if (o != s && o->state == NETD_SRV_LISTENING && addresses_clash(&o->address, &s->address))
            return o;
    return NULL;
}

static void on_srv_listening(void *group, const nd_event_t *ev, void *arg)
{
    netd_server_t *s = arg;
    nd_server_address(group, &s->address);
    netd_server_t *other = clashing_server(s->d, s);
    if (other) {
        char msg[256];
        snprintf(msg, sizeof(msg), "netd already serves %s:%d (server %s)", s->address.address,
                 s->address.port, other->spec.name);
        netd_log(NETD_LOG_ERROR, "server %s: %s", s->spec.name, msg);
        answer_waiters(s, NETD_WAIT_LISTEN, "EADDRINUSE", msg);
        memset(&s->address, 0, sizeof(s->address));
        netd_server_close(s, true);
        return;
    }
    s->state = NETD_SRV_LISTENING;
    if (s->address.family)
        netd_log(NETD_LOG_INFO, "server %s listening on %s:%d", s->spec.name, s->address.address,
                 s->address.port);
    else
        netd_log(NETD_LOG_INFO, "server %s listening on %s", s->spec.name,
                 s->address.address[0] ? s->address.address : "an inherited socket");
    server_event(s, NETD_EV_LISTENING, NULL);
    answer_waiters(s, NETD_WAIT_LISTEN, NULL, NULL);
}

static void on_srv_close(void *group, const nd_event_t *ev, void *arg);

/* A server's 'error' is always a failed listen, and no 'close' follows it (libnetd does as
 * Node does): the record goes here as if the server had closed, and the group, still ours,
 * is given back. */
static void on_srv_error(void *group, const nd_event_t *ev, void *arg)
{
    netd_server_t *s = arg;
    netd_log(NETD_LOG_ERROR, "server %s: %s", s->spec.name, ev->error->message);
    server_event(s, NETD_EV_ERROR, ev->error);
    answer_waiters(s, NETD_WAIT_LISTEN, ev->error->name, ev->error->message);
    on_srv_close(group, NULL, s);
    nd_server_free(group);
}

static void remember_closed(netd_t *d, const netd_server_t *s)
{
    size_t i = d->nclosed++ % NETD_CLOSED_REMEMBERED;
    d->closed_ids[i].id = s->id;
    snprintf(d->closed_ids[i].name, sizeof(d->closed_ids[i].name), "%s", s->spec.name);
}

bool netd_server_closed_before(netd_t *d, const json_t *ref)
{
    size_t n = d->nclosed < NETD_CLOSED_REMEMBERED ? d->nclosed : NETD_CLOSED_REMEMBERED;
    for (size_t i = 0; i < n; i++) {
        if (json_is_integer(ref) && (json_int_t)d->closed_ids[i].id == json_integer_value(ref))
            return true;
        if (json_is_string(ref) && strcmp(d->closed_ids[i].name, json_string_value(ref)) == 0)
            return true;
    }
    return false;
}

static void on_srv_close(void *group, const nd_event_t *ev, void *arg)
{
    netd_server_t *s = arg;
    netd_t *d = s->d;
    bool was_listening = s->state == NETD_SRV_LISTENING ||
                         (s->state == NETD_SRV_CLOSING && s->address.family + s->address.port > 0);
    netd_stats_closed_server(d, group);
    nd_server_stats(group, &s->final);
    remember_closed(d, s);
    s->state = NETD_SRV_CLOSED;
    s->group = NULL; /* the library frees it after this listener */
    if (was_listening)
        netd_log(NETD_LOG_INFO, "server %s closed", s->spec.name);
    server_event(s, NETD_EV_CLOSE, NULL);
    answer_waiters(s, NETD_WAIT_CLOSE, NULL, NULL);
    /* A `listen` still waiting (closed while its host resolved) gets its answer too. */
    answer_waiters(s, NETD_WAIT_LISTEN, "ECANCELED", "the server was closed before it listened");
    TAILQ_REMOVE(&d->servers, s, link);
    netd_server_release(s);
    netd_maybe_drained(d);
}

/* Another server of ours already on this TCP address (reuseport would let both bind). */
static bool address_taken(netd_t *d, const netd_listen_spec_t *spec)
{
    if (spec->port <= 0)
        return false;
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
    {
        if (s->state == NETD_SRV_CLOSING || s->state == NETD_SRV_CLOSED || s->spec.port < 0)
            continue;
        int port = s->address.port ? s->address.port : s->spec.port;
        const char *h1 = spec->host ? spec->host : "0.0.0.0";
        const char *h2 = s->spec.host ? s->spec.host : "0.0.0.0";
        if (port == spec->port && (strcmp(h1, h2) == 0 || strcmp(h1, "0.0.0.0") == 0 ||
                                   strcmp(h2, "0.0.0.0") == 0))
            return true;
    }
    return false;
}

int netd_server_open(netd_t *d, netd_listen_spec_t *spec, netd_pending_t *p, const char **code,
                     char *msg, size_t msglen)
{
    if (find_live_by_name(d, spec->name)) {
        *code = NETD_EEXIST;
        snprintf(msg, msglen, "a server named \"%s\" exists", spec->name);
        return -1;
    }
    if (address_taken(d, spec)) {
        *code = "EADDRINUSE";
        snprintf(msg, msglen, "netd already serves port %d", spec->port);
        return -1;
    }
    int fd = -1;
    int named = -1;
    if (spec->fd < 0 && !spec->fd_name) {
        /* Socket activation: an fd named after this server replaces its own bind. */
        netd_listen_spec_t by_name = {.fd = -1, .fd_name = spec->name};
        named = netd_listen_fd_lookup(d, &by_name);
    }
    if (named >= 0 || spec->fd >= 0 || spec->fd_name) {
        int inherited = named >= 0 ? named : netd_listen_fd_lookup(d, spec);
        if (inherited < 0) {
            *code = NETD_EBADF;
            snprintf(msg, msglen, "fd %s was not inherited through socket activation",
                     spec->fd_name ? spec->fd_name : "given");
            return -1;
        }
        if (spec->balance == ND_BALANCE_REUSEPORT) {
            /* Each worker needs a listener of its own: one inherited descriptor is one. */
            *code = "EINVAL";
            snprintf(msg, msglen, "balance: reuseport cannot serve the inherited descriptor %s",
                     spec->fd_name ? spec->fd_name : spec->name);
            return -1;
        }
        /* The inherited descriptor stays open across reloads: serve a duplicate. */
        fd = fcntl(inherited, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) {
            *code = nd_err_name(-errno);
            snprintf(msg, msglen, "dup: %s", strerror(errno));
            return -1;
        }
    }
    netd_server_t *s = calloc(1, sizeof(*s));
    if (!s) {
        if (fd >= 0)
            close(fd);
        *code = "ENOMEM";
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    s->id = netd_next_id(d);
    s->d = d;
    s->spec = *spec;
    memset(spec, 0, sizeof(*spec));
    atomic_init(&s->timeout_ms, s->spec.timeout_ms);
    atomic_init(&s->refs, 1);
    s->inherited_fd = fd >= 0;
    TAILQ_INIT(&s->waiters);
    /* The first worker accepts (leastconn, roundrobin): the main loop, which also serves
     * the control socket, is not woken for every connection. */
    nd_server_options_t opts = {.allow_half_open = s->spec.allow_half_open,
                                .worker_accepts = 1};
    s->group = nd_server_new_group(d->loop, &opts, d->worker_loops, d->nworkers,
                                   s->spec.balance, netd_worker_server_init, s);
    int rc = s->group ? 0 : -ENOMEM;
    if (!rc) {
        nd_server_set_max_connections(s->group, s->spec.max_connections);
        /* CONTROL.md: descriptors stay for control clients and proxy upstreams. */
        nd_server_set_fd_reserve(s->group, NETD_FD_RESERVE);
        nd_server_on(s->group, ND_EV_LISTENING, on_srv_listening, s);
        nd_server_on(s->group, ND_EV_ERROR, on_srv_error, s);
        nd_server_on(s->group, ND_EV_CLOSE, on_srv_close, s);
        if (fd >= 0)
            rc = nd_server_listen_fd(s->group, fd, s->spec.backlog);
        else if (s->spec.path)
            rc = nd_server_listen_path(s->group, s->spec.path, s->spec.backlog);
        else
            rc = nd_server_listen(s->group, s->spec.port, s->spec.host, s->spec.backlog);
    }
    if (rc) {
        *code = nd_err_name(rc);
        snprintf(msg, msglen, "listen: %s", nd_strerror(rc));
        /* Never listened, so nothing will be emitted: give it back now, while the worker
         * loops its members live on are still there. */
        if (s->group)
            nd_server_free(s->group);
        netd_listen_spec_free(&s->spec);
        free(s);
        return -1;
    }
    s->state = NETD_SRV_STARTING;
    TAILQ_INSERT_TAIL(&d->servers, s, link);
    if (p) {
        p->waits_for = NETD_WAIT_LISTEN;
        TAILQ_INSERT_TAIL(&s->waiters, p, link);
    }
    return 0;
}

/* Worker: every client connection of one server is destroyed (its upstream follows). */
static void destroy_server_conns(netd_worker_t *w, void *arg)
{
    uint64_t sid = *(const uint64_t *)arg;
    netd_conn_t *c, *next;
    for (c = TAILQ_FIRST(&w->conns); c; c = next) {
        next = TAILQ_NEXT(c, link);
        if (c->server->id == sid && c->role == NETD_ROLE_CLIENT)
            nd_socket_destroy(c->sock);
    }
}

static void destroyed_all(netd_t *d, void *arg)
{
    free(arg); /* the server id */
}

void netd_server_close(netd_server_t *s, bool destroy_conns)
{
    if (s->state != NETD_SRV_LISTENING && s->state != NETD_SRV_STARTING)
        return;
    s->state = NETD_SRV_CLOSING;
    if (s->group)
        nd_server_close(s->group, NULL, NULL);
    if (!destroy_conns)
        return;
    /* Set before the fan-out is posted: a socket that reaches a worker after the fan-out
     * passed there (a move or a handoff in flight) sees it and is destroyed on arrival. */
    atomic_store(&s->destroying, true);
    uint64_t *sid = malloc(sizeof(*sid));
    if (sid) {
        *sid = s->id;
        if (netd_fanout(s->d, destroy_server_conns, destroyed_all, sid) != 0)
            free(sid);
    }
}
