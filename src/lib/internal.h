/*
 * Internal tier of libnetd (nd__ prefix): the handle base shared by servers and sockets,
 * the emitter, the loop's pending queue and ref accounting, and the struct layouts.
 */
#ifndef ND_INTERNAL_H
#define ND_INTERNAL_H

#include "config.h"

#include <netd/net.h>

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "encoding.h"

#define ND_EXPORT __attribute__((visibility("default")))

#define ND__DEFAULT_BACKLOG 511
#define ND__READ_CHUNK 65536     /* one read; Node's slab size */
#define ND__READS_PER_WAKE 8     /* fairness cap for reads per readiness callback */
#define ND__ACCEPTS_PER_WAKE 64  /* fairness cap for accepts per readiness callback */

/* ------------------------------------------------------------------------- errors */

typedef struct nd__error_store {
    nd_error_t err;
    char address[108];
    char hostname[256];
    char message[400];
} nd__error_store_t;

void nd__error_set(nd__error_store_t *st, int code, const char *syscall, const char *address,
                   int port, const char *hostname);

/* ------------------------------------------------------------------------ emitter */

typedef struct nd__listener {
    nd_listener_fn fn;
    void *arg;
    uint8_t type;
    bool once;
    bool dead; /* removed while an emit was running; compacted afterwards */
} nd__listener_t;

typedef struct nd__emitter {
    nd__listener_t *v;
    unsigned n, cap;
    unsigned depth; /* nested emits in progress */
    uint32_t has;   /* bit per event type with at least one live listener */
} nd__emitter_t;

int nd__emitter_on(nd__emitter_t *em, nd_event_type_t type, nd_listener_fn fn, void *arg,
                   bool once);
int nd__emitter_off(nd__emitter_t *em, nd_event_type_t type, nd_listener_fn fn, void *arg);
/* Calls every live listener of ev->type in order; listeners added meanwhile wait for the
 * next emit. The caller guards the emitting object's lifetime. */
void nd__emit(nd__emitter_t *em, void *self, const nd_event_t *ev);
void nd__emitter_free(nd__emitter_t *em);
static inline bool nd__emitter_has(const nd__emitter_t *em, nd_event_type_t t)
{
    return (em->has >> t) & 1u;
}

/* ------------------------------------------------------------------------- handles */

enum nd__kind { ND__SERVER = 1, ND__SOCKET = 2 };

typedef struct nd__handle nd__handle_t;

struct nd__handle {
    nd_loop_t *loop;
    uint8_t kind;
    bool user_ref;   /* ref()/unref() */
    bool counted;    /* currently counted in loop->alive */
    bool owned;      /* the library's reference: dropped after 'close' has run */
    unsigned refcnt; /* owned + holds + dispatch guards; freed at 0 */
    uint32_t pending; /* kind-specific bits of deferred work */
    nd__emitter_t em;
    void *data;
    TAILQ_ENTRY(nd__handle) link;         /* loop->handles */
    TAILQ_ENTRY(nd__handle) pending_link; /* loop->pending while pending != 0 */
};

TAILQ_HEAD(nd__handle_list, nd__handle);

void nd__handle_init(nd__handle_t *h, nd_loop_t *loop, uint8_t kind);
/* Unlinks from the loop and frees the listeners; the kind's free calls it. */
void nd__handle_fini(nd__handle_t *h);
/* Schedules deferred work bits; processed on a later turn by the kind's process fn. */
void nd__handle_pend(nd__handle_t *h, uint32_t bits);
void nd__handle_unpend(nd__handle_t *h, uint32_t bits);
/* Recomputes whether the handle keeps the loop alive. */
void nd__handle_set_active(nd__handle_t *h, bool active);
void nd__handle_retain(nd__handle_t *h);
/* Drops a reference; frees the handle when none is left. */
void nd__handle_release(nd__handle_t *h);

void nd__server_process(nd_server_t *s, uint32_t bits);
void nd__socket_process(nd_socket_t *s, uint32_t bits);
void nd__server_free(nd_server_t *s);
void nd__socket_free(nd_socket_t *s);

/* ---------------------------------------------------------------------------- loop */

struct evdns_base;
typedef struct nd__defer nd__defer_t;
struct nd__defer {
    void (*fn)(void *arg);
    void *arg;
    STAILQ_ENTRY(nd__defer) link;
};

struct nd_loop {
    struct event_base *base;
    struct event pending_ev; /* activated whenever handles or defers are pending */
    bool pending_armed;
    bool stop;
    bool running;
    bool freeing;
    int alive;     /* active ref'd handles + application refs */
    int nhandles;
    struct nd__handle_list handles;
    struct nd__handle_list pending;
    unsigned npending;
    STAILQ_HEAD(, nd__defer) defers;
    struct evdns_base *dns;
    char nameserver[64];
    unsigned char *scratch; /* ND__READ_CHUNK bytes for reads: no allocation per read */
};

void nd__loop_arm_pending(nd_loop_t *loop);
/* The loop's resolver, created on first use. NULL when out of memory. */
struct evdns_base *nd__loop_dns(nd_loop_t *loop);

/* --------------------------------------------------------------------- socket addr */

typedef union nd__sockaddr {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
    struct sockaddr_un un;
    struct sockaddr_storage ss;
} nd__sockaddr_t;

/* Fills an nd_address_t from a sockaddr. */
void nd__address_from(nd_address_t *out, const struct sockaddr *sa, socklen_t len);
/* Parses an IP literal with a port into a sockaddr. Returns its length, or 0 if `ip` is not
 * an IP literal of the given family (0 = either). */
socklen_t nd__sockaddr_ip(nd__sockaddr_t *out, const char *ip, int port, int family);
/* A unix sockaddr for path. Returns its length, or -ENAMETOOLONG. */
int nd__sockaddr_unix(nd__sockaddr_t *out, const char *path);
int nd__set_nonblock_cloexec(int fd);

/* Called by a socket's close when it belonged to a server: the count drops after 'close'
 * has run. */
void nd__server_connection_closed(nd_server_t *s);

#endif

/* ------------------------------------------------------------------------ resolver */

/* Resolves a host name to one IP literal. The callback always runs on a later loop turn
 * (never from inside nd__resolve_start), with err 0 and the address, or ND_ENOTFOUND /
 * ND_EDNS. IP literals and "localhost" are answered without a query. */
typedef void (*nd__resolve_cb)(void *arg, int err, const char *ip, int family);
typedef struct nd__resolve nd__resolve_t;
nd__resolve_t *nd__resolve_start(nd_loop_t *loop, const char *host, int family,
                                 nd__resolve_cb cb, void *arg);
/* The callback will not run. Safe until the callback has run. */
void nd__resolve_cancel(nd__resolve_t *r);

/* A socket for a descriptor accept4() returned on server s; NULL when out of memory. */
nd_socket_t *nd__socket_accepted(nd_server_t *s, int fd, bool allow_half_open,
                                 const struct sockaddr *peer, socklen_t peerlen);
/* Starts reading on a socket just handed to the application. */
void nd__socket_start(nd_socket_t *sock);
