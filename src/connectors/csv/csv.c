/*
 * provgate connectors: the delimited-text ("csv") connector.
 *
 * The file holds the desired accounts of one target, one row each, in the
 * configured column order (include/provgate/csvconn.h). Every operation
 * reads the whole file (bounded by max_bytes / max_rows), parses it with
 * the strict RFC 4180 parser below, changes one row in memory and, only if
 * something changed, writes the new version atomically:
 *
 *   open("<dir>/.<name>.<pid>.<random>.tmp", O_CREAT|O_EXCL, mode)
 *   write everything, fsync, close, rename over <path>, fsync(<dir>)
 *
 * so the importer sees the old or the new file, never a half-written one,
 * and a crash leaves at worst a stray temp file (never the real one
 * damaged). Operations run from a 0 ms host timer on the loop thread;
 * the write operations pending then form one batch (run_batch), so two
 * operations of this process never interleave; other
 * processes are kept out by flock() on "<dir>/.<name>.lock" (config
 * "lock", default on). Readers need no lock: rename is atomic.
 *
 * Formula injection: a spreadsheet evaluates a cell starting with
 * = + - @ (and TAB/CR as a lead-in). formula_guard "quote" (default)
 * prefixes such a cell with one apostrophe on write and strips it on read
 * (a value made of apostrophes followed by a trigger gets one more
 * apostrophe, so the mapping is reversible); "refuse" fails the operation
 * with PG_ERR_INVALID when a new value would start with a trigger; "off"
 * writes values as they are.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "provgate/csvconn.h"

#define CSV_NAME_MAX   128   /* column name length cap */
#define CSV_GSEP_MAX   8     /* groups separator length cap */
#define CSV_PATH_MAX   3072  /* configured path length cap */

enum { COL_KEY, COL_ACTIVE, COL_GROUPS, COL_ATTR };
enum { GUARD_QUOTE, GUARD_REFUSE, GUARD_OFF };
enum { OP_ENSURE, OP_DISABLE, OP_REMOVE, OP_LIST };

typedef struct csv_col {
    char *name;
    int kind;
} csv_col_t;

typedef struct csv_conn {
    pg_connector_t base;       /* must be first */
    char *path;
    char *dir;
    char *fname;               /* last path component */
    char delim;
    char gsep[CSV_GSEP_MAX + 1];
    size_t gseplen;
    int header;
    mode_t mode;
    int crlf;
    int guard;
    int lock;                  /* flock a ".<name>.lock" file per write */
    unsigned max_rows;
    unsigned max_bytes;
    size_t ncols;
    csv_col_t cols[PG_CSV_MAX_COLUMNS];
    int key_col;
    int active_col;            /* -1 when absent */
    int groups_col;            /* -1 when absent */
    pg_conn_req_t *reqs;       /* live requests, newest first */
    uint64_t seq;              /* creation counter (batch order) */
} csv_conn_t;

/* One parsed row: ncols malloc'd NUL-terminated cells (decoded). */
typedef struct csv_row {
    char **cells;
    unsigned line;             /* first physical line of the record */
} csv_row_t;

typedef struct csv_table {
    csv_row_t *rows;
    size_t n, cap;
} csv_table_t;

struct pg_conn_req {
    csv_conn_t *c;
    int op;
    char *key;
    json_t *attrs;             /* deep copy, or NULL */
    char **groups;
    size_t ngroups;
    char **revoke;
    size_t nrevoke;
    int active;
    pg_conn_cb cb;
    pg_conn_page_cb page;
    pg_conn_done_cb done;
    void *arg;
    pg_timer_t *timer;
    csv_table_t table;         /* list: rows being delivered */
    size_t next_row;
    int loaded;
    int in_cb;                 /* inside a page callback */
    int cancelled;             /* cancel() called from inside it */
    uint64_t seq;              /* order of creation */
    int batched;               /* result computed, callback pending */
    pg_status_t rst;           /* the result (ensure/disable/remove) */
    pg_conn_outcome_t rout;
    json_t *rchanges;          /* owned, or NULL */
    int rretry;
    char rerr[PG_CONN_ERROR_MAX];
    pg_conn_req_t *prev, *next;
};

/* ---- growable byte buffer ------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    size_t limit;              /* hard cap on len */
    int oom;                   /* allocation failed */
    int over;                  /* limit exceeded */
} sbuf_t;

