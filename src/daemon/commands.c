/* SPDX-License-Identifier: MIT */
/*
 * The control commands (CONTROL.md "Commands"): one function per command, dispatched
 * from one table.
 */
#include "config.h"

#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/event.h>

typedef void (*command_fn)(netd_t *d, netd_client_t *c, json_t *req, json_t *id);

/* ------------------------------------------------------------------ fan-out helpers */

typedef struct cmd_ctx {
    netd_client_t *client;
    json_t *id;
    json_t *req;
    uint64_t server_id; /* 0: all */
    uint64_t socket_id;
    int thread;
    long long limit, older, idle;
    int role; /* -1 all */
    int expected;
} cmd_ctx_t;

static cmd_ctx_t *ctx_new(netd_client_t *c, json_t *id, json_t *req)
{
    cmd_ctx_t *x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    x->client = c;
    x->id = json_incref(id);
    x->req = json_incref(req);
    netd_client_hold(c);
    return x;
}

static void ctx_done(cmd_ctx_t *x)
{
    netd_client_done(x->client);
    json_decref(x->id);
    json_decref(x->req);
    free(x);
}

static void fanout_or_fail(netd_t *d, netd_fanout_fn fn, netd_fanout_done done, cmd_ctx_t *x)
{
    if (netd_fanout(d, fn, done, x) != 0) {
        netd_reply_error(x->client, x->id, "ENOMEM", "out of memory");
        ctx_done(x);
    }
}

/* Bytes of live client connections, per server: {"<id>": [read, written]}. */
static json_t *collect_bytes(netd_worker_t *w, void *arg)
{
    json_t *out = json_object();
    netd_conn_t *c;
    TAILQ_FOREACH(c, &w->conns, link)
    {
        if (c->role != NETD_ROLE_CLIENT)
            continue;
        char key[24];
        snprintf(key, sizeof(key), "%llu", (unsigned long long)c->server->id);
        json_t *e = json_object_get(out, key);
        json_int_t r = (json_int_t)nd_socket_bytes_read(c->sock);
        json_int_t wr = (json_int_t)nd_socket_bytes_written(c->sock);
        if (e) {
            json_array_set_new(e, 0, json_integer(json_integer_value(json_array_get(e, 0)) + r));
            json_array_set_new(e, 1, json_integer(json_integer_value(json_array_get(e, 1)) + wr));
        } else {
            json_object_set_new(out, key, json_pack("[I, I]", r, wr));
        }
    }
    return out;
}

static json_t *server_json_with(netd_t *d, netd_server_t *s, json_t **results)
{
    char key[24];
    snprintf(key, sizeof(key), "%llu", (unsigned long long)s->id);
    uint64_t r = 0, w = 0;
    for (int i = 0; i < d->nworkers; i++) {
        json_t *e = results ? json_object_get(results[i], key) : NULL;
        if (e) {
            r += (uint64_t)json_integer_value(json_array_get(e, 0));
            w += (uint64_t)json_integer_value(json_array_get(e, 1));
        }
    }
    return netd_server_json(s, r, w);
}

/* ------------------------------------------------------------------ commands */

static void cmd_ping(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_reply_ok(c, id, json_pack("{s:s, s:i, s:I}", "version", NETD_VERSION_STRING, "pid",
                                   (int)getpid(), "uptimeMs",
                                   (json_int_t)(netd_now_ms() - d->started_ms)));
}

static void cmd_help(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    json_t *arr = json_array();
    for (const netd_command_t *k = netd_commands; k->name; k++)
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s}", "cmd", k->name, "usage",
                                             k->usage, "summary", k->summary));
    netd_reply_ok(c, id, json_pack("{s:o}", "commands", arr));
}

