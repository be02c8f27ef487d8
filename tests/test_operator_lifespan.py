"""Nothing fails after "ready": an ASGI app whose lifespan startup fails.

A worker counts as started only once its app's lifespan startup succeeded,
so a pool whose app refuses to start never says "ready" (neither in its log
nor to systemd) and exits 3, as an app that does not import does; and a
startup that begins to fail under a running pool (new code, a database gone)
only makes the master retry with backoff until the cause goes away.

Driven as an operator meets it: ``python -m fcgi serve`` in a subprocess,
systemd played by a datagram socket at ``$NOTIFY_SOCKET``, the failure
switched on and off by a file the app looks for when it starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_operator_systemd import NotifySocket
from test_pool_support import ROOT, PoolMaster, wait_for

#: The app: its lifespan startup fails while the file FAIL_FLAG exists (its
#: content says how: "raise", or answer lifespan.startup.failed). It waits a
#: moment first, as a real startup does (a database to reach): a worker that
#: said it was ready before its startup would be seen ready in that moment.
LIFESPAN_APP = """
import os
import trio

FAIL_FLAG = os.environ["FAIL_FLAG"]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        if os.path.exists(FAIL_FLAG):
            await trio.sleep(0.5)
            with open(FAIL_FLAG) as f:
                how = f.read()
            if how == "raise":
                raise RuntimeError("the database is not there")
            await send({"type": "lifespan.startup.failed", "message": "the database is not there"})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": f"asgi pid={os.getpid()}".encode()})
"""

#: The master's line once every pool is up (and READY=1 goes to systemd).
READY_LINE = re.compile(r"master \d+ ready")


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sink = NotifySocket(tmp_path / "notify")
    yield sink
    sink.close()


def write_app(directory: Path) -> Path:
    """The app in ``directory``; the path of the flag file that makes its startup fail."""
    (directory / "lifeapp.py").write_text(textwrap.dedent(LIFESPAN_APP))
    return directory / "fail-startup"


def spawned(log: str) -> int:
    return log.count("spawned child")


@pytest.mark.parametrize(
    ("how", "pm"),
    [
        ("raise", ["--workers", "2"]),
        ("failed", ["--workers", "2"]),
        ("failed", ["--pm", "dynamic", "--max-children", "2", "--start-servers", "2"]),
    ],
)
def test_a_pool_whose_lifespan_startup_fails_never_says_ready(
    tmp_path: Path, notify: NotifySocket, how: str, pm: list[str]
) -> None:
    flag = write_app(tmp_path)
    flag.write_text(how)
    env = {"NOTIFY_SOCKET": notify.path, "FAIL_FLAG": str(flag)}
    with PoolMaster(
        tmp_path, [*pm, "--worker", "trio"], app="lifeapp:app", env=env, status=False
    ) as m:
        code = m.proc.wait(60)
        log = m.log()
    assert code == 3, log
    assert not READY_LINE.search(log), log
    assert not any("READY=1" in message for message in notify.received())
    assert "lifespan startup failed" in log or "raised during lifespan startup" in log
    assert "workers cannot start" in log
    # The first failure stops the start: no worker is forked again and again.
    assert 1 <= spawned(log) <= 2, log
    assert not Path(m.socket).exists()


@pytest.mark.parametrize("pm", [["--workers", "2"], ["--pm", "ondemand", "--max-children", "2"]])
def test_a_lifespan_that_fails_after_ready_is_retried_until_it_recovers(
    tmp_path: Path, notify: NotifySocket, pm: list[str]
) -> None:
    flag = write_app(tmp_path)
    env = {"NOTIFY_SOCKET": notify.path, "FAIL_FLAG": str(flag)}
    args = [*pm, "--worker", "trio", "--max-requests", "1"]
    with PoolMaster(tmp_path, args, app="lifeapp:app", env=env, status=False) as m:
        notify.wait("READY=1")
        assert READY_LINE.search(m.log())
        # Served, while the startup works.
        assert m.request("/").status == 200
        # From now on a new worker's startup fails. Each request ends its
        # worker (max_requests = 1), and its successor cannot start.
        flag.write_text("failed")
        for _ in range(2):
            m.request("/", timeout=5)
        m.wait_log("retrying in", timeout=60)
        assert m.proc.poll() is None, m.log()
        assert "lifespan startup failed" in m.log()
        # The cause goes away: the master finds it out by itself.
        # (An ondemand pool retries when a connection waits: the request's.)
        flag.unlink()
        response = wait_for(
            lambda: (r := m.request("/", timeout=10)).status == 200 and r, 90, "a response"
        )
        assert response.body.startswith(b"asgi pid=")
        m.wait_log("start retries are over", timeout=60)
        assert m.proc.poll() is None
        assert m.stop() == 0, m.log()


def serve_single(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fcgi", "serve", "lifeapp:app", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]),
            FAIL_FLAG=str(tmp_path / "fail-startup"),
        ),
    )


@pytest.mark.parametrize("how", ["raise", "failed"])
def test_a_single_process_whose_lifespan_startup_fails_exits_3(tmp_path: Path, how: str) -> None:
    write_app(tmp_path).write_text(how)
    sock = tmp_path / "app.sock"
    proc = serve_single(tmp_path, "--bind", f"unix:{sock}")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, out
    assert "serving on" not in out
    # Said once, in the log's own form (a traceback's lines marked as its
    # own), not printed a second time, raw, by the command.
    assert out.count("lifespan startup") == 1, out
    assert not sock.exists()


def test_a_single_process_says_it_serves_only_after_its_lifespan_startup(tmp_path: Path) -> None:
    write_app(tmp_path)
    sock = tmp_path / "app.sock"
    proc = serve_single(tmp_path, "--bind", f"unix:{sock}", "--log-level", "debug")
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "serving on" in line:
                break
        assert any("lifespan startup complete" in line for line in lines), lines
        assert "serving on" in lines[-1], lines
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert not sock.exists()
