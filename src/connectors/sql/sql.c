/*
 * provgate connectors: the SQL connector on libpq (see
 * include/provgate/sqlconn.h and docs/connectors-sql.md).
 *
 * Layout:
 *  - config: named-parameter translation (":key" -> "$1" plus an argv map),
 *    validated once at load; connection keywords; caps.
 *  - connection: one PGconn per connector, driven by a host watch on
 *    PQsocket() (re-opened after every PQconnectPoll step, since the
 *    socket may change while libpq tries addresses) and one op timer.
 *  - queue: requests run one at a time in FIFO order; a 0 ms "kick" timer
 *    starts the next, so no callback ever runs inside a start call.
 *  - operations: small step machines over statement results.
 *
 * Never blocking: no PQexec, PQconnectdb, PQcancel or PQsetClientEncoding.
 * On a timeout the connection is dropped (PQfinish) and the next operation
 * reconnects.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "provgate/sqlconn.h"

/* ---- statements and parameters -------------------------------------- */

typedef enum {
    SP_KEY = 0, SP_ID, SP_ACTIVE, SP_ATTR, SP_GROUP, SP_SINCE, SP_AFTER,
    SP_LIMIT
} sql_pkind_t;

#define SPM(k) (1u << (k))

typedef struct {
    sql_pkind_t kind;
    char *attr;                /* SP_ATTR: attribute name (owned) */
} sql_param_t;

typedef struct {
    char *text;                /* translated SQL ($1..$n), owned */
    sql_param_t params[PG_SQL_PARAMS_MAX];
    int nparams;
    unsigned used;             /* SPM() mask of kinds used */
    int present;
} sql_stmt_t;

enum {
    ST_LOOKUP = 0, ST_CREATE, ST_UPDATE, ST_DISABLE, ST_ENABLE, ST_DELETE,
    ST_LIST, ST_GLIST, ST_GADD, ST_GREMOVE, ST_COUNT
};

static const char *const stmt_names[ST_COUNT] = {
    "lookup", "create", "update", "disable", "enable", "delete", "list",
    "group_list", "group_add", "group_remove"
};

/* Parameters each statement may use. */
static const unsigned stmt_allowed[ST_COUNT] = {
    SPM(SP_KEY) | SPM(SP_ID),
    SPM(SP_KEY) | SPM(SP_ID) | SPM(SP_ACTIVE) | SPM(SP_ATTR),
    SPM(SP_KEY) | SPM(SP_ID) | SPM(SP_ACTIVE) | SPM(SP_ATTR),
    SPM(SP_KEY) | SPM(SP_ID),
    SPM(SP_KEY) | SPM(SP_ID),
    SPM(SP_KEY) | SPM(SP_ID),
    SPM(SP_SINCE) | SPM(SP_AFTER) | SPM(SP_LIMIT),
    SPM(SP_KEY) | SPM(SP_ID),
    SPM(SP_KEY) | SPM(SP_ID) | SPM(SP_GROUP),
    SPM(SP_KEY) | SPM(SP_ID) | SPM(SP_GROUP)
};

static const char *const pkind_names[] = {
    "key", "id", "active", "attr", "group", "since", "after", "limit"
};

/* ---- connector and requests ----------------------------------------- */

typedef enum { C_NONE = 0, C_CONNECTING, C_READY, C_BUSY } sql_cstate_t;

typedef enum { OP_ENSURE, OP_DISABLE, OP_REMOVE, OP_LIST } sql_opkind_t;

typedef struct sql sql_t;

/* What one statement returned (rows in single-row mode, collected). */
typedef struct {
    json_t *rows;              /* array of objects col -> string|null */
    size_t bytes;              /* accounted size (cap PG_SQL_RESULT_MAX) */
    unsigned long affected;    /* PQcmdTuples */
    pg_status_t st;            /* PG_OK or the mapped error */
    int retryable;
    char error[PG_CONN_ERROR_MAX];
} sql_res_t;

struct pg_conn_req {
    sql_t *c;
    pg_conn_req_t *next;
    sql_opkind_t kind;
    int step;                  /* statement running (ST_*) or -1 */
    int in_cb;                 /* page callback running */
    int cancel_in_cb;          /* cancel() called from its page callback */
    /* desired account (copies) */
    char *key;
    char *id;                  /* given or found id, may be NULL */
    json_t *attrs;             /* object (owned ref) */
    char **groups;
    size_t ngroups;
    char **revoke;
    size_t nrevoke;
    int active;
    /* callbacks */
    pg_conn_cb cb;
    pg_conn_page_cb page;
    pg_conn_done_cb done;
    void *arg;
    /* ensure progress */
    int created, adopted, relooked, disabled_now;
    int need_update, need_active, groups_listed;
    json_t *changes;           /* array of names (owned) */
    json_t *todo_add;          /* array of group names to add */
    json_t *todo_remove;       /* array of group names to remove */
    const char *cur_group;     /* borrowed from todo_* while running */
    /* list progress */
    uint64_t since_ms;
    char *after;
};

struct sql {
    pg_connector_t base;       /* first member */
    /* config */
    const char *kw[8];
    char *vals[8];
    unsigned timeout_ms;
    unsigned page_size;
    sql_stmt_t st[ST_COUNT];
    int has_groups;
    /* runtime */
    PGconn *pc;
    sql_cstate_t cstate;
    pg_watch_t *w;
    unsigned wmask;
    pg_timer_t *op_timer;
    pg_timer_t *kick;
    pg_conn_req_t *qhead, *qtail;  /* waiting requests */
    pg_conn_req_t *active;         /* running request */
    int pending;                   /* statement waiting for the connection, -1 */
    sql_res_t res;
    int depth;                     /* handler / callback nesting */
    int free_pending;
};

static void sql_really_free(sql_t *c);
static void sql_pump(sql_t *c);
static void req_on_result(pg_conn_req_t *r);
static void sql_exec(sql_t *c, int stmt);

/* ---- small helpers --------------------------------------------------- */

/* malloc'd copy of s (NULL stays NULL); *oom set on failure. */
static char *
xstrdup(const char *s, int *oom)
{
    char *d;
    size_t n;

    if (s == NULL) {
        return NULL;
    }
    n = strlen(s);
    d = malloc(n + 1);
    if (d == NULL) {
        *oom = 1;
        return NULL;
    }
    memcpy(d, s, n + 1);
    return d;
}

/* Free an array of n malloc'd strings and the array (NULL is fine). */
static void
free_strv(char **v, size_t n)
{
    size_t i;

    if (v == NULL) {
        return;
    }
    for (i = 0; i < n; i++) {
        free(v[i]);
    }
    free(v);
}

/* Copy a short reason into res->error: first line only, control bytes
 * dropped, capped at PG_CONN_ERROR_MAX - 1. */
static void
set_error(sql_res_t *res, const char *prefix, const char *msg)
{
    size_t n = 0, i;
    int k;

    k = snprintf(res->error, sizeof(res->error), "%s", prefix);
    if (k < 0) {
        k = 0;
    }
    n = (size_t)k < sizeof(res->error) ? (size_t)k : sizeof(res->error) - 1;
    for (i = 0; msg != NULL && msg[i] != '\0' && msg[i] != '\n'
         && n + 1 < sizeof(res->error); i++) {
        unsigned char ch = (unsigned char)msg[i];
        if (ch >= 0x20 && ch != 0x7f) {
            res->error[n++] = (char)ch;
        }
    }
    res->error[n] = '\0';
}

/*
 * Map a SQLSTATE to a status and retryability (see docs/connectors-sql.md).
 * NULL or unknown codes are PG_ERR_INVALID, not retryable.
 */
static pg_status_t
classify_sqlstate(const char *s, int *retryable)
{
    *retryable = 0;
    if (s == NULL || strlen(s) != 5) {
        return PG_ERR_INVALID;
    }
    if (strcmp(s, "23505") == 0) {
        return PG_ERR_CONFLICT;
    }
    if (strncmp(s, "08", 2) == 0 || strncmp(s, "57P", 3) == 0) {
        *retryable = 1;
        return PG_ERR_IO;
    }
    if (strcmp(s, "57014") == 0) {          /* statement_timeout */
        *retryable = 1;
        return PG_ERR_TIMEOUT;
    }
    if (strncmp(s, "28", 2) == 0 || strcmp(s, "42501") == 0) {
        return PG_ERR_DENIED;
    }
    if (strncmp(s, "40", 2) == 0 || strncmp(s, "53", 2) == 0
        || strcmp(s, "55P03") == 0) {       /* serialization, resources, lock */
        *retryable = 1;
        return PG_ERR_BUSY;
    }
    return PG_ERR_INVALID;                  /* 22xxx, 23xxx, 42xxx, ... */
}

/*
 * Find a SQLSTATE in a verbose libpq connection error message: a line
 * "SEVERITY:  XXXXX: text". Copies it into out[6]; 1 when found.
 */
static int
find_sqlstate(const char *msg, char out[6])
{
    const char *p = msg;

    while (p != NULL && *p != '\0') {
        const char *c = strstr(p, ":  ");
        const char *nl = strchr(p, '\n');
        int i;

        if (c != NULL && (nl == NULL || c < nl)) {
            c += 3;
            for (i = 0; i < 5; i++) {
                if (!isdigit((unsigned char)c[i])
                    && !isupper((unsigned char)c[i])) {
                    break;
                }
            }
            if (i == 5 && c[5] == ':') {
                memcpy(out, c, 5);
                out[5] = '\0';
                return 1;
            }
        }
        p = nl != NULL ? nl + 1 : NULL;
    }
    return 0;
}

/* ---- named parameter translation ------------------------------------ */

/* SQL identifier characters (ASCII letters, digits, '_'). */
static int
ident_start(int ch)
{
    return isalpha(ch) || ch == '_';
}

