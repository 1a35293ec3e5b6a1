/* SPDX-License-Identifier: MIT */
/*
 * netd.json and `listen` arguments: JSON in, validated structs out (CONTROL.md "Config file").
 * Every refusal names the field ("servers[1].port: ...") so an operator can fix it at once.
 */

#include "config.h"

#include "conf.h"
#include "protocol.h"

#include <errno.h>
#include <grp.h>
#include <libgen.h>
#include <pwd.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

/* The longest unix socket path: sun_path minus its terminating NUL. */
#define MAX_UNIX_PATH (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

#define DEFAULT_BACKLOG 511
#define MAX_THREADS 1024
#define MAX_MODE 07777

/* jansson's integer type is long long or long, depending on how it was built. */
#if JSON_INTEGER_IS_LONG_LONG
#define JSON_INT_MAX LLONG_MAX
#else
#define JSON_INT_MAX LONG_MAX
#endif

/* ------------------------------------------------------------------------ error messages */

/* Where a message goes and what stands before field names ("servers[2]."). */
typedef struct perr {
    char *buf;
    size_t len;
    const char *prefix;
} perr_t;

/*
 * Writes "<prefix><field>: <message>" and returns -1, so callers can `return fail(...)`.
 * An empty field names the object itself: the prefix loses its trailing dot.
 */
__attribute__((format(printf, 3, 4))) static int fail(const perr_t *e, const char *field,
                                                      const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!e->buf || e->len == 0)
        return -1;
    if (*field) {
        snprintf(e->buf, e->len, "%s%s: %s", e->prefix, field, msg);
    } else {
        size_t n = strlen(e->prefix);
        if (n > 0 && e->prefix[n - 1] == '.')
            n--;
        if (n == 0)
            snprintf(e->buf, e->len, "%s", msg);
        else
            snprintf(e->buf, e->len, "%.*s: %s", (int)n, e->prefix, msg);
    }
    return -1;
}

static int fail_oom(const perr_t *e, const char *field)
{
    return fail(e, field, "out of memory");
}

/* ------------------------------------------------------------------------ value readers */

/*
 * A JSON integer within [min, max]. Reals ("80.0") and strings ("80") are refused on
 * purpose: a config that only works by coercion is a typo waiting to matter.
 */
static int int_in_range(const json_t *v, json_int_t min, json_int_t max, json_int_t *out)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t n = json_integer_value(v);
    if (n < min || n > max)
        return -1;
    *out = n;
    return 0;
}

/* An int field; the message states the range so it also tells the expected type. */
static int read_int(const perr_t *e, const char *field, const json_t *v, int min, int max, int *out)
{
    json_int_t n;

    if (int_in_range(v, min, max, &n) < 0) {
        if (max == INT_MAX)
            return fail(e, field, "must be an integer >= %d", min);
        return fail(e, field, "must be an integer %d-%d", min, max);
    }
    *out = (int)n;
    return 0;
}

/* A duration: ms as an integer, or a string with a unit ("500ms", "30s", "5m", "2h"). */
static int read_duration(const perr_t *e, const char *field, const json_t *v, unsigned *out)
{
    if (netd_duration_json(v, out) == 0)
        return 0;
    return fail(e, field,
                "must be a duration: ms as an integer >= 0, or a string such as \"500ms\", "
                "\"30s\", \"5m\", \"2h\"");
}

/* Byte counts may exceed an int (a 4 GiB buffer cap is legitimate), so they get size_t. */
static int read_size(const perr_t *e, const char *field, const json_t *v, size_t *out)
{
    json_int_t max = (uintmax_t)SIZE_MAX < (uintmax_t)JSON_INT_MAX ? (json_int_t)SIZE_MAX
                                                                   : JSON_INT_MAX;
    json_int_t n;

    if (int_in_range(v, 1, max, &n) < 0)
        return fail(e, field, "must be an integer >= 1 (bytes)");
    *out = (size_t)n;
    return 0;
}

static int read_bool(const perr_t *e, const char *field, const json_t *v, bool *out)
{
    if (!json_is_boolean(v))
        return fail(e, field, "must be true or false");
    *out = json_is_true(v);
    return 0;
}

/* A copy of a string field; `nonempty` refuses "". */
static int read_string(const perr_t *e, const char *field, const json_t *v, bool nonempty,
                       char **out)
{
    if (!json_is_string(v))
        return fail(e, field, nonempty ? "must be a non-empty string" : "must be a string");
    if (nonempty && json_string_length(v) == 0)
        return fail(e, field, "must be a non-empty string");
    char *s = strdup(json_string_value(v));
    if (!s)
        return fail_oom(e, field);
    *out = s;
    return 0;
}

/* Stores a new string in *slot, freeing the one it held (NULL before a first store). */
static void set_string(char **slot, char *value)
{
    free(*slot);
    *slot = value;
}

/*
 * Refuses any key not in `known` (NULL-terminated). `base` goes between the prefix and the
 * key ("handler."). With skip_envelope a request's "id" and "cmd" pass.
 */
static int check_keys(const perr_t *e, const char *base, const json_t *obj,
                      const char *const *known, bool skip_envelope)
{
    const char *key;
    json_t *value;

    json_object_foreach((json_t *)obj, key, value) {
        bool ok = skip_envelope && (!strcmp(key, "id") || !strcmp(key, "cmd"));
        for (const char *const *k = known; !ok && *k; k++)
            ok = !strcmp(key, *k);
        if (!ok) {
            char field[256];
            snprintf(field, sizeof(field), "%s%s", base, key);
            return fail(e, field, "unknown key");
        }
    }
    return 0;
}

