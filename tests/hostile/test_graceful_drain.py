"""A graceful stop serves the requests already queued on the socket.

Issue #10, item 7: on SIGTERM, requests sent and waiting in the listen backlog
were reset when the sockets closed (4 of 6 in a raw test with 2 workers, 32 in
one run through nginx). A sync worker told to stop now serves what is queued
on its listeners before it returns, and a restart with systemd socket
activation loses nothing. Every test here drives real processes with real
signals; the nginx tests put a real nginx in front.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rawfcgi import RecordReader, connect, get_params, request_bytes
from webservers import Backend, Nginx, backend_env, fcgi_serve_command, stop_process

#: Seconds the app takes per request: long enough that requests queue up.
SLOW = 0.3
#: Requests sent at once to a 2-worker pool before it is stopped.
QUEUED = 8
#: Load generator threads sending requests through nginx.
CLIENTS = 12

APP_SOURCE = """
import os, time

def app(environ, start_response):
    query = environ.get("QUERY_STRING", "")
    if environ.get("PATH_INFO") == "/sleep":
        time.sleep(float(query or 0.1))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"pid={os.getpid()}\\n".encode()]
"""

#: Runs ``argv[2:]`` with the socket from fd ``argv[1]`` on fd 3 and the
#: LISTEN_* variables systemd would set for it (as tests/test_deploy.py does).
SYSTEMD_EXEC = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def write_app(directory: Path) -> None:
    (directory / "drainapp.py").write_text(textwrap.dedent(APP_SOURCE))


def serve_command(bind: str, pool: bool) -> list[str]:
    extra = ["--workers", "2", "--user", "root"] if pool else []
    return fcgi_serve_command("drainapp:app", bind, ["--log-level", "debug", *extra])


def start_backend(tmp_path: Path, pool: bool) -> Backend:
    write_app(tmp_path)
    bind = f"unix:{tmp_path}/drain.sock"
    return Backend(
        command=serve_command(bind, pool),
        bind=bind,
        workdir=tmp_path,
        env=backend_env([tmp_path]),
    ).start()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("mode", ["pool", "single"])
def test_sigterm_serves_every_queued_request(tmp_path: Path, mode: str) -> None:
    backend = start_backend(tmp_path, pool=mode == "pool")
    assert backend.proc is not None
    socks = []
    try:
        for i in range(QUEUED):
            sock = connect(backend.bind, timeout=60)
            sock.sendall(request_bytes(1, get_params("/sleep", str(SLOW)) | {"N": str(i)}))
            socks.append(sock)
        # The workers are inside the first requests; the rest wait in the backlog.
        time.sleep(SLOW / 2)
        backend.proc.send_signal(signal.SIGTERM)
        path = backend.bind.removeprefix("unix:")
        outcomes = []
        for n, sock in enumerate(socks):
            try:
                reply = RecordReader(sock).reply(1)
                outcomes.append(f"{reply.status} {reply.body[:4]!r}")
            except OSError as exc:
                outcomes.append(repr(exc))
            if n == 0:
                # The socket file goes as the stop begins, in both modes, not
                # after the queue is served (seconds of work are still queued
                # here): nothing new can join the queue, a successor may bind.
                wait_until(lambda: not os.path.exists(path), "the socket file to go", timeout=1)
        assert outcomes == ["200 b'pid='"] * QUEUED, f"{outcomes}\n{backend.diagnostics()}"
        assert backend.proc.wait(30) == 0, backend.diagnostics()
    finally:
        for sock in socks:
            sock.close()
        backend.stop()


def test_sigterm_serves_a_request_already_sent_on_a_kept_connection(tmp_path: Path) -> None:
    """A kept connection parked in the worker has a request in when the stop comes."""
    backend = start_backend(tmp_path, pool=False)
    assert backend.proc is not None
    try:
        with connect(backend.bind, timeout=60) as kept, connect(backend.bind, timeout=60) as busy:
            kept_reader = RecordReader(kept)
            kept.sendall(request_bytes(1, get_params("/"), keep_conn=True))
            assert kept_reader.reply(1).status == 200  # now parked, idle, in the worker
            busy.sendall(request_bytes(1, get_params("/sleep", "1")))
            time.sleep(0.3)  # the only worker is inside /sleep
            kept.sendall(request_bytes(1, get_params("/", "second"), keep_conn=True))
            backend.proc.send_signal(signal.SIGTERM)
            assert RecordReader(busy).reply(1).status == 200
            reply = kept_reader.reply(1)
            assert reply.status == 200, f"{reply}\n{backend.diagnostics()}"
            assert kept_reader.closed()  # then the stopping worker lets it go
        assert backend.proc.wait(30) == 0, backend.diagnostics()
    finally:
        backend.stop()


class NginxLoad:
    """CLIENTS threads sending slow GETs through nginx until ``stop_new`` is set.

    Every request is counted with its outcome; none is started after
    ``stop_new``, so every request counted was sent before the backend's stop.
    """

    def __init__(self, nginx: Nginx, target: str) -> None:
        self.nginx = nginx
        self.target = target
        self.stop_new = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while not self.stop_new.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.nginx.port, timeout=60)
                conn.request("GET", self.target)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                outcome = "" if resp.status == 200 else f"{resp.status} {body[:100]!r}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = repr(exc)
            with self.lock:
                if outcome:
                    self.failures.append(outcome)
                else:
                    self.ok += 1

    def count(self) -> int:
        with self.lock:
            return self.ok + len(self.failures)

    def finish(self) -> None:
        """Wait for every request already started to end."""
        self.stop_new.set()
        for thread in self.threads:
            thread.join(120)


def test_sigterm_under_nginx_load_fails_no_request_already_sent(
    tmp_path: Path, start_nginx: Callable[[str, Backend], Nginx]
) -> None:
    backend = start_backend(tmp_path, pool=True)
    assert backend.proc is not None
    try:
        nginx = start_nginx("fcgi-new-connection.conf", backend)
        load = NginxLoad(nginx, "/sleep?0.2")
        try:
            wait_until(lambda: load.count() >= 20, "the load to get going")
        finally:
            # No request starts from here on; give those just started time
            # to reach the backend's queue, then stop it with them queued.
            load.stop_new.set()
            time.sleep(0.2)
            backend.proc.send_signal(signal.SIGTERM)
            load.finish()
        assert load.failures == [], f"{load.failures[:5]}\n{nginx.diagnostics()}"
        assert backend.proc.wait(30) == 0, backend.diagnostics()
    finally:
        backend.stop()


def test_restart_on_a_systemd_socket_under_nginx_load_loses_nothing(
    tmp_path: Path, start_nginx: Callable[[str, Backend], Nginx]
) -> None:
    write_app(tmp_path)
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(511)
    env = backend_env([tmp_path])
    log_path = tmp_path / "masters.log"

    def start_master() -> subprocess.Popen[bytes]:
        command = serve_command(f"unix:{path}", pool=True)
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-c", SYSTEMD_EXEC, str(listener.fileno()), *command],
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=[listener.fileno()],
                env=env,
                start_new_session=True,
            )

    # nginx needs a Backend to render its site; this one only names the socket.
    placeholder = Backend(command=[], bind=f"unix:{path}", workdir=tmp_path, env=env)
    first = start_master()
    second: subprocess.Popen[bytes] | None = None
    try:
        nginx = start_nginx("fcgi-new-connection.conf", placeholder)
        load = NginxLoad(nginx, "/sleep?0.05")
        try:
            wait_until(lambda: load.ok >= 20, "the load through master 1")
            first.send_signal(signal.SIGTERM)
            assert first.wait(60) == 0, log_path.read_text()
            # As systemd does on restart: the socket stayed open meanwhile.
            second = start_master()
            before = load.count()
            wait_until(lambda: load.count() >= before + 20, "the load through master 2")
        finally:
            load.finish()
        assert load.failures == [], f"{load.failures[:5]}\n{log_path.read_text()[-4000:]}"
        assert os.path.exists(path), "the socket belongs to systemd: left in place"
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_process(proc)
        listener.close()
