/*
 * Fuzz target: pg_idtoken_validate against a fixed JWKS and expectation.
 *
 * Input modes (first byte):
 *   'S'  the rest is a payload that is signed here with the fixed ES256 key
 *        (kid "fuzz-ec1"), so the claim checks see arbitrary JSON behind a
 *        valid signature;
 *   else the whole input is the compact token.
 * Properties (abort on violation): success implies claims are returned and
 * reason is NULL; failure implies no claims and a reason from the
 * documented list.
 *
 * The key below is a test key generated once for this file; it protects
 * nothing.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cjose/cjose.h>
#include "provgate/oidc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char fuzz_jwks_json[] =
    "{\"keys\":["
    "{\"kty\":\"EC\",\"kid\":\"fuzz-ec1\",\"use\":\"sig\",\"crv\":\"P-256\","
    "\"x\":\"ec6AqHOpVKT0iFMvesfLyavQpFwLoJvQNiXphr7AJMU\","
    "\"y\":\"ltucI7ySq0nbHK1B4dsbJqW8IIb4CopJ__1lOOw2cEA\"},"
    "{\"kty\":\"OKP\",\"kid\":\"fuzz-ed1\",\"crv\":\"Ed25519\","
    "\"x\":\"jgd5gWt-bhfvWjIdBoWlqMkVLybzNmVxJZUsyKwe5nE\"}"
    "]}";

static const char fuzz_priv_jwk[] =
    "{\"kty\":\"EC\",\"kid\":\"fuzz-ec1\",\"crv\":\"P-256\","
    "\"x\":\"ec6AqHOpVKT0iFMvesfLyavQpFwLoJvQNiXphr7AJMU\","
    "\"y\":\"ltucI7ySq0nbHK1B4dsbJqW8IIb4CopJ__1lOOw2cEA\","
    "\"d\":\"dFqRMwcN137kGnAvkMUQN18Y3L2_nIfKTCV6CIZ2wdo\"}";

static const char *const fuzz_algs[] = {"ES256", "RS256", "EdDSA", NULL};

static pg_jwks_t *jwks;
static cjose_jwk_t *signer;

static void
init_once(void)
{
    pg_err_t err;
    cjose_err cerr;

    if (jwks != NULL) {
        return;
    }
    if (pg_jwks_parse(fuzz_jwks_json, strlen(fuzz_jwks_json), &jwks, &err)
        != PG_OK || pg_jwks_count(jwks) != 2) {
        abort();
    }
    signer = cjose_jwk_import(fuzz_priv_jwk, strlen(fuzz_priv_jwk), &cerr);
    if (signer == NULL) {
        abort();
    }
}

/* ES256-sign payload; returns a malloc'd compact token or NULL. */
static char *
sign_payload(const uint8_t *p, size_t n)
{
    cjose_err cerr;
    cjose_header_t *h = cjose_header_new(&cerr);
    cjose_jws_t *jws = NULL;
    const char *ser = NULL;
    char *out = NULL;

    if (h == NULL) {
        return NULL;
    }
    if (cjose_header_set(h, CJOSE_HDR_ALG, "ES256", &cerr) &&
        cjose_header_set(h, CJOSE_HDR_KID, "fuzz-ec1", &cerr)) {
        jws = cjose_jws_sign(signer, h, p, n, &cerr);
    }
    if (jws != NULL && cjose_jws_export(jws, &ser, &cerr)) {
        out = strdup(ser);
    }
    cjose_jws_release(jws);
    cjose_header_release(h);
    return out;
}

static int
reason_known(const char *r)
{
    static const char *const known[] = {
        "malformed", "alg_not_allowed", "unknown_kid", "bad_signature",
        "bad_iss", "bad_aud", "bad_azp", "expired", "not_yet_valid",
        "iat_missing", "iat_too_old", "nonce_mismatch", "sub_missing", NULL};
    size_t i;

    for (i = 0; r != NULL && known[i] != NULL; i++) {
        if (strcmp(r, known[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pg_idtoken_expect_t exp;
    json_t *claims = NULL;
    const char *reason = NULL;
    pg_err_t err;
    char *signed_tok = NULL;
    const char *tok = (const char *)data;
    size_t toklen = size;
    pg_status_t st;

    init_once();
    memset(&exp, 0, sizeof(exp));
    exp.issuer = "https://idp.example";
    exp.client_id = "client-1";
    exp.nonce = "nonce-1";
    exp.algs = fuzz_algs;
    exp.now = 1700000000;
    exp.clock_skew_s = 60;
    exp.max_age_s = 600;

    if (size > 0 && data[0] == 'S') {
        if (size - 1 > PG_OIDC_MAX_JWT / 2) {
            return 0;
        }
        signed_tok = sign_payload(data + 1, size - 1);
        if (signed_tok == NULL) {
            return 0;
        }
        tok = signed_tok;
        toklen = strlen(signed_tok);
    }
    st = pg_idtoken_validate(tok, toklen, jwks, &exp, &claims, &reason, &err);
    if (st == PG_OK) {
        if (claims == NULL || reason != NULL ||
            !json_is_string(json_object_get(claims, "sub"))) {
            abort();
        }
        json_decref(claims);
    } else if (claims != NULL || !reason_known(reason)) {
        abort();
    }
    free(signed_tok);
    return 0;
}
