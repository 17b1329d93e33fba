/*
 * provgate core: JWKS parsing and ID token validation (OIDC Core 3.1.3.7).
 *
 * The compact JWS is split, size-checked and its header parsed here before
 * any library sees it, so the algorithm and key decisions are ours:
 *  - only algorithms in the caller's allow-list that we also support
 *    (RS*, PS*, ES*, EdDSA) are accepted; "none" and HS* never are, even
 *    when listed, so a public key can never become an HMAC secret;
 *  - the key is chosen by kid, and must fit the algorithm (RSA for RS/PS,
 *    the matching curve for ES, OKP for EdDSA, and the JWK's own "alg"
 *    when it has one);
 *  - RSA and EC signatures are verified with cjose, EdDSA with OpenSSL
 *    EVP (cjose 0.6.2.1 has no OKP keys);
 *  - the payload is decoded by our strict base64url decoder and parsed by
 *    jansson with duplicate members refused, then every claim is checked.
 */
#include <math.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>
#include <cjose/cjose.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include "provgate/oidc.h"

#define JWKS_MAX_KEYS 64
#define JWK_KID_MAX 256
#define JWK_MEMBER_MAX 4096     /* base64url of n / x / y */
#define RSA_MIN_BITS 2048
#define RSA_MAX_BITS 8192
#define JWT_HEADER_MAX 2048     /* decoded protected header */
#define SUB_MAX 255             /* OIDC Core 2: sub is at most 255 ASCII chars */

typedef enum { KT_RSA = 1, KT_EC, KT_OKP } key_type_t;

typedef struct jwks_key {
    key_type_t type;
    int crv;             /* EC: OpenSSL NID; OKP: EVP_PKEY_ED25519/ED448 */
    char *kid;           /* NULL when the JWK has none */
    char *alg;           /* the JWK's "alg", NULL when absent */
    cjose_jwk_t *jwk;    /* RSA and EC */
    EVP_PKEY *pkey;      /* OKP */
} jwks_key_t;

struct pg_jwks {
    jwks_key_t keys[JWKS_MAX_KEYS];
    size_t n;
};

/* The algorithms this implementation can verify. */
typedef struct alg_info {
    const char *name;
    key_type_t type;
    int crv;             /* EC curve NID required; 0 = any of the type */
    size_t sig_len;      /* exact signature length; 0 = key dependent */
} alg_info_t;

static const alg_info_t supported_algs[] = {
    {"RS256", KT_RSA, 0, 0},
    {"RS384", KT_RSA, 0, 0},
    {"RS512", KT_RSA, 0, 0},
    {"PS256", KT_RSA, 0, 0},
    {"PS384", KT_RSA, 0, 0},
    {"PS512", KT_RSA, 0, 0},
    {"ES256", KT_EC, NID_X9_62_prime256v1, 64},
    {"ES384", KT_EC, NID_secp384r1, 96},
    {"ES512", KT_EC, NID_secp521r1, 132},
    {"EdDSA", KT_OKP, 0, 0},
};

/* The supported algorithm named name, or NULL ("none", HS*, unknown). */
static const alg_info_t *
alg_lookup(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof(supported_algs) / sizeof(supported_algs[0]); i++) {
        if (strcmp(supported_algs[i].name, name) == 0) {
            return &supported_algs[i];
        }
    }
    return NULL;
}

/* ---- JWKS -------------------------------------------------------------- */

/* Release everything k owns and zero it. */
static void
key_clear(jwks_key_t *k)
{
    if (k->jwk != NULL) {
        cjose_jwk_release(k->jwk);
    }
    EVP_PKEY_free(k->pkey);
    free(k->kid);
    free(k->alg);
    memset(k, 0, sizeof(*k));
}

/* Free j and every key it holds. NULL is a no-op. */
void
pg_jwks_free(pg_jwks_t *j)
{
    size_t i;

    if (j == NULL) {
        return;
    }
    for (i = 0; i < j->n; i++) {
        key_clear(&j->keys[i]);
    }
    free(j);
}

/* Number of usable verification keys in j (0 for NULL). */
size_t
pg_jwks_count(const pg_jwks_t *j)
{
    return j != NULL ? j->n : 0;
}

/* String member of a JWK that is present, a string, without NUL and at
 * most JWK_MEMBER_MAX bytes; NULL otherwise. */
