/* SPDX-License-Identifier: MIT */
/*
 * Buffer encodings: the growable string buffer, encoding names, the streaming decoder
 * behind setEncoding() and the encoders behind write(string, encoding).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <netd/net.h>

#include "encoding.h"

/* ------------------------------------------------------------------------ strbuf */

int nd__strbuf_reserve(nd__strbuf_t *b, size_t extra)
{
    if (extra > SIZE_MAX - 1 - b->len)
        return -ENOMEM;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    /* Doubling keeps a stream of appends amortised O(1) and, once the buffer has seen
     * the largest chunk, steady state never reallocates. */
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *p = realloc(b->ptr, cap);
    if (p == NULL)
        return -ENOMEM;
    if (b->ptr == NULL)
        p[0] = '\0'; /* a fresh buffer must already read as "" */
    b->ptr = p;
    b->cap = cap;
    return 0;
}

void nd__strbuf_free(nd__strbuf_t *b)
{
    free(b->ptr);
    b->ptr = NULL;
    b->len = 0;
    b->cap = 0;
}

/* Callers reserve first; this is only the cold-path fallback for replacement chars. */
static inline int sb_put(nd__strbuf_t *b, const void *p, size_t n)
{
    if (n > b->cap - b->len - 1) {
        int rc = nd__strbuf_reserve(b, n);
        if (rc < 0)
            return rc;
    }
    memcpy(b->ptr + b->len, p, n);
    b->len += n;
    return 0;
}

static const char replacement[3] = {'\xEF', '\xBF', '\xBD'}; /* U+FFFD */

/* Worst-case output sizes are products of the input length; refuse rather than wrap. */
static int mul_ok(size_t a, size_t b, size_t *out)
{
    if (b != 0 && a > SIZE_MAX / b)
        return 0;
    *out = a * b;
    return 1;
}

/* ------------------------------------------------------------------------- names */

/* ASCII-only folding: the names are ASCII and strcasecmp would follow the locale. */
static int name_eq(const char *a, const char *b)
{
    for (;; a++, b++) {
        char c = *a;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != *b)
            return 0;
        if (c == '\0')
            return 1;
    }
}

int nd__encoding_parse(const char *name)
{
    static const struct {
        const char *name;
        nd__encoding_t enc;
    } names[] = {
        {"utf8", ND_ENC_UTF8},        {"utf-8", ND_ENC_UTF8},    {"utf16le", ND_ENC_UTF16LE},
        {"utf-16le", ND_ENC_UTF16LE}, {"ucs2", ND_ENC_UTF16LE},  {"ucs-2", ND_ENC_UTF16LE},
        {"hex", ND_ENC_HEX},          {"base64", ND_ENC_BASE64}, {"ascii", ND_ENC_ASCII},
        {"latin1", ND_ENC_LATIN1},    {"binary", ND_ENC_LATIN1},
    };
    /* Node treats an empty encoding like a missing one (v0.10's `encoding || 'utf8'`). */
    if (name == NULL || name[0] == '\0')
        return ND_ENC_UTF8;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (name_eq(name, names[i].name))
            return names[i].enc;
    return ND_EENCODING;
}

/* ---------------------------------------------------------------------- UTF-8 core */

/*
 * Classifies the sequence at s[0..n): its length when complete and well formed, 0 when
 * it is a well-formed prefix cut off by n, or -k when its first k bytes are the maximal
 * ill-formed subpart (one U+FFFD each, the WHATWG/Unicode rule modern Node and V8
 * follow). The per-lead bounds reject overlongs, surrogates and values past U+10FFFF on
 * the first continuation byte, so a held-back prefix is always one that can still
 * complete.
 */
static inline int utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char b = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t need;

    if (b < 0x80)
        return 1;
    if (b >= 0xC2 && b <= 0xDF) {
        need = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 3;
        if (b == 0xE0)
            lo = 0xA0;
        else if (b == 0xED)
            hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 4;
        if (b == 0xF0)
            lo = 0x90;
        else if (b == 0xF4)
            hi = 0x8F;
    } else {
        return -1;
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= n)
            return 0;
        if (s[i] < lo || s[i] > hi)
            return -(int)i;
        lo = 0x80;
        hi = 0xBF;
    }
    return (int)need;
}

