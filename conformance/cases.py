"""The conformance cases: the FastCGI spec as a web server exercises it and as a hostile
peer abuses it.

Each case is a function taking a :class:`Context` and either returning a short detail
(pass) or raising :class:`CaseFailed` (fail). Every read has a deadline, so a server
that hangs fails the case instead of hanging the suite. Malformed-input cases only
demand that the server survives: afterwards a NEW connection must be served.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conformance import app as capp
from conformance import client as fc
from conformance.client import Address, Connection, HttpResponse, Response


class CaseFailed(Exception):
    """The server under test broke a rule; the message says which."""


@dataclass
class Context:
    """Where the server listens and how long any single wait may take."""

    address: Address
    timeout: float = 5.0
    settle: float = 1.0

    def connect(self) -> Connection:
        return Connection(self.address, self.timeout)

    def alive(self) -> str:
        """A fresh connection must still be served after whatever came before."""
        try:
            resp = fc.request(self.address, fc.default_params("/ping"), timeout=self.timeout)
        except (OSError, fc.ServerTimeout, fc.ProtocolViolation) as exc:
            raise CaseFailed(f"server not serving a new connection afterwards: {exc!r}") from exc
        try:
            http = expect_ok(resp)
        except CaseFailed as exc:
            raise CaseFailed(f"a new connection after the case was not served: {exc}") from exc
        check(http.body == b"pong\n", f"/ping after the case returned {http.body[:60]!r}")
        return "server still serves new connections"

    def poke(self, conn: Connection) -> str:
        """Give the server time to react to bad input; report whether it closed."""
        try:
            closed, seen = conn.wait_closed(self.settle)
        except (fc.ProtocolViolation, OSError) as exc:
            return f"connection broke ({exc.__class__.__name__})"
        what = "closed the connection" if closed else "kept the connection open"
        if seen:
            what += " after sending " + " ".join(str(r) for r in seen[:4])
        return what


@dataclass
class Result:
    name: str
    passed: bool
    detail: str


CaseFunc = Callable[[Context], str]


@dataclass
class Case:
    name: str
    func: CaseFunc
    doc: str


CASES: dict[str, Case] = {}


def case(func: CaseFunc) -> CaseFunc:
    """Register a case under its function name (without the ``case_`` prefix)."""
    name = func.__name__.removeprefix("case_")
    doc = " ".join((func.__doc__ or "").strip().split("\n\n")[0].split())
    CASES[name] = Case(name, func, doc)
    return func


def check(cond: object, message: str) -> None:
    if not cond:
        raise CaseFailed(message)


def run_case(c: Case, ctx: Context) -> Result:
    """Run one case; every exception becomes a failure, never an escape."""
    try:
        detail = c.func(ctx)
        return Result(c.name, True, detail or "ok")
    except CaseFailed as exc:
        return Result(c.name, False, str(exc))
    except fc.ServerTimeout as exc:
        return Result(c.name, False, f"timeout: {exc}")
    except fc.ProtocolViolation as exc:
        return Result(c.name, False, f"protocol violation: {exc}")
    except OSError as exc:
        return Result(c.name, False, f"socket error: {exc!r}")
    except Exception as exc:  # a client-side surprise is still this server's failure
        return Result(c.name, False, f"unexpected {exc.__class__.__name__}: {exc}")


# --------------------------------------------------------------------------- helpers


def check_order(resp: Response) -> None:
    """STDOUT data, then the empty STDOUT, then exactly one END_REQUEST, last."""
    check(resp.ended, f"no END_REQUEST for id {resp.request_id}; got {resp.summary() or 'nothing'}")
    types = [r.type for r in resp.records]
    check(types.count(fc.END_REQUEST) == 1, f"{types.count(fc.END_REQUEST)} END_REQUEST records")
    check(types[-1] == fc.END_REQUEST, f"records after END_REQUEST: {resp.summary()}")
    for rec in resp.records:
        check(rec.version == fc.VERSION_1, f"server sent version {rec.version} in {rec}")
        check(rec.type in (fc.STDOUT, fc.STDERR, fc.END_REQUEST), f"unexpected record {rec}")
    for stream_type, label in ((fc.STDOUT, "STDOUT"), (fc.STDERR, "STDERR")):
        recs = [i for i, r in enumerate(resp.records) if r.type == stream_type]
        empties = [i for i in recs if not resp.records[i].content]
        if not empties:
            continue
        check(len(empties) == 1, f"{len(empties)} empty {label} records")
        check(empties[0] == recs[-1], f"{label} data after the empty {label}: {resp.summary()}")


def expect_ok(resp: Response, status: int = 200) -> HttpResponse:
    """A completed responder answer: order rules, REQUEST_COMPLETE, expected HTTP status."""
    check_order(resp)
    check(
        resp.protocol_status == fc.REQUEST_COMPLETE,
        f"protocolStatus {fc.PROTOCOL_STATUS_NAMES.get(resp.protocol_status or 0)} "
        f"({resp.protocol_status}), want REQUEST_COMPLETE",
    )
    check(resp.stdout_closed, f"STDOUT never terminated by an empty record: {resp.summary()}")
    http = resp.http()
    check(http.status == status, f"HTTP status {http.status}, want {status}: {http.body[:100]!r}")
    return http


def environ_of(resp: Response) -> dict[str, Any]:
    http = expect_ok(resp)
    try:
        data = json.loads(http.body)
    except ValueError as exc:
        raise CaseFailed(f"/echo-environ body is not JSON: {http.body[:80]!r}") from exc
    check(isinstance(data, dict), "/echo-environ did not return an object")
    return dict(data)


def expect_echo(resp: Response, body: bytes) -> str:
    http = expect_ok(resp)
    want = hashlib.sha256(body).hexdigest()
    got = http.header("X-Body-SHA256")
    check(
        http.header("X-Body-Length") == str(len(body)),
        f"app saw {http.header('X-Body-Length')} body bytes, sent {len(body)}",
    )
    check(got == want, "app saw a different body (sha256 mismatch)")
    check(http.body == body, "echoed body differs from the one sent")
    return f"{len(body)} bytes delivered intact"


def post_params(
    body_length: int, path: str = "/echo-body"
) -> list[tuple[bytes | str, bytes | str]]:
    return fc.default_params(path, method="POST", body_length=body_length)


def body_bytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def get_values(ctx: Context, names: list[str]) -> dict[bytes, bytes]:
    with ctx.connect() as conn:
        conn.send(fc.get_values(names))
        rec = conn.recv_record()
    check(rec is not None, "connection closed instead of GET_VALUES_RESULT")
    assert rec is not None
    check(rec.type == fc.GET_VALUES_RESULT, f"answered GET_VALUES with {rec}")
    check(rec.request_id == 0, f"GET_VALUES_RESULT on request id {rec.request_id}, want 0")
    return dict(fc.decode_pairs(rec.content))


# --------------------------------------------------------------------------- basics


@case
def case_responder_get(ctx: Context) -> str:
    """Plain GET with a query string on a fresh connection (Appendix B, example 1)."""
    resp = fc.request(ctx.address, fc.default_params(query="a=1&b=two"), timeout=ctx.timeout)
    env = environ_of(resp)
    check(env.get("QUERY_STRING") == "a=1&b=two", f"QUERY_STRING {env.get('QUERY_STRING')!r}")
    check(resp.app_status == 0, f"appStatus {resp.app_status} for a 200 response")
    return "200 with the environ as JSON"


@case
def case_stream_order(ctx: Context) -> str:
    """STDOUT data, empty STDOUT, END_REQUEST, then close; nothing out of order."""
    with ctx.connect() as conn:
        conn.send(fc.build_request(1, fc.default_params("/stream", query="n=20")))
        closed, recs = conn.wait_closed()
    check(closed, "server did not close the connection after END_REQUEST (keep-conn off)")
    resp = Response(1)
    for rec in recs:
        check(rec.request_id == 1, f"record for id {rec.request_id}: {rec}")
        resp.add(rec)
    http = expect_ok(resp)
    want = b"".join(f"chunk {i}\n".encode() for i in range(20))
    check(http.body == want, f"streamed body out of order or incomplete: {http.body[:80]!r}")
    return f"{len(recs)} records in order"


@case
def case_streaming_response(ctx: Context) -> str:
    """A generator app's chunks arrive complete and in order."""
    resp = fc.request(ctx.address, fc.default_params("/stream", query="n=500"), timeout=ctx.timeout)
    http = expect_ok(resp)
    want = b"".join(f"chunk {i}\n".encode() for i in range(500))
    check(http.body == want, "streamed body differs")
    return f"{len(resp.records)} records"


