"""One event, one log line: a peer that leaves or stalls, and peer bytes in a message.

The rule: "the log says what happened in one line that no peer can forge". A
web server that goes away in the middle of a request body or of an answer, or
stops sending its body, is one event; each driver must say so once, not once
per layer that noticed (the driver's read, the WSGI adapter's error, the
failed write of an answer no one reads). The cases run against a real
``python -m fcgi serve`` with a FastCGI, a uwsgi and an SCGI unix socket
listener, for each worker (sync and trio with a WSGI app, asyncio with an
ASGI one), over raw sockets.

A case is over, and every line it causes is in the log, once the access log
has its request (written when the request is finished, whatever ended it)
and the same listener has answered a good request after it (the sync
worker serves one connection at a time, so its lines come first).

Two things the other cases lean on are checked on their own: bytes a peer
sent are escaped exactly once in a protocol error's line (not a repr()
escaped again), and the SCRIPT_NAME/PATH_INFO split does not double the slash
of a mount Apache's mod_proxy_uwsgi sends with its trailing slash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fcgi import records as r
from fcgi.connection import Limits
from fcgi.errors import ProtocolError, RequestBodyIncomplete
from fcgi.escape import EscapingFormatter
from fcgi.scgi import ScgiConnection
from fcgi.wsgi import BodyCutOff, ErrorStream, InputStream, build_environ, respond

REPO = Path(__file__).resolve().parents[1]

#: The server's read_timeout, in seconds: short, so the stall cases are quick.
READ_TIMEOUT = 2
#: A deadline against hangs for anything the server should do.
DEADLINE = 30.0
#: The body a mid-body case announces, and how much of it it sends.
ANNOUNCED, SENT = 100_000, 1000

APP_SOURCE = """
import os


