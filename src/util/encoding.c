/*
 * provgate core: encodings (base64url, URL/percent encoding, query strings,
 * decimal integers).
 *
 * Everything here is a pure function over bounded input. Decoders are
 * strict: anything that is not exactly the expected alphabet is refused, so
 * there is one and only one accepted spelling of every value.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "provgate/util.h"

/* Hard cap of pg_urldecode() input (documented in util.h). */
#define PG_URLDECODE_MAX (8u * 1024u)
/* Hard cap of a query string or form body given to pg_query_param(). Larger
 * than the pg_urldecode() cap so that a form post carrying one big value
 * (e.g. a SAMLResponse) can still be read. */
#define PG_QUERY_MAX (512u * 1024u)

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Value of one base64url character, or -1. */
static int
b64url_value(unsigned char c)
{
    /* a table: this decodes every session cookie on the request path */
    static const signed char t[256] = {
        ['A'] = 1, ['B'] = 2, ['C'] = 3, ['D'] = 4, ['E'] = 5, ['F'] = 6,
        ['G'] = 7, ['H'] = 8, ['I'] = 9, ['J'] = 10, ['K'] = 11, ['L'] = 12,
        ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16, ['Q'] = 17,
        ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22,
        ['W'] = 23, ['X'] = 24, ['Y'] = 25, ['Z'] = 26,
        ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30, ['e'] = 31,
        ['f'] = 32, ['g'] = 33, ['h'] = 34, ['i'] = 35, ['j'] = 36,
        ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41,
        ['p'] = 42, ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46,
        ['u'] = 47, ['v'] = 48, ['w'] = 49, ['x'] = 50, ['y'] = 51,
        ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56,
        ['4'] = 57, ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61,
        ['9'] = 62, ['-'] = 63, ['_'] = 64
    };

    /* entries hold value + 1 so that 0 means "not in the alphabet" */
    return t[c] - 1;
}

/* Value of one hex digit (either case), or -1. */
static int
hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/*
 * Length of the unpadded base64url text of n bytes (no NUL). Saturates at
 * SIZE_MAX for absurd n so that callers' "outsz >= len + 1" checks fail
 * instead of wrapping.
 */
size_t
pg_b64url_len(size_t n)
{
    size_t full = n / 3, rem = n % 3;

    if (full > (SIZE_MAX - 4) / 4) {
        return SIZE_MAX - 1;
    }
    return full * 4 + (rem == 0 ? 0 : rem + 1);
}

/*
 * Encode n bytes of in as unpadded base64url into out (NUL-terminated).
 * in may be NULL when n is 0. PG_ERR_TOO_LARGE when out (outsz bytes) cannot
 * hold pg_b64url_len(n) + 1 bytes; out is then untouched.
 */
pg_status_t
pg_b64url_encode(const void *in, size_t n, char *out, size_t outsz)
{
    const unsigned char *p = in;
    size_t need = pg_b64url_len(n), i, o = 0;

    if (out == NULL || (in == NULL && n > 0)) {
        return PG_ERR_INVALID;
    }
    if (need >= SIZE_MAX - 1 || outsz < need + 1) {
        return PG_ERR_TOO_LARGE;
    }
    for (i = 0; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8) | p[i + 2];
        out[o++] = b64url_alphabet[(v >> 18) & 63];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = b64url_alphabet[(v >> 18) & 63];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8);
        out[o++] = b64url_alphabet[(v >> 18) & 63];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
    return PG_OK;
}

/*
 * Decode base64url (RFC 4648 section 5) text of n bytes into out.
 *
 * Accepted: the URL-safe alphabet only, optionally followed by the exact
 * '=' padding that completes the last quantum (then the total length must
 * be a multiple of 4). Refused (PG_ERR_INVALID): any other byte ('+', '/',
 * whitespace, NUL), a length of 1 mod 4, stray or excess padding, and
 * non-zero unused bits in the last character (non-canonical encodings).
 * PG_ERR_TOO_LARGE when the decoded size exceeds outsz; out is then
 * untouched. On success *outlen (if non-NULL) is the byte count; out is not
 * NUL-terminated. in may be NULL when n is 0.
 */
