"""Slowlog and request_terminate_timeout show the request's own stack (issue #11, part 4).

Real pools (``python -m fcgi serve``), real signals: the master sends SIGUSR2
for the slowlog and, for a request past ``request_terminate_timeout``, SIGUSR2
then (if the worker does not answer) faulthandler's signal, then SIGKILL.
What is checked is what an operator reads: the app's function among the first
frames, fcgi's own frames folded into one line, for the sync worker, a WSGI app
in trio's threads and an ASGI task; and a stuck worker's stack written before
it is killed, even when it is stuck in C.
"""

from __future__ import annotations

import re
import textwrap
import threading
from pathlib import Path

import pytest
from test_pool_support import PoolMaster, wait_for

WSGI_APP = """
import ctypes, os, select, time

def app_sleeps_in_python(seconds):
    time.sleep(seconds)

def app_waits_in_select(seconds):
    select.select([], [], [], seconds)

def app_stuck_in_c():
    # A default pthread mutex locked twice by one thread: blocked in C for
    # good, where no signal brings the interpreter back to run Python.
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)

def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = float(environ.get("QUERY_STRING") or 1)
    if path.startswith("/sleep"):
        app_sleeps_in_python(query)
    elif path == "/select":
        app_waits_in_select(query)
    elif path == "/c":
        app_stuck_in_c()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"pid={os.getpid()}".encode()]
"""

ASGI_APP = """
import os, time, trio

async def asgi_awaits_in_trio(seconds):
    await trio.sleep(seconds)

async def asgi_blocks_the_loop(seconds):
    time.sleep(seconds)

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    seconds = float(scope["query_string"] or b"1")
    if scope["path"] == "/await":
        await asgi_awaits_in_trio(seconds)
    elif scope["path"] == "/block":
        await asgi_blocks_the_loop(seconds)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})
"""


#: The same app for the asyncio worker (the default for ASGI apps), which
#: runs the ASGI cycle compiled (setup.py): its coroutines show no frames.
ASYNCIO_APP = (
    ASGI_APP.replace("import os, time, trio", "import asyncio, os, time")
    .replace("await trio.sleep(seconds)", "await asyncio.sleep(seconds)")
    .replace("asgi_awaits_in_trio", "asgi_awaits_in_asyncio")
)


def _pool(tmp_path: Path, args: list[str], asgi: bool = False, app: str = "") -> PoolMaster:
    source = app or (ASGI_APP if asgi else WSGI_APP)
    (tmp_path / "stacksapp.py").write_text(textwrap.dedent(source))
    return PoolMaster(tmp_path, args, app="stacksapp:app")


def _stacks(text: str) -> list[list[str]]:
    """The frame lines of each stack in a slowlog (or error log) text."""
    found = []
    for block in text.split("stack of the request, most recent call first:")[1:]:
        lines = []
        for line in block.splitlines()[1:] if block.startswith("\n") else block.splitlines():
            line = line.removeprefix("  | ")  # a continuation line of the error log
            if not line.startswith("  "):
                break
            lines.append(line)
        found.append(lines)
    return found


def _assert_app_first(stack: list[str], function: str) -> None:
    """``function`` is in the first frames; fcgi's frames take one line."""
    frames = [line for line in stack if line.startswith("  File ") or "frames of" in line]
    assert any(function in line for line in frames[:3]), stack
    assert not any("/fcgi/" in line for line in frames), stack  # folded, not listed
    assert sum("of fcgi" in line for line in frames) <= 1, stack


def test_sync_slowlog_shows_the_app_first_and_folds_fcgi(tmp_path: Path) -> None:
    slowlog = tmp_path / "slow.log"
    args = ["--workers", "1", "--request-slowlog-timeout", "0.3", "--slowlog", str(slowlog)]
    with _pool(tmp_path, args) as m:
        m.wait_ready(1)
        assert m.request("/sleep?1.5").status == 200
        text = wait_for(lambda: slowlog.exists() and slowlog.read_text(), what="slowlog")
        assert re.search(r"\[pool www\] pid \d+\nrequest: GET /sleep\?1\.5 \(running", text), text
        (stack,) = _stacks(text)
        _assert_app_first(stack, "in app_sleeps_in_python")
        assert "time.sleep(seconds)" in stack[1]  # the source line, as in a traceback
        assert any(re.fullmatch(r"  \.\.\. \d+ frames of fcgi.*", line) for line in stack)


