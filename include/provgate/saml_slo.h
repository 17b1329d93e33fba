/*
 * provgate core: SAML 2.0 Single Logout, SP side (no I/O).
 *
 * Pure functions over bytes we received or will send, next to saml.h:
 *  - SP-initiated: build a signed LogoutRequest (HTTP-Redirect) and verify
 *    the IdP's LogoutResponse (HTTP-Redirect query or HTTP-POST body);
 *  - IdP-initiated: verify the IdP's LogoutRequest (Redirect or POST) and
 *    build our signed LogoutResponse (HTTP-Redirect).
 * Built on libxml2, xmlsec1-openssl (XML-DSig for the POST binding),
 * OpenSSL (Redirect query signatures) and zlib; lasso is not used here
 * (see docs/saml-slo.md). Every incoming message must be signed, and only
 * a key from the IdP metadata (md:KeyDescriptor use="signing" or without
 * use) is ever used to verify it; KeyInfo in a message is never followed.
 * Hard caps and a DOCTYPE refusal run before any parser sees the input.
 * Single use is the caller's job: it gets the request ID (replay cache) or
 * the InResponseTo (pending-request store, consumed once).
 */
#ifndef PROVGATE_SAML_SLO_H
#define PROVGATE_SAML_SLO_H

#include <stddef.h>
#include <stdint.h>
#include "provgate/saml.h"
#include "provgate/status.h"
#include "provgate/util.h"

#define PG_SAML_SLO_MAX_QUERY    (16u * 1024u) /* raw Redirect query string */
#define PG_SAML_SLO_MAX_AGE      300u          /* IssueInstant max age (s) */
#define PG_SAML_SLO_MAX_RELAY    80u           /* RelayState we originate */
#define PG_SAML_SLO_MAX_RELAY_IN 1024u         /* RelayState we accept/echo */
#define PG_SAML_SLO_MAX_SESSIONS 16u           /* SessionIndex elements */
#define PG_SAML_SLO_MAX_IDP_KEYS 4u            /* signing keys in metadata */

typedef struct pg_saml_slo pg_saml_slo_t;

typedef enum pg_saml_binding {
    PG_SAML_BINDING_REDIRECT = 1, /* input: the raw query string after '?' */
    PG_SAML_BINDING_POST = 2      /* input: the form body */
} pg_saml_binding_t;

/*
 * Build the SLO context from the same cfg the SP was built from. sp must
 * be that SP, with its IdP (it guarantees the libxml2/xmlsec/OpenSSL
 * initialisation and supplies the IdP entity id). Our signing key is read
 * from cfg->key_path when set, else taken from the SP (no file is read:
 * the gate's metadata refresh). Required here: cfg->slo_url (our SLO
 * endpoint, also the Destination every incoming message must carry), the
 * IdP metadata the SP was given (cfg->idp_metadata, else
 * cfg->idp_metadata_path) with an IDPSSODescriptor that has an
 * HTTP-Redirect SingleLogoutService and at least one signing certificate
 * (at most PG_SAML_SLO_MAX_IDP_KEYS are used). Files are capped as in
 * saml.h; a DOCTYPE in the metadata is refused. *out is the caller's:
 * pg_saml_slo_free(). PG_ERR_CONFIG on any configuration problem (detail
 * in err). The context is read-only after creation: its functions may run
 * on several threads at once.
 */
PG_MUST_USE pg_status_t pg_saml_slo_new(const pg_saml_sp_t *sp,
                                        const pg_saml_sp_cfg_t *cfg,
                                        pg_saml_slo_t **out, pg_err_t *err);
void pg_saml_slo_free(pg_saml_slo_t *slo);

/* The IdP SLO endpoint (HTTP-Redirect Location) from metadata; owned by slo. */
const char *pg_saml_slo_idp_url(const pg_saml_slo_t *slo);

/* What the SP stored at login (from pg_saml_assertion_t and the NameID
 * element): name_id is required, the others may be NULL. */
