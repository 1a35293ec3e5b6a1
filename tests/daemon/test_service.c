/* SPDX-License-Identifier: MIT */
/*
 * netd as a service (issue 13) and the daemon's unix socket files (issue 11): startup that
 * fails loudly, the default control directory, the control socket's creation and removal,
 * leftovers, control.socketDirs, socket file modes, reload against the file as last
 * loaded, durations, names, the log. A real netd per test, driven through netd_proc.
 */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"
#include "netd_proc.h"

/* ------------------------------------------------------------------ helpers */

static size_t count_in(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; p && (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* The names in `servers`, as one string "a,b,c" in list order. */
static const char *server_names(netd_proc_t *np)
{
    static char out[1024];
    out[0] = '\0';
    size_t i;
    json_t *s;
    json_array_foreach(np_jarr(np_ok(np_qcall(np, "{'cmd':'servers'}")), "servers"), i, s) {
        strncat(out, i ? "," : "", sizeof(out) - strlen(out) - 1);
        strncat(out, np_jstr(s, "name"), sizeof(out) - strlen(out) - 1);
    }
    return out;
}

/* A unix socket bound at path; listening when backlog >= 0. The fd (caller closes). */
static int unix_bound(const char *path, int backlog)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert(fd >= 0);
    struct sockaddr_un sa;
    np_sun_set(&sa, path);
    ck_assert_msg(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind %s: %s", path,
                  strerror(errno));
    if (backlog >= 0)
        ck_assert(listen(fd, backlog) == 0);
    return fd;
}

/* A socket file nobody holds: what a netd killed with SIGKILL leaves behind. */
static void leftover(const char *path)
{
    close(unix_bound(path, 1));
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "fopen %s: %s", path, strerror(errno));
    fputs(text, f);
    fclose(f);
}

static bool is_file_with(const char *path, const char *text)
{
    char buf[256] = "";
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strcmp(buf, text) == 0;
}

static char *path_in(const char *dir, const char *name)
{
    static char bufs[8][PATH_MAX + 64];
    static int next;
    char *out = bufs[next++ % 8];
    char tmp[PATH_MAX + 64]; /* dir may be an earlier result in bufs */
    snprintf(tmp, sizeof(tmp), "%s/%s", dir, name);
    memcpy(out, tmp, sizeof(tmp));
    return out;
}

/* Every datagram received so far, lines joined with '|'. */
static const char *notify_drain(np_notify_t *n, unsigned wait_ms)
{
    static char seen[4096];
    seen[0] = '\0';
    uint64_t deadline = np_now_ms() + th_scale(wait_ms);
    for (;;) {
        int left = (int)((int64_t)deadline - (int64_t)np_now_ms());
        struct pollfd pfd = {n->fd, POLLIN, 0};
        if (left <= 0 || poll(&pfd, 1, left) <= 0)
            return seen;
        char buf[1024];
        ssize_t len = recv(n->fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
        if (len <= 0)
            continue;
        buf[len] = '\0';
        for (char *p = buf; *p; p++)
            if (*p == '\n')
                *p = '|';
        strncat(seen, buf, sizeof(seen) - strlen(seen) - 2);
        strcat(seen, "|");
    }
}

/* ================================================================== startup (13.1, 13.2) */

/* A configured server that cannot listen stops netd: exit 1 naming it, never READY=1. */
START_TEST(test_startup_fails_when_a_server_cannot_listen)
{
    int port;
    int busy = np_tcp_listen(&port);
    np_notify_t n;
    np_notify_open(&n, false);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {.config = np_q("{'servers':[{'name':'fine','port':0,'host':'127.0.0.1'},"
                                  "{'name':'web','port':%d,'host':'127.0.0.1'}]}",
                                  port),
                   .env = env,
                   .no_wait = true};
    netd_proc_t *np = np_start_ex(&o);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 1);
    const char *err = np_stderr(np);
    ck_assert_msg(np_str_in(err, "server web") && np_str_in(err, "EADDRINUSE") &&
                      np_str_in(err, "could not listen: web (EADDRINUSE)"),
                  "stderr should name the server and the error:\n%s", err);
    const char *seen = notify_drain(&n, 200);
    ck_assert_msg(!np_str_in(seen, "READY=1"), "READY=1 was sent: %s", seen);
    ck_assert_msg(np_str_in(seen, "STATUS=failed"), "no failed STATUS: %s", seen);
    struct stat st;
    ck_assert_msg(stat(np->sock, &st) != 0, "the control socket was left behind");
    close(busy);
    close(n.fd);
}
END_TEST

