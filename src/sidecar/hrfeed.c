/*
 * provgate core: HR export (CSV) parsing and change detection against the
 * last import. Contract: include/provgate/hrfeed.h. Pure: no I/O, no clock.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "provgate/hrfeed.h"
#include "provgate/config.h"

#define HR_MAX_KEY 256u          /* bytes of a person key */
#define HR_MAX_CFG_COLUMNS 512u  /* names in "columns" */

/* ======================================================================
 * configuration
 * ==================================================================== */

/* Free everything cfg owns, then cfg. NULL is a no-op. */
void
pg_hrfeed_cfg_free(pg_hrfeed_cfg_t *cfg)
{
    size_t i;

    if (cfg == NULL) {
        return;
    }
    pg_strv_free(cfg->columns);
    free(cfg->key_column);
    for (i = 0; i < cfg->nattrs; i++) {
        free(cfg->attrs[i].column);
        free(cfg->attrs[i].attr);
    }
    free(cfg->attrs);
    free(cfg->termination_column);
    pg_strv_free(cfg->required_columns);
    free(cfg);
}

/* 1 when s (n bytes) is a usable column name: 1..256 bytes, no control
 * byte (so it prints safely in messages). */
static int
hr_column_name_ok(const char *s, size_t n)
{
    size_t i;

    if (n == 0 || n > 256) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* 1 when s (n bytes) is an attribute name: 1..128 of [A-Za-z0-9_.-]. */
static int
hr_attr_name_ok(const char *s, size_t n)
{
    size_t i;

    if (n == 0 || n > 128) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

/* A one-byte separator member ("delimiter"/"quote"): *out gets the byte.
 * Allowed: printable ASCII or TAB; never CR, LF or NUL. */
static pg_status_t
cfg_char(const json_t *obj, const char *path, const char *key, char def,
         char *out, pg_err_t *err)
{
    const json_t *v = json_object_get(obj, key);
    unsigned char c;

    if (v == NULL) {
        *out = def;
        return PG_OK;
    }
    if (!json_is_string(v) || json_string_length(v) != 1) {
        pg_err_set(err, "%s.%s: must be a string of exactly one character",
                   path, key);
        return PG_ERR_CONFIG;
    }
    c = (unsigned char)json_string_value(v)[0];
    if (c != '\t' && (c < 0x20 || c >= 0x7f)) {
        pg_err_set(err, "%s.%s: must be printable ASCII or a tab", path, key);
        return PG_ERR_CONFIG;
    }
    *out = (char)c;
    return PG_OK;
}

/* 1 when name is in the NULL-terminated vector v. */
static int
strv_has(char *const *v, const char *name)
{
    size_t i;

    for (i = 0; v != NULL && v[i] != NULL; i++) {
        if (strcmp(v[i], name) == 0) {
            return 1;
        }
    }
    return 0;
}

/* qsort that accepts an empty (NULL) array. */
static void
hr_sort(void *base, size_t n, size_t sz,
        int (*cmp)(const void *, const void *))
{
    if (n > 1) {
        qsort(base, n, sz, cmp);
    }
}

static int
colmap_cmp(const void *a, const void *b)
{
    return strcmp(((const pg_hrfeed_colmap_t *)a)->attr,
                  ((const pg_hrfeed_colmap_t *)b)->attr);
}

/* Parse "attributes": {"column": "attr"} into cfg->attrs (sorted). */
static pg_status_t
cfg_attrs(const json_t *obj, const char *path, pg_hrfeed_cfg_t *cfg,
          pg_err_t *err)
{
    const json_t *m = json_object_get(obj, "attributes");
    const char *col;
    json_t *v;
    size_t i, n;

    if (m == NULL) {
        pg_err_set(err, "%s.attributes: missing required field", path);
        return PG_ERR_CONFIG;
    }
    if (!json_is_object(m) || json_object_size(m) == 0) {
        pg_err_set(err, "%s.attributes: must be a non-empty object "
                   "{\"column\": \"attribute\"}", path);
        return PG_ERR_CONFIG;
    }
    n = json_object_size(m);
    if (n > PG_HRFEED_MAX_COLUMNS) {
        pg_err_set(err, "%s.attributes: more than %u entries", path,
                   PG_HRFEED_MAX_COLUMNS);
        return PG_ERR_CONFIG;
    }
    cfg->attrs = calloc(n, sizeof(*cfg->attrs));
    if (cfg->attrs == NULL) {
        return PG_ERR_NOMEM;
    }
    json_object_foreach((json_t *)m, col, v) {
        const char *a;
        if (!hr_column_name_ok(col, strlen(col))) {
            pg_err_set(err, "%s.attributes: a column name is empty, too "
                       "long or has control characters", path);
            return PG_ERR_CONFIG;
        }
        if (!json_is_string(v)) {
            pg_err_set(err, "%s.attributes.%s: must be a string", path, col);
            return PG_ERR_CONFIG;
        }
        a = json_string_value(v);
        if (!hr_attr_name_ok(a, json_string_length(v))) {
            pg_err_set(err, "%s.attributes.%s: attribute name must be 1..128 "
                       "of [A-Za-z0-9_.-]", path, col);
            return PG_ERR_CONFIG;
        }
        cfg->attrs[cfg->nattrs].column = strdup(col);
        cfg->attrs[cfg->nattrs].attr = strdup(a);
        cfg->nattrs++;
        if (cfg->attrs[cfg->nattrs - 1].column == NULL ||
            cfg->attrs[cfg->nattrs - 1].attr == NULL) {
            return PG_ERR_NOMEM;
        }
    }
    hr_sort(cfg->attrs, cfg->nattrs, sizeof(*cfg->attrs), colmap_cmp);
    for (i = 1; i < cfg->nattrs; i++) {
        if (strcmp(cfg->attrs[i - 1].attr, cfg->attrs[i].attr) == 0) {
            pg_err_set(err, "%s.attributes: attribute \"%s\" is mapped from "
                       "two columns", path, cfg->attrs[i].attr);
            return PG_ERR_CONFIG;
        }
    }
    return PG_OK;
}

/* Validate a column-name vector member (all names usable, no repeats). */
static pg_status_t
cfg_colv(const json_t *obj, const char *path, const char *key, char ***out,
         pg_err_t *err)
{
    pg_status_t st;
    size_t i, j;

    st = pg_cfg_strv(obj, path, key, NULL, out, err);
    if (st != PG_OK || *out == NULL) {
        return st;
    }
    for (i = 0; (*out)[i] != NULL; i++) {
        if (!hr_column_name_ok((*out)[i], strlen((*out)[i]))) {
            pg_err_set(err, "%s.%s[%zu]: column name longer than 256 bytes",
                       path, key, i);
            return PG_ERR_CONFIG;
        }
        for (j = 0; j < i; j++) {
            if (strcmp((*out)[i], (*out)[j]) == 0) {
                pg_err_set(err, "%s.%s[%zu]: column \"%s\" listed twice",
                           path, key, i, (*out)[i]);
                return PG_ERR_CONFIG;
            }
        }
    }
    if (i == 0) {
        pg_err_set(err, "%s.%s: must not be empty", path, key);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* With "header": false every referenced column must be in "columns". */
static pg_status_t
cfg_check_refs(const pg_hrfeed_cfg_t *cfg, const char *path, pg_err_t *err)
{
    size_t i;

    if (cfg->columns == NULL) {
        return PG_OK;
    }
    if (!strv_has(cfg->columns, cfg->key_column)) {
        pg_err_set(err, "%s.key_column: \"%s\" is not in columns", path,
                   cfg->key_column);
        return PG_ERR_CONFIG;
    }
    if (cfg->termination_column != NULL &&
        !strv_has(cfg->columns, cfg->termination_column)) {
        pg_err_set(err, "%s.termination_column: \"%s\" is not in columns",
                   path, cfg->termination_column);
        return PG_ERR_CONFIG;
    }
    for (i = 0; i < cfg->nattrs; i++) {
        if (!strv_has(cfg->columns, cfg->attrs[i].column)) {
            pg_err_set(err, "%s.attributes.%s: column is not in columns",
                       path, cfg->attrs[i].column);
            return PG_ERR_CONFIG;
        }
    }
    for (i = 0; cfg->required_columns != NULL &&
                cfg->required_columns[i] != NULL; i++) {
        if (!strv_has(cfg->columns, cfg->required_columns[i])) {
            pg_err_set(err, "%s.required_columns[%zu]: \"%s\" is not in "
                       "columns", path, i, cfg->required_columns[i]);
            return PG_ERR_CONFIG;
        }
    }
    return PG_OK;
}

/*
 * Parse the feed object (contract in hrfeed.h). Everything is validated
 * before *out is set; on failure nothing leaks and *out is NULL.
 */
pg_status_t
pg_hrfeed_cfg_parse(const json_t *obj, const char *path,
                    pg_hrfeed_cfg_t **out, pg_err_t *err)
{
    static const char *const allowed[] = {
        "delimiter", "quote", "header", "columns", "key_column",
        "attributes", "termination_column", "date_format",
        "required_columns", "max_rows", "max_file_bytes",
        "max_errors_reported", "max_malformed_pct", "max_leave_pct", NULL};
    pg_hrfeed_cfg_t *cfg;
    char *fmt = NULL;
    pg_status_t st;

    *out = NULL;
    st = pg_cfg_keys(obj, path, allowed, err);
    if (st != PG_OK) {
        return st;
    }
    cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL) {
        return PG_ERR_NOMEM;
    }
#define HR_TRY(x) do { st = (x); if (st != PG_OK) goto fail; } while (0)
    HR_TRY(cfg_char(obj, path, "delimiter", ',', &cfg->delimiter, err));
    HR_TRY(cfg_char(obj, path, "quote", '"', &cfg->quote, err));
    if (cfg->delimiter == cfg->quote) {
        pg_err_set(err, "%s.quote: must differ from the delimiter", path);
        st = PG_ERR_CONFIG;
        goto fail;
    }
    HR_TRY(pg_cfg_bool(obj, path, "header", 1, &cfg->header, err));
    HR_TRY(cfg_colv(obj, path, "columns", &cfg->columns, err));
    if (cfg->header && cfg->columns != NULL) {
        pg_err_set(err, "%s.columns: only allowed when header is false",
                   path);
        st = PG_ERR_CONFIG;
        goto fail;
    }
    if (!cfg->header && cfg->columns == NULL) {
        pg_err_set(err, "%s.columns: required when header is false", path);
        st = PG_ERR_CONFIG;
        goto fail;
    }
    HR_TRY(pg_cfg_str(obj, path, "key_column", 1, NULL, &cfg->key_column,
                      err));
    HR_TRY(cfg_attrs(obj, path, cfg, err));
    HR_TRY(pg_cfg_str(obj, path, "termination_column", 0, NULL,
                      &cfg->termination_column, err));
    HR_TRY(pg_cfg_str(obj, path, "date_format", 0, "YYYY-MM-DD", &fmt, err));
    if (strcmp(fmt, "YYYY-MM-DD") != 0) {
        pg_err_set(err, "%s.date_format: only \"YYYY-MM-DD\" is supported",
                   path);
        st = PG_ERR_CONFIG;
        goto fail;
    }
    HR_TRY(cfg_colv(obj, path, "required_columns", &cfg->required_columns,
                    err));
    HR_TRY(pg_cfg_uint(obj, path, "max_rows", 200000, 1,
                       PG_HRFEED_MAX_ROWS_LIMIT, &cfg->max_rows, err));
    HR_TRY(pg_cfg_uint(obj, path, "max_file_bytes", 64u * 1024u * 1024u, 1,
                       PG_HRFEED_MAX_FILE_LIMIT, &cfg->max_file_bytes, err));
    HR_TRY(pg_cfg_uint(obj, path, "max_errors_reported", 100, 1, 100000,
                       &cfg->max_errors_reported, err));
    HR_TRY(pg_cfg_uint(obj, path, "max_malformed_pct", 5, 0, 100,
                       &cfg->max_malformed_pct, err));
    HR_TRY(pg_cfg_uint(obj, path, "max_leave_pct", 10, 0, 100,
                       &cfg->max_leave_pct, err));
    HR_TRY(cfg_check_refs(cfg, path, err));
#undef HR_TRY
    free(fmt);
    *out = cfg;
    return PG_OK;
fail:
    free(fmt);
    pg_hrfeed_cfg_free(cfg);
    return st;
}

/* ======================================================================
 * dates
 * ==================================================================== */

/* Strict "YYYY-MM-DD" -> YYYYMMDD (contract in hrfeed.h). */
pg_status_t
pg_hrfeed_date(const char *s, size_t n, uint32_t *out)
{
    static const unsigned mdays[12] = {31, 28, 31, 30, 31, 30,
                                       31, 31, 30, 31, 30, 31};
    unsigned y = 0, m, d, dim;
    size_t i;

    *out = 0;
    if (s == NULL || n != 10 || s[4] != '-' || s[7] != '-') {
        return PG_ERR_INVALID;
    }
    for (i = 0; i < 10; i++) {
        if (i == 4 || i == 7) {
            continue;
        }
        if (s[i] < '0' || s[i] > '9') {
            return PG_ERR_INVALID;
        }
    }
    for (i = 0; i < 4; i++) {
        y = y * 10 + (unsigned)(s[i] - '0');
    }
    m = (unsigned)(s[5] - '0') * 10 + (unsigned)(s[6] - '0');
    d = (unsigned)(s[8] - '0') * 10 + (unsigned)(s[9] - '0');
    if (y < 1900 || m < 1 || m > 12 || d < 1) {
        return PG_ERR_INVALID;
    }
    dim = mdays[m - 1];
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) {
        dim = 29;
    }
    if (d > dim) {
        return PG_ERR_INVALID;
    }
    *out = (uint32_t)(y * 10000u + m * 100u + d);
    return PG_OK;
}

/* ======================================================================
 * CSV records
 * ==================================================================== */

/* One field of the current record: bytes [off, off+len) of rec->buf. */
typedef struct hr_field {
    size_t off;
    size_t len;
} hr_field_t;

/* The record being read; buffers are reused from record to record. */
typedef struct hr_rec {
    char *buf;                /* unescaped field bytes */
    size_t blen, bcap;
    hr_field_t *f;
    size_t nf, fcap;
    unsigned long line;       /* line where it starts */
    char reason[PG_HRFEED_REASON_MAX]; /* first syntax error, "" if none */
} hr_rec_t;

typedef struct hr_reader {
    const char *s;
    size_t len, pos;
    unsigned long line;       /* current physical line */
    char delim, quote;
} hr_reader_t;

/* Append byte c to the current field (dropped past PG_HRFEED_MAX_FIELD;
 * the caller records the error). */
static pg_status_t
rec_put(hr_rec_t *r, size_t fstart, char c)
{
    if (r->blen - fstart >= PG_HRFEED_MAX_FIELD) {
        if (r->reason[0] == '\0') {
            snprintf(r->reason, sizeof(r->reason),
                     "field %zu longer than %u bytes", r->nf + 1,
                     PG_HRFEED_MAX_FIELD);
        }
        return PG_OK;
    }
    if (r->blen == r->bcap) {
        size_t nc = r->bcap ? r->bcap * 2 : 256;
        char *nb = realloc(r->buf, nc);
        if (nb == NULL) {
            return PG_ERR_NOMEM;
        }
        r->buf = nb;
        r->bcap = nc;
    }
    r->buf[r->blen++] = c;
    return PG_OK;
}

/* Close the field that started at fstart. Fields past the column limit
 * are counted but not stored. */
static pg_status_t
rec_end_field(hr_rec_t *r, size_t fstart)
{
    if (r->nf >= PG_HRFEED_MAX_COLUMNS) {
        if (r->reason[0] == '\0') {
            snprintf(r->reason, sizeof(r->reason),
                     "more than %u fields", PG_HRFEED_MAX_COLUMNS);
        }
        r->blen = fstart;
        r->nf++;
        return PG_OK;
    }
    if (r->nf == r->fcap) {
        size_t nc = r->fcap ? r->fcap * 2 : 16;
        hr_field_t *nf = realloc(r->f, nc * sizeof(*nf));
        if (nf == NULL) {
            return PG_ERR_NOMEM;
        }
        r->f = nf;
        r->fcap = nc;
    }
    r->f[r->nf].off = fstart;
    r->f[r->nf].len = r->blen - fstart;
    r->nf++;
    return PG_OK;
}

/* Skip to just after the next LF (or to the end): recovery after an error
 * in the middle of a record. */
static void
rd_skip_line(hr_reader_t *rd)
{
    while (rd->pos < rd->len) {
        if (rd->s[rd->pos++] == '\n') {
            rd->line++;
            return;
        }
    }
}

/* 1 when the reader is at a record end (LF or CRLF), consuming it. */
static int
rd_eol(hr_reader_t *rd)
{
    if (rd->pos < rd->len && rd->s[rd->pos] == '\n') {
        rd->pos++;
        rd->line++;
        return 1;
    }
    if (rd->pos + 1 < rd->len && rd->s[rd->pos] == '\r' &&
        rd->s[rd->pos + 1] == '\n') {
        rd->pos += 2;
        rd->line++;
        return 1;
    }
    return 0;
}

/*
 * Read the next non-empty record into r. *got is 0 at the end of input.
 * Syntax errors are left in r->reason (the record is still returned so the
 * caller can count and report it). Only PG_ERR_NOMEM fails.
 */
static pg_status_t
rd_next(hr_reader_t *rd, hr_rec_t *r, int *got)
{
    pg_status_t st;

    *got = 0;
    while (rd->pos < rd->len && rd_eol(rd)) {
        /* skip empty lines */
    }
    if (rd->pos >= rd->len) {
        return PG_OK;
    }
    if (r->buf == NULL) {      /* never NULL: fields point into it */
        r->buf = malloc(256);
        if (r->buf == NULL) {
            return PG_ERR_NOMEM;
        }
        r->bcap = 256;
    }
    *got = 1;
    r->blen = 0;
    r->nf = 0;
    r->reason[0] = '\0';
    r->line = rd->line;
    for (;;) {
        size_t fstart = r->blen;
        if (rd->pos < rd->len && rd->s[rd->pos] == rd->quote) {
            int closed = 0;
            rd->pos++;
            while (rd->pos < rd->len) {
                char c = rd->s[rd->pos];
                if (c == rd->quote) {
                    if (rd->pos + 1 < rd->len &&
                        rd->s[rd->pos + 1] == rd->quote) {
                        rd->pos += 2;
                    } else {
                        rd->pos++;
                        closed = 1;
                        break;
                    }
                } else {
                    rd->pos++;
                    if (c == '\n') {
                        rd->line++;
                    }
                }
                st = rec_put(r, fstart, c);
                if (st != PG_OK) {
                    return st;
                }
            }
            if (!closed) {
                snprintf(r->reason, sizeof(r->reason),
                         "unterminated quoted field %zu", r->nf + 1);
                return rec_end_field(r, fstart);
            }
            if (rd->pos < rd->len && rd->s[rd->pos] != rd->delim &&
                rd->s[rd->pos] != '\n' &&
                !(rd->s[rd->pos] == '\r' && rd->pos + 1 < rd->len &&
                  rd->s[rd->pos + 1] == '\n')) {
                if (r->reason[0] == '\0') {
                    snprintf(r->reason, sizeof(r->reason),
                             "text after the closing quote of field %zu",
                             r->nf + 1);
                }
                st = rec_end_field(r, fstart);
                rd_skip_line(rd);
                return st;
            }
        } else {
            while (rd->pos < rd->len) {
                char c = rd->s[rd->pos];
                if (c == rd->delim || c == '\n' ||
                    (c == '\r' && rd->pos + 1 < rd->len &&
                     rd->s[rd->pos + 1] == '\n')) {
                    break;
                }
                if (c == rd->quote) {
                    if (r->reason[0] == '\0') {
                        snprintf(r->reason, sizeof(r->reason),
                                 "quote character inside unquoted field %zu",
                                 r->nf + 1);
                    }
                    st = rec_end_field(r, fstart);
                    rd_skip_line(rd);
                    return st;
                }
                st = rec_put(r, fstart, c);
                if (st != PG_OK) {
                    return st;
                }
                rd->pos++;
            }
        }
        st = rec_end_field(r, fstart);
        if (st != PG_OK) {
            return st;
        }
        if (rd->pos >= rd->len || rd_eol(rd)) {
            return PG_OK;
        }
        /* at a delimiter: another field follows (maybe empty) */
        rd->pos++;
    }
}

static void
rec_free(hr_rec_t *r)
{
    free(r->buf);
    free(r->f);
}

/* ======================================================================
 * records -> rows
 * ==================================================================== */

/* 1 when s[0..n) is valid UTF-8 (no overlong forms, no surrogates, at
 * most U+10FFFF) without NUL or other C0 control bytes except TAB, CR
 * and LF when allow_space_ctl is set. */
static int
utf8_ok(const char *s, size_t n, int allow_space_ctl)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < n) {
        unsigned c = p[i];
        size_t k, need;
        unsigned cp, min;
        if (c < 0x80) {
            if (c == 0x7f || (c < 0x20 && !(allow_space_ctl &&
                                             (c == '\t' || c == '\r' ||
                                              c == '\n')))) {
                return 0;
            }
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1; cp = c & 0x1f; min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2; cp = c & 0x0f; min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3; cp = c & 0x07; min = 0x10000;
        } else {
            return 0;
        }
        if (n - i <= need) {
            return 0;
        }
        for (k = 1; k <= need; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return 0;
        }
        i += need + 1;
    }
    return 1;
}

