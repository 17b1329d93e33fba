/*
 * provgate core: authoritative HR source (batch CSV export) and change
 * detection against the last import (GitHub issue 6).
 *
 * Pure functions: nothing here opens a file, a socket or a clock. The
 * caller (the sidecar, not built yet) reads the export with pg_read_file()
 * capped at cfg->max_file_bytes, loads the previous snapshot, passes
 * today's date, and applies the result only when every call returned PG_OK.
 *
 * Flow:
 *   pg_hrfeed_cfg_parse()   JSON "hr_source" object -> pg_hrfeed_cfg_t
 *   pg_hrfeed_parse()       CSV bytes -> rows + per-line errors
 *   pg_hrfeed_snapshot_parse()  previous snapshot JSON -> json_t
 *   pg_hrfeed_diff()        previous snapshot + rows + today -> changes
 *
 * Safety rules (a truncated or broken export must never delete people):
 *  - malformed rows are reported as {line, reason} and skipped; when more
 *    than cfg->max_malformed_pct percent of the data rows are malformed the
 *    whole file is refused (PG_ERR_DENIED, nothing may be applied);
 *  - a malformed row whose key can still be read "holds" that key: the
 *    person is neither moved nor left, and keeps the previous attributes;
 *  - every row of a duplicated key is rejected and the key is held;
 *  - when the leaves exceed cfg->max_leave_pct percent of the previous
 *    snapshot the diff is refused (PG_ERR_DENIED) unless forced.
 */
#ifndef PROVGATE_HRFEED_H
#define PROVGATE_HRFEED_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "provgate/status.h"
#include "provgate/util.h"

#define PG_HRFEED_MAX_FILE_LIMIT (1024u * 1024u * 1024u) /* 1 GiB */
#define PG_HRFEED_MAX_ROWS_LIMIT 10000000u  /* max_rows <= 10 M */
#define PG_HRFEED_MAX_COLUMNS 512u          /* fields per record */
#define PG_HRFEED_MAX_FIELD 65536u          /* bytes per field */
#define PG_HRFEED_REASON_MAX 160

/* One mapping "CSV column" -> "identity attribute". */
typedef struct pg_hrfeed_colmap {
    char *column;
    char *attr;
} pg_hrfeed_colmap_t;

/*
 * Parsed feed configuration (JSON object, see docs/sidecar.md):
 *   "delimiter"          one ASCII byte, default ","; "\t" allowed
 *   "quote"              one ASCII byte, default "\""; differs from delimiter
 *   "header"             bool, default true
 *   "columns"            [names] when header is false (required then, and
 *                        forbidden when header is true)
 *   "key_column"         required; the stable person key (employee id)
 *   "attributes"         required object {"column": "attr", ...}, >= 1
 *   "termination_column" optional; empty value = not terminated
 *   "date_format"        "YYYY-MM-DD" (the only one supported; default)
 *   "required_columns"   optional [names]: value must be non-empty
 *   "max_rows"           default 200000 (data records; more = refused)
 *   "max_file_bytes"     default 64 MiB
 *   "max_errors_reported" default 100 (errors beyond are only counted)
 *   "max_malformed_pct"  default 5 (0..100)
 *   "max_leave_pct"      default 10 (0..100)
 * Every referenced column must exist in the header (checked at parse time).
 * Owned by the struct; pg_hrfeed_cfg_free() releases it.
 */
typedef struct pg_hrfeed_cfg {
    char delimiter;
    char quote;
    int header;
    char **columns;               /* NULL-terminated or NULL */
    char *key_column;
    pg_hrfeed_colmap_t *attrs;    /* sorted by attr name */
    size_t nattrs;
    char *termination_column;     /* or NULL */
    char **required_columns;      /* NULL-terminated or NULL */
    unsigned max_rows;
    unsigned max_file_bytes;
    unsigned max_errors_reported;
    unsigned max_malformed_pct;
    unsigned max_leave_pct;
} pg_hrfeed_cfg_t;

/*
 * Parse and validate a feed object found at JSON path `path` (used in
 * messages, e.g. "$.hr_source"). Errors are "<path>.<key>: <reason>" with
 * PG_ERR_CONFIG (PG_ERR_NOMEM on OOM). *out is malloc'd on success, NULL
 * otherwise; free with pg_hrfeed_cfg_free().
 */
PG_MUST_USE pg_status_t pg_hrfeed_cfg_parse(const json_t *obj,
                                            const char *path,
                                            pg_hrfeed_cfg_t **out,
                                            pg_err_t *err);
void pg_hrfeed_cfg_free(pg_hrfeed_cfg_t *cfg);

/* One rejected record: the physical line where it starts (1-based, the
 * header is line 1) and why. */
typedef struct pg_hrfeed_error {
    unsigned long line;
    char reason[PG_HRFEED_REASON_MAX];
} pg_hrfeed_error_t;

/* One accepted record. */
typedef struct pg_hrfeed_row {
    char *key;
    json_t *attrs;            /* object attr -> string (owned reference) */
    uint32_t term_date;       /* YYYYMMDD, 0 when no termination date */
    unsigned long line;
} pg_hrfeed_row_t;

typedef struct pg_hrfeed_parsed {
    pg_hrfeed_row_t *rows;    /* accepted, sorted by key (bytewise) */
    size_t nrows;
    char **held;              /* keys of rejected-but-identifiable records,
                               * sorted, unique */
    size_t nheld;
    pg_hrfeed_error_t *errors; /* at most max_errors_reported, sorted by
                               * line; when capped, syntax/validation
                               * errors (file order) are kept before
                               * duplicate-key errors */
    size_t nerrors;
    size_t nbad;              /* all rejected records (>= nerrors) */
    size_t nrecords;          /* all data records seen (accepted + rejected) */
    int refused;              /* 1 when too many records were malformed */
} pg_hrfeed_parsed_t;

