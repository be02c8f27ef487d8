"""Property tests (hypothesis) for the record layer and the server connection."""

from __future__ import annotations

import itertools
import tracemalloc
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rawfcgi import split_records

from fcgi import events as ev
from fcgi import records as r
from fcgi.connection import Limits, ServerConnection
from fcgi.errors import ProtocolError
from fcgi.wsgi import InputStream

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Largest amount of input the connection may hold between feeds: one incomplete record.
MAX_BUFFERED = r.HEADER_LEN + r.MAX_CONTENT_LEN + 255

# Names and values with lengths on both sides of the 1-byte / 4-byte boundary.
short_bytes = st.binary(max_size=130)
pair_bytes = st.one_of(short_bytes, st.binary(min_size=120, max_size=400))
pairs_strategy = st.lists(st.tuples(pair_bytes, pair_bytes), max_size=12)


def parse_records(data: bytes) -> list[tuple[int, int, bytes]]:
    return [rec[:3] for rec in split_records(data)]


def reference_length(data: bytes) -> tuple[int, int]:
    """Spec section 3.4, written out independently: (length, bytes used)."""
    if data[0] >> 7 == 0:
        return data[0], 1
    return ((data[0] & 0x7F) << 24) + (data[1] << 16) + (data[2] << 8) + data[3], 4


# -- record layer round trips -----------------------------------------------------------


@SETTINGS
@given(pairs_strategy)
def test_pairs_round_trip(pairs: list[tuple[bytes, bytes]]) -> None:
    encoded = r.encode_pairs(pairs)
    assert r.decode_pairs(encoded) == pairs
    expected = {n.decode("latin-1"): v.decode("latin-1") for n, v in pairs}
    assert r.decode_params(encoded) == expected


@SETTINGS
@given(st.integers(min_value=0, max_value=0x7FFFFFFF))
def test_length_encoding_matches_the_spec_formula(length: int) -> None:
    encoded = r._encode_length(length)
    assert len(encoded) == (1 if length <= 127 else 4)
    assert reference_length(encoded) == (length, len(encoded))
    # The decoder reads the same length back (it reports it when the data is missing).
    block = encoded + b"\x00"
    if length == 0:
        assert r.decode_pairs(block) == [(b"", b"")]
    else:
        try:
            r.decode_pairs(block)
        except ProtocolError as exc:
            assert f"claims {length}+0 bytes" in str(exc)
        else:
            raise AssertionError("a pair longer than its block was accepted")


