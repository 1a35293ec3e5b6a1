/* SPDX-License-Identifier: MIT */
/*
 * One control request, parsed and checked against the command table (request.c).
 */
#ifndef NETD_REQUEST_H
#define NETD_REQUEST_H

#include <jansson.h>

#include "protocol.h"

typedef struct netd_request {
    json_t *req;               /* the object (owned), or NULL if the line was not JSON */
    json_t *id;                /* borrowed from req: echoed back; NULL when unparsed */
    const netd_command_t *cmd; /* the table row */
    const char *code;          /* on failure: EPARSE, EREQUEST, ECOMMAND, EARG */
    char message[512];
} netd_request_t;

/* 0 when the request may run; -1 with code and message set otherwise. Either way, free
 * with netd_request_free. */
int netd_request_parse(const char *line, size_t len, netd_request_t *r);
void netd_request_free(netd_request_t *r);

#endif
