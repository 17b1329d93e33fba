/*
 * provgate core: the uniform connector contract.
 *
 * Every target type (SCIM, REST, LDAP, SQL, delimited file, manual) is
 * reachable through one small vtable, so the outbox consumer, the sidecar's
 * Join/Move/Leave jobs and reconciliation drive any target the same way.
 * A connector is created from the target's "connector" JSON object in the
 * provgate config by its type's constructor (pg_<type>_connector_new, see
 * the type's own header), which validates every key with a precise error.
 *
 * Model: an account is identified on the target by its key (the username:
 * uid, userName, a row's key column...). provgate applies DESIRED STATE,
 * never blind commands, so every operation is idempotent: ensure() on an
 * account that already matches changes nothing and reports UNCHANGED;
 * disable() of a disabled account and remove() of a missing one succeed.
 *
 * Asynchrony: operations never block. Each start function either fails
 * synchronously (nothing is called) or returns PG_OK and calls its callback
 * exactly once, later, from the host's event loop (never from inside the
 * start call). *req_out (may be NULL) receives a handle; pg_conn_cancel()
 * guarantees the callback is not called and frees the request. A handle is
 * invalid after its callback ran or after cancel. A cancelled operation
 * may still have reached the target.
 *
 * Errors in callbacks: PG_ERR_TIMEOUT (the per-attempt budget ran out),
 * PG_ERR_IO (connection failed), PG_ERR_DENIED (target refused: auth,
 * permissions), PG_ERR_INVALID (target rejected the data), PG_ERR_CONFLICT
 * (uniqueness clash that adoption could not resolve), PG_ERR_BUSY (rate
 * limited / try later). res->retryable says whether a retry may succeed;
 * res->error is a short human-readable reason, never a secret.
 */
#ifndef PROVGATE_CONNECTOR_H
#define PROVGATE_CONNECTOR_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "provgate/host.h"
#include "provgate/util.h"

#define PG_CONN_KEY_MAX    256        /* account key / id length cap */
#define PG_CONN_ERROR_MAX  512        /* res->error length cap */
#define PG_CONN_PAGE_MAX   1000       /* accounts per list page, max */

typedef struct pg_connector pg_connector_t;
typedef struct pg_conn_req pg_conn_req_t;

/* The desired state of one account. Borrowed by the start call: the
 * connector copies what it keeps. */
typedef struct pg_account {
    const char *key;           /* required: username on the target */
    const char *id;            /* target's id if known (remembered), or NULL */
    const char *identity;      /* provgate identity id, or NULL */
    const json_t *attrs;       /* object: attribute -> string, number, bool
                                  or array of strings (multi-valued); the
                                  mapped target attributes (may be NULL) */
    const char *const *groups; /* entitlements the account must have */
    size_t ngroups;
    const char *const *revoke; /* entitlements it must NOT have (only
                                  these are removed: provgate never touches
                                  memberships it does not manage) */
    size_t nrevoke;
    int active;                /* 1: enabled, 0: ensure disabled */
} pg_account_t;

typedef enum pg_conn_outcome {
    PG_CONN_UNCHANGED = 0,     /* already as desired */
    PG_CONN_CREATED,
    PG_CONN_UPDATED,           /* attributes and/or memberships changed */
    PG_CONN_ADOPTED,           /* existed without our link; now linked */
    PG_CONN_DISABLED,
    PG_CONN_REMOVED,
    PG_CONN_QUEUED             /* manual: a work item waits for a human */
} pg_conn_outcome_t;

/* Result of ensure/disable/remove. Valid only during the callback. */
typedef struct pg_conn_result {
    pg_conn_outcome_t outcome;
    const char *id;            /* target's account id ("" if none) */
    const json_t *changes;     /* array of changed attribute/group names,
                                  or NULL */
    int retryable;             /* on error: 1 if a later retry may succeed */
    uint64_t retry_after_ms;   /* on error: suggested delay, 0 = default */
    const char *error;         /* on error: short reason, else "" */
} pg_conn_result_t;

typedef void (*pg_conn_cb)(void *arg, pg_status_t st,
                           const pg_conn_result_t *res);

/* One account as listed from the target. Valid only during the callback.
 * attrs holds the mapped attributes the connector reads back (the same
 * names as in pg_account_t.attrs), groups the memberships it can see. */
typedef struct pg_listed_account {
    const char *key;
    const char *id;
    const json_t *attrs;       /* object, may be empty */
    const char *const *groups;
    size_t ngroups;
    int active;
    uint64_t modified_ms;      /* last modification (0 = unknown) */
} pg_listed_account_t;

/*
 * Page callback of list(): n accounts (n <= PG_CONN_PAGE_MAX). Return 0 to
 * continue, non-zero to stop (then done is called with PG_ERR_CANCELLED).
 */
typedef int (*pg_conn_page_cb)(void *arg, const pg_listed_account_t *accts,
                               size_t n);
typedef void (*pg_conn_done_cb)(void *arg, pg_status_t st, const char *error);

