"""The trio worker over real sockets: multiplexing, limits, abort, backpressure.

Each test runs a :class:`fcgi.trio_worker.TrioWorker` in a thread of the test
process (``trio.run`` works in any thread) on a unix socket, and talks to it
with :class:`RawClient`, which writes records itself so it can interleave many
request ids on one connection. Apps report what they saw through
``threading`` objects. No assertion depends on how fast anything runs: waits
have generous timeouts and fail the test only when something never happens.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import pytest
import trio
import trio.testing
from rawfcgi import RecordReader

from fcgi import records as r
from fcgi.connection import Limits
from fcgi.errors import RequestBodyIncomplete
from fcgi.options import ServerOptions
from fcgi.spool import SpooledBody
from fcgi.trio_worker import TrioWorker

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0  # upper bound for "this must happen", never a performance threshold

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


# -- a client that writes records itself ---------------------------------------------


@dataclass
class Reply:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    app_status: int = -1
    protocol_status: int = -1

    @property
    def head(self) -> bytes:
        return self.stdout.split(b"\r\n\r\n", 1)[0]

    @property
    def status(self) -> int:
        for line in self.head.split(b"\r\n"):
            if line.lower().startswith(b"status:"):
                return int(line.split(b":", 1)[1].split()[0])
        return 200

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n"):
            key, sep, value = line.partition(b":")
            if sep and key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    @property
    def body(self) -> bytes:
        _head, sep, body = bytes(self.stdout).partition(b"\r\n\r\n")
        return body if sep else b""


def params_for(
    path: str = "/",
    *,
    method: str = "GET",
    query: str = "",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    **extra: str,
) -> dict[str, str]:
    params = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": path,
        "REQUEST_URI": path + ("?" + query if query else ""),
        "QUERY_STRING": query,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
    }
    if body or method == "POST":
        params["CONTENT_LENGTH"] = str(len(body))
        params["CONTENT_TYPE"] = "application/octet-stream"
    for name, value in (headers or {}).items():
        params["HTTP_" + name.upper().replace("-", "_")] = value
    params.update(extra)
    return params


def request_records(
    rid: int,
    params: Mapping[str, str],
    body: bytes = b"",
    *,
    keep_conn: bool = True,
    role: int = r.Role.RESPONDER,
    end_stdin: bool = True,
) -> list[bytes]:
    """One request as a list of records, so several can be interleaved."""
    pairs = r.encode_pairs({k.encode("latin-1"): v.encode("latin-1") for k, v in params.items()})
    out = [r.encode_begin_request(rid, role, keep_conn)]
    out += [r.encode_record(r.PARAMS, rid, pairs[i : i + 1000]) for i in range(0, len(pairs), 1000)]
    out.append(r.encode_record(r.PARAMS, rid))
    out += [
        r.encode_record(r.STDIN, rid, body[i : i + 0xFFF8]) for i in range(0, len(body), 0xFFF8)
    ]
    if end_stdin:
        out.append(r.encode_record(r.STDIN, rid))
    return out


def interleave(streams: Iterable[list[bytes]]) -> bytes:
    """Round-robin the records of several requests: id 1, id 2, ..., id 1, id 2, ..."""
    lists = [list(s) for s in streams]
    out = []
    for i in range(max(len(s) for s in lists)):
        out += [s[i] for s in lists if i < len(s)]
    return b"".join(out)


class RawClient:
    """A blocking FastCGI connection that sends bytes and reads records."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(path)
        self.reader = RecordReader(self.sock, recv_size=1 << 20)
        self.log: list[tuple[int, int, bytes]] = []  # every record read, in order
        self.replies: dict[int, Reply] = {}

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def record(self) -> tuple[int, int, bytes] | None:
        rec = self.reader.record()
        if rec is not None:
            rtype, rid, content = rec
            self.log.append((rtype, rid, content[:64]))
            self._note(rec)
        return rec

    def _note(self, rec: tuple[int, int, bytes]) -> None:
        rtype, rid, content = rec
        if rid == 0:
            return
        reply = self.replies.setdefault(rid, Reply())
        if rtype == r.STDOUT:
            reply.stdout += content
        elif rtype == r.STDERR:
            reply.stderr += content
        elif rtype == r.END_REQUEST:
            reply.app_status, reply.protocol_status = r.END_REQUEST_BODY.unpack(content)

    def until(self, done: Callable[[], bool]) -> None:
        while not done():
            if self.record() is None:
                raise ConnectionError(f"connection closed; replies so far: {self.replies}")

    def reply(self, rid: int) -> Reply:
        """Wait for END_REQUEST of ``rid`` and return (and forget) its reply."""
        self.until(lambda: self.replies.get(rid, Reply()).protocol_status >= 0)
        return self.replies.pop(rid)

    def request(self, rid: int, params: Mapping[str, str], body: bytes = b"") -> Reply:
        self.send(b"".join(request_records(rid, params, body)))
        return self.reply(rid)

    def get_values(self, names: list[bytes]) -> dict[bytes, bytes]:
        self.send(r.encode_record(r.GET_VALUES, 0, r.encode_pairs([(n, b"") for n in names])))
        while True:
            rec = self.record()
            assert rec is not None, "connection closed before GET_VALUES_RESULT"
            if rec[0] == r.GET_VALUES_RESULT:
                return dict(r.decode_pairs(rec[2]))

    def closed_by_server(self) -> bool:
        """True if the server closes the connection (after any records it still sends)."""
        while True:
            try:
                if self.record() is None:
                    return True
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False

    def close(self) -> None:
        self.sock.close()