static void cmd_listen(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    if (d->draining) {
        netd_reply_error(c, id, NETD_ESHUTDOWN, "netd is draining");
        return;
    }
    netd_listen_spec_t spec;
    char err[512];
    if (netd_listen_spec_parse(req, NULL, "", true, &spec, err, sizeof(err)) != 0) {
        netd_reply_error(c, id, NETD_EARG, "%s", err);
        return;
    }
    const char *code = NULL;
    char msg[512];
    if (netd_server_open(d, &spec, c, id, &code, msg, sizeof(msg)) != 0) {
        netd_listen_spec_free(&spec);
        netd_reply_error(c, id, code, "%s", msg);
    }
}

static netd_server_t *server_arg(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    json_t *ref = json_object_get(req, "server");
    netd_server_t *s = netd_server_find(d, ref);
    if (!s && strcmp(json_string_value(json_object_get(req, "cmd")), "close") == 0 &&
        netd_server_closed_before(d, ref)) {
        netd_reply_error(c, id, NETD_ENOTRUNNING, "server %s is closed",
                         json_is_string(ref) ? json_string_value(ref) : "given");
        return NULL;
    }
    if (!s) {
        if (json_is_integer(ref))
            netd_reply_error(c, id, NETD_ENOSERVER, "no server with id %lld",
                             (long long)json_integer_value(ref));
        else
            netd_reply_error(c, id, NETD_ENOSERVER, "no server named \"%s\"",
                             json_string_value(ref));
    }
    return s;
}

/* An optional "server" argument: 0 when absent (all servers); false when it names none
 * (the ENOSERVER reply is sent). */
static bool optional_server(netd_t *d, netd_client_t *c, json_t *req, json_t *id, uint64_t *sid)
{
    *sid = 0;
    if (!json_object_get(req, "server"))
        return true;
    netd_server_t *s = server_arg(d, c, req, id);
    if (s)
        *sid = s->id;
    return s != NULL;
}

static void cmd_close(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_server_t *s = server_arg(d, c, req, id);
    if (!s)
        return;
    if (s->state != NETD_SRV_LISTENING && s->state != NETD_SRV_STARTING) {
        netd_reply_error(c, id, NETD_ENOTRUNNING, "server %s is not listening", s->spec.name);
        return;
    }
    json_t *wait = json_object_get(req, "wait");
    bool wait_close = !wait || json_is_true(wait);
    netd_server_close(s, json_is_true(json_object_get(req, "destroy")));
    if (!wait_close) {
        netd_reply_ok(c, id, json_pack("{s:o}", "server", netd_server_json(s, 0, 0)));
        return;
    }
    netd_waiter_t *w = calloc(1, sizeof(*w));
    if (!w) {
        netd_reply_error(c, id, "ENOMEM", "out of memory");
        return;
    }
    w->client = c;
    w->id = json_incref(id);
    netd_client_hold(c);
    TAILQ_INSERT_TAIL(&s->close_waiters, w, link);
}

static void servers_done(netd_t *d, json_t **results, void *arg)
{
    cmd_ctx_t *x = arg;
    json_t *arr = json_array();
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
        if (s->state != NETD_SRV_CLOSED)
            json_array_append_new(arr, server_json_with(d, s, results));
    netd_reply_ok(x->client, x->id, json_pack("{s:o}", "servers", arr));
    ctx_done(x);
}

static void cmd_servers(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    cmd_ctx_t *x = ctx_new(c, id, req);
    if (x)
        fanout_or_fail(d, collect_bytes, servers_done, x);
}

static void server_done(netd_t *d, json_t **results, void *arg)
{
    cmd_ctx_t *x = arg;
    netd_server_t *s = netd_server_find(d, json_object_get(x->req, "server"));
    if (s)
        netd_reply_ok(x->client, x->id,
                      json_pack("{s:o}", "server", server_json_with(d, s, results)));
    else
        netd_reply_error(x->client, x->id, NETD_ENOSERVER, "the server closed meanwhile");
    ctx_done(x);
}

static void cmd_server(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    if (!server_arg(d, c, req, id))
        return;
    cmd_ctx_t *x = ctx_new(c, id, req);
    if (x)
        fanout_or_fail(d, collect_bytes, server_done, x);
}

