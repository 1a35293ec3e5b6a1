/* SPDX-License-Identifier: MIT */
/*
 * discard (RFC 863 in spirit): read everything, keep nothing, answer nothing.
 */
#include "config.h"

#include "handlers.h"

static void on_data(void *self, const nd_event_t *ev, void *arg)
{
    /* Dropped on purpose. Data with no listener would be dropped too, but this listener
     * says so in the code; reading goes on either way, so the client is never blocked. */
}

static void on_end(void *self, const nd_event_t *ev, void *arg)
{
    /* The client is done sending. Without allowHalfOpen the library has already ended
     * our side; with it, nothing else ever will, so end it here (a second end is a
     * no-op). The connection closes once both FINs are out. */
    nd_socket_end(self, NULL, 0);
}

static void attach(nd_socket_t *sock)
{
    nd_socket_on(sock, ND_EV_DATA, on_data, NULL);
    nd_socket_on(sock, ND_EV_END, on_end, NULL);
}

static void discard_connection(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                               const netd_handler_env_t *env)
{
    attach(sock);
}

static void discard_adopt(const netd_handler_cfg_t *cfg, nd_socket_t *sock,
                          const netd_handler_env_t *env)
{
    /* A move drops every listener; put ours back. */
    attach(sock);
}

static int discard_parse(const netd_handler_reader_t *r, netd_handler_cfg_t *cfg)
{
    return 0;
}

static void discard_describe(const netd_handler_cfg_t *cfg, json_t *out) {}

static const char *const discard_keys[] = {NULL};

const netd_handler_ops_t netd_handler_discard = {
    .name = "discard",
    .keys = discard_keys,
    .descriptors = 1,
    .parse = discard_parse,
    .describe = discard_describe,
    .connection = discard_connection,
    .adopt = discard_adopt,
};
