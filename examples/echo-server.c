/* SPDX-License-Identifier: MIT */
/*
 * The reference's echo server: greets each client with "hello\r\n", then echoes back
 * whatever it sends. Usage: echo-server [PORT | PATH]   (default port 8124)
 */
#include <netd/net.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failed;

static void on_client_end(void *self, const nd_event_t *ev, void *arg)
{
    printf("server disconnected\n");
}

static void on_client_error(void *self, const nd_event_t *ev, void *arg)
{
    /* One client's trouble is not the server's: log it and keep serving. */
    fprintf(stderr, "%s\n", ev->error->message);
}

static void on_connection(void *self, const nd_event_t *ev, void *arg)
{
    nd_socket_t *c = ev->socket;

    printf("server connected\n");
    nd_socket_on(c, ND_EV_END, on_client_end, NULL);
    nd_socket_on(c, ND_EV_ERROR, on_client_error, NULL);
    nd_socket_write(c, "hello\r\n", 7, NULL, NULL);
    nd_socket_pipe(c, c, 1);
}

static void on_listening(void *self, const nd_event_t *ev, void *arg)
{
    printf("server bound\n");
}

static void on_error(void *self, const nd_event_t *ev, void *arg)
{
    /* 'close' follows, the loop runs out of work, and main returns 1. */
    fprintf(stderr, "%s\n", ev->error->message);
    failed = 1;
}

int main(int argc, char **argv)
{
    const char *where = argc > 1 ? argv[1] : "8124";
    char *end;
    long port = strtol(where, &end, 10);

    if (!strchr(where, '/') && (end == where || *end != '\0' || port < 0 || port > 65535)) {
        fprintf(stderr, "usage: %s [PORT | PATH]\n", argv[0]);
        return 2;
    }
    /* Line-buffered even into a pipe, so whoever watches sees each event as it happens. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    nd_loop_t *loop = nd_loop_new();
    if (loop == NULL)
        return 1;
    nd_server_t *server = nd_server_new(loop, NULL, on_connection, NULL);
    if (server == NULL)
        return 1;
    nd_server_on(server, ND_EV_LISTENING, on_listening, NULL);
    nd_server_on(server, ND_EV_ERROR, on_error, NULL);

    int rc;
    if (strchr(where, '/'))
        rc = nd_server_listen_path(server, where, 0);
    else
        rc = nd_server_listen(server, (int)port, NULL, 0);
    if (rc < 0) {
        fprintf(stderr, "listen %s: %s\n", where, nd_strerror(rc));
        failed = 1;
    } else {
        nd_loop_run(loop);
    }
    nd_loop_free(loop);
    return failed;
}