# -- running a worker -------------------------------------------------------------------


@dataclass
class Running:
    path: str
    worker: TrioWorker
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    def client(self) -> RawClient:
        return RawClient(self.path)

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.errors:
            raise self.errors[0]


@contextlib.contextmanager
def running_worker(
    app: Any, tmp_path: Path, hooks: Any = None, make: Any = TrioWorker, **settings: Any
) -> Iterator[Running]:
    """A worker serving ``app`` on a unix socket in a background thread.

    ``make`` builds it from (listeners, app, options, hooks): TrioWorker by
    default; test_asyncio_worker.py and asgi_cases.KINDS pass theirs.
    """
    path = str(tmp_path / "w.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(256)
    limits = settings.pop("limits", Limits())
    worker = make([listener], app, ServerOptions(limits=limits, **settings), hooks)
    running = Running(path, worker, threading.Thread(target=lambda: None))

    def run() -> None:
        try:
            worker.serve_forever()
        except BaseException as exc:
            running.errors.append(exc)

    running.thread = threading.Thread(target=run, name="worker", daemon=True)
    running.thread.start()
    try:
        yield running
    finally:
        worker.stop()
        try:
            running.join()
        finally:
            worker.close()
            listener.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# -- apps ---------------------------------------------------------------------------------


class Gauge:
    """Counts requests in flight and lets a test wait for a given number."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.entered = 0
        self.changed = threading.Condition(self.lock)

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.entered += 1
            self.peak = max(self.peak, self.in_flight)
            self.changed.notify_all()

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1
            self.changed.notify_all()

    def wait_in_flight(self, n: int) -> bool:
        with self.lock:
            return self.changed.wait_for(lambda: self.in_flight >= n, WAIT)


def hello_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    body = f"hello {environ['QUERY_STRING']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


# -- concurrency ----------------------------------------------------------------------------


def test_hundred_interleaved_wsgi_requests_on_one_connection_run_at_once(tmp_path: Path) -> None:
    gauge = Gauge()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        gauge.enter()
        try:
            # Structure, not speed: nobody answers before all 100 are in the app.
            assert gauge.wait_in_flight(100), "the 100 requests were not in flight together"
            time.sleep(0.1)
        finally:
            gauge.leave()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"id={environ['QUERY_STRING']}".encode()]

    with running_worker(app, tmp_path, threads=100, max_reqs=100) as w:
        client = w.client()
        client.send(
            interleave(
                request_records(rid, params_for("/sleep", query=str(rid))) for rid in range(1, 101)
            )
        )
        replies = {rid: client.reply(rid) for rid in range(1, 101)}
    assert gauge.peak == 100
    for rid, reply in replies.items():
        assert reply.status == 200, reply
        assert reply.body == f"id={rid}".encode()
        assert reply.protocol_status == r.ProtocolStatus.REQUEST_COMPLETE


def test_get_values_reports_multiplexing_and_the_limits(tmp_path: Path) -> None:
    with running_worker(hello_app, tmp_path, max_conns=7, max_reqs=9) as w:
        client = w.client()
        values = client.get_values(
            [b"FCGI_MPXS_CONNS", b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS", b"FCGI_UNKNOWN"]
        )
        assert values == {b"FCGI_MPXS_CONNS": b"1", b"FCGI_MAX_CONNS": b"7", b"FCGI_MAX_REQS": b"9"}
        # And the connection is still good for requests.
        assert client.request(1, params_for("/", query="x")).body == b"hello x"


def test_requests_past_max_reqs_get_overloaded_on_any_connection(tmp_path: Path) -> None:
    gauge = Gauge()
    release = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        gauge.enter()
        release.wait(WAIT)
        gauge.leave()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    with running_worker(app, tmp_path, max_reqs=2, threads=4) as w:
        a = w.client()
        a.send(interleave(request_records(rid, params_for("/")) for rid in (1, 2)))
        assert gauge.wait_in_flight(2)
        a.send(b"".join(request_records(3, params_for("/"))))
        refused = a.reply(3)
        assert refused.protocol_status == r.ProtocolStatus.OVERLOADED
        assert refused.stdout == b""
        b = w.client()
        refused = b.request(1, params_for("/"))
        assert refused.protocol_status == r.ProtocolStatus.OVERLOADED
        release.set()
        for rid in (1, 2):
            reply = a.reply(rid)
            assert (reply.status, reply.body) == (200, b"done")
        # Capacity is back once they are answered.
        reply = b.request(2, params_for("/"))
        assert reply.protocol_status == r.ProtocolStatus.REQUEST_COMPLETE
        assert reply.body == b"done"


def test_a_connection_past_max_conns_is_closed_when_all_are_busy_and_the_others_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gauge = Gauge()
    release = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        gauge.enter()
        release.wait(WAIT)
        gauge.leave()
        return hello_app(environ, start_response)

    with running_worker(app, tmp_path, max_conns=1) as w:
        first = w.client()
        assert first.get_values([b"FCGI_MAX_CONNS"]) == {b"FCGI_MAX_CONNS": b"1"}  # accepted
        first.send(b"".join(request_records(1, params_for("/", query="still"))))
        assert gauge.wait_in_flight(1)
        second = w.client()
        assert second.closed_by_server()
        release.set()
        assert first.reply(1).body == b"hello still"
    assert "max_conns" in caplog.text


def test_at_max_conns_a_quiet_connection_makes_room_for_a_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_worker(hello_app, tmp_path, max_conns=1) as w:
        idle = w.client()
        assert idle.get_values([b"FCGI_MAX_CONNS"]) == {b"FCGI_MAX_CONNS": b"1"}  # accepted
        new = w.client()
        assert new.request(1, params_for("/", query="new")).body == b"hello new"
        assert idle.closed_by_server()
    assert "to make room" in caplog.text


# -- abort ---------------------------------------------------------------------------------------


class SlowBody:
    """A response iterable that yields once, then waits to be released."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.closed = threading.Event()
        self.after_release: list[bytes] = []

    def __iter__(self) -> Iterator[bytes]:
        yield b"first\n"
        self.release.wait(WAIT)
        self.after_release.append(b"second")
        yield b"second\n"

    def close(self) -> None:
        self.closed.set()


def test_abort_request_cancels_a_wsgi_request_and_the_connection_goes_on(tmp_path: Path) -> None:
    release = threading.Event()
    bodies: list[SlowBody] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/slow":
            start_response("200 OK", [("Content-Type", "text/plain")])
            body = SlowBody(release)
            bodies.append(body)
            return body
        return hello_app(environ, start_response)

    with running_worker(app, tmp_path) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/slow"))))
        client.until(lambda: b"first" in client.replies.get(1, Reply()).stdout)
        client.send(r.encode_record(r.ABORT_REQUEST, 1))
        aborted = client.reply(1)
        assert aborted.protocol_status == r.ProtocolStatus.REQUEST_COMPLETE
        assert aborted.body == b"first\n"
        # The app's thread is still blocked; once it moves, its write fails
        # and the iterable is closed (PEP 3333), without sending anything.
        release.set()
        assert bodies[0].closed.wait(WAIT), "close() of the aborted response was not called"
        # The connection goes on serving, and the id can be reused.
        reply = client.request(1, params_for("/", query="again"))
        assert reply.body == b"hello again"
        assert all(rid == 0 or b"second" not in content for _, rid, content in client.log)


def _body_reader(seen: list[object], reading: threading.Event) -> WSGIApp:
    """An app that reads its whole body and notes what the read gave: bytes or an error."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        reading.set()
        try:
            seen.append(environ["wsgi.input"].read())
        except RequestBodyIncomplete as exc:
            seen.append(exc)
            raise
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"read"]

    return app


def test_abort_while_the_app_waits_for_the_body_ends_the_request(tmp_path: Path) -> None:
    seen: list[object] = []
    reading = threading.Event()
    with running_worker(_body_reader(seen, reading), tmp_path) as w:
        client = w.client()
        records = request_records(1, params_for("/", method="POST", body=b"x" * 10), b"xxxx")
        client.send(b"".join(records[:-1]))  # body incomplete: the app waits for more
        assert reading.wait(WAIT)
        client.send(r.encode_record(r.ABORT_REQUEST, 1))
        assert client.reply(1).protocol_status == r.ProtocolStatus.REQUEST_COMPLETE
        # The app's read failed (not a hang, and not a short body it could
        # take for a whole one, as the sync worker's reads fail too).
        wait_for(lambda: len(seen) == 1, "the aborted app to finish reading")
        assert isinstance(seen[0], RequestBodyIncomplete), seen
        assert client.request(2, params_for("/")).body == b"read"


def test_abort_while_the_app_is_blocked_in_a_read_fails_that_read(tmp_path: Path) -> None:
    """The abort comes while the app's read already waits for more: no clean end of body."""
    seen: list[object] = []
    waiting = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        seen.append(stream.read(4))
        waiting.set()
        try:
            seen.append(stream.read())  # 6 more bytes are declared: this read waits
        except RequestBodyIncomplete as exc:
            seen.append(exc)
            raise
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"read"]

    with running_worker(app, tmp_path) as w:
        client = w.client()
        records = request_records(1, params_for("/", method="POST", body=b"x" * 10), b"xxxx")
        client.send(b"".join(records[:-1]))
        assert waiting.wait(WAIT)
        time.sleep(0.2)  # not a bound on anything: lets the read reach its wait first
        client.send(r.encode_record(r.ABORT_REQUEST, 1))
        assert client.reply(1).protocol_status == r.ProtocolStatus.REQUEST_COMPLETE
        wait_for(lambda: len(seen) == 2, "the aborted app to finish reading")
        assert seen[0] == b"xxxx"
        assert isinstance(seen[1], RequestBodyIncomplete), seen


