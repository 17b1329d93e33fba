/*
 * provgate core: reconciliation of connector and SCIM targets.
 * Contract: include/provgate/recon.h; guide: docs/reconciliation.md.
 *
 * A run (one at a time per reconciler) goes through these phases, every
 * one asynchronous on the host loop:
 *   scan     identities, one SCAN page at a time (Lua: SCAN + HMGET of
 *            attrs, left, acct:<t>, ents:<t>); each identity's desired
 *            state is computed at once (policy + attribute mapping)
 *   list     the connector's list() pages into an accounts array (SCIM:
 *            pg_scim_run LIST with a page callback, each User mapped by
 *            pg_scim_user_account; discovery first for incremental runs)
 *   compare  pg_recon_compare (pure)
 *   act      each finding: audit recon.finding, apply the configured
 *            action (outbox enqueue / HSET acct:<t>), audit recon.action
 *   report   counts, files under report_dir, the callback
 * Keys (P = key prefix): P id:<iid> (read; acct:<t> written by adopt).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <hiredis.h>

#include "provgate/connector.h"
#include "provgate/http.h"
#include "provgate/outbox.h"
#include "provgate/policy.h"
#include "provgate/recon.h"
#include "provgate/scim.h"
#include "provgate/util.h"

#define PG_RECON_SCAN_COUNT  "500"
#define PG_RECON_ATTRS_MAX   (256u * 1024u)   /* identity attrs JSON cap */
#define PG_RECON_ENTS_MAX    (256u * 1024u)   /* ents:<t> JSON cap */
#define PG_RECON_REDIS_MS    5000

static const char *const pg_recon_kinds[PG_RECON_NKINDS] = {
    "orphaned", "rogue", "missing", "drift", "sod"
};
static const char *const pg_recon_actions[] = {
    "report", "revert", "adopt", "disable"
};

const char *
pg_recon_kind_str(pg_recon_kind_t k)
{
    return (unsigned) k < PG_RECON_NKINDS ? pg_recon_kinds[k] : "unknown";
}

const char *
pg_recon_action_str(pg_recon_action_t a)
{
    return (unsigned) a <= PG_RECON_DISABLE ? pg_recon_actions[a] : "unknown";
}

