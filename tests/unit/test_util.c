/*
 * Unit tests for the pure utilities of include/provgate/util.h:
 * randomness, base64url, SHA-256, constant-time compare, sealed values,
 * return-path and header checks, integer parsing and URL encoding.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "provgate/util.h"

/* ---- base64url ---------------------------------------------------------- */

static void
test_b64url_vectors(void **state)
{
    /* RFC 4648 section 10 vectors, unpadded. */
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba",
                                        "foobar"};
    static const char *const enc[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg",
                                      "Zm9vYmE", "Zm9vYmFy"};
    char out[64];
    unsigned char dec[64];
    size_t i, dlen;

    (void)state;
    for (i = 0; i < 7; i++) {
        assert_int_equal(pg_b64url_len(strlen(plain[i])), strlen(enc[i]));
        assert_int_equal(pg_b64url_encode(plain[i], strlen(plain[i]), out,
                                          sizeof(out)), PG_OK);
        assert_string_equal(out, enc[i]);
        assert_int_equal(pg_b64url_decode(enc[i], strlen(enc[i]), dec,
                                          sizeof(dec), &dlen), PG_OK);
        assert_int_equal(dlen, strlen(plain[i]));
        assert_memory_equal(dec, plain[i], dlen);
    }
    /* URL-safe alphabet: 0xfb 0xff -> "-_8" (standard base64 is "+/8"). */
    {
        static const unsigned char b[] = {0xfb, 0xff};
        assert_int_equal(pg_b64url_encode(b, 2, out, sizeof(out)), PG_OK);
        assert_string_equal(out, "-_8");
        assert_int_equal(pg_b64url_decode("-_8", 3, dec, sizeof(dec), &dlen),
                         PG_OK);
        assert_int_equal(dlen, 2);
        assert_memory_equal(dec, b, 2);
    }
}

static void
test_b64url_padding_and_rejects(void **state)
{
    unsigned char dec[64];
    size_t dlen = 99;
    static const char *const bad[] = {
        "Z",        /* 1 mod 4 */
        "Zg=",      /* incomplete padding */
        "Zg===",    /* too much padding */
        "Z===",
        "Zm8==",    /* padding does not complete the quantum */
        "Zm9v=",    /* padding after a full quantum */
        "Zg=a",     /* padding in the middle */
        "Zm9v+A",   /* standard-alphabet characters */
        "Zm9v/A",
        "Zm 9v",    /* whitespace */
        "Zm9v\n",
        "Zh",       /* non-canonical: unused bits set */
        "Zm9",      /* non-canonical: "fo" is "Zm8" */
        "=",
        "====",
    };
    size_t i;

    (void)state;
    assert_int_equal(pg_b64url_decode("Zg==", 4, dec, sizeof(dec), &dlen), PG_OK);
    assert_int_equal(dlen, 1);
    assert_int_equal(dec[0], 'f');
    assert_int_equal(pg_b64url_decode("Zm8=", 4, dec, sizeof(dec), &dlen), PG_OK);
    assert_int_equal(dlen, 2);
    assert_memory_equal(dec, "fo", 2);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        dlen = 99;
        if (pg_b64url_decode(bad[i], strlen(bad[i]), dec, sizeof(dec), &dlen)
            != PG_ERR_INVALID) {
            fail_msg("accepted bad base64url \"%s\"", bad[i]);
        }
        assert_int_equal(dlen, 0);
    }
    /* Embedded NUL within the given length is refused. */
    assert_int_equal(pg_b64url_decode("Zm\0v", 4, dec, sizeof(dec), &dlen),
                     PG_ERR_INVALID);
    /* Empty input decodes to nothing. */
    assert_int_equal(pg_b64url_decode("", 0, dec, sizeof(dec), &dlen), PG_OK);
    assert_int_equal(dlen, 0);
}

