/*
 * provgate core: the one JSON configuration, parsed and validated.
 *
 * The file is the single source of truth for the module and the sidecar.
 * pg_config_load() validates everything (unknown fields, types, references
 * between sections, templates, secrets readable, policy files) and reports
 * the first problem as "<file>: <json path>: <reason>" or, for JSON syntax
 * errors, "<file>:<line>:<column>: <reason>".
 *
 * Ownership: the returned pg_config_t owns every string and sub-structure;
 * pg_config_free() releases all of it. It is read-only after load and may be
 * shared by every request in a process.
 */
#ifndef PROVGATE_CONFIG_H
#define PROVGATE_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "provgate/status.h"
#include "provgate/util.h"
#include "provgate/redis.h"
#include "provgate/http.h"

#define PG_CONFIG_MAX_FILE (4u * 1024u * 1024u)

typedef enum { PG_TOKEN_AUTH_BASIC = 0, PG_TOKEN_AUTH_POST } pg_token_auth_t;

/* One OpenID Connect provider ("idps": {"<name>": {"type": "oidc", ...}}). */
typedef struct pg_oidc_idp_cfg {
    char *name;
    char *issuer;              /* expected "iss"; required */
    char *discovery_url;       /* default issuer + "/.well-known/openid-configuration" */
    char *client_id;
    char *client_secret;       /* from "client_secret" or "client_secret_file" */
    pg_token_auth_t token_auth;
    char *redirect_uri;        /* absolute URL served by provgate_callback */
    char **scopes;             /* NULL-terminated; must contain "openid" */
    char **allowed_algs;       /* NULL-terminated; default {"RS256"}; never "none"/HS* */
    char *claims_request;      /* optional JSON text for the "claims" parameter */
    char *post_logout_redirect_uri; /* optional */
    unsigned clock_skew_s;     /* default 60 */
    unsigned state_ttl_s;      /* default 300: life of state/nonce/PKCE */
    unsigned http_timeout_ms;  /* default 3000 */
    unsigned jwks_refresh_min_s; /* default 10: rate limit of unknown-kid refresh */
    unsigned metadata_ttl_s;   /* default 3600 */
    unsigned max_auth_age_s;   /* default 600: iat may not be older */
    pg_http_tls_t tls;
} pg_oidc_idp_cfg_t;

typedef enum { PG_IDP_OIDC = 1, PG_IDP_SAML = 2 } pg_idp_type_t;

struct pg_saml_sp;             /* include/provgate/saml.h */
struct pg_saml_slo;            /* include/provgate/saml_slo.h */

/* One SAML 2.0 identity provider ("idps": {"<name>": {"type": "saml", ...}}).
 * The SP (keys, certificate, IdP metadata) is built at load, so that a bad
 * key or metadata file fails the configuration check. With
 * idp_metadata_url the IdP metadata is fetched by each worker at run time
 * (src/gate/saml_meta.c); the SP built here then holds the IdP of
 * idp_metadata_file (the bootstrap copy) when that is given too, else it
 * describes the SP only (SP metadata endpoint) and slo is NULL. */
typedef struct pg_saml_idp_cfg {
    char *sp_entity_id;
    char *acs_url;
    char *slo_url;             /* optional */
    char *sp_key_file;
    char *sp_cert_file;
    char *idp_metadata_file;   /* this and/or idp_metadata_url */
    char *idp_metadata_url;    /* optional: fetched without blocking */
    unsigned metadata_refresh_s; /* default 3600: refetch period of the URL */
    unsigned http_timeout_ms;  /* default 3000: one metadata fetch */
    pg_http_tls_t tls;         /* ca_file, insecure_skip_verify (URL only) */
    char *nameid_format;       /* optional */
    int sign_authn_request;    /* default 0 */
    int require_signed_assertion; /* default 1 */
    int require_signed_response;  /* default 0 */
    int allow_unsolicited;     /* default 0 */
    unsigned clock_skew_s;     /* default 60 */
    unsigned state_ttl_s;      /* default 300 */
    struct pg_saml_sp *sp;     /* owned */
    struct pg_saml_slo *slo;   /* owned; Single Logout, built when slo_url
                                  is set (the IdP metadata must then have a
                                  Redirect SingleLogoutService) */
} pg_saml_idp_cfg_t;