@case
def case_big_response(ctx: Context) -> str:
    """A 4 MiB response needs many STDOUT records; every byte must arrive in order."""
    size = 4 * 1024 * 1024
    resp = fc.request(
        ctx.address, fc.default_params("/big", query=f"size={size}"), timeout=ctx.timeout * 3
    )
    http = expect_ok(resp)
    check(len(http.body) == size, f"{len(http.body)} bytes, want {size}")
    check(http.body == b"".join(capp.pattern(size)), "payload corrupted or reordered")
    return f"{size} bytes in {len(resp.records)} records"


@case
def case_record_padding(ctx: Context) -> str:
    """Receivers must skip any padding (0-255), not only 8-byte alignment."""
    body = b"padded body!"
    params = post_params(len(body))  # split at a pair boundary: only padding is under test
    data = fc.record(fc.BEGIN_REQUEST, 1, struct.pack("!HB5x", fc.RESPONDER, 0), padding=255)
    data += fc.record(fc.PARAMS, 1, fc.encode_pairs(params[:3]), padding=1)
    data += fc.record(fc.PARAMS, 1, fc.encode_pairs(params[3:]), padding=7)
    data += fc.record(fc.PARAMS, 1, padding=200)
    data += fc.record(fc.STDIN, 1, body[:5], padding=0)
    data += fc.record(fc.STDIN, 1, body[5:], padding=13)
    data += fc.record(fc.STDIN, 1, padding=3)
    with ctx.connect() as conn:
        conn.send(data)
        return expect_echo(conn.read_response(1), body)


@case
def case_post_body(ctx: Context) -> str:
    """A 100 KiB POST body arrives byte-exact via wsgi.input."""
    body = body_bytes(100 * 1024)
    return expect_echo(
        fc.request(ctx.address, post_params(len(body)), body, timeout=ctx.timeout), body
    )


@case
def case_stdin_many_records(ctx: Context) -> str:
    """STDIN split into thousands of tiny records is one stream to the app."""
    body = body_bytes(20000, seed=2)
    with ctx.connect() as conn:
        conn.send(fc.build_request(1, post_params(len(body)), body, stdin_chunk=7))
        return expect_echo(conn.read_response(1), body)


@case
def case_stdin_max_records(ctx: Context) -> str:
    """A 2 MiB body in maximum-size (65535-byte) STDIN records."""
    body = body_bytes(2 * 1024 * 1024, seed=3)
    resp = fc.request(ctx.address, post_params(len(body)), body, timeout=ctx.timeout * 3)
    return expect_echo(resp, body)


@case
def case_stdin_short(ctx: Context) -> str:
    """Fewer STDIN bytes than CONTENT_LENGTH (client died): app sees EOF, no hang."""
    body = b"0123456789"
    resp = fc.request(ctx.address, post_params(100), body, timeout=ctx.timeout)
    http = expect_ok(resp)
    got = http.header("X-Body-Length")
    check(got is not None and int(got) <= len(body), f"app read {got} bytes of a 10-byte stream")
    return f"app read {got} bytes then EOF"


@case
def case_empty_body_get(ctx: Context) -> str:
    """GET with no CONTENT_LENGTH and an empty STDIN reads an empty body."""
    resp = fc.request(ctx.address, fc.default_params("/echo-body"), timeout=ctx.timeout)
    return expect_echo(resp, b"")