static const char *
jwk_str(const json_t *k, const char *name)
{
    const json_t *v = json_object_get(k, name);

    if (!json_is_string(v) || json_string_length(v) > JWK_MEMBER_MAX ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        return NULL;
    }
    return json_string_value(v);
}

/* Bit length of a big-endian unsigned integer given as base64url. */
static size_t
b64_uint_bits(const char *s)
{
    unsigned char buf[JWK_MEMBER_MAX];
    size_t len = 0, i;
    unsigned char top;
    size_t bits;

    if (pg_b64url_decode(s, strlen(s), buf, sizeof(buf), &len) != PG_OK) {
        return 0;
    }
    for (i = 0; i < len && buf[i] == 0; i++) {
    }
    if (i == len) {
        return 0;
    }
    bits = (len - i) * 8;
    for (top = buf[i]; (top & 0x80) == 0; top = (unsigned char)(top << 1)) {
        bits--;
    }
    return bits;
}

/* Import the public part of an RSA or EC JWK through cjose, from a JSON
 * object we build with only the public members (private parts ignored). */
static cjose_jwk_t *
import_public(json_t *pub)
{
    cjose_err cerr;
    cjose_jwk_t *jwk = NULL;
    char *txt = json_dumps(pub, JSON_COMPACT);

    if (txt != NULL) {
        jwk = cjose_jwk_import(txt, strlen(txt), &cerr);
        free(txt);
    }
    json_decref(pub);
    return jwk;
}

/*
 * Fill k from one JWK object. Returns 1 when the key is usable for
 * signature verification, 0 when it is to be skipped (symmetric, wrong
 * use, unsupported type or curve, weak or malformed).
 */
static int
key_load(const json_t *o, jwks_key_t *k)
{
    const char *kty, *use, *kid = NULL, *alg = NULL;
    const json_t *v;

    memset(k, 0, sizeof(*k));
    if (!json_is_object(o) || (kty = jwk_str(o, "kty")) == NULL) {
        return 0;
    }
    use = jwk_str(o, "use");
    if (json_object_get(o, "use") != NULL && (use == NULL || strcmp(use, "sig") != 0)) {
        return 0;
    }
    v = json_object_get(o, "key_ops");
    if (v != NULL) {
        size_t i;
        json_t *op;
        int verify = 0;
        if (!json_is_array(v)) {
            return 0;
        }
        json_array_foreach(v, i, op) {
            if (json_is_string(op) && strcmp(json_string_value(op), "verify") == 0) {
                verify = 1;
            }
        }
        if (!verify) {
            return 0;
        }
    }
    if (json_object_get(o, "kid") != NULL) {
        kid = jwk_str(o, "kid");
        if (kid == NULL || strlen(kid) > JWK_KID_MAX) {
            return 0;
        }
    }
    if (json_object_get(o, "alg") != NULL) {
        alg = jwk_str(o, "alg");
        if (alg == NULL || alg_lookup(alg) == NULL) {
            return 0;   /* "none", HS*, RSA-OAEP, ...: not a verification key */
        }
    }

    if (strcmp(kty, "RSA") == 0) {
        const char *n = jwk_str(o, "n"), *e = jwk_str(o, "e");
        size_t bits;
        if (n == NULL || e == NULL) {
            return 0;
        }
        /* b64_uint_bits() decodes strictly, so cjose never sees malformed
         * base64url (its decoder assert()s on some inputs). */
        bits = b64_uint_bits(n);
        if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS || b64_uint_bits(e) < 2 ||
            b64_uint_bits(e) > 64) {
            return 0;
        }
        k->type = KT_RSA;
        k->jwk = import_public(json_pack("{ssssss}", "kty", "RSA", "n", n, "e", e));
        if (k->jwk == NULL) {
            return 0;
        }
    } else if (strcmp(kty, "EC") == 0) {
        const char *crv = jwk_str(o, "crv"), *x = jwk_str(o, "x"),
                   *y = jwk_str(o, "y");
        unsigned char raw[80];
        size_t rawlen = 0, coord;
        if (crv == NULL || x == NULL || y == NULL) {
            return 0;
        }
        if (strcmp(crv, "P-256") == 0) {
            k->crv = NID_X9_62_prime256v1;
            coord = 32;
        } else if (strcmp(crv, "P-384") == 0) {
            k->crv = NID_secp384r1;
            coord = 48;
        } else if (strcmp(crv, "P-521") == 0) {
            k->crv = NID_secp521r1;
            coord = 66;
        } else {
            return 0;
        }
        /* Strict base64url and exact coordinate size before cjose sees
         * them: cjose 0.6.2.1's decoder assert()s on some malformed input
         * (e.g. a length of 1 mod 4), which would abort the process. */
        if (pg_b64url_decode(x, strlen(x), raw, sizeof(raw), &rawlen) != PG_OK ||
            rawlen != coord ||
            pg_b64url_decode(y, strlen(y), raw, sizeof(raw), &rawlen) != PG_OK ||
            rawlen != coord) {
            return 0;
        }
        k->type = KT_EC;
        k->jwk = import_public(json_pack("{ssssssss}", "kty", "EC", "crv", crv,
                                         "x", x, "y", y));
        if (k->jwk == NULL) {
            return 0;
        }
    } else if (strcmp(kty, "OKP") == 0) {
        const char *crv = jwk_str(o, "crv"), *x = jwk_str(o, "x");
        unsigned char raw[64];
        size_t rawlen = 0, want;
        if (crv == NULL || x == NULL) {
            return 0;
        }
        if (strcmp(crv, "Ed25519") == 0) {
            k->crv = EVP_PKEY_ED25519;
            want = 32;
        } else if (strcmp(crv, "Ed448") == 0) {
            k->crv = EVP_PKEY_ED448;
            want = 57;
        } else {
            return 0;   /* X25519/X448 are not signature keys */
        }
        if (pg_b64url_decode(x, strlen(x), raw, sizeof(raw), &rawlen) != PG_OK ||
            rawlen != want) {
            return 0;
        }
        k->type = KT_OKP;
        k->pkey = EVP_PKEY_new_raw_public_key(k->crv, NULL, raw, rawlen);
        if (k->pkey == NULL) {
            return 0;
        }
    } else {
        return 0;       /* "oct" and anything unknown */
    }
    if (alg != NULL) {
        const alg_info_t *ai = alg_lookup(alg);
        if (ai->type != k->type || (ai->crv != 0 && ai->crv != k->crv)) {
            key_clear(k);
            return 0;
        }
        k->alg = strdup(alg);
        if (k->alg == NULL) {
            key_clear(k);
            return 0;
        }
    }
    if (kid != NULL) {
        k->kid = strdup(kid);
        if (k->kid == NULL) {
            key_clear(k);
            return 0;
        }
    }
    return 1;
}

