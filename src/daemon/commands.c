/* SPDX-License-Identifier: MIT */
/*
 * The control commands (CONTROL.md "Commands"): dispatch by the row of the one command
 * table (NETD_COMMANDS in protocol.h) and the argument helpers every command file shares.
 * The commands themselves: cmd_daemon.c (the daemon), cmd_servers.c (servers),
 * cmd_sockets.c (live sockets). A command that answers later holds a netd_pending_t;
 * fan-outs fill typed slots and only the final step, on the main loop, builds JSON.
 */
#include "config.h"

#include "commands.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef void (*command_fn)(netd_t *d, netd_client_t *c, json_t *req, json_t *id);

/* ------------------------------------------------------------------ argument helpers */

void netd_cmd_reply_no_server(netd_client_t *c, json_t *id, const json_t *ref)
{
    if (json_is_integer(ref))
        netd_reply_error(c, id, NETD_ENOSERVER, "no server with id %lld",
                         (long long)json_integer_value(ref));
    else
        netd_reply_error(c, id, NETD_ENOSERVER, "no server named \"%s\"", json_string_value(ref));
}

netd_server_t *netd_cmd_server_arg(netd_t *d, netd_client_t *c, json_t *req, json_t *id)
{
    json_t *ref = json_object_get(req, "server");
    netd_server_t *s = netd_server_find(d, ref);
    if (!s)
        netd_cmd_reply_no_server(c, id, ref);
    return s;
}

bool netd_cmd_optional_server(netd_t *d, netd_client_t *c, json_t *req, json_t *id, uint64_t *sid)
{
    *sid = 0;
    if (!json_object_get(req, "server"))
        return true;
    netd_server_t *s = netd_cmd_server_arg(d, c, req, id);
    if (s)
        *sid = s->id;
    return s != NULL;
}

netd_pending_t *netd_cmd_pending(netd_client_t *c, json_t *id, void *q, void *slots)
{
    netd_pending_t *p = q && slots ? netd_pending_new(c, id) : NULL;
    if (!p) {
        if (!q || !slots) /* else netd_pending_new has replied */
            netd_reply_error(c, id, "ENOMEM", "out of memory");
        free(q);
        free(slots);
    }
    return p;
}

bool netd_cmd_nonneg_arg(netd_client_t *c, json_t *req, json_t *id, const char *name,
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

/* ------------------------------------------------------------------ dispatch */

/* Row i of the table runs netd_cmd_<ident>: one function per row, or the build fails. */
static const command_fn dispatch[] = {
#define NETD_CMD_FN(name, ident, args, usage, summary) [NETD_CMD_##ident] = netd_cmd_##ident,
    NETD_COMMANDS(NETD_CMD_FN)
#undef NETD_CMD_FN
};
_Static_assert(sizeof(dispatch) / sizeof(dispatch[0]) == NETD_CMD__COUNT,
               "every command of the table has its function");

void netd_command_run(netd_t *d, netd_client_t *c, const netd_command_t *cmd, json_t *req,
                      json_t *id)
{
    dispatch[cmd->index](d, c, req, id);
}
