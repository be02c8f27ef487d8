"""Unit tests for the FastCGI 1.0 wire format in :mod:`fcgi.records`."""

from __future__ import annotations

import re
import struct

import pytest
import rawfcgi

from fcgi import records as r
from fcgi.errors import ProtocolError


def split_records(data: bytes) -> list[tuple[int, int, int, bytes, int]]:
    """Parse a byte string into (version, type, id, content, padding) tuples, strictly.

    The walking is the tests' one record splitter (rawfcgi), which refuses any
    version but 1 and bytes left over: the version is always 1 here.
    """
    return [(r.VERSION_1, *rec) for rec in rawfcgi.split_records(data)]


# -- constants ---------------------------------------------------------------


def test_record_type_values_match_the_spec() -> None:
    assert [t.value for t in r.RecordType] == list(range(1, 12))
    assert r.RecordType.BEGIN_REQUEST == r.BEGIN_REQUEST == 1
    assert r.RecordType.ABORT_REQUEST == r.ABORT_REQUEST == 2
    assert r.RecordType.END_REQUEST == r.END_REQUEST == 3
    assert r.RecordType.PARAMS == r.PARAMS == 4
    assert r.RecordType.STDIN == r.STDIN == 5
    assert r.RecordType.STDOUT == r.STDOUT == 6
    assert r.RecordType.STDERR == r.STDERR == 7
    assert r.RecordType.DATA == r.DATA == 8
    assert r.RecordType.GET_VALUES == r.GET_VALUES == 9
    assert r.RecordType.GET_VALUES_RESULT == r.GET_VALUES_RESULT == 10
    assert r.RecordType.UNKNOWN_TYPE == r.UNKNOWN_TYPE == 11


def test_role_and_status_values_match_the_spec() -> None:
    assert (r.Role.RESPONDER, r.Role.AUTHORIZER, r.Role.FILTER) == (1, 2, 3)
    assert (
        r.ProtocolStatus.REQUEST_COMPLETE,
        r.ProtocolStatus.CANT_MPX_CONN,
        r.ProtocolStatus.OVERLOADED,
        r.ProtocolStatus.UNKNOWN_ROLE,
    ) == (0, 1, 2, 3)
    assert r.KEEP_CONN == 1
    assert r.VERSION_1 == 1
    assert r.HEADER_LEN == 8
    assert r.LISTENSOCK_FILENO == 0


def test_struct_sizes() -> None:
    assert r.HEADER.size == 8
    assert r.BEGIN_REQUEST_BODY.size == 8
    assert r.END_REQUEST_BODY.size == 8
    assert r.UNKNOWN_TYPE_BODY.size == 8


# -- header and padding ----------------------------------------------------------


def test_header_layout_is_big_endian() -> None:
    rec = r.encode_record(r.STDOUT, 0x0102, b"x" * 0x0304)
    assert rec[:8] == bytes([1, 6, 0x01, 0x02, 0x03, 0x04, 4, 0])
    assert len(rec) == 8 + 0x0304 + 4


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 15, 16, 100, 65527, 65528, 65535])
def test_output_is_padded_to_eight_bytes(length: int) -> None:
    rec = r.encode_record(r.STDIN, 1, b"a" * length)
    assert len(rec) % 8 == 0
    ((version, rtype, rid, content, plen),) = split_records(rec)
    assert (version, rtype, rid) == (1, r.STDIN, 1)
    assert content == b"a" * length
    assert plen == -length & 7
    # padding bytes are zero
    assert rec[8 + length :] == bytes(plen)


def test_empty_record_is_just_a_header() -> None:
    assert r.encode_record(r.PARAMS, 7) == bytes([1, 4, 0, 7, 0, 0, 0, 0])


def test_record_content_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        r.encode_record(r.STDOUT, 1, bytes(65536))


def test_request_id_full_range() -> None:
    rec = r.encode_record(r.STDOUT, 0xFFFF, b"")
    assert rec[2:4] == b"\xff\xff"


# -- streams -----------------------------------------------------------------------


def test_stream_of_nothing_is_empty() -> None:
    assert r.encode_stream(r.STDOUT, 1, b"") == b""


def test_small_stream_is_one_record() -> None:
    data = r.encode_stream(r.STDOUT, 3, b"hello")
    assert split_records(data) == [(1, r.STDOUT, 3, b"hello", 3)]


