/*
 * provgate core: SCIM 2.0 client connector (see include/provgate/scim.h and
 * docs/connectors.md).
 *
 * Two parts:
 *
 * 1. pg_scim_build_user(): the desired User from the target's mapping.
 *  - "schemas" is always ["urn:ietf:params:scim:schemas:core:2.0:User"]
 *    plus any extension URN used by a mapping path;
 *  - "a.b.c" creates nested objects {"a":{"b":{"c":v}}};
 *    "urn:...:2.0:User:a.b" puts "a.b" under the extension object whose key
 *    is the URN before the last ':' (dots inside URNs are not split);
 *  - a template for "emails" or "phoneNumbers" becomes
 *    [{"value": v, "type": "work", "primary": true}];
 *  - a literal is copied as is;
 *  - a template whose attribute is missing (or not a scalar) makes the
 *    attribute absent, except for "userName" and the target's username
 *    attribute, which fail the whole mapping ("mapping_failed").
 *
 * 2. pg_scim_ensure(): an asynchronous state machine over pg_http, one HTTP
 *    call in flight at a time:
 *      [GET /Users/<known id>] --404--> GET /Users?filter=<attr> eq "<v>"
 *      0 matches -> POST /Users (409 -> look up again once, adopt)
 *      1 match   -> adopt; >1 -> bad_response
 *      PATCH /Users/<id> "replace" per differing top-level attribute
 *      per group: GET /Groups?filter=displayName eq "<g>"
 *                 [POST /Groups when missing and allowed]
 *                 [GET /Groups/<gid>?attributes=members when not returned]
 *                 PATCH /Groups/<gid> "add" members when not a member
 *    Reason codes: target_auth (401/403), target_unavailable (transport
 *    error, 429, 5xx), target_timeout, target_rejected (other 4xx, with the
 *    SCIM scimType/detail), bad_response (non-JSON, wrong shape, over
 *    PG_SCIM_MAX_RESPONSE, ambiguous), group_unknown. No retries.
 *
 * Secrets: the bearer token only lives in the op's Authorization header
 * (wiped on free); it is never logged and is masked out of result details.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "provgate/scim.h"
#include "provgate/util.h"

#define SCIM_USER_SCHEMA "urn:ietf:params:scim:schemas:core:2.0:User"
#define SCIM_MAX_PATH 512

/*
 * Escape v for use inside a double-quoted SCIM filter literal: '\' becomes
 * "\\" and '"' becomes "\"". Returns a malloc'd string the caller frees,
 * or NULL for NULL input or out of memory. Input length is not capped here;
 * callers pass values that are already bounded (mapped attributes).
 */
char *
pg_scim_filter_escape(const char *v)
{
    size_t n, i, extra = 0, o = 0;
    char *out;

    if (v == NULL) {
        return NULL;
    }
    n = strlen(v);
    for (i = 0; i < n; i++) {
        if (v[i] == '\\' || v[i] == '"') {
            extra++;
        }
    }
    if (n + extra + 1 < n) {
        return NULL;
    }
    out = malloc(n + extra + 1);
    if (out == NULL) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (v[i] == '\\' || v[i] == '"') {
            out[o++] = '\\';
        }
        out[o++] = v[i];
    }
    out[o] = '\0';
    return out;
}

/* Member of obj named key, exact match first, then ASCII case-insensitive
 * (SCIM attribute names are case-insensitive). Borrowed reference. */
static json_t *
scim_get_ci(const json_t *obj, const char *key)
{
    const char *k;
    json_t *v;

    if (!json_is_object(obj) || key == NULL) {
        return NULL;
    }
    v = json_object_get(obj, key);
    if (v != NULL) {
        return v;
    }
    json_object_foreach((json_t *)obj, k, v) {
        if (strcasecmp(k, key) == 0) {
            return v;
        }
    }
    return NULL;
}

/*
 * Value at a dotted path ("name.givenName") inside obj, or NULL. Path is
 * split on '.', each segment matched case-insensitively. Borrowed result.
 */
static json_t *
scim_get_path(const json_t *obj, const char *path)
{
    char seg[SCIM_MAX_PATH];
    const json_t *cur = obj;
    const char *p = path, *dot;
    size_t len;

    if (path == NULL || strlen(path) >= sizeof(seg)) {
        return NULL;
    }
    for (;;) {
        dot = strchr(p, '.');
        len = dot != NULL ? (size_t)(dot - p) : strlen(p);
        memcpy(seg, p, len);
        seg[len] = '\0';
        cur = scim_get_ci(cur, seg);
        if (cur == NULL || dot == NULL) {
            return (json_t *)cur;
        }
        p = dot + 1;
    }
}

/* 1 when path names the account's unique name (required by the mapping). */
static int
is_username_path(const pg_target_cfg_t *t, const char *path)
{
    const char *ua = (t->username_attr != NULL && t->username_attr[0] != '\0')
                         ? t->username_attr : "userName";

    return strcasecmp(path, "userName") == 0 || strcasecmp(path, ua) == 0;
}

/* Append urn to user["schemas"] unless present. 0 on success. */
static int
add_schema(json_t *user, const char *urn)
{
    json_t *schemas = json_object_get(user, "schemas"), *s;
    size_t i;

    json_array_foreach(schemas, i, s) {
        if (json_is_string(s) && strcmp(json_string_value(s), urn) == 0) {
            return 0;
        }
    }
    return json_array_append_new(schemas, json_string(urn));
}

/*
 * Put value (stolen, even on failure) at path inside user, creating nested
 * objects. Fails with PG_ERR_INVALID for empty segments, reserved top-level
 * names, a path through a non-object, or a path already set.
 */
