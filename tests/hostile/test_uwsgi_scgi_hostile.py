"""Hostile peers on uwsgi and SCGI listeners: what the FastCGI listeners withstand, again.

The FastCGI listeners' hostile-client tests (slow and silent peers, oversized
heads, endless bodies, peers that leave early, garbage) are repeated here for
the two one-request protocols, over raw sockets, against a real
``python -m fcgi serve`` with a uwsgi and an SCGI unix socket listener, in
each worker (sync and trio with a WSGI app, asyncio with an ASGI one). After
every case the same process must answer a good request on that listener, and
the log must hold the line that names what happened, once, with nothing a
peer sent able to start a line of its own: every request here carries forged
log lines in its variables. (One event, one line: tests/test_one_line_logs.py
holds every worker to that for peers that leave or stall mid-body.)

Unix sockets, not TCP: TCP listeners use TCP_DEFER_ACCEPT, so the kernel
keeps a silent TCP peer from the worker altogether for several seconds
(fcgi.sockets.defer_accept); the cases below want the worker to meet it.
Every wait here is a deadline against hangs, never a performance bound.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: The server's read_timeout and request_header_timeout, in seconds: short,
#: so that the cases that wait for them are quick, and different, so that each
#: case shows which one closed it.
READ_TIMEOUT = 2
HEADER_TIMEOUT = 3
#: max_params_bytes, max_params and max_body_size of the server.
MAX_HEAD = 16 * 1024
MAX_VARS = 64
MAX_BODY = 1024 * 1024
#: A deadline against hangs for anything the server should do.
DEADLINE = 30.0
#: Seconds between two bytes of a trickled head: well inside read_timeout, so
#: only request_header_timeout can end it.
TRICKLE_INTERVAL = 0.2

#: Every request's variables carry these: a log line a forger would like to
#: see, after a line break (and a CR, a NUL and an escape for good measure).
FORGED = "2026-01-01 00:00:00,000 [1] WARNING fcgi.pool: forged"
PAYLOAD = "\r\n" + FORGED + "\x00\x1b[2J\n" + FORGED
#: How a line of the server's log starts: a record, or a continuation line of
#: one (fcgi.escape.CONTINUATION).
RECORD = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\] [A-Z]+ |  \| )")

APP_SOURCE = """
import hashlib
import os


def _route(path):
    return path.rstrip("/").rsplit("/", 1)[-1]


