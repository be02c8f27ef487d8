"""Tests for the sans-IO uwsgi connection, :mod:`fcgi.uwsgi`.

Requests are laid out as nginx 1.22 sends them through ``include uwsgi_params;
uwsgi_pass``: :data:`NGINX_GET` is a request captured from it byte for byte,
and :func:`nginx_vars` rebuilds that layout for other requests.
"""

from __future__ import annotations

import http.client
import io
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcgi import events as ev
from fcgi.connection import Limits
from fcgi.errors import LocalProtocolError, ProtocolError
from fcgi.records import ProtocolStatus, Role
from fcgi.scgi import OneRequestConnection
from fcgi.uwsgi import UwsgiConnection, http_head
from fcgi.wsgi import ErrorStream, InputStream, build_environ, error_response, respond

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

Pairs = list[tuple[bytes, bytes]]

#: ``curl 'http://127.0.0.1:18500/u/caf%C3%A9/x?a=1&b=%20' -H 'X-Foo: bar'``
#: as nginx 1.22.1 passed it on (stock /etc/nginx/uwsgi_params, no server_name).
NGINX_GET = (
    b"\x00\x8b\x01\x00"
    b"\x0c\x00QUERY_STRING\t\x00a=1&b=%20"
    b"\x0e\x00REQUEST_METHOD\x03\x00GET"
    b"\x0c\x00CONTENT_TYPE\x00\x00"
    b"\x0e\x00CONTENT_LENGTH\x00\x00"
    b"\x0b\x00REQUEST_URI\x18\x00/u/caf%C3%A9/x?a=1&b=%20"
    b"\t\x00PATH_INFO\n\x00/u/caf\xc3\xa9/x"
    b"\r\x00DOCUMENT_ROOT\x15\x00/usr/share/nginx/html"
    b"\x0f\x00SERVER_PROTOCOL\x08\x00HTTP/1.1"
    b"\x0e\x00REQUEST_SCHEME\x04\x00http"
    b"\x0b\x00REMOTE_ADDR\t\x00127.0.0.1"
    b"\x0b\x00REMOTE_PORT\x05\x0045240"
    b"\x0b\x00SERVER_PORT\x05\x0018500"
    b"\x0b\x00SERVER_NAME\x00\x00"
    b"\t\x00HTTP_HOST\t\x00127.0.0.1"
    b"\x0f\x00HTTP_USER_AGENT\x0b\x00curl/7.88.1"
    b"\x0b\x00HTTP_ACCEPT\x03\x00*/*"
    b"\n\x00HTTP_X_FOO\x03\x00bar"
)


@dataclass
class Client:
    """Who sent a request, and to which site, as nginx writes it into the params."""

    server_name: bytes = b"example.org"
    server_port: bytes = b"80"
    host: bytes = b"example.org"
    remote_port: bytes = b"45240"
    #: Request headers beyond curl's own, as HTTP_* pairs.
    headers: Pairs = field(default_factory=list)

    def tail(self) -> Pairs:
        """What uwsgi_params and scgi_params both end with, then the request headers.

        ``HTTPS`` (``if_not_empty``) is left out, as nginx does over plain HTTP.
        """
        return [
            (b"SERVER_PROTOCOL", b"HTTP/1.1"),
            (b"REQUEST_SCHEME", b"http"),
            (b"REMOTE_ADDR", b"127.0.0.1"),
            (b"REMOTE_PORT", self.remote_port),
            (b"SERVER_PORT", self.server_port),
            (b"SERVER_NAME", self.server_name),
            (b"HTTP_HOST", self.host),
            (b"HTTP_USER_AGENT", b"curl/7.88.1"),
            (b"HTTP_ACCEPT", b"*/*"),
            *self.headers,
        ]


def form_headers(length: bytes) -> Pairs:
    """nginx 1.22 passes Content-Type and Content-Length on as HTTP_* headers too."""
    return [(b"HTTP_CONTENT_TYPE", FORM), (b"HTTP_CONTENT_LENGTH", length)]


FORM = b"application/x-www-form-urlencoded"


#: The client and site of the captured requests (nginx had no server_name).
CAPTURE_CLIENT = Client(b"", b"18500", b"127.0.0.1", b"45240", [(b"HTTP_X_FOO", b"bar")])


