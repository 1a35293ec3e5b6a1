/* SPDX-License-Identifier: MIT */
/*
 * The handover channel between a running netd and the binary that takes over from it
 * (DESIGN.md 2b): one SOCK_SEQPACKET socketpair. A message is one packet: a 4-byte
 * length, a JSON header ({"t": type, ...}), then raw payload bytes; descriptors ride
 * along with SCM_RIGHTS, at most NETD_HO_MAX_FDS per packet.
 */
#include "config.h"

#include "handover.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int netd_ho_pair(int fds[2])
{
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0)
        return -errno;
    /* A packet is at most one batch: make room for the largest one up front. */
    int size = (int)NETD_HO_MAX_PACKET + 4096;
    for (int i = 0; i < 2; i++) {
        setsockopt(fds[i], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        setsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    }
    return 0;
}

/* Waits until fd is ready for `events`, or the deadline (ms since an arbitrary origin of
 * netd_now_ms) passes. */
static int wait_ready(int fd, short events, uint64_t deadline_ms)
{
    for (;;) {
        uint64_t now = netd_now_ms();
        if (now >= deadline_ms)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)(deadline_ms - now));
        if (n > 0) {
            if (p.revents & (POLLERR | POLLNVAL))
                return -EPIPE;
            if ((p.revents & POLLHUP) && !(p.revents & events))
                return -EPIPE; /* the other process is gone */
            return 0;
        }
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

int netd_ho_send(int fd, json_t *msg, const void *payload, size_t plen, const int *fds, int nfds,
                 uint64_t deadline_ms)
{
    if (nfds < 0 || nfds > NETD_HO_MAX_FDS)
        return -EINVAL;
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!text)
        return -ENOMEM;
    size_t tlen = strlen(text);
    if (4 + tlen + plen > NETD_HO_MAX_PACKET) {
        free(text);
        return -EMSGSIZE;
    }
    uint8_t hdr[4] = {(uint8_t)(tlen >> 24), (uint8_t)(tlen >> 16), (uint8_t)(tlen >> 8),
                      (uint8_t)tlen};
    struct iovec iov[3] = {{hdr, 4}, {text, tlen}, {(void *)payload, plen}};
    union {
        char buf[CMSG_SPACE(sizeof(int) * NETD_HO_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = plen ? 3 : 2};
    if (nfds > 0) {
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    }
    int rc;
    for (;;) {
        ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) {
            rc = 0;
            break;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            rc = -errno;
            break;
        }
        if ((rc = wait_ready(fd, POLLOUT, deadline_ms)) != 0)
            break;
    }
    free(text);
    return rc;
}

int netd_ho_recv(int fd, netd_ho_msg_t *out, uint64_t deadline_ms)
{
    memset(out, 0, sizeof(*out));
    out->buf = malloc(NETD_HO_MAX_PACKET);
    if (!out->buf)
        return -ENOMEM;
    union {
        char buf[CMSG_SPACE(sizeof(int) * NETD_HO_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {out->buf, NETD_HO_MAX_PACKET};
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = ctl.buf,
                        .msg_controllen = sizeof(ctl.buf)};
    ssize_t n;
    for (;;) {
        n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n >= 0)
            break;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            int e = -errno;
            netd_ho_msg_free(out);
            return e;
        }
        int rc = wait_ready(fd, POLLIN, deadline_ms);
        if (rc) {
            netd_ho_msg_free(out);
            return rc;
        }
    }
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            if (k > NETD_HO_MAX_FDS - out->nfds)
                k = NETD_HO_MAX_FDS - out->nfds;
            memcpy(out->fds + out->nfds, CMSG_DATA(cm), sizeof(int) * (size_t)k);
            out->nfds += k;
        }
    }
    if (n == 0) {
        netd_ho_msg_free(out);
        return -EPIPE; /* the other end closed */
    }
    if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || n < 4) {
        netd_ho_msg_free(out);
        return -EPROTO;
    }
    const uint8_t *b = (const uint8_t *)out->buf;
    size_t tlen = (size_t)b[0] << 24 | (size_t)b[1] << 16 | (size_t)b[2] << 8 | b[3];
    if (4 + tlen > (size_t)n) {
        netd_ho_msg_free(out);
        return -EPROTO;
    }
    json_error_t err;
    out->msg = json_loadb(out->buf + 4, tlen, JSON_REJECT_DUPLICATES, &err);
    if (!json_is_object(out->msg) || !json_is_string(json_object_get(out->msg, "t"))) {
        netd_ho_msg_free(out);
        return -EPROTO;
    }
    out->type = json_string_value(json_object_get(out->msg, "t"));
    out->payload = out->buf + 4 + tlen;
    out->plen = (size_t)n - 4 - tlen;
    return 0;
}

void netd_ho_msg_free(netd_ho_msg_t *m)
{
    for (int i = 0; i < m->nfds; i++)
        if (m->fds[i] >= 0)
            close(m->fds[i]);
    json_decref(m->msg);
    free(m->buf);
    memset(m, 0, sizeof(*m));
}
