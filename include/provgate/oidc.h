/*
 * provgate core: OpenID Connect relying-party protocol pieces (no I/O).
 *
 * Everything here is a pure function over bytes we received or will send.
 * The ID token checks are ours (liboauth2 1.4.5 skips nonce/iss/aud): the
 * signature is verified with cjose against the provider's JWKS using only
 * the algorithms pinned for that provider; "none" and every HS* algorithm
 * are always refused (no HMAC keyed with a public key). OIDC Core 3.1.3.7.
 */
#ifndef PROVGATE_OIDC_H
#define PROVGATE_OIDC_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "provgate/config.h"

#define PG_OIDC_MAX_DISCOVERY (256u * 1024u)
#define PG_OIDC_MAX_JWKS      (256u * 1024u)
#define PG_OIDC_MAX_TOKEN_RESPONSE (64u * 1024u)
#define PG_OIDC_MAX_JWT       (16u * 1024u)

typedef struct pg_oidc_meta {
    char *issuer;
    char *authorization_endpoint;
    char *token_endpoint;
    char *jwks_uri;
    char *userinfo_endpoint;      /* may be NULL */
    char *end_session_endpoint;   /* may be NULL */
} pg_oidc_meta_t;

/*
 * Parse a discovery document. Its "issuer" must equal cfg->issuer exactly;
 * endpoints must be https URLs, or http on a loopback host (127.0.0.1,
 * [::1], localhost). The provider must list "S256" in
 * code_challenge_methods_supported when it lists that field at all.
 * Caps input at PG_OIDC_MAX_DISCOVERY.
 */
PG_MUST_USE pg_status_t pg_oidc_meta_parse(const char *body, size_t len,
                                           const pg_oidc_idp_cfg_t *cfg,
                                           pg_oidc_meta_t *out, pg_err_t *err);
void pg_oidc_meta_clear(pg_oidc_meta_t *m);

/* Authorization request URL (code flow, PKCE S256). *out is malloc'd. */
PG_MUST_USE pg_status_t pg_oidc_auth_url(const pg_oidc_meta_t *m,
                                         const pg_oidc_idp_cfg_t *cfg,
                                         const char *state, const char *nonce,
                                         const char *code_challenge,
                                         char **out);

/*
 * Token request: *body_out is the form body (grant_type, code,
 * redirect_uri, code_verifier, client_id and, for client_secret_post,
 * client_secret). For client_secret_basic *auth_out is the full
 * "Authorization: Basic ..." header line (RFC 6749 2.3.1 form-encoding of
 * id and secret); otherwise NULL. Both malloc'd.
 */
PG_MUST_USE pg_status_t pg_oidc_token_request(const pg_oidc_idp_cfg_t *cfg,
                                              const char *code,
                                              const char *verifier,
                                              char **body_out, char **auth_out);

/*
 * Parse a token endpoint response. Non-200 or an "error" member is
 * PG_ERR_DENIED with the provider's error code in err; a missing id_token is
 * PG_ERR_INVALID. *id_token is malloc'd. Caps at PG_OIDC_MAX_TOKEN_RESPONSE.
 */
PG_MUST_USE pg_status_t pg_oidc_token_response(long status, const char *body,
                                               size_t len, char **id_token,
                                               pg_err_t *err);

/* RP-initiated logout URL, or PG_ERR_NOT_FOUND without end_session_endpoint. */
PG_MUST_USE pg_status_t pg_oidc_logout_url(const pg_oidc_meta_t *m,
                                           const pg_oidc_idp_cfg_t *cfg,
                                           const char *id_token_hint,
                                           const char *state, char **out);

/* ---- JWKS and ID token ----------------------------------------------- */

typedef struct pg_jwks pg_jwks_t;

/* Parse a JWKS document (public RSA/EC/OKP keys; private parts ignored,
 * symmetric "oct" keys skipped). Caps at PG_OIDC_MAX_JWKS. */
PG_MUST_USE pg_status_t pg_jwks_parse(const char *body, size_t len,
                                      pg_jwks_t **out, pg_err_t *err);
void pg_jwks_free(pg_jwks_t *j);
size_t pg_jwks_count(const pg_jwks_t *j);

typedef struct pg_idtoken_expect {
    const char *issuer;          /* required */
    const char *client_id;       /* required: must be in aud; azp must match */
    const char *nonce;           /* required: must equal the "nonce" claim */
    const char *const *algs;     /* NULL-terminated allow-list */
    int64_t now;                 /* unix seconds */
    unsigned clock_skew_s;
    unsigned max_age_s;          /* iat not older than this (plus skew) */
} pg_idtoken_expect_t;

/*
 * Validate a compact-serialised ID token (JWS only; JWE is refused).
 * On PG_OK *claims receives the payload object (caller json_decref()s).
 * On failure *reason is a stable code for audit: "malformed",
 * "alg_not_allowed", "unknown_kid", "bad_signature", "bad_iss", "bad_aud",
 * "bad_azp", "expired", "not_yet_valid", "iat_missing", "iat_too_old",
 * "nonce_mismatch", "sub_missing"; err has detail.
 * "unknown_kid" returns PG_ERR_NOT_FOUND so that the caller refreshes the
 * JWKS once (rate-limited) and retries; everything else PG_ERR_DENIED or
 * PG_ERR_CRYPTO/PG_ERR_INVALID. Caps the token at PG_OIDC_MAX_JWT.
 */
PG_MUST_USE pg_status_t pg_idtoken_validate(const char *jwt, size_t len,
                                            const pg_jwks_t *jwks,
                                            const pg_idtoken_expect_t *exp,
                                            json_t **claims,
                                            const char **reason, pg_err_t *err);

#endif
