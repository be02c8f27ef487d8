"""The asyncio worker (``--worker asyncio``) over real sockets, the CLI, a pool and nginx.

The trio worker's tests are not parametrized by worker, so the cases that
matter are written again here for ASGI apps on asyncio, with the trio tests'
client and helpers (:mod:`test_trio_worker`): multiplexed ids, limits,
abort, lifespan, backpressure, body caps, timeouts, hooks and graceful stop.
Each in-process test runs on uvloop and on asyncio's own loop (``loop``
fixture). Apps record what they saw in plain lists and ``threading`` events;
no assertion depends on how fast anything runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import signal
import socket
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from test_asgi import read_body, respond
from test_pool_support import PoolMaster
from test_trio_worker import (
    WAIT,
    RecordingHooks,
    Reply,
    Running,
    connect_when_ready,
    interleave,
    params_for,
    request_records,
    serve_command,
    wait_for,
)
from test_trio_worker import running_worker as trio_running_worker

from fcgi import records as r
from fcgi.asgi import LifespanFailure
from fcgi.asyncio_worker import AsyncioWorker, LoopFactory
from fcgi.connection import Limits
from fcgi.errors import ConfigError
from fcgi.interface import choose_worker
from fcgi.options import ServerOptions

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

LOOPS: dict[str, LoopFactory] = {"asyncio": asyncio.new_event_loop}
with contextlib.suppress(ImportError):
    import uvloop

    LOOPS["uvloop"] = uvloop.new_event_loop


@pytest.fixture(params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest) -> LoopFactory:
    return LOOPS[request.param]


def running_worker(
    app: Any, tmp_path: Path, loop: LoopFactory, hooks: Any = None, **settings: Any
) -> contextlib.AbstractContextManager[Running]:
    """An AsyncioWorker on ``loop`` serving ``app`` on a unix socket in a background thread."""
    make = functools.partial(AsyncioWorker, loop_factory=loop)
    return trio_running_worker(app, tmp_path, hooks, make=make, **settings)


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await respond(send, 200, b"hello " + scope["query_string"])


# -- concurrency and limits ------------------------------------------------------------------


def test_hundred_interleaved_requests_on_one_connection_run_at_once(
    tmp_path: Path, loop: LoopFactory
) -> None:
    seen = {"in_flight": 0, "peak": 0}
    all_in: list[asyncio.Event] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if not all_in:
            all_in.append(asyncio.Event())
        seen["in_flight"] += 1
        seen["peak"] = max(seen["peak"], seen["in_flight"])
        if seen["in_flight"] == 100:
            all_in[0].set()
        async with asyncio.timeout(WAIT):
            await all_in[0].wait()  # nobody answers before all 100 are in the app
        await asyncio.sleep(0.05)
        seen["in_flight"] -= 1
        await respond(send, 200, b"id=" + scope["query_string"])

    with running_worker(app, tmp_path, loop, max_reqs=100) as w:
        client = w.client()
        client.send(
            interleave(
                request_records(rid, params_for("/sleep", query=str(rid))) for rid in range(1, 101)
            )
        )
        replies = {rid: client.reply(rid) for rid in range(1, 101)}
    assert seen["peak"] == 100
    for rid, reply in replies.items():
        assert (reply.status, reply.body) == (200, f"id={rid}".encode())
        assert reply.header("Content-Length") == str(len(reply.body))
        assert reply.protocol_status == r.ProtocolStatus.REQUEST_COMPLETE


def test_get_values_reports_multiplexing_and_the_limits(tmp_path: Path, loop: LoopFactory) -> None:
    with running_worker(hello, tmp_path, loop, max_conns=7, max_reqs=9) as w:
        client = w.client()
        values = client.get_values([b"FCGI_MPXS_CONNS", b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS"])
        assert values == {b"FCGI_MPXS_CONNS": b"1", b"FCGI_MAX_CONNS": b"7", b"FCGI_MAX_REQS": b"9"}
        assert client.request(1, params_for("/", query="x")).body == b"hello x"


def test_requests_past_max_reqs_get_overloaded_on_any_connection(
    tmp_path: Path, loop: LoopFactory
) -> None:
    entered = threading.Semaphore(0)
    release = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        entered.release()
        while not release.is_set():
            await asyncio.sleep(0.01)
        await respond(send, 200, b"done")

    with running_worker(app, tmp_path, loop, max_reqs=2) as w:
        a = w.client()
        a.send(interleave(request_records(rid, params_for("/")) for rid in (1, 2)))
        assert entered.acquire(timeout=WAIT) and entered.acquire(timeout=WAIT)
        a.send(b"".join(request_records(3, params_for("/"))))
        refused = a.reply(3)
        assert (refused.protocol_status, refused.stdout) == (r.ProtocolStatus.OVERLOADED, b"")
        b = w.client()
        assert b.request(1, params_for("/")).protocol_status == r.ProtocolStatus.OVERLOADED
        release.set()
        for rid in (1, 2):
            assert a.reply(rid).body == b"done"
        reply = b.request(2, params_for("/"))  # capacity is back
        assert (reply.protocol_status, reply.body) == (r.ProtocolStatus.REQUEST_COMPLETE, b"done")


def test_past_max_conns_a_busy_worker_refuses_and_a_quiet_connection_makes_room(
    tmp_path: Path, loop: LoopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    entered = threading.Event()
    release = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/wait":
            entered.set()
            while not release.is_set():
                await asyncio.sleep(0.01)
        await respond(send, 200, scope["path"].encode())

    with running_worker(app, tmp_path, loop, max_conns=1) as w:
        first = w.client()
        assert first.get_values([b"FCGI_MAX_CONNS"]) == {b"FCGI_MAX_CONNS": b"1"}  # accepted
        first.send(b"".join(request_records(1, params_for("/wait"))))
        assert entered.wait(WAIT)
        second = w.client()
        assert second.closed_by_server()  # every connection is busy
        release.set()
        assert first.reply(1).body == b"/wait"
        third = w.client()  # the first is quiet now: it makes room
        assert third.request(1, params_for("/new")).body == b"/new"
        assert first.closed_by_server()
    assert "all 1 connections are busy (max_conns)" in caplog.text
    assert "to make room" in caplog.text


# -- abort and disconnect ----------------------------------------------------------------------


def test_abort_request_gives_the_app_http_disconnect_and_ends_the_request(
    tmp_path: Path, loop: LoopFactory
) -> None:
    messages: list[str] = []
    waiting = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/poll":
            await read_body(receive)
            waiting.set()
            messages.append((await receive())["type"])  # long poll: only a disconnect ends it
            return
        await respond(send, 200, b"fine")

    with running_worker(app, tmp_path, loop) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/poll"))))
        assert waiting.wait(WAIT)
        client.send(r.encode_record(r.ABORT_REQUEST, 1))
        aborted = client.reply(1)
        assert aborted.protocol_status == r.ProtocolStatus.REQUEST_COMPLETE
        assert aborted.app_status == 1 and aborted.stdout == b""
        assert messages == ["http.disconnect"]
        assert client.request(1, params_for("/")).body == b"fine"  # the id is free again
        assert w.worker.active_requests == 0


def test_abort_request_cancels_an_app_in_asyncio_sleep(tmp_path: Path, loop: LoopFactory) -> None:
    log: list[str] = []
    sleeping = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            sleeping.set()
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    with running_worker(app, tmp_path, loop) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/"))))
        assert sleeping.wait(WAIT)
        client.send(r.encode_record(r.ABORT_REQUEST, 1))
        assert client.reply(1).protocol_status == r.ProtocolStatus.REQUEST_COMPLETE
        assert log == ["cancelled"]


def test_abort_before_params_ends_the_request_without_running_the_app(
    tmp_path: Path, loop: LoopFactory
) -> None:
    with running_worker(hello, tmp_path, loop) as w:
        client = w.client()
        client.send(r.encode_begin_request(1, r.Role.RESPONDER, True))
        client.send(r.encode_record(r.ABORT_REQUEST, 1))
        reply = client.reply(1)
        assert (reply.app_status, bytes(reply.stdout)) == (1, b"")
        assert client.request(2, params_for("/", query="after")).body == b"hello after"


def test_a_web_server_that_goes_away_ends_only_its_connection(
    tmp_path: Path, loop: LoopFactory
) -> None:
    messages: list[str] = []
    waiting = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/hang":
            await read_body(receive)
            waiting.set()
            messages.append((await receive())["type"])
            return
        await respond(send, 200, b"other")

    with running_worker(app, tmp_path, loop) as w:
        other = w.client()
        doomed = w.client()
        doomed.send(b"".join(request_records(1, params_for("/hang"))))
        assert waiting.wait(WAIT)
        doomed.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        doomed.close()  # a reset, not a clean close
        wait_for(lambda: messages == ["http.disconnect"], "http.disconnect")
        wait_for(lambda: w.worker.active_requests == 0, "the request to be dropped")
        assert other.request(1, params_for("/")).body == b"other"


def test_app_errors_become_500s_with_the_traceback_on_stderr(
    tmp_path: Path, loop: LoopFactory
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/raise":
            raise ValueError("secret-detail")
        if scope["path"] == "/nothing":
            return
        if scope["path"] == "/late":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise ValueError("after the headers")
        await respond(send, 204, b"")

    with running_worker(app, tmp_path, loop) as w:
        client = w.client()
        reply = client.request(1, params_for("/raise"))
        assert (reply.status, reply.app_status) == (500, 1)
        assert b"secret-detail" not in reply.stdout and b"secret-detail" in reply.stderr
        assert client.request(2, params_for("/nothing")).status == 500
        late = client.request(3, params_for("/late"))
        assert (late.status, late.body, late.app_status) == (200, b"partial", 1)
        ok = client.request(4, params_for("/"))
        assert (ok.status, ok.header("Content-Length")) == (204, None)


# -- bodies: streaming, caps, spooling ------------------------------------------------------------


def test_request_and_response_both_stream(tmp_path: Path, loop: LoopFactory) -> None:
    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            await send(
                {"type": "http.response.body", "body": message["body"].upper(), "more_body": True}
            )
            if not message["more_body"]:
                break
        await send({"type": "http.response.body", "body": b"|end"})

    pieces = [b"alpha;", b"beta;", b"gamma;"]
    with running_worker(echo, tmp_path, loop) as w:
        client = w.client()
        total = sum(map(len, pieces))
        records = request_records(
            1, params_for("/", method="POST", body=b"x" * total), end_stdin=False
        )
        client.send(b"".join(records))
        echoed = b""
        for piece in pieces:
            client.send(r.encode_record(r.STDIN, 1, piece))  # each comes back before the next
            echoed += piece.upper()
            client.until(lambda e=echoed: client.replies.get(1, Reply()).stdout.endswith(e))
        client.send(r.encode_record(r.STDIN, 1))
        reply = client.reply(1)
    assert reply.body == b"ALPHA;BETA;GAMMA;|end"


def test_body_caps_from_the_core_give_413(tmp_path: Path, loop: LoopFactory) -> None:
    ran: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        ran.append(scope["path"])
        body = await read_body(receive)
        await respond(send, 200, b"read %d" % len(body))

    limits = Limits(max_body_size=1000)
    with running_worker(app, tmp_path, loop, limits=limits) as w:
        client = w.client()
        # Declared too large: refused before the app runs.
        big = b"x" * 2000
        reply = client.request(1, params_for("/declared", method="POST", body=big), big)
        assert (reply.status, reply.app_status) == (413, 1)
        # No CONTENT_LENGTH, a body that crosses the cap: the app's read fails.
        params = params_for("/undeclared", method="POST")
        del params["CONTENT_LENGTH"]
        client2 = w.client()
        reply = client2.request(2, params, big)
        assert reply.status == 413
        # Within the cap: served.
        small = b"y" * 999
        reply = w.client().request(3, params_for("/ok", method="POST", body=small), small)
        assert reply.body == b"read 999"
    assert ran == ["/undeclared", "/ok"]


def test_a_large_body_is_spooled_and_arrives_whole(tmp_path: Path, loop: LoopFactory) -> None:
    go = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while not go.is_set():
            await asyncio.sleep(0.01)
        body = await read_body(receive)
        await respond(send, 200, hashlib.sha256(body).hexdigest().encode())

    body = os.urandom(1 << 20) * 3
    with running_worker(app, tmp_path, loop, spool_threshold=16 * 1024) as w:
        client = w.client()
        # sendall returns once the worker took every byte, while the app waits.
        client.send(b"".join(request_records(1, params_for("/", method="POST", body=body), body)))
        assert client.get_values([b"FCGI_MPXS_CONNS"]) == {b"FCGI_MPXS_CONNS": b"1"}
        go.set()
        assert client.reply(1).body == hashlib.sha256(body).hexdigest().encode()


# -- output: fairness and backpressure ----------------------------------------------------------


def test_two_large_responses_on_one_connection_take_turns(
    tmp_path: Path, loop: LoopFactory
) -> None:
    piece = b"x" * 65536

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(64):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    with running_worker(app, tmp_path, loop) as w:
        client = w.client()
        client.send(interleave(request_records(rid, params_for("/big")) for rid in (1, 2)))
        replies = {rid: client.reply(rid) for rid in (1, 2)}
    for reply in replies.values():
        assert len(reply.body) == 64 * 65536
    order = [rid for rtype, rid, content in client.log if rtype == r.STDOUT and content]
    last = {rid: max(i for i, x in enumerate(order) if x == rid) for rid in (1, 2)}
    first = {rid: order.index(rid) for rid in (1, 2)}
    assert first[2] < last[1] and first[1] < last[2], order
    assert sum(1 for a, b in itertools.pairwise(order) if a != b) >= 8, order


def test_a_slow_reader_holds_the_app_back_instead_of_filling_memory(
    tmp_path: Path, loop: LoopFactory
) -> None:
    produced = [0]
    total_pieces = 1024  # 64 MiB
    piece = bytes(65536)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(total_pieces):
            produced[0] += 1
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    with running_worker(app, tmp_path, loop) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/huge"))))
        last, still = -1, 0
        deadline = time.monotonic() + WAIT
        while still < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
            still = still + 1 if produced[0] == last else 0
            last = produced[0]
        assert still == 5, "the app never stopped producing for a reader that does not read"
        assert produced[0] < total_pieces // 4, f"{produced[0]} pieces buffered for a non-reader"
        reply = client.reply(1)
    assert len(reply.body) == total_pieces * len(piece)


def test_send_timeout_ends_a_connection_whose_reader_stalls(
    tmp_path: Path, loop: LoopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    outcome: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": bytes(65536), "more_body": True})
        except OSError:
            outcome.append("send raised")

    with running_worker(app, tmp_path, loop, send_timeout=0.5, read_timeout=WAIT) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/"))))  # and never read
        wait_for(lambda: outcome == ["send raised"], "the app's send() to fail")
        wait_for(lambda: w.worker.active_requests == 0, "the request to end")
    assert "send_timeout" in caplog.text


# -- timeouts and connection life ----------------------------------------------------------------


def test_without_keep_conn_the_connection_is_closed_after_the_answer(
    tmp_path: Path, loop: LoopFactory
) -> None:
    with running_worker(hello, tmp_path, loop) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/", query="k"), keep_conn=False)))
        assert client.reply(1).body == b"hello k"
        assert client.closed_by_server()


def test_idle_and_silent_connections_are_closed_after_their_timeouts(
    tmp_path: Path, loop: LoopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fcgi.worker")
    with running_worker(hello, tmp_path, loop, read_timeout=0.3) as w:
        idle = w.client()
        assert idle.request(1, params_for("/", query="a")).body == b"hello a"
        assert idle.closed_by_server()
    assert "closing idle connection" in caplog.text
    caplog.clear()
    (tmp_path / "second").mkdir()
    with running_worker(hello, tmp_path / "second", loop, request_header_timeout=0.3) as w:
        silent = w.client()
        silent.send(r.encode_begin_request(1, r.Role.RESPONDER, True))  # and no PARAMS
        assert silent.closed_by_server()
        assert w.client().request(1, params_for("/", query="new")).body == b"hello new"
    assert "request_header_timeout" in caplog.text


def test_rejected_params_get_an_error_and_the_connection_goes_on(
    tmp_path: Path, loop: LoopFactory
) -> None:
    with running_worker(hello, tmp_path, loop, limits=Limits(max_params=3)) as w:
        client = w.client()
        assert client.request(1, params_for("/")).status == 431
        assert client.request(2, {"QUERY_STRING": "ok"}).body == b"hello ok"


# -- lifespan -----------------------------------------------------------------------------------


def test_lifespan_startup_state_and_shutdown(tmp_path: Path, loop: LoopFactory) -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["greeting"] = "hi from startup"
                    events.append("startup")
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    events.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await respond(send, 200, scope["state"]["greeting"].encode())

    with running_worker(app, tmp_path, loop) as w:
        assert w.client().request(1, params_for("/")).body == b"hi from startup"
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]


def test_lifespan_startup_failure_stops_the_worker(tmp_path: Path, loop: LoopFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(LifespanFailure, match="no database"), running_worker(app, tmp_path, loop):
        pass


def test_an_app_without_lifespan_is_served(tmp_path: Path, loop: LoopFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", "only http here"
        await respond(send, 200, b"no lifespan")

    with running_worker(app, tmp_path, loop) as w:
        assert w.client().request(1, params_for("/")).body == b"no lifespan"


# -- stopping and hooks ----------------------------------------------------------------------


def test_stop_finishes_requests_in_flight_then_returns(tmp_path: Path, loop: LoopFactory) -> None:
    entered = threading.Event()
    release = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        entered.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        await respond(send, 200, b"finished")

    with running_worker(app, tmp_path, loop) as w:
        idle = w.client()
        assert idle.get_values([b"FCGI_MPXS_CONNS"])  # accepted, then idle
        busy = w.client()
        busy.send(b"".join(request_records(1, params_for("/"))))
        assert entered.wait(WAIT)
        w.worker.stop()
        assert idle.closed_by_server()  # idle connections close at once
        assert w.thread.is_alive()
        # A request already sent on the busy connection is served too.
        busy.send(b"".join(request_records(2, params_for("/"))))
        release.set()
        assert busy.reply(1).body == b"finished"
        assert busy.reply(2).body == b"finished"
        w.join()


def test_hooks_are_called_and_should_stop_ends_the_worker(
    tmp_path: Path, loop: LoopFactory
) -> None:
    hooks = RecordingHooks(stop_after=2)
    with running_worker(hello, tmp_path, loop, hooks=hooks) as w:
        client = w.client()
        assert client.request(1, params_for("/", query="ping")).body == b"pong"  # intercepted
        assert client.request(1, params_for("/", query="two")).body == b"hello two"
        w.join()  # stopped by itself
    assert hooks.events == [
        "accepted",
        "started ping",
        "finished 200",
        "started two",
        "finished 200",
    ]


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
    for site_name in ("fcgi.conf", "fcgi-keepalive.conf"):
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
