/*
 * provgate core: the generic REST connector (include/provgate/rest.h).
 *
 * Layout of this file:
 *   - bounded string buffer, simple JSON paths ("data.items[0].id")
 *   - templates: path/header text with {placeholders} (percent-encoded
 *     in paths), JSON bodies whose string leaves may be "${...}"
 *   - configuration: every template compiled/checked at construction
 *   - the request state machine over pg_http (lookup -> create/update/
 *     disable/delete; list pages)
 *
 * Ownership: the connector owns its compiled templates and copies of all
 * config strings; a request owns a copy of the account it works on and
 * at most one pg_http operation at a time. Secrets (token, password) are
 * kept by the connector only (pg_http copies them per request), wiped from
 * its own memory on free, and never put in an error string or a log line.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "provgate/rest.h"

#define REST_URL_MAX      8192u   /* rendered URL (pg_http's own cap) */
#define REST_HDR_MAX      4096u   /* one rendered header line */
#define REST_HDRS_MAX     32u     /* configured headers per template */
#define REST_BODY_MAX     (256u * 1024u) /* rendered request body */
#define REST_JPATH_MAX    256u    /* JSON path text */
#define REST_JPATH_SEGS   32u     /* JSON path segments */
#define REST_DEPTH_MAX    16      /* body template nesting */
#define REST_ATTR_NAME_MAX 128u
#define REST_MAX_PAGES_DEFAULT 10000u
#define REST_ERRMSG_MAX   200u    /* target's own error message, cut */
#define REST_RETRY_AFTER_MAX_MS (24ull * 3600ull * 1000ull)

/* ---- bounded growable buffer ----------------------------------------- */

typedef struct buf {
    char *p;          /* NUL-terminated when non-NULL; owned */
    size_t len;
    size_t cap;
    size_t max;       /* hard cap on len */
} buf_t;

