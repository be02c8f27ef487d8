"""The single-process server is operable: signals as a pool's master, no accidental CGI.

Driven as an operator would: ``python -m fcgi serve`` in a subprocess, real
signals, a real unix socket, the app's code changed on disk between reloads.
(deploy/systemd and deploy/supervisord run exactly this mode.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rawfcgi import ROOT, Server, get_params, roundtrip, running_server, wait_connectable

APP_TEMPLATE = """
import os
import time

VERSION = {version!r}


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(1.0)
    body = f"{{VERSION}} {{os.getpid()}}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
"""


def write_app(directory: Path, version: str) -> None:
    (directory / "reloadapp.py").write_text(APP_TEMPLATE.format(version=version))
    # A new .py of the same size within the same second would be taken for
    # the cached one: the cache goes, so the new image compiles the source.
    shutil.rmtree(directory / "__pycache__", ignore_errors=True)


@dataclass
class Single:
    server: Server
    path: Path

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.server.proc

    def log(self) -> str:
        return self.server.log()

    def get(self, path: str = "/") -> tuple[str, int]:
        reply = roundtrip(self.server.address, get_params(path))
        assert reply.status == 200, reply
        version, pid = reply.body.decode().split()
        return version, int(pid)

    def wait_for(self, version: str, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen, pid = self.get()
            if seen == version:
                return pid
            time.sleep(0.05)
        raise AssertionError(f"never served {version!r} (last {seen!r}):\n{self.log()}")


@contextmanager
def single(tmp_path: Path, *args: str) -> Iterator[Single]:
    """``fcgi serve reloadapp:app`` on a socket in ``tmp_path``, whose app it can rewrite."""
    write_app(tmp_path, "one")
    sock = tmp_path / "app.sock"
    chdir = ("--chdir", str(tmp_path))
    with running_server("reloadapp:app", *chdir, *args, bind=f"unix:{sock}") as server:
        yield Single(server, sock)


@pytest.mark.parametrize("worker", ["sync", "trio"])
def test_sighup_reloads_new_code_on_the_same_socket_and_loses_nothing(
    tmp_path: Path, worker: str
) -> None:
    with single(tmp_path, "--worker", worker) as srv:
        version, pid = srv.get()
        assert (version, pid) == ("one", srv.proc.pid)
        inode = srv.path.stat().st_ino
        slow: list[str] = []
        in_flight = threading.Thread(target=lambda: slow.append(srv.get("/slow")[0]))
        in_flight.start()
        time.sleep(0.3)  # the slow request is running
        write_app(tmp_path, "two")
        srv.proc.send_signal(signal.SIGHUP)
        # Requests sent during the reload wait in the socket's queue: every
        # one of them is answered, by the old code or by the new.
        answers = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answers.append(srv.get()[0])
            if answers[-1] == "two":
                break
        in_flight.join(30)
        assert slow == ["one"], srv.log()  # the request in progress was finished
        assert answers[-1] == "two", srv.log()
        assert set(answers) <= {"one", "two"}
        assert srv.proc.poll() is None
        assert srv.wait_for("two") == srv.proc.pid  # same process, re-executed
        assert srv.path.stat().st_ino == inode  # the socket file was never removed
        assert "reloading" in srv.log()
        # And again: the re-executed image handles the next SIGHUP too.
        write_app(tmp_path, "three")
        srv.proc.send_signal(signal.SIGHUP)
        assert srv.wait_for("three") == srv.proc.pid


def test_reload_with_broken_new_code_keeps_serving_the_old(tmp_path: Path) -> None:
    with single(tmp_path) as srv:
        (tmp_path / "reloadapp.py").write_text("this is not python\n")
        shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reload failed" not in srv.log():
            assert time.monotonic() < deadline, srv.log()
            time.sleep(0.05)
        assert srv.get() == ("one", srv.proc.pid)
        assert srv.path.exists()


def test_signals_in_a_burst_are_never_fatal(tmp_path: Path) -> None:
    """SIGHUP, SIGUSR1 (logrotate), SIGUSR2 at once, during reloads: none kills it."""
    with single(tmp_path) as srv:
        for _ in range(3):
            for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2):
                srv.proc.send_signal(sig)
                time.sleep(0.01)
            time.sleep(0.2)
        write_app(tmp_path, "after")
        srv.proc.send_signal(signal.SIGHUP)
        assert srv.wait_for("after") == srv.proc.pid
        assert srv.proc.poll() is None
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0
        assert not srv.path.exists()  # a stop, unlike a reload, removes the socket file


def test_without_an_address_a_terminal_user_gets_an_error_not_cgi() -> None:
    """No --bind, no socket on fd 0, not started by a CGI server: a usage error."""
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_INTERFACE"}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.run(
        [sys.executable, "-m", "fcgi", "serve", "fcgi.demo:app"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 2, proc
    assert "nothing to listen on" in proc.stderr
    assert "--bind" in proc.stderr
    assert "Status:" not in proc.stdout  # no CGI answer, no environment dump


def test_a_bare_module_serves_its_application_as_django_names_it(tmp_path: Path) -> None:
    """`fcgi serve mysite.wsgi`: the module's ``application`` (Django, gunicorn), else ``app``."""
    package = tmp_path / "mysite"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "wsgi.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'django-style 0']\n"
        "def app(environ, start_response):\n"
        "    raise AssertionError('application comes first')\n"
    )
    sock = tmp_path / "app.sock"
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fcgi", "serve", "mysite.wsgi", "--bind", f"unix:{sock}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
    try:
        wait_connectable(f"unix:{sock}", proc, str(log_path))
        reply = roundtrip(f"unix:{sock}", get_params("/"))
        assert reply.status == 200 and reply.body == b"django-style 0"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_error_log_file_and_its_reopen_in_a_single_process(tmp_path: Path) -> None:
    """--error-log in a single process (no master): lines go to the file, SIGUSR1 reopens it."""
    log = tmp_path / "error.log"
    with single(tmp_path, "--error-log", str(log)) as s:
        s.get()
        wait_until(lambda: "serving" in log.read_text(), log, extra=s.log)
        assert not any(ch.startswith("fcgi worker") for ch in _children_titles(s.proc.pid)), (
            "a master started"
        )
        log.rename(tmp_path / "error.log.1")
        s.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: log.exists() and "log files reopened" in log.read_text(), log)
        s.get()
    assert s.proc.returncode == 0


def wait_until(predicate: object, log: Path, timeout: float = 30.0, extra: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    text = log.read_text() if log.exists() else "(no file)"
    text += "\n--- server output:\n" + (extra() if extra else "")
    raise AssertionError(f"not seen in {log}:\n{text}")


def _children_titles(pid: int) -> list[str]:
    out = subprocess.run(
        ["ps", "--ppid", str(pid), "-o", "args="], capture_output=True, text=True, check=False
    )
    return [line.strip() for line in out.stdout.splitlines()]


@pytest.mark.parametrize(
    ("sig", "line"),
    [
        (signal.SIGTERM, "stopped (SIGTERM: graceful stop)"),
        (signal.SIGQUIT, "stopped (SIGQUIT: graceful stop)"),
        (signal.SIGINT, "stopped (SIGINT: stop at once)"),
    ],
)
def test_a_single_process_names_the_signal_that_stopped_it(
    tmp_path: Path, sig: signal.Signals, line: str
) -> None:
    """As a pool's master does: the log says which signal ended the process."""
    with single(tmp_path) as srv:
        assert srv.get()[0] == "one"
        srv.proc.send_signal(sig)
        assert srv.proc.wait(15) == 0
        assert line in srv.log(), srv.log()
