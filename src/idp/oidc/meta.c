/*
 * provgate core: OpenID Connect discovery and the relying party's requests
 * (authorization URL, token request, token response, logout URL).
 *
 * Pure functions: no I/O. Every input from the provider is size-capped
 * before it is parsed; every value put into a URL or form body is
 * percent-encoded with pg_urlencode().
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include "provgate/oidc.h"

/* Cap on any single endpoint URL from discovery. */
#define META_URL_MAX 2048
/* Cap on the provider's error code / description copied into err. */
#define PROVIDER_ERR_MAX 64

/* ---- a tiny growable string (file-local) ------------------------------ */

typedef struct sbuf {
    char *p;
    size_t len;
    size_t cap;
    int oom;
} sbuf_t;

/* Append n bytes; on allocation failure sets b->oom and keeps old data. */
static void
sb_add(sbuf_t *b, const char *s, size_t n)
{
    if (b->oom) {
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 256;
        char *np;
        while (ncap < b->len + n + 1) {
            if (ncap > SIZE_MAX / 2) {
                b->oom = 1;
                return;
            }
            ncap *= 2;
        }
        np = realloc(b->p, ncap);
        if (np == NULL) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
    if (n > 0) {
        memcpy(b->p + b->len, s, n);
    }
    b->len += n;
    b->p[b->len] = '\0';
}

/* Append a NUL-terminated string. */
static void
sb_str(sbuf_t *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* Append "<sep>name=<urlencoded value>"; sep is skipped when NULL. */
static void
sb_param(sbuf_t *b, const char *sep, const char *name, const char *value)
{
    char *enc;

    if (b->oom) {
        return;
    }
    enc = pg_urlencode(value, strlen(value));
    if (enc == NULL) {
        b->oom = 1;
        return;
    }
    if (sep != NULL) {
        sb_str(b, sep);
    }
    sb_str(b, name);
    sb_add(b, "=", 1);
    sb_str(b, enc);
    free(enc);
}

/* Hand the buffer to the caller (malloc'd) or free it on OOM. */
static pg_status_t
sb_finish(sbuf_t *b, char **out)
{
    if (b->oom || b->p == NULL) {
        free(b->p);
        *out = NULL;
        return PG_ERR_NOMEM;
    }
    *out = b->p;
    return PG_OK;
}

/* ---- discovery -------------------------------------------------------- */

/* 1 when s starts with the lower-case ASCII prefix, ignoring case in s.
 * Stops at s's NUL, so it never reads past a shorter s. */
static int
ascii_ieq_prefix(const char *s, const char *prefix)
{
    size_t i;

    for (i = 0; prefix[i] != '\0'; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c - 'A' + 'a');
        }
        if (c != prefix[i]) {
            return 0;
        }
    }
    return 1;
}

/* 1 when h[0..n) is 127.0.0.1, [::1] or localhost (any case). */
static int
host_is_loopback(const char *h, size_t n)
{
    static const char *const names[] = {"127.0.0.1", "[::1]", "localhost"};
    size_t i, j;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t ln = strlen(names[i]);
        if (ln != n) {
            continue;
        }
        for (j = 0; j < n; j++) {
            char c = h[j];
            if (c >= 'A' && c <= 'Z') {
                c = (char)(c - 'A' + 'a');
            }
            if (c != names[i][j]) {
                break;
            }
        }
        if (j == n) {
            return 1;
        }
    }
    return 0;
}

/*
 * 1 when url is acceptable as a provider endpoint: at most 2048 bytes of
 * printable ASCII (no space, no control bytes, no '\', no fragment),
 * scheme https (any case) with a non-empty host and no userinfo, or http
 * on a loopback host (127.0.0.1, [::1], localhost) with an optional port.
 */
