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

from collections.abc import Generator

import pool_site_checks as checks
import pytest
from frontend_cases import CASE_IDS, CASES, Case, ok_json, run_case
from frontends import FrontEnd, Lighttpd, find_lighttpd, write_site_app
from webservers import Backend, ServerError, backend_env, fcgi_serve_command

#: The pool refuses request bodies over this: above the matrix's 10 MiB upload.
MAX_BODY = 12 * 1024 * 1024
#: Where the site mounts the app.
PREFIX = ""


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
    checks.one_mebibyte_upload(site, PREFIX)


def test_status_reason_and_repeated_headers_pass_through(site: FrontEnd) -> None:
    checks.status_reason_and_repeated_headers(site, PREFIX)


def test_not_found_is_the_app_s_own(site: FrontEnd) -> None:
    checks.not_found_is_the_app_s_own(site, PREFIX)


def test_a_body_over_max_body_size_is_a_413_from_the_pool(site: FrontEnd) -> None:
    checks.body_over_max_body_size_is_a_413(site, PREFIX, MAX_BODY)


def test_a_client_that_hangs_up_mid_response_leaves_the_worker_serving(site: FrontEnd) -> None:
    checks.hang_up_leaves_the_worker_serving(site, PREFIX)
