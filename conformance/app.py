"""The plain-WSGI app every server under test runs (no dependencies, any WSGI server).

Each route makes one observable behaviour of the server visible to the client:
the environ it built, the body it delivered, how it streams, how it handles errors.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
Header = tuple[str, str]

SECRET_BEFORE = "conformance-secret-before"
SECRET_AFTER = "conformance-secret-after"
STDERR_LINE = "conformance-stderr-line"
BLOCK = 65536


def pattern_block(index: int) -> bytes:
    """Deterministic, position-dependent bytes so truncation or reordering shows."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return (seed * (BLOCK // len(seed) + 1))[:BLOCK]


def pattern(size: int) -> Iterator[bytes]:
    """``size`` bytes of the /big payload, block by block."""
    index = 0
    while size > 0:
        block = pattern_block(index)[:size]
        size -= len(block)
        index += 1
        yield block


def _query(environ: Environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _text(
    start_response: StartResponse, status: int, body: bytes, headers: Sequence[Header] = ()
) -> list[bytes]:
    hdrs = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *headers]
    start_response(f"{status} {HTTPStatus(status).phrase}", hdrs)
    return [body]


def _read_body(environ: Environ) -> bytes:
    """Read CONTENT_LENGTH bytes in pieces, stopping early at EOF (client died)."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH") or ""
    if not length.isdigit():
        return bytes(stream.read())
    remaining = int(length)
    parts: list[bytes] = []
    while remaining > 0:
        chunk = stream.read(min(remaining, 8192))
        if not chunk:
            break
        parts.append(bytes(chunk))
        remaining -= len(chunk)
    return b"".join(parts)


def echo_environ(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Every str-valued key, plus the types of the wsgi.* values PEP 3333 fixes."""
    out: dict[str, Any] = {k: v for k, v in environ.items() if isinstance(v, str)}
    out["wsgi.version"] = list(environ.get("wsgi.version", ()))
    for key in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once"):
        out[key] = environ.get(key)
    out["wsgi.input.read"] = callable(getattr(environ.get("wsgi.input"), "read", None))
    out["wsgi.errors.write"] = callable(getattr(environ.get("wsgi.errors"), "write", None))
    out["non_str_cgi"] = sorted(
        k for k, v in environ.items() if "." not in k and not isinstance(v, str)
    )
    body = json.dumps(out, sort_keys=True).encode("ascii")
    return _text(start_response, 200, body, [("Content-Type", "application/json")])


def echo_body(environ: Environ, start_response: StartResponse) -> list[bytes]:
    body = _read_body(environ)
    headers = [
        ("X-Body-Length", str(len(body))),
        ("X-Body-SHA256", hashlib.sha256(body).hexdigest()),
    ]
    return _text(start_response, 200, body, headers)