@case
def case_byte_by_byte(ctx: Context) -> str:
    """The whole request delivered one byte per send()."""
    body = b"byte by byte body"
    with ctx.connect() as conn:
        data = fc.build_request(1, post_params(len(body)), body)
        conn.send(data, split=1, pause=0.0005)
        return expect_echo(conn.read_response(1), body) + f", {len(data)} sends"


# --------------------------------------------------------------------------- params


@case
def case_params_split_records(ctx: Context) -> str:
    """Name/value pairs straddling PARAMS record boundaries (1- and 3-byte records)."""
    extra = [("HTTP_X_SPLIT", "value-split-across-records")]
    for chunk in (1, 3):
        with ctx.connect() as conn:
            params = fc.default_params(query="q=split", extra=extra)
            conn.send(fc.build_request(1, params, params_chunk=chunk))
            env = environ_of(conn.read_response(1))
        check(env.get("HTTP_X_SPLIT") == extra[0][1], f"chunk={chunk}: HTTP_X_SPLIT lost")
        check(env.get("QUERY_STRING") == "q=split", f"chunk={chunk}: QUERY_STRING lost")
    return "pairs reassembled from 1- and 3-byte records"


@case
def case_params_long_lengths(ctx: Context) -> str:
    """4-byte name/value lengths in all four 1/4 combinations, incl. 127/128 edges."""
    n_long = "HTTP_X_" + "N" * 200
    m_long = "HTTP_X_" + "M" * 150
    extra = [
        ("HTTP_X_V127", "a" * 127),
        ("HTTP_X_V128", "b" * 128),
        ("HTTP_X_LONGVAL", "c" * 5000),
        (n_long, "short"),
        (m_long, "d" * 70000),  # PARAMS stream > 65535: spans records too
        ("HTTP_X_" + "E" * 120, "e"),  # name exactly 127 bytes
    ]
    resp = fc.request(ctx.address, fc.default_params(extra=extra), timeout=ctx.timeout)
    env = environ_of(resp)
    for name, value in extra:
        got = env.get(name)
        check(
            got == value,
            f"{name[:20]}…: got {str(got)[:20]!r} ({len(got or '')}), want {len(value)}",
        )
    return "11/14/41/44 encodings and a 70000-byte value decoded"


@case
def case_params_many(ctx: Context) -> str:
    """200 HTTP_* params (a header-heavy request)."""
    extra = [(f"HTTP_X_H{i}", f"v{i}") for i in range(200)]
    env = environ_of(fc.request(ctx.address, fc.default_params(extra=extra), timeout=ctx.timeout))
    missing = [n for n, v in extra if env.get(n) != v]
    check(not missing, f"{len(missing)} params lost, e.g. {missing[:3]}")
    return "200 params delivered"


@case
def case_params_empty_value(ctx: Context) -> str:
    """A pair with an empty value is still a param (present, empty string)."""
    extra = [("HTTP_X_EMPTY", "")]
    env = environ_of(fc.request(ctx.address, fc.default_params(extra=extra), timeout=ctx.timeout))
    check(env.get("HTTP_X_EMPTY") == "", f"HTTP_X_EMPTY = {env.get('HTTP_X_EMPTY')!r}")
    return "empty value kept"


# --------------------------------------------------------------------------- connections


@case
def case_keep_conn_sequential(ctx: Context) -> str:
    """KEEP_CONN: several requests on one connection, ids reused, connection stays open."""
    with ctx.connect() as conn:
        for i, rid in enumerate((1, 1, 2, 1)):
            body = f"request {i}".encode()
            conn.send(fc.build_request(rid, post_params(len(body)), body, keep_conn=True))
            resp, others = conn.read_responses([rid])
            check(not others, f"request {i}: stray records {[str(r) for r in others]}")
            check(not conn.eof or resp[rid].ended, f"request {i}: connection closed early")
            expect_echo(resp[rid], body)
            check(not conn.eof, f"server closed a KEEP_CONN connection after request {i}")
    return "4 requests on one connection"


@case
def case_keep_conn_off_closes(ctx: Context) -> str:
    """Without KEEP_CONN the application closes the connection after END_REQUEST."""
    with ctx.connect() as conn:
        conn.send(fc.build_request(1, fc.default_params("/ping")))
        resp = conn.read_response(1)
        expect_ok(resp)
        closed, after = conn.wait_closed()
    check(not after, f"records after END_REQUEST: {[str(r) for r in after]}")
    check(closed, "connection left open after END_REQUEST without KEEP_CONN")
    return "closed after END_REQUEST"


@case
def case_keep_conn_then_close(ctx: Context) -> str:
    """KEEP_CONN request then one without it on the same connection: close after the second."""
    with ctx.connect() as conn:
        conn.send(fc.build_request(1, fc.default_params("/ping"), keep_conn=True))
        expect_ok(conn.read_response(1))
        conn.send(fc.build_request(1, fc.default_params("/ping"), keep_conn=False))
        expect_ok(conn.read_response(1))
        closed, _ = conn.wait_closed()
    check(closed, "connection left open after the non-KEEP_CONN request")
    return "open after the first, closed after the second"


@case
def case_request_id_high(ctx: Context) -> str:
    """Request id 65535 works and is echoed in every response record."""
    with ctx.connect() as conn:
        conn.send(fc.build_request(0xFFFF, fc.default_params("/ping")))
        resp, others = conn.read_responses([0xFFFF])
    check(not others, f"records for other ids: {[str(r) for r in others]}")
    expect_ok(resp[0xFFFF])
    return "id 65535 answered"


@case
def case_concurrent_connections(ctx: Context) -> str:
    """Two connections with requests in flight at once are both answered."""
    with ctx.connect() as a, ctx.connect() as b:
        a.send(fc.build_request(1, post_params(1), b"a"))
        b.send(fc.build_request(1, post_params(1), b"b"))
        resp_a = a.read_response(1, ctx.timeout * 2)
        a.close()  # as a web server does once END_REQUEST is in (servers may drain until EOF)
        expect_echo(resp_a, b"a")
        expect_echo(b.read_response(1, ctx.timeout * 2), b"b")
    return "both answered"


