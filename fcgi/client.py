"""A small blocking FastCGI client, built on :class:`fcgi.client_connection.ClientConnection`.

It talks to a FastCGI backend the way a web server would, without one: for
health checks and for debugging an application (like libfcgi's ``cgi-fcgi``,
but it parses the CGI response and says clearly what went wrong). This module
does the sockets and the CGI response; the records are the sans-IO client's.
The ``fcgi request`` command around it is in :mod:`fcgi.cli`.

>>> client = FastCGIClient("unix:/run/app.sock")            # doctest: +SKIP
>>> response = client.request({"REQUEST_METHOD": "GET", "PATH_INFO": "/"})  # doctest: +SKIP
>>> response.status, response.body                           # doctest: +SKIP
(200, b'hello')

Params given as ``str`` are sent UTF-8 encoded; give ``bytes`` to send exact bytes.
"""

from __future__ import annotations

import http
import os
import selectors
import socket
import urllib.parse
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass

from fcgi import __version__
from fcgi.client_connection import (
    ClientConnection,
    ClientEvent,
    EndRequest,
    GetValuesResult,
    StderrData,
    StdoutData,
    UnknownType,
)
from fcgi.errors import FastCGIError, ProtocolError
from fcgi.records import GET_VALUES, ProtocolStatus, Role

__all__ = [
    "DEFAULT_TIMEOUT",
    "ClientError",
    "ConnectionFailed",
    "FastCGIClient",
    "RequestTimeout",
    "Response",
    "UsageError",
    "build_params",
    "parse_address",
    "parse_cgi_response",
]

DEFAULT_TIMEOUT = 30.0
#: Where a bare port connects: the loopback, as ``fcgi serve --bind PORT`` listens.
BARE_PORT_HOST = "127.0.0.1"
_REQUEST_ID = 1
_RECV_SIZE = 256 * 1024

ParamValue = str | bytes
#: Called with each event of the exchange; True stops reading.
_Handler = Callable[[ClientEvent], bool]
#: Queues the records of one exchange on a fresh or kept connection.
_Start = Callable[[ClientConnection], None]


class ClientError(FastCGIError):
    """The client could not get a response from the backend."""


class ConnectionFailed(ClientError):
    """Connecting to the backend failed, or it went away mid-request."""


class RequestTimeout(ClientError):
    """The backend made no progress for longer than the timeout."""


