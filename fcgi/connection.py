"""The application side of one FastCGI transport connection, without I/O.

Feed it the bytes the web server sent (split anywhere), get :mod:`fcgi.events`
back; call the ``send_*`` / ``end_request`` methods and write what
:meth:`ServerConnection.data_to_send` returns. Management records (request id
0) are answered here, so drivers never see them.

Rules taken from the FastCGI 1.0 specification:

* an id is active from its BEGIN_REQUEST until *we* send its END_REQUEST;
  records for inactive ids are ignored (section 3.3);
* GET_VALUES gets only the names we understand (section 4.1), unknown
  management types get UNKNOWN_TYPE (section 4.2);
* without FCGI_KEEP_CONN the application closes the connection once the request
  is answered (section 3.5), reported here as :attr:`ServerConnection.should_close`.

What each record does to an active request, by the stage the request is in
(``_record`` is this table; BEGIN_REQUEST makes an id active, in
READING_PARAMS, unless it is refused; ABORT_REQUEST gives an
:class:`~fcgi.events.AbortRequest` in every stage)::

    stage            PARAMS              STDIN                 DATA
    ---------------  ------------------  --------------------  ---------------------
    READING_PARAMS   content: kept       reject 400            reject 400 if content
                     empty: Params ->
                     READING_STDIN
                     (AUTHORIZER:
                     INPUT_DONE)
    READING_STDIN    reject 400          content: StdinData    reject 400 if content
                                         empty: StdinEnd ->
                                         INPUT_DONE (FILTER:
                                         READING_DATA)
    READING_DATA     reject 400          reject 400 if content content: DataChunk
                                                               empty: DataEnd ->
                                                               INPUT_DONE
    INPUT_DONE       reject 400          reject 400 if content reject 400 if content
                                         (AUTHORIZER: ignored)
    REJECTED         ignored             ignored               ignored

A reject is one :class:`~fcgi.events.RequestRejected` for the request (the
driver answers it), never a closed connection; the limits (max_params,
max_params_bytes, max_body_size) reject with 431 or 413 in the same way. What
breaks the framing itself (a bad version, BEGIN_REQUEST for an active id,
records only a web server receives) is a :class:`ProtocolError`: the stream
cannot be trusted any further.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, cast

from fcgi import events as ev
from fcgi.errors import LocalProtocolError, ProtocolError
from fcgi.records import (
    ABORT_REQUEST,
    BEGIN_REQUEST,
    BEGIN_REQUEST_BODY,
    DATA,
    END_REQUEST,
    GET_VALUES,
    GET_VALUES_RESULT,
    HEADER,
    HEADER_LEN,
    KEEP_CONN,
    PARAMS,
    STDERR,
    STDIN,
    STDOUT,
    UNKNOWN_TYPE,
    VERSION_1,
    ProtocolStatus,
    RecordType,
    Role,
    decode_pairs,
    decode_params,
    encode_end_request,
    encode_pairs,
    encode_record,
    encode_unknown_type,
    pack_header,
    scan_head,
    stream_buffers,
)

_unpack_header = HEADER.unpack_from
#: The C head scanner (None on the pure-Python path): see ServerConnection._whole_head.
_scan_head = scan_head

# A request's stages: what it waits for. Named after what they wait for, not
# after the record types (PARAMS, STDIN, DATA), which are plain ints too.
_READING_PARAMS: Final = 0
_READING_STDIN: Final = 1
_READING_DATA: Final = 2
_INPUT_DONE: Final = 3
_REJECTED: Final = 4

#: The records that close a plain successful response (empty STDOUT, then
#: END_REQUEST with appStatus 0), by request id: built once per id, not per request.
_COMPLETE_TAILS: Final[dict[int, bytes]] = {}
_TAIL_CACHE_IDS: Final = 256


def _complete_tail(request_id: int) -> bytes:
    tail = _COMPLETE_TAILS.get(request_id)
    if tail is None:
        tail = pack_header(VERSION_1, STDOUT, request_id, 0, 0) + encode_end_request(request_id)
        if request_id < _TAIL_CACHE_IDS:
            _COMPLETE_TAILS[request_id] = tail
    return tail


#: Pieces of a split record smaller than this are copied together rather than
#: kept; body pieces smaller than this are copied rather than passed on as
#: views (see _body_piece). A page: below it a copy is cheaper than a view.
_SMALL_PIECE: Final = 4096


def _body_piece(content: bytes | bytearray | memoryview, owned: bool) -> bytes | memoryview:
    """A piece of body for its event: a view if it is a large one of owned bytes, else a copy.

    A small piece is copied even then: the copy costs less than the view
    object, and a peer sending one-byte records cannot make a read's worth
    of bytes into tens of thousands of views (see _SMALL_PIECE).
    """
    if owned and len(content) >= _SMALL_PIECE and type(content) is memoryview:
        return content
    return bytes(content)


def _keep_views_dense(out: list[ev.Event], fed: int) -> None:
    """Copy the body views one read made if they cover less than half of it.

    A view keeps the whole read alive, and the rest of a read can be
    anything: records for ids that are not active are ignored, and padding
    counts for nothing. A peer sending a 4 KiB body record in every 256 KiB
    read would otherwise make each body byte hold 64 (max_body_size and
    CONTENT_LENGTH count body bytes only). So the views stay only where the
    body is at least half of what was read: memory held is then at most
    twice the body, as with copies.
    """
    viewed = 0
    for event in out:
        kind = type(event)
        if kind is ev.StdinData:
            piece = cast(ev.StdinData, event).data
        elif kind is ev.DataChunk:
            piece = cast(ev.DataChunk, event).data
        else:
            continue
        if type(piece) is memoryview:
            viewed += len(piece)
    if not viewed or 2 * viewed >= fed:
        return
    for event in out:
        kind = type(event)
        if kind is ev.StdinData:
            stdin = cast(ev.StdinData, event)
            stdin.data = bytes(stdin.data)
        elif kind is ev.DataChunk:
            chunk = cast(ev.DataChunk, event)
            chunk.data = bytes(chunk.data)


def _join_span(parts: list[bytes | bytearray | memoryview], start: int, stop: int) -> bytes:
    """Bytes ``start:stop`` of the concatenation of ``parts``, copied once."""
    views: list[memoryview] = []
    offset = 0
    for part in parts:
        size = len(part)
        lo = max(start - offset, 0)
        hi = min(stop - offset, size)
        if lo < hi:
            views.append(memoryview(part)[lo:hi])
        offset += size
        if offset >= stop:
            break
    return b"".join(views)


_OUTGOING_TYPES: Final = frozenset((END_REQUEST, STDOUT, STDERR, GET_VALUES_RESULT, UNKNOWN_TYPE))


@dataclass(slots=True)
class Limits:
    """What one connection accepts; every default is safe to face the internet with.

    ``max_active_ids`` is how many ids may be active at once on this connection:
    1 means no multiplexing (extra ids get CANT_MPX_CONN). ``max_conns`` and
    ``max_reqs`` are only reported through GET_VALUES and should describe the
    whole process.
    """

    max_active_ids: int = 1
    max_params: int = 1000
    max_params_bytes: int = 256 * 1024
    max_conns: int = 1
    max_reqs: int = 1
    #: Most FCGI_STDIN bytes one request may send (0: no limit). A declared
    #: CONTENT_LENGTH above it is refused before the app runs (413); a body
    #: without one is cut off when it crosses the limit. The web server's own
    #: limit (nginx's client_max_body_size) is the front line; this one keeps
    #: a peer that talks to the socket directly from filling memory or disk.
    max_body_size: int = 512 * 1024 * 1024
    roles: Collection[int] = (Role.RESPONDER, Role.AUTHORIZER, Role.FILTER)


class _Request:
    __slots__ = (
        "body_limit",
        "body_size",
        "data_size",
        "declared",
        "keep_conn",
        "params",
        "params_size",
        "role",
        "stage",
        "stderr_used",
    )

    def __init__(self, role: int, keep_conn: bool) -> None:
        self.role = role
        self.keep_conn = keep_conn
        self.stage = _READING_PARAMS
        self.params: list[bytes] = []
        self.params_size = 0
        self.stderr_used = False
        #: FCGI_STDIN bytes received so far, and the most that may come: the
        #: declared CONTENT_LENGTH, else max_body_size (-1: no limit).
        self.body_size = 0
        self.body_limit = -1
        #: True if body_limit is a declared CONTENT_LENGTH (going past it
        #: breaks the protocol), False if it is max_body_size (too large).
        self.declared = False
        #: FCGI_DATA bytes received so far (FILTER role), capped by max_body_size.
        self.data_size = 0


#: More significant digits than any body can have: such a CONTENT_LENGTH is
#: taken as this many bytes (larger than any limit) rather than given to int(),
#: which refuses strings of more than 4300 digits (a ValueError out of feed()).
_MAX_LENGTH_DIGITS: Final = 19
_HUGE_LENGTH: Final = 10**_MAX_LENGTH_DIGITS


def decimal_length(value: str) -> int:
    """A CONTENT_LENGTH of ASCII digits as a number; -1 if it is anything else.

    Shared by every protocol's core (the uwsgi and SCGI ones too).
    """
    if not (value.isdigit() and value.isascii()):
        return -1
    digits = value.lstrip("0")
    return int(digits or "0") if len(digits) <= _MAX_LENGTH_DIGITS else _HUGE_LENGTH


def _declared_length(params: dict[str, str]) -> int | None:
    """CONTENT_LENGTH as a number, or None if absent or not a plain decimal."""
    value = params.get("CONTENT_LENGTH")
    if not value:
        return None
    length = decimal_length(value.strip())
    return length if length >= 0 else None


class OutputQueue:
    """What every sans-IO connection core holds whatever its protocol: the output queue.

    :class:`ServerConnection` (FastCGI) and
    :class:`fcgi.one_request.OneRequestConnection` (SCGI, uwsgi) differ in
    how they read a request but hand their answer to a driver the same way:
    bytes queued by the ``send_*`` methods, taken with :meth:`data_to_send`
    or :meth:`buffers_to_send`, and two flags that say when the connection
    is over. They share this class so that the drivers' side of the
    interface is written once. Its members are plain ``__slots__``, read
    through the subclass at the same cost as its own: the queue is on the
    path of every request.
    """

    __slots__ = ("_out", "closed_by_peer", "limits", "should_close")

    def __init__(self, limits: Limits | None) -> None:
        self.limits = limits or Limits()
        #: Buffers for the peer, in order, until a driver takes them.
        self._out: list[bytes | memoryview] = []
        #: True once the answer ends the connection (the subclass says when).
        self.should_close = False
        #: True once the peer closed its side (feed_eof).
        self.closed_by_peer = False

    @property
    def has_output(self) -> bool:
        """True if bytes are waiting to be sent (see :meth:`buffers_to_send`)."""
        return bool(self._out)

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call, in order."""
        out = self._out
        if not out:
            return b""
        data = bytes(out[0]) if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def buffers_to_send(self) -> list[bytes | memoryview]:
        """Like :meth:`data_to_send`, as separate buffers (for ``sendmsg``), uncopied."""
        out = self._out
        self._out = []
        return out