/* Append n bytes; on failure sets oom/over and keeps the old contents. */
static void
sb_add(sbuf_t *b, const char *s, size_t n)
{
    if (b->oom || b->over) {
        return;
    }
    if (n > b->limit - b->len) {
        b->over = 1;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap == 0 ? 256 : b->cap;
        char *np;
        while (ncap < b->len + n + 1) {
            ncap *= 2;
        }
        np = realloc(b->p, ncap);
        if (np == NULL) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Append a NUL-terminated string (see sb_add). */
static void
sb_str(sbuf_t *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* ---- tables --------------------------------------------------------- */

/* Free the cells of r (ncols of them) and its array; r stays usable. */
static void
row_free(csv_row_t *r, size_t ncols)
{
    size_t i;

    if (r->cells == NULL) {
        return;
    }
    for (i = 0; i < ncols; i++) {
        free(r->cells[i]);
    }
    free(r->cells);
    r->cells = NULL;
}

/* Free every row and the array; t is left empty. */
static void
table_free(csv_table_t *t, size_t ncols)
{
    size_t i;

    for (i = 0; i < t->n; i++) {
        row_free(&t->rows[i], ncols);
    }
    free(t->rows);
    memset(t, 0, sizeof(*t));
}

/* Append r (ownership moves to t). PG_ERR_NOMEM leaves r to the caller. */
static pg_status_t
table_push(csv_table_t *t, csv_row_t *r)
{
    if (t->n == t->cap) {
        size_t ncap = t->cap == 0 ? 16 : t->cap * 2;
        csv_row_t *nr = realloc(t->rows, ncap * sizeof(*nr));
        if (nr == NULL) {
            return PG_ERR_NOMEM;
        }
        t->rows = nr;
        t->cap = ncap;
    }
    t->rows[t->n++] = *r;
    r->cells = NULL;
    return PG_OK;
}

/* ---- formula guard -------------------------------------------------- */

/* 1 for a byte that makes a spreadsheet evaluate a cell. */
static int
is_trigger(char ch)
{
    return ch == '=' || ch == '+' || ch == '-' || ch == '@' || ch == '\t'
           || ch == '\r';
}

/* 1 when the value needs one apostrophe in front (quote mode): any
 * number of leading apostrophes followed by a trigger byte. */
static int
needs_guard(const char *v)
{
    size_t n = 0;

    while (v[n] == '\'') {
        n++;
    }
    return is_trigger(v[n]);
}

/* ---- parser --------------------------------------------------------- */

/*
 * Parse buf[0..len) as RFC 4180 records of exactly ncols fields into t
 * (empty on entry). Quoted fields may hold the delimiter, "" and line
 * breaks; a quote inside an unquoted field, text after a closing quote, a
 * bare CR, a NUL byte, a wrong field count or more than max_rows records
 * are errors: PG_ERR_INVALID (PG_ERR_TOO_LARGE for the row cap: max_rows
 * records, header included) with "line N: <why>" in err. A leading UTF-8
 * byte order mark is skipped. In quote-guard mode one leading apostrophe is
 * stripped from guarded cells. On error t is freed.
 */
static pg_status_t
csv_parse(const csv_conn_t *c, const char *buf, size_t len, size_t max_rows,
          csv_table_t *t, pg_err_t *err)
{
    size_t pos = 0;
    unsigned line = 1;
    sbuf_t f;
    csv_row_t row;
    pg_status_t st = PG_OK;

    memset(&f, 0, sizeof(f));
    memset(&row, 0, sizeof(row));
    f.limit = len + 1;
    /* a UTF-8 byte order mark (spreadsheet exports) is not data */
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) {
        pos = 3;
    }
    while (pos < len) {
        size_t nf = 0;
        int end = 0;

        row.line = line;
        row.cells = calloc(c->ncols, sizeof(char *));
        if (row.cells == NULL) {
            st = PG_ERR_NOMEM;
            goto fail;
        }
        if (t->n >= max_rows) {
            pg_err_set(err, "line %u: more than max_rows (%u) rows", line,
                       c->max_rows);
            st = PG_ERR_TOO_LARGE;
            goto fail;
        }
        while (!end) {
            f.len = 0;
            sb_add(&f, "", 0);
            if (pos < len && buf[pos] == '"') {
                unsigned qline = line;
                pos++;
                for (;;) {
                    if (pos >= len) {
                        pg_err_set(err, "line %u: unterminated quoted field",
                                   qline);
                        st = PG_ERR_INVALID;
                        goto fail;
                    }
                    if (buf[pos] == '"') {
                        if (pos + 1 < len && buf[pos + 1] == '"') {
                            sb_add(&f, "\"", 1);
                            pos += 2;
                            continue;
                        }
                        pos++;
                        break;
                    }
                    if (buf[pos] == '\0') {
                        pg_err_set(err, "line %u: NUL byte", line);
                        st = PG_ERR_INVALID;
                        goto fail;
                    }
                    if (buf[pos] == '\n') {
                        line++;
                    }
                    sb_add(&f, buf + pos, 1);
                    pos++;
                }
                if (pos < len && buf[pos] != c->delim && buf[pos] != '\n'
                    && !(buf[pos] == '\r' && pos + 1 < len
                         && buf[pos + 1] == '\n')) {
                    pg_err_set(err, "line %u: unexpected character after "
                               "closing quote", line);
                    st = PG_ERR_INVALID;
                    goto fail;
                }
            } else {
                while (pos < len && buf[pos] != c->delim && buf[pos] != '\n') {
                    if (buf[pos] == '\r') {
                        if (pos + 1 < len && buf[pos + 1] == '\n') {
                            break;
                        }
                        pg_err_set(err, "line %u: bare carriage return",
                                   line);
                        st = PG_ERR_INVALID;
                        goto fail;
                    }
                    if (buf[pos] == '"') {
                        pg_err_set(err, "line %u: quote inside an unquoted "
                                   "field", line);
                        st = PG_ERR_INVALID;
                        goto fail;
                    }
                    if (buf[pos] == '\0') {
                        pg_err_set(err, "line %u: NUL byte", line);
                        st = PG_ERR_INVALID;
                        goto fail;
                    }
                    sb_add(&f, buf + pos, 1);
                    pos++;
                }
            }
            if (f.oom || f.over) {
                st = PG_ERR_NOMEM;
                goto fail;
            }
            if (nf >= c->ncols) {
                pg_err_set(err, "line %u: more than %zu fields", row.line,
                           c->ncols);
                st = PG_ERR_INVALID;
                goto fail;
            }
            {
                const char *v = f.p;
                if (c->guard == GUARD_QUOTE && v[0] == '\''
                    && needs_guard(v + 1)) {
                    v++;
                }
                row.cells[nf] = strdup(v);
                if (row.cells[nf] == NULL) {
                    st = PG_ERR_NOMEM;
                    goto fail;
                }
                nf++;
            }
            if (pos >= len) {
                end = 1;
            } else if (buf[pos] == c->delim) {
                pos++;
                if (pos >= len) {
                    /* "a,b," at the very end: one more, empty field */
                    if (nf >= c->ncols) {
                        pg_err_set(err, "line %u: more than %zu fields",
                                   row.line, c->ncols);
                        st = PG_ERR_INVALID;
                        goto fail;
                    }
                    row.cells[nf] = strdup("");
                    if (row.cells[nf] == NULL) {
                        st = PG_ERR_NOMEM;
                        goto fail;
                    }
                    nf++;
                    end = 1;
                }
            } else {
                pos += buf[pos] == '\r' ? 2 : 1;
                line++;
                end = 1;
            }
        }
        if (nf != c->ncols) {
            pg_err_set(err, "line %u: %zu fields, expected %zu", row.line, nf,
                       c->ncols);
            st = PG_ERR_INVALID;
            goto fail;
        }
        st = table_push(t, &row);
        if (st != PG_OK) {
            goto fail;
        }
    }
    free(f.p);
    return PG_OK;

fail:
    row_free(&row, c->ncols);
    table_free(t, c->ncols);
    free(f.p);
    return st;
}

/* "true"/"false", "1"/"0", "yes"/"no" (any case) into *out; -1 otherwise. */
static int
parse_bool(const char *v, int *out)
{
    if (strcasecmp(v, "true") == 0 || strcmp(v, "1") == 0
        || strcasecmp(v, "yes") == 0) {
        *out = 1;
        return 0;
    }
    if (strcasecmp(v, "false") == 0 || strcmp(v, "0") == 0
        || strcasecmp(v, "no") == 0) {
        *out = 0;
        return 0;
    }
    return -1;
}

/* qsort_r comparator of row pointers by the key cell (ctx: key column). */
static int
row_cmp_key(const void *a, const void *b, void *ctx)
{
    int k = *(const int *) ctx;
    const csv_row_t *ra = *(const csv_row_t *const *) a;
    const csv_row_t *rb = *(const csv_row_t *const *) b;

    return strcmp(ra->cells[k], rb->cells[k]);
}

/*
 * Read and parse the current file into t. A missing file is an empty
 * table. Checks the header (when configured), removes it from t, and
 * checks keys (non-empty, unique) and active values. Errors: PG_ERR_IO
 * (retryable), PG_ERR_TOO_LARGE, PG_ERR_INVALID with "<path>: line N: ..."
 * in err.
 */
static pg_status_t
csv_load(const csv_conn_t *c, csv_table_t *t, pg_err_t *err)
{
    struct stat sb;
    char *buf = NULL;
    size_t len = 0, i;
    pg_status_t st;
    pg_err_t e;
    csv_row_t **sorted = NULL;
    int k = c->key_col;

    memset(t, 0, sizeof(*t));
    if (stat(c->path, &sb) != 0 && errno == ENOENT) {
        return PG_OK;
    }
    e.msg[0] = '\0';
    st = pg_read_file(c->path, c->max_bytes, 0, &buf, &len, &e);
    if (st != PG_OK) {
        pg_err_set(err, "%s", e.msg);
        return st;
    }
    st = csv_parse(c, buf, len, (size_t) c->max_rows + (c->header ? 1 : 0),
                   t, &e);
    free(buf);
    if (st != PG_OK) {
        pg_err_set(err, "%s: %s", c->path,
                   st == PG_ERR_NOMEM ? "out of memory" : e.msg);
        return st;
    }
    if (c->header && t->n > 0) {
        for (i = 0; i < c->ncols; i++) {
            if (strcmp(t->rows[0].cells[i], c->cols[i].name) != 0) {
                pg_err_set(err, "%s: line 1: header does not match the "
                           "configured columns (column %zu is \"%.64s\", "
                           "expected \"%s\")", c->path, i + 1,
                           t->rows[0].cells[i], c->cols[i].name);
                table_free(t, c->ncols);
                return PG_ERR_INVALID;
            }
        }
        row_free(&t->rows[0], c->ncols);
        memmove(t->rows, t->rows + 1, (t->n - 1) * sizeof(*t->rows));
        t->n--;
    }
    for (i = 0; i < t->n; i++) {
        int b;
        if (t->rows[i].cells[k][0] == '\0') {
            pg_err_set(err, "%s: line %u: empty key", c->path,
                       t->rows[i].line);
            table_free(t, c->ncols);
            return PG_ERR_INVALID;
        }
        if (c->active_col >= 0
            && parse_bool(t->rows[i].cells[c->active_col], &b) != 0) {
            pg_err_set(err, "%s: line %u: bad active value \"%.32s\"",
                       c->path, t->rows[i].line,
                       t->rows[i].cells[c->active_col]);
            table_free(t, c->ncols);
            return PG_ERR_INVALID;
        }
    }
    if (t->n > 1) {
        sorted = malloc(t->n * sizeof(*sorted));
        if (sorted == NULL) {
            table_free(t, c->ncols);
            return PG_ERR_NOMEM;
        }
        for (i = 0; i < t->n; i++) {
            sorted[i] = &t->rows[i];
        }
        qsort_r(sorted, t->n, sizeof(*sorted), row_cmp_key, &k);
        for (i = 1; i < t->n; i++) {
            if (strcmp(sorted[i - 1]->cells[k], sorted[i]->cells[k]) == 0) {
                unsigned l = sorted[i - 1]->line > sorted[i]->line
                             ? sorted[i - 1]->line : sorted[i]->line;
                pg_err_set(err, "%s: line %u: duplicate key \"%.64s\"",
                           c->path, l, sorted[i]->cells[k]);
                free(sorted);
                table_free(t, c->ncols);
                return PG_ERR_INVALID;
            }
        }
        free(sorted);
    }
    return PG_OK;
}

/* ---- writer --------------------------------------------------------- */

/* Append one cell, guarded and quoted as needed. */
static void
put_cell(const csv_conn_t *c, sbuf_t *b, const char *v)
{
    int guard = c->guard == GUARD_QUOTE && needs_guard(v);
    int quote = strchr(v, c->delim) != NULL || strpbrk(v, "\"\r\n") != NULL;
    const char *p;

    if (!quote) {
        if (guard) {
            sb_add(b, "'", 1);
        }
        sb_str(b, v);
        return;
    }
    sb_add(b, "\"", 1);
    if (guard) {
        sb_add(b, "'", 1);
    }
    for (p = v; *p != '\0'; p++) {
        if (*p == '"') {
            sb_add(b, "\"\"", 2);
        } else {
            sb_add(b, p, 1);
        }
    }
    sb_add(b, "\"", 1);
}

/* Append the configured line end. */
static void
put_eol(const csv_conn_t *c, sbuf_t *b)
{
    sb_str(b, c->crlf ? "\r\n" : "\n");
}

/* Serialise header and rows into b (limit = max_bytes). */
static pg_status_t
csv_render(const csv_conn_t *c, const csv_table_t *t, sbuf_t *b,
           pg_err_t *err)
{
    size_t i, j;

    memset(b, 0, sizeof(*b));
    b->limit = c->max_bytes;
    if (c->header) {
        for (j = 0; j < c->ncols; j++) {
            if (j > 0) {
                sb_add(b, &c->delim, 1);
            }
            put_cell(c, b, c->cols[j].name);
        }
        put_eol(c, b);
    }
    for (i = 0; i < t->n; i++) {
        for (j = 0; j < c->ncols; j++) {
            if (j > 0) {
                sb_add(b, &c->delim, 1);
            }
            put_cell(c, b, t->rows[i].cells[j]);
        }
        put_eol(c, b);
    }
    sb_add(b, "", 0);
    if (b->oom) {
        free(b->p);
        b->p = NULL;
        return PG_ERR_NOMEM;
    }
    if (b->over) {
        free(b->p);
        b->p = NULL;
        pg_err_set(err, "%s: new file would exceed %u bytes", c->path,
                   c->max_bytes);
        return PG_ERR_TOO_LARGE;
    }
    return PG_OK;
}

/*
 * Replace c->path by data atomically (see the top of this file). The temp
 * file is created with O_EXCL|O_NOFOLLOW and mode c->mode (fchmod'ed, so
 * the umask does not matter) and removed on any failure. PG_ERR_IO with
 * "<what> <file>: <errno text>" in err.
 */
static pg_status_t
write_atomic(const csv_conn_t *c, const char *data, size_t len, pg_err_t *err)
{
    char tmp[CSV_PATH_MAX + 96];
    char rnd[12];
    int fd, dfd, n;
    size_t off = 0;
    const char *what;

    if (pg_random_token(6, rnd, sizeof(rnd)) != PG_OK) {
        pg_err_set(err, "%s: no randomness for a temp name", c->path);
        return PG_ERR_IO;
    }
    n = snprintf(tmp, sizeof(tmp), "%s/.%s.%ld.%s.tmp", c->dir, c->fname,
                 (long) getpid(), rnd);
    if (n < 0 || (size_t) n >= sizeof(tmp)) {
        pg_err_set(err, "%s: temp path too long", c->path);
        return PG_ERR_IO;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
              c->mode);
    if (fd < 0) {
        pg_err_set(err, "create %s: %s", tmp, strerror(errno));
        return PG_ERR_IO;
    }
    what = "chmod";
    if (fchmod(fd, c->mode) != 0) {
        goto fail;
    }
    what = "write";
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            goto fail;
        }
        off += (size_t) w;
    }
    what = "fsync";
    if (fsync(fd) != 0) {
        goto fail;
    }
    what = "close";
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    what = "rename";
    if (rename(tmp, c->path) != 0) {
        goto fail;
    }
    dfd = open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        /* The new file is in place; only its durability is unsure. */
        pg_err_set(err, "fsync directory %s: %s", c->dir, strerror(errno));
        if (dfd >= 0) {
            close(dfd);
        }
        return PG_ERR_IO;
    }
    close(dfd);
    return PG_OK;