static pg_status_t
set_path(json_t *user, const char *path, json_t *value, pg_err_t *err)
{
    char buf[SCIM_MAX_PATH];
    json_t *cur = user, *next;
    char *p, *dot, *colon;
    size_t n = strlen(path);

    if (value == NULL) {
        return PG_ERR_NOMEM;
    }
    if (n == 0 || n >= sizeof(buf)) {
        pg_err_set(err, "mapping_failed: bad attribute path \"%.64s\"", path);
        json_decref(value);
        return PG_ERR_INVALID;
    }
    memcpy(buf, path, n + 1);
    p = buf;
    if (strncasecmp(buf, "urn:", 4) == 0) {
        /* Extension attribute: "<urn>:<attr path>". */
        colon = strrchr(buf, ':');
        if (colon == NULL || colon[1] == '\0' || colon - buf <= 4) {
            pg_err_set(err, "mapping_failed: bad extension path \"%.64s\"",
                       path);
            json_decref(value);
            return PG_ERR_INVALID;
        }
        *colon = '\0';
        if (add_schema(user, buf) != 0) {
            json_decref(value);
            return PG_ERR_NOMEM;
        }
        next = json_object_get(cur, buf);
        if (next == NULL) {
            next = json_object();
            if (next == NULL || json_object_set_new(cur, buf, next) != 0) {
                json_decref(value);
                return PG_ERR_NOMEM;
            }
        } else if (!json_is_object(next)) {
            json_decref(value);
            return PG_ERR_INVALID;
        }
        cur = next;
        p = colon + 1;
    } else {
        dot = strchr(buf, '.');
        n = dot != NULL ? (size_t)(dot - buf) : strlen(buf);
        if ((n == 7 && strncasecmp(buf, "schemas", 7) == 0) ||
            (n == 2 && strncasecmp(buf, "id", 2) == 0) ||
            (n == 4 && strncasecmp(buf, "meta", 4) == 0)) {
            pg_err_set(err, "mapping_failed: \"%.64s\" cannot be mapped",
                       path);
            json_decref(value);
            return PG_ERR_INVALID;
        }
    }
    for (;;) {
        dot = strchr(p, '.');
        if (dot != NULL) {
            *dot = '\0';
        }
        if (*p == '\0') {
            pg_err_set(err, "mapping_failed: bad attribute path \"%.64s\"",
                       path);
            json_decref(value);
            return PG_ERR_INVALID;
        }
        if (dot == NULL) {
            if (json_object_get(cur, p) != NULL) {
                pg_err_set(err, "mapping_failed: \"%.64s\" mapped twice",
                           path);
                json_decref(value);
                return PG_ERR_INVALID;
            }
            return json_object_set_new(cur, p, value) == 0 ? PG_OK
                                                           : PG_ERR_NOMEM;
        }
        next = json_object_get(cur, p);
        if (next == NULL) {
            next = json_object();
            if (next == NULL || json_object_set_new(cur, p, next) != 0) {
                json_decref(value);
                return PG_ERR_NOMEM;
            }
        } else if (!json_is_object(next)) {
            pg_err_set(err, "mapping_failed: \"%.64s\" conflicts with "
                       "another mapping", path);
            json_decref(value);
            return PG_ERR_INVALID;
        }
        cur = next;
        p = dot + 1;
    }
}

/* [{"value": v, "type": "work", "primary": true}] or NULL on OOM. */
static json_t *
multi_valued(const char *v)
{
    return json_pack("[{s:s, s:s, s:b}]", "value", v, "type", "work",
                     "primary", 1);
}

/*
 * Build the desired SCIM User (see the rules at the top of this file).
 * t and attrs are only read. On success *out is a new reference the
 * caller owns. On failure *out is NULL and err->msg starts with
 * "mapping_failed: "; the status is PG_ERR_INVALID (bad or missing
 * required mapping), PG_ERR_TOO_LARGE (a rendered value over the template
 * cap) or PG_ERR_NOMEM.
 */
pg_status_t
pg_scim_build_user(const pg_target_cfg_t *t, const json_t *attrs,
                   json_t **out, pg_err_t *err)
{
    json_t *user, *value;
    const char *ua;
    pg_status_t st;
    size_t i;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (t == NULL || (t->nattrs > 0 && t->attrs == NULL)) {
        pg_err_set(err, "mapping_failed: no target mapping");
        return PG_ERR_INVALID;
    }
    user = json_pack("{s:[s]}", "schemas", SCIM_USER_SCHEMA);
    if (user == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < t->nattrs; i++) {
        const pg_attr_map_t *m = &t->attrs[i];
        const char *leaf;

        if (m->scim_path == NULL) {
            pg_err_set(err, "mapping_failed: mapping %zu has no path", i);
            st = PG_ERR_INVALID;
            goto fail;
        }
        if (m->tpl != NULL) {
            pg_err_t terr;
            char *s = NULL;

            terr.msg[0] = '\0';
            st = pg_template_render(m->tpl, attrs, &s, &terr);
            if (st == PG_ERR_NOT_FOUND && !is_username_path(t, m->scim_path)) {
                continue; /* optional attribute without a source value */
            }
            if (st != PG_OK) {
                pg_err_set(err, "mapping_failed: %s: %s", m->scim_path,
                           terr.msg[0] != '\0' ? terr.msg
                                               : pg_status_str(st));
                free(s);
                if (st == PG_ERR_NOT_FOUND) {
                    st = PG_ERR_INVALID;
                }
                goto fail;
            }
            leaf = m->scim_path;
            if (strcasecmp(leaf, "emails") == 0 ||
                strcasecmp(leaf, "phoneNumbers") == 0) {
                value = multi_valued(s);
            } else {
                value = json_string(s);
            }
            if (value == NULL && s != NULL) {
                /* json_string rejects invalid UTF-8. */
                pg_err_set(err, "mapping_failed: %s: value is not UTF-8",
                           m->scim_path);
                free(s);
                st = PG_ERR_INVALID;
                goto fail;
            }
            free(s);
        } else if (m->literal != NULL) {
            value = json_deep_copy(m->literal);
        } else {
            pg_err_set(err, "mapping_failed: %s: no value", m->scim_path);
            st = PG_ERR_INVALID;
            goto fail;
        }
        st = set_path(user, m->scim_path, value, err);
        if (st != PG_OK) {
            goto fail;
        }
    }
    ua = (t->username_attr != NULL && t->username_attr[0] != '\0')
             ? t->username_attr : "userName";
    value = scim_get_path(user, ua);
    if (!json_is_string(value) || json_string_length(value) == 0) {
        pg_err_set(err, "mapping_failed: %s: no value mapped", ua);
        st = PG_ERR_INVALID;
        goto fail;
    }
    *out = user;
    return PG_OK;

fail:
    json_decref(user);
    return st;
}

