/*
 * Fuzz target: SAML Single Logout verification (src/idp/saml/slo.c).
 *
 * The input is used four ways against a fixed SP/IdP pair (fixtures in
 * tests/unit/fixtures/saml_slo/), at a fixed time (2027-01-15T08:00:00Z):
 *  1. as a raw HTTP-Redirect query string and as a raw HTTP-POST form
 *     body, for both pg_saml_logout_request_verify and
 *     pg_saml_logout_response_verify;
 *  2. as message XML, base64'd into a POST form body (unsigned unless the
 *     input carries its own XML signature: exercises the caps, DOCTYPE
 *     refusal, parser, structure walk and xmlsec path);
 *  3. as message XML, DEFLATEd and signed for the Redirect binding with
 *     the IdP fixture key, so every check after the signature (Issuer,
 *     Destination, times, NameID, SessionIndex, Status) sees fuzzed input.
 * Invariants (abort on violation): a failure always has a reason and
 * leaves the output empty (a LogoutResponse refused only for its status
 * keeps its fields); a success has the fields its contract promises.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include "provgate/saml.h"
#include "provgate/saml_slo.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NOW 1800000000LL

static pg_saml_sp_t *g_sp;
static pg_saml_slo_t *g_slo;
static EVP_PKEY *g_idp_key;

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
                 "/../unit/fixtures/saml_slo");
    }
    if (slash == NULL || stat(cand, &sb) != 0) {
        k = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (k <= 0) {
            abort();
        }
        exe[k] = '\0';
        *strrchr(exe, '/') = '\0';
        snprintf(cand, sizeof(cand), "%s/../../tests/unit/fixtures/saml_slo", exe);
    }
    if (realpath(cand, out) == NULL || strlen(out) + 32 > n) {
        abort();
    }
}

static void
setup(void)
{
    static char dir[PATH_MAX], key[PATH_MAX + 32], cert[PATH_MAX + 32],
        md[PATH_MAX + 32], idpkey[PATH_MAX + 32];
    pg_saml_sp_cfg_t cfg = {0};
    pg_err_t err;
    FILE *f;

    if (g_slo != NULL) {
        return;
    }
    fixture_dir(dir, sizeof(dir));
    snprintf(key, sizeof(key), "%s/sp-key.pem", dir);
    snprintf(cert, sizeof(cert), "%s/sp-cert.pem", dir);
    snprintf(md, sizeof(md), "%s/idp-metadata.xml", dir);
    snprintf(idpkey, sizeof(idpkey), "%s/idp-key.pem", dir);
    cfg.entity_id = "https://sp.example.test/saml";
    cfg.acs_url = "https://sp.example.test/saml/acs";
    cfg.slo_url = "https://sp.example.test/saml/slo";
    cfg.key_path = key;
    cfg.cert_path = cert;
    cfg.idp_metadata_path = md;
    if (pg_saml_sp_new(&cfg, &g_sp, &err) != PG_OK ||
        pg_saml_slo_new(g_sp, &cfg, &g_slo, &err) != PG_OK) {
        fprintf(stderr, "fuzz_saml_logout: %s\n", err.msg);
        abort();
    }
    f = fopen(idpkey, "r");
    if (f == NULL) {
        abort();
    }
    g_idp_key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (g_idp_key == NULL) {
        abort();
    }
}

static char *
b64(const uint8_t *in, size_t n)
{
    char *o = malloc((n + 2) / 3 * 4 + 1);
    if (o == NULL) {
        abort();
    }
    (void)EVP_EncodeBlock((unsigned char *)o, in, (int)n);
    return o;
}

static void
check_req(pg_saml_binding_t b, const char *in, size_t len)
{
    pg_saml_logout_request_in_t r;
    const char *reason = NULL;
    pg_err_t err;
    pg_status_t st;

    st = pg_saml_logout_request_verify(g_slo, b, in, len, FUZZ_NOW, &r,
                                       &reason, &err);
    if (st != PG_OK) {
        if (reason == NULL || r.id != NULL || r.name_id != NULL ||
            r.n_session_index != 0 || r.relay_state != NULL) {
            abort();
        }
        return;
    }
    if (r.id == NULL || r.name_id == NULL || r.name_id[0] == '\0' ||
        r.n_session_index > PG_SAML_SLO_MAX_SESSIONS ||
        r.replay_until <= FUZZ_NOW - (int64_t)PG_SAML_DEFAULT_SKEW) {
        abort();
    }
    pg_saml_logout_request_in_clear(&r);
}

static void
check_resp(pg_saml_binding_t b, const char *in, size_t len)
{
    pg_saml_logout_result_t r;
    const char *reason = NULL;
    pg_err_t err;
    pg_status_t st;

    st = pg_saml_logout_response_verify(g_slo, b, in, len, FUZZ_NOW, &r,
                                        &reason, &err);
    if (st != PG_OK) {
        if (reason == NULL) {
            abort();
        }
        if (strcmp(reason, "status_not_success") == 0) {
            if (r.in_response_to == NULL || r.status == NULL) {
                abort();
            }
        } else if (r.in_response_to != NULL || r.id != NULL ||
                   r.status != NULL) {
            abort();
        }
        pg_saml_logout_result_clear(&r);
        return;
    }
    if (r.in_response_to == NULL || r.status == NULL ||
        strcmp(r.status, PG_SAML_STATUS_SUCCESS) != 0) {
        abort();
    }
    pg_saml_logout_result_clear(&r);
}

/* POST form body "param=<b64(data)>&RelayState=fz". */
static char *
post_form(const char *param, const uint8_t *data, size_t size)
{
    char *enc = b64(data, size), *u, *body;
    size_t n;

    u = pg_urlencode(enc, strlen(enc));
    free(enc);
    if (u == NULL) {
        abort();
    }
    n = strlen(u) + 64;
    body = malloc(n);
    if (body == NULL) {
        abort();
    }
    snprintf(body, n, "%s=%s&RelayState=fz", param, u);
    free(u);
    return body;
}

