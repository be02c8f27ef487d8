"""An independent FastCGI client (the web-server side) for the conformance suite.

Deliberately imports nothing from :mod:`fcgi`: if the server's record layer and this
client shared code, a bug in that code could cancel itself out and go unnoticed.
Everything here is built so that a test can misbehave on purpose: records can be
padded oddly, split anywhere, delivered byte by byte or interleaved across ids.
"""

from __future__ import annotations

# Not built on fcgi.client_connection.ClientConnection, which fcgi request, the tests'
# rawfcgi and the benchmark's checker share: an oracle must not share the code it judges.
import socket
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

VERSION_1 = 1
HEADER_LEN = 8
MAX_CONTENT = 0xFFFF

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

RESPONDER = 1
AUTHORIZER = 2
FILTER = 3

KEEP_CONN = 1

REQUEST_COMPLETE = 0
CANT_MPX_CONN = 1
OVERLOADED = 2
UNKNOWN_ROLE = 3

TYPE_NAMES = {
    BEGIN_REQUEST: "BEGIN_REQUEST",
    ABORT_REQUEST: "ABORT_REQUEST",
    END_REQUEST: "END_REQUEST",
    PARAMS: "PARAMS",
    STDIN: "STDIN",
    STDOUT: "STDOUT",
    STDERR: "STDERR",
    DATA: "DATA",
    GET_VALUES: "GET_VALUES",
    GET_VALUES_RESULT: "GET_VALUES_RESULT",
    UNKNOWN_TYPE: "UNKNOWN_TYPE",
}

PROTOCOL_STATUS_NAMES = {
    REQUEST_COMPLETE: "REQUEST_COMPLETE",
    CANT_MPX_CONN: "CANT_MPX_CONN",
    OVERLOADED: "OVERLOADED",
    UNKNOWN_ROLE: "UNKNOWN_ROLE",
}

_HEADER = struct.Struct("!BBHHBB")
_BEGIN_BODY = struct.Struct("!HB5x")
_END_BODY = struct.Struct("!IB3x")

Address = str | tuple[str, int]
Params = Sequence[tuple[bytes | str, bytes | str]]


class ProtocolViolation(Exception):
    """The server sent bytes that are not valid FastCGI."""


class ServerTimeout(Exception):
    """The server did not answer before the deadline (a hang counts as a failure)."""


# --------------------------------------------------------------------------- encoding


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def record(
    rtype: int,
    request_id: int,
    content: bytes = b"",
    padding: int | None = None,
    version: int = VERSION_1,
) -> bytes:
    """Encode one record; padding defaults to the spec's recommended 8-byte alignment."""
    if len(content) > MAX_CONTENT:
        raise ValueError("record content longer than 65535 bytes")
    if padding is None:
        padding = -len(content) % 8
    header = _HEADER.pack(version, rtype, request_id, len(content), padding, 0)
    return header + content + b"\x00" * padding


def encode_length(n: int, force_long: bool = False) -> bytes:
    """Name/value length: one byte up to 127, else four bytes with the high bit set."""
    if n < 0 or n > 0x7FFFFFFF:
        raise ValueError(f"length out of range: {n}")
    if n <= 127 and not force_long:
        return bytes([n])
    return struct.pack("!I", n | 0x80000000)


def encode_pair(name: bytes | str, value: bytes | str) -> bytes:
    nb, vb = _b(name), _b(value)
    return encode_length(len(nb)) + encode_length(len(vb)) + nb + vb


def encode_pairs(pairs: Params) -> bytes:
    return b"".join(encode_pair(n, v) for n, v in pairs)


def decode_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """Decode a complete name/value pair stream; raises ProtocolViolation on overrun."""
    out: list[tuple[bytes, bytes]] = []
    pos = 0

    def length() -> int:
        nonlocal pos
        if pos >= len(data):
            raise ProtocolViolation("truncated name/value length")
        if data[pos] & 0x80:
            if pos + 4 > len(data):
                raise ProtocolViolation("truncated 4-byte name/value length")
            (n,) = struct.unpack_from("!I", data, pos)
            pos += 4
            return int(n) & 0x7FFFFFFF
        pos += 1
        return data[pos - 1]

    while pos < len(data):
        nlen = length()
        vlen = length()
        if pos + nlen + vlen > len(data):
            raise ProtocolViolation("name/value pair overruns its record")
        name = data[pos : pos + nlen]
        pos += nlen
        out.append((name, data[pos : pos + vlen]))
        pos += vlen
    return out


def begin_request(request_id: int, role: int = RESPONDER, keep_conn: bool = False) -> bytes:
    return record(BEGIN_REQUEST, request_id, _BEGIN_BODY.pack(role, KEEP_CONN if keep_conn else 0))


def abort_request(request_id: int) -> bytes:
    return record(ABORT_REQUEST, request_id)


def get_values(names: Iterable[bytes | str]) -> bytes:
    return record(GET_VALUES, 0, encode_pairs([(n, b"") for n in names]))


