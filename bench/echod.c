/* SPDX-License-Identifier: MIT */
/*
 * echod: the raw epoll echo, the limit netd's echo rows are measured against and the plain
 * upstream behind both proxies. Level-triggered epoll, one 64 KiB buffer per thread;
 * nothing of libnetd or Node, so it costs as little as an echo can.
 * Usage: echod PORT [THREADS] (on 127.0.0.1). THREADS > 1 gives each thread its own
 * SO_REUSEPORT listener, to see what a second thread costs a raw server on the same cores.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

static int port;
static int reuseport;

/* Echoes what is readable now; a blocking write keeps the code small and the order right
 * (the proxies read their upstream promptly, so it never blocks long). */
static void echo(int epfd, int fd, char *buf, size_t size)
{
    for (;;) {
        ssize_t n = read(fd, buf, size);
        if (n > 0) {
            for (ssize_t off = 0; off < n;) {
                ssize_t w = send(fd, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
                if (w < 0 && errno == EAGAIN) {
                    fd_set wfds;
                    FD_ZERO(&wfds);
                    FD_SET(fd, &wfds);
                    select(fd + 1, NULL, &wfds, NULL, NULL);
                    continue;
                }
                if (w < 0)
                    goto gone;
                off += w;
            }
            if ((size_t)n < size)
                return;
            continue;
        }
        if (n < 0 && errno == EAGAIN)
            return;
    gone:
        epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        return;
    }
}

static int listen_on(void)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport)
        setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 511) != 0) {
        perror("echod: listen");
        exit(1);
    }
    return lfd;
}

static void *serve(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    static __thread char buf[65536];
    int one = 1;
    int epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(epfd, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd != lfd) {
                echo(epfd, fd, buf, sizeof(buf));
                continue;
            }
            int c;
            while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                epoll_ctl(epfd, EPOLL_CTL_ADD, c, &cev);
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: echod PORT [THREADS]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    port = atoi(argv[1]);
    int threads = argc == 3 ? atoi(argv[2]) : 1;
    if (threads < 1)
        threads = 1;
    reuseport = threads > 1;
    /* Every listener exists before any thread runs, so a client never finds the port with
     * only some of them bound. */
    int lfds[64];
    if (threads > 64)
        threads = 64;
    for (int i = 0; i < threads; i++)
        lfds[i] = listen_on();
    for (int i = 1; i < threads; i++) {
        pthread_t t;
        pthread_create(&t, NULL, serve, (void *)(intptr_t)lfds[i]);
    }
    serve((void *)(intptr_t)lfds[0]);
    return 0;
}
