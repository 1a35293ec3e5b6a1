/* SPDX-License-Identifier: MIT */
/*
 * The daemon's unix socket files (control socket and path servers): made with their final
 * mode, owner and group from the start, only where they are allowed, replacing only netd's
 * own provable leftovers, and removed only while the directory entry still is the file
 * netd made. Main thread only (it changes the umask around bind).
 */
#include "config.h"

#include "daemon.h"
#include "unixpath.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define SUN_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path))

struct netd_unix_file {
    int dirfd; /* the directory the file was made in (O_PATH), whatever its name now */
    dev_t dev; /* the socket file netd made */
    ino_t ino;
    char name[NAME_MAX + 1];
};

/* ------------------------------------------------------------------ paths */

/* Splits an absolute path into its directory and last component. */
static int split(const char *path, char *dir, size_t dirlen, char *base, size_t baselen)
{
    const char *slash = strrchr(path, '/');
    if (path[0] != '/' || !slash || !slash[1])
        return -EINVAL;
    size_t n = (size_t)(slash - path);
    if (n == 0)
        n = 1; /* "/x": the root directory */
    if (n >= dirlen || strlen(slash + 1) >= baselen)
        return -ENAMETOOLONG;
    memcpy(dir, path, n);
    dir[n] = '\0';
    snprintf(base, baselen, "%s", slash + 1);
    if (!strcmp(base, ".") || !strcmp(base, ".."))
        return -EINVAL;
    return 0;
}

/*
 * The address to bind name inside the directory dirfd: /proc/self/fd/N/NAME resolves
 * through the directory netd opened and checked, so a symlink swapped in afterwards cannot
 * send the socket elsewhere. Without /proc, the plain path (documented).
 */
static socklen_t sun_in_dir(struct sockaddr_un *sa, int dirfd, const char *name, const char *path)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    int n = snprintf(sa->sun_path, SUN_PATH_MAX, "/proc/self/fd/%d/%s", dirfd, name);
    if (n < 0 || (size_t)n >= SUN_PATH_MAX || access("/proc/self/fd", X_OK) != 0)
        n = snprintf(sa->sun_path, SUN_PATH_MAX, "%s", path);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
}

/* The directory an fd refers to, as a canonical path. */
static int fd_dir_path(int dirfd, const char *dir, char *out, size_t len)
{
    char link[64];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
    ssize_t n = readlink(link, out, len - 1);
    if (n > 0) {
        out[n] = '\0';
        return 0;
    }
    char *r = realpath(dir, NULL);
    if (!r)
        return -errno;
    snprintf(out, len, "%s", r);
    free(r);
    return 0;
}

/* dir is allowed[i] or below it, both resolved (so ".." and symlinks cannot escape). */
static bool dir_allowed(const char *real, const char *const *allowed, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *a = realpath(allowed[i], NULL);
        if (!a)
            continue;
        size_t k = strlen(a);
        bool ok = !strncmp(real, a, k) && (real[k] == '\0' || real[k] == '/' || k == 1);
        free(a);
        if (ok)
            return true;
    }
    return false;
}

/* ------------------------------------------------------------------ probing */

enum netd_unix_peer netd_unix_probe(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n >= SUN_PATH_MAX)
        return NETD_PEER_NONE;
    memcpy(sa.sun_path, path, n);
    /* Non-blocking: a listener whose backlog is full answers EAGAIN at once instead of
     * holding the main loop until it accepts. */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return NETD_PEER_NONE;
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = rc == 0 ? 0 : errno;
    close(fd);
    if (rc == 0)
        return NETD_PEER_ANSWERS;
    if (e == EAGAIN || e == EINPROGRESS)
        return NETD_PEER_BUSY;
    if (e == ECONNREFUSED)
        return NETD_PEER_REFUSED;
    return NETD_PEER_NONE;
}

/* Whether a live socket (bound, listening or not) was bound to this very path string:
 * such a file is in use even though connecting to it is refused. A leftover file has no
 * socket behind it, so it is not listed. Without /proc, nothing can be told: false. */
static bool bound_by_someone(const char *path)
{
    FILE *f = fopen("/proc/self/net/unix", "re");
    if (!f)
        return false;
    char line[PATH_MAX + 128];
    bool found = false;
    size_t n = strlen(path);
    while (!found && fgets(line, sizeof(line), f)) {
        size_t len = strcspn(line, "\n");
        line[len] = '\0';
        /* The path is the last field, after the inode: "... Inode Path". */
        found = len > n && line[len - n - 1] == ' ' && strcmp(line + len - n, path) == 0;
    }
    fclose(f);
    return found;
}

/*
 * Frees name in dirfd for a new socket. Nothing there: fine. netd's own leftover (a socket
 * file owned by our euid that nobody answers on, in a directory nobody else may write):
 * removed. Anything else: EADDRINUSE, as Node answers, with the reason in why.
 */
