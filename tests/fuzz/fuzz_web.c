/*
 * Fuzz target: web input helpers of include/provgate/util.h
 * (pg_return_path_ok, pg_query_param, pg_urldecode, pg_b64url_decode,
 * pg_unseal, header cleaning). Besides "no crash, no leak", it checks
 * properties and aborts when one breaks:
 *  - an accepted return path starts with one '/', has no '\' or control
 *    byte, and does not decode to "//" or "/\";
 *  - a base64url decode re-encodes to the input (minus padding);
 *  - seal/unseal round-trips the input, and fails under another aad;
 *  - a cleaned header value has no control bytes;
 *  - stripping provgate_idp from a target never grows it, leaves no such
 *    parameter behind, and a second strip changes nothing.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "provgate/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t fuzz_key[PG_SEAL_KEY_LEN] = {
    0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe, 0x01, 0x23, 0x45,
    0x67, 0x89, 0xab, 0xcd, 0xef, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
    0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00};

static void
check_return_path(const char *s, size_t n)
{
    size_t i;
    char *dec;

    if (!pg_return_path_ok(s, n)) {
        return;
    }
    if (n == 0 || s[0] != '/' || (n > 1 && (s[1] == '/' || s[1] == '\\'))) {
        abort();
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == '\\') {
            abort();
        }
    }
    /* One strict decode (when well-formed) must not start a network path. */
    dec = pg_urldecode(s, n);
    if (dec != NULL) {
        if (dec[0] == '/' && (dec[1] == '/' || dec[1] == '\\')) {
            abort();
        }
        free(dec);
    }
}

static void
check_b64(const char *s, size_t n)
{
    uint8_t out[4096];
    char re[6000];
    size_t olen = 0, stripped = n;

    if (pg_b64url_decode(s, n, out, sizeof(out), &olen) != PG_OK) {
        return;
    }
    while (stripped > 0 && s[stripped - 1] == '=') {
        stripped--;
    }
    if (pg_b64url_encode(out, olen, re, sizeof(re)) != PG_OK ||
        strlen(re) != stripped || memcmp(re, s, stripped) != 0) {
        abort();
    }
}

static void
check_seal(const uint8_t *data, size_t size)
{
    static char sealed[4096];
    static uint8_t out[PG_SEAL_MAX_PLAINTEXT + 1];
    size_t olen = 0;

    /* The raw input as a sealed value (a seed may be a real one). */
    if (pg_unseal(fuzz_key, "fuzz", (const char *)data, size, out, sizeof(out),
                  &olen) == PG_OK && olen > PG_SEAL_MAX_PLAINTEXT) {
        abort();
    }
    if (size > PG_SEAL_MAX_PLAINTEXT) {
        return;
    }
    if (pg_seal(fuzz_key, "fuzz", data, size, sealed, sizeof(sealed)) != PG_OK) {
        abort();
    }
    if (pg_unseal(fuzz_key, "fuzz", sealed, strlen(sealed), out, sizeof(out),
                  &olen) != PG_OK || olen != size ||
        (size > 0 && memcmp(out, data, size) != 0)) {
        abort();
    }
    if (pg_unseal(fuzz_key, "other", sealed, strlen(sealed), out, sizeof(out),
                  &olen) != PG_ERR_CRYPTO) {
        abort();
    }
}

static void
check_strip(const char *s, size_t n)
{
    size_t removed = 0, again = 0;
    char *out = pg_query_strip_param(s, n, "provgate_idp", &removed);
    char *out2;

    if (out == NULL || memchr(s, '\0', n) != NULL) {
        free(out);      /* a NUL cuts the C-string re-check short */
        return;
    }
    if (strlen(out) > n) {
        abort();
    }
    out2 = pg_query_strip_param(out, strlen(out), "provgate_idp", &again);
    if (out2 != NULL && (again != 0 || strcmp(out, out2) != 0)) {
        abort();
    }
    free(out2);
    free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    char hv[512];
    size_t hlen, i;
    uint64_t u;
    char *v;

    check_return_path(s, size);
    check_b64(s, size);
    check_seal(data, size);
    check_strip(s, size);

    v = pg_urldecode(s, size);
    free(v);
    v = pg_query_param(s, size, "state");
    free(v);
    v = pg_query_param(s, size, "code");
    free(v);
    v = pg_urlencode(s, size);
    if (v != NULL) {
        char *back = pg_urldecode(v, strlen(v));
        /* Round trip holds whenever the input has no NUL and fits the cap. */
        if (back != NULL && (strlen(back) != size || memcmp(back, s, size) != 0)) {
            abort();
        }
        free(back);
        free(v);
    }

    hlen = pg_header_value_clean(s, size, hv, sizeof(hv));
    if (hlen >= sizeof(hv) || hv[hlen] != '\0') {
        abort();
    }
    for (i = 0; i < hlen; i++) {
        if ((unsigned char)hv[i] < 0x20 || (unsigned char)hv[i] == 0x7f) {
            abort();
        }
    }
    (void)pg_header_name_eq(s, size, "X-Provgate-User", 15);
    if (pg_parse_u64(s, size, &u) == PG_OK && size == 0) {
        abort();
    }
    return 0;
}
