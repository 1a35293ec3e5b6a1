/* SPDX-License-Identifier: MIT */
/*
 * The control protocol's one command table (CONTROL.md): names, usage lines and argument
 * specs. netd parses requests and answers `help` from it; netctl builds its subcommands
 * and checks arguments from it, so the two can never disagree.
 */
#ifndef NETD_PROTOCOL_H
#define NETD_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>

/* The package version ("0.1.0"). */
const char *netd_version(void);
#define NETD_VERSION_STRING (netd_version())

/* Kinds of argument values, as checked before a command runs. */
typedef enum netd_argtype {
    NETD_ARG_INT,               /* JSON integer (range checked by the command) */
    NETD_ARG_STRING,            /* JSON string */
    NETD_ARG_BOOL,              /* JSON true/false */
    NETD_ARG_OBJECT,            /* JSON object (a handler) */
    NETD_ARG_STRING_ARRAY,      /* JSON array of strings (watch events) */
    NETD_ARG_SERVER,            /* server id (integer) or name (string) */
    NETD_ARG_INT_OR_NULL,       /* maxConnections */
    NETD_ARG_INT_OR_STRING,     /* listen fd: number or LISTEN_FDNAMES name */
    NETD_ARG_INT_OR_FALSE,      /* ms, or false */
    NETD_ARG_DURATION,          /* ms: an integer, or a string with a unit ("30s") */
    NETD_ARG_DURATION_OR_FALSE, /* keepAlive: a duration, or false */
    NETD_ARG_ANY                /* id: echoed back, any JSON */
} netd_argtype_t;

typedef struct netd_arg {
    const char *name;
    netd_argtype_t type;
    bool required;
} netd_arg_t;

/*
 * The commands, one row each: X(name, ident, args, usage, summary). protocol.c makes
 * netd_commands[] of it (the argument specs behind every request check, `help`,
 * netctl's checks before it sends); netd dispatches row `ident` to netd_cmd_<ident>
 * (commands.h). Adding a command is a row here and that one function: the build fails
 * without it. `args` names an argument list of protocol.c.
 */
#define NETD_COMMANDS(X)                                                                           \
    X("ping", ping, args_none, "{\"cmd\":\"ping\"}", "liveness: version, pid, uptimeMs")           \
    X("listen", listen, args_listen,                                                               \
      "{\"cmd\":\"listen\", \"port\":N [, \"host\":H] | \"path\":P | \"fd\":N|NAME"                \
      " [, \"backlog\":N, \"name\":S, \"handler\":{...}, \"allowHalfOpen\":B,"                     \
      " \"maxConnections\":N, \"timeout\":MS, \"noDelay\":B, \"keepAlive\":MS|false,"              \
      " \"balance\":\"leastconn\"|\"roundrobin\"|\"reuseport\","                                   \
      " \"mode\":\"0660\", \"user\":U, \"group\":G (path only), \"accessLog\":B]}",                \
      "open a server; replied once it listens")                                                    \
    X("close", close, args_close,                                                                  \
      "{\"cmd\":\"close\", \"server\":ID|NAME [, \"destroy\":B, \"wait\":B]}",                     \
      "stop a server accepting; with wait, reply after its 'close'")                               \
    X("servers", servers, args_none, "{\"cmd\":\"servers\"}", "list every server")                 \
    X("server", server, args_server, "{\"cmd\":\"server\", \"server\":ID|NAME}", "one server")     \
    X("getConnections", get_connections, args_server,                                              \
      "{\"cmd\":\"getConnections\", \"server\":ID|NAME}",                                          \
      "live connections of a server, exact across threads")                                        \
    X("sockets", sockets, args_sockets,                                                            \
      "{\"cmd\":\"sockets\" [, \"server\":ID|NAME, \"limit\":N, \"olderThanMs\":MS,"               \
      " \"idleMoreThanMs\":MS, \"role\":\"client\"|\"upstream\"|\"all\","                          \
      " \"peer\":\"ADDR[:PORT]\", \"sort\":\"bytes\"|\"age\"|\"idle\"]}",                          \
      "list live connections")                                                                     \
    X("destroy", destroy, args_destroy, "{\"cmd\":\"destroy\", \"socket\":ID}",                    \
      "destroy one connection")                                                                    \
    X("move", move, args_move, "{\"cmd\":\"move\", \"socket\":ID, \"thread\":N}",                  \
      "move a live connection to another thread")                                                  \
    X("rebalance", rebalance, args_rebalance, "{\"cmd\":\"rebalance\" [, \"server\":ID|NAME]}",    \
      "move connections so no thread holds more than one above the mean")                          \
    X("set", set, args_set,                                                                        \
      "{\"cmd\":\"set\", \"server\":ID|NAME [, \"maxConnections\":N|null, \"timeout\":MS]}",       \
      "change a server's limits")                                                                  \
    X("stats", stats, args_none, "{\"cmd\":\"stats\"}", "daemon-wide and per-thread counters")     \
    X("metrics", metrics, args_none, "{\"cmd\":\"metrics\"}",                                      \
      "the counters in Prometheus text format")                                                    \
    X("watch", watch, args_watch,                                                                  \
      "{\"cmd\":\"watch\" [, \"events\":[\"listening\",\"connection\",\"close\",\"error\"]]}",     \
      "stream events, one line each, until the client disconnects")                                \
    X("shutdown", shutdown, args_shutdown, "{\"cmd\":\"shutdown\" [, \"timeoutMs\":MS]}",          \
      "drain: stop accepting, wait for connections (default: shutdownTimeoutMs), exit")            \
    X("reload", reload, args_none, "{\"cmd\":\"reload\"}",                                         \
      "re-read the config file: validate, apply, report added/removed/changed/kept")               \
    X("upgrade", upgrade, args_upgrade,                                                            \
      "{\"cmd\":\"upgrade\" [, \"exec\":PATH, \"timeoutMs\":MS]}",                                 \
      "a new netd binary takes over every listener and connection; replied by it")                 \
    X("help", help, args_none, "{\"cmd\":\"help\"}", "this list")