typedef struct pg_saml_logout_subject {
    const char *name_id;
    const char *name_id_format;     /* NameID Format */
    const char *sp_name_qualifier;  /* NameID SPNameQualifier */
    const char *name_qualifier;     /* NameID NameQualifier */
    const char *session_index;      /* AuthnStatement SessionIndex */
} pg_saml_logout_subject_t;

/*
 * SP-initiated logout: a LogoutRequest (Issuer = our entity id,
 * Destination = IdP SLO URL, fresh ID, IssueInstant = now, NotOnOrAfter =
 * now + PG_SAML_SLO_MAX_AGE, the NameID as received, SessionIndex when
 * given), DEFLATEd, base64 and signed for the HTTP-Redirect binding
 * (SigAlg rsa-sha256 over "SAMLRequest=..&RelayState=..&SigAlg=..") with
 * the SP key. relay_state may be NULL, else at most PG_SAML_SLO_MAX_RELAY
 * bytes (PG_ERR_TOO_LARGE). Subject strings are capped at 1 KiB each
 * (PG_ERR_TOO_LARGE) and may not hold control characters other than
 * TAB/CR/LF (PG_ERR_INVALID). *redirect_url and *request_id are malloc'd (caller
 * frees); the caller stores request_id (single use) to match the
 * response's InResponseTo.
 */
PG_MUST_USE pg_status_t pg_saml_logout_request(const pg_saml_slo_t *slo,
                                               const pg_saml_logout_subject_t *who,
                                               const char *relay_state,
                                               int64_t now,
                                               char **redirect_url,
                                               char **request_id,
                                               pg_err_t *err);

/* A verified LogoutResponse. All strings malloc'd, NULL when absent. */
typedef struct pg_saml_logout_result {
    char *id;              /* the response ID */
    char *in_response_to;  /* always set on PG_OK: consume it once */
    char *status;          /* top-level StatusCode Value */
    char *sub_status;      /* second-level StatusCode (e.g. PartialLogout) */
    char *relay_state;
} pg_saml_logout_result_t;

void pg_saml_logout_result_clear(pg_saml_logout_result_t *r);

/*
 * Verify the IdP's LogoutResponse. binding REDIRECT: input is the raw
 * query string (after '?', still URL-encoded, at most
 * PG_SAML_SLO_MAX_QUERY); POST: the form body (at most
 * PG_SAML_MAX_POST_BODY). Checks, in order: caps, exactly one
 * SAMLResponse (and at most one RelayState/SigAlg/Signature), for
 * Redirect the query signature (below) BEFORE anything is decoded, then
 * base64, inflate cap (Redirect), decoded XML cap, DOCTYPE/NUL refused, one
 * samlp:LogoutResponse root, Version 2.0, unique IDs, signature REQUIRED
 * (Redirect: the query signature, rsa-sha256 or rsa-sha512, over the
 * parameters exactly as received; POST: one enveloped ds:Signature on the
 * root whose single Reference is the root's own ID) verified only with
 * the IdP metadata keys, Issuer = IdP entity id, Destination = our SLO
 * URL, IssueInstant not in the future (beyond skew) nor older than
 * PG_SAML_SLO_MAX_AGE + skew, InResponseTo present, StatusCode Success.
 * On PG_OK *out is filled (caller clears it). On failure *reason is a
 * stable code, err has detail, and *out is zeroed, except for
 * "status_not_success", where *out is filled (the message is authentic)
 * so the caller can consume in_response_to and report the IdP's status
 * (and must pg_saml_logout_result_clear() it as well).
 * Reasons: "too_large", "malformed", "doctype", "not_logout_response",
 * "bad_version", "duplicate_id", "unsigned", "bad_sig_alg",
 * "bad_signature_placement", "bad_reference", "bad_signature",
 * "bad_issuer", "bad_destination", "bad_time", "expired",
 * "not_yet_valid", "no_in_response_to", "status_not_success".
 * Status: signature failures PG_ERR_CRYPTO, caps PG_ERR_TOO_LARGE,
 * unparsable input PG_ERR_INVALID, every other refusal PG_ERR_DENIED.
 */
PG_MUST_USE pg_status_t pg_saml_logout_response_verify(const pg_saml_slo_t *slo,
                                                       pg_saml_binding_t binding,
                                                       const char *input,
                                                       size_t len, int64_t now,
                                                       pg_saml_logout_result_t *out,
                                                       const char **reason,
                                                       pg_err_t *err);

