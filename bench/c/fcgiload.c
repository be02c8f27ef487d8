/*
 * fcgiload.c - a direct FastCGI load generator (no web server in between).
 *
 *   fcgiload -s SOCKET [-c CONNS] [-d SECONDS] [-k] [-p PATH] [-m METHOD]
 *            [-b BODY_BYTES] [-H NHEADERS] [-x STATUS] [-l BODY_LEN] [-E BODY]
 *
 *   -k   keep connections open (FCGI_KEEP_CONN); otherwise one new
 *        connection per request, as nginx does without fastcgi_keep_conn.
 *   -x   expected HTTP status (default 200), -l expected response body
 *        length, -E expected exact response body; a response that differs
 *        is counted in "bad" (and in "errors").
 *
 * One thread, epoll, CONNS connections in flight for SECONDS.  Every
 * response is parsed record by record (STDOUT headers: Status line and
 * header/body split; body counted) up to END_REQUEST and then validated.
 * A backend that closes a kept connection after a complete response (uWSGI
 * ignores FCGI_KEEP_CONN) is reconnected without counting an error; the
 * number of such reconnects is reported.
 *
 * Prints one JSON line: requests, errors, bad, reconnects, elapsed, rps,
 * p50_us, p99_us, max_us, stalled (connection slots that completed no request
 * at all: a prefork backend holding kept connections starves the others).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { T_BEGIN = 1, T_END = 3, T_PARAMS = 4, T_STDIN = 5, T_STDOUT = 6, T_STDERR = 7 };

#define HEAD_CAP 8192
#define PREFIX_CAP 256

struct conn {
    int fd;
    int connecting_retry; /* 1: waiting to retry a connect (backlog full) */
    size_t wpos;
    uint64_t t0;
    long served;          /* requests completed on this connection */
    long total;           /* requests completed by this slot, over all connections */
    size_t got;           /* response bytes received for the current request */
    /* record parser */
    unsigned char hdr[8];
    int hdr_have;
    size_t content_left, pad_left;
    int rtype;
    /* STDOUT parser */
    char head[HEAD_CAP];
    size_t head_len;
    int head_done;
    int status;
    size_t body_len;
    char prefix[PREFIX_CAP];
    size_t prefix_len;
    int ended;
};

static struct sockaddr_un addr;
static unsigned char *req;
static size_t req_len;
static int keep_conn;
static int exp_status = 200;
static long exp_len = -1;
static const char *exp_body;
static size_t exp_body_len;
static int epfd;

static long n_ok, n_err, n_bad, n_reconnect;
static uint32_t *lat;
static size_t lat_n, lat_cap;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* --------------------------------------------------------- request build -- */

static unsigned char *bp;
static size_t blen, bcap;

static void put(const void *p, size_t n)
{
    if (blen + n > bcap) {
        bcap = (blen + n) * 2;
        bp = realloc(bp, bcap);
        if (!bp) {
            perror("realloc");
            exit(1);
        }
    }
    memcpy(bp + blen, p, n);
    blen += n;
}

static void put_rec_header(int type, size_t clen, unsigned pad)
{
    unsigned char h[8] = {1, (unsigned char)type, 0, 1, (unsigned char)(clen >> 8),
                          (unsigned char)clen, (unsigned char)pad, 0};
    put(h, 8);
}

static unsigned char *pbuf;
static size_t plen, pcap;

static void pput(const void *p, size_t n)
{
    if (plen + n > pcap) {
        pcap = (plen + n) * 2;
        pbuf = realloc(pbuf, pcap);
        if (!pbuf) {
            perror("realloc");
            exit(1);
        }
    }
    memcpy(pbuf + plen, p, n);
    plen += n;
}

static void pput_len(size_t n)
{
    if (n < 128) {
        unsigned char b = (unsigned char)n;
        pput(&b, 1);
    } else {
        unsigned char b[4] = {(unsigned char)((n >> 24) | 0x80), (unsigned char)(n >> 16),
                              (unsigned char)(n >> 8), (unsigned char)n};
        pput(b, 4);
    }
}

static void param(const char *name, const char *val)
{
    size_t nl = strlen(name), vl = strlen(val);
    pput_len(nl);
    pput_len(vl);
    pput(name, nl);
    pput(val, vl);
}

