"""WSGI apps that the end-to-end tests serve through real web servers.

Each app is a plain PEP 3333 callable, importable as ``apps:NAME`` by a backend
started with ``tests/`` on ``PYTHONPATH``.  ``app`` dispatches on the last path
segment to all the others, so one backend process can serve a whole test
module and every case can be followed by "the next request still succeeds".

The apps answer with facts the test checks (what the environ held, the sha256
of what was read) rather than trusting the transport.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

#: Number of chunks, and their bodies, that ``stream_app`` yields.
STREAM_CHUNKS = [f"chunk {i:02d} ".encode() + b"." * (100 * i) + b"\n" for i in range(8)]

BIG_SIZE = 5 * 1024 * 1024
BIG_PIECE = 64 * 1024


def big_body() -> bytes:
    """The exact 5 MiB that ``big_app`` sends (deterministic, incompressible)."""
    return random.Random(20240229).randbytes(BIG_SIZE)


#: Raised by ``raise_app``; the tests check this text never reaches the client.
SECRET = "do-not-leak-this-8d1f0c"

#: CGI and WSGI keys that ``echo_app`` reports back.
ECHO_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "REQUEST_URI",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "HTTP_HOST",
    "HTTP_X_TEST",
    "HTTPS",
    "wsgi.url_scheme",
)


def _json(start_response: StartResponse, data: object, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data, sort_keys=True).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _read_body(environ: Environ) -> Iterator[bytes]:
    """Yield the request body in pieces, reading exactly CONTENT_LENGTH bytes."""
    stream = environ["wsgi.input"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    while length > 0:
        piece = stream.read(min(length, 65536))
        if not piece:
            raise ValueError(f"request body ended {length} bytes early")
        length -= len(piece)
        yield piece


def echo_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Report the request's environ (selected keys) as JSON."""
    data = {key: environ.get(key) for key in ECHO_KEYS}
    data["body_length"] = sum(len(piece) for piece in _read_body(environ))
    return _json(start_response, data)


def upload_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Hash the request body; 400 if it does not match ``X-Expect-SHA256``."""
    digest = hashlib.sha256()
    size = 0
    for piece in _read_body(environ):
        digest.update(piece)
        size += len(piece)
    expected = environ.get("HTTP_X_EXPECT_SHA256")
    data = {"sha256": digest.hexdigest(), "length": size, "expected": expected}
    status = "200 OK" if expected in (None, digest.hexdigest()) else "400 Bad Request"
    return _json(start_response, data, status)


def stream_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A generator response of several chunks and no Content-Length."""
    start_response("200 OK", [("Content-Type", "text/plain")])

    def chunks() -> Iterator[bytes]:
        yield from STREAM_CHUNKS

    return chunks()


def big_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A 5 MiB response, announced with its sha256 in ``X-Body-SHA256``."""
    body = big_body()
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(body))),
            ("X-Body-SHA256", hashlib.sha256(body).hexdigest()),
        ],
    )
    return (body[i : i + BIG_PIECE] for i in range(0, len(body), BIG_PIECE))


def raise_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Fail before starting the response: the server must answer 500."""
    raise RuntimeError(f"deliberate failure {SECRET}")


ROUTES: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
    "echo": echo_app,
    "upload": upload_app,
    "stream": stream_app,
    "big": big_app,
    "raise": raise_app,
}


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Dispatch on the last path segment, wherever the server put the path.

    Servers split the path between SCRIPT_NAME and PATH_INFO differently, and the
    echo route is how the tests check that split, so routing must not depend on it.
    """
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    route = ROUTES.get(path.rstrip("/").rsplit("/", 1)[-1])
    if route is None:
        body = f"no route for {path!r}\n".encode()
        start_response(
            "404 Not Found",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        )
        return [body]
    return route(environ, start_response)