fail:
    pg_err_set(err, "%s %s: %s", what, tmp, strerror(errno));
    if (fd >= 0) {
        close(fd);
    }
    unlink(tmp);
    return PG_ERR_IO;
}

/* Render t and write it atomically. */
static pg_status_t
csv_store(const csv_conn_t *c, const csv_table_t *t, pg_err_t *err)
{
    sbuf_t b;
    pg_status_t st = csv_render(c, t, &b, err);

    if (st != PG_OK) {
        return st;
    }
    st = write_atomic(c, b.p, b.len, err);
    free(b.p);
    return st;
}

/* ---- desired values ------------------------------------------------- */

/* Strings to compare / sort. */
static int
str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * Render one attribute value as a cell: string as is, integer/real as
 * JSON numbers, bool "true"/"false", null "", array of strings joined by
 * the groups separator. *out malloc'd. PG_ERR_INVALID (err) for objects,
 * NUL bytes, or an array element holding the separator.
 */
static pg_status_t
attr_cell(const csv_conn_t *c, const char *name, const json_t *v, char **out,
          pg_err_t *err)
{
    char num[64];
    sbuf_t b;
    size_t i;
    json_t *e;

    *out = NULL;
    switch (json_typeof(v)) {
    case JSON_STRING:
        if (strlen(json_string_value(v)) != json_string_length(v)) {
            pg_err_set(err, "attribute %s: NUL byte", name);
            return PG_ERR_INVALID;
        }
        *out = strdup(json_string_value(v));
        break;
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                 json_integer_value(v));
        *out = strdup(num);
        break;
    case JSON_REAL:
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
        *out = strdup(num);
        break;
    case JSON_TRUE:
        *out = strdup("true");
        break;
    case JSON_FALSE:
        *out = strdup("false");
        break;
    case JSON_NULL:
        *out = strdup("");
        break;
    case JSON_ARRAY:
        memset(&b, 0, sizeof(b));
        b.limit = c->max_bytes;
        json_array_foreach(v, i, e) {
            const char *s = json_string_value(e);
            if (s == NULL || strlen(s) != json_string_length(e)
                || strstr(s, c->gsep) != NULL) {
                free(b.p);
                pg_err_set(err, "attribute %s: array items must be strings "
                           "without NUL or \"%s\"", name, c->gsep);
                return PG_ERR_INVALID;
            }
            if (i > 0) {
                sb_add(&b, c->gsep, c->gseplen);
            }
            sb_str(&b, s);
        }
        sb_add(&b, "", 0);
        if (b.oom || b.over) {
            free(b.p);
            return b.oom ? PG_ERR_NOMEM : PG_ERR_TOO_LARGE;
        }
        *out = b.p;
        break;
    default:
        pg_err_set(err, "attribute %s: objects are not supported", name);
        return PG_ERR_INVALID;
    }
    return *out == NULL ? PG_ERR_NOMEM : PG_OK;
}