/* ======================================================================
 * pg_scim_ensure(): the asynchronous state machine.
 * ====================================================================== */

#define SCIM_MEDIA "application/scim+json"
#define SCIM_PATCH_SCHEMA "urn:ietf:params:scim:api:messages:2.0:PatchOp"
#define SCIM_GROUP_SCHEMA "urn:ietf:params:scim:schemas:core:2.0:Group"
#define SCIM_MAX_GROUPS 256
#define SCIM_MAX_ID 1024

typedef enum scim_state {
    S_GET_KNOWN = 0,   /* GET /Users/<known id> */
    S_LOOKUP,          /* GET /Users?filter=... */
    S_CREATE,          /* POST /Users */
    S_PATCH_USER,      /* PATCH /Users/<id> */
    S_GROUP_LOOKUP,    /* GET /Groups?filter=displayName eq "<g>" */
    S_GROUP_CREATE,    /* POST /Groups (with the account as member) */
    S_GROUP_MEMBERS,   /* GET /Groups/<gid>?attributes=members */
    S_GROUP_PATCH      /* PATCH /Groups/<gid> add member */
} scim_state_t;

/*
 * One ensure operation. Owns every pointer except http and target (both
 * borrowed: they must outlive the op). Freed by scim_op_free() after the
 * final callback or on cancellation.
 */
struct pg_scim_op {
    pg_http_t *http;
    const pg_target_cfg_t *target;
    json_t *desired;           /* deep copy of req->desired */
    char *known_id;
    char **groups;             /* copy, ngroups entries */
    size_t ngroups;
    pg_scim_call_cb on_call;
    pg_scim_cb cb;
    void *arg;                 /* passed to cb and on_call */

    char *username;            /* value looked up with the filter */
    char *auth_header;         /* "Authorization: Bearer ..." or NULL */
    char *base;                /* base_url without trailing '/' */

    pg_http_op_t *hop;         /* in-flight HTTP call or NULL */
    scim_state_t state;
    const char *method;        /* of the call in flight (static string) */
    char *path;                /* of the call in flight, relative to base */
    uint64_t t0;               /* start of the call in flight (ms) */
    int user_retried;          /* 409 on POST /Users handled once */

    size_t gi;                 /* current group index */
    char *gid;                 /* id of groups[gi] */
    int group_retried;         /* 409 on POST /Groups handled once */

    int in_cb;                 /* inside on_call / cb: defer frees */
    int cancelled;             /* pg_scim_cancel() seen while in_cb */
    pg_scim_result_t res;
};

static void scim_http_done(void *arg, pg_status_t st,
                           const pg_http_response_t *resp);

/* Monotonic milliseconds (elapsed time reported to on_call). */
static uint64_t
scim_now_ms(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        return 0;
    }
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Release everything the op owns. The bearer header is wiped first. */
static void
scim_op_free(pg_scim_op_t *op)
{
    size_t i;

    if (op == NULL) {
        return;
    }
    json_decref(op->desired);
    free(op->known_id);
    for (i = 0; i < op->ngroups; i++) {
        free(op->groups[i]);
    }
    free(op->groups);
    free(op->username);
    if (op->auth_header != NULL) {
        memset(op->auth_header, 0, strlen(op->auth_header));
        free(op->auth_header);
    }
    free(op->base);
    free(op->path);
    free(op->gid);
    free(op->res.account_id);
    free(op);
}

/* Replace control bytes in a NUL-terminated detail buffer by '?'. */
static void
detail_clean(char *out, size_t outsz)
{
    size_t i;

    for (i = 0; i < outsz && out[i] != '\0'; i++) {
        if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f) {
            out[i] = '?';
        }
    }
}

/* Replace every occurrence of the bearer token in the detail by "***"
 * (a peer might echo the Authorization header back in an error). */
static void
detail_redact(pg_scim_op_t *op)
{
    const char *tok = op->target->bearer_token;
    char *d = op->res.detail, *hit;
    size_t tlen, dlen;

    if (tok == NULL || (tlen = strlen(tok)) < 4) {
        return;
    }
    while ((hit = strstr(d, tok)) != NULL) {
        dlen = strlen(hit);
        memcpy(hit, "***", 3);
        memmove(hit + 3, hit + tlen, dlen - tlen + 1);
    }
}

/*
 * Deliver the result and free the op. Called only from an HTTP callback
 * (never from pg_scim_ensure itself). res.account_id is valid only while
 * cb runs; the op frees it afterwards.
 */
static void
scim_finish(pg_scim_op_t *op, pg_status_t st, const char *reason)
{
    op->res.st = st;
    op->res.reason = reason;
    detail_clean(op->res.detail, sizeof(op->res.detail));
    detail_redact(op);
    op->in_cb++;
    op->cb(op->arg, &op->res);
    op->in_cb--;
    scim_op_free(op);
}

/* Finish with a printf-style detail. */
static void scim_fail(pg_scim_op_t *op, pg_status_t st, const char *reason,
                      const char *fmt, ...) PG_PRINTF(4, 5);

static void
scim_fail(pg_scim_op_t *op, pg_status_t st, const char *reason,
          const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(op->res.detail, sizeof(op->res.detail), fmt, ap);
    va_end(ap);
    scim_finish(op, st, reason);
}

/* Length of the current path without its query string. */
static int
path_noquery_len(const char *path)
{
    const char *q = strchr(path, '?');

    return (int)(q != NULL ? (size_t)(q - path) : strlen(path));
}

/*
 * Start one HTTP call: method on base + path, with the JSON body (borrowed,
 * may be NULL). path is taken over by the op (freed on failure too).
 * Returns PG_OK or the pg_http_start failure.
 */
