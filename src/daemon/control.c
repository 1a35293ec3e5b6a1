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
#include <event2/event.h>

/*
 * One control connection.
 * Owned by: the main loop; no worker ever sees it. Referenced by its socket (until
 * 'close') and by each netd_pending_t still to be answered; freed when both are gone.
 * Bounded (CONTROL.md Transport): unread requests and unread replies each stop the
 * reading past NETD_CLIENT_MAX_QUEUED; replies that do not move for the idle timeout get
 * the connection destroyed; a refused or ending connection is destroyed after a second.
 */
struct netd_client {
    netd_t *d;
    nd_socket_t *sock; /* NULL once closed */
    char *buf;         /* unread input: buf[start, len) */
    size_t start, len, cap;
    size_t scanned; /* bytes from start known to hold no newline */
    size_t partial; /* bytes of the unfinished last line */
    int refs;       /* the socket's, plus one per request still to answer */
    int pending;    /* requests still to answer: later lines wait for them */
    bool closing;   /* ETOOBIG/EPERM/EBUSY/overflow: nothing more is run */
    bool watching;
    bool counted;    /* counts against maxClients */
    bool eof;        /* the peer sent FIN: answer what is there, then end */
    bool ended;      /* our FIN is on its way */
    bool throttled;  /* reading paused by a bound */
    unsigned events; /* watch filter: bit per event kind; 0 = all */
    bool process_scheduled;
    struct event *kill_ev; /* a closing client is destroyed when it fires */
    TAILQ_ENTRY(netd_client) link;
};

/* The control socket's clients: this module's alone (netd_t holds the pointer). */
struct netd_clients {
    int n; /* counted against control.maxClients */
    TAILQ_HEAD(, netd_client) list;
};

int netd_control_init(netd_t *d)
{
    d->clients = calloc(1, sizeof(*d->clients));
    if (!d->clients)
        return -ENOMEM;
    TAILQ_INIT(&d->clients->list);
    return 0;
}

void netd_control_free(netd_t *d)
{
    free(d->clients);
    d->clients = NULL;
}

/* Unread requests, or unread replies, past which a client is not read from. */
#define NETD_CLIENT_MAX_QUEUED ((size_t)1024 * 1024)
/* How long a refused or closing client may linger. */
#define NETD_CLIENT_KILL_MS 1000

static const char *const watch_events[] = {"listening", "connection", "close", "error", NULL};

/* ------------------------------------------------------------------ lifetime */

