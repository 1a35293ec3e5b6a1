/* SPDX-License-Identifier: MIT */
/*
 * The commands on servers: listen, close, servers, server, getConnections, set; and the
 * live byte counts that servers/server/set collect from the workers as a typed fan-out.
 */
#include "config.h"

#include "commands.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ live bytes */

void netd_bytes_collect(netd_worker_t *w, netd_bytes_slot_t *slot)
{
    netd_conn_t *c;
    TAILQ_FOREACH(c, &w->conns, link) {
        if (c->role != NETD_ROLE_CLIENT)
            continue;
        size_t i = 0;
        while (i < slot->n && slot->v[i].server != c->server->id)
            i++;
        if (i == slot->n) {
            void *v = realloc(slot->v, (slot->n + 1) * sizeof(*slot->v));
            if (!v)
                return; /* the figures come out low rather than not at all */
            slot->v = v;
            slot->v[slot->n++] = (struct netd_server_bytes){.server = c->server->id};
        }
        slot->v[i].read += nd_socket_bytes_read(c->sock);
        slot->v[i].written += nd_socket_bytes_written(c->sock);
    }
}

json_t *netd_server_json_with(netd_t *d, netd_server_t *s, const netd_bytes_slot_t *slots)
{
    uint64_t r = 0, w = 0;
    for (int i = 0; slots && i < d->nworkers; i++) {
        for (size_t k = 0; k < slots[i].n; k++) {
            if (slots[i].v[k].server == s->id) {
                r += slots[i].v[k].read;
                w += slots[i].v[k].written;
            }
        }
    }
    return netd_server_json(s, r, w);
}

void netd_bytes_slots_free(netd_bytes_slot_t *slots, int n)
{
    for (int i = 0; slots && i < n; i++)
        free(slots[i].v);
    free(slots);
}

/* A request about servers answered after one fan-out for the live bytes. */
typedef struct servers_q {
    netd_pending_t *p;
    uint64_t server_id; /* 0: every server */
    bool apply_timeout; /* `set` with a timeout: workers apply it to live connections */
    netd_bytes_slot_t *slots;
    void (*done)(netd_t *d, struct servers_q *q);
} servers_q_t;

static void servers_collect(netd_worker_t *w, void *arg)
{
    servers_q_t *q = arg;
    if (q->apply_timeout) {
        netd_conn_t *c;
        TAILQ_FOREACH(c, &w->conns, link)
            if (c->server->id == q->server_id && c->role == NETD_ROLE_CLIENT)
                netd_conn_apply_timeout(c);
    }
    netd_bytes_collect(w, &q->slots[w->index]);
}

static void servers_collected(netd_t *d, void *arg)
{
    servers_q_t *q = arg;
    q->done(d, q);
    netd_bytes_slots_free(q->slots, d->nworkers);
    free(q);
}

static void servers_query(netd_t *d, netd_client_t *c, json_t *id, uint64_t server_id,
                          bool apply_timeout, void (*done)(netd_t *d, servers_q_t *q))
{
    servers_q_t *q = calloc(1, sizeof(*q));
    netd_bytes_slot_t *slots = calloc((size_t)d->nworkers, sizeof(*slots));
    netd_pending_t *p = netd_cmd_pending(c, id, q, slots);
    if (!p)
        return;
    q->p = p;
    q->server_id = server_id;
    q->apply_timeout = apply_timeout;
    q->slots = slots;
    q->done = done;
    if (netd_fanout(d, servers_collect, servers_collected, q) != 0) {
        netd_pending_error(p, "ENOMEM", "out of memory");
        free(slots);
        free(q);
    }
}

void netd_cmd_listen(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
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
    netd_pending_t *p = netd_pending_new(c, id);
    if (!p) {
        netd_listen_spec_free(&spec);
        return;
    }
    const char *code = NULL;
    char msg[512];
    if (netd_server_open(d, &spec, p, &code, msg, sizeof(msg)) != 0) {
        netd_listen_spec_free(&spec);
        netd_pending_error(p, code, "%s", msg);
    }
}