/* Only for sequences utf8_seq() accepted. */
static inline uint32_t utf8_cp(const unsigned char *s, int n)
{
    switch (n) {
    case 1:
        return s[0];
    case 2:
        return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    case 3:
        return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    default:
        return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
               ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    }
}

static inline size_t utf8_put(unsigned char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the ASCII run at s[0..n), eight bytes per step: the common case for text
 * protocols, and it lets the decoder copy whole runs with one memcpy. */
static inline size_t ascii_run(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (n - i >= 8) {
        uint64_t w;
        memcpy(&w, s + i, sizeof(w));
        if (w & UINT64_C(0x8080808080808080))
            break;
        i += 8;
    }
    while (i < n && s[i] < 0x80)
        i++;
    return i;
}

/* ----------------------------------------------------------------------- decoders */

static int dec_utf8(nd__decoder_t *d, const unsigned char *in, size_t len, nd__strbuf_t *out)
{
    size_t i = 0;
    int rc;

    /* Well-formed input never grows; only replacements can, and sb_put covers those. */
    if ((rc = nd__strbuf_reserve(out, len + d->npartial)) < 0)
        return rc;

    if (d->npartial) {
        /* Finish the held-back character from the front of this chunk. */
        unsigned char tmp[4];
        size_t np = d->npartial;
        size_t take = 4 - np < len ? 4 - np : len;
        memcpy(tmp, d->partial, np);
        memcpy(tmp + np, in, take);
        int r = utf8_seq(tmp, np + take);
        if (r == 0) {
            /* Still short, which means the whole chunk was swallowed. */
            memcpy(d->partial + np, in, take);
            d->npartial = (unsigned)(np + take);
            return 0;
        }
        d->npartial = 0;
        if (r > 0) {
            if ((rc = sb_put(out, tmp, (size_t)r)) < 0)
                return rc;
            i = (size_t)r - np;
        } else {
            if ((rc = sb_put(out, replacement, 3)) < 0)
                return rc;
            /* The held bytes were a valid prefix, so the bad byte lies in this chunk at
             * or after its start; it gets re-examined as a fresh lead. */
            i = (size_t)(-r) - np;
        }
    }

    size_t span = i; /* start of the well-formed run not yet copied */
    while (i < len) {
        i += ascii_run(in + i, len - i);
        if (i == len)
            break;
        int r = utf8_seq(in + i, len - i);
        if (r > 0) {
            i += (size_t)r;
            continue;
        }
        if ((rc = sb_put(out, in + span, i - span)) < 0)
            return rc;
        if (r == 0) {
            memcpy(d->partial, in + i, len - i);
            d->npartial = (unsigned)(len - i);
            return 0;
        }
        if ((rc = sb_put(out, replacement, 3)) < 0)
            return rc;
        i += (size_t)(-r);
        span = i;
    }
    return sb_put(out, in + span, len - span);
}

static int dec_utf16le(nd__decoder_t *d, const unsigned char *in, size_t len, nd__strbuf_t *out)
{
    /* Every 16-bit unit yields at most 3 bytes: a BMP char, a U+FFFD for a stray
     * surrogate, or half of a pair's 4. */
    size_t bound;
    int rc;
    if (!mul_ok((d->npartial + len) / 2, 3, &bound))
        return -ENOMEM;
    if ((rc = nd__strbuf_reserve(out, bound)) < 0)
        return rc;
    unsigned char *o = (unsigned char *)out->ptr + out->len;

    /* Held state is [high surrogate, 2 bytes][odd byte]; either part may be absent. */
    unsigned high = 0; /* never a valid surrogate value, so 0 means none */
    int have_odd = 0;
    unsigned char odd = 0;
    if (d->npartial >= 2)
        high = d->partial[0] | ((unsigned)d->partial[1] << 8);
    if (d->npartial & 1) {
        have_odd = 1;
        odd = d->partial[d->npartial - 1];
    }

    size_t i = 0;
    for (;;) {
        unsigned u;
        if (have_odd) {
            if (i >= len)
                break;
            u = odd | ((unsigned)in[i] << 8);
            i++;
            have_odd = 0;
        } else {
            if (len - i < 2)
                break;
            u = in[i] | ((unsigned)in[i + 1] << 8);
            i += 2;
        }
        if (high) {
            if (u >= 0xDC00 && u <= 0xDFFF) {
                o += utf8_put(o, 0x10000 + ((high - 0xD800) << 10) + (u - 0xDC00));
                high = 0;
                continue;
            }
            /* A JS string would keep the lone surrogate; UTF-8 cannot, so it becomes
             * U+FFFD exactly as it would when Node writes that string out. */
            memcpy(o, replacement, 3);
            o += 3;
            high = 0;
        }
        if (u >= 0xD800 && u <= 0xDBFF)
            high = u;
        else if (u >= 0xDC00 && u <= 0xDFFF)
            o += utf8_put(o, 0xFFFD);
        else
            o += utf8_put(o, u);
    }
    out->len = (size_t)((char *)o - out->ptr);

    unsigned n = 0;
    if (high) {
        d->partial[n++] = (unsigned char)(high & 0xFF);
        d->partial[n++] = (unsigned char)(high >> 8);
    }
    if (have_odd)
        d->partial[n++] = odd;
    else if (i < len)
        d->partial[n++] = in[i];
    d->npartial = n;
    return 0;
}

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static inline void b64_group(char *o, const unsigned char *s)
{
    o[0] = b64_std[s[0] >> 2];
    o[1] = b64_std[((s[0] & 0x03) << 4) | (s[1] >> 4)];
    o[2] = b64_std[((s[1] & 0x0F) << 2) | (s[2] >> 6)];
    o[3] = b64_std[s[2] & 0x3F];
}

static int dec_base64(nd__decoder_t *d, const unsigned char *in, size_t len, nd__strbuf_t *out)
{
    size_t bound;
    int rc;
    if (!mul_ok((d->npartial + len) / 3, 4, &bound))
        return -ENOMEM;
    if ((rc = nd__strbuf_reserve(out, bound)) < 0)
        return rc;
    char *o = out->ptr + out->len;
    size_t i = 0;

    if (d->npartial) {
        while (d->npartial < 3 && i < len)
            d->partial[d->npartial++] = in[i++];
        if (d->npartial < 3)
            return 0;
        b64_group(o, d->partial);
        o += 4;
        d->npartial = 0;
    }
    for (; len - i >= 3; i += 3, o += 4)
        b64_group(o, in + i);
    while (i < len)
        d->partial[d->npartial++] = in[i++];
    out->len = (size_t)(o - out->ptr);
    return 0;
}

static int dec_hex(const unsigned char *in, size_t len, nd__strbuf_t *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t bound;
    int rc;
    if (!mul_ok(len, 2, &bound))
        return -ENOMEM;
    if ((rc = nd__strbuf_reserve(out, bound)) < 0)
        return rc;
    char *o = out->ptr + out->len;
    for (size_t i = 0; i < len; i++) {
        *o++ = digits[in[i] >> 4];
        *o++ = digits[in[i] & 0x0F];
    }
    out->len += bound;
    return 0;
}

static int dec_ascii(const unsigned char *in, size_t len, nd__strbuf_t *out)
{
    int rc;
    if ((rc = nd__strbuf_reserve(out, len)) < 0)
        return rc;
    char *o = out->ptr + out->len;
    for (size_t i = 0; i < len; i++)
        o[i] = (char)(in[i] & 0x7F);
    out->len += len;
    return 0;
}

static int dec_latin1(const unsigned char *in, size_t len, nd__strbuf_t *out)
{
    size_t bound;
    int rc;
    if (!mul_ok(len, 2, &bound))
        return -ENOMEM;
    if ((rc = nd__strbuf_reserve(out, bound)) < 0)
        return rc;
    unsigned char *o = (unsigned char *)out->ptr + out->len;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = in[i];
        if (c < 0x80) {
            *o++ = c;
        } else {
            *o++ = (unsigned char)(0xC0 | (c >> 6));
            *o++ = (unsigned char)(0x80 | (c & 0x3F));
        }
    }
    out->len = (size_t)((char *)o - out->ptr);
    return 0;
}

