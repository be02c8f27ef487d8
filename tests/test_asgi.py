"""ASGI: the scope, every behaviour the trio and asyncio workers share, lifespan, and a
Starlette app in-process and through a real nginx.

The shared behaviours (concurrency and limits, abort and disconnect, app
errors, bodies, backpressure, timeouts, lifespan, stopping and hooks) are
written once and run under each worker kind (the ``kind`` fixture: trio,
asyncio, and uvloop when installed; see asgi_cases.py). What only one worker
does stays in test_trio_worker.py or test_asyncio_worker.py.

The worker runs in a thread of the test process (see ``running_worker`` in
test_trio_worker.py); apps record what they saw in plain lists and events.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http
import itertools
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asgi_cases import KINDS, Receive, Scope, Send, WorkerKind, hello, read_body, respond
from hypothesis import given, settings
from hypothesis import strategies as st
from test_trio_worker import (
    WAIT,
    RecordingHooks,
    Reply,
    connect_when_ready,
    interleave,
    params_for,
    request_records,
    running_worker,
    serve_command,
    wait_for,
)

import fcgi.asgi
from fcgi import records as r
from fcgi.asgi import LifespanFailure, _encode_head, build_scope
from fcgi.connection import Limits
from fcgi.errors import ConfigError
from fcgi.interface import choose_worker, detect_interface, resolve_interface
from fcgi.spool import SpooledBody

# -- scope and detection --------------------------------------------------------------------------


def test_a_body_piece_that_ends_the_body_reaches_the_app_as_that_very_bytes_object() -> None:
    # A body in one record, CONTENT_LENGTH its length: receive() hands the
    # piece on uncut (compiled, even a slice of all of it copies the bytes).
    piece = b"p" * 16384
    params = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "CONTENT_LENGTH": str(len(piece))}
    params |= {"REQUEST_URI": "/", "SERVER_PROTOCOL": "HTTP/1.1"}

    class Waits:
        async def checkpoint(self) -> None:
            pass

        async def pause(self) -> None:
            pass

        async def next_piece(self, body: SpooledBody, timeout: float) -> bytes | None:
            return body.receive_nowait()

        def event(self) -> Any:
            raise AssertionError("not needed here")

    async def first(pieces: list[bytes], length: int) -> dict[str, Any]:
        body = SpooledBody(threshold=1 << 20)
        for p in pieces:
            body.push(p)
        body.end()
        scope = build_scope(params | {"CONTENT_LENGTH": str(length)})
        responder = fcgi.asgi.ASGIResponder(hello, scope, body, lambda data: None, waits=Waits())
        return await responder.receive()

    message = asyncio.run(first([piece], len(piece)))
    assert message["body"] is piece and message["more_body"] is False
    # Longer than CONTENT_LENGTH: cut there, and the body ends.
    message = asyncio.run(first([piece + b"xy", b"more"], len(piece)))
    assert message == {"type": "http.request", "body": piece, "more_body": False}


def test_scope_from_nginx_style_params() -> None:
    params = {
        "REQUEST_METHOD": "post",
        "SCRIPT_NAME": "/caf\xc3\xa9/x",  # nginx: the decoded path, UTF-8 bytes as latin-1
        "REQUEST_URI": "/caf%C3%A9/x?a=1&b=%20",
        "QUERY_STRING": "a=1&b=%20",
        "SERVER_PROTOCOL": "HTTP/1.0",
        "SERVER_NAME": "example.org",
        "SERVER_ADDR": "10.0.0.1",
        "SERVER_PORT": "8080",
        "REMOTE_ADDR": "192.0.2.9",
        "REMOTE_PORT": "4711",
        "HTTPS": "on",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "2",
        "HTTP_HOST": "example.org",
        "HTTP_X_FORWARDED_FOR": "1.2.3.4",
        "HTTP_CONTENT_LENGTH": "999",
    }
    scope = build_scope(params, state={"db": "conn"})
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.0"
    assert scope["method"] == "POST"
    assert scope["scheme"] == "https"
    assert scope["path"] == "/café/x"
    assert scope["root_path"] == ""
    assert scope["raw_path"] == b"/caf%C3%A9/x"
    assert scope["query_string"] == b"a=1&b=%20"
    assert sorted(scope["headers"]) == [
        (b"content-length", b"2"),
        (b"content-type", b"application/json"),
        (b"host", b"example.org"),
        (b"x-forwarded-for", b"1.2.3.4"),
    ]
    assert scope["client"] == ("192.0.2.9", 4711)
    assert scope["server"] == ("10.0.0.1", 8080)
    assert scope["state"] == {"db": "conn"}
    assert scope["extensions"]["fastcgi"]["params"] is params


def test_scope_root_path_from_path_info_and_from_a_mount_point() -> None:
    split = {"SCRIPT_NAME": "/app", "PATH_INFO": "/users/1", "REQUEST_URI": "/app/users/1"}
    scope = build_scope(split)
    assert (scope["root_path"], scope["path"]) == ("/app", "/app/users/1")
    whole = {"SCRIPT_NAME": "/app/users/1", "REQUEST_URI": "/app/users/1"}
    scope = build_scope(whole, mount="/app")
    assert (scope["root_path"], scope["path"]) == ("/app", "/app/users/1")
    scope = build_scope(whole)
    assert (scope["root_path"], scope["path"]) == ("", "/app/users/1")
    bare = build_scope({"REQUEST_URI": "/only/uri?q"})
    assert (bare["path"], bare["raw_path"], bare["http_version"]) == (
        "/only/uri",
        b"/only/uri",
        "1.1",
    )
    assert bare["client"] is None and bare["server"] is None and "state" not in bare


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    return []


async def asgi_function(scope: Scope, receive: Receive, send: Send) -> None:
    pass


class ASGIClass:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pass


async def two_args(scope: Scope, receive: Receive) -> None:
    pass


def test_detect_interface() -> None:
    from starlette.applications import Starlette

    assert detect_interface(wsgi_app) == "wsgi"
    assert detect_interface(asgi_function) == "asgi"
    assert detect_interface(ASGIClass()) == "asgi"
    assert detect_interface(Starlette()) == "asgi"
    assert detect_interface(functools.partial(asgi_function)) == "asgi"
    with pytest.raises(ConfigError, match="scope, receive, send"):
        detect_interface(two_args)
    assert resolve_interface(asgi_function, "wsgi") == "wsgi"
    with pytest.raises(ConfigError):
        resolve_interface(wsgi_app, "rsgi")
    assert choose_worker("sync", "asgi") == "asyncio"
    assert choose_worker("trio", "asgi") == "trio"
    assert choose_worker("sync", "wsgi") == "sync"


# -- both workers: concurrency and limits -------------------------------------------------------


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> WorkerKind:
    """The worker (and loop) a shared ASGI test runs under: trio, asyncio, uvloop."""
    return KINDS[request.param]


def test_hundred_interleaved_requests_on_one_connection_run_at_once(
    tmp_path: Path, kind: WorkerKind
) -> None:
    seen = {"in_flight": 0, "peak": 0}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        seen["in_flight"] += 1
        seen["peak"] = max(seen["peak"], seen["in_flight"])
        deadline = time.monotonic() + WAIT
        while seen["peak"] < 100 and time.monotonic() < deadline:
            await kind.sleep(0.01)  # nobody answers before all 100 are in the app
        await kind.sleep(0.05)
        seen["in_flight"] -= 1
        await respond(send, 200, b"id=" + scope["query_string"])

    with kind.running(app, tmp_path, max_reqs=100) as w:
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


def test_message_and_body_types_are_checked_as_before(tmp_path: Path, kind: WorkerKind) -> None:
    """A bytes subclass is a body; a list of pairs is not a message (hostile review)."""

    class Marked(bytes):
        pass

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        start = {"type": "http.response.start", "status": 200, "headers": []}
        if scope["path"] == "/pairs":
            await send(list(start.items()))  # type: ignore[arg-type]
            return
        await send(start)
        await send({"type": "http.response.body", "body": Marked(b"marked")})

    with kind.running(app, tmp_path) as w:
        client = w.client()
        assert client.request(1, params_for("/subclass")).body == b"marked"
        assert client.request(2, params_for("/pairs")).status == 500


def test_get_values_reports_multiplexing_and_the_limits(tmp_path: Path, kind: WorkerKind) -> None:
    with kind.running(hello, tmp_path, max_conns=7, max_reqs=9) as w:
        client = w.client()
        values = client.get_values([b"FCGI_MPXS_CONNS", b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS"])
        assert values == {b"FCGI_MPXS_CONNS": b"1", b"FCGI_MAX_CONNS": b"7", b"FCGI_MAX_REQS": b"9"}
        assert client.request(1, params_for("/", query="x")).body == b"hello x"


def test_requests_past_max_reqs_get_overloaded_on_any_connection(
    tmp_path: Path, kind: WorkerKind
) -> None:
    entered = threading.Semaphore(0)
    release = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        entered.release()
        while not release.is_set():
            await kind.sleep(0.01)
        await respond(send, 200, b"done")

    with kind.running(app, tmp_path, max_reqs=2) as w:
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
    tmp_path: Path, kind: WorkerKind, caplog: pytest.LogCaptureFixture
) -> None:
    entered = threading.Event()
    release = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/wait":
            entered.set()
            while not release.is_set():
                await kind.sleep(0.01)
        await respond(send, 200, scope["path"].encode())

    with kind.running(app, tmp_path, max_conns=1) as w:
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


# -- both workers: abort and disconnect ---------------------------------------------------------


def test_abort_request_gives_the_app_http_disconnect_and_ends_the_request(
    tmp_path: Path, kind: WorkerKind
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

    with kind.running(app, tmp_path) as w:
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


def test_abort_request_while_the_app_waits_for_its_body_gives_http_disconnect(
    tmp_path: Path, kind: WorkerKind
) -> None:
    """ABORT_REQUEST in the middle of the body: the waiting receive() says http.disconnect.

    Compiled (setup.py), receive() once took the disconnect for the None its
    first test saw and raised TypeError in the app instead.
    """
    seen: list[str] = []
    first = threading.Event()
    done = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            while True:
                message = await receive()
                seen.append(message["type"])
                first.set()
                if message["type"] != "http.request" or not message["more_body"]:
                    break
        except Exception as exc:
            seen.append(f"{type(exc).__name__}: {exc}")
        finally:
            done.set()

    with kind.running(app, tmp_path) as w:
        client = w.client()
        records = request_records(1, params_for("/up", method="POST", body=b"x" * 10), b"xxxx")
        client.send(b"".join(records[:-1]))  # 4 of the 10 bytes: the app waits for more
        assert first.wait(WAIT)
        client.send(r.encode_record(r.ABORT_REQUEST, 1))
        aborted = client.reply(1)
        assert aborted.app_status == 1 and aborted.stdout == b""
        assert done.wait(WAIT)
    assert seen == ["http.request", "http.disconnect"], seen


def test_abort_request_cancels_a_sleeping_app(tmp_path: Path, kind: WorkerKind) -> None:
    log: list[str] = []
    sleeping = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            sleeping.set()
            await kind.sleep(3600)
        except kind.cancelled:
            log.append("cancelled")
            raise

    with kind.running(app, tmp_path) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/"))))
        assert sleeping.wait(WAIT)
        client.send(r.encode_record(r.ABORT_REQUEST, 1))
        assert client.reply(1).protocol_status == r.ProtocolStatus.REQUEST_COMPLETE
        assert log == ["cancelled"]


def test_abort_before_params_ends_the_request_without_running_the_app(
    tmp_path: Path, kind: WorkerKind
) -> None:
    with kind.running(hello, tmp_path) as w:
        client = w.client()
        client.send(r.encode_begin_request(1, r.Role.RESPONDER, True))
        client.send(r.encode_record(r.ABORT_REQUEST, 1))
        reply = client.reply(1)
        assert (reply.app_status, bytes(reply.stdout)) == (1, b"")
        assert client.request(2, params_for("/", query="after")).body == b"hello after"


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_web_server_that_goes_away_is_a_disconnect_and_ends_only_its_connection(
    tmp_path: Path, kind: WorkerKind, how: str
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

    with kind.running(app, tmp_path) as w:
        other = w.client()
        doomed = w.client()
        doomed.send(b"".join(request_records(1, params_for("/hang"))))
        assert waiting.wait(WAIT)
        if how == "reset":  # SO_LINGER with a zero timeout: close() sends RST, not FIN
            doomed.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        doomed.close()
        wait_for(lambda: messages == ["http.disconnect"], "http.disconnect")
        wait_for(lambda: w.worker.active_requests == 0, "the request to be dropped")
        assert other.request(1, params_for("/")).body == b"other"


def test_app_errors_become_500s_with_the_traceback_on_stderr(
    tmp_path: Path, kind: WorkerKind
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

    with kind.running(app, tmp_path) as w:
        client = w.client()
        reply = client.request(1, params_for("/raise"))
        assert (reply.status, reply.app_status) == (500, 1)
        assert b"secret-detail" not in reply.stdout and b"secret-detail" in reply.stderr
        assert client.request(2, params_for("/nothing")).status == 500
        late = client.request(3, params_for("/late"))
        assert (late.status, late.body, late.app_status) == (200, b"partial", 1)
        ok = client.request(4, params_for("/"))
        assert (ok.status, ok.header("Content-Length")) == (204, None)


# -- both workers: bodies, streaming, caps, spooling ------------------------------------------


def test_request_and_response_both_stream(tmp_path: Path, kind: WorkerKind) -> None:
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
    total = sum(map(len, pieces))
    with kind.running(echo, tmp_path) as w:
        client = w.client()
        records = request_records(
            1, params_for("/", method="POST", body=b"x" * total), end_stdin=False
        )
        client.send(b"".join(records))
        echoed = b""
        for piece in pieces:
            # Each piece comes back before the next one is even sent.
            client.send(r.encode_record(r.STDIN, 1, piece))
            echoed += piece.upper()
            client.until(lambda e=echoed: client.replies.get(1, Reply()).stdout.endswith(e))
        client.send(r.encode_record(r.STDIN, 1))
        reply = client.reply(1)
    assert reply.body == b"ALPHA;BETA;GAMMA;|end"
    assert reply.header("Content-Length") is None


def test_a_stalled_body_is_a_disconnect_not_a_short_body(
    tmp_path: Path, kind: WorkerKind, caplog: pytest.LogCaptureFixture
) -> None:
    """Half a body, then silence between records: the app must not take it for a whole one."""
    caplog.set_level(logging.INFO)
    seen: list[dict[str, Any]] = []

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] != "http.request" or not message["more_body"]:
                break
        if message["type"] == "http.request":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"whole"})

    with kind.running(reader, tmp_path, read_timeout=0.5) as w:
        client = w.client()
        records = request_records(1, params_for("/up", method="POST", body=b"x" * 10), b"xxxx")
        client.send(b"".join(records[:-1]))  # 4 of the 10 bytes, as a whole record
        reply = client.reply(1)
        # The web server hears why (400), the app heard a disconnect.
        assert reply.status == 400, reply
        assert [m["type"] for m in seen] == ["http.request", "http.disconnect"], seen
        assert seen[0]["body"] == b"xxxx" and seen[0]["more_body"], seen
        assert client.request(2, params_for("/", method="POST", body=b"ok")).body == b"whole"
    stalls = [rec for rec in caplog.records if "stalled" in rec.getMessage()]
    assert len(stalls) == 1, [rec.getMessage() for rec in caplog.records]
    assert "POST /up" in stalls[0].getMessage() and "0.5s" in stalls[0].getMessage()


def test_body_caps_from_the_core_give_413(tmp_path: Path, kind: WorkerKind) -> None:
    ran: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        ran.append(scope["path"])
        body = await read_body(receive)
        await respond(send, 200, b"read %d" % len(body))

    limits = Limits(max_body_size=1000)
    with kind.running(app, tmp_path, limits=limits) as w:
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


def test_a_large_body_is_spooled_and_arrives_whole(tmp_path: Path, kind: WorkerKind) -> None:
    go = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while not go.is_set():
            await kind.sleep(0.01)
        body = await read_body(receive)
        await respond(send, 200, hashlib.sha256(body).hexdigest().encode())

    body = os.urandom(1 << 20) * 3
    with kind.running(app, tmp_path, spool_threshold=16 * 1024) as w:
        client = w.client()
        # sendall returns once the worker took every byte, while the app waits.
        client.send(b"".join(request_records(1, params_for("/", method="POST", body=body), body)))
        assert client.get_values([b"FCGI_MPXS_CONNS"]) == {b"FCGI_MPXS_CONNS": b"1"}
        go.set()
        assert client.reply(1).body == hashlib.sha256(body).hexdigest().encode()


# -- both workers: output fairness and backpressure ------------------------------------------


def test_two_large_responses_on_one_connection_take_turns(tmp_path: Path, kind: WorkerKind) -> None:
    piece = b"x" * 65536

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(64):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    with kind.running(app, tmp_path) as w:
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
    tmp_path: Path, kind: WorkerKind
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

    with kind.running(app, tmp_path) as w:
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
    tmp_path: Path, kind: WorkerKind, caplog: pytest.LogCaptureFixture
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

    with kind.running(app, tmp_path, send_timeout=0.5, read_timeout=WAIT) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/"))))  # and never read
        wait_for(lambda: outcome == ["send raised"], "the app's send() to fail")
        wait_for(lambda: w.worker.active_requests == 0, "the request to end")
    assert "send_timeout" in caplog.text


def test_whole_body_answers_to_a_web_server_that_never_reads_are_not_buffered_without_end(
    tmp_path: Path, kind: WorkerKind, caplog: pytest.LogCaptureFixture
) -> None:
    """Each answer is one final 1 MiB body (Starlette's usual response): backpressure still holds.

    A web server that keeps sending requests on one connection and reads
    none of the answers must meet send_timeout, as a streamed answer does.
    The asyncio worker queued every final piece without looking at the
    transport: 64 answers went into its memory and nothing was logged.
    """
    answered = [0]
    big = bytes(1 << 20)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": big})
        answered[0] += 1

    with kind.running(app, tmp_path, send_timeout=0.5, read_timeout=WAIT) as w:
        client = w.client()
        requests = (request_records(rid, params_for("/")) for rid in range(1, 65))
        client.send(b"".join(b"".join(records) for records in requests))  # and never read
        wait_for(lambda: "send_timeout" in caplog.text, "the connection to meet send_timeout")
        wait_for(lambda: w.worker.active_requests == 0, "the requests to end")
    assert answered[0] < 16, f"{answered[0]} answers of 1 MiB buffered for a non-reader"


# -- both workers: timeouts and connection life -----------------------------------------------


def test_without_keep_conn_the_connection_is_closed_after_the_answer(
    tmp_path: Path, kind: WorkerKind
) -> None:
    with kind.running(hello, tmp_path) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/", query="k"), keep_conn=False)))
        assert client.reply(1).body == b"hello k"
        assert client.closed_by_server()


def test_idle_and_silent_connections_are_closed_after_their_timeouts(
    tmp_path: Path, kind: WorkerKind, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fcgi.worker")
    with kind.running(hello, tmp_path, read_timeout=0.3) as w:
        idle = w.client()
        assert idle.request(1, params_for("/", query="a")).body == b"hello a"
        assert idle.closed_by_server()
    assert "closing idle connection" in caplog.text
    caplog.clear()
    (tmp_path / "second").mkdir()
    with kind.running(hello, tmp_path / "second", request_header_timeout=0.3) as w:
        silent = w.client()
        silent.send(r.encode_begin_request(1, r.Role.RESPONDER, True))  # and no PARAMS
        assert silent.closed_by_server()
        assert w.client().request(1, params_for("/", query="new")).body == b"hello new"
    assert "request_header_timeout" in caplog.text


def test_rejected_params_get_an_error_and_the_connection_goes_on(
    tmp_path: Path, kind: WorkerKind
) -> None:
    with kind.running(hello, tmp_path, limits=Limits(max_params=3)) as w:
        client = w.client()
        assert client.request(1, params_for("/")).status == 431
        assert client.request(2, {"QUERY_STRING": "ok"}).body == b"hello ok"


# -- both workers: lifespan ----------------------------------------------------------------------


def test_a_lifespan_startup_that_never_answers_is_reported_and_yields_to_a_stop(
    tmp_path: Path,
    kind: WorkerKind,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fcgi.asgi, "LIFESPAN_NOTICE", 0.5)  # 10 s in production
    caplog.set_level(logging.INFO, logger="fcgi.asgi")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup, never answered
            await receive()

    with kind.running(app, tmp_path) as w:
        wait_for(lambda: "still waiting for the app's lifespan startup" in caplog.text,
                 "the startup notice")  # fmt: skip
        assert w.thread.is_alive()
    # Leaving the block stopped the worker: the wait ended, without serving.
    assert not w.thread.is_alive() and not w.errors, w.errors
    assert "stopped before the app's lifespan startup completed" in caplog.text


def test_lifespan_startup_state_and_shutdown(tmp_path: Path, kind: WorkerKind) -> None:
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

    with kind.running(app, tmp_path) as w:
        assert w.client().request(1, params_for("/")).body == b"hi from startup"
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]


def test_lifespan_startup_failure_stops_the_worker(tmp_path: Path, kind: WorkerKind) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(LifespanFailure, match="no database"), kind.running(app, tmp_path):
        pass


def test_an_app_without_lifespan_is_served(tmp_path: Path, kind: WorkerKind) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", "only http here"
        await respond(send, 200, b"no lifespan")

    with kind.running(app, tmp_path) as w:
        assert w.client().request(1, params_for("/")).body == b"no lifespan"


# -- both workers: stopping and hooks ------------------------------------------------------------


def test_stop_finishes_requests_in_flight_then_returns(tmp_path: Path, kind: WorkerKind) -> None:
    entered = threading.Event()
    release = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        entered.set()
        while not release.is_set():
            await kind.sleep(0.01)
        await respond(send, 200, b"finished")

    with kind.running(app, tmp_path) as w:
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


def test_hooks_are_called_and_should_stop_ends_the_worker(tmp_path: Path, kind: WorkerKind) -> None:
    hooks = RecordingHooks(stop_after=2)
    with kind.running(hello, tmp_path, hooks=hooks) as w:
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


# -- the command line ----------------------------------------------------------------------------


def test_cli_exits_non_zero_when_lifespan_startup_fails(tmp_path: Path) -> None:
    sock = str(tmp_path / "f.sock")
    proc = serve_command(
        tmp_path,
        "failing",
        """
        async def app(scope, receive, send):
            await receive()
            raise RuntimeError("cannot reach the database")
        """,
        "--bind",
        f"unix:{sock}",
    )
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 3
    text = err.decode()
    assert "lifespan startup" in text and "cannot reach the database" in text
    assert "using the asyncio worker" in text  # auto-selected for an ASGI app


# -- Starlette -----------------------------------------------------------------------------------


def make_starlette_app() -> Any:
    """A Starlette app with lifespan state, JSON, a stream and an upload.

    With FCGI_TEST_LIFESPAN_LOG set, lifespan events are appended to that file
    (for tests that run it in another process).
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    log_path = os.environ.get("FCGI_TEST_LIFESPAN_LOG")
    events: list[str] = []

    def note(event: str) -> None:
        events.append(event)
        if log_path:
            with open(log_path, "a") as f:
                f.write(event + "\n")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        note("startup")
        yield {"started": "yes"}
        note("shutdown")

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "path": request.url.path,
                "query": dict(request.query_params),
                "started": request.state.started,
                "host": request.headers.get("host"),
            }
        )

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"chunk {i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    async def upload(request: Request) -> JSONResponse:
        size = 0
        digest = hashlib.sha256()
        async for chunk in request.stream():
            size += len(chunk)
            digest.update(chunk)
        return JSONResponse({"size": size, "sha256": digest.hexdigest()})

    async def boom(request: Request) -> Response:
        raise RuntimeError("starlette route failed")

    app = Starlette(
        routes=[
            Route("/hello", hello),
            Route("/stream", stream),
            Route("/upload", upload, methods=["POST"]),
            Route("/boom", boom),
        ],
        lifespan=lifespan,
    )
    app.state.events = events
    return app