typedef struct pg_idp_cfg {
    pg_idp_type_t type;
    char *name;
    char *display_name;         /* "display_name" (for the IdP choice page);
                                   default name; at most 200 bytes, no
                                   control characters; never NULL */
    pg_oidc_idp_cfg_t oidc;     /* when type == PG_IDP_OIDC */
    pg_saml_idp_cfg_t saml;     /* when type == PG_IDP_SAML */
} pg_idp_cfg_t;

/* One attribute of the account in a target: SCIM attribute -> value.
 * value is a template ("${email}") or a JSON literal (bool/number/object). */
typedef struct pg_attr_map {
    char *scim_path;           /* "userName", "name.givenName", "emails", ... */
    char *tpl;                 /* template text when value is a string, else NULL */
    json_t *literal;           /* JSON literal when not a template, else NULL */
} pg_attr_map_t;

/* SCIM targets use the full SCIM client (src/connectors/scim); every other
 * type goes through the uniform connector contract (connector.h) and is
 * configured by its own "connector" object. */
typedef enum { PG_TARGET_SCIM = 1, PG_TARGET_CONNECTOR } pg_target_type_t;
typedef enum {
    PG_AUTH_NONE = 0, PG_AUTH_BEARER, PG_AUTH_BASIC,
    PG_AUTH_OAUTH2             /* client credentials (SCIM targets) */
} pg_target_auth_t;

typedef struct pg_target_cfg {
    char *name;
    pg_target_type_t type;
    char *base_url;            /* SCIM base, e.g. https://app/scim/v2 (no trailing /) */
    pg_target_auth_t auth;
    char *bearer_token;        /* "token" or "token_file" */
    char *basic_user;
    char *basic_pass;
    /* "auth": {"type": "oauth2"} (PG_AUTH_OAUTH2): RFC 6749 4.4 client
     * credentials; each process keeps one token cache per target */
    char *oauth_token_url;     /* "token_url" (http/https) */
    char *oauth_client_id;     /* "client_id" */
    char *oauth_client_secret; /* "client_secret" or "client_secret_file" */
    char *oauth_scope;         /* "scope", optional */
    unsigned oauth_skew_s;     /* "skew_s", default 30 */
    unsigned timeout_ms;       /* default 5000 */
    unsigned connect_timeout_ms; /* default 1000 */
    pg_http_tls_t tls;
    pg_attr_map_t *attrs;      /* account attribute mapping */
    size_t nattrs;
    char *username_attr;       /* SCIM attribute used for lookup; "userName" */
    int create_missing_groups; /* default 0 */
    int via_outbox;            /* "delivery": "outbox" (1, default) | "direct" */
    unsigned wait_ms;          /* login waits this long for the outbox op;
                                  default 2 * timeout_ms + 1000 */
    int proceed_when_slow;     /* "on_slow": "block" (0, default) | "proceed" */
    unsigned rate_capacity;    /* "rate_limit": {"capacity"}: burst of
                                  operations; 0 = no limit (default) */
    unsigned rate_per_s;       /* "rate_limit": {"per_s"}: operations per
                                  second, shared by every process (outbox) */
    /* PG_TARGET_SCIM only: discovery and dialect (docs/connectors.md) */
    int scim_discovery;        /* "discovery": read /ServiceProviderConfig
                                  once per process and follow it (PATCH or
                                  PUT, If-Match); default 0 (off) */
    int scim_force_put;        /* "dialect": {"force_put"}: never PATCH */
    int scim_no_etag;          /* "dialect": {"no_etag"}: never If-Match */
    int scim_member_remove_value; /* "dialect": {"member_remove"}:
                                  "value" (1) | "filter" (0, default) */
    int scim_no_extensions;    /* "dialect": {"no_extensions"} */
    int scim_bulk;             /* "bulk": group memberships of an ensure
                                  in POST /Bulk when discovery says the
                                  target supports it; needs discovery */
    unsigned retry_attempts;   /* "retry": {"max_attempts"}: attempts per
                                  SCIM call incl. the first; 1 = no retry
                                  (default), at most 10 */
    unsigned retry_base_ms;    /* "retry": {"base_ms"}, default 200 */
    unsigned retry_max_ms;     /* "retry": {"max_ms"}, default 10000 */
    unsigned call_budget_ms;   /* derived: the longest one SCIM call may
                                  take with its retries, timeout_ms *
                                  attempts + max_ms * (attempts - 1); the
                                  per-person lease is 4 * this + 1000 */
    /* PG_TARGET_CONNECTOR only: */
    char *type_name;           /* "rest", "ldap", "sql", "csv", "manual" */
    json_t *connector;         /* the type's own settings (validated by its
                                  constructor, see pg_connector_create) */
    int leave_delete;          /* "leave": "disable" (0, default) | "delete" */
    json_t *reconcile;         /* "reconcile" object (validated by
                                  pg_recon_cfg_parse, recon.h), or NULL;
                                  also set on SCIM targets */
    /* Expiry (docs/sidecar.md "Expiry"; both target types): */
    int deprov_action;         /* "deprovision_on_session_end".action:
                                  PG_DEPROV_NONE (absent), _DISABLE,
                                  _REMOVE_JIT */
    unsigned deprov_grace_s;   /* "deprovision_on_session_end".grace_s,
                                  default 900 */
    unsigned inactivity_s;     /* "inactivity_days" * 86400, or the
                                  test-scale "inactivity_s"; 0 = off */
    unsigned delete_after_s;   /* leave retention: "delete_after_days" *
                                  86400, or the test-scale "delete_after_s";
                                  0 = off. A leaver's account (disabled at
                                  the leave) is deleted this long after it */
} pg_target_cfg_t;