void nd__decoder_init(nd__decoder_t *d, nd__encoding_t enc)
{
    memset(d, 0, sizeof(*d));
    d->enc = enc;
}

int nd__decoder_write(nd__decoder_t *d, const unsigned char *in, size_t len, nd__strbuf_t *out)
{
    /* On failure both the decoder and the buffer are put back, so a caller can report
     * ENOMEM and retry (or drop) the chunk without a half-decoded character. */
    nd__decoder_t saved = *d;
    size_t start = out->len;
    int rc = nd__strbuf_reserve(out, 0);
    if (rc < 0)
        return rc;

    if (len > 0) {
        switch (d->enc) {
        case ND_ENC_UTF8:
            rc = dec_utf8(d, in, len, out);
            break;
        case ND_ENC_UTF16LE:
            rc = dec_utf16le(d, in, len, out);
            break;
        case ND_ENC_BASE64:
            rc = dec_base64(d, in, len, out);
            break;
        case ND_ENC_HEX:
            rc = dec_hex(in, len, out);
            break;
        case ND_ENC_ASCII:
            rc = dec_ascii(in, len, out);
            break;
        case ND_ENC_LATIN1:
            rc = dec_latin1(in, len, out);
            break;
        case ND_ENC_NONE:
        default:
            rc = sb_put(out, in, len);
            break;
        }
    }
    if (rc < 0) {
        *d = saved;
        out->len = start;
    }
    out->ptr[out->len] = '\0';
    return rc;
}

