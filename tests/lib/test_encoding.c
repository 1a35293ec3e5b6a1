/* SPDX-License-Identifier: MIT */
/*
 * Encodings: the streaming decoder behind setEncoding() (utf8, utf16le, base64, hex, ascii,
 * latin1), the encoders behind write(string, encoding), names, and the string buffer.
 */

/* The shared libnetd hides nd__ symbols, so the unit under test is compiled in here.
 * realloc is routed through a switch first so a test can fail one allocation midway. */
#include <stdlib.h>
static void *test_realloc(void *p, size_t n);
#define realloc test_realloc
#include "../../src/lib/encoding.c"
#undef realloc

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"

static int realloc_fail; /* nonzero: the next reallocs fail */

static void *test_realloc(void *p, size_t n)
{
    if (realloc_fail)
        return NULL;
    return realloc(p, n);
}

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))
#define FFFD "\xEF\xBF\xBD"

/* ------------------------------------------------------------------------ helpers */

/* Hex dump for failure messages; two rotating buffers so one message can show two. */
static const char *hexs(const void *p, size_t n)
{
    static char bufs[2][1024];
    static int which;
    char *b = bufs[which ^= 1];
    size_t k = 0;
    const unsigned char *s = p;
    for (size_t i = 0; i < n && k + 4 < sizeof(bufs[0]); i++)
        k += (size_t)snprintf(b + k, sizeof(bufs[0]) - k, "%02x", s[i]);
    if (n * 2 + 1 > sizeof(bufs[0]))
        snprintf(b + k, sizeof(bufs[0]) - k, "...");
    if (n == 0)
        b[0] = '\0';
    return b;
}

/* Every successful call must leave the buffer NUL-terminated. */
static void assert_nul(const nd__strbuf_t *b, const char *what)
{
    ck_assert_msg(b->ptr != NULL, "%s: buffer is NULL", what);
    ck_assert_msg(b->cap > b->len, "%s: cap %zu <= len %zu", what, b->cap, b->len);
    ck_assert_msg(b->ptr[b->len] == '\0', "%s: no NUL after %zu bytes", what, b->len);
}

static void assert_bytes(const nd__strbuf_t *b, const void *want, size_t n, const char *what)
{
    assert_nul(b, what);
    ck_assert_msg(b->len == n && memcmp(b->ptr, want, n) == 0, "%s: got [%s] want [%s]", what,
                  hexs(b->ptr, b->len), hexs(want, n));
}

/* xorshift32: reproducible chunk sizes, so a failure names a seed that replays it. */
static uint32_t rng_next(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* Decodes in[0..n) in one write plus end(), into a fresh buffer. */
static void decode_whole(nd__encoding_t enc, const void *in, size_t n, nd__strbuf_t *out)
{
    nd__decoder_t d;
    nd__decoder_init(&d, enc);
    ck_assert_int_eq(nd__decoder_write(&d, in, n, out), 0);
    ck_assert_int_eq(nd__decoder_end(&d, out), 0);
}

/* The same, one byte per write. */
static void decode_bytewise(nd__encoding_t enc, const void *in, size_t n, nd__strbuf_t *out)
{
    nd__decoder_t d;
    nd__decoder_init(&d, enc);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)in + i, 1, out), 0);
    ck_assert_int_eq(nd__decoder_end(&d, out), 0);
}

/* ------------------------------------------------------------------------- names */

START_TEST(test_parse_names)
{
    static const struct {
        const char *name;
        int want;
    } rows[] = {
        {"utf8", ND_ENC_UTF8},
        {"utf-8", ND_ENC_UTF8},
        {"UTF8", ND_ENC_UTF8},
        {"UTF-8", ND_ENC_UTF8},
        {"Utf-8", ND_ENC_UTF8},
        {"utf16le", ND_ENC_UTF16LE},
        {"utf-16le", ND_ENC_UTF16LE},
        {"UTF-16LE", ND_ENC_UTF16LE},
        {"ucs2", ND_ENC_UTF16LE},
        {"ucs-2", ND_ENC_UTF16LE},
        {"UCS2", ND_ENC_UTF16LE},
        {"hex", ND_ENC_HEX},
        {"HEX", ND_ENC_HEX},
        {"base64", ND_ENC_BASE64},
        {"Base64", ND_ENC_BASE64},
        {"ascii", ND_ENC_ASCII},
        {"ASCII", ND_ENC_ASCII},
        {"latin1", ND_ENC_LATIN1},
        {"LATIN1", ND_ENC_LATIN1},
        {"binary", ND_ENC_LATIN1},
        {"BINARY", ND_ENC_LATIN1},
        {"", ND_ENC_UTF8}, /* Node: an empty encoding is the default one */
        {"utf9", ND_EENCODING},
        {"utf16", ND_EENCODING},
        {"utf-16", ND_EENCODING},
        {"ucs", ND_EENCODING},
        {"latin", ND_EENCODING},
        {"latin-1", ND_EENCODING},
        {"raw", ND_EENCODING},
        {"buffer", ND_EENCODING},
        {"base-64", ND_EENCODING},
        {"base64url", ND_EENCODING},
        {"hex ", ND_EENCODING},
        {" hex", ND_EENCODING},
        {"utf8\n", ND_EENCODING},
        {"utf_8", ND_EENCODING},
        {"asciii", ND_EENCODING},
    };
    for (size_t i = 0; i < N_ELEMS(rows); i++)
        ck_assert_msg(nd__encoding_parse(rows[i].name) == rows[i].want,
                      "parse(\"%s\") = %d, want %d", rows[i].name, nd__encoding_parse(rows[i].name),
                      rows[i].want);
    ck_assert_int_eq(nd__encoding_parse(NULL), ND_ENC_UTF8);
    ck_assert_int_lt(ND_EENCODING, 0);
}
END_TEST

/* ------------------------------------------------------------------------ strbuf */

