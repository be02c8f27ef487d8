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

import hashlib
import random
from collections.abc import Generator

import pytest
from frontend_cases import CASE_IDS, CASES, Case, case_upload_chunked, ok_json, run_case
from frontends import (
    FrontEnd,
    ModulesApache,
    SharedDir,
    chgrp_socket,
    find_apache,
    hang_up_mid_response,
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


def backend_of(fe: FrontEnd) -> Backend:
    assert isinstance(fe.server, Backend)
    return fe.server


def worker_pid(fe: FrontEnd) -> int:
    pid: int = ok_json(fe, fe.request("GET", "/app/pid/echo"))["pid"]
    return pid


def chunked_upload_is_refused_by_apache(fe: FrontEnd) -> None:
    """Apache refuses a chunked request body itself: 411, the pool never sees it.

    mod_proxy_uwsgi and mod_proxy_scgi read bodies with REQUEST_CHUNKED_ERROR
    (Apache's "AH01593: chunked Transfer-Encoding forbidden"), and no
    directive changes that: a limit of the modules, said in their site files.
    """
    backend = backend_of(fe)
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
    body = random.Random(1).randbytes(1024 * 1024)
    response = site.request(
        "POST", "/app/upload", body=body, headers={"Content-Type": "application/octet-stream"}
    )
    data = ok_json(site, response)
    assert data["length"] == len(body), site.explain(response)
    assert data["sha256"] == hashlib.sha256(body).hexdigest(), site.explain(response)
    assert data["content_length"] == str(len(body)), site.explain(response)


def test_status_reason_and_repeated_headers_pass_through(site: FrontEnd) -> None:
    response = site.request("GET", "/app/created")
    why = site.explain(response)
    assert (response.status, response.reason) == (201, "Created"), why
    assert response.body == b"created\n", why
    assert response.header("Content-Type") == "text/plain", why
    assert response.header("X-One") == "1", why
    # Apache folds a repeated header into one line; the values and their order stay.
    many = ", ".join(response.header_all("X-Many"))
    assert many == "a, b", why


def test_not_found_is_the_app_s_own(site: FrontEnd) -> None:
    response = site.request("GET", "/app/no/such/route")
    why = site.explain(response)
    assert response.status == 404, why
    assert response.body == b"no route for '/app/no/such/route'\n", why


def test_a_body_over_max_body_size_is_a_413_from_the_pool(site: FrontEnd) -> None:
    backend = backend_of(site)
    refused = backend.stderr_text().count("larger than max_body_size")
    response = site.request("POST", "/app/upload", body=b"z" * (MAX_BODY + 1))
    assert response.status == 413, site.explain(response)
    assert backend.stderr_text().count("larger than max_body_size") == refused + 1, site.explain()
    assert ok_json(site, site.request("GET", "/app/after/echo"))["body_length"] == 0


def test_a_client_that_hangs_up_mid_response_leaves_the_worker_serving(site: FrontEnd) -> None:
    backend = backend_of(site)
    before = worker_pid(site)
    log = backend.stderr_text()
    gone = log.count("went away while we answered")
    tracebacks = log.count("Traceback")
    hang_up_mid_response(site, "/app/endless")
    # Apache closes its connection to the pool once it cannot pass the answer
    # on: the worker logs that once and serves the next request itself.
    assert worker_pid(site) == before, site.explain()
    log = backend.stderr_text()
    assert log.count("went away while we answered") == gone + 1, site.explain()
    assert log.count("Traceback") == tracebacks, site.explain()