static int
endpoint_url_ok(const char *url)
{
    size_t n = strnlen(url, META_URL_MAX + 1), i, hstart, hend, aend;
    int https;

    if (n == 0 || n > META_URL_MAX) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c >= 0x7f || c == '\\' || c == '#') {
            return 0;
        }
    }
    if (n > 8 && ascii_ieq_prefix(url, "https://")) {
        https = 1;
        hstart = 8;
    } else if (n > 7 && ascii_ieq_prefix(url, "http://")) {
        https = 0;
        hstart = 7;
    } else {
        return 0;
    }
    aend = hstart;
    while (aend < n && url[aend] != '/' && url[aend] != '?') {
        if (url[aend] == '@') {
            return 0;
        }
        aend++;
    }
    if (aend == hstart) {
        return 0;
    }
    /* Split host from an optional ":port" (IPv6 literals are bracketed). */
    hend = aend;
    if (url[hstart] == '[') {
        const char *rb = memchr(url + hstart, ']', aend - hstart);
        if (rb == NULL) {
            return 0;
        }
        hend = (size_t)(rb - url) + 1;
    } else {
        const char *colon = memchr(url + hstart, ':', aend - hstart);
        if (colon != NULL) {
            hend = (size_t)(colon - url);
        }
    }
    if (hend == hstart) {
        return 0;
    }
    if (hend < aend) {
        size_t p;
        if (url[hend] != ':' || hend + 1 == aend || aend - hend - 1 > 5) {
            return 0;
        }
        for (p = hend + 1; p < aend; p++) {
            if (url[p] < '0' || url[p] > '9') {
                return 0;
            }
        }
    }
    if (https) {
        return 1;
    }
    return host_is_loopback(url + hstart, hend - hstart);
}

/*
 * Copy string member key of doc into *out (malloc'd). Absent is PG_OK with
 * *out NULL unless required; present but not an acceptable URL string is
 * PG_ERR_INVALID.
 */
static pg_status_t
meta_url(const json_t *doc, const char *key, int required, char **out,
         pg_err_t *err)
{
    const json_t *v = json_object_get(doc, key);
    const char *s;

    *out = NULL;
    if (v == NULL || json_is_null(v)) {
        if (required) {
            pg_err_set(err, "discovery: %s missing", key);
            return PG_ERR_INVALID;
        }
        return PG_OK;
    }
    if (!json_is_string(v)) {
        pg_err_set(err, "discovery: %s is not a string", key);
        return PG_ERR_INVALID;
    }
    s = json_string_value(v);
    if (strlen(s) != json_string_length(v) || !endpoint_url_ok(s)) {
        pg_err_set(err, "discovery: %s is not an https (or loopback http) URL",
                   key);
        return PG_ERR_INVALID;
    }
    *out = strdup(s);
    if (*out == NULL) {
        return PG_ERR_NOMEM;
    }
    return PG_OK;
}

/*
 * Parse a discovery document body[0..len) for provider cfg into *out.
 * On success out owns six malloc'd strings (two may be NULL); release with
 * pg_oidc_meta_clear(). On failure *out is all NULL and err says why:
 * PG_ERR_TOO_LARGE over PG_OIDC_MAX_DISCOVERY, PG_ERR_INVALID for bad JSON,
 * an issuer that differs from cfg->issuer, a missing or non-https endpoint,
 * or a code_challenge_methods_supported without "S256".
 */
pg_status_t
pg_oidc_meta_parse(const char *body, size_t len, const pg_oidc_idp_cfg_t *cfg,
                   pg_oidc_meta_t *out, pg_err_t *err)
{
    pg_oidc_meta_t m;
    json_t *doc = NULL, *iss, *ccm;
    json_error_t jerr;
    pg_status_t st;

    if (out != NULL) {
        memset(out, 0, sizeof(*out));
    }
    if (body == NULL || cfg == NULL || cfg->issuer == NULL || out == NULL) {
        pg_err_set(err, "discovery: missing argument");
        return PG_ERR_INVALID;
    }
    if (len > PG_OIDC_MAX_DISCOVERY) {
        pg_err_set(err, "discovery: document over %u bytes",
                   PG_OIDC_MAX_DISCOVERY);
        return PG_ERR_TOO_LARGE;
    }
    memset(&m, 0, sizeof(m));
    doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL || !json_is_object(doc)) {
        pg_err_set(err, "discovery: not a JSON object");
        st = PG_ERR_INVALID;
        goto fail;
    }
    iss = json_object_get(doc, "issuer");
    if (!json_is_string(iss) || strcmp(json_string_value(iss), cfg->issuer) != 0 ||
        json_string_length(iss) != strlen(cfg->issuer)) {
        pg_err_set(err, "discovery: issuer does not match the configured "
                   "issuer exactly");
        st = PG_ERR_INVALID;
        goto fail;
    }
    if ((st = meta_url(doc, "issuer", 1, &m.issuer, err)) != PG_OK ||
        (st = meta_url(doc, "authorization_endpoint", 1,
                       &m.authorization_endpoint, err)) != PG_OK ||
        (st = meta_url(doc, "token_endpoint", 1, &m.token_endpoint, err)) != PG_OK ||
        (st = meta_url(doc, "jwks_uri", 1, &m.jwks_uri, err)) != PG_OK ||
        (st = meta_url(doc, "userinfo_endpoint", 0, &m.userinfo_endpoint,
                       err)) != PG_OK ||
        (st = meta_url(doc, "end_session_endpoint", 0,
                       &m.end_session_endpoint, err)) != PG_OK) {
        goto fail;
    }
    ccm = json_object_get(doc, "code_challenge_methods_supported");
    if (ccm != NULL) {
        size_t i;
        json_t *v;
        int s256 = 0;
        if (!json_is_array(ccm)) {
            pg_err_set(err, "discovery: code_challenge_methods_supported is "
                       "not an array");
            st = PG_ERR_INVALID;
            goto fail;
        }
        json_array_foreach(ccm, i, v) {
            if (json_is_string(v) && strcmp(json_string_value(v), "S256") == 0) {
                s256 = 1;
            }
        }
        if (!s256) {
            pg_err_set(err, "discovery: provider does not support PKCE S256");
            st = PG_ERR_INVALID;
            goto fail;
        }
    }
    json_decref(doc);
    *out = m;
    return PG_OK;
