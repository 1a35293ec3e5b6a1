/* SPDX-License-Identifier: MIT */
/*
 * netctl top: every interval asks netd for `stats`, `servers` and the busiest `sockets`
 * over one control connection, and shows rates from the difference with the previous
 * sample. On a terminal: a full-screen view drawn with plain ANSI sequences (no curses:
 * nothing but libc and jansson at run time) and keys read raw through termios; elsewhere
 * one vmstat-like line per interval.
 */
#include "config.h"

#include "top.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

enum { EXIT_OK = 0, EXIT_DAEMON_ERROR = 1, EXIT_UNREACHABLE = 3 };

static const char *const sorts[] = {"bytes", "age", "idle"};
#define NSORTS 3

/* ------------------------------------------------------------------ signals, terminal */

static volatile sig_atomic_t quit_sig, resized;
static struct termios saved_tio;
static bool tio_saved, screen_on;

static void on_quit(int sig)
{
    quit_sig = sig;
}

static void on_winch(int sig)
{
    (void)sig;
    resized = 1;
}

/* Whatever ends the program (q, a signal, an error, exit()) gives the terminal back as it
 * was: cursor shown, the normal screen, echo and line editing on. */
static void restore_terminal(void)
{
    if (screen_on) {
        fputs("\033[?25h\033[?1049l", stdout);
        fflush(stdout);
        screen_on = false;
    }
    if (tio_saved) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
        tio_saved = false;
    }
}

static void setup_terminal(bool keys)
{
    if (keys && tcgetattr(STDIN_FILENO, &saved_tio) == 0) {
        struct termios raw = saved_tio;
        raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO); /* ISIG stays: Ctrl-C still quits */
        raw.c_cc[VMIN] = 0;
        raw.c_cc[VTIME] = 0;
        if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) == 0)
            tio_saved = true;
    }
    fputs("\033[?1049h\033[?25l", stdout); /* alternate screen, cursor hidden */
    screen_on = true;
    atexit(restore_terminal);
}

static void screen_size(int *rows, int *cols)
{
    struct winsize ws;
    *rows = 24;
    *cols = 80;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
        *rows = ws.ws_row;
        *cols = ws.ws_col;
    }
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ the connection */

typedef struct link {
    int fd;
    const char *path;
    char *buf;
    size_t len, cap;
    long long timeout_ms;
    long long next_id;
    char err[256];
} link_t;

static int link_open(link_t *l)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(l->path) >= sizeof(sa.sun_path)) {
        snprintf(l->err, sizeof(l->err), "%s: path too long", l->path);
        return -1;
    }
    memcpy(sa.sun_path, l->path, strlen(l->path));
    l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l->fd < 0 || connect(l->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        snprintf(l->err, sizeof(l->err), "cannot connect to %s: %s", l->path, strerror(errno));
        return -1;
    }
    return 0;
}

/* 1 ready, 0 deadline passed, -1 interrupted by a quitting signal. */
static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        struct pollfd p = {fd, events, 0};
        int left = deadline < 0 ? -1 : (int)(deadline - now_ms());
        if (deadline >= 0 && left < 0)
            left = 0;
        int n = poll(&p, 1, left);
        if (n >= 0)
            return n > 0;
        if (errno == EINTR && quit_sig)
            return -1;
    }
}

/*
 * Sends {"id":N,"cmd":cmd, ...extra} and returns the reply's result object (a new
 * reference), or NULL with l->err set; *status says which exit status that means.
 */
