/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: one control request line, exactly as the control socket hands it to
 * netd_request_parse (CONTROL.md "Envelope"), then what the daemon does with the outcome
 * short of running the command: an error reply or the id echoed back, serialised.
 *
 * Invariants checked (a violation traps, which libFuzzer reports as a crash):
 *   - success means a known command, an object request, and every argument of a known name;
 *   - failure means one of the documented request codes and a NUL-terminated message;
 *   - a reply with the echoed id always serialises.
 *
 * Built by `make fuzz` with src/daemon/request.c and src/common/protocol.c.
 */
#include "config.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int known_code(const char *code)
{
    static const char *const codes[] = {NETD_EPARSE, NETD_EREQUEST, NETD_ECOMMAND, NETD_EARG, NULL};
    for (int i = 0; codes[i]; i++)
        if (code && strcmp(code, codes[i]) == 0)
            return 1;
    return 0;
}

static void reply(json_t *id, const char *code, const char *message)
{
    json_t *r;
    if (code)
        r = json_pack("{s:O, s:b, s:{s:s, s:s}}", "id", id ? id : json_null(), "ok", 0, "error",
                      "code", code, "message", message);
    else
        r = json_pack("{s:O, s:b}", "id", id ? id : json_null(), "ok", 1);
    if (!r)
        __builtin_trap(); /* e.g. a message that is not UTF-8 */
    char *text = json_dumps(r, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        __builtin_trap();
    free(text);
    json_decref(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    netd_request_t r;
    int rc = netd_request_parse((const char *)data, size, &r);
    if (rc == 0) {
        if (!r.cmd || !json_is_object(r.req) || netd_command_find(r.cmd->name) != r.cmd)
            __builtin_trap();
        const char *key;
        json_t *v;
        json_object_foreach(r.req, key, v) {
            if (strcmp(key, "cmd") != 0 && !netd_command_arg(r.cmd, key))
                __builtin_trap(); /* an unknown argument got through */
        }
        for (const netd_arg_t *a = r.cmd->args; a->name; a++)
            if (a->required && !json_object_get(r.req, a->name))
                __builtin_trap(); /* a required argument is missing */
        reply(r.id, NULL, NULL);
    } else {
        if (!known_code(r.code) || memchr(r.message, '\0', sizeof(r.message)) == NULL)
            __builtin_trap();
        /* EPARSE carries no id (the line could not be read); the others may. */
        if (strcmp(r.code, NETD_EPARSE) == 0 && (r.req || r.id))
            __builtin_trap();
        reply(r.id, r.code, r.message);
    }
    netd_request_free(&r);
    if (r.req || r.id)
        __builtin_trap();
    return 0;
}
