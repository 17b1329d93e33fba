/*
 * provgated: the provgate sidecar daemon (GitHub issue 6, "Daemon").
 *
 *   provgated --config provgate.json [--listen 127.0.0.1:PORT]
 *             [--log-file F] [--log-level error|warn|info|debug]
 *             [--health-interval-ms N]
 *
 * What it does today:
 *  - loads the same JSON configuration as the nginx module
 *    (pg_config_load); a bad file at start: the error is logged and the
 *    exit status is 1;
 *  - runs one libevent loop (pg_evhost) with the async Redis client
 *    (pg_redis) on the configured Redis, probed with PING every
 *    --health-interval-ms (default 1000);
 *  - writes structured JSON log lines ({"ts","level","msg",...}) to stderr
 *    or --log-file (reopened on SIGHUP);
 *  - SIGHUP reloads the configuration: on success the Redis client and the
 *    audit emitter are rebuilt from the new file; on error the old
 *    configuration stays in use and the reason is logged and counted;
 *  - SIGTERM/SIGINT stop gracefully (listener closed, "daemon.stop" audit
 *    event, 100 ms for the last Redis writes, everything freed, exit 0);
 *  - HTTP on --listen (default 127.0.0.1:9180, port 0 = any free port,
 *    the bound address is logged): GET /healthz and GET /metrics;
 *  - audit events (pg_audit): daemon.start, config.reload, daemon.stop;
 *  - JML events from POST /events and, with hr_source.event_stream
 *    enabled, from a Redis Stream (pg_jmlstream, its own Redis client;
 *    counted in /metrics, its state in /healthz; docs/sidecar.md).
 *
 * Exit status: 0 after SIGTERM/SIGINT, 1 on a start-up failure, 2 on a
 * usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>
#include <jansson.h>
#include "provgate/audit.h"
#include "provgate/config.h"
#include "provgate/evhost.h"
#include "provgate/expiry.h"
#include "provgate/gate.h"
#include "provgate/jml.h"
#include "provgate/jmlstream.h"
#include "provgate/recon.h"   /* reconciliation (recon block) */
#include <event2/keyvalq_struct.h>   /* recon block */
#include "provgate/idview.h"
#include "provgate/redis.h"
#include "provgate/util.h"
#include <dirent.h>
#include <limits.h>
#include <strings.h>
#include <sys/stat.h>

#define DEFAULT_LISTEN "127.0.0.1:9180"
#define MAX_LISTEN_ARG 300u
#define MAX_LOG_LINE 4096u           /* cap of one log message text */
#define HTTP_MAX_HEADERS 8192        /* request header bytes */
#define HTTP_MAX_BODY 65536          /* POST /events: one JML event */
#define HTTP_TIMEOUT_S 10
#define STOP_GRACE_MS 100

typedef struct daemon {
    pg_evhost_t *eh;
    const pg_host_t *host;
    struct event_base *base;

    const char *config_path;     /* argv, borrowed */
    pg_config_t *cfg;
    pg_redis_t *redis;
    pg_audit_t *audit;

    struct evhttp *http;
    char listen_addr[MAX_LISTEN_ARG];
    struct event *sig_hup, *sig_term, *sig_int;

    pg_timer_t *health_timer;
    pg_redis_op_t *health_op;    /* PING in flight, or NULL */
    unsigned health_interval_ms;
    int redis_up;

    unsigned long long reloads;
    unsigned long long reload_failures;
    double start_time;           /* Unix seconds */
    int stopping;

    const char *log_file;        /* argv, borrowed; NULL: stderr */
    int log_fd;
    pg_log_level_t log_level;

    /* provisioning: the gate runs the outbox consumer (every target type,
     * the same code as the gateway) and the HR import (JML) */
    pg_gate_t *gate;
    pg_jml_t *jml;
    pg_timer_t *poll_timer;
    struct stat last_import;     /* file identity of the last import */
    int have_last;
    json_t *last_summary;        /* of the last import */
    char drop_name[256];         /* hr_source.drop_dir: the file being
                                    imported (name only), or "" */
    unsigned long long imports, import_failures;
    char *admin_token;           /* --admin-token-file; NULL: POST refused */

    /* JML events from a Redis Stream (hr_source.event_stream): its own
     * Redis client, as XREADGROUP BLOCK holds the connection */
    pg_redis_t *stream_redis;
    pg_jmlstream_t *stream;
    pg_jmlstream_stats_t stream_base; /* counters of consumers replaced
                                         by a reload */
} daemon_t;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* ---- logging ---------------------------------------------------------- */

/* UTC RFC 3339 with milliseconds into out. */
static void
timestamp(char *out, size_t outsz)
{
    struct timespec ts;
    struct tm tm;
    char base[32];

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0 ||
        gmtime_r(&ts.tv_sec, &tm) == NULL ||
        strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
        snprintf(out, outsz, "1970-01-01T00:00:00.000Z");
        return;
    }
    snprintf(out, outsz, "%s.%03uZ", base,
             (unsigned)(ts.tv_nsec / 1000000L) % 1000u);
}

/*
 * Write one JSON log line {"ts","level","msg",...fields} with a single
 * write(2). fields (may be NULL) is stolen; its members never replace the
 * three header members. Lines below the configured level are dropped.
 */
static void
dlog(daemon_t *d, pg_log_level_t level, json_t *fields, const char *fmt, ...)
    PG_PRINTF(4, 5);

static void
dlog(daemon_t *d, pg_log_level_t level, json_t *fields, const char *fmt, ...)
{
    char msg[MAX_LOG_LINE], ts[64];
    const char *key;
    json_t *line, *val;
    char *text;
    size_t len;
    va_list ap;

    if (level > d->log_level) {
        json_decref(fields);
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    timestamp(ts, sizeof(ts));
    line = json_object();
    if (line == NULL) {
        json_decref(fields);
        return;
    }
    json_object_set_new(line, "ts", json_string(ts));
    json_object_set_new(line, "level",
                        json_string(level_names[(unsigned)level & 3u]));
    val = json_string(msg);
    if (val == NULL) {
        /* not UTF-8 (e.g. a path): replace every non-ASCII byte */
        size_t i;

        for (i = 0; msg[i] != '\0'; i++) {
            if ((unsigned char)msg[i] >= 0x80) {
                msg[i] = '?';
            }
        }
        val = json_string(msg);
    }
    json_object_set_new(line, "msg", val != NULL ? val : json_null());
    if (json_is_object(fields)) {
        json_object_foreach(fields, key, val) {
            if (json_object_get(line, key) == NULL) {
                json_object_set(line, key, val);
            }
        }
    }
    json_decref(fields);
    text = json_dumps(line, JSON_COMPACT);
    json_decref(line);
    if (text == NULL) {
        return;
    }
    len = strlen(text);
    text[len] = '\n'; /* replaces the NUL; length is explicit below */
    if (write(d->log_fd, text, len + 1) < 0) {
        /* nowhere left to report it */
    }
    free(text);
}

/* Sink for core log lines (pg_log through the evhost). */
static void
core_log(void *arg, pg_log_level_t level, const char *msg)
{
    daemon_t *d = arg;

    dlog(d, level, json_pack("{s:s}", "source", "core"), "%s", msg);
}

/* Open (or reopen) --log-file. The old descriptor is kept on failure. */
static int
open_log(daemon_t *d)
{
    int fd;

    if (d->log_file == NULL) {
        d->log_fd = STDERR_FILENO;
        return 0;
    }
    fd = open(d->log_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        return -1;
    }
    if (d->log_fd > STDERR_FILENO) {
        close(d->log_fd);
    }
    d->log_fd = fd;
    return 0;
}

/* ---- Redis health ----------------------------------------------------- */

static void set_redis_up(daemon_t *d, int up, const char *why);

/* PING reply: record the state, schedule the next probe. */
static void
on_ping(void *arg, pg_status_t st, const struct redisReply *reply)
{
    daemon_t *d = arg;

    d->health_op = NULL;
    if (st == PG_ERR_CANCELLED) {
        return; /* client being freed: no new probe from here */
    }
    if (st == PG_OK && reply != NULL && reply->type == REDIS_REPLY_STATUS &&
        reply->str != NULL && strcmp(reply->str, "PONG") == 0) {
        set_redis_up(d, 1, "ping ok");
    } else {
        set_redis_up(d, 0, st != PG_OK ? pg_status_str(st) : "bad reply");
    }
    d->host->timer_arm(d->health_timer, d->health_interval_ms);
}

/* Health timer: send one PING unless one is still in flight. */
static void
on_health_timer(void *arg)
{
    daemon_t *d = arg;
    const char *argv[] = {"PING"};
    pg_status_t st;

    if (d->health_op != NULL || d->redis == NULL) {
        d->host->timer_arm(d->health_timer, d->health_interval_ms);
        return;
    }
    st = pg_redis_command(d->redis, 1, argv, NULL, 0, on_ping, d,
                          &d->health_op);
    if (st != PG_OK) {
        d->health_op = NULL;
        set_redis_up(d, 0, pg_status_str(st));
        d->host->timer_arm(d->health_timer, d->health_interval_ms);
    }
}

/* Log transitions only (not every probe). */
static void
set_redis_up(daemon_t *d, int up, const char *why)
{
    if (up == d->redis_up) {
        return;
    }
    d->redis_up = up;
    dlog(d, up ? PG_LOG_INFO : PG_LOG_WARN,
         json_pack("{s:s,s:s}", "redis", up ? "up" : "down", "reason", why),
         "redis is %s", up ? "up" : "down");
}

/* ---- configuration and its dependents --------------------------------- */

/* Stop the PING in flight (its cb will not run). */
static void
cancel_health(daemon_t *d)
{
    if (d->health_op != NULL) {
        pg_redis_cancel(d->health_op);
        d->health_op = NULL;
    }
}

/*
 * Build a Redis client and an audit emitter for cfg. On success both are
 * returned (owned by the caller); on failure nothing is left allocated and
 * err says why.
 */
static pg_status_t
build_runtime(daemon_t *d, const pg_config_t *cfg, pg_redis_t **redis,
              pg_audit_t **audit, pg_gate_t **gate, pg_jml_t **jml,
              pg_err_t *err)
{
    pg_status_t st;

    *redis = NULL;
    *audit = NULL;
    *gate = NULL;
    *jml = NULL;
    st = pg_redis_new(d->host, &cfg->redis, redis);
    if (st != PG_OK) {
        pg_err_set(err, "redis client: %s", pg_status_str(st));
        return st;
    }
    st = pg_audit_new(d->host, &cfg->audit, cfg->instance, *redis, audit,
                      err);
    if (st != PG_OK) {
        pg_redis_free(*redis);
        *redis = NULL;
        return st;
    }
    /* no sign-in here: SAML IdP metadata URLs are the gateway's to fetch */
    st = pg_gate_new_with(cfg, d->host, PG_GATE_NO_LOGIN, gate, err);
    if (st == PG_OK && cfg->hr_source != NULL) {
        st = pg_jml_new(cfg, d->host, *redis, *audit, jml, err);
    }
    if (st != PG_OK) {
        pg_gate_free(*gate);
        *gate = NULL;
        pg_audit_free(*audit);
        *audit = NULL;
        pg_redis_free(*redis);
        *redis = NULL;
        return st;
    }
    return PG_OK;
}

/* Emit an audit event and ignore the id. fields stolen. */
static void
audit(daemon_t *d, const char *type, const char *outcome, const char *reason,
      json_t *fields)
{
    if (d->audit != NULL) {
        pg_audit_emit(d->audit, type, outcome, reason, fields, NULL);
    } else {
        json_decref(fields);
    }
}

/* ==== BEGIN expiry (issue 6 + 4: src/sidecar/expiry.c) ====================
 * The expiry job and its keyspace subscription. Everything of it lives in
 * this block and in `ex` (not in daemon_t); the rest of the daemon calls
 * only expiry_start(), expiry_stop() and expiry_restart().
 *  - pg_expiry (core) sweeps every expiry.sweep_s and when something falls
 *    due, enabling "notify-keyspace-events Egx" at start (CONFIG SET).
 *  - A separate hiredis async connection on this libevent base SUBSCRIBEs
 *    to __keyevent@<db>__:expired and :del and hands every key to
 *    pg_expiry_notify (a session key schedules a sweep). A lost connection
 *    is retried every 2 s; on (re)subscription a sweep runs, so session
 *    ends missed meanwhile are found.
 */
#define EXPIRY_RETRY_S 2

static struct {
    daemon_t *d;
    pg_expiry_t *x;
    redisAsyncContext *ac;       /* the subscriber, or NULL */
    struct event *retry;
    int stopping;
} ex;

static void expiry_subscribe(void);

static void
expiry_on_sweep(void *arg, pg_status_t st, const json_t *summary)
{
    daemon_t *d = arg;

    if (st != PG_OK || json_integer_value(json_object_get(summary,
                                                          "operations")) > 0) {
        dlog(d, st == PG_OK ? PG_LOG_INFO : PG_LOG_WARN,
             json_pack("{s:s,s:O}", "event", "expiry.sweep", "summary",
                       (json_t *) summary),
             "expiry sweep: %s", pg_status_str(st));
    }
}

static void
expiry_on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void) fd;
    (void) what;
    (void) arg;
    expiry_subscribe();
}

