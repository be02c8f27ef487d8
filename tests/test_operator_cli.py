"""Issue #11, the operator's tools: ``fcgi request`` as a health check, and
process titles that tell the master from its workers in ``ps``.

Everything runs for real: ``python -m fcgi serve`` in a subprocess, ``python
-m fcgi request`` as a health check would run it, and the titles read from
``/proc/PID/cmdline`` of a live pool, as ``ps`` reads them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_pool_support import (
    ROOT,
    PoolMaster,
    _children_of,
    _kill_leftovers,
    wait_for,
    write_app,
)
from webservers import Backend, backend_env, fcgi_serve_command, free_port

from fcgi.client import FastCGIClient, Response, build_params

#: The title tests need the library (a runtime dependency; the server runs without it).
needs_titles = pytest.mark.skipif(
    importlib.util.find_spec("setproctitle") is None, reason="setproctitle is not installed"
)


def fcgi_request(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``fcgi request ARGS`` from this work tree."""
    return subprocess.run(
        [sys.executable, "-m", "fcgi", "request", "--timeout", "30", *args],
        capture_output=True,
        env=backend_env(),
        timeout=120,
    )


@pytest.fixture
def single(tmp_path: Path) -> Iterator[str]:
    """A single-process server of tests/frontend_app.py: /ping, /echo, /fail, 404 else."""
    sock = tmp_path / "app.sock"
    backend = Backend(
        command=fcgi_serve_command("frontend_app:app", f"unix:{sock}"),
        bind=f"unix:{sock}",
        workdir=tmp_path,
        env=backend_env(),
    )
    backend.start()
    try:
        yield f"unix:{sock}"
    finally:
        backend.stop()


# -- fcgi request --fail ----------------------------------------------------------


def test_request_fail_exits_22_on_a_404_without_printing_the_body(single: str) -> None:
    result = fcgi_request("--fail", single, "/no/such/path")
    assert result.returncode == 22, result
    assert result.stdout == b"", result
    assert b"404 Not Found" in result.stderr, result


def test_request_fail_exits_22_on_a_5xx(single: str) -> None:
    result = fcgi_request("-f", single, "/fail")
    assert result.returncode == 22, result
    assert result.stdout == b"", result
    assert b"500" in result.stderr, result


def test_request_fail_passes_a_2xx_through(single: str) -> None:
    result = fcgi_request("--fail", "--include", single, "/ping")
    assert result.returncode == 0, result
    assert result.stdout.startswith(b"HTTP/1.1 200 OK\r\n"), result
    assert result.stdout.endswith(b"\r\n\r\npong\n"), result


def test_request_without_fail_keeps_its_exit_codes(single: str) -> None:
    """0 for a 404 (the body printed), 1 for a 5xx, 2 when nothing answers."""
    missing = fcgi_request(single, "/no/such/path")
    assert missing.returncode == 0, missing
    assert b"no route" in missing.stdout, missing
    failed = fcgi_request(single, "/fail")
    assert failed.returncode == 1, failed
    gone = fcgi_request(single + ".missing", "/ping")
    assert gone.returncode == 2, gone


def test_request_bare_port_means_loopback_as_bind_does(tmp_path: Path) -> None:
    port = free_port()
    backend = Backend(
        # A bare port, as an operator types it: fcgi serve listens on 127.0.0.1.
        command=fcgi_serve_command("frontend_app:app", str(port)),
        bind=f"127.0.0.1:{port}",
        workdir=tmp_path,
        env=backend_env(),
    )
    backend.start()
    try:
        result = fcgi_request("--fail", str(port), "/ping")
        assert (result.returncode, result.stdout) == (0, b"pong\n"), (
            result,
            backend.diagnostics(),
        )
    finally:
        backend.stop()
    # The same bare port with nothing listening: a connection error, not a usage error.
    result = fcgi_request(str(port), "/ping")
    assert result.returncode == 2, result
    assert b"127.0.0.1" in result.stderr, result


# -- process titles -------------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    return _children_of(pid)


