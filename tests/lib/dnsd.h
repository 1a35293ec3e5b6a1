/* SPDX-License-Identifier: MIT */
/*
 * A tiny DNS responder for tests: answers A and AAAA queries from a fixed table on a
 * UDP socket on 127.0.0.1, inside the test's own event loop, so resolver tests never
 * touch the system's DNS. Unknown names get NXDOMAIN.
 */
#ifndef ND_TEST_DNSD_H
#define ND_TEST_DNSD_H

#include <netd/net.h>

typedef struct th_dnsd th_dnsd_t;

/* Starts the responder on 127.0.0.1, a random UDP port, on loop's base. It does not keep
 * the loop alive. Also points the loop's resolver at it (nd_loop_set_nameserver). */
th_dnsd_t *th_dnsd_start(nd_loop_t *loop);
int th_dnsd_port(const th_dnsd_t *d);
/* Adds an answer: name (case-insensitive) -> IPv4 or IPv6 literal. */
void th_dnsd_add(th_dnsd_t *d, const char *name, const char *ip);
/* Queries received so far. */
int th_dnsd_queries(const th_dnsd_t *d);
/* Answer after delay_ms instead of at once (to test destroy during lookup). */
void th_dnsd_set_delay(th_dnsd_t *d, unsigned delay_ms);
void th_dnsd_free(th_dnsd_t *d);

#endif
