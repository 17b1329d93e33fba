/*
 * provgate connectors: the delimited-text ("csv") connector.
 *
 * For a legacy system that imports a file: provgate keeps the DESIRED
 * accounts of one target as a delimited text file (RFC 4180 quoting) and
 * replaces it atomically on every change (temp file in the same directory,
 * fsync, rename over the old file, fsync the directory), so an importer
 * reading the file sees either the old or the new version, never a part.
 *
 * Config (the target's "connector" object, every other key refused):
 *   "type":             "csv" (accepted, not required)
 *   "path":             absolute path of the file (required)
 *   "columns":          ordered array of column names (required); exactly
 *                       one "key"; optional "active" ("true"/"false") and
 *                       "groups" (memberships joined by groups_separator);
 *                       any other name is an attribute of pg_account_t.attrs
 *   "delimiter":        one ASCII byte, default ","
 *   "groups_separator": 1..8 bytes, default ";"
 *   "header":           bool, default true (first line = column names)
 *   "mode":             octal string, default "0640"
 *   "line_end":         "lf" (default) or "crlf"
 *   "formula_guard":    "quote" (default), "refuse" or "off": what to do
 *                       with a cell starting with = + - @ TAB or CR (see
 *                       docs/connectors-onprem-files.md)
 *   "lock":             bool, default true: each write holds flock() on
 *                       "<dir>/.<file name>.lock" (busy: PG_ERR_BUSY)
 *   "max_rows":         1..1000000, default 100000
 *   "max_bytes":        4096..67108864, default 16777216 (read cap)
 *
 * Operations run on the host's loop thread from a 0 ms timer (blocking,
 * bounded local file I/O; meant for the sidecar): the callback is never
 * called from inside the start call. Write operations pending at that
 * time run as one batch (one read, one atomic write, callbacks in start
 * order). Writers in other processes are kept
 * out by the lock file (when "lock" is on); readers need no lock.
 */
#ifndef PROVGATE_CSVCONN_H
#define PROVGATE_CSVCONN_H

#include <jansson.h>
#include "provgate/connector.h"

#define PG_CSV_MAX_COLUMNS   64
#define PG_CSV_DEFAULT_ROWS  100000u
#define PG_CSV_DEFAULT_BYTES (16u * 1024u * 1024u)

/*
 * Create a csv connector for target name from cfg. On success *out is
 * owned by the caller (pg_connector_free()). cfg is not kept. On a bad
 * config: PG_ERR_CONFIG and err = "targets.<name>.connector.<key>:
 * <reason>" (e.g. "targets.hr.connector.columns[2]: duplicate column").
 */
PG_MUST_USE pg_status_t pg_csv_connector_new(const pg_host_t *host,
                                             const char *name,
                                             const json_t *cfg,
                                             pg_connector_t **out,
                                             pg_err_t *err);

/* The same, with the JSON path of cfg for error messages given by the
 * caller (e.g. "sidecar.targets[3].connector"). */
PG_MUST_USE pg_status_t pg_csv_connector_new_at(const pg_host_t *host,
                                                const char *name,
                                                const json_t *cfg,
                                                const char *path,
                                                pg_connector_t **out,
                                                pg_err_t *err);

#endif
