"""Tests for :mod:`fcgi.client` and ``fcgi request``, against an in-test FastCGI server."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from fcgi import events as ev
from fcgi import records as r
from fcgi.cli import add_request_arguments, request_command
from fcgi.client import (
    ConnectionFailed,
    FastCGIClient,
    RequestTimeout,
    UsageError,
    build_params,
    parse_address,
    parse_cgi_response,
)
from fcgi.connection import Limits, ServerConnection
from fcgi.errors import ProtocolError


@dataclass
class Call:
    """What the server saw of one request."""

    role: int
    keep_conn: bool
    params: dict[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    data: bytes = b""
    stdin_ended: bool = False


App = Callable[[Call], tuple[bytes, bytes, int]]  # -> stdout, stderr, app status


def hello_app(call: Call) -> tuple[bytes, bytes, int]:
    return (
        b"Content-Type: text/plain\r\n\r\nhello " + call.params.get("PATH_INFO", "").encode(),
        b"",
        0,
    )


class Server:
    """A tiny threaded FastCGI server on ServerConnection, for one listening socket."""

    def __init__(self, listener: socket.socket, app: App, limits: Limits | None = None) -> None:
        self.listener = listener
        self.app = app
        self.limits = limits or Limits()
        self.calls: list[Call] = []
        self.connections = 0
        self.errors: list[str] = []
        #: Called with (sock, conn, event) before the default handling; True = handled.
        self.hook: Callable[[socket.socket, ServerConnection, ev.Event], bool] | None = None
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket) -> None:
        conn = ServerConnection(self.limits)
        calls: dict[int, Call] = {}
        with sock:
            while not conn.should_close:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return
                try:
                    if not chunk:
                        conn.feed_eof()
                        return
                    events = conn.feed(chunk)
                except ProtocolError as exc:
                    self.errors.append(str(exc))
                    return
                for event in events:
                    if self.hook is not None and self.hook(sock, conn, event):
                        continue
                    self._handle(conn, calls, event)
                try:
                    sock.sendall(conn.data_to_send())
                except OSError:
                    return

    def _handle(self, conn: ServerConnection, calls: dict[int, Call], event: ev.Event) -> None:
        rid = event.request_id
        if isinstance(event, ev.BeginRequest):
            calls[rid] = Call(event.role, event.keep_conn)
            return
        call = calls.get(rid)
        if call is None:
            return
        run = False
        if isinstance(event, ev.Params):
            call.params = event.params
            run = call.role == r.Role.AUTHORIZER
        elif isinstance(event, ev.StdinData):
            call.stdin += event.data
        elif isinstance(event, ev.StdinEnd):
            call.stdin_ended = True
            run = call.role == r.Role.RESPONDER
        elif isinstance(event, ev.DataChunk):
            call.data += event.data
        elif isinstance(event, ev.DataEnd):
            run = True
        elif isinstance(event, ev.RequestRejected | ev.AbortRequest):
            conn.end_request(rid)
            del calls[rid]
        if run:
            self.calls.append(call)
            stdout, stderr, status = self.app(call)
            conn.send_stdout(rid, stdout)
            conn.send_stderr(rid, stderr)
            conn.end_request(rid, status)
            del calls[rid]

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def sockdir() -> Iterator[str]:
    # Short path: AF_UNIX paths are limited to about 100 bytes.
    path = tempfile.mkdtemp(prefix="fcgi-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def unix_listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    return sock


@pytest.fixture
def serve(sockdir: str) -> Iterator[Callable[..., tuple[Server, str]]]:
    servers: list[Server] = []

    def start(app: App = hello_app, limits: Limits | None = None) -> tuple[Server, str]:
        path = os.path.join(sockdir, f"s{len(servers)}.sock")
        server = Server(unix_listener(path), app, limits)
        servers.append(server)
        return server, path

    yield start
    for server in servers:
        server.close()


# -- addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("unix:/run/app.sock", (socket.AF_UNIX, "/run/app.sock")),
        ("unix:relative.sock", (socket.AF_UNIX, "relative.sock")),
        ("/run/app.sock", (socket.AF_UNIX, "/run/app.sock")),
        ("./app.sock", (socket.AF_UNIX, "./app.sock")),
        ("127.0.0.1:9000", (socket.AF_INET, ("127.0.0.1", 9000))),
        ("localhost:9000", (socket.AF_INET, ("localhost", 9000))),
        ("[::1]:9000", (socket.AF_INET6, ("::1", 9000))),
    ],
)
def test_parse_address(address: str, expected: tuple[int, object]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "address", ["", "unix:", "app.sock", "host", "host:", ":9000", "h:0", "h:70000", "h:x",
                "::1:9000", "[::1]", "[]:9000", "[::1]9000"]
)  # fmt: skip
def test_parse_address_errors(address: str) -> None:
    with pytest.raises(ValueError, match=r"expected|port|IPv6|empty"):
        parse_address(address)


def test_client_rejects_bad_address_early() -> None:
    with pytest.raises(ValueError):
        FastCGIClient("nonsense")


# -- CGI response parsing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "status", "reason", "headers", "body"),
    [
        (b"Content-Type: text/plain\r\n\r\nhi", 200, "OK", [("Content-Type", "text/plain")], b"hi"),
        (b"Status: 404 Not Found\r\n\r\n", 404, "Not Found", [], b""),
        (b"Status: 418\r\n\r\n", 418, "I'm a Teapot", [], b""),
        (b"Status: 299 Custom thing\r\n\r\n", 299, "Custom thing", [], b""),
        (b"Status: 599\r\n\r\n", 599, "", [], b""),
        (b"Location: /elsewhere\r\n\r\n", 302, "Found", [("Location", "/elsewhere")], b""),
        (b"Status: 301 Moved\r\nLocation: /x\r\n\r\n", 301, "Moved", [("Location", "/x")], b""),
        (b"Content-Type: a\nX-Y:  z \n\nbody\r\n\r\n", 200, "OK",
         [("Content-Type", "a"), ("X-Y", "z")], b"body\r\n\r\n"),
        (b"\r\nno headers", 200, "OK", [], b"no headers"),
        (b"X: a\r\n b\r\n\r\n", 200, "OK", [("X", "a b")], b""),
        (b"X: \xe9\r\n\r\n\x00\xff", 200, "OK", [("X", "\xe9")], b"\x00\xff"),
    ],
)  # fmt: skip
def test_parse_cgi_response(
    stdout: bytes, status: int, reason: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    assert parse_cgi_response(stdout) == (status, reason, headers, body, None)


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        (b"", "no output"),
        (b"Content-Type: text/plain\r\nno end", "no blank line"),
        (b"just some text\n\n", "without a name"),
        (b": value\n\n", "without a name"),
        (b"Status: abc\n\n", "bad Status"),
        (b"Status: 20\n\n", "bad Status"),
        (b"Status: 099 x\n\n", "bad Status"),
    ],
)
def test_parse_cgi_response_errors(stdout: bytes, message: str) -> None:
    status, reason, headers, body, error = parse_cgi_response(stdout)
    assert (status, reason, headers, body) == (502, "Bad Gateway", [], stdout)
    assert error is not None and message in error


# -- the client against a real socket ------------------------------------------------------


def test_get_over_unix_prefix(serve: Callable[..., tuple[Server, str]]) -> None:
    server, path = serve()
    response = FastCGIClient(f"unix:{path}").request(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "QUERY_STRING": "a=1"}
    )
    assert response.status == 200
    assert response.reason == "OK"
    assert response.headers == [("Content-Type", "text/plain")]
    assert response.header("content-type") == "text/plain"
    assert response.header("missing", "d") == "d"
    assert response.body == b"hello /x"
    assert response.stderr == b""
    assert response.app_status == 0
    assert response.protocol_status == r.ProtocolStatus.REQUEST_COMPLETE
    assert response.error is None
    (call,) = server.calls
    assert call.params == {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "QUERY_STRING": "a=1"}
    assert call.role == r.Role.RESPONDER and not call.keep_conn and call.stdin_ended


def test_get_over_absolute_path(serve: Callable[..., tuple[Server, str]]) -> None:
    _, path = serve()
    assert FastCGIClient(path).request({"PATH_INFO": "/abs"}).body == b"hello /abs"


def test_get_over_tcp() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    server = Server(listener, hello_app)
    try:
        port = listener.getsockname()[1]
        assert FastCGIClient(f"127.0.0.1:{port}").request({"PATH_INFO": "/t"}).body == b"hello /t"
        assert FastCGIClient(f"localhost:{port}").request({}).status == 200
    finally:
        server.close()


def test_get_over_ipv6() -> None:
    # The machines this runs on have IPv6 loopback (tests/test_server.py binds
    # [::1] too): a missing one is a failure, not a silent skip.
    listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    server = Server(listener, hello_app)
    try:
        port = listener.getsockname()[1]
        assert FastCGIClient(f"[::1]:{port}").request({"PATH_INFO": "/6"}).body == b"hello /6"
    finally:
        server.close()


def echo_app(call: Call) -> tuple[bytes, bytes, int]:
    digest = hashlib.sha256(call.stdin).hexdigest()
    head = f"Status: 201 Created\r\nX-Sha256: {digest}\r\nX-Length: {len(call.stdin)}\r\n\r\n"
    return head.encode() + call.stdin, b"", 0


def test_post_large_body_round_trip(serve: Callable[..., tuple[Server, str]]) -> None:
    _, path = serve(echo_app)
    body = os.urandom(1 << 20)
    response = FastCGIClient(path).request({"REQUEST_METHOD": "POST"}, body)
    assert response.status == 201
    assert response.header("X-Sha256") == hashlib.sha256(body).hexdigest()
    assert response.body == body


def test_backend_answering_before_reading_the_body_does_not_deadlock(
    serve: Callable[..., tuple[Server, str]],
) -> None:
    server, path = serve()
    big = b"x" * (4 << 20)

    def answer_early(sock: socket.socket, conn: ServerConnection, event: ev.Event) -> bool:
        if isinstance(event, ev.Params):
            # Write a large response while the client is still sending its body.
            conn.send_stdout(event.request_id, b"Status: 413 Too Large\r\n\r\n" + big)
            conn.end_request(event.request_id)
            sock.sendall(conn.data_to_send())
            return True
        return isinstance(event, ev.StdinData | ev.StdinEnd)

    server.hook = answer_early
    response = FastCGIClient(path).request({}, os.urandom(4 << 20))
    assert response.status == 413
    assert response.body == big


def test_connection_with_unsent_body_is_not_reused(
    serve: Callable[..., tuple[Server, str]],
) -> None:
    server, path = serve()
    resume = threading.Event()

    def answer_early(sock: socket.socket, conn: ServerConnection, event: ev.Event) -> bool:
        if isinstance(event, ev.Params) and event.params.get("EARLY"):
            conn.send_stdout(event.request_id, b"Status: 413\r\n\r\n")
            conn.end_request(event.request_id)
            sock.sendall(conn.data_to_send())
            resume.wait()
            return True
        return False

    server.hook = answer_early
    with FastCGIClient(path, timeout=60) as client:
        # The backend answers, then stops reading a body far larger than the socket buffers.
        response = client.request({"EARLY": "1"}, bytes(16 << 20), keep_conn=True)
        assert response.status == 413
        resume.set()
        # Half of that body was never sent: the next request must not follow it.
        assert client.request({}, keep_conn=True).status == 200
    assert server.connections == 2


def test_stderr_and_app_status(serve: Callable[..., tuple[Server, str]]) -> None:
    _, path = serve(lambda call: (b"Status: 500\r\n\r\noops", b"Traceback: boom\n", 3))
    response = FastCGIClient(path).request({})
    assert response.status == 500
    assert response.reason == "Internal Server Error"
    assert response.body == b"oops"
    assert response.stderr == b"Traceback: boom\n"
    assert response.app_status == 3


def test_redirect_without_status(serve: Callable[..., tuple[Server, str]]) -> None:
    _, path = serve(lambda call: (b"Location: http://example.com/\n\n", b"", 0))
    response = FastCGIClient(path).request({})
    assert (response.status, response.headers) == (302, [("Location", "http://example.com/")])


def test_malformed_cgi_output_is_reported(serve: Callable[..., tuple[Server, str]]) -> None:
    _, path = serve(lambda call: (b"<html>no headers</html>", b"", 0))
    response = FastCGIClient(path).request({})
    assert response.status == 502
    assert response.body == response.stdout == b"<html>no headers</html>"
    assert response.error is not None and "no blank line" in response.error


def test_empty_output_is_reported(serve: Callable[..., tuple[Server, str]]) -> None:
    _, path = serve(lambda call: (b"", b"", 0))
    response = FastCGIClient(path).request({})
    assert response.status == 502
    assert response.error is not None and "no output" in response.error


def test_keep_conn_reuses_the_connection(serve: Callable[..., tuple[Server, str]]) -> None:
    server, path = serve()
    with FastCGIClient(path) as client:
        for i in range(3):
            assert (
                client.request({"PATH_INFO": f"/{i}"}, keep_conn=True).body
                == f"hello /{i}".encode()
            )
        assert client.get_values(["FCGI_MPXS_CONNS"]) == {"FCGI_MPXS_CONNS": "0"}
        assert client.request({"PATH_INFO": "/last"}).body == b"hello /last"
    assert server.connections == 1
    assert [c.keep_conn for c in server.calls] == [True, True, True, False]


def test_without_keep_conn_each_request_has_its_own_connection(
    serve: Callable[..., tuple[Server, str]],
) -> None:
    server, path = serve()
    client = FastCGIClient(path)
    for _ in range(3):
        assert client.request({}).status == 200
    assert server.connections == 3
    assert not any(c.keep_conn for c in server.calls)


def test_kept_connection_closed_by_backend_is_replaced(
    serve: Callable[..., tuple[Server, str]],
) -> None:
    server, path = serve()
    # A backend that ignores KEEP_CONN and closes after every request.
    server.limits = Limits()

    def close_anyway(sock: socket.socket, conn: ServerConnection, event: ev.Event) -> bool:
        if isinstance(event, ev.StdinEnd):
            conn.send_stdout(event.request_id, b"\r\nbye")
            conn.end_request(event.request_id)
            sock.sendall(conn.data_to_send())
            sock.shutdown(socket.SHUT_RDWR)
            return True
        return False

    server.hook = close_anyway
    with FastCGIClient(path) as client:
        assert client.request({}, keep_conn=True).body == b"bye"
        assert client.request({}, keep_conn=True).body == b"bye"
    assert server.connections == 2


def test_get_values(serve: Callable[..., tuple[Server, str]]) -> None:
    _, path = serve(limits=Limits(max_active_ids=4, max_conns=8, max_reqs=32))
    client = FastCGIClient(path)
    assert client.get_values() == {
        "FCGI_MAX_CONNS": "8",
        "FCGI_MAX_REQS": "32",
        "FCGI_MPXS_CONNS": "1",
    }
    assert client.get_values(["FCGI_MAX_REQS", "NOT_A_VARIABLE"]) == {"FCGI_MAX_REQS": "32"}


def test_unknown_role_is_a_501(serve: Callable[..., tuple[Server, str]]) -> None:
    _, path = serve(limits=Limits(roles=(r.Role.RESPONDER,)))
    response = FastCGIClient(path).request({}, role=r.Role.FILTER)
    assert response.protocol_status == r.ProtocolStatus.UNKNOWN_ROLE
    assert response.status == 501
    assert response.error is not None and "UNKNOWN_ROLE" in response.error


def test_overloaded_is_a_503(serve: Callable[..., tuple[Server, str]]) -> None:
    server, path = serve()

    def refuse(sock: socket.socket, conn: ServerConnection, event: ev.Event) -> bool:
        if isinstance(event, ev.BeginRequest):
            conn.end_request(event.request_id, 0, r.ProtocolStatus.OVERLOADED)
            return True
        return False

    server.hook = refuse
    response = FastCGIClient(path).request({})
    assert (response.status, response.protocol_status) == (503, r.ProtocolStatus.OVERLOADED)
    assert response.error is not None and "OVERLOADED" in response.error


def test_authorizer_sends_no_stdin(serve: Callable[..., tuple[Server, str]]) -> None:
    server, path = serve(lambda call: (b"Status: 200\r\nVariable-USER: bob\r\n\r\n", b"", 0))
    response = FastCGIClient(path).request(
        {"REMOTE_USER": "bob"}, b"ignored", role=r.Role.AUTHORIZER
    )
    assert response.status == 200
    assert response.headers == [("Variable-USER", "bob")]
    (call,) = server.calls
    assert call.role == r.Role.AUTHORIZER
    assert call.stdin == b"" and not call.stdin_ended


def test_filter_sends_the_data_stream(serve: Callable[..., tuple[Server, str]]) -> None:
    def upper(call: Call) -> tuple[bytes, bytes, int]:
        return b"Content-Type: text/plain\r\n\r\n" + call.data.upper(), b"", 0

    server, path = serve(upper)
    response = FastCGIClient(path).request(
        {"FCGI_DATA_LAST_MOD": "1700000000"}, b"in", role=r.Role.FILTER, data=b"file body"
    )
    assert response.body == b"FILE BODY"
    (call,) = server.calls
    assert call.stdin == b"in"
    assert call.params["FCGI_DATA_LENGTH"] == "9"
    assert call.params["FCGI_DATA_LAST_MOD"] == "1700000000"


def test_params_bytes_values_are_sent_exactly(serve: Callable[..., tuple[Server, str]]) -> None:
    server, path = serve()
    FastCGIClient(path).request({"RAW": b"\xff\x00", "TEXT": "caf\u00e9"})
    (call,) = server.calls
    assert call.params["RAW"] == "\xff\x00"
    assert call.params["TEXT"].encode("latin-1") == "caf\u00e9".encode()


# -- failures -------------------------------------------------------------------------------


def test_connection_refused(sockdir: str) -> None:
    with pytest.raises(ConnectionFailed, match=r"cannot connect to .*missing\.sock"):
        FastCGIClient(os.path.join(sockdir, "missing.sock")).request({})


def test_tcp_connection_refused() -> None:
    # Bind then close: nothing listens on this port any more.
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionFailed, match="cannot connect"):
        FastCGIClient(f"127.0.0.1:{port}").request({})


def raw_server(path: str, behaviour: Callable[[socket.socket], None]) -> socket.socket:
    listener = unix_listener(path)

    def run() -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        with sock:
            behaviour(sock)

    threading.Thread(target=run, daemon=True).start()
    return listener


def test_backend_closing_mid_response(sockdir: str) -> None:
    path = os.path.join(sockdir, "b.sock")

    def half(sock: socket.socket) -> None:
        sock.recv(65536)
        sock.sendall(r.encode_record(r.STDOUT, 1, b"Status: 200\r\n\r\npart")[:-3])

    listener = raw_server(path, half)
    try:
        with pytest.raises(ConnectionFailed, match="closed the connection in the middle"):
            FastCGIClient(path).request({})
    finally:
        listener.close()


def test_backend_closing_without_end_request(sockdir: str) -> None:
    path = os.path.join(sockdir, "c.sock")

    def no_end(sock: socket.socket) -> None:
        sock.recv(65536)
        sock.sendall(r.encode_record(r.STDOUT, 1, b"\r\nx"))

    listener = raw_server(path, no_end)
    try:
        with pytest.raises(ConnectionFailed, match="before the response ended"):
            FastCGIClient(path).request({})
    finally:
        listener.close()


def test_backend_that_is_not_fastcgi(sockdir: str) -> None:
    path = os.path.join(sockdir, "h.sock")

    def http(sock: socket.socket) -> None:
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    listener = raw_server(path, http)
    try:
        with pytest.raises(ProtocolError, match="version 72"):
            FastCGIClient(path).request({})
    finally:
        listener.close()


def test_silent_backend_times_out(sockdir: str) -> None:
    path = os.path.join(sockdir, "t.sock")
    release = threading.Event()
    listener = raw_server(path, lambda sock: release.wait())
    try:
        with pytest.raises(RequestTimeout, match="no answer"):
            FastCGIClient(path, timeout=0.05).request({})
    finally:
        release.set()
        listener.close()


def test_records_for_other_ids_are_skipped(sockdir: str) -> None:
    path = os.path.join(sockdir, "o.sock")

    def noisy(sock: socket.socket) -> None:
        sock.recv(65536)
        sock.sendall(
            r.encode_record(r.STDOUT, 7, b"not ours")
            + r.encode_record(r.GET_VALUES_RESULT, 0, b"")
            + r.HEADER.pack(1, r.STDOUT, 1, 6, 200)  # odd padding is fine
            + b"\r\nmine"
            + bytes(200)
            + r.encode_end_request(1, 5)
        )

    listener = raw_server(path, noisy)
    try:
        response = FastCGIClient(path).request({})
        assert (response.body, response.app_status) == (b"mine", 5)
    finally:
        listener.close()


# -- default params ----------------------------------------------------------------------------


def test_build_params_defaults() -> None:
    params = build_params("/a%20b/c?x=1&y=%20")
    assert params == {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": params["SERVER_SOFTWARE"],
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "REQUEST_SCHEME": "http",
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": "/a%20b/c?x=1&y=%20",
        "SCRIPT_NAME": "",
        "PATH_INFO": b"/a b/c",
        "QUERY_STRING": "x=1&y=%20",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0",
        "HTTP_HOST": "localhost",
    }
    assert str(params["SERVER_SOFTWARE"]).startswith("fcgi-request/")


def test_build_params_with_body_headers_and_overrides() -> None:
    params = build_params(
        "status",
        None,
        ["X-Forwarded-For: 10.0.0.1", "Content-Type: application/json", "Host: example.com:8080"],
        b"{}",
        ["SCRIPT_NAME=/app", "EMPTY="],
    )
    assert params["REQUEST_METHOD"] == "POST"
    assert params["PATH_INFO"] == b"/status"
    assert params["CONTENT_LENGTH"] == "2"
    assert params["CONTENT_TYPE"] == "application/json"
    assert "HTTP_CONTENT_TYPE" not in params
    assert params["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    assert params["HTTP_HOST"] == "example.com:8080"
    assert params["SERVER_NAME"] == "example.com"
    assert params["SCRIPT_NAME"] == b"/app"
    assert params["EMPTY"] == b""


def test_build_params_method_and_url() -> None:
    params = build_params("https://example.org/p?q", "put")
    assert params["REQUEST_METHOD"] == "PUT"
    assert params["HTTP_HOST"] == "example.org"
    assert params["HTTPS"] == "on"
    assert params["SERVER_PORT"] == "443"
    assert params["REQUEST_URI"] == "/p?q"
    assert params["QUERY_STRING"] == "q"
    assert "CONTENT_LENGTH" not in params


@pytest.mark.parametrize(
    ("headers", "extra"),
    [(["NoColon"], []), ([": v"], []), (["Bad Name: v"], []), ([], ["NOEQUALS"]), ([], ["=v"])],
)
def test_build_params_usage_errors(headers: list[str], extra: list[str]) -> None:
    with pytest.raises(UsageError):
        build_params("/", None, headers, None, extra)


# -- the command -------------------------------------------------------------------------------


def run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fcgi request")
    add_request_arguments(parser)
    return request_command(parser.parse_args(argv))


def test_command_prints_body(
    serve: Callable[..., tuple[Server, str]], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    server, path = serve()
    assert run_command([f"unix:{path}", "/hello?x=1"]) == 0
    out, err = capsysbinary.readouterr()
    assert out == b"hello /hello"
    assert err == b""
    (call,) = server.calls
    assert call.params["QUERY_STRING"] == "x=1"
    assert call.params["REQUEST_URI"] == "/hello?x=1"
    assert call.params["REQUEST_METHOD"] == "GET"
    assert call.params["SCRIPT_NAME"] == ""
    assert "CONTENT_LENGTH" not in call.params


def test_command_include_headers(
    serve: Callable[..., tuple[Server, str]], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    _, path = serve(lambda call: (b"Status: 404 Not Found\r\nX-A: 1\r\n\r\nnope", b"", 0))
    assert run_command([path, "-i"]) == 0
    out, _ = capsysbinary.readouterr()
    assert out == b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\n\r\nnope"


def test_command_binary_body_and_stderr(
    serve: Callable[..., tuple[Server, str]], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    payload = bytes(range(256)) * 4
    _, path = serve(lambda call: (b"\r\n" + payload, b"warning: x", 0))
    assert run_command([path]) == 0
    out, err = capsysbinary.readouterr()
    assert out == payload
    assert err == b"warning: x\n"


def test_command_post_data_and_headers(
    serve: Callable[..., tuple[Server, str]], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    server, path = serve(echo_app)
    code = run_command(
        [
            path,
            "/submit",
            "-d",
            "a=1",
            "-d",
            "b=2",
            "-H",
            "X-Token: t",
            "--param",
            "SCRIPT_NAME=/app",
        ]
    )
    assert code == 0
    out, _ = capsysbinary.readouterr()
    assert out == b"a=1&b=2"
    (call,) = server.calls
    assert call.params["REQUEST_METHOD"] == "POST"
    assert call.params["CONTENT_LENGTH"] == "7"
    assert call.params["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert call.params["HTTP_X_TOKEN"] == "t"
    assert call.params["SCRIPT_NAME"] == "/app"
    assert call.params["PATH_INFO"] == "/submit"


def test_command_data_from_file_with_method(
    serve: Callable[..., tuple[Server, str]],
    capsysbinary: pytest.CaptureFixture[bytes],
    sockdir: str,
) -> None:
    server, path = serve(echo_app)
    body_file = os.path.join(sockdir, "body.bin")
    body = os.urandom(100_000)
    with open(body_file, "wb") as f:
        f.write(body)
    assert run_command([path, "-X", "PUT", "-d", f"@{body_file}"]) == 0
    out, _ = capsysbinary.readouterr()
    assert out == body
    assert server.calls[0].params["REQUEST_METHOD"] == "PUT"
    assert server.calls[0].params["CONTENT_LENGTH"] == str(len(body))


def test_command_missing_data_file(
    sockdir: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert run_command([os.path.join(sockdir, "x.sock"), "-d", "@/nonexistent/file"]) == 2
    _, err = capsysbinary.readouterr()
    assert err.startswith(b"fcgi request: cannot read /nonexistent/file")
    assert err.count(b"\n") == 1


def test_command_5xx_exits_1(
    serve: Callable[..., tuple[Server, str]], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    _, path = serve(lambda call: (b"Status: 503 Service Unavailable\r\n\r\ndown", b"", 0))
    assert run_command([path]) == 1
    assert capsysbinary.readouterr().out == b"down"


def test_command_malformed_output_exits_1_with_a_message(
    serve: Callable[..., tuple[Server, str]], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    _, path = serve(lambda call: (b"garbage", b"", 0))
    assert run_command([path]) == 1
    out, err = capsysbinary.readouterr()
    assert out == b"garbage"
    assert err == b"fcgi request: malformed CGI response: no blank line after the headers\n"


def test_command_connection_failure_exits_2(
    sockdir: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    missing = os.path.join(sockdir, "none.sock")
    assert run_command([f"unix:{missing}"]) == 2
    out, err = capsysbinary.readouterr()
    assert out == b""
    assert err.startswith(f"fcgi request: cannot connect to unix:{missing}: ".encode())
    assert err.count(b"\n") == 1
    assert b"Traceback" not in err


def test_command_bad_address_exits_2(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert run_command(["nonsense"]) == 2
    _, err = capsysbinary.readouterr()
    assert err.startswith(b"fcgi request: 'nonsense': expected")
    assert err.count(b"\n") == 1


def test_command_bad_header_exits_2(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert run_command(["/x.sock", "-H", "nocolon"]) == 2
    _, err = capsysbinary.readouterr()
    assert b"expected 'Name: value'" in err


def test_command_protocol_error_exits_2(
    sockdir: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    path = os.path.join(sockdir, "p.sock")

    def http(sock: socket.socket) -> None:
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    listener = raw_server(path, http)
    try:
        assert run_command([path]) == 2
    finally:
        listener.close()
    _, err = capsysbinary.readouterr()
    assert b"FastCGI version 72" in err
    assert err.count(b"\n") == 1


def test_command_authorizer_role(
    serve: Callable[..., tuple[Server, str]], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    server, path = serve(lambda call: (b"Status: 403\r\n\r\ndenied", b"", 0))
    assert run_command([path, "--role", "authorizer"]) == 0
    assert capsysbinary.readouterr().out == b"denied"
    assert server.calls[0].role == r.Role.AUTHORIZER