pg_status_t
pg_b64url_decode(const char *in, size_t n, void *out, size_t outsz,
                 size_t *outlen)
{
    unsigned char *o = out;
    size_t len = n, pad = 0, need, i, k = 0;
    uint32_t acc = 0;
    int bits = 0;

    if (outlen != NULL) {
        *outlen = 0;
    }
    if ((in == NULL && n > 0) || (out == NULL && outsz > 0)) {
        return PG_ERR_INVALID;
    }
    while (len > 0 && in[len - 1] == '=' && pad < 2) {
        len--;
        pad++;
    }
    if (len > 0 && in[len - 1] == '=') {
        return PG_ERR_INVALID;
    }
    if (pad > 0 && (n % 4 != 0)) {
        return PG_ERR_INVALID;
    }
    if (len % 4 == 1) {
        return PG_ERR_INVALID;
    }
    if (pad > 0 && (len % 4) + pad != 4) {
        return PG_ERR_INVALID;
    }
    need = (len / 4) * 3 + (len % 4 == 0 ? 0 : (len % 4) - 1);
    /* Validate every character before writing anything. */
    for (i = 0; i < len; i++) {
        if (b64url_value((unsigned char)in[i]) < 0) {
            return PG_ERR_INVALID;
        }
    }
    if (len % 4 != 0) {
        int last = b64url_value((unsigned char)in[len - 1]);
        int unused = (len % 4 == 2) ? 4 : 2;
        if ((last & ((1 << unused) - 1)) != 0) {
            return PG_ERR_INVALID;
        }
    }
    if (need > outsz) {
        return PG_ERR_TOO_LARGE;
    }
    for (i = 0; i < len; i++) {
        acc = (acc << 6) | (uint32_t)b64url_value((unsigned char)in[i]);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[k++] = (unsigned char)((acc >> bits) & 0xff);
        }
    }
    if (outlen != NULL) {
        *outlen = k;
    }
    return PG_OK;
}

/*
 * Parse s[0..n) as a decimal unsigned integer: one or more ASCII digits and
 * nothing else (no sign, no spaces). PG_ERR_INVALID for an empty or
 * non-digit string, PG_ERR_TOO_LARGE when the value exceeds UINT64_MAX.
 * *out is written only on success.
 */
pg_status_t
pg_parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;

    if (s == NULL || out == NULL || n == 0) {
        return PG_ERR_INVALID;
    }
    for (i = 0; i < n; i++) {
        unsigned d;
        if (s[i] < '0' || s[i] > '9') {
            return PG_ERR_INVALID;
        }
        d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) {
            return PG_ERR_TOO_LARGE;
        }
        v = v * 10 + d;
    }
    *out = v;
    return PG_OK;
}

/*
 * Percent-encode s[0..n) into a malloc'd NUL-terminated string: RFC 3986
 * unreserved bytes (ALPHA DIGIT - . _ ~) are kept, every other byte becomes
 * %XX (upper-case hex; a space is "%20", which every form decoder also
 * accepts). The caller frees. NULL on OOM or NULL s with n > 0.
 */
char *
pg_urlencode(const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out;
    size_t i, o = 0;

    if (s == NULL && n > 0) {
        return NULL;
    }
    if (n > (SIZE_MAX - 1) / 3) {
        return NULL;
    }
    out = malloc(n * 3 + 1);
    if (out == NULL) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
            c == '~') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return out;
}

/*
 * Decode %XX and '+' (space) from s[0..n) into a malloc'd NUL-terminated
 * string, refusing (NULL) input over cap bytes, a '%' not followed by two
 * hex digits, and any NUL byte (raw or as %00) since the result is a C
 * string. The caller frees.
 */
