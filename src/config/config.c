/*
 * provgate core: loading and validating the JSON configuration.
 *
 * pg_config_load() reads one file (capped at PG_CONFIG_MAX_FILE), parses it
 * with jansson (duplicate keys rejected), then walks every section with the
 * pg_cfg_* accessors. Problems are reported as
 *   "<file>:<line>:<column>: <jansson text>"     JSON syntax
 *   "<file>: <json path>: <reason>"              everything else
 *   "<policy file>: <json path>: <reason>"       policy files
 * and the load returns PG_ERR_CONFIG (PG_ERR_NOMEM when out of memory).
 *
 * Relative file paths anywhere in the configuration are resolved against
 * the absolute directory of the configuration file, and stored resolved.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/evp.h>
#include "provgate/config.h"
#include "provgate/recon.h"
#include "provgate/saml_slo.h"
#include "provgate/hrfeed.h"
#include "provgate/saml.h"
#include "provgate/policy.h"
#include "internal.h"

#define MAX_IDPS 32u
#define MAX_TARGETS 64u
#define MAX_ATTRS 128u
#define MAX_CLAIMS 128u
#define MAX_CORR 16u
#define MAX_NAME 64u            /* idp / target / instance names */
#define MAX_DISPLAY_NAME 200u   /* idps.<name>.display_name, in bytes */
#define MIN_SESSION_KEY 32u

#define TRY(x) do { st = (x); if (st != PG_OK) { return st; } } while (0)

/* Identity attribute / template placeholder name: [A-Za-z0-9_.-]{1,128}. */
static int
attr_name_ok(const char *s)
{
    return pg_cfg_word_ok(s, 128, "_.-");
}