static void
test_b64url_sizes(void **state)
{
    char out[8];
    unsigned char dec[5];
    size_t dlen;

    (void)state;
    /* "foobar" needs 8 chars + NUL. */
    assert_int_equal(pg_b64url_encode("foobar", 6, out, 8), PG_ERR_TOO_LARGE);
    assert_int_equal(pg_b64url_encode("fooba", 5, out, 8), PG_OK);
    assert_string_equal(out, "Zm9vYmE");
    /* decoding 6 bytes into 5 */
    assert_int_equal(pg_b64url_decode("Zm9vYmFy", 8, dec, 5, &dlen),
                     PG_ERR_TOO_LARGE);
    assert_int_equal(pg_b64url_decode("Zm9vYmE", 7, dec, 5, &dlen), PG_OK);
    assert_int_equal(dlen, 5);
    assert_int_equal(pg_b64url_len(0), 0);
    assert_int_equal(pg_b64url_len(32), 43);
    assert_int_equal(pg_b64url_len(33), 44);
}

static void
test_b64url_roundtrip_random(void **state)
{
    unsigned char in[200], dec[200];
    char enc[300];
    size_t n, dlen;

    (void)state;
    for (n = 0; n < sizeof(in); n++) {
        assert_int_equal(pg_random(in, n), PG_OK);
        assert_int_equal(pg_b64url_encode(in, n, enc, sizeof(enc)), PG_OK);
        assert_int_equal(strlen(enc), pg_b64url_len(n));
        assert_int_equal(pg_b64url_decode(enc, strlen(enc), dec, sizeof(dec),
                                          &dlen), PG_OK);
        assert_int_equal(dlen, n);
        if (n > 0) {
            assert_memory_equal(in, dec, n);
        }
    }
}

/* ---- randomness, hashing, ct compare ---------------------------------- */

static void
test_random_token(void **state)
{
    char a[64], b[64];
    size_t i;

    (void)state;
    assert_int_equal(pg_random_token(32, a, sizeof(a)), PG_OK);
    assert_int_equal(pg_random_token(32, b, sizeof(b)), PG_OK);
    assert_int_equal(strlen(a), 43);
    assert_string_not_equal(a, b);
    for (i = 0; a[i] != '\0'; i++) {
        assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstu"
                               "vwxyz0123456789-_", a[i]));
    }
    assert_int_equal(pg_random_token(32, a, 43), PG_ERR_TOO_LARGE);
    assert_int_equal(pg_random_token(32, a, 44), PG_OK);
    assert_int_equal(pg_random_token(0, a, sizeof(a)), PG_ERR_INVALID);
}

static void
test_random_fills(void **state)
{
    unsigned char buf[4096];
    size_t i, zeros = 0;

    (void)state;
    memset(buf, 0, sizeof(buf));
    assert_int_equal(pg_random(buf, sizeof(buf)), PG_OK);
    for (i = 0; i < sizeof(buf); i++) {
        zeros += buf[i] == 0;
    }
    /* Expected ~16 zero bytes; all-zero output means nothing was written. */
    assert_true(zeros < 100);
    assert_int_equal(pg_random(buf, 0), PG_OK);
}

