"""End to end through a real nginx: ``uwsgi_pass`` and ``scgi_pass`` to an fcgi pool.

nginx runs ``deploy/nginx/uwsgi.conf`` and ``deploy/nginx/scgi.conf`` as
shipped (only paths and ports filled in) with the distribution's own
``uwsgi_params`` and ``scgi_params``, in front of one pool that listens on a
uwsgi unix socket, an SCGI TCP port and a FastCGI socket at once: a uWSGI
site moved to fcgi without a change to its nginx config. Every case runs
through both sites, and is followed by a plain request that must still
succeed. ASGI apps are served over uwsgi by pools of the asyncio and trio
workers.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import apps
import nginx_checks as checks
import pytest
from nginx_checks import assert_next_request_ok, ok_json
from webservers import (
    HTTP_TIMEOUT,
    Backend,
    Nginx,
    backend_env,
    fcgi_serve_command,
    free_port,
    wait_until_accepting,
)

#: The pool refuses request bodies over this (nginx's own limit in the site
#: files is 64m): the 413 must come from the pool, over each protocol.
MAX_BODY = 2 * 1024 * 1024
#: What a client reads of an endless response before it hangs up.
ABORT_AFTER = 256 * 1024

#: The app the pools serve: tests/apps.py's routes, and what they lack.
APP_SOURCE = """
import hashlib
import json
import time

import apps

CHUNK = b"x" * 65536
#: An endless response stops here if nobody hangs up (a bound, not a size
#: any test reads): 256 MiB.
ENDLESS_CHUNKS = 4096


def _route(path):
    return path.rstrip("/").rsplit("/", 1)[-1]