void netd_cmd_close(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    json_t *ref = json_object_get(req, "server");
    netd_server_t *s = netd_server_find(d, ref);
    if (!s && netd_server_closed_before(d, ref)) {
        netd_reply_error(c, id, NETD_ENOTRUNNING, "server %s is closed",
                         json_is_string(ref) ? json_string_value(ref) : "given");
        return;
    }
    if (!s) {
        netd_cmd_reply_no_server(c, id, ref);
        return;
    }
    if (s->state != NETD_SRV_LISTENING && s->state != NETD_SRV_STARTING) {
        netd_reply_error(c, id, NETD_ENOTRUNNING, "server %s is not listening", s->spec.name);
        return;
    }
    json_t *wait = json_object_get(req, "wait");
    bool wait_close = !wait || json_is_true(wait);
    netd_pending_t *p = wait_close ? netd_pending_new(c, id) : NULL;
    if (wait_close && !p)
        return;
    netd_server_close(s, json_is_true(json_object_get(req, "destroy")));
    if (!wait_close) {
        netd_reply_ok(c, id, json_pack("{s:o}", "server", netd_server_json(s, 0, 0)));
        return;
    }
    p->waits_for = NETD_WAIT_CLOSE;
    TAILQ_INSERT_TAIL(&s->waiters, p, link);
}

static void servers_reply(netd_t *d, servers_q_t *q)
{
    json_t *arr = json_array();
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
        if (s->state != NETD_SRV_CLOSED)
            json_array_append_new(arr, netd_server_json_with(d, s, q->slots));
    netd_pending_ok(q->p, json_pack("{s:o}", "servers", arr));
}

void netd_cmd_servers(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    servers_query(d, c, id, 0, false, servers_reply);
}

static void server_reply(netd_t *d, servers_q_t *q)
{
    netd_server_t *s = netd_server_by_id(d, q->server_id);
    if (s)
        netd_pending_ok(q->p, json_pack("{s:o}", "server", netd_server_json_with(d, s, q->slots)));
    else
        netd_pending_error(q->p, NETD_ENOSERVER, "server %llu closed meanwhile",
                           (unsigned long long)q->server_id);
}

void netd_cmd_server(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_server_t *s = netd_cmd_server_arg(d, c, req, id);
    if (s)
        servers_query(d, c, id, s->id, false, server_reply);
}

static void count_done(nd_server_t *group, int err, int count, void *arg)
{
    netd_pending_ok(arg, json_pack("{s:i}", "count", count));
}

void netd_cmd_get_connections(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_server_t *s = netd_cmd_server_arg(d, c, req, id);
    if (!s)
        return;
    if (!s->group) {
        netd_reply_ok(c, id, json_pack("{s:i}", "count", 0));
        return;
    }
    netd_pending_t *p = netd_pending_new(c, id);
    if (p && nd_server_get_connections(s->group, count_done, p) != 0)
        netd_pending_error(p, "ENOMEM", "out of memory");
}

void netd_cmd_set(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_server_t *s = netd_cmd_server_arg(d, c, req, id);
    if (!s)
        return;
    json_t *max = json_object_get(req, "maxConnections");
    json_t *timeout = json_object_get(req, "timeout");
    if (max && json_is_integer(max) && json_integer_value(max) < 0) {
        netd_reply_error(c, id, NETD_EARG, "maxConnections: must be 0 or more, or null");
        return;
    }
    /* A duration, as listen's and the config's timeout (CONTROL.md "Durations"). */
    unsigned timeout_ms = 0;
    if (timeout && netd_duration_json(timeout, &timeout_ms) != 0) {
        netd_reply_error(c, id, NETD_EARG,
                         "timeout: must be a duration: ms >= 0, or a string such as \"30s\"");
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
    if (timeout)
        atomic_store(&s->timeout_ms, timeout_ms);
    servers_query(d, c, id, s->id, timeout != NULL, server_reply);
}
