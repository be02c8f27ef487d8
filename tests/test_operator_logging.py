"""Where the pool's log goes: log_config, syslog, and the workers' own output (issue #11, part 4).

Real masters (``python -m fcgi serve``) configured as an operator would: a
``logging.config`` file in JSON or TOML, ``error_log = syslog`` (a unix datagram
socket of the test's stands in for ``/dev/log`` through FCGI_SYSLOG_ADDRESS,
which exists for tests), ``error_log`` to a file that the workers' print()
reaches too, and SIGUSR1 reopening it in the master and in the workers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_pool_support import ROOT, PoolMaster, wait_for

from fcgi.client import FastCGIClient, build_params

APP = """
import os, threading, time

def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/print":
        print("hello from the app", flush=True)
    elif path == "/thread-error":
        thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
        thread.start()
        thread.join()
    elif path.startswith("/sleep"):
        time.sleep(float(environ.get("QUERY_STRING") or 1))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"pid={os.getpid()}".encode()]
"""


def _pool(tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> PoolMaster:
    (tmp_path / "logapp.py").write_text(textwrap.dedent(APP))
    return PoolMaster(tmp_path, ["--workers", "1", *args], app="logapp:app", env=env)


def _request_raw_uri(m: PoolMaster, uri: str) -> None:
    """A request whose REQUEST_URI is ``uri`` as is (control characters included)."""
    params = build_params("/sleep")
    params["REQUEST_URI"] = uri
    params["QUERY_STRING"] = uri.partition("?")[2]
    with FastCGIClient(m.address, timeout=30) as client:
        assert client.request(params).status == 200


# -- log_config ---------------------------------------------------------------------

LOG_CONFIG = {
    "version": 1,
    "formatters": {"custom": {"format": "CUSTOM %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"file": {"class": "logging.FileHandler", "filename": "", "formatter": "custom"}},
    "root": {"level": "INFO", "handlers": ["file"]},
}


def _toml(filename: str) -> str:
    return textwrap.dedent(
        f"""\
        version = 1
        [formatters.custom]
        format = "CUSTOM %(levelname)s %(name)s: %(message)s"
        [handlers.file]
        class = "logging.FileHandler"
        filename = "{filename}"
        formatter = "custom"
        [root]
        level = "INFO"
        handlers = ["file"]
        """
    )


@pytest.mark.parametrize("kind", ["json", "toml"])
def test_log_config_replaces_the_default_handlers(tmp_path: Path, kind: str) -> None:
    custom = tmp_path / "custom.log"
    config_file = tmp_path / f"logging.{kind}"
    if kind == "json":
        data = json.loads(json.dumps(LOG_CONFIG))
        data["handlers"]["file"]["filename"] = str(custom)
        config_file.write_text(json.dumps(data))
    else:
        config_file.write_text(_toml(str(custom)))
    args = ["--log-config", str(config_file), "--request-slowlog-timeout", "0.3"]
    with _pool(tmp_path, args) as m:
        m.wait_ready(1)
        text = wait_for(
            lambda: custom.exists() and " ready" in custom.read_text() and custom.read_text(),
            what="the ready line in the log_config file",
        )
        assert re.search(rf"^CUSTOM INFO fcgi\.pool: master {m.pid} ready$", text, re.M), text
        # Its handlers replace the default ones: the ready line is not on stderr.
        assert f"master {m.pid} ready" not in m.log()
        # A worker's print() reaches the same handlers, through the master.
        assert m.request("/print").status == 200
        wait_for(lambda: "said into stdout: hello from the app" in custom.read_text())
        # Escaping applies under the operator's formatter too.
        _request_raw_uri(m, "/sleep\n[forged]?0.8")
        text = wait_for(
            lambda: "executing too slow" in custom.read_text() and custom.read_text(),
            what="the slow request's warning",
        )
        assert "uri /sleep\\x0A[forged]" in text and "\n[forged]" not in text, text


def test_a_bad_log_config_stops_the_start_with_status_2(tmp_path: Path) -> None:
    config_file = tmp_path / "logging.json"
    config_file.write_text(
        json.dumps({"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}})
    )
    m = _pool(tmp_path, ["--log-config", str(config_file)])
    try:
        assert m.proc.wait(30) == 2
        log = m.log()
        assert "log_config" in log and "no.such.Handler" in log, log
        assert " ready" not in log
        assert not os.path.exists(m.socket)
    finally:
        m.stop()


# -- syslog -------------------------------------------------------------------------


class SyslogSink:
    """A unix datagram socket standing in for /dev/log; keeps what arrives."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.messages.append(self.sock.recv(65536))
            except TimeoutError:
                continue
            except OSError:
                return

    def find(self, needle: bytes) -> bytes | None:
        return next((m for m in list(self.messages) if needle in m), None)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def syslog_sink(tmp_path: Path) -> Iterator[SyslogSink]:
    sink = SyslogSink(tmp_path / "dev-log")
    yield sink
    sink.close()


