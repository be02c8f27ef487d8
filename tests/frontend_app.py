"""The WSGI app behind every front end in the front-end matrix.

``app`` routes on the last path segment (``.../echo``, ``.../upload``), so it
answers the same way whatever split of SCRIPT_NAME/PATH_INFO a web server
chose and wherever it is mounted; the ``echo`` route reports that split so the
tests can check it.  Answers are facts the test checks (environ values, the
sha256 of the body as read) rather than anything trusting the transport.

``authorizer`` is a separate app for the FastCGI AUTHORIZER role.

Only the standard library is used: under Apache the app runs as the web
server's user, from a copy of this file next to a copy of the ``fcgi`` package.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import os
import random
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

DOWNLOAD_SIZE = 20 * 1024 * 1024
DOWNLOAD_PIECE = 256 * 1024
DOWNLOAD_SEED = 20260229

#: The streamed response: its pieces, in order.
STREAM_CHUNKS = [f"piece {i:02d} ".encode() + b"=" * (40 * i) + b"\n" for i in range(10)]
#: How long the gated stream waits for the client's go-ahead.  Not a timing
#: assertion: when it runs out the body says so and the test fails on content.
GATE_WAIT = 60.0
GATE_TIMEOUT_MARK = b"GATE-TIMEOUT\n"

#: Environ keys that ``echo`` reports.
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
    "AUTHZ_USER",
    "wsgi.url_scheme",
)

#: Also set by ``authorizer`` through a ``Variable-`` header.
AUTHZ_VARIABLE = "AUTHZ_USER"
AUTHZ_TOKEN = "open-sesame"

_download: bytes | None = None


def download_body() -> bytes:
    """The exact 20 MiB that the ``download`` route sends (incompressible)."""
    global _download
    if _download is None:
        _download = random.Random(DOWNLOAD_SEED).randbytes(DOWNLOAD_SIZE)
    return _download


def _respond(
    start_response: StartResponse,
    status: str,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    extra: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    start_response(status, [*headers, *extra])
    return [body]


def _json(start_response: StartResponse, data: object, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data, sort_keys=True).encode()
    return _respond(start_response, status, body, "application/json")


def _body_pieces(environ: Environ) -> Iterator[bytes]:
    """The request body in pieces: CONTENT_LENGTH bytes, or up to EOF without one."""
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared:
        remaining = int(declared)
        while remaining > 0:
            piece = stream.read(min(remaining, 65536))
            if not piece:
                raise ValueError(f"request body ended {remaining} bytes early")
            remaining -= len(piece)
            yield piece
        return
    while piece := stream.read(65536):
        yield piece


def _body(environ: Environ) -> bytes:
    return b"".join(_body_pieces(environ))


def echo(environ: Environ, start_response: StartResponse) -> list[bytes]:
    data: dict[str, Any] = {key: environ.get(key) for key in ECHO_KEYS}
    data["body_length"] = len(_body(environ))
    data["pid"] = os.getpid()
    data["query"] = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    # PATH_INFO is a latin-1 "bytes as str" (PEP 3333); report its real text too.
    path_info = environ.get("PATH_INFO", "")
    data["path_info_utf8"] = path_info.encode("latin-1").decode("utf-8", "replace")
    return _json(start_response, data)


def headers(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Report every ``X-Many-*`` request header as the app saw it."""
    seen = {
        key[len("HTTP_X_MANY_") :].lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_X_MANY_")
    }
    return _json(start_response, {"headers": seen})


def _multipart(environ: Environ, body: bytes) -> dict[str, Any]:
    head = f"Content-Type: {environ['CONTENT_TYPE']}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        raw = part.get_payload(decode=True)
        payload = raw if isinstance(raw, bytes) else b""
        if filename is None:
            fields[str(name)] = payload.decode("utf-8")
        else:
            fields[str(name)] = {
                "filename": filename,
                "sha256": hashlib.sha256(payload).hexdigest(),
                "length": len(payload),
            }
    return fields


