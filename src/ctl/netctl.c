/* SPDX-License-Identifier: MIT */
/*
 * netctl: the command-line client of netd's control socket (CONTROL.md). Each subcommand
 * builds one request, checked against the shared command table (protocol.c), sends it as
 * one line and prints the reply: as a table (output.c), or as the raw line with --json.
 */
#include "config.h"

#include "output.h"
#include "protocol.h"
#include "top.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

/* Exit statuses, as netctl(1) documents them. */
enum {
    EXIT_OK = 0,
    EXIT_DAEMON_ERROR = 1, /* the daemon answered ok:false */
    EXIT_USAGE = 2,        /* caught before anything was sent */
    EXIT_UNREACHABLE = 3,  /* no connection, or no sense in the reply */
    EXIT_TIMEOUT = 4       /* sent, but no reply within --timeout: it may still go on */
};

#define DEFAULT_TIMEOUT_MS 10000
#define MAX_REPLY_LINE ((size_t)16 << 20) /* 16 MiB */
#define MAX_MS INT32_MAX /* ~24.8 days: what every ms field of the protocol can hold */
#define SUN_PATH_MAX sizeof(((struct sockaddr_un *)NULL)->sun_path)

static struct {
    const char *socket;   /* -s */
    bool json;            /* --json: the reply line unchanged */
    bool quiet;           /* -q: only the exit status */
    long long timeout_ms; /* whole exchange; 0 waits forever */
} g = {NULL, false, false, DEFAULT_TIMEOUT_MS};

static const char *current_sub; /* prefixes usage errors while a subcommand is parsed */

/* ------------------------------------------------------------------------ failing */

static _Noreturn __attribute__((format(printf, 1, 2))) void usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("netctl: ", stderr);
    if (current_sub)
        fprintf(stderr, "%s: ", current_sub);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (see netctl --help)\n", stderr);
    exit(EXIT_USAGE);
}

static _Noreturn __attribute__((format(printf, 1, 2))) void unreachable(const char *fmt, ...)
{
    va_list ap;
    fputs("netctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(EXIT_UNREACHABLE);
}

/* Ends the run once stdout is done. A reader that went away (`netctl sockets | head`)
 * is not an error worth a message. */
static _Noreturn void finish(int status)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        if (errno == EPIPE)
            exit(status);
        fprintf(stderr, "netctl: cannot write output: %s\n", strerror(errno));
        exit(status == EXIT_OK ? EXIT_DAEMON_ERROR : status);
    }
    exit(status);
}

/* -------------------------------------------------------------- argument values */

static bool all_digits(const char *s)
{
    return *s && strspn(s, "0123456789") == strlen(s);
}

/* Digits only: a sign, a space or a suffix is refused here rather than at the daemon. */
static long long number(const char *what, const char *s, long long min, long long max)
{
    if (!all_digits(s))
        usage_error("%s: '%s' is not a number", what, s);
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno == ERANGE || v < min || v > max)
        usage_error("%s: %s is out of range (%lld-%lld)", what, s, min, max);
    return v;
}

static json_t *integer(const char *what, const char *s, long long min, long long max)
{
    return json_integer(number(what, s, min, max));
}

/* "500ms", "30s", "5m", "2h", or a bare number of ms (CONTROL.md "Durations"). */
static long long duration_ms(const char *what, const char *s)
{
    unsigned ms;
    if (netd_duration_parse(s, &ms) != 0)
        usage_error("%s: '%s' is not a duration (ms, or a number with ms, s, m or h: 500ms, "
                    "30s, 5m)",
                    what, s);
    return ms;
}

static json_t *duration(const char *what, const char *s)
{
    return json_integer(duration_ms(what, s));
}

/* JSON strings must be UTF-8; jansson refuses anything else. */
static json_t *string(const char *what, const char *s)
{
    json_t *v = json_string(s);
    if (!v)
        usage_error("%s: not valid UTF-8", what);
    return v;
}

static json_t *one_of(const char *what, const char *s, const char *const *choices)
{
    for (const char *const *c = choices; *c; c++)
        if (strcmp(s, *c) == 0)
            return json_string(s);
    char list[256] = "";
    for (const char *const *c = choices; *c; c++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", c == choices ? "" : ", ",
                 *c);
    usage_error("%s: '%s' is not one of %s", what, s, list);
}

/* SERVER: an id when all digits, else a name (the protocol takes either). */
static json_t *server_ref(const char *s)
{
    if (!*s)
        usage_error("SERVER is empty");
    if (all_digits(s))
        return integer("SERVER", s, 0, LLONG_MAX);
    return string("SERVER", s);
}

/* A name made only of digits could never be named again: it would read as an id. */
static json_t *server_name(const char *s)
{
    if (!*s)
        usage_error("--name: empty name");
    if (all_digits(s))
        usage_error("--name: '%s' would read as a server id; use a name with a non-digit", s);
    return string("--name", s);
}

static json_t *max_connections(const char *s)
{
    if (strcmp(s, "none") == 0)
        return json_null();
    return integer("--max-connections", s, 0, INT32_MAX);
}

/* netd's working directory is not ours, so a relative path is made absolute here; a path
 * that cannot fit a sockaddr_un is refused before the daemon has to. */
static json_t *socket_path_arg(const char *what, const char *path)
{
    char *full;
    if (path[0] == '/') {
        full = strdup(path);
    } else {
        char *cwd = getcwd(NULL, 0);
        if (!cwd)
            usage_error("%s: cannot make '%s' absolute: %s", what, path, strerror(errno));
        while (strncmp(path, "./", 2) == 0)
            path += 2;
        if (asprintf(&full, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, path) < 0)
            full = NULL;
        free(cwd);
    }
    if (!full)
        abort();
    if (strlen(full) >= SUN_PATH_MAX)
        usage_error("%s: '%s' is longer than a unix socket path can be (%zu bytes)", what, full,
                    SUN_PATH_MAX - 1);
    json_t *v = string(what, full);
    free(full);
    return v;
}

/* Shells make a newline hard to type, so banner and greeting texts understand \n, \r,
 * \t and \\; any other backslash stays as it is. */
static char unescape(char c)
{
    switch (c) {
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    case '\\':
        return '\\';
    default:
        return 0;
    }
}

static json_t *text_arg(const char *what, const char *s)
{
    char *out = malloc(strlen(s) + 1), *o = out;
    if (!out)
        abort();
    for (; *s; s++) {
        char e = s[0] == '\\' ? unescape(s[1]) : 0;
        *o++ = e ? e : *s;
        s += e != 0;
    }
    *o = '\0';
    json_t *v = string(what, out);
    free(out);
    return v;
}

/* proxy:PORT, proxy:HOST:PORT (an IPv6 host may be bracketed), proxy:PATH. */
static json_t *proxy_handler(const char *target)
{
    json_t *h = json_pack("{s:s}", "type", "proxy");
    if (strchr(target, '/')) {
        json_object_set_new(h, "path", socket_path_arg("--handler proxy:PATH", target));
        return h;
    }
    const char *colon = strrchr(target, ':');
    json_object_set_new(h, "port",
                        integer("--handler proxy port", colon ? colon + 1 : target, 1, 65535));
    if (colon) {
        const char *host = target;
        size_t len = (size_t)(colon - target);
        if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
            host++;
            len -= 2;
        }
        if (len == 0)
            usage_error("--handler: empty proxy host in 'proxy:%s'", target);
        char *copy = strndup(host, len);
        json_object_set_new(h, "host", string("--handler proxy host", copy));
        free(copy);
    }
    return h;
}