static void
expiry_schedule_retry(void)
{
    struct timeval tv = { EXPIRY_RETRY_S, 0 };

    if (!ex.stopping && ex.retry != NULL) {
        evtimer_add(ex.retry, &tv);
    }
}

/* A message on the subscription: ["message", channel, key] or a
 * subscription confirmation ["subscribe", channel, n]. */
static void
expiry_on_message(redisAsyncContext *ac, void *r, void *privdata)
{
    redisReply *reply = r;

    (void) ac;
    (void) privdata;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 3
        || reply->element[0]->type != REDIS_REPLY_STRING) {
        return;
    }
    if (strcmp(reply->element[0]->str, "message") == 0
        && reply->element[2]->type == REDIS_REPLY_STRING) {
        pg_expiry_notify(ex.x, reply->element[2]->str);
    } else if (strcmp(reply->element[0]->str, "subscribe") == 0
               && reply->element[2]->type == REDIS_REPLY_INTEGER
               && reply->element[2]->integer == 1) {
        pg_expiry_kick(ex.x);   /* events may have been missed */
    }
}

static void
expiry_on_connect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) {
        dlog(ex.d, PG_LOG_WARN, NULL, "expiry: subscriber cannot connect: "
             "%s", ac->errstr);
        ex.ac = NULL;   /* hiredis frees it */
        expiry_schedule_retry();
    }
}

static void
expiry_on_disconnect(const redisAsyncContext *ac, int status)
{
    (void) ac;
    ex.ac = NULL;
    if (status != REDIS_OK && !ex.stopping) {
        dlog(ex.d, PG_LOG_WARN, NULL, "expiry: subscriber disconnected");
    }
    expiry_schedule_retry();
}

static void
expiry_subscribe(void)
{
    const pg_redis_config_t *rc = &ex.d->cfg->redis;
    char expired[64], deleted[64];
    const char *argv[4];
    int argc = 0;

    if (ex.stopping || ex.ac != NULL) {
        return;
    }
    ex.ac = rc->unix_path != NULL ? redisAsyncConnectUnix(rc->unix_path)
                                  : redisAsyncConnect(rc->host, rc->port);
    if (ex.ac == NULL || ex.ac->err) {
        if (ex.ac != NULL) {
            redisAsyncFree(ex.ac);
        }
        ex.ac = NULL;
        expiry_schedule_retry();
        return;
    }
    if (redisLibeventAttach(ex.ac, ex.d->base) != REDIS_OK) {
        redisAsyncFree(ex.ac);
        ex.ac = NULL;
        expiry_schedule_retry();
        return;
    }
    redisAsyncSetConnectCallback(ex.ac, expiry_on_connect);
    redisAsyncSetDisconnectCallback(ex.ac, expiry_on_disconnect);
    if (rc->password != NULL) {
        argv[argc++] = "AUTH";
        if (rc->username != NULL) {
            argv[argc++] = rc->username;
        }
        argv[argc++] = rc->password;
        (void) redisAsyncCommandArgv(ex.ac, NULL, NULL, argc, argv, NULL);
    }
    pg_expiry_channels(rc->db, expired, deleted, sizeof(expired));
    argv[0] = "SUBSCRIBE";
    argv[1] = expired;
    argv[2] = deleted;
    (void) redisAsyncCommandArgv(ex.ac, expiry_on_message, NULL, 3, argv,
                                 NULL);
}

/* Start the job on the daemon's current cfg/redis/audit. */
static void
expiry_start(daemon_t *d)
{
    ex.d = d;
    ex.stopping = 0;
    if (pg_expiry_new(d->cfg, d->host, d->redis, d->audit, expiry_on_sweep,
                      d, &ex.x) != PG_OK
        || pg_expiry_start(ex.x) != PG_OK) {
        dlog(d, PG_LOG_ERROR, NULL, "expiry: cannot start the expiry job");
        pg_expiry_free(ex.x);
        ex.x = NULL;
        return;
    }
    if (ex.retry == NULL) {
        ex.retry = evtimer_new(d->base, expiry_on_retry, NULL);
    }
    expiry_subscribe();
}

/* Stop before the cfg/redis/audit it borrows are freed. */
static void
expiry_stop(void)
{
    ex.stopping = 1;
    if (ex.retry != NULL) {
        event_free(ex.retry);
        ex.retry = NULL;
    }
    if (ex.ac != NULL) {
        redisAsyncContext *ac = ex.ac;

        ex.ac = NULL;
        redisAsyncFree(ac);
    }
    pg_expiry_free(ex.x);
    ex.x = NULL;
}

/* After a configuration reload swapped cfg/redis/audit. */
static void
expiry_restart(daemon_t *d)
{
    expiry_start(d);
}
/* ==== END expiry ========================================================== */

/* ---- JML events from a Redis Stream ------------------------------------- */

/*
 * Start the stream consumer when d->cfg enables it (and d->jml exists).
 * Its consumer name is "<instance>@<listen address>", stable across
 * restarts on a fixed --listen, so the entries it left pending are read
 * again first. Failures are logged; the daemon runs on without it.
 */
static void
stream_setup(daemon_t *d)
{
    char name[400];
    pg_err_t err = { "" };
    pg_status_t st;

    if (d->jml == NULL || !d->cfg->jml_stream.enabled || d->stream != NULL) {
        return;
    }
    snprintf(name, sizeof(name), "%s@%s", d->cfg->instance, d->listen_addr);
    st = pg_redis_new(d->host, &d->cfg->redis, &d->stream_redis);
    if (st != PG_OK) {
        d->stream_redis = NULL;
        pg_err_set(&err, "redis client: %s", pg_status_str(st));
    } else {
        st = pg_jmlstream_new(d->cfg, d->host, d->stream_redis, d->jml,
                              d->audit, name, &d->stream, &err);
    }
    if (st == PG_OK) {
        st = pg_jmlstream_start(d->stream);
    }
    if (st != PG_OK) {
        dlog(d, PG_LOG_ERROR, json_pack("{s:s}", "error", err.msg),
             "JML event stream not started: %s", err.msg[0] != '\0'
             ? err.msg : pg_status_str(st));
        pg_jmlstream_free(d->stream);
        d->stream = NULL;
        pg_redis_free(d->stream_redis);
        d->stream_redis = NULL;
        return;
    }
    dlog(d, PG_LOG_INFO, json_pack("{s:s, s:s}", "stream",
                                   d->cfg->jml_stream.stream, "consumer",
                                   name),
         "JML event stream consumer started");
}