static void count_done(nd_server_t *group, int err, int count, void *arg)
{
    cmd_ctx_t *x = arg;
    netd_reply_ok(x->client, x->id, json_pack("{s:i}", "count", count));
    ctx_done(x);
}

static void cmd_get_connections(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_server_t *s = server_arg(d, c, req, id);
    if (!s)
        return;
    if (!s->group) {
        netd_reply_ok(c, id, json_pack("{s:i}", "count", 0));
        return;
    }
    cmd_ctx_t *x = ctx_new(c, id, req);
    if (x && nd_server_get_connections(s->group, count_done, x) != 0) {
        netd_reply_error(c, id, "ENOMEM", "out of memory");
        ctx_done(x);
    }
}

static bool nonneg_arg(netd_client_t *c, json_t *req, json_t *id, const char *name,
                       long long *out, long long dflt)
{
    json_t *v = json_object_get(req, name);
    *out = v ? (long long)json_integer_value(v) : dflt;
    if (*out < 0) {
        netd_reply_error(c, id, NETD_EARG, "%s: must be 0 or more", name);
        return false;
    }
    return true;
}

static json_t *collect_sockets(netd_worker_t *w, void *arg)
{
    cmd_ctx_t *x = arg;
    json_t *arr = json_array();
    netd_conn_t *c;
    uint64_t now = netd_now_ms();
    TAILQ_FOREACH(c, &w->conns, link)
    {
        if (x->server_id && c->server->id != x->server_id)
            continue;
        if (x->role >= 0 && (int)c->role != x->role)
            continue;
        if (x->older && now - c->created_ms <= (uint64_t)x->older)
            continue;
        if (x->idle && nd_socket_idle_ms(c->sock) <= (uint64_t)x->idle)
            continue;
        json_array_append_new(arr, netd_conn_json(c));
    }
    return arr;
}

static int by_id(const void *a, const void *b)
{
    json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "id"));
    json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "id"));
    return x < y ? -1 : x > y;
}

static void sockets_done(netd_t *d, json_t **results, void *arg)
{
    cmd_ctx_t *x = arg;
    size_t total = 0;
    for (int i = 0; i < d->nworkers; i++)
        total += json_array_size(results[i]);
    json_t **all = calloc(total ? total : 1, sizeof(json_t *));
    size_t n = 0;
    for (int i = 0; all && i < d->nworkers; i++) {
        size_t k;
        json_t *e;
        json_array_foreach(results[i], k, e) all[n++] = e;
    }
    if (all)
        qsort(all, n, sizeof(json_t *), by_id);
    json_t *arr = json_array();
    for (size_t i = 0; i < n && (long long)i < x->limit; i++)
        json_array_append(arr, all[i]);
    free(all);
    netd_reply_ok(x->client, x->id, json_pack("{s:o, s:I}", "sockets", arr, "total", (json_int_t)total));
    ctx_done(x);
}

static void cmd_sockets(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    uint64_t sid;
    if (!optional_server(d, c, req, id, &sid))
        return;
    long long limit, older, idle;
    if (!nonneg_arg(c, req, id, "limit", &limit, 1000) ||
        !nonneg_arg(c, req, id, "olderThanMs", &older, 0) ||
        !nonneg_arg(c, req, id, "idleMoreThanMs", &idle, 0))
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
    cmd_ctx_t *x = ctx_new(c, id, req);
    if (!x)
        return;
    x->server_id = sid;
    x->limit = limit;
    x->older = older;
    x->idle = idle;
    x->role = role;
    fanout_or_fail(d, collect_sockets, sockets_done, x);
}

static json_t *destroy_one(netd_worker_t *w, void *arg)
{
    cmd_ctx_t *x = arg;
    netd_conn_t *c = netd_worker_find(w, x->socket_id);
    if (!c)
        return NULL;
    nd_socket_destroy(c->sock);
    return json_true();
}

