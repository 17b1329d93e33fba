/*
 * provgate core: "${attr}" templates for target attribute mappings.
 *
 * Syntax (checked identically by pg_template_check and pg_template_render):
 *   ${name}  placeholder; name is 1..128 of [A-Za-z0-9_.-]
 *   $$       a literal '$'
 *   any other '$' (lone, trailing, "${" without "}") is a syntax error, so
 *   a typo like "$username" is caught at configuration load.
 * Templates and rendered output are capped at PG_TPL_MAX bytes.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include "provgate/util.h"

#define PG_TPL_MAX 4096u      /* max template length and max output length */
#define PG_TPL_NAME_MAX 128u  /* max placeholder name length */

/* 1 for the placeholder name characters [A-Za-z0-9_.-]. */
static int
tpl_name_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

/*
 * Scan the placeholder starting at tpl[i] == '$' and tpl[i+1] == '{'.
 * On success *name_off and *name_len locate the name and *next is the index
 * after '}'. On error err gets a reason with the byte offset of the '$'.
 */
static pg_status_t
tpl_scan_placeholder(const char *tpl, size_t len, size_t i, size_t *name_off,
                     size_t *name_len, size_t *next, pg_err_t *err)
{
    size_t j = i + 2;

    while (j < len && tpl[j] != '}') {
        if (!tpl_name_char((unsigned char)tpl[j])) {
            if (tpl[j] == '$' && j + 1 < len && tpl[j + 1] == '{') {
                break; /* "${a${b}" reads as unterminated */
            }
            pg_err_set(err, "invalid character in placeholder name at "
                       "offset %zu (allowed: A-Z a-z 0-9 _ . -)", j);
            return PG_ERR_INVALID;
        }
        j++;
    }
    if (j >= len || tpl[j] != '}') {
        pg_err_set(err, "unterminated \"${\" at offset %zu", i);
        return PG_ERR_INVALID;
    }
    if (j == i + 2) {
        pg_err_set(err, "empty placeholder \"${}\" at offset %zu", i);
        return PG_ERR_INVALID;
    }
    if (j - (i + 2) > PG_TPL_NAME_MAX) {
        pg_err_set(err, "placeholder name longer than %u bytes at offset %zu",
                   PG_TPL_NAME_MAX, i);
        return PG_ERR_INVALID;
    }
    *name_off = i + 2;
    *name_len = j - (i + 2);
    *next = j + 1;
    return PG_OK;
}

/* Common length / NULL checks for both entry points. */
static pg_status_t
tpl_precheck(const char *tpl, size_t *len, pg_err_t *err)
{
    if (tpl == NULL) {
        pg_err_set(err, "template is NULL");
        return PG_ERR_INVALID;
    }
    *len = strnlen(tpl, PG_TPL_MAX + 1);
    if (*len > PG_TPL_MAX) {
        pg_err_set(err, "template longer than %u bytes", PG_TPL_MAX);
        return PG_ERR_TOO_LARGE;
    }
    return PG_OK;
}

/*
 * Validate template syntax only. PG_OK, or PG_ERR_INVALID / PG_ERR_TOO_LARGE
 * with the reason (and byte offset) in err. Nothing is allocated.
 */
pg_status_t
pg_template_check(const char *tpl, pg_err_t *err)
{
    size_t len, i = 0, off, nlen, next;
    pg_status_t st;

    st = tpl_precheck(tpl, &len, err);
    if (st != PG_OK) {
        return st;
    }
    while (i < len) {
        if (tpl[i] != '$') {
            i++;
            continue;
        }
        if (i + 1 < len && tpl[i + 1] == '$') {
            i += 2;
            continue;
        }
        if (i + 1 < len && tpl[i + 1] == '{') {
            st = tpl_scan_placeholder(tpl, len, i, &off, &nlen, &next, err);
            if (st != PG_OK) {
                return st;
            }
            i = next;
            continue;
        }
        pg_err_set(err, "'$' at offset %zu must start \"${name}\" or be "
                   "doubled (\"$$\")", i);
        return PG_ERR_INVALID;
    }
    return PG_OK;
}

/* Bounded output buffer for rendering. */
typedef struct tpl_out {
    char buf[PG_TPL_MAX + 1];
    size_t len;
} tpl_out_t;