/* "0600", "750", "0": octal digits only, at most 07777. */
static int read_mode(const perr_t *e, const char *field, const json_t *v, unsigned *out)
{
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    unsigned mode = 0;

    for (const char *p = s; *p && mode <= MAX_MODE; p++) {
        if (*p < '0' || *p > '7') {
            mode = MAX_MODE + 1;
            break;
        }
        mode = mode * 8 + (unsigned)(*p - '0');
    }
    if (!*s || mode > MAX_MODE)
        return fail(e, field, "must be a string of octal digits up to \"7777\" (\"0600\")");
    *out = mode;
    return 0;
}

/*
 * A user (or group) by name, or by number when all digits. It must exist now: a misspelt
 * name should stop netd, not lock operators out later. Returns 0, or -1 with the message.
 */
static int lookup_id(const perr_t *e, const char *field, bool is_user, const char *name,
                     unsigned *id)
{
    const char *what = is_user ? "user" : "group";
    if (!name || !*name)
        return fail(e, field, "must be a non-empty string");
    if (name[0] >= '0' && name[0] <= '9') {
        char *end;
        errno = 0;
        unsigned long n = strtoul(name, &end, 10);
        if (*end || errno || n >= (unsigned long)(unsigned)-1)
            return fail(e, field, "\"%s\" is neither a %s name nor a number", name, what);
        *id = (unsigned)n;
        return 0;
    }
    long hint = sysconf(is_user ? _SC_GETPW_R_SIZE_MAX : _SC_GETGR_R_SIZE_MAX);
    size_t size = hint > 0 ? (size_t)hint : 1024;
    bool found = false;
    int rc;

    for (;;) {
        char *buf = malloc(size);
        if (!buf)
            return fail_oom(e, field);
        if (is_user) {
            struct passwd pw, *res = NULL;
            rc = getpwnam_r(name, &pw, buf, size, &res);
            if (rc == 0 && res) {
                *id = (unsigned)pw.pw_uid;
                found = true;
            }
        } else {
            struct group gr, *res = NULL;
            rc = getgrnam_r(name, &gr, buf, size, &res);
            if (rc == 0 && res) {
                *id = (unsigned)gr.gr_gid;
                found = true;
            }
        }
        free(buf);
        if (rc != ERANGE || size >= (size_t)1024 * 1024)
            break;
        size *= 2;
    }
    /* Some libcs report "not found" as one of these instead of rc 0 with no result. */
    if ((rc == 0 && !found) || rc == ENOENT || rc == ESRCH || rc == EBADF || rc == EPERM)
        return fail(e, field, "no such %s \"%s\"", what, name);
    if (rc != 0)
        return fail(e, field, "cannot look up \"%s\": %s", name, strerror(rc));
    return 0;
}

static int read_group(const perr_t *e, const json_t *v, netd_config_t *cfg)
{
    if (read_string(e, "control.group", v, true, &cfg->control_group) < 0 ||
        lookup_id(e, "control.group", false, cfg->control_group, &cfg->control_gid) < 0)
        return -1;
    cfg->has_control_gid = true;
    return 0;
}

/* ------------------------------------------------------------------------ hosts and paths */

/*
 * Host name syntax (RFC 1123 labels, '_' tolerated as resolvers do); no lookup here. A
 * label neither starts nor ends with '-', and the last label is not all digits (RFC 3696
 * 2): "999.1.1.1" is a mistyped address, not a name to look up.
 */
static bool is_host_name(const char *s)
{
    size_t total = strlen(s), label = 0;
    bool digits_only = true;

    if (total > 0 && s[total - 1] == '.')
        total--; /* a fully qualified "example.com." */
    if (total == 0 || total > 253)
        return false;
    for (size_t i = 0; i < total; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
            digits_only = true;
            continue;
        }
        bool digit = c >= '0' && c <= '9';
        bool ok = digit || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
        if (!ok || ++label > 63 || (c == '-' && label == 1))
            return false;
        digits_only = digits_only && digit;
    }
    return s[total - 1] != '-' && !digits_only;
}

/* IP literals follow the library's own rule (nd_is_ip), so what passes here also binds. */
static int read_host(const perr_t *e, const char *field, const json_t *v, char **out)
{
    if (!json_is_string(v))
        return fail(e, field, "must be a string (an IP address or a host name)");
    const char *s = json_string_value(v);
    if (!nd_is_ip(s) && !is_host_name(s))
        return fail(e, field, "\"%s\" is not an IP address or a host name", s);
    char *copy = strdup(s);
    if (!copy)
        return fail_oom(e, field);
    set_string(out, copy);
    return 0;
}

/* Collapses "//", "/./" and "dir/.." of an absolute path in place, so operators see
 * /srv/run/x.sock rather than /srv/conf/../run/x.sock. Symlinks are left alone. */
static void normalize_abs(char *p)
{
    char *out = p; /* p[0] is '/' */
    const char *in = p;
    while (*in) {
        while (*in == '/')
            in++;
        const char *seg = in;
        while (*in && *in != '/')
            in++;
        size_t n = (size_t)(in - seg);
        if (n == 0 || (n == 1 && seg[0] == '.'))
            continue;
        if (n == 2 && seg[0] == '.' && seg[1] == '.') {
            while (out > p && *--out != '/')
                ;
            continue;
        }
        *out++ = '/';
        memmove(out, seg, n);
        out += n;
    }
    if (out == p)
        *out++ = '/';
    *out = '\0';
}

/* base_dir + "/" + path for a relative path; the path itself when absolute or no base. */
static char *resolve_path(const char *base_dir, const char *path)
{
    if (path[0] == '/' || !base_dir)
        return strdup(path);
    size_t nb = strlen(base_dir);
    bool slash = nb > 0 && base_dir[nb - 1] == '/';
    char *out = malloc(nb + 1 + strlen(path) + 1);
    if (out) {
        sprintf(out, "%s%s%s", base_dir, slash ? "" : "/", path);
        if (out[0] == '/')
            normalize_abs(out);
    }
    return out;
}

