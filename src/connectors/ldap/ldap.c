/*
 * provgate connectors: the LDAP connector (include/provgate/ldapconn.h).
 *
 * One libldap handle per connector, connected asynchronously and driven
 * entirely from host watches and timers:
 *
 *   conn DOWN --first op--> CONNECTING (watch WRITE; ldap_sasl_bind gives
 *   LDAP_X_CONNECTING until the TCP connect is done) --> [STARTTLS: an
 *   ldap_start_tls exop, then ldap_install_tls] --> BINDING (simple bind
 *   msgid, watch READ) --> READY.
 *
 * Every operation is a pg_conn_req_t with its own host timer: the timer
 * first fires at 0 ms ("kick", so no callback ever runs inside the start
 * call), then is re-armed for the operation's deadline. An operation has
 * at most one LDAP request in flight (op->msgid); results are dispatched
 * by msgid from the watch handler. Callbacks may start, cancel or free
 * anything: the connector counts handler depth (busy) and defers its own
 * free until the outermost handler returns.
 */
#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#include <lber.h>
#include <ldap.h>

#include "provgate/ldapconn.h"

#define LDAP_PW_FILE_MAX 4096
#define LDAP_FILTER_MAX  (PG_CONN_KEY_MAX * 3 + 1024)

typedef enum { DIS_NONE = 0, DIS_ATTR, DIS_MOVE } dis_mode_t;

typedef enum {
    CONN_DOWN = 0, CONN_CONNECTING, CONN_TLS, CONN_BINDING, CONN_READY
} conn_state_t;

typedef enum { OP_ENSURE, OP_DISABLE, OP_REMOVE, OP_LIST } op_kind_t;

typedef enum {
    ST_NONE = 0,
    ST_FIND,          /* account search in base_dn */
    ST_FIND2,         /* account search in disabled_ou */
    ST_ADD,
    ST_MODIFY,
    ST_RENAME,
    ST_GCUR,          /* groups the account is a member of */
    ST_GLOOKUP,       /* DNs of the groups to join */
    ST_GMOD,          /* one group modify */
    ST_DELETE,
    ST_LGROUPS,       /* list: membership map, paged */
    ST_LACCTS         /* list: accounts, paged */
} op_state_t;

typedef struct pg_ldap pg_ldap_t;

/* One listed account waiting in the page buffer. */
typedef struct lacct {
    char *key;
    char *id;
    json_t *attrs;
    json_t *groups;           /* array of names (reference) or NULL */
    int active;
    uint64_t modified_ms;
} lacct_t;

/* One pending group modify. */
typedef struct gmod {
    char *gdn;
    char *name;
    int add;                  /* add member_new */
    int del;                  /* delete member_old */
} gmod_t;

struct pg_conn_req {
    pg_ldap_t *c;
    pg_conn_req_t *prev, *next;
    op_kind_t kind;
    op_state_t st;
    int msgid;                /* -1: nothing in flight */
    int started;              /* kick ran */
    int waiting;              /* waits for the connection */
    int retried;              /* restarted once after a lost connection */
    int in_cb;                /* page callback running */
    int cancelled;            /* cancelled during the page callback */
    int delivered;            /* list: a page went to the callback */
    uint64_t deadline_ms;
    pg_timer_t *timer;
    pg_conn_cb cb;
    pg_conn_page_cb page;
    pg_conn_done_cb done;
    void *arg;

    /* desired state */
    char *key;
    json_t *want;             /* name -> array of strings (deduplicated) */
    char **groups;
    size_t ngroups;
    char **revoke;
    size_t nrevoke;
    int active;

    /* what was found */
    int nfound;
    char *dn;
    char *uuid;
    json_t *cur;              /* name (as returned) -> array of strings */

    /* progress */
    json_t *changes;
    int created;
    int disabled_now;
    int fixed_members;        /* group phase done */
    char *member_old;         /* DN currently listed in groups */
    char *member_new;         /* DN that must be listed (NULL: none) */
    json_t *gcur;             /* group DN -> name (current memberships) */
    json_t *glook;            /* lower-case name -> group DN */
    gmod_t *gmods;
    size_t ngmods, gidx;

    /* list */
    uint64_t since_ms;
    int base_idx;
    struct berval cookie;
    json_t *gmap;             /* normalised member DN -> array of names */
    size_t nmembers;
    lacct_t *buf;
    size_t nbuf;
};

struct pg_ldap {
    pg_connector_t base;      /* first */
    /* config */
    char *url;
    char *bind_dn;
    char *bind_pw;
    int starttls;
    char *tls_ca;
    unsigned timeout_ms;
    char *base_dn;
    char **ocs;
    size_t nocs;
    char *rdn_attr;
    char *key_attr;
    char *g_base;             /* NULL: groups not managed */
    char *g_oc;
    char *g_member;
    char *g_name;
    dis_mode_t dmode;
    char *d_attr;
    char *d_value;
    char *d_enabled;          /* value written on re-enable, or NULL */
    char *d_ou;
    int d_ou_separate;        /* disabled_ou is not under base_dn */
    unsigned page_size;

    /* connection */
    LDAP *ld;
    conn_state_t state;
    int fd;
    int conn_msgid;
    pg_watch_t *watch;
    int want_write;           /* WRITE interest armed by sent() */
    pg_timer_t *conn_timer;

    pg_conn_req_t *ops;       /* doubly linked */
    int busy;
    int free_pending;
};

/* ---- small helpers ---------------------------------------------------- */

/* Contract: see ldapconn.h. */
pg_status_t
pg_ldap_filter_escape(const char *in, size_t n, char *out, size_t outsz)
{
    static const char hex[] = "0123456789abcdef";
    size_t i, o = 0;

    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char) in[i];

        if (ch == '*' || ch == '(' || ch == ')' || ch == '\\' || ch < 0x20
            || ch == 0x7f) {
            if (o + 3 >= outsz) {
                return PG_ERR_TOO_LARGE;
            }
            out[o++] = '\\';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 0xf];
        } else {
            if (o + 1 >= outsz) {
                return PG_ERR_TOO_LARGE;
            }
            out[o++] = (char) ch;
        }
    }
    if (o >= outsz) {
        return PG_ERR_TOO_LARGE;
    }
    out[o] = '\0';
    return PG_OK;
}

/* Contract: see ldapconn.h. */
pg_status_t
pg_ldap_dn_escape(const char *in, size_t n, char *out, size_t outsz)
{
    static const char hex[] = "0123456789abcdef";
    size_t i, o = 0;

    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char) in[i];

        if (ch < 0x20 || ch == 0x7f) {
            if (o + 3 >= outsz) {
                return PG_ERR_TOO_LARGE;
            }
            out[o++] = '\\';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 0xf];
            continue;
        }
        if (strchr(",+\"\\<>;=", ch) != NULL || (i == 0 && ch == '#')
            || ((i == 0 || i == n - 1) && ch == ' ')) {
            if (o + 2 >= outsz) {
                return PG_ERR_TOO_LARGE;
            }
            out[o++] = '\\';
        } else if (o + 1 >= outsz) {
            return PG_ERR_TOO_LARGE;
        }
        out[o++] = (char) ch;
    }
    if (o >= outsz) {
        return PG_ERR_TOO_LARGE;
    }
    out[o] = '\0';
    return PG_OK;
}

/* malloc'd copy of s (NULL for NULL or OOM). */
static char *
xstrdup(const char *s)
{
    size_t n;
    char *p;

    if (s == NULL) {
        return NULL;
    }
    n = strlen(s);
    p = malloc(n + 1);
    if (p != NULL) {
        memcpy(p, s, n + 1);
    }
    return p;
}

/* malloc'd concatenation of up to three strings (NULL on OOM). */
static char *
xcat3(const char *a, const char *b, const char *d)
{
    size_t la = strlen(a), lb = strlen(b), ld = strlen(d);
    char *p = malloc(la + lb + ld + 1);

    if (p != NULL) {
        memcpy(p, a, la);
        memcpy(p + la, b, lb);
        memcpy(p + la + lb, d, ld + 1);
    }
    return p;
}

/* 1 when name is an LDAP attribute description we accept: a letter, then
 * letters, digits or '-', at most 64 bytes (no options). */
static int
attr_name_ok(const char *s)
{
    size_t i, n = strlen(s);

    if (n == 0 || n > 64 || !isalpha((unsigned char) s[0])) {
        return 0;
    }
    for (i = 1; i < n; i++) {
        if (!isalnum((unsigned char) s[i]) && s[i] != '-') {
            return 0;
        }
    }
    return 1;
}

/* Member of obj whose name equals key ASCII case-insensitively (borrowed). */
static json_t *
obj_get_ci(const json_t *obj, const char *key)
{
    const char *k;
    json_t *v;

    if (obj == NULL) {
        return NULL;
    }
    v = json_object_get(obj, key);
    if (v != NULL) {
        return v;
    }
    json_object_foreach((json_t *) obj, k, v) {
        if (strcasecmp(k, key) == 0) {
            return v;
        }
    }
    return NULL;
}

/* 1 when the array of strings arr holds s (exact, or ASCII case-insensitive
 * when ci is set). */
