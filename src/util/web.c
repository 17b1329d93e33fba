/*
 * provgate core: checks on web input that ends up in redirects and headers.
 *
 * These are the guards against open redirects (return paths after login)
 * and header injection/spoofing (identity headers sent upstream).
 */
#include <string.h>
#include "provgate/util.h"

#define RETURN_PATH_MAX 2048
/* Percent-decoding rounds applied when looking for a hidden "//" or "/\"
 * (a value decoded once by us may be decoded again by the application). */
#define RETURN_PATH_DECODE_ROUNDS 4

/* 1 for an ASCII control byte (< 0x20 or DEL). */
static int
is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* Value of a hex digit (either case), or -1. */
static int
hexval(unsigned char c)
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
 * One round of percent-decoding from in[0..n) into out (which has room for
 * n bytes; decoding never grows). Invalid escapes are kept literally.
 * Returns the decoded length; *changed is set when any escape was decoded.
 */
static size_t
pct_decode_once(const char *in, size_t n, char *out, int *changed)
{
    size_t i, o = 0;

    *changed = 0;
    for (i = 0; i < n; i++) {
        if (in[i] == '%' && n - i >= 3) {
            int hi = hexval((unsigned char)in[i + 1]);
            int lo = hexval((unsigned char)in[i + 2]);
            if (hi >= 0 && lo >= 0) {
                out[o++] = (char)((hi << 4) | lo);
                i += 2;
                *changed = 1;
                continue;
            }
        }
        out[o++] = in[i];
    }
    return o;
}

/* 1 when s[0..n) starts like a network-path reference ("//" or "/\"). */
static int
starts_network_path(const char *s, size_t n)
{
    return n >= 2 && s[0] == '/' && (s[1] == '/' || s[1] == '\\');
}

/*
 * 1 when s[0..n) is safe to redirect to after login as a same-origin path.
 *
 * Required: 1..2048 bytes; the first byte is '/'; the second is neither '/'
 * nor '\'; no '\' anywhere; no control byte (< 0x20, 0x7f, so no CR, LF,
 * TAB or NUL). Because browsers and applications may decode the value again,
 * the same prefix and control-byte checks are repeated on up to four
 * successive percent-decodings: "/%2F%2Fhost", "/%252F%252Fhost",
 * "/%5Chost" and "/%0d%0aSet-Cookie:..." are all refused.
 * Anything that is not a path ("http://x", "javascript:...", "//host",
 * "") is refused. Never reads past s[n-1].
 */
/* See util.h. */
const char *
pg_url_path(const char *url, size_t *len)
{
    const char *p = strstr(url, "://");

    p = p != NULL ? p + 3 + strcspn(p + 3, "/?#") : url;
    if (*p != '/') {
        *len = 1;
        return "/";
    }
    *len = strcspn(p, "?#");
    return p;
}

int
pg_return_path_ok(const char *s, size_t n)
{
    char buf[2][RETURN_PATH_MAX];
    const char *cur = s;
    size_t curlen = n, i;
    int round;

    if (s == NULL || n == 0 || n > RETURN_PATH_MAX) {
        return 0;
    }
    if (s[0] != '/' || starts_network_path(s, n)) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_ctl(c) || c == '\\') {
            return 0;
        }
    }
    for (round = 0; round < RETURN_PATH_DECODE_ROUNDS; round++) {
        int changed = 0;
        char *next = buf[round & 1];
        size_t nextlen = pct_decode_once(cur, curlen, next, &changed);

        if (!changed) {
            break;
        }
        if (starts_network_path(next, nextlen)) {
            return 0;
        }
        for (i = 0; i < nextlen; i++) {
            if (is_ctl((unsigned char)next[i])) {
                return 0;
            }
        }
        cur = next;
        curlen = nextlen;
    }
    return 1;
}

/*
 * Copy in[0..n) to out for use as an HTTP header value, dropping every
 * control byte (< 0x20 and 0x7f: CR, LF, NUL, TAB, ...). Output is
 * truncated to outsz - 1 bytes and always NUL-terminated when outsz > 0.
 * Returns the number of bytes written (excluding the NUL).
 */
size_t
pg_header_value_clean(const char *in, size_t n, char *out, size_t outsz)
{
    size_t i, o = 0;

    if (out == NULL || outsz == 0) {
        return 0;
    }
    if (in == NULL) {
        n = 0;
    }
    for (i = 0; i < n && o + 1 < outsz; i++) {
        unsigned char c = (unsigned char)in[i];
        if (is_ctl(c)) {
            continue;
        }
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return o;
}

/* Fold a header-name byte: ASCII lower case, '_' -> '-'. */
static unsigned char
hdr_fold(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') {
        return (unsigned char)(c - 'A' + 'a');
    }
    if (c == '_') {
        return '-';
    }
    return c;
}

/*
 * 1 when header names a[0..alen) and b[0..blen) are the same under ASCII
 * case folding with '_' equal to '-' (the spellings a client may use to
 * smuggle a header past a proxy that maps '_' to '-'). Lengths must match.
 */
int
pg_header_name_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t i;

    if (alen != blen) {
        return 0;
    }
    if (alen == 0) {
        return 1;
    }
    if (a == NULL || b == NULL) {
        return 0;
    }
    for (i = 0; i < alen; i++) {
        if (hdr_fold((unsigned char)a[i]) != hdr_fold((unsigned char)b[i])) {
            return 0;
        }
    }
    return 1;
}