/* A unix socket path: non-empty, resolved, and short enough for sun_path once resolved. */
static int read_unix_path(const perr_t *e, const char *field, const json_t *v, const char *base_dir,
                          char **out)
{
    if (!json_is_string(v) || json_string_length(v) == 0)
        return fail(e, field, "must be a non-empty string");
    char *path = resolve_path(base_dir, json_string_value(v));
    if (!path)
        return fail_oom(e, field);
    size_t n = strlen(path);
    if (n > MAX_UNIX_PATH) {
        free(path);
        return fail(e, field,
                    "too long: %zu bytes once resolved, a unix socket path has at most %zu", n,
                    MAX_UNIX_PATH);
    }
    set_string(out, path);
    return 0;
}

/* ------------------------------------------------------------------------ handlers */

/* What a handler's parse reads with: its JSON object, where relative paths start, and
 * where errors go ("handler." is put in front of its keys). */
struct netd_handler_reader {
    const perr_t *e;
    const json_t *obj;
    const char *base_dir;
    const char *handler; /* its name, for "required for banner" */
};

static void field_of(char *out, size_t n, const char *key)
{
    snprintf(out, n, "handler.%s", key);
}

bool netd_hr_has(const netd_handler_reader_t *r, const char *key)
{
    return json_object_get(r->obj, key) != NULL;
}

int netd_hr_string(const netd_handler_reader_t *r, const char *key, bool required, char **out)
{
    char field[128];
    field_of(field, sizeof(field), key);
    const json_t *v = json_object_get(r->obj, key);
    if (!v)
        return required ? fail(r->e, field, "required for %s", r->handler) : 0;
    return read_string(r->e, field, v, false, out);
}

int netd_hr_port(const netd_handler_reader_t *r, const char *key, int *out)
{
    char field[128];
    field_of(field, sizeof(field), key);
    return read_int(r->e, field, json_object_get(r->obj, key), 0, 65535, out);
}

int netd_hr_host(const netd_handler_reader_t *r, const char *key, char **out)
{
    char field[128];
    field_of(field, sizeof(field), key);
    return read_host(r->e, field, json_object_get(r->obj, key), out);
}

int netd_hr_unix_path(const netd_handler_reader_t *r, const char *key, char **out)
{
    char field[128];
    field_of(field, sizeof(field), key);
    return read_unix_path(r->e, field, json_object_get(r->obj, key), r->base_dir, out);
}

int netd_hr_fail(const netd_handler_reader_t *r, const char *key, const char *fmt, ...)
{
    char field[128], msg[512];
    field_of(field, sizeof(field), key);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return fail(r->e, field, "%s", msg);
}

static void handler_init(netd_handler_cfg_t *h)
{
    memset(h, 0, sizeof(*h));
    h->ops = &netd_handler_echo;
    h->port = -1;
}

static void handler_free(netd_handler_cfg_t *h)
{
    free(h->greeting);
    free(h->text);
    free(h->host);
    free(h->path);
    handler_init(h);
}

/* "(echo, discard, banner, proxy)", from the table. */
static const char *handler_choices(void)
{
    static char list[256];
    if (!list[0]) {
        size_t n = 0;
        for (int i = 0; netd_handlers[i] && n < sizeof(list); i++)
            n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s", i ? ", " : "(",
                                  netd_handlers[i]->name);
        if (n < sizeof(list))
            snprintf(list + n, sizeof(list) - n, ")");
    }
    return list;
}

/* Parses into h (already initialised); on error h may hold strings: the caller frees them. */
static int parse_handler(const perr_t *e, const json_t *obj, const char *base_dir,
                         netd_handler_cfg_t *h)
{
    if (!json_is_object(obj))
        return fail(e, "handler", "must be an object ({\"type\": \"echo\"} ...)");
    const json_t *type = json_object_get(obj, "type");
    if (!type)
        return fail(e, "handler.type", "required %s", handler_choices());
    if (!json_is_string(type))
        return fail(e, "handler.type", "must be a string %s", handler_choices());
    h->ops = netd_handler_find(json_string_value(type));
    if (!h->ops)
        return fail(e, "handler.type", "unknown handler \"%s\" %s", json_string_value(type),
                    handler_choices());
    const char *keys[32] = {"type"};
    size_t n = 1;
    for (const char *const *k = h->ops->keys; *k && n + 1 < sizeof(keys) / sizeof(keys[0]); k++)
        keys[n++] = *k;
    keys[n] = NULL;
    if (check_keys(e, "handler.", obj, keys, false) < 0)
        return -1;
    netd_handler_reader_t r = {e, obj, base_dir, h->ops->name};
    return h->ops->parse(&r, h);
}

json_t *netd_handler_describe(const netd_handler_cfg_t *h)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "type", json_string(h->ops->name));
    h->ops->describe(h, o);
    return o;
}

/* The keys of a server entry are the arguments of `listen` (protocol.c), but its "id". */
static const char *const *listen_keys(void)
{
    static const char *keys[64];
    if (!keys[0]) {
        size_t n = 0;
        for (const netd_arg_t *a = netd_command_find("listen")->args; a->name; a++)
            if (strcmp(a->name, "id") != 0 && n + 1 < sizeof(keys) / sizeof(keys[0]))
                keys[n++] = a->name;
        keys[n] = NULL;
    }
    return keys;
}

static void spec_init(netd_listen_spec_t *s)
{
    memset(s, 0, sizeof(*s));
    s->port = -1;
    s->fd = -1;
    s->backlog = DEFAULT_BACKLOG;
    handler_init(&s->handler);
    s->no_delay = true;
    s->keep_alive_ms = -1;
    s->balance = ND_BALANCE_LEASTCONN;
    s->sock_mode = -1;
    s->sock_uid = (uid_t)-1;
    s->sock_gid = (gid_t)-1;
}

