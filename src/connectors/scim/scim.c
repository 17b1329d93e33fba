/*
 * provgate core: SCIM 2.0 client connector (see include/provgate/scim.h and
 * docs/connectors.md).
 *
 * Three parts:
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
 *    PG_SCIM_MAX_RESPONSE, ambiguous), group_unknown. A 412 on the user
 *    update re-reads the account and compares again, once. With
 *    pg_scim_options (all opt-in): discovery of /ServiceProviderConfig into
 *    a caller-owned cache, If-Match on writes when ETags are advertised,
 *    PUT of the whole account when PATCH is not, and delayed retries with
 *    backoff on host timers (pg_scim_classify()).
 *
 * 3. pg_scim_run(): single operations (GET, PUT, PATCH with a local PUT
 *    fallback, DELETE, deactivate, group member removal, paged LIST,
 *    discovery) on the same op, call, retry and callback machinery.
 *
 * Secrets: the bearer token only lives in the op's Authorization header
 * (wiped on free); it is never logged and is masked out of result details.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "provgate/scim.h"
#include "provgate/policy.h"
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
    return pg_scim_build_user_with(t, attrs, NULL, out, err);
}

/* The value of one attribute path: emails/phoneNumbers become the usual
 * one-element multi-valued form. A new reference, NULL if s is not UTF-8
 * (or on OOM). */
static json_t *
leaf_value(const char *path, const char *s)
{
    if (strcasecmp(path, "emails") == 0
        || strcasecmp(path, "phoneNumbers") == 0) {
        return multi_valued(s);
    }
    return json_string(s);
}