static void put_stream(int type, const unsigned char *data, size_t n)
{
    static const unsigned char zeros[8];
    size_t off = 0;
    while (off < n) {
        size_t chunk = n - off > 65528 ? 65528 : n - off;
        unsigned pad = (unsigned)((8 - (chunk & 7)) & 7);
        put_rec_header(type, chunk, pad);
        put(data + off, chunk);
        put(zeros, pad);
        off += chunk;
    }
    put_rec_header(type, 0, 0);
}

static void build_request(const char *method, const char *path, size_t body, int nheaders)
{
    char tmp[256];
    param("GATEWAY_INTERFACE", "CGI/1.1");
    param("SERVER_SOFTWARE", "fcgiload");
    param("SERVER_PROTOCOL", "HTTP/1.1");
    param("SERVER_NAME", "localhost");
    param("SERVER_ADDR", "127.0.0.1");
    param("SERVER_PORT", "80");
    param("REMOTE_ADDR", "127.0.0.1");
    param("REMOTE_PORT", "40000");
    param("REQUEST_METHOD", method);
    param("SCRIPT_NAME", "");
    param("PATH_INFO", path);
    param("REQUEST_URI", path);
    param("DOCUMENT_URI", path);
    param("QUERY_STRING", "");
    snprintf(tmp, sizeof tmp, "%zu", body);
    param("CONTENT_LENGTH", body ? tmp : "");
    param("CONTENT_TYPE", body ? "application/octet-stream" : "");
    param("HTTP_HOST", "localhost");
    for (int i = 0; i < nheaders; i++) {
        char name[64], val[64];
        snprintf(name, sizeof name, "HTTP_X_BENCH_HEADER_%d", i);
        snprintf(val, sizeof val, "value-%d-abcdefghijklmnopqrstuvwxyz", i);
        param(name, val);
    }
    unsigned char begin[8] = {0, 1, (unsigned char)(keep_conn ? 1 : 0), 0, 0, 0, 0, 0};
    put_rec_header(T_BEGIN, 8, 0);
    put(begin, 8);
    put_stream(T_PARAMS, pbuf, plen);
    unsigned char *bodybuf = malloc(body ? body : 1);
    memset(bodybuf, 'a', body);
    put_stream(T_STDIN, bodybuf, body);
    free(bodybuf);
    req = bp;
    req_len = blen;
}

/* ------------------------------------------------------------ connection -- */

static void reset_response(struct conn *c)
{
    c->hdr_have = 0;
    c->content_left = c->pad_left = 0;
    c->head_len = 0;
    c->head_done = 0;
    c->status = 200;
    c->body_len = 0;
    c->prefix_len = 0;
    c->ended = 0;
    c->got = 0;
}

static int open_conn(struct conn *c)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("socket");
        exit(1);
    }
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        c->fd = -1;
        c->connecting_retry = 1; /* EAGAIN: listen backlog full; retry soon */
        return -1;
    }
    c->fd = fd;
    c->connecting_retry = 0;
    c->wpos = 0;
    c->served = 0;
    reset_response(c);
    c->t0 = now_us();
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static void close_conn(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
}