/* Append n bytes; PG_ERR_TOO_LARGE beyond b->max, PG_ERR_NOMEM. */
static pg_status_t
buf_add(buf_t *b, const char *s, size_t n)
{
    if (n > b->max || b->len > b->max - n) {
        return PG_ERR_TOO_LARGE;
    }
    if (b->p == NULL || b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 128;
        char *np;

        while (nc < b->len + n + 1) {
            nc *= 2;
        }
        np = realloc(b->p, nc);
        if (np == NULL) {
            return PG_ERR_NOMEM;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return PG_OK;
}

/* buf_add of a NUL-terminated string. */
static pg_status_t
buf_str(buf_t *b, const char *s)
{
    return buf_add(b, s, strlen(s));
}

/* ---- simple JSON paths ---------------------------------------------- */

typedef struct jseg {
    char *key;        /* member name, or NULL for an index */
    size_t index;
} jseg_t;

typedef struct jpath {
    int set;          /* configured */
    jseg_t *segs;     /* owned */
    size_t n;
} jpath_t;

/* Free a compiled path (owned segments) and reset it to "not set". */
static void
jpath_free(jpath_t *p)
{
    size_t i;

    for (i = 0; i < p->n; i++) {
        free(p->segs[i].key);
    }
    free(p->segs);
    memset(p, 0, sizeof(*p));
}

/*
 * Compile "a.b[2].c" (names are 1+ bytes other than . [ ] and control
 * bytes; indexes decimal). At most REST_JPATH_MAX bytes and
 * REST_JPATH_SEGS segments. PG_ERR_INVALID on a syntax error (why in err).
 */
static pg_status_t
jpath_compile(const char *src, jpath_t *out, pg_err_t *err)
{
    size_t len = strlen(src), i = 0;

    memset(out, 0, sizeof(*out));
    if (len == 0 || len > REST_JPATH_MAX) {
        pg_err_set(err, "must be 1-%u characters", REST_JPATH_MAX);
        return PG_ERR_INVALID;
    }
    out->segs = calloc(REST_JPATH_SEGS, sizeof(jseg_t));
    if (out->segs == NULL) {
        return PG_ERR_NOMEM;
    }
    out->set = 1;
    while (i < len) {
        size_t st = i;

        while (i < len && src[i] != '.' && src[i] != '[' && src[i] != ']') {
            if ((unsigned char)src[i] < 0x20 || src[i] == 0x7f) {
                pg_err_set(err, "control byte in JSON path");
                goto bad;
            }
            i++;
        }
        if (i > st) {
            if (out->n == REST_JPATH_SEGS) {
                goto toolong;
            }
            out->segs[out->n].key = strndup(src + st, i - st);
            if (out->segs[out->n].key == NULL) {
                jpath_free(out);
                return PG_ERR_NOMEM;
            }
            out->n++;
        } else if (!(st == 0 && i < len && src[i] == '[')) {
            pg_err_set(err, "empty name in JSON path \"%s\"", src);
            goto bad;
        }
        while (i < len && src[i] == '[') {
            size_t v = 0, d = 0;

            i++;
            while (i < len && src[i] >= '0' && src[i] <= '9' && d < 7) {
                v = v * 10 + (size_t)(src[i] - '0');
                i++;
                d++;
            }
            if (d == 0 || i >= len || src[i] != ']') {
                pg_err_set(err, "bad index in JSON path \"%s\"", src);
                goto bad;
            }
            i++;
            if (out->n == REST_JPATH_SEGS) {
                goto toolong;
            }
            out->segs[out->n].index = v;
            out->n++;
        }
        if (i < len) {
            if (src[i] != '.' || i + 1 == len) {
                pg_err_set(err, "bad JSON path \"%s\"", src);
                goto bad;
            }
            i++;
        }
    }
    return PG_OK;
toolong:
    pg_err_set(err, "JSON path has more than %u segments", REST_JPATH_SEGS);
bad:
    jpath_free(out);
    return PG_ERR_INVALID;
}

/* The value at p inside root (borrowed from root), or NULL. */
static json_t *
jpath_get(const jpath_t *p, const json_t *root)
{
    json_t *v = (json_t *)root;
    size_t i;

    for (i = 0; v != NULL && i < p->n; i++) {
        if (p->segs[i].key != NULL) {
            v = json_is_object(v) ? json_object_get(v, p->segs[i].key) : NULL;
        } else {
            v = json_is_array(v) ? json_array_get(v, p->segs[i].index) : NULL;
        }
    }
    return v;
}

/*
 * Text of a scalar (string as is, integer, real, true/false) into out.
 * 0 on success; -1 for other types, NULL, or when it does not fit.
 */
static int
scalar_text(const json_t *v, char *out, size_t outsz)
{
    int n;

    if (json_is_string(v)) {
        size_t l = json_string_length(v);

        if (l >= outsz || strlen(json_string_value(v)) != l) {
            return -1;
        }
        memcpy(out, json_string_value(v), l + 1);
        return 0;
    }
    if (json_is_integer(v)) {
        n = snprintf(out, outsz, "%" JSON_INTEGER_FORMAT,
                     json_integer_value(v));
    } else if (json_is_real(v)) {
        n = snprintf(out, outsz, "%.17g", json_real_value(v));
    } else if (json_is_boolean(v)) {
        n = snprintf(out, outsz, "%s", json_is_true(v) ? "true" : "false");
    } else {
        return -1;
    }
    return (n < 0 || (size_t)n >= outsz) ? -1 : 0;
}

/* ---- templates ------------------------------------------------------- */

typedef enum var {
    V_KEY, V_ID, V_IDENTITY, V_ATTR, V_GROUPS, V_ACTIVE
} var_t;

/* What templates are rendered against (all borrowed). */
typedef struct ctx {
    const char *key;
    const char *id;            /* NULL when unknown */
    const char *identity;      /* NULL when unknown */
    const json_t *attrs;       /* object or NULL */
    char **groups;
    size_t ngroups;
    int active;
} ctx_t;

/* Parse a placeholder name. *attr points into name for V_ATTR. */
static int
var_parse(const char *name, size_t n, var_t *v, const char **attr,
          size_t *alen)
{
    size_t i;

    *attr = NULL;
    *alen = 0;
#define VAR_IS(s) (n == sizeof(s) - 1 && memcmp(name, s, n) == 0)
    if (VAR_IS("key")) {
        *v = V_KEY;
    } else if (VAR_IS("id")) {
        *v = V_ID;
    } else if (VAR_IS("identity")) {
        *v = V_IDENTITY;
    } else if (VAR_IS("groups")) {
        *v = V_GROUPS;
    } else if (VAR_IS("active")) {
        *v = V_ACTIVE;
    } else if (n > 6 && memcmp(name, "attrs.", 6) == 0
               && n - 6 <= REST_ATTR_NAME_MAX) {
        for (i = 6; i < n; i++) {
            unsigned char c = (unsigned char)name[i];

            if (!(isalnum(c) || c == '_' || c == '-' || c == '.'
                  || c == ':')) {
                return -1;
            }
        }
        *v = V_ATTR;
        *attr = name + 6;
        *alen = n - 6;
    } else {
        return -1;
    }
#undef VAR_IS
    return 0;
}

/* The attribute named (attr, alen) in ctx->attrs, borrowed, or NULL. */
static json_t *
ctx_attr(const ctx_t *ctx, const char *attr, size_t alen)
{
    char name[REST_ATTR_NAME_MAX + 1];

    if (ctx->attrs == NULL || alen > REST_ATTR_NAME_MAX) {
        return NULL;
    }
    memcpy(name, attr, alen);
    name[alen] = '\0';
    return json_object_get(ctx->attrs, name);
}

/*
 * Expand a text template into out (which must have its max set).
 *  style 0 (paths, headers): "{name}", "{{" = '{', "}}" = '}'.
 *  style 1 (body strings):   "${name}", "$$" = '$'.
 * Names: key, id, identity, active, attrs.<name> ("groups" is refused:
 * not text). encode: percent-encode every substituted value (RFC 3986
 * unreserved bytes kept), never the literal text. ctx NULL: syntax check
 * only. Errors (reason in err): PG_ERR_INVALID for syntax, PG_ERR_NOT_FOUND
 * for a missing value (unknown id, missing attribute), PG_ERR_TOO_LARGE,
 * PG_ERR_NOMEM.
 */
static pg_status_t
tpl_expand(const char *tpl, int style, int encode, const ctx_t *ctx,
           buf_t *out, pg_err_t *err)
{
    const char open = style ? '$' : '{';
    size_t len = strlen(tpl), i = 0;
    pg_status_t st;

    while (i < len) {
        size_t st0 = i, ne, nlen;
        const char *name, *attr, *val = NULL;
        char tmp[64];
        var_t v;
        size_t alen;

        while (i < len && tpl[i] != open && !(style == 0 && tpl[i] == '}')) {
            i++;
        }
        if (i > st0 && out != NULL
            && (st = buf_add(out, tpl + st0, i - st0)) != PG_OK) {
            return st;
        }
        if (i >= len) {
            break;
        }
        if (style == 0 && tpl[i] == '}') {
            if (i + 1 < len && tpl[i + 1] == '}') {
                if (out != NULL && (st = buf_add(out, "}", 1)) != PG_OK) {
                    return st;
                }
                i += 2;
                continue;
            }
            pg_err_set(err, "lone '}' at offset %zu (write \"}}\")", i);
            return PG_ERR_INVALID;
        }
        /* tpl[i] == open */
        if (i + 1 < len && tpl[i + 1] == open) {
            if (out != NULL && (st = buf_add(out, &open, 1)) != PG_OK) {
                return st;
            }
            i += 2;
            continue;
        }
        if (style == 1) {
            if (i + 1 >= len || tpl[i + 1] != '{') {
                pg_err_set(err, "lone '$' at offset %zu (write \"$$\")", i);
                return PG_ERR_INVALID;
            }
            name = tpl + i + 2;
        } else {
            name = tpl + i + 1;
        }
        ne = (size_t)(name - tpl);
        while (ne < len && tpl[ne] != '}') {
            ne++;
        }
        if (ne >= len) {
            pg_err_set(err, "unterminated placeholder at offset %zu", i);
            return PG_ERR_INVALID;
        }
        nlen = (size_t)(tpl + ne - name);
        if (var_parse(name, nlen, &v, &attr, &alen) != 0) {
            pg_err_set(err, "unknown placeholder \"%.*s\" (use key, id, "
                       "identity, active or attrs.<name>)",
                       (int)(nlen > 64 ? 64 : nlen), name);
            return PG_ERR_INVALID;
        }
        if (v == V_GROUPS) {
            pg_err_set(err, "\"groups\" is a list: only a whole body string "
                       "\"${groups}\" may use it");
            return PG_ERR_INVALID;
        }
        i = ne + 1;
        if (ctx == NULL) {
            continue;
        }
        switch (v) {
        case V_KEY:
            val = ctx->key;
            break;
        case V_ID:
            val = ctx->id;
            if (val == NULL) {
                pg_err_set(err, "the account id is not known");
                return PG_ERR_NOT_FOUND;
            }
            break;
        case V_IDENTITY:
            val = ctx->identity;
            if (val == NULL) {
                pg_err_set(err, "the identity is not known");
                return PG_ERR_NOT_FOUND;
            }
            break;
        case V_ACTIVE:
            val = ctx->active ? "true" : "false";
            break;
        case V_ATTR: {
            json_t *a = ctx_attr(ctx, attr, alen);

            if (a == NULL || json_is_null(a)) {
                pg_err_set(err, "attribute \"%.*s\" is missing", (int)alen,
                           attr);
                return PG_ERR_NOT_FOUND;
            }
            if (json_is_string(a)) {
                val = json_string_value(a);
            } else if (scalar_text(a, tmp, sizeof(tmp)) == 0) {
                val = tmp;
            } else {
                pg_err_set(err, "attribute \"%.*s\" is not a single value",
                           (int)alen, attr);
                return PG_ERR_INVALID;
            }
            break;
        }
        case V_GROUPS:
            return PG_ERR_INTERNAL;
        }
        if (encode) {
            char *e = pg_urlencode(val, strlen(val));

            if (e == NULL) {
                return PG_ERR_NOMEM;
            }
            st = buf_str(out, e);
            free(e);
        } else {
            st = buf_str(out, val);
        }
        if (st != PG_OK) {
            return st;
        }
    }
    return PG_OK;
}

/* 1 when s is exactly one "${name}" placeholder; fills v/attr/alen. */
static int
body_exact_var(const char *s, var_t *v, const char **attr, size_t *alen)
{
    size_t n = strlen(s);

    if (n < 4 || s[0] != '$' || s[1] != '{' || s[n - 1] != '}'
        || memchr(s + 2, '}', n - 3) != NULL) {
        return 0;
    }
    return var_parse(s + 2, n - 3, v, attr, alen) == 0;
}

/* Check a body template (syntax of every string leaf, depth). */
static pg_status_t
body_check(const json_t *t, int depth, pg_err_t *err)
{
    const char *k, *attr;
    size_t i, alen;
    json_t *v;
    var_t var;

    if (depth > REST_DEPTH_MAX) {
        pg_err_set(err, "nested deeper than %d levels", REST_DEPTH_MAX);
        return PG_ERR_INVALID;
    }
    if (json_is_object(t)) {
        json_object_foreach((json_t *)t, k, v) {
            if (body_check(v, depth + 1, err) != PG_OK) {
                return PG_ERR_INVALID;
            }
        }
    } else if (json_is_array(t)) {
        json_array_foreach(t, i, v) {
            if (body_check(v, depth + 1, err) != PG_OK) {
                return PG_ERR_INVALID;
            }
        }
    } else if (json_is_string(t)) {
        if (strlen(json_string_value(t)) != json_string_length(t)) {
            pg_err_set(err, "NUL byte in a string");
            return PG_ERR_INVALID;
        }
        if (body_exact_var(json_string_value(t), &var, &attr, &alen)) {
            return PG_OK;
        }
        return tpl_expand(json_string_value(t), 1, 0, NULL, NULL, err);
    }
    return PG_OK;
}

/* 1 when the body template has a leaf that is exactly "${<want>}". */
static int
body_uses_var(const json_t *t, var_t want)
{
    const char *k, *attr;
    size_t i, alen;
    json_t *v;
    var_t var;

    if (json_is_object(t)) {
        json_object_foreach((json_t *)t, k, v) {
            if (body_uses_var(v, want)) {
                return 1;
            }
        }
    } else if (json_is_array(t)) {
        json_array_foreach(t, i, v) {
            if (body_uses_var(v, want)) {
                return 1;
            }
        }
    } else if (json_is_string(t)) {
        return body_exact_var(json_string_value(t), &var, &attr, &alen)
               && var == want;
    }
    return 0;
}

/*
 * Render a body template against ctx into a new JSON value (*out, owned
 * by the caller). A leaf that is exactly "${...}" becomes the typed value
 * (key/id/identity: string; attrs.X: the attribute's own JSON value;
 * groups: array of strings; active: boolean); when that value is missing
 * (unknown id/identity, absent attribute) the member or array element is
 * left out (*omit = 1). Other strings are text-expanded (a missing value
 * is an error). Built with jansson only.
 */
static pg_status_t
body_render(const json_t *t, const ctx_t *ctx, json_t **out, int *omit,
            pg_err_t *err)
{
    const char *k, *attr;
    size_t i, alen;
    json_t *v, *r = NULL;
    var_t var;
    pg_status_t st;
    int om;

    *out = NULL;
    *omit = 0;
    if (json_is_object(t)) {
        r = json_object();
        if (r == NULL) {
            return PG_ERR_NOMEM;
        }
        json_object_foreach((json_t *)t, k, v) {
            json_t *c;

            if ((st = body_render(v, ctx, &c, &om, err)) != PG_OK) {
                json_decref(r);
                return st;
            }
            if (!om && json_object_set_new(r, k, c) != 0) {
                json_decref(r);
                return PG_ERR_NOMEM;
            }
        }
    } else if (json_is_array(t)) {
        r = json_array();
        if (r == NULL) {
            return PG_ERR_NOMEM;
        }
        json_array_foreach(t, i, v) {
            json_t *c;

            if ((st = body_render(v, ctx, &c, &om, err)) != PG_OK) {
                json_decref(r);
                return st;
            }
            if (!om && json_array_append_new(r, c) != 0) {
                json_decref(r);
                return PG_ERR_NOMEM;
            }
        }
    } else if (json_is_string(t)
               && body_exact_var(json_string_value(t), &var, &attr, &alen)) {
        switch (var) {
        case V_KEY:
            r = json_string(ctx->key);
            break;
        case V_ID:
        case V_IDENTITY: {
            const char *s = var == V_ID ? ctx->id : ctx->identity;

            if (s == NULL) {
                *omit = 1;
                return PG_OK;
            }
            r = json_string(s);
            break;
        }
        case V_ACTIVE:
            r = json_boolean(ctx->active);
            break;
        case V_GROUPS:
            r = json_array();
            for (i = 0; r != NULL && i < ctx->ngroups; i++) {
                if (json_array_append_new(r, json_string(ctx->groups[i]))
                    != 0) {
                    json_decref(r);
                    r = NULL;
                }
            }
            break;
        case V_ATTR: {
            json_t *a = ctx_attr(ctx, attr, alen);

            if (a == NULL) {
                *omit = 1;
                return PG_OK;
            }
            r = json_deep_copy(a);
            break;
        }
        }
        if (r == NULL) {
            return PG_ERR_NOMEM;
        }
    } else if (json_is_string(t)) {
        buf_t b = { NULL, 0, 0, REST_BODY_MAX };

        st = tpl_expand(json_string_value(t), 1, 0, ctx, &b, err);
        if (st != PG_OK) {
            free(b.p);
            return st;
        }
        r = json_stringn(b.p != NULL ? b.p : "", b.len);
        free(b.p);
        if (r == NULL) {
            pg_err_set(err, "a rendered string is not valid UTF-8");
            return PG_ERR_INVALID;
        }
    } else {
        r = json_deep_copy(t);
        if (r == NULL) {
            return PG_ERR_NOMEM;
        }
    }
    *out = r;
    return PG_OK;
}

/* ---- configuration ---------------------------------------------------- */

/* out = "<path>.<key>" (cut at outsz; error paths only). */
static void
subpath(char *out, size_t outsz, const char *path, const char *key)
{
    if (snprintf(out, outsz, "%s.%s", path, key) < 0) {
        out[0] = '\0';
    }
}

enum { OP_LOOKUP, OP_CREATE, OP_UPDATE, OP_DISABLE, OP_DELETE, OP_LIST,
       OP_COUNT };
static const char *const OP_NAMES[OP_COUNT] = {
    "lookup", "create", "update", "disable", "delete", "list"
};
static const char *const OP_KEYS[OP_COUNT + 1] = {
    "lookup", "create", "update", "disable", "delete", "list", NULL
};
static const char *const OP_METHODS[OP_COUNT] = {
    "GET", "POST", "PATCH", "PATCH", "DELETE", "GET"
};

typedef enum paging {
    PAGE_NONE, PAGE_PAGE, PAGE_OFFSET, PAGE_CURSOR
} paging_t;
typedef enum tfmt { TF_MS, TF_S, TF_ISO } tfmt_t;

typedef struct attrmap {
    char *name;
    jpath_t path;
} attrmap_t;

/* How a target record maps back (lookup.map, list.map). */
typedef struct recmap {
    jpath_t key, id, active, modified;
    jpath_t groups;            /* array of group names (strings) */
    attrmap_t *attrs;
    size_t nattrs;
    tfmt_t modified_unit;      /* for numbers: TF_MS or TF_S */
} recmap_t;

typedef struct statusset {
    unsigned char bits[600 / 8];
} statusset_t;

typedef struct optpl {
    int present;
    int op;                    /* OP_* */
    char *method;
    char *path;                /* checked template text */
    char **hdr_names;
    char **hdr_vals;           /* checked template texts */
    size_t nhdrs;
    json_t *body;              /* checked template or NULL */
    jpath_t id_path, error_path, items_path;
    statusset_t success, retryable, not_found;
    recmap_t map;
    /* list only */
    paging_t paging;
    char *page_param;
    char *size_param;
    unsigned page_size;
    unsigned first_page;
    jpath_t cursor_path;
    char *since_param;
    tfmt_t since_format;
    unsigned max_pages;
} optpl_t;

typedef struct rest {
    pg_connector_t base;       /* first member (connector.h) */
    pg_http_t *http;           /* borrowed */
    char *prefix;              /* "targets.<name>.connector" */
    char *base_url;            /* without trailing '/' */
    char *auth_header;         /* "Authorization: Bearer ..." or NULL */
    char *basic_user;
    char *basic_pass;
    char *ca_file, *client_cert, *client_key;
    unsigned timeout_ms, connect_timeout_ms, max_response;
    optpl_t op[OP_COUNT];
} rest_t;

/* Add statuses lo..hi (inclusive, below 600) to the set. */
static void
ss_set(statusset_t *s, unsigned lo, unsigned hi)
{
    unsigned i;

    for (i = lo; i <= hi && i < 600; i++) {
        s->bits[i / 8] |= (unsigned char)(1u << (i % 8));
    }
}

/* 1 when status st is in the set. */
static int
ss_has(const statusset_t *s, long st)
{
    if (st < 0 || st >= 600) {
        return 0;
    }
    return (s->bits[st / 8] >> (st % 8)) & 1;
}

/*
 * Read an optional status set: an array of integers 100-599 or strings
 * "1xx".."5xx". Absent: *s keeps its defaults.
 */
static pg_status_t
cfg_statusset(const json_t *obj, const char *path, const char *key,
              statusset_t *s, pg_err_t *err)
{
    json_t *a = json_object_get(obj, key), *v;
    size_t i;

    if (a == NULL) {
        return PG_OK;
    }
    if (!json_is_array(a) || json_array_size(a) == 0
        || json_array_size(a) > 64) {
        pg_err_set(err, "%s.%s: must be an array of 1-64 statuses", path, key);
        return PG_ERR_CONFIG;
    }
    memset(s, 0, sizeof(*s));
    json_array_foreach(a, i, v) {
        const char *t = json_string_value(v);

        if (json_is_integer(v) && json_integer_value(v) >= 100
            && json_integer_value(v) <= 599) {
            ss_set(s, (unsigned)json_integer_value(v),
                   (unsigned)json_integer_value(v));
        } else if (t != NULL && strlen(t) == 3 && t[0] >= '1' && t[0] <= '5'
                   && t[1] == 'x' && t[2] == 'x') {
            unsigned c = (unsigned)(t[0] - '0') * 100u;

            ss_set(s, c, c + 99);
        } else {
            pg_err_set(err, "%s.%s[%zu]: must be a status 100-599 or "
                       "\"1xx\"..\"5xx\"", path, key, i);
            return PG_ERR_CONFIG;
        }
    }
    return PG_OK;
}

/* Optional JSON path member. */
static pg_status_t
cfg_jpath(const json_t *obj, const char *path, const char *key, int req,
          jpath_t *out, pg_err_t *err)
{
    const char *s;
    pg_err_t e;
    pg_status_t st;

    memset(out, 0, sizeof(*out));
    if ((st = pg_conn_cfg_str(obj, path, key, req, &s, err)) != PG_OK) {
        return st;
    }
    if (s == NULL) {
        return PG_OK;
    }
    st = jpath_compile(s, out, &e);
    if (st == PG_ERR_NOMEM) {
        return st;
    }
    if (st != PG_OK) {
        pg_err_set(err, "%s.%s: %s", path, key, e.msg);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* strdup of an optional string member (NULL when absent). */
static pg_status_t
cfg_dup(const json_t *obj, const char *path, const char *key, int req,
        char **out, pg_err_t *err)
{
    const char *s;
    pg_status_t st;

    *out = NULL;
    if ((st = pg_conn_cfg_str(obj, path, key, req, &s, err)) != PG_OK) {
        return st;
    }
    if (s != NULL && (*out = strdup(s)) == NULL) {
        return PG_ERR_NOMEM;
    }
    return PG_OK;
}

/* 1 when s is 1-64 bytes of URL-safe query-name characters. */
static int
param_name_ok(const char *s)
{
    size_t i, n = strlen(s);

    if (n == 0 || n > 64) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!(isalnum(c) || c == '_' || c == '-' || c == '.' || c == '~'
              || c == '[' || c == ']')) {
            return 0;
        }
    }
    return 1;
}

/* HTTP token (method, header name). */
static int
token_ok(const char *s, size_t max)
{
    size_t i, n = strlen(s);

    if (n == 0 || n > max) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!(isalnum(c) || strchr("!#$%&'*+-.^_`|~", c) != NULL)) {
            return 0;
        }
    }
    return 1;
}