START_TEST(test_strbuf)
{
    nd__strbuf_t b = {0};
    ck_assert_int_eq(nd__strbuf_reserve(&b, 0), 0);
    assert_bytes(&b, "", 0, "reserve(0) on empty");

    ck_assert_int_eq(nd__strbuf_reserve(&b, 1000), 0);
    ck_assert_uint_ge(b.cap, 1001);
    memset(b.ptr, 'x', 1000);
    b.len = 1000;
    b.ptr[1000] = '\0';
    char *before = b.ptr;
    size_t cap = b.cap;
    ck_assert_int_eq(nd__strbuf_reserve(&b, cap - 1001), 0);
    ck_assert_ptr_eq(b.ptr, before); /* fits: no reallocation */

    /* A request that cannot be sized fails cleanly and leaves the contents alone. */
    ck_assert_int_eq(nd__strbuf_reserve(&b, SIZE_MAX), -ENOMEM);
    ck_assert_int_eq(nd__strbuf_reserve(&b, SIZE_MAX - b.len), -ENOMEM);
    ck_assert_uint_eq(b.len, 1000);
    ck_assert_ptr_eq(b.ptr, before);

    nd__strbuf_free(&b);
    ck_assert_ptr_null(b.ptr);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_uint_eq(b.cap, 0);
    nd__strbuf_free(&b); /* twice is harmless */
}
END_TEST

/* Zero-length writes and end() on an untouched buffer still produce a C string. */
START_TEST(test_empty_calls)
{
    static const nd__encoding_t encs[] = {ND_ENC_NONE,   ND_ENC_UTF8,  ND_ENC_UTF16LE, ND_ENC_HEX,
                                          ND_ENC_BASE64, ND_ENC_ASCII, ND_ENC_LATIN1};
    for (size_t i = 0; i < N_ELEMS(encs); i++) {
        nd__strbuf_t b = {0};
        nd__decoder_t d;
        nd__decoder_init(&d, encs[i]);
        ck_assert_int_eq(nd__decoder_write(&d, NULL, 0, &b), 0);
        assert_bytes(&b, "", 0, "decoder_write(len 0)");
        nd__strbuf_free(&b);
        ck_assert_int_eq(nd__decoder_end(&d, &b), 0);
        assert_bytes(&b, "", 0, "decoder_end with nothing held");
        nd__strbuf_free(&b);
        ck_assert_int_eq(nd__encode(encs[i], "", 0, &b), 0);
        assert_bytes(&b, "", 0, "encode(len 0)");
        nd__strbuf_free(&b);
    }
}
END_TEST

/* ------------------------------------------------------------------------- utf8 */

/* 40960 x U+3042 in chunks of random size, a quarter of them single bytes; the seed of
 * iteration 0 uses single bytes only. After every write the output must be whole
 * characters and a prefix of the text; nothing may be lost or added. */
START_TEST(test_utf8_big_random_chunks)
{
    enum { NCHARS = 40960, NBYTES = NCHARS * 3 };
    unsigned char *text = malloc(NBYTES);
    ck_assert_ptr_nonnull(text);
    for (size_t i = 0; i < NBYTES; i += 3)
        memcpy(text + i, "\xE3\x81\x82", 3);

    uint32_t seed = 0x9E3779B9u + (uint32_t)_i * 7919u;
    uint32_t s = seed;
    nd__decoder_t d;
    nd__decoder_init(&d, ND_ENC_UTF8);
    nd__strbuf_t out = {0};
    size_t pos = 0, nwrites = 0, checked = 0;
    while (pos < NBYTES) {
        size_t n;
        uint32_t r = rng_next(&s);
        if (_i == 0 || r % 4 == 0)
            n = 1;
        else if (r % 4 == 1)
            n = 2 + (r >> 8) % 4;
        else
            n = 1 + (r >> 8) % 5000;
        if (n > NBYTES - pos)
            n = NBYTES - pos;
        ck_assert_int_eq(nd__decoder_write(&d, text + pos, n, &out), 0);
        pos += n;
        nwrites++;
        assert_nul(&out, "utf8 chunk");
        ck_assert_msg(out.len % 3 == 0, "seed %u write %zu: split character (len %zu)", seed,
                      nwrites, out.len);
        ck_assert_msg(out.len + d.npartial == pos, "seed %u write %zu: %zu out + %u held != %zu",
                      seed, nwrites, out.len, d.npartial, pos);
        /* What came out before was compared then (and all of it at the end): compare what is
         * new, or the 122,880 single-byte writes compare 7 GB and time out under TSan. */
        ck_assert_msg(memcmp(out.ptr + checked, text + checked, out.len - checked) == 0,
                      "seed %u write %zu: output differs", seed, nwrites);
        checked = out.len;
    }
    ck_assert_int_eq(nd__decoder_end(&d, &out), 0);
    ck_assert_uint_eq(out.len, NBYTES);
    ck_assert_msg(memcmp(out.ptr, text, NBYTES) == 0, "seed %u: final text differs", seed);
    assert_nul(&out, "utf8 end");
    nd__strbuf_free(&out);
    free(text);
}
END_TEST

/* "a" U+1F600 "b" cut into three pieces at every pair of positions: the emoji is never
 * split in the output and appears as soon as its last byte has arrived. */
START_TEST(test_utf8_emoji_splits)
{
    static const unsigned char in[] = "a\xF0\x9F\x98\x80"
                                      "b";
    const size_t n = sizeof(in) - 1;
    /* Output length once k input bytes are in. */
    static const size_t visible[] = {0, 1, 1, 1, 1, 5, 6};

    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j++) {
            nd__decoder_t d;
            nd__strbuf_t out = {0};
            nd__decoder_init(&d, ND_ENC_UTF8);
            size_t cuts[3] = {i, j, n}, pos = 0;
            for (int c = 0; c < 3; c++) {
                ck_assert_int_eq(nd__decoder_write(&d, in + pos, cuts[c] - pos, &out), 0);
                pos = cuts[c];
                ck_assert_msg(out.len == visible[pos] && memcmp(out.ptr, in, out.len) == 0,
                              "split %zu/%zu after %zu bytes: got [%s]", i, j, pos,
                              hexs(out.ptr, out.len));
                assert_nul(&out, "emoji split");
            }
            ck_assert_int_eq(nd__decoder_end(&d, &out), 0);
            assert_bytes(&out, in, n, "emoji split end");
            nd__strbuf_free(&out);
        }
    }
}
END_TEST