static void client_release(netd_client_t *c)
{
    if (--c->refs > 0)
        return;
    if (c->kill_ev)
        event_free(c->kill_ev);
    free(c->buf);
    free(c);
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

/* Later requests of this client run on a later turn, never inside a reply. */
static void schedule_processing(netd_client_t *c)
{
    if (c->sock && !c->process_scheduled && nd_loop_defer(c->d->loop, process_later, c) == 0) {
        c->process_scheduled = true;
        c->refs++;
    }
}

netd_pending_t *netd_pending_new(netd_client_t *c, json_t *id)
{
    netd_pending_t *p = calloc(1, sizeof(*p));
    if (!p) {
        netd_reply_error(c, id, "ENOMEM", "out of memory");
        return NULL;
    }
    p->client = c;
    p->id = json_incref(id);
    c->refs++;
    c->pending++;
    return p;
}

static void pending_free(netd_pending_t *p)
{
    netd_client_t *c = p->client;
    json_decref(p->id);
    free(p);
    c->pending--;
    schedule_processing(c);
    client_release(c);
}

void netd_pending_drop(netd_pending_t *p)
{
    pending_free(p);
}

void netd_pending_ok(netd_pending_t *p, json_t *fields)
{
    netd_reply_ok(p->client, p->id, fields);
    pending_free(p);
}

void netd_pending_error(netd_pending_t *p, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    netd_reply_error(p->client, p->id, code, "%s", msg);
    pending_free(p);
}

static void on_kill(evutil_socket_t fd, short what, void *arg)
{
    netd_client_t *c = arg;
    if (c->sock)
        nd_socket_destroy(c->sock);
}

/* The connection ends: our FIN after the replies. A refused or overflowing client (kill)
 * is also destroyed within a second, whatever it does (reads nothing, keeps sending); one
 * that ended itself gets all its replies, and the idle timeout bounds a stalled reader. */
static void client_finish(netd_client_t *c, bool kill)
{
    if (!c->sock)
        return;
    c->closing = true;
    if (!c->ended) {
        c->ended = true;
        nd_socket_end(c->sock, NULL, 0);
    }
    if (!kill)
        return;
    if (!c->kill_ev)
        c->kill_ev = evtimer_new(nd_loop_base(c->d->loop), on_kill, c);
    struct timeval tv = {NETD_CLIENT_KILL_MS / 1000,
                         (suseconds_t)(NETD_CLIENT_KILL_MS % 1000) * 1000};
    if (!c->kill_ev || evtimer_add(c->kill_ev, &tv) != 0)
        nd_socket_destroy(c->sock);
}

/* ------------------------------------------------------------------ replies */

static void send_line(netd_client_t *c, json_t *obj)
{
    char *text = json_dumps(obj, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(obj);
    if (!text || !c->sock || c->ended) {
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
    json_t *r = json_pack("{s:O, s:b, s:{s:s, s:s}}", "id", id ? id : json_null(), "ok", 0, "error",
                          "code", code, "message", msg);
    /* Every request gets its reply, even when the message cannot be sent as it is. */
    if (!r)
        r = json_pack("{s:O, s:b, s:{s:s, s:s}}", "id", id ? id : json_null(), "ok", 0, "error",
                      "code", code, "message", "(message not valid UTF-8)");
    send_line(c, r);
}

/* A refusal: one reply, then the connection ends. */
static void refuse(netd_client_t *c, const char *code, const char *msg)
{
    netd_reply_error(c, NULL, code, "%s", msg);
    client_finish(c, true);
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

/* Reading stops while either bound is passed, and starts again once both are below. */
static void update_reading(netd_client_t *c)
{
    if (!c->sock || c->closing)
        return;
    bool over = c->len - c->start > NETD_CLIENT_MAX_QUEUED ||
                nd_socket_buffer_size(c->sock) > NETD_CLIENT_MAX_QUEUED;
    if (over && !c->throttled) {
        c->throttled = true;
        nd_socket_pause(c->sock);
    } else if (!over && c->throttled) {
        c->throttled = false;
        nd_socket_resume(c->sock);
    }
}

/* The next complete line, or (at EOF) the unterminated last one. NULL when none. */
static char *next_line(netd_client_t *c, size_t *n)
{
    size_t avail = c->len - c->start;
    if (avail == 0)
        return NULL;
    char *base = c->buf + c->start;
    char *nl = memchr(base + c->scanned, '\n', avail - c->scanned);
    if (!nl) {
        c->scanned = avail;
        if (!c->eof)
            return NULL;
        *n = avail; /* CONTROL.md: a last line without \n before EOF is answered too */
        c->start = c->len;
        c->scanned = 0;
        c->partial = 0;
        return base;
    }
    *n = (size_t)(nl - base);
    c->start += *n + 1;
    c->scanned = 0;
    return base;
}

/* Runs complete lines in order; stops while a request is still to be answered, while
 * the client's replies wait unread past the bound, and for good once it watches. */
static void process_lines(netd_client_t *c)
{
    c->refs++;
    while (c->sock && c->pending == 0 && !c->closing && !c->watching && !c->d->upgrading &&
           nd_socket_buffer_size(c->sock) <= NETD_CLIENT_MAX_QUEUED) {
        size_t n;
        char *line = next_line(c, &n);
        if (!line)
            break;
        if (n > NETD_MAX_LINE) {
            refuse(c, NETD_ETOOBIG, "request line longer than 1 MiB");
            break;
        }
        /* Copy out: a command may read more data into buf while it runs. */
        char *copy = malloc(n + 1);
        if (!copy) {
            nd_socket_destroy(c->sock);
            break;
        }
        memcpy(copy, line, n);
        copy[n] = '\0';
        if (n > 0 && copy[n - 1] == '\r')
            n--; /* tolerate CRLF from telnet-like clients */
        if (n > 0)
            run_line(c, copy, n);
        free(copy);
    }
    /* Everything the peer sent before its FIN is answered: our side ends too. */
    if (c->sock && c->eof && !c->watching && !c->closing && c->pending == 0 && c->start == c->len &&
        !c->d->upgrading)
        client_finish(c, false);
    update_reading(c);
    client_release(c);
}

/* Keeps buf[start, len) and room for `more` bytes: the consumed prefix is dropped only
 * when it is at least half the buffer, so splitting lines stays linear. */
static bool reserve(netd_client_t *c, size_t more)
{
    size_t used = c->len - c->start;
    if (c->start > 0 && (c->start >= c->cap / 2 || c->len + more > c->cap)) {
        memmove(c->buf, c->buf + c->start, used);
        c->start = 0;
        c->len = used;
    }
    if (c->len + more <= c->cap)
        return true;
    size_t cap = c->cap ? c->cap : 4096;
    while (cap < c->len + more)
        cap *= 2;
    char *b = realloc(c->buf, cap);
    if (!b)
        return false;
    c->buf = b;
    c->cap = cap;
    return true;
}

static void on_data(void *sock, const nd_event_t *ev, void *arg)
{
    netd_client_t *c = arg;
    if (c->closing || c->watching)
        return; /* the rest of an oversized line, anything after a refusal or a watch */
    if (!reserve(c, ev->len)) {
        nd_socket_destroy(sock);
        return;
    }
    memcpy(c->buf + c->len, ev->data, ev->len);
    c->len += ev->len;
    /* An unfinished line past the limit can never become valid: refuse it now. */
    const char *nl = memrchr(ev->data, '\n', ev->len);
    c->partial = nl ? (size_t)(ev->data + ev->len - nl - 1) : c->partial + ev->len;
    if (c->partial > NETD_MAX_LINE) {
        refuse(c, NETD_ETOOBIG, "request line longer than 1 MiB");
        c->start = c->len = 0;
        return;
    }
    process_lines(c);
}

static void on_end(void *sock, const nd_event_t *ev, void *arg)
{
    netd_client_t *c = arg;
    c->eof = true;
    if (!c->closing && !c->watching)
        process_lines(c);
}

static void on_drain(void *sock, const nd_event_t *ev, void *arg)
{
    netd_client_t *c = arg;
    /* Replies moved: requests held back by the output bound may run again. */
    update_reading(c);
    schedule_processing(c);
}

/* The client's socket is gone (its 'close', or it left with an upgrade): out of the
 * books; the record itself lives while replies still hold it. */
static void client_gone(netd_client_t *c)
{
    netd_t *d = c->d;
    if (c->counted)
        d->clients->n--;
    if (c->watching)
        atomic_fetch_sub(&d->watchers, 1);
    if (c->kill_ev)
        evtimer_del(c->kill_ev);
    TAILQ_REMOVE(&d->clients->list, c, link);
    c->sock = NULL;
}

static void on_client_close(void *sock, const nd_event_t *ev, void *arg)
{
    netd_client_t *c = arg;
    client_gone(c);
    client_release(c);
}

static void on_client_idle(void *sock, const nd_event_t *ev, void *arg)
{
    netd_client_t *c = arg;
    /* Replies the peer has not taken for a whole idle period: it is gone or hostile. */
    if (nd_socket_buffer_size(sock) > 0 || (!c->watching && c->pending == 0))
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
    TAILQ_INSERT_TAIL(&d->clients->list, c, link);
    nd_socket_on(sock, ND_EV_DATA, on_data, c);
    nd_socket_on(sock, ND_EV_END, on_end, c);
    nd_socket_on(sock, ND_EV_DRAIN, on_drain, c);
    nd_socket_on(sock, ND_EV_CLOSE, on_client_close, c);
    if (!peer_allowed(d, nd_socket_fd(sock))) {
        netd_log(NETD_LOG_WARN, "control: refused a peer of another user");
        refuse(c, NETD_EPERM, "not allowed: connect as root, the daemon's user or its group");
        return;
    }
    if (d->clients->n >= d->cfg.control_max_clients) {
        netd_log(NETD_LOG_WARN, "control: %d clients already, refused one more", d->clients->n);
        refuse(c, NETD_EBUSY, "too many control clients");
        return;
    }
    c->counted = true;
    d->clients->n++;
    if (d->cfg.control_idle_timeout_ms)
        nd_socket_set_timeout(sock, d->cfg.control_idle_timeout_ms, on_client_idle, c);
}

/* ------------------------------------------------------------------ watch */

void netd_client_watch(netd_client_t *c, json_t *events)
{
    c->events = 0;
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e) {
        for (int k = 0; watch_events[k]; k++)
            if (strcmp(json_string_value(e), watch_events[k]) == 0)
                c->events |= 1u << k;
    }
    if (!c->watching)
        atomic_fetch_add(&c->d->watchers, 1);
    c->watching = true;
    /* Input after `watch` is not run: what is buffered goes, what comes is discarded. */
    c->start = c->len = c->scanned = c->partial = 0;
}

int netd_watch_event_known(const char *name)
{
    for (int k = 0; watch_events[k]; k++)
        if (strcmp(name, watch_events[k]) == 0)
            return 1;
    return 0;
}

void netd_control_broadcast(netd_t *d, enum netd_event_kind kind, json_t *line)
{
    int bit = (int)kind; /* watch_events follows enum netd_event_kind */
    netd_client_t *c, *next;
    for (c = TAILQ_FIRST(&d->clients->list); c; c = next) {
        next = TAILQ_NEXT(c, link);
        if (!c->watching || !c->sock || c->closing)
            continue;
        if (c->events && !(c->events & (1u << bit)))
            continue;
        if (nd_socket_buffer_size(c->sock) > NETD_WATCH_MAX_BEHIND) {
            /* It cannot keep up: the overflow line goes after what is queued, and the
             * connection is destroyed a second later whether or not it was read, rather
             * than hold memory (or a client slot) for it. */
            send_line(c, json_pack("{s:s}", "event", "overflow"));
            client_finish(c, true);
            continue;
        }
        send_line(c, json_incref(line));
    }
    json_decref(line);
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
    /* Half-open: a client's FIN does not end our side before its last line is answered. */
    nd_server_options_t opts = {.allow_half_open = 1};
    d->control = nd_server_new(d->loop, &opts, on_control_connection, d);
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
        /* Only if the path still is the socket this netd made (CONTROL.md Transport);
         * after an upgrade it is the new netd's, the same inode: left alone. */
        if (d->handed_over)
            netd_unix_file_forget(d->control_file);
        else
            netd_unix_file_remove(d->control_file);
        d->control_file = NULL;
    }
    if (!d->clients)
        return; /* netd stopped before netd_control_init */
    netd_client_t *c;
    TAILQ_FOREACH(c, &d->clients->list, link)
        if (c->sock)
            nd_socket_destroy(c->sock);
}

/* ------------------------------------------------------------------ handing over (upgrade.c) */

/* Nothing a client asked is still being worked on, but the upgrade itself. */
bool netd_control_settled(netd_t *d, const netd_pending_t *upgrade)
{
    netd_client_t *c;
    TAILQ_FOREACH(c, &d->clients->list, link)
        if (c->sock && c->pending > (upgrade && upgrade->client == c ? 1 : 0))
            return false;
    return true;
}

int netd_control_export(netd_t *d, const netd_pending_t *upgrade, netd_client_export_t **out,
                        size_t *n)
{
    *out = NULL;
    *n = 0;
    size_t cap = 0;
    netd_client_t *c, *next;
    for (c = TAILQ_FIRST(&d->clients->list); c; c = next) {
        next = TAILQ_NEXT(c, link);
        if (!c->sock)
            continue;
        if (c->closing) {
            nd_socket_destroy(c->sock); /* refused or ending anyway: it does not travel */
            continue;
        }
        netd_client_export_t item = {.c = c};
        if (nd_socket_export(c->sock, &item.ex) != 0) {
            netd_log(NETD_LOG_WARN, "upgrade: a control client is busy; it is closed");
            nd_socket_destroy(c->sock);
            continue;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            netd_client_export_t *v = realloc(*out, cap * sizeof(**out));
            if (!v) {
                nd_socket_export_abort(&item.ex);
                return -ENOMEM;
            }
            *out = v;
        }
        item.watching = c->watching;
        item.events = c->events;
        item.eof = c->eof;
        item.unread = c->buf + c->start;
        item.nunread = c->len - c->start;
        item.requester = upgrade && upgrade->client == c;
        item.reply_id = item.requester ? upgrade->id : NULL;
        (*out)[(*n)++] = item;
    }
    return 0;
}

void netd_control_export_abort(netd_t *d, netd_client_export_t *items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        nd_socket_export_abort(&items[i].ex);
    free(items);
    netd_client_t *c;
    TAILQ_FOREACH(c, &d->clients->list, link)
        schedule_processing(c); /* requests held back during the attempt run now */
}

void netd_control_export_commit(netd_t *d, netd_client_export_t *items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        netd_client_t *c = items[i].c;
        client_gone(c); /* it leaves without 'close' */
        nd_socket_export_commit(&items[i].ex);
        client_release(c);
    }
    free(items);
}

netd_client_t *netd_control_import(netd_t *d, const void *rec, size_t len, int fd,
                                   const netd_client_export_t *state)
{
    netd_client_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    nd_socket_t *socks[2];
    if ((state->nunread && !reserve(c, state->nunread)) ||
        nd_socket_import(d->loop, rec, len, &fd, 1, NULL, socks) != 0) {
        free(c->buf);
        free(c);
        return NULL;
    }
    c->d = d;
    c->sock = socks[0];
    c->refs = 1;
    if (state->nunread)
        memcpy(c->buf, state->unread, state->nunread);
    c->len = state->nunread;
    c->eof = state->eof;
    c->counted = true;
    d->clients->n++;
    if (state->watching) {
        c->watching = true;
        c->events = state->events;
        atomic_fetch_add(&d->watchers, 1);
    }
    TAILQ_INSERT_TAIL(&d->clients->list, c, link);
    nd_socket_on(c->sock, ND_EV_DATA, on_data, c);
    nd_socket_on(c->sock, ND_EV_END, on_end, c);
    nd_socket_on(c->sock, ND_EV_DRAIN, on_drain, c);
    nd_socket_on(c->sock, ND_EV_CLOSE, on_client_close, c);
    if (d->cfg.control_idle_timeout_ms)
        nd_socket_set_timeout(c->sock, d->cfg.control_idle_timeout_ms, on_client_idle, c);
    return c;
}

void netd_control_start_clients(netd_t *d)
{
    netd_client_t *c;
    TAILQ_FOREACH(c, &d->clients->list, link) {
        if (c->sock) {
            nd_socket_import_start(c->sock);
            schedule_processing(c); /* lines that came with it, or a last one before EOF */
        }
    }
}

int netd_control_adopt_listener(netd_t *d, int fd)
{
    /* Taken over from the previous netd: the file at the path now is this one's to
     * remove at exit (while it still is that file). */
    d->control_file = netd_unix_file_adopt(d->control_path);
    nd_server_options_t opts = {.allow_half_open = 1};
    d->control = nd_server_new(d->loop, &opts, on_control_connection, d);
    if (!d->control || nd_server_listen_fd(d->control, fd, 64) != 0) {
        close(fd);
        return -ENOMEM;
    }
    nd_server_unref(d->control);
    return 0;
}
