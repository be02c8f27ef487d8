"""End to end through a real lighttpd: mod_scgi to an fcgi pool speaking SCGI.

lighttpd runs ``deploy/lighttpd/scgi.conf`` as shipped (only the socket path
filled in) in front of a running ``fcgi serve`` with an ``scgi:`` unix socket
listener, the app at "/". mod_scgi is built into Debian's lighttpd 1.4.69
(there is no mod_scgi.so, as there is no mod_fastcgi.so), and
``server.modules += ("mod_scgi")`` loads it.

The site runs the whole front-end matrix (frontend_cases.py: query strings,
forms, a 10 MiB upload, a chunked upload that lighttpd reads whole and sends
with its length, a 20 MiB download, a gated streamed response, many headers,
cookies, a 404, a 500, a redirect, a non-ASCII path, SCRIPT_NAME and PATH_INFO
at any depth), then the cases below: a 1 MiB upload, a status with its reason
and repeated headers, the app's own 404, a 413 from the pool, and a client
that hangs up in the middle of an endless answer.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Generator

import pytest
from frontend_cases import CASE_IDS, CASES, Case, ok_json, run_case
from frontends import FrontEnd, Lighttpd, find_lighttpd, hang_up_mid_response, write_site_app
from webservers import Backend, ServerError, backend_env, fcgi_serve_command

#: The pool refuses request bodies over this: above the matrix's 10 MiB upload.
MAX_BODY = 12 * 1024 * 1024


@pytest.fixture(scope="module")
def lighttpd_binary() -> str:
    try:
        return find_lighttpd()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def site(
    lighttpd_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Generator[FrontEnd, None, None]:
    """scgi.conf: lighttpd -> an SCGI unix socket -> a running ``fcgi serve``."""
    workdir = tmp_path_factory.mktemp("scgi")
    app = write_site_app(workdir)
    sock = workdir / "app.sock"
    backend = Backend(
        command=fcgi_serve_command(app, f"scgi:unix:{sock}", ["--max-body-size", str(MAX_BODY)]),
        bind=f"unix:{sock}",
        workdir=workdir,
        env=backend_env([workdir]),
    )
    server: Lighttpd | None = None
    try:
        backend.start()
        prefix = tmp_path_factory.mktemp("lighttpd")
        docroot = prefix / "docroot"
        docroot.mkdir()
        server = Lighttpd(
            binary=lighttpd_binary,
            sites=[("scgi.conf", {"socket": str(sock)})],
            prefix=prefix,
            docroot=docroot,
            related=[backend],
        )
        server.start()
        yield FrontEnd(
            name="lighttpd scgi.conf (mod_scgi)",
            port=server.port,
            mount="",
            gate_dir=tmp_path_factory.mktemp("gates"),
            streams=True,
            describe=server.diagnostics,
            server=backend,
        )
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if server is not None:
            server.stop()
        backend.stop()


def backend_of(fe: FrontEnd) -> Backend:
    assert isinstance(fe.server, Backend)
    return fe.server


def worker_pid(fe: FrontEnd) -> int:
    pid: int = ok_json(fe, fe.request("GET", "/pid/echo"))["pid"]
    return pid


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matrix(site: FrontEnd, case: Case) -> None:
    run_case(site, case)


def test_scgi_variables_reach_the_app(site: FrontEnd) -> None:
    """What mod_scgi sends: SCRIPT_NAME "" for the root (fix-root-scriptname), the length."""
    response = site.request("POST", "/dir/echo?x=1", body=b"12345")
    data = ok_json(site, response)
    why = site.explain(response)
    assert (data["SCRIPT_NAME"], data["PATH_INFO"]) == ("", "/dir/echo"), why
    assert data["CONTENT_LENGTH"] == "5" and data["body_length"] == 5, why
    assert data["REQUEST_URI"] == "/dir/echo?x=1", why


def test_one_mebibyte_upload(site: FrontEnd) -> None:
    body = random.Random(1).randbytes(1024 * 1024)
    response = site.request(
        "POST", "/upload", body=body, headers={"Content-Type": "application/octet-stream"}
    )
    data = ok_json(site, response)
    assert data["length"] == len(body), site.explain(response)
    assert data["sha256"] == hashlib.sha256(body).hexdigest(), site.explain(response)
    assert data["content_length"] == str(len(body)), site.explain(response)


def test_status_reason_and_repeated_headers_pass_through(site: FrontEnd) -> None:
    response = site.request("GET", "/created")
    why = site.explain(response)
    assert (response.status, response.reason) == (201, "Created"), why
    assert response.body == b"created\n", why
    assert response.header("Content-Type") == "text/plain", why
    assert response.header("X-One") == "1", why
    # lighttpd may fold a repeated header into one line; the values and their order stay.
    many = ", ".join(response.header_all("X-Many"))
    assert many == "a, b", why


def test_not_found_is_the_app_s_own(site: FrontEnd) -> None:
    response = site.request("GET", "/no/such/route")
    why = site.explain(response)
    assert response.status == 404, why
    assert response.body == b"no route for '/no/such/route'\n", why


def test_a_body_over_max_body_size_is_a_413_from_the_pool(site: FrontEnd) -> None:
    backend = backend_of(site)
    refused = backend.stderr_text().count("larger than max_body_size")
    response = site.request("POST", "/upload", body=b"z" * (MAX_BODY + 1))
    assert response.status == 413, site.explain(response)
    assert backend.stderr_text().count("larger than max_body_size") == refused + 1, site.explain()
    assert ok_json(site, site.request("GET", "/after/echo"))["body_length"] == 0


def test_a_client_that_hangs_up_mid_response_leaves_the_worker_serving(site: FrontEnd) -> None:
    backend = backend_of(site)
    before = worker_pid(site)
    log = backend.stderr_text()
    gone = log.count("went away while we answered")
    tracebacks = log.count("Traceback")
    hang_up_mid_response(site, "/endless")
    # lighttpd closes its connection to the pool once the client is gone: the
    # worker logs that once and serves the next request itself.
    assert worker_pid(site) == before, site.explain()
    log = backend.stderr_text()
    assert log.count("went away while we answered") == gone + 1, site.explain()
    assert log.count("Traceback") == tracebacks, site.explain()
