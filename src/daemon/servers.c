/* SPDX-License-Identifier: MIT */
/*
 * The server record's life: opening a configured or requested server as a libnetd group,
 * answering the `listen` that waits for it, closing it, and forgetting it once its group
 * has emitted 'close'.
 */
#include "config.h"

#include "daemon.h"
#include "unixpath.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

void netd_server_retain(netd_server_t *s)
{
    atomic_fetch_add(&s->refs, 1);
}

void netd_server_release(netd_server_t *s)
{
    if (atomic_fetch_sub(&s->refs, 1) == 1) {
        /* Never removed here: closing removes it, and after an upgrade it is the new
         * process's. */
        netd_unix_file_forget(s->unix_file);
        netd_listen_spec_free(&s->spec);
        free(s->label_open);
        free(s->label_bound);
        free(s->members);
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
    return json_pack("{s:s, s:s, s:i}", "address", a->address, "family", nd_family_name(a->family),
                     "port", a->port);
}

json_t *netd_server_json(netd_server_t *s, uint64_t live_read, uint64_t live_written)
{
    nd_server_stats_t st = s->final;
    int max = s->spec.max_connections;
    if (s->group) {
        nd_server_stats(s->group, &st);
        max = nd_server_max_connections(s->group);
    }
    /* What the process this one took over from had counted already (upgrade). */
    st.accepted += s->carried.accepted;
    st.rejected += s->carried.rejected;
    return json_pack(
        "{s:I, s:s, s:s, s:o, s:o, s:s, s:b, s:o, s:I, s:i, s:b, s:I, s:I, s:I, s:I, s:I}", "id",
        (json_int_t)s->id, "name", s->spec.name, "state", state_name(s->state), "address",
        address_json(s), "handler", netd_handler_describe(&s->spec.handler), "balance",
        nd_balance_name(s->spec.balance), "allowHalfOpen", s->spec.allow_half_open,
        "maxConnections", max > 0 ? json_integer(max) : json_null(), "timeout",
        (json_int_t)atomic_load(&s->timeout_ms), "backlog", s->spec.backlog, "accessLog",
        s->spec.access_log, "connections", (json_int_t)st.connections, "acceptedTotal",
        (json_int_t)st.accepted, "rejectedTotal", (json_int_t)st.rejected, "bytesReadTotal",
        (json_int_t)(atomic_load(&s->bytes_read_closed) + live_read), "bytesWrittenTotal",
        (json_int_t)(atomic_load(&s->bytes_written_closed) + live_written));
}

/* A name finds the live server first, so `close web` after a reload reaches the new one. */
netd_server_t *netd_server_by_id(netd_t *d, uint64_t id)
{
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
        if (s->id == id)
            return s;
    return NULL;
}

netd_server_t *netd_server_find(netd_t *d, const json_t *ref)
{
    netd_server_t *s, *closing = NULL;
    TAILQ_FOREACH(s, &d->servers, link) {
        if (json_is_integer(ref) && (json_int_t)s->id == json_integer_value(ref))
            return s;
        if (json_is_string(ref) && strcmp(s->spec.name, json_string_value(ref)) == 0 &&
            s->state != NETD_SRV_CLOSED) {
            if (s->state != NETD_SRV_CLOSING)
                return s;
            closing = closing ? closing : s;
        }
    }
    return closing;
}

int netd_server_rename(netd_server_t *s, const char *name)
{
    char *copy = strdup(name);
    if (!copy)
        return -ENOMEM;
    free(s->spec.name);
    s->spec.name = copy;
    return 0;
}

/* "127.0.0.1:45133", "[::1]:45133": what an unnamed server is called once bound. */
static void address_name(const nd_address_t *a, char *out, size_t len)
{
    if (a->family == 0)
        snprintf(out, len, "%s", a->address);
    else if (strchr(a->address, ':'))
        snprintf(out, len, "[%s]:%d", a->address, a->port);
    else
        snprintf(out, len, "%s:%d", a->address, a->port);
}

/* An unnamed `listen` on port 0 takes the name of the port it got, so two of them never
 * collide on "127.0.0.1:0". */
static void name_after_address(netd_server_t *s);

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

static void settle(netd_server_t *s, const char *code, const char *message)
{
    void (*fn)(netd_server_t *, const char *, const char *, void *) = s->settled;
    s->settled = NULL;
    if (fn)
        fn(s, code, message, s->settled_arg);
}

static void on_srv_listening(void *group, const nd_event_t *ev, void *arg)
{
    netd_server_t *s = arg;
    nd_server_address(group, &s->address);
    /* Bound inside the directory netd opened (/proc/self/fd/N/NAME): say the path asked. */
    if (s->spec.path && s->unix_file)
        snprintf(s->address.address, sizeof(s->address.address), "%s", s->spec.path);
    netd_server_t *other = clashing_server(s->d, s);
    if (other) {
        char msg[256];
        snprintf(msg, sizeof(msg), "netd already serves %s:%d (server %s)", s->address.address,
                 s->address.port, other->spec.name);
        netd_log(NETD_LOG_ERROR, "server %s: %s", s->spec.name, msg);
        answer_waiters(s, NETD_WAIT_LISTEN, "EADDRINUSE", msg);
        settle(s, "EADDRINUSE", msg);
        memset(&s->address, 0, sizeof(s->address));
        netd_server_close(s, true);
        return;
    }
    name_after_address(s);
    s->state = NETD_SRV_LISTENING;
    if (s->address.family)
        netd_log(NETD_LOG_INFO, "server %s listening on %s:%d", s->spec.name, s->address.address,
                 s->address.port);
    else
        netd_log(NETD_LOG_INFO, "server %s listening on %s", s->spec.name,
                 s->address.address[0] ? s->address.address : "an inherited socket");
    server_event(s, NETD_EV_LISTENING, NULL);
    answer_waiters(s, NETD_WAIT_LISTEN, NULL, NULL);
    settle(s, NULL, NULL);
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
    netd_unix_file_remove(s->unix_file);
    s->unix_file = NULL;
    settle(s, ev->error->name, ev->error->message);
    on_srv_close(group, NULL, s);
    nd_server_free(group);
}

/* The latest closed servers, by id and name, so that closing one again says ENOTRUNNING
 * rather than "no such server": a ring, so it cannot grow for the daemon's whole life. */
#define NETD_CLOSED_REMEMBERED 256
struct netd_closed_names {
    size_t n; /* ever closed; the ring holds the latest */
    struct {
        uint64_t id;
        char name[128];
    } v[NETD_CLOSED_REMEMBERED];
};

static void remember_closed(netd_t *d, const netd_server_t *s)
{
    if (!d->closed_names && !(d->closed_names = calloc(1, sizeof(*d->closed_names))))
        return; /* the second close says ENOSERVER instead */
    struct netd_closed_names *r = d->closed_names;
    size_t i = r->n++ % NETD_CLOSED_REMEMBERED;
    r->v[i].id = s->id;
    snprintf(r->v[i].name, sizeof(r->v[i].name), "%s", s->spec.name);
}

bool netd_server_closed_before(netd_t *d, const json_t *ref)
{
    const struct netd_closed_names *r = d->closed_names;
    size_t n = !r ? 0 : r->n < NETD_CLOSED_REMEMBERED ? r->n : NETD_CLOSED_REMEMBERED;
    for (size_t i = 0; i < n; i++) {
        if (json_is_integer(ref) && (json_int_t)r->v[i].id == json_integer_value(ref))
            return true;
        if (json_is_string(ref) && strcmp(r->v[i].name, json_string_value(ref)) == 0)
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
    netd_stats_closed_server(d, s);
    nd_server_stats(group, &s->final);
    netd_obs_server_closed(d, s);
    remember_closed(d, s);
    s->state = NETD_SRV_CLOSED;
    s->group = NULL; /* the library frees it after this listener */
    if (was_listening)
        netd_log(NETD_LOG_INFO, "server %s closed", s->spec.name);
    server_event(s, NETD_EV_CLOSE, NULL);
    answer_waiters(s, NETD_WAIT_CLOSE, NULL, NULL);
    /* A `listen` still waiting (closed while its host resolved) gets its answer too. */
    answer_waiters(s, NETD_WAIT_LISTEN, "ECANCELED", "the server was closed before it listened");
    settle(s, "ECANCELED", "closed before it listened");
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
    TAILQ_FOREACH(s, &d->servers, link) {
        if (s->state == NETD_SRV_CLOSING || s->state == NETD_SRV_CLOSED || s->spec.port < 0)
            continue;
        int port = s->address.port ? s->address.port : s->spec.port;
        const char *h1 = spec->host ? spec->host : "0.0.0.0";
        const char *h2 = s->spec.host ? s->spec.host : "0.0.0.0";
        if (port == spec->port &&
            (strcmp(h1, h2) == 0 || strcmp(h1, "0.0.0.0") == 0 || strcmp(h2, "0.0.0.0") == 0))
            return true;
    }
    return false;
}

static void name_after_address(netd_server_t *s)
{
    if (s->spec.name_given || s->spec.port != 0 || s->address.family == 0)
        return;
    char name[128];
    address_name(&s->address, name, sizeof(name));
    if (strcmp(name, s->spec.name) != 0 && !find_live_by_name(s->d, name))
        netd_server_rename(s, name);
}

/* A closing server that still holds a name a new server takes becomes "NAME#ID": names
 * stay unique at every moment, and the old one stays reachable by its id. */
static void retire_name(netd_t *d, const char *name)
{
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link) {
        if (s->state == NETD_SRV_CLOSING && strcmp(s->spec.name, name) == 0) {
            char retired[160];
            snprintf(retired, sizeof(retired), "%.120s#%llu", name, (unsigned long long)s->id);
            netd_log(NETD_LOG_DEBUG, "server %s (id %llu) closing: now named %s", name,
                     (unsigned long long)s->id, retired);
            netd_server_rename(s, retired);
        }
    }
}

/* Socket activation: the inherited socket serves whatever address it has; say so when the
 * config asked for another one (netd.socket and netd.json disagree). */
static void check_inherited_address(const netd_listen_spec_t *spec, int fd)
{
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
        struct sockaddr_un un;
    } a;
    memset(&a, 0, sizeof(a));
    socklen_t len = sizeof(a);
    if ((spec->port < 0 && !spec->path) || getsockname(fd, &a.sa, &len) != 0)
        return;
    char got[160] = "", want[160];
    bool differs = false;
    if (spec->path) {
        snprintf(want, sizeof(want), "%s", spec->path);
        if (a.sa.sa_family == AF_UNIX)
            snprintf(got, sizeof(got), "%.*s", (int)(len - offsetof(struct sockaddr_un, sun_path)),
                     a.un.sun_path);
        differs = strcmp(got, want) != 0;
    } else if (a.sa.sa_family == AF_INET || a.sa.sa_family == AF_INET6) {
        char ip[INET6_ADDRSTRLEN] = "";
        bool v4 = a.sa.sa_family == AF_INET;
        int port = ntohs(v4 ? a.in.sin_port : a.in6.sin6_port);
        inet_ntop(a.sa.sa_family, v4 ? (void *)&a.in.sin_addr : (void *)&a.in6.sin6_addr, ip,
                  sizeof(ip));
        snprintf(got, sizeof(got), v4 ? "%s:%d" : "[%s]:%d", ip, port);
        const char *host = spec->host ? spec->host : "0.0.0.0";
        snprintf(want, sizeof(want), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, spec->port);
        /* A host name cannot be compared without a lookup: only its port is. */
        differs = (spec->port != 0 && spec->port != port) ||
                  (nd_is_ip(host) && strcmp(host, ip) != 0);
    } else {
        snprintf(got, sizeof(got), "a socket of family %d", a.sa.sa_family);
        differs = true;
    }
    if (differs)
        netd_log(NETD_LOG_WARN,
                 "server %s: the inherited socket (socket activation) is bound to %s, the "
                 "config says %s: serving the inherited one",
                 spec->name, got, want);
}

