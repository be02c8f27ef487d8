"""HTTP/1.1 requests over a unix socket: the direct answer check of the HTTP peers.

The FastCGI backends are checked with :mod:`bench.fcgiclient` before anything is timed; the
HTTP peers (uvicorn, granian, gunicorn, hypercorn) listen on a unix socket too, and
:mod:`http.client` reaches one once its ``connect`` is pointed there.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    body: bytes


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def request(
    sock: str,
    path: str,
    method: str = "GET",
    body: bytes = b"",
    nheaders: int = 0,
    timeout: float = 15.0,
) -> Response:
    """One request on a new connection; ``nheaders`` extra headers as wrk's headers40.lua."""
    headers = {
        f"X-Bench-Header-{i}": f"value-{i}-abcdefghijklmnopqrstuvwxyz" for i in range(nheaders)
    }
    if body:
        headers["Content-Type"] = "application/octet-stream"
    conn = _UnixConnection(sock, timeout)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        return Response(resp.status, resp.read())
    finally:
        conn.close()
