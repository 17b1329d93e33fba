/*
 * ngx_http_provgate_module: just-in-time provisioning gateway, nginx glue.
 *
 * This file only talks to nginx. Every decision (OIDC login, session,
 * correlation, policy, provisioning, audit) is made by the core library
 * (include/provgate/gate.h) over non-blocking Redis and HTTP clients that
 * run on this worker's event loop (ngx_http_provgate_host.c). A request
 * that waits for them is suspended (NGX_DONE) and resumed through
 * ngx_http_core_run_phases(), as ngx_http_mirror_module does.
 *
 * Directives:
 *   provgate_config  <file>;          http      the provgate JSON config
 *   provgate         oidc:<idp> | saml:<idp> ... | off;
 *                                      http/srv/loc  protect with this IdP, or
 *                                      let the user choose among several
 *   provgate_app     <target> | off;   http/srv/loc  account to provision
 *   provgate_callback;                 loc       the OIDC redirect URI
 *   provgate_logout;                   loc       end the session
 *   provgate_saml_metadata <idp>;      loc       SAML SP metadata of <idp>
 *   provgate_saml_acs;                 loc       SAML Assertion Consumer Service
 *   provgate_saml_slo <idp>;           loc       SAML Single Logout (the IdP's
 *                                      slo_url: LogoutRequest/Response)
 *   provgate_admin;                    loc       admin API (access requests,
 *                                      dead letters; JSON)
 *   provgate_wait_timeout <time>;      http/srv/loc  longest a request may
 *                                      wait for provgate (default 60s)
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_provgate.h"
#if (NGX_THREADS)
#include <ngx_thread_pool.h>
#endif
#include "provgate/config.h"
#include "provgate/gate.h"
#include "provgate/saml.h"


#define NGX_HTTP_PROVGATE_OFF       0
#define NGX_HTTP_PROVGATE_OIDC      1
#define NGX_HTTP_PROVGATE_SAML      2

#define NGX_HTTP_PROVGATE_NONE      0
#define NGX_HTTP_PROVGATE_CALLBACK  1
#define NGX_HTTP_PROVGATE_LOGOUT    2
#define NGX_HTTP_PROVGATE_METADATA  3
#define NGX_HTTP_PROVGATE_SAML_ACS  4
#define NGX_HTTP_PROVGATE_ADMIN     5
#define NGX_HTTP_PROVGATE_SAML_SLO  6

#define NGX_HTTP_PROVGATE_MAX_HEADERS  8


typedef struct {
    ngx_str_t            file;
    pg_config_t         *cfg;
    ngx_str_t            strip[NGX_HTTP_PROVGATE_MAX_HEADERS];
    ngx_uint_t           nstrip;
} ngx_http_provgate_main_conf_t;


typedef struct {
    ngx_int_t            mode;          /* NGX_HTTP_PROVGATE_OFF/OIDC */
    ngx_str_t            idp;           /* NUL-terminated; the first IdP */
    ngx_array_t         *idps;          /* of char *: every IdP, NUL-
                                           terminated, in directive order */
    ngx_str_t            app;           /* NUL-terminated; empty = none */
    ngx_uint_t           endpoint;      /* callback / logout */
    ngx_msec_t           wait_timeout;
    ngx_str_t            saml_idp;      /* provgate_saml_metadata/_slo */
} ngx_http_provgate_loc_conf_t;


typedef struct {
    ngx_http_request_t  *request;
    ngx_event_t          wait;          /* watchdog while suspended */
    pg_gate_op_t        *op;
    pg_gate_result_t    *res;
    unsigned             waiting:1;
    unsigned             content:1;
} ngx_http_provgate_ctx_t;


