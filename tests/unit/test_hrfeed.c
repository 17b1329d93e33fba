/*
 * Unit tests: HR export parsing and change detection (src/sidecar/hrfeed.c,
 * include/provgate/hrfeed.h). Fixtures: tests/unit/fixtures/hrfeed/.
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include "provgate/hrfeed.h"

static char g_fix[PATH_MAX];

static void
fmt(char *buf, size_t n, const char *f, ...) PG_PRINTF(3, 4);

static void
fmt(char *buf, size_t n, const char *f, ...)
{
    va_list ap;
    int r;

    va_start(ap, f);
    r = vsnprintf(buf, n, f, ap);
    va_end(ap);
    assert_true(r >= 0 && (size_t)r < n);
}

static int
is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* tests/unit/fixtures/hrfeed next to this source, or relative to the
 * binary (build/unit/test_hrfeed). */
static void
find_fixtures(void)
{
    char cand[PATH_MAX], exe[PATH_MAX], src[PATH_MAX];
    ssize_t n;

    fmt(src, sizeof(src), "%s", __FILE__);
    *strrchr(src, '/') = '\0';
    fmt(cand, sizeof(cand), "%s/fixtures/hrfeed", src);
    if (!is_dir(cand)) {
        n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        assert_true(n > 0);
        exe[n] = '\0';
        *strrchr(exe, '/') = '\0';
        fmt(cand, sizeof(cand), "%s/../../tests/unit/fixtures/hrfeed", exe);
    }
    assert_non_null(realpath(cand, g_fix));
}

/* Read a fixture (cap 1 MiB); *len gets its size. */
static char *
fixture(const char *name, size_t *len)
{
    char path[PATH_MAX];
    char *buf = NULL;
    pg_err_t err;

    if (g_fix[0] == '\0') {
        find_fixtures();
    }
    fmt(path, sizeof(path), "%s/%s", g_fix, name);
    assert_int_equal(pg_read_file(path, 1024 * 1024, 0, &buf, len, &err),
                     PG_OK);
    return buf;
}

/* Config from JSON text; must parse. */
static pg_hrfeed_cfg_t *
cfg_from(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    pg_hrfeed_cfg_t *cfg = NULL;
    pg_err_t err = {{0}};

    assert_non_null(j);
    if (pg_hrfeed_cfg_parse(j, "$.hr_source", &cfg, &err) != PG_OK) {
        fail_msg("config: %s", err.msg);
    }
    json_decref(j);
    return cfg;
}

static pg_hrfeed_cfg_t *
fixture_cfg(void)
{
    size_t n;
    char *t = fixture("feed.json", &n);
    pg_hrfeed_cfg_t *cfg = cfg_from(t);
    free(t);
    return cfg;
}

/* Config text must be refused with exactly want as the message. */
static void
cfg_bad(const char *text, const char *want)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    pg_hrfeed_cfg_t *cfg = (pg_hrfeed_cfg_t *)1;
    pg_err_t err = {{0}};

    assert_non_null(j);
    assert_int_equal(pg_hrfeed_cfg_parse(j, "$.hr_source", &cfg, &err),
                     PG_ERR_CONFIG);
    assert_null(cfg);
    assert_string_equal(err.msg, want);
    json_decref(j);
}

/* The simple comma config most tests use: id,name,mail,end. */
#define SIMPLE_CFG \
    "{\"key_column\":\"id\",\"attributes\":{\"name\":\"name\"," \
    "\"mail\":\"email\"},\"termination_column\":\"end\"," \
    "\"required_columns\":[\"mail\"],\"max_malformed_pct\":100," \
    "\"max_leave_pct\":100}"

static pg_hrfeed_parsed_t *
parse_ok(const pg_hrfeed_cfg_t *cfg, const char *csv, size_t len)
{
    pg_hrfeed_parsed_t *p = NULL;
    pg_err_t err = {{0}};

    if (pg_hrfeed_parse(cfg, csv, len, &p, &err) != PG_OK) {
        fail_msg("parse: %s", err.msg);
    }
    assert_non_null(p);
    return p;
}

static const char *
attr(const pg_hrfeed_row_t *r, const char *a)
{
    const json_t *v = json_object_get(r->attrs, a);
    assert_non_null(v);
    return json_string_value(v);
}

/* Find the accepted row with key k (must exist). */
static const pg_hrfeed_row_t *
row(const pg_hrfeed_parsed_t *p, const char *k)
{
    size_t i;
    for (i = 0; i < p->nrows; i++) {
        if (strcmp(p->rows[i].key, k) == 0) {
            return &p->rows[i];
        }
    }
    fail_msg("no row %s", k);
    return NULL;
}

/* ---- configuration --------------------------------------------------- */

static void
test_cfg_defaults_and_fixture(void **state)
{
    pg_hrfeed_cfg_t *c = cfg_from("{\"key_column\":\"id\",\"attributes\":"
                                  "{\"b\":\"zeta\",\"a\":\"alpha\"}}");
    (void)state;
    assert_int_equal(c->delimiter, ',');
    assert_int_equal(c->quote, '"');
    assert_int_equal(c->header, 1);
    assert_null(c->columns);
    assert_null(c->termination_column);
    assert_int_equal(c->max_rows, 200000);
    assert_int_equal(c->max_file_bytes, 64u * 1024u * 1024u);
    assert_int_equal(c->max_errors_reported, 100);
    assert_int_equal(c->max_malformed_pct, 5);
    assert_int_equal(c->max_leave_pct, 10);
    assert_int_equal(c->nattrs, 2);
    assert_string_equal(c->attrs[0].attr, "alpha"); /* sorted by attr */
    assert_string_equal(c->attrs[0].column, "a");
    pg_hrfeed_cfg_free(c);

    c = fixture_cfg();
    assert_int_equal(c->delimiter, ';');
    assert_string_equal(c->termination_column, "end_date");
    assert_string_equal(c->required_columns[0], "email");
    assert_int_equal(c->max_leave_pct, 50);
    pg_hrfeed_cfg_free(c);

    c = cfg_from("{\"delimiter\":\"\\t\",\"quote\":\"'\",\"header\":false,"
                 "\"columns\":[\"id\",\"n\"],\"key_column\":\"id\","
                 "\"attributes\":{\"n\":\"name\"}}");
    assert_int_equal(c->delimiter, '\t');
    assert_int_equal(c->quote, '\'');
    assert_string_equal(c->columns[1], "n");
    pg_hrfeed_cfg_free(c);
}

