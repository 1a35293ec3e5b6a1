/* SPDX-License-Identifier: MIT */
/*
 * The control socket (CONTROL.md): a libnetd server on a unix path, line framing, peer
 * credentials and limits, request parsing against the command table, replies, watchers.
 */
#include "config.h"

#include "daemon.h"
#include "request.h"
#include "unixpath.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct netd_client {
    netd_t *d;
    nd_socket_t *sock; /* NULL once closed */
    char *buf;         /* bytes received, not yet a complete line */
    size_t len, cap;
    size_t scanned; /* bytes of buf known to hold no newline */
    size_t partial; /* bytes of the unfinished last line */
    int refs;       /* the socket's, plus one per command still to answer */
    bool busy;      /* a command is being answered: later lines wait */
    bool closing;   /* ETOOBIG/EPERM/EBUSY: reply sent, nothing more is read */
    bool watching;
    bool counted;   /* counts against maxClients */
    unsigned events; /* watch filter: bit per event name; 0 = all */
    bool process_scheduled;
    TAILQ_ENTRY(netd_client) link;
};

static const char *const watch_events[] = {"listening", "connection", "close", "error", NULL};

/* ------------------------------------------------------------------ lifetime */

static void client_release(netd_client_t *c)
{
    if (--c->refs > 0)
        return;
    free(c->buf);
    free(c);
}

void netd_client_hold(netd_client_t *c)
{
    c->refs++;
    c->busy = true;
}

bool netd_client_alive(const netd_client_t *c)
{
    return c && c->sock != NULL;
}

static void process_lines(netd_client_t *c);

static void process_later(void *arg)
{
    netd_client_t *c = arg;
    c->process_scheduled = false;
    if (c->sock)
        process_lines(c);
    client_release(c);
}

void netd_client_done(netd_client_t *c)
{
    c->busy = false;
    if (c->sock && !c->closing)
        nd_socket_resume(c->sock);
    /* Later requests of this client run on a later turn, never inside a reply. */
    if (c->sock && !c->process_scheduled) {
        c->process_scheduled = true;
        c->refs++;
        nd_loop_defer(c->d->loop, process_later, c);
    }
    client_release(c);
}

/* ------------------------------------------------------------------ replies */

static void send_line(netd_client_t *c, json_t *obj)
{
    char *text = json_dumps(obj, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(obj);
    if (!text || !c->sock) {
        free(text);
        return;
    }
    size_t n = strlen(text);
    text[n] = '\n'; /* json_dumps NUL-terminates: the NUL becomes the newline */
    nd_socket_write(c->sock, text, n + 1, NULL, NULL);
    free(text);
}

void netd_reply_ok(netd_client_t *c, json_t *id, json_t *fields)
{
    json_t *r = json_pack("{s:O, s:b}", "id", id ? id : json_null(), "ok", 1);
    if (fields) {
        json_object_update(r, fields);
        json_decref(fields);
    }
    send_line(c, r);
}

void netd_reply_error(netd_client_t *c, json_t *id, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *r = json_pack("{s:O, s:b, s:{s:s, s:s}}", "id", id ? id : json_null(), "ok", 0,
                          "error", "code", code, "message", msg);
    /* Every request gets its reply, even when the message cannot be sent as it is. */
    if (!r)
        r = json_pack("{s:O, s:b, s:{s:s, s:s}}", "id", id ? id : json_null(), "ok", 0,
                      "error", "code", code, "message", "(message not valid UTF-8)");
    send_line(c, r);
}

/* A refusal before any request: one reply, then the connection ends. */
static void refuse(netd_client_t *c, const char *code, const char *msg)
{
    netd_reply_error(c, NULL, code, "%s", msg);
    c->closing = true;
    nd_socket_end(c->sock, NULL, 0);
}

/* ------------------------------------------------------------------ requests */

static void run_line(netd_client_t *c, const char *line, size_t len)
{
    netd_request_t r;
    if (netd_request_parse(line, len, &r) != 0) {
        netd_reply_error(c, r.id, r.code, "%s", r.message);
    } else {
        netd_command_run(c->d, c, r.cmd, r.req, r.id);
    }
    netd_request_free(&r);
}

/* Runs complete lines in order; stops while a command is still being answered. */
static void process_lines(netd_client_t *c)
{
    c->refs++;
    while (c->sock && !c->busy && !c->closing && !c->watching) {
        char *nl = memchr(c->buf + c->scanned, '\n', c->len - c->scanned);
        if (!nl) {
            c->scanned = c->len;
            break;
        }
        size_t n = (size_t)(nl - c->buf);
        if (n > NETD_MAX_LINE) {
            refuse(c, NETD_ETOOBIG, "request line longer than 1 MiB");
            break;
        }
        /* Copy out: a command may read more data into buf while it runs. */
        char *line = malloc(n + 1);
        if (!line)
            break;
        memcpy(line, c->buf, n);
        line[n] = '\0';
        memmove(c->buf, nl + 1, c->len - n - 1);
        c->len -= n + 1;
        c->scanned = 0;
        if (n > 0 && line[n - 1] == '\r')
            n--; /* tolerate CRLF from telnet-like clients */
        if (n > 0)
            run_line(c, line, n);
        free(line);
    }
    client_release(c);
}

static void on_data(void *sock, const nd_event_t *ev, void *arg)
{
    netd_client_t *c = arg;
    if (c->closing)
        return; /* the rest of an oversized line, or anything after a refusal */
    if (c->len + ev->len > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < c->len + ev->len)
            cap *= 2;
        char *b = realloc(c->buf, cap);
        if (!b) {
            nd_socket_destroy(sock);
            return;
        }
        c->buf = b;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, ev->data, ev->len);
    c->len += ev->len;
    /* An unfinished line past the limit can never become valid: refuse it now. */
    const char *nl = memrchr(ev->data, '\n', ev->len);
    c->partial = nl ? (size_t)(ev->data + ev->len - nl - 1) : c->partial + ev->len;
    if (c->partial > NETD_MAX_LINE) {
        refuse(c, NETD_ETOOBIG, "request line longer than 1 MiB");
        c->len = 0;
        return;
    }
    /* Requests pile up while one is answered: stop reading rather than buffer without end. */
    if (c->busy && c->len > 2 * NETD_MAX_LINE)
        nd_socket_pause(sock);
    process_lines(c);
}