struct dec_case {
    const char *in;
    size_t inlen;
    const char *want;
    size_t wantlen;
};
#define DC(i, w)                                                                                   \
    {                                                                                              \
        i, sizeof(i) - 1, w, sizeof(w) - 1                                                         \
    }

/* One U+FFFD per maximal ill-formed subpart (Unicode's recommended practice, which V8 and
 * so Node follow). */
static const struct dec_case utf8_cases[] = {
    DC("\xFF", FFFD),
    DC("a\x80"
       "b",
       "a" FFFD "b"),
    DC("\xC0\xAF", FFFD FFFD),                   /* overlong '/' */
    DC("\xC1\xBF", FFFD FFFD),                   /* overlong */
    DC("\xE0\x80\xAF", FFFD FFFD FFFD),          /* overlong 3-byte */
    DC("\xF0\x80\x80\xAF", FFFD FFFD FFFD FFFD), /* overlong 4-byte */
    DC("\xED\xA0\x80", FFFD FFFD FFFD),          /* UTF-16 surrogate D800 */
    DC("\xED\xBF\xBF", FFFD FFFD FFFD),          /* surrogate DFFF */
    DC("\xF4\x90\x80\x80", FFFD FFFD FFFD FFFD), /* above U+10FFFF */
    DC("\xF5\x80", FFFD FFFD),                   /* no such lead */
    DC("\xF8\x88\x80\x80\x80", FFFD FFFD FFFD FFFD FFFD),
    DC("\xFE\xFF", FFFD FFFD),
    DC("\xE3\x81"
       "a",
       FFFD "a"), /* truncated, then ASCII: one replacement */
    DC("\xF0\x9F\x98"
       "a",
       FFFD "a"),
    DC("\xE3\x81\xE3\x81\x82", FFFD "\xE3\x81\x82"), /* truncated, then a full char */
    DC("\xF0\x9F\x98", FFFD),                        /* truncated at end of stream */
    DC("\xC3", FFFD),
    DC("\xE3\x81\x82\xE3", "\xE3\x81\x82" FFFD),
    DC("\xED\x9F\xBF", "\xED\x9F\xBF"),         /* U+D7FF, just below the surrogates */
    DC("\xEE\x80\x80", "\xEE\x80\x80"),         /* U+E000, just above */
    DC("\xF4\x8F\xBF\xBF", "\xF4\x8F\xBF\xBF"), /* U+10FFFF */
    DC("\xEF\xBF\xBD", FFFD),                   /* a real U+FFFD passes through */
    DC("\xC2\x80", "\xC2\x80"),                 /* smallest 2-byte */
    DC("\xE0\xA0\x80", "\xE0\xA0\x80"),         /* smallest 3-byte */
    DC("\xF0\x90\x80\x80", "\xF0\x90\x80\x80"), /* smallest 4-byte */
    DC("x\0y", "x\0y"),                         /* NUL is text like any other */
    DC("\x80\x80\x80\x80\x80\x80\x80\x80\x80", FFFD FFFD FFFD FFFD FFFD FFFD FFFD FFFD FFFD),
    DC("abcdefghijklmnop\xFFqrstuvwxyz0123456789",
       "abcdefghijklmnop" FFFD "qrstuvwxyz0123456789"), /* inside a word-sized ASCII run */
};

/* Each case, decoded whole, byte by byte, and cut once at every position, must give the
 * same text: where the chunks fall never changes what is decoded. */
START_TEST(test_utf8_invalid)
{
    const struct dec_case *c = &utf8_cases[_i];
    char what[64];
    snprintf(what, sizeof(what), "utf8 case %d whole", _i);
    nd__strbuf_t out = {0};
    decode_whole(ND_ENC_UTF8, c->in, c->inlen, &out);
    assert_bytes(&out, c->want, c->wantlen, what);

    out.len = 0;
    snprintf(what, sizeof(what), "utf8 case %d bytewise", _i);
    decode_bytewise(ND_ENC_UTF8, c->in, c->inlen, &out);
    assert_bytes(&out, c->want, c->wantlen, what);

    for (size_t k = 0; k <= c->inlen; k++) {
        nd__decoder_t d;
        nd__decoder_init(&d, ND_ENC_UTF8);
        out.len = 0;
        ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)c->in, k, &out), 0);
        ck_assert_int_eq(
            nd__decoder_write(&d, (const unsigned char *)c->in + k, c->inlen - k, &out), 0);
        ck_assert_int_eq(nd__decoder_end(&d, &out), 0);
        snprintf(what, sizeof(what), "utf8 case %d cut at %zu", _i, k);
        assert_bytes(&out, c->want, c->wantlen, what);
    }
    nd__strbuf_free(&out);
}
END_TEST

/* Only what may still complete is held back: an invalid byte is replaced as soon as it is
 * seen, and end() turns a held prefix into one U+FFFD and resets the decoder. */
START_TEST(test_utf8_hold_and_end)
{
    nd__decoder_t d;
    nd__strbuf_t out = {0};
    nd__decoder_init(&d, ND_ENC_UTF8);

    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"x\xE3\x81", 3, &out), 0);
    assert_bytes(&out, "x", 1, "prefix held");
    ck_assert_uint_eq(d.npartial, 2);
    ck_assert_int_eq(nd__decoder_end(&d, &out), 0);
    assert_bytes(&out, "x" FFFD, 4, "end replaces the held prefix");
    ck_assert_uint_eq(d.npartial, 0);
    ck_assert_int_eq(nd__decoder_end(&d, &out), 0);
    assert_bytes(&out, "x" FFFD, 4, "second end adds nothing");

    out.len = 0;
    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"\x82", 1, &out), 0);
    assert_bytes(&out, FFFD, 3, "after end the decoder starts afresh");

    out.len = 0;
    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"\xE0\x80", 2, &out), 0);
    assert_bytes(&out, FFFD FFFD, 6, "an impossible prefix is not held");
    ck_assert_uint_eq(d.npartial, 0);

    out.len = 0;
    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"\xF0", 1, &out), 0);
    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"\x9F", 1, &out), 0);
    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"\x98", 1, &out), 0);
    assert_bytes(&out, "", 0, "three of four bytes held");
    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"\x41", 1, &out), 0);
    assert_bytes(&out, FFFD "A", 4, "broken by ASCII");
    nd__strbuf_free(&out);
}
END_TEST

