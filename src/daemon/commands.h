/* SPDX-License-Identifier: MIT */
/*
 * What the command files share (commands.c: the dispatch; cmd_daemon.c, cmd_servers.c,
 * cmd_sockets.c: the commands): argument helpers and the per-server byte counts of live
 * connections, a typed fan-out slot.
 */
#ifndef NETD_COMMANDS_H
#define NETD_COMMANDS_H

#include "daemon.h"

/* The ENOSERVER reply for a server reference (an id or a name). */
void netd_cmd_reply_no_server(netd_client_t *c, json_t *id, const json_t *ref);
/* The server named by req's "server" (id or name); NULL after replying ENOSERVER (or
 * ENOTRUNNING for a `close` of a server that closed before). */
netd_server_t *netd_cmd_server_arg(netd_t *d, netd_client_t *c, json_t *req, json_t *id);
/* An optional "server" argument: *sid 0 when absent (all servers); false when it names
 * none (the error reply is sent). */
bool netd_cmd_optional_server(netd_t *d, netd_client_t *c, json_t *req, json_t *id, uint64_t *sid);
/* An optional integer argument that must be 0 or more; false after the EARG reply. */
bool netd_cmd_nonneg_arg(netd_client_t *c, json_t *req, json_t *id, const char *name,
                         long long *out, long long dflt);

/* The reply a fan-out command owes, once its query record q and its per-worker slots
 * were allocated (either may be NULL: out of memory). NULL after freeing both and
 * replying (ENOMEM, or the client is going away). */
netd_pending_t *netd_cmd_pending(netd_client_t *c, json_t *id, void *q, void *slots);

/* Bytes of the live client connections of one worker, per server: a fan-out slot. */
typedef struct netd_bytes_slot {
    size_t n;
    struct netd_server_bytes {
        uint64_t server, read, written;
    } * v;
} netd_bytes_slot_t;

/* Worker thread: fills slot with the bytes of w's live client connections. */
void netd_bytes_collect(netd_worker_t *w, netd_bytes_slot_t *slot);
/* Main loop: the server object with the live bytes of every worker's slot added. */
json_t *netd_server_json_with(netd_t *d, netd_server_t *s, const netd_bytes_slot_t *slots);
void netd_bytes_slots_free(netd_bytes_slot_t *slots, int n);

/* One function per row of NETD_COMMANDS (cmd_daemon.c, cmd_servers.c, cmd_sockets.c):
 * netd_cmd_ping, netd_cmd_listen, ... Each replies, now or later, exactly once. */
#define NETD_CMD_DECL(name, ident, args, usage, summary)                                           \
    void netd_cmd_##ident(netd_t *d, netd_client_t *c, json_t *req, json_t *id);
NETD_COMMANDS(NETD_CMD_DECL)
#undef NETD_CMD_DECL

#endif