static int
ident_char(int ch)
{
    return isalnum(ch) || ch == '_';
}

/* Index of (kind, attr) in s->params, adding it when new; -1 when full. */
static int
param_slot(sql_stmt_t *s, sql_pkind_t kind, const char *attr, size_t alen,
           int *oom)
{
    int i;

    for (i = 0; i < s->nparams; i++) {
        if (s->params[i].kind != kind) {
            continue;
        }
        if (kind != SP_ATTR || (strlen(s->params[i].attr) == alen
                                && memcmp(s->params[i].attr, attr, alen) == 0)) {
            return i;
        }
    }
    if (s->nparams >= PG_SQL_PARAMS_MAX) {
        return -1;
    }
    s->params[i].kind = kind;
    s->params[i].attr = NULL;
    if (kind == SP_ATTR) {
        s->params[i].attr = malloc(alen + 1);
        if (s->params[i].attr == NULL) {
            *oom = 1;
            return -1;
        }
        memcpy(s->params[i].attr, attr, alen);
        s->params[i].attr[alen] = '\0';
    }
    s->nparams++;
    s->used |= SPM(kind);
    return i;
}

/*
 * Translate sql (named parameters) into s->text ($1..$n) and the argv map.
 * Skips string literals ('..', E'..'), quoted identifiers, dollar quotes,
 * comments and "::" casts. Refuses positional $n, unknown names, names not
 * in `allowed`, unterminated quotes/comments. path is the JSON path for
 * errors ("connector.statements.lookup").
 */
static pg_status_t
translate(const char *sql, unsigned allowed, sql_stmt_t *s, const char *path,
          pg_err_t *err)
{
    size_t n = strlen(sql), i = 0, o = 0;
    char *out;
    int oom = 0;

    if (n == 0 || n > PG_SQL_TEXT_MAX) {
        pg_err_set(err, "%s: must be 1..%d bytes of SQL", path,
                   PG_SQL_TEXT_MAX);
        return PG_ERR_CONFIG;
    }
    out = malloc(n * 2 + 16);
    if (out == NULL) {
        return PG_ERR_NOMEM;
    }
#define BAD(...) do { pg_err_set(err, __VA_ARGS__); free(out); \
                      return PG_ERR_CONFIG; } while (0)
    while (i < n) {
        unsigned char ch = (unsigned char)sql[i];

        if (ch == '\'') {
            int esc = i > 0 && (sql[i - 1] == 'E' || sql[i - 1] == 'e')
                      && (i < 2 || !ident_char((unsigned char)sql[i - 2]));
            out[o++] = sql[i++];
            for (;;) {
                if (i >= n) {
                    BAD("%s: unterminated string literal", path);
                }
                if (esc && sql[i] == '\\' && i + 1 < n) {
                    out[o++] = sql[i++];
                    out[o++] = sql[i++];
                    continue;
                }
                if (sql[i] == '\'') {
                    out[o++] = sql[i++];
                    if (i < n && sql[i] == '\'') {
                        out[o++] = sql[i++];
                        continue;
                    }
                    break;
                }
                out[o++] = sql[i++];
            }
        } else if (ch == '"') {
            out[o++] = sql[i++];
            for (;;) {
                if (i >= n) {
                    BAD("%s: unterminated quoted identifier", path);
                }
                if (sql[i] == '"') {
                    out[o++] = sql[i++];
                    if (i < n && sql[i] == '"') {
                        out[o++] = sql[i++];
                        continue;
                    }
                    break;
                }
                out[o++] = sql[i++];
            }
        } else if (ch == '-' && i + 1 < n && sql[i + 1] == '-') {
            while (i < n && sql[i] != '\n') {
                out[o++] = sql[i++];
            }
        } else if (ch == '/' && i + 1 < n && sql[i + 1] == '*') {
            int depth = 0;
            for (;;) {
                if (i >= n) {
                    BAD("%s: unterminated comment", path);
                }
                if (sql[i] == '/' && i + 1 < n && sql[i + 1] == '*') {
                    depth++;
                    out[o++] = sql[i++];
                    out[o++] = sql[i++];
                } else if (sql[i] == '*' && i + 1 < n && sql[i + 1] == '/') {
                    depth--;
                    out[o++] = sql[i++];
                    out[o++] = sql[i++];
                    if (depth == 0) {
                        break;
                    }
                } else {
                    out[o++] = sql[i++];
                }
            }
        } else if (ch == '$') {
            size_t t = i + 1;
            if (t < n && isdigit((unsigned char)sql[t])) {
                BAD("%s: positional parameters ($n) are not allowed; use "
                    ":names", path);
            }
            if (i > 0 && ident_char((unsigned char)sql[i - 1])) {
                out[o++] = sql[i++];    /* part of an identifier */
                continue;
            }
            while (t < n && ident_char((unsigned char)sql[t])
                   && (t > i + 1 || ident_start((unsigned char)sql[t]))) {
                t++;
            }
            if (t < n && sql[t] == '$') {
                size_t tl = t - i + 1;  /* "$tag$" */
                const char *end = NULL;
                size_t k;
                for (k = t + 1; k + tl <= n; k++) {
                    if (memcmp(sql + k, sql + i, tl) == 0) {
                        end = sql + k;
                        break;
                    }
                }
                if (end == NULL) {
                    BAD("%s: unterminated dollar-quoted string", path);
                }
                k = (size_t)(end - sql) + tl;
                memcpy(out + o, sql + i, k - i);
                o += k - i;
                i = k;
            } else {
                out[o++] = sql[i++];
            }
        } else if (ch == ':' && i + 1 < n && sql[i + 1] == ':') {
            out[o++] = sql[i++];
            out[o++] = sql[i++];
        } else if (ch == ':' && i + 1 < n
                   && ident_start((unsigned char)sql[i + 1])) {
            size_t b = i + 1, e = b, ab = 0, ae = 0;
            sql_pkind_t kind = SP_KEY;
            int k, found = 0, slot;
            while (e < n && ident_char((unsigned char)sql[e])) {
                e++;
            }
            for (k = 0; k < (int)(sizeof(pkind_names) / sizeof(*pkind_names));
                 k++) {
                if (strlen(pkind_names[k]) == e - b
                    && memcmp(pkind_names[k], sql + b, e - b) == 0) {
                    kind = (sql_pkind_t)k;
                    found = 1;
                }
            }
            if (!found) {
                BAD("%s: unknown parameter :%.*s", path, (int)(e - b),
                    sql + b);
            }
            if (kind == SP_ATTR) {
                if (e >= n || sql[e] != '.' || e + 1 >= n
                    || !ident_char((unsigned char)sql[e + 1])) {
                    BAD("%s: :attr must be followed by .<name>", path);
                }
                ab = ae = e + 1;
                while (ae < n && ident_char((unsigned char)sql[ae])) {
                    ae++;
                }
                if (ae - ab > 128) {
                    BAD("%s: attribute name too long", path);
                }
                e = ae;
            }
            if ((allowed & SPM(kind)) == 0) {
                BAD("%s: parameter :%s is not available in this statement",
                    path, pkind_names[kind]);
            }
            slot = param_slot(s, kind, sql + ab, ae - ab, &oom);
            if (oom) {
                free(out);
                return PG_ERR_NOMEM;
            }
            if (slot < 0) {
                BAD("%s: more than %d distinct parameters", path,
                    PG_SQL_PARAMS_MAX);
            }
            o += (size_t)snprintf(out + o, 8, "$%d", slot + 1);
            i = e;
        } else {
            out[o++] = sql[i++];
        }
    }
#undef BAD
    out[o] = '\0';
    s->text = out;
    s->present = 1;
    return PG_OK;
}

/* ---- value formatting ------------------------------------------------ */

/*
 * Text of one attribute value for a parameter, malloc'd into *out (NULL
 * for a missing or null attribute). Arrays become a PostgreSQL array
 * literal with every element quoted. PG_ERR_TOO_LARGE over
 * PG_SQL_FIELD_MAX, PG_ERR_INVALID for objects or non-string elements.
 */
static pg_status_t
attr_text(const json_t *v, char **out)
{
    char buf[64];
    size_t i, len = 0;
    json_t *e;
    char *s;

    *out = NULL;
    if (v == NULL || json_is_null(v)) {
        return PG_OK;
    }
    if (json_is_string(v)) {
        if (json_string_length(v) > PG_SQL_FIELD_MAX
            || strlen(json_string_value(v)) != json_string_length(v)) {
            return PG_ERR_TOO_LARGE;
        }
        *out = strdup(json_string_value(v));
        return *out != NULL ? PG_OK : PG_ERR_NOMEM;
    }
    if (json_is_boolean(v)) {
        *out = strdup(json_is_true(v) ? "true" : "false");
        return *out != NULL ? PG_OK : PG_ERR_NOMEM;
    }
    if (json_is_integer(v)) {
        snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT,
                 json_integer_value(v));
        *out = strdup(buf);
        return *out != NULL ? PG_OK : PG_ERR_NOMEM;
    }
    if (json_is_real(v)) {
        snprintf(buf, sizeof(buf), "%.17g", json_real_value(v));
        *out = strdup(buf);
        return *out != NULL ? PG_OK : PG_ERR_NOMEM;
    }
    if (!json_is_array(v)) {
        return PG_ERR_INVALID;
    }
    json_array_foreach(v, i, e) {
        if (!json_is_string(e)) {
            return PG_ERR_INVALID;
        }
        len += json_string_length(e) * 2 + 3;
        if (len > PG_SQL_FIELD_MAX) {
            return PG_ERR_TOO_LARGE;
        }
    }
    s = malloc(len + 3);
    if (s == NULL) {
        return PG_ERR_NOMEM;
    }
    len = 0;
    s[len++] = '{';
    json_array_foreach(v, i, e) {
        const char *p = json_string_value(e);
        if (i > 0) {
            s[len++] = ',';
        }
        s[len++] = '"';
        for (; *p != '\0'; p++) {
            if (*p == '"' || *p == '\\') {
                s[len++] = '\\';
            }
            s[len++] = *p;
        }
        s[len++] = '"';
    }
    s[len++] = '}';
    s[len] = '\0';
    *out = s;
    return PG_OK;
}