@pytest.mark.parametrize(
    "length",
    [65535, 65536, 65528 * 2, 65528 * 2 + 1, 65528 * 3 - 1, 200_000, 1 << 20],
)
def test_large_stream_is_split_into_several_records(length: int) -> None:
    payload = bytes(i % 251 for i in range(length))
    data = r.encode_stream(r.STDOUT, 2, payload)
    recs = split_records(data)
    assert all(rec[0] == 1 and rec[1] == r.STDOUT and rec[2] == 2 for rec in recs)
    assert all(0 < len(rec[3]) <= r.MAX_CONTENT_LEN for rec in recs)
    assert b"".join(rec[3] for rec in recs) == payload
    assert len(data) % 8 == 0
    if length > r.MAX_CONTENT_LEN:
        assert len(recs) >= 2
    # every record but possibly the last needs no padding
    assert all(rec[4] == 0 for rec in recs[:-1])


def test_stream_has_no_terminator() -> None:
    recs = split_records(r.encode_stream(r.STDERR, 1, b"x" * 70000))
    assert all(rec[3] for rec in recs)


# -- fixed bodies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "keep_conn", "body"),
    [
        (r.Role.RESPONDER, False, b"\x00\x01\x00\x00\x00\x00\x00\x00"),
        (r.Role.RESPONDER, True, b"\x00\x01\x01\x00\x00\x00\x00\x00"),
        (r.Role.AUTHORIZER, False, b"\x00\x02\x00\x00\x00\x00\x00\x00"),
        (r.Role.FILTER, True, b"\x00\x03\x01\x00\x00\x00\x00\x00"),
        (0x1234, False, b"\x12\x34\x00\x00\x00\x00\x00\x00"),
    ],
)
def test_begin_request(role: int, keep_conn: bool, body: bytes) -> None:
    rec = r.encode_begin_request(5, role, keep_conn)
    assert split_records(rec) == [(1, r.BEGIN_REQUEST, 5, body, 0)]
    assert r.BEGIN_REQUEST_BODY.unpack(body) == (role, 1 if keep_conn else 0)


def test_begin_request_defaults() -> None:
    assert r.encode_begin_request(1) == r.encode_begin_request(1, r.Role.RESPONDER, False)


@pytest.mark.parametrize(
    ("app_status", "status", "body"),
    [
        (0, r.ProtocolStatus.REQUEST_COMPLETE, bytes(8)),
        (938, r.ProtocolStatus.REQUEST_COMPLETE, b"\x00\x00\x03\xaa\x00\x00\x00\x00"),
        (0, r.ProtocolStatus.CANT_MPX_CONN, b"\x00\x00\x00\x00\x01\x00\x00\x00"),
        (0, r.ProtocolStatus.OVERLOADED, b"\x00\x00\x00\x00\x02\x00\x00\x00"),
        (0, r.ProtocolStatus.UNKNOWN_ROLE, b"\x00\x00\x00\x00\x03\x00\x00\x00"),
        (0xFFFFFFFF, 0, b"\xff\xff\xff\xff\x00\x00\x00\x00"),
        (-1, 0, b"\xff\xff\xff\xff\x00\x00\x00\x00"),
    ],
)
def test_end_request(app_status: int, status: int, body: bytes) -> None:
    rec = r.encode_end_request(9, app_status, status)
    assert split_records(rec) == [(1, r.END_REQUEST, 9, body, 0)]


def test_end_request_defaults() -> None:
    assert r.encode_end_request(1) == r.encode_end_request(1, 0, 0)


def test_unknown_type() -> None:
    rec = r.encode_unknown_type(200)
    assert split_records(rec) == [(1, r.UNKNOWN_TYPE, 0, b"\xc8" + bytes(7), 0)]


def test_abort_request_and_get_values_records() -> None:
    assert split_records(r.encode_record(r.ABORT_REQUEST, 4)) == [(1, r.ABORT_REQUEST, 4, b"", 0)]
    body = r.encode_pairs([(b"FCGI_MAX_CONNS", b"")])
    assert split_records(r.encode_record(r.GET_VALUES, 0, body)) == [
        (1, r.GET_VALUES, 0, body, -len(body) & 7)
    ]
    result = r.encode_pairs([(b"FCGI_MAX_CONNS", b"10")])
    assert r.decode_pairs(split_records(r.encode_record(r.GET_VALUES_RESULT, 0, result))[0][3]) == [
        (b"FCGI_MAX_CONNS", b"10")
    ]


# -- name-value pairs --------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x00\x00\x80"),
        (1000, b"\x80\x00\x03\xe8"),
        (33554431, b"\x81\xff\xff\xff"),
    ],
)
def test_length_vectors(length: int, encoded: bytes) -> None:
    # An empty value keeps the vector visible as the prefix of the pair.
    pair = r.encode_pairs([(b"n" * length, b"")])
    assert pair[: len(encoded)] == encoded
    assert pair[len(encoded)] == 0
    assert len(pair) == len(encoded) + 1 + length
    if length <= 1000:
        assert r.decode_pairs(pair) == [(b"n" * length, b"")]


