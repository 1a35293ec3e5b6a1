/*
 * The daemon's lifecycle after startup: the drain (SIGTERM, `shutdown`) with its deadline,
 * and the reload (SIGHUP) that applies the difference between two config files.
 */
#include "config.h"

#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>

static void drain_deadline(evutil_socket_t fd, short what, void *arg)
{
    netd_t *d = arg;
    netd_log(NETD_LOG_WARN, "drain deadline passed: cutting the remaining connections");
    d->exit_code = 1;
    nd_loop_stop(d->loop);
}

void netd_maybe_drained(netd_t *d)
{
    if (d->draining && TAILQ_EMPTY(&d->servers)) {
        netd_log(NETD_LOG_INFO, "drained: every connection ended");
        nd_loop_stop(d->loop);
    }
}

void netd_drain(netd_t *d, unsigned timeout_ms)
{
    if (d->draining)
        return;
    d->draining = true;
    netd_server_t *s, *next;
    for (s = TAILQ_FIRST(&d->servers); s; s = next) {
        next = TAILQ_NEXT(s, link);
        netd_server_close(s, false);
    }
    /* Told once the listeners are closed: from STOPPING on, a connect is refused. */
    netd_notify("STOPPING=1\nSTATUS=draining");
    netd_log(NETD_LOG_INFO, "draining: no new connections; waiting up to %u ms", timeout_ms);
    d->drain_timer = evtimer_new(nd_loop_base(d->loop), drain_deadline, d);
    struct timeval tv = {(time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000};
    if (d->drain_timer)
        evtimer_add(d->drain_timer, &tv);
    netd_maybe_drained(d);
}

static netd_server_t *config_server(netd_t *d, const char *name)
{
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
        if (s->from_config && s->state != NETD_SRV_CLOSING && s->state != NETD_SRV_CLOSED &&
            strcmp(s->spec.name, name) == 0)
            return s;
    return NULL;
}

int netd_open_config_servers(netd_t *d, netd_config_t *cfg, bool only_missing)
{
    int failed = 0;
    for (size_t i = 0; i < cfg->nservers; i++) {
        if (only_missing && config_server(d, cfg->servers[i].name))
            continue;
        const char *code = NULL;
        char msg[512];
        netd_listen_spec_t spec = cfg->servers[i];
        memset(&cfg->servers[i], 0, sizeof(cfg->servers[i]));
        char *name = strdup(spec.name);
        if (netd_server_open(d, &spec, NULL, &code, msg, sizeof(msg)) != 0) {
            netd_log(NETD_LOG_ERROR, "server %s: %s: %s", name ? name : "?", code, msg);
            netd_listen_spec_free(&spec);
            failed++;
        } else {
            netd_server_t *s = TAILQ_LAST(&d->servers, netd_server_list);
            s->from_config = true;
        }
        free(name);
    }
    return failed;
}

int netd_reload(netd_t *d)
{
    if (!d->config_file) {
        netd_log(NETD_LOG_INFO, "reload: no config file (-c); nothing to do");
        return 0;
    }
    netd_notify("RELOADING=1\nSTATUS=reloading %s", d->config_file);
    netd_config_t cfg;
    char err[1024];
    if (netd_config_load(d->config_file, &cfg, err, sizeof(err)) != 0) {
        netd_log(NETD_LOG_ERROR, "reload refused, keeping the running config: %s", err);
        netd_notify("READY=1\nSTATUS=reload failed; running the previous config");
        return -1;
    }
    /* Close what went away or changed; unchanged servers and their connections stay. */
    netd_server_t *s, *next;
    for (s = TAILQ_FIRST(&d->servers); s; s = next) {
        next = TAILQ_NEXT(s, link);
        if (!s->from_config || s->state == NETD_SRV_CLOSING || s->state == NETD_SRV_CLOSED)
            continue;
        bool keep = false;
        for (size_t i = 0; i < cfg.nservers; i++)
            if (strcmp(cfg.servers[i].name, s->spec.name) == 0 &&
                netd_listen_spec_equal(&cfg.servers[i], &s->spec))
                keep = true;
        if (!keep) {
            netd_log(NETD_LOG_INFO, "reload: closing server %s", s->spec.name);
            netd_server_close(s, false);
        }
    }
    int failed = netd_open_config_servers(d, &cfg, true);
    /* Limits and timeouts apply from now on; threads and the control socket stay. */
    d->cfg.high_water_mark = cfg.high_water_mark;
    atomic_store(&d->high_water_mark, cfg.high_water_mark);
    atomic_store(&d->max_buffered_bytes, cfg.max_buffered_bytes);
    atomic_store(&d->stall_ms, cfg.stall_ms);
    d->cfg.shutdown_timeout_ms = cfg.shutdown_timeout_ms;
    netd_config_free(&cfg);
    netd_log(NETD_LOG_INFO, "reloaded %s%s", d->config_file, failed ? " (some servers failed)" : "");
    netd_notify("READY=1\nSTATUS=serving");
    return 0;
}