static void
test_cfg_errors(void **state)
{
    (void)state;
    cfg_bad("{\"key_column\":\"id\",\"attributes\":{\"a\":\"a\"},\"x\":1}",
            "$.hr_source.x: unknown field");
    cfg_bad("{\"attributes\":{\"a\":\"a\"}}",
            "$.hr_source.key_column: missing required field");
    cfg_bad("{\"key_column\":\"id\"}",
            "$.hr_source.attributes: missing required field");
    cfg_bad("{\"key_column\":\"id\",\"attributes\":{}}",
            "$.hr_source.attributes: must be a non-empty object "
            "{\"column\": \"attribute\"}");
    cfg_bad("{\"key_column\":\"id\",\"attributes\":{\"a\":\"bad name\"}}",
            "$.hr_source.attributes.a: attribute name must be 1..128 of "
            "[A-Za-z0-9_.-]");
    cfg_bad("{\"key_column\":\"id\",\"attributes\":{\"a\":\"x\",\"b\":\"x\"}}",
            "$.hr_source.attributes: attribute \"x\" is mapped from two "
            "columns");
    cfg_bad("{\"delimiter\":\";;\",\"key_column\":\"id\",\"attributes\":"
            "{\"a\":\"a\"}}",
            "$.hr_source.delimiter: must be a string of exactly one "
            "character");
    cfg_bad("{\"delimiter\":\"\\n\",\"key_column\":\"id\",\"attributes\":"
            "{\"a\":\"a\"}}",
            "$.hr_source.delimiter: must be printable ASCII or a tab");
    cfg_bad("{\"quote\":\",\",\"key_column\":\"id\",\"attributes\":"
            "{\"a\":\"a\"}}",
            "$.hr_source.quote: must differ from the delimiter");
    cfg_bad("{\"columns\":[\"id\"],\"key_column\":\"id\",\"attributes\":"
            "{\"id\":\"a\"}}",
            "$.hr_source.columns: only allowed when header is false");
    cfg_bad("{\"header\":false,\"key_column\":\"id\",\"attributes\":"
            "{\"id\":\"a\"}}",
            "$.hr_source.columns: required when header is false");
    cfg_bad("{\"header\":false,\"columns\":[\"id\",\"id\"],\"key_column\":"
            "\"id\",\"attributes\":{\"id\":\"a\"}}",
            "$.hr_source.columns[1]: column \"id\" listed twice");
    cfg_bad("{\"header\":false,\"columns\":[\"n\"],\"key_column\":\"id\","
            "\"attributes\":{\"n\":\"a\"}}",
            "$.hr_source.key_column: \"id\" is not in columns");
    cfg_bad("{\"header\":false,\"columns\":[\"id\"],\"key_column\":\"id\","
            "\"attributes\":{\"n\":\"a\"}}",
            "$.hr_source.attributes.n: column is not in columns");
    cfg_bad("{\"key_column\":\"id\",\"attributes\":{\"a\":\"a\"},"
            "\"date_format\":\"DD/MM/YYYY\"}",
            "$.hr_source.date_format: only \"YYYY-MM-DD\" is supported");
    cfg_bad("{\"key_column\":\"id\",\"attributes\":{\"a\":\"a\"},"
            "\"max_leave_pct\":101}",
            "$.hr_source.max_leave_pct: must be between 0 and 100");
    cfg_bad("{\"key_column\":\"id\",\"attributes\":{\"a\":\"a\"},"
            "\"max_rows\":\"10\"}",
            "$.hr_source.max_rows: must be an integer");
    cfg_bad("{\"key_column\":\"id\",\"attributes\":{\"a\":\"a\"},"
            "\"header\":\"yes\"}",
            "$.hr_source.header: must be true or false");
}

/* ---- CSV syntax ------------------------------------------------------ */

static void
test_csv_quotes_crlf_bom(void **state)
{
    pg_hrfeed_cfg_t *c = cfg_from(SIMPLE_CFG);
    /* BOM, CRLF, quoted delimiter, doubled quotes, CRLF and LF inside a
     * quoted field, an empty quoted field, blank lines, no final newline */
    static const char csv[] =
        "\xEF\xBB\xBFid,name,mail,end\r\n"
        "1,\"Doe, Jane\",jane@x,\r\n"
        "\r\n"
        "2,\"say \"\"hi\"\"\",\"bob@x\",\"\"\r\n"
        "3,\"multi\r\nline\nname\",c@x,\n"
        "\n"
        "4,\"\"\"\",d@x,2099-01-01";
    pg_hrfeed_parsed_t *p = parse_ok(c, csv, sizeof(csv) - 1);

    (void)state;
    assert_int_equal(p->nrecords, 4);
    assert_int_equal(p->nrows, 4);
    assert_int_equal(p->nbad, 0);
    assert_string_equal(attr(row(p, "1"), "name"), "Doe, Jane");
    assert_int_equal(row(p, "1")->line, 2);
    assert_string_equal(attr(row(p, "2"), "name"), "say \"hi\"");
    assert_string_equal(attr(row(p, "2"), "email"), "bob@x");
    assert_int_equal(row(p, "2")->line, 4);
    assert_string_equal(attr(row(p, "3"), "name"), "multi\r\nline\nname");
    assert_int_equal(row(p, "3")->line, 5);
    assert_string_equal(attr(row(p, "4"), "name"), "\"");
    assert_int_equal(row(p, "4")->line, 9);  /* record 3: 3 lines; 1 blank */
    assert_int_equal(row(p, "4")->term_date, 20990101);
    assert_int_equal(row(p, "1")->term_date, 0);
    /* the header key without BOM was found: the key column resolved */
    assert_string_equal(p->rows[0].key, "1");
    pg_hrfeed_parsed_free(p);
    pg_hrfeed_cfg_free(c);
}

