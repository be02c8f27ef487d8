"""Helpers for the process-manager tests: a real master in a subprocess, and a client.

``PoolMaster`` writes a small WSGI app into a temporary directory, starts
``fcgi serve`` (as ``python -m fcgi serve``) on a unix socket there, and stops it (then SIGKILLs
anything left) at the end. Tests wait for conditions with generous deadlines
instead of asserting on timings.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fcgi.client import ClientError, FastCGIClient, Response, build_params

ROOT = Path(__file__).resolve().parent.parent

APP_TEMPLATE = """
import os, time

VERSION = {version!r}
_hoard = []

def very_slow_function_for_slowlog(seconds):
    time.sleep(seconds)

def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    if path == "/sleep":
        time.sleep(float(query or 1))
    elif path == "/slowfn":
        very_slow_function_for_slowlog(float(query or 1))
    elif path == "/exit":
        os._exit(int(query or 7))
    elif path == "/hoard":
        _hoard.append(bytearray(int(query) * 1024 * 1024))
    elif path == "/print":
        print("hello from the app", flush=True)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"pid={{os.getpid()}} version={{VERSION}}\\n".encode()]
"""


def write_app(directory: Path, version: str = "1", broken: bool = False) -> None:
    source = APP_TEMPLATE.format(version=version)
    if broken:
        source += "\nraise RuntimeError('this version cannot be imported')\n"
    path = directory / "poolapp.py"
    # Written aside and renamed, as a deploy would: a worker importing at that
    # moment sees the old file or the new one, never half of one.
    staging = directory / "poolapp.py.new"
    staging.write_text(textwrap.dedent(source))
    # A fresh mtime whatever the clock granularity, so no stale .pyc is used.
    stamp = time.time() + hash(version + str(broken)) % 1000
    os.utime(staging, (stamp, stamp))
    os.replace(staging, path)


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception as exc:  # the server may not be up yet
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error!r})")


class PoolMaster:
    def __init__(
        self,
        tmp_path: Path,
        args: Sequence[str] = ("--workers", "2"),
        version: str = "1",
        status: bool = True,
        env: dict[str, str] | None = None,
        broken: bool = False,
        app: str = "poolapp:app",
    ) -> None:
        self.dir = tmp_path
        self.socket = str(tmp_path / "pool.sock")
        self.address = f"unix:{self.socket}"
        self.log_path = tmp_path / "master.log"
        write_app(tmp_path, version, broken)
        command = [
            sys.executable,
            "-m",
            "fcgi",
            "serve",
            app,
            "--bind",
            self.address,
            "--user",
            "root",
            "--log-level",
            "debug",
            *(["--status-path", "/status", "--ping-path", "/ping"] if status else []),
            *args,
        ]
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(tmp_path)])
        environ["PYTHONDONTWRITEBYTECODE"] = "1"
        environ.update(env or {})
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            command, cwd=tmp_path, stdout=self._log, stderr=subprocess.STDOUT, env=environ
        )
        self.pid = self.proc.pid

    # -- talking to it ------------------------------------------------------------

    def request(self, target: str = "/", timeout: float = 30.0) -> Response:
        """The response; a connection the backend dropped is a 599 with the error."""
        try:
            with FastCGIClient(self.address, timeout=timeout) as client:
                return client.request(build_params(target))
        except ClientError as exc:
            return Response(599, "Dropped", [], b"", error=str(exc))

    def status(self, address: str | None = None) -> dict[str, Any]:
        with FastCGIClient(address or self.address, timeout=30.0) as client:
            response = client.request(build_params("/status?json&full"))
        assert response.status == 200, response
        doc: dict[str, Any] = json.loads(response.body)
        return doc

    def wait_ready(self, workers: int | None = None) -> dict[str, Any]:
        last: list[dict[str, Any]] = []

        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"master exited early:\n{self.log()}")
            doc = self.status()
            last[:] = [doc]
            if workers is not None and doc["idle processes"] + doc["active processes"] < workers:
                return None
            return doc

        try:
            doc: dict[str, Any] = wait_for(ready, what=f"{workers} workers up")
        except AssertionError as exc:
            # What the scoreboard said last: which slot is not counted, and why.
            shown = [
                {k: p.get(k) for k in ("pid", "state", "generation", "requests", "start since")}
                for p in (last[0]["processes"] if last else [])
            ]
            raise AssertionError(
                f"{exc}; the last status listed {shown}; the master's log:\n{self.log()}"
            ) from None
        return doc

    def worker_pids(self) -> set[int]:
        return {p["pid"] for p in self.status()["processes"]}

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 20.0) -> str:
        return str(wait_for(lambda: text in self.log() and self.log(), timeout, repr(text)))

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    # -- stopping -------------------------------------------------------------------

    def stop(self) -> int:
        workers = _children_of(self.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        _kill_leftovers(workers)
        return self.proc.returncode

    def __enter__(self) -> PoolMaster:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.stop()
        if kind is not None:
            # The test failed inside the block: its output (shown with the
            # failure) gets the master's whole log, which pytest's temporary
            # directories do not keep for long.
            print(f"--- the master's log ({self.log_path}) ---")
            print(self.log_path.read_text(errors="replace"))


def _children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == str(pid):
                found.add(int(entry.name))
    return found


def _kill_leftovers(pids: set[int]) -> None:
    """SIGKILL workers of this master that outlived it (there should be none)."""
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        # A worker shows its process title (fcgi/proctitle.py), or the
        # master's command line when setproctitle is missing.
        if b"fcgi\x00serve" in cmdline or cmdline.startswith(b"fcgi worker "):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Load:
    """Clients in threads sending requests until stopped; counts outcomes."""

    def __init__(self, address: str, concurrency: int, target: str = "/sleep?0.05") -> None:
        self.address = address
        self.target = target
        self.ok = 0
        self.failed: list[str] = []
        self.bodies: list[bytes] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)
        ]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with FastCGIClient(self.address, timeout=60) as client:
                    response = client.request(build_params(self.target))
                ok = response.status == 200
                detail = f"status {response.status}: {response.error}"
            except Exception as exc:
                ok, detail = False, repr(exc)
                response = None
            with self._lock:
                if ok and response is not None:
                    self.ok += 1
                    self.bodies.append(response.body)
                else:
                    self.failed.append(detail)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)


def run_concurrently(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run each call in its own thread; return results or the exceptions raised."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def master_json(log_text: str) -> list[dict[str, Any]]:  # pragma: no cover - debugging aid
    return [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