static int
arr_has(const json_t *arr, const char *s, int ci)
{
    size_t i;
    json_t *v;

    json_array_foreach(arr, i, v) {
        const char *t = json_string_value(v);

        if (t != NULL && (ci ? strcasecmp(t, s) : strcmp(t, s)) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Normalised, ASCII-lower-cased form of dn as a malloc'd string (NULL on
 * a malformed DN or OOM). Used only to compare DNs. */
static char *
dn_norm(const char *dn)
{
    char *out = NULL, *p, *q;

    if (ldap_dn_normalize(dn, LDAP_DN_FORMAT_LDAP, &out,
                          LDAP_DN_FORMAT_LDAPV3) != LDAP_SUCCESS
        || out == NULL) {
        return NULL;
    }
    p = xstrdup(out);
    ldap_memfree(out);
    for (q = p; q != NULL && *q != '\0'; q++) {
        *q = (char) tolower((unsigned char) *q);
    }
    return p;
}

/* 1 when dn is (strictly) below parent, comparing normalised forms. */
static int
dn_under(const char *dn, const char *parent)
{
    char *a = dn_norm(dn), *b = dn_norm(parent);
    int r = 0;

    if (a != NULL && b != NULL) {
        size_t la = strlen(a), lb = strlen(b);

        r = la > lb + 1 && a[la - lb - 1] == ',' && strcmp(a + la - lb, b) == 0;
    }
    free(a);
    free(b);
    return r;
}

/* 1 when both DNs normalise to the same string. */
static int
dn_same(const char *x, const char *y)
{
    char *a = dn_norm(x), *b = dn_norm(y);
    int r = a != NULL && b != NULL && strcmp(a, b) == 0;

    free(a);
    free(b);
    return r;
}

/* Length of the first RDN of dn (up to the first unescaped ','). */
static size_t
dn_rdn_len(const char *dn)
{
    size_t i;

    for (i = 0; dn[i] != '\0'; i++) {
        if (dn[i] == '\\' && dn[i + 1] != '\0') {
            i++;
        } else if (dn[i] == ',') {
            break;
        }
    }
    return i;
}

/* Parse a GeneralizedTime "YYYYMMDDHHMMSS[.f]Z" into epoch ms; 0 if bad. */
static uint64_t
gentime_ms(const char *s)
{
    struct tm tm;
    int v[6], widths[6] = { 4, 2, 2, 2, 2, 2 };
    size_t i, p = 0;
    uint64_t ms = 0;
    time_t t;

    for (i = 0; i < 6; i++) {
        int j, x = 0;

        for (j = 0; j < widths[i]; j++, p++) {
            if (!isdigit((unsigned char) s[p])) {
                return 0;
            }
            x = x * 10 + (s[p] - '0');
        }
        v[i] = x;
    }
    if (s[p] == '.' || s[p] == ',') {
        unsigned scale = 100;

        p++;
        while (isdigit((unsigned char) s[p])) {
            ms += (uint64_t) (s[p] - '0') * scale;
            scale /= 10;
            p++;
        }
    }
    if (s[p] != 'Z') {
        return 0;
    }
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = v[0] - 1900;
    tm.tm_mon = v[1] - 1;
    tm.tm_mday = v[2];
    tm.tm_hour = v[3];
    tm.tm_min = v[4];
    tm.tm_sec = v[5];
    t = timegm(&tm);
    if (t < 0) {
        return 0;
    }
    return (uint64_t) t * 1000u + ms;
}

/* ---- desired values ----------------------------------------------------- */

/*
 * Convert one desired attribute value (string, number, bool, null or
 * array of those scalars) to a new array of distinct non-empty strings.
 * Booleans become TRUE / FALSE (LDAP Boolean syntax). Caps: value bytes
 * PG_LDAP_VALUE_MAX, values PG_LDAP_VALUES_MAX. NULL on a bad shape.
 */
static json_t *
want_values(const json_t *v, const char *name, pg_err_t *err)
{
    json_t *out = json_array(), *items = NULL;
    size_t i, n;

    if (out == NULL) {
        return NULL;
    }
    if (json_is_array(v)) {
        items = (json_t *) v;
        n = json_array_size(v);
    } else {
        n = 1;
    }
    if (n > PG_LDAP_VALUES_MAX) {
        pg_err_set(err, "attribute %s: too many values", name);
        goto bad;
    }
    for (i = 0; i < n; i++) {
        const json_t *x = items != NULL ? json_array_get(items, i) : v;
        char num[64];
        const char *s = NULL;
        size_t len = 0;

        if (json_is_string(x)) {
            s = json_string_value(x);
            len = json_string_length(x);
            if (strlen(s) != len) {
                pg_err_set(err, "attribute %s: NUL in value", name);
                goto bad;
            }
        } else if (json_is_integer(x)) {
            snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(x));
            s = num;
        } else if (json_is_real(x)) {
            snprintf(num, sizeof(num), "%.17g", json_real_value(x));
            s = num;
        } else if (json_is_boolean(x)) {
            s = json_is_true(x) ? "TRUE" : "FALSE";
        } else if (json_is_null(x)) {
            continue;
        } else {
            pg_err_set(err, "attribute %s: values must be scalars", name);
            goto bad;
        }
        len = strlen(s);
        if (len == 0) {
            continue;
        }
        if (len > PG_LDAP_VALUE_MAX) {
            pg_err_set(err, "attribute %s: value over %u bytes", name,
                       (unsigned) PG_LDAP_VALUE_MAX);
            goto bad;
        }
        if (!arr_has(out, s, 0) && json_array_append_new(out, json_string(s))) {
            goto bad;
        }
    }
    return out;
bad:
    json_decref(out);
    return NULL;
}

/* Same set of strings (exact compare; neither has duplicates). */
static int
values_equal(const json_t *a, const json_t *b)
{
    size_t i;
    json_t *v;

    if (json_array_size(a) != json_array_size(b)) {
        return 0;
    }
    json_array_foreach(a, i, v) {
        if (!arr_has(b, json_string_value(v), 0)) {
            return 0;
        }
    }
    return 1;
}

/* ---- LDAPMod lists ------------------------------------------------------ */

typedef struct modlist {
    LDAPMod *mods[PG_LDAP_ATTRS_MAX + 8];
    size_t n;
} modlist_t;

/* Append a modification of name with the strings of vals (may be NULL for
 * a delete of the whole attribute). Strings are copied. -1 on OOM / full. */
static int
ml_add(modlist_t *ml, int op, const char *name, const json_t *vals)
{
    LDAPMod *m;
    size_t i, n = vals != NULL ? json_array_size(vals) : 0;

    if (ml->n + 1 >= sizeof(ml->mods) / sizeof(ml->mods[0])) {
        return -1;
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return -1;
    }
    ml->mods[ml->n++] = m;
    ml->mods[ml->n] = NULL;
    m->mod_op = op;
    m->mod_type = xstrdup(name);
    if (m->mod_type == NULL) {
        return -1;
    }
    if (vals == NULL) {
        return 0;
    }
    m->mod_values = calloc(n + 1, sizeof(char *));
    if (m->mod_values == NULL) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        m->mod_values[i] = xstrdup(json_string_value(json_array_get(vals, i)));
        if (m->mod_values[i] == NULL) {
            return -1;
        }
    }
    return 0;
}

/* Add a modification with one string value. */
static int
ml_add1(modlist_t *ml, int op, const char *name, const char *value)
{
    json_t *a = json_pack("[s]", value);
    int r;

    if (a == NULL) {
        return -1;
    }
    r = ml_add(ml, op, name, a);
    json_decref(a);
    return r;
}
/* Free every modification of ml (the list itself is on the stack). */
static void
ml_free(modlist_t *ml)
{
    size_t i, j;

    for (i = 0; i < ml->n; i++) {
        LDAPMod *m = ml->mods[i];

        if (m->mod_values != NULL) {
            for (j = 0; m->mod_values[j] != NULL; j++) {
                free(m->mod_values[j]);
            }
            free(m->mod_values);
        }
        free(m->mod_type);
        free(m);
    }
    ml->n = 0;
    ml->mods[0] = NULL;
}

/* ---- operation life cycle ---------------------------------------------- */

static void conn_open(pg_ldap_t *c);
static void conn_drop(pg_ldap_t *c, pg_status_t st, const char *why);
static void op_begin(pg_conn_req_t *op);
static void real_free(pg_ldap_t *c);
/* Take op out of its connector's list (no-op when not linked). */
static void
op_unlink(pg_conn_req_t *op)
{
    pg_ldap_t *c = op->c;

    if (op->prev != NULL) {
        op->prev->next = op->next;
    } else if (c->ops == op) {
        c->ops = op->next;
    }
    if (op->next != NULL) {
        op->next->prev = op->prev;
    }
    op->prev = op->next = NULL;
}
/* Free n malloc'd strings and the array (NULL entries allowed). */
static void
strv_free(char **v, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        free(v[i]);
    }
    free(v);
}
/* Drop the list page buffer's accounts (the buffer stays allocated). */
static void
buf_clear(pg_conn_req_t *op)
{
    size_t i;

    for (i = 0; i < op->nbuf; i++) {
        free(op->buf[i].key);
        free(op->buf[i].id);
        json_decref(op->buf[i].attrs);
        json_decref(op->buf[i].groups);
    }
    op->nbuf = 0;
}
/* Drop the queued group modifications. */
static void
gmods_clear(pg_conn_req_t *op)
{
    size_t i;

    for (i = 0; i < op->ngmods; i++) {
        free(op->gmods[i].gdn);
        free(op->gmods[i].name);
    }
    free(op->gmods);
    op->gmods = NULL;
    op->ngmods = op->gidx = 0;
}

/* Abandon what op has in flight (no reply will be delivered). */
static void
op_abandon(pg_conn_req_t *op)
{
    if (op->msgid >= 0 && op->c->ld != NULL) {
        (void) ldap_abandon_ext(op->c->ld, op->msgid, NULL, NULL);
    }
    op->msgid = -1;
}

/* Free op (already unlinked); closes its timer. */
static void
op_free(pg_conn_req_t *op)
{
    if (op->timer != NULL) {
        op->c->base.host->timer_close(op->timer);
    }
    free(op->key);
    json_decref(op->want);
    strv_free(op->groups, op->ngroups);
    strv_free(op->revoke, op->nrevoke);
    free(op->dn);
    free(op->uuid);
    json_decref(op->cur);
    json_decref(op->changes);
    free(op->member_old);
    free(op->member_new);
    json_decref(op->gcur);
    json_decref(op->glook);
    gmods_clear(op);
    ber_memfree(op->cookie.bv_val);
    json_decref(op->gmap);
    buf_clear(op);
    free(op->buf);
    free(op);
}

/* Clean a server diagnostic for res->error: printable ASCII only. */
static void
msg_clean(char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char) *s < 0x20 || (unsigned char) *s >= 0x7f) {
            *s = ' ';
        }
    }
}

/*
 * Finish op: unlink it, close its timer, abandon what is in flight, call
 * its callback once with st and the outcome, then free it.
 */
static void
op_finish(pg_conn_req_t *op, pg_status_t st, pg_conn_outcome_t outcome,
          int retryable, const char *error)
{
    char ebuf[PG_CONN_ERROR_MAX];
    pg_conn_result_t res;

    op_unlink(op);
    op_abandon(op);
    if (op->timer != NULL) {
        op->c->base.host->timer_close(op->timer);
        op->timer = NULL;
    }
    snprintf(ebuf, sizeof(ebuf), "%s", error != NULL ? error : "");
    msg_clean(ebuf);
    if (op->kind == OP_LIST) {
        op->done(op->arg, st, st == PG_OK ? "" : ebuf);
    } else {
        memset(&res, 0, sizeof(res));
        res.outcome = st == PG_OK ? outcome : PG_CONN_UNCHANGED;
        res.id = op->uuid != NULL ? op->uuid : (op->dn != NULL ? op->dn : "");
        res.changes = st == PG_OK ? op->changes : NULL;
        res.retryable = st == PG_OK ? 0 : retryable;
        res.error = st == PG_OK ? "" : ebuf;
        op->cb(op->arg, st, &res);
    }
    op_free(op);
}

/* Fail op with a formatted reason (capped at PG_CONN_ERROR_MAX). */
static void
op_fail(pg_conn_req_t *op, pg_status_t st, int retryable, const char *fmt,
        ...) PG_PRINTF(4, 5);