def test_a_body_cut_short_by_a_closed_connection_is_an_error_for_the_app(
    tmp_path: Path,
) -> None:
    seen: list[object] = []
    reading = threading.Event()
    with running_worker(_body_reader(seen, reading), tmp_path) as w:
        client = w.client()
        records = request_records(1, params_for("/up", method="POST", body=b"x" * 10), b"xxxx")
        client.send(b"".join(records[:-1]))
        assert reading.wait(WAIT)
        client.close()  # the web server went away with 6 of the 10 bytes unsent
        wait_for(lambda: len(seen) == 1, "the app to finish reading")
        assert isinstance(seen[0], RequestBodyIncomplete), seen
        # The worker serves on.
        assert w.client().request(2, params_for("/")).body == b"read"


def test_closing_the_connection_aborts_its_requests(tmp_path: Path) -> None:
    release = threading.Event()
    bodies: list[SlowBody] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        body = SlowBody(release)
        bodies.append(body)
        return body

    with running_worker(app, tmp_path) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/"))))
        client.until(lambda: b"first" in client.replies.get(1, Reply()).stdout)
        client.close()
        wait_for(lambda: w.worker.active_requests == 0, "the request to be dropped")
        release.set()
        assert bodies[0].closed.wait(WAIT)


# -- output: fairness and backpressure -----------------------------------------------------------


