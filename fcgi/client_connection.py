"""The web server's side of one FastCGI transport connection, without I/O.

The mirror of :mod:`fcgi.connection`, which is the application's side: call
the ``begin_request`` / ``send_*`` / ``end_*`` methods and write what
:meth:`ClientConnection.data_to_send` returns; feed it the bytes the
application sent back (split anywhere) and get :class:`ClientEvent` objects.
As in h11, one sans-IO core serves both roles, so ``fcgi request``, the test
harness and the benchmark's checker share one encoder and one record parser
instead of each walking record headers themselves.

What the client sends for a request, by stage (rows) and call (columns); a
call marked "-" raises :class:`LocalProtocolError`, because the application
would have to refuse what it got::

    stage             send_params          send_stdin / end_stdin    send_data / end_data
    AWAITING_PARAMS   -> STREAMING_STDIN*  -                         -
    STREAMING_STDIN   -                    ok / -> STREAMING_DATA**  -
    STREAMING_DATA    -                    -                         ok / -> INPUT_SENT
    INPUT_SENT        -                    -                         -

    *  an AUTHORIZER gets no FCGI_STDIN (spec section 6.3): INPUT_SENT directly;
       any other role goes to STREAMING_STDIN
    ** only a FILTER has an FCGI_DATA stream (section 6.4); others: INPUT_SENT

``begin_request`` makes an id active in AWAITING_PARAMS; ``abort_request`` is
allowed in every stage. The id stays active, whatever its stage, until the
application's END_REQUEST for it arrives: only then may it be used again.

What the application may send back, and what it becomes:

* STDOUT, STDERR with content: :class:`StdoutData`, :class:`StderrData`; the
  empty record that ends each stream carries nothing and is not reported;
* END_REQUEST: :class:`EndRequest`, and the id is retired;
* GET_VALUES_RESULT, UNKNOWN_TYPE (request id 0): :class:`GetValuesResult`,
  :class:`UnknownType`.

Anything else raises :class:`ProtocolError`: a record version other than 1, a
record type only a web server sends, a fixed-size body of the wrong size, a
GET_VALUES_RESULT nobody asked for, or a record for an id that is not active
(never begun, or already ended). A tool that must read past such strays (``fcgi
request`` shows what came back for its own request) passes
``ignore_strays=True``; the last two are then dropped instead.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from fcgi.errors import LocalProtocolError, ProtocolError
from fcgi.records import (
    ABORT_REQUEST,
    DATA,
    END_REQUEST,
    END_REQUEST_BODY,
    GET_VALUES,
    GET_VALUES_RESULT,
    HEADER,
    HEADER_LEN,
    STDERR,
    STDIN,
    STDOUT,
    UNKNOWN_TYPE,
    UNKNOWN_TYPE_BODY,
    VERSION_1,
    RecordType,
    Role,
    decode_pairs,
    encode_begin_request,
    encode_pairs,
    encode_params,
    encode_record,
    stream_buffers,
)

__all__ = [
    "ClientConnection",
    "ClientEvent",
    "EndRequest",
    "GetValuesResult",
    "Record",
    "RecordSplitter",
    "StderrData",
    "StdoutData",
    "UnknownType",
]

#: Request ids are 16 bits; 0 is the null id of management records (section 3.3).
_MAX_REQUEST_ID = 0xFFFF

# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """Something the application sent, as :meth:`ClientConnection.feed` reports it."""


@dataclass(frozen=True, slots=True)
class StdoutData(ClientEvent):
    """Part of a request's FCGI_STDOUT stream (the CGI response)."""

    request_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StderrData(ClientEvent):
    """Part of a request's FCGI_STDERR stream (what the app logged for the web server)."""

    request_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class EndRequest(ClientEvent):
    """The request is over; its id is free again.

    ``protocol_status`` other than REQUEST_COMPLETE means the application
    refused the request (CANT_MPX_CONN, OVERLOADED, UNKNOWN_ROLE); then
    ``app_status`` carries nothing.
    """

    request_id: int
    app_status: int
    protocol_status: int