static int
pg_recon_kind_of(const char *s)
{
    int i;

    for (i = 0; s != NULL && i < PG_RECON_NKINDS; i++) {
        if (strcmp(s, pg_recon_kinds[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/* ---- config ----------------------------------------------------------- */

pg_status_t
pg_recon_cfg_parse(const json_t *obj, const char *path, pg_recon_cfg_t *out,
                   pg_err_t *err)
{
    const char *k;
    json_t *v;
    int kind, a;

    memset(out, 0, sizeof(*out));
    if (obj == NULL) {
        return PG_OK;
    }
    if (!json_is_object(obj)) {
        pg_err_set(err, "%s: must be an object", path);
        return PG_ERR_CONFIG;
    }
    json_object_foreach((json_t *) obj, k, v) {
        if (strcmp(k, "schedule_s") == 0) {
            json_int_t n = json_integer_value(v);

            if (!json_is_integer(v) || n < 0 || n > 604800) {
                pg_err_set(err, "%s.schedule_s: must be an integer in "
                           "0..604800", path);
                return PG_ERR_CONFIG;
            }
            out->schedule_s = (unsigned) n;
            continue;
        }
        if (strcmp(k, "page_size") == 0) {
            json_int_t n = json_integer_value(v);

            if (!json_is_integer(v) || n < 1 || n > PG_RECON_PAGE_MAX) {
                pg_err_set(err, "%s.page_size: must be an integer in "
                           "1..%u", path, PG_RECON_PAGE_MAX);
                return PG_ERR_CONFIG;
            }
            out->page_size = (unsigned) n;
            continue;
        }
        if (strcmp(k, "groups") == 0) {
            const char *g = json_string_value(v);

            if (g == NULL || (strcmp(g, "user_attribute") != 0
                              && strcmp(g, "group_members") != 0)) {
                pg_err_set(err, "%s.groups: must be \"user_attribute\" or "
                           "\"group_members\"", path);
                return PG_ERR_CONFIG;
            }
            out->groups_from_members = strcmp(g, "group_members") == 0;
            continue;
        }
        kind = pg_recon_kind_of(k);
        if (kind < 0) {
            pg_err_set(err, "%s.%s: unknown field", path, k);
            return PG_ERR_CONFIG;
        }
        for (a = 0; a <= PG_RECON_DISABLE; a++) {
            if (json_is_string(v)
                && strcmp(json_string_value(v), pg_recon_actions[a]) == 0) {
                break;
            }
        }
        if (a > PG_RECON_DISABLE) {
            pg_err_set(err, "%s.%s: must be \"report\", \"revert\", "
                       "\"adopt\" or \"disable\"", path, k);
            return PG_ERR_CONFIG;
        }
        if (a == PG_RECON_ADOPT && kind != PG_RECON_ROGUE) {
            pg_err_set(err, "%s.%s: \"adopt\" is only valid for rogue "
                       "accounts", path, k);
            return PG_ERR_CONFIG;
        }
        out->action[kind] = (pg_recon_action_t) a;
    }
    return PG_OK;
}

/* ---- the pure comparison ---------------------------------------------- */

/* A JSON scalar as comparable text into buf (NULL if not a scalar). */
static const char *
pg_recon_scalar(const json_t *v, char *buf, size_t bufsz)
{
    if (json_is_string(v)) {
        return json_string_value(v);
    }
    if (json_is_true(v)) {
        return "true";
    }
    if (json_is_false(v)) {
        return "false";
    }
    if (json_is_integer(v)) {
        snprintf(buf, bufsz, "%lld", (long long) json_integer_value(v));
        return buf;
    }
    if (json_is_real(v)) {
        snprintf(buf, bufsz, "%.17g", json_real_value(v));
        return buf;
    }
    return NULL;
}

/* 1 when the scalar s is among the values of v (a scalar or an array). */
static int
pg_recon_has_value(const json_t *v, const char *s)
{
    char buf[64];
    const char *x;
    size_t i;
    json_t *e;

    if (json_is_array(v)) {
        json_array_foreach(v, i, e) {
            x = pg_recon_scalar(e, buf, sizeof(buf));
            if (x != NULL && strcasecmp(x, s) == 0
                && (strcmp(x, s) == 0 || json_is_boolean(e)
                    || strcmp(s, "true") == 0 || strcmp(s, "false") == 0)) {
                return 1;
            }
        }
        return 0;
    }
    x = pg_recon_scalar(v, buf, sizeof(buf));
    if (x == NULL) {
        return 0;
    }
    if (strcmp(x, s) == 0) {
        return 1;
    }
    /* booleans: "TRUE" (LDAP) equals true */
    return strcasecmp(x, s) == 0
           && (strcasecmp(s, "true") == 0 || strcasecmp(s, "false") == 0);
}

/* 1 when desired d and actual a hold the same values (as sets). */
static int
pg_recon_same(const json_t *d, const json_t *a)
{
    char buf[64];
    const char *s;
    size_t i, nd, na;
    json_t *e;

    if (a == NULL || json_is_null(a)) {
        /* an empty desired value equals an absent attribute */
        s = pg_recon_scalar(d, buf, sizeof(buf));
        return (s != NULL && s[0] == '\0')
               || (json_is_array(d) && json_array_size(d) == 0);
    }
    nd = json_is_array(d) ? json_array_size(d) : 1;
    na = json_is_array(a) ? json_array_size(a) : 1;
    if (nd != na) {
        return 0;
    }
    if (!json_is_array(d)) {
        s = pg_recon_scalar(d, buf, sizeof(buf));
        return s != NULL && pg_recon_has_value(a, s);
    }
    json_array_foreach(d, i, e) {
        s = pg_recon_scalar(e, buf, sizeof(buf));
        if (s == NULL || !pg_recon_has_value(a, s)) {
            return 0;
        }
    }
    return 1;
}

/* 1 when string s is in the array of strings arr. */
static int
pg_recon_in(const json_t *arr, const char *s)
{
    size_t i;
    json_t *e;

    json_array_foreach(arr, i, e) {
        if (json_is_string(e) && strcmp(json_string_value(e), s) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Append a finding {"kind", "reason"} + extra (stolen) to out. */
static pg_status_t
pg_recon_add(json_t *out, pg_recon_kind_t kind, const char *reason,
             const json_t *acct, const json_t *ident, json_t *extra)
{
    json_t *f = json_pack("{s:s, s:s}", "kind", pg_recon_kind_str(kind),
                          "reason", reason);
    const char *s;

    if (f == NULL) {
        json_decref(extra);
        return PG_ERR_NOMEM;
    }
    if (acct != NULL) {
        if ((s = json_string_value(json_object_get(acct, "key"))) != NULL) {
            json_object_set_new(f, "account", json_string(s));
        }
        if ((s = json_string_value(json_object_get(acct, "id"))) != NULL) {
            json_object_set_new(f, "account_id", json_string(s));
        }
    }
    if (ident != NULL
        && (s = json_string_value(json_object_get(ident, "iid"))) != NULL) {
        json_object_set_new(f, "identity", json_string(s));
    }
    if (extra != NULL) {
        json_object_update(f, extra);
        json_decref(extra);
    }
    return json_array_append_new(out, f) == 0 ? PG_OK : PG_ERR_NOMEM;
}

/* Append e to *arr, creating the array on first use (lazily: a linked
 * account in sync allocates nothing). 0 on success. */
static int
pg_recon_push(json_t **arr, json_t *e)
{
    if (*arr == NULL && (*arr = json_array()) == NULL) {
        json_decref(e);
        return -1;
    }
    return json_array_append_new(*arr, e);
}

/* Drift, rogue entitlements and SoD of a linked, granted account. */
static pg_status_t
pg_recon_linked(json_t *out, const json_t *a, const json_t *ident)
{
    const json_t *des = json_object_get(ident, "desired");
    const json_t *dattrs = json_object_get(des, "attrs");
    const json_t *aattrs = json_object_get(a, "attrs");
    const json_t *dgroups = json_object_get(des, "groups");
    const json_t *agroups = json_object_get(a, "groups");
    const json_t *ents = json_object_get(ident, "ents");
    json_t *diffs = NULL, *miss = NULL, *extra = NULL;
    json_t *v, *e, *sod;
    const char *k;
    size_t i, j;
    int bad = 0;
    pg_status_t st = PG_OK;

    json_object_foreach((json_t *) dattrs, k, v) {
        json_t *actual = json_object_get(aattrs, k);

        if (!pg_recon_same(v, actual)) {
            bad |= pg_recon_push(&diffs, json_pack("{s:s, s:O, s:O?}", "attr",
                                                   k, "desired", v, "actual",
                                                   actual));
        }
    }
    json_array_foreach(dgroups, i, e) {
        if (json_is_string(e) && !pg_recon_in(agroups, json_string_value(e))) {
            bad |= pg_recon_push(&miss, json_incref(e));
        }
    }
    json_array_foreach(agroups, i, e) {
        if (json_is_string(e) && !pg_recon_in(dgroups, json_string_value(e))
            && !pg_recon_in(ents, json_string_value(e))) {
            bad |= pg_recon_push(&extra, json_incref(e));
        }
    }
    if (bad) {
        st = PG_ERR_NOMEM;
        goto done;
    }
    if (json_is_false(json_object_get(a, "active"))) {
        st = pg_recon_add(out, PG_RECON_DRIFT, "disabled", a, ident, NULL);
    }
    if (st == PG_OK && diffs != NULL) {
        st = pg_recon_add(out, PG_RECON_DRIFT, "attributes", a, ident,
                          json_pack("{s:O}", "attrs", diffs));
    }
    if (st == PG_OK && miss != NULL) {
        st = pg_recon_add(out, PG_RECON_DRIFT, "entitlements", a, ident,
                          json_pack("{s:O}", "missing_groups", miss));
    }
    if (st == PG_OK && extra != NULL) {
        st = pg_recon_add(out, PG_RECON_ROGUE, "entitlements", a, ident,
                          json_pack("{s:O}", "extra_groups", extra));
    }
    json_array_foreach(json_object_get(ident, "sod"), i, sod) {
        const json_t *vals = json_object_get(sod, "values");
        int all = json_array_size(vals) > 0;

        json_array_foreach(vals, j, e) {
            if (!json_is_string(e)
                || !pg_recon_in(agroups, json_string_value(e))) {
                all = 0;
            }
        }
        if (st == PG_OK && all) {
            st = pg_recon_add(out, PG_RECON_SOD, "toxic_combination", a,
                              ident, json_pack("{s:O?, s:O}", "policy",
                                               json_object_get(sod, "policy"),
                                               "groups", vals));
        }
    }
done:
    json_decref(diffs);
    json_decref(miss);
    json_decref(extra);
    return st;
}

pg_status_t
pg_recon_compare(const json_t *accounts, const json_t *identities, int full,
                 json_t **out)
{
    json_t *links = NULL, *keys = NULL, *listed = NULL, *res = NULL, *a;
    json_t *ident, *ix;
    unsigned char *seen = NULL;
    const char *s;
    size_t i, n;
    pg_status_t st = PG_OK;

    *out = NULL;
    if (!json_is_array(accounts) || !json_is_array(identities)) {
        return PG_ERR_INVALID;
    }
    n = json_array_size(identities);
    links = json_object();
    keys = json_object();
    listed = json_object();
    res = json_array();
    seen = calloc(n + 1, 1);
    if (links == NULL || keys == NULL || listed == NULL || res == NULL
        || seen == NULL) {
        st = PG_ERR_NOMEM;
        goto done;
    }
    /* every listed id and key */
    json_array_foreach(accounts, i, a) {
        if ((s = json_string_value(json_object_get(a, "id"))) != NULL
            && s[0] != '\0') {
            json_object_set(listed, s, json_true());
        }
        if ((s = json_string_value(json_object_get(a, "key"))) != NULL) {
            json_object_set(listed, s, json_true());
        }
    }
    /* indexes: recorded account -> identity, mapped key -> identity (an
     * active identity wins a key over a left one) */
    json_array_foreach(identities, i, ident) {
        json_t *pos = json_integer((json_int_t) i);

        if (pos == NULL) {
            st = PG_ERR_NOMEM;
            goto done;
        }
        if ((s = json_string_value(json_object_get(ident, "acct"))) != NULL
            && s[0] != '\0') {
            json_object_set(links, s, pos);
        }
        if ((s = json_string_value(json_object_get(ident, "key"))) != NULL
            && s[0] != '\0'
            && (json_object_get(keys, s) == NULL
                || !json_is_true(json_object_get(ident, "left")))) {
            json_object_set(keys, s, pos);
        }
        json_decref(pos);
    }
    json_array_foreach(accounts, i, a) {
        const char *key = json_string_value(json_object_get(a, "key"));
        const char *id = json_string_value(json_object_get(a, "id"));
        int active = !json_is_false(json_object_get(a, "active"));

        if (key == NULL) {
            continue;
        }
        ix = id != NULL && id[0] != '\0' ? json_object_get(links, id) : NULL;
        if (ix == NULL) {
            ix = json_object_get(links, key);
        }
        if (ix != NULL) {
            size_t p = (size_t) json_integer_value(ix);

            ident = json_array_get(identities, p);
            seen[p] = 1;
            if (json_is_true(json_object_get(ident, "left"))) {
                if (active) {
                    st = pg_recon_add(res, PG_RECON_ORPHANED, "identity_left",
                                      a, ident, NULL);
                }
            } else if (json_object_get(ident, "render_error") != NULL) {
                /* the desired state is unknown: never guess */
                st = PG_OK;
            } else if (!json_is_object(json_object_get(ident, "desired"))) {
                if (active) {
                    st = pg_recon_add(res, PG_RECON_ORPHANED, "not_entitled",
                                      a, ident, NULL);
                }
            } else {
                st = pg_recon_linked(res, a, ident);
            }
        } else if ((ix = json_object_get(keys, key)) != NULL) {
            size_t p = (size_t) json_integer_value(ix);

            ident = json_array_get(identities, p);
            seen[p] = 1;
            s = json_string_value(json_object_get(ident, "acct"));
            if (s != NULL && s[0] != '\0' && json_object_get(listed, s) == NULL
                && !json_is_true(json_object_get(ident, "left"))) {
                /* provgate recorded an account for this identity in another
                 * form than list() gives (e.g. LDAP: the DN at creation, the
                 * entryUUID when listed) and no listed account carries it:
                 * the mapped key decides, this is the identity's account */
                st = json_is_object(json_object_get(ident, "desired"))
                         ? pg_recon_linked(res, a, ident)
                         : active ? pg_recon_add(res, PG_RECON_ORPHANED,
                                                 "not_entitled", a, ident,
                                                 NULL)
                                  : PG_OK;
            } else if (json_is_true(json_object_get(ident, "left"))) {
                if (active) {
                    st = pg_recon_add(res, PG_RECON_ORPHANED,
                                      "identity_left", a, ident, NULL);
                }
            } else {
                /* created outside provgate, but it correlates */
                st = pg_recon_add(res, PG_RECON_ROGUE, "unlinked", a, NULL,
                                  json_pack("{s:O}", "candidate",
                                            json_object_get(ident, "iid")));
            }
        } else {
            st = pg_recon_add(res, PG_RECON_ROGUE, "no_identity", a, NULL,
                              NULL);
        }
        if (st != PG_OK) {
            goto done;
        }
    }
    if (full) {
        json_array_foreach(identities, i, ident) {
            if (seen[i] || json_is_true(json_object_get(ident, "left"))
                || !json_is_object(json_object_get(ident, "desired"))) {
                continue;
            }
            s = json_string_value(json_object_get(ident, "acct"));
            st = pg_recon_add(res, PG_RECON_MISSING,
                              s != NULL && s[0] != '\0' ? "account_gone"
                                                        : "not_created",
                              NULL, ident,
                              json_pack("{s:O?}", "account",
                                        json_object_get(ident, "key")));
            if (st != PG_OK) {
                goto done;
            }
        }
    }
done:
    json_decref(links);
    json_decref(keys);
    json_decref(listed);
    free(seen);
    if (st != PG_OK) {
        json_decref(res);
        return st;
    }
    *out = res;
    return PG_OK;
}

json_t *
pg_recon_counts(const json_t *findings)
{
    json_t *c = json_object(), *f;
    size_t i;
    int k;

    for (k = 0; c != NULL && k < PG_RECON_NKINDS; k++) {
        json_object_set_new(c, pg_recon_kinds[k], json_integer(0));
    }
    json_array_foreach(findings, i, f) {
        const char *kind = json_string_value(json_object_get(f, "kind"));
        json_t *n = kind != NULL ? json_object_get(c, kind) : NULL;

        if (n != NULL) {
            json_integer_set(n, json_integer_value(n) + 1);
        }
    }
    return c;
}

/* ---- CSV -------------------------------------------------------------- */

typedef struct pg_recon_buf {
    char *p;
    size_t len, cap;
    int oom;
} pg_recon_buf_t;

static void
pg_recon_put(pg_recon_buf_t *b, const char *s, size_t n)
{
    if (b->oom) {
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        char *np;

        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        np = realloc(b->p, cap);
        if (np == NULL) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* One CSV field, quoted when needed; a leading = + - @ is prefixed with '
 * so spreadsheets do not evaluate it. */
static void
pg_recon_field(pg_recon_buf_t *b, const char *s, int last)
{
    const char *c;

    if (s == NULL) {
        s = "";
    }
    if (strpbrk(s, ",\"\r\n") != NULL || (s[0] && strchr("=+-@", s[0]))) {
        pg_recon_put(b, "\"", 1);
        if (s[0] && strchr("=+-@", s[0])) {
            pg_recon_put(b, "'", 1);
        }
        for (c = s; *c; c++) {
            pg_recon_put(b, c, 1);
            if (*c == '"') {
                pg_recon_put(b, "\"", 1);
            }
        }
        pg_recon_put(b, "\"", 1);
    } else {
        pg_recon_put(b, s, strlen(s));
    }
    pg_recon_put(b, last ? "\r\n" : ",", last ? 2 : 1);
}

char *
pg_recon_csv(const json_t *report)
{
    pg_recon_buf_t b = { NULL, 0, 0, 0 };
    json_t *f, *det;
    size_t i;

    static const char hdr[] = "kind,reason,account,account_id,identity,"
                              "action,action_outcome,detail\r\n";

    pg_recon_put(&b, hdr, sizeof(hdr) - 1);
    json_array_foreach(json_object_get(report, "findings"), i, f) {
        char *d;

        det = json_object();
        if (det != NULL) {
            json_object_update(det, f);
            json_object_del(det, "kind");
            json_object_del(det, "reason");
            json_object_del(det, "account");
            json_object_del(det, "account_id");
            json_object_del(det, "identity");
            json_object_del(det, "action");
            json_object_del(det, "action_outcome");
        }
        d = det != NULL && json_object_size(det) > 0
                ? json_dumps(det, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        json_decref(det);
        pg_recon_field(&b, json_string_value(json_object_get(f, "kind")), 0);
        pg_recon_field(&b, json_string_value(json_object_get(f, "reason")), 0);
        pg_recon_field(&b, json_string_value(json_object_get(f, "account")),
                       0);
        pg_recon_field(&b, json_string_value(json_object_get(f,
                                                             "account_id")),
                       0);
        pg_recon_field(&b, json_string_value(json_object_get(f, "identity")),
                       0);
        pg_recon_field(&b, json_string_value(json_object_get(f, "action")), 0);
        pg_recon_field(&b, json_string_value(json_object_get(f,
                                                  "action_outcome")), 0);
        pg_recon_field(&b, d, 1);
        free(d);
    }
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- the runner ------------------------------------------------------- */

typedef struct pg_recon_tgt {
    const pg_target_cfg_t *t;
    pg_connector_t *conn;      /* connector targets; NULL for SCIM */
    int scim;                  /* a "type": "scim" target */
    pg_scim_caps_t caps;       /* SCIM: ServiceProviderConfig, read once */
    pg_scim_oauth_t *oauth;    /* SCIM "oauth2" target: its token cache */
    pg_recon_cfg_t rc;
    uint64_t last_ok_ms;       /* wall-clock start of the last completed run */
} pg_recon_tgt_t;

struct pg_recon {
    const pg_config_t *cfg;
    const pg_host_t *host;
    pg_redis_t *redis;
    pg_audit_t *audit;
    pg_http_t *http;
    char *report_dir;
    pg_recon_tgt_t *tg;
    size_t ntg;

    /* the running run */
    int busy;
    pg_recon_tgt_t *cur;
    pg_recon_cb cb;
    void *arg;
    int full;
    uint64_t since_ms, started_ms;
    uint64_t scanned_ms, listed_ms, compared_ms; /* phase ends, 0 = not yet */
    char run[32];
    char cursor[32];
    json_t *idents;            /* compare input */
    json_t *byiid;             /* iid -> identity object (borrowed refs) */
    json_t *accounts;
    json_t *findings;
    size_t fi;                 /* next finding to act on */
    unsigned long n_enq, n_adopt, n_rep, n_skip, n_fail;
    pg_timer_t *kick;
    pg_redis_op_t *rop;
    pg_outbox_req_t *oreq;
    pg_conn_req_t *lreq;
    pg_scim_op_t *sop;         /* SCIM LIST / discovery in flight */
    json_t *byid;              /* SCIM "group_members": account id ->
                                  position in accounts */
    int listing_groups;        /* SCIM: the /Groups listing is running */
    const char *note;          /* static text for the report, or NULL */
    int too_many;              /* 1 too many, 2 no memory, 3 bad account */
};

/* Scan one page. ARGV: prefix, cursor, target, count.
 * -> {next cursor, iid, attrs, left, acct, ents, iid, ...} */
static const char pg_recon_scan_lua[] =
    "local p = ARGV[1] "
    "local r = redis.call('SCAN', ARGV[2], 'MATCH', p .. 'id:*', "
    "                     'COUNT', ARGV[4]) "
    "local out = {r[1]} "
    "for _, k in ipairs(r[2]) do "
    "  if redis.call('TYPE', k)['ok'] == 'hash' then "
    "    local v = redis.call('HMGET', k, 'attrs', 'left', "
    "                         'acct:' .. ARGV[3], 'ents:' .. ARGV[3]) "
    "    out[#out + 1] = string.sub(k, #p + 4) "
    "    for i = 1, 4 do out[#out + 1] = v[i] or '' end "
    "  end "
    "end "
    "return out";

static uint64_t
pg_recon_wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

pg_status_t
pg_recon_new(const pg_config_t *cfg, const pg_host_t *host, pg_redis_t *redis,
             pg_audit_t *audit, const char *report_dir, pg_recon_t **out,
             pg_err_t *err)
{
    pg_recon_t *r;
    size_t i;
    pg_status_t st;
    char path[320];

    *out = NULL;
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return PG_ERR_NOMEM;
    }
    r->cfg = cfg;
    r->host = host;
    r->redis = redis;
    r->audit = audit;
    st = pg_http_new(host, &r->http);
    if (st == PG_OK) {
        r->tg = calloc(cfg->ntargets + 1, sizeof(*r->tg));
        if (r->tg == NULL) {
            st = PG_ERR_NOMEM;
        }
    }
    if (st == PG_OK && report_dir != NULL
        && (r->report_dir = strdup(report_dir)) == NULL) {
        st = PG_ERR_NOMEM;
    }
    for (i = 0; st == PG_OK && i < cfg->ntargets; i++) {
        const pg_target_cfg_t *t = &cfg->targets[i];
        pg_recon_tgt_t *x;

        x = &r->tg[r->ntg];
        x->t = t;
        x->scim = t->type == PG_TARGET_SCIM;
        snprintf(path, sizeof(path), "$.targets.%s.reconcile", t->name);
        st = pg_recon_cfg_parse(t->reconcile, path, &x->rc, err);
        if (st == PG_OK && !x->scim
            && (x->rc.page_size != 0 || x->rc.groups_from_members)) {
            pg_err_set(err, "%s.%s: only for SCIM targets (a connector "
                       "lists with its own settings)", path,
                       x->rc.page_size != 0 ? "page_size" : "groups");
            st = PG_ERR_CONFIG;
        }
        if (st == PG_OK && x->scim && t->auth == PG_AUTH_OAUTH2) {
            pg_scim_oauth_cfg_t oc;

            memset(&oc, 0, sizeof(oc));
            oc.token_url = t->oauth_token_url;
            oc.client_id = t->oauth_client_id;
            oc.client_secret = t->oauth_client_secret;
            oc.scope = t->oauth_scope;
            oc.skew_s = t->oauth_skew_s;
            oc.timeout_ms = t->timeout_ms;
            oc.tls = t->tls;
            st = pg_scim_oauth_new(&oc, &x->oauth);
            if (st != PG_OK) {
                pg_err_set(err, "target %s: oauth2 token cache: %s",
                           t->name, pg_status_str(st));
            }
        }
        if (st == PG_OK && !x->scim) {
            st = pg_connector_create(host, r->http, redis,
                                     cfg->redis.key_prefix, t->name,
                                     t->type_name, t->connector, &x->conn,
                                     err);
        }
        r->ntg++;
    }
    if (st != PG_OK) {
        pg_recon_free(r);
        return st;
    }
    *out = r;
    return PG_OK;
}

static void
pg_recon_reset(pg_recon_t *r)
{
    if (r->rop != NULL) {
        pg_redis_cancel(r->rop);
        r->rop = NULL;
    }
    if (r->oreq != NULL) {
        pg_outbox_cancel(r->oreq);
        r->oreq = NULL;
    }
    if (r->lreq != NULL && r->cur != NULL) {
        pg_conn_cancel(r->cur->conn, r->lreq);
        r->lreq = NULL;
    }
    if (r->sop != NULL) {
        pg_scim_cancel(r->sop);
        r->sop = NULL;
    }
    if (r->kick != NULL) {
        r->host->timer_close(r->kick);
        r->kick = NULL;
    }
    json_decref(r->idents);
    r->idents = NULL;
    json_decref(r->byiid);
    r->byiid = NULL;
    json_decref(r->accounts);
    r->accounts = NULL;
    json_decref(r->byid);
    r->byid = NULL;
    r->listing_groups = 0;
    json_decref(r->findings);
    r->findings = NULL;
    r->busy = 0;
    r->cur = NULL;
}

void
pg_recon_free(pg_recon_t *r)
{
    size_t i;

    if (r == NULL) {
        return;
    }
    pg_recon_reset(r);
    for (i = 0; i < r->ntg; i++) {
        pg_connector_free(r->tg[i].conn);
        pg_scim_oauth_free(r->tg[i].oauth);  /* before r->http goes */
    }
    free(r->tg);
    pg_http_free(r->http);
    free(r->report_dir);
    free(r);
}

static pg_recon_tgt_t *
pg_recon_find(const pg_recon_t *r, const char *target)
{
    size_t i;

    for (i = 0; target != NULL && i < r->ntg; i++) {
        if (strcmp(r->tg[i].t->name, target) == 0) {
            return &r->tg[i];
        }
    }
    return NULL;
}

const pg_recon_cfg_t *
pg_recon_target_cfg(const pg_recon_t *r, const char *target)
{
    pg_recon_tgt_t *x = pg_recon_find(r, target);

    return x != NULL ? &x->rc : NULL;
}

static void
pg_recon_audit(pg_recon_t *r, const char *type, const char *outcome,
               const char *reason, json_t *fields)
{
    if (fields != NULL) {
        json_object_set_new(fields, "run", json_string(r->run));
        json_object_set_new(fields, "target", json_string(r->cur->t->name));
    }
    pg_audit_emit(r->audit, type, outcome, reason, fields, NULL);
}

/* Write text to dir/name atomically (tmp + rename). 0 on success. The
 * sidecar is not a request path: a local file write is acceptable. */
static int
pg_recon_write(const char *dir, const char *name, const char *text)
{
    char path[1024], tmp[1100];
    size_t len = strlen(text), off = 0;
    int fd;

    if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int) sizeof(path)
        || snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int) sizeof(tmp)) {
        return -1;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        return -1;
    }
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            close(fd);
            unlink(tmp);
            return -1;
        }
        off += (size_t) n;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* The duration of each phase the run reached, in ms of the wall clock:
 * {"identities": scan + desired state, "list": the connector's list(),
 * "compare", "act": actions and their audit events}. A new object (NULL on
 * allocation failure); end_ms is the run's finished_ms. */
static json_t *
pg_recon_phases(const pg_recon_t *r, uint64_t end_ms)
{
    json_t *o = json_object();
    const struct { const char *name; uint64_t from, to; } ph[] = {
        { "identities", r->started_ms, r->scanned_ms },
        { "list", r->scanned_ms, r->listed_ms },
        { "compare", r->listed_ms, r->compared_ms },
        { "act", r->compared_ms, end_ms },
    };
    size_t i;

    for (i = 0; o != NULL && i < sizeof(ph) / sizeof(ph[0]); i++) {
        if (ph[i].from == 0 || ph[i].to == 0 || ph[i].to < ph[i].from) {
            break;             /* not reached (the run stopped before) */
        }
        json_object_set_new(o, ph[i].name,
                            json_integer((json_int_t) (ph[i].to - ph[i].from)));
    }
    return o;
}

static void
pg_recon_finish(pg_recon_t *r, pg_status_t st, const char *why)
{
    pg_recon_cb cb = r->cb;
    void *arg = r->arg;
    json_t *rep;
    char name[400];
    char *text;

    rep = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:o, "
                    "s:{s:I, s:I, s:I, s:I, s:I}, s:O}",
                    "run", r->run, "target", r->cur->t->name,
                    "mode", r->full ? "full" : "incremental",
                    "since_ms", (json_int_t) r->since_ms,
                    "started_ms", (json_int_t) r->started_ms,
                    "finished_ms", (json_int_t) pg_recon_wall_ms(),
                    "accounts", (json_int_t) json_array_size(r->accounts),
                    "identities", (json_int_t) json_array_size(r->idents),
                    "counts", pg_recon_counts(r->findings),
                    "actions", "enqueued", (json_int_t) r->n_enq,
                    "adopted", (json_int_t) r->n_adopt,
                    "reported", (json_int_t) r->n_rep,
                    "skipped", (json_int_t) r->n_skip,
                    "failed", (json_int_t) r->n_fail,
                    "findings", r->findings != NULL ? r->findings
                                                    : json_array());
    if (rep != NULL && st != PG_OK) {
        json_object_set_new(rep, "error", json_string(why ? why : "error"));
    }
    if (rep != NULL) {
        json_object_set_new(rep, "phases_ms", pg_recon_phases(r,
                            (uint64_t) json_integer_value(
                                json_object_get(rep, "finished_ms"))));
    }
    if (rep != NULL && r->note != NULL) {
        json_object_set_new(rep, "note", json_string(r->note));
    }
    if (rep != NULL && r->report_dir != NULL) {
        json_t *files = json_object();

        snprintf(name, sizeof(name), "%s-%s.json", r->cur->t->name, r->run);
        text = json_dumps(rep, JSON_INDENT(1) | JSON_SORT_KEYS);
        if (text != NULL && pg_recon_write(r->report_dir, name, text) == 0) {
            json_object_set_new(files, "json", json_string(name));
        }
        free(text);
        snprintf(name, sizeof(name), "%s-%s.csv", r->cur->t->name, r->run);
        text = pg_recon_csv(rep);
        if (text != NULL && pg_recon_write(r->report_dir, name, text) == 0) {
            json_object_set_new(files, "csv", json_string(name));
        }
        free(text);
        json_object_set_new(rep, "files", files);
    }
    if (st == PG_OK) {
        r->cur->last_ok_ms = r->started_ms;
    }
    pg_recon_audit(r, "recon.run", st == PG_OK ? "success" : "failure",
                   st == PG_OK ? (r->full ? "full" : "incremental")
                               : pg_status_str(st),
                   rep != NULL ? json_pack("{s:O, s:O, s:O, s:O}", "counts",
                                           json_object_get(rep, "counts"),
                                           "actions",
                                           json_object_get(rep, "actions"),
                                           "accounts",
                                           json_object_get(rep, "accounts"),
                                           "identities",
                                           json_object_get(rep, "identities"))
                               : NULL);
    pg_recon_reset(r);
    cb(arg, rep != NULL ? st : PG_ERR_NOMEM, rep);
    json_decref(rep);
}

/* ---- act -------------------------------------------------------------- */

static void pg_recon_next_action(pg_recon_t *r);

/* Record the outcome of the current finding's action (audit recon.action)
 * and move to the next finding. Does not start it. */
static void
pg_recon_record(pg_recon_t *r, const char *outcome, const char *detail)
{
    json_t *f = json_array_get(r->findings, r->fi);
    json_t *af;

    json_object_set_new(f, "action_outcome", json_string(outcome));
    if (detail != NULL) {
        json_object_set_new(f, "action_detail", json_string(detail));
    }
    af = json_pack("{s:O, s:O?, s:O?, s:O?, s:O, s:s}", "kind",
                   json_object_get(f, "kind"), "account",
                   json_object_get(f, "account"), "identity",
                   json_object_get(f, "identity"), "candidate",
                   json_object_get(f, "candidate"), "action",
                   json_object_get(f, "action"), "result", outcome);
    if (af != NULL && detail != NULL) {
        json_object_set_new(af, "detail", json_string(detail));
    }
    pg_recon_audit(r, "recon.action",
                   strcmp(outcome, "failed") == 0 ? "failure"
                   : strcmp(outcome, "skipped") == 0 ? "deferred" : "success",
                   outcome, af);
    r->fi++;
}

/* An asynchronous action finished (from a callback): record, go on. */
static void
pg_recon_acted(pg_recon_t *r, const char *outcome, const char *detail)
{
    pg_recon_record(r, outcome, detail);
    pg_recon_next_action(r);
}

static void
pg_recon_enqueued(void *arg, pg_status_t st, const pg_outbox_enqueued_t *res)
{
    pg_recon_t *r = arg;

    r->oreq = NULL;
    if (st != PG_OK) {
        r->n_fail++;
        pg_recon_acted(r, "failed", pg_status_str(st));
        return;
    }
    r->n_enq++;
    json_object_set_new(json_array_get(r->findings, r->fi), "idem",
                        json_string(res->idem));
    pg_recon_acted(r, res->created ? "enqueued" : "already_pending", NULL);
}

/* Enqueue kind for identity ident (its attrs and granted entitlements).
 * 0: started (the callback goes on); -1: failed now (recorded). */
static int
pg_recon_enqueue(pg_recon_t *r, const json_t *ident, const char *kind)
{
    const char *iid = json_string_value(json_object_get(ident, "iid"));
    const json_t *ents = json_object_get(ident, "_ents");
    json_t *state, *empty = json_array();
    pg_outbox_op_t o;
    pg_status_t st;

    state = json_pack("{s:s, s:s, s:O, s:O}", "iid", iid, "app",
                      r->cur->t->name, "attrs",
                      json_object_get(ident, "_attrs"), "entitlements",
                      strcmp(kind, "ensure") == 0 && json_is_array(ents)
                          ? ents : empty);
    json_decref(empty);
    if (state == NULL) {
        r->n_fail++;
        pg_recon_record(r, "failed", "out of memory");
        return -1;
    }
    memset(&o, 0, sizeof(o));
    o.identity = iid;
    o.target = r->cur->t->name;
    o.kind = kind;
    o.state = state;
    o.dedup_ttl_s = r->cfg->outbox.dedup_ttl_s;
    o.release_when_done = 1;
    st = pg_outbox_enqueue(r->redis, &o, PG_RECON_REDIS_MS, pg_recon_enqueued,
                           r, NULL, &r->oreq);
    json_decref(state);
    if (st != PG_OK) {
        r->oreq = NULL;
        r->n_fail++;
        pg_recon_record(r, "failed", pg_status_str(st));
        return -1;
    }
    return 0;
}

static void
pg_recon_adopted(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_recon_t *r = arg;

    r->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        r->n_fail++;
        pg_recon_acted(r, "failed", "Redis unavailable");
        return;
    }
    r->n_adopt++;
    pg_recon_acted(r, "adopted", NULL);
}

/* Link the account of finding f to identity iid (HSET acct:<target>).
 * 0: started; -1: failed now (recorded). */
static int
pg_recon_adopt(pg_recon_t *r, const json_t *f, const char *iid)
{
    const char *id = json_string_value(json_object_get(f, "account_id"));
    char *key = NULL, field[PG_OUTBOX_FIELD_MAX + 8];
    const char *argv[4];
    pg_status_t st;

    if (id == NULL || id[0] == '\0') {
        id = json_string_value(json_object_get(f, "account"));
    }
    if (asprintf(&key, "%sid:%s", r->cfg->redis.key_prefix, iid) < 0) {
        r->n_fail++;
        pg_recon_record(r, "failed", "out of memory");
        return -1;
    }
    snprintf(field, sizeof(field), "acct:%s", r->cur->t->name);
    argv[0] = "HSET"; argv[1] = key; argv[2] = field; argv[3] = id;
    st = pg_redis_command(r->redis, 4, argv, NULL, PG_RECON_REDIS_MS,
                          pg_recon_adopted, r, &r->rop);
    free(key);
    if (st != PG_OK) {
        r->rop = NULL;
        r->n_fail++;
        pg_recon_record(r, "failed", pg_status_str(st));
        return -1;
    }
    return 0;
}

/*
 * Act on findings from r->fi on. Actions that complete at once (report,
 * skipped, a synchronous failure) are handled in this loop, never by
 * recursion, so a run with a million reported findings uses constant
 * stack; an asynchronous action returns and its callback calls back in.
 */
static void
pg_recon_next_action(pg_recon_t *r)
{
    json_t *f, *ff, *ident;
    const char *kind, *iid, *cand;
    pg_recon_action_t a;
    int k;

    for (;;) {
        f = json_array_get(r->findings, r->fi);
        if (f == NULL) {
            pg_recon_finish(r, PG_OK, NULL);
            return;
        }
        kind = json_string_value(json_object_get(f, "kind"));
        k = pg_recon_kind_of(kind);
        a = k >= 0 ? r->cur->rc.action[k] : PG_RECON_REPORT;
        json_object_set_new(f, "action", json_string(pg_recon_action_str(a)));
        ff = json_deep_copy(f);
        /* the event's reason is the finding's; "kind" is a field */
        pg_recon_audit(r, "recon.finding", "success",
                       json_string_value(json_object_get(f, "reason")), ff);
        iid = json_string_value(json_object_get(f, "identity"));
        cand = json_string_value(json_object_get(f, "candidate"));
        ident = json_object_get(r->byiid, iid != NULL ? iid
                                          : cand != NULL ? cand : "");
        switch (a) {
        case PG_RECON_REPORT:
            r->n_rep++;
            pg_recon_record(r, "reported", NULL);
            continue;
        case PG_RECON_ADOPT:
            if (cand == NULL) {
                r->n_skip++;
                pg_recon_record(r, "skipped", "no correlating identity");
                continue;
            }
            if (pg_recon_adopt(r, f, cand) == 0) {
                return;
            }
            continue;
        case PG_RECON_DISABLE:
        case PG_RECON_REVERT:
            if (ident == NULL) {
                r->n_skip++;
                pg_recon_record(r, "skipped", "no identity: provgate cannot "
                                "address this account");
                continue;
            }
            /* revert: the desired state of an orphaned account is "not
             * active" */
            if (pg_recon_enqueue(r, ident, a == PG_RECON_DISABLE
                                               || k == PG_RECON_ORPHANED
                                           ? "disable" : "ensure") == 0) {
                return;
            }
            continue;
        }
        r->n_skip++;
        pg_recon_record(r, "skipped", "unknown action");
    }
}

/* ---- list and compare --------------------------------------------------- */

static int
pg_recon_page(void *arg, const pg_listed_account_t *accts, size_t n)
{
    pg_recon_t *r = arg;
    size_t i, g;

    for (i = 0; i < n; i++) {
        json_t *a, *groups = json_array();

        if (json_array_size(r->accounts) >= PG_RECON_MAX_ACCOUNTS) {
            r->too_many = 1;
            json_decref(groups);
            return 1;
        }
        for (g = 0; groups != NULL && g < accts[i].ngroups; g++) {
            json_array_append_new(groups, json_string(accts[i].groups[g]));
        }
        a = json_pack("{s:s, s:s?, s:o, s:o, s:b, s:I}", "key", accts[i].key,
                      "id", accts[i].id, "attrs",
                      accts[i].attrs != NULL ? json_deep_copy(accts[i].attrs)
                                             : json_object(),
                      "groups", groups != NULL ? groups : json_array(),
                      "active", accts[i].active, "modified_ms",
                      (json_int_t) accts[i].modified_ms);
        if (a == NULL || json_array_append_new(r->accounts, a) != 0) {
            r->too_many = 2;
            return 1;
        }
    }
    return 0;
}

static void
pg_recon_listed(void *arg, pg_status_t st, const char *error)
{
    pg_recon_t *r = arg;
    char why[PG_CONN_ERROR_MAX + 32];

    r->lreq = NULL;
    if (r->too_many) {
        pg_recon_finish(r, r->too_many == 1 ? PG_ERR_TOO_LARGE
                           : r->too_many == 2 ? PG_ERR_NOMEM
                                              : PG_ERR_INVALID,
                        r->too_many == 1 ? "too many accounts"
                        : r->too_many == 2 ? "out of memory"
                                           : "list failed: a User without "
                                             "an id or a username");
        return;
    }
    if (st != PG_OK) {
        snprintf(why, sizeof(why), "list failed: %s",
                 error != NULL && error[0] ? error : pg_status_str(st));
        pg_recon_finish(r, st, why);
        return;
    }
    r->listed_ms = pg_recon_wall_ms();
    st = pg_recon_compare(r->accounts, r->idents, r->full, &r->findings);
    if (st != PG_OK) {
        pg_recon_finish(r, st, "compare failed");
        return;
    }
    r->compared_ms = pg_recon_wall_ms();
    r->fi = 0;
    pg_recon_next_action(r);
}

/* ---- SCIM targets ------------------------------------------------------ */

/*
 * One LIST page of Users: each becomes a recon account
 * (pg_scim_user_account) appended to r->accounts; the page itself is
 * dropped by the client after this returns. Non-zero stops the LIST
 * (r->too_many says why).
 */
static int
pg_recon_scim_page(void *arg, const json_t *resources, size_t total)
{
    pg_recon_t *r = arg;
    json_t *u, *a;
    size_t i;
    pg_status_t st;

    (void) total;
    json_array_foreach(resources, i, u) {
        if (json_array_size(r->accounts) >= PG_RECON_MAX_ACCOUNTS) {
            r->too_many = 1;
            return 1;
        }
        st = pg_scim_user_account(r->cur->t, u, &a);
        if (st != PG_OK) {
            r->too_many = st == PG_ERR_NOMEM ? 2 : 3;
            return 1;
        }
        if (r->byid != NULL) {
            /* memberships come from /Groups: index the account by id */
            json_t *pos = json_integer((json_int_t)
                                       json_array_size(r->accounts));

            if (pos == NULL
                || json_object_set_new(r->byid, json_string_value(
                                           json_object_get(a, "id")),
                                       pos) != 0
                || json_object_set_new(a, "groups", json_array()) != 0) {
                json_decref(a);
                r->too_many = 2;
                return 1;
            }
        }
        if (json_array_append_new(r->accounts, a) != 0) {
            r->too_many = 2;
            return 1;
        }
    }
    return 0;
}

/*
 * One LIST page of Groups ("groups": "group_members"): each member that
 * is a listed account gets the group's displayName (the entitlement
 * value provisioning uses). Members that are not listed (other groups,
 * Users outside an incremental run) are ignored. Non-zero on OOM.
 */
static int
pg_recon_scim_gpage(void *arg, const json_t *resources, size_t total)
{
    pg_recon_t *r = arg;
    json_t *g, *m, *ix, *groups;
    const char *name, *id;
    size_t i, j;

    (void) total;
    json_array_foreach(resources, i, g) {
        name = json_string_value(json_object_get(g, "displayName"));
        if (name == NULL) {
            continue;
        }
        json_array_foreach(json_object_get(g, "members"), j, m) {
            id = json_string_value(json_object_get(m, "value"));
            ix = id != NULL ? json_object_get(r->byid, id) : NULL;
            if (ix == NULL) {
                continue;
            }
            groups = json_object_get(json_array_get(r->accounts, (size_t)
                                         json_integer_value(ix)), "groups");
            if (json_array_append_new(groups, json_string(name)) != 0) {
                r->too_many = 2;
                return 1;
            }
        }
    }
    return 0;
}

/* The SCIM options of target x for reconciliation calls into *o (owned by
 * the caller, needed only for the pg_scim_run call): the host, x's caps,
 * its oauth2 token cache and the target's "retry". */
static void
pg_recon_scim_opts(pg_recon_t *r, pg_recon_tgt_t *x, pg_scim_options_t *o)
{
    memset(o, 0, sizeof(*o));
    o->host = r->host;
    o->caps = &x->caps;
    o->oauth = x->oauth;
    if (x->t->retry_attempts > 1) {
        o->retry.max_attempts = x->t->retry_attempts;
        o->retry.base_ms = x->t->retry_base_ms;
        o->retry.max_ms = x->t->retry_max_ms;
    }
}

/* A LIST finished: Users, then (with "group_members") Groups, then the
 * comparison. */
static void
pg_recon_scim_listed(void *arg, const pg_scim_result_t *res)
{
    pg_recon_t *r = arg;
    pg_scim_op_request_t req;
    pg_scim_options_t opts;
    char why[PG_CONN_ERROR_MAX + 32];
    pg_status_t st;

    r->sop = NULL;
    if (r->too_many == 0 && res->st != PG_OK) {
        snprintf(why, sizeof(why), "%s%s: %s", r->listing_groups
                                               ? "listing groups: " : "",
                 res->reason,
                 res->detail[0] ? res->detail : pg_status_str(res->st));
        pg_recon_listed(r, res->st, why);
        return;
    }
    if (r->too_many == 0 && r->byid != NULL && !r->listing_groups) {
        r->listing_groups = 1;
        pg_recon_scim_opts(r, r->cur, &opts);
        memset(&req, 0, sizeof(req));
        req.kind = PG_SCIM_OP_LIST;
        req.target = r->cur->t;
        req.opts = &opts;
        req.groups = 1;
        req.page_size = r->cur->rc.page_size ? r->cur->rc.page_size
                                             : PG_RECON_PAGE_DEFAULT;
        req.max_results = PG_RECON_MAX_ACCOUNTS;
        req.page_cb = pg_recon_scim_gpage;
        req.page_arg = r;
        st = pg_scim_run(r->http, &req, pg_recon_scim_listed, r, &r->sop);
        if (st != PG_OK) {
            r->sop = NULL;
            pg_recon_listed(r, st, "listing groups could not start");
        }
        return;
    }
    pg_recon_listed(r, PG_OK, NULL);
}

static void pg_recon_scim_list(pg_recon_t *r);

/* ServiceProviderConfig read (into r->cur->caps) for an incremental run:
 * go on with the listing, which decides filter or full. */
static void
pg_recon_scim_discovered(void *arg, const pg_scim_result_t *res)
{
    pg_recon_t *r = arg;

    r->sop = NULL;
    (void) res;        /* a failed read leaves the defaults: no filter */
    pg_recon_scim_list(r);
}

/*
 * List the Users of a SCIM target, page by page (startIndex/count,
 * page_size from the target's "reconcile", capped by the server's
 * filter.maxResults). An incremental run filters on meta.lastModified
 * when ServiceProviderConfig says filter.supported (read first, once per
 * reconciler); otherwise it lists everything and the run is full, with a
 * "note" in the report.
 */
static void
pg_recon_scim_list(pg_recon_t *r)
{
    pg_recon_tgt_t *x = r->cur;
    pg_scim_op_request_t req;
    pg_scim_options_t opts;
    pg_status_t st;

    pg_recon_scim_opts(r, x, &opts);
    memset(&req, 0, sizeof(req));
    req.target = x->t;
    req.opts = &opts;
    if (!r->full && !x->caps.loaded) {
        req.kind = PG_SCIM_OP_DISCOVER;
        st = pg_scim_run(r->http, &req, pg_recon_scim_discovered, r,
                         &r->sop);
        if (st != PG_OK) {
            r->sop = NULL;
            pg_recon_finish(r, st, "list could not start");
        }
        return;
    }
    if (!r->full && !x->caps.filter) {
        r->full = 1;
        r->since_ms = 0;
        r->note = "incremental run not possible: the target does not "
                  "support filtering (ServiceProviderConfig "
                  "filter.supported); listed in full";
    }
    if (x->rc.groups_from_members && r->byid == NULL
        && (r->byid = json_object()) == NULL) {
        pg_recon_finish(r, PG_ERR_NOMEM, "out of memory");
        return;
    }
    req.kind = PG_SCIM_OP_LIST;
    req.page_size = x->rc.page_size ? x->rc.page_size
                                    : PG_RECON_PAGE_DEFAULT;
    req.max_results = PG_RECON_MAX_ACCOUNTS;
    req.page_cb = pg_recon_scim_page;
    req.page_arg = r;
    req.modified_since_ms = r->full ? 0 : r->since_ms;
    st = pg_scim_run(r->http, &req, pg_recon_scim_listed, r, &r->sop);
    if (st != PG_OK) {
        r->sop = NULL;
        pg_recon_finish(r, st, "list could not start");
    }
}

static void
pg_recon_start_list(pg_recon_t *r)
{
    pg_status_t st;

    if (r->cur->scim) {
        pg_recon_scim_list(r);
        return;
    }
    st = pg_conn_list(r->cur->conn, r->full ? 0 : r->since_ms, pg_recon_page,
                      pg_recon_listed, r, &r->lreq);
    if (st != PG_OK) {
        r->lreq = NULL;
        pg_recon_finish(r, st, "list could not start");
    }
}

/* ---- scan identities --------------------------------------------------- */

/* The values of an entitlements JSON array text ([{type, value}]). */
static json_t *
pg_recon_values(const json_t *ents, const char *target)
{
    json_t *v = json_array(), *e;
    size_t i;

    json_array_foreach(ents, i, e) {
        const char *t = json_string_value(json_object_get(e, "target"));
        const char *s = json_string_value(json_object_get(e, "value"));

        if (s != NULL && (target == NULL || t == NULL
                          || strcmp(t, target) == 0)) {
            json_array_append_new(v, json_string(s));
        }
    }
    return v;
}

/* Build the compare input of one identity (stolen into r->idents). */
static pg_status_t
pg_recon_identity(pg_recon_t *r, const char *iid, const char *attrs_s,
                  size_t attrs_len, int left, const char *acct,
                  const char *ents_s, size_t ents_len)
{
    const pg_target_cfg_t *t = r->cur->t;
    json_t *attrs = NULL, *ents = NULL, *ident, *rendered, *des = NULL;
    json_t *sod;
    json_error_t jerr;
    pg_err_t err = { "" };
    pg_decision_t d;
    size_t i;
    pg_status_t st = PG_OK;

    if (attrs_len > 0 && attrs_len <= PG_RECON_ATTRS_MAX) {
        attrs = json_loadb(attrs_s, attrs_len, 0, &jerr);
    }
    if (!json_is_object(attrs)) {
        json_decref(attrs);
        attrs = json_object();
    }
    if (ents_len > 0 && ents_len <= PG_RECON_ENTS_MAX) {
        ents = json_loadb(ents_s, ents_len, 0, &jerr);
    }
    ident = json_pack("{s:s, s:b, s:s?, s:o, s:o}", "iid", iid, "left", left,
                      "acct", acct[0] ? acct : NULL, "ents",
                      pg_recon_values(ents, NULL), "_attrs", attrs);
    json_decref(ents);
    if (ident == NULL) {
        return PG_ERR_NOMEM;
    }
    /* the mapped attributes (the same rendering as provisioning) */
    rendered = json_object();
    for (i = 0; rendered != NULL && i < t->nattrs; i++) {
        const pg_attr_map_t *m = &t->attrs[i];

        if (m->tpl != NULL) {
            char *v = NULL;

            if (pg_template_render(m->tpl, attrs, &v, &err) != PG_OK) {
                json_object_set_new(ident, "render_error",
                                    json_string(err.msg));
                json_decref(rendered);
                rendered = NULL;
                break;
            }
            json_object_set_new(rendered, m->scim_path, json_string(v));
            free(v);
        } else {
            json_object_set(rendered, m->scim_path, m->literal);
        }
    }
    if (rendered != NULL) {
        json_object_set(ident, "key", json_object_get(rendered,
                                                      t->username_attr));
        json_object_del(rendered, t->username_attr);
    }
    memset(&d, 0, sizeof(d));
    if (!left && rendered != NULL && r->cfg->policies != NULL) {
        st = pg_policy_decide(r->cfg->policies, attrs, t->name, &d);
        if (st == PG_OK && d.has_account) {
            des = json_pack("{s:O, s:o}", "attrs", rendered, "groups",
                            pg_recon_values(d.entitlements, t->name));
            json_object_set(ident, "_ents", d.entitlements);
        }
        sod = json_array();
        for (i = 0; st == PG_OK && sod != NULL
                    && i < json_array_size(d.sod_findings); i++) {
            json_t *sf = json_array_get(d.sod_findings, i), *it, *vals;
            const char *res = json_string_value(json_object_get(sf,
                                                                "result"));
            size_t j;
            int roles = 0;

            if (res == NULL || strcmp(res, "exempted") == 0) {
                continue;
            }
            json_array_foreach(json_object_get(sf, "items"), j, it) {
                roles |= json_object_get(it, "role") != NULL;
            }
            vals = pg_recon_values(json_object_get(sf, "items"), t->name);
            if (!roles && json_array_size(vals) > 0) {
                json_array_append_new(sod, json_pack("{s:O, s:o}", "policy",
                                      json_object_get(sf, "policy"),
                                      "values", vals));
            } else {
                json_decref(vals);
            }
        }
        json_object_set_new(ident, "sod", sod);
    }
    pg_decision_clear(&d);
    json_decref(rendered);
    json_object_set_new(ident, "desired", des != NULL ? des : json_null());
    if (st != PG_OK) {
        json_decref(ident);
        return st;
    }
    json_object_set(r->byiid, iid, ident);
    return json_array_append_new(r->idents, ident) == 0 ? PG_OK
                                                        : PG_ERR_NOMEM;
}

static void pg_recon_scan(pg_recon_t *r);

static void
pg_recon_scanned(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_recon_t *r = arg;
    size_t i;
    char iid[PG_OUTBOX_FIELD_MAX + 1], acct[PG_OUTBOX_FIELD_MAX + 1];

    r->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements < 1 || (reply->elements - 1) % 5 != 0
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[0]->len >= sizeof(r->cursor)) {
        pg_recon_finish(r, PG_ERR_REDIS, "identity scan failed");
        return;
    }
    for (i = 1; i + 4 < reply->elements; i += 5) {
        redisReply *const *e = reply->element + i;
        int k;

        for (k = 0; k < 5; k++) {
            if (e[k]->type != REDIS_REPLY_STRING) {
                pg_recon_finish(r, PG_ERR_REDIS, "identity scan failed");
                return;
            }
        }
        if (e[0]->len == 0 || e[0]->len >= sizeof(iid)
            || e[3]->len >= sizeof(acct)) {
            continue;          /* not an identity we can act on */
        }
        if (json_array_size(r->idents) >= PG_RECON_MAX_IDENTITIES) {
            pg_recon_finish(r, PG_ERR_TOO_LARGE, "too many identities");
            return;
        }
        memcpy(iid, e[0]->str, e[0]->len);
        iid[e[0]->len] = '\0';
        memcpy(acct, e[3]->str, e[3]->len);
        acct[e[3]->len] = '\0';
        st = pg_recon_identity(r, iid, e[1]->str, e[1]->len, e[2]->len > 0,
                               acct, e[4]->str, e[4]->len);
        if (st != PG_OK) {
            pg_recon_finish(r, st, "desired state failed");
            return;
        }
    }
    memcpy(r->cursor, reply->element[0]->str, reply->element[0]->len);
    r->cursor[reply->element[0]->len] = '\0';
    if (strcmp(r->cursor, "0") == 0) {
        r->scanned_ms = pg_recon_wall_ms();
        pg_recon_start_list(r);
        return;
    }
    pg_recon_scan(r);
}

static void
pg_recon_scan(pg_recon_t *r)
{
    const char *argv[7];
    pg_status_t st;

    argv[0] = "EVAL"; argv[1] = pg_recon_scan_lua; argv[2] = "0";
    argv[3] = r->cfg->redis.key_prefix; argv[4] = r->cursor;
    argv[5] = r->cur->t->name; argv[6] = PG_RECON_SCAN_COUNT;
    st = pg_redis_command(r->redis, 7, argv, NULL, PG_RECON_REDIS_MS,
                          pg_recon_scanned, r, &r->rop);
    if (st != PG_OK) {
        r->rop = NULL;
        pg_recon_finish(r, st, "Redis unavailable");
    }
}

static void
pg_recon_start(void *arg)
{
    pg_recon_t *r = arg;

    r->host->timer_close(r->kick);
    r->kick = NULL;
    pg_recon_scan(r);
}

pg_status_t
pg_recon_run(pg_recon_t *r, const char *target, int incremental,
             pg_recon_cb cb, void *arg)
{
    pg_recon_tgt_t *x = pg_recon_find(r, target);

    if (x == NULL || (x->conn == NULL && !x->scim)) {
        return PG_ERR_NOT_FOUND;
    }
    if (!x->scim && !(x->conn->caps & PG_CONN_CAP_LIST)) {
        return PG_ERR_INVALID;
    }
    if (r->busy) {
        return PG_ERR_BUSY;
    }
    r->cur = x;
    r->idents = json_array();
    r->byiid = json_object();
    r->accounts = json_array();
    r->kick = r->host->timer_open(r->host->ctx, pg_recon_start, r);
    if (r->idents == NULL || r->byiid == NULL || r->accounts == NULL
        || r->kick == NULL) {
        pg_recon_reset(r);
        return PG_ERR_NOMEM;
    }
    r->busy = 1;
    r->cb = cb;
    r->arg = arg;
    r->started_ms = pg_recon_wall_ms();
    r->scanned_ms = r->listed_ms = r->compared_ms = 0;
    /* SCIM: incremental when asked; whether the target can filter is
     * known after discovery (pg_recon_scim_list) */
    r->full = !(incremental
                && (x->scim || (x->conn->caps & PG_CONN_CAP_INCREMENTAL))
                && x->last_ok_ms > 0);
    r->note = NULL;
    r->since_ms = r->full ? 0 : x->last_ok_ms;
    snprintf(r->run, sizeof(r->run), "%llu",
             (unsigned long long) r->started_ms);
    snprintf(r->cursor, sizeof(r->cursor), "0");
    r->fi = 0;
    r->n_enq = r->n_adopt = r->n_rep = r->n_skip = r->n_fail = 0;
    r->too_many = 0;
    r->host->timer_arm(r->kick, 0);
    return PG_OK;
}
