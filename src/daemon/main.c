/* SPDX-License-Identifier: MIT */
/*
 * netd's entry point: options, the config, worker threads, the control socket, signals
 * on the main loop only, and an orderly exit (lifecycle.c opens the servers and tells
 * systemd when they all listen).
 */
#include "config.h"

#include "daemon.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <event2/event.h>

#ifndef NETD_SYSCONFDIR
#define NETD_SYSCONFDIR "/etc"
#endif
/* The config netd reads without -c, when it exists (the sample `make install` puts there). */
#define DEFAULT_CONFIG NETD_SYSCONFDIR "/netd/netd.json"

uint64_t netd_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t netd_next_id(netd_t *d)
{
    return atomic_fetch_add(&d->next_id, 1);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: netd [-c FILE] [-f] [-t THREADS] [-s CONTROL_PATH] [--metrics HOST:PORT] "
            "[--check]\n"
            "            [-v] [--version] [--help]\n"
            "  -c, --config FILE    JSON config (default: " DEFAULT_CONFIG " if it exists,\n"
            "                       else the built-in one: no servers)\n"
            "  -f, --foreground     accepted for compatibility: netd never forks\n"
            "  -t, --threads N      worker threads (default: config, else one per CPU)\n"
            "  -s, --socket PATH    control socket path\n"
            "      --metrics HOST:PORT  serve GET /metrics there (over the config's metrics)\n"
            "      --check          validate the config and exit (0 valid, 2 invalid);\n"
            "                       with -v, print it with every default spelled out\n"
            "  -v, --verbose        more logging: -v reload diffs and moves, -vv every connection\n"
            "      --version        print the version\n"
            "  -h, --help           this text\n");
}

/* Raises the open-file limit as far as allowed: every connection is a descriptor. */
static int raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur > INT_MAX ? INT_MAX : (int)rl.rlim_cur;
}

static void warn_capacity(netd_t *d)
{
    long long need = NETD_FD_RESERVE;
    for (size_t i = 0; i < d->cfg.nservers; i++) {
        if (d->cfg.servers[i].max_connections <= 0)
            continue;
        int per = d->cfg.servers[i].handler.ops->descriptors;
        need += (long long)d->cfg.servers[i].max_connections * per;
    }
    if (need > d->fd_limit)
        netd_log(NETD_LOG_WARN,
                 "open-file limit %d cannot hold the configured maxConnections (%lld descriptors "
                 "needed)",
                 d->fd_limit, need);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    netd_t *d = arg;
    if (sig == SIGUSR2) {
        netd_log(NETD_LOG_INFO, "SIGUSR2: upgrading to %s", d->exe ? d->exe : "?");
        netd_upgrade_start(d, NULL, NULL,
                           d->cfg.shutdown_timeout_ms ? d->cfg.shutdown_timeout_ms : 30000);
        return;
    }
    if (sig == SIGHUP) {
        netd_observe_reopen(d); /* logrotate moved the access log, whatever the reload says */
        netd_reload(d, NULL);
        return;
    }
    if (d->upgrade && !d->draining) {
        /* Stopping wins over upgrading: everything goes back first, then the drain. */
        netd_log(NETD_LOG_INFO, "%s during an upgrade: the upgrade is undone, then netd drains",
                 sig == SIGINT ? "SIGINT" : "SIGTERM");
        d->drain_after_upgrade = true;
        netd_upgrade_cancel(d, "netd was told to stop");
        return;
    }
    if (d->draining) {
        netd_log(NETD_LOG_WARN, "second %s: exiting now", sig == SIGINT ? "SIGINT" : "SIGTERM");
        d->exit_code = 1;
        nd_loop_stop(d->loop);
        return;
    }
    netd_log(NETD_LOG_INFO, "%s: draining", sig == SIGINT ? "SIGINT" : "SIGTERM");
    netd_drain(d, d->cfg.shutdown_timeout_ms);
}