static pg_status_t
scim_call(pg_scim_op_t *op, scim_state_t state, const char *method,
          char *path, const json_t *body)
{
    const pg_target_cfg_t *t = op->target;
    const char *headers[3];
    pg_http_request_t req;
    size_t nh = 0, blen = 0, plen, ulen;
    char *url = NULL, *b = NULL;
    pg_status_t st;

    if (path == NULL) {
        return PG_ERR_NOMEM;
    }
    free(op->path);
    op->path = path;
    op->method = method;
    op->state = state;

    ulen = strlen(op->base);
    plen = strlen(path);
    url = malloc(ulen + plen + 1);
    if (url == NULL) {
        return PG_ERR_NOMEM;
    }
    memcpy(url, op->base, ulen);
    memcpy(url + ulen, path, plen + 1);

    if (body != NULL) {
        b = json_dumps(body, JSON_COMPACT);
        if (b == NULL) {
            free(url);
            return PG_ERR_NOMEM;
        }
        blen = strlen(b);
    }
    headers[nh++] = "Accept: " SCIM_MEDIA;
    if (body != NULL) {
        headers[nh++] = "Content-Type: " SCIM_MEDIA;
    }
    if (op->auth_header != NULL) {
        headers[nh++] = op->auth_header;
    }
    memset(&req, 0, sizeof(req));
    req.method = method;
    req.url = url;
    req.headers = headers;
    req.nheaders = nh;
    req.body = b;
    req.body_len = blen;
    if (t->auth == PG_AUTH_BASIC) {
        req.basic_user = t->basic_user;
        req.basic_pass = t->basic_pass;
    }
    req.timeout_ms = t->timeout_ms;
    req.connect_timeout_ms = t->connect_timeout_ms;
    req.max_response = PG_SCIM_MAX_RESPONSE;
    req.tls = t->tls;

    op->t0 = scim_now_ms();
    st = pg_http_start(op->http, &req, scim_http_done, op, &op->hop);
    if (st != PG_OK) {
        op->hop = NULL;
    }
    free(url);
    free(b);
    return st;
}

/* Start the next call from inside a callback; on failure finish the op.
 * Returns 1 when the call is in flight, 0 when the op is gone. */
static int
scim_next(pg_scim_op_t *op, scim_state_t state, const char *method,
          char *path, const json_t *body)
{
    pg_status_t st = scim_call(op, state, method, path, body);

    if (st == PG_OK) {
        return 1;
    }
    scim_fail(op, st, "target_unavailable", "%s %.*s: cannot start: %s",
              method, op->path != NULL ? path_noquery_len(op->path) : 0,
              op->path != NULL ? op->path : "", pg_status_str(st));
    return 0;
}

/* "<prefix><urlencoded s><suffix>", malloc'd, NULL on OOM. */
static char *
path_with(const char *prefix, const char *s, const char *suffix)
{
    char *enc = pg_urlencode(s, strlen(s)), *out;
    size_t a, b, c;

    if (enc == NULL) {
        return NULL;
    }
    a = strlen(prefix);
    b = strlen(enc);
    c = strlen(suffix);
    out = malloc(a + b + c + 1);
    if (out != NULL) {
        memcpy(out, prefix, a);
        memcpy(out + a, enc, b);
        memcpy(out + a + b, suffix, c + 1);
    }
    free(enc);
    return out;
}

/* "<prefix>?filter=<attr eq "escaped value">" (URL-encoded), malloc'd. */
static char *
filter_path(const char *prefix, const char *attr, const char *value)
{
    char *esc = pg_scim_filter_escape(value), *filter, *out;
    size_t alen, elen, n;

    if (esc == NULL) {
        return NULL;
    }
    alen = strlen(attr);
    elen = strlen(esc);
    n = alen + sizeof(" eq \"") - 1 + elen + 2;
    filter = malloc(n);
    if (filter == NULL) {
        free(esc);
        return NULL;
    }
    snprintf(filter, n, "%s eq \"%s\"", attr, esc);
    free(esc);
    out = path_with(prefix, filter, "");
    free(filter);
    return out;
}

/*
 * Map an unexpected HTTP status to a result: 401/403 target_auth,
 * 429/5xx target_unavailable, other 4xx target_rejected with the SCIM
 * error's scimType/detail, anything else bad_response. Finishes the op.
 */
static void
scim_status_error(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    long s = resp->status;
    int plen = path_noquery_len(op->path);
    const char *stype = NULL, *sdetail = NULL;
    json_t *err = NULL;

    if (s == 401 || s == 403) {
        scim_fail(op, PG_ERR_DENIED, "target_auth",
                  "%s %.*s: HTTP %ld: credentials refused", op->method, plen,
                  op->path, s);
        return;
    }
    if (s == 429 || (s >= 500 && s <= 599)) {
        scim_fail(op, PG_ERR_HTTP, "target_unavailable",
                  "%s %.*s: HTTP %ld", op->method, plen, op->path, s);
        return;
    }
    if (s >= 400 && s <= 499) {
        if (resp->body != NULL && resp->body_len > 0 &&
            resp->body_len <= PG_SCIM_MAX_RESPONSE) {
            err = json_loadb(resp->body, resp->body_len, 0, NULL);
            if (json_is_object(err)) {
                stype = json_string_value(json_object_get(err, "scimType"));
                sdetail = json_string_value(json_object_get(err, "detail"));
            }
        }
        snprintf(op->res.detail, sizeof(op->res.detail),
                 "%s %.*s: HTTP %ld%s%s%s%.160s", op->method, plen, op->path,
                 s, stype != NULL ? " " : "", stype != NULL ? stype : "",
                 sdetail != NULL ? ": " : "", sdetail != NULL ? sdetail : "");
        json_decref(err);
        scim_finish(op, PG_ERR_HTTP, "target_rejected");
        return;
    }
    scim_fail(op, PG_ERR_INVALID, "bad_response",
              "%s %.*s: unexpected HTTP %ld", op->method, plen, op->path, s);
}