static void
op_fail(pg_conn_req_t *op, pg_status_t st, int retryable, const char *fmt,
        ...)
{
    char buf[PG_CONN_ERROR_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    op_finish(op, st, PG_CONN_UNCHANGED, retryable, buf);
}

/* Map an LDAP result code to a status and retryability. */
static pg_status_t
map_code(int code, int *retryable)
{
    *retryable = 0;
    switch (code) {
    case LDAP_INVALID_CREDENTIALS:
    case LDAP_INAPPROPRIATE_AUTH:
    case LDAP_INSUFFICIENT_ACCESS:
    case LDAP_STRONG_AUTH_REQUIRED:
    case LDAP_CONFIDENTIALITY_REQUIRED:
    case LDAP_UNWILLING_TO_PERFORM:
    case LDAP_AUTH_METHOD_NOT_SUPPORTED:
        return PG_ERR_DENIED;
    case LDAP_BUSY:
    case LDAP_UNAVAILABLE:
    case LDAP_ADMINLIMIT_EXCEEDED:
        *retryable = 1;
        return PG_ERR_BUSY;
    case LDAP_TIMELIMIT_EXCEEDED:
    case LDAP_TIMEOUT:
        *retryable = 1;
        return PG_ERR_TIMEOUT;
    case LDAP_ALREADY_EXISTS:
        return PG_ERR_CONFLICT;
    case LDAP_NO_SUCH_OBJECT:
        *retryable = 1;
        return PG_ERR_NOT_FOUND;
    case LDAP_SERVER_DOWN:
    case LDAP_CONNECT_ERROR:
    case LDAP_LOCAL_ERROR:
    case LDAP_OTHER:
        *retryable = 1;
        return PG_ERR_IO;
    case LDAP_NO_MEMORY:
        *retryable = 1;
        return PG_ERR_NOMEM;
    default:
        return PG_ERR_INVALID;
    }
}
/* Fail op from an LDAP result code; diag (server text) is capped. */
static void
op_fail_code(pg_conn_req_t *op, const char *what, int code, const char *diag)
{
    int retryable;
    pg_status_t st = map_code(code, &retryable);

    op_fail(op, st, retryable, "ldap %s: %s%s%.200s", what,
            ldap_err2string(code), diag != NULL && *diag ? ": " : "",
            diag != NULL ? diag : "");
}

/* A client-side libldap failure of a send call. */
static void
op_send_failed(pg_conn_req_t *op, const char *what, int rc)
{
    if (rc == LDAP_SERVER_DOWN || rc == LDAP_CONNECT_ERROR) {
        /* the handle is dead: drop it (fails or restarts op too) */
        conn_drop(op->c, PG_ERR_IO, "connection lost");
        return;
    }
    op_fail_code(op, what, rc, NULL);
}
/* Record name once in op->changes (best effort on OOM). */
static void
add_change(pg_conn_req_t *op, const char *name)
{
    if (op->changes == NULL) {
        op->changes = json_array();
    }
    if (op->changes != NULL && !arr_has(op->changes, name, 1)) {
        (void) json_array_append_new(op->changes, json_string(name));
    }
}

/* ---- connector entry guards ----------------------------------------- */
/* Handler entry: while busy, pg_connector_free() only marks the free. */
static void
enter(pg_ldap_t *c)
{
    c->busy++;
}
/* Handler exit: run a free that was asked for meanwhile. c may be gone
 * afterwards. */
static void
leave(pg_ldap_t *c)
{
    c->busy--;
    if (c->busy == 0 && c->free_pending) {
        real_free(c);
    }
}

/* ---- connection ------------------------------------------------------ */

static void conn_io(void *arg, int fd, unsigned events);

/* Start every operation that waits for the connection (now READY). */
static void
conn_ready(pg_ldap_t *c)
{
    pg_conn_req_t *op;
    LDAP *ld = c->ld;

    c->state = CONN_READY;
    c->base.host->timer_disarm(c->conn_timer);
    for (;;) {
        for (op = c->ops; op != NULL; op = op->next) {
            if (op->started && op->waiting) {
                break;
            }
        }
        if (op == NULL || c->ld != ld || c->state != CONN_READY) {
            return;
        }
        op->waiting = 0;
        op_begin(op);
    }
}

/* Close the handle and watch (no callbacks). */
static void
conn_close(pg_ldap_t *c)
{
    if (c->watch != NULL) {
        c->base.host->watch_close(c->watch);
        c->watch = NULL;
    }
    if (c->ld != NULL) {
        /* sends an unbind on a non-blocking socket; never waits */
        (void) ldap_unbind_ext(c->ld, NULL, NULL);
        c->ld = NULL;
    }
    c->fd = -1;
    c->want_write = 0;
    c->state = CONN_DOWN;
    c->conn_msgid = -1;
    if (c->conn_timer != NULL) {
        c->base.host->timer_disarm(c->conn_timer);
    }
}

/*
 * Drop the connection and deal with every started operation: one that
 * has not been restarted yet is restarted once (kicked again: it will
 * reconnect), the others fail with st (retryable).
 */
static void
conn_drop(pg_ldap_t *c, pg_status_t st, const char *why)
{
    pg_conn_req_t *op;

    conn_close(c);
    for (op = c->ops; op != NULL; op = op->next) {
        if (!op->started) {
            continue;
        }
        op->msgid = -1;
        if (!op->retried && !op->waiting && st == PG_ERR_IO
            && !op->delivered) {
            /* lost mid-operation: start over on a new connection */
            op->retried = 1;
            op->started = 0;
            op->waiting = 0;
            c->base.host->timer_arm(op->timer, 0);
        }
    }
    for (;;) {
        for (op = c->ops; op != NULL; op = op->next) {
            if (op->started) {
                break;
            }
        }
        if (op == NULL) {
            return;
        }
        op_fail(op, st, 1, "%s", why);
    }
}
/* Connect/bind budget ran out: drop and fail whoever waits. */
static void
conn_timeout(void *arg)
{
    pg_ldap_t *c = arg;

    enter(c);
    conn_drop(c, PG_ERR_TIMEOUT, "connect/bind timed out");
    leave(c);
}

/* Fail every waiting operation with a bind / TLS refusal and close. */
static void
conn_refused(pg_ldap_t *c, const char *what, int code, const char *diag)
{
    int retryable;
    pg_status_t st = map_code(code, &retryable);
    char msg[256];
    pg_conn_req_t *op;

    snprintf(msg, sizeof(msg), "ldap %s: %s%s%.120s", what,
             ldap_err2string(code), diag != NULL && *diag ? ": " : "",
             diag != NULL ? diag : "");
    conn_close(c);
    for (;;) {
        for (op = c->ops; op != NULL; op = op->next) {
            if (op->started) {
                break;
            }
        }
        if (op == NULL) {
            return;
        }
        op_fail(op, st, retryable, "%s", msg);
    }
}

/* Send the StartTLS request or the bind; handles LDAP_X_CONNECTING. */
static void
conn_send_first(pg_ldap_t *c)
{
    struct berval pw;
    int rc, fd = -1;

    if (c->starttls && c->state != CONN_TLS) {
        rc = ldap_start_tls(c->ld, NULL, NULL, &c->conn_msgid);
        if (rc == LDAP_SUCCESS) {
            c->state = CONN_TLS;
        }
    } else {
        pw.bv_val = c->bind_pw != NULL ? c->bind_pw : (char *) "";
        pw.bv_len = strlen(pw.bv_val);
        rc = ldap_sasl_bind(c->ld, c->bind_dn != NULL ? c->bind_dn : "",
                            LDAP_SASL_SIMPLE, &pw, NULL, NULL,
                            &c->conn_msgid);
        if (rc == LDAP_SUCCESS) {
            c->state = CONN_BINDING;
        }
    }
    if (rc != LDAP_SUCCESS && rc != LDAP_X_CONNECTING) {
        conn_drop(c, PG_ERR_IO, "cannot connect to the LDAP server");
        return;
    }
    if (c->watch == NULL) {
        if (ldap_get_option(c->ld, LDAP_OPT_DESC, &fd) != LDAP_OPT_SUCCESS
            || fd < 0) {
            conn_drop(c, PG_ERR_IO, "no LDAP socket");
            return;
        }
        c->fd = fd;
        {
            int sndbuf = 1024 * 1024;   /* best effort (capped by the OS) */

            (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf,
                              sizeof(sndbuf));
        }
        {
            /* hard cap on one incoming LDAP message (entry or result) */
            Sockbuf *sb = NULL;
            ber_len_t max = PG_LDAP_MESSAGE_MAX;

            if (ldap_get_option(c->ld, LDAP_OPT_SOCKBUF, &sb)
                != LDAP_OPT_SUCCESS || sb == NULL
                || ber_sockbuf_ctrl(sb, LBER_SB_OPT_SET_MAX_INCOMING, &max)
                != 1) {
                conn_drop(c, PG_ERR_IO, "cannot cap LDAP message size");
                return;
            }
        }
        c->watch = c->base.host->watch_open(c->base.host->ctx, fd, conn_io,
                                            c);
        if (c->watch == NULL) {
            conn_drop(c, PG_ERR_IO, "cannot watch the LDAP socket");
            return;
        }
    }
    if (c->base.host->watch_update(c->watch, rc == LDAP_X_CONNECTING
                                   ? PG_EV_WRITE : PG_EV_READ) != 0) {
        conn_drop(c, PG_ERR_IO, "cannot watch the LDAP socket");
    }
}

/* Create the handle and start connecting (asynchronously). */
static void
conn_open(pg_ldap_t *c)
{
    int v3 = LDAP_VERSION3, rc;
    struct timeval net;

    rc = ldap_initialize(&c->ld, c->url);
    if (rc != LDAP_SUCCESS) {
        c->ld = NULL;
        conn_drop(c, PG_ERR_IO, "ldap_initialize failed");
        return;
    }
    /* libldap compares whole seconds: keep its own limit above ours */
    net.tv_sec = (time_t) (c->timeout_ms / 1000u + 2u);
    net.tv_usec = 0;
    if (ldap_set_option(c->ld, LDAP_OPT_PROTOCOL_VERSION, &v3)
        || ldap_set_option(c->ld, LDAP_OPT_CONNECT_ASYNC, LDAP_OPT_ON)
        || ldap_set_option(c->ld, LDAP_OPT_NETWORK_TIMEOUT, &net)
        || ldap_set_option(c->ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF)
        || ldap_set_option(c->ld, LDAP_OPT_RESTART, LDAP_OPT_ON)) {
        conn_drop(c, PG_ERR_IO, "cannot set LDAP options");
        return;
    }
    if (c->tls_ca != NULL) {
        int demand = LDAP_OPT_X_TLS_DEMAND, zero = 0;

        if (ldap_set_option(c->ld, LDAP_OPT_X_TLS_CACERTFILE, c->tls_ca)
            || ldap_set_option(c->ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &demand)
            || ldap_set_option(c->ld, LDAP_OPT_X_TLS_NEWCTX, &zero)) {
            conn_drop(c, PG_ERR_IO, "cannot set the TLS CA file");
            return;
        }
    }
    c->state = CONN_CONNECTING;
    c->base.host->timer_arm(c->conn_timer, c->timeout_ms);
    conn_send_first(c);
}

static void op_on_message(pg_conn_req_t *op, LDAPMessage *msg);

/* A connection-level reply (StartTLS or bind). */
static void
conn_on_message(pg_ldap_t *c, LDAPMessage *msg)
{
    int code = LDAP_OTHER, rc;
    char *diag = NULL;

    rc = ldap_parse_result(c->ld, msg, &code, NULL, &diag, NULL, NULL, 0);
    if (rc != LDAP_SUCCESS) {
        code = rc;
    }
    c->conn_msgid = -1;
    if (code != LDAP_SUCCESS) {
        conn_refused(c, c->state == CONN_TLS ? "starttls" : "bind", code,
                     diag);
    } else if (c->state == CONN_TLS) {
        /* libldap runs the handshake itself (bounded by the network
         * timeout); there is no non-blocking variant */
        rc = ldap_install_tls(c->ld);
        if (rc != LDAP_SUCCESS) {
            conn_refused(c, "starttls", LDAP_CONNECT_ERROR,
                         "TLS handshake failed");
        } else {
            conn_send_first(c);
        }
    } else {
        conn_ready(c);
    }
    ldap_memfree(diag);
}

/* Watch handler: finish the connect, or collect every ready message. */
static void
conn_io(void *arg, int fd, unsigned events)
{
    pg_ldap_t *c = arg;
    LDAP *ld = c->ld;

    enter(c);
    if (c->state == CONN_CONNECTING) {
        conn_send_first(c);
        leave(c);
        return;
    }
    if (c->want_write && (events & PG_EV_WRITE) && c->watch != NULL) {
        c->want_write = 0;
        (void) c->base.host->watch_update(c->watch, PG_EV_READ);
    }
    while (c->ld == ld && ld != NULL) {
        struct timeval zero = { 0, 0 };
        LDAPMessage *msg = NULL;
        pg_conn_req_t *op;
        int rc, id;

        rc = ldap_result(ld, LDAP_RES_ANY, LDAP_MSG_ONE, &zero, &msg);
        if (rc == 0) {
            break;
        }
        if (rc < 0 || msg == NULL) {
            conn_drop(c, PG_ERR_IO, "connection to the LDAP server lost");
            break;
        }
        id = ldap_msgid(msg);
        if (id == 0 || id == LDAP_RES_UNSOLICITED) {
            ldap_msgfree(msg);
            conn_drop(c, PG_ERR_IO, "LDAP server ended the connection");
            break;
        }
        if (id == c->conn_msgid) {
            conn_on_message(c, msg);
        } else {
            for (op = c->ops; op != NULL; op = op->next) {
                if (op->msgid == id) {
                    break;
                }
            }
            if (op != NULL) {
                op_on_message(op, msg);
            }
        }
        ldap_msgfree(msg);
    }
    leave(c);
}

/* ---- operation steps --------------------------------------------------- */

/*
 * After a request went out (rc == LDAP_SUCCESS): watch for writability
 * once as well. libldap queues what a non-blocking send could not write
 * and finishes it inside ldap_result() when the socket is writable; the
 * next WRITE event runs ldap_result() and drops the WRITE interest again.
 * (Requests are capped at PG_LDAP_REQUEST_MAX and the socket send buffer
 * is raised, so a partial write is already unlikely.) Returns rc.
 */
static int
sent(pg_ldap_t *c, int rc)
{
    if (rc == LDAP_SUCCESS && c->watch != NULL && !c->want_write) {
        c->want_write = 1;
        (void) c->base.host->watch_update(c->watch, PG_EV_READ | PG_EV_WRITE);
    }
    return rc;
}

static void op_after_find(pg_conn_req_t *op);
static void op_groups(pg_conn_req_t *op);
static void op_after_groups(pg_conn_req_t *op);
static void list_next(pg_conn_req_t *op);

/* Send a search for op; attrs NULL-terminated (NULL: all user attrs). */
static void
op_search(pg_conn_req_t *op, op_state_t st, const char *base,
          const char *filter, char **attrs, int sizelimit,
          LDAPControl **sctrls)
{
    int rc = sent(op->c, ldap_search_ext(op->c->ld, base, LDAP_SCOPE_SUBTREE,
                                         filter, attrs, 0, sctrls, NULL, NULL,
                                         sizelimit, &op->msgid));

    op->st = st;
    if (rc != LDAP_SUCCESS) {
        op->msgid = -1;
        op_send_failed(op, "search", rc);
    }
}

/* The account search: key_attr = key, plus the wanted attributes. */
static void
op_find(pg_conn_req_t *op, op_state_t st, const char *base)
{
    pg_ldap_t *c = op->c;
    char esc[PG_CONN_KEY_MAX * 3 + 1], filter[LDAP_FILTER_MAX];
    char *attrs[PG_LDAP_ATTRS_MAX + 8];
    size_t n = 0;
    const char *k;
    json_t *v;

    if (pg_ldap_filter_escape(op->key, strlen(op->key), esc, sizeof(esc))
        != PG_OK) {
        op_fail(op, PG_ERR_INVALID, 0, "key too long");
        return;
    }
    snprintf(filter, sizeof(filter), "(&(objectClass=%s)(%s=%s))",
             c->ocs[0], c->key_attr, esc);
    attrs[n++] = c->key_attr;
    attrs[n++] = (char *) "entryUUID";
    if (c->dmode == DIS_ATTR) {
        attrs[n++] = c->d_attr;
    }
    if (op->want != NULL) {
        json_object_foreach(op->want, k, v) {
            (void) v;
            attrs[n++] = (char *) k;
        }
    }
    attrs[n] = NULL;
    op->nfound = 0;
    op_search(op, st, base, filter, attrs, 2, NULL);
}

/* Store the first entry found: DN, entryUUID, every attribute read. */
static void
op_take_entry(pg_conn_req_t *op, LDAPMessage *msg, json_t **attrs_out)
{
    LDAP *ld = op->c->ld;
    BerElement *ber = NULL;
    json_t *attrs = json_object();
    char *a, *dn;

    if (attrs == NULL) {
        return;
    }
    dn = ldap_get_dn(ld, msg);
    if (dn != NULL) {
        free(op->dn);
        op->dn = xstrdup(dn);
        ldap_memfree(dn);
    }
    for (a = ldap_first_attribute(ld, msg, &ber); a != NULL;
         a = ldap_next_attribute(ld, msg, ber)) {
        struct berval **vals = ldap_get_values_len(ld, msg, a);
        json_t *arr = json_array();
        size_t i;

        for (i = 0; vals != NULL && vals[i] != NULL
                    && i < PG_LDAP_VALUES_MAX; i++) {
            if (vals[i]->bv_len <= PG_LDAP_VALUE_MAX && arr != NULL) {
                json_t *s = json_stringn(vals[i]->bv_val, vals[i]->bv_len);

                if (s != NULL) {   /* NULL: not UTF-8 (binary): skipped */
                    (void) json_array_append_new(arr, s);
                }
            }
        }
        ldap_value_free_len(vals);
        if (strcasecmp(a, "entryUUID") == 0 && json_array_size(arr) > 0) {
            free(op->uuid);
            op->uuid = xstrdup(json_string_value(json_array_get(arr, 0)));
        }
        if (arr != NULL && json_object_size(attrs) < PG_LDAP_ATTRS_MAX) {
            (void) json_object_set_new(attrs, a, arr);
        } else {
            json_decref(arr);
        }
        ldap_memfree(a);
    }
    ber_free(ber, 0);
    json_decref(*attrs_out);
    *attrs_out = attrs;
}

/* 1 when the found entry is currently disabled. */
static int
op_is_disabled(const pg_conn_req_t *op, const json_t *attrs, const char *dn)
{
    const pg_ldap_t *c = op->c;

    if (c->dmode == DIS_ATTR) {
        json_t *v = obj_get_ci(attrs, c->d_attr);

        return v != NULL && arr_has(v, c->d_value, 1);
    }
    if (c->dmode == DIS_MOVE) {
        return dn != NULL && dn_under(dn, c->d_ou);
    }
    return 0;
}

/* Build the entry for an add and send it. */
static void
op_add(pg_conn_req_t *op)
{
    pg_ldap_t *c = op->c;
    char rdnv[PG_LDAP_DN_MAX], dn[PG_LDAP_DN_MAX * 2];
    const char *rv, *parent, *k;
    modlist_t ml;
    json_t *v, *ocs;
    size_t i;
    int rc;

    ml.n = 0;
    ml.mods[0] = NULL;
    if (strcasecmp(c->rdn_attr, c->key_attr) == 0) {
        rv = op->key;
    } else {
        v = obj_get_ci(op->want, c->rdn_attr);
        rv = json_string_value(json_array_get(v, 0));
        if (rv == NULL || json_array_size(v) != 1) {
            op_fail(op, PG_ERR_INVALID, 0, "rdn attribute %s needs one value",
                    c->rdn_attr);
            return;
        }
    }
    parent = !op->active && c->dmode == DIS_MOVE ? c->d_ou : c->base_dn;
    if (pg_ldap_dn_escape(rv, strlen(rv), rdnv, sizeof(rdnv)) != PG_OK
        || (size_t) snprintf(dn, sizeof(dn), "%s=%s,%s", c->rdn_attr, rdnv,
                             parent) >= sizeof(dn)) {
        op_fail(op, PG_ERR_INVALID, 0, "DN too long");
        return;
    }
    ocs = json_array();
    for (i = 0; ocs != NULL && i < c->nocs; i++) {
        (void) json_array_append_new(ocs, json_string(c->ocs[i]));
    }
    rc = ocs == NULL || ml_add(&ml, LDAP_MOD_ADD, "objectClass", ocs);
    json_decref(ocs);
    if (rc == 0) {
        rc = ml_add1(&ml, LDAP_MOD_ADD, c->key_attr, op->key);
    }
    if (rc == 0 && op->want != NULL) {
        json_object_foreach(op->want, k, v) {
            if (strcasecmp(k, c->key_attr) == 0 || json_array_size(v) == 0) {
                continue;
            }
            if (ml_add(&ml, LDAP_MOD_ADD, k, v) != 0) {
                rc = -1;
                break;
            }
            add_change(op, k);
        }
    }
    if (rc == 0 && !op->active && c->dmode == DIS_ATTR
        && obj_get_ci(op->want, c->d_attr) == NULL) {
        rc = ml_add1(&ml, LDAP_MOD_ADD, c->d_attr, c->d_value);
    }
    if (rc != 0) {
        ml_free(&ml);
        op_fail(op, PG_ERR_NOMEM, 1, "out of memory");
        return;
    }
    free(op->dn);
    op->dn = xstrdup(dn);
    op->st = ST_ADD;
    rc = sent(c, ldap_add_ext(c->ld, dn, ml.mods, NULL, NULL, &op->msgid));
    ml_free(&ml);
    if (rc != LDAP_SUCCESS) {
        op->msgid = -1;
        op_send_failed(op, "add", rc);
    }
}

/* Compare desired with found and send a modify of what differs, or go
 * on with the move / groups. */
static void op_maybe_move(pg_conn_req_t *op);
/* ensure/disable of a found entry: one modify of what differs (desired
 * attributes, disable marker), then op_maybe_move(). */
static void
op_update(pg_conn_req_t *op)
{
    pg_ldap_t *c = op->c;
    modlist_t ml;
    const char *k;
    json_t *v;
    int rc = 0, disabled = op_is_disabled(op, op->cur, op->dn);

    ml.n = 0;
    ml.mods[0] = NULL;
    if (op->want != NULL) {
        json_object_foreach(op->want, k, v) {
            json_t *have = obj_get_ci(op->cur, k);

            if (strcasecmp(k, c->key_attr) == 0
                || (c->dmode == DIS_ATTR && strcasecmp(k, c->d_attr) == 0)) {
                continue;
            }
            if (json_array_size(v) == 0) {
                if (json_array_size(have) > 0) {
                    rc |= ml_add(&ml, LDAP_MOD_DELETE, k, NULL);
                    add_change(op, k);
                }
            } else if (have == NULL || !values_equal(v, have)) {
                rc |= ml_add(&ml, LDAP_MOD_REPLACE, k, v);
                add_change(op, k);
            }
        }
    }
    if (c->dmode == DIS_ATTR && op->active && disabled) {
        if (c->d_enabled != NULL) {
            rc |= ml_add1(&ml, LDAP_MOD_REPLACE, c->d_attr, c->d_enabled);
        } else {
            rc |= ml_add(&ml, LDAP_MOD_DELETE, c->d_attr, NULL);
        }
        add_change(op, "active");
    } else if (c->dmode == DIS_ATTR && !op->active && !disabled) {
        rc |= ml_add1(&ml, LDAP_MOD_REPLACE, c->d_attr, c->d_value);
        add_change(op, "active");
        op->disabled_now = 1;
    }
    if (rc != 0) {
        ml_free(&ml);
        op_fail(op, PG_ERR_NOMEM, 1, "out of memory");
        return;
    }
    if (ml.n == 0) {
        op_maybe_move(op);
        return;
    }
    op->st = ST_MODIFY;
    rc = sent(c, ldap_modify_ext(c->ld, op->dn, ml.mods, NULL, NULL,
                                 &op->msgid));
    ml_free(&ml);
    if (rc != LDAP_SUCCESS) {
        op->msgid = -1;
        op_send_failed(op, "modify", rc);
    }
}

/* Move the entry below newsup (modrdn with newSuperior). */
static void
op_rename(pg_conn_req_t *op, const char *newsup)
{
    size_t rl = dn_rdn_len(op->dn);
    char *rdn = malloc(rl + 1);
    int rc;

    if (rdn == NULL) {
        op_fail(op, PG_ERR_NOMEM, 1, "out of memory");
        return;
    }
    memcpy(rdn, op->dn, rl);
    rdn[rl] = '\0';
    free(op->member_old);
    free(op->member_new);
    op->member_old = xstrdup(op->dn);
    op->member_new = xcat3(rdn, ",", newsup);
    op->st = ST_RENAME;
    rc = sent(op->c, ldap_rename(op->c->ld, op->dn, rdn, newsup, 1, NULL,
                                 NULL, &op->msgid));
    free(rdn);
    if (op->member_old == NULL || op->member_new == NULL) {
        op_fail(op, PG_ERR_NOMEM, 1, "out of memory");
        return;
    }
    if (rc != LDAP_SUCCESS) {
        op->msgid = -1;
        op_send_failed(op, "rename", rc);
    }
}

/* ensure, after the attributes: move in / out of disabled_ou if needed. */
static void
op_maybe_move(pg_conn_req_t *op)
{
    pg_ldap_t *c = op->c;

    if (c->dmode == DIS_MOVE) {
        int disabled = op_is_disabled(op, op->cur, op->dn);

        if (op->active && disabled) {
            add_change(op, "active");
            op_rename(op, c->base_dn);
            return;
        }
        if (!op->active && !disabled) {
            add_change(op, "active");
            op->disabled_now = 1;
            op_rename(op, c->d_ou);
            return;
        }
    }
    op_groups(op);
}

/* What to do once the account search finished. */
static void
op_after_find(pg_conn_req_t *op)
{
    pg_ldap_t *c = op->c;
    int disabled;

    switch (op->kind) {
    case OP_ENSURE:
        if (op->nfound == 0) {
            op_add(op);
        } else {
            free(op->member_old);
            free(op->member_new);
            op->member_old = xstrdup(op->dn);
            op->member_new = xstrdup(op->dn);
            op_update(op);
        }
        return;
    case OP_DISABLE:
        if (op->nfound == 0) {
            op_fail(op, PG_ERR_NOT_FOUND, 0, "account not found");
            return;
        }
        disabled = op_is_disabled(op, op->cur, op->dn);
        if (disabled) {
            op_finish(op, PG_OK, PG_CONN_UNCHANGED, 0, NULL);
            return;
        }
        op->active = 0;
        op->disabled_now = 1;
        if (c->dmode == DIS_MOVE) {
            op_rename(op, c->d_ou);
        } else {
            op_update(op);
        }
        return;
    case OP_REMOVE:
        if (op->nfound == 0) {
            op_finish(op, PG_OK, PG_CONN_REMOVED, 0, NULL);
            return;
        }
        free(op->member_old);
        op->member_old = xstrdup(op->dn);
        op_groups(op);
        return;
    case OP_LIST:
        break;
    }
    op_fail(op, PG_ERR_INTERNAL, 0, "bad state");
}

/* Group phase: find the groups that list member_old. */
static void
op_groups(pg_conn_req_t *op)
{
    pg_ldap_t *c = op->c;
    char esc[PG_LDAP_DN_MAX * 3 + 1], filter[sizeof(esc) + 256];
    char *attrs[2];
    int needed;

    needed = c->g_base != NULL && op->member_old != NULL
             && (op->kind == OP_REMOVE || op->ngroups > 0 || op->nrevoke > 0
                 || (op->member_new != NULL
                     && strcmp(op->member_old, op->member_new) != 0));
    if (!needed || op->fixed_members) {
        op_after_groups(op);
        return;
    }
    if (pg_ldap_filter_escape(op->member_old, strlen(op->member_old), esc,
                              sizeof(esc)) != PG_OK) {
        op_fail(op, PG_ERR_INVALID, 0, "DN too long");
        return;
    }
    snprintf(filter, sizeof(filter), "(&(objectClass=%s)(%s=%s))", c->g_oc,
             c->g_member, esc);
    json_decref(op->gcur);
    op->gcur = json_object();
    if (op->gcur == NULL) {
        op_fail(op, PG_ERR_NOMEM, 1, "out of memory");
        return;
    }
    attrs[0] = c->g_name;
    attrs[1] = NULL;
    op_search(op, ST_GCUR, c->g_base, filter, attrs, PG_LDAP_GROUPS_MAX,
              NULL);
}
/* Queue a group modify (strings copied); -1 on OOM. */
static int
gmod_push(pg_conn_req_t *op, const char *gdn, const char *name, int add,
          int del)
{
    gmod_t *n = realloc(op->gmods, (op->ngmods + 1) * sizeof(*n));

    if (n == NULL) {
        return -1;
    }
    op->gmods = n;
    n[op->ngmods].gdn = xstrdup(gdn);
    n[op->ngmods].name = xstrdup(name);
    n[op->ngmods].add = add;
    n[op->ngmods].del = del;
    op->ngmods++;
    return n[op->ngmods - 1].gdn == NULL || n[op->ngmods - 1].name == NULL
           ? -1 : 0;
}
/* 1 when v holds s, ASCII case-insensitively. */
static int
strv_has_ci(char *const *v, size_t n, const char *s)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (strcasecmp(v[i], s) == 0) {
            return 1;
        }
    }
    return 0;
}

