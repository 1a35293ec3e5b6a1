/* SPDX-License-Identifier: MIT */
/*
 * Config file and `listen` argument parsing (config.c): valid files, defaults, and every
 * kind of invalid input refused with a message that names the file and the field.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "harness.h"
#include "protocol.h"

#define N_ELEMS(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define ERRLEN 1024

/* ------------------------------------------------------------------------ fixture */

/* Each test (forked) gets its own directory: realpath'd, as config.c resolves against it. */
static char tmpdir[PATH_MAX];

static void setup(void)
{
    char tmpl[] = "/tmp/netd-test-config-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    ck_assert_ptr_nonnull(realpath(tmpl, tmpdir));
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void teardown(void)
{
    nftw(tmpdir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Writes text to a new mkstemp file in dir (NULL: the test's directory); returns its path. */
static char *write_file_in(const char *dir, const char *text)
{
    static char path[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/netd-XXXXXX", dir ? dir : tmpdir);
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    size_t n = strlen(text);
    ck_assert_int_eq(write(fd, text, n), (ssize_t)n);
    close(fd);
    return path;
}

static char *write_file(const char *text)
{
    return write_file_in(NULL, text);
}

/* Loads text as a config file; the file's path goes to *file when asked. */
static int load_text(const char *text, netd_config_t *cfg, char *err, const char **file)
{
    const char *path = write_file(text);
    if (file)
        *file = path;
    return netd_config_load(path, cfg, err, ERRLEN);
}

/* Parses a listen object given as JSON text. */
static int parse_text(const char *text, const char *base_dir, const char *prefix,
                      bool skip_envelope, netd_listen_spec_t *spec, char *err)
{
    json_error_t jerr;
    json_t *obj = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    ck_assert_msg(obj != NULL, "bad test JSON %s: %s", text, jerr.text);
    int rc = netd_listen_spec_parse(obj, base_dir, prefix, skip_envelope, spec, err, ERRLEN);
    json_decref(obj);
    return rc;
}

static void parse_ok(const char *text, netd_listen_spec_t *spec)
{
    char err[ERRLEN] = "";
    int rc = parse_text(text, "/base", "", false, spec, err);
    ck_assert_msg(rc == 0, "%s refused: %s", text, err);
}

/* The message starts with "FILE: " and then the expected text. */
static void expect_file_error(const char *text, const char *want)
{
    netd_config_t cfg;
    char err[ERRLEN] = "";
    const char *file;
    int rc = load_text(text, &cfg, err, &file);
    ck_assert_msg(rc == -1, "%s accepted", text);
    char expect[ERRLEN + PATH_MAX];
    snprintf(expect, sizeof(expect), "%s: %s", file, want);
    ck_assert_msg(strncmp(err, expect, strlen(expect)) == 0, "%s: got \"%s\", want \"%s...\"", text,
                  err, expect);
    /* A refused file leaves a config that owns nothing. */
    ck_assert_ptr_null(cfg.servers);
    ck_assert_uint_eq(cfg.nservers, 0);
    netd_config_free(&cfg);
}

static void expect_spec_error(const char *text, const char *prefix, const char *want)
{
    netd_listen_spec_t spec;
    char err[ERRLEN] = "";
    int rc = parse_text(text, "/base", prefix, false, &spec, err);
    ck_assert_msg(rc == -1, "%s accepted", text);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s: got \"%s\", want \"%s...\"", text,
                  err, want);
    ck_assert_ptr_null(spec.name);
    ck_assert_ptr_null(spec.source);
    netd_listen_spec_free(&spec);
}

/* ------------------------------------------------------------------------ valid files */

static const char *current_group(void)
{
    struct group *g = getgrgid(getgid());
    ck_assert_ptr_nonnull(g);
    return g->gr_name;
}

START_TEST(full_file_every_key)
{
    char text[4096], err[ERRLEN] = "";
    netd_config_t cfg;
    const char *group = current_group();

    snprintf(text, sizeof(text),
             "{\"threads\": 4, \"shutdownTimeoutMs\": 5000,\n"
             " \"control\": {\"path\": \"run/ctl.sock\", \"mode\": \"0660\", \"group\": \"%s\",\n"
             "             \"maxClients\": 8, \"idleTimeout\": 1000},\n"
             " \"limits\": {\"highWaterMark\": 65536, \"maxBufferedBytes\": 8589934592,"
             " \"stallMs\": 2000},\n"
             " \"servers\": [\n"
             "  {\"name\": \"web\", \"port\": 8124, \"host\": \"127.0.0.1\", \"backlog\": 128,\n"
             "   \"handler\": {\"type\": \"echo\", \"greeting\": \"hi\\r\\n\"},\n"
             "   \"allowHalfOpen\": true, \"maxConnections\": 100, \"timeout\": 60000,\n"
             "   \"noDelay\": false, \"keepAlive\": 30000, \"balance\": \"reuseport\"},\n"
             "  {\"path\": \"/tmp/netd-abs.sock\", \"handler\": {\"type\": \"discard\"},"
             " \"balance\": \"roundrobin\"},\n"
             "  {\"fd\": 3, \"handler\": {\"type\": \"banner\", \"text\": \"bye\\n\"}},\n"
             "  {\"fd\": \"api\", \"handler\": {\"type\": \"proxy\", \"port\": 9000,"
             " \"host\": \"::1\"}},\n"
             "  {\"port\": 0, \"host\": \"localhost\", \"handler\": {\"type\": \"proxy\","
             " \"path\": \"up.sock\"}, \"maxConnections\": null, \"keepAlive\": false}\n"
             " ]}\n",
             group);
    int rc = load_text(text, &cfg, err, NULL);
    ck_assert_msg(rc == 0, "refused: %s", err);

    char want[PATH_MAX + 32];
    ck_assert_int_eq(cfg.threads, 4);
    ck_assert_uint_eq(cfg.shutdown_timeout_ms, 5000);
    snprintf(want, sizeof(want), "%s/run/ctl.sock", tmpdir);
    ck_assert_str_eq(cfg.control_path, want);
    ck_assert_uint_eq(cfg.control_mode, 0660);
    ck_assert_str_eq(cfg.control_group, group);
    ck_assert(cfg.has_control_gid);
    ck_assert_uint_eq(cfg.control_gid, getgid());
    ck_assert_int_eq(cfg.control_max_clients, 8);
    ck_assert_uint_eq(cfg.control_idle_timeout_ms, 1000);
    ck_assert_uint_eq(cfg.high_water_mark, 65536);
    ck_assert_uint_eq(cfg.max_buffered_bytes, (size_t)8589934592ULL);
    ck_assert_uint_eq(cfg.stall_ms, 2000);
    ck_assert_uint_eq(cfg.nservers, 5);

    const netd_listen_spec_t *s = &cfg.servers[0];
    ck_assert_str_eq(s->name, "web");
    ck_assert_int_eq(s->port, 8124);
    ck_assert_str_eq(s->host, "127.0.0.1");
    ck_assert_ptr_null(s->path);
    ck_assert_int_eq(s->fd, -1);
    ck_assert_int_eq(s->backlog, 128);
    ck_assert_ptr_eq(s->handler.ops, &netd_handler_echo);
    ck_assert_str_eq(s->handler.greeting, "hi\r\n");
    ck_assert(s->allow_half_open);
    ck_assert_int_eq(s->max_connections, 100);
    ck_assert_uint_eq(s->timeout_ms, 60000);
    ck_assert(!s->no_delay);
    ck_assert_int_eq(s->keep_alive_ms, 30000);
    ck_assert_int_eq(s->balance, ND_BALANCE_REUSEPORT);
    ck_assert_ptr_nonnull(s->source);
    ck_assert_str_eq(json_string_value(json_object_get(s->source, "name")), "web");

    s = &cfg.servers[1];
    ck_assert_str_eq(s->name, "/tmp/netd-abs.sock");
    ck_assert_str_eq(s->path, "/tmp/netd-abs.sock");
    ck_assert_int_eq(s->port, -1);
    ck_assert_ptr_eq(s->handler.ops, &netd_handler_discard);
    ck_assert_int_eq(s->balance, ND_BALANCE_ROUNDROBIN);

    s = &cfg.servers[2];
    ck_assert_str_eq(s->name, "fd:3");
    ck_assert_int_eq(s->fd, 3);
    ck_assert_ptr_null(s->fd_name);
    ck_assert_ptr_eq(s->handler.ops, &netd_handler_banner);
    ck_assert_str_eq(s->handler.text, "bye\n");

    s = &cfg.servers[3];
    ck_assert_str_eq(s->name, "api");
    ck_assert_int_eq(s->fd, -1);
    ck_assert_str_eq(s->fd_name, "api");
    ck_assert_ptr_eq(s->handler.ops, &netd_handler_proxy);
    ck_assert_int_eq(s->handler.port, 9000);
    ck_assert_str_eq(s->handler.host, "::1");
    ck_assert_ptr_null(s->handler.path);

    s = &cfg.servers[4];
    ck_assert_str_eq(s->name, "localhost:0");
    ck_assert_int_eq(s->port, 0);
    ck_assert_int_eq(s->max_connections, 0);
    ck_assert_int_eq(s->keep_alive_ms, -1);
    snprintf(want, sizeof(want), "%s/up.sock", tmpdir);
    ck_assert_str_eq(s->handler.path, want);

    netd_config_free(&cfg);
    ck_assert_ptr_null(cfg.servers);
}
END_TEST

static void check_defaults(const netd_config_t *cfg)
{
    ck_assert_int_eq(cfg->threads, 0);
    ck_assert_uint_eq(cfg->shutdown_timeout_ms, 30000);
    ck_assert_ptr_null(cfg->control_path);
    ck_assert_uint_eq(cfg->control_mode, 0600);
    ck_assert_ptr_null(cfg->control_group);
    ck_assert(!cfg->has_control_gid);
    ck_assert_int_eq(cfg->control_max_clients, 64);
    ck_assert_uint_eq(cfg->control_idle_timeout_ms, 300000);
    ck_assert_uint_eq(cfg->high_water_mark, 1048576);
    ck_assert_uint_eq(cfg->max_buffered_bytes, 16777216);
    ck_assert_uint_eq(cfg->stall_ms, 30000);
    ck_assert_ptr_null(cfg->servers);
    ck_assert_uint_eq(cfg->nservers, 0);
}

START_TEST(empty_file_gives_defaults)
{
    netd_config_t cfg;
    char err[ERRLEN] = "";
    ck_assert_int_eq(load_text("{}", &cfg, err, NULL), 0);
    check_defaults(&cfg);
    netd_config_free(&cfg);
}
END_TEST

START_TEST(empty_sections_give_defaults)
{
    netd_config_t cfg;
    char err[ERRLEN] = "";
    int rc = load_text("{\"control\": {}, \"limits\": {}, \"servers\": []}", &cfg, err, NULL);
    ck_assert_msg(rc == 0, "%s", err);
    check_defaults(&cfg);
    netd_config_free(&cfg);
}
END_TEST

START_TEST(builtin_default)
{
    netd_config_t cfg;
    netd_config_default(&cfg);
    check_defaults(&cfg);
    netd_config_free(&cfg);
    check_defaults(&cfg);
}
END_TEST

START_TEST(server_defaults)
{
    netd_listen_spec_t s;
    parse_ok("{\"port\": 8124}", &s);
    ck_assert_str_eq(s.name, "0.0.0.0:8124");
    ck_assert_ptr_null(s.host);
    ck_assert_ptr_null(s.path);
    ck_assert_int_eq(s.fd, -1);
    ck_assert_ptr_null(s.fd_name);
    ck_assert_int_eq(s.backlog, 511);
    ck_assert_ptr_eq(s.handler.ops, &netd_handler_echo);
    ck_assert_ptr_null(s.handler.greeting);
    ck_assert(!s.allow_half_open);
    ck_assert_int_eq(s.max_connections, 0);
    ck_assert_uint_eq(s.timeout_ms, 0);
    ck_assert(s.no_delay);
    ck_assert_int_eq(s.keep_alive_ms, -1);
    ck_assert_int_eq(s.balance, ND_BALANCE_LEASTCONN);
    netd_listen_spec_free(&s);
    ck_assert_ptr_null(s.name);
}
END_TEST

START_TEST(default_names)
{
    static const struct {
        const char *in, *name;
    } rows[] = {
        {"{\"port\": 8124}", "0.0.0.0:8124"},
        {"{\"port\": 8124, \"host\": \"127.0.0.1\"}", "127.0.0.1:8124"},
        {"{\"port\": 8124, \"host\": \"::1\"}", "[::1]:8124"},
        {"{\"port\": 80, \"host\": \"example.com\"}", "example.com:80"},
        {"{\"path\": \"/run/x.sock\"}", "/run/x.sock"},
        {"{\"path\": \"x.sock\"}", "/base/x.sock"},
        {"{\"fd\": 3}", "fd:3"},
        {"{\"fd\": \"web\"}", "web"},
        {"{\"port\": 1, \"name\": \"given\"}", "given"},
    };
    for (int i = 0; i < N_ELEMS(rows); i++) {
        netd_listen_spec_t s;
        parse_ok(rows[i].in, &s);
        ck_assert_str_eq(s.name, rows[i].name);
        netd_listen_spec_free(&s);
    }
}
END_TEST

START_TEST(default_names_in_file)
{
    netd_config_t cfg;
    char err[ERRLEN] = "";
    int rc = load_text("{\"servers\": [{\"port\": 8124}, {\"port\": 8125, \"host\": \"127.0.0.1\"},"
                       " {\"path\": \"a.sock\"}]}",
                       &cfg, err, NULL);
    ck_assert_msg(rc == 0, "%s", err);
    char want[PATH_MAX + 16];
    snprintf(want, sizeof(want), "%s/a.sock", tmpdir);
    ck_assert_str_eq(cfg.servers[0].name, "0.0.0.0:8124");
    ck_assert_str_eq(cfg.servers[1].name, "127.0.0.1:8125");
    ck_assert_str_eq(cfg.servers[2].name, want);
    ck_assert_str_eq(cfg.servers[2].path, want);
    netd_config_free(&cfg);
}
END_TEST

/* A relative file name in a subdirectory: its paths resolve against that directory. */
START_TEST(relative_paths_resolve_against_config_dir)
{
    char sub[PATH_MAX + 8], want[PATH_MAX + 32], err[ERRLEN] = "";
    snprintf(sub, sizeof(sub), "%s/conf", tmpdir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    const char *abs = write_file_in(sub, "{\"control\": {\"path\": \"ctl.sock\"},"
                                         " \"servers\": [{\"path\": \"run/a.sock\"},"
                                         " {\"port\": 1, \"handler\": {\"type\": \"proxy\","
                                         " \"path\": \"../up.sock\"}}]}");
    char rel[PATH_MAX];
    snprintf(rel, sizeof(rel), "conf/%s", strrchr(abs, '/') + 1);
    ck_assert_int_eq(chdir(tmpdir), 0);

    netd_config_t cfg;
    int rc = netd_config_load(rel, &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "%s", err);
    snprintf(want, sizeof(want), "%s/conf/ctl.sock", tmpdir);
    ck_assert_str_eq(cfg.control_path, want);
    snprintf(want, sizeof(want), "%s/conf/run/a.sock", tmpdir);
    ck_assert_str_eq(cfg.servers[0].path, want);
    /* "conf/../up.sock" is shown normalized: what an operator reads in `servers`. */
    snprintf(want, sizeof(want), "%s/up.sock", tmpdir);
    ck_assert_str_eq(cfg.servers[1].handler.path, want);
    netd_config_free(&cfg);
}
END_TEST

/* The message starts with the file name exactly as given, relative or not. */
START_TEST(error_names_relative_file)
{
    char sub[PATH_MAX + 8], err[ERRLEN] = "";
    snprintf(sub, sizeof(sub), "%s/conf", tmpdir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    const char *abs = write_file_in(sub, "{\"servers\": [{\"port\": 1}, {\"port\": 70000}]}");
    char rel[PATH_MAX], want[PATH_MAX + 64];
    snprintf(rel, sizeof(rel), "conf/%s", strrchr(abs, '/') + 1);
    ck_assert_int_eq(chdir(tmpdir), 0);

    netd_config_t cfg;
    ck_assert_int_eq(netd_config_load(rel, &cfg, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s: servers[1].port: must be an integer 0-65535", rel);
    ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(mode_values)
{
    static const struct {
        const char *mode;
        unsigned want;
    } rows[] = {{"0600", 0600}, {"660", 0660}, {"0", 0}, {"7777", 07777}, {"00644", 0644}};
    for (int i = 0; i < N_ELEMS(rows); i++) {
        char text[128], err[ERRLEN] = "";
        netd_config_t cfg;
        snprintf(text, sizeof(text), "{\"control\": {\"mode\": \"%s\"}}", rows[i].mode);
        ck_assert_msg(load_text(text, &cfg, err, NULL) == 0, "%s: %s", rows[i].mode, err);
        ck_assert_uint_eq(cfg.control_mode, rows[i].want);
        netd_config_free(&cfg);
    }
}
END_TEST

START_TEST(threads_bounds_accepted)
{
    netd_config_t cfg;
    char err[ERRLEN] = "";
    ck_assert_int_eq(load_text("{\"threads\": 1024}", &cfg, err, NULL), 0);
    ck_assert_int_eq(cfg.threads, 1024);
    netd_config_free(&cfg);
    ck_assert_int_eq(load_text("{\"threads\": 0}", &cfg, err, NULL), 0);
    ck_assert_int_eq(cfg.threads, 0);
    netd_config_free(&cfg);
}
END_TEST

/* ------------------------------------------------------------------------ invalid files */

START_TEST(truncated_json_has_line_and_column)
{
    netd_config_t cfg;
    char err[ERRLEN] = "", want[PATH_MAX + 8];
    const char *file;
    ck_assert_int_eq(load_text("{\"threads\": 1,\n \"servers\": [{\"port\": 1", &cfg, err, &file),
                     -1);
    snprintf(want, sizeof(want), "%s:2:", file);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "got \"%s\"", err);
    /* FILE:LINE:COL: text */
    int line, col;
    char rest[ERRLEN];
    ck_assert_int_eq(sscanf(err + strlen(file), ":%d:%d: %[^\n]", &line, &col, rest), 3);
    ck_assert_int_eq(line, 2);
    ck_assert_int_gt(col, 0);
    ck_assert_ptr_null(cfg.servers);
}
END_TEST

START_TEST(duplicate_keys_refused)
{
    netd_config_t cfg;
    char err[ERRLEN] = "";
    const char *file;
    ck_assert_int_eq(load_text("{\"servers\": [{\"port\": 1, \"port\": 2}]}", &cfg, err, &file),
                     -1);
    ck_assert_msg(strncmp(err, file, strlen(file)) == 0, "got \"%s\"", err);
    ck_assert_msg(strstr(err, "duplicate") != NULL, "got \"%s\"", err);
    ck_assert_int_eq(load_text("{\"threads\": 1, \"threads\": 1}", &cfg, err, NULL), -1);
    ck_assert_msg(strstr(err, "duplicate") != NULL, "got \"%s\"", err);
}
END_TEST

START_TEST(missing_file)
{
    netd_config_t cfg;
    char err[ERRLEN] = "", file[PATH_MAX + 16];
    snprintf(file, sizeof(file), "%s/nope.json", tmpdir);
    ck_assert_int_eq(netd_config_load(file, &cfg, err, sizeof(err)), -1);
    ck_assert_msg(strncmp(err, file, strlen(file)) == 0, "got \"%s\"", err);
    check_defaults(&cfg);
}
END_TEST

START_TEST(unknown_group)
{
    expect_file_error("{\"control\": {\"group\": \"netd-test-no-such-group\"}}",
                      "control.group: no such group \"netd-test-no-such-group\"");
}
END_TEST

START_TEST(duplicate_names)
{
    expect_file_error("{\"servers\": [{\"port\": 1}, {\"port\": 2, \"name\": \"web\"},"
                      " {\"port\": 3}, {\"path\": \"/x\", \"name\": \"web\"}]}",
                      "servers[3].name: duplicate name \"web\"");
}
END_TEST

START_TEST(duplicate_default_names)
{
    expect_file_error("{\"servers\": [{\"port\": 8124}, {\"port\": 8124, \"backlog\": 5}]}",
                      "servers[1].name: duplicate name \"0.0.0.0:8124\"");
}
END_TEST

START_TEST(path_too_long)
{
    char text[512], path[201];
    memset(path, 'a', 200);
    path[200] = '\0';
    snprintf(text, sizeof(text), "{\"servers\": [{\"path\": \"/%s\"}]}", path);
    expect_file_error(text, "servers[0].path: too long");
}
END_TEST

/* 107 bytes fits in sun_path with its NUL; relative, the config dir counts too. */
START_TEST(path_length_after_resolving)
{
    char text[512], path[108], err[ERRLEN];
    netd_config_t cfg;
    memset(path, 'a', 107);
    path[0] = '/';
    path[107] = '\0';
    snprintf(text, sizeof(text), "{\"servers\": [{\"path\": \"%s\"}]}", path);
    ck_assert_msg(load_text(text, &cfg, err, NULL) == 0, "%s", err);
    netd_config_free(&cfg);

    size_t room = 107 - strlen(tmpdir) - 1; /* exactly at the limit once joined */
    memset(path, 'b', room);
    path[room] = '\0';
    snprintf(text, sizeof(text), "{\"servers\": [{\"path\": \"%s\"}]}", path);
    ck_assert_msg(load_text(text, &cfg, err, NULL) == 0, "%s", err);
    ck_assert_uint_eq(strlen(cfg.servers[0].path), 107);
    netd_config_free(&cfg);

    snprintf(text, sizeof(text), "{\"servers\": [{\"path\": \"%sb\"}]}", path);
    expect_file_error(text, "servers[0].path: too long");
}
END_TEST

START_TEST(top_level_not_object)
{
    expect_file_error("[]", "the top level must be an object");
}
END_TEST

/* Every row: a file and the start of its message after "FILE: ". */
static const struct bad_row {
    const char *json, *want;
} bad_rows[] = {
    /* top level */
    {"{\"thread\": 1}", "thread: unknown key"},
    {"{\"threads\": -1}", "threads: must be an integer 0-1024"},
    {"{\"threads\": 2000}", "threads: must be an integer 0-1024"},
    {"{\"threads\": \"4\"}", "threads: must be an integer 0-1024"},
    {"{\"threads\": 4.0}", "threads: must be an integer 0-1024"},
    {"{\"threads\": true}", "threads: must be an integer 0-1024"},
    {"{\"shutdownTimeoutMs\": -1}", "shutdownTimeoutMs: must be a duration: ms as an integer >= 0"},
    {"{\"shutdownTimeoutMs\": \"30 s\"}",
     "shutdownTimeoutMs: must be a duration: ms as an integer >= 0"},
    {"{\"shutdownTimeoutMs\": \"30sec\"}",
     "shutdownTimeoutMs: must be a duration: ms as an integer >= 0"},
    {"{\"shutdownTimeoutMs\": \"-5s\"}",
     "shutdownTimeoutMs: must be a duration: ms as an integer >= 0"},
    {"{\"shutdownTimeoutMs\": \"\"}",
     "shutdownTimeoutMs: must be a duration: ms as an integer >= 0"},
    {"{\"shutdownTimeoutMs\": \"600h\"}",
     "shutdownTimeoutMs: must be a duration: ms as an integer >= 0"},
    {"{\"shutdownTimeoutMs\": 3000000000}",
     "shutdownTimeoutMs: must be a duration: ms as an integer >= 0"},
    {"{\"control\": \"x\"}", "control: must be an object"},
    {"{\"limits\": []}", "limits: must be an object"},
    {"{\"servers\": {}}", "servers: must be an array"},
    {"{\"servers\": [5]}", "servers[0]: must be an object"},
    /* control */
    {"{\"control\": {\"paht\": \"x\"}}", "control.paht: unknown key"},
    {"{\"control\": {\"path\": 5}}", "control.path: must be a non-empty string"},
    {"{\"control\": {\"path\": \"\"}}", "control.path: must be a non-empty string"},
    {"{\"control\": {\"mode\": \"0999\"}}", "control.mode: must be a string of octal digits"},
    {"{\"control\": {\"mode\": \"abc\"}}", "control.mode: must be a string of octal digits"},
    {"{\"control\": {\"mode\": \"\"}}", "control.mode: must be a string of octal digits"},
    {"{\"control\": {\"mode\": \"17777\"}}", "control.mode: must be a string of octal digits"},
    {"{\"control\": {\"mode\": 600}}", "control.mode: must be a string of octal digits"},
    {"{\"control\": {\"group\": 0}}", "control.group: must be a non-empty string"},
    {"{\"control\": {\"maxClients\": 0}}", "control.maxClients: must be an integer >= 1"},
    {"{\"control\": {\"maxClients\": \"64\"}}", "control.maxClients: must be an integer >= 1"},
    {"{\"control\": {\"idleTimeout\": -1}}",
     "control.idleTimeout: must be a duration: ms as an integer >= 0"},
    {"{\"control\": {\"idleTimeout\": null}}",
     "control.idleTimeout: must be a duration: ms as an integer >= 0"},
    /* limits */
    {"{\"limits\": {\"hwm\": 1}}", "limits.hwm: unknown key"},
    {"{\"limits\": {\"highWaterMark\": 0}}", "limits.highWaterMark: must be an integer >= 1"},
    {"{\"limits\": {\"highWaterMark\": \"1M\"}}", "limits.highWaterMark: must be an integer >= 1"},
    {"{\"limits\": {\"maxBufferedBytes\": 1.5}}",
     "limits.maxBufferedBytes: must be an integer >= 1"},
    {"{\"limits\": {\"stallMs\": -1}}",
     "limits.stallMs: must be a duration: ms as an integer >= 0"},
    {"{\"limits\": {\"stallMs\": false}}",
     "limits.stallMs: must be a duration: ms as an integer >= 0"},
    /* server: address */
    {"{\"servers\": [{\"prot\": 1}]}", "servers[0].prot: unknown key"},
    {"{\"servers\": [{\"port\": 70000}]}", "servers[0].port: must be an integer 0-65535"},
    {"{\"servers\": [{\"port\": -1}]}", "servers[0].port: must be an integer 0-65535"},
    {"{\"servers\": [{\"port\": \"80\"}]}", "servers[0].port: must be an integer 0-65535"},
    {"{\"servers\": [{\"port\": 80.5}]}", "servers[0].port: must be an integer 0-65535"},
    {"{\"servers\": [{\"port\": 4294967376}]}", "servers[0].port: must be an integer 0-65535"},
    {"{\"servers\": [{\"host\": \"127.0.0.1\"}]}", "servers[0].host: needs port"},
    {"{\"servers\": [{\"path\": \"/x\", \"host\": \"h\"}]}", "servers[0].host: needs port"},
    {"{\"servers\": [{\"port\": 1, \"host\": 5}]}", "servers[0].host: must be a string"},
    {"{\"servers\": [{\"port\": 1, \"host\": \"bad host\"}]}", "servers[0].host: \"bad host\""},
    {"{\"servers\": [{\"port\": 1, \"host\": \"\"}]}", "servers[0].host: \"\""},
    {"{\"servers\": [{\"port\": 1, \"path\": \"/x\"}]}", "servers[0].path: not allowed with port"},
    {"{\"servers\": [{\"port\": 1, \"fd\": 3}]}", "servers[0].fd: not allowed with port"},
    {"{\"servers\": [{\"path\": \"/x\", \"fd\": 3}]}", "servers[0].fd: not allowed with path"},
    {"{\"servers\": [{}]}", "servers[0].port: missing"},
    {"{\"servers\": [{\"name\": \"x\"}]}", "servers[0].port: missing"},
    {"{\"servers\": [{\"path\": \"\"}]}", "servers[0].path: must be a non-empty string"},
    {"{\"servers\": [{\"path\": 5}]}", "servers[0].path: must be a non-empty string"},
    {"{\"servers\": [{\"fd\": -1}]}", "servers[0].fd: must be an integer >= 0"},
    {"{\"servers\": [{\"fd\": true}]}", "servers[0].fd: must be an integer >= 0"},
    {"{\"servers\": [{\"fd\": \"\"}]}", "servers[0].fd: a LISTEN_FDNAMES name"},
    {"{\"servers\": [{\"fd\": \"a:b\"}]}", "servers[0].fd: a LISTEN_FDNAMES name"},
    /* server: options */
    {"{\"servers\": [{\"port\": 1, \"backlog\": 0}]}",
     "servers[0].backlog: must be an integer 1-65535"},
    {"{\"servers\": [{\"port\": 1, \"backlog\": 65536}]}",
     "servers[0].backlog: must be an integer 1-65535"},
    {"{\"servers\": [{\"port\": 1, \"backlog\": \"511\"}]}",
     "servers[0].backlog: must be an integer 1-65535"},
    {"{\"servers\": [{\"port\": 1, \"name\": \"\"}]}",
     "servers[0].name: must be a non-empty string"},
    {"{\"servers\": [{\"port\": 1, \"name\": 7}]}", "servers[0].name: must be a non-empty string"},
    {"{\"servers\": [{\"port\": 1, \"allowHalfOpen\": \"yes\"}]}",
     "servers[0].allowHalfOpen: must be true or false"},
    {"{\"servers\": [{\"port\": 1, \"maxConnections\": -1}]}",
     "servers[0].maxConnections: must be null or an integer >= 0"},
    {"{\"servers\": [{\"port\": 1, \"maxConnections\": \"10\"}]}",
     "servers[0].maxConnections: must be null or an integer >= 0"},
    {"{\"servers\": [{\"port\": 1, \"maxConnections\": 2147483648}]}",
     "servers[0].maxConnections: must be null or an integer >= 0"},
    {"{\"servers\": [{\"port\": 1, \"timeout\": -1}]}",
     "servers[0].timeout: must be a duration: ms as an integer >= 0"},
    {"{\"servers\": [{\"port\": 1, \"timeout\": \"1 s\"}]}",
     "servers[0].timeout: must be a duration: ms as an integer >= 0"},
    {"{\"servers\": [{\"port\": 1, \"timeout\": \"1.5s\"}]}",
     "servers[0].timeout: must be a duration: ms as an integer >= 0"},
    {"{\"servers\": [{\"port\": 1, \"timeout\": 2147483648}]}",
     "servers[0].timeout: must be a duration: ms as an integer >= 0"},
    {"{\"servers\": [{\"port\": 1, \"noDelay\": 1}]}", "servers[0].noDelay: must be true or false"},
    {"{\"servers\": [{\"port\": 1, \"keepAlive\": true}]}",
     "servers[0].keepAlive: true is not accepted"},
    {"{\"servers\": [{\"port\": 1, \"keepAlive\": -1}]}",
     "servers[0].keepAlive: must be a duration (ms, or a string such as \"30s\") or false"},
    {"{\"servers\": [{\"port\": 1, \"keepAlive\": \"60 seconds\"}]}",
     "servers[0].keepAlive: must be a duration (ms, or a string such as \"30s\") or false"},
    {"{\"servers\": [{\"port\": 1, \"balance\": \"fastest\"}]}",
     "servers[0].balance: must be \"leastconn\", \"roundrobin\" or \"reuseport\""},
    {"{\"servers\": [{\"port\": 1, \"balance\": 1}]}", "servers[0].balance: must be"},
    {"{\"servers\": [{\"path\": \"/x\", \"balance\": \"reuseport\"}]}",
     "servers[0].balance: reuseport needs a TCP port"},
    {"{\"servers\": [{\"fd\": 3, \"balance\": \"reuseport\"}]}",
     "servers[0].balance: reuseport needs a TCP port"},
    /* server: handler */
    {"{\"servers\": [{\"port\": 1, \"handler\": \"echo\"}]}",
     "servers[0].handler: must be an object"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {}}]}", "servers[0].handler.type: required"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": 1}}]}",
     "servers[0].handler.type: must be a string"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"foo\"}}]}",
     "servers[0].handler.type: unknown handler \"foo\" (echo, discard, banner, proxy)"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"echo\", \"greting\": \"x\"}}]}",
     "servers[0].handler.greting: unknown key"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"echo\", \"text\": \"x\"}}]}",
     "servers[0].handler.text: unknown key"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"echo\", \"greeting\": 5}}]}",
     "servers[0].handler.greeting: must be a string"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"discard\", \"greeting\": \"x\"}}]}",
     "servers[0].handler.greeting: unknown key"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"banner\"}}]}",
     "servers[0].handler.text: required for banner"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"banner\", \"text\": null}}]}",
     "servers[0].handler.text: must be a string"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"proxy\"}}]}",
     "servers[0].handler.port: required for proxy"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"proxy\", \"host\": \"h\"}}]}",
     "servers[0].handler.host: needs handler.port"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"proxy\", \"port\": 70000}}]}",
     "servers[0].handler.port: must be an integer 0-65535"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"proxy\", \"port\": \"80\"}}]}",
     "servers[0].handler.port: must be an integer 0-65535"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"proxy\", \"port\": 2, \"host\": 5}}]}",
     "servers[0].handler.host: must be a string"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"proxy\", \"port\": 2,"
     " \"path\": \"/x\"}}]}",
     "servers[0].handler.path: not allowed with handler.port"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"proxy\", \"path\": \"\"}}]}",
     "servers[0].handler.path: must be a non-empty string"},
    {"{\"servers\": [{\"port\": 1, \"handler\": {\"type\": \"proxy\", \"port\": 2,"
     " \"timeout\": 5}}]}",
     "servers[0].handler.timeout: unknown key"},
    /* the index names the entry that is wrong, not the first */
    {"{\"servers\": [{\"port\": 1}, {\"port\": 2}, {\"port\": 3, \"timeout\": -5}]}",
     "servers[2].timeout: must be a duration: ms as an integer >= 0"},
};

START_TEST(bad_file)
{
    expect_file_error(bad_rows[_i].json, bad_rows[_i].want);
}
END_TEST

/* ------------------------------------------------------------------------ listen arguments */

START_TEST(envelope_skipped)
{
    netd_listen_spec_t s;
    char err[ERRLEN] = "";
    int rc = parse_text("{\"id\": 7, \"cmd\": \"listen\", \"port\": 8124, \"name\": \"a\"}", NULL,
                        "", true, &s, err);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_int_eq(s.port, 8124);
    ck_assert_ptr_null(json_object_get(s.source, "id"));
    ck_assert_ptr_null(json_object_get(s.source, "cmd"));
    ck_assert_int_eq(json_integer_value(json_object_get(s.source, "port")), 8124);
    ck_assert_uint_eq(json_object_size(s.source), 2);
    netd_listen_spec_free(&s);
}
END_TEST

START_TEST(envelope_refused_without_skip)
{
    expect_spec_error("{\"id\": 7, \"port\": 8124}", "", "id: unknown key");
    expect_spec_error("{\"cmd\": \"listen\", \"port\": 8124}", "", "cmd: unknown key");
}
END_TEST

START_TEST(spec_error_prefix)
{
    expect_spec_error("{\"port\": \"80\"}", "", "port: must be an integer 0-65535");
    expect_spec_error("{\"port\": \"80\"}", "servers[2].", "servers[2].port: must be an integer");
    expect_spec_error("{\"port\": 1, \"handler\": {\"type\": \"foo\"}}", "",
                      "handler.type: unknown handler \"foo\" (echo, discard, banner, proxy)");
    expect_spec_error("{\"port\": 1, \"bogus\": 1}", "", "bogus: unknown key");
}
END_TEST

START_TEST(spec_not_object)
{
    netd_listen_spec_t s;
    char err[ERRLEN] = "";
    json_t *arr = json_array();
    ck_assert_int_eq(netd_listen_spec_parse(arr, NULL, "servers[1].", false, &s, err, ERRLEN), -1);
    ck_assert_msg(strncmp(err, "servers[1]: must be an object", 29) == 0, "got \"%s\"", err);
    json_decref(arr);
    netd_listen_spec_free(&s);
}
END_TEST

START_TEST(relative_path_without_base_kept)
{
    netd_listen_spec_t s;
    char err[ERRLEN] = "";
    ck_assert_int_eq(parse_text("{\"path\": \"run/x.sock\"}", NULL, "", false, &s, err), 0);
    ck_assert_str_eq(s.path, "run/x.sock");
    netd_listen_spec_free(&s);
    ck_assert_int_eq(parse_text("{\"path\": \"run/x.sock\"}", "/srv/", "", false, &s, err), 0);
    ck_assert_str_eq(s.path, "/srv/run/x.sock");
    netd_listen_spec_free(&s);
}
END_TEST

START_TEST(max_connections_values)
{
    static const struct {
        const char *in;
        int want;
    } rows[] = {{"{\"port\": 1, \"maxConnections\": null}", 0},
                {"{\"port\": 1, \"maxConnections\": 0}", 0},
                {"{\"port\": 1, \"maxConnections\": 250}", 250}};
    for (int i = 0; i < N_ELEMS(rows); i++) {
        netd_listen_spec_t s;
        parse_ok(rows[i].in, &s);
        ck_assert_int_eq(s.max_connections, rows[i].want);
        netd_listen_spec_free(&s);
    }
}
END_TEST

START_TEST(keep_alive_values)
{
    static const struct {
        const char *in;
        int want;
    } rows[] = {{"{\"port\": 1, \"keepAlive\": false}", -1},
                {"{\"port\": 1, \"keepAlive\": 0}", 0},
                {"{\"port\": 1, \"keepAlive\": 60000}", 60000}};
    for (int i = 0; i < N_ELEMS(rows); i++) {
        netd_listen_spec_t s;
        parse_ok(rows[i].in, &s);
        ck_assert_int_eq(s.keep_alive_ms, rows[i].want);
        netd_listen_spec_free(&s);
    }
}
END_TEST

START_TEST(hosts_accepted)
{
    static const char *const hosts[] = {
        "127.0.0.1", "::", "::1", "fe80::1%lo", "localhost", "a-b.example.com", "example.com."};
    for (int i = 0; i < N_ELEMS(hosts); i++) {
        char text[128];
        netd_listen_spec_t s;
        snprintf(text, sizeof(text), "{\"port\": 1, \"host\": \"%s\"}", hosts[i]);
        parse_ok(text, &s);
        ck_assert_str_eq(s.host, hosts[i]);
        netd_listen_spec_free(&s);
    }
}
END_TEST

START_TEST(proxy_default_host)
{
    netd_listen_spec_t s;
    parse_ok("{\"port\": 1, \"handler\": {\"type\": \"proxy\", \"port\": 9000}}", &s);
    ck_assert_ptr_eq(s.handler.ops, &netd_handler_proxy);
    ck_assert_int_eq(s.handler.port, 9000);
    ck_assert_str_eq(s.handler.host, "127.0.0.1");
    ck_assert_ptr_null(s.handler.path);
    netd_listen_spec_free(&s);
}
END_TEST

START_TEST(error_leaves_spec_empty)
{
    netd_listen_spec_t s;
    char err[ERRLEN] = "";
    /* Fails late (balance), after strings were already taken. */
    int rc = parse_text("{\"path\": \"/x\", \"handler\": {\"type\": \"banner\", \"text\": \"t\"},"
                        " \"balance\": \"reuseport\"}",
                        NULL, "", false, &s, err);
    ck_assert_int_eq(rc, -1);
    ck_assert_ptr_null(s.path);
    ck_assert_ptr_null(s.handler.text);
    ck_assert_ptr_null(s.source);
    netd_listen_spec_free(&s); /* harmless twice */
}
END_TEST

/* ------------------------------------------------------------------------ describe */

static void expect_describe(const char *handler_json, const char *want_json)
{
    char text[512];
    netd_listen_spec_t s;
    snprintf(text, sizeof(text), "{\"port\": 1, \"handler\": %s}", handler_json);
    parse_ok(text, &s);
    json_t *got = netd_handler_describe(&s.handler);
    json_t *want = json_loads(want_json, 0, NULL);
    ck_assert_ptr_nonnull(got);
    ck_assert_ptr_nonnull(want);
    char *dump = json_dumps(got, JSON_SORT_KEYS);
    ck_assert_msg(json_equal(got, want), "%s described as %s", handler_json, dump);
    free(dump);
    json_decref(got);
    json_decref(want);
    netd_listen_spec_free(&s);
}

START_TEST(describe_handlers)
{
    expect_describe("{\"type\": \"echo\"}", "{\"type\": \"echo\"}");
    expect_describe("{\"type\": \"echo\", \"greeting\": \"hi\"}",
                    "{\"type\": \"echo\", \"greeting\": \"hi\"}");
    expect_describe("{\"type\": \"discard\"}", "{\"type\": \"discard\"}");
    expect_describe("{\"type\": \"banner\", \"text\": \"bye\\n\"}",
                    "{\"type\": \"banner\", \"text\": \"bye\\n\"}");
    expect_describe("{\"type\": \"proxy\", \"port\": 80}",
                    "{\"type\": \"proxy\", \"port\": 80, \"host\": \"127.0.0.1\"}");
    expect_describe("{\"type\": \"proxy\", \"port\": 80, \"host\": \"::1\"}",
                    "{\"type\": \"proxy\", \"port\": 80, \"host\": \"::1\"}");
    expect_describe("{\"type\": \"proxy\", \"path\": \"up.sock\"}",
                    "{\"type\": \"proxy\", \"path\": \"/base/up.sock\"}");
}
END_TEST

START_TEST(describe_default_handler)
{
    netd_listen_spec_t s;
    parse_ok("{\"port\": 1}", &s);
    json_t *got = netd_handler_describe(&s.handler);
    ck_assert_str_eq(json_string_value(json_object_get(got, "type")), "echo");
    ck_assert_uint_eq(json_object_size(got), 1);
    json_decref(got);
    netd_listen_spec_free(&s);
}
END_TEST

/* ------------------------------------------------------------------------ equality */

static int equal_text(const char *a, const char *b)
{
    netd_listen_spec_t sa, sb;
    parse_ok(a, &sa);
    parse_ok(b, &sb);
    int eq = netd_listen_spec_equal(&sa, &sb);
    ck_assert_int_eq(netd_listen_spec_equal(&sb, &sa), eq);
    netd_listen_spec_free(&sa);
    netd_listen_spec_free(&sb);
    return eq;
}

START_TEST(equal_same_values)
{
    /* Key order, spelled-out defaults and the default name do not count as changes. */
    ck_assert(equal_text("{\"port\": 8124, \"host\": \"127.0.0.1\"}",
                         "{\"host\": \"127.0.0.1\", \"port\": 8124, \"noDelay\": true,"
                         " \"backlog\": 511, \"handler\": {\"type\": \"echo\"},"
                         " \"balance\": \"leastconn\", \"keepAlive\": false,"
                         " \"maxConnections\": null, \"name\": \"127.0.0.1:8124\"}"));
    ck_assert(equal_text("{\"port\": 1, \"maxConnections\": 0}",
                         "{\"port\": 1, \"maxConnections\": null}"));
    ck_assert(equal_text("{\"path\": \"x.sock\"}", "{\"path\": \"/base/x.sock\"}"));
    ck_assert(equal_text("{\"port\": 1, \"handler\": {\"type\": \"proxy\", \"port\": 2}}",
                         "{\"port\": 1, \"handler\": {\"host\": \"127.0.0.1\", \"port\": 2,"
                         " \"type\": \"proxy\"}}"));
}
END_TEST

START_TEST(equal_differences)
{
    static const char *const base = "{\"port\": 8124, \"name\": \"a\"}";
    static const char *const others[] = {
        "{\"port\": 8125, \"name\": \"a\"}",
        "{\"port\": 8124, \"name\": \"b\"}",
        "{\"port\": 8124, \"name\": \"a\", \"host\": \"127.0.0.1\"}",
        "{\"path\": \"/x\", \"name\": \"a\"}",
        "{\"fd\": 3, \"name\": \"a\"}",
        "{\"port\": 8124, \"name\": \"a\", \"backlog\": 10}",
        "{\"port\": 8124, \"name\": \"a\", \"handler\": {\"type\": \"discard\"}}",
        "{\"port\": 8124, \"name\": \"a\", \"handler\": {\"type\": \"echo\", \"greeting\": \"x\"}}",
        "{\"port\": 8124, \"name\": \"a\", \"allowHalfOpen\": true}",
        "{\"port\": 8124, \"name\": \"a\", \"maxConnections\": 5}",
        "{\"port\": 8124, \"name\": \"a\", \"timeout\": 5}",
        "{\"port\": 8124, \"name\": \"a\", \"noDelay\": false}",
        "{\"port\": 8124, \"name\": \"a\", \"keepAlive\": 0}",
        "{\"port\": 8124, \"name\": \"a\", \"balance\": \"roundrobin\"}",
    };
    for (int i = 0; i < N_ELEMS(others); i++)
        ck_assert_msg(!equal_text(base, others[i]), "%s equal to %s", others[i], base);
    ck_assert(!equal_text("{\"fd\": 3, \"name\": \"a\"}", "{\"fd\": \"x\", \"name\": \"a\"}"));
    ck_assert(!equal_text("{\"port\": 1, \"handler\": {\"type\": \"proxy\", \"port\": 2}}",
                          "{\"port\": 1, \"handler\": {\"type\": \"proxy\", \"path\": \"/u\"}}"));
}
END_TEST

/* ------------------------------------------------------------------------ issue 13 */

/* Durations: ms as a number, or a string with a unit (CONTROL.md "Durations"). */
START_TEST(duration_units)
{
    static const struct {
        const char *text;
        unsigned ms;
    } rows[] = {{"0", 0},       {"250", 250},    {"500ms", 500}, {"30s", 30000},
                {"5m", 300000}, {"2h", 7200000}, {"0s", 0},      {"2147483647", 2147483647u}};
    for (int i = 0; i < N_ELEMS(rows); i++) {
        unsigned ms = 1;
        ck_assert_msg(netd_duration_parse(rows[i].text, &ms) == 0, "%s refused", rows[i].text);
        ck_assert_uint_eq(ms, rows[i].ms);
    }
    static const char *const bad[] = {
        "",   "s", "-1", "+5s", " 5s", "5 s", "5sec", "1.5s", "5S", "597h", "99999999999999999999",
        "3d", NULL};
    for (int i = 0; bad[i]; i++) {
        unsigned ms = 7;
        ck_assert_msg(netd_duration_parse(bad[i], &ms) == -1, "\"%s\" accepted", bad[i]);
        ck_assert_uint_eq(ms, 7);
    }
}
END_TEST

START_TEST(durations_in_file)
{
    netd_config_t cfg;
    char err[ERRLEN] = "";
    int rc = load_text(
        "{\"shutdownTimeoutMs\": \"45s\", \"control\": {\"idleTimeout\": \"5m\"},"
        " \"limits\": {\"stallMs\": \"1500ms\"},"
        " \"servers\": [{\"port\": 1, \"timeout\": \"2m\", \"keepAlive\": \"10s\"}]}",
        &cfg, err, NULL);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_uint_eq(cfg.shutdown_timeout_ms, 45000);
    ck_assert_uint_eq(cfg.control_idle_timeout_ms, 300000);
    ck_assert_uint_eq(cfg.stall_ms, 1500);
    ck_assert_uint_eq(cfg.servers[0].timeout_ms, 120000);
    ck_assert_int_eq(cfg.servers[0].keep_alive_ms, 10000);
    netd_config_free(&cfg);
}
END_TEST

/* 999.1.1.1 is a mistyped address, not a host name to look up. */
START_TEST(hosts_refused)
{
    static const char *const hosts[] = {"999.1.1.1",      "1.2.3.4.5",      "256.0.0.1", "10.0.0",
                                        "-a.example.com", "a-.example.com", "a..b",      ".a",
                                        "exa mple.com",   "1.2.3.999."};
    for (int i = 0; i < N_ELEMS(hosts); i++) {
        char text[128];
        snprintf(text, sizeof(text), "{\"port\": 1, \"host\": \"%s\"}", hosts[i]);
        char want[160];
        snprintf(want, sizeof(want), "host: \"%s\" is not an IP address or a host name", hosts[i]);
        expect_spec_error(text, "", want);
    }
}
END_TEST

/* Two servers on one address (or one inherited descriptor) cannot both start. */
START_TEST(duplicate_addresses)
{
    static const struct {
        const char *servers;
        const char *want;
    } rows[] = {
        {"{\"port\": 80, \"name\": \"a\"}, {\"port\": 80, \"name\": \"b\"}",
         "servers[1].port: the same address as servers[0] (\"a\")"},
        {"{\"port\": 80, \"host\": \"127.0.0.1\"}, {\"port\": 80, \"host\": \"0.0.0.0\"}",
         "servers[1].port: the same address as servers[0]"},
        {"{\"port\": 80}, {\"port\": 80, \"host\": \"127.0.0.1\", \"balance\": \"reuseport\"}",
         "servers[1].port: the same address as servers[0]"},
        {"{\"port\": 80, \"host\": \"::\"}, {\"port\": 80, \"host\": \"127.0.0.1\"}",
         "servers[1].port: the same address"},
        {"{\"path\": \"/x.sock\", \"name\": \"a\"}, {\"path\": \"/x.sock\", \"name\": \"b\"}",
         "servers[1].path: the same address as servers[0] (\"a\")"},
        {"{\"fd\": \"web\", \"name\": \"a\"}, {\"fd\": \"web\", \"name\": \"b\"}",
         "servers[1].fd: the same address"},
    };
    for (int i = 0; i < N_ELEMS(rows); i++) {
        char text[512];
        snprintf(text, sizeof(text), "{\"servers\": [%s]}", rows[i].servers);
        expect_file_error(text, rows[i].want);
    }
    /* Distinct addresses of one port pass: two specific hosts, or v4 and v6. */
    netd_config_t cfg;
    char err[ERRLEN] = "";
    int rc = load_text(
        "{\"servers\": [{\"port\": 80, \"host\": \"127.0.0.1\"},"
        " {\"port\": 80, \"host\": \"127.0.0.2\"},"
        " {\"port\": 80, \"host\": \"::1\"}, {\"port\": 0}, {\"port\": 0, \"name\": \"z\"}]}",
        &cfg, err, NULL);
    ck_assert_msg(rc == 0, "%s", err);
    netd_config_free(&cfg);
}
END_TEST

START_TEST(socket_dirs)
{
    netd_config_t cfg;
    char err[ERRLEN] = "";
    int rc = load_text("{\"control\": {\"socketDirs\": [\"run\", \"/srv/sockets\", \"a/../b\"]}}",
                       &cfg, err, NULL);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_uint_eq(cfg.nsocket_dirs, 3);
    char want[PATH_MAX + 16];
    snprintf(want, sizeof(want), "%s/run", tmpdir);
    ck_assert_str_eq(cfg.socket_dirs[0], want);
    ck_assert_str_eq(cfg.socket_dirs[1], "/srv/sockets");
    snprintf(want, sizeof(want), "%s/b", tmpdir);
    ck_assert_str_eq(cfg.socket_dirs[2], want);
    netd_config_free(&cfg);
    expect_file_error("{\"control\": {\"socketDirs\": \"/run\"}}",
                      "control.socketDirs: must be an array of directories");
    expect_file_error("{\"control\": {\"socketDirs\": [\"/run\", \"\"]}}",
                      "control.socketDirs[1]: must be a non-empty string");
    expect_file_error("{\"control\": {\"socketDirs\": [1]}}",
                      "control.socketDirs[0]: must be a non-empty string");
}
END_TEST

START_TEST(socket_file_options)
{
    netd_listen_spec_t s;
    parse_ok("{\"path\": \"/x.sock\", \"mode\": \"0660\", \"user\": \"0\", \"group\": \"root\"}",
             &s);
    ck_assert_int_eq(s.sock_mode, 0660);
    ck_assert_int_eq((int)s.sock_uid, 0);
    ck_assert_int_eq((int)s.sock_gid, 0);
    ck_assert_str_eq(s.sock_user, "0");
    netd_listen_spec_t copy;
    ck_assert_int_eq(netd_listen_spec_dup(&s, &copy), 0);
    ck_assert(netd_listen_spec_equal(&s, &copy));
    ck_assert_ptr_ne(copy.sock_group, s.sock_group);
    copy.sock_mode = 0600;
    ck_assert(!netd_listen_spec_equal(&s, &copy));
    json_t *j = netd_listen_spec_json(&s);
    ck_assert_str_eq(json_string_value(json_object_get(j, "mode")), "0660");
    json_decref(j);
    netd_listen_spec_free(&copy);
    netd_listen_spec_free(&s);
    parse_ok("{\"path\": \"/y.sock\"}", &s);
    ck_assert_int_eq(s.sock_mode, -1);
    ck_assert_int_eq((int)s.sock_uid, -1);
    netd_listen_spec_free(&s);
    expect_spec_error("{\"port\": 1, \"mode\": \"0600\"}", "", "mode: only with path");
    expect_spec_error("{\"fd\": 3, \"group\": \"root\"}", "", "group: only with path");
    expect_spec_error("{\"path\": \"/x\", \"mode\": \"0800\"}", "",
                      "mode: must be a string of octal");
    expect_spec_error("{\"path\": \"/x\", \"mode\": 432}", "", "mode: must be a string of octal");
    expect_spec_error("{\"path\": \"/x\", \"user\": \"no-such-user-netd\"}", "",
                      "user: no such user \"no-such-user-netd\"");
    expect_spec_error("{\"path\": \"/x\", \"group\": \"no-such-group-netd\"}", "",
                      "group: no such group");
}
END_TEST

/* A listen without a name is named after the address; name_given says which. */
START_TEST(name_given_flag)
{
    netd_listen_spec_t s;
    parse_ok("{\"port\": 0}", &s);
    ck_assert(!s.name_given);
    ck_assert_str_eq(s.name, "0.0.0.0:0");
    netd_listen_spec_free(&s);
    parse_ok("{\"port\": 0, \"name\": \"x\"}", &s);
    ck_assert(s.name_given);
    netd_listen_spec_free(&s);
}
END_TEST

/* --check -v: the effective config, every default spelled out. */
START_TEST(effective_config_json)
{
    netd_config_t cfg;
    char err[ERRLEN] = "";
    int rc = load_text("{\"servers\": [{\"name\": \"e\", \"port\": 8124}]}", &cfg, err, NULL);
    ck_assert_msg(rc == 0, "%s", err);
    json_t *j = netd_config_json(&cfg, "/run/netd/netd.sock");
    char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    ck_assert_str_eq(
        text,
        "{\"accessLog\":null,"
        "\"control\":{\"group\":null,\"idleTimeout\":300000,\"maxClients\":64,\"mode\":\"0600\","
        "\"path\":\"/run/netd/netd.sock\",\"socketDirs\":[\"/run/netd\"]},"
        "\"limits\":{\"highWaterMark\":1048576,\"maxBufferedBytes\":16777216,"
        "\"stallMs\":30000},\"metrics\":null,"
        "\"servers\":[{\"accessLog\":false,\"allowHalfOpen\":false,\"backlog\":511,"
        "\"balance\":\"leastconn\",\"handler\":{\"type\":\"echo\"},\"host\":\"0.0.0.0\","
        "\"keepAlive\":false,\"maxConnections\":null,\"name\":\"e\",\"noDelay\":true,"
        "\"port\":8124,\"timeout\":0}],\"shutdownTimeoutMs\":30000,\"threads\":0}");
    free(text);
    json_decref(j);
    netd_config_free(&cfg);
}
END_TEST

/* What --check -v prints is a config netd takes back, meaning the same: its nulls
 * (control.group, metrics, accessLog) are the defaults they print. */
START_TEST(effective_config_loads_again)
{
    netd_config_t cfg, again;
    char err[ERRLEN] = "";
    int rc = load_text("{\"servers\": [{\"name\": \"e\", \"port\": 8124}]}", &cfg, err, NULL);
    ck_assert_msg(rc == 0, "%s", err);
    json_t *j = netd_config_json(&cfg, "/run/netd/netd.sock");
    char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    rc = load_text(text, &again, err, NULL);
    ck_assert_msg(rc == 0, "the printed config is refused: %s", err);
    json_t *j2 = netd_config_json(&again, "/run/netd/netd.sock");
    char *text2 = json_dumps(j2, JSON_COMPACT | JSON_SORT_KEYS);
    ck_assert_str_eq(text2, text);
    free(text2);
    free(text);
    json_decref(j2);
    json_decref(j);
    netd_config_free(&again);
    netd_config_free(&cfg);
}
END_TEST

/* ------------------------------------------------------------------------ suite */

static TCase *new_tcase(Suite *s, const char *name)
{
    TCase *tc = th_tcase(s, name, 10);
    tcase_add_checked_fixture(tc, setup, teardown);
    return tc;
}

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");

    TCase *tc = new_tcase(s, "valid");
    tcase_add_test(tc, full_file_every_key);
    tcase_add_test(tc, empty_file_gives_defaults);
    tcase_add_test(tc, empty_sections_give_defaults);
    tcase_add_test(tc, builtin_default);
    tcase_add_test(tc, server_defaults);
    tcase_add_test(tc, default_names);
    tcase_add_test(tc, default_names_in_file);
    tcase_add_test(tc, relative_paths_resolve_against_config_dir);
    tcase_add_test(tc, mode_values);
    tcase_add_test(tc, threads_bounds_accepted);

    tc = new_tcase(s, "invalid");
    tcase_add_test(tc, truncated_json_has_line_and_column);
    tcase_add_test(tc, duplicate_keys_refused);
    tcase_add_test(tc, missing_file);
    tcase_add_test(tc, error_names_relative_file);
    tcase_add_test(tc, unknown_group);
    tcase_add_test(tc, duplicate_names);
    tcase_add_test(tc, duplicate_default_names);
    tcase_add_test(tc, path_too_long);
    tcase_add_test(tc, path_length_after_resolving);
    tcase_add_test(tc, top_level_not_object);
    tcase_add_loop_test(tc, bad_file, 0, N_ELEMS(bad_rows));

    tc = new_tcase(s, "listen");
    tcase_add_test(tc, envelope_skipped);
    tcase_add_test(tc, envelope_refused_without_skip);
    tcase_add_test(tc, spec_error_prefix);
    tcase_add_test(tc, spec_not_object);
    tcase_add_test(tc, relative_path_without_base_kept);
    tcase_add_test(tc, max_connections_values);
    tcase_add_test(tc, keep_alive_values);
    tcase_add_test(tc, hosts_accepted);
    tcase_add_test(tc, proxy_default_host);
    tcase_add_test(tc, error_leaves_spec_empty);

    tc = new_tcase(s, "describe");
    tcase_add_test(tc, describe_handlers);
    tcase_add_test(tc, describe_default_handler);

    tc = new_tcase(s, "equal");
    tcase_add_test(tc, equal_same_values);
    tcase_add_test(tc, equal_differences);

    tc = new_tcase(s, "service");
    tcase_add_test(tc, duration_units);
    tcase_add_test(tc, durations_in_file);
    tcase_add_test(tc, hosts_refused);
    tcase_add_test(tc, duplicate_addresses);
    tcase_add_test(tc, socket_dirs);
    tcase_add_test(tc, socket_file_options);
    tcase_add_test(tc, name_given_flag);
    tcase_add_test(tc, effective_config_json);
    tcase_add_test(tc, effective_config_loads_again);
    return s;
}

int main(void)
{
    return th_run_suite(config_suite());
}
