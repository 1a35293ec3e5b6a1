/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: netd's configuration parser.
 *
 *   1. The input as JSON (duplicate keys refused, as netd reads it) given to
 *      netd_listen_spec_parse: as a config server entry and as a `listen` request (with its
 *      envelope skipped), with and without a base directory for relative paths.
 *   2. The input as a whole config file given to netd_config_load, through a memfd and its
 *      /proc/self/fd path (nothing touches the disk).
 *
 * Invariants checked (a violation traps): a refusal always comes with a message naming
 * something; an accepted spec has a name, equals itself, describes its handler, and frees
 * cleanly; an accepted config has sane numbers.
 *
 * Built by `make fuzz` with src/daemon/conf.c and src/lib/isip.c.
 */
#include "config.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_spec(const json_t *obj, const char *base, const char *prefix, bool envelope)
{
    netd_listen_spec_t spec;
    char err[512];
    memset(err, 0, sizeof(err));
    if (netd_listen_spec_parse(obj, base, prefix, envelope, &spec, err, sizeof(err)) == 0) {
        if (!spec.name || !*spec.name || !netd_listen_spec_equal(&spec, &spec))
            __builtin_trap();
        /* Exactly one address. */
        int n = (spec.port >= 0) + (spec.path != NULL) + (spec.fd >= 0 || spec.fd_name != NULL);
        if (n != 1 || spec.port > 65535 || spec.backlog < 1)
            __builtin_trap();
        if (spec.path && strlen(spec.path) > 107)
            __builtin_trap(); /* must fit sun_path */
        json_t *h = netd_handler_describe(&spec.handler);
        if (!h)
            __builtin_trap();
        char *text = json_dumps(h, JSON_COMPACT);
        if (!text)
            __builtin_trap();
        free(text);
        json_decref(h);
        netd_listen_spec_free(&spec);
    } else {
        if (err[0] == '\0' || memchr(err, '\0', sizeof(err)) == NULL)
            __builtin_trap();
        /* A refused spec is left empty: freeing it again is harmless. */
        netd_listen_spec_free(&spec);
    }
}

static void check_file(const uint8_t *data, size_t size)
{
    static int fd = -1;
    if (fd < 0)
        fd = memfd_create("netd-fuzz.json", MFD_CLOEXEC);
    if (fd < 0)
        return;
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        return;
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    netd_config_t cfg;
    char err[1024];
    memset(err, 0, sizeof(err));
    if (netd_config_load(path, &cfg, err, sizeof(err)) == 0) {
        if (cfg.threads < 0 || cfg.control_max_clients < 1 || cfg.high_water_mark < 1 ||
            cfg.max_buffered_bytes < 1 || (cfg.nservers && !cfg.servers))
            __builtin_trap();
        for (size_t i = 0; i < cfg.nservers; i++)
            for (size_t j = 0; j < i; j++)
                if (strcmp(cfg.servers[i].name, cfg.servers[j].name) == 0)
                    __builtin_trap(); /* names are unique */
        netd_config_free(&cfg);
    } else {
        if (err[0] == '\0' || memchr(err, '\0', sizeof(err)) == NULL)
            __builtin_trap();
        /* The message starts with the file it is about. */
        if (strncmp(err, path, strlen(path)) != 0)
            __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *obj = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (obj) {
        check_spec(obj, "/srv/netd", "servers[0].", false);
        check_spec(obj, NULL, "", true);
        json_decref(obj);
    }
    check_file(data, size);
    return 0;
}