/* See scim.h. */
pg_status_t
pg_scim_build_user_with(const pg_target_cfg_t *t, const json_t *attrs,
                        const json_t *overrides, json_t **out, pg_err_t *err)
{
    json_t *user, *value, *ov;
    const char *ua, *path;
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
    if (overrides != NULL && !json_is_object(overrides)) {
        pg_err_set(err, "mapping_failed: account attributes must be an "
                   "object");
        st = PG_ERR_INVALID;
        goto fail;
    }
    for (i = 0; i < t->nattrs; i++) {
        const pg_attr_map_t *m = &t->attrs[i];
        const char *leaf;

        if (m->scim_path == NULL) {
            pg_err_set(err, "mapping_failed: mapping %zu has no path", i);
            st = PG_ERR_INVALID;
            goto fail;
        }
        if (overrides != NULL
            && json_object_get(overrides, m->scim_path) != NULL) {
            continue; /* the account rule gives this one (below) */
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
    json_object_foreach((json_t *) overrides, path, ov) {
        if (!json_is_string(ov)) {
            pg_err_set(err, "mapping_failed: %.64s: account attribute is "
                       "not a string", path);
            st = PG_ERR_INVALID;
            goto fail;
        }
        value = leaf_value(path, json_string_value(ov));
        if (value == NULL) {
            st = PG_ERR_NOMEM;
            goto fail;
        }
        st = set_path(user, path, value, err);
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
    S_GROUP_PATCH,     /* PATCH /Groups/<gid> add member */
    S_REREAD,          /* GET /Users/<id> after a 412 on the user PATCH */
    /* pg_scim_run() */
    S_DISCOVER,        /* GET /ServiceProviderConfig */
    S_DISCOVER_RT,     /* GET /ResourceTypes (after it, with caps) */
    S_DISCOVER_SCH,    /* GET /Schemas (then the op's own first call) */
    S_BULK,            /* POST /Bulk of the group membership PATCHes */
    S_X_READ,          /* GET /<coll>/<id> (GET, or before a write) */
    S_X_WRITE,         /* PUT / PATCH / DELETE /<coll>/<id> */
    S_X_LIST           /* GET /<coll>?startIndex=..&count=.. */
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
    unsigned coll_tries;       /* collision handling: candidates in all */
    unsigned coll_start, coll_max_len;
    unsigned coll_k;           /* the candidate in use (0 = base) */
    int create_disabled;       /* POST with "active": false; never set
                                  "active" on an existing account */
    char *coll_base;           /* candidate 0, the rule's username */

    size_t gi;                 /* current group index */
    char *gid;                 /* id of groups[gi] */
    json_t *group_res;         /* groups[gi] as read (for a PUT), or NULL */
    int group_retried;         /* 409 on POST /Groups handled once */
    int group_reread;          /* 412 on a group PUT handled once */
    json_t *bulk_ops;          /* opts.bulk: membership PATCHes not sent
                                  yet (BulkRequest operations), or NULL */
    size_t bulk_inflight;      /* operations in the POST /Bulk in flight */
    int bulk_off;              /* a Bulk failed: one PATCH per group */
    json_t *disc_doc;          /* the ServiceProviderConfig read (for a
                                  DISCOVER op's result), or NULL */

    /* Options (pg_scim_request.opts / pg_scim_op_request.opts). */
    pg_scim_options_t opts;    /* copy; opts.caps borrowed */
    int has_opts;
    json_t *body;              /* body of the call in flight (retries) */
    char *ifm_header;          /* "If-Match: <v>" of the call, or NULL */
    unsigned attempt;          /* attempts of the call in flight */
    pg_timer_t *timer;         /* retry timer (opts.host) or NULL */
    uint32_t rnd;              /* jitter state */
    char *version;             /* version of the account/resource read */
    int reread_done;           /* 412 handled once */

    /* pg_scim_run() */
    pg_scim_kind_t kind;       /* 0 for ensure */
    const char *coll;          /* "/Users" or "/Groups" (static) */
    char *id;
    char *member_id;
    json_t *payload;           /* REPLACE resource / MODIFY operations */
    char *if_match;            /* explicit version from the request */
    char *list_filter;         /* LIST: URL-encoded filter or NULL */
    unsigned page_size, max_results;
    size_t start_index;
    pg_scim_page_cb page_cb;   /* LIST: per-page delivery, or NULL */
    void *page_arg;
    size_t delivered;          /* LIST with page_cb: resources delivered */
    char *page_first;          /* LIST: id of the previous page's first
                                  resource (a server ignoring startIndex
                                  repeats it), or NULL */

    /* OAuth: waiting for the token fetch of opts.oauth. */
    pg_scim_op_t **whead;      /* list the op waits on, or NULL */
    pg_scim_op_t *wnext, *wprev;

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

/* Take op off the token-wait list it is on (no-op when not waiting). */
static void
wait_unlink(pg_scim_op_t *op)
{
    if (op->whead == NULL) {
        return;
    }
    if (op->wprev != NULL) {
        op->wprev->wnext = op->wnext;
    } else {
        *op->whead = op->wnext;
    }
    if (op->wnext != NULL) {
        op->wnext->wprev = op->wprev;
    }
    op->whead = NULL;
    op->wnext = op->wprev = NULL;
}

/* Release everything the op owns. The bearer header is wiped first. */
static void
scim_op_free(pg_scim_op_t *op)
{
    size_t i;

    if (op == NULL) {
        return;
    }
    wait_unlink(op);
    json_decref(op->desired);
    free(op->known_id);
    for (i = 0; i < op->ngroups; i++) {
        free(op->groups[i]);
    }
    free(op->groups);
    free(op->username);
    free(op->coll_base);
    if (op->auth_header != NULL) {
        memset(op->auth_header, 0, strlen(op->auth_header));
        free(op->auth_header);
    }
    free(op->base);
    free(op->path);
    free(op->gid);
    json_decref(op->group_res);
    json_decref(op->bulk_ops);
    json_decref(op->disc_doc);
    free(op->res.account_id);
    json_decref(op->body);
    free(op->ifm_header);
    if (op->timer != NULL) {
        op->opts.host->timer_close(op->timer);
    }
    free(op->version);
    free(op->id);
    free(op->member_id);
    json_decref(op->payload);
    free(op->if_match);
    free(op->list_filter);
    free(op->page_first);
    json_decref(op->res.resource);
    json_decref(op->res.resources);
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
    const char bpre[] = "Authorization: Bearer ";
    const char *tok = op->target->bearer_token;
    char *d = op->res.detail, *hit;
    size_t tlen, dlen;

    if (op->auth_header != NULL &&
        strncmp(op->auth_header, bpre, sizeof(bpre) - 1) == 0) {
        tok = op->auth_header + sizeof(bpre) - 1;
    }

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
 * Send (or re-send) the call described by op->method, op->path, op->body
 * and op->ifm_header. Returns PG_OK or the pg_http_start failure.
 */
static pg_status_t
scim_send(pg_scim_op_t *op)
{
    const pg_target_cfg_t *t = op->target;
    const char *headers[4];
    pg_http_request_t req;
    size_t nh = 0, blen = 0, plen, ulen;
    char *url = NULL, *b = NULL;
    pg_status_t st;

    ulen = strlen(op->base);
    plen = strlen(op->path);
    url = malloc(ulen + plen + 1);
    if (url == NULL) {
        return PG_ERR_NOMEM;
    }
    memcpy(url, op->base, ulen);
    memcpy(url + ulen, op->path, plen + 1);

    if (op->body != NULL) {
        b = json_dumps(op->body, JSON_COMPACT);
        if (b == NULL) {
            free(url);
            return PG_ERR_NOMEM;
        }
        blen = strlen(b);
    }
    headers[nh++] = "Accept: " SCIM_MEDIA;
    if (op->body != NULL) {
        headers[nh++] = "Content-Type: " SCIM_MEDIA;
    }
    if (op->auth_header != NULL) {
        headers[nh++] = op->auth_header;
    }
    if (op->ifm_header != NULL) {
        headers[nh++] = op->ifm_header;
    }
    memset(&req, 0, sizeof(req));
    req.method = op->method;
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

/* 1 when s has a byte that may not appear in a header value. */
static int has_ctl(const char *s);

/*
 * Start one HTTP call: method on base + path, with the JSON body (borrowed,
 * may be NULL; a reference is kept for retries) and, when version is a
 * usable header value, "If-Match: <version>". path is taken over by the op
 * (freed on failure too). Returns PG_OK or the pg_http_start failure.
 */
static pg_status_t
scim_call_v(pg_scim_op_t *op, scim_state_t state, const char *method,
            char *path, const json_t *body, const char *version)
{
    if (path == NULL) {
        return PG_ERR_NOMEM;
    }
    free(op->path);
    op->path = path;
    op->method = method;
    op->state = state;
    op->attempt = 1;
    json_decref(op->body);
    op->body = body != NULL ? json_incref((json_t *)body) : NULL;
    free(op->ifm_header);
    op->ifm_header = NULL;
    if (version != NULL && version[0] != '\0' && !has_ctl(version) &&
        strlen(version) <= SCIM_MAX_ID) {
        size_t vl = strlen(version);
        const char pre[] = "If-Match: ";

        op->ifm_header = malloc(sizeof(pre) + vl);
        if (op->ifm_header == NULL) {
            return PG_ERR_NOMEM;
        }
        memcpy(op->ifm_header, pre, sizeof(pre) - 1);
        memcpy(op->ifm_header + sizeof(pre) - 1, version, vl + 1);
    }
    return scim_send(op);
}

static pg_status_t
scim_call(pg_scim_op_t *op, scim_state_t state, const char *method,
          char *path, const json_t *body)
{
    return scim_call_v(op, state, method, path, body, NULL);
}

/* Start the next call from inside a callback; on failure finish the op.
 * Returns 1 when the call is in flight, 0 when the op is gone. */
static int
scim_next_v(pg_scim_op_t *op, scim_state_t state, const char *method,
            char *path, const json_t *body, const char *version)
{
    pg_status_t st = scim_call_v(op, state, method, path, body, version);

    if (st == PG_OK) {
        return 1;
    }
    scim_fail(op, st, "target_unavailable", "%s %.*s: cannot start: %s",
              method, op->path != NULL ? path_noquery_len(op->path) : 0,
              op->path != NULL ? op->path : "", pg_status_str(st));
    return 0;
}

static int
scim_next(pg_scim_op_t *op, scim_state_t state, const char *method,
          char *path, const json_t *body)
{
    return scim_next_v(op, state, method, path, body, NULL);
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

/* 1 when writes should carry If-Match (ETags advertised, not disabled). */
static int
use_etag(const pg_scim_op_t *op)
{
    return op->has_opts && op->opts.caps != NULL && op->opts.caps->loaded &&
           op->opts.caps->etag && !op->opts.dialect.no_etag;
}

/* 1 when updates may use PATCH (default), 0 when they must PUT. */
static int
use_patch(const pg_scim_op_t *op)
{
    if (!op->has_opts) {
        return 1;
    }
    if (op->opts.dialect.force_put) {
        return 0;
    }
    return op->opts.caps == NULL || !op->opts.caps->loaded ||
           op->opts.caps->patch;
}

/*
 * Remember the version of resource r read by the call just answered: the
 * ETag header when present, else r.meta.version. Replaces op->version
 * (NULL when neither is there). resp may be NULL (list entries).
 */
static void
remember_version(pg_scim_op_t *op, const pg_http_response_t *resp,
                 const json_t *r)
{
    const char *v = NULL;

    if (resp != NULL) {
        v = pg_http_response_header(resp, "ETag");
    }
    if (v == NULL) {
        v = json_string_value(json_object_get(json_object_get(r, "meta"),
                                              "version"));
    }
    free(op->version);
    op->version = NULL;
    if (v != NULL && v[0] != '\0' && strlen(v) <= SCIM_MAX_ID &&
        !has_ctl(v)) {
        op->version = strdup(v); /* NULL on OOM: simply no If-Match */
    }
}

/*
 * Full resource for a PUT: a copy of existing without "meta" (and, for
 * users, the read-only "groups"), with every top-level desired attribute
 * replacing the existing one (matched case-insensitively). New reference
 * or NULL on OOM.
 */
static json_t *
user_put_body(const json_t *desired, const json_t *existing)
{
    json_t *out = json_deep_copy(existing), *v;
    const char *k, *ek;
    void *tmp;

    if (out == NULL) {
        return NULL;
    }
    json_object_del(out, "meta");
    json_object_del(out, "groups");
    json_object_foreach((json_t *)desired, k, v) {
        if (strcasecmp(k, "id") == 0 || strcasecmp(k, "meta") == 0) {
            continue;
        }
        json_object_foreach_safe(out, tmp, ek, v) {
            (void)v;
            if (strcasecmp(ek, k) == 0 && strcmp(ek, k) != 0) {
                json_object_del(out, ek);
            }
        }
        if (json_object_set(out, k, json_object_get(desired, k)) != 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/*
 * Collision handling: an account of this person that already has one of
 * the candidates of the rule's username (jdoe2 when jdoe was taken) keeps
 * it; renaming it back to the base would collide again. A name that is
 * no candidate (the base changed: a new family name) is replaced by the
 * base as usual. existing is borrowed.
 */
static pg_status_t
coll_keep_name(pg_scim_op_t *op, const json_t *existing)
{
    char name[PG_SCIM_USERNAME_MAX + 1];
    const char *ua, *have;
    unsigned k;

    if (op->coll_tries == 0) {
        return PG_OK;
    }
    ua = op->target->username_attr != NULL
                 && op->target->username_attr[0] != '\0'
             ? op->target->username_attr : "userName";
    have = json_string_value(json_object_get(existing, ua));
    if (have == NULL || strcmp(have, op->username) == 0) {
        return PG_OK;
    }
    for (k = 1; k < op->coll_tries; k++) {
        if (pg_policy_username_candidate(op->coll_base, op->coll_start,
                                         op->coll_tries, op->coll_max_len, k,
                                         name, sizeof(name)) != PG_OK) {
            break;
        }
        if (strcmp(name, have) == 0) {
            char *dup = strdup(have);

            if (dup == NULL || json_object_set_new(op->desired, ua,
                                                   json_string(have)) != 0) {
                free(dup);
                return PG_ERR_NOMEM;
            }
            free(op->username);
            op->username = dup;
            op->res.collisions = k;
            return PG_OK;
        }
    }
    return PG_OK;
}

static void step_groups(pg_scim_op_t *op);

static void bulk_send(pg_scim_op_t *op);
static void next_group(pg_scim_op_t *op);
static json_t *disc_body(const pg_http_response_t *resp);

#define SCIM_BULK_SCHEMA "urn:ietf:params:scim:api:messages:2.0:BulkRequest"

/* 1 when this ensure sends its membership PATCHes through POST /Bulk:
 * opts.bulk, discovery says Bulk is supported, PATCH in use, no ETags
 * (a Bulk operation would need its own version), no earlier failure. */
static int
use_bulk(const pg_scim_op_t *op)
{
    return op->has_opts && op->opts.bulk && !op->bulk_off &&
           op->opts.caps != NULL && op->opts.caps->loaded &&
           op->opts.caps->bulk && use_patch(op) && !use_etag(op);
}

/* Queue the PATCH (borrowed) of group op->gid as a Bulk operation.
 * 0, or -1 out of memory. */
static int
bulk_queue(pg_scim_op_t *op, json_t *patch)
{
    char *path = path_with("/Groups/", op->gid, "");
    json_t *e;

    if (path == NULL) {
        return -1;
    }
    if (op->bulk_ops == NULL && (op->bulk_ops = json_array()) == NULL) {
        free(path);
        return -1;
    }
    e = json_pack("{s:s, s:s, s:O}", "method", "PATCH", "path", path,
                  "data", patch);
    free(path);
    if (e == NULL || json_array_append_new(op->bulk_ops, e) != 0) {
        return -1;
    }
    return 0;
}

/* Give up on Bulk for this op: do the memberships one PATCH per group
 * from the first group again (those already added are found and
 * skipped). */
static void
bulk_fall_back(pg_scim_op_t *op)
{
    op->bulk_off = 1;
    json_decref(op->bulk_ops);
    op->bulk_ops = NULL;
    op->gi = 0;
    step_groups(op);
}

/*
 * Send the next POST /Bulk: as many queued operations as the target's
 * bulk.maxOperations allows, fewer when the body would exceed its
 * maxPayloadSize (a single operation over it: bulk_fall_back). Finishes
 * the op on a start failure.
 */
static void
bulk_send(pg_scim_op_t *op)
{
    const pg_scim_caps_t *c = op->opts.caps;
    size_t n = json_array_size(op->bulk_ops), i, len;
    json_t *body, *ops;
    char *txt;

    if (c->bulk_max_ops != 0 && n > c->bulk_max_ops) {
        n = c->bulk_max_ops;
    }
    for (;;) {
        ops = json_array();
        body = ops != NULL ? json_pack("{s:[s], s:o}", "schemas",
                                       SCIM_BULK_SCHEMA, "Operations", ops)
                           : NULL;
        if (body == NULL) {
            scim_fail(op, PG_ERR_NOMEM, "target_unavailable",
                      "out of memory");
            return;
        }
        for (i = 0; i < n; i++) {
            if (json_array_append(ops, json_array_get(op->bulk_ops, i))
                != 0) {
                json_decref(body);
                scim_fail(op, PG_ERR_NOMEM, "target_unavailable",
                          "out of memory");
                return;
            }
        }
        if (c->bulk_max_payload == 0) {
            break;
        }
        txt = json_dumps(body, JSON_COMPACT);
        len = txt != NULL ? strlen(txt) : 0;
        free(txt);
        if (txt != NULL && len <= c->bulk_max_payload) {
            break;
        }
        json_decref(body);
        if (txt == NULL) {
            scim_fail(op, PG_ERR_NOMEM, "target_unavailable",
                      "out of memory");
            return;
        }
        if (n == 1) {
            bulk_fall_back(op);          /* too big even alone */
            return;
        }
        n /= 2;
    }
    op->bulk_inflight = n;
    (void)scim_next(op, S_BULK, "POST", strdup("/Bulk"), body);
    json_decref(body);
}

/* The numeric status of one BulkResponse operation ("200" or 200), or 0. */
static long
bulk_op_status(const json_t *o)
{
    const json_t *st = scim_get_ci(o, "status");
    char *end = NULL;
    long v;

    if (json_is_integer(st)) {
        return (long)json_integer_value(st);
    }
    if (!json_is_string(st)) {
        return 0;
    }
    errno = 0;
    v = strtol(json_string_value(st), &end, 10);
    if (errno != 0 || end == json_string_value(st) || v < 100 || v > 599) {
        return 0;
    }
    return v;
}

/*
 * POST /Bulk answered. Every operation 2xx: count the memberships and send
 * the rest (or finish). Otherwise (a failed operation, an unexpected
 * answer, a target that turns out not to do Bulk): count what succeeded
 * and bulk_fall_back, so Bulk never decides the outcome on its own.
 */
static void
on_bulk(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *d = disc_body(resp), *ops = scim_get_ci(d, "Operations"), *o;
    size_t i, ok = 0, n = op->bulk_inflight, got = json_array_size(ops);

    json_array_foreach(ops, i, o) {
        long st = bulk_op_status(o);

        if (st >= 200 && st < 300) {
            ok++;
        }
    }
    json_decref(d);                      /* ops is gone with it */
    if (got == n && ok == n) {
        op->res.groups_added += n;
        for (i = 0; i < n; i++) {
            json_array_remove(op->bulk_ops, 0);
        }
        step_groups(op);                 /* the rest, or finish */
        return;
    }
    if (ok <= n) {
        op->res.groups_added += ok;
    }
    bulk_fall_back(op);
}

/* Account known (adopted or found by id): PATCH what differs (or PUT the
 * whole account when PATCH is not supported), or go on with the groups.
 * existing is borrowed. */
static void
step_update(pg_scim_op_t *op, const json_t *existing)
{
    json_t *patch, *put;
    const char *ver = use_etag(op) ? op->version : NULL;
    int nomem;

    if (coll_keep_name(op, existing) != PG_OK) {
        scim_fail(op, PG_ERR_NOMEM, "target_unavailable", "out of memory");
        return;
    }
    patch = user_patch(op->desired, existing, &nomem);
    if (patch == NULL) {
        if (nomem) {
            scim_fail(op, PG_ERR_NOMEM, "target_unavailable", "out of memory");
            return;
        }
        step_groups(op);
        return;
    }
    if (!use_patch(op)) {
        json_decref(patch);
        put = user_put_body(op->desired, existing);
        if (put == NULL) {
            scim_fail(op, PG_ERR_NOMEM, "target_unavailable", "out of memory");
            return;
        }
        (void)scim_next_v(op, S_PATCH_USER, "PUT",
                          path_with("/Users/", op->res.account_id, ""), put,
                          ver);
        json_decref(put);
        return;
    }
    (void)scim_next_v(op, S_PATCH_USER, "PATCH",
                      path_with("/Users/", op->res.account_id, ""), patch,
                      ver);
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
        if (json_array_size(op->bulk_ops) > 0) {
            bulk_send(op);
            return;
        }
        op->res.detail[0] = '\0';
        scim_finish(op, PG_OK, "ok");
        return;
    }
    op->group_retried = 0;
    (void)scim_next(op, S_GROUP_LOOKUP, "GET",
                    filter_path("/Groups?filter=", "displayName",
                                op->groups[op->gi]), NULL);
}

/*
 * The PUT body that adds member_id to group g (borrowed; the group as read,
 * possibly only {id, members} or NULL): a copy of g without "meta", with
 * the Group schema and displayName (name) when g lacks them, and
 * {"value": member_id} appended to its members. New reference or NULL
 * (out of memory).
 */
static json_t *
group_put_body(const json_t *g, const char *name, const char *member_id)
{
    json_t *b = g != NULL ? json_deep_copy(g) : json_object();
    json_t *members = NULL, *m;
    const char *k;
    void *tmp;

    if (b == NULL || !json_is_object(b)) {
        json_decref(b);
        return NULL;
    }
    json_object_foreach_safe(b, tmp, k, m) {
        if (strcasecmp(k, "meta") == 0) {
            json_object_del(b, k);
        } else if (strcasecmp(k, "members") == 0) {
            if (json_is_array(m)) {
                members = m;
            } else {
                json_object_del(b, k);
            }
        }
    }
    if (scim_get_ci(b, "schemas") == NULL
        && json_object_set_new(b, "schemas",
                               json_pack("[s]", SCIM_GROUP_SCHEMA)) != 0) {
        json_decref(b);
        return NULL;
    }
    if (scim_get_ci(b, "displayName") == NULL
        && json_object_set_new(b, "displayName", json_string(name)) != 0) {
        json_decref(b);
        return NULL;
    }
    if (members == NULL) {
        members = json_array();
        if (json_object_set_new(b, "members", members) != 0) {
            json_decref(b);
            return NULL;
        }
    }
    if (json_array_append_new(members, json_pack("{s:s}", "value",
                                                 member_id)) != 0) {
        json_decref(b);
        return NULL;
    }
    return b;
}

/* Add the account to group op->gid with a PATCH "add" on members, or,
 * when PATCH is not to be used (discovery said unsupported, or
 * dialect.force_put), with a PUT of the group as read (op->group_res) plus
 * the member, If-Match its meta.version when ETags are in use. */
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
    if (use_bulk(op)) {
        int r = bulk_queue(op, patch);

        json_decref(patch);
        if (r != 0) {
            scim_fail(op, PG_ERR_NOMEM, "target_unavailable",
                      "out of memory");
            return;
        }
        next_group(op);
        return;
    }
    if (!use_patch(op)) {
        const char *ver = NULL;
        json_t *put;

        json_decref(patch);
        if (use_etag(op)) {
            ver = json_string_value(scim_get_path(op->group_res,
                                                  "meta.version"));
        }
        put = group_put_body(op->group_res, op->groups[op->gi],
                             op->res.account_id);
        if (put == NULL) {
            scim_fail(op, PG_ERR_NOMEM, "target_unavailable",
                      "out of memory");
            return;
        }
        (void)scim_next_v(op, S_GROUP_PATCH, "PUT",
                          path_with("/Groups/", op->gid, ""), put, ver);
        json_decref(put);
        return;
    }
    (void)scim_next(op, S_GROUP_PATCH, "PATCH",
                    path_with("/Groups/", op->gid, ""), patch);
    json_decref(patch);
}

/* Keep group g (borrowed) as read for a later PUT. */
static void
keep_group(pg_scim_op_t *op, json_t *g)
{
    json_decref(op->group_res);
    op->group_res = json_incref(g);
}

/* Group op->gi done: next one. */
static void
next_group(pg_scim_op_t *op)
{
    free(op->gid);
    op->gid = NULL;
    json_decref(op->group_res);
    op->group_res = NULL;
    op->group_reread = 0;
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
        remember_version(op, resp, r);
        step_update(op, r);
    }
    json_decref(r);
}

/* GET /Users/<id> after a 412 on the user update: compare again. */
static void
on_reread(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *r;

    if (resp->status != 200) {
        scim_status_error(op, resp);
        return;
    }
    if ((r = scim_body(op, resp)) == NULL) {
        return;
    }
    remember_version(op, resp, r);
    step_update(op, r);
    json_decref(r);
}

/*
 * Collision handling (pg_scim_request_t.collision_tries): 1 when the
 * account r found under the username belongs to someone else, i.e. the
 * desired User has an externalId and r's differs (a missing one differs).
 */
static int
coll_foreign(const pg_scim_op_t *op, const json_t *r)
{
    const char *want, *have;

    if (op->coll_tries == 0) {
        return 0;
    }
    want = json_string_value(json_object_get(op->desired, "externalId"));
    if (want == NULL) {
        return 0; /* nothing to tell them apart by: adopt as before */
    }
    have = json_string_value(json_object_get(r, "externalId"));
    return have == NULL || strcmp(have, want) != 0;
}

/*
 * The username is someone else's: move to the next candidate and look it
 * up, or fail with "username_taken" after the last one.
 */
static void
coll_next(pg_scim_op_t *op)
{
    char name[PG_SCIM_USERNAME_MAX + 1];
    const char *ua = op->target->username_attr != NULL
                             && op->target->username_attr[0] != '\0'
                         ? op->target->username_attr : "userName";
    char *dup;
    pg_status_t st;

    op->coll_k++;
    st = pg_policy_username_candidate(op->coll_base, op->coll_start,
                                      op->coll_tries, op->coll_max_len,
                                      op->coll_k, name, sizeof(name));
    if (st != PG_OK) {
        scim_fail(op, PG_ERR_CONFLICT, "username_taken",
                  "the username \"%.64s\" and its %u candidates are taken "
                  "by other accounts", op->coll_base,
                  op->coll_tries > 0 ? op->coll_tries - 1 : 0);
        return;
    }
    dup = strdup(name);
    if (dup == NULL
        || json_object_set_new(op->desired, ua, json_string(name)) != 0) {
        free(dup);
        scim_fail(op, PG_ERR_NOMEM, "target_unavailable", "out of memory");
        return;
    }
    free(op->username);
    op->username = dup;
    op->user_retried = 0;
    op->res.collisions = op->coll_k;
    step_lookup(op);
}

/*
 * The POST /Users body: the desired User, created disabled ("active":
 * false) when the request asks for it (an account rule's initial_state).
 * A new reference, NULL on OOM.
 */
static json_t *
create_body(const pg_scim_op_t *op)
{
    json_t *b;

    if (!op->create_disabled) {
        return json_incref(op->desired);
    }
    b = json_copy(op->desired);
    if (b != NULL && json_object_set_new(b, "active", json_false()) != 0) {
        json_decref(b);
        return NULL;
    }
    return b;
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
        } else if (coll_foreign(op, first)) {
            coll_next(op);
        } else if (take_account(op, first)) {
            op->res.adopted = 1;
            remember_version(op, NULL, first);
            step_update(op, first);
        }
    } else if (op->user_retried) {
        /* POST said 409 but the account cannot be found. */
        scim_fail(op, PG_ERR_CONFLICT, "target_rejected",
                  "POST /Users: HTTP 409 but no account matches");
    } else {
        json_t *body = create_body(op);

        if (body == NULL) {
            scim_fail(op, PG_ERR_NOMEM, "target_unavailable", "out of memory");
        } else {
            (void)scim_next(op, S_CREATE, "POST", strdup("/Users"), body);
            json_decref(body);
        }
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
    if (!op->reread_done &&
        pg_scim_classify(resp->status, PG_OK, NULL, NULL, 1, NULL, 0, 0,
                         NULL) == PG_SCIM_ACT_REREAD_RETRY) {
        /* 412: the account changed since it was read; read and compare
         * again, once. */
        op->reread_done = 1;
        op->res.reread = 1;
        (void)scim_next(op, S_REREAD, "GET",
                        path_with("/Users/", op->res.account_id, ""), NULL);
        return;
    }
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
            keep_group(op, first);
            (void)scim_next(op, S_GROUP_MEMBERS, "GET",
                            path_with("/Groups/", op->gid,
                                      "?attributes=members"), NULL);
        } else {
            keep_group(op, first);
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
        keep_group(op, r);
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
        if (op->group_res != NULL && scim_get_ci(r, "members") != NULL) {
            /* the listing's copy with the members just read */
            json_t *g = json_deep_copy(op->group_res);

            if (g != NULL
                && json_object_set(g, "members",
                                   scim_get_ci(r, "members")) == 0) {
                keep_group(op, g);
            }
            json_decref(g);
        } else if (op->group_res == NULL) {
            keep_group(op, r);
        }
        step_group_patch(op);
    }
    json_decref(r);
}

static void
on_group_patch(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    if (resp->status == 412 && !op->group_reread && op->gid != NULL) {
        /* the group changed since it was read (another member added):
         * read all of it again and PUT once more */
        op->group_reread = 1;
        json_decref(op->group_res);
        op->group_res = NULL;
        (void)scim_next(op, S_GROUP_MEMBERS, "GET",
                        path_with("/Groups/", op->gid, ""), NULL);
        return;
    }
    if (resp->status != 200 && resp->status != 204) {
        scim_status_error(op, resp);
        return;
    }
    op->res.groups_added++;
    next_group(op);
}

static void oauth_drop(pg_scim_op_t *op);
static int adapt_desired(pg_scim_op_t *op);
static void on_discover(pg_scim_op_t *op, const pg_http_response_t *resp);
static void on_discover_more(pg_scim_op_t *op,
                             const pg_http_response_t *resp);
static void on_x_read(pg_scim_op_t *op, const pg_http_response_t *resp);
static void on_x_write(pg_scim_op_t *op, const pg_http_response_t *resp);
static void on_x_list(pg_scim_op_t *op, const pg_http_response_t *resp);

/* Next pseudo-random value for jitter (xorshift32 seeded from the OS). */
static uint32_t
scim_rand(pg_scim_op_t *op)
{
    uint32_t x = op->rnd != 0 ? op->rnd : 0x9e3779b9u;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    op->rnd = x;
    return x;
}

/* Retry timer fired: send the same call again. */
static void
scim_retry_fire(void *arg)
{
    pg_scim_op_t *op = arg;
    pg_status_t st = scim_send(op);

    if (st != PG_OK) {
        scim_fail(op, st, "target_unavailable", "%s %.*s: cannot start: %s",
                  op->method, path_noquery_len(op->path), op->path,
                  pg_status_str(st));
    }
}

/*
 * Retries are opt-in (opts.retry.max_attempts > 1 and opts.host). When
 * pg_scim_classify() says RETRY_AFTER for this outcome, arm the host timer
 * and return 1 (the op waits; nothing is delivered); else 0.
 */
static int
scim_maybe_retry(pg_scim_op_t *op, pg_status_t st,
                 const pg_http_response_t *resp)
{
    const char *ra = NULL;
    unsigned delay = 0;
    long status = (st == PG_OK && resp != NULL) ? resp->status : 0;

    if (!op->has_opts || op->opts.retry.max_attempts <= 1 ||
        op->opts.host == NULL) {
        return 0;
    }
    if (st == PG_OK && resp == NULL) {
        return 0;
    }
    if (st == PG_OK) {
        ra = pg_http_response_header(resp, "Retry-After");
    }
    if (pg_scim_classify(status, st, NULL, ra, op->attempt, &op->opts.retry,
                         scim_rand(op), (int64_t)time(NULL), &delay) !=
        PG_SCIM_ACT_RETRY_AFTER) {
        return 0;
    }
    if (op->timer == NULL) {
        op->timer = op->opts.host->timer_open(op->opts.host->ctx,
                                              scim_retry_fire, op);
        if (op->timer == NULL) {
            return 0;
        }
    }
    op->attempt++;
    op->res.retries++;
    op->opts.host->timer_arm(op->timer, delay);
    return 1;
}

/*
 * pg_http callback for every call: report it through on_call, honour a
 * cancellation made from on_call, retry when the options allow it, map
 * transport failures, then dispatch on the state.
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
    if (status == 401) {
        oauth_drop(op);
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
    if (scim_maybe_retry(op, st, resp)) {
        return;
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
    case S_REREAD: on_reread(op, resp); break;
    case S_DISCOVER: on_discover(op, resp); break;
    case S_DISCOVER_RT:
    case S_DISCOVER_SCH: on_discover_more(op, resp); break;
    case S_BULK: on_bulk(op, resp); break;
    case S_X_READ: on_x_read(op, resp); break;
    case S_X_WRITE: on_x_write(op, resp); break;
    case S_X_LIST: on_x_list(op, resp); break;
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

static pg_status_t op_start(pg_scim_op_t *op);
static pg_status_t x_begin(pg_scim_op_t *op);

/* Remove every "urn:..." member of user and every schemas entry other
 * than the core User schema (dialect.no_extensions). */
static void
drop_extensions(json_t *user)
{
    json_t *schemas = json_object_get(user, "schemas"), *v;
    const char *k;
    void *tmp;
    size_t i;

    json_object_foreach_safe(user, tmp, k, v) {
        if (strncasecmp(k, "urn:", 4) == 0) {
            json_object_del(user, k);
        }
    }
    for (i = json_array_size(schemas); i-- > 0;) {
        v = json_array_get(schemas, i);
        if (!json_is_string(v) ||
            strcmp(json_string_value(v), SCIM_USER_SCHEMA) != 0) {
            json_array_remove(schemas, i);
        }
    }
}

/* First call of an ensure: the known id, or the lookup by name. */
static pg_status_t
ensure_begin(pg_scim_op_t *op)
{
    const pg_target_cfg_t *t = op->target;
    const char *ua = (t->username_attr != NULL && t->username_attr[0] != '\0')
                         ? t->username_attr : "userName";

    if (adapt_desired(op) != 0) {
        return PG_ERR_NOMEM;
    }
    if (op->known_id != NULL) {
        return scim_call(op, S_GET_KNOWN, "GET",
                         path_with("/Users/", op->known_id, ""), NULL);
    }
    return scim_call(op, S_LOOKUP, "GET",
                     filter_path("/Users?filter=", ua, op->username), NULL);
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
    /* an oauth2 target without its token cache would go unauthenticated */
    if (t->auth == PG_AUTH_OAUTH2
        && (req->opts == NULL || req->opts->oauth == NULL)) {
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
    if (req->create_disabled && op->desired != NULL) {
        /* the state is set at creation only: later updates leave it to
         * whoever enables the account */
        op->create_disabled = 1;
        json_object_del(op->desired, "active");
    }
    if (req->collision_tries > 0 && strchr(ua, '.') == NULL
        && strchr(ua, ':') == NULL) {
        op->coll_tries = req->collision_tries;
        op->coll_start = req->collision_start;
        op->coll_max_len = req->collision_max_len > 0
                               && req->collision_max_len
                                      <= PG_SCIM_USERNAME_MAX
                               ? req->collision_max_len
                               : PG_SCIM_USERNAME_MAX;
        op->coll_base = strdup(json_string_value(uv));
        if (op->coll_base == NULL) {
            goto nomem;
        }
    }
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

    if (req->opts != NULL) {
        op->opts = *req->opts;
        op->has_opts = 1;
        if (op->opts.retry.max_attempts > 1 && op->opts.host == NULL) {
            scim_op_free(op);
            return PG_ERR_INVALID;
        }
        if (op->opts.dialect.no_extensions) {
            drop_extensions(op->desired);
        }
        if (pg_random(&op->rnd, sizeof(op->rnd)) != PG_OK) {
            op->rnd = (uint32_t)scim_now_ms();
        }
    }
    st = op_start(op);
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

/* ======================================================================
 * Error classification (pure).
 * ====================================================================== */

/*
 * Seconds to wait from a Retry-After value: delta-seconds ("120") or an
 * IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") compared with now_unix.
 * Returns -1 when absent or unparsable; a date in the past gives 0.
 * Values are capped at one day.
 */
static long
retry_after_s(const char *ra, int64_t now_unix)
{
    char *end = NULL;
    struct tm tm;
    long v;
    time_t when;

    if (ra == NULL || strlen(ra) > 64) {
        return -1;
    }
    while (*ra == ' ' || *ra == '\t') {
        ra++;
    }
    if (*ra >= '0' && *ra <= '9') {
        v = strtol(ra, &end, 10);
        while (end != NULL && (*end == ' ' || *end == '\t')) {
            end++;
        }
        if (end == NULL || *end != '\0' || v < 0) {
            return -1;
        }
        return v > 86400 ? 86400 : v;
    }
    memset(&tm, 0, sizeof(tm));
    end = strptime(ra, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || *end != '\0') {
        return -1;
    }
    when = timegm(&tm);
    if (when == (time_t)-1) {
        return -1;
    }
    if ((int64_t)when <= now_unix) {
        return 0;
    }
    return (int64_t)when - now_unix > 86400 ? 86400
                                             : (long)((int64_t)when - now_unix);
}

/* See scim.h. */
pg_scim_action_t
pg_scim_classify(long status, pg_status_t transport, const char *scim_type,
                 const char *retry_after, unsigned attempt,
                 const pg_scim_retry_t *retry, uint32_t rnd, int64_t now_unix,
                 unsigned *delay_ms)
{
    unsigned max_attempts, base, cap, half;
    uint64_t backoff, ra_ms;
    long ra;

    if (delay_ms != NULL) {
        *delay_ms = 0;
    }
    if (transport == PG_OK) {
        if (status >= 200 && status <= 299) {
            return PG_SCIM_ACT_OK;
        }
        if (status == 409) {
            return (scim_type == NULL || scim_type[0] == '\0' ||
                    strcmp(scim_type, "uniqueness") == 0)
                       ? PG_SCIM_ACT_ADOPT : PG_SCIM_ACT_FAIL;
        }
        if (status == 412) {
            return PG_SCIM_ACT_REREAD_RETRY;
        }
        if (status != 429 &&
            !(status >= 500 && status <= 599 && status != 501 &&
              status != 505)) {
            return PG_SCIM_ACT_FAIL;
        }
    } else if (transport != PG_ERR_IO && transport != PG_ERR_TIMEOUT) {
        return PG_SCIM_ACT_FAIL;
    }
    /* Retryable outcome. */
    max_attempts = retry != NULL ? retry->max_attempts : 0;
    if (max_attempts > 10) {
        max_attempts = 10;
    }
    if (max_attempts <= 1 || attempt == 0 || attempt >= max_attempts) {
        return PG_SCIM_ACT_FAIL;
    }
    base = retry->base_ms != 0 ? retry->base_ms : 200;
    cap = retry->max_ms != 0 ? retry->max_ms : 10000;
    backoff = (uint64_t)base << (attempt - 1 < 20 ? attempt - 1 : 20);
    if (backoff > cap) {
        backoff = cap;
    }
    half = (unsigned)(backoff / 2);
    backoff = half + (uint64_t)(rnd % ((uint64_t)(backoff - half) + 1));
    ra = transport == PG_OK ? retry_after_s(retry_after, now_unix) : -1;
    if (ra >= 0) {
        ra_ms = (uint64_t)ra * 1000u;
        if (ra_ms > cap) {
            return PG_SCIM_ACT_FAIL; /* cannot honour it within budget */
        }
        if (ra_ms > backoff) {
            backoff = ra_ms;
        }
    }
    if (delay_ms != NULL) {
        *delay_ms = (unsigned)backoff;
    }
    return PG_SCIM_ACT_RETRY_AFTER;
}

/* ======================================================================
 * pg_scim_run(): single operations.
 * ====================================================================== */

#define SCIM_DEFAULT_PAGE 100u
#define SCIM_DEFAULT_MAX_RESULTS 1000u

/* Existing key of obj equal to name ignoring ASCII case, else name. */
static const char *
ci_key(const json_t *obj, const char *name)
{
    const char *k;
    json_t *v;

    if (json_object_get(obj, name) != NULL) {
        return name;
    }
    json_object_foreach((json_t *)obj, k, v) {
        (void)v;
        if (strcasecmp(k, name) == 0) {
            return k;
        }
    }
    return name;
}

/* 1 when array element e has a "value" equal to one of vals[].value. */
static int
value_listed(const json_t *e, const json_t *vals)
{
    const json_t *ev = json_object_get(e, "value"), *v;
    size_t i;

    if (ev == NULL) {
        return 0;
    }
    json_array_foreach(vals, i, v) {
        if (json_equal(ev, json_object_get(v, "value"))) {
            return 1;
        }
    }
    return 0;
}

/*
 * Parse `attr[value eq "x"]` (the only value filter the PUT fallback
 * handles). On success attr (NUL-terminated, at most asz-1 bytes) and *val
 * (a new JSON string, caller decrefs) are set and 0 returned; -1 otherwise.
 */
static int
parse_value_filter(const char *path, char *attr, size_t asz, json_t **val)
{
    const char *lb = strchr(path, '['), *p;
    char buf[SCIM_MAX_PATH];
    size_t n = 0;

    if (lb == NULL || (size_t)(lb - path) >= asz || lb == path) {
        return -1;
    }
    memcpy(attr, path, (size_t)(lb - path));
    attr[lb - path] = '\0';
    p = lb + 1;
    while (*p == ' ') {
        p++;
    }
    if (strncasecmp(p, "value", 5) != 0) {
        return -1;
    }
    p += 5;
    while (*p == ' ') {
        p++;
    }
    if (strncasecmp(p, "eq", 2) != 0) {
        return -1;
    }
    p += 2;
    while (*p == ' ') {
        p++;
    }
    if (*p++ != '"') {
        return -1;
    }
    while (*p != '"') {
        if (*p == '\0' || n + 1 >= sizeof(buf)) {
            return -1;
        }
        if (*p == '\\') {
            p++;
            if (*p == '\0') {
                return -1;
            }
        }
        buf[n++] = *p++;
    }
    buf[n] = '\0';
    p++;
    while (*p == ' ') {
        p++;
    }
    if (p[0] != ']' || p[1] != '\0') {
        return -1;
    }
    *val = json_string(buf);
    return *val != NULL ? 0 : -1;
}

/*
 * Apply PatchOp operations (borrowed) to resource r in place, for servers
 * without PATCH. Supported: add/replace/remove (case-insensitive) with no
 * path (add/replace of an object's members), a path "a" or "a.b" (attribute
 * names matched case-insensitively), remove with a value array on a
 * multi-valued attribute (entries with the same "value" go), and remove of
 * `attr[value eq "x"]`. Returns 0, or -1 for anything else (the op then
 * fails with "unsupported" and nothing is written).
 */
static int
apply_ops(json_t *r, const json_t *ops)
{
    const json_t *o;
    size_t i;

    if (!json_is_array(ops)) {
        return -1;
    }
    json_array_foreach(ops, i, o) {
        const char *name = json_string_value(json_object_get(o, "op"));
        const char *path = json_string_value(json_object_get(o, "path"));
        json_t *value = json_object_get(o, "value"), *parent = r, *cur, *e;
        char seg[SCIM_MAX_PATH], *dot;
        const char *k;
        size_t j;
        int add, rep, rem;

        if (name == NULL) {
            return -1;
        }
        add = strcasecmp(name, "add") == 0;
        rep = strcasecmp(name, "replace") == 0;
        rem = strcasecmp(name, "remove") == 0;
        if (!add && !rep && !rem) {
            return -1;
        }
        if (path == NULL) {
            if (rem || !json_is_object(value)) {
                return -1;
            }
            json_object_foreach(value, k, e) {
                if (json_object_set(r, ci_key(r, k), e) != 0) {
                    return -1;
                }
            }
            continue;
        }
        if (strlen(path) >= sizeof(seg) || strncasecmp(path, "urn:", 4) == 0) {
            return -1;
        }
        if (strchr(path, '[') != NULL) {
            json_t *want = NULL;
            char attr[SCIM_MAX_PATH];

            if (!rem || parse_value_filter(path, attr, sizeof(attr), &want)) {
                return -1;
            }
            cur = json_object_get(r, ci_key(r, attr));
            if (json_is_array(cur)) {
                for (j = json_array_size(cur); j-- > 0;) {
                    if (json_equal(json_object_get(json_array_get(cur, j),
                                                   "value"), want)) {
                        json_array_remove(cur, j);
                    }
                }
            }
            json_decref(want);
            continue;
        }
        memcpy(seg, path, strlen(path) + 1);
        dot = strchr(seg, '.');
        if (dot != NULL) {
            *dot = '\0';
            if (strchr(dot + 1, '.') != NULL || dot[1] == '\0') {
                return -1;
            }
            cur = json_object_get(r, ci_key(r, seg));
            if (cur == NULL) {
                if (rem) {
                    continue;
                }
                cur = json_object();
                if (cur == NULL ||
                    json_object_set_new(r, seg, cur) != 0) {
                    return -1;
                }
            }
            if (!json_is_object(cur)) {
                return -1;
            }
            parent = cur;
            memmove(seg, dot + 1, strlen(dot + 1) + 1);
        }
        k = ci_key(parent, seg);
        cur = json_object_get(parent, k);
        if (rem) {
            if (json_is_array(value) && json_is_array(cur)) {
                for (j = json_array_size(cur); j-- > 0;) {
                    if (value_listed(json_array_get(cur, j), value)) {
                        json_array_remove(cur, j);
                    }
                }
            } else if (cur != NULL) {
                json_object_del(parent, k);
            }
            continue;
        }
        if (value == NULL) {
            return -1;
        }
        if (add && json_is_array(cur) && json_is_array(value)) {
            json_array_foreach(value, j, e) {
                size_t m;
                const json_t *x;
                int dup = 0;

                json_array_foreach(cur, m, x) {
                    const json_t *ev = json_object_get(e, "value");

                    if (json_equal(x, e) ||
                        (ev != NULL &&
                         json_equal(json_object_get(x, "value"), ev))) {
                        dup = 1;
                        break;
                    }
                }
                if (!dup && json_array_append(cur, e) != 0) {
                    return -1;
                }
            }
            continue;
        }
        if (json_object_set(parent, k, value) != 0) {
            return -1;
        }
    }
    return 0;
}

/* Fill caps from a ServiceProviderConfig document (may be NULL:
 * defaults). Leaves loaded to the caller: set once discovery is done. */
static void
caps_fill(pg_scim_caps_t *c, const json_t *spc)
{
    json_t *mr, *bulk;

    memset(c, 0, sizeof(*c));
    if (spc == NULL) {
        c->patch = 1;
        return;
    }
    c->patch = json_is_true(scim_get_ci(scim_get_ci(spc, "patch"),
                                        "supported"));
    c->etag = json_is_true(scim_get_ci(scim_get_ci(spc, "etag"),
                                       "supported"));
    c->bulk = json_is_true(scim_get_ci(scim_get_ci(spc, "bulk"),
                                       "supported"));
    c->filter = json_is_true(scim_get_ci(scim_get_ci(spc, "filter"),
                                         "supported"));
    c->sort = json_is_true(scim_get_ci(scim_get_ci(spc, "sort"),
                                       "supported"));
    mr = scim_get_ci(scim_get_ci(spc, "filter"), "maxResults");
    if (json_is_integer(mr) && json_integer_value(mr) > 0) {
        c->max_results = json_integer_value(mr) > 1000000
                             ? 1000000u : (unsigned)json_integer_value(mr);
    }
    bulk = scim_get_ci(spc, "bulk");
    mr = scim_get_ci(bulk, "maxOperations");
    if (json_is_integer(mr) && json_integer_value(mr) > 0) {
        c->bulk_max_ops = json_integer_value(mr) > 100000
                              ? 100000u : (unsigned)json_integer_value(mr);
    }
    mr = scim_get_ci(bulk, "maxPayloadSize");
    if (json_is_integer(mr) && json_integer_value(mr) > 0) {
        c->bulk_max_payload = json_integer_value(mr) > 0x7fffffff
                                  ? 0x7fffffffu
                                  : (unsigned)json_integer_value(mr);
    }
}

/* Copy src into dst[n] when it fits with its NUL and has no control
 * bytes; 0 (dst untouched) otherwise. */
static int
caps_copy(char *dst, size_t n, const char *src)
{
    size_t l = src != NULL ? strlen(src) : 0;

    if (l == 0 || l >= n || has_ctl(src)) {
        return 0;
    }
    memcpy(dst, src, l + 1);
    return 1;
}

/* The resources of a discovery document: a ListResponse's "Resources"
 * or a bare array (both forms are seen in the field); NULL otherwise. */
static const json_t *
disc_resources(const json_t *doc)
{
    const json_t *r = json_is_array(doc) ? doc : scim_get_ci(doc,
                                                             "Resources");

    return json_is_array(r) ? r : NULL;
}

/* Parse a discovery body leniently (NULL when absent, over the cap or not
 * JSON): a server with a broken endpoint gets the defaults, it does not
 * fail the operation. New reference. */
static json_t *
disc_body(const pg_http_response_t *resp)
{
    json_error_t jerr;

    if (resp->status != 200 || resp->body == NULL || resp->body_len == 0 ||
        resp->body_len > PG_SCIM_MAX_RESPONSE) {
        return NULL;
    }
    return json_loadb(resp->body, resp->body_len, JSON_REJECT_DUPLICATES,
                      &jerr);
}

/* From GET /ResourceTypes: the schema extensions of the User resource
 * type (the one named "User" or with the core User schema). At most
 * PG_SCIM_CAPS_EXT_MAX are kept; longer URNs are dropped. */
static void
caps_fill_types(pg_scim_caps_t *c, const json_t *doc)
{
    const json_t *res = disc_resources(doc), *rt, *ext, *e;
    size_t i, j;

    json_array_foreach(res, i, rt) {
        const char *name = json_string_value(scim_get_ci(rt, "name"));
        const char *sch = json_string_value(scim_get_ci(rt, "schema"));

        if ((name == NULL || strcasecmp(name, "User") != 0) &&
            (sch == NULL || strcmp(sch, SCIM_USER_SCHEMA) != 0)) {
            continue;
        }
        c->types_loaded = 1;
        c->next = 0;
        ext = scim_get_ci(rt, "schemaExtensions");
        json_array_foreach(ext, j, e) {
            if (c->next < PG_SCIM_CAPS_EXT_MAX &&
                caps_copy(c->ext[c->next], sizeof(c->ext[0]),
                          json_string_value(scim_get_ci(e, "schema")))) {
                c->next++;
            }
        }
        return;
    }
}

/* Keep one attribute name ("a" or "a.b") of the User schema. */
static void
caps_add_attr(pg_scim_caps_t *c, const char *a, const char *sub)
{
    char buf[sizeof(c->attr[0])];
    int r;

    if (c->nattr >= PG_SCIM_CAPS_ATTR_MAX || a == NULL) {
        return;
    }
    r = sub != NULL ? snprintf(buf, sizeof(buf), "%s.%s", a, sub)
                    : snprintf(buf, sizeof(buf), "%s", a);
    if (r > 0 && (size_t)r < sizeof(buf) &&
        caps_copy(c->attr[c->nattr], sizeof(c->attr[0]), buf)) {
        c->nattr++;
    }
}

/* From GET /Schemas: the core User schema's attribute names and those of
 * their sub-attributes, as the server spells them. */
static void
caps_fill_schemas(pg_scim_caps_t *c, const json_t *doc)
{
    const json_t *res = disc_resources(doc), *sc, *attrs, *a, *subs, *sa;
    size_t i, j, k;

    json_array_foreach(res, i, sc) {
        const char *id = json_string_value(scim_get_ci(sc, "id"));

        if (id == NULL || strcmp(id, SCIM_USER_SCHEMA) != 0) {
            continue;
        }
        attrs = scim_get_ci(sc, "attributes");
        if (!json_is_array(attrs)) {
            return;
        }
        c->schemas_loaded = 1;
        c->nattr = 0;
        json_array_foreach(attrs, j, a) {
            const char *n = json_string_value(scim_get_ci(a, "name"));

            caps_add_attr(c, n, NULL);
            subs = scim_get_ci(a, "subAttributes");
            json_array_foreach(subs, k, sa) {
                caps_add_attr(c, n,
                              json_string_value(scim_get_ci(sa, "name")));
            }
        }
        return;
    }
}

/* The declared spelling of attribute name (case-insensitive match), or
 * NULL when the server does not declare it. */
static const char *
caps_attr(const pg_scim_caps_t *c, const char *name)
{
    unsigned i;

    for (i = 0; i < c->nattr; i++) {
        if (strcasecmp(c->attr[i], name) == 0) {
            return c->attr[i];
        }
    }
    return NULL;
}

/* 1 when the User resource type lists extension urn. */
static int
caps_has_ext(const pg_scim_caps_t *c, const char *urn)
{
    unsigned i;

    for (i = 0; i < c->next; i++) {
        if (strcasecmp(c->ext[i], urn) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Rename member k of obj (value v, borrowed) to name when they differ
 * only in case. 0 on success or nothing to do, -1 out of memory. */
static int
rename_member(json_t *obj, const char *k, json_t *v, const char *name)
{
    char *old;

    if (name == NULL || strcmp(name, k) == 0) {
        return 0;
    }
    old = strdup(k);
    if (old == NULL || json_object_set(obj, name, v) != 0) {
        free(old);
        return -1;
    }
    json_object_del(obj, old);
    free(old);
    return 0;
}

/*
 * Adapt the desired User of an ensure to what discovery learned:
 *   - extension attributes ("urn:..." members) whose schema the User
 *     resource type does not list are dropped, with their "schemas" entry;
 *   - top-level attribute names and the names inside complex values are
 *     sent as the server declares them ("username" -> "userName"). The
 *     target's username_attr and id/externalId/meta/schemas are kept.
 * Nothing changes without caps loaded from a server that answered.
 * Returns 0, or -1 on out of memory.
 */
static int
adapt_desired(pg_scim_op_t *op)
{
    const pg_scim_caps_t *c = op->has_opts ? op->opts.caps : NULL;
    json_t *u = op->desired, *schemas, *v, *sv;
    const char *k, *sk, *ua = op->target->username_attr;
    char full[sizeof(c->attr[0])];
    void *tmp, *stmp;
    size_t i;

    if (c == NULL || !c->loaded || !json_is_object(u)) {
        return 0;
    }
    if (c->types_loaded) {
        json_object_foreach_safe(u, tmp, k, v) {
            if (strncasecmp(k, "urn:", 4) == 0 && !caps_has_ext(c, k)) {
                json_object_del(u, k);
            }
        }
        schemas = json_object_get(u, "schemas");
        for (i = json_array_size(schemas); i-- > 0;) {
            const char *sch = json_string_value(json_array_get(schemas, i));

            if (sch != NULL && strcmp(sch, SCIM_USER_SCHEMA) != 0 &&
                !caps_has_ext(c, sch)) {
                json_array_remove(schemas, i);
            }
        }
    }
    if (!c->schemas_loaded) {
        return 0;
    }
    json_object_foreach_safe(u, tmp, k, v) {
        if (strncasecmp(k, "urn:", 4) == 0 || strcmp(k, "schemas") == 0 ||
            strcmp(k, "id") == 0 || strcmp(k, "externalId") == 0 ||
            strcmp(k, "meta") == 0 || (ua != NULL && strcmp(k, ua) == 0)) {
            continue;
        }
        if (json_is_object(v)) {
            json_object_foreach_safe(v, stmp, sk, sv) {
                int r = snprintf(full, sizeof(full), "%s.%s", k, sk);
                const char *d = (r > 0 && (size_t)r < sizeof(full))
                                    ? caps_attr(c, full) : NULL;

                if (d != NULL && rename_member(v, sk, sv,
                                               strchr(d, '.') + 1) != 0) {
                    return -1;
                }
            }
        }
        if (rename_member(u, k, v, caps_attr(c, k)) != 0) {
            return -1;
        }
    }
    return 0;
}

/* "<coll>/<urlencoded id>" for the op, malloc'd. */
static char *
x_path(const pg_scim_op_t *op)
{
    char prefix[16];

    snprintf(prefix, sizeof(prefix), "%s/", op->coll);
    return path_with(prefix, op->id, "");
}

/* Finish with the resource r (borrowed; a reference is kept). */
static void
x_finish_resource(pg_scim_op_t *op, const pg_http_response_t *resp,
                  json_t *r)
{
    if (r != NULL) {
        remember_version(op, resp, r);
        op->res.resource = json_incref(r);
    } else {
        free(op->version);
        op->version = NULL;
    }
    op->res.etag = op->version;
    op->res.detail[0] = '\0';
    scim_finish(op, PG_OK, "ok");
}

/* Start the call for the next page of a LIST (does not finish the op). */
static pg_status_t
x_list_call(pg_scim_op_t *op)
{
    char q[128];
    size_t n;
    char *path;

    snprintf(q, sizeof(q), "?startIndex=%zu&count=%u", op->start_index,
             op->page_size);
    n = strlen(op->coll) + strlen(q) +
        (op->list_filter != NULL ? strlen(op->list_filter) : 0) + 1;
    path = malloc(n);
    if (path != NULL) {
        snprintf(path, n, "%s%s%s", op->coll, q,
                 op->list_filter != NULL ? op->list_filter : "");
    }
    return scim_call(op, S_X_LIST, "GET", path, NULL);
}

/*
 * Start the write step of REPLACE/MODIFY/DELETE; existing is the resource
 * just read (borrowed) or NULL when the write goes without a read (then a
 * PUT fallback starts the read instead). Does not finish the op: on
 * failure returns the status and *why the reason code.
 */
static pg_status_t
x_write_call(pg_scim_op_t *op, const json_t *existing, const char **why)
{
    const char *ver = op->if_match != NULL ? op->if_match
                      : (use_etag(op) ? op->version : NULL);
    json_t *body;
    pg_status_t st;

    *why = "target_unavailable";
    switch (op->kind) {
    case PG_SCIM_OP_DELETE:
        return scim_call_v(op, S_X_WRITE, "DELETE", x_path(op), NULL, ver);
    case PG_SCIM_OP_REPLACE:
        return scim_call_v(op, S_X_WRITE, "PUT", x_path(op), op->payload,
                           ver);
    default:
        break;
    }
    if (use_patch(op)) {
        body = json_pack("{s:[s], s:O}", "schemas", SCIM_PATCH_SCHEMA,
                         "Operations", op->payload);
        if (body == NULL) {
            return PG_ERR_NOMEM;
        }
        st = scim_call_v(op, S_X_WRITE, "PATCH", x_path(op), body, ver);
        json_decref(body);
        return st;
    }
    if (existing == NULL) {
        /* PUT fallback needs the current resource. */
        return scim_call(op, S_X_READ, "GET", x_path(op), NULL);
    }
    body = json_deep_copy(existing);
    if (body == NULL) {
        return PG_ERR_NOMEM;
    }
    json_object_del(body, "meta");
    if (strcmp(op->coll, "/Users") == 0) {
        json_object_del(body, "groups");
    }
    if (apply_ops(body, op->payload) != 0) {
        json_decref(body);
        *why = "unsupported";
        return PG_ERR_INVALID;
    }
    st = scim_call_v(op, S_X_WRITE, "PUT", x_path(op), body, ver);
    json_decref(body);
    return st;
}

/* x_write_call from a callback: finish the op on failure. */
static void
x_write(pg_scim_op_t *op, const json_t *existing)
{
    const char *why = NULL;
    pg_status_t st = x_write_call(op, existing, &why);

    if (st == PG_OK) {
        return;
    }
    if (why != NULL && strcmp(why, "unsupported") == 0) {
        scim_fail(op, st, why, "PATCH not supported by the target and the "
                  "operations cannot be applied locally");
        return;
    }
    scim_fail(op, st, why, "cannot start the write: %s", pg_status_str(st));
}

/* First call of a pg_scim_run() op (after discovery). Does not finish the
 * op: returns the start status. */
static pg_status_t
x_begin(pg_scim_op_t *op)
{
    const char *why = NULL;
    int need_read;

    switch (op->kind) {
    case PG_SCIM_OP_DISCOVER:
        return scim_call(op, S_DISCOVER, "GET",
                         strdup("/ServiceProviderConfig"), NULL);
    case PG_SCIM_OP_GET:
        return scim_call(op, S_X_READ, "GET", x_path(op), NULL);
    case PG_SCIM_OP_LIST:
        if (op->opts.caps != NULL && op->opts.caps->max_results != 0 &&
            op->page_size > op->opts.caps->max_results) {
            op->page_size = op->opts.caps->max_results;
        }
        op->start_index = 1;
        return x_list_call(op);
    default:
        break;
    }
    /* Writes: read first when an If-Match version is needed (and none was
     * given), or when the PUT fallback needs the current resource. */
    need_read = (op->if_match == NULL && use_etag(op)) ||
                (op->kind != PG_SCIM_OP_REPLACE &&
                 op->kind != PG_SCIM_OP_DELETE && !use_patch(op));
    if (need_read) {
        return scim_call(op, S_X_READ, "GET", x_path(op), NULL);
    }
    return x_write_call(op, NULL, &why);
}

/*
 * Response handlers of discovery and pg_scim_run(), one per state; each
 * starts the next call or finishes the op.
 *
 * on_discover: fill opts.caps (defaults on a non-200 answer), then either
 * deliver the document (DISCOVER) or start the op's own first call.
 */
static void
on_discover(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *r = NULL;
    pg_status_t st;

    if (resp->status == 200) {
        if ((r = scim_body(op, resp)) == NULL) {
            return;
        }
    }
    if (op->opts.caps != NULL) {
        caps_fill(op->opts.caps, r);
        if (r != NULL || op->kind != PG_SCIM_OP_DISCOVER) {
            /* then /ResourceTypes and /Schemas (on_discover_more) */
            op->disc_doc = r;
            (void)scim_next(op, S_DISCOVER_RT, "GET",
                            strdup("/ResourceTypes"), NULL);
            return;
        }
        op->opts.caps->loaded = 1;
    }
    if (op->kind == PG_SCIM_OP_DISCOVER) {
        if (r == NULL) {
            scim_status_error(op, resp);
            return;
        }
        x_finish_resource(op, resp, r);
        json_decref(r);
        return;
    }
    json_decref(r);
    st = op->kind == 0 ? ensure_begin(op) : x_begin(op);
    if (st != PG_OK) {
        scim_fail(op, st, "target_unavailable", "cannot start: %s",
                  pg_status_str(st));
    }
}

/*
 * GET /ResourceTypes, then GET /Schemas answered: fill opts.caps (any
 * non-200 or unusable answer leaves those parts unknown), mark it loaded
 * after the last one, then deliver the ServiceProviderConfig (DISCOVER)
 * or start the op's own first call.
 */
static void
on_discover_more(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *d = disc_body(resp), *spc;
    pg_status_t st;

    if (op->state == S_DISCOVER_RT) {
        caps_fill_types(op->opts.caps, d);
        json_decref(d);
        (void)scim_next(op, S_DISCOVER_SCH, "GET", strdup("/Schemas"),
                        NULL);
        return;
    }
    caps_fill_schemas(op->opts.caps, d);
    json_decref(d);
    op->opts.caps->loaded = 1;
    if (op->kind == PG_SCIM_OP_DISCOVER) {
        spc = op->disc_doc;
        op->disc_doc = NULL;
        x_finish_resource(op, NULL, spc);
        json_decref(spc);
        return;
    }
    st = op->kind == 0 ? ensure_begin(op) : x_begin(op);
    if (st != PG_OK) {
        scim_fail(op, st, "target_unavailable", "cannot start: %s",
                  pg_status_str(st));
    }
}

/* GET of the resource: deliver it (GET) or write with its version. */
static void
on_x_read(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *r;

    if (resp->status == 404) {
        scim_fail(op, PG_ERR_NOT_FOUND, "not_found", "%s %.*s: HTTP 404",
                  op->method, path_noquery_len(op->path), op->path);
        return;
    }
    if (resp->status != 200) {
        scim_status_error(op, resp);
        return;
    }
    if ((r = scim_body(op, resp)) == NULL) {
        return;
    }
    if (op->kind == PG_SCIM_OP_GET) {
        x_finish_resource(op, resp, r);
    } else {
        remember_version(op, resp, r);
        x_write(op, r);
    }
    json_decref(r);
}

/* PUT/PATCH/DELETE answered: 412 re-reads once (unless the caller gave
 * the version), 404 is not_found, 2xx delivers the returned resource. */
static void
on_x_write(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *r;

    if (resp->status == 412 && op->if_match == NULL && !op->reread_done &&
        pg_scim_classify(resp->status, PG_OK, NULL, NULL, 1, NULL, 0, 0,
                         NULL) == PG_SCIM_ACT_REREAD_RETRY) {
        op->reread_done = 1;
        op->res.reread = 1;
        (void)scim_next(op, S_X_READ, "GET", x_path(op), NULL);
        return;
    }
    if (resp->status == 412) {
        scim_fail(op, PG_ERR_CONFLICT, "target_rejected",
                  "%s %.*s: HTTP 412: the resource changed", op->method,
                  path_noquery_len(op->path), op->path);
        return;
    }
    if (resp->status == 404) {
        scim_fail(op, PG_ERR_NOT_FOUND, "not_found", "%s %.*s: HTTP 404",
                  op->method, path_noquery_len(op->path), op->path);
        return;
    }
    if (resp->status == 204 ||
        (resp->status == 200 && (resp->body == NULL || resp->body_len == 0))) {
        x_finish_resource(op, resp, NULL);
        return;
    }
    if (resp->status != 200 && resp->status != 201) {
        scim_status_error(op, resp);
        return;
    }
    if ((r = scim_body(op, resp)) == NULL) {
        return;
    }
    x_finish_resource(op, resp, r);
    json_decref(r);
}

/* One LIST page: append its Resources (capped at max_results), or hand
 * them to page_cb, then ask for the next page until totalResults is
 * reached or a page comes back empty. Only this page's body is in memory
 * (pg_http caps it at PG_SCIM_MAX_RESPONSE). */
static void
on_x_list(pg_scim_op_t *op, const pg_http_response_t *resp)
{
    json_t *list, *res, *e, *tot;
    pg_status_t st;
    size_t i, n, have;
    int stop;

    if (resp->status != 200) {
        scim_status_error(op, resp);
        return;
    }
    if ((list = scim_body(op, resp)) == NULL) {
        return;
    }
    res = json_object_get(list, "Resources");
    tot = json_object_get(list, "totalResults");
    if ((res != NULL && !json_is_array(res)) || !json_is_integer(tot) ||
        json_integer_value(tot) < 0) {
        json_decref(list);
        scim_fail(op, PG_ERR_INVALID, "bad_response",
                  "GET %s: not a ListResponse", op->coll);
        return;
    }
    op->res.total_results = (size_t)json_integer_value(tot);
    n = json_array_size(res);
    have = op->page_cb != NULL ? op->delivered
                               : json_array_size(op->res.resources);
    /* a server that ignores startIndex answers the same page again: stop
     * rather than read it (up to max_results) as more resources */
    e = json_array_get(res, 0);
    if (n > 0 && resource_id(e) != NULL) {
        if (op->page_first != NULL &&
            strcmp(op->page_first, resource_id(e)) == 0) {
            json_decref(list);
            scim_fail(op, PG_ERR_INVALID, "bad_response",
                      "GET %s: startIndex=%zu repeats the previous page "
                      "(the server ignores startIndex)", op->coll,
                      op->start_index);
            return;
        }
        free(op->page_first);
        op->page_first = strdup(resource_id(e));
    }
    json_array_foreach(res, i, e) {
        if (!json_is_object(e)) {
            json_decref(list);
            scim_fail(op, PG_ERR_INVALID, "bad_response",
                      "GET %s: a resource is not an object", op->coll);
            return;
        }
        if (have + i >= op->max_results) {
            json_decref(list);
            scim_fail(op, PG_ERR_TOO_LARGE, "too_many",
                      "GET %s: more than %u resources", op->coll,
                      op->max_results);
            return;
        }
        if (op->page_cb == NULL &&
            json_array_append(op->res.resources, e) != 0) {
            json_decref(list);
            scim_fail(op, PG_ERR_NOMEM, "target_unavailable",
                      "out of memory");
            return;
        }
    }
    have += n;
    if (op->page_cb != NULL) {
        op->delivered = have;
        stop = 0;
        if (n > 0) {
            op->in_cb++;
            stop = op->page_cb(op->page_arg, res, op->res.total_results);
            op->in_cb--;
        }
        if (op->cancelled) {
            /* not allowed by the contract; never touch op->cb again */
            json_decref(list);
            scim_op_free(op);
            return;
        }
        if (stop) {
            json_decref(list);
            scim_fail(op, PG_ERR_CANCELLED, "stopped",
                      "GET %s: stopped by the caller", op->coll);
            return;
        }
    }
    json_decref(list);
    if (n == 0 || have >= op->res.total_results) {
        op->res.detail[0] = '\0';
        scim_finish(op, PG_OK, "ok");
        return;
    }
    op->start_index += n;
    st = x_list_call(op);
    if (st != PG_OK) {
        scim_fail(op, st, "target_unavailable", "GET %s: cannot start: %s",
                  op->coll, pg_status_str(st));
    }
}

/* 1 when attr may be used in a LIST filter. */
static int
filter_attr_ok(const char *a, int groups)
{
    static const char *const users[] = { "userName", "externalId",
                                         "emails.value", "id", NULL };
    static const char *const grps[] = { "displayName", "externalId", "id",
                                        NULL };
    const char *const *l = groups ? grps : users;

    for (; *l != NULL; l++) {
        if (strcasecmp(*l, a) == 0) {
            return 1;
        }
    }
    return 0;
}

/* "&filter=<urlencoded attr eq "escaped">", malloc'd, NULL on OOM. */
static char *
list_filter_q(const char *attr, const char *value)
{
    char *p = filter_path("", attr, value), *out;
    size_t n;

    if (p == NULL) {
        return NULL;
    }
    n = strlen(p) + sizeof("&filter=");
    out = malloc(n);
    if (out != NULL) {
        snprintf(out, n, "&filter=%s", p);
    }
    free(p);
    return out;
}

/* "&filter=<urlencoded meta.lastModified gt "<since_ms - 1 ms>">",
 * malloc'd, NULL on OOM or a time gmtime cannot represent. */
static char *
list_since_q(uint64_t since_ms)
{
    uint64_t at = since_ms - 1;
    time_t secs = (time_t)(at / 1000u);
    struct tm tm;
    char ts[64], *out;

    if (gmtime_r(&secs, &tm) == NULL ||
        strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
        return NULL;
    }
    out = malloc(160);
    if (out != NULL) {
        /* meta.lastModified gt "<ts>.<ms>Z", URL-encoded (the timestamp
         * holds only digits, '-', ':', 'T', '.' and 'Z') */
        snprintf(out, 160, "&filter=meta.lastModified%%20gt%%20%%22%s.%03uZ"
                 "%%22", ts, (unsigned)(at % 1000u));
    }
    return out;
}

/*
 * Start one operation (see scim.h). req and everything it points to is
 * copied, except req->target and opts->caps/opts->host (borrowed: they
 * must outlive the op). Synchronous failures (no op, cb never called):
 * PG_ERR_INVALID (missing id/member/resource/operations for the kind, a
 * filter attribute not allowed, retries without a host, a token with
 * control bytes), PG_ERR_NOMEM, or the pg_http_start failure.
 */
pg_status_t
pg_scim_run(pg_http_t *http, const pg_scim_op_request_t *req, pg_scim_cb cb,
            void *arg, pg_scim_op_t **op_out)
{
    const pg_target_cfg_t *t;
    pg_scim_op_t *op;
    pg_status_t st;
    size_t n;

    if (op_out != NULL) {
        *op_out = NULL;
    }
    if (http == NULL || req == NULL || cb == NULL || req->target == NULL ||
        req->target->base_url == NULL || req->kind < PG_SCIM_OP_GET ||
        req->kind > PG_SCIM_OP_DISCOVER) {
        return PG_ERR_INVALID;
    }
    t = req->target;
    if (req->kind != PG_SCIM_OP_LIST && req->kind != PG_SCIM_OP_DISCOVER &&
        (req->id == NULL || req->id[0] == '\0' ||
         strlen(req->id) > SCIM_MAX_ID)) {
        return PG_ERR_INVALID;
    }
    if ((req->kind == PG_SCIM_OP_REPLACE && !json_is_object(req->resource)) ||
        (req->kind == PG_SCIM_OP_MODIFY &&
         (!json_is_array(req->operations) ||
          json_array_size(req->operations) == 0)) ||
        (req->kind == PG_SCIM_OP_GROUP_REMOVE &&
         (req->member_id == NULL || req->member_id[0] == '\0' ||
          strlen(req->member_id) > SCIM_MAX_ID)) ||
        (req->kind == PG_SCIM_OP_DISCOVER &&
         (req->opts == NULL || req->opts->caps == NULL))) {
        return PG_ERR_INVALID;
    }
    if (req->kind == PG_SCIM_OP_LIST && req->filter_attr != NULL &&
        (req->filter_value == NULL || req->modified_since_ms > 0 ||
         !filter_attr_ok(req->filter_attr, req->groups))) {
        return PG_ERR_INVALID;
    }
    if (req->if_match != NULL &&
        (has_ctl(req->if_match) || strlen(req->if_match) > SCIM_MAX_ID)) {
        return PG_ERR_INVALID;
    }
    if (t->auth == PG_AUTH_BEARER &&
        (t->bearer_token == NULL || has_ctl(t->bearer_token))) {
        return PG_ERR_INVALID;
    }
    /* an oauth2 target without its token cache would go unauthenticated */
    if (t->auth == PG_AUTH_OAUTH2
        && (req->opts == NULL || req->opts->oauth == NULL)) {
        return PG_ERR_INVALID;
    }
    if (req->opts != NULL && req->opts->retry.max_attempts > 1 &&
        req->opts->host == NULL) {
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
    op->kind = req->kind;
    op->coll = (req->groups || req->kind == PG_SCIM_OP_GROUP_REMOVE)
                   ? "/Groups" : "/Users";
    if (req->opts != NULL) {
        op->opts = *req->opts;
        op->has_opts = 1;
    }
    if (pg_random(&op->rnd, sizeof(op->rnd)) != PG_OK) {
        op->rnd = (uint32_t)scim_now_ms();
    }
    op->base = strdup(t->base_url);
    if (op->base == NULL) {
        goto nomem;
    }
    n = strlen(op->base);
    while (n > 0 && op->base[n - 1] == '/') {
        op->base[--n] = '\0';
    }
    if (req->id != NULL && (op->id = strdup(req->id)) == NULL) {
        goto nomem;
    }
    if (req->if_match != NULL &&
        (op->if_match = strdup(req->if_match)) == NULL) {
        goto nomem;
    }
    switch (req->kind) {
    case PG_SCIM_OP_REPLACE:
        op->payload = json_deep_copy(req->resource);
        break;
    case PG_SCIM_OP_MODIFY:
        op->payload = json_deep_copy(req->operations);
        break;
    case PG_SCIM_OP_DEACTIVATE:
        op->payload = json_pack("[{s:s, s:s, s:b}]", "op", "replace", "path",
                                "active", "value", 0);
        break;
    case PG_SCIM_OP_GROUP_REMOVE:
        if ((op->member_id = strdup(req->member_id)) == NULL) {
            goto nomem;
        }
        if (op->opts.dialect.member_remove_value) {
            op->payload = json_pack("[{s:s, s:s, s:[{s:s}]}]", "op",
                                    "remove", "path", "members", "value",
                                    "value", op->member_id);
        } else {
            char *esc = pg_scim_filter_escape(op->member_id), *p;
            size_t pl;

            if (esc == NULL) {
                goto nomem;
            }
            pl = strlen(esc) + sizeof("members[value eq \"\"]");
            p = malloc(pl);
            if (p == NULL) {
                free(esc);
                goto nomem;
            }
            snprintf(p, pl, "members[value eq \"%s\"]", esc);
            free(esc);
            op->payload = json_pack("[{s:s, s:s}]", "op", "remove", "path",
                                    p);
            free(p);
        }
        break;
    case PG_SCIM_OP_LIST:
        op->res.resources = json_array();
        if (op->res.resources == NULL) {
            goto nomem;
        }
        op->page_size = req->page_size != 0 ? req->page_size
                                             : SCIM_DEFAULT_PAGE;
        if (op->page_size > PG_SCIM_LIST_MAX) {
            op->page_size = PG_SCIM_LIST_MAX;
        }
        op->max_results = req->max_results != 0 ? req->max_results
                                                 : SCIM_DEFAULT_MAX_RESULTS;
        op->page_cb = req->page_cb;
        op->page_arg = req->page_arg;
        if (op->max_results > (op->page_cb != NULL ? PG_SCIM_LIST_STREAM_MAX
                                                   : PG_SCIM_LIST_MAX)) {
            op->max_results = op->page_cb != NULL ? PG_SCIM_LIST_STREAM_MAX
                                                  : PG_SCIM_LIST_MAX;
        }
        if (req->filter_attr != NULL &&
            (op->list_filter = list_filter_q(req->filter_attr,
                                             req->filter_value)) == NULL) {
            goto nomem;
        }
        if (req->modified_since_ms > 0 &&
            (op->list_filter = list_since_q(req->modified_since_ms))
                == NULL) {
            goto nomem;
        }
        break;
    default:
        break;
    }
    if ((req->kind == PG_SCIM_OP_REPLACE || req->kind == PG_SCIM_OP_MODIFY ||
         req->kind == PG_SCIM_OP_DEACTIVATE ||
         req->kind == PG_SCIM_OP_GROUP_REMOVE) && op->payload == NULL) {
        goto nomem;
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

    /* The first call: discovery when the cache is empty, else the op's
     * own first call. Started with scim_call (never finishing the op
     * here) so that cb is not called from inside this function. */
    st = op_start(op);
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

/* ======================================================================
 * OAuth 2.0 client credentials token cache.
 * ====================================================================== */

#define SCIM_OAUTH_MAX_RESPONSE (64u * 1024u)
#define SCIM_OAUTH_MAX_TOKEN 8192u

struct pg_scim_oauth {
    char *token_url, *client_id, *client_secret, *scope;
    unsigned skew_s, timeout_ms;
    pg_http_tls_t tls;
    char *token;               /* current access token or NULL */
    uint64_t expires_at;       /* monotonic ms */
    pg_http_op_t *hop;         /* fetch in flight or NULL */
    pg_scim_op_t *waiters;     /* ops waiting for that fetch */
};

/* Free a string holding a secret: wiped first. */
static void
free_secret(char *s)
{
    if (s != NULL) {
        memset(s, 0, strlen(s));
        free(s);
    }
}

/*
 * Create a token cache (see scim.h). cfg strings are copied (tls strings
 * borrowed). *out is owned by the caller: pg_scim_oauth_free().
 */
pg_status_t
pg_scim_oauth_new(const pg_scim_oauth_cfg_t *cfg, pg_scim_oauth_t **out)
{
    pg_scim_oauth_t *o;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (cfg == NULL || cfg->token_url == NULL || cfg->client_id == NULL ||
        cfg->client_secret == NULL || has_ctl(cfg->token_url) ||
        has_ctl(cfg->client_id) || has_ctl(cfg->client_secret) ||
        (cfg->scope != NULL && has_ctl(cfg->scope))) {
        return PG_ERR_INVALID;
    }
    o = calloc(1, sizeof(*o));
    if (o == NULL) {
        return PG_ERR_NOMEM;
    }
    o->token_url = strdup(cfg->token_url);
    o->client_id = strdup(cfg->client_id);
    o->client_secret = strdup(cfg->client_secret);
    o->scope = cfg->scope != NULL ? strdup(cfg->scope) : NULL;
    o->skew_s = cfg->skew_s != 0 ? cfg->skew_s : 30;
    o->timeout_ms = cfg->timeout_ms;
    o->tls = cfg->tls;
    if (o->token_url == NULL || o->client_id == NULL ||
        o->client_secret == NULL || (cfg->scope != NULL && o->scope == NULL)) {
        pg_scim_oauth_free(o);
        return PG_ERR_NOMEM;
    }
    *out = o;
    return PG_OK;
}

/* Free the cache; an in-flight fetch is cancelled. No op may still use it
 * (waiting ops would be left hanging: a bug). NULL is a no-op. */
void
pg_scim_oauth_free(pg_scim_oauth_t *o)
{
    if (o == NULL) {
        return;
    }
    if (o->hop != NULL) {
        pg_http_cancel(o->hop);
    }
    free(o->token_url);
    free(o->client_id);
    free_secret(o->client_secret);
    free(o->scope);
    free_secret(o->token);
    free(o);
}

/* A 401 from the target: forget the cached token if the op used it. */
static void
oauth_drop(pg_scim_op_t *op)
{
    const char pre[] = "Authorization: Bearer ";
    pg_scim_oauth_t *o = op->has_opts ? op->opts.oauth : NULL;

    if (o == NULL || o->token == NULL || op->auth_header == NULL ||
        strncmp(op->auth_header, pre, sizeof(pre) - 1) != 0 ||
        strcmp(op->auth_header + sizeof(pre) - 1, o->token) != 0) {
        return;
    }
    free_secret(o->token);
    o->token = NULL;
}

/* op->auth_header = "Authorization: Bearer <tok>". 0 on success. */
static int
set_bearer(pg_scim_op_t *op, const char *tok)
{
    const char pre[] = "Authorization: Bearer ";
    size_t tl = strlen(tok);
    char *h = malloc(sizeof(pre) + tl);

    if (h == NULL) {
        return -1;
    }
    memcpy(h, pre, sizeof(pre) - 1);
    memcpy(h + sizeof(pre) - 1, tok, tl + 1);
    free_secret(op->auth_header);
    op->auth_header = h;
    return 0;
}

/* First call of any op once authenticated: discovery when the cache is
 * empty, else the op's own first call. Does not finish the op. */
static pg_status_t
op_first_call(pg_scim_op_t *op)
{
    if (op->has_opts && op->opts.caps != NULL && !op->opts.caps->loaded) {
        return scim_call(op, S_DISCOVER, "GET",
                         strdup("/ServiceProviderConfig"), NULL);
    }
    return op->kind == 0 ? ensure_begin(op) : x_begin(op);
}

/* Token endpoint answered (or failed): store the token, then start or
 * fail every op that waited, one at a time (a callback may cancel
 * others or start new ops; new ops wait on the cache again). */
static void
oauth_done(void *arg, pg_status_t st, const pg_http_response_t *resp)
{
    pg_scim_oauth_t *o = arg;
    pg_scim_op_t *list = o->waiters, *op;
    const char *reason = "target_unavailable";
    pg_status_t fst = st;
    json_t *j = NULL, *tok, *exp;
    char detail[128];

    o->hop = NULL;
    o->waiters = NULL;
    for (op = list; op != NULL; op = op->wnext) {
        op->whead = &list;
    }
    snprintf(detail, sizeof(detail), "token endpoint: %s",
             pg_status_str(st));
    if (st == PG_OK && resp != NULL) {
        if (resp->status == 200 && resp->body_len > 0 &&
            resp->body_len <= SCIM_OAUTH_MAX_RESPONSE) {
            j = json_loadb(resp->body, resp->body_len, 0, NULL);
        }
        tok = json_object_get(j, "access_token");
        exp = json_object_get(j, "expires_in");
        if (json_is_string(tok) && json_string_length(tok) > 0 &&
            json_string_length(tok) <= SCIM_OAUTH_MAX_TOKEN &&
            strlen(json_string_value(tok)) == json_string_length(tok) &&
            !has_ctl(json_string_value(tok))) {
            uint64_t life = json_is_integer(exp) &&
                                    json_integer_value(exp) > 0
                                ? (uint64_t)json_integer_value(exp) : 3600u;

            free_secret(o->token);
            o->token = strdup(json_string_value(tok));
            life = life > o->skew_s ? life - o->skew_s : 0;
            o->expires_at = scim_now_ms() + life * 1000u;
            fst = o->token != NULL ? PG_OK : PG_ERR_NOMEM;
        } else if (resp->status == 400 || resp->status == 401 ||
                   resp->status == 403) {
            fst = PG_ERR_DENIED;
            reason = "target_auth";
            snprintf(detail, sizeof(detail),
                     "token endpoint: HTTP %ld: client credentials refused",
                     resp->status);
        } else {
            fst = PG_ERR_INVALID;
            reason = resp->status == 200 ? "bad_response"
                                         : "target_unavailable";
            snprintf(detail, sizeof(detail),
                     "token endpoint: HTTP %ld without a usable token",
                     resp->status);
        }
        json_decref(j);
    }
    while ((op = list) != NULL) {
        pg_status_t s2;

        wait_unlink(op);
        if (fst == PG_OK && o->token != NULL) {
            if (set_bearer(op, o->token) != 0) {
                scim_fail(op, PG_ERR_NOMEM, "target_unavailable",
                          "out of memory");
                continue;
            }
            s2 = op_first_call(op);
            if (s2 != PG_OK) {
                scim_fail(op, s2, "target_unavailable", "cannot start: %s",
                          pg_status_str(s2));
            }
            continue;
        }
        scim_fail(op, fst == PG_OK ? PG_ERR_NOMEM : fst, reason, "%s",
                  detail);
    }
}

/* Start the token fetch of o through http. */
static pg_status_t
oauth_fetch(pg_scim_oauth_t *o, pg_http_t *http)
{
    const char *headers[2] = { "Accept: application/json",
                               "Content-Type: application/"
                               "x-www-form-urlencoded" };
    char *uid = pg_urlencode(o->client_id, strlen(o->client_id));
    char *usec = pg_urlencode(o->client_secret, strlen(o->client_secret));
    char *sc = o->scope != NULL ? pg_urlencode(o->scope, strlen(o->scope))
                                : NULL;
    char *body = NULL;
    pg_http_request_t req;
    pg_status_t st = PG_ERR_NOMEM;
    size_t n;

    if (uid == NULL || usec == NULL || (o->scope != NULL && sc == NULL)) {
        goto out;
    }
    n = sizeof("grant_type=client_credentials&scope=") +
        (sc != NULL ? strlen(sc) : 0);
    body = malloc(n);
    if (body == NULL) {
        goto out;
    }
    snprintf(body, n, "grant_type=client_credentials%s%s",
             sc != NULL ? "&scope=" : "", sc != NULL ? sc : "");
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.url = o->token_url;
    req.headers = headers;
    req.nheaders = 2;
    req.body = body;
    req.body_len = strlen(body);
    req.basic_user = uid;       /* RFC 6749 2.3.1: form-encoded first */
    req.basic_pass = usec;
    req.timeout_ms = o->timeout_ms;
    req.max_response = SCIM_OAUTH_MAX_RESPONSE;
    req.tls = o->tls;
    st = pg_http_start(http, &req, oauth_done, o, &o->hop);
    if (st != PG_OK) {
        o->hop = NULL;
    }
out:
    free(uid);
    free_secret(usec);
    free(sc);
    free(body);
    return st;
}

/*
 * Start an op (from pg_scim_ensure/pg_scim_run; never finishes it): with
 * an OAuth cache, use the cached token or wait for the (one) fetch;
 * otherwise go straight to the first call.
 */
static pg_status_t
op_start(pg_scim_op_t *op)
{
    pg_scim_oauth_t *o = op->has_opts ? op->opts.oauth : NULL;
    pg_status_t st;

    if (o == NULL) {
        return op_first_call(op);
    }
    if (o->token != NULL && scim_now_ms() < o->expires_at) {
        if (set_bearer(op, o->token) != 0) {
            return PG_ERR_NOMEM;
        }
        return op_first_call(op);
    }
    if (o->hop == NULL) {
        st = oauth_fetch(o, op->http);
        if (st != PG_OK) {
            return st;
        }
    }
    op->whead = &o->waiters;
    op->wprev = NULL;
    op->wnext = o->waiters;
    if (o->waiters != NULL) {
        o->waiters->wprev = op;
    }
    o->waiters = op;
    return PG_OK;
}

/* ======================================================================
 * The reconciliation view of a User (pure).
 * ====================================================================== */

#define SCIM_ACCT_MAX 1024u     /* id and key length cap */

/*
 * Value at a mapping path inside user (borrowed, or NULL when absent):
 * "urn:...:User:a.b" looks "a.b" up under the extension object whose key
 * is the URN before the last ':' (the way pg_scim_build_user() writes
 * it); other paths are dotted, every segment matched case-insensitively.
 */
static json_t *
user_path_get(const json_t *user, const char *path)
{
    char urn[SCIM_MAX_PATH];
    const char *colon;
    size_t n;

    if (strncasecmp(path, "urn:", 4) != 0) {
        return scim_get_path(user, path);
    }
    colon = strrchr(path, ':');
    n = (size_t)(colon - path);
    if (colon[1] == '\0' || n >= sizeof(urn)) {
        return NULL;
    }
    memcpy(urn, path, n);
    urn[n] = '\0';
    return scim_get_path(scim_get_ci(user, urn), colon + 1);
}

/* RFC 3339 date-time ("2026-11-27T22:15:53.939Z", or with +hh:mm) in ms
 * since the epoch; 0 when absent or unparsable. */
static uint64_t
rfc3339_ms(const json_t *v)
{
    const char *s = json_string_value(v), *p;
    struct tm tm;
    uint64_t ms = 0;
    unsigned d = 0;
    long off = 0;
    time_t t;

    if (s == NULL || strlen(s) > 64) {
        return 0;
    }
    memset(&tm, 0, sizeof(tm));
    p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (p == NULL) {
        return 0;
    }
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++, d++) {
            if (d < 3) {
                ms = ms * 10 + (uint64_t)(*p - '0');
            }
        }
    }
    for (; d < 3; d++) {
        ms *= 10;
    }
    if ((*p == '+' || *p == '-') && p[1] >= '0' && p[1] <= '9' &&
        p[2] >= '0' && p[2] <= '9' && p[3] == ':' && p[4] >= '0' &&
        p[4] <= '9' && p[5] >= '0' && p[5] <= '9' && p[6] == '\0') {
        off = (*p == '-' ? -1 : 1) *
              (((p[1] - '0') * 10 + (p[2] - '0')) * 3600L +
               ((p[4] - '0') * 10 + (p[5] - '0')) * 60L);
    } else if (!((*p == 'Z' || *p == 'z') && p[1] == '\0')) {
        return 0;
    }
    t = timegm(&tm) - off;
    return t > 0 ? (uint64_t)t * 1000u + ms : 0;
}

/* A string of at most SCIM_ACCT_MAX bytes without NUL inside, or NULL. */
static const char *
acct_str(const json_t *v)
{
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > SCIM_ACCT_MAX ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        return NULL;
    }
    return json_string_value(v);
}

/* The comparable form of an attribute value: an array of complex values
 * with "value" members (emails, phoneNumbers, ...) becomes the array of
 * those values; anything else is itself. New reference, NULL on OOM. */
static json_t *
acct_value(json_t *v)
{
    json_t *out, *e, *x;
    size_t i;

    if (!json_is_array(v) || json_array_size(v) == 0 ||
        !json_is_object(json_array_get(v, 0))) {
        return json_incref(v);
    }
    out = json_array();
    json_array_foreach(v, i, e) {
        x = scim_get_ci(e, "value");
        if (out != NULL && x != NULL && json_array_append(out, x) != 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

pg_status_t
pg_scim_user_account(const pg_target_cfg_t *t, const json_t *user,
                     json_t **out)
{
    const char *ua, *id, *key, *g;
    json_t *acct, *attrs, *groups, *v, *e;
    size_t i;
    int bad = 0;

    *out = NULL;
    if (t == NULL || !json_is_object(user)) {
        return PG_ERR_INVALID;
    }
    ua = t->username_attr != NULL && t->username_attr[0] != '\0'
             ? t->username_attr : "userName";
    id = acct_str(json_object_get(user, "id"));
    key = acct_str(user_path_get(user, ua));
    if (id == NULL || key == NULL) {
        return PG_ERR_INVALID;
    }
    attrs = json_object();
    groups = json_array();
    for (i = 0; attrs != NULL && i < t->nattrs; i++) {
        const char *path = t->attrs[i].scim_path;

        if (strcasecmp(path, ua) == 0) {
            continue;
        }
        v = user_path_get(user, path);
        if (v != NULL && !json_is_null(v)) {
            bad |= json_object_set_new(attrs, path, acct_value(v)) != 0;
        }
    }
    json_array_foreach(scim_get_ci(user, "groups"), i, e) {
        g = acct_str(scim_get_ci(e, "display"));
        if (g == NULL) {
            g = acct_str(scim_get_ci(e, "value"));
        }
        if (g != NULL && groups != NULL) {
            bad |= json_array_append_new(groups, json_string(g)) != 0;
        }
    }
    v = scim_get_ci(user, "active");
    acct = json_pack("{s:s, s:s, s:o, s:o, s:b, s:I}", "key", key, "id", id,
                     "attrs", attrs, "groups", groups, "active",
                     !json_is_false(v), "modified_ms",
                     (json_int_t)rfc3339_ms(scim_get_ci(
                         scim_get_ci(user, "meta"), "lastModified")));
    if (acct == NULL || bad) {
        json_decref(acct);
        return PG_ERR_NOMEM;
    }
    *out = acct;
    return PG_OK;
}