static json_t *handler_arg(const char *spec)
{
    if (strncmp(spec, "banner:", 7) == 0) {
        json_t *h = json_pack("{s:s}", "type", "banner");
        json_object_set_new(h, "text", text_arg("--handler banner:TEXT", spec + 7));
        return h;
    }
    if (strncmp(spec, "proxy:", 6) == 0)
        return proxy_handler(spec + 6);
    if (strcmp(spec, "banner") == 0 || strcmp(spec, "proxy") == 0)
        usage_error("--handler: %s needs a %s after a colon", spec,
                    spec[0] == 'b' ? "TEXT" : "[HOST:]PORT or PATH");
    /* Any other name is sent as it is: netd knows its handlers (netctl speaks only the
     * protocol), and its EARG names the ones it has. */
    if (!*spec || strspn(spec, "abcdefghijklmnopqrstuvwxyz0123456789_-") != strlen(spec))
        usage_error("--handler: '%s' is not a handler (echo, discard, banner:TEXT, "
                    "proxy:[HOST:]PORT, proxy:PATH, or another handler's name)",
                    spec);
    return json_pack("{s:s}", "type", spec);
}

/* ------------------------------------------------- requests checked by the table */

typedef struct request {
    const netd_command_t *cmd; /* NULL for `call`, which sends a line as given */
    json_t *obj;
    json_int_t id;
    char *line; /* what goes on the wire, without its '\n' */
} request_t;

/* Every argument goes through here: its name must be one the shared table lists for the
 * command, with a value of the listed type. A miss means netctl and protocol.c disagree,
 * and that must fail before anything is sent rather than as EARG from the daemon. */
static void put(request_t *r, const char *name, json_t *value)
{
    const netd_arg_t *spec = netd_command_arg(r->cmd, name);
    if (!spec)
        usage_error("the command table has no argument '%s' for '%s'", name, r->cmd->name);
    if (!netd_arg_accepts(spec->type, value))
        usage_error("argument '%s' of '%s' does not have the type the command table gives", name,
                    r->cmd->name);
    json_object_set_new(r->obj, name, value);
}

static void check_required(const request_t *r)
{
    for (const netd_arg_t *a = r->cmd->args; a->name; a++)
        if (a->required && !json_object_get(r->obj, a->name))
            usage_error("missing argument '%s' (the command table requires it)", a->name);
}

/* -------------------------------------------------------- subcommand arguments */

typedef struct subcommand subcommand_t;

typedef struct parser {
    int argc;
    char **argv;
    const char **pos; /* positional arguments in order */
    int npos, next;
    const subcommand_t *sub;
} parser_t;

/* Accepted after any subcommand too, since `netctl servers --json` is what people type. */
/* clang-format off */
#define COMMON_OPTIONS \
    {"json", no_argument, NULL, 'j'}, {"quiet", no_argument, NULL, 'q'}, \
    {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}
/* clang-format on */

static _Noreturn void print_sub_usage(const subcommand_t *sub);

/* Whether getopt's '?' was about the long option in arg: an unknown one (optopt 0), or
 * "--flag=value" for a flag (optopt is then the flag's val). Otherwise it was a short
 * option, possibly inside a cluster such as -qx, and arg is unrelated. */
static bool refused_long(const char *arg, const struct option *opts)
{
    if (optopt == 0)
        return true;
    if (strncmp(arg, "--", 2) != 0 || !strchr(arg, '='))
        return false;
    size_t n = strcspn(arg + 2, "=");
    for (const struct option *o = opts; o->name; o++)
        if (o->val == optopt && strncmp(o->name, arg + 2, n) == 0)
            return true;
    return false;
}

/* Reports the option getopt refused (c is its '?' or ':') as the user typed it. A long
 * option missing its value is always the last argument; getopt_long also takes unique
 * abbreviations and reports an ambiguous one as unknown, so say which it was. */
static _Noreturn void refuse_option(char **argv, int c, const struct option *opts)
{
    const char *arg = argv[optind - 1];
    bool is_long = c == ':' ? strncmp(arg, "--", 2) == 0 : refused_long(arg, opts);
    char bad[64];
    if (is_long)
        snprintf(bad, sizeof(bad), "%.*s", (int)strcspn(arg, "="), arg);
    else
        snprintf(bad, sizeof(bad), "-%c", optopt);
    if (c == ':')
        usage_error("option '%s' needs a value", bad);
    if (is_long && strchr(arg, '=') && optopt)
        usage_error("option '%s' takes no value", bad);
    size_t typed = strlen(bad) - 2; /* the name after "--" */
    for (const struct option *o = opts; is_long && o->name; o++)
        if (strlen(o->name) > typed && strncmp(o->name, bad + 2, typed) == 0)
            usage_error("ambiguous option '%s'", bad);
    usage_error("unknown option '%s'", bad);
}

/* The next option of a subcommand; positional arguments are collected on the way (the
 * leading '-' of the option string keeps them in order even under POSIXLY_CORRECT). */
static int next_opt(parser_t *p, const struct option *opts)
{
    for (;;) {
        int c = getopt_long(p->argc, p->argv, "-:jqh", opts, NULL);
        switch (c) {
        case 1:
            p->pos[p->npos++] = optarg;
            break;
        case 'j':
            g.json = true;
            break;
        case 'q':
            g.quiet = true;
            break;
        case 'h':
            print_sub_usage(p->sub);
        case ':':
        case '?':
            refuse_option(p->argv, c, opts);
        case -1: /* after "--", the rest is positional */
            while (optind < p->argc)
                p->pos[p->npos++] = p->argv[optind++];
            return -1;
        default:
            return c;
        }
    }
}

static const struct option plain_opts[] = {COMMON_OPTIONS};

/* For subcommands whose only options are the common ones. */
static void no_options(parser_t *p)
{
    while (next_opt(p, plain_opts) != -1)
        ;
}

static const char *take(parser_t *p, const char *what)
{
    if (p->next == p->npos)
        usage_error("missing %s", what);
    return p->pos[p->next++];
}

static const char *take_optional(parser_t *p)
{
    return p->next < p->npos ? p->pos[p->next++] : NULL;
}

static void no_more(const parser_t *p)
{
    if (p->next < p->npos)
        usage_error("unexpected argument '%s'", p->pos[p->next]);
}

/* ------------------------------------------------------------------- builders */

static void build_plain(request_t *r, parser_t *p)
{
    no_options(p);
    no_more(p);
}

/* PORT (all digits), PATH (has a '/'), or --fd: exactly one. */
static void listen_target(request_t *r, const char *target, const char *fd, const char *host)
{
    if (target && fd)
        usage_error("give PORT|PATH or --fd, not both");
    if (!target && !fd)
        usage_error("missing PORT|PATH (or --fd N|NAME)");
    if (host && (fd || !all_digits(target)))
        usage_error("--host goes with a PORT only");
    if (fd) {
        put(r, "fd", all_digits(fd) ? integer("--fd", fd, 0, INT32_MAX) : string("--fd", fd));
    } else if (all_digits(target)) {
        put(r, "port", integer("PORT", target, 0, 65535));
        if (host)
            put(r, "host", string("--host", host));
    } else if (strchr(target, '/')) {
        put(r, "path", socket_path_arg("PATH", target));
    } else {
        usage_error("'%s' is neither a PORT (0-65535) nor a PATH (a path has a '/': ./%s)", target,
                    target);
    }
}

/* --greeting belongs to echo, whichever order the two options came in. */
static json_t *with_greeting(json_t *handler, const char *greeting)
{
    if (!handler)
        handler = json_pack("{s:s}", "type", "echo");
    if (strcmp(json_string_value(json_object_get(handler, "type")), "echo") != 0)
        usage_error("--greeting goes with the echo handler only");
    json_object_set_new(handler, "greeting", text_arg("--greeting", greeting));
    return handler;
}