/* A row's position in the table: NETD_CMD_ping, NETD_CMD_listen, ... */
enum netd_command_index {
#define NETD_CMD_ENUM(name, ident, args, usage, summary) NETD_CMD_##ident,
    NETD_COMMANDS(NETD_CMD_ENUM)
#undef NETD_CMD_ENUM
        NETD_CMD__COUNT
};

typedef struct netd_command {
    const char *name;
    const char *usage;      /* the request, as `help` shows it */
    const char *summary;    /* one line on what it does */
    const netd_arg_t *args; /* terminated by {NULL} */
    int index;              /* enum netd_command_index */
} netd_command_t;

/* The table, terminated by an entry with name NULL. */
extern const netd_command_t netd_commands[];

/* The row for a command name, or NULL. */
const netd_command_t *netd_command_find(const char *name);
/* The spec of one argument of a command, or NULL (then the argument is unknown: EARG). */
const netd_arg_t *netd_command_arg(const netd_command_t *cmd, const char *name);

/* Whether a JSON value is of an argument type, and the type in words ("an integer"):
 * the daemon's EARG check and netctl's pre-send check are this one function. */
struct json_t;
bool netd_arg_accepts(netd_argtype_t type, const struct json_t *v);
const char *netd_argtype_name(netd_argtype_t type);

/* Error codes of the protocol that are not errno names (CONTROL.md). */
#define NETD_EPARSE "EPARSE"
#define NETD_EREQUEST "EREQUEST"
#define NETD_ECOMMAND "ECOMMAND"
#define NETD_EARG "EARG"
#define NETD_ENOSERVER "ENOSERVER"
#define NETD_ENOSOCKET "ENOSOCKET"
#define NETD_ENOTRUNNING "ENOTRUNNING"
#define NETD_EEXIST "EEXIST"
#define NETD_EBUSY "EBUSY"
#define NETD_EBADF "EBADF"
#define NETD_ETOOBIG "ETOOBIG"
#define NETD_EPERM "EPERM"
#define NETD_ESHUTDOWN "ESHUTDOWN"
#define NETD_EUPGRADE "EUPGRADE"

/* Limits of the transport. */
#define NETD_MAX_LINE ((size_t)1024 * 1024)
#define NETD_DEFAULT_MAX_CLIENTS 64
#define NETD_DEFAULT_IDLE_TIMEOUT_MS 300000
#define NETD_WATCH_MAX_BEHIND ((size_t)1024 * 1024)

/*
 * A duration (CONTROL.md "Durations"): "500ms", "30s", "5m", "2h", or a bare number of ms.
 * At most NETD_MAX_DURATION_MS. Returns 0 and sets *ms, or -1. The config's string form
 * and netctl's --timeout 30s both parse with this.
 */
#define NETD_MAX_DURATION_MS 2147483647u
int netd_duration_parse(const char *text, unsigned *ms);
/* The same for a JSON value: a string as above, or an integer of ms (0 to the maximum). */
int netd_duration_json(const struct json_t *v, unsigned *ms);

/* The default control socket path when neither -s nor the config gives one:
 * $RUNTIME_DIRECTORY/netd.sock, else /run/netd/netd.sock for root and
 * $XDG_RUNTIME_DIR/netd.sock for others (else /tmp/netd-UID/netd.sock).
 * Writes into buf; returns buf. */
const char *netd_default_socket_path(char *buf, size_t len);

#endif
