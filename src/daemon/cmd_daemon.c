/* SPDX-License-Identifier: MIT */
/*
 * The daemon's own commands: ping, help, stats, metrics, watch, shutdown, reload,
 * upgrade. Each is a row of NETD_COMMANDS (protocol.h) and a netd_cmd_<ident> here.
 */
#include "config.h"

#include "commands.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void netd_cmd_ping(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_reply_ok(c, id,
                  json_pack("{s:s, s:i, s:I}", "version", NETD_VERSION_STRING, "pid", (int)getpid(),
                            "uptimeMs", (json_int_t)(netd_now_ms() - d->started_ms)));
}

void netd_cmd_help(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    json_t *arr = json_array();
    for (const netd_command_t *k = netd_commands; k->name; k++)
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s}", "cmd", k->name, "usage", k->usage,
                                             "summary", k->summary));
    netd_reply_ok(c, id, json_pack("{s:o}", "commands", arr));
}

void netd_cmd_stats(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_reply_ok(c, id, netd_stats_json(d));
}

static void metrics_ready(netd_t *d, const char *text, size_t len, void *arg)
{
    if (text)
        netd_pending_ok(arg, json_pack("{s:s%}", "text", text, len));
    else
        netd_pending_error(arg, "ENOMEM", "out of memory");
}

/* The same text as GET /metrics (metrics.c), after the workers settled their bytes. */
void netd_cmd_metrics(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_pending_t *p = netd_pending_new(c, id);
    if (p && netd_metrics_collect(d, metrics_ready, p) != 0)
        netd_pending_error(p, "ENOMEM", "out of memory");
}

void netd_cmd_watch(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    json_t *events = json_object_get(req, "events");
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e) {
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

void netd_cmd_shutdown(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    long long t;
    if (!netd_cmd_nonneg_arg(c, req, id, "timeoutMs", &t, d->cfg.shutdown_timeout_ms))
        return;
    netd_reply_ok(c, id, json_pack("{s:b}", "draining", 1));
    netd_drain(d, (unsigned)(t > 0x7fffffff ? 0x7fffffff : t));
}

/* Validates and applies the config file; replies once the new servers listen. */
void netd_cmd_reload(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    netd_pending_t *p = netd_pending_new(c, id);
    if (p)
        netd_reload(d, p);
}

void netd_cmd_upgrade(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    long long t;
    if (!netd_cmd_nonneg_arg(c, req, id, "timeoutMs", &t, 30000))
        return;
    const char *exec = json_string_value(json_object_get(req, "exec"));
    if (exec && !*exec) {
        netd_reply_error(c, id, NETD_EARG, "exec: must be the path of a netd binary");
        return;
    }
    netd_pending_t *p = netd_pending_new(c, id);
    if (p)
        netd_upgrade_start(d, p, exec, (unsigned)(t > 0x7fffffff ? 0x7fffffff : (t ? t : 30000)));
}