/* Split a groups cell into a malloc'd sorted unique array of malloc'd
 * strings (empty items skipped). */
static pg_status_t
split_groups(const csv_conn_t *c, const char *cell, char ***out, size_t *n)
{
    char **v = NULL;
    size_t cnt = 0, cap = 0, i, w;
    const char *p = cell;

    *out = NULL;
    *n = 0;
    while (*p != '\0') {
        const char *e = strstr(p, c->gsep);
        size_t l = e != NULL ? (size_t) (e - p) : strlen(p);
        if (l > 0) {
            if (cnt == cap) {
                size_t ncap = cap == 0 ? 8 : cap * 2;
                char **nv = realloc(v, ncap * sizeof(*nv));
                if (nv == NULL) {
                    goto nomem;
                }
                v = nv;
                cap = ncap;
            }
            v[cnt] = strndup(p, l);
            if (v[cnt] == NULL) {
                goto nomem;
            }
            cnt++;
        }
        if (e == NULL) {
            break;
        }
        p = e + c->gseplen;
    }
    if (cnt > 1) {
        qsort(v, cnt, sizeof(*v), str_cmp);
        for (i = 1, w = 1; i < cnt; i++) {
            if (strcmp(v[i], v[w - 1]) == 0) {
                free(v[i]);
            } else {
                v[w++] = v[i];
            }
        }
        cnt = w;
    }
    *out = v;
    *n = cnt;
    return PG_OK;

nomem:
    for (i = 0; i < cnt; i++) {
        free(v[i]);
    }
    free(v);
    return PG_ERR_NOMEM;
}

/* Free n malloc'd strings and the array (v may be NULL). */
static void
strv_free(char **v, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        free(v[i]);
    }
    free(v);
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
 * New groups cell: (current ∪ req->groups) \ req->revoke, sorted, joined.
 * Groups added or removed are appended to changes. *out malloc'd.
 */
static pg_status_t
groups_cell(const csv_conn_t *c, const pg_conn_req_t *r, const char *cur,
            json_t *changes, char **out)
{
    char **have = NULL, **want = NULL;
    size_t nhave = 0, nwant = 0, i;
    sbuf_t b;
    pg_status_t st;

    *out = NULL;
    st = split_groups(c, cur, &have, &nhave);
    if (st != PG_OK) {
        return st;
    }
    want = calloc(nhave + r->ngroups + 1, sizeof(*want));
    if (want == NULL) {
        strv_free(have, nhave);
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < nhave; i++) {
        if (strv_has(r->revoke, r->nrevoke, have[i])) {
            json_array_append_new(changes, json_string(have[i]));
        } else {
            want[nwant++] = have[i];
        }
    }
    for (i = 0; i < r->ngroups; i++) {
        if (!strv_has(want, nwant, r->groups[i])
            && !strv_has(r->revoke, r->nrevoke, r->groups[i])) {
            want[nwant++] = r->groups[i];
            json_array_append_new(changes, json_string(r->groups[i]));
        }
    }
    qsort(want, nwant, sizeof(*want), str_cmp);
    memset(&b, 0, sizeof(b));
    b.limit = c->max_bytes;
    for (i = 0; i < nwant; i++) {
        if (i > 0) {
            sb_add(&b, c->gsep, c->gseplen);
        }
        sb_str(&b, want[i]);
    }
    sb_add(&b, "", 0);
    free(want);
    strv_free(have, nhave);
    if (b.oom || b.over) {
        free(b.p);
        return PG_ERR_NOMEM;
    }
    *out = b.p;
    return PG_OK;
}

/* ---- request lifecycle ---------------------------------------------- */

/* Unlink r from its connector, close its timer, free all it owns. */
static void
req_free(pg_conn_req_t *r)
{
    csv_conn_t *c = r->c;

    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else if (c->reqs == r) {
        c->reqs = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    }
    if (r->timer != NULL) {
        c->base.host->timer_close(r->timer);
    }
    table_free(&r->table, c->ncols);
    json_decref(r->rchanges);
    free(r->key);
    json_decref(r->attrs);
    strv_free(r->groups, r->ngroups);
    strv_free(r->revoke, r->nrevoke);
    free(r);
}

/* Record the result of r (delivered later by deliver()); changes is a
 * reference handed over (may be NULL), error is copied. */
static void
result(pg_conn_req_t *r, pg_status_t st, pg_conn_outcome_t outcome,
       json_t *changes, int retryable, const char *error)
{
    json_decref(r->rchanges);
    r->rst = st;
    r->rout = outcome;
    r->rchanges = changes;
    r->rretry = st == PG_OK ? 0 : retryable;
    snprintf(r->rerr, sizeof(r->rerr), "%s", error != NULL ? error : "");
}

/* Call the op callback once with the recorded result and free r. */
static void
deliver(pg_conn_req_t *r)
{
    pg_conn_result_t res;

    memset(&res, 0, sizeof(res));
    res.outcome = r->rout;
    res.id = r->rst == PG_OK ? r->key : "";
    res.changes = r->rchanges;
    res.retryable = r->rretry;
    res.error = r->rerr;
    r->cb(r->arg, r->rst, &res);
    req_free(r);
}

/* Whether a failed file operation may succeed later. */
static int
retryable_of(pg_status_t st)
{
    return st == PG_ERR_IO || st == PG_ERR_NOMEM || st == PG_ERR_BUSY;
}

/* Index of the row whose key is key, or -1 (linear: rows <= max_rows). */
static int
find_row(const csv_conn_t *c, const csv_table_t *t, const char *key)
{
    size_t i;

    for (i = 0; i < t->n; i++) {
        if (strcmp(t->rows[i].cells[c->key_col], key) == 0) {
            return (int) i;
        }
    }
    return -1;
}

/* Replace cell j of row by v (owned), noting a change under name. */
static void
set_cell(csv_row_t *row, size_t j, char *v, const char *name,
         json_t *changes, int note)
{
    if (strcmp(row->cells[j], v) == 0) {
        free(v);
        return;
    }
    free(row->cells[j]);
    row->cells[j] = v;
    if (note) {
        json_array_append_new(changes, json_string(name));
    }
}

/*
 * ensure() on the loaded table t: build the desired row (on a copy, so a
 * failure leaves t untouched), compare, replace or append. *dirty is set
 * when t changed. The result is recorded in r.
 */
