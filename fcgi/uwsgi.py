"""The application side of one uwsgi connection, without I/O.

:class:`UwsgiConnection` has the interface of :class:`fcgi.connection.ServerConnection`,
so a driver serves either one; it yields the same :mod:`fcgi.events` for a
request with id :data:`fcgi.scgi.REQUEST_ID`. The one-request machinery (body,
limits, output queue) is :class:`fcgi.scgi.OneRequestConnection`, shared with SCGI.

Rules, from "The uwsgi Protocol" in the uWSGI documentation
(uwsgi-docs.readthedocs.io/en/latest/Protocol.html) and from what the web
servers that speak it send and read (nginx's ngx_http_uwsgi_module, Apache
mod_proxy_uwsgi):

* a request starts with a 4-byte header: ``modifier1`` (u8), ``datasize``
  (u16, little-endian), ``modifier2`` (u8). Only modifier1 0, "a standard
  WSGI request followed by the HTTP request body", is served; any other
  packet type (the documentation lists PSGI, Rack, signals, cache and spooler
  packets) is a :class:`ProtocolError`. modifier2 is 0 for such a request in
  the documentation, but nginx sends whatever ``uwsgi_modifier2`` says, so it
  is not checked;
* ``datasize`` bytes of vars follow: pairs of u16-LE key length, key, u16-LE
  value length, value, filling the block exactly. nginx builds the block in
  ``uwsgi_buffer_size`` and Apache refuses to send one over 65535 bytes: the
  u16 caps it at 64 KiB, so the whole head is held and parsed in one piece;
* the body follows: CONTENT_LENGTH bytes, none if it is absent or empty
  (nginx sends ``CONTENT_LENGTH`` empty on a GET through the stock
  uwsgi_params). One request per connection: both web servers close after it;
* the answer is raw HTTP: a status line, header lines, a blank line, the body.
  Apache mod_proxy_uwsgi answers 502 to anything whose first line is not
  ``HTTP/x.y NNN``; nginx 1.22 takes a CGI ``Status:`` head too, but then
  passes the Status line on to the client as a header. The adapters write a
  CGI head (RFC 3875 section 6), so its ``Status: NNN reason`` becomes the
  status line ``HTTP/1.1 NNN reason``; without a Status header the status is
  200, or 302 with a Location header (RFC 3875 section 6.2.3, and what nginx
  does with a FastCGI or SCGI answer). Everything after the head passes
  unchanged.

Bad input: a modifier1 other than 0 or a vars block that does not parse is a
:class:`ProtocolError`; a vars block over ``max_params_bytes`` (as soon as the
header says so) or with more pairs than ``max_params`` is a 431
:class:`fcgi.events.RequestRejected`, a CONTENT_LENGTH over ``max_body_size`` a
413, one that is not a number a 400 (the head was sound, but the body cannot be
framed: the driver answers, and the connection closes after that as always).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Final

from fcgi.connection import Limits, decimal_length
from fcgi.errors import LocalProtocolError, ProtocolError
from fcgi.one_request import OneRequestConnection, wrong_protocol_hint
from fcgi.records import SPEEDUPS

#: The size of the packet header: modifier1, datasize (2 bytes), modifier2.
HEADER_LEN: Final = 4
#: The packet type of a WSGI request (the only one served).
MODIFIER1_WSGI: Final = 0
#: The HTTP version of the status line. uWSGI writes the request's own
#: SERVER_PROTOCOL; a fixed HTTP/1.1 is one that both nginx and Apache parse
#: whatever the client spoke (an HTTP/2 request's SERVER_PROTOCOL is
#: "HTTP/2.0"), and neither passes it on: each writes its own status line.
_HTTP_VERSION: Final = b"HTTP/1.1"
#: The start of the head the adapters write, ``Status: NNN reason``: replacing
#: its first 7 bytes ("Status:") by the version makes the status line.
_CGI_STATUS: Final = b"Status: "


def _reason(code: bytes) -> bytes:
    """The standard reason phrase for a status code, or b"" for a code it does not know."""
    try:
        return HTTPStatus(int(code)).phrase.encode("latin-1")
    except ValueError:
        return b""


def _head_end(data: bytes | bytearray) -> int:
    """Where a CGI head ends (just past its blank line), or -1 if it has not ended yet.

    Lines may end in CRLF or in a bare LF (RFC 3875 section 6.3 allows both).
    """
    pos = 0
    while True:
        newline = data.find(b"\n", pos)
        if newline < 0:
            return -1
        if newline == pos or (newline == pos + 1 and data[pos] == 0x0D):
            return newline + 1
        pos = newline + 1


def http_head(cgi_head: bytes) -> bytes:
    """A CGI response head as an HTTP one: its Status header becomes the status line.

    Header lines keep their order and text (with CRLF line ends); a head with
    no Status header is a 200, or a 302 if it has a Location header. A Status
    that is not three digits and an optional reason is a bug in this process
    (the adapters validate the status), so it raises LocalProtocolError.
    """
    status: bytes | None = None
    redirect = False
    lines: list[bytes] = []
    for raw in cgi_head.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"status":
            if status is None:
                status = value.strip()
            continue
        if key == b"location":
            redirect = True
        lines.append(line)
    if status is None:
        status = b"302 Found" if redirect else b"200 OK"
    code = status[:3]
    if not (code.isdigit() and (len(status) == 3 or status[3:4] == b" ")):
        raise LocalProtocolError(f"invalid Status header in the response: {status[:40]!r}")
    reason = status[4:].strip() or _reason(code)
    first = b"%s %s %s" % (_HTTP_VERSION, code, reason) if reason else _HTTP_VERSION + b" " + code
    lines.insert(0, first)
    lines.append(b"")
    lines.append(b"")
    return b"\r\n".join(lines)


def _vars_error(head: bytes) -> str:
    """What is wrong with a vars block that does not parse (the slow, careful walk)."""
    end = len(head)
    pos = HEADER_LEN
    while pos + 2 <= end:
        key_end = pos + 2 + (head[pos] | head[pos + 1] << 8)
        if key_end + 2 > end:
            return f"uwsgi var key of {key_end - pos - 2} bytes runs past the end of the vars block"
        pos = key_end + 2 + (head[key_end] | head[key_end + 1] << 8)
        if pos > end:
            return (
                f"uwsgi var value of {pos - key_end - 2} bytes runs past the end of the vars block"
            )
    return "uwsgi vars block ends inside a key length"


def _decode_vars_py(head: bytes) -> tuple[dict[str, str], int]:
    """The vars block after the 4-byte header: (latin-1 params, how many pairs).

    Raises ProtocolError, saying what is wrong, for a block that is not one.
    """
    # latin-1 maps bytes to code points one to one: PEP 3333's native
    # strings, sliced at the byte offsets after a single decode. The loop
    # does no bounds checks: a length that runs past the end makes an
    # index fail or leaves pos past the end, and _vars_error says how.
    text = head.decode("latin-1")
    end = len(head)
    pos = HEADER_LEN
    params: dict[str, str] = {}
    pairs = 0
    try:
        while pos < end:
            key = pos + 2
            key_end = key + head[pos] + (head[pos + 1] << 8)
            value = key_end + 2
            pos = value + head[key_end] + (head[key_end + 1] << 8)
            params[text[key:key_end]] = text[value:pos]
            pairs += 1
    except IndexError:
        pos = end + 1
    if pos != end:
        raise ProtocolError(_vars_error(head))
    return params, pairs


def _decode_vars_fast(head: bytes) -> tuple[dict[str, str], int]:
    """:func:`_decode_vars_py` in C (``fcgi._speedups``); a bad block goes to the reference."""
    decoded = _decode_vars_c(head, HEADER_LEN)  # type: ignore[misc]  # bound only if not None
    return decoded if decoded is not None else _decode_vars_py(head)


_decode_vars_c: Callable[[bytes, int], tuple[dict[str, str], int] | None] | None = None
if SPEEDUPS:
    from fcgi._speedups import decode_uwsgi_vars as _decode_vars_c

#: Chosen once, as fcgi.records chooses decode_params.
decode_vars = _decode_vars_fast if _decode_vars_c is not None else _decode_vars_py


class UwsgiConnection(OneRequestConnection):
    """State of one uwsgi connection from the application's point of view."""

    __slots__ = ("_reply_head",)

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(limits)
        self._prefix_max = HEADER_LEN
        #: The response head received so far, until it is whole and rewritten;
        #: None from then on (the rest passes through).
        self._reply_head: bytearray | None = bytearray()

    def _measure(self, prefix: bytes) -> tuple[int, int] | None:
        if prefix[0] != MODIFIER1_WSGI:
            raise ProtocolError(
                f"uwsgi packet with modifier1 {prefix[0]}: only {MODIFIER1_WSGI} "
                f"(a WSGI request) is served{wrong_protocol_hint(prefix[0])}"
            )
        if len(prefix) < HEADER_LEN:
            return None
        size = prefix[1] | prefix[2] << 8
        return HEADER_LEN + size, size

    def _parse(self, head: bytes) -> tuple[dict[str, str], int, int]:
        params, pairs = decode_vars(head)
        declared = params.get("CONTENT_LENGTH")
        return params, pairs, decimal_length(declared) if declared else 0

    def _emit(self, data: bytes) -> None:
        pending = self._reply_head
        if pending is None:
            self._out.append(data)
            return
        if not pending and data[:8] == _CGI_STATUS and data[8:11].isdigit() and data[11:12] == b" ":
            # What the adapters write: "Status: 200 OK\r\n..." in one piece.
            # "Status:" becomes "HTTP/1.1", and nothing else needs reading.
            self._reply_head = None
            self._out += (_HTTP_VERSION, memoryview(data)[7:])
            return
        pending += data
        end = _head_end(pending)
        if end < 0:
            return
        self._reply_head = None
        self._out.append(http_head(bytes(pending[:end])))
        if end < len(pending):
            self._out.append(bytes(pending[end:]))

    def _finish(self) -> None:
        pending = self._reply_head
        if pending:
            # A head held back that never got its blank line: end it here, so
            # the web server gets a valid (if bodiless) answer, not a 502.
            self._reply_head = None
            self._out.append(http_head(bytes(pending)))
