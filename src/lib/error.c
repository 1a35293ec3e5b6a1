/* SPDX-License-Identifier: MIT */
/*
 * The one table of error names and messages: errno values by their symbolic name, and
 * libnetd's own ND_E* codes for conditions that are not errnos.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every errno a socket library can meet; the name is what Node puts in err.code. */
/* clang-format off */
#define ND__SYS_ERRNO_MAP(X)                                                                 \
    X(EPERM) X(ENOENT) X(ESRCH) X(EINTR) X(EIO) X(ENXIO) X(E2BIG) X(ENOEXEC) X(EBADF)        \
    X(ECHILD) X(EAGAIN) X(ENOMEM) X(EACCES) X(EFAULT) X(EBUSY) X(EEXIST) X(EXDEV) X(ENODEV)  \
    X(ENOTDIR) X(EISDIR) X(EINVAL) X(ENFILE) X(EMFILE) X(ENOTTY) X(ETXTBSY) X(EFBIG)         \
    X(ENOSPC) X(ESPIPE) X(EROFS) X(EMLINK) X(EPIPE) X(EDOM) X(ERANGE) X(EDEADLK)             \
    X(ENAMETOOLONG) X(ENOLCK) X(ENOSYS) X(ENOTEMPTY) X(ELOOP) X(ENOMSG) X(EIDRM) X(ENOSTR)   \
    X(ENODATA) X(ETIME) X(ENOSR) X(EREMOTE) X(ENOLINK) X(EPROTO) X(EBADMSG) X(EOVERFLOW)     \
    X(EILSEQ) X(EUSERS) X(ENOTSOCK) X(EDESTADDRREQ) X(EMSGSIZE) X(EPROTOTYPE) X(ENOPROTOOPT) \
    X(EPROTONOSUPPORT) X(ESOCKTNOSUPPORT) X(EOPNOTSUPP) X(EPFNOSUPPORT) X(EAFNOSUPPORT)      \
    X(EADDRINUSE) X(EADDRNOTAVAIL) X(ENETDOWN) X(ENETUNREACH) X(ENETRESET) X(ECONNABORTED)   \
    X(ECONNRESET) X(ENOBUFS) X(EISCONN) X(ENOTCONN) X(ESHUTDOWN) X(ETOOMANYREFS)             \
    X(ETIMEDOUT) X(ECONNREFUSED) X(EHOSTDOWN) X(EHOSTUNREACH) X(EALREADY) X(EINPROGRESS)     \
    X(ESTALE) X(EDQUOT) X(ECANCELED) X(EOWNERDEAD) X(ENOTRECOVERABLE)
/* clang-format on */

ND_EXPORT const char *nd_err_name(int code)
{
    if (code > 0)
        code = -code;
    switch (code) {
#define ND__SYS_CASE(e)                                                                            \
    case -(e):                                                                                     \
        return #e;
        ND__SYS_ERRNO_MAP(ND__SYS_CASE)
#undef ND__SYS_CASE
#define ND__OWN_CASE(name, value, msg)                                                             \
    case (value):                                                                                  \
        return #name;
        ND_ERRNO_MAP(ND__OWN_CASE)
#undef ND__OWN_CASE
    default:
        return "UNKNOWN";
    }
}

ND_EXPORT const char *nd_strerror(int code)
{
    if (code > 0)
        code = -code;
    switch (code) {
#define ND__OWN_CASE(name, value, msg)                                                             \
    case (value):                                                                                  \
        return msg;
        ND_ERRNO_MAP(ND__OWN_CASE)
#undef ND__OWN_CASE
    default:
        break;
    }
    if (code < 0 && code > ND__ERRNO_MIN) {
        /* strerrordesc_np is thread-safe and NULL for unknown values, unlike strerror. */
        const char *s = strerrordesc_np(-code);
        if (s)
            return s;
    }
    return "Unknown error";
}

int nd__error_set(nd__error_store_t **stp, int code, const char *syscall, const char *address,
                  int port, const char *hostname)
{
    if (!*stp && !(*stp = malloc(sizeof(**stp))))
        return -ENOMEM;
    nd__error_store_t *st = *stp;
    nd_error_t *e = &st->err;
    memset(st, 0, sizeof(*st));
    e->code = code;
    e->name = nd_err_name(code);
    e->syscall = syscall;
    e->port = port;
    if (address) {
        snprintf(st->address, sizeof(st->address), "%s", address);
        e->address = st->address;
    }
    if (hostname) {
        snprintf(st->hostname, sizeof(st->hostname), "%s", hostname);
        e->hostname = st->hostname;
    }
    /* Node's shape: "connect ECONNREFUSED 127.0.0.1:8124", "getaddrinfo ENOTFOUND name". */
    int n = 0;
    if (syscall)
        n = snprintf(st->message, sizeof(st->message), "%s %s", syscall, e->name);
    else if (code <= ND__ERRNO_MIN)
        n = snprintf(st->message, sizeof(st->message), "%s", nd_strerror(code));
    else
        n = snprintf(st->message, sizeof(st->message), "%s", e->name);
    if (n < 0 || (size_t)n >= sizeof(st->message))
        n = (int)strlen(st->message);
    size_t rest = sizeof(st->message) - (size_t)n;
    if (hostname)
        snprintf(st->message + n, rest, " %s", hostname);
    else if (address && port >= 0) /* Node: "::1:8124", no brackets */
        snprintf(st->message + n, rest, " %s:%d", address, port);
    else if (address)
        snprintf(st->message + n, rest, " %s", address);
    e->message = st->message;
    return 0;
}

void nd__error_set_message(nd__error_store_t *st, const char *message)
{
    snprintf(st->message, sizeof(st->message), "%s", message);
    st->err.message = st->message;
}