static void on_client_close(void *sock, const nd_event_t *ev, void *arg)
{
    netd_client_t *c = arg;
    netd_t *d = c->d;
    if (c->counted)
        d->nclients--;
    if (c->watching)
        atomic_fetch_sub(&d->watchers, 1);
    TAILQ_REMOVE(&d->clients, c, link);
    c->sock = NULL;
    client_release(c);
}

static void on_client_idle(void *sock, const nd_event_t *ev, void *arg)
{
    netd_client_t *c = arg;
    if (!c->watching && !c->busy)
        nd_socket_destroy(sock);
}

/* Who may talk to us: root, our own uid, or the configured group (CONTROL.md). */
static bool peer_allowed(netd_t *d, int fd)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return false;
    if (cred.uid == 0 || cred.uid == geteuid())
        return true;
    return d->cfg.has_control_gid && cred.gid == d->cfg.control_gid;
}

static void on_control_connection(void *server, const nd_event_t *ev, void *arg)
{
    netd_t *d = arg;
    nd_socket_t *sock = ev->socket;
    netd_client_t *c = calloc(1, sizeof(*c));
    if (!c) {
        nd_socket_destroy(sock);
        return;
    }
    c->d = d;
    c->sock = sock;
    c->refs = 1;
    TAILQ_INSERT_TAIL(&d->clients, c, link);
    nd_socket_on(sock, ND_EV_DATA, on_data, c);
    nd_socket_on(sock, ND_EV_CLOSE, on_client_close, c);
    if (!peer_allowed(d, nd_socket_fd(sock))) {
        netd_log(NETD_LOG_WARN, "control: refused a peer of another user");
        refuse(c, NETD_EPERM, "not allowed: connect as root, the daemon's user or its group");
        return;
    }
    if (d->nclients >= d->cfg.control_max_clients) {
        netd_log(NETD_LOG_WARN, "control: %d clients already, refused one more", d->nclients);
        refuse(c, NETD_EBUSY, "too many control clients");
        return;
    }
    c->counted = true;
    d->nclients++;
    if (d->cfg.control_idle_timeout_ms)
        nd_socket_set_timeout(sock, d->cfg.control_idle_timeout_ms, on_client_idle, c);
}

/* ------------------------------------------------------------------ watch */

void netd_client_watch(netd_client_t *c, json_t *events)
{
    c->events = 0;
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        for (int k = 0; watch_events[k]; k++)
            if (strcmp(json_string_value(e), watch_events[k]) == 0)
                c->events |= 1u << k;
    }
    if (!c->watching)
        atomic_fetch_add(&c->d->watchers, 1);
    c->watching = true;
}

int netd_watch_event_known(const char *name)
{
    for (int k = 0; watch_events[k]; k++)
        if (strcmp(name, watch_events[k]) == 0)
            return 1;
    return 0;
}