void netd_listen_spec_free(netd_listen_spec_t *spec)
{
    if (!spec)
        return;
    free(spec->name);
    free(spec->host);
    free(spec->path);
    free(spec->fd_name);
    free(spec->sock_user);
    free(spec->sock_group);
    handler_free(&spec->handler);
    json_decref(spec->source);
    spec_init(spec);
}

/* A LISTEN_FDNAMES name: systemd separates names with ':' and caps them at 255 bytes. */
static int read_fd(const perr_t *e, const json_t *v, netd_listen_spec_t *s)
{
    if (json_is_string(v)) {
        const char *name = json_string_value(v);
        size_t n = strlen(name);
        if (n == 0 || n > 255 || strchr(name, ':'))
            return fail(e, "fd", "a LISTEN_FDNAMES name must be 1-255 bytes without ':'");
        s->fd_name = strdup(name);
        return s->fd_name ? 0 : fail_oom(e, "fd");
    }
    json_int_t n;
    if (int_in_range(v, 0, INT_MAX, &n) < 0)
        return fail(e, "fd", "must be an integer >= 0 or a LISTEN_FDNAMES name (string)");
    s->fd = (int)n;
    return 0;
}

/* Exactly one of port (with optional host), path or fd. */
static int parse_address(const perr_t *e, const json_t *obj, const char *base_dir,
                         netd_listen_spec_t *s)
{
    const json_t *port = json_object_get(obj, "port");
    const json_t *host = json_object_get(obj, "host");
    const json_t *path = json_object_get(obj, "path");
    const json_t *fd = json_object_get(obj, "fd");
    int given = !!port + !!path + !!fd;

    if (given == 0) {
        if (host)
            return fail(e, "host", "needs port");
        return fail(e, "port", "missing: give exactly one of port, path or fd");
    }
    if (given > 1)
        return fail(e, path && port ? "path" : "fd",
                    "not allowed with %s: give exactly one of port, path or fd",
                    port ? "port" : "path");
    if (host && !port)
        return fail(e, "host", "needs port (a host goes with a TCP port only)");
    if (port) {
        if (read_int(e, "port", port, 0, 65535, &s->port) < 0)
            return -1;
        return host ? read_host(e, "host", host, &s->host) : 0;
    }
    if (path)
        return read_unix_path(e, "path", path, base_dir, &s->path);
    return read_fd(e, fd, s);
}

static const struct {
    const char *name;
    nd_balance_t value;
} balance_names[] = {{"leastconn", ND_BALANCE_LEASTCONN},
                     {"roundrobin", ND_BALANCE_ROUNDROBIN},
                     {"reuseport", ND_BALANCE_REUSEPORT}};

static const char *balance_name(nd_balance_t b)
{
    for (size_t i = 0; i < sizeof(balance_names) / sizeof(balance_names[0]); i++)
        if (balance_names[i].value == b)
            return balance_names[i].name;
    return "leastconn";
}

static int read_balance(const perr_t *e, const json_t *v, netd_listen_spec_t *s)
{
    const char *name = json_is_string(v) ? json_string_value(v) : NULL;
    for (size_t i = 0; name && i < sizeof(balance_names) / sizeof(balance_names[0]); i++) {
        if (!strcmp(name, balance_names[i].name)) {
            s->balance = balance_names[i].value;
            /* Each worker binds its own SO_REUSEPORT listener: that needs a port to bind. */
            if (s->balance == ND_BALANCE_REUSEPORT && s->port < 0)
                return fail(e, "balance", "reuseport needs a TCP port");
            return 0;
        }
    }
    return fail(e, "balance", "must be \"leastconn\", \"roundrobin\" or \"reuseport\"");
}

/* keepAlive: ms, or false. true is refused: it would leave the interval unsaid. */
static int read_keep_alive(const perr_t *e, const json_t *v, netd_listen_spec_t *s)
{
    if (json_is_false(v)) {
        s->keep_alive_ms = -1;
        return 0;
    }
    if (json_is_true(v))
        return fail(e, "keepAlive", "true is not accepted: give the initial delay in ms, or false");
    unsigned ms = 0;
    if (read_duration(e, "keepAlive", v, &ms) < 0)
        return fail(e, "keepAlive",
                    "must be a duration (ms, or a string such as \"30s\") or false");
    s->keep_alive_ms = (int)ms;
    return 0;
}

/* maxConnections: null or N; 0 and null both mean no limit, as in Node. */
static int read_max_connections(const perr_t *e, const json_t *v, netd_listen_spec_t *s)
{
    json_int_t n;

    if (json_is_null(v)) {
        s->max_connections = 0;
        return 0;
    }
    if (int_in_range(v, 0, INT_MAX, &n) < 0)
        return fail(e, "maxConnections", "must be null or an integer >= 0");
    s->max_connections = (int)n;
    return 0;
}

/* The optional flags and numbers of a listen, each checked only when present. */
static int parse_options(const perr_t *e, const json_t *obj, netd_listen_spec_t *s)
{
    const json_t *v;

    if ((v = json_object_get(obj, "backlog")) && read_int(e, "backlog", v, 1, 65535, &s->backlog))
        return -1;
    if ((v = json_object_get(obj, "allowHalfOpen")) &&
        read_bool(e, "allowHalfOpen", v, &s->allow_half_open))
        return -1;
    if ((v = json_object_get(obj, "maxConnections")) && read_max_connections(e, v, s))
        return -1;
    if ((v = json_object_get(obj, "timeout")) && read_duration(e, "timeout", v, &s->timeout_ms))
        return -1;
    if ((v = json_object_get(obj, "noDelay")) && read_bool(e, "noDelay", v, &s->no_delay))
        return -1;
    if ((v = json_object_get(obj, "keepAlive")) && read_keep_alive(e, v, s))
        return -1;
    if ((v = json_object_get(obj, "balance")) && read_balance(e, v, s))
        return -1;
    if ((v = json_object_get(obj, "accessLog")) && read_bool(e, "accessLog", v, &s->access_log))
        return -1;
    return 0;
}

