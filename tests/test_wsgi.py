"""The PEP 3333 adapter without sockets: environ, wsgi.input, start_response."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcgi.wsgi import (
    ClientGone,
    ErrorStream,
    InputStream,
    build_environ,
    fix_script_name,
    run_app,
)


def chunks(*parts: bytes) -> Any:
    it = iter(parts)
    return lambda: next(it, b"")


def environ_for(params: dict[str, str], body: bytes = b"", mount: str | None = None) -> Any:
    base = {
        "REQUEST_METHOD": "GET",
        "SERVER_NAME": "h",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "QUERY_STRING": "",
    }
    base.update(params)
    return build_environ(base, InputStream(chunks(body), len(body)), ErrorStream(), mount=mount)


class Sink:
    def __init__(self) -> None:
        self.writes: list[tuple[bytes, bool]] = []

    def __call__(self, data: bytes, flush: bool) -> None:
        self.writes.append((data, flush))

    @property
    def data(self) -> bytes:
        return b"".join(d for d, _ in self.writes)


# -- wsgi.input ---------------------------------------------------------------


def test_read_sizes_across_chunk_boundaries() -> None:
    stream = InputStream(chunks(b"abc", b"defg", b"h"), 8)
    assert stream.read(2) == b"ab"
    assert stream.read(4) == b"cdef"
    assert stream.read(-1) == b"gh"
    assert stream.read(5) == b""


def test_a_read_of_a_whole_chunk_that_ends_the_body_gets_that_very_bytes_object() -> None:
    # The last chunk ends at CONTENT_LENGTH, as a body sent in one record
    # does: the app gets that chunk itself, not a copy (as the docstring says).
    last = b"y" * 16384
    stream = InputStream(chunks(b"x" * 100, last), 100 + len(last))
    assert stream.read(100) == b"x" * 100
    assert stream.read(len(last)) is last
    assert stream.read() == b""
    # One byte past the limit: cut there, and nothing more is read.
    stream = InputStream(chunks(last + b"z", b"more"), len(last))
    assert stream.read() == last
    assert stream.read() == b""


def test_readline_with_and_without_size() -> None:
    stream = InputStream(chunks(b"one\ntw", b"o\nthree"))
    assert stream.readline() == b"one\n"
    assert stream.readline(2) == b"tw"
    assert stream.readline() == b"o\n"
    assert stream.readlines() == [b"three"]
    assert stream.readline() == b""


def test_iteration_yields_lines() -> None:
    assert list(InputStream(chunks(b"a\nb\n", b"c"))) == [b"a\n", b"b\n", b"c"]


def test_limit_stops_at_content_length() -> None:
    calls = []

    def fill() -> bytes:
        calls.append(1)
        return b"0123456789"

    stream = InputStream(fill, 4)
    assert stream.read() == b"0123"
    assert stream.read(1) == b""
    assert len(calls) == 1, "never asks the web server for more than declared"


def test_short_body_is_eof_not_a_hang() -> None:
    assert InputStream(chunks(b"abc"), 100).read(50) == b"abc"


# -- SCRIPT_NAME / PATH_INFO ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "mount", "script_name", "path_info"),
    [
        # nginx with the stock fastcgi_params: the whole path in SCRIPT_NAME.
        ({"SCRIPT_NAME": "/a/b", "REQUEST_URI": "/a/b?x"}, None, "", "/a/b"),
        # nginx with fastcgi_split_path_info, or Apache mod_fcgid.
        ({"SCRIPT_NAME": "/app.fcgi", "PATH_INFO": "/x/y"}, None, "/app.fcgi", "/x/y"),
        # lighttpd with the app at "/": SCRIPT_NAME is the path, PATH_INFO empty.
        ({"SCRIPT_NAME": "/page", "PATH_INFO": ""}, None, "", "/page"),
        # Only REQUEST_URI: decoded, query dropped.
        ({"REQUEST_URI": "/caf%C3%A9?q=1"}, None, "", "/caf\xc3\xa9"),
        # An explicit mount point.
        ({"SCRIPT_NAME": "/app/x/y"}, "/app", "/app", "/x/y"),
        ({"SCRIPT_NAME": "/app", "PATH_INFO": "/z"}, "/app/", "/app", "/z"),
        ({"SCRIPT_NAME": "/app"}, "/app", "/app", ""),
        ({"SCRIPT_NAME": "/other"}, "/app", "/app", "/other"),
    ],
)
def test_script_name_rules(
    sent: dict[str, str], mount: str | None, script_name: str, path_info: str
) -> None:
    environ: dict[str, Any] = dict(sent)
    fix_script_name(environ, mount)
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == (script_name, path_info)


def test_environ_is_pep3333() -> None:
    env = environ_for({"HTTPS": "on", "HTTP_X_NAME": "caf\xc3\xa9", "CONTENT_LENGTH": ""})
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.url_scheme"] == "https"
    assert env["wsgi.multithread"] is False
    assert env["wsgi.run_once"] is False
    assert "CONTENT_LENGTH" not in env, "an empty CONTENT_LENGTH is dropped"
    # Native strings holding the raw bytes as latin-1: round-trips to UTF-8.
    assert env["HTTP_X_NAME"].encode("latin-1").decode("utf-8") == "café"


# -- running apps ----------------------------------------------------------------------


def run(app: Any, validate: bool = True) -> tuple[int, Sink]:
    sink = Sink()
    status, _ = run_app(validator(app) if validate else app, environ_for({}), sink)
    return status, sink


def test_list_response_goes_out_in_one_unflushed_write_with_length() -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello ", b"world"]

    assert run(app)[0] == 200  # valid WSGI; the validator hides the list type, so:
    status, sink = run(app, validate=False)
    assert status == 200
    assert sink.writes == [
        (
            b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
            False,
        )
    ]


def test_generator_chunks_flush_one_by_one_and_close_is_called() -> None:
    closed = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"a"
            yield b""
            yield b"b"

        def close(self) -> None:
            closed.append(True)

    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("201 Created", [("Content-Type", "text/plain")])
        return Body()

    status, sink = run(app)
    assert status == 201
    assert [flush for _, flush in sink.writes] == [True, True]
    assert sink.data.endswith(b"\r\n\r\nab")
    assert closed == [True]


def test_a_list_subclass_with_close_is_closed() -> None:
    """A plain list has no close() (not even looked for); a subclass may, and is closed."""
    closed = []

    class Body(list[bytes]):
        def close(self) -> None:
            closed.append(True)

    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body([b"listed"])

    status, sink = run(app)
    assert status == 200 and sink.data.endswith(b"\r\n\r\nlisted")
    assert closed == [True]


def test_empty_body_still_sends_headers() -> None:
    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("204 No Content", [])
        return iter([])

    _, sink = run(app)
    assert sink.data == b"Status: 204 No Content\r\n\r\n"


def test_write_callable_sends_before_returning() -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"early ")
        return [b"late"]

    _, sink = run(app)
    assert sink.writes[0][1] is True
    assert sink.data.endswith(b"early late")


def test_exc_info_replaces_headers_before_they_are_sent() -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            start_response(
                "503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"sorry"]

    status, sink = run(app)
    assert status == 503
    assert sink.data.startswith(b"Status: 503 Service Unavailable\r\n")


def test_exception_before_headers_is_500_and_traceback_goes_to_stderr() -> None:
    stderr: list[bytes] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        raise KeyError("missing")

    sink = Sink()
    status, app_status = run_app(app, environ_for({}), sink, stderr.append)
    assert (status, app_status) == (500, 1)
    assert sink.data.startswith(b"Status: 500 Internal Server Error\r\n")
    assert b"Traceback" not in sink.data
    assert b"KeyError: 'missing'" in b"".join(stderr)


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        ("200", []),
        ("OK 200", []),
        (b"200 OK", []),
        ("200 OK", [("Bad Name", "x")]),
        ("200 OK", [("X-Split", "a\r\nInjected: 1")]),
        ("200 OK", [("Connection", "close")]),
        ("200 OK", [("X-Snow", "\u2603")]),
    ],
)
def test_invalid_status_or_headers_become_500(status: Any, headers: Any) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response(status, headers)
        return [b"never sent"]

    sink = Sink()
    code, _ = run_app(app, environ_for({}), sink)
    assert code == 500
    assert b"never sent" not in sink.data
    assert b"Injected" not in sink.data


def test_client_gone_propagates_after_close() -> None:
    closed = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"x"

        def close(self) -> None:
            closed.append(True)

    def app(environ: Any, start_response: Any) -> Body:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    def send(data: bytes, flush: bool) -> None:
        raise ClientGone("peer reset")

    with pytest.raises(ClientGone):
        run_app(app, environ_for({}), send)
    assert closed == [True]


@pytest.mark.parametrize("sizes", [[1], [3, 3], [5, 1, 100], [7], [2, 2, 2, 2, 2], [4, -1], [1000]])
def test_reads_of_any_size_return_the_stream_in_order(sizes: list[int]) -> None:
    pieces = [b"abcd", b"efghijkl", b"m", b"nopqrstuvwxyz"]
    body = b"".join(pieces)
    stream = InputStream(chunks(*pieces), len(body) - 2)
    got = b""
    for size in sizes * 100:
        piece = stream.read(size)
        assert len(piece) <= size or size < 0
        got += piece
    assert got == body[:-2]
    assert stream.read(5) == b""


def test_read_after_readline_keeps_the_order() -> None:
    stream = InputStream(chunks(b"line one\nrest", b" of it\nmore"))
    assert stream.readline() == b"line one\n"
    assert stream.read(4) == b"rest"
    assert stream.read(100) == b" of it\nmore"


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.binary(min_size=1, max_size=40), max_size=8),  # b"" means EOF
    ops=st.lists(
        st.tuples(st.sampled_from(["read", "readline"]), st.integers(min_value=-1, max_value=50)),
        max_size=30,
    ),
    cut=st.integers(min_value=0, max_value=10),
)
def test_input_stream_reads_like_a_file(
    pieces: list[bytes], ops: list[tuple[str, int]], cut: int
) -> None:
    body = b"".join(pieces)
    limit = max(0, len(body) - cut)
    stream = InputStream(chunks(*pieces), limit)
    reference = io.BytesIO(body[:limit])
    for name, size in ops:
        got = getattr(stream, name)(size)
        assert type(got) is bytes
        assert got == getattr(reference, name)(size), (name, size)
    assert stream.read() == reference.read()


# -- what apps pass, the same compiled or not (tests/test_compiled.py) --------------
# The compiled wsgi.py (setup.py) turned declared argument types into checks
# of its own: these apps got a different answer from it than from the source.


@pytest.mark.parametrize("shape", [list, iter])
@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_an_iterable_yielding_other_than_bytes_is_refused(
    kind: Any, shape: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return shape([kind(b"one ")])

    status, sink = run(app, validate=False)
    assert status == 500
    assert b"one" not in sink.data
    assert f"the app yielded {kind.__name__}, not bytes" in caplog.text


def test_a_chunk_other_than_bytes_after_the_head_ends_the_answer_early() -> None:
    def app(environ: Any, start_response: Any) -> Iterator[Any]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"one "
        yield bytearray(b"two")

    sink = Sink()
    status, app_status = run_app(app, environ_for({}), sink)
    assert (status, app_status) == (200, 1)
    assert sink.data.endswith(b"one ")


def test_exc_info_may_be_a_list() -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        try:
            raise RuntimeError("the app's own error")
        except RuntimeError:
            import sys

            start_response("500 Oops", [("Content-Type", "text/plain")], list(sys.exc_info()))
        return [b"handled"]

    status, sink = run(app, validate=False)
    assert status == 500
    assert sink.data.startswith(b"Status: 500 Oops\r\n") and sink.data.endswith(b"handled")


def test_the_file_wrapper_is_a_plain_class_apps_may_subclass() -> None:
    def app(environ: Any, start_response: Any) -> Any:
        class Wrapper(environ["wsgi.file_wrapper"]):  # type: ignore[misc]
            pass

        wrapper = Wrapper(io.BytesIO(b"subclassed"))
        wrapper.extra = 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return wrapper

    status, sink = run(app, validate=False)
    assert status == 200
    assert sink.data.endswith(b"subclassed")


def test_readlines_takes_none_as_no_hint() -> None:
    stream = InputStream(chunks(b"a\nb\n"), 4)
    assert stream.readlines(None) == [b"a\n", b"b\n"]
