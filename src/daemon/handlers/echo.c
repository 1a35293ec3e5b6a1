/*
 * echo: the reference's first example. An optional greeting, then every byte the client
 * sends comes straight back.
 */
#include "handlers.h"

#include <string.h>

void netd_echo_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                          const netd_handler_env_t *env)
{
    /* Written before the pipe exists, so the greeting always precedes the first echo. */
    if (cfg->greeting != NULL)
        nd_socket_write(sock, cfg->greeting, strlen(cfg->greeting), NULL, NULL);

    /*
     * The socket piped to itself: the library pauses it while its own output is queued
     * (a client that sends but does not read is held back by the kernel, not by our
     * memory), and when the client half-closes without allowHalfOpen the library ends our
     * side too. No listener is needed: errors close the socket on their own.
     */
    nd_socket_pipe(sock, sock, 1);
}

void netd_echo_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                     const netd_handler_env_t *env)
{
    /* Nothing to do: a pipe is socket state, not a listener, so it survives the move
     * (net.h, nd_socket_move: a self-pipe does not block it), and echo has no listeners. */
}