enum {
    L_HOST = 256,
    L_NAME,
    L_BACKLOG,
    L_HANDLER,
    L_GREETING,
    L_MAXCONN,
    L_HALFOPEN,
    L_TIMEOUT,
    L_BALANCE,
    L_NODELAY,
    L_NAGLE,
    L_KEEPALIVE,
    L_FD,
    L_MODE,
    L_USER,
    L_GROUP,
    L_ACCESSLOG
};
static const struct option listen_opts[] = {{"host", required_argument, NULL, L_HOST},
                                            {"name", required_argument, NULL, L_NAME},
                                            {"backlog", required_argument, NULL, L_BACKLOG},
                                            {"handler", required_argument, NULL, L_HANDLER},
                                            {"greeting", required_argument, NULL, L_GREETING},
                                            {"max-connections", required_argument, NULL, L_MAXCONN},
                                            {"allow-half-open", no_argument, NULL, L_HALFOPEN},
                                            {"timeout", required_argument, NULL, L_TIMEOUT},
                                            {"balance", required_argument, NULL, L_BALANCE},
                                            {"no-delay", no_argument, NULL, L_NODELAY},
                                            {"nagle", no_argument, NULL, L_NAGLE},
                                            {"keep-alive", required_argument, NULL, L_KEEPALIVE},
                                            {"fd", required_argument, NULL, L_FD},
                                            {"mode", required_argument, NULL, L_MODE},
                                            {"user", required_argument, NULL, L_USER},
                                            {"group", required_argument, NULL, L_GROUP},
                                            {"access-log", no_argument, NULL, L_ACCESSLOG},
                                            COMMON_OPTIONS};

static const char *const balances[] = {"leastconn", "roundrobin", "reuseport", NULL};

static void build_listen(request_t *r, parser_t *p)
{
    const char *host = NULL, *fd = NULL, *greeting = NULL;
    const char *sockfile[3] = {NULL, NULL, NULL}; /* --mode, --user, --group */
    json_t *handler = NULL;
    int c;
    while ((c = next_opt(p, listen_opts)) != -1) {
        switch (c) {
        case L_HOST:
            host = optarg;
            break;
        case L_NAME:
            put(r, "name", server_name(optarg));
            break;
        case L_BACKLOG:
            put(r, "backlog", integer("--backlog", optarg, 0, INT32_MAX));
            break;
        case L_HANDLER:
            json_decref(handler);
            handler = handler_arg(optarg);
            break;
        case L_GREETING:
            greeting = optarg;
            break;
        case L_MAXCONN:
            put(r, "maxConnections", max_connections(optarg));
            break;
        case L_HALFOPEN:
            put(r, "allowHalfOpen", json_true());
            break;
        case L_TIMEOUT:
            put(r, "timeout", duration("--timeout", optarg));
            break;
        case L_BALANCE:
            put(r, "balance", one_of("--balance", optarg, balances));
            break;
        case L_NODELAY:
            put(r, "noDelay", json_true());
            break;
        case L_NAGLE:
            put(r, "noDelay", json_false());
            break;
        case L_KEEPALIVE:
            put(r, "keepAlive", duration("--keep-alive", optarg));
            break;
        case L_FD:
            fd = optarg;
            break;
        case L_MODE:
            sockfile[0] = optarg;
            break;
        case L_USER:
            sockfile[1] = optarg;
            break;
        case L_GROUP:
            sockfile[2] = optarg;
            break;
        case L_ACCESSLOG:
            put(r, "accessLog", json_true());
            break;
        }
    }
    const char *target = take_optional(p);
    listen_target(r, target, fd, host);
    static const char *const names[] = {"mode", "user", "group"};
    for (int i = 0; i < 3; i++) {
        if (!sockfile[i])
            continue;
        if (!json_object_get(r->obj, "path"))
            usage_error("--%s goes with a PATH only (it sets the socket file's %s)", names[i],
                        names[i]);
        if (i == 0 && (!*sockfile[0] || strspn(sockfile[0], "01234567") != strlen(sockfile[0])))
            usage_error("--mode: '%s' is not an octal mode (0660)", sockfile[0]);
        put(r, names[i], string(names[i], sockfile[i]));
    }
    no_more(p);
    if (greeting)
        handler = with_greeting(handler, greeting);
    if (handler)
        put(r, "handler", handler);
}

enum { C_DESTROY = 256, C_NO_WAIT };
static const struct option close_opts[] = {{"destroy", no_argument, NULL, C_DESTROY},
                                           {"no-wait", no_argument, NULL, C_NO_WAIT},
                                           COMMON_OPTIONS};

static void build_close(request_t *r, parser_t *p)
{
    int c;
    while ((c = next_opt(p, close_opts)) != -1)
        put(r, c == C_DESTROY ? "destroy" : "wait", c == C_DESTROY ? json_true() : json_false());
    put(r, "server", server_ref(take(p, "SERVER")));
    no_more(p);
}

/* server, connections: SERVER alone. */
static void build_server(request_t *r, parser_t *p)
{
    no_options(p);
    put(r, "server", server_ref(take(p, "SERVER")));
    no_more(p);
}

enum { K_LIMIT = 256, K_OLDER, K_IDLE, K_ROLE, K_PEER, K_SORT };
static const struct option sockets_opts[] = {{"limit", required_argument, NULL, K_LIMIT},
                                             {"older-than", required_argument, NULL, K_OLDER},
                                             {"idle-more-than", required_argument, NULL, K_IDLE},
                                             {"role", required_argument, NULL, K_ROLE},
                                             {"peer", required_argument, NULL, K_PEER},
                                             {"sort", required_argument, NULL, K_SORT},
                                             COMMON_OPTIONS};
static const char *const roles[] = {"client", "upstream", "all", NULL};
static const char *const sorts[] = {"bytes", "age", "idle", NULL};

static void build_sockets(request_t *r, parser_t *p)
{
    int c;
    while ((c = next_opt(p, sockets_opts)) != -1) {
        switch (c) {
        case K_LIMIT:
            put(r, "limit", integer("--limit", optarg, 0, INT32_MAX));
            break;
        case K_OLDER:
            put(r, "olderThanMs", duration("--older-than", optarg));
            break;
        case K_IDLE:
            put(r, "idleMoreThanMs", duration("--idle-more-than", optarg));
            break;
        case K_ROLE:
            put(r, "role", one_of("--role", optarg, roles));
            break;
        case K_PEER:
            put(r, "peer", string("--peer", optarg));
            break;
        case K_SORT:
            put(r, "sort", one_of("--sort", optarg, sorts));
            break;
        }
    }
    const char *server = take_optional(p);
    if (server)
        put(r, "server", server_ref(server));
    no_more(p);
}

static void build_destroy(request_t *r, parser_t *p)
{
    no_options(p);
    put(r, "socket", integer("SOCKET", take(p, "SOCKET"), 0, LLONG_MAX));
    no_more(p);
}

static void build_move(request_t *r, parser_t *p)
{
    no_options(p);
    put(r, "socket", integer("SOCKET", take(p, "SOCKET"), 0, LLONG_MAX));
    put(r, "thread", integer("THREAD", take(p, "THREAD"), 0, INT32_MAX));
    no_more(p);
}

static void build_rebalance(request_t *r, parser_t *p)
{
    no_options(p);
    const char *server = take_optional(p);
    if (server)
        put(r, "server", server_ref(server));
    no_more(p);
}

enum { S_MAXCONN = 256, S_TIMEOUT };
static const struct option set_opts[] = {{"max-connections", required_argument, NULL, S_MAXCONN},
                                         {"timeout", required_argument, NULL, S_TIMEOUT},
                                         COMMON_OPTIONS};

