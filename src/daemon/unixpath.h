/* SPDX-License-Identifier: MIT */
/*
 * The daemon's unix socket files (unixpath.c): creation with their final mode, owner and
 * group, the leftover rule, control.socketDirs, and removal of only what netd made.
 * Main thread only.
 */
#ifndef NETD_UNIXPATH_H
#define NETD_UNIXPATH_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* What a non-blocking connect to a path finds (it never waits). */
enum netd_unix_peer {
    NETD_PEER_NONE,    /* no socket there (or not one we can reach) */
    NETD_PEER_REFUSED, /* a socket file nobody listens on: a leftover, perhaps */
    NETD_PEER_ANSWERS, /* a listener accepted at once */
    NETD_PEER_BUSY     /* a listener whose backlog is full: it does not answer at once */
};
enum netd_unix_peer netd_unix_probe(const char *path);

typedef struct netd_unix_opts {
    int mode;                   /* -1: from the umask */
    uid_t uid;                  /* (uid_t)-1: unchanged */
    gid_t gid;                  /* (gid_t)-1: unchanged */
    const char *const *allowed; /* NULL: a trusted path (the config file); else the file's
                                   directory must be one of these or below one */
    size_t nallowed;
    bool via_rename; /* bind under a temporary name, then rename into place */
} netd_unix_opts_t;

/* A socket file netd made: removed by netd_unix_file_remove while it still is that file. */
typedef struct netd_unix_file netd_unix_file_t;

/*
 * Creates a unix stream socket bound at path (not yet listening) and returns its fd, or a
 * negative errno with why filled: EADDRINUSE when the path exists and is not netd's own
 * leftover (a socket of our euid that refuses connections, in a directory only its owner
 * may write; such a leftover is removed), EACCES outside the allowed directories.
 */
int netd_unix_bind(const char *path, const netd_unix_opts_t *o, netd_unix_file_t **file, char *why,
                   size_t whylen);
/* Removes the file if its directory entry still is the one netd made, and frees f. */
void netd_unix_file_remove(netd_unix_file_t *f);
/* Frees f and leaves the file alone (it went to another process with an upgrade). */
void netd_unix_file_forget(netd_unix_file_t *f);
/* A record of the socket file at path as it is now (a socket netd took over from the
 * process it upgraded), or NULL when there is none. */
netd_unix_file_t *netd_unix_file_adopt(const char *path);

/*
 * The directory of the default control socket path: created when missing (root 0755,
 * others 0700); refused (negative errno, why filled) when it is not a directory, belongs
 * to another user or may be written by others.
 */
int netd_unix_default_dir(const char *path, char *why, size_t whylen);

#endif
