"""An app that forks, and a child that returns into fcgi instead of exiting.

Threat: app code (or a library it calls) forks and the child, by mistake,
returns from the app like the parent. Without a guard the child answers the
same request a second time, goes on accepting connections as a worker the
master does not know, writes into its parent's scoreboard slot and survives
the master's SIGTERM. The child must leave without a byte on the connection.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest
from rawfcgi import RecordReader, connect, get_params, request_bytes, running_server
from test_pool_support import PoolMaster, wait_for

from fcgi import records as r

FORK_APP = """
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _fork(raise_in_child):
    pid = os.fork()
    if pid == 0:
        with open(os.path.join(HERE, "child.pid"), "w") as f:
            f.write(str(os.getpid()))
        if raise_in_child:
            raise RuntimeError("the forked child fails")


def app(environ, start_response):
    path = environ.get("PATH_INFO") or environ.get("SCRIPT_NAME", "")
    if path == "/fork":
        _fork(False)
    elif path == "/fork-raise":
        _fork(True)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"pid={os.getpid()}".encode()]


async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["path"] == "/fork":
        _fork(False)
    elif scope["path"] == "/fork-raise":
        _fork(True)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": f"pid={os.getpid()}".encode()})
"""


def all_records(address: str, target: str) -> list[tuple[int, int, bytes]]:
    """Send one request, read every record until the connection closes."""
    path, _, query = target.partition("?")
    with connect(address, timeout=20) as sock:
        sock.sendall(request_bytes(1, get_params(path, query)))
        reader = RecordReader(sock)
        records = []
        while True:
            try:
                record = reader.record()
            except (TimeoutError, ConnectionResetError):
                break
            if record is None:
                break
            records.append(record)
    return records


def exactly_one_response(records: list[tuple[int, int, bytes]]) -> bytes:
    ends = [rec for rec in records if rec[0] == r.END_REQUEST]
    assert len(ends) == 1, f"{len(ends)} END_REQUEST records: {records}"
    stdout = b"".join(c for t, rid, c in records if t == r.STDOUT and rid == 1)
    assert stdout.count(b"Status: ") == 1, stdout
    return stdout


def child_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def child_pid(directory: Path) -> int:
    text = wait_for(lambda: (directory / "child.pid").read_text(), what="the child's pid file")
    return int(text)


@pytest.mark.parametrize(
    ("worker", "app", "target"),
    [
        ("sync", "forkapp:app", "/fork"),
        ("sync", "forkapp:app", "/fork-raise"),
        ("trio", "forkapp:app", "/fork"),
        ("trio", "forkapp:app", "/fork-raise"),
        ("trio", "forkapp:asgi_app", "/fork"),
        ("trio", "forkapp:asgi_app", "/fork-raise"),
        ("asyncio", "forkapp:asgi_app", "/fork"),
        ("asyncio", "forkapp:asgi_app", "/fork-raise"),
    ],
)
def test_a_forked_child_never_serves_in_a_pool(
    tmp_path: Path, worker: str, app: str, target: str
) -> None:
    (tmp_path / "forkapp.py").write_text(textwrap.dedent(FORK_APP))
    with PoolMaster(tmp_path, ["--workers", "1", "--worker", worker], app=app) as m:
        m.wait_ready(1)
        (worker_pid,) = m.worker_pids()
        before = m.status()
        stdout = exactly_one_response(all_records(m.address, target))
        assert f"pid={worker_pid}".encode() in stdout
        child = child_pid(tmp_path)
        assert child != worker_pid
        # The next requests all go to the real worker, never to the child.
        bodies = [m.request("/").body for _ in range(20)]
        assert all(body == f"pid={worker_pid}".encode() for body in bodies), set(bodies)
        after = m.status()
        assert [p["pid"] for p in after["processes"]] == [worker_pid]
        # The status request before, the fork request, the 20 requests.
        served = after["processes"][0]["requests"] - before["processes"][0]["requests"]
        assert served == 22, (before, after)
        assert after["accepted conn"] - before["accepted conn"] == 22
        assert m.stop() == 0
    # Nothing of the pool is left once the master stopped: the child exited
    # as soon as it returned (a trio thread would otherwise linger, waiting
    # for a loop that does not exist in its process). A few seconds for a
    # loaded machine to schedule it.
    wait_for(lambda: child_gone(child), timeout=5, what="the forked child gone")


@pytest.mark.parametrize("worker", ["sync", "trio"])
def test_a_forked_child_never_serves_in_the_single_process_server(
    tmp_path: Path, worker: str
) -> None:
    (tmp_path / "forkapp.py").write_text(textwrap.dedent(FORK_APP))
    with running_server("forkapp:app", "--worker", worker, "--chdir", str(tmp_path)) as server:
        stdout = exactly_one_response(all_records(server.address, "/fork"))
        pid = server.proc.pid
        assert f"pid={pid}".encode() in stdout
        child = child_pid(tmp_path)
        bodies = [exactly_one_response(all_records(server.address, "/")) for _ in range(10)]
        assert all(f"pid={pid}".encode() in body for body in bodies)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    wait_for(lambda: child_gone(child), timeout=5, what="the forked child gone")
