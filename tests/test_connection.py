"""Tests for the sans-IO server connection state machine, :mod:`fcgi.connection`."""

from __future__ import annotations

import pytest
from rawfcgi import split_records

from fcgi import events as ev
from fcgi import records as r
from fcgi.connection import Limits, ServerConnection
from fcgi.errors import LocalProtocolError, ProtocolError

Rec = tuple[int, int, bytes]  # (type, request id, content)


def parse(data: bytes) -> list[Rec]:
    """Strictly parse what the connection sent: version 1, padded to 8, nothing left over."""
    return [rec[:3] for rec in split_records(data, aligned=True)]


def raw_record(
    rtype: int, rid: int, content: bytes = b"", padding: int = 0, version: int = 1
) -> bytes:
    """A record with exactly ``padding`` padding bytes (non-zero filler on purpose)."""
    return r.HEADER.pack(version, rtype, rid, len(content), padding) + content + b"\xaa" * padding


def begin(rid: int, role: int = r.Role.RESPONDER, keep_conn: bool = False) -> bytes:
    return r.encode_begin_request(rid, role, keep_conn)


def request_bytes(
    rid: int,
    params: dict[bytes, bytes] | None = None,
    stdin: bytes = b"",
    keep_conn: bool = False,
) -> bytes:
    if params is None:
        params = {b"REQUEST_METHOD": b"GET", b"SCRIPT_NAME": b"/x"}
    return (
        begin(rid, keep_conn=keep_conn)
        + r.encode_params(rid, params)
        + r.encode_stream(r.STDIN, rid, stdin)
        + r.encode_record(r.STDIN, rid)
    )


def end_body(app_status: int = 0, status: int = 0) -> bytes:
    return r.END_REQUEST_BODY.pack(app_status, status)


def respond(conn: ServerConnection, rid: int, body: bytes = b"ok") -> list[Rec]:
    conn.send_stdout(rid, b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body)
    conn.end_request(rid)
    return parse(conn.data_to_send())