static void destroy_done(netd_t *d, json_t **results, void *arg)
{
    cmd_ctx_t *x = arg;
    int found = 0;
    for (int i = 0; i < d->nworkers; i++)
        found += results[i] != NULL;
    if (found)
        netd_reply_ok(x->client, x->id, json_pack("{s:i}", "destroyed", 1));
    else
        netd_reply_error(x->client, x->id, NETD_ENOSOCKET, "no socket with id %llu",
                         (unsigned long long)x->socket_id);
    ctx_done(x);
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

static void cmd_destroy(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    uint64_t sid;
    if (!socket_id_arg(c, req, id, &sid))
        return;
    cmd_ctx_t *x = ctx_new(c, id, req);
    if (!x)
        return;
    x->socket_id = sid;
    fanout_or_fail(d, destroy_one, destroy_done, x);
}

/* The owner of the socket starts the move; its reply comes from the target's adopt. */
static json_t *move_one(netd_worker_t *w, void *arg)
{
    cmd_ctx_t *x = arg;
    netd_conn_t *c = netd_worker_find(w, x->socket_id);
    if (!c)
        return NULL;
    int rc = netd_worker_move(w, c, x->thread, x->client, x->id);
    if (rc == -EALREADY)
        return json_pack("{s:i, s:o}", "rc", rc, "socket", netd_conn_json(c));
    return json_pack("{s:i}", "rc", rc);
}

static void move_done(netd_t *d, json_t **results, void *arg)
{
    cmd_ctx_t *x = arg;
    /* The socket may be seen twice: by its owner, which starts the move, and by the target
     * if it arrives there before the target runs this query. The started move wins. */
    json_t *r = NULL;
    for (int i = 0; i < d->nworkers; i++) {
        if (!results[i])
            continue;
        if (!r || json_integer_value(json_object_get(results[i], "rc")) == 0)
            r = results[i];
    }
    int rc = r ? (int)json_integer_value(json_object_get(r, "rc")) : 0;
    if (!r) {
        netd_reply_error(x->client, x->id, NETD_ENOSOCKET, "no socket with id %llu",
                         (unsigned long long)x->socket_id);
    } else if (rc == 0) {
        /* Moving: the adopt on the target replies and releases the client. */
        netd_client_hold(x->client);
    } else if (rc == -EALREADY) {
        netd_reply_ok(x->client, x->id, json_pack("{s:O}", "socket", json_object_get(r, "socket")));
    } else if (rc == -EBUSY) {
        netd_reply_error(x->client, x->id, NETD_EBUSY, "socket %llu cannot move now (connecting, or piped to a socket that is not its pair)",
                         (unsigned long long)x->socket_id);
    } else {
        netd_reply_error(x->client, x->id, nd_err_name(rc), "%s", nd_strerror(rc));
    }
    ctx_done(x);
}

static void cmd_move(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    uint64_t sid;
    if (!socket_id_arg(c, req, id, &sid))
        return;
    json_int_t t = json_integer_value(json_object_get(req, "thread"));
    if (t < 0 || t >= d->nworkers) {
        netd_reply_error(c, id, NETD_EARG, "thread: must be 0-%d", d->nworkers - 1);
        return;
    }
    cmd_ctx_t *x = ctx_new(c, id, req);
    if (!x)
        return;
    x->socket_id = sid;
    x->thread = (int)t;
    fanout_or_fail(d, move_one, move_done, x);
}

/* ---- rebalance: count per thread, plan moves from the fullest to the emptiest ---- */

static json_t *collect_movable(netd_worker_t *w, void *arg)
{
    cmd_ctx_t *x = arg;
    json_t *ids = json_array();
    netd_conn_t *c;
    TAILQ_FOREACH(c, &w->conns, link)
        if (c->role == NETD_ROLE_CLIENT && (!x->server_id || c->server->id == x->server_id))
            json_array_append_new(ids, json_integer((json_int_t)c->id));
    return ids;
}

typedef struct rebalance {
    cmd_ctx_t *x;
    json_t *plan; /* per worker: array of [socket id, target thread] */
    int pending;  /* moves not yet reported */
    int moved;
} rebalance_t;

static void rebalance_reply(rebalance_t *rb)
{
    netd_reply_ok(rb->x->client, rb->x->id, json_pack("{s:i}", "moved", rb->moved));
    ctx_done(rb->x);
    json_decref(rb->plan);
    free(rb);
}

void netd_rebalance_moved(netd_t *d, void *arg, bool ok)
{
    rebalance_t *rb = arg;
    if (ok)
        rb->moved++;
    if (--rb->pending == 0)
        rebalance_reply(rb);
}

static json_t *run_plan(netd_worker_t *w, void *arg)
{
    rebalance_t *rb = arg;
    json_t *mine = json_array_get(rb->plan, (size_t)w->index);
    int started = 0;
    size_t i;
    json_t *e;
    json_array_foreach(mine, i, e)
    {
        netd_conn_t *c = netd_worker_find(w, (uint64_t)json_integer_value(json_array_get(e, 0)));
        int to = (int)json_integer_value(json_array_get(e, 1));
        if (c && netd_worker_move_rebalance(w, c, to, rb) == 0)
            started++;
    }
    return json_integer(started);
}

static void plan_started(netd_t *d, json_t **results, void *arg)
{
    rebalance_t *rb = arg;
    int started = 0;
    for (int i = 0; i < d->nworkers; i++)
        started += (int)json_integer_value(results[i]);
    /* Moves report back through the main loop's mailbox, after this runs. */
    rb->pending += started;
    if (rb->pending == 0)
        rebalance_reply(rb);
}

static void rebalance_counted(netd_t *d, json_t **results, void *arg)
{
    cmd_ctx_t *x = arg;
    int n = d->nworkers;
    int *count = calloc((size_t)n, sizeof(int));
    size_t *next = calloc((size_t)n, sizeof(size_t));
    rebalance_t *rb = calloc(1, sizeof(*rb));
    if (!count || !next || !rb) {
        free(count);
        free(next);
        free(rb);
        netd_reply_error(x->client, x->id, "ENOMEM", "out of memory");
        ctx_done(x);
        return;
    }
    rb->x = x;
    rb->plan = json_array();
    for (int i = 0; i < n; i++) {
        count[i] = (int)json_array_size(results[i]);
        json_array_append_new(rb->plan, json_array());
    }
    /* Greedy: one connection from the fullest to the emptiest until they differ by at most
     * one, so no thread holds more than one above the mean. */
    int planned = 0;
    for (;;) {
        int hi = 0, lo = 0;
        for (int i = 1; i < n; i++) {
            if (count[i] > count[hi])
                hi = i;
            if (count[i] < count[lo])
                lo = i;
        }
        if (count[hi] - count[lo] <= 1)
            break;
        json_t *id = json_array_get(results[hi], next[hi]++);
        json_array_append_new(json_array_get(rb->plan, (size_t)hi), json_pack("[O, i]", id, lo));
        count[hi]--;
        count[lo]++;
        planned++;
    }
    free(count);
    free(next);
    if (planned == 0) {
        rebalance_reply(rb);
        return;
    }
    rb->pending = 1; /* held until plan_started has counted the moves it began */
    if (netd_fanout(d, run_plan, plan_started, rb) != 0) {
        rb->pending = 0;
        rebalance_reply(rb);
        return;
    }
    rb->pending--;
}

static void cmd_rebalance(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    uint64_t sid;
    if (!optional_server(d, c, req, id, &sid))
        return;
    cmd_ctx_t *x = ctx_new(c, id, req);
    if (!x)
        return;
    x->server_id = sid;
    fanout_or_fail(d, collect_movable, rebalance_counted, x);
}

static json_t *apply_timeout(netd_worker_t *w, void *arg)
{
    cmd_ctx_t *x = arg;
    netd_conn_t *c;
    TAILQ_FOREACH(c, &w->conns, link)
        if (c->server->id == x->server_id && c->role == NETD_ROLE_CLIENT)
            netd_conn_apply_timeout(c);
    return collect_bytes(w, NULL);
}

static void cmd_set(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_server_t *s = server_arg(d, c, req, id);
    if (!s)
        return;
    json_t *max = json_object_get(req, "maxConnections");
    json_t *timeout = json_object_get(req, "timeout");
    if (max && json_is_integer(max) && json_integer_value(max) < 0) {
        netd_reply_error(c, id, NETD_EARG, "maxConnections: must be 0 or more, or null");
        return;
    }
    if (timeout && (json_integer_value(timeout) < 0 || json_integer_value(timeout) > 0x7fffffff)) {
        netd_reply_error(c, id, NETD_EARG, "timeout: must be 0 or more (ms)");
        return;
    }
    if (max && json_integer_value(max) > 0x7fffffff) {
        netd_reply_error(c, id, NETD_EARG, "maxConnections: too large");
        return;
    }
    if (max) {
        int v = json_is_null(max) ? 0 : (int)json_integer_value(max);
        s->spec.max_connections = v;
        if (s->group)
            nd_server_set_max_connections(s->group, v);
    }
    cmd_ctx_t *x = ctx_new(c, id, req);
    if (!x)
        return;
    x->server_id = s->id;
    if (timeout)
        atomic_store(&s->timeout_ms, (unsigned)json_integer_value(timeout));
    fanout_or_fail(d, timeout ? apply_timeout : collect_bytes, server_done, x);
}

static void cmd_stats(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_reply_ok(c, id, netd_stats_json(d));
}

static void cmd_metrics(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    char *text = netd_metrics_text(d);
    netd_reply_ok(c, id, json_pack("{s:s}", "text", text ? text : ""));
    free(text);
}

static void cmd_watch(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    json_t *events = json_object_get(req, "events");
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        if (!netd_watch_event_known(json_string_value(e))) {
            netd_reply_error(c, id, NETD_EARG,
                             "events: unknown event \"%s\" (listening, connection, close, error)",
                             json_string_value(e));
            return;
        }
    }
    netd_reply_ok(c, id, json_object());
    netd_client_watch(c, events);
}

