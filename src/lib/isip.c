/* SPDX-License-Identifier: MIT */
/*
 * isIP / isIPv4 / isIPv6 and the family names: a strict textual parser for IP literals.
 * Owns the rules of which strings count as addresses (Node's tables), nothing else.
 */
#include <stddef.h>
#include <string.h>

#include <netd/net.h>

#ifndef ND_EXPORT
#define ND_EXPORT __attribute__((visibility("default")))
#endif

/*
 * Hand-written rather than inet_pton/inet_aton: inet_aton takes "127.1", "0x7f.1" and
 * octal, inet_pton's IPv6 side varies between libcs (zone ids, leading zeros in an
 * embedded IPv4 tail), and the answer has to be the same everywhere the library runs.
 * Character tests are spelled out instead of <ctype.h> so the locale cannot widen them.
 */

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int is_xdigit(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Exactly four decimal octets 0-255 filling [p, end); a leading zero makes an octet
 * ambiguous (octal to inet_aton), so Node rejects it and so do we. */
static int parse_v4(const char *p, const char *end)
{
    for (int part = 0;; part++) {
        if (p == end || !is_digit(*p))
            return 0;
        if (*p == '0' && p + 1 < end && is_digit(p[1]))
            return 0;
        unsigned v = 0;
        int digits = 0;
        while (p < end && is_digit(*p)) {
            /* Capping the digit count first keeps v from overflowing on long runs. */
            if (++digits > 3)
                return 0;
            v = v * 10 + (unsigned)(*p - '0');
            p++;
        }
        if (v > 255)
            return 0;
        if (part == 3)
            return p == end;
        if (p == end || *p != '.')
            return 0;
        p++;
    }
}

/* Modern Node's zone id: '%' then one or more of [0-9A-Za-z.:-]. v0.10 had no opinion
 * (its tables carry no zone rows), so accepting it cannot contradict them. */
static int valid_zone(const char *p, const char *end)
{
    if (p == end)
        return 0;
    for (; p < end; p++) {
        char c = *p;
        if (!(is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' ||
              c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

static int parse_v6(const char *s, size_t n)
{
    const char *end = s + n;
    const char *pct = memchr(s, '%', n);
    if (pct) {
        if (!valid_zone(pct + 1, end))
            return 0;
        end = pct;
    }

    const char *p = s;
    int groups = 0; /* 16-bit groups written out; an IPv4 tail counts as two */
    int elided = 0; /* saw "::" */

    if (p == end)
        return 0;
    if (*p == ':') {
        /* A leading colon is only legal as the first half of "::". */
        if (end - p < 2 || p[1] != ':')
            return 0;
        elided = 1;
        p += 2;
        if (p == end)
            return 1;
    }

    for (;;) {
        const char *q = p;
        while (q < end && is_xdigit(*q))
            q++;
        if (q < end && *q == '.') {
            /* An IPv4 tail must run to the end: it is only ever the last 32 bits. */
            if (!parse_v4(p, end))
                return 0;
            groups += 2;
            break;
        }
        if (q == p || q - p > 4)
            return 0;
        groups++;
        p = q;
        if (p == end)
            break;
        if (*p != ':')
            return 0;
        p++;
        if (p < end && *p == ':') {
            if (elided)
                return 0;
            elided = 1;
            p++;
            if (p == end)
                break;
        } else if (p == end) {
            return 0; /* a lone trailing colon */
        }
        if (groups > 8)
            return 0;
    }

    /* "::" has to stand for at least one zero group, so it cannot join eight explicit
     * ones ("1:2:3:4:5:6:7:8::" and the 9-group v0.10 row are rejected). */
    return elided ? groups <= 7 : groups == 8;
}

ND_EXPORT int nd_is_ipv4(const char *input)
{
    if (input == NULL)
        return 0;
    return parse_v4(input, input + strlen(input));
}

ND_EXPORT int nd_is_ipv6(const char *input)
{
    if (input == NULL)
        return 0;
    return parse_v6(input, strlen(input));
}

ND_EXPORT int nd_is_ip(const char *input)
{
    if (nd_is_ipv4(input))
        return 4;
    if (nd_is_ipv6(input))
        return 6;
    return 0;
}

ND_EXPORT const char *nd_family_name(int family)
{
    if (family == 4)
        return "IPv4";
    if (family == 6)
        return "IPv6";
    return NULL;
}
