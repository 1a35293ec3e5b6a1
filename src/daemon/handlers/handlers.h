/* SPDX-License-Identifier: MIT */
/*
 * The built-in connection handlers (echo, discard, banner, proxy). Each lives in its own
 * file and uses nothing but <netd/net.h>; the daemon parses their JSON spec into
 * netd_handler_cfg_t (config.c) and calls them on the worker thread that owns the socket.
 * A socket's data slot (nd_socket_set_data) belongs to the daemon: handlers leave it alone.
 */
#ifndef NETD_HANDLERS_H
#define NETD_HANDLERS_H

#include <netd/net.h>

typedef enum netd_handler_type {
    NETD_HANDLER_ECHO = 0,
    NETD_HANDLER_DISCARD,
    NETD_HANDLER_BANNER,
    NETD_HANDLER_PROXY
} netd_handler_type_t;

/* Immutable once parsed; shared read-only by every worker thread. */
typedef struct netd_handler_cfg {
    netd_handler_type_t type;
    char *greeting; /* echo: written first, or NULL */
    char *text;     /* banner: written, then the socket is ended */
    char *host;     /* proxy: upstream host (default "127.0.0.1") when path is NULL */
    int port;       /* proxy: upstream port */
    char *path;     /* proxy: upstream unix socket, or NULL */
} netd_handler_cfg_t;

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

/* A new connection: start serving it. */
void netd_handler_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                             const netd_handler_env_t *env);

/* A live connection (and, for a proxy, its upstream: nd_socket_pipe_peer) was moved to this
 * thread: its listeners were dropped by the move; attach them again. Pipes survive moves. */
void netd_handler_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                        const netd_handler_env_t *env);

/* Per-type entry points, dispatched by the two functions above (handlers.c). */
void netd_echo_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                          const netd_handler_env_t *env);
void netd_echo_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                     const netd_handler_env_t *env);
void netd_discard_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                             const netd_handler_env_t *env);
void netd_discard_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                        const netd_handler_env_t *env);
void netd_banner_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                            const netd_handler_env_t *env);
void netd_banner_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                       const netd_handler_env_t *env);
void netd_proxy_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                           const netd_handler_env_t *env);
void netd_proxy_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                      const netd_handler_env_t *env);

#endif
