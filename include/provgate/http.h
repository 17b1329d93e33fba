/*
 * provgate core: non-blocking HTTP client (libcurl multi on pg_host_t).
 *
 * CURLMOPT_SOCKETFUNCTION/TIMERFUNCTION map curl's needs onto host watches
 * and one host timer; curl_multi_socket_action() drives transfers. No call
 * here ever blocks (no curl_easy_perform, no sleeps).
 *
 * Callback contract (same as pg_redis): cb is called exactly once per
 * successful pg_http_start() unless cancelled, never from inside
 * pg_http_start(). st == PG_OK means an HTTP response was received (any
 * status code; resp non-NULL, valid only during cb). Otherwise resp is NULL:
 * PG_ERR_TIMEOUT, PG_ERR_IO (connect/TLS/reset), PG_ERR_TOO_LARGE (body over
 * max_response).
 */
#ifndef PROVGATE_HTTP_H
#define PROVGATE_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include "provgate/host.h"

#define PG_HTTP_DEFAULT_MAX_RESPONSE (1024u * 1024u)

typedef struct pg_http_tls {
    const char *ca_file;        /* optional CA bundle */
    const char *client_cert;    /* optional PEM client cert (mTLS) */
    const char *client_key;     /* optional PEM client key (mTLS) */
    int insecure_skip_verify;   /* 0 by default; only for tests */
} pg_http_tls_t;

typedef struct pg_http_request {
    const char *method;             /* "GET", "POST", "PATCH", ... */
    const char *url;
    const char *const *headers;     /* "Name: value" lines, no CR/LF */
    size_t nheaders;
    const char *body;               /* may be NULL */
    size_t body_len;
    const char *basic_user;         /* optional HTTP basic auth */
    const char *basic_pass;
    unsigned timeout_ms;            /* whole transfer; 0 = 5000 */
    unsigned connect_timeout_ms;    /* 0 = 2000 */
    size_t max_response;            /* body cap; 0 = default 1 MiB */
    pg_http_tls_t tls;
} pg_http_request_t;

typedef struct pg_http_response {
    long status;
    const char *body;       /* NUL-terminated copy, body_len bytes */
    size_t body_len;
} pg_http_response_t;

typedef struct pg_http pg_http_t;
typedef struct pg_http_op pg_http_op_t;

typedef void (*pg_http_cb)(void *arg, pg_status_t st,
                           const pg_http_response_t *resp);

PG_MUST_USE pg_status_t pg_http_new(const pg_host_t *host, pg_http_t **out);

/* Abort all transfers; their cbs are called with PG_ERR_CANCELLED. */
void pg_http_free(pg_http_t *h);

/* Start a request; req and everything it points to is copied. */
PG_MUST_USE pg_status_t pg_http_start(pg_http_t *h,
                                      const pg_http_request_t *req,
                                      pg_http_cb cb, void *arg,
                                      pg_http_op_t **op_out);

void pg_http_cancel(pg_http_op_t *op);

/*
 * Easy handles: a finished request's handle is reset (curl_easy_reset)
 * and kept in a pool of up to 16 for the next request, instead of being
 * created and freed per request. Counts so far, for tests and stats.
 */
void pg_http_easy_stats(const pg_http_t *h, uint64_t *created,
                        uint64_t *reused);

/*
 * Value of a response header (case-insensitive name), or NULL. Valid only
 * during the callback. Repeated headers: the last one.
 */
const char *pg_http_response_header(const pg_http_response_t *resp,
                                    const char *name);

#endif