def test_two_large_responses_on_one_connection_take_turns(tmp_path: Path) -> None:
    both_started = threading.Barrier(2, timeout=WAIT)
    piece = b"x" * 65536

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        both_started.wait()
        for _ in range(32):
            yield piece

    with running_worker(app, tmp_path) as w:
        client = w.client()
        client.send(interleave(request_records(rid, params_for("/big")) for rid in (1, 2)))
        replies = {rid: client.reply(rid) for rid in (1, 2)}
    for reply in replies.values():
        assert len(reply.body) == 32 * 65536
    order = [rid for rtype, rid, content in client.log if rtype == r.STDOUT and content]
    last = {rid: max(i for i, x in enumerate(order) if x == rid) for rid in (1, 2)}
    first = {rid: order.index(rid) for rid in (1, 2)}
    # Neither response was sent whole before the other began: they interleave.
    assert first[2] < last[1] and first[1] < last[2], order
    # And more than once: how often depends on how the two app threads get
    # the CPU (fewer switches on a loaded machine), so the bound is loose.
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches >= 4, order


def test_a_slow_reader_holds_the_app_back_instead_of_filling_memory(tmp_path: Path) -> None:
    produced = [0]
    total_pieces = 1024  # 64 MiB
    piece = bytes(65536)

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        for _ in range(total_pieces):
            produced[0] += 1
            yield piece

    with running_worker(app, tmp_path) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/huge"))))
        # Read nothing until the app stops making progress.
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