/* One line per second at most while accepting is paused for lack of descriptors. */
static void watch_overload(evutil_socket_t fd, short what, void *arg)
{
    netd_t *d = arg;
    netd_log_flush();
    uint64_t paused = netd_stats_accept_paused(d);
    if (paused > d->paused_seen)
        netd_log(NETD_LOG_WARN,
                 "accepting paused %llu time(s) in the last second: out of file descriptors "
                 "(limit %d, %d kept for control and upstreams)",
                 (unsigned long long)(paused - d->paused_seen), d->fd_limit, NETD_FD_RESERVE);
    d->paused_seen = paused;
}

static void finish_timeout(evutil_socket_t fd, short what, void *arg)
{
    netd_t *d = arg;
    d->finish_expired = true;
    nd_loop_stop(d->loop);
}

/* Nothing the workers still owe the main loop: no fan-out answer, no move completion. */
static bool settled(const netd_t *d)
{
    return d->fanouts_open == 0 && TAILQ_EMPTY(&d->moves);
}

/*
 * After the main loop: cut what the drain left (the deadline passed, or a second signal),
 * let every 'close' run so nothing leaks, close the control clients, and wait for the
 * answers the workers still owe (fan-outs, moves in flight). Bounded: two seconds.
 */
static void finish(netd_t *d)
{
    struct event *t = evtimer_new(nd_loop_base(d->loop), finish_timeout, d);
    struct timeval two = {2, 0};
    if (t)
        evtimer_add(t, &two);
    if (!TAILQ_EMPTY(&d->servers)) {
        d->draining = true;
        netd_workers_cut(d);
        netd_server_t *s, *next;
        for (s = TAILQ_FIRST(&d->servers); s; s = next) {
            next = TAILQ_NEXT(s, link);
            netd_server_close(s, false);
        }
        nd_loop_run(d->loop); /* netd_maybe_drained stops it once every server closed */
    }
    netd_control_stop(d);
    nd_loop_unref(d->loop);
    nd_loop_run(d->loop); /* the control clients' 'close' */
    while (!settled(d) && !d->finish_expired)
        nd_loop_run_once(d->loop, 0);
    if (t)
        event_free(t);
}

static int detect_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* What the command line asked for. */
typedef struct options {
    const char *config_file, *socket_path, *metrics_flag;
    int threads; /* -1: the config's */
    bool check_only;
} options_t;

/* -1 to go on; otherwise the exit status (--help, --version, a bad option: 2). */
static int parse_options(int argc, char **argv, options_t *o)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},  {"foreground", no_argument, NULL, 'f'},
        {"threads", required_argument, NULL, 't'}, {"socket", required_argument, NULL, 's'},
        {"check", no_argument, NULL, 'C'},         {"verbose", no_argument, NULL, 'v'},
        {"version", no_argument, NULL, 'V'},       {"help", no_argument, NULL, 'h'},
        {"metrics", required_argument, NULL, 'M'}, {NULL, 0, NULL, 0}};
    *o = (options_t){.threads = -1};
    int opt;
    while ((opt = getopt_long(argc, argv, "c:ft:s:vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            o->config_file = optarg;
            break;
        case 'f':
            break; /* netd never forks: the supervisor (systemd, the shell) keeps it */
        case 't': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 0 || v > 1024) {
                fprintf(stderr, "netd: -t: must be a number of threads 0-1024, not \"%s\"\n",
                        optarg);
                return 2;
            }
            o->threads = (int)v;
            break;
        }
        case 's':
            o->socket_path = optarg;
            break;
        case 'C':
            o->check_only = true;
            break;
        case 'M': {
            char *host, err[256];
            int port;
            if (netd_metrics_parse_addr(optarg, &host, &port, err, sizeof(err)) != 0) {
                fprintf(stderr, "netd: %s\n", err);
                return 2;
            }
            free(host);
            o->metrics_flag = optarg;
            break;
        }
        case 'v':
            if (netd_log_level < NETD_LOG_TRACE)
                netd_log_level++;
            break;
        case 'V':
            printf("netd %s\n", NETD_VERSION_STRING);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "netd: unexpected argument \"%s\" (see netd --help)\n", argv[optind]);
        return 2;
    }
    return -1;
}

/* -c FILE, else the installed config when there is one (what --check checks too), else
 * the built-in one. 0, or -1 (printed). */