/*
 * Parse a response body as a JSON object (body already capped by pg_http
 * at PG_SCIM_MAX_RESPONSE; checked again here). Returns a new reference,
 * or NULL after finishing the op with "bad_response".
 */
static json_t *
scim_body(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_error_t jerr;
    json_t *j;

    if (resp->body == NULL || resp->body_len == 0) {
        scim_fail(op, PG_ERR_INVALID, "bad_response", "%s %.*s: empty body",
                  op->method, path_noquery_len(op->path), op->path);
        return NULL;
    }
    if (resp->body_len > PG_SCIM_MAX_RESPONSE) {
        scim_fail(op, PG_ERR_TOO_LARGE, "bad_response",
                  "%s %.*s: body over %u bytes", op->method,
                  path_noquery_len(op->path), op->path, PG_SCIM_MAX_RESPONSE);
        return NULL;
    }
    j = json_loadb(resp->body, resp->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(j)) {
        json_decref(j);
        scim_fail(op, PG_ERR_INVALID, "bad_response",
                  "%s %.*s: body is not a JSON object", op->method,
                  path_noquery_len(op->path), op->path);
        return NULL;
    }
    return j;
}

/* The "id" of a resource when it is a usable string, else NULL. */
static const char *
resource_id(const json_t *r)
{
    const json_t *id = json_object_get(r, "id");

    if (!json_is_string(id) || json_string_length(id) == 0 ||
        json_string_length(id) > SCIM_MAX_ID ||
        strlen(json_string_value(id)) != json_string_length(id)) {
        return NULL;
    }
    return json_string_value(id);
}

/*
 * Interpret a ListResponse: *count is the number of matches (from
 * totalResults or the Resources array, whichever is larger) and *first the
 * first resource (borrowed from list) when count >= 1. Returns 0 when the
 * shape is wrong.
 */
static int
list_response(const json_t *list, size_t *count, json_t **first)
{
    json_t *res = json_object_get(list, "Resources");
    json_t *tot = json_object_get(list, "totalResults");
    size_t n = 0;

    *first = NULL;
    if (res != NULL && !json_is_array(res)) {
        return 0;
    }
    if (tot != NULL && (!json_is_integer(tot) || json_integer_value(tot) < 0)) {
        return 0;
    }
    if (res == NULL && tot == NULL) {
        return 0;
    }
    if (res != NULL) {
        n = json_array_size(res);
    }
    if (tot != NULL && (json_int_t)n < json_integer_value(tot)) {
        n = (size_t)json_integer_value(tot);
    }
    if (n >= 1) {
        *first = json_array_get(res, 0);
        if (!json_is_object(*first)) {
            return 0;
        }
    }
    *count = n;
    return 1;
}

/* ---- comparing desired and existing values ---------------------------- */

static int values_match(const char *attr, const json_t *d, const json_t *e);

/* Two values of a sub-attribute of a multi-valued entry; NULL = absent. */
static int
member_eq(const json_t *a, const json_t *b, int ci)
{
    if (a == NULL || b == NULL) {
        return a == b;
    }
    if (ci && json_is_string(a) && json_is_string(b)) {
        return strcasecmp(json_string_value(a), json_string_value(b)) == 0;
    }
    return json_equal(a, b);
}

/*
 * Multi-valued attributes such as "emails": equal when both have the same
 * number of entries and each desired entry has a distinct existing entry
 * with the same value (case-insensitive for emails), type and primary flag
 * (absent primary counts as false). Other sub-attributes ("display",
 * "$ref", ...) are ignored since servers add them. ci: case-insensitive
 * value comparison.
 */
static int
multi_match(const json_t *d, const json_t *e, int ci)
{
    size_t n = json_array_size(d), i, j;
    unsigned char used[64];

    if (!json_is_array(e) || json_array_size(e) != n || n > sizeof(used)) {
        return 0;
    }
    memset(used, 0, sizeof(used));
    for (i = 0; i < n; i++) {
        const json_t *de = json_array_get(d, i);
        int found = 0;

        if (!json_is_object(de)) {
            return json_equal(d, e);
        }
        for (j = 0; j < n && !found; j++) {
            const json_t *ee = json_array_get(e, j);

            if (used[j] || !json_is_object(ee)) {
                continue;
            }
            if (member_eq(json_object_get(de, "value"),
                          json_object_get(ee, "value"), ci) &&
                member_eq(json_object_get(de, "type"),
                          json_object_get(ee, "type"), 0) &&
                json_is_true(json_object_get(de, "primary")) ==
                    json_is_true(json_object_get(ee, "primary"))) {
                used[j] = 1;
                found = 1;
            }
        }
        if (!found) {
            return 0;
        }
    }
    return 1;
}

/*
 * Does the existing value e already satisfy the desired value d?
 *  - "emails"/"phoneNumbers" arrays: multi_match();
 *  - objects (complex attributes): every desired sub-attribute matches the
 *    existing one (found case-insensitively); extra existing
 *    sub-attributes are ignored, as a PATCH "replace" of a complex
 *    attribute leaves unspecified sub-attributes unchanged (RFC 7644
 *    3.5.2.3), so they could never converge anyway;
 *  - everything else: json_equal().
 */
static int
values_match(const char *attr, const json_t *d, const json_t *e)
{
    const char *k;
    json_t *v;

    if (e == NULL) {
        return json_is_null(d);
    }
    if (attr != NULL && json_is_array(d) &&
        (strcasecmp(attr, "emails") == 0 ||
         strcasecmp(attr, "phoneNumbers") == 0)) {
        return multi_match(d, e, strcasecmp(attr, "emails") == 0);
    }
    if (json_is_object(d) && json_is_object(e)) {
        json_object_foreach((json_t *)d, k, v) {
            if (!values_match(NULL, v, scim_get_ci(e, k))) {
                return 0;
            }
        }
        return 1;
    }
    return json_equal(d, e);
}

/*
 * PatchOp replacing every top-level desired attribute (except schemas,
 * id, meta) that existing does not already satisfy. Returns a new object,
 * or NULL with *nomem == 0 when nothing differs.
 */
