/* SPDX-License-Identifier: MIT */
/*
 * What the two chaos runs (chaos.c, lib_stress.c) share: how slow this build is, the
 * clock, splitmix64 and the draws made from it, and stream bytes as a pure function of
 * (seed, offset). Header-only, so the netd tester stays a program of its own that links
 * no test library.
 */
#ifndef NETD_CHAOS_H
#define NETD_CHAOS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* Sanitized builds run several times slower: fewer streams, longer deadlines. */
#if defined(ND_TSAN)
#define BUILD_NAME "tsan"
#define SLOW 4
#elif defined(ND_ASAN)
#define BUILD_NAME "asan"
#define SLOW 2
#else
#define BUILD_NAME "plain"
#define SLOW 1
#endif

static inline uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

typedef struct rng {
    uint64_t s;
} rng_t;

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rng_next(rng_t *r)
{
    r->s += 0x9e3779b97f4a7c15ULL;
    return mix64(r->s);
}

static inline uint64_t rng_below(rng_t *r, uint64_t n)
{
    return n ? rng_next(r) % n : 0;
}

static inline bool rng_pct(rng_t *r, unsigned pct)
{
    return rng_below(r, 100) < pct;
}

static inline uint64_t rng_range(rng_t *r, uint64_t lo, uint64_t hi)
{
    return lo + rng_below(r, hi - lo + 1);
}

/* Log-uniform in [lo, hi] (integers only, so every build draws the same): a 3-byte write
 * is as likely as a 100 KB one. */
static inline uint64_t rng_log(rng_t *r, uint64_t lo, uint64_t hi)
{
    int bits = 64 - __builtin_clzll(hi | 1);
    int k = (int)rng_below(r, (uint64_t)bits);
    uint64_t base = 1ULL << k;
    uint64_t v = base + rng_below(r, base);
    return v < lo ? lo : v > hi ? hi : v;
}

/* The bytes of a stream: a pure function of (seed, offset), so echoes are checked as they
 * arrive without keeping what was sent. */
static inline void gen_fill(uint64_t seed, uint64_t off, uint8_t *out, size_t n)
{
    while (n > 0) {
        uint64_t w = mix64(seed ^ ((off >> 3) * 0xd6e8feb86659fd93ULL));
        unsigned k = (unsigned)(off & 7);
        size_t take = 8 - k < n ? 8 - k : n;
        for (size_t i = 0; i < take; i++)
            out[i] = (uint8_t)(w >> ((k + i) * 8));
        out += take;
        off += take;
        n -= take;
    }
}

/* Kinds of operations switched off with --without LIST (triage: get past a known
 * crash). The PRNG draws stay the same, so the rest of the run keeps its decisions. */
#define MAX_WITHOUT 32
static const char *without[MAX_WITHOUT];
static int nwithout;

/* Takes a comma-separated LIST (kept: it is argv's). */
static inline void without_add(char *list)
{
    for (char *t = strtok(list, ","); t && nwithout < MAX_WITHOUT; t = strtok(NULL, ","))
        without[nwithout++] = t;
}

static inline bool enabled(const char *name)
{
    for (int i = 0; i < nwithout; i++)
        if (strcmp(without[i], name) == 0)
            return false;
    return true;
}

#endif
