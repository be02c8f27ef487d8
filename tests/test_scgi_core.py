"""Tests for the sans-IO SCGI connection, :mod:`fcgi.scgi`.

Requests are laid out as nginx 1.22 sends them through ``include scgi_params;
scgi_pass``: CONTENT_LENGTH first, then the scgi_param lines in the file's
order (SCGI = 1 among them), then the request headers. :data:`NGINX_POST` is
a request captured from it byte for byte.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_uwsgi_core import (
    ENVIRON_EXPECTED,
    ENVIRON_HEADERS,
    ENVIRON_PATH,
    ENVIRON_URI,
    FORM,
    SETTINGS,
    Client,
    answer,
    environ_of,
    events_or_none,
    feed_in_pieces,
    form_headers,
    merged,
    params_of,
)

from fcgi import events as ev
from fcgi.connection import Limits
from fcgi.errors import LocalProtocolError, ProtocolError
from fcgi.records import ProtocolStatus, Role
from fcgi.scgi import ScgiConnection
from fcgi.wsgi import ErrorStream, InputStream, build_environ, error_response, respond

Pairs = list[tuple[bytes, bytes]]

#: ``curl -X POST --data-binary 'hello=world' -H 'Content-Type:
#: application/x-www-form-urlencoded' http://127.0.0.1:18500/s/post`` as nginx
#: 1.22.1 passed it on (stock /etc/nginx/scgi_params, no server_name).
NGINX_POST = (
    b"438:"
    b"CONTENT_LENGTH\x0011\x00"
    b"REQUEST_METHOD\x00POST\x00"
    b"REQUEST_URI\x00/s/post\x00"
    b"QUERY_STRING\x00\x00"
    b"CONTENT_TYPE\x00application/x-www-form-urlencoded\x00"
    b"DOCUMENT_URI\x00/s/post\x00"
    b"DOCUMENT_ROOT\x00/usr/share/nginx/html\x00"
    b"SCGI\x001\x00"
    b"SERVER_PROTOCOL\x00HTTP/1.1\x00"
    b"REQUEST_SCHEME\x00http\x00"
    b"REMOTE_ADDR\x00127.0.0.1\x00"
    b"REMOTE_PORT\x0056566\x00"
    b"SERVER_PORT\x0018500\x00"
    b"SERVER_NAME\x00\x00"
    b"HTTP_HOST\x00127.0.0.1\x00"
    b"HTTP_USER_AGENT\x00curl/7.88.1\x00"
    b"HTTP_ACCEPT\x00*/*\x00"
    b"HTTP_CONTENT_TYPE\x00application/x-www-form-urlencoded\x00"
    b"HTTP_CONTENT_LENGTH\x0011\x00"
    b","
    b"hello=world"
)


def nginx_headers(
    method: bytes = b"GET",
    uri: bytes = b"/",
    path: bytes = b"/",
    content_type: bytes = b"",
    client: Client | None = None,
) -> Pairs:
    """The headers nginx sends after CONTENT_LENGTH with the stock scgi_params, in order."""
    head = [
        (b"REQUEST_METHOD", method),
        (b"REQUEST_URI", uri),
        (b"QUERY_STRING", uri.partition(b"?")[2]),
        (b"CONTENT_TYPE", content_type),
        (b"DOCUMENT_URI", path),
        (b"DOCUMENT_ROOT", b"/usr/share/nginx/html"),
        (b"SCGI", b"1"),
    ]
    return head + (client or Client()).tail()


def netstring(block: bytes) -> bytes:
    return b"%d:%s," % (len(block), block)


def scgi_request(pairs: Pairs, body: bytes = b"", length: bytes | None = None) -> bytes:
    """CONTENT_LENGTH (``length``, else the body's) first, then ``pairs``, then the body."""
    first = [(b"CONTENT_LENGTH", b"%d" % len(body) if length is None else length)]
    block = b"".join(name + b"\0" + value + b"\0" for name, value in first + pairs)
    return netstring(block) + body


def post(body: bytes = b"hello=world", client: Client | None = None) -> bytes:
    client = client or Client()
    client.headers = form_headers(b"%d" % len(body))
    return scgi_request(nginx_headers(b"POST", b"/s/post", b"/s/post", FORM, client), body)


GET = scgi_request(
    nginx_headers(
        uri=b"/s/caf%C3%A9/x?a=1&b=%20",
        path=b"/s/caf\xc3\xa9/x",
        client=Client(headers=[(b"HTTP_X_FOO", b"bar")]),
    )
)


# -- requests --------------------------------------------------------------------


def test_the_layout_helper_matches_what_nginx_sent() -> None:
    assert post(client=Client(b"", b"18500", b"127.0.0.1", b"56566")) == NGINX_POST


def test_post_as_nginx_sends_it() -> None:
    conn = ScgiConnection()
    events = conn.feed(NGINX_POST)
    assert events[0] == ev.BeginRequest(1, Role.RESPONDER, False)
    assert events[2:] == [ev.StdinData(1, b"hello=world"), ev.StdinEnd(1)]
    params = params_of(events)
    assert params["CONTENT_LENGTH"] == "11" and params["SCGI"] == "1"
    assert params["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert list(conn.active_requests) == [1]
    assert conn.keep_conn(1) is False and conn.role(1) == Role.RESPONDER
    assert not conn.mid_record and conn.buffered == 0


def test_get_with_a_non_ascii_path() -> None:
    events = ScgiConnection().feed(GET)
    assert events[2:] == [ev.StdinEnd(1)]  # CONTENT_LENGTH "0": no body
    params = params_of(events)
    assert params["CONTENT_LENGTH"] == "0"
    assert params["CONTENT_TYPE"] == ""  # nginx sends it empty on a GET
    assert params["DOCUMENT_URI"] == "/s/caf\xc3\xa9/x"  # latin-1 native string
    assert params["DOCUMENT_URI"].encode("latin-1").decode("utf-8") == "/s/café/x"
    assert params["QUERY_STRING"] == "a=1&b=%20"


def test_a_64k_header_block() -> None:
    pairs = nginx_headers(client=Client(headers=[(b"HTTP_COOKIE", b"c" * 66000)]))
    data = scgi_request(pairs)
    assert int(data.partition(b":")[0]) > 65536
    assert len(params_of(ScgiConnection().feed(data))["HTTP_COOKIE"]) == 66000


def test_a_body_in_pieces() -> None:
    conn = ScgiConnection()
    data = post(b"x" * 100)
    assert conn.feed(data[:-70])[-1] == ev.StdinData(1, b"x" * 30)
    assert conn.mid_record
    assert conn.feed(data[-70:]) == [ev.StdinData(1, b"x" * 70), ev.StdinEnd(1)]


def test_one_byte_at_a_time() -> None:
    conn = ScgiConnection()
    events = feed_in_pieces(conn, NGINX_POST, list(range(len(NGINX_POST))))
    assert merged(events) == merged(ScgiConnection().feed(NGINX_POST))


@SETTINGS
@given(st.data())
def test_any_split_gives_the_same_events(data: st.DataObject) -> None:
    request = data.draw(st.sampled_from([NGINX_POST, GET, post(bytes(range(256)) * 3)]))
    cuts = data.draw(st.lists(st.integers(0, len(request)), max_size=12))
    events = feed_in_pieces(ScgiConnection(), request, cuts)
    assert merged(events) == merged(ScgiConnection().feed(request))


def test_a_repeated_header_keeps_its_last_value() -> None:
    pairs = [(b"SCGI", b"1"), (b"HTTP_X", b"a"), (b"HTTP_X", b"b")]
    assert params_of(ScgiConnection().feed(scgi_request(pairs)))["HTTP_X"] == "b"


# -- broken input ----------------------------------------------------------------


@pytest.mark.parametrize("size", range(1, len(NGINX_POST)))
def test_a_connection_closed_mid_request_is_a_protocol_error(size: int) -> None:
    conn = ScgiConnection()
    conn.feed(NGINX_POST[:size])
    assert conn.mid_record
    with pytest.raises(ProtocolError, match="connection closed"):
        conn.feed_eof()


def test_closing_after_the_request_or_before_it_is_no_error() -> None:
    for data in (b"", NGINX_POST):
        conn = ScgiConnection()
        conn.feed(data)
        conn.feed_eof()
        assert conn.closed_by_peer


def test_bytes_after_the_request_break_the_protocol() -> None:
    with pytest.raises(ProtocolError, match="after the end"):
        ScgiConnection().feed(NGINX_POST + NGINX_POST)
    conn = ScgiConnection()
    conn.feed(GET)
    with pytest.raises(ProtocolError, match="after the end"):
        conn.feed(b"x")


def block(*fields: bytes) -> bytes:
    return b"".join(field + b"\0" for field in fields)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"GET / HTTP/1.1\r\n", "netstring length.*HTTP client"),
        (b"\x01\x01\x00\x01\x00\x08\x00\x00", "netstring length.*FastCGI"),
        (b"\x00\x10\x00\x00", "netstring length.*uwsgi"),
        (b"12x:", "netstring length"),
        (b"1234567:", "more than 6 digits"),  # max_params_bytes is 262144
        (b"99999999999999999999999", "more than 6 digits"),
        (b":", "without a length"),
        (b"012:", "leading zero"),
        (b"0:,", "empty SCGI header block"),
        (netstring(block(b"CONTENT_LENGTH", b"0", b"SCGI", b"1"))[:-1] + b";", "','"),
        (netstring(b"CONTENT_LENGTH\x000\x00SCGI\x001"), "NUL"),
        (netstring(block(b"CONTENT_LENGTH", b"0", b"SCGI")), "without a value"),
        (netstring(block(b"SCGI", b"1", b"CONTENT_LENGTH", b"0")), "first .* CONTENT_LENGTH"),
        (netstring(block(b"CONTENT_LENGTH", b"0", b"", b"1", b"SCGI", b"1")), "empty name"),
        (netstring(block(b"CONTENT_LENGTH", b"", b"SCGI", b"1")), "not a decimal"),
        (netstring(block(b"CONTENT_LENGTH", b"-1", b"SCGI", b"1")), "not a decimal"),
        (netstring(block(b"CONTENT_LENGTH", b"\xb2", b"SCGI", b"1")), "not a decimal"),
        (netstring(block(b"CONTENT_LENGTH", b"0")), "SCGI = 1"),
        (netstring(block(b"CONTENT_LENGTH", b"0", b"SCGI", b"2")), "SCGI = 1"),
        (
            netstring(block(b"CONTENT_LENGTH", b"1", b"SCGI", b"1", b"CONTENT_LENGTH", b"9")),
            "CONTENT_LENGTH sent twice",
        ),
    ],
)
def test_malformed_heads_are_protocol_errors(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        ScgiConnection().feed(data)


def test_a_head_shorter_than_the_length_prefix_limit() -> None:
    """The smallest valid head is shorter than the bytes taken to find its length."""
    limits = Limits(max_params_bytes=10**40)
    data = netstring(block(b"CONTENT_LENGTH", b"2", b"SCGI", b"1")) + b"ab"
    assert len(data) < 42
    events = ScgiConnection(limits).feed(data)
    assert events[2:] == [ev.StdinData(1, b"ab"), ev.StdinEnd(1)]


@SETTINGS
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_random_bytes_raise_nothing_but_protocol_error(blob: bytes, cuts: list[int]) -> None:
    for data in (blob, b"%d:" % len(blob) + blob):  # also past the length prefix
        events_or_none(ScgiConnection(), data, cuts)


@SETTINGS
@given(st.data())
def test_corrupted_requests_raise_nothing_but_protocol_error(data: st.DataObject) -> None:
    request = bytearray(data.draw(st.sampled_from([NGINX_POST, GET])))
    for _ in range(data.draw(st.integers(1, 4))):
        request[data.draw(st.integers(0, len(request) - 1))] = data.draw(
            st.sampled_from([0, 0x2C, 0x3A, 0x30, 0x39, 0xFF])
        )
    conn = ScgiConnection(Limits(max_params=12, max_params_bytes=500, max_body_size=5))
    events = events_or_none(conn, bytes(request), data.draw(st.lists(st.integers(0, 500))))
    assert events is None or all(e.request_id == 1 for e in events)


# -- limits ----------------------------------------------------------------------


def test_a_head_over_max_params_bytes_is_refused_from_its_length() -> None:
    conn = ScgiConnection(Limits(max_params_bytes=400))
    events = conn.feed(NGINX_POST[:4])  # "438:"
    assert [type(e) for e in events] == [ev.BeginRequest, ev.RequestRejected]
    assert events[1].http_status == 431  # type: ignore[attr-defined]
    assert conn.feed(NGINX_POST[4:]) == []  # read and dropped
    conn.feed_eof()
    conn.send_stdout(1, error_response(431))
    conn.end_request(1, 1)
    assert conn.should_close
    assert conn.data_to_send().startswith(b"Status: 431 ")


def test_more_headers_than_max_params_is_a_431() -> None:
    events = ScgiConnection(Limits(max_params=10)).feed(NGINX_POST)
    assert [type(e) for e in events] == [ev.BeginRequest, ev.RequestRejected]
    assert events[1].http_status == 431  # type: ignore[attr-defined]


def test_a_body_over_max_body_size_is_a_413() -> None:
    events = ScgiConnection(Limits(max_body_size=10)).feed(NGINX_POST)
    assert [type(e) for e in events] == [ev.BeginRequest, ev.RequestRejected]
    assert events[1].http_status == 413  # type: ignore[attr-defined]
    huge = scgi_request([(b"SCGI", b"1")], length=b"9" * 5000)
    assert ScgiConnection().feed(huge)[-1].http_status == 413  # type: ignore[attr-defined]


# -- the answer ------------------------------------------------------------------


def test_the_cgi_answer_passes_unchanged() -> None:
    conn = ScgiConnection()
    conn.feed(GET)
    cgi = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope"
    assert answer(conn, cgi[:5], cgi[5:]) == cgi
    assert conn.should_close and not conn.active_requests


def test_an_overloaded_refusal_is_a_503() -> None:
    conn = ScgiConnection()
    conn.feed(GET)
    conn.end_request(1, 0, ProtocolStatus.OVERLOADED)
    assert conn.data_to_send().startswith(b"Status: 503 Service Unavailable\r\n")


def test_output_rules() -> None:
    conn = ScgiConnection()
    with pytest.raises(LocalProtocolError):
        conn.send_stdout(1, b"x")
    conn.feed(GET)
    with pytest.raises(LocalProtocolError):
        conn.send_stdout(2, b"x")
    conn.send_stderr(1, b"dropped")
    assert not conn.has_output
    conn.end_request(1)
    with pytest.raises(LocalProtocolError):
        conn.end_request(1)


# -- through the WSGI adapter ----------------------------------------------------


def test_a_wsgi_app_answers_through_it() -> None:
    conn = ScgiConnection()
    events = conn.feed(NGINX_POST)
    chunks = [e.data for e in events if isinstance(e, ev.StdinData)]
    environ = build_environ(
        params_of(events), InputStream(lambda: chunks.pop(0) if chunks else b"", 11), ErrorStream()
    )

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        body = environ["wsgi.input"].read()  # type: ignore[attr-defined]
        start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
        return [b"got " + body]

    respond(app, environ, lambda data, flush: conn.send_stdout(1, data))
    conn.end_request(1)
    assert conn.data_to_send() == (
        b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\ngot hello=world"
    )


def test_the_environ_is_what_scgi_params_give() -> None:
    client = Client(headers=[*ENVIRON_HEADERS, (b"HTTP_X_FOO", b"bar")])
    pairs = nginx_headers(b"PUT", ENVIRON_URI, ENVIRON_PATH, b"text/plain", client)
    environ = environ_of(ScgiConnection().feed(scgi_request(pairs, b"abc")))
    expected = {**ENVIRON_EXPECTED, "REQUEST_METHOD": "PUT", "SCGI": "1"}
    assert {name: environ.get(name) for name in expected} == expected
    # CONTENT_LENGTH "0" stays (PEP 3333 allows it); the empty CONTENT_TYPE goes.
    get = environ_of(ScgiConnection().feed(GET))
    assert get["CONTENT_LENGTH"] == "0" and "CONTENT_TYPE" not in get
