/* SPDX-License-Identifier: MIT */
/*
 * echo: the reference's first example. An optional greeting, then every byte the client
 * sends comes straight back.
 */
#include "config.h"

#include "handlers.h"

#include <string.h>

static void on_end(void *self, const nd_event_t *ev, void *arg)
{
    /*
     * The client is done sending, and everything it sent has been echoed (the pipe holds
     * the socket paused while its own output is queued, so FIN is read last). End our
     * side too. The pipe's end_dst would do it, except that libnetd skips it when a socket
     * is piped to itself, so on an allowHalfOpen server the connection would otherwise stay
     * half-open until the client closes. Without allowHalfOpen the library has already
     * ended it, and a second end is a no-op.
     */
    nd_socket_end(self, NULL, 0);
}

static void echo_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                            const netd_handler_env_t *env)
{
    /* Written before the pipe exists, so the greeting always precedes the first echo. */
    if (cfg->greeting != NULL)
        nd_socket_write(sock, cfg->greeting, strlen(cfg->greeting), NULL, NULL);

    /* The socket piped to itself. A client that sends but does not read is held back by
     * the kernel, not by our memory: the pipe pauses reading while output is queued.
     * Errors need no listener: the socket closes by itself. */
    nd_socket_pipe(sock, sock, 1);
    nd_socket_on(sock, ND_EV_END, on_end, NULL);
}

static void echo_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                       const netd_handler_env_t *env)
{
    /* The pipe is socket state and survives the move (a self-pipe does not block it);
     * only our 'end' listener was dropped. */
    nd_socket_on(sock, ND_EV_END, on_end, NULL);
}

static int echo_parse(const netd_handler_reader_t *r, netd_handler_cfg_t *cfg)
{
    return netd_hr_string(r, "greeting", false, &cfg->greeting);
}

static void echo_describe(const netd_handler_cfg_t *cfg, json_t *out)
{
    if (cfg->greeting)
        json_object_set_new(out, "greeting", json_string(cfg->greeting));
}

static const char *const echo_keys[] = {"greeting", NULL};

const netd_handler_ops_t netd_handler_echo = {
    .name = "echo",
    .keys = echo_keys,
    .descriptors = 1,
    .parse = echo_parse,
    .describe = echo_describe,
    .connection = echo_connection,
    .adopt = echo_adopt,
};
