/*
 * provgate core: non-blocking Redis client (hiredis 0.14 async) driven by
 * pg_host_t watches and timers. See include/provgate/redis.h.
 *
 * Structure
 *  - pg_redis_t owns at most one live connection (rconn_t). Each command is
 *    an op (pg_redis_op_t) with its own host timer for the command timeout.
 *  - The hiredis adapter binds ac->ev.{addRead,delRead,addWrite,delWrite,
 *    cleanup} to a pg_watch_t on the connection's fd. The watch handler
 *    calls redisAsyncHandleRead/Write.
 *
 * Re-entrancy (the ENTERED/DELETED idea of hiredis' libevent adapter):
 *  - Every entry point from the host or the user that may end in a user
 *    callback (watch/timer handlers, pg_redis_command, pg_redis_free)
 *    increments r->depth. Dead connections are parked on r->graveyard and
 *    pg_redis_free() only sets r->freeing; the memory of both is released
 *    when depth returns to 0, i.e. when no hiredis or user frame on the
 *    stack can still refer to it.
 *  - A connection is "dead" (conn_dead) as soon as hiredis starts tearing
 *    it down (NULL reply, ev.cleanup, onConnect(REDIS_ERR)) or we decide
 *    to drop it. From then on conn->ac is NULL and r->conn no longer points
 *    to it, so user callbacks that issue new commands start a new
 *    connection instead of touching the dying one.
 *  - redisAsyncFree() is never called from onConnect/onDisconnect (hiredis
 *    0.14 keeps using the context after those return). Called from a reply
 *    callback it is deferred by hiredis itself until the callback returns.
 *  - An op stays allocated while hiredis holds it as privdata (in_hiredis)
 *    even after its user callback ran or it was cancelled (done); whoever
 *    clears the last of the two frees it.
 *
 * Reconnect policy
 *  - No connection is made until the first command (lazy).
 *  - A connection attempt that fails before becoming ready (refused,
 *    connect timeout, AUTH/SELECT error, closed during handshake) starts a
 *    back-off of PG_REDIS_RETRY_MS measured from the attempt's start. While
 *    it lasts, new commands are failed with PG_ERR_REDIS from a 0 ms timer.
 *    The first command after it triggers a new attempt and rides on it.
 *  - A ready connection that is lost (EOF, reset) is not backed off, and
 *    a command timeout never starts the back-off: the next command
 *    reconnects at once.
 *  - Command timeout: the op's cb gets PG_ERR_TIMEOUT first (the
 *    connection is already detached then), after which every other op
 *    still on that connection gets PG_ERR_REDIS, in order.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <openssl/evp.h>
#include "provgate/redis.h"

#define PG_REDIS_RETRY_MS 250u
#define PG_REDIS_MAX_ARGC (1024 * 1024)
#define PG_REDIS_SCRIPTS 32u          /* scripts cached per client */
#define PG_REDIS_SCRIPT_MAX (64u * 1024u) /* longest script cached */

/* Intrusive circular doubly linked list with a sentinel head. */
typedef struct pg_link {
    struct pg_link *prev, *next;
} pg_link_t;

static void
link_init(pg_link_t *h)
{
    h->prev = h->next = h;
}

static int
link_empty(const pg_link_t *h)
{
    return h->next == h;
}

static void
link_add_tail(pg_link_t *h, pg_link_t *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}

