/* SPDX-License-Identifier: MIT */
/*
 * String encodings of the library (Node's Buffer encodings) and the streaming decoder
 * behind setEncoding(). Strings on the C side are UTF-8; bytes are bytes.
 */
#ifndef ND_ENCODING_H
#define ND_ENCODING_H

#include <stddef.h>

typedef enum nd__encoding {
    ND_ENC_NONE = 0, /* bytes, no decoding */
    ND_ENC_UTF8,
    ND_ENC_UTF16LE, /* also "ucs2" */
    ND_ENC_HEX,
    ND_ENC_BASE64,
    ND_ENC_ASCII,
    ND_ENC_LATIN1 /* also "binary" */
} nd__encoding_t;

/* A growable byte buffer, reused across calls so steady state allocates nothing. */
typedef struct nd__strbuf {
    char *ptr;
    size_t len;
    size_t cap;
} nd__strbuf_t;

/* Makes room for `extra` more bytes (plus a NUL). Returns 0 or -ENOMEM. */
int nd__strbuf_reserve(nd__strbuf_t *b, size_t extra);
void nd__strbuf_free(nd__strbuf_t *b);

/* Name to encoding, case-insensitive: utf8 utf-8 utf16le utf-16le ucs2 ucs-2 hex base64
 * ascii latin1 binary. NULL gives ND_ENC_UTF8. Unknown names give ND_EENCODING (< 0). */
int nd__encoding_parse(const char *name);

/*
 * Streaming decoder (Node's StringDecoder): bytes in, UTF-8 text out.
 * - utf8: passes valid sequences through, holds back an incomplete trailing sequence
 *   for the next call, and replaces invalid bytes with U+FFFD (EF BF BD).
 * - utf16le: holds back an odd byte and a lone high surrogate; emits UTF-8.
 * - base64: holds back 1-2 bytes so only complete 3-byte groups are encoded
 *   (with no padding except at end).
 * - hex: two lowercase hex digits per byte; nothing held back.
 * - ascii: each byte & 0x7f (v0.10's ascii).
 * - latin1: each byte is the code point 0-255, emitted as UTF-8.
 */
typedef struct nd__decoder {
    nd__encoding_t enc;
    unsigned char partial[4];
    unsigned npartial;
} nd__decoder_t;

void nd__decoder_init(nd__decoder_t *d, nd__encoding_t enc);

/* Appends the text decoded from in[0..len) to out (which keeps a NUL after the text).
 * Returns 0 or -ENOMEM. */
int nd__decoder_write(nd__decoder_t *d, const unsigned char *in, size_t len, nd__strbuf_t *out);

/* At end of stream: appends what is held back (utf8/utf16le: U+FFFD for an incomplete
 * character; base64: the last group with '=' padding) and resets. Returns 0 or -ENOMEM. */
int nd__decoder_end(nd__decoder_t *d, nd__strbuf_t *out);

/*
 * Encodes a UTF-8 string of `len` bytes into bytes in `enc`, appended to out:
 * - utf8: copied as is.
 * - utf16le: each code point as UTF-16LE (surrogate pairs above U+FFFF); invalid UTF-8
 *   bytes become U+FFFD.
 * - hex: pairs of hex digits (either case) to bytes; stops at the first invalid pair or an
 *   odd trailing digit (Node's behaviour).
 * - base64: decodes standard and URL-safe alphabets, ignores whitespace and stops at '='.
 * - ascii, latin1: each code point's low 8 bits (v0.10: 'binary' takes charCode & 0xff).
 * Returns 0 or -ENOMEM.
 */
int nd__encode(nd__encoding_t enc, const char *str, size_t len, nd__strbuf_t *out);

#endif