/* Random byte soup biased towards leads, continuations and boundary values: decoding it
 * whole, bytewise and in random chunks must agree exactly. */
START_TEST(test_utf8_chunking_invariance)
{
    static const unsigned char pool[] = {0x41, 0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0,
                                         0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xED,
                                         0xEF, 0xF0, 0xF1, 0xF4, 0xF5, 0xFF};
    uint32_t s = 0xC0FFEEu;
    unsigned char in[64];
    nd__strbuf_t whole = {0}, bytewise = {0}, chunked = {0};
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = rng_next(&s) % sizeof(in);
        for (size_t i = 0; i < n; i++)
            in[i] = pool[rng_next(&s) % sizeof(pool)];
        whole.len = bytewise.len = chunked.len = 0;
        decode_whole(ND_ENC_UTF8, in, n, &whole);
        decode_bytewise(ND_ENC_UTF8, in, n, &bytewise);

        nd__decoder_t d;
        nd__decoder_init(&d, ND_ENC_UTF8);
        for (size_t pos = 0; pos < n;) {
            size_t k = 1 + rng_next(&s) % 6;
            if (k > n - pos)
                k = n - pos;
            ck_assert_int_eq(nd__decoder_write(&d, in + pos, k, &chunked), 0);
            pos += k;
        }
        ck_assert_int_eq(nd__decoder_end(&d, &chunked), 0);

        ck_assert_msg(bytewise.len == whole.len && !memcmp(bytewise.ptr, whole.ptr, whole.len),
                      "input [%s]: bytewise differs from whole", hexs(in, n));
        ck_assert_msg(chunked.len == whole.len && !memcmp(chunked.ptr, whole.ptr, whole.len),
                      "input [%s]: chunked differs from whole", hexs(in, n));
        /* The output is itself valid UTF-8: decoding it again changes nothing. */
        nd__strbuf_t again = {0};
        decode_whole(ND_ENC_UTF8, whole.ptr, whole.len, &again);
        ck_assert_msg(again.len == whole.len && !memcmp(again.ptr, whole.ptr, whole.len),
                      "input [%s]: output [%s] is not valid UTF-8", hexs(in, n),
                      hexs(whole.ptr, whole.len));
        nd__strbuf_free(&again);
    }
    nd__strbuf_free(&whole);
    nd__strbuf_free(&bytewise);
    nd__strbuf_free(&chunked);
}
END_TEST

/* ---------------------------------------------------------------------- utf16le */

/* "a" U+1F600 "é" as UTF-16LE, cut into three pieces at every pair of positions. */
START_TEST(test_utf16le_splits)
{
    static const unsigned char in[] = {0x61, 0x00, 0x3D, 0xD8, 0x00, 0xDE, 0xE9, 0x00};
    static const char text[] = "a\xF0\x9F\x98\x80\xC3\xA9";
    /* Output length once k input bytes are in: the pair shows only when complete. */
    static const size_t visible[] = {0, 0, 1, 1, 1, 1, 5, 5, 7};
    const size_t n = sizeof(in);

    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j++) {
            nd__decoder_t d;
            nd__strbuf_t out = {0};
            nd__decoder_init(&d, ND_ENC_UTF16LE);
            size_t cuts[3] = {i, j, n}, pos = 0;
            for (int c = 0; c < 3; c++) {
                ck_assert_int_eq(nd__decoder_write(&d, in + pos, cuts[c] - pos, &out), 0);
                pos = cuts[c];
                ck_assert_msg(out.len == visible[pos] && memcmp(out.ptr, text, out.len) == 0,
                              "split %zu/%zu after %zu bytes: got [%s]", i, j, pos,
                              hexs(out.ptr, out.len));
                assert_nul(&out, "utf16le split");
            }
            ck_assert_int_eq(nd__decoder_end(&d, &out), 0);
            assert_bytes(&out, text, sizeof(text) - 1, "utf16le split end");
            nd__strbuf_free(&out);
        }
    }
}
END_TEST

/* Stray surrogates cannot be UTF-8, so each becomes U+FFFD, as when Node writes a string
 * holding one. At the end, a held high surrogate is U+FFFD and an odd byte is dropped
 * (Node's StringDecoder drops it too). */
static const struct dec_case utf16_cases[] = {
    DC("\x00\xDC", FFFD), /* lone low */
    DC("\x3D\xD8"
       "A\x00",
       FFFD "A"),                                            /* high, then not a low */
    DC("\x3D\xD8\x3D\xD8\x00\xDE", FFFD "\xF0\x9F\x98\x80"), /* high, high+low */
    DC("\x00\xDE\x3D\xD8", FFFD FFFD),                       /* low then high at end */
    DC("\x3D\xD8", FFFD),                                    /* high at end of stream */
    DC("A\x00\x42", "A"),                                    /* odd byte at end: dropped */
    DC("\x3D\xD8\x00", FFFD),                                /* high + odd byte at end */
    DC("\xAC\x20", "\xE2\x82\xAC"),                          /* U+20AC */
    DC("\xFF\xDB\xFF\xDF", "\xF4\x8F\xBF\xBF"),              /* U+10FFFF */
    DC("\x00\xD8\x00\xDC", "\xF0\x90\x80\x80"),              /* U+10000 */
    DC("\xFF\xFF", "\xEF\xBF\xBF"),                          /* U+FFFF */
    DC("\x00\x00", "\0"),
    DC("\xE9\x00\x80\x00", "\xC3\xA9\xC2\x80"),
};

