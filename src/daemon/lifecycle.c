/* SPDX-License-Identifier: MIT */
/*
 * The daemon's lifecycle after the control socket is up: opening the configured servers
 * (READY=1 only once all listen), the drain (SIGTERM, `shutdown`) with its deadline, and
 * the reload (SIGHUP, `reload`) that applies the difference with the file as last loaded.
 */
#include "config.h"

#include "daemon.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <event2/event.h>

/* ------------------------------------------------------------------ drain */

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
    netd_fdstore_listeners(d);
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

/* ------------------------------------------------------------------ batches of servers */

/*
 * A batch opens config servers (at startup, or the added and changed ones of a reload) and
 * finishes once every one has listened or failed. Owned by: the main loop; each item is
 * referenced by its server's `settled` hook until that fires once.
 */
typedef struct netd_reload {
    netd_t *d;
    int pending; /* items not settled, + 1 while the batch is being filled */
    json_t *added, *changed, *removed, *kept, *failed;
    void (*done)(struct netd_reload *b);
    netd_pending_t *reply; /* `reload`: the request to answer, or NULL (SIGHUP) */
} batch_t;

typedef enum { ITEM_ADD, ITEM_CHANGE, ITEM_ROLLBACK } item_kind_t;

typedef struct item {
    batch_t *b;
    item_kind_t kind;
    char *name;
    /* A change on another address: the running server, renamed "NAME#ID" and still
     * serving until the new one listens; given its name back if the new one fails. */
    netd_server_t *old;
    /* A change: the file entry as last loaded. If the new one fails, the file "as last
     * loaded" says this again, and when the old server had to let go first (the same
     * address) it is opened again from it. */
    netd_listen_spec_t rollback;
    bool has_rollback;
} item_t;

static void batch_step_done(batch_t *b);

static void batch_finish_later(void *arg)
{
    batch_t *b = arg;
    b->done(b);
}

/* Every batch ends on a later loop turn, never inside the call that filled it: the main
 * loop may not run yet (startup), and a stop before it runs would be lost. */
static void batch_step_done(batch_t *b)
{
    if (--b->pending == 0)
        nd_loop_defer(b->d->loop, batch_finish_later, b);
}

static batch_t *batch_new(netd_t *d, void (*done)(batch_t *))
{
    batch_t *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->d = d;
    b->pending = 1;
    b->done = done;
    b->added = json_array();
    b->changed = json_array();
    b->removed = json_array();
    b->kept = json_array();
    b->failed = json_array();
    return b;
}

static void batch_free(batch_t *b)
{
    json_decref(b->added);
    json_decref(b->changed);
    json_decref(b->removed);
    json_decref(b->kept);
    json_decref(b->failed);
    free(b);
}

static void item_free(item_t *it)
{
    if (it->old)
        netd_server_release(it->old);
    if (it->has_rollback)
        netd_listen_spec_free(&it->rollback);
    free(it->name);
    free(it);
}

/* The file as last loaded says `name` is `spec` again (a change that failed). */
static void loaded_restore(netd_t *d, const char *name, const netd_listen_spec_t *spec)
{
    for (size_t i = 0; i < d->nloaded; i++) {
        if (strcmp(d->loaded[i].name, name) != 0)
            continue;
        netd_listen_spec_t copy;
        if (spec && netd_listen_spec_dup(spec, &copy) == 0) {
            netd_listen_spec_free(&d->loaded[i]);
            d->loaded[i] = copy;
        }
        return;
    }
}

static void open_item(batch_t *b, netd_listen_spec_t *spec, item_t *it);