static void
test_csv_tab_custom_quote_no_header(void **state)
{
    pg_hrfeed_cfg_t *c = cfg_from(
        "{\"delimiter\":\"\\t\",\"quote\":\"'\",\"header\":false,"
        "\"columns\":[\"id\",\"n\",\"dept\"],\"key_column\":\"id\","
        "\"attributes\":{\"n\":\"name\",\"dept\":\"department\"}}");
    static const char csv[] =
        "7\t'O''Brien'\t\"quoted\" dept\n"
        "8\tSmith\t'a\tb'\n";
    pg_hrfeed_parsed_t *p = parse_ok(c, csv, sizeof(csv) - 1);

    (void)state;
    assert_int_equal(p->nrows, 2);
    assert_string_equal(attr(row(p, "7"), "name"), "O'Brien");
    /* '"' is ordinary data when the quote is '\'' */
    assert_string_equal(attr(row(p, "7"), "department"), "\"quoted\" dept");
    assert_string_equal(attr(row(p, "8"), "department"), "a\tb");
    assert_int_equal(row(p, "7")->line, 1);   /* no header line */
    assert_int_equal(row(p, "8")->line, 2);
    pg_hrfeed_parsed_free(p);
    pg_hrfeed_cfg_free(c);
}

/* Expect the error list to be exactly (line, reason) pairs. */
static void
expect_errors(const pg_hrfeed_parsed_t *p, size_t n, const unsigned long *lines,
              const char *const *reasons)
{
    size_t i;

    assert_int_equal(p->nerrors, n);
    for (i = 0; i < n; i++) {
        if (p->errors[i].line != lines[i] ||
            strcmp(p->errors[i].reason, reasons[i]) != 0) {
            fail_msg("error %zu: got line %lu \"%s\", want line %lu \"%s\"",
                     i, p->errors[i].line, p->errors[i].reason, lines[i],
                     reasons[i]);
        }
    }
}

static void
test_csv_malformed_rows(void **state)
{
    pg_hrfeed_cfg_t *c = cfg_from(SIMPLE_CFG);
    static const char csv[] =
        "id,name,mail,end\n"
        "1,Ann,a@x,\n"                 /* 2 ok */
        "2,Bob,b@x\n"                  /* 3 too few fields */
        "3,Cy,c@x,,extra\n"            /* 4 too many */
        "4,\"Di\"x,d@x,\n"             /* 5 text after quote */
        "5,E\"d,e@x,\n"                /* 6 bare quote */
        ",Fay,f@x,\n"                  /* 7 empty key */
        "7,Gil,,\n"                    /* 8 missing required */
        "8,Hal,h@x,2026-02-30\n"       /* 9 bad date */
        "9,Ida,i@x,27/11/2026\n"       /* 10 bad date format */
        "10,\xC3\x28,j@x,\n"           /* 11 invalid UTF-8 */
        "11,K\0m,k@x,\n"               /* 12 NUL byte */
        "12,Lea,l@x,2024-02-29\n"      /* 13 ok (leap day) */
        "13,\"Mo,m@x,\n";              /* 14.. unterminated quote */
    static const unsigned long lines[] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14};
    static const char *const reasons[] = {
        "expected 4 fields, found 3",
        "expected 4 fields, found 5",
        "text after the closing quote of field 2",
        "quote character inside unquoted field 2",
        "empty key in column \"id\"",
        "missing required value in column \"mail\"",
        "bad termination date \"2026-02-30\" in column \"end\" (want "
        "YYYY-MM-DD)",
        "bad termination date \"27/11/2026\" in column \"end\" (want "
        "YYYY-MM-DD)",
        "invalid UTF-8 or control character in column \"name\"",
        "NUL byte in field 2",
        "unterminated quoted field 2",
    };
    static const char *const held[] = {"10", "11", "13", "2", "3", "4", "5",
                                       "7", "8", "9"};
    pg_hrfeed_parsed_t *p = parse_ok(c, csv, sizeof(csv) - 1);
    size_t i;

    (void)state;
    assert_int_equal(p->nrecords, 13);
    assert_int_equal(p->nbad, 11);
    assert_int_equal(p->nrows, 2);
    assert_string_equal(p->rows[0].key, "1");
    assert_string_equal(p->rows[1].key, "12");
    assert_int_equal(p->rows[1].term_date, 20240229);
    expect_errors(p, 11, lines, reasons);
    /* keys that could be read are held (never turned into leaves) */
    assert_int_equal(p->nheld, sizeof(held) / sizeof(held[0]));
    for (i = 0; i < p->nheld; i++) {
        assert_string_equal(p->held[i], held[i]);
    }
    pg_hrfeed_parsed_free(p);
    pg_hrfeed_cfg_free(c);
}

