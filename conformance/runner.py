"""Start a server from a command template, run cases against it, stop it.

Shared by the CLI, the report generator and the pytest suite so all three judge a
server the same way.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from conformance import client as fc
from conformance.cases import CASES, Case, Context, Result, run_case
from conformance.client import Address

ROOT = str(Path(__file__).resolve().parent.parent)


class ServerStartError(RuntimeError):
    """The server command exited or never accepted a connection."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(address: Address) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(address)
        except OSError:
            return False
        return True


class ServerProcess:
    """A server under test, started in its own session so the whole tree can be stopped."""

    def __init__(self, template: str, startup_timeout: float = 20.0) -> None:
        if "{sock}" not in template and "{addr}" not in template:
            raise ValueError("server command needs a {sock} or {addr} placeholder")
        self.template = template
        self.startup_timeout = startup_timeout
        self.tmpdir = Path(tempfile.mkdtemp(prefix="fcgi-conformance-"))
        self.log_path = self.tmpdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address: Address = ""
        self.command = ""
        self.restarts = 0

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def start(self) -> None:
        if "{sock}" in self.template:
            path = str(self.tmpdir / f"s{self.restarts}.sock")
            self.address, self.command = path, self.template.replace("{sock}", path)
        else:
            port = free_port()
            self.address = ("127.0.0.1", port)
            self.command = self.template.replace("{addr}", f"127.0.0.1:{port}")
        env = dict(os.environ)  # make conformance.app importable whatever the cwd
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                shlex.split(self.command),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"server exited with {self.proc.returncode}: {self.command}\n{self.log_tail()}"
                )
            if _accepts(self.address):
                return
            time.sleep(0.05)
        self.stop()
        raise ServerStartError(f"server never accepted on {self.address}\n{self.log_tail()}")

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # reap anything left in the group (workers)
        proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def select(pattern: str | None = None) -> list[Case]:
    """Cases whose name contains ``pattern`` (or matches it as a glob)."""
    cases = list(CASES.values())
    if not pattern:
        return cases
    return [c for c in cases if pattern in c.name or fnmatch.fnmatch(c.name, pattern)]


def _serves(address: Address, timeout: float) -> bool:
    try:
        resp = fc.request(address, fc.default_params("/ping"), timeout=timeout)
        return resp.ended and resp.stdout.endswith(b"pong\n")
    except (OSError, fc.ServerTimeout, fc.ProtocolViolation):
        return False


def run_one(server: ServerProcess, c: Case, timeout: float = 5.0) -> Result:
    """One case. A server that died or wedged is restarted so later cases still mean
    something; a failed case is blamed for the damage, a passed one only noted."""
    note = ""
    if not server.alive():
        note = f"(server had exited ({server.returncode}) after the previous case; restarted) "
        server.restart()
    result = run_case(c, Context(server.address, timeout))
    if not result.passed:
        time.sleep(0.3)  # let a crash triggered by the case's hang-up happen before judging
        if not server.alive() or not _serves(server.address, timeout):
            state = f"exited ({server.returncode})" if not server.alive() else "wedged"
            note += f"server {state} afterwards, restarted; "
            server.restart()
    return Result(c.name, result.passed, note + result.detail)


def run_suite(
    template: str,
    cases: Iterable[Case] | None = None,
    timeout: float = 5.0,
    progress: Callable[[Result], None] | None = None,
) -> list[Result]:
    results: list[Result] = []
    with ServerProcess(template) as server:
        for c in cases if cases is not None else CASES.values():
            result = run_one(server, c, timeout)
            results.append(result)
            if progress:
                progress(result)
    return results


def summary(results: Iterable[Result]) -> str:
    results = list(results)
    passed = sum(r.passed for r in results)
    return f"{passed} passed, {len(results) - passed} failed"
