/* SPDX-License-Identifier: MIT */
/*
 * Parsing one control request line (CONTROL.md "Envelope"): JSON with duplicate keys
 * refused, the envelope, and every argument checked against the command table. No I/O,
 * so the fuzzer drives exactly what the control socket runs.
 */
#include "config.h"

#include "request.h"

#include <stdio.h>
#include <string.h>

/* Replaces every byte that is not part of valid UTF-8 with '?': jansson's error text can
 * quote half a character, and a reply must be valid JSON text. */
static void utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        int n = *p < 0x80             ? 1
                : (*p & 0xe0) == 0xc0 ? 2
                : (*p & 0xf0) == 0xe0 ? 3
                : (*p & 0xf8) == 0xf0 ? 4
                                      : 0;
        int ok = n > 0 && !(n == 2 && *p < 0xc2);
        for (int i = 1; ok && i < n; i++)
            ok = (p[i] & 0xc0) == 0x80;
        if (ok && n == 3) /* no overlong forms, no surrogates */
            ok = !(p[0] == 0xe0 && p[1] < 0xa0) && !(p[0] == 0xed && p[1] >= 0xa0);
        if (ok && n == 4)
            ok = !(p[0] == 0xf0 && p[1] < 0x90) && !(p[0] == 0xf4 && p[1] >= 0x90) && p[0] <= 0xf4;
        if (!ok) {
            *p++ = '?';
            continue;
        }
        p += n;
    }
}

static int fail(netd_request_t *r, const char *code, const char *fmt, const char *a, const char *b)
{
    r->code = code;
    snprintf(r->message, sizeof(r->message), fmt, a, b);
    utf8_sanitize(r->message); /* %.200s may cut a name inside a character */
    return -1;
}

int netd_request_parse(const char *line, size_t len, netd_request_t *r)
{
    memset(r, 0, sizeof(*r));
    json_error_t jerr;
    /* Duplicate keys are refused: a request must mean one thing. */
    r->req = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!r->req) {
        r->code = NETD_EPARSE;
        snprintf(r->message, sizeof(r->message), "line %d, column %d: %s", jerr.line, jerr.column,
                 jerr.text);
        utf8_sanitize(r->message);
        return -1;
    }
    if (!json_is_object(r->req))
        return fail(r, NETD_EREQUEST, "a request is a JSON object%s%s", "", "");
    r->id = json_object_get(r->req, "id");
    json_t *cmdv = json_object_get(r->req, "cmd");
    if (!json_is_string(cmdv))
        return fail(r, NETD_EREQUEST, "\"cmd\" must be a string naming a command%s%s", "", "");
    r->cmd = netd_command_find(json_string_value(cmdv));
    if (!r->cmd)
        return fail(r, NETD_ECOMMAND, "unknown command \"%.200s\"%s (see \"help\")",
                    json_string_value(cmdv), "");
    const char *key;
    json_t *v;
    json_object_foreach(r->req, key, v) {
        if (strcmp(key, "cmd") == 0)
            continue;
        const netd_arg_t *a = netd_command_arg(r->cmd, key);
        if (!a)
            return fail(r, NETD_EARG, "%s: unknown argument \"%.200s\"", r->cmd->name, key);
        if (!netd_arg_accepts(a->type, v))
            return fail(r, NETD_EARG, "%.200s: must be %s", key, netd_argtype_name(a->type));
    }
    for (const netd_arg_t *a = r->cmd->args; a->name; a++)
        if (a->required && !json_object_get(r->req, a->name))
            return fail(r, NETD_EARG, "%s: missing argument \"%s\"", r->cmd->name, a->name);
    return 0;
}

void netd_request_free(netd_request_t *r)
{
    json_decref(r->req);
    r->req = NULL;
    r->id = NULL;
}