static int clear_leftover(int dirfd, const char *name, const char *path, char *why, size_t len)
{
    struct stat st, dst;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(why, len, "%s exists and is not a socket", path);
        return -EADDRINUSE;
    }
    if (st.st_uid != geteuid()) {
        snprintf(why, len, "%s is a socket of another user (uid %u)", path, (unsigned)st.st_uid);
        return -EADDRINUSE;
    }
    if (fstat(dirfd, &dst) != 0 || (dst.st_mode & (S_IWGRP | S_IWOTH))) {
        snprintf(why, len, "%s is in a directory others may write: not removed", path);
        return -EADDRINUSE;
    }
    struct sockaddr_un sa;
    socklen_t salen = sun_in_dir(&sa, dirfd, name, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    int rc = connect(fd, (struct sockaddr *)&sa, salen);
    int e = rc == 0 ? 0 : errno;
    close(fd);
    if (e != ECONNREFUSED) {
        snprintf(why, len, "%s: a process %s", path,
                 rc == 0 ? "answers there" : "listens there but does not answer");
        return -EADDRINUSE;
    }
    /* Refused, but a socket may be bound there and not listen yet (another service
     * starting): only a file with no socket behind it is a leftover. */
    if (bound_by_someone(path)) {
        snprintf(why, len, "%s: a process has a socket bound there (not listening yet)", path);
        return -EADDRINUSE;
    }
    if (unlinkat(dirfd, name, 0) != 0 && errno != ENOENT)
        return -errno;
    netd_log(NETD_LOG_INFO, "removed netd's leftover socket file %s", path);
    return 0;
}

/* ------------------------------------------------------------------ creating */

static void random_name(char *out, size_t len)
{
    static const char chars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char r[8] = {0};
    if (getrandom(r, sizeof(r), GRND_NONBLOCK) < 0)
        for (size_t i = 0; i < sizeof(r); i++)
            r[i] = (unsigned char)(rand() ^ (int)getpid());
    char tail[sizeof(r) + 1];
    for (size_t i = 0; i < sizeof(r); i++)
        tail[i] = chars[r[i] % (sizeof(chars) - 1)];
    tail[sizeof(r)] = '\0';
    snprintf(out, len, ".netd-%s", tail);
}

/* Binds fd to name inside dirfd, the file's mode set by the umask from the start. */
static int bind_in(int fd, int dirfd, const char *name, const char *path, int mode)
{
    struct sockaddr_un sa;
    socklen_t salen = sun_in_dir(&sa, dirfd, name, path);
    mode_t old = 0;
    if (mode >= 0)
        old = umask((mode_t)(~(unsigned)mode & 0777));
    int rc = bind(fd, (struct sockaddr *)&sa, salen) == 0 ? 0 : -errno;
    if (mode >= 0)
        umask(old);
    return rc;
}