/* Unlink n (no-op when n is not linked: it points to itself). */
static void
link_del(pg_link_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

/* Move every element of src to the end of dst; src becomes empty. */
static void
link_splice_tail(pg_link_t *dst, pg_link_t *src)
{
    if (link_empty(src)) {
        return;
    }
    src->next->prev = dst->prev;
    dst->prev->next = src->next;
    src->prev->next = dst;
    dst->prev = src->prev;
    link_init(src);
}

typedef struct rconn rconn_t;

struct pg_redis_op {
    pg_link_t link;         /* first: r->sent, r->failq or r->failing */
    pg_redis_t *r;
    pg_redis_cb cb;
    void *arg;
    pg_timer_t *timer;      /* command timeout; only while in_hiredis */
    unsigned in_hiredis : 1; /* hiredis holds op as privdata */
    unsigned done : 1;       /* cb called or cancelled: user let go */
    struct evalsha_fb *fb;  /* sent as EVALSHA: the args for EVAL again */
};

/*
 * A command sent as EVALSHA keeps a copy of its arguments after the
 * script (numkeys, keys, args) so that a NOSCRIPT reply can be answered
 * by sending the same command as EVAL, once, on the same connection.
 */
typedef struct evalsha_fb {
    unsigned script;        /* index into r->scripts */
    int argc;               /* including "EVAL" and the script */
    const char **argv;      /* argv[2..] point into data */
    size_t *argvlen;
    char data[];
} evalsha_fb_t;

/* A script seen in an EVAL: its text and SHA-1 (hex) for EVALSHA. */
typedef struct script {
    char *text;
    size_t len;
    char sha[41];
} script_t;

struct rconn {
    pg_redis_t *r;
    redisAsyncContext *ac;  /* NULL once dead */
    pg_watch_t *w;
    unsigned mask;          /* current PG_EV_* interest */
    uint64_t started_ms;
    int connected;          /* TCP/unix connect completed */
    int handshake_pending;  /* AUTH/SELECT replies outstanding */
    int ready;              /* connected and handshake done */
    int dead;
    int broken;             /* watch_update failed: drop from kick timer */
    uint32_t loaded;        /* bit i: r->scripts[i] was sent as EVAL here */
    rconn_t *grave_next;
};

struct pg_redis {
    const pg_host_t *host;
    char *hostname;
    int port;
    char *unix_path;
    char *username;
    char *password;
    int db;
    unsigned connect_timeout_ms;
    unsigned command_timeout_ms;
    char *prefix;

    rconn_t *conn;              /* the live connection, or NULL */
    rconn_t *graveyard;         /* dead connections, freed at depth 0 */
    pg_timer_t *connect_timer;  /* connect + handshake deadline */
    pg_timer_t *kick_timer;     /* 0 ms: fail queued ops, drop broken */
    int kick_armed;
    uint64_t retry_after_ms;    /* no new attempt before this */

    pg_link_t sent;     /* live ops handed to hiredis, in order */
    pg_link_t failq;    /* live ops to fail with PG_ERR_REDIS */
    pg_link_t failing;  /* failq batch being delivered now */

    int depth;
    int freeing;

    script_t scripts[PG_REDIS_SCRIPTS];  /* EVALSHA cache, never evicted */
    unsigned nscripts;
    uint64_t noscript;                   /* NOSCRIPT fallbacks (tests) */
};

static void conn_drop(rconn_t *c, int failed_attempt);

/* ---- lifetime guards ------------------------------------------------ */

static void
enter(pg_redis_t *r)
{
    r->depth++;
}

static void
destroy(pg_redis_t *r)
{
    unsigned i;

    for (i = 0; i < r->nscripts; i++) {
        free(r->scripts[i].text);
    }
    if (r->password != NULL) {
        explicit_bzero(r->password, strlen(r->password));
    }
    free(r->hostname);
    free(r->unix_path);
    free(r->username);
    free(r->password);
    free(r->prefix);
    free(r);
}

/*
 * Leave an entry point. At depth 0 nothing on the stack refers to dead
 * connections any more, so free them; then finish a requested free.
 * The caller must not touch r after leave().
 */
static void
leave(pg_redis_t *r)
{
    if (--r->depth > 0) {
        return;
    }
    while (r->graveyard != NULL) {
        rconn_t *c = r->graveyard;
        r->graveyard = c->grave_next;
        free(c);
    }
    if (r->freeing) {
        destroy(r);
    }
}

static void
kick(pg_redis_t *r)
{
    if (!r->kick_armed && r->kick_timer != NULL) {
        r->kick_armed = 1;
        r->host->timer_arm(r->kick_timer, 0);
    }
}

/* ---- connection state ----------------------------------------------- */

/*
 * Mark c dead (idempotent): detach it from r, stop its deadline, close its
 * watch and park it for freeing. failed_attempt starts the reconnect
 * back-off (only meaningful while c is r's current connection).
 */
static void
conn_dead(rconn_t *c, int failed_attempt)
{
    pg_redis_t *r = c->r;

    if (c->dead) {
        return;
    }
    c->dead = 1;
    c->ac = NULL;
    if (r->conn == c) {
        r->conn = NULL;
        r->host->timer_disarm(r->connect_timer);
        r->retry_after_ms = failed_attempt ? c->started_ms + PG_REDIS_RETRY_MS
                                           : 0;
    }
    if (c->w != NULL) {
        r->host->watch_close(c->w);
        c->w = NULL;
    }
    c->mask = 0;
    c->grave_next = r->graveyard;
    r->graveyard = c;
}

/*
 * Drop c: detach it, then free the hiredis context, which calls every
 * pending reply callback with a NULL reply (ops fail with PG_ERR_REDIS).
 * Inside a reply callback hiredis defers the free until it returns.
 */
static void
conn_drop(rconn_t *c, int failed_attempt)
{
    redisAsyncContext *ac = c->ac;

    conn_dead(c, failed_attempt);
    if (ac != NULL) {
        redisAsyncFree(ac);
    }
}

static void
conn_ready(rconn_t *c)
{
    pg_redis_t *r = c->r;

    c->ready = 1;
    r->retry_after_ms = 0;
    r->host->timer_disarm(r->connect_timer);
    pg_log(r->host, PG_LOG_DEBUG, "redis: connection ready");
}

/* ---- hiredis adapter ------------------------------------------------ */

/* Apply a new interest mask to the watch; flag the connection on error. */
static void
ev_set(rconn_t *c, unsigned mask)
{
    if (c->w == NULL || c->mask == mask) {
        return;
    }
    c->mask = mask;
    if (c->r->host->watch_update(c->w, mask) != 0) {
        pg_log(c->r->host, PG_LOG_ERROR, "redis: watch update failed");
        c->broken = 1;
        kick(c->r);
    }
}

static void
ev_add_read(void *p)
{
    rconn_t *c = p;
    ev_set(c, c->mask | PG_EV_READ);
}

static void
ev_del_read(void *p)
{
    rconn_t *c = p;
    ev_set(c, c->mask & ~PG_EV_READ);
}

static void
ev_add_write(void *p)
{
    rconn_t *c = p;
    ev_set(c, c->mask | PG_EV_WRITE);
}

static void
ev_del_write(void *p)
{
    rconn_t *c = p;
    ev_set(c, c->mask & ~PG_EV_WRITE);
}

/* hiredis is tearing the context down (called once, from its free). */
static void
ev_cleanup(void *p)
{
    rconn_t *c = p;
    conn_dead(c, !c->ready);
}

/* Watch handler: feed readiness to hiredis. */
static void
on_io(void *arg, int fd, unsigned events)
{
    rconn_t *c = arg;
    pg_redis_t *r = c->r;

    (void)fd;
    enter(r);
    if ((events & PG_EV_READ) && c->ac != NULL) {
        redisAsyncHandleRead(c->ac);
    }
    /* c->ac is NULL now if hiredis freed the context meanwhile. */
    if ((events & PG_EV_WRITE) && c->ac != NULL) {
        redisAsyncHandleWrite(c->ac);
    }
    leave(r);
}

/* ---- hiredis callbacks ---------------------------------------------- */

static void
on_connect(const redisAsyncContext *ac, int status)
{
    rconn_t *c = ac->data;

    if (status != REDIS_OK) {
        pg_log(c->r->host, PG_LOG_WARN, "redis: connect failed: %s",
               ac->errstr ? ac->errstr : "unknown error");
        /* hiredis frees the context after this returns. */
        conn_dead(c, 1);
        return;
    }
    c->connected = 1;
    if (c->handshake_pending == 0 && !c->dead) {
        conn_ready(c);
    }
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
    rconn_t *c = ac->data;

    if (status != REDIS_OK) {
        pg_log(c->r->host, PG_LOG_WARN, "redis: connection lost: %s",
               ac->errstr ? ac->errstr : "unknown error");
    }
    conn_dead(c, !c->ready);
}

/* Reply to AUTH or SELECT (what = command name for the log). */
static void
handshake_reply(redisAsyncContext *ac, void *reply, rconn_t *c,
                const char *what)
{
    redisReply *rep = reply;

    (void)ac;
    if (rep == NULL || c->dead) {
        conn_dead(c, 1);
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        pg_log(c->r->host, PG_LOG_ERROR, "redis: %s failed: %.200s", what,
               rep->str ? rep->str : "");
        conn_drop(c, 1);
        return;
    }
    if (--c->handshake_pending == 0 && c->connected) {
        conn_ready(c);
    }
}

static void
on_auth_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    handshake_reply(ac, reply, privdata, "AUTH");
}

