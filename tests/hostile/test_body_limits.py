"""Request bodies are bounded: by their declared CONTENT_LENGTH, else by max_body_size.

Threat: a peer that can reach the socket declares a small body and then
streams hundreds of MiB, or declares none at all, to fill the worker's memory
or (trio worker) its temporary files. The sans-IO core enforces both limits,
so every driver gets them; the tests drive the core directly and then the
sync worker over a real socket (the trio worker's cases live in
test_trio_limits.py).
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rawfcgi import (
    ROOT,
    RecordReader,
    connect,
    get_params,
    request_bytes,
    roundtrip,
    running_server,
    wait_connectable,
)

from fcgi import events as ev
from fcgi import records as r
from fcgi.connection import Limits, ServerConnection

APP = "tests.server_apps:app"


def _head(rid: int, params: dict[str, str]) -> bytes:
    pairs = {k.encode(): v.encode() for k, v in params.items()}
    return r.encode_begin_request(rid, r.Role.RESPONDER, False) + r.encode_params(rid, pairs)


def _stdin(rid: int, data: bytes) -> bytes:
    return r.encode_stream(r.STDIN, rid, data)


# -- the core -----------------------------------------------------------------------


def test_declared_length_above_the_limit_is_refused_before_the_app_runs() -> None:
    conn = ServerConnection(Limits(max_body_size=1000))
    events = conn.feed(_head(1, {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "1001"}))
    assert [type(e) for e in events] == [ev.BeginRequest, ev.RequestRejected]
    rejected = events[1]
    assert isinstance(rejected, ev.RequestRejected)
    assert rejected.http_status == 413
    assert "max_body_size" in rejected.reason
    # The body that follows is dropped, not delivered.
    assert conn.feed(_stdin(1, b"x" * 1001) + r.encode_record(r.STDIN, 1)) == []


def test_stdin_past_the_declared_length_is_cut_there_and_rejected() -> None:
    conn = ServerConnection()
    conn.feed(_head(1, {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "10"}))
    events = conn.feed(_stdin(1, b"0123456789EXCESS" * 1000))
    data = b"".join(e.data for e in events if isinstance(e, ev.StdinData))
    assert data == b"0123456789"
    rejected = [e for e in events if isinstance(e, ev.RequestRejected)]
    assert len(rejected) == 1 and rejected[0].http_status == 400
    assert "CONTENT_LENGTH" in rejected[0].reason
    # Everything after that is dropped: nothing piles up for the driver.
    assert conn.feed(_stdin(1, b"y" * 200_000)) == []


def test_undeclared_body_is_cut_at_max_body_size_with_413() -> None:
    conn = ServerConnection(Limits(max_body_size=100_000))
    conn.feed(_head(1, {"REQUEST_METHOD": "POST"}))
    received = 0
    rejected: list[ev.RequestRejected] = []
    for _ in range(10):
        for e in conn.feed(_stdin(1, b"z" * 30_000)):
            if isinstance(e, ev.StdinData):
                received += len(e.data)
            elif isinstance(e, ev.RequestRejected):
                rejected.append(e)
    assert received == 100_000
    assert len(rejected) == 1 and rejected[0].http_status == 413


def test_body_exactly_at_the_limit_is_whole() -> None:
    conn = ServerConnection(Limits(max_body_size=64))
    conn.feed(_head(1, {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "64"}))
    events = conn.feed(_stdin(1, b"a" * 64) + r.encode_record(r.STDIN, 1))
    assert [type(e) for e in events] == [ev.StdinData, ev.StdinEnd]


def test_zero_means_no_limit() -> None:
    conn = ServerConnection(Limits(max_body_size=0))
    conn.feed(_head(1, {"REQUEST_METHOD": "POST"}))
    events = conn.feed(_stdin(1, b"a" * 300_000))
    assert sum(len(e.data) for e in events if isinstance(e, ev.StdinData)) == 300_000


def test_data_stream_of_a_filter_is_capped_too() -> None:
    conn = ServerConnection(Limits(max_body_size=1000))
    pairs = {b"REQUEST_METHOD": b"GET"}
    conn.feed(
        r.encode_begin_request(1, r.Role.FILTER, False)
        + r.encode_params(1, pairs)
        + r.encode_record(r.STDIN, 1)
    )
    events = conn.feed(r.encode_stream(r.DATA, 1, b"d" * 5000))
    assert any(isinstance(e, ev.RequestRejected) and e.http_status == 413 for e in events)


# -- the sync worker over a real socket ------------------------------------------------


@pytest.fixture(scope="module")
def server():  # type: ignore[no-untyped-def]
    with running_server(APP, "--max-body-size", "1M") as srv:
        yield srv


def test_declared_huge_body_gets_413_at_once(server) -> None:  # type: ignore[no-untyped-def]
    params = get_params("/echo", method="POST") | {"CONTENT_LENGTH": str(1 << 30)}
    with connect(server.address) as sock:
        sock.sendall(request_bytes(1, params)[: -8])  # head only: no body follows
        reply = RecordReader(sock).reply(1)
    assert reply.status == 413
    assert b"413" in reply.body
    server.wait_log("larger than max_body_size")
    assert roundtrip(server.address, get_params("/echo", method="POST"), b"ok").status == 200


def test_undeclared_body_over_the_limit_gets_413(server) -> None:  # type: ignore[no-untyped-def]
    # A body without CONTENT_LENGTH (nginx's chunked uploads with
    # fastcgi_request_buffering off look like this).
    params = get_params("/echo", method="POST")
    body = b"u" * (2 << 20)
    with connect(server.address) as sock:
        head = r.encode_begin_request(1, r.Role.RESPONDER, False) + r.encode_params(
            1, {k.encode(): v.encode() for k, v in params.items()}
        )
        sock.sendall(head)
        # The worker may close once it answered: what matters is the answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(r.encode_stream(r.STDIN, 1, body) + r.encode_record(r.STDIN, 1))
        reply = RecordReader(sock).reply(1)
    assert reply.status == 413, reply
    log = server.wait_log("request body is larger than max_body_size")
    assert "Traceback" not in log.split("max_body_size")[-1]
    assert roundtrip(server.address, get_params("/echo", method="POST"), b"ok").status == 200


def test_small_declared_length_then_a_flood_is_cut(server) -> None:  # type: ignore[no-untyped-def]
    # CONTENT_LENGTH 10, then 32 MiB of FCGI_STDIN: the app sees its 10 bytes
    # and the rest is read and dropped. (Whether the violation is logged
    # depends on timing: the sync worker reads input only as the app asks, so
    # once the app has answered, the excess is drained without parsing.)
    params = get_params("/echo", method="POST") | {"CONTENT_LENGTH": "10"}
    flood = b"f" * (32 << 20)
    started = time.monotonic()
    with connect(server.address, timeout=30) as sock:
        sock.sendall(request_bytes(1, params)[:-8])
        sock.sendall(r.encode_stream(r.STDIN, 1, b"0123456789"))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(r.encode_stream(r.STDIN, 1, flood) + r.encode_record(r.STDIN, 1))
        sock.shutdown(socket.SHUT_WR)
        reply = RecordReader(sock).reply(1)
    assert time.monotonic() - started < 30
    assert reply.body.startswith(b"10 "), reply
    assert roundtrip(server.address, get_params("/echo", method="POST"), b"ok").status == 200


def test_draining_a_refused_body_does_not_hold_the_worker() -> None:
    """A refused upload that keeps trickling in is drained beside other work, not before it.

    The sync worker answers a 413 at once, then reads and throws away the
    rest of the body for up to 2 s before closing (so the web server reads
    the 413, not a reset). A hostile peer that trickles that body used to
    hold the only worker for those 2 s per request; now the drain waits in
    epoll and other connections are served meanwhile.
    """
    with running_server(APP, "--max-body-size", "1000") as server:
        refused = connect(server.address)
        params = get_params("/echo", method="POST")
        params["CONTENT_LENGTH"] = "100000"
        # The last 8 bytes are the empty STDIN record: the body goes on.
        refused.sendall(request_bytes(1, params, b"x" * 100)[:-8])
        assert RecordReader(refused).reply(1).status == 413
        piece = r.encode_record(r.STDIN, 1, b"x" * 10)
        stop = threading.Event()

        def trickle() -> None:
            with contextlib.suppress(OSError):
                while not stop.wait(0.05):
                    refused.send(piece)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            assert roundtrip(server.address, get_params("/environ")).status == 200
        finally:
            stop.set()
            thread.join(30)
        # Answered while the drain went on: the worker still reads the
        # refused connection (on a unix socket, a send to a closed peer fails
        # at once). Before, the answer came only once the drain was over.
        refused.send(piece)
        refused.close()


def test_out_of_descriptors_a_drain_gives_way_to_a_new_connection(tmp_path: Path) -> None:
    """RLIMIT_NOFILE 60 and 80 refused uploads draining: new connections are still taken at once.

    A drain is a courtesy to the web server (it reads the 413, not a reset):
    when accept() runs out of descriptors the oldest drain ends instead of the
    worker pausing its accepts (100 "accept failed" lines in 3 s before).
    """
    sock = tmp_path / "fd.sock"
    log_path = tmp_path / "log"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (60, 60))

    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fcgi", "serve", APP, "--bind", f"unix:{sock}",
             "--max-body-size", "1000"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
            stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=low_limit,
        )  # fmt: skip
    draining = []
    try:
        wait_connectable(f"unix:{sock}", proc, str(log_path))
        params = get_params("/echo", method="POST")
        params["CONTENT_LENGTH"] = "100000"
        head = request_bytes(1, params, b"x" * 100)[:-8]  # the body goes on
        for _ in range(80):
            refused = connect(f"unix:{sock}")
            refused.sendall(head)
            assert RecordReader(refused).reply(1).status == 413
            draining.append(refused)
        for _ in range(5):
            assert roundtrip(f"unix:{sock}", get_params("/environ")).status == 200
        assert "accept failed" not in log_path.read_text(), log_path.read_text()
    finally:
        for refused in draining:
            refused.close()
        proc.terminate()
        proc.wait(30)
