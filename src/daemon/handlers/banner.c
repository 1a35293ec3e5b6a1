/* SPDX-License-Identifier: MIT */
/*
 * banner: the reference's address() example, socket.end("goodbye\n"). Say the text and
 * hang up.
 */
#include "config.h"

#include "handlers.h"

#include <string.h>

static void banner_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                              const netd_handler_env_t *env)
{
    const char *text = cfg->text != NULL ? cfg->text : "";

    /* end(data): the text is queued, then FIN once it is flushed. Whatever the client
     * sends meanwhile is read and dropped: resume() with no 'data' listener, as Node's
     * c.resume(). Unread input would be kept and its 'end' held back behind it. The
     * socket closes when the client ends its side too. */
    nd_socket_resume(sock);
    nd_socket_end(sock, text, strlen(text));
}

static void banner_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                         const netd_handler_env_t *env)
{
    /* Nothing to re-attach: the queued text and the pending FIN move with the socket. */
}

static int banner_parse(const netd_handler_reader_t *r, netd_handler_cfg_t *cfg)
{
    return netd_hr_string(r, "text", true, &cfg->text);
}

static void banner_describe(const netd_handler_cfg_t *cfg, json_t *out)
{
    json_object_set_new(out, "text", json_string(cfg->text ? cfg->text : ""));
}

static const char *const banner_keys[] = {"text", NULL};

const netd_handler_ops_t netd_handler_banner = {
    .name = "banner",
    .keys = banner_keys,
    .descriptors = 1,
    .parse = banner_parse,
    .describe = banner_describe,
    .connection = banner_connection,
    .adopt = banner_adopt,
};