def test_length_vectors_decode_without_building_huge_pairs() -> None:
    # 33554431 decodes as a length: a block that claims it but stops short is refused.
    with pytest.raises(ProtocolError, match="claims 33554431"):
        r.decode_pairs(b"\x81\xff\xff\xff\x00abc")


@pytest.mark.parametrize(
    ("name_len", "value_len", "header"),
    [
        (3, 5, b"\x03\x05"),
        (3, 300, b"\x03\x80\x00\x01\x2c"),
        (300, 5, b"\x80\x00\x01\x2c\x05"),
        (200, 300, b"\x80\x00\x00\xc8\x80\x00\x01\x2c"),
    ],
)
def test_pair_length_combinations(name_len: int, value_len: int, header: bytes) -> None:
    name, value = b"N" * name_len, b"v" * value_len
    encoded = r.encode_pairs([(name, value)])
    assert encoded == header + name + value
    assert r.decode_pairs(encoded) == [(name, value)]


def test_four_byte_length_with_small_value_is_accepted() -> None:
    # A sender may use the long form for a short length.
    assert r.decode_pairs(b"\x80\x00\x00\x01\x80\x00\x00\x02abc") == [(b"a", b"bc")]


def test_encode_pairs_accepts_mapping_and_iterable() -> None:
    mapping = {b"A": b"1", b"B": b"22"}
    assert r.encode_pairs(mapping) == r.encode_pairs(list(mapping.items()))
    assert r.encode_pairs(mapping) == b"\x01\x01A1\x01\x02B22"
    assert r.encode_pairs([]) == b""


def test_encode_pairs_refuses_lengths_over_31_bits() -> None:
    with pytest.raises(ValueError, match="31 bits"):
        r._encode_length(0x80000000)


def test_decode_pairs_keeps_order_and_duplicates() -> None:
    data = r.encode_pairs([(b"A", b"1"), (b"B", b""), (b"A", b"2")])
    assert r.decode_pairs(data) == [(b"A", b"1"), (b"B", b""), (b"A", b"2")]
    assert r.decode_pairs(bytearray(data)) == r.decode_pairs(memoryview(data))


def test_decode_params_is_latin1_and_last_wins() -> None:
    data = r.encode_pairs([(b"A", b"1"), (b"X", b"\xe9\xff\x00"), (b"A", b"2")])
    assert r.decode_params(data) == {"A": "2", "X": "\xe9\xff\x00"}
    assert r.decode_params(b"") == {}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80", "inside a 4-byte name length"),
        (b"\x80\x00\x00", "inside a 4-byte name length"),
        (b"\x01", "before its value length"),
        (b"\x80\x00\x00\x01", "before its value length"),
        (b"\x01\x80\x00", "inside a 4-byte value length"),
        (b"\x01\x01a", "claims 1+1 bytes but only 1 remain"),
        (b"\x05\x00abc", "claims 5+0"),
        (b"\x01\x01ab\x02", "before its value length"),
        (b"\xff\xff\xff\xff\xff\xff\xff\xff", "claims 2147483647+2147483647"),
    ],
)
def test_decode_pairs_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)):
        r.decode_pairs(data)
    with pytest.raises(ProtocolError):
        r.decode_params(data)


def test_encode_params_includes_terminator() -> None:
    data = r.encode_params(1, {b"SCRIPT_NAME": b"/x"})
    recs = split_records(data)
    assert [rec[1] for rec in recs] == [r.PARAMS, r.PARAMS]
    assert recs[-1][3] == b""
    assert r.decode_pairs(recs[0][3]) == [(b"SCRIPT_NAME", b"/x")]


def test_encode_params_empty_is_just_terminator() -> None:
    assert r.encode_params(1, {}) == r.encode_record(r.PARAMS, 1)


def test_encode_params_splits_large_blocks() -> None:
    params = {f"N{i}".encode(): b"v" * 1000 for i in range(100)}
    recs = split_records(r.encode_params(3, params))
    assert len(recs) >= 3
    assert recs[-1][3] == b""
    assert dict(r.decode_pairs(b"".join(rec[3] for rec in recs))) == params


def test_struct_layout_of_header_matches_manual_pack() -> None:
    assert r.HEADER.pack(1, 2, 3, 4, 5) == struct.pack(">BBHHBB", 1, 2, 3, 4, 5, 0)