int nd__decoder_end(nd__decoder_t *d, nd__strbuf_t *out)
{
    char tail[4];
    size_t n = 0;
    int rc;

    switch (d->enc) {
    case ND_ENC_UTF8:
        /* However many bytes were held, they are one truncated character. */
        if (d->npartial) {
            memcpy(tail, replacement, 3);
            n = 3;
        }
        break;
    case ND_ENC_UTF16LE:
        /* Node drops an odd trailing byte and keeps a lone high surrogate, which in
         * UTF-8 can only be U+FFFD. */
        if (d->npartial >= 2) {
            memcpy(tail, replacement, 3);
            n = 3;
        }
        break;
    case ND_ENC_BASE64:
        if (d->npartial) {
            unsigned char g[3] = {0, 0, 0};
            memcpy(g, d->partial, d->npartial);
            b64_group(tail, g);
            tail[3] = '=';
            if (d->npartial == 1)
                tail[2] = '=';
            n = 4;
        }
        break;
    default:
        break;
    }

    if ((rc = nd__strbuf_reserve(out, n)) < 0)
        return rc;
    memcpy(out->ptr + out->len, tail, n);
    out->len += n;
    out->ptr[out->len] = '\0';
    d->npartial = 0;
    return 0;
}

/* ----------------------------------------------------------------------- encoders */

static int enc_utf16le(const unsigned char *s, size_t len, nd__strbuf_t *out)
{
    /* Each input byte yields at most 2 output bytes (ASCII and replacements are the
     * worst; a 4-byte sequence becomes a 4-byte pair). */
    size_t bound;
    int rc;
    if (!mul_ok(len, 2, &bound))
        return -ENOMEM;
    if ((rc = nd__strbuf_reserve(out, bound)) < 0)
        return rc;
    unsigned char *o = (unsigned char *)out->ptr + out->len;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        int r = utf8_seq(s + i, len - i);
        if (r > 0) {
            cp = utf8_cp(s + i, r);
            i += (size_t)r;
        } else {
            cp = 0xFFFD;
            i = r == 0 ? len : i + (size_t)(-r);
        }
        if (cp >= 0x10000) {
            uint32_t v = cp - 0x10000;
            uint32_t hs = 0xD800 | (v >> 10), ls = 0xDC00 | (v & 0x3FF);
            *o++ = (unsigned char)(hs & 0xFF);
            *o++ = (unsigned char)(hs >> 8);
            *o++ = (unsigned char)(ls & 0xFF);
            *o++ = (unsigned char)(ls >> 8);
        } else {
            *o++ = (unsigned char)(cp & 0xFF);
            *o++ = (unsigned char)(cp >> 8);
        }
    }
    out->len = (size_t)((char *)o - out->ptr);
    return 0;
}

