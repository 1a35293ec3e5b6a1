/* SPDX-License-Identifier: MIT */
/*
 * netctl's output for people: the table printer (widths from the data, numbers
 * right-aligned) and one printer per kind of reply. --json never comes through here.
 */
#include "config.h"

#include "output.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

/* ------------------------------------------------------------------------- tables */

struct netctl_table {
    const netctl_column_t *cols;
    size_t ncols;
    char **cells; /* row-major; the last row may be partial */
    size_t ncells, cap;
};

netctl_table_t *netctl_table_new(const netctl_column_t *cols, size_t ncols)
{
    netctl_table_t *t = calloc(1, sizeof(*t));
    if (!t)
        abort();
    t->cols = cols;
    t->ncols = ncols;
    return t;
}

/* Bytes below 0x20 and DEL would move the cursor or end the line: a server name given
 * through `netctl call` may hold anything. */
static void sanitize(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

void netctl_table_cell(netctl_table_t *t, const char *fmt, ...)
{
    char *cell;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&cell, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    if (n == 0) {
        free(cell);
        cell = strdup("-");
        if (!cell)
            abort();
    }
    sanitize(cell);
    if (t->ncells == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->cells = realloc(t->cells, t->cap * sizeof(*t->cells));
        if (!t->cells)
            abort();
    }
    t->cells[t->ncells++] = cell;
}

/* Display width in columns: UTF-8 continuation bytes take none. (Wide CJK characters
 * would take two; names are not expected to hold them, and no locale is needed.) */
static size_t width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            w++;
    return w;
}

static void print_cell(FILE *out, const char *s, size_t colw, bool numeric, bool last)
{
    size_t pad = colw - width(s);
    if (numeric)
        fprintf(out, "%*s%s", (int)pad, "", s);
    else if (last)
        fputs(s, out);
    else
        fprintf(out, "%s%*s", s, (int)pad, "");
}

static void print_row(const netctl_table_t *t, FILE *out, const char *const *row, size_t n,
                      const size_t *colw)
{
    for (size_t c = 0; c < n; c++) {
        if (c > 0)
            fputs("  ", out);
        print_cell(out, row[c], colw[c], t->cols[c].numeric, c == n - 1);
    }
    fputc('\n', out);
}

void netctl_table_print(const netctl_table_t *t, FILE *out)
{
    size_t *colw = calloc(t->ncols, sizeof(*colw));
    const char **headers = calloc(t->ncols, sizeof(*headers));
    if (!colw || !headers)
        abort();
    bool has_header = false;
    for (size_t c = 0; c < t->ncols; c++) {
        headers[c] = t->cols[c].header ? t->cols[c].header : "";
        has_header |= t->cols[c].header != NULL;
        colw[c] = width(headers[c]);
    }
    for (size_t i = 0; i < t->ncells; i++) {
        size_t w = width(t->cells[i]);
        if (w > colw[i % t->ncols])
            colw[i % t->ncols] = w;
    }
    if (has_header)
        print_row(t, out, headers, t->ncols, colw);
    for (size_t i = 0; i < t->ncells; i += t->ncols) {
        size_t n = t->ncells - i < t->ncols ? t->ncells - i : t->ncols;
        print_row(t, out, (const char *const *)t->cells + i, n, colw);
    }
    free(headers);
    free(colw);
}

