/*
 * systemd without libsystemd: sd_notify datagrams written straight to $NOTIFY_SOCKET (an
 * abstract address starts with '@'), and socket activation from LISTEN_FDS.
 */
#include "config.h"

#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define SD_LISTEN_FDS_START 3

void netd_notify(const char *fmt, ...)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path || (path[0] != '/' && path[0] != '@'))
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t plen = strlen(path);
    if (plen >= sizeof(sa.sun_path))
        return;
    memcpy(sa.sun_path, path, plen);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0)
        netd_log(NETD_LOG_DEBUG, "sd_notify: %s", strerror(errno));
    close(fd);
}

void netd_listen_fds_init(netd_t *d)
{
    const char *pid = getenv("LISTEN_PID");
    const char *fds = getenv("LISTEN_FDS");
    if (!pid || !fds)
        return;
    char *end;
    long p = strtol(pid, &end, 10);
    if (*end || p != (long)getpid()) {
        netd_log(NETD_LOG_WARN, "LISTEN_PID %s is not ours: ignoring LISTEN_FDS", pid);
        goto clear;
    }
    long n = strtol(fds, &end, 10);
    if (*end || n <= 0 || n > 1024)
        goto clear;
    d->listen_fds_start = SD_LISTEN_FDS_START;
    d->listen_fds_count = (int)n;
    d->listen_fd_names = calloc((size_t)n, sizeof(char *));
    const char *names = getenv("LISTEN_FDNAMES");
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        /* Made non-blocking and close-on-exec; never closed, not even on reload. */
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
            fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        if (names && d->listen_fd_names) {
            size_t k = strcspn(names, ":");
            d->listen_fd_names[i] = strndup(names, k);
            names += k;
            if (*names == ':')
                names++;
            else
                names = NULL;
        }
    }
    netd_log(NETD_LOG_INFO, "socket activation: %ld inherited descriptor(s)", n);
clear:
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
}

int netd_listen_fd_lookup(netd_t *d, const netd_listen_spec_t *spec)
{
    for (int i = 0; i < d->listen_fds_count; i++) {
        int fd = d->listen_fds_start + i;
        if (spec->fd_name) {
            if (d->listen_fd_names && d->listen_fd_names[i] &&
                strcmp(d->listen_fd_names[i], spec->fd_name) == 0)
                return fd;
        } else if (spec->fd == fd) {
            return fd;
        }
    }
    return -1;
}