static json_t *
user_patch(const json_t *desired, const json_t *existing, int *nomem)
{
    json_t *ops = NULL, *patch, *v;
    const char *k;

    *nomem = 0;
    json_object_foreach((json_t *)desired, k, v) {
        if (strcasecmp(k, "schemas") == 0 || strcasecmp(k, "id") == 0 ||
            strcasecmp(k, "meta") == 0) {
            continue;
        }
        if (values_match(k, v, scim_get_ci(existing, k))) {
            continue;
        }
        if (ops == NULL && (ops = json_array()) == NULL) {
            *nomem = 1;
            return NULL;
        }
        if (json_array_append_new(ops, json_pack("{s:s, s:s, s:O}", "op",
                                                 "replace", "path", k,
                                                 "value", v)) != 0) {
            json_decref(ops);
            *nomem = 1;
            return NULL;
        }
    }
    if (ops == NULL) {
        return NULL;
    }
    patch = json_pack("{s:[s], s:o}", "schemas", SCIM_PATCH_SCHEMA,
                      "Operations", ops);
    if (patch == NULL) {
        *nomem = 1;
    }
    return patch;
}

/* 1 when group resource g lists account id among members[].value. */
static int
group_has_member(const json_t *g, const char *id)
{
    const json_t *members = scim_get_ci(g, "members"), *m;
    size_t i;

    json_array_foreach(members, i, m) {
        const json_t *v = json_object_get(m, "value");

        if (json_is_string(v) && strcmp(json_string_value(v), id) == 0) {
            return 1;
        }
    }
    return 0;
}

/* ---- steps --------------------------------------------------------- */

static void step_groups(pg_scim_op_t *op);

/* Start the filter lookup of the account. */
static void
step_lookup(pg_scim_op_t *op)
{
    const char *ua = (op->target->username_attr != NULL &&
                      op->target->username_attr[0] != '\0')
                         ? op->target->username_attr : "userName";

    (void)scim_next(op, S_LOOKUP, "GET",
                    filter_path("/Users?filter=", ua, op->username), NULL);
}

/* Account known (adopted or found by id): PATCH what differs, or go on
 * with the groups. existing is borrowed. */
static void
step_update(pg_scim_op_t *op, const json_t *existing)
{
    json_t *patch;
    int nomem;

    patch = user_patch(op->desired, existing, &nomem);
    if (patch == NULL) {
        if (nomem) {
            scim_fail(op, PG_ERR_NOMEM, "target_unavailable", "out of memory");
            return;
        }
        step_groups(op);
        return;
    }
    (void)scim_next(op, S_PATCH_USER, "PATCH",
                    path_with("/Users/", op->res.account_id, ""), patch);
    json_decref(patch);
}

/* Take the account id of resource r (borrowed). 0 after finishing the op
 * with bad_response when r has no usable id. */
static int
take_account(pg_scim_op_t *op, const json_t *r)
{
    const char *id = resource_id(r);

    if (id == NULL) {
        scim_fail(op, PG_ERR_INVALID, "bad_response",
                  "%s %.*s: resource without a usable id", op->method,
                  path_noquery_len(op->path), op->path);
        return 0;
    }
    free(op->res.account_id);
    op->res.account_id = strdup(id);
    if (op->res.account_id == NULL) {
        scim_fail(op, PG_ERR_NOMEM, "target_unavailable", "out of memory");
        return 0;
    }
    return 1;
}

/* Start with the group at op->gi, or finish successfully after the last. */
static void
step_groups(pg_scim_op_t *op)
{
    if (op->gi >= op->ngroups) {
        op->res.detail[0] = '\0';
        scim_finish(op, PG_OK, "ok");
        return;
    }
    op->group_retried = 0;
    (void)scim_next(op, S_GROUP_LOOKUP, "GET",
                    filter_path("/Groups?filter=", "displayName",
                                op->groups[op->gi]), NULL);
}

/* Add the account to group op->gid with a PATCH "add" on members. */
static void
step_group_patch(pg_scim_op_t *op)
{
    json_t *patch = json_pack("{s:[s], s:[{s:s, s:s, s:[{s:s}]}]}",
                              "schemas", SCIM_PATCH_SCHEMA, "Operations",
                              "op", "add", "path", "members", "value",
                              "value", op->res.account_id);

    if (patch == NULL) {
        scim_fail(op, PG_ERR_NOMEM, "target_unavailable", "out of memory");
        return;
    }
    (void)scim_next(op, S_GROUP_PATCH, "PATCH",
                    path_with("/Groups/", op->gid, ""), patch);
    json_decref(patch);
}

/* Group op->gi done: next one. */
static void
next_group(pg_scim_op_t *op)
{
    free(op->gid);
    op->gid = NULL;
    op->gi++;
    step_groups(op);
}

/* Response handlers, one per state; each consumes or finishes the op. */

static void
on_get_known(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *r;

    if (resp->status == 404) {
        step_lookup(op);
        return;
    }
    if (resp->status != 200) {
        scim_status_error(op, resp);
        return;
    }
    if ((r = scim_body(op, resp)) == NULL) {
        return;
    }
    if (take_account(op, r)) {
        step_update(op, r);
    }
    json_decref(r);
}

static void
on_lookup(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *list, *first;
    size_t count = 0;

    if (resp->status != 200) {
        scim_status_error(op, resp);
        return;
    }
    if ((list = scim_body(op, resp)) == NULL) {
        return;
    }
    if (!list_response(list, &count, &first)) {
        scim_fail(op, PG_ERR_INVALID, "bad_response",
                  "GET /Users: not a ListResponse");
    } else if (count > 1) {
        scim_fail(op, PG_ERR_INVALID, "bad_response",
                  "GET /Users: %zu accounts match (ambiguous)", count);
    } else if (count == 1) {
        if (first == NULL) {
            scim_fail(op, PG_ERR_INVALID, "bad_response",
                      "GET /Users: match without Resources");
        } else if (take_account(op, first)) {
            op->res.adopted = 1;
            step_update(op, first);
        }
    } else if (op->user_retried) {
        /* POST said 409 but the account cannot be found. */
        scim_fail(op, PG_ERR_CONFLICT, "target_rejected",
                  "POST /Users: HTTP 409 but no account matches");
    } else {
        (void)scim_next(op, S_CREATE, "POST", strdup("/Users"), op->desired);
    }
    json_decref(list);
}