static void build_set(request_t *r, parser_t *p)
{
    bool changed = false;
    int c;
    while ((c = next_opt(p, set_opts)) != -1) {
        if (c == S_MAXCONN)
            put(r, "maxConnections", max_connections(optarg));
        else
            put(r, "timeout", duration("--timeout", optarg));
        changed = true;
    }
    put(r, "server", server_ref(take(p, "SERVER")));
    no_more(p);
    if (!changed)
        usage_error("nothing to change: give --max-connections or --timeout");
}

static const char *const event_names[] = {"listening", "connection", "close", "error", NULL};

static void build_watch(request_t *r, parser_t *p)
{
    no_options(p);
    if (p->npos == 0)
        return; /* every event */
    json_t *list = json_array();
    for (const char *e; (e = take_optional(p));)
        json_array_append_new(list, one_of("EVENT", e, event_names));
    put(r, "events", list);
}

static const struct option shutdown_opts[] = {{"timeout", required_argument, NULL, 256},
                                              COMMON_OPTIONS};

static void build_shutdown(request_t *r, parser_t *p)
{
    while (next_opt(p, shutdown_opts) != -1)
        put(r, "timeoutMs", duration("--timeout", optarg));
    no_more(p);
}

/* top runs its own requests (top.c); here only its options are read. */
static netctl_top_opts_t top_settings = {.interval_ms = 1000, .sort = "bytes"};
enum { T_INTERVAL = 256, T_COUNT, T_SORT };
static const struct option top_options[] = {{"interval", required_argument, NULL, T_INTERVAL},
                                            {"count", required_argument, NULL, T_COUNT},
                                            {"sort", required_argument, NULL, T_SORT},
                                            COMMON_OPTIONS};

static void build_top(request_t *r, parser_t *p)
{
    int c;
    while ((c = next_opt(p, top_options)) != -1) {
        switch (c) {
        case T_INTERVAL:
            top_settings.interval_ms = number("--interval", optarg, 100, MAX_MS);
            break;
        case T_COUNT:
            top_settings.count = number("--count", optarg, 1, INT32_MAX);
            break;
        case T_SORT:
            json_decref(one_of("--sort", optarg, sorts));
            top_settings.sort = optarg;
            break;
        }
    }
    no_more(p);
}

static int run_top(const char *path)
{
    top_settings.timeout_ms = g.timeout_ms;
    return netctl_top(path, &top_settings);
}

static const struct option upgrade_opts[] = {{"exec", required_argument, NULL, 256},
                                             {"timeout", required_argument, NULL, 257},
                                             COMMON_OPTIONS};

/* The reply comes from the new process once it holds everything, or an EUPGRADE: wait
 * for it past the upgrade's own deadline (30 s unless --timeout). */
static void build_upgrade(request_t *r, parser_t *p)
{
    long long deadline = 30000;
    int o;
    while ((o = next_opt(p, upgrade_opts)) != -1) {
        if (o == 256) {
            if (!*optarg)
                usage_error("--exec: the path of the new netd binary");
            put(r, "exec", string("--exec", optarg));
        } else {
            json_t *ms = duration("--timeout", optarg);
            deadline = (long long)json_integer_value(ms);
            put(r, "timeoutMs", ms);
        }
    }
    no_more(p);
    if (g.timeout_ms > 0 && g.timeout_ms < deadline + 5000)
        g.timeout_ms = deadline + 5000;
}

/* The line goes out as given, unchecked: `call` is how one tests the daemon's own
 * refusals. Only a newline is refused, since it would end the line early. */
static void build_call(request_t *r, parser_t *p)
{
    no_options(p);
    const char *line = take(p, "JSON");
    no_more(p);
    if (strpbrk(line, "\r\n"))
        usage_error("JSON must be one line");
    r->line = strdup(line);
}

/* ------------------------------------------------------------------ subcommands */

/* What a positional argument is, for the completion. */
typedef enum { POS_NONE, POS_SERVER, POS_TARGET, POS_EVENTS } pos_kind_t;

struct subcommand {
    const char *name, *alias;
    const char *cmd;     /* the protocol command sent; NULL: a raw line (call) */
    const char *usage;   /* the arguments, for --help */
    const char *summary; /* NULL: the command table's */
    void (*build)(request_t *r, parser_t *p);
    netctl_printer_t print;              /* NULL: the reply line as received */
    const struct option *opts;           /* its options (the completion offers them) */
    pos_kind_t pos;                      /* its positional arguments, for the completion */
    bool stream;                         /* events follow the reply (watch) */
    bool progress;                       /* close: while waiting, count what is left */
    bool failed_list;                    /* reload: a non-empty "failed" makes the exit status 1 */
    int (*run)(const char *socket_path); /* runs the whole exchange itself (top) */
};

static void print_help_reply(const json_t *reply);

/* One row per subcommand, in CONTROL.md's order; --help, `netctl help` and the
 * completion (bash and zsh, through `netctl __complete`) follow it. */
/* clang-format off */
static const subcommand_t subcommands[] = {
    {.name = "ping", .cmd = "ping", .usage = "", .build = build_plain,
     .print = netctl_print_result, .opts = plain_opts},
    {.name = "listen", .cmd = "listen",
     .usage = "PORT|PATH|--fd N|NAME [--host H] [--name N] [--backlog N]"
              " [--handler echo|discard|banner:TEXT|proxy:[HOST:]PORT|proxy:PATH]"
              " [--greeting TEXT] [--max-connections N|none] [--allow-half-open]"
              " [--timeout DURATION] [--balance leastconn|roundrobin|reuseport]"
              " [--no-delay|--nagle] [--keep-alive DURATION]"
              " [--mode 0660] [--user U] [--group G] [--access-log]",
     .build = build_listen, .print = netctl_print_server, .opts = listen_opts,
     .pos = POS_TARGET},
    {.name = "close", .cmd = "close", .usage = "SERVER [--destroy] [--no-wait]",
     .build = build_close, .print = netctl_print_server, .opts = close_opts,
     .pos = POS_SERVER, .progress = true},
    {.name = "servers", .alias = "ls", .cmd = "servers", .usage = "", .build = build_plain,
     .print = netctl_print_servers, .opts = plain_opts},
    {.name = "server", .cmd = "server", .usage = "SERVER", .build = build_server,
     .print = netctl_print_server, .opts = plain_opts, .pos = POS_SERVER},
    {.name = "connections", .cmd = "getConnections", .usage = "SERVER", .build = build_server,
     .print = netctl_print_count, .opts = plain_opts, .pos = POS_SERVER},
    {.name = "sockets", .cmd = "sockets",
     .usage = "[SERVER] [--limit N] [--older-than DURATION] [--idle-more-than DURATION]"
              " [--role client|upstream|all] [--peer ADDR[:PORT]] [--sort bytes|age|idle]",
     .build = build_sockets, .print = netctl_print_sockets, .opts = sockets_opts,
     .pos = POS_SERVER},
    {.name = "destroy", .cmd = "destroy", .usage = "SOCKET", .build = build_destroy,
     .print = netctl_print_result, .opts = plain_opts},
    {.name = "move", .cmd = "move", .usage = "SOCKET THREAD", .build = build_move,
     .print = netctl_print_socket, .opts = plain_opts},
    {.name = "rebalance", .cmd = "rebalance", .usage = "[SERVER]", .build = build_rebalance,
     .print = netctl_print_result, .opts = plain_opts, .pos = POS_SERVER},
    {.name = "set", .cmd = "set",
     .usage = "SERVER [--max-connections N|none] [--timeout DURATION]", .build = build_set,
     .print = netctl_print_server, .opts = set_opts, .pos = POS_SERVER},
    {.name = "stats", .cmd = "stats", .usage = "", .build = build_plain,
     .print = netctl_print_stats, .opts = plain_opts},
    {.name = "metrics", .cmd = "metrics", .usage = "", .build = build_plain,
     .print = netctl_print_metrics, .opts = plain_opts},
    {.name = "watch", .cmd = "watch", .usage = "[listening|connection|close|error ...]",
     .summary = "print events, one line each, until interrupted or netd closes",
     .build = build_watch, .stream = true, .opts = plain_opts, .pos = POS_EVENTS},
    {.name = "top", .usage = "[--interval MS] [--count N] [--sort bytes|age|idle]",
     .summary = "live view: servers, threads, busiest sockets (q quit, s sort, p pause);"
                " one line per interval when not on a terminal",
     .build = build_top, .run = run_top, .opts = top_options},
    {.name = "shutdown", .cmd = "shutdown", .usage = "[--timeout DURATION]",
     .build = build_shutdown, .print = netctl_print_result, .opts = shutdown_opts},
    {.name = "reload", .cmd = "reload", .usage = "", .build = build_plain,
     .print = netctl_print_reload, .opts = plain_opts, .failed_list = true},
    {.name = "upgrade", .cmd = "upgrade", .usage = "[--exec PATH] [--timeout DURATION]",
     .build = build_upgrade, .print = netctl_print_upgrade, .opts = upgrade_opts},
    {.name = "call", .usage = "JSON",
     .summary = "send one raw request line; print the raw reply line", .build = build_call,
     .opts = plain_opts},
    {.name = "help", .cmd = "help", .usage = "",
     .summary = "list the commands the daemon knows", .build = build_plain,
     .print = print_help_reply, .opts = plain_opts},
    {.name = NULL},
};
/* clang-format on */