static void
on_select_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    handshake_reply(ac, reply, privdata, "SELECT");
}

/* Detach a live op from its list and timer; the user lets go of it. */
static void
op_finish(pg_redis_op_t *op)
{
    op->done = 1;
    link_del(&op->link);
    if (op->timer != NULL) {
        op->r->host->timer_close(op->timer);
        op->timer = NULL;
    }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Free an op and its EVAL fallback copy. */
static void
op_release(pg_redis_op_t *op)
{
    free(op->fb);
    free(op);
}

/*
 * A reply to an EVALSHA: when it is a NOSCRIPT error (Redis restarted
 * with the same connection impossible, so: SCRIPT FLUSH, or a replica
 * promoted), send the same command as EVAL on the same connection, which
 * also loads the script again. Returns 1 when resent (the op stays with
 * hiredis, its timeout keeps running), 0 to deliver the reply as is.
 * op->fb is consumed either way when resent.
 */
static int
evalsha_retry(redisAsyncContext *ac, pg_redis_op_t *op, const redisReply *rep)
{
    rconn_t *c = ac->data;
    evalsha_fb_t *fb = op->fb;
    const script_t *sc;

    if (rep->type != REDIS_REPLY_ERROR || rep->str == NULL ||
        strncmp(rep->str, "NOSCRIPT", 8) != 0 || c == NULL || c->dead ||
        c->ac != ac) {
        return 0;
    }
    sc = &op->r->scripts[fb->script];
    fb->argv[0] = "EVAL";
    fb->argvlen[0] = 4;
    fb->argv[1] = sc->text;
    fb->argvlen[1] = sc->len;
    if (redisAsyncCommandArgv(ac, on_reply, op, fb->argc, fb->argv,
                              fb->argvlen) != REDIS_OK) {
        return 0;
    }
    op->r->noscript++;
    c->loaded |= 1u << fb->script;
    free(fb);
    op->fb = NULL;
    /* keep r->sent in send order */
    link_del(&op->link);
    link_add_tail(&op->r->sent, &op->link);
    return 1;
}

/*
 * Reply (or NULL: the context is being torn down) for a user command.
 * Calls the user cb unless the op is already done (cancelled / timed out).
 */
static void
on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    pg_redis_op_t *op = privdata;

    if (reply == NULL) {
        rconn_t *c = ac->data;
        conn_dead(c, !c->ready);
    } else if (op->fb != NULL && !op->done && evalsha_retry(ac, op, reply)) {
        return; /* sent again as EVAL; hiredis still holds op */
    }
    op->in_hiredis = 0;
    if (!op->done) {
        op_finish(op);
        op->cb(op->arg, reply ? PG_OK : PG_ERR_REDIS, reply);
    }
    op_release(op);
}