/* READY=1 comes once every configured server listens; the log says which control path. */
START_TEST(test_ready_once_all_listen)
{
    np_notify_t n;
    np_notify_open(&n, false);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {.config = np_q("{'servers':[{'name':'a','port':0,'host':'127.0.0.1'},"
                                  "{'name':'u','path':'u.sock'}]}"),
                   .env = env};
    netd_proc_t *np = np_start_ex(&o);
    const char *seen = notify_drain(&n, 300);
    ck_assert_msg(np_str_in(seen, "READY=1"), "no READY=1: %s", seen);
    char want[PATH_MAX + 64];
    snprintf(want, sizeof(want), "control socket %s (from -s)", np->sock);
    ck_assert_msg(np_str_in(np_stderr(np), want), "stderr: %s", np_stderr(np));
    ck_assert_msg(np_str_in(np_stderr(np), "ready: 2 servers listening"), "stderr: %s",
                  np_stderr(np));
    close(n.fd);
}
END_TEST

/* ================================================================== default directory */

static netd_proc_t *start_with_runtime_dir(const char *rundir, bool wait)
{
    static char env_rd[PATH_MAX + 32];
    snprintf(env_rd, sizeof(env_rd), "RUNTIME_DIRECTORY=%s", rundir);
    static const char *env[2];
    env[0] = env_rd;
    env[1] = NULL;
    np_opts_t o = {.config = "{}",
                   .env = env,
                   .sock_path = path_in(rundir, "netd.sock"),
                   .no_sock_arg = true,
                   .no_wait = !wait};
    return np_start_ex(&o);
}

START_TEST(test_default_dir_created)
{
    char dir[PATH_MAX];
    np_mkdtemp(dir);
    const char *rd = path_in(dir, "run");
    netd_proc_t *np = start_with_runtime_dir(rd, true);
    struct stat st;
    ck_assert(stat(rd, &st) == 0 && S_ISDIR(st.st_mode));
    mode_t want = geteuid() == 0 ? 0755 : 0700;
    ck_assert_msg((st.st_mode & 07777) == want, "mode %o, want %o", st.st_mode & 07777, want);
    ck_assert(stat(np->sock, &st) == 0 && S_ISSOCK(st.st_mode));
    ck_assert_msg((st.st_mode & 07777) == 0600, "socket mode %o", st.st_mode & 07777);
    ck_assert_msg(np_str_in(np_stderr(np), "(from $RUNTIME_DIRECTORY)"), "%s", np_stderr(np));
}
END_TEST

START_TEST(test_default_dir_of_another_user_refused)
{
    if (geteuid() != 0)
        return; /* needs chown */
    char dir[PATH_MAX];
    np_mkdtemp(dir);
    const char *rd = path_in(dir, "run");
    ck_assert(mkdir(rd, 0755) == 0 && chown(rd, 65534, 65534) == 0);
    netd_proc_t *np = start_with_runtime_dir(rd, false);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 1);
    ck_assert_msg(np_str_in(np_stderr(np), "belongs to uid 65534"), "%s", np_stderr(np));
}
END_TEST

START_TEST(test_default_dir_writable_by_others_refused)
{
    char dir[PATH_MAX];
    np_mkdtemp(dir);
    const char *rd = path_in(dir, "run");
    ck_assert(mkdir(rd, 0700) == 0 && chmod(rd, 0777) == 0);
    netd_proc_t *np = start_with_runtime_dir(rd, false);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 1);
    ck_assert_msg(np_str_in(np_stderr(np), "writable by others"), "%s", np_stderr(np));
}
END_TEST

/* ================================================================== the control socket */

START_TEST(test_control_path_not_a_socket_refused)
{
    char dir[PATH_MAX];
    np_mkdtemp(dir);
    const char *path = path_in(dir, "netd.sock");
    write_text(path, "precious");
    np_opts_t o = {.config = "{}", .sock_path = path, .no_wait = true};
    netd_proc_t *np = np_start_ex(&o);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 1);
    ck_assert_msg(np_str_in(np_stderr(np), "exists and is not a socket"), "%s", np_stderr(np));
    ck_assert_msg(is_file_with(path, "precious"), "the file at the control path was replaced");
}
END_TEST

/* A listener whose backlog is full does not answer at once: netd refuses promptly instead
 * of hanging in connect (issue 11.1), and leaves that socket alone. */