static void op_gmod_next(pg_conn_req_t *op);

/* Current memberships known: plan the modifies; look up unknown groups. */
static void
op_groups_plan(pg_conn_req_t *op)
{
    pg_ldap_t *c = op->c;
    const char *gdn;
    json_t *v, *names;
    char filter[LDAP_FILTER_MAX * 4];
    size_t i, o, nlook = 0;
    char *attrs[2];

    gmods_clear(op);
    json_object_foreach(op->gcur, gdn, v) {
        const char *name = json_string_value(v);
        int r = 0;

        if (op->kind == OP_REMOVE
            || strv_has_ci(op->revoke, op->nrevoke, name)) {
            r = gmod_push(op, gdn, name, 0, 1);
        } else if (op->member_new != NULL
                   && strcmp(op->member_old, op->member_new) != 0) {
            r = gmod_push(op, gdn, name, 1, 1);
        }
        if (r != 0) {
            op_fail(op, PG_ERR_NOMEM, 1, "out of memory");
            return;
        }
    }
    if (op->kind != OP_ENSURE || op->ngroups == 0) {
        op_gmod_next(op);
        return;
    }
    /* groups to join: look their DNs up in one search */
    names = json_array();
    json_object_foreach(op->gcur, gdn, v) {
        (void) json_array_append(names, v);
    }
    o = (size_t) snprintf(filter, sizeof(filter), "(&(objectClass=%s)(|",
                          c->g_oc);
    for (i = 0; i < op->ngroups; i++) {
        char esc[PG_CONN_KEY_MAX * 3 + 1];

        if (arr_has(names, op->groups[i], 1)) {
            continue;
        }
        if (pg_ldap_filter_escape(op->groups[i], strlen(op->groups[i]), esc,
                                  sizeof(esc)) != PG_OK
            || o + strlen(esc) + strlen(c->g_name) + 8 >= sizeof(filter)) {
            json_decref(names);
            op_fail(op, PG_ERR_TOO_LARGE, 0, "too many groups");
            return;
        }
        o += (size_t) snprintf(filter + o, sizeof(filter) - o, "(%s=%s)",
                               c->g_name, esc);
        nlook++;
    }
    json_decref(names);
    if (nlook == 0) {
        op_gmod_next(op);
        return;
    }
    snprintf(filter + o, sizeof(filter) - o, "))");
    json_decref(op->glook);
    op->glook = json_object();
    if (op->glook == NULL) {
        op_fail(op, PG_ERR_NOMEM, 1, "out of memory");
        return;
    }
    attrs[0] = c->g_name;
    attrs[1] = NULL;
    op_search(op, ST_GLOOKUP, c->g_base, filter, attrs, PG_LDAP_GROUPS_MAX,
              NULL);
}