def app(environ, start_response):
    if environ["PATH_INFO"].startswith("/big"):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"b" * 65536 for _ in range(256))
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"pid=%d length=%d" % (os.getpid(), len(body))]


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
    if scope["path"].startswith("/big"):
        for _ in range(256):
            await send({"type": "http.response.body", "body": b"b" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    text = b"pid=%d length=%d" % (os.getpid(), len(body))
    await send({"type": "http.response.body", "body": text})
"""

#: worker -> the app it serves (the asyncio worker runs ASGI apps only).
WORKERS = {"sync": "lineapp:app", "trio": "lineapp:app", "asyncio": "lineapp:asgi"}
PROTOCOLS = ("fastcgi", "uwsgi", "scgi")
#: Unique paths, so that each case finds its own request in the access log.
_CASE_NUMBERS = itertools.count()


# -- the wire -------------------------------------------------------------------------------


def variables(path: str, method: str = "GET", length: int = 0) -> list[tuple[str, str]]:
    return [
        ("CONTENT_LENGTH", str(length)),
        ("REQUEST_METHOD", method),
        ("REQUEST_URI", path),
        ("PATH_INFO", path),
        ("QUERY_STRING", ""),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
    ]


def head(protocol: str, path: str, method: str = "GET", length: int = 0) -> bytes:
    """A request head; for FastCGI, BEGIN_REQUEST and PARAMS (FCGI_STDIN is the body)."""
    pairs = variables(path, method, length)
    if protocol == "uwsgi":
        block = b"".join(
            struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode()
            for k, v in pairs
        )
        return struct.pack("<BHB", 0, len(block), 0) + block
    if protocol == "scgi":
        pairs = [pairs[0], ("SCGI", "1"), *pairs[1:]]
        block = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs)
        return b"%d:%s," % (len(block), block)
    params = {k.encode(): v.encode() for k, v in pairs}
    return r.encode_begin_request(1, r.Role.RESPONDER, False) + r.encode_params(1, params)


def body_part(protocol: str, data: bytes, *, last: bool = False) -> bytes:
    if protocol != "fastcgi":
        return data
    return r.encode_record(r.STDIN, 1, data) + (r.encode_record(r.STDIN, 1) if last else b"")


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# -- the server -----------------------------------------------------------------------------


@dataclasses.dataclass
class Served:
    """A running ``fcgi serve`` with a FastCGI, a uwsgi and an SCGI unix socket listener."""

    worker: str
    proc: subprocess.Popen[bytes]
    sockets: dict[str, Path]
    log_path: Path
    access_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connect(self, protocol: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(DEADLINE)
        sock.connect(str(self.sockets[protocol]))
        return sock

    def good_request(self, protocol: str) -> bytes:
        """A whole POST on a connection of its own; the raw answer."""
        data = b"good body"
        with self.connect(protocol) as sock:
            sock.sendall(
                head(protocol, "/good", "POST", len(data)) + body_part(protocol, data, last=True)
            )
            answer = read_all(sock)
        assert b"length=9" in answer, (answer, self.log())
        return answer

    def wait(self, path: Path, text: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while text not in path.read_text(errors="replace"):
            assert self.proc.poll() is None, f"the server exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"{text!r} never came in {path}:\n{self.log()}"
            time.sleep(0.05)

    def lines_of(self, protocol: str, path: str, since: int) -> list[str]:
        """The log lines the case whose request was ``path`` caused (see the module docstring)."""
        self.wait(self.access_path, path)
        self.good_request(protocol)
        return self.log()[since:].splitlines()


@pytest.fixture(scope="module", params=list(WORKERS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    worker: str = request.param
    workdir = tmp_path_factory.mktemp(f"lines-{worker}")
    (workdir / "lineapp.py").write_text(textwrap.dedent(APP_SOURCE))
    sockets = {name: workdir / f"{name}.sock" for name in PROTOCOLS}
    log_path = workdir / "serve.log"
    access_path = workdir / "access.log"
    command = [
        sys.executable, "-m", "fcgi", "serve", WORKERS[worker], "--worker", worker,
        "--bind", f"unix:{sockets['fastcgi']}", "--bind", f"uwsgi:unix:{sockets['uwsgi']}",
        "--bind", f"scgi:unix:{sockets['scgi']}", "--read-timeout", str(READ_TIMEOUT),
        "--access-log", str(access_path), "--log-level", "info",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{workdir}", PYTHONDONTWRITEBYTECODE="1")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    served = Served(worker, proc, sockets, log_path, access_path)
    try:
        served.wait(log_path, "serving on")
        served.good_request("fastcgi")
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def case_path(kind: str) -> str:
    return f"/{kind}/case{next(_CASE_NUMBERS)}"


def assert_one_line(lines: list[str], server: Served, event: str) -> None:
    assert len(lines) == 1, f"{event}: {len(lines)} lines for one event:\n" + "\n".join(lines)
    assert "Traceback" not in server.log(), server.log()


# -- a peer that leaves or stalls: one line -------------------------------------------------


def test_a_peer_that_closes_mid_body_is_one_line(server: Served, protocol: str) -> None:
    path = case_path("echo")
    since = len(server.log())
    with server.connect(protocol) as sock:
        sock.sendall(head(protocol, path, "POST", ANNOUNCED) + body_part(protocol, b"x" * SENT))
    lines = server.lines_of(protocol, path, since)
    assert_one_line(lines, server, "closed mid-body")
    if protocol != "fastcgi":
        # The core knows how much was missing, and the line says it.
        assert f"connection closed {ANNOUNCED - SENT} bytes before" in lines[0], lines


def test_a_peer_that_closes_mid_response_is_one_line(server: Served, protocol: str) -> None:
    path = case_path("big")
    since = len(server.log())
    with server.connect(protocol) as sock:
        sock.sendall(head(protocol, path) + body_part(protocol, b"", last=True))
        assert sock.recv(65536), server.log()
    lines = server.lines_of(protocol, path, since)
    assert_one_line(lines, server, "closed mid-response")


def test_a_peer_that_stalls_mid_body_is_one_line(server: Served, protocol: str) -> None:
    path = case_path("echo")
    since = len(server.log())
    with server.connect(protocol) as sock:
        sock.sendall(head(protocol, path, "POST", ANNOUNCED) + body_part(protocol, b"x" * SENT))
        read_all(sock)  # a 400, or a close: the server ends it at read_timeout
    lines = server.lines_of(protocol, path, since)
    assert_one_line(lines, server, "stalled mid-body")
    assert f"{READ_TIMEOUT}s" in lines[0], lines


# -- the pieces, without a server -----------------------------------------------------------


def run(app: Any, fill: Any) -> tuple[tuple[int, int, bytes | None], list[bytes]]:
    sent: list[bytes] = []
    environ = build_environ(
        {"REQUEST_METHOD": "POST", "REQUEST_URI": "/up", "CONTENT_LENGTH": "10"},
        InputStream(fill, 10),
        ErrorStream(),
    )
    result = respond(app, environ, lambda data, flush: sent.append(data))
    return result, sent


def reading_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    environ["wsgi.input"].read()
    start_response("200 OK", [])
    return [b"read it all"]


def test_respond_answers_a_stalled_body_with_a_400_and_leaves_the_line_to_the_driver(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fill() -> bytes:
        raise RequestBodyIncomplete("request body cut short: nothing for 2s")

    with caplog.at_level(logging.DEBUG, logger="fcgi"):
        (status, app_status, _head), sent = run(reading_app, fill)
    assert (status, app_status) == (400, 1)
    assert sent and sent[0].startswith(b"Status: 400 "), sent
    assert not caplog.records, caplog.text


def test_respond_sends_nothing_to_a_peer_that_left_mid_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fill() -> bytes:
        raise BodyCutOff("request body cut short: the web server closed the connection")

    with caplog.at_level(logging.DEBUG, logger="fcgi"), pytest.raises(BodyCutOff):
        run(reading_app, fill)
    assert not caplog.records, caplog.text
    # What the app catches: a RequestBodyIncomplete, like any cut-off body.
    assert issubclass(BodyCutOff, RequestBodyIncomplete)


# -- peer bytes in a protocol error: escaped once -------------------------------------------


def logged(exc: Exception) -> str:
    """``exc`` as the drivers log it: an argument of a record, through the escaping formatter."""
    record = logging.LogRecord(
        "fcgi.worker", logging.WARNING, __file__, 1, "protocol error: %s", (exc,), None
    )
    return EscapingFormatter("%(message)s").format(record)


def scgi_error(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        ScgiConnection(Limits()).feed(data)
    return caught.value


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        # A control byte: \x01 once, not \x5Cx01.
        (b"\x01\x01\x00\x01", r"b'\x01\x01\x00\x01'"),
        # A backslash the peer sent is escaped (\x5C), once: it cannot pass
        # for one of our escapes, nor be doubled into \x5C\x5C.
        (b"\\x0A\n", r"b'\x5Cx0A\x0A'"),
    ],
)
def test_peer_bytes_in_an_scgi_error_are_escaped_once(sent: bytes, shown: str) -> None:
    line = logged(scgi_error(sent))
    assert shown in line, line
    assert "\n" not in line and "\x01" not in line, line


def test_a_content_length_that_is_no_number_is_quoted_escaped_once() -> None:
    block = b"CONTENT_LENGTH\x001\r\nforged\x00SCGI\x001\x00"
    line = logged(scgi_error(b"%d:%s," % (len(block), block)))
    assert r"b'1\x0D\x0Aforged'" in line, line


# The cores' messages are the same under every worker: one is enough.
@pytest.mark.parametrize("server", ["sync"], indirect=True)
def test_a_real_scgi_listener_logs_peer_bytes_escaped_once(server: Served) -> None:
    since = len(server.log())
    with server.connect("scgi") as sock:
        sock.sendall(b"\x01\\\x01\x00\x01\x00\x08")
        assert read_all(sock) == b""
    deadline = time.monotonic() + DEADLINE
    while "protocol error" not in server.log()[since:]:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    (line,) = [x for x in server.log()[since:].splitlines() if "protocol error" in x]
    assert r"b'\x01\x5C\x01\x00\x01\x00\x08'" in line, line


# -- a mount with its trailing slash ---------------------------------------------------------


@pytest.mark.parametrize(
    ("script_name", "path_info", "expected"),
    [
        # mod_proxy_uwsgi, ProxyPass "/app/": the prefix with its slash.
        ("/app/", "/", "/"),
        ("/app/", "/x/y", "/x/y"),
        ("/app/", "", "/"),
        # What other web servers send: unchanged.
        ("/app", "/", "/"),
        ("/app", "/x", "/x"),
        ("/app/x", "", "/x"),
        ("", "/app/x", "/x"),
        # A double slash inside the path is the client's: kept.
        ("/app", "//x", "//x"),
    ],
)
def test_a_mount_sent_with_its_trailing_slash_is_not_doubled(
    script_name: str, path_info: str, expected: str
) -> None:
    params = {"SCRIPT_NAME": script_name, "PATH_INFO": path_info, "REQUEST_URI": "/app/"}
    environ = build_environ(params, InputStream(lambda: b""), ErrorStream(), mount="/app")
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", expected)


#: An app that answers with the split it was given, for the Apache case below.
SPLIT_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("%s|%s" % (environ["SCRIPT_NAME"], environ["PATH_INFO"])).encode("latin-1")]
"""


def test_apache_mod_proxy_uwsgi_with_a_script_name_gives_the_mount_root_one_slash() -> None:
    """``deploy/apache/proxy_uwsgi.conf`` as shipped, and ``--script-name /app`` given anyway.

    mod_proxy_uwsgi sends ``/app/`` itself as SCRIPT_NAME "/app/" and PATH_INFO
    "/": the app at the mount's root must see "/app" and "/", not "//".
    """
    from frontends import ModulesApache, SharedDir, chgrp_socket, find_apache
    from webservers import Backend, ServerError, backend_env, fcgi_serve_command

    try:
        binary = find_apache()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    shared = SharedDir("apache-split")
    workdir = shared.sub("backend")
    (workdir / "splitapp.py").write_text(textwrap.dedent(SPLIT_APP))
    sock = workdir / "app.sock"
    backend = Backend(
        command=fcgi_serve_command("splitapp:app", f"uwsgi:unix:{sock}", ["--script-name", "/app"]),
        bind=f"unix:{sock}",
        workdir=workdir,
        env=backend_env([workdir]),
    )
    apache: ModulesApache | None = None
    try:
        backend.start()
        chgrp_socket(sock)
        apache = ModulesApache(
            binary=binary,
            sites=[("proxy_uwsgi.conf", {"socket": str(sock)})],
            shared=shared,
            related=[backend],
        )
        apache.start()
        for target, split in [("/app/", b"/app|/"), ("/app/x/y", b"/app|/x/y")]:
            with socket.create_connection(("127.0.0.1", apache.port), timeout=DEADLINE) as http:
                http.sendall(f"GET {target} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
                answer = read_all(http)
            assert answer.split(b"\r\n\r\n", 1)[-1] == split, (target, answer)
    finally:
        if apache is not None:
            apache.stop()
        backend.stop()
        shared.remove()