static void item_settled(netd_server_t *s, const char *code, const char *message, void *arg)
{
    item_t *it = arg;
    batch_t *b = it->b;
    netd_t *d = b->d;
    if (!code) {
        if (it->old && it->old->state != NETD_SRV_CLOSED) {
            netd_log(NETD_LOG_INFO, "reload: %s replaced (the old server closes as %s)", it->name,
                     it->old->spec.name);
            netd_server_close(it->old, false);
        }
        if (it->kind != ITEM_ROLLBACK)
            json_array_append_new(it->kind == ITEM_CHANGE ? b->changed : b->added,
                                  json_string(it->name));
        else
            netd_log(NETD_LOG_INFO, "reload: %s opened again as it was", it->name);
    } else {
        if (!s) /* an asynchronous failure was logged with the server's 'error' */
            netd_log(NETD_LOG_ERROR, "server %s: %s: %s", it->name, code, message);
        if (it->kind != ITEM_ROLLBACK)
            json_array_append_new(b->failed, json_pack("{s:s, s:s, s:s}", "name", it->name, "code",
                                                       code, "message", message));
        if (it->has_rollback)
            loaded_restore(d, it->name, &it->rollback);
        if (it->old &&
            (it->old->state == NETD_SRV_LISTENING || it->old->state == NETD_SRV_STARTING)) {
            /* The running server never stopped: it keeps its name and its settings. */
            netd_server_rename(it->old, it->name);
            netd_log(NETD_LOG_WARN, "reload: keeping the running %s", it->name);
        } else if (it->has_rollback && it->kind == ITEM_CHANGE) {
            item_t *r = calloc(1, sizeof(*r));
            if (r) {
                r->b = b;
                r->kind = ITEM_ROLLBACK;
                r->name = strdup(it->name);
                it->has_rollback = false;
                open_item(b, &it->rollback, r);
            }
        }
    }
    item_free(it);
    batch_step_done(b);
}

/* Opens one config server (spec taken); its item settles now or once it listens. */
static void open_item(batch_t *b, netd_listen_spec_t *spec, item_t *it)
{
    netd_t *d = b->d;
    b->pending++;
    it->b = b;
    /* The file's name is what reload matches on: never renamed after the port bound. */
    spec->name_given = true;
    const char *code = NETD_ESHUTDOWN;
    char msg[512] = "netd is draining";
    if (!d->draining && netd_server_open(d, spec, NULL, &code, msg, sizeof(msg)) == 0) {
        netd_server_t *s = TAILQ_LAST(&d->servers, netd_server_list);
        s->from_config = true;
        s->settled = item_settled;
        s->settled_arg = it;
        return;
    }
    netd_listen_spec_free(spec);
    item_settled(NULL, code, msg, it);
}

static item_t *item_new(item_kind_t kind, const char *name)
{
    item_t *it = calloc(1, sizeof(*it));
    if (!it)
        return NULL;
    it->kind = kind;
    it->name = strdup(name);
    if (!it->name) {
        free(it);
        return NULL;
    }
    return it;
}

/* "a, b (EADDRINUSE)": the names of a JSON array, for log lines. */
static void names_of(const json_t *arr, char *out, size_t len)
{
    size_t i, o = 0;
    json_t *e;
    out[0] = '\0';
    json_array_foreach(arr, i, e) {
        const char *name = json_is_string(e) ? json_string_value(e)
                                             : json_string_value(json_object_get(e, "name"));
        const char *code = json_string_value(json_object_get(e, "code"));
        int n = snprintf(out + o, len - o, "%s%s%s%s%s", i ? ", " : "", name ? name : "?",
                         code ? " (" : "", code ? code : "", code ? ")" : "");
        if (n < 0 || (size_t)n >= len - o)
            break;
        o += (size_t)n;
    }
}

/* ------------------------------------------------------------------ startup */

static void startup_done(batch_t *b)
{
    netd_t *d = b->d;
    size_t nfailed = json_array_size(b->failed);
    if (nfailed) {
        char names[512];
        names_of(b->failed, names, sizeof(names));
        netd_log(NETD_LOG_ERROR, "%zu configured server%s could not listen: %s; exiting", nfailed,
                 nfailed == 1 ? "" : "s", names);
        netd_notify("STATUS=failed: %zu configured server(s) could not listen: %s", nfailed, names);
        d->exit_code = 1;
        nd_loop_stop(d->loop);
    } else if (!d->draining) {
        d->started = true;
        size_t n = json_array_size(b->added);
        netd_log(NETD_LOG_INFO, "ready: %zu server%s listening, control socket %s", n,
                 n == 1 ? "" : "s", d->control_path);
        netd_notify("READY=1\nSTATUS=serving; control socket %s\nMAINPID=%d", d->control_path,
                    (int)getpid());
        netd_fdstore_forget_unused(d);
    }
    batch_free(b);
}

void netd_loaded_free(netd_t *d)
{
    for (size_t i = 0; i < d->nloaded; i++)
        netd_listen_spec_free(&d->loaded[i]);
    free(d->loaded);
    d->loaded = NULL;
    d->nloaded = 0;
}