static void
test_duplicate_keys(void **state)
{
    pg_hrfeed_cfg_t *c = cfg_from(SIMPLE_CFG);
    static const char csv[] =
        "id,name,mail,end\n"
        "1,Ann,a@x,\n"
        "2,Bob,b@x,\n"
        "1,Ann2,a2@x,\n"
        "3,Cy,c@x,\n"
        "1,Ann3,a3@x,\n"
        "3,Cy,c@x,x,y\n";   /* malformed, but its key is readable */
    static const unsigned long lines[] = {2, 4, 6, 7, 5};
    static const char *const reasons[] = {
        "duplicate key \"1\" (3 rows, first on line 2)",
        "duplicate key \"1\" (3 rows, first on line 2)",
        "duplicate key \"1\" (3 rows, first on line 2)",
        "expected 4 fields, found 5",
        "key \"3\" also appears on a rejected line",
    };
    pg_hrfeed_parsed_t *p = parse_ok(c, csv, sizeof(csv) - 1);
    pg_hrfeed_diff_t *d = NULL;
    pg_err_t err;
    json_t *prev = json_pack("{s:{s:s,s:s},s:{s:s,s:s},s:{s:s,s:s}}",
                             "1", "name", "Ann", "email", "a@x",
                             "2", "name", "Bob", "email", "b@x",
                             "3", "name", "Cy", "email", "c@x");
    size_t i;

    (void)state;
    assert_int_equal(p->nrows, 1);
    assert_string_equal(p->rows[0].key, "2");
    assert_int_equal(p->nbad, 5);
    /* errors: sorted by line except the row dropped for the held key,
     * which is found last; check as a set of (line, reason) */
    assert_int_equal(p->nerrors, 5);
    for (i = 0; i < 5; i++) {
        size_t k;
        int found = 0;
        for (k = 0; k < 5; k++) {
            found |= p->errors[k].line == lines[i] &&
                     strcmp(p->errors[k].reason, reasons[i]) == 0;
        }
        if (!found) {
            fail_msg("missing error line %lu: %s", lines[i], reasons[i]);
        }
        if (i > 0) {
            assert_true(p->errors[i - 1].line <= p->errors[i].line);
        }
    }
    assert_int_equal(p->nheld, 2);
    assert_string_equal(p->held[0], "1");
    assert_string_equal(p->held[1], "3");
    /* the duplicated / ambiguous people are neither left nor moved */
    assert_int_equal(pg_hrfeed_diff(c, prev, p, "2026-11-27", 0, &d, &err),
                     PG_OK);
    assert_int_equal(d->nleaves, 0);
    assert_int_equal(d->nmoves, 0);
    assert_int_equal(d->njoins, 0);
    assert_int_equal(d->unchanged, 1);
    assert_int_equal(d->held, 2);
    assert_true(json_equal(d->next, prev));
    pg_hrfeed_diff_free(d);
    json_decref(prev);
    pg_hrfeed_parsed_free(p);
    pg_hrfeed_cfg_free(c);
}

static void
test_error_cap_and_refusal(void **state)
{
    pg_hrfeed_cfg_t *c = cfg_from(
        "{\"key_column\":\"id\",\"attributes\":{\"mail\":\"email\"},"
        "\"max_errors_reported\":3,\"max_malformed_pct\":40}");
    char csv[4096];
    size_t n = 0, i;
    pg_hrfeed_parsed_t *p = NULL;
    pg_hrfeed_diff_t *d = (pg_hrfeed_diff_t *)1;
    pg_err_t err;

    (void)state;
    n += (size_t)snprintf(csv + n, sizeof(csv) - n, "id,mail\n");
    for (i = 0; i < 10; i++) {          /* 4 bad of 10 = 40%: accepted */
        n += (size_t)snprintf(csv + n, sizeof(csv) - n,
                              i < 4 ? "%zu\n" : "%zu,m%zu@x\n", i, i);
    }
    assert_int_equal(pg_hrfeed_parse(c, csv, n, &p, &err), PG_OK);
    assert_int_equal(p->nbad, 4);
    assert_int_equal(p->nerrors, 3);          /* capped */
    assert_int_equal(p->errors[0].line, 2);   /* the first ones, by line */
    assert_int_equal(p->errors[2].line, 4);
    assert_int_equal(p->nrows, 6);
    assert_int_equal(p->refused, 0);
    pg_hrfeed_parsed_free(p);

    n += (size_t)snprintf(csv + n, sizeof(csv) - n, "bad\n"); /* 5 of 11 */
    assert_int_equal(pg_hrfeed_parse(c, csv, n, &p, &err), PG_ERR_DENIED);
    assert_non_null(p);
    assert_int_equal(p->refused, 1);
    assert_string_equal(err.msg, "refused: 5 of 11 records are malformed, "
                        "over max_malformed_pct 40%; nothing may be applied");
    /* a refused export can never be turned into changes, even forced */
    assert_int_equal(pg_hrfeed_diff(c, NULL, p, "2026-11-27", 1, &d, &err),
                     PG_ERR_DENIED);
    assert_null(d);
    pg_hrfeed_parsed_free(p);
    pg_hrfeed_cfg_free(c);
}