/* Free the consumer; call after pg_jml_free (the jml may hold a callback
 * into it). Its counters are kept in stream_base. */
static void
stream_teardown(daemon_t *d)
{
    pg_jmlstream_stats_t s;

    if (d->stream != NULL) {
        pg_jmlstream_get_stats(d->stream, &s);
        d->stream_base.applied += s.applied;
        d->stream_base.duplicate += s.duplicate;
        d->stream_base.invalid += s.invalid;
        d->stream_base.retried += s.retried;
        d->stream_base.redis_errors += s.redis_errors;
    }
    pg_jmlstream_free(d->stream);
    d->stream = NULL;
    pg_redis_free(d->stream_redis);
    d->stream_redis = NULL;
}

/* The counters so far (this consumer and the ones before a reload). */
static void
stream_stats(const daemon_t *d, pg_jmlstream_stats_t *out)
{
    pg_jmlstream_stats_t s;

    *out = d->stream_base;
    if (d->stream != NULL) {
        pg_jmlstream_get_stats(d->stream, &s);
        out->applied += s.applied;
        out->duplicate += s.duplicate;
        out->invalid += s.invalid;
        out->retried += s.retried;
        out->redis_errors += s.redis_errors;
    }
}

/*
 * SIGHUP: reopen the log file, load the configuration again. Success:
 * new Redis client + audit emitter replace the old ones (pending PING and
 * XADDs of the old client are cancelled). Failure: everything stays as it
 * was; the error is logged, audited and counted.
 */
/* recon block: defined in the reconciliation block below */
static int recon_setup(daemon_t *d);
static void recon_teardown(daemon_t *d, int all);
static void id_cancel_all(void);   /* identities block */

static void
reload(daemon_t *d)
{
    pg_config_t *ncfg = NULL;
    pg_redis_t *nredis = NULL;
    pg_audit_t *naudit = NULL;
    pg_gate_t *ngate = NULL;
    pg_jml_t *njml = NULL;
    pg_err_t err;
    pg_status_t st;

    if (open_log(d) != 0) {
        dlog(d, PG_LOG_ERROR, NULL, "cannot reopen log file %s: %s",
             d->log_file, strerror(errno));
    }
    memset(&err, 0, sizeof(err));
    st = pg_config_load(d->config_path, &ncfg, &err);
    if (st == PG_OK) {
        st = build_runtime(d, ncfg, &nredis, &naudit, &ngate, &njml, &err);
    }
    if (st != PG_OK) {
        pg_config_free(ncfg);
        d->reload_failures++;
        dlog(d, PG_LOG_ERROR,
             json_pack("{s:s,s:s}", "event", "config.reload", "error",
                       err.msg),
             "configuration reload failed, keeping the old one: %s",
             err.msg);
        audit(d, "config.reload", "failure", "invalid_config",
              json_pack("{s:s,s:s}", "config", d->config_path, "error",
                        err.msg));
        if (pg_audit_reopen(d->audit, &err) != PG_OK) {
            dlog(d, PG_LOG_ERROR, NULL, "%s", err.msg);
        }
        return;
    }
    recon_teardown(d, 0);   /* recon block: it borrows the old runtime */
    id_cancel_all();   /* identities block: they borrow it too */
    expiry_stop();   /* expiry block: before what it borrows is freed */
    pg_jml_free(d->jml);
    stream_teardown(d);  /* after the jml, which may call back into it */
    pg_gate_free(d->gate);
    pg_audit_free(d->audit);
    cancel_health(d);
    pg_redis_free(d->redis);
    pg_config_free(d->cfg);
    d->cfg = ncfg;
    d->redis = nredis;
    d->audit = naudit;
    d->gate = ngate;
    d->jml = njml;
    d->have_last = 0;   /* an import cut short by the reload runs again */
    (void) recon_setup(d);  /* recon block */
    expiry_restart(d);  /* expiry block */
    stream_setup(d);
    d->reloads++;
    dlog(d, PG_LOG_INFO, json_pack("{s:s}", "event", "config.reload"),
         "configuration reloaded from %s", d->config_path);
    audit(d, "config.reload", "success", NULL,
          json_pack("{s:s}", "config", d->config_path));
    d->host->timer_arm(d->health_timer, 0); /* probe the new Redis now */
}

/* ---- HTTP ------------------------------------------------------------- */

/* Send body with a content type and status. */
static void
reply(struct evhttp_request *req, int code, const char *reason,
      const char *ctype, const char *body, size_t len)
{
    struct evbuffer *buf = evbuffer_new();

    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      ctype);
    evhttp_add_header(evhttp_request_get_output_headers(req),
                      "Cache-Control", "no-store");
    if (buf == NULL) {
        evhttp_send_error(req, 500, "Internal Server Error");
        return;
    }
    evbuffer_add(buf, body, len);
    evhttp_send_reply(req, code, reason, buf);
    evbuffer_free(buf);
}

static void
serve_healthz(daemon_t *d, struct evhttp_request *req)
{
    json_t *o = json_pack("{s:s,s:s}", "status", d->redis_up ? "ok" : "unavailable",
                          "redis", d->redis_up ? "up" : "down");

    if (o != NULL && d->stream != NULL) {
        pg_jmlstream_stats_t s;

        stream_stats(d, &s);
        json_object_set_new(o, "event_stream", json_pack(
            "{s:s, s:I, s:I, s:I}", "state", pg_jmlstream_state(d->stream),
            "applied", (json_int_t) s.applied, "duplicate",
            (json_int_t) s.duplicate, "invalid", (json_int_t) s.invalid));
    }
    char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;

    json_decref(o);
    if (text == NULL) {
        evhttp_send_error(req, 500, "Internal Server Error");
        return;
    }
    if (d->redis_up) {
        reply(req, 200, "OK", "application/json", text, strlen(text));
    } else {
        reply(req, 503, "Service Unavailable", "application/json", text,
              strlen(text));
    }
    free(text);
}

static void
serve_metrics(daemon_t *d, struct evhttp_request *req)
{
    char body[4096];
    pg_jmlstream_stats_t js;
    int n, m;

    n = snprintf(body, sizeof(body),
        "# HELP provgated_up 1 while the daemon is running.\n"
        "# TYPE provgated_up gauge\n"
        "provgated_up 1\n"
        "# HELP provgated_redis_up 1 when the last Redis PING succeeded.\n"
        "# TYPE provgated_redis_up gauge\n"
        "provgated_redis_up %d\n"
        "# HELP provgated_config_reloads_total Successful configuration "
        "reloads (SIGHUP).\n"
        "# TYPE provgated_config_reloads_total counter\n"
        "provgated_config_reloads_total %llu\n"
        "# HELP provgated_config_reload_failures_total Configuration "
        "reloads that failed (old configuration kept).\n"
        "# TYPE provgated_config_reload_failures_total counter\n"
        "provgated_config_reload_failures_total %llu\n"
        "# HELP process_start_time_seconds Start time of the process since "
        "unix epoch in seconds.\n"
        "# TYPE process_start_time_seconds gauge\n"
        "process_start_time_seconds %.3f\n",
        d->redis_up ? 1 : 0, d->reloads, d->reload_failures, d->start_time);
    stream_stats(d, &js);
    m = n < 0 || (size_t)n >= sizeof(body) ? -1 : snprintf(body + n,
        sizeof(body) - (size_t)n,
        "# HELP provgated_jml_stream_events_total JML events from the Redis "
        "Stream by result (applied, duplicate event id, invalid: "
        "dead-lettered).\n"
        "# TYPE provgated_jml_stream_events_total counter\n"
        "provgated_jml_stream_events_total{result=\"applied\"} %llu\n"
        "provgated_jml_stream_events_total{result=\"duplicate\"} %llu\n"
        "provgated_jml_stream_events_total{result=\"invalid\"} %llu\n"
        "# HELP provgated_jml_stream_retries_total Stream events tried "
        "again (busy or not applied).\n"
        "# TYPE provgated_jml_stream_retries_total counter\n"
        "provgated_jml_stream_retries_total %llu\n"
        "# HELP provgated_jml_stream_redis_errors_total Pauses of the "
        "stream consumer after a Redis error.\n"
        "# TYPE provgated_jml_stream_redis_errors_total counter\n"
        "provgated_jml_stream_redis_errors_total %llu\n"
        "# HELP provgated_jml_stream_up 1 while the stream consumer runs.\n"
        "# TYPE provgated_jml_stream_up gauge\n"
        "provgated_jml_stream_up %d\n",
        (unsigned long long) js.applied, (unsigned long long) js.duplicate,
        (unsigned long long) js.invalid, (unsigned long long) js.retried,
        (unsigned long long) js.redis_errors, d->stream != NULL ? 1 : 0);
    if (m < 0 || (size_t)m >= sizeof(body) - (size_t)n) {
        n = -1;
    } else {
        n += m;
    }
    if (n < 0 || (size_t)n >= sizeof(body)) {
        evhttp_send_error(req, 500, "Internal Server Error");
        return;
    }
    reply(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body,
          (size_t)n);
}