def _interleaved(bodies: dict[int, bytes], path: str, query: str = "") -> list[bytes]:
    """Two requests as records alternating id by id: both BEGINs, then PARAMS one pair
    per record, then STDIN in 500-byte records."""
    params = {  # one pair per record: interleaving is under test, not pair straddling
        i: [
            fc.record(fc.PARAMS, i, fc.encode_pair(*p))
            for p in fc.default_params(path, "POST", query, body_length=len(b))
        ]
        + [fc.record(fc.PARAMS, i)]
        for i, b in bodies.items()
    }
    stdin = {i: fc.stream_records(fc.STDIN, i, b, 500) for i, b in bodies.items()}
    a, b = bodies
    pieces = [fc.begin_request(a, keep_conn=True), fc.begin_request(b, keep_conn=True)]
    for seq in (params, stdin):
        for k in range(max(len(seq[a]), len(seq[b]))):
            pieces.extend(seq[i][k] for i in (a, b) if k < len(seq[i]))
    return pieces


def mux_claims(ctx: Context) -> tuple[bool, int]:
    """(FCGI_MPXS_CONNS == 1, FCGI_MAX_REQS) as the server states them; a server that
    answers nothing is taken not to multiplex."""
    try:
        values = get_values(ctx, ["FCGI_MPXS_CONNS", "FCGI_MAX_REQS"])
    except (CaseFailed, fc.ServerTimeout, fc.ProtocolViolation, OSError):
        return False, 1
    max_reqs = values.get(b"FCGI_MAX_REQS", b"")
    return values.get(b"FCGI_MPXS_CONNS") == b"1", int(max_reqs) if max_reqs.isdigit() else 1


@case
def case_interleaved_ids(ctx: Context) -> str:
    """Two requests interleaved record by record: served correctly, or refused with
    CANT_MPX_CONN/OVERLOADED — and only refused if GET_VALUES said FCGI_MPXS_CONNS=0
    (OVERLOADED also if it said FCGI_MAX_REQS=1)."""
    mpxs, max_reqs = mux_claims(ctx)
    bodies = {1: body_bytes(3000, seed=11), 2: body_bytes(2000, seed=12)}
    with ctx.connect() as conn:
        conn.send_pieces(_interleaved(bodies, "/echo-body"))
        resps, others = conn.read_responses([1, 2], ctx.timeout * 2)
    check(not others, f"records for unknown ids: {[str(r) for r in others]}")
    outcome = {}
    for rid, resp in resps.items():
        check(resp.ended, f"id {rid}: no END_REQUEST ({resp.summary() or 'nothing'})")
        if resp.protocol_status in (fc.CANT_MPX_CONN, fc.OVERLOADED):
            name = fc.PROTOCOL_STATUS_NAMES[resp.protocol_status]
            check(not resp.stdout, f"id {rid}: refused but sent STDOUT")
            allowed = not mpxs or (resp.protocol_status == fc.OVERLOADED and max_reqs < 2)
            claim = f"FCGI_MPXS_CONNS=1, FCGI_MAX_REQS={max_reqs}"
            check(allowed, f"id {rid}: refused with {name} but GET_VALUES says {claim}")
            outcome[rid] = name
        else:
            expect_echo(resp, bodies[rid])
            outcome[rid] = "served"
    check("served" in outcome.values(), "neither interleaved request was served")
    return f"MPXS_CONNS={int(mpxs)}; " + ", ".join(f"id {k}: {v}" for k, v in outcome.items())


@case
def case_interleaved_ids_concurrent(ctx: Context) -> str:
    """FCGI_MPXS_CONNS=1: two interleaved requests to a route that only answers once both
    are inside the app at the same time — so both must run concurrently, and both
    bodies come back intact. Not applicable if the server does not claim to multiplex."""
    mpxs, max_reqs = mux_claims(ctx)
    if not mpxs or max_reqs < 2:
        return f"n/a: FCGI_MPXS_CONNS={int(mpxs)}, FCGI_MAX_REQS={max_reqs}; no concurrency claimed"
    bodies = {3: body_bytes(1500, seed=13), 4: body_bytes(2500, seed=14)}
    key = random.Random().randbytes(8).hex()
    wait_ms = int(ctx.timeout * 1000)  # the app gives up (504) before the client does
    query = f"key={key}&n=2&wait_ms={wait_ms}"
    with ctx.connect() as conn:
        conn.send_pieces(_interleaved(bodies, "/rendezvous", query))
        resps, others = conn.read_responses([3, 4], ctx.timeout * 3)
    check(not others, f"records for unknown ids: {[str(r) for r in others]}")
    for rid, resp in resps.items():
        check(resp.ended, f"id {rid}: no END_REQUEST ({resp.summary() or 'nothing'})")
        check(
            resp.protocol_status == fc.REQUEST_COMPLETE,
            f"id {rid}: protocolStatus {resp.protocol_status} though FCGI_MPXS_CONNS=1",
        )
        http = resp.http()
        check(
            http.status != 504,
            f"id {rid}: the other request never reached the app while this one ran "
            f"(served one after the other): {http.body[:60]!r}",
        )
        expect_echo(resp, bodies[rid])
        check(http.header("X-Rendezvous") == "met 2", f"id {rid}: X-Rendezvous missing")
    return "ids 3 and 4 inside the app at once, both bodies intact"


# --------------------------------------------------------------------------- management