static json_t *rpc(link_t *l, const char *cmd, json_t *extra, int *status)
{
    json_t *req = extra ? extra : json_object();
    long long id = ++l->next_id;
    json_object_set_new(req, "id", json_integer(id));
    json_object_set_new(req, "cmd", json_string(cmd));
    char *line = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    *status = EXIT_UNREACHABLE;
    if (!line) {
        snprintf(l->err, sizeof(l->err), "out of memory");
        return NULL;
    }
    long long deadline = l->timeout_ms > 0 ? now_ms() + l->timeout_ms : -1;
    char *wire = NULL;
    if (asprintf(&wire, "%s\n", line) < 0)
        wire = NULL;
    free(line);
    size_t n = wire ? strlen(wire) : 0, off = 0;
    while (off < n) {
        ssize_t w = send(l->fd, wire + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            snprintf(l->err, sizeof(l->err), "%s: send: %s", l->path, strerror(errno));
            free(wire);
            return NULL;
        }
        off += (size_t)w;
    }
    free(wire);
    if (n == 0) {
        snprintf(l->err, sizeof(l->err), "out of memory");
        return NULL;
    }
    for (;;) {
        char *nl = l->len ? memchr(l->buf, '\n', l->len) : NULL;
        if (nl) {
            size_t ll = (size_t)(nl - l->buf);
            json_t *reply = json_loadb(l->buf, ll, 0, NULL);
            memmove(l->buf, nl + 1, l->len - ll - 1);
            l->len -= ll + 1;
            json_t *rid = json_object_get(reply, "id");
            if (!json_is_object(reply) || !json_is_integer(rid) || json_integer_value(rid) != id) {
                json_decref(reply);
                snprintf(l->err, sizeof(l->err), "%s: not the reply to our request", l->path);
                return NULL;
            }
            if (!json_is_true(json_object_get(reply, "ok"))) {
                json_t *e = json_object_get(reply, "error");
                snprintf(l->err, sizeof(l->err), "%s: %s",
                         json_string_value(json_object_get(e, "code")) ?: "EUNKNOWN",
                         json_string_value(json_object_get(e, "message")) ?: "");
                json_decref(reply);
                *status = EXIT_DAEMON_ERROR;
                return NULL;
            }
            *status = EXIT_OK;
            return reply;
        }
        if (l->len == l->cap) {
            size_t cap = l->cap ? l->cap * 2 : 65536;
            char *b = cap <= ((size_t)64 << 20) ? realloc(l->buf, cap) : NULL;
            if (!b) {
                snprintf(l->err, sizeof(l->err), "%s: reply too large", l->path);
                return NULL;
            }
            l->buf = b;
            l->cap = cap;
        }
        int ready = wait_fd(l->fd, POLLIN, deadline);
        if (ready <= 0) {
            snprintf(l->err, sizeof(l->err),
                     ready < 0 ? "interrupted" : "%s: no reply within %lld ms", l->path,
                     l->timeout_ms);
            return NULL;
        }
        ssize_t r = recv(l->fd, l->buf + l->len, l->cap - l->len, 0);
        if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) {
            snprintf(l->err, sizeof(l->err), "%s: netd closed the connection", l->path);
            return NULL;
        }
        if (r > 0)
            l->len += (size_t)r;
    }
}

/* ------------------------------------------------------------------ samples */

typedef struct sample {
    long long t_ms;
    json_t *stats, *servers, *sockets; /* replies */
} sample_t;

static void sample_free(sample_t *s)
{
    json_decref(s->stats);
    json_decref(s->servers);
    json_decref(s->sockets);
    memset(s, 0, sizeof(*s));
}

static int take_sample(link_t *l, const char *sort, int rows, sample_t *s)
{
    int status;
    s->t_ms = now_ms();
    if (!(s->stats = rpc(l, "stats", NULL, &status)))
        return status;
    if (!(s->servers = rpc(l, "servers", NULL, &status)))
        return status;
    json_t *args = json_pack("{s:s, s:i}", "sort", sort, "limit", rows > 0 ? rows : 1);
    if (!(s->sockets = rpc(l, "sockets", args, &status)))
        return status;
    return EXIT_OK;
}

static long long jint(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : 0;
}

/* The same-named object in the previous sample's array (servers by name, sockets by id). */
static const json_t *find_prev(const json_t *arr, const char *key, const json_t *like)
{
    const json_t *want = json_object_get(like, key);
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
        if (json_equal(json_object_get(o, key), (json_t *)want))
            return o;
    return NULL;
}

/* Per second between two samples; -1 when there is no earlier one. */
static double rate(const json_t *now, const json_t *prev, const char *key, long long dt_ms)
{
    if (!prev || dt_ms <= 0)
        return -1;
    long long d = jint(now, key) - jint(prev, key);
    return d < 0 ? 0 : (double)d * 1000.0 / (double)dt_ms;
}