static const subcommand_t *find_sub(const char *name)
{
    for (const subcommand_t *s = subcommands; s->name; s++)
        if (strcmp(s->name, name) == 0 || (s->alias && strcmp(s->alias, name) == 0))
            return s;
    return NULL;
}

/* Optimal string alignment distance: typos, missing or extra letters, swapped pairs. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    if (n > 32 || m > 32)
        return SIZE_MAX;
    size_t d[33][33];
    for (size_t i = 0; i <= n; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= m; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= n; i++) {
        for (size_t j = 1; j <= m; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < best)
                best = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[n][m];
}

/* The subcommand an unknown word was most likely meant to be, or NULL. */
static const char *nearest_sub(const char *word)
{
    const char *best = NULL;
    size_t best_d = SIZE_MAX, limit = strlen(word) <= 4 ? 1 : 2;
    for (const subcommand_t *s = subcommands; s->name; s++) {
        const char *names[2] = {s->name, s->alias};
        for (int k = 0; k < 2 && names[k]; k++) {
            size_t dist = edit_distance(word, names[k]);
            /* A prefix is a likely abbreviation too ("conn" for connections). */
            if (strlen(word) >= 3 && strncmp(names[k], word, strlen(word)) == 0)
                dist = 1;
            if (dist < best_d) {
                best_d = dist;
                best = s->name;
            }
        }
    }
    return best_d <= limit ? best : NULL;
}

static const subcommand_t *sub_for_cmd(const char *cmd)
{
    for (const subcommand_t *s = subcommands; s->name; s++)
        if (s->cmd && strcmp(s->cmd, cmd) == 0)
            return s;
    return NULL;
}

static const char *summary_of(const subcommand_t *s)
{
    const netd_command_t *cmd = s->cmd ? netd_command_find(s->cmd) : NULL;
    return s->summary ? s->summary : cmd ? cmd->summary : "";
}

/* `netctl help`: the daemon's list, with the subcommand that sends each command ("call"
 * for one this netctl does not know, as from a newer daemon). */
static void print_help_reply(const json_t *reply)
{
    static const netctl_column_t cols[] = {{"COMMAND", false}, {"NETCTL", false}, {"USAGE", false}};
    netctl_table_t *t = netctl_table_new(cols, 3);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(reply, "commands"), i, c) {
        const char *name = json_string_value(json_object_get(c, "cmd"));
        const subcommand_t *sub = name ? sub_for_cmd(name) : NULL;
        netctl_table_cell(t, "%s", name ? name : "?");
        netctl_table_cell(t, "%s", sub ? sub->name : "call");
        const char *usage = json_string_value(json_object_get(c, "usage"));
        netctl_table_cell(t, "%s", usage ? usage : "");
    }
    netctl_table_print(t, stdout);
    netctl_table_free(t);
}

/* ------------------------------------------------------------------------ usage */

/* Continues a line at column col with the words of text, wrapping at spaces outside
 * brackets (so "[--handler ...|...]" stays whole) to lines indented by indent. */
static void print_wrapped(FILE *out, const char *text, int col, int indent)
{
    const int width = 79;
    while (*text) {
        int depth = 0, len = 0;
        while (text[len] && (text[len] != ' ' || depth > 0)) {
            depth += text[len] == '[' ? 1 : text[len] == ']' ? -1 : 0;
            len++;
        }
        if (col > indent && col + 1 + len > width) {
            fprintf(out, "\n%*s", indent, "");
            col = indent;
        } else {
            fputc(' ', out);
            col++;
        }
        fprintf(out, "%.*s", len, text);
        col += len;
        text += len;
        while (*text == ' ')
            text++;
    }
    fputc('\n', out);
}

static void print_sub_line(FILE *out, const subcommand_t *s)
{
    char head[64];
    int n = snprintf(head, sizeof(head), "  %s", s->name);
    fputs(head, out);
    print_wrapped(out, s->usage, n, n + 1);
    fprintf(out, "      %s%s%s\n", summary_of(s), s->alias ? "; alias: " : "",
            s->alias ? s->alias : "");
}

static _Noreturn void print_sub_usage(const subcommand_t *s)
{
    int col = printf("Usage: netctl [OPTIONS] %s", s->name);
    print_wrapped(stdout, s->usage, col, 8);
    printf("  %s%s%s\n", summary_of(s), s->alias ? "; alias: " : "", s->alias ? s->alias : "");
    finish(EXIT_OK);
}

/* -s, else $NETD_SOCKET, else the daemon's own default (CONTROL.md "Transport"), and
 * where it came from, so --help and error messages can say why this path. */
static const char *socket_path_from(char *buf, size_t len, const char **from)
{
    const char *env = getenv("NETD_SOCKET");
    if (g.socket) {
        *from = "-s";
        return g.socket;
    }
    if (env && *env) {
        *from = "$NETD_SOCKET";
        return env;
    }
    const char *rd = getenv("RUNTIME_DIRECTORY"), *xdg = getenv("XDG_RUNTIME_DIR");
    *from = rd && *rd        ? "$RUNTIME_DIRECTORY"
            : geteuid() == 0 ? "the default for root"
            : xdg && *xdg    ? "$XDG_RUNTIME_DIR"
                             : "the default for your uid";
    return netd_default_socket_path(buf, len);
}

static const char *socket_path(char *buf, size_t len)
{
    const char *from;
    return socket_path_from(buf, len, &from);
}