/*
 * Parse a one-dimensional PostgreSQL array text ("{a,\"b c\",NULL}") or a
 * JSON array of strings into a new JSON array of strings (NULL elements
 * dropped). NULL when malformed or on OOM.
 */
static json_t *
parse_list(const char *t)
{
    json_t *arr;
    size_t n = strlen(t), i = 1;
    char *el;

    if (n > 0 && t[0] == '[') {
        json_t *j = json_loads(t, JSON_REJECT_DUPLICATES, NULL);
        size_t k;
        json_t *e;
        if (!json_is_array(j)) {
            json_decref(j);
            return NULL;
        }
        json_array_foreach(j, k, e) {
            if (!json_is_string(e)) {
                json_decref(j);
                return NULL;
            }
        }
        return j;
    }
    if (n < 2 || t[0] != '{' || t[n - 1] != '}') {
        return NULL;
    }
    arr = json_array();
    el = malloc(n + 1);
    if (arr == NULL || el == NULL) {
        json_decref(arr);
        free(el);
        return NULL;
    }
    if (n == 2) {
        free(el);
        return arr;
    }
    while (i < n) {
        size_t len = 0;
        int quoted = 0;
        if (t[i] == '"') {
            quoted = 1;
            i++;
            while (i < n && t[i] != '"') {
                if (t[i] == '\\' && i + 1 < n) {
                    i++;
                }
                el[len++] = t[i++];
            }
            if (i >= n) {
                goto bad;
            }
            i++;
        } else {
            while (i < n - 1 && t[i] != ',') {
                if (t[i] == '{' || t[i] == '"') {
                    goto bad;       /* nested arrays are not supported */
                }
                el[len++] = t[i++];
            }
        }
        el[len] = '\0';
        if (quoted || strcmp(el, "NULL") != 0) {
            if (json_array_append_new(arr, json_string(el)) != 0) {
                goto bad;
            }
        }
        if (i == n - 1) {
            break;
        }
        if (t[i] != ',') {
            goto bad;
        }
        i++;
    }
    free(el);
    return arr;
bad:
    free(el);
    json_decref(arr);
    return NULL;
}

/* 1 true, 0 false, -1 not a boolean text. */
static int
parse_bool(const char *s)
{
    if (s == NULL) {
        return -1;
    }
    if (strcmp(s, "t") == 0 || strcmp(s, "true") == 0 || strcmp(s, "1") == 0
        || strcmp(s, "TRUE") == 0 || strcmp(s, "y") == 0) {
        return 1;
    }
    if (strcmp(s, "f") == 0 || strcmp(s, "false") == 0 || strcmp(s, "0") == 0
        || strcmp(s, "FALSE") == 0 || strcmp(s, "n") == 0) {
        return 0;
    }
    return -1;
}

/* 1 when the desired JSON value v equals the column text col (NULL =
 * SQL NULL). */
static int
value_equal(const json_t *v, const char *col)
{
    if (v == NULL || json_is_null(v)) {
        return col == NULL;
    }
    if (col == NULL) {
        return 0;
    }
    if (json_is_string(v)) {
        return strcmp(json_string_value(v), col) == 0;
    }
    if (json_is_boolean(v)) {
        return parse_bool(col) == (json_is_true(v) ? 1 : 0);
    }
    if (json_is_integer(v)) {
        char *end;
        long long x;
        errno = 0;
        x = strtoll(col, &end, 10);
        return errno == 0 && end != col && *end == '\0'
               && x == (long long)json_integer_value(v);
    }
    if (json_is_real(v)) {
        char *end;
        double x = strtod(col, &end);
        return end != col && *end == '\0' && x == json_real_value(v);
    }
    if (json_is_array(v)) {
        json_t *have = parse_list(col), *e, *h;
        size_t i, j;
        int eq;
        if (have == NULL) {
            return 0;
        }
        eq = json_array_size(have) == json_array_size(v);
        json_array_foreach(v, i, e) {
            int hit = 0;
            if (!eq) {
                break;
            }
            json_array_foreach(have, j, h) {
                if (json_equal(e, h)) {
                    hit = 1;
                    break;
                }
            }
            eq = hit;
        }
        json_decref(have);
        return eq;
    }
    return 0;
}

/*
 * Milliseconds since the epoch of a timestamptz in ISO output style
 * ("2026-11-27 16:19:00.123+00", offset may be +HH, +HH:MM, +HH:MM:SS) or
 * of a plain decimal number (already milliseconds). 0 when unparsable.
 */