class ServerConnection(OutputQueue):
    """State of one connection from the application's point of view.

    ``should_close`` turns True once an END_REQUEST goes out for a request
    without FCGI_KEEP_CONN.
    """

    __slots__ = ("_partial", "_partial_len", "_requests")

    def __init__(self, limits: Limits | None = None) -> None:
        OutputQueue.__init__(self, limits)
        #: The received part of a record that is not complete yet, as the
        #: pieces it came in (see :meth:`_stash`), and its length.
        self._partial: list[bytes | bytearray | memoryview] = []
        self._partial_len = 0
        self._requests: dict[int, _Request] = {}

    # -- input ------------------------------------------------------------

    @property
    def active_requests(self) -> Collection[int]:
        return self._requests.keys()

    @property
    def buffered(self) -> int:
        """Bytes received of a record that is not complete yet (never more than one record)."""
        return self._partial_len

    @property
    def mid_record(self) -> bool:
        """True while part of a record has arrived but not all of it."""
        return self._partial_len > 0

    def keep_conn(self, request_id: int) -> bool:
        return self._requests[request_id].keep_conn

    def role(self, request_id: int) -> int:
        return self._requests[request_id].role

    def feed(self, data: bytes | bytearray | memoryview) -> list[ev.Event]:
        """Take bytes from the peer; return the events they complete.

        ``data`` may be a view of a buffer the caller reuses: nothing is kept
        that refers to a mutable buffer once this returns.

        Raises :class:`ProtocolError` if the stream cannot be parsed any further;
        the connection should then be closed.

        Record contents are sliced straight out of ``data``; a record split
        across reads is put together once, when its last piece arrives, so a
        request body is copied once on its way from the socket to the app.
        """
        return self._feed(data, False)

    def feed_owned(self, data: bytes) -> list[ev.Event]:
        """As :meth:`feed`, for bytes the caller hands over: body content is not copied.

        FCGI_STDIN and FCGI_DATA content that lies whole in ``data`` comes
        out as read-only views of it (only a record split across reads is
        joined into bytes of its own), so a driver that receives a body into
        fresh bytes (``socket.recv``) spends no copy on it before the app
        reads it. The views keep ``data`` alive until their events are
        consumed, so they are made only where they are most of it (see
        _keep_views_dense). The rules, and so the events, are those of
        :meth:`feed`.
        """
        if type(data) is not bytes:
            # Views of anything else could change under the app (a reused
            # buffer), and the compiled build refuses it anyway.
            raise TypeError(f"feed_owned takes bytes, not {type(data).__name__}")
        out = self._feed(memoryview(data), True)
        if out:
            _keep_views_dense(out, len(data))
        return out

    def _feed(self, data: bytes | bytearray | memoryview, owned: bool) -> list[ev.Event]:
        out: list[ev.Event] = []
        if self._partial_len:
            pos = self._finish_partial(data, out)
            if pos < 0:
                return out
        elif self._requests or _scan_head is None:
            pos = 0
        else:
            pos = self._whole_head(data, out)
        end = len(data)
        while end - pos >= HEADER_LEN:
            version, rtype, rid, clen, plen = _unpack_header(data, pos)
            if version != VERSION_1:
                raise ProtocolError(f"unsupported FastCGI version {version}")
            stop = pos + HEADER_LEN + clen
            if stop + plen > end:
                break
            content = data[pos + HEADER_LEN : stop]
            pos = stop + plen
            self._record(rtype, rid, content, out, owned)
        if pos < end:
            self._stash(memoryview(data)[pos:] if pos else data)
        return out

    def _whole_head(self, data: bytes | bytearray | memoryview, out: list[ev.Event]) -> int:
        """Take a request head that came whole at the start of ``data`` in one step.

        The usual request: a BEGIN_REQUEST and its whole PARAMS stream in one
        read, with no other request active. :func:`fcgi.records.scan_head`
        (C) finds and decodes it; the rules are the ones :meth:`_record`
        applies record by record (``_admit``, ``_params_ready``), so the
        events and the answers are the same. Anything scan_head does not
        recognise, and a PARAMS stream over max_params_bytes (whose
        rejection the record loop words), goes to the record loop instead.
        Returns how many bytes of ``data`` were taken (0 for none).
        """
        head = _scan_head(data)  # type: ignore[misc]  # not None: feed checked
        if head is None:
            return 0
        rid, role, flags, params, params_size, end = head
        if params_size > self.limits.max_params_bytes:
            return 0
        req = self._admit(rid, role, flags, out)
        if req is not None:
            req.params_size = params_size
            self._params_ready(req, rid, params, out)
        # A refused id's PARAMS records are for an inactive id: ignored (3.3).
        return end

    def _stash(self, piece: bytes | bytearray | memoryview) -> None:
        """Keep ``piece`` of an incomplete record, uncopied if it is large and immutable.

        Small pieces are gathered into one bytearray, so a peer that trickles a
        record a byte at a time costs a bounded number of list entries.
        """
        parts = self._partial
        self._partial_len += len(piece)
        if len(piece) >= _SMALL_PIECE:
            # Kept by reference only if nobody can change it under us (a
            # driver may feed views of a buffer it reuses for the next read),
            # and a view only if it is most of what it views: the tail of a
            # read would keep the whole read alive (see _keep_views_dense).
            keep = type(piece) is bytes or (
                type(piece) is memoryview
                and piece.readonly
                and type(piece.obj) is bytes
                and 2 * len(piece) >= len(piece.obj)
            )
            parts.append(piece if keep else bytes(piece))
        elif parts and type(parts[-1]) is bytearray:
            parts[-1] += piece
        else:
            parts.append(bytearray(piece))

    def _finish_partial(self, data: bytes | bytearray | memoryview, out: list[ev.Event]) -> int:
        """Complete the stashed record from the start of ``data`` and process it.

        Returns how many bytes of ``data`` that took, or -1 if all of ``data``
        went into a record that is still incomplete.
        """
        parts = self._partial
        have = self._partial_len
        used = 0
        if have < HEADER_LEN:
            used = min(HEADER_LEN - have, len(data))
            self._stash(data[:used])
            if self._partial_len < HEADER_LEN:
                return -1
            # The header is whole now and sits at the start of one part.
            parts[:] = [b"".join(parts)]
            have = HEADER_LEN
        version, rtype, rid, clen, plen = _unpack_header(parts[0], 0)
        if version != VERSION_1:
            raise ProtocolError(f"unsupported FastCGI version {version}")
        need: int = HEADER_LEN + clen + plen - have
        if len(data) - used < need:
            self._stash(memoryview(data)[used:] if used else data)
            return -1
        parts.append(memoryview(data)[used : used + need])
        content = _join_span(parts, HEADER_LEN, HEADER_LEN + clen)
        parts.clear()
        self._partial_len = 0
        self._record(rtype, rid, content, out, False)  # bytes of its own already
        return used + need

    def feed_eof(self) -> None:
        """The peer closed its side. Raises if it stopped in the middle of a record."""
        self.closed_by_peer = True
        if self._partial_len:
            raise ProtocolError(
                f"connection closed inside a record ({self._partial_len} bytes of it received)"
            )

    def _record(
        self,
        rtype: int,
        rid: int,
        content: bytes | bytearray | memoryview,
        out: list[ev.Event],
        owned: bool,
    ) -> None:
        """Apply one whole record; ``owned``: ``content`` is a view of bytes it may keep."""
        req = self._requests.get(rid)
        if req is not None:
            stage = req.stage
            if rtype == STDIN:
                if stage == _READING_STDIN:
                    if content:
                        size = req.body_size + len(content)
                        if 0 <= req.body_limit < size:
                            self._body_over_limit(req, rid, content, out)
                            return
                        req.body_size = size
                        out.append(ev.StdinData(rid, _body_piece(content, owned)))
                    else:
                        req.stage = _READING_DATA if req.role == Role.FILTER else _INPUT_DONE
                        out.append(ev.StdinEnd(rid))
                elif stage == _READING_PARAMS:
                    self._reject(req, rid, "STDIN arrived before the PARAMS stream ended", 400, out)
                elif stage != _REJECTED and content and req.role != Role.AUTHORIZER:
                    self._reject(
                        req, rid, "STDIN record after the end of the STDIN stream", 400, out
                    )
                return
            if rtype == PARAMS:
                if stage == _READING_PARAMS:
                    if content:
                        req.params_size += len(content)
                        if req.params_size > self.limits.max_params_bytes:
                            self._reject(
                                req,
                                rid,
                                f"PARAMS larger than {self.limits.max_params_bytes} bytes",
                                431,
                                out,
                            )
                            return
                        req.params.append(bytes(content))
                    else:
                        self._params_done(req, rid, out)
                elif stage != _REJECTED:
                    self._reject(
                        req, rid, "PARAMS record after the end of the PARAMS stream", 400, out
                    )
                return
            if rtype == DATA:
                if stage == _READING_DATA:
                    if content:
                        req.data_size += len(content)
                        limit = self.limits.max_body_size
                        if limit and req.data_size > limit:
                            reason = f"FCGI_DATA is larger than max_body_size ({limit} bytes)"
                            self._reject(req, rid, reason, 413, out)
                            return
                        out.append(ev.DataChunk(rid, _body_piece(content, owned)))
                    else:
                        req.stage = _INPUT_DONE
                        out.append(ev.DataEnd(rid))
                elif stage != _REJECTED and content:
                    if req.role != Role.FILTER:
                        self._reject(
                            req, rid, "DATA record for a request that is not a FILTER", 400, out
                        )
                    else:
                        self._reject(req, rid, "DATA record before the end of STDIN", 400, out)
                return
            if rtype == ABORT_REQUEST:
                out.append(ev.AbortRequest(rid))
                return
            if rtype == BEGIN_REQUEST:
                raise ProtocolError(f"BEGIN_REQUEST for request id {rid}, which is still active")
        if rtype == BEGIN_REQUEST:
            self._begin(rid, content, out)
        elif rtype == GET_VALUES:
            self._get_values(content)
        elif rtype > UNKNOWN_TYPE or rtype == 0:
            self._out.append(encode_unknown_type(rtype))
        elif rtype in _OUTGOING_TYPES and (rid == 0 or req is not None):
            raise ProtocolError(
                f"{RecordType(rtype).name} records go to the web server, not from it"
            )
        elif rid == 0:
            # Application records never use the null request id (section 3.3).
            raise ProtocolError(f"{RecordType(rtype).name} record with the null request id 0")
        # Anything else is for an inactive id: ignored, as section 3.3 says.

    def _begin(
        self, rid: int, content: bytes | bytearray | memoryview, out: list[ev.Event]
    ) -> None:
        if rid == 0:
            raise ProtocolError("BEGIN_REQUEST with the null request id 0")
        if len(content) != BEGIN_REQUEST_BODY.size:
            raise ProtocolError(f"BEGIN_REQUEST body of {len(content)} bytes, expected 8")
        role, flags = BEGIN_REQUEST_BODY.unpack(content)
        self._admit(rid, role, flags, out)

    def _admit(self, rid: int, role: int, flags: int, out: list[ev.Event]) -> _Request | None:
        """Make ``rid`` active, or refuse it (END_REQUEST with a protocol status)."""
        keep_conn = bool(flags & KEEP_CONN)
        status = -1
        if role not in self.limits.roles:
            status = ProtocolStatus.UNKNOWN_ROLE
        elif len(self._requests) >= self.limits.max_active_ids:
            status = (
                ProtocolStatus.CANT_MPX_CONN
                if self.limits.max_active_ids == 1
                else ProtocolStatus.OVERLOADED
            )
        if status >= 0:
            self._out.append(encode_end_request(rid, 0, status))
            if not keep_conn and not self._requests:
                self.should_close = True
            out.append(ev.RequestRefused(rid, int(status), role))  # a plain int, as declared
            return None
        req = self._requests[rid] = _Request(role, keep_conn)
        out.append(ev.BeginRequest(rid, role, keep_conn))
        return req

    def _params_done(self, req: _Request, rid: int, out: list[ev.Event]) -> None:
        try:
            params = decode_params(b"".join(req.params))
        except ProtocolError as exc:
            self._reject(req, rid, f"malformed PARAMS: {exc}", 400, out)
            return
        req.params = []
        self._params_ready(req, rid, params, out)

    def _params_ready(
        self, req: _Request, rid: int, params: dict[str, str], out: list[ev.Event]
    ) -> None:
        """The PARAMS stream of ``rid`` ended and decoded: check it, then pass it on."""
        if len(params) > self.limits.max_params:
            self._reject(req, rid, f"more than {self.limits.max_params} PARAMS", 431, out)
            return
        if req.role != Role.AUTHORIZER:
            limit = self.limits.max_body_size
            declared = _declared_length(params)
            if declared is not None:
                if limit and declared > limit:
                    self._reject(
                        req,
                        rid,
                        f"request body of {declared} bytes (CONTENT_LENGTH) is larger than "
                        f"max_body_size ({limit} bytes)",
                        413,
                        out,
                    )
                    return
                req.body_limit = declared
                req.declared = True
            elif limit:
                req.body_limit = limit
        req.stage = _READING_STDIN if req.role != Role.AUTHORIZER else _INPUT_DONE
        out.append(ev.Params(rid, params))

    def _body_over_limit(
        self,
        req: _Request,
        rid: int,
        content: bytes | bytearray | memoryview,
        out: list[ev.Event],
    ) -> None:
        """FCGI_STDIN went past its limit: pass on what fits, then reject the request.

        The app has started by now, so the rejection only ends its input: with
        a declared length it already has every byte it asked for (the excess
        is dropped and reported as a protocol violation); without one, the
        driver makes the app's next read fail, so a body cut short is never
        mistaken for a whole one.
        """
        fits = req.body_limit - req.body_size
        if fits > 0:
            req.body_size += fits
            out.append(ev.StdinData(rid, bytes(content[:fits])))
        if req.declared:
            reason = f"FCGI_STDIN is longer than its CONTENT_LENGTH of {req.body_limit} bytes"
            self._reject(req, rid, reason, 400, out)
        else:
            reason = f"request body is larger than max_body_size ({req.body_limit} bytes)"
            self._reject(req, rid, reason, 413, out)

    def _reject(
        self, req: _Request, rid: int, reason: str, status: int, out: list[ev.Event]
    ) -> None:
        req.stage = _REJECTED
        req.params = []
        out.append(ev.RequestRejected(rid, reason, status))

    def _get_values(self, content: bytes | bytearray | memoryview) -> None:
        try:
            names = decode_pairs(content)
        except ProtocolError as exc:
            raise ProtocolError(f"bad GET_VALUES: {exc}") from None
        limits = self.limits
        known = {
            b"FCGI_MAX_CONNS": str(limits.max_conns).encode(),
            b"FCGI_MAX_REQS": str(limits.max_reqs).encode(),
            b"FCGI_MPXS_CONNS": b"1" if limits.max_active_ids > 1 else b"0",
        }
        answer = [(name, known[name]) for name, _ in names if name in known]
        self._out.append(encode_record(GET_VALUES_RESULT, 0, encode_pairs(answer)))

    # -- output -----------------------------------------------------------

    def _live(self, request_id: int) -> _Request:
        req = self._requests.get(request_id)
        if req is None:
            raise LocalProtocolError(f"request id {request_id} is not active")
        return req

    def send_stdout(self, request_id: int, data: bytes) -> None:
        """Queue response bytes; an empty ``data`` is a no-op (end_request terminates)."""
        if request_id not in self._requests:
            raise LocalProtocolError(f"request id {request_id} is not active")
        if data:
            self._out += stream_buffers(STDOUT, request_id, data)

    def send_stderr(self, request_id: int, data: bytes) -> None:
        req = self._live(request_id)
        if data:
            req.stderr_used = True
            self._out += stream_buffers(STDERR, request_id, data)

    def end_request(
        self,
        request_id: int,
        app_status: int = 0,
        protocol_status: int = ProtocolStatus.REQUEST_COMPLETE,
    ) -> None:
        """Terminate the output streams, send END_REQUEST and retire the id."""
        # get and del: compiled, pop() with a default is a method call by name.
        requests = self._requests
        req = requests.get(request_id)
        if req is None:
            raise LocalProtocolError(f"request id {request_id} is not active")
        del requests[request_id]
        out = self._out
        if not (app_status or protocol_status or req.stderr_used):
            out.append(_complete_tail(request_id))
        else:
            out.append(pack_header(VERSION_1, STDOUT, request_id, 0, 0))
            if req.stderr_used:
                out.append(pack_header(VERSION_1, STDERR, request_id, 0, 0))
            out.append(encode_end_request(request_id, app_status, protocol_status))
        if not req.keep_conn:
            self.should_close = True