START_TEST(test_control_busy_listener_refused_at_once)
{
    char dir[PATH_MAX];
    np_mkdtemp(dir);
    const char *path = path_in(dir, "netd.sock");
    int lfd = unix_bound(path, 0);
    int pending = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa;
    np_sun_set(&sa, path);
    ck_assert(connect(pending, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    np_opts_t o = {.config = "{}", .sock_path = path, .no_wait = true};
    uint64_t t0 = np_now_ms();
    netd_proc_t *np = np_start_ex(&o);
    int st = np_wait_exit(np, 3000);
    ck_assert_msg(st == 1, "netd status %d (want 1, within 3 s; -1 means it hung)", st);
    ck_assert_msg(np_now_ms() - t0 < th_scale(3000), "took %llu ms",
                  (unsigned long long)(np_now_ms() - t0));
    ck_assert_msg(np_str_in(np_stderr(np), "does not answer at once"), "%s", np_stderr(np));
    struct stat stt;
    ck_assert(stat(path, &stt) == 0 && S_ISSOCK(stt.st_mode));
    close(pending);
    close(lfd);
}
END_TEST

/* At exit netd removes its control socket only if the path still is that socket. */
START_TEST(test_control_socket_removed_only_if_ours)
{
    netd_proc_t *np = np_start("{}", 2);
    char other[PATH_MAX + 16];
    snprintf(other, sizeof(other), "%s/other", np->dir);
    write_text(other, "someone else's");
    ck_assert(rename(other, np->sock) == 0);
    np_ok(np_qcall(np, "{'cmd':'shutdown'}"));
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 0);
    ck_assert_msg(is_file_with(np->sock, "someone else's"),
                  "netd removed a file it did not make at its control path");
}
END_TEST

/* The predictable "<path>.<pid>.tmp" is gone: a symlink there changes nothing. */
START_TEST(test_control_socket_no_predictable_temp_name)
{
    netd_proc_t *np = np_start("{}", 2);
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof(tmp), "%s.%d.tmp", np->sock, (int)np->pid);
    struct stat st;
    ck_assert(lstat(tmp, &st) != 0);
    DIR *d = opendir(np->dir);
    ck_assert(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)))
        ck_assert_msg(strncmp(e->d_name, ".netd-", 6) != 0, "temporary name left: %s", e->d_name);
    closedir(d);
}
END_TEST

/* ================================================================== leftovers (11.3) */

static json_t *listen_path(netd_proc_t *np, const char *path)
{
    return np_call(np, "{s:s, s:s}", "cmd", "listen", "path", path);
}

START_TEST(test_leftover_of_ours_replaced)
{
    netd_proc_t *np = np_start("{}", 2);
    const char *path = path_in(np->dir, "l.sock");
    leftover(path);
    np_ok(listen_path(np, path));
    int fd = np_unix_connect(path);
    np_echo_check(fd, "served\n");
    close(fd);
    ck_assert_msg(np_str_in(np_stderr(np), "removed netd's leftover socket file"), "%s",
                  np_stderr(np));
}
END_TEST

/* Bound but not listening yet refuses connections, yet it is not a leftover. */
START_TEST(test_bound_socket_not_replaced)
{
    netd_proc_t *np = np_start("{}", 2);
    const char *path = path_in(np->dir, "b.sock");
    int held = unix_bound(path, -1);
    np_expect_error(listen_path(np, path), "EADDRINUSE", "bound there");
    struct stat st;
    ck_assert(stat(path, &st) == 0);
    /* The other process can still start listening on its own file. */
    ck_assert(listen(held, 1) == 0);
    int fd = np_unix_connect(path);
    close(fd);
    close(held);
}
END_TEST

START_TEST(test_listening_socket_not_replaced)
{
    netd_proc_t *np = np_start("{}", 2);
    const char *path = path_in(np->dir, "live.sock");
    int held = unix_bound(path, 4);
    np_expect_error(listen_path(np, path), "EADDRINUSE", "answers there");
    close(held);
}
END_TEST

START_TEST(test_leftover_of_another_user_kept)
{
    if (geteuid() != 0)
        return;
    netd_proc_t *np = np_start("{}", 2);
    const char *path = path_in(np->dir, "o.sock");
    leftover(path);
    ck_assert(chown(path, 65534, 65534) == 0);
    np_expect_error(listen_path(np, path), "EADDRINUSE", "another user");
    struct stat st;
    ck_assert(stat(path, &st) == 0 && st.st_uid == 65534);
}
END_TEST

START_TEST(test_leftover_in_shared_dir_kept)
{
    char shared[PATH_MAX];
    np_mkdtemp(shared);
    ck_assert(chmod(shared, 01777) == 0);
    np_opts_t o = {.config = np_q("{'control':{'socketDirs':['%s']}}", shared)};
    netd_proc_t *np = np_start_ex(&o);
    const char *path = path_in(shared, "s.sock");
    leftover(path);
    np_expect_error(listen_path(np, path), "EADDRINUSE", "others may write");
    struct stat st;
    ck_assert(stat(path, &st) == 0);
}
END_TEST

START_TEST(test_path_that_is_a_file_kept)
{
    netd_proc_t *np = np_start("{}", 2);
    const char *path = path_in(np->dir, "f.sock");
    write_text(path, "data");
    np_expect_error(listen_path(np, path), "EADDRINUSE", "not a socket");
    ck_assert(is_file_with(path, "data"));
}
END_TEST