/* ---- HR import (JML) --------------------------------------------------- */

/* 1 for an import failure worth retrying with the same file (Redis, I/O,
 * timeouts, memory, another sidecar holding the JML lease); 0 when the
 * file itself was refused (malformed, mass leave, too big). */
static int
import_transient(pg_status_t st)
{
    return st == PG_ERR_REDIS || st == PG_ERR_IO || st == PG_ERR_TIMEOUT
           || st == PG_ERR_NOMEM || st == PG_ERR_BUSY;
}

/*
 * hr_source.drop_dir: the next export to import, by name (so "2026-11-27
 * .csv" comes before "2026-11-28.csv"): a regular file (not a symlink)
 * named "*.csv" (any case), not starting with '.', name under 200 bytes.
 * Copies the name into out[outsz]; 0 when found, -1 when the folder has
 * none (or cannot be read). Files are never read here.
 */
static int
drop_next(const char *dir, char *out, size_t outsz)
{
    char path[PATH_MAX];
    struct dirent *de;
    struct stat sb;
    size_t n;
    DIR *dh = opendir(dir);
    int found = 0;

    if (dh == NULL) {
        return -1;
    }
    while ((de = readdir(dh)) != NULL) {
        n = strlen(de->d_name);
        if (de->d_name[0] == '.' || n < 5 || n >= 200 || n >= outsz
            || strcasecmp(de->d_name + n - 4, ".csv") != 0) {
            continue;
        }
        if (snprintf(path, sizeof(path), "%s/%s", dir, de->d_name)
                >= (int) sizeof(path)
            || lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
            continue;
        }
        if (!found || strcmp(de->d_name, out) < 0) {
            memcpy(out, de->d_name, n + 1);
            found = 1;
        }
    }
    closedir(dh);
    return found ? 0 : -1;
}

/*
 * Move the imported drop file d->drop_name to <drop_dir>/<sub>/ (made when
 * missing), under a new name when one with its name is there already.
 * With report (failed/): also write <name>.error.json there. Audits
 * jml.drop. Returns 0 when moved (or gone meanwhile: another sidecar moved
 * it), -1 otherwise (logged; the file is then imported again).
 */
static int
drop_move(daemon_t *d, const char *sub, const json_t *report, pg_status_t st)
{
    const char *dir = d->cfg->hr_drop_dir;
    char from[PATH_MAX], todir[PATH_MAX], to[PATH_MAX];
    char *text;
    int r, fd, moved = 0;

    if (snprintf(from, sizeof(from), "%s/%s", dir, d->drop_name)
            >= (int) sizeof(from)
        || snprintf(todir, sizeof(todir), "%s/%s", dir, sub)
            >= (int) sizeof(todir)) {
        return -1;
    }
    if (mkdir(todir, 0750) != 0 && errno != EEXIST) {
        dlog(d, PG_LOG_ERROR, NULL, "drop_dir: cannot create %s: %s", todir,
             strerror(errno));
        return -1;
    }
    r = snprintf(to, sizeof(to), "%s/%s", todir, d->drop_name);
    if (r > 0 && (size_t) r < sizeof(to) && access(to, F_OK) == 0) {
        r = snprintf(to, sizeof(to), "%s/%s.%lld", todir, d->drop_name,
                     (long long) time(NULL));
    }
    if (r < 0 || (size_t) r >= sizeof(to)) {
        return -1;
    }
    if (rename(from, to) == 0) {
        moved = 1;
    } else if (errno != ENOENT) {
        dlog(d, PG_LOG_ERROR, NULL, "drop_dir: cannot move %s to %s: %s",
             from, to, strerror(errno));
        return -1;
    }
    if (moved && report != NULL
        && snprintf(to, sizeof(to), "%s/%s.error.json", todir,
                    d->drop_name) < (int) sizeof(to)
        && (text = json_dumps(report, JSON_INDENT(1) | JSON_SORT_KEYS))
               != NULL) {
        fd = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
        if (fd >= 0) {
            if (write(fd, text, strlen(text)) < 0) {
                dlog(d, PG_LOG_WARN, NULL, "drop_dir: cannot write %s", to);
            }
            close(fd);
        }
        free(text);
    }
    audit(d, "jml.drop", st == PG_OK ? "success" : "failure",
          moved ? sub : "gone",
          json_pack("{s:s, s:s}", "file", d->drop_name, "status",
                    pg_status_str(st)));
    return 0;
}

static void
on_import_done(void *arg, pg_status_t st, const json_t *summary)
{
    daemon_t *d = arg;

    if (d->drop_name[0] != '\0') {
        /* a dropped export: applied -> processed/, refused -> failed/
         * with the report; a transient failure leaves it for the next
         * poll */
        if (!import_transient(st)) {
            (void) drop_move(d, st == PG_OK ? "processed" : "failed",
                             st == PG_OK ? NULL : summary, st);
        }
        d->drop_name[0] = '\0';
    }
    if (st == PG_OK) {
        d->imports++;
    } else {
        d->import_failures++;
        if (import_transient(st)) {
            /* transient: try the same file again at the next poll (a
             * refused or malformed file waits until it changes) */
            d->have_last = 0;
        }
    }
    json_decref(d->last_summary);
    d->last_summary = summary != NULL ? json_deep_copy(summary) : NULL;
    if (d->last_summary != NULL) {
        json_object_set_new(d->last_summary, "status",
                            json_string(pg_status_str(st)));
    }
    dlog(d, st == PG_OK ? PG_LOG_INFO : PG_LOG_WARN,
         summary != NULL ? json_deep_copy(summary) : NULL,
         "HR import %s", st == PG_OK ? "applied" : "not applied");
}

/* Start an import unless one runs; 0 when started. With hr_source.drop_dir:
 * of the next dropped export (-1 when there is none). */
static int
start_import(daemon_t *d, int force)
{
    char name[256], path[PATH_MAX];
    pg_status_t st;

    if (d->jml == NULL) {
        return -1;
    }
    if (d->cfg->hr_drop_dir == NULL) {
        st = pg_jml_import(d->jml, NULL, force, on_import_done, d);
        return st == PG_OK ? 0 : -1;
    }
    if (d->drop_name[0] != '\0'
        || drop_next(d->cfg->hr_drop_dir, name, sizeof(name)) != 0
        || snprintf(path, sizeof(path), "%s/%s", d->cfg->hr_drop_dir, name)
               >= (int) sizeof(path)) {
        return -1;
    }
    st = pg_jml_import(d->jml, path, force, on_import_done, d);
    if (st != PG_OK) {
        return -1;
    }
    memcpy(d->drop_name, name, strlen(name) + 1);
    return 0;
}

/* Every poll_s: import when the file changed (inode, size or mtime); with
 * poll_s 0 only look again each second in case a reload sets it. */
static void
on_poll_timer(void *arg)
{
    daemon_t *d = arg;
    struct stat sb;

    /* poll_s 0: the file is read on POST /import only */
    if (d->jml != NULL && !d->stopping && pg_jml_poll_s(d->jml) > 0
        && d->cfg->hr_drop_dir != NULL) {
        (void) start_import(d, 0);      /* the next dropped export, if any */
    } else if (d->jml != NULL && !d->stopping && pg_jml_poll_s(d->jml) > 0) {
        if (stat(pg_jml_file(d->jml), &sb) == 0
            && (!d->have_last || sb.st_ino != d->last_import.st_ino
                || sb.st_size != d->last_import.st_size
                || sb.st_mtim.tv_sec != d->last_import.st_mtim.tv_sec
                || sb.st_mtim.tv_nsec != d->last_import.st_mtim.tv_nsec)
            && start_import(d, 0) == 0) {
            d->last_import = sb;
            d->have_last = 1;
        }
    }
    if (d->jml != NULL && pg_jml_poll_s(d->jml) > 0) {
        d->host->timer_arm(d->poll_timer,
                           (uint64_t) pg_jml_poll_s(d->jml) * 1000);
    } else {
        d->host->timer_arm(d->poll_timer, 1000);
    }
}

/* 1 when the request carries "Authorization: Bearer <admin token>". */
static int
authorized(daemon_t *d, struct evhttp_request *req)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req),
                                       "Authorization");
    size_t n;

    if (d->admin_token == NULL || h == NULL || strncmp(h, "Bearer ", 7) != 0) {
        return 0;
    }
    n = strlen(d->admin_token);
    return pg_ct_equal(h + 7, strlen(h + 7), d->admin_token, n);
}

/*
 * The checks an HR admin request starts with: the admin token (else 401,
 * audited as admin.request denied for path) and an hr_source (else 404
 * no_hr_source). 1 when both hold; otherwise the request is answered and
 * 0 returned.
 */
static int
admin_jml(daemon_t *d, struct evhttp_request *req, const char *path)
{
    if (!authorized(d, req)) {
        audit(d, "admin.request", "denied", "unauthorized",
              json_pack("{s:s}", "path", path));
        reply(req, 401, "Unauthorized", "application/json",
              "{\"error\":\"unauthorized\"}", 24);
        return 0;
    }
    if (d->jml == NULL) {
        reply(req, 404, "Not Found", "application/json",
              "{\"error\":\"no_hr_source\"}", 24);
        return 0;
    }
    return 1;
}