/* The socket file of a path server: mode, owner and group (HAProxy's bind options). */
static int parse_sock_file(const perr_t *e, const json_t *obj, netd_listen_spec_t *s)
{
    static const char *const keys[] = {"mode", "user", "group"};
    const json_t *v;

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (json_object_get(obj, keys[i]) && !s->path)
            return fail(e, keys[i], "only with path (it sets the socket file's %s)", keys[i]);
    if ((v = json_object_get(obj, "mode"))) {
        unsigned mode;
        if (read_mode(e, "mode", v, &mode) < 0)
            return -1;
        s->sock_mode = (int)mode;
    }
    unsigned id;
    if ((v = json_object_get(obj, "user"))) {
        if (read_string(e, "user", v, true, &s->sock_user) < 0 ||
            lookup_id(e, "user", true, s->sock_user, &id) < 0)
            return -1;
        s->sock_uid = (uid_t)id;
    }
    if ((v = json_object_get(obj, "group"))) {
        if (read_string(e, "group", v, true, &s->sock_group) < 0 ||
            lookup_id(e, "group", false, s->sock_group, &id) < 0)
            return -1;
        s->sock_gid = (gid_t)id;
    }
    return 0;
}

/* "127.0.0.1:8124", "[::1]:8124" (brackets keep the port readable), the path, "fd:3". */
static char *default_name(const netd_listen_spec_t *s)
{
    char buf[512];

    if (s->path)
        return strdup(s->path);
    if (s->fd_name)
        return strdup(s->fd_name);
    if (s->port < 0)
        snprintf(buf, sizeof(buf), "fd:%d", s->fd);
    else if (s->host && strchr(s->host, ':'))
        snprintf(buf, sizeof(buf), "[%s]:%d", s->host, s->port);
    else
        snprintf(buf, sizeof(buf), "%s:%d", s->host ? s->host : "0.0.0.0", s->port);
    return strdup(buf);
}

static int parse_name(const perr_t *e, const json_t *obj, netd_listen_spec_t *s)
{
    const json_t *v = json_object_get(obj, "name");

    if (v) {
        s->name_given = true;
        return read_string(e, "name", v, true, &s->name);
    }
    s->name = default_name(s);
    return s->name ? 0 : fail_oom(e, "name");
}

/* The object as given, minus the request envelope: what reload compares and reports. */
static int keep_source(const perr_t *e, const json_t *obj, netd_listen_spec_t *s)
{
    s->source = json_deep_copy(obj);
    if (!s->source)
        return fail_oom(e, "");
    json_object_del(s->source, "id");
    json_object_del(s->source, "cmd");
    return 0;
}

static int parse_spec(const perr_t *e, const json_t *obj, const char *base_dir, bool skip_envelope,
                      netd_listen_spec_t *s)
{
    const json_t *handler;

    if (!json_is_object(obj))
        return fail(e, "", "must be an object (the arguments of listen)");
    if (check_keys(e, "", obj, listen_keys(), skip_envelope) < 0)
        return -1;
    if (parse_address(e, obj, base_dir, s) < 0 || parse_options(e, obj, s) < 0 ||
        parse_sock_file(e, obj, s) < 0)
        return -1;
    if ((handler = json_object_get(obj, "handler")) &&
        parse_handler(e, handler, base_dir, &s->handler) < 0)
        return -1;
    /* A proxy passes half-closes through (CONTROL.md): without allowHalfOpen the client's
     * FIN would end its side before the upstream's reply came back. */
    if (s->handler.ops->half_open && !json_object_get(obj, "allowHalfOpen"))
        s->allow_half_open = true;
    if (parse_name(e, obj, s) < 0)
        return -1;
    return keep_source(e, obj, s);
}

