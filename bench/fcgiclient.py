"""Small blocking FastCGI, uwsgi and SCGI clients, used only to check a backend's answers.

Records are built and parsed by :class:`fcgi.client_connection.ClientConnection`, the
client side of the package's sans-IO core; this module adds the socket and the CGI
header parsing. It judges nothing the core could get wrong the same way twice: the
server side of a request (:mod:`fcgi.connection`, the drivers, the app) is separate
code, most backends it checks are not fcgi at all, and the check is the exact body
bytes of each route. The independent oracle for the protocol itself is the
conformance suite (``conformance/client.py``).

The uwsgi and SCGI requests (:func:`request_over`) are built here from the protocols' own
documents, not by the package (which has only their server side), and send the variables
nginx's stock ``uwsgi_params`` / ``scgi_params`` send: the rows behind ``uwsgi_pass`` and
``scgi_pass`` are then checked with what their web server will really pass on.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from fcgi.client_connection import ClientConnection, EndRequest, StderrData, StdoutData

#: Bytes asked of the socket per read.
_RECV_SIZE = 256 * 1024


@dataclass
class Response:
    """A parsed FastCGI responder answer."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stderr: bytes = b""
    app_status: int = 0
    protocol_status: int = 0

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def build_params(
    path: str, method: str = "GET", body_len: int = 0, nheaders: int = 0
) -> dict[str, str]:
    """CGI parameters like nginx sends them (with PATH_INFO set to the URI)."""
    params = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "bench-check",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "localhost",
        "SERVER_ADDR": "127.0.0.1",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "REQUEST_URI": path,
        "DOCUMENT_URI": path,
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(body_len) if body_len else "",
        "CONTENT_TYPE": "application/octet-stream" if body_len else "",
        "HTTP_HOST": "localhost",
    }
    for i in range(nheaders):
        params[f"HTTP_X_BENCH_HEADER_{i}"] = f"value-{i}-abcdefghijklmnopqrstuvwxyz"
    return params


def _parse_stdout(data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    sep = data.find(b"\r\n\r\n")
    size = 4
    if sep < 0:
        sep, size = data.find(b"\n\n"), 2
    if sep < 0:
        raise ValueError("no end of CGI headers in STDOUT")
    headers: list[tuple[str, str]] = []
    status = 200
    for line in data[:sep].decode("latin-1").splitlines():
        if not line.strip():
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
        if name.strip().lower() == "status":
            status = int(value.split()[0])
    return status, headers, data[sep + size :]


def request_on(
    sock: socket.socket,
    path: str,
    method: str = "GET",
    body: bytes = b"",
    nheaders: int = 0,
    keep_conn: bool = False,
) -> Response:
    """Send one request on an open socket and read the answer up to END_REQUEST."""
    params = build_params(path, method, len(body), nheaders)
    conn = ClientConnection()
    pairs = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in params.items()]
    conn.send_request(pairs, body, keep_conn=keep_conn)
    sock.sendall(conn.data_to_send())
    stdout, stderr = bytearray(), bytearray()
    while True:
        chunk = sock.recv(_RECV_SIZE)
        if not chunk:
            raise ConnectionError("connection closed before END_REQUEST")
        for event in conn.feed(chunk):
            if isinstance(event, StdoutData):
                stdout += event.data
            elif isinstance(event, StderrData):
                stderr += event.data
            elif isinstance(event, EndRequest):
                status, headers, resp_body = _parse_stdout(bytes(stdout))
                return Response(
                    status,
                    headers,
                    resp_body,
                    bytes(stderr),
                    event.app_status,
                    event.protocol_status,
                )


