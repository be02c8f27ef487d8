/*
 * responder.c - a minimal FastCGI responder written directly on the raw
 * FastCGI 1.0 protocol (no libfcgi).  It is the "protocol floor" row of the
 * fcgi benchmark: it does what a request needs and nothing else.
 *
 *   usage: responder SOCKET_PATH [NPROCS]
 *
 * The parent binds a unix socket, forks NPROCS children and on SIGTERM/SIGINT
 * stops them and removes the socket.  Each child runs one epoll loop over the
 * shared listening socket (EPOLLEXCLUSIVE) and its open connections, so kept
 * connections (FCGI_KEEP_CONN, nginx upstream keepalive) never starve new
 * ones.  A freshly accepted connection is read at once: the request usually
 * arrived with the connect, and is answered without touching epoll.
 * One request at a time per connection (a second BEGIN_REQUEST while one is
 * active gets CANT_MPX_CONN); without FCGI_KEEP_CONN the connection is closed
 * after END_REQUEST.  Responses go out in one writev: STDOUT records, the
 * empty STDOUT and END_REQUEST.
 *
 * Routes (routing on PATH_INFO, falling back to the path of REQUEST_URI):
 *   /hello       13-byte body "Hello, world!"
 *   /64k         65536 bytes of 'x'
 *   /size/N      N bytes of 'x' (N <= 16 MiB)
 *   /post        the number of request-body bytes received, as text
 *   /upload      same as /post
 *   /slow        sleeps 50 ms (blocking the process, as a sync worker does), then
 *                "slept 50 ms"; the mixed-latency workload's 1%
 *   anything else 404 "Not Found"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

enum {
    T_BEGIN = 1, T_ABORT = 2, T_END = 3, T_PARAMS = 4, T_STDIN = 5,
    T_STDOUT = 6, T_STDERR = 7, T_DATA = 8, T_GET_VALUES = 9,
    T_GET_VALUES_RESULT = 10, T_UNKNOWN_TYPE = 11
};
enum { ROLE_RESPONDER = 1, FLAG_KEEP_CONN = 1 };
enum { ST_COMPLETE = 0, ST_CANT_MPX = 1, ST_UNKNOWN_ROLE = 3 };

#define RBUF_CAP (256 * 1024)
#define MAX_SIZE (16u * 1024u * 1024u)
/* /slow's wait, as bench/app.py's SLOW_SECONDS */
#define SLOW_US 50000
#define REC_MAX 65528u /* largest 8-aligned record content */
#define MAX_IOV 1024

struct conn {
    int fd;
    int in_epoll;
    unsigned char *buf;          /* RBUF_CAP bytes of unparsed input */
    size_t len, pos;
    unsigned active_id;
    int active, keep, params_done;
    size_t body_in;
    char *params;                /* accumulated PARAMS stream */
    size_t params_len, params_cap;
    struct conn *next_free;
};

static char *fill;               /* MAX_SIZE bytes of 'x' */
static struct conn *free_conns;
static int epfd;

static volatile sig_atomic_t stopping;
static pid_t *children;
static int nchildren;
static const char *sock_path;

/* ---------------------------------------------------------------- I/O -- */