enum { PG_DEPROV_NONE = 0, PG_DEPROV_DISABLE = 1, PG_DEPROV_REMOVE_JIT = 2 };

/* Correlation: link a login to an existing identity by a claim. */
typedef struct pg_corr_rule {
    char *claim;               /* claim to read, e.g. "email" */
    char *verified_claim;      /* optional claim that must be true, e.g. "email_verified" */
    char *index;               /* identity index name, e.g. "email" */
} pg_corr_rule_t;

/* Identity attribute <- claim. */
typedef struct pg_claim_map {
    char *attr;
    char *claim;               /* dotted path into the claims */
} pg_claim_map_t;

typedef struct pg_session_cfg {
    char *cookie_name;         /* default "provgate_session" */
    int cookie_secure;         /* default 1 */
    char *cookie_domain;       /* optional */
    char *cookie_path;         /* default "/" */
    unsigned ttl_s;            /* absolute lifetime, default 28800 */
    unsigned cache_ms;         /* per-process session cache, default 5000; 0 = off */
    uint8_t key[PG_SEAL_KEY_LEN]; /* derived from "key_file" (SHA-256 of content) */
} pg_session_cfg_t;

typedef struct pg_audit_cfg {
    char *file;                /* JSON lines; optional */
    char *stream;              /* Redis stream key suffix, default "audit" */
    unsigned stream_maxlen;    /* approximate cap, default 1000000 */
} pg_audit_cfg_t;

typedef struct pg_headers_cfg {
    char *user;                /* default "X-Provgate-User" */
    char *email;               /* default "X-Provgate-Email" */
    char *groups;              /* default "X-Provgate-Groups" */
    char *entitlements;        /* default "X-Provgate-Entitlements" */
    char *identity;            /* default "X-Provgate-Identity" */
    char *user_attr;           /* identity attribute for the user header, default "username" */
} pg_headers_cfg_t;

/* The durable provisioning outbox (docs/outbox.md). */
typedef struct pg_outbox_cfg {
    int consume;               /* gateway workers apply operations; default 1 */
    unsigned claim_idle_ms;    /* reclaim a dead consumer's op; default 30000 */
    unsigned max_attempts;     /* dead-letter after; default 5 */
    unsigned backoff_base_ms;  /* default 1000 */
    unsigned backoff_max_ms;   /* default 300000 */
    unsigned dedup_ttl_s;      /* idempotency window; default 600 */
    unsigned status_ttl_s;     /* outcome kept for waiters; default 3600 */
    unsigned batch;            /* entries per read; default 16 */
} pg_outbox_cfg_t;

struct pg_policy_set;          /* include/provgate/policy.h */

/*
 * "hr_source": {"event_stream": {...}} (the sidecar's Redis Stream input
 * of JML events, docs/sidecar.md "Events from a Redis Stream").
 */
