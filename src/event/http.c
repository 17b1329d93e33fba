/*
 * provgate core: non-blocking HTTP client, libcurl multi on pg_host_t.
 * See include/provgate/http.h.
 *
 * Wiring (the multi_socket pattern):
 *  - CURLMOPT_SOCKETFUNCTION opens/updates/closes one host watch per curl
 *    socket (hsock_t, attached with curl_multi_assign).
 *  - CURLMOPT_TIMERFUNCTION arms/disarms one host timer.
 *  - Watch and timer handlers call curl_multi_socket_action(), then
 *    collect finished transfers with curl_multi_info_read().
 *
 * Callback discipline:
 *  - pg_http_start() only adds the easy handle (curl then asks for a 0 ms
 *    timer); it never drives transfers, so no cb can run inside it. Bad
 *    URLs are detected up front and failed from a separate 0 ms timer.
 *  - Completion is two-phase: first every finished transfer is removed
 *    from the multi handle and moved to h->done; then the user callbacks
 *    run one by one, outside of any curl call. A callback may start new
 *    requests, cancel any other op (in flight or finished-but-undelivered)
 *    or free the client.
 *  - h->depth counts entry frames; pg_http_free() from inside a callback
 *    cancels everything at once but releases memory (and the multi handle)
 *    only when the outermost frame unwinds.
 *
 * Limits: response body max_response (default 1 MiB); response headers at
 * most PG_HTTP_MAX_HEADERS lines and PG_HTTP_MAX_HEADER_BYTES bytes
 * (beyond: PG_ERR_TOO_LARGE); URL 8 KiB; 100 request headers of 8 KiB.
 * Only http and https, no redirects, no signals (CURLOPT_NOSIGNAL).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <curl/curl.h>
#include "provgate/http.h"

#define PG_HTTP_MAX_HEADERS 64
#define PG_HTTP_MAX_HEADER_BYTES (16u * 1024u)
#define PG_HTTP_MAX_URL 8192u
#define PG_HTTP_MAX_REQ_HEADERS 100u
#define PG_HTTP_MAX_REQ_HEADER_LEN 8192u
#define PG_HTTP_MAX_METHOD 32u
#define PG_HTTP_POOL 16u        /* idle easy handles kept for reuse */
#define PG_HTTP_MAX_IDLE_CONNS 64 /* connection cache of the multi handle */

typedef struct hsock {
    struct hsock *prev, *next;
    pg_watch_t *w;
} hsock_t;

enum op_state {
    OP_ACTIVE = 1,  /* easy handle in the multi handle (h->active) */
    OP_DONE,        /* finished, cb pending (h->done or h->batch) */
    OP_DELIVERING   /* cb running: on no list */
};

typedef struct op_list {
    struct pg_http_op *head, *tail;
} op_list_t;

struct pg_http_op {
    struct pg_http_op *prev, *next;
    op_list_t *list;            /* the list op is on, or NULL */
    pg_http_t *h;
    enum op_state state;
    CURL *easy;                 /* NULL until one is made; in the multi
                                   handle only while OP_ACTIVE */
    pg_http_cb cb;
    void *arg;
    struct curl_slist *req_headers;
    char *req_body;
    char errbuf[CURL_ERROR_SIZE];
    pg_status_t result;

    size_t max_response;
    char *body;
    size_t body_len, body_cap;
    int too_large;

    size_t hbuf_len;
    unsigned hname[PG_HTTP_MAX_HEADERS];
    unsigned hval[PG_HTTP_MAX_HEADERS];
    size_t nheaders;
    int header_overflow;

    pg_http_response_t resp;
    /* last: not cleared when a pooled op is reused (hbuf_len says how
     * much of it is valid) */
    char hbuf[PG_HTTP_MAX_HEADER_BYTES]; /* name\0value\0 ... */
};