/* Copy at most 48 bytes of s for a message, replacing anything outside
 * printable ASCII (and '"') with '?'; "..." marks a cut. */
static void
printable(const char *s, size_t n, char *out, size_t outsz)
{
    size_t i, o = 0;

    for (i = 0; i < n && i < 48 && o + 4 < outsz; i++) {
        unsigned char c = (unsigned char)s[i];
        out[o++] = (c >= 0x20 && c < 0x7f && c != '"') ? (char)c : '?';
    }
    if (i < n && o + 4 <= outsz) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/* Parse state shared by the helpers below. */
typedef struct hr_parse {
    const pg_hrfeed_cfg_t *cfg;
    pg_hrfeed_parsed_t *p;
    size_t ncols;
    size_t key_idx;
    long term_idx;            /* -1 when no termination column */
    size_t *attr_idx;         /* parallel to cfg->attrs */
    size_t *req_idx;
    size_t nreq;
    size_t rows_cap, held_cap, err_cap;
} hr_parse_t;

/* Record one rejected record (counted always, stored under the cap). */
static pg_status_t PG_PRINTF(3, 4)
add_error(hr_parse_t *ps, unsigned long line, const char *fmt, ...)
{
    pg_hrfeed_parsed_t *p = ps->p;
    va_list ap;

    p->nbad++;
    if (p->nerrors >= ps->cfg->max_errors_reported) {
        return PG_OK;
    }
    if (p->nerrors == ps->err_cap) {
        size_t nc = ps->err_cap ? ps->err_cap * 2 : 16;
        pg_hrfeed_error_t *ne = realloc(p->errors, nc * sizeof(*ne));
        if (ne == NULL) {
            return PG_ERR_NOMEM;
        }
        p->errors = ne;
        ps->err_cap = nc;
    }
    p->errors[p->nerrors].line = line;
    va_start(ap, fmt);
    vsnprintf(p->errors[p->nerrors].reason, PG_HRFEED_REASON_MAX, fmt, ap);
    va_end(ap);
    p->nerrors++;
    return PG_OK;
}

/* Remember a key whose record was rejected (duplicates removed later). */
static pg_status_t
add_held(hr_parse_t *ps, const char *k, size_t n)
{
    pg_hrfeed_parsed_t *p = ps->p;
    char *c;

    if (p->nheld == ps->held_cap) {
        size_t nc = ps->held_cap ? ps->held_cap * 2 : 16;
        char **nh = realloc(p->held, nc * sizeof(*nh));
        if (nh == NULL) {
            return PG_ERR_NOMEM;
        }
        p->held = nh;
        ps->held_cap = nc;
    }
    c = strndup(k, n);
    if (c == NULL) {
        return PG_ERR_NOMEM;
    }
    p->held[p->nheld++] = c;
    return PG_OK;
}

/* Hold the key of a rejected record when it can be read safely. */
static pg_status_t
hold_key(hr_parse_t *ps, const hr_rec_t *r)
{
    const char *k;
    size_t n;

    if (ps->key_idx >= r->nf || ps->key_idx >= PG_HRFEED_MAX_COLUMNS) {
        return PG_OK;
    }
    k = r->buf + r->f[ps->key_idx].off;
    n = r->f[ps->key_idx].len;
    if (n == 0 || n > HR_MAX_KEY || !utf8_ok(k, n, 0)) {
        return PG_OK;
    }
    return add_held(ps, k, n);
}

/* Reject record r with its syntax/validation reason and hold its key. */
static pg_status_t PG_PRINTF(3, 4)
reject(hr_parse_t *ps, const hr_rec_t *r, const char *fmt, ...)
{
    char reason[PG_HRFEED_REASON_MAX];
    va_list ap;
    pg_status_t st;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    st = add_error(ps, r->line, "%s", reason);
    if (st != PG_OK) {
        return st;
    }
    return hold_key(ps, r);
}

/* Validate one data record and append it to the rows, or reject it. */
static pg_status_t
take_record(hr_parse_t *ps, const hr_rec_t *r)
{
    const pg_hrfeed_cfg_t *cfg = ps->cfg;
    pg_hrfeed_parsed_t *p = ps->p;
    pg_hrfeed_row_t row;
    char shown[64];
    const char *k;
    size_t i, kn;
    uint32_t term = 0;

    if (r->reason[0] != '\0') {
        return reject(ps, r, "%s", r->reason);
    }
    if (r->nf != ps->ncols) {
        return reject(ps, r, "expected %zu fields, found %zu", ps->ncols,
                      r->nf);
    }
    for (i = 0; i < r->nf; i++) {
        if (memchr(r->buf + r->f[i].off, '\0', r->f[i].len) != NULL) {
            return reject(ps, r, "NUL byte in field %zu", i + 1);
        }
    }
    k = r->buf + r->f[ps->key_idx].off;
    kn = r->f[ps->key_idx].len;
    if (kn == 0) {
        return reject(ps, r, "empty key in column \"%s\"", cfg->key_column);
    }
    if (kn > HR_MAX_KEY || !utf8_ok(k, kn, 0)) {
        return add_error(ps, r->line, "key in column \"%s\" is longer than "
                         "%u bytes, not UTF-8 or has control characters",
                         cfg->key_column, HR_MAX_KEY);
    }
    for (i = 0; i < ps->nreq; i++) {
        if (r->f[ps->req_idx[i]].len == 0) {
            return reject(ps, r, "missing required value in column \"%s\"",
                          cfg->required_columns[i]);
        }
    }
    if (ps->term_idx >= 0) {
        const hr_field_t *tf = &r->f[ps->term_idx];
        if (tf->len > 0 &&
            pg_hrfeed_date(r->buf + tf->off, tf->len, &term) != PG_OK) {
            printable(r->buf + tf->off, tf->len, shown, sizeof(shown));
            return reject(ps, r, "bad termination date \"%s\" in column "
                          "\"%s\" (want YYYY-MM-DD)", shown,
                          cfg->termination_column);
        }
    }
    for (i = 0; i < cfg->nattrs; i++) {
        const hr_field_t *f = &r->f[ps->attr_idx[i]];
        if (!utf8_ok(r->buf + f->off, f->len, 1)) {
            return reject(ps, r, "invalid UTF-8 or control character in "
                          "column \"%s\"", cfg->attrs[i].column);
        }
    }
    row.key = strndup(k, kn);
    row.attrs = json_object();
    row.term_date = term;
    row.line = r->line;
    if (row.key == NULL || row.attrs == NULL) {
        goto nomem;
    }
    for (i = 0; i < cfg->nattrs; i++) {
        const hr_field_t *f = &r->f[ps->attr_idx[i]];
        json_t *v = json_stringn_nocheck(r->buf + f->off, f->len);
        if (v == NULL ||
            json_object_set_new_nocheck(row.attrs, cfg->attrs[i].attr, v)) {
            goto nomem;
        }
    }
    if (p->nrows == ps->rows_cap) {
        size_t nc = ps->rows_cap ? ps->rows_cap * 2 : 64;
        pg_hrfeed_row_t *nr = realloc(p->rows, nc * sizeof(*nr));
        if (nr == NULL) {
            goto nomem;
        }
        p->rows = nr;
        ps->rows_cap = nc;
    }
    p->rows[p->nrows++] = row;
    return PG_OK;
nomem:
    free(row.key);
    json_decref(row.attrs);
    return PG_ERR_NOMEM;
}

/* Index of column name in the header/columns; -1 when absent, -2 when it
 * appears more than once. */
static long
col_index(const hr_rec_t *hdr, char *const *names, size_t ncols,
          const char *name)
{
    size_t i, nl = strlen(name);
    long found = -1;

    for (i = 0; i < ncols; i++) {
        int eq;
        if (names != NULL) {
            eq = strcmp(names[i], name) == 0;
        } else {
            eq = hdr->f[i].len == nl &&
                 memcmp(hdr->buf + hdr->f[i].off, name, nl) == 0;
        }
        if (eq) {
            if (found >= 0) {
                return -2;
            }
            found = (long)i;
        }
    }
    return found;
}

/* Resolve one configured column to an index or fail the whole file. */
static pg_status_t
resolve(const hr_rec_t *hdr, char *const *names, size_t ncols,
        const char *name, size_t *idx, pg_err_t *err)
{
    long i = col_index(hdr, names, ncols, name);

    if (i == -1) {
        pg_err_set(err, "header: column \"%s\" is missing", name);
        return PG_ERR_INVALID;
    }
    if (i == -2) {
        pg_err_set(err, "header: column \"%s\" appears more than once", name);
        return PG_ERR_INVALID;
    }
    *idx = (size_t)i;
    return PG_OK;
}

/* Map every configured column to its position (the header decides). */
static pg_status_t
resolve_columns(hr_parse_t *ps, const hr_rec_t *hdr, pg_err_t *err)
{
    const pg_hrfeed_cfg_t *cfg = ps->cfg;
    char *const *names = cfg->header ? NULL : cfg->columns;
    pg_status_t st;
    size_t i, t;

    if (cfg->header) {
        if (hdr->reason[0] != '\0') {
            pg_err_set(err, "header (line %lu): %s", hdr->line, hdr->reason);
            return PG_ERR_INVALID;
        }
        ps->ncols = hdr->nf;
    } else {
        for (ps->ncols = 0; cfg->columns[ps->ncols] != NULL; ps->ncols++) {
        }
    }
    st = resolve(hdr, names, ps->ncols, cfg->key_column, &ps->key_idx, err);
    if (st != PG_OK) {
        return st;
    }
    ps->term_idx = -1;
    if (cfg->termination_column != NULL) {
        st = resolve(hdr, names, ps->ncols, cfg->termination_column, &t, err);
        if (st != PG_OK) {
            return st;
        }
        ps->term_idx = (long)t;
    }
    ps->attr_idx = calloc(cfg->nattrs, sizeof(size_t));
    if (ps->attr_idx == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < cfg->nattrs; i++) {
        st = resolve(hdr, names, ps->ncols, cfg->attrs[i].column,
                     &ps->attr_idx[i], err);
        if (st != PG_OK) {
            return st;
        }
    }
    for (ps->nreq = 0; cfg->required_columns != NULL &&
                       cfg->required_columns[ps->nreq] != NULL; ps->nreq++) {
    }
    ps->req_idx = calloc(ps->nreq + 1, sizeof(size_t));
    if (ps->req_idx == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < ps->nreq; i++) {
        st = resolve(hdr, names, ps->ncols, cfg->required_columns[i],
                     &ps->req_idx[i], err);
        if (st != PG_OK) {
            return st;
        }
    }
    return PG_OK;
}

static int
row_cmp(const void *a, const void *b)
{
    const pg_hrfeed_row_t *x = a, *y = b;
    int c = strcmp(x->key, y->key);

    if (c != 0) {
        return c;
    }
    return x->line < y->line ? -1 : x->line > y->line;
}

static int
err_cmp(const void *a, const void *b)
{
    const pg_hrfeed_error_t *x = a, *y = b;

    return x->line < y->line ? -1 : x->line > y->line;
}

static int
str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sort rows by key; reject every copy of a duplicated key and hold it. */
static pg_status_t
drop_duplicates(hr_parse_t *ps)
{
    pg_hrfeed_parsed_t *p = ps->p;
    pg_status_t st;
    size_t i = 0, j, k, w = 0;

    hr_sort(p->rows, p->nrows, sizeof(*p->rows), row_cmp);
    while (i < p->nrows) {
        j = i + 1;
        while (j < p->nrows && strcmp(p->rows[i].key, p->rows[j].key) == 0) {
            j++;
        }
        if (j - i == 1) {
            p->rows[w++] = p->rows[i];
        } else {
            char shown[64];
            printable(p->rows[i].key, strlen(p->rows[i].key), shown,
                      sizeof(shown));
            st = add_held(ps, p->rows[i].key, strlen(p->rows[i].key));
            for (k = i; k < j; k++) {
                if (st == PG_OK) {
                    st = add_error(ps, p->rows[k].line, "duplicate key \"%s\" "
                                   "(%zu rows, first on line %lu)", shown,
                                   j - i, p->rows[i].line);
                }
                free(p->rows[k].key);
                json_decref(p->rows[k].attrs);
            }
            if (st != PG_OK) {
                /* keep the array consistent for the caller's free */
                memmove(&p->rows[w], &p->rows[j],
                        (p->nrows - j) * sizeof(*p->rows));
                p->nrows = w + (p->nrows - j);
                return st;
            }
        }
        i = j;
    }
    p->nrows = w;
    return PG_OK;
}

/* Sort and de-duplicate the held keys. */
static void
unique_held(pg_hrfeed_parsed_t *p)
{
    size_t i, w = 0;

    hr_sort(p->held, p->nheld, sizeof(*p->held), str_cmp);
    for (i = 0; i < p->nheld; i++) {
        if (w > 0 && strcmp(p->held[w - 1], p->held[i]) == 0) {
            free(p->held[i]);
            continue;
        }
        p->held[w++] = p->held[i];
    }
    p->nheld = w;
}

/* A key both on an accepted row and on a rejected record is ambiguous:
 * reject the row too (the key stays held). Rows and held are sorted. */
static pg_status_t
drop_held_rows(hr_parse_t *ps)
{
    pg_hrfeed_parsed_t *p = ps->p;
    pg_status_t st = PG_OK;
    size_t i, w = 0, h = 0;

    for (i = 0; i < p->nrows; i++) {
        pg_hrfeed_row_t *r = &p->rows[i];
        int c = 1;
        char shown[64];
        while (h < p->nheld && (c = strcmp(p->held[h], r->key)) < 0) {
            h++;
        }
        if (h >= p->nheld || c != 0 || st != PG_OK) {
            p->rows[w++] = *r;
            continue;
        }
        printable(r->key, strlen(r->key), shown, sizeof(shown));
        st = add_error(ps, r->line, "key \"%s\" also appears on a rejected "
                       "line", shown);
        free(r->key);
        json_decref(r->attrs);
    }
    p->nrows = w;
    return st;
}

/* Free a parse result and everything it owns. NULL is a no-op. */
void
pg_hrfeed_parsed_free(pg_hrfeed_parsed_t *p)
{
    size_t i;

    if (p == NULL) {
        return;
    }
    for (i = 0; i < p->nrows; i++) {
        free(p->rows[i].key);
        json_decref(p->rows[i].attrs);
    }
    free(p->rows);
    for (i = 0; i < p->nheld; i++) {
        free(p->held[i]);
    }
    free(p->held);
    free(p->errors);
    free(p);
}

/* Parse an export (contract in hrfeed.h). */
pg_status_t
pg_hrfeed_parse(const pg_hrfeed_cfg_t *cfg, const char *buf, size_t len,
                pg_hrfeed_parsed_t **out, pg_err_t *err)
{
    hr_reader_t rd;
    hr_rec_t rec, hdr;
    hr_parse_t ps;
    pg_status_t st;
    int got;

    *out = NULL;
    if (cfg == NULL || (buf == NULL && len > 0)) {
        pg_err_set(err, "hrfeed: no configuration or no buffer");
        return PG_ERR_INVALID;
    }
    if (len > cfg->max_file_bytes) {
        pg_err_set(err, "file is %zu bytes, over max_file_bytes %u", len,
                   cfg->max_file_bytes);
        return PG_ERR_TOO_LARGE;
    }
    memset(&rd, 0, sizeof(rd));
    memset(&rec, 0, sizeof(rec));
    memset(&hdr, 0, sizeof(hdr));
    memset(&ps, 0, sizeof(ps));
    rd.s = buf;
    rd.len = len;
    rd.line = 1;
    rd.delim = cfg->delimiter;
    rd.quote = cfg->quote;
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) {
        rd.pos = 3;
    }
    ps.cfg = cfg;
    ps.p = calloc(1, sizeof(*ps.p));
    if (ps.p == NULL) {
        return PG_ERR_NOMEM;
    }
    if (cfg->header) {
        st = rd_next(&rd, &hdr, &got);
        if (st != PG_OK) {
            goto fail;
        }
        if (!got) {
            pg_err_set(err, "file is empty: no header line");
            st = PG_ERR_INVALID;
            goto fail;
        }
    }
    st = resolve_columns(&ps, &hdr, err);
    if (st != PG_OK) {
        goto fail;
    }
    for (;;) {
        st = rd_next(&rd, &rec, &got);
        if (st != PG_OK) {
            goto fail;
        }
        if (!got) {
            break;
        }
        if (++ps.p->nrecords > cfg->max_rows) {
            pg_err_set(err, "more than max_rows %u records (line %lu)",
                       cfg->max_rows, rec.line);
            st = PG_ERR_TOO_LARGE;
            goto fail;
        }
        st = take_record(&ps, &rec);
        if (st != PG_OK) {
            goto fail;
        }
    }
    st = drop_duplicates(&ps);
    if (st != PG_OK) {
        goto fail;
    }
    unique_held(ps.p);
    st = drop_held_rows(&ps);
    if (st != PG_OK) {
        goto fail;
    }
    hr_sort(ps.p->errors, ps.p->nerrors, sizeof(*ps.p->errors), err_cmp);
    rec_free(&rec);
    rec_free(&hdr);
    free(ps.attr_idx);
    free(ps.req_idx);
    *out = ps.p;
    if ((unsigned long long)ps.p->nbad * 100ull >
        (unsigned long long)cfg->max_malformed_pct * ps.p->nrecords) {
        ps.p->refused = 1;
        pg_err_set(err, "refused: %zu of %zu records are malformed, over "
                   "max_malformed_pct %u%%; nothing may be applied",
                   ps.p->nbad, ps.p->nrecords, cfg->max_malformed_pct);
        return PG_ERR_DENIED;
    }
    return PG_OK;
fail:
    rec_free(&rec);
    rec_free(&hdr);
    free(ps.attr_idx);
    free(ps.req_idx);
    pg_hrfeed_parsed_free(ps.p);
    return st;
}