/*
 * Parse a JWKS document body[0..len) ({"keys": [...]}) into *out, keeping
 * the public RSA (2048..8192 bits), EC (P-256/384/521) and OKP
 * (Ed25519/Ed448) signature keys; private members are never imported, and
 * "oct" keys, keys whose "use" is not "sig", whose "key_ops" lack "verify"
 * or whose "alg" is not a supported signature algorithm are skipped. At
 * most 64 keys are kept. PG_ERR_TOO_LARGE over PG_OIDC_MAX_JWKS;
 * PG_ERR_INVALID for bad JSON or when no usable key remains. The caller
 * frees *out with pg_jwks_free().
 */
pg_status_t
pg_jwks_parse(const char *body, size_t len, pg_jwks_t **out, pg_err_t *err)
{
    json_t *doc, *keys, *k;
    json_error_t jerr;
    pg_jwks_t *j;
    size_t i;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (body == NULL) {
        pg_err_set(err, "jwks: no document");
        return PG_ERR_INVALID;
    }
    if (len > PG_OIDC_MAX_JWKS) {
        pg_err_set(err, "jwks: document over %u bytes", PG_OIDC_MAX_JWKS);
        return PG_ERR_TOO_LARGE;
    }
    doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    keys = doc != NULL ? json_object_get(doc, "keys") : NULL;
    if (!json_is_object(doc) || !json_is_array(keys)) {
        json_decref(doc);
        pg_err_set(err, "jwks: not an object with a \"keys\" array");
        return PG_ERR_INVALID;
    }
    j = calloc(1, sizeof(*j));
    if (j == NULL) {
        json_decref(doc);
        return PG_ERR_NOMEM;
    }
    json_array_foreach(keys, i, k) {
        if (j->n == JWKS_MAX_KEYS) {
            break;
        }
        if (key_load(k, &j->keys[j->n])) {
            j->n++;
        }
    }
    json_decref(doc);
    if (j->n == 0) {
        pg_jwks_free(j);
        pg_err_set(err, "jwks: no usable signature key");
        return PG_ERR_INVALID;
    }
    *out = j;
    return PG_OK;
}

