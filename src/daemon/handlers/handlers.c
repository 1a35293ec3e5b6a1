/* SPDX-License-Identifier: MIT */
/*
 * The handler table: every row of NETD_HANDLERS, found by its "type", and the daemon's
 * two calls, which go through the row.
 */
#include "config.h"

#include "handlers.h"

#include <string.h>

const netd_handler_ops_t *const netd_handlers[] = {
#define NETD_HANDLER_ROW(name) &netd_handler_##name,
    NETD_HANDLERS(NETD_HANDLER_ROW)
#undef NETD_HANDLER_ROW
        NULL,
};

const netd_handler_ops_t *netd_handler_find(const char *name)
{
    for (int i = 0; name && netd_handlers[i]; i++)
        if (strcmp(netd_handlers[i]->name, name) == 0)
            return netd_handlers[i];
    return NULL;
}

void netd_handler_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                             const netd_handler_env_t *env)
{
    cfg->ops->connection(cfg, sock, env);
}

void netd_handler_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                        const netd_handler_env_t *env)
{
    cfg->ops->adopt(cfg, sock, env);
}
