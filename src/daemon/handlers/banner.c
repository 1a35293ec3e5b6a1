/*
 * banner: the reference's address() example, socket.end("goodbye\n"). Say the text and
 * hang up.
 */
#include "config.h"

#include "handlers.h"

#include <string.h>

void netd_banner_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
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

void netd_banner_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                       const netd_handler_env_t *env)
{
    /* Nothing to re-attach: the queued text and the pending FIN move with the socket. */
}
