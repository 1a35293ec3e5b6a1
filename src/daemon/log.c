/* SPDX-License-Identifier: MIT */
/*
 * netd's log: one line per event on stderr, with an sd-daemon "<N>" priority prefix under
 * journald and a timestamp otherwise; control characters escaped so a name can never split
 * a line; repeated warnings of one kind rate-limited with a count. Any thread may log.
 */
#include "config.h"

#include "daemon.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int netd_log_level = NETD_LOG_INFO;

static bool to_journal; /* stderr is the journal's stream: it timestamps, we add <N> */

/* Lines of one rate-limited kind printed per second before the rest are only counted. */
#define LOG_BURST 3
#define LOG_KINDS 16

/* One kind of repeated line (its key is a string literal of the call site). */
typedef struct log_kind {
    const char *key;
    uint64_t window_start_ms;
    unsigned printed;    /* in this window */
    unsigned suppressed; /* in this window, not printed */
    int level;
    char last[256]; /* the last suppressed line, for the summary */
} log_kind_t;

static pthread_mutex_t kinds_lock = PTHREAD_MUTEX_INITIALIZER;
static log_kind_t kinds[LOG_KINDS];

void netd_log_init(void)
{
    /* systemd sets JOURNAL_STREAM to "DEV:INODE" of the stream it connected; it is ours
     * only if stderr still is that stream (a shell redirect inherits the variable). */
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    to_journal = js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
                 (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

/* Copies src into dst, control characters as \n, \t, \r or \xNN (a name or a peer's text
 * with a newline would otherwise forge a log line). */
static void escape(char *dst, size_t cap, const char *src)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)src; *p && o + 5 < cap; p++) {
        unsigned char ch = *p;
        if (ch >= 0x20 && ch != 0x7f) {
            dst[o++] = (char)ch;
            continue;
        }
        dst[o++] = '\\';
        switch (ch) {
        case '\n':
            dst[o++] = 'n';
            break;
        case '\t':
            dst[o++] = 't';
            break;
        case '\r':
            dst[o++] = 'r';
            break;
        default:
            o += (size_t)snprintf(dst + o, cap - o, "x%02x", ch);
            break;
        }
    }
    dst[o] = '\0';
}

static void emit(int level, const char *msg)
{
    /* syslog priorities: err, warning, info, debug (trace is debug too). */
    static const char *const names[] = {"error", "warning", "info", "debug", "trace"};
    static const int prio[] = {3, 4, 6, 7, 7};
    char clean[1200];
    escape(clean, sizeof(clean), msg);
    /* One fprintf per line: stdio locks the stream, so lines of several threads never
     * interleave. */
    if (to_journal) {
        fprintf(stderr, "<%d>%s: %s\n", prio[level], names[level], clean);
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    char when[40], zone[8];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    strftime(zone, sizeof(zone), "%z", &tm);
    fprintf(stderr, "%s.%03ld%s netd: %s: %s\n", when, ts.tv_nsec / 1000000L, zone, names[level],
            clean);
}

void netd_log(int level, const char *fmt, ...)
{
    if (level > netd_log_level)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    emit(level, line);
}

/* The summary of a window that ended; called with kinds_lock held. Writes into out. */
static bool summary(log_kind_t *k, char *out, size_t cap, int *level)
{
    if (k->suppressed == 0)
        return false;
    snprintf(out, cap, "%u more like this in the last second (not shown): %s", k->suppressed,
             k->last);
    *level = k->level;
    k->suppressed = 0;
    return true;
}

void netd_log_limited(int level, const char *key, const char *fmt, ...)
{
    if (level > netd_log_level)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);

    char pending[1400];
    int pending_level = level;
    bool have_pending = false, print = true;
    uint64_t now = netd_now_ms();
    pthread_mutex_lock(&kinds_lock);
    log_kind_t *k = NULL;
    for (int i = 0; i < LOG_KINDS && !k; i++)
        if (kinds[i].key == key || !kinds[i].key)
            k = &kinds[i];
    if (k) {
        if (!k->key || now - k->window_start_ms >= 1000) {
            if (k->key)
                have_pending = summary(k, pending, sizeof(pending), &pending_level);
            k->key = key;
            k->window_start_ms = now;
            k->printed = 0;
        }
        if (k->printed < LOG_BURST) {
            k->printed++;
        } else {
            print = false;
            k->suppressed++;
            k->level = level;
            snprintf(k->last, sizeof(k->last), "%.*s", (int)sizeof(k->last) - 1, line);
        }
    }
    pthread_mutex_unlock(&kinds_lock);
    if (have_pending)
        emit(pending_level, pending);
    if (print)
        emit(level, line);
}

void netd_log_flush(void)
{
    uint64_t now = netd_now_ms();
    for (int i = 0; i < LOG_KINDS; i++) {
        char pending[1400];
        int level = NETD_LOG_WARN;
        pthread_mutex_lock(&kinds_lock);
        bool have = kinds[i].key && now - kinds[i].window_start_ms >= 1000 &&
                    summary(&kinds[i], pending, sizeof(pending), &level);
        pthread_mutex_unlock(&kinds_lock);
        if (have)
            emit(level, pending);
    }
}
