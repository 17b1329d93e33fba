/*
 * Test helpers: private redis-server and a scripted HTTP server.
 * See procs.h. Blocking I/O and sleeps are fine here (tests only).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "helpers/procs.h"

#define PGT_REDIS_BIN "/usr/bin/redis-server"

uint64_t
pgt_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void
pgt_sleep_ms(unsigned ms)
{
    struct timespec ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int
pgt_free_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd, port = 0;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return 0;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0) {
        port = ntohs(sa.sin_port);
    }
    close(fd);
    return port;
}

/* Blocking connect to 127.0.0.1:port; -1 on failure. */
static int
pgt_connect(int port)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0) {
        return -1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int
pgt_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;

    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int
pgt_redis_query(const pgt_redis_t *rs, const char *cmd, char *out,
                size_t outsz)
{
    char line[512];
    size_t n = 0;
    int fd, rc = -1;
    struct pollfd pfd;
    uint64_t end = pgt_now_ms() + 1000;

    if (outsz == 0) {
        return -1;
    }
    fd = pgt_connect(rs->port);
    if (fd < 0) {
        return -1;
    }
    if (pgt_write_all(fd, cmd, strlen(cmd)) != 0 ||
        pgt_write_all(fd, "\r\n", 2) != 0) {
        close(fd);
        return -1;
    }
    pfd.fd = fd;
    pfd.events = POLLIN;
    while (n < sizeof(line) - 1 && pgt_now_ms() < end) {
        ssize_t r;
        if (poll(&pfd, 1, 100) <= 0) {
            continue;
        }
        r = read(fd, line + n, sizeof(line) - 1 - n);
        if (r <= 0) {
            break;
        }
        n += (size_t)r;
        line[n] = '\0';
        if (strstr(line, "\r\n") != NULL) {
            *strstr(line, "\r\n") = '\0';
            snprintf(out, outsz, "%s", line);
            rc = 0;
            break;
        }
    }
    close(fd);
    return rc;
}

/* fork+exec redis-server for rs (port and dir already set). */
static int
pgt_redis_spawn(pgt_redis_t *rs)
{
    const char *argv[64];
    char port[16], logf[300];
    int argc = 0, i;
    pid_t pid;
    uint64_t end;

    snprintf(port, sizeof(port), "%d", rs->port);
    snprintf(logf, sizeof(logf), "%s/redis.log", rs->dir);
    argv[argc++] = PGT_REDIS_BIN;
    argv[argc++] = "--port";
    argv[argc++] = port;
    argv[argc++] = "--bind";
    argv[argc++] = "127.0.0.1";
    argv[argc++] = "--dir";
    argv[argc++] = rs->dir;
    argv[argc++] = "--unixsocket";
    argv[argc++] = rs->sock;
    argv[argc++] = "--unixsocketperm";
    argv[argc++] = "700";
    argv[argc++] = "--save";
    argv[argc++] = "";
    argv[argc++] = "--appendonly";
    argv[argc++] = "no";
    argv[argc++] = "--daemonize";
    argv[argc++] = "no";
    argv[argc++] = "--logfile";
    argv[argc++] = logf;
    for (i = 0; rs->extra != NULL && rs->extra[i] != NULL && argc < 62; i++) {
        argv[argc++] = rs->extra[i];
    }
    argv[argc] = NULL;

    pid = fork();
    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execv(PGT_REDIS_BIN, (char *const *)argv);
        _exit(127);
    }
    rs->pid = pid;
    end = pgt_now_ms() + 5000;
    while (pgt_now_ms() < end) {
        char reply[128];
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            rs->pid = 0;
            return -1;
        }
        if (pgt_redis_query(rs, "PING", reply, sizeof(reply)) == 0 &&
            (strcmp(reply, "+PONG") == 0 || strncmp(reply, "-NOAUTH", 7) == 0)) {
            return 0;
        }
        pgt_sleep_ms(20);
    }
    pgt_redis_kill(rs);
    return -1;
}

int
pgt_redis_start(pgt_redis_t *rs, const char *const *extra)
{
    char tmpl[] = "/tmp/pgt-redis-XXXXXX";

    memset(rs, 0, sizeof(*rs));
    if (mkdtemp(tmpl) == NULL) {
        return -1;
    }
    snprintf(rs->dir, sizeof(rs->dir), "%s", tmpl);
    snprintf(rs->sock, sizeof(rs->sock), "%s/redis.sock", rs->dir);
    rs->extra = extra;
    for (int attempt = 0; attempt < 5; attempt++) {
        rs->port = pgt_free_port();
        if (rs->port != 0 && pgt_redis_spawn(rs) == 0) {
            return 0;
        }
    }
    pgt_redis_stop(rs);
    return -1;
}

void
pgt_redis_kill(pgt_redis_t *rs)
{
    if (rs->pid > 0) {
        kill(rs->pid, SIGKILL);
        waitpid(rs->pid, NULL, 0);
        rs->pid = 0;
    }
}