@case
def case_get_values(ctx: Context) -> str:
    """GET_VALUES: the three spec variables answered with numbers, unknown names omitted."""
    asked = ["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS", "FCGI_NOT_A_VARIABLE"]
    values = get_values(ctx, asked)
    check(b"FCGI_NOT_A_VARIABLE" not in values, "unknown variable FCGI_NOT_A_VARIABLE answered")
    extra = set(values) - {a.encode() for a in asked}
    check(not extra, f"names that were not asked for: {sorted(extra)}")
    for name in asked[:3]:
        value = values.get(name.encode())
        check(value is not None, f"{name} not answered")
        check(value is not None and value.isdigit(), f"{name} = {value!r}, not a number")
    check(values[b"FCGI_MPXS_CONNS"] in (b"0", b"1"), "FCGI_MPXS_CONNS is not 0 or 1")
    return ", ".join(f"{k.decode()}={v.decode()}" for k, v in sorted(values.items()))


@case
def case_get_values_subset(ctx: Context) -> str:
    """GET_VALUES for one name returns exactly that name."""
    values = get_values(ctx, ["FCGI_MPXS_CONNS"])
    check(list(values) == [b"FCGI_MPXS_CONNS"], f"answered {sorted(values)}")
    return f"FCGI_MPXS_CONNS={values[b'FCGI_MPXS_CONNS'].decode()}"


@case
def case_get_values_mid_request(ctx: Context) -> str:
    """Management records may arrive at any time, even between a request's streams."""
    with ctx.connect() as conn:
        conn.send(fc.begin_request(1, keep_conn=True))
        conn.send(fc.stream(fc.PARAMS, 1, fc.encode_pairs(post_params(4))))
        conn.send(fc.get_values(["FCGI_MPXS_CONNS"]))
        conn.send(fc.stream(fc.STDIN, 1, b"body"))
        resps, others = conn.read_responses([1])
        if not any(r.type == fc.GET_VALUES_RESULT for r in others):
            rec = conn.recv_record()
            others += [rec] if rec else []
    expect_echo(resps[1], b"body")
    check(
        any(r.type == fc.GET_VALUES_RESULT and r.request_id == 0 for r in others),
        f"no GET_VALUES_RESULT; other records {[str(r) for r in others]}",
    )
    return "both answered"


@case
def case_unknown_management_type(ctx: Context) -> str:
    """An unknown management record type gets UNKNOWN_TYPE, and the connection lives on."""
    with ctx.connect() as conn:
        conn.send(fc.record(200, 0, b"whatever"))
        rec = conn.recv_record()
        check(rec is not None, "connection closed instead of UNKNOWN_TYPE")
        assert rec is not None
        check(rec.type == fc.UNKNOWN_TYPE, f"answered with {rec}")
        check(rec.request_id == 0, f"UNKNOWN_TYPE on id {rec.request_id}")
        check(len(rec.content) == 8 and rec.content[0] == 200, f"body {rec.content!r}")
        conn.send(fc.build_request(1, fc.default_params("/ping")))
        expect_ok(conn.read_response(1))
    return "UNKNOWN_TYPE{200}, then served"


@case
def case_unknown_role(ctx: Context) -> str:
    """Unknown role: END_REQUEST UNKNOWN_ROLE, no output, and the connection stays usable."""
    with ctx.connect() as conn:
        conn.send(fc.build_request(1, fc.default_params("/ping"), role=99, keep_conn=True))
        resps, others = conn.read_responses([1])
        resp = resps[1]
        check(resp.ended, f"no END_REQUEST for the unknown role ({resp.summary() or 'nothing'})")
        check(resp.protocol_status == fc.UNKNOWN_ROLE, f"protocolStatus {resp.protocol_status}")
        check(not resp.stdout, "unknown role produced STDOUT")
        check(not others, f"stray records {[str(r) for r in others]}")
        conn.send(fc.build_request(2, fc.default_params("/ping"), keep_conn=True))
        expect_ok(conn.read_response(2))
    return "UNKNOWN_ROLE, then the next request served"


# --------------------------------------------------------------------------- abort, inactive


def _abort_then_reuse(ctx: Context, conn: Connection, wait: float) -> str:
    conn.send(fc.abort_request(1))
    resps, others = conn.read_responses([1], wait)
    resp = resps[1]
    check(resp.ended, f"no END_REQUEST after ABORT_REQUEST ({resp.summary() or 'nothing'})")
    check_order(resp)
    check(resp.protocol_status == fc.REQUEST_COMPLETE, f"protocolStatus {resp.protocol_status}")
    check(not others, f"stray records {[str(r) for r in others]}")
    conn.send(fc.build_request(1, fc.default_params("/ping"), keep_conn=True))
    expect_ok(conn.read_response(1))
    return f"END_REQUEST(appStatus={resp.app_status}), connection reusable"


@case
def case_abort_waiting_for_stdin(ctx: Context) -> str:
    """ABORT_REQUEST while the app waits for body bytes: END_REQUEST must follow."""
    with ctx.connect() as conn:
        conn.send(fc.begin_request(1, keep_conn=True))
        conn.send(fc.stream(fc.PARAMS, 1, fc.encode_pairs(post_params(1000))))
        conn.send(fc.record(fc.STDIN, 1, b"x" * 10))
        time.sleep(0.2)
        return _abort_then_reuse(ctx, conn, ctx.timeout)


@case
def case_abort_running_app(ctx: Context) -> str:
    """ABORT_REQUEST while the app runs: END_REQUEST must follow (app may finish first)."""
    with ctx.connect() as conn:
        conn.send(fc.build_request(1, fc.default_params("/slow", query="ms=1000"), keep_conn=True))
        time.sleep(0.1)
        return _abort_then_reuse(ctx, conn, ctx.timeout * 2)


@case
def case_abort_during_params(ctx: Context) -> str:
    """ABORT_REQUEST before PARAMS is complete: END_REQUEST, connection reusable."""
    with ctx.connect() as conn:
        conn.send(fc.begin_request(1, keep_conn=True))
        conn.send(fc.record(fc.PARAMS, 1, fc.encode_pairs(fc.default_params("/ping"))[:30]))
        return _abort_then_reuse(ctx, conn, ctx.timeout)


