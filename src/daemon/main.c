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
            "usage: netd [-c FILE] [-f] [-t THREADS] [-s CONTROL_PATH] [--metrics HOST:PORT] [--check]\n"
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
                 "open-file limit %d cannot hold the configured maxConnections (%lld descriptors needed)",
                 d->fd_limit, need);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    netd_t *d = arg;
    if (sig == SIGUSR2) {
        netd_log(NETD_LOG_INFO, "SIGUSR2: upgrading to %s", d->exe ? d->exe : "?");
        netd_upgrade_start(d, NULL, NULL, d->cfg.shutdown_timeout_ms ? d->cfg.shutdown_timeout_ms : 30000);
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

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"foreground", no_argument, NULL, 'f'},
        {"threads", required_argument, NULL, 't'}, {"socket", required_argument, NULL, 's'},
        {"check", no_argument, NULL, 'C'},       {"verbose", no_argument, NULL, 'v'},
        {"version", no_argument, NULL, 'V'},     {"help", no_argument, NULL, 'h'},
        {"metrics", required_argument, NULL, 'M'}, {NULL, 0, NULL, 0}};
    const char *config_file = NULL, *socket_path = NULL, *metrics_flag = NULL;
    int threads = -1;
    bool check_only = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:ft:s:vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_file = optarg;
            break;
        case 'f':
            break; /* netd never forks: the supervisor (systemd, the shell) keeps it */
        case 't': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 0 || v > 1024) {
                fprintf(stderr, "netd: -t: must be a number of threads 0-1024, not \"%s\"\n", optarg);
                return 2;
            }
            threads = (int)v;
            break;
        }
        case 's':
            socket_path = optarg;
            break;
        case 'C':
            check_only = true;
            break;
        case 'M': {
            char *host, err[256];
            int port;
            if (netd_metrics_parse_addr(optarg, &host, &port, err, sizeof(err)) != 0) {
                fprintf(stderr, "netd: %s\n", err);
                return 2;
            }
            free(host);
            metrics_flag = optarg;
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

    static netd_t daemon_state;
    netd_t *d = &daemon_state;
    d->metrics_flag = metrics_flag;
    netd_log_init();
    /* Started by a running netd to take over from it (upgrade.c): the channel. */
    int takeover = netd_takeover_fd();
    netd_upgrade_init(d, argc, argv);
    char err[1024];
    /* Without -c: the installed config when there is one (what --check checks too). */
    bool default_file = !config_file && access(DEFAULT_CONFIG, F_OK) == 0;
    if (default_file)
        config_file = DEFAULT_CONFIG;
    if (config_file) {
        if (netd_config_load(config_file, &d->cfg, err, sizeof(err)) != 0) {
            fprintf(stderr, "netd: %s\n", err);
            return 2;
        }
        d->config_file = realpath(config_file, NULL);
    } else {
        netd_config_default(&d->cfg);
    }

    const char *control_from = "-s";
    if (socket_path) {
        snprintf(d->control_path, sizeof(d->control_path), "%s", socket_path);
    } else if (d->cfg.control_path) {
        snprintf(d->control_path, sizeof(d->control_path), "%s", d->cfg.control_path);
        control_from = "control.path";
    } else {
        netd_default_socket_path(d->control_path, sizeof(d->control_path));
        d->control_default = true;
        const char *rd = getenv("RUNTIME_DIRECTORY"), *xdg = getenv("XDG_RUNTIME_DIR");
        control_from = rd && *rd         ? "$RUNTIME_DIRECTORY"
                       : geteuid() == 0  ? "the default for root"
                       : xdg && *xdg     ? "$XDG_RUNTIME_DIR"
                                         : "the default for this user";
    }

    if (check_only) {
        if (config_file)
            printf("netd: %s: valid (%zu server%s)\n", config_file, d->cfg.nservers,
                   d->cfg.nservers == 1 ? "" : "s");
        else
            printf("netd: no config file at %s: netd would run the built-in config (no "
                   "servers): valid\n",
                   DEFAULT_CONFIG);
        if (netd_log_level > NETD_LOG_INFO) {
            /* Like nginx -T: the effective config, every default spelled out. */
            json_t *eff = netd_config_json(&d->cfg, d->control_path);
            char *text = eff ? json_dumps(eff, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
            if (text)
                printf("%s\n", text);
            free(text);
            json_decref(eff);
        }
        netd_config_free(&d->cfg);
        free(d->config_file);
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Worker threads inherit a mask that blocks everything; only the main loop handles
     * signals (nd_thread_start blocks them around thread creation). */
    d->started_ms = netd_now_ms();
    atomic_init(&d->next_id, 1);
    atomic_init(&d->max_buffered_bytes, d->cfg.max_buffered_bytes);
    atomic_init(&d->high_water_mark, d->cfg.high_water_mark);
    atomic_init(&d->stall_ms, d->cfg.stall_ms);
    TAILQ_INIT(&d->servers);
    TAILQ_INIT(&d->clients);
    TAILQ_INIT(&d->moves);
    TAILQ_INIT(&d->moves_retired);
    if (d->config_file)
        netd_log(NETD_LOG_INFO, "netd %s: config %s", NETD_VERSION_STRING, d->config_file);
    else
        netd_log(NETD_LOG_INFO, "netd %s: no config file (%s does not exist): built-in defaults",
                 NETD_VERSION_STRING, DEFAULT_CONFIG);
    netd_log(NETD_LOG_INFO, "control socket %s (from %s)", d->control_path, control_from);
    d->fd_limit = raise_fd_limit();
    warn_capacity(d);
    netd_listen_fds_init(d);

    d->loop = nd_loop_new();
    if (!d->loop) {
        fprintf(stderr, "netd: cannot create the event loop\n");
        return 1;
    }
    int nthreads = threads >= 0 ? threads : d->cfg.threads;
    if (nthreads == 0)
        nthreads = detect_cpus();
    if (takeover < 0 && netd_control_start(d) != 0) {
        netd_notify("STATUS=failed: control socket %s", d->control_path);
        nd_loop_free(d->loop);
        netd_config_free(&d->cfg);
        free(d->config_file);
        return 1;
    }
    if (netd_observe_init(d, nthreads) != 0) {
        netd_control_stop(d);
        return 1;
    }
    if (netd_workers_start(d, nthreads) != 0) {
        netd_log(NETD_LOG_ERROR, "cannot start %d worker threads", nthreads);
        netd_control_stop(d);
        return 1;
    }
    if (takeover >= 0 && netd_takeover(d, takeover) != 0) {
        netd_workers_stop(d);
        nd_loop_free(d->loop);
        netd_workers_free(d);
        return 1;
    }
    /* Taking over, the old netd still holds the metrics port: wait for it. */
    if (netd_observe_start(d, takeover >= 0) != 0) {
        netd_control_stop(d);
        return 1;
    }
    struct event_base *base = nd_loop_base(d->loop);
    struct event *sigs[5];
    const int signums[5] = {SIGTERM, SIGINT, SIGHUP, SIGUSR2, 0};
    for (int i = 0; signums[i]; i++) {
        sigs[i] = evsignal_new(base, signums[i], on_signal, d);
        event_add(sigs[i], NULL);
    }
    struct event *overload = event_new(base, -1, EV_PERSIST, watch_overload, d);
    struct timeval second = {1, 0};
    if (overload)
        event_add(overload, &second);
    if (takeover < 0) {
        netd_log(NETD_LOG_INFO, "%d worker thread(s); opening %zu configured server(s)",
                 nthreads, d->cfg.nservers);
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
    for (int i = 0; signums[i]; i++)
        event_free(sigs[i]);
    if (d->drain_timer)
        event_free(d->drain_timer);
    if (overload)
        event_free(overload);
    /* Threads first, then the main loop (whose leftover servers still post to the worker
     * loops), then the worker loops (dropping what was posted to them). */
    netd_workers_stop(d);
    netd_observe_stop(d);
    nd_loop_free(d->loop);
    netd_workers_free(d);
    netd_moves_free_all(d);
    netd_config_free(&d->cfg);
    netd_loaded_free(d);
    for (int i = 0; i < d->listen_fds_count; i++)
        free(d->listen_fd_names ? d->listen_fd_names[i] : NULL);
    free(d->listen_fd_names);
    for (int i = 0; d->argv && d->argv[i]; i++)
        free(d->argv[i]);
    free(d->argv);
    free(d->exe);
    free(d->config_file);
    return d->exit_code;
}
