/*
 * provgate core: several identity providers on one location (IdP
 * discovery).
 *
 * "provgate oidc:main saml:corp;" hands the gate the location's list. A
 * session of any IdP in it is accepted there (access.c). A browser without
 * a session is asked which IdP to use: a chooser page lists the IdPs (by
 * display_name), each a link back to the same URL with provgate_idp=<name>
 * added. A request carrying that parameter with one of the location's IdPs
 * starts that IdP's login; the return URL stored for after the login is the
 * original one without the parameter, and the choice is remembered in the
 * cookie "<session cookie>_idp" (like Shibboleth's _saml_idp), so the next
 * login skips the chooser. provgate_idp=* (or an empty value, or any name
 * not allowed here) shows the chooser again. Only the names of the
 * location's list ever come out of here: the request only selects.
 */
#include <stdlib.h>
#include <string.h>

#include "provgate/util.h"
#include "gate_int.h"


/* 1 when name[0..len) is one of idps[0..n); *which = that entry. */
static int
pg_idp_in_list(const char *const *idps, size_t n, const char *name,
               size_t len, const char **which)
{
    size_t i;

    if (name == NULL || len == 0 || len > PG_IDP_CHOICE_MAX) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (idps[i] != NULL && strlen(idps[i]) == len
            && memcmp(idps[i], name, len) == 0) {
            *which = idps[i];
            return 1;
        }
    }
    return 0;
}

/* See gate.h. Ownership: *return_uri is the caller's; *chosen is borrowed
 * from idps. Never reads a Cookie value over PG_GATE_MAX_COOKIE bytes. */
pg_status_t
pg_idp_choice(const char *const *idps, size_t nidps, const char *uri,
              size_t uri_len, const char *cookie_name,
              const char *const *cookies, size_t ncookies,
              pg_idp_choice_t *how, const char **chosen, char **return_uri)
{
    size_t removed = 0, i, cnlen;
    char *stripped = NULL;
    const char *q;

    *how = PG_IDP_CHOOSE;
    *chosen = NULL;
    if (return_uri != NULL) {
        *return_uri = NULL;
    }
    if (uri != NULL && uri_len <= PG_GATE_MAX_ARGS) {
        stripped = pg_query_strip_param(uri, uri_len, PG_IDP_CHOICE_PARAM,
                                        &removed);
        if (stripped == NULL) {
            return PG_ERR_NOMEM;
        }
    }
    if (removed > 0) {
        /* the parameter decides, whatever is remembered */
        q = memchr(uri, '?', uri_len);
        if (q != NULL) {
            size_t qlen = uri_len - (size_t) (q + 1 - uri);
            char *v = pg_query_param(q + 1, qlen, PG_IDP_CHOICE_PARAM);

            if (v != NULL
                && pg_idp_in_list(idps, nidps, v, strlen(v), chosen)) {
                *how = PG_IDP_CHOSEN_PARAM;
            }
            free(v);
        }
    } else if (cookie_name != NULL) {
        cnlen = strlen(cookie_name);
        for (i = 0; i < ncookies && *chosen == NULL; i++) {
            const char *p = cookies[i], *k, *v;
            size_t klen, vlen;

            if (p == NULL
                || strnlen(p, PG_GATE_MAX_COOKIE + 1) > PG_GATE_MAX_COOKIE) {
                continue;
            }
            while (*chosen == NULL
                   && pg_cookie_next(&p, &k, &klen, &v, &vlen)) {
                if (klen == cnlen && memcmp(k, cookie_name, cnlen) == 0
                    && pg_idp_in_list(idps, nidps, v, vlen, chosen)) {
                    *how = PG_IDP_CHOSEN_COOKIE;
                }
            }
        }
    }
    if (return_uri != NULL) {
        *return_uri = stripped;
    } else {
        free(stripped);
    }
    return PG_OK;
}

