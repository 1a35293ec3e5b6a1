/* SPDX-License-Identifier: MIT */
/*
 * proxy: each client gets its own connection to the upstream (cfg->path, or cfg->host and
 * cfg->port), and the two are piped to each other both ways.
 *
 * What the library does for us: nd_socket_pipe() gives backpressure (a source is paused
 * while its destination has output queued) and passes a FIN on (end_dst). What we add:
 * the pair lives and dies together, and a failed upstream connect closes the client.
 *
 * Half-close works best with allowHalfOpen on the server: a client that sends FIN then
 * ends the upstream's write side only, and the upstream's reply still flows back. Without
 * it the library ends the client's side as soon as its FIN arrives, the client socket
 * closes, and so does the upstream: whatever the upstream still had to say is lost.
 * The upstream socket is always allowHalfOpen, so an upstream that finishes first ends
 * only the client's write side and the client may keep sending.
 *
 * State: none per pair once connected. The two sockets are linked by listeners whose
 * argument is the other socket, and after a move the link is found again through the
 * pipe (nd_socket_pipe_peer). The data slots of both sockets are left to the daemon.
 */
#include "config.h"

#include "handlers.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_HOST "127.0.0.1"

/* ---- the pair: either side closing or failing takes the other one with it ---- */

static void on_close(void *self, const nd_event_t *ev, void *peer);
static void on_error(void *self, const nd_event_t *ev, void *peer);

static void link_one(nd_socket_t *a, nd_socket_t *b)
{
    nd_socket_on(a, ND_EV_ERROR, on_error, b);
    nd_socket_on(a, ND_EV_CLOSE, on_close, b);
}

static void link_pair(nd_socket_t *a, nd_socket_t *b)
{
    link_one(a, b);
    link_one(b, a);
}

/* `self` is going away: the peer's listeners must stop pointing at it, since the library
 * frees `self` once its 'close' is over. */
static void unlink_from(nd_socket_t *self, nd_socket_t *peer)
{
    nd_socket_off(peer, ND_EV_ERROR, on_error, self);
    nd_socket_off(peer, ND_EV_CLOSE, on_close, self);
}

static void on_close(void *self, const nd_event_t *ev, void *peer)
{
    /* The peer is alive here: had it closed first, it would have unlinked us. After a
     * clean close destroying the peer drops nothing: a pipe keeps its source paused while
     * the destination has output queued, so each FIN was read, and passed on, only once
     * everything before it had left. */
    unlink_from(self, peer);
    nd_socket_destroy(peer);
}

static void on_error(void *self, const nd_event_t *ev, void *peer)
{
    /* A half-broken pair is no use. 'close' normally follows an error anyway; destroying
     * both makes sure of it (destroy is idempotent), and their 'close' listeners do the
     * unlinking. */
    nd_socket_destroy(self);
    nd_socket_destroy(peer);
}

/* ---- connecting: the only phase with state (the hooks and the client) ---- */

typedef struct dial {
    netd_handler_env_t env; /* a copy: the daemon's may not outlive this call */
    nd_socket_t *client;    /* held until the dial ends, so the pointer stays valid */
} dial_t;

static void on_dial(void *self, const nd_event_t *ev, void *arg);

static void dial_end(nd_socket_t *upstream, dial_t *d)
{
    nd_socket_off(upstream, ND_EV_CONNECT, on_dial, d);
    nd_socket_off(upstream, ND_EV_ERROR, on_dial, d);
    nd_socket_off(upstream, ND_EV_CLOSE, on_dial, d);
    nd_socket_release(d->client);
    free(d);
}

/* The upstream's first 'connect', 'error' or 'close' ends the dial. */
static void on_dial(void *self, const nd_event_t *ev, void *arg)
{
    dial_t *d = arg;

    if (ev->type == ND_EV_CONNECT) {
        /* Somewhere to send it now: let the client's bytes flow (resume is a no-op if the
         * client is already gone). */
        nd_socket_resume(d->client);
    } else if (ev->type == ND_EV_ERROR && d->env.upstream_failed != NULL) {
        /* ECONNREFUSED, ENOENT, ENOTFOUND...: the pair link (added after this listener)
         * then destroys the client. */
        d->env.upstream_failed(d->env.ctx, d->client, ev->error);
    }
    /* A 'close' with no 'error' first: the client went away and took the upstream. */
    dial_end(self, d);
}