def stream(rtype: int, request_id: int, data: bytes, chunk: int = MAX_CONTENT) -> bytes:
    """A whole stream: data cut into records of at most ``chunk`` bytes, then the empty record."""
    chunk = max(1, min(chunk, MAX_CONTENT))
    parts = [record(rtype, request_id, data[i : i + chunk]) for i in range(0, len(data), chunk)]
    parts.append(record(rtype, request_id))
    return b"".join(parts)


def stream_records(
    rtype: int, request_id: int, data: bytes, chunk: int = MAX_CONTENT
) -> list[bytes]:
    """Like :func:`stream` but one bytes object per record, for interleaving."""
    chunk = max(1, min(chunk, MAX_CONTENT))
    out = [record(rtype, request_id, data[i : i + chunk]) for i in range(0, len(data), chunk)]
    out.append(record(rtype, request_id))
    return out


def build_request(
    request_id: int,
    params: Params,
    stdin: bytes = b"",
    *,
    role: int = RESPONDER,
    keep_conn: bool = False,
    data: bytes | None = None,
    params_chunk: int = MAX_CONTENT,
    stdin_chunk: int = MAX_CONTENT,
) -> bytes:
    """Every record a web server sends for one request, in the usual order."""
    out = begin_request(request_id, role, keep_conn)
    out += stream(PARAMS, request_id, encode_pairs(params), params_chunk)
    out += stream(STDIN, request_id, stdin, stdin_chunk)
    if data is not None:
        out += stream(DATA, request_id, data)
    return out


def default_params(
    path: str = "/echo-environ",
    method: str = "GET",
    query: str = "",
    body_length: int | None = None,
    script_name: str = "",
    extra: Params = (),
) -> list[tuple[bytes | str, bytes | str]]:
    """Params shaped like nginx's stock fastcgi_params plus PATH_INFO."""
    uri = script_name + path + (f"?{query}" if query else "")
    params: list[tuple[bytes | str, bytes | str]] = [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "fcgi-conformance"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "conformance.test"),
        ("SERVER_PORT", "80"),
        ("SERVER_ADDR", "127.0.0.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "54321"),
        ("REQUEST_METHOD", method),
        ("REQUEST_SCHEME", "http"),
        ("REQUEST_URI", uri),
        ("DOCUMENT_URI", script_name + path),
        ("SCRIPT_NAME", script_name),
        ("PATH_INFO", path),
        ("QUERY_STRING", query),
        ("HTTP_HOST", "conformance.test"),
    ]
    if body_length is not None:
        params.append(("CONTENT_LENGTH", str(body_length)))
        params.append(("CONTENT_TYPE", "application/octet-stream"))
    params.extend(extra)
    return params


# --------------------------------------------------------------------------- decoding


@dataclass
class Record:
    version: int
    type: int
    request_id: int
    content: bytes
    padding: int

    def __str__(self) -> str:
        name = TYPE_NAMES.get(self.type, f"type{self.type}")
        return f"{name}(id={self.request_id}, {len(self.content)}B)"

    def end_request(self) -> tuple[int, int]:
        """(appStatus, protocolStatus) of an END_REQUEST body."""
        if len(self.content) != _END_BODY.size:
            raise ProtocolViolation(f"END_REQUEST body is {len(self.content)} bytes, not 8")
        app_status, proto = _END_BODY.unpack(self.content)
        return int(app_status), int(proto)


class RecordParser:
    """Incremental parser: feed any slices of the byte stream, get whole records back."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Record]:
        self._buf += data
        out: list[Record] = []
        while len(self._buf) >= HEADER_LEN:
            version, rtype, rid, clen, plen, _ = _HEADER.unpack_from(self._buf)
            total = HEADER_LEN + clen + plen
            if len(self._buf) < total:
                break
            content = bytes(self._buf[HEADER_LEN : HEADER_LEN + clen])
            del self._buf[:total]
            out.append(Record(version, rtype, rid, content, plen))
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete record still buffered (non-zero at EOF = truncated)."""
        return len(self._buf)


@dataclass
class Response:
    """Everything the server sent for one request id."""

    request_id: int
    records: list[Record] = field(default_factory=list)
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_closed: bool = False
    stderr_closed: bool = False
    app_status: int | None = None
    protocol_status: int | None = None

    @property
    def ended(self) -> bool:
        return self.protocol_status is not None

    def add(self, rec: Record) -> None:
        self.records.append(rec)
        if rec.type == STDOUT:
            if rec.content:
                self.stdout += rec.content
            else:
                self.stdout_closed = True
        elif rec.type == STDERR:
            if rec.content:
                self.stderr += rec.content
            else:
                self.stderr_closed = True
        elif rec.type == END_REQUEST:
            self.app_status, self.protocol_status = rec.end_request()

    def http(self) -> HttpResponse:
        return parse_cgi_response(self.stdout)

    def summary(self) -> str:
        return " ".join(str(r) for r in self.records[:12]) + (
            " ..." if len(self.records) > 12 else ""
        )