typedef struct pg_connector_vt {
    const char *type;          /* "scim", "rest", "ldap", "sql", "csv",
                                  "manual" */
    /* Make the account match a (create, adopt, update, set memberships). */
    pg_status_t (*ensure)(pg_connector_t *c, const pg_account_t *a,
                          pg_conn_cb cb, void *arg, pg_conn_req_t **req_out);
    /* Disable the account (key/id of a); unknown account: PG_ERR_NOT_FOUND
     * in the callback. */
    pg_status_t (*disable)(pg_connector_t *c, const pg_account_t *a,
                           pg_conn_cb cb, void *arg, pg_conn_req_t **req_out);
    /* Delete the account; a missing account is success (REMOVED). */
    pg_status_t (*remove)(pg_connector_t *c, const pg_account_t *a,
                          pg_conn_cb cb, void *arg, pg_conn_req_t **req_out);
    /* List every account, page by page (full reconciliation), or only the
     * ones modified at or after since_ms when since_ms > 0 and the target
     * can tell (incremental); a connector that cannot filter lists all and
     * says so in pg_connector_caps. done runs once at the end. */
    pg_status_t (*list)(pg_connector_t *c, uint64_t since_ms,
                        pg_conn_page_cb page, pg_conn_done_cb done, void *arg,
                        pg_conn_req_t **req_out);
    void (*cancel)(pg_conn_req_t *req);
    void (*free)(pg_connector_t *c);
} pg_connector_vt_t;

#define PG_CONN_CAP_LIST        0x1u  /* list() works */
#define PG_CONN_CAP_INCREMENTAL 0x2u  /* list() honours since_ms */
#define PG_CONN_CAP_GROUPS      0x4u  /* memberships are managed */
#define PG_CONN_CAP_DISABLE     0x8u  /* disable() is a real state */

/* The base every connector embeds as its FIRST member. */
struct pg_connector {
    const pg_connector_vt_t *vt;
    const pg_host_t *host;
    char *name;                /* target name (malloc'd, owned) */
    unsigned caps;             /* PG_CONN_CAP_* */
};

/* Convenience wrappers (call through the vtable). */
static inline pg_status_t PG_MUST_USE
pg_conn_ensure(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
               void *arg, pg_conn_req_t **req_out)
{
    return c->vt->ensure(c, a, cb, arg, req_out);
}

static inline pg_status_t PG_MUST_USE
pg_conn_disable(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
                void *arg, pg_conn_req_t **req_out)
{
    return c->vt->disable(c, a, cb, arg, req_out);
}

static inline pg_status_t PG_MUST_USE
pg_conn_remove(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
               void *arg, pg_conn_req_t **req_out)
{
    return c->vt->remove(c, a, cb, arg, req_out);
}

static inline pg_status_t PG_MUST_USE
pg_conn_list(pg_connector_t *c, uint64_t since_ms, pg_conn_page_cb page,
             pg_conn_done_cb done, void *arg, pg_conn_req_t **req_out)
{
    return c->vt->list(c, since_ms, page, done, arg, req_out);
}

static inline void
pg_conn_cancel(pg_connector_t *c, pg_conn_req_t *req)
{
    c->vt->cancel(req);
}

/* Free a connector; every request must be finished or cancelled first. */
static inline void
pg_connector_free(pg_connector_t *c)
{
    if (c != NULL) {
        c->vt->free(c);
    }
}

/*
 * Create the connector of type type_name ("rest", "ldap", "sql", "csv",
 * "manual") for target name from its "connector" JSON object (factory.c).
 * http and redis are borrowed (REST uses http, manual uses redis with
 * key prefix prefix) and must outlive the connector. No I/O happens here:
 * a bad object gives PG_ERR_CONFIG with "<path>: <reason>" in err.
 */
struct pg_http;
struct pg_redis;
PG_MUST_USE pg_status_t pg_connector_create(const pg_host_t *host,
                                            struct pg_http *http,
                                            struct pg_redis *redis,
                                            const char *prefix,
                                            const char *name,
                                            const char *type_name,
                                            const json_t *cfg,
                                            pg_connector_t **out,
                                            pg_err_t *err);

/* Stable name of an outcome ("created", ...). Never NULL. */
const char *pg_conn_outcome_str(pg_conn_outcome_t o);

/*
 * Helpers for constructors, so every connector reports config errors the
 * same way: "<path>: <reason>" in err, PG_ERR_CONFIG.
 *  pg_conn_cfg_str: required (req=1) or optional string member; *out
 *    borrowed from obj (NULL when absent and optional).
 *  pg_conn_cfg_uint: optional unsigned member in [min, max], default dflt.
 *  pg_conn_cfg_known: every member name of obj is in the NULL-terminated
 *    list allowed (unknown keys are errors, as everywhere in provgate).
 */
PG_MUST_USE pg_status_t pg_conn_cfg_str(const json_t *obj, const char *path,
                                        const char *key, int req,
                                        const char **out, pg_err_t *err);
PG_MUST_USE pg_status_t pg_conn_cfg_uint(const json_t *obj, const char *path,
                                         const char *key, unsigned min,
                                         unsigned max, unsigned dflt,
                                         unsigned *out, pg_err_t *err);
PG_MUST_USE pg_status_t pg_conn_cfg_known(const json_t *obj,
                                          const char *path,
                                          const char *const *allowed,
                                          pg_err_t *err);

#endif