void netctl_table_free(netctl_table_t *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->ncells; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

/* ------------------------------------------------------------------ short forms */

/* "850ms", "12.3s", "4m05s", "2h03m", "3d04h": an age reads at a glance, and the exact
 * milliseconds stay one --json away. */
static void fmt_duration(char *buf, size_t len, json_int_t ms)
{
    if (ms < 0)
        snprintf(buf, len, "-");
    else if (ms < 1000)
        snprintf(buf, len, "%lldms", (long long)ms);
    else if (ms < 60000)
        snprintf(buf, len, "%lld.%llds", (long long)ms / 1000, (long long)ms % 1000 / 100);
    else if (ms < 3600000)
        snprintf(buf, len, "%lldm%02llds", (long long)ms / 60000, (long long)ms / 1000 % 60);
    else if (ms < 86400000)
        snprintf(buf, len, "%lldh%02lldm", (long long)ms / 3600000, (long long)ms / 60000 % 60);
    else
        snprintf(buf, len, "%lldd%02lldh", (long long)ms / 86400000, (long long)ms / 3600000 % 24);
}

/* host:port with an IPv6 host in brackets, as ss and URLs write it. */
static void fmt_hostport(char *buf, size_t len, const char *host, json_int_t port)
{
    if (strchr(host, ':'))
        snprintf(buf, len, "[%s]:%lld", host, (long long)port);
    else
        snprintf(buf, len, "%s:%lld", host, (long long)port);
}

/* A server's "address" object: {"address","family","port"} or {"path"}. */
static void fmt_address(char *buf, size_t len, const json_t *addr)
{
    const char *path = json_string_value(json_object_get(addr, "path"));
    const char *host = json_string_value(json_object_get(addr, "address"));
    const json_t *port = json_object_get(addr, "port");
    if (path)
        snprintf(buf, len, "%s", path);
    else if (host && json_is_integer(port))
        fmt_hostport(buf, len, host, json_integer_value(port));
    else
        snprintf(buf, len, "-");
}

/* A socket's end (prefix "remote" or "local"): host:port for TCP, else the address alone
 * (a unix path, or nothing for an unnamed unix peer). */
static void fmt_endpoint(char *buf, size_t len, const json_t *sock, const char *prefix)
{
    char key[32];
    snprintf(key, sizeof(key), "%sAddress", prefix);
    const char *host = json_string_value(json_object_get(sock, key));
    snprintf(key, sizeof(key), "%sPort", prefix);
    const json_t *port = json_object_get(sock, key);
    if (host && *host && json_is_integer(port))
        fmt_hostport(buf, len, host, json_integer_value(port));
    else
        snprintf(buf, len, "%s", host && *host ? host : "-");
}

/* The handler in the syntax of `netctl listen --handler`, without a banner's text (too
 * long for a column): echo, discard, banner, proxy:HOST:PORT, proxy:PATH. */
static void fmt_handler(char *buf, size_t len, const json_t *h)
{
    const char *type = json_string_value(json_object_get(h, "type"));
    const char *path = json_string_value(json_object_get(h, "path"));
    const char *host = json_string_value(json_object_get(h, "host"));
    const json_t *port = json_object_get(h, "port");
    char target[300];
    if (!type) {
        snprintf(buf, len, "-");
        return;
    }
    if (strcmp(type, "proxy") != 0) {
        snprintf(buf, len, "%s", type);
        return;
    }
    if (path)
        snprintf(target, sizeof(target), "%s", path);
    else if (json_is_integer(port))
        fmt_hostport(target, sizeof(target), host ? host : "127.0.0.1", json_integer_value(port));
    else
        snprintf(target, sizeof(target), "?");
    snprintf(buf, len, "proxy:%s", target);
}

/* ------------------------------------------------------------------ table cells */

/* A scalar field as a cell: "-" when missing or null, so a field that an older daemon
 * lacks leaves a visible gap rather than shifting the columns. */
static void cell_field(netctl_table_t *t, const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    if (json_is_integer(v))
        netctl_table_cell(t, "%lld", (long long)json_integer_value(v));
    else if (json_is_string(v))
        netctl_table_cell(t, "%s", json_string_value(v));
    else if (json_is_boolean(v))
        netctl_table_cell(t, "%s", json_is_true(v) ? "true" : "false");
    else
        netctl_table_cell(t, "-");
}

static void cell_duration(netctl_table_t *t, const json_t *obj, const char *key)
{
    char buf[32];
    const json_t *v = json_object_get(obj, key);
    fmt_duration(buf, sizeof(buf), json_is_integer(v) ? json_integer_value(v) : -1);
    netctl_table_cell(t, "%s", buf);
}

/* ------------------------------------------------------------------- key: value */

/* One value of a key/value listing. Objects other than the two known ones are shown as
 * compact JSON, so a field added to the protocol later is still printed. */
static void fmt_value(char *buf, size_t len, const char *key, const json_t *v)
{
    if (strcmp(key, "address") == 0 && json_is_object(v)) {
        fmt_address(buf, len, v);
    } else if (json_is_integer(v) && strlen(key) > 2 && strcmp(key + strlen(key) - 2, "Ms") == 0 &&
               json_integer_value(v) >= 1000) {
        char human[32];
        fmt_duration(human, sizeof(human), json_integer_value(v));
        snprintf(buf, len, "%lld (%s)", (long long)json_integer_value(v), human);
    } else if (json_is_integer(v)) {
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    } else if (json_is_real(v)) {
        snprintf(buf, len, "%g", json_real_value(v));
    } else if (json_is_string(v)) {
        snprintf(buf, len, "%s", json_string_value(v));
    } else if (json_is_boolean(v)) {
        snprintf(buf, len, "%s", json_is_true(v) ? "true" : "false");
    } else if (json_is_null(v)) {
        snprintf(buf, len, "none"); /* maxConnections: null means no limit */
    } else {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        snprintf(buf, len, "%s", s ? s : "?");
        free(s);
    }
}

/* Every field of obj as an aligned "key: value" line. Arrays are left to the caller (a
 * table reads better); the reply envelope (id, ok) is skipped when asked. */
static void print_fields(const json_t *obj, bool skip_envelope)
{
    static const netctl_column_t cols[] = {{NULL, false}, {NULL, false}};
    netctl_table_t *t = netctl_table_new(cols, 2);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        if (json_is_array(v))
            continue;
        if (skip_envelope && (strcmp(key, "id") == 0 || strcmp(key, "ok") == 0))
            continue;
        char val[4096];
        fmt_value(val, sizeof(val), key, v);
        netctl_table_cell(t, "%s:", key);
        netctl_table_cell(t, "%s", val);
    }
    netctl_table_print(t, stdout);
    netctl_table_free(t);
}