int netd_listen_spec_parse(const json_t *obj, const char *base_dir, const char *field_prefix,
                           bool skip_envelope, netd_listen_spec_t *out, char *err, size_t errlen)
{
    perr_t e = {err, errlen, field_prefix ? field_prefix : ""};

    spec_init(out);
    if (parse_spec(&e, obj, base_dir, skip_envelope, out) < 0) {
        /* Leave nothing half-built: *out is an empty spec, safe to free or to drop. */
        netd_listen_spec_free(out);
        return -1;
    }
    return 0;
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

static bool handler_equal(const netd_handler_cfg_t *a, const netd_handler_cfg_t *b)
{
    return a->ops == b->ops && a->port == b->port && str_eq(a->greeting, b->greeting) &&
           str_eq(a->text, b->text) && str_eq(a->host, b->host) && str_eq(a->path, b->path);
}

/* Field by field on the parsed values, so key order, spacing and spelled-out defaults
 * ("noDelay": true) in the file do not make an unchanged server look changed. */
int netd_listen_spec_equal(const netd_listen_spec_t *a, const netd_listen_spec_t *b)
{
    return str_eq(a->name, b->name) && a->port == b->port && str_eq(a->host, b->host) &&
           str_eq(a->path, b->path) && a->fd == b->fd && str_eq(a->fd_name, b->fd_name) &&
           a->backlog == b->backlog && handler_equal(&a->handler, &b->handler) &&
           a->allow_half_open == b->allow_half_open && a->max_connections == b->max_connections &&
           a->timeout_ms == b->timeout_ms && a->no_delay == b->no_delay &&
           a->keep_alive_ms == b->keep_alive_ms && a->balance == b->balance &&
           a->sock_mode == b->sock_mode && a->sock_uid == b->sock_uid &&
           a->sock_gid == b->sock_gid && a->access_log == b->access_log;
}

static int dup_str(char **out, const char *in)
{
    *out = in ? strdup(in) : NULL;
    return in && !*out ? -ENOMEM : 0;
}

int netd_listen_spec_dup(const netd_listen_spec_t *src, netd_listen_spec_t *out)
{
    *out = *src;
    out->name = out->host = out->path = out->fd_name = out->sock_user = out->sock_group = NULL;
    out->handler.greeting = out->handler.text = out->handler.host = out->handler.path = NULL;
    out->source = NULL;
    const netd_handler_cfg_t *h = &src->handler;
    if (dup_str(&out->name, src->name) || dup_str(&out->host, src->host) ||
        dup_str(&out->path, src->path) || dup_str(&out->fd_name, src->fd_name) ||
        dup_str(&out->sock_user, src->sock_user) || dup_str(&out->sock_group, src->sock_group) ||
        dup_str(&out->handler.greeting, h->greeting) || dup_str(&out->handler.text, h->text) ||
        dup_str(&out->handler.host, h->host) || dup_str(&out->handler.path, h->path) ||
        (src->source && !(out->source = json_deep_copy(src->source)))) {
        netd_listen_spec_free(out);
        return -ENOMEM;
    }
    return 0;
}

static json_t *mode_json(unsigned mode)
{
    char text[16];
    snprintf(text, sizeof(text), "%04o", mode & 07777);
    return json_string(text);
}

json_t *netd_listen_spec_json(const netd_listen_spec_t *s)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "name", json_string(s->name));
    if (s->path) {
        json_object_set_new(o, "path", json_string(s->path));
        if (s->sock_mode >= 0)
            json_object_set_new(o, "mode", mode_json((unsigned)s->sock_mode));
        if (s->sock_user)
            json_object_set_new(o, "user", json_string(s->sock_user));
        if (s->sock_group)
            json_object_set_new(o, "group", json_string(s->sock_group));
    } else if (s->fd_name) {
        json_object_set_new(o, "fd", json_string(s->fd_name));
    } else if (s->port < 0) {
        json_object_set_new(o, "fd", json_integer(s->fd));
    } else {
        json_object_set_new(o, "port", json_integer(s->port));
        json_object_set_new(o, "host", json_string(s->host ? s->host : "0.0.0.0"));
    }
    json_object_set_new(o, "backlog", json_integer(s->backlog));
    json_object_set_new(o, "handler", netd_handler_describe(&s->handler));
    json_object_set_new(o, "allowHalfOpen", json_boolean(s->allow_half_open));
    json_object_set_new(o, "maxConnections",
                        s->max_connections > 0 ? json_integer(s->max_connections) : json_null());
    json_object_set_new(o, "timeout", json_integer(s->timeout_ms));
    json_object_set_new(o, "noDelay", json_boolean(s->no_delay));
    json_object_set_new(o, "keepAlive",
                        s->keep_alive_ms >= 0 ? json_integer(s->keep_alive_ms) : json_false());
    json_object_set_new(o, "balance", json_string(balance_name(s->balance)));
    json_object_set_new(o, "accessLog", json_boolean(s->access_log));
    return o;
}

/* ------------------------------------------------------------------------ the config file */

static const char *const top_keys[] = {"threads", "shutdownTimeoutMs", "control",   "limits",
                                       "servers", "metrics",           "accessLog", NULL};
static const char *const control_keys[] = {"path",        "mode",       "group", "maxClients",
                                           "idleTimeout", "socketDirs", NULL};
static const char *const limits_keys[] = {"highWaterMark", "maxBufferedBytes", "stallMs", NULL};

void netd_config_default(netd_config_t *out)
{
    memset(out, 0, sizeof(*out));
    out->threads = 0;
    out->shutdown_timeout_ms = 30000;
    out->control_mode = 0600;
    out->control_max_clients = NETD_DEFAULT_MAX_CLIENTS;
    out->control_idle_timeout_ms = NETD_DEFAULT_IDLE_TIMEOUT_MS;
    out->high_water_mark = (size_t)1024 * 1024;
    out->max_buffered_bytes = (size_t)16 * 1024 * 1024;
    out->stall_ms = 30000;
    out->metrics_port = -1;
}

void netd_config_free(netd_config_t *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->nservers; i++)
        netd_listen_spec_free(&cfg->servers[i]);
    free(cfg->servers);
    free(cfg->control_path);
    free(cfg->control_group);
    for (size_t i = 0; i < cfg->nsocket_dirs; i++)
        free(cfg->socket_dirs[i]);
    free(cfg->socket_dirs);
    free(cfg->metrics_host);
    free(cfg->access_log);
    netd_config_default(cfg);
}

/* Where `listen {"path"}` from the control socket may create sockets: absolute
 * directories once resolved against the config file's directory. */
static int read_socket_dirs(const perr_t *e, const json_t *v, const char *base_dir,
                            netd_config_t *cfg)
{
    if (!json_is_array(v))
        return fail(e, "control.socketDirs", "must be an array of directories");
    size_t n = json_array_size(v);
    cfg->socket_dirs = calloc(n ? n : 1, sizeof(char *));
    if (!cfg->socket_dirs)
        return fail_oom(e, "control.socketDirs");
    for (size_t i = 0; i < n; i++) {
        const json_t *d = json_array_get(v, i);
        char field[64];
        snprintf(field, sizeof(field), "control.socketDirs[%zu]", i);
        if (!json_is_string(d) || json_string_length(d) == 0)
            return fail(e, field, "must be a non-empty string (a directory)");
        char *path = resolve_path(base_dir, json_string_value(d));
        if (!path)
            return fail_oom(e, field);
        cfg->socket_dirs[cfg->nsocket_dirs++] = path;
        if (path[0] != '/')
            return fail(e, field, "must be an absolute directory (or relative to the config file)");
    }
    return 0;
}

