/* SPDX-License-Identifier: MIT */
/*
 * Runs the built examples (examples/echo-server, examples/echo-client) as real processes,
 * over TCP and over a unix socket, and checks exactly what each one prints.
 */
#include "config.h"

#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Whatever the chunking of the echo, the client prints the bytes as they come, so its
 * whole output is fixed: hello is written by the server before the echo starts, and the
 * server's FIN follows the echoed "world!". */
#define CLIENT_OUTPUT "client connected\nhello\r\nworld!\r\nclient disconnected\n"
#define SERVER_OUTPUT "server bound\nserver connected\nserver disconnected\n"

typedef struct child {
    pid_t pid;
    int out; /* read end of its stdout */
    char buf[4096];
    size_t len;
} child_t;

/* Starts examples/NAME ARG from $top_builddir. With merge_stderr its stderr goes into the
 * same pipe, for tests that look at error messages. */
static void spawn(child_t *c, const char *name, const char *arg, int merge_stderr)
{
    const char *top = getenv("top_builddir");
    char path[PATH_MAX];
    int p[2];
    pid_t parent = getpid();

    snprintf(path, sizeof(path), "%s/examples/%s", top && *top ? top : ".", name);
    ck_assert_msg(pipe2(p, O_CLOEXEC) == 0, "pipe2: %s", strerror(errno));
    memset(c, 0, sizeof(*c));
    c->pid = fork();
    ck_assert_msg(c->pid >= 0, "fork: %s", strerror(errno));
    if (c->pid == 0) {
        /* A failed assertion ends the test process: take the example down with it rather
         * than leave a server holding the port. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(p[1], STDOUT_FILENO);
        if (merge_stderr)
            dup2(p[1], STDERR_FILENO);
        execl(path, path, arg, (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    close(p[1]);
    c->out = p[0];
}

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads the child's output until it contains want (NULL: until EOF) or timeout_ms (scaled)
 * pass. Returns 1 when found. c->buf stays NUL-terminated for messages. */
static int read_until(child_t *c, const char *want, unsigned timeout_ms)
{
    long long deadline = now_ms() + th_scale(timeout_ms);

    for (;;) {
        if (want && strstr(c->buf, want))
            return 1;
        long long left = deadline - now_ms();
        struct pollfd pfd = {.fd = c->out, .events = POLLIN};
        if (left <= 0 || c->len + 1 >= sizeof(c->buf))
            return 0;
        int n = poll(&pfd, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        ck_assert_msg(n >= 0, "poll: %s", strerror(errno));
        if (n == 0)
            return 0;
        ssize_t got = read(c->out, c->buf + c->len, sizeof(c->buf) - 1 - c->len);
        if (got < 0 && errno == EINTR)
            continue;
        ck_assert_msg(got >= 0, "read: %s", strerror(errno));
        if (got == 0)
            return want == NULL;
        c->len += (size_t)got;
        c->buf[c->len] = '\0';
    }
}

static int reap(child_t *c)
{
    int status;

    while (waitpid(c->pid, &status, 0) < 0)
        ck_assert_msg(errno == EINTR, "waitpid: %s", strerror(errno));
    close(c->out);
    return status;
}

static void check_exit(int status, int code, const char *who, const char *output)
{
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == code,
                  "%s: expected exit %d, got status 0x%x; output:\n%s", who, code, status, output);
}

static void echo_round_trip(const char *where)
{
    child_t server, client;

    spawn(&server, "echo-server", where, 0);
    ck_assert_msg(read_until(&server, "server bound\n", 10000),
                  "echo-server %s did not print 'server bound'; it printed:\n%s", where,
                  server.buf);

    spawn(&client, "echo-client", where, 0);
    ck_assert_msg(read_until(&client, NULL, 10000), "echo-client did not finish; printed:\n%s",
                  client.buf);
    check_exit(reap(&client), 0, "echo-client", client.buf);
    ck_assert_str_eq(client.buf, CLIENT_OUTPUT);

    /* The client can be gone a moment before the server has logged the end. */
    ck_assert_msg(read_until(&server, "server disconnected\n", 10000),
                  "echo-server did not log the end; it printed:\n%s", server.buf);
    ck_assert_str_eq(server.buf, SERVER_OUTPUT);

    kill(server.pid, SIGTERM);
    int status = reap(&server);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM,
                  "echo-server: expected death by SIGTERM, got status 0x%x", status);
}

START_TEST(echo_over_tcp)
{
    char port[16];

    snprintf(port, sizeof(port), "%d", th_free_port());
    echo_round_trip(port);
}
END_TEST

START_TEST(echo_over_unix_socket)
{
    char dir[64], path[128];

    snprintf(dir, sizeof(dir), "%s", th_tmpdir());
    snprintf(path, sizeof(path), "%s/echo.sock", dir);
    echo_round_trip(path);
    /* Killed by SIGTERM, the server had no chance to remove its socket file. */
    unlink(path);
    rmdir(dir);
}
END_TEST

START_TEST(client_reports_refused_connection)
{
    child_t client;
    char port[16];

    snprintf(port, sizeof(port), "%d", th_refused_port());
    spawn(&client, "echo-client", port, 1);
    ck_assert_msg(read_until(&client, NULL, 10000), "echo-client did not finish; printed:\n%s",
                  client.buf);
    check_exit(reap(&client), 1, "echo-client", client.buf);
    ck_assert_msg(strstr(client.buf, "ECONNREFUSED") != NULL, "no ECONNREFUSED in the output:\n%s",
                  client.buf);
    ck_assert_msg(strstr(client.buf, "client connected") == NULL, "connected anyway:\n%s",
                  client.buf);
}
END_TEST

static Suite *examples_suite(void)
{
    Suite *s = suite_create("examples");
    TCase *tc = th_tcase(s, "echo", 30);
    tcase_add_test(tc, echo_over_tcp);
    tcase_add_test(tc, echo_over_unix_socket);
    tcase_add_test(tc, client_reports_refused_connection);
    return s;
}

int main(void)
{
    return th_run_suite(examples_suite());
}