/* Free what a record map owns. */
static void
recmap_free(recmap_t *m)
{
    size_t i;

    jpath_free(&m->key);
    jpath_free(&m->id);
    jpath_free(&m->active);
    jpath_free(&m->modified);
    jpath_free(&m->groups);
    for (i = 0; i < m->nattrs; i++) {
        free(m->attrs[i].name);
        jpath_free(&m->attrs[i].path);
    }
    free(m->attrs);
    memset(m, 0, sizeof(*m));
}

/* Parse "map" of lookup (list = 0: key, attrs, active) or list (all). */
static pg_status_t
cfg_recmap(const json_t *obj, const char *path, int list, recmap_t *m,
           pg_err_t *err)
{
    static const char *const lk[] = { "key", "attrs", "active", "groups",
                                      NULL };
    static const char *const ll[] = { "key", "id", "attrs", "active",
                                      "modified", "modified_unit", "groups",
                                      NULL };
    json_t *attrs, *v;
    const char *k, *unit;
    char p[PG_ERR_MSG_MAX];
    pg_status_t st;
    size_t i = 0;

    if ((st = pg_conn_cfg_known(obj, path, list ? ll : lk, err)) != PG_OK) {
        return st;
    }
    if ((st = cfg_jpath(obj, path, "key", list, &m->key, err)) != PG_OK
        || (st = cfg_jpath(obj, path, "active", 0, &m->active, err)) != PG_OK
        || (st = cfg_jpath(obj, path, "groups", 0, &m->groups, err))
           != PG_OK) {
        return st;
    }
    if (list
        && ((st = cfg_jpath(obj, path, "id", 1, &m->id, err)) != PG_OK
            || (st = cfg_jpath(obj, path, "modified", 0, &m->modified, err))
               != PG_OK
            || (st = pg_conn_cfg_str(obj, path, "modified_unit", 0, &unit,
                                     err)) != PG_OK)) {
        return st;
    }
    if (list && unit != NULL) {
        if (strcmp(unit, "ms") == 0) {
            m->modified_unit = TF_MS;
        } else if (strcmp(unit, "s") == 0) {
            m->modified_unit = TF_S;
        } else {
            pg_err_set(err, "%s.modified_unit: must be \"ms\" or \"s\"", path);
            return PG_ERR_CONFIG;
        }
    }
    attrs = json_object_get(obj, "attrs");
    if (attrs == NULL) {
        return PG_OK;
    }
    subpath(p, sizeof(p), path, "attrs");
    if (!json_is_object(attrs) || json_object_size(attrs) > 256) {
        pg_err_set(err, "%s: must be an object (attribute -> JSON path), "
                   "at most 256 members", p);
        return PG_ERR_CONFIG;
    }
    m->attrs = calloc(json_object_size(attrs) + 1, sizeof(attrmap_t));
    if (m->attrs == NULL) {
        return PG_ERR_NOMEM;
    }
    json_object_foreach(attrs, k, v) {
        var_t var;
        const char *an;
        size_t alen;
        char full[REST_ATTR_NAME_MAX + 8];

        snprintf(full, sizeof(full), "attrs.%s", k);
        if (strlen(k) > REST_ATTR_NAME_MAX
            || var_parse(full, strlen(full), &var, &an, &alen) != 0) {
            pg_err_set(err, "%s: bad attribute name \"%.64s\"", p, k);
            return PG_ERR_CONFIG;
        }
        m->attrs[i].name = strdup(k);
        if (m->attrs[i].name == NULL) {
            return PG_ERR_NOMEM;
        }
        m->nattrs = i + 1;
        if ((st = cfg_jpath(attrs, p, k, 1, &m->attrs[i].path, err))
            != PG_OK) {
            return st;
        }
        i++;
    }
    return PG_OK;
}

/* Free what an operation template owns and reset it to "absent". */
static void
optpl_free(optpl_t *t)
{
    size_t i;

    free(t->method);
    free(t->path);
    for (i = 0; i < t->nhdrs; i++) {
        free(t->hdr_names[i]);
        free(t->hdr_vals[i]);
    }
    free(t->hdr_names);
    free(t->hdr_vals);
    json_decref(t->body);
    jpath_free(&t->id_path);
    jpath_free(&t->error_path);
    jpath_free(&t->items_path);
    jpath_free(&t->cursor_path);
    recmap_free(&t->map);
    free(t->page_param);
    free(t->size_param);
    free(t->since_param);
    memset(t, 0, sizeof(*t));
}