static char *ngx_http_provgate_config(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_provgate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_provgate_app(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_provgate_endpoint(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_provgate_saml_metadata(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_provgate_strip_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_provgate_access_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_provgate_content_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_provgate_subrequest_handler(ngx_http_request_t *r);
static void *ngx_http_provgate_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_provgate_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_provgate_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_provgate_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_provgate_init_process(ngx_cycle_t *cycle);
static void ngx_http_provgate_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_http_provgate_commands[] = {

    { ngx_string("provgate_config"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_provgate_config,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("provgate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_provgate,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("provgate_app"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_provgate_app,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("provgate_callback"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_provgate_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PROVGATE_CALLBACK,
      NULL },

    { ngx_string("provgate_logout"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_provgate_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PROVGATE_LOGOUT,
      NULL },

    { ngx_string("provgate_saml_acs"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_provgate_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PROVGATE_SAML_ACS,
      NULL },

    { ngx_string("provgate_admin"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_provgate_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PROVGATE_ADMIN,
      NULL },

    { ngx_string("provgate_saml_metadata"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_provgate_saml_metadata,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PROVGATE_METADATA,
      NULL },

    { ngx_string("provgate_saml_slo"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_provgate_saml_metadata,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PROVGATE_SAML_SLO,
      NULL },

    { ngx_string("provgate_wait_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_provgate_loc_conf_t, wait_timeout),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_provgate_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_provgate_init,                /* postconfiguration */

    ngx_http_provgate_create_main_conf,    /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_provgate_create_loc_conf,     /* create location configuration */
    ngx_http_provgate_merge_loc_conf       /* merge location configuration */
};


ngx_module_t  ngx_http_provgate_module = {
    NGX_MODULE_V1,
    &ngx_http_provgate_module_ctx,         /* module context */
    ngx_http_provgate_commands,            /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_provgate_init_process,        /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_provgate_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* The gate of this worker process; NULL in the master and on failure. */
static pg_gate_t  *ngx_http_provgate_gate;


/* ---- request handling ------------------------------------------------ */


/* Is h one of the identity headers ('_' = '-', any case)? */
static ngx_uint_t
ngx_http_provgate_is_identity_header(ngx_http_provgate_main_conf_t *pmcf,
    ngx_table_elt_t *h)
{
    ngx_uint_t  j;

    for (j = 0; j < pmcf->nstrip; j++) {
        if (pg_header_name_eq((char *) h->key.data, h->key.len,
                              (char *) pmcf->strip[j].data,
                              pmcf->strip[j].len))
        {
            return 1;
        }
    }

    return 0;
}


/*
 * Remove every client-supplied copy of the identity headers, on every
 * request of every location: names compare case-insensitively with '_'
 * equal to '-'. The common case (none present) only scans. Otherwise the
 * list is rebuilt in place (ngx_list_t has no delete): keep a copy of the
 * old head (its parts live in the request pool and stay valid, as do the
 * pointers nginx keeps to known headers), re-initialise the request's list
 * so that its "last" pointer is right, and copy back what stays.
 */
static ngx_int_t
ngx_http_provgate_strip_handler(ngx_http_request_t *r)
{
    ngx_uint_t                      i, drop;
    ngx_list_t                      old;
    ngx_list_part_t                *part;
    ngx_table_elt_t                *h, *nh;
    ngx_http_provgate_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_provgate_module);

    if (pmcf->cfg == NULL || pmcf->nstrip == 0 || r != r->main) {
        return NGX_DECLINED;
    }

    drop = 0;
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {
        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }
            part = part->next;
            h = part->elts;
            i = 0;
        }
        drop += ngx_http_provgate_is_identity_header(pmcf, &h[i]);
    }

    if (drop == 0) {
        return NGX_DECLINED;
    }

    old = r->headers_in.headers;

    if (ngx_list_init(&r->headers_in.headers, r->pool, 20,
                      sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    part = &old.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {
        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }
            part = part->next;
            h = part->elts;
            i = 0;
        }
        if (ngx_http_provgate_is_identity_header(pmcf, &h[i])) {
            /* info, not warn: a client must not be able to flood the log */
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "provgate: dropped client header \"%V\"",
                          &h[i].key);
            continue;
        }
        nh = ngx_list_push(&r->headers_in.headers);
        if (nh == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        *nh = h[i];
    }

    return NGX_DECLINED;
}


static char *
ngx_http_provgate_pstrdup(ngx_pool_t *pool, u_char *data, size_t len)
{
    char  *p;

    p = ngx_pnalloc(pool, len + 1);
    if (p == NULL) {
        return NULL;
    }
    ngx_memcpy(p, data, len);
    p[len] = '\0';

    return p;
}


/*
 * Describe the request to the gate. Strings are copied into the request
 * pool so that they are NUL-terminated; the Cookie header values are
 * collected from the header list (the cookies array changed form in 1.23).
 */
static ngx_int_t
ngx_http_provgate_build_req(ngx_http_request_t *r,
    ngx_http_provgate_loc_conf_t *plcf, pg_gate_req_t *req)
{
    char            **c;
    ngx_uint_t        i;
    ngx_array_t       cookies;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    ngx_memzero(req, sizeof(pg_gate_req_t));

    if (plcf->idps != NULL && plcf->idps->nelts > 1) {
        /* several IdPs: the gate accepts any and lets the user choose */
        req->idps = plcf->idps->elts;
        req->nidps = plcf->idps->nelts;

    } else {
        req->idp = plcf->idp.len ? (char *) plcf->idp.data : NULL;
    }
    req->app = plcf->app.len ? (char *) plcf->app.data : NULL;
    req->method = ngx_http_provgate_pstrdup(r->pool, r->method_name.data,
                                            r->method_name.len);
    req->uri = (char *) r->unparsed_uri.data;
    req->uri_len = r->unparsed_uri.len;
    req->args = (char *) r->args.data;
    req->args_len = r->args.len;
    req->client_ip = ngx_http_provgate_pstrdup(r->pool,
                                               r->connection->addr_text.data,
                                               r->connection->addr_text.len);
    if (req->method == NULL || req->client_ip == NULL) {
        return NGX_ERROR;
    }

    req->wants_html = (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)) ? 1 : 0;

    if (ngx_array_init(&cookies, r->pool, 2, sizeof(char *)) != NGX_OK) {
        return NGX_ERROR;
    }

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {
        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }
            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len != 6) {
            continue;
        }

        if (ngx_strncasecmp(h[i].key.data, (u_char *) "cookie", 6) == 0) {
            c = ngx_array_push(&cookies);
            if (c == NULL) {
                return NGX_ERROR;
            }
            *c = ngx_http_provgate_pstrdup(r->pool, h[i].value.data,
                                           h[i].value.len);
            if (*c == NULL) {
                return NGX_ERROR;
            }

        } else if (ngx_strncasecmp(h[i].key.data, (u_char *) "accept", 6) == 0
                   && ngx_strlcasestrn(h[i].value.data,
                                       h[i].value.data + h[i].value.len,
                                       (u_char *) "text/html", 9 - 1) == NULL
                   && ngx_strlcasestrn(h[i].value.data,
                                       h[i].value.data + h[i].value.len,
                                       (u_char *) "*/*", 3 - 1) == NULL)
        {
            /* an API client: it gets 401, not a redirect to the IdP */
            req->wants_html = 0;
        }
    }

    req->cookies = (const char *const *) cookies.elts;
    req->ncookies = cookies.nelts;

    return NGX_OK;
}


static ngx_int_t
ngx_http_provgate_add_header(ngx_http_request_t *r, ngx_list_t *list,
    const char *name, const char *value)
{
    size_t            len;
    ngx_table_elt_t  *h;

    h = ngx_list_push(list);
    if (h == NULL) {
        return NGX_ERROR;
    }

    len = ngx_strlen(name);
    h->key.len = len;
    h->key.data = (u_char *) ngx_http_provgate_pstrdup(r->pool,
                                                       (u_char *) name, len);
    h->value.len = ngx_strlen(value);
    h->value.data = (u_char *) ngx_http_provgate_pstrdup(r->pool,
                                                         (u_char *) value,
                                                         h->value.len);
    h->lowcase_key = ngx_pnalloc(r->pool, len);
    if (h->key.data == NULL || h->value.data == NULL
        || h->lowcase_key == NULL)
    {
        return NGX_ERROR;
    }
    h->hash = ngx_hash_strlow(h->lowcase_key, h->key.data, len);
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}


static ngx_table_elt_t *
ngx_http_provgate_last_header(ngx_list_t *list)
{
    ngx_table_elt_t  *h = list->last->elts;

    return &h[list->last->nelts - 1];
}


/*
 * Send a redirect or a page from the gate's result. Returns what
 * ngx_http_output_filter() returned, for ngx_http_finalize_request().
 */
static ngx_int_t
ngx_http_provgate_send(ngx_http_request_t *r, pg_gate_result_t *res)
{
    size_t        i;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = res->status;

    for (i = 0; i < res->nset_cookies; i++) {
        if (ngx_http_provgate_add_header(r, &r->headers_out.headers,
                                         "Set-Cookie", res->set_cookies[i])
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (res->no_store) {
        if (ngx_http_provgate_add_header(r, &r->headers_out.headers,
                                         "Cache-Control", "no-store")
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (res->retry_after_s > 0) {
        char  ra[32];

        ngx_snprintf((u_char *) ra, sizeof(ra), "%ui%Z",
                     (ngx_uint_t) res->retry_after_s);
        if (ngx_http_provgate_add_header(r, &r->headers_out.headers,
                                         "Retry-After", ra)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (res->kind == PG_RES_REDIRECT) {
        if (ngx_http_provgate_add_header(r, &r->headers_out.headers,
                                         "Location", res->location)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        r->headers_out.location = ngx_http_provgate_last_header(
                                                  &r->headers_out.headers);
    }

    r->headers_out.content_length_n = (off_t) res->body_len;
    if (res->content_type != NULL) {
        r->headers_out.content_type.len = ngx_strlen(res->content_type);
        r->headers_out.content_type.data = (u_char *) res->content_type;
        r->headers_out.content_type_len = r->headers_out.content_type.len;
    }

    if (res->body_len == 0 || r->method == NGX_HTTP_HEAD) {
        r->header_only = 1;
        return ngx_http_send_header(r);
    }

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }

    b = ngx_create_temp_buf(r->pool, res->body_len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    b->last = ngx_cpymem(b->last, res->body, res->body_len);
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static void
ngx_http_provgate_cleanup(void *data)
{
    ngx_http_provgate_ctx_t  *ctx = data;

    if (ctx->wait.timer_set) {
        ngx_del_timer(&ctx->wait);
    }
    if (ctx->op != NULL) {
        pg_gate_cancel(ctx->op);
        ctx->op = NULL;
    }
    if (ctx->res != NULL) {
        pg_gate_result_free(ctx->res);
        ctx->res = NULL;
    }
}


/* The gate answered: resume the suspended request. */
static void
ngx_http_provgate_done(void *arg, pg_gate_result_t *res)
{
    ngx_int_t                 rc;
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_provgate_ctx_t  *ctx = arg;

    r = ctx->request;
    c = r->connection;

    ctx->op = NULL;
    ctx->waiting = 0;
    ctx->res = res;
    r->read_event_handler = ngx_http_block_reading;
    if (ctx->wait.timer_set) {
        ngx_del_timer(&ctx->wait);
    }

    if (ctx->content) {
        rc = res ? ngx_http_provgate_send(r, res)
                 : NGX_HTTP_SERVICE_UNAVAILABLE;
        ngx_http_finalize_request(r, rc);

    } else {
        r->write_event_handler = ngx_http_core_run_phases;
        ngx_http_core_run_phases(r);
    }

    ngx_http_run_posted_requests(c);
}


/*
 * The watchdog fired: the core did not answer within provgate_wait_timeout
 * (each of its operations has its own, shorter timeout, so this is a
 * safety net). Withdraw the operation and answer 504.
 */
static void
ngx_http_provgate_wait_expired(ngx_event_t *ev)
{
    ngx_http_provgate_ctx_t  *ctx = ev->data;

    ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                  "provgate: request waited longer than provgate_wait_timeout");

    if (ctx->op != NULL) {
        pg_gate_cancel(ctx->op);
        ctx->op = NULL;
    }

    ngx_http_provgate_done(ctx, pg_gate_error_page(504, "gateway_timeout",
                           "The sign-in service took too long. Please try "
                           "again."));
}


/*
 * Suspend r until the gate answers. While we wait:
 *  - a non-cancelable timer (the watchdog) bounds the wait and keeps a
 *    gracefully exiting worker alive until this request is answered
 *    (nginx exits once only cancelable timers are left);
 *  - ngx_http_test_reading notices a client that goes away: nginx then
 *    finalizes the request (499), its pool cleanup cancels the operation,
 *    and what it held (a Redis command, an HTTP transfer, a provisioning
 *    lease) is released at once.
 */
static void
ngx_http_provgate_suspend(ngx_http_request_t *r, ngx_http_provgate_ctx_t *ctx)
{
    ngx_http_provgate_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_provgate_module);

    ctx->waiting = 1;
    r->read_event_handler = ngx_http_test_reading;

    ctx->wait.handler = ngx_http_provgate_wait_expired;
    ctx->wait.data = ctx;
    ctx->wait.log = r->connection->log;
    ngx_add_timer(&ctx->wait, plcf->wait_timeout);
}


static ngx_http_provgate_ctx_t *
ngx_http_provgate_ctx_new(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t       *cln;
    ngx_http_provgate_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_provgate_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }
    cln->handler = ngx_http_provgate_cleanup;
    cln->data = ctx;

    ctx->request = r;
    ngx_http_set_ctx(r, ctx, ngx_http_provgate_module);

    return ctx;
}


/* The request is allowed: add the identity headers, continue. */
static ngx_int_t
ngx_http_provgate_allow(ngx_http_request_t *r, pg_gate_result_t *res)
{
    size_t  i;

    for (i = 0; i < res->nheaders; i++) {
        if (ngx_http_provgate_add_header(r, &r->headers_in.headers,
                                         res->headers[i].name,
                                         res->headers[i].value)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_provgate_access_result(ngx_http_request_t *r,
    ngx_http_provgate_ctx_t *ctx)
{
    ngx_int_t  rc;

    if (ctx->res == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;   /* out of memory */
    }

    if (ctx->res->kind == PG_RES_ALLOW) {
        return ngx_http_provgate_allow(r, ctx->res);
    }

    rc = ngx_http_provgate_send(r, ctx->res);
    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}


static ngx_int_t
ngx_http_provgate_no_gate(ngx_http_request_t *r, ngx_http_provgate_ctx_t *ctx)
{
    ctx->res = pg_gate_error_page(503, "gateway_unavailable",
                                  "The sign-in service is not available. "
                                  "Please try again later.");
    if (ctx->res == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }
    return NGX_OK;
}


static ngx_int_t
ngx_http_provgate_access_handler(ngx_http_request_t *r)
{
    pg_status_t                    st;
    pg_gate_req_t                  req;
    ngx_http_provgate_ctx_t       *ctx;
    ngx_http_provgate_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_provgate_module);

    if (plcf->mode == NGX_HTTP_PROVGATE_OFF
        || plcf->endpoint != NGX_HTTP_PROVGATE_NONE)
    {
        return NGX_DECLINED;
    }

    if (r != r->main) {
        /* nginx skips the access phase for subrequests; see below */
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_provgate_module);

    if (ctx != NULL) {
        if (ctx->waiting) {
            return NGX_AGAIN;
        }
        if (ctx->res != NULL) {
            return ngx_http_provgate_access_result(r, ctx);
        }
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx = ngx_http_provgate_ctx_new(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_provgate_gate == NULL) {
        if (ngx_http_provgate_no_gate(r, ctx) != NGX_OK) {
            return NGX_HTTP_SERVICE_UNAVAILABLE;
        }
        return ngx_http_provgate_access_result(r, ctx);
    }

    if (ngx_http_provgate_build_req(r, plcf, &req) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st = pg_gate_access(ngx_http_provgate_gate, &req, ngx_http_provgate_done,
                        ctx, &ctx->op, &ctx->res);
    if (st != PG_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "provgate: access failed: %s", pg_status_str(st));
        if (ngx_http_provgate_no_gate(r, ctx) != NGX_OK) {
            return NGX_HTTP_SERVICE_UNAVAILABLE;
        }
        return ngx_http_provgate_access_result(r, ctx);
    }

    if (ctx->op == NULL) {
        return ngx_http_provgate_access_result(r, ctx);
    }

    ngx_http_provgate_suspend(r, ctx);

    return NGX_DONE;
}


/*
 * nginx runs no access-phase handler for subrequests, so a subrequest
 * (auth_request, SSI, mirror) into a protected location would reach its
 * content unchecked. It is allowed only when provgate allowed the main
 * request, and never starts a login of its own: fail closed otherwise.
 */
static ngx_int_t
ngx_http_provgate_subrequest_handler(ngx_http_request_t *r)
{
    ngx_http_provgate_ctx_t       *ctx;
    ngx_http_provgate_loc_conf_t  *plcf;

    if (r == r->main) {
        return NGX_DECLINED;
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_provgate_module);

    if (plcf->mode == NGX_HTTP_PROVGATE_OFF
        || plcf->endpoint != NGX_HTTP_PROVGATE_NONE)
    {
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_provgate_module);
    if (ctx != NULL && ctx->res != NULL && ctx->res->kind == PG_RES_ALLOW) {
        return NGX_DECLINED;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "provgate: subrequest \"%V\" into a protected location "
                  "refused: the main request was not allowed by provgate",
                  &r->uri);

    return NGX_HTTP_FORBIDDEN;
}


/*
 * The ACS body has been read: collect it (memory or the temp file nginx
 * spilled it to; capped at PG_SAML_MAX_POST_BODY) and hand it to the gate.
 * The body reader holds its own reference on the request, so waiting here
 * needs no extra count; the answer is sent and the request finalized by
 * ngx_http_provgate_done().
 */
static void
ngx_http_provgate_acs_body(ngx_http_request_t *r)
{
    u_char                        *p;
    size_t                         len, n;
    ssize_t                        rd;
    ngx_int_t                      rc;
    ngx_buf_t                     *b;
    ngx_chain_t                   *cl;
    pg_status_t                    st;
    pg_gate_req_t                  req;
    ngx_http_provgate_ctx_t       *ctx;
    ngx_http_provgate_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_provgate_module);

    if (r->request_body == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_BAD_REQUEST);
        return;
    }

    len = 0;
    for (cl = r->request_body->bufs; cl != NULL; cl = cl->next) {
        b = cl->buf;
        len += b->in_file ? (size_t) (b->file_last - b->file_pos)
                          : (size_t) (b->last - b->pos);
    }
    if (len == 0 || len > PG_SAML_MAX_POST_BODY) {
        ngx_http_finalize_request(r, len ? NGX_HTTP_REQUEST_ENTITY_TOO_LARGE
                                         : NGX_HTTP_BAD_REQUEST);
        return;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    n = 0;
    for (cl = r->request_body->bufs; cl != NULL; cl = cl->next) {
        b = cl->buf;
        if (b->in_file) {
            rd = ngx_read_file(b->file, p + n,
                               (size_t) (b->file_last - b->file_pos),
                               b->file_pos);
            if (rd != (ssize_t) (b->file_last - b->file_pos)) {
                ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
                return;
            }
            n += (size_t) rd;
        } else {
            n += ngx_cpymem(p + n, b->pos, b->last - b->pos) - (p + n);
        }
    }

    ctx = ngx_http_provgate_ctx_new(r);
    if (ctx == NULL
        || ngx_http_provgate_build_req(r, plcf, &req) != NGX_OK)
    {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    ctx->content = 1;
    req.body = (char *) p;
    req.body_len = n;
    if (plcf->endpoint == NGX_HTTP_PROVGATE_SAML_SLO) {
        req.idp = (char *) plcf->saml_idp.data;
    }

    if (ngx_http_provgate_gate == NULL) {
        ctx->res = pg_gate_error_page(503, "gateway_unavailable",
                                      "The sign-in service is not available.");
        rc = ctx->res ? ngx_http_provgate_send(r, ctx->res)
                      : NGX_HTTP_SERVICE_UNAVAILABLE;
        ngx_http_finalize_request(r, rc);
        return;
    }

    if (plcf->endpoint == NGX_HTTP_PROVGATE_SAML_SLO) {
        st = pg_gate_saml_slo(ngx_http_provgate_gate, &req,
                              ngx_http_provgate_done, ctx, &ctx->op,
                              &ctx->res);
    } else {
        st = pg_gate_saml_acs(ngx_http_provgate_gate, &req,
                              ngx_http_provgate_done, ctx, &ctx->op,
                              &ctx->res);
    }
    if (st != PG_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_SERVICE_UNAVAILABLE);
        return;
    }

    if (ctx->op == NULL) {
        rc = ngx_http_provgate_send(r, ctx->res);
        ngx_http_finalize_request(r, rc);
        return;
    }

    ngx_http_provgate_suspend(r, ctx);
}


static ngx_int_t
ngx_http_provgate_content_handler(ngx_http_request_t *r)
{
    pg_status_t                    st;
    pg_gate_req_t                  req;
    ngx_http_provgate_ctx_t       *ctx;
    ngx_http_provgate_loc_conf_t  *plcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_POST))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_provgate_module);

    if (plcf->endpoint == NGX_HTTP_PROVGATE_SAML_ACS
        || (plcf->endpoint == NGX_HTTP_PROVGATE_SAML_SLO
            && r->method == NGX_HTTP_POST))
    {
        ngx_int_t  rc;

        if (r->method != NGX_HTTP_POST) {
            return NGX_HTTP_NOT_ALLOWED;
        }
        if (r->headers_in.content_length_n > PG_SAML_MAX_POST_BODY) {
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }
        r->request_body_in_single_buf = 1;
        rc = ngx_http_read_client_request_body(r, ngx_http_provgate_acs_body);
        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }
        return NGX_DONE;
    }

    ctx = ngx_http_provgate_ctx_new(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ctx->content = 1;

    if (ngx_http_provgate_gate == NULL) {
        if (ngx_http_provgate_no_gate(r, ctx) != NGX_OK) {
            return NGX_HTTP_SERVICE_UNAVAILABLE;
        }
        return ngx_http_provgate_send(r, ctx->res);
    }

    if (plcf->endpoint == NGX_HTTP_PROVGATE_METADATA) {
        ctx->res = pg_gate_saml_metadata(
            ((ngx_http_provgate_main_conf_t *)
             ngx_http_get_module_main_conf(r, ngx_http_provgate_module))->cfg,
            (char *) plcf->saml_idp.data);
        if (ctx->res == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        return ngx_http_provgate_send(r, ctx->res);
    }

    if (ngx_http_provgate_build_req(r, plcf, &req) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (plcf->endpoint == NGX_HTTP_PROVGATE_CALLBACK) {
        st = pg_gate_callback(ngx_http_provgate_gate, &req,
                              ngx_http_provgate_done, ctx, &ctx->op,
                              &ctx->res);
    } else if (plcf->endpoint == NGX_HTTP_PROVGATE_SAML_SLO) {
        req.idp = (char *) plcf->saml_idp.data;
        st = pg_gate_saml_slo(ngx_http_provgate_gate, &req,
                              ngx_http_provgate_done, ctx, &ctx->op,
                              &ctx->res);
    } else if (plcf->endpoint == NGX_HTTP_PROVGATE_ADMIN) {
        st = pg_gate_admin(ngx_http_provgate_gate, &req,
                           ngx_http_provgate_done, ctx, &ctx->op, &ctx->res);
    } else {
        st = pg_gate_logout(ngx_http_provgate_gate, &req,
                            ngx_http_provgate_done, ctx, &ctx->op, &ctx->res);
    }

    if (st != PG_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "provgate: endpoint failed: %s", pg_status_str(st));
        if (ngx_http_provgate_no_gate(r, ctx) != NGX_OK) {
            return NGX_HTTP_SERVICE_UNAVAILABLE;
        }
        return ngx_http_provgate_send(r, ctx->res);
    }

    if (ctx->op == NULL) {
        return ngx_http_provgate_send(r, ctx->res);
    }

    ngx_http_provgate_suspend(r, ctx);
    r->main->count++;

    return NGX_DONE;
}


/* ---- configuration --------------------------------------------------- */


static void
ngx_http_provgate_config_cleanup(void *data)
{
    pg_config_free(data);
}


static char *
ngx_http_provgate_config(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_provgate_main_conf_t *pmcf = conf;

    const char          *names[6];
    pg_err_t             err;
    ngx_str_t           *value;
    ngx_uint_t           i;
    pg_config_t         *cfg;
    pg_status_t          st;
    ngx_pool_cleanup_t  *cln;

    if (pmcf->cfg != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;
    pmcf->file = value[1];

    if (ngx_conf_full_name(cf->cycle, &pmcf->file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    err.msg[0] = '\0';
    st = pg_config_load((char *) pmcf->file.data, &cfg, &err);
    if (st != PG_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "provgate: %s", err.msg);
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        pg_config_free(cfg);
        return NGX_CONF_ERROR;
    }
    cln->handler = ngx_http_provgate_config_cleanup;
    cln->data = cfg;

    pmcf->cfg = cfg;

#if (NGX_THREADS)
    {
        /* SAML verification runs on nginx's "default" thread pool */
        if (ngx_thread_pool_add(cf, NULL) == NULL) {
            return NGX_CONF_ERROR;
        }
    }
#endif

    names[0] = cfg->headers.user;
    names[1] = cfg->headers.email;
    names[2] = cfg->headers.groups;
    names[3] = cfg->headers.entitlements;
    names[4] = cfg->headers.identity;
    names[5] = NULL;

    for (i = 0; names[i] != NULL && i < NGX_HTTP_PROVGATE_MAX_HEADERS; i++) {
        pmcf->strip[i].data = (u_char *) names[i];
        pmcf->strip[i].len = ngx_strlen(names[i]);
    }
    pmcf->nstrip = i;

    return NGX_CONF_OK;
}


/*
 * provgate oidc:<idp> | saml:<idp> ... | off;
 *
 * One IdP binds the location to it; several (each defined in the JSON
 * config with the type its prefix says, none twice, at most
 * PG_GATE_MAX_IDPS) let the user choose among them (IdP discovery, see
 * docs/directives.md). "off" stands alone.
 */
static char *
ngx_http_provgate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_provgate_loc_conf_t *plcf = conf;

    char                          **name, **names;
    ngx_str_t                      *value, idp;
    ngx_uint_t                      i, j, type;
    const pg_idp_cfg_t             *d;
    ngx_http_provgate_main_conf_t  *pmcf;

    if (plcf->mode != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        if (ngx_strcmp(value[i].data, "off") == 0 && cf->args->nelts > 2) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "provgate: \"off\" cannot be combined with "
                               "identity providers");
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_strcmp(value[1].data, "off") == 0) {
        plcf->mode = NGX_HTTP_PROVGATE_OFF;
        return NGX_CONF_OK;
    }

    if (cf->args->nelts - 1 > PG_GATE_MAX_IDPS) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "provgate: at most %d identity providers per "
                           "location", PG_GATE_MAX_IDPS);
        return NGX_CONF_ERROR;
    }

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_provgate_module);

    plcf->idps = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                  sizeof(char *));
    if (plcf->idps == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        if (value[i].len > 5 && ngx_strncmp(value[i].data, "saml:", 5) == 0) {
            type = NGX_HTTP_PROVGATE_SAML;

        } else if (value[i].len > 5
                   && ngx_strncmp(value[i].data, "oidc:", 5) == 0)
        {
            type = NGX_HTTP_PROVGATE_OIDC;

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "provgate: expected \"oidc:<idp>\", "
                               "\"saml:<idp>\" or \"off\", got \"%V\"",
                               &value[i]);
            return NGX_CONF_ERROR;
        }

        if (pmcf->cfg == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "provgate: \"provgate_config\" must come "
                               "before \"provgate\" in the http block");
            return NGX_CONF_ERROR;
        }

        /* the argument is NUL-terminated, so is the name inside it */
        idp.data = value[i].data + 5;
        idp.len = value[i].len - 5;

        d = pg_config_idp(pmcf->cfg, (char *) idp.data);
        if (d == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "provgate: identity provider \"%V\" is not "
                               "defined in %V", &idp, &pmcf->file);
            return NGX_CONF_ERROR;
        }

        if (d->type != (type == NGX_HTTP_PROVGATE_SAML ? PG_IDP_SAML
                                                       : PG_IDP_OIDC))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "provgate: identity provider \"%V\" is not "
                               "%s provider", &idp,
                               type == NGX_HTTP_PROVGATE_SAML
                               ? "a SAML" : "an OpenID Connect");
            return NGX_CONF_ERROR;
        }

        names = plcf->idps->elts;
        for (j = 0; j < plcf->idps->nelts; j++) {
            if (ngx_strcmp(names[j], idp.data) == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "provgate: identity provider \"%V\" is "
                                   "listed twice", &idp);
                return NGX_CONF_ERROR;
            }
        }

        name = ngx_array_push(plcf->idps);
        if (name == NULL) {
            return NGX_CONF_ERROR;
        }
        *name = (char *) idp.data;

        if (i == 1) {
            plcf->mode = type;
            plcf->idp = idp;
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_provgate_app(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_provgate_loc_conf_t *plcf = conf;

    ngx_str_t                      *value;
    ngx_http_provgate_main_conf_t  *pmcf;

    if (plcf->app.data != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        ngx_str_set(&plcf->app, "");
        return NGX_CONF_OK;
    }

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_provgate_module);
    if (pmcf->cfg == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "provgate: \"provgate_config\" must come before "
                           "\"provgate_app\" in the http block");
        return NGX_CONF_ERROR;
    }

    if (pg_config_target(pmcf->cfg, (char *) value[1].data) == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "provgate: target \"%V\" is not defined in %V",
                           &value[1], &pmcf->file);
        return NGX_CONF_ERROR;
    }

    plcf->app = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_http_provgate_endpoint(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_provgate_loc_conf_t *plcf = conf;

    ngx_http_core_loc_conf_t       *clcf;
    ngx_http_provgate_main_conf_t  *pmcf;

    if (plcf->endpoint != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_provgate_module);
    if (pmcf->cfg == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "provgate: \"provgate_config\" must come before "
                           "\"%V\" in the http block", &cmd->name);
        return NGX_CONF_ERROR;
    }

    plcf->endpoint = cmd->offset;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_provgate_content_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_provgate_saml_metadata(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_provgate_loc_conf_t *plcf = conf;

    ngx_str_t                      *value;
    const pg_idp_cfg_t             *idp;
    ngx_http_core_loc_conf_t       *clcf;
    ngx_http_provgate_main_conf_t  *pmcf;

    if (plcf->endpoint != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_provgate_module);
    if (pmcf->cfg == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "provgate: \"provgate_config\" must come before "
                           "\"%V\" in the http block", &cmd->name);
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;
    idp = pg_config_idp(pmcf->cfg, (char *) value[1].data);
    if (idp == NULL || idp->type != PG_IDP_SAML) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "provgate: \"%V\" is not a SAML identity "
                           "provider of %V", &value[1], &pmcf->file);
        return NGX_CONF_ERROR;
    }

    if (cmd->offset == NGX_HTTP_PROVGATE_SAML_SLO
        && idp->saml.slo_url == NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "provgate: SAML identity provider \"%V\" has no "
                           "\"slo_url\" in %V: Single Logout is not "
                           "configured", &value[1], &pmcf->file);
        return NGX_CONF_ERROR;
    }

    plcf->endpoint = cmd->offset;
    plcf->saml_idp = value[1];

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_provgate_content_handler;

    return NGX_CONF_OK;
}


static void *
ngx_http_provgate_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_provgate_main_conf_t  *pmcf;

    pmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_provgate_main_conf_t));
    if (pmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     pmcf->file = { 0, NULL };
     *     pmcf->cfg = NULL;
     *     pmcf->nstrip = 0;
     */

    return pmcf;
}