static void fmt_rate(char *buf, size_t n, double v, bool bytes)
{
    static const char *const units[] = {"", "k", "M", "G", "T"};
    if (v < 0) {
        snprintf(buf, n, "-");
        return;
    }
    int u = 0;
    while (v >= 1000 && u < 4) {
        v /= 1000;
        u++;
    }
    snprintf(buf, n, u ? "%.1f%s%s" : "%.0f%s%s", v, units[u], bytes ? "B/s" : "/s");
}

static void fmt_bytes(char *buf, size_t n, long long v)
{
    static const char *const units[] = {"B", "kB", "MB", "GB", "TB"};
    double x = (double)v;
    int u = 0;
    while (x >= 1000 && u < 4) {
        x /= 1000;
        u++;
    }
    snprintf(buf, n, u ? "%.1f%s" : "%.0f%s", x, units[u]);
}

static void fmt_ms(char *buf, size_t n, long long ms)
{
    long long s = ms / 1000;
    if (s < 60)
        snprintf(buf, n, "%lld.%llds", s, ms % 1000 / 100);
    else if (s < 3600)
        snprintf(buf, n, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, n, "%lldh%02lldm", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, n, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
}

/* ------------------------------------------------------------------ the screen */

typedef struct screen {
    char *buf;
    size_t len, cap;
    int rows, cols, used;
} screen_t;

/* One line of the frame, cut at the terminal's width; lines past its height are dropped. */
__attribute__((format(printf, 2, 3))) static void line(screen_t *s, const char *fmt, ...)
{
    if (s->used >= s->rows)
        return;
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    size_t w = strlen(text);
    if (w > (size_t)s->cols)
        w = (size_t)s->cols;
    size_t need = s->len + w + 16;
    if (need > s->cap) {
        s->cap = need * 2;
        s->buf = realloc(s->buf, s->cap);
        if (!s->buf)
            abort();
    }
    /* Each line clears what the previous frame left to its right. */
    s->len += (size_t)snprintf(s->buf + s->len, s->cap - s->len, "%s%.*s\033[K",
                               s->used ? "\r\n" : "", (int)w, text);
    s->used++;
}

/* Names may hold anything: control characters would move the cursor. */
static void clean(char *out, size_t n, const char *in)
{
    size_t k = 0;
    for (; in && *in && k + 1 < n; in++)
        out[k++] = (unsigned char)*in < 0x20 || *in == 0x7f ? '?' : *in;
    out[k] = '\0';
}

static void draw(const sample_t *cur, const sample_t *prev, const char *sort, bool paused)
{
    screen_t s = {0};
    screen_size(&s.rows, &s.cols);
    long long dt = prev ? cur->t_ms - prev->t_ms : 0;
    const json_t *st = cur->stats;
    const json_t *pst = prev ? prev->stats : NULL;
    char up[32], acc[32], in[32], out[32];
    fmt_ms(up, sizeof(up), jint(st, "uptimeMs"));
    fmt_rate(acc, sizeof(acc), rate(st, pst, "acceptedTotal", dt), false);
    fmt_rate(in, sizeof(in), rate(st, pst, "bytesReadTotal", dt), true);
    fmt_rate(out, sizeof(out), rate(st, pst, "bytesWrittenTotal", dt), true);
    const json_t *threads = json_object_get(st, "threads");
    line(&s, "netd %s  pid %lld  up %s  threads %zu  conns %lld  accepts %s  in %s  out %s",
         json_string_value(json_object_get(st, "version")) ?: "?", jint(st, "pid"), up,
         json_array_size(threads), jint(st, "connections"), acc, in, out);
    line(&s, "sort: %-5s  q quit  s sort  p pause%s", sort, paused ? "   [PAUSED]" : "");
    line(&s, "%s", "");

    line(&s, "%-20s %7s %10s %10s %10s %10s %9s", "SERVER", "CONNS", "ACCEPTS/S", "IN/S", "OUT/S",
         "ACCEPTED", "REJECTED");
    /* The order of `servers`: the order they were opened. */
    const json_t *servers = json_object_get(cur->servers, "servers");
    const json_t *pservers = prev ? json_object_get(prev->servers, "servers") : NULL;
    size_t i;
    json_t *o;
    json_array_foreach(servers, i, o) {
        const json_t *p = pservers ? find_prev(pservers, "name", o) : NULL;
        char name[64];
        clean(name, sizeof(name), json_string_value(json_object_get(o, "name")));
        fmt_rate(acc, sizeof(acc), rate(o, p, "acceptedTotal", dt), false);
        fmt_rate(in, sizeof(in), rate(o, p, "bytesReadTotal", dt), true);
        fmt_rate(out, sizeof(out), rate(o, p, "bytesWrittenTotal", dt), true);
        line(&s, "%-20.20s %7lld %10s %10s %10s %10lld %9lld", name, jint(o, "connections"), acc,
             in, out, jint(o, "acceptedTotal"), jint(o, "rejectedTotal"));
    }
    line(&s, "%s", "");

    long long most = 1;
    json_array_foreach(threads, i, o)
        if (jint(o, "connections") > most)
            most = jint(o, "connections");
    int barw = s.cols - 16 > 60 ? 60 : s.cols - 16;
    line(&s, "%-6s %7s", "THREAD", "CONNS");
    json_array_foreach(threads, i, o) {
        char bar[128];
        long long c = jint(o, "connections");
        int n = barw > 0 ? (int)(c * barw / most) : 0;
        memset(bar, '#', (size_t)n);
        bar[n] = '\0';
        line(&s, "%-6lld %7lld %s", jint(o, "id"), c, bar);
    }
    line(&s, "%s", "");

    const json_t *socks = json_object_get(cur->sockets, "sockets");
    const json_t *psocks = prev ? json_object_get(prev->sockets, "sockets") : NULL;
    /* BYTES is in + out, what the bytes order sorts on. */
    line(&s, "%-7s %-12s %3s %-21s %9s %9s %8s %7s %7s %7s", "SOCKET", "SERVER", "THR", "REMOTE",
         "IN/S", "OUT/S", "BYTES", "SEND-Q", "AGE", "IDLE");
    json_array_foreach(socks, i, o) {
        const json_t *p = psocks ? find_prev(psocks, "id", o) : NULL;
        char name[64], remote[64], bytes[16], age[16], idle[16];
        clean(name, sizeof(name), json_string_value(json_object_get(o, "serverName")));
        const char *ra = json_string_value(json_object_get(o, "remoteAddress"));
        if (ra)
            snprintf(remote, sizeof(remote), strchr(ra, ':') ? "[%s]:%lld" : "%s:%lld", ra,
                     jint(o, "remotePort"));
        else
            snprintf(remote, sizeof(remote), "unix");
        fmt_bytes(bytes, sizeof(bytes), jint(o, "bytesRead") + jint(o, "bytesWritten"));
        fmt_rate(in, sizeof(in), rate(o, p, "bytesRead", dt), true);
        fmt_rate(out, sizeof(out), rate(o, p, "bytesWritten", dt), true);
        fmt_ms(age, sizeof(age), jint(o, "ageMs"));
        fmt_ms(idle, sizeof(idle), jint(o, "idleMs"));
        line(&s, "%-7lld %-12.12s %3lld %-21s %9s %9s %8s %7lld %7s %7s", jint(o, "id"), name,
             jint(o, "thread"), remote, in, out, bytes, jint(o, "bufferSize"), age, idle);
    }
    /* Home, the frame, then clear whatever the previous frame had below it. */
    fputs("\033[H", stdout);
    fwrite(s.buf, 1, s.len, stdout);
    fputs("\033[J", stdout);
    fflush(stdout);
    free(s.buf);
}

/* Rows the sockets table can show below everything else. */
static int socket_rows(const sample_t *last)
{
    int rows, cols;
    screen_size(&rows, &cols);
    size_t nserv = last ? json_array_size(json_object_get(last->servers, "servers")) : 1;
    size_t nthr = last ? json_array_size(json_object_get(last->stats, "threads")) : 2;
    int left = rows - 8 - (int)nserv - (int)nthr;
    return left > 1 ? left : 1;
}

/* ------------------------------------------------------------------ the two modes */

static void log_line(const sample_t *cur, const sample_t *prev)
{
    long long dt = cur->t_ms - prev->t_ms;
    char when[16];
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(when, sizeof(when), "%H:%M:%S", &tm);
    printf("%s %8lld %10.1f %12.0f %12.0f\n", when, jint(cur->stats, "connections"),
           rate(cur->stats, prev->stats, "acceptedTotal", dt),
           rate(cur->stats, prev->stats, "bytesReadTotal", dt),
           rate(cur->stats, prev->stats, "bytesWrittenTotal", dt));
    fflush(stdout);
}

/* Sleeps until deadline; on a terminal, returns early with the key pressed (0: none,
 * -1: quit by a signal). */
static int wait_key(bool keys, long long deadline)
{
    for (;;) {
        if (quit_sig)
            return -1;
        if (resized) {
            resized = 0;
            return 'R';
        }
        long long left = deadline - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {STDIN_FILENO, POLLIN, 0};
        int n = poll(&p, keys ? 1 : 0, (int)left);
        if (n < 0)
            continue; /* EINTR: a signal; the flags above say which */
        if (n > 0) {
            char c;
            ssize_t r = read(STDIN_FILENO, &c, 1);
            if (r == 1)
                return (unsigned char)c;
            if (r == 0)
                keys = false; /* stdin closed: refresh on the timer only */
        }
    }
}

int netctl_top(const char *socket_path, const netctl_top_opts_t *o)
{
    link_t l = {.fd = -1, .path = socket_path, .timeout_ms = o->timeout_ms};
    bool tty = isatty(STDOUT_FILENO);
    bool keys = tty && isatty(STDIN_FILENO);
    int sort = 0;
    for (int i = 0; i < NSORTS; i++)
        if (o->sort && strcmp(o->sort, sorts[i]) == 0)
            sort = i;
    struct sigaction sa = {.sa_handler = on_quit};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    struct sigaction sw = {.sa_handler = on_winch};
    sigaction(SIGWINCH, &sw, NULL);

    if (link_open(&l) != 0) {
        fprintf(stderr, "netctl: %s\n", l.err);
        return EXIT_UNREACHABLE;
    }
    /* newer is on screen; rates are taken against older. */
    sample_t older = {0}, newer = {0}, next = {0};
    int status = take_sample(&l, sorts[sort], 20, &newer);
    if (status != EXIT_OK)
        goto fail;
    if (tty) {
        setup_terminal(keys);
        draw(&newer, NULL, sorts[sort], false);
    } else {
        printf("%-8s %8s %10s %12s %12s\n", "time", "conns", "accepts/s", "in_bytes/s",
               "out_bytes/s");
        fflush(stdout);
    }
    bool paused = false;
    long long shown = 0;
    long long deadline = now_ms() + o->interval_ms;
    for (;;) {
        int key = wait_key(keys, deadline);
        if (key < 0 || key == 'q' || key == 'Q')
            break;
        if (key == 'p' || key == 'P' || key == 'R') {
            paused = key == 'R' ? paused : !paused;
            draw(&newer, older.stats ? &older : NULL, sorts[sort], paused);
            continue;
        }
        if (key == 's' || key == 'S')
            sort = (sort + 1) % NSORTS; /* and a fresh sample in that order, paused or not */
        else if (key != 0)
            continue; /* not a key of ours */
        if (key == 0) {
            deadline = now_ms() + o->interval_ms;
            if (paused)
                continue;
        }
        status = take_sample(&l, sorts[sort], tty ? socket_rows(&newer) : 1, &next);
        if (status != EXIT_OK)
            goto fail;
        sample_free(&older);
        older = newer;
        newer = next;
        memset(&next, 0, sizeof(next));
        if (tty)
            draw(&newer, &older, sorts[sort], paused);
        else
            log_line(&newer, &older);
        if (key == 0 && o->count > 0 && ++shown >= o->count)
            break;
    }
    sample_free(&older);
    sample_free(&newer);
    restore_terminal();
    close(l.fd);
    free(l.buf);
    return EXIT_OK;
fail:
    restore_terminal();
    if (!quit_sig)
        fprintf(stderr, "netctl: %s\n", l.err);
    sample_free(&older);
    sample_free(&newer);
    sample_free(&next);
    close(l.fd);
    free(l.buf);
    return quit_sig ? EXIT_OK : status;
}