START_TEST(test_utf16le_cases)
{
    const struct dec_case *c = &utf16_cases[_i];
    char what[64];
    nd__strbuf_t out = {0};
    snprintf(what, sizeof(what), "utf16le case %d whole", _i);
    decode_whole(ND_ENC_UTF16LE, c->in, c->inlen, &out);
    assert_bytes(&out, c->want, c->wantlen, what);
    out.len = 0;
    snprintf(what, sizeof(what), "utf16le case %d bytewise", _i);
    decode_bytewise(ND_ENC_UTF16LE, c->in, c->inlen, &out);
    assert_bytes(&out, c->want, c->wantlen, what);
    nd__strbuf_free(&out);
}
END_TEST

/* What is emitted after each write while a pair is assembled. */
START_TEST(test_utf16le_hold)
{
    nd__decoder_t d;
    nd__strbuf_t out = {0};
    nd__decoder_init(&d, ND_ENC_UTF16LE);
    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"a\x00\x3D", 3, &out), 0);
    assert_bytes(&out, "a", 1, "odd byte held");
    ck_assert_uint_eq(d.npartial, 1);
    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"\xD8\x00", 2, &out), 0);
    assert_bytes(&out, "a", 1, "high surrogate and odd byte held");
    ck_assert_uint_eq(d.npartial, 3);
    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"\xDE", 1, &out), 0);
    assert_bytes(&out, "a\xF0\x9F\x98\x80", 5, "pair complete");
    ck_assert_uint_eq(d.npartial, 0);
    nd__strbuf_free(&out);
}
END_TEST

/* ----------------------------------------------------------------------- base64 */

/* An independent reference (bit accumulator, not 3-byte groups) to compare against. */
static size_t ref_base64(const unsigned char *in, size_t n, char *out, int pad)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint32_t acc = 0;
    int bits = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[k++] = a[(acc >> bits) & 63];
        }
    }
    if (bits > 0)
        out[k++] = a[(acc << (6 - bits)) & 63];
    while (pad && k % 4)
        out[k++] = '=';
    out[k] = '\0';
    return k;
}

START_TEST(test_base64_vectors)
{
    /* RFC 4648 section 10, through the reference and through the decoder. */
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const coded[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                        "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    char ref[16];
    for (size_t i = 0; i < N_ELEMS(plain); i++) {
        size_t n = strlen(plain[i]);
        ref_base64((const unsigned char *)plain[i], n, ref, 1);
        ck_assert_str_eq(ref, coded[i]);
        nd__strbuf_t out = {0};
        decode_whole(ND_ENC_BASE64, plain[i], n, &out);
        assert_bytes(&out, coded[i], strlen(coded[i]), plain[i]);
        out.len = 0;
        decode_bytewise(ND_ENC_BASE64, plain[i], n, &out);
        assert_bytes(&out, coded[i], strlen(coded[i]), plain[i]);
        nd__strbuf_free(&out);
    }
}
END_TEST

/* "foobar" a byte at a time: output appears only per complete group, unpadded. */
START_TEST(test_base64_holds_back)
{
    static const char *const after[] = {"", "", "Zm9v", "Zm9v", "Zm9v", "Zm9vYmFy"};
    nd__decoder_t d;
    nd__strbuf_t out = {0};
    nd__decoder_init(&d, ND_ENC_BASE64);
    for (size_t i = 0; i < 6; i++) {
        ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"foobar" + i, 1, &out), 0);
        assert_bytes(&out, after[i], strlen(after[i]), after[i]);
        ck_assert_uint_eq(d.npartial, (i + 1) % 3);
    }
    ck_assert_int_eq(nd__decoder_end(&d, &out), 0);
    assert_bytes(&out, "Zm9vYmFy", 8, "nothing held at end");

    out.len = 0;
    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"foob", 4, &out), 0);
    assert_bytes(&out, "Zm9v", 4, "foob");
    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"a", 1, &out), 0);
    assert_bytes(&out, "Zm9v", 4, "fooba");
    ck_assert_int_eq(nd__decoder_end(&d, &out), 0);
    assert_bytes(&out, "Zm9vYmE=", 8, "fooba end pads");
    nd__strbuf_free(&out);
}
END_TEST

/* Random data in random chunks: after each chunk the output is the encoding of every
 * complete group so far; after end() it is the padded encoding of everything. */
START_TEST(test_base64_streaming)
{
    uint32_t s = 0xBA5E64u;
    unsigned char in[200];
    char ref[300];
    for (int iter = 0; iter < 500; iter++) {
        size_t n = rng_next(&s) % sizeof(in);
        for (size_t i = 0; i < n; i++)
            in[i] = (unsigned char)rng_next(&s);
        nd__decoder_t d;
        nd__strbuf_t out = {0};
        nd__decoder_init(&d, ND_ENC_BASE64);
        for (size_t pos = 0; pos < n;) {
            size_t k = 1 + rng_next(&s) % 8;
            if (k > n - pos)
                k = n - pos;
            ck_assert_int_eq(nd__decoder_write(&d, in + pos, k, &out), 0);
            pos += k;
            size_t m = ref_base64(in, pos / 3 * 3, ref, 0);
            ck_assert_msg(out.len == m && memcmp(out.ptr, ref, m) == 0,
                          "iter %d after %zu bytes: got \"%s\" want \"%s\"", iter, pos, out.ptr,
                          ref);
            assert_nul(&out, "base64 chunk");
        }
        ck_assert_int_eq(nd__decoder_end(&d, &out), 0);
        size_t m = ref_base64(in, n, ref, 1);
        ck_assert_msg(out.len == m && memcmp(out.ptr, ref, m) == 0,
                      "iter %d end: got \"%s\" want \"%s\"", iter, out.ptr, ref);
        nd__strbuf_free(&out);
    }
}
END_TEST

/* ------------------------------------------------------------ hex, ascii, latin1 */