static uint64_t
parse_modified(const char *s)
{
    struct tm tm;
    int y, mo, d, h, mi, sec, n = 0, sign, oh = 0, om = 0, os = 0;
    uint64_t ms = 0;
    const char *p;
    time_t t;

    if (s == NULL) {
        return 0;
    }
    if (s[0] != '\0' && strspn(s, "0123456789") == strlen(s)) {
        uint64_t v;
        return pg_parse_u64(s, strlen(s), &v) == PG_OK ? v : 0;
    }
    if (sscanf(s, "%4d-%2d-%2d %2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n)
        != 6 || n == 0) {
        return 0;
    }
    p = s + n;
    if (*p == '.') {
        int digits = 0;
        p++;
        while (isdigit((unsigned char)*p)) {
            if (digits < 3) {
                ms = ms * 10 + (uint64_t)(*p - '0');
            }
            digits++;
            p++;
        }
        while (digits < 3) {
            ms *= 10;
            digits++;
        }
    }
    if (*p != '+' && *p != '-') {
        return 0;
    }
    sign = *p == '-' ? -1 : 1;
    p++;
    if (sscanf(p, "%2d", &oh) != 1) {
        return 0;
    }
    p += 2;
    if (*p == ':') {
        if (sscanf(p + 1, "%2d", &om) != 1) {
            return 0;
        }
        p += 3;
        if (*p == ':') {
            if (sscanf(p + 1, "%2d", &os) != 1) {
                return 0;
            }
            p += 3;
        }
    }
    if (*p != '\0') {
        return 0;
    }
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    t = timegm(&tm);
    t -= (time_t)sign * (oh * 3600 + om * 60 + os);
    if (t < 0) {
        return 0;
    }
    return (uint64_t)t * 1000u + ms;
}

/* ---- connection ------------------------------------------------------ */

static void on_io(void *arg, int fd, unsigned events);

/* Set the watch interest (no-op when unchanged). */
static void
watch_set(sql_t *c, unsigned mask)
{
    if (c->w != NULL && c->wmask != mask) {
        if (c->base.host->watch_update(c->w, mask) == 0) {
            c->wmask = mask;
        }
    }
}

/* (Re-)open the watch on the current PQsocket with interest mask. 0 ok. */
static int
watch_reopen(sql_t *c, unsigned mask)
{
    const pg_host_t *h = c->base.host;
    int fd = PQsocket(c->pc);

    if (c->w != NULL) {
        h->watch_close(c->w);
        c->w = NULL;
    }
    if (fd < 0) {
        return -1;
    }
    c->w = h->watch_open(h->ctx, fd, on_io, c);
    if (c->w == NULL) {
        return -1;
    }
    c->wmask = 0;
    watch_set(c, mask);
    return c->wmask == mask ? 0 : -1;
}

/* Close the connection (if any) and forget any statement in flight. */
static void
conn_drop(sql_t *c)
{
    if (c->w != NULL) {
        c->base.host->watch_close(c->w);
        c->w = NULL;
    }
    if (c->pc != NULL) {
        PQfinish(c->pc);
        c->pc = NULL;
    }
    c->cstate = C_NONE;
    c->wmask = 0;
}

/* Reset the result accumulator for a new statement. */
static void
res_reset(sql_res_t *res)
{
    json_decref(res->rows);
    res->rows = NULL;
    res->bytes = 0;
    res->affected = 0;
    res->st = PG_OK;
    res->retryable = 0;
    res->error[0] = '\0';
}

/* Fail the pending/running statement with st: the connection is dropped
 * and the active request sees the error. */
static void
stmt_fail(sql_t *c, pg_status_t st, int retryable, const char *prefix,
          const char *msg)
{
    conn_drop(c);
    c->pending = -1;
    res_reset(&c->res);
    c->res.st = st;
    c->res.retryable = retryable;
    set_error(&c->res, prefix, msg);
    if (c->active != NULL) {
        req_on_result(c->active);
    }
}

/* libpq notices (and the server's goodbye) go to the host log, never to
 * stderr. msg ends with a newline, which pg_log drops with the rest of
 * the line cap. */
static void
on_notice(void *arg, const char *msg)
{
    sql_t *c = arg;
    size_t n = strcspn(msg, "\n");

    pg_log(c->base.host, PG_LOG_DEBUG, "sql %s: %.*s", c->base.name,
           (int)(n > 400 ? 400 : n), msg);
}

/* Start connecting; the pending statement is sent once connected. */
static void
conn_start(sql_t *c)
{
    c->pc = PQconnectStartParams(c->kw, (const char *const *)c->vals, 1);
    if (c->pc == NULL) {
        stmt_fail(c, PG_ERR_NOMEM, 1, "connect: ", "out of memory");
        return;
    }
    if (PQstatus(c->pc) == CONNECTION_BAD) {
        char buf[PG_CONN_ERROR_MAX];
        snprintf(buf, sizeof(buf), "%s", PQerrorMessage(c->pc));
        stmt_fail(c, PG_ERR_IO, 1, "connect: ", buf);
        return;
    }
    (void)PQsetNoticeProcessor(c->pc, on_notice, c);
    /* Verbose errors carry the SQLSTATE of a refused login. */
    (void)PQsetErrorVerbosity(c->pc, PQERRORS_VERBOSE);
    c->cstate = C_CONNECTING;
    if (watch_reopen(c, PG_EV_WRITE) != 0) {
        stmt_fail(c, PG_ERR_IO, 1, "connect: ", "cannot watch socket");
    }
}

/* Flush output; adjust the watch. -1 on a connection failure. */
static int
conn_flush(sql_t *c)
{
    int r = PQflush(c->pc);

    if (r < 0) {
        return -1;
    }
    watch_set(c, r == 1 ? (PG_EV_READ | PG_EV_WRITE) : PG_EV_READ);
    return 0;
}

/* Build the values of statement s for request r (malloc'd strings in
 * vals[], NULL = SQL NULL). */
static pg_status_t
build_values(sql_t *c, pg_conn_req_t *r, const sql_stmt_t *s, char **vals,
             char *errbuf, size_t errsz)
{
    char buf[64];
    int i, oom = 0;

    for (i = 0; i < s->nparams; i++) {
        const sql_param_t *p = &s->params[i];
        vals[i] = NULL;
        switch (p->kind) {
        case SP_KEY:
            vals[i] = xstrdup(r->key, &oom);
            break;
        case SP_ID:
            vals[i] = xstrdup(r->id, &oom);
            break;
        case SP_ACTIVE:
            vals[i] = xstrdup(r->active ? "true" : "false", &oom);
            break;
        case SP_ATTR: {
            pg_status_t st = attr_text(json_object_get(r->attrs, p->attr),
                                       &vals[i]);
            if (st != PG_OK) {
                snprintf(errbuf, errsz, "attribute %s: %s", p->attr,
                         pg_status_str(st));
                return st;
            }
            break;
        }
        case SP_GROUP:
            vals[i] = xstrdup(r->cur_group, &oom);
            break;
        case SP_SINCE:
            if (r->since_ms > 0) {
                struct tm tm;
                time_t t = (time_t)(r->since_ms / 1000u);
                if (gmtime_r(&t, &tm) == NULL) {
                    snprintf(errbuf, errsz, "since out of range");
                    return PG_ERR_INVALID;
                }
                snprintf(buf, sizeof(buf),
                         "%04d-%02d-%02d %02d:%02d:%02d.%03u+00",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                         tm.tm_hour, tm.tm_min, tm.tm_sec,
                         (unsigned)(r->since_ms % 1000u));
                vals[i] = xstrdup(buf, &oom);
            } else {
                vals[i] = xstrdup("-infinity", &oom);
            }
            break;
        case SP_AFTER:
            vals[i] = xstrdup(r->after != NULL ? r->after : "", &oom);
            break;
        case SP_LIMIT:
            snprintf(buf, sizeof(buf), "%u", c->page_size);
            vals[i] = xstrdup(buf, &oom);
            break;
        }
        if (oom) {
            snprintf(errbuf, errsz, "out of memory");
            return PG_ERR_NOMEM;
        }
    }
    return PG_OK;
}

/* Send statement idx of the active request on the ready connection. */
static void
stmt_send(sql_t *c, int idx)
{
    const sql_stmt_t *s = &c->st[idx];
    char *vals[PG_SQL_PARAMS_MAX];
    char errbuf[256] = "";
    pg_status_t st;
    int i, ok;

    c->pending = -1;
    res_reset(&c->res);
    memset(vals, 0, sizeof(vals));
    st = build_values(c, c->active, s, vals, errbuf, sizeof(errbuf));
    if (st != PG_OK) {
        for (i = 0; i < s->nparams; i++) {
            free(vals[i]);
        }
        c->res.st = st;
        set_error(&c->res, "", errbuf);
        req_on_result(c->active);
        return;
    }
    ok = PQsendQueryParams(c->pc, s->text, s->nparams, NULL,
                           (const char *const *)vals, NULL, NULL, 0);
    for (i = 0; i < s->nparams; i++) {
        free(vals[i]);
    }
    if (!ok) {
        char buf[PG_CONN_ERROR_MAX];
        snprintf(buf, sizeof(buf), "%s", PQerrorMessage(c->pc));
        stmt_fail(c, PG_ERR_IO, 1, "send: ", buf);
        return;
    }
    (void)PQsetSingleRowMode(c->pc);
    c->cstate = C_BUSY;
    if (conn_flush(c) != 0) {
        stmt_fail(c, PG_ERR_IO, 1, "send: ", "connection lost");
    }
}

/* Run statement idx for the active request (connecting first if needed). */
static void
sql_exec(sql_t *c, int idx)
{
    c->pending = idx;
    c->active->step = idx;
    if (c->cstate == C_READY) {
        stmt_send(c, idx);
    } else if (c->cstate == C_NONE) {
        conn_start(c);
    }
    /* C_CONNECTING: sent when the connection is up. */
}

/* Append row `row` of single-row result pr to c->res (caps enforced). */
static int
res_add_row(sql_t *c, PGresult *pr)
{
    int nf = PQnfields(pr), j;
    json_t *o;

    if (nf > PG_SQL_COLUMNS_MAX) {
        set_error(&c->res, "", "too many result columns");
        return -1;
    }
    if (c->res.rows == NULL && (c->res.rows = json_array()) == NULL) {
        return -1;
    }
    if (json_array_size(c->res.rows) >= PG_CONN_PAGE_MAX + 1u) {
        set_error(&c->res, "", "too many result rows");
        return -1;
    }
    o = json_object();
    if (o == NULL || json_array_append_new(c->res.rows, o) != 0) {
        return -1;
    }
    for (j = 0; j < nf; j++) {
        const char *name = PQfname(pr, j);
        int len = PQgetlength(pr, 0, j);
        json_t *v;
        if (len < 0 || len > PG_SQL_FIELD_MAX) {
            set_error(&c->res, "", "result field over the size cap");
            return -1;
        }
        c->res.bytes += (size_t)len + strlen(name) + 16;
        if (c->res.bytes > PG_SQL_RESULT_MAX) {
            set_error(&c->res, "", "result over the size cap");
            return -1;
        }
        if (PQgetisnull(pr, 0, j)) {
            v = json_null();
        } else {
            v = json_stringn(PQgetvalue(pr, 0, j), (size_t)len);
            if (v == NULL) {
                set_error(&c->res, "", "result field is not valid UTF-8");
                return -1;
            }
        }
        if (json_object_set_new(o, name, v) != 0) {
            return -1;
        }
    }
    return 0;
}

/*
 * Read every available result of the running statement. Returns 1 when
 * the statement is complete (c->res filled), 0 when more input is needed,
 * -1 after a failure that already dropped the connection and informed the
 * request.
 */
static int
conn_collect(sql_t *c)
{
    PGresult *pr;

    for (;;) {
        if (PQisBusy(c->pc)) {
            return 0;
        }
        pr = PQgetResult(c->pc);
        if (pr == NULL) {
            return 1;
        }
        switch (PQresultStatus(pr)) {
        case PGRES_SINGLE_TUPLE:
            if (c->res.st == PG_OK && res_add_row(c, pr) != 0) {
                char msg[PG_CONN_ERROR_MAX];
                PQclear(pr);
                snprintf(msg, sizeof(msg), "%s",
                         c->res.error[0] ? c->res.error : "out of memory");
                /* Stop reading an oversized result: drop the connection. */
                stmt_fail(c, PG_ERR_TOO_LARGE, 0, "", msg);
                return -1;
            }
            break;
        case PGRES_TUPLES_OK:
        case PGRES_COMMAND_OK: {
            const char *ct = PQcmdTuples(pr);
            uint64_t v = 0;
            if (ct != NULL && ct[0] != '\0'
                && pg_parse_u64(ct, strlen(ct), &v) == PG_OK) {
                c->res.affected = (unsigned long)v;
            }
            break;
        }
        case PGRES_FATAL_ERROR:
        case PGRES_NONFATAL_ERROR:
        case PGRES_BAD_RESPONSE: {
            const char *ss = PQresultErrorField(pr, PG_DIAG_SQLSTATE);
            const char *m = PQresultErrorField(pr, PG_DIAG_MESSAGE_PRIMARY);
            char prefix[16];
            if (c->res.st == PG_OK) {
                c->res.st = classify_sqlstate(ss, &c->res.retryable);
                snprintf(prefix, sizeof(prefix), "%s: ",
                         ss != NULL ? ss : "?????");
                set_error(&c->res, prefix,
                          m != NULL ? m : PQerrorMessage(c->pc));
                if (ss == NULL) {   /* libpq-side failure: connection */
                    c->res.st = PG_ERR_IO;
                    c->res.retryable = 1;
                }
            }
            break;
        }
        default:
            if (c->res.st == PG_OK) {
                c->res.st = PG_ERR_INVALID;
                set_error(&c->res, "", "unexpected result (COPY?)");
            }
            break;
        }
        PQclear(pr);
    }
}

/* Drive PQconnectPoll one step. */
static void
conn_poll(sql_t *c)
{
    PostgresPollingStatusType ps = PQconnectPoll(c->pc);

    switch (ps) {
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(c->pc, 1) != 0) {
            stmt_fail(c, PG_ERR_IO, 1, "connect: ", "cannot set non-blocking");
            return;
        }
        (void)PQsetErrorVerbosity(c->pc, PQERRORS_DEFAULT);
        c->cstate = C_READY;
        if (watch_reopen(c, PG_EV_READ) != 0) {
            stmt_fail(c, PG_ERR_IO, 1, "connect: ", "cannot watch socket");
            return;
        }
        if (c->pending >= 0 && c->active != NULL) {
            stmt_send(c, c->pending);
        }
        return;
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        if (watch_reopen(c, ps == PGRES_POLLING_READING ? PG_EV_READ
                                                         : PG_EV_WRITE) != 0) {
            stmt_fail(c, PG_ERR_IO, 1, "connect: ", "cannot watch socket");
        }
        return;
    default: {
        char buf[PG_CONN_ERROR_MAX], code[6];
        pg_status_t st = PG_ERR_IO;
        int retry = 1;
        snprintf(buf, sizeof(buf), "%s", PQerrorMessage(c->pc));
        if (find_sqlstate(buf, code)) {
            st = classify_sqlstate(code, &retry);
            if (st == PG_ERR_INVALID) {
                st = PG_ERR_IO;
                retry = 1;
            }
        }
        if (c->active == NULL) {
            conn_drop(c);
            c->pending = -1;
            return;
        }
        stmt_fail(c, st, retry, "connect: ", buf);
        return;
    }
    }
}