def nginx_vars(
    method: bytes = b"GET",
    uri: bytes = b"/",
    path: bytes = b"/",
    content_type: bytes = b"",
    content_length: bytes = b"",
    client: Client | None = None,
) -> Pairs:
    """The vars nginx sends with the stock uwsgi_params: its lines in order, then headers."""
    head = [
        (b"QUERY_STRING", uri.partition(b"?")[2]),
        (b"REQUEST_METHOD", method),
        (b"CONTENT_TYPE", content_type),
        (b"CONTENT_LENGTH", content_length),
        (b"REQUEST_URI", uri),
        (b"PATH_INFO", path),
        (b"DOCUMENT_ROOT", b"/usr/share/nginx/html"),
    ]
    return head + (client or Client()).tail()


def encode_vars(pairs: Pairs) -> bytes:
    """A vars block, written from the uwsgi documentation: u16-LE lengths."""
    return b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in pairs)


def uwsgi_request(pairs: Pairs, body: bytes = b"", modifier1: int = 0, modifier2: int = 0) -> bytes:
    block = encode_vars(pairs)
    return struct.pack("<BHB", modifier1, len(block), modifier2) + block + body


def post(body: bytes = b"hello=world") -> bytes:
    length = b"%d" % len(body)
    client = Client(headers=form_headers(length))
    return uwsgi_request(nginx_vars(b"POST", b"/u/post", b"/u/post", FORM, length, client), body)


def feed_in_pieces(conn: OneRequestConnection, data: bytes, cuts: list[int]) -> list[ev.Event]:
    """Feed ``data`` cut at ``cuts`` (any order, repeats allowed)."""
    events: list[ev.Event] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        if cut > start:
            # A bytearray view, as a driver's reused read buffer would be.
            events += conn.feed(memoryview(bytearray(data[start:cut])))
            start = cut
    return events


def events_or_none(
    conn: OneRequestConnection, data: bytes, cuts: list[int]
) -> list[ev.Event] | None:
    """Feed ``data`` in pieces, then its end; None if the connection found a protocol error.

    ProtocolError is the one exception that input, however hostile, may cause.
    """
    try:
        events = feed_in_pieces(conn, data, [cut for cut in cuts if cut <= len(data)])
        conn.feed_eof()
    except ProtocolError:
        return None
    return events


def merged(events: list[ev.Event]) -> list[ev.Event]:
    """Events with consecutive body chunks joined: how a request splits is not its content."""
    out: list[ev.Event] = []
    for event in events:
        if isinstance(event, ev.StdinData) and out and isinstance(out[-1], ev.StdinData):
            out[-1] = ev.StdinData(event.request_id, out[-1].data + event.data)
        else:
            out.append(event)
    return out


def params_of(events: list[ev.Event]) -> dict[str, str]:
    [params] = [e for e in events if isinstance(e, ev.Params)]
    return params.params


def parse_http(data: bytes) -> http.client.HTTPResponse:
    """Read an answer the way an HTTP client library does (status line, headers, body)."""

    class _Socket:
        def makefile(self, mode: str) -> io.BytesIO:
            return io.BytesIO(data)

    response = http.client.HTTPResponse(_Socket())  # type: ignore[arg-type]
    response.begin()
    return response


def answer(conn: OneRequestConnection, *pieces: bytes) -> bytes:
    """Write ``pieces`` as the response, end it; return what goes to the web server."""
    for piece in pieces:
        conn.send_stdout(1, piece)
    conn.end_request(1)
    return conn.data_to_send()


def started() -> UwsgiConnection:
    conn = UwsgiConnection()
    conn.feed(uwsgi_request(nginx_vars()))
    return conn


# -- requests --------------------------------------------------------------------


def test_the_layout_helper_matches_what_nginx_sent() -> None:
    uri, path = b"/u/caf%C3%A9/x?a=1&b=%20", b"/u/caf\xc3\xa9/x"
    assert uwsgi_request(nginx_vars(uri=uri, path=path, client=CAPTURE_CLIENT)) == NGINX_GET


def test_get_as_nginx_sends_it() -> None:
    conn = UwsgiConnection()
    events = conn.feed(NGINX_GET)
    assert events[0] == ev.BeginRequest(1, Role.RESPONDER, False)
    assert events[2:] == [ev.StdinEnd(1)]
    params = params_of(events)
    assert params["REQUEST_METHOD"] == "GET"
    assert params["QUERY_STRING"] == "a=1&b=%20"
    assert params["CONTENT_LENGTH"] == ""  # nginx's $content_length on a GET
    assert params["HTTP_X_FOO"] == "bar"
    assert list(conn.active_requests) == [1]
    assert conn.keep_conn(1) is False
    assert conn.role(1) == Role.RESPONDER
    assert not conn.mid_record and conn.buffered == 0
    assert not conn.should_close
    conn.feed_eof()  # the whole request came: a close now is the client going away
    assert conn.closed_by_peer