/* ---- timers --------------------------------------------------------- */

/* The op's command timeout fired: TIMEOUT for it, drop the connection. */
static void
on_op_timeout(void *arg)
{
    pg_redis_op_t *op = arg;
    pg_redis_t *r = op->r;
    redisAsyncContext *ac = NULL;
    pg_redis_cb cb = op->cb;
    void *cbarg = op->arg;
    int free_now;

    enter(r);
    op_finish(op);
    free_now = !op->in_hiredis;
    if (op->in_hiredis && r->conn != NULL) {
        /* Detach first so that commands issued from cb get a new
         * connection; ops still in the old one fail after cb. */
        ac = r->conn->ac;
        pg_log(r->host, PG_LOG_WARN,
               "redis: command timed out, dropping the connection");
        conn_dead(r->conn, 0);
    }
    cb(cbarg, PG_ERR_TIMEOUT, NULL);
    if (free_now) {
        op_release(op);
    }
    if (ac != NULL) {
        redisAsyncFree(ac); /* frees op too (in_hiredis) */
    }
    leave(r);
}

static void
on_connect_timeout(void *arg)
{
    pg_redis_t *r = arg;

    enter(r);
    if (r->conn != NULL && !r->conn->ready) {
        pg_log(r->host, PG_LOG_WARN, "redis: connect timed out after %u ms",
               r->connect_timeout_ms);
        conn_drop(r->conn, 1);
    }
    leave(r);
}