def assert_serves_good_request(conn: ServerConnection, rid: int = 1) -> None:
    """The connection takes a complete, well-formed request and answers it."""
    events = conn.feed(request_bytes(rid, stdin=b"body", keep_conn=True))
    assert events == [
        ev.BeginRequest(rid, r.Role.RESPONDER, True),
        ev.Params(rid, {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/x"}),
        ev.StdinData(rid, b"body"),
        ev.StdinEnd(rid),
    ]
    recs = respond(conn, rid)
    assert recs[-1] == (r.END_REQUEST, rid, end_body())
    assert recs[-2] == (r.STDOUT, rid, b"")
    assert rid not in conn.active_requests
    assert not conn.should_close


# -- Appendix B flows ---------------------------------------------------------------


def test_appendix_b_simple_request() -> None:
    conn = ServerConnection()
    data = (
        begin(1)
        + r.encode_params(1, {b"SERVER_PORT": b"80", b"SERVER_ADDR": b"199.170.183.42"})
        + r.encode_record(r.STDIN, 1)
    )
    events = conn.feed(data)
    assert events == [
        ev.BeginRequest(1, r.Role.RESPONDER, False),
        ev.Params(1, {"SERVER_PORT": "80", "SERVER_ADDR": "199.170.183.42"}),
        ev.StdinEnd(1),
    ]
    assert conn.data_to_send() == b""
    conn.send_stdout(1, b"Content-type: text/html\r\n\r\n<html>\n...")
    conn.end_request(1)
    assert parse(conn.data_to_send()) == [
        (r.STDOUT, 1, b"Content-type: text/html\r\n\r\n<html>\n..."),
        (r.STDOUT, 1, b""),
        (r.END_REQUEST, 1, end_body(0, r.ProtocolStatus.REQUEST_COMPLETE)),
    ]
    assert conn.should_close
    assert conn.data_to_send() == b""


def test_appendix_b_params_split_mid_pair_and_stdin_data() -> None:
    conn = ServerConnection()
    pairs = r.encode_pairs(
        [(b"SERVER_PORT", b"80"), (b"SERVER_ADDR", b"199.170.183.42"), (b"CONTENT_LENGTH", b"23")]
    )
    cut1 = 5  # inside the first name
    cut2 = len(r.encode_pairs([(b"SERVER_PORT", b"80")])) + 1  # between the two lengths
    data = (
        begin(1)
        + r.encode_record(r.PARAMS, 1, pairs[:cut1])
        + r.encode_record(r.PARAMS, 1, pairs[cut1:cut2])
        + r.encode_record(r.PARAMS, 1, pairs[cut2:])
        + r.encode_record(r.PARAMS, 1)
        + r.encode_record(r.STDIN, 1, b"quantity=100&item=3047936")
        + r.encode_record(r.STDIN, 1)
    )
    # The spec's example declares CONTENT_LENGTH 23 and then sends 25 bytes.
    # A body longer than it says is a protocol violation: the app gets the 23
    # bytes it was promised and the request's input ends there.
    events = conn.feed(data)
    assert events[:3] == [
        ev.BeginRequest(1, r.Role.RESPONDER, False),
        ev.Params(
            1, {"SERVER_PORT": "80", "SERVER_ADDR": "199.170.183.42", "CONTENT_LENGTH": "23"}
        ),
        ev.StdinData(1, b"quantity=100&item=30479"),
    ]
    assert len(events) == 4
    assert isinstance(events[3], ev.RequestRejected) and events[3].http_status == 400
    # With the length it declares, the same records arrive whole.
    conn = ServerConnection()
    honest = data.replace(b"CONTENT_LENGTH23", b"CONTENT_LENGTH25")
    assert conn.feed(honest)[2:] == [
        ev.StdinData(1, b"quantity=100&item=3047936"),
        ev.StdinEnd(1),
    ]


def test_appendix_b_stdout_and_stderr_interleaved() -> None:
    conn = ServerConnection()
    conn.feed(request_bytes(1))
    conn.send_stdout(1, b"Content-type: text/html\r\n\r\n<html>\n")
    conn.send_stderr(1, b"config error: missing SI_UID\n")
    conn.send_stdout(1, b"<head> ... ")
    conn.end_request(1, 938)
    assert parse(conn.data_to_send()) == [
        (r.STDOUT, 1, b"Content-type: text/html\r\n\r\n<html>\n"),
        (r.STDERR, 1, b"config error: missing SI_UID\n"),
        (r.STDOUT, 1, b"<head> ... "),
        (r.STDOUT, 1, b""),
        (r.STDERR, 1, b""),
        (r.END_REQUEST, 1, end_body(938, 0)),
    ]


def test_appendix_b_two_multiplexed_requests_out_of_order() -> None:
    conn = ServerConnection(Limits(max_active_ids=2))
    events = conn.feed(
        begin(1, keep_conn=True)
        + r.encode_params(1, {b"SERVER_PORT": b"80"})
        + begin(2, keep_conn=False)
        + r.encode_record(r.PARAMS, 2, r.encode_pairs([(b"SERVER_PORT", b"80")]))
        + r.encode_record(r.STDIN, 1)
        + r.encode_record(r.PARAMS, 2)
        + r.encode_record(r.STDIN, 2)
    )
    assert events == [
        ev.BeginRequest(1, r.Role.RESPONDER, True),
        ev.Params(1, {"SERVER_PORT": "80"}),
        ev.BeginRequest(2, r.Role.RESPONDER, False),
        ev.StdinEnd(1),
        ev.Params(2, {"SERVER_PORT": "80"}),
        ev.StdinEnd(2),
    ]
    assert set(conn.active_requests) == {1, 2}
    assert conn.keep_conn(1) and not conn.keep_conn(2)
    conn.send_stdout(1, b"Content-type: text/html\r\n\r\n")
    conn.send_stdout(2, b"Content-type: text/html\r\n\r\n<html>\n<head> ... ")
    conn.end_request(2)
    conn.send_stdout(1, b"<html>\n")
    conn.end_request(1)
    assert parse(conn.data_to_send()) == [
        (r.STDOUT, 1, b"Content-type: text/html\r\n\r\n"),
        (r.STDOUT, 2, b"Content-type: text/html\r\n\r\n<html>\n<head> ... "),
        (r.STDOUT, 2, b""),
        (r.END_REQUEST, 2, end_body()),
        (r.STDOUT, 1, b"<html>\n"),
        (r.STDOUT, 1, b""),
        (r.END_REQUEST, 1, end_body()),
    ]
    # Request 2 had no KEEP_CONN: once it is answered the application closes.
    assert conn.should_close
    assert not conn.active_requests


def test_ids_are_reusable_after_end_request() -> None:
    conn = ServerConnection()
    for _ in range(3):
        assert_serves_good_request(conn, 1)


def test_serial_requests_on_one_connection_with_different_ids() -> None:
    conn = ServerConnection()
    for rid in (1, 2, 300, 65535):
        assert_serves_good_request(conn, rid)


# -- input framing -------------------------------------------------------------------


@pytest.mark.parametrize("padding", [0, 1, 3, 7, 8, 100, 255])
def test_any_padding_is_accepted_on_input(padding: int) -> None:
    conn = ServerConnection()
    data = (
        raw_record(r.BEGIN_REQUEST, 1, r.BEGIN_REQUEST_BODY.pack(1, 0), padding)
        + raw_record(r.PARAMS, 1, r.encode_pairs({b"A": b"b"}), padding)
        + raw_record(r.PARAMS, 1, b"", padding)
        + raw_record(r.STDIN, 1, b"xyz", padding)
        + raw_record(r.STDIN, 1, b"", padding)
    )
    assert conn.feed(data) == [
        ev.BeginRequest(1, 1, False),
        ev.Params(1, {"A": "b"}),
        ev.StdinData(1, b"xyz"),
        ev.StdinEnd(1),
    ]


def test_byte_at_a_time_input() -> None:
    conn = ServerConnection()
    data = request_bytes(1, stdin=b"hello", keep_conn=True)
    events: list[ev.Event] = []
    for i in range(len(data)):
        events += conn.feed(data[i : i + 1])
    assert events == [
        ev.BeginRequest(1, 1, True),
        ev.Params(1, {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/x"}),
        ev.StdinData(1, b"hello"),
        ev.StdinEnd(1),
    ]
    conn.feed_eof()
    assert conn.closed_by_peer


def test_feed_accepts_bytearray_and_empty() -> None:
    conn = ServerConnection()
    assert conn.feed(b"") == []
    assert conn.feed(bytearray(begin(1))) == [ev.BeginRequest(1, 1, False)]


def test_large_stdin_record_and_huge_feed() -> None:
    conn = ServerConnection()
    body = bytes(range(256)) * 1024  # 256 KiB, several records
    events = conn.feed(request_bytes(1, stdin=body))
    chunks = [e.data for e in events if isinstance(e, ev.StdinData)]
    assert len(chunks) >= 4
    assert all(len(c) <= r.MAX_CONTENT_LEN for c in chunks)
    assert b"".join(chunks) == body
    assert isinstance(events[-1], ev.StdinEnd)


@pytest.mark.parametrize("read_size", [7, 5000, 65536, 70000])
def test_views_of_a_reused_read_buffer_are_never_kept(read_size: int) -> None:
    # The sync worker feeds views of one buffer it overwrites on every read;
    # records split across reads must come out intact all the same.
    body = bytes(range(256)) * 1024
    stream = request_bytes(1, stdin=body)
    conn = ServerConnection()
    buffer = bytearray(read_size)
    view = memoryview(buffer)
    events: list[ev.Event] = []
    for start in range(0, len(stream), read_size):
        piece = stream[start : start + read_size]
        view[: len(piece)] = piece
        events += conn.feed(view[: len(piece)])
        buffer[:] = b"\xee" * read_size  # the next read scribbles over it
    assert conn.buffered == 0
    chunks = [e.data for e in events if isinstance(e, ev.StdinData)]
    assert all(type(c) is bytes for c in chunks)
    assert b"".join(chunks) == body
    assert isinstance(events[-1], ev.StdinEnd)


def test_empty_stdin_records_after_stdin_end_are_ignored() -> None:
    conn = ServerConnection()
    conn.feed(request_bytes(1, keep_conn=True))
    assert conn.feed(r.encode_record(r.STDIN, 1)) == []


# -- management records ----------------------------------------------------------------


def get_values(conn: ServerConnection, names: list[bytes]) -> list[tuple[bytes, bytes]]:
    assert (
        conn.feed(r.encode_record(r.GET_VALUES, 0, r.encode_pairs([(n, b"") for n in names]))) == []
    )
    ((rtype, rid, content),) = parse(conn.data_to_send())
    assert (rtype, rid) == (r.GET_VALUES_RESULT, 0)
    return r.decode_pairs(content)


def test_get_values_answers_only_known_names() -> None:
    conn = ServerConnection(Limits(max_active_ids=1, max_conns=10, max_reqs=50))
    assert get_values(
        conn, [b"FCGI_MAX_CONNS", b"FCGI_BOGUS", b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS", b""]
    ) == [(b"FCGI_MAX_CONNS", b"10"), (b"FCGI_MAX_REQS", b"50"), (b"FCGI_MPXS_CONNS", b"0")]


def test_get_values_unknown_names_only_gives_empty_result() -> None:
    assert get_values(ServerConnection(), [b"NOPE", b"fcgi_max_conns"]) == []


def test_get_values_empty_query() -> None:
    assert get_values(ServerConnection(), []) == []


@pytest.mark.parametrize(("max_requests", "mpxs"), [(1, b"0"), (2, b"1"), (100, b"1")])
def test_get_values_mpxs_conns_matches_limits(max_requests: int, mpxs: bytes) -> None:
    conn = ServerConnection(Limits(max_active_ids=max_requests))
    assert get_values(conn, [b"FCGI_MPXS_CONNS"]) == [(b"FCGI_MPXS_CONNS", mpxs)]


def test_get_values_mpxs_conns_is_truthful() -> None:
    # What GET_VALUES says must match what the connection does with a second id.
    for max_requests in (1, 2):
        conn = ServerConnection(Limits(max_active_ids=max_requests))
        mpxs = dict(get_values(conn, [b"FCGI_MPXS_CONNS"]))[b"FCGI_MPXS_CONNS"]
        events = conn.feed(begin(1, keep_conn=True) + begin(2, keep_conn=True))
        multiplexed = isinstance(events[1], ev.BeginRequest)
        assert multiplexed == (mpxs == b"1")


def test_get_values_in_the_middle_of_a_request() -> None:
    conn = ServerConnection()
    query = r.encode_record(r.GET_VALUES, 0, r.encode_pairs({b"FCGI_MAX_REQS": b""}))
    first = begin(1) + r.encode_record(r.PARAMS, 1, r.encode_pairs({b"A": b"1"}))
    rest = r.encode_record(r.PARAMS, 1) + r.encode_record(r.STDIN, 1)
    # The management record arrives between two records, while the last one is half received.
    events = conn.feed(first + query + rest[:3])
    assert parse(conn.data_to_send()) == [
        (r.GET_VALUES_RESULT, 0, r.encode_pairs({b"FCGI_MAX_REQS": b"1"}))
    ]
    events += conn.feed(rest[3:])
    assert [type(e) for e in events] == [ev.BeginRequest, ev.Params, ev.StdinEnd]


def test_malformed_get_values_is_a_protocol_error() -> None:
    conn = ServerConnection()
    with pytest.raises(ProtocolError, match="bad GET_VALUES"):
        conn.feed(r.encode_record(r.GET_VALUES, 0, b"\x05\x00ab"))


@pytest.mark.parametrize("rtype", [0, 12, 100, 255])
def test_unknown_management_type_gets_unknown_type(rtype: int) -> None:
    conn = ServerConnection()
    assert conn.feed(r.encode_record(rtype, 0, b"whatever")) == []
    assert parse(conn.data_to_send()) == [(r.UNKNOWN_TYPE, 0, bytes([rtype]) + bytes(7))]
    assert_serves_good_request(conn)


# -- roles -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [0, 4, 0xFFFF])
def test_unknown_role_gets_unknown_role_and_connection_stays_usable(role: int) -> None:
    conn = ServerConnection()
    events = conn.feed(begin(1, role=role, keep_conn=True))
    assert events == [ev.RequestRefused(1, r.ProtocolStatus.UNKNOWN_ROLE, role)]
    assert parse(conn.data_to_send()) == [
        (r.END_REQUEST, 1, end_body(0, r.ProtocolStatus.UNKNOWN_ROLE))
    ]
    assert not conn.active_requests
    assert not conn.should_close
    # The rest of the refused request is ignored: the id is not active.
    assert conn.feed(r.encode_params(1, {b"A": b"1"}) + r.encode_record(r.STDIN, 1)) == []
    assert_serves_good_request(conn)


def test_unknown_role_without_keep_conn_closes() -> None:
    conn = ServerConnection()
    conn.feed(begin(1, role=9, keep_conn=False))
    assert parse(conn.data_to_send()) == [
        (r.END_REQUEST, 1, end_body(0, r.ProtocolStatus.UNKNOWN_ROLE))
    ]
    assert conn.should_close


def test_roles_can_be_restricted_by_limits() -> None:
    conn = ServerConnection(Limits(roles=(r.Role.RESPONDER,)))
    events = conn.feed(begin(1, role=r.Role.FILTER, keep_conn=True))
    assert events == [ev.RequestRefused(1, r.ProtocolStatus.UNKNOWN_ROLE, r.Role.FILTER)]
    assert_serves_good_request(conn)


def test_authorizer_needs_no_stdin() -> None:
    conn = ServerConnection()
    events = conn.feed(
        begin(1, role=r.Role.AUTHORIZER, keep_conn=True)
        + r.encode_params(1, {b"REMOTE_USER": b"bob"})
    )
    assert events == [
        ev.BeginRequest(1, r.Role.AUTHORIZER, True),
        ev.Params(1, {"REMOTE_USER": "bob"}),
    ]
    assert conn.role(1) == r.Role.AUTHORIZER
    conn.send_stdout(1, b"Status: 200\r\nVariable-USER_ID: 42\r\n\r\n")
    conn.end_request(1)
    recs = parse(conn.data_to_send())
    assert recs[0] == (r.STDOUT, 1, b"Status: 200\r\nVariable-USER_ID: 42\r\n\r\n")
    assert recs[-1] == (r.END_REQUEST, 1, end_body())
    assert_serves_good_request(conn, 2)


def test_authorizer_tolerates_an_stdin_stream() -> None:
    conn = ServerConnection()
    events = conn.feed(
        begin(1, role=r.Role.AUTHORIZER)
        + r.encode_params(1, {})
        + r.encode_record(r.STDIN, 1, b"ignored")
        + r.encode_record(r.STDIN, 1)
    )
    assert events == [ev.BeginRequest(1, r.Role.AUTHORIZER, False), ev.Params(1, {})]


def test_filter_flow() -> None:
    conn = ServerConnection()
    events = conn.feed(
        begin(1, role=r.Role.FILTER, keep_conn=True)
        + r.encode_params(1, {b"FCGI_DATA_LAST_MOD": b"1700000000", b"FCGI_DATA_LENGTH": b"11"})
        + r.encode_record(r.STDIN, 1, b"in")
        + r.encode_record(r.STDIN, 1)
        + r.encode_record(r.DATA, 1, b"hello ")
        + r.encode_record(r.DATA, 1, b"world")
        + r.encode_record(r.DATA, 1)
    )
    assert events == [
        ev.BeginRequest(1, r.Role.FILTER, True),
        ev.Params(1, {"FCGI_DATA_LAST_MOD": "1700000000", "FCGI_DATA_LENGTH": "11"}),
        ev.StdinData(1, b"in"),
        ev.StdinEnd(1),
        ev.DataChunk(1, b"hello "),
        ev.DataChunk(1, b"world"),
        ev.DataEnd(1),
    ]
    recs = respond(conn, 1, b"HELLO WORLD")
    assert recs[-1] == (r.END_REQUEST, 1, end_body())
    assert_serves_good_request(conn, 2)


def test_filter_data_before_stdin_end_is_rejected() -> None:
    conn = ServerConnection()
    events = conn.feed(
        begin(1, role=r.Role.FILTER, keep_conn=True)
        + r.encode_params(1, {})
        + r.encode_record(r.DATA, 1, b"too early")
    )
    assert isinstance(events[-1], ev.RequestRejected)
    assert "before the end of STDIN" in events[-1].reason


def test_data_for_a_responder_is_rejected() -> None:
    conn = ServerConnection()
    events = conn.feed(request_bytes(1, keep_conn=True) + r.encode_record(r.DATA, 1, b"x"))
    assert events[-1] == ev.RequestRejected(
        1, "DATA record for a request that is not a FILTER", 400
    )
    conn.end_request(1)
    conn.data_to_send()
    assert_serves_good_request(conn, 1)


# -- multiplexing limits ----------------------------------------------------------------


def test_second_id_gets_cant_mpx_conn_without_multiplexing() -> None:
    conn = ServerConnection(Limits(max_active_ids=1))
    events = conn.feed(request_bytes(1, keep_conn=True) + request_bytes(2, stdin=b"x"))
    assert events[-1] == ev.RequestRefused(2, r.ProtocolStatus.CANT_MPX_CONN, r.Role.RESPONDER)
    assert [type(e) for e in events] == [
        ev.BeginRequest,
        ev.Params,
        ev.StdinEnd,
        ev.RequestRefused,
    ]
    assert parse(conn.data_to_send()) == [
        (r.END_REQUEST, 2, end_body(0, r.ProtocolStatus.CANT_MPX_CONN))
    ]
    assert set(conn.active_requests) == {1}
    # The refusal of a side request does not close the connection under request 1.
    assert not conn.should_close
    recs = respond(conn, 1)
    assert recs[-1] == (r.END_REQUEST, 1, end_body())
    assert_serves_good_request(conn, 2)


def test_too_many_concurrent_ids_get_overloaded() -> None:
    conn = ServerConnection(Limits(max_active_ids=2))
    events = conn.feed(
        begin(1, keep_conn=True) + begin(2, keep_conn=True) + begin(3, keep_conn=True)
    )
    assert events == [
        ev.BeginRequest(1, 1, True),
        ev.BeginRequest(2, 1, True),
        ev.RequestRefused(3, r.ProtocolStatus.OVERLOADED, r.Role.RESPONDER),
    ]
    assert parse(conn.data_to_send()) == [
        (r.END_REQUEST, 3, end_body(0, r.ProtocolStatus.OVERLOADED))
    ]
    # Input for the refused id is ignored; the two active ones still work.
    assert conn.feed(r.encode_params(3, {b"A": b"1"})) == []
    for rid in (1, 2):
        conn.feed(r.encode_params(rid, {}) + r.encode_record(r.STDIN, rid))
        conn.end_request(rid)
    conn.data_to_send()
    # A freed slot can be used again.
    assert conn.feed(begin(3, keep_conn=True)) == [ev.BeginRequest(3, 1, True)]


# -- abort, inactive ids, keep-conn ---------------------------------------------------------


def test_abort_request_event() -> None:
    conn = ServerConnection()
    events = conn.feed(
        begin(1, keep_conn=True)
        + r.encode_params(1, {})
        + r.encode_record(r.STDIN, 1, b"part")
        + r.encode_record(r.ABORT_REQUEST, 1)
    )
    assert events[-1] == ev.AbortRequest(1)
    assert 1 in conn.active_requests  # only our END_REQUEST retires it
    conn.end_request(1)
    assert parse(conn.data_to_send()) == [
        (r.STDOUT, 1, b""),
        (r.END_REQUEST, 1, end_body(0, r.ProtocolStatus.REQUEST_COMPLETE)),
    ]
    assert_serves_good_request(conn, 1)


def test_abort_for_inactive_id_is_ignored() -> None:
    conn = ServerConnection()
    assert conn.feed(r.encode_record(r.ABORT_REQUEST, 5)) == []
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    "rtype",
    [r.ABORT_REQUEST, r.END_REQUEST, r.PARAMS, r.STDIN, r.STDOUT, r.STDERR, r.DATA],
)
def test_records_for_inactive_ids_are_ignored(rtype: int) -> None:
    conn = ServerConnection()
    assert conn.feed(r.encode_record(rtype, 7, b"stray content")) == []
    assert conn.feed(r.encode_record(rtype, 7)) == []
    assert conn.data_to_send() == b""
    assert_serves_good_request(conn, 7)


def test_records_for_an_id_after_its_end_request_are_ignored() -> None:
    conn = ServerConnection()
    conn.feed(request_bytes(1, keep_conn=True))
    respond(conn, 1)
    assert (
        conn.feed(r.encode_record(r.STDIN, 1, b"late") + r.encode_record(r.ABORT_REQUEST, 1)) == []
    )
    assert conn.data_to_send() == b""


def test_keep_conn_unset_means_should_close_after_end_request() -> None:
    conn = ServerConnection()
    conn.feed(request_bytes(1, keep_conn=False))
    assert not conn.should_close
    conn.send_stdout(1, b"x")
    assert not conn.should_close
    conn.end_request(1)
    assert conn.should_close


def test_keep_conn_set_keeps_connection() -> None:
    conn = ServerConnection()
    conn.feed(request_bytes(1, keep_conn=True))
    assert conn.keep_conn(1)
    conn.end_request(1)
    assert not conn.should_close


# -- output ----------------------------------------------------------------------------


def test_large_stdout_is_split() -> None:
    conn = ServerConnection()
    conn.feed(request_bytes(1))
    body = bytes(i % 253 for i in range(300_000))
    conn.send_stdout(1, body)
    conn.send_stderr(1, body[:70_000])
    conn.end_request(1)
    recs = parse(conn.data_to_send())
    out = [c for t, _, c in recs if t == r.STDOUT]
    err = [c for t, _, c in recs if t == r.STDERR]
    assert b"".join(out) == body and out[-1] == b"" and len(out) >= 6
    assert b"".join(err) == body[:70_000] and err[-1] == b"" and len(err) >= 3
    assert all(len(c) <= r.MAX_CONTENT_LEN for _, _, c in recs)


def test_empty_sends_are_no_ops_and_no_stderr_terminator_without_stderr() -> None:
    conn = ServerConnection()
    conn.feed(request_bytes(1))
    conn.send_stdout(1, b"")
    conn.send_stderr(1, b"")
    conn.end_request(1, 3)
    assert parse(conn.data_to_send()) == [(r.STDOUT, 1, b""), (r.END_REQUEST, 1, end_body(3))]


def test_local_misuse_raises_local_protocol_error() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.send_stdout(1, b"x")
    with pytest.raises(LocalProtocolError):
        conn.send_stderr(1, b"x")
    with pytest.raises(LocalProtocolError):
        conn.end_request(1)
    conn.feed(request_bytes(1))
    conn.end_request(1)
    with pytest.raises(LocalProtocolError):
        conn.end_request(1)


def test_response_may_start_before_stdin_ends() -> None:
    conn = ServerConnection()
    conn.feed(begin(1) + r.encode_params(1, {}) + r.encode_record(r.STDIN, 1, b"a"))
    conn.send_stdout(1, b"early")
    assert parse(conn.data_to_send()) == [(r.STDOUT, 1, b"early")]


# -- malformed input: typed errors, then the next good request is served -----------------


def test_wrong_version_is_a_protocol_error() -> None:
    conn = ServerConnection()
    with pytest.raises(ProtocolError, match="unsupported FastCGI version 2"):
        conn.feed(raw_record(r.BEGIN_REQUEST, 1, r.BEGIN_REQUEST_BODY.pack(1, 0), version=2))
    assert_serves_good_request(ServerConnection())


def test_wrong_version_detected_from_the_header_alone() -> None:
    conn = ServerConnection()
    header = r.HEADER.pack(0, r.STDIN, 1, 1000, 0)
    with pytest.raises(ProtocolError, match="version 0"):
        conn.feed(header)


def test_wrong_version_after_good_records() -> None:
    conn = ServerConnection()
    conn.feed(request_bytes(1, keep_conn=True))
    respond(conn, 1)
    with pytest.raises(ProtocolError, match="version"):
        conn.feed(b"\x07" + request_bytes(2)[1:])


@pytest.mark.parametrize("cut", [1, 7, 8, 9, 15])
def test_truncated_record_then_eof_is_a_protocol_error(cut: int) -> None:
    conn = ServerConnection()
    data = begin(1) + r.encode_record(r.PARAMS, 1, b"\x01\x01ab")
    events = conn.feed(data[: len(begin(1)) + cut])
    assert events == [ev.BeginRequest(1, 1, False)]
    with pytest.raises(ProtocolError, match="connection closed inside a record"):
        conn.feed_eof()
    assert_serves_good_request(ServerConnection())


def test_truncated_padding_then_eof_is_a_protocol_error() -> None:
    conn = ServerConnection()
    assert conn.feed(raw_record(r.STDIN, 9, b"abc", padding=5)[:-1]) == []
    with pytest.raises(ProtocolError, match="inside a record"):
        conn.feed_eof()


def test_clean_eof_between_records() -> None:
    conn = ServerConnection()
    conn.feed(request_bytes(1))
    conn.feed_eof()
    assert conn.closed_by_peer


def test_begin_request_for_an_active_id_is_a_protocol_error() -> None:
    conn = ServerConnection(Limits(max_active_ids=4))
    conn.feed(begin(1, keep_conn=True))
    with pytest.raises(
        ProtocolError, match="BEGIN_REQUEST for request id 1, which is still active"
    ):
        conn.feed(begin(1, keep_conn=True))
    assert_serves_good_request(ServerConnection())


def test_begin_request_with_null_id_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="null request id"):
        ServerConnection().feed(begin(0))


@pytest.mark.parametrize("rtype", [r.PARAMS, r.STDIN, r.DATA, r.ABORT_REQUEST])
def test_application_record_with_null_id_is_a_protocol_error(rtype: int) -> None:
    with pytest.raises(ProtocolError, match="null request id 0"):
        ServerConnection().feed(r.encode_record(rtype, 0, b"x"))


@pytest.mark.parametrize(
    "rtype", [r.END_REQUEST, r.STDOUT, r.STDERR, r.GET_VALUES_RESULT, r.UNKNOWN_TYPE]
)
def test_outgoing_record_types_from_the_peer_are_protocol_errors(rtype: int) -> None:
    conn = ServerConnection()
    conn.feed(begin(1))
    rid = 0 if rtype in (r.GET_VALUES_RESULT, r.UNKNOWN_TYPE) else 1
    with pytest.raises(ProtocolError, match="go to the web server"):
        conn.feed(r.encode_record(rtype, rid, bytes(8)))


def test_records_for_unknown_ids_are_ignored_between_good_records() -> None:
    conn = ServerConnection()
    data = request_bytes(1, stdin=b"abc", keep_conn=True)
    noise = (
        r.encode_record(r.STDIN, 2, b"not yours")
        + r.encode_record(r.PARAMS, 3, b"\x05\x05x")
        + r.encode_record(r.DATA, 4, b"d")
    )
    cut = len(begin(1))
    events = conn.feed(data[:cut] + noise + data[cut:])
    assert [type(e) for e in events] == [ev.BeginRequest, ev.Params, ev.StdinData, ev.StdinEnd]
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("length", [0, 1, 7, 9, 16])
def test_bad_begin_body_length_is_a_protocol_error(length: int) -> None:
    conn = ServerConnection()
    with pytest.raises(ProtocolError, match=f"BEGIN_REQUEST body of {length} bytes"):
        # A RESPONDER role, then zeros: right start, wrong size.
        conn.feed(r.encode_record(r.BEGIN_REQUEST, 1, (b"\x00\x01" + bytes(14))[:length]))
    assert_serves_good_request(ServerConnection())


def rejected_then_recovers(conn: ServerConnection, events: list[ev.Event], rid: int) -> str:
    """Check the last event rejects ``rid``; end it; check the connection serves again."""
    rejected = events[-1]
    assert isinstance(rejected, ev.RequestRejected)
    assert rejected.request_id == rid
    assert rid in conn.active_requests
    # Anything else for the rejected id is dropped.
    assert (
        conn.feed(
            r.encode_params(rid, {b"A": b"1"})
            + r.encode_record(r.STDIN, rid, b"more")
            + r.encode_record(r.STDIN, rid)
            + r.encode_record(r.DATA, rid, b"d")
        )
        == []
    )
    conn.send_stdout(rid, b"Status: 400 Bad Request\r\n\r\n")
    conn.end_request(rid)
    recs = parse(conn.data_to_send())
    assert recs[-1] == (r.END_REQUEST, rid, end_body())
    assert not conn.should_close
    assert_serves_good_request(conn, rid)
    return rejected.reason


def test_params_overrunning_their_record_is_rejected() -> None:
    conn = ServerConnection()
    # The pair claims a 10-byte value but the stream ends after 3 bytes of it.
    events = conn.feed(
        begin(1, keep_conn=True)
        + r.encode_record(r.PARAMS, 1, b"\x04\x0aNAMEabc")
        + r.encode_record(r.PARAMS, 1)
    )
    assert events[0] == ev.BeginRequest(1, 1, True)
    reason = rejected_then_recovers(conn, events, 1)
    assert "malformed PARAMS" in reason and "claims 4+10" in reason
    assert events[-1] == ev.RequestRejected(1, reason, 400)


def test_params_with_truncated_length_is_rejected() -> None:
    conn = ServerConnection()
    events = conn.feed(
        begin(1, keep_conn=True)
        + r.encode_record(r.PARAMS, 1, b"\x01\x80\x00")
        + r.encode_record(r.PARAMS, 1)
    )
    assert "4-byte value length" in rejected_then_recovers(conn, events, 1)


def test_too_many_params_is_rejected() -> None:
    conn = ServerConnection(Limits(max_params=10))
    params = {f"P{i}".encode(): b"v" for i in range(11)}
    events = conn.feed(begin(1, keep_conn=True) + r.encode_params(1, params))
    assert events[-1] == ev.RequestRejected(1, "more than 10 PARAMS", 431)
    rejected_then_recovers(conn, events, 1)


def test_params_at_the_limit_are_accepted() -> None:
    conn = ServerConnection(Limits(max_params=10, max_params_bytes=1000))
    params = {f"P{i}".encode(): b"v" for i in range(10)}
    events = conn.feed(begin(1) + r.encode_params(1, params))
    assert events[-1] == ev.Params(1, {k.decode(): v.decode() for k, v in params.items()})


def test_too_many_params_bytes_is_rejected_without_buffering_more() -> None:
    conn = ServerConnection(Limits(max_params_bytes=1000))
    events = conn.feed(begin(1, keep_conn=True))
    for _ in range(3):
        events += conn.feed(r.encode_record(r.PARAMS, 1, r.encode_pairs({b"X": b"y" * 400})))
    assert events[-1] == ev.RequestRejected(1, "PARAMS larger than 1000 bytes", 431)
    # Further PARAMS for the rejected request are dropped, not buffered.
    for _ in range(10):
        assert conn.feed(r.encode_record(r.PARAMS, 1, bytes(60000))) == []
    rejected_then_recovers(conn, events, 1)


def test_default_limits_refuse_oversized_params() -> None:
    limits = Limits()
    conn = ServerConnection()
    big = {b"BIG": b"x" * (limits.max_params_bytes + 1)}
    events = conn.feed(begin(1, keep_conn=True) + r.encode_params(1, big))
    assert isinstance(events[-1], ev.RequestRejected)
    assert events[-1].http_status == 431


def test_stdin_before_params_end_is_rejected() -> None:
    conn = ServerConnection()
    events = conn.feed(
        begin(1, keep_conn=True)
        + r.encode_record(r.PARAMS, 1, r.encode_pairs({b"A": b"1"}))
        + r.encode_record(r.STDIN, 1, b"early")
    )
    assert events[-1] == ev.RequestRejected(1, "STDIN arrived before the PARAMS stream ended", 400)
    rejected_then_recovers(conn, events, 1)


def test_stdin_after_stdin_end_is_rejected() -> None:
    conn = ServerConnection()
    events = conn.feed(request_bytes(1, keep_conn=True) + r.encode_record(r.STDIN, 1, b"late"))
    assert events[-1] == ev.RequestRejected(
        1, "STDIN record after the end of the STDIN stream", 400
    )
    rejected_then_recovers(conn, events, 1)


def test_params_after_params_end_is_rejected() -> None:
    conn = ServerConnection()
    events = conn.feed(
        begin(1, keep_conn=True) + r.encode_params(1, {}) + r.encode_params(1, {b"B": b"2"})
    )
    assert events[-1] == ev.RequestRejected(
        1, "PARAMS record after the end of the PARAMS stream", 400
    )
    rejected_then_recovers(conn, events, 1)


def test_abort_of_a_rejected_request_still_reported() -> None:
    conn = ServerConnection()
    events = conn.feed(
        begin(1, keep_conn=True)
        + r.encode_record(r.STDIN, 1, b"early")
        + r.encode_record(r.ABORT_REQUEST, 1)
    )
    assert [type(e) for e in events] == [ev.BeginRequest, ev.RequestRejected, ev.AbortRequest]


def test_rejection_of_one_multiplexed_request_leaves_the_other_alone() -> None:
    conn = ServerConnection(Limits(max_active_ids=2))
    events = conn.feed(
        begin(1, keep_conn=True)
        + begin(2, keep_conn=True)
        + r.encode_record(r.STDIN, 2, b"early")
        + r.encode_params(1, {b"A": b"1"})
        + r.encode_record(r.STDIN, 1, b"ok")
        + r.encode_record(r.STDIN, 1)
    )
    assert events == [
        ev.BeginRequest(1, 1, True),
        ev.BeginRequest(2, 1, True),
        ev.RequestRejected(2, "STDIN arrived before the PARAMS stream ended", 400),
        ev.Params(1, {"A": "1"}),
        ev.StdinData(1, b"ok"),
        ev.StdinEnd(1),
    ]


def test_protocol_error_message_is_useful_for_random_garbage() -> None:
    conn = ServerConnection()
    with pytest.raises(ProtocolError) as info:
        conn.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert "version" in str(info.value)
    assert_serves_good_request(ServerConnection())