def test_non_ascii_path_bytes_arrive_as_latin1_native_strings() -> None:
    params = params_of(UwsgiConnection().feed(NGINX_GET))
    # PEP 3333: each byte one code point; the app recovers UTF-8 by re-encoding.
    assert params["PATH_INFO"] == "/u/caf\xc3\xa9/x"
    assert params["PATH_INFO"].encode("latin-1").decode("utf-8") == "/u/café/x"
    assert params["REQUEST_URI"] == "/u/caf%C3%A9/x?a=1&b=%20"


def test_post_with_body() -> None:
    conn = UwsgiConnection()
    events = conn.feed(post())
    assert events[2:] == [ev.StdinData(1, b"hello=world"), ev.StdinEnd(1)]
    assert params_of(events)["CONTENT_LENGTH"] == "11"


def test_body_arriving_later_is_passed_on_as_it_comes() -> None:
    conn = UwsgiConnection()
    data = post(b"x" * 100)
    events = conn.feed(data[:-60])
    assert events[-1] == ev.StdinData(1, b"x" * 40)
    assert conn.mid_record  # a body under way: reads are timed
    assert conn.feed(data[-60:]) == [ev.StdinData(1, b"x" * 60), ev.StdinEnd(1)]
    assert not conn.mid_record


def test_a_64k_vars_block_is_read_whole() -> None:
    pairs = nginx_vars(client=Client(headers=[(b"HTTP_COOKIE", b"")]))
    room = 0xFFFF - len(encode_vars(pairs))
    pairs[-1] = (b"HTTP_COOKIE", b"c" * room)
    data = uwsgi_request(pairs)
    assert data[1:3] == b"\xff\xff"  # datasize at its u16 maximum
    events = UwsgiConnection().feed(data)
    assert len(params_of(events)["HTTP_COOKIE"]) == room
    assert events[-1] == ev.StdinEnd(1)


def test_modifier2_is_not_checked() -> None:
    """nginx sends whatever uwsgi_modifier2 says."""
    events = UwsgiConnection().feed(uwsgi_request(nginx_vars(), modifier2=9))
    assert events[-1] == ev.StdinEnd(1)


def test_a_name_sent_twice_keeps_its_last_value() -> None:
    pairs = [(b"CONTENT_LENGTH", b"9"), (b"X", b"1"), (b"CONTENT_LENGTH", b"2")]
    events = UwsgiConnection().feed(uwsgi_request(pairs, b"ab"))
    # The body is framed by the value the app sees.
    assert events[2:] == [ev.StdinData(1, b"ab"), ev.StdinEnd(1)]
    assert params_of(events)["CONTENT_LENGTH"] == "2"


def test_one_byte_at_a_time() -> None:
    data = post(b"0123456789")
    conn = UwsgiConnection()
    events = feed_in_pieces(conn, data, list(range(len(data))))
    assert merged(events) == merged(UwsgiConnection().feed(data))


@SETTINGS
@given(st.data())
def test_any_split_gives_the_same_events(data: st.DataObject) -> None:
    request = data.draw(st.sampled_from([NGINX_GET, post(), post(bytes(range(256)) * 3)]))
    cuts = data.draw(st.lists(st.integers(0, len(request)), max_size=12))
    conn = UwsgiConnection()
    events = feed_in_pieces(conn, request, cuts)
    assert merged(events) == merged(UwsgiConnection().feed(request))
    assert all(e.data for e in events if isinstance(e, ev.StdinData))


# -- broken input ----------------------------------------------------------------


@pytest.mark.parametrize("size", range(1, len(post(b"0123456789"))))
def test_a_connection_closed_mid_request_is_a_protocol_error(size: int) -> None:
    conn = UwsgiConnection()
    conn.feed(post(b"0123456789")[:size])
    assert conn.mid_record
    with pytest.raises(ProtocolError, match="connection closed"):
        conn.feed_eof()


def test_a_connection_closed_before_any_byte_is_no_error() -> None:
    conn = UwsgiConnection()
    conn.feed_eof()
    assert conn.closed_by_peer and not conn.active_requests