static void proxy_connection(const netd_handler_cfg_t *cfg, nd_socket_t *client,
                             const netd_handler_env_t *env)
{
    const char *host = cfg->host != NULL ? cfg->host : DEFAULT_HOST;
    nd_connect_options_t opts = {
        .port = cfg->port,
        .host = host,
        .family = nd_is_ip(host) == 6 ? 6 : 4, /* names resolve as IPv4, as in v0.10 */
        .path = cfg->path,
        .allow_half_open = 1,
    };
    dial_t *d = malloc(sizeof(*d));
    nd_socket_t *upstream = NULL;

    /* Read nothing until there is somewhere to send it. */
    nd_socket_pause(client);
    if (d != NULL)
        upstream = nd_connect(nd_socket_loop(client), &opts, NULL, NULL);
    if (upstream == NULL) {
        /* Only ENOMEM or a bad option get here; the daemon hears of it like any failure. */
        int code = d == NULL ? -ENOMEM : -errno;
        nd_error_t err = {.code = code,
                          .name = nd_err_name(code),
                          .syscall = "connect",
                          .address = cfg->path != NULL ? cfg->path : host,
                          .port = cfg->path != NULL ? -1 : cfg->port,
                          .message = nd_strerror(code)};
        free(d);
        if (env->upstream_failed != NULL)
            env->upstream_failed(env->ctx, client, &err);
        nd_socket_destroy(client);
        return;
    }
    if (env->upstream_opened != NULL)
        env->upstream_opened(env->ctx, client, upstream);

    d->env = *env;
    d->client = client;
    nd_socket_hold(client);
    nd_socket_on(upstream, ND_EV_CONNECT, on_dial, d);
    nd_socket_on(upstream, ND_EV_ERROR, on_dial, d);
    nd_socket_on(upstream, ND_EV_CLOSE, on_dial, d);
    link_pair(client, upstream);

    /*
     * Piped at once, not at 'connect': the client is paused, so nothing flows yet, but the
     * library now sees a pair, and a pair whose upstream is still connecting refuses to
     * move (EBUSY). Unpiped, the client alone could be moved to another thread while its
     * upstream stayed here. Writes before 'connect' would be queued in any case.
     */
    nd_socket_pipe(client, upstream, 1);
    nd_socket_pipe(upstream, client, 1);
}

static void proxy_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                        const netd_handler_env_t *env)
{
    /* The pair moved together and lost its listeners; the pipes survived and lead us to
     * the other half. (Only a connected pair can move, so the dial is long over.) */
    nd_socket_t *peer = nd_socket_pipe_peer(sock);

    if (peer == NULL) {
        /* No upstream left to talk to: nothing useful can happen on this socket. */
        nd_socket_destroy(sock);
        return;
    }
    link_pair(sock, peer);
}

/* The upstream: like a server address, exactly one of port (with a host) or path. */
static int proxy_parse(const netd_handler_reader_t *r, netd_handler_cfg_t *cfg)
{
    bool port = netd_hr_has(r, "port"), host = netd_hr_has(r, "host");
    if (port && netd_hr_has(r, "path"))
        return netd_hr_fail(r, "path", "not allowed with handler.port (give one of them)");
    if (netd_hr_has(r, "path")) {
        if (host)
            return netd_hr_fail(r, "host", "not allowed with handler.path");
        return netd_hr_unix_path(r, "path", &cfg->path);
    }
    if (!port)
        return host ? netd_hr_fail(r, "host", "needs handler.port")
                    : netd_hr_fail(r, "port", "required for proxy (or handler.path)");
    if (netd_hr_port(r, "port", &cfg->port) < 0)
        return -1;
    if (host)
        return netd_hr_host(r, "host", &cfg->host);
    cfg->host = strdup(DEFAULT_HOST);
    return cfg->host ? 0 : netd_hr_fail(r, "host", "out of memory");
}

static void proxy_describe(const netd_handler_cfg_t *cfg, json_t *out)
{
    if (cfg->path) {
        json_object_set_new(out, "path", json_string(cfg->path));
    } else {
        json_object_set_new(out, "port", json_integer(cfg->port));
        json_object_set_new(out, "host", json_string(cfg->host ? cfg->host : DEFAULT_HOST));
    }
}

static const char *const proxy_keys[] = {"port", "host", "path", NULL};

const netd_handler_ops_t netd_handler_proxy = {
    .name = "proxy",
    .keys = proxy_keys,
    .half_open = true,
    .descriptors = 2,
    .parse = proxy_parse,
    .describe = proxy_describe,
    .connection = proxy_connection,
    .adopt = proxy_adopt,
};