static int parse_control(const perr_t *e, const json_t *obj, const char *base_dir,
                         netd_config_t *cfg)
{
    const json_t *v;

    if (!json_is_object(obj))
        return fail(e, "control", "must be an object");
    if (check_keys(e, "control.", obj, control_keys, false) < 0)
        return -1;
    if ((v = json_object_get(obj, "path")) &&
        read_unix_path(e, "control.path", v, base_dir, &cfg->control_path) < 0)
        return -1;
    if ((v = json_object_get(obj, "mode")) &&
        read_mode(e, "control.mode", v, &cfg->control_mode) < 0)
        return -1;
    /* null: none, as --check -v prints the default */
    if ((v = json_object_get(obj, "group")) && !json_is_null(v) && read_group(e, v, cfg) < 0)
        return -1;
    if ((v = json_object_get(obj, "maxClients")) &&
        read_int(e, "control.maxClients", v, 1, INT_MAX, &cfg->control_max_clients) < 0)
        return -1;
    if ((v = json_object_get(obj, "idleTimeout")) &&
        read_duration(e, "control.idleTimeout", v, &cfg->control_idle_timeout_ms) < 0)
        return -1;
    if ((v = json_object_get(obj, "socketDirs")) && read_socket_dirs(e, v, base_dir, cfg) < 0)
        return -1;
    return 0;
}

static int parse_limits(const perr_t *e, const json_t *obj, netd_config_t *cfg)
{
    const json_t *v;

    if (!json_is_object(obj))
        return fail(e, "limits", "must be an object");
    if (check_keys(e, "limits.", obj, limits_keys, false) < 0)
        return -1;
    if ((v = json_object_get(obj, "highWaterMark")) &&
        read_size(e, "limits.highWaterMark", v, &cfg->high_water_mark) < 0)
        return -1;
    if ((v = json_object_get(obj, "maxBufferedBytes")) &&
        read_size(e, "limits.maxBufferedBytes", v, &cfg->max_buffered_bytes) < 0)
        return -1;
    if ((v = json_object_get(obj, "stallMs")) &&
        read_duration(e, "limits.stallMs", v, &cfg->stall_ms) < 0)
        return -1;
    return 0;
}

/* "metrics": {"host", "port"}: the HTTP endpoint (metrics.c); a port alone serves on
 * loopback, so that turning metrics on never exposes them further by accident. */
static int parse_metrics(const perr_t *e, const json_t *obj, netd_config_t *cfg)
{
    static const char *const keys[] = {"host", "port", NULL};
    const json_t *v;

    if (!json_is_object(obj))
        return fail(e, "metrics", "must be an object ({\"host\": \"127.0.0.1\", \"port\": 9108})");
    if (check_keys(e, "metrics.", obj, keys, false) < 0)
        return -1;
    if (!(v = json_object_get(obj, "port")))
        return fail(e, "metrics.port", "required (0-65535)");
    if (read_int(e, "metrics.port", v, 0, 65535, &cfg->metrics_port) < 0)
        return -1;
    if ((v = json_object_get(obj, "host")))
        return read_host(e, "metrics.host", v, &cfg->metrics_host);
    cfg->metrics_host = strdup("127.0.0.1");
    return cfg->metrics_host ? 0 : fail_oom(e, "metrics.host");
}

/* "accessLog": a file path (resolved against the config's directory), or null: stderr. */
static int read_access_log(const perr_t *e, const json_t *v, const char *base_dir,
                           netd_config_t *cfg)
{
    if (json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0)
        return fail(e, "accessLog", "must be a file path (a non-empty string) or null (stderr)");
    char *path = resolve_path(base_dir, json_string_value(v));
    if (!path)
        return fail_oom(e, "accessLog");
    set_string(&cfg->access_log, path);
    return 0;
}

/* Names are what reload matches on, so two entries may not share one. */
static int check_unique_name(const perr_t *e, const netd_config_t *cfg, size_t i)
{
    for (size_t j = 0; j < i; j++) {
        if (!strcmp(cfg->servers[j].name, cfg->servers[i].name)) {
            char field[64];
            snprintf(field, sizeof(field), "servers[%zu].name", i);
            return fail(e, field, "duplicate name \"%s\" (also servers[%zu])", cfg->servers[i].name,
                        j);
        }
    }
    return 0;
}

/* Wildcards cover every address of their family ("::" both, as a dual-stack bind would). */
static bool hosts_overlap(const char *a, const char *b)
{
    a = a ? a : "0.0.0.0";
    b = b ? b : "0.0.0.0";
    if (!strcmp(a, b) || !strcmp(a, "::") || !strcmp(b, "::"))
        return true;
    if (!strcmp(a, "0.0.0.0"))
        return !strchr(b, ':');
    if (!strcmp(b, "0.0.0.0"))
        return !strchr(a, ':');
    return false;
}

/* Two entries that would bind one address (or serve one inherited descriptor): the second
 * would fail at startup with EADDRINUSE, so say it now, naming both. */
static int check_unique_address(const perr_t *e, const netd_config_t *cfg, size_t i)
{
    const netd_listen_spec_t *b = &cfg->servers[i];
    for (size_t j = 0; j < i; j++) {
        const netd_listen_spec_t *a = &cfg->servers[j];
        const char *field = NULL;
        if (a->port > 0 && b->port == a->port && hosts_overlap(a->host, b->host))
            field = "port";
        else if (a->path && b->path && !strcmp(a->path, b->path))
            field = "path";
        else if ((a->fd_name && b->fd_name && !strcmp(a->fd_name, b->fd_name)) ||
                 (a->fd >= 0 && a->fd == b->fd))
            field = "fd";
        if (field) {
            char name[64];
            snprintf(name, sizeof(name), "servers[%zu].%s", i, field);
            return fail(e, name, "the same address as servers[%zu] (\"%s\")", j, a->name);
        }
    }
    return 0;
}