/* Group DNs known: queue the adds (unknown group: the op fails). */
static void
op_groups_lookup_done(pg_conn_req_t *op)
{
    size_t i;
    json_t *cur_names = json_array();
    const char *gdn;
    json_t *v;

    if (cur_names == NULL) {
        op_fail(op, PG_ERR_NOMEM, 1, "out of memory");
        return;
    }
    json_object_foreach(op->gcur, gdn, v) {
        (void) json_array_append(cur_names, v);
    }
    for (i = 0; i < op->ngroups; i++) {
        char lower[PG_CONN_KEY_MAX + 1];
        size_t j, n = strlen(op->groups[i]);
        const char *dn;

        if (arr_has(cur_names, op->groups[i], 1)) {
            continue;
        }
        for (j = 0; j < n && j < PG_CONN_KEY_MAX; j++) {
            lower[j] = (char) tolower((unsigned char) op->groups[i][j]);
        }
        lower[j] = '\0';
        dn = json_string_value(json_object_get(op->glook, lower));
        if (dn == NULL) {
            json_decref(cur_names);
            op_fail(op, PG_ERR_INVALID, 0, "group not found: %.200s",
                    op->groups[i]);
            return;
        }
        if (gmod_push(op, dn, op->groups[i], 1, 0) != 0) {
            json_decref(cur_names);
            op_fail(op, PG_ERR_NOMEM, 1, "out of memory");
            return;
        }
    }
    json_decref(cur_names);
    op_gmod_next(op);
}

/* Send the next queued group modify, or finish the group phase. */
static void
op_gmod_next(pg_conn_req_t *op)
{
    pg_ldap_t *c = op->c;
    modlist_t ml;
    gmod_t *g;
    int rc = 0;

    if (op->gidx >= op->ngmods) {
        op->fixed_members = 1;
        op_after_groups(op);
        return;
    }
    g = &op->gmods[op->gidx];
    ml.n = 0;
    ml.mods[0] = NULL;
    /* add first: a groupOfNames may not lose its last member */
    if (g->add) {
        rc |= ml_add1(&ml, LDAP_MOD_ADD, c->g_member, op->member_new);
    }
    if (g->del) {
        rc |= ml_add1(&ml, LDAP_MOD_DELETE, c->g_member, op->member_old);
    }
    if (rc != 0) {
        ml_free(&ml);
        op_fail(op, PG_ERR_NOMEM, 1, "out of memory");
        return;
    }
    op->st = ST_GMOD;
    rc = sent(c, ldap_modify_ext(c->ld, g->gdn, ml.mods, NULL, NULL,
                                 &op->msgid));
    ml_free(&ml);
    if (rc != LDAP_SUCCESS) {
        op->msgid = -1;
        op_send_failed(op, "modify group", rc);
    }
}

/* End of the group phase: delete (remove) or report. */
static void
op_after_groups(pg_conn_req_t *op)
{
    int rc;

    switch (op->kind) {
    case OP_REMOVE:
        op->st = ST_DELETE;
        rc = sent(op->c, ldap_delete_ext(op->c->ld, op->dn, NULL, NULL,
                                         &op->msgid));
        if (rc != LDAP_SUCCESS) {
            op->msgid = -1;
            op_send_failed(op, "delete", rc);
        }
        return;
    case OP_DISABLE:
        op_finish(op, PG_OK, PG_CONN_DISABLED, 0, NULL);
        return;
    case OP_ENSURE:
        if (op->created) {
            op_finish(op, PG_OK, PG_CONN_CREATED, 0, NULL);
        } else {
            op_finish(op, PG_OK, json_array_size(op->changes) > 0
                      ? PG_CONN_UPDATED : PG_CONN_UNCHANGED, 0, NULL);
        }
        return;
    case OP_LIST:
        break;
    }
    op_fail(op, PG_ERR_INTERNAL, 0, "bad state");
}

/* ---- list ------------------------------------------------------------ */

/* Send the next page request of the current list search. */
static void
list_search(pg_conn_req_t *op, op_state_t st)
{
    pg_ldap_t *c = op->c;
    LDAPControl *ctrl = NULL, *ctrls[2];
    char filter[256], gt[32];
    const char *base;
    int rc;

    rc = ldap_create_page_control(c->ld, (ber_int_t) c->page_size,
                                  op->cookie.bv_len > 0 ? &op->cookie : NULL,
                                  0, &ctrl);
    if (rc != LDAP_SUCCESS) {
        op_send_failed(op, "page control", rc);
        return;
    }
    ctrls[0] = ctrl;
    ctrls[1] = NULL;
    /* per-page budget */
    op->deadline_ms = c->base.host->now_ms(c->base.host->ctx) + c->timeout_ms;
    c->base.host->timer_arm(op->timer, c->timeout_ms);
    if (st == ST_LGROUPS) {
        char *attrs[3] = { c->g_name, c->g_member, NULL };

        snprintf(filter, sizeof(filter), "(objectClass=%s)", c->g_oc);
        op_search(op, st, c->g_base, filter, attrs, 0, ctrls);
    } else {
        char *attrs[4] = { (char *) "*", (char *) "entryUUID",
                           (char *) "modifyTimestamp", NULL };

        base = op->base_idx == 0 ? c->base_dn : c->d_ou;
        if (op->since_ms > 0) {
            time_t t = (time_t) (op->since_ms / 1000u);
            struct tm tm;

            gmtime_r(&t, &tm);
            strftime(gt, sizeof(gt), "%Y%m%d%H%M%SZ", &tm);
            snprintf(filter, sizeof(filter),
                     "(&(objectClass=%s)(modifyTimestamp>=%s))", c->ocs[0],
                     gt);
        } else {
            snprintf(filter, sizeof(filter), "(objectClass=%s)", c->ocs[0]);
        }
        op_search(op, st, base, filter, attrs, 0, ctrls);
    }
    ldap_control_free(ctrl);
}

/* Record the groups of one group entry in the membership map. */
static void
list_group_entry(pg_conn_req_t *op, LDAPMessage *msg)
{
    pg_ldap_t *c = op->c;
    struct berval **names, **members;
    json_t *name;
    size_t i;

    names = ldap_get_values_len(c->ld, msg, c->g_name);
    members = ldap_get_values_len(c->ld, msg, c->g_member);
    if (names == NULL || names[0] == NULL || members == NULL
        || names[0]->bv_len > PG_CONN_KEY_MAX) {
        goto out;
    }
    name = json_stringn(names[0]->bv_val, names[0]->bv_len);
    for (i = 0; name != NULL && members[i] != NULL; i++) {
        char *m, *norm;
        json_t *arr;

        if (members[i]->bv_len > PG_LDAP_DN_MAX
            || ++op->nmembers > PG_LDAP_MEMBERS_MAX) {
            continue;
        }
        m = malloc(members[i]->bv_len + 1);
        if (m == NULL) {
            continue;
        }
        memcpy(m, members[i]->bv_val, members[i]->bv_len);
        m[members[i]->bv_len] = '\0';
        norm = dn_norm(m);
        free(m);
        if (norm == NULL) {
            continue;
        }
        arr = json_object_get(op->gmap, norm);
        if (arr == NULL) {
            arr = json_array();
            if (arr != NULL && json_object_set_new(op->gmap, norm, arr) != 0) {
                arr = NULL;
            }
        }
        if (arr != NULL && json_array_size(arr) < PG_LDAP_GROUPS_MAX) {
            (void) json_array_append(arr, name);
        }
        free(norm);
    }
    json_decref(name);
out:
    ldap_value_free_len(names);
    ldap_value_free_len(members);
}