# -- input: spooling -----------------------------------------------------------------------------


def test_a_body_the_app_has_not_read_yet_is_spooled_not_blocking_the_reader(
    tmp_path: Path,
) -> None:
    go = threading.Event()
    body = os.urandom(1 << 20) * 3

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        go.wait(WAIT)
        digest = hashlib.sha256(environ["wsgi.input"].read()).hexdigest()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [digest.encode()]

    with running_worker(app, tmp_path, spool_threshold=16 * 1024) as w:
        client = w.client()
        # sendall only returns once the worker took the bytes: it reads the
        # whole body while the app is still waiting, and for other ids too.
        client.send(b"".join(request_records(1, params_for("/", method="POST", body=body), body)))
        assert client.get_values([b"FCGI_MPXS_CONNS"]) == {b"FCGI_MPXS_CONNS": b"1"}
        go.set()
        reply = client.reply(1)
    assert reply.body == hashlib.sha256(body).hexdigest().encode()


def test_spooled_body_keeps_order_across_memory_and_file() -> None:
    async def main() -> None:
        body = SpooledBody(threshold=10)
        body.push(b"abc")
        body.push(b"defghijk")  # would pass 10 bytes: goes to the file
        assert body.spilled
        body.push(b"lm")  # the file has unread data: after it, not in memory
        assert body.buffered == 13
        assert await body.receive() == b"abc"
        got = b""
        while len(got) < 10:
            got += await body.receive()
        assert got == b"defghijklm"
        assert body.buffered == 0
        body.push(b"no")  # back in memory now the file is drained
        body.end()
        assert await body.receive() == b"no"
        assert await body.receive() == b""
        assert body.exhausted
        body.close()

    trio.run(main)