static void *
ngx_http_provgate_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_provgate_loc_conf_t  *plcf;

    plcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_provgate_loc_conf_t));
    if (plcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     plcf->idp = { 0, NULL };
     *     plcf->idps = NULL;
     *     plcf->app = { 0, NULL };
     */

    plcf->mode = NGX_CONF_UNSET;
    plcf->endpoint = NGX_CONF_UNSET_UINT;
    plcf->wait_timeout = NGX_CONF_UNSET_MSEC;

    return plcf;
}


static char *
ngx_http_provgate_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_provgate_loc_conf_t *prev = parent;
    ngx_http_provgate_loc_conf_t *conf = child;

    if (conf->mode == NGX_CONF_UNSET) {
        conf->mode = prev->mode;
        conf->idp = prev->idp;
        conf->idps = prev->idps;
    }
    ngx_conf_merge_value(conf->mode, prev->mode, NGX_HTTP_PROVGATE_OFF);
    ngx_conf_merge_str_value(conf->app, prev->app, "");
    ngx_conf_merge_uint_value(conf->endpoint, NGX_CONF_UNSET_UINT,
                              NGX_HTTP_PROVGATE_NONE);
    ngx_conf_merge_msec_value(conf->wait_timeout, prev->wait_timeout, 60000);

    if (conf->mode == NGX_HTTP_PROVGATE_OIDC && conf->app.len == 0) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "provgate: a location protected by \"provgate "
                           "oidc:%V\" has no \"provgate_app\": users are "
                           "authenticated but nothing is provisioned",
                           &conf->idp);
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_provgate_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt            *h;
    ngx_http_core_main_conf_t      *cmcf;
    ngx_http_provgate_main_conf_t  *pmcf;

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_provgate_module);
    if (pmcf->cfg == NULL) {
        return NGX_OK;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_POST_READ_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }
    *h = ngx_http_provgate_strip_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }
    *h = ngx_http_provgate_access_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }
    *h = ngx_http_provgate_subrequest_handler;

    return NGX_OK;
}