static int parse_servers(const perr_t *e, const json_t *arr, const char *base_dir,
                         netd_config_t *cfg)
{
    if (!json_is_array(arr))
        return fail(e, "servers", "must be an array of listen objects");
    size_t n = json_array_size(arr);
    if (n == 0)
        return 0;
    cfg->servers = calloc(n, sizeof(*cfg->servers));
    if (!cfg->servers)
        return fail_oom(e, "servers");

    for (size_t i = 0; i < n; i++) {
        char prefix[64];
        snprintf(prefix, sizeof(prefix), "servers[%zu].", i);
        if (netd_listen_spec_parse(json_array_get(arr, i), base_dir, prefix, false,
                                   &cfg->servers[i], e->buf, e->len) < 0)
            return -1;
        cfg->nservers = i + 1;
        if (check_unique_name(e, cfg, i) < 0 || check_unique_address(e, cfg, i) < 0)
            return -1;
    }
    return 0;
}

static int parse_config(const perr_t *e, const json_t *root, const char *base_dir,
                        netd_config_t *cfg)
{
    const json_t *v;

    if (!json_is_object(root))
        return fail(e, "", "the top level must be an object");
    if (check_keys(e, "", root, top_keys, false) < 0)
        return -1;
    if ((v = json_object_get(root, "threads")) &&
        read_int(e, "threads", v, 0, MAX_THREADS, &cfg->threads) < 0)
        return -1;
    if ((v = json_object_get(root, "shutdownTimeoutMs")) &&
        read_duration(e, "shutdownTimeoutMs", v, &cfg->shutdown_timeout_ms) < 0)
        return -1;
    if ((v = json_object_get(root, "control")) && parse_control(e, v, base_dir, cfg) < 0)
        return -1;
    if ((v = json_object_get(root, "limits")) && parse_limits(e, v, cfg) < 0)
        return -1;
    if ((v = json_object_get(root, "servers")) && parse_servers(e, v, base_dir, cfg) < 0)
        return -1;
    /* null: off, as --check -v prints the default */
    if ((v = json_object_get(root, "metrics")) && !json_is_null(v) && parse_metrics(e, v, cfg) < 0)
        return -1;
    if ((v = json_object_get(root, "accessLog")) && read_access_log(e, v, base_dir, cfg) < 0)
        return -1;
    return 0;
}

json_t *netd_config_json(const netd_config_t *cfg, const char *control_path)
{
    json_t *dirs = json_array(), *servers = json_array();
    for (size_t i = 0; i < cfg->nsocket_dirs; i++)
        json_array_append_new(dirs, json_string(cfg->socket_dirs[i]));
    if (cfg->nsocket_dirs == 0 && control_path) {
        char *copy = strdup(control_path);
        if (copy)
            json_array_append_new(dirs, json_string(dirname(copy)));
        free(copy);
    }
    for (size_t i = 0; i < cfg->nservers; i++)
        json_array_append_new(servers, netd_listen_spec_json(&cfg->servers[i]));
    json_t *control = json_pack("{s:s?, s:o, s:s?, s:i, s:I, s:o}", "path", control_path, "mode",
                                mode_json(cfg->control_mode), "group", cfg->control_group,
                                "maxClients", cfg->control_max_clients, "idleTimeout",
                                (json_int_t)cfg->control_idle_timeout_ms, "socketDirs", dirs);
    json_t *metrics = cfg->metrics_port >= 0 ? json_pack("{s:s?, s:i}", "host", cfg->metrics_host,
                                                         "port", cfg->metrics_port)
                                             : json_null();
    return json_pack("{s:i, s:I, s:o, s:{s:I, s:I, s:I}, s:o, s:o, s:s?}", "threads", cfg->threads,
                     "shutdownTimeoutMs", (json_int_t)cfg->shutdown_timeout_ms, "control", control,
                     "limits", "highWaterMark", (json_int_t)cfg->high_water_mark,
                     "maxBufferedBytes", (json_int_t)cfg->max_buffered_bytes, "stallMs",
                     (json_int_t)cfg->stall_ms, "servers", servers, "metrics", metrics, "accessLog",
                     cfg->access_log);
}

/* The absolute directory of the file: what its relative paths mean, whatever the cwd. */
static char *config_dir(const char *file)
{
    char *copy = strdup(file);
    if (!copy)
        return NULL;
    char *dir = realpath(dirname(copy), NULL);
    free(copy);
    return dir;
}

int netd_config_load(const char *file, netd_config_t *out, char *err, size_t errlen)
{
    char msg[1024] = "";
    perr_t e = {msg, sizeof(msg), ""};
    json_error_t jerr;
    netd_config_t cfg;
    int rc = -1;

    netd_config_default(out);
    netd_config_default(&cfg);

    json_t *root = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (jerr.line > 0)
            snprintf(err, errlen, "%s:%d:%d: %s", file, jerr.line, jerr.column, jerr.text);
        else
            snprintf(err, errlen, "%s: %s", file, jerr.text);
        return -1;
    }

    char *base_dir = config_dir(file);
    if (!base_dir)
        fail(&e, "", "cannot resolve the file's directory: %s", strerror(errno));
    else
        rc = parse_config(&e, root, base_dir, &cfg);
    free(base_dir);
    json_decref(root);

    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", file, msg);
        netd_config_free(&cfg);
        return -1;
    }
    *out = cfg;
    return 0;
}