@dataclass
class HttpResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def parse_cgi_response(data: bytes) -> HttpResponse:
    """Split CGI-style output into status, headers and body (status from ``Status:``)."""
    sep = data.find(b"\r\n\r\n")
    seplen = 4
    alt = data.find(b"\n\n")
    if sep < 0 or (0 <= alt < sep):
        sep, seplen = alt, 2
    if sep < 0:
        raise ProtocolViolation(f"no end of CGI headers in {data[:80]!r}")
    head, body = data[:sep], data[sep + seplen :]
    headers: list[tuple[str, str]] = []
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        if not line:
            continue
        if b":" not in line:
            raise ProtocolViolation(f"malformed CGI header line {line[:80]!r}")
        raw_name, raw_value = line.split(b":", 1)
        headers.append((raw_name.decode("latin-1").strip(), raw_value.decode("latin-1").strip()))
    status, reason = 200, "OK"
    for name, value in headers:
        if name.lower() == "status":
            code, _, reason = value.partition(" ")
            status = int(code)
    return HttpResponse(status, reason, headers, body)


# --------------------------------------------------------------------------- transport


def parse_address(text: str) -> Address:
    """``unix:/p``, ``/p`` or a path containing ``/`` → unix path; ``host:port`` → TCP."""
    if text.startswith("unix:"):
        return text[5:]
    if "/" in text:
        return text
    host, _, port = text.rpartition(":")
    return (host.strip("[]") or "127.0.0.1", int(port))


class Connection:
    """One transport connection to the server, with deadline-bounded reads."""

    def __init__(self, address: Address, timeout: float = 5.0) -> None:
        self.timeout = timeout
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(address)
        except BaseException:
            self.sock.close()
            raise
        self._parser = RecordParser()
        self._queue: list[Record] = []
        self.eof = False
        self.received: list[Record] = []

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes, split: int | None = None, pause: float = 0.0) -> None:
        """Send ``data``; with ``split`` every send() carries at most that many bytes."""
        self.sock.settimeout(self.timeout)  # reads shrink it to their remaining deadline
        if not split:
            self.sock.sendall(data)
            return
        for i in range(0, len(data), split):
            self.sock.sendall(data[i : i + split])
            if pause:
                time.sleep(pause)

    def send_pieces(self, pieces: Iterable[bytes]) -> None:
        self.sock.settimeout(self.timeout)
        for piece in pieces:
            self.sock.sendall(piece)

    def _fill(self, deadline: float) -> bool:
        """Read once; False at EOF. Raises ServerTimeout past the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerTimeout("no data from server before deadline")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError as exc:
            raise ServerTimeout("no data from server before deadline") from exc
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            if self._parser.pending:
                raise ProtocolViolation(
                    f"connection closed inside a record ({self._parser.pending} bytes pending)"
                )
            return False
        recs = self._parser.feed(data)
        self._queue.extend(recs)
        self.received.extend(recs)
        return True

    def recv_record(self, timeout: float | None = None) -> Record | None:
        """Next record, or None if the server closed the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._queue:
            if self.eof or not self._fill(deadline):
                return None
        return self._queue.pop(0)

    def records(self, timeout: float | None = None) -> Iterator[Record]:
        """Records until EOF; the deadline covers the whole iteration."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            while not self._queue:
                if self.eof or not self._fill(deadline):
                    return
            yield self._queue.pop(0)

    def read_responses(
        self, ids: Iterable[int], timeout: float | None = None
    ) -> tuple[dict[int, Response], list[Record]]:
        """Collect records until every id in ``ids`` has END_REQUEST (or EOF).

        Returns the per-id responses plus any records for other ids (management
        records, or stray ones a correct server would never send).
        """
        want = set(ids)
        responses = {i: Response(i) for i in want}
        others: list[Record] = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while any(not responses[i].ended for i in want):
            if not self._queue:
                if self.eof or not self._fill(deadline):
                    break
                continue
            rec = self._queue.pop(0)
            if rec.request_id in responses:
                responses[rec.request_id].add(rec)
            else:
                others.append(rec)
        return responses, others

    def read_response(self, request_id: int = 1, timeout: float | None = None) -> Response:
        return self.read_responses([request_id], timeout)[0][request_id]

    def wait_closed(self, timeout: float | None = None) -> tuple[bool, list[Record]]:
        """Wait for the server to close; (closed, records seen meanwhile)."""
        seen: list[Record] = []
        try:
            seen.extend(self.records(timeout))
        except ServerTimeout:
            return False, seen
        return True, seen


def request(
    address: Address,
    params: Params,
    stdin: bytes = b"",
    *,
    timeout: float = 5.0,
    request_id: int = 1,
    role: int = RESPONDER,
    data: bytes | None = None,
) -> Response:
    """One request on a fresh connection (no keep-conn): the web server's common case."""
    with Connection(address, timeout) as conn:
        conn.send(build_request(request_id, params, stdin, role=role, data=data))
        return conn.read_response(request_id)
