/* SPDX-License-Identifier: MIT */
/*
 * The handle base (nd__handle_*) that servers and sockets embed: membership in the loop's
 * handle list, deferred work bits, the loop's alive count, and the reference count.
 */
#include "internal.h"

void nd__handle_init(nd__handle_t *h, nd_loop_t *loop, uint8_t kind)
{
    h->loop = loop;
    h->kind = kind;
    h->user_ref = true;
    h->owned = true;
    h->refcnt = 1;
    TAILQ_INSERT_TAIL(&loop->handles, h, link);
    loop->nhandles++;
}

void nd__handle_fini(nd__handle_t *h)
{
    TAILQ_REMOVE(&h->loop->handles, h, link);
    h->loop->nhandles--;
    nd__emitter_free(&h->em);
}

void nd__handle_pend(nd__handle_t *h, uint32_t bits)
{
    if (!bits)
        return;
    if (!h->pending) {
        TAILQ_INSERT_TAIL(&h->loop->pending, h, pending_link);
        h->loop->npending++;
    }
    h->pending |= bits;
    nd__loop_arm_pending(h->loop);
}

void nd__handle_unpend(nd__handle_t *h, uint32_t bits)
{
    if (!h->pending)
        return;
    h->pending &= ~bits;
    if (!h->pending) {
        TAILQ_REMOVE(&h->loop->pending, h, pending_link);
        h->loop->npending--;
    }
}

void nd__handle_set_active(nd__handle_t *h, bool active)
{
    nd__handle_set_active_pinned(h, active, false);
}

void nd__handle_set_active_pinned(nd__handle_t *h, bool active, bool pinned)
{
    bool want = (active && h->user_ref) || pinned;
    if (want != h->counted) {
        h->counted = want;
        h->loop->alive += want ? 1 : -1;
    }
}

void nd__handle_retain(nd__handle_t *h)
{
    h->refcnt++;
}

void nd__handle_release(nd__handle_t *h)
{
    if (--h->refcnt > 0)
        return;
    nd__handle_unpend(h, h->pending);
    nd__handle_set_active(h, false);
    if (h->kind == ND__SERVER)
        nd__server_free((nd_server_t *)h);
    else
        nd__socket_free((nd_socket_t *)h);
}