@case
def case_abort_without_keep_conn(ctx: Context) -> str:
    """ABORT_REQUEST on a non-KEEP_CONN request: END_REQUEST, then the server closes."""
    with ctx.connect() as conn:
        conn.send(fc.begin_request(1))
        conn.send(fc.stream(fc.PARAMS, 1, fc.encode_pairs(post_params(1000))))
        conn.send(fc.record(fc.STDIN, 1, b"x" * 10))
        time.sleep(0.2)
        conn.send(fc.abort_request(1))
        resp = conn.read_response(1)
        check(resp.ended, f"no END_REQUEST after ABORT_REQUEST ({resp.summary() or 'nothing'})")
        check_order(resp)
        closed, after = conn.wait_closed()
    check(not after, f"records after END_REQUEST: {[str(r) for r in after]}")
    check(closed, "connection left open after the aborted non-KEEP_CONN request")
    return "END_REQUEST, then closed"


@case
def case_inactive_ids_ignored(ctx: Context) -> str:
    """Records for ids never begun, or already ended, are ignored (only BEGIN revives one)."""
    with ctx.connect() as conn:
        for rtype in (fc.PARAMS, fc.STDIN, fc.DATA, fc.ABORT_REQUEST):
            conn.send(fc.record(rtype, 7, b"" if rtype == fc.ABORT_REQUEST else b"junk"))
        conn.send(fc.build_request(1, fc.default_params("/ping"), keep_conn=True))
        resps, others = conn.read_responses([1])
        expect_ok(resps[1])
        # id 1 is inactive again: all of these must be ignored too
        conn.send(fc.record(fc.STDIN, 1, b"late") + fc.record(fc.STDIN, 1))
        conn.send(fc.record(fc.PARAMS, 1, b"late") + fc.abort_request(1))
        conn.send(fc.build_request(2, fc.default_params("/ping"), keep_conn=True))
        resps2, others2 = conn.read_responses([2])
        expect_ok(resps2[2])
    stray = [str(r) for r in others + others2]
    check(not stray, f"answered records for inactive ids: {stray}")
    return "ignored; later requests served"


# --------------------------------------------------------------------------- WSGI environ


def _environ(ctx: Context, **kwargs: Any) -> dict[str, Any]:
    body = kwargs.pop("body", b"")
    params = fc.default_params(**kwargs)
    return environ_of(fc.request(ctx.address, params, body, timeout=ctx.timeout))


@case
def case_environ_root_mount(ctx: Context) -> str:
    """PEP 3333 environ for an app at /: CGI keys, native str values, wsgi.* types."""
    env = _environ(ctx, query="a=1&b=%20")
    want = {
        "REQUEST_METHOD": "GET",
        "QUERY_STRING": "a=1&b=%20",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/echo-environ",
        "SERVER_NAME": "conformance.test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "conformance.test",
        "wsgi.url_scheme": "http",
    }
    for key, value in want.items():
        check(env.get(key) == value, f"{key} = {env.get(key)!r}, want {value!r}")
    check(
        env.get("CONTENT_LENGTH", "") in ("", "0"), f"CONTENT_LENGTH {env.get('CONTENT_LENGTH')!r}"
    )
    check(env.get("wsgi.version") == [1, 0], f"wsgi.version {env.get('wsgi.version')}")
    for key in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once"):
        check(isinstance(env.get(key), bool), f"{key} is {env.get(key)!r}, not a bool")
    check(env.get("wsgi.input.read"), "wsgi.input has no read()")
    check(env.get("wsgi.errors.write"), "wsgi.errors has no write()")
    check(not env.get("non_str_cgi"), f"CGI keys with non-str values: {env.get('non_str_cgi')}")
    return "CGI and wsgi.* keys as PEP 3333 says"


@case
def case_environ_app_mount(ctx: Context) -> str:
    """App mounted at /app: SCRIPT_NAME and PATH_INFO passed through as given."""
    env = _environ(ctx, script_name="/app")
    check(env.get("SCRIPT_NAME") == "/app", f"SCRIPT_NAME {env.get('SCRIPT_NAME')!r}")
    check(env.get("PATH_INFO") == "/echo-environ", f"PATH_INFO {env.get('PATH_INFO')!r}")
    return "SCRIPT_NAME=/app PATH_INFO=/echo-environ"


@case
def case_environ_https(ctx: Context) -> str:
    """HTTPS=on (as nginx sends behind TLS) makes wsgi.url_scheme https."""
    env = _environ(ctx, extra=[("HTTPS", "on")])
    check(env.get("wsgi.url_scheme") == "https", f"wsgi.url_scheme {env.get('wsgi.url_scheme')!r}")
    return "https"


@case
def case_environ_post(ctx: Context) -> str:
    """CONTENT_LENGTH and CONTENT_TYPE reach the app as the strings sent."""
    env = _environ(ctx, method="POST", body_length=3, body=b"abc")
    check(env.get("REQUEST_METHOD") == "POST", f"REQUEST_METHOD {env.get('REQUEST_METHOD')!r}")
    check(env.get("CONTENT_LENGTH") == "3", f"CONTENT_LENGTH {env.get('CONTENT_LENGTH')!r}")
    check(
        env.get("CONTENT_TYPE") == "application/octet-stream",
        f"CONTENT_TYPE {env.get('CONTENT_TYPE')!r}",
    )
    return "CONTENT_LENGTH=3"


@case
def case_environ_headers(ctx: Context) -> str:
    """HTTP_* params pass through untouched, including ones with odd characters."""
    extra = [
        ("HTTP_COOKIE", "a=1; b=2"),
        ("HTTP_X_FORWARDED_FOR", "10.0.0.1, 10.0.0.2"),
        ("HTTP_USER_AGENT", 'conformance/1.0 (test; "quoted")'),
    ]
    env = _environ(ctx, extra=extra)
    for key, value in extra:
        check(env.get(key) == value, f"{key} = {env.get(key)!r}")
    return "headers intact"