def endless(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def chunks():
        for _ in range(ENDLESS_CHUNKS):
            yield CHUNK
            # The client hangs up long before the end, whatever nginx buffers.
            time.sleep(0.001)

    return chunks()


def headers(environ, start_response):
    body = b"created\\n"
    start_response("201 Created", [
        ("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
        ("X-One", "1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
    ])
    return [body]


def app(environ, start_response):
    route = _route(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
    if route == "endless":
        return endless(environ, start_response)
    if route == "headers":
        return headers(environ, start_response)
    return apps.app(environ, start_response)


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    length = 0
    digest = hashlib.sha256()
    more = True
    while more:
        message = await receive()
        piece = message.get("body", b"")
        digest.update(piece)
        length += len(piece)
        more = message.get("more_body", False)
    route = _route(scope["path"])
    if route in ("stream", "endless"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        chunks = apps.STREAM_CHUNKS if route == "stream" else [CHUNK] * ENDLESS_CHUNKS
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    data = {
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "root_path": scope["root_path"],
        "query_string": scope["query_string"].decode("latin-1"),
        "method": scope["method"],
        "http_version": scope["http_version"],
        "x_test": dict(scope["headers"]).get(b"x-test", b"").decode("latin-1"),
        "length": length,
        "sha256": digest.hexdigest(),
    }
    out = json.dumps(data, sort_keys=True).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})
"""


# -- servers ---------------------------------------------------------------------------------


def start_pool(workdir: Path, listen: list[str], extra: list[str]) -> Backend:
    """A pool of one worker serving protoapp (written into ``workdir``) on ``listen``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "protoapp.py").write_text(APP_SOURCE)
    first, *more = listen
    others = [arg for spec in more for arg in ("--bind", spec)]
    command = fcgi_serve_command(
        extra[0],
        first,
        [*others, "--workers", "1", "--user", "root", "--status-path", "/status",
         "--ping-path", "/ping", "--max-body-size", str(MAX_BODY), *extra[1:]],
    )  # fmt: skip
    # Backend waits for the first address; it is a unix socket, without its prefix.
    backend = Backend(
        command=command,
        bind=first.split(":", 1)[1],
        workdir=workdir,
        env=backend_env([workdir]),
    )
    return backend.start()


def start_site(binary: str, site: str, target: str, prefix: Path, backend: Backend) -> Nginx:
    """nginx with deploy/nginx/SITE passing to ``target`` (``{{uwsgi_pass}}``/``{{scgi_pass}}``)."""
    key = "uwsgi_pass" if site == "uwsgi.conf" else "scgi_pass"
    nginx = Nginx(binary=binary, site=site, values={key: target}, prefix=prefix, related=[backend])
    return nginx.start()


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, nginx_binary: str
) -> Iterator[dict[str, Nginx]]:
    """One WSGI pool on uwsgi, SCGI and FastCGI listeners; an nginx site for each of the two."""
    workdir = tmp_path_factory.mktemp("pool")
    uwsgi = f"unix:{workdir}/uwsgi.sock"
    scgi = f"127.0.0.1:{free_port()}"
    started: list[Backend | Nginx] = []
    try:
        backend = start_pool(
            workdir,
            [f"uwsgi:{uwsgi}", f"scgi:{scgi}", f"unix:{workdir}/fastcgi.sock"],
            ["protoapp:app"],
        )
        started.append(backend)
        host, port = scgi.rsplit(":", 1)
        assert backend.proc is not None
        wait_until_accepting(
            socket.AF_INET, (host, int(port)), backend.proc, backend.diagnostics, "backend"
        )
        sites: dict[str, Nginx] = {}
        for protocol, target in (("uwsgi", uwsgi), ("scgi", scgi)):
            prefix = tmp_path_factory.mktemp(f"nginx-{protocol}")
            sites[protocol] = start_site(nginx_binary, f"{protocol}.conf", target, prefix, backend)
            started.append(sites[protocol])
        yield sites
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture(params=["uwsgi", "scgi"])
def site(request: pytest.FixtureRequest, servers: dict[str, Nginx]) -> Nginx:
    return servers[request.param]


# -- helpers -----------------------------------------------------------------------------------


def worker_pids(nginx: Nginx) -> list[int]:
    page = nginx.request("GET", "/status?json&full")
    assert page.status == 200, nginx.explain(page)
    return [p["pid"] for p in json.loads(page.body)["processes"]]


def abort_mid_response(nginx: Nginx, target: str) -> None:
    """GET ``target``, read ABORT_AFTER bytes of the answer, hang up."""
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        received = 0
        while received < ABORT_AFTER:
            chunk = sock.recv(65536)
            assert chunk, f"the answer ended after {received} bytes\n{nginx.explain()}"
            received += len(chunk)


# -- a WSGI app through each site --------------------------------------------------------------


def test_get_with_query_string_and_headers(site: Nginx) -> None:
    target = "/some/dir/echo?a=1&b=two%20words&c=%C3%A9&empty="
    response = site.request("GET", target, headers={"X-Test": "hello"})
    data = ok_json(site, response)
    why = site.explain(response)
    assert data["REQUEST_METHOD"] == "GET", why
    assert data["QUERY_STRING"] == "a=1&b=two%20words&c=%C3%A9&empty=", why
    assert data["REQUEST_URI"] == target, why
    # Mounted at "/": the whole path is PATH_INFO, SCRIPT_NAME is empty (PEP 3333),
    # whether nginx sent PATH_INFO (uwsgi_params) or only REQUEST_URI (scgi_params).
    assert data["SCRIPT_NAME"] == "", why
    assert data["PATH_INFO"] == "/some/dir/echo", why
    assert data["HTTP_X_TEST"] == "hello", why
    assert data["SERVER_PROTOCOL"] == "HTTP/1.1", why
    assert data["SERVER_PORT"] == str(site.port), why
    assert data["REMOTE_ADDR"] == "127.0.0.1", why
    assert data["wsgi.url_scheme"] == "http", why
    # SCGI always sends CONTENT_LENGTH, "0" for no body; uwsgi_params sends it empty.
    no_length = "0" if site.site == "scgi.conf" else None
    assert data["CONTENT_LENGTH"] == no_length and data["CONTENT_TYPE"] is None, why
    assert data["body_length"] == 0, why
    assert_next_request_ok(site)


def test_non_ascii_path(site: Nginx) -> None:
    target = "/caf%C3%A9/na%C3%AFve/echo?q=%C3%A9"
    response = site.request("GET", target)
    data = ok_json(site, response)
    why = site.explain(response)
    # PEP 3333: the path's bytes (UTF-8 from the client) as a latin-1 native string.
    assert data["PATH_INFO"] == "/café/naïve/echo".encode().decode("latin-1"), why
    assert data["REQUEST_URI"] == target, why
    assert data["QUERY_STRING"] == "q=%C3%A9", why
    assert_next_request_ok(site)


def test_post_one_mebibyte(site: Nginx) -> None:
    checks.post_one_mebibyte(site)


def test_streamed_response(site: Nginx) -> None:
    checks.streamed_response(site)


def test_status_and_headers_pass_through(site: Nginx) -> None:
    response = site.request("GET", "/headers")
    why = site.explain(response)
    assert (response.status, response.reason) == (201, "Created"), why
    assert response.body == b"created\n", why
    assert response.header("X-One") == "1", why
    assert response.header_all("Set-Cookie") == ["a=1", "b=2"], why
    assert response.header("Content-Type") == "text/plain", why
    assert_next_request_ok(site)


def test_five_mebibyte_response(site: Nginx) -> None:
    checks.five_mebibyte_response(site)


def test_not_found_from_app(site: Nginx) -> None:
    checks.not_found_from_app(site)


def test_app_exception_gives_500_and_the_traceback_stays_in_the_log(site: Nginx) -> None:
    response = site.request("GET", "/raise")
    why = site.explain(response)
    assert response.status == 500, why
    assert apps.SECRET.encode() not in response.body, why
    assert b"Traceback" not in response.body, why
    assert_next_request_ok(site)
    # These protocols have no stderr channel: the traceback is in the pool's log.
    backend = site.related[0]
    assert apps.SECRET in backend.stderr_text(), site.explain()


def test_the_status_page_and_ping(site: Nginx) -> None:
    status = site.request("GET", "/status?json")
    assert status.status == 200, site.explain(status)
    doc = json.loads(status.body)
    assert doc["pool"] == "www" and doc["process manager"] == "static", site.explain(status)
    ping = site.request("GET", "/ping")
    assert (ping.status, ping.body) == (200, b"pong"), site.explain(ping)
    assert_next_request_ok(site)


def test_max_body_size_is_a_413_from_the_pool(site: Nginx) -> None:
    body = b"z" * (MAX_BODY + 1)
    response = site.request("POST", "/upload", body=body)
    assert response.status == 413, site.explain(response)
    assert "larger than max_body_size" in site.related[0].stderr_text(), site.explain()
    assert_next_request_ok(site)


def test_a_client_that_hangs_up_mid_response_leaves_the_worker_serving(site: Nginx) -> None:
    before = worker_pids(site)
    backend = site.related[0]
    gone = backend.stderr_text().count("went away while we answered")
    abort_mid_response(site, "/endless")
    assert_next_request_ok(site)
    # The one worker, not a new one: it saw nginx close mid-answer and went on.
    assert worker_pids(site) == before, site.explain()
    assert backend.stderr_text().count("went away while we answered") == gone + 1, site.explain()


# -- an ASGI app over uwsgi, in the asyncio and trio workers -----------------------------------


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def asgi_site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nginx_binary: str
) -> Iterator[Nginx]:
    workdir = tmp_path_factory.mktemp(f"asgi-{request.param}")
    uwsgi = f"unix:{workdir}/uwsgi.sock"
    started: list[Backend | Nginx] = []
    try:
        backend = start_pool(
            workdir, [f"uwsgi:{uwsgi}"], ["protoapp:asgi", "--worker", request.param]
        )
        started.append(backend)
        prefix = tmp_path_factory.mktemp("nginx-asgi")
        nginx = start_site(nginx_binary, "uwsgi.conf", uwsgi, prefix, backend)
        started.append(nginx)
        yield nginx
    finally:
        for server in reversed(started):
            server.stop()