int
pgt_redis_restart(pgt_redis_t *rs)
{
    pgt_redis_kill(rs);
    return pgt_redis_spawn(rs);
}

void
pgt_redis_pause(pgt_redis_t *rs)
{
    if (rs->pid > 0) {
        kill(rs->pid, SIGSTOP);
    }
}

void
pgt_redis_resume(pgt_redis_t *rs)
{
    if (rs->pid > 0) {
        kill(rs->pid, SIGCONT);
    }
}

void
pgt_redis_stop(pgt_redis_t *rs)
{
    char path[400];

    pgt_redis_kill(rs);
    if (rs->dir[0] != '\0') {
        snprintf(path, sizeof(path), "%s/redis.log", rs->dir);
        unlink(path);
        unlink(rs->sock);
        snprintf(path, sizeof(path), "%s/dump.rdb", rs->dir);
        unlink(path);
        rmdir(rs->dir);
        rs->dir[0] = '\0';
    }
}

/* ---- HTTP server ---------------------------------------------------- */

#define PGT_HTTP_MAX_HEAD (64 * 1024)
#define PGT_HTTP_MAX_BODY (1024 * 1024)

/* Parse a decimal number from s (up to '/', '?', CR or NUL). -1 on error. */
static long
pgt_num(const char *s)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || v < 0 ||
        (*end != '\0' && *end != '/' && *end != '?' && *end != '\r')) {
        return -1;
    }
    return v;
}

static void
pgt_send_simple(int fd, int status, const char *extra_headers,
                const char *body, size_t blen)
{
    char head[1024];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d Test\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n%s\r\n",
                     status, blen, extra_headers ? extra_headers : "");
    if (n < 0 || (size_t)n >= sizeof(head)) {
        return;
    }
    if (pgt_write_all(fd, head, (size_t)n) == 0 && blen > 0) {
        (void)pgt_write_all(fd, body, blen);
    }
}

static void
pgt_send_x(int fd, size_t n)
{
    char buf[8192];

    memset(buf, 'x', sizeof(buf));
    while (n > 0) {
        size_t k = n < sizeof(buf) ? n : sizeof(buf);
        if (pgt_write_all(fd, buf, k) != 0) {
            return;
        }
        n -= k;
    }
}

