"""End to end through a real Apache 2.4: mod_proxy_uwsgi and mod_proxy_scgi to fcgi.

Apache runs ``deploy/apache/proxy_uwsgi.conf`` and ``deploy/apache/proxy_scgi.conf``
as shipped (only the socket path filled in), each in front of a running
``fcgi serve`` that listens in that protocol on a unix socket: a site that
passed to uWSGI or to an SCGI server, moved to fcgi without a change to its
Apache config. Apache's children run as www-data, as in production.

Each site runs the whole front-end matrix (frontend_cases.py: query strings,
forms, a 10 MiB upload, a 20 MiB download, a gated streamed response, many
headers, cookies, a 404, a 500, a redirect, a non-ASCII path, SCRIPT_NAME and
PATH_INFO at any depth), but for its chunked upload: both modules refuse one
themselves (411), which is checked instead. Then the cases below: a 1 MiB
upload, a status with its reason and repeated headers, the app's own 404, a
413 from the pool, and a client that hangs up in the middle of an endless
answer.
"""

from __future__ import annotations

from collections.abc import Generator

import pool_site_checks as checks
import pytest
from frontend_cases import CASE_IDS, CASES, Case, case_upload_chunked, run_case
from frontends import (
    FrontEnd,
    ModulesApache,
    SharedDir,
    chgrp_socket,
    find_apache,
    write_site_app,
)
from webservers import Backend, ServerError, backend_env, fcgi_serve_command

#: protocol -> (deploy/apache site, what `fcgi serve` needs besides the bind).
#: mod_proxy_uwsgi splits SCRIPT_NAME and PATH_INFO itself; mod_proxy_scgi
#: sends the whole path as SCRIPT_NAME, so the pool is told the mount point.
SITES: dict[str, tuple[str, list[str]]] = {
    "uwsgi": ("proxy_uwsgi.conf", []),
    "scgi": ("proxy_scgi.conf", ["--script-name", "/app"]),
}
#: The pool refuses request bodies over this: above the matrix's 10 MiB upload.
MAX_BODY = 12 * 1024 * 1024
#: Where the site mounts the app.
PREFIX = "/app"


@pytest.fixture(scope="module")
def apache_binary() -> str:
    try:
        return find_apache()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module", params=sorted(SITES))
def site(request: pytest.FixtureRequest, apache_binary: str) -> Generator[FrontEnd, None, None]:
    """Apache with deploy/apache/proxy_PROTOCOL.conf before ``fcgi serve`` on that protocol."""
    protocol: str = request.param
    conf, extra = SITES[protocol]
    shared = SharedDir(f"apache-{protocol}")
    workdir = shared.sub("backend")
    app = write_site_app(workdir)
    sock = workdir / "app.sock"
    backend = Backend(
        command=fcgi_serve_command(
            app, f"{protocol}:unix:{sock}", [*extra, "--max-body-size", str(MAX_BODY)]
        ),
        bind=f"unix:{sock}",
        workdir=workdir,
        env=backend_env([workdir]),
    )
    server: ModulesApache | None = None
    try:
        backend.start()
        chgrp_socket(sock)
        server = ModulesApache(
            binary=apache_binary,
            sites=[(conf, {"socket": str(sock)})],
            shared=shared,
            related=[backend],
        )
        server.start()
        yield FrontEnd(
            name=f"apache {conf} (mod_proxy_{protocol})",
            port=server.port,
            mount="/app",
            gate_dir=shared.sub("gates"),
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
        shared.remove()




def chunked_upload_is_refused_by_apache(fe: FrontEnd) -> None:
    """Apache refuses a chunked request body itself: 411, the pool never sees it.

    mod_proxy_uwsgi and mod_proxy_scgi read bodies with REQUEST_CHUNKED_ERROR
    (Apache's "AH01593: chunked Transfer-Encoding forbidden"), and no
    directive changes that: a limit of the modules, said in their site files.
    """
    backend = checks.backend_of(fe)
    before = backend.stderr_text()
    response = fe.request(
        "POST", "/app/upload", body=iter([b"a" * 1000, b"b" * 70_000]), chunked=True
    )
    assert response.status == 411, fe.explain(response)
    assert backend.stderr_text() == before, fe.explain(response)


#: What a site does instead of a case of the matrix, where its web server
#: cannot do what the case asks: (site name prefix, case) -> replacement.
INSTEAD: dict[tuple[str, Case], Case] = {
    ("apache proxy_uwsgi.conf", case_upload_chunked): chunked_upload_is_refused_by_apache,
    ("apache proxy_scgi.conf", case_upload_chunked): chunked_upload_is_refused_by_apache,
}


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matrix(site: FrontEnd, case: Case) -> None:
    instead = next(
        (c for (name, c0), c in INSTEAD.items() if site.name.startswith(name) and c0 is case), None
    )
    run_case(site, instead or case)


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