def stream(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    n = int(_query(environ).get("n", "5"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(n):
        yield f"chunk {i}\n".encode()


def big(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    size = int(_query(environ).get("size", "1048576"))
    start_response(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
    )
    return pattern(size)


def error(environ: Environ, start_response: StartResponse) -> list[bytes]:
    raise RuntimeError(SECRET_BEFORE)


def error_after(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first chunk\n"
    raise RuntimeError(SECRET_AFTER)


def status(environ: Environ, start_response: StartResponse, code: int) -> list[bytes]:
    if code in (204, 304) or code < 200:
        start_response(f"{code} {HTTPStatus(code).phrase}", [])
        return []
    return _text(start_response, code, f"status {code}\n".encode())


def headers(environ: Environ, start_response: StartResponse) -> list[bytes]:
    return _text(
        start_response,
        200,
        b"headers\n",
        [
            ("Set-Cookie", "a=1; Path=/"),
            ("Set-Cookie", "b=2; Path=/"),
            ("Set-Cookie", "c=3; HttpOnly"),
            ("X-Multi", "one"),
            ("X-Multi", "two"),
        ],
    )


def slow(environ: Environ, start_response: StartResponse) -> list[bytes]:
    time.sleep(int(_query(environ).get("ms", "1000")) / 1000)
    return _text(start_response, 200, b"slept\n")


_meetings: dict[str, list[int]] = {}  # key -> [arrived, left]
_meeting_cond = threading.Condition()


def rendezvous(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Read the body, then wait until ``n`` requests with the same ``key`` are all inside
    the app at once (at most ``wait_ms``). A server that runs them one after another
    cannot make them meet: the first gives up with 504. Answers like /echo-body."""
    query = _query(environ)
    key, n = query.get("key", ""), int(query.get("n", "2"))
    deadline = time.monotonic() + int(query.get("wait_ms", "5000")) / 1000
    body = _read_body(environ)
    with _meeting_cond:
        state = _meetings.setdefault(key, [0, 0])
        state[0] += 1
        _meeting_cond.notify_all()
        while state[0] < n and (remaining := deadline - time.monotonic()) > 0:
            _meeting_cond.wait(remaining)
        met = state[0] >= n
        state[1] += 1
        if state[1] >= n or not met:  # last one out, or the lonely one, forgets the key
            _meetings.pop(key, None)
    if not met:
        return _text(start_response, 504, f"only {state[0]} of {n} arrived\n".encode())
    headers = [
        ("X-Body-Length", str(len(body))),
        ("X-Body-SHA256", hashlib.sha256(body).hexdigest()),
        ("X-Rendezvous", f"met {n}"),
    ]
    return _text(start_response, 200, body, headers)


def stderr(environ: Environ, start_response: StartResponse) -> list[bytes]:
    errors = environ["wsgi.errors"]
    errors.write(STDERR_LINE + "\n")
    errors.flush()
    return _text(start_response, 200, b"wrote stderr\n")


def authorize(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """AUTHORIZER: 200 plus ``Variable-`` headers when X-User is given, else 403."""
    user = environ.get("HTTP_X_USER")
    if not user:
        return _text(start_response, 403, b"denied\n")
    return _text(
        start_response,
        200,
        b"ignored by the web server\n",
        [("Variable-USER", user), ("Variable-AUTH_METHOD", "header")],
    )


def filter_(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """FILTER: upper-cases the FCGI_DATA stream; 501 when the server doesn't expose it."""
    stdin = _read_body(environ)
    data_stream = environ.get("fcgi.data")
    if data_stream is None:
        return _text(start_response, 501, b"server exposes no fcgi.data\n")
    data = bytes(data_stream.read())
    hdrs = [
        ("X-Data-Length", str(len(data))),
        ("X-Data-SHA256", hashlib.sha256(data).hexdigest()),
        ("X-Data-Length-Param", environ.get("FCGI_DATA_LENGTH", "")),
        ("X-Data-Last-Mod", environ.get("FCGI_DATA_LAST_MOD", "")),
        ("X-Stdin-Length", str(len(stdin))),
    ]
    return _text(start_response, 200, data.upper(), hdrs)


ROUTES: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
    "/": lambda e, s: _text(s, 200, b"ok\n"),
    "/ping": lambda e, s: _text(s, 200, b"pong\n"),
    "/echo-environ": echo_environ,
    "/echo-body": echo_body,
    "/stream": stream,
    "/big": big,
    "/error": error,
    "/error-after": error_after,
    "/headers": headers,
    "/slow": slow,
    "/rendezvous": rendezvous,
    "/stderr": stderr,
    "/authorize": authorize,
    "/filter": filter_,
}


def _route_path(environ: Environ) -> str:
    """PATH_INFO, else (AUTHORIZER gets none) the path of REQUEST_URI, else the role."""
    role = environ.get("FCGI_ROLE", "")
    path = environ.get("PATH_INFO") or ""
    if not path:
        path = (environ.get("REQUEST_URI") or "").split("?", 1)[0]
    if path not in ROUTES and not path.startswith(("/status/", "/echo-environ/")):
        path = {"AUTHORIZER": "/authorize", "FILTER": "/filter"}.get(role, path)
    return path or "/"


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = _route_path(environ)
    if path.startswith("/status/") and path[8:].isdigit():
        return status(environ, start_response, int(path[8:]))
    if path.startswith("/echo-environ/"):
        path = "/echo-environ"
    handler = ROUTES.get(path)
    if handler is None:
        return _text(start_response, 404, b"not found\n")
    return handler(environ, start_response)


application = app