START_TEST(test_hex_decode)
{
    static const unsigned char in[] = {0x00, 0x0F, 0xAB, 0xFF, 0x10, 0x9C};
    nd__strbuf_t out = {0};
    decode_whole(ND_ENC_HEX, in, sizeof(in), &out);
    assert_bytes(&out, "000fabff109c", 12, "hex whole");
    out.len = 0;
    decode_bytewise(ND_ENC_HEX, in, sizeof(in), &out);
    assert_bytes(&out, "000fabff109c", 12, "hex bytewise");
    nd__strbuf_free(&out);
}
END_TEST

/* v0.10's ascii decoding keeps the low 7 bits, so 0x80 becomes NUL. */
START_TEST(test_ascii_decode)
{
    static const unsigned char in[] = {0x41, 0xC1, 0xFF, 0x80, 0x7F, 0x0A};
    static const char want[] = {'A', 'A', 0x7F, 0x00, 0x7F, '\n'};
    nd__strbuf_t out = {0};
    decode_whole(ND_ENC_ASCII, in, sizeof(in), &out);
    assert_bytes(&out, want, sizeof(want), "ascii whole");
    out.len = 0;
    decode_bytewise(ND_ENC_ASCII, in, sizeof(in), &out);
    assert_bytes(&out, want, sizeof(want), "ascii bytewise");
    nd__strbuf_free(&out);
}
END_TEST

START_TEST(test_latin1_roundtrip)
{
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;

    nd__strbuf_t text = {0}, text2 = {0}, bytes = {0};
    nd__decoder_t d;
    nd__decoder_init(&d, (nd__encoding_t)nd__encoding_parse("latin1"));
    ck_assert_int_eq(nd__decoder_write(&d, all, 100, &text), 0);
    ck_assert_int_eq(nd__decoder_write(&d, all + 100, 156, &text), 0);
    ck_assert_int_eq(nd__decoder_end(&d, &text), 0);
    assert_nul(&text, "latin1 text");
    ck_assert_uint_eq(text.len, 128 + 2 * 128);
    ck_assert_mem_eq(text.ptr + 0x41, "A", 1);
    ck_assert_mem_eq(text.ptr + 128 + 2 * (0xE9 - 0x80), "\xC3\xA9", 2);
    ck_assert_mem_eq(text.ptr + text.len - 2, "\xC3\xBF", 2);

    decode_bytewise(ND_ENC_LATIN1, all, 256, &text2);
    assert_bytes(&text2, text.ptr, text.len, "latin1 bytewise");

    /* The text is valid UTF-8: the utf8 decoder passes it through untouched. */
    text2.len = 0;
    decode_whole(ND_ENC_UTF8, text.ptr, text.len, &text2);
    assert_bytes(&text2, text.ptr, text.len, "latin1 text as utf8");

    ck_assert_int_eq(nd__encode(ND_ENC_LATIN1, text.ptr, text.len, &bytes), 0);
    assert_bytes(&bytes, all, 256, "latin1 encode of the text");
    bytes.len = 0;
    ck_assert_int_eq(
        nd__encode((nd__encoding_t)nd__encoding_parse("binary"), text.ptr, text.len, &bytes), 0);
    assert_bytes(&bytes, all, 256, "binary encode of the text");
    /* v0.10 writes 'ascii' exactly like 'binary': charCode & 0xff. */
    bytes.len = 0;
    ck_assert_int_eq(nd__encode(ND_ENC_ASCII, text.ptr, text.len, &bytes), 0);
    assert_bytes(&bytes, all, 256, "ascii encode of the text");

    nd__strbuf_free(&text);
    nd__strbuf_free(&text2);
    nd__strbuf_free(&bytes);
}
END_TEST

START_TEST(test_none_passthrough)
{
    static const unsigned char in[] = {0x00, 0xFF, 0xE3, 0x81};
    nd__strbuf_t out = {0};
    decode_whole(ND_ENC_NONE, in, sizeof(in), &out);
    assert_bytes(&out, in, sizeof(in), "no encoding");
    nd__strbuf_free(&out);
}
END_TEST

/* ---------------------------------------------------------------------- encoders */

struct enc_case {
    nd__encoding_t enc;
    const char *in;
    size_t inlen;
    const char *want;
    size_t wantlen;
};
#define EC(e, i, w)                                                                                \
    {                                                                                              \
        e, i, sizeof(i) - 1, w, sizeof(w) - 1                                                      \
    }