/* Watch handler on the libpq socket. */
static void
on_io(void *arg, int fd, unsigned events)
{
    sql_t *c = arg;

    (void)fd;
    c->depth++;
    switch (c->cstate) {
    case C_CONNECTING:
        conn_poll(c);
        break;
    case C_READY:
        /* Idle: notices, or the server closing the connection. */
        if ((events & PG_EV_READ) && (!PQconsumeInput(c->pc)
                                      || PQstatus(c->pc) == CONNECTION_BAD)) {
            conn_drop(c);
        } else {
            PGresult *pr;
            PGnotify *nt;
            while (!PQisBusy(c->pc) && (pr = PQgetResult(c->pc)) != NULL) {
                PQclear(pr);
            }
            while ((nt = PQnotifies(c->pc)) != NULL) {
                PQfreemem(nt);      /* LISTEN is not used: drop */
            }
        }
        break;
    case C_BUSY: {
        int rc;
        if ((events & PG_EV_READ) && !PQconsumeInput(c->pc)) {
            char buf[PG_CONN_ERROR_MAX];
            snprintf(buf, sizeof(buf), "%s", PQerrorMessage(c->pc));
            stmt_fail(c, PG_ERR_IO, 1, "receive: ", buf);
            break;
        }
        if (conn_flush(c) != 0) {
            stmt_fail(c, PG_ERR_IO, 1, "send: ", "connection lost");
            break;
        }
        rc = conn_collect(c);
        if (rc == 1) {
            if (PQstatus(c->pc) == CONNECTION_BAD) {
                conn_drop(c);
                if (c->res.st == PG_OK) {
                    c->res.st = PG_ERR_IO;
                    c->res.retryable = 1;
                    set_error(&c->res, "", "connection lost");
                }
            } else {
                c->cstate = C_READY;
                watch_set(c, PG_EV_READ);
            }
            if (c->active != NULL) {
                req_on_result(c->active);
            }
        }
        break;
    }
    case C_NONE:
        break;
    }
    c->depth--;
    if (c->free_pending && c->depth == 0) {
        sql_really_free(c);
    }
}

/* ---- requests -------------------------------------------------------- */

/* Free a request and everything it owns (NULL is fine). Never calls back. */
static void
req_free(pg_conn_req_t *r)
{
    if (r == NULL) {
        return;
    }
    free(r->key);
    free(r->id);
    json_decref(r->attrs);
    free_strv(r->groups, r->ngroups);
    free_strv(r->revoke, r->nrevoke);
    json_decref(r->changes);
    json_decref(r->todo_add);
    json_decref(r->todo_remove);
    free(r->after);
    free(r);
}

/*
 * Finish the active request r: call its callback exactly once (st, with
 * the result fields), free it and schedule the next request.
 */
static void
req_finish(pg_conn_req_t *r, pg_status_t st, pg_conn_outcome_t outcome,
           int retryable, const char *error)
{
    sql_t *c = r->c;
    pg_conn_result_t res;

    c->base.host->timer_disarm(c->op_timer);
    c->active = NULL;
    c->pending = -1;
    c->depth++;
    if (r->kind == OP_LIST) {
        if (r->done != NULL) {
            r->done(r->arg, st, st == PG_OK ? "" : error);
        }
    } else {
        memset(&res, 0, sizeof(res));
        res.outcome = outcome;
        res.id = r->id != NULL ? r->id : "";
        res.changes = json_array_size(r->changes) > 0 ? r->changes : NULL;
        res.retryable = st == PG_OK ? 0 : retryable;
        res.retry_after_ms = 0;
        res.error = st == PG_OK ? "" : error;
        r->cb(r->arg, st, &res);
    }
    c->depth--;
    req_free(r);
    if (!c->free_pending && (c->qhead != NULL)) {
        c->base.host->timer_arm(c->kick, 0);
    }
}

/* Fail r with the current statement error (c->res). */
static void
req_fail_res(pg_conn_req_t *r)
{
    sql_t *c = r->c;
    char msg[PG_CONN_ERROR_MAX];

    snprintf(msg, sizeof(msg), "%s: %.480s", r->step >= 0 ? stmt_names[r->step] : "op",
             c->res.error);
    req_finish(r, c->res.st, PG_CONN_UNCHANGED, c->res.retryable, msg);
}

/* Append name to r->changes (created on demand). -1 on OOM. */
static int
changes_add(pg_conn_req_t *r, const char *name)
{
    if (r->changes == NULL && (r->changes = json_array()) == NULL) {
        return -1;
    }
    return json_array_append_new(r->changes, json_string(name));
}

/* Column text of row (NULL when absent or SQL NULL). */
static const char *
col(const json_t *row, const char *name)
{
    return json_string_value(json_object_get(row, name));
}

/*
 * Compare the looked-up row with the desired account; sets need_update,
 * need_active and the change names. Attributes the lookup does not return
 * are not compared. Also remembers the row's id.
 */
static int
ensure_compare(pg_conn_req_t *r, const json_t *row)
{
    const char *k, *idv = col(row, "id"), *act = col(row, "active");
    json_t *v;
    int oom = 0;

    if (idv != NULL && (r->id == NULL || strcmp(r->id, idv) != 0)) {
        char *n = xstrdup(idv, &oom);
        if (oom) {
            return -1;
        }
        free(r->id);
        r->id = n;
    }
    r->need_update = 0;
    json_object_foreach(r->attrs, k, v) {
        if (json_object_get(row, k) == NULL) {
            continue;
        }
        if (!value_equal(v, col(row, k))) {
            r->need_update = 1;
            if (changes_add(r, k) != 0) {
                return -1;
            }
        }
    }
    r->need_active = act != NULL && parse_bool(act) != r->active;
    if (r->need_active && changes_add(r, "active") != 0) {
        return -1;
    }
    return 0;
}

/* Next statement of an ensure, or finish it. */
static void
ensure_next(pg_conn_req_t *r)
{
    sql_t *c = r->c;
    pg_conn_outcome_t out;

    if (r->need_update) {
        r->need_update = 0;
        sql_exec(c, ST_UPDATE);
        return;
    }
    if (r->need_active) {
        r->need_active = 0;
        r->disabled_now = !r->active;
        sql_exec(c, r->active ? ST_ENABLE : ST_DISABLE);
        return;
    }
    if (c->has_groups && (r->ngroups > 0 || r->nrevoke > 0)) {
        if (!r->groups_listed) {
            r->groups_listed = 1;
            sql_exec(c, ST_GLIST);
            return;
        }
        if (json_array_size(r->todo_add) > 0) {
            r->cur_group = json_string_value(json_array_get(r->todo_add, 0));
            sql_exec(c, ST_GADD);
            return;
        }
        if (json_array_size(r->todo_remove) > 0) {
            r->cur_group = json_string_value(json_array_get(r->todo_remove,
                                                            0));
            sql_exec(c, ST_GREMOVE);
            return;
        }
    }
    if (r->created) {
        out = PG_CONN_CREATED;
        json_decref(r->changes);
        r->changes = NULL;
    } else if (r->adopted) {
        out = PG_CONN_ADOPTED;
    } else if (r->disabled_now) {
        out = PG_CONN_DISABLED;
    } else if (json_array_size(r->changes) > 0) {
        out = PG_CONN_UPDATED;
    } else {
        out = PG_CONN_UNCHANGED;
    }
    req_finish(r, PG_OK, out, 0, "");
}

/* Fill todo_add / todo_remove from a group_list result. */
static int
groups_plan(pg_conn_req_t *r, const json_t *rows)
{
    size_t i, j;
    json_t *row;

    r->todo_add = json_array();
    r->todo_remove = json_array();
    if (r->todo_add == NULL || r->todo_remove == NULL) {
        return -1;
    }
    for (i = 0; i < r->ngroups; i++) {
        int have = 0;
        json_array_foreach(rows, j, row) {
            const char *g = col(row, "group");
            if (g != NULL && strcmp(g, r->groups[i]) == 0) {
                have = 1;
                break;
            }
        }
        if (!have && json_array_append_new(r->todo_add,
                                           json_string(r->groups[i])) != 0) {
            return -1;
        }
    }
    for (i = 0; i < r->nrevoke; i++) {
        int have = 0;
        json_array_foreach(rows, j, row) {
            const char *g = col(row, "group");
            if (g != NULL && strcmp(g, r->revoke[i]) == 0) {
                have = 1;
                break;
            }
        }
        if (have && json_array_append_new(r->todo_remove,
                                          json_string(r->revoke[i])) != 0) {
            return -1;
        }
    }
    return 0;
}