/* See gate_int.h. */
int
pg_op_idp_allowed(const pg_op_t *op, const char *name)
{
    size_t i;

    if (op->idps == NULL) {
        return op->idp == NULL
               || (name != NULL && strcmp(name, op->idp) == 0);
    }
    for (i = 0; name != NULL && i < op->nidps; i++) {
        if (strcmp(name, op->idps[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Append the NUL-terminated s to the malloc'd *buf of *len bytes (kept
 * NUL-terminated). PG_ERR_NOMEM leaves *buf as it was. */
static pg_status_t
pg_buf_add(char **buf, size_t *len, const char *s)
{
    size_t l = strlen(s);
    char *nb = realloc(*buf, *len + l + 1);

    if (nb == NULL) {
        return PG_ERR_NOMEM;
    }
    memcpy(nb + *len, s, l + 1);
    *buf = nb;
    *len += l;
    return PG_OK;
}

/*
 * The chooser (200, no-store, HTML): one link per IdP of op's location,
 * labelled with its display_name, to base (the request target without
 * provgate_idp, a validated same-origin path, or NULL: a query-only
 * reference to the current path) plus provgate_idp=<name>. Every value is
 * HTML-escaped; IdP names are config words ([A-Za-z0-9_-]) and need no URL
 * encoding. Audited as login.start / idp_choice with the list and whether
 * a provgate_idp parameter (explicit "*", or not allowed here) led here.
 * Finishes op.
 */
static void
pg_choice_page(pg_op_t *op, const char *base, int by_param)
{
    const pg_config_t *cfg = op->g->cfg;
    char *inner = NULL, *doc, href[2048 * 6 + 1];
    char label[1280], name[PG_IDP_CHOICE_MAX * 6 + 1], *li = NULL;
    size_t len = 0, i;
    const char *sep;
    pg_gate_result_t *res;
    json_t *f, *list;
    pg_status_t st;

    inner = strdup("<h1>Sign in</h1><p>Choose how you want to sign in:</p>"
                   "<ul id=\"idp-choice\">");
    if (inner == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    len = strlen(inner);
    if (base != NULL) {
        sep = strchr(base, '?') != NULL ? "&" : "?";
    } else {
        base = "";
        sep = "?";
    }
    pg_html_escape(base, href, sizeof(href));
    list = json_array();
    st = list != NULL ? PG_OK : PG_ERR_NOMEM;
    for (i = 0; i < op->nidps && st == PG_OK; i++) {
        const pg_idp_cfg_t *d = pg_config_idp(cfg, op->idps[i]);

        pg_html_escape(d != NULL && d->display_name != NULL
                       ? d->display_name : op->idps[i], label, sizeof(label));
        pg_html_escape(op->idps[i], name, sizeof(name));
        if (asprintf(&li, "<li><a href=\"%s%s" PG_IDP_CHOICE_PARAM
                     "=%s\" data-idp=\"%s\">%s</a></li>", href,
                     sep[0] == '&' ? "&amp;" : "?", name, name, label) < 0) {
            li = NULL;
            st = PG_ERR_NOMEM;
            break;
        }
        st = pg_buf_add(&inner, &len, li);
        free(li);
        li = NULL;
        if (st == PG_OK && json_array_append_new(list,
                                                 json_string(op->idps[i]))
                           != 0) {
            st = PG_ERR_NOMEM;
        }
    }
    if (st == PG_OK) {
        st = pg_buf_add(&inner, &len, "</ul>");
    }
    doc = st == PG_OK ? pg_html_doc("", "Sign in", inner) : NULL;
    free(inner);
    res = doc != NULL ? pg_result_new(PG_RES_PAGE, 200) : NULL;
    if (res == NULL) {
        free(doc);
        json_decref(list);
        pg_op_finish(op, NULL);
        return;
    }
    res->body = doc;
    res->body_len = strlen(doc);
    res->content_type = "text/html; charset=utf-8";
    res->no_store = 1;
    f = json_pack("{s:o, s:b}", "idps", list, "parameter", by_param);
    pg_op_audit(op, "login.start", "info", "idp_choice", f, NULL);
    pg_op_finish(op, res);
}

/* See gate_int.h. The chosen name is copied from op->idps, never from the
 * request. */
int
pg_login_choose(pg_op_t *op)
{
    pg_idp_choice_t how;
    const char *chosen = NULL;
    char *ret = NULL;
    const char *base;
    int by_param;

    if (pg_idp_choice((const char *const *) op->idps, op->nidps, op->uri,
                      op->uri != NULL ? strlen(op->uri) : 0,
                      op->g->idp_cookie_name,
                      (const char *const *) op->raw_cookies,
                      op->nraw_cookies, &how, &chosen, &ret) != PG_OK) {
        pg_op_finish(op, NULL);
        return 1;
    }
    /* the target without the parameter: the return path after login and
     * the chooser links' base, when it is a safe same-origin path */
    base = ret != NULL && pg_return_path_ok(ret, strlen(ret)) ? ret : NULL;
    if (how == PG_IDP_CHOOSE) {
        by_param = ret != NULL && op->uri != NULL && strcmp(ret, op->uri) != 0;
        pg_choice_page(op, base, by_param);
        free(ret);
        return 1;
    }
    op->idp = strdup(chosen);
    if (op->return_to == NULL) {
        op->return_to = strdup(base != NULL ? base : "/");
    }
    free(ret);
    if (op->idp == NULL || op->return_to == NULL) {
        pg_op_finish(op, NULL);
        return 1;
    }
    op->idp_via = how == PG_IDP_CHOSEN_PARAM ? "parameter" : "cookie";
    if (how == PG_IDP_CHOSEN_PARAM) {
        op->choice_cookie = pg_cookie_line(op->g->cfg, op->g->idp_cookie_name,
                                           op->idp, PG_IDP_CHOICE_MAX_AGE_S);
        if (op->choice_cookie == NULL) {
            pg_op_finish(op, NULL);
            return 1;
        }
    }
    return 0;
}

/* See gate_int.h. op keeps no reference to the cookie line afterwards. */
pg_status_t
pg_login_choice_cookie(pg_op_t *op, pg_gate_result_t *res)
{
    pg_status_t st;

    if (op->choice_cookie == NULL) {
        return PG_OK;
    }
    st = pg_result_cookie(res, op->choice_cookie);
    free(op->choice_cookie);
    op->choice_cookie = NULL;
    return st;
}
