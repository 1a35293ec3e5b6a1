/* SPDX-License-Identifier: MIT */
/*
 * The handover channel of a live upgrade (handover.c): framed packets with descriptors
 * on a SOCK_SEQPACKET socketpair. Blocking with a deadline: both processes are paused at
 * the points where they talk over it.
 */
#ifndef NETD_HANDOVER_H
#define NETD_HANDOVER_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

/* The upgrade protocol both sides speak ("ready" says it; another one is refused). */
#define NETD_UPGRADE_PROTO 1
/* Records' bytes per packet (with the JSON header well under NETD_HO_MAX_PACKET). */
#define NETD_HO_PAYLOAD_MAX ((size_t)96 * 1024)
/* At most this many descriptors in one packet (the kernel's SCM_MAX_FD is 253). */
#define NETD_HO_MAX_FDS 253
/* At most this many bytes in one packet (header, JSON and payload). */
#define NETD_HO_MAX_PACKET ((size_t)1024 * 1024)

/* One received packet. Descriptors not taken (set to -1 by the taker) are closed by
 * netd_ho_msg_free. */
typedef struct netd_ho_msg {
    json_t *msg;         /* the JSON header: an object with a string "t" */
    const char *type;    /* msg.t */
    const char *payload; /* raw bytes after the JSON */
    size_t plen;
    int fds[NETD_HO_MAX_FDS];
    int nfds;
    char *buf;
} netd_ho_msg_t;

uint64_t netd_now_ms(void);

/* A new channel: fds[0] for this process, fds[1] for the other (both CLOEXEC). */
int netd_ho_pair(int fds[2]);
/* Sends one packet (msg stolen). 0, -ETIMEDOUT, -EPIPE (the other end is gone), -EMSGSIZE. */
int netd_ho_send(int fd, json_t *msg, const void *payload, size_t plen, const int *fds, int nfds,
                 uint64_t deadline_ms);
/* Receives one packet. 0, -ETIMEDOUT, -EPIPE, -EPROTO (not ours). */
int netd_ho_recv(int fd, netd_ho_msg_t *out, uint64_t deadline_ms);
void netd_ho_msg_free(netd_ho_msg_t *m);

#endif
