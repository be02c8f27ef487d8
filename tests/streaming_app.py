"""WSGI app for the nginx streaming tests (tests/test_nginx_streaming.py).

Everything :mod:`frontend_app` routes (``stream`` with its ``?gate=`` go-ahead,
``echo``, ``upload``, ...) plus ``gated-upload``, the upload-side counterpart of
the gated stream: the app reads the first ``first`` bytes of the body, then
creates the ``marker`` file, then reads the rest.  The client sends only that
first part, waits for the marker and only then sends the rest, so the marker
can only appear if the web server passed the start of the body on while the
client was still sending it.  Nothing here measures time.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import frontend_app
from frontend_app import Environ, StartResponse

READ_SIZE = 65536


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _read_into(stream: Readable, digest: hashlib._Hash, limit: int | None) -> int:
    """Read ``limit`` bytes (up to EOF if None, or if it comes first) into ``digest``."""
    done = 0
    while limit is None or done < limit:
        piece = stream.read(READ_SIZE if limit is None else min(READ_SIZE, limit - done))
        if not piece:
            break
        digest.update(piece)
        done += len(piece)
    return done


def gated_upload(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """``?first=N&marker=PATH``: read N bytes, create PATH, read the rest, report.

    The rest is read up to CONTENT_LENGTH, or to the end of wsgi.input when the
    web server sent none (a chunked upload passed on unbuffered).
    """
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    first = int(query["first"][0])
    marker = Path(query["marker"][0])
    stream: Readable = environ["wsgi.input"]
    digest = hashlib.sha256()
    first_read = _read_into(stream, digest, first)
    marker.touch()
    declared = environ.get("CONTENT_LENGTH") or ""
    rest_read = _read_into(stream, digest, int(declared) - first_read if declared else None)
    data = {
        "first_read": first_read,
        "length": first_read + rest_read,
        "sha256": digest.hexdigest(),
        "content_length": environ.get("CONTENT_LENGTH"),
    }
    body = json.dumps(data, sort_keys=True).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    if path.rstrip("/").rsplit("/", 1)[-1] == "gated-upload":
        return gated_upload(environ, start_response)
    return frontend_app.app(environ, start_response)
