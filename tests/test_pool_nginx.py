"""The pool behind a real nginx: reloads and stops that no HTTP client notices."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from test_pool_support import write_app
from webservers import Backend, Nginx, fcgi_serve_command

CLIENTS = 16


class HttpLoad:
    """CLIENTS threads sending GET / through nginx until stopped; every answer is kept."""

    def __init__(self, nginx: Nginx) -> None:
        self.nginx = nginx
        self.failures: list[str] = []
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        host, port = "127.0.0.1", self.nginx.port
        while not self.stopping.is_set():
            try:
                conn = http.client.HTTPConnection(host, port, timeout=30)
                conn.request("GET", "/")
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                with self.lock:
                    if resp.status == 200:
                        self.bodies.append(body)
                    else:
                        self.failures.append(f"{resp.status} {body[:200]!r}")
            except OSError as exc:
                with self.lock:
                    self.failures.append(repr(exc))

    def count(self) -> int:
        with self.lock:
            return len(self.bodies)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_pool_behind_nginx(
    tmp_path: Path, start_nginx: Callable[[str, Backend], Nginx], workers: int
) -> tuple[Backend, Nginx]:
    write_app(tmp_path, "1")
    bind = f"unix:{tmp_path}/pool.sock"
    extra = ["--workers", str(workers), "--user", "root", "--chdir", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    backend = Backend(
        command=fcgi_serve_command("poolapp:app", bind, extra),
        bind=bind,
        workdir=tmp_path,
        env=env,
    ).start()
    return backend, start_nginx("fcgi-new-connection.conf", backend)


def test_three_sighups_under_load_through_nginx(
    tmp_path: Path, start_nginx: Callable[[str, Backend], Nginx]
) -> None:
    backend, nginx = start_pool_behind_nginx(tmp_path, start_nginx, workers=4)
    assert backend.proc is not None
    load = HttpLoad(nginx)
    try:
        wait_until(lambda: load.count() > 50, "the load to get going")
        for version in ("2", "3", "4"):
            write_app(tmp_path, version)
            backend.proc.send_signal(signal.SIGHUP)
            marker = f"version={version}".encode()
            wait_until(lambda m=marker: any(m in b for b in load.bodies[-CLIENTS:]), f"v{version}")
        # Old workers finish what they hold, then only the new code answers.
        wait_until(
            lambda: all(b"version=4" in body for body in load.bodies[-4 * CLIENTS :]),
            "only version 4 answering",
        )
    finally:
        load.stop()
        backend.stop()
    assert load.failures == [], load.failures[:5]


def test_graceful_stop_finishes_requests_in_flight_through_nginx(
    tmp_path: Path, start_nginx: Callable[[str, Backend], Nginx]
) -> None:
    backend, nginx = start_pool_behind_nginx(tmp_path, start_nginx, workers=3)
    assert backend.proc is not None
    results: list[int] = []

    def slow_request() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
        conn.request("GET", "/sleep?1")
        resp = conn.getresponse()
        resp.read()
        results.append(resp.status)

    threads = [threading.Thread(target=slow_request) for _ in range(3)]
    for thread in threads:
        thread.start()
    # Wait until the three requests are inside workers, then stop the master.
    wait_until(lambda: len(backend.connections()) >= 3, "three requests inside workers")
    backend.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert results == [200, 200, 200]
    assert backend.proc.wait(30) == 0