static void
test_whole_file_errors(void **state)
{
    pg_hrfeed_cfg_t *c = cfg_from(SIMPLE_CFG);
    pg_hrfeed_parsed_t *p = (pg_hrfeed_parsed_t *)1;
    pg_err_t err;
    static const char many[] = "id,name,mail,end\n1,a,a@x,\n2,b,b@x,\n"
                               "3,c,c@x,\n";

    (void)state;
    assert_int_equal(pg_hrfeed_parse(c, "", 0, &p, &err), PG_ERR_INVALID);
    assert_null(p);
    assert_string_equal(err.msg, "file is empty: no header line");
    assert_int_equal(pg_hrfeed_parse(c, "\xEF\xBB\xBF\r\n\n", 6, &p, &err),
                     PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_parse(c, "id,name,end\n1,a,\n", 17, &p, &err),
                     PG_ERR_INVALID);
    assert_string_equal(err.msg, "header: column \"mail\" is missing");
    assert_int_equal(pg_hrfeed_parse(c, "id,name,mail,end,id\n", 20, &p, &err),
                     PG_ERR_INVALID);
    assert_string_equal(err.msg, "header: column \"id\" appears more than "
                        "once");
    assert_int_equal(pg_hrfeed_parse(c, "id,\"name,mail,end\n", 18, &p, &err),
                     PG_ERR_INVALID);
    assert_string_equal(err.msg, "header (line 1): unterminated quoted "
                        "field 2");
    assert_null(p);

    /* size cap checked before parsing; row cap */
    c->max_file_bytes = 10;
    assert_int_equal(pg_hrfeed_parse(c, many, sizeof(many) - 1, &p, &err),
                     PG_ERR_TOO_LARGE);
    assert_string_equal(err.msg, "file is 44 bytes, over max_file_bytes 10");
    c->max_file_bytes = 1000;
    c->max_rows = 2;
    assert_int_equal(pg_hrfeed_parse(c, many, sizeof(many) - 1, &p, &err),
                     PG_ERR_TOO_LARGE);
    assert_string_equal(err.msg, "more than max_rows 2 records (line 4)");
    assert_null(p);
    c->max_rows = 3;
    p = parse_ok(c, many, sizeof(many) - 1);
    assert_int_equal(p->nrows, 3);
    pg_hrfeed_parsed_free(p);
    pg_hrfeed_cfg_free(c);
}

static void
test_dates(void **state)
{
    uint32_t d;

    (void)state;
    assert_int_equal(pg_hrfeed_date("2024-02-29", 10, &d), PG_OK);
    assert_int_equal(d, 20240229);
    assert_int_equal(pg_hrfeed_date("2000-02-29", 10, &d), PG_OK);
    assert_int_equal(pg_hrfeed_date("1900-02-29", 10, &d), PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_date("2023-02-29", 10, &d), PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_date("2023-04-31", 10, &d), PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_date("2023-12-31", 10, &d), PG_OK);
    assert_int_equal(d, 20231231);
    assert_int_equal(pg_hrfeed_date("2023-13-01", 10, &d), PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_date("2023-00-01", 10, &d), PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_date("2023-01-00", 10, &d), PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_date("2023-1-01", 9, &d), PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_date("2023/01/01", 10, &d), PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_date("+023-01-01", 10, &d), PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_date("2023-01-01T", 11, &d), PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_date("2023-01-01", 9, &d), PG_ERR_INVALID);
}

/* ---- snapshots and the diff ------------------------------------------ */

static void
test_snapshot_parse(void **state)
{
    json_t *j = (json_t *)1;
    pg_err_t err;

    (void)state;
    assert_int_equal(pg_hrfeed_snapshot_parse("{}", 2, 10, &j, &err), PG_OK);
    assert_int_equal(json_object_size(j), 0);
    json_decref(j);
    assert_int_equal(pg_hrfeed_snapshot_parse("{\"a\":{}}", 8, 4, &j, &err),
                     PG_ERR_TOO_LARGE);
    assert_null(j);
    assert_int_equal(pg_hrfeed_snapshot_parse("[]", 2, 10, &j, &err),
                     PG_ERR_INVALID);
    assert_string_equal(err.msg, "snapshot: must be a JSON object");
    assert_int_equal(pg_hrfeed_snapshot_parse("{\"a\":1}", 7, 10, &j, &err),
                     PG_ERR_INVALID);
    assert_string_equal(err.msg, "snapshot: \"a\" must be an object");
    assert_int_equal(pg_hrfeed_snapshot_parse("{\"a\":{\"x\":2}}", 13, 100,
                                              &j, &err), PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_snapshot_parse("{\"a\":{\"x\":\"\\u0000\"}}",
                                              21, 100, &j, &err),
                     PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_snapshot_parse("{\"a\":{},\"a\":{}}", 15, 100,
                                              &j, &err), PG_ERR_INVALID);
    assert_int_equal(pg_hrfeed_snapshot_parse("{\"\":{}}", 7, 100, &j, &err),
                     PG_ERR_INVALID);
    assert_null(j);
}