/* Puts the temporary file in place without ever replacing what may have appeared. */
static int rename_noreplace(int dirfd, const char *from, const char *to)
{
    if (renameat2(dirfd, from, dirfd, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -errno;
    /* A filesystem without RENAME_NOREPLACE: link() never replaces either. */
    if (linkat(dirfd, from, dirfd, to, 0) != 0)
        return -errno;
    unlinkat(dirfd, from, 0);
    return 0;
}

int netd_unix_bind(const char *path, const netd_unix_opts_t *o, netd_unix_file_t **file, char *why,
                   size_t whylen)
{
    char dir[PATH_MAX], name[NAME_MAX + 1], tmp[NAME_MAX + 1];
    *file = NULL;
    snprintf(why, whylen, "%s", "");
    int rc = split(path, dir, sizeof(dir), name, sizeof(name));
    if (rc) {
        snprintf(why, whylen, "%s: not an absolute path to a file", path);
        return rc;
    }
    int dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        rc = -errno;
        snprintf(why, whylen, "%s: %s", dir, strerror(errno));
        return rc;
    }
    if (o->allowed) {
        char real[PATH_MAX];
        if (fd_dir_path(dirfd, dir, real, sizeof(real)) != 0 ||
            !dir_allowed(real, o->allowed, o->nallowed)) {
            snprintf(why, whylen, "%s: not under control.socketDirs (%s%s)", path,
                     o->nallowed ? o->allowed[0] : "none", o->nallowed > 1 ? ", ..." : "");
            close(dirfd);
            return -EACCES;
        }
    }
    int fd = -1;
    netd_unix_file_t *f = calloc(1, sizeof(*f));
    if (!f) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = clear_leftover(dirfd, name, path, why, whylen);
    if (rc)
        goto fail;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        rc = -errno;
        goto fail;
    }
    /* Under a temporary name when asked (the control socket): the path never names a
     * socket that is not ready, with its mode and group. */
    const char *made = name;
    for (int tries = 0;; tries++) {
        if (o->via_rename)
            random_name(tmp, sizeof(tmp));
        rc = bind_in(fd, dirfd, o->via_rename ? tmp : name, path, o->mode);
        if (rc != -EADDRINUSE || !o->via_rename || tries == 8)
            break;
    }
    if (rc) {
        if (rc == -EADDRINUSE)
            snprintf(why, whylen, "%s: another socket appeared there meanwhile", path);
        goto fail;
    }
    if (o->via_rename)
        made = tmp;
    struct stat st;
    if (fstatat(dirfd, made, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISSOCK(st.st_mode)) {
        rc = -EIO;
        snprintf(why, whylen, "%s: the socket file vanished after bind", path);
        goto fail_unlink;
    }
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    /* No symlink is followed: at worst a swapped-in link itself changes owner. */
    if ((o->uid != (uid_t)-1 || o->gid != (gid_t)-1) &&
        fchownat(dirfd, made, o->uid, o->gid, AT_SYMLINK_NOFOLLOW) != 0) {
        rc = -errno;
        snprintf(why, whylen, "%s: chown to %d:%d: %s", path, (int)o->uid, (int)o->gid,
                 strerror(errno));
        goto fail_unlink;
    }
    if (o->via_rename && (rc = rename_noreplace(dirfd, tmp, name)) != 0) {
        snprintf(why, whylen, "%s: %s", path,
                 rc == -EEXIST ? "another file appeared there meanwhile" : strerror(-rc));
        if (rc == -EEXIST)
            rc = -EADDRINUSE;
        goto fail_unlink;
    }
    f->dirfd = dirfd;
    snprintf(f->name, sizeof(f->name), "%s", name);
    *file = f;
    return fd;

fail_unlink:
    unlinkat(dirfd, made, 0);
fail:
    if (!why[0])
        snprintf(why, whylen, "%s: %s", path, strerror(-rc));
    if (fd >= 0)
        close(fd);
    free(f);
    close(dirfd);
    return rc;
}

void netd_unix_file_remove(netd_unix_file_t *f)
{
    if (!f)
        return;
    struct stat st;
    /* Only the file netd made: after a rename or another bind, the name is someone else's. */
    if (fstatat(f->dirfd, f->name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == f->dev &&
        st.st_ino == f->ino)
        unlinkat(f->dirfd, f->name, 0);
    close(f->dirfd);
    free(f);
}

void netd_unix_file_forget(netd_unix_file_t *f)
{
    if (!f)
        return;
    close(f->dirfd);
    free(f);
}

netd_unix_file_t *netd_unix_file_adopt(const char *path)
{
    char dir[PATH_MAX], name[NAME_MAX + 1];
    if (split(path, dir, sizeof(dir), name, sizeof(name)) != 0)
        return NULL;
    netd_unix_file_t *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    struct stat st;
    f->dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (f->dirfd < 0 || fstatat(f->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISSOCK(st.st_mode)) {
        if (f->dirfd >= 0)
            close(f->dirfd);
        free(f);
        return NULL;
    }
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    snprintf(f->name, sizeof(f->name), "%s", name);
    return f;
}

/* ------------------------------------------------------------------ the default directory */

int netd_unix_default_dir(const char *path, char *why, size_t whylen)
{
    char dir[PATH_MAX], name[NAME_MAX + 1];
    int rc = split(path, dir, sizeof(dir), name, sizeof(name));
    if (rc) {
        snprintf(why, whylen, "%s: not an absolute path to a file", path);
        return rc;
    }
    bool root = geteuid() == 0;
    mode_t want = root ? 0755 : 0700;
    if (mkdir(dir, want) == 0) {
        /* The umask may have taken bits away from root's 0755. */
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            if (fchmod(fd, want) != 0)
                rc = -errno;
            close(fd);
        }
        netd_log(NETD_LOG_INFO, "created the control socket's directory %s (mode %04o)", dir,
                 (unsigned)want);
    } else if (errno != EEXIST) {
        rc = -errno;
        snprintf(why, whylen, "cannot create the control socket's directory %s: %s", dir,
                 strerror(errno));
        return rc;
    }
    struct stat st;
    if (lstat(dir, &st) != 0) {
        rc = -errno;
        snprintf(why, whylen, "%s: %s", dir, strerror(errno));
        return rc;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(why, whylen, "%s is not a directory", dir);
        return -ENOTDIR;
    }
    if (st.st_uid != geteuid()) {
        snprintf(why, whylen, "%s belongs to uid %u, not to netd's uid %u: refusing it", dir,
                 (unsigned)st.st_uid, (unsigned)geteuid());
        return -EPERM;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        snprintf(why, whylen, "%s is writable by others (mode %04o): refusing it", dir,
                 (unsigned)(st.st_mode & 07777));
        return -EPERM;
    }
    return rc;
}