/* ======================================================================
 * snapshots and the diff
 * ==================================================================== */

/* Check the snapshot shape: object of objects of NUL-free strings. */
static pg_status_t
snapshot_check(const json_t *snap, pg_err_t *err)
{
    const char *key, *attr;
    json_t *v, *a;
    char shown[64];

    if (!json_is_object(snap)) {
        pg_err_set(err, "snapshot: must be a JSON object");
        return PG_ERR_INVALID;
    }
    json_object_foreach((json_t *)snap, key, v) {
        printable(key, strlen(key), shown, sizeof(shown));
        if (key[0] == '\0' || strlen(key) > HR_MAX_KEY) {
            pg_err_set(err, "snapshot: empty or overlong key \"%s\"", shown);
            return PG_ERR_INVALID;
        }
        if (!json_is_object(v)) {
            pg_err_set(err, "snapshot: \"%s\" must be an object", shown);
            return PG_ERR_INVALID;
        }
        json_object_foreach(v, attr, a) {
            if (!json_is_string(a) ||
                strlen(json_string_value(a)) != json_string_length(a)) {
                pg_err_set(err, "snapshot: \"%s\": every attribute must be a "
                           "string without NUL", shown);
                return PG_ERR_INVALID;
            }
        }
    }
    return PG_OK;
}

