/*
 * provgate core: typed accessors for configuration JSON (pg_cfg_*).
 *
 * Every accessor reports problems as "<path>.<key>: <reason>" (no file
 * name; pg_config_load() prefixes it) and returns PG_ERR_CONFIG for a bad
 * value, PG_ERR_NOMEM when out of memory. On failure nothing is leaked and
 * *out is left NULL / untouched for scalars.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "provgate/config.h"
#include "internal.h"

static __thread const char *cfg_base_dir;

/* Set the thread's relative-path base (borrowed pointer; NULL clears). */
void
pg_cfg_set_base_dir(const char *dir)
{
    cfg_base_dir = dir;
}

/* "<path>.<key>" into buf, truncated to n bytes (always NUL-terminated). */
void
pg_cfg_join(char *buf, size_t n, const char *path, const char *key)
{
    int r = snprintf(buf, n, "%s.%s", path, key);
    (void)r;
}

/* 1 when s is 1..max bytes of [A-Za-z0-9] or characters of extra. */
int
pg_cfg_word_ok(const char *s, size_t max, const char *extra)
{
    size_t i;

    if (s == NULL || *s == '\0') {
        return 0;
    }
    for (i = 0; s[i] != '\0'; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= max) {
            return 0;
        }
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
            (c >= '0' && c <= '9')) {
            continue;
        }
        if (extra != NULL && strchr(extra, c) != NULL) {
            continue;
        }
        return 0;
    }
    return 1;
}

/* 1 when the n bytes at s contain a C0 control byte, DEL or NUL. */
static int
has_ctl(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            return 1;
        }
    }
    return 0;
}

/*
 * Reject members of obj that are not in allowed (NULL-terminated).
 * obj must be a JSON object ("<path>: must be an object" otherwise).
 * The first unknown member in document order is reported.
 */
pg_status_t
pg_cfg_keys(const json_t *obj, const char *path, const char *const *allowed,
            pg_err_t *err)
{
    const char *key;
    json_t *val;
    size_t i;

    if (!json_is_object(obj)) {
        pg_err_set(err, "%s: must be an object", path);
        return PG_ERR_CONFIG;
    }
    json_object_foreach((json_t *)obj, key, val) {
        int ok = 0;
        (void)val;
        for (i = 0; allowed != NULL && allowed[i] != NULL; i++) {
            if (strcmp(key, allowed[i]) == 0) {
                ok = 1;
                break;
            }
        }
        if (!ok) {
            if (pg_cfg_word_ok(key, 128, "_-.:$")) {
                pg_err_set(err, "%s.%s: unknown field", path, key);
            } else {
                pg_err_set(err, "%s: unknown field with an unprintable or "
                           "overlong name", path);
            }
            return PG_ERR_CONFIG;
        }
    }
    return PG_OK;
}

