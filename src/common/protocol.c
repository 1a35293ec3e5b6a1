/* SPDX-License-Identifier: MIT */
/*
 * The command table of the control protocol, shared by netd and netctl, and the small
 * parsers both sides need (durations, the default control socket path).
 */
#include "config.h"

#include "protocol.h"

#include <jansson.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The argument tables read as tables: clang-format would put one row per line. */
/* clang-format off */
#define A(n, t, r) {n, NETD_ARG_##t, r}
#define END {NULL, 0, false}

static const netd_arg_t args_none[] = {A("id", ANY, false), END};
static const netd_arg_t args_listen[] = {
    A("id", ANY, false),          A("port", INT, false),           A("host", STRING, false),
    A("path", STRING, false),     A("fd", INT_OR_STRING, false),   A("backlog", INT, false),
    A("name", STRING, false),     A("handler", OBJECT, false),     A("allowHalfOpen", BOOL, false),
    A("maxConnections", INT_OR_NULL, false), A("timeout", DURATION, false),
    A("noDelay", BOOL, false),    A("keepAlive", DURATION_OR_FALSE, false),
    A("balance", STRING, false),  A("mode", STRING, false),        A("user", STRING, false),
    A("group", STRING, false),    A("accessLog", BOOL, false),     END};
static const netd_arg_t args_close[] = {A("id", ANY, false), A("server", SERVER, true),
                                        A("destroy", BOOL, false), A("wait", BOOL, false), END};
static const netd_arg_t args_server[] = {A("id", ANY, false), A("server", SERVER, true), END};
static const netd_arg_t args_sockets[] = {
    A("id", ANY, false),          A("server", SERVER, false),      A("limit", INT, false),
    A("olderThanMs", INT, false), A("idleMoreThanMs", INT, false), A("role", STRING, false),
    A("peer", STRING, false),     A("sort", STRING, false),        END};
static const netd_arg_t args_destroy[] = {A("id", ANY, false), A("socket", INT, true), END};
static const netd_arg_t args_move[] = {A("id", ANY, false), A("socket", INT, true),
                                       A("thread", INT, true), END};
static const netd_arg_t args_rebalance[] = {A("id", ANY, false), A("server", SERVER, false),
                                            END};
static const netd_arg_t args_set[] = {A("id", ANY, false), A("server", SERVER, true),
                                      A("maxConnections", INT_OR_NULL, false),
                                      A("timeout", DURATION, false), END};
static const netd_arg_t args_watch[] = {A("id", ANY, false), A("events", STRING_ARRAY, false),
                                        END};
static const netd_arg_t args_shutdown[] = {A("id", ANY, false), A("timeoutMs", INT, false),
                                           END};
static const netd_arg_t args_upgrade[] = {A("id", ANY, false), A("exec", STRING, false),
                                          A("timeoutMs", INT, false), END};

const netd_command_t netd_commands[] = {
#define NETD_CMD_ROW(name, ident, args, usage, summary)                                      \
    {name, usage, summary, args, NETD_CMD_##ident},
    NETD_COMMANDS(NETD_CMD_ROW)
#undef NETD_CMD_ROW
    {NULL, NULL, NULL, NULL, -1},
};
/* clang-format on */

const char *netd_version(void)
{
    return PACKAGE_VERSION;
}

const netd_command_t *netd_command_find(const char *name)
{
    if (!name)
        return NULL;
    for (const netd_command_t *c = netd_commands; c->name; c++)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

const netd_arg_t *netd_command_arg(const netd_command_t *cmd, const char *name)
{
    for (const netd_arg_t *a = cmd->args; a->name; a++)
        if (strcmp(a->name, name) == 0)
            return a;
    return NULL;
}

const char *netd_argtype_name(netd_argtype_t t)
{
    switch (t) {
    case NETD_ARG_INT:
        return "an integer";
    case NETD_ARG_STRING:
        return "a string";
    case NETD_ARG_BOOL:
        return "a boolean";
    case NETD_ARG_OBJECT:
        return "an object";
    case NETD_ARG_STRING_ARRAY:
        return "an array of strings";
    case NETD_ARG_SERVER:
        return "a server id or name";
    case NETD_ARG_INT_OR_NULL:
        return "an integer or null";
    case NETD_ARG_INT_OR_STRING:
        return "an integer or a name";
    case NETD_ARG_INT_OR_FALSE:
        return "an integer or false";
    case NETD_ARG_DURATION:
        return "a duration (ms, or a string such as \"30s\")";
    case NETD_ARG_DURATION_OR_FALSE:
        return "a duration (ms, or a string such as \"30s\") or false";
    case NETD_ARG_ANY:
        return "any value";
    }
    return "?";
}

bool netd_arg_accepts(netd_argtype_t t, const json_t *v)
{
    switch (t) {
    case NETD_ARG_INT:
        return json_is_integer(v);
    case NETD_ARG_STRING:
        return json_is_string(v);
    case NETD_ARG_BOOL:
        return json_is_boolean(v);
    case NETD_ARG_OBJECT:
        return json_is_object(v);
    case NETD_ARG_STRING_ARRAY: {
        if (!json_is_array(v))
            return false;
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
            if (!json_is_string(e))
                return false;
        return true;
    }
    case NETD_ARG_SERVER:
    case NETD_ARG_INT_OR_STRING:
        return json_is_integer(v) || json_is_string(v);
    case NETD_ARG_INT_OR_NULL:
        return json_is_integer(v) || json_is_null(v);
    case NETD_ARG_INT_OR_FALSE:
        return json_is_integer(v) || json_is_false(v);
    case NETD_ARG_DURATION:
        return json_is_integer(v) || json_is_string(v);
    case NETD_ARG_DURATION_OR_FALSE:
        return json_is_integer(v) || json_is_string(v) || json_is_false(v);
    case NETD_ARG_ANY:
        return true;
    }
    return false;
}

int netd_duration_parse(const char *text, unsigned *ms)
{
    static const struct {
        const char *unit;
        unsigned long long scale;
    } units[] = {{"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
    if (!text || *text < '0' || *text > '9')
        return -1; /* no sign, no space, no empty string */
    char *end;
    errno = 0;
    unsigned long long n = strtoull(text, &end, 10);
    if (errno == ERANGE)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) != 0)
            continue;
        if (n > NETD_MAX_DURATION_MS / units[i].scale)
            return -1;
        *ms = (unsigned)(n * units[i].scale);
        return 0;
    }
    return -1;
}

int netd_duration_json(const json_t *v, unsigned *ms)
{
    if (json_is_string(v))
        return netd_duration_parse(json_string_value(v), ms);
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > (json_int_t)NETD_MAX_DURATION_MS)
        return -1;
    *ms = (unsigned)json_integer_value(v);
    return 0;
}

const char *netd_default_socket_path(char *buf, size_t len)
{
    const char *rd = getenv("RUNTIME_DIRECTORY");
    if (rd && *rd) {
        /* systemd may list several directories separated by ':'; the first is ours. */
        size_t n = strcspn(rd, ":");
        snprintf(buf, len, "%.*s/netd.sock", (int)n, rd);
    } else if (geteuid() == 0) {
        snprintf(buf, len, "/run/netd/netd.sock");
    } else if ((rd = getenv("XDG_RUNTIME_DIR")) && *rd) {
        snprintf(buf, len, "%s/netd.sock", rd);
    } else {
        snprintf(buf, len, "/tmp/netd-%u/netd.sock", (unsigned)geteuid());
    }
    return buf;
}