/* Load a stored snapshot (contract in hrfeed.h). */
pg_status_t
pg_hrfeed_snapshot_parse(const char *buf, size_t len, size_t cap,
                         json_t **out, pg_err_t *err)
{
    json_error_t je;
    json_t *j;
    pg_status_t st;

    *out = NULL;
    if (len > cap) {
        pg_err_set(err, "snapshot: %zu bytes, over the cap of %zu", len, cap);
        return PG_ERR_TOO_LARGE;
    }
    j = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (j == NULL) {
        pg_err_set(err, "snapshot:%d:%d: %s", je.line, je.column, je.text);
        return PG_ERR_INVALID;
    }
    st = snapshot_check(j, err);
    if (st != PG_OK) {
        json_decref(j);
        return st;
    }
    *out = j;
    return PG_OK;
}

/* Free a diff and everything it owns. NULL is a no-op. */
void
pg_hrfeed_diff_free(pg_hrfeed_diff_t *d)
{
    size_t i, k;

    if (d == NULL) {
        return;
    }
    for (i = 0; i < d->njoins; i++) {
        free(d->joins[i].key);
        json_decref(d->joins[i].attrs);
    }
    free(d->joins);
    for (i = 0; i < d->nmoves; i++) {
        free(d->moves[i].key);
        json_decref(d->moves[i].attrs);
        for (k = 0; k < d->moves[i].nchanges; k++) {
            free(d->moves[i].changes[k].attr);
            free(d->moves[i].changes[k].old_value);
            free(d->moves[i].changes[k].new_value);
        }
        free(d->moves[i].changes);
    }
    free(d->moves);
    for (i = 0; i < d->nleaves; i++) {
        free(d->leaves[i].key);
        json_decref(d->leaves[i].attrs);
    }
    free(d->leaves);
    free(d->errors);
    json_decref(d->next);
    free(d);
}