struct pg_http {
    const pg_host_t *host;
    CURLM *multi;
    pg_timer_t *curl_timer;
    pg_timer_t *kick_timer;     /* 0 ms: deliver ops failed before start */
    int kick_armed;
    hsock_t *socks;
    op_list_t active;           /* in the multi handle */
    op_list_t done;             /* finished, waiting for delivery */
    op_list_t batch;            /* being delivered now */
    int depth;
    int freeing;
    pg_http_op_t *pool[PG_HTTP_POOL]; /* idle ops, each with its reset
                                        easy handle (curl_easy_reset) */
    unsigned npool;
    uint64_t easy_created, easy_reused;
};

/* ---- small helpers -------------------------------------------------- */

static void
list_add(op_list_t *l, pg_http_op_t *op)
{
    op->list = l;
    op->next = NULL;
    op->prev = l->tail;
    if (l->tail != NULL) {
        l->tail->next = op;
    } else {
        l->head = op;
    }
    l->tail = op;
}

static void
list_del(pg_http_op_t *op)
{
    op_list_t *l = op->list;

    if (l == NULL) {
        return;
    }
    if (op->prev != NULL) {
        op->prev->next = op->next;
    } else {
        l->head = op->next;
    }
    if (op->next != NULL) {
        op->next->prev = op->prev;
    } else {
        l->tail = op->prev;
    }
    op->prev = op->next = NULL;
    op->list = NULL;
}

/*
 * Release an op that is on no list and not in the multi handle. Its easy
 * handle goes back to h's pool (reset to defaults: no option, header list,
 * body or credential of this request survives) unless the client is being
 * freed or the pool is full. Connections stay in the multi handle's cache
 * either way, so keep-alive does not depend on the pool.
 */
static void
op_free(pg_http_op_t *op)
{
    pg_http_t *h = op->h;

    curl_slist_free_all(op->req_headers);
    free(op->req_body);
    free(op->body);
    if (op->easy != NULL && h != NULL && !h->freeing &&
        h->npool < PG_HTTP_POOL) {
        /* keep the op (its 16 KiB header buffer) and the handle */
        CURL *easy = op->easy;

        curl_easy_reset(easy);
        memset(op, 0, offsetof(pg_http_op_t, hbuf));
        op->easy = easy;
        h->pool[h->npool++] = op;
        return;
    }
    if (op->easy != NULL) {
        curl_easy_cleanup(op->easy);
    }
    free(op);
}

static void
enter(pg_http_t *h)
{
    h->depth++;
}

/* Final release; the caller made sure no op remains. */
static void
destroy(pg_http_t *h)
{
    while (h->npool > 0) {
        pg_http_op_t *op = h->pool[--h->npool];

        curl_easy_cleanup(op->easy);
        free(op);
    }
    if (h->multi != NULL) {
        curl_multi_cleanup(h->multi); /* may call sock_cb(REMOVE) */
    }
    while (h->socks != NULL) {
        hsock_t *s = h->socks;
        h->socks = s->next;
        h->host->watch_close(s->w);
        free(s);
    }
    if (h->curl_timer != NULL) {
        h->host->timer_close(h->curl_timer);
    }
    if (h->kick_timer != NULL) {
        h->host->timer_close(h->kick_timer);
    }
    free(h);
}

/* Leave an entry frame; finish a requested free at depth 0. */
static void
leave(pg_http_t *h)
{
    if (--h->depth == 0 && h->freeing) {
        destroy(h);
    }
}

/* ---- curl -> host ---------------------------------------------------- */

static void on_sock(void *arg, int fd, unsigned events);

/* CURLMOPT_SOCKETFUNCTION: keep one host watch per curl socket. */
static int
sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    pg_http_t *h = userp;
    hsock_t *hs = socketp;
    unsigned mask = 0;

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (hs != NULL) {
            h->host->watch_close(hs->w);
            if (hs->prev != NULL) {
                hs->prev->next = hs->next;
            } else {
                h->socks = hs->next;
            }
            if (hs->next != NULL) {
                hs->next->prev = hs->prev;
            }
            free(hs);
            curl_multi_assign(h->multi, s, NULL);
        }
        return 0;
    }
    if (hs == NULL) {
        hs = calloc(1, sizeof(*hs));
        if (hs == NULL) {
            return -1;
        }
        hs->w = h->host->watch_open(h->host->ctx, s, on_sock, h);
        if (hs->w == NULL) {
            free(hs);
            return -1;
        }
        hs->next = h->socks;
        if (h->socks != NULL) {
            h->socks->prev = hs;
        }
        h->socks = hs;
        curl_multi_assign(h->multi, s, hs);
    }
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) {
        mask |= PG_EV_READ;
    }
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) {
        mask |= PG_EV_WRITE;
    }
    return h->host->watch_update(hs->w, mask) == 0 ? 0 : -1;
}

