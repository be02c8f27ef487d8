"""WSGI apps served by the server tests (each wrapped in wsgiref's validator)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.validate import validator


def _plain(start_response: Any, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _read_all(stream: Any) -> bytes:
    parts = []
    while chunk := stream.read(65536):
        parts.append(chunk)
    return b"".join(parts)


def _main(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/environ":
        keys = {k: v for k, v in environ.items() if isinstance(v, str)}
        keys["wsgi.url_scheme"] = environ["wsgi.url_scheme"]
        keys["wsgi.multiprocess"] = str(environ["wsgi.multiprocess"])
        return _plain(start_response, json.dumps(keys).encode())
    if path == "/echo":
        body = _read_all(environ["wsgi.input"])
        return _plain(start_response, f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode())
    if path == "/lines":
        lines = list(environ["wsgi.input"])
        return _plain(start_response, json.dumps([x.decode() for x in lines]).encode())
    if path == "/ignore-body":
        return _plain(start_response, b"ignored")
    if path == "/slow-body":
        # Reads the body slowly, so an ABORT can arrive in the middle.
        data = environ["wsgi.input"].read(10)
        time.sleep(0.2)
        rest = _read_all(environ["wsgi.input"])
        return _plain(start_response, f"{len(data) + len(rest)}".encode())
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (f"chunk {i}\n".encode() for i in range(5))
    if path == "/big":
        # 8 MiB: far more than the socket buffers hold, so a web server that
        # stops reading leaves the worker blocked in a write.
        return _plain(start_response, b"b" * (8 << 20))
    if path == "/raise":
        raise RuntimeError("deliberate failure before headers")
    if path == "/raise-late":
        return _late_failure(start_response)
    if path == "/stderr":
        environ["wsgi.errors"].write("a line for the error log\n")
        return _plain(start_response, b"logged")
    if path == "/authorize":
        if environ.get("HTTP_AUTHORIZATION") == "secret":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Variable-USER", "alice")])
            return [b""]
        return _plain(start_response, b"no", "403 Forbidden")
    if path == "/filter":
        data = _read_all(environ["fcgi.data"])
        body = _read_all(environ["wsgi.input"])
        text = f"{environ['fcgi.role']} {len(body)} {data.upper().decode()}"
        return _plain(start_response, text.encode())
    return _plain(start_response, b"not found", "404 Not Found")


def _late_failure(start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial "
    raise RuntimeError("deliberate failure after headers")


app = validator(_main)