/* Result of a statement of an ensure. */
static void
ensure_result(pg_conn_req_t *r)
{
    sql_t *c = r->c;
    sql_res_t *res = &c->res;
    size_t nrows = json_array_size(res->rows);

    if (res->st != PG_OK) {
        if (res->st == PG_ERR_CONFLICT && r->step == ST_CREATE
            && !r->relooked) {
            /* Lost a race: adopt the account that now exists, once. */
            r->relooked = 1;
            r->adopted = 1;
            sql_exec(c, ST_LOOKUP);
            return;
        }
        req_fail_res(r);
        return;
    }
    switch (r->step) {
    case ST_LOOKUP:
        if (nrows > 1) {
            req_finish(r, PG_ERR_CONFLICT, PG_CONN_UNCHANGED, 0,
                       "lookup: several accounts match the key");
            return;
        }
        if (nrows == 0) {
            if (r->adopted || r->created) {
                req_finish(r, PG_ERR_CONFLICT, PG_CONN_UNCHANGED, 1,
                           r->created ? "lookup: account missing after create"
                           : "create: unique violation but no account found");
                return;
            }
            sql_exec(c, ST_CREATE);
            return;
        }
        if (ensure_compare(r, json_array_get(res->rows, 0)) != 0) {
            req_finish(r, PG_ERR_NOMEM, PG_CONN_UNCHANGED, 1, "out of memory");
            return;
        }
        ensure_next(r);
        return;
    case ST_CREATE:
        r->created = 1;
        /* Read back what was stored (id, defaults, active). */
        sql_exec(c, ST_LOOKUP);
        return;
    case ST_GLIST:
        if (groups_plan(r, res->rows) != 0) {
            req_finish(r, PG_ERR_NOMEM, PG_CONN_UNCHANGED, 1, "out of memory");
            return;
        }
        ensure_next(r);
        return;
    case ST_GADD:
    case ST_GREMOVE: {
        json_t *list = r->step == ST_GADD ? r->todo_add : r->todo_remove;
        if (changes_add(r, r->cur_group) != 0) {
            req_finish(r, PG_ERR_NOMEM, PG_CONN_UNCHANGED, 1, "out of memory");
            return;
        }
        r->cur_group = NULL;
        (void)json_array_remove(list, 0);
        ensure_next(r);
        return;
    }
    default:                   /* update, enable, disable */
        ensure_next(r);
        return;
    }
}

/* Result of a statement of disable(). */
static void
disable_result(pg_conn_req_t *r)
{
    sql_t *c = r->c;
    sql_res_t *res = &c->res;
    const json_t *row;
    const char *act;

    if (res->st != PG_OK) {
        req_fail_res(r);
        return;
    }
    if (r->step == ST_DISABLE) {
        req_finish(r, PG_OK, PG_CONN_DISABLED, 0, "");
        return;
    }
    if (json_array_size(res->rows) == 0) {
        req_finish(r, PG_ERR_NOT_FOUND, PG_CONN_UNCHANGED, 0,
                   "lookup: no such account");
        return;
    }
    if (json_array_size(res->rows) > 1) {
        req_finish(r, PG_ERR_CONFLICT, PG_CONN_UNCHANGED, 0,
                   "lookup: several accounts match the key");
        return;
    }
    row = json_array_get(res->rows, 0);
    if (ensure_compare(r, row) != 0) {      /* only for the id */
        req_finish(r, PG_ERR_NOMEM, PG_CONN_UNCHANGED, 1, "out of memory");
        return;
    }
    json_decref(r->changes);
    r->changes = NULL;
    act = col(row, "active");
    if (act != NULL && parse_bool(act) == 0) {
        req_finish(r, PG_OK, PG_CONN_UNCHANGED, 0, "");   /* already */
        return;
    }
    sql_exec(c, ST_DISABLE);
}

/* Free a page of listed accounts built by list_result. */
static void
free_page(pg_listed_account_t *accts, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        json_decref((json_t *)accts[i].attrs);
        free((void *)accts[i].groups);
    }
    free(accts);
}

/* Result of one list page. */
static void
list_result(pg_conn_req_t *r)
{
    sql_t *c = r->c;
    sql_res_t *res = &c->res;
    size_t n = json_array_size(res->rows), i;
    pg_listed_account_t *accts;
    json_t *groups_keep = NULL;
    const char *last = NULL;
    int stop, oom = 0;
    char *nafter;

    if (res->st != PG_OK) {
        req_fail_res(r);
        return;
    }
    if (n > c->page_size) {
        req_finish(r, PG_ERR_INVALID, PG_CONN_UNCHANGED, 0,
                   "list: more rows than :limit");
        return;
    }
    if (n == 0) {
        req_finish(r, PG_OK, PG_CONN_UNCHANGED, 0, "");
        return;
    }
    accts = calloc(n, sizeof(*accts));
    groups_keep = json_array();
    if (accts == NULL || groups_keep == NULL) {
        free(accts);
        json_decref(groups_keep);
        req_finish(r, PG_ERR_NOMEM, PG_CONN_UNCHANGED, 1, "out of memory");
        return;
    }
    for (i = 0; i < n; i++) {
        json_t *row = json_array_get(res->rows, i), *v, *attrs;
        const char *k, *key = col(row, "key"), *g;
        pg_listed_account_t *a = &accts[i];
        if (key == NULL || strlen(key) > PG_CONN_KEY_MAX) {
            free_page(accts, i);
            json_decref(groups_keep);
            req_finish(r, PG_ERR_INVALID, PG_CONN_UNCHANGED, 0,
                       "list: row without a valid key column");
            return;
        }
        attrs = json_object();
        a->attrs = attrs;
        a->key = key;
        a->id = col(row, "id") != NULL ? col(row, "id") : "";
        a->active = col(row, "active") != NULL
                    ? parse_bool(col(row, "active")) == 1 : 1;
        a->modified_ms = parse_modified(col(row, "modified"));
        if (attrs == NULL) {
            oom = 1;
            break;
        }
        json_object_foreach(row, k, v) {
            if (strcmp(k, "key") == 0 || strcmp(k, "id") == 0
                || strcmp(k, "active") == 0 || strcmp(k, "modified") == 0
                || strcmp(k, "groups") == 0 || json_is_null(v)) {
                continue;
            }
            if (json_object_set(attrs, k, v) != 0) {
                oom = 1;
            }
        }
        g = col(row, "groups");
        if (g != NULL) {
            json_t *gl = parse_list(g), *e;
            size_t j;
            if (gl == NULL || json_array_size(gl) > PG_SQL_GROUPS_MAX) {
                json_decref(gl);
                free_page(accts, i + 1);
                json_decref(groups_keep);
                req_finish(r, PG_ERR_INVALID, PG_CONN_UNCHANGED, 0,
                           "list: groups column is not an array of strings");
                return;
            }
            a->groups = calloc(json_array_size(gl) + 1, sizeof(char *));
            if (a->groups == NULL || json_array_append_new(groups_keep, gl)) {
                oom = 1;
                break;
            }
            json_array_foreach(gl, j, e) {
                ((const char **)a->groups)[j] = json_string_value(e);
            }
            a->ngroups = json_array_size(gl);
        }
        last = key;
    }
    if (oom) {
        free_page(accts, n);
        json_decref(groups_keep);
        req_finish(r, PG_ERR_NOMEM, PG_CONN_UNCHANGED, 1, "out of memory");
        return;
    }
    if (r->after != NULL && last != NULL && strcmp(r->after, last) == 0) {
        free_page(accts, n);
        json_decref(groups_keep);
        req_finish(r, PG_ERR_INVALID, PG_CONN_UNCHANGED, 0,
                   "list: paging does not advance (ORDER BY key and "
                   "key > :after?)");
        return;
    }
    nafter = xstrdup(last, &oom);
    r->in_cb = 1;
    c->depth++;
    stop = r->page(r->arg, accts, n);
    c->depth--;
    r->in_cb = 0;
    free_page(accts, n);
    json_decref(groups_keep);
    if (r->cancel_in_cb || c->free_pending) {
        free(nafter);
        c->base.host->timer_disarm(c->op_timer);
        c->active = NULL;
        req_free(r);
        if (!c->free_pending && c->qhead != NULL) {
            c->base.host->timer_arm(c->kick, 0);
        }
        return;
    }
    if (stop) {
        free(nafter);
        req_finish(r, PG_ERR_CANCELLED, PG_CONN_UNCHANGED, 0,
                   "stopped by the page callback");
        return;
    }
    if (oom) {
        req_finish(r, PG_ERR_NOMEM, PG_CONN_UNCHANGED, 1, "out of memory");
        return;
    }
    if (n < c->page_size) {
        free(nafter);
        req_finish(r, PG_OK, PG_CONN_UNCHANGED, 0, "");
        return;
    }
    free(r->after);
    r->after = nafter;
    c->base.host->timer_arm(c->op_timer, c->timeout_ms);
    sql_exec(c, ST_LIST);
}

/* A statement of the active request completed (c->res). */
static void
req_on_result(pg_conn_req_t *r)
{
    sql_t *c = r->c;

    switch (r->kind) {
    case OP_ENSURE:
        ensure_result(r);
        break;
    case OP_DISABLE:
        disable_result(r);
        break;
    case OP_REMOVE:
        if (c->res.st != PG_OK) {
            req_fail_res(r);
        } else {
            req_finish(r, PG_OK, PG_CONN_REMOVED, 0, "");
        }
        break;
    case OP_LIST:
        list_result(r);
        break;
    }
}

