/* SPDX-License-Identifier: MIT */
/*
 * Socket addresses: nd_address_t from a sockaddr, sockaddrs from IP literals and unix
 * paths, and the descriptor flags every socket of the library gets.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>

void nd__address_from(nd_address_t *out, const struct sockaddr *sa, socklen_t len)
{
    memset(out, 0, sizeof(*out));
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, out->address, sizeof(out->address));
        out->family = 4;
        out->port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, out->address, sizeof(out->address));
        out->family = 6;
        out->port = ntohs(in6->sin6_port);
    } else if (sa->sa_family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
        size_t n = len > offsetof(struct sockaddr_un, sun_path)
                       ? len - offsetof(struct sockaddr_un, sun_path)
                       : 0;
        if (n > sizeof(out->address) - 1)
            n = sizeof(out->address) - 1;
        memcpy(out->address, un->sun_path, n);
        out->address[n] = '\0';
    }
}

socklen_t nd__sockaddr_ip(nd__sockaddr_t *out, const char *ip, int port, int family)
{
    memset(out, 0, sizeof(*out));
    int kind = nd_is_ip(ip);
    if (kind == 4 && (family == 0 || family == 4)) {
        out->in4.sin_family = AF_INET;
        out->in4.sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, ip, &out->in4.sin_addr) == 1)
            return sizeof(out->in4);
    } else if (kind == 6 && (family == 0 || family == 6)) {
        char buf[64];
        const char *pct = strchr(ip, '%');
        size_t n = pct ? (size_t)(pct - ip) : strlen(ip);
        if (n >= sizeof(buf))
            return 0;
        memcpy(buf, ip, n);
        buf[n] = '\0';
        out->in6.sin6_family = AF_INET6;
        out->in6.sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, buf, &out->in6.sin6_addr) == 1)
            return sizeof(out->in6);
    }
    return 0;
}

int nd__sockaddr_unix(nd__sockaddr_t *out, const char *path)
{
    memset(out, 0, sizeof(*out));
    size_t n = strlen(path);
    if (n >= sizeof(out->un.sun_path))
        return -ENAMETOOLONG;
    out->un.sun_family = AF_UNIX;
    memcpy(out->un.sun_path, path, n + 1);
    return (int)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

int nd__set_nonblock_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    int fdfl = fcntl(fd, F_GETFD);
    if (fdfl < 0 || fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0)
        return -errno;
    return 0;
}
