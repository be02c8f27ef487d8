"""The WSGI app every backend serves (the C responders implement the same routes).

Routes, chosen by ``PATH_INFO`` (falling back to the path of ``REQUEST_URI``):

* ``/hello``  -- 13-byte body ``Hello, world!``
* ``/64k``    -- 65536 bytes of ``x``
* ``/size/N`` -- N bytes of ``x`` (N <= 16 MiB), for the cost curve
* ``/post``   -- reads the request body, answers its length as text
* ``/upload`` -- same as ``/post``; used with a 1 MiB body
* ``/slow``   -- sleeps 50 ms (blocking, as a sync app waiting on a database would), then
  answers ``slept 50 ms``; the mixed-latency workload sends 1% of its requests here
* anything else -- 404 ``Not Found``

Request headers are not looked at, so 40 (or 100) of them must simply not hurt.
The body is read in 64 KiB pieces so the app itself never holds a whole upload.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]

HELLO = b"Hello, world!"
#: /slow's wait: long next to a ~0.1 ms request, short enough for 1% of a run's requests
SLOW_SECONDS = 0.05
SLOW_BODY = b"slept 50 ms"
BODY_64K = b"x" * 65536
MAX_SIZE = 16 * 1024 * 1024
CHUNK = 65536

_TEXT = "text/plain"
_sizes: dict[int, bytes] = {}


def _read_length(environ: dict[str, Any]) -> int:
    """Read the whole request body in chunks and return how many bytes it had."""
    stream = environ["wsgi.input"]
    try:
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        remaining = 0
    total = 0
    while remaining > 0:
        chunk = stream.read(min(CHUNK, remaining))
        if not chunk:
            break
        total += len(chunk)
        remaining -= len(chunk)
    return total


def _path(environ: dict[str, Any]) -> str:
    path: str = environ.get("PATH_INFO") or ""
    if not path:
        path = str(environ.get("REQUEST_URI") or "").split("?", 1)[0]
    return path


def _sized(n: int) -> bytes:
    body = _sizes.get(n)
    if body is None:
        body = b"x" * n
        if len(_sizes) < 64:
            _sizes[n] = body
    return body


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The benchmark WSGI application."""
    path = _path(environ)
    status = "200 OK"
    if path == "/hello":
        body = HELLO
    elif path == "/64k":
        body = BODY_64K
    elif path in ("/post", "/upload"):
        body = str(_read_length(environ)).encode()
    elif path == "/slow":
        time.sleep(SLOW_SECONDS)
        body = SLOW_BODY
    elif path.startswith("/size/") and path[6:].isdigit() and int(path[6:]) <= MAX_SIZE:
        body = _sized(int(path[6:]))
    else:
        status, body = "404 Not Found", b"Not Found"
    start_response(status, [("Content-Type", _TEXT), ("Content-Length", str(len(body)))])
    return [body]
