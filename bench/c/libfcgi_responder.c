/*
 * libfcgi_responder.c - the benchmark app on libfcgi (fcgiapp.h, -lfcgi):
 * the second C row.  Same routes and answers as responder.c and bench/app.py.
 *
 *   usage: libfcgi_responder SOCKET_PATH [NPROCS]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcgiapp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_SIZE (16u * 1024u * 1024u)
/* /slow's wait, as bench/app.py's SLOW_SECONDS */
#define SLOW_US 50000

static char *fill;
static volatile sig_atomic_t stopping;

static void on_stop(int sig)
{
    (void)sig;
    stopping = 1;
}

static void handle(FCGX_Request *req)
{
    static char buf[65536];
    const char *path = FCGX_GetParam("PATH_INFO", req->envp);
    size_t plen = 0;
    if (!path || !*path) {
        path = FCGX_GetParam("REQUEST_URI", req->envp);
        if (path) {
            const char *q = strchr(path, '?');
            plen = q ? (size_t)(q - path) : strlen(path);
        }
    } else {
        plen = strlen(path);
    }

    size_t body_in = 0;
    int n;
    while ((n = FCGX_GetStr(buf, sizeof buf, req->in)) > 0)
        body_in += (size_t)n;

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
        unsigned long v = strtoul(tmp, &e, 10);
        if (*e == 0 && v <= MAX_SIZE) {
            body = fill;
            blen = v;
            status = "200 OK";
        }
    }
    FCGX_FPrintF(req->out,
                 "Status: %s\r\nContent-Type: text/plain\r\nContent-Length: %lu\r\n\r\n",
                 status, (unsigned long)blen);
    FCGX_PutStr(body, (int)blen, req->out);
}

static void child_loop(int lfd)
{
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    FCGX_Request req;
    if (FCGX_InitRequest(&req, lfd, 0) != 0)
        _exit(1);
    while (FCGX_Accept_r(&req) >= 0) {
        handle(&req);
        FCGX_Finish_r(&req);
    }
    _exit(0);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s SOCKET_PATH [NPROCS]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int nprocs = argc > 2 ? atoi(argv[2]) : 2;
    if (nprocs < 1)
        nprocs = 1;
    signal(SIGPIPE, SIG_IGN);
    fill = malloc(MAX_SIZE);
    if (!fill)
        return 1;
    memset(fill, 'x', MAX_SIZE);

    if (FCGX_Init() != 0)
        return 1;
    unlink(path);
    int lfd = FCGX_OpenSocket(path, 1024);
    if (lfd < 0) {
        fprintf(stderr, "FCGX_OpenSocket(%s) failed\n", path);
        return 1;
    }
    chmod(path, 0777);

    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_handler = on_stop;
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);

    pid_t *kids = calloc((size_t)nprocs, sizeof *kids);
    for (int i = 0; i < nprocs; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0)
            child_loop(lfd);
        kids[i] = pid;
    }
    int alive = nprocs;
    while (!stopping && alive > 0) {
        if (wait(NULL) > 0)
            alive--;
    }
    for (int i = 0; i < nprocs; i++)
        kill(kids[i], SIGTERM);
    while (wait(NULL) > 0 || errno == EINTR) {
    }
    unlink(path);
    return 0;
}
