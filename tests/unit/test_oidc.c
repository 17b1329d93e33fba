/*
 * Unit tests for include/provgate/oidc.h: discovery parsing, request
 * building, token responses, JWKS parsing and ID token validation.
 *
 * Keys are generated at test time (cjose for RSA/EC, OpenSSL for Ed25519)
 * and tokens are signed with cjose_jws_sign, so every token below is a
 * real signature over exactly the claims under test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <cjose/cjose.h>
#include <openssl/evp.h>
#include "provgate/oidc.h"

/* ---- fixtures ----------------------------------------------------------- */

#define ISSUER "https://idp.example.com"
#define CLIENT "client-1"
#define NONCE "n-0S6_WzA2Mj"
#define NOW ((int64_t)1700000000)
#define SKEW 60
#define MAXAGE 600

typedef struct keys {
    cjose_jwk_t *rsa;        /* provider, kid "rsa1" */
    cjose_jwk_t *rsa2;       /* provider second RSA key, kid "rsa2" */
    cjose_jwk_t *ec;         /* provider P-256, kid "ec1" */
    cjose_jwk_t *ec384;      /* provider P-384, kid "ec384" */
    cjose_jwk_t *evil_rsa;   /* attacker, not in the JWKS */
    EVP_PKEY *ed;            /* provider Ed25519, kid "ed1" */
    char *rsa_pub_json;      /* public JWK text of rsa */
    char *jwks_json;
    pg_jwks_t *jwks;
} keys_t;

static keys_t K;

static const char *const default_algs[] = {"RS256", "PS256", "ES256", "ES384",
                                           "EdDSA", NULL};

static pg_idtoken_expect_t
expect(void)
{
    pg_idtoken_expect_t e;

    memset(&e, 0, sizeof(e));
    e.issuer = ISSUER;
    e.client_id = CLIENT;
    e.nonce = NONCE;
    e.algs = default_algs;
    e.now = NOW;
    e.clock_skew_s = SKEW;
    e.max_age_s = MAXAGE;
    return e;
}

static cjose_jwk_t *
rsa_key(const char *kid)
{
    static const uint8_t e[] = {0x01, 0x00, 0x01};
    cjose_err err;
    cjose_jwk_t *k = cjose_jwk_create_RSA_random(2048, e, sizeof(e), &err);

    assert_non_null(k);
    assert_true(cjose_jwk_set_kid(k, kid, strlen(kid), &err));
    return k;
}

static cjose_jwk_t *
ec_key(cjose_jwk_ec_curve crv, const char *kid)
{
    cjose_err err;
    cjose_jwk_t *k = cjose_jwk_create_EC_random(crv, &err);

    assert_non_null(k);
    assert_true(cjose_jwk_set_kid(k, kid, strlen(kid), &err));
    return k;
}

/* Public JWK of a cjose key as a jansson object (with "use":"sig"). */
static json_t *
pub_jwk(const cjose_jwk_t *k)
{
    cjose_err err;
    char *txt = cjose_jwk_to_json(k, false, &err);
    json_t *o;

    assert_non_null(txt);
    o = json_loads(txt, 0, NULL);
    free(txt);
    assert_non_null(o);
    json_object_set_new(o, "use", json_string("sig"));
    return o;
}

static json_t *
ed_jwk(EVP_PKEY *pk, const char *kid)
{
    unsigned char raw[32];
    size_t rawlen = sizeof(raw);
    char x[64];

    assert_int_equal(EVP_PKEY_get_raw_public_key(pk, raw, &rawlen), 1);
    assert_int_equal(pg_b64url_encode(raw, rawlen, x, sizeof(x)), PG_OK);
    return json_pack("{s:s, s:s, s:s, s:s}", "kty", "OKP", "crv", "Ed25519",
                     "x", x, "kid", kid);
}

static int
setup_keys(void **state)
{
    EVP_PKEY_CTX *pctx;
    json_t *arr, *doc, *rpub;
    pg_err_t err;

    (void)state;
    memset(&K, 0, sizeof(K));
    K.rsa = rsa_key("rsa1");
    K.rsa2 = rsa_key("rsa2");
    K.evil_rsa = rsa_key("rsa1");
    K.ec = ec_key(CJOSE_JWK_EC_P_256, "ec1");
    K.ec384 = ec_key(CJOSE_JWK_EC_P_384, "ec384");
    pctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    assert_non_null(pctx);
    assert_int_equal(EVP_PKEY_keygen_init(pctx), 1);
    assert_int_equal(EVP_PKEY_keygen(pctx, &K.ed), 1);
    EVP_PKEY_CTX_free(pctx);

    rpub = pub_jwk(K.rsa);
    K.rsa_pub_json = json_dumps(rpub, JSON_COMPACT);
    arr = json_array();
    json_array_append_new(arr, rpub);
    json_array_append_new(arr, pub_jwk(K.rsa2));
    json_array_append_new(arr, pub_jwk(K.ec));
    json_array_append_new(arr, pub_jwk(K.ec384));
    json_array_append_new(arr, ed_jwk(K.ed, "ed1"));
    doc = json_pack("{s:o}", "keys", arr);
    K.jwks_json = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    assert_int_equal(pg_jwks_parse(K.jwks_json, strlen(K.jwks_json), &K.jwks,
                                   &err), PG_OK);
    assert_int_equal(pg_jwks_count(K.jwks), 5);
    return 0;
}

static int
teardown_keys(void **state)
{
    (void)state;
    cjose_jwk_release(K.rsa);
    cjose_jwk_release(K.rsa2);
    cjose_jwk_release(K.ec);
    cjose_jwk_release(K.ec384);
    cjose_jwk_release(K.evil_rsa);
    EVP_PKEY_free(K.ed);
    free(K.rsa_pub_json);
    free(K.jwks_json);
    pg_jwks_free(K.jwks);
    return 0;
}

/* Sign raw payload bytes with cjose; kid may be NULL (no kid header). */
static char *
sign_raw(const cjose_jwk_t *k, const char *alg, const char *kid,
         const char *payload, size_t plen)
{
    cjose_err err;
    cjose_header_t *h = cjose_header_new(&err);
    cjose_jws_t *jws;
    const char *ser = NULL;
    char *out;

    assert_non_null(h);
    assert_true(cjose_header_set(h, CJOSE_HDR_ALG, alg, &err));
    if (kid != NULL) {
        assert_true(cjose_header_set(h, CJOSE_HDR_KID, kid, &err));
    }
    jws = cjose_jws_sign(k, h, (const uint8_t *)payload, plen, &err);
    assert_non_null(jws);
    assert_true(cjose_jws_export(jws, &ser, &err));
    out = strdup(ser);
    cjose_jws_release(jws);
    cjose_header_release(h);
    return out;
}

/* Sign claims (stolen reference) as JSON. */
static char *
sign_claims(const cjose_jwk_t *k, const char *alg, const char *kid,
            json_t *claims)
{
    char *txt = json_dumps(claims, JSON_COMPACT);
    char *tok = sign_raw(k, alg, kid, txt, strlen(txt));

    free(txt);
    json_decref(claims);
    return tok;
}

static char *
b64(const void *p, size_t n)
{
    char *o = malloc(pg_b64url_len(n) + 1);

    assert_int_equal(pg_b64url_encode(p, n, o, pg_b64url_len(n) + 1), PG_OK);
    return o;
}