static void print_usage(FILE *out)
{
    char def[PATH_MAX];
    const char *from;
    const char *path = socket_path_from(def, sizeof(def), &from);
    fprintf(out,
            "Usage: netctl [-s SOCKET] [--json] [-q] [--timeout DURATION] COMMAND [ARGS]\n"
            "       netctl COMMAND --help | --help | --version\n"
            "\n"
            "Options:\n"
            "  -s, --socket PATH  the control socket; for you now:\n"
            "                     %s (%s)\n"
            "                     (looked for in this order: -s, $NETD_SOCKET,\n"
            "                     $RUNTIME_DIRECTORY, /run/netd for root, $XDG_RUNTIME_DIR,\n"
            "                     /tmp/netd-UID)\n"
            "  -j, --json         print the daemon's reply line unchanged\n"
            "  -q, --quiet        print nothing; only the exit status tells\n"
            "      --timeout DURATION  give up waiting after it: 500ms, 30s, 5m, or ms\n"
            "                     (default %ds; 0 waits forever)\n"
            "  -h, --help         this text, without contacting the daemon\n"
            "  -V, --version      netctl's version\n"
            "\n"
            "Commands:\n",
            path, from, DEFAULT_TIMEOUT_MS / 1000);
    for (const subcommand_t *s = subcommands; s->name; s++)
        print_sub_line(out, s);
    fputs("\nSERVER is an id when all digits, else a name. --json and -q may also follow\n"
          "the command. DURATION: 500ms, 30s, 5m, 2h, or a number of ms.\n"
          "Exit status: 0 ok; 1 the daemon answered an error (or reload: a server failed);\n"
          "2 usage error; 3 cannot reach the daemon; 4 no reply within --timeout (the\n"
          "request was sent: the daemon may still carry it out, e.g. a close still waits).\n",
          out);
}

/* ------------------------------------------------------------------ completion */

static json_t *quick_call(const char *path, json_t *req, int timeout_ms);

static const struct option global_opts[] = {{"socket", required_argument, NULL, 's'},
                                            {"json", no_argument, NULL, 'j'},
                                            {"quiet", no_argument, NULL, 'q'},
                                            {"timeout", required_argument, NULL, 256},
                                            {"help", no_argument, NULL, 'h'},
                                            {"version", no_argument, NULL, 'V'},
                                            {NULL, 0, NULL, 0}};

/* The option a word names ("--balance", "--balance=x", "-j"), or NULL. */
static const struct option *find_opt(const struct option *opts, const char *word)
{
    for (const struct option *o = opts; o->name; o++) {
        if (word[0] == '-' && word[1] && !word[2] && o->val == word[1])
            return o;
        size_t n = strcspn(word + 2, "=");
        if (!strncmp(word, "--", 2) && strlen(o->name) == n && !strncmp(o->name, word + 2, n))
            return o;
    }
    return NULL;
}

static void complete_list(const char *const *words)
{
    for (; *words; words++)
        puts(*words);
}

static void complete_values(const char *opt)
{
    static const char *const handlers[] = {"echo", "discard", "banner:", "proxy:", NULL};
    if (!strcmp(opt, "balance"))
        complete_list(balances);
    else if (!strcmp(opt, "role"))
        complete_list(roles);
    else if (!strcmp(opt, "sort"))
        complete_list(sorts);
    else if (!strcmp(opt, "handler"))
        complete_list(handlers);
    else if (!strcmp(opt, "user"))
        puts("::users");
    else if (!strcmp(opt, "group"))
        puts("::groups");
    else if (!strcmp(opt, "socket"))
        puts("::files");
}

/* Ids and names of the running servers, when netd answers within 300 ms. */
static void complete_servers(void)
{
    char def[PATH_MAX];
    json_t *reply = quick_call(socket_path(def, sizeof(def)),
                               json_pack("{s:i, s:s}", "id", 1, "cmd", "servers"), 300);
    size_t i;
    json_t *srv;
    json_array_foreach(json_object_get(reply, "servers"), i, srv) {
        printf("%lld\n", (long long)json_integer_value(json_object_get(srv, "id")));
        const char *name = json_string_value(json_object_get(srv, "name"));
        if (name && !strpbrk(name, "\n\r"))
            puts(name);
    }
    json_decref(reply);
}

/*
 * `netctl __complete N WORD...`: the candidates for the N-th word (from 1) after
 * "netctl", one per line, from the subcommand table; "::files", "::users" or "::groups"
 * ask the shell for its own. The bash and zsh completions are thin wrappers around it.
 */
static int complete(int argc, char **argv)
{
    long idx = argc > 0 ? strtol(argv[0], NULL, 10) : 0;
    char **w = argv + 1;
    int nw = argc - 1;
    if (idx < 1 || nw < 0)
        return EXIT_OK;
    const char *cur = idx <= nw ? w[idx - 1] : "";
    const char *prev = idx >= 2 && idx - 2 < nw ? w[idx - 2] : "";
    const subcommand_t *sub = NULL;
    int i, subpos = -1;
    for (i = 0; i < idx - 1 && i < nw && !sub; i++) {
        const struct option *o = w[i][0] == '-' ? find_opt(global_opts, w[i]) : NULL;
        if (o && o->has_arg == required_argument && !strchr(w[i], '=')) {
            if (o->val == 's' && i + 1 < idx - 1 && i + 1 < nw)
                g.socket = w[i + 1];
            i++;
        } else if (o && o->val == 's') {
            g.socket = strchr(w[i], '=') + 1;
        } else if (w[i][0] != '-') {
            sub = find_sub(w[i]);
            subpos = i;
            if (!sub)
                return EXIT_OK;
        }
    }
    if (!sub) {
        const struct option *o = prev[0] == '-' ? find_opt(global_opts, prev) : NULL;
        if (o && o->has_arg == required_argument) {
            complete_values(o->name);
        } else if (cur[0] == '-') {
            for (o = global_opts; o->name; o++)
                printf("--%s\n", o->name);
        } else {
            for (const subcommand_t *s = subcommands; s->name; s++)
                puts(s->name);
        }
        return EXIT_OK;
    }
    int npos = 0;
    for (i = subpos + 1; i < idx - 1 && i < nw; i++) {
        const struct option *o = w[i][0] == '-' && w[i][1] ? find_opt(sub->opts, w[i]) : NULL;
        if (o && o->has_arg == required_argument && !strchr(w[i], '='))
            i++;
        else if (w[i][0] != '-')
            npos++;
    }
    const struct option *o = prev[0] == '-' && idx - 2 > subpos ? find_opt(sub->opts, prev) : NULL;
    if (o && o->has_arg == required_argument) {
        complete_values(o->name);
    } else if (cur[0] == '-') {
        for (o = sub->opts; o->name; o++)
            printf("--%s\n", o->name);
    } else if (sub->pos == POS_SERVER && npos == 0) {
        complete_servers();
    } else if (sub->pos == POS_TARGET && npos == 0) {
        puts("::files");
    } else if (sub->pos == POS_EVENTS) {
        complete_list(event_names);
    }
    return EXIT_OK;
}

/* -------------------------------------------------------------- global options */

static int parse_global(int argc, char **argv)
{
    enum { TIMEOUT = 256 };
    const struct option *opts = global_opts;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:s:jqhV", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (!*optarg)
                usage_error("-s: empty socket path");
            g.socket = optarg;
            break;
        case 'j':
            g.json = true;
            break;
        case 'q':
            g.quiet = true;
            break;
        case TIMEOUT:
            g.timeout_ms = duration_ms("--timeout", optarg);
            break;
        case 'h':
            print_usage(stdout);
            finish(EXIT_OK);
        case 'V':
            printf("netctl %s\n", PACKAGE_VERSION);
            finish(EXIT_OK);
        default: /* '?' or ':' */
            refuse_option(argv, c, opts);
        }
    }
    if (optind >= argc)
        usage_error("no command given");
    return optind;
}

static void build_request(const subcommand_t *sub, int argc, char **argv, request_t *r)
{
    static json_int_t next_id = 1;
    parser_t p = {argc, argv, calloc((size_t)argc, sizeof(char *)), 0, 0, sub};
    if (!p.pos)
        abort();
    current_sub = sub->name;
    optind = 0; /* glibc: start afresh, with this subcommand's option string */
    r->id = next_id++;
    if (sub->cmd) {
        r->cmd = netd_command_find(sub->cmd);
        if (!r->cmd)
            usage_error("'%s' is not in the command table", sub->cmd);
        r->obj = json_object();
        put(r, "id", json_integer(r->id));
        json_object_set_new(r->obj, "cmd", json_string(r->cmd->name));
    }
    sub->build(r, &p);
    if (r->cmd) {
        check_required(r);
        r->line = json_dumps(r->obj, JSON_COMPACT);
    }
    free(p.pos);
    current_sub = NULL;
}

