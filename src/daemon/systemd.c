/* SPDX-License-Identifier: MIT */
/*
 * systemd without libsystemd: sd_notify datagrams written straight to $NOTIFY_SOCKET (an
 * abstract address starts with '@'), and socket activation from LISTEN_FDS.
 */
#include "config.h"

#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
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

/* The descriptors systemd passed (LISTEN_FDS), or an upgrade handed over, with their
 * names (LISTEN_FDNAMES; NULL when unnamed). Never closed, not even on reload. The config
 * and `listen` still number them as systemd did (3, 4, ...): after an upgrade they are
 * wherever the handover put them, since moving them back to 3.. would overwrite this
 * process's own descriptors (its event loops took the low numbers first). */
struct netd_activation {
    int count;
    int *fds; /* fds[i] is what config's "fd": 3 + i means */
    char **names;
};

static struct netd_activation *activation_new(int n)
{
    struct netd_activation *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->names = calloc((size_t)n, sizeof(char *));
    a->fds = calloc((size_t)n, sizeof(int));
    if (!a->names || !a->fds) {
        free(a->names);
        free(a->fds);
        free(a);
        return NULL;
    }
    a->count = n;
    return a;
}

static void activation_free(struct netd_activation *a)
{
    if (!a)
        return;
    for (int i = 0; i < a->count; i++)
        free(a->names[i]);
    free(a->names);
    free(a->fds);
    free(a);
}

void netd_activation_free(netd_t *d)
{
    activation_free(d->activation);
    d->activation = NULL;
}

void netd_activation_init(netd_t *d)
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
    struct netd_activation *a = activation_new((int)n);
    if (!a) {
        netd_log(NETD_LOG_ERROR, "socket activation: out of memory: inherited descriptors ignored");
        goto clear;
    }
    const char *names = getenv("LISTEN_FDNAMES");
    for (int i = 0; i < n; i++) {
        int fd = a->fds[i] = SD_LISTEN_FDS_START + i;
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
            fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        if (names) {
            size_t k = strcspn(names, ":");
            a->names[i] = strndup(names, k);
            names += k;
            if (*names == ':')
                names++;
            else
                names = NULL;
        }
    }
    d->activation = a;
    netd_log(NETD_LOG_INFO, "socket activation: %ld inherited descriptor(s)", n);
clear:
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
}

int netd_activation_list(netd_t *d, int *fds, const char **names, int max)
{
    const struct netd_activation *a = d->activation;
    int n = !a ? 0 : a->count < max ? a->count : max;
    for (int i = 0; i < n; i++) {
        fds[i] = a->fds[i];
        names[i] = a->names[i];
    }
    return n;
}

int netd_activation_adopt(netd_t *d, int *fds, const char *const *names, int n, char *err,
                          size_t errlen)
{
    struct netd_activation *a = activation_new(n);
    for (int i = 0; a && i < n; i++) {
        if (names[i] && !(a->names[i] = strdup(names[i]))) {
            activation_free(a);
            a = NULL;
        }
    }
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        a->fds[i] = fds[i];
        fds[i] = -1;
    }
    netd_activation_free(d);
    d->activation = a;
    return 0;
}

int netd_listen_fd_lookup(netd_t *d, const netd_listen_spec_t *spec)
{
    const struct netd_activation *a = d->activation;
    for (int i = 0; a && i < a->count; i++) {
        if (spec->fd_name) {
            if (a->names[i] && strcmp(a->names[i], spec->fd_name) == 0)
                return a->fds[i];
        } else if (spec->fd == SD_LISTEN_FDS_START + i) {
            return a->fds[i];
        }
    }
    return -1;
}

/* A notify message with descriptors (FDSTORE=1). 0, or -1 when there is no NOTIFY_SOCKET
 * or the send failed. */
static int notify_fds(const char *msg, const int *fds, int n)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path || (path[0] != '/' && path[0] != '@'))
        return -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t plen = strlen(path);
    if (plen >= sizeof(sa.sun_path) || n < 0 || n > 16)
        return -1;
    memcpy(sa.sun_path, path, plen);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct iovec iov = {(void *)msg, strlen(msg)};
    union {
        char buf[CMSG_SPACE(sizeof(int) * 16)];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof(ctl));
    struct msghdr mh = {.msg_name = &sa,
                        .msg_namelen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen),
                        .msg_iov = &iov,
                        .msg_iovlen = 1};
    if (n > 0) {
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)n);
    }
    int rc = sendmsg(fd, &mh, MSG_NOSIGNAL) < 0 ? -1 : 0;
    close(fd);
    return rc;
}

/* systemd accepts a descriptor name of printable ASCII without ':' (at most 255). */
static bool fd_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 255)
        return false;
    for (const char *p = name; *p; p++)
        if (*p <= ' ' || *p >= 127 || *p == ':')
            return false;
    return true;
}

void netd_fdstore_listeners(netd_t *d)
{
    if (!getenv("NOTIFY_SOCKET") || d->handed_over)
        return;
    int stored = 0;
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link) {
        if (s->state != NETD_SRV_LISTENING || !s->group || s->spec.path ||
            s->spec.balance == ND_BALANCE_REUSEPORT || !fd_name_ok(s->spec.name))
            continue;
        int fd = nd_server_export(s->group); /* accepting stops; the kernel keeps queueing */
        if (fd < 0)
            continue;
        char msg[320];
        snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", s->spec.name);
        if (notify_fds(msg, &fd, 1) == 0)
            stored++;
    }
    if (stored)
        netd_log(NETD_LOG_INFO,
                 "%d listener(s) kept in systemd's descriptor store: a restart takes them back",
                 stored);
}

void netd_fdstore_forget_unused(netd_t *d)
{
    if (!getenv("NOTIFY_SOCKET"))
        return;
    const struct netd_activation *a = d->activation;
    for (int i = 0; a && i < a->count; i++) {
        const char *name = a->names[i];
        if (!name || !fd_name_ok(name))
            continue;
        bool used = false;
        netd_server_t *s;
        TAILQ_FOREACH(s, &d->servers, link) {
            if (strcmp(s->spec.name, name) == 0 ||
                (s->spec.fd_name && strcmp(s->spec.fd_name, name) == 0) ||
                s->spec.fd == SD_LISTEN_FDS_START + i)
                used = true;
        }
        if (!used) {
            char msg[320];
            snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
            notify_fds(msg, NULL, 0);
        }
    }
}