/* A verified IdP-initiated LogoutRequest. Strings malloc'd, NULL when
 * absent. */
typedef struct pg_saml_logout_request_in {
    char *id;                   /* request ID: key of the replay cache */
    char *name_id;              /* pure text, non-empty */
    char *name_id_format;
    char *sp_name_qualifier;
    char *name_qualifier;
    char *session_index[PG_SAML_SLO_MAX_SESSIONS];
    size_t n_session_index;     /* 0: every session of name_id */
    char *relay_state;          /* pass back in the response */
    int64_t issue_instant;
    int64_t replay_until;       /* keep id in the replay cache until then */
} pg_saml_logout_request_in_t;

void pg_saml_logout_request_in_clear(pg_saml_logout_request_in_t *r);

/*
 * Verify an IdP-initiated LogoutRequest (bindings and caps as for
 * pg_saml_logout_response_verify; the parameter is SAMLRequest). An
 * unsigned request is refused. Checks: one samlp:LogoutRequest root,
 * Version 2.0, unique IDs, signature as above, Issuer = IdP, Destination
 * = our SLO URL, IssueInstant within [now - PG_SAML_SLO_MAX_AGE - skew,
 * now + skew], NotOnOrAfter (if present) not passed, exactly one
 * saml:NameID or saml:EncryptedID (decrypted with the SP key only; the
 * plaintext is capped, DOCTYPE-refused, safely parsed and must be one
 * saml:NameID) with pure-text content (BaseID refused), at most
 * PG_SAML_SLO_MAX_SESSIONS SessionIndex elements. On PG_OK *out is
 * filled (caller clears it); the caller must put out->id into a replay
 * cache until out->replay_until, then end the matching local sessions.
 * On failure *out is zeroed and *reason is one of the codes above with
 * "not_logout_request" instead of "not_logout_response", and without
 * "no_in_response_to"/"status_not_success", plus "no_nameid",
 * "nameid_not_text", "decrypt_failed" (every EncryptedID failure),
 * "base_id_unsupported", "too_many_sessions".
 */
PG_MUST_USE pg_status_t pg_saml_logout_request_verify(const pg_saml_slo_t *slo,
                                                      pg_saml_binding_t binding,
                                                      const char *input,
                                                      size_t len, int64_t now,
                                                      pg_saml_logout_request_in_t *out,
                                                      const char **reason,
                                                      pg_err_t *err);

#define PG_SAML_STATUS_SUCCESS   "urn:oasis:names:tc:SAML:2.0:status:Success"
#define PG_SAML_STATUS_RESPONDER "urn:oasis:names:tc:SAML:2.0:status:Responder"
#define PG_SAML_STATUS_REQUESTER "urn:oasis:names:tc:SAML:2.0:status:Requester"
#define PG_SAML_STATUS_PARTIAL   "urn:oasis:names:tc:SAML:2.0:status:PartialLogout"

/*
 * Our answer to a verified IdP LogoutRequest: a LogoutResponse (Issuer =
 * us, Destination = the IdP's Redirect SLO ResponseLocation, else its
 * Location, InResponseTo = in_response_to, fresh ID, IssueInstant = now,
 * StatusCode = status or Success when NULL, with an optional second-level
 * sub_status), signed for HTTP-Redirect like pg_saml_logout_request.
 * in_response_to must be the verified request's id (at most 1 KiB, no
 * control characters, else PG_ERR_INVALID); status/sub_status
 * must be absolute URIs (at most 256 bytes); relay_state (the request's,
 * may be NULL) at most PG_SAML_SLO_MAX_RELAY_IN bytes.
 * *redirect_url is malloc'd (caller frees).
 */
PG_MUST_USE pg_status_t pg_saml_logout_response(const pg_saml_slo_t *slo,
                                                const char *in_response_to,
                                                const char *status,
                                                const char *sub_status,
                                                const char *relay_state,
                                                int64_t now,
                                                char **redirect_url,
                                                pg_err_t *err);

#endif