/* Copies of the file's server entries: the file "as last loaded". */
static int loaded_set(netd_t *d, const netd_config_t *cfg)
{
    netd_listen_spec_t *copy = calloc(cfg->nservers ? cfg->nservers : 1, sizeof(*copy));
    if (!copy)
        return -ENOMEM;
    for (size_t i = 0; i < cfg->nservers; i++) {
        if (netd_listen_spec_dup(&cfg->servers[i], &copy[i]) != 0) {
            for (size_t j = 0; j < i; j++)
                netd_listen_spec_free(&copy[j]);
            free(copy);
            return -ENOMEM;
        }
    }
    netd_loaded_free(d);
    d->loaded = copy;
    d->nloaded = cfg->nservers;
    return 0;
}

void netd_start_servers(netd_t *d)
{
    batch_t *b = batch_new(d, startup_done);
    if (!b || loaded_set(d, &d->cfg) != 0) {
        netd_log(NETD_LOG_ERROR, "out of memory opening the configured servers");
        d->exit_code = 1;
        nd_loop_stop(d->loop);
        if (b)
            batch_free(b);
        return;
    }
    for (size_t i = 0; i < d->cfg.nservers; i++) {
        item_t *it = item_new(ITEM_ADD, d->cfg.servers[i].name);
        if (!it) {
            netd_listen_spec_free(&d->cfg.servers[i]);
            json_array_append_new(b->failed, json_pack("{s:s, s:s, s:s}", "name", "?", "code",
                                                       "ENOMEM", "message", "out of memory"));
            continue;
        }
        open_item(b, &d->cfg.servers[i], it);
        memset(&d->cfg.servers[i], 0, sizeof(d->cfg.servers[i]));
    }
    batch_step_done(b);
}

void netd_servers_taken_over(netd_t *d)
{
    if (loaded_set(d, &d->cfg) != 0)
        netd_log(NETD_LOG_WARN, "out of memory: the next reload reopens every server");
    d->started = true;
}

/* ------------------------------------------------------------------ reload */

/* The running server a file entry opened (listening or about to), by its name. */
static netd_server_t *config_server(netd_t *d, const char *name)
{
    netd_server_t *s;
    TAILQ_FOREACH(s, &d->servers, link)
        if (s->from_config && (s->state == NETD_SRV_LISTENING || s->state == NETD_SRV_STARTING) &&
            strcmp(s->spec.name, name) == 0)
            return s;
    return NULL;
}

static const netd_listen_spec_t *find_spec(const netd_listen_spec_t *specs, size_t n,
                                           const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(specs[i].name, name) == 0)
            return &specs[i];
    return NULL;
}

static bool hosts_overlap(const char *a, const char *b)
{
    a = a ? a : "0.0.0.0";
    b = b ? b : "0.0.0.0";
    return !strcmp(a, b) || !strcmp(a, "0.0.0.0") || !strcmp(b, "0.0.0.0") || !strcmp(a, "::") ||
           !strcmp(b, "::");
}

/* Whether the new entry would bind what the running server holds: then the old one must
 * let go first. Otherwise the new one opens first and the old one serves until then. */
static bool same_address(const netd_server_t *s, const netd_listen_spec_t *n)
{
    const netd_listen_spec_t *o = &s->spec;
    int port = s->address.port ? s->address.port : o->port;
    if (n->port > 0 && o->port >= 0 && n->port == port && hosts_overlap(o->host, n->host))
        return true;
    if (n->path && o->path && !strcmp(n->path, o->path))
        return true;
    if ((n->fd_name && o->fd_name && !strcmp(n->fd_name, o->fd_name)) ||
        (n->fd >= 0 && n->fd == o->fd))
        return true;
    return false;
}

/* At -v: which keys of an entry changed ("handler, maxConnections"). */
static void log_changed_keys(const netd_listen_spec_t *o, const netd_listen_spec_t *n)
{
    if (netd_log_level < NETD_LOG_DEBUG || !o->source || !n->source)
        return;
    char keys[256] = "";
    size_t len = 0;
    const char *key;
    json_t *v;
    json_t *both[2] = {o->source, n->source};
    for (int side = 0; side < 2; side++) {
        json_object_foreach(both[side], key, v) {
            json_t *other = json_object_get(both[1 - side], key);
            if ((side == 1 && other) || (other && json_equal(v, other)))
                continue;
            int k = snprintf(keys + len, sizeof(keys) - len, "%s%s", len ? ", " : "", key);
            if (k > 0 && (size_t)k < sizeof(keys) - len)
                len += (size_t)k;
        }
    }
    netd_log(NETD_LOG_DEBUG, "reload: %s changed: %s", n->name, len ? keys : "(defaults)");
}