/* After close, netd removes the socket file only while it still is the one it made. */
START_TEST(test_close_removes_only_what_netd_made)
{
    netd_proc_t *np = np_start("{}", 2);
    const char *path = path_in(np->dir, "c.sock");
    np_ok(listen_path(np, path));
    const char *other = path_in(np->dir, "other.sock");
    int held = unix_bound(other, 1);
    ck_assert(rename(other, path) == 0); /* another service took the name */
    np_ok(np_call(np, "{s:s, s:s}", "cmd", "close", "server", path));
    struct stat st;
    ck_assert_msg(stat(path, &st) == 0, "netd removed a socket file another service made");
    int fd = np_unix_connect(path);
    close(fd);
    close(held);
}
END_TEST

/* The 11.2 attack: listen through a symlinked directory, repoint the link, close. */
START_TEST(test_close_through_swapped_symlink)
{
    netd_proc_t *np = np_start("{}", 2);
    const char *a = path_in(np->dir, "a"), *b = path_in(np->dir, "b"), *l = path_in(np->dir, "l");
    ck_assert(mkdir(a, 0700) == 0 && mkdir(b, 0700) == 0 && symlink("a", l) == 0);
    const char *via = path_in(l, "x.sock");
    np_ok(listen_path(np, via));
    const char *victim = path_in(b, "x.sock");
    write_text(victim, "root's file");
    ck_assert(unlink(l) == 0 && symlink("b", l) == 0);
    np_ok(np_call(np, "{s:s, s:s}", "cmd", "close", "server", via));
    ck_assert_msg(is_file_with(victim, "root's file"),
                  "netd unlinked a file through the swapped link");
    struct stat st;
    ck_assert_msg(stat(path_in(a, "x.sock"), &st) != 0, "netd's own socket file stayed behind");
}
END_TEST

/* ================================================================== socketDirs (11.2) */

START_TEST(test_socket_dirs_default_is_the_control_dir)
{
    netd_proc_t *np = np_start("{}", 2);
    char outside[PATH_MAX];
    np_mkdtemp(outside);
    np_expect_error(listen_path(np, path_in(outside, "x.sock")), "EACCES", "socketDirs");
    /* ".." and a symlink cannot escape: the resolved directory counts. */
    char dots[PATH_MAX * 2];
    snprintf(dots, sizeof(dots), "%s/../%s/y.sock", np->dir, strrchr(outside, '/') + 1);
    np_expect_error(listen_path(np, dots), "EACCES", NULL);
    const char *link = path_in(np->dir, "out");
    ck_assert(symlink(outside, link) == 0);
    np_expect_error(listen_path(np, path_in(link, "z.sock")), "EACCES", NULL);
    struct stat st;
    ck_assert(stat(path_in(outside, "z.sock"), &st) != 0);
    /* Inside (and below) the control socket's directory: fine. */
    const char *sub = path_in(np->dir, "sub");
    ck_assert(mkdir(sub, 0700) == 0);
    np_ok(listen_path(np, path_in(np->dir, "in.sock")));
    np_ok(listen_path(np, path_in(sub, "deeper.sock")));
}
END_TEST

START_TEST(test_socket_dirs_from_config)
{
    char other[PATH_MAX];
    np_mkdtemp(other);
    /* The config file itself is trusted: its own path may be anywhere. */
    char trusted_dir[PATH_MAX];
    np_mkdtemp(trusted_dir);
    np_opts_t o = {0};
    o.config = np_q("{'control':{'socketDirs':['extra', '%s']},"
                    "'servers':[{'name':'trusted','path':'%s/cfg.sock'}]}",
                    other, trusted_dir);
    netd_proc_t *np = np_start_ex(&o);
    ck_assert(mkdir(path_in(np->dir, "extra"), 0700) == 0);
    np_ok(listen_path(np, path_in(path_in(np->dir, "extra"), "e.sock")));
    np_ok(listen_path(np, path_in(other, "o.sock")));
    /* The list replaces the default: the control socket's own directory is not in it. */
    np_expect_error(listen_path(np, path_in(np->dir, "n.sock")), "EACCES", NULL);
    int fd = np_unix_connect(path_in(trusted_dir, "cfg.sock"));
    close(fd);
}
END_TEST

/* ================================================================== socket files (13.16) */

