"""A small blocking FastCGI client, used only to check a backend's answers before timing it.

It is independent of the ``fcgi`` package on purpose: the harness must not trust the code
it measures to judge that code's answers.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

_HEADER = struct.Struct("!BBHHBx")
_BEGIN = struct.Struct("!HB5x")
_END = struct.Struct("!LB3x")
BEGIN_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 3, 4, 5, 6, 7
RESPONDER, KEEP_CONN = 1, 1
_MAX_CONTENT = 65528


@dataclass
class Response:
    """A parsed FastCGI responder answer."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stderr: bytes = b""
    app_status: int = 0
    protocol_status: int = 0
    records: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def _record(rtype: int, content: bytes, request_id: int = 1) -> bytes:
    pad = -len(content) % 8
    return _HEADER.pack(1, rtype, request_id, len(content), pad) + content + b"\0" * pad


def _stream(rtype: int, data: bytes) -> bytes:
    parts = [_record(rtype, data[i : i + _MAX_CONTENT]) for i in range(0, len(data), _MAX_CONTENT)]
    parts.append(_record(rtype, b""))
    return b"".join(parts)


def _nv_len(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack("!L", n | 0x80000000)


def encode_params(params: dict[str, str]) -> bytes:
    """Encode name-value pairs (FastCGI spec section 3.4)."""
    out = bytearray()
    for name, value in params.items():
        n, v = name.encode("latin-1"), value.encode("latin-1")
        out += _nv_len(len(n)) + _nv_len(len(v)) + n + v
    return bytes(out)


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


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


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
    begin = _record(BEGIN_REQUEST, _BEGIN.pack(RESPONDER, KEEP_CONN if keep_conn else 0))
    sock.sendall(begin + _stream(PARAMS, encode_params(params)) + _stream(STDIN, body))
    stdout, stderr = bytearray(), bytearray()
    kinds: list[int] = []
    while True:
        _version, rtype, _rid, clen, plen = _HEADER.unpack(_recv_exact(sock, 8))
        content = _recv_exact(sock, clen + plen)[:clen]
        kinds.append(rtype)
        if rtype == STDOUT:
            stdout += content
        elif rtype == STDERR:
            stderr += content
        elif rtype == END_REQUEST:
            app_status, proto_status = _END.unpack(content)
            break
    status, headers, resp_body = _parse_stdout(bytes(stdout))
    return Response(status, headers, resp_body, bytes(stderr), app_status, proto_status, kinds)


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