/* The socket file of a path server, made by netd (unixpath.c): its mode, owner and group
 * from the start; from a control client, only under control.socketDirs. */
static int bind_path(netd_t *d, const netd_listen_spec_t *spec, bool from_client,
                     netd_unix_file_t **file, const char **code, char *msg, size_t msglen)
{
    char dir[sizeof(d->control_path)];
    snprintf(dir, sizeof(dir), "%s", d->control_path);
    const char *own[1] = {dirname(dir)};
    netd_unix_opts_t o = {.mode = spec->sock_mode, .uid = spec->sock_uid, .gid = spec->sock_gid};
    if (from_client) {
        o.allowed = d->cfg.nsocket_dirs ? (const char *const *)d->cfg.socket_dirs : own;
        o.nallowed = d->cfg.nsocket_dirs ? d->cfg.nsocket_dirs : 1;
    }
    int fd = netd_unix_bind(spec->path, &o, file, msg, msglen);
    if (fd < 0)
        *code = nd_err_name(fd);
    return fd;
}

/* The record's group, as every server has it: opened here, or taken over by an upgrade.
 * The first worker accepts (leastconn, roundrobin): the main loop, which also serves the
 * control socket, is not woken for every connection. */
static nd_server_t *server_group_new(netd_t *d, netd_server_t *s)
{
    nd_server_options_t opts = {.allow_half_open = s->spec.allow_half_open, .worker_accepts = 1};
    nd_server_t *g = nd_server_new_group(d->loop, &opts, d->worker_loops, d->nworkers,
                                         s->spec.balance, netd_worker_server_init, s);
    if (!g)
        return NULL;
    nd_server_set_max_connections(g, s->spec.max_connections);
    /* CONTROL.md: descriptors stay for control clients and proxy upstreams. */
    nd_server_set_fd_reserve(g, NETD_FD_RESERVE);
    nd_server_on(g, ND_EV_LISTENING, on_srv_listening, s);
    nd_server_on(g, ND_EV_ERROR, on_srv_error, s);
    nd_server_on(g, ND_EV_CLOSE, on_srv_close, s);
    return g;
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
    netd_unix_file_t *file = NULL;
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
        check_inherited_address(spec, inherited);
        /* The inherited descriptor stays open across reloads: serve a duplicate. */
        fd = fcntl(inherited, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) {
            *code = nd_err_name(-errno);
            snprintf(msg, msglen, "dup: %s", strerror(errno));
            return -1;
        }
    } else if (spec->path) {
        /* A `listen` from the control socket (it has a request waiting) is limited to
         * control.socketDirs; the config file is trusted. */
        fd = bind_path(d, spec, p != NULL, &file, code, msg, msglen);
        if (fd < 0)
            return -1;
    }
    netd_server_t *s = calloc(1, sizeof(*s));
    char *label = strdup(spec->name);
    if (s)
        s->members = calloc((size_t)d->nworkers,
                            sizeof(nd_server_t *)); // NOLINT(bugprone-sizeof-expression)
    if (!s || !s->members || !label) {
        if (fd >= 0)
            close(fd);
        netd_unix_file_remove(file);
        if (s)
            free(s->members);
        free(s);
        free(label);
        *code = "ENOMEM";
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    retire_name(d, spec->name);
    s->id = netd_next_id(d);
    s->d = d;
    s->spec = *spec;
    s->label_open = label;
    atomic_init(&s->label, label);
    s->unix_file = file;
    memset(spec, 0, sizeof(*spec));
    atomic_init(&s->timeout_ms, s->spec.timeout_ms);
    /* main's reference, and one for each worker's init to come (netd_worker_server_init
     * uses the record, and may run after a failed listen has let it go here). */
    atomic_init(&s->refs, 1 + d->nworkers);
    s->inherited_fd = fd >= 0 && !file;
    TAILQ_INIT(&s->waiters);
    s->group = server_group_new(d, s);
    int rc = s->group ? 0 : -ENOMEM;
    if (!rc) {
        if (fd >= 0)
            rc = nd_server_listen_fd(s->group, fd, s->spec.backlog);
        else
            rc = nd_server_listen(s->group, s->spec.port, s->spec.host, s->spec.backlog);
        fd = -1; /* the group owns it now, whatever happened */
    }
    if (rc) {
        *code = nd_err_name(rc);
        snprintf(msg, msglen, "listen: %s", nd_strerror(rc));
        if (fd >= 0)
            close(fd);
        netd_unix_file_remove(s->unix_file);
        s->unix_file = NULL;
        /* Never listened, so nothing will be emitted: give it back now, while the worker
         * loops its members live on are still there. */
        if (s->group) {
            nd_server_free(s->group);
            netd_server_release(s); /* the workers' inits still to come hold it */
        } else {
            atomic_store(&s->refs, 1);
            netd_server_release(s);
        }
        return -1;
    }
    s->state = NETD_SRV_STARTING;
    /* Bound at once (an IP literal): the reply, the log and the workers' label carry the
     * final name. A worker may already accept (worker_accepts): the old label stays. */
    if (nd_server_address(s->group, &s->address) == 0) {
        name_after_address(s);
        if (strcmp(s->label_open, s->spec.name) != 0) {
            s->label_bound = strdup(s->spec.name);
            if (s->label_bound)
                atomic_store_explicit(&s->label, s->label_bound, memory_order_release);
        }
    }
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
        if (c->server->id == sid && c->role == NETD_ROLE_CLIENT) {
            netd_obs_end(c, NETD_END_DESTROY);
            nd_socket_destroy(c->sock);
        }
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
    /* The path is free again at once (a reload may bind it anew); after an upgrade the
     * file is the new process's. */
    if (s->d->handed_over)
        netd_unix_file_forget(s->unix_file);
    else
        netd_unix_file_remove(s->unix_file);
    s->unix_file = NULL;
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

/* ------------------------------------------------------------------ upgrade: new side */

netd_server_t *netd_server_import(netd_t *d, const json_t *rec, char *err, size_t errlen)
{
    netd_listen_spec_t spec;
    const char *base = json_string_value(json_object_get(rec, "baseDir"));
    if (netd_listen_spec_parse(json_object_get(rec, "source"), base, "", true, &spec, err,
                               errlen) != 0)
        return NULL;
    spec.max_connections = (int)json_integer_value(json_object_get(rec, "maxConnections"));
    /* The name it had (after its port, or retired "NAME#ID"), not the source's default. */
    const char *name = json_string_value(json_object_get(rec, "name"));
    if (name && strcmp(name, spec.name) != 0) {
        char *copy = strdup(name);
        if (copy) {
            free(spec.name);
            spec.name = copy;
        }
    }
    netd_server_t *s = calloc(1, sizeof(*s));
    char *label = strdup(spec.name);
    if (s)
        s->members = calloc((size_t)d->nworkers,
                            sizeof(nd_server_t *)); // NOLINT(bugprone-sizeof-expression)
    if (!s || !s->members || !label) {
        if (s)
            free(s->members);
        free(s);
        free(label);
        netd_listen_spec_free(&spec);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->id = (uint64_t)json_integer_value(json_object_get(rec, "id"));
    s->d = d;
    s->spec = spec;
    s->label_open = label;
    atomic_init(&s->label, label);
    /* Its socket file is this process's to remove now (while it still is that file). */
    if (s->spec.path && !json_is_true(json_object_get(rec, "inheritedFd")))
        s->unix_file = netd_unix_file_adopt(s->spec.path);
    atomic_init(&s->timeout_ms, (unsigned)json_integer_value(json_object_get(rec, "timeout")));
    atomic_init(&s->refs, 1 + d->nworkers);
    s->from_config = json_is_true(json_object_get(rec, "fromConfig"));
    s->inherited_fd = json_is_true(json_object_get(rec, "inheritedFd"));
    json_t *c = json_object_get(rec, "counters");
    s->carried.accepted = (uint64_t)json_integer_value(json_object_get(c, "accepted"));
    s->carried.rejected = (uint64_t)json_integer_value(json_object_get(c, "rejected"));
    s->carried.handoff_failed = (uint64_t)json_integer_value(json_object_get(c, "handoffFailed"));
    s->carried.accept_paused = (uint64_t)json_integer_value(json_object_get(c, "acceptPaused"));
    atomic_init(&s->bytes_read_closed,
                (uint64_t)json_integer_value(json_object_get(rec, "bytesReadClosed")));
    atomic_init(&s->bytes_written_closed,
                (uint64_t)json_integer_value(json_object_get(rec, "bytesWrittenClosed")));
    TAILQ_INIT(&s->waiters);
    s->group = server_group_new(d, s);
    if (!s->group) {
        atomic_store(&s->refs, 1);
        netd_server_release(s);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->state = NETD_SRV_STARTING;
    TAILQ_INSERT_TAIL(&d->servers, s, link);
    return s;
}

int netd_server_import_listen(netd_server_t *s, int *fds, int nfds, const char *path)
{
    int rc;
    if (nfds < 1)
        return -EBADF;
    if (s->spec.balance == ND_BALANCE_REUSEPORT)
        rc = nd_server_listen_reuseport_fds(s->group, fds[0], fds + 1, nfds - 1, s->spec.backlog);
    else if (path)
        rc = nd_server_listen_fd_path(s->group, fds[0], path, s->spec.backlog);
    else
        rc = nd_server_listen_fd(s->group, fds[0], s->spec.backlog);
    if (rc == 0)
        for (int i = 0; i < nfds; i++)
            fds[i] = -1; /* the group's now */
    return rc;
}
