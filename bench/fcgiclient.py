"""A small blocking FastCGI client, used only to check a backend's answers before timing it.

Records are built and parsed by :class:`fcgi.client_connection.ClientConnection`, the
client side of the package's sans-IO core; this module adds the socket and the CGI
header parsing. It judges nothing the core could get wrong the same way twice: the
server side of a request (:mod:`fcgi.connection`, the drivers, the app) is separate
code, most backends it checks are not fcgi at all, and the check is the exact body
bytes of each route. The independent oracle for the protocol itself is the
conformance suite (``conformance/client.py``).
"""

from __future__ import annotations

import socket
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