def test_spooled_body_receive_waits_for_data_and_end() -> None:
    async def main() -> None:
        body = SpooledBody(threshold=1 << 20)
        got: list[bytes] = []

        async def consumer() -> None:
            while chunk := await body.receive():
                got.append(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.testing.wait_all_tasks_blocked()
            body.push(b"one")
            await trio.testing.wait_all_tasks_blocked()
            assert got == [b"one"]
            body.push(b"two")
            body.end()
        assert got == [b"one", b"two"]

    trio.run(main)


# -- WSGI ------------------------------------------------------------------------------------------


def echo_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    info = (
        f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} "
        f"multithread={environ['wsgi.multithread']} len={len(data)} "
        f"sha={hashlib.sha256(data).hexdigest()}"
    )
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [info.encode()]


def test_wsgi_under_the_validator(tmp_path: Path) -> None:
    body = os.urandom(200_000)
    with running_worker(validator(echo_app), tmp_path, spool_threshold=8192) as w:
        client = w.client()
        reply = client.request(1, params_for("/post", method="POST", body=body), body)
        assert reply.status == 200
        expected = f"POST /post multithread=True len=200000 sha={hashlib.sha256(body).hexdigest()}"
        assert reply.body == expected.encode()
        reply = client.request(2, params_for("/get"))
        assert reply.body.startswith(b"GET /get multithread=True len=0")


def test_wsgi_app_error_is_a_500_with_the_traceback_on_stderr(tmp_path: Path) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        raise RuntimeError("kaboom-secret")

    with running_worker(app, tmp_path) as w:
        client = w.client()
        reply = client.request(1, params_for("/"))
        assert reply.status == 500
        assert b"kaboom-secret" not in reply.stdout
        assert b"kaboom-secret" in reply.stderr
        assert reply.app_status == 1
        assert client.request(2, params_for("/")).status == 500  # still serving


def test_filter_role_gets_the_data_stream(tmp_path: Path) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        data = environ["fcgi.data"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["fcgi.role"].encode() + b" " + data.upper()]

    with running_worker(app, tmp_path) as w:
        client = w.client()
        records = request_records(1, params_for("/", FCGI_DATA_LENGTH="5"), role=r.Role.FILTER)
        records += [r.encode_record(r.DATA, 1, b"hello"), r.encode_record(r.DATA, 1)]
        client.send(b"".join(records))
        assert client.reply(1).body == b"FILTER HELLO"


def test_without_keep_conn_the_connection_is_closed_after_the_answer(tmp_path: Path) -> None:
    with running_worker(hello_app, tmp_path) as w:
        client = w.client()
        client.send(b"".join(request_records(1, params_for("/", query="k"), keep_conn=False)))
        assert client.reply(1).body == b"hello k"
        assert client.closed_by_server()


def test_an_idle_connection_is_closed_after_read_timeout(tmp_path: Path) -> None:
    with running_worker(hello_app, tmp_path, read_timeout=0.2) as w:
        client = w.client()
        assert client.closed_by_server()
        assert w.client().request(1, params_for("/", query="new")).body == b"hello new"