static void list_flush(pg_conn_req_t *op, int *stopped);

/* One account entry into the page buffer. */
static void
list_acct_entry(pg_conn_req_t *op, LDAPMessage *msg)
{
    pg_ldap_t *c = op->c;
    json_t *attrs = NULL, *kv, *ts;
    lacct_t *a;
    char *norm;
    int stopped = 0;

    free(op->uuid);
    op->uuid = NULL;
    op_take_entry(op, msg, &attrs);
    kv = obj_get_ci(attrs, c->key_attr);
    if (attrs == NULL || op->dn == NULL || json_array_size(kv) == 0
        || json_string_length(json_array_get(kv, 0)) > PG_CONN_KEY_MAX) {
        json_decref(attrs);
        return;
    }
    if (op->nbuf >= PG_CONN_PAGE_MAX) {
        list_flush(op, &stopped);   /* server ignored the page size */
        if (stopped) {
            json_decref(attrs);
            return;
        }
    }
    a = &op->buf[op->nbuf];
    memset(a, 0, sizeof(*a));
    a->key = xstrdup(json_string_value(json_array_get(kv, 0)));
    a->id = xstrdup(op->uuid != NULL ? op->uuid : op->dn);
    a->active = !op_is_disabled(op, attrs, op->dn);
    ts = obj_get_ci(attrs, "modifyTimestamp");
    if (json_array_size(ts) > 0) {
        a->modified_ms = gentime_ms(json_string_value(json_array_get(ts, 0)));
    }
    /* attributes reported: user attributes, never secrets or bookkeeping */
    (void) json_object_del(attrs, "objectClass");
    (void) json_object_del(attrs, "userPassword");
    (void) json_object_del(attrs, "entryUUID");
    (void) json_object_del(attrs, "modifyTimestamp");
    if (c->dmode == DIS_ATTR) {
        (void) json_object_del(attrs, c->d_attr);
    }
    /* one value: a string, as pg_account_t.attrs would give it */
    {
        const char *k;
        json_t *v;

        json_object_foreach(attrs, k, v) {
            if (json_array_size(v) == 1) {
                (void) json_object_set(attrs, k, json_array_get(v, 0));
            }
        }
    }
    a->attrs = attrs;
    norm = c->g_base != NULL ? dn_norm(op->dn) : NULL;
    if (norm != NULL) {
        a->groups = json_incref(json_object_get(op->gmap, norm));
        free(norm);
    }
    if (a->key == NULL || a->id == NULL) {
        free(a->key);
        free(a->id);
        json_decref(a->attrs);
        json_decref(a->groups);
        return;
    }
    op->nbuf++;
}

/*
 * Hand the buffered accounts to the page callback. *stopped is set when
 * the callback asked to stop (op finished) or cancelled op (op freed);
 * then op must not be touched.
 */
static void
list_flush(pg_conn_req_t *op, int *stopped)
{
    pg_listed_account_t *la;
    const char **gv = NULL;
    size_t i, ng = 0, o = 0;
    int r;

    *stopped = 0;
    if (op->nbuf == 0) {
        return;
    }
    for (i = 0; i < op->nbuf; i++) {
        ng += json_array_size(op->buf[i].groups);
    }
    la = calloc(op->nbuf, sizeof(*la));
    if (ng > 0) {
        gv = calloc(ng, sizeof(*gv));
    }
    if (la == NULL || (ng > 0 && gv == NULL)) {
        free(la);
        free(gv);
        *stopped = 1;
        op_fail(op, PG_ERR_NOMEM, 1, "out of memory");
        return;
    }
    for (i = 0; i < op->nbuf; i++) {
        size_t j, n = json_array_size(op->buf[i].groups);

        la[i].key = op->buf[i].key;
        la[i].id = op->buf[i].id;
        la[i].attrs = op->buf[i].attrs;
        la[i].groups = n > 0 ? gv + o : NULL;
        la[i].ngroups = n;
        for (j = 0; j < n; j++) {
            gv[o++] = json_string_value(json_array_get(op->buf[i].groups, j));
        }
        la[i].active = op->buf[i].active;
        la[i].modified_ms = op->buf[i].modified_ms;
    }
    op->in_cb = 1;
    op->delivered = 1;
    r = op->page(op->arg, la, op->nbuf);
    op->in_cb = 0;
    free(la);
    free(gv);
    buf_clear(op);
    if (op->cancelled) {
        *stopped = 1;
        op_unlink(op);
        op_abandon(op);
        op_free(op);
        return;
    }
    if (r != 0) {
        *stopped = 1;
        op_finish(op, PG_ERR_CANCELLED, PG_CONN_UNCHANGED, 0,
                  "stopped by the page callback");
    }
}

/* A page finished (st: which search). Next page, next base, or done. */
static void
list_page_done(pg_conn_req_t *op, LDAPControl **ctrls)
{
    LDAPControl *pc = ldap_control_find(LDAP_CONTROL_PAGEDRESULTS, ctrls,
                                        NULL);
    ber_int_t count = 0;
    int stopped = 0;

    ber_memfree(op->cookie.bv_val);
    op->cookie.bv_val = NULL;
    op->cookie.bv_len = 0;
    if (pc != NULL
        && ldap_parse_pageresponse_control(op->c->ld, pc, &count,
                                           &op->cookie) != LDAP_SUCCESS) {
        op->cookie.bv_val = NULL;
        op->cookie.bv_len = 0;
    }
    if (op->st == ST_LACCTS) {
        list_flush(op, &stopped);
        if (stopped) {
            return;
        }
    }
    if (op->cookie.bv_len > 0) {
        list_search(op, op->st);
        return;
    }
    list_next(op);
}

/* Advance: groups map, then base_dn, then (separate) disabled_ou. */
static void
list_next(pg_conn_req_t *op)
{
    pg_ldap_t *c = op->c;

    if (op->st == ST_NONE && c->g_base != NULL) {
        op->gmap = json_object();
        if (op->gmap == NULL) {
            op_fail(op, PG_ERR_NOMEM, 1, "out of memory");
            return;
        }
        list_search(op, ST_LGROUPS);
        return;
    }
    if (op->st == ST_NONE || op->st == ST_LGROUPS) {
        if (op->nmembers > PG_LDAP_MEMBERS_MAX) {
            op_fail(op, PG_ERR_TOO_LARGE, 0, "more than %u memberships",
                    (unsigned) PG_LDAP_MEMBERS_MAX);
            return;
        }
        op->base_idx = 0;
        list_search(op, ST_LACCTS);
        return;
    }
    if (op->base_idx == 0 && c->dmode == DIS_MOVE && c->d_ou_separate) {
        op->base_idx = 1;
        list_search(op, ST_LACCTS);
        return;
    }
    op_finish(op, PG_OK, PG_CONN_UNCHANGED, 0, NULL);
}

/* ---- message dispatch ------------------------------------------------ */
/*
 * One message for op's msgid: entries are collected by state, a final
 * result advances the state machine (which may finish and free op). msg
 * stays owned by the caller.
 */
static void
op_on_message(pg_conn_req_t *op, LDAPMessage *msg)
{
    pg_ldap_t *c = op->c;
    int type = ldap_msgtype(msg), code = LDAP_OTHER, rc;
    LDAPControl **ctrls = NULL;
    char *diag = NULL;

    if (type == LDAP_RES_SEARCH_ENTRY) {
        switch (op->st) {
        case ST_FIND:
        case ST_FIND2:
            if (op->nfound++ == 0) {
                op_take_entry(op, msg, &op->cur);
            }
            break;
        case ST_GCUR:
        case ST_GLOOKUP: {
            char *dn = ldap_get_dn(c->ld, msg);
            struct berval **v = ldap_get_values_len(c->ld, msg, c->g_name);

            if (dn != NULL && v != NULL && v[0] != NULL
                && v[0]->bv_len <= PG_CONN_KEY_MAX) {
                char name[PG_CONN_KEY_MAX + 1];
                size_t i;

                memcpy(name, v[0]->bv_val, v[0]->bv_len);
                name[v[0]->bv_len] = '\0';
                if (op->st == ST_GCUR) {
                    (void) json_object_set_new(op->gcur, dn,
                                               json_string(name));
                } else {
                    for (i = 0; name[i] != '\0'; i++) {
                        name[i] = (char) tolower((unsigned char) name[i]);
                    }
                    (void) json_object_set_new(op->glook, name,
                                               json_string(dn));
                }
            }
            ldap_value_free_len(v);
            ldap_memfree(dn);
            break;
        }
        case ST_LGROUPS:
            list_group_entry(op, msg);
            break;
        case ST_LACCTS:
            list_acct_entry(op, msg);
            break;
        default:
            break;
        }
        return;
    }
    if (type == LDAP_RES_SEARCH_REFERENCE || type == LDAP_RES_INTERMEDIATE) {
        return;
    }
    op->msgid = -1;
    rc = ldap_parse_result(c->ld, msg, &code, NULL, &diag, NULL, &ctrls, 0);
    if (rc != LDAP_SUCCESS) {
        code = rc;
    }
    switch (op->st) {
    case ST_FIND:
    case ST_FIND2:
        if (code == LDAP_NO_SUCH_OBJECT && op->st == ST_FIND2) {
            code = LDAP_SUCCESS;   /* no disabled_ou: nothing there */
        }
        if (op->nfound > 1) {
            op_fail(op, PG_ERR_CONFLICT, 0, "%d entries match the key",
                    op->nfound);
        } else if (code == LDAP_NO_SUCH_OBJECT) {
            op_fail(op, PG_ERR_INVALID, 0, "ldap search: base_dn %.200s "
                    "does not exist", c->base_dn);
        } else if (code != LDAP_SUCCESS && code != LDAP_SIZELIMIT_EXCEEDED) {
            op_fail_code(op, "search", code, diag);
        } else if (op->nfound == 0 && op->st == ST_FIND
                   && c->dmode == DIS_MOVE && c->d_ou_separate) {
            op_find(op, ST_FIND2, c->d_ou);
        } else {
            op_after_find(op);
        }
        break;
    case ST_ADD:
        if (code != LDAP_SUCCESS) {
            op_fail_code(op, "add", code, diag);
            break;
        }
        op->created = 1;
        free(op->member_old);
        free(op->member_new);
        op->member_old = xstrdup(op->dn);
        op->member_new = xstrdup(op->dn);
        op_groups(op);
        break;
    case ST_MODIFY:
        if (code != LDAP_SUCCESS) {
            op_fail_code(op, "modify", code, diag);
        } else if (op->kind == OP_DISABLE) {
            op_finish(op, PG_OK, PG_CONN_DISABLED, 0, NULL);
        } else {
            op_maybe_move(op);
        }
        break;
    case ST_RENAME:
        if (code != LDAP_SUCCESS) {
            op_fail_code(op, "rename", code, diag);
            break;
        }
        free(op->dn);
        op->dn = xstrdup(op->member_new);
        op_groups(op);
        break;
    case ST_GCUR:
        if (code != LDAP_SUCCESS && code != LDAP_SIZELIMIT_EXCEEDED) {
            op_fail_code(op, "search groups", code, diag);
        } else {
            op_groups_plan(op);
        }
        break;
    case ST_GLOOKUP:
        if (code != LDAP_SUCCESS && code != LDAP_SIZELIMIT_EXCEEDED) {
            op_fail_code(op, "search groups", code, diag);
        } else {
            op_groups_lookup_done(op);
        }
        break;
    case ST_GMOD: {
        gmod_t *g = &op->gmods[op->gidx];

        /* already member / already gone: the desired state holds */
        if (code != LDAP_SUCCESS && code != LDAP_TYPE_OR_VALUE_EXISTS
            && code != LDAP_NO_SUCH_ATTRIBUTE) {
            op_fail_code(op, "modify group", code, diag);
            break;
        }
        if (op->kind == OP_ENSURE && !(g->add && g->del)) {
            add_change(op, g->name);
        }
        op->gidx++;
        op_gmod_next(op);
        break;
    }
    case ST_DELETE:
        if (code != LDAP_SUCCESS && code != LDAP_NO_SUCH_OBJECT) {
            op_fail_code(op, "delete", code, diag);
        } else {
            op_finish(op, PG_OK, PG_CONN_REMOVED, 0, NULL);
        }
        break;
    case ST_LGROUPS:
    case ST_LACCTS:
        if (code != LDAP_SUCCESS) {
            op_fail_code(op, "list", code, diag);
        } else {
            list_page_done(op, ctrls);
        }
        break;
    default:
        break;
    }
    ldap_controls_free(ctrls);
    ldap_memfree(diag);
}