def test_bytes_after_the_request_break_the_protocol() -> None:
    conn = UwsgiConnection()
    with pytest.raises(ProtocolError, match="after the end"):
        conn.feed(post(b"abc") + b"GET / HTTP/1.1\r\n")
    conn = UwsgiConnection()
    conn.feed(NGINX_GET)
    with pytest.raises(ProtocolError, match="after the end"):
        conn.feed(b"\x00")


@pytest.mark.parametrize(
    ("first", "hint"),
    [(1, "FastCGI"), (ord("G"), "HTTP"), (ord("3"), "SCGI"), (5, "")],
)
def test_other_packet_types_are_refused_at_once(first: int, hint: str) -> None:
    with pytest.raises(ProtocolError, match=f"modifier1 {first}.*{hint}"):
        UwsgiConnection().feed(bytes([first]))


@pytest.mark.parametrize(
    "block",
    [
        b"\x01",  # a key length cut in half
        b"\x05\x00abc",  # a key running past the block
        b"\x01\x00a",  # no value length
        b"\x01\x00a\x01",  # half a value length
        b"\x01\x00a\x09\x00short",  # a value running past the block
        encode_vars([(b"A", b"1")]) + b"\x00",  # a good pair, then a stray byte
    ],
)
def test_a_malformed_vars_block_is_a_protocol_error(block: bytes) -> None:
    data = struct.pack("<BHB", 0, len(block), 0) + block
    with pytest.raises(ProtocolError, match="vars block"):
        UwsgiConnection().feed(data)


@SETTINGS
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_random_bytes_raise_nothing_but_protocol_error(blob: bytes, cuts: list[int]) -> None:
    for data in (blob, b"\x00" + blob):  # also past the modifier1 check
        events_or_none(UwsgiConnection(), data, cuts)