static void
serve_import(daemon_t *d, struct evhttp_request *req)
{
    const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    char *text;

    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET) {
        text = d->last_summary != NULL
                   ? json_dumps(d->last_summary, JSON_COMPACT) : strdup("{}");
        if (text == NULL) {
            evhttp_send_error(req, 500, "Internal Server Error");
            return;
        }
        reply(req, 200, "OK", "application/json", text, strlen(text));
        free(text);
        return;
    }
    if (!admin_jml(d, req, "/import")) {
        return;
    }
    if (d->cfg->hr_drop_dir != NULL && d->drop_name[0] == '\0') {
        char name[256];

        if (drop_next(d->cfg->hr_drop_dir, name, sizeof(name)) != 0) {
            reply(req, 404, "Not Found", "application/json",
                  "{\"error\":\"no_export\"}", 21);
            return;
        }
    }
    if (start_import(d, q != NULL && strstr(q, "force=1") != NULL) != 0) {
        reply(req, 409, "Conflict", "application/json",
              "{\"error\":\"import_running\"}", 26);
        return;
    }
    audit(d, "admin.request", "success", "import",
          json_pack("{s:b}", "force", q != NULL && strstr(q, "force=1")));
    reply(req, 202, "Accepted", "application/json", "{\"started\":true}", 16);
}

/* ==== BEGIN reconciliation (GitHub issue 6, "Reconciliation") ==========
 * POST /reconcile?target=NAME[&mode=incremental] (admin token) starts a
 * run; GET /reconcile shows the last report of every target (GET
 * /reconcile?target=NAME: that target's). Scheduled runs per target
 * ("reconcile": {"schedule_s": N}, incremental when the connector can).
 * Reports are also written under --recon-dir. State is file-static so this
 * block stays separate from the rest of the daemon. docs/reconciliation.md
 */
static struct {
    pg_recon_t *rc;              /* NULL: reconciliation unavailable */
    const char *dir;             /* --recon-dir (argv, borrowed) or NULL */
    json_t *last;                /* target -> last report */
    pg_timer_t *tick;            /* 1 s schedule check */
    json_t *due;                 /* target -> next due (monotonic ms) */
    char running[256];           /* target of the run in flight, or "" */
    unsigned long long runs, failures;
} recon_st;

static void
recon_done(void *arg, pg_status_t st, const json_t *report)
{
    daemon_t *d = arg;
    json_t *copy = report != NULL ? json_deep_copy(report) : json_object();

    if (st == PG_OK) {
        recon_st.runs++;
    } else {
        recon_st.failures++;
    }
    if (copy != NULL) {
        json_object_set_new(copy, "status", json_string(pg_status_str(st)));
        json_object_set_new(recon_st.last, recon_st.running, copy);
    }
    dlog(d, st == PG_OK ? PG_LOG_INFO : PG_LOG_WARN,
         report != NULL ? json_pack("{s:O?, s:O?}", "counts",
                                    json_object_get(report, "counts"),
                                    "actions",
                                    json_object_get(report, "actions"))
                        : NULL,
         "reconciliation of %s %s", recon_st.running,
         st == PG_OK ? "done" : "failed");
    recon_st.running[0] = '\0';
}

/* Start a run; PG_OK or the reason it did not start. */
static pg_status_t
recon_start_run(daemon_t *d, const char *target, int incremental)
{
    pg_status_t st;

    if (recon_st.rc == NULL) {
        return PG_ERR_NOT_FOUND;
    }
    if (strlen(target) >= sizeof(recon_st.running)) {
        return PG_ERR_NOT_FOUND;
    }
    st = pg_recon_run(recon_st.rc, target, incremental, recon_done, d);
    if (st == PG_OK) {
        snprintf(recon_st.running, sizeof(recon_st.running), "%s", target);
    }
    return st;
}

/* Every second: start the first scheduled target that is due. */
static void
recon_tick(void *arg)
{
    daemon_t *d = arg;
    uint64_t now = d->host->now_ms(d->host->ctx);
    size_t i;

    for (i = 0; recon_st.rc != NULL && !d->stopping && d->cfg != NULL
                && recon_st.running[0] == '\0' && i < d->cfg->ntargets; i++) {
        const char *name = d->cfg->targets[i].name;
        const pg_recon_cfg_t *rc = pg_recon_target_cfg(recon_st.rc, name);
        json_t *due;

        if (rc == NULL || rc->schedule_s == 0) {
            continue;
        }
        due = json_object_get(recon_st.due, name);
        if (due == NULL) {
            /* first run one period after start */
            json_object_set_new(recon_st.due, name, json_integer(
                (json_int_t) (now + (uint64_t) rc->schedule_s * 1000)));
            continue;
        }
        if ((uint64_t) json_integer_value(due) > now) {
            continue;
        }
        json_object_set_new(recon_st.due, name, json_integer(
            (json_int_t) (now + (uint64_t) rc->schedule_s * 1000)));
        if (recon_start_run(d, name, 1) != PG_OK) {
            dlog(d, PG_LOG_WARN, NULL, "scheduled reconciliation of %s did "
                 "not start", name);
        }
    }
    d->host->timer_arm(recon_st.tick, 1000);
}

/* (Re)build the reconciler on the current runtime. 0 on success. */
static int
recon_setup(daemon_t *d)
{
    pg_err_t err = { "" };
    pg_status_t st;

    pg_recon_free(recon_st.rc);
    recon_st.rc = NULL;
    recon_st.running[0] = '\0';
    if (recon_st.last == NULL) {
        recon_st.last = json_object();
    }
    json_decref(recon_st.due);
    recon_st.due = json_object();
    if (recon_st.last == NULL || recon_st.due == NULL) {
        return -1;
    }
    st = pg_recon_new(d->cfg, d->host, d->redis, d->audit, recon_st.dir,
                      &recon_st.rc, &err);
    if (st != PG_OK) {
        dlog(d, PG_LOG_ERROR, json_pack("{s:s}", "error", err.msg),
             "reconciliation unavailable: %s", err.msg);
        recon_st.rc = NULL;
        return -1;
    }
    if (recon_st.tick == NULL) {
        recon_st.tick = d->host->timer_open(d->host->ctx, recon_tick, d);
        if (recon_st.tick == NULL) {
            return -1;
        }
        d->host->timer_arm(recon_st.tick, 1000);
    }
    return 0;
}

/* Before the runtime it borrows (cfg, redis, audit) goes away. */
static void
recon_teardown(daemon_t *d, int all)
{
    pg_recon_free(recon_st.rc);
    recon_st.rc = NULL;
    recon_st.running[0] = '\0';
    if (all) {
        if (recon_st.tick != NULL) {
            d->host->timer_close(recon_st.tick);
            recon_st.tick = NULL;
        }
        json_decref(recon_st.last);
        recon_st.last = NULL;
        json_decref(recon_st.due);
        recon_st.due = NULL;
    }
}

/* The value of query parameter name (at most outsz-1 bytes), or 0. */
static int
recon_query(const char *q, const char *name, char *out, size_t outsz)
{
    struct evkeyvalq kv;
    const char *v;
    int ok = 0;

    if (q == NULL || evhttp_parse_query_str(q, &kv) != 0) {
        return 0;
    }
    v = evhttp_find_header(&kv, name);
    if (v != NULL && strlen(v) < outsz) {
        snprintf(out, outsz, "%s", v);
        ok = 1;
    }
    evhttp_clear_headers(&kv);
    return ok;
}

static void
serve_reconcile(daemon_t *d, struct evhttp_request *req)
{
    const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    char target[256] = "", mode[32] = "";
    json_t *body;
    char *text;
    pg_status_t st;

    recon_query(q, "target", target, sizeof(target));
    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET) {
        if (target[0] != '\0') {
            body = json_incref(json_object_get(recon_st.last, target));
            if (body == NULL) {
                reply(req, 404, "Not Found", "application/json",
                      "{\"error\":\"no_report\"}", 21);
                return;
            }
        } else {
            body = json_pack("{s:s?, s:O, s:I, s:I}", "running",
                             recon_st.running[0] ? recon_st.running : NULL,
                             "reports", recon_st.last != NULL
                                            ? recon_st.last : json_null(),
                             "runs", (json_int_t) recon_st.runs,
                             "failures", (json_int_t) recon_st.failures);
        }
        text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
        if (text == NULL) {
            evhttp_send_error(req, 500, "Internal Server Error");
            return;
        }
        reply(req, 200, "OK", "application/json", text, strlen(text));
        free(text);
        return;
    }
    if (!authorized(d, req)) {
        audit(d, "admin.request", "denied", "unauthorized",
              json_pack("{s:s}", "path", "/reconcile"));
        reply(req, 401, "Unauthorized", "application/json",
              "{\"error\":\"unauthorized\"}", 24);
        return;
    }
    recon_query(q, "mode", mode, sizeof(mode));
    st = target[0] != '\0'
             ? recon_start_run(d, target, strcmp(mode, "incremental") == 0)
             : PG_ERR_NOT_FOUND;
    if (st == PG_ERR_BUSY) {
        reply(req, 409, "Conflict", "application/json",
              "{\"error\":\"reconciliation_running\"}", 34);
        return;
    }
    if (st != PG_OK) {
        reply(req, 404, "Not Found", "application/json",
              "{\"error\":\"no_such_connector_target\"}", 36);
        return;
    }
    audit(d, "admin.request", "success", "reconcile",
          json_pack("{s:s, s:s}", "target", target, "mode",
                    strcmp(mode, "incremental") == 0 ? "incremental"
                                                     : "full"));
    reply(req, 202, "Accepted", "application/json", "{\"started\":true}", 16);
}
/* ==== END reconciliation ================================================ */