static void reload_reply_error(netd_pending_t *p, const char *code, const char *msg)
{
    if (p)
        netd_pending_error(p, code, "%s", msg);
}

static void reload_done(batch_t *b)
{
    netd_t *d = b->d;
    char added[256], removed[256], changed[256], kept[256], failed[512];
    names_of(b->added, added, sizeof(added));
    names_of(b->removed, removed, sizeof(removed));
    names_of(b->changed, changed, sizeof(changed));
    names_of(b->kept, kept, sizeof(kept));
    names_of(b->failed, failed, sizeof(failed));
    size_t nfailed = json_array_size(b->failed);
    netd_log(nfailed ? NETD_LOG_WARN : NETD_LOG_INFO,
             "reloaded %s: added [%s], removed [%s], changed [%s], kept [%s]%s%s%s", d->config_file,
             added, removed, changed, kept, nfailed ? "; failed [" : "", nfailed ? failed : "",
             nfailed ? "] (the running servers stay)" : "");
    if (nfailed)
        netd_notify("READY=1\nSTATUS=serving; reload: %zu server(s) failed: %s", nfailed, failed);
    else
        netd_notify("READY=1\nSTATUS=serving; control socket %s", d->control_path);
    if (b->reply)
        netd_pending_ok(b->reply, json_pack("{s:O, s:O, s:O, s:O, s:O}", "added", b->added,
                                            "removed", b->removed, "changed", b->changed, "kept",
                                            b->kept, "failed", b->failed));
    d->reload = NULL;
    batch_free(b);
}

/* Settings outside the servers: what applies now, and what needs a restart. */
static void apply_settings(netd_t *d, const netd_config_t *cfg)
{
    if (cfg->threads != d->cfg.threads)
        netd_log(NETD_LOG_WARN, "reload: threads changed: takes effect at the next start");
    if ((cfg->control_path &&
         (!d->cfg.control_path || strcmp(cfg->control_path, d->cfg.control_path) != 0)) ||
        cfg->control_mode != d->cfg.control_mode ||
        cfg->has_control_gid != d->cfg.has_control_gid || cfg->control_gid != d->cfg.control_gid)
        netd_log(NETD_LOG_WARN,
                 "reload: control.path, control.mode or control.group changed: they take "
                 "effect at the next start");
    d->cfg.high_water_mark = cfg->high_water_mark;
    d->cfg.max_buffered_bytes = cfg->max_buffered_bytes;
    d->cfg.stall_ms = cfg->stall_ms;
    atomic_store(&d->high_water_mark, cfg->high_water_mark);
    atomic_store(&d->max_buffered_bytes, cfg->max_buffered_bytes);
    atomic_store(&d->stall_ms, cfg->stall_ms);
    d->cfg.shutdown_timeout_ms = cfg->shutdown_timeout_ms;
    d->cfg.control_max_clients = cfg->control_max_clients;
    d->cfg.control_idle_timeout_ms = cfg->control_idle_timeout_ms;
    for (size_t i = 0; i < d->cfg.nsocket_dirs; i++)
        free(d->cfg.socket_dirs[i]);
    free(d->cfg.socket_dirs);
    d->cfg.socket_dirs = cfg->socket_dirs;
    d->cfg.nsocket_dirs = cfg->nsocket_dirs;
    netd_observe_reload(d, cfg); /* the access log's file, the metrics address */
}