/* ------------------------------------------------------------------- transport */

typedef struct conn {
    int fd;
    const char *path;
    char *buf;   /* bytes received; lines already returned come first */
    size_t len;  /* bytes held */
    size_t used; /* bytes of the line returned last */
    size_t cap;
} conn_t;

enum { READ_LINE, READ_EOF, READ_INTERRUPTED, READ_TIMEOUT };

static volatile sig_atomic_t interrupted;
static sigset_t poll_mask; /* the mask while in ppoll: interrupts get through only there */

static void on_interrupt(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* For watch: SIGINT/SIGTERM end it cleanly. They stay blocked except inside ppoll, so
 * one cannot slip in between a check and the wait. */
static void catch_interrupts(void)
{
    struct sigaction sa = {.sa_handler = on_interrupt};
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigprocmask(SIG_BLOCK, &block, &poll_mask);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* 1 ready, 0 the deadline passed (deadline < 0: none), -1 interrupted. */
static int wait_for(const conn_t *c, short events, long long deadline)
{
    struct pollfd pfd = {c->fd, events, 0};
    for (;;) {
        struct timespec ts, *tsp = NULL;
        if (deadline >= 0) {
            long long left = deadline - now_ms();
            if (left < 0)
                left = 0;
            ts.tv_sec = left / 1000;
            ts.tv_nsec = left % 1000 * 1000000;
            tsp = &ts;
        }
        int n = ppoll(&pfd, 1, tsp, &poll_mask);
        if (n > 0)
            return 1;
        if (n == 0)
            return 0;
        if (errno != EINTR)
            unreachable("%s: poll: %s", c->path, strerror(errno));
        if (interrupted)
            return -1;
    }
}

static _Noreturn void timed_out(const conn_t *c, const char *what)
{
    unreachable("%s: %s within %lld ms (see --timeout)", c->path, what, g.timeout_ms);
}

static void conn_open(conn_t *c, long long deadline)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(c->path) >= sizeof(sa.sun_path))
        unreachable("cannot connect to %s: %s", c->path, strerror(ENAMETOOLONG));
    memcpy(sa.sun_path, c->path, strlen(c->path));
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0)
        unreachable("cannot connect to %s: %s", c->path, strerror(errno));
    /* A unix connect completes at once or fails with EAGAIN when the daemon's backlog is
     * full; then it is worth retrying until the deadline. */
    while (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            unreachable("cannot connect to %s: %s", c->path, strerror(errno));
        if (deadline >= 0 && now_ms() >= deadline)
            unreachable("cannot connect to %s: no room in its backlog within %lld ms", c->path,
                        g.timeout_ms);
        nanosleep(&(struct timespec){0, 10000000L}, NULL); /* 10 ms */
    }
}

/* False when the daemon has already closed: it may still have said why (EPERM, EBUSY),
 * so the caller reads on. */
static bool conn_send(const conn_t *c, const char *data, size_t len, long long deadline)
{
    while (len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n >= 0) {
            data += n;
            len -= (size_t)n;
        } else if (errno == EAGAIN) {
            if (wait_for(c, POLLOUT, deadline) == 0)
                timed_out(c, "could not send the request");
        } else if (errno == EPIPE || errno == ECONNRESET) {
            return false;
        } else if (errno != EINTR) {
            unreachable("%s: send: %s", c->path, strerror(errno));
        }
    }
    return true;
}

static void conn_grow(conn_t *c)
{
    if (c->cap == MAX_REPLY_LINE)
        unreachable("%s: a reply line is longer than %zu MiB", c->path, MAX_REPLY_LINE >> 20);
    c->cap = c->cap ? 2 * c->cap : (size_t)64 << 10;
    if (c->cap > MAX_REPLY_LINE)
        c->cap = MAX_REPLY_LINE;
    c->buf = realloc(c->buf, c->cap);
    if (!c->buf)
        abort();
}

/* The next line, without its '\n' (*line stays valid until the next call), or
 * READ_TIMEOUT once the deadline passed (< 0: none, as for a watch). */
static int conn_read_line(conn_t *c, long long deadline, char **line, size_t *len)
{
    if (c->used) {
        memmove(c->buf, c->buf + c->used, c->len - c->used);
        c->len -= c->used;
        c->used = 0;
    }
    for (size_t scanned = 0;;) {
        char *nl = c->len ? memchr(c->buf + scanned, '\n', c->len - scanned) : NULL;
        if (nl) {
            *nl = '\0';
            *line = c->buf;
            *len = (size_t)(nl - c->buf);
            c->used = *len + 1;
            return READ_LINE;
        }
        scanned = c->len;
        if (c->len == c->cap)
            conn_grow(c);
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n > 0) {
            c->len += (size_t)n;
        } else if (n == 0 || errno == ECONNRESET) {
            return READ_EOF;
        } else if (errno == EAGAIN) {
            int w = wait_for(c, POLLIN, deadline);
            if (w == 0)
                return READ_TIMEOUT;
            if (w < 0)
                return READ_INTERRUPTED;
        } else if (errno != EINTR) {
            unreachable("%s: recv: %s", c->path, strerror(errno));
        }
    }
}

/* ---------------------------------------------------------------------- replies */

static void print_line(const char *line, size_t len)
{
    fwrite(line, 1, len, stdout);
    putchar('\n');
}

static void report_error(const json_t *reply)
{
    const json_t *err = json_object_get(reply, "error");
    const char *code = json_string_value(json_object_get(err, "code"));
    const char *message = json_string_value(json_object_get(err, "message"));
    fprintf(stderr, "netctl: %s: %s\n", code ? code : "EUNKNOWN",
            message ? message : "(no message)");
}

/* The reply to our request, or one sent before any request was read (id null: EPERM,
 * EBUSY): anything else means the stream is not what we think it is. */
static bool reply_matches(const json_t *reply, json_int_t id)
{
    const json_t *rid = json_object_get(reply, "id");
    return json_is_null(rid) || (json_is_integer(rid) && json_integer_value(rid) == id);
}

static int handle_reply(const subcommand_t *sub, const request_t *r, const conn_t *c,
                        const char *line, size_t len)
{
    json_t *reply = json_loadb(line, len, 0, NULL);
    const json_t *ok = json_object_get(reply, "ok");
    if (!json_is_object(reply) || !json_is_boolean(ok))
        unreachable("%s: the reply is not a netd reply: %.80s", c->path, line);
    if (r->cmd && !reply_matches(reply, r->id))
        unreachable("%s: the reply answers another request: %.80s", c->path, line);
    bool raw = g.json || !sub->print;
    int status = json_is_true(ok) ? EXIT_OK : EXIT_DAEMON_ERROR;
    if (!g.quiet && status == EXIT_DAEMON_ERROR) {
        if (raw)
            print_line(line, len);
        report_error(reply);
    } else if (!g.quiet && !sub->stream) {
        if (raw)
            print_line(line, len);
        else
            sub->print(reply);
    }
    /* reload: applied, but servers that could not listen make it a failure (the running
     * ones stay), so `systemctl reload` says so. */
    const json_t *failed = sub->failed_list ? json_object_get(reply, "failed") : NULL;
    size_t i;
    const json_t *f;
    json_array_foreach(failed, i, f) {
        status = EXIT_DAEMON_ERROR;
        if (!g.quiet)
            fprintf(stderr, "netctl: reload: server %s: %s: %s\n",
                    json_string_value(json_object_get(f, "name")),
                    json_string_value(json_object_get(f, "code")),
                    json_string_value(json_object_get(f, "message")));
    }
    json_decref(reply);
    return status;
}

