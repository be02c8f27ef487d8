"""A small WSGI app to see fcgi serving something: ``fcgi serve fcgi.demo:app``."""

from __future__ import annotations

import hashlib
import html
import os
from collections.abc import Iterable

from fcgi.wsgi import StartResponse, WSGIEnviron


def app(environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "") or "/"
    if path == "/echo":
        body = environ["wsgi.input"].read()
        digest = hashlib.sha256(body).hexdigest()
        text = f"{len(body)} bytes, sha256 {digest}\n".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [text]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(environ[k]))}</td></tr>"
        for k in sorted(environ)
        if k.isupper()
    )
    page = (
        "<!doctype html><title>fcgi demo</title>"
        f"<h1>Hello from fcgi</h1><p>worker pid {os.getpid()}, path {html.escape(path)}</p>"
        f"<table>{rows}</table>\n"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [page]