void netd_reload(netd_t *d, netd_pending_t *reply)
{
    const char *who = reply ? "reload" : "SIGHUP";
    if (d->draining) {
        netd_log(NETD_LOG_WARN, "%s refused: netd is draining", who);
        reload_reply_error(reply, NETD_ESHUTDOWN, "netd is draining: no reload");
        return;
    }
    if (d->upgrade) {
        /* Servers must stay as they are while they are handed over. */
        netd_log(NETD_LOG_WARN, "%s refused: an upgrade is in progress", who);
        reload_reply_error(reply, NETD_EBUSY, "an upgrade is in progress: reload after it");
        return;
    }
    if (d->reload || !d->started) {
        netd_log(NETD_LOG_WARN, "%s refused: %s", who,
                 d->reload ? "a reload is still opening servers" : "netd is still starting");
        reload_reply_error(reply, NETD_EBUSY,
                           d->reload ? "a reload is still opening servers"
                                     : "netd is still starting");
        return;
    }
    if (!d->config_file) {
        netd_log(NETD_LOG_INFO, "%s: netd runs without a config file: nothing to reload", who);
        if (reply)
            netd_pending_ok(reply, json_pack("{s:[], s:[], s:[], s:[], s:[]}", "added", "removed",
                                             "changed", "kept", "failed"));
        return;
    }
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    netd_notify("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading %s",
                (unsigned long long)now.tv_sec * 1000000ull +
                    (unsigned long long)now.tv_nsec / 1000,
                d->config_file);
    netd_log(NETD_LOG_INFO, "%s: reloading %s", who, d->config_file);
    netd_config_t cfg;
    char err[1024];
    if (netd_config_load(d->config_file, &cfg, err, sizeof(err)) != 0) {
        netd_log(NETD_LOG_ERROR, "reload refused, keeping the running config: %s", err);
        netd_notify("READY=1\nSTATUS=serving; reload refused: %s", err);
        reload_reply_error(reply, NETD_EARG, err);
        return;
    }
    batch_t *b = batch_new(d, reload_done);
    netd_listen_spec_t *old = d->loaded;
    size_t nold = d->nloaded;
    d->loaded = NULL;
    d->nloaded = 0;
    if (!b || loaded_set(d, &cfg) != 0) {
        netd_loaded_free(d);
        d->loaded = old;
        d->nloaded = nold;
        netd_config_free(&cfg);
        if (b)
            batch_free(b);
        netd_notify("READY=1");
        reload_reply_error(reply, "ENOMEM", "out of memory");
        return;
    }
    d->reload = b;
    b->reply = reply;
    apply_settings(d, &cfg);
    cfg.socket_dirs = NULL;
    cfg.nsocket_dirs = 0;

    /* What went away: closed first, so their addresses are free for what comes. */
    for (size_t i = 0; i < nold; i++) {
        if (find_spec(cfg.servers, cfg.nservers, old[i].name))
            continue;
        netd_server_t *s = config_server(d, old[i].name);
        if (s) {
            netd_log(NETD_LOG_INFO, "reload: closing %s (no longer in the file)", old[i].name);
            netd_server_close(s, false);
        }
        json_array_append_new(b->removed, json_string(old[i].name));
    }
    for (size_t i = 0; i < cfg.nservers; i++) {
        netd_listen_spec_t *n = &cfg.servers[i];
        const netd_listen_spec_t *o = find_spec(old, nold, n->name);
        netd_server_t *s = config_server(d, n->name);
        if (o && s && netd_listen_spec_equal(o, n)) {
            /* Untouched: its connections and its runtime settings (`set`) stay. */
            json_array_append_new(b->kept, json_string(n->name));
            continue;
        }
        item_t *it = item_new(o ? ITEM_CHANGE : ITEM_ADD, n->name);
        if (!it) {
            json_array_append_new(b->failed, json_pack("{s:s, s:s, s:s}", "name", n->name, "code",
                                                       "ENOMEM", "message", "out of memory"));
            continue;
        }
        if (o && !s) {
            it->kind = netd_listen_spec_equal(o, n) ? ITEM_ADD : ITEM_CHANGE; /* not running */
        } else if (o) {
            log_changed_keys(o, n);
            it->has_rollback = netd_listen_spec_dup(o, &it->rollback) == 0;
            if (same_address(s, n)) {
                netd_server_close(s, false);
            } else {
                /* Renamed, not closed: it serves until its successor listens. */
                char retired[160];
                snprintf(retired, sizeof(retired), "%.120s#%llu", n->name,
                         (unsigned long long)s->id);
                netd_server_rename(s, retired);
                netd_server_retain(s);
                it->old = s;
            }
        }
        open_item(b, n, it);
        memset(n, 0, sizeof(*n));
    }
    for (size_t i = 0; i < nold; i++)
        netd_listen_spec_free(&old[i]);
    free(old);
    netd_config_free(&cfg);
    batch_step_done(b);
}