/* Compact token from a literal header JSON, payload JSON and signature
 * bytes (unsigned: for alg none and shape tests). */
static char *
compose(const char *hdr, const char *payload, const char *sig, size_t siglen)
{
    char *h = b64(hdr, strlen(hdr)), *p = b64(payload, strlen(payload));
    char *s = b64(sig, siglen);
    size_t n = strlen(h) + strlen(p) + strlen(s) + 3;
    char *out = malloc(n);

    snprintf(out, n, "%s.%s.%s", h, p, s);
    free(h);
    free(p);
    free(s);
    return out;
}

/* EdDSA token signed with OpenSSL. */
static char *
sign_ed(EVP_PKEY *pk, const char *kid, json_t *claims)
{
    char hdr[128], *txt, *h, *p, *input, *s, *out;
    unsigned char sig[64];
    size_t siglen = sizeof(sig), n;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    snprintf(hdr, sizeof(hdr), "{\"alg\":\"EdDSA\",\"kid\":\"%s\"}", kid);
    txt = json_dumps(claims, JSON_COMPACT);
    json_decref(claims);
    h = b64(hdr, strlen(hdr));
    p = b64(txt, strlen(txt));
    n = strlen(h) + strlen(p) + 2;
    input = malloc(n);
    snprintf(input, n, "%s.%s", h, p);
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, NULL, NULL, pk), 1);
    assert_int_equal(EVP_DigestSign(ctx, sig, &siglen,
                                    (const unsigned char *)input,
                                    strlen(input)), 1);
    EVP_MD_CTX_free(ctx);
    s = b64(sig, siglen);
    n = strlen(input) + strlen(s) + 2;
    out = malloc(n);
    snprintf(out, n, "%s.%s", input, s);
    free(txt);
    free(h);
    free(p);
    free(input);
    free(s);
    return out;
}

static json_t *
claims_base(void)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "iss", ISSUER, "sub",
                     "user-123", "aud", CLIENT, "exp", (json_int_t)(NOW + 300),
                     "iat", (json_int_t)(NOW - 10), "nonce", NONCE);
}

/* The base claims as compact JSON text (malloc'd). */
static char *
claims_text(void)
{
    json_t *c = claims_base();
    char *t = json_dumps(c, JSON_COMPACT);

    json_decref(c);
    return t;
}

static json_t *
claims_with(const char *key, json_t *value)
{
    json_t *c = claims_base();

    if (value == NULL) {
        json_object_del(c, key);
    } else {
        json_object_set_new(c, key, value);
    }
    return c;
}

typedef struct result {
    pg_status_t st;
    const char *reason;
    json_t *claims;
    pg_err_t err;
} result_t;

static result_t
validate_e(const char *tok, const pg_idtoken_expect_t *e)
{
    result_t r;

    memset(&r, 0, sizeof(r));
    r.reason = "unset";
    r.st = pg_idtoken_validate(tok, strlen(tok), K.jwks, e, &r.claims,
                               &r.reason, &r.err);
    return r;
}

static result_t
validate(const char *tok)
{
    pg_idtoken_expect_t e = expect();
    return validate_e(tok, &e);
}

/* Validate tok (freed), expect failure st/reason and no claims. */
static void
expect_fail(char *tok, pg_status_t st, const char *reason)
{
    result_t r = validate(tok);

    if (r.st != st || r.reason == NULL || strcmp(r.reason, reason) != 0) {
        fail_msg("expected %s/%s, got %s/%s (%s)", pg_status_str(st), reason,
                 pg_status_str(r.st), r.reason ? r.reason : "(null)", r.err.msg);
    }
    assert_null(r.claims);
    free(tok);
}

static void
expect_ok(char *tok)
{
    result_t r = validate(tok);

    if (r.st != PG_OK) {
        fail_msg("expected ok, got %s/%s (%s)", pg_status_str(r.st),
                 r.reason ? r.reason : "(null)", r.err.msg);
    }
    assert_non_null(r.claims);
    assert_string_equal(json_string_value(json_object_get(r.claims, "sub")),
                        "user-123");
    json_decref(r.claims);
    free(tok);
}

/* ---- ID token: happy paths ---------------------------------------------- */

static void
test_idtoken_rs256_ok(void **state)
{
    (void)state;
    expect_ok(sign_claims(K.rsa, "RS256", "rsa1", claims_base()));
    expect_ok(sign_claims(K.rsa2, "RS256", "rsa2", claims_base()));
}

static void
test_idtoken_es256_ok(void **state)
{
    (void)state;
    expect_ok(sign_claims(K.ec, "ES256", "ec1", claims_base()));
    expect_ok(sign_claims(K.ec384, "ES384", "ec384", claims_base()));
}

static void
test_idtoken_ps256_ok(void **state)
{
    (void)state;
    expect_ok(sign_claims(K.rsa, "PS256", "rsa1", claims_base()));
}

static void
test_idtoken_eddsa_ok(void **state)
{
    (void)state;
    expect_ok(sign_ed(K.ed, "ed1", claims_base()));
}

static void
test_idtoken_multi_aud_with_azp_ok(void **state)
{
    json_t *c = claims_with("aud", json_pack("[ss]", "other", CLIENT));

    (void)state;
    json_object_set_new(c, "azp", json_string(CLIENT));
    expect_ok(sign_claims(K.rsa, "RS256", "rsa1", c));
    /* aud array with just the client needs no azp */
    expect_ok(sign_claims(K.rsa, "RS256", "rsa1",
                          claims_with("aud", json_pack("[s]", CLIENT))));
}

static void
test_idtoken_boundaries_ok(void **state)
{
    (void)state;
    /* valid while now < exp + skew */
    expect_ok(sign_claims(K.rsa, "RS256", "rsa1",
                          claims_with("exp", json_integer(NOW - SKEW + 1))));
    /* iat exactly max_age + skew ago */
    expect_ok(sign_claims(K.rsa, "RS256", "rsa1",
                          claims_with("iat", json_integer(NOW - MAXAGE - SKEW))));
    /* iat within skew in the future */
    expect_ok(sign_claims(K.rsa, "RS256", "rsa1",
                          claims_with("iat", json_integer(NOW + SKEW))));
    /* nbf within skew */
    expect_ok(sign_claims(K.rsa, "RS256", "rsa1",
                          claims_with("nbf", json_integer(NOW + SKEW))));
    /* real-valued NumericDate */
    expect_ok(sign_claims(K.rsa, "RS256", "rsa1",
                          claims_with("exp", json_real((double)NOW + 300.5))));
}

static void
test_idtoken_no_kid_single_key(void **state)
{
    static const char *const es384_only[] = {"ES384", NULL};
    pg_idtoken_expect_t e = expect();
    char *tok = sign_claims(K.ec384, "ES384", NULL, claims_base());
    result_t r;

    (void)state;
    /* only one P-384 key in the JWKS: selected without kid */
    e.algs = es384_only;
    r = validate_e(tok, &e);
    assert_int_equal(r.st, PG_OK);
    json_decref(r.claims);
    free(tok);
}

static void
test_idtoken_no_kid_ambiguous(void **state)
{
    (void)state;
    /* two RSA keys: no kid means no unique key */
    expect_fail(sign_claims(K.rsa, "RS256", NULL, claims_base()),
                PG_ERR_NOT_FOUND, "unknown_kid");
}

/* ---- ID token: algorithm and key failures ------------------------------- */