/* The connection is READY: send op's first request. */
static void
op_begin(pg_conn_req_t *op)
{
    op->fixed_members = 0;
    if (op->kind == OP_LIST) {
        buf_clear(op);
        json_decref(op->gmap);
        op->gmap = NULL;
        op->nmembers = 0;
        ber_memfree(op->cookie.bv_val);
        op->cookie.bv_val = NULL;
        op->cookie.bv_len = 0;
        op->st = ST_NONE;
        list_next(op);
    } else {
        op_find(op, ST_FIND, op->c->base_dn);
    }
}

/* The op timer: first the kick (started == 0), then the deadline. */
static void
op_timer(void *arg)
{
    pg_conn_req_t *op = arg;
    pg_ldap_t *c = op->c;
    uint64_t now = c->base.host->now_ms(c->base.host->ctx);

    enter(c);
    if (!op->started) {
        op->started = 1;
        c->base.host->timer_arm(op->timer, op->deadline_ms > now
                                ? op->deadline_ms - now : 0);
        if (c->state == CONN_READY) {
            op_begin(op);
        } else {
            op->waiting = 1;
            if (c->state == CONN_DOWN) {
                conn_open(c);
            }
        }
    } else {
        op_fail(op, PG_ERR_TIMEOUT, 1, "LDAP operation timed out after %u ms",
                c->timeout_ms);
    }
    leave(c);
}

/* ---- vtable -------------------------------------------------------- */

/* Copy a list of names (each 1..PG_CONN_KEY_MAX bytes). */
static pg_status_t
copy_names(const char *const *in, size_t n, char ***out)
{
    size_t i;

    *out = NULL;
    if (n == 0) {
        return PG_OK;
    }
    if (in == NULL || n > PG_LDAP_GROUPS_MAX) {
        return PG_ERR_INVALID;
    }
    *out = calloc(n, sizeof(char *));
    if (*out == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        size_t len = in[i] != NULL ? strlen(in[i]) : 0;

        if (len == 0 || len > PG_CONN_KEY_MAX) {
            return PG_ERR_INVALID;
        }
        (*out)[i] = xstrdup(in[i]);
        if ((*out)[i] == NULL) {
            return PG_ERR_NOMEM;
        }
    }
    return PG_OK;
}

/* Allocate an op, link it and arm its kick. */
static pg_conn_req_t *
op_new(pg_ldap_t *c, op_kind_t kind)
{
    pg_conn_req_t *op = calloc(1, sizeof(*op));
    const pg_host_t *h = c->base.host;

    if (op == NULL) {
        return NULL;
    }
    op->c = c;
    op->kind = kind;
    op->msgid = -1;
    op->timer = h->timer_open(h->ctx, op_timer, op);
    if (op->timer == NULL) {
        free(op);
        return NULL;
    }
    op->deadline_ms = h->now_ms(h->ctx) + c->timeout_ms;
    return op;
}
/* Link op into the connector, arm its kick and hand out the handle. */
static void
op_link(pg_conn_req_t *op, pg_conn_req_t **req_out)
{
    pg_ldap_t *c = op->c;

    op->next = c->ops;
    if (c->ops != NULL) {
        c->ops->prev = op;
    }
    c->ops = op;
    c->base.host->timer_arm(op->timer, 0);
    if (req_out != NULL) {
        *req_out = op;
    }
}

/* Common start of ensure / disable / remove: validate and copy a. */
static pg_status_t
acct_start(pg_connector_t *base, op_kind_t kind, const pg_account_t *a,
           pg_conn_cb cb, void *arg, pg_conn_req_t **req_out)
{
    pg_ldap_t *c = (pg_ldap_t *) base;
    pg_conn_req_t *op;
    pg_status_t st;
    const char *k;
    json_t *v;
    size_t klen, total = 0;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (a == NULL || cb == NULL || a->key == NULL) {
        return PG_ERR_INVALID;
    }
    klen = strlen(a->key);
    if (klen == 0 || klen > PG_CONN_KEY_MAX) {
        return PG_ERR_INVALID;
    }
    if (kind == OP_DISABLE && c->dmode == DIS_NONE) {
        return PG_ERR_INVALID;   /* no disable configured */
    }
    if (kind == OP_ENSURE) {
        if (a->attrs != NULL && (!json_is_object(a->attrs)
            || json_object_size(a->attrs) > PG_LDAP_ATTRS_MAX)) {
            return PG_ERR_INVALID;
        }
        if ((a->ngroups > 0 || a->nrevoke > 0) && c->g_base == NULL) {
            return PG_ERR_INVALID;   /* groups not configured */
        }
        if (!a->active && c->dmode == DIS_NONE) {
            return PG_ERR_INVALID;
        }
    }
    op = op_new(c, kind);
    if (op == NULL) {
        return PG_ERR_NOMEM;
    }
    op->cb = cb;
    op->arg = arg;
    op->active = a->active;
    op->key = xstrdup(a->key);
    if (op->key == NULL) {
        st = PG_ERR_NOMEM;
        goto fail;
    }
    if (kind == OP_ENSURE) {
        st = copy_names(a->groups, a->ngroups, &op->groups);
        op->ngroups = op->groups != NULL ? a->ngroups : 0;
        if (st != PG_OK) {
            goto fail;
        }
        st = copy_names(a->revoke, a->nrevoke, &op->revoke);
        op->nrevoke = op->revoke != NULL ? a->nrevoke : 0;
        if (st != PG_OK) {
            goto fail;
        }
        if (a->attrs != NULL) {
            op->want = json_object();
            if (op->want == NULL) {
                st = PG_ERR_NOMEM;
                goto fail;
            }
            json_object_foreach((json_t *) a->attrs, k, v) {
                json_t *vals;

                if (!attr_name_ok(k) || strcasecmp(k, "objectClass") == 0) {
                    st = PG_ERR_INVALID;
                    goto fail;
                }
                vals = want_values(v, k, NULL);
                if (vals == NULL) {
                    st = PG_ERR_INVALID;
                    goto fail;
                }
                {
                    size_t i;
                    json_t *x;

                    total += strlen(k);
                    json_array_foreach(vals, i, x) {
                        total += json_string_length(x) + 8;
                    }
                }
                if (total > PG_LDAP_REQUEST_MAX) {
                    json_decref(vals);
                    st = PG_ERR_TOO_LARGE;
                    goto fail;
                }
                (void) json_object_set_new(op->want, k, vals);
            }
        }
        if (strcasecmp(c->rdn_attr, c->key_attr) != 0) {
            v = obj_get_ci(op->want, c->rdn_attr);
            if (json_array_size(v) != 1) {
                st = PG_ERR_INVALID;   /* the RDN needs exactly one value */
                goto fail;
            }
        }
    }
    op_link(op, req_out);
    return PG_OK;
fail:
    op_free(op);
    return st;
}
/* vtable entry points; contracts in connector.h. */
static pg_status_t
pgl_ensure(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
            void *arg, pg_conn_req_t **req_out)
{
    return acct_start(c, OP_ENSURE, a, cb, arg, req_out);
}

static pg_status_t
pgl_disable(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
             void *arg, pg_conn_req_t **req_out)
{
    return acct_start(c, OP_DISABLE, a, cb, arg, req_out);
}

static pg_status_t
pgl_remove(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
            void *arg, pg_conn_req_t **req_out)
{
    return acct_start(c, OP_REMOVE, a, cb, arg, req_out);
}

static pg_status_t
pgl_list(pg_connector_t *base, uint64_t since_ms, pg_conn_page_cb page,
          pg_conn_done_cb done, void *arg, pg_conn_req_t **req_out)
{
    pg_ldap_t *c = (pg_ldap_t *) base;
    pg_conn_req_t *op;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (page == NULL || done == NULL) {
        return PG_ERR_INVALID;
    }
    op = op_new(c, OP_LIST);
    if (op == NULL) {
        return PG_ERR_NOMEM;
    }
    op->buf = calloc(PG_CONN_PAGE_MAX, sizeof(*op->buf));
    if (op->buf == NULL) {
        op_free(op);
        return PG_ERR_NOMEM;
    }
    op->page = page;
    op->done = done;
    op->arg = arg;
    op->since_ms = since_ms;
    op_link(op, req_out);
    return PG_OK;
}

/* Cancel: abandon what is in flight, free, never call back. */
static void
pgl_cancel(pg_conn_req_t *op)
{
    if (op == NULL) {
        return;
    }
    if (op->in_cb) {
        op->cancelled = 1;   /* freed when the page callback returns */
        return;
    }
    op_unlink(op);
    op_abandon(op);
    op_free(op);
}
/* Free c now: pending requests are dropped silently, the password is
 * wiped, the connection unbound. */
static void
real_free(pg_ldap_t *c)
{
    while (c->ops != NULL) {
        pg_conn_req_t *op = c->ops;

        op_unlink(op);
        op_abandon(op);
        op_free(op);
    }
    conn_close(c);
    if (c->conn_timer != NULL) {
        c->base.host->timer_close(c->conn_timer);
    }
    if (c->bind_pw != NULL) {
        explicit_bzero(c->bind_pw, strlen(c->bind_pw));
        free(c->bind_pw);
    }
    free(c->url);
    free(c->bind_dn);
    free(c->tls_ca);
    free(c->base_dn);
    strv_free(c->ocs, c->nocs);
    free(c->rdn_attr);
    free(c->key_attr);
    free(c->g_base);
    free(c->g_oc);
    free(c->g_member);
    free(c->g_name);
    free(c->d_attr);
    free(c->d_value);
    free(c->d_enabled);
    free(c->d_ou);
    free(c->base.name);
    free(c);
}
/* vt->free: deferred when called from inside one of our handlers. */
static void
pgl_free(pg_connector_t *base)
{
    pg_ldap_t *c = (pg_ldap_t *) base;

    if (c->busy > 0) {
        c->free_pending = 1;   /* inside one of our handlers */
        return;
    }
    real_free(c);
}

static const pg_connector_vt_t ldap_vt = {
    "ldap", pgl_ensure, pgl_disable, pgl_remove, pgl_list, pgl_cancel,
    pgl_free
};

/* ---- config -------------------------------------------------------- */