static const struct enc_case enc_cases[] = {
    /* hex: pairs in either case; stops at the first bad pair, drops an odd last digit */
    EC(ND_ENC_HEX, "00ff10", "\x00\xFF\x10"),
    EC(ND_ENC_HEX, "0A0b", "\x0A\x0B"),
    EC(ND_ENC_HEX, "DEADbeef", "\xDE\xAD\xBE\xEF"),
    EC(ND_ENC_HEX, "abzz12", "\xAB"),
    EC(ND_ENC_HEX, "ab1z12", "\xAB"),
    EC(ND_ENC_HEX, "abc", "\xAB"),
    EC(ND_ENC_HEX, "zz", ""),
    EC(ND_ENC_HEX, "0g12", ""),
    EC(ND_ENC_HEX, "a", ""),
    EC(ND_ENC_HEX, "ab cd", "\xAB"),
    EC(ND_ENC_HEX, "-1", ""),
    /* base64: both alphabets, anything outside them skipped, '=' ends the input */
    EC(ND_ENC_BASE64, "Zm9vYmFy", "foobar"),
    EC(ND_ENC_BASE64, "Zm9v\nYmFy", "foobar"),
    EC(ND_ENC_BASE64, " Z m 9 v\r\n\tY g = = ", "foob"),
    EC(ND_ENC_BASE64, "Zg==", "f"),
    EC(ND_ENC_BASE64, "Zg", "f"),
    EC(ND_ENC_BASE64, "Zg=", "f"),
    EC(ND_ENC_BASE64, "Zm8=", "fo"),
    EC(ND_ENC_BASE64, "Zm8", "fo"),
    EC(ND_ENC_BASE64, "Zg==Zm8=", "f"),
    EC(ND_ENC_BASE64, "Z", ""),
    EC(ND_ENC_BASE64, "=Zm9v", ""),
    EC(ND_ENC_BASE64, "+/+/", "\xFB\xFF\xBF"),
    EC(ND_ENC_BASE64, "-_-_", "\xFB\xFF\xBF"),
    EC(ND_ENC_BASE64, "+_-/", "\xFB\xFF\xBF"),
    EC(ND_ENC_BASE64, "Zm9v$YmFy", "foobar"),
    EC(ND_ENC_BASE64, "AAAA", "\0\0\0"),
    /* utf16le: pairs above U+FFFF, U+FFFD for bytes that are not UTF-8 */
    EC(ND_ENC_UTF16LE, "a\xF0\x9F\x98\x80\xC3\xA9", "a\x00\x3D\xD8\x00\xDE\xE9\x00"),
    EC(ND_ENC_UTF16LE, "\xE2\x82\xAC", "\xAC\x20"),
    EC(ND_ENC_UTF16LE, "\xFF", "\xFD\xFF"),
    EC(ND_ENC_UTF16LE, "\xE3\x81", "\xFD\xFF"),
    EC(ND_ENC_UTF16LE, "\xED\xA0\x80", "\xFD\xFF\xFD\xFF\xFD\xFF"),
    EC(ND_ENC_UTF16LE, "x\0y", "x\0\0\0y\0"),
    /* latin1 / ascii: low byte of each UTF-16 unit, so U+1F600 gives two bytes */
    EC(ND_ENC_LATIN1, "A\xC3\xA9\xE2\x82\xAC", "A\xE9\xAC"),
    EC(ND_ENC_LATIN1, "\xF0\x9F\x98\x80", "\x3D\x00"),
    EC(ND_ENC_LATIN1, "\xFF", "\xFD"),
    EC(ND_ENC_ASCII, "A\xC3\xA9", "A\xE9"),
    EC(ND_ENC_ASCII, "\xE2\x82\xAC", "\xAC"),
    /* utf8: bytes as given, even ill-formed ones */
    EC(ND_ENC_UTF8, "h\xC3\xA9llo", "h\xC3\xA9llo"),
    EC(ND_ENC_UTF8, "\xFF\x00\xFE", "\xFF\x00\xFE"),
};

START_TEST(test_encode_cases)
{
    const struct enc_case *c = &enc_cases[_i];
    char what[96];
    snprintf(what, sizeof(what), "encode case %d (enc %d, \"%s\")", _i, (int)c->enc, c->in);
    nd__strbuf_t out = {0};
    ck_assert_int_eq(nd__encode(c->enc, c->in, c->inlen, &out), 0);
    assert_bytes(&out, c->want, c->wantlen, what);

    /* Encoding appends and never touches what the buffer held before. */
    out.len = 0;
    ck_assert_int_eq(nd__encode(ND_ENC_UTF8, "prefix", 6, &out), 0);
    ck_assert_int_eq(nd__encode(c->enc, c->in, c->inlen, &out), 0);
    assert_nul(&out, what);
    ck_assert_uint_eq(out.len, 6 + c->wantlen);
    ck_assert_mem_eq(out.ptr, "prefix", 6);
    ck_assert_msg(memcmp(out.ptr + 6, c->want, c->wantlen) == 0, "%s: appended differs", what);
    nd__strbuf_free(&out);
}
END_TEST

/* The length bounds the input, not a NUL: a valid character just past it ('0' here) must
 * not complete the last pair or group. A second run from a heap copy of exactly len bytes
 * lets ASan or valgrind see any overread. */
START_TEST(test_encode_respects_len)
{
    static const struct {
        nd__encoding_t enc;
        const char *in;
        size_t len;
        const char *want;
        size_t wantlen;
    } rows[] = {
        {ND_ENC_HEX, "abcd", 3, "\xAB", 1},
        {ND_ENC_HEX, "abcd", 1, "", 0},
        {ND_ENC_BASE64, "Zm9vYmFy", 5, "foo", 3},
        {ND_ENC_BASE64, "Zm9vYmFy", 7, "fooba", 5},
        {ND_ENC_UTF16LE, "\xE3\x81\x82", 2, "\xFD\xFF", 2},
        {ND_ENC_LATIN1, "\xC3\xA9", 1, "\xFD", 1},
        {ND_ENC_UTF8, "abc", 2, "ab", 2},
    };
    for (size_t i = 0; i < N_ELEMS(rows); i++) {
        char what[64];
        snprintf(what, sizeof(what), "encode \"%s\" len %zu", rows[i].in, rows[i].len);
        for (int heap = 0; heap < 2; heap++) {
            char *copy = malloc(rows[i].len + 1);
            ck_assert_ptr_nonnull(copy);
            memcpy(copy, rows[i].in, rows[i].len);
            copy[rows[i].len] = '0';
            if (heap) {
                char *exact = realloc(copy, rows[i].len ? rows[i].len : 1);
                ck_assert_ptr_nonnull(exact);
                copy = exact;
            }
            nd__strbuf_t out = {0};
            ck_assert_int_eq(nd__encode(rows[i].enc, copy, rows[i].len, &out), 0);
            assert_bytes(&out, rows[i].want, rows[i].wantlen, what);
            nd__strbuf_free(&out);
            free(copy);
        }
    }
}
END_TEST

