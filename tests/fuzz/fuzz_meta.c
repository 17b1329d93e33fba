/*
 * Fuzz target: OIDC discovery and token endpoint parsing.
 *
 * The input is parsed as a discovery document for a fixed provider; when it
 * is accepted, the authorization and logout URLs are built from it and
 * checked (abort on violation): they start with the endpoint, carry the
 * state back unchanged, and contain no control bytes or spaces. The input
 * is also parsed as a token endpoint response with status 200 and 400; a
 * returned id_token must be non-empty and within PG_OIDC_MAX_JWT.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "provgate/oidc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_url(const char *url, const char *base)
{
    const char *q;
    char *state;
    size_t i;

    if (strncmp(url, base, strlen(base)) != 0) {
        abort();
    }
    for (i = 0; url[i] != '\0'; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c >= 0x7f) {
            abort();
        }
    }
    q = strchr(url, '?');
    if (q == NULL) {
        abort();
    }
    /* The endpoint's own query could also hold "state"; only check when the
     * endpoint has none. */
    if (strchr(base, '?') == NULL) {
        state = pg_query_param(q + 1, strlen(q + 1), "state");
        if (state == NULL || strcmp(state, "st&=/?#%x") != 0) {
            abort();
        }
        free(state);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char *scopes[] = {"openid", "email", NULL};
    pg_oidc_idp_cfg_t cfg;
    pg_oidc_meta_t m;
    pg_err_t err;
    char *tok = NULL;
    pg_status_t st;

    memset(&cfg, 0, sizeof(cfg));
    cfg.name = "fuzz";
    cfg.issuer = "https://idp.example";
    cfg.client_id = "client 1";
    cfg.client_secret = "secret";
    cfg.redirect_uri = "https://app.example/cb";
    cfg.scopes = scopes;
    cfg.post_logout_redirect_uri = "https://app.example/bye";

    st = pg_oidc_meta_parse((const char *)data, size, &cfg, &m, &err);
    if (st == PG_OK) {
        char *url = NULL;
        if (m.issuer == NULL || strcmp(m.issuer, cfg.issuer) != 0 ||
            m.authorization_endpoint == NULL || m.token_endpoint == NULL ||
            m.jwks_uri == NULL) {
            abort();
        }
        if (pg_oidc_auth_url(&m, &cfg, "st&=/?#%x", "nonce", "challenge",
                             &url) != PG_OK) {
            abort();
        }
        check_url(url, m.authorization_endpoint);
        free(url);
        url = NULL;
        st = pg_oidc_logout_url(&m, &cfg, "a.b.c", "st&=/?#%x", &url);
        if (m.end_session_endpoint == NULL) {
            if (st != PG_ERR_NOT_FOUND || url != NULL) {
                abort();
            }
        } else {
            if (st != PG_OK) {
                abort();
            }
            check_url(url, m.end_session_endpoint);
            free(url);
        }
        pg_oidc_meta_clear(&m);
    } else if (m.issuer != NULL || m.authorization_endpoint != NULL ||
               m.token_endpoint != NULL || m.jwks_uri != NULL ||
               m.userinfo_endpoint != NULL || m.end_session_endpoint != NULL) {
        abort();
    }

    st = pg_oidc_token_response(200, (const char *)data, size, &tok, &err);
    if (st == PG_OK) {
        if (tok == NULL || tok[0] == '\0' || strlen(tok) > PG_OIDC_MAX_JWT) {
            abort();
        }
        free(tok);
    } else if (tok != NULL) {
        abort();
    }
    st = pg_oidc_token_response(400, (const char *)data, size, &tok, &err);
    if (st != PG_ERR_DENIED && st != PG_ERR_TOO_LARGE && st != PG_ERR_INVALID) {
        abort();
    }
    if (tok != NULL) {
        abort();
    }
    return 0;
}
