/* SPDX-License-Identifier: MIT */
/*
 * netd's configuration: the JSON file (CONTROL.md "Config file"), the arguments of a
 * `listen` (the same object as a config server entry), and their validation with
 * messages that name the bad field.
 */
#ifndef NETD_CONF_H
#define NETD_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <jansson.h>
#include <netd/net.h>

#include "handlers/handlers.h"

/* One server: exactly the arguments of `listen`. */
typedef struct netd_listen_spec {
    char *name;                 /* never NULL after parsing: defaults to "host:port" or the path */
    bool name_given;            /* false: named after the address (a `listen` on port 0 is
                             renamed after the port it bound) */
    int port;                   /* -1 when path or fd is used */
    char *host;                 /* NULL: all interfaces (0.0.0.0) */
    char *path;                 /* unix socket path (absolute after resolving), or NULL */
    int fd;                     /* -1, or an inherited descriptor number */
    char *fd_name;              /* fd given by LISTEN_FDNAMES name, or NULL */
    int backlog;                /* 511 default */
    netd_handler_cfg_t handler; /* default echo */
    bool allow_half_open;
    int max_connections;  /* 0 = none (null) */
    unsigned timeout_ms;  /* idle timeout, 0 = none */
    bool no_delay;        /* default true */
    int keep_alive_ms;    /* -1 = false (default), else ms */
    nd_balance_t balance; /* default leastconn */
    bool access_log;      /* one access-log line per closed connection */
    /* path only: the socket file's mode (-1: from the umask), owner and group */
    int sock_mode;
    char *sock_user, *sock_group; /* as given (names or numbers), or NULL */
    uid_t sock_uid;               /* (uid_t)-1: unchanged */
    gid_t sock_gid;               /* (gid_t)-1: unchanged */
    json_t *source;               /* the object as given (for reload comparison); owned */
} netd_listen_spec_t;

typedef struct netd_config {
    int threads;                  /* 0 = one per CPU */
    unsigned shutdown_timeout_ms; /* 30000 */
    char *control_path;           /* NULL: default path (or -s) */
    unsigned control_mode;        /* 0600 */
    char *control_group;          /* NULL */
    bool has_control_gid;
    unsigned control_gid;
    int control_max_clients;          /* 64 */
    unsigned control_idle_timeout_ms; /* 300000 */
    char **socket_dirs;               /* control.socketDirs, resolved; NULL: the control
                                   socket's own directory */
    size_t nsocket_dirs;
    size_t high_water_mark;    /* 1 MiB */
    size_t max_buffered_bytes; /* 16 MiB */
    unsigned stall_ms;         /* 30000 */
    char *metrics_host;        /* the HTTP /metrics endpoint: NULL when off */
    int metrics_port;          /* -1 when off; 0 picks a free port */
    char *access_log;          /* NULL: stderr (journald) */
    netd_listen_spec_t *servers;
    size_t nservers;
} netd_config_t;

/*
 * Parses one listen object (a config server entry or a `listen` request without its
 * "id"/"cmd" keys, which the caller removes or tells us to skip with `skip_envelope`).
 * base_dir resolves relative paths (NULL: keep as is). On error returns -1 and writes a
 * message naming the field ("servers[2].port: must be an integer 0-65535") into err;
 * field_prefix is put in front of field names ("servers[2]." or "").
 * Unknown keys are refused. Returns 0 on success.
 */
int netd_listen_spec_parse(const json_t *obj, const char *base_dir, const char *field_prefix,
                           bool skip_envelope, netd_listen_spec_t *out, char *err, size_t errlen);
void netd_listen_spec_free(netd_listen_spec_t *spec);
/* A deep copy (what reload keeps of the file as last loaded). Returns 0 or -ENOMEM. */
int netd_listen_spec_dup(const netd_listen_spec_t *src, netd_listen_spec_t *out);
/* The spec with every default spelled out, as `netd --check -v` prints it. New ref. */
json_t *netd_listen_spec_json(const netd_listen_spec_t *spec);
/* The handler as the Server object shows it: {"type":"echo","greeting":...}. New ref. */
json_t *netd_handler_describe(const netd_handler_cfg_t *h);
/* 1 when two specs describe the same server (reload leaves it alone). */
int netd_listen_spec_equal(const netd_listen_spec_t *a, const netd_listen_spec_t *b);

/* Loads and validates a config file. On error returns -1 with a message naming the file
 * and field in err. Relative paths resolve against the file's directory. */
int netd_config_load(const char *file, netd_config_t *out, char *err, size_t errlen);
/* The built-in default: no servers, default control path, defaults everywhere. */
void netd_config_default(netd_config_t *out);
void netd_config_free(netd_config_t *cfg);
/* The effective config with every default spelled out (`netd --check -v`, like nginx -T);
 * control_path is the path netd would use. New ref. */
json_t *netd_config_json(const netd_config_t *cfg, const char *control_path);

#endif
