/*
 * provgate core: SAML 2.0 service-provider protocol pieces (no I/O).
 *
 * Everything here is a pure function over bytes we received or will send,
 * built on lasso 2.8.1 (signature verification, decryption, AuthnRequest
 * encoding) plus every check lasso leaves to the caller (SAML Core 2.5,
 * Profiles 4.1.4.3): single assertion, identity only from the signed
 * element, signature only against the metadata key, Issuer, Audience,
 * Recipient, Destination, time conditions with clock skew, InResponseTo,
 * Status. Hard caps and a DOCTYPE refusal run before any XML parser sees
 * the input. Replay detection is the caller's job: it gets the assertion ID
 * and its NotOnOrAfter.
 */
#ifndef PROVGATE_SAML_H
#define PROVGATE_SAML_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "provgate/status.h"
#include "provgate/util.h"

#define PG_SAML_MAX_POST_BODY   (256u * 1024u) /* form body of the ACS POST */
#define PG_SAML_MAX_XML         (128u * 1024u) /* decoded response XML */
#define PG_SAML_MAX_INFLATED    (64u * 1024u)  /* inflated Redirect message */
#define PG_SAML_MAX_METADATA    (512u * 1024u) /* IdP metadata, from a file
                                                  or fetched from a URL */
#define PG_SAML_MAX_PEM         (64u * 1024u)  /* key / certificate file */
#define PG_SAML_DEFAULT_SKEW    60u

typedef struct pg_saml_sp_cfg {
    const char *entity_id;          /* required: our SP entity id */
    const char *acs_url;            /* required: our HTTP-POST ACS URL */
    const char *slo_url;            /* optional: SLO endpoint (metadata only) */
    const char *key_path;           /* required: SP private key (PEM) */
    const char *cert_path;          /* required: SP certificate (PEM) */
    const char *idp_metadata_path;  /* optional: one md:EntityDescriptor */
    const char *idp_metadata;       /* optional: the same as a buffer
                                       (NUL-terminated; wins over the path) */
    size_t idp_metadata_len;
    const char *nameid_format;      /* optional: requested NameIDPolicy */
    int sign_authn_request;         /* sign the Redirect AuthnRequest */
    int require_signed_assertion;   /* the Assertion itself must be signed */
    int require_signed_response;    /* the Response must be signed */
    int allow_unsolicited;          /* IdP-initiated responses accepted */
    unsigned clock_skew_s;          /* 0 means PG_SAML_DEFAULT_SKEW */
} pg_saml_sp_cfg_t;

typedef struct pg_saml_sp pg_saml_sp_t;

/*
 * Build an SP from cfg: reads the key, certificate and IdP metadata files
 * (capped at PG_SAML_MAX_PEM / PG_SAML_MAX_METADATA; the metadata must
 * pass pg_saml_idp_metadata_check()), learns the IdP entity id and signing
 * key from the metadata only. The metadata comes from cfg->idp_metadata
 * (a buffer) or else cfg->idp_metadata_path; with neither the SP describes
 * itself only: pg_saml_sp_metadata() works, the key is checked, but
 * pg_saml_authn_request() answers PG_ERR_NOT_FOUND and
 * pg_saml_acs_validate() refuses ("idp_unavailable") until an SP with an
 * IdP is made by pg_saml_sp_rebind(). *out is owned by the caller:
 * pg_saml_sp_free(). cfg strings are copied. Safe to call from several
 * threads (lasso is initialised once).
 */
PG_MUST_USE pg_status_t pg_saml_sp_new(const pg_saml_sp_cfg_t *cfg,
                                       pg_saml_sp_t **out, pg_err_t *err);
void pg_saml_sp_free(pg_saml_sp_t *sp);

/*
 * A new SP with base's settings, key and certificate (copied: no file is
 * read) and the IdP from the metadata md[0..md_len) (NUL-terminated, e.g.
 * a fetched document; checked with pg_saml_idp_metadata_check(), then
 * given to lasso). base is not changed and may be SP-only. *out is the
 * caller's (pg_saml_sp_free()). PG_ERR_CONFIG with detail in err when the
 * metadata is refused.
 */
PG_MUST_USE pg_status_t pg_saml_sp_rebind(const pg_saml_sp_t *base,
                                          const char *md, size_t md_len,
                                          pg_saml_sp_t **out, pg_err_t *err);

/* 1 when sp has IdP metadata (it can log in), 0 for an SP-only object. */
int pg_saml_sp_has_idp(const pg_saml_sp_t *sp);

/* The IdP entity id learned from metadata (owned by sp), NULL when the SP
 * has none. */
const char *pg_saml_sp_idp_entity_id(const pg_saml_sp_t *sp);