static void
apply_ensure(pg_conn_req_t *r, csv_table_t *t, pg_err_t *err, int *dirty)
{
    csv_conn_t *c = r->c;
    int idx = find_row(c, t, r->key);
    csv_row_t nrow;
    csv_row_t *row;
    json_t *changes = json_array();
    pg_status_t st = PG_OK;
    size_t j;
    int created = idx < 0;

    memset(&nrow, 0, sizeof(nrow));
    if (changes == NULL) {
        result(r, PG_ERR_NOMEM, PG_CONN_UNCHANGED, NULL, 1, "out of memory");
        return;
    }
    nrow.cells = calloc(c->ncols, sizeof(char *));
    if (nrow.cells == NULL) {
        st = PG_ERR_NOMEM;
        goto out;
    }
    if (created) {
        if (t->n >= c->max_rows) {
            pg_err_set(err, "%s: max_rows (%u) reached", c->path,
                       c->max_rows);
            st = PG_ERR_TOO_LARGE;
            goto out;
        }
        for (j = 0; j < c->ncols; j++) {
            nrow.cells[j] = strdup(c->cols[j].kind == COL_ACTIVE ? "true"
                                                                 : "");
            if (nrow.cells[j] == NULL) {
                st = PG_ERR_NOMEM;
                goto out;
            }
        }
    } else {
        for (j = 0; j < c->ncols; j++) {
            nrow.cells[j] = strdup(t->rows[idx].cells[j]);
            if (nrow.cells[j] == NULL) {
                st = PG_ERR_NOMEM;
                goto out;
            }
        }
        nrow.line = t->rows[idx].line;
    }
    row = &nrow;
    for (j = 0; j < c->ncols; j++) {
        char *v = NULL;
        const json_t *av;
        switch (c->cols[j].kind) {
        case COL_KEY:
            v = strdup(r->key);
            break;
        case COL_ACTIVE:
            v = strdup(r->active ? "true" : "false");
            if (v != NULL && !created) {
                int cur = 1;
                (void) parse_bool(row->cells[j], &cur);
                if (cur == r->active) {
                    free(v);
                    v = strdup(row->cells[j]);  /* "1" stays "1" */
                }
            }
            break;
        case COL_GROUPS:
            st = groups_cell(c, r, row->cells[j], changes, &v);
            if (st != PG_OK) {
                goto out;
            }
            if (v != NULL) {
                /* a new order of the same set is not a change */
                set_cell(row, j, v, c->cols[j].name, changes, 0);
                v = NULL;
            }
            continue;
        default:
            av = r->attrs != NULL ? json_object_get(r->attrs,
                                                    c->cols[j].name)
                                  : NULL;
            if (av == NULL) {
                continue;  /* not managed by this request: keep */
            }
            st = attr_cell(c, c->cols[j].name, av, &v, err);
            if (st != PG_OK) {
                goto out;
            }
            break;
        }
        if (v == NULL) {
            st = PG_ERR_NOMEM;
            goto out;
        }
        if (c->guard == GUARD_REFUSE && is_trigger(v[0])
            && strcmp(v, row->cells[j]) != 0) {
            pg_err_set(err, "%s: value starts with a formula character "
                       "(formula_guard is \"refuse\")", c->cols[j].name);
            free(v);
            st = PG_ERR_INVALID;
            goto out;
        }
        set_cell(row, j, v, c->cols[j].name, changes, !created);
    }
    if (created) {
        st = table_push(t, &nrow);
        if (st != PG_OK) {
            goto out;
        }
        *dirty = 1;
        json_decref(changes);
        result(r, PG_OK, PG_CONN_CREATED, NULL, 0, NULL);
        return;
    }
    if (json_array_size(changes) == 0) {
        /* equal values (a reordered groups cell is the same set) */
        row_free(&nrow, c->ncols);
        json_decref(changes);
        result(r, PG_OK, PG_CONN_UNCHANGED, NULL, 0, NULL);
        return;
    }
    row_free(&t->rows[idx], c->ncols);
    t->rows[idx] = nrow;
    *dirty = 1;
    result(r, PG_OK, PG_CONN_UPDATED, changes, 0, NULL);
    return;

out:
    row_free(&nrow, c->ncols);
    json_decref(changes);
    result(r, st, PG_CONN_UNCHANGED, NULL, retryable_of(st),
           st == PG_ERR_NOMEM ? "out of memory" : err->msg);
}

/* disable() / remove() on the loaded table t; *dirty set when t changed.
 * The result is recorded in r. */
static void
apply_disable_remove(pg_conn_req_t *r, csv_table_t *t, int *dirty)
{
    csv_conn_t *c = r->c;
    int idx = find_row(c, t, r->key);
    int cur = 1;
    char *v;

    if (r->op == OP_REMOVE) {
        if (idx >= 0) {
            row_free(&t->rows[idx], c->ncols);
            memmove(t->rows + idx, t->rows + idx + 1,
                    (t->n - (size_t) idx - 1) * sizeof(*t->rows));
            t->n--;
            *dirty = 1;
        }
        result(r, PG_OK, PG_CONN_REMOVED, NULL, 0, NULL);
        return;
    }
    if (idx < 0) {
        result(r, PG_ERR_NOT_FOUND, PG_CONN_UNCHANGED, NULL, 0,
               "no such account");
        return;
    }
    if (c->active_col < 0) {
        result(r, PG_ERR_INVALID, PG_CONN_UNCHANGED, NULL, 0,
               "no \"active\" column configured");
        return;
    }
    (void) parse_bool(t->rows[idx].cells[c->active_col], &cur);
    if (!cur) {
        result(r, PG_OK, PG_CONN_UNCHANGED, NULL, 0, NULL);
        return;
    }
    v = strdup("false");
    if (v == NULL) {
        result(r, PG_ERR_NOMEM, PG_CONN_UNCHANGED, NULL, 1, "out of memory");
        return;
    }
    free(t->rows[idx].cells[c->active_col]);
    t->rows[idx].cells[c->active_col] = v;
    *dirty = 1;
    result(r, PG_OK, PG_CONN_DISABLED, NULL, 0, NULL);
}

/* Deliver one page of r->table; 1 when the request is finished/freed. */
static int
list_page(pg_conn_req_t *r)
{
    csv_conn_t *c = r->c;
    size_t n = r->table.n - r->next_row, i, j, k;
    pg_listed_account_t *accts;
    char ***gv;
    size_t *gn;
    int stop = 0;
    pg_status_t st = PG_OK;

    if (n > PG_CONN_PAGE_MAX) {
        n = PG_CONN_PAGE_MAX;
    }
    accts = calloc(n, sizeof(*accts));
    gv = calloc(n, sizeof(*gv));
    gn = calloc(n, sizeof(*gn));
    if (accts == NULL || gv == NULL || gn == NULL) {
        st = PG_ERR_NOMEM;
        goto out;
    }
    for (i = 0; i < n; i++) {
        csv_row_t *row = &r->table.rows[r->next_row + i];
        json_t *attrs = json_object();
        accts[i].attrs = attrs;
        if (attrs == NULL) {
            st = PG_ERR_NOMEM;
            goto out;
        }
        accts[i].key = row->cells[c->key_col];
        accts[i].id = row->cells[c->key_col];
        accts[i].active = 1;
        for (j = 0; j < c->ncols; j++) {
            switch (c->cols[j].kind) {
            case COL_ACTIVE:
                (void) parse_bool(row->cells[j], &accts[i].active);
                break;
            case COL_GROUPS:
                st = split_groups(c, row->cells[j], &gv[i], &gn[i]);
                if (st != PG_OK) {
                    goto out;
                }
                accts[i].groups = (const char *const *) gv[i];
                accts[i].ngroups = gn[i];
                break;
            case COL_ATTR:
                if (json_object_set_new(attrs, c->cols[j].name,
                                        json_string(row->cells[j])) != 0) {
                    st = PG_ERR_NOMEM;
                    goto out;
                }
                break;
            default:
                break;
            }
        }
    }
    r->in_cb = 1;
    stop = r->page(r->arg, accts, n);
    r->in_cb = 0;
    r->next_row += n;

out:
    for (k = 0; k < n && accts != NULL; k++) {
        json_decref((json_t *) accts[k].attrs);
        if (gv != NULL) {
            strv_free(gv[k], gn[k]);
        }
    }
    free(accts);
    free(gv);
    free(gn);
    if (r->cancelled) {
        req_free(r);
        return 1;
    }
    if (st != PG_OK || stop || r->next_row >= r->table.n) {
        pg_conn_done_cb done = r->done;
        void *arg = r->arg;
        req_free(r);
        done(arg, st != PG_OK ? st : stop ? PG_ERR_CANCELLED : PG_OK,
             st != PG_OK ? "out of memory" : stop ? "stopped by the caller"
                                                  : NULL);
        return 1;
    }
    return 0;
}