/* Start request r (now active). */
static void
req_begin(pg_conn_req_t *r)
{
    sql_t *c = r->c;

    c->base.host->timer_arm(c->op_timer, c->timeout_ms);
    switch (r->kind) {
    case OP_ENSURE:
    case OP_DISABLE:
        sql_exec(c, ST_LOOKUP);
        break;
    case OP_REMOVE:
        sql_exec(c, ST_DELETE);
        break;
    case OP_LIST:
        sql_exec(c, ST_LIST);
        break;
    }
}

/* Start the next queued request if none is running. */
static void
sql_pump(sql_t *c)
{
    pg_conn_req_t *r;

    if (c->active != NULL || c->qhead == NULL || c->free_pending) {
        return;
    }
    r = c->qhead;
    c->qhead = r->next;
    if (c->qhead == NULL) {
        c->qtail = NULL;
    }
    r->next = NULL;
    c->active = r;
    req_begin(r);
}

/* 0 ms timer: start the next queued request. */
static void
on_kick(void *arg)
{
    sql_t *c = arg;

    c->depth++;
    sql_pump(c);
    c->depth--;
    if (c->free_pending && c->depth == 0) {
        sql_really_free(c);
    }
}

/* The operation budget ran out: drop the connection, fail the request. */
static void
on_timeout(void *arg)
{
    sql_t *c = arg;
    pg_conn_req_t *r = c->active;

    c->depth++;
    if (r != NULL) {
        conn_drop(c);
        c->pending = -1;
        req_finish(r, PG_ERR_TIMEOUT, PG_CONN_UNCHANGED, 1,
                   r->step >= 0 ? "timeout (connection dropped)"
                                : "timeout");
    }
    c->depth--;
    if (c->free_pending && c->depth == 0) {
        sql_really_free(c);
    }
}

/* Append r to the queue and make sure the loop will start it. */
static void
req_enqueue(sql_t *c, pg_conn_req_t *r, pg_conn_req_t **req_out)
{
    if (c->qtail != NULL) {
        c->qtail->next = r;
    } else {
        c->qhead = r;
    }
    c->qtail = r;
    if (c->active == NULL) {
        c->base.host->timer_arm(c->kick, 0);
    }
    if (req_out != NULL) {
        *req_out = r;
    }
}

/* Copy a list of n strings (each capped); NULL list with n == 0 is ok. */
static pg_status_t
copy_strv(const char *const *in, size_t n, char ***out)
{
    size_t i;
    int oom = 0;

    *out = NULL;
    if (n == 0) {
        return PG_OK;
    }
    if (in == NULL || n > PG_SQL_GROUPS_MAX) {
        return PG_ERR_INVALID;
    }
    *out = calloc(n, sizeof(char *));
    if (*out == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        if (in[i] == NULL || in[i][0] == '\0'
            || strlen(in[i]) > PG_CONN_KEY_MAX) {
            return PG_ERR_INVALID;
        }
        (*out)[i] = xstrdup(in[i], &oom);
        if (oom) {
            return PG_ERR_NOMEM;
        }
    }
    return PG_OK;
}

/* Validate and copy the account into a new request. */
static pg_status_t
req_new(sql_t *c, sql_opkind_t kind, const pg_account_t *a, pg_conn_cb cb,
        void *arg, pg_conn_req_t **out)
{
    pg_conn_req_t *r;
    pg_status_t st;
    int oom = 0;

    *out = NULL;
    if (a == NULL || cb == NULL || a->key == NULL || a->key[0] == '\0'
        || strlen(a->key) > PG_CONN_KEY_MAX
        || (a->id != NULL && strlen(a->id) > PG_CONN_KEY_MAX)
        || (a->attrs != NULL && !json_is_object(a->attrs))) {
        return PG_ERR_INVALID;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return PG_ERR_NOMEM;
    }
    r->c = c;
    r->kind = kind;
    r->step = -1;
    r->cb = cb;
    r->arg = arg;
    r->active = a->active ? 1 : 0;
    r->key = xstrdup(a->key, &oom);
    r->id = a->id != NULL && a->id[0] != '\0' ? xstrdup(a->id, &oom) : NULL;
    r->attrs = a->attrs != NULL ? json_deep_copy(a->attrs) : json_object();
    if (oom || r->attrs == NULL) {
        req_free(r);
        return PG_ERR_NOMEM;
    }
    if (kind == OP_ENSURE) {
        const char *k;
        json_t *v;
        json_object_foreach(r->attrs, k, v) {
            char *t = NULL;
            st = attr_text(v, &t);
            free(t);
            if (st != PG_OK) {
                req_free(r);
                return st;
            }
        }
        st = copy_strv(a->groups, a->ngroups, &r->groups);
        r->ngroups = r->groups != NULL ? a->ngroups : 0;
        if (st == PG_OK) {
            st = copy_strv(a->revoke, a->nrevoke, &r->revoke);
            r->nrevoke = r->revoke != NULL ? a->nrevoke : 0;
        }
        if (st != PG_OK) {
            req_free(r);
            return st;
        }
    }
    *out = r;
    return PG_OK;
}

/* ---- vtable ---------------------------------------------------------- */

/* Common start of ensure/disable/remove: validate, copy, queue. Never
 * calls back; the kick timer starts the request from the loop. */
static pg_status_t
sql_start(pg_connector_t *base, sql_opkind_t kind, const pg_account_t *a,
          pg_conn_cb cb, void *arg, pg_conn_req_t **req_out)
{
    sql_t *c = (sql_t *)base;
    pg_conn_req_t *r;
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (c == NULL || c->free_pending) {
        return PG_ERR_INVALID;
    }
    st = req_new(c, kind, a, cb, arg, &r);
    if (st != PG_OK) {
        return st;
    }
    req_enqueue(c, r, req_out);
    return PG_OK;
}

/* ensure(): lookup, create or compare+update, active, memberships. */
static pg_status_t
sql_ensure(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
           void *arg, pg_conn_req_t **req_out)
{
    return sql_start(c, OP_ENSURE, a, cb, arg, req_out);
}

/* disable(): lookup (NOT_FOUND / already disabled), then disable. */
static pg_status_t
sql_disable(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
            void *arg, pg_conn_req_t **req_out)
{
    return sql_start(c, OP_DISABLE, a, cb, arg, req_out);
}

/* remove(): the delete statement; no row is still REMOVED. */
static pg_status_t
sql_remove(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
           void *arg, pg_conn_req_t **req_out)
{
    return sql_start(c, OP_REMOVE, a, cb, arg, req_out);
}

/* list(): keyset pages of page_size rows; incremental when the list
 * statement uses :since and since_ms > 0. */
static pg_status_t
sql_list(pg_connector_t *base, uint64_t since_ms, pg_conn_page_cb page,
         pg_conn_done_cb done, void *arg, pg_conn_req_t **req_out)
{
    sql_t *c = (sql_t *)base;
    pg_conn_req_t *r;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (c == NULL || page == NULL || done == NULL || c->free_pending) {
        return PG_ERR_INVALID;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return PG_ERR_NOMEM;
    }
    r->c = c;
    r->kind = OP_LIST;
    r->step = -1;
    r->page = page;
    r->done = done;
    r->arg = arg;
    r->since_ms = since_ms;
    req_enqueue(c, r, req_out);
    return PG_OK;
}

/*
 * cancel(): never calls back. A queued request is just dropped; a running
 * one with a statement in flight drops the connection (the statement may
 * or may not have been applied); a connect in progress continues.
 */
static void
sql_cancel(pg_conn_req_t *r)
{
    sql_t *c;
    pg_conn_req_t **pp, *prev = NULL;

    if (r == NULL) {
        return;
    }
    c = r->c;
    if (r == c->active) {
        if (r->in_cb) {
            r->cancel_in_cb = 1;
            return;
        }
        c->base.host->timer_disarm(c->op_timer);
        if (c->cstate == C_BUSY) {
            conn_drop(c);
        }
        c->active = NULL;
        c->pending = -1;
        req_free(r);
        if (c->qhead != NULL && !c->free_pending) {
            c->base.host->timer_arm(c->kick, 0);
        }
        return;
    }
    for (pp = &c->qhead; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            if (c->qtail == r) {
                c->qtail = prev;
            }
            req_free(r);
            return;
        }
        prev = *pp;
    }
}

/* Release the connector now: connection, queued requests, timers, the
 * translated statements and the connection values (password wiped). */
static void
sql_really_free(sql_t *c)
{
    int i, j;

    conn_drop(c);
    req_free(c->active);        /* contract breach by the owner: no leak */
    c->active = NULL;
    while (c->qhead != NULL) {
        pg_conn_req_t *r = c->qhead;
        c->qhead = r->next;
        req_free(r);
    }
    if (c->op_timer != NULL) {
        c->base.host->timer_close(c->op_timer);
    }
    if (c->kick != NULL) {
        c->base.host->timer_close(c->kick);
    }
    res_reset(&c->res);
    for (i = 0; i < ST_COUNT; i++) {
        free(c->st[i].text);
        for (j = 0; j < c->st[i].nparams; j++) {
            free(c->st[i].params[j].attr);
        }
    }
    for (i = 0; i < 8; i++) {
        if (c->vals[i] != NULL) {
            explicit_bzero(c->vals[i], strlen(c->vals[i]));
            free(c->vals[i]);
        }
    }
    free(c->base.name);
    free(c);
}

/* free(): safe from inside a callback (deferred until it returns). */
static void
sql_free(pg_connector_t *base)
{
    sql_t *c = (sql_t *)base;

    if (c == NULL) {
        return;
    }
    if (c->depth > 0) {
        c->free_pending = 1;
        conn_drop(c);
        return;
    }
    sql_really_free(c);
}

static const pg_connector_vt_t sql_vt = {
    .type = "sql",
    .ensure = sql_ensure,
    .disable = sql_disable,
    .remove = sql_remove,
    .list = sql_list,
    .cancel = sql_cancel,
    .free = sql_free,
};