/* strdup of a string member's value, NULL when absent (*ok = 0 on OOM). */
static char *
attr_dup(const json_t *obj, const char *attr, int *ok)
{
    const json_t *v = json_object_get(obj, attr);
    char *c;

    if (v == NULL) {
        return NULL;
    }
    c = strdup(json_string_value(v));
    if (c == NULL) {
        *ok = 0;
    }
    return c;
}

/* Every attribute whose value differs between old and new, sorted. */
static pg_status_t
changes_of(const json_t *old, const json_t *new, pg_hrfeed_move_t *m)
{
    const char *a;
    json_t *v;
    const char **names;
    size_t n = 0, i, cap = json_object_size(old) + json_object_size(new);
    int ok = 1;

    names = calloc(cap + 1, sizeof(*names));
    if (names == NULL) {
        return PG_ERR_NOMEM;
    }
    json_object_foreach((json_t *)old, a, v) {
        names[n++] = a;
    }
    json_object_foreach((json_t *)new, a, v) {
        if (json_object_get(old, a) == NULL) {
            names[n++] = a;
        }
    }
    hr_sort(names, n, sizeof(*names), str_cmp);
    m->changes = calloc(n + 1, sizeof(*m->changes));
    if (m->changes == NULL) {
        free(names);
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        const json_t *o = json_object_get(old, names[i]);
        const json_t *w = json_object_get(new, names[i]);
        pg_hrfeed_change_t *c;
        if (o != NULL && w != NULL && json_equal((json_t *)o, (json_t *)w)) {
            continue;
        }
        c = &m->changes[m->nchanges++];
        c->attr = strdup(names[i]);
        c->old_value = attr_dup(old, names[i], &ok);
        c->new_value = attr_dup(new, names[i], &ok);
        if (c->attr == NULL || !ok) {
            free(names);
            return PG_ERR_NOMEM;
        }
    }
    free(names);
    return PG_OK;
}