/* ==== BEGIN identities (issue 6, "identity show") ======================
 * GET /identities/<iid>, GET /identities?hr_key=K | email=E | sub=S[&iss=I]
 * and otherwise a listing, GET /identities[?left=1][&limit=N][&cursor=C]
 * (one SCAN page), all with the
 * admin token (identities are personal data), answered from
 * src/sidecar/idview.c: 200 JSON, 404 not_found, 409 ambiguous (with the
 * candidates), 400 bad_request, 401, 503 identity_store_unavailable.
 * Every answered read is audited (admin.read, never the lookup value,
 * only the identity ids). A lookup in flight is cancelled when its client
 * goes away and answered 503 on a reload or at the stop (id_cancel_all),
 * since it borrows the configuration and the Redis client.
 */
typedef struct id_lookup {
    daemon_t *d;
    struct evhttp_request *req;
    struct evhttp_connection *con;
    pg_idview_req_t *q;
    char what[16];               /* "id", "hr_key", "email", "sub", "list" */
    struct id_lookup *next;
} id_lookup_t;

static id_lookup_t *id_pending;   /* lookups in flight (owned) */

/* Take l off id_pending and off its connection's close callback. */
static void
id_unlink(id_lookup_t *l)
{
    id_lookup_t **pp;

    for (pp = &id_pending; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    }
    if (l->con != NULL) {
        evhttp_connection_set_closecb(l->con, NULL, NULL);
    }
}

/* The client went away: nobody to answer; stop the lookup. */
static void
id_on_close(struct evhttp_connection *con, void *arg)
{
    id_lookup_t *l = arg;

    (void) con;
    l->con = NULL;
    id_unlink(l);
    pg_idview_cancel(l->q);
    free(l);
}

/* Reply with body (stolen) as compact JSON; 500 when it is NULL. */
static void
id_reply_json(struct evhttp_request *req, int code, const char *reason,
              json_t *body)
{
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;

    json_decref(body);
    if (text == NULL) {
        evhttp_send_error(req, 500, "Internal Server Error");
        return;
    }
    reply(req, code, reason, "application/json", text, strlen(text));
    free(text);
}

/* The lookup finished (pg_idview_cb): audit, answer, free l. */
static void
id_done(void *arg, pg_status_t st, const json_t *result)
{
    id_lookup_t *l = arg;
    daemon_t *d = l->d;
    json_t *ids;
    size_t i;
    const json_t *v;

    id_unlink(l);
    if (st == PG_OK) {
        ids = json_array();
        if (strcmp(l->what, "list") == 0) {
            json_array_foreach(json_object_get(result, "identities"), i, v) {
                json_array_append(ids, json_object_get(v, "id"));
            }
        } else {
            json_array_append(ids, json_object_get(result, "id"));
        }
        audit(d, "admin.read", "success", "identity",
              json_pack("{s:s, s:o}", "lookup", l->what, "identities",
                        ids != NULL ? ids : json_array()));
        id_reply_json(l->req, 200, "OK", json_incref((json_t *) result));
    } else if (st == PG_ERR_NOT_FOUND) {
        audit(d, "admin.read", "success", "not_found",
              json_pack("{s:s}", "lookup", l->what));
        id_reply_json(l->req, 404, "Not Found",
                      json_pack("{s:s}", "error", "not_found"));
    } else if (st == PG_ERR_CONFLICT) {
        audit(d, "admin.read", "success", "ambiguous",
              json_pack("{s:s, s:O}", "lookup", l->what, "candidates",
                        json_object_get(result, "candidates")));
        id_reply_json(l->req, 409, "Conflict",
                      json_pack("{s:s, s:O}", "error", "ambiguous",
                                "candidates",
                                json_object_get(result, "candidates")));
    } else {
        audit(d, "admin.read", "failure", "identity_store_unavailable",
              json_pack("{s:s, s:s}", "lookup", l->what, "error",
                        pg_status_str(st)));
        id_reply_json(l->req, 503, "Service Unavailable",
                      json_pack("{s:s}", "error",
                                "identity_store_unavailable"));
    }
    free(l);
}

/* Answer every lookup in flight with 503 and drop it (reload, stop). */
static void
id_cancel_all(void)
{
    while (id_pending != NULL) {
        id_lookup_t *l = id_pending;

        id_unlink(l);
        pg_idview_cancel(l->q);
        id_reply_json(l->req, 503, "Service Unavailable",
                      json_pack("{s:s}", "error",
                                "identity_store_unavailable"));
        free(l);
    }
}

/* Query parameter name into out: 1 found, 0 absent, -1 over outsz-1
 * bytes (or an unparsable query). */
static int
id_query(const char *q, const char *name, char *out, size_t outsz)
{
    struct evkeyvalq kv;
    const char *v;
    int r = 0;

    if (q == NULL) {
        return 0;
    }
    if (evhttp_parse_query_str(q, &kv) != 0) {
        return -1;
    }
    v = evhttp_find_header(&kv, name);
    if (v != NULL) {
        r = strlen(v) < outsz ? 1 : -1;
        if (r == 1) {
            snprintf(out, outsz, "%s", v);
        }
    }
    evhttp_clear_headers(&kv);
    return r;
}

/* GET /identities[/<iid>] (see the block comment): validate, authorize,
 * start the lookup; the answer is sent by id_done. */
static void
serve_identities(daemon_t *d, struct evhttp_request *req, const char *path)
{
    const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    char v[PG_IDVIEW_VALUE_MAX + 1] = "", iss[PG_IDVIEW_VALUE_MAX + 1] = "";
    char num[32] = "", cursor[32] = "0";
    const char *what = NULL;
    pg_idview_by_t by = PG_IDVIEW_BY_ID;
    pg_err_t err = { "" };
    id_lookup_t *l;
    pg_status_t st;
    unsigned limit = 100;

    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        reply(req, 405, "Method Not Allowed", "application/json",
              "{\"error\":\"get_only\"}", 20);
        return;
    }
    if (!authorized(d, req)) {
        audit(d, "admin.request", "denied", "unauthorized",
              json_pack("{s:s}", "path", "/identities"));
        reply(req, 401, "Unauthorized", "application/json",
              "{\"error\":\"unauthorized\"}", 24);
        return;
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL) {
        evhttp_send_error(req, 500, "Internal Server Error");
        return;
    }
    l->d = d;
    l->req = req;
    if (path[11] == '/') {
        what = "id";
        snprintf(v, sizeof(v), "%.*s", PG_IDVIEW_IID_MAX + 1, path + 12);
    } else if (id_query(q, "hr_key", v, sizeof(v)) != 0) {
        what = "hr_key";
        by = PG_IDVIEW_BY_HR_KEY;
    } else if (id_query(q, "email", v, sizeof(v)) != 0) {
        what = "email";
        by = PG_IDVIEW_BY_EMAIL;
    } else if (id_query(q, "sub", v, sizeof(v)) != 0) {
        what = "sub";
        by = PG_IDVIEW_BY_SUB;
        if (id_query(q, "iss", iss, sizeof(iss)) < 0) {
            v[0] = '\0';   /* refused below */
        }
    } else {
        what = "list";
    }
    snprintf(l->what, sizeof(l->what), "%s", what);
    if (strcmp(what, "list") == 0) {
        char *end = NULL;
        long n = 100;

        num[0] = '\0';
        if (recon_query(q, "limit", num, sizeof(num))) {
            errno = 0;
            n = strtol(num, &end, 10);
            if (errno != 0 || end == num || *end != '\0') {
                n = -1;
            }
        }
        (void) recon_query(q, "cursor", cursor, sizeof(cursor));
        limit = n >= 1 && n <= PG_IDVIEW_LIST_MAX ? (unsigned) n : 0;
        num[0] = '\0';
        st = pg_idview_list(d->redis, d->cfg, cursor, limit,
                            recon_query(q, "left", num, sizeof(num))
                                && strcmp(num, "1") == 0,
                            id_done, l, &l->q, &err);
    } else {
        st = pg_idview_get(d->redis, d->cfg, by, v,
                           iss[0] != '\0' ? iss : NULL, id_done, l, &l->q,
                           &err);
    }
    if (st == PG_ERR_INVALID) {
        free(l);
        id_reply_json(req, 400, "Bad Request",
                      json_pack("{s:s, s:s}", "error", "bad_request",
                                "detail", err.msg));
        return;
    }
    if (st != PG_OK) {
        free(l);
        id_reply_json(req, 503, "Service Unavailable",
                      json_pack("{s:s}", "error",
                                "identity_store_unavailable"));
        return;
    }
    l->con = evhttp_request_get_connection(req);
    if (l->con != NULL) {
        evhttp_connection_set_closecb(l->con, id_on_close, l);
    }
    l->next = id_pending;
    id_pending = l;
}
/* ==== END identities ==================================================== */

/* ---- JML events (webhook) ------------------------------------------------ */

static void
on_event_done(void *arg, pg_status_t st, const json_t *summary)
{
    daemon_t *d = arg;

    dlog(d, st == PG_OK ? PG_LOG_INFO : PG_LOG_WARN,
         summary != NULL ? json_deep_copy(summary) : NULL,
         "JML event %s", st == PG_OK ? "applied" : "not applied");
}

/*
 * POST /events: one JML event as JSON (see pg_jml_event). 202 when it is
 * being applied (or was applied before: idempotent by id), 400 with the
 * field when malformed, 503 + Retry-After while an import or another event
 * runs (the sender retries), 401 without the admin token.
 */
