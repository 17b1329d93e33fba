/*
 * Test helpers: throw-away servers on 127.0.0.1 for unit tests.
 *
 *  - pgt_redis_*: a private redis-server (/usr/bin/redis-server) on a free
 *    port with its own temp dir (also listening on a unix socket there),
 *    no persistence. It can be paused (SIGSTOP), resumed (SIGCONT),
 *    killed and restarted on the same port.
 *  - pgt_http_*: a tiny scripted HTTP/1.1 server in a forked child (one
 *    forked handler per connection, blocking sockets, Connection: close).
 *
 * Every child asks the kernel to kill it when its parent dies, so a
 * crashing test leaves nothing behind. All names are prefixed pgt_ since
 * this file is linked into every unit test binary.
 *
 * HTTP routes:
 *   /status/N          status N, body "status N"
 *   /delay/MS          sleep MS ms, then 200 "delayed"
 *   /huge/N            200 with Content-Length N and N bytes of 'x'
 *   /stream/N          200, N bytes of 'x', no Content-Length (close-delimited)
 *   /close             close the connection without any answer
 *   /echo              200, header X-Echo-Method, body:
 *                        "<METHOD> <target>\n<request header lines>\n<body>"
 *   /trickle/N/MS      200 with Content-Length N, one byte every MS ms
 *   /headers           200 with X-Test: one, X-Test: two,
 *                        Content-Type: text/plain; charset=utf-8, x-lower: yes
 *   /manyheaders/N     200 with N extra headers X-H<i>: v<i>
 *   anything else      404
 */
#ifndef PGT_PROCS_H
#define PGT_PROCS_H

#include <stdint.h>
#include <sys/types.h>

typedef struct pgt_redis {
    pid_t pid;                   /* 0 when not running */
    int port;
    char dir[256];               /* temp dir (removed by pgt_redis_stop) */
    char sock[300];              /* unix socket path inside dir */
    const char *const *extra;    /* extra argv, NULL-terminated, static */
} pgt_redis_t;

/* A currently free TCP port on 127.0.0.1 (0 on failure). */
int pgt_free_port(void);

/* Milliseconds of CLOCK_MONOTONIC. */
uint64_t pgt_now_ms(void);

/* Sleep (tests only). */
void pgt_sleep_ms(unsigned ms);

/*
 * Start redis-server on a free port in a new temp dir; extra (may be
 * NULL) are added to its command line, e.g. {"--requirepass","pw",NULL};
 * the array must stay valid for restarts. Waits until it answers PING.
 * 0 on success, -1 on failure.
 */
int pgt_redis_start(pgt_redis_t *rs, const char *const *extra);

/* Kill the server (SIGKILL) but keep port and dir for pgt_redis_restart. */
void pgt_redis_kill(pgt_redis_t *rs);

/* Start again on the same port and dir; waits for PING. 0 on success. */
int pgt_redis_restart(pgt_redis_t *rs);

/* SIGSTOP / SIGCONT the server. */
void pgt_redis_pause(pgt_redis_t *rs);
void pgt_redis_resume(pgt_redis_t *rs);

/* Stop the server and remove its temp dir. */
void pgt_redis_stop(pgt_redis_t *rs);

/*
 * Send one inline command on a fresh blocking connection and copy the
 * first reply line (without CRLF) into out. 0 on success.
 */
int pgt_redis_query(const pgt_redis_t *rs, const char *cmd, char *out,
                    size_t outsz);

typedef struct pgt_http_server {
    pid_t pid;
    int port;
} pgt_http_server_t;

/* Start the scripted HTTP server on a free port. 0 on success. */
int pgt_http_server_start(pgt_http_server_t *s);

/* Kill the server and all its connection handlers. */
void pgt_http_server_stop(pgt_http_server_t *s);

#endif
