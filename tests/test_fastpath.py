"""The compiled fast path against the pure-Python reference, on generated input.

``fcgi._speedups`` may only make things faster: fed the same bytes, split the
same way, a :class:`~fcgi.connection.ServerConnection` with the C head scanner
and one without it must produce the same events, the same bytes for the web
server, the same ``should_close`` and the same errors. Hypothesis builds the
streams: well-formed request heads in every shape nginx, Apache and a hostile
peer can send, and the same heads bent (refused roles, PARAMS over the limits,
malformed pairs, a CONTENT_LENGTH over max_body_size, other records in
between, truncations, bit flips).
"""

from __future__ import annotations

import dataclasses

import pytest
from core_trace import feed_and_answer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcgi import connection
from fcgi import records as r
from fcgi.connection import Limits, ServerConnection

pytestmark = pytest.mark.skipif(
    r.scan_head is None, reason="the C extension is not in use (FCGI_PURE_PYTHON=1 or not built)"
)

SETTINGS = settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])

names = st.sampled_from(
    [b"REQUEST_METHOD", b"CONTENT_LENGTH", b"SCRIPT_NAME", b"HTTP_HOST", b"A", b""]
)
values = st.one_of(
    st.sampled_from([b"GET", b"POST", b"0", b"12", b"99999999999", b" 7 ", b"x"]),
    st.binary(max_size=140),
)
pairs = st.lists(st.tuples(st.one_of(names, st.binary(max_size=140)), values), max_size=8)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """One request's records, mostly well formed, sometimes bent."""
    rid = draw(st.sampled_from([1, 1, 2, 0, 65535]))
    role = draw(st.sampled_from([1, 1, 1, 2, 3, 7]))
    keep = draw(st.booleans())
    block = r.encode_pairs(draw(pairs))
    if draw(st.integers(0, 9)) == 0 and block:  # malformed pairs: a cut length
        block = block[: draw(st.integers(0, len(block) - 1))] + b"\xff"
    # The PARAMS stream in one record or several (a pair may straddle them).
    cuts = sorted(draw(st.lists(st.integers(0, len(block)), max_size=3)))
    pieces = [block[a:b] for a, b in zip([0, *cuts], [*cuts, len(block)], strict=True)]
    out = r.encode_begin_request(rid, role, keep)
    if draw(st.integers(0, 9)) == 0:  # a BEGIN_REQUEST body of the wrong size
        out = r.encode_record(r.BEGIN_REQUEST, rid, bytes(draw(st.integers(0, 12))))
    params_rid = rid if draw(st.integers(0, 9)) else draw(st.integers(0, 3))
    for piece in pieces:
        if piece:
            out += r.encode_record(r.PARAMS, params_rid, piece)
        if draw(st.integers(0, 14)) == 0:  # another record in the middle
            out += r.encode_record(draw(st.integers(0, 12)), draw(st.integers(0, 2)), b"\0" * 8)
    out += r.encode_record(r.PARAMS, params_rid)
    out += r.encode_record(r.STDIN, rid, draw(st.binary(max_size=20)))
    out += r.encode_record(r.STDIN, rid)
    return out


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    data = b"".join(draw(st.lists(heads(), min_size=1, max_size=3)))
    if draw(st.integers(0, 5)) == 0 and data:  # a bit flip anywhere
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    if draw(st.integers(0, 5)) == 0:  # truncated
        data = data[: draw(st.integers(0, len(data)))]
    splits = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    return data, splits


limits = st.builds(
    Limits,
    max_active_ids=st.sampled_from([1, 1, 2]),
    max_params=st.sampled_from([1000, 2]),
    max_params_bytes=st.sampled_from([256 * 1024, 40]),
    max_body_size=st.sampled_from([512 * 1024 * 1024, 10, 0]),
    roles=st.sampled_from([(1, 2, 3), (1,)]),
)


def run(data: bytes, splits: list[int], lim: Limits, fast: bool) -> list[object]:
    """Feed ``data`` in pieces; a trace of everything observable, ending at any error."""
    saved = connection._scan_head
    connection._scan_head = r.scan_head if fast else None
    try:
        return feed_and_answer(ServerConnection(dataclasses.replace(lim)), data, splits)
    finally:
        connection._scan_head = saved


@SETTINGS
@given(streams(), limits)
def test_fast_path_matches_the_record_loop(stream: tuple[bytes, list[int]], lim: Limits) -> None:
    data, splits = stream
    assert run(data, splits, lim, fast=True) == run(data, splits, lim, fast=False)


@SETTINGS
@given(st.lists(heads(), min_size=1, max_size=2), limits)
def test_whole_heads_in_one_read(parts: list[bytes], lim: Limits) -> None:
    """The case the scanner is for: every head arrives in one read."""
    data = b"".join(parts)
    assert run(data, [], lim, fast=True) == run(data, [], lim, fast=False)


def test_the_fast_path_is_taken() -> None:
    """Not vacuous: an ordinary head really goes through the C scanner."""
    data = (
        r.encode_begin_request(1, r.Role.RESPONDER, True)
        + r.encode_params(1, {b"REQUEST_METHOD": b"GET"})
        + r.encode_record(r.STDIN, 1)
    )
    assert r.scan_head is not None
    scanned = r.scan_head(data)
    assert scanned is not None
    assert scanned[:3] == (1, 1, 1)
    assert scanned[3] == {"REQUEST_METHOD": "GET"}
    assert scanned[5] == len(data) - r.HEADER_LEN