static void
serve_event(daemon_t *d, struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    char body[HTTP_MAX_BODY + 1], msg[PG_ERR_MSG_MAX + 64];
    json_error_t jerr;
    json_t *ev;
    pg_err_t err = { "" };
    pg_status_t st;
    int n;

    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        reply(req, 405, "Method Not Allowed", "application/json",
              "{\"error\":\"post_only\"}", 21);
        return;
    }
    if (!admin_jml(d, req, "/events")) {
        return;
    }
    if (len > HTTP_MAX_BODY || evbuffer_copyout(in, body, len) != (ssize_t) len) {
        reply(req, 413, "Payload Too Large", "application/json",
              "{\"error\":\"too_large\"}", 21);
        return;
    }
    body[len] = '\0';
    ev = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    st = ev != NULL ? pg_jml_event(d->jml, ev, on_event_done, d, &err)
                    : PG_ERR_INVALID;
    if (ev == NULL) {
        pg_err_set(&err, "not JSON: %s", jerr.text);
    }
    json_decref(ev);
    if (st == PG_ERR_BUSY) {
        evhttp_add_header(evhttp_request_get_output_headers(req),
                          "Retry-After", "1");
        reply(req, 503, "Service Unavailable", "application/json",
              "{\"error\":\"busy\"}", 16);
        return;
    }
    if (st != PG_OK) {
        json_t *o = json_pack("{s:s, s:s}", "error", "invalid_event",
                              "detail", err.msg);
        char *t = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;

        json_decref(o);
        audit(d, "jml.event", "denied", "invalid_event",
              json_pack("{s:s}", "detail", err.msg));
        n = snprintf(msg, sizeof(msg), "%s", t != NULL ? t : "{}");
        free(t);
        reply(req, 400, "Bad Request", "application/json", msg,
              n > 0 ? (size_t) n : 0);
        return;
    }
    reply(req, 202, "Accepted", "application/json", "{\"accepted\":true}",
          17);
}

/* ==== BEGIN correlation cases (issue 6: "a correlation case for an admin")
 * GET /cases: the open cases (admin token: personal data), served from a
 * copy refreshed every 2 s (and after every decision), with "as_of".
 * POST /cases/<id>?action=link&identity=<iid> | action=new |
 * action=dismiss: the decision, applied as a job (pg_jml_case): 202, 404
 * unknown case, 400 (bad action, identity not a candidate), 503 +
 * Retry-After while an import or event runs. docs/sidecar.md
 */
static struct {
    json_t *list;                /* the last listing (array) or NULL */
    long long as_of;             /* its time (unix s) */
    pg_timer_t *tick;
} cs;

static void
cases_listed(void *arg, pg_status_t st, const json_t *cases)
{
    (void) arg;
    if (st == PG_OK && cases != NULL) {
        json_decref(cs.list);
        cs.list = json_deep_copy(cases);
        cs.as_of = (long long) time(NULL);
    }
}

static void
cases_tick(void *arg)
{
    daemon_t *d = arg;

    if (d->jml != NULL && !d->stopping
        && pg_jml_cases(d->jml, cases_listed, d) != PG_OK) {
        /* one is running, or Redis is down: the next tick tries again */
    }
    d->host->timer_arm(cs.tick, 2000);
}

static void
on_case_done(void *arg, pg_status_t st, const json_t *summary)
{
    daemon_t *d = arg;

    dlog(d, st == PG_OK ? PG_LOG_INFO : PG_LOG_WARN,
         summary != NULL ? json_deep_copy(summary) : NULL,
         "correlation case %s", st == PG_OK ? "resolved" : "not resolved");
    if (cs.tick != NULL) {
        d->host->timer_arm(cs.tick, 0);
    }
}

/* The case id in the listing, or NULL. */
static const json_t *
cases_find(const char *id)
{
    const json_t *c;
    size_t i;

    json_array_foreach(cs.list, i, c) {
        const char *cid = json_string_value(json_object_get(c, "id"));

        if (cid != NULL && strcmp(cid, id) == 0) {
            return c;
        }
    }
    return NULL;
}

static void
serve_cases(daemon_t *d, struct evhttp_request *req, const char *path)
{
    const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    char action[16] = "", identity[136] = "";
    const json_t *c, *v;
    pg_err_t err = { "" };
    size_t i;
    int ok = 0;
    pg_status_t st;

    if (!admin_jml(d, req, "/cases")) {
        return;
    }
    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET
        && strcmp(path, "/cases") == 0) {
        id_reply_json(req, 200, "OK",
                      json_pack("{s:o, s:I}", "cases",
                                cs.list != NULL ? json_deep_copy(cs.list)
                                                : json_array(),
                                "as_of", (json_int_t) cs.as_of));
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST
        || strncmp(path, "/cases/", 7) != 0) {
        reply(req, 405, "Method Not Allowed", "application/json",
              "{\"error\":\"get_or_post\"}", 23);
        return;
    }
    (void) recon_query(q, "action", action, sizeof(action));
    (void) recon_query(q, "identity", identity, sizeof(identity));
    c = cases_find(path + 7);
    if (c == NULL) {
        reply(req, 404, "Not Found", "application/json",
              "{\"error\":\"no_such_case\"}", 24);
        return;
    }
    json_array_foreach(json_object_get(c, "candidates"), i, v) {
        ok |= json_is_string(v) && strcmp(json_string_value(v), identity) == 0;
    }
    if (strcmp(action, "link") == 0 && !ok) {
        reply(req, 400, "Bad Request", "application/json",
              "{\"error\":\"not_a_candidate\"}", 27);
        return;
    }
    st = pg_jml_case(d->jml, path + 7, action, identity[0] ? identity : NULL,
                     on_case_done, d, &err);
    if (st == PG_ERR_BUSY) {
        evhttp_add_header(evhttp_request_get_output_headers(req),
                          "Retry-After", "1");
        reply(req, 503, "Service Unavailable", "application/json",
              "{\"error\":\"busy\"}", 16);
        return;
    }
    if (st != PG_OK) {
        id_reply_json(req, 400, "Bad Request",
                      json_pack("{s:s, s:s}", "error", "bad_request",
                                "detail", err.msg));
        return;
    }
    audit(d, "admin.request", "success", "case",
          json_pack("{s:s, s:s}", "case", path + 7, "action", action));
    reply(req, 202, "Accepted", "application/json", "{\"accepted\":true}",
          17);
}
/* ==== END correlation cases ============================================ */

/* Every request: GET/HEAD (others are refused by evhttp) to two paths. */
static void
on_request(struct evhttp_request *req, void *arg)
{
    daemon_t *d = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;

    if (path == NULL) {
        evhttp_send_error(req, 400, "Bad Request");
    } else if (strcmp(path, "/healthz") == 0) {
        serve_healthz(d, req);
    } else if (strcmp(path, "/metrics") == 0) {
        serve_metrics(d, req);
    } else if (strcmp(path, "/import") == 0) {
        serve_import(d, req);
    } else if (strcmp(path, "/events") == 0) {
        serve_event(d, req);
    } else if (strcmp(path, "/reconcile") == 0) {   /* recon block */
        serve_reconcile(d, req);
    } else if (strncmp(path, "/identities", 11) == 0
               && (path[11] == '\0' || path[11] == '/')) {
        serve_identities(d, req, path);   /* identities block */
    } else if (strncmp(path, "/cases", 6) == 0
               && (path[6] == '\0' || path[6] == '/')) {
        serve_cases(d, req, path);        /* correlation cases block */
    } else {
        reply(req, 404, "Not Found", "text/plain; charset=utf-8",
              "not found\n", 10);
    }
}

/*
 * Parse "HOST:PORT" (the last ':' splits; IPv6 as "[::1]:PORT") into host
 * (NUL-terminated, at most hostsz-1 bytes) and port 0..65535. 0 on success.
 */
static int
parse_listen(const char *s, char *host, size_t hostsz, unsigned *port)
{
    const char *colon = strrchr(s, ':');
    const char *h = s;
    size_t hlen;
    char *end;
    long p;

    if (colon == NULL || colon[1] == '\0' || strlen(s) >= MAX_LISTEN_ARG) {
        return -1;
    }
    hlen = (size_t)(colon - s);
    if (hlen >= 2 && s[0] == '[' && s[hlen - 1] == ']') {
        h = s + 1;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= hostsz) {
        return -1;
    }
    errno = 0;
    p = strtol(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || p < 0 || p > 65535) {
        return -1;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (unsigned)p;
    return 0;
}

/* Bind the HTTP listener; d->listen_addr gets the bound "host:port". */
static int
start_http(daemon_t *d, const char *listen_arg)
{
    struct evhttp_bound_socket *bs;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[256], ip[INET6_ADDRSTRLEN];
    unsigned port;
    int bound = -1;

    if (parse_listen(listen_arg, host, sizeof(host), &port) != 0) {
        dlog(d, PG_LOG_ERROR, NULL, "--listen: expected HOST:PORT, got \"%s\"",
             listen_arg);
        return -1;
    }
    d->http = evhttp_new(d->base);
    if (d->http == NULL) {
        dlog(d, PG_LOG_ERROR, NULL, "evhttp_new failed");
        return -1;
    }
    evhttp_set_allowed_methods(d->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD
                                        | EVHTTP_REQ_POST);
    evhttp_set_max_headers_size(d->http, HTTP_MAX_HEADERS);
    evhttp_set_max_body_size(d->http, HTTP_MAX_BODY);
    evhttp_set_timeout(d->http, HTTP_TIMEOUT_S);
    evhttp_set_gencb(d->http, on_request, d);
    bs = evhttp_bind_socket_with_handle(d->http, host, (ev_uint16_t)port);
    if (bs == NULL) {
        dlog(d, PG_LOG_ERROR, NULL, "cannot listen on %s: %s", listen_arg,
             strerror(errno));
        return -1;
    }
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss,
                    &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
            bound = ntohs(in->sin_port);
            snprintf(d->listen_addr, sizeof(d->listen_addr), "%s:%d", ip,
                     bound);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
            bound = ntohs(in6->sin6_port);
            snprintf(d->listen_addr, sizeof(d->listen_addr), "[%s]:%d", ip,
                     bound);
        }
    }
    if (bound < 0) {
        snprintf(d->listen_addr, sizeof(d->listen_addr), "%s", listen_arg);
    }
    return 0;
}

