"""nginx passing bodies on as they flow, and nginx splitting the path.

Two deploy files, started as shipped (only paths and ports filled in):

* ``deploy/nginx/fcgi-stream.conf`` (``fastcgi_buffering off`` and
  ``fastcgi_request_buffering off``) in front of ``streaming_app:app``, served
  by a single sync process (``fcgi serve``) and by a pool (``--workers 2``):

  - a streamed response's first piece reaches the HTTP client before the app
    produces the rest: the app sends its first piece and then waits for a
    go-ahead file that the test creates only after it has received that piece
    (``frontend_cases.case_streamed_response``);
  - an upload reaches the app while the client is still sending it: the client
    sends the first part of the body and waits for a marker file that the app
    creates only after it has read that part; only then does the client send
    the rest.  With request buffering on, nginx would hold the first part until
    the whole body had arrived, the marker would never appear and the test
    fails.  The same with a chunked (Transfer-Encoding: chunked) upload, which
    nginx 1.22 also passes on unbuffered, without a CONTENT_LENGTH.

* ``deploy/nginx/fcgi-split-path.conf`` (``fastcgi_split_path_info``): the app
  at /app sees SCRIPT_NAME=/app and PATH_INFO=the rest.

Nothing here measures time: every wait is on an event (a piece received, a
file created), with a generous deadline only against hangs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import select
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from frontend_app import GATE_WAIT
from frontend_cases import assert_next_request_ok, case_streamed_response, run_case
from frontends import FrontEnd
from webservers import Backend, HTTPResponse, Nginx

StartBackend = Callable[..., Backend]
StartNginx = Callable[[str, Backend], Nginx]

#: name -> (backend kind, extra `fcgi serve` arguments)
BACKENDS: dict[str, tuple[str, list[str]]] = {
    "sync": ("unix", []),
    "pool": ("tcp", ["--workers", "2", "--user", "root"]),
}


@pytest.fixture(params=list(BACKENDS), ids=[f"stream-{name}" for name in BACKENDS])
def stream_site(
    request: pytest.FixtureRequest, start_backend: StartBackend, start_nginx: StartNginx
) -> FrontEnd:
    """nginx with deploy/nginx/fcgi-stream.conf in front of streaming_app:app."""
    kind, extra = BACKENDS[request.param]
    backend = start_backend(kind, "streaming_app:app", extra=extra)
    nginx = start_nginx("fcgi-stream.conf", backend)
    return FrontEnd(
        name=f"nginx fcgi-stream.conf, {request.param} backend ({' '.join(backend.command)})",
        port=nginx.port,
        mount="",
        gate_dir=backend.workdir,
        streams=True,
        describe=nginx.diagnostics,
        server=nginx,
    )


# --------------------------------------------------------------------------- responses


def test_streamed_response_first_piece_before_last(stream_site: FrontEnd) -> None:
    """fastcgi_buffering off: the client holds the first piece while the app
    still waits for the client's go-ahead to produce the rest.  Repeated, so a
    pool's requests land on more than one worker."""
    for _ in range(3):
        run_case(stream_site, case_streamed_response)


