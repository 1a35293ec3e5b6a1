/* SPDX-License-Identifier: MIT */
/*
 * The built-in connection handlers (echo, discard, banner, proxy), one row each
 * (netd_handler_ops_t) in its own file. Serving a connection uses nothing but
 * <netd/net.h>; reading a handler's JSON spec into netd_handler_cfg_t goes through the
 * readers of conf.c. The daemon calls them on the worker thread that owns the socket.
 * A socket's data slot (nd_socket_set_data) belongs to the daemon: handlers leave it alone.
 */
#ifndef NETD_HANDLERS_H
#define NETD_HANDLERS_H

#include <stdbool.h>
#include <jansson.h>
#include <netd/net.h>

typedef struct netd_handler_ops netd_handler_ops_t;

/* Immutable once parsed; shared read-only by every worker thread. */
typedef struct netd_handler_cfg {
    const netd_handler_ops_t *ops; /* which handler: netd_handler_echo, ... */
    char *greeting;                /* echo: written first, or NULL */
    char *text;                    /* banner: written, then the socket is ended */
    char *host; /* proxy: upstream host (default "127.0.0.1") when path is NULL */
    int port;   /* proxy: upstream port */
    char *path; /* proxy: upstream unix socket, or NULL */
} netd_handler_cfg_t;

/*
 * What a handler's parse reads its fields with (conf.c): each reader checks the JSON
 * type and range, and on a bad value writes a message naming the field
 * ("servers[2].handler.port: ...") and returns -1. Absent optional fields give 0 and
 * leave *out alone.
 */
typedef struct netd_handler_reader netd_handler_reader_t;
bool netd_hr_has(const netd_handler_reader_t *r, const char *key);
int netd_hr_string(const netd_handler_reader_t *r, const char *key, bool required, char **out);
int netd_hr_port(const netd_handler_reader_t *r, const char *key, int *out);
int netd_hr_host(const netd_handler_reader_t *r, const char *key, char **out);
/* A unix path, resolved against the config file's directory when relative. */
int netd_hr_unix_path(const netd_handler_reader_t *r, const char *key, char **out);
int netd_hr_fail(const netd_handler_reader_t *r, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Hooks the daemon gives every handler call. upstream_failed is called (on the worker
 * thread) when a proxy's upstream connect fails; upstream_opened when a proxy's upstream
 * socket exists (so the daemon can list it with role "upstream").
 */
typedef struct netd_handler_env {
    void (*upstream_failed)(void *ctx, nd_socket_t *client, const nd_error_t *err);
    void (*upstream_opened)(void *ctx, nd_socket_t *client, nd_socket_t *upstream);
    void *ctx;
} netd_handler_env_t;

/*
 * One handler: one row, in its own file. Adding a handler is a file with its row and its
 * name in NETD_HANDLERS below (and the file in Makefile.am): the config, `listen`, the
 * Server object and the daemon's calls all go through the row.
 */
struct netd_handler_ops {
    const char *name;        /* its "type" */
    const char *const *keys; /* its other keys, NULL-terminated */
    bool half_open;          /* servers default to allowHalfOpen (a proxy passes FINs on) */
    int descriptors;         /* per connection (a proxy holds two): capacity warnings */
    /* Reads the fields (the keys were checked) into cfg: 0, or -1 from a reader. */
    int (*parse)(const netd_handler_reader_t *r, netd_handler_cfg_t *cfg);
    /* Adds its fields to the Server object's "handler" (which has "type" already). */
    void (*describe)(const netd_handler_cfg_t *cfg, json_t *out);
    /* A new connection, on the worker thread that owns it: start serving it. */
    void (*connection)(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                       const netd_handler_env_t *env);
    /* A live connection (and, for a proxy, its upstream: nd_socket_pipe_peer) arrived on
     * this thread (a move, an upgrade): its listeners were dropped; attach them again.
     * Pipes travel with the sockets. */
    void (*adopt)(const netd_handler_cfg_t *cfg, nd_socket_t *sock, const netd_handler_env_t *env);
};

#define NETD_HANDLERS(X) X(echo) X(discard) X(banner) X(proxy)

#define NETD_HANDLER_DECL(name) extern const netd_handler_ops_t netd_handler_##name;
NETD_HANDLERS(NETD_HANDLER_DECL)
#undef NETD_HANDLER_DECL

/* Every row, NULL-terminated (handlers.c); and the row of a "type", or NULL. */
extern const netd_handler_ops_t *const netd_handlers[];
const netd_handler_ops_t *netd_handler_find(const char *name);

/* The calls the daemon makes, through the row. */
void netd_handler_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                             const netd_handler_env_t *env);
void netd_handler_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                        const netd_handler_env_t *env);

#endif
