"""The pool under systemd: deploy/systemd/fcgi-pool.service, sd_notify and the watchdog.

No systemd runs the tests, so they play its part: a unix datagram socket
bound where ``$NOTIFY_SOCKET`` points (as systemd does for a ``Type=notify``
unit) receives what the master says, ``WATCHDOG_USEC``/``WATCHDOG_PID`` are
set as systemd sets them (the pid through a small wrapper that execs the
unit's ``ExecStart`` in place), and ``ExecReload`` and ``KillSignal`` are run
as the unit writes them.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from frontends import deploy_app, render_deploy
from test_pool_support import ROOT, PoolMaster, wait_for, write_app

from fcgi import systemd
from fcgi.client import FastCGIClient, build_params
from fcgi.pool.config import load_config

#: Execs ``argv[1:]`` with WATCHDOG_PID set to its own pid, which the exec keeps.
EXEC_AS_MAIN_PID = """
import os, sys
os.environ["WATCHDOG_PID"] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
"""

#: Where the example pool.toml puts the pool's sockets (the unit's RuntimeDirectory).
RUN_DIR = "/run/fcgi/"


class NotifySocket:
    """What systemd listens on for sd_notify: every datagram, in order."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def received(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def wait(self, text: str, after: int = 0, timeout: float = 60.0) -> int:
        """Index of the first message from index ``after`` on that contains ``text``."""

        def find() -> int | None:
            for i, message in enumerate(self.received()[after:], after):
                if text in message:
                    return i + 1  # 1-based, so that 0 is "not yet"
            return None

        found: int = wait_for(find, timeout, f"{text!r} on NOTIFY_SOCKET")
        return found - 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sink = NotifySocket(tmp_path / "notify")
    yield sink
    sink.close()


