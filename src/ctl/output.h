/* SPDX-License-Identifier: MIT */
/*
 * netctl's rendering of replies for people: aligned tables, key/value lines, and the short
 * forms of addresses, handlers and durations. Knows the reply objects, never the socket.
 */
#ifndef NETCTL_OUTPUT_H
#define NETCTL_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <jansson.h>

/* ------------------------------------------------------------------------- tables */

typedef struct netctl_column {
    const char *header; /* printed in caps as given; NULL everywhere: no header line */
    bool numeric;       /* right-aligned */
} netctl_column_t;

typedef struct netctl_table netctl_table_t;

/* A table with ncols columns; cols must outlive it. */
netctl_table_t *netctl_table_new(const netctl_column_t *cols, size_t ncols);
/* Appends one cell (printf format) to the current row; a row ends after ncols cells.
 * Control characters become '?' so that a name cannot break the layout; an empty cell
 * prints as "-". */
void netctl_table_cell(netctl_table_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Column widths come from the data; the last column is not padded. */
void netctl_table_print(const netctl_table_t *t, FILE *out);
void netctl_table_free(netctl_table_t *t);

/* ------------------------------------------------------------------------ replies */

/* Each printer takes a whole reply ({"id":..,"ok":true,...}) and writes to stdout. */
typedef void (*netctl_printer_t)(const json_t *reply);

void netctl_print_result(const json_t *reply);  /* every result field as "key: value" */
void netctl_print_server(const json_t *reply);  /* reply.server as "key: value" */
void netctl_print_servers(const json_t *reply); /* reply.servers as a table */
void netctl_print_socket(const json_t *reply);  /* reply.socket as a one-row table */
void netctl_print_sockets(const json_t *reply); /* reply.sockets as a table */
void netctl_print_count(const json_t *reply);   /* reply.count alone */
void netctl_print_stats(const json_t *reply);   /* figures, then the per-thread table */
void netctl_print_metrics(const json_t *reply); /* reply.text raw */
void netctl_print_upgrade(const json_t *reply); /* who serves now, what it took over */
void netctl_print_reload(const json_t *reply);  /* added/removed/changed/kept/failed lines */

/* One `watch` event as a line: local time, event name, then key=value pairs. */
void netctl_print_event(const json_t *event);

#endif