/*
 * Take the writer lock: flock(LOCK_EX|LOCK_NB) on "<dir>/.<name>.lock"
 * (created 0600), so two processes (two sidecars) never interleave their
 * read-modify-write of the same file. Returns the fd to close() for
 * unlocking, or -1 with *st = PG_ERR_BUSY (held by someone else: retry)
 * or PG_ERR_IO, and err set.
 */
static int
csv_lock(const csv_conn_t *c, pg_status_t *st, pg_err_t *err)
{
    char lp[CSV_PATH_MAX + 32];
    int fd, n;

    n = snprintf(lp, sizeof(lp), "%s/.%s.lock", c->dir, c->fname);
    if (n < 0 || (size_t) n >= sizeof(lp)) {
        pg_err_set(err, "%s: lock path too long", c->path);
        *st = PG_ERR_IO;
        return -1;
    }
    fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        pg_err_set(err, "lock %s: %s", lp, strerror(errno));
        *st = PG_ERR_IO;
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        *st = errno == EWOULDBLOCK ? PG_ERR_BUSY : PG_ERR_IO;
        pg_err_set(err, "lock %s: %s", lp,
                   *st == PG_ERR_BUSY ? "held by another writer"
                                      : strerror(errno));
        close(fd);
        return -1;
    }
    *st = PG_OK;
    return fd;
}