static void
test_idtoken_alg_none(void **state)
{
    static const char *const with_none[] = {"RS256", "none", NULL};
    pg_idtoken_expect_t e = expect();
    char *payload = claims_text();
    char *tok;
    result_t r;

    (void)state;
    tok = compose("{\"alg\":\"none\",\"kid\":\"rsa1\"}", payload, "", 0);
    expect_fail(tok, PG_ERR_DENIED, "alg_not_allowed");
    tok = compose("{\"alg\":\"none\"}", payload, "", 0);
    expect_fail(tok, PG_ERR_DENIED, "alg_not_allowed");
    tok = compose("{\"alg\":\"none\"}", payload, "sig", 3);
    expect_fail(tok, PG_ERR_DENIED, "alg_not_allowed");
    /* even when the allow-list names it */
    e.algs = with_none;
    tok = compose("{\"alg\":\"none\",\"kid\":\"rsa1\"}", payload, "", 0);
    r = validate_e(tok, &e);
    assert_int_equal(r.st, PG_ERR_DENIED);
    assert_string_equal(r.reason, "alg_not_allowed");
    assert_null(r.claims);
    free(tok);
    free(payload);
}

static void
test_idtoken_hs256_with_public_key(void **state)
{
    static const char *const with_hs[] = {"RS256", "HS256", NULL};
    pg_idtoken_expect_t e = expect();
    cjose_err cerr;
    cjose_jwk_t *hk;
    char *tok;
    result_t r;

    (void)state;
    /* The classic confusion: HMAC keyed with the provider's public key. */
    hk = cjose_jwk_create_oct_spec((const uint8_t *)K.rsa_pub_json,
                                   strlen(K.rsa_pub_json), &cerr);
    assert_non_null(hk);
    tok = sign_claims(hk, "HS256", "rsa1", claims_base());
    r = validate(tok);
    assert_int_equal(r.st, PG_ERR_DENIED);
    assert_string_equal(r.reason, "alg_not_allowed");
    e.algs = with_hs;
    r = validate_e(tok, &e);
    assert_int_equal(r.st, PG_ERR_DENIED);
    assert_string_equal(r.reason, "alg_not_allowed");
    assert_null(r.claims);
    free(tok);
    tok = sign_claims(hk, "HS512", "rsa1", claims_base());
    expect_fail(tok, PG_ERR_DENIED, "alg_not_allowed");
    cjose_jwk_release(hk);
}

static void
test_idtoken_alg_not_in_allow_list(void **state)
{
    static const char *const rs_only[] = {"RS256", NULL};
    pg_idtoken_expect_t e = expect();
    char *tok = sign_claims(K.ec, "ES256", "ec1", claims_base());
    result_t r;

    (void)state;
    e.algs = rs_only;
    r = validate_e(tok, &e);
    assert_int_equal(r.st, PG_ERR_DENIED);
    assert_string_equal(r.reason, "alg_not_allowed");
    e.algs = NULL;
    r = validate_e(tok, &e);
    assert_int_equal(r.st, PG_ERR_DENIED);
    assert_string_equal(r.reason, "alg_not_allowed");
    free(tok);
    /* RS512 is supported but not in the default list */
    expect_fail(sign_claims(K.rsa, "RS512", "rsa1", claims_base()),
                PG_ERR_DENIED, "alg_not_allowed");
}

static void
test_idtoken_unknown_kid(void **state)
{
    (void)state;
    expect_fail(sign_claims(K.evil_rsa, "RS256", "rsa-new", claims_base()),
                PG_ERR_NOT_FOUND, "unknown_kid");
}

static void
test_idtoken_known_kid_other_key(void **state)
{
    (void)state;
    /* attacker key using the provider's kid */
    expect_fail(sign_claims(K.evil_rsa, "RS256", "rsa1", claims_base()),
                PG_ERR_CRYPTO, "bad_signature");
    /* provider's other key under the wrong kid */
    expect_fail(sign_claims(K.rsa2, "RS256", "rsa1", claims_base()),
                PG_ERR_CRYPTO, "bad_signature");
}

static void
test_idtoken_key_type_mismatch(void **state)
{
    (void)state;
    /* EC signature claiming the RSA key's kid */
    expect_fail(sign_claims(K.ec, "ES256", "rsa1", claims_base()),
                PG_ERR_CRYPTO, "bad_signature");
    /* ES384 under the P-256 key's kid: curve mismatch */
    expect_fail(sign_claims(K.ec384, "ES384", "ec1", claims_base()),
                PG_ERR_CRYPTO, "bad_signature");
}

static void
test_idtoken_tampered_payload(void **state)
{
    char *good = sign_claims(K.rsa, "RS256", "rsa1", claims_base());
    json_t *c = claims_base();
    char *txt, *p, *dot1, *dot2, *tok;
    size_t n;

    (void)state;
    json_object_set_new(c, "sub", json_string("admin"));
    txt = json_dumps(c, JSON_COMPACT);
    json_decref(c);
    p = b64(txt, strlen(txt));
    dot1 = strchr(good, '.');
    dot2 = strchr(dot1 + 1, '.');
    n = strlen(good) + strlen(p) + 1;
    tok = malloc(n);
    snprintf(tok, n, "%.*s.%s%s", (int)(dot1 - good), good, p, dot2);
    expect_fail(tok, PG_ERR_CRYPTO, "bad_signature");
    free(txt);
    free(p);
    free(good);
}

static void
test_idtoken_signature_bitflips(void **state)
{
    char *good = sign_claims(K.ec, "ES256", "ec1", claims_base());
    char *dot2 = strrchr(good, '.');
    size_t start = (size_t)(dot2 - good) + 1, n = strlen(good), i;

    (void)state;
    for (i = start; i + 1 < n; i++) {  /* last char may be non-canonical */
        char *t = strdup(good);
        t[i] = t[i] == 'A' ? 'B' : 'A';
        expect_fail(t, PG_ERR_CRYPTO, "bad_signature");
    }
    free(good);
}

/* ---- ID token: claim failures ------------------------------------------- */

static void
test_idtoken_expired(void **state)
{
    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("exp", json_integer(NOW - SKEW))),
                PG_ERR_DENIED, "expired");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("exp", json_integer(NOW - 3600))),
                PG_ERR_DENIED, "expired");
}

static void
test_idtoken_exp_missing(void **state)
{
    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1", claims_with("exp", NULL)),
                PG_ERR_DENIED, "expired");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("exp", json_string("9999999999"))),
                PG_ERR_DENIED, "expired");
}

static void
test_idtoken_iat_too_old(void **state)
{
    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("iat",
                                        json_integer(NOW - MAXAGE - SKEW - 1))),
                PG_ERR_DENIED, "iat_too_old");
}

static void
test_idtoken_iat_future(void **state)
{
    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("iat", json_integer(NOW + SKEW + 1))),
                PG_ERR_DENIED, "not_yet_valid");
}

static void
test_idtoken_iat_missing(void **state)
{
    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1", claims_with("iat", NULL)),
                PG_ERR_DENIED, "iat_missing");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("iat", json_string("now"))),
                PG_ERR_DENIED, "iat_missing");
}

static void
test_idtoken_nbf_future(void **state)
{
    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("nbf", json_integer(NOW + SKEW + 1))),
                PG_ERR_DENIED, "not_yet_valid");
}

