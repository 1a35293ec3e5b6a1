/* SPDX-License-Identifier: MIT */
/*
 * upgload: the live upgrade's benchmark client. Holds N echo connections, each sending a
 * small message and waiting for its echo, over and over (every byte checked); asks netd
 * for an `upgrade` in the middle; prints how long the upgrade took (netd's own figure and
 * the request's round trip) and the longest time any connection waited for an echo once
 * every connection had been served once (the first echo's wait includes the connect).
 *
 *   upgload -p PORT -s CONTROL_SOCKET -n CONNECTIONS [-e NEW_BINARY] [-w MS_BEFORE] [-a MS_AFTER]
 *
 * Output: one line of key=value pairs. Exit status 0 when every byte came back right and
 * no connection ended.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MSG 64

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

typedef struct conn {
    int fd;
    uint64_t round;   /* messages echoed so far */
    size_t got;       /* bytes of the current echo */
    uint64_t sent_us; /* when the current message went */
} conn_t;

static conn_t *conns;
static int nconns;
static atomic_bool stop;
static uint64_t max_wait_us, errors, ended, rounds;
static atomic_int warm; /* connections whose first echo came back */

static void fill(unsigned char *b, int i, uint64_t round)
{
    for (int k = 0; k < MSG; k++)
        b[k] = (unsigned char)(i * 31 + round * 7 + (uint64_t)k);
}

static void send_msg(int i)
{
    unsigned char b[MSG];
    fill(b, i, conns[i].round);
    conns[i].got = 0;
    conns[i].sent_us = now_us();
    if (send(conns[i].fd, b, MSG, MSG_NOSIGNAL) != MSG)
        ended++; /* a small message always fits an idle socket's buffer */
}

static void *run(void *arg)
{
    int ep = *(int *)arg;
    struct epoll_event evs[512];
    unsigned char buf[MSG], want[MSG];
    while (!atomic_load(&stop)) {
        int n = epoll_wait(ep, evs, 512, 5);
        for (int e = 0; e < n; e++) {
            int i = (int)evs[e].data.u32;
            conn_t *c = &conns[i];
            ssize_t k = recv(c->fd, buf, MSG - c->got, MSG_DONTWAIT);
            if (k <= 0) {
                if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                    ended++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                }
                continue;
            }
            fill(want, i, c->round);
            if (memcmp(buf, want + c->got, (size_t)k) != 0)
                errors++;
            c->got += (size_t)k;
            if (c->got == MSG) {
                /* The first echo's wait includes the connect, which a full accept queue
                 * can delay by a SYN retransmission (1 s): not the upgrade's doing. */
                uint64_t w = now_us() - c->sent_us;
                if (c->round == 0)
                    atomic_fetch_add(&warm, 1);
                else if (w > max_wait_us)
                    max_wait_us = w;
                c->round++;
                rounds++;
                send_msg(i);
            }
        }
        /* A message still waiting counts too, even if its echo never comes. */
        uint64_t t = now_us();
        for (int i = 0; i < nconns; i++)
            if (conns[i].round > 0 && conns[i].got < MSG && t - conns[i].sent_us > max_wait_us)
                max_wait_us = t - conns[i].sent_us;
    }
    return NULL;
}

/* One control request; the reply line into out. */
static int call(const char *path, const char *req, char *out, size_t cap)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    ssize_t w = write(fd, req, strlen(req));
    (void)w;
    size_t n = 0;
    while (n < cap - 1) {
        ssize_t k = read(fd, out + n, cap - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
        if (memchr(out, '\n', n))
            break;
    }
    out[n] = '\0';
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    int port = 0, opt;
    const char *ctl = NULL, *exe = NULL;
    unsigned before = 1000, after = 1000;
    nconns = 1000;
    while ((opt = getopt(argc, argv, "p:s:n:e:w:a:")) != -1) {
        switch (opt) {
        case 'p':
            port = atoi(optarg);
            break;
        case 's':
            ctl = optarg;
            break;
        case 'n':
            nconns = atoi(optarg);
            break;
        case 'e':
            exe = optarg;
            break;
        case 'w':
            before = (unsigned)atoi(optarg);
            break;
        case 'a':
            after = (unsigned)atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: upgload -p PORT -s CONTROL -n N [-e EXEC] [-w MS] [-a MS]\n");
            return 2;
        }
    }
    if (!port || !ctl || nconns <= 0) {
        fprintf(stderr, "upgload: -p, -s and -n are needed\n");
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    conns = calloc((size_t)nconns, sizeof(*conns));
    int ep = epoll_create1(0);
    for (int i = 0; i < nconns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
            fprintf(stderr, "upgload: connect %d: %s\n", i, strerror(errno));
            return 1;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conns[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        send_msg(i);
    }
    pthread_t th;
    pthread_create(&th, NULL, run, &ep);
    /* Every connection served once (accepted, echoing) before the clock starts. */
    for (int i = 0; i < 3000 && atomic_load(&warm) < nconns; i++)
        usleep(10000);
    if (atomic_load(&warm) < nconns) {
        fprintf(stderr, "upgload: only %d of %d connections echoed within 30 s\n",
                atomic_load(&warm), nconns);
        atomic_store(&stop, true);
        pthread_join(th, NULL);
        return 1;
    }
    usleep(before * 1000);
    char req[4200], reply[4096];
    if (exe)
        snprintf(req, sizeof(req), "{\"cmd\":\"upgrade\",\"exec\":\"%s\",\"timeoutMs\":60000}\n",
                 exe);
    else
        snprintf(req, sizeof(req), "{\"cmd\":\"upgrade\",\"timeoutMs\":60000}\n");
    uint64_t t0 = now_us();
    call(ctl, req, reply, sizeof(reply));
    uint64_t rtt_ms = (now_us() - t0) / 1000;
    usleep(after * 1000);
    atomic_store(&stop, true);
    pthread_join(th, NULL);
    const char *ms = strstr(reply, "\"ms\":");
    const char *ok = strstr(reply, "\"ok\":true");
    printf("connections=%d upgrade_ok=%d netd_ms=%ld request_ms=%llu max_stall_ms=%.1f "
           "rounds=%llu errors=%llu ended=%llu\n",
           nconns, ok != NULL, ms ? strtol(ms + 5, NULL, 10) : -1L, (unsigned long long)rtt_ms,
           (double)max_wait_us / 1000.0, (unsigned long long)rounds, (unsigned long long)errors,
           (unsigned long long)ended);
    if (!ok)
        fprintf(stderr, "upgload: %s", reply);
    return ok && errors == 0 && ended == 0 ? 0 : 1;
}