/* ---- ID token ---------------------------------------------------------- */

/* 1 for a base64url alphabet byte (no padding). */
static int
is_b64url_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* 1 when key k can verify a signature made with algorithm ai. */
static int
key_fits(const jwks_key_t *k, const alg_info_t *ai)
{
    if (k->type != ai->type) {
        return 0;
    }
    if (ai->crv != 0 && k->crv != ai->crv) {
        return 0;
    }
    if (k->alg != NULL && strcmp(k->alg, ai->name) != 0) {
        return 0;
    }
    return 1;
}

/*
 * Verify the compact JWS jwt[0..len) with key k for algorithm ai; the
 * signing input is jwt[0..signing_len) and sig[0..siglen) the decoded
 * signature. 1 on a valid signature. ES* signatures must have the exact
 * R||S length (cjose 0.6.2.1 does not check it). RSA/EC go through cjose
 * (a fresh import per key, released here); OKP through OpenSSL EVP.
 */
static int
verify_with(const jwks_key_t *k, const alg_info_t *ai, const char *jwt,
            size_t len, size_t signing_len, const unsigned char *sig,
            size_t siglen)
{
    if (ai->sig_len != 0 && siglen != ai->sig_len) {
        return 0;
    }
    if (k->type == KT_OKP) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        int ok = 0;
        size_t want = k->crv == EVP_PKEY_ED25519 ? 64 : 114;
        if (ctx == NULL) {
            return 0;
        }
        if (siglen == want &&
            EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k->pkey) == 1 &&
            EVP_DigestVerify(ctx, sig, siglen, (const unsigned char *)jwt,
                             signing_len) == 1) {
            ok = 1;
        }
        EVP_MD_CTX_free(ctx);
        return ok;
    } else {
        cjose_err cerr;
        cjose_jws_t *jws = cjose_jws_import(jwt, len, &cerr);
        const char *calg;
        int ok = 0;
        if (jws == NULL) {
            return 0;
        }
        /* The algorithm cjose will use must be the one we checked. */
        calg = cjose_header_get(cjose_jws_get_protected(jws), CJOSE_HDR_ALG,
                                &cerr);
        if (calg != NULL && strcmp(calg, ai->name) == 0 &&
            cjose_jws_verify(jws, k->jwk, &cerr)) {
            ok = 1;
        }
        cjose_jws_release(jws);
        return ok;
    }
}

/* Read a NumericDate claim (integer, or a finite real truncated toward
 * -infinity). 1 on success. */
static int
numeric_date(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!isfinite(d) || d > 4.0e18 || d < -4.0e18) {
            return 0;
        }
        *out = (int64_t)d;          /* toward zero ... */
        if ((double)*out > d) {
            (*out)--;               /* ... then toward -infinity */
        }
        return 1;
    }
    return 0;
}

/* a + b, saturating at the int64_t limits instead of overflowing. */
static int64_t
sat_add(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b) {
        return INT64_MAX;
    }
    if (b < 0 && a < INT64_MIN - b) {
        return INT64_MIN;
    }
    return a + b;
}

/* Set the failure outputs and return st. */
static pg_status_t
fail(const char **reason, const char *why, pg_status_t st)
{
    *reason = why;
    return st;
}

/*
 * Check the claims of a signature-verified payload (OIDC Core 3.1.3.7
 * steps 2-5 and 9-11). Returns PG_OK or the failure with *reason set.
 */