static void cmd_shutdown(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    long long t;
    /* Without timeoutMs, the config's shutdownTimeoutMs (as SIGTERM uses). */
    if (!nonneg_arg(c, req, id, "timeoutMs", &t, d->cfg.shutdown_timeout_ms))
        return;
    netd_reply_ok(c, id, json_pack("{s:b}", "draining", 1));
    netd_drain(d, (unsigned)(t > 0x7fffffff ? 0x7fffffff : t));
}

/* Validates and applies the config file; replies once the new servers listen. */
static void cmd_reload(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_reload(d, c, id);
}

/* The daemon's half of the command table: every row of netd_commands has one. */
static const struct {
    const char *name;
    command_fn fn;
} handlers[] = {
    {"ping", cmd_ping},         {"listen", cmd_listen},
    {"close", cmd_close},       {"servers", cmd_servers},
    {"server", cmd_server},     {"getConnections", cmd_get_connections},
    {"sockets", cmd_sockets},   {"destroy", cmd_destroy},
    {"move", cmd_move},         {"rebalance", cmd_rebalance},
    {"set", cmd_set},           {"stats", cmd_stats},
    {"metrics", cmd_metrics},   {"watch", cmd_watch},
    {"shutdown", cmd_shutdown}, {"help", cmd_help},
    {"reload", cmd_reload},
};

int netd_commands_check(void)
{
    for (const netd_command_t *k = netd_commands; k->name; k++) {
        bool found = false;
        for (size_t i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++)
            found = found || strcmp(handlers[i].name, k->name) == 0;
        if (!found)
            return -1;
    }
    return 0;
}

void netd_command_run(netd_t *d, netd_client_t *c, const netd_command_t *cmd, json_t *req,
                      json_t *id)
{
    for (size_t i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++) {
        if (strcmp(handlers[i].name, cmd->name) == 0) {
            handlers[i].fn(d, c, req, id);
            return;
        }
    }
    netd_reply_error(c, id, NETD_ECOMMAND, "command \"%s\" is not implemented", cmd->name);
}