static void
test_idtoken_wrong_iss(void **state)
{
    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("iss", json_string("https://evil.example"))),
                PG_ERR_DENIED, "bad_iss");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("iss", json_string(ISSUER "/"))),
                PG_ERR_DENIED, "bad_iss");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1", claims_with("iss", NULL)),
                PG_ERR_DENIED, "bad_iss");
}

static void
test_idtoken_aud_missing_client(void **state)
{
    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("aud", json_string("client-2"))),
                PG_ERR_DENIED, "bad_aud");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("aud", json_pack("[ss]", "a", "b"))),
                PG_ERR_DENIED, "bad_aud");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1", claims_with("aud", NULL)),
                PG_ERR_DENIED, "bad_aud");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("aud", json_array())),
                PG_ERR_DENIED, "bad_aud");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("aud", json_pack("[si]", CLIENT, 1))),
                PG_ERR_DENIED, "bad_aud");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("aud", json_string(CLIENT "x"))),
                PG_ERR_DENIED, "bad_aud");
}

static void
test_idtoken_multi_aud_without_azp(void **state)
{
    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("aud", json_pack("[ss]", CLIENT, "other"))),
                PG_ERR_DENIED, "bad_azp");
}

static void
test_idtoken_azp_mismatch(void **state)
{
    json_t *c;

    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("azp", json_string("other"))),
                PG_ERR_DENIED, "bad_azp");
    c = claims_with("aud", json_pack("[ss]", CLIENT, "other"));
    json_object_set_new(c, "azp", json_string("other"));
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1", c), PG_ERR_DENIED, "bad_azp");
}

static void
test_idtoken_nonce_mismatch(void **state)
{
    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("nonce", json_string("other-nonce"))),
                PG_ERR_DENIED, "nonce_mismatch");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("nonce", json_string(NONCE "x"))),
                PG_ERR_DENIED, "nonce_mismatch");
}

static void
test_idtoken_nonce_missing(void **state)
{
    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1", claims_with("nonce", NULL)),
                PG_ERR_DENIED, "nonce_mismatch");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("nonce", json_integer(1))),
                PG_ERR_DENIED, "nonce_mismatch");
}

static void
test_idtoken_sub_missing(void **state)
{
    char longsub[300];

    (void)state;
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1", claims_with("sub", NULL)),
                PG_ERR_DENIED, "sub_missing");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("sub", json_string(""))),
                PG_ERR_DENIED, "sub_missing");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("sub", json_integer(42))),
                PG_ERR_DENIED, "sub_missing");
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("sub", json_string("a\nb"))),
                PG_ERR_DENIED, "sub_missing");
    memset(longsub, 'a', sizeof(longsub) - 1);
    longsub[sizeof(longsub) - 1] = '\0';
    expect_fail(sign_claims(K.rsa, "RS256", "rsa1",
                            claims_with("sub", json_string(longsub))),
                PG_ERR_DENIED, "sub_missing");
}

/* ---- ID token: shape failures ------------------------------------------- */

static void
test_idtoken_jwe_shaped(void **state)
{
    (void)state;
    expect_fail(strdup("eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ."
                       "OKOawDo13gRp2ojaHV7LFpZcgV7T6DVZKTyKOMTYUmKoTCVJRgckCL9kiMT03JGe"
                       ".48V1_ALb6US04U3b.5eym8TW_c8SuK0ltJ3rpYIzOeDQz7TALvtu6UG9oMo4"
                       ".XFBoMYUZodetZdvTiFvSkQ"),
                PG_ERR_INVALID, "malformed");
    /* a valid JWS with two extra parts appended */
    {
        char *good = sign_claims(K.rsa, "RS256", "rsa1", claims_base());
        size_t n = strlen(good) + 8;
        char *t = malloc(n);
        snprintf(t, n, "%s.AA.AA", good);
        expect_fail(t, PG_ERR_INVALID, "malformed");
        free(good);
    }
}

static void
test_idtoken_oversized(void **state)
{
    char *tok = malloc(PG_OIDC_MAX_JWT + 2);
    char *good = sign_claims(K.rsa, "RS256", "rsa1", claims_base());
    result_t r;

    (void)state;
    memset(tok, 'A', PG_OIDC_MAX_JWT + 1);
    memcpy(tok, good, strlen(good));
    tok[PG_OIDC_MAX_JWT + 1] = '\0';
    r = validate(tok);
    assert_int_equal(r.st, PG_ERR_TOO_LARGE);
    assert_string_equal(r.reason, "malformed");
    assert_null(r.claims);
    free(tok);
    free(good);
}

static void
test_idtoken_garbage(void **state)
{
    static const char *const bad[] = {
        "", "garbage", "a.b", "..", "a..", ".b.c", "a.b.", "!!!.x.y",
        "eyJhbGciOiJSUzI1NiJ9",                          /* header only */
        "eyJhbGciOiJSUzI1NiJ9.e30",                      /* no signature part */
        "bm90IGpzb24.e30.AAAA",                          /* header not JSON */
        "WyJSUzI1NiJd.e30.AAAA",                         /* header an array */
        "e30.e30.AAAA",                                  /* header without alg */
        "eyJhbGciOjF9.e30.AAAA",                         /* alg not a string */
        "eyJhbGciOiJSUzI1NiJ9.e30=.AAAA",                /* padding char */
        "eyJhbGciOiJSUzI1NiJ9 .e30.AAAA",                /* space */
        "eyJhbGciOiJSUzI1NiJ9.e30.AA+A",                 /* std alphabet */
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        result_t r = validate(bad[i]);
        if (r.st != PG_ERR_INVALID || strcmp(r.reason, "malformed") != 0) {
            fail_msg("\"%s\": got %s/%s", bad[i], pg_status_str(r.st),
                     r.reason ? r.reason : "(null)");
        }
        assert_null(r.claims);
    }
}

static void
test_idtoken_crit_and_typ(void **state)
{
    char *payload = claims_text();

    (void)state;
    expect_fail(compose("{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"crit\":[\"exp\"],"
                        "\"exp\":1}", payload, "sig", 3),
                PG_ERR_INVALID, "malformed");
    expect_fail(compose("{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"typ\":\"at+jwt\"}",
                        payload, "sig", 3),
                PG_ERR_INVALID, "malformed");
    expect_fail(compose("{\"alg\":\"RS256\",\"kid\":7}", payload, "sig", 3),
                PG_ERR_INVALID, "malformed");
    expect_fail(compose("{\"alg\":\"RS256\",\"alg\":\"none\"}", payload, "s", 1),
                PG_ERR_INVALID, "malformed");
    free(payload);
}

static void
test_idtoken_payload_not_object_or_dup(void **state)
{
    static const char dup[] =
        "{\"iss\":\"https://evil.example\",\"iss\":\"" ISSUER "\",\"sub\":\"u\"}";

    (void)state;
    /* correctly signed, but the payload is not a JSON object */
    expect_fail(sign_raw(K.rsa, "RS256", "rsa1", "[1,2]", 5), PG_ERR_INVALID,
                "malformed");
    expect_fail(sign_raw(K.rsa, "RS256", "rsa1", "not json", 8), PG_ERR_INVALID,
                "malformed");
    /* duplicate claims are refused, not resolved */
    expect_fail(sign_raw(K.rsa, "RS256", "rsa1", dup, strlen(dup)),
                PG_ERR_INVALID, "malformed");
}

/* ---- JWKS ---------------------------------------------------------------- */