@SETTINGS
@given(
    st.sampled_from([r.STDIN, r.STDOUT, r.STDERR, r.DATA, r.PARAMS]),
    st.integers(min_value=1, max_value=0xFFFF),
    st.one_of(
        st.binary(max_size=300),
        st.integers(min_value=0, max_value=200_000).map(
            lambda size: bytes(i % 256 for i in range(size))
        ),
    ),
)
def test_stream_round_trip(rtype: int, rid: int, data: bytes) -> None:
    encoded = r.encode_stream(rtype, rid, data)
    assert len(encoded) % 8 == 0
    recs = parse_records(encoded)
    assert all(t == rtype and i == rid for t, i, _ in recs)
    assert all(0 < len(c) <= r.MAX_CONTENT_LEN for _, _, c in recs)
    assert b"".join(c for _, _, c in recs) == data
    if len(data) > r.MAX_CONTENT_LEN:
        assert len(recs) == -(-len(data) // r.MAX_ALIGNED_CONTENT_LEN)
    else:
        assert len(recs) == (1 if data else 0)


@SETTINGS
@given(st.integers(min_value=0, max_value=0xFFFF), st.binary(max_size=0xFFFF))
def test_record_round_trip(rid: int, content: bytes) -> None:
    encoded = r.encode_record(r.STDOUT, rid, content)
    assert len(encoded) % 8 == 0
    assert parse_records(encoded) == [(r.STDOUT, rid, content)]


@SETTINGS
@given(
    st.integers(min_value=1, max_value=0xFFFF),
    st.integers(min_value=0, max_value=0xFFFF),
    st.booleans(),
)
def test_begin_request_round_trip(rid: int, role: int, keep_conn: bool) -> None:
    ((rtype, got_rid, body),) = parse_records(r.encode_begin_request(rid, role, keep_conn))
    assert (rtype, got_rid) == (r.BEGIN_REQUEST, rid)
    assert r.BEGIN_REQUEST_BODY.unpack(body) == (role, int(keep_conn))


@SETTINGS
@given(
    st.integers(min_value=1, max_value=0xFFFF),
    st.integers(min_value=0, max_value=0xFFFFFFFF),
    st.integers(min_value=0, max_value=255),
)
def test_end_request_round_trip(rid: int, app_status: int, status: int) -> None:
    ((rtype, got_rid, body),) = parse_records(r.encode_end_request(rid, app_status, status))
    assert (rtype, got_rid) == (r.END_REQUEST, rid)
    assert r.END_REQUEST_BODY.unpack(body) == (app_status, status)


# -- valid sessions, split anywhere ---------------------------------------------------------


@dataclass
class Session:
    data: bytes
    requests: dict[int, tuple[int, dict[str, str], bytes, bytes]]  # rid -> role, params, in, data


def chunked(data: st.DataObject, payload: bytes) -> list[bytes]:
    """``payload`` as non-empty pieces of at most 65535 bytes, cut at drawn places."""
    if not payload:
        return []
    cuts = data.draw(
        st.lists(st.integers(min_value=1, max_value=max(1, len(payload) - 1)), max_size=4)
    )
    points = sorted({0, len(payload), *(c for c in cuts if c < len(payload))})
    pieces = [payload[a:b] for a, b in itertools.pairwise(points)]
    out = []
    for piece in pieces:
        out += [piece[i : i + r.MAX_CONTENT_LEN] for i in range(0, len(piece), r.MAX_CONTENT_LEN)]
    return out


def record(data: st.DataObject, rtype: int, rid: int, content: bytes = b"") -> bytes:
    """A record with drawn padding: receivers must accept any."""
    padding = data.draw(st.sampled_from([-len(content) & 7, 0, 1, 255]))
    return r.HEADER.pack(1, rtype, rid, len(content), padding) + content + b"\x55" * padding


def stream(data: st.DataObject, rtype: int, rid: int, payload: bytes) -> list[bytes]:
    return [record(data, rtype, rid, c) for c in chunked(data, payload)] + [
        record(data, rtype, rid)
    ]


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    data = draw(st.data())
    ids = draw(st.lists(st.integers(min_value=1, max_value=0xFFFF), max_size=4, unique=True))
    per_request: list[list[bytes]] = []
    requests = {}
    for rid in ids:
        role = draw(st.sampled_from(list(r.Role)))
        pairs = draw(pairs_strategy)
        stdin = draw(st.binary(max_size=200)) if role != r.Role.AUTHORIZER else b""
        fdata = draw(st.binary(max_size=200)) if role == r.Role.FILTER else b""
        recs = [record(data, r.BEGIN_REQUEST, rid, r.BEGIN_REQUEST_BODY.pack(role, 1))]
        recs += stream(data, r.PARAMS, rid, r.encode_pairs(pairs))
        if role != r.Role.AUTHORIZER:
            recs += stream(data, r.STDIN, rid, stdin)
        if role == r.Role.FILTER:
            recs += stream(data, r.DATA, rid, fdata)
        per_request.append(recs)
        params = {n.decode("latin-1"): v.decode("latin-1") for n, v in pairs}
        requests[rid] = (role, params, stdin, fdata)
    # Management records may come at any time.
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        names = draw(
            st.lists(
                st.sampled_from([b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS", b"X"])
            )
        )
        per_request.append(
            [record(data, r.GET_VALUES, 0, r.encode_pairs([(n, b"") for n in names]))]
        )
    if draw(st.booleans()):
        per_request.append([record(data, draw(st.integers(min_value=12, max_value=255)), 0)])
    # Interleave at record granularity, keeping each request's own order.
    order = [i for i, recs in enumerate(per_request) for _ in recs]
    order = draw(st.permutations(order))
    cursors = [0] * len(per_request)
    out = []
    for i in order:
        out.append(per_request[i][cursors[i]])
        cursors[i] += 1
    return Session(b"".join(out), requests)


def run(data: bytes, pieces: list[int]) -> tuple[list[ev.Event], bytes]:
    conn = ServerConnection(Limits(max_active_ids=8))
    events: list[ev.Event] = []
    prev = 0
    for cut in [*pieces, len(data)]:
        events += conn.feed(data[prev:cut])
        prev = cut
    conn.feed_eof()
    return events, conn.data_to_send()


def check_session_events(session: Session, events: list[ev.Event]) -> None:
    for rid, (role, params, stdin, fdata) in session.requests.items():
        mine = [e for e in events if e.request_id == rid]
        assert mine[0] == ev.BeginRequest(rid, role, True)
        assert mine[1] == ev.Params(rid, params)
        rest = mine[2:]
        if role == r.Role.AUTHORIZER:
            assert rest == []
            continue
        got_in = b"".join(e.data for e in rest if isinstance(e, ev.StdinData))
        assert got_in == stdin
        kinds = [type(e) for e in rest]
        assert kinds.count(ev.StdinEnd) == 1
        if role == r.Role.FILTER:
            got_data = b"".join(e.data for e in rest if isinstance(e, ev.DataChunk))
            assert got_data == fdata
            assert kinds[-1] is ev.DataEnd
            stdin_end = kinds.index(ev.StdinEnd)
            assert all(k is not ev.DataChunk for k in kinds[:stdin_end])
        else:
            assert kinds[-1] is ev.StdinEnd


@SETTINGS
@given(sessions(), st.data())
def test_any_split_yields_the_same_events(session: Session, data: st.DataObject) -> None:
    whole_events, whole_out = run(session.data, [])
    check_session_events(session, whole_events)
    n = len(session.data)
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=n), max_size=20)))
    assert run(session.data, cuts) == (whole_events, whole_out)