static void start_next(struct conn *c)
{
    c->wpos = 0;
    reset_response(c);
    c->t0 = now_us();
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void record_latency(uint64_t us)
{
    if (lat_n == lat_cap) {
        lat_cap = lat_cap ? lat_cap * 2 : 65536;
        lat = realloc(lat, lat_cap * sizeof *lat);
        if (!lat) {
            perror("realloc");
            exit(1);
        }
    }
    lat[lat_n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static void parse_head(struct conn *c)
{
    /* c->head holds everything up to and including the blank line */
    const char *p = c->head, *end = c->head + c->head_len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        if ((size_t)(nl - p) > 7 && strncasecmp(p, "Status:", 7) == 0)
            c->status = atoi(p + 7);
        p = nl + 1;
    }
}

__attribute__((noinline)) static void body_bytes(struct conn *c, const char *d, size_t n)
{
    c->body_len += n;
    if (c->prefix_len < PREFIX_CAP) {
        size_t k = PREFIX_CAP - c->prefix_len < n ? PREFIX_CAP - c->prefix_len : n;
        memcpy(c->prefix + c->prefix_len, d, k);
        c->prefix_len += k;
    }
}

/* returns -1 on malformed output */
static int stdout_bytes(struct conn *c, const char *d, size_t n)
{
    if (c->head_done) {
        body_bytes(c, d, n);
        return 0;
    }
    size_t room = HEAD_CAP - c->head_len;
    size_t k = n < room ? n : room;
    size_t old = c->head_len;
    memcpy(c->head + c->head_len, d, k);
    c->head_len += k;
    /* search for the end of headers, starting a little before the new data */
    size_t from = old > 3 ? old - 3 : 0;
    for (size_t i = from; i < c->head_len; i++) {
        size_t hend = 0;
        if (i + 3 < c->head_len + 0 && memcmp(c->head + i, "\r\n\r\n", 4) == 0)
            hend = i + 4;
        else if (i + 1 < c->head_len && memcmp(c->head + i, "\n\n", 2) == 0)
            hend = i + 2;
        if (hend) {
            size_t extra = c->head_len - hend;
            c->head_len = hend;
            c->head_done = 1;
            parse_head(c);
            if (extra)
                body_bytes(c, c->head + hend, extra);
            if (k < n)
                body_bytes(c, d + k, n - k);
            return 0;
        }
    }
    if (c->head_len == HEAD_CAP)
        return -1;
    return 0;
}

static int validate(struct conn *c)
{
    if (!c->head_done || c->status != exp_status)
        return 0;
    if (exp_len >= 0 && c->body_len != (size_t)exp_len)
        return 0;
    if (exp_body) {
        if (c->body_len != exp_body_len)
            return 0;
        size_t k = exp_body_len < PREFIX_CAP ? exp_body_len : PREFIX_CAP;
        if (memcmp(c->prefix, exp_body, k) != 0)
            return 0;
    }
    return 1;
}

/* Feed response bytes; returns 1 when END_REQUEST completed, -1 on error. */
static int feed(struct conn *c, const unsigned char *d, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (c->ended)
            return -1; /* bytes after END_REQUEST */
        if (c->hdr_have < 8) {
            size_t k = 8 - (size_t)c->hdr_have;
            if (k > n - i)
                k = n - i;
            memcpy(c->hdr + c->hdr_have, d + i, k);
            c->hdr_have += (int)k;
            i += k;
            if (c->hdr_have < 8)
                break;
            if (c->hdr[0] != 1)
                return -1;
            c->rtype = c->hdr[1];
            c->content_left = ((size_t)c->hdr[4] << 8) | c->hdr[5];
            c->pad_left = c->hdr[6];
        }
        size_t k = c->content_left < n - i ? c->content_left : n - i;
        if (k) {
            if (c->rtype == T_STDOUT && stdout_bytes(c, (const char *)d + i, k) < 0)
                return -1;
            c->content_left -= k;
            i += k;
        }
        if (c->content_left == 0) {
            size_t p = c->pad_left < n - i ? c->pad_left : n - i;
            c->pad_left -= p;
            i += p;
            if (c->pad_left == 0) {
                c->hdr_have = 0;
                if (c->rtype == T_END)
                    c->ended = 1;
            }
        }
    }
    return c->ended ? (i == n ? 1 : -1) : 0;
}

static void on_event(struct conn *c, uint32_t events);

static void fail_and_reconnect(struct conn *c)
{
    n_err++;
    close_conn(c);
    open_conn(c);
}

static void on_complete(struct conn *c)
{
    uint64_t t = now_us();
    record_latency(t - c->t0);
    if (validate(c)) {
        n_ok++;
    } else {
        n_bad++;
        n_err++;
    }
    c->served++;
    c->total++;
    if (keep_conn) {
        start_next(c);
    } else {
        close_conn(c);
        if (open_conn(c) < 0)
            return;
    }
    on_event(c, EPOLLOUT); /* write the next request right away */
}

static void on_event(struct conn *c, uint32_t events)
{
    static unsigned char rb[256 * 1024];
    if (events & EPOLLOUT && c->wpos < req_len) {
        ssize_t w = send(c->fd, req + c->wpos, req_len - c->wpos, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            goto closed;
        }
        c->wpos += (size_t)w;
        if (c->wpos == req_len) {
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
            epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        }
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        for (;;) {
            ssize_t r = recv(c->fd, rb, sizeof rb, 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    return;
                goto closed;
            }
            if (r == 0)
                goto closed;
            c->got += (size_t)r;
            int st = feed(c, rb, (size_t)r);
            if (st < 0) {
                fail_and_reconnect(c);
                return;
            }
            if (st == 1) {
                on_complete(c);
                return;
            }
            if ((size_t)r < sizeof rb)
                return;
        }
    }
    return;
closed:
    if (c->got == 0 && c->served > 0) {
        /* the backend closed a kept connection between requests */
        n_reconnect++;
        close_conn(c);
        open_conn(c);
        return;
    }
    fail_and_reconnect(c);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s -s SOCKET [-c CONNS] [-d SECONDS] [-k] [-p PATH] [-m METHOD]\n"
            "          [-b BODY_BYTES] [-H NHEADERS] [-x STATUS] [-l BODY_LEN] [-E BODY]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *sock = NULL, *path = "/hello", *method = NULL;
    int conns = 16, nheaders = 0;
    double duration = 5.0;
    size_t body = 0;
    int opt;
    while ((opt = getopt(argc, argv, "s:c:d:kp:m:b:H:x:l:E:")) != -1) {
        switch (opt) {
        case 's': sock = optarg; break;
        case 'c': conns = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'k': keep_conn = 1; break;
        case 'p': path = optarg; break;
        case 'm': method = optarg; break;
        case 'b': body = (size_t)strtoull(optarg, NULL, 10); break;
        case 'H': nheaders = atoi(optarg); break;
        case 'x': exp_status = atoi(optarg); break;
        case 'l': exp_len = atol(optarg); break;
        case 'E': exp_body = optarg; exp_body_len = strlen(optarg); break;
        default: usage(argv[0]);
        }
    }
    if (!sock || conns < 1 || duration <= 0)
        usage(argv[0]);
    if (!method)
        method = body ? "POST" : "GET";
    signal(SIGPIPE, SIG_IGN);
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(sock) >= sizeof addr.sun_path) {
        fprintf(stderr, "socket path too long\n");
        return 2;
    }
    strcpy(addr.sun_path, sock);
    build_request(method, path, body, nheaders);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    struct epoll_event *evs = calloc((size_t)conns, sizeof *evs);
    uint64_t start = now_us();
    uint64_t end = start + (uint64_t)(duration * 1e6);
    for (int i = 0; i < conns; i++)
        open_conn(&cs[i]);

    uint64_t t;
    while ((t = now_us()) < end) {
        int pending = 0;
        for (int i = 0; i < conns; i++)
            if (cs[i].fd < 0 && open_conn(&cs[i]) < 0)
                pending = 1;
        int timeout = pending ? 1 : (int)((end - t) / 1000 + 1);
        if (timeout > 100)
            timeout = 100;
        int n = epoll_wait(epfd, evs, conns, timeout);
        for (int i = 0; i < n; i++)
            on_event((struct conn *)evs[i].data.ptr, evs[i].events);
    }
    double elapsed = (double)(now_us() - start) / 1e6;
    for (int i = 0; i < conns; i++)
        close_conn(&cs[i]);

    int stalled = 0;
    for (int i = 0; i < conns; i++)
        stalled += cs[i].total == 0;
    uint32_t p50 = 0, p99 = 0, mx = 0;
    if (lat_n) {
        qsort(lat, lat_n, sizeof *lat, cmp_u32);
        p50 = lat[lat_n / 2];
        p99 = lat[(size_t)((double)lat_n * 0.99) < lat_n ? (size_t)((double)lat_n * 0.99)
                                                           : lat_n - 1];
        mx = lat[lat_n - 1];
    }
    printf("{\"requests\": %ld, \"errors\": %ld, \"bad\": %ld, \"reconnects\": %ld, "
           "\"elapsed\": %.3f, \"rps\": %.1f, \"p50_us\": %u, \"p99_us\": %u, \"max_us\": %u, \"stalled\": %d}\n",
           n_ok, n_err, n_bad, n_reconnect, elapsed, (double)n_ok / elapsed, p50, p99, mx, stalled);
    return 0;
}