/* Readable regular file, else PG_ERR_CONFIG "<where>: cannot read ...". */
static pg_status_t
check_readable(const char *file, const char *path, const char *key,
               pg_err_t *err)
{
    struct stat sb;

    if (file == NULL) {
        return PG_OK;
    }
    if (stat(file, &sb) != 0 || access(file, R_OK) != 0) {
        pg_err_set(err, "%s.%s: cannot read \"%s\": %s", path, key, file,
                   strerror(errno));
        return PG_ERR_CONFIG;
    }
    if (!S_ISREG(sb.st_mode)) {
        pg_err_set(err, "%s.%s: \"%s\" is not a regular file", path, key,
                   file);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* String member restricted to [A-Za-z0-9] + extra, at most max bytes. */
static pg_status_t
cfg_word(const json_t *obj, const char *path, const char *key, int required,
         const char *def, size_t max, const char *extra, const char *what,
         char **out, pg_err_t *err)
{
    pg_status_t st = pg_cfg_str(obj, path, key, required, def, out, err);

    if (st != PG_OK || *out == NULL) {
        return st;
    }
    if (!pg_cfg_word_ok(*out, max, extra)) {
        pg_err_set(err, "%s.%s: must be 1-%zu characters of %s", path, key,
                   max, what);
        free(*out);
        *out = NULL;
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* Wipe and free a secret string. */
static void
free_secret(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* ---- redis ----------------------------------------------------------- */

/*
 * "redis" section (o may be NULL: all defaults) into cfg->redis. Like
 * every parse_* below: what it allocates is owned by cfg at once, so
 * pg_config_free() releases a half-parsed configuration after a failure.
 */
static pg_status_t
parse_redis(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    static const char *const keys[] = {
        "host", "port", "unix_path", "username", "password", "password_file",
        "db", "connect_timeout_ms", "command_timeout_ms", "key_prefix", NULL
    };
    const char *p = "$.redis";
    pg_redis_config_t *r = &cfg->redis;
    unsigned u;
    pg_status_t st;

    if (o != NULL) {
        TRY(pg_cfg_keys(o, p, keys, err));
    }
    TRY(cfg_word(o, p, "host", 0, "127.0.0.1", 253, ".-:",
                 "A-Z a-z 0-9 . - :", &r->host, err));
    TRY(pg_cfg_uint(o, p, "port", 6379, 1, 65535, &u, err));
    r->port = (int)u;
    TRY(pg_cfg_path(o, p, "unix_path", 0, &r->unix_path, err));
    TRY(pg_cfg_str(o, p, "username", 0, NULL, &r->username, err));
    TRY(pg_cfg_secret(o, p, "password", 0, &r->password, err));
    TRY(pg_cfg_uint(o, p, "db", 0, 0, 255, &u, err));
    r->db = (int)u;
    TRY(pg_cfg_uint(o, p, "connect_timeout_ms", 1000, 10, 60000,
                    &r->connect_timeout_ms, err));
    TRY(pg_cfg_uint(o, p, "command_timeout_ms", 1000, 10, 60000,
                    &r->command_timeout_ms, err));
    TRY(cfg_word(o, p, "key_prefix", 0, "pg:", 64, "_:.-",
                 "A-Z a-z 0-9 _ : . -", &r->key_prefix, err));
    return PG_OK;
}

/* ---- session --------------------------------------------------------- */

/* Read key_file (binary, >= 32 bytes) and derive the key as its SHA-256. */
static pg_status_t
load_session_key(pg_session_cfg_t *s, const char *file, const char *p,
                 pg_err_t *err)
{
    pg_err_t ferr;
    char *data = NULL;
    size_t len = 0;
    unsigned mdlen = 0;
    pg_status_t st;

    st = pg_read_file(file, PG_CFG_MAX_SECRET, 0, &data, &len, &ferr);
    if (st == PG_ERR_NOMEM) {
        return st;
    }
    if (st != PG_OK) {
        pg_err_set(err, "%s.key_file: %s", p, ferr.msg);
        return PG_ERR_CONFIG;
    }
    if (len < MIN_SESSION_KEY) {
        pg_err_set(err, "%s.key_file: key file must hold at least %u bytes "
                   "of secret (has %zu)", p, MIN_SESSION_KEY, len);
        explicit_bzero(data, len);
        free(data);
        return PG_ERR_CONFIG;
    }
    if (EVP_Digest(data, len, s->key, &mdlen, EVP_sha256(), NULL) != 1 ||
        mdlen != PG_SEAL_KEY_LEN) {
        explicit_bzero(data, len);
        free(data);
        pg_err_set(err, "%s.key_file: SHA-256 failed", p);
        return PG_ERR_CONFIG;
    }
    explicit_bzero(data, len);
    free(data);
    return PG_OK;
}

/* "session" (required, key_file required) into cfg->session. */
static pg_status_t
parse_session(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    static const char *const keys[] = {
        "cookie_name", "cookie_secure", "cookie_domain", "cookie_path",
        "ttl_s", "cache_ms", "key_file", NULL
    };
    const char *p = "$.session";
    pg_session_cfg_t *s = &cfg->session;
    char *key_file = NULL;
    pg_status_t st;

    if (o == NULL) {
        pg_err_set(err, "%s: missing required section (needs key_file)", p);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_keys(o, p, keys, err));
    TRY(cfg_word(o, p, "cookie_name", 0, "provgate_session", 64, "_.-",
                 "A-Z a-z 0-9 _ . -", &s->cookie_name, err));
    TRY(pg_cfg_bool(o, p, "cookie_secure", 1, &s->cookie_secure, err));
    TRY(cfg_word(o, p, "cookie_domain", 0, NULL, 253, ".-",
                 "A-Z a-z 0-9 . -", &s->cookie_domain, err));
    TRY(pg_cfg_str(o, p, "cookie_path", 0, "/", &s->cookie_path, err));
    if (s->cookie_path[0] != '/' || strlen(s->cookie_path) > 1024 ||
        strpbrk(s->cookie_path, ";, \"\\") != NULL) {
        pg_err_set(err, "%s.cookie_path: must start with '/' and contain no "
                   "spaces, ';', ',', '\"' or '\\' (max 1024 bytes)", p);
        return PG_ERR_CONFIG;
    }
    if (strncmp(s->cookie_name, "__Host-", 7) == 0 &&
        (!s->cookie_secure || s->cookie_domain != NULL ||
         strcmp(s->cookie_path, "/") != 0)) {
        pg_err_set(err, "%s.cookie_name: a \"__Host-\" cookie needs "
                   "cookie_secure true, cookie_path \"/\" and no "
                   "cookie_domain", p);
        return PG_ERR_CONFIG;
    }
    if (strncmp(s->cookie_name, "__Secure-", 9) == 0 && !s->cookie_secure) {
        pg_err_set(err, "%s.cookie_name: a \"__Secure-\" cookie needs "
                   "cookie_secure true", p);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_uint(o, p, "ttl_s", 28800, 1, 2592000, &s->ttl_s, err));
    TRY(pg_cfg_uint(o, p, "cache_ms", 5000, 0, 60000, &s->cache_ms, err));
    TRY(pg_cfg_path(o, p, "key_file", 1, &key_file, err));
    st = load_session_key(s, key_file, p, err);
    free(key_file);
    return st;
}

/* ---- audit / headers ------------------------------------------------- */

/* "audit" (optional) into cfg->audit. */
static pg_status_t
parse_audit(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    static const char *const keys[] = {"file", "stream", "stream_maxlen",
                                       NULL};
    const char *p = "$.audit";
    pg_audit_cfg_t *a = &cfg->audit;
    pg_status_t st;

    if (o != NULL) {
        TRY(pg_cfg_keys(o, p, keys, err));
    }
    TRY(pg_cfg_path(o, p, "file", 0, &a->file, err));
    TRY(cfg_word(o, p, "stream", 0, "audit", 64, "_:.-",
                 "A-Z a-z 0-9 _ : . -", &a->stream, err));
    TRY(pg_cfg_uint(o, p, "stream_maxlen", 1000000, 1, 100000000,
                    &a->stream_maxlen, err));
    return PG_OK;
}

/*
 * "headers" (optional) into cfg->headers; names must differ and must
 * not be reserved HTTP headers.
 */
static pg_status_t
parse_headers(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    static const char *const keys[] = {
        "user", "email", "groups", "entitlements", "identity", "user_attr",
        NULL
    };
    /* Headers the gateway must never overwrite with identity data. */
    static const char *const reserved[] = {
        "Host", "Cookie", "Authorization", "Proxy-Authorization",
        "Content-Length", "Content-Type", "Transfer-Encoding", "Connection",
        "Upgrade", "Te", "Trailer", "Forwarded", "X-Forwarded-For", NULL
    };
    const char *p = "$.headers";
    pg_headers_cfg_t *h = &cfg->headers;
    char **slot[5];
    size_t i, j, k;
    pg_status_t st;

    if (o != NULL) {
        TRY(pg_cfg_keys(o, p, keys, err));
    }
    TRY(cfg_word(o, p, "user", 0, "X-Provgate-User", 64, "-",
                 "A-Z a-z 0-9 -", &h->user, err));
    TRY(cfg_word(o, p, "email", 0, "X-Provgate-Email", 64, "-",
                 "A-Z a-z 0-9 -", &h->email, err));
    TRY(cfg_word(o, p, "groups", 0, "X-Provgate-Groups", 64, "-",
                 "A-Z a-z 0-9 -", &h->groups, err));
    TRY(cfg_word(o, p, "entitlements", 0, "X-Provgate-Entitlements", 64, "-",
                 "A-Z a-z 0-9 -", &h->entitlements, err));
    TRY(cfg_word(o, p, "identity", 0, "X-Provgate-Identity", 64, "-",
                 "A-Z a-z 0-9 -", &h->identity, err));
    TRY(cfg_word(o, p, "user_attr", 0, "username", 128, "_.-",
                 "A-Z a-z 0-9 _ . -", &h->user_attr, err));

    slot[0] = &h->user;
    slot[1] = &h->email;
    slot[2] = &h->groups;
    slot[3] = &h->entitlements;
    slot[4] = &h->identity;
    for (i = 0; i < 5; i++) {
        for (k = 0; reserved[k] != NULL; k++) {
            if (strcasecmp(*slot[i], reserved[k]) == 0) {
                pg_err_set(err, "%s.%s: \"%s\" is a reserved HTTP header", p,
                           keys[i], *slot[i]);
                return PG_ERR_CONFIG;
            }
        }
        for (j = 0; j < i; j++) {
            if (strcasecmp(*slot[i], *slot[j]) == 0) {
                pg_err_set(err, "%s.%s: same header name as %s.%s", p,
                           keys[i], p, keys[j]);
                return PG_ERR_CONFIG;
            }
        }
    }
    return PG_OK;
}

/* ---- identity -------------------------------------------------------- */

/* Append attr <- claim to cfg->claims (space reserved by the caller). */
static pg_status_t
add_claim(pg_config_t *cfg, const char *attr, const char *claim)
{
    pg_claim_map_t *m = &cfg->claims[cfg->nclaims];

    m->attr = strdup(attr);
    m->claim = strdup(claim);
    cfg->nclaims++;
    return m->attr != NULL && m->claim != NULL ? PG_OK : PG_ERR_NOMEM;
}

/* "identity.claims" (NULL: the default map) into cfg->claims. */
static pg_status_t
parse_claims(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    static const char *const defaults[][2] = {
        {"username", "preferred_username"}, {"email", "email"},
        {"given_name", "given_name"}, {"family_name", "family_name"},
        {"name", "name"}
    };
    const char *p = "$.identity.claims";
    char where[PG_ERR_MSG_MAX];
    const char *attr;
    json_t *v;
    size_t i, n;
    pg_status_t st;

    if (o == NULL) {
        n = sizeof(defaults) / sizeof(defaults[0]);
        cfg->claims = calloc(n, sizeof(*cfg->claims));
        if (cfg->claims == NULL) {
            return PG_ERR_NOMEM;
        }
        for (i = 0; i < n; i++) {
            TRY(add_claim(cfg, defaults[i][0], defaults[i][1]));
        }
        return PG_OK;
    }
    if (!json_is_object(o)) {
        pg_err_set(err, "%s: must be an object", p);
        return PG_ERR_CONFIG;
    }
    n = json_object_size(o);
    if (n > MAX_CLAIMS) {
        pg_err_set(err, "%s: more than %u attributes", p, MAX_CLAIMS);
        return PG_ERR_CONFIG;
    }
    cfg->claims = calloc(n > 0 ? n : 1, sizeof(*cfg->claims));
    if (cfg->claims == NULL) {
        return PG_ERR_NOMEM;
    }
    json_object_foreach((json_t *)o, attr, v) {
        char *claim = NULL;
        if (!attr_name_ok(attr)) {
            pg_err_set(err, "%s: attribute names must be 1-128 characters of "
                       "A-Z a-z 0-9 _ . -", p);
            return PG_ERR_CONFIG;
        }
        if (strcmp(attr, "groups") == 0) {
            pg_err_set(err, "%s.groups: \"groups\" is reserved (set "
                       "$.identity.groups_claim instead)", p);
            return PG_ERR_CONFIG;
        }
        TRY(pg_cfg_str(o, p, attr, 1, NULL, &claim, err));
        if (strlen(claim) > 256 || claim[0] == '.' ||
            claim[strlen(claim) - 1] == '.' || strstr(claim, "..") != NULL) {
            pg_cfg_join(where, sizeof(where), p, attr);
            pg_err_set(err, "%s: claim path must be 1-256 bytes of "
                       "dot-separated non-empty names", where);
            free(claim);
            return PG_ERR_CONFIG;
        }
        st = add_claim(cfg, attr, claim);
        free(claim);
        if (st != PG_OK) {
            return st;
        }
    }
    return PG_OK;
}

/* "identity.correlation" (NULL: none) into cfg->corr, at most 16 rules. */
static pg_status_t
parse_correlation(pg_config_t *cfg, const json_t *a, pg_err_t *err)
{
    static const char *const keys[] = {"claim", "verified_claim", "index",
                                       NULL};
    char p[64];
    size_t i, n;
    pg_status_t st;

    if (a == NULL) {
        return PG_OK;
    }
    if (!json_is_array(a)) {
        pg_err_set(err, "$.identity.correlation: must be an array");
        return PG_ERR_CONFIG;
    }
    n = json_array_size(a);
    if (n > MAX_CORR) {
        pg_err_set(err, "$.identity.correlation: more than %u rules",
                   MAX_CORR);
        return PG_ERR_CONFIG;
    }
    cfg->corr = calloc(n > 0 ? n : 1, sizeof(*cfg->corr));
    if (cfg->corr == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        const json_t *o = json_array_get(a, i);
        pg_corr_rule_t *r = &cfg->corr[i];
        int w = snprintf(p, sizeof(p), "$.identity.correlation[%zu]", i);
        (void)w;
        cfg->ncorr = i + 1;
        TRY(pg_cfg_keys(o, p, keys, err));
        TRY(pg_cfg_str(o, p, "claim", 1, NULL, &r->claim, err));
        TRY(pg_cfg_str(o, p, "verified_claim", 0, NULL, &r->verified_claim,
                       err));
        TRY(cfg_word(o, p, "index", 1, NULL, 64, "_-", "A-Z a-z 0-9 _ -",
                     &r->index, err));
    }
    return PG_OK;
}

/* "identity" (optional) into claims, groups_claim and corr. */
static pg_status_t
parse_identity(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    static const char *const keys[] = {"claims", "groups_claim",
                                       "correlation", NULL};
    const char *p = "$.identity";
    pg_status_t st;

    if (o != NULL) {
        TRY(pg_cfg_keys(o, p, keys, err));
    }
    TRY(parse_claims(cfg, json_object_get(o, "claims"), err));
    TRY(pg_cfg_str(o, p, "groups_claim", 0, "groups", &cfg->groups_claim,
                   err));
    TRY(parse_correlation(cfg, json_object_get(o, "correlation"), err));
    return PG_OK;
}

/* ---- idps ------------------------------------------------------------ */

/* URL member: required or optional, checked with pg_cfg_url_check(). */
static pg_status_t
cfg_url(const json_t *o, const char *p, const char *key, int required,
        unsigned flags, char **out, pg_err_t *err)
{
    pg_err_t uerr;
    pg_status_t st = pg_cfg_str(o, p, key, required, NULL, out, err);

    if (st != PG_OK || *out == NULL) {
        return st;
    }
    if (pg_cfg_url_check(*out, flags, &uerr) != PG_OK) {
        pg_err_set(err, "%s.%s: %s", p, key, uerr.msg);
        free(*out);
        *out = NULL;
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* Signature algorithms the OIDC client may accept (all asymmetric). */
static int
alg_supported(const char *a)
{
    static const char *const ok[] = {
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
        "ES256", "ES384", "ES512", "EdDSA", NULL
    };
    size_t i;

    for (i = 0; ok[i] != NULL; i++) {
        if (strcmp(a, ok[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/* allowed_algs: non-empty, asymmetric only ("none" and HS* rejected). */
static pg_status_t
check_algs(char **algs, const char *p, pg_err_t *err)
{
    size_t i;

    if (algs[0] == NULL) {
        pg_err_set(err, "%s.allowed_algs: must not be empty", p);
        return PG_ERR_CONFIG;
    }
    for (i = 0; algs[i] != NULL; i++) {
        if (strcasecmp(algs[i], "none") == 0) {
            pg_err_set(err, "%s.allowed_algs[%zu]: alg \"none\" is not "
                       "allowed", p, i);
            return PG_ERR_CONFIG;
        }
        if (strncasecmp(algs[i], "HS", 2) == 0) {
            pg_err_set(err, "%s.allowed_algs[%zu]: symmetric alg \"%s\" is "
                       "not allowed (only asymmetric signatures)", p, i,
                       algs[i]);
            return PG_ERR_CONFIG;
        }
        if (!alg_supported(algs[i])) {
            pg_err_set(err, "%s.allowed_algs[%zu]: unsupported alg \"%s\"",
                       p, i, algs[i]);
            return PG_ERR_CONFIG;
        }
    }
    return PG_OK;
}

/* scopes: RFC 6749 scope-tokens, "openid" required. */
static pg_status_t
check_scopes(char **scopes, const char *p, pg_err_t *err)
{
    size_t i;
    int openid = 0;

    for (i = 0; scopes[i] != NULL; i++) {
        /* RFC 6749 scope-token: %x21 / %x23-5B / %x5D-7E */
        if (strpbrk(scopes[i], " \"\\") != NULL) {
            pg_err_set(err, "%s.scopes[%zu]: a scope must not contain "
                       "spaces, '\"' or '\\'", p, i);
            return PG_ERR_CONFIG;
        }
        if (strcmp(scopes[i], "openid") == 0) {
            openid = 1;
        }
    }
    if (!openid) {
        pg_err_set(err, "%s.scopes: must contain \"openid\"", p);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* discovery_url default: issuer without trailing '/' + well-known path. */
static pg_status_t
default_discovery(const char *issuer, char **out)
{
    static const char wk[] = "/.well-known/openid-configuration";
    size_t n = strlen(issuer);
    char *r;

    while (n > 0 && issuer[n - 1] == '/') {
        n--;
    }
    r = malloc(n + sizeof(wk));
    if (r == NULL) {
        return PG_ERR_NOMEM;
    }
    memcpy(r, issuer, n);
    memcpy(r + n, wk, sizeof(wk));
    *out = r;
    return PG_OK;
}

/* One "type": "oidc" idp object at path p into c. */
static pg_status_t
parse_oidc(pg_oidc_idp_cfg_t *c, const json_t *o, const char *p,
           pg_err_t *err)
{
    static const char *const keys[] = {
        "type", "issuer", "discovery_url", "client_id", "client_secret",
        "client_secret_file", "token_auth", "redirect_uri", "scopes",
        "allowed_algs", "claims_request", "post_logout_redirect_uri",
        "clock_skew_s", "state_ttl_s", "http_timeout_ms",
        "jwks_refresh_min_s", "metadata_ttl_s", "max_auth_age_s", "ca_file",
        "insecure_skip_verify", "display_name", NULL
    };
    static const char *const def_scopes[] = {"openid", "email", "profile",
                                             NULL};
    static const char *const def_algs[] = {"RS256", NULL};
    char *s = NULL, *ca = NULL;
    const json_t *cr;
    pg_status_t st;

    TRY(pg_cfg_keys(o, p, keys, err));
    TRY(cfg_url(o, p, "issuer", 1, PG_URL_NO_QUERY | PG_URL_NO_FRAGMENT,
                &c->issuer, err));
    TRY(cfg_url(o, p, "discovery_url", 0, PG_URL_NO_FRAGMENT,
                &c->discovery_url, err));
    if (c->discovery_url == NULL) {
        TRY(default_discovery(c->issuer, &c->discovery_url));
    }
    TRY(pg_cfg_str(o, p, "client_id", 1, NULL, &c->client_id, err));
    TRY(pg_cfg_secret(o, p, "client_secret", 1, &c->client_secret, err));
    TRY(pg_cfg_str(o, p, "token_auth", 0, "client_secret_basic", &s, err));
    if (strcmp(s, "client_secret_basic") == 0) {
        c->token_auth = PG_TOKEN_AUTH_BASIC;
    } else if (strcmp(s, "client_secret_post") == 0) {
        c->token_auth = PG_TOKEN_AUTH_POST;
    } else {
        pg_err_set(err, "%s.token_auth: must be \"client_secret_basic\" or "
                   "\"client_secret_post\"", p);
        free(s);
        return PG_ERR_CONFIG;
    }
    free(s);
    TRY(cfg_url(o, p, "redirect_uri", 1, PG_URL_NO_FRAGMENT,
                &c->redirect_uri, err));
    TRY(pg_cfg_strv(o, p, "scopes", def_scopes, &c->scopes, err));
    TRY(check_scopes(c->scopes, p, err));
    TRY(pg_cfg_strv(o, p, "allowed_algs", def_algs, &c->allowed_algs, err));
    TRY(check_algs(c->allowed_algs, p, err));
    cr = json_object_get(o, "claims_request");
    if (cr != NULL) {
        if (!json_is_object(cr)) {
            pg_err_set(err, "%s.claims_request: must be an object", p);
            return PG_ERR_CONFIG;
        }
        c->claims_request = json_dumps(cr, JSON_COMPACT | JSON_SORT_KEYS);
        if (c->claims_request == NULL) {
            return PG_ERR_NOMEM;
        }
        if (strlen(c->claims_request) > 4096) {
            pg_err_set(err, "%s.claims_request: longer than 4096 bytes as "
                       "JSON", p);
            return PG_ERR_CONFIG;
        }
    }
    TRY(cfg_url(o, p, "post_logout_redirect_uri", 0, PG_URL_NO_FRAGMENT,
                &c->post_logout_redirect_uri, err));
    TRY(pg_cfg_uint(o, p, "clock_skew_s", 60, 0, 600, &c->clock_skew_s,
                    err));
    TRY(pg_cfg_uint(o, p, "state_ttl_s", 300, 1, 3600, &c->state_ttl_s,
                    err));
    TRY(pg_cfg_uint(o, p, "http_timeout_ms", 3000, 10, 60000,
                    &c->http_timeout_ms, err));
    TRY(pg_cfg_uint(o, p, "jwks_refresh_min_s", 10, 0, 3600,
                    &c->jwks_refresh_min_s, err));
    TRY(pg_cfg_uint(o, p, "metadata_ttl_s", 3600, 1, 604800,
                    &c->metadata_ttl_s, err));
    TRY(pg_cfg_uint(o, p, "max_auth_age_s", 600, 1, 86400,
                    &c->max_auth_age_s, err));
    TRY(pg_cfg_path(o, p, "ca_file", 0, &ca, err));
    c->tls.ca_file = ca;
    TRY(check_readable(ca, p, "ca_file", err));
    TRY(pg_cfg_bool(o, p, "insecure_skip_verify", 0,
                    &c->tls.insecure_skip_verify, err));
    return PG_OK;
}

/* One "type": "saml" idp object at path p into c; builds the SP. */
static pg_status_t
parse_saml(pg_saml_idp_cfg_t *c, const json_t *o, const char *p,
           pg_err_t *err)
{
    static const char *const keys[] = {
        "type", "sp_entity_id", "acs_url", "slo_url", "sp_key_file",
        "sp_cert_file", "idp_metadata_file", "nameid_format",
        "sign_authn_request", "require_signed_assertion",
        "require_signed_response", "allow_unsolicited", "clock_skew_s",
        "state_ttl_s", "display_name", "idp_metadata_url", "metadata_refresh_s",
        "http_timeout_ms", "ca_file", "insecure_skip_verify", NULL
    };
    static const char *const url_only[] = {
        "metadata_refresh_s", "http_timeout_ms", "ca_file",
        "insecure_skip_verify", NULL
    };
    pg_saml_sp_cfg_t sc;
    pg_err_t e2 = { "" };
    char *ca = NULL;
    size_t i;
    pg_status_t st;

    TRY(pg_cfg_keys(o, p, keys, err));
    TRY(pg_cfg_str(o, p, "sp_entity_id", 1, NULL, &c->sp_entity_id, err));
    TRY(cfg_url(o, p, "acs_url", 1, PG_URL_NO_FRAGMENT, &c->acs_url, err));
    TRY(cfg_url(o, p, "slo_url", 0, PG_URL_NO_FRAGMENT, &c->slo_url, err));
    TRY(pg_cfg_path(o, p, "sp_key_file", 1, &c->sp_key_file, err));
    TRY(check_readable(c->sp_key_file, p, "sp_key_file", err));
    TRY(pg_cfg_path(o, p, "sp_cert_file", 1, &c->sp_cert_file, err));
    TRY(check_readable(c->sp_cert_file, p, "sp_cert_file", err));
    TRY(pg_cfg_path(o, p, "idp_metadata_file", 0, &c->idp_metadata_file,
                    err));
    TRY(check_readable(c->idp_metadata_file, p, "idp_metadata_file", err));
    TRY(cfg_url(o, p, "idp_metadata_url", 0, PG_URL_NO_FRAGMENT,
                &c->idp_metadata_url, err));
    if (c->idp_metadata_file == NULL && c->idp_metadata_url == NULL) {
        pg_err_set(err, "%s: one of idp_metadata_file and idp_metadata_url "
                   "is required (both: the file is used until the first "
                   "successful fetch)", p);
        return PG_ERR_CONFIG;
    }
    for (i = 0; c->idp_metadata_url == NULL && url_only[i] != NULL; i++) {
        if (json_object_get(o, url_only[i]) != NULL) {
            pg_err_set(err, "%s.%s: only meaningful with idp_metadata_url",
                       p, url_only[i]);
            return PG_ERR_CONFIG;
        }
    }
    TRY(pg_cfg_uint(o, p, "metadata_refresh_s", 3600, 1, 604800,
                    &c->metadata_refresh_s, err));
    TRY(pg_cfg_uint(o, p, "http_timeout_ms", 3000, 10, 60000,
                    &c->http_timeout_ms, err));
    TRY(pg_cfg_path(o, p, "ca_file", 0, &ca, err));
    c->tls.ca_file = ca;
    TRY(check_readable(ca, p, "ca_file", err));
    TRY(pg_cfg_bool(o, p, "insecure_skip_verify", 0,
                    &c->tls.insecure_skip_verify, err));
    TRY(pg_cfg_str(o, p, "nameid_format", 0, NULL, &c->nameid_format, err));
    TRY(pg_cfg_bool(o, p, "sign_authn_request", 0, &c->sign_authn_request,
                    err));
    TRY(pg_cfg_bool(o, p, "require_signed_assertion", 1,
                    &c->require_signed_assertion, err));
    TRY(pg_cfg_bool(o, p, "require_signed_response", 0,
                    &c->require_signed_response, err));
    TRY(pg_cfg_bool(o, p, "allow_unsolicited", 0, &c->allow_unsolicited,
                    err));
    TRY(pg_cfg_uint(o, p, "clock_skew_s", 60, 0, 600, &c->clock_skew_s,
                    err));
    TRY(pg_cfg_uint(o, p, "state_ttl_s", 300, 1, 3600, &c->state_ttl_s,
                    err));
    if (!c->require_signed_assertion && !c->require_signed_response) {
        pg_err_set(err, "%s: at least one of require_signed_assertion and "
                   "require_signed_response must be true", p);
        return PG_ERR_CONFIG;
    }

    memset(&sc, 0, sizeof(sc));
    sc.entity_id = c->sp_entity_id;
    sc.acs_url = c->acs_url;
    sc.slo_url = c->slo_url;
    sc.key_path = c->sp_key_file;
    sc.cert_path = c->sp_cert_file;
    sc.idp_metadata_path = c->idp_metadata_file;
    sc.nameid_format = c->nameid_format;
    sc.sign_authn_request = c->sign_authn_request;
    sc.require_signed_assertion = c->require_signed_assertion;
    sc.require_signed_response = c->require_signed_response;
    sc.allow_unsolicited = c->allow_unsolicited;
    sc.clock_skew_s = c->clock_skew_s;
    st = pg_saml_sp_new(&sc, &c->sp, &e2);
    if (st != PG_OK) {
        pg_err_set(err, "%s: %s", p, e2.msg);
        return PG_ERR_CONFIG;
    }
    if (c->slo_url != NULL && c->idp_metadata_file != NULL) {
        /* Single Logout: the IdP must have a Redirect SingleLogoutService
         * and a signing key in its metadata, or the config is refused
         * (fetched metadata is held to the same rule at run time) */
        st = pg_saml_slo_new(c->sp, &sc, &c->slo, &e2);
        if (st != PG_OK) {
            pg_err_set(err, "%s/slo_url: Single Logout cannot be set up "
                       "with %s: %s", p, c->idp_metadata_file, e2.msg);
            return PG_ERR_CONFIG;
        }
    }
    return PG_OK;
}

/*
 * An IdP-initiated response names no request, so the ACS that receives it
 * tells which provider it is for: two providers with allow_unsolicited may
 * not share the path of one acs_url.
 */
static pg_status_t
check_unsolicited(const pg_config_t *cfg, pg_err_t *err)
{
    size_t i, k, la, lb;
    const char *a, *b;

    for (i = 0; i < cfg->nidps; i++) {
        if (cfg->idps[i].type != PG_IDP_SAML
            || !cfg->idps[i].saml.allow_unsolicited) {
            continue;
        }
        a = pg_url_path(cfg->idps[i].saml.acs_url, &la);
        for (k = 0; k < i; k++) {
            if (cfg->idps[k].type != PG_IDP_SAML
                || !cfg->idps[k].saml.allow_unsolicited) {
                continue;
            }
            b = pg_url_path(cfg->idps[k].saml.acs_url, &lb);
            if (la == lb && memcmp(a, b, la) == 0) {
                pg_err_set(err, "$.idps.%s.allow_unsolicited: \"%s\" also "
                           "accepts IdP-initiated responses at this acs_url "
                           "path; give each its own acs_url",
                           cfg->idps[i].name, cfg->idps[k].name);
                return PG_ERR_CONFIG;
            }
        }
    }
    return PG_OK;
}

/* Read the mandatory "type" of an idp/target and check it against want. */
static pg_status_t
check_type(const json_t *o, const char *p, const char *want,
           const char *later, pg_err_t *err)
{
    char *t = NULL;
    pg_status_t st;

    if (!json_is_object(o)) {
        pg_err_set(err, "%s: must be an object", p);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_str(o, p, "type", 1, NULL, &t, err));
    if (strcmp(t, want) == 0) {
        free(t);
        return PG_OK;
    }
    if (later != NULL && strcmp(t, later) == 0) {
        pg_err_set(err, "%s.type: type \"%s\" is not supported yet", p, t);
    } else if (pg_cfg_word_ok(t, 32, "_-")) {
        pg_err_set(err, "%s.type: unknown type \"%s\" (expected \"%s\")", p,
                   t, want);
    } else {
        pg_err_set(err, "%s.type: unknown type (expected \"%s\")", p, want);
    }
    free(t);
    return PG_ERR_CONFIG;
}

/*
 * The optional "display_name" of idp object o at path p (shown on the IdP
 * choice page, see docs/configuration.md): 1..MAX_DISPLAY_NAME bytes
 * without control characters; default the IdP's name. idp->name must be
 * set; idp->display_name becomes a malloc'd copy owned by the config. A
 * non-object o is left to the type check.
 */
static pg_status_t
parse_display_name(pg_idp_cfg_t *idp, const json_t *o, const char *p,
                   pg_err_t *err)
{
    pg_status_t st;

    if (!json_is_object(o)) {
        return PG_OK;
    }
    TRY(pg_cfg_str(o, p, "display_name", 0, idp->name, &idp->display_name,
                   err));
    if (strlen(idp->display_name) > MAX_DISPLAY_NAME) {
        pg_err_set(err, "%s.display_name: longer than %u bytes", p,
                   MAX_DISPLAY_NAME);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* "idps" (required, 1..32 entries) into cfg->idps. */
static pg_status_t
parse_idps(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    char p[PG_ERR_MSG_MAX];
    const char *name;
    json_t *v;
    size_t n;
    pg_status_t st;

    if (o == NULL) {
        pg_err_set(err, "$.idps: missing required section (at least one "
                   "identity provider)");
        return PG_ERR_CONFIG;
    }
    if (!json_is_object(o)) {
        pg_err_set(err, "$.idps: must be an object");
        return PG_ERR_CONFIG;
    }
    n = json_object_size(o);
    if (n == 0 || n > MAX_IDPS) {
        pg_err_set(err, "$.idps: must define 1 to %u identity providers",
                   MAX_IDPS);
        return PG_ERR_CONFIG;
    }
    cfg->idps = calloc(n, sizeof(*cfg->idps));
    if (cfg->idps == NULL) {
        return PG_ERR_NOMEM;
    }
    json_object_foreach((json_t *)o, name, v) {
        pg_idp_cfg_t *idp = &cfg->idps[cfg->nidps];
        if (!pg_cfg_word_ok(name, MAX_NAME, "_-")) {
            pg_err_set(err, "$.idps: names must be 1-%u characters of "
                       "A-Z a-z 0-9 _ -", MAX_NAME);
            return PG_ERR_CONFIG;
        }
        pg_cfg_join(p, sizeof(p), "$.idps", name);
        cfg->nidps++;
        idp->name = strdup(name);
        idp->oidc.name = strdup(name);
        if (idp->name == NULL || idp->oidc.name == NULL) {
            return PG_ERR_NOMEM;
        }
        TRY(parse_display_name(idp, v, p, err));
        if (json_is_object(v)
            && json_is_string(json_object_get(v, "type"))
            && strcmp(json_string_value(json_object_get(v, "type")), "saml")
               == 0) {
            idp->type = PG_IDP_SAML;
            TRY(parse_saml(&idp->saml, v, p, err));
            continue;
        }
        TRY(check_type(v, p, "oidc", NULL, err));
        idp->type = PG_IDP_OIDC;
        TRY(parse_oidc(&idp->oidc, v, p, err));
    }
    return check_unsolicited(cfg, err);
}

/* ---- targets --------------------------------------------------------- */

/* A target's "auth" object (required) into t->auth and its secrets. */
static pg_status_t
parse_target_auth(pg_target_cfg_t *t, const json_t *o, const char *tp,
                  pg_err_t *err)
{
    static const char *const bearer_keys[] = {"type", "token", "token_file",
                                              NULL};
    static const char *const basic_keys[] = {"type", "username", "password",
                                             "password_file", NULL};
    static const char *const none_keys[] = {"type", NULL};
    static const char *const oauth_keys[] = {"type", "token_url", "client_id",
                                             "client_secret",
                                             "client_secret_file", "scope",
                                             "skew_s", NULL};
    char p[PG_ERR_MSG_MAX], *type = NULL;
    pg_status_t st;

    pg_cfg_join(p, sizeof(p), tp, "auth");
    if (o == NULL) {
        pg_err_set(err, "%s: missing required field (use {\"type\": "
                   "\"none\"} for no authentication)", p);
        return PG_ERR_CONFIG;
    }
    if (!json_is_object(o)) {
        pg_err_set(err, "%s: must be an object", p);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_str(o, p, "type", 1, NULL, &type, err));
    if (strcmp(type, "bearer") == 0) {
        free(type);
        t->auth = PG_AUTH_BEARER;
        TRY(pg_cfg_keys(o, p, bearer_keys, err));
        TRY(pg_cfg_secret(o, p, "token", 1, &t->bearer_token, err));
    } else if (strcmp(type, "basic") == 0) {
        free(type);
        t->auth = PG_AUTH_BASIC;
        TRY(pg_cfg_keys(o, p, basic_keys, err));
        TRY(pg_cfg_str(o, p, "username", 1, NULL, &t->basic_user, err));
        if (strchr(t->basic_user, ':') != NULL) {
            pg_err_set(err, "%s.username: must not contain ':'", p);
            return PG_ERR_CONFIG;
        }
        TRY(pg_cfg_secret(o, p, "password", 1, &t->basic_pass, err));
    } else if (strcmp(type, "none") == 0) {
        free(type);
        t->auth = PG_AUTH_NONE;
        TRY(pg_cfg_keys(o, p, none_keys, err));
    } else if (strcmp(type, "oauth2") == 0) {
        free(type);
        t->auth = PG_AUTH_OAUTH2;
        TRY(pg_cfg_keys(o, p, oauth_keys, err));
        TRY(cfg_url(o, p, "token_url", 1, PG_URL_NO_FRAGMENT,
                    &t->oauth_token_url, err));
        /* pg_cfg_str: non-empty, no control bytes */
        TRY(pg_cfg_str(o, p, "client_id", 1, NULL, &t->oauth_client_id,
                       err));
        TRY(pg_cfg_secret(o, p, "client_secret", 1, &t->oauth_client_secret,
                          err));
        TRY(pg_cfg_str(o, p, "scope", 0, NULL, &t->oauth_scope, err));
        TRY(pg_cfg_uint(o, p, "skew_s", 30, 0, 3600, &t->oauth_skew_s, err));
    } else {
        free(type);
        pg_err_set(err, "%s.type: must be \"bearer\", \"basic\", "
                   "\"oauth2\" or \"none\"", p);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* SCIM attribute path: dot-separated names of [A-Za-z0-9_:-]. */
static int
scim_path_ok(const char *s)
{
    size_t n = strlen(s);

    return pg_cfg_word_ok(s, 256, "_.:-") && s[0] != '.' && s[n - 1] != '.' &&
           strstr(s, "..") == NULL;
}

/* 1 when a is b or a dotted prefix of b ("name" vs "name.givenName"). */
static int
path_overlaps(const char *a, const char *b)
{
    size_t n = strlen(a);

    return strncmp(a, b, n) == 0 && (b[n] == '\0' || b[n] == '.');
}

/*
 * One attribute mapping value: a string becomes a checked template,
 * anything else but null a deep-copied JSON literal owned by m.
 */
static pg_status_t
parse_attr_value(pg_attr_map_t *m, const json_t *v, const char *where,
                 pg_err_t *err)
{
    pg_err_t terr;

    if (json_is_null(v)) {
        pg_err_set(err, "%s: must not be null", where);
        return PG_ERR_CONFIG;
    }
    if (!json_is_string(v)) {
        m->literal = json_deep_copy(v);
        return m->literal != NULL ? PG_OK : PG_ERR_NOMEM;
    }
    if (json_string_length(v) == 0) {
        pg_err_set(err, "%s: must not be empty", where);
        return PG_ERR_CONFIG;
    }
    if (memchr(json_string_value(v), '\0', json_string_length(v)) != NULL) {
        pg_err_set(err, "%s: must not contain NUL bytes", where);
        return PG_ERR_CONFIG;
    }
    if (pg_template_check(json_string_value(v), &terr) != PG_OK) {
        pg_err_set(err, "%s: invalid template: %s", where, terr.msg);
        return PG_ERR_CONFIG;
    }
    m->tpl = strdup(json_string_value(v));
    return m->tpl != NULL ? PG_OK : PG_ERR_NOMEM;
}

/* "attributes" (NULL: {"userName": "${username}"}) into t->attrs. */
static pg_status_t
parse_attrs(pg_target_cfg_t *t, const json_t *o, const char *tp,
            pg_err_t *err)
{
    char p[PG_ERR_MSG_MAX], where[PG_ERR_MSG_MAX];
    const char *key;
    json_t *v;
    size_t n, i;
    pg_status_t st;

    pg_cfg_join(p, sizeof(p), tp, "attributes");
    if (o == NULL) {
        t->attrs = calloc(1, sizeof(*t->attrs));
        if (t->attrs == NULL) {
            return PG_ERR_NOMEM;
        }
        t->nattrs = 1;
        t->attrs[0].scim_path = strdup("userName");
        t->attrs[0].tpl = strdup("${username}");
        if (t->attrs[0].scim_path == NULL || t->attrs[0].tpl == NULL) {
            return PG_ERR_NOMEM;
        }
        return PG_OK;
    }
    if (!json_is_object(o)) {
        pg_err_set(err, "%s: must be an object", p);
        return PG_ERR_CONFIG;
    }
    n = json_object_size(o);
    if (n == 0 || n > MAX_ATTRS) {
        pg_err_set(err, "%s: must map 1 to %u attributes", p, MAX_ATTRS);
        return PG_ERR_CONFIG;
    }
    t->attrs = calloc(n, sizeof(*t->attrs));
    if (t->attrs == NULL) {
        return PG_ERR_NOMEM;
    }
    json_object_foreach((json_t *)o, key, v) {
        pg_attr_map_t *m = &t->attrs[t->nattrs];
        if (!scim_path_ok(key)) {
            pg_err_set(err, "%s: attribute paths must be dot-separated names "
                       "of A-Z a-z 0-9 _ : - (max 256)", p);
            return PG_ERR_CONFIG;
        }
        pg_cfg_join(where, sizeof(where), p, key);
        for (i = 0; i < t->nattrs; i++) {
            if (path_overlaps(t->attrs[i].scim_path, key) ||
                path_overlaps(key, t->attrs[i].scim_path)) {
                pg_err_set(err, "%s: conflicts with \"%s\"", where,
                           t->attrs[i].scim_path);
                return PG_ERR_CONFIG;
            }
        }
        t->nattrs++;
        m->scim_path = strdup(key);
        if (m->scim_path == NULL) {
            return PG_ERR_NOMEM;
        }
        TRY(parse_attr_value(m, v, where, err));
    }
    return PG_OK;
}

/*
 * A target's optional "rate_limit": {"capacity": N, "per_s": M}: a token
 * bucket per target in Redis, shared by every process, taken once per
 * outbox operation before it calls the target (docs/outbox.md). Both
 * members are required when the object is given; capacity 1..100000,
 * per_s 1..100000. Absent: t->rate_capacity = t->rate_per_s = 0 (off).
 */
static pg_status_t
parse_rate_limit(pg_target_cfg_t *t, const json_t *o, const char *tp,
                 pg_err_t *err)
{
    static const char *const keys[] = { "capacity", "per_s", NULL };
    char p[256];
    pg_status_t st;

    t->rate_capacity = 0;
    t->rate_per_s = 0;
    if (o == NULL) {
        return PG_OK;
    }
    pg_cfg_join(p, sizeof(p), tp, "rate_limit");
    if (!json_is_object(o)) {
        pg_err_set(err, "%s: must be an object {\"capacity\", \"per_s\"}",
                   p);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_keys(o, p, keys, err));
    if (json_object_get(o, "capacity") == NULL
        || json_object_get(o, "per_s") == NULL) {
        pg_err_set(err, "%s.%s: required", p,
                   json_object_get(o, "capacity") == NULL ? "capacity"
                                                          : "per_s");
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_uint(o, p, "capacity", 0, 1, 100000, &t->rate_capacity, err));
    TRY(pg_cfg_uint(o, p, "per_s", 0, 1, 100000, &t->rate_per_s, err));
    if (!t->via_outbox) {
        pg_err_set(err, "%s: only applies to \"delivery\": \"outbox\"", p);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* "expiry": {"sweep_s": N, "test_time_divisor": D} (optional; the
 * sidecar's expiry job). test_time_divisor (tests only, default 1)
 * divides jit lifetimes so that a test need not wait a minute. */
static pg_status_t
parse_expiry_root(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    static const char *const keys[] = { "sweep_s", "test_time_divisor",
                                        NULL };
    pg_status_t st;

    cfg->expiry_sweep_s = 60;
    cfg->expiry_test_divisor = 1;
    if (o == NULL) {
        return PG_OK;
    }
    if (!json_is_object(o)) {
        pg_err_set(err, "$.expiry: must be an object");
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_keys(o, "$.expiry", keys, err));
    TRY(pg_cfg_uint(o, "$.expiry", "test_time_divisor", 1, 1, 3600,
                    &cfg->expiry_test_divisor, err));
    return pg_cfg_uint(o, "$.expiry", "sweep_s", 60, 1, 86400,
                       &cfg->expiry_sweep_s, err);
}

/*
 * Expiry settings of a target (docs/configuration.md):
 *   "deprovision_on_session_end": {"grace_s": N, "action": "disable" |
 *                                  "remove_jit"}
 *   "inactivity_days": N   (or "inactivity_s": N, for tests; not both)
 *   "delete_after_days": N (or "delete_after_s": N, for tests; not both):
 *                          leave retention, only with "leave": "disable"
 *                          (t->leave_delete must be parsed before)
 */
static pg_status_t
parse_expiry(pg_target_cfg_t *t, const json_t *o, const char *p,
             pg_err_t *err)
{
    static const char *const dkeys[] = { "grace_s", "action", NULL };
    const json_t *d = json_object_get(o, "deprovision_on_session_end");
    char where[512], *v = NULL;
    unsigned days = 0, secs = 0;
    pg_status_t st;

    t->deprov_action = PG_DEPROV_NONE;
    t->deprov_grace_s = 900;
    if (d != NULL) {
        snprintf(where, sizeof(where), "%s.deprovision_on_session_end", p);
        if (!json_is_object(d)) {
            pg_err_set(err, "%s: must be an object", where);
            return PG_ERR_CONFIG;
        }
        TRY(pg_cfg_keys(d, where, dkeys, err));
        TRY(pg_cfg_uint(d, where, "grace_s", 900, 0, 30u * 86400u,
                        &t->deprov_grace_s, err));
        TRY(pg_cfg_str(d, where, "action", 0, "disable", &v, err));
        if (strcmp(v, "disable") == 0) {
            t->deprov_action = PG_DEPROV_DISABLE;
        } else if (strcmp(v, "remove_jit") == 0) {
            t->deprov_action = PG_DEPROV_REMOVE_JIT;
        } else {
            pg_err_set(err, "%s.action: must be \"disable\" or "
                       "\"remove_jit\"", where);
            free(v);
            return PG_ERR_CONFIG;
        }
        free(v);
    }
    TRY(pg_cfg_uint(o, p, "inactivity_days", 0, 0, 3650, &days, err));
    TRY(pg_cfg_uint(o, p, "inactivity_s", 0, 0, 3650u * 86400u, &secs, err));
    if (days > 0 && secs > 0) {
        pg_err_set(err, "%s.inactivity_s: not together with inactivity_days",
                   p);
        return PG_ERR_CONFIG;
    }
    t->inactivity_s = days > 0 ? days * 86400u : secs;
    days = secs = 0;
    TRY(pg_cfg_uint(o, p, "delete_after_days", 0, 0, 3650, &days, err));
    TRY(pg_cfg_uint(o, p, "delete_after_s", 0, 0, 3650u * 86400u, &secs,
                    err));
    if (days > 0 && secs > 0) {
        pg_err_set(err, "%s.delete_after_s: not together with "
                   "delete_after_days", p);
        return PG_ERR_CONFIG;
    }
    t->delete_after_s = days > 0 ? days * 86400u : secs;
    if (t->delete_after_s > 0 && t->leave_delete) {
        pg_err_set(err, "%s.%s: only with \"leave\": \"disable\" (with "
                   "\"delete\" the account is deleted at the leave)", p,
                   days > 0 ? "delete_after_days" : "delete_after_s");
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* "delivery", "wait_ms", "on_slow" and "rate_limit" of a target
 * (docs/outbox.md). */
static pg_status_t
parse_delivery(pg_target_cfg_t *t, const json_t *o, const char *p,
               pg_err_t *err)
{
    char *v = NULL;
    pg_status_t st;

    TRY(pg_cfg_str(o, p, "delivery", 0, "outbox", &v, err));
    t->via_outbox = strcmp(v, "outbox") == 0;
    if (!t->via_outbox && strcmp(v, "direct") != 0) {
        pg_err_set(err, "%s.delivery: must be \"outbox\" or \"direct\"", p);
        free(v);
        return PG_ERR_CONFIG;
    }
    free(v);
    v = NULL;
    TRY(pg_cfg_str(o, p, "on_slow", 0, "block", &v, err));
    t->proceed_when_slow = strcmp(v, "proceed") == 0;
    if (!t->proceed_when_slow && strcmp(v, "block") != 0) {
        pg_err_set(err, "%s.on_slow: must be \"block\" or \"proceed\"", p);
        free(v);
        return PG_ERR_CONFIG;
    }
    free(v);
    TRY(pg_cfg_uint(o, p, "wait_ms", 2 * t->timeout_ms + 1000, 0, 600000,
                    &t->wait_ms, err));
    return parse_rate_limit(t, json_object_get(o, "rate_limit"), p, err);
}

/* The "outbox" section (optional). */
static pg_status_t
parse_outbox(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    static const char *const keys[] = {
        "consume", "claim_idle_ms", "max_attempts", "backoff_base_ms",
        "backoff_max_ms", "dedup_ttl_s", "status_ttl_s", "batch", NULL
    };
    pg_outbox_cfg_t *b = &cfg->outbox;
    const char *p = "$.outbox";
    json_t *empty = NULL;
    pg_status_t st = PG_OK;

    if (o == NULL) {
        o = empty = json_object();
        if (o == NULL) {
            return PG_ERR_NOMEM;
        }
    }
    if ((st = pg_cfg_keys(o, p, keys, err)) == PG_OK
        && (st = pg_cfg_bool(o, p, "consume", 1, &b->consume, err)) == PG_OK
        && (st = pg_cfg_uint(o, p, "claim_idle_ms", 30000, 100, 3600000,
                             &b->claim_idle_ms, err)) == PG_OK
        && (st = pg_cfg_uint(o, p, "max_attempts", 5, 1, 100,
                             &b->max_attempts, err)) == PG_OK
        && (st = pg_cfg_uint(o, p, "backoff_base_ms", 1000, 10, 3600000,
                             &b->backoff_base_ms, err)) == PG_OK
        && (st = pg_cfg_uint(o, p, "backoff_max_ms", 300000, 10, 86400000,
                             &b->backoff_max_ms, err)) == PG_OK
        && (st = pg_cfg_uint(o, p, "status_ttl_s", 3600, 10, 604800,
                             &b->status_ttl_s, err)) == PG_OK
        && (st = pg_cfg_uint(o, p, "dedup_ttl_s", 600, 1, 604800,
                             &b->dedup_ttl_s, err)) == PG_OK
        && (st = pg_cfg_uint(o, p, "batch", 16, 1, 1000, &b->batch, err))
               == PG_OK) {
        if (b->dedup_ttl_s > b->status_ttl_s) {
            pg_err_set(err, "%s.dedup_ttl_s: must not exceed status_ttl_s "
                       "(%u)", p, b->status_ttl_s);
            st = PG_ERR_CONFIG;
        } else if (b->backoff_base_ms > b->backoff_max_ms) {
            pg_err_set(err, "%s.backoff_base_ms: must not exceed "
                       "backoff_max_ms (%u)", p, b->backoff_max_ms);
            st = PG_ERR_CONFIG;
        }
    }
    json_decref(empty);
    return st;
}

/*
 * "hr_source.event_stream" (optional): {"enabled", "stream", "group",
 * "block_ms", "claim_idle_ms", "max_event_bytes"}. Defaults are set even
 * when absent (enabled = 0). stream and group are Redis words (A-Z a-z 0-9
 * and - _ . :, at most 128 bytes), so they are safe in keys and logs.
 * Strings are owned by cfg (freed by pg_config_free).
 */
static pg_status_t
parse_event_stream(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    static const char *const keys[] = {"enabled", "stream", "group",
                                       "block_ms", "claim_idle_ms",
                                       "max_event_bytes", NULL};
    const char *p = "$.hr_source.event_stream";
    pg_jml_stream_cfg_t *s = &cfg->jml_stream;
    json_t *empty = NULL;
    pg_status_t st;

    if (o == NULL) {
        o = empty = json_object();
        if (o == NULL) {
            return PG_ERR_NOMEM;
        }
    } else if (!json_is_object(o)) {
        pg_err_set(err, "%s: must be an object", p);
        return PG_ERR_CONFIG;
    }
    st = pg_cfg_keys(o, p, keys, err);
    if (st == PG_OK) {
        st = pg_cfg_bool(o, p, "enabled", 0, &s->enabled, err);
    }
    if (st == PG_OK) {
        st = pg_cfg_str(o, p, "stream", 0, "jml:events", &s->stream, err);
    }
    if (st == PG_OK && !pg_cfg_word_ok(s->stream, 128, "-_.:")) {
        pg_err_set(err, "%s.stream: must be 1-128 of A-Z a-z 0-9 - _ . :", p);
        st = PG_ERR_CONFIG;
    }
    if (st == PG_OK) {
        st = pg_cfg_str(o, p, "group", 0, "provgated", &s->group, err);
    }
    if (st == PG_OK && !pg_cfg_word_ok(s->group, 128, "-_.:")) {
        pg_err_set(err, "%s.group: must be 1-128 of A-Z a-z 0-9 - _ . :", p);
        st = PG_ERR_CONFIG;
    }
    if (st == PG_OK) {
        st = pg_cfg_uint(o, p, "block_ms", 1000, 10, 30000, &s->block_ms,
                         err);
    }
    if (st == PG_OK) {
        st = pg_cfg_uint(o, p, "claim_idle_ms", 60000, 100, 86400000,
                         &s->claim_idle_ms, err);
    }
    if (st == PG_OK) {
        st = pg_cfg_uint(o, p, "max_event_bytes", 65536, 256, 1048576,
                         &s->max_event_bytes, err);
    }
    json_decref(empty);
    return st;
}

/*
 * "hr_source" (optional; the sidecar's HR export): {"file" | "drop_dir",
 * "poll_s", "lease_s", "feed": {hrfeed settings}, "correlation": [{"attr",
 * "index"}], "event_stream": {...}}.
 */
static pg_status_t
parse_hr_source(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    static const char *const keys[] = {"file", "drop_dir", "poll_s",
                                       "lease_s", "feed", "correlation",
                                       "event_stream", NULL};
    static const char *const rkeys[] = {"attr", "index", NULL};
    const char *p = "$.hr_source";
    pg_hrfeed_cfg_t *feed = NULL;
    char rp[PG_ERR_MSG_MAX];
    json_t *rules, *r;
    size_t i;
    pg_status_t st;

    cfg->hr_lease_s = 30;
    if (o == NULL) {
        return parse_event_stream(cfg, NULL, err);   /* the defaults */
    }
    TRY(pg_cfg_keys(o, p, keys, err));
    TRY(pg_cfg_path(o, p, "file", 0, &cfg->hr_file, err));
    TRY(pg_cfg_path(o, p, "drop_dir", 0, &cfg->hr_drop_dir, err));
    if ((cfg->hr_file == NULL) == (cfg->hr_drop_dir == NULL)) {
        pg_err_set(err, "%s: set exactly one of \"file\" (one export, "
                   "imported when it changes) and \"drop_dir\" (a folder "
                   "of exports, each imported once)", p);
        return PG_ERR_CONFIG;
    }
    if (cfg->hr_drop_dir != NULL) {
        struct stat sb;

        if (stat(cfg->hr_drop_dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            pg_err_set(err, "%s.drop_dir: not a directory", p);
            return PG_ERR_CONFIG;
        }
    }
    TRY(parse_event_stream(cfg, json_object_get(o, "event_stream"), err));
    TRY(pg_cfg_uint(o, p, "poll_s", 60, 0, 86400, &cfg->hr_poll_s, err));
    TRY(pg_cfg_uint(o, p, "lease_s", 30, 3, 3600, &cfg->hr_lease_s, err));
    TRY(pg_hrfeed_cfg_parse(json_object_get(o, "feed"), "$.hr_source.feed",
                            &feed, err));
    pg_hrfeed_cfg_free(feed);
    rules = json_object_get(o, "correlation");
    if (rules != NULL && (!json_is_array(rules) || json_array_size(rules) > 8)) {
        pg_err_set(err, "%s.correlation: must be an array of at most 8 rules",
                   p);
        return PG_ERR_CONFIG;
    }
    json_array_foreach(rules, i, r) {
        char *a = NULL, *x = NULL;

        snprintf(rp, sizeof(rp), "%s.correlation[%zu]", p, i);
        TRY(pg_cfg_keys(r, rp, rkeys, err));
        TRY(pg_cfg_str(r, rp, "attr", 1, NULL, &a, err));
        st = pg_cfg_str(r, rp, "index", 1, NULL, &x, err);
        free(a);
        free(x);
        if (st != PG_OK) {
            return st;
        }
    }
    cfg->hr_source = json_deep_copy(o);
    return cfg->hr_source != NULL ? PG_OK : PG_ERR_NOMEM;
}

/* The "admin" section (optional): {"role": "<policy role>"}. */
static pg_status_t
parse_admin(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    static const char *const keys[] = {"role", NULL};
    pg_status_t st;

    if (o == NULL) {
        cfg->admin_role = strdup("provgate-admin");
        return cfg->admin_role != NULL ? PG_OK : PG_ERR_NOMEM;
    }
    TRY(pg_cfg_keys(o, "$.admin", keys, err));
    return pg_cfg_str(o, "$.admin", "role", 0, "provgate-admin",
                      &cfg->admin_role, err);
}

/* The "type" of a target: "scim" or one of the connector types. */
static pg_status_t
target_type(pg_target_cfg_t *t, const json_t *o, const char *p, pg_err_t *err)
{
    static const char *const types[] = {"rest", "ldap", "sql", "csv",
                                        "manual", NULL};
    char *ty = NULL;
    size_t i;
    pg_status_t st;

    if (!json_is_object(o)) {
        pg_err_set(err, "%s: must be an object", p);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_str(o, p, "type", 1, NULL, &ty, err));
    if (strcmp(ty, "scim") == 0) {
        free(ty);
        t->type = PG_TARGET_SCIM;
        return PG_OK;
    }
    for (i = 0; types[i] != NULL; i++) {
        if (strcmp(ty, types[i]) == 0) {
            t->type = PG_TARGET_CONNECTOR;
            t->type_name = ty;
            return PG_OK;
        }
    }
    if (pg_cfg_word_ok(ty, 32, "_-")) {
        pg_err_set(err, "%s.type: unknown type \"%s\" (expected scim, rest, "
                   "ldap, sql, csv or manual)", p, ty);
    } else {
        pg_err_set(err, "%s.type: unknown type (expected scim, rest, ldap, "
                   "sql, csv or manual)", p);
    }
    free(ty);
    return PG_ERR_CONFIG;
}

/*
 * A connector target: {"type", "connector": {...}, "attributes", "key",
 * "leave", "delivery", "wait_ms", "on_slow", "timeout_ms"}. The connector
 * object is kept as is; pg_config_check_connectors() (called by the hosts
 * at load) has each type's constructor validate it.
 */
static pg_status_t
parse_conn_target(pg_target_cfg_t *t, const json_t *o, const char *p,
                  pg_err_t *err)
{
    static const char *const keys[] = {
        "type", "connector", "attributes", "key", "leave", "delivery",
        "wait_ms", "on_slow", "timeout_ms", "rate_limit", "reconcile",
        "deprovision_on_session_end", "inactivity_days", "inactivity_s",
        "delete_after_days", "delete_after_s", NULL
    };
    json_t *c = json_object_get(o, "connector");
    char *leave = NULL;
    size_t i;
    int found = 0;
    pg_status_t st;

    TRY(pg_cfg_keys(o, p, keys, err));
    if (!json_is_object(c)) {
        pg_err_set(err, "%s.connector: required (an object)", p);
        return PG_ERR_CONFIG;
    }
    t->connector = json_deep_copy(c);
    if (t->connector == NULL) {
        return PG_ERR_NOMEM;
    }
    TRY(pg_cfg_uint(o, p, "timeout_ms", 5000, 10, 120000, &t->timeout_ms,
                    err));
    TRY(pg_cfg_str(o, p, "leave", 0, "disable", &leave, err));
    t->leave_delete = strcmp(leave, "delete") == 0;
    if (!t->leave_delete && strcmp(leave, "disable") != 0) {
        pg_err_set(err, "%s.leave: must be \"disable\" or \"delete\"", p);
        free(leave);
        return PG_ERR_CONFIG;
    }
    free(leave);
    /* reconciliation (docs/reconciliation.md) */
    if (json_object_get(o, "reconcile") != NULL) {
        pg_recon_cfg_t rc;
        char rp[600];

        snprintf(rp, sizeof(rp), "%s.reconcile", p);
        TRY(pg_recon_cfg_parse(json_object_get(o, "reconcile"), rp, &rc,
                               err));
        if (rc.page_size != 0 || rc.groups_from_members) {
            pg_err_set(err, "%s.%s: only for SCIM targets (a connector "
                       "lists with its own settings)", rp,
                       rc.page_size != 0 ? "page_size" : "groups");
            return PG_ERR_CONFIG;
        }
        t->reconcile = json_deep_copy(json_object_get(o, "reconcile"));
        if (t->reconcile == NULL) {
            return PG_ERR_NOMEM;
        }
    }
    TRY(parse_delivery(t, o, p, err));
    TRY(parse_expiry(t, o, p, err));
    if (!t->via_outbox) {
        pg_err_set(err, "%s.delivery: %s targets are always provisioned "
                   "through the outbox", p, t->type_name);
        return PG_ERR_CONFIG;
    }
    if (json_object_get(o, "attributes") == NULL) {
        pg_err_set(err, "%s.attributes: required", p);
        return PG_ERR_CONFIG;
    }
    TRY(parse_attrs(t, json_object_get(o, "attributes"), p, err));
    TRY(pg_cfg_str(o, p, "key", 1, NULL, &t->username_attr, err));
    for (i = 0; i < t->nattrs; i++) {
        if (strcmp(t->attrs[i].scim_path, t->username_attr) == 0
            && t->attrs[i].tpl != NULL) {
            found = 1;
        }
    }
    if (!found) {
        pg_err_set(err, "%s.key: \"%s\" must be one of the attributes, "
                   "mapped from a template", p, t->username_attr);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/*
 * A SCIM target's "discovery" and "bulk" (booleans, default false; bulk
 * needs discovery) and optional
 * "dialect" object {"force_put", "no_etag", "no_extensions" (booleans,
 * default false), "member_remove": "filter" (default) | "value"}.
 */
static pg_status_t
parse_scim_dialect(pg_target_cfg_t *t, const json_t *o, const char *tp,
                   pg_err_t *err)
{
    static const char *const keys[] = {
        "force_put", "no_etag", "no_extensions", "member_remove", NULL
    };
    const json_t *d = json_object_get(o, "dialect");
    char p[256], *mr = NULL;
    pg_status_t st;

    TRY(pg_cfg_bool(o, tp, "discovery", 0, &t->scim_discovery, err));
    TRY(pg_cfg_bool(o, tp, "bulk", 0, &t->scim_bulk, err));
    if (t->scim_bulk && !t->scim_discovery) {
        pg_err_set(err, "%s.bulk: needs \"discovery\": true (Bulk is used "
                   "only when the target says it supports it)", tp);
        return PG_ERR_CONFIG;
    }
    if (d == NULL) {
        return PG_OK;
    }
    pg_cfg_join(p, sizeof(p), tp, "dialect");
    if (!json_is_object(d)) {
        pg_err_set(err, "%s: must be an object", p);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_keys(d, p, keys, err));
    TRY(pg_cfg_bool(d, p, "force_put", 0, &t->scim_force_put, err));
    TRY(pg_cfg_bool(d, p, "no_etag", 0, &t->scim_no_etag, err));
    TRY(pg_cfg_bool(d, p, "no_extensions", 0, &t->scim_no_extensions, err));
    TRY(pg_cfg_str(d, p, "member_remove", 0, "filter", &mr, err));
    t->scim_member_remove_value = strcmp(mr, "value") == 0;
    if (!t->scim_member_remove_value && strcmp(mr, "filter") != 0) {
        pg_err_set(err, "%s.member_remove: must be \"filter\" or \"value\"",
                   p);
        free(mr);
        return PG_ERR_CONFIG;
    }
    free(mr);
    return PG_OK;
}

/*
 * A SCIM target's optional "retry" object {"max_attempts" (1-10, default 1
 * = no retry), "base_ms" (10-60000, default 200), "max_ms" (base_ms-300000,
 * default 10000)}: 429, 5xx (but 501/505), connection failures and
 * timeouts of one SCIM call are retried on a timer with exponential
 * backoff and jitter, honouring Retry-After up to max_ms
 * (docs/connectors.md). Also derives t->call_budget_ms (needs timeout_ms).
 */
static pg_status_t
parse_scim_retry(pg_target_cfg_t *t, const json_t *o, const char *tp,
                 pg_err_t *err)
{
    static const char *const keys[] = {
        "max_attempts", "base_ms", "max_ms", NULL
    };
    const json_t *r = json_object_get(o, "retry");
    char p[256];
    pg_status_t st;

    t->retry_attempts = 1;
    t->retry_base_ms = 200;
    t->retry_max_ms = 10000;
    if (r != NULL) {
        pg_cfg_join(p, sizeof(p), tp, "retry");
        if (!json_is_object(r)) {
            pg_err_set(err, "%s: must be an object", p);
            return PG_ERR_CONFIG;
        }
        TRY(pg_cfg_keys(r, p, keys, err));
        TRY(pg_cfg_uint(r, p, "max_attempts", 1, 1, 10, &t->retry_attempts,
                        err));
        TRY(pg_cfg_uint(r, p, "base_ms", 200, 10, 60000, &t->retry_base_ms,
                        err));
        TRY(pg_cfg_uint(r, p, "max_ms", 10000, 10, 300000, &t->retry_max_ms,
                        err));
        if (t->retry_max_ms < t->retry_base_ms) {
            pg_err_set(err, "%s.max_ms: must not be below base_ms (%u)", p,
                       t->retry_base_ms);
            return PG_ERR_CONFIG;
        }
    }
    t->call_budget_ms = t->timeout_ms * t->retry_attempts
                        + t->retry_max_ms * (t->retry_attempts - 1);
    return PG_OK;
}

/* One "type": "scim" target object at path p into t. */
static pg_status_t
parse_target(pg_target_cfg_t *t, const json_t *o, const char *p,
             pg_err_t *err)
{
    static const char *const keys[] = {
        "type", "base_url", "auth", "timeout_ms", "connect_timeout_ms",
        "ca_file", "client_cert", "client_key", "insecure_skip_verify",
        "username_attr", "create_missing_groups", "attributes", "delivery",
        "wait_ms", "on_slow", "rate_limit", "discovery", "dialect", "retry",
        "bulk", "deprovision_on_session_end", "inactivity_days",
        "inactivity_s", "delete_after_days", "delete_after_s", "reconcile",
        NULL
    };
    char *f = NULL;
    size_t i, n;
    int found = 0;
    pg_status_t st;

    TRY(pg_cfg_keys(o, p, keys, err));
    TRY(cfg_url(o, p, "base_url", 1, PG_URL_NO_QUERY | PG_URL_NO_FRAGMENT,
                &t->base_url, err));
    n = strlen(t->base_url);
    while (n > 0 && t->base_url[n - 1] == '/') {
        t->base_url[--n] = '\0';
    }
    TRY(parse_target_auth(t, json_object_get(o, "auth"), p, err));
    TRY(pg_cfg_uint(o, p, "timeout_ms", 5000, 10, 120000, &t->timeout_ms,
                    err));
    TRY(pg_cfg_uint(o, p, "connect_timeout_ms", 1000, 10, 60000,
                    &t->connect_timeout_ms, err));
    if (t->connect_timeout_ms > t->timeout_ms) {
        pg_err_set(err, "%s.connect_timeout_ms: must not exceed timeout_ms "
                   "(%u)", p, t->timeout_ms);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_path(o, p, "ca_file", 0, &f, err));
    t->tls.ca_file = f;
    TRY(check_readable(f, p, "ca_file", err));
    TRY(pg_cfg_path(o, p, "client_cert", 0, &f, err));
    t->tls.client_cert = f;
    TRY(check_readable(f, p, "client_cert", err));
    TRY(pg_cfg_path(o, p, "client_key", 0, &f, err));
    t->tls.client_key = f;
    TRY(check_readable(f, p, "client_key", err));
    if ((t->tls.client_cert == NULL) != (t->tls.client_key == NULL)) {
        pg_err_set(err, "%s.%s: required when %s is set", p,
                   t->tls.client_cert == NULL ? "client_cert" : "client_key",
                   t->tls.client_cert == NULL ? "client_key" : "client_cert");
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_bool(o, p, "insecure_skip_verify", 0,
                    &t->tls.insecure_skip_verify, err));
    TRY(pg_cfg_str(o, p, "username_attr", 0, "userName", &t->username_attr,
                   err));
    if (!scim_path_ok(t->username_attr)) {
        pg_err_set(err, "%s.username_attr: must be a SCIM attribute path", p);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_bool(o, p, "create_missing_groups", 0,
                    &t->create_missing_groups, err));
    TRY(parse_scim_dialect(t, o, p, err));
    TRY(parse_scim_retry(t, o, p, err));
    /* reconciliation (docs/reconciliation.md) */
    if (json_object_get(o, "reconcile") != NULL) {
        pg_recon_cfg_t rc;
        char rp[600];

        snprintf(rp, sizeof(rp), "%s.reconcile", p);
        TRY(pg_recon_cfg_parse(json_object_get(o, "reconcile"), rp, &rc,
                               err));
        t->reconcile = json_deep_copy(json_object_get(o, "reconcile"));
        if (t->reconcile == NULL) {
            return PG_ERR_NOMEM;
        }
    }
    TRY(parse_delivery(t, o, p, err));
    TRY(parse_expiry(t, o, p, err));
    TRY(parse_attrs(t, json_object_get(o, "attributes"), p, err));
    for (i = 0; i < t->nattrs; i++) {
        if (strcmp(t->attrs[i].scim_path, t->username_attr) == 0) {
            found = 1;
        }
    }
    if (!found) {
        pg_err_set(err, "%s.attributes: must map \"%s\" (the username_attr)",
                   p, t->username_attr);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* "targets" (optional, at most 64) into cfg->targets. */
static pg_status_t
parse_targets(pg_config_t *cfg, const json_t *o, pg_err_t *err)
{
    char p[PG_ERR_MSG_MAX];
    const char *name;
    json_t *v;
    size_t n;
    pg_status_t st;

    if (o == NULL) {
        return PG_OK;
    }
    if (!json_is_object(o)) {
        pg_err_set(err, "$.targets: must be an object");
        return PG_ERR_CONFIG;
    }
    n = json_object_size(o);
    if (n > MAX_TARGETS) {
        pg_err_set(err, "$.targets: more than %u targets", MAX_TARGETS);
        return PG_ERR_CONFIG;
    }
    cfg->targets = calloc(n > 0 ? n : 1, sizeof(*cfg->targets));
    if (cfg->targets == NULL) {
        return PG_ERR_NOMEM;
    }
    json_object_foreach((json_t *)o, name, v) {
        pg_target_cfg_t *t = &cfg->targets[cfg->ntargets];
        if (!pg_cfg_word_ok(name, MAX_NAME, "_-")) {
            pg_err_set(err, "$.targets: names must be 1-%u characters of "
                       "A-Z a-z 0-9 _ -", MAX_NAME);
            return PG_ERR_CONFIG;
        }
        pg_cfg_join(p, sizeof(p), "$.targets", name);
        cfg->ntargets++;
        t->name = strdup(name);
        if (t->name == NULL) {
            return PG_ERR_NOMEM;
        }
        TRY(target_type(t, v, p, err));
        if (t->type == PG_TARGET_SCIM) {
            TRY(parse_target(t, v, p, err));
        } else {
            TRY(parse_conn_target(t, v, p, err));
        }
    }
    return PG_OK;
}

/* ---- top level ------------------------------------------------------- */

/* "instance", defaulting to the host name (or "provgate"). */
static pg_status_t
parse_instance(pg_config_t *cfg, const json_t *root, pg_err_t *err)
{
    char host[256];

    if (json_object_get(root, "instance") != NULL) {
        return cfg_word(root, "$", "instance", 1, NULL, MAX_NAME, "_.-",
                        "A-Z a-z 0-9 _ . -", &cfg->instance, err);
    }
    if (gethostname(host, sizeof(host)) != 0) {
        host[0] = '\0';
    }
    host[sizeof(host) - 1] = '\0';
    host[MAX_NAME] = '\0';
    cfg->instance = strdup(pg_cfg_word_ok(host, MAX_NAME, "_.-") ? host
                           : "provgate");
    return cfg->instance != NULL ? PG_OK : PG_ERR_NOMEM;
}

/* policy_files -> resolved absolute paths (*files may stay NULL). */
static pg_status_t
parse_policy_files(const json_t *root, char ***files, pg_err_t *err)
{
    size_t i;
    pg_status_t st;

    TRY(pg_cfg_strv(root, "$", "policy_files", NULL, files, err));
    for (i = 0; *files != NULL && (*files)[i] != NULL; i++) {
        char *abs = NULL;
        st = pg_cfg_resolve((*files)[i], &abs);
        if (st != PG_OK) {
            pg_err_set(err, "$.policy_files[%zu]: path too long", i);
            return st == PG_ERR_NOMEM ? st : PG_ERR_CONFIG;
        }
        free((*files)[i]);
        (*files)[i] = abs;
    }
    return PG_OK;
}

/*
 * Every section except the policy files, in a fixed order so the
 * first error reported is deterministic; *files gets the resolved
 * policy file paths (owned by the caller).
 */
static pg_status_t
parse_root(pg_config_t *cfg, const json_t *root, char ***files,
           pg_err_t *err)
{
    static const char *const keys[] = {
        "instance", "redis", "session", "audit", "headers", "idps",
        "targets", "identity", "policy_files", "outbox", "admin",
        "hr_source", "expiry", NULL
    };
    size_t i;
    int found = 0;
    pg_status_t st;

    TRY(pg_cfg_keys(root, "$", keys, err));
    TRY(parse_instance(cfg, root, err));
    TRY(parse_redis(cfg, json_object_get(root, "redis"), err));
    TRY(parse_session(cfg, json_object_get(root, "session"), err));
    TRY(parse_audit(cfg, json_object_get(root, "audit"), err));
    TRY(parse_headers(cfg, json_object_get(root, "headers"), err));
    TRY(parse_outbox(cfg, json_object_get(root, "outbox"), err));
    TRY(parse_admin(cfg, json_object_get(root, "admin"), err));
    TRY(parse_hr_source(cfg, json_object_get(root, "hr_source"), err));
    TRY(parse_expiry_root(cfg, json_object_get(root, "expiry"), err));
    TRY(parse_identity(cfg, json_object_get(root, "identity"), err));
    for (i = 0; i < cfg->nclaims; i++) {
        if (strcmp(cfg->claims[i].attr, cfg->headers.user_attr) == 0) {
            found = 1;
        }
    }
    if (!found) {
        pg_err_set(err, "$.headers.user_attr: attribute \"%s\" is not "
                   "mapped in $.identity.claims", cfg->headers.user_attr);
        return PG_ERR_CONFIG;
    }
    TRY(parse_idps(cfg, json_object_get(root, "idps"), err));
    TRY(parse_targets(cfg, json_object_get(root, "targets"), err));
    TRY(parse_policy_files(root, files, err));
    return PG_OK;
}

/* Absolute directory of path (realpath of its directory part); malloc'd. */
static char *
config_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[PATH_MAX];
    size_t n;

    if (slash == NULL) {
        return realpath(".", NULL);
    }
    n = (size_t)(slash - path);
    if (n == 0) {
        return strdup("/");
    }
    if (n >= sizeof(dir)) {
        return NULL;
    }
    memcpy(dir, path, n);
    dir[n] = '\0';
    return realpath(dir, NULL);
}

/* Prefix err->msg with "<file>: " (truncating the end if needed). */
static void
prefix_file(pg_err_t *err, const char *file)
{
    char tmp[PG_ERR_MSG_MAX];
    size_t fl, ml, cap = sizeof(err->msg) - 1, o = 0;

    if (err == NULL) {
        return;
    }
    ml = strnlen(err->msg, sizeof(err->msg) - 1);
    memcpy(tmp, err->msg, ml);
    fl = strlen(file);
    if (fl > cap) {
        fl = cap;
    }
    memcpy(err->msg, file, fl);
    o = fl;
    if (cap - o >= 2) {
        memcpy(err->msg + o, ": ", 2);
        o += 2;
    }
    if (ml > cap - o) {
        ml = cap - o;
    }
    memcpy(err->msg + o, tmp, ml);
    err->msg[o + ml] = '\0';
}

/*
 * Load and validate the configuration at path.
 *
 * On PG_OK *out owns a fully validated configuration (free with
 * pg_config_free()); cfg->policies is always set (possibly empty).
 * On failure *out is NULL, err holds the first problem found (formats at
 * the top of this file) and the status is PG_ERR_CONFIG, or PG_ERR_NOMEM.
 * Not thread-safe with respect to other loads on the same thread only
 * (the relative-path base is thread-local); loads block on file reads.
 */
pg_status_t
pg_config_load(const char *path, pg_config_t **out, pg_err_t *err)
{
    pg_config_t *cfg = NULL;
    pg_err_t ferr;
    json_error_t jerr;
    json_t *root = NULL;
    char *text = NULL, *dir = NULL, **files = NULL;
    size_t len = 0;
    pg_status_t st;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (path == NULL || *path == '\0') {
        pg_err_set(err, "configuration path is empty");
        return PG_ERR_CONFIG;
    }
    st = pg_read_file(path, PG_CONFIG_MAX_FILE, 0, &text, &len, &ferr);
    if (st != PG_OK) {
        pg_err_set(err, "%s: %s", path, ferr.msg);
        return st == PG_ERR_NOMEM ? st : PG_ERR_CONFIG;
    }
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (root == NULL) {
        pg_err_set(err, "%s:%d:%d: %s", path, jerr.line, jerr.column,
                   jerr.text);
        return PG_ERR_CONFIG;
    }
    dir = config_dir(path);
    cfg = calloc(1, sizeof(*cfg));
    if (dir == NULL || cfg == NULL) {
        pg_err_set(err, "%s: cannot resolve the configuration directory or "
                   "out of memory", path);
        st = PG_ERR_NOMEM;
        goto fail;
    }
    cfg->file = strdup(path);
    if (cfg->file == NULL) {
        st = PG_ERR_NOMEM;
        goto fail;
    }
    pg_cfg_set_base_dir(dir);
    if (!json_is_object(root)) {
        pg_err_set(err, "%s: $: must be an object", path);
        st = PG_ERR_CONFIG;
        goto fail;
    }
    st = parse_root(cfg, root, &files, err);
    if (st == PG_OK) {
        st = pg_connectors_check(cfg, err);
    }
    if (st != PG_OK) {
        if (st == PG_ERR_NOMEM) {
            pg_err_set(err, "out of memory");
        }
        prefix_file(err, path);
        goto fail;
    }
    /* Policy messages already name the policy file. */
    st = pg_policy_load(files, cfg, &cfg->policies, err);
    if (st != PG_OK) {
        goto fail;
    }
    pg_cfg_set_base_dir(NULL);
    pg_strv_free(files);
    free(dir);
    json_decref(root);
    *out = cfg;
    return PG_OK;

fail:
    pg_cfg_set_base_dir(NULL);
    pg_strv_free(files);
    free(dir);
    json_decref(root);
    pg_config_free(cfg);
    if (st != PG_ERR_NOMEM) {
        st = PG_ERR_CONFIG;
    }
    return st;
}

/* Free the paths a pg_http_tls_t holds (the config owns them). */
static void
free_tls(pg_http_tls_t *t)
{
    free((void *)t->ca_file);
    free((void *)t->client_cert);
    free((void *)t->client_key);
}

/* Release cfg and everything it owns; secrets are wiped. NULL is fine. */
void
pg_config_free(pg_config_t *cfg)
{
    size_t i, j;

    if (cfg == NULL) {
        return;
    }
    pg_policy_free(cfg->policies);
    free(cfg->file);
    free(cfg->instance);
    free(cfg->admin_role);
    json_decref(cfg->hr_source);
    free(cfg->hr_file);
    free(cfg->hr_drop_dir);
    free(cfg->jml_stream.stream);
    free(cfg->jml_stream.group);

    free(cfg->redis.host);
    free(cfg->redis.unix_path);
    free(cfg->redis.username);
    free_secret(cfg->redis.password);
    free(cfg->redis.key_prefix);

    free(cfg->session.cookie_name);
    free(cfg->session.cookie_domain);
    free(cfg->session.cookie_path);
    explicit_bzero(cfg->session.key, sizeof(cfg->session.key));

    free(cfg->audit.file);
    free(cfg->audit.stream);

    free(cfg->headers.user);
    free(cfg->headers.email);
    free(cfg->headers.groups);
    free(cfg->headers.entitlements);
    free(cfg->headers.identity);
    free(cfg->headers.user_attr);

    for (i = 0; i < cfg->nidps; i++) {
        pg_idp_cfg_t *d = &cfg->idps[i];
        pg_oidc_idp_cfg_t *o = &d->oidc;
        free(d->name);
        free(d->display_name);
        free(o->name);
        free(o->issuer);
        free(o->discovery_url);
        free(o->client_id);
        free_secret(o->client_secret);
        free(o->redirect_uri);
        pg_strv_free(o->scopes);
        pg_strv_free(o->allowed_algs);
        free(o->claims_request);
        free(o->post_logout_redirect_uri);
        free_tls(&o->tls);
        pg_saml_slo_free(d->saml.slo);
        pg_saml_sp_free(d->saml.sp);
        free(d->saml.sp_entity_id);
        free(d->saml.acs_url);
        free(d->saml.slo_url);
        free(d->saml.sp_key_file);
        free(d->saml.sp_cert_file);
        free(d->saml.idp_metadata_file);
        free(d->saml.idp_metadata_url);
        free_tls(&d->saml.tls);
        free(d->saml.nameid_format);
    }
    free(cfg->idps);

    for (i = 0; i < cfg->ntargets; i++) {
        pg_target_cfg_t *t = &cfg->targets[i];
        free(t->name);
        free(t->base_url);
        free_secret(t->bearer_token);
        free(t->basic_user);
        free_secret(t->basic_pass);
        free(t->oauth_token_url);
        free(t->oauth_client_id);
        free_secret(t->oauth_client_secret);
        free(t->oauth_scope);
        free_tls(&t->tls);
        for (j = 0; j < t->nattrs; j++) {
            free(t->attrs[j].scim_path);
            free(t->attrs[j].tpl);
            json_decref(t->attrs[j].literal);
        }
        free(t->attrs);
        free(t->username_attr);
        free(t->type_name);
        json_decref(t->connector);
        json_decref(t->reconcile);
    }
    free(cfg->targets);

    for (i = 0; i < cfg->ncorr; i++) {
        free(cfg->corr[i].claim);
        free(cfg->corr[i].verified_claim);
        free(cfg->corr[i].index);
    }
    free(cfg->corr);
    for (i = 0; i < cfg->nclaims; i++) {
        free(cfg->claims[i].attr);
        free(cfg->claims[i].claim);
    }
    free(cfg->claims);
    free(cfg->groups_claim);
    free(cfg);
}

/* The idp called name, or NULL (also for NULL arguments). */
const pg_idp_cfg_t *
pg_config_idp(const pg_config_t *cfg, const char *name)
{
    size_t i;

    if (cfg == NULL || name == NULL) {
        return NULL;
    }
    for (i = 0; i < cfg->nidps; i++) {
        if (cfg->idps[i].name != NULL && strcmp(cfg->idps[i].name, name) == 0) {
            return &cfg->idps[i];
        }
    }
    return NULL;
}

/* The target called name, or NULL (also for NULL arguments). */
const pg_target_cfg_t *
pg_config_target(const pg_config_t *cfg, const char *name)
{
    size_t i;

    if (cfg == NULL || name == NULL) {
        return NULL;
    }
    for (i = 0; i < cfg->ntargets; i++) {
        if (cfg->targets[i].name != NULL &&
            strcmp(cfg->targets[i].name, name) == 0) {
            return &cfg->targets[i];
        }
    }
    return NULL;
}
