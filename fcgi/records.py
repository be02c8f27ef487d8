"""FastCGI 1.0 wire format: record headers, fixed bodies and name-value pairs.

Pure functions over bytes. The connection state machine (:mod:`fcgi.connection`)
and the client side (:mod:`fcgi.client_connection`) are both built on these, so the byte layout
lives in exactly one place.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Mapping
from enum import IntEnum
from typing import Final

from fcgi.errors import ProtocolError

VERSION_1: Final = 1
HEADER_LEN: Final = 8
MAX_CONTENT_LEN: Final = 0xFFFF
#: Largest payload that still needs no padding to stay 8-byte aligned.
MAX_ALIGNED_CONTENT_LEN: Final = 0xFFF8
#: The descriptor on which a web server hands the app its listening socket (spec 2.2).
LISTENSOCK_FILENO: Final = 0
KEEP_CONN: Final = 1


class RecordType(IntEnum):
    BEGIN_REQUEST = 1
    ABORT_REQUEST = 2
    END_REQUEST = 3
    PARAMS = 4
    STDIN = 5
    STDOUT = 6
    STDERR = 7
    DATA = 8
    GET_VALUES = 9
    GET_VALUES_RESULT = 10
    UNKNOWN_TYPE = 11


class Role(IntEnum):
    RESPONDER = 1
    AUTHORIZER = 2
    FILTER = 3


class ProtocolStatus(IntEnum):
    REQUEST_COMPLETE = 0
    CANT_MPX_CONN = 1
    OVERLOADED = 2
    UNKNOWN_ROLE = 3


# Plain ints for the hot path: comparing against an IntEnum member costs an
# attribute lookup on the enum class every time.
BEGIN_REQUEST: Final = 1
ABORT_REQUEST: Final = 2
END_REQUEST: Final = 3
PARAMS: Final = 4
STDIN: Final = 5
STDOUT: Final = 6
STDERR: Final = 7
DATA: Final = 8
GET_VALUES: Final = 9
GET_VALUES_RESULT: Final = 10
UNKNOWN_TYPE: Final = 11

HEADER: Final = struct.Struct("!BBHHBx")
#: ``HEADER.pack``, bound once: compiled code calling ``HEADER.pack`` looks the
#: method up each time. The record header's one packer, here and in the cores.
pack_header: Final = HEADER.pack
BEGIN_REQUEST_BODY: Final = struct.Struct("!HB5x")
END_REQUEST_BODY: Final = struct.Struct("!LB3x")
UNKNOWN_TYPE_BODY: Final = struct.Struct("!B7x")
_LEN4: Final = struct.Struct("!L")

_PADDING: Final = bytes(8)

HeadScan = tuple[int, int, int, dict[str, str], int, int]


def encode_record(record_type: int, request_id: int, content: bytes = b"") -> bytes:
    """One record, padded to a multiple of 8 bytes as the spec recommends."""
    length = len(content)
    if length > MAX_CONTENT_LEN:
        raise ValueError(f"record content of {length} bytes exceeds {MAX_CONTENT_LEN}")
    pad = -length & 7
    return pack_header(VERSION_1, record_type, request_id, length, pad) + content + _PADDING[:pad]


def stream_buffers(record_type: int, request_id: int, data: bytes) -> list[bytes | memoryview]:
    """``data`` as records, without the empty terminator, as buffers for writev.

    The payload is not copied: large streams go out as headers interleaved
    with memoryview slices of ``data``.
    """
    length = len(data)
    if length <= MAX_CONTENT_LEN:
        if not length:
            return []
        pad = -length & 7
        head = pack_header(VERSION_1, record_type, request_id, length, pad)
        return [head, data, _PADDING[:pad]] if pad else [head, data]
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    step = MAX_ALIGNED_CONTENT_LEN
    header = pack_header(VERSION_1, record_type, request_id, step, 0)
    tail_start = (length - 1) // step * step
    for start in range(0, tail_start, step):
        parts.append(header)
        parts.append(view[start : start + step])
    tail = length - tail_start
    pad = -tail & 7
    parts.append(pack_header(VERSION_1, record_type, request_id, tail, pad))
    parts.append(view[tail_start:])
    if pad:
        parts.append(_PADDING[:pad])
    return parts


def encode_stream(record_type: int, request_id: int, data: bytes) -> bytes:
    """``data`` as as many records as it needs, without the empty terminator."""
    return b"".join(stream_buffers(record_type, request_id, data))


def encode_begin_request(
    request_id: int, role: int = Role.RESPONDER, keep_conn: bool = False
) -> bytes:
    body = BEGIN_REQUEST_BODY.pack(role, KEEP_CONN if keep_conn else 0)
    return encode_record(BEGIN_REQUEST, request_id, body)


def encode_end_request(
    request_id: int, app_status: int = 0, protocol_status: int = ProtocolStatus.REQUEST_COMPLETE
) -> bytes:
    body = END_REQUEST_BODY.pack(app_status & 0xFFFFFFFF, protocol_status)
    return encode_record(END_REQUEST, request_id, body)


def encode_unknown_type(record_type: int) -> bytes:
    return encode_record(UNKNOWN_TYPE, 0, UNKNOWN_TYPE_BODY.pack(record_type))


def _encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    if length > 0x7FFFFFFF:
        raise ValueError(f"name-value length {length} does not fit in 31 bits")
    return _LEN4.pack(length | 0x80000000)


def encode_pairs(pairs: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> bytes:
    """Name-value pairs with 1-byte lengths up to 127 and 4-byte lengths above."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    out = bytearray()
    for name, value in items:
        out += _encode_length(len(name))
        out += _encode_length(len(value))
        out += name
        out += value
    return bytes(out)