fail:
    json_decref(doc);
    pg_oidc_meta_clear(&m);
    return st;
}

/* Free every string of m and reset it to all NULL. m may be NULL. */
void
pg_oidc_meta_clear(pg_oidc_meta_t *m)
{
    if (m == NULL) {
        return;
    }
    free(m->issuer);
    free(m->authorization_endpoint);
    free(m->token_endpoint);
    free(m->jwks_uri);
    free(m->userinfo_endpoint);
    free(m->end_session_endpoint);
    memset(m, 0, sizeof(*m));
}

/* ---- requests --------------------------------------------------------- */

/* Start a URL on base: "?" when base has no query, "&" when it has one that
 * does not already end in '?' or '&', nothing otherwise. Returns the
 * separator for the first parameter. */
static const char *
url_first_sep(const char *base)
{
    size_t n = strlen(base);

    if (strchr(base, '?') == NULL) {
        return "?";
    }
    if (n > 0 && (base[n - 1] == '?' || base[n - 1] == '&')) {
        return "";
    }
    return "&";
}

/* 1 for a non-NULL, non-empty string. */
static int
nonempty(const char *s)
{
    return s != NULL && s[0] != '\0';
}

/*
 * Authorization request URL for the code flow with PKCE S256:
 * authorization_endpoint + response_type=code, client_id, redirect_uri,
 * scope (cfg->scopes joined by spaces), state, nonce, code_challenge,
 * code_challenge_method=S256 and, when configured, claims. Every value is
 * percent-encoded. An endpoint that already has a query keeps it. *out is
 * malloc'd (caller frees). PG_ERR_INVALID when a required input is missing.
 */
pg_status_t
pg_oidc_auth_url(const pg_oidc_meta_t *m, const pg_oidc_idp_cfg_t *cfg,
                 const char *state, const char *nonce,
                 const char *code_challenge, char **out)
{
    sbuf_t b = {0};
    sbuf_t scope = {0};
    size_t i;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (m == NULL || cfg == NULL || !nonempty(m->authorization_endpoint) ||
        !nonempty(cfg->client_id) || !nonempty(cfg->redirect_uri) ||
        !nonempty(state) || !nonempty(nonce) || !nonempty(code_challenge)) {
        return PG_ERR_INVALID;
    }
    if (cfg->scopes == NULL || cfg->scopes[0] == NULL) {
        sb_str(&scope, "openid");
    } else {
        for (i = 0; cfg->scopes[i] != NULL; i++) {
            if (i > 0) {
                sb_add(&scope, " ", 1);
            }
            sb_str(&scope, cfg->scopes[i]);
        }
    }
    if (scope.oom) {
        free(scope.p);
        return PG_ERR_NOMEM;
    }
    sb_str(&b, m->authorization_endpoint);
    sb_param(&b, url_first_sep(m->authorization_endpoint), "response_type",
             "code");
    sb_param(&b, "&", "client_id", cfg->client_id);
    sb_param(&b, "&", "redirect_uri", cfg->redirect_uri);
    sb_param(&b, "&", "scope", scope.p);
    sb_param(&b, "&", "state", state);
    sb_param(&b, "&", "nonce", nonce);
    sb_param(&b, "&", "code_challenge", code_challenge);
    sb_param(&b, "&", "code_challenge_method", "S256");
    if (nonempty(cfg->claims_request)) {
        sb_param(&b, "&", "claims", cfg->claims_request);
    }
    free(scope.p);
    return sb_finish(&b, out);
}

