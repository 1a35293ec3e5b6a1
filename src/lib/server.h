/* SPDX-License-Identifier: MIT */
/*
 * What server.c and group.c share and nothing else sees: the server's layout and states,
 * the group's, and the calls each makes into the other.
 */
#ifndef ND_SERVER_H
#define ND_SERVER_H

#include "internal.h"

enum server_state {
    SRV_IDLE,      /* never listened, or closed */
    SRV_RESOLVING, /* listen() on a host name: waiting for the address */
    SRV_LISTENING, /* bound; 'listening' may still be pending */
    SRV_FAILED,    /* the listen attempt failed: its 'error' is pending */
    SRV_CLOSING    /* stopped accepting; 'close' waits for the last connection */
};

enum server_pending {
    SP_LISTENING = 1u << 0,
    SP_ERROR = 1u << 1, /* listen failure: 'error' (and nothing after it, as in Node) */
    SP_CLOSE = 1u << 2,
    SP_COUNT = 1u << 3, /* getConnections callbacks */
};

typedef struct count_req {
    nd_count_fn cb;
    void *arg;
    STAILQ_ENTRY(count_req) link;
} count_req_t;

struct nd_server {
    nd__handle_t h;
    enum server_state state;
    int fd;
    bool allow_half_open;
    bool accepting;       /* accept_ev is added */
    bool unlink_on_close; /* we created the unix socket file: dirfd, base, dev, ino name it */
    bool ipv6_only;       /* "::" accepts IPv6 clients only */
    bool close_owed;      /* SP_CLOSE is pending: 'close' is emitted even if listen() came since */
    /* Between nd_server_export and its abort: never accepts, whatever frees a slot or
     * fires (a destroyed connection, the backoff timer, a group's resume), or connections
     * the other process should take would be accepted here and lost with this one. */
    bool exported;
    int max_connections;
    int nconn;      /* live connections: lowered when one is destroyed */
    int nopen;      /* connections whose 'close' has not run yet: a closing server waits for 0 */
    int dirfd;      /* the directory our unix socket file was created in, or -1 */
    dev_t file_dev; /* ... and that file, so close removes it and nothing else */
    ino_t file_ino;
    size_t base; /* offset of the file's name in path */
    int backlog;
    int port; /* requested, for errors */
    char host[256];
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct event accept_ev;
    struct event backoff_ev;
    unsigned backoff_ms;
    nd__resolve_t *resolve;
    nd__error_store_t *err; /* allocated on the first listen failure */
    STAILQ_HEAD(, count_req) counts;
    uint64_t accepted_total, rejected_total, accept_paused_total;
    int fd_ceiling;      /* accept pauses for descriptors >= this (0: none) */
    nd__group_t *group;  /* NULL for a plain server */
    unsigned accept_gen; /* a worker_accepts acceptor: the listen its descriptor is from */
    int index;           /* worker-side server: its member index; -1 otherwise */
};

typedef struct group_member group_member_t;

/* A request to one member that names nothing but the member: create its server, free it,
 * resume accepting, stop listening. Create, free and resume are embedded in the member
 * (posting them cannot fail); a stop is allocated with the listen it undoes. */
typedef struct member_req {
    nd__msg_t node;
    nd__group_t *g;
    int index;
} member_req_t;

struct group_member {
    nd_loop_t *loop;
    nd_server_t *server;  /* the worker-side server, on `loop`'s thread */
    _Atomic int64_t live; /* live connections of the group held by this member */
    member_req_t create;  /* posted once, by nd_server_new_group */
    member_req_t free;    /* posted once, when the owner is freed */
    member_req_t resume;  /* posted while resume_queued is false: one in flight at most */
    _Atomic bool resume_queued;
    member_req_t *unlisten; /* owner thread: the stop for the member's last listen, made
                               with it so that close cannot fail to send it; or NULL */
};

/* The owner's "look again" (a closing group's last connection closed, or a slot came free
 * for a listener out of descriptors): embedded in the group, one in flight at most. */
typedef struct owner_check {
    nd__msg_t node;
    _Atomic bool queued;
} owner_check_t;

/* A server group: the owner-side server plus one worker-side server per member loop. The
 * atomics are the only state shared between threads; everything else of a member is
 * touched on that member's thread only, and the owner fields on the owner's thread. */