static void
test_jwks_parse_filters(void **state)
{
    json_t *arr = json_array(), *doc, *priv, *enc;
    cjose_err cerr;
    cjose_jwk_t *small = NULL;
    static const uint8_t e3[] = {1, 0, 1};
    char *txt, *ptxt;
    pg_jwks_t *j = NULL;
    pg_err_t err;

    (void)state;
    /* symmetric key: skipped */
    json_array_append_new(arr, json_pack("{s:s, s:s, s:s}", "kty", "oct", "k",
                                         "c2VjcmV0c2VjcmV0c2VjcmV0", "kid", "h"));
    /* encryption key: skipped */
    enc = pub_jwk(K.rsa2);
    json_object_set_new(enc, "use", json_string("enc"));
    json_object_set_new(enc, "kid", json_string("enc1"));
    json_array_append_new(arr, enc);
    /* HS256 alg on an RSA key: skipped */
    enc = pub_jwk(K.rsa2);
    json_object_set_new(enc, "alg", json_string("HS256"));
    json_array_append_new(arr, enc);
    /* X25519 and unknown kty: skipped */
    json_array_append_new(arr, json_pack("{s:s, s:s, s:s}", "kty", "OKP", "crv",
                                         "X25519", "x", "AAAA"));
    json_array_append_new(arr, json_pack("{s:s}", "kty", "XYZ"));
    json_array_append_new(arr, json_string("not an object"));
    /* 1024-bit RSA: too weak, skipped */
    small = cjose_jwk_create_RSA_random(1024, e3, 3, &cerr);
    assert_non_null(small);
    json_array_append_new(arr, pub_jwk(small));
    cjose_jwk_release(small);
    /* a private JWK: only the public part is kept */
    ptxt = cjose_jwk_to_json(K.rsa, true, &cerr);
    priv = json_loads(ptxt, 0, NULL);
    free(ptxt);
    json_array_append_new(arr, priv);
    doc = json_pack("{s:o}", "keys", arr);
    txt = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    assert_int_equal(pg_jwks_parse(txt, strlen(txt), &j, &err), PG_OK);
    assert_int_equal(pg_jwks_count(j), 1);
    free(txt);
    /* and it verifies the provider's tokens */
    {
        pg_idtoken_expect_t e = expect();
        char *tok = sign_claims(K.rsa, "RS256", "rsa1", claims_base());
        json_t *claims = NULL;
        const char *reason = NULL;
        assert_int_equal(pg_idtoken_validate(tok, strlen(tok), j, &e, &claims,
                                             &reason, &err), PG_OK);
        json_decref(claims);
        free(tok);
        /* the skipped HS256 "key" must not be usable for anything */
        tok = sign_claims(K.rsa2, "RS256", "h", claims_base());
        assert_int_equal(pg_idtoken_validate(tok, strlen(tok), j, &e, &claims,
                                             &reason, &err), PG_ERR_NOT_FOUND);
        free(tok);
    }
    pg_jwks_free(j);
}

static void
test_jwks_alg_pinned_on_key(void **state)
{
    json_t *k = pub_jwk(K.rsa), *doc;
    char *txt, *tok;
    pg_jwks_t *j = NULL;
    pg_err_t err;
    pg_idtoken_expect_t e = expect();
    json_t *claims = NULL;
    const char *reason = NULL;

    (void)state;
    json_object_set_new(k, "alg", json_string("RS256"));
    doc = json_pack("{s:[o]}", "keys", k);
    txt = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    assert_int_equal(pg_jwks_parse(txt, strlen(txt), &j, &err), PG_OK);
    free(txt);
    /* the key says RS256: a PS256 token with it is refused */
    tok = sign_claims(K.rsa, "PS256", "rsa1", claims_base());
    assert_int_equal(pg_idtoken_validate(tok, strlen(tok), j, &e, &claims,
                                         &reason, &err), PG_ERR_CRYPTO);
    assert_string_equal(reason, "bad_signature");
    free(tok);
    pg_jwks_free(j);
}

static void
test_jwks_without_kids(void **state)
{
    json_t *k = pub_jwk(K.ec), *doc;
    char *txt, *tok;
    pg_jwks_t *j = NULL;
    pg_err_t err;
    pg_idtoken_expect_t e = expect();
    json_t *claims = NULL;
    const char *reason = NULL;

    (void)state;
    json_object_del(k, "kid");
    doc = json_pack("{s:[o]}", "keys", k);
    txt = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    assert_int_equal(pg_jwks_parse(txt, strlen(txt), &j, &err), PG_OK);
    free(txt);
    /* the provider publishes no kids: a token's kid cannot be matched, the
     * unique fitting key is used instead */
    tok = sign_claims(K.ec, "ES256", "some-kid", claims_base());
    assert_int_equal(pg_idtoken_validate(tok, strlen(tok), j, &e, &claims,
                                         &reason, &err), PG_OK);
    json_decref(claims);
    claims = NULL;
    free(tok);
    /* ...and it still has to be that key's signature */
    {
        cjose_err cerr;
        cjose_jwk_t *other = cjose_jwk_create_EC_random(CJOSE_JWK_EC_P_256, &cerr);
        tok = sign_claims(other, "ES256", "some-kid", claims_base());
        cjose_jwk_release(other);
    }
    assert_int_equal(pg_idtoken_validate(tok, strlen(tok), j, &e, &claims,
                                         &reason, &err), PG_ERR_CRYPTO);
    assert_string_equal(reason, "bad_signature");
    assert_null(claims);
    free(tok);
    pg_jwks_free(j);
}

static void
test_jwks_invalid(void **state)
{
    pg_jwks_t *j = (pg_jwks_t *)&j;
    pg_err_t err;
    char *big;

    (void)state;
#define JP(s) pg_jwks_parse(s, strlen(s), &j, &err)
    assert_int_equal(JP("not json"), PG_ERR_INVALID);
    assert_null(j);
    assert_int_equal(JP("[]"), PG_ERR_INVALID);
    assert_int_equal(JP("{}"), PG_ERR_INVALID);
    assert_int_equal(JP("{\"keys\":{}}"), PG_ERR_INVALID);
    assert_int_equal(JP("{\"keys\":[]}"), PG_ERR_INVALID);
    assert_int_equal(JP("{\"keys\":[{\"kty\":\"oct\",\"k\":\"AAAA\"}]}"),
                     PG_ERR_INVALID);
    assert_int_equal(JP("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}"),
                     PG_ERR_INVALID);
    assert_int_equal(JP("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AAAA\","
                        "\"y\":\"AAAA\"}]}"), PG_ERR_INVALID);
    assert_int_equal(JP("{\"keys\":[],\"keys\":[]}"), PG_ERR_INVALID);
    /* Malformed base64url in EC coordinates: cjose 0.6.2.1 assert()s on
     * "=" after 4n+1 characters, so these must be refused before import
     * (found by fuzz_jwks). */
    assert_int_equal(JP("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\","
                        "\"x\":\"ec6AqHOpVKT0iFMvesfLyavQp=wLoJvQNiXphr7AJMU\","
                        "\"y\":\"ltucI7ySq0nbHK1B4dsbJqW8IIb4CopJ__1lOOw2cEA\"}]}"),
                     PG_ERR_INVALID);
    assert_int_equal(JP("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\","
                        "\"x\":\"ec6AqHOpVKT0iFMvesfLyavQpFwLoJvQNiXphr7AJMU\","
                        "\"y\":\"ltucI7ySq0nbHK1B4dsbJqW8IIb4CopJ__1lOOw2cEAA\"}]}"),
                     PG_ERR_INVALID);
    assert_int_equal(JP("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AAAAA\",\"e\":\"AQAB\"}]}"),
                     PG_ERR_INVALID);
#undef JP
    big = malloc(PG_OIDC_MAX_JWKS + 1);
    memset(big, ' ', PG_OIDC_MAX_JWKS + 1);
    assert_int_equal(pg_jwks_parse(big, PG_OIDC_MAX_JWKS + 1, &j, &err),
                     PG_ERR_TOO_LARGE);
    free(big);
    assert_null(j);
    pg_jwks_free(NULL);
    assert_int_equal(pg_jwks_count(NULL), 0);
}