/* ------------------------------------------------------------------------ replies */

void netctl_print_result(const json_t *reply)
{
    print_fields(reply, true);
}

/* One line per list: "changed:  b, web" ("-" when empty); failures with their code. */
void netctl_print_reload(const json_t *reply)
{
    static const char *const lists[] = {"added", "removed", "changed", "kept", NULL};
    for (int k = 0; lists[k]; k++) {
        printf("%-9s", lists[k]);
        const json_t *arr = json_object_get(reply, lists[k]);
        size_t i;
        const json_t *name;
        if (json_array_size(arr) == 0)
            printf(" -");
        json_array_foreach(arr, i, name) {
            printf("%s%s", i ? ", " : " ", json_is_string(name) ? json_string_value(name) : "?");
        }
        putchar('\n');
    }
    const json_t *failed = json_object_get(reply, "failed");
    size_t i;
    const json_t *f;
    json_array_foreach(failed, i, f) {
        printf("failed:   %s (%s)\n", json_string_value(json_object_get(f, "name")),
               json_string_value(json_object_get(f, "code")));
    }
}

void netctl_print_upgrade(const json_t *reply)
{
    printf(
        "upgraded: pid %lld took over from pid %lld: %lld server(s), %lld socket(s) in %lld ms\n",
        (long long)json_integer_value(json_object_get(reply, "pid")),
        (long long)json_integer_value(json_object_get(reply, "previousPid")),
        (long long)json_integer_value(json_object_get(reply, "servers")),
        (long long)json_integer_value(json_object_get(reply, "sockets")),
        (long long)json_integer_value(json_object_get(reply, "ms")));
}

void netctl_print_server(const json_t *reply)
{
    print_fields(json_object_get(reply, "server"), false);
}

void netctl_print_servers(const json_t *reply)
{
    static const netctl_column_t cols[] = {
        {"ID", true},       {"NAME", false},    {"STATE", false},
        {"ADDRESS", false}, {"HANDLER", false}, {"BALANCE", false},
        {"CONNS", true},    {"ACCEPTED", true}, {"REJECTED", true},
    };
    netctl_table_t *t = netctl_table_new(cols, sizeof(cols) / sizeof(cols[0]));
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(reply, "servers"), i, s) {
        char buf[512];
        cell_field(t, s, "id");
        cell_field(t, s, "name");
        cell_field(t, s, "state");
        fmt_address(buf, sizeof(buf), json_object_get(s, "address"));
        netctl_table_cell(t, "%s", buf);
        fmt_handler(buf, sizeof(buf), json_object_get(s, "handler"));
        netctl_table_cell(t, "%s", buf);
        cell_field(t, s, "balance");
        cell_field(t, s, "connections");
        cell_field(t, s, "acceptedTotal");
        cell_field(t, s, "rejectedTotal");
    }
    netctl_table_print(t, stdout);
    netctl_table_free(t);
}