/* Redirect query for data, DEFLATEd and signed with the IdP key. NULL
 * when it would not fit the query cap anyway. */
static char *
signed_query(const char *param, const uint8_t *data, size_t size)
{
    static const char alg[] =
        "http%3A%2F%2Fwww.w3.org%2F2001%2F04%2Fxmldsig-more%23rsa-sha256";
    z_stream zs;
    unsigned char *z, sig[512];
    size_t siglen = sizeof(sig), n, cap;
    uLong bound;
    char *enc, *u, *q, *s64, *su;
    EVP_MD_CTX *md;

    memset(&zs, 0, sizeof(zs));
    if (deflateInit2(&zs, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        abort();
    }
    bound = deflateBound(&zs, (uLong)size);
    z = malloc(bound);
    if (z == NULL) {
        abort();
    }
    zs.next_in = (Bytef *)(uintptr_t)data;
    zs.avail_in = (uInt)size;
    zs.next_out = z;
    zs.avail_out = (uInt)bound;
    if (deflate(&zs, Z_FINISH) != Z_STREAM_END) {
        abort();
    }
    enc = b64(z, zs.total_out);
    deflateEnd(&zs);
    free(z);
    u = pg_urlencode(enc, strlen(enc));
    free(enc);
    if (u == NULL) {
        abort();
    }
    if (strlen(u) > PG_SAML_SLO_MAX_QUERY) {
        free(u);
        return NULL;
    }
    cap = strlen(u) + 2048;
    q = malloc(cap);
    if (q == NULL) {
        abort();
    }
    snprintf(q, cap, "%s=%s&RelayState=fz&SigAlg=%s", param, u, alg);
    free(u);
    md = EVP_MD_CTX_new();
    if (md == NULL ||
        EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, g_idp_key) != 1 ||
        EVP_DigestSign(md, sig, &siglen, (const unsigned char *)q,
                       strlen(q)) != 1) {
        abort();
    }
    EVP_MD_CTX_free(md);
    s64 = b64(sig, siglen);
    su = pg_urlencode(s64, strlen(s64));
    free(s64);
    if (su == NULL) {
        abort();
    }
    n = strlen(q);
    snprintf(q + n, cap - n, "&Signature=%s", su);
    free(su);
    return q;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s, *body, *q;

    if (size > PG_SAML_MAX_POST_BODY) {
        return 0;
    }
    setup();
    /* 1. the raw bytes as a query string and as a form body */
    s = malloc(size + 1);
    if (s == NULL) {
        abort();
    }
    if (size > 0) {
        memcpy(s, data, size);
    }
    s[size] = '\0';
    check_req(PG_SAML_BINDING_REDIRECT, s, size);
    check_resp(PG_SAML_BINDING_REDIRECT, s, size);
    check_req(PG_SAML_BINDING_POST, s, size);
    check_resp(PG_SAML_BINDING_POST, s, size);
    free(s);
    /* 2. the bytes as POST message XML */
    body = post_form("SAMLRequest", data, size);
    check_req(PG_SAML_BINDING_POST, body, strlen(body));
    free(body);
    body = post_form("SAMLResponse", data, size);
    check_resp(PG_SAML_BINDING_POST, body, strlen(body));
    free(body);
    /* 3. the bytes as validly signed Redirect message XML */
    q = signed_query("SAMLRequest", data, size);
    if (q != NULL) {
        check_req(PG_SAML_BINDING_REDIRECT, q, strlen(q));
        free(q);
    }
    q = signed_query("SAMLResponse", data, size);
    if (q != NULL) {
        check_resp(PG_SAML_BINDING_REDIRECT, q, strlen(q));
        free(q);
    }
    return 0;
}