def run_owned(data: bytes, pieces: list[int]) -> tuple[list[ev.Event], bytes, int]:
    """As :func:`run`, through feed_owned; also counts the body events that came as views."""
    conn = ServerConnection(Limits(max_active_ids=8))
    events: list[ev.Event] = []
    views = 0
    prev = 0
    for cut in [*pieces, len(data)]:
        piece = data[prev:cut]
        got = conn.feed_owned(piece)
        for event in got:
            if isinstance(event, (ev.StdinData, ev.DataChunk)):
                chunk = event.data
                if type(chunk) is memoryview:
                    # A view of the very bytes fed, never of anything the
                    # driver could change, and never writable.
                    assert chunk.obj is piece and chunk.readonly
                    views += 1
                else:
                    assert type(chunk) is bytes
        events += got
        prev = cut
    conn.feed_eof()
    return events, conn.data_to_send(), views


def as_bytes(events: list[ev.Event]) -> list[ev.Event]:
    """The events with every body piece as bytes, to compare feed with feed_owned."""
    out: list[ev.Event] = []
    for event in events:
        if isinstance(event, ev.StdinData):
            event = ev.StdinData(event.request_id, bytes(event.data))
        elif isinstance(event, ev.DataChunk):
            event = ev.DataChunk(event.request_id, bytes(event.data))
        out.append(event)
    return out


@SETTINGS
@given(sessions(), st.data())
def test_feed_owned_yields_the_events_feed_does(session: Session, data: st.DataObject) -> None:
    """One set of rules: handing bytes over changes what body pieces are, not the events."""
    n = len(session.data)
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=n), max_size=20)))
    events, out = run(session.data, cuts)
    owned, owned_out, _ = run_owned(session.data, cuts)
    assert as_bytes(owned) == events
    assert owned_out == out


def test_feed_owned_passes_body_records_on_as_views() -> None:
    """Not vacuous: a body record whole in one piece is a view of it, not a copy."""
    body = bytes(range(256)) * 1172  # 300,032 bytes: five records (65,535 at most each)
    params = {b"CONTENT_LENGTH": str(len(body)).encode(), b"REQUEST_METHOD": b"POST"}
    head = r.encode_begin_request(1, r.Role.RESPONDER, True) + b"".join(
        r.stream_buffers(r.PARAMS, 1, r.encode_pairs(list(params.items())))
    )
    wire = head + r.encode_record(r.PARAMS, 1, b"") + b"".join(r.stream_buffers(r.STDIN, 1, body))
    wire += r.encode_record(r.STDIN, 1, b"")
    cut = len(wire) // 2  # one record is split across the two pieces: joined into bytes
    events, _, views = run_owned(wire, [len(head) + 8, cut])
    stdin = [e for e in events if isinstance(e, ev.StdinData)]
    assert b"".join(bytes(e.data) for e in stdin) == body
    assert views == len(stdin) - 1 >= 3


def test_feed_owned_copies_small_body_pieces() -> None:
    """A peer sending one-byte records gets no view per byte: small pieces are copied."""
    head = r.encode_begin_request(1, r.Role.RESPONDER, True)
    head += r.encode_record(r.PARAMS, 1, r.encode_pairs([(b"REQUEST_METHOD", b"POST")]))
    head += r.encode_record(r.PARAMS, 1, b"")
    wire = head + b"".join(r.encode_record(r.STDIN, 1, b"%c" % (i % 256)) for i in range(5000))
    events, _, views = run_owned(wire, [len(head)])
    stdin = [e for e in events if isinstance(e, ev.StdinData)]
    assert len(stdin) == 5000 and views == 0