def app(environ, start_response):
    if _route(environ.get("PATH_INFO", "")) == "big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"b" * 65536 for _ in range(256))
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    text = f"pid={os.getpid()} length={len(body)} sha256={hashlib.sha256(body).hexdigest()}"
    return [text.encode()]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    if _route(scope["path"]) == "big":
        for _ in range(256):
            await send({"type": "http.response.body", "body": b"b" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    text = f"pid={os.getpid()} length={len(body)} sha256={hashlib.sha256(body).hexdigest()}"
    await send({"type": "http.response.body", "body": text.encode()})
"""

#: worker -> the app it serves (the asyncio worker runs ASGI apps only).
WORKERS = {"sync": "hostileapp:app", "trio": "hostileapp:app", "asyncio": "hostileapp:asgi"}

#: What each worker logs when a peer goes away in the middle of a body or of
#: an answer (the drivers word it differently; each says it once).
CLOSED_MID_BODY = {
    "sync": "request body from {peer} cut short: connection closed {left} bytes before",
    "trio": "connection from {peer} closed mid-record: connection closed {left} bytes before",
    "asyncio": "connection from {peer} closed mid-record: connection closed {left} bytes before",
}
STALLED_MID_BODY = {
    "sync": "request body from {peer} cut short: nothing arrived for {timeout}s (read_timeout)",
    "trio": "closing connection from {peer}: stalled for {timeout}s in the middle of a request",
    "asyncio": "closing connection from {peer}: stalled for {timeout}s in the middle of a request",
}
GONE_MID_RESPONSE = {
    "sync": "web server {peer} went away while we answered",
    "trio": "connection from {peer} failed mid-request",
    "asyncio": "connection from {peer} failed mid-request",
}


# -- the wire -------------------------------------------------------------------------------


def variables(path: str, method: str = "GET", length: int = 0) -> list[tuple[str, str]]:
    """A request's variables as a web server sends them, with PAYLOAD in those a client shapes."""
    query = "q=" + PAYLOAD
    return [
        ("CONTENT_LENGTH", str(length)),
        ("REQUEST_METHOD", method),
        ("REQUEST_URI", f"{path}{PAYLOAD}?{query}"),
        ("PATH_INFO", path),
        ("QUERY_STRING", query),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("REMOTE_ADDR", "192.0.2.1"),
        ("HTTP_HOST", "localhost"),
        ("HTTP_USER_AGENT", "hostile" + PAYLOAD),
    ]


def uwsgi_head(pairs: list[tuple[str, str]]) -> bytes:
    """A modifier1 0 packet header and vars block (u16 little-endian lengths)."""
    block = b"".join(
        struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
        for k, v in ((k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs)
    )
    return struct.pack("<BHB", 0, len(block), 0) + block


def scgi_head(pairs: list[tuple[str, str]]) -> bytes:
    """A netstring of NUL-terminated names and values, SCGI=1 after CONTENT_LENGTH."""
    pairs = [pairs[0], ("SCGI", "1"), *pairs[1:]]
    block = b"".join(k.encode("latin-1") + b"\0" + v.encode("latin-1") + b"\0" for k, v in pairs)
    return b"%d:%s," % (len(block), block)


HEADS: dict[str, Callable[[list[tuple[str, str]]], bytes]] = {
    "uwsgi": uwsgi_head,
    "scgi": scgi_head,
}


def status_of(protocol: str, answer: bytes) -> int:
    """The status of an answer: a status line over uwsgi, a Status header over SCGI."""
    first = answer.split(b"\r\n", 1)[0]
    if protocol == "uwsgi":
        match = re.fullmatch(rb"HTTP/1\.1 (\d{3})( .*)?", first)
    else:
        match = re.fullmatch(rb"Status: (\d{3})( .*)?", first)
    assert match, f"not a {protocol} answer: {answer[:200]!r}"
    return int(match.group(1))


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a reset counts as the end)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def closed_by_server(sock: socket.socket) -> bool:
    """True if the server has closed ``sock`` (waiting up to DEADLINE for it)."""
    sock.settimeout(DEADLINE)
    try:
        return read_all(sock) == b""
    except TimeoutError:
        return False


def send_all_or_closed(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; False if the server closed the connection first."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


# -- the server -----------------------------------------------------------------------------


@dataclasses.dataclass
class Served:
    """A running ``fcgi serve`` with one uwsgi and one SCGI unix socket listener."""

    worker: str
    proc: subprocess.Popen[bytes]
    sockets: dict[str, Path]
    log_path: Path
    access_path: Path
    pid: int = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def peer(self, protocol: str) -> str:
        """How the log names a peer of ``protocol``'s listener (a unix peer has no name)."""
        return f"unix:{self.sockets[protocol]}"

    def connect(self, protocol: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(DEADLINE)
        sock.connect(str(self.sockets[protocol]))
        return sock

    def exchange(self, protocol: str, data: bytes) -> bytes:
        with self.connect(protocol) as sock:
            send_all_or_closed(sock, data)
            return read_all(sock)

    def good_request(self, protocol: str) -> bytes:
        """A plain POST; its answer's body (``pid=... length=... sha256=...``)."""
        body = b"good body"
        answer = self.exchange(
            protocol, HEADS[protocol](variables("/good", "POST", len(body))) + body
        )
        assert status_of(protocol, answer) == 200, (answer, self.log())
        return answer.split(b"\r\n\r\n", 1)[1]

    def wait_log(self, text: str, since: int) -> str:
        """The log after offset ``since``, once it holds ``text``."""
        deadline = time.monotonic() + DEADLINE
        while True:
            assert self.proc.poll() is None, f"the server exited:\n{self.log()}"
            tail = self.log()[since:]
            if text in tail:
                return tail
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared in the log:\n{self.log()}")
            time.sleep(0.05)

    def mark(self) -> int:
        return len(self.log())


@pytest.fixture(scope="module", params=list(WORKERS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    worker: str = request.param
    workdir = tmp_path_factory.mktemp(f"hostile-{worker}")
    (workdir / "hostileapp.py").write_text(textwrap.dedent(APP_SOURCE))
    sockets = {"uwsgi": workdir / "u.sock", "scgi": workdir / "s.sock"}
    log_path = workdir / "serve.log"
    access_path = workdir / "access.log"
    command = [
        sys.executable, "-m", "fcgi", "serve", WORKERS[worker], "--worker", worker,
        "--bind", f"uwsgi:unix:{sockets['uwsgi']}", "--bind", f"scgi:unix:{sockets['scgi']}",
        "--read-timeout", str(READ_TIMEOUT), "--request-header-timeout", str(HEADER_TIMEOUT),
        "--max-params-bytes", str(MAX_HEAD), "--max-params", str(MAX_VARS),
        "--max-body-size", str(MAX_BODY), "--access-log", str(access_path),
        "--log-level", "info",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{workdir}", PYTHONDONTWRITEBYTECODE="1")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    served = Served(worker, proc, sockets, log_path, access_path)
    try:
        served.wait_log("serving on", 0)
        served.pid = int(served.good_request("uwsgi").split()[0].removeprefix(b"pid="))
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(params=["uwsgi", "scgi"])
def protocol(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def assert_still_serving(server: Served, protocol: str) -> None:
    """The same process answers a good request on the listener, and its logs are clean."""
    body = server.good_request(protocol)
    assert body.startswith(b"pid=%d length=9 " % server.pid), (body, server.log())
    assert_no_forged_line(server.log(), "the log")
    assert_no_forged_line(server.access_path.read_text(errors="replace"), "the access log")
    for line in server.log().splitlines():
        assert RECORD.match(line), f"a line that is no record of ours: {line!r}\n{server.log()}"
    assert "Traceback" not in server.log(), server.log()


def assert_no_forged_line(text: str, sink: str) -> None:
    for line in text.splitlines():
        assert not line.startswith(FORGED[:10]), f"{sink}: forged line {line!r}\n{text}"
        assert "\x1b" not in line and "\x00" not in line, f"{sink}: raw control in {line!r}"


def assert_once(tail: str, text: str, server: Served) -> None:
    """``text`` is in exactly one line of the log since the case began."""
    lines = [line for line in tail.splitlines() if text in line]
    assert len(lines) == 1, f"{text!r} in {len(lines)} lines:\n{server.log()}"


# -- peers that say nothing, or too little too slowly -----------------------------------------


def test_a_silent_peer_is_closed_after_read_timeout(server: Served, protocol: str) -> None:
    since = server.mark()
    with server.connect(protocol) as silent:
        # It holds no worker meanwhile.
        server.good_request(protocol)
        assert closed_by_server(silent), server.log()
    line = f"closing idle connection from {server.peer(protocol)} after {READ_TIMEOUT}s"
    assert_once(server.wait_log(line, since), line, server)
    assert_still_serving(server, protocol)


def test_a_head_trickled_byte_by_byte_is_closed_at_request_header_timeout(
    server: Served, protocol: str
) -> None:
    head = HEADS[protocol](variables("/slow"))
    since = server.mark()
    closed = threading.Event()
    sent = 0

    def trickle() -> None:
        nonlocal sent
        with server.connect(protocol) as sock:
            for byte in head:
                if not send_all_or_closed(sock, bytes([byte])):
                    break
                sent += 1
                # A close the send did not notice yet: readable, and at its end.
                sock.settimeout(TRICKLE_INTERVAL)
                with contextlib.suppress(TimeoutError):
                    if sock.recv(1) == b"":
                        break
            closed.set()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    # While it trickles, the worker serves others.
    server.good_request(protocol)
    assert closed.wait(DEADLINE), f"the trickling peer was never closed:\n{server.log()}"
    thread.join(DEADLINE)
    assert sent < len(head), f"the whole head went through ({sent} bytes)\n{server.log()}"
    line = (
        f"closing connection from {server.peer(protocol)}: no complete request head within "
        f"{HEADER_TIMEOUT}s (request_header_timeout)"
    )
    assert_once(server.wait_log(line, since), line, server)
    assert_still_serving(server, protocol)


def test_a_peer_silent_in_the_middle_of_its_body_is_cut_off_at_read_timeout(
    server: Served, protocol: str
) -> None:
    since = server.mark()
    with server.connect(protocol) as sock:
        sock.sendall(HEADS[protocol](variables("/echo", "POST", 100_000)) + b"x" * 1000)
        # The answer (a 400 where the app could still be answered) or a close:
        # either way the server ends it, not the peer.
        sock.settimeout(DEADLINE)
        read_all(sock)
    line = STALLED_MID_BODY[server.worker].format(peer=server.peer(protocol), timeout=READ_TIMEOUT)
    assert_once(server.wait_log(line, since), line, server)
    assert_still_serving(server, protocol)


# -- heads too large, malformed, or of another protocol ----------------------------------------


def oversized_head(protocol: str) -> tuple[bytes, int]:
    """A head whose size (announced in its first bytes) is over max_params_bytes; that size."""
    size = MAX_HEAD + 4000
    if protocol == "uwsgi":
        return struct.pack("<BHB", 0, size, 0) + b"\0" * size, size
    return b"%d:%s," % (size, b"A\0" * (size // 2)), size


def test_an_oversized_head_is_a_431_before_it_is_read(server: Served, protocol: str) -> None:
    head, size = oversized_head(protocol)
    since = server.mark()
    answer = server.exchange(protocol, head)
    assert status_of(protocol, answer) == 431, (answer, server.log())
    line = f"request head of {size} bytes is larger than max_params_bytes ({MAX_HEAD} bytes)"
    assert_once(server.wait_log(line, since), line, server)
    assert_still_serving(server, protocol)


def test_more_variables_than_max_params_is_a_431(server: Served, protocol: str) -> None:
    pairs = variables("/echo") + [(f"HTTP_X_{i}", "v") for i in range(MAX_VARS)]
    since = server.mark()
    answer = server.exchange(protocol, HEADS[protocol](pairs))
    assert status_of(protocol, answer) == 431, (answer, server.log())
    line = f"more than {MAX_VARS} request variables"
    assert_once(server.wait_log(line, since), line, server)
    assert_still_serving(server, protocol)


#: Heads whose framing is broken: the connection is closed without an answer.
#: (protocol, case) -> (the bytes, what the log says).
MALFORMED = {
    # A key length that runs past the end of the vars block.
    ("uwsgi", "var-length"): (
        struct.pack("<BHB", 0, 6, 0) + struct.pack("<H", 200) + b"KEY" + PAYLOAD[:1].encode(),
        "uwsgi var key of 200 bytes runs past the end of the vars block",
    ),
    # More length digits than max_params_bytes has: refused before any int().
    ("scgi", "length-digits"): (
        b"1" * 5000 + b":",
        f"SCGI netstring length of more than {len(str(MAX_HEAD))} digits",
    ),
    # A netstring not ended by ",".
    ("scgi", "no-comma"): (
        scgi_head(variables("/echo"))[:-1] + b";",
        "SCGI netstring not followed by ','",
    ),
}


@pytest.mark.parametrize(("proto", "case"), list(MALFORMED), ids=["-".join(k) for k in MALFORMED])
def test_a_malformed_head_closes_the_connection_without_an_answer(
    server: Served, proto: str, case: str
) -> None:
    data, line = MALFORMED[(proto, case)]
    since = server.mark()
    assert server.exchange(proto, data) == b"", server.log()
    assert_once(server.wait_log(line, since), line, server)
    assert_still_serving(server, proto)


#: Another protocol's request (or none at all) on each listener: the log says
#: what the peer seems to speak. (listener, what is sent) -> (bytes, hint).
WRONG_PROTOCOL = {
    # A FastCGI BEGIN_REQUEST record (version 1, type 1, id 1, 8 bytes of body).
    ("uwsgi", "fastcgi"): (
        bytes([1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
        "(a FastCGI client? its records start with version 1)",
    ),
    ("uwsgi", "scgi"): (scgi_head(variables("/echo")), "(an SCGI client?"),
    ("uwsgi", "http"): (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "(an HTTP client?)"),
    ("scgi", "fastcgi"): (
        bytes([1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
        "(a FastCGI client? its records start with version 1)",
    ),
    ("scgi", "uwsgi"): (uwsgi_head(variables("/echo")), "(a uwsgi client?"),
    ("scgi", "http"): (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "(an HTTP client?)"),
    # Garbage whose quote in the message holds a line break and a forged line.
    ("scgi", "forged"): (b"9\n" + FORGED.encode() + b"\n", "does not start with a netstring"),
}


@pytest.mark.parametrize(
    ("listener", "sent"), list(WRONG_PROTOCOL), ids=["-".join(k) for k in WRONG_PROTOCOL]
)
def test_garbage_is_a_protocol_error_that_names_the_likely_protocol(
    server: Served, listener: str, sent: str
) -> None:
    data, hint = WRONG_PROTOCOL[(listener, sent)]
    since = server.mark()
    assert server.exchange(listener, data) == b"", server.log()
    tail = server.wait_log(hint, since)
    errors = [line for line in tail.splitlines() if "protocol error" in line]
    assert len(errors) == 1 and hint in errors[0], server.log()
    assert_still_serving(server, listener)


# -- bodies: too long, too large, cut short ---------------------------------------------------


def test_a_body_longer_than_content_length_never_reaches_the_app(
    server: Served, protocol: str
) -> None:
    """CONTENT_LENGTH 10, then 5000 bytes more: the framing is broken.

    Sent at once, the excess arrives with the head and the connection is
    closed unanswered; had the app run first, it would have read its 10
    bytes and no more. Either way it never sees the rest.
    """
    body = b"0123456789"
    since = server.mark()
    answer = server.exchange(
        protocol, HEADS[protocol](variables("/echo", "POST", len(body))) + body + b"E" * 5000
    )
    if answer:
        assert status_of(protocol, answer) == 200, (answer, server.log())
        assert b" length=10 " in answer, (answer, server.log())
    else:
        line = "protocol error: 5000 bytes after the end of the request body"
        assert_once(server.wait_log(line, since), line, server)
    assert_still_serving(server, protocol)


@pytest.mark.parametrize(
    "length", [str(MAX_BODY + 1), "9" * 30], ids=["just-over", "thirty-digits"]
)
def test_a_content_length_over_max_body_size_is_a_413_before_the_body(
    server: Served, protocol: str, length: str
) -> None:
    pairs = [("CONTENT_LENGTH", length), *variables("/echo", "POST")[1:]]
    since = server.mark()
    with server.connect(protocol) as sock:
        sock.sendall(HEADS[protocol](pairs))
        # The answer comes before any of the body is sent.
        answer = read_all(sock)
    assert status_of(protocol, answer) == 413, (answer, server.log())
    line = f"(CONTENT_LENGTH) is larger than max_body_size ({MAX_BODY} bytes)"
    assert_once(server.wait_log(line, since), line, server)
    assert_still_serving(server, protocol)


def test_a_content_length_that_is_no_number_is_refused(server: Served, protocol: str) -> None:
    """uwsgi: a 400 for the one request (its head was sound). SCGI: its framing is broken."""
    # No NUL in it: that would end the value early in an SCGI block.
    pairs = [("CONTENT_LENGTH", "1\r\n" + FORGED), *variables("/echo", "POST")[1:]]
    since = server.mark()
    answer = server.exchange(protocol, HEADS[protocol](pairs) + b"x")
    if protocol == "uwsgi":
        assert status_of(protocol, answer) == 400, (answer, server.log())
        line = "rejected request"
        tail = server.wait_log("CONTENT_LENGTH is not a decimal number", since)
    else:
        assert answer == b"", (answer, server.log())
        line = "protocol error: SCGI CONTENT_LENGTH is not a decimal number: b'1"
        tail = server.wait_log(line, since)
    assert_once(tail, line, server)
    assert_still_serving(server, protocol)


def test_a_peer_that_closes_mid_body_costs_only_its_request(server: Served, protocol: str) -> None:
    length, sent = 100_000, 1000
    since = server.mark()
    with server.connect(protocol) as sock:
        sock.sendall(HEADS[protocol](variables("/echo", "POST", length)) + b"x" * sent)
    line = CLOSED_MID_BODY[server.worker].format(peer=server.peer(protocol), left=length - sent)
    assert_once(server.wait_log(line, since), line, server)
    assert_still_serving(server, protocol)


def test_a_peer_that_closes_mid_response_costs_only_its_request(
    server: Served, protocol: str
) -> None:
    since = server.mark()
    with server.connect(protocol) as sock:
        sock.sendall(HEADS[protocol](variables("/big")))
        assert sock.recv(65536), server.log()
    line = GONE_MID_RESPONSE[server.worker].format(peer=server.peer(protocol))
    assert_once(server.wait_log(line, since), line, server)
    assert_still_serving(server, protocol)