/* ---- discovery ----------------------------------------------------------- */

static pg_oidc_idp_cfg_t
cfg_base(void)
{
    static char *scopes[] = {"openid", "email", "profile", NULL};
    pg_oidc_idp_cfg_t c;

    memset(&c, 0, sizeof(c));
    c.name = "corp";
    c.issuer = ISSUER;
    c.client_id = CLIENT;
    c.client_secret = "s3cret";
    c.token_auth = PG_TOKEN_AUTH_BASIC;
    c.redirect_uri = "https://app.example.com/_provgate/callback";
    c.scopes = scopes;
    return c;
}

static json_t *
disco_base(void)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:[s,s]}",
                     "issuer", ISSUER,
                     "authorization_endpoint", ISSUER "/authorize",
                     "token_endpoint", ISSUER "/token",
                     "jwks_uri", ISSUER "/jwks",
                     "userinfo_endpoint", ISSUER "/userinfo",
                     "end_session_endpoint", ISSUER "/logout",
                     "code_challenge_methods_supported", "plain", "S256");
}

static pg_status_t
meta_parse_json(json_t *doc, const pg_oidc_idp_cfg_t *cfg, pg_oidc_meta_t *m)
{
    char *txt = json_dumps(doc, JSON_COMPACT);
    pg_err_t err;
    pg_status_t st = pg_oidc_meta_parse(txt, strlen(txt), cfg, m, &err);

    free(txt);
    json_decref(doc);
    return st;
}

static void
test_meta_ok(void **state)
{
    pg_oidc_idp_cfg_t c = cfg_base();
    pg_oidc_meta_t m;
    json_t *d;

    (void)state;
    assert_int_equal(meta_parse_json(disco_base(), &c, &m), PG_OK);
    assert_string_equal(m.issuer, ISSUER);
    assert_string_equal(m.authorization_endpoint, ISSUER "/authorize");
    assert_string_equal(m.token_endpoint, ISSUER "/token");
    assert_string_equal(m.jwks_uri, ISSUER "/jwks");
    assert_string_equal(m.userinfo_endpoint, ISSUER "/userinfo");
    assert_string_equal(m.end_session_endpoint, ISSUER "/logout");
    pg_oidc_meta_clear(&m);
    assert_null(m.issuer);

    /* optional members absent; PKCE field absent */
    d = disco_base();
    json_object_del(d, "userinfo_endpoint");
    json_object_del(d, "end_session_endpoint");
    json_object_del(d, "code_challenge_methods_supported");
    assert_int_equal(meta_parse_json(d, &c, &m), PG_OK);
    assert_null(m.userinfo_endpoint);
    assert_null(m.end_session_endpoint);
    pg_oidc_meta_clear(&m);

    /* loopback http provider */
    c.issuer = "http://127.0.0.1:8080/realms/x";
    d = json_pack("{s:s, s:s, s:s, s:s}", "issuer", c.issuer,
                  "authorization_endpoint", "http://127.0.0.1:8080/auth",
                  "token_endpoint", "http://localhost:8080/token",
                  "jwks_uri", "http://[::1]:8080/jwks");
    assert_int_equal(meta_parse_json(d, &c, &m), PG_OK);
    pg_oidc_meta_clear(&m);
}

static void
test_meta_issuer_mismatch(void **state)
{
    pg_oidc_idp_cfg_t c = cfg_base();
    pg_oidc_meta_t m;
    json_t *d;

    (void)state;
    d = disco_base();
    json_object_set_new(d, "issuer", json_string(ISSUER "/"));
    assert_int_equal(meta_parse_json(d, &c, &m), PG_ERR_INVALID);
    assert_null(m.issuer);
    assert_null(m.token_endpoint);
    d = disco_base();
    json_object_set_new(d, "issuer", json_string("https://IDP.example.com"));
    assert_int_equal(meta_parse_json(d, &c, &m), PG_ERR_INVALID);
    d = disco_base();
    json_object_del(d, "issuer");
    assert_int_equal(meta_parse_json(d, &c, &m), PG_ERR_INVALID);
}

static void
test_meta_required_endpoints(void **state)
{
    static const char *const req[] = {"authorization_endpoint", "token_endpoint",
                                      "jwks_uri"};
    pg_oidc_idp_cfg_t c = cfg_base();
    pg_oidc_meta_t m;
    size_t i;

    (void)state;
    for (i = 0; i < 3; i++) {
        json_t *d = disco_base();
        json_object_del(d, req[i]);
        assert_int_equal(meta_parse_json(d, &c, &m), PG_ERR_INVALID);
        assert_null(m.authorization_endpoint);
        d = disco_base();
        json_object_set_new(d, req[i], json_integer(1));
        assert_int_equal(meta_parse_json(d, &c, &m), PG_ERR_INVALID);
    }
}

static void
test_meta_endpoint_schemes(void **state)
{
    static const char *const bad[] = {
        "http://idp.example.com/token",       /* plain http, not loopback */
        "http://127.0.0.2/token",
        "http://localhost.evil.example/token",
        "http://127.0.0.1@evil.example/token",
        "https://user:pw@idp.example.com/token",
        "ftp://idp.example.com/token",
        "javascript:alert(1)",
        "/token",
        "https://",
        "https:///token",
        "https://idp.example.com/token#frag",
        "https://idp.example.com/to ken",
        "https://idp.example.com:port/token",
        "https://idp.example.com/\r\ntoken",
    };
    pg_oidc_idp_cfg_t c = cfg_base();
    pg_oidc_meta_t m;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *d = disco_base();
        json_object_set_new(d, "token_endpoint", json_string(bad[i]));
        if (meta_parse_json(d, &c, &m) != PG_ERR_INVALID) {
            fail_msg("accepted token_endpoint \"%s\"", bad[i]);
        }
    }
    /* optional endpoints are checked too */
    {
        json_t *d = disco_base();
        json_object_set_new(d, "end_session_endpoint",
                            json_string("http://evil.example/logout"));
        assert_int_equal(meta_parse_json(d, &c, &m), PG_ERR_INVALID);
    }
}

static void
test_meta_pkce(void **state)
{
    pg_oidc_idp_cfg_t c = cfg_base();
    pg_oidc_meta_t m;
    json_t *d;

    (void)state;
    d = disco_base();
    json_object_set_new(d, "code_challenge_methods_supported",
                        json_pack("[s]", "plain"));
    assert_int_equal(meta_parse_json(d, &c, &m), PG_ERR_INVALID);
    d = disco_base();
    json_object_set_new(d, "code_challenge_methods_supported", json_array());
    assert_int_equal(meta_parse_json(d, &c, &m), PG_ERR_INVALID);
    d = disco_base();
    json_object_set_new(d, "code_challenge_methods_supported",
                        json_string("S256"));
    assert_int_equal(meta_parse_json(d, &c, &m), PG_ERR_INVALID);
}

