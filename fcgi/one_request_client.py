"""A small blocking client for the one-request protocols: uwsgi and SCGI.

What :mod:`fcgi.client` is for FastCGI, for the listeners ``fcgi serve
--bind uwsgi:...`` and ``--bind scgi:...`` open: ``fcgi request
uwsgi:unix:/run/app.sock /ping`` checks such a listener the way nginx's
``uwsgi_pass`` or ``scgi_pass`` would reach it, without a web server.

Both protocols send one head of CGI variables, then CONTENT_LENGTH bytes of
body, and the server answers and closes: so a request is one write and the
answer is everything read until the end of the stream. The heads are encoded
here by :func:`encode_uwsgi` and :func:`encode_scgi`; the server side decodes
them in :mod:`fcgi.uwsgi` and :mod:`fcgi.scgi` (a test holds the two
directions to each other). A uwsgi server answers with an HTTP status line,
an SCGI one with a CGI ``Status:`` header; both end up in the same
:class:`fcgi.client.Response`.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Mapping

from fcgi.client import (
    ConnectionFailed,
    ParamValue,
    RequestTimeout,
    Response,
    connect,
    parse_cgi_response,
)
from fcgi.errors import FastCGIError
from fcgi.sockets import SCGI, UWSGI

__all__ = ["OneRequestClient", "encode_scgi", "encode_uwsgi"]

#: uwsgi's packet header: modifier1, the size of the vars block (16 bits,
#: little endian), modifier2. Modifier 0/0 is "a WSGI request with CGI vars",
#: what nginx's uwsgi_pass sends by default.
_UWSGI_HEADER = struct.Struct("<BHB")
#: Each uwsgi var's name and value are preceded by their 16-bit length.
_UWSGI_LENGTH = struct.Struct("<H")
#: The largest vars block the 16-bit size field can describe.
UWSGI_MAX_VARS = 0xFFFF

_RECV_SIZE = 256 * 1024


def _bytes(value: ParamValue) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def encode_uwsgi(params: Mapping[str, ParamValue], body: bytes = b"") -> bytes:
    """One uwsgi request packet: the header, the vars block, then ``body``.

    ``params`` should carry CONTENT_LENGTH when there is a body (the server
    reads that many bytes). Raises ValueError for a var over 64 KiB or a
    block the header cannot describe.
    """
    parts: list[bytes] = []
    for name, value in params.items():
        for item in (name.encode(), _bytes(value)):
            if len(item) > 0xFFFF:
                raise ValueError(f"uwsgi var {name!r} is longer than 65535 bytes")
            parts.append(_UWSGI_LENGTH.pack(len(item)))
            parts.append(item)
    block = b"".join(parts)
    if len(block) > UWSGI_MAX_VARS:
        raise ValueError(f"uwsgi vars block of {len(block)} bytes (at most {UWSGI_MAX_VARS})")
    return _UWSGI_HEADER.pack(0, len(block), 0) + block + body


def encode_scgi(params: Mapping[str, ParamValue], body: bytes = b"") -> bytes:
    """One SCGI request: the netstring of headers, then ``body``.

    CONTENT_LENGTH goes first and SCGI=1 is added, as the protocol requires;
    CONTENT_LENGTH is the body's length unless ``params`` gives one. A NUL
    in a name or value cannot be sent (it separates them): ValueError.
    """
    fields: dict[str, ParamValue] = {"CONTENT_LENGTH": str(len(body)), "SCGI": "1"}
    fields.update({name: value for name, value in params.items() if name != "SCGI"})
    items: list[bytes] = []
    for name, value in fields.items():
        for item in (name.encode(), _bytes(value)):
            if b"\0" in item:
                raise ValueError(f"SCGI header {name!r} contains a NUL byte")
            items.append(item)
    block = b"\0".join(items) + b"\0"
    return b"%d:%s,%s" % (len(block), block, body)


def _http_to_cgi(answer: bytes) -> bytes:
    """An HTTP response's status line as a CGI ``Status:`` header, so one parser reads both."""
    if not answer.startswith(b"HTTP/"):
        return answer
    line_end = answer.find(b"\n")
    if line_end < 0:
        return answer
    line = answer[:line_end].rstrip(b"\r")
    _, _, status = line.partition(b" ")
    return b"Status: " + status + b"\r\n" + answer[line_end + 1 :]


class OneRequestClient:
    """Send requests to a uwsgi or SCGI listener, one connection each.

    ``timeout`` bounds each wait (connecting, sending, each read) and the
    whole exchange; None waits forever.
    """

    def __init__(self, address: str, protocol: str, timeout: float | None = None) -> None:
        if protocol not in (UWSGI, SCGI):
            raise ValueError(f"not a one-request protocol: {protocol!r}")
        self.address = address
        self.protocol = protocol
        self.timeout = timeout

    def __enter__(self) -> OneRequestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Nothing to close: each request has a connection of its own."""

    def request(self, params: Mapping[str, ParamValue], body: bytes = b"") -> Response:
        """Send one request and read its answer to the end of the stream."""
        encode = encode_uwsgi if self.protocol == UWSGI else encode_scgi
        try:
            packet = encode(params, body)
        except ValueError as exc:
            raise FastCGIError(str(exc)) from None
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        sock = connect(self.address, self.timeout)
        try:
            raw = self._exchange(sock, packet, deadline)
        finally:
            sock.close()
        status, reason, headers, body_out, error = parse_cgi_response(_http_to_cgi(raw))
        if error is not None:
            error = error.replace("CGI response", f"{self.protocol} response")
        return Response(status, reason, headers, body_out, stdout=raw, error=error)

    def _exchange(self, sock: socket.socket, packet: bytes, deadline: float | None) -> bytes:
        chunks: list[bytes] = []
        try:
            sock.sendall(packet)
            while True:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    sock.settimeout(left)
                chunk = sock.recv(_RECV_SIZE)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        except TimeoutError:
            raise RequestTimeout(
                f"{self.address}: no complete {self.protocol} answer within {self.timeout:g}s"
            ) from None
        except ConnectionResetError:
            if chunks:
                # The server may reset after its answer when it had input left
                # unread; what came before the reset is the answer.
                return b"".join(chunks)
            raise ConnectionFailed(f"{self.address}: connection reset before any answer") from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ConnectionFailed(f"{self.address}: {reason}") from None
