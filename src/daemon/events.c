/* SPDX-License-Identifier: MIT */
/*
 * `watch` events: filled as typed records on the thread where they happen (a worker for
 * connections, the main loop for servers), handed to the main loop through its mailbox,
 * turned into one JSON line there and sent to every watcher that asked for it.
 */
#include "config.h"

#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const names[] = {"listening", "connection", "close", "error"};

uint64_t netd_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

netd_event_t *netd_event_new(netd_t *d, enum netd_event_kind kind, const netd_server_t *s)
{
    if (atomic_load_explicit(&d->watchers, memory_order_relaxed) == 0)
        return NULL; /* nobody listens: no allocation, no message */
    /* The label, not spec.name: workers call this, and a retired server's name changes
     * on the main loop ("NAME#ID"). */
    const char *label = netd_server_label(s);
    size_t name_len = strlen(label);
    netd_event_t *e = calloc(1, sizeof(*e) + name_len + 1);
    if (!e)
        return NULL;
    e->d = d;
    e->kind = kind;
    e->server = s->id;
    e->thread = -1;
    e->time_ms = netd_wall_ms();
    memcpy(e->server_name, label, name_len + 1);
    return e;
}

static json_t *event_json(const netd_event_t *e)
{
    json_t *o = json_pack("{s:s, s:I, s:s, s:I}", "event", names[e->kind], "server",
                          (json_int_t)e->server, "serverName", e->server_name, "timeMs",
                          (json_int_t)e->time_ms);
    if (!o)
        return NULL;
    if (e->socket) {
        json_object_set_new(o, "socket", json_integer((json_int_t)e->socket));
        json_object_set_new(o, "thread", json_integer(e->thread));
        json_object_set_new(o, "remoteAddress",
                            e->remote_address[0] ? json_string(e->remote_address) : json_null());
        json_object_set_new(o, "remotePort",
                            e->remote_address[0] ? json_integer(e->remote_port) : json_null());
    }
    if (e->kind == NETD_EV_CLOSE && e->socket) {
        json_object_set_new(o, "durationMs", json_integer((json_int_t)e->duration_ms));
        json_object_set_new(o, "bytesRead", json_integer((json_int_t)e->bytes_read));
        json_object_set_new(o, "bytesWritten", json_integer((json_int_t)e->bytes_written));
        json_object_set_new(o, "hadError", json_boolean(e->had_error));
    }
    if (e->kind == NETD_EV_ERROR) {
        json_object_set_new(o, "code", json_string(e->code));
        json_object_set_new(o, "message", json_string(e->message));
    }
    return o;
}

static void deliver(nd_loop_t *loop, void *arg)
{
    netd_event_t *e = arg;
    json_t *line = event_json(e);
    if (line)
        netd_control_broadcast(e->d, e->kind, line);
    free(e);
}

void netd_event_post(netd_event_t *ev)
{
    /* Through the main loop's mailbox even from the main thread: one order for all. */
    nd_loop_post_msg(ev->d->loop, &ev->msg, deliver, ev, free);
}
