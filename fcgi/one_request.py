"""What the one-request-per-connection protocols (SCGI, uwsgi) share, without I/O.

SCGI (:mod:`fcgi.scgi`) and uwsgi (:mod:`fcgi.uwsgi`) carry one request per
connection: a head of CGI variables in a layout of their own, then
CONTENT_LENGTH bytes of body, then the answer, then the connection closes.
Everything but the head's layout is the same for both, and lives here in
:class:`OneRequestConnection`: the body and its limits, the end of the
request. Its output queue is :class:`fcgi.connection.OutputQueue`, the base
it shares with :class:`fcgi.connection.ServerConnection`; it has that class's
interface (feed, send_stdout, end_request and the rest) and yields the same
:mod:`fcgi.events`, so every driver serves these protocols as it serves
FastCGI.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from fcgi import events as ev
from fcgi.connection import Limits, OutputQueue
from fcgi.errors import LocalProtocolError, ProtocolError
from fcgi.records import ProtocolStatus, Role

#: The request id every event of these one-request protocols carries: the
#: same as the first FastCGI request of a connection, so code that logs ids
#: reads the same.
REQUEST_ID: Final = 1
_RESPONDER: Final = int(Role.RESPONDER)
#: The protocol status of a request the app answered itself (end_request's default).
_COMPLETE: Final = int(ProtocolStatus.REQUEST_COMPLETE)
_ACTIVE: Final[Collection[int]] = (REQUEST_ID,)
_IDLE: Final[Collection[int]] = ()

# Stages of the one request.
#: Reading its head.
_HEAD: Final = 0
#: The head is in and the app may run; reading CONTENT_LENGTH bytes of body.
_BODY: Final = 1
#: All of its input is in: more bytes break the protocol.
_DONE: Final = 2
#: Rejected, or answered before its body was read: input is taken and dropped.
_DROP: Final = 3

#: What the app would have said had it run: sent for a request ended with a
#: FastCGI protocol status (a driver over its max_reqs ends the request with
#: OVERLOADED). These protocols have no such status, and an empty answer reads
#: as a crash to the web server (502).
_UNAVAILABLE_BODY: Final = b"503 Service Unavailable\n"
_UNAVAILABLE: Final = (
    b"Status: 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_UNAVAILABLE_BODY), _UNAVAILABLE_BODY)
)

#: How much of a bad request head goes into an error message (see quote_head).
HEAD_QUOTE: Final = 16


def quote_head(data: bytes) -> str:
    """The first HEAD_QUOTE bytes of a bad head, for an error message: ``b'...'``.

    The bytes go in as they are (latin-1: one character each), not as a
    repr(): a core's message reaches the log as an argument, and the log
    writes each control character and backslash of it as ``\\xHH``
    (:mod:`fcgi.escape`). A repr's escapes would be escaped a second time
    there (``\\x01`` logged as ``\\x5Cx01``); this way each byte the peer
    sent is escaped exactly once, where it is written, and none can start a
    line of its own.
    """
    return "b'" + data[:HEAD_QUOTE].decode("latin-1") + "'"


def wrong_protocol_hint(first: int) -> str:
    """What the first byte of a head suggests the peer speaks, for an error message.

    The usual cause of a bad head is a web server pointed at a listener of
    another protocol (``fastcgi_pass`` to a uwsgi socket): saying so saves
    the operator a packet capture.
    """
    if first == 1:
        return " (a FastCGI client? its records start with version 1)"
    if first == 0:
        return " (a uwsgi client? its requests start with modifier1 0)"
    if 0x30 <= first <= 0x39:
        return " (an SCGI client? its requests start with a decimal length)"
    if 0x41 <= first <= 0x5A:
        return " (an HTTP client?)"
    return ""


class OneRequestConnection(OutputQueue):
    """One request per connection: head, then CONTENT_LENGTH bytes of body, then the answer.

    A subclass says how the head is laid out: :meth:`_measure` learns its size
    from its first ``_prefix_max`` bytes, :meth:`_parse` turns the whole head
    into params. This class does the rest the same way for every such
    protocol: buffering the head, the limits, body events. The output queue
    is :class:`~fcgi.connection.OutputQueue`'s, as for FastCGI;
    ``should_close`` turns True once the request is answered (the protocol
    has one per connection).
    """

    __slots__ = ("_active", "_body_left", "_head", "_need", "_prefix_max", "_sent", "_stage")

    def __init__(self, limits: Limits | None = None) -> None:
        OutputQueue.__init__(self, limits)
        self._stage = _HEAD
        #: The head received so far (never more than the head).
        self._head = bytearray()
        #: The head's size once known, else -1.
        self._need = -1
        #: Head bytes that always suffice to learn the head's size (subclass).
        self._prefix_max = 1
        self._body_left = 0
        #: True from the request's BeginRequest event until end_request.
        self._active = False
        #: True once the app wrote response bytes.
        self._sent = False

    # -- what a subclass defines -------------------------------------------------

    def _measure(self, prefix: bytes) -> tuple[int, int] | None:
        """(whole head size, size to hold against max_params_bytes), or None for "more".

        ``prefix`` is the start of the head, at most ``_prefix_max`` bytes; with
        that many it must decide, by answering or raising ProtocolError.
        """
        raise NotImplementedError

    def _parse(self, head: bytes) -> tuple[dict[str, str], int, int]:
        """(params, pairs sent, body length or -1 if unusable) from the whole head."""
        raise NotImplementedError

    def _emit(self, data: bytes) -> None:
        """Queue response bytes (after the app's send_stdout)."""
        self._out.append(data)

    def _finish(self) -> None:
        """The response is complete: queue whatever :meth:`_emit` held back."""

    # -- input ---------------------------------------------------------------------

    @property
    def active_requests(self) -> Collection[int]:
        return _ACTIVE if self._active else _IDLE

    @property
    def buffered(self) -> int:
        """Bytes received of a request head that is not complete yet."""
        return len(self._head)

    @property
    def mid_record(self) -> bool:
        """True while part of the request has arrived but not all of it (head or body).

        Drivers time their reads by it: a peer that stops in the middle of a
        body is as stalled as one that stops in the middle of a head.
        """
        stage = self._stage
        return stage == _BODY or (stage == _HEAD and bool(self._head))

    def keep_conn(self, request_id: int) -> bool:
        self._live(request_id)
        return False

    def role(self, request_id: int) -> int:
        self._live(request_id)
        return _RESPONDER

    def feed(self, data: bytes | bytearray | memoryview) -> list[ev.Event]:
        """Take bytes from the peer; return the events they complete.

        ``data`` may be a view of a buffer the caller reuses: nothing is kept
        that refers to it. Raises :class:`ProtocolError` if the input breaks
        the protocol; the connection should then be closed.
        """
        out: list[ev.Event] = []
        if self._stage == _HEAD:
            data = self._take_head(data, out)
        if data:
            stage = self._stage
            if stage == _BODY:
                self._take_body(data, out)
            elif stage == _DONE:
                raise ProtocolError(f"{len(data)} bytes after the end of the request")
        return out

    def feed_owned(self, data: bytes) -> list[ev.Event]:
        """As :meth:`feed`: a body piece that comes as bytes is passed on uncopied already."""
        return self.feed(data)

    def _take_head(
        self, data: bytes | bytearray | memoryview, out: list[ev.Event]
    ) -> bytes | bytearray | memoryview:
        """Add ``data`` to the head; return what follows the head (empty if it is not whole)."""
        head = self._head
        need = self._need
        prefix_max = self._prefix_max
        if need < 0 and not head and len(data) >= prefix_max:
            # The usual case: a whole head at the start of a read, parsed
            # where it lies instead of being gathered first.
            need = self._sized(self._measure(bytes(data[:prefix_max])), out)
            if need < 0:
                return b""
            if len(data) >= need:
                self._start(data[:need] if type(data) is bytes else bytes(data[:need]), out)
                return data[need:]
        elif need < 0:
            # The size is not known yet: take no more than it takes to learn it.
            take = min(prefix_max - len(head), len(data))
            head += data[:take]
            data = data[take:]
            measured = self._measure(bytes(head))
            if measured is None and len(head) < prefix_max:
                return b""  # all of data went into the head
            need = self._sized(measured, out)
            if need < 0:
                return b""
            if len(head) > need:
                # A head shorter than the prefix: what was taken past it follows.
                data = bytes(head[need:]) + bytes(data)
                del head[need:]
        missing = need - len(head)
        if len(data) < missing:
            head += data
            return b""
        whole = b"".join((head, data[:missing]))
        head.clear()
        self._start(whole, out)
        return data[missing:]

    def _sized(self, measured: tuple[int, int] | None, out: list[ev.Event]) -> int:
        """The head's size as :meth:`_measure` found it; -1 if the size alone rejects it."""
        if measured is None:
            raise AssertionError(f"{type(self).__name__}._measure did not decide on its prefix")
        need, size = measured
        limit = self.limits.max_params_bytes
        if size > limit:
            self._head.clear()
            out.append(ev.BeginRequest(REQUEST_ID, _RESPONDER, False))
            reason = f"request head of {size} bytes is larger than max_params_bytes ({limit} bytes)"
            self._reject(reason, 431, out)
            return -1
        self._need = need
        return need

    def _start(self, head: bytes, out: list[ev.Event]) -> None:
        """The whole head is in: begin the request, or reject it."""
        params, pairs, length = self._parse(head)
        out.append(ev.BeginRequest(REQUEST_ID, _RESPONDER, False))
        limits = self.limits
        body_limit = limits.max_body_size
        if pairs > limits.max_params:
            self._reject(f"more than {limits.max_params} request variables", 431, out)
        elif length < 0:
            self._reject("CONTENT_LENGTH is not a decimal number", 400, out)
        elif body_limit and length > body_limit:
            reason = (
                f"request body of {length} bytes (CONTENT_LENGTH) is larger than "
                f"max_body_size ({body_limit} bytes)"
            )
            self._reject(reason, 413, out)
        else:
            self._active = True
            out.append(ev.Params(REQUEST_ID, params))
            if length:
                self._stage = _BODY
                self._body_left = length
            else:
                self._stage = _DONE
                out.append(ev.StdinEnd(REQUEST_ID))

    def _reject(self, reason: str, status: int, out: list[ev.Event]) -> None:
        """Refuse the request before the app runs; its input is dropped from now on."""
        self._active = True  # until the driver's end_request, as for FastCGI
        self._stage = _DROP
        out.append(ev.RequestRejected(REQUEST_ID, reason, status))

    def _take_body(self, data: bytes | bytearray | memoryview, out: list[ev.Event]) -> None:
        left = self._body_left
        size = len(data)
        if size < left:
            self._body_left = left - size
            out.append(ev.StdinData(REQUEST_ID, data if type(data) is bytes else bytes(data)))
            return
        piece = data if size == left and type(data) is bytes else bytes(data[:left])
        self._body_left = 0
        self._stage = _DONE
        out.append(ev.StdinData(REQUEST_ID, piece))
        out.append(ev.StdinEnd(REQUEST_ID))
        if size > left:
            raise ProtocolError(f"{size - left} bytes after the end of the request body")

    def feed_eof(self) -> None:
        """The peer closed its side. Raises if it stopped in the middle of the request."""
        self.closed_by_peer = True
        if self._stage == _BODY:
            raise ProtocolError(
                f"connection closed {self._body_left} bytes before the end of the request body"
            )
        if self._head:
            raise ProtocolError(
                f"connection closed inside the request head ({len(self._head)} bytes of it "
                "received)"
            )

    # -- output --------------------------------------------------------------------

    def _live(self, request_id: int) -> None:
        if request_id != REQUEST_ID or not self._active:
            raise LocalProtocolError(f"request id {request_id} is not active")

    def send_stdout(self, request_id: int, data: bytes) -> None:
        """Queue response bytes; an empty ``data`` is a no-op (end_request terminates)."""
        if request_id != REQUEST_ID or not self._active:
            raise LocalProtocolError(f"request id {request_id} is not active")
        if data:
            self._sent = True
            self._emit(data)

    def send_stderr(self, request_id: int, data: bytes) -> None:
        """Dropped: the protocol has no channel for it.

        A driver should log the app's stderr itself on these connections.
        """
        self._live(request_id)

    def end_request(
        self, request_id: int, app_status: int = 0, protocol_status: int = _COMPLETE
    ) -> None:
        """Finish the response; the connection is then to be closed.

        ``app_status`` has nowhere to go. A ``protocol_status`` other than
        REQUEST_COMPLETE on a request that wrote nothing gets a 503 answer.
        """
        self._live(request_id)
        if protocol_status != _COMPLETE and not self._sent:
            self._emit(_UNAVAILABLE)
        self._finish()
        self._active = False
        if self._stage == _BODY:
            self._stage = _DROP  # input for a request that is over is ignored
        self.should_close = True