static void
on_create(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *r;

    if (resp->status == 409 && !op->user_retried) {
        op->user_retried = 1;
        step_lookup(op);
        return;
    }
    if (resp->status != 201 && resp->status != 200) {
        scim_status_error(op, resp);
        return;
    }
    if ((r = scim_body(op, resp)) == NULL) {
        return;
    }
    if (take_account(op, r)) {
        op->res.created = 1;
        step_groups(op);
    }
    json_decref(r);
}

static void
on_patch_user(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    if (resp->status != 200 && resp->status != 204) {
        scim_status_error(op, resp);
        return;
    }
    op->res.updated = 1;
    step_groups(op);
}

static void
on_group_lookup(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *list, *first, *body;
    const char *g = op->groups[op->gi], *id;
    size_t count = 0;

    if (resp->status != 200) {
        scim_status_error(op, resp);
        return;
    }
    if ((list = scim_body(op, resp)) == NULL) {
        return;
    }
    if (!list_response(list, &count, &first)) {
        scim_fail(op, PG_ERR_INVALID, "bad_response",
                  "GET /Groups: not a ListResponse");
    } else if (count > 1) {
        scim_fail(op, PG_ERR_INVALID, "bad_response",
                  "GET /Groups: %zu groups named \"%.64s\" (ambiguous)",
                  count, g);
    } else if (count == 1) {
        if (first == NULL || (id = resource_id(first)) == NULL) {
            scim_fail(op, PG_ERR_INVALID, "bad_response",
                      "GET /Groups: group \"%.64s\" without a usable id", g);
        } else if ((op->gid = strdup(id)) == NULL) {
            scim_fail(op, PG_ERR_NOMEM, "target_unavailable",
                      "out of memory");
        } else if (group_has_member(first, op->res.account_id)) {
            next_group(op);
        } else if (scim_get_ci(first, "members") == NULL) {
            /* Empty, or members not returned by default: ask for them. */
            (void)scim_next(op, S_GROUP_MEMBERS, "GET",
                            path_with("/Groups/", op->gid,
                                      "?attributes=members"), NULL);
        } else {
            step_group_patch(op);
        }
    } else if (op->group_retried) {
        scim_fail(op, PG_ERR_CONFLICT, "target_rejected",
                  "POST /Groups: HTTP 409 but group \"%.64s\" not found", g);
    } else if (!op->target->create_missing_groups) {
        scim_fail(op, PG_ERR_NOT_FOUND, "group_unknown",
                  "group \"%.64s\" does not exist in target", g);
    } else {
        body = json_pack("{s:[s], s:s, s:[{s:s}]}", "schemas",
                         SCIM_GROUP_SCHEMA, "displayName", g, "members",
                         "value", op->res.account_id);
        if (body == NULL) {
            scim_fail(op, PG_ERR_NOMEM, "target_unavailable",
                      "out of memory");
        } else {
            (void)scim_next(op, S_GROUP_CREATE, "POST", strdup("/Groups"),
                            body);
            json_decref(body);
        }
    }
    json_decref(list);
}

static void
on_group_create(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *r;

    if (resp->status == 409 && !op->group_retried) {
        op->group_retried = 1;
        (void)scim_next(op, S_GROUP_LOOKUP, "GET",
                        filter_path("/Groups?filter=", "displayName",
                                    op->groups[op->gi]), NULL);
        return;
    }
    if (resp->status != 201 && resp->status != 200) {
        scim_status_error(op, resp);
        return;
    }
    if ((r = scim_body(op, resp)) == NULL) {
        return;
    }
    if (resource_id(r) == NULL) {
        scim_fail(op, PG_ERR_INVALID, "bad_response",
                  "POST /Groups: group without a usable id");
    } else if (!group_has_member(r, op->res.account_id)) {
        /* Created, but the server dropped the member: add it. */
        op->gid = strdup(resource_id(r));
        if (op->gid == NULL) {
            scim_fail(op, PG_ERR_NOMEM, "target_unavailable",
                      "out of memory");
        } else {
            step_group_patch(op);
        }
    } else {
        op->res.groups_added++;
        next_group(op);
    }
    json_decref(r);
}

static void
on_group_members(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *r;

    if (resp->status != 200) {
        scim_status_error(op, resp);
        return;
    }
    if ((r = scim_body(op, resp)) == NULL) {
        return;
    }
    if (group_has_member(r, op->res.account_id)) {
        next_group(op);
    } else {
        step_group_patch(op);
    }
    json_decref(r);
}

static void
on_group_patch(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    if (resp->status != 200 && resp->status != 204) {
        scim_status_error(op, resp);
        return;
    }
    op->res.groups_added++;
    next_group(op);
}

/*
 * pg_http callback for every call: report it through on_call, honour a
 * cancellation made from on_call, map transport failures, then dispatch
 * on the state.
 */