/* Optional string member copied (malloc'd) into *out, or dflt. */
static pg_status_t
cfg_strdup(const json_t *obj, const char *path, const char *key, int req,
           const char *dflt, char **out, pg_err_t *err)
{
    const char *s;
    pg_status_t st = pg_conn_cfg_str(obj, path, key, req, &s, err);

    if (st != PG_OK) {
        return st;
    }
    if (s == NULL) {
        s = dflt;
    }
    *out = NULL;
    if (s == NULL) {
        return PG_OK;
    }
    *out = xstrdup(s);
    return *out != NULL ? PG_OK : PG_ERR_NOMEM;
}
/* Optional attribute-name member (malloc'd copy), default dflt. */
static pg_status_t
cfg_attr(const json_t *obj, const char *path, const char *key,
         const char *dflt, char **out, pg_err_t *err)
{
    pg_status_t st = cfg_strdup(obj, path, key, 0, dflt, out, err);

    if (st == PG_OK && !attr_name_ok(*out)) {
        pg_err_set(err, "%s.%s: not an attribute name", path, key);
        return PG_ERR_CONFIG;
    }
    return st;
}
/* Required/optional DN member, checked with ldap_dn_normalize(). */
static pg_status_t
cfg_dn(const json_t *obj, const char *path, const char *key, int req,
       char **out, pg_err_t *err)
{
    pg_status_t st = cfg_strdup(obj, path, key, req, NULL, out, err);
    char *n;

    if (st != PG_OK || *out == NULL) {
        return st;
    }
    n = strlen(*out) <= PG_LDAP_DN_MAX ? dn_norm(*out) : NULL;
    if (n == NULL) {
        pg_err_set(err, "%s.%s: not a valid DN", path, key);
        return PG_ERR_CONFIG;
    }
    free(n);
    return PG_OK;
}
/* Optional boolean member (default false). */
static pg_status_t
cfg_bool(const json_t *obj, const char *path, const char *key, int *out,
         pg_err_t *err)
{
    json_t *v = json_object_get(obj, key);

    *out = 0;
    if (v == NULL) {
        return PG_OK;
    }
    if (!json_is_boolean(v)) {
        pg_err_set(err, "%s.%s: must be true or false", path, key);
        return PG_ERR_CONFIG;
    }
    *out = json_is_true(v);
    return PG_OK;
}
/* The "groups" object. */
static pg_status_t
cfg_groups(pg_ldap_t *c, const json_t *g, pg_err_t *err)
{
    static const char *const known[] = {
        "base_dn", "object_class", "member_attr", "name_attr", NULL
    };
    const char *path = "connector.groups";
    pg_status_t st;

    if ((st = pg_conn_cfg_known(g, path, known, err)) != PG_OK
        || (st = cfg_dn(g, path, "base_dn", 1, &c->g_base, err)) != PG_OK
        || (st = cfg_strdup(g, path, "object_class", 0, "groupOfNames",
                            &c->g_oc, err)) != PG_OK) {
        return st;
    }
    if (strcasecmp(c->g_oc, "groupOfNames") != 0
        && strcasecmp(c->g_oc, "groupOfUniqueNames") != 0) {
        pg_err_set(err, "%s.object_class: must be groupOfNames or "
                   "groupOfUniqueNames", path);
        return PG_ERR_CONFIG;
    }
    if ((st = cfg_strdup(g, path, "member_attr", 0,
                         strcasecmp(c->g_oc, "groupOfNames") == 0
                         ? "member" : "uniqueMember",
                         &c->g_member, err)) != PG_OK) {
        return st;
    }
    if (strcasecmp(c->g_member, "member") != 0
        && strcasecmp(c->g_member, "uniqueMember") != 0) {
        pg_err_set(err, "%s.member_attr: must be member or uniqueMember",
                   path);
        return PG_ERR_CONFIG;
    }
    return cfg_attr(g, path, "name_attr", "cn", &c->g_name, err);
}
/* The "disable" object (needs base_dn parsed first). */
static pg_status_t
cfg_disable(pg_ldap_t *c, const json_t *d, pg_err_t *err)
{
    static const char *const known[] = {
        "mode", "attribute", "value", "enabled_value", "disabled_ou", NULL
    };
    const char *path = "connector.disable", *mode;
    pg_status_t st;

    if ((st = pg_conn_cfg_known(d, path, known, err)) != PG_OK
        || (st = pg_conn_cfg_str(d, path, "mode", 1, &mode, err)) != PG_OK) {
        return st;
    }
    if (strcmp(mode, "attribute") == 0) {
        c->dmode = DIS_ATTR;
        if (json_object_get(d, "disabled_ou") != NULL) {
            pg_err_set(err, "%s.disabled_ou: only with mode \"move\"", path);
            return PG_ERR_CONFIG;
        }
        if (json_object_get(d, "attribute") == NULL) {
            pg_err_set(err, "%s.attribute: required", path);
            return PG_ERR_CONFIG;
        }
        if ((st = cfg_attr(d, path, "attribute", NULL, &c->d_attr, err))
            != PG_OK
            || (st = cfg_strdup(d, path, "value", 1, NULL, &c->d_value, err))
            != PG_OK) {
            return st;
        }
        return cfg_strdup(d, path, "enabled_value", 0, NULL, &c->d_enabled,
                          err);
    }
    if (strcmp(mode, "move") == 0) {
        c->dmode = DIS_MOVE;
        if (json_object_get(d, "attribute") != NULL
            || json_object_get(d, "value") != NULL
            || json_object_get(d, "enabled_value") != NULL) {
            pg_err_set(err, "%s: attribute/value only with mode "
                       "\"attribute\"", path);
            return PG_ERR_CONFIG;
        }
        if ((st = cfg_dn(d, path, "disabled_ou", 1, &c->d_ou, err))
            != PG_OK) {
            return st;
        }
        if (dn_under(c->base_dn, c->d_ou) || dn_same(c->base_dn, c->d_ou)) {
            pg_err_set(err, "%s.disabled_ou: must not contain base_dn", path);
            return PG_ERR_CONFIG;
        }
        c->d_ou_separate = !dn_under(c->d_ou, c->base_dn);
        return PG_OK;
    }
    pg_err_set(err, "%s.mode: must be \"attribute\" or \"move\"", path);
    return PG_ERR_CONFIG;
}
/* The whole connector object into c; err = "connector.<path>: ...". */
static pg_status_t
cfg_parse(pg_ldap_t *c, const json_t *cfg, pg_err_t *err)
{
    static const char *const known[] = {
        "type", "url", "bind_dn", "bind_password", "bind_password_file",
        "starttls", "tls_ca_file", "timeout_ms", "base_dn", "object_classes",
        "rdn_attr", "key_attr", "groups", "disable", "page_size", NULL
    };
    const char *path = "connector", *s, *pwf;
    LDAPURLDesc *lud = NULL;
    json_t *v;
    pg_status_t st;
    size_t i;

    if ((st = pg_conn_cfg_known(cfg, path, known, err)) != PG_OK) {
        return st;
    }
    if ((st = pg_conn_cfg_str(cfg, path, "type", 0, &s, err)) != PG_OK) {
        return st;
    }
    if (s != NULL && strcmp(s, "ldap") != 0) {
        pg_err_set(err, "%s.type: must be \"ldap\"", path);
        return PG_ERR_CONFIG;
    }
    if ((st = cfg_strdup(cfg, path, "url", 1, NULL, &c->url, err)) != PG_OK) {
        return st;
    }
    if ((strncasecmp(c->url, "ldap://", 7) != 0
         && strncasecmp(c->url, "ldaps://", 8) != 0)
        || ldap_url_parse(c->url, &lud) != LDAP_URL_SUCCESS) {
        pg_err_set(err, "%s.url: must be an ldap:// or ldaps:// URL", path);
        return PG_ERR_CONFIG;
    }
    ldap_free_urldesc(lud);
    if ((st = cfg_dn(cfg, path, "bind_dn", 0, &c->bind_dn, err)) != PG_OK
        || (st = pg_conn_cfg_str(cfg, path, "bind_password_file", 0, &pwf,
                                 err)) != PG_OK
        || (st = cfg_strdup(cfg, path, "bind_password", 0, NULL, &c->bind_pw,
                            err)) != PG_OK) {
        return st;
    }
    if (pwf != NULL && c->bind_pw != NULL) {
        pg_err_set(err, "%s.bind_password_file: not with bind_password",
                   path);
        return PG_ERR_CONFIG;
    }
    if (pwf != NULL) {
        pg_err_t ferr;
        size_t len;

        if (pg_read_file(pwf, LDAP_PW_FILE_MAX, 1, &c->bind_pw, &len, &ferr)
            != PG_OK) {
            pg_err_set(err, "%s.bind_password_file: %s", path, ferr.msg);
            return PG_ERR_CONFIG;
        }
    }
    if (c->bind_dn != NULL && c->bind_pw == NULL) {
        pg_err_set(err, "%s.bind_password: required with bind_dn", path);
        return PG_ERR_CONFIG;
    }
    if (c->bind_dn == NULL && c->bind_pw != NULL) {
        pg_err_set(err, "%s.bind_dn: required with a password", path);
        return PG_ERR_CONFIG;
    }
    if ((st = cfg_bool(cfg, path, "starttls", &c->starttls, err)) != PG_OK) {
        return st;
    }
    if (c->starttls && strncasecmp(c->url, "ldaps://", 8) == 0) {
        pg_err_set(err, "%s.starttls: not with an ldaps:// url", path);
        return PG_ERR_CONFIG;
    }
    if ((st = cfg_strdup(cfg, path, "tls_ca_file", 0, NULL, &c->tls_ca, err))
        != PG_OK) {
        return st;
    }
    if (c->tls_ca != NULL && access(c->tls_ca, R_OK) != 0) {
        pg_err_set(err, "%s.tls_ca_file: cannot read %s", path, c->tls_ca);
        return PG_ERR_CONFIG;
    }
    if ((st = pg_conn_cfg_uint(cfg, path, "timeout_ms", 100, 600000, 10000,
                               &c->timeout_ms, err)) != PG_OK
        || (st = pg_conn_cfg_uint(cfg, path, "page_size", 1, PG_CONN_PAGE_MAX,
                                  500, &c->page_size, err)) != PG_OK
        || (st = cfg_dn(cfg, path, "base_dn", 1, &c->base_dn, err)) != PG_OK
        || (st = cfg_attr(cfg, path, "rdn_attr", "uid", &c->rdn_attr, err))
        != PG_OK
        || (st = cfg_attr(cfg, path, "key_attr", "uid", &c->key_attr, err))
        != PG_OK) {
        return st;
    }
    v = json_object_get(cfg, "object_classes");
    if (v == NULL) {
        c->ocs = calloc(1, sizeof(char *));
        if (c->ocs == NULL || (c->ocs[0] = xstrdup("inetOrgPerson")) == NULL) {
            return PG_ERR_NOMEM;
        }
        c->nocs = 1;
    } else {
        if (!json_is_array(v) || json_array_size(v) == 0
            || json_array_size(v) > 16) {
            pg_err_set(err, "%s.object_classes: must be an array of 1 to 16 "
                       "names", path);
            return PG_ERR_CONFIG;
        }
        c->ocs = calloc(json_array_size(v), sizeof(char *));
        if (c->ocs == NULL) {
            return PG_ERR_NOMEM;
        }
        for (i = 0; i < json_array_size(v); i++) {
            const char *oc = json_string_value(json_array_get(v, i));

            if (oc == NULL || !attr_name_ok(oc)) {
                pg_err_set(err, "%s.object_classes[%zu]: not an object class "
                           "name", path, i);
                return PG_ERR_CONFIG;
            }
            c->ocs[i] = xstrdup(oc);
            if (c->ocs[i] == NULL) {
                return PG_ERR_NOMEM;
            }
            c->nocs++;
        }
    }
    v = json_object_get(cfg, "groups");
    if (v != NULL && (st = cfg_groups(c, v, err)) != PG_OK) {
        return st;
    }
    v = json_object_get(cfg, "disable");
    if (v != NULL && (st = cfg_disable(c, v, err)) != PG_OK) {
        return st;
    }
    return PG_OK;
}

/* Contract: see ldapconn.h. */
pg_status_t
pg_ldap_connector_new(const pg_host_t *host, const char *name,
                      const json_t *cfg, pg_connector_t **out, pg_err_t *err)
{
    pg_ldap_t *c;
    pg_status_t st;

    *out = NULL;
    if (host == NULL || name == NULL || host->timer_open == NULL
        || host->watch_open == NULL) {
        pg_err_set(err, "connector: a host with watches and timers is needed");
        return PG_ERR_INVALID;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return PG_ERR_NOMEM;
    }
    c->base.vt = &ldap_vt;
    c->base.host = host;
    c->fd = -1;
    c->conn_msgid = -1;
    c->base.name = xstrdup(name);
    if (c->base.name == NULL) {
        real_free(c);
        return PG_ERR_NOMEM;
    }
    st = cfg_parse(c, cfg, err);
    if (st != PG_OK) {
        real_free(c);
        return st;
    }
    c->conn_timer = host->timer_open(host->ctx, conn_timeout, c);
    if (c->conn_timer == NULL) {
        real_free(c);
        return PG_ERR_NOMEM;
    }
    c->base.caps = PG_CONN_CAP_LIST | PG_CONN_CAP_INCREMENTAL
                   | (c->g_base != NULL ? PG_CONN_CAP_GROUPS : 0u)
                   | (c->dmode != DIS_NONE ? PG_CONN_CAP_DISABLE : 0u);
    *out = &c->base;
    return PG_OK;
}
