"""The optional C functions (fcgi/_speedups.c) against their pure-Python twins.

``decode_params``, ``encode_head`` and ``asgi_scope`` here; ``scan_head``, which has no twin
but the connection's record loop, in tests/test_fastpath.py. decode_params is
compared through :func:`fcgi.records._decode_params_fast`, the wrapper
that :func:`fcgi.records.decode_params` is bound to when the extension is in
use: the same dict, or the same :class:`ProtocolError` message, on every input.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcgi import asgi, uwsgi, wsgi
from fcgi import records as r
from fcgi.errors import ProtocolError

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROOT = Path(__file__).resolve().parents[1]

# Set when the package was built without its C extension on purpose.
NO_EXTENSIONS = os.environ.get("FCGI_NO_EXTENSIONS") == "1"

Outcome = dict[str, str] | tuple[str, str]


def c_version() -> Callable[[bytes], dict[str, str]]:
    """The C version behind the public wrapper; its absence is a failure."""
    if r._decode_params_c is None:
        if NO_EXTENSIONS:
            pytest.skip("built with FCGI_NO_EXTENSIONS=1: no C version to compare")
        pytest.fail("fcgi._speedups is not built: `pip install -e .` needs gcc and Python headers")
    return r._decode_params_fast


@pytest.fixture(scope="module")
def c_decode() -> Callable[[bytes], dict[str, str]]:
    return c_version()


def outcome(decode: Callable[..., dict[str, str]], data: bytes | bytearray | memoryview) -> Outcome:
    try:
        return decode(data)
    except ProtocolError as exc:
        return ("ProtocolError", str(exc))


def assert_same(c_decode: Callable[[bytes], dict[str, str]], data: bytes) -> Outcome:
    expected = outcome(r._decode_params_py, data)
    assert outcome(c_decode, data) == expected
    # Any bytes-like object, at any offset in its buffer. The pure version
    # takes bytes (it needs .decode()), so its answer for them is the one.
    assert outcome(c_decode, bytearray(data)) == expected
    assert outcome(c_decode, memoryview(data)) == expected
    view = memoryview(b"\xff\x80" + data + b"\x01")[2:-1]
    assert outcome(c_decode, view) == expected
    return expected


# -- the extension is there, and selected as documented ---------------------------------


def test_extension_is_built_and_in_use() -> None:
    if NO_EXTENSIONS:
        assert r._decode_params_c is None, (
            "FCGI_NO_EXTENSIONS=1 but fcgi._speedups is importable: a stale build "
            "(remove fcgi/_speedups*.so) or an environment that did build it"
        )
        assert not r.SPEEDUPS
        assert r.decode_params is r._decode_params_py
        return
    import fcgi._speedups  # noqa: F401  # fails the test, not skips it, if absent

    assert r._decode_params_c is not None
    if os.environ.get("FCGI_PURE_PYTHON") == "1":
        assert not r.SPEEDUPS
        assert r.decode_params is r._decode_params_py
    else:
        assert r.SPEEDUPS is True
        assert r.decode_params is r._decode_params_fast


def test_pure_python_switch_in_a_fresh_interpreter() -> None:
    code = (
        "from fcgi import records as r\n"
        "from fcgi.errors import ProtocolError\n"
        "assert r.SPEEDUPS is False, r.SPEEDUPS\n"
        "assert r.decode_params is r._decode_params_py\n"
        "block = r.encode_pairs([(b'A', b'1'), (b'X' * 200, b'\\xe9'), (b'A', b'2')])\n"
        "assert r.decode_params(block) == {'A': '2', 'X' * 200: '\\xe9'}\n"
        "try:\n"
        "    r.decode_params(block[:-1])\n"
        "except ProtocolError as exc:\n"
        "    assert 'claims 1+1 bytes but only 1 remain' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no ProtocolError')\n"
        "print('ok')\n"
    )
    env = {**os.environ, "FCGI_PURE_PYTHON": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"


# -- fixed cases ------------------------------------------------------------------------

LEN4_ZERO = b"\x80\x00\x00\x00"  # a 4-byte length of 0: 0x80000000 with only the flag bit
LEN4_MAX = b"\xff\xff\xff\xff"  # the largest length, 0x7FFFFFFF

FIXED_CASES = [
    b"",
    b"\x00\x00",
    b"\x01\x01ab",
    b"\x01\x01ab\x01\x01ac",  # duplicate name: last wins
    LEN4_ZERO + LEN4_ZERO,  # 4-byte lengths of 0 are valid
    LEN4_ZERO + b"\x01" + b"v",
    b"\x80\x00\x00\x01\x80\x00\x00\x02abc",  # 4-byte encodings of small lengths
    b"\x7f\x00" + b"n" * 127,
    b"\x80\x00\x00\x80\x00" + b"n" * 128,
    b"\x00\x80\x00\x00\x80" + b"v" * 128,
    b"\x01\x01\xe9\xff\x01\x01\x00\x80",  # non-ASCII and NUL bytes
    # malformed
    b"\x80",
    b"\x80\x00\x00",
    b"\x01",
    LEN4_ZERO,
    b"\x01\x80\x00",
    b"\x01\x01a",
    b"\x05\x00abc",
    b"\x01\x01ab\x02",
    LEN4_MAX + b"\x00",
    b"\x00" + LEN4_MAX,
    LEN4_MAX + LEN4_MAX,  # 2 * 0x7FFFFFFF must not wrap anything
    LEN4_MAX + LEN4_MAX + b"x" * 64,
    b"\x80\x00\x00\x80\x00" + b"n" * 127,  # one byte short
    b"\x01\x01ab" + LEN4_MAX + b"\x00",  # a good pair, then a bad one
]


@pytest.mark.parametrize("data", FIXED_CASES)
def test_fixed_cases_agree(c_decode: Callable[[bytes], dict[str, str]], data: bytes) -> None:
    assert_same(c_decode, data)


def test_fixed_cases_values(c_decode: Callable[[bytes], dict[str, str]]) -> None:
    assert c_decode(b"") == {}
    assert c_decode(LEN4_ZERO + LEN4_ZERO) == {"": ""}
    assert c_decode(b"\x01\x01ab\x01\x01ac") == {"a": "c"}
    assert c_decode(b"\x01\x01\xe9\xff\x01\x01\x00\x80") == {"\xe9": "\xff", "\x00": "\x80"}
    with pytest.raises(ProtocolError, match=r"claims 2147483647\+2147483647 bytes but only 0"):
        c_decode(LEN4_MAX + LEN4_MAX)
    with pytest.raises(ProtocolError, match=r"claims 2147483647\+0 bytes but only 0"):
        c_decode(LEN4_MAX + b"\x00")


def test_raw_c_function_returns_none_on_malformed_input(
    c_decode: Callable[[bytes], dict[str, str]],
) -> None:
    from fcgi import _speedups

    for data in (b"\x80", b"\x01", b"\x01\x80\x00", b"\x01\x01a", LEN4_MAX + LEN4_MAX):
        assert _speedups.decode_params(data) is None
    assert _speedups.decode_params(b"\x01\x01ab") == {"a": "b"}


def test_c_version_takes_only_contiguous_buffers(
    c_decode: Callable[[bytes], dict[str, str]],
) -> None:
    from fcgi import _speedups

    bad: list[object] = ["\x01\x01ab", None, 1]
    for data in bad:
        with pytest.raises(TypeError):
            _speedups.decode_params(data)  # type: ignore[arg-type]
    with pytest.raises(BufferError):
        _speedups.decode_params(memoryview(b"\x01\x01ab")[::2])


# -- every truncation of a valid block ----------------------------------------------------


def representative_block() -> bytes:
    return r.encode_pairs(
        [
            (b"REQUEST_METHOD", b"GET"),
            (b"EMPTY", b""),
            (b"", b"no name"),
            (b"HTTP_X_LATIN1", bytes(range(256))),  # 4-byte value length, every byte
            (b"N" * 128, b"v" * 127),  # 4-byte name length, 1-byte value length at the edge
            (b"REQUEST_METHOD", b"POST"),
        ]
    )


def test_every_truncation_agrees(c_decode: Callable[[bytes], dict[str, str]]) -> None:
    block = representative_block()
    assert c_decode(block)["REQUEST_METHOD"] == "POST"
    errors = 0
    for cut in range(len(block) + 1):
        if isinstance(assert_same(c_decode, block[:cut]), tuple):
            errors += 1
    # Only the cuts at pair boundaries decode.
    assert errors == len(block) + 1 - 7


# -- hypothesis -----------------------------------------------------------------------------


def repeat_to(pattern: bytes, size: int) -> bytes:
    return (pattern * (size // len(pattern) + 1))[:size]


# Any bytes, with lengths on both sides of the 1-byte / 4-byte boundary, and a few
# large ones built from a short random pattern so as not to exhaust hypothesis.
any_bytes = st.one_of(
    st.binary(max_size=20),
    st.binary(min_size=125, max_size=130),
    st.builds(
        repeat_to,
        st.binary(min_size=1, max_size=8),
        st.one_of(st.integers(126, 130), st.integers(0, 200_000)),
    ),
)
# A few names recur, so blocks have duplicates.
names = st.one_of(st.sampled_from([b"", b"A", b"\xe9", b"N" * 128]), any_bytes)
blocks = st.lists(st.tuples(names, any_bytes), max_size=10)


@SETTINGS
@given(blocks)
def test_valid_blocks_agree(pairs: list[tuple[bytes, bytes]]) -> None:
    block = r.encode_pairs(pairs)
    expected = {n.decode("latin-1"): v.decode("latin-1") for n, v in pairs}
    assert assert_same(c_version(), block) == expected


@SETTINGS
@given(blocks, st.data())
def test_truncated_blocks_agree(pairs: list[tuple[bytes, bytes]], data: st.DataObject) -> None:
    block = r.encode_pairs(pairs)
    cut = data.draw(st.integers(0, len(block)))
    assert_same(c_version(), block[:cut])


# Mostly malformed: raw bytes, and bytes from an alphabet of length-like values.
length_bytes = st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0x81, 0xFF])
random_blocks = st.one_of(
    st.binary(max_size=64),
    st.lists(length_bytes, max_size=24).map(bytes),
)


@SETTINGS
@given(random_blocks)
def test_random_bytes_agree(data: bytes) -> None:
    assert_same(c_version(), data)


# -- resources --------------------------------------------------------------------------------


def test_buffer_released_on_every_path(c_decode: Callable[[bytes], dict[str, str]]) -> None:
    # A bytearray cannot be resized while a buffer export is held.
    for data in (b"", b"\x01\x01ab", b"\x01\x01a", LEN4_MAX + LEN4_MAX):
        buf = bytearray(data)
        outcome(c_decode, buf)
        buf += b"more"
        del buf[:]


def test_no_leak_and_no_allocation_from_declared_lengths(
    c_decode: Callable[[bytes], dict[str, str]],
) -> None:
    good = representative_block()
    bad = (b"\x01\x01ab" * 20) + LEN4_MAX + LEN4_MAX + b"x" * 100
    raw = r._decode_params_c
    assert raw is not None
    for _ in range(100):  # warm up caches before measuring
        raw(good)
        raw(bad)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5000):
            raw(good)
            assert raw(bad) is None
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 16 * 1024, "leaks"
    assert peak - before < 64 * 1024, "allocated more than one decoded block"


# -- the response head (fcgi.wsgi._encode_head) ---------------------------------------

status_text = st.one_of(
    st.sampled_from(["200 OK", "404 Not Found", "599 x", "200 ", "099 No", "2000 OK", "20 OK"]),
    st.text(alphabet=st.sampled_from("0123456789 OKé\r\n\0\u0100aZ"), max_size=12),
)
name_text = st.one_of(
    st.sampled_from(
        [
            "Content-Type",
            "content-length",
            "CONTENT-LENGTH",
            "Connection",
            "Keep-Alive",
            "TE",
            "Upgrade",
            "X-Fine_1",
            "Bad Name",
            "",
            "é",
            "Content-Lengthy",
        ]
    ),
    st.text(alphabet=st.sampled_from("aZ09-!#|~:\r\n é\u0100"), max_size=8),
)
value_text = st.text(alphabet=st.sampled_from("ab 9;=\té\r\n\0\u0100\x7f"), max_size=10)
header_item = st.one_of(
    st.tuples(name_text, value_text),
    st.sampled_from([("A", b"bytes"), (b"A", "v"), ("A", "v", "w"), ["A", "v"], ("A", 1)]),
)
headers_value = st.one_of(
    st.lists(header_item, max_size=5),
    st.sampled_from([(("A", "v"),), None, "A: v"]),
)


def head_outcome(
    encode: Callable[..., tuple[bytes, bool]], status: object, headers: object
) -> object:
    try:
        return encode(status, headers)
    except (TypeError, ValueError) as exc:
        return (type(exc).__name__, str(exc))


@pytest.mark.skipif(wsgi._encode_head_c is None, reason="the C extension is not in use")
@SETTINGS
@given(st.one_of(status_text, st.sampled_from([None, b"200 OK", 200])), headers_value)
def test_encode_head_c_matches_the_reference(status: object, headers: object) -> None:
    expected = head_outcome(wsgi._encode_head_py, status, headers)
    assert head_outcome(wsgi._encode_head_fast, status, headers) == expected
    # The C twin vouches for exactly what the reference accepts: it never
    # leaves a valid head to the slow path (that would only cost speed, but
    # would also hide a divergence), and never accepts an invalid one.
    assert wsgi._encode_head_c is not None
    raw = wsgi._encode_head_c(status, headers)
    assert (raw is None) == (type(expected) is tuple and type(expected[0]) is str)
    if raw is not None:
        assert raw == expected


def test_encode_head_selected_as_documented() -> None:
    if r.SPEEDUPS:
        assert wsgi._encode_head is wsgi._encode_head_fast
    else:
        assert wsgi._encode_head is wsgi._encode_head_py


def test_string_cache_never_changes_what_is_decoded(
    c_decode: Callable[[bytes], dict[str, str]],
) -> None:
    """Short names and values are kept between calls (fcgi/_speedups.c, "Strings seen
    again and again"): whatever the table holds, each call gives what a fresh decode
    gives, at the length limits, through collisions and evictions."""
    blocks = []
    for round_ in range(3):
        pairs = [
            (f"N{i}".encode() * (1 + i % 20), bytes([i % 256]) * (i % 40)) for i in range(1500)
        ]
        pairs += [(b"n" * size, b"v" * size) for size in (15, 16, 17, 31, 32, 33)]
        pairs += [(b"\xe9" * 3, b"\x00\xff"), (b"same", str(round_).encode())]
        blocks.append(r.encode_pairs(pairs))
    for block in blocks + blocks[::-1]:
        assert c_decode(block) == r._decode_params_py(block)


# -- the uwsgi vars block (fcgi.uwsgi.decode_vars) ------------------------------------


def uwsgi_block(pairs: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(
        len(k).to_bytes(2, "little") + k + len(v).to_bytes(2, "little") + v for k, v in pairs
    )
    return b"\0" + len(body).to_bytes(2, "little") + b"\0" + body


def vars_outcome(decode: Callable[[bytes], object], head: bytes) -> object:
    try:
        return decode(head)
    except ProtocolError as exc:
        return ("ProtocolError", str(exc))


@pytest.mark.skipif(uwsgi._decode_vars_c is None, reason="the C extension is not in use")
@SETTINGS
@given(
    st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=40)), max_size=8),
    st.integers(0, 3),
    st.binary(max_size=8),
)
def test_uwsgi_vars_c_matches_the_reference(
    pairs: list[tuple[bytes, bytes]], cut: int, junk: bytes
) -> None:
    head = uwsgi_block(pairs)
    for candidate in (head, head[: len(head) - cut], head + junk, head[:4] + junk):
        expected = vars_outcome(uwsgi._decode_vars_py, candidate)
        assert vars_outcome(uwsgi._decode_vars_fast, candidate) == expected
        raw = uwsgi._decode_vars_c(candidate, 4)  # type: ignore[misc]
        assert (raw is None) == (type(expected) is tuple and expected[0] == "ProtocolError")


def test_no_header_value_outlives_its_request(c_decode: Callable[[bytes], dict[str, str]]) -> None:
    """The cache keeps the web server's own short values, never a header's.

    A client's cookies, tokens and keys arrive as HTTP_* variables: the string
    decoded for one request must not be the object handed to the next.
    """
    block = r.encode_pairs([(b"REQUEST_METHOD", b"PATCH"), (b"HTTP_X_API_KEY", b"k-3141592")])
    first, second = c_decode(block), c_decode(block)
    assert first == second == r._decode_params_py(block)
    assert first["REQUEST_METHOD"] is second["REQUEST_METHOD"]  # the server's own: kept
    assert first["HTTP_X_API_KEY"] is not second["HTTP_X_API_KEY"]  # a header's: never
    head = uwsgi_block([(b"REQUEST_METHOD", b"PATCH"), (b"HTTP_COOKIE", b"sid=271828")])
    if uwsgi._decode_vars_c is not None:
        one, two = uwsgi._decode_vars_c(head, 4), uwsgi._decode_vars_c(head, 4)
        assert one is not None and two is not None
        assert one[0]["HTTP_COOKIE"] is not two[0]["HTTP_COOKIE"]
        assert one[0]["REQUEST_METHOD"] is two[0]["REQUEST_METHOD"]


# -- the ASGI scope (fcgi.asgi.build_scope) ----------------------------------------

#: What nginx's fastcgi_params sends for ``GET /app/hello?x=1`` with two headers.
NGINX_LIKE = {
    "QUERY_STRING": "x=1",
    "REQUEST_METHOD": "GET",
    "CONTENT_TYPE": "",
    "CONTENT_LENGTH": "",
    "SCRIPT_NAME": "/app",
    "REQUEST_URI": "/app/hello?x=1",
    "DOCUMENT_URI": "/app/hello",
    "DOCUMENT_ROOT": "/srv",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REQUEST_SCHEME": "http",
    "GATEWAY_INTERFACE": "CGI/1.1",
    "SERVER_SOFTWARE": "nginx/1.22.1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "40002",
    "SERVER_ADDR": "127.0.0.1",
    "SERVER_PORT": "8080",
    "SERVER_NAME": "localhost",
    "PATH_INFO": "/hello",
    "HTTP_HOST": "localhost:8080",
    "HTTP_USER_AGENT": "wrk",
}

#: Names the scope reads, the body's HTTP_ twins, and others.
scope_names = st.sampled_from(
    [
        *sorted(NGINX_LIKE),
        "HTTPS",
        "HTTP_CONTENT_TYPE",
        "HTTP_CONTENT_LENGTH",
        "HTTP_X_FORWARDED_FOR",
        "HTTP_",
        "HTTPX",
        "http_host",
        "SERVER_PORT",
    ]
) | st.text(st.characters(max_codepoint=0xFF), max_size=8)
#: Values: each rule's edges (empty, case, ports that int() reads and those it
#: does not, protocols, non-ASCII and non-latin-1 text).
scope_values = st.sampled_from(
    [
        "",
        "/",
        "/a b",
        "/caf\xe9",
        "/\u20ac",
        "get",
        "GET",
        "G\xe9T",
        "on",
        "ON",
        "oN",
        "1",
        "off",
        "https",
        "HTTPS",
        "HTTP/1.0",
        "HTTP/2.0",
        "HTTP/3",
        "HTTP/9",
        "SPDY",
        "80",
        "080",
        "0",
        " 80",
        "8_0",
        "\xb2",
        "1234567890",
        "?",
        "/p?q=1",
        "/p?",
    ]
) | st.text(st.characters(max_codepoint=0x17F), max_size=12)


def scope_outcome(build: Callable[..., object], params: dict[str, str], **kw: object) -> object:
    try:
        scope = build(params, **kw)
    except Exception as exc:  # the two must fail alike too
        return (type(exc).__name__, str(exc))
    assert isinstance(scope, dict)
    # Equal, with the same key order and the same types all the way down.
    return [(key, type(value).__name__, repr(value)) for key, value in scope.items()]


@pytest.mark.skipif(asgi._scope_c is None, reason="the C extension is not in use")
@SETTINGS
@given(st.dictionaries(scope_names, scope_values, max_size=12), st.booleans())
def test_asgi_scope_c_matches_the_reference(params: dict[str, str], warm: bool) -> None:
    params = dict(NGINX_LIKE, **params) if warm else params
    if warm:
        with contextlib.suppress(Exception):  # text that is not latin-1 is refused
            asgi._build_scope_py(params)  # the caches hold this request's names
    expected = scope_outcome(asgi._build_scope_py, params)
    assert asgi._scope_c is not None
    raw = asgi._scope_c(params, asgi._HEADER_NAMES, asgi._HTTP_VERSIONS, asgi._ASGI_INFO)
    if raw is not None:
        assert scope_outcome(lambda p: raw, params) == expected
    assert scope_outcome(asgi.build_scope, params) == expected
    state = {"db": "x"}
    assert scope_outcome(asgi.build_scope, params, state=state) == scope_outcome(
        asgi._build_scope_py, params, state=state
    )
    assert scope_outcome(asgi.build_scope, params, mount="/app") == scope_outcome(
        asgi._build_scope_py, params, mount="/app"
    )


@pytest.mark.skipif(asgi._scope_c is None, reason="the C extension is not in use")
def test_asgi_scope_c_makes_a_web_servers_usual_request() -> None:
    """Not vacuous: what nginx sends is made in C once its names are known, and is its own."""
    asgi._build_scope_py(NGINX_LIKE)
    assert asgi._scope_c is not None
    scope = asgi._scope_c(NGINX_LIKE, asgi._HEADER_NAMES, asgi._HTTP_VERSIONS, asgi._ASGI_INFO)
    assert scope is not None and scope == asgi._build_scope_py(NGINX_LIKE)
    assert scope["headers"] == [(b"host", b"localhost:8080"), (b"user-agent", b"wrk")]
    assert (scope["path"], scope["raw_path"], scope["client"]) == (
        "/app/hello",
        b"/app/hello",
        ("127.0.0.1", 40002),
    )
    # Nothing shared between two requests' scopes but the params' own strings.
    again = asgi.build_scope(NGINX_LIKE)
    assert again["asgi"] is not scope["asgi"] and again["headers"] is not scope["headers"]
    assert again["asgi"] is not asgi._ASGI_INFO
    # Not in the cache yet: the reference makes it (and caches the name).
    fresh = dict(NGINX_LIKE, HTTP_X_NEVER_SEEN_BEFORE="1")
    assert asgi._scope_c(fresh, asgi._HEADER_NAMES, asgi._HTTP_VERSIONS, asgi._ASGI_INFO) is None
    assert (b"x-never-seen-before", b"1") in asgi.build_scope(fresh)["headers"]


def test_a_repeated_name_does_not_make_a_huge_params_dict(
    c_decode: Callable[[bytes], dict[str, str]],
) -> None:
    """The C decoder's dict grows with its entries, not with the pairs sent (hostile review).

    256 KiB of one 1-byte name repeated is one entry: ``max_params`` counts
    entries, so only the dict's size can tell. Sized to the pair count, as
    an attempt at presizing had it, it held 2.6 MB for the whole request,
    where a dict of one entry takes a few hundred bytes.
    """
    block = b"\x01\x00A" * (256 * 1024 // 3)
    params = c_decode(block)
    assert params == {"A": ""}
    assert sys.getsizeof(params) < 16 * 1024