START_TEST(test_unix_socket_mode_user_group)
{
    netd_proc_t *np = np_start(np_q("{'servers':[{'name':'cfg','path':'cfg.sock','mode':'0604'}]}"),
                               2);
    struct stat st;
    ck_assert(stat(path_in(np->dir, "cfg.sock"), &st) == 0);
    ck_assert_msg((st.st_mode & 0777) == 0604, "config mode: %o", st.st_mode & 0777);
    const char *path = path_in(np->dir, "m.sock");
    /* Root gives the file away; another user can only name itself. */
    unsigned uid = geteuid() == 0 ? 65534 : (unsigned)geteuid();
    unsigned gid = geteuid() == 0 ? 65534 : (unsigned)getegid();
    char user[16], group[16];
    snprintf(user, sizeof(user), "%u", uid);
    snprintf(group, sizeof(group), "%u", gid);
    json_t *r = np_ok(np_call(np, "{s:s, s:s, s:s, s:s, s:s}", "cmd", "listen", "path", path,
                              "mode", "0640", "user", user, "group", group));
    ck_assert_str_eq(np_jstr(np_jobj(np_jobj(r, "server"), "address"), "path"), path);
    ck_assert(stat(path, &st) == 0);
    ck_assert_msg((st.st_mode & 0777) == 0640, "mode %o, want 0640", st.st_mode & 0777);
    ck_assert_msg(st.st_uid == uid && st.st_gid == gid, "owner %d:%d, want %u:%u", (int)st.st_uid,
                  (int)st.st_gid, uid, gid);
    if (geteuid() != 0) {
        /* Not allowed to give it to root: refused, and no file is left behind. */
        const char *denied = path_in(np->dir, "d.sock");
        np_expect_error(
            np_call(np, "{s:s, s:s, s:s}", "cmd", "listen", "path", denied, "user", "0"), "EPERM",
            "chown");
        ck_assert(stat(denied, &st) != 0);
    }
    np_expect_error(np_qcall(np, "{'cmd':'listen','port':0,'mode':'0600'}"), "EARG",
                    "mode: only with path");
    np_expect_error(np_call(np, "{s:s, s:s, s:s}", "cmd", "listen", "path",
                            path_in(np->dir, "n.sock"), "user", "no-such-user-here"),
                    "EARG", "no such user");
    np_expect_error(np_call(np, "{s:s, s:s, s:s}", "cmd", "listen", "path",
                            path_in(np->dir, "n.sock"), "mode", "0999"),
                    "EARG", "mode");
}
END_TEST

/* ================================================================== reload (13.4, 13.5) */

#define CFG_AB                                                                                     \
    "{'servers':[{'name':'echo','port':0,'host':'127.0.0.1'},"                                     \
    "{'name':'b','port':0,'host':'127.0.0.1'}]}"

/* `set` changes the running server, not the file: a reload leaves it alone. */
START_TEST(test_reload_after_set_keeps_the_server)
{
    netd_proc_t *np = np_start(np_q(CFG_AB), 2);
    json_int_t id = np_jint(np_server_obj(np, "echo"), "id");
    int held = np_echo_client(np_server_port(np, "echo"));
    np_ok(np_qcall(np, "{'cmd':'set','server':'echo','maxConnections':100}"));
    np_signal(np, SIGHUP);
    np_wait_log(np, "reloaded");
    json_t *s = np_server_obj(np, "echo");
    ck_assert_int_eq(np_jint(s, "id"), id);
    ck_assert_int_eq(np_jint(s, "maxConnections"), 100);
    ck_assert_str_eq(server_names(np), "echo,b");
    np_echo_check(held, "still served\n");
    close(held);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'close','server':'echo'}"));
    ck_assert_int_eq(np_jint(np_jobj(r, "server"), "id"), id);
}
END_TEST

START_TEST(test_reload_command_reports)
{
    np_notify_t n;
    np_notify_open(&n, false);
    const char *env[] = {n.env, NULL};
    np_opts_t o = {.config = np_q("{'servers':[{'name':'keep','port':0,'host':'127.0.0.1'},"
                                  "{'name':'gone','port':0,'host':'127.0.0.1'},"
                                  "{'name':'chg','port':0,'host':'127.0.0.1'}]}"),
                   .env = env};
    netd_proc_t *np = np_start_ex(&o);
    notify_drain(&n, 100);
    int gone_port = np_server_port(np, "gone");
    np_write_config(np, np_q("{'servers':[{'name':'keep','host':'127.0.0.1','port':0},"
                             "{'name':'chg','port':0,'host':'127.0.0.1','maxConnections':3},"
                             "{'name':'new','port':0,'host':'127.0.0.1'}]}"));
    json_t *r = np_ok(np_qcall(np, "{'cmd':'reload','id':7}"));
    ck_assert_int_eq(np_jint(r, "id"), 7);
    ck_assert_str_eq(np_json_str(np_jarr(r, "added")), "[\"new\"]");
    ck_assert_str_eq(np_json_str(np_jarr(r, "removed")), "[\"gone\"]");
    ck_assert_str_eq(np_json_str(np_jarr(r, "changed")), "[\"chg\"]");
    ck_assert_str_eq(np_json_str(np_jarr(r, "kept")), "[\"keep\"]");
    ck_assert_int_eq(json_array_size(np_jarr(r, "failed")), 0);
    /* Replied once the new servers listen. */
    int fd = np_echo_client(np_server_port(np, "new"));
    close(fd);
    ck_assert_int_eq(np_jint(np_server_obj(np, "chg"), "maxConnections"), 3);
    np_assert_not_listening(np, gone_port);
    const char *seen = notify_drain(&n, 200);
    ck_assert_msg(np_str_in(seen, "RELOADING=1") && np_str_in(seen, "MONOTONIC_USEC=") &&
                      np_str_in(seen, "READY=1"),
                  "notify: %s", seen);
    ck_assert_msg(
        np_str_in(np_stderr(np), "added [new], removed [gone], changed [chg], kept [keep]"), "%s",
        np_stderr(np));
    /* An invalid file: the field named, nothing changed. */
    np_write_config(np, np_q("{'servers':[{'name':'keep','port':0,'host':'999.1.1.1'}]}"));
    np_expect_error(np_qcall(np, "{'cmd':'reload'}"), "EARG", "servers[0].host");
    ck_assert_str_eq(server_names(np), "keep,chg,new");
    close(n.fd);
}
END_TEST