def test_error_log_syslog_uses_facility_and_ident(tmp_path: Path, syslog_sink: SyslogSink) -> None:
    args = ["--error-log", "syslog", "--syslog-facility", "local3", "--syslog-ident", "myfcgi"]
    args += ["--request-slowlog-timeout", "0.3"]
    env = {"FCGI_SYSLOG_ADDRESS": syslog_sink.path}
    with _pool(tmp_path, args, env=env) as m:
        m.wait_ready(1)
        ready = wait_for(lambda: syslog_sink.find(b" ready"), what="the ready line in syslog")
        # <PRI> is facility * 8 + severity: local3 (19), info (6).
        assert ready.startswith(f"<158>myfcgi[{m.pid}]: [INFO] fcgi.pool: master".encode()), ready
        assert f"master {m.pid} ready" not in m.log()  # syslog instead of stderr
        # The master's warning about a slow request: local3.warning (156),
        # and the URI's newline escaped, not a line break.
        _request_raw_uri(m, "/sleep\n[forged]?0.8")
        slow = wait_for(lambda: syslog_sink.find(b"executing too slow"), what="slow warning")
        assert slow.startswith(f"<156>myfcgi[{m.pid}]:".encode()), slow
        assert b"/sleep\\x0A[forged]" in slow and b"\n" not in slow, slow
        # The worker's own record (the slowlog, without a slowlog file) carries its pid.
        (pid,) = m.worker_pids()
        stack = wait_for(lambda: syslog_sink.find(b"stack of the request"), what="stack")
        assert stack.startswith(f"<156>myfcgi[{pid}]:".encode()), stack
        # A worker's print() goes to syslog too.
        assert m.request("/print").status == 200
        said = wait_for(lambda: syslog_sink.find(b"said into stdout: hello from the app"))
        assert said.startswith(b"<158>myfcgi["), said


def test_error_log_syslog_without_a_syslog_daemon_is_a_start_error(tmp_path: Path) -> None:
    env = {"FCGI_SYSLOG_ADDRESS": str(tmp_path / "nobody-listens")}
    m = _pool(tmp_path, ["--error-log", "syslog"], env=env)
    try:
        assert m.proc.wait(30) == 2
        assert "cannot reach the syslog socket" in m.log()
    finally:
        m.stop()


# -- the workers' output --------------------------------------------------------------


def test_worker_output_goes_to_the_error_log_file(tmp_path: Path) -> None:
    error_log = tmp_path / "error.log"
    with _pool(tmp_path, ["--error-log", str(error_log)]) as m:
        m.wait_ready(1)
        (pid,) = m.worker_pids()
        assert m.request("/print").status == 200
        wait_for(
            lambda: f"child {pid} said into stdout: hello from the app" in error_log.read_text()
        )
        # An exception that escaped a thread: its traceback, line by line.
        assert m.request("/thread-error").status == 200
        text = wait_for(
            lambda: "ZeroDivisionError" in error_log.read_text() and error_log.read_text(),
            what="the thread's traceback",
        )
        assert f"child {pid} said into stderr: Exception in thread doomed" in text
        assert "hello from the app" not in m.log()  # not on the master's stderr


def test_sigusr1_reopens_the_error_log_in_the_master_and_the_workers(tmp_path: Path) -> None:
    error_log = tmp_path / "error.log"
    args = ["--error-log", str(error_log), "--request-slowlog-timeout", "0.3"]
    with _pool(tmp_path, args) as m:
        m.wait_ready(1)
        wait_for(lambda: " ready" in error_log.read_text())
        error_log.rename(tmp_path / "error.log.1")
        m.signal(signal.SIGUSR1)
        # Said in the old file, then the master opens a new one.
        wait_for(lambda: "reopening" in (tmp_path / "error.log.1").read_text())
        wait_for(error_log.exists, what="the new error log")
        # A worker's own record (its slowlog stack) lands in the new file.
        assert m.request("/sleep-after-rotation?0.8").status == 200
        text = wait_for(
            lambda: "stack of the request" in error_log.read_text() and error_log.read_text(),
            what="the worker's record in the new file",
        )
        assert "/sleep-after-rotation" in text


def test_catch_workers_output_does_not_escape_worker_records_twice(tmp_path: Path) -> None:
    # The error log on stderr, catch_workers_output on: the worker's own log
    # records (here its slowlog stack, for a URI holding a control character)
    # are written once by the worker, not wrapped in "said into stderr" and
    # escaped again by the master.
    args = ["--catch-workers-output", "--request-slowlog-timeout", "0.3"]
    with _pool(tmp_path, args) as m:
        m.wait_ready(1)
        _request_raw_uri(m, "/sleep\x01?0.8")
        log = m.wait_log("stack of the request")
        record = next(line for line in log.splitlines() if "stack of the request" in line)
        assert "uri /sleep\\x01?0.8" in record, record
        assert "\\x5C" not in record and "said into" not in record, record
        assert m.request("/print").status == 200
        m.wait_log("said into stdout: hello from the app")


def test_single_process_logging_function(tmp_path: Path) -> None:
    """fcgi.logsetup.configure_logging works without the pool: a file and its reopen."""
    target = tmp_path / "single.log"
    script = textwrap.dedent(
        f"""
        import logging, os
        from fcgi.logsetup import configure_logging, reopen_log_files
        configure_logging(error_log={str(target)!r}, log_level="info")
        logging.getLogger("fcgi.serve").info("first %s", "line\\nforged")
        os.rename({str(target)!r}, {str(target)!r} + ".1")
        reopen_log_files()
        logging.getLogger("fcgi.serve").info("second")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    first = (tmp_path / "single.log.1").read_text()
    assert "INFO fcgi.serve: first line\\x0Aforged" in first
    assert "second" in target.read_text()
