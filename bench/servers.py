"""Launchers for the Python peers that have no command line of their own.

    python -m bench.servers flup SOCKET WORKERS
    python -m bench.servers fcgisgi SOCKET WORKERS

* flup 1.0.3: ``flup.server.fcgi_fork.WSGIServer`` (prefork) with exactly WORKERS children
  (minSpare = maxSpare = maxChildren = WORKERS).
* fcgisgi 0.2.3 has no prefork of its own: this launcher binds the unix socket, puts it on
  fd 0 (FCGI_LISTENSOCK_FILENO, which fcgisgi accepts when given no bind address) and forks
  WORKERS processes, each running fcgisgi's asyncio server (WSGI calls run in its thread
  pool), all accepting on the shared socket.  SIGTERM/SIGINT stop every child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import types

from bench.app import app


def run_flup(sock_path: str, workers: int) -> None:
    from flup.server.fcgi_fork import WSGIServer  # type: ignore[import-untyped]

    if os.path.exists(sock_path):
        os.unlink(sock_path)
    server = WSGIServer(
        app,
        bindAddress=sock_path,
        umask=0,
        debug=False,
        minSpare=workers,
        maxSpare=workers,
        maxChildren=workers,
    )
    server.run()


def _fcgisgi_child() -> None:
    from fcgisgi.asyncio_server import run_wsgi_server  # type: ignore[import-untyped]

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_wsgi_server(app, None))
    os._exit(0)


def run_fcgisgi(sock_path: str, workers: int) -> None:
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    os.chmod(sock_path, 0o777)
    listener.listen(1024)
    os.dup2(listener.fileno(), 0)
    listener.close()
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            _fcgisgi_child()
        children.append(pid)

    def stop(signum: int, _frame: types.FrameType | None) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    alive = set(children)
    while alive:
        try:
            pid, _status = os.wait()
        except ChildProcessError:
            break
        alive.discard(pid)
    with contextlib.suppress(OSError):
        os.unlink(sock_path)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("flup", "fcgisgi"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, sock_path, workers = argv[0], argv[1], int(argv[2])
    if kind == "flup":
        run_flup(sock_path, workers)
    else:
        run_fcgisgi(sock_path, workers)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