static int write_all_iov(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t w = writev(fd, iov, n > MAX_IOV ? MAX_IOV : n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0 && w > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

static void put_header(unsigned char *h, int type, unsigned id, size_t clen, unsigned plen)
{
    h[0] = 1;
    h[1] = (unsigned char)type;
    h[2] = (unsigned char)(id >> 8);
    h[3] = (unsigned char)id;
    h[4] = (unsigned char)(clen >> 8);
    h[5] = (unsigned char)clen;
    h[6] = (unsigned char)plen;
    h[7] = 0;
}

static int send_end(int fd, unsigned id, unsigned app_status, int proto_status)
{
    unsigned char b[16];
    put_header(b, T_END, id, 8, 0);
    b[8] = (unsigned char)(app_status >> 24);
    b[9] = (unsigned char)(app_status >> 16);
    b[10] = (unsigned char)(app_status >> 8);
    b[11] = (unsigned char)app_status;
    b[12] = (unsigned char)proto_status;
    b[13] = b[14] = b[15] = 0;
    struct iovec v = {b, sizeof b};
    return write_all_iov(fd, &v, 1);
}

/* ---------------------------------------------------- name-value pairs -- */

static int read_len(const unsigned char **p, const unsigned char *end, size_t *out)
{
    if (*p >= end)
        return -1;
    if (**p < 0x80) {
        *out = *(*p)++;
        return 0;
    }
    if (end - *p < 4)
        return -1;
    *out = ((size_t)((*p)[0] & 0x7f) << 24) | ((size_t)(*p)[1] << 16) |
           ((size_t)(*p)[2] << 8) | (*p)[3];
    *p += 4;
    return 0;
}

/* Find PATH_INFO (preferred) or REQUEST_URI in the PARAMS stream. */
static void find_path(const struct conn *cn, const char **path, size_t *plen)
{
    const unsigned char *p = (const unsigned char *)cn->params;
    const unsigned char *end = p + cn->params_len;
    const char *uri = NULL;
    size_t urilen = 0;
    *path = NULL;
    *plen = 0;
    while (p < end) {
        size_t nl, vl;
        if (read_len(&p, end, &nl) || read_len(&p, end, &vl))
            break;
        if ((size_t)(end - p) < nl + vl)
            break;
        const char *name = (const char *)p, *val = (const char *)p + nl;
        if (nl == 9 && vl > 0 && memcmp(name, "PATH_INFO", 9) == 0) {
            *path = val;
            *plen = vl;
            return;
        }
        if (nl == 11 && memcmp(name, "REQUEST_URI", 11) == 0) {
            uri = val;
            urilen = vl;
        }
        p += nl + vl;
    }
    if (uri) {
        const char *q = memchr(uri, '?', urilen);
        *path = uri;
        *plen = q ? (size_t)(q - uri) : urilen;
    }
}

/* Answer a GET_VALUES management record with the variables we know. */
static int send_get_values_result(int fd, const unsigned char *c, size_t clen)
{
    unsigned char out[512];
    size_t o = 8;
    const unsigned char *p = c, *end = c + clen;
    while (p < end) {
        size_t nl, vl;
        if (read_len(&p, end, &nl) || read_len(&p, end, &vl) || (size_t)(end - p) < nl + vl)
            break;
        const char *val = NULL;
        if (nl == 14 && memcmp(p, "FCGI_MAX_CONNS", 14) == 0)
            val = "1";
        else if (nl == 13 && memcmp(p, "FCGI_MAX_REQS", 13) == 0)
            val = "1";
        else if (nl == 15 && memcmp(p, "FCGI_MPXS_CONNS", 15) == 0)
            val = "0";
        if (val && o + 2 + nl + 1 < sizeof out) {
            out[o++] = (unsigned char)nl;
            out[o++] = 1;
            memcpy(out + o, p, nl);
            o += nl;
            out[o++] = (unsigned char)val[0];
        }
        p += nl + vl;
    }
    put_header(out, T_GET_VALUES_RESULT, 0, o - 8, 0);
    struct iovec v = {out, o};
    return write_all_iov(fd, &v, 1);
}

/* ------------------------------------------------------------ response -- */

static int respond(const struct conn *cn)
{
    int fd = cn->fd;
    unsigned id = cn->active_id;
    size_t body_in = cn->body_in;
    const char *path;
    size_t plen;
    find_path(cn, &path, &plen);

    const char *body = "Not Found";
    size_t blen = 9;
    const char *status = "404 Not Found";
    char num[32];

    if (path && plen == 6 && memcmp(path, "/hello", 6) == 0) {
        body = "Hello, world!";
        blen = 13;
        status = "200 OK";
    } else if (path && plen == 4 && memcmp(path, "/64k", 4) == 0) {
        body = fill;
        blen = 65536;
        status = "200 OK";
    } else if (path && ((plen == 5 && memcmp(path, "/post", 5) == 0) ||
                        (plen == 7 && memcmp(path, "/upload", 7) == 0))) {
        blen = (size_t)snprintf(num, sizeof num, "%zu", body_in);
        body = num;
        status = "200 OK";
    } else if (path && plen == 5 && memcmp(path, "/slow", 5) == 0) {
        usleep(SLOW_US);
        body = "slept 50 ms";
        blen = 11;
        status = "200 OK";
    } else if (path && plen > 6 && plen < 20 && memcmp(path, "/size/", 6) == 0) {
        char tmp[24];
        memcpy(tmp, path + 6, plen - 6);
        tmp[plen - 6] = 0;
        char *e;
        unsigned long n = strtoul(tmp, &e, 10);
        if (*e == 0 && n <= MAX_SIZE) {
            body = fill;
            blen = n;
            status = "200 OK";
        }
    }

    char head[160];
    size_t hlen = (size_t)snprintf(head, sizeof head,
                                   "Status: %s\r\nContent-Type: text/plain\r\n"
                                   "Content-Length: %zu\r\n\r\n",
                                   status, blen);

    /* STDOUT records: the first carries the CGI header plus as much body as
     * fits; the rest carry body; then empty STDOUT + END_REQUEST. */
    static unsigned char rechdrs[MAX_IOV / 2][8];
    static struct iovec iov[MAX_IOV];
    int n = 0, h = 0;
    size_t first_body = blen < REC_MAX - hlen ? blen : REC_MAX - hlen;
    put_header(rechdrs[h], T_STDOUT, id, hlen + first_body, 0);
    iov[n++] = (struct iovec){rechdrs[h++], 8};
    iov[n++] = (struct iovec){head, hlen};
    if (first_body)
        iov[n++] = (struct iovec){(char *)body, first_body};
    size_t off = first_body;
    while (off < blen) {
        size_t chunk = blen - off < REC_MAX ? blen - off : REC_MAX;
        put_header(rechdrs[h], T_STDOUT, id, chunk, 0);
        iov[n++] = (struct iovec){rechdrs[h++], 8};
        iov[n++] = (struct iovec){(char *)body + off, chunk};
        off += chunk;
    }
    unsigned char tail[24];
    put_header(tail, T_STDOUT, id, 0, 0);
    put_header(tail + 8, T_END, id, 8, 0);
    memset(tail + 16, 0, 8);
    iov[n++] = (struct iovec){tail, sizeof tail};
    return write_all_iov(fd, iov, n);
}

/* ---------------------------------------------------------- connection -- */

/* Handle one complete record; returns 1 when the connection must close. */
static int on_record(struct conn *cn, int type, unsigned id, const unsigned char *c, size_t clen)
{
    int fd = cn->fd;
    if (id == 0) {
        if (type == T_GET_VALUES)
            return send_get_values_result(fd, c, clen) != 0;
        unsigned char b[16];
        put_header(b, T_UNKNOWN_TYPE, 0, 8, 0);
        memset(b + 8, 0, 8);
        b[8] = (unsigned char)type;
        struct iovec v = {b, 16};
        return write_all_iov(fd, &v, 1) != 0;
    }
    if (type == T_BEGIN) {
        if (clen < 8)
            return 1;
        unsigned role = ((unsigned)c[0] << 8) | c[1];
        if (cn->active)
            return send_end(fd, id, 0, ST_CANT_MPX) != 0;
        if (role != ROLE_RESPONDER)
            return send_end(fd, id, 0, ST_UNKNOWN_ROLE) != 0 || !(c[2] & FLAG_KEEP_CONN);
        cn->active = 1;
        cn->active_id = id;
        cn->keep = c[2] & FLAG_KEEP_CONN;
        cn->params_len = 0;
        cn->params_done = 0;
        cn->body_in = 0;
        return 0;
    }
    if (!cn->active || id != cn->active_id)
        return 0; /* records for inactive request ids are ignored */
    switch (type) {
    case T_PARAMS:
        if (clen == 0) {
            cn->params_done = 1;
            return 0;
        }
        if (cn->params_len + clen > cn->params_cap) {
            cn->params_cap = (cn->params_len + clen) * 2;
            cn->params = realloc(cn->params, cn->params_cap);
            if (!cn->params)
                return 1;
        }
        memcpy(cn->params + cn->params_len, c, clen);
        cn->params_len += clen;
        return 0;
    case T_STDIN:
        if (clen > 0) {
            cn->body_in += clen;
            return 0;
        }
        if (!cn->params_done || respond(cn))
            return 1;
        cn->active = 0;
        return !cn->keep;
    case T_ABORT:
        if (send_end(fd, id, 1, ST_COMPLETE))
            return 1;
        cn->active = 0;
        return !cn->keep;
    default:
        return 0;
    }
}

/* Parse every complete record in the buffer; returns 1 to close. */
static int process(struct conn *cn)
{
    while (cn->len - cn->pos >= 8) {
        const unsigned char *h = cn->buf + cn->pos;
        int type = h[1];
        unsigned id = ((unsigned)h[2] << 8) | h[3];
        size_t clen = ((size_t)h[4] << 8) | h[5];
        size_t total = 8 + clen + h[6];
        if (cn->len - cn->pos < total)
            break;
        cn->pos += total;
        if (on_record(cn, type, id, h + 8, clen))
            return 1;
    }
    if (cn->pos == cn->len)
        cn->pos = cn->len = 0;
    return 0;
}

static void close_conn(struct conn *cn)
{
    if (cn->in_epoll)
        epoll_ctl(epfd, EPOLL_CTL_DEL, cn->fd, NULL);
    close(cn->fd);
    cn->next_free = free_conns;
    free_conns = cn;
}

/* Read what is available (never blocks) and act on it. */
static void on_readable(struct conn *cn)
{
    for (;;) {
        if (cn->pos > 0) {
            memmove(cn->buf, cn->buf + cn->pos, cn->len - cn->pos);
            cn->len -= cn->pos;
            cn->pos = 0;
        }
        size_t room = RBUF_CAP - cn->len;
        ssize_t r = recv(cn->fd, cn->buf + cn->len, room, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (r <= 0) {
            close_conn(cn);
            return;
        }
        cn->len += (size_t)r;
        if (process(cn)) {
            close_conn(cn);
            return;
        }
        if ((size_t)r < room)
            break;
    }
    if (!cn->in_epoll) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = cn};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, cn->fd, &ev) < 0) {
            close_conn(cn);
            return;
        }
        cn->in_epoll = 1;
    }
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN: another process took it */
        }
        struct conn *cn = free_conns;
        if (cn) {
            free_conns = cn->next_free;
        } else {
            cn = calloc(1, sizeof *cn);
            if (!cn || !(cn->buf = malloc(RBUF_CAP))) {
                close(fd);
                return;
            }
        }
        cn->fd = fd;
        cn->in_epoll = 0;
        cn->len = cn->pos = 0;
        cn->active = 0;
        /* nginx sends the request right after connect: try to serve it now,
         * and only register with epoll if more is needed */
        on_readable(cn);
    }
}