@case
def case_environ_latin1(ctx: Context) -> str:
    """Non-ASCII param bytes become latin-1 decoded native strings (PEP 3333)."""
    raw_path = "/echo-environ/caf\u00e9".encode()  # UTF-8 bytes, as a web server sends
    raw_header = bytes(range(0x80, 0x100))
    params = fc.default_params(extra=[("HTTP_X_BYTES", raw_header)])
    params = [(k, raw_path if k == "PATH_INFO" else v) for k, v in params]
    env = environ_of(fc.request(ctx.address, params, timeout=ctx.timeout))
    want_path = raw_path.decode("latin-1")
    check(env.get("PATH_INFO") == want_path, f"PATH_INFO {env.get('PATH_INFO')!r}")
    check(env.get("HTTP_X_BYTES") == raw_header.decode("latin-1"), "HTTP_X_BYTES not latin-1")
    return "bytes 0x80-0xff round-trip as latin-1"


# --------------------------------------------------------------------------- responses


@case
def case_error_before_start(ctx: Context) -> str:
    """App raises before start_response: 500, no traceback in the body, connection reusable."""
    with ctx.connect() as conn:
        conn.send(fc.build_request(1, fc.default_params("/error"), keep_conn=True))
        http = expect_ok(conn.read_response(1), status=500)
        check(capp.SECRET_BEFORE.encode() not in http.body, "exception text leaked into the body")
        check(b"Traceback" not in http.body, "traceback leaked into the body")
        conn.send(fc.build_request(1, fc.default_params("/ping"), keep_conn=True))
        expect_ok(conn.read_response(1))
    return "500 without traceback"


@case
def case_error_after_output(ctx: Context) -> str:
    """App raises after its first chunk: streams still terminated, END_REQUEST sent."""
    with ctx.connect() as conn:
        conn.send(fc.build_request(1, fc.default_params("/error-after"), keep_conn=True))
        resp = conn.read_response(1)
        check_order(resp)
        check(resp.stdout_closed, "STDOUT not terminated after the app failed mid-response")
        check(capp.SECRET_AFTER.encode() not in resp.stdout, "exception text leaked into STDOUT")
        check(b"Traceback" not in resp.stdout, "traceback leaked into STDOUT")
        check(
            resp.stdout.startswith(b"Status: 200")
            or b"first chunk" in resp.stdout
            or resp.http().status == 200,
            "first chunk's response lost",
        )
        conn.send(fc.build_request(1, fc.default_params("/ping"), keep_conn=True))
        expect_ok(conn.read_response(1))
    return f"truncated response ended cleanly (appStatus={resp.app_status})"


@case
def case_status_codes(ctx: Context) -> str:
    """The app's status reaches the web server via the CGI Status header."""
    for code in (201, 204, 302, 404, 503):
        resp = fc.request(ctx.address, fc.default_params(f"/status/{code}"), timeout=ctx.timeout)
        http = expect_ok(resp, status=code)
        if code == 204:
            check(http.body == b"", f"204 with a body {http.body[:40]!r}")
    return "201 204 302 404 503"


@case
def case_multiple_headers(ctx: Context) -> str:
    """Repeated headers (three Set-Cookie) are all kept, in order."""
    http = expect_ok(fc.request(ctx.address, fc.default_params("/headers"), timeout=ctx.timeout))
    cookies = http.header_all("Set-Cookie")
    check(cookies == ["a=1; Path=/", "b=2; Path=/", "c=3; HttpOnly"], f"Set-Cookie {cookies}")
    check(http.header_all("X-Multi") == ["one", "two"], f"X-Multi {http.header_all('X-Multi')}")
    return "3 Set-Cookie"


@case
def case_stderr_stream(ctx: Context) -> str:
    """wsgi.errors output travels as STDERR records, terminated before END_REQUEST."""
    resp = fc.request(ctx.address, fc.default_params("/stderr"), timeout=ctx.timeout)
    expect_ok(resp)
    check(capp.STDERR_LINE.encode() in resp.stderr, f"STDERR {resp.stderr[:80]!r}")
    check(resp.stderr_closed, "STDERR stream not terminated by an empty record")
    return f"{len(resp.stderr)} bytes of STDERR"


# --------------------------------------------------------------------------- other roles


@case
def case_authorizer_role(ctx: Context) -> str:
    """AUTHORIZER: 200 + Variable-* headers when allowed, 403 with body when denied."""
    base = [
        (k, v)
        for k, v in fc.default_params("/authorize")
        if k not in ("PATH_INFO", "SCRIPT_NAME", "CONTENT_LENGTH", "PATH_TRANSLATED")
    ]
    allowed = [*base, ("HTTP_X_USER", "alice")]
    http = expect_ok(fc.request(ctx.address, allowed, role=fc.AUTHORIZER, timeout=ctx.timeout))
    check(
        http.header("Variable-USER") == "alice", f"Variable-USER {http.header('Variable-USER')!r}"
    )
    denied = expect_ok(
        fc.request(ctx.address, base, role=fc.AUTHORIZER, timeout=ctx.timeout), status=403
    )
    check(b"denied" in denied.body, f"403 body {denied.body[:40]!r}")
    return "200 with Variable-USER, 403 when denied"


@case
def case_filter_role(ctx: Context) -> str:
    """FILTER: FCGI_DATA after STDIN reaches the app (fcgi.data) with FCGI_DATA_* params."""
    data = b"filter me please\n" * 500
    extra = [("FCGI_DATA_LENGTH", str(len(data))), ("FCGI_DATA_LAST_MOD", "1700000000")]
    params = fc.default_params("/filter", extra=extra)
    resp = fc.request(ctx.address, params, role=fc.FILTER, data=data, timeout=ctx.timeout)
    check(resp.protocol_status != fc.UNKNOWN_ROLE, "FILTER role refused (UNKNOWN_ROLE)")
    http = expect_ok(resp)
    check(
        http.header("X-Data-Length") == str(len(data)), f"app read {http.header('X-Data-Length')}"
    )
    check(http.body == data.upper(), "filtered body differs")
    check(http.header("X-Data-Last-Mod") == "1700000000", "FCGI_DATA_LAST_MOD missing")
    return f"{len(data)} bytes of FCGI_DATA filtered"


