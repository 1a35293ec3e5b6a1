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
    NETD_ARG_INT,          /* JSON integer (range checked by the command) */
    NETD_ARG_STRING,       /* JSON string */
    NETD_ARG_BOOL,         /* JSON true/false */
    NETD_ARG_OBJECT,       /* JSON object (a handler) */
    NETD_ARG_STRING_ARRAY, /* JSON array of strings (watch events) */
    NETD_ARG_SERVER,       /* server id (integer) or name (string) */
    NETD_ARG_INT_OR_NULL,  /* maxConnections */
    NETD_ARG_INT_OR_STRING,/* listen fd: number or LISTEN_FDNAMES name */
    NETD_ARG_INT_OR_FALSE, /* keepAlive: ms, or false */
    NETD_ARG_ANY           /* id: echoed back, any JSON */
} netd_argtype_t;

typedef struct netd_arg {
    const char *name;
    netd_argtype_t type;
    bool required;
} netd_arg_t;

typedef struct netd_command {
    const char *name;
    const char *usage;   /* the request, as `help` shows it */
    const char *summary; /* one line on what it does */
    const netd_arg_t *args; /* terminated by {NULL} */
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

/* The default control socket path when neither -s nor the config gives one:
 * $RUNTIME_DIRECTORY/netd.sock, else /run/netd/netd.sock for root and
 * $XDG_RUNTIME_DIR/netd.sock for others (else /tmp/netd-UID/netd.sock).
 * Writes into buf; returns buf. */
const char *netd_default_socket_path(char *buf, size_t len);

#endif