static void
scim_http_done(void *arg, pg_status_t st, const pg_http_response_t *resp)
{
    pg_scim_op_t *op = arg;
    uint64_t now = scim_now_ms();
    unsigned ms = now >= op->t0 ? (unsigned)(now - op->t0) : 0;
    long status = (st == PG_OK && resp != NULL) ? resp->status : 0;
    int plen;

    op->hop = NULL;
    if (status != 0) {
        op->res.http_status = status;
    }
    if (op->on_call != NULL) {
        op->in_cb++;
        op->on_call(op->arg, op->method, op->path, status, st, ms);
        op->in_cb--;
        if (op->cancelled) {
            scim_op_free(op);
            return;
        }
    }
    plen = path_noquery_len(op->path);
    if (st == PG_OK && resp == NULL) {
        st = PG_ERR_INTERNAL;
    }
    switch (st) {
    case PG_OK:
        break;
    case PG_ERR_TIMEOUT:
        scim_fail(op, st, "target_timeout", "%s %.*s: timed out", op->method,
                  plen, op->path);
        return;
    case PG_ERR_TOO_LARGE:
        scim_fail(op, st, "bad_response", "%s %.*s: response over %u bytes",
                  op->method, plen, op->path, PG_SCIM_MAX_RESPONSE);
        return;
    default:
        scim_fail(op, st, "target_unavailable", "%s %.*s: %s", op->method,
                  plen, op->path, pg_status_str(st));
        return;
    }
    switch (op->state) {
    case S_GET_KNOWN: on_get_known(op, resp); break;
    case S_LOOKUP: on_lookup(op, resp); break;
    case S_CREATE: on_create(op, resp); break;
    case S_PATCH_USER: on_patch_user(op, resp); break;
    case S_GROUP_LOOKUP: on_group_lookup(op, resp); break;
    case S_GROUP_CREATE: on_group_create(op, resp); break;
    case S_GROUP_MEMBERS: on_group_members(op, resp); break;
    case S_GROUP_PATCH: on_group_patch(op, resp); break;
    }
}

/* 1 when s has a byte that may not appear in a header value. */
static int
has_ctl(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f) {
            return 1;
        }
    }
    return 0;
}

/*
 * Start ensuring the account (see scim.h). req is copied (desired is deep
 * copied, strings and the group list duplicated); req->target and http are
 * borrowed and must outlive the op. cb and on_call both get arg. The first
 * HTTP call is started here; cb is never called from inside this function.
 * Synchronous failures: PG_ERR_INVALID (no target/base URL/desired
 * username, a token with control bytes, too many groups), PG_ERR_NOMEM, or
 * the pg_http_start failure; then no op exists and cb is never called.
 */
pg_status_t
pg_scim_ensure(pg_http_t *http, const pg_scim_request_t *req, pg_scim_cb cb,
               void *arg, pg_scim_op_t **op_out)
{
    const pg_target_cfg_t *t;
    pg_scim_op_t *op;
    const json_t *uv;
    const char *ua;
    pg_status_t st;
    size_t n, i;

    if (op_out != NULL) {
        *op_out = NULL;
    }
    if (http == NULL || req == NULL || cb == NULL || req->target == NULL ||
        req->target->base_url == NULL || !json_is_object(req->desired)) {
        return PG_ERR_INVALID;
    }
    t = req->target;
    ua = (t->username_attr != NULL && t->username_attr[0] != '\0')
             ? t->username_attr : "userName";
    uv = scim_get_path(req->desired, ua);
    if (!json_is_string(uv) || json_string_length(uv) == 0 ||
        strlen(json_string_value(uv)) != json_string_length(uv)) {
        return PG_ERR_INVALID;
    }
    n = 0;
    if (req->groups != NULL) {
        while (req->groups[n] != NULL) {
            if (++n > SCIM_MAX_GROUPS) {
                return PG_ERR_INVALID;
            }
        }
    }
    if (t->auth == PG_AUTH_BEARER &&
        (t->bearer_token == NULL || has_ctl(t->bearer_token))) {
        return PG_ERR_INVALID;
    }

    op = calloc(1, sizeof(*op));
    if (op == NULL) {
        return PG_ERR_NOMEM;
    }
    op->http = http;
    op->target = t;
    op->cb = cb;
    op->arg = arg;
    op->on_call = req->on_call;
    op->res.reason = "ok";
    op->desired = json_deep_copy(req->desired);
    op->username = strdup(json_string_value(uv));
    op->base = strdup(t->base_url);
    if (op->desired == NULL || op->username == NULL || op->base == NULL) {
        goto nomem;
    }
    n = strlen(op->base);
    while (n > 0 && op->base[n - 1] == '/') {
        op->base[--n] = '\0';
    }
    if (req->known_id != NULL && req->known_id[0] != '\0') {
        op->known_id = strdup(req->known_id);
        if (op->known_id == NULL) {
            goto nomem;
        }
    }
    if (req->groups != NULL) {
        for (n = 0; req->groups[n] != NULL; n++) {
        }
        if (n > 0) {
            op->groups = calloc(n, sizeof(*op->groups));
            if (op->groups == NULL) {
                goto nomem;
            }
            for (i = 0; i < n; i++) {
                op->groups[i] = strdup(req->groups[i]);
                if (op->groups[i] == NULL) {
                    op->ngroups = i;
                    goto nomem;
                }
            }
            op->ngroups = n;
        }
    }
    if (t->auth == PG_AUTH_BEARER) {
        size_t tl = strlen(t->bearer_token);
        const char pre[] = "Authorization: Bearer ";

        op->auth_header = malloc(sizeof(pre) + tl);
        if (op->auth_header == NULL) {
            goto nomem;
        }
        memcpy(op->auth_header, pre, sizeof(pre) - 1);
        memcpy(op->auth_header + sizeof(pre) - 1, t->bearer_token, tl + 1);
    }

    if (op->known_id != NULL) {
        st = scim_call(op, S_GET_KNOWN, "GET",
                       path_with("/Users/", op->known_id, ""), NULL);
    } else {
        st = scim_call(op, S_LOOKUP, "GET",
                       filter_path("/Users?filter=", ua, op->username), NULL);
    }
    if (st != PG_OK) {
        scim_op_free(op);
        return st;
    }
    if (op_out != NULL) {
        *op_out = op;
    }
    return PG_OK;

nomem:
    scim_op_free(op);
    return PG_ERR_NOMEM;
}

/*
 * Cancel an op: the in-flight HTTP call is cancelled and everything is
 * freed; cb is never called. Safe in any state, including from inside
 * on_call (the op is then freed when on_call returns). NULL is a no-op.
 * Cancelling after cb ran is a bug (the op is gone).
 */
void
pg_scim_cancel(pg_scim_op_t *op)
{
    if (op == NULL) {
        return;
    }
    if (op->in_cb) {
        op->cancelled = 1;
        return;
    }
    if (op->hop != NULL) {
        pg_http_cancel(op->hop);
        op->hop = NULL;
    }
    scim_op_free(op);
}