def encode_params(
    request_id: int, params: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]
) -> bytes:
    """A whole PARAMS stream, terminator included."""
    return encode_stream(PARAMS, request_id, encode_pairs(params)) + encode_record(
        PARAMS, request_id
    )


def _pair_spans(buf: bytes) -> list[int]:
    """Offsets ``name_start, value_start, value_end`` of each pair, flattened.

    Raises :class:`ProtocolError` if a length runs past the end of ``buf``; it
    allocates nothing proportional to what the lengths claim.
    """
    end = len(buf)
    pos = 0
    spans: list[int] = []
    unpack = _LEN4.unpack_from
    while pos < end:
        name_len = buf[pos]
        if name_len < 0x80:
            pos += 1
        elif pos + 4 <= end:
            name_len = unpack(buf, pos)[0] & 0x7FFFFFFF
            pos += 4
        else:
            raise ProtocolError("name-value pair truncated inside a 4-byte name length")
        if pos >= end:
            raise ProtocolError("name-value pair truncated before its value length")
        value_len = buf[pos]
        if value_len < 0x80:
            pos += 1
        elif pos + 4 <= end:
            value_len = unpack(buf, pos)[0] & 0x7FFFFFFF
            pos += 4
        else:
            raise ProtocolError("name-value pair truncated inside a 4-byte value length")
        stop = pos + name_len + value_len
        if stop > end:
            raise ProtocolError(
                f"name-value pair claims {name_len}+{value_len} bytes but only {end - pos} remain"
            )
        spans += (pos, pos + name_len, stop)
        pos = stop
    return spans


def decode_pairs(data: bytes | bytearray | memoryview) -> list[tuple[bytes, bytes]]:
    """Decode a complete name-value pair block into byte strings."""
    buf = bytes(data)
    spans = _pair_spans(buf)
    return [
        (buf[spans[i] : spans[i + 1]], buf[spans[i + 1] : spans[i + 2]])
        for i in range(0, len(spans), 3)
    ]


def _decode_params_py(data: bytes) -> dict[str, str]:
    """Decode a PARAMS block into latin-1 native strings (PEP 3333), last name wins.

    Latin-1 maps each byte to one code point, so the whole block is decoded once
    and sliced at the byte offsets. This is the hottest loop of a request, hence
    one pass with the common 1-byte lengths first.
    """
    text = data.decode("latin-1")
    end = len(data)
    pos = 0
    params: dict[str, str] = {}
    unpack = _LEN4.unpack_from
    try:
        while pos < end:
            name_len = data[pos]
            if name_len < 0x80:
                pos += 1
            else:
                name_len = unpack(data, pos)[0] & 0x7FFFFFFF
                pos += 4
            value_len = data[pos]
            if value_len < 0x80:
                pos += 1
            else:
                value_len = unpack(data, pos)[0] & 0x7FFFFFFF
                pos += 4
            value_start = pos + name_len
            stop = value_start + value_len
            if stop > end:
                break
            params[text[pos:value_start]] = text[value_start:stop]
            pos = stop
        else:
            return params
    except (IndexError, struct.error):
        pass
    # Report precisely what was wrong.
    _pair_spans(data)
    raise ProtocolError("malformed name-value pairs")  # pragma: no cover - _pair_spans raises


_decode_params_c: Callable[[bytes | bytearray | memoryview], dict[str, str] | None] | None
_scan_head_c: Callable[[bytes | bytearray | memoryview], HeadScan | None] | None
try:
    from fcgi._speedups import decode_params as _decode_params_c
    from fcgi._speedups import scan_head as _scan_head_c
except ImportError:  # built without the extension (no compiler, FCGI_NO_EXTENSIONS=1)
    _decode_params_c = _scan_head_c = None

#: Whether :func:`decode_params` runs the C version (``fcgi._speedups``). It is
#: False where the extension was not built, or with ``FCGI_PURE_PYTHON=1`` in the
#: environment when this module is first imported.
SPEEDUPS: Final[bool] = _decode_params_c is not None and os.environ.get("FCGI_PURE_PYTHON") != "1"


def _decode_params_fast(data: bytes | bytearray | memoryview) -> dict[str, str]:
    """Decode a PARAMS block into latin-1 native strings (PEP 3333), last name wins.

    The C version of :func:`_decode_params_py`; on malformed input it returns
    None instead of guessing, and the precise error comes from the same code.
    """
    # Bound as decode_params only when _decode_params_c is not None.
    params = _decode_params_c(data)  # type: ignore[misc]
    if params is None:
        _pair_spans(bytes(data))
        raise ProtocolError("malformed name-value pairs")  # pragma: no cover - _pair_spans raises
    return params


# Chosen once here, so a request pays for one C call and one ``is None`` test.
decode_params = _decode_params_fast if SPEEDUPS else _decode_params_py

#: A request head found whole by the C scanner: request id, role, flags, the
#: decoded PARAMS, their length in bytes, and the offset just past the empty
#: PARAMS record. See :meth:`fcgi.connection.ServerConnection._whole_head`,
#: the one place that applies the protocol's rules to it.
#:
#: None on the pure-Python path: there is no Python twin, because the
#: connection's record loop *is* the reference it is checked against
#: (tests/test_fastpath.py feeds both the same generated streams).
scan_head = _scan_head_c if SPEEDUPS else None