/* Parse list.paging. */
static pg_status_t
cfg_paging(const json_t *obj, const char *path, optpl_t *t, pg_err_t *err)
{
    static const char *const keys[] = { "type", "param", "size_param",
                                        "size", "start", "cursor_path",
                                        NULL };
    const char *type;
    pg_status_t st;

    if ((st = pg_conn_cfg_known(obj, path, keys, err)) != PG_OK
        || (st = pg_conn_cfg_str(obj, path, "type", 1, &type, err)) != PG_OK) {
        return st;
    }
    if (strcmp(type, "none") == 0) {
        t->paging = PAGE_NONE;
    } else if (strcmp(type, "page") == 0) {
        t->paging = PAGE_PAGE;
    } else if (strcmp(type, "offset") == 0) {
        t->paging = PAGE_OFFSET;
    } else if (strcmp(type, "cursor") == 0) {
        t->paging = PAGE_CURSOR;
    } else {
        pg_err_set(err, "%s.type: must be \"none\", \"page\", \"offset\" or "
                   "\"cursor\"", path);
        return PG_ERR_CONFIG;
    }
    if ((st = cfg_dup(obj, path, "param", t->paging != PAGE_NONE,
                      &t->page_param, err)) != PG_OK
        || (st = cfg_dup(obj, path, "size_param", 0, &t->size_param, err))
           != PG_OK
        || (st = pg_conn_cfg_uint(obj, path, "size", 1, PG_CONN_PAGE_MAX, 100,
                                  &t->page_size, err)) != PG_OK
        || (st = pg_conn_cfg_uint(obj, path, "start", 0, 1000000,
                                  t->paging == PAGE_PAGE ? 1 : 0,
                                  &t->first_page, err)) != PG_OK
        || (st = cfg_jpath(obj, path, "cursor_path",
                           t->paging == PAGE_CURSOR, &t->cursor_path, err))
           != PG_OK) {
        return st;
    }
    if (t->page_param != NULL && !param_name_ok(t->page_param)) {
        pg_err_set(err, "%s.param: must be 1-64 of A-Z a-z 0-9 _ - . ~ [ ]",
                   path);
        return PG_ERR_CONFIG;
    }
    if (t->size_param != NULL && !param_name_ok(t->size_param)) {
        pg_err_set(err, "%s.size_param: must be 1-64 of A-Z a-z 0-9 _ - . ~ "
                   "[ ]", path);
        return PG_ERR_CONFIG;
    }
    if (t->paging == PAGE_NONE && t->page_param != NULL) {
        pg_err_set(err, "%s.param: not used with type \"none\"", path);
        return PG_ERR_CONFIG;
    }
    if (t->paging != PAGE_CURSOR && t->cursor_path.set) {
        pg_err_set(err, "%s.cursor_path: only for type \"cursor\"", path);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* Parse list.since. */
static pg_status_t
cfg_since(const json_t *obj, const char *path, optpl_t *t, pg_err_t *err)
{
    static const char *const keys[] = { "param", "format", NULL };
    const char *fmt;
    pg_status_t st;

    if ((st = pg_conn_cfg_known(obj, path, keys, err)) != PG_OK
        || (st = cfg_dup(obj, path, "param", 1, &t->since_param, err))
           != PG_OK
        || (st = pg_conn_cfg_str(obj, path, "format", 0, &fmt, err))
           != PG_OK) {
        return st;
    }
    if (!param_name_ok(t->since_param)) {
        pg_err_set(err, "%s.param: must be 1-64 of A-Z a-z 0-9 _ - . ~ [ ]",
                   path);
        return PG_ERR_CONFIG;
    }
    if (fmt == NULL || strcmp(fmt, "ms") == 0) {
        t->since_format = TF_MS;
    } else if (strcmp(fmt, "s") == 0) {
        t->since_format = TF_S;
    } else if (strcmp(fmt, "iso8601") == 0) {
        t->since_format = TF_ISO;
    } else {
        pg_err_set(err, "%s.format: must be \"ms\", \"s\" or \"iso8601\"",
                   path);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/*
 * Compile one operation template from obj at path into t (owned by the
 * connector; optpl_free releases it). Every string template is
 * syntax-checked now. has_auth: the connector sends its own
 * Authorization header, so a template may not. PG_ERR_CONFIG with the
 * path on error.
 */
static pg_status_t
cfg_optpl(const json_t *obj, const char *path, int op, int has_auth,
          optpl_t *t, pg_err_t *err)
{
    static const char *const k_lookup[] = {
        "method", "path", "headers", "body", "id_path", "success_status",
        "retryable_status", "not_found_status", "error_path", "items_path",
        "map", NULL };
    static const char *const k_create[] = {
        "method", "path", "headers", "body", "id_path", "success_status",
        "retryable_status", "error_path", NULL };
    static const char *const k_write[] = {
        "method", "path", "headers", "body", "id_path", "success_status",
        "retryable_status", "not_found_status", "error_path", NULL };
    static const char *const k_list[] = {
        "method", "path", "headers", "body", "success_status",
        "retryable_status", "error_path", "items_path", "map", "paging",
        "since", "max_pages", NULL };
    const char *const *allowed = op == OP_LOOKUP ? k_lookup
                                 : op == OP_CREATE ? k_create
                                 : op == OP_LIST ? k_list : k_write;
    const char *s;
    json_t *h, *v;
    char p[PG_ERR_MSG_MAX];
    pg_err_t e;
    pg_status_t st;
    const char *k;
    size_t i = 0;

    t->present = 1;
    t->op = op;
    /* unknown keys, and keys another operation takes, are refused */
    if ((st = pg_conn_cfg_known(obj, path, allowed, err)) != PG_OK) {
        return st;
    }

    if ((st = pg_conn_cfg_str(obj, path, "method", 0, &s, err)) != PG_OK) {
        return st;
    }
    if (s == NULL) {
        s = OP_METHODS[op];
    }
    if (!token_ok(s, 16)) {
        pg_err_set(err, "%s.method: must be an HTTP method token", path);
        return PG_ERR_CONFIG;
    }
    if ((t->method = strdup(s)) == NULL) {
        return PG_ERR_NOMEM;
    }
    if ((st = cfg_dup(obj, path, "path", 1, &t->path, err)) != PG_OK) {
        return st;
    }
    if (t->path[0] != '/') {
        pg_err_set(err, "%s.path: must start with '/'", path);
        return PG_ERR_CONFIG;
    }
    for (i = 0; t->path[i] != '\0'; i++) {
        unsigned char c = (unsigned char)t->path[i];

        if (c <= 0x20 || c >= 0x7f || c == '#') {
            pg_err_set(err, "%s.path: no spaces, control bytes, '#' or "
                       "non-ASCII (placeholders are percent-encoded)", path);
            return PG_ERR_CONFIG;
        }
    }
    if ((st = tpl_expand(t->path, 0, 1, NULL, NULL, &e)) != PG_OK) {
        pg_err_set(err, "%s.path: %s", path, e.msg);
        return PG_ERR_CONFIG;
    }

    h = json_object_get(obj, "headers");
    if (h != NULL) {
        subpath(p, sizeof(p), path, "headers");
        if (!json_is_object(h) || json_object_size(h) > REST_HDRS_MAX) {
            pg_err_set(err, "%s: must be an object of at most %u headers", p,
                       REST_HDRS_MAX);
            return PG_ERR_CONFIG;
        }
        t->hdr_names = calloc(json_object_size(h) + 1, sizeof(char *));
        t->hdr_vals = calloc(json_object_size(h) + 1, sizeof(char *));
        if (t->hdr_names == NULL || t->hdr_vals == NULL) {
            return PG_ERR_NOMEM;
        }
        i = 0;
        json_object_foreach(h, k, v) {
            const char *hv;
            size_t j;

            if (!token_ok(k, 128)) {
                pg_err_set(err, "%s.%.64s: bad header name", p, k);
                return PG_ERR_CONFIG;
            }
            if (has_auth && strcasecmp(k, "Authorization") == 0) {
                pg_err_set(err, "%s.%s: set by auth (use auth type \"none\" "
                           "to send your own)", p, k);
                return PG_ERR_CONFIG;
            }
            if (strcasecmp(k, "Content-Length") == 0
                || strcasecmp(k, "Host") == 0
                || strcasecmp(k, "Transfer-Encoding") == 0) {
                pg_err_set(err, "%s.%s: may not be set", p, k);
                return PG_ERR_CONFIG;
            }
            if ((st = pg_conn_cfg_str(h, p, k, 1, &hv, err)) != PG_OK) {
                return st;
            }
            for (j = 0; hv[j] != '\0'; j++) {
                unsigned char c = (unsigned char)hv[j];

                if (c < 0x20 || c == 0x7f) {
                    pg_err_set(err, "%s.%s: control bytes (CR, LF, ...) are "
                               "not allowed", p, k);
                    return PG_ERR_CONFIG;
                }
            }
            if ((st = tpl_expand(hv, 0, 0, NULL, NULL, &e)) != PG_OK) {
                pg_err_set(err, "%s.%s: %s", p, k, e.msg);
                return PG_ERR_CONFIG;
            }
            t->hdr_names[i] = strdup(k);
            t->hdr_vals[i] = strdup(hv);
            t->nhdrs = i + 1;
            if (t->hdr_names[i] == NULL || t->hdr_vals[i] == NULL) {
                return PG_ERR_NOMEM;
            }
            i++;
        }
    }

    v = json_object_get(obj, "body");
    if (v != NULL) {
        if (body_check(v, 0, &e) != PG_OK) {
            pg_err_set(err, "%s.body: %s", path, e.msg);
            return PG_ERR_CONFIG;
        }
        t->body = json_deep_copy(v);
        if (t->body == NULL) {
            return PG_ERR_NOMEM;
        }
    }

    if ((st = cfg_jpath(obj, path, "id_path", op == OP_LOOKUP, &t->id_path,
                        err)) != PG_OK
        || (st = cfg_jpath(obj, path, "error_path", 0, &t->error_path, err))
           != PG_OK
        || (st = cfg_jpath(obj, path, "items_path", 0, &t->items_path, err))
           != PG_OK) {
        return st;
    }

    ss_set(&t->success, 200, 299);
    ss_set(&t->retryable, 429, 429);
    ss_set(&t->retryable, 500, 599);
    if (op != OP_CREATE && op != OP_LIST) {
        ss_set(&t->not_found, 404, 404);
    }
    if ((st = cfg_statusset(obj, path, "success_status", &t->success, err))
            != PG_OK
        || (st = cfg_statusset(obj, path, "retryable_status", &t->retryable,
                               err)) != PG_OK
        || (st = cfg_statusset(obj, path, "not_found_status", &t->not_found,
                               err)) != PG_OK) {
        return st;
    }

    v = json_object_get(obj, "map");
    if (op == OP_LIST && v == NULL) {
        pg_err_set(err, "%s.map: required", path);
        return PG_ERR_CONFIG;
    }
    if (v != NULL) {
        subpath(p, sizeof(p), path, "map");
        if ((st = cfg_recmap(v, p, op == OP_LIST, &t->map, err)) != PG_OK) {
            return st;
        }
    }

    if (op == OP_LIST) {
        t->paging = PAGE_NONE;
        t->page_size = PG_CONN_PAGE_MAX;
        v = json_object_get(obj, "paging");
        if (v != NULL) {
            subpath(p, sizeof(p), path, "paging");
            if ((st = cfg_paging(v, p, t, err)) != PG_OK) {
                return st;
            }
        }
        v = json_object_get(obj, "since");
        if (v != NULL) {
            subpath(p, sizeof(p), path, "since");
            if ((st = cfg_since(v, p, t, err)) != PG_OK) {
                return st;
            }
        }
        if ((st = pg_conn_cfg_uint(obj, path, "max_pages", 1, 1000000,
                                   REST_MAX_PAGES_DEFAULT, &t->max_pages,
                                   err)) != PG_OK) {
            return st;
        }
    }
    return PG_OK;
}

static void rest_free(pg_connector_t *c);

/* Exact-size copy of a secret buffer; the old buffer (malloc'd, n bytes
 * used) is wiped and freed. NULL on OOM (the old one is wiped anyway). */
static char *
secret_dup_wipe(char *s, size_t n)
{
    char *r = strndup(s, n);

    explicit_bzero(s, n);
    free(s);
    return r;
}

/* Read a secret from "<key>" or "<key>_file" (exactly one). */
static pg_status_t
cfg_secret(const json_t *obj, const char *path, const char *key,
           const char *fkey, char **out, pg_err_t *err)
{
    const char *v, *f;
    char *buf = NULL;
    size_t len = 0, i;
    pg_err_t e;
    pg_status_t st;

    *out = NULL;
    if ((st = pg_conn_cfg_str(obj, path, key, 0, &v, err)) != PG_OK
        || (st = pg_conn_cfg_str(obj, path, fkey, 0, &f, err)) != PG_OK) {
        return st;
    }
    if ((v == NULL) == (f == NULL)) {
        pg_err_set(err, "%s: set exactly one of \"%s\" and \"%s\"", path,
                   key, fkey);
        return PG_ERR_CONFIG;
    }
    if (v != NULL) {
        len = strlen(v);
        if (len > PG_REST_SECRET_MAX) {
            pg_err_set(err, "%s.%s: longer than %u bytes", path, key,
                       PG_REST_SECRET_MAX);
            return PG_ERR_CONFIG;
        }
        buf = strdup(v);
        if (buf == NULL) {
            return PG_ERR_NOMEM;
        }
    } else {
        st = pg_read_file(f, PG_REST_SECRET_MAX, 1, &buf, &len, &e);
        if (st != PG_OK) {
            /* e names the file and the OS reason, never its content */
            pg_err_set(err, "%s.%s: %s", path, fkey, e.msg);
            return st == PG_ERR_NOMEM ? st : PG_ERR_CONFIG;
        }
        if (len == 0) {
            free(buf);
            pg_err_set(err, "%s.%s: the file is empty", path, fkey);
            return PG_ERR_CONFIG;
        }
    }
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];

        if (c < 0x20 || c == 0x7f) {
            explicit_bzero(buf, len);
            free(buf);
            pg_err_set(err, "%s.%s: control bytes are not allowed", path,
                       v != NULL ? key : fkey);
            return PG_ERR_CONFIG;
        }
    }
    *out = buf;
    return PG_OK;
}

/* Parse auth {type: bearer|basic|none, ...}. */
static pg_status_t
cfg_auth(rest_t *c, const json_t *a, const char *path, pg_err_t *err)
{
    static const char *const kb[] = { "type", "token", "token_file", NULL };
    static const char *const kp[] = { "type", "user", "password",
                                      "password_file", NULL };
    static const char *const kn[] = { "type", NULL };
    const char *type, *user;
    char *tok = NULL;
    pg_status_t st;
    buf_t b = { NULL, 0, 0, PG_REST_SECRET_MAX + 64 };

    if (!json_is_object(a)) {
        pg_err_set(err, "%s: must be an object", path);
        return PG_ERR_CONFIG;
    }
    if ((st = pg_conn_cfg_str(a, path, "type", 1, &type, err)) != PG_OK) {
        return st;
    }
    if (strcmp(type, "bearer") == 0) {
        if ((st = pg_conn_cfg_known(a, path, kb, err)) != PG_OK
            || (st = cfg_secret(a, path, "token", "token_file", &tok, err))
               != PG_OK) {
            return st;
        }
        st = buf_str(&b, "Authorization: Bearer ");
        if (st == PG_OK) {
            st = buf_str(&b, tok);
        }
        explicit_bzero(tok, strlen(tok));
        free(tok);
        if (st != PG_OK) {
            if (b.p != NULL) {
                explicit_bzero(b.p, b.len);
            }
            free(b.p);
            return PG_ERR_NOMEM;
        }
        c->auth_header = secret_dup_wipe(b.p, b.len);
        return c->auth_header != NULL ? PG_OK : PG_ERR_NOMEM;
    }
    if (strcmp(type, "basic") == 0) {
        if ((st = pg_conn_cfg_known(a, path, kp, err)) != PG_OK
            || (st = pg_conn_cfg_str(a, path, "user", 1, &user, err))
               != PG_OK) {
            return st;
        }
        if (strchr(user, ':') != NULL || strlen(user) > 256) {
            pg_err_set(err, "%s.user: at most 256 bytes and no ':'", path);
            return PG_ERR_CONFIG;
        }
        if ((c->basic_user = strdup(user)) == NULL) {
            return PG_ERR_NOMEM;
        }
        return cfg_secret(a, path, "password", "password_file",
                          &c->basic_pass, err);
    }
    if (strcmp(type, "none") == 0) {
        return pg_conn_cfg_known(a, path, kn, err);
    }
    pg_err_set(err, "%s.type: must be \"bearer\", \"basic\" or \"none\"",
               path);
    return PG_ERR_CONFIG;
}

static const pg_connector_vt_t REST_VT;

/* Contract: see rest.h. */
pg_status_t
pg_rest_connector_new(const pg_host_t *host, pg_http_t *http,
                      const char *name, const json_t *cfg,
                      pg_connector_t **out, pg_err_t *err)
{
    char path[PG_ERR_MSG_MAX];

    if (name == NULL) {
        if (out != NULL) {
            *out = NULL;
        }
        pg_err_set(err, "rest connector: missing argument");
        return PG_ERR_INVALID;
    }
    if (snprintf(path, sizeof(path), "targets.%s.connector", name) < 0) {
        path[0] = '\0';
    }
    return pg_rest_connector_new_at(host, http, name, cfg, path, out, err);
}

/* Contract: see rest.h. */
pg_status_t
pg_rest_connector_new_at(const pg_host_t *host, pg_http_t *http,
                         const char *name, const json_t *cfg,
                         const char *path, pg_connector_t **out,
                         pg_err_t *err)
{
    static const char *const top[] = { "type", "base_url", "auth", "tls",
                                       "timeout_ms", "connect_timeout_ms",
                                       "max_response", "operations", NULL };
    static const char *const tlsk[] = { "ca_file", "client_cert",
                                        "client_key", NULL };
    rest_t *c;
    const char *s, *pfx;
    json_t *ops, *v;
    char p[PG_ERR_MSG_MAX];
    pg_status_t st;
    size_t i, n;
    int k;

    if (out != NULL) {
        *out = NULL;
    }
    if (host == NULL || http == NULL || name == NULL || cfg == NULL
        || path == NULL || strlen(path) > 256 || out == NULL) {
        pg_err_set(err, "rest connector: missing argument");
        return PG_ERR_INVALID;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return PG_ERR_NOMEM;
    }
    c->base.vt = &REST_VT;
    c->base.host = host;
    c->http = http;
    c->base.name = strdup(name);
    c->prefix = strdup(path);
    if (c->base.name == NULL || c->prefix == NULL) {
        st = PG_ERR_NOMEM;
        goto fail;
    }
    pfx = c->prefix;
    if ((st = pg_conn_cfg_known(cfg, pfx, top, err)) != PG_OK
        || (st = pg_conn_cfg_str(cfg, pfx, "type", 0, &s, err)) != PG_OK) {
        goto fail;
    }
    if (s != NULL && strcmp(s, "rest") != 0) {
        pg_err_set(err, "%s.type: must be \"rest\"", pfx);
        st = PG_ERR_CONFIG;
        goto fail;
    }
    if ((st = pg_conn_cfg_str(cfg, pfx, "base_url", 1, &s, err)) != PG_OK) {
        goto fail;
    }
    n = strlen(s);
    if (n > 2048
        || (strncmp(s, "http://", 7) != 0 && strncmp(s, "https://", 8) != 0)) {
        pg_err_set(err, "%s.base_url: must be an http:// or https:// URL of "
                   "at most 2048 bytes", pfx);
        st = PG_ERR_CONFIG;
        goto fail;
    }
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (ch <= 0x20 || ch >= 0x7f || ch == '?' || ch == '#' || ch == '@'
            || ch == '{' || ch == '}') {
            pg_err_set(err, "%s.base_url: no query, fragment, user info, "
                       "spaces or control bytes", pfx);
            st = PG_ERR_CONFIG;
            goto fail;
        }
    }
    while (n > 0 && s[n - 1] == '/') {
        n--;
    }
    if ((c->base_url = strndup(s, n)) == NULL) {
        st = PG_ERR_NOMEM;
        goto fail;
    }

    v = json_object_get(cfg, "auth");
    subpath(p, sizeof(p), pfx, "auth");
    if (v == NULL) {
        pg_err_set(err, "%s: required", p);
        st = PG_ERR_CONFIG;
        goto fail;
    }
    if ((st = cfg_auth(c, v, p, err)) != PG_OK) {
        goto fail;
    }

    v = json_object_get(cfg, "tls");
    if (v != NULL) {
        subpath(p, sizeof(p), pfx, "tls");
        if ((st = pg_conn_cfg_known(v, p, tlsk, err)) != PG_OK
            || (st = cfg_dup(v, p, "ca_file", 0, &c->ca_file, err)) != PG_OK
            || (st = cfg_dup(v, p, "client_cert", 0, &c->client_cert, err))
               != PG_OK
            || (st = cfg_dup(v, p, "client_key", 0, &c->client_key, err))
               != PG_OK) {
            goto fail;
        }
        {
            static const char *const names[] = { "ca_file", "client_cert",
                                                 "client_key" };
            const char *files[3];

            files[0] = c->ca_file;
            files[1] = c->client_cert;
            files[2] = c->client_key;
            for (i = 0; i < 3; i++) {
                if (files[i] != NULL && access(files[i], R_OK) != 0) {
                    pg_err_set(err, "%s.%s: cannot read \"%s\"", p, names[i],
                               files[i]);
                    st = PG_ERR_CONFIG;
                    goto fail;
                }
            }
        }
        if ((c->client_cert == NULL) != (c->client_key == NULL)) {
            pg_err_set(err, "%s: set both client_cert and client_key or "
                       "neither", p);
            st = PG_ERR_CONFIG;
            goto fail;
        }
    }

    if ((st = pg_conn_cfg_uint(cfg, pfx, "timeout_ms", 10, 120000, 5000,
                               &c->timeout_ms, err)) != PG_OK
        || (st = pg_conn_cfg_uint(cfg, pfx, "connect_timeout_ms", 10, 60000,
                                  c->timeout_ms < 2000 ? c->timeout_ms : 2000,
                                  &c->connect_timeout_ms, err)) != PG_OK
        || (st = pg_conn_cfg_uint(cfg, pfx, "max_response", 1024,
                                  PG_REST_MAX_RESPONSE_MAX,
                                  PG_REST_MAX_RESPONSE_DEFAULT,
                                  &c->max_response, err)) != PG_OK) {
        goto fail;
    }
    if (c->connect_timeout_ms > c->timeout_ms) {
        pg_err_set(err, "%s.connect_timeout_ms: must not exceed timeout_ms",
                   pfx);
        st = PG_ERR_CONFIG;
        goto fail;
    }

    ops = json_object_get(cfg, "operations");
    subpath(p, sizeof(p), pfx, "operations");
    if (ops == NULL) {
        pg_err_set(err, "%s: required", p);
        st = PG_ERR_CONFIG;
        goto fail;
    }
    if ((st = pg_conn_cfg_known(ops, p, OP_KEYS, err))
        != PG_OK) {
        goto fail;
    }
    for (k = 0; k < OP_COUNT; k++) {
        char op_path[PG_ERR_MSG_MAX];

        v = json_object_get(ops, OP_NAMES[k]);
        subpath(op_path, sizeof(op_path), p, OP_NAMES[k]);
        if (v == NULL) {
            if (k == OP_LOOKUP || k == OP_CREATE) {
                pg_err_set(err, "%s: required", op_path);
                st = PG_ERR_CONFIG;
                goto fail;
            }
            continue;
        }
        if (!json_is_object(v)) {
            pg_err_set(err, "%s: must be an object", op_path);
            st = PG_ERR_CONFIG;
            goto fail;
        }
        if ((st = cfg_optpl(v, op_path, k,
                            c->auth_header != NULL || c->basic_user != NULL,
                            &c->op[k], err)) != PG_OK) {
            goto fail;
        }
    }

    c->base.caps = 0;
    if (c->op[OP_LIST].present) {
        c->base.caps |= PG_CONN_CAP_LIST;
        if (c->op[OP_LIST].since_param != NULL) {
            c->base.caps |= PG_CONN_CAP_INCREMENTAL;
        }
    }
    if (c->op[OP_DISABLE].present
        || (c->op[OP_UPDATE].present
            && body_uses_var(c->op[OP_UPDATE].body, V_ACTIVE))) {
        c->base.caps |= PG_CONN_CAP_DISABLE;
    }
    if (c->op[OP_LOOKUP].map.groups.set && c->op[OP_UPDATE].present
        && body_uses_var(c->op[OP_UPDATE].body, V_GROUPS)) {
        c->base.caps |= PG_CONN_CAP_GROUPS;
    }
    *out = &c->base;
    return PG_OK;

fail:
    if (st == PG_ERR_NOMEM) {
        pg_err_set(err, "%s: out of memory", c->prefix ? c->prefix : "rest");
    }
    rest_free(&c->base);
    return st;
}

/* Free the connector; every request must be finished or cancelled. */
static void
rest_free(pg_connector_t *base)
{
    rest_t *c = (rest_t *)base;
    int k;

    if (c == NULL) {
        return;
    }
    for (k = 0; k < OP_COUNT; k++) {
        optpl_free(&c->op[k]);
    }
    if (c->auth_header != NULL) {
        explicit_bzero(c->auth_header, strlen(c->auth_header));
    }
    if (c->basic_pass != NULL) {
        explicit_bzero(c->basic_pass, strlen(c->basic_pass));
    }
    free(c->auth_header);
    free(c->basic_user);
    free(c->basic_pass);
    free(c->ca_file);
    free(c->client_cert);
    free(c->client_key);
    free(c->base_url);
    free(c->prefix);
    free(c->base.name);
    free(c);
}

/* ---- requests ---------------------------------------------------------- */

typedef enum kind { K_ENSURE, K_DISABLE, K_REMOVE, K_LIST } kind_t;

struct pg_conn_req {
    rest_t *c;
    kind_t kind;
    int step;                  /* OP_* of the request in flight */
    pg_conn_cb cb;
    pg_conn_page_cb page;
    pg_conn_done_cb done;
    void *arg;
    pg_http_op_t *op;          /* in flight, or NULL */
    ctx_t ctx;                 /* strings/attrs/groups owned (copies) */
    char *key_copy, *id_copy, *identity_copy;
    char **desired;            /* copy of a->groups */
    size_t ndesired;
    char **revoke;             /* copy of a->revoke */
    size_t nrevoke;
    char **merged;             /* current - revoke + desired (lookup) */
    size_t nmerged;
    json_t *attrs_copy;
    char *found_id;            /* id found by lookup / returned by create */
    json_t *changes;           /* array of changed names */
    /* list */
    uint64_t since_ms;
    uint64_t page_no;
    uint64_t offset;
    char *cursor;
    unsigned pages;
    int in_page_cb;
    int cancelled;
};

/* Free n malloc'd strings and their array. */
static void
strv_free(char **v, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        free(v[i]);
    }
    free(v);
}

