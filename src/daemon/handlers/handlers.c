/*
 * Dispatch: the daemon knows only these two entry points; each handler type lives in its
 * own file (echo.c, discard.c, banner.c, proxy.c).
 */
#include "config.h"

#include "handlers.h"

void netd_handler_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                             const netd_handler_env_t *env)
{
    switch (cfg->type) {
    case NETD_HANDLER_ECHO:
        netd_echo_connection(cfg, sock, env);
        break;
    case NETD_HANDLER_DISCARD:
        netd_discard_connection(cfg, sock, env);
        break;
    case NETD_HANDLER_BANNER:
        netd_banner_connection(cfg, sock, env);
        break;
    case NETD_HANDLER_PROXY:
        netd_proxy_connection(cfg, sock, env);
        break;
    default:
        /* config.c never produces another type; refuse rather than leak a silent socket. */
        nd_socket_destroy(sock);
        break;
    }
}

void netd_handler_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                        const netd_handler_env_t *env)
{
    switch (cfg->type) {
    case NETD_HANDLER_ECHO:
        netd_echo_adopt(cfg, sock, env);
        break;
    case NETD_HANDLER_DISCARD:
        netd_discard_adopt(cfg, sock, env);
        break;
    case NETD_HANDLER_BANNER:
        netd_banner_adopt(cfg, sock, env);
        break;
    case NETD_HANDLER_PROXY:
        netd_proxy_adopt(cfg, sock, env);
        break;
    default:
        nd_socket_destroy(sock);
        break;
    }
}