def test_rejected_params_get_an_error_and_the_connection_goes_on(tmp_path: Path) -> None:
    limits = Limits(max_params=3)
    with running_worker(hello_app, tmp_path, limits=limits) as w:
        client = w.client()
        reply = client.request(1, params_for("/"))
        assert reply.status == 431
        assert client.request(2, {"QUERY_STRING": "ok"}).body == b"hello ok"


# -- stopping, hooks -----------------------------------------------------------------------------


def test_stop_finishes_requests_in_flight_then_returns(tmp_path: Path) -> None:
    gauge = Gauge()
    release = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        gauge.enter()
        release.wait(WAIT)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"finished"]

    with running_worker(app, tmp_path) as w:
        idle = w.client()
        assert idle.get_values([b"FCGI_MPXS_CONNS"])  # accepted, then idle
        busy = w.client()
        busy.send(b"".join(request_records(1, params_for("/"))))
        assert gauge.wait_in_flight(1)
        w.worker.stop()
        assert idle.closed_by_server()  # idle connections close at once
        assert w.thread.is_alive()
        release.set()
        assert busy.reply(1).body == b"finished"
        w.join()


class RecordingHooks:
    def __init__(self, stop_after: int) -> None:
        self.events: list[str] = []
        self.stop_after = stop_after
        self.finished = 0

    def connection_accepted(self) -> None:
        self.events.append("accepted")

    def request_started(self, params: Mapping[str, str]) -> object:
        self.events.append("started " + params.get("QUERY_STRING", ""))
        return None

    def request_finished(self, token: object, status: int, head: bytes | None = None) -> None:
        self.finished += 1
        self.events.append(f"finished {status}")

    def intercept(self, params: Mapping[str, str]) -> Any:
        if params.get("QUERY_STRING") == "ping":

            @dataclass
            class Pong:
                status: str = "200 OK"
                headers: list[tuple[str, str]] = field(
                    default_factory=lambda: [("Content-Type", "text/plain")]
                )
                body: bytes = b"pong"

            return Pong()
        return None

    def should_stop(self) -> bool:
        return self.finished >= self.stop_after


def test_hooks_are_called_and_should_stop_ends_the_worker(tmp_path: Path) -> None:
    hooks = RecordingHooks(stop_after=2)
    with running_worker(hello_app, tmp_path, hooks=hooks) as w:
        client = w.client()
        assert client.request(1, params_for("/", query="ping")).body == b"pong"
        assert client.request(1, params_for("/", query="two")).body == b"hello two"
        w.join()  # stopped by itself
    assert hooks.events == [
        "accepted",
        "started ping",
        "finished 200",
        "started two",
        "finished 200",
    ]


# -- the command line ------------------------------------------------------------------------------


def serve_command(tmp_path: Path, module: str, source: str, *extra: str) -> subprocess.Popen[bytes]:
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "fcgi", "serve", f"{module}:app", *extra],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def connect_when_ready(path: str, proc: subprocess.Popen[bytes]) -> RawClient:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return RawClient(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if proc.poll() is not None or time.monotonic() > deadline:
                _out, err = proc.communicate()
                raise AssertionError(f"server did not start: {err.decode()}") from None
            time.sleep(0.02)


def test_cli_serves_with_the_trio_worker_and_stops_on_sigterm(tmp_path: Path) -> None:
    sock = str(tmp_path / "cli.sock")
    proc = serve_command(
        tmp_path,
        "cliapp",
        """
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [str(environ["wsgi.multithread"]).encode()]
        """,
        "--worker",
        "trio",
        "--threads",
        "3",
        "--max-reqs",
        "5",
        "--bind",
        f"unix:{sock}",
    )
    try:
        client = connect_when_ready(sock, proc)
        assert client.get_values([b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS"]) == {
            b"FCGI_MAX_REQS": b"5",
            b"FCGI_MPXS_CONNS": b"1",
        }
        assert client.request(1, params_for("/")).body == b"True"
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        assert b"trio worker" in proc.communicate()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