typedef struct pg_jml_stream_cfg {
    int enabled;               /* "enabled", default false */
    char *stream;              /* key under redis.key_prefix, default
                                  "jml:events" */
    char *group;               /* consumer group, default "provgated" */
    unsigned block_ms;         /* XREADGROUP BLOCK, default 1000 */
    unsigned claim_idle_ms;    /* XAUTOCLAIM min idle, default 60000 */
    unsigned max_event_bytes;  /* cap of one entry's "event", default 65536 */
} pg_jml_stream_cfg_t;

typedef struct pg_config {
    char *file;                /* path it was loaded from */
    char *instance;            /* default: hostname */
    pg_redis_config_t redis;
    pg_session_cfg_t session;
    pg_audit_cfg_t audit;
    pg_headers_cfg_t headers;
    pg_outbox_cfg_t outbox;
    char *admin_role;          /* "admin": {"role"}; default "provgate-admin" */
    json_t *hr_source;         /* "hr_source" (sidecar JML), or NULL */
    char *hr_file;             /* hr_source.file, resolved, or NULL */
    char *hr_drop_dir;         /* hr_source.drop_dir (a folder of exports,
                                  each imported once, then moved to
                                  processed/ or failed/), or NULL; exactly
                                  one of the two is set */
    unsigned hr_poll_s;        /* hr_source.poll_s, default 60; 0 = off */
    unsigned hr_lease_s;       /* hr_source.lease_s: the JML lease
                                  <p>lock:jml, default 30 (3-3600),
                                  renewed every third of it */
    pg_jml_stream_cfg_t jml_stream; /* hr_source.event_stream */
    unsigned expiry_sweep_s;   /* "expiry": {"sweep_s"}, default 60 */
    unsigned expiry_test_divisor; /* "expiry": {"test_time_divisor"}: jit
                                  lifetimes are divided by it (tests only;
                                  default 1) */
    pg_idp_cfg_t *idps;
    size_t nidps;
    pg_target_cfg_t *targets;
    size_t ntargets;
    pg_corr_rule_t *corr;
    size_t ncorr;
    pg_claim_map_t *claims;    /* identity attributes from claims */
    size_t nclaims;
    char *groups_claim;        /* claim holding group names, default "groups" */
    struct pg_policy_set *policies;
} pg_config_t;

PG_MUST_USE pg_status_t pg_config_load(const char *path, pg_config_t **out,
                                       pg_err_t *err);
void pg_config_free(pg_config_t *cfg);

/* Build and free every connector target's connector once, to validate
 * its settings (src/connectors/factory.c; called by pg_config_load). */
PG_MUST_USE pg_status_t pg_connectors_check(const pg_config_t *cfg,
                                            pg_err_t *err);

const pg_idp_cfg_t *pg_config_idp(const pg_config_t *cfg, const char *name);
const pg_target_cfg_t *pg_config_target(const pg_config_t *cfg,
                                        const char *name);

/* ---- helpers for sections that parse their own JSON --------------------
 * Each takes the object, the JSON path of that object (e.g. "$.idps.corp")
 * for messages, and reports "<path>.<key>: <reason>" into err. */

/* Reject members not in allowed (NULL-terminated). */
PG_MUST_USE pg_status_t pg_cfg_keys(const json_t *obj, const char *path,
                                    const char *const *allowed, pg_err_t *err);
/* String member; required or default def (may be NULL). *out is malloc'd. */
PG_MUST_USE pg_status_t pg_cfg_str(const json_t *obj, const char *path,
                                   const char *key, int required,
                                   const char *def, char **out, pg_err_t *err);
PG_MUST_USE pg_status_t pg_cfg_uint(const json_t *obj, const char *path,
                                    const char *key, unsigned def,
                                    unsigned min, unsigned max, unsigned *out,
                                    pg_err_t *err);
PG_MUST_USE pg_status_t pg_cfg_bool(const json_t *obj, const char *path,
                                    const char *key, int def, int *out,
                                    pg_err_t *err);
/* Array of strings -> NULL-terminated malloc'd vector (def used if absent). */
PG_MUST_USE pg_status_t pg_cfg_strv(const json_t *obj, const char *path,
                                    const char *key, const char *const *def,
                                    char ***out, pg_err_t *err);
/* Secret from "<key>" inline or "<key>_file" (exactly one when required). */
PG_MUST_USE pg_status_t pg_cfg_secret(const json_t *obj, const char *path,
                                      const char *key, int required,
                                      char **out, pg_err_t *err);
void pg_strv_free(char **v);

#endif