/* Copy n strings (none NULL, each at most PG_CONN_KEY_MAX bytes). */
static pg_status_t
strv_dup(const char *const *in, size_t n, char ***out, size_t *nout)
{
    char **v;
    size_t i;

    *out = NULL;
    *nout = 0;
    if (n == 0) {
        return PG_OK;
    }
    if (in == NULL || n > 4096) {
        return PG_ERR_INVALID;
    }
    v = calloc(n, sizeof(char *));
    if (v == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        if (in[i] == NULL
            || strnlen(in[i], PG_CONN_KEY_MAX + 1) > PG_CONN_KEY_MAX) {
            strv_free(v, i);
            return PG_ERR_INVALID;
        }
        if ((v[i] = strdup(in[i])) == NULL) {
            strv_free(v, i);
            return PG_ERR_NOMEM;
        }
    }
    *out = v;
    *nout = n;
    return PG_OK;
}

/* Free a request and everything it owns (not its HTTP op: the caller
 * cancels that first, or it has completed). */
static void
req_free(pg_conn_req_t *r)
{
    if (r == NULL) {
        return;
    }
    free(r->key_copy);
    free(r->id_copy);
    free(r->identity_copy);
    json_decref(r->attrs_copy);
    strv_free(r->desired, r->ndesired);
    strv_free(r->revoke, r->nrevoke);
    strv_free(r->merged, r->nmerged);
    free(r->found_id);
    json_decref(r->changes);
    free(r->cursor);
    free(r);
}

/* Length-checked copy of an account field (NULL stays NULL). */
static int
dup_field(const char *s, char **out)
{
    *out = NULL;
    if (s == NULL) {
        return 0;
    }
    if (strnlen(s, PG_CONN_KEY_MAX + 1) > PG_CONN_KEY_MAX) {
        return -1;
    }
    *out = strdup(s);
    return *out == NULL ? -2 : 0;
}

/*
 * New request for an account operation: copies a (key, id, identity,
 * attrs, groups, active). PG_ERR_INVALID for a bad account (missing or
 * over-long key/id, attrs not an object, a NULL group).
 */
static pg_status_t
req_new(rest_t *c, kind_t kind, const pg_account_t *a, pg_conn_req_t **out)
{
    pg_conn_req_t *r;
    pg_status_t st;
    int rc;

    *out = NULL;
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return PG_ERR_NOMEM;
    }
    r->c = c;
    r->kind = kind;
    if (a != NULL) {
        if (a->key == NULL || a->key[0] == '\0'
            || (a->attrs != NULL && !json_is_object(a->attrs))) {
            req_free(r);
            return PG_ERR_INVALID;
        }
        if ((rc = dup_field(a->key, &r->key_copy)) != 0
            || (rc = dup_field(a->id != NULL && a->id[0] != '\0' ? a->id
                                                                  : NULL,
                               &r->id_copy)) != 0
            || (rc = dup_field(a->identity, &r->identity_copy)) != 0) {
            req_free(r);
            return rc == -1 ? PG_ERR_INVALID : PG_ERR_NOMEM;
        }
        if (a->attrs != NULL
            && (r->attrs_copy = json_deep_copy(a->attrs)) == NULL) {
            req_free(r);
            return PG_ERR_NOMEM;
        }
        if ((st = strv_dup(a->groups, a->ngroups, &r->desired,
                           &r->ndesired)) != PG_OK
            || (st = strv_dup(a->revoke, a->nrevoke, &r->revoke,
                              &r->nrevoke)) != PG_OK) {
            req_free(r);
            return st;
        }
        r->ctx.groups = r->desired;
        r->ctx.ngroups = r->ndesired;
        r->ctx.key = r->key_copy;
        r->ctx.id = r->id_copy;
        r->ctx.identity = r->identity_copy;
        r->ctx.attrs = r->attrs_copy;
        r->ctx.active = a->active ? 1 : 0;
    }
    r->changes = json_array();
    if (r->changes == NULL) {
        req_free(r);
        return PG_ERR_NOMEM;
    }
    *out = r;
    return PG_OK;
}

/* Append "&name=value" (or "?...") to the URL; value percent-encoded. */
static pg_status_t
url_param(buf_t *u, const char *name, const char *value)
{
    char *e = pg_urlencode(value, strlen(value));
    pg_status_t st;

    if (e == NULL) {
        return PG_ERR_NOMEM;
    }
    st = buf_str(u, strchr(u->p, '?') != NULL ? "&" : "?");
    if (st == PG_OK) {
        st = buf_str(u, name);
    }
    if (st == PG_OK) {
        st = buf_str(u, "=");
    }
    if (st == PG_OK) {
        st = buf_str(u, e);
    }
    free(e);
    return st;
}