def title(pid: int) -> str:
    """What ``ps -o args`` shows for ``pid``: its command line, NULs as spaces."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


def wait_title(pid: int, expected: str, timeout: float = 20.0) -> None:
    """Wait until ``pid`` shows ``expected``; fail with the title it shows instead.

    A worker changes its title lazily: to a busy title when a request starts
    whose route differs from the one shown, to "idle" only when it is about to
    wait. So a title read right after an answer came back can still be the
    one before (the status request of ``worker_pids()`` shows as busy until
    the worker waits again), and one read of ``/proc/PID/cmdline`` can catch
    setproctitle half-way through a copy. Only the exact title is the state.
    """
    with contextlib.suppress(AssertionError):
        wait_for(lambda: title(pid) == expected, timeout, f"the title {expected!r}")
    assert title(pid) == expected


def slow_request(m: PoolMaster, params: dict[str, str | bytes]) -> threading.Thread:
    """Send ``params`` to the pool in a thread (the app sleeps on /sleep)."""
    results: list[Response] = []

    def send() -> None:
        with FastCGIClient(m.address, timeout=60) as client:
            results.append(client.request(params))

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@needs_titles
@pytest.mark.parametrize("worker", ["sync", "trio"])
def test_master_and_workers_have_titles(tmp_path: Path, worker: str) -> None:
    with PoolMaster(tmp_path, ["--workers", "1", "--worker", worker]) as m:
        m.wait_ready(1)
        assert title(m.pid) == "fcgi master [pools www]", title(m.pid)
        (worker,) = m.worker_pids()
        wait_title(worker, "fcgi worker www idle")
        # The 15-character thread name (``ps -o comm``, ``top``) differs too.
        assert Path(f"/proc/{worker}/comm").read_text().strip() == "fcgi worker www"
        assert Path(f"/proc/{m.pid}/comm").read_text().strip() == "fcgi master [po"

        thread = slow_request(m, build_params("/sleep?3"))
        wait_title(worker, "fcgi worker www busy GET /sleep?3")
        thread.join(60)
        wait_title(worker, "fcgi worker www idle")
        assert title(m.pid) == "fcgi master [pools www]"


@needs_titles
def test_busy_title_escapes_and_cuts_the_peer_uri(tmp_path: Path) -> None:
    """A URI with a line break and a terminal escape, 300 characters long."""
    with PoolMaster(tmp_path, ["--workers", "1"]) as m:
        m.wait_ready(1)
        (worker,) = m.worker_pids()
        # Idle first: until then the title may still show worker_pids()'s status request.
        wait_title(worker, "fcgi worker www idle")
        params = build_params("/sleep?3")
        params["REQUEST_URI"] = "/sleep?3&\n\x1b[2J" + "a" * 300
        params["REQUEST_METHOD"] = "G\rET"
        thread = slow_request(m, params)
        expected_uri = ("/sleep?3&\n\x1b[2J" + "a" * 300)[:64]
        escaped_uri = expected_uri.replace("\n", "\\x0A").replace("\x1b", "\\x1B")
        busy = f"fcgi worker www busy G\\x0DET {escaped_uri}..."
        assert "\n" not in busy and "\x1b" not in busy
        wait_title(worker, busy, timeout=20)
        thread.join(60)


@needs_titles
def test_titles_in_a_config_file_pool_with_two_pools(tmp_path: Path) -> None:
    """The master names every pool and its configuration file; each worker its pool."""
    config = tmp_path / "fcgi.toml"
    config.write_text(
        f"""
[pool.www]
app = "poolapp:app"
listen = ["unix:{tmp_path}/www.sock"]
pm = "static"
max_children = 1
user = "root"

[pool.api]
app = "poolapp:app"
listen = ["unix:{tmp_path}/api.sock"]
pm = "static"
max_children = 1
user = "root"
"""
    )
    write_app(tmp_path)
    env = backend_env([tmp_path])
    log = tmp_path / "master.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fcgi", "serve", "--config", str(config)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        for name in ("www", "api"):
            address = f"unix:{tmp_path}/{name}.sock"
            wait_for(
                lambda address=address: (
                    FastCGIClient(address).request(build_params("/")).status == 200
                ),
                what=f"{address} serving",
            )
        assert title(proc.pid) == f"fcgi master [pools www,api] {config}", (
            title(proc.pid),
            log.read_text(),
        )
        # A worker turns "idle" when it is about to wait, a moment after its
        # answer went out: give it that moment.
        wanted = ["fcgi worker api idle", "fcgi worker www idle"]
        wait_for(
            lambda: sorted(title(pid) for pid in children_of(proc.pid)) == wanted,
            what=f"worker titles {wanted}",
        )
    finally:
        workers = children_of(proc.pid)
        proc.terminate()
        try:
            code = proc.wait(60)
        finally:
            _kill_leftovers(workers)
    assert code == 0, log.read_text()


def test_without_setproctitle_the_pool_serves_with_plain_titles(tmp_path: Path) -> None:
    """The library is a dependency, but a missing one costs titles, not service."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "setproctitle.py").write_text("raise ImportError('no setproctitle here')\n")
    path = f"{shim}:{ROOT}:{tmp_path}"
    with PoolMaster(tmp_path, ["--workers", "1"], env={"PYTHONPATH": path}) as m:
        m.wait_ready(1)
        assert m.request("/").status == 200
        (worker,) = m.worker_pids()
        for pid in (m.pid, worker):
            assert " -m fcgi serve poolapp:app " in title(pid), title(pid)
    assert m.proc.returncode == 0, m.log()