/* A changed server whose new form cannot listen: the running one stays, named as before. */
START_TEST(test_reload_failure_keeps_the_running_server)
{
    int port;
    int busy = np_tcp_listen(&port);
    netd_proc_t *np = np_start(np_q("{'servers':[{'name':'web','port':0,'host':'127.0.0.1'}]}"), 2);
    json_int_t id = np_jint(np_server_obj(np, "web"), "id");
    int web_port = np_server_port(np, "web");
    np_write_config(np, np_q("{'servers':[{'name':'web','port':%d,'host':'127.0.0.1'},"
                             "{'name':'also','port':%d,'host':'127.0.0.1'}]}",
                             port, port));
    /* The file is invalid as a whole (two servers on one address): refused up front. */
    np_expect_error(np_qcall(np, "{'cmd':'reload'}"), "EARG", "the same address");
    np_write_config(np, np_q("{'servers':[{'name':'web','port':%d,'host':'127.0.0.1'}]}", port));
    json_t *r = np_ok(np_qcall(np, "{'cmd':'reload'}"));
    json_t *failed = np_jarr(r, "failed");
    ck_assert_msg(json_array_size(failed) == 1, "%s", np_json_str(r));
    ck_assert_str_eq(np_jstr(json_array_get(failed, 0), "name"), "web");
    ck_assert_str_eq(np_jstr(json_array_get(failed, 0), "code"), "EADDRINUSE");
    ck_assert_int_eq(json_array_size(np_jarr(r, "changed")), 0);
    json_t *s = np_server_obj(np, "web");
    ck_assert_int_eq(np_jint(s, "id"), id);
    ck_assert_str_eq(np_jstr(s, "state"), "listening");
    ck_assert_str_eq(server_names(np), "web");
    int fd = np_echo_client(web_port);
    close(fd);
    /* Once the port is free, the same file applies. */
    close(busy);
    r = np_ok(np_qcall(np, "{'cmd':'reload'}"));
    ck_assert_str_eq(np_json_str(np_jarr(r, "changed")), "[\"web\"]");
    ck_assert_int_eq(np_server_port(np, "web"), port);
}
END_TEST

/* 11.10: no reload while draining; the servers stay closed. */
START_TEST(test_reload_refused_while_draining)
{
    netd_proc_t *np = np_start(
        np_q("{'shutdownTimeoutMs':'1m','servers':[{'name':'echo','port':0,'host':'127.0.0.1'}]}"),
        2);
    int port = np_server_port(np, "echo");
    int held = np_echo_client(port);
    np_ok(np_qcall(np, "{'cmd':'shutdown'}"));
    np_wait_log(np, "draining");
    np_signal(np, SIGHUP);
    np_wait_log(np, "SIGHUP refused: netd is draining");
    np_expect_error(np_qcall(np, "{'cmd':'reload'}"), "ESHUTDOWN", "draining");
    np_assert_not_listening(np, port);
    np_echo_check(held, "still served while draining\n");
    close(held);
    ck_assert_int_eq(np_wait_exit(np, NP_TIMEOUT_MS), 0);
}
END_TEST