/* 1 when key is among the sorted held keys. */
static int
is_held(const pg_hrfeed_parsed_t *p, const char *key)
{
    return p->nheld > 0 &&
           bsearch(&key, p->held, p->nheld, sizeof(*p->held), str_cmp) !=
               NULL;
}

/* Compute the changes (contract in hrfeed.h). */
pg_status_t
pg_hrfeed_diff(const pg_hrfeed_cfg_t *cfg, const json_t *prev,
               const pg_hrfeed_parsed_t *parsed, const char *today,
               int force, pg_hrfeed_diff_t **out, pg_err_t *err)
{
    pg_hrfeed_diff_t *d = NULL;
    const char **pk = NULL;
    const char *key;
    json_t *v;
    size_t np = 0, i = 0, j = 0;
    uint32_t now;
    pg_status_t st = PG_ERR_NOMEM;

    *out = NULL;
    if (cfg == NULL || parsed == NULL || today == NULL ||
        pg_hrfeed_date(today, strlen(today), &now) != PG_OK) {
        pg_err_set(err, "diff: today must be a date YYYY-MM-DD");
        return PG_ERR_INVALID;
    }
    if (parsed->refused) {
        pg_err_set(err, "diff: the export was refused (%zu of %zu records "
                   "malformed)", parsed->nbad, parsed->nrecords);
        return PG_ERR_DENIED;
    }
    if (prev != NULL) {
        st = snapshot_check(prev, err);
        if (st != PG_OK) {
            return st;
        }
        st = PG_ERR_NOMEM;
        np = json_object_size(prev);
    }
    d = calloc(1, sizeof(*d));
    pk = calloc(np + 1, sizeof(*pk));
    if (d == NULL || pk == NULL) {
        goto fail;
    }
    d->joins = calloc(parsed->nrows + 1, sizeof(*d->joins));
    d->moves = calloc(parsed->nrows + 1, sizeof(*d->moves));
    d->leaves = calloc(np + 1, sizeof(*d->leaves));
    d->errors = calloc(parsed->nerrors + 1, sizeof(*d->errors));
    d->next = json_object();
    if (d->joins == NULL || d->moves == NULL || d->leaves == NULL ||
        d->errors == NULL || d->next == NULL) {
        goto fail;
    }
    if (parsed->nerrors > 0) {
        memcpy(d->errors, parsed->errors,
               parsed->nerrors * sizeof(*d->errors));
    }
    d->nerrors = parsed->nerrors;
    d->nbad = parsed->nbad;
    np = 0;
    if (prev != NULL) {
        json_object_foreach((json_t *)prev, key, v) {
            pk[np++] = key;
        }
    }
    hr_sort(pk, np, sizeof(*pk), str_cmp);

    /* merge the two sorted key lists */
    while (i < parsed->nrows || j < np) {
        const pg_hrfeed_row_t *r = i < parsed->nrows ? &parsed->rows[i] : NULL;
        int c = r == NULL ? 1 : j >= np ? -1 : strcmp(r->key, pk[j]);
        int terminated = r != NULL && r->term_date != 0 && r->term_date <= now;

        if (c < 0) {                       /* only in the export */
            i++;
            if (terminated) {
                d->terminated_absent++;
                continue;
            }
            d->joins[d->njoins].key = strdup(r->key);
            d->joins[d->njoins].attrs = json_incref(r->attrs);
            if (d->joins[d->njoins++].key == NULL ||
                json_object_set_nocheck(d->next, r->key, r->attrs)) {
                goto fail;
            }
        } else if (c > 0) {                /* only in the snapshot */
            json_t *pa = json_object_get(prev, pk[j]);
            if (is_held(parsed, pk[j])) {
                d->held++;
                if (json_object_set_nocheck(d->next, pk[j], pa)) {
                    goto fail;
                }
            } else {
                pg_hrfeed_leave_t *l = &d->leaves[d->nleaves++];
                l->key = strdup(pk[j]);
                l->attrs = json_incref(pa);
                l->reason = PG_HRFEED_LEAVE_GONE;
                if (l->key == NULL) {
                    goto fail;
                }
            }
            j++;
        } else {                           /* in both */
            json_t *pa = json_object_get(prev, pk[j]);
            i++;
            j++;
            if (terminated) {
                pg_hrfeed_leave_t *l = &d->leaves[d->nleaves++];
                l->key = strdup(r->key);
                l->attrs = json_incref(r->attrs);
                l->reason = PG_HRFEED_LEAVE_TERMINATED;
                l->term_date = r->term_date;
                if (l->key == NULL) {
                    goto fail;
                }
                continue;
            }
            if (json_object_set_nocheck(d->next, r->key, r->attrs)) {
                goto fail;
            }
            if (json_equal(pa, r->attrs)) {
                d->unchanged++;
                continue;
            }
            d->moves[d->nmoves].key = strdup(r->key);
            d->moves[d->nmoves].attrs = json_incref(r->attrs);
            if (d->moves[d->nmoves++].key == NULL) {
                goto fail;
            }
            if (changes_of(pa, r->attrs, &d->moves[d->nmoves - 1]) != PG_OK) {
                goto fail;
            }
        }
    }
    free(pk);
    *out = d;
    if (!force && np > 0 &&
        (unsigned long long)d->nleaves * 100ull >
            (unsigned long long)cfg->max_leave_pct * np) {
        d->refused = 1;
        pg_err_set(err, "refused: %zu leaves of %zu people exceed "
                   "max_leave_pct %u%% (mass-leave guard); force to apply",
                   d->nleaves, np, cfg->max_leave_pct);
        return PG_ERR_DENIED;
    }
    return PG_OK;
fail:
    free(pk);
    pg_hrfeed_diff_free(d);
    return st;
}