/* Handle one connection (in a forked handler process). */
static void
pgt_http_handle(int fd)
{
    char *req = malloc(PGT_HTTP_MAX_HEAD + PGT_HTTP_MAX_BODY + 1);
    size_t n = 0, head_len, body_len = 0, need;
    char method[32], target[1024];
    char *eoh, *cl, *sp1, *sp2;

    if (req == NULL) {
        return;
    }
    /* Read the request head. */
    for (;;) {
        ssize_t r = read(fd, req + n, PGT_HTTP_MAX_HEAD - n);
        if (r <= 0) {
            free(req);
            return;
        }
        n += (size_t)r;
        req[n] = '\0';
        eoh = strstr(req, "\r\n\r\n");
        if (eoh != NULL) {
            break;
        }
        if (n >= PGT_HTTP_MAX_HEAD) {
            free(req);
            return;
        }
    }
    head_len = (size_t)(eoh - req) + 4;
    cl = strcasestr(req, "\r\nContent-Length:");
    if (cl != NULL && cl < eoh) {
        long v = pgt_num(cl + 17 + strspn(cl + 17, " "));
        if (v > 0 && v <= PGT_HTTP_MAX_BODY) {
            body_len = (size_t)v;
        }
    }
    need = head_len + body_len;
    while (n < need) {
        ssize_t r = read(fd, req + n, need - n);
        if (r <= 0) {
            break;
        }
        n += (size_t)r;
    }
    req[n] = '\0';

    /* Request line. */
    sp1 = memchr(req, ' ', head_len);
    sp2 = sp1 ? memchr(sp1 + 1, ' ', head_len - (size_t)(sp1 + 1 - req)) : NULL;
    if (sp1 == NULL || sp2 == NULL || (size_t)(sp1 - req) >= sizeof(method) ||
        (size_t)(sp2 - sp1 - 1) >= sizeof(target)) {
        pgt_send_simple(fd, 400, NULL, "bad", 3);
        free(req);
        return;
    }
    memcpy(method, req, (size_t)(sp1 - req));
    method[sp1 - req] = '\0';
    memcpy(target, sp1 + 1, (size_t)(sp2 - sp1 - 1));
    target[sp2 - sp1 - 1] = '\0';

    if (strncmp(target, "/status/", 8) == 0) {
        char body[64];
        long st = pgt_num(target + 8);
        int bl = snprintf(body, sizeof(body), "status %ld", st);
        pgt_send_simple(fd, st > 99 && st < 1000 ? (int)st : 500, NULL, body,
                        (size_t)bl);
    } else if (strncmp(target, "/delay/", 7) == 0) {
        long ms = pgt_num(target + 7);
        pgt_sleep_ms(ms > 0 ? (unsigned)ms : 0);
        pgt_send_simple(fd, 200, NULL, "delayed", 7);
    } else if (strncmp(target, "/huge/", 6) == 0) {
        long sz = pgt_num(target + 6);
        char head[256];
        int hl = snprintf(head, sizeof(head),
                          "HTTP/1.1 200 OK\r\nContent-Length: %ld\r\n"
                          "Connection: close\r\n\r\n", sz);
        if (pgt_write_all(fd, head, (size_t)hl) == 0 && sz > 0) {
            pgt_send_x(fd, (size_t)sz);
        }
    } else if (strncmp(target, "/stream/", 8) == 0) {
        long sz = pgt_num(target + 8);
        const char *head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
        if (pgt_write_all(fd, head, strlen(head)) == 0 && sz > 0) {
            pgt_send_x(fd, (size_t)sz);
        }
    } else if (strcmp(target, "/close") == 0) {
        /* nothing */
    } else if (strcmp(target, "/echo") == 0) {
        char hdr[128];
        size_t lines_len = head_len - 4; /* without the final CRLFCRLF */
        char *first_crlf = strstr(req, "\r\n");
        size_t hstart = (size_t)(first_crlf + 2 - req);
        size_t hlen = lines_len > hstart ? lines_len - hstart : 0;
        size_t out_len;
        char *out = malloc(64 + sizeof(target) + hlen + body_len);
        int k;

        if (out != NULL) {
            k = snprintf(out, 64 + sizeof(target), "%s %s\n", method, target);
            out_len = (size_t)k;
            memcpy(out + out_len, req + hstart, hlen);
            out_len += hlen;
            out[out_len++] = '\n';
            memcpy(out + out_len, req + head_len, body_len);
            out_len += body_len;
            snprintf(hdr, sizeof(hdr), "X-Echo-Method: %s\r\n", method);
            pgt_send_simple(fd, 200, hdr, out, out_len);
            free(out);
        }
    } else if (strncmp(target, "/trickle/", 9) == 0) {
        long sz = pgt_num(target + 9);
        char *slash = strchr(target + 9, '/');
        long ms = slash ? pgt_num(slash + 1) : 10;
        char head[256];
        int hl = snprintf(head, sizeof(head),
                          "HTTP/1.1 200 OK\r\nContent-Length: %ld\r\n"
                          "Connection: close\r\n\r\n", sz);
        if (pgt_write_all(fd, head, (size_t)hl) == 0) {
            for (long i = 0; i < sz; i++) {
                if (pgt_write_all(fd, "t", 1) != 0) {
                    break;
                }
                pgt_sleep_ms(ms > 0 ? (unsigned)ms : 0);
            }
        }
    } else if (strcmp(target, "/headers") == 0) {
        pgt_send_simple(fd, 200,
                        "X-Test: one\r\nX-Test: two\r\n"
                        "Content-Type: text/plain; charset=utf-8\r\n"
                        "x-lower:   yes  \r\n", "h", 1);
    } else if (strncmp(target, "/manyheaders/", 13) == 0) {
        long cnt = pgt_num(target + 13);
        char head[256];
        int hl = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\n"
                          "Content-Length: 1\r\nConnection: close\r\n");
        (void)pgt_write_all(fd, head, (size_t)hl);
        for (long i = 0; i < cnt; i++) {
            hl = snprintf(head, sizeof(head), "X-H%ld: v%ld\r\n", i, i);
            (void)pgt_write_all(fd, head, (size_t)hl);
        }
        (void)pgt_write_all(fd, "\r\nm", 3);
    } else {
        pgt_send_simple(fd, 404, NULL, "not found", 9);
    }
    free(req);
}

/* The server process: accept loop, one forked handler per connection. */
static void
pgt_http_serve(int lfd)
{
    signal(SIGCHLD, SIG_IGN); /* auto-reap handlers */
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int cfd = accept(lfd, NULL, NULL);
        pid_t pid;

        if (cfd < 0) {
            if (errno == EINTR) {
                continue;
            }
            _exit(1);
        }
        pid = fork();
        if (pid == 0) {
            int one = 1;
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            close(lfd);
            setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            pgt_http_handle(cfd);
            shutdown(cfd, SHUT_WR);
            /* Let the client read everything before the close. */
            pgt_sleep_ms(20);
            close(cfd);
            _exit(0);
        }
        close(cfd);
    }
}

int
pgt_http_server_start(pgt_http_server_t *s)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int lfd, one = 1;
    pid_t pid;

    memset(s, 0, sizeof(*s));
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0) {
        return -1;
    }
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &len) != 0 ||
        listen(lfd, 256) != 0) {
        close(lfd);
        return -1;
    }
    s->port = ntohs(sa.sin_port);
    pid = fork();
    if (pid < 0) {
        close(lfd);
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        pgt_http_serve(lfd);
        _exit(0);
    }
    setpgid(pid, pid);
    close(lfd);
    s->pid = pid;
    return 0;
}

void
pgt_http_server_stop(pgt_http_server_t *s)
{
    if (s->pid > 0) {
        kill(-s->pid, SIGKILL);
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}
