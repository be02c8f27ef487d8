/*
 * httpload.c - an HTTP/1.1 load generator that times fast and slow requests apart.
 *
 *   httpload -p PORT [-c CONNS] [-d SECONDS] [-f FAST_PATH] [-F FAST_BODY]
 *            [-s SLOW_PATH] [-S SLOW_BODY] [-n EVERY]
 *
 *   Every EVERY-th request sent (default 100, so 1%; 0 = never) goes to
 *   SLOW_PATH (default /slow), the others to FAST_PATH (default /hello).  A
 *   response must be 200 with exactly the expected body (-F / -S; defaults
 *   "Hello, world!" and "slept 50 ms"), else it counts in "bad" and "errors".
 *
 * Why not wrk: wrk keeps one latency histogram for all requests, and its Lua
 * hooks (request(), response()) are not told which connection they run on, so
 * a script cannot pair a response with the request it answers and time it.
 * With 1% slow requests the slow ones are exactly wrk's p99, which hides the
 * question asked here: how long do the *fast* requests wait behind them?
 *
 * One thread, epoll, CONNS keep-alive connections to 127.0.0.1:PORT, each
 * with one request in flight (closed loop, like wrk -t1 -cCONNS).  A request's
 * latency runs from the moment it is first written to the moment its last
 * body byte is read; fast and slow requests go to separate arrays.  A server
 * that closes the connection (Connection: close, or between requests) is
 * reconnected; that is reported as "reconnects", not as an error.
 *
 * Prints one JSON line: requests, errors, bad, reconnects, elapsed, rps (all
 * good responses per second), fast, slow (how many of each), p50_us, p99_us,
 * max_us (fast requests only), slow_p50_us, slow_p99_us.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The response head (status line + headers) must fit in this many bytes;
 * nginx's answers here are about 200. */
#define HEAD_CAP 8192
/* Bytes of the body kept for comparison; every expected body is shorter. */
#define PREFIX_CAP 64

struct conn {
    int fd;
    int slow;             /* the request in flight goes to the slow path */
    const char *req;      /* the request in flight, and how much of it is written */
    size_t req_len, wpos;
    uint64_t t0;
    long served;          /* responses completed on this connection */
    size_t got;           /* response bytes received for the current request */
    char head[HEAD_CAP];
    size_t head_len;
    int head_done;
    int status;
    int close_after;      /* the server said Connection: close */
    long content_length;  /* -1: not given */
    size_t body_len;
    char prefix[PREFIX_CAP];
    size_t prefix_len;
};

struct lat {
    uint32_t *v;
    size_t n, cap;
};

static struct sockaddr_in addr;
static char *fast_req, *slow_req;
static size_t fast_req_len, slow_req_len;
static const char *fast_body = "Hello, world!", *slow_body = "slept 50 ms";
static long every = 100;
static unsigned long sent;
static int epfd;

static long n_ok, n_err, n_bad, n_reconnect;
static struct lat fast_lat, slow_lat;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void record(struct lat *l, uint64_t us)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 65536;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v) {
            perror("realloc");
            exit(1);
        }
    }
    l->v[l->n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The value at quantile q of the sorted array (nearest rank, as fcgiload). */
static uint32_t quantile(const struct lat *l, double q)
{
    if (!l->n)
        return 0;
    size_t i = (size_t)((double)l->n * q);
    return l->v[i < l->n ? i : l->n - 1];
}

static char *build_request(const char *path, size_t *len)
{
    char *r = malloc(strlen(path) + 64);
    if (!r) {
        perror("malloc");
        exit(1);
    }
    *len = (size_t)sprintf(r, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path);
    return r;
}

/* ------------------------------------------------------------ connection -- */

static void next_request(struct conn *c)
{
    sent++;
    c->slow = every > 0 && sent % (unsigned long)every == 0;
    c->req = c->slow ? slow_req : fast_req;
    c->req_len = c->slow ? slow_req_len : fast_req_len;
    c->wpos = 0;
    c->got = 0;
    c->head_len = 0;
    c->head_done = 0;
    c->status = 0;
    c->close_after = 0;
    c->content_length = -1;
    c->body_len = 0;
    c->prefix_len = 0;
    c->t0 = now_us();
}

static void open_conn(struct conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("socket");
        exit(1);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        c->fd = -1; /* retried by the main loop */
        return;
    }
    c->fd = fd;
    c->served = 0;
    next_request(c);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void close_conn(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
}

static void parse_head(struct conn *c)
{
    const char *p = c->head, *end = c->head + c->head_len;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl && nl - p > 12 && strncmp(p, "HTTP/1.", 7) == 0)
        c->status = atoi(p + 9);
    p = nl ? nl + 1 : end;
    while (p < end) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        size_t n = (size_t)(nl - p);
        if (n > 15 && strncasecmp(p, "Content-Length:", 15) == 0)
            c->content_length = atol(p + 15);
        else if (n > 11 && strncasecmp(p, "Connection:", 11) == 0 &&
                 memmem(p + 11, n - 11, "close", 5) != NULL)
            c->close_after = 1;
        p = nl + 1;
    }
}