/* ---- constructor ----------------------------------------------------- */

/* Append one libpq keyword (static string) and a copy of its value. At
 * most 7 pairs; the arrays stay NULL-terminated by parse_conn. */
static pg_status_t
add_kw(sql_t *c, int *n, const char *kw, const char *val)
{
    int oom = 0;

    if (*n >= 7) {
        return PG_ERR_INTERNAL;
    }
    c->kw[*n] = kw;
    c->vals[*n] = xstrdup(val, &oom);
    if (oom) {
        return PG_ERR_NOMEM;
    }
    (*n)++;
    return PG_OK;
}

/* Connection keywords from conninfo or the discrete keys. */
static pg_status_t
parse_conn(sql_t *c, const json_t *cfg, pg_err_t *err)
{
    static const char *const discrete[] = {
        "host", "port", "dbname", "user", "password_file", NULL
    };
    const char *conninfo, *s;
    int n = 0, i;
    pg_status_t st;

    st = pg_conn_cfg_str(cfg, "connector", "conninfo", 0, &conninfo, err);
    if (st != PG_OK) {
        return st;
    }
    if (conninfo != NULL) {
        char *perr = NULL;
        PQconninfoOption *opts;
        for (i = 0; discrete[i] != NULL; i++) {
            if (json_object_get(cfg, discrete[i]) != NULL) {
                pg_err_set(err, "connector.%s: not allowed with conninfo",
                           discrete[i]);
                return PG_ERR_CONFIG;
            }
        }
        if (strlen(conninfo) > 4096) {
            pg_err_set(err, "connector.conninfo: longer than 4096 bytes");
            return PG_ERR_CONFIG;
        }
        /* Validate now; libpq's message is not echoed (may hold secrets). */
        opts = PQconninfoParse(conninfo, &perr);
        if (opts == NULL) {
            PQfreemem(perr);
            pg_err_set(err, "connector.conninfo: not a valid libpq "
                            "connection string or URI");
            return PG_ERR_CONFIG;
        }
        PQconninfoFree(opts);
        st = add_kw(c, &n, "dbname", conninfo);
    } else {
        unsigned port;
        char pbuf[16];
        if (json_object_get(cfg, "host") == NULL) {
            pg_err_set(err, "connector.conninfo: required (or host)");
            return PG_ERR_CONFIG;
        }
        st = pg_conn_cfg_str(cfg, "connector", "host", 1, &s, err);
        if (st == PG_OK) {
            st = add_kw(c, &n, "host", s);
        }
        if (st == PG_OK) {
            st = pg_conn_cfg_uint(cfg, "connector", "port", 1, 65535, 5432,
                                  &port, err);
        }
        if (st == PG_OK) {
            snprintf(pbuf, sizeof(pbuf), "%u", port);
            st = add_kw(c, &n, "port", pbuf);
        }
        if (st == PG_OK) {
            st = pg_conn_cfg_str(cfg, "connector", "dbname", 0, &s, err);
        }
        if (st == PG_OK && s != NULL) {
            st = add_kw(c, &n, "dbname", s);
        }
        if (st == PG_OK) {
            st = pg_conn_cfg_str(cfg, "connector", "user", 0, &s, err);
        }
        if (st == PG_OK && s != NULL) {
            st = add_kw(c, &n, "user", s);
        }
        if (st == PG_OK) {
            st = pg_conn_cfg_str(cfg, "connector", "password_file", 0, &s,
                                 err);
        }
        if (st == PG_OK && s != NULL) {
            char *pw = NULL;
            size_t pwlen = 0;
            pg_err_t ferr;
            st = pg_read_file(s, 1024, 1, &pw, &pwlen, &ferr);
            if (st != PG_OK) {
                pg_err_set(err, "connector.password_file: %s", ferr.msg);
                return PG_ERR_CONFIG;
            }
            st = add_kw(c, &n, "password", pw);
            explicit_bzero(pw, pwlen);
            free(pw);
        }
        if (st != PG_OK) {
            return st;
        }
    }
    if (st == PG_OK) {
        st = add_kw(c, &n, "fallback_application_name", "provgate");
    }
    if (st == PG_OK) {
        st = add_kw(c, &n, "client_encoding", "UTF8");
    }
    c->kw[n] = NULL;
    c->vals[n] = NULL;
    return st;
}

/* Statements: required ones present, parameters valid and sufficient. */
static pg_status_t
parse_statements(sql_t *c, const json_t *cfg, pg_err_t *err)
{
    const json_t *sts = json_object_get(cfg, "statements");
    const char *names[ST_COUNT + 1];
    char path[96];
    int i, ngroup = 0;
    pg_status_t st;

    if (sts == NULL) {
        pg_err_set(err, "connector.statements: required");
        return PG_ERR_CONFIG;
    }
    for (i = 0; i < ST_COUNT; i++) {
        names[i] = stmt_names[i];
    }
    names[ST_COUNT] = NULL;
    st = pg_conn_cfg_known(sts, "connector.statements", names, err);
    if (st != PG_OK) {
        return st;
    }
    for (i = 0; i < ST_COUNT; i++) {
        const char *sql;
        snprintf(path, sizeof(path), "connector.statements.%s",
                 stmt_names[i]);
        st = pg_conn_cfg_str(sts, "connector.statements", stmt_names[i],
                             i < ST_GLIST, &sql, err);
        if (st != PG_OK) {
            return st;
        }
        if (sql == NULL) {
            continue;
        }
        ngroup += i >= ST_GLIST;
        st = translate(sql, stmt_allowed[i], &c->st[i], path, err);
        if (st != PG_OK) {
            return st;
        }
        if (i != ST_LIST && i != ST_CREATE
            && (c->st[i].used & (SPM(SP_KEY) | SPM(SP_ID))) == 0) {
            pg_err_set(err, "%s: must use :key or :id", path);
            return PG_ERR_CONFIG;
        }
        if (i == ST_CREATE && (c->st[i].used & SPM(SP_KEY)) == 0) {
            pg_err_set(err, "%s: must use :key", path);
            return PG_ERR_CONFIG;
        }
        if (i == ST_LIST && (c->st[i].used & (SPM(SP_AFTER) | SPM(SP_LIMIT)))
                            != (SPM(SP_AFTER) | SPM(SP_LIMIT))) {
            pg_err_set(err, "%s: must use :after and :limit (keyset paging)",
                       path);
            return PG_ERR_CONFIG;
        }
        if ((i == ST_GADD || i == ST_GREMOVE)
            && (c->st[i].used & SPM(SP_GROUP)) == 0) {
            pg_err_set(err, "%s: must use :group", path);
            return PG_ERR_CONFIG;
        }
    }
    if (ngroup != 0 && ngroup != 3) {
        for (i = ST_GLIST; i < ST_COUNT; i++) {
            if (!c->st[i].present) {
                pg_err_set(err, "connector.statements.%s: required with the "
                                "other group statements", stmt_names[i]);
                return PG_ERR_CONFIG;
            }
        }
    }
    c->has_groups = ngroup == 3;
    return PG_OK;
}

/* Contract: see sqlconn.h. */
pg_status_t
pg_sql_connector_new(const pg_host_t *host, const char *name,
                     const json_t *cfg, pg_connector_t **out, pg_err_t *err)
{
    static const char *const known[] = {
        "type", "conninfo", "host", "port", "dbname", "user",
        "password_file", "timeout_ms", "page_size", "statements", NULL
    };
    const char *type;
    sql_t *c;
    pg_status_t st;
    int oom = 0;

    if (out != NULL) {
        *out = NULL;
    }
    if (host == NULL || out == NULL || name == NULL || host->watch_open == NULL
        || host->timer_open == NULL) {
        pg_err_set(err, "connector: invalid arguments");
        return PG_ERR_INVALID;
    }
    st = pg_conn_cfg_known(cfg, "connector", known, err);
    if (st != PG_OK) {
        return st;
    }
    st = pg_conn_cfg_str(cfg, "connector", "type", 0, &type, err);
    if (st != PG_OK) {
        return st;
    }
    if (type != NULL && strcmp(type, "sql") != 0) {
        pg_err_set(err, "connector.type: must be \"sql\"");
        return PG_ERR_CONFIG;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return PG_ERR_NOMEM;
    }
    c->base.vt = &sql_vt;
    c->base.host = host;
    c->pending = -1;
    c->base.name = xstrdup(name, &oom);
    if (oom) {
        sql_really_free(c);
        return PG_ERR_NOMEM;
    }
    st = pg_conn_cfg_uint(cfg, "connector", "timeout_ms", 10, 120000, 5000,
                          &c->timeout_ms, err);
    if (st == PG_OK) {
        st = pg_conn_cfg_uint(cfg, "connector", "page_size", 1,
                              PG_CONN_PAGE_MAX, 500, &c->page_size, err);
    }
    if (st == PG_OK) {
        st = parse_conn(c, cfg, err);
    }
    if (st == PG_OK) {
        st = parse_statements(c, cfg, err);
    }
    if (st == PG_OK) {
        c->op_timer = host->timer_open(host->ctx, on_timeout, c);
        c->kick = host->timer_open(host->ctx, on_kick, c);
        if (c->op_timer == NULL || c->kick == NULL) {
            st = PG_ERR_NOMEM;
        }
    }
    if (st != PG_OK) {
        sql_really_free(c);
        return st;
    }
    c->base.caps = PG_CONN_CAP_LIST | PG_CONN_CAP_DISABLE
                   | (c->has_groups ? PG_CONN_CAP_GROUPS : 0)
                   | ((c->st[ST_LIST].used & SPM(SP_SINCE))
                      ? PG_CONN_CAP_INCREMENTAL : 0);
    *out = &c->base;
    return PG_OK;
}