/* CURLMOPT_TIMERFUNCTION: one host timer; -1 disarms. */
static int
timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    pg_http_t *h = userp;

    (void)multi;
    if (timeout_ms < 0) {
        h->host->timer_disarm(h->curl_timer);
    } else {
        h->host->timer_arm(h->curl_timer, (uint64_t)timeout_ms);
    }
    return 0;
}

/* ---- completion ------------------------------------------------------ */

static pg_status_t
map_result(const pg_http_op_t *op, CURLcode rc)
{
    switch (rc) {
    case CURLE_OK:
        return PG_OK;
    case CURLE_OPERATION_TIMEDOUT:
        return PG_ERR_TIMEOUT;
    case CURLE_FILESIZE_EXCEEDED:
        return PG_ERR_TOO_LARGE;
    case CURLE_WRITE_ERROR:
        return (op->too_large || op->header_overflow) ? PG_ERR_TOO_LARGE
                                                      : PG_ERR_IO;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return PG_ERR_INVALID;
    case CURLE_OUT_OF_MEMORY:
        return PG_ERR_NOMEM;
    default:
        return PG_ERR_IO;
    }
}

/* Phase 1: move finished transfers out of the multi handle. */
static void
collect(pg_http_t *h)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
        pg_http_op_t *op = NULL;
        char *priv = NULL;
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result;

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        op = (pg_http_op_t *)priv;
        /* msg is invalid after remove_handle: everything read above. */
        curl_multi_remove_handle(h->multi, easy);
        if (op == NULL || op->state != OP_ACTIVE) {
            continue;
        }
        op->result = map_result(op, rc);
        if (op->result == PG_OK) {
            long code = 0;
            curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
            op->resp.status = code;
        } else {
            pg_log(h->host, PG_LOG_DEBUG, "http: transfer failed: %s (%s)",
                   op->errbuf[0] ? op->errbuf : curl_easy_strerror(rc),
                   pg_status_str(op->result));
        }
        list_del(op);
        op->state = OP_DONE;
        list_add(&h->done, op);
    }
}

/* Phase 2: call the callbacks of the ops finished so far, in order. */
static void
deliver(pg_http_t *h)
{
    /* Only this batch; ops failed by the callbacks go to the next one. */
    h->batch = h->done;
    h->done.head = h->done.tail = NULL;
    for (pg_http_op_t *op = h->batch.head; op != NULL; op = op->next) {
        op->list = &h->batch;
    }
    while (h->batch.head != NULL) {
        pg_http_op_t *op = h->batch.head;
        const pg_http_response_t *resp = NULL;

        list_del(op);
        op->state = OP_DELIVERING;
        if (op->result == PG_OK) {
            op->resp.body = op->body ? op->body : "";
            op->resp.body_len = op->body_len;
            resp = &op->resp;
        }
        op->cb(op->arg, op->result, resp);
        op_free(op);
    }
}

static void
on_sock(void *arg, int fd, unsigned events)
{
    pg_http_t *h = arg;
    int flags = 0, running = 0;

    enter(h);
    if (events & PG_EV_READ) {
        flags |= CURL_CSELECT_IN;
    }
    if (events & PG_EV_WRITE) {
        flags |= CURL_CSELECT_OUT;
    }
    curl_multi_socket_action(h->multi, fd, flags, &running);
    collect(h);
    if (!h->freeing) {
        deliver(h);
    }
    leave(h);
}

