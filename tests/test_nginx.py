"""End to end through a real nginx: HTTP client -> nginx -> fastcgi_pass -> fcgi serve.

nginx runs with the site files shipped in ``deploy/nginx/`` (only paths and
ports filled in), in front of ``python -m fcgi serve apps:app`` bound to a unix
socket or a loopback TCP port.  Every case is followed by a plain request on
the same servers, which must still succeed.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable

import apps
import nginx_checks as checks
import pytest
from nginx_checks import assert_next_request_ok, ok_json
from webservers import Backend, HTTPResponse, Nginx

BACKEND_KINDS = ["unix", "tcp"]

StartBackend = Callable[..., Backend]
StartNginx = Callable[[str, Backend], Nginx]


@pytest.fixture(params=BACKEND_KINDS)
def site(
    request: pytest.FixtureRequest, start_backend: StartBackend, start_nginx: StartNginx
) -> Nginx:
    """nginx with deploy/nginx/fcgi-new-connection.conf in front of a backend serving apps:app."""
    backend = start_backend(request.param, "apps:app")
    return start_nginx("fcgi-new-connection.conf", backend)


@pytest.fixture(params=BACKEND_KINDS)
def keepalive_site(
    request: pytest.FixtureRequest, start_backend: StartBackend, start_nginx: StartNginx
) -> Nginx:
    """nginx with deploy/nginx/fcgi.conf (upstream keepalive, keep_conn on)."""
    backend = start_backend(request.param, "apps:app")
    return start_nginx("fcgi.conf", backend)


def test_get_with_query_string(site: Nginx) -> None:
    target = "/some/dir/echo?a=1&b=two%20words&c=%C3%A9&empty="
    response = site.request("GET", target, headers={"X-Test": "hello"})
    data = ok_json(site, response)
    why = site.explain(response)
    assert data["REQUEST_METHOD"] == "GET", why
    assert data["QUERY_STRING"] == "a=1&b=two%20words&c=%C3%A9&empty=", why
    assert data["REQUEST_URI"] == target, why
    # Mounted at "/": the whole path is PATH_INFO, SCRIPT_NAME is empty (PEP 3333).
    assert data["SCRIPT_NAME"] == "", why
    assert data["PATH_INFO"] == "/some/dir/echo", why
    assert data["HTTP_X_TEST"] == "hello", why
    assert data["SERVER_PROTOCOL"] == "HTTP/1.1", why
    assert data["SERVER_PORT"] == str(site.port), why
    assert data["REMOTE_ADDR"] == "127.0.0.1", why
    assert data["wsgi.url_scheme"] == "http", why
    assert data["body_length"] == 0, why
    assert_next_request_ok(site)


def test_head_request(site: Nginx) -> None:
    response = site.request("HEAD", "/echo")
    assert response.status == 200, site.explain(response)
    assert response.body == b"", site.explain(response)
    assert_next_request_ok(site)


def test_post_one_mebibyte(site: Nginx) -> None:
    checks.post_one_mebibyte(site)


def test_streamed_response(site: Nginx) -> None:
    checks.streamed_response(site)


def test_five_mebibyte_response(site: Nginx) -> None:
    checks.five_mebibyte_response(site)


def test_app_exception_gives_500_without_traceback(site: Nginx) -> None:
    response = site.request("GET", "/raise")
    why = site.explain(response)
    assert response.status == 500, why
    assert apps.SECRET.encode() not in response.body, why
    assert b"Traceback" not in response.body, why
    assert b"RuntimeError" not in response.body, why
    assert_next_request_ok(site)
    # The traceback is not lost: it goes to the backend's log, and over
    # FCGI_STDERR to the web server, which writes it to its error log.
    backend = site.related[0]
    assert apps.SECRET in backend.stderr_text(), site.explain()
    assert apps.SECRET in site.error_log(), site.explain()


def test_not_found_from_app(site: Nginx) -> None:
    checks.not_found_from_app(site)


def test_many_requests_on_one_client_connection(site: Nginx) -> None:
    conn = site.connection()
    try:
        for i in range(20):
            response = site.request("GET", f"/echo?i={i}", conn=conn)
            assert ok_json(site, response)["QUERY_STRING"] == f"i={i}", site.explain(response)
    finally:
        conn.close()


def test_keep_conn_reuses_backend_connections(keepalive_site: Nginx) -> None:
    """fastcgi_keep_conn on + upstream keepalive: requests share FastCGI connections."""
    backend = keepalive_site.related[0]
    seen: set[str] = set()
    requests = 12
    for i in range(requests):
        response = keepalive_site.request("GET", f"/echo?i={i}")
        assert ok_json(keepalive_site, response)["QUERY_STRING"] == f"i={i}", (
            keepalive_site.explain(response)
        )
        seen |= backend.connections()
    # With FCGI_KEEP_CONN honoured the idle connection stays open between
    # requests and nginx reuses it; otherwise every request opens a new one.
    assert seen, f"no open FastCGI connection was ever seen\n{keepalive_site.explain()}"
    assert len(seen) <= 4, (
        f"{requests} requests used {len(seen)} FastCGI connections (keepalive 4): "
        f"{sorted(seen)}\n{keepalive_site.explain()}"
    )
    # Bodies in both directions over a reused connection.
    body = random.Random(2).randbytes(300_000)
    response = keepalive_site.request("POST", "/upload", body=body)
    assert ok_json(keepalive_site, response)["sha256"] == hashlib.sha256(body).hexdigest(), (
        keepalive_site.explain(response)
    )
    response = keepalive_site.request("GET", "/big")
    assert response.status == 200, keepalive_site.explain()
    assert response.body == apps.big_body(), keepalive_site.explain()
    response = keepalive_site.request("GET", "/raise")
    assert response.status == 500, keepalive_site.explain(response)
    assert_next_request_ok(keepalive_site)
    seen |= backend.connections()
    assert len(seen) <= 4, f"{sorted(seen)}\n{keepalive_site.explain()}"


def test_without_keep_conn_connections_are_closed(site: Nginx) -> None:
    """Plain fastcgi_pass (FCGI_KEEP_CONN unset): no FastCGI connection outlives its request."""
    backend = site.related[0]
    for i in range(3):
        ok_json(site, site.request("GET", f"/echo?i={i}"))
    deadline = time.monotonic() + 10
    while backend.connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not backend.connections(), site.explain()
    assert_next_request_ok(site)


def test_keep_conn_with_concurrent_clients_and_one_process(keepalive_site: Nginx) -> None:
    """More kept connections than workers: none waits for another's idle connection.

    nginx opens a new FastCGI connection whenever all its cached ones are busy;
    a single process holding one idle kept connection must still serve the
    others (it parks idle connections instead of waiting on one of them).
    """
    from concurrent.futures import ThreadPoolExecutor

    def fetch(i: int) -> HTTPResponse:
        return keepalive_site.request("GET", f"/stream?client={i}")

    for _ in range(3):
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(fetch, range(6)))
        for response in responses:
            assert response.status == 200, keepalive_site.explain(response)
            assert response.body == b"".join(apps.STREAM_CHUNKS), keepalive_site.explain(response)
    assert_next_request_ok(keepalive_site)