/* Text encoded with an encoding and decoded with the same one comes back unchanged. */
START_TEST(test_encode_decode_roundtrip)
{
    static const char text[] = "plain ASCII, caf\xC3\xA9, \xE2\x82\xAC, \xF0\x9F\x98\x80 end";
    static const nd__encoding_t encs[] = {ND_ENC_UTF8, ND_ENC_UTF16LE};
    for (size_t i = 0; i < N_ELEMS(encs); i++) {
        nd__strbuf_t bytes = {0}, back = {0};
        ck_assert_int_eq(nd__encode(encs[i], text, sizeof(text) - 1, &bytes), 0);
        decode_bytewise(encs[i], bytes.ptr, bytes.len, &back);
        assert_bytes(&back, text, sizeof(text) - 1, "roundtrip");
        nd__strbuf_free(&bytes);
        nd__strbuf_free(&back);
    }
    /* bytes -> hex/base64 text -> bytes */
    unsigned char raw[97];
    for (size_t i = 0; i < sizeof(raw); i++)
        raw[i] = (unsigned char)(i * 37 + 11);
    static const nd__encoding_t text_encs[] = {ND_ENC_HEX, ND_ENC_BASE64};
    for (size_t i = 0; i < N_ELEMS(text_encs); i++) {
        nd__strbuf_t coded = {0}, back = {0};
        decode_bytewise(text_encs[i], raw, sizeof(raw), &coded);
        ck_assert_int_eq(nd__encode(text_encs[i], coded.ptr, coded.len, &back), 0);
        assert_bytes(&back, raw, sizeof(raw), "bytes roundtrip");
        nd__strbuf_free(&coded);
        nd__strbuf_free(&back);
    }
}
END_TEST

/* ------------------------------------------------------------------------ ENOMEM */

/* A failed write leaves the buffer and the decoder exactly as they were, so retrying the
 * same chunk later gives the output an uninterrupted stream would have. The invalid bytes
 * make the output outgrow the up-front reservation, so the failure strikes midway. */
START_TEST(test_enomem_rolls_back)
{
    unsigned char chunk[40];
    memset(chunk, 0xFF, sizeof(chunk));
    memcpy(chunk, "\x82ok", 3); /* completes the held prefix first */

    nd__decoder_t d;
    nd__strbuf_t out = {0};
    nd__decoder_init(&d, ND_ENC_UTF8);
    ck_assert_int_eq(nd__decoder_write(&d, (const unsigned char *)"xy\xE3\x81", 4, &out), 0);
    assert_bytes(&out, "xy", 2, "before");
    ck_assert_uint_lt(out.cap, 3 * sizeof(chunk)); /* so the write has to grow it */

    nd__decoder_t saved = d;
    char *ptr = out.ptr;
    size_t cap = out.cap;
    realloc_fail = 1;
    int rc = nd__decoder_write(&d, chunk, sizeof(chunk), &out);
    realloc_fail = 0;
    ck_assert_int_eq(rc, -ENOMEM);
    assert_bytes(&out, "xy", 2, "after the failed write");
    ck_assert_ptr_eq(out.ptr, ptr);
    ck_assert_uint_eq(out.cap, cap);
    ck_assert_mem_eq(&d, &saved, sizeof(d));

    ck_assert_int_eq(nd__decoder_write(&d, chunk, sizeof(chunk), &out), 0);
    ck_assert_uint_eq(out.len, 2 + 3 + 2 + 3 * (sizeof(chunk) - 3));
    ck_assert_mem_eq(out.ptr, "xy\xE3\x81\x82ok" FFFD, 10);

    /* Encoders reserve their worst case first: a failure changes nothing. */
    size_t len = out.len;
    realloc_fail = 1;
    rc = nd__encode(ND_ENC_UTF16LE, (const char *)chunk, sizeof(chunk), &out);
    realloc_fail = 0;
    ck_assert_int_eq(rc, -ENOMEM);
    ck_assert_uint_eq(out.len, len);
    assert_nul(&out, "after the failed encode");

    /* And a buffer that was never allocated reports ENOMEM rather than crashing. */
    nd__strbuf_t empty = {0};
    realloc_fail = 1;
    ck_assert_int_eq(nd__decoder_write(&d, chunk, 1, &empty), -ENOMEM);
    ck_assert_int_eq(nd__decoder_end(&d, &empty), -ENOMEM);
    ck_assert_int_eq(nd__encode(ND_ENC_HEX, "00", 2, &empty), -ENOMEM);
    realloc_fail = 0;
    ck_assert_ptr_null(empty.ptr);
    nd__strbuf_free(&out);
}
END_TEST

/* ------------------------------------------------------------------------- suite */

static Suite *encoding_suite(void)
{
    Suite *s = suite_create("encoding");
    TCase *tc;

    tc = th_tcase(s, "names", 30);
    tcase_add_test(tc, test_parse_names);
    tcase_add_test(tc, test_strbuf);
    tcase_add_test(tc, test_empty_calls);

    tc = th_tcase(s, "utf8", 30);
    tcase_add_loop_test(tc, test_utf8_big_random_chunks, 0, 4);
    tcase_add_test(tc, test_utf8_emoji_splits);
    tcase_add_loop_test(tc, test_utf8_invalid, 0, (int)N_ELEMS(utf8_cases));
    tcase_add_test(tc, test_utf8_hold_and_end);
    tcase_add_test(tc, test_utf8_chunking_invariance);

    tc = th_tcase(s, "utf16le", 30);
    tcase_add_test(tc, test_utf16le_splits);
    tcase_add_loop_test(tc, test_utf16le_cases, 0, (int)N_ELEMS(utf16_cases));
    tcase_add_test(tc, test_utf16le_hold);

    tc = th_tcase(s, "base64", 30);
    tcase_add_test(tc, test_base64_vectors);
    tcase_add_test(tc, test_base64_holds_back);
    tcase_add_test(tc, test_base64_streaming);

    tc = th_tcase(s, "bytes", 30);
    tcase_add_test(tc, test_hex_decode);
    tcase_add_test(tc, test_ascii_decode);
    tcase_add_test(tc, test_latin1_roundtrip);
    tcase_add_test(tc, test_none_passthrough);

    tc = th_tcase(s, "encode", 30);
    tcase_add_loop_test(tc, test_encode_cases, 0, (int)N_ELEMS(enc_cases));
    tcase_add_test(tc, test_encode_respects_len);
    tcase_add_test(tc, test_encode_decode_roundtrip);

    tc = th_tcase(s, "enomem", 30);
    tcase_add_test(tc, test_enomem_rolls_back);
    return s;
}

int main(void)
{
    return th_run_suite(encoding_suite());
}