static void
test_meta_bad_documents(void **state)
{
    pg_oidc_idp_cfg_t c = cfg_base();
    pg_oidc_meta_t m;
    pg_err_t err;
    char *big;

    (void)state;
    assert_int_equal(pg_oidc_meta_parse("nope", 4, &c, &m, &err), PG_ERR_INVALID);
    assert_int_equal(pg_oidc_meta_parse("[]", 2, &c, &m, &err), PG_ERR_INVALID);
    {
        static const char dup[] = "{\"issuer\":\"" ISSUER "\",\"issuer\":\""
                                  ISSUER "\"}";
        assert_int_equal(pg_oidc_meta_parse(dup, strlen(dup), &c, &m, &err),
                         PG_ERR_INVALID);
    }
    big = malloc(PG_OIDC_MAX_DISCOVERY + 1);
    memset(big, ' ', PG_OIDC_MAX_DISCOVERY + 1);
    assert_int_equal(pg_oidc_meta_parse(big, PG_OIDC_MAX_DISCOVERY + 1, &c, &m,
                                        &err), PG_ERR_TOO_LARGE);
    free(big);
}

/* ---- requests ------------------------------------------------------------ */

static void
check_param(const char *url, const char *key, const char *want)
{
    const char *q = strchr(url, '?');
    char *v;

    assert_non_null(q);
    v = pg_query_param(q + 1, strlen(q + 1), key);
    if (want == NULL) {
        assert_null(v);
        return;
    }
    if (v == NULL || strcmp(v, want) != 0) {
        fail_msg("%s: got \"%s\", want \"%s\" in %s", key, v ? v : "(null)",
                 want, url);
    }
    free(v);
}

static void
test_auth_url(void **state)
{
    pg_oidc_idp_cfg_t c = cfg_base();
    pg_oidc_meta_t m;
    char *url = NULL;

    (void)state;
    memset(&m, 0, sizeof(m));
    m.authorization_endpoint = ISSUER "/authorize";
    c.claims_request = "{\"id_token\":{\"email\":{\"essential\":true}}}";
    assert_int_equal(pg_oidc_auth_url(&m, &c, "st&te=1", "n/+nce", "chal-lenge_1",
                                      &url), PG_OK);
    assert_memory_equal(url, ISSUER "/authorize?response_type=code&client_id=",
                        strlen(ISSUER "/authorize?response_type=code&client_id="));
    check_param(url, "response_type", "code");
    check_param(url, "client_id", CLIENT);
    check_param(url, "redirect_uri", "https://app.example.com/_provgate/callback");
    check_param(url, "scope", "openid email profile");
    check_param(url, "state", "st&te=1");
    check_param(url, "nonce", "n/+nce");
    check_param(url, "code_challenge", "chal-lenge_1");
    check_param(url, "code_challenge_method", "S256");
    check_param(url, "claims", c.claims_request);
    /* encoded: no raw separators leak from values */
    assert_non_null(strstr(url, "state=st%26te%3D1&"));
    assert_non_null(strstr(url, "scope=openid%20email%20profile&"));
    assert_null(strchr(url, ' '));
    free(url);

    /* endpoint that already has a query */
    m.authorization_endpoint = ISSUER "/authorize?tenant=a";
    c.claims_request = NULL;
    assert_int_equal(pg_oidc_auth_url(&m, &c, "s", "n", "c", &url), PG_OK);
    assert_memory_equal(url, ISSUER "/authorize?tenant=a&response_type=code&",
                        strlen(ISSUER "/authorize?tenant=a&response_type=code&"));
    check_param(url, "tenant", "a");
    check_param(url, "claims", NULL);
    free(url);
    m.authorization_endpoint = ISSUER "/authorize?";
    assert_int_equal(pg_oidc_auth_url(&m, &c, "s", "n", "c", &url), PG_OK);
    assert_memory_equal(url, ISSUER "/authorize?response_type=code&",
                        strlen(ISSUER "/authorize?response_type=code&"));
    free(url);

    /* missing inputs */
    assert_int_equal(pg_oidc_auth_url(&m, &c, "", "n", "c", &url), PG_ERR_INVALID);
    assert_null(url);
    assert_int_equal(pg_oidc_auth_url(&m, &c, "s", NULL, "c", &url),
                     PG_ERR_INVALID);
}

static void
test_token_request_basic(void **state)
{
    pg_oidc_idp_cfg_t c = cfg_base();
    char *body = NULL, *auth = NULL, *v;
    unsigned char dec[256];
    int n;
    static const char prefix[] = "Authorization: Basic ";

    (void)state;
    c.client_id = "my client:1";
    c.client_secret = "p@ss w/rd+%";
    assert_int_equal(pg_oidc_token_request(&c, "the code", "verif_ier", &body,
                                           &auth), PG_OK);
    v = pg_query_param(body, strlen(body), "grant_type");
    assert_string_equal(v, "authorization_code");
    free(v);
    v = pg_query_param(body, strlen(body), "code");
    assert_string_equal(v, "the code");
    free(v);
    v = pg_query_param(body, strlen(body), "redirect_uri");
    assert_string_equal(v, c.redirect_uri);
    free(v);
    v = pg_query_param(body, strlen(body), "code_verifier");
    assert_string_equal(v, "verif_ier");
    free(v);
    v = pg_query_param(body, strlen(body), "client_id");
    assert_string_equal(v, "my client:1");
    free(v);
    assert_null(pg_query_param(body, strlen(body), "client_secret"));
    assert_null(strstr(body, "p@ss"));
    /* RFC 6749 2.3.1: base64(form-encode(id) ":" form-encode(secret)) */
    assert_non_null(auth);
    assert_memory_equal(auth, prefix, strlen(prefix));
    n = EVP_DecodeBlock(dec, (const unsigned char *)auth + strlen(prefix),
                        (int)strlen(auth + strlen(prefix)));
    assert_true(n > 0);
    while (n > 0 && dec[n - 1] == '\0') {   /* EVP_DecodeBlock keeps pad bytes */
        n--;
    }
    dec[n] = '\0';
    assert_string_equal((char *)dec, "my%20client%3A1:p%40ss%20w%2Frd%2B%25");
    free(body);
    free(auth);
}

static void
test_token_request_post(void **state)
{
    pg_oidc_idp_cfg_t c = cfg_base();
    char *body = NULL, *auth = (char *)"x", *v;

    (void)state;
    c.token_auth = PG_TOKEN_AUTH_POST;
    c.client_secret = "a&b=c";
    assert_int_equal(pg_oidc_token_request(&c, "code1", "ver1", &body, &auth),
                     PG_OK);
    assert_null(auth);
    v = pg_query_param(body, strlen(body), "client_secret");
    assert_string_equal(v, "a&b=c");
    free(v);
    v = pg_query_param(body, strlen(body), "client_id");
    assert_string_equal(v, CLIENT);
    free(v);
    assert_string_equal(body, "grant_type=authorization_code&code=code1&"
                              "redirect_uri=https%3A%2F%2Fapp.example.com%2F_provgate"
                              "%2Fcallback&code_verifier=ver1&client_id=client-1&"
                              "client_secret=a%26b%3Dc");
    free(body);

    c.client_secret = NULL;
    assert_int_equal(pg_oidc_token_request(&c, "code1", "ver1", &body, &auth),
                     PG_ERR_CONFIG);
    assert_null(body);
    assert_null(auth);
    c.client_secret = "x";
    assert_int_equal(pg_oidc_token_request(&c, "", "ver1", &body, &auth),
                     PG_ERR_INVALID);
}