/* Validate one configuration string value (shared by str/strv/secret). */
static pg_status_t
check_str_value(const json_t *v, const char *where, pg_err_t *err)
{
    size_t n;

    if (!json_is_string(v)) {
        pg_err_set(err, "%s: must be a string", where);
        return PG_ERR_CONFIG;
    }
    n = json_string_length(v);
    if (n == 0) {
        pg_err_set(err, "%s: must not be empty", where);
        return PG_ERR_CONFIG;
    }
    if (n > PG_CFG_MAX_STR) {
        pg_err_set(err, "%s: longer than %u bytes", where, PG_CFG_MAX_STR);
        return PG_ERR_CONFIG;
    }
    if (has_ctl(json_string_value(v), n)) {
        pg_err_set(err, "%s: must not contain control characters", where);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/*
 * String member key of obj. Absent: PG_ERR_CONFIG "missing required field"
 * when required, else *out = strdup(def) (NULL when def is NULL). Present:
 * must be a non-empty string of at most 8 KiB without control bytes.
 * *out is malloc'd, owned by the caller.
 */
pg_status_t
pg_cfg_str(const json_t *obj, const char *path, const char *key, int required,
           const char *def, char **out, pg_err_t *err)
{
    char where[PG_ERR_MSG_MAX];
    const json_t *v = json_object_get(obj, key);
    pg_status_t st;

    *out = NULL;
    pg_cfg_join(where, sizeof(where), path, key);
    if (v == NULL) {
        if (required) {
            pg_err_set(err, "%s: missing required field", where);
            return PG_ERR_CONFIG;
        }
        if (def != NULL) {
            *out = strdup(def);
            if (*out == NULL) {
                return PG_ERR_NOMEM;
            }
        }
        return PG_OK;
    }
    st = check_str_value(v, where, err);
    if (st != PG_OK) {
        return st;
    }
    *out = strdup(json_string_value(v));
    return *out != NULL ? PG_OK : PG_ERR_NOMEM;
}

/*
 * Unsigned integer member in [min, max]; def (not range-checked) when
 * absent. JSON reals, strings and negatives are rejected.
 */
pg_status_t
pg_cfg_uint(const json_t *obj, const char *path, const char *key,
            unsigned def, unsigned min, unsigned max, unsigned *out,
            pg_err_t *err)
{
    const json_t *v = json_object_get(obj, key);
    json_int_t i;

    if (v == NULL) {
        *out = def;
        return PG_OK;
    }
    if (!json_is_integer(v)) {
        pg_err_set(err, "%s.%s: must be an integer", path, key);
        return PG_ERR_CONFIG;
    }
    i = json_integer_value(v);
    if (i < (json_int_t)min || i > (json_int_t)max) {
        pg_err_set(err, "%s.%s: must be between %u and %u", path, key, min,
                   max);
        return PG_ERR_CONFIG;
    }
    *out = (unsigned)i;
    return PG_OK;
}

/* Boolean member (true/false only); def when absent. */
pg_status_t
pg_cfg_bool(const json_t *obj, const char *path, const char *key, int def,
            int *out, pg_err_t *err)
{
    const json_t *v = json_object_get(obj, key);

    if (v == NULL) {
        *out = def;
        return PG_OK;
    }
    if (!json_is_boolean(v)) {
        pg_err_set(err, "%s.%s: must be true or false", path, key);
        return PG_ERR_CONFIG;
    }
    *out = json_is_true(v) ? 1 : 0;
    return PG_OK;
}

/* Free a NULL-terminated string vector (NULL is fine). */
void
pg_strv_free(char **v)
{
    size_t i;

    if (v == NULL) {
        return;
    }
    for (i = 0; v[i] != NULL; i++) {
        free(v[i]);
    }
    free(v);
}

/* Copy a NULL-terminated vector of constant strings. */
static pg_status_t
strv_dup(const char *const *src, char ***out)
{
    size_t n = 0, i;
    char **v;

    while (src[n] != NULL) {
        n++;
    }
    v = calloc(n + 1, sizeof(*v));
    if (v == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        v[i] = strdup(src[i]);
        if (v[i] == NULL) {
            pg_strv_free(v);
            return PG_ERR_NOMEM;
        }
    }
    *out = v;
    return PG_OK;
}

/*
 * Array-of-strings member -> malloc'd NULL-terminated vector (free with
 * pg_strv_free). Absent: a copy of def, or NULL when def is NULL. Each
 * element follows the pg_cfg_str rules; at most 64 elements. An empty
 * array gives an empty vector ({NULL}).
 */
pg_status_t
pg_cfg_strv(const json_t *obj, const char *path, const char *key,
            const char *const *def, char ***out, pg_err_t *err)
{
    char where[PG_ERR_MSG_MAX], el[PG_ERR_MSG_MAX + 32];
    const json_t *v = json_object_get(obj, key);
    size_t n, i;
    char **vec;
    pg_status_t st;

    *out = NULL;
    if (v == NULL) {
        return def != NULL ? strv_dup(def, out) : PG_OK;
    }
    pg_cfg_join(where, sizeof(where), path, key);
    if (!json_is_array(v)) {
        pg_err_set(err, "%s: must be an array of strings", where);
        return PG_ERR_CONFIG;
    }
    n = json_array_size(v);
    if (n > PG_CFG_MAX_LIST) {
        pg_err_set(err, "%s: more than %u entries", where, PG_CFG_MAX_LIST);
        return PG_ERR_CONFIG;
    }
    for (i = 0; i < n; i++) {
        int r = snprintf(el, sizeof(el), "%s[%zu]", where, i);
        (void)r;
        st = check_str_value(json_array_get(v, i), el, err);
        if (st != PG_OK) {
            return st;
        }
    }
    vec = calloc(n + 1, sizeof(*vec));
    if (vec == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        vec[i] = strdup(json_string_value(json_array_get(v, i)));
        if (vec[i] == NULL) {
            pg_strv_free(vec);
            return PG_ERR_NOMEM;
        }
    }
    *out = vec;
    return PG_OK;
}

/* Resolve p against the thread's base directory (see internal.h). */
pg_status_t
pg_cfg_resolve(const char *p, char **out)
{
    size_t bl, pl;
    char *r;

    *out = NULL;
    pl = strlen(p);
    if (p[0] == '/' || cfg_base_dir == NULL) {
        if (pl >= PATH_MAX) {
            return PG_ERR_TOO_LARGE;
        }
        *out = strdup(p);
        return *out != NULL ? PG_OK : PG_ERR_NOMEM;
    }
    bl = strlen(cfg_base_dir);
    if (bl + 1 + pl >= PATH_MAX) {
        return PG_ERR_TOO_LARGE;
    }
    r = malloc(bl + 1 + pl + 1);
    if (r == NULL) {
        return PG_ERR_NOMEM;
    }
    memcpy(r, cfg_base_dir, bl);
    r[bl] = '/';
    memcpy(r + bl + 1, p, pl);
    r[bl + 1 + pl] = '\0';
    *out = r;
    return PG_OK;
}

/* File path member: a pg_cfg_str resolved against the base directory. */
pg_status_t
pg_cfg_path(const json_t *obj, const char *path, const char *key,
            int required, char **out, pg_err_t *err)
{
    char *raw = NULL;
    pg_status_t st;

    *out = NULL;
    st = pg_cfg_str(obj, path, key, required, NULL, &raw, err);
    if (st != PG_OK || raw == NULL) {
        return st;
    }
    st = pg_cfg_resolve(raw, out);
    if (st == PG_ERR_TOO_LARGE) {
        pg_err_set(err, "%s.%s: path too long", path, key);
        st = PG_ERR_CONFIG;
    }
    free(raw);
    return st;
}

/*
 * Secret from "<key>" (inline) or "<key>_file" (a file of at most 64 KiB,
 * trailing CR/LF trimmed; relative paths resolved against the
 * configuration directory). Setting both is an error; setting neither is
 * an error when required, else *out = NULL. The secret must be non-empty
 * and free of control bytes (it ends up in HTTP headers). *out is
 * malloc'd; the caller should wipe it before freeing.
 */
pg_status_t
pg_cfg_secret(const json_t *obj, const char *path, const char *key,
              int required, char **out, pg_err_t *err)
{
    char fkey[128], where[PG_ERR_MSG_MAX], *file = NULL, *data = NULL;
    pg_err_t ferr;
    size_t len = 0;
    int r;
    pg_status_t st;
    const json_t *inl, *fv;

    *out = NULL;
    r = snprintf(fkey, sizeof(fkey), "%s_file", key);
    if (r < 0 || (size_t)r >= sizeof(fkey)) {
        return PG_ERR_INTERNAL;
    }
    inl = json_object_get(obj, key);
    fv = json_object_get(obj, fkey);
    if (inl != NULL && fv != NULL) {
        pg_err_set(err, "%s.%s: set only one of \"%s\" and \"%s\"", path,
                   key, key, fkey);
        return PG_ERR_CONFIG;
    }
    if (inl == NULL && fv == NULL) {
        if (required) {
            pg_err_set(err, "%s.%s: missing required field (or \"%s\")",
                       path, key, fkey);
            return PG_ERR_CONFIG;
        }
        return PG_OK;
    }
    if (inl != NULL) {
        return pg_cfg_str(obj, path, key, 1, NULL, out, err);
    }
    st = pg_cfg_path(obj, path, fkey, 1, &file, err);
    if (st != PG_OK) {
        return st;
    }
    pg_cfg_join(where, sizeof(where), path, fkey);
    st = pg_read_file(file, PG_CFG_MAX_SECRET, 1, &data, &len, &ferr);
    free(file);
    if (st == PG_ERR_NOMEM) {
        return st;
    }
    if (st != PG_OK) {
        pg_err_set(err, "%s: %s", where, ferr.msg);
        return PG_ERR_CONFIG;
    }
    if (len == 0 || has_ctl(data, len)) {
        pg_err_set(err, "%s: %s", where, len == 0 ? "secret file is empty"
                   : "secret file contains control characters or NUL bytes");
        explicit_bzero(data, len);
        free(data);
        return PG_ERR_CONFIG;
    }
    *out = data;
    return PG_OK;
}

/* Parse an optional decimal port; 1 on success. */
static int
port_ok(const char *s, size_t n)
{
    unsigned long v = 0;
    size_t i;

    if (n == 0 || n > 5) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    return v >= 1 && v <= 65535;
}

/* See internal.h. */
pg_status_t
pg_cfg_url_check(const char *url, unsigned flags, pg_err_t *err)
{
    size_t n, i, skip, alen;
    const char *auth, *end, *host_end;

    n = strnlen(url, PG_CFG_MAX_URL + 1);
    if (n > PG_CFG_MAX_URL) {
        pg_err_set(err, "URL longer than %u bytes", PG_CFG_MAX_URL);
        return PG_ERR_CONFIG;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c >= 0x7f) {
            pg_err_set(err, "URL must not contain spaces, control or "
                       "non-ASCII characters");
            return PG_ERR_CONFIG;
        }
    }
    if (strncasecmp(url, "https://", 8) == 0) {
        skip = 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        skip = 7;
    } else {
        pg_err_set(err, "must be an absolute http:// or https:// URL");
        return PG_ERR_CONFIG;
    }
    auth = url + skip;
    alen = strcspn(auth, "/?#");
    end = auth + alen;
    if (alen == 0) {
        pg_err_set(err, "URL has no host");
        return PG_ERR_CONFIG;
    }
    if (memchr(auth, '@', alen) != NULL) {
        pg_err_set(err, "URL must not contain credentials (user@)");
        return PG_ERR_CONFIG;
    }
    if (auth[0] == '[') {
        const char *rb = memchr(auth, ']', alen);
        if (rb == NULL || rb == auth + 1) {
            pg_err_set(err, "URL has a malformed IPv6 host");
            return PG_ERR_CONFIG;
        }
        host_end = rb + 1;
        if (host_end != end && *host_end != ':') {
            pg_err_set(err, "URL has a malformed IPv6 host");
            return PG_ERR_CONFIG;
        }
    } else {
        const char *colon = memchr(auth, ':', alen);
        host_end = colon != NULL ? colon : end;
        if (host_end == auth) {
            pg_err_set(err, "URL has no host");
            return PG_ERR_CONFIG;
        }
    }
    if (host_end != end &&
        !port_ok(host_end + 1, (size_t)(end - (host_end + 1)))) {
        pg_err_set(err, "URL has an invalid port");
        return PG_ERR_CONFIG;
    }
    if ((flags & PG_URL_NO_QUERY) && strchr(url, '?') != NULL) {
        pg_err_set(err, "URL must not contain a query");
        return PG_ERR_CONFIG;
    }
    if ((flags & PG_URL_NO_FRAGMENT) && strchr(url, '#') != NULL) {
        pg_err_set(err, "URL must not contain a fragment");
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}