def _sparse_read(i: int, read: int = 256 * 1024, body: int = 4096) -> bytes:
    """One read as a hostile peer shapes it: 4 KiB of body, the rest for an inactive id."""
    wire = r.encode_record(r.STDIN, 1, bytes([i % 256]) * body)
    while read - len(wire) >= 16:
        size = min(read - len(wire) - 8, r.MAX_ALIGNED_CONTENT_LEN) & ~7
        wire += r.encode_record(r.STDIN, 2, b"j" * size)  # id 2 is not active: ignored
    return wire


def test_feed_owned_keeps_no_read_alive_for_a_sliver_of_body() -> None:
    """Body views that are a small part of their read are copied: memory stays near the body.

    Without this a peer sending 4 KiB of body per 256 KiB read made every
    body byte hold 64 until the app's read() joined them (hostile review:
    an 8 MiB body held 520 MiB).
    """
    size = 2 << 20
    params = [(b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", str(size).encode())]
    conn = ServerConnection(Limits())
    conn.feed(
        r.encode_begin_request(1, r.Role.RESPONDER, True)
        + r.encode_record(r.PARAMS, 1, r.encode_pairs(params))
        + r.encode_record(r.PARAMS, 1, b"")
    )
    reads = iter(range(size // 4096))
    pending: list[bytes | memoryview] = []

    def fill() -> bytes | memoryview:
        while not pending:
            i = next(reads, None)
            if i is None:
                return b""
            got = conn.feed_owned(_sparse_read(i))
            pending.extend(e.data for e in got if isinstance(e, ev.StdinData))
            assert all(type(e.data) is bytes for e in got if isinstance(e, ev.StdinData))
        return pending.pop(0)

    tracemalloc.start()
    try:
        body = InputStream(fill, size).read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(body) == size
    assert peak < 4 * size, f"{peak / size:.1f}x the body held"


def test_feed_owned_copies_a_partial_record_that_is_a_sliver_of_its_read() -> None:
    """A record cut short at the end of a read does not keep the whole read alive."""
    params = [(b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", b"8192")]
    conn = ServerConnection(Limits())
    conn.feed(
        r.encode_begin_request(1, r.Role.RESPONDER, True)
        + r.encode_record(r.PARAMS, 1, r.encode_pairs(params))
        + r.encode_record(r.PARAMS, 1, b"")
    )
    record = r.encode_record(r.STDIN, 1, b"b" * 8192)
    junk = _sparse_read(0, read=200_000)[4104:]  # the inactive id's records only
    data = junk + record[:5000]
    conn.feed_owned(data)
    assert conn.buffered == 5000
    held = [p for p in conn._partial if type(p) is memoryview]
    assert all(2 * len(p) >= len(p.obj) for p in held)  # type: ignore[arg-type]
    events = conn.feed_owned(record[5000:])
    assert b"".join(bytes(e.data) for e in events if isinstance(e, ev.StdinData)) == b"b" * 8192


def test_feed_owned_takes_bytes_only() -> None:
    """Views of a buffer the caller reuses would change under the app: refused, in both builds."""
    conn = ServerConnection(Limits())
    with pytest.raises(TypeError):
        conn.feed_owned(bytearray(b"x" * 16))  # type: ignore[arg-type]


@settings(deadline=None, max_examples=20)
@given(sessions())
def test_byte_at_a_time_yields_the_same_events(session: Session) -> None:
    whole = run(session.data, [])
    assert run(session.data, list(range(1, len(session.data)))) == whole


# -- hostile input ----------------------------------------------------------------------------


def drive(conn: ServerConnection, events: list[ev.Event], end_some: bool) -> None:
    """Act like a driver: answer finished or rejected requests."""
    for e in events:
        if e.request_id not in conn.active_requests:
            continue
        done = isinstance(e, ev.StdinEnd | ev.DataEnd | ev.RequestRejected | ev.AbortRequest)
        if isinstance(e, ev.Params) and conn.role(e.request_id) == r.Role.AUTHORIZER:
            done = True
        if done or end_some:
            conn.send_stdout(e.request_id, b"Status: 200\r\n\r\n")
            conn.send_stderr(e.request_id, b"x")
            conn.end_request(e.request_id)


def assert_bounded(conn: ServerConnection, fed: int, limits: Limits) -> None:
    assert conn.buffered < MAX_BUFFERED
    assert len(conn.active_requests) <= limits.max_active_ids
    for req in conn._requests.values():
        assert sum(map(len, req.params)) <= limits.max_params_bytes


def feed_hostile(chunks: list[bytes], end_flags: list[bool], limits: Limits) -> None:
    conn = ServerConnection(limits)
    fed = 0
    try:
        for i, chunk in enumerate(chunks):
            events = conn.feed(chunk)
            fed += len(chunk)
            assert_bounded(conn, fed, limits)
            drive(conn, events, end_flags[i % len(end_flags)] if end_flags else False)
            out = conn.data_to_send()
            # Every reply answers something the peer sent, so output stays proportional.
            assert len(out) <= 64 * (fed + 1) + 100_000
        conn.feed_eof()
    except ProtocolError as exc:
        assert str(exc)


@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=20), st.lists(st.booleans(), max_size=4))
def test_random_bytes_only_raise_protocol_error(chunks: list[bytes], flags: list[bool]) -> None:
    feed_hostile(chunks, flags, Limits())


# Mostly what a web server sends, for ids 1-3; now and then anything at all.
_COMMON_RECORDS = [
    (r.BEGIN_REQUEST, 1),
    (r.BEGIN_REQUEST, 2),
    *[(r.PARAMS, 1)] * 4,
    *[(r.PARAMS, 2)] * 2,
    (r.PARAMS, 3),
    *[(r.STDIN, 1)] * 3,
    (r.STDIN, 2),
    *[(r.DATA, 1)] * 2,
    (r.ABORT_REQUEST, 2),
    (r.GET_VALUES, 0),
]


@st.composite
def plausible_records(draw: st.DrawFn) -> bytes:
    """Well-framed records with arbitrary types, ids and bodies: reaches past the header."""
    if draw(st.integers(min_value=0, max_value=9)) < 9:
        rtype, rid = draw(st.sampled_from(_COMMON_RECORDS))
    else:
        rtype = draw(st.integers(min_value=0, max_value=255))
        rid = draw(st.integers(min_value=0, max_value=3))
    if rtype == r.BEGIN_REQUEST and draw(st.integers(min_value=0, max_value=9)) < 9:
        role = draw(st.sampled_from([1, 1, 2, 3, 3, 7]))
        content = r.BEGIN_REQUEST_BODY.pack(role, draw(st.sampled_from([0, 1, 1, 255])))
    elif rtype in (r.PARAMS, r.STDIN, r.DATA) and draw(st.integers(0, 2)) == 0:
        content = b""  # a stream terminator
    elif rtype in (r.PARAMS, r.GET_VALUES) and draw(st.integers(0, 3)) > 0:
        content = r.encode_pairs(draw(st.lists(st.tuples(short_bytes, short_bytes), max_size=4)))
        if rtype == r.PARAMS and draw(st.booleans()):
            content = content[: draw(st.integers(0, len(content)))]
    else:
        content = draw(st.binary(max_size=40))
    padding = draw(st.integers(min_value=0, max_value=9))
    return r.HEADER.pack(1, rtype, rid, len(content), padding) + content + bytes(padding)


@SETTINGS
@given(
    st.lists(plausible_records(), max_size=30),
    st.data(),
    st.lists(st.booleans(), max_size=4),
    st.integers(min_value=1, max_value=3),
)
def test_plausible_records_only_raise_protocol_error(
    recs: list[bytes], data: st.DataObject, flags: list[bool], max_requests: int
) -> None:
    stream_bytes = b"".join(recs)
    if data.draw(st.booleans()):
        # Random corruption somewhere.
        pos = data.draw(st.integers(0, max(0, len(stream_bytes) - 1)))
        stream_bytes = stream_bytes[:pos] + data.draw(st.binary(max_size=4)) + stream_bytes[pos:]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream_bytes)), max_size=8)))
    chunks = [stream_bytes[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream_bytes)])]
    limits = Limits(max_active_ids=max_requests, max_params=3, max_params_bytes=64)
    feed_hostile(chunks, flags, limits)


@SETTINGS
@given(st.binary(min_size=8, max_size=8), st.integers(min_value=0, max_value=5))
def test_huge_claimed_lengths_do_not_allocate(header: bytes, extra_chunks: int) -> None:
    # A header claiming 65535+255 bytes, fed slowly: the buffer only holds what arrived.
    conn = ServerConnection()
    hdr = r.HEADER.pack(1, header[1], int.from_bytes(header[2:4]), 0xFFFF, 0xFF)
    try:
        conn.feed(hdr)
        for _ in range(extra_chunks):
            conn.feed(bytes(1000))
        assert conn.buffered == 8 + 1000 * extra_chunks
        conn.feed_eof()
    except ProtocolError:
        pass
