/* SPDX-License-Identifier: MIT */
/*
 * Event listeners of servers and sockets: several per event, called in the order they
 * were added, one-shot listeners, and removal that is safe from inside an emit.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

static void recompute_has(nd__emitter_t *em)
{
    em->has = 0;
    for (unsigned i = 0; i < em->n; i++)
        if (!em->v[i].dead)
            em->has |= 1u << em->v[i].type;
}

static void compact(nd__emitter_t *em)
{
    unsigned j = 0;
    for (unsigned i = 0; i < em->n; i++)
        if (!em->v[i].dead)
            em->v[j++] = em->v[i];
    em->n = j;
}

int nd__emitter_on(nd__emitter_t *em, nd_event_type_t type, nd_listener_fn fn, void *arg, bool once)
{
    if (!fn || (unsigned)type >= ND_EV__COUNT)
        return -EINVAL;
    if (em->n == em->cap) {
        /* A connection usually has two to four listeners for its whole life: grown one at
         * a time up to four, so an idle socket carries no empty slots; doubling after. */
        unsigned cap = em->cap == 0 ? 2 : em->cap < 4 ? em->cap + 1 : em->cap * 2;
        nd__listener_t *v = realloc(em->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        em->v = v;
        em->cap = cap;
    }
    em->v[em->n++] = (nd__listener_t){fn, arg, (uint8_t)type, once, false};
    em->has |= 1u << type;
    return 0;
}

int nd__emitter_off(nd__emitter_t *em, nd_event_type_t type, nd_listener_fn fn, void *arg)
{
    for (unsigned i = 0; i < em->n; i++) {
        nd__listener_t *l = &em->v[i];
        if (!l->dead && l->type == type && l->fn == fn && l->arg == arg) {
            l->dead = true;
            if (em->depth == 0)
                compact(em);
            recompute_has(em);
            return 0;
        }
    }
    return -ENOENT;
}

void nd__emit(nd__emitter_t *em, void *self, const nd_event_t *ev)
{
    if (!nd__emitter_has(em, ev->type))
        return;
    unsigned n = em->n; /* listeners added during this emit run from the next one */
    bool removed = false;
    em->depth++;
    for (unsigned i = 0; i < n; i++) {
        /* em->v may move if a listener adds another: index, never hold a pointer. */
        if (em->v[i].dead || em->v[i].type != ev->type)
            continue;
        nd_listener_fn fn = em->v[i].fn;
        void *arg = em->v[i].arg;
        if (em->v[i].once) {
            em->v[i].dead = true;
            removed = true;
        }
        fn(self, ev, arg);
    }
    em->depth--;
    if (em->depth == 0) {
        compact(em);
        if (removed)
            recompute_has(em);
    }
}

void nd__emitter_free(nd__emitter_t *em)
{
    free(em->v);
    em->v = NULL;
    em->n = em->cap = 0;
    em->has = 0;
}
