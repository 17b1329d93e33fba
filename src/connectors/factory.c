/*
 * provgate core: build a connector from a target's "connector" object.
 * See pg_connector_create() in include/provgate/connector.h. Error paths
 * read "$.targets.<name>.connector...".
 */
#include <stdio.h>
#include <string.h>

#include "provgate/config.h"
#include "provgate/connector.h"
#include "provgate/loop.h"
#include "provgate/http.h"
#include "provgate/redis.h"
#include "provgate/rest.h"
#include "provgate/csvconn.h"
#include "provgate/ldapconn.h"
#include "provgate/manualconn.h"
#include "provgate/sqlconn.h"

/* Errors of constructors that report "connector.<key>: ..." get the
 * "$.targets.<name>." prefix so every config error has a full path. */
static pg_status_t
pg_conn_prefixed(pg_status_t st, const char *name, pg_err_t *err)
{
    char tmp[PG_ERR_MSG_MAX];

    if (st != PG_OK && err != NULL && strncmp(err->msg, "$.", 2) != 0) {
        snprintf(tmp, sizeof(tmp), "%s", err->msg);
        pg_err_set(err, "$.targets.%s.%s", name, tmp);
    }
    return st;
}

pg_status_t
pg_connector_create(const pg_host_t *host, struct pg_http *http,
                    struct pg_redis *redis, const char *prefix,
                    const char *name, const char *type_name,
                    const json_t *cfg, pg_connector_t **out, pg_err_t *err)
{
    char path[320];

    *out = NULL;
    snprintf(path, sizeof(path), "$.targets.%s.connector", name);
    if (strcmp(type_name, "rest") == 0) {
        return pg_rest_connector_new_at(host, http, name, cfg, path, out, err);
    }
    if (strcmp(type_name, "sql") == 0) {
        return pg_conn_prefixed(pg_sql_connector_new(host, name, cfg, out,
                                                     err), name, err);
    }
    if (strcmp(type_name, "ldap") == 0) {
        return pg_conn_prefixed(pg_ldap_connector_new(host, name, cfg, out,
                                                      err), name, err);
    }
    if (strcmp(type_name, "csv") == 0) {
        return pg_csv_connector_new_at(host, name, cfg, path, out, err);
    }
    if (strcmp(type_name, "manual") == 0) {
        return pg_manual_connector_new_at(host, redis, prefix, name, cfg, path,
                                          out, err);
    }
    pg_err_set(err, "%s: connector type \"%s\" is not available", path,
               type_name);
    return PG_ERR_CONFIG;
}

/*
 * Validate every connector target's "connector" object at config load
 * (so `nginx -t` and `provgatectl` catch it): each is built on a throw-away
 * poll loop, with no I/O, and freed. First error wins.
 */
pg_status_t
pg_connectors_check(const pg_config_t *cfg, pg_err_t *err)
{
    pg_loop_t *loop = NULL;
    pg_http_t *http = NULL;
    pg_redis_t *redis = NULL;
    pg_connector_t *c;
    pg_status_t st = PG_OK;
    size_t i;

    for (i = 0; st == PG_OK && i < cfg->ntargets; i++) {
        const pg_target_cfg_t *t = &cfg->targets[i];

        if (t->type != PG_TARGET_CONNECTOR) {
            continue;
        }
        if (loop == NULL) {
            st = pg_loop_new(&loop);
            if (st == PG_OK) {
                st = pg_http_new(pg_loop_host(loop), &http);
            }
            if (st == PG_OK) {
                /* never used: no command is sent before it is freed */
                st = pg_redis_new(pg_loop_host(loop), &cfg->redis, &redis);
            }
            if (st != PG_OK) {
                break;
            }
        }
        c = NULL;
        st = pg_connector_create(pg_loop_host(loop), http, redis,
                                 cfg->redis.key_prefix, t->name, t->type_name,
                                 t->connector, &c, err);
        pg_connector_free(c);
    }
    pg_redis_free(redis);
    pg_http_free(http);
    pg_loop_free(loop);
    return st;
}