static pg_status_t
check_claims(const json_t *c, const pg_idtoken_expect_t *exp,
             const char **reason, pg_err_t *err)
{
    const json_t *v, *aud, *azp;
    int64_t t_exp, t_iat, t_nbf;
    int64_t skew = (int64_t)exp->clock_skew_s;
    size_t naud = 0, i;
    int aud_ok = 0;
    const char *s;

    v = json_object_get(c, "iss");
    if (!json_is_string(v) || json_string_length(v) != strlen(exp->issuer) ||
        strcmp(json_string_value(v), exp->issuer) != 0) {
        pg_err_set(err, "id token: iss is not the expected issuer");
        return fail(reason, "bad_iss", PG_ERR_DENIED);
    }

    aud = json_object_get(c, "aud");
    if (json_is_string(aud)) {
        naud = 1;
        aud_ok = json_string_length(aud) == strlen(exp->client_id) &&
                 strcmp(json_string_value(aud), exp->client_id) == 0;
    } else if (json_is_array(aud)) {
        json_t *a;
        json_array_foreach(aud, i, a) {
            if (!json_is_string(a)) {
                aud_ok = 0;
                naud = 0;
                break;
            }
            naud++;
            if (json_string_length(a) == strlen(exp->client_id) &&
                strcmp(json_string_value(a), exp->client_id) == 0) {
                aud_ok = 1;
            }
        }
    }
    if (naud == 0 || !aud_ok) {
        pg_err_set(err, "id token: aud does not contain the client_id");
        return fail(reason, "bad_aud", PG_ERR_DENIED);
    }

    azp = json_object_get(c, "azp");
    if (azp == NULL && naud > 1) {
        pg_err_set(err, "id token: several audiences and no azp");
        return fail(reason, "bad_azp", PG_ERR_DENIED);
    }
    if (azp != NULL &&
        (!json_is_string(azp) || json_string_length(azp) != strlen(exp->client_id) ||
         strcmp(json_string_value(azp), exp->client_id) != 0)) {
        pg_err_set(err, "id token: azp is not the client_id");
        return fail(reason, "bad_azp", PG_ERR_DENIED);
    }

    if (!numeric_date(json_object_get(c, "exp"), &t_exp)) {
        pg_err_set(err, "id token: exp missing or not a number");
        return fail(reason, "expired", PG_ERR_DENIED);
    }
    /* valid while now < exp + skew */
    if (exp->now >= sat_add(t_exp, skew)) {
        pg_err_set(err, "id token: expired");
        return fail(reason, "expired", PG_ERR_DENIED);
    }

    v = json_object_get(c, "nbf");
    if (v != NULL) {
        if (!numeric_date(v, &t_nbf)) {
            pg_err_set(err, "id token: nbf not a number");
            return fail(reason, "not_yet_valid", PG_ERR_DENIED);
        }
        if (sat_add(exp->now, skew) < t_nbf) {
            pg_err_set(err, "id token: not valid before nbf");
            return fail(reason, "not_yet_valid", PG_ERR_DENIED);
        }
    }

    if (!numeric_date(json_object_get(c, "iat"), &t_iat)) {
        pg_err_set(err, "id token: iat missing or not a number");
        return fail(reason, "iat_missing", PG_ERR_DENIED);
    }
    if (t_iat > sat_add(exp->now, skew)) {
        pg_err_set(err, "id token: issued in the future");
        return fail(reason, "not_yet_valid", PG_ERR_DENIED);
    }
    if (t_iat < sat_add(exp->now, -(int64_t)exp->max_age_s - skew)) {
        pg_err_set(err, "id token: issued more than %us ago", exp->max_age_s);
        return fail(reason, "iat_too_old", PG_ERR_DENIED);
    }

    v = json_object_get(c, "nonce");
    if (!json_is_string(v) ||
        !pg_ct_equal(json_string_value(v), json_string_length(v), exp->nonce,
                     strlen(exp->nonce))) {
        pg_err_set(err, "id token: nonce does not match");
        return fail(reason, "nonce_mismatch", PG_ERR_DENIED);
    }

    v = json_object_get(c, "sub");
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > SUB_MAX) {
        pg_err_set(err, "id token: sub missing, empty or too long");
        return fail(reason, "sub_missing", PG_ERR_DENIED);
    }
    s = json_string_value(v);
    for (i = 0; i < json_string_length(v); i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f) {
            pg_err_set(err, "id token: sub contains control characters");
            return fail(reason, "sub_missing", PG_ERR_DENIED);
        }
    }
    return PG_OK;
}