/*
 * Token request for an authorization code. *body_out (malloc'd) is the
 * application/x-www-form-urlencoded body: grant_type=authorization_code,
 * code, redirect_uri, code_verifier, client_id and, for
 * PG_TOKEN_AUTH_POST, client_secret. For PG_TOKEN_AUTH_BASIC *auth_out
 * (malloc'd) is "Authorization: Basic " + base64(enc(id) ":" enc(secret))
 * with enc the form encoding of RFC 6749 2.3.1 (pg_urlencode output, which
 * every form decoder reads back unchanged); otherwise *auth_out is NULL.
 * PG_ERR_CONFIG when the client secret is missing; PG_ERR_INVALID for a
 * missing code/verifier. On failure both outputs are NULL.
 */
pg_status_t
pg_oidc_token_request(const pg_oidc_idp_cfg_t *cfg, const char *code,
                      const char *verifier, char **body_out, char **auth_out)
{
    sbuf_t b = {0};
    pg_status_t st;

    if (body_out == NULL || auth_out == NULL) {
        return PG_ERR_INVALID;
    }
    *body_out = NULL;
    *auth_out = NULL;
    if (cfg == NULL || !nonempty(code) || !nonempty(verifier) ||
        !nonempty(cfg->client_id) || !nonempty(cfg->redirect_uri)) {
        return PG_ERR_INVALID;
    }
    if (cfg->client_secret == NULL) {
        return PG_ERR_CONFIG;
    }
    sb_param(&b, NULL, "grant_type", "authorization_code");
    sb_param(&b, "&", "code", code);
    sb_param(&b, "&", "redirect_uri", cfg->redirect_uri);
    sb_param(&b, "&", "code_verifier", verifier);
    sb_param(&b, "&", "client_id", cfg->client_id);
    if (cfg->token_auth == PG_TOKEN_AUTH_POST) {
        sb_param(&b, "&", "client_secret", cfg->client_secret);
    }
    st = sb_finish(&b, body_out);
    if (st != PG_OK) {
        return st;
    }
    if (cfg->token_auth == PG_TOKEN_AUTH_BASIC) {
        static const char prefix[] = "Authorization: Basic ";
        char *id = pg_urlencode(cfg->client_id, strlen(cfg->client_id));
        char *sec = pg_urlencode(cfg->client_secret,
                                 strlen(cfg->client_secret));
        sbuf_t cred = {0};
        char *line = NULL;
        size_t b64len;

        if (id != NULL && sec != NULL) {
            sb_str(&cred, id);
            sb_add(&cred, ":", 1);
            sb_str(&cred, sec);
        }
        if (sec != NULL) {
            OPENSSL_cleanse(sec, strlen(sec));
        }
        free(id);
        free(sec);
        if (id == NULL || sec == NULL || cred.oom || cred.len > INT_MAX / 2) {
            if (cred.p != NULL) {
                OPENSSL_cleanse(cred.p, cred.len);
            }
            free(cred.p);
            free(*body_out);
            *body_out = NULL;
            return PG_ERR_NOMEM;
        }
        b64len = 4 * ((cred.len + 2) / 3);
        line = malloc(sizeof(prefix) - 1 + b64len + 1);
        if (line != NULL) {
            memcpy(line, prefix, sizeof(prefix) - 1);
            EVP_EncodeBlock((unsigned char *)line + sizeof(prefix) - 1,
                            (const unsigned char *)cred.p, (int)cred.len);
            line[sizeof(prefix) - 1 + b64len] = '\0';
        }
        OPENSSL_cleanse(cred.p, cred.len);
        free(cred.p);
        if (line == NULL) {
            free(*body_out);
            *body_out = NULL;
            return PG_ERR_NOMEM;
        }
        *auth_out = line;
    }
    return PG_OK;
}

/* Copy a provider-supplied string into dst (dstsz bytes) keeping only
 * printable ASCII, capped at PROVIDER_ERR_MAX bytes, for safe logging. */
static void
safe_copy(const char *src, char *dst, size_t dstsz)
{
    size_t i, o = 0;

    for (i = 0; src != NULL && src[i] != '\0' && o + 1 < dstsz &&
                o < PROVIDER_ERR_MAX; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c >= 0x20 && c < 0x7f) {
            dst[o++] = (char)c;
        }
    }
    dst[o] = '\0';
}

