"""The sans-IO client, :mod:`fcgi.client_connection`, against the server side and a real server.

Most tests put a :class:`ClientConnection` and a :class:`ServerConnection` in
one process and carry the bytes between them by hand, cut anywhere: each side
is the other's peer, so a round trip checks both ends of every record. The
last test drives a real ``fcgi serve`` over a unix socket.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rawfcgi import connect, running_server
from test_client import Call

from fcgi import events as ev
from fcgi import records as r
from fcgi.client_connection import (
    ClientConnection,
    ClientEvent,
    EndRequest,
    GetValuesResult,
    RecordSplitter,
    StderrData,
    StdoutData,
    UnknownType,
)
from fcgi.connection import Limits, ServerConnection
from fcgi.errors import LocalProtocolError, ProtocolError

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150)
Params = dict[bytes, bytes]


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts``, each taken modulo ``len(data) + 1`` (repeats are ignored)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} - {0, len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def feed_in_pieces(client: ClientConnection, data: bytes, cuts: list[int]) -> list[ClientEvent]:
    events: list[ClientEvent] = []
    for piece in pieces(data, cuts):
        events += client.feed(piece)
    return events


#: Answers a request the server side saw (test_client's Call): (stdout, stderr, app status).
App = Callable[[Call], tuple[bytes, bytes, int]]


#: The event that completes a request's input, by role: then the app answers.
LAST_INPUT: dict[int, type[ev.Event]] = {
    r.Role.RESPONDER: ev.StdinEnd,
    r.Role.AUTHORIZER: ev.Params,
    r.Role.FILTER: ev.DataEnd,
}


class Backend:
    """A ServerConnection with an app behind it, fed by hand."""

    def __init__(self, app: App, limits: Limits | None = None, hold: bool = False) -> None:
        self.conn = ServerConnection(limits or Limits(max_active_ids=8))
        self.app = app
        self.seen: dict[int, Call] = {}
        self.answered: list[Call] = []
        #: With hold, requests whose input is complete wait here for answer().
        self.held: list[int] = []
        self.hold = hold

    def feed(self, data: bytes, cuts: list[int] | None = None) -> bytes:
        for piece in pieces(data, cuts or []):
            for event in self.conn.feed(piece):
                self._event(event)
        return self.conn.data_to_send()

    def _event(self, event: ev.Event) -> None:
        rid = event.request_id
        if isinstance(event, ev.BeginRequest):
            self.seen[rid] = Call(event.role, event.keep_conn)
        elif isinstance(event, ev.Params):
            self.seen[rid].params = event.params
        elif isinstance(event, ev.StdinData):
            self.seen[rid].stdin += event.data
        elif isinstance(event, ev.DataChunk):
            self.seen[rid].data += event.data
        elif not isinstance(event, ev.StdinEnd | ev.DataEnd | ev.RequestRefused):
            raise AssertionError(f"unexpected {event}")
        call = self.seen.get(rid)  # None for a refused id
        if call is not None and isinstance(event, LAST_INPUT[call.role]):
            if self.hold:
                self.held.append(rid)
            else:
                self._respond(rid)

    def _respond(self, rid: int) -> None:
        seen = self.seen.pop(rid)
        stdout, stderr, status = self.app(seen)
        self.conn.send_stdout(rid, stdout)
        self.conn.send_stderr(rid, stderr)
        self.conn.end_request(rid, status)
        self.answered.append(seen)

    def answer(self, rid: int) -> bytes:
        """Answer a held request; returns the bytes of the answer."""
        self.held.remove(rid)
        self._respond(rid)
        return self.conn.data_to_send()


@dataclass
class Answer:
    stdout: bytes = b""
    stderr: bytes = b""
    end: EndRequest | None = None


def answers(events: list[ClientEvent]) -> dict[int, Answer]:
    """The events of requests, put together per request id."""
    out: dict[int, Answer] = {}
    for event in events:
        if isinstance(event, StdoutData):
            out.setdefault(event.request_id, Answer()).stdout += event.data
        elif isinstance(event, StderrData):
            out.setdefault(event.request_id, Answer()).stderr += event.data
        elif isinstance(event, EndRequest):
            answer = out.setdefault(event.request_id, Answer())
            assert answer.end is None, "two END_REQUESTs"
            answer.end = event
        else:
            raise AssertionError(f"unexpected {event}")
    return out


def echo(seen: Call) -> tuple[bytes, bytes, int]:
    """stdout: a digest of what arrived; stderr: the role, as text."""
    digest = hashlib.sha256(seen.stdin + b"|" + seen.data).hexdigest()
    return f"Status: 200\r\n\r\n{digest}".encode(), f"role {seen.role}".encode(), 0


# -- round trips -----------------------------------------------------------------------------

names = st.binary(min_size=1, max_size=150).filter(lambda n: n != b"CONTENT_LENGTH")
params_strategy = st.dictionaries(names, st.binary(max_size=300), max_size=8)
#: Streams of a few bytes, or of up to about 200 KB (several records), built from a
#: repeated pattern: hypothesis alone rarely draws binaries that large.
streams = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.binary(min_size=1, max_size=17), st.integers(1, 12_000)).map(
        lambda t: t[0] * t[1]
    ),
)
cuts_strategy = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12)


@SETTINGS
@given(
    params=params_strategy,
    stdin=streams,
    data=streams,
    stdout=streams,
    stderr=streams,
    app_status=st.integers(min_value=0, max_value=0xFFFFFFFF),
    role=st.sampled_from([r.Role.RESPONDER, r.Role.AUTHORIZER, r.Role.FILTER]),
    keep_conn=st.booleans(),
    cuts_in=cuts_strategy,
    cuts_out=cuts_strategy,
)
def test_round_trip_with_the_server_connection_split_anywhere(
    params: Params,
    stdin: bytes,
    data: bytes,
    stdout: bytes,
    stderr: bytes,
    app_status: int,
    role: int,
    keep_conn: bool,
    cuts_in: list[int],
    cuts_out: list[int],
) -> None:
    backend = Backend(lambda seen: (stdout, stderr, app_status))
    client = ClientConnection()
    rid = client.send_request(params, stdin, role=role, keep_conn=keep_conn, data=data)
    assert rid == 1
    reply = backend.feed(client.data_to_send(), cuts_in)
    (seen,) = backend.answered
    assert (seen.role, seen.keep_conn) == (role, keep_conn)
    assert seen.params == {n.decode("latin-1"): v.decode("latin-1") for n, v in params.items()}
    assert seen.stdin == (b"" if role == r.Role.AUTHORIZER else stdin)
    assert seen.data == (data if role == r.Role.FILTER else b"")
    events = feed_in_pieces(client, reply, cuts_out)
    assert answers(events) == {
        rid: Answer(stdout, stderr, EndRequest(rid, app_status, r.ProtocolStatus.REQUEST_COMPLETE))
    }
    assert isinstance(events[-1], EndRequest)
    assert not client.active_requests and not client.mid_record


def test_every_single_cut_of_a_reply_gives_the_same_events() -> None:
    backend = Backend(echo)
    client = ClientConnection()
    client.send_request({b"A": b"1"}, b"body", keep_conn=True)
    reply = backend.feed(client.data_to_send())
    whole = ClientConnection()
    whole.send_request({}, keep_conn=True)
    expected = whole.feed(reply)
    assert [type(e) for e in expected] == [StdoutData, StderrData, EndRequest]
    for cut in range(len(reply) + 1):
        split = ClientConnection()
        split.send_request({}, keep_conn=True)
        assert split.feed(reply[:cut]) + split.feed(reply[cut:]) == expected, cut


def test_a_reply_fed_a_byte_at_a_time() -> None:
    backend = Backend(echo)
    client = ClientConnection()
    client.send_request({}, b"x" * 100)
    reply = backend.feed(client.data_to_send())
    events: list[ClientEvent] = []
    for i in range(len(reply)):
        events += client.feed(reply[i : i + 1])
    assert answers(events)[1].stdout.startswith(b"Status: 200")
    assert not client.mid_record


def test_padding_is_skipped_whatever_its_length_and_filler() -> None:
    client = ClientConnection()
    client.send_request({})
    odd = (
        r.HEADER.pack(1, r.STDOUT, 1, 3, 200)
        + b"abc"
        + b"\xaa" * 200
        + r.HEADER.pack(1, r.STDERR, 1, 0, 7)
        + b"\x55" * 7
        + r.HEADER.pack(1, r.END_REQUEST, 1, 8, 255)
        + r.END_REQUEST_BODY.pack(4, 0)
        + b"\xff" * 255
    )
    for cut in range(len(odd) + 1):
        again = ClientConnection()
        again.send_request({})
        assert again.feed(odd[:cut]) + again.feed(odd[cut:]) == [
            StdoutData(1, b"abc"),
            EndRequest(1, 4, 0),
        ]
    splitter = RecordSplitter()
    assert [rec.padding for rec in splitter.feed(odd)] == [200, 7, 255]


def send_held(count: int, max_requests: int) -> tuple[Backend, ClientConnection, list[ClientEvent]]:
    """``count`` kept requests to a backend that holds its answers, and the events of its reply."""
    backend = Backend(echo, Limits(max_active_ids=max_requests), hold=True)
    client = ClientConnection()
    for _ in range(count):
        client.send_request({}, keep_conn=True)
    return backend, client, client.feed(backend.feed(client.data_to_send()))


def test_multiplexed_requests_are_kept_apart() -> None:
    backend = Backend(echo, Limits(max_active_ids=4), hold=True)
    client = ClientConnection()
    ids = [client.begin_request(keep_conn=True) for _ in range(3)]
    assert ids == [1, 2, 3]
    for rid in ids:  # interleaved: every id's params, then every id's body
        client.send_params(rid, {b"ID": str(rid).encode()})
    for rid in ids:
        client.send_stdin(rid, f"body {rid}".encode())
    for rid in ids:
        client.end_stdin(rid)
    assert backend.feed(client.data_to_send()) == b""
    assert sorted(backend.held) == ids
    # Answered in reverse order, the replies interleaved on the way back.
    reply = b"".join(backend.answer(rid) for rid in reversed(ids))
    got = answers(client.feed(reply))
    for rid in ids:
        assert got[rid].stdout == echo(Call(1, True, stdin=f"body {rid}".encode()))[0]
        assert got[rid].end == EndRequest(rid, 0, 0)
    assert not client.active_requests


def test_the_lowest_free_id_is_reused_after_its_end_request() -> None:
    backend, client, _ = send_held(3, max_requests=4)
    client.feed(backend.answer(2))
    assert sorted(client.active_requests) == [1, 3]
    assert client.begin_request() == 2
    assert client.begin_request() == 4
    assert client.begin_request(request_id=0xFFFF) == 0xFFFF


def test_stderr_arrives_as_its_own_events() -> None:
    backend = Backend(lambda seen: (b"\r\nout", b"warning: one\n" * 10_000, 0))
    client = ClientConnection()
    client.send_request({})
    events = client.feed(backend.feed(client.data_to_send()))
    stderr = [e for e in events if isinstance(e, StderrData)]
    assert len(stderr) >= 2  # 130 KB: more than one record
    assert b"".join(e.data for e in stderr) == b"warning: one\n" * 10_000
    assert answers(events)[1].stdout == b"\r\nout"


# -- END_REQUEST statuses ----------------------------------------------------------------------


@pytest.mark.parametrize("app_status", [0, 1, 255, 0x7FFFFFFF, 0xFFFFFFFF])
def test_app_status_comes_through(app_status: int) -> None:
    backend = Backend(lambda seen: (b"\r\n", b"", app_status))
    client = ClientConnection()
    client.send_request({})
    events = client.feed(backend.feed(client.data_to_send()))
    assert events[-1] == EndRequest(1, app_status, r.ProtocolStatus.REQUEST_COMPLETE)


def test_unknown_role_is_refused_with_its_status() -> None:
    backend = Backend(echo, Limits(roles=(r.Role.RESPONDER,)))
    client = ClientConnection()
    client.send_request({}, b"in", role=r.Role.FILTER, data=b"file")
    events = client.feed(backend.feed(client.data_to_send()))
    assert events == [EndRequest(1, 0, r.ProtocolStatus.UNKNOWN_ROLE)]
    assert not client.active_requests


def test_a_second_id_without_multiplexing_is_cant_mpx_conn() -> None:
    backend, client, events = send_held(2, max_requests=1)
    assert events == [EndRequest(2, 0, r.ProtocolStatus.CANT_MPX_CONN)]
    assert list(client.active_requests) == [1]
    assert answers(client.feed(backend.answer(1)))[1].end == EndRequest(1, 0, 0)


def test_too_many_ids_is_overloaded() -> None:
    _, client, events = send_held(3, max_requests=2)
    assert events == [EndRequest(3, 0, r.ProtocolStatus.OVERLOADED)]
    assert sorted(client.active_requests) == [1, 2]


def test_abort_request_reaches_the_server_and_the_id_waits_for_its_end() -> None:
    client = ClientConnection()
    rid = client.begin_request(keep_conn=True)
    client.abort_request(rid)
    server = ServerConnection()
    events = server.feed(client.data_to_send())
    assert events == [ev.BeginRequest(rid, r.Role.RESPONDER, True), ev.AbortRequest(rid)]
    assert list(client.active_requests) == [rid]
    server.end_request(rid)
    assert client.feed(server.data_to_send()) == [EndRequest(rid, 0, 0)]


# -- management records ----------------------------------------------------------------------


def test_get_values_answers_the_names_the_server_knows() -> None:
    server = ServerConnection(Limits(max_active_ids=4, max_conns=8, max_reqs=32))
    client = ClientConnection()
    client.get_values(["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS", "NOT_A_NAME"])
    assert server.feed(client.data_to_send()) == []
    events = client.feed(server.data_to_send())
    assert events == [
        GetValuesResult({"FCGI_MAX_CONNS": "8", "FCGI_MAX_REQS": "32", "FCGI_MPXS_CONNS": "1"})
    ]


def test_get_values_between_requests_on_one_connection() -> None:
    backend = Backend(echo)
    client = ClientConnection()
    client.send_request({}, keep_conn=True)
    client.get_values(["FCGI_MPXS_CONNS"])
    events = client.feed(backend.feed(client.data_to_send()))
    # The server answers GET_VALUES as it reads it, before the app has answered.
    assert events[0] == GetValuesResult({"FCGI_MPXS_CONNS": "1"})
    assert answers(events[1:])[1].end == EndRequest(1, 0, 0)


def test_unknown_type_answers_a_get_values_the_application_does_not_know() -> None:
    client = ClientConnection()
    client.get_values(["FCGI_MAX_CONNS"])
    assert client.feed(r.encode_unknown_type(r.GET_VALUES)) == [UnknownType(r.GET_VALUES)]
    # That was the answer: a result after it was asked for by nobody.
    with pytest.raises(ProtocolError, match="without a GET_VALUES"):
        client.feed(r.encode_record(r.GET_VALUES_RESULT, 0, b""))


def test_events_are_frozen() -> None:
    event = EndRequest(1, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.app_status = 1  # type: ignore[misc]
    assert not hasattr(event, "__dict__")


# -- what the application must not send -----------------------------------------------------


def end_body(size: int) -> bytes:
    return r.HEADER.pack(1, r.END_REQUEST, 1, size, -size & 7) + bytes(size + (-size & 7))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "FastCGI version 72"),
        (r.HEADER.pack(2, r.STDOUT, 1, 0, 0), "FastCGI version 2"),
        (end_body(4), "END_REQUEST body of 4 bytes, expected 8"),
        (end_body(16), "END_REQUEST body of 16 bytes, expected 8"),
        (r.encode_record(r.STDOUT, 7, b"x"), "STDOUT record for request id 7, which is not"),
        (r.encode_end_request(2), "END_REQUEST record for request id 2, which is not active"),
        (r.encode_record(r.STDERR, 0, b"x"), "STDERR record with the null request id 0"),
        (r.encode_record(r.GET_VALUES_RESULT, 0, b""), "without a GET_VALUES asking for it"),
        (r.encode_record(r.GET_VALUES_RESULT, 1, b""), "GET_VALUES_RESULT record for request id 1"),
        (r.encode_record(r.UNKNOWN_TYPE, 0, b"\x01"), "UNKNOWN_TYPE body of 1 bytes"),
        (r.encode_record(r.PARAMS, 1, b""), "PARAMS records go to the application"),
        (r.encode_begin_request(3), "BEGIN_REQUEST records go to the application"),
        (r.encode_record(r.GET_VALUES, 0, b""), "GET_VALUES records go to the application"),
        (r.encode_record(0, 1, b""), "record type 0 is not a record an application sends"),
        (r.encode_record(12, 0, b""), "record type 12 is not a record an application sends"),
    ],
)
def test_malformed_input_is_a_protocol_error(data: bytes, message: str) -> None:
    client = ClientConnection()
    client.send_request({})
    with pytest.raises(ProtocolError, match=message):
        client.feed(data)


def test_records_after_the_end_request_are_for_an_inactive_id() -> None:
    client = ClientConnection()
    client.send_request({})
    assert client.feed(r.encode_end_request(1)) == [EndRequest(1, 0, 0)]
    with pytest.raises(ProtocolError, match="request id 1, which is not active"):
        client.feed(r.encode_record(r.STDOUT, 1, b"late"))


def test_a_bad_get_values_result_is_a_protocol_error() -> None:
    client = ClientConnection()
    client.get_values(["FCGI_MAX_CONNS"])
    with pytest.raises(ProtocolError, match="bad GET_VALUES_RESULT"):
        client.feed(r.encode_record(r.GET_VALUES_RESULT, 0, b"\x05\x01ab"))


def test_a_bad_version_is_refused_as_soon_as_its_header_is_in() -> None:
    client = ClientConnection()
    assert client.feed(b"HTTP/1.") == []
    with pytest.raises(ProtocolError, match="version 72"):
        client.feed(b"1")


def test_ignore_strays_reads_past_other_ids_and_unasked_results() -> None:
    client = ClientConnection(ignore_strays=True)
    client.send_request({})
    events = client.feed(
        r.encode_record(r.STDOUT, 7, b"not ours")
        + r.encode_record(r.GET_VALUES_RESULT, 0, b"")
        + r.encode_record(r.STDOUT, 1, b"mine")
        + r.encode_end_request(1, 5)
        + r.encode_record(r.STDOUT, 1, b"after the end")
    )
    assert events == [StdoutData(1, b"mine"), EndRequest(1, 5, 0)]
    with pytest.raises(ProtocolError, match="version"):
        client.feed(bytes(8))  # not FastCGI at all: still refused


def test_feed_eof_inside_a_record() -> None:
    client = ClientConnection()
    client.send_request({})
    client.feed(r.encode_record(r.STDOUT, 1, b"partial")[:-3])
    assert client.mid_record
    with pytest.raises(ProtocolError, match="inside a record"):
        client.feed_eof()


def test_feed_eof_between_records_leaves_the_request_unanswered() -> None:
    client = ClientConnection()
    client.send_request({})
    client.feed(r.encode_record(r.STDOUT, 1, b"x"))
    client.feed_eof()
    assert list(client.active_requests) == [1]


# -- what the client must not send -----------------------------------------------------------


def begun(role: int = r.Role.RESPONDER) -> ClientConnection:
    client = ClientConnection()
    client.begin_request(role)
    return client


def params_sent(role: int) -> ClientConnection:
    client = begun(role)
    client.send_params(1, {})
    return client


@pytest.mark.parametrize(
    ("misuse", "message"),
    [
        (lambda: begun().send_stdin(1, b"x"), "STDIN for request id 1, which is at AWAITING"),
        (lambda: begun().end_stdin(1), "the end of STDIN for request id 1"),
        (lambda: params_sent(r.Role.RESPONDER).send_params(1, {}), "PARAMS for request id 1"),
        (lambda: params_sent(r.Role.RESPONDER).send_data(1, b"x"), "DATA for request id 1"),
        (lambda: params_sent(r.Role.AUTHORIZER).send_stdin(1, b"x"), "at INPUT_SENT"),
        (lambda: params_sent(r.Role.AUTHORIZER).end_stdin(1), "at INPUT_SENT"),
        (lambda: ClientConnection().send_params(1, {}), "request id 1 is not active"),
        (lambda: ClientConnection().abort_request(4), "request id 4 is not active"),
        (lambda: begun().begin_request(request_id=1), "request id 1 is still active"),
        (lambda: ClientConnection().begin_request(request_id=0), "not in 1..65535"),
        (lambda: ClientConnection().begin_request(request_id=0x10000), "not in 1..65535"),
    ],
)
def test_misuse_is_a_local_protocol_error(misuse: Callable[[], object], message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        misuse()


def test_a_filter_sends_data_only_after_the_end_of_stdin() -> None:
    client = params_sent(r.Role.FILTER)
    client.send_stdin(1, b"in")
    with pytest.raises(LocalProtocolError, match="at STREAMING_STDIN"):
        client.send_data(1, b"x")
    client.end_stdin(1)
    client.send_data(1, b"file")
    client.end_data(1)
    with pytest.raises(LocalProtocolError, match="at INPUT_SENT"):
        client.end_data(1)


def test_every_id_in_use() -> None:
    client = ClientConnection()
    for rid in range(1, 0x10000):
        client.begin_request(request_id=rid, keep_conn=True)
    with pytest.raises(LocalProtocolError, match="every request id is in use"):
        client.begin_request()


# -- a real server -----------------------------------------------------------------------------


def until_end(sock_recv: Callable[[int], bytes], client: ClientConnection) -> list[ClientEvent]:
    """Read and feed until an END_REQUEST or a GET_VALUES_RESULT arrives."""
    events: list[ClientEvent] = []
    while not any(isinstance(e, EndRequest | GetValuesResult) for e in events):
        data = sock_recv(65536)
        assert data, f"connection closed; events so far: {events}"
        events += client.feed(data)
    return events


def test_drives_a_real_fcgi_serve_over_a_unix_socket() -> None:
    base = {
        b"REQUEST_METHOD": b"POST",
        b"SCRIPT_NAME": b"",
        b"SERVER_NAME": b"test",
        b"SERVER_PORT": b"80",
        b"SERVER_PROTOCOL": b"HTTP/1.1",
        b"QUERY_STRING": b"",
    }
    body = bytes(range(256)) * 1000
    with running_server("tests.server_apps:app") as server:
        assert server.address.startswith("unix:")
        with connect(server.address) as sock:
            client = ClientConnection()
            # A body of several records, on a kept connection.
            params = base | {b"PATH_INFO": b"/echo", b"CONTENT_LENGTH": str(len(body)).encode()}
            rid = client.send_request(params, body, keep_conn=True)
            sock.sendall(client.data_to_send())
            got = answers(until_end(sock.recv, client))[rid]
            digest = hashlib.sha256(body).hexdigest()
            assert got.stdout.endswith(f"\r\n\r\n{len(body)} {digest}".encode())
            assert got.end == EndRequest(rid, 0, r.ProtocolStatus.REQUEST_COMPLETE)
            # Management records on the same connection.
            client.get_values(["FCGI_MPXS_CONNS", "FCGI_MAX_REQS", "BOGUS"])
            sock.sendall(client.data_to_send())
            assert until_end(sock.recv, client) == [
                GetValuesResult({"FCGI_MPXS_CONNS": "0", "FCGI_MAX_REQS": "1"})
            ]
            # The app's wsgi.errors comes back as FCGI_STDERR.
            rid = client.send_request(base | {b"PATH_INFO": b"/stderr"}, keep_conn=True)
            sock.sendall(client.data_to_send())
            got = answers(until_end(sock.recv, client))[rid]
            assert got.stderr == b"a line for the error log\n"
            assert got.stdout.endswith(b"\r\n\r\nlogged")
            # A FILTER with its FCGI_DATA stream, the last request: the server
            # closes the connection after it, between records.
            params = base | {b"PATH_INFO": b"/filter", b"FCGI_DATA_LENGTH": b"5"}
            rid = client.send_request(params, b"in", role=r.Role.FILTER, data=b"hello")
            sock.sendall(client.data_to_send())
            got = answers(until_end(sock.recv, client))[rid]
            assert got.stdout.endswith(b"\r\n\r\nFILTER 2 HELLO")
            assert sock.recv(65536) == b""
            client.feed_eof()
            assert not client.active_requests