static int load_config(netd_t *d, options_t *o)
{
    if (!o->config_file && access(DEFAULT_CONFIG, F_OK) == 0)
        o->config_file = DEFAULT_CONFIG;
    if (!o->config_file) {
        netd_config_default(&d->cfg);
        return 0;
    }
    char err[1024];
    if (netd_config_load(o->config_file, &d->cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "netd: %s\n", err);
        return -1;
    }
    d->config_file = realpath(o->config_file, NULL);
    return 0;
}

/* The control socket's path: -s, the config's, else the default. Returns which one, for
 * the log. */
static const char *choose_control_path(netd_t *d, const options_t *o)
{
    if (o->socket_path) {
        snprintf(d->control_path, sizeof(d->control_path), "%s", o->socket_path);
        return "-s";
    }
    if (d->cfg.control_path) {
        snprintf(d->control_path, sizeof(d->control_path), "%s", d->cfg.control_path);
        return "control.path";
    }
    netd_default_socket_path(d->control_path, sizeof(d->control_path));
    d->control_default = true;
    const char *rd = getenv("RUNTIME_DIRECTORY"), *xdg = getenv("XDG_RUNTIME_DIR");
    return rd && *rd        ? "$RUNTIME_DIRECTORY"
           : geteuid() == 0 ? "the default for root"
           : xdg && *xdg    ? "$XDG_RUNTIME_DIR"
                            : "the default for this user";
}

/* --check: the config was valid (load_config said so); with -v, print it like nginx -T,
 * every default spelled out. */