static void
test_token_response(void **state)
{
    char *tok = NULL;
    pg_err_t err;
    char *big;

    (void)state;
#define TR(st, s) pg_oidc_token_response(st, s, strlen(s), &tok, &err)
    assert_int_equal(TR(200, "{\"access_token\":\"at\",\"token_type\":\"Bearer\","
                             "\"id_token\":\"a.b.c\"}"), PG_OK);
    assert_string_equal(tok, "a.b.c");
    free(tok);
    memset(&err, 0, sizeof(err));
    assert_int_equal(TR(400, "{\"error\":\"invalid_grant\","
                             "\"error_description\":\"code used\"}"),
                     PG_ERR_DENIED);
    assert_null(tok);
    assert_non_null(strstr(err.msg, "invalid_grant"));
    assert_int_equal(TR(200, "{\"error\":\"access_denied\",\"id_token\":\"a.b.c\"}"),
                     PG_ERR_DENIED);
    assert_null(tok);
    assert_non_null(strstr(err.msg, "access_denied"));
    assert_int_equal(TR(500, "<html>oops</html>"), PG_ERR_DENIED);
    assert_int_equal(TR(401, ""), PG_ERR_DENIED);
    /* provider text is sanitised before it reaches err */
    assert_int_equal(TR(400, "{\"error\":\"bad\\r\\nX-Injected: 1\"}"),
                     PG_ERR_DENIED);
    assert_null(strchr(err.msg, '\n'));
    assert_null(strchr(err.msg, '\r'));
    assert_int_equal(TR(200, "{\"access_token\":\"at\"}"), PG_ERR_INVALID);
    assert_int_equal(TR(200, "{\"id_token\":\"\"}"), PG_ERR_INVALID);
    assert_int_equal(TR(200, "{\"id_token\":5}"), PG_ERR_INVALID);
    assert_int_equal(TR(200, "not json"), PG_ERR_INVALID);
    assert_int_equal(TR(200, "[\"id_token\"]"), PG_ERR_INVALID);
    assert_null(tok);
#undef TR
    big = malloc(PG_OIDC_MAX_TOKEN_RESPONSE + 1);
    memset(big, ' ', PG_OIDC_MAX_TOKEN_RESPONSE + 1);
    assert_int_equal(pg_oidc_token_response(200, big,
                                            PG_OIDC_MAX_TOKEN_RESPONSE + 1, &tok,
                                            &err), PG_ERR_TOO_LARGE);
    free(big);
}

static void
test_logout_url(void **state)
{
    pg_oidc_idp_cfg_t c = cfg_base();
    pg_oidc_meta_t m;
    char *url = (char *)"x";

    (void)state;
    memset(&m, 0, sizeof(m));
    assert_int_equal(pg_oidc_logout_url(&m, &c, "a.b.c", "st", &url),
                     PG_ERR_NOT_FOUND);
    assert_null(url);
    m.end_session_endpoint = ISSUER "/logout";
    c.post_logout_redirect_uri = "https://app.example.com/bye?x=1";
    assert_int_equal(pg_oidc_logout_url(&m, &c, "a.b.c", "st 1", &url), PG_OK);
    assert_memory_equal(url, ISSUER "/logout?", strlen(ISSUER "/logout?"));
    check_param(url, "id_token_hint", "a.b.c");
    check_param(url, "post_logout_redirect_uri", "https://app.example.com/bye?x=1");
    check_param(url, "state", "st 1");
    check_param(url, "client_id", CLIENT);
    free(url);
    c.post_logout_redirect_uri = NULL;
    m.end_session_endpoint = ISSUER "/logout?t=1";
    assert_int_equal(pg_oidc_logout_url(&m, &c, NULL, NULL, &url), PG_OK);
    assert_string_equal(url, ISSUER "/logout?t=1&client_id=client-1");
    free(url);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idtoken_rs256_ok),
        cmocka_unit_test(test_idtoken_es256_ok),
        cmocka_unit_test(test_idtoken_ps256_ok),
        cmocka_unit_test(test_idtoken_eddsa_ok),
        cmocka_unit_test(test_idtoken_multi_aud_with_azp_ok),
        cmocka_unit_test(test_idtoken_boundaries_ok),
        cmocka_unit_test(test_idtoken_no_kid_single_key),
        cmocka_unit_test(test_idtoken_no_kid_ambiguous),
        cmocka_unit_test(test_idtoken_alg_none),
        cmocka_unit_test(test_idtoken_hs256_with_public_key),
        cmocka_unit_test(test_idtoken_alg_not_in_allow_list),
        cmocka_unit_test(test_idtoken_unknown_kid),
        cmocka_unit_test(test_idtoken_known_kid_other_key),
        cmocka_unit_test(test_idtoken_key_type_mismatch),
        cmocka_unit_test(test_idtoken_tampered_payload),
        cmocka_unit_test(test_idtoken_signature_bitflips),
        cmocka_unit_test(test_idtoken_expired),
        cmocka_unit_test(test_idtoken_exp_missing),
        cmocka_unit_test(test_idtoken_iat_too_old),
        cmocka_unit_test(test_idtoken_iat_future),
        cmocka_unit_test(test_idtoken_iat_missing),
        cmocka_unit_test(test_idtoken_nbf_future),
        cmocka_unit_test(test_idtoken_wrong_iss),
        cmocka_unit_test(test_idtoken_aud_missing_client),
        cmocka_unit_test(test_idtoken_multi_aud_without_azp),
        cmocka_unit_test(test_idtoken_azp_mismatch),
        cmocka_unit_test(test_idtoken_nonce_mismatch),
        cmocka_unit_test(test_idtoken_nonce_missing),
        cmocka_unit_test(test_idtoken_sub_missing),
        cmocka_unit_test(test_idtoken_jwe_shaped),
        cmocka_unit_test(test_idtoken_oversized),
        cmocka_unit_test(test_idtoken_garbage),
        cmocka_unit_test(test_idtoken_crit_and_typ),
        cmocka_unit_test(test_idtoken_payload_not_object_or_dup),
        cmocka_unit_test(test_jwks_parse_filters),
        cmocka_unit_test(test_jwks_alg_pinned_on_key),
        cmocka_unit_test(test_jwks_without_kids),
        cmocka_unit_test(test_jwks_invalid),
        cmocka_unit_test(test_meta_ok),
        cmocka_unit_test(test_meta_issuer_mismatch),
        cmocka_unit_test(test_meta_required_endpoints),
        cmocka_unit_test(test_meta_endpoint_schemes),
        cmocka_unit_test(test_meta_pkce),
        cmocka_unit_test(test_meta_bad_documents),
        cmocka_unit_test(test_auth_url),
        cmocka_unit_test(test_token_request_basic),
        cmocka_unit_test(test_token_request_post),
        cmocka_unit_test(test_token_response),
        cmocka_unit_test(test_logout_url),
    };
    return cmocka_run_group_tests(tests, setup_keys, teardown_keys);
}