static ngx_int_t
ngx_http_provgate_init_process(ngx_cycle_t *cycle)
{
    pg_err_t                        err;
    pg_status_t                     st;
    ngx_http_conf_ctx_t            *ctx;
    ngx_http_provgate_main_conf_t  *pmcf;

    ctx = (ngx_http_conf_ctx_t *) cycle->conf_ctx[ngx_http_module.index];
    if (ctx == NULL) {
        return NGX_OK;
    }

    pmcf = ctx->main_conf[ngx_http_provgate_module.ctx_index];
    if (pmcf == NULL || pmcf->cfg == NULL) {
        return NGX_OK;
    }

    err.msg[0] = '\0';
    st = pg_gate_new(pmcf->cfg, ngx_http_provgate_host(cycle),
                     &ngx_http_provgate_gate, &err);
    if (st != PG_OK) {
        /* fail closed: protected locations answer 503 */
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "provgate: cannot start: %s", err.msg);
        ngx_http_provgate_gate = NULL;
    }

    return NGX_OK;
}


static void
ngx_http_provgate_exit_process(ngx_cycle_t *cycle)
{
    if (ngx_http_provgate_gate != NULL) {
        pg_gate_free(ngx_http_provgate_gate);
        ngx_http_provgate_gate = NULL;
    }
}