def form(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Decode a urlencoded or multipart POST body into its fields."""
    body = _body(environ)
    ctype = environ.get("CONTENT_TYPE", "")
    if ctype.startswith("application/x-www-form-urlencoded"):
        fields: dict[str, Any] = {
            k: v[0] for k, v in urllib.parse.parse_qs(body.decode(), keep_blank_values=True).items()
        }
        kind = "urlencoded"
    elif ctype.startswith("multipart/form-data"):
        fields = _multipart(environ, body)
        kind = "multipart"
    else:
        return _respond(start_response, "415 Unsupported Media Type", ctype.encode())
    return _json(start_response, {"kind": kind, "fields": fields})


def upload(environ: Environ, start_response: StartResponse) -> list[bytes]:
    digest = hashlib.sha256()
    size = 0
    for piece in _body_pieces(environ):
        digest.update(piece)
        size += len(piece)
    data = {
        "sha256": digest.hexdigest(),
        "length": size,
        "content_length": environ.get("CONTENT_LENGTH"),
    }
    return _json(start_response, data)


def download(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    body = download_body()
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(body))),
            ("X-Body-SHA256", hashlib.sha256(body).hexdigest()),
        ],
    )
    return (body[i : i + DOWNLOAD_PIECE] for i in range(0, len(body), DOWNLOAD_PIECE))


def stream(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Pieces without Content-Length; with ``?gate=PATH`` the app yields the first
    piece and then waits until the client, having received it, creates PATH."""
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    gate = query.get("gate", [None])[0]
    start_response("200 OK", [("Content-Type", "text/plain")])

    def pieces() -> Iterator[bytes]:
        yield STREAM_CHUNKS[0]
        if gate is not None:
            deadline = time.monotonic() + GATE_WAIT
            while not os.path.exists(gate):
                if time.monotonic() > deadline:
                    yield GATE_TIMEOUT_MARK
                    break
                time.sleep(0.01)
        yield from STREAM_CHUNKS[1:]

    return pieces()


def cookies(environ: Environ, start_response: StartResponse) -> list[bytes]:
    jar = [
        ("Set-Cookie", "alpha=1; Path=/"),
        ("Set-Cookie", "beta=two; Path=/; HttpOnly"),
        ("Set-Cookie", "gamma=3; Path=/; Max-Age=60"),
    ]
    return _respond(start_response, "200 OK", b"three cookies\n", extra=jar)


def redirect(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """302 to the ``echo`` route next to this one (an absolute path, as apps send)."""
    here = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    target = here.rsplit("/", 1)[0] + "/echo?from=redirect"
    location = urllib.parse.quote(target.encode("latin-1"), safe="/?=&")
    return _respond(start_response, "302 Found", b"moved\n", extra=[("Location", location)])


def ping(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """The health-check route (deploy/docker/HEALTHCHECK)."""
    return _respond(start_response, "200 OK", b"pong\n")


def fail(environ: Environ, start_response: StartResponse) -> list[bytes]:
    raise RuntimeError("deliberate failure in the frontend app")


ROUTES: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
    "echo": echo,
    "headers": headers,
    "form": form,
    "upload": upload,
    "download": download,
    "stream": stream,
    "cookies": cookies,
    "redirect": redirect,
    "fail": fail,
    "ping": ping,
}


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    route = ROUTES.get(path.rstrip("/").rsplit("/", 1)[-1])
    if route is None:
        return _respond(start_response, "404 Not Found", f"no route for {path!r}\n".encode())
    return route(environ, start_response)


def authorizer(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """FastCGI AUTHORIZER: 200 plus a ``Variable-`` header for the right token, else 403."""
    if environ.get("HTTP_X_TOKEN") == AUTHZ_TOKEN:
        extra = [(f"Variable-{AUTHZ_VARIABLE}", "alice")]
        return _respond(start_response, "200 OK", b"authorized\n", extra=extra)
    return _respond(start_response, "403 Forbidden", b"denied by the fcgi authorizer\n")