/* 0 ms timer: drop a broken connection, fail the queued ops in order. */
static void
on_kick(void *arg)
{
    pg_redis_t *r = arg;

    enter(r);
    r->kick_armed = 0;
    if (r->conn != NULL && r->conn->broken) {
        conn_drop(r->conn, 1);
    }
    /* Only this batch: ops queued by the callbacks wait for the next kick. */
    link_splice_tail(&r->failing, &r->failq);
    while (!link_empty(&r->failing)) {
        pg_redis_op_t *op = (pg_redis_op_t *)r->failing.next;
        op_finish(op);
        op->cb(op->arg, PG_ERR_REDIS, NULL);
        op_release(op);
    }
    leave(r);
}

/* ---- connecting ----------------------------------------------------- */

/*
 * Start a connection attempt and queue AUTH/SELECT. On success r->conn is
 * set (not yet connected). On failure r->conn stays NULL and the back-off
 * starts. Never calls user callbacks.
 */
static void
start_connect(pg_redis_t *r)
{
    redisAsyncContext *ac;
    rconn_t *c;
    uint64_t now = r->host->now_ms(r->host->ctx);

    /* Kept on every early failure below; conn_dead() sets it later on. */
    r->retry_after_ms = now + PG_REDIS_RETRY_MS;
    if (r->unix_path != NULL) {
        ac = redisAsyncConnectUnix(r->unix_path);
    } else {
        ac = redisAsyncConnect(r->hostname, r->port);
    }
    if (ac == NULL) {
        pg_log(r->host, PG_LOG_ERROR, "redis: out of memory connecting");
        return;
    }
    if (ac->err) {
        pg_log(r->host, PG_LOG_WARN, "redis: connect to %s:%d failed: %s",
               r->unix_path ? r->unix_path : r->hostname,
               r->unix_path ? 0 : r->port, ac->errstr);
        redisAsyncFree(ac);
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        redisAsyncFree(ac);
        return;
    }
    c->r = r;
    c->ac = ac;
    c->started_ms = now;
    c->w = r->host->watch_open(r->host->ctx, ac->c.fd, on_io, c);
    if (c->w == NULL) {
        pg_log(r->host, PG_LOG_ERROR, "redis: cannot watch socket");
        free(c);
        redisAsyncFree(ac);
        return;
    }
    ac->data = c;
    ac->ev.data = c;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    r->conn = c;
    /* Also arms the write interest that detects connect completion. */
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);

    if (r->password != NULL) {
        const char *argv[3];
        size_t argvlen[3];
        int argc = 0;

        argv[argc] = "AUTH";
        argvlen[argc++] = 4;
        if (r->username != NULL) {
            argv[argc] = r->username;
            argvlen[argc++] = strlen(r->username);
        }
        argv[argc] = r->password;
        argvlen[argc++] = strlen(r->password);
        if (redisAsyncCommandArgv(ac, on_auth_reply, c, argc, argv,
                                  argvlen) != REDIS_OK) {
            conn_drop(c, 1);
            return;
        }
        c->handshake_pending++;
    }
    if (r->db != 0) {
        char dbs[16];
        const char *argv[2];
        size_t argvlen[2];
        int n = snprintf(dbs, sizeof(dbs), "%d", r->db);

        argv[0] = "SELECT";
        argvlen[0] = 6;
        argv[1] = dbs;
        argvlen[1] = (size_t)n;
        if (redisAsyncCommandArgv(ac, on_select_reply, c, 2, argv,
                                  argvlen) != REDIS_OK) {
            conn_drop(c, 1);
            return;
        }
        c->handshake_pending++;
    }
    r->host->timer_arm(r->connect_timer, r->connect_timeout_ms);
}