def unit_file(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def render_pool_unit(tmp_path: Path) -> configparser.SectionProxy:
    unit = render_deploy("systemd/fcgi-pool.service", {"python": sys.executable},
                         tmp_path / "fcgi-pool.service")  # fmt: skip
    return unit_file(unit)["Service"]


def test_pool_unit_is_a_notify_service_that_reloads_and_stops_gracefully(
    tmp_path: Path,
) -> None:
    service = render_pool_unit(tmp_path)
    assert service["Type"] == "notify"
    assert shlex.split(service["ExecStart"])[1:] == [
        "-m", "fcgi", "serve", "--config", "/etc/fcgi/pool.toml"
    ]  # fmt: skip
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # The stop signal to the master only: it stops its workers gracefully.
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert int(service["WatchdogSec"]) > 0
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "3"}
    example = render_deploy("systemd/pool.toml", {"app_dir": "/srv/app"}, tmp_path / "pool.toml")
    pool = load_config(str(example))
    assert float(service["TimeoutStopSec"]) > pool.process_control_timeout
    assert service["RuntimeDirectory"] == "fcgi"
    assert all(spec.startswith(f"unix:{RUN_DIR}") for spec in pool.pools[0].listen)
    if shutil.which("systemd-analyze"):
        check = subprocess.run(
            ["systemd-analyze", "verify", str(tmp_path / "fcgi-pool.service")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        # Unknown keys and bad values are warnings on stderr, not a failure.
        assert check.returncode == 0 and not check.stderr.strip(), check


def render_pool_toml(tmp_path: Path, app_dir: Path) -> Path:
    """The example /etc/fcgi/pool.toml, its sockets moved from /run/fcgi to ``tmp_path``.

    Its workers run as root here: www-data cannot enter pytest's private
    temporary directory, where the app is.
    """
    path = render_deploy("systemd/pool.toml", {"app_dir": str(app_dir)}, tmp_path / "pool.toml")
    text = path.read_text().replace(RUN_DIR, f"{tmp_path}/")
    for key in ("user", "group"):
        text = text.replace(f'\n{key} = "www-data"', f'\n{key} = "root"')
    path.write_text(text)
    return path


def request(address: str, target: str) -> bytes:
    with FastCGIClient(address, timeout=30.0) as client:
        response = client.request(build_params(target))
    assert response.status == 200, response
    return response.body


def test_the_pool_unit_runs_as_systemd_would_run_it(tmp_path: Path, notify: NotifySocket) -> None:
    """READY, WATCHDOG, RELOADING/READY, a failed reload, STOPPING: the unit's whole life."""
    service = render_pool_unit(tmp_path)
    app_dir = deploy_app(tmp_path / "app")
    config = render_pool_toml(tmp_path, app_dir)
    socket_path = tmp_path / "www.sock"
    argv = [
        str(config) if arg == "/etc/fcgi/pool.toml" else arg
        for arg in shlex.split(service["ExecStart"])
    ]
    log = tmp_path / "journal.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WATCHDOG_PID")}
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONDONTWRITEBYTECODE="1",
        NOTIFY_SOCKET=notify.path,
        # The unit's WatchdogSec= is for production; a test wants many pings soon.
        WATCHDOG_USEC="400000",
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", EXEC_AS_MAIN_PID, *argv],
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )
    address = f"unix:{socket_path}"
    try:
        ready = notify.wait("READY=1")
        assert f"MAINPID={proc.pid}" in notify.received()[ready]
        assert "/echo" in request(address, "/echo").decode()
        # Watchdog pings from the loop, again and again.
        wait_for(
            lambda: notify.received()[ready:].count("WATCHDOG=1") >= 3,
            what="three WATCHDOG=1",
        )
        # systemctl reload.
        reload = shlex.split(service["ExecReload"].replace("$MAINPID", str(proc.pid)))
        subprocess.run(reload, check=True, timeout=60)
        reloading = notify.wait("RELOADING=1", ready + 1)
        assert "MONOTONIC_USEC=" in notify.received()[reloading]
        notify.wait("READY=1", reloading + 1)
        assert "/echo" in request(address, "/echo").decode()
        # A deploy breaks the app, then systemctl reload: it fails, and says so.
        with (app_dir / "app.py").open("a") as f:
            f.write("\nraise RuntimeError('this deploy is broken')\n")
        subprocess.run(reload, check=True, timeout=60)
        reloading = notify.wait("RELOADING=1", reloading + 1)
        failed = notify.wait("STATUS=Reload failed:", reloading + 1)
        notify.wait("READY=1", failed)
        assert "/echo" in request(address, "/echo").decode()  # the old workers
        assert proc.poll() is None
        # systemctl stop: KillSignal to the main process (KillMode=mixed).
        proc.send_signal(signal.Signals[service["KillSignal"]])
        assert proc.wait(60) == 0, log.read_text()
        notify.wait("STOPPING=1", failed)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not socket_path.exists()


def test_a_failed_preload_reload_is_reported_to_systemd(
    tmp_path: Path, notify: NotifySocket
) -> None:
    """With preload_app the new code is checked before the master re-executes."""
    args = ["--workers", "2", "--preload-app"]
    with PoolMaster(tmp_path, args, env={"NOTIFY_SOCKET": notify.path}) as m:
        ready = notify.wait("READY=1")
        m.wait_ready(2)
        write_app(tmp_path, "2", broken=True)
        m.signal(signal.SIGHUP)
        reloading = notify.wait("RELOADING=1", ready + 1)
        failed = notify.wait("STATUS=Reload failed: the new code cannot be imported", reloading)
        assert "\n" not in notify.received()[failed].removeprefix("STATUS=").strip()
        notify.wait("READY=1", failed)
        assert b"version=1" in m.request("/").body
        assert m.proc.poll() is None


def test_watchdog_is_enabled_only_for_the_process_systemd_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sd_watchdog_enabled(): WATCHDOG_USEC, and WATCHDOG_PID if set must be our pid."""
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))  # a worker's view
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert systemd.watchdog_interval() is None