struct nd__group {
    nd_server_t *owner; /* owner thread only; NULL once the owner is freed */
    nd_loop_t *owner_loop;
    nd_balance_t balance;
    int n;
    group_member_t *m;
    nd_worker_init_fn init;
    void *init_arg;
    bool allow_half_open;
    bool ipv6_only;
    _Atomic unsigned rr_next; /* the acceptor's, and the owner's when it closes */
    int rp_waiting, rp_err;   /* members' listen replies still due, first failure */
    bool shared;              /* worker_accepts: the first member accepts for the group */
    /* worker_accepts: the listen generation the acceptor may accept for, 0 for none (closed,
     * or exported by nd_server_export). The acceptor holds accept_lock around a wake's
     * accepts and posts, so the owner, once it set this under the lock, knows that every
     * connection accepted before is posted, and that no more will be. */
    pthread_mutex_t accept_lock;
    _Atomic unsigned accept_gen;
    bool owner_accepts;       /* owner thread: the owner's loop accepts (the default, or the
                           acceptor could not take the listener) */
    unsigned listen_gen;      /* replies of an older listen attempt are ignored */
    _Atomic int64_t live;     /* every live connection of the group, wherever it is */
    _Atomic int64_t unclosed; /* connections whose 'close' has not run: a closing owner waits */
    _Atomic int max;          /* maxConnections, read by reuseport workers */
    _Atomic int fd_ceiling;   /* descriptor reserve, read by reuseport workers */
    _Atomic bool closing;
    _Atomic bool accept_paused;
    _Atomic uint64_t accepted, rejected, handoff_failed, paused_total;
    owner_check_t check;
    _Atomic int refs; /* the owner, each worker-side server, each message in flight */
};

/* One accepted connection on its way to a worker. A unix peer keeps only its family,
 * which is all a socket reads of it. */
typedef struct handoff_conn {
    int fd;
    socklen_t plen;
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } peer;
} handoff_conn_t;

/* The owner-side server of a group (not a worker-side one, not a plain server). */
static inline bool nd__group_is_owner(const nd_server_t *s)
{
    return s->group && s->index < 0;
}

/* server.c, for the group's messages (each on the thread of the server it is given). */
void nd__server_update_active(nd_server_t *s);
void nd__server_fail_listen(nd_server_t *s, int code, const char *syscall, const char *address,
                            int port);
void nd__server_start_accepting(nd_server_t *s);
void nd__server_stop_accepting(nd_server_t *s);
int nd__server_check_can_listen(nd_server_t *s);
void nd__server_restart(nd_server_t *s, int backlog);
void nd__server_maybe_finish_close(nd_server_t *s);
/* Gives an accepted descriptor to the application on s's loop: 'connection'. */
void nd__server_deliver(nd_server_t *s, int fd, const struct sockaddr *peer, socklen_t plen);

/* group.c, for the server (owner thread unless said). */
/* The owner is being freed: each member frees its server on its thread. */
void nd__group_owner_gone(nd__group_t *g);
/* Drops a reference (any thread); the group is freed with the last. */
void nd__group_release(nd__group_t *g);
/* Counts a connection accepted by member `index` (-1: the owner), or refuses it for
 * closing or maxConnections. Any accepting thread. */
bool nd__group_admit(nd__group_t *g, int index);
/* A connection of the group was destroyed, or never reached the application (any thread). */
void nd__group_uncount_live(nd__group_t *g, int index);
/* ... and its 'close' has run (any thread). */
void nd__group_uncount_open(nd__group_t *g);
/* An accepted connection that could not reach the application: closed, counted in
 * handoff_failed, and no longer holding a place in the group (any thread). */
void nd__group_handoff_lost(nd__group_t *g, int index, int fd);
/* The member that gets the next connection (the acceptor's thread). */
int nd__group_pick(nd__group_t *g);
/* Posts what one wake accepted to the members member[k] names (the acceptor's thread). */
void nd__group_hand_off(nd__group_t *g, const handoff_conn_t *conns, const int *member, int n);
/* worker_accepts: the first member accepts on a duplicate of s's descriptor. 0, or -1 when
 * it cannot be made or sent (the owner accepts instead). */
int nd__group_share_listener(nd_server_t *s);
/* worker_accepts: the acceptor stops at once and has posted all it took; and resumes. */
void nd__group_stop_acceptor(nd__group_t *g);
void nd__group_resume_acceptor(nd__group_t *g);
/* reuseport: the owner binds, every member listens with its own socket. */
void nd__group_listen_reuseport(nd_server_t *s, const char *ip, int port);
/* Every member that listens for the group stops. */
void nd__group_unlisten_members(nd__group_t *g);

#endif