/*
 * Parse an HR export held in buf[0..len) (need not be NUL-terminated).
 * Limits, checked before any parsing: len <= cfg->max_file_bytes
 * (PG_ERR_TOO_LARGE). A leading UTF-8 BOM is skipped; records end in LF or
 * CRLF; fields follow RFC 4180 with cfg->delimiter/cfg->quote ("" inside a
 * quoted field is one quote). Entirely empty lines are skipped.
 *
 * Whole-file failures (*out NULL, reason in err):
 *  PG_ERR_TOO_LARGE  file over max_file_bytes, or more than max_rows records
 *  PG_ERR_INVALID    no header, or a configured column missing/duplicated in it
 * Record failures (collected, record skipped): wrong field count,
 * unterminated quote, text after a closing quote, empty key, missing
 * required value, bad termination date, NUL byte, invalid UTF-8, field or
 * column count over the limits, duplicate key (every copy is rejected).
 *
 * Returns PG_OK, or PG_ERR_DENIED when nbad * 100 > max_malformed_pct *
 * nrecords: then *out is still set (refused = 1) so the errors can be
 * reported, and it must not be applied. *out is owned by the caller:
 * pg_hrfeed_parsed_free().
 */
PG_MUST_USE pg_status_t pg_hrfeed_parse(const pg_hrfeed_cfg_t *cfg,
                                        const char *buf, size_t len,
                                        pg_hrfeed_parsed_t **out,
                                        pg_err_t *err);
void pg_hrfeed_parsed_free(pg_hrfeed_parsed_t *p);

/*
 * Load a stored snapshot: a JSON object {"<key>": {"<attr>": "<string>",
 * ...}, ...}. len is capped by cap (PG_ERR_TOO_LARGE); any other shape is
 * PG_ERR_INVALID with the offending key in err. *out is a new reference.
 */
PG_MUST_USE pg_status_t pg_hrfeed_snapshot_parse(const char *buf, size_t len,
                                                 size_t cap, json_t **out,
                                                 pg_err_t *err);

/* One changed attribute of a move; a NULL side means absent. */
typedef struct pg_hrfeed_change {
    char *attr;
    char *old_value;
    char *new_value;
} pg_hrfeed_change_t;

typedef struct pg_hrfeed_join {
    char *key;
    json_t *attrs;            /* new attributes (owned reference) */
} pg_hrfeed_join_t;

typedef struct pg_hrfeed_move {
    char *key;
    json_t *attrs;            /* new attributes (owned reference) */
    pg_hrfeed_change_t *changes; /* sorted by attr */
    size_t nchanges;
} pg_hrfeed_move_t;

typedef enum {
    PG_HRFEED_LEAVE_GONE = 1,       /* key no longer in the export */
    PG_HRFEED_LEAVE_TERMINATED = 2  /* termination date <= today */
} pg_hrfeed_leave_reason_t;

typedef struct pg_hrfeed_leave {
    char *key;
    json_t *attrs;            /* last known attributes (owned reference) */
    pg_hrfeed_leave_reason_t reason;
    uint32_t term_date;       /* YYYYMMDD when TERMINATED, else 0 */
} pg_hrfeed_leave_t;

typedef struct pg_hrfeed_diff {
    pg_hrfeed_join_t *joins;  /* every list is sorted by key */
    size_t njoins;
    pg_hrfeed_move_t *moves;
    size_t nmoves;
    pg_hrfeed_leave_t *leaves;
    size_t nleaves;
    size_t unchanged;
    size_t held;              /* previous keys kept because their row was bad */
    size_t terminated_absent; /* terminated rows never in the snapshot */
    pg_hrfeed_error_t *errors; /* copy of the parse errors */
    size_t nerrors;
    size_t nbad;
    json_t *next;             /* snapshot to store once applied */
    int refused;              /* 1 when the mass-leave guard tripped */
} pg_hrfeed_diff_t;

/*
 * Compare prev (a snapshot as accepted by pg_hrfeed_snapshot_parse; NULL
 * means empty) with the parsed export as of today ("YYYY-MM-DD").
 *  joins:  key not in prev, not terminated by today;
 *  moves:  key in prev with different attributes (changes listed);
 *  leaves: key in prev that is absent (and not held), or whose
 *          termination date <= today;
 *  a termination date after today is an ordinary active row.
 * Returns PG_ERR_INVALID for a bad today/prev, PG_ERR_DENIED when parsed
 * was refused (*out NULL) or when nleaves * 100 > max_leave_pct * |prev|
 * and force is 0 (then *out is set with refused = 1, for reporting only).
 * *out is owned by the caller: pg_hrfeed_diff_free(). Deterministic: the
 * same inputs always give the same lists in the same order.
 */
PG_MUST_USE pg_status_t pg_hrfeed_diff(const pg_hrfeed_cfg_t *cfg,
                                       const json_t *prev,
                                       const pg_hrfeed_parsed_t *parsed,
                                       const char *today, int force,
                                       pg_hrfeed_diff_t **out, pg_err_t *err);
void pg_hrfeed_diff_free(pg_hrfeed_diff_t *d);

/* Parse a strict calendar date "YYYY-MM-DD" (n bytes) into YYYYMMDD.
 * Years 1900..9999; month/day checked, leap years included. */
PG_MUST_USE pg_status_t pg_hrfeed_date(const char *s, size_t n,
                                       uint32_t *out);

#endif