static char *
urldecode_capped(const char *s, size_t n, size_t cap)
{
    char *out;
    size_t i, o = 0;

    if ((s == NULL && n > 0) || n > cap) {
        return NULL;
    }
    out = malloc(n + 1);
    if (out == NULL) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            int hi, lo;
            if (n - i < 3) {
                free(out);
                return NULL;
            }
            hi = hex_value((unsigned char)s[i + 1]);
            lo = hex_value((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0) {
                free(out);
                return NULL;
            }
            c = (unsigned char)((hi << 4) | lo);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (c == '\0') {
            free(out);
            return NULL;
        }
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return out;
}

/* Decode a form/query component (see urldecode_capped); input capped at
 * 8 KiB. The caller frees the result. */
char *
pg_urldecode(const char *s, size_t n)
{
    return urldecode_capped(s, n, PG_URLDECODE_MAX);
}

/*
 * Find key in an &-separated query string or form body (a leading '?' is
 * skipped) and return its decoded value, malloc'd (the caller frees).
 * "key" with no '=' yields "". Returns NULL when the key is absent, when a
 * value is malformed, when the key occurs more than once (parameter
 * pollution is refused rather than resolved), or when the input exceeds
 * 512 KiB. Keys are compared after decoding, byte for byte.
 */
char *
pg_query_param(const char *query, size_t n, const char *key)
{
    const char *p, *end;
    const char *found = NULL;
    size_t found_len = 0;
    size_t keylen;

    if (query == NULL || key == NULL || n > PG_QUERY_MAX) {
        return NULL;
    }
    keylen = strlen(key);
    p = query;
    end = query + n;
    if (p < end && *p == '?') {
        p++;
    }
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *seg_end = amp != NULL ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(seg_end - p));
        const char *kend = eq != NULL ? eq : seg_end;
        char *k;

        if (kend > p) {
            k = urldecode_capped(p, (size_t)(kend - p), PG_QUERY_MAX);
            if (k != NULL && strlen(k) == keylen && memcmp(k, key, keylen) == 0) {
                if (found != NULL) {
                    free(k);
                    return NULL;
                }
                if (eq != NULL) {
                    found = eq + 1;
                    found_len = (size_t)(seg_end - eq - 1);
                } else {
                    found = seg_end;
                    found_len = 0;
                }
            }
            free(k);
        }
        p = amp != NULL ? amp + 1 : end;
    }
    if (found == NULL) {
        return NULL;
    }
    return urldecode_capped(found, found_len, PG_QUERY_MAX);
}

/*
 * uri[0..n) (a request target "path?query" as received) without every query
 * parameter whose decoded name is key ("key", "key=" and "key=value" alike;
 * names are compared as pg_query_param() does). The other parameters keep
 * their order and their bytes; empty segments ("a&&b", a trailing '&') are
 * dropped, and so is the '?' when no parameter is left. Returns a malloc'd
 * NUL-terminated string (the caller frees) and the number of parameters
 * removed in *removed (may be NULL); NULL when uri is NULL or longer than
 * 8 KiB (PG_URLDECODE_MAX), or on OOM. A name that does not decode is kept
 * as it is (it cannot be key).
 */
char *
pg_query_strip_param(const char *uri, size_t n, const char *key,
                     size_t *removed)
{
    const char *q, *p, *end;
    size_t keylen, o, nremoved = 0, kept = 0;
    char *out;

    if (removed != NULL) {
        *removed = 0;
    }
    if (uri == NULL || key == NULL || n > PG_URLDECODE_MAX) {
        return NULL;
    }
    out = malloc(n + 1);
    if (out == NULL) {
        return NULL;
    }
    keylen = strlen(key);
    q = memchr(uri, '?', n);
    o = q != NULL ? (size_t)(q - uri) : n;
    memcpy(out, uri, o);
    if (q != NULL) {
        p = q + 1;
        end = uri + n;
        while (p < end) {
            const char *amp = memchr(p, '&', (size_t)(end - p));
            const char *seg_end = amp != NULL ? amp : end;
            const char *eq = memchr(p, '=', (size_t)(seg_end - p));
            const char *kend = eq != NULL ? eq : seg_end;
            size_t seglen = (size_t)(seg_end - p);
            int match = 0;

            if (kend > p) {
                char *k = urldecode_capped(p, (size_t)(kend - p),
                                           PG_URLDECODE_MAX);

                match = k != NULL && strlen(k) == keylen
                        && memcmp(k, key, keylen) == 0;
                free(k);
            }
            if (match) {
                nremoved++;
            } else if (seglen > 0) {
                out[o++] = kept == 0 ? '?' : '&';
                memcpy(out + o, p, seglen);
                o += seglen;
                kept++;
            }
            p = amp != NULL ? amp + 1 : end;
        }
    }
    out[o] = '\0';
    if (removed != NULL) {
        *removed = nremoved;
    }
    return out;
}
