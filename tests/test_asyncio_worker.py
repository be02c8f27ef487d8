"""What only the asyncio worker (``--worker asyncio``) does: it refuses WSGI apps, it
runs apps that use asyncio directly (Starlette streaming with asyncio.sleep, tasks),
and it serves from the CLI, a pool and behind nginx.

The ASGI behaviours it shares with the trio worker (limits, abort, lifespan,
backpressure, body caps, timeouts, hooks, graceful stop) are written once in
test_asgi.py and run under both workers there. The in-process tests here run
on uvloop and on asyncio's own loop (``loop`` fixture), with the trio tests'
client and helpers (:mod:`test_trio_worker`). Apps record what they saw in
plain lists and ``threading`` events; no assertion depends on how fast
anything runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asgi_cases import LOOPS
from rawfcgi import RecordReader
from test_pool_support import PoolMaster
from test_trio_worker import (
    ROOT,
    WAIT,
    Running,
    connect_when_ready,
    params_for,
    request_records,
    serve_command,
)
from test_trio_worker import running_worker as trio_running_worker

from fcgi import records as r
from fcgi.asyncio_worker import AsyncioWorker, LoopFactory
from fcgi.errors import ConfigError
from fcgi.interface import choose_worker
from fcgi.options import ServerOptions


@pytest.fixture(params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest) -> LoopFactory:
    return LOOPS[request.param]


def running_worker(
    app: Any, tmp_path: Path, loop: LoopFactory, hooks: Any = None, **settings: Any
) -> contextlib.AbstractContextManager[Running]:
    """An AsyncioWorker on ``loop`` serving ``app`` on a unix socket in a background thread."""
    make = functools.partial(AsyncioWorker, loop_factory=loop)
    return trio_running_worker(app, tmp_path, hooks, make=make, **settings)


# -- what the asyncio worker serves --------------------------------------------------------------


def test_a_wsgi_app_is_a_configuration_error() -> None:
    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return []

    with pytest.raises(ConfigError, match="ASGI apps only"):
        choose_worker("asyncio", "wsgi")
    with pytest.raises(ConfigError, match="ASGI apps only"):
        AsyncioWorker([], wsgi, ServerOptions())
    assert choose_worker("asyncio", "asgi") == "asyncio"


# -- FastAPI/Starlette style: asyncio in the app --------------------------------------------------


def make_starlette_app() -> Any:
    """A Starlette app that uses asyncio directly: a stream with asyncio.sleep between
    chunks (a 500 under the trio worker), a task it creates, lifespan state, an upload.

    With FCGI_TEST_LIFESPAN_LOG set, lifespan events are appended to that file.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    log_path = os.environ.get("FCGI_TEST_LIFESPAN_LOG")

    def note(event: str) -> None:
        if log_path:
            with open(log_path, "a") as f:
                f.write(event + "\n")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        note("startup")
        yield {"started": "yes"}
        note("shutdown")

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(5):
                await asyncio.sleep(0.02)
                yield f"chunk {i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    async def task(request: Request) -> JSONResponse:
        value = await asyncio.create_task(asyncio.sleep(0.01, result=os.getpid()))
        return JSONResponse({"pid": value, "started": request.state.started})

    async def upload(request: Request) -> JSONResponse:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            digest.update(chunk)
        return JSONResponse({"size": size, "sha256": digest.hexdigest()})

    return Starlette(
        routes=[
            Route("/stream", stream),
            Route("/task", task),
            Route("/upload", upload, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def test_starlette_streaming_with_asyncio_sleep_in_process(
    tmp_path: Path, loop: LoopFactory
) -> None:
    with running_worker(make_starlette_app(), tmp_path, loop) as w:
        client = w.client()
        reply = client.request(1, params_for("/stream"))
        assert (reply.status, reply.app_status) == (200, 0)
        assert reply.body == b"".join(f"chunk {i}\n".encode() for i in range(5))
        stdout_records = [c for t, rid, c in client.log if t == r.STDOUT and rid == 1 and c]
        assert len(stdout_records) > 1  # streamed, not one piece
        reply = client.request(2, params_for("/task"))
        assert json.loads(reply.body) == {"pid": os.getpid(), "started": "yes"}


def test_starlette_through_nginx_with_a_pool_of_two_asyncio_workers(
    start_backend: Any, start_nginx: Any, tmp_path: Path
) -> None:
    lifespan_log = tmp_path / "lifespan.log"
    os.environ["FCGI_TEST_LIFESPAN_LOG"] = str(lifespan_log)
    try:
        backend = start_backend(
            "unix",
            "test_asyncio_worker:make_starlette_app()",
            ["--worker", "asyncio", "--workers", "2", "--user", "root"],
        )
    finally:
        del os.environ["FCGI_TEST_LIFESPAN_LOG"]
    for site_name in ("fcgi-new-connection.conf", "fcgi.conf"):
        site = start_nginx(site_name, backend)
        pids = set()
        for _ in range(20):
            response = site.request("GET", "/task")
            assert response.status == 200, site.explain(response)
            data = json.loads(response.body)
            assert data["started"] == "yes"
            pids.add(data["pid"])
        response = site.request("GET", "/stream")
        assert response.status == 200, site.explain(response)
        assert response.body == b"".join(f"chunk {i}\n".encode() for i in range(5))
        body = os.urandom(1 << 20)
        response = site.request("POST", "/upload", body=body)
        assert response.status == 200, site.explain(response)
        assert json.loads(response.body) == {
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        site.stop()
    assert lifespan_log.read_text() == "startup\nstartup\n"  # once per worker
    backend.stop()
    assert backend.exit_status == 0, backend.diagnostics()
    assert lifespan_log.read_text().count("shutdown") == 2


# -- the command line and the pool -----------------------------------------------------------


ASGI_SOURCE = """
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["path"] == "/sleep":
        await asyncio.sleep(float(scope["query_string"] or b"0.3"))
    body = f"asgi pid={os.getpid()} path={scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""


def test_cli_serves_with_the_asyncio_worker_and_stops_gracefully_on_sigterm(
    tmp_path: Path,
) -> None:
    sock = str(tmp_path / "cli.sock")
    proc = serve_command(
        tmp_path, "cliapp", ASGI_SOURCE, "--worker", "asyncio", "--max-reqs", "5",
        "--bind", f"unix:{sock}",
    )  # fmt: skip
    try:
        client = connect_when_ready(sock, proc)
        assert client.get_values([b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS"]) == {
            b"FCGI_MAX_REQS": b"5",
            b"FCGI_MPXS_CONNS": b"1",
        }
        assert client.request(1, params_for("/hi")).body.startswith(b"asgi pid=")
        # A request in flight when SIGTERM comes is answered before the exit.
        client.send(b"".join(request_records(2, params_for("/sleep", query="0.5"))))
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert client.reply(2).body.startswith(b"asgi pid=")
        assert proc.wait(WAIT) == 0
        err = proc.communicate()[1]
        assert b"asyncio worker" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_a_wsgi_app_with_the_asyncio_worker(tmp_path: Path) -> None:
    proc = serve_command(
        tmp_path,
        "wsgiapp",
        """
        def app(environ, start_response):
            start_response("200 OK", [])
            return [b""]
        """,
        "--worker",
        "asyncio",
        "--bind",
        f"unix:{tmp_path / 'w.sock'}",
    )
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2, err
    assert b"ASGI apps only" in err


def test_pool_of_asyncio_workers_serves_concurrently_and_shows_in_the_status(
    tmp_path: Path,
) -> None:
    (tmp_path / "asgiapp.py").write_text(textwrap.dedent(ASGI_SOURCE))
    with PoolMaster(tmp_path, ["--workers", "2", "--worker", "asyncio"], app="asgiapp:app") as m:
        m.wait_ready(2)
        assert m.request("/hello").body.startswith(b"asgi pid=")
        results: list[bytes] = []
        threads = [
            threading.Thread(target=lambda: results.append(m.request("/sleep").body))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert len(results) == 8 and all(b.startswith(b"asgi pid=") for b in results)
        assert m.status()["accepted conn"] >= 9


def test_a_descriptor_limit_below_max_conns_is_fitted_and_no_connection_vanishes(
    tmp_path: Path,
) -> None:
    """RLIMIT_NOFILE 64 (soft and hard) against max_conns 256: said at start, kept to after.

    Out of descriptors, libuv (under uvloop) accepts and closes queued
    connections itself, so the worker never saw them: 104 of 150 reset, with
    not a line in the log. The worker now serves at most what the limit
    leaves room for, so the limit is never reached by connections: one it
    cannot take is closed by max_conns, with its line.
    """
    sock = str(tmp_path / "fd.sock")
    (tmp_path / "cliapp.py").write_text(textwrap.dedent(ASGI_SOURCE))
    log_path = tmp_path / "log"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fcgi", "serve", "cliapp:app", "--worker", "asyncio",
             "--bind", f"unix:{sock}", "--max-conns", "256"],
            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=low_limit,
        )  # fmt: skip
    try:
        connect_when_ready(sock, proc).close()
        clients = []
        for _ in range(150):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(WAIT)
            client.connect(sock)
            # Not kept: an answered connection is closed by the worker, never
            # one max_conns closes later (every close counted below is a drop).
            request = request_records(1, params_for("/sleep", query="0.3"), keep_conn=False)
            with contextlib.suppress(OSError):
                client.sendall(b"".join(request))
            clients.append(client)
        answered = dropped = 0
        for client in clients:
            try:
                answered += RecordReader(client).reply(1).status == 200
            except OSError:
                dropped += 1
            client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(WAIT)
        log = log_path.read_text()
        assert "does not fit the descriptor limit" in log, log
        closed = log.count("(max_conns)")
        assert answered + dropped == 150 and dropped == closed, (answered, dropped, log[-3000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


HUNG_STARTUP_SOURCE = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup, never answered: the next receive waits for good
        await receive()
"""


@pytest.mark.parametrize("worker", ["asyncio", "trio"])
def test_sigterm_stops_a_worker_whose_lifespan_startup_hangs(tmp_path: Path, worker: str) -> None:
    """An app that never answers lifespan.startup: SIGTERM still stops the process, with exit 0.

    The wait for the app's answer did not look at the stop; only SIGKILL
    (systemd's, 90 s later) ended it.
    """
    sock = tmp_path / "hung.sock"
    proc = serve_command(
        tmp_path, "hungapp", HUNG_STARTUP_SOURCE, "--worker", worker, "--bind", f"unix:{sock}"
    )
    try:
        deadline = time.monotonic() + WAIT
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # not a bound: lets the startup wait begin
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        err = proc.communicate()[1].decode()
        assert "stopped before the app's lifespan startup completed" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_drains_of_refused_uploads_stay_within_the_descriptor_limit(tmp_path: Path) -> None:
    """300 refused uploads whose peers stay: drains do not take the descriptors others need.

    A connection draining a refused body has left max_conns' count but still
    holds a descriptor for up to 2 s: with no bound on them the worker ran out
    (RLIMIT_NOFILE 200) and libuv reset every new connection, unlogged.
    """
    sock = str(tmp_path / "drain.sock")
    (tmp_path / "cliapp.py").write_text(textwrap.dedent(ASGI_SOURCE))

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    proc = subprocess.Popen(
        [sys.executable, "-m", "fcgi", "serve", "cliapp:app", "--worker", "asyncio",
         "--bind", f"unix:{sock}", "--max-body-size", "1000"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=low_limit,
    )  # fmt: skip
    refused = []
    try:
        connect_when_ready(sock, proc).close()
        upload = params_for("/up", method="POST", body=b"x" * 100_000)
        # Not kept, and the body goes on: each answered 413, then drained.
        head = b"".join(request_records(1, upload, b"x" * 100, keep_conn=False)[:-1])
        for _ in range(300):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(WAIT)
            client.connect(sock)
            client.sendall(head)
            assert RecordReader(client).reply(1).status == 413
            refused.append(client)
        for _ in range(20):
            good = connect_when_ready(sock, proc)
            assert good.request(1, params_for("/ok")).body.startswith(b"asgi pid=")
            good.close()
    finally:
        for client in refused:
            client.close()
        proc.kill()
        proc.wait()
