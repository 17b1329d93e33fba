/*
 * provgate connectors: the SQL connector (PostgreSQL through libpq).
 *
 * For an application whose accounts live in database tables: provgate
 * runs the operator's own parameterised statements (lookup, create,
 * update, disable, enable, delete, list and, optionally, group_list /
 * group_add / group_remove) over one libpq connection per connector,
 * without ever blocking the host loop (PQconnectStartParams/PQconnectPoll,
 * PQsendQueryParams in non-blocking, single-row mode, host watches and
 * timers). Operations run one at a time, in FIFO order.
 *
 * Config (the target's "connector" object, every other key refused):
 *   "type":          "sql" (accepted, not required)
 *   "conninfo":      libpq keyword/value string or postgresql:// URI, or
 *   "host", "port", "dbname", "user", "password_file" (not with conninfo)
 *   "timeout_ms":    10..120000, default 5000: budget of one operation
 *                    (connect included); for list(), of each page
 *   "page_size":     1..PG_CONN_PAGE_MAX, default 500 (the :limit value)
 *   "statements":    object of SQL texts with NAMED parameters (:key, :id,
 *                    :active, :attr.<name>, :group, :since, :after,
 *                    :limit), translated at load into $1..$n. Values are
 *                    only ever sent as parameters.
 * See docs/connectors-sql.md for every key, the result column names and
 * a worked example schema.
 *
 * DNS: libpq resolves host names synchronously when a connection starts;
 * use an IP address (or hostaddr, or a unix socket directory) to keep the
 * loop strictly non-blocking.
 */
#ifndef PROVGATE_SQLCONN_H
#define PROVGATE_SQLCONN_H

#include <jansson.h>
#include "provgate/connector.h"

#define PG_SQL_TEXT_MAX       16384     /* bytes of one statement's SQL */
#define PG_SQL_PARAMS_MAX     64        /* distinct parameters per statement */
#define PG_SQL_FIELD_MAX      65536     /* bytes of one result field / value */
#define PG_SQL_COLUMNS_MAX    64        /* result columns */
#define PG_SQL_RESULT_MAX     (8u * 1024u * 1024u) /* bytes of one result */
#define PG_SQL_GROUPS_MAX     1000      /* groups / revoke entries */

/*
 * Create a SQL connector for target name from cfg. On success *out is
 * owned by the caller (pg_connector_free()); cfg is not kept (the
 * password read from password_file is copied and wiped on free). No
 * connection is made here: the first operation connects. On a bad config:
 * PG_ERR_CONFIG and err = "connector.<path>: <reason>". host must provide
 * watches and timers.
 */
PG_MUST_USE pg_status_t pg_sql_connector_new(const pg_host_t *host,
                                             const char *name,
                                             const json_t *cfg,
                                             pg_connector_t **out,
                                             pg_err_t *err);

#endif