/* The fixture days: day 1 from nothing, then day 2 against day 1. */
static void
test_diff_fixture_days(void **state)
{
    pg_hrfeed_cfg_t *c = fixture_cfg();
    size_t n;
    char *csv = fixture("export-day1.csv", &n);
    char *snap = fixture("snapshot-day1.json", &n);
    pg_hrfeed_parsed_t *p;
    pg_hrfeed_diff_t *d = NULL;
    json_t *want;
    pg_err_t err;
    const pg_hrfeed_move_t *m;

    (void)state;
    assert_int_equal(pg_hrfeed_snapshot_parse(snap, n, 1 << 20, &want, &err),
                     PG_OK);
    free(snap);
    p = parse_ok(c, csv, strlen(csv));
    free(csv);
    assert_int_equal(pg_hrfeed_diff(c, NULL, p, "2026-11-26", 0, &d, &err),
                     PG_OK);
    assert_int_equal(d->njoins, 4);     /* E003 leaves in 2099: still joins */
    assert_string_equal(d->joins[0].key, "E001");
    assert_string_equal(d->joins[3].key, "E004");
    assert_int_equal(d->nmoves + d->nleaves + d->unchanged, 0);
    assert_true(json_equal(d->next, want));
    pg_hrfeed_diff_free(d);
    pg_hrfeed_parsed_free(p);

    csv = fixture("export-day2.csv", &n);
    p = parse_ok(c, csv, n);
    free(csv);
    assert_int_equal(p->nbad, 2);
    assert_int_equal(p->errors[0].line, 7);
    assert_string_equal(p->errors[0].reason,
                        "missing required value in column \"email\"");
    assert_int_equal(p->errors[1].line, 9);
    assert_int_equal(pg_hrfeed_diff(c, want, p, "2026-11-27", 0, &d, &err),
                     PG_OK);
    assert_int_equal(d->njoins, 1);
    assert_string_equal(d->joins[0].key, "E005");
    assert_string_equal(json_string_value(json_object_get(d->joins[0].attrs,
                                                          "email")),
                        "barbara@example.com");
    assert_int_equal(d->nmoves, 1);
    m = &d->moves[0];
    assert_string_equal(m->key, "E001");
    assert_int_equal(m->nchanges, 1);
    assert_string_equal(m->changes[0].attr, "title");
    assert_string_equal(m->changes[0].old_value, "Analyst");
    assert_string_equal(m->changes[0].new_value, "Lead Analyst");
    assert_int_equal(d->nleaves, 2);
    assert_string_equal(d->leaves[0].key, "E002");  /* ends today */
    assert_int_equal(d->leaves[0].reason, PG_HRFEED_LEAVE_TERMINATED);
    assert_int_equal(d->leaves[0].term_date, 20261127);
    assert_string_equal(d->leaves[1].key, "E004");  /* gone */
    assert_int_equal(d->leaves[1].reason, PG_HRFEED_LEAVE_GONE);
    assert_string_equal(json_string_value(json_object_get(d->leaves[1].attrs,
                                                          "email")),
                        "edsger@example.com");
    assert_int_equal(d->unchanged, 1);              /* E003, ends 2099 */
    assert_int_equal(d->terminated_absent, 1);      /* E007 left in 2020 */
    assert_int_equal(d->nerrors, 2);
    assert_int_equal(d->errors[1].line, 9);
    assert_int_equal(d->nbad, 2);
    /* next snapshot: E001 (new title), E003, E005 */
    assert_int_equal(json_object_size(d->next), 3);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(d->next, "E001"), "title")),
                        "Lead Analyst");
    assert_non_null(json_object_get(d->next, "E003"));
    assert_non_null(json_object_get(d->next, "E005"));
    pg_hrfeed_diff_free(d);

    /* the same export one day earlier: E002 is not gone yet, but its
     * record changed (the end date appeared) so it is a move */
    assert_int_equal(pg_hrfeed_diff(c, want, p, "2026-11-26", 0, &d, &err),
                     PG_OK);
    assert_int_equal(d->nleaves, 1);
    assert_string_equal(d->leaves[0].key, "E004");
    assert_int_equal(d->nmoves, 2);
    assert_string_equal(d->moves[1].key, "E002");
    assert_string_equal(d->moves[1].changes[0].attr, "end_date");
    assert_string_equal(d->moves[1].changes[0].old_value, "");
    assert_string_equal(d->moves[1].changes[0].new_value, "2026-11-27");
    assert_string_equal(d->moves[1].changes[1].attr, "title");
    pg_hrfeed_diff_free(d);
    json_decref(want);
    pg_hrfeed_parsed_free(p);
    pg_hrfeed_cfg_free(c);
}

static void
test_termination_past_future(void **state)
{
    pg_hrfeed_cfg_t *c = cfg_from(SIMPLE_CFG);
    static const char csv[] = "id,name,mail,end\n"
                              "a,A,a@x,2026-11-26\n"    /* yesterday */
                              "b,B,b@x,2026-11-27\n"    /* today */
                              "c,C,c@x,2026-11-28\n"    /* tomorrow */
                              "d,D,d@x,2026-11-28\n"    /* tomorrow, new */
                              "e,E,e@x,2020-01-01\n";   /* long gone, new */
    json_t *prev = json_pack("{s:{s:s,s:s},s:{s:s,s:s},s:{s:s,s:s}}",
                             "a", "name", "A", "email", "a@x",
                             "b", "name", "B", "email", "b@x",
                             "c", "name", "C", "email", "c@x");
    pg_hrfeed_parsed_t *p = parse_ok(c, csv, sizeof(csv) - 1);
    pg_hrfeed_diff_t *d = NULL;
    pg_err_t err;

    (void)state;
    assert_int_equal(pg_hrfeed_diff(c, prev, p, "2026-11-27", 0, &d, &err),
                     PG_OK);
    assert_int_equal(d->nleaves, 2);
    assert_string_equal(d->leaves[0].key, "a");
    assert_int_equal(d->leaves[0].reason, PG_HRFEED_LEAVE_TERMINATED);
    assert_int_equal(d->leaves[0].term_date, 20261126);
    assert_string_equal(d->leaves[1].key, "b");
    assert_int_equal(d->unchanged, 1);          /* c: future date */
    assert_int_equal(d->njoins, 1);
    assert_string_equal(d->joins[0].key, "d");
    assert_int_equal(d->terminated_absent, 1);  /* e */
    assert_int_equal(json_object_size(d->next), 2);
    pg_hrfeed_diff_free(d);

    /* one day later c and d are gone too */
    assert_int_equal(pg_hrfeed_diff(c, prev, p, "2026-11-28", 0, &d, &err),
                     PG_OK);
    assert_int_equal(d->nleaves, 3);
    assert_int_equal(d->njoins, 0);
    assert_int_equal(d->terminated_absent, 2);
    pg_hrfeed_diff_free(d);

    d = (pg_hrfeed_diff_t *)1;
    assert_int_equal(pg_hrfeed_diff(c, prev, p, "2026-11-31", 0, &d, &err),
                     PG_ERR_INVALID);
    assert_null(d);
    json_decref(prev);
    pg_hrfeed_parsed_free(p);
    pg_hrfeed_cfg_free(c);
}

/* prev with n people "p000".."p<n-1>", all with name N and mail M */
static json_t *
people(size_t n)
{
    json_t *o = json_object();
    size_t i;
    char k[32];

    for (i = 0; i < n; i++) {
        snprintf(k, sizeof(k), "p%03zu", i);
        json_object_set_new(o, k, json_pack("{s:s,s:s}", "name", "N",
                                            "email", "M"));
    }
    return o;
}