def test_trio_wsgi_slowlog_shows_each_request_thread(tmp_path: Path) -> None:
    slowlog = tmp_path / "slow.log"
    args = ["--workers", "1", "--worker", "trio", "--threads", "4"]
    args += ["--request-slowlog-timeout", "0.5", "--slowlog", str(slowlog)]
    with _pool(tmp_path, args) as m:
        m.wait_ready(1)
        # Two requests in flight in the one worker: each stack under its own request.
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda t=t: results.append(m.request(t).status))
            for t in ("/sleep-a?2", "/sleep-b?2")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == [200, 200]
        text = wait_for(
            lambda: slowlog.exists() and "/sleep-b" in slowlog.read_text() and slowlog.read_text(),
            what="both requests in the slowlog",
        )
        assert "request: GET /sleep-a?2" in text and "request: GET /sleep-b?2" in text
        stacks = _stacks(text)
        assert len(stacks) >= 2
        for stack in stacks:
            _assert_app_first(stack, "in app_sleeps_in_python")
            assert not any("trio/_core" in line for line in stack), stack


@pytest.mark.parametrize(
    ("worker", "target", "function"),
    [
        ("trio", "/await?1.5", "in asgi_awaits_in_trio"),
        ("trio", "/block?1.5", "in asgi_blocks_the_loop"),
        ("asyncio", "/await?1.5", "in asgi_awaits_in_asyncio"),
        ("asyncio", "/block?1.5", "in asgi_blocks_the_loop"),
    ],
)
def test_asgi_slowlog_shows_the_apps_task(
    tmp_path: Path, worker: str, target: str, function: str
) -> None:
    slowlog = tmp_path / "slow.log"
    args = ["--workers", "1", "--worker", worker]
    args += ["--request-slowlog-timeout", "0.4", "--slowlog", str(slowlog)]
    app = ASYNCIO_APP if worker == "asyncio" else ASGI_APP
    with _pool(tmp_path, args, app=app) as m:
        m.wait_ready(1)
        assert m.request(target).status == 200
        text = wait_for(lambda: slowlog.exists() and slowlog.read_text(), what="slowlog")
        (stack,) = _stacks(text)
        _assert_app_first(stack, function)
        assert any("in app" in line for line in stack), stack


@pytest.mark.parametrize(
    ("target", "function"),
    [("/sleep?60", "in app_sleeps_in_python"), ("/select?60", "in app_waits_in_select")],
)
def test_terminate_writes_the_stack_to_the_error_log_then_kills(
    tmp_path: Path, target: str, function: str
) -> None:
    with _pool(tmp_path, ["--workers", "1", "--request-terminate-timeout", "1"]) as m:
        m.wait_ready(1)
        (pid,) = m.worker_pids()
        assert m.request(target).status >= 500
        killed = f"child {pid} exited on signal 9 (SIGKILL)"
        log = m.wait_log(killed)
        assert "execution timed out" in log
        stack_at = log.index("stack of the request, most recent call first:")
        assert stack_at < log.index(killed)
        assert "past request_terminate_timeout" in log
        (stack,) = _stacks(log[stack_at - 200 :])
        _assert_app_first(stack, function)
        assert "faulthandler" not in log  # the Python dump answered: no second copy
        wait_for(lambda: m.worker_pids() and pid not in m.worker_pids(), what="a new worker")


def test_terminate_of_a_worker_stuck_in_c_uses_faulthandler(tmp_path: Path) -> None:
    slowlog = tmp_path / "slow.log"
    args = ["--workers", "1", "--request-terminate-timeout", "1", "--slowlog", str(slowlog)]
    with _pool(tmp_path, args) as m:
        m.wait_ready(1)
        (pid,) = m.worker_pids()
        assert m.request("/c").status >= 500
        killed = f"child {pid} exited on signal 9 (SIGKILL)"
        log = m.wait_log(killed)
        assert log.index("asking faulthandler") < log.index(killed)
        text = slowlog.read_text()
        assert f"pid {pid}\nrequest_terminate_timeout: the worker did not answer" in text
        # faulthandler's own format: every thread, innermost call first; the
        # request's is the main thread, the one the signal interrupted
        # (a pool's sync worker has a hand-off thread beside it).
        assert "(most recent call first):" in text
        current = text[text.index("Current thread") :]
        current = current.split("\nThread ")[0]
        frames = re.findall(r'File "[^"]+", line \d+ in (\w+)', current)
        assert frames[:2] == ["app_stuck_in_c", "app"], text
        wait_for(lambda: m.worker_pids() and pid not in m.worker_pids(), what="a new worker")
