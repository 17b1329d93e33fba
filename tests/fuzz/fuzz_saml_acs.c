/*
 * Fuzz target: the SAML ACS path (pg_saml_acs_validate) and the capped
 * Redirect inflate.
 *
 * The input is the XML of a SAML response: it is base64-encoded, form-
 * encoded as SAMLResponse=...&RelayState=... and validated against a fixed
 * SP (fixtures in tests/unit/fixtures/saml/), solicited and unsolicited.
 * The same bytes are also passed as-is as a form body and to
 * pg_saml_inflate. Invariants (abort on violation): a failure always has a
 * reason and leaves the output empty; a success has a NameID, an
 * assertion ID and an attributes object; inflate never returns more than
 * PG_SAML_MAX_INFLATED bytes.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "provgate/saml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static pg_saml_sp_t *g_sp;

static void
fixture_dir(char *out, size_t n)
{
    char cand[PATH_MAX + 64], exe[PATH_MAX];
    struct stat sb;
    char *slash;
    ssize_t k;

    snprintf(cand, sizeof(cand), "%s", __FILE__);
    slash = strrchr(cand, '/');
    if (slash != NULL) {
        snprintf(slash, sizeof(cand) - (size_t)(slash - cand),
                 "/../unit/fixtures/saml");
    }
    if (slash == NULL || stat(cand, &sb) != 0) {
        k = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (k <= 0) {
            abort();
        }
        exe[k] = '\0';
        *strrchr(exe, '/') = '\0';
        snprintf(cand, sizeof(cand), "%s/../../tests/unit/fixtures/saml", exe);
    }
    if (realpath(cand, out) == NULL || strlen(out) + 32 > n) {
        abort();
    }
}

static pg_saml_sp_t *
sp_get(void)
{
    static char dir[PATH_MAX], key[PATH_MAX + 32], cert[PATH_MAX + 32],
        md[PATH_MAX + 32];
    pg_saml_sp_cfg_t cfg = {0};
    pg_err_t err;

    if (g_sp != NULL) {
        return g_sp;
    }
    fixture_dir(dir, sizeof(dir));
    snprintf(key, sizeof(key), "%s/sp-key.pem", dir);
    snprintf(cert, sizeof(cert), "%s/sp-cert.pem", dir);
    snprintf(md, sizeof(md), "%s/idp-metadata.xml", dir);
    cfg.entity_id = "https://sp.example.test/saml";
    cfg.acs_url = "https://sp.example.test/saml/acs";
    cfg.key_path = key;
    cfg.cert_path = cert;
    cfg.idp_metadata_path = md;
    cfg.allow_unsolicited = 1;
    if (pg_saml_sp_new(&cfg, &g_sp, &err) != PG_OK) {
        fprintf(stderr, "fuzz_saml_acs: %s\n", err.msg);
        abort();
    }
    return g_sp;
}

static char *
b64(const uint8_t *in, size_t n)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = malloc((n + 2) / 3 * 4 + 1);
    size_t i, j = 0;

    if (o == NULL) {
        abort();
    }
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        o[j++] = tab[v >> 18];
        o[j++] = tab[(v >> 12) & 63];
        o[j++] = tab[(v >> 6) & 63];
        o[j++] = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) {
            v |= (uint32_t)in[i + 1] << 8;
        }
        o[j++] = tab[v >> 18];
        o[j++] = tab[(v >> 12) & 63];
        o[j++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        o[j++] = '=';
    }
    o[j] = '\0';
    return o;
}

static void
check(const char *body, size_t len, const char *irt)
{
    pg_saml_expect_t exp = {irt, 1800000000};
    pg_saml_assertion_t a;
    const char *reason = NULL;
    pg_err_t err;
    pg_status_t st;

    st = pg_saml_acs_validate(sp_get(), body, len, &exp, &a, &reason, &err);
    if (st != PG_OK) {
        if (reason == NULL || a.name_id != NULL || a.attributes != NULL) {
            abort();
        }
        return;
    }
    if (a.name_id == NULL || a.assertion_id == NULL || a.attributes == NULL ||
        !json_is_object(a.attributes)) {
        abort();
    }
    pg_saml_assertion_clear(&a);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *enc, *form, *out = NULL;
    size_t flen, outlen = 0;

    if (size > PG_SAML_MAX_POST_BODY) {
        return 0;
    }
    enc = b64(data, size);
    form = pg_urlencode(enc, strlen(enc));
    free(enc);
    if (form == NULL) {
        abort();
    }
    flen = strlen(form) + 64;
    enc = malloc(flen);
    if (enc == NULL) {
        abort();
    }
    snprintf(enc, flen, "SAMLResponse=%s&RelayState=fz", form);
    free(form);
    check(enc, strlen(enc), "_req0123456789abcdef");
    check(enc, strlen(enc), NULL);
    free(enc);
    /* the raw bytes as a form body */
    check((const char *)data, size, NULL);
    if (pg_saml_inflate(data, size, &out, &outlen) == PG_OK) {
        if (out == NULL || outlen > PG_SAML_MAX_INFLATED || out[outlen] != '\0') {
            abort();
        }
        free(out);
    }
    return 0;
}