static void child_loop(int lfd)
{
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    static struct conn listener;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = &listener};
    if (epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev) < 0) {
        perror("epoll");
        _exit(1);
    }
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(epfd, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &listener)
                on_accept(lfd);
            else
                on_readable((struct conn *)evs[i].data.ptr);
        }
    }
}

static void on_stop(int sig)
{
    (void)sig;
    stopping = 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s SOCKET_PATH [NPROCS]\n", argv[0]);
        return 2;
    }
    sock_path = argv[1];
    nchildren = argc > 2 ? atoi(argv[2]) : 2;
    if (nchildren < 1)
        nchildren = 1;
    signal(SIGPIPE, SIG_IGN);

    fill = malloc(MAX_SIZE);
    if (!fill)
        return 1;
    memset(fill, 'x', MAX_SIZE);

    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(sock_path) >= sizeof sa.sun_path) {
        fprintf(stderr, "socket path too long\n");
        return 2;
    }
    strcpy(sa.sun_path, sock_path);
    unlink(sock_path);
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 1024) < 0) {
        perror("bind/listen");
        return 1;
    }
    chmod(sock_path, 0777);
    fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);

    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_handler = on_stop;
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);

    children = calloc((size_t)nchildren, sizeof *children);
    for (int i = 0; i < nchildren; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0)
            child_loop(lfd);
        children[i] = pid;
    }
    int alive = nchildren;
    while (!stopping && alive > 0) {
        pid_t p = wait(NULL);
        if (p > 0)
            alive--;
    }
    for (int i = 0; i < nchildren; i++)
        kill(children[i], SIGTERM);
    while (wait(NULL) > 0 || errno == EINTR) {
    }
    unlink(sock_path);
    return 0;
}
