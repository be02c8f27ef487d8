"""The asyncio worker's cheap paths answer as the general ones did.

The worker saves work per request and per connection: a unix-socket peer is
named once per listener, a new connection's first deadline is kept by one
timer of the worker's instead of one of its own, the response's last piece
waits for END_REQUEST when the app returns at once, and a finished request's
objects are freed by reference counting, not left to the cyclic GC. Each test
here holds one of those to what a web server (or an operator reading the
log) saw before. They run on uvloop and on asyncio's own loop; no assertion
depends on how fast anything runs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from asgi_cases import LOOPS
from test_asyncio_worker import running_worker
from test_trio_worker import WAIT, Reply, params_for, request_records, wait_for

from fcgi import asyncio_worker
from fcgi import records as r
from fcgi.asgi import ASGIResponder
from fcgi.asyncio_worker import LoopFactory
from fcgi.wsgi import HEAD_JOIN_MAX


@pytest.fixture(params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest) -> LoopFactory:
    return LOOPS[request.param]


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b"hello " + scope["query_string"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_the_last_piece_is_sent_before_an_app_that_goes_on_returns(
    tmp_path: Path, loop: LoopFactory
) -> None:
    """Kept for END_REQUEST only while the app returns at once: one that works on is no wait."""
    release = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        while not release.is_set():  # work after the response (Starlette's background tasks)
            await asyncio.sleep(0.01)

    with running_worker(app, tmp_path, loop) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/"))))
        client.until(lambda: b"done" in client.replies.get(1, Reply()).stdout)
        assert client.replies[1].protocol_status < 0, "END_REQUEST came before the app returned"
        release.set()
        reply = client.reply(1)
        assert (reply.status, reply.body, reply.app_status) == (200, b"done", 0)


def _request_objects() -> int:
    """A request's responder and its request id's object (which holds its task), alive now."""
    kinds = (ASGIResponder, asyncio_worker._Request)
    return sum(1 for o in gc.get_objects() if isinstance(o, kinds))


def test_a_finished_request_leaves_nothing_for_the_cycle_collector(
    tmp_path: Path, loop: LoopFactory, no_cycle_collector: None
) -> None:
    with running_worker(hello, tmp_path, loop) as w:
        client = w.client()
        for rid in range(1, 21):
            assert client.request(rid, params_for("/", query=str(rid))).body == b"hello %d" % rid
        # END_REQUEST leaves before the request's task has wound up: wait for
        # that, as long as it takes (a request kept alive by a cycle never goes).
        wait_for(lambda: _request_objects() == 0, "the requests' objects to be freed")


def test_a_unix_peer_is_named_after_its_listener_in_log_lines(
    tmp_path: Path, loop: LoopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fcgi.worker")
    with running_worker(hello, tmp_path, loop) as w:
        client = w.client()
        client.send(b"\x09" * 8)  # FastCGI version 9: a protocol error
        assert client.closed_by_server()
        wait_for(lambda: "protocol error" in caplog.text, "the protocol error's log line")
    assert f"closing connection from unix:{w.path}: protocol error" in caplog.text


def test_silent_connections_are_closed_at_their_head_deadline_and_served_ones_are_not(
    tmp_path: Path, loop: LoopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Several first deadlines on the worker's one timer; a kept connection outlives its own."""
    caplog.set_level(logging.INFO, logger="fcgi.worker")
    with running_worker(hello, tmp_path, loop, request_header_timeout=0.3, read_timeout=WAIT) as w:
        kept = w.client()
        assert kept.request(1, params_for("/", query="first")).body == b"hello first"
        silent = [w.client() for _ in range(3)]
        for client in silent:
            assert client.closed_by_server()
        # The kept connection's first deadline has passed too: it was served,
        # so it is idle (read_timeout), not late with a head.
        assert kept.request(2, params_for("/", query="again")).body == b"hello again"
        assert w.client().request(1, params_for("/", query="new")).body == b"hello new"
    assert caplog.text.count("(request_header_timeout)") == 3


async def sized(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/?N``: N bytes in one piece, without a Content-Length (fcgi adds it)."""
    if scope["type"] != "http":
        return
    size = int(scope["query_string"])
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"z" * size})


def test_a_large_first_piece_is_not_copied_behind_the_head(
    tmp_path: Path, loop: LoopFactory
) -> None:
    """Past HEAD_JOIN_MAX the head is queued as a record of its own; below it, joined."""
    with running_worker(sized, tmp_path, loop) as w:
        client = w.client()
        for rid, size in enumerate((100, HEAD_JOIN_MAX, HEAD_JOIN_MAX + 1, 100_000), start=1):
            reply = client.request(rid, params_for("/", query=str(size)))
            assert reply.status == 200 and reply.body == b"z" * size
            assert reply.header("Content-Length") == str(size)
            first = next(c for t, r_id, c in client.log if t == r.STDOUT and r_id == rid)
            if size > HEAD_JOIN_MAX:
                assert first == reply.head + b"\r\n\r\n"  # the head alone
            else:
                assert first.startswith(reply.head + b"\r\n\r\nz")  # one record, joined