/*
 * Parse the token endpoint's answer (HTTP status, body[0..len)).
 * A non-200 status or an "error" member is PG_ERR_DENIED with the
 * provider's error code (sanitised, capped) in err. A 200 without a
 * non-empty string id_token (at most PG_OIDC_MAX_JWT bytes) is
 * PG_ERR_INVALID. PG_ERR_TOO_LARGE over PG_OIDC_MAX_TOKEN_RESPONSE.
 * On success *id_token is malloc'd (caller frees); otherwise NULL.
 */
pg_status_t
pg_oidc_token_response(long status, const char *body, size_t len,
                       char **id_token, pg_err_t *err)
{
    json_t *doc = NULL, *e, *t;
    json_error_t jerr;
    char code[PROVIDER_ERR_MAX + 1], desc[PROVIDER_ERR_MAX + 1];
    pg_status_t st;

    if (id_token == NULL) {
        return PG_ERR_INVALID;
    }
    *id_token = NULL;
    if (body == NULL && len > 0) {
        return PG_ERR_INVALID;
    }
    if (len > PG_OIDC_MAX_TOKEN_RESPONSE) {
        pg_err_set(err, "token response over %u bytes",
                   PG_OIDC_MAX_TOKEN_RESPONSE);
        return PG_ERR_TOO_LARGE;
    }
    if (len > 0) {
        doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    }
    if (doc != NULL && !json_is_object(doc)) {
        json_decref(doc);
        doc = NULL;
    }
    e = doc != NULL ? json_object_get(doc, "error") : NULL;
    if (status != 200 || e != NULL) {
        safe_copy(json_is_string(e) ? json_string_value(e) : "",
                  code, sizeof(code));
        t = doc != NULL ? json_object_get(doc, "error_description") : NULL;
        safe_copy(json_is_string(t) ? json_string_value(t) : "", desc,
                  sizeof(desc));
        if (code[0] != '\0') {
            pg_err_set(err, "token endpoint: HTTP %ld, error %s%s%s", status,
                       code, desc[0] ? ": " : "", desc);
        } else {
            pg_err_set(err, "token endpoint: HTTP %ld", status);
        }
        json_decref(doc);
        return PG_ERR_DENIED;
    }
    if (doc == NULL) {
        pg_err_set(err, "token endpoint: response is not a JSON object");
        return PG_ERR_INVALID;
    }
    t = json_object_get(doc, "id_token");
    if (!json_is_string(t) || json_string_length(t) == 0 ||
        json_string_length(t) > PG_OIDC_MAX_JWT ||
        strlen(json_string_value(t)) != json_string_length(t)) {
        pg_err_set(err, "token endpoint: no usable id_token");
        st = PG_ERR_INVALID;
    } else {
        *id_token = strdup(json_string_value(t));
        st = *id_token != NULL ? PG_OK : PG_ERR_NOMEM;
    }
    json_decref(doc);
    return st;
}

/*
 * RP-initiated logout URL: end_session_endpoint + client_id and, when
 * given/configured, id_token_hint, post_logout_redirect_uri and state.
 * PG_ERR_NOT_FOUND when the provider has no end_session_endpoint. *out is
 * malloc'd (caller frees).
 */
pg_status_t
pg_oidc_logout_url(const pg_oidc_meta_t *m, const pg_oidc_idp_cfg_t *cfg,
                   const char *id_token_hint, const char *state, char **out)
{
    sbuf_t b = {0};
    const char *sep;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (m == NULL || cfg == NULL) {
        return PG_ERR_INVALID;
    }
    if (!nonempty(m->end_session_endpoint)) {
        return PG_ERR_NOT_FOUND;
    }
    sb_str(&b, m->end_session_endpoint);
    sep = url_first_sep(m->end_session_endpoint);
    if (nonempty(cfg->client_id)) {
        sb_param(&b, sep, "client_id", cfg->client_id);
        sep = "&";
    }
    if (nonempty(id_token_hint)) {
        sb_param(&b, sep, "id_token_hint", id_token_hint);
        sep = "&";
    }
    if (nonempty(cfg->post_logout_redirect_uri)) {
        sb_param(&b, sep, "post_logout_redirect_uri",
                 cfg->post_logout_redirect_uri);
        sep = "&";
    }
    if (nonempty(state)) {
        sb_param(&b, sep, "state", state);
    }
    return sb_finish(&b, out);
}