/* ---- public API ----------------------------------------------------- */

static pg_status_t
dup_opt(const char *s, char **out)
{
    *out = NULL;
    if (s == NULL) {
        return PG_OK;
    }
    *out = strdup(s);
    return *out ? PG_OK : PG_ERR_NOMEM;
}

/*
 * Create a client. cfg (may be NULL: all defaults) is copied; the host
 * must outlive the client. Nothing is connected here. PG_ERR_INVALID for
 * a bad port/db/unix path or a username without password.
 *
 * Note: a hostname that is not an IP literal is resolved with
 * getaddrinfo() by hiredis at connect time, which can block; configure an
 * address (or a name in /etc/hosts) or a unix socket.
 */
pg_status_t
pg_redis_new(const pg_host_t *host, const pg_redis_config_t *cfg,
             pg_redis_t **out)
{
    static const pg_redis_config_t defaults;
    pg_redis_t *r;
    pg_status_t st;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (host == NULL || host->timer_open == NULL || host->watch_open == NULL) {
        return PG_ERR_INVALID;
    }
    if (cfg == NULL) {
        cfg = &defaults;
    }
    if (cfg->port < 0 || cfg->port > 65535 || cfg->db < 0 ||
        (cfg->username != NULL && cfg->password == NULL) ||
        (cfg->unix_path != NULL &&
         (cfg->unix_path[0] == '\0' ||
          strlen(cfg->unix_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)))) {
        return PG_ERR_INVALID;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return PG_ERR_NOMEM;
    }
    r->host = host;
    r->port = cfg->port ? cfg->port : 6379;
    r->db = cfg->db;
    r->connect_timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : 1000;
    r->command_timeout_ms = cfg->command_timeout_ms ? cfg->command_timeout_ms : 1000;
    link_init(&r->sent);
    link_init(&r->failq);
    link_init(&r->failing);
    st = dup_opt(cfg->host ? cfg->host : "127.0.0.1", &r->hostname);
    if (st == PG_OK) {
        st = dup_opt(cfg->unix_path, &r->unix_path);
    }
    if (st == PG_OK) {
        st = dup_opt(cfg->username, &r->username);
    }
    if (st == PG_OK) {
        st = dup_opt(cfg->password, &r->password);
    }
    if (st == PG_OK) {
        st = dup_opt(cfg->key_prefix ? cfg->key_prefix : "pg:", &r->prefix);
    }
    if (st == PG_OK) {
        r->connect_timer = host->timer_open(host->ctx, on_connect_timeout, r);
        r->kick_timer = host->timer_open(host->ctx, on_kick, r);
        if (r->connect_timer == NULL || r->kick_timer == NULL) {
            st = PG_ERR_NOMEM;
        }
    }
    if (st != PG_OK) {
        if (r->connect_timer != NULL) {
            host->timer_close(r->connect_timer);
        }
        if (r->kick_timer != NULL) {
            host->timer_close(r->kick_timer);
        }
        destroy(r);
        return st;
    }
    *out = r;
    return PG_OK;
}

/* Cancel every live op on list h (cb with PG_ERR_CANCELLED). */
static void
cancel_list(pg_link_t *h)
{
    while (!link_empty(h)) {
        pg_redis_op_t *op = (pg_redis_op_t *)h->next;
        op_finish(op);
        op->cb(op->arg, PG_ERR_CANCELLED, NULL);
        if (!op->in_hiredis) {
            op_release(op);
        }
    }
}

/*
 * Free the client: every pending op's cb runs with PG_ERR_CANCELLED (in
 * order: ops being failed, queued failures, then sent commands), the
 * connection is dropped. Safe to call from inside any pg_redis callback of
 * this client: memory is released once the outermost frame unwinds. New
 * commands issued from those callbacks are refused with PG_ERR_CANCELLED.
 */
