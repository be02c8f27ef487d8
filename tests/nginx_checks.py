"""What every nginx site in front of fcgi must answer, whichever protocol it passes on.

tests/test_nginx.py runs these over `fastcgi_pass`, tests/test_nginx_uwsgi_scgi.py
over `uwsgi_pass` and `scgi_pass`: the same assertions, written once. Each
ends by checking that the next plain request is still answered.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import apps
from webservers import HTTPResponse, Nginx


def ok_json(nginx: Nginx, response: HTTPResponse) -> dict[str, Any]:
    assert response.status == 200, nginx.explain(response)
    assert response.header("Content-Type") == "application/json", nginx.explain(response)
    data: dict[str, Any] = json.loads(response.body)
    return data


def assert_next_request_ok(nginx: Nginx) -> None:
    """The servers are still healthy: a plain GET gets the right answer."""
    response = nginx.request("GET", "/after/echo?next=1")
    data = ok_json(nginx, response)
    assert data["QUERY_STRING"] == "next=1", nginx.explain(response)
    assert data["REQUEST_METHOD"] == "GET", nginx.explain(response)


def post_one_mebibyte(site: Nginx) -> None:
    body = random.Random(1).randbytes(1024 * 1024)
    digest = hashlib.sha256(body).hexdigest()
    response = site.request(
        "POST",
        "/upload",
        body=body,
        headers={"Content-Type": "application/octet-stream", "X-Expect-SHA256": digest},
    )
    data = ok_json(site, response)
    assert data["length"] == len(body), site.explain(response)
    assert data["sha256"] == digest, site.explain(response)
    assert_next_request_ok(site)


def streamed_response(site: Nginx) -> None:
    response = site.request("GET", "/stream")
    assert response.status == 200, site.explain(response)
    assert response.body == b"".join(apps.STREAM_CHUNKS), site.explain(response)
    # No Content-Length from the app: nginx must frame the body itself.
    assert response.header("Content-Length") is None, site.explain(response)
    assert response.header("Transfer-Encoding") == "chunked", site.explain(response)
    assert_next_request_ok(site)


def five_mebibyte_response(site: Nginx) -> None:
    expected = hashlib.sha256(apps.big_body()).hexdigest()
    response = site.request("GET", "/big")
    assert response.status == 200, site.explain()
    assert len(response.body) == apps.BIG_SIZE, site.explain()
    assert response.header("X-Body-SHA256") == expected, site.explain()
    assert hashlib.sha256(response.body).hexdigest() == expected, site.explain()
    assert_next_request_ok(site)


def not_found_from_app(site: Nginx) -> None:
    response = site.request("GET", "/no/such/route")
    assert response.status == 404, site.explain(response)
    assert response.body == b"no route for '/no/such/route'\n", site.explain(response)
    assert_next_request_ok(site)