static void print_check(netd_t *d, const char *config_file)
{
    if (config_file)
        printf("netd: %s: valid (%zu server%s)\n", config_file, d->cfg.nservers,
               d->cfg.nservers == 1 ? "" : "s");
    else
        printf("netd: no config file at %s: netd would run the built-in config (no "
               "servers): valid\n",
               DEFAULT_CONFIG);
    if (netd_log_level <= NETD_LOG_INFO)
        return;
    json_t *eff = netd_config_json(&d->cfg, d->control_path);
    char *text = eff ? json_dumps(eff, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    if (text)
        printf("%s\n", text);
    free(text);
    json_decref(eff);
}

/* The state every module reads before any loop runs. 0, or -1 (out of memory). */
static int init_state(netd_t *d, const char *control_from)
{
    d->started_ms = netd_now_ms();
    atomic_init(&d->next_id, 1);
    atomic_init(&d->max_buffered_bytes, d->cfg.max_buffered_bytes);
    atomic_init(&d->high_water_mark, d->cfg.high_water_mark);
    atomic_init(&d->stall_ms, d->cfg.stall_ms);
    TAILQ_INIT(&d->servers);
    TAILQ_INIT(&d->moves);
    TAILQ_INIT(&d->moves_retired);
    if (netd_control_init(d) != 0 || netd_stats_init(d) != 0) {
        fprintf(stderr, "netd: out of memory\n");
        return -1;
    }
    if (d->config_file)
        netd_log(NETD_LOG_INFO, "netd %s: config %s", NETD_VERSION_STRING, d->config_file);
    else
        netd_log(NETD_LOG_INFO, "netd %s: no config file (%s does not exist): built-in defaults",
                 NETD_VERSION_STRING, DEFAULT_CONFIG);
    netd_log(NETD_LOG_INFO, "control socket %s (from %s)", d->control_path, control_from);
    d->fd_limit = raise_fd_limit();
    warn_capacity(d);
    netd_activation_init(d);
    return 0;
}

/* The main loop, the control socket (unless an old netd hands its own over), the
 * observers, the workers, then the takeover when there is one. 0, or -1 (logged). */
static int start(netd_t *d, int nthreads, int takeover)
{
    if (!(d->loop = nd_loop_new())) {
        netd_log(NETD_LOG_ERROR, "cannot create the event loop");
        return -1;
    }
    if (takeover < 0 && netd_control_start(d) != 0) {
        netd_notify("STATUS=failed: control socket %s", d->control_path);
        return -1;
    }
    if (netd_observe_init(d, nthreads) != 0)
        return -1;
    if (netd_workers_start(d, nthreads) != 0) {
        netd_log(NETD_LOG_ERROR, "cannot start %d worker threads", nthreads);
        return -1;
    }
    if (takeover >= 0 && netd_takeover(d, takeover) != 0)
        return -1;
    /* Taking over, the old netd still holds the metrics port: wait for it. */
    return netd_observe_start(d, takeover >= 0);
}

/* What the main loop watches besides its servers: signals, and the overload log. */
typedef struct main_events {
    struct event *sigs[4];
    struct event *overload;
} main_events_t;

static const int signums[4] = {SIGTERM, SIGINT, SIGHUP, SIGUSR2};

static void watch_events(netd_t *d, main_events_t *ev)
{
    struct event_base *base = nd_loop_base(d->loop);
    for (int i = 0; i < 4; i++) {
        ev->sigs[i] = evsignal_new(base, signums[i], on_signal, d);
        if (!ev->sigs[i] || event_add(ev->sigs[i], NULL) != 0)
            netd_log(NETD_LOG_ERROR, "cannot watch signal %d", signums[i]);
    }
    ev->overload = event_new(base, -1, EV_PERSIST, watch_overload, d);
    struct timeval second = {1, 0};
    if (ev->overload)
        event_add(ev->overload, &second);
}

static void unwatch_events(netd_t *d, main_events_t *ev)
{
    for (int i = 0; i < 4; i++)
        if (ev->sigs[i])
            event_free(ev->sigs[i]);
    if (ev->overload)
        event_free(ev->overload);
    if (d->drain_timer)
        event_free(d->drain_timer);
    d->drain_timer = NULL;
}

/* Frees what the steps above made, whichever got done: threads first, then the main loop
 * (whose leftover servers still post to the worker loops), then the worker loops
 * (dropping what was posted to them). */
static void teardown(netd_t *d)
{
    netd_control_stop(d);
    netd_workers_stop(d);
    netd_observe_stop(d);
    nd_loop_free(d->loop);
    d->loop = NULL;
    netd_workers_free(d);
    netd_moves_free_all(d);
    netd_config_free(&d->cfg);
    netd_loaded_free(d);
    netd_activation_free(d);
    for (int i = 0; d->argv && d->argv[i]; i++)
        free(d->argv[i]);
    free(d->argv);
    free(d->exe);
    free(d->closed_names);
    netd_control_free(d);
    netd_stats_free(d);
    free(d->config_file);
}

int main(int argc, char **argv)
{
    options_t o;
    int rc = parse_options(argc, argv, &o);
    if (rc >= 0)
        return rc;
    static netd_t daemon_state;
    netd_t *d = &daemon_state;
    d->metrics_flag = o.metrics_flag;
    netd_log_init();
    /* Started by a running netd to take over from it (upgrade.c): the channel. */
    int takeover = netd_takeover_fd();
    netd_upgrade_init(d, argc, argv);
    if (load_config(d, &o) != 0) {
        teardown(d);
        return 2;
    }
    const char *control_from = choose_control_path(d, &o);
    if (o.check_only) {
        print_check(d, o.config_file);
        teardown(d);
        return 0;
    }
    /* Worker threads inherit a mask that blocks everything; only the main loop handles
     * signals (nd_thread_start blocks them around thread creation). */
    signal(SIGPIPE, SIG_IGN);
    int nthreads = o.threads >= 0 ? o.threads : d->cfg.threads;
    if (nthreads == 0)
        nthreads = detect_cpus();
    if (init_state(d, control_from) != 0 || start(d, nthreads, takeover) != 0) {
        teardown(d);
        return 1;
    }
    main_events_t ev;
    watch_events(d, &ev);
    if (takeover < 0) {
        netd_log(NETD_LOG_INFO, "%d worker thread(s); opening %zu configured server(s)", nthreads,
                 d->cfg.nservers);
        /* READY=1 once every one listens; if one cannot, netd exits 1 naming it. */
        netd_start_servers(d);
    } else {
        /* The servers came with the takeover: the file they were opened from is the one
         * a reload compares with. */
        netd_servers_taken_over(d);
    }
    /* The main loop runs until the drain ends, a second signal cuts it short, or a
     * configured server could not listen. */
    nd_loop_ref(d->loop);
    nd_loop_run(d->loop);
    finish(d);
    netd_log(NETD_LOG_INFO, "exiting with status %d", d->exit_code);
    unwatch_events(d, &ev);
    teardown(d);
    return d->exit_code;
}