/*
 * Check IdP metadata bytes before anything else reads them (pure; the
 * same checks for a file and for a fetched document): at most
 * PG_SAML_MAX_METADATA bytes (PG_ERR_TOO_LARGE), no NUL byte and no
 * DOCTYPE or other "<!" declaration (PG_ERR_INVALID, checked before any
 * parsing), well-formed, the root is one md:EntityDescriptor with a
 * non-empty entityID (at most 1024 bytes) and an md:IDPSSODescriptor that
 * has a signing key (a KeyDescriptor without "use" or with use="signing"
 * holding a ds:X509Certificate) (PG_ERR_INVALID). When want_entity_id is
 * non-NULL the entityID must equal it (PG_ERR_DENIED: a refresh may not
 * change the IdP). On PG_OK *entity_id (when entity_id is non-NULL) is a
 * malloc'd copy of the entityID; err has the reason otherwise.
 */
PG_MUST_USE pg_status_t pg_saml_idp_metadata_check(const char *md, size_t len,
                                                   const char *want_entity_id,
                                                   char **entity_id,
                                                   pg_err_t *err);

/*
 * SP-initiated login, HTTP-Redirect binding (signed when
 * cfg->sign_authn_request). relay_state may be NULL; it is opaque and at
 * most 80 bytes (Bindings 3.4.3). *redirect_url and *request_id are
 * malloc'd; the caller stores request_id bound to the browser and passes
 * it back as pg_saml_expect_t.in_response_to.
 */
PG_MUST_USE pg_status_t pg_saml_authn_request(pg_saml_sp_t *sp,
                                              const char *relay_state,
                                              char **redirect_url,
                                              char **request_id,
                                              pg_err_t *err);

typedef struct pg_saml_expect {
    const char *in_response_to;  /* stored request id, or NULL: unsolicited */
    int64_t now;                 /* unix seconds */
} pg_saml_expect_t;

typedef struct pg_saml_assertion {
    char *name_id;
    char *name_id_format;        /* NULL when absent */
    char *name_qualifier;        /* NameID NameQualifier, NULL when absent */
    char *sp_name_qualifier;     /* NameID SPNameQualifier, NULL when absent */
    char *assertion_id;          /* for the replay cache */
    char *issuer;
    char *session_index;         /* NULL when absent */
    char *relay_state;           /* NULL when absent (from the form body) */
    char *in_response_to;        /* NULL for unsolicited */
    int64_t not_on_or_after;     /* earliest of Conditions / bearer NotOnOrAfter */
    json_t *attributes;          /* object: name -> array of strings */
} pg_saml_assertion_t;

void pg_saml_assertion_clear(pg_saml_assertion_t *a);

/*
 * Validate an ACS HTTP-POST form body (SAMLResponse=...&RelayState=...).
 * Caps: body PG_SAML_MAX_POST_BODY, decoded XML PG_SAML_MAX_XML
 * (PG_ERR_TOO_LARGE, reason "too_large"). Any DOCTYPE / "<!" declaration
 * is refused before parsing. On PG_OK *out is filled (caller
 * pg_saml_assertion_clear()s it); on failure *out is zeroed, *reason is a
 * stable code and err has detail:
 *   "too_large", "malformed", "doctype", "not_response", "bad_version",
 *   "assertion_count" (zero or several assertions), "bad_signature_placement",
 *   "duplicate_id", "bad_reference", "unsigned", "assertion_unsigned",
 *   "response_unsigned", "bad_signature", "decrypt_failed",
 *   "encrypted_unsigned", "bad_issuer", "status_not_success",
 *   "bad_destination", "in_response_to_mismatch", "unsolicited",
 *   "no_bearer" (no bearer SubjectConfirmation), "bad_recipient",
 *   "expired", "not_yet_valid", "bad_time", "bad_audience",
 *   "no_audience", "unknown_condition", "no_nameid", "nameid_not_text",
 *   "no_authn_statement", "session_expired", "bad_attribute".
 * Status mapping: signature failures PG_ERR_CRYPTO, size PG_ERR_TOO_LARGE,
 * unparsable input PG_ERR_INVALID, every other refusal PG_ERR_DENIED.
 */
PG_MUST_USE pg_status_t pg_saml_acs_validate(pg_saml_sp_t *sp,
                                             const char *post_body, size_t len,
                                             const pg_saml_expect_t *exp,
                                             pg_saml_assertion_t *out,
                                             const char **reason,
                                             pg_err_t *err);

/*
 * Inflate a raw-DEFLATE Redirect-binding message (already base64-decoded)
 * with a hard output cap of PG_SAML_MAX_INFLATED (PG_ERR_TOO_LARGE beyond,
 * so a deflate bomb never expands). *out is malloc'd and NUL-terminated.
 * Use this instead of lasso_inflate (CVE-2025-46784) for any Redirect input.
 */
PG_MUST_USE pg_status_t pg_saml_inflate(const void *in, size_t len,
                                        char **out, size_t *outlen);

/* SP metadata (md:EntityDescriptor) generated from cfg; *xml malloc'd. */
PG_MUST_USE pg_status_t pg_saml_sp_metadata(const pg_saml_sp_t *sp, char **xml);

#endif
