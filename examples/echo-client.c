/* SPDX-License-Identifier: MIT */
/*
 * The reference's echo client: connects, says "world!\r\n", prints what comes back and
 * ends. Usage: echo-client [PORT | PATH]   (default port 8124 on localhost)
 */
#include <netd/net.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failed;

static void on_connect(void *self, const nd_event_t *ev, void *arg)
{
    printf("client connected\n");
    nd_socket_write(self, "world!\r\n", 8, NULL, NULL);
}

static void on_data(void *self, const nd_event_t *ev, void *arg)
{
    /* Printed as received, with no newline of our own: the output is then the same
     * however the echo is split into 'data' events. */
    fwrite(ev->data, 1, ev->len, stdout);
    if (nd_socket_writable(self))
        nd_socket_end(self, NULL, 0);
}

static void on_end(void *self, const nd_event_t *ev, void *arg)
{
    printf("client disconnected\n");
}

static void on_error(void *self, const nd_event_t *ev, void *arg)
{
    fprintf(stderr, "%s\n", ev->error->message);
    failed = 1;
}

int main(int argc, char **argv)
{
    const char *where = argc > 1 ? argv[1] : "8124";
    nd_connect_options_t opts = {0};
    char *end;
    long port = strtol(where, &end, 10);

    if (strchr(where, '/')) {
        opts.path = where;
    } else if (end != where && *end == '\0' && port >= 0 && port <= 65535) {
        opts.port = (int)port;
    } else {
        fprintf(stderr, "usage: %s [PORT | PATH]\n", argv[0]);
        return 2;
    }

    nd_loop_t *loop = nd_loop_new();
    if (loop == NULL)
        return 1;
    nd_socket_t *client = nd_connect(loop, &opts, on_connect, NULL);
    if (client == NULL) {
        fprintf(stderr, "connect %s: %s\n", where, nd_strerror(errno));
        nd_loop_free(loop);
        return 1;
    }
    nd_socket_on(client, ND_EV_DATA, on_data, NULL);
    nd_socket_on(client, ND_EV_END, on_end, NULL);
    nd_socket_on(client, ND_EV_ERROR, on_error, NULL);

    nd_loop_run(loop);
    nd_loop_free(loop);
    return failed;
}