/* Names stay unique: a closing server gives its name up to the new one as "NAME#ID". */
START_TEST(test_names_unique_when_a_name_is_reused)
{
    netd_proc_t *np = np_start("{}", 2);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'web'}"));
    json_int_t old = np_jint(np_jobj(r, "server"), "id");
    int held = np_echo_client((int)np_jint(np_jobj(np_jobj(r, "server"), "address"), "port"));
    np_ok(np_qcall(np, "{'cmd':'close','server':'web','wait':false}"));
    np_ok(np_qcall(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','name':'web'}"));
    char retired[64];
    snprintf(retired, sizeof(retired), "web#%lld", (long long)old);
    char want[128];
    snprintf(want, sizeof(want), "%s,web", retired);
    ck_assert_str_eq(server_names(np), want);
    ck_assert_int_ne(np_jint(np_server_obj(np, "web"), "id"), old);
    ck_assert_int_eq(np_jint(np_server_obj(np, retired), "id"), old);
    close(held);
}
END_TEST

/* 13.8: unnamed listens are named after the address they bound. */
START_TEST(test_unnamed_listens_on_port_0)
{
    netd_proc_t *np = np_start("{}", 2);
    json_t *a = np_jobj(np_ok(np_qcall(np, "{'cmd':'listen','port':0,'host':'127.0.0.1'}")),
                        "server");
    json_t *b = np_jobj(np_ok(np_qcall(np, "{'cmd':'listen','port':0,'host':'127.0.0.1'}")),
                        "server");
    char want[64];
    snprintf(want, sizeof(want), "127.0.0.1:%lld",
             (long long)np_jint(np_jobj(a, "address"), "port"));
    ck_assert_str_eq(np_jstr(a, "name"), want);
    snprintf(want, sizeof(want), "127.0.0.1:%lld",
             (long long)np_jint(np_jobj(b, "address"), "port"));
    ck_assert_str_eq(np_jstr(b, "name"), want);
    ck_assert_int_eq(np_server_port(np, want), (int)np_jint(np_jobj(b, "address"), "port"));
}
END_TEST

/* ================================================================== durations, shutdown */

/* 13.17 and 13.7: `shutdown` without timeoutMs uses shutdownTimeoutMs, given with a unit. */
START_TEST(test_shutdown_default_is_the_config)
{
    netd_proc_t *np = np_start(
        np_q("{'shutdownTimeoutMs':'300ms','servers':[{'name':'e','port':0,'host':'127.0.0.1',"
             "'timeout':'1m','keepAlive':'30s'}]}"),
        2);
    json_t *s = np_server_obj(np, "e");
    ck_assert_int_eq(np_jint(s, "timeout"), 60000);
    int held = np_echo_client(np_server_port(np, "e"));
    uint64_t t0 = np_now_ms();
    np_ok(np_qcall(np, "{'cmd':'shutdown'}"));
    int st = np_wait_exit(np, 5000);
    ck_assert_msg(st == 1, "status %d: the 300 ms deadline should cut the held connection", st);
    ck_assert_msg(np_now_ms() - t0 < th_scale(3000), "took %llu ms",
                  (unsigned long long)(np_now_ms() - t0));
    close(held);
}
END_TEST

START_TEST(test_listen_durations)
{
    netd_proc_t *np = np_start("{}", 2);
    json_t *r = np_ok(np_qcall(np, "{'cmd':'listen','port':0,'host':'127.0.0.1','timeout':'2s'}"));
    ck_assert_int_eq(np_jint(np_jobj(r, "server"), "timeout"), 2000);
    np_expect_error(np_qcall(np, "{'cmd':'listen','port':0,'timeout':'2 weeks'}"), "EARG",
                    "timeout");
}
END_TEST

/* ================================================================== socket activation */

/* 13.3: an inherited socket on another address than the config's: served, with a warning. */
START_TEST(test_activation_address_mismatch_warns)
{
    int port;
    int lfd = np_tcp_listen(&port);
    int other = th_free_port();
    np_opts_t o = {
        .config = np_q("{'servers':[{'name':'echo','port':%d,'host':'127.0.0.1'}]}", other),
        .pass_fd = lfd,
        .listen_fds = 1,
        .listen_fdnames = "echo"};
    netd_proc_t *np = np_start_ex(&o);
    close(lfd);
    ck_assert_int_eq(np_server_port(np, "echo"), port);
    char want[160];
    snprintf(want, sizeof(want), "bound to 127.0.0.1:%d, the config says 127.0.0.1:%d", port,
             other);
    ck_assert_msg(np_str_in(np_stderr(np), want), "%s", np_stderr(np));
}
END_TEST

START_TEST(test_activation_same_address_quiet)
{
    int port;
    int lfd = np_tcp_listen(&port);
    np_opts_t o = {
        .config = np_q("{'servers':[{'name':'echo','port':%d,'host':'127.0.0.1'}]}", port),
        .pass_fd = lfd,
        .listen_fds = 1,
        .listen_fdnames = "echo"};
    netd_proc_t *np = np_start_ex(&o);
    close(lfd);
    ck_assert_int_eq(np_server_port(np, "echo"), port);
    ck_assert_msg(!np_str_in(np_stderr(np), "inherited socket"), "%s", np_stderr(np));
}
END_TEST

/* ================================================================== the log (13.11) */

START_TEST(test_log_escapes_control_characters)
{
    netd_proc_t *np = np_start("{}", 2);
    np_ok(np_call(np, "{s:s, s:i, s:s, s:s}", "cmd", "listen", "port", 0, "host", "127.0.0.1",
                  "name", "evil\nnetd: error: forged"));
    np_wait_log(np, "evil\\nnetd: error: forged");
    ck_assert_msg(!np_str_in(np_stderr(np), "\nnetd: error: forged"),
                  "a name split a log line:\n%s", np_stderr(np));
}
END_TEST

/* 20 connections to a dead upstream: a few lines naming the server, then a count. */
START_TEST(test_log_repeats_rate_limited)
{
    int dead = th_refused_port();
    netd_proc_t *np = np_start(np_q("{'servers':[{'name':'front','port':0,'host':'127.0.0.1',"
                                    "'handler':{'type':'proxy','port':%d,'host':'127.0.0.1'}}]}",
                                    dead),
                               2);
    int port = np_server_port(np, "front");
    for (int i = 0; i < 20; i++) {
        int fd = np_tcp_connect(port);
        ck_assert_int_eq(np_expect_eof(fd), 1);
        close(fd);
    }
    np_wait_log(np, "more like this in the last second");
    const char *err = np_stderr(np);
    size_t lines = count_in(err, "server front: proxy upstream:");
    ck_assert_msg(lines >= 3 && lines <= 6, "%zu upstream lines (want a few):\n%s", lines, err);
    ck_assert_msg(count_in(err, "ECONNREFUSED") <= 6, "%s", err);
}
END_TEST

START_TEST(test_log_verbose_reload_diff)
{
    static const char *const args[] = {"-v", NULL};
    np_opts_t o = {.config = np_q("{'servers':[{'name':'web','port':0,'host':'127.0.0.1'}]}"),
                   .args = args};
    netd_proc_t *np = np_start_ex(&o);
    np_write_config(np, np_q("{'servers':[{'name':'web','port':0,'host':'127.0.0.1',"
                             "'maxConnections':5}]}"));
    np_ok(np_qcall(np, "{'cmd':'reload'}"));
    np_wait_log(np, "reload: web changed: maxConnections");
}
END_TEST

/* ================================================================== suite */

static Suite *service_suite(void)
{
    Suite *s = suite_create("service");
    TCase *tc = np_tcase(s, "startup", 20);
    tcase_add_test(tc, test_startup_fails_when_a_server_cannot_listen);
    tcase_add_test(tc, test_ready_once_all_listen);
    tcase_add_test(tc, test_default_dir_created);
    tcase_add_test(tc, test_default_dir_of_another_user_refused);
    tcase_add_test(tc, test_default_dir_writable_by_others_refused);

    tc = np_tcase(s, "control", 20);
    tcase_add_test(tc, test_control_path_not_a_socket_refused);
    tcase_add_test(tc, test_control_busy_listener_refused_at_once);
    tcase_add_test(tc, test_control_socket_removed_only_if_ours);
    tcase_add_test(tc, test_control_socket_no_predictable_temp_name);

    tc = np_tcase(s, "unix", 20);
    tcase_add_test(tc, test_leftover_of_ours_replaced);
    tcase_add_test(tc, test_bound_socket_not_replaced);
    tcase_add_test(tc, test_listening_socket_not_replaced);
    tcase_add_test(tc, test_leftover_of_another_user_kept);
    tcase_add_test(tc, test_leftover_in_shared_dir_kept);
    tcase_add_test(tc, test_path_that_is_a_file_kept);
    tcase_add_test(tc, test_close_removes_only_what_netd_made);
    tcase_add_test(tc, test_close_through_swapped_symlink);
    tcase_add_test(tc, test_socket_dirs_default_is_the_control_dir);
    tcase_add_test(tc, test_socket_dirs_from_config);
    tcase_add_test(tc, test_unix_socket_mode_user_group);

    tc = np_tcase(s, "reload", 20);
    tcase_add_test(tc, test_reload_after_set_keeps_the_server);
    tcase_add_test(tc, test_reload_command_reports);
    tcase_add_test(tc, test_reload_failure_keeps_the_running_server);
    tcase_add_test(tc, test_reload_refused_while_draining);
    tcase_add_test(tc, test_names_unique_when_a_name_is_reused);
    tcase_add_test(tc, test_unnamed_listens_on_port_0);

    tc = np_tcase(s, "durations", 20);
    tcase_add_test(tc, test_shutdown_default_is_the_config);
    tcase_add_test(tc, test_listen_durations);

    tc = np_tcase(s, "activation", 20);
    tcase_add_test(tc, test_activation_address_mismatch_warns);
    tcase_add_test(tc, test_activation_same_address_quiet);

    tc = np_tcase(s, "log", 20);
    tcase_add_test(tc, test_log_escapes_control_characters);
    tcase_add_test(tc, test_log_repeats_rate_limited);
    tcase_add_test(tc, test_log_verbose_reload_diff);
    return s;
}

int main(void)
{
    return np_run_suite(service_suite());
}