void netd_control_broadcast(netd_t *d, const char *event, json_t *line)
{
    int bit = -1;
    for (int k = 0; watch_events[k]; k++)
        if (strcmp(event, watch_events[k]) == 0)
            bit = k;
    netd_client_t *c, *next;
    for (c = TAILQ_FIRST(&d->clients); c; c = next) {
        next = TAILQ_NEXT(c, link);
        if (!c->watching || !c->sock || c->closing)
            continue;
        if (c->events && (bit < 0 || !(c->events & (1u << bit))))
            continue;
        if (nd_socket_buffer_size(c->sock) > NETD_WATCH_MAX_BEHIND) {
            /* It cannot keep up: say so and let it go rather than hold memory for it. */
            send_line(c, json_pack("{s:s}", "event", "overflow"));
            c->closing = true;
            nd_socket_end(c->sock, NULL, 0);
            continue;
        }
        send_line(c, json_incref(line));
    }
    json_decref(line);
}

typedef struct watch_msg {
    netd_t *d;
    char event[16];
    json_t *line;
} watch_msg_t;

static void watch_deliver(nd_loop_t *loop, void *arg)
{
    watch_msg_t *m = arg;
    netd_control_broadcast(m->d, m->event, m->line);
    free(m);
}

void netd_watch_emit(netd_t *d, const char *event, uint64_t server, uint64_t socket,
                     json_t *extra)
{
    if (atomic_load_explicit(&d->watchers, memory_order_relaxed) == 0) {
        json_decref(extra);
        return;
    }
    json_t *line = json_pack("{s:s, s:I}", "event", event, "server", (json_int_t)server);
    if (socket)
        json_object_set_new(line, "socket", json_integer((json_int_t)socket));
    if (extra) {
        json_object_update(line, extra);
        json_decref(extra);
    }
    watch_msg_t *m = malloc(sizeof(*m));
    if (!m) {
        json_decref(line);
        return;
    }
    m->d = d;
    snprintf(m->event, sizeof(m->event), "%s", event);
    m->line = line;
    /* Through the main loop's mailbox even from the main thread: one order for all. */
    nd_loop_post(d->loop, watch_deliver, m);
}

/* ------------------------------------------------------------------ the socket */

int netd_control_start(netd_t *d)
{
    const char *path = d->control_path;
    char why[512];
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        netd_log(NETD_LOG_ERROR, "control socket path too long: %s", path);
        return -ENAMETOOLONG;
    }
    int rc = d->control_default ? netd_unix_default_dir(path, why, sizeof(why)) : 0;
    if (rc) {
        netd_log(NETD_LOG_ERROR, "control socket %s: %s", path, why);
        return rc;
    }
    /* Never blocks: a listener with a full backlog is "busy", and not replaced either. */
    switch (netd_unix_probe(path)) {
    case NETD_PEER_ANSWERS:
        netd_log(NETD_LOG_ERROR, "another netd answers on %s: refusing to start", path);
        return -EADDRINUSE;
    case NETD_PEER_BUSY:
        netd_log(NETD_LOG_ERROR,
                 "a process listens on %s but does not answer at once: refusing to start", path);
        return -EADDRINUSE;
    default:
        break;
    }
    netd_unix_opts_t o = {.mode = (int)d->cfg.control_mode,
                          .uid = (uid_t)-1,
                          .gid = d->cfg.has_control_gid ? (gid_t)d->cfg.control_gid : (gid_t)-1,
                          .via_rename = true};
    int fd = netd_unix_bind(path, &o, &d->control_file, why, sizeof(why));
    if (fd < 0) {
        netd_log(NETD_LOG_ERROR, "control socket: %s", why);
        return fd;
    }
    d->control = nd_server_new(d->loop, NULL, on_control_connection, d);
    if (!d->control || nd_server_listen_fd(d->control, fd, 64) != 0) {
        close(fd);
        netd_unix_file_remove(d->control_file);
        d->control_file = NULL;
        return -ENOMEM;
    }
    /* Control clients never hold the daemon up: the drain waits for data only. */
    nd_server_unref(d->control);
    return 0;
}

void netd_control_stop(netd_t *d)
{
    if (d->control) {
        nd_server_close(d->control, NULL, NULL);
        d->control = NULL;
        /* Only if the path still is the socket this netd made (CONTROL.md Transport). */
        netd_unix_file_remove(d->control_file);
        d->control_file = NULL;
    }
    netd_client_t *c;
    TAILQ_FOREACH(c, &d->clients, link)
        if (c->sock)
            nd_socket_destroy(c->sock);
}