# --------------------------------------------------------------------------- hostile peer


def _hostile(ctx: Context, payload: bytes, close_early: bool = False) -> str:
    """Send ``payload``, watch the reaction, hang up, then demand a new connection works."""
    with ctx.connect() as conn:
        try:
            conn.send(payload)
        except OSError as exc:
            reaction = f"send failed ({exc.__class__.__name__})"
        else:
            reaction = "hung up" if close_early else ctx.poke(conn)
    return f"{reaction}; {ctx.alive()}"


@case
def case_malformed_bad_version(ctx: Context) -> str:
    """A record with version 2: any reaction, but the server stays up."""
    pairs = fc.encode_pairs(fc.default_params("/ping"))
    body = struct.pack("!HB5x", fc.RESPONDER, 0)
    bad = fc.record(fc.BEGIN_REQUEST, 1, body, version=2)
    bad += fc.record(fc.PARAMS, 1, pairs, version=2) + fc.record(fc.PARAMS, 1, version=2)
    return _hostile(ctx, bad + fc.record(fc.STDIN, 1, version=2))


@case
def case_malformed_truncated_header(ctx: Context) -> str:
    """Half a record header, then the peer hangs up."""
    return _hostile(ctx, fc.begin_request(1)[:5], close_early=True)


@case
def case_malformed_truncated_content(ctx: Context) -> str:
    """A header announcing 100 content bytes, 10 sent, then the peer hangs up."""
    payload = fc.begin_request(1) + fc.record(fc.PARAMS, 1, b"x" * 100)[: 8 + 10]
    return _hostile(ctx, payload, close_early=True)


@case
def case_malformed_garbage(ctx: Context) -> str:
    """4 KiB of random bytes instead of records."""
    return _hostile(ctx, random.Random(42).randbytes(4096))


@case
def case_malformed_params_overrun(ctx: Context) -> str:
    """A pair whose declared lengths run past the end of the PARAMS stream."""
    good = fc.encode_pairs(fc.default_params("/ping"))
    bad = good + bytes([50, 50]) + b"short"
    payload = fc.begin_request(1) + fc.stream(fc.PARAMS, 1, bad) + fc.stream(fc.STDIN, 1, b"")
    return _hostile(ctx, payload)


@case
def case_malformed_huge_name_length(ctx: Context) -> str:
    """A 4-byte name length of 2^31-1 in a tiny PARAMS stream (must not allocate it)."""
    bad = struct.pack("!I", 0xFFFFFFFF) + bytes([1]) + b"abc"
    payload = fc.begin_request(1) + fc.stream(fc.PARAMS, 1, bad) + fc.stream(fc.STDIN, 1, b"")
    return _hostile(ctx, payload)


@case
def case_malformed_begin_active_id(ctx: Context) -> str:
    """BEGIN_REQUEST for an id that is already active."""
    params = fc.encode_pairs(fc.default_params("/ping"))
    payload = (
        fc.begin_request(1, keep_conn=True)
        + fc.record(fc.PARAMS, 1, params[:20])
        + fc.begin_request(1, keep_conn=True)
        + fc.stream(fc.PARAMS, 1, params)
        + fc.stream(fc.STDIN, 1, b"")
    )
    return _hostile(ctx, payload)


@case
def case_malformed_begin_id_zero(ctx: Context) -> str:
    """BEGIN_REQUEST on the null request id 0 (reserved for management records)."""
    payload = fc.build_request(0, fc.default_params("/ping"))
    return _hostile(ctx, payload)


@case
def case_malformed_begin_short_body(ctx: Context) -> str:
    """BEGIN_REQUEST whose body is 2 bytes instead of 8."""
    payload = fc.record(fc.BEGIN_REQUEST, 1, struct.pack("!H", fc.RESPONDER))
    payload += fc.stream(fc.PARAMS, 1, fc.encode_pairs(fc.default_params("/ping")))
    return _hostile(ctx, payload + fc.stream(fc.STDIN, 1, b""))


@case
def case_malformed_unknown_app_type(ctx: Context) -> str:
    """An unknown record type on an active request id."""
    payload = fc.begin_request(1) + fc.record(200, 1, b"mystery")
    payload += fc.stream(fc.PARAMS, 1, fc.encode_pairs(fc.default_params("/ping")))
    return _hostile(ctx, payload + fc.stream(fc.STDIN, 1, b""))


@case
def case_malformed_server_types(ctx: Context) -> str:
    """Records only an application may send (STDOUT, END_REQUEST, ...) sent to it."""
    payload = fc.begin_request(1) + fc.record(fc.STDOUT, 1, b"Status: 200\r\n\r\n")
    payload += fc.record(fc.END_REQUEST, 1, bytes(8)) + fc.record(fc.GET_VALUES_RESULT, 0)
    payload += fc.record(fc.UNKNOWN_TYPE, 0, bytes(8))
    return _hostile(ctx, payload)


@case
def case_client_gone_mid_request(ctx: Context) -> str:
    """Peer hangs up while the app waits for the rest of the body."""
    payload = fc.begin_request(1) + fc.stream(fc.PARAMS, 1, fc.encode_pairs(post_params(10000)))
    payload += fc.record(fc.STDIN, 1, b"x" * 100)
    with ctx.connect() as conn:
        conn.send(payload)
        time.sleep(0.2)
    return ctx.alive()


@case
def case_client_gone_mid_response(ctx: Context) -> str:
    """Peer hangs up after the first record of a 32 MiB response."""
    with ctx.connect() as conn:
        conn.send(fc.build_request(1, fc.default_params("/big", query=f"size={32 << 20}")))
        first = conn.recv_record()
        check(first is not None, "no response at all")
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return ctx.alive()