@dataclass(frozen=True, slots=True)
class GetValuesResult(ClientEvent):
    """The answer to :meth:`ClientConnection.get_values`: only the names it understood.

    Decoded as latin-1, one code point per byte, as the server side decodes
    PARAMS: the values are ASCII numbers in practice, and nothing is lost.
    """

    values: dict[str, str]


@dataclass(frozen=True, slots=True)
class UnknownType(ClientEvent):
    """The application did not understand a management record of ``record_type``."""

    record_type: int


# -- records ------------------------------------------------------------------------------


class Record(NamedTuple):
    """One record as it came off the wire."""

    record_type: int
    request_id: int
    content: bytes
    #: How many padding bytes followed the content (skipped); a tool that
    #: checks a peer's 8-byte alignment reads it.
    padding: int


class RecordSplitter:
    """Cuts a byte stream into records, whatever the reads that brought it.

    The one place the client side reads a record header. It knows nothing
    of requests: :class:`ClientConnection` gives the records their meaning,
    and tools that must see every record as it is (the test harness) use it
    alone. Raises :class:`ProtocolError` for a version other than 1 as soon
    as the header is in: such bytes are not FastCGI.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        #: Received bytes that do not make a whole record yet.
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received of a record that is not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Record]:
        """The records ``data`` completes, in order; the rest is kept for the next call."""
        buffer = self._buffer
        buffer += data
        records: list[Record] = []
        end = len(buffer)
        pos = 0
        with memoryview(buffer) as view:
            while end - pos >= HEADER_LEN:
                version, rtype, rid, clen, plen = HEADER.unpack_from(view, pos)
                if version != VERSION_1:
                    raise ProtocolError(
                        f"backend sent a record with FastCGI version {version}"
                        " (is it really a FastCGI server?)"
                    )
                start = pos + HEADER_LEN
                stop = start + clen
                if stop + plen > end:
                    break
                records.append(Record(rtype, rid, bytes(view[start:stop]), plen))
                pos = stop + plen
        del buffer[:pos]
        return records


# -- the connection -----------------------------------------------------------------------


class _Stage(IntEnum):
    """What the client may send next for one request (the table in the module docstring)."""

    AWAITING_PARAMS = 0
    STREAMING_STDIN = 1
    STREAMING_DATA = 2
    INPUT_SENT = 3


class _Request:
    __slots__ = ("role", "stage")

    def __init__(self, role: int) -> None:
        self.role = role
        self.stage = _Stage.AWAITING_PARAMS


def _type_name(rtype: int) -> str:
    try:
        return RecordType(rtype).name
    except ValueError:
        return f"record type {rtype}"


class ClientConnection:
    """State of one connection from the web server's point of view."""

    __slots__ = ("_out", "_queries", "_requests", "_splitter", "ignore_strays")

    def __init__(self, *, ignore_strays: bool = False) -> None:
        self._splitter = RecordSplitter()
        self._out: list[bytes | memoryview] = []
        self._requests: dict[int, _Request] = {}
        #: GET_VALUES sent and not answered yet.
        self._queries = 0
        #: Drop records for ids that are not active, and unasked-for
        #: GET_VALUES_RESULTs, instead of raising ProtocolError.
        self.ignore_strays = ignore_strays

    # -- state ------------------------------------------------------------

    @property
    def active_requests(self) -> Collection[int]:
        """Ids begun and not ended by the application yet."""
        return self._requests.keys()

    # -- output -----------------------------------------------------------

    def begin_request(
        self, role: int = Role.RESPONDER, *, keep_conn: bool = False, request_id: int | None = None
    ) -> int:
        """Send BEGIN_REQUEST; returns the request id (the lowest free one unless given).

        Without ``keep_conn`` the application closes the connection once it
        has answered this request (section 3.5).
        """
        if request_id is None:
            request_id = next(
                (rid for rid in range(1, _MAX_REQUEST_ID + 1) if rid not in self._requests), 0
            )
            if not request_id:
                raise LocalProtocolError("every request id is in use on this connection")
        elif not 0 < request_id <= _MAX_REQUEST_ID:
            raise LocalProtocolError(f"request id {request_id} is not in 1..{_MAX_REQUEST_ID}")
        elif request_id in self._requests:
            raise LocalProtocolError(f"request id {request_id} is still active")
        self._requests[request_id] = _Request(role)
        self._out.append(encode_begin_request(request_id, role, keep_conn))
        return request_id

    def _at(self, request_id: int, stage: _Stage, what: str) -> _Request:
        req = self._requests.get(request_id)
        if req is None:
            raise LocalProtocolError(f"request id {request_id} is not active")
        if req.stage != stage:
            raise LocalProtocolError(
                f"{what} for request id {request_id}, which is at {req.stage.name}"
            )
        return req

    def send_params(
        self, request_id: int, params: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]
    ) -> None:
        """Send the whole PARAMS stream, its empty terminator included."""
        req = self._at(request_id, _Stage.AWAITING_PARAMS, "PARAMS")
        self._out.append(encode_params(request_id, params))
        req.stage = _Stage.INPUT_SENT if req.role == Role.AUTHORIZER else _Stage.STREAMING_STDIN

    def send_stdin(self, request_id: int, data: bytes) -> None:
        """Send part of the request body; an empty ``data`` is a no-op (see :meth:`end_stdin`)."""
        self._send_stream(request_id, _Stage.STREAMING_STDIN, STDIN, data)

    def end_stdin(self, request_id: int) -> None:
        """End the request body (the empty FCGI_STDIN record)."""
        req = self._end_stream(request_id, _Stage.STREAMING_STDIN, STDIN)
        req.stage = _Stage.STREAMING_DATA if req.role == Role.FILTER else _Stage.INPUT_SENT

    def send_data(self, request_id: int, data: bytes) -> None:
        """Send part of a FILTER's FCGI_DATA stream (the file to filter); empty is a no-op."""
        self._send_stream(request_id, _Stage.STREAMING_DATA, DATA, data)

    def end_data(self, request_id: int) -> None:
        """End the FCGI_DATA stream: the request's input is all sent."""
        self._end_stream(request_id, _Stage.STREAMING_DATA, DATA).stage = _Stage.INPUT_SENT

    def _send_stream(self, request_id: int, stage: _Stage, rtype: int, data: bytes) -> None:
        self._at(request_id, stage, RecordType(rtype).name)
        if data:
            self._out += stream_buffers(rtype, request_id, data)

    def _end_stream(self, request_id: int, stage: _Stage, rtype: int) -> _Request:
        req = self._at(request_id, stage, f"the end of {RecordType(rtype).name}")
        self._out.append(encode_record(rtype, request_id))
        return req

    def send_request(
        self,
        params: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
        stdin: bytes = b"",
        *,
        role: int = Role.RESPONDER,
        keep_conn: bool = False,
        data: bytes = b"",
        request_id: int | None = None,
    ) -> int:
        """A whole request in one call; returns its id.

        ``stdin`` is not sent for an AUTHORIZER, ``data`` only for a FILTER
        (whose FCGI_DATA_LENGTH param the caller supplies).
        """
        rid = self.begin_request(role, keep_conn=keep_conn, request_id=request_id)
        self.send_params(rid, params)
        if role != Role.AUTHORIZER:
            self.send_stdin(rid, stdin)
            self.end_stdin(rid)
        if role == Role.FILTER:
            self.send_data(rid, data)
            self.end_data(rid)
        return rid

    def abort_request(self, request_id: int) -> None:
        """Ask the application to give up; the id stays active until its END_REQUEST."""
        if request_id not in self._requests:
            raise LocalProtocolError(f"request id {request_id} is not active")
        self._out.append(encode_record(ABORT_REQUEST, request_id))

    def get_values(self, names: Iterable[str]) -> None:
        """Ask FCGI_GET_VALUES (FCGI_MAX_CONNS, FCGI_MAX_REQS, FCGI_MPXS_CONNS...)."""
        query = encode_pairs([(name.encode("latin-1"), b"") for name in names])
        self._out.append(encode_record(GET_VALUES, 0, query))
        self._queries += 1

    def data_to_send(self) -> bytes:
        """Everything queued for the application since the last call, in order."""
        out = self._out
        self._out = []
        return b"".join(out)

    # -- input ------------------------------------------------------------

    @property
    def mid_record(self) -> bool:
        """True while part of a record has arrived but not all of it."""
        return self._splitter.buffered > 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[ClientEvent]:
        """Take bytes from the application; return the events they complete.

        Raises :class:`ProtocolError` if they are not what an application may
        send; the connection cannot continue then.
        """
        events: list[ClientEvent] = []
        for record in self._splitter.feed(data):
            self._receive(record, events)
        return events

    def feed_eof(self) -> None:
        """The application closed its side. Raises if it stopped in the middle of a record.

        Requests still in :attr:`active_requests` then never got their END_REQUEST.
        """
        if self.mid_record:
            raise ProtocolError(
                f"connection closed inside a record"
                f" ({self._splitter.buffered} bytes of it received)"
            )

    def _receive(self, record: Record, events: list[ClientEvent]) -> None:
        rtype, rid, content, _ = record
        if rtype in (STDOUT, STDERR, END_REQUEST):
            if rid == 0:
                raise ProtocolError(f"{_type_name(rtype)} record with the null request id 0")
            if rid not in self._requests:
                if self.ignore_strays:
                    return
                raise ProtocolError(
                    f"{_type_name(rtype)} record for request id {rid}, which is not active"
                )
            if rtype == END_REQUEST:
                if len(content) != END_REQUEST_BODY.size:
                    raise ProtocolError(f"END_REQUEST body of {len(content)} bytes, expected 8")
                app_status, protocol_status = END_REQUEST_BODY.unpack(content)
                del self._requests[rid]
                events.append(EndRequest(rid, app_status, protocol_status))
            elif content:
                event = StdoutData if rtype == STDOUT else StderrData
                events.append(event(rid, content))
        elif rtype == GET_VALUES_RESULT and rid == 0:
            if not self._queries:
                if self.ignore_strays:
                    return
                raise ProtocolError("GET_VALUES_RESULT without a GET_VALUES asking for it")
            self._queries -= 1
            try:
                pairs = decode_pairs(content)
            except ProtocolError as exc:
                raise ProtocolError(f"bad GET_VALUES_RESULT: {exc}") from None
            values = {name.decode("latin-1"): value.decode("latin-1") for name, value in pairs}
            events.append(GetValuesResult(values))
        elif rtype == UNKNOWN_TYPE and rid == 0:
            if len(content) != UNKNOWN_TYPE_BODY.size:
                raise ProtocolError(f"UNKNOWN_TYPE body of {len(content)} bytes, expected 8")
            (unknown,) = UNKNOWN_TYPE_BODY.unpack(content)
            if unknown == GET_VALUES and self._queries:
                self._queries -= 1
            events.append(UnknownType(unknown))
        elif rtype in (GET_VALUES_RESULT, UNKNOWN_TYPE):
            raise ProtocolError(f"{_type_name(rtype)} record for request id {rid}, not 0")
        else:
            raise ProtocolError(
                f"{_type_name(rtype)} records go to the application, not from it"
                if 0 < rtype < UNKNOWN_TYPE
                else f"{_type_name(rtype)} is not a record an application sends"
            )