static void
test_mass_leave_guard(void **state)
{
    pg_hrfeed_cfg_t *c = cfg_from(
        "{\"key_column\":\"id\",\"attributes\":{\"name\":\"name\","
        "\"mail\":\"email\"},\"max_leave_pct\":10}");
    json_t *prev = people(20);
    char csv[2048];
    size_t n = 0, i;
    pg_hrfeed_parsed_t *p;
    pg_hrfeed_diff_t *d = NULL;
    pg_err_t err;

    (void)state;
    n += (size_t)snprintf(csv + n, sizeof(csv) - n, "id,name,mail\n");
    for (i = 0; i < 18; i++) {                  /* 2 of 20 leave: 10% */
        n += (size_t)snprintf(csv + n, sizeof(csv) - n, "p%03zu,N,M\n", i);
    }
    p = parse_ok(c, csv, n);
    assert_int_equal(pg_hrfeed_diff(c, prev, p, "2026-11-27", 0, &d, &err),
                     PG_OK);
    assert_int_equal(d->nleaves, 2);
    assert_string_equal(d->leaves[0].key, "p018");
    assert_int_equal(d->unchanged, 18);
    pg_hrfeed_diff_free(d);
    pg_hrfeed_parsed_free(p);

    /* a truncated export: 3 of 20 leave (15%) -> refused unless forced */
    p = parse_ok(c, csv, n - strlen("p017,N,M\n"));
    assert_int_equal(pg_hrfeed_diff(c, prev, p, "2026-11-27", 0, &d, &err),
                     PG_ERR_DENIED);
    assert_non_null(d);
    assert_int_equal(d->refused, 1);
    assert_int_equal(d->nleaves, 3);
    assert_string_equal(err.msg, "refused: 3 leaves of 20 people exceed "
                        "max_leave_pct 10% (mass-leave guard); force to "
                        "apply");
    pg_hrfeed_diff_free(d);
    assert_int_equal(pg_hrfeed_diff(c, prev, p, "2026-11-27", 1, &d, &err),
                     PG_OK);
    assert_int_equal(d->refused, 0);
    assert_int_equal(d->nleaves, 3);
    assert_int_equal(json_object_size(d->next), 17);
    pg_hrfeed_diff_free(d);
    pg_hrfeed_parsed_free(p);

    /* header only (export cut after the first line): everyone would leave */
    p = parse_ok(c, "id,name,mail\n", 13);
    assert_int_equal(pg_hrfeed_diff(c, prev, p, "2026-11-27", 0, &d, &err),
                     PG_ERR_DENIED);
    assert_int_equal(d->nleaves, 20);
    pg_hrfeed_diff_free(d);
    pg_hrfeed_parsed_free(p);

    /* first import: no previous people, nothing to guard */
    p = parse_ok(c, csv, n);
    assert_int_equal(pg_hrfeed_diff(c, NULL, p, "2026-11-27", 0, &d, &err),
                     PG_OK);
    assert_int_equal(d->njoins, 18);
    pg_hrfeed_diff_free(d);
    pg_hrfeed_parsed_free(p);
    json_decref(prev);
    pg_hrfeed_cfg_free(c);
}