/* SEND-Q is the output queued in netd (bufferSize), as ss shows the kernel's. */
static void print_socket_table(const json_t *sockets)
{
    static const netctl_column_t cols[] = {
        {"ID", true},      {"SERVER", false}, {"THREAD", true}, {"REMOTE", false},
        {"LOCAL", false},  {"STATE", false},  {"ROLE", false},  {"READ", true},
        {"WRITTEN", true}, {"SEND-Q", true},  {"AGE", true},    {"IDLE", true},
    };
    netctl_table_t *t = netctl_table_new(cols, sizeof(cols) / sizeof(cols[0]));
    size_t i;
    json_t *s;
    json_array_foreach(sockets, i, s) {
        char buf[512];
        cell_field(t, s, "id");
        /* The name; a daemon from before serverName gives the id. */
        cell_field(t, s,
                   json_is_string(json_object_get(s, "serverName")) ? "serverName" : "server");
        cell_field(t, s, "thread");
        fmt_endpoint(buf, sizeof(buf), s, "remote");
        netctl_table_cell(t, "%s", buf);
        fmt_endpoint(buf, sizeof(buf), s, "local");
        netctl_table_cell(t, "%s", buf);
        cell_field(t, s, "state");
        cell_field(t, s, "role");
        cell_field(t, s, "bytesRead");
        cell_field(t, s, "bytesWritten");
        cell_field(t, s, "bufferSize");
        cell_duration(t, s, "ageMs");
        cell_duration(t, s, "idleMs");
    }
    netctl_table_print(t, stdout);
    netctl_table_free(t);
}

void netctl_print_socket(const json_t *reply)
{
    json_t *one = json_array();
    json_array_append(one, json_object_get(reply, "socket"));
    print_socket_table(one);
    json_decref(one);
}

void netctl_print_sockets(const json_t *reply)
{
    const json_t *sockets = json_object_get(reply, "sockets");
    const json_t *total = json_object_get(reply, "total");
    print_socket_table(sockets);
    /* On stderr, so that `netctl sockets | wc -l` still counts rows. */
    if (json_is_integer(total) && (size_t)json_integer_value(total) > json_array_size(sockets))
        fprintf(stderr, "netctl: showing %zu of %lld sockets (see --limit)\n",
                json_array_size(sockets), (long long)json_integer_value(total));
}

void netctl_print_count(const json_t *reply)
{
    const json_t *count = json_object_get(reply, "count");
    if (json_is_integer(count))
        printf("%lld\n", (long long)json_integer_value(count));
}

void netctl_print_stats(const json_t *reply)
{
    static const netctl_column_t cols[] = {
        {"THREAD", true},   {"CONNS", true}, {"ACCEPTED", true},
        {"HANDOFFS", true}, {"READ", true},  {"WRITTEN", true},
    };
    print_fields(reply, true);
    const json_t *threads = json_object_get(reply, "threads");
    if (!json_is_array(threads))
        return;
    netctl_table_t *t = netctl_table_new(cols, sizeof(cols) / sizeof(cols[0]));
    size_t i;
    json_t *th;
    json_array_foreach(threads, i, th) {
        cell_field(t, th, "id");
        cell_field(t, th, "connections");
        cell_field(t, th, "acceptedTotal");
        cell_field(t, th, "handoffsTotal");
        cell_field(t, th, "bytesReadTotal");
        cell_field(t, th, "bytesWrittenTotal");
    }
    putchar('\n');
    netctl_table_print(t, stdout);
    netctl_table_free(t);
}

void netctl_print_metrics(const json_t *reply)
{
    const char *text = json_string_value(json_object_get(reply, "text"));
    if (!text)
        return;
    fputs(text, stdout);
    if (*text && text[strlen(text) - 1] != '\n')
        putchar('\n');
}

/* ------------------------------------------------------------------------ events */

/* Local time with milliseconds: events arrive in bursts, and seconds alone would not
 * order them for a reader. */
static void print_timestamp(void)
{
    struct timeval tv;
    struct tm tm;
    char buf[32];
    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
    printf("%s.%03ld", buf, (long)tv.tv_usec / 1000);
}

/* A value that a shell user can read and that stays one word: strings with spaces,
 * quotes or control characters are written as JSON strings. */
static void print_event_value(const char *key, const json_t *v)
{
    const char *s = json_string_value(v);
    if (s && *s && strcspn(s, " \t\"\\=") == strlen(s)) {
        char *copy = strdup(s);
        if (!copy)
            abort();
        sanitize(copy);
        fputs(copy, stdout);
        free(copy);
        return;
    }
    if (json_is_object(v) && strcmp(key, "address") == 0) {
        char buf[512];
        fmt_address(buf, sizeof(buf), v);
        fputs(buf, stdout);
        return;
    }
    char *dump = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    fputs(dump ? dump : "?", stdout);
    free(dump);
}

void netctl_print_event(const json_t *event)
{
    const char *name = json_string_value(json_object_get(event, "event"));
    print_timestamp();
    printf(" %s", name ? name : "?");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)event, key, v) {
        if (strcmp(key, "event") == 0)
            continue;
        printf(" %s=", key);
        print_event_value(key, v);
    }
    putchar('\n');
}