@SETTINGS
@given(st.data())
def test_corrupted_requests_raise_nothing_but_protocol_error(data: st.DataObject) -> None:
    request = bytearray(data.draw(st.sampled_from([NGINX_GET, post()])))
    for _ in range(data.draw(st.integers(1, 4))):
        request[data.draw(st.integers(0, len(request) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(request)))
    conn = UwsgiConnection(Limits(max_params=12, max_params_bytes=400, max_body_size=50))
    events = events_or_none(conn, bytes(request[:cut]), [])
    assert events is None or all(e.request_id == 1 for e in events)


# -- limits ----------------------------------------------------------------------


def test_a_vars_block_over_max_params_bytes_is_refused_from_its_header() -> None:
    conn = UwsgiConnection(Limits(max_params_bytes=100))
    data = post()
    assert conn.feed(data[:2]) == []
    events = conn.feed(data[2:4])  # the header alone says how large the block is
    assert events[0] == ev.BeginRequest(1, Role.RESPONDER, False)
    assert isinstance(events[1], ev.RequestRejected) and events[1].http_status == 431
    assert "max_params_bytes" in events[1].reason
    # The rest of the request is read and dropped; the driver answers.
    assert conn.feed(data[4:]) == []
    assert not conn.mid_record
    conn.feed_eof()  # dropping input is no error either
    conn.send_stdout(1, error_response(431))
    conn.end_request(1, 1)
    assert conn.should_close
    assert parse_http(conn.data_to_send()).status == 431


def test_more_vars_than_max_params_is_a_431() -> None:
    conn = UwsgiConnection(Limits(max_params=10))
    events = conn.feed(NGINX_GET)
    assert [type(e) for e in events] == [ev.BeginRequest, ev.RequestRejected]
    assert events[1].http_status == 431  # type: ignore[attr-defined]


def test_a_body_over_max_body_size_is_refused_before_the_app_runs() -> None:
    conn = UwsgiConnection(Limits(max_body_size=10))
    events = conn.feed(post(b"x" * 11))
    assert [type(e) for e in events] == [ev.BeginRequest, ev.RequestRejected]
    assert events[1].http_status == 413  # type: ignore[attr-defined]
    assert UwsgiConnection(Limits(max_body_size=11)).feed(post(b"x" * 11))[-1] == ev.StdinEnd(1)
    assert UwsgiConnection(Limits(max_body_size=0)).feed(post(b"x" * 11))[-1] == ev.StdinEnd(1)


@pytest.mark.parametrize("length", [b"-1", b"1x", b" 5", b"\xb2", b"\xd9\xa1", b"9" * 5000])
def test_an_unusable_content_length_rejects_the_request(length: bytes) -> None:
    events = UwsgiConnection().feed(uwsgi_request([(b"CONTENT_LENGTH", length)]))
    assert isinstance(events[-1], ev.RequestRejected)
    assert events[-1].http_status == (413 if length.isdigit() else 400)


# -- the answer ------------------------------------------------------------------


def test_the_cgi_status_becomes_the_status_line() -> None:
    conn = started()
    out = answer(conn, b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nhello")
    assert out == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello"
    assert conn.should_close and not conn.active_requests


@pytest.mark.parametrize(
    ("head", "status_line"),
    [
        (b"Status: 404 Not Found\r\nX-A: 1\r\n\r\n", b"HTTP/1.1 404 Not Found"),
        (b"Status: 404\r\nX-A: 1\r\n\r\n", b"HTTP/1.1 404 Not Found"),
        (b"Status: 599\r\nX-A: 1\r\n\r\n", b"HTTP/1.1 599"),
        (b"X-A: 1\r\n\r\n", b"HTTP/1.1 200 OK"),
        (b"Location: /there\r\n\r\n", b"HTTP/1.1 302 Found"),
        (b"X-A: 1\r\nstatus:  201   Made \r\n\r\n", b"HTTP/1.1 201 Made"),
        (b"Status: 204 No Content\nX-A: 1\n\n", b"HTTP/1.1 204 No Content"),
    ],
)
def test_status_lines(head: bytes, status_line: bytes) -> None:
    out = http_head(head)
    assert out.split(b"\r\n")[0] == status_line
    assert out.endswith(b"\r\n\r\n") and b"tatus" not in out


def test_a_head_split_anywhere_is_rewritten_the_same() -> None:
    head = b"Status: 201 Created\r\nContent-Type: text/plain\r\nX-Long: " + b"v" * 300 + b"\r\n\r\n"
    body = b"Status: 500 not a header, just body text\r\n\r\n"
    whole = answer(started(), head + body)
    assert whole.startswith(b"HTTP/1.1 201 Created\r\n") and whole.endswith(body)
    for cut in range(1, len(head) + 5):
        assert answer(started(), (head + body)[:cut], (head + body)[cut:]) == whole


def test_a_head_sent_a_byte_at_a_time() -> None:
    data = b"Status: 404 Not Found\r\nContent-Length: 2\r\n\r\nno"
    conn = started()
    for i in range(len(data)):
        conn.send_stdout(1, data[i : i + 1])
    conn.end_request(1)
    response = parse_http(conn.data_to_send())
    assert (response.status, response.reason, response.read()) == (404, "Not Found", b"no")


def test_a_head_left_unfinished_is_ended_for_the_web_server() -> None:
    out = answer(started(), b"X-A: 1\r\nStatus: 203 Fine")
    assert out == b"HTTP/1.1 203 Fine\r\nX-A: 1\r\n\r\n"


def test_an_invalid_status_is_a_local_error() -> None:
    conn = started()
    with pytest.raises(LocalProtocolError, match="Status"):
        answer(conn, b"Status: OK\r\n\r\n")


def test_an_answer_with_no_bytes_at_all_stays_empty() -> None:
    assert answer(started()) == b""


def test_an_overloaded_refusal_is_a_503() -> None:
    conn = started()
    conn.end_request(1, 0, ProtocolStatus.OVERLOADED)
    response = parse_http(conn.data_to_send())
    assert response.status == 503
    assert response.read() == b"503 Service Unavailable\n"


def test_output_rules() -> None:
    conn = started()
    conn.send_stderr(1, b"a traceback")  # no channel for it: dropped
    conn.send_stdout(1, b"")
    assert not conn.has_output
    conn.send_stdout(1, b"Status: 200 OK\r\n\r\n")
    assert conn.has_output
    assert b"".join(conn.buffers_to_send()) == b"HTTP/1.1 200 OK\r\n\r\n"
    conn.end_request(1)
    for call in (
        lambda: conn.send_stdout(1, b"x"),
        lambda: conn.send_stderr(1, b"x"),
        lambda: conn.end_request(1),
        lambda: conn.role(1),
    ):
        with pytest.raises(LocalProtocolError):
            call()
    with pytest.raises(LocalProtocolError):
        UwsgiConnection().send_stdout(1, b"x")  # no request yet


def test_body_left_unread_when_the_app_answered_is_dropped() -> None:
    conn = UwsgiConnection()
    data = post(b"x" * 1000)
    conn.feed(data[:-500])
    answer(conn, b"Status: 413 Too Big\r\n\r\n")
    assert conn.feed(data[-500:]) == []
    conn.feed_eof()


# -- through the WSGI adapter ----------------------------------------------------


def run_wsgi(request: bytes, app: object, limits: Limits | None = None) -> http.client.HTTPResponse:
    """Serve ``request`` with ``app`` the way a driver does, and read the answer as HTTP."""
    conn = UwsgiConnection(limits)
    events = conn.feed(request)
    body = b"".join(e.data for e in events if isinstance(e, ev.StdinData))
    chunks = [body]
    environ = build_environ(
        params_of(events), InputStream(lambda: chunks.pop() if chunks else b""), ErrorStream()
    )
    respond(app, environ, lambda data, flush: conn.send_stdout(1, data))  # type: ignore[arg-type]
    conn.end_request(1)
    return parse_http(conn.data_to_send())


def test_a_wsgi_app_answers_through_it() -> None:
    seen: dict[str, object] = {}

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        seen.update(environ)
        body = environ["wsgi.input"].read()  # type: ignore[attr-defined]
        start_response("201 Created", [("Content-Type", "text/plain"), ("X-A", "é")])  # type: ignore[operator]
        return [b"got " + body]

    response = run_wsgi(post(), app)
    assert (response.status, response.reason) == (201, "Created")
    assert response.getheader("Content-Type") == "text/plain"
    assert response.getheader("Content-Length") == "15"
    assert response.read() == b"got hello=world"
    assert seen["REQUEST_METHOD"] == "POST"


#: The request of the environ tests: a body "abc" of text/plain to this URI.
ENVIRON_URI = b"/app/caf%C3%A9?q=1"
ENVIRON_PATH = b"/app/caf\xc3\xa9"
ENVIRON_HEADERS = [(b"HTTP_CONTENT_TYPE", b"text/plain"), (b"HTTP_CONTENT_LENGTH", b"3")]
#: What build_environ gives for it through either protocol (and the method).
ENVIRON_EXPECTED = {
    "QUERY_STRING": "q=1",
    "CONTENT_TYPE": "text/plain",
    "CONTENT_LENGTH": "3",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REQUEST_URI": "/app/caf%C3%A9?q=1",
    # uwsgi_params sends PATH_INFO; scgi_params sends none, so the path comes
    # from REQUEST_URI, percent-decoded: the same for the app either way.
    "SCRIPT_NAME": "",
    "PATH_INFO": "/app/caf\xc3\xa9",
    "SERVER_NAME": "example.org",
    "SERVER_PORT": "80",
    "REMOTE_ADDR": "127.0.0.1",
    "HTTP_HOST": "example.org",
    "HTTP_USER_AGENT": "curl/7.88.1",
    "HTTP_X_FOO": "bar",
    "wsgi.url_scheme": "http",
}


def environ_of(events: list[ev.Event]) -> dict[str, object]:
    return build_environ(params_of(events), InputStream(lambda: b""), ErrorStream())


def test_the_environ_is_what_uwsgi_params_give() -> None:
    client = Client(headers=[*ENVIRON_HEADERS, (b"HTTP_X_FOO", b"bar")])
    pairs = nginx_vars(b"POST", ENVIRON_URI, ENVIRON_PATH, b"text/plain", b"3", client)
    environ = environ_of(UwsgiConnection().feed(uwsgi_request(pairs, b"abc")))
    expected = {**ENVIRON_EXPECTED, "REQUEST_METHOD": "POST"}
    assert {name: environ.get(name) for name in expected} == expected
    # A GET: nginx's empty CONTENT_LENGTH and CONTENT_TYPE are left out (PEP 3333).
    get = environ_of(UwsgiConnection().feed(NGINX_GET))
    assert "CONTENT_LENGTH" not in get and "CONTENT_TYPE" not in get
    assert get["QUERY_STRING"] == "a=1&b=%20"


def test_https_from_uwsgi_params_sets_the_url_scheme() -> None:
    pairs = nginx_vars()
    pairs.insert(9, (b"HTTPS", b"on"))  # after REQUEST_SCHEME, as uwsgi_params has it
    assert environ_of(UwsgiConnection().feed(uwsgi_request(pairs)))["wsgi.url_scheme"] == "https"