static void body_bytes(struct conn *c, const char *d, size_t n)
{
    c->body_len += n;
    if (c->prefix_len < PREFIX_CAP) {
        size_t k = PREFIX_CAP - c->prefix_len < n ? PREFIX_CAP - c->prefix_len : n;
        memcpy(c->prefix + c->prefix_len, d, k);
        c->prefix_len += k;
    }
}

/* Feed response bytes: 1 = response complete, 0 = more to come, -1 = malformed. */
static int feed(struct conn *c, const char *d, size_t n)
{
    if (!c->head_done) {
        size_t room = HEAD_CAP - c->head_len;
        size_t k = n < room ? n : room;
        size_t old = c->head_len;
        memcpy(c->head + c->head_len, d, k);
        c->head_len += k;
        size_t from = old > 3 ? old - 3 : 0;
        char *hend = memmem(c->head + from, c->head_len - from, "\r\n\r\n", 4);
        if (!hend)
            return c->head_len == HEAD_CAP ? -1 : 0;
        size_t hlen = (size_t)(hend - c->head) + 4;
        size_t extra = c->head_len - hlen;
        c->head_len = hlen;
        c->head_done = 1;
        parse_head(c);
        if (c->content_length < 0)
            return -1; /* every route answers with a Content-Length */
        if (extra)
            body_bytes(c, c->head + hlen, extra);
        if (k < n)
            body_bytes(c, d + k, n - k);
    } else {
        body_bytes(c, d, n);
    }
    if (c->body_len > (size_t)c->content_length)
        return -1;
    return c->body_len == (size_t)c->content_length;
}

static int valid(const struct conn *c)
{
    const char *want = c->slow ? slow_body : fast_body;
    size_t len = strlen(want);
    return c->status == 200 && c->body_len == len && c->prefix_len >= len &&
           memcmp(c->prefix, want, len) == 0;
}

static void on_event(struct conn *c, uint32_t events);

static void reconnect(struct conn *c)
{
    close_conn(c);
    open_conn(c);
}

static void on_complete(struct conn *c)
{
    uint64_t us = now_us() - c->t0;
    if (valid(c)) {
        n_ok++;
        record(c->slow ? &slow_lat : &fast_lat, us);
    } else {
        n_bad++;
        n_err++;
    }
    c->served++;
    if (c->close_after) {
        n_reconnect++;
        reconnect(c);
        return;
    }
    next_request(c);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    on_event(c, EPOLLOUT); /* write the next request right away */
}

static void on_event(struct conn *c, uint32_t events)
{
    static char rb[256 * 1024];
    if (events & EPOLLOUT && c->wpos < c->req_len) {
        ssize_t w = send(c->fd, c->req + c->wpos, c->req_len - c->wpos, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            goto closed;
        }
        c->wpos += (size_t)w;
        if (c->wpos == c->req_len) {
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
                n_err++;
                reconnect(c);
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
        /* closed between requests (an idle timeout): not the server's error */
        n_reconnect++;
    } else {
        n_err++;
    }
    reconnect(c);
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s -p PORT [-c CONNS] [-d SECONDS] [-f FAST_PATH] [-F FAST_BODY]\n"
            "          [-s SLOW_PATH] [-S SLOW_BODY] [-n EVERY]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *fast_path = "/hello", *slow_path = "/slow";
    int port = 0, conns = 16;
    double duration = 5.0;
    int opt;
    while ((opt = getopt(argc, argv, "p:c:d:f:F:s:S:n:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'c': conns = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'f': fast_path = optarg; break;
        case 'F': fast_body = optarg; break;
        case 's': slow_path = optarg; break;
        case 'S': slow_body = optarg; break;
        case 'n': every = atol(optarg); break;
        default: usage(argv[0]);
        }
    }
    if (port <= 0 || port > 65535 || conns < 1 || duration <= 0 || every < 0 ||
        strlen(fast_body) > PREFIX_CAP || strlen(slow_body) > PREFIX_CAP)
        usage(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fast_req = build_request(fast_path, &fast_req_len);
    slow_req = build_request(slow_path, &slow_req_len);

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
        for (int i = 0; i < conns; i++) {
            if (cs[i].fd < 0)
                open_conn(&cs[i]);
            pending |= cs[i].fd < 0;
        }
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

    qsort(fast_lat.v, fast_lat.n, sizeof *fast_lat.v, cmp_u32);
    qsort(slow_lat.v, slow_lat.n, sizeof *slow_lat.v, cmp_u32);
    printf("{\"requests\": %ld, \"errors\": %ld, \"bad\": %ld, \"reconnects\": %ld, "
           "\"elapsed\": %.3f, \"rps\": %.1f, \"fast\": %zu, \"slow\": %zu, "
           "\"p50_us\": %u, \"p99_us\": %u, \"max_us\": %u, "
           "\"slow_p50_us\": %u, \"slow_p99_us\": %u}\n",
           n_ok, n_err, n_bad, n_reconnect, elapsed, (double)n_ok / elapsed, fast_lat.n,
           slow_lat.n, quantile(&fast_lat, 0.5), quantile(&fast_lat, 0.99),
           fast_lat.n ? fast_lat.v[fast_lat.n - 1] : 0, quantile(&slow_lat, 0.5),
           quantile(&slow_lat, 0.99));
    return 0;
}
