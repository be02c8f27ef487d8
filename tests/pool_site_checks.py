"""Checks every front end in front of a pool on a uwsgi: or scgi: listener must pass.

Beside the front-end matrix (frontend_cases.py), which each site runs whole:
these need the pool itself (its log, its workers) behind the site. Each takes
the path prefix the site mounts the app under ("" or "/app").
"""

from __future__ import annotations

import hashlib
import random

from frontend_cases import ok_json
from frontends import FrontEnd, hang_up_mid_response
from webservers import Backend


def backend_of(fe: FrontEnd) -> Backend:
    assert isinstance(fe.server, Backend)
    return fe.server


def worker_pid(fe: FrontEnd, prefix: str) -> int:
    pid: int = ok_json(fe, fe.request("GET", f"{prefix}/pid/echo"))["pid"]
    return pid


def one_mebibyte_upload(site: FrontEnd, prefix: str) -> None:
    body = random.Random(1).randbytes(1024 * 1024)
    response = site.request(
        "POST", f"{prefix}/upload", body=body, headers={"Content-Type": "application/octet-stream"}
    )
    data = ok_json(site, response)
    assert data["length"] == len(body), site.explain(response)
    assert data["sha256"] == hashlib.sha256(body).hexdigest(), site.explain(response)
    assert data["content_length"] == str(len(body)), site.explain(response)


def status_reason_and_repeated_headers(site: FrontEnd, prefix: str) -> None:
    response = site.request("GET", f"{prefix}/created")
    why = site.explain(response)
    assert (response.status, response.reason) == (201, "Created"), why
    assert response.body == b"created\n", why
    assert response.header("Content-Type") == "text/plain", why
    assert response.header("X-One") == "1", why
    # A front end may fold a repeated header into one line; the values and
    # their order stay.
    many = ", ".join(response.header_all("X-Many"))
    assert many == "a, b", why


def not_found_is_the_app_s_own(site: FrontEnd, prefix: str) -> None:
    response = site.request("GET", f"{prefix}/no/such/route")
    why = site.explain(response)
    assert response.status == 404, why
    assert response.body == f"no route for '{prefix}/no/such/route'\n".encode(), why


def body_over_max_body_size_is_a_413(site: FrontEnd, prefix: str, max_body: int) -> None:
    backend = backend_of(site)
    refused = backend.stderr_text().count("larger than max_body_size")
    response = site.request("POST", f"{prefix}/upload", body=b"z" * (max_body + 1))
    assert response.status == 413, site.explain(response)
    assert backend.stderr_text().count("larger than max_body_size") == refused + 1, site.explain()
    assert ok_json(site, site.request("GET", f"{prefix}/after/echo"))["body_length"] == 0


def hang_up_leaves_the_worker_serving(site: FrontEnd, prefix: str) -> None:
    """The front end closes its connection to the pool once the client is gone:
    the worker logs that once and serves the next request itself."""
    backend = backend_of(site)
    before = worker_pid(site, prefix)
    log = backend.stderr_text()
    gone = log.count("went away while we answered")
    tracebacks = log.count("Traceback")
    hang_up_mid_response(site, f"{prefix}/endless")
    assert worker_pid(site, prefix) == before, site.explain()
    log = backend.stderr_text()
    assert log.count("went away while we answered") == gone + 1, site.explain()
    assert log.count("Traceback") == tracebacks, site.explain()