/* Append n bytes, or PG_ERR_TOO_LARGE past PG_TPL_MAX. */
static pg_status_t
tpl_put(tpl_out_t *o, const char *s, size_t n, pg_err_t *err)
{
    if (n > PG_TPL_MAX - o->len) {
        pg_err_set(err, "rendered value longer than %u bytes", PG_TPL_MAX);
        return PG_ERR_TOO_LARGE;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return PG_OK;
}

/* Append the text of one attribute value (string as is, number/bool as JSON). */
static pg_status_t
tpl_put_value(tpl_out_t *o, const json_t *attrs, const char *name, size_t nlen,
              pg_err_t *err)
{
    char key[PG_TPL_NAME_MAX + 1];
    const json_t *v;
    pg_status_t st;

    memcpy(key, name, nlen);
    key[nlen] = '\0';
    v = json_is_object(attrs) ? json_object_get(attrs, key) : NULL;
    if (v == NULL || json_is_null(v)) {
        pg_err_set(err, "attribute \"%s\" is missing", key);
        return PG_ERR_NOT_FOUND;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        if (memchr(s, '\0', n) != NULL) {
            pg_err_set(err, "attribute \"%s\" contains a NUL byte", key);
            return PG_ERR_INVALID;
        }
        return tpl_put(o, s, n, err);
    }
    if (json_is_number(v) || json_is_boolean(v)) {
        char *txt = json_dumps(v, JSON_ENCODE_ANY);
        if (txt == NULL) {
            return PG_ERR_NOMEM;
        }
        st = tpl_put(o, txt, strlen(txt), err);
        free(txt);
        return st;
    }
    pg_err_set(err, "attribute \"%s\" is not a scalar", key);
    return PG_ERR_NOT_FOUND;
}

/*
 * Render tpl against attrs (a JSON object; NULL means no attributes).
 *
 * On success *out is a malloc'd NUL-terminated string owned by the caller,
 * at most 4096 bytes plus the NUL. Failures leave *out NULL:
 *  PG_ERR_INVALID    bad template syntax, or a string value with a NUL byte
 *  PG_ERR_NOT_FOUND  missing/null attribute or array/object value
 *                    (err names the attribute)
 *  PG_ERR_TOO_LARGE  template or output over 4096 bytes
 *  PG_ERR_NOMEM
 */
pg_status_t
pg_template_render(const char *tpl, const json_t *attrs, char **out,
                   pg_err_t *err)
{
    tpl_out_t *o;
    size_t len, i = 0, off, nlen, next;
    pg_status_t st;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    st = tpl_precheck(tpl, &len, err);
    if (st != PG_OK) {
        return st;
    }
    o = malloc(sizeof(*o));
    if (o == NULL) {
        return PG_ERR_NOMEM;
    }
    o->len = 0;
    while (i < len) {
        const char *dollar = memchr(tpl + i, '$', len - i);
        size_t run = dollar != NULL ? (size_t)(dollar - (tpl + i)) : len - i;

        st = tpl_put(o, tpl + i, run, err);
        if (st != PG_OK) {
            goto fail;
        }
        i += run;
        if (i >= len) {
            break;
        }
        /* tpl[i] == '$' */
        if (i + 1 < len && tpl[i + 1] == '$') {
            st = tpl_put(o, "$", 1, err);
            if (st != PG_OK) {
                goto fail;
            }
            i += 2;
            continue;
        }
        if (i + 1 < len && tpl[i + 1] == '{') {
            st = tpl_scan_placeholder(tpl, len, i, &off, &nlen, &next, err);
            if (st != PG_OK) {
                goto fail;
            }
            st = tpl_put_value(o, attrs, tpl + off, nlen, err);
            if (st != PG_OK) {
                goto fail;
            }
            i = next;
            continue;
        }
        pg_err_set(err, "'$' at offset %zu must start \"${name}\" or be "
                   "doubled (\"$$\")", i);
        st = PG_ERR_INVALID;
        goto fail;
    }
    *out = malloc(o->len + 1);
    if (*out == NULL) {
        st = PG_ERR_NOMEM;
        goto fail;
    }
    memcpy(*out, o->buf, o->len);
    (*out)[o->len] = '\0';
    free(o);
    return PG_OK;

fail:
    free(o);
    return st;
}

int64_t
pg_field_int(const json_t *fields, const char *name, const char *target)
{
    char key[320];
    const char *v;
    char *end;
    long long n;

    if (target != NULL) {
        if ((size_t) snprintf(key, sizeof(key), "%s:%s", name, target)
            >= sizeof(key)) {
            return -1;
        }
        name = key;
    }
    v = json_string_value(json_object_get(fields, name));
    if (v == NULL || v[0] < '0' || v[0] > '9') {
        return -1;
    }
    errno = 0;
    n = strtoll(v, &end, 10);
    if (errno != 0 || *end != '\0' || n < 0) {
        return -1;
    }
    return (int64_t) n;
}