/* The list request's paging and since parameters. */
static pg_status_t
list_params(pg_conn_req_t *r, const optpl_t *t, buf_t *u)
{
    char num[64];
    pg_status_t st = PG_OK;

    if (t->paging == PAGE_PAGE || t->paging == PAGE_OFFSET) {
        snprintf(num, sizeof(num), "%llu",
                 (unsigned long long)(t->paging == PAGE_PAGE ? r->page_no
                                                             : r->offset));
        st = url_param(u, t->page_param, num);
    } else if (t->paging == PAGE_CURSOR && r->cursor != NULL) {
        st = url_param(u, t->page_param, r->cursor);
    }
    if (st == PG_OK && t->size_param != NULL) {
        snprintf(num, sizeof(num), "%u", t->page_size);
        st = url_param(u, t->size_param, num);
    }
    if (st == PG_OK && t->since_param != NULL && r->since_ms > 0) {
        if (t->since_format == TF_ISO) {
            time_t secs = (time_t)(r->since_ms / 1000);
            struct tm tm;

            if (gmtime_r(&secs, &tm) == NULL) {
                return PG_ERR_INVALID;
            }
            strftime(num, 32, "%Y-%m-%dT%H:%M:%S", &tm);
            snprintf(num + strlen(num), sizeof(num) - strlen(num), ".%03uZ",
                     (unsigned)(r->since_ms % 1000));
        } else {
            snprintf(num, sizeof(num), "%llu",
                     (unsigned long long)(t->since_format == TF_S
                                              ? r->since_ms / 1000
                                              : r->since_ms));
        }
        st = url_param(u, t->since_param, num);
    }
    return st;
}

static void on_http(void *arg, pg_status_t st, const pg_http_response_t *resp);

/*
 * Render template op for request r and start it on pg_http. On failure
 * nothing was started and err says why (no secret: the auth header and
 * the password are never rendered into a message).
 */
static pg_status_t
req_send(pg_conn_req_t *r, int op, pg_err_t *err)
{
    rest_t *c = r->c;
    const optpl_t *t = &c->op[op];
    buf_t url = { NULL, 0, 0, REST_URL_MAX };
    const char *hdrs[REST_HDRS_MAX + 4];
    char *own[REST_HDRS_MAX];
    size_t nh = 0, no = 0, i;
    char *body = NULL;
    pg_http_request_t hr;
    pg_status_t st;
    pg_err_t e;

    r->step = op;
    st = buf_str(&url, c->base_url);
    if (st == PG_OK) {
        st = tpl_expand(t->path, 0, 1, &r->ctx, &url, &e);
        if (st != PG_OK && st != PG_ERR_NOMEM) {
            pg_err_set(err, "%s: path: %s", OP_NAMES[op],
                       st == PG_ERR_TOO_LARGE ? "URL too long" : e.msg);
        }
    }
    if (st == PG_OK && op == OP_LIST) {
        st = list_params(r, t, &url);
        if (st != PG_OK) {
            pg_err_set(err, "list: cannot add paging parameters");
        }
    }
    hdrs[nh++] = "Accept: application/json";
    if (st == PG_OK && t->body != NULL) {
        json_t *b = NULL;
        int omit = 0;

        hdrs[nh++] = "Content-Type: application/json";
        st = body_render(t->body, &r->ctx, &b, &omit, &e);
        if (st == PG_OK) {
            body = json_dumps(b != NULL ? b : json_null(),
                              JSON_COMPACT | JSON_ENCODE_ANY);
            json_decref(b);
            if (body == NULL) {
                st = PG_ERR_NOMEM;
            } else if (strlen(body) > REST_BODY_MAX) {
                st = PG_ERR_TOO_LARGE;
                pg_err_set(err, "%s: body over %u bytes", OP_NAMES[op],
                           REST_BODY_MAX);
            }
        } else if (st != PG_ERR_NOMEM) {
            pg_err_set(err, "%s: body: %s", OP_NAMES[op], e.msg);
        }
    }
    if (c->auth_header != NULL) {
        hdrs[nh++] = c->auth_header;
    }
    for (i = 0; st == PG_OK && i < t->nhdrs; i++) {
        buf_t h = { NULL, 0, 0, REST_HDR_MAX };
        size_t j;

        st = buf_str(&h, t->hdr_names[i]);
        if (st == PG_OK) {
            st = buf_str(&h, ": ");
        }
        if (st == PG_OK) {
            st = tpl_expand(t->hdr_vals[i], 0, 0, &r->ctx, &h, &e);
            if (st != PG_OK && st != PG_ERR_NOMEM) {
                pg_err_set(err, "%s: header %s: %s", OP_NAMES[op],
                           t->hdr_names[i],
                           st == PG_ERR_TOO_LARGE ? "too long" : e.msg);
            }
        }
        for (j = 0; st == PG_OK && j < h.len; j++) {
            unsigned char ch = (unsigned char)h.p[j];

            if (ch < 0x20 || ch == 0x7f) {
                st = PG_ERR_INVALID;
                pg_err_set(err, "%s: header %s: a value has control bytes "
                           "(CR, LF, ...)", OP_NAMES[op], t->hdr_names[i]);
            }
        }
        if (st != PG_OK) {
            free(h.p);
            break;
        }
        own[no++] = h.p;
        hdrs[nh++] = h.p;
    }
    if (st == PG_OK) {
        memset(&hr, 0, sizeof(hr));
        hr.method = t->method;
        hr.url = url.p;
        hr.headers = hdrs;
        hr.nheaders = nh;
        hr.body = body;
        hr.body_len = body != NULL ? strlen(body) : 0;
        hr.basic_user = c->basic_user;
        hr.basic_pass = c->basic_pass;
        hr.timeout_ms = c->timeout_ms;
        hr.connect_timeout_ms = c->connect_timeout_ms;
        hr.max_response = c->max_response;
        hr.tls.ca_file = c->ca_file;
        hr.tls.client_cert = c->client_cert;
        hr.tls.client_key = c->client_key;
        st = pg_http_start(c->http, &hr, on_http, r, &r->op);
        if (st != PG_OK) {
            pg_err_set(err, "%s: cannot start the HTTP request (%s)",
                       OP_NAMES[op], pg_status_str(st));
        } else {
            pg_log(c->base.host, PG_LOG_DEBUG, "rest %s: %s %s",
                   c->base.name, OP_NAMES[op], t->method);
        }
    }
    if (st == PG_ERR_NOMEM) {
        pg_err_set(err, "%s: out of memory", OP_NAMES[op]);
    }
    for (i = 0; i < no; i++) {
        free(own[i]);
    }
    free(url.p);
    free(body);
    return st;
}

/* Deliver the final result (ensure/disable/remove) and free r. */
static void
finish(pg_conn_req_t *r, pg_status_t st, pg_conn_outcome_t oc,
       int retryable, uint64_t retry_after_ms, const char *error)
{
    pg_conn_result_t res;

    if (r->kind == K_LIST) {
        r->done(r->arg, st, error != NULL ? error : "");
        req_free(r);
        return;
    }
    memset(&res, 0, sizeof(res));
    res.outcome = st == PG_OK ? oc : PG_CONN_UNCHANGED;
    res.id = r->found_id != NULL ? r->found_id : "";
    res.changes = json_array_size(r->changes) > 0 ? r->changes : NULL;
    res.retryable = st == PG_OK ? 0 : retryable;
    res.retry_after_ms = st == PG_OK ? 0 : retry_after_ms;
    res.error = error != NULL ? error : "";
    r->cb(r->arg, st, &res);
    req_free(r);
}

static void
fail(pg_conn_req_t *r, pg_status_t st, int retryable, const char *fmt, ...)
    PG_PRINTF(4, 5);

/* finish() with an error message (capped at PG_CONN_ERROR_MAX). */
static void
fail(pg_conn_req_t *r, pg_status_t st, int retryable, const char *fmt, ...)
{
    char msg[PG_CONN_ERROR_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    finish(r, st, PG_CONN_UNCHANGED, retryable, 0, msg);
}

/* Retry-After (delta-seconds or IMF-fixdate) in ms; 0 when absent/bad. */
static uint64_t
retry_after(const pg_http_response_t *resp)
{
    const char *v = pg_http_response_header(resp, "Retry-After");
    uint64_t secs;
    struct tm tm;
    const char *end;
    time_t when, now;
    size_t n;

    if (v == NULL) {
        return 0;
    }
    while (*v == ' ' || *v == '\t') {
        v++;
    }
    n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t')) {
        n--;
    }
    if (n > 0 && n <= 12 && pg_parse_u64(v, n, &secs) == PG_OK) {
        return secs > REST_RETRY_AFTER_MAX_MS / 1000 ? REST_RETRY_AFTER_MAX_MS
                                                     : secs * 1000;
    }
    memset(&tm, 0, sizeof(tm));
    end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL) {
        return 0;
    }
    when = timegm(&tm);
    now = time(NULL);
    if (when <= now) {
        return 0;
    }
    secs = (uint64_t)(when - now);
    return secs > REST_RETRY_AFTER_MAX_MS / 1000 ? REST_RETRY_AFTER_MAX_MS
                                                 : secs * 1000;
}

/*
 * Fail r for a response whose status is neither success nor (where it
 * applies) not-found: map the status to a pg_status_t, mark retryable
 * statuses and honour Retry-After; add the target's message (error_path,
 * control bytes dropped, cut at REST_ERRMSG_MAX).
 */
static void
fail_status(pg_conn_req_t *r, const optpl_t *t,
            const pg_http_response_t *resp)
{
    long s = resp->status;
    int retry = ss_has(&t->retryable, s);
    pg_status_t st;
    char tmsg[REST_ERRMSG_MAX + 1] = "";
    char msg[PG_CONN_ERROR_MAX];
    uint64_t ra = 0;

    if (s == 401 || s == 403) {
        st = PG_ERR_DENIED;
    } else if (s == 409) {
        st = PG_ERR_CONFLICT;
    } else if (s == 404) {
        st = PG_ERR_NOT_FOUND;
    } else if (s == 429 || retry) {
        st = PG_ERR_BUSY;
    } else if (s >= 400 && s < 500) {
        st = PG_ERR_INVALID;
    } else {
        st = PG_ERR_HTTP;
    }
    if (retry) {
        ra = retry_after(resp);
    }
    if (t->error_path.set && resp->body_len > 0) {
        json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
        json_t *m = j != NULL ? jpath_get(&t->error_path, j) : NULL;

        if (json_is_string(m)) {
            pg_header_value_clean(json_string_value(m),
                                  json_string_length(m), tmsg, sizeof(tmsg));
        }
        json_decref(j);
    }
    snprintf(msg, sizeof(msg), "%s: HTTP %ld%s%s", OP_NAMES[t->op], s,
             tmsg[0] != '\0' ? ": " : "", tmsg);
    pg_log(r->c->base.host, PG_LOG_INFO, "rest %s: %s", r->c->base.name, msg);
    finish(r, st, PG_CONN_UNCHANGED, retry, ra, msg);
}

/* Parse a response body (already capped by pg_http) as JSON, or NULL. */
static json_t *
parse_body(const pg_http_response_t *resp)
{
    if (resp->body == NULL || resp->body_len == 0) {
        return NULL;
    }
    return json_loadb(resp->body, resp->body_len, JSON_DECODE_ANY, NULL);
}

/* Set r->found_id from the value at p in root; -1 when missing/bad. */
static int
take_id(pg_conn_req_t *r, const jpath_t *p, const json_t *root)
{
    char id[PG_CONN_KEY_MAX + 1];
    char *d;

    if (scalar_text(jpath_get(p, root), id, sizeof(id)) != 0 || id[0] == '\0'
        || json_is_boolean(jpath_get(p, root))) {
        return -1;
    }
    d = strdup(id);
    if (d == NULL) {
        return -1;
    }
    free(r->found_id);
    r->found_id = d;
    /* later templates ({id}, ${id}) use the target's id */
    r->ctx.id = r->found_id;
    return 0;
}

/* Truthiness of a read-back "active" value (bool, number, string). */
static int
truthy(const json_t *v)
{
    const char *s;

    if (json_is_boolean(v)) {
        return json_is_true(v);
    }
    if (json_is_integer(v)) {
        return json_integer_value(v) != 0;
    }
    if (json_is_real(v)) {
        return json_real_value(v) != 0.0;
    }
    s = json_string_value(v);
    if (s != NULL) {
        return !(strcasecmp(s, "false") == 0 || strcmp(s, "0") == 0
                 || strcasecmp(s, "no") == 0 || strcasecmp(s, "inactive") == 0
                 || strcasecmp(s, "disabled") == 0 || s[0] == '\0');
    }
    return 0;
}