def test_asgi_get_over_uwsgi(asgi_site: Nginx) -> None:
    target = "/caf%C3%A9/echo?a=1&b=%20"
    response = asgi_site.request("GET", target, headers={"X-Test": "hello"})
    data = ok_json(asgi_site, response)
    why = asgi_site.explain(response)
    assert data["path"] == "/café/echo", why
    assert data["raw_path"] == "/caf%C3%A9/echo", why
    assert data["root_path"] == "", why
    assert data["query_string"] == "a=1&b=%20", why
    assert data["method"] == "GET", why
    assert data["http_version"] == "1.1", why
    assert data["x_test"] == "hello", why
    assert data["length"] == 0, why


def test_asgi_upload_over_uwsgi(asgi_site: Nginx) -> None:
    body = random.Random(2).randbytes(1024 * 1024)
    response = asgi_site.request("POST", "/upload", body=body)
    data = ok_json(asgi_site, response)
    assert data["length"] == len(body), asgi_site.explain(response)
    assert data["sha256"] == hashlib.sha256(body).hexdigest(), asgi_site.explain(response)


def test_asgi_streamed_response_over_uwsgi(asgi_site: Nginx) -> None:
    response = asgi_site.request("GET", "/stream")
    assert response.status == 200, asgi_site.explain(response)
    assert response.body == b"".join(apps.STREAM_CHUNKS), asgi_site.explain(response)
    assert response.header("Transfer-Encoding") == "chunked", asgi_site.explain(response)


def test_asgi_status_page_and_413_over_uwsgi(asgi_site: Nginx) -> None:
    status = asgi_site.request("GET", "/status?json")
    assert json.loads(status.body)["pool"] == "www", asgi_site.explain(status)
    refused = asgi_site.request("POST", "/upload", body=b"z" * (MAX_BODY + 1))
    assert refused.status == 413, asgi_site.explain(refused)


def test_asgi_client_hanging_up_mid_response_leaves_the_worker_serving(asgi_site: Nginx) -> None:
    before = worker_pids(asgi_site)
    abort_mid_response(asgi_site, "/endless")
    response = asgi_site.request("GET", "/echo?after=1")
    assert ok_json(asgi_site, response)["query_string"] == "after=1", asgi_site.explain(response)
    assert worker_pids(asgi_site) == before, asgi_site.explain()