static void
on_curl_timer(void *arg)
{
    pg_http_t *h = arg;
    int running = 0;

    enter(h);
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    collect(h);
    if (!h->freeing) {
        deliver(h);
    }
    leave(h);
}

static void
on_kick(void *arg)
{
    pg_http_t *h = arg;

    enter(h);
    h->kick_armed = 0;
    if (!h->freeing) {
        deliver(h);
    }
    leave(h);
}

/* ---- easy callbacks -------------------------------------------------- */

/* Append body bytes; beyond max_response abort (-> PG_ERR_TOO_LARGE). */
static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    pg_http_op_t *op = ud;
    size_t n = size * nmemb;

    if (n > op->max_response - op->body_len) {
        op->too_large = 1;
        return 0;
    }
    if (op->body_len + n + 1 > op->body_cap) {
        size_t ncap = op->body_cap ? op->body_cap : 4096;
        char *nb;

        while (ncap < op->body_len + n + 1) {
            ncap *= 2;
        }
        if (ncap > op->max_response + 1) {
            ncap = op->max_response + 1;
        }
        nb = realloc(op->body, ncap);
        if (nb == NULL) {
            return 0;
        }
        op->body = nb;
        op->body_cap = ncap;
    }
    memcpy(op->body + op->body_len, ptr, n);
    op->body_len += n;
    op->body[op->body_len] = '\0';
    return n;
}

/*
 * Record one response header line "Name: value". A status line starts a
 * new header set (interim 1xx responses are forgotten). Folded lines are
 * ignored. Over the count or byte cap the transfer is aborted.
 */
static size_t
header_cb(char *buf, size_t size, size_t nitems, void *ud)
{
    pg_http_op_t *op = ud;
    size_t n = size * nitems, len = n, nlen, vstart, vlen;
    const char *colon;

    if (len >= 5 && strncasecmp(buf, "HTTP/", 5) == 0) {
        op->nheaders = 0;
        op->hbuf_len = 0;
        return n;
    }
    while (len > 0 && (buf[len - 1] == '\r' || buf[len - 1] == '\n')) {
        len--;
    }
    if (len == 0 || buf[0] == ' ' || buf[0] == '\t') {
        return n;
    }
    colon = memchr(buf, ':', len);
    if (colon == NULL || colon == buf) {
        return n;
    }
    nlen = (size_t)(colon - buf);
    vstart = nlen + 1;
    while (vstart < len && (buf[vstart] == ' ' || buf[vstart] == '\t')) {
        vstart++;
    }
    vlen = len - vstart;
    while (vlen > 0 && (buf[vstart + vlen - 1] == ' ' ||
                        buf[vstart + vlen - 1] == '\t')) {
        vlen--;
    }
    if (op->nheaders >= PG_HTTP_MAX_HEADERS ||
        nlen + vlen + 2 > sizeof(op->hbuf) - op->hbuf_len) {
        op->header_overflow = 1;
        return 0;
    }
    op->hname[op->nheaders] = (unsigned)op->hbuf_len;
    memcpy(op->hbuf + op->hbuf_len, buf, nlen);
    op->hbuf_len += nlen;
    op->hbuf[op->hbuf_len++] = '\0';
    op->hval[op->nheaders] = (unsigned)op->hbuf_len;
    memcpy(op->hbuf + op->hbuf_len, buf + vstart, vlen);
    op->hbuf_len += vlen;
    op->hbuf[op->hbuf_len++] = '\0';
    op->nheaders++;
    return n;
}

/* ---- public API ------------------------------------------------------ */

/*
 * Create a client on host (which must outlive it). The first call also
 * runs curl_global_init() once for the process; that is not thread safe,
 * which is fine for single-threaded hosts (one loop per process/worker).
 */