/* ---- signals ---------------------------------------------------------- */

static void
on_sighup(evutil_socket_t sig, short what, void *arg)
{
    daemon_t *d = arg;

    (void)sig;
    (void)what;
    if (d->stopping) {
        return;
    }
    dlog(d, PG_LOG_INFO, NULL, "SIGHUP: reloading %s", d->config_path);
    reload(d);
}

/* SIGTERM/SIGINT: close the listener, audit, leave the loop shortly. */
static void
on_sigstop(evutil_socket_t sig, short what, void *arg)
{
    daemon_t *d = arg;
    struct timeval grace = {0, STOP_GRACE_MS * 1000};

    (void)what;
    if (d->stopping) {
        return;
    }
    d->stopping = 1;
    if (d->http != NULL) {
        evhttp_free(d->http);
        d->http = NULL;
    }
    pg_jmlstream_stop(d->stream);   /* fetch nothing more */
    dlog(d, PG_LOG_INFO, json_pack("{s:s}", "signal", strsignal((int)sig)),
         "stopping");
    audit(d, "daemon.stop", "info", NULL,
          json_pack("{s:s}", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM"));
    event_base_loopexit(d->base, &grace);
}

/* ---- main ------------------------------------------------------------- */

static void
usage(FILE *f)
{
    fprintf(f,
            "usage: provgated --config FILE [--listen HOST:PORT] "
            "[--log-file FILE]\n"
            "                 [--log-level error|warn|info|debug] "
            "[--health-interval-ms N]\n"
            "                 [--admin-token-file FILE] [--recon-dir DIR]\n");
}

/* Free everything that exists (safe on a partly started daemon). */
static void
shutdown_all(daemon_t *d)
{
    if (d->poll_timer != NULL) {
        d->host->timer_close(d->poll_timer);
        d->poll_timer = NULL;
    }
    if (cs.tick != NULL) {     /* correlation cases block */
        d->host->timer_close(cs.tick);
        cs.tick = NULL;
    }
    json_decref(cs.list);
    cs.list = NULL;
    if (d->host != NULL) {
        recon_teardown(d, 1);   /* recon block */
    }
    id_cancel_all();   /* identities block */
    expiry_stop();   /* expiry block */
    pg_jml_free(d->jml);
    d->jml = NULL;
    stream_teardown(d);   /* after the jml, which may call back into it */
    pg_gate_free(d->gate);
    d->gate = NULL;
    json_decref(d->last_summary);
    d->last_summary = NULL;
    free(d->admin_token);
    d->admin_token = NULL;
    if (d->http != NULL) {
        evhttp_free(d->http);
        d->http = NULL;
    }
    if (d->sig_hup != NULL) {
        event_free(d->sig_hup);
    }
    if (d->sig_term != NULL) {
        event_free(d->sig_term);
    }
    if (d->sig_int != NULL) {
        event_free(d->sig_int);
    }
    pg_audit_free(d->audit);
    d->audit = NULL;
    cancel_health(d);
    pg_redis_free(d->redis);
    d->redis = NULL;
    if (d->health_timer != NULL) {
        d->host->timer_close(d->health_timer);
    }
    pg_evhost_free(d->eh); /* frees the base it created */
    pg_config_free(d->cfg);
    if (d->log_fd > STDERR_FILENO) {
        close(d->log_fd);
    }
}

/* Parse --log-level. 0 on success. */
static int
parse_level(const char *s, pg_log_level_t *out)
{
    unsigned i;

    for (i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (pg_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"listen", required_argument, NULL, 'l'},
        {"log-file", required_argument, NULL, 'f'},
        {"log-level", required_argument, NULL, 'v'},
        {"health-interval-ms", required_argument, NULL, 'i'},
        {"admin-token-file", required_argument, NULL, 't'},
        {"recon-dir", required_argument, NULL, 'R'},   /* recon block */
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}
    };
    daemon_t d;
    const char *listen_arg = DEFAULT_LISTEN;
    struct timespec now;
    pg_err_t err = { "" };
    pg_status_t st;
    char *end;
    long v;
    int c, rc = 1;

    memset(&d, 0, sizeof(d));
    d.log_fd = STDERR_FILENO;
    d.log_level = PG_LOG_INFO;
    d.health_interval_ms = 1000;
    while ((c = getopt_long(argc, argv, "c:l:f:v:i:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            d.config_path = optarg;
            break;
        case 'l':
            listen_arg = optarg;
            break;
        case 'f':
            d.log_file = optarg;
            break;
        case 'v':
            if (parse_level(optarg, &d.log_level) != 0) {
                fprintf(stderr, "provgated: bad --log-level \"%s\"\n",
                        optarg);
                usage(stderr);
                return 2;
            }
            break;
        case 'i':
            errno = 0;
            v = strtol(optarg, &end, 10);
            if (errno != 0 || *end != '\0' || v < 10 || v > 600000) {
                fprintf(stderr, "provgated: --health-interval-ms must be "
                        "10..600000\n");
                return 2;
            }
            d.health_interval_ms = (unsigned)v;
            break;
        case 't': {
            size_t tl = 0;

            if (pg_read_file(optarg, 4096, 1, &d.admin_token, &tl, &err)
                != PG_OK || tl < 16) {
                fprintf(stderr, "provgated: --admin-token-file: %s\n",
                        tl < 16 && err.msg[0] == '\0'
                            ? "the token must have at least 16 characters"
                            : err.msg);
                free(d.admin_token);
                return 2;
            }
            break;
        }
        case 'R':               /* recon block */
            recon_st.dir = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (d.config_path == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }
    {
        char lhost[256];
        unsigned lport;

        if (parse_listen(listen_arg, lhost, sizeof(lhost), &lport) != 0) {
            fprintf(stderr, "provgated: --listen: expected HOST:PORT, got "
                    "\"%s\"\n", listen_arg);
            return 2;
        }
    }
    if (open_log(&d) != 0) {
        fprintf(stderr, "provgated: cannot open log file %s: %s\n",
                d.log_file, strerror(errno));
        return 1;
    }
    clock_gettime(CLOCK_REALTIME, &now);
    d.start_time = (double)now.tv_sec + (double)now.tv_nsec / 1e9;

    memset(&err, 0, sizeof(err));
    st = pg_config_load(d.config_path, &d.cfg, &err);
    if (st != PG_OK) {
        dlog(&d, PG_LOG_ERROR, json_pack("{s:s}", "error", err.msg),
             "cannot load configuration: %s", err.msg);
        goto out;
    }
    if (pg_evhost_new(NULL, &d.eh) != PG_OK) {
        dlog(&d, PG_LOG_ERROR, NULL, "cannot create the event loop");
        goto out;
    }
    d.host = pg_evhost_host(d.eh);
    d.base = pg_evhost_base(d.eh);
    pg_evhost_set_logger(d.eh, core_log, &d);
    pg_evhost_set_log_level(d.eh, d.log_level);
    st = build_runtime(&d, d.cfg, &d.redis, &d.audit, &d.gate, &d.jml, &err);
    if (st != PG_OK) {
        dlog(&d, PG_LOG_ERROR, json_pack("{s:s}", "error", err.msg),
             "cannot start: %s", err.msg);
        goto out;
    }
    d.health_timer = d.host->timer_open(d.host->ctx, on_health_timer, &d);
    d.poll_timer = d.host->timer_open(d.host->ctx, on_poll_timer, &d);
    cs.tick = d.host->timer_open(d.host->ctx, cases_tick, &d);
    d.sig_hup = evsignal_new(d.base, SIGHUP, on_sighup, &d);
    d.sig_term = evsignal_new(d.base, SIGTERM, on_sigstop, &d);
    d.sig_int = evsignal_new(d.base, SIGINT, on_sigstop, &d);
    if (d.health_timer == NULL || d.poll_timer == NULL || d.sig_hup == NULL || d.sig_term == NULL ||
        d.sig_int == NULL || evsignal_add(d.sig_hup, NULL) != 0 ||
        evsignal_add(d.sig_term, NULL) != 0 ||
        evsignal_add(d.sig_int, NULL) != 0) {
        dlog(&d, PG_LOG_ERROR, NULL, "cannot set up timers or signals");
        goto out;
    }
    if (recon_setup(&d) != 0) {   /* recon block */
        goto out;
    }
    if (start_http(&d, listen_arg) != 0) {
        goto out;
    }
    d.host->timer_arm(d.health_timer, 0);
    d.host->timer_arm(d.poll_timer, 0);
    if (cs.tick != NULL) {
        d.host->timer_arm(cs.tick, 0);
    }
    expiry_start(&d);   /* expiry block */
    stream_setup(&d);
    dlog(&d, PG_LOG_INFO,
         json_pack("{s:s,s:s,s:i}", "listen", d.listen_addr, "config",
                   d.config_path, "pid", (int)getpid()),
         "provgated started, listening on %s", d.listen_addr);
    audit(&d, "daemon.start", "info", NULL,
          json_pack("{s:s,s:s,s:i}", "listen", d.listen_addr, "config",
                    d.config_path, "pid", (int)getpid()));
    if (event_base_dispatch(d.base) < 0) {
        dlog(&d, PG_LOG_ERROR, NULL, "event loop failed");
        goto out;
    }
    dlog(&d, PG_LOG_INFO, NULL, "provgated stopped");
    rc = 0;
out:
    shutdown_all(&d);
    return rc;
}