def test_starlette_app_in_process(tmp_path: Path) -> None:
    app = make_starlette_app()
    body = os.urandom(300_000)
    with running_worker(app, tmp_path, spool_threshold=32 * 1024) as w:
        client = w.client()
        reply = client.request(1, params_for("/hello", query="a=1", headers={"Host": "example"}))
        assert reply.status == 200
        assert json.loads(reply.body) == {
            "path": "/hello",
            "query": {"a": "1"},
            "started": "yes",
            "host": "example",
        }
        reply = client.request(2, params_for("/stream"))
        assert reply.body == b"".join(f"chunk {i}\n".encode() for i in range(5))
        stdout_records = [c for t, rid, c in client.log if t == r.STDOUT and rid == 2 and c]
        assert len(stdout_records) > 1  # streamed, not one piece
        reply = client.request(3, params_for("/upload", method="POST", body=body), body)
        assert json.loads(reply.body) == {
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        assert client.request(4, params_for("/boom")).status == 500
        assert client.request(5, params_for("/missing")).status == 404
        assert app.state.events == ["startup"]
    assert app.state.events == ["startup", "shutdown"]


def test_starlette_through_nginx(start_backend: Any, start_nginx: Any, tmp_path: Path) -> None:
    lifespan_log = tmp_path / "lifespan.log"
    os.environ["FCGI_TEST_LIFESPAN_LOG"] = str(lifespan_log)
    try:
        backend = start_backend("unix", "test_asgi:make_starlette_app()", ["--worker", "trio"])
    finally:
        del os.environ["FCGI_TEST_LIFESPAN_LOG"]
    site = start_nginx("fcgi-new-connection.conf", backend)

    response = site.request("GET", "/hello?x=y")
    assert response.status == 200, site.explain(response)
    assert response.header("Content-Type") == "application/json"
    data = json.loads(response.body)
    assert data["path"] == "/hello" and data["query"] == {"x": "y"} and data["started"] == "yes"

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

    response = site.request("GET", "/boom")
    assert response.status == 500, site.explain(response)
    assert b"starlette route failed" not in response.body

    assert lifespan_log.read_text() == "startup\n"
    backend.stop()
    assert backend.exit_status == 0, backend.diagnostics()
    assert lifespan_log.read_text() == "startup\nshutdown\n"


def test_sync_worker_request_for_an_asgi_app_switches_to_asyncio(tmp_path: Path) -> None:
    sock = str(tmp_path / "a.sock")
    proc = serve_command(
        tmp_path,
        "asgiapp",
        """
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"asgi via cli"})
        """,
        "--worker",
        "sync",
        "--bind",
        f"unix:{sock}",
    )
    try:
        client = connect_when_ready(sock, proc)
        reply: Reply = client.request(1, params_for("/"))
        assert reply.body == b"asgi via cli"
        client.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0
    assert b"using the asyncio worker" in err


# -- the response head, against a reference written out here ----------------------------

_REF_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def reference_head(status: object, headers: list[tuple[object, object]]) -> object:
    """What fcgi.asgi._encode_head must give, written the slow, obvious way."""
    if type(status) is not int or not 100 <= status <= 999:
        return "ValueError"
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    out = b"Status: %d %s\r\n" % (status, reason.encode())
    has_length = False
    for name, value in headers:
        if not isinstance(name, bytes | bytearray) or not isinstance(value, bytes | bytearray):
            return "TypeError"
        if not _REF_TOKEN.match(name):
            return "ValueError"
        if re.search(rb"[\r\n\x00]", value):
            return "ValueError"
        has_length = has_length or bytes(name).lower() == b"content-length"
        out += bytes(name) + b": " + bytes(value) + b"\r\n"
    return out + b"\r\n", has_length


head_names = st.one_of(
    st.sampled_from([b"content-type", b"Content-Length", b"x-a", b"bad name", b"", b"a:b"]),
    st.binary(max_size=6),
)
head_values = st.one_of(
    st.sampled_from([b"text/plain", b"13", b"a\r\nb", b"\x00"]), st.binary(max_size=6)
)
head_items = st.tuples(
    st.one_of(head_names, head_names.map(bytearray), st.just("str")),
    st.one_of(head_values, head_values.map(bytearray), st.just(1)),
)


@settings(deadline=None, max_examples=300)
@given(st.one_of(st.integers(0, 1000), st.just("200")), st.lists(head_items, max_size=4))
def test_response_head_matches_the_reference(
    status: object, headers: list[tuple[object, object]]
) -> None:
    expected = reference_head(status, headers)
    for _ in range(2):  # the second time through the caches
        try:
            got: object = _encode_head(status, headers)
        except (TypeError, ValueError) as exc:
            got = type(exc).__name__
        assert got == expected