static void
test_sha256_b64url(void **state)
{
    char out[44];

    (void)state;
    assert_int_equal(pg_sha256_b64url("abc", 3, out, sizeof(out)), PG_OK);
    assert_string_equal(out, "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
    /* RFC 7636 appendix B: PKCE S256. */
    assert_int_equal(pg_sha256_b64url("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
                                      43, out, sizeof(out)), PG_OK);
    assert_string_equal(out, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    assert_int_equal(pg_sha256_b64url("", 0, out, sizeof(out)), PG_OK);
    assert_string_equal(out, "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
    assert_int_equal(pg_sha256_b64url("abc", 3, out, 43), PG_ERR_TOO_LARGE);
}

static void
test_ct_equal(void **state)
{
    (void)state;
    assert_int_equal(pg_ct_equal("abc", 3, "abc", 3), 1);
    assert_int_equal(pg_ct_equal("abc", 3, "abd", 3), 0);
    assert_int_equal(pg_ct_equal("abc", 3, "abcd", 4), 0);
    assert_int_equal(pg_ct_equal("abc", 3, "ab", 2), 0);
    assert_int_equal(pg_ct_equal("", 0, "", 0), 1);
    assert_int_equal(pg_ct_equal("x", 1, "", 0), 0);
}

/* ---- sealed values ------------------------------------------------------ */

static const uint8_t key1[PG_SEAL_KEY_LEN] = {
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
    17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

#define SEALBUF 4096

static void
test_seal_roundtrip(void **state)
{
    static const char msg[] = "{\"sid\":\"abc\",\"exp\":1700000000}";
    char s1[SEALBUF], s2[SEALBUF];
    char out[PG_SEAL_MAX_PLAINTEXT + 1];
    size_t olen = 0;

    (void)state;
    assert_int_equal(pg_seal(key1, "provgate_session", msg, strlen(msg), s1,
                             sizeof(s1)), PG_OK);
    assert_int_equal(pg_seal(key1, "provgate_session", msg, strlen(msg), s2,
                             sizeof(s2)), PG_OK);
    assert_memory_equal(s1, "v1.", 3);
    /* fresh nonce each time */
    assert_string_not_equal(s1, s2);
    assert_int_equal(strlen(s1), 3 + pg_b64url_len(12 + strlen(msg) + 16));
    assert_int_equal(pg_unseal(key1, "provgate_session", s1, strlen(s1), out,
                               sizeof(out), &olen), PG_OK);
    assert_int_equal(olen, strlen(msg));
    assert_memory_equal(out, msg, olen);
    assert_int_equal(out[olen], '\0');
    assert_int_equal(pg_unseal(key1, "provgate_session", s2, strlen(s2), out,
                               sizeof(out), &olen), PG_OK);
    assert_string_equal(out, msg);
}

static void
test_seal_empty_and_limits(void **state)
{
    static char big[PG_SEAL_MAX_PLAINTEXT + 1];
    static char sealed[SEALBUF], out[PG_SEAL_MAX_PLAINTEXT];
    size_t olen = 99, need;

    (void)state;
    assert_int_equal(pg_seal(key1, NULL, "", 0, sealed, sizeof(sealed)), PG_OK);
    assert_int_equal(pg_unseal(key1, NULL, sealed, strlen(sealed), out,
                               sizeof(out), &olen), PG_OK);
    assert_int_equal(olen, 0);
    /* NULL aad is the same purpose as "" */
    assert_int_equal(pg_unseal(key1, "", sealed, strlen(sealed), out,
                               sizeof(out), &olen), PG_OK);

    memset(big, 'A', sizeof(big));
    assert_int_equal(pg_seal(key1, "a", big, PG_SEAL_MAX_PLAINTEXT + 1, sealed,
                             sizeof(sealed)), PG_ERR_TOO_LARGE);
    assert_int_equal(pg_seal(key1, "a", big, PG_SEAL_MAX_PLAINTEXT, sealed,
                             sizeof(sealed)), PG_OK);
    assert_int_equal(pg_unseal(key1, "a", sealed, strlen(sealed), out,
                               sizeof(out), &olen), PG_OK);
    assert_int_equal(olen, PG_SEAL_MAX_PLAINTEXT);
    assert_memory_equal(out, big, olen);
    /* output buffer too small for the plaintext */
    assert_int_equal(pg_unseal(key1, "a", sealed, strlen(sealed), out,
                               PG_SEAL_MAX_PLAINTEXT - 1, &olen),
                     PG_ERR_TOO_LARGE);

    /* seal output buffer exactly large enough, and one byte short */
    need = 3 + pg_b64url_len(12 + 5 + 16) + 1;
    assert_int_equal(pg_seal(key1, "a", "hello", 5, sealed, need - 1),
                     PG_ERR_TOO_LARGE);
    assert_int_equal(pg_seal(key1, "a", "hello", 5, sealed, need), PG_OK);
    assert_int_equal(strlen(sealed), need - 1);
}

static void
test_seal_tamper_every_char(void **state)
{
    static const char msg[] = "user=alice;groups=admins";
    char sealed[SEALBUF], t[SEALBUF], out[256];
    size_t n, i, olen;

    (void)state;
    assert_int_equal(pg_seal(key1, "c", msg, strlen(msg), sealed,
                             sizeof(sealed)), PG_OK);
    n = strlen(sealed);
    for (i = 0; i < n; i++) {
        static const char repl[] = "AB";
        pg_status_t st;
        memcpy(t, sealed, n + 1);
        t[i] = t[i] == repl[0] ? repl[1] : repl[0];
        memset(out, 0x5a, sizeof(out));
        st = pg_unseal(key1, "c", t, n, out, sizeof(out), &olen);
        if (st != PG_ERR_CRYPTO && st != PG_ERR_INVALID) {
            fail_msg("tampered char %zu accepted (status %d)", i, st);
        }
        /* unauthenticated plaintext never reaches the caller */
        assert_int_equal((unsigned char)out[0], 0x5a);
    }
}

static void
test_seal_tamper_every_byte(void **state)
{
    static const char msg[] = "0123456789abcdef";
    char sealed[SEALBUF], t[SEALBUF], out[256];
    unsigned char raw[256];
    size_t rawlen, i, olen;
    int bit;

    (void)state;
    assert_int_equal(pg_seal(key1, "c", msg, strlen(msg), sealed,
                             sizeof(sealed)), PG_OK);
    assert_int_equal(pg_b64url_decode(sealed + 3, strlen(sealed) - 3, raw,
                                      sizeof(raw), &rawlen), PG_OK);
    assert_int_equal(rawlen, 12 + strlen(msg) + 16);
    for (i = 0; i < rawlen; i++) {
        for (bit = 0; bit < 8; bit++) {
            raw[i] ^= (unsigned char)(1u << bit);
            memcpy(t, "v1.", 3);
            assert_int_equal(pg_b64url_encode(raw, rawlen, t + 3, sizeof(t) - 3),
                             PG_OK);
            if (pg_unseal(key1, "c", t, strlen(t), out, sizeof(out), &olen)
                != PG_ERR_CRYPTO) {
                fail_msg("flipped bit %d of byte %zu not detected", bit, i);
            }
            raw[i] ^= (unsigned char)(1u << bit);
        }
    }
}

static void
test_seal_wrong_key_aad_truncated(void **state)
{
    static const char msg[] = "payload";
    uint8_t key2[PG_SEAL_KEY_LEN];
    char sealed[SEALBUF], out[256];
    size_t n, i, olen;

    (void)state;
    memcpy(key2, key1, sizeof(key2));
    key2[31] ^= 1;
    assert_int_equal(pg_seal(key1, "cookie-a", msg, strlen(msg), sealed,
                             sizeof(sealed)), PG_OK);
    n = strlen(sealed);
    assert_int_equal(pg_unseal(key2, "cookie-a", sealed, n, out, sizeof(out),
                               &olen), PG_ERR_CRYPTO);
    assert_int_equal(pg_unseal(key1, "cookie-b", sealed, n, out, sizeof(out),
                               &olen), PG_ERR_CRYPTO);
    assert_int_equal(pg_unseal(key1, NULL, sealed, n, out, sizeof(out), &olen),
                     PG_ERR_CRYPTO);
    assert_int_equal(pg_unseal(key1, "cookie-a", sealed, n, out, sizeof(out),
                               &olen), PG_OK);
    /* every truncation fails */
    for (i = 0; i < n; i++) {
        pg_status_t st = pg_unseal(key1, "cookie-a", sealed, i, out,
                                   sizeof(out), &olen);
        if (st != PG_ERR_CRYPTO && st != PG_ERR_INVALID) {
            fail_msg("truncation to %zu accepted", i);
        }
    }
    /* extension fails */
    sealed[n] = 'A';
    sealed[n + 1] = '\0';
    assert_int_not_equal(pg_unseal(key1, "cookie-a", sealed, n + 1, out,
                                   sizeof(out), &olen), PG_OK);
    /* shape errors */
    assert_int_equal(pg_unseal(key1, "a", "v2.AAAA", 7, out, sizeof(out), &olen),
                     PG_ERR_INVALID);
    assert_int_equal(pg_unseal(key1, "a", "", 0, out, sizeof(out), &olen),
                     PG_ERR_INVALID);
    assert_int_equal(pg_unseal(key1, "a", "v1.", 3, out, sizeof(out), &olen),
                     PG_ERR_INVALID);
    assert_int_equal(pg_unseal(key1, "a", "v1.!!!!", 7, out, sizeof(out), &olen),
                     PG_ERR_INVALID);
}

static void
test_unseal_oversized_input(void **state)
{
    static char in[8192];
    char out[16];
    size_t olen;

    (void)state;
    memcpy(in, "v1.", 3);
    memset(in + 3, 'A', sizeof(in) - 4);
    in[sizeof(in) - 1] = '\0';
    assert_int_equal(pg_unseal(key1, "a", in, strlen(in), out, sizeof(out),
                               &olen), PG_ERR_INVALID);
}

/* ---- return paths ------------------------------------------------------- */

static int
rp(const char *s)
{
    return pg_return_path_ok(s, strlen(s));
}

static void
test_return_path_accepts(void **state)
{
    (void)state;
    assert_int_equal(rp("/"), 1);
    assert_int_equal(rp("/app/x?y=1#frag"), 1);
    assert_int_equal(rp("/app/%E2%82%AC?q=a%20b"), 1);
    assert_int_equal(rp("/a/b/../c"), 1);
    assert_int_equal(rp("/x?next=//evil"), 1);   /* "//" only matters at the start */
    assert_int_equal(rp("/a%2Fb"), 1);
}

static void
test_return_path_refuses(void **state)
{
    static const char *const bad[] = {
        "",
        "//host",
        "//host/path",
        "/\\host",
        "\\\\host",
        "/a\\b",
        "http:host",
        "https://x",
        "http://evil.example/",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,x",
        "app/x",
        "?x=1",
        "#frag",
        "/%2F%2Fhost",
        "/%2fhost",
        "/%5Chost",
        "/%5chost",
        "/%252F%252Fhost",     /* double-encoded */
        "/%25252F%25252Fhost", /* triple-encoded */
        "/\r\nSet-Cookie: x=1",
        "/a\rb",
        "/a\nb",
        "/a\tb",
        "/\t/evil.example",
        "/a\x7f",
        "/a\x01",
        "/a%0d%0aSet-Cookie:x",
        "/a%00",
        " /a",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (rp(bad[i]) != 0) {
            fail_msg("accepted return path \"%s\"", bad[i]);
        }
    }
    /* NUL inside the given length */
    assert_int_equal(pg_return_path_ok("/a\0b", 4), 0);
    /* only n bytes are considered: "/x" within "/x//" prefix */
    assert_int_equal(pg_return_path_ok("/x\r\n", 2), 1);
    assert_int_equal(pg_return_path_ok(NULL, 0), 0);
}

/* The path of an absolute URL, for matching an ACS URL to a request. */
static void
test_url_path(void **state)
{
    static const struct { const char *url, *path; } cases[] = {
        { "https://gw.example/saml/acs", "/saml/acs" },
        { "https://gw.example:8443/saml/acs?idp=1", "/saml/acs" },
        { "http://127.0.0.1:80/a/b#frag", "/a/b" },
        { "https://gw.example", "/" },
        { "https://gw.example?x=/y", "/" },
        { "https://user@gw.example/p", "/p" },
    };
    size_t i, len;
    const char *p;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        p = pg_url_path(cases[i].url, &len);
        if (len != strlen(cases[i].path)
            || memcmp(p, cases[i].path, len) != 0) {
            fail_msg("%s: got \"%.*s\"", cases[i].url, (int)len, p);
        }
    }
}

static void
test_return_path_length(void **state)
{
    static char buf[2050];

    (void)state;
    memset(buf, 'a', sizeof(buf));
    buf[0] = '/';
    assert_int_equal(pg_return_path_ok(buf, 2048), 1);
    assert_int_equal(pg_return_path_ok(buf, 2049), 0);
}

/* ---- headers ------------------------------------------------------------ */

static void
test_header_name_eq(void **state)
{
    (void)state;
#define HEQ(a, b) pg_header_name_eq(a, strlen(a), b, strlen(b))
    assert_int_equal(HEQ("X-Provgate-User", "x_provgate_user"), 1);
    assert_int_equal(HEQ("X-Provgate-User", "X-PROVGATE-USER"), 1);
    assert_int_equal(HEQ("x-provgate_user", "X_Provgate-User"), 1);
    assert_int_equal(HEQ("X-Provgate-User", "X-Provgate-Users"), 0);
    assert_int_equal(HEQ("X-Provgate-Users", "X-Provgate-User"), 0);
    assert_int_equal(HEQ("X-Provgate-User", "X-Provgate-Usex"), 0);
    assert_int_equal(HEQ("X-Provgate-User", "X.Provgate.User"), 0);
    assert_int_equal(HEQ("X-Provgate-User", "X Provgate User"), 0);
    assert_int_equal(HEQ("", ""), 1);
#undef HEQ
}

static void
test_header_value_clean(void **state)
{
    char out[64];
    size_t n;

    (void)state;
    n = pg_header_value_clean("alice\r\nX-Admin: 1", 17, out, sizeof(out));
    assert_string_equal(out, "aliceX-Admin: 1");
    assert_int_equal(n, 15);
    n = pg_header_value_clean("a\0b\tc\x7f" "d\x1f" "e", 9, out, sizeof(out));
    assert_string_equal(out, "abcde");
    assert_int_equal(n, 5);
    /* UTF-8 bytes are kept */
    n = pg_header_value_clean("J\xc3\xbcrgen", 7, out, sizeof(out));
    assert_string_equal(out, "J\xc3\xbcrgen");
    /* truncation to outsz - 1 */
    n = pg_header_value_clean("abcdef", 6, out, 4);
    assert_string_equal(out, "abc");
    assert_int_equal(n, 3);
    n = pg_header_value_clean("\r\n\r\n", 4, out, sizeof(out));
    assert_int_equal(n, 0);
    assert_string_equal(out, "");
    assert_int_equal(pg_header_value_clean("abc", 3, out, 0), 0);
}

/* ---- integers and URL encoding ------------------------------------------ */

static void
test_parse_u64(void **state)
{
    uint64_t v = 7;

    (void)state;
#define PU(s) pg_parse_u64(s, strlen(s), &v)
    assert_int_equal(PU("0"), PG_OK);
    assert_int_equal(v, 0);
    assert_int_equal(PU("42"), PG_OK);
    assert_int_equal(v, 42);
    assert_int_equal(PU("0042"), PG_OK);
    assert_int_equal(v, 42);
    assert_int_equal(PU("18446744073709551615"), PG_OK);
    assert_true(v == UINT64_MAX);
    v = 7;
    assert_int_equal(PU("18446744073709551616"), PG_ERR_TOO_LARGE);
    assert_int_equal(PU("99999999999999999999999"), PG_ERR_TOO_LARGE);
    assert_int_equal(PU(""), PG_ERR_INVALID);
    assert_int_equal(PU("-1"), PG_ERR_INVALID);
    assert_int_equal(PU("+1"), PG_ERR_INVALID);
    assert_int_equal(PU(" 1"), PG_ERR_INVALID);
    assert_int_equal(PU("1 "), PG_ERR_INVALID);
    assert_int_equal(PU("1a"), PG_ERR_INVALID);
    assert_int_equal(PU("0x10"), PG_ERR_INVALID);
    assert_true(v == 7);
    /* only n bytes are read */
    assert_int_equal(pg_parse_u64("12x", 2, &v), PG_OK);
    assert_true(v == 12);
#undef PU
}

static void
test_urlencode(void **state)
{
    char *s;

    (void)state;
    s = pg_urlencode("AZaz09-._~", 10);
    assert_string_equal(s, "AZaz09-._~");
    free(s);
    s = pg_urlencode("a b&c=d/e?f#g+h%", 16);
    assert_string_equal(s, "a%20b%26c%3Dd%2Fe%3Ff%23g%2Bh%25");
    free(s);
    s = pg_urlencode("\xe2\x82\xac\x00", 4);
    assert_string_equal(s, "%E2%82%AC%00");
    free(s);
    s = pg_urlencode("", 0);
    assert_string_equal(s, "");
    free(s);
}

static void
test_urldecode(void **state)
{
    static char big[8194];
    char *s;

    (void)state;
    s = pg_urldecode("a%20b+c%2Bd%e2%82%ac", 20);
    assert_string_equal(s, "a b c+d\xe2\x82\xac");
    free(s);
    s = pg_urldecode("", 0);
    assert_string_equal(s, "");
    free(s);
    assert_null(pg_urldecode("%zz", 3));
    assert_null(pg_urldecode("%4", 2));
    assert_null(pg_urldecode("abc%", 4));
    assert_null(pg_urldecode("a%00b", 5));
    assert_null(pg_urldecode("a\0b", 3));
    /* round trip through pg_urlencode */
    {
        static const char orig[] = "k=v&x=y z/\xc3\xa9~";
        char *e = pg_urlencode(orig, strlen(orig));
        s = pg_urldecode(e, strlen(e));
        assert_string_equal(s, orig);
        free(e);
        free(s);
    }
    /* 8 KiB cap */
    memset(big, 'a', sizeof(big));
    s = pg_urldecode(big, 8192);
    assert_non_null(s);
    assert_int_equal(strlen(s), 8192);
    free(s);
    assert_null(pg_urldecode(big, 8193));
}

static char *
qp(const char *q, const char *key)
{
    return pg_query_param(q, strlen(q), key);
}

static void
test_query_param(void **state)
{
    char *v;

    (void)state;
    v = qp("code=abc&state=xyz", "state");
    assert_string_equal(v, "xyz");
    free(v);
    v = qp("code=abc&state=xyz", "code");
    assert_string_equal(v, "abc");
    free(v);
    v = qp("?state=a%2Fb+c", "state");
    assert_string_equal(v, "a/b c");
    free(v);
    v = qp("a=1&&b=2&", "b");
    assert_string_equal(v, "2");
    free(v);
    v = qp("flag&x=1", "flag");
    assert_string_equal(v, "");
    free(v);
    v = qp("x=&y=1", "x");
    assert_string_equal(v, "");
    free(v);
    v = qp("st%61te=enc", "state");           /* key is decoded too */
    assert_string_equal(v, "enc");
    free(v);
    v = qp("a=b=c", "a");                     /* first '=' splits */
    assert_string_equal(v, "b=c");
    free(v);
    assert_null(qp("statex=1&xstate=2", "state"));
    assert_null(qp("code=abc", "state"));
    assert_null(qp("", "state"));
    assert_null(qp("state=%zz", "state"));     /* malformed value */
    assert_null(qp("state=a&state=b", "state")); /* duplicates refused */
    assert_null(qp("state=a&st%61te=b", "state"));
    /* only n bytes are read */
    v = pg_query_param("a=12&b=3", 3, "a");
    assert_string_equal(v, "1");
    free(v);
    assert_null(pg_query_param("a=1&b=3", 4, "b"));
}

/* pg_field_int: digits only, non-negative, "<name>:<target>" keys. */
static void
test_field_int(void **state)
{
    json_t *f = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:s}", "a", "42",
                          "jit_at:app", "1700000000", "neg", "-1", "plus",
                          "+5", "junk", "12x", "num", 7, "huge",
                          "99999999999999999999");

    (void) state;
    assert_int_equal(pg_field_int(f, "a", NULL), 42);
    assert_int_equal(pg_field_int(f, "jit_at", "app"), 1700000000);
    assert_int_equal(pg_field_int(f, "jit_at", "other"), -1);
    assert_int_equal(pg_field_int(f, "missing", NULL), -1);
    assert_int_equal(pg_field_int(f, "neg", NULL), -1);
    assert_int_equal(pg_field_int(f, "plus", NULL), -1);
    assert_int_equal(pg_field_int(f, "junk", NULL), -1);
    assert_int_equal(pg_field_int(f, "num", NULL), -1);   /* not a string */
    assert_int_equal(pg_field_int(f, "huge", NULL), -1);  /* out of range */
    json_decref(f);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url_vectors),
        cmocka_unit_test(test_b64url_padding_and_rejects),
        cmocka_unit_test(test_b64url_sizes),
        cmocka_unit_test(test_b64url_roundtrip_random),
        cmocka_unit_test(test_random_token),
        cmocka_unit_test(test_random_fills),
        cmocka_unit_test(test_sha256_b64url),
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_seal_roundtrip),
        cmocka_unit_test(test_seal_empty_and_limits),
        cmocka_unit_test(test_seal_tamper_every_char),
        cmocka_unit_test(test_seal_tamper_every_byte),
        cmocka_unit_test(test_seal_wrong_key_aad_truncated),
        cmocka_unit_test(test_unseal_oversized_input),
        cmocka_unit_test(test_return_path_accepts),
        cmocka_unit_test(test_return_path_refuses),
        cmocka_unit_test(test_return_path_length),
        cmocka_unit_test(test_url_path),
        cmocka_unit_test(test_header_name_eq),
        cmocka_unit_test(test_header_value_clean),
        cmocka_unit_test(test_parse_u64),
        cmocka_unit_test(test_urlencode),
        cmocka_unit_test(test_urldecode),
        cmocka_unit_test(test_query_param),
        cmocka_unit_test(test_field_int),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