/* 1 when a "typ" header names a token that is not an ID token. */
static int
typ_refused(const char *typ)
{
    static const char *const other[] = {"at+jwt", "logout+jwt",
                                        "secevent+jwt", "dpop+jwt"};
    size_t i;

    if (strncasecmp(typ, "application/", 12) == 0) {
        typ += 12;
    }
    for (i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
        if (strcasecmp(typ, other[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/* 1 when alg is in the NULL-terminated allow-list. */
static int
alg_allowed(const char *const *algs, const char *alg)
{
    size_t i;

    if (algs == NULL) {
        return 0;
    }
    for (i = 0; algs[i] != NULL; i++) {
        if (strcmp(algs[i], alg) == 0) {
            return 1;
        }
    }
    return 0;
}

/*
 * Validate a compact JWS ID token jwt[0..len) against jwks and exp; see
 * oidc.h for the contract and the reason codes. Status per reason:
 * malformed PG_ERR_INVALID (PG_ERR_TOO_LARGE over PG_OIDC_MAX_JWT),
 * unknown_kid PG_ERR_NOT_FOUND, bad_signature PG_ERR_CRYPTO, everything
 * else PG_ERR_DENIED. *claims is set only on PG_OK (caller json_decref()s);
 * *reason is NULL on PG_OK. Nothing is allocated on failure.
 *
 * Key choice: by kid among keys that fit the algorithm (all such keys with
 * that kid are tried). Without a kid in the token, or when no key of the
 * JWKS has a kid at all, exactly one fitting key must exist, otherwise it
 * is "unknown_kid". A kid that exists only on keys of another type/curve
 * is "bad_signature". Extra header rules: "crit" is refused, a "typ" of a
 * non-ID-token type (at+jwt, logout+jwt, ...) is refused, and "jku",
 * "x5u", "jwk" headers are ignored (never fetched, never trusted).
 */
pg_status_t
pg_idtoken_validate(const char *jwt, size_t len, const pg_jwks_t *jwks,
                    const pg_idtoken_expect_t *exp, json_t **claims,
                    const char **reason, pg_err_t *err)
{
    const char *dummy_reason;
    size_t dots[2], ndots = 0, i;
    unsigned char *hbuf = NULL, *pbuf = NULL, *sig = NULL;
    size_t hlen = 0, plen = 0, siglen = 0;
    json_t *hdr = NULL, *payload = NULL, *v;
    json_error_t jerr;
    const char *alg, *kid = NULL;
    const alg_info_t *ai;
    const jwks_key_t *cand[JWKS_MAX_KEYS];
    size_t ncand = 0, nkid = 0;
    int verified = 0, any_kid = 0;
    pg_status_t st;

    if (reason == NULL) {
        reason = &dummy_reason;
    }
    *reason = "malformed";
    if (claims != NULL) {
        *claims = NULL;
    }
    if (claims == NULL || exp == NULL || exp->issuer == NULL ||
        exp->client_id == NULL || exp->nonce == NULL || jwks == NULL ||
        (jwt == NULL && len > 0)) {
        pg_err_set(err, "id token: missing argument");
        return PG_ERR_INVALID;
    }
    if (len > PG_OIDC_MAX_JWT) {
        pg_err_set(err, "id token: over %u bytes", PG_OIDC_MAX_JWT);
        return PG_ERR_TOO_LARGE;
    }
    if (len == 0) {
        pg_err_set(err, "id token: empty");
        return PG_ERR_INVALID;
    }
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)jwt[i];
        if (c == '.') {
            if (ndots == 2) {
                pg_err_set(err, "id token: more than three parts (JWE is "
                           "not accepted)");
                return PG_ERR_INVALID;
            }
            dots[ndots++] = i;
        } else if (!is_b64url_char(c)) {
            pg_err_set(err, "id token: byte outside the base64url alphabet");
            return PG_ERR_INVALID;
        }
    }
    if (ndots != 2 || dots[0] == 0 || dots[1] == dots[0] + 1) {
        pg_err_set(err, "id token: not a compact JWS");
        return PG_ERR_INVALID;
    }

    /* Header. */
    hbuf = malloc(JWT_HEADER_MAX);
    pbuf = malloc(len);
    sig = malloc(len);
    if (hbuf == NULL || pbuf == NULL || sig == NULL) {
        st = PG_ERR_NOMEM;
        goto out;
    }
    if (pg_b64url_decode(jwt, dots[0], hbuf, JWT_HEADER_MAX, &hlen) != PG_OK ||
        (hdr = json_loadb((const char *)hbuf, hlen, JSON_REJECT_DUPLICATES,
                          &jerr)) == NULL ||
        !json_is_object(hdr)) {
        pg_err_set(err, "id token: header is not a JSON object");
        st = PG_ERR_INVALID;
        goto out;
    }
    v = json_object_get(hdr, "alg");
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) {
        pg_err_set(err, "id token: header has no alg");
        st = PG_ERR_INVALID;
        goto out;
    }
    alg = json_string_value(v);
    ai = alg_lookup(alg);
    if (ai == NULL || !alg_allowed(exp->algs, alg)) {
        pg_err_set(err, "id token: algorithm not allowed for this provider");
        st = fail(reason, "alg_not_allowed", PG_ERR_DENIED);
        goto out;
    }
    if (json_object_get(hdr, "crit") != NULL) {
        pg_err_set(err, "id token: critical header extensions not supported");
        st = PG_ERR_INVALID;
        goto out;
    }
    v = json_object_get(hdr, "typ");
    if (v != NULL && (!json_is_string(v) || typ_refused(json_string_value(v)))) {
        pg_err_set(err, "id token: typ is not an ID token type");
        st = PG_ERR_INVALID;
        goto out;
    }
    v = json_object_get(hdr, "kid");
    if (v != NULL) {
        if (!json_is_string(v) || json_string_length(v) > JWK_KID_MAX ||
            strlen(json_string_value(v)) != json_string_length(v)) {
            pg_err_set(err, "id token: kid is not a short string");
            st = PG_ERR_INVALID;
            goto out;
        }
        kid = json_string_value(v);
    }

    /* Payload and signature bytes (strict base64url). */
    if (pg_b64url_decode(jwt + dots[0] + 1, dots[1] - dots[0] - 1, pbuf, len,
                         &plen) != PG_OK) {
        pg_err_set(err, "id token: payload is not base64url");
        st = PG_ERR_INVALID;
        goto out;
    }
    if (len - dots[1] - 1 == 0 ||
        pg_b64url_decode(jwt + dots[1] + 1, len - dots[1] - 1, sig, len,
                         &siglen) != PG_OK) {
        pg_err_set(err, "id token: missing or malformed signature");
        st = PG_ERR_INVALID;
        goto out;
    }

    /* Key selection. A JWKS whose keys carry no kid at all (allowed by
     * RFC 7517) is matched as if the token had none: by a unique fit. */
    for (i = 0; i < jwks->n && !any_kid; i++) {
        any_kid = jwks->keys[i].kid != NULL;
    }
    if (!any_kid) {
        kid = NULL;
    }
    for (i = 0; i < jwks->n; i++) {
        const jwks_key_t *k = &jwks->keys[i];
        if (kid != NULL) {
            if (k->kid == NULL || strcmp(k->kid, kid) != 0) {
                continue;
            }
            nkid++;
        }
        if (key_fits(k, ai)) {
            cand[ncand++] = k;
        }
    }
    if (kid != NULL && nkid == 0) {
        pg_err_set(err, "id token: no key with this kid");
        st = fail(reason, "unknown_kid", PG_ERR_NOT_FOUND);
        goto out;
    }
    if (kid == NULL && ncand != 1) {
        pg_err_set(err, "id token: no kid and %zu candidate keys", ncand);
        st = fail(reason, "unknown_kid", PG_ERR_NOT_FOUND);
        goto out;
    }
    if (ncand == 0) {
        pg_err_set(err, "id token: key for this kid does not fit %s", ai->name);
        st = fail(reason, "bad_signature", PG_ERR_CRYPTO);
        goto out;
    }
    for (i = 0; i < ncand && !verified; i++) {
        verified = verify_with(cand[i], ai, jwt, len, dots[1], sig, siglen);
    }
    if (!verified) {
        pg_err_set(err, "id token: signature does not verify");
        st = fail(reason, "bad_signature", PG_ERR_CRYPTO);
        goto out;
    }

    /* Claims. */
    payload = json_loadb((const char *)pbuf, plen, JSON_REJECT_DUPLICATES, &jerr);
    if (payload == NULL || !json_is_object(payload)) {
        pg_err_set(err, "id token: payload is not a JSON object");
        st = PG_ERR_INVALID;
        goto out;
    }
    st = check_claims(payload, exp, reason, err);
    if (st == PG_OK) {
        *claims = payload;
        payload = NULL;
        *reason = NULL;
    }
out:
    json_decref(hdr);
    json_decref(payload);
    free(hbuf);
    free(pbuf);
    free(sig);
    return st;
}