/* Scalars equal as text (so "42" matches 42 and "true" matches true). */
static int
scalar_eq(const json_t *a, const json_t *b)
{
    char ta[PG_CONN_KEY_MAX * 4], tb[PG_CONN_KEY_MAX * 4];

    if (json_is_number(a) && json_is_number(b)) {
        return json_number_value(a) == json_number_value(b);
    }
    if (scalar_text(a, ta, sizeof(ta)) != 0
        || scalar_text(b, tb, sizeof(tb)) != 0) {
        return json_equal((json_t *)a, (json_t *)b);
    }
    return strcmp(ta, tb) == 0;
}

/* Desired value d equals read-back value v (arrays compare as sets). */
static int
value_eq(const json_t *d, const json_t *v)
{
    size_t i, j;
    json_t *x, *y;

    if (v == NULL) {
        return json_is_null(d);
    }
    if (json_is_array(d) || json_is_array(v)) {
        if (!json_is_array(d) || !json_is_array(v)
            || json_array_size(d) != json_array_size(v)) {
            return 0;
        }
        json_array_foreach(d, i, x) {
            int found = 0;

            json_array_foreach(v, j, y) {
                if (scalar_eq(x, y)) {
                    found = 1;
                    break;
                }
            }
            if (!found) {
                return 0;
            }
        }
        return 1;
    }
    if (json_is_object(d) || json_is_object(v)) {
        return json_equal((json_t *)d, (json_t *)v);
    }
    if (json_is_null(d) || json_is_null(v)) {
        return json_is_null(d) && json_is_null(v);
    }
    return scalar_eq(d, v);
}

/* 1 when s is one of the n strings of v. */
static int
strv_has(char *const *v, size_t n, const char *s)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (strcmp(v[i], s) == 0) {
            return 1;
        }
    }
    return 0;
}

/*
 * Memberships (lookup.map.groups): the current groups of the record are
 * kept except those in revoke (unless also desired); desired ones that
 * are missing are added. The result becomes "${groups}" for the update,
 * so memberships provgate does not manage are never dropped. *changed is
 * set when the result differs from the current list. keep: ignore desired
 * and revoke (the result is the current list: disable through update).
 */
static pg_status_t
merge_groups(pg_conn_req_t *r, const json_t *cur, int keep, int *changed)
{
    size_t i, n = json_array_size(cur), cap;
    char name[PG_CONN_KEY_MAX + 1];
    json_t *v;

    *changed = 0;
    if (n > 4096) {
        return PG_ERR_TOO_LARGE;
    }
    cap = n + r->ndesired + 1;
    r->merged = calloc(cap, sizeof(char *));
    if (r->merged == NULL) {
        return PG_ERR_NOMEM;
    }
    json_array_foreach(cur, i, v) {
        if (scalar_text(v, name, sizeof(name)) != 0
            || strv_has(r->merged, r->nmerged, name)) {
            continue;
        }
        if (!keep && strv_has(r->revoke, r->nrevoke, name)
            && !strv_has(r->desired, r->ndesired, name)) {
            *changed = 1;
            continue;
        }
        if ((r->merged[r->nmerged] = strdup(name)) == NULL) {
            return PG_ERR_NOMEM;
        }
        r->nmerged++;
    }
    for (i = 0; !keep && i < r->ndesired; i++) {
        if (strv_has(r->merged, r->nmerged, r->desired[i])) {
            continue;
        }
        *changed = 1;
        if ((r->merged[r->nmerged] = strdup(r->desired[i])) == NULL) {
            return PG_ERR_NOMEM;
        }
        r->nmerged++;
    }
    r->ctx.groups = r->merged;
    r->ctx.ngroups = r->nmerged;
    return PG_OK;
}

/* Names of mapped attributes (and "active", "groups") whose read-back
 * differs from the desired state; appended to r->changes. */
static pg_status_t
diff_record(pg_conn_req_t *r, const recmap_t *m, const json_t *rec)
{
    size_t i;
    int changed;
    pg_status_t st;

    for (i = 0; i < m->nattrs; i++) {
        json_t *d = r->ctx.attrs != NULL
                        ? json_object_get(r->ctx.attrs, m->attrs[i].name)
                        : NULL;

        if (d == NULL) {
            continue;          /* not desired: provgate does not manage it */
        }
        if (!value_eq(d, jpath_get(&m->attrs[i].path, rec))
            && json_array_append_new(r->changes,
                                     json_string(m->attrs[i].name)) != 0) {
            return PG_ERR_NOMEM;
        }
    }
    if (m->active.set
        && truthy(jpath_get(&m->active, rec)) != r->ctx.active
        && json_array_append_new(r->changes, json_string("active")) != 0) {
        return PG_ERR_NOMEM;
    }
    if (m->groups.set) {
        st = merge_groups(r, jpath_get(&m->groups, rec), 0, &changed);
        if (st != PG_OK) {
            return st;
        }
        if (changed
            && json_array_append_new(r->changes, json_string("groups")) != 0) {
            return PG_ERR_NOMEM;
        }
    }
    return PG_OK;
}

/* Start step op or fail r with the reason. */
static void
next_step(pg_conn_req_t *r, int op)
{
    pg_err_t e;
    pg_status_t st;

    e.msg[0] = '\0';
    st = req_send(r, op, &e);
    if (st != PG_OK) {
        fail(r, st == PG_ERR_NOT_FOUND ? PG_ERR_INVALID : st, 0, "%s",
             e.msg);
    }
}

/* Lookup answered: find the record and continue per operation kind. */
static void
after_lookup(pg_conn_req_t *r, const pg_http_response_t *resp)
{
    rest_t *c = r->c;
    const optpl_t *t = &c->op[OP_LOOKUP];
    json_t *body = NULL, *sel, *rec = NULL, *it;
    size_t i, nmatch = 0;

    if (ss_has(&t->success, resp->status)) {
        body = parse_body(resp);
        if (body == NULL) {
            fail(r, PG_ERR_HTTP, 0, "lookup: the response is not JSON");
            return;
        }
        sel = t->items_path.set ? jpath_get(&t->items_path, body) : body;
        if (json_is_array(sel)) {
            json_array_foreach(sel, i, it) {
                char k[PG_CONN_KEY_MAX + 1];

                if (t->map.key.set
                    && (scalar_text(jpath_get(&t->map.key, it), k, sizeof(k))
                            != 0
                        || strcmp(k, r->ctx.key) != 0)) {
                    continue;
                }
                if (!json_is_object(it)) {
                    continue;
                }
                nmatch++;
                rec = it;
            }
        } else if (json_is_object(sel)) {
            char k[PG_CONN_KEY_MAX + 1];

            if (!t->map.key.set
                || (scalar_text(jpath_get(&t->map.key, sel), k, sizeof(k))
                        == 0
                    && strcmp(k, r->ctx.key) == 0)) {
                rec = sel;
                nmatch = 1;
            }
        } else {
            json_decref(body);
            fail(r, PG_ERR_HTTP, 0, "lookup: %s",
                 sel == NULL ? "items_path not found in the response"
                             : "the response holds no object or array");
            return;
        }
        if (nmatch > 1) {
            json_decref(body);
            fail(r, PG_ERR_CONFLICT, 0, "lookup: %zu accounts match the key",
                 nmatch);
            return;
        }
    } else if (!ss_has(&t->not_found, resp->status)) {
        fail_status(r, t, resp);
        return;
    }

    if (rec != NULL && take_id(r, &t->id_path, rec) != 0) {
        json_decref(body);
        fail(r, PG_ERR_HTTP, 0, "lookup: no usable id at id_path in the "
             "record");
        return;
    }

    switch (r->kind) {
    case K_ENSURE:
        if (rec == NULL) {
            json_decref(body);
            next_step(r, OP_CREATE);
            return;
        }
        if (diff_record(r, &t->map, rec) != PG_OK) {
            json_decref(body);
            fail(r, PG_ERR_HTTP, 0, "ensure: cannot compare the record "
                 "(out of memory or over 4096 groups)");
            return;
        }
        json_decref(body);
        if (json_array_size(r->changes) == 0) {
            finish(r, PG_OK, PG_CONN_UNCHANGED, 0, 0, "");
        } else if (c->op[OP_UPDATE].present) {
            next_step(r, OP_UPDATE);
        } else if (c->op[OP_DISABLE].present && !r->ctx.active
                   && json_array_size(r->changes) == 1
                   && strcmp(json_string_value(json_array_get(r->changes, 0)),
                             "active") == 0) {
            next_step(r, OP_DISABLE);
        } else {
            fail(r, PG_ERR_INVALID, 0, "ensure: the account differs but no "
                 "update operation is configured");
        }
        return;
    case K_DISABLE:
        if (rec == NULL) {
            json_decref(body);
            fail(r, PG_ERR_NOT_FOUND, 0, "disable: no such account");
            return;
        }
        if (t->map.active.set && !truthy(jpath_get(&t->map.active, rec))) {
            json_decref(body);
            finish(r, PG_OK, PG_CONN_UNCHANGED, 0, 0, "");
            return;
        }
        if (!c->op[OP_DISABLE].present && t->map.groups.set) {
            int changed;

            /* the update body's "${groups}" must not change memberships */
            if (merge_groups(r, jpath_get(&t->map.groups, rec), 1, &changed)
                != PG_OK) {
                json_decref(body);
                fail(r, PG_ERR_HTTP, 0, "disable: cannot read the "
                     "memberships (out of memory or over 4096 groups)");
                return;
            }
        }
        json_decref(body);
        r->ctx.active = 0;
        next_step(r, c->op[OP_DISABLE].present ? OP_DISABLE : OP_UPDATE);
        return;
    case K_REMOVE:
        json_decref(body);
        if (rec == NULL) {
            finish(r, PG_OK, PG_CONN_REMOVED, 0, 0, "");
            return;
        }
        next_step(r, OP_DELETE);
        return;
    case K_LIST:
        break;
    }
    json_decref(body);
    fail(r, PG_ERR_INTERNAL, 0, "internal: bad request kind");
}

/* Parse a "modified" value: number (ms or s) or ISO 8601 text. */
static uint64_t
parse_modified(const json_t *v, tfmt_t unit)
{
    const char *s, *p;
    struct tm tm;
    time_t t;
    uint64_t ms = 0;
    long off = 0;

    if (json_is_integer(v) && json_integer_value(v) > 0) {
        return unit == TF_S ? (uint64_t)json_integer_value(v) * 1000u
                            : (uint64_t)json_integer_value(v);
    }
    if (json_is_real(v) && json_real_value(v) > 0
        && json_real_value(v) < 1e15) {
        return (uint64_t)(unit == TF_S ? json_real_value(v) * 1000.0
                                       : json_real_value(v));
    }
    s = json_string_value(v);
    if (s == NULL || strlen(s) > 64) {
        return 0;
    }
    memset(&tm, 0, sizeof(tm));
    p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (p == NULL) {
        return 0;
    }
    if (*p == '.') {
        unsigned d = 0;

        p++;
        while (*p >= '0' && *p <= '9') {
            if (d < 3) {
                ms = ms * 10 + (uint64_t)(*p - '0');
            }
            d++;
            p++;
        }
        while (d < 3) {
            ms *= 10;
            d++;
        }
    }
    if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;

        if (!(isdigit((unsigned char)p[1]) && isdigit((unsigned char)p[2])
              && p[3] == ':' && isdigit((unsigned char)p[4])
              && isdigit((unsigned char)p[5]) && p[6] == '\0')) {
            return 0;
        }
        off = sign * (((p[1] - '0') * 10 + (p[2] - '0')) * 3600L
                      + ((p[4] - '0') * 10 + (p[5] - '0')) * 60L);
    } else if (!(p[0] == 'Z' && p[1] == '\0')) {
        return 0;
    }
    t = timegm(&tm) - off;
    if (t <= 0) {
        return 0;
    }
    return (uint64_t)t * 1000u + ms;
}