@dataclass(slots=True)
class Response:
    """One FastCGI response, with the CGI header block parsed.

    ``status`` comes from the ``Status:`` header (200 without one, 302 for a
    ``Location:`` without one). If the backend's output is not a valid CGI
    response, or it refused the request (``protocol_status`` other than
    REQUEST_COMPLETE), ``status`` is a 5xx a web server would have answered and
    ``error`` says why; ``stdout`` always holds the raw output.
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    stderr: bytes = b""
    app_status: int = 0
    protocol_status: int = ProtocolStatus.REQUEST_COMPLETE
    stdout: bytes = b""
    error: str | None = None

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (any case), or ``default``."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default


# -- addresses ------------------------------------------------------------------------


def parse_address(address: str) -> tuple[int, str | tuple[str, int]]:
    """``unix:/path``, ``/abs/path``, ``HOST:PORT``, ``[v6]:PORT`` or ``PORT`` → (family, sockaddr).

    A bare ``PORT`` means the loopback, as it does for ``fcgi serve --bind``:
    the address the server was started with reaches it. For TCP the host is
    returned unresolved; :func:`connect` resolves it. Raises
    :class:`ValueError` with a readable message for anything else.
    """
    if address.startswith("unix:"):
        path = address[5:]
        if not path:
            raise ValueError(f"{address!r}: empty unix socket path")
        return socket.AF_UNIX, path
    if address.startswith(("/", "./", "../")):
        return socket.AF_UNIX, address
    if address.isdigit():
        host, port_text = BARE_PORT_HOST, address
        family = socket.AF_INET
    elif address.startswith("["):
        host, sep, port_text = address[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"{address!r}: expected [IPv6]:PORT")
        family = socket.AF_INET6
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or not host:
            raise ValueError(
                f"{address!r}: expected unix:/path, /abs/path, HOST:PORT, [IPv6]:PORT or PORT"
            )
        if ":" in host:
            raise ValueError(f"{address!r}: write IPv6 addresses as [ADDRESS]:PORT")
        family = socket.AF_INET
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{address!r}: port must be a number from 1 to 65535")
    return family, (host, int(port_text))


def connect(address: str, timeout: float | None) -> socket.socket:
    """A connected socket to ``address`` (see :func:`parse_address`); ClientError if not."""
    try:
        _, sockaddr = parse_address(address)
    except ValueError as exc:
        raise ConnectionFailed(f"bad address {exc}") from None
    if isinstance(sockaddr, tuple) and address.isdigit():
        address = f"{sockaddr[0]}:{address}"  # say where a bare port went
    try:
        if isinstance(sockaddr, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(sockaddr, timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except TimeoutError:
        raise RequestTimeout(f"cannot connect to {address}: timed out") from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConnectionFailed(f"cannot connect to {address}: {reason}") from None
    return sock


# -- CGI response parsing -----------------------------------------------------------------


def _split_header_block(stdout: bytes) -> tuple[list[bytes], bytes] | None:
    """Header lines and body, or None if there is no blank line ending the headers.

    CGI allows LF or CRLF line ends; both are accepted, mixed too.
    """
    pos = 0
    lines: list[bytes] = []
    while True:
        end = stdout.find(b"\n", pos)
        if end < 0:
            return None
        line = stdout[pos:end]
        if line.endswith(b"\r"):
            line = line[:-1]
        pos = end + 1
        if not line:
            return lines, stdout[pos:]
        lines.append(line)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def parse_cgi_response(stdout: bytes) -> tuple[int, str, list[tuple[str, str]], bytes, str | None]:
    """Parse CGI output into ``(status, reason, headers, body, error)``.

    ``error`` is None for a valid response; otherwise status is 502 and the body
    is the raw output, so the caller can still show it.
    """

    def bad(message: str) -> tuple[int, str, list[tuple[str, str]], bytes, str | None]:
        return 502, "Bad Gateway", [], stdout, f"malformed CGI response: {message}"

    if not stdout:
        return bad("no output at all")
    split = _split_header_block(stdout)
    if split is None:
        return bad("no blank line after the headers")
    lines, body = split
    headers: list[tuple[str, str]] = []
    for raw in lines:
        text = raw.decode("latin-1")
        if text[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {text.strip()}")
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip():
            return bad(f"header line without a name: {text[:60]!r}")
        headers.append((name, value.strip()))
    status: int | None = None
    reason = ""
    kept: list[tuple[str, str]] = []
    for name, value in headers:
        if name.lower() == "status" and status is None:
            code, _, reason = value.partition(" ")
            if not (len(code) == 3 and code.isdigit()) or int(code) < 100:
                return bad(f"bad Status header {value[:60]!r}")
            status = int(code)
            reason = reason.strip()
        else:
            kept.append((name, value))
    if status is None:
        has_location = any(name.lower() == "location" for name, _ in kept)
        status = 302 if has_location else 200
    return status, reason or _reason(status), kept, body, None


# -- the client ------------------------------------------------------------------------------


def _encode_params(params: Mapping[str, ParamValue]) -> list[tuple[bytes, bytes]]:
    return [
        (name.encode(), value if isinstance(value, bytes) else value.encode())
        for name, value in params.items()
    ]


class _Exchange:
    """Send what a connection queued while reading what comes back, on one socket."""

    def __init__(self, sock: socket.socket, conn: ClientConnection, timeout: float | None) -> None:
        self.sock = sock
        self.conn = conn
        self.timeout = timeout
        #: Events received but not handled yet: what came after the last one
        #: the caller wanted stays here (see FastCGIClient._run).
        self.pending: deque[ClientEvent] = deque()
        self.received_any = False
        #: Bytes of the outgoing message not sent yet (the backend may answer early).
        self.unsent = 0

    def events(self) -> Generator[ClientEvent]:
        """Yield every event of what the peer sends.

        Writes what the connection queued concurrently with reading, so a
        backend that answers before it has read the whole body never
        deadlocks against us.
        """
        sock = self.sock
        sock.setblocking(False)
        pending = memoryview(self.conn.data_to_send())
        self.unsent = len(pending)
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0))
            while True:
                while self.pending:
                    yield self.pending.popleft()
                ready = sel.select(self.timeout)
                if not ready:
                    raise RequestTimeout(
                        f"no answer from the backend within {self.timeout:g} seconds"
                    )
                mask = ready[0][1]
                if mask & selectors.EVENT_WRITE and pending:
                    try:
                        sent = sock.send(pending[:_RECV_SIZE])
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError as exc:
                        # The backend may have answered and closed: read what it said.
                        pending = pending[:0]
                        self.unsent = -1
                        sel.modify(sock, selectors.EVENT_READ)
                        if not isinstance(exc, BrokenPipeError | ConnectionResetError):
                            raise ConnectionFailed(
                                f"sending to the backend failed: {exc}"
                            ) from None
                        continue
                    pending = pending[sent:]
                    self.unsent = len(pending)
                    if not pending:
                        sel.modify(sock, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(_RECV_SIZE)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        raise ConnectionFailed(f"reading from the backend failed: {exc}") from None
                    if not chunk:
                        detail = " in the middle of a record" if self.conn.mid_record else ""
                        raise ConnectionFailed(
                            f"the backend closed the connection{detail} before the response ended"
                        )
                    self.received_any = True
                    self.pending += self.conn.feed(chunk)


class FastCGIClient:
    """A blocking FastCGI client for one backend address.

    ``address`` is ``unix:/path``, ``/abs/path``, ``HOST:PORT`` or ``[v6]:PORT``.
    Requests are sent one at a time with request id 1. With ``keep_conn=True``
    the connection stays open for the next call (FCGI_KEEP_CONN); otherwise the
    backend closes it after the response. ``timeout`` is how long to wait for
    any progress (connecting, sending, receiving) before giving up; None waits
    forever.

    Records for other request ids, and management answers nobody asked for,
    are skipped (``ignore_strays``): the response to our request is what
    this client is for, and a confused backend is better shown than refused.
    """

    def __init__(self, address: str, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        parse_address(address)  # fail early on a typo
        self.address = address
        self.timeout = timeout
        #: A connection kept open by keep_conn=True, with its protocol state.
        self._kept: tuple[socket.socket, ClientConnection] | None = None

    def __enter__(self) -> FastCGIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close a connection kept open by ``keep_conn=True``."""
        if self._kept is not None:
            self._kept[0].close()
            self._kept = None

    def _run(
        self,
        start: _Start,
        keep_conn: bool,
        timeout: float | None,
        handle: _Handler,
    ) -> None:
        kept, self._kept = self._kept, None
        if kept is None:
            sock = connect(self.address, timeout)
            conn = ClientConnection(ignore_strays=True)
        else:
            sock, conn = kept
        start(conn)
        exchange = _Exchange(sock, conn, timeout)
        events = exchange.events()
        try:
            for event in events:
                if handle(event):
                    break
            events.close()
        except ConnectionFailed:
            sock.close()
            if kept is not None and not exchange.received_any:
                # The backend dropped the idle kept connection: try once on a new one.
                self._run(start, keep_conn, timeout, handle)
                return
            raise
        except BaseException:
            sock.close()
            raise
        # Reuse only a clean connection: nothing left half sent, half read or unread.
        if keep_conn and not exchange.pending and not conn.mid_record and exchange.unsent == 0:
            sock.setblocking(True)
            self._kept = sock, conn
        else:
            sock.close()

    def request(
        self,
        params: Mapping[str, ParamValue],
        body: bytes = b"",
        role: int = Role.RESPONDER,
        keep_conn: bool = False,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> Response:
        """Send one request and wait for its END_REQUEST.

        ``body`` is the STDIN stream (not sent for an AUTHORIZER). For a FILTER,
        ``data`` is the FCGI_DATA stream and FCGI_DATA_LENGTH is added to the
        params unless given. ``timeout`` None means the client's timeout.
        """
        if timeout is None:
            timeout = self.timeout
        pairs = _encode_params(params)
        if role == Role.FILTER and "FCGI_DATA_LENGTH" not in params:
            pairs.append((b"FCGI_DATA_LENGTH", str(len(data or b"")).encode()))

        def start(conn: ClientConnection) -> None:
            conn.send_request(
                pairs,
                body,
                role=role,
                keep_conn=keep_conn,
                data=data or b"",
                request_id=_REQUEST_ID,
            )

        stdout: list[bytes] = []
        stderr: list[bytes] = []
        end: list[EndRequest] = []

        def handle(event: ClientEvent) -> bool:
            if isinstance(event, StdoutData):
                stdout.append(event.data)
            elif isinstance(event, StderrData):
                stderr.append(event.data)
            elif isinstance(event, EndRequest):
                end.append(event)
                return True
            return False

        self._run(start, keep_conn, timeout, handle)
        app_status, protocol_status = end[0].app_status, end[0].protocol_status
        out = b"".join(stdout)
        err = b"".join(stderr)
        if protocol_status != ProtocolStatus.REQUEST_COMPLETE:
            try:
                name = ProtocolStatus(protocol_status).name
            except ValueError:
                name = f"protocol status {protocol_status}"
            status = 501 if protocol_status == ProtocolStatus.UNKNOWN_ROLE else 503
            return Response(
                status=status,
                reason=_reason(status),
                headers=[],
                body=out,
                stderr=err,
                app_status=app_status,
                protocol_status=protocol_status,
                stdout=out,
                error=f"the backend refused the request: {name}",
            )
        status, reason, headers, resp_body, error = parse_cgi_response(out)
        return Response(
            status=status,
            reason=reason,
            headers=headers,
            body=resp_body,
            stderr=err,
            app_status=app_status,
            protocol_status=protocol_status,
            stdout=out,
            error=error,
        )

    def get_values(
        self,
        names: Iterable[str] = ("FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"),
        timeout: float | None = None,
    ) -> dict[str, str]:
        """Ask the backend FCGI_GET_VALUES; returns only the names it understood."""
        if timeout is None:
            timeout = self.timeout
        wanted = list(names)
        result: dict[str, str] = {}

        def start(conn: ClientConnection) -> None:
            conn.get_values(wanted)

        def handle(event: ClientEvent) -> bool:
            if isinstance(event, GetValuesResult):
                result.update(event.values)
                return True
            if isinstance(event, UnknownType) and event.record_type == GET_VALUES:
                raise ProtocolError("the backend does not understand FCGI_GET_VALUES")
            return False

        self._run(start, self._kept is not None, timeout, handle)
        return result


# -- the params a web server would send -----------------------------------------------------


class UsageError(FastCGIError):
    """A request the user described wrongly (a ``-H`` without a colon, an unreadable ``-d @FILE``).

    Raised while the request is built, before any connection: ``fcgi request``
    catches it by name there and exits 2 (see :mod:`fcgi.errors`).
    """


def build_params(
    target: str,
    method: str | None = None,
    headers: Iterable[str] = (),
    body: bytes | None = None,
    extra: Iterable[str] = (),
) -> dict[str, ParamValue]:
    """The params a web server would send for this request, then the ``--param`` overrides."""
    scheme = "http"
    host: str | None = None
    if target.startswith(("http://", "https://")):
        url = urllib.parse.urlsplit(target)
        scheme, host = url.scheme, url.netloc or None
        target = url.path or "/"
        if url.query:
            target += "?" + url.query
    elif not target.startswith("/"):
        target = "/" + target
    path, _, query = target.partition("?")
    params: dict[str, ParamValue] = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": f"fcgi-request/{__version__}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "443" if scheme == "https" else "80",
        "REQUEST_SCHEME": scheme,
        "REQUEST_METHOD": (method or ("POST" if body is not None else "GET")).upper(),
        "REQUEST_URI": target,
        "SCRIPT_NAME": "",
        "PATH_INFO": urllib.parse.unquote_to_bytes(path),
        "QUERY_STRING": query,
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0",
        "HTTP_HOST": host or "localhost",
    }
    if scheme == "https":
        params["HTTPS"] = "on"
    if body is not None:
        params["CONTENT_LENGTH"] = str(len(body))
        params["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
    for header in headers:
        name, colon, value = header.partition(":")
        name = name.strip()
        if not colon or not name or " " in name:
            raise UsageError(f"-H {header!r}: expected 'Name: value'")
        key = name.upper().replace("-", "_")
        value = value.strip()
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            params[key] = value
        else:
            params["HTTP_" + key] = value
            if key == "HOST":
                server_name = value.rsplit(":", 1)[0] if not value.endswith("]") else value
                params["SERVER_NAME"] = server_name.strip("[]") or "localhost"
    for item in extra:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"--param {item!r}: expected NAME=VALUE")
        params[name] = os.fsencode(value)
    return params