pg_status_t
pg_http_new(const pg_host_t *host, pg_http_t **out)
{
    static int global_done;
    pg_http_t *h;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (host == NULL || host->watch_open == NULL || host->timer_open == NULL) {
        return PG_ERR_INVALID;
    }
    if (!global_done) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            return PG_ERR_INTERNAL;
        }
        global_done = 1;
    }
    h = calloc(1, sizeof(*h));
    if (h == NULL) {
        return PG_ERR_NOMEM;
    }
    h->host = host;
    h->multi = curl_multi_init();
    h->curl_timer = host->timer_open(host->ctx, on_curl_timer, h);
    h->kick_timer = host->timer_open(host->ctx, on_kick, h);
    if (h->multi == NULL || h->curl_timer == NULL || h->kick_timer == NULL ||
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, sock_cb) != CURLM_OK ||
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h) != CURLM_OK ||
        curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb) != CURLM_OK ||
        curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h) != CURLM_OK ||
        /* idle keep-alive connections kept in the multi handle's cache
         * (curl's default, 4 x the handles in use now, closes most of a
         * burst's connections once it is over) */
        curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS,
                          (long)PG_HTTP_MAX_IDLE_CONNS) != CURLM_OK) {
        destroy(h);
        return PG_ERR_NOMEM;
    }
    *out = h;
    return PG_OK;
}

/* Cancel every op on l with PG_ERR_CANCELLED. */
static void
cancel_all(pg_http_t *h, op_list_t *l)
{
    while (l->head != NULL) {
        pg_http_op_t *op = l->head;

        list_del(op);
        if (op->state == OP_ACTIVE) {
            curl_multi_remove_handle(h->multi, op->easy);
        }
        op->state = OP_DELIVERING;
        op->cb(op->arg, PG_ERR_CANCELLED, NULL);
        op_free(op);
    }
}

/*
 * Abort everything: each pending cb runs with PG_ERR_CANCELLED (finished
 * but undelivered first, then in-flight). Safe inside a callback of this
 * client; memory goes when the outermost frame unwinds. pg_http_start()
 * from those callbacks returns PG_ERR_CANCELLED.
 */
void
pg_http_free(pg_http_t *h)
{
    if (h == NULL || h->freeing) {
        return;
    }
    enter(h);
    h->freeing = 1;
    cancel_all(h, &h->batch);
    cancel_all(h, &h->done);
    cancel_all(h, &h->active);
    leave(h);
}

/* Token characters of RFC 9110 (method names). */
static int
is_token(const char *s, size_t max)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= max || c <= 0x20 || c >= 0x7f ||
            strchr("\"(),/:;<=>?@[\\]{}", c) != NULL) {
            return 0;
        }
    }
    return i > 0;
}

/* 1 when url parses as an absolute http(s) URL. */
static int
url_ok(const char *url)
{
    CURLU *u;
    char *scheme = NULL;
    int ok = 0;

    if (strlen(url) > PG_HTTP_MAX_URL) {
        return 0;
    }
    u = curl_url();
    if (u == NULL) {
        return 0;
    }
    if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        (strcasecmp(scheme, "http") == 0 || strcasecmp(scheme, "https") == 0)) {
        ok = 1;
    }
    curl_free(scheme);
    curl_url_cleanup(u);
    return ok;
}

#define SETOPT(e, o, v)                                    \
    do {                                                   \
        if (curl_easy_setopt((e), (o), (v)) != CURLE_OK) { \
            return PG_ERR_INVALID;                         \
        }                                                  \
    } while (0)