/* ascii and latin1 write the low byte of each UTF-16 code unit (charCodeAt(i) & 0xff), so
 * a character above U+FFFF gives two bytes, one per surrogate, as in Node. */
static int enc_latin1(const unsigned char *s, size_t len, nd__strbuf_t *out)
{
    int rc;
    if ((rc = nd__strbuf_reserve(out, len)) < 0)
        return rc;
    unsigned char *o = (unsigned char *)out->ptr + out->len;
    size_t i = 0;
    while (i < len) {
        size_t run = ascii_run(s + i, len - i);
        memcpy(o, s + i, run);
        o += run;
        i += run;
        if (i == len)
            break;
        uint32_t cp;
        int r = utf8_seq(s + i, len - i);
        if (r > 0) {
            cp = utf8_cp(s + i, r);
            i += (size_t)r;
        } else {
            cp = 0xFFFD;
            i = r == 0 ? len : i + (size_t)(-r);
        }
        if (cp >= 0x10000) {
            uint32_t v = cp - 0x10000;
            *o++ = (unsigned char)((0xD800 | (v >> 10)) & 0xFF);
            *o++ = (unsigned char)((0xDC00 | (v & 0x3FF)) & 0xFF);
        } else {
            *o++ = (unsigned char)(cp & 0xFF);
        }
    }
    out->len = (size_t)((char *)o - out->ptr);
    return 0;
}

static int hex_val(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int enc_hex(const unsigned char *s, size_t len, nd__strbuf_t *out)
{
    int rc;
    if ((rc = nd__strbuf_reserve(out, len / 2)) < 0)
        return rc;
    unsigned char *o = (unsigned char *)out->ptr + out->len;
    /* Node keeps the bytes decoded before the first bad pair and drops an odd last
     * digit rather than failing the whole write. */
    for (size_t i = 0; i + 1 < len; i += 2) {
        int hi = hex_val(s[i]), lo = hex_val(s[i + 1]);
        if (hi < 0 || lo < 0)
            break;
        *o++ = (unsigned char)((hi << 4) | lo);
    }
    out->len = (size_t)((char *)o - out->ptr);
    return 0;
}

static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

static int enc_base64(const unsigned char *s, size_t len, nd__strbuf_t *out)
{
    int rc;
    if ((rc = nd__strbuf_reserve(out, len / 4 * 3 + 2)) < 0)
        return rc;
    unsigned char *o = (unsigned char *)out->ptr + out->len;
    uint32_t acc = 0;
    unsigned nbits = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '=')
            break;
        int v = b64_val(s[i]);
        /* Node's decoder skips every character outside both alphabets, not only
         * whitespace, so we do too. */
        if (v < 0)
            continue;
        acc = (acc << 6) | (uint32_t)v;
        nbits += 6;
        if (nbits >= 8) {
            nbits -= 8;
            *o++ = (unsigned char)(acc >> nbits);
            acc &= (1u << nbits) - 1;
        }
    }
    /* Leftover bits (fewer than 8) are the zero padding of the last group: dropped. */
    out->len = (size_t)((char *)o - out->ptr);
    return 0;
}

int nd__encode(nd__encoding_t enc, const char *str, size_t len, nd__strbuf_t *out)
{
    const unsigned char *s = (const unsigned char *)str;
    int rc = nd__strbuf_reserve(out, 0);
    if (rc < 0)
        return rc;

    /* Each encoder reserves its worst case up front, so a failure leaves out as it was. */
    if (len > 0) {
        switch (enc) {
        case ND_ENC_UTF16LE:
            rc = enc_utf16le(s, len, out);
            break;
        case ND_ENC_HEX:
            rc = enc_hex(s, len, out);
            break;
        case ND_ENC_BASE64:
            rc = enc_base64(s, len, out);
            break;
        case ND_ENC_ASCII:
        case ND_ENC_LATIN1:
            rc = enc_latin1(s, len, out);
            break;
        case ND_ENC_UTF8:
        case ND_ENC_NONE:
        default:
            rc = sb_put(out, s, len);
            break;
        }
    }
    out->ptr[out->len] = '\0';
    return rc;
}