/* qsort comparator of request pointers by creation order. */
static int
seq_cmp(const void *a, const void *b)
{
    const pg_conn_req_t *x = *(const pg_conn_req_t *const *) a;
    const pg_conn_req_t *y = *(const pg_conn_req_t *const *) b;

    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/*
 * Run every pending ensure/disable/remove of c as ONE batch, in the order
 * they were started: take the writer lock, read the file once, apply each
 * operation to the table in memory, write the file once if anything
 * changed, release the lock, then call the callbacks in order. fired is
 * the request whose timer fired (the batch is just fired if the batch
 * array cannot be allocated). When the write fails, every operation that
 * had succeeded in memory reports the write error (retryable) instead.
 */
static void
run_batch(csv_conn_t *c, pg_conn_req_t *fired)
{
    pg_conn_req_t *r, **v, *one[1];
    size_t n = 0, i;
    csv_table_t t;
    pg_err_t err;
    pg_status_t st = PG_OK;
    int lockfd = -1, dirty = 0;

    err.msg[0] = '\0';
    for (r = c->reqs; r != NULL; r = r->next) {
        if (r->op != OP_LIST && !r->batched) {
            n++;
        }
    }
    v = malloc(n * sizeof(*v));
    if (v == NULL) {
        one[0] = fired;
        v = one;
        n = 1;
    } else {
        n = 0;
        for (r = c->reqs; r != NULL; r = r->next) {
            if (r->op != OP_LIST && !r->batched) {
                v[n++] = r;
            }
        }
        qsort(v, n, sizeof(*v), seq_cmp);
    }
    for (i = 0; i < n; i++) {
        v[i]->batched = 1;
        c->base.host->timer_disarm(v[i]->timer);
    }
    if (c->lock) {
        lockfd = csv_lock(c, &st, &err);
    }
    if (st == PG_OK) {
        st = csv_load(c, &t, &err);
        if (st != PG_OK) {
            pg_log(c->base.host, PG_LOG_WARN, "csv target %s: %s",
                   c->base.name, err.msg);
        }
    }
    if (st != PG_OK) {
        for (i = 0; i < n; i++) {
            result(v[i], st, PG_CONN_UNCHANGED, NULL, retryable_of(st),
                   err.msg);
        }
    } else {
        for (i = 0; i < n; i++) {
            err.msg[0] = '\0';
            if (v[i]->op == OP_ENSURE) {
                apply_ensure(v[i], &t, &err, &dirty);
            } else {
                apply_disable_remove(v[i], &t, &dirty);
            }
        }
        if (dirty) {
            err.msg[0] = '\0';
            st = csv_store(c, &t, &err);
            if (st != PG_OK) {
                pg_log(c->base.host, PG_LOG_WARN, "csv target %s: %s",
                       c->base.name, err.msg);
                for (i = 0; i < n; i++) {
                    if (v[i]->rst == PG_OK) {
                        result(v[i], st, PG_CONN_UNCHANGED, NULL,
                               retryable_of(st), err.msg);
                    }
                }
            }
        }
        table_free(&t, c->ncols);
    }
    if (lockfd >= 0) {
        close(lockfd);
    }
    if (v != one) {
        free(v);
    }
    /* Callbacks may start or cancel requests: pick the oldest batched
     * request afresh each time. */
    for (;;) {
        pg_conn_req_t *best = NULL;
        for (r = c->reqs; r != NULL; r = r->next) {
            if (r->batched && (best == NULL || r->seq < best->seq)) {
                best = r;
            }
        }
        if (best == NULL) {
            break;
        }
        deliver(best);
    }
}

/* The 0 ms timer: do the operation now, on the loop. */
static void
on_timer(void *arg)
{
    pg_conn_req_t *r = arg;
    csv_conn_t *c = r->c;
    pg_err_t err;
    pg_status_t st;

    err.msg[0] = '\0';
    if (r->op == OP_LIST) {
        if (!r->loaded) {
            st = csv_load(c, &r->table, &err);
            if (st != PG_OK) {
                pg_conn_done_cb done = r->done;
                void *darg = r->arg;
                pg_err_t e2 = err;
                req_free(r);
                done(darg, st, e2.msg);
                return;
            }
            r->loaded = 1;
            if (r->table.n == 0) {
                pg_conn_done_cb done = r->done;
                void *darg = r->arg;
                req_free(r);
                done(darg, PG_OK, NULL);
                return;
            }
        }
        if (list_page(r) == 0) {
            c->base.host->timer_arm(r->timer, 0);
        }
        return;
    }
    run_batch(c, r);
}

/* Copy a C string array after validating each item as a group name. */
static pg_status_t
copy_groups(const csv_conn_t *c, const char *const *in, size_t n,
            char ***out)
{
    char **v;
    size_t i;

    *out = NULL;
    if (n == 0) {
        return PG_OK;
    }
    if (in == NULL || n > 100000) {
        return PG_ERR_INVALID;
    }
    v = calloc(n, sizeof(*v));
    if (v == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        if (in[i] == NULL || in[i][0] == '\0'
            || (c->groups_col >= 0 && strstr(in[i], c->gsep) != NULL)) {
            strv_free(v, i);
            return PG_ERR_INVALID;
        }
        v[i] = strdup(in[i]);
        if (v[i] == NULL) {
            strv_free(v, i);
            return PG_ERR_NOMEM;
        }
    }
    *out = v;
    return PG_OK;
}

/* Allocate, link and arm a request. */
static pg_status_t
req_start(csv_conn_t *c, int op, const pg_account_t *a, pg_conn_req_t **out)
{
    pg_conn_req_t *r = calloc(1, sizeof(*r));
    pg_status_t st;

    *out = NULL;
    if (r == NULL) {
        return PG_ERR_NOMEM;
    }
    r->c = c;
    r->op = op;
    r->seq = ++c->seq;
    if (a != NULL) {
        if (a->key == NULL || a->key[0] == '\0'
            || strlen(a->key) > PG_CONN_KEY_MAX) {
            free(r);
            return PG_ERR_INVALID;
        }
        r->key = strdup(a->key);
        if (r->key == NULL) {
            free(r);
            return PG_ERR_NOMEM;
        }
        r->active = a->active;
        if (a->attrs != NULL) {
            if (!json_is_object(a->attrs)) {
                req_free(r);
                return PG_ERR_INVALID;
            }
            r->attrs = json_deep_copy(a->attrs);
            if (r->attrs == NULL) {
                req_free(r);
                return PG_ERR_NOMEM;
            }
        }
        if (op == OP_ENSURE) {
            st = copy_groups(c, a->groups, a->ngroups, &r->groups);
            if (st == PG_OK) {
                r->ngroups = a->ngroups;
                st = copy_groups(c, a->revoke, a->nrevoke, &r->revoke);
            }
            if (st == PG_OK) {
                r->nrevoke = a->nrevoke;
            } else {
                req_free(r);
                return st;
            }
        }
    }
    r->timer = c->base.host->timer_open(c->base.host->ctx, on_timer, r);
    if (r->timer == NULL) {
        req_free(r);
        return PG_ERR_NOMEM;
    }
    r->next = c->reqs;
    if (c->reqs != NULL) {
        c->reqs->prev = r;
    }
    c->reqs = r;
    c->base.host->timer_arm(r->timer, 0);
    *out = r;
    return PG_OK;
}

/* ---- vtable --------------------------------------------------------- */

/* Shared start of ensure/disable/remove: validate and copy a, arm the
 * 0 ms timer. */
static pg_status_t
csv_op(pg_connector_t *base, int op, const pg_account_t *a, pg_conn_cb cb,
       void *arg, pg_conn_req_t **req_out)
{
    pg_conn_req_t *r;
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (cb == NULL || a == NULL) {
        return PG_ERR_INVALID;
    }
    st = req_start((csv_conn_t *) base, op, a, &r);
    if (st != PG_OK) {
        return st;
    }
    r->cb = cb;
    r->arg = arg;
    if (req_out != NULL) {
        *req_out = r;
    }
    return PG_OK;
}

/* vtable ensure (see connector.h). */
static pg_status_t
csv_ensure(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb, void *arg,
           pg_conn_req_t **req_out)
{
    return csv_op(c, OP_ENSURE, a, cb, arg, req_out);
}

/* vtable disable (see connector.h). */
static pg_status_t
csv_disable(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
            void *arg, pg_conn_req_t **req_out)
{
    return csv_op(c, OP_DISABLE, a, cb, arg, req_out);
}

/* vtable remove (see connector.h). */
static pg_status_t
csv_remove(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb, void *arg,
           pg_conn_req_t **req_out)
{
    return csv_op(c, OP_REMOVE, a, cb, arg, req_out);
}

/* list(): since_ms is ignored (no PG_CONN_CAP_INCREMENTAL): all rows. */
static pg_status_t
csv_list(pg_connector_t *base, uint64_t since_ms, pg_conn_page_cb page,
         pg_conn_done_cb done, void *arg, pg_conn_req_t **req_out)
{
    pg_conn_req_t *r;
    pg_status_t st;

    (void) since_ms;
    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (page == NULL || done == NULL) {
        return PG_ERR_INVALID;
    }
    st = req_start((csv_conn_t *) base, OP_LIST, NULL, &r);
    if (st != PG_OK) {
        return st;
    }
    r->page = page;
    r->done = done;
    r->arg = arg;
    if (req_out != NULL) {
        *req_out = r;
    }
    return PG_OK;
}

/* cancel(): no callback will run; safe from inside a page callback. */
static void
csv_cancel(pg_conn_req_t *r)
{
    if (r == NULL) {
        return;
    }
    if (r->in_cb) {
        r->cancelled = 1;
        return;
    }
    req_free(r);
}

/* vtable free: releases pending requests (no callbacks) and the config. */
static void
csv_free(pg_connector_t *base)
{
    csv_conn_t *c = (csv_conn_t *) base;
    size_t i;

    while (c->reqs != NULL) {
        req_free(c->reqs);
    }
    for (i = 0; i < c->ncols; i++) {
        free(c->cols[i].name);
    }
    free(c->path);
    free(c->dir);
    free(c->fname);
    free(c->base.name);
    free(c);
}

static const pg_connector_vt_t csv_vt = {
    "csv", csv_ensure, csv_disable, csv_remove, csv_list, csv_cancel, csv_free
};

/* ---- constructor ---------------------------------------------------- */

/* Optional boolean member key of cfg, default dflt. */
static pg_status_t
cfg_bool(const json_t *cfg, const char *key, int dflt, int *out,
         pg_err_t *err)
{
    json_t *v = json_object_get(cfg, key);

    *out = dflt;
    if (v == NULL) {
        return PG_OK;
    }
    if (!json_is_boolean(v)) {
        pg_err_set(err, "connector.%s: must be true or false", key);
        return PG_ERR_CONFIG;
    }
    *out = json_is_true(v);
    return PG_OK;
}

/* "columns": 1..PG_CSV_MAX_COLUMNS unique names, exactly one "key". */
static pg_status_t
cfg_columns(csv_conn_t *c, const json_t *cfg, pg_err_t *err)
{
    json_t *cols = json_object_get(cfg, "columns");
    size_t i, j;
    json_t *v;

    if (cols == NULL) {
        pg_err_set(err, "connector.columns: required");
        return PG_ERR_CONFIG;
    }
    if (!json_is_array(cols) || json_array_size(cols) == 0
        || json_array_size(cols) > PG_CSV_MAX_COLUMNS) {
        pg_err_set(err, "connector.columns: must be an array of 1 to %d "
                   "names", PG_CSV_MAX_COLUMNS);
        return PG_ERR_CONFIG;
    }
    c->key_col = c->active_col = c->groups_col = -1;
    json_array_foreach(cols, i, v) {
        const char *s = json_string_value(v);
        if (s == NULL || s[0] == '\0' || strlen(s) != json_string_length(v)
            || strlen(s) > CSV_NAME_MAX || strpbrk(s, "\r\n") != NULL) {
            pg_err_set(err, "connector.columns[%zu]: must be a name of 1 to "
                       "%d bytes without line breaks", i, CSV_NAME_MAX);
            return PG_ERR_CONFIG;
        }
        for (j = 0; j < i; j++) {
            if (strcmp(c->cols[j].name, s) == 0) {
                pg_err_set(err, "connector.columns[%zu]: duplicate column "
                           "\"%s\"", i, s);
                return PG_ERR_CONFIG;
            }
        }
        c->cols[i].name = strdup(s);
        if (c->cols[i].name == NULL) {
            return PG_ERR_NOMEM;
        }
        c->ncols = i + 1;
        if (strcmp(s, "key") == 0) {
            c->cols[i].kind = COL_KEY;
            c->key_col = (int) i;
        } else if (strcmp(s, "active") == 0) {
            c->cols[i].kind = COL_ACTIVE;
            c->active_col = (int) i;
        } else if (strcmp(s, "groups") == 0) {
            c->cols[i].kind = COL_GROUPS;
            c->groups_col = (int) i;
        } else {
            c->cols[i].kind = COL_ATTR;
        }
    }
    if (c->key_col < 0) {
        pg_err_set(err, "connector.columns: must contain \"key\"");
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* "path": absolute, split into directory and file name (all malloc'd). */
static pg_status_t
cfg_path(csv_conn_t *c, const json_t *cfg, pg_err_t *err)
{
    const char *p, *slash;
    pg_status_t st = pg_conn_cfg_str(cfg, "connector", "path", 1, &p, err);

    if (st != PG_OK) {
        return st;
    }
    slash = strrchr(p, '/');
    if (p[0] != '/' || strlen(p) > CSV_PATH_MAX || slash[1] == '\0'
        || strcmp(slash + 1, ".") == 0 || strcmp(slash + 1, "..") == 0) {
        pg_err_set(err, "connector.path: must be an absolute file path of at "
                   "most %d bytes", CSV_PATH_MAX);
        return PG_ERR_CONFIG;
    }
    c->path = strdup(p);
    c->fname = strdup(slash + 1);
    c->dir = slash == p ? strdup("/") : strndup(p, (size_t) (slash - p));
    if (c->path == NULL || c->fname == NULL || c->dir == NULL) {
        return PG_ERR_NOMEM;
    }
    return PG_OK;
}

/* Every optional key but "columns"/"path", with defaults. */
static pg_status_t
cfg_options(csv_conn_t *c, const json_t *cfg, pg_err_t *err)
{
    const char *s;
    pg_status_t st;
    char *end;
    unsigned long m;

    st = pg_conn_cfg_str(cfg, "connector", "type", 0, &s, err);
    if (st != PG_OK) {
        return st;
    }
    if (s != NULL && strcmp(s, "csv") != 0) {
        pg_err_set(err, "connector.type: must be \"csv\"");
        return PG_ERR_CONFIG;
    }
    c->delim = ',';
    st = pg_conn_cfg_str(cfg, "connector", "delimiter", 0, &s, err);
    if (st != PG_OK) {
        return st;
    }
    if (s != NULL) {
        if (strlen(s) != 1 || s[0] == '"' || s[0] == '\'' || s[0] == '\r'
            || s[0] == '\n'
            || !(s[0] == '\t' || (s[0] > 0x20 && s[0] < 0x7f))) {
            pg_err_set(err, "connector.delimiter: must be one printable ASCII "
                       "character or a tab, not a quote");
            return PG_ERR_CONFIG;
        }
        c->delim = s[0];
    }
    snprintf(c->gsep, sizeof(c->gsep), ";");
    st = pg_conn_cfg_str(cfg, "connector", "groups_separator", 0, &s, err);
    if (st != PG_OK) {
        return st;
    }
    if (s != NULL) {
        if (strlen(s) > CSV_GSEP_MAX || strpbrk(s, "\"\r\n") != NULL) {
            pg_err_set(err, "connector.groups_separator: must be 1 to %d "
                       "bytes without quotes or line breaks", CSV_GSEP_MAX);
            return PG_ERR_CONFIG;
        }
        snprintf(c->gsep, sizeof(c->gsep), "%s", s);
    }
    c->gseplen = strlen(c->gsep);
    st = cfg_bool(cfg, "lock", 1, &c->lock, err);
    if (st != PG_OK) {
        return st;
    }
    st = cfg_bool(cfg, "header", 1, &c->header, err);
    if (st != PG_OK) {
        return st;
    }
    c->mode = 0640;
    st = pg_conn_cfg_str(cfg, "connector", "mode", 0, &s, err);
    if (st != PG_OK) {
        return st;
    }
    if (s != NULL) {
        errno = 0;
        m = strtoul(s, &end, 8);
        if (errno != 0 || *end != '\0' || strlen(s) > 4 || s[0] == '-'
            || s[0] == '+' || s[0] == ' ' || m > 0777 || (m & 0400) == 0) {
            pg_err_set(err, "connector.mode: must be an octal string such as "
                       "\"0640\" (at most 0777, readable by the owner)");
            return PG_ERR_CONFIG;
        }
        c->mode = (mode_t) m;
    }
    st = pg_conn_cfg_str(cfg, "connector", "line_end", 0, &s, err);
    if (st != PG_OK) {
        return st;
    }
    if (s != NULL && strcmp(s, "lf") != 0 && strcmp(s, "crlf") != 0) {
        pg_err_set(err, "connector.line_end: must be \"lf\" or \"crlf\"");
        return PG_ERR_CONFIG;
    }
    c->crlf = s != NULL && strcmp(s, "crlf") == 0;
    st = pg_conn_cfg_str(cfg, "connector", "formula_guard", 0, &s, err);
    if (st != PG_OK) {
        return st;
    }
    if (s == NULL || strcmp(s, "quote") == 0) {
        c->guard = GUARD_QUOTE;
    } else if (strcmp(s, "refuse") == 0) {
        c->guard = GUARD_REFUSE;
    } else if (strcmp(s, "off") == 0) {
        c->guard = GUARD_OFF;
    } else {
        pg_err_set(err, "connector.formula_guard: must be \"quote\", "
                   "\"refuse\" or \"off\"");
        return PG_ERR_CONFIG;
    }
    st = pg_conn_cfg_uint(cfg, "connector", "max_rows", 1, 1000000,
                          PG_CSV_DEFAULT_ROWS, &c->max_rows, err);
    if (st != PG_OK) {
        return st;
    }
    return pg_conn_cfg_uint(cfg, "connector", "max_bytes", 4096,
                            64u * 1024u * 1024u, PG_CSV_DEFAULT_BYTES,
                            &c->max_bytes, err);
}

/*
 * Errors are built as "connector.<key>: ..." / "connector: ..."; replace
 * that leading "connector" by the caller's JSON path (e.g.
 * "targets.payroll.connector"). Truncated at PG_ERR_MSG_MAX.
 */
static void
err_at(pg_err_t *err, const char *path)
{
    char tmp[PG_ERR_MSG_MAX];

    if (err == NULL || path == NULL || strncmp(err->msg, "connector", 9) != 0
        || (err->msg[9] != '.' && err->msg[9] != ':')) {
        return;
    }
    snprintf(tmp, sizeof(tmp), "%s", err->msg + 9);
    pg_err_set(err, "%s%s", path, tmp);
}

/* The constructor proper; errors name the path "connector". */
static pg_status_t
csv_new(const pg_host_t *host, const char *name, const json_t *cfg,
        pg_connector_t **out, pg_err_t *err)
{
    static const char *const allowed[] = {
        "type", "path", "delimiter", "columns", "groups_separator", "header",
        "mode", "line_end", "formula_guard", "max_rows", "max_bytes", "lock",
        NULL
    };
    csv_conn_t *c;
    pg_status_t st;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (host == NULL || name == NULL || name[0] == '\0') {
        pg_err_set(err, "connector: host and target name are required");
        return PG_ERR_INVALID;
    }
    st = pg_conn_cfg_known(cfg, "connector", allowed, err);
    if (st != PG_OK) {
        return st;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return PG_ERR_NOMEM;
    }
    c->base.vt = &csv_vt;
    c->base.host = host;
    c->base.name = strdup(name);
    if (c->base.name == NULL) {
        csv_free(&c->base);
        return PG_ERR_NOMEM;
    }
    st = cfg_path(c, cfg, err);
    if (st == PG_OK) {
        st = cfg_columns(c, cfg, err);
    }
    if (st == PG_OK) {
        st = cfg_options(c, cfg, err);
    }
    if (st == PG_OK && c->groups_col >= 0 && c->gseplen == 1
        && c->gsep[0] == c->delim) {
        pg_err_set(err, "connector.groups_separator: must differ from the "
                   "delimiter");
        st = PG_ERR_CONFIG;
    }
    if (st != PG_OK) {
        if (st == PG_ERR_NOMEM) {
            pg_err_set(err, "connector: out of memory");
        }
        csv_free(&c->base);
        return st;
    }
    c->base.caps = PG_CONN_CAP_LIST;
    if (c->groups_col >= 0) {
        c->base.caps |= PG_CONN_CAP_GROUPS;
    }
    if (c->active_col >= 0) {
        c->base.caps |= PG_CONN_CAP_DISABLE;
    }
    *out = &c->base;
    return PG_OK;
}

/* Contract: see csvconn.h. */
pg_status_t
pg_csv_connector_new_at(const pg_host_t *host, const char *name,
                        const json_t *cfg, const char *path,
                        pg_connector_t **out, pg_err_t *err)
{
    pg_status_t st = csv_new(host, name, cfg, out, err);

    if (st != PG_OK) {
        err_at(err, path);
    }
    return st;
}

/* Contract: see csvconn.h. */
pg_status_t
pg_csv_connector_new(const pg_host_t *host, const char *name,
                     const json_t *cfg, pg_connector_t **out, pg_err_t *err)
{
    char path[PG_ERR_MSG_MAX];

    snprintf(path, sizeof(path), "targets.%.200s.connector",
             name != NULL ? name : "?");
    return pg_csv_connector_new_at(host, name, cfg, path, out, err);
}