/* Serialise a diff for comparisons (lists in order). */
static char *
diff_text(const pg_hrfeed_diff_t *d)
{
    json_t *o = json_object(), *a;
    size_t i, k;
    char *s;

    a = json_array();
    for (i = 0; i < d->njoins; i++) {
        json_array_append_new(a, json_string(d->joins[i].key));
    }
    json_object_set_new(o, "joins", a);
    a = json_array();
    for (i = 0; i < d->nmoves; i++) {
        json_t *m = json_pack("{s:s,s:[]}", "key", d->moves[i].key, "c");
        for (k = 0; k < d->moves[i].nchanges; k++) {
            json_array_append_new(json_object_get(m, "c"), json_pack(
                "[s,s?,s?]", d->moves[i].changes[k].attr,
                d->moves[i].changes[k].old_value,
                d->moves[i].changes[k].new_value));
        }
        json_array_append_new(a, m);
    }
    json_object_set_new(o, "moves", a);
    a = json_array();
    for (i = 0; i < d->nleaves; i++) {
        json_array_append_new(a, json_pack("[s,i]", d->leaves[i].key,
                                           (int)d->leaves[i].reason));
    }
    json_object_set_new(o, "leaves", a);
    json_object_set_new(o, "next", json_incref(d->next));
    s = json_dumps(o, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(o);
    assert_non_null(s);
    return s;
}

static void
test_diff_deterministic_and_attr_sets(void **state)
{
    pg_hrfeed_cfg_t *c = cfg_from(SIMPLE_CFG);
    static const char a[] = "id,name,mail,end\nz,Z,z@x,\nb,B2,b@x,\n"
                            "m,M,m@x,\n";
    static const char b[] = "end,mail,id,name\n,m@x,m,M\n,b@x,b,B2\n"
                            ",z@x,z,Z\n";   /* same data, other order */
    json_t *prev = json_pack("{s:{s:s,s:s},s:{s:s,s:s},s:{s:s,s:s}}",
                             "b", "name", "B", "email", "b@x",
                             "y", "name", "Y", "email", "y@x",
                             "m", "name", "M", "legacy", "old");
    pg_hrfeed_parsed_t *p1 = parse_ok(c, a, sizeof(a) - 1);
    pg_hrfeed_parsed_t *p2 = parse_ok(c, b, sizeof(b) - 1);
    pg_hrfeed_diff_t *d1 = NULL, *d2 = NULL;
    pg_err_t err;
    char *t1, *t2;

    (void)state;
    assert_int_equal(pg_hrfeed_diff(c, prev, p1, "2026-11-27", 1, &d1, &err),
                     PG_OK);
    assert_int_equal(pg_hrfeed_diff(c, prev, p2, "2026-11-27", 1, &d2, &err),
                     PG_OK);
    t1 = diff_text(d1);
    t2 = diff_text(d2);
    assert_string_equal(t1, t2);
    assert_string_equal(t1,
        "{\"joins\":[\"z\"],\"leaves\":[[\"y\",1]],"
        "\"moves\":[{\"c\":[[\"name\",\"B\",\"B2\"]],\"key\":\"b\"},"
        "{\"c\":[[\"email\",null,\"m@x\"],[\"legacy\",\"old\",null]],"
        "\"key\":\"m\"}],"
        "\"next\":{\"b\":{\"email\":\"b@x\",\"name\":\"B2\"},"
        "\"m\":{\"email\":\"m@x\",\"name\":\"M\"},"
        "\"z\":{\"email\":\"z@x\",\"name\":\"Z\"}}}");
    free(t1);
    free(t2);
    pg_hrfeed_diff_free(d1);
    pg_hrfeed_diff_free(d2);
    pg_hrfeed_parsed_free(p1);
    pg_hrfeed_parsed_free(p2);
    json_decref(prev);
    pg_hrfeed_cfg_free(c);
}

static double
now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 10,000 rows: parse + diff against a 10,000-person snapshot with 100
 * moves, 50 leaves, 50 joins; must finish well inside the time bound. */
static void
test_10k_rows_time(void **state)
{
    pg_hrfeed_cfg_t *c = cfg_from(
        "{\"key_column\":\"id\",\"attributes\":{\"id\":\"employee_id\","
        "\"first\":\"given_name\",\"last\":\"family_name\",\"mail\":"
        "\"email\",\"dept\":\"department\",\"title\":\"title\"},"
        "\"termination_column\":\"end\",\"required_columns\":[\"mail\"]}");
    size_t cap = 2u * 1024u * 1024u, n = 0, i;
    char *csv = malloc(cap);
    json_t *prev = json_object();
    pg_hrfeed_parsed_t *p;
    pg_hrfeed_diff_t *d = NULL;
    pg_err_t err;
    double t0, t1, t2;
    char k[32];

    (void)state;
    assert_non_null(csv);
    n += (size_t)snprintf(csv + n, cap - n,
                          "id,first,last,mail,dept,title,end\r\n");
    for (i = 0; i < 10000; i++) {
        size_t id = i < 9950 ? i : i + 100;           /* 50 joins */
        n += (size_t)snprintf(csv + n, cap - n,
                              "E%06zu,First%zu,\"Last, %zu\",e%zu@corp.example,"
                              "\"Dept \"\"%zu\"\"\",%s,%s\r\n", id, id, id, id,
                              id % 40, id % 100 == 7 ? "Senior" : "Engineer",
                              id % 1000 == 3 ? "2099-01-01" : "");
    }
    for (i = 0; i < 10000; i++) {                     /* 50 gone */
        snprintf(k, sizeof(k), "E%06zu", i);
        char first[32], last[32], mail[48], dept[32];
        snprintf(first, sizeof(first), "First%zu", i);
        snprintf(last, sizeof(last), "Last, %zu", i);
        snprintf(mail, sizeof(mail), "e%zu@corp.example", i);
        snprintf(dept, sizeof(dept), "Dept \"%zu\"", i % 40);
        json_object_set_new(prev, k, json_pack(
            "{s:s,s:s,s:s,s:s,s:s,s:s}", "employee_id", k, "given_name",
            first, "family_name", last, "email", mail, "department", dept,
            "title", "Engineer"));
    }
    t0 = now_s();
    assert_int_equal(pg_hrfeed_parse(c, csv, n, &p, &err), PG_OK);
    t1 = now_s();
    assert_int_equal(pg_hrfeed_diff(c, prev, p, "2026-11-27", 0, &d, &err),
                     PG_OK);
    t2 = now_s();
    assert_int_equal(p->nrows, 10000);
    assert_int_equal(d->njoins, 50);
    assert_int_equal(d->nleaves, 50);
    assert_int_equal(d->nmoves, 100);      /* ids %100==7 below 9950 */
    assert_string_equal(d->moves[0].changes[0].attr, "title");
    assert_int_equal(d->unchanged, 10000 - 50 - 100);
    print_message("hrfeed 10k rows (%zu bytes): parse %.1f ms, diff %.1f ms,"
                  " %.1f MB/s parse\n", n, (t1 - t0) * 1e3, (t2 - t1) * 1e3,
                  (double)n / (t1 - t0) / 1e6);
    assert_true(t2 - t0 < 1.0);     /* measured ~40 ms -O2, ~95 ms ASan */
    pg_hrfeed_diff_free(d);
    pg_hrfeed_parsed_free(p);
    json_decref(prev);
    free(csv);
    pg_hrfeed_cfg_free(c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cfg_defaults_and_fixture),
        cmocka_unit_test(test_cfg_errors),
        cmocka_unit_test(test_csv_quotes_crlf_bom),
        cmocka_unit_test(test_csv_tab_custom_quote_no_header),
        cmocka_unit_test(test_csv_malformed_rows),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_error_cap_and_refusal),
        cmocka_unit_test(test_whole_file_errors),
        cmocka_unit_test(test_dates),
        cmocka_unit_test(test_snapshot_parse),
        cmocka_unit_test(test_diff_fixture_days),
        cmocka_unit_test(test_termination_past_future),
        cmocka_unit_test(test_mass_leave_guard),
        cmocka_unit_test(test_diff_deterministic_and_attr_sets),
        cmocka_unit_test(test_10k_rows_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