/* One list page answered: map, deliver, then ask for the next page. */
static void
after_list(pg_conn_req_t *r, const pg_http_response_t *resp)
{
    const optpl_t *t = &r->c->op[OP_LIST];
    const recmap_t *m = &t->map;
    json_t *body, *items, *it, *cur = NULL;
    pg_listed_account_t *accts = NULL;
    char (*keys)[PG_CONN_KEY_MAX + 1] = NULL;
    char (*ids)[PG_CONN_KEY_MAX + 1] = NULL;
    size_t n, i, k, j;
    int stop, more, oom = 0;
    char next[PG_CONN_KEY_MAX + 1] = "";

    if (!ss_has(&t->success, resp->status)) {
        fail_status(r, t, resp);
        return;
    }
    body = parse_body(resp);
    items = body != NULL && t->items_path.set
                ? jpath_get(&t->items_path, body) : body;
    if (!json_is_array(items)) {
        json_decref(body);
        fail(r, PG_ERR_HTTP, 0, "list: %s",
             body == NULL ? "the response is not JSON"
                          : "no array of accounts at items_path");
        return;
    }
    n = json_array_size(items);
    if (n > PG_CONN_PAGE_MAX || n > t->page_size) {
        json_decref(body);
        fail(r, PG_ERR_TOO_LARGE, 0, "list: a page holds %zu accounts "
             "(page size %u)", n, t->page_size);
        return;
    }
    if (t->paging == PAGE_CURSOR) {
        cur = jpath_get(&t->cursor_path, body);
        if (cur != NULL && !json_is_null(cur)
            && scalar_text(cur, next, sizeof(next)) != 0) {
            json_decref(body);
            fail(r, PG_ERR_HTTP, 0, "list: bad cursor in the response");
            return;
        }
    }
    accts = calloc(n + 1, sizeof(*accts));
    keys = calloc(n + 1, sizeof(*keys));
    ids = calloc(n + 1, sizeof(*ids));
    if (accts == NULL || keys == NULL || ids == NULL) {
        free(accts);
        free(keys);
        free(ids);
        json_decref(body);
        fail(r, PG_ERR_NOMEM, 1, "list: out of memory");
        return;
    }
    k = 0;
    json_array_foreach(items, i, it) {
        json_t *attrs, *av, *gv, *g;
        const char **groups = NULL;
        size_t ng = 0;

        if (scalar_text(jpath_get(&m->key, it), keys[k], sizeof(keys[k])) != 0
            || keys[k][0] == '\0'
            || scalar_text(jpath_get(&m->id, it), ids[k], sizeof(ids[k]))
                   != 0) {
            continue;          /* not an account record we can map */
        }
        attrs = json_object();
        for (j = 0; attrs != NULL && j < m->nattrs; j++) {
            av = jpath_get(&m->attrs[j].path, it);
            if (av != NULL
                && json_object_set(attrs, m->attrs[j].name, av) != 0) {
                json_decref(attrs);
                attrs = NULL;
            }
        }
        gv = m->groups.set ? jpath_get(&m->groups, it) : NULL;
        if (attrs != NULL && json_array_size(gv) > 0) {
            /* borrowed from body, which lives until after the callback */
            groups = calloc(json_array_size(gv) > 4096 ? 4096
                                                       : json_array_size(gv),
                            sizeof(char *));
            if (groups == NULL) {
                json_decref(attrs);
                attrs = NULL;
            }
            json_array_foreach(gv, j, g) {
                if (groups == NULL || ng == 4096) {
                    break;
                }
                if (json_is_string(g)
                    && strlen(json_string_value(g)) == json_string_length(g)) {
                    groups[ng++] = json_string_value(g);
                }
            }
        }
        if (attrs == NULL) {
            oom = 1;
            break;
        }
        accts[k].groups = groups;
        accts[k].ngroups = ng;
        accts[k].key = keys[k];
        accts[k].id = ids[k];
        accts[k].attrs = attrs;
        accts[k].active = m->active.set ? truthy(jpath_get(&m->active, it))
                                        : 1;
        accts[k].modified_ms = m->modified.set
                                   ? parse_modified(jpath_get(&m->modified,
                                                              it),
                                                    m->modified_unit)
                                   : 0;
        k++;
    }
    stop = 0;
    if (k > 0 && !oom) {
        r->in_page_cb = 1;
        stop = r->page(r->arg, accts, k);
        r->in_page_cb = 0;
    }
    for (i = 0; i < k; i++) {
        json_decref((json_t *)accts[i].attrs);
        free((void *)accts[i].groups);
    }
    json_decref(body);
    free(accts);
    free(keys);
    free(ids);
    if (oom) {
        fail(r, PG_ERR_NOMEM, 1, "list: out of memory");
        return;
    }
    if (r->cancelled) {
        req_free(r);           /* cancelled from inside the page callback */
        return;
    }
    if (stop) {
        fail(r, PG_ERR_CANCELLED, 0, "list: stopped by the page callback");
        return;
    }
    r->pages++;
    switch (t->paging) {
    case PAGE_NONE:
        more = 0;
        break;
    case PAGE_PAGE:
        more = n > 0 && n >= t->page_size;
        r->page_no++;
        break;
    case PAGE_OFFSET:
        more = n > 0 && n >= t->page_size;
        r->offset += n;
        break;
    case PAGE_CURSOR:
    default:
        more = next[0] != '\0';
        if (more && r->cursor != NULL && strcmp(r->cursor, next) == 0) {
            fail(r, PG_ERR_HTTP, 0, "list: the cursor did not advance");
            return;
        }
        if (more) {
            free(r->cursor);
            r->cursor = strdup(next);
            if (r->cursor == NULL) {
                fail(r, PG_ERR_NOMEM, 1, "list: out of memory");
                return;
            }
        }
        break;
    }
    if (!more) {
        finish(r, PG_OK, PG_CONN_UNCHANGED, 0, 0, "");
        return;
    }
    if (r->pages >= t->max_pages) {
        fail(r, PG_ERR_TOO_LARGE, 0, "list: more than %u pages",
             t->max_pages);
        return;
    }
    next_step(r, OP_LIST);
}

/* pg_http callback: one step of the state machine. */
static void
on_http(void *arg, pg_status_t st, const pg_http_response_t *resp)
{
    pg_conn_req_t *r = arg;
    rest_t *c = r->c;
    const optpl_t *t = &c->op[r->step];
    json_t *body;

    r->op = NULL;
    if (st != PG_OK) {
        pg_log(c->base.host, PG_LOG_INFO, "rest %s: %s: %s", c->base.name,
               OP_NAMES[r->step], pg_status_str(st));
        if (st == PG_ERR_TOO_LARGE) {
            fail(r, PG_ERR_TOO_LARGE, 0, "%s: response over %u bytes",
                 OP_NAMES[r->step], c->max_response);
        } else if (st == PG_ERR_TIMEOUT) {
            fail(r, PG_ERR_TIMEOUT, 1, "%s: timed out after %u ms",
                 OP_NAMES[r->step], c->timeout_ms);
        } else if (st == PG_ERR_CANCELLED) {
            fail(r, PG_ERR_CANCELLED, 1, "%s: the HTTP client was shut down",
                 OP_NAMES[r->step]);
        } else {
            fail(r, st == PG_ERR_NOMEM ? PG_ERR_NOMEM : PG_ERR_IO, 1,
                 "%s: connection failed", OP_NAMES[r->step]);
        }
        return;
    }
    pg_log(c->base.host, PG_LOG_DEBUG, "rest %s: %s -> %ld", c->base.name,
           OP_NAMES[r->step], resp->status);
    switch (r->step) {
    case OP_LOOKUP:
        after_lookup(r, resp);
        return;
    case OP_LIST:
        after_list(r, resp);
        return;
    case OP_CREATE:
        if (!ss_has(&t->success, resp->status)) {
            if (resp->status == 409) {
                /* lookup did not see it: a race or a hidden account;
                 * a retry looks it up again */
                fail(r, PG_ERR_CONFLICT, 1, "create: HTTP 409: the account "
                     "exists but lookup cannot find it");
                return;
            }
            fail_status(r, t, resp);
            return;
        }
        if (t->id_path.set) {
            body = parse_body(resp);
            if (body == NULL || take_id(r, &t->id_path, body) != 0) {
                json_decref(body);
                fail(r, PG_ERR_HTTP, 0, "create: no usable id at id_path in "
                     "the response (the account was created)");
                return;
            }
            json_decref(body);
        }
        finish(r, PG_OK, PG_CONN_CREATED, 0, 0, "");
        return;
    case OP_UPDATE:
    case OP_DISABLE:
        if (ss_has(&t->success, resp->status)) {
            finish(r, PG_OK, r->kind == K_DISABLE ? PG_CONN_DISABLED
                                                  : PG_CONN_UPDATED, 0, 0, "");
        } else if (ss_has(&t->not_found, resp->status)) {
            /* vanished since the lookup: ensure may create it next time */
            fail(r, PG_ERR_NOT_FOUND, r->kind == K_ENSURE,
                 "%s: the account disappeared", OP_NAMES[r->step]);
        } else {
            fail_status(r, t, resp);
        }
        return;
    case OP_DELETE:
        if (ss_has(&t->success, resp->status)
            || ss_has(&t->not_found, resp->status)) {
            finish(r, PG_OK, PG_CONN_REMOVED, 0, 0, "");
        } else {
            fail_status(r, t, resp);
        }
        return;
    default:
        fail(r, PG_ERR_INTERNAL, 0, "internal: bad step");
        return;
    }
}

/* Start r with its first request; on failure free r (nothing called). */
static pg_status_t
req_start(pg_conn_req_t *r, int op, pg_conn_req_t **req_out)
{
    pg_err_t e;
    pg_status_t st;

    e.msg[0] = '\0';
    st = req_send(r, op, &e);
    if (st != PG_OK) {
        pg_log(r->c->base.host, PG_LOG_WARN, "rest %s: %s", r->c->base.name,
               e.msg);
        req_free(r);
        return st == PG_ERR_NOT_FOUND ? PG_ERR_INVALID : st;
    }
    if (req_out != NULL) {
        *req_out = r;
    }
    return PG_OK;
}

/* Common start of ensure/disable/remove. */
static pg_status_t
acct_start(pg_connector_t *base, kind_t kind, const pg_account_t *a,
           pg_conn_cb cb, void *arg, pg_conn_req_t **req_out)
{
    rest_t *c = (rest_t *)base;
    pg_conn_req_t *r;
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (c == NULL || a == NULL || cb == NULL) {
        return PG_ERR_INVALID;
    }
    if (kind == K_REMOVE && !c->op[OP_DELETE].present) {
        return PG_ERR_INVALID;
    }
    if (kind == K_DISABLE && !(base->caps & PG_CONN_CAP_DISABLE)) {
        return PG_ERR_INVALID;
    }
    if ((st = req_new(c, kind, a, &r)) != PG_OK) {
        return st;
    }
    r->cb = cb;
    r->arg = arg;
    return req_start(r, OP_LOOKUP, req_out);
}

/* vtable: ensure (see connector.h and rest.h). */
static pg_status_t
rest_ensure(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
            void *arg, pg_conn_req_t **req_out)
{
    return acct_start(c, K_ENSURE, a, cb, arg, req_out);
}

/* vtable: disable. PG_ERR_INVALID when neither a disable template nor an
 * update template whose body carries "${active}" is configured. */
static pg_status_t
rest_disable(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
             void *arg, pg_conn_req_t **req_out)
{
    return acct_start(c, K_DISABLE, a, cb, arg, req_out);
}

/* vtable: remove. PG_ERR_INVALID without a delete template. */
static pg_status_t
rest_remove(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
            void *arg, pg_conn_req_t **req_out)
{
    return acct_start(c, K_REMOVE, a, cb, arg, req_out);
}

/* vtable: list. PG_ERR_INVALID without a list template. */
static pg_status_t
rest_list(pg_connector_t *base, uint64_t since_ms, pg_conn_page_cb page,
          pg_conn_done_cb done, void *arg, pg_conn_req_t **req_out)
{
    rest_t *c = (rest_t *)base;
    pg_conn_req_t *r;
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (c == NULL || page == NULL || done == NULL
        || !c->op[OP_LIST].present) {
        return PG_ERR_INVALID;
    }
    if ((st = req_new(c, K_LIST, NULL, &r)) != PG_OK) {
        return st;
    }
    r->page = page;
    r->done = done;
    r->arg = arg;
    r->since_ms = since_ms;
    r->page_no = c->op[OP_LIST].first_page;
    r->offset = c->op[OP_LIST].first_page;
    return req_start(r, OP_LIST, req_out);
}

/*
 * vtable: cancel. The callback will not run; the HTTP request in flight
 * is aborted. Called from inside a list page callback, the request is
 * freed when that callback returns.
 */
static void
rest_cancel(pg_conn_req_t *r)
{
    if (r == NULL) {
        return;
    }
    if (r->op != NULL) {
        pg_http_cancel(r->op);
        r->op = NULL;
    }
    if (r->in_page_cb) {
        r->cancelled = 1;
        return;
    }
    req_free(r);
}

static const pg_connector_vt_t REST_VT = {
    "rest",
    rest_ensure,
    rest_disable,
    rest_remove,
    rest_list,
    rest_cancel,
    rest_free,
};