def request(
    sock_path: str,
    path: str,
    method: str = "GET",
    body: bytes = b"",
    nheaders: int = 0,
    timeout: float = 10.0,
) -> Response:
    """One request on a new connection (no FCGI_KEEP_CONN), as nginx does by default."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(sock_path)
        return request_on(sock, path, method, body, nheaders)


# ------------------------------------------------------------------ uwsgi and SCGI

#: What each stock params file leaves out of :func:`build_params` (nginx 1.22's
#: ``uwsgi_params`` and ``scgi_params``: no SCRIPT_NAME, GATEWAY_INTERFACE,
#: SERVER_SOFTWARE or SERVER_ADDR in either; DOCUMENT_URI only in scgi_params,
#: PATH_INFO only in uwsgi_params, where it is ``$document_uri``).
_NOT_IN_STOCK_PARAMS = {
    "uwsgi": ("SCRIPT_NAME", "GATEWAY_INTERFACE", "SERVER_SOFTWARE", "SERVER_ADDR", "DOCUMENT_URI"),
    "scgi": ("SCRIPT_NAME", "GATEWAY_INTERFACE", "SERVER_SOFTWARE", "SERVER_ADDR", "PATH_INFO"),
}
#: The largest uwsgi vars block: its size is a 16-bit field of the packet header.
_UWSGI_MAX_VARS = 0xFFFF


def stock_params(
    protocol: str, path: str, method: str = "GET", body_len: int = 0, nheaders: int = 0
) -> dict[str, str]:
    """The variables nginx sends through ``include uwsgi_params`` or ``include scgi_params``."""
    params = build_params(path, method, body_len, nheaders)
    for name in _NOT_IN_STOCK_PARAMS[protocol]:
        del params[name]
    if protocol == "scgi":
        # nginx's scgi module puts CONTENT_LENGTH first, always a number, and the SCGI
        # document requires exactly that; SCGI=1 comes from scgi_params.
        del params["CONTENT_LENGTH"]
        params = {"CONTENT_LENGTH": str(body_len), "SCGI": "1", **params}
    return params


def uwsgi_packet(params: dict[str, str], body: bytes) -> bytes:
    """A modifier1 0 request: the 4-byte header, u16-LE-length vars, then the body."""
    block = b"".join(
        struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
        for k, v in ((n.encode("latin-1"), x.encode("latin-1")) for n, x in params.items())
    )
    if len(block) > _UWSGI_MAX_VARS:
        raise ValueError(f"uwsgi vars block of {len(block)} bytes does not fit its u16 size")
    return struct.pack("<BHB", 0, len(block), 0) + block + body


def scgi_packet(params: dict[str, str], body: bytes) -> bytes:
    """An SCGI request: a netstring of NUL-terminated names and values, then the body."""
    block = b"".join(
        name.encode("latin-1") + b"\0" + value.encode("latin-1") + b"\0"
        for name, value in params.items()
    )
    return str(len(block)).encode() + b":" + block + b"," + body


def _parse_answer(data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """A uwsgi answer (an HTTP status line, headers) or an SCGI one (CGI ``Status:`` head)."""
    if not data.startswith(b"HTTP/"):
        return _parse_stdout(data)
    line, _, rest = data.partition(b"\n")
    status = int(line.split()[1])
    if rest.startswith((b"\r\n", b"\n")):  # a status line and no header
        return status, [], rest.partition(b"\n")[2]
    _, headers, body = _parse_stdout(rest)
    return status, headers, body


def request_over(
    protocol: str,
    sock_path: str,
    path: str,
    method: str = "GET",
    body: bytes = b"",
    nheaders: int = 0,
    timeout: float = 10.0,
) -> Response:
    """One uwsgi or SCGI request; the answer is read to the end of the connection.

    Both protocols carry one request per connection: the backend closes once it has
    answered, which is the only end-of-answer mark either has.
    """
    params = stock_params(protocol, path, method, len(body), nheaders)
    build = uwsgi_packet if protocol == "uwsgi" else scgi_packet
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(sock_path)
        sock.sendall(build(params, body))
        chunks: list[bytes] = []
        while chunk := sock.recv(_RECV_SIZE):
            chunks.append(chunk)
    if not chunks:
        raise ConnectionError(f"{protocol} backend closed without answering")
    status, headers, resp_body = _parse_answer(b"".join(chunks))
    return Response(status, headers, resp_body)