/* Configure op->easy from req; everything needed later is copied. */
static pg_status_t
setup_easy(pg_http_op_t *op, const pg_http_request_t *req, const char *method)
{
    CURL *e = op->easy;
    int has_expect = 0, send_body;
    size_t i;

    SETOPT(e, CURLOPT_URL, req->url);
    SETOPT(e, CURLOPT_PRIVATE, (void *)op);
    SETOPT(e, CURLOPT_NOSIGNAL, 1L);
    SETOPT(e, CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(e, CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SETOPT(e, CURLOPT_ERRORBUFFER, op->errbuf);
    SETOPT(e, CURLOPT_TIMEOUT_MS, (long)(req->timeout_ms ? req->timeout_ms : 5000));
    SETOPT(e, CURLOPT_CONNECTTIMEOUT_MS,
           (long)(req->connect_timeout_ms ? req->connect_timeout_ms : 2000));
    SETOPT(e, CURLOPT_WRITEFUNCTION, write_cb);
    SETOPT(e, CURLOPT_WRITEDATA, (void *)op);
    SETOPT(e, CURLOPT_HEADERFUNCTION, header_cb);
    SETOPT(e, CURLOPT_HEADERDATA, (void *)op);
    SETOPT(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)op->max_response);

    /* Method and body. */
    send_body = req->body != NULL || strcmp(method, "POST") == 0 ||
                strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0;
    if (strcmp(method, "HEAD") == 0 && req->body == NULL) {
        SETOPT(e, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "GET") == 0 && req->body == NULL) {
        SETOPT(e, CURLOPT_HTTPGET, 1L);
    } else {
        if (send_body) {
            op->req_body = malloc(req->body_len ? req->body_len : 1);
            if (op->req_body == NULL) {
                return PG_ERR_NOMEM;
            }
            if (req->body_len > 0) {
                memcpy(op->req_body, req->body, req->body_len);
            }
            SETOPT(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
            SETOPT(e, CURLOPT_POSTFIELDS, op->req_body);
        }
        if (strcmp(method, "POST") != 0) {
            SETOPT(e, CURLOPT_CUSTOMREQUEST, method);
        }
    }

    /* Headers. */
    for (i = 0; i < req->nheaders; i++) {
        struct curl_slist *nl;
        if (strncasecmp(req->headers[i], "Expect:", 7) == 0) {
            has_expect = 1;
        }
        nl = curl_slist_append(op->req_headers, req->headers[i]);
        if (nl == NULL) {
            return PG_ERR_NOMEM;
        }
        op->req_headers = nl;
    }
    if (!has_expect) {
        /* No "100-continue" round trip for larger bodies. */
        struct curl_slist *nl = curl_slist_append(op->req_headers, "Expect:");
        if (nl == NULL) {
            return PG_ERR_NOMEM;
        }
        op->req_headers = nl;
    }
    SETOPT(e, CURLOPT_HTTPHEADER, op->req_headers);

    /* Basic auth (username/password options: no ':' ambiguity). */
    if (req->basic_user != NULL) {
        SETOPT(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        SETOPT(e, CURLOPT_USERNAME, req->basic_user);
        SETOPT(e, CURLOPT_PASSWORD, req->basic_pass ? req->basic_pass : "");
    }

    /* TLS. */
    if (req->tls.ca_file != NULL) {
        SETOPT(e, CURLOPT_CAINFO, req->tls.ca_file);
    }
    if (req->tls.client_cert != NULL) {
        SETOPT(e, CURLOPT_SSLCERT, req->tls.client_cert);
        SETOPT(e, CURLOPT_SSLCERTTYPE, "PEM");
    }
    if (req->tls.client_key != NULL) {
        SETOPT(e, CURLOPT_SSLKEY, req->tls.client_key);
        SETOPT(e, CURLOPT_SSLKEYTYPE, "PEM");
    }
    SETOPT(e, CURLOPT_SSL_VERIFYPEER, req->tls.insecure_skip_verify ? 0L : 1L);
    SETOPT(e, CURLOPT_SSL_VERIFYHOST, req->tls.insecure_skip_verify ? 0L : 2L);
    return PG_OK;
}

/*
 * Start a request. req and all it points to is copied (curl copies option
 * strings; the body and header list are owned by the op). Synchronous
 * errors (no cb): PG_ERR_INVALID for missing url, a method that is not a
 * token, a header with CR/LF or over the caps; PG_ERR_NOMEM;
 * PG_ERR_CANCELLED once pg_http_free() started. A malformed or non-http(s)
 * URL is reported through cb as PG_ERR_INVALID from a 0 ms timer.
 */
pg_status_t
pg_http_start(pg_http_t *h, const pg_http_request_t *req, pg_http_cb cb,
              void *arg, pg_http_op_t **op_out)
{
    pg_http_op_t *op;
    const char *method;
    pg_status_t st;
    size_t i;

    if (op_out != NULL) {
        *op_out = NULL;
    }
    if (h == NULL || req == NULL || req->url == NULL || cb == NULL ||
        (req->body == NULL && req->body_len != 0) ||
        (req->nheaders > 0 && req->headers == NULL) ||
        req->nheaders > PG_HTTP_MAX_REQ_HEADERS) {
        return PG_ERR_INVALID;
    }
    method = req->method ? req->method : "GET";
    if (!is_token(method, PG_HTTP_MAX_METHOD)) {
        return PG_ERR_INVALID;
    }
    for (i = 0; i < req->nheaders; i++) {
        const char *hl = req->headers[i];
        if (hl == NULL || strlen(hl) > PG_HTTP_MAX_REQ_HEADER_LEN ||
            strpbrk(hl, "\r\n") != NULL) {
            return PG_ERR_INVALID;
        }
    }
    if (h->freeing) {
        return PG_ERR_CANCELLED;
    }
    if (h->npool > 0) {
        /* fields cleared, easy handle reset by op_free */
        op = h->pool[--h->npool];
        h->easy_reused++;
    } else {
        op = calloc(1, sizeof(*op));
        if (op == NULL) {
            return PG_ERR_NOMEM;
        }
    }
    op->h = h;
    op->cb = cb;
    op->arg = arg;
    op->max_response = req->max_response ? req->max_response
                                         : PG_HTTP_DEFAULT_MAX_RESPONSE;

    if (!url_ok(req->url)) {
        /* Report from the loop, never from here. */
        op->result = PG_ERR_INVALID;
        op->state = OP_DONE;
        list_add(&h->done, op);
        if (!h->kick_armed) {
            h->kick_armed = 1;
            h->host->timer_arm(h->kick_timer, 0);
        }
        if (op_out != NULL) {
            *op_out = op;
        }
        return PG_OK;
    }

    if (op->easy == NULL) {
        op->easy = curl_easy_init();
        h->easy_created++;
    }
    if (op->easy == NULL) {
        op_free(op);
        return PG_ERR_NOMEM;
    }
    st = setup_easy(op, req, method);
    if (st != PG_OK) {
        op_free(op);
        return st;
    }
    op->state = OP_ACTIVE;
    list_add(&h->active, op);
    /* Only schedules a 0 ms timer; transfers run from the loop. */
    if (curl_multi_add_handle(h->multi, op->easy) != CURLM_OK) {
        list_del(op);
        op_free(op);
        return PG_ERR_NOMEM;
    }
    if (op_out != NULL) {
        *op_out = op;
    }
    return PG_OK;
}

/*
 * Cancel: cb will not be called, the transfer is aborted and the op freed.
 * Safe from inside any callback of this client; a no-op for the op whose
 * cb is currently running.
 */
void
pg_http_cancel(pg_http_op_t *op)
{
    if (op == NULL || op->state == OP_DELIVERING) {
        return;
    }
    list_del(op);
    if (op->state == OP_ACTIVE) {
        curl_multi_remove_handle(op->h->multi, op->easy);
    }
    op_free(op);
}

/*
 * Last value of header `name` (ASCII case-insensitive) or NULL. resp must
 * be the pointer passed to a pg_http callback, used during that callback.
 */
const char *
pg_http_response_header(const pg_http_response_t *resp, const char *name)
{
    const pg_http_op_t *op;
    size_t i;

    if (resp == NULL || name == NULL) {
        return NULL;
    }
    op = (const pg_http_op_t *)(const void *)((const char *)resp -
                                              offsetof(pg_http_op_t, resp));
    for (i = op->nheaders; i > 0; i--) {
        if (strcasecmp(op->hbuf + op->hname[i - 1], name) == 0) {
            return op->hbuf + op->hval[i - 1];
        }
    }
    return NULL;
}

/* See http.h. */
void
pg_http_easy_stats(const pg_http_t *h, uint64_t *created, uint64_t *reused)
{
    if (created != NULL) {
        *created = h != NULL ? h->easy_created : 0;
    }
    if (reused != NULL) {
        *reused = h != NULL ? h->easy_reused : 0;
    }
}