void
pg_redis_free(pg_redis_t *r)
{
    if (r == NULL || r->freeing) {
        return;
    }
    enter(r);
    r->freeing = 1;
    cancel_list(&r->failing);
    cancel_list(&r->failq);
    cancel_list(&r->sent);
    if (r->conn != NULL) {
        conn_drop(r->conn, 0);
    }
    r->host->timer_close(r->connect_timer);
    r->connect_timer = NULL;
    r->host->timer_close(r->kick_timer);
    r->kick_timer = NULL;
    leave(r);
}

/*
 * Index of script[0..len) in r's EVALSHA cache, adding it (with its
 * SHA-1) when new. -1 when it cannot be cached (cache full, script longer
 * than PG_REDIS_SCRIPT_MAX, out of memory): the caller sends plain EVAL.
 * Scripts are compared by content, so a caller may build them anywhere.
 */
static int
script_index(pg_redis_t *r, const char *script, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0, i;
    script_t *sc;

    for (i = 0; i < r->nscripts; i++) {
        if (r->scripts[i].len == len &&
            memcmp(r->scripts[i].text, script, len) == 0) {
            return (int)i;
        }
    }
    if (r->nscripts >= PG_REDIS_SCRIPTS || len == 0 ||
        len > PG_REDIS_SCRIPT_MAX ||
        EVP_Digest(script, len, md, &mdlen, EVP_sha1(), NULL) != 1 ||
        mdlen != 20) {
        return -1;
    }
    sc = &r->scripts[r->nscripts];
    sc->text = malloc(len);
    if (sc->text == NULL) {
        return -1;
    }
    memcpy(sc->text, script, len);
    sc->len = len;
    for (i = 0; i < 20; i++) {
        sc->sha[2 * i] = hex[md[i] >> 4];
        sc->sha[2 * i + 1] = hex[md[i] & 15];
    }
    sc->sha[40] = '\0';
    return (int)r->nscripts++;
}

/*
 * Hand one command to hiredis on r->conn. "EVAL script numkeys ..." goes
 * as EVALSHA when this connection has sent the script before (as EVAL:
 * that loads it into Redis' script cache), keeping a copy of the other
 * arguments in op->fb for the NOSCRIPT fallback (evalsha_retry). Anything
 * else, and scripts that cannot be cached, go as they are.
 */
static pg_status_t
send_argv(pg_redis_t *r, pg_redis_op_t *op, int argc, const char **argv,
          const size_t *argvlen)
{
    rconn_t *c = r->conn;
    size_t l0, l1, total = 0, off = 0;
    evalsha_fb_t *fb;
    int i, idx;

    l0 = argvlen ? argvlen[0] : strlen(argv[0]);
    if (argc < 3 || l0 != 4 || strncasecmp(argv[0], "EVAL", 4) != 0) {
        goto plain;
    }
    l1 = argvlen ? argvlen[1] : strlen(argv[1]);
    idx = script_index(r, argv[1], l1);
    if (idx < 0) {
        goto plain;
    }
    if (!(c->loaded & (1u << idx))) {
        /* first use on this connection: EVAL loads it */
        if (redisAsyncCommandArgv(c->ac, on_reply, op, argc, argv,
                                  argvlen) != REDIS_OK) {
            return PG_ERR_NOMEM;
        }
        c->loaded |= 1u << idx;
        return PG_OK;
    }
    for (i = 2; i < argc; i++) {
        total += argvlen ? argvlen[i] : strlen(argv[i]);
    }
    fb = malloc(sizeof(*fb) + (size_t)argc * (sizeof(char *) + sizeof(size_t))
                + total);
    if (fb == NULL) {
        return PG_ERR_NOMEM;
    }
    fb->script = (unsigned)idx;
    fb->argc = argc;
    fb->argv = (const char **)(void *)fb->data;
    fb->argvlen = (size_t *)(void *)(fb->data + (size_t)argc * sizeof(char *));
    {
        char *d = fb->data + (size_t)argc * (sizeof(char *) + sizeof(size_t));

        for (i = 2; i < argc; i++) {
            size_t n = argvlen ? argvlen[i] : strlen(argv[i]);

            memcpy(d + off, argv[i], n);
            fb->argv[i] = d + off;
            fb->argvlen[i] = n;
            off += n;
        }
    }
    fb->argv[0] = "EVALSHA";
    fb->argvlen[0] = 7;
    fb->argv[1] = r->scripts[idx].sha;
    fb->argvlen[1] = 40;
    if (redisAsyncCommandArgv(c->ac, on_reply, op, argc, fb->argv,
                              fb->argvlen) != REDIS_OK) {
        free(fb);
        return PG_ERR_NOMEM;
    }
    op->fb = fb;
    return PG_OK;
plain:
    return redisAsyncCommandArgv(c->ac, on_reply, op, argc, argv,
                                 argvlen) == REDIS_OK ? PG_OK : PG_ERR_NOMEM;
}