# --------------------------------------------------------------------------- uploads


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def gated_upload(
    fe: FrontEnd, first: Sequence[bytes], rest: Sequence[bytes], *, chunked: bool
) -> tuple[HTTPResponse, dict[str, Any]]:
    """POST ``first`` pieces, wait until the app has read them, then the ``rest``.

    The app (``streaming_app.gated_upload``) creates the marker file once it
    has read ``len(b"".join(first))`` bytes.  The wait fails the test if the
    marker does not appear, or if nginx answers before the body is complete.
    """
    head = b"".join(first)
    total = len(head) + sum(len(piece) for piece in rest)
    marker = fe.gate_dir / f"marker-{uuid.uuid4().hex}"
    target = "/gated-upload?" + urllib.parse.urlencode({"first": len(head), "marker": marker})
    frame = _chunk if chunked else bytes
    conn = fe.connection()
    try:
        conn.putrequest("POST", target, skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/octet-stream")
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        else:
            conn.putheader("Content-Length", str(total))
        conn.endheaders()
        for piece in first:
            conn.send(frame(piece))
        _wait_for_marker(fe, conn, marker, len(head), total)
        for piece in rest:
            conn.send(frame(piece))
        if chunked:
            conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        response = HTTPResponse(resp.status, resp.reason, resp.getheaders(), resp.read())
    except (OSError, http.client.HTTPException) as exc:
        raise AssertionError(f"POST {target} failed: {exc!r}\n{fe.explain()}") from exc
    finally:
        conn.close()
        marker.unlink(missing_ok=True)
    assert response.status == 200, fe.explain(response)
    data: dict[str, Any] = json.loads(response.body)
    return response, data


def _wait_for_marker(
    fe: FrontEnd, conn: http.client.HTTPConnection, marker: Path, sent: int, total: int
) -> None:
    """Until the app has created ``marker``: it has read what was sent so far."""
    deadline = time.monotonic() + GATE_WAIT
    while not marker.exists():
        assert conn.sock is not None
        readable, _, _ = select.select([conn.sock], [], [], 0.01)
        if readable:  # nginx answered (or closed) before the body was complete
            resp = conn.getresponse()
            early = HTTPResponse(resp.status, resp.reason, resp.getheaders(), resp.read())
            raise AssertionError(
                f"nginx answered after {sent} of {total} body bytes\n{fe.explain(early)}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the app never read the first {sent} of {total} body bytes while the client "
                f"held back the rest: nginx did not pass the upload on as it arrived "
                f"(request buffering?)\n{fe.explain()}"
            )


def test_upload_reaches_app_while_client_sends(stream_site: FrontEnd) -> None:
    """fastcgi_request_buffering off, Content-Length upload."""
    rng = random.Random(41)
    first = [rng.randbytes(100_003)]
    rest = [rng.randbytes(size) for size in (1, 65_536, 1_000_000, 777)]
    whole = b"".join([*first, *rest])
    response, data = gated_upload(stream_site, first, rest, chunked=False)
    why = stream_site.explain(response)
    assert data["first_read"] == len(first[0]), why
    assert data["length"] == len(whole), why
    assert data["sha256"] == hashlib.sha256(whole).hexdigest(), why
    assert data["content_length"] == str(len(whole)), why
    assert_next_request_ok(stream_site)


def test_chunked_upload_reaches_app_while_client_sends(stream_site: FrontEnd) -> None:
    """fastcgi_request_buffering off, Transfer-Encoding: chunked upload.

    nginx 1.22 passes a chunked body on unbuffered to FastCGI too (unlike
    proxy_pass to an HTTP/1.0 upstream, where it buffers chunked bodies
    regardless): it de-chunks the body into FCGI_STDIN as it arrives and,
    not knowing the length yet, sends an empty CONTENT_LENGTH, which fcgi
    leaves out of the environ (PEP 3333).  The app reads wsgi.input to its
    end and gets the whole body.  (A chunked body that nginx already holds
    complete when it contacts the backend, a small one sent with the headers,
    goes with its CONTENT_LENGTH, as with request buffering on.)
    """
    rng = random.Random(42)
    first = [rng.randbytes(size) for size in (1, 4096, 95_906)]
    rest = [rng.randbytes(size) for size in (3, 65_536, 1_000_000, 17)]
    whole = b"".join([*first, *rest])
    response, data = gated_upload(stream_site, first, rest, chunked=True)
    why = stream_site.explain(response)
    assert data["first_read"] == sum(len(piece) for piece in first), why
    assert data["length"] == len(whole), why
    assert data["sha256"] == hashlib.sha256(whole).hexdigest(), why
    assert data["content_length"] is None, why
    assert_next_request_ok(stream_site)


# --------------------------------------------------------------------------- split path


#: name -> extra `fcgi serve` arguments for the backend behind fcgi-split-path.conf
SPLIT_BACKENDS: dict[str, list[str]] = {
    # fcgi trusts the non-empty PATH_INFO that nginx sends.
    "trust-path-info": [],
    # ... or is told the mount point as well, which the deploy file suggests
    # for apps that must see SCRIPT_NAME=/app on the bare /app too.
    "script-name": ["--script-name", "/app"],
}


@pytest.fixture(params=list(SPLIT_BACKENDS), ids=[f"split-{n}" for n in SPLIT_BACKENDS])
def split_site(
    request: pytest.FixtureRequest, start_backend: StartBackend, start_nginx: StartNginx
) -> tuple[str, Nginx]:
    """nginx with deploy/nginx/fcgi-split-path.conf in front of frontend_app:echo
    (which reports its environ for every path)."""
    backend = start_backend("unix", "frontend_app:echo", extra=SPLIT_BACKENDS[request.param])
    return request.param, start_nginx("fcgi-split-path.conf", backend)


def echo(nginx: Nginx, target: str) -> dict[str, Any]:
    response = nginx.request("GET", target)
    assert response.status == 200, nginx.explain(response)
    data: dict[str, Any] = json.loads(response.body)
    assert data["REQUEST_URI"] == target, nginx.explain(response)
    return data


def test_split_path_info(split_site: tuple[str, Nginx]) -> None:
    variant, nginx = split_site
    for rest in ("/", "/echo", "/one/two/three", "/trailing/"):
        data = echo(nginx, f"/app{rest}?q=1")
        assert (data["SCRIPT_NAME"], data["PATH_INFO"]) == ("/app", rest), nginx.explain()
        assert data["QUERY_STRING"] == "q=1", nginx.explain()

    # Non-ASCII, percent-encoded: nginx decodes the path, and PATH_INFO is the
    # UTF-8 bytes of the decoded text as a latin-1 string (PEP 3333).
    text = "/café/naïve space/€"
    data = echo(nginx, "/app/caf%C3%A9/na%C3%AFve%20space/%E2%82%AC")
    assert data["SCRIPT_NAME"] == "/app", nginx.explain()
    assert data["PATH_INFO"] == text.encode("utf-8").decode("latin-1"), nginx.explain()
    assert data["path_info_utf8"] == text, nginx.explain()

    # The bare mount point: "/app" does not match ^(/app)(/.*)$, so nginx sends
    # SCRIPT_NAME=/app (its $fastcgi_script_name is then the whole $uri) and
    # an empty PATH_INFO.  Told the mount point (--script-name /app), fcgi
    # gives the PEP 3333 split: SCRIPT_NAME=/app, PATH_INFO="".  Without it,
    # fcgi cannot tell this from nginx's stock fastcgi_params (whole path in
    # SCRIPT_NAME, no PATH_INFO) and, as documented in fcgi.wsgi.fix_script_name,
    # takes the app to be mounted at the root: SCRIPT_NAME="", PATH_INFO="/app".
    # Either way SCRIPT_NAME + PATH_INFO is the request path.
    data = echo(nginx, "/app")
    expected = ("/app", "") if variant == "script-name" else ("", "/app")
    assert (data["SCRIPT_NAME"], data["PATH_INFO"]) == expected, nginx.explain()

    # Outside the location nginx answers itself; the app is not asked.
    for outside in ("/apple", "/", "/other/app/x"):
        response = nginx.request("GET", outside)
        assert response.status == 404, nginx.explain(response)
        assert b"nginx" in response.body, nginx.explain(response)