static bool is_overflow(const json_t *ev)
{
    const char *name = json_string_value(json_object_get(ev, "event"));
    return name && strcmp(name, "overflow") == 0;
}

/* After watch's reply: one event per line until interrupted or the daemon closes. */
static int stream_events(conn_t *c)
{
    for (;;) {
        char *line;
        size_t len;
        if (conn_read_line(c, -1, &line, &len) != READ_LINE)
            return EXIT_OK;
        json_t *ev = json_loadb(line, len, 0, NULL);
        bool overflow = is_overflow(ev);
        if (!g.quiet && (g.json || !json_is_object(ev)))
            print_line(line, len);
        else if (!g.quiet)
            netctl_print_event(ev);
        json_decref(ev);
        if (fflush(stdout) != 0)
            finish(EXIT_OK);
        if (overflow) {
            if (!g.quiet)
                fprintf(stderr, "netctl: the watch fell more than 1 MiB behind; netd closed "
                                "it and events were lost\n");
            return EXIT_DAEMON_ERROR;
        }
    }
}

/* ------------------------------------------------------------------ close progress */

#define PROGRESS_MS 250

/* One request on a connection of its own, bounded by timeout_ms; the reply, or NULL. For
 * side questions (what a close still waits for, server names to complete) that must never
 * hold up or end the run. */
static json_t *quick_call(const char *path, json_t *req, int timeout_ms)
{
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    json_t *reply = NULL;
    char *line = NULL;
    size_t cap = 1 << 20, got = 0;
    if (!text || fd < 0 || strlen(path) >= sizeof(sa.sun_path) || !(line = malloc(cap)))
        goto out;
    memcpy(sa.sun_path, path, strlen(path));
    struct timeval tv = {timeout_ms / 1000, (suseconds_t)(timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    size_t n = strlen(text);
    text[n] = '\n'; /* json_dumps' NUL becomes the line's end */
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        send(fd, text, n + 1, MSG_NOSIGNAL) != (ssize_t)(n + 1))
        goto out;
    while (got < cap && !memchr(line, '\n', got)) {
        ssize_t k = recv(fd, line + got, cap - got, 0);
        if (k <= 0)
            goto out;
        got += (size_t)k;
    }
    char *nl = memchr(line, '\n', got);
    if (nl)
        reply = json_loadb(line, (size_t)(nl - line), 0, NULL);
    if (reply && !json_is_true(json_object_get(reply, "ok"))) {
        json_decref(reply);
        reply = NULL;
    }
out:
    if (fd >= 0)
        close(fd);
    free(text);
    free(line);
    return reply;
}

/* Live connections of the server a close waits for, or -1 when that cannot be told. */
static long long count_left(const char *path, const request_t *r)
{
    json_t *req = json_pack("{s:i, s:s, s:O}", "id", 1, "cmd", "getConnections", "server",
                            json_object_get(r->obj, "server"));
    json_t *reply = quick_call(path, req, 1000);
    json_t *c = json_object_get(reply, "count");
    long long count = json_is_integer(c) ? json_integer_value(c) : -1;
    json_decref(reply);
    return count;
}

static const char *server_ref_text(const request_t *r, char *buf, size_t len)
{
    json_t *ref = json_object_get(r->obj, "server");
    if (json_is_integer(ref))
        snprintf(buf, len, "%lld", (long long)json_integer_value(ref));
    else
        snprintf(buf, len, "%s", json_is_string(ref) ? json_string_value(ref) : "?");
    return buf;
}

/* On a terminal, one line updated in place while a close waits. */
static bool show_progress(const request_t *r, long long left)
{
    if (g.quiet || left < 0 || !isatty(STDERR_FILENO))
        return false;
    char name[256];
    fprintf(stderr, "\rnetctl: closing %s: %lld connection%s left\033[K",
            server_ref_text(r, name, sizeof(name)), left, left == 1 ? "" : "s");
    fflush(stderr);
    return true;
}

/* The daemon has the request; only our patience ran out. */
static _Noreturn void reply_timed_out(const conn_t *c, const subcommand_t *sub, const request_t *r,
                                      long long left)
{
    char name[256];
    if (sub->progress && left >= 0)
        fprintf(stderr,
                "netctl: close %s: still closing after %lld ms, %lld connection%s left; it "
                "accepts no new ones and closes once they end (netctl server %s)\n",
                server_ref_text(r, name, sizeof(name)), g.timeout_ms, left, left == 1 ? "" : "s",
                name);
    else if (sub->progress)
        fprintf(stderr,
                "netctl: close %s: still closing after %lld ms; it accepts no new connections "
                "and closes once the open ones end\n",
                server_ref_text(r, name, sizeof(name)), g.timeout_ms);
    else
        fprintf(stderr,
                "netctl: %s: no reply within %lld ms (see --timeout); the daemon may still "
                "carry out the request\n",
                c->path, g.timeout_ms);
    exit(EXIT_TIMEOUT);
}

static int run(const subcommand_t *sub, const request_t *r, const char *path)
{
    conn_t c = {.fd = -1, .path = path};
    long long deadline = g.timeout_ms > 0 ? now_ms() + g.timeout_ms : -1;
    char *line;
    size_t len;
    sigprocmask(SIG_BLOCK, NULL, &poll_mask);
    if (sub->stream)
        catch_interrupts();
    conn_open(&c, deadline);
    char *wire;
    if (asprintf(&wire, "%s\n", r->line) < 0)
        abort();
    conn_send(&c, wire, strlen(wire), deadline);
    free(wire);
    /* A close that waits for its server's 'close' may take long: count what is left. */
    bool progress = sub->progress && r->obj && !json_is_false(json_object_get(r->obj, "wait"));
    bool shown = false;
    long long left = -1;
    int got;
    for (;;) {
        long long until = deadline;
        if (progress) {
            long long tick = now_ms() + PROGRESS_MS;
            if (until < 0 || tick < until)
                until = tick;
        }
        got = conn_read_line(&c, until, &line, &len);
        if (got != READ_TIMEOUT || (deadline >= 0 && now_ms() >= deadline))
            break;
        left = count_left(path, r);
        shown = show_progress(r, left) || shown;
    }
    if (shown)
        fputs("\r\033[K", stderr);
    if (got == READ_TIMEOUT)
        reply_timed_out(&c, sub, r, progress ? count_left(path, r) : -1);
    if (got == READ_INTERRUPTED)
        return EXIT_OK;
    if (got == READ_EOF)
        unreachable("%s: the daemon closed the connection without a reply", path);
    int status = handle_reply(sub, r, &c, line, len);
    if (status == EXIT_OK && sub->stream)
        status = stream_events(&c);
    close(c.fd);
    free(c.buf);
    return status;
}

int main(int argc, char **argv)
{
    char def[PATH_MAX];
    request_t req = {0};
    /* Writes to a closed socket or pipe must come back as EPIPE, not kill us. */
    signal(SIGPIPE, SIG_IGN);
    int first = parse_global(argc, argv);
    if (strcmp(argv[first], "__complete") == 0)
        return complete(argc - first - 1, argv + first + 1);
    const subcommand_t *sub = find_sub(argv[first]);
    if (!sub) {
        const char *near = nearest_sub(argv[first]);
        if (near)
            usage_error("unknown command '%s' (did you mean %s?)", argv[first], near);
        usage_error("unknown command '%s'", argv[first]);
    }
    build_request(sub, argc - first, argv + first, &req);
    if (sub->run)
        finish(sub->run(socket_path(def, sizeof(def))));
    int status = run(sub, &req, socket_path(def, sizeof(def)));
    json_decref(req.obj);
    free(req.line);
    finish(status);
}