/* See redis.h. */
uint64_t
pg_redis_noscript_count(const pg_redis_t *r)
{
    return r != NULL ? r->noscript : 0;
}

/*
 * Queue one command (argv API; argvlen NULL means strlen of each arg).
 * On PG_OK, cb runs exactly once later from the loop unless cancelled.
 * Errors (no cb): PG_ERR_INVALID (bad args), PG_ERR_NOMEM, and
 * PG_ERR_CANCELLED once pg_redis_free() has started.
 */
pg_status_t
pg_redis_command(pg_redis_t *r, int argc, const char **argv,
                 const size_t *argvlen, unsigned timeout_ms,
                 pg_redis_cb cb, void *arg, pg_redis_op_t **op_out)
{
    pg_redis_op_t *op;
    pg_status_t st = PG_OK;
    int i;

    if (op_out != NULL) {
        *op_out = NULL;
    }
    if (r == NULL || argc <= 0 || argc > PG_REDIS_MAX_ARGC || argv == NULL ||
        cb == NULL) {
        return PG_ERR_INVALID;
    }
    for (i = 0; i < argc; i++) {
        if (argv[i] == NULL) {
            return PG_ERR_INVALID;
        }
    }
    if (r->freeing) {
        return PG_ERR_CANCELLED;
    }
    op = calloc(1, sizeof(*op));
    if (op == NULL) {
        return PG_ERR_NOMEM;
    }
    op->r = r;
    op->cb = cb;
    op->arg = arg;
    link_init(&op->link);

    enter(r);
    if (r->conn == NULL &&
        r->host->now_ms(r->host->ctx) >= r->retry_after_ms) {
        start_connect(r);
    }
    if (r->conn != NULL) {
        op->timer = r->host->timer_open(r->host->ctx, on_op_timeout, op);
        if (op->timer == NULL) {
            st = PG_ERR_NOMEM;
        } else if (send_argv(r, op, argc, argv, argvlen) != PG_OK) {
            r->host->timer_close(op->timer);
            st = PG_ERR_NOMEM;
        } else {
            op->in_hiredis = 1;
            link_add_tail(&r->sent, &op->link);
            r->host->timer_arm(op->timer,
                               timeout_ms ? timeout_ms : r->command_timeout_ms);
        }
    } else {
        link_add_tail(&r->failq, &op->link);
        kick(r);
    }
    if (st != PG_OK) {
        op_release(op);
        op = NULL;
    }
    if (op_out != NULL) {
        *op_out = op;
    }
    leave(r);
    return st;
}

/*
 * Cancel: cb will not be called. The command itself may still reach Redis
 * (it is only un-subscribed from its reply). A no-op for an op whose cb is
 * running (cancel from inside the own cb). Never calls any callback.
 */
void
pg_redis_cancel(pg_redis_op_t *op)
{
    if (op == NULL || op->done) {
        return;
    }
    op_finish(op);
    if (!op->in_hiredis) {
        op_release(op);
    }
}

/* The configured key prefix (owned by r). Never NULL. */
const char *
pg_redis_prefix(const pg_redis_t *r)
{
    return (r && r->prefix) ? r->prefix : "pg:";
}

/* 1 while a connection is up and its AUTH/SELECT handshake succeeded. */
int
pg_redis_connected(const pg_redis_t *r)
{
    return r != NULL && r->conn != NULL && r->conn->ready;
}
