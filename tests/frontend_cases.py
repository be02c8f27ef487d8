"""The front-end matrix: one table of HTTP cases that every web server runs.

Each case is a function taking a :class:`frontends.FrontEnd` (a real web
server in front of ``frontend_app:app``, mounted at ``fe.mount``) and asserting
on what came back; every case then checks that a plain request still works.
Test modules parametrize over :data:`CASES`::

    @pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
    def test_matrix(lighttpd_root: FrontEnd, case: Case) -> None:
        case(lighttpd_root)
"""

from __future__ import annotations

import hashlib
import json
import random
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import frontend_app
from frontends import FrontEnd
from webservers import HTTPResponse

Case = Callable[[FrontEnd], None]


def ok_json(fe: FrontEnd, response: HTTPResponse) -> dict[str, Any]:
    assert response.status == 200, fe.explain(response)
    assert (response.header("Content-Type") or "").startswith("application/json"), fe.explain(
        response
    )
    data: dict[str, Any] = json.loads(response.body)
    return data


def assert_next_request_ok(fe: FrontEnd) -> None:
    """The servers are still healthy after the case: a plain GET works."""
    response = fe.request("GET", f"{fe.mount}/after/echo?next=1")
    data = ok_json(fe, response)
    assert data["QUERY_STRING"] == "next=1", fe.explain(response)
    assert data["PATH_INFO"] == "/after/echo", fe.explain(response)


def case_get_query_string(fe: FrontEnd) -> None:
    query = "a=1&b=two%20words&c=%C3%A9&empty=&plus=x+y"
    target = f"{fe.mount}/dir/echo?{query}"
    response = fe.request("GET", target, headers={"X-Test": "hello"})
    data = ok_json(fe, response)
    why = fe.explain(response)
    assert data["REQUEST_METHOD"] == "GET", why
    assert data["QUERY_STRING"] == query, why
    assert data["query"] == {
        "a": ["1"],
        "b": ["two words"],
        "c": ["é"],
        "empty": [""],
        "plus": ["x y"],
    }, why
    assert data["REQUEST_URI"] == target, why
    assert data["HTTP_X_TEST"] == "hello", why
    assert data["SERVER_PORT"] == str(fe.port), why
    assert data["REMOTE_ADDR"] == "127.0.0.1", why
    assert data["SERVER_PROTOCOL"] == "HTTP/1.1", why
    assert data["wsgi.url_scheme"] == "http", why
    assert data["body_length"] == 0, why


def case_head(fe: FrontEnd) -> None:
    get = fe.request("GET", f"{fe.mount}/cookies")
    response = fe.request("HEAD", f"{fe.mount}/cookies")
    why = fe.explain(response)
    assert response.status == 200, why
    assert response.body == b"", why
    assert response.header("Content-Type") == get.header("Content-Type"), why
    length = response.header("Content-Length")
    assert length in (None, str(len(get.body))), why


def case_post_urlencoded(fe: FrontEnd) -> None:
    body = urllib.parse.urlencode({"name": "Zoë", "words": "two words", "sym": "a&b=c"}).encode()
    response = fe.request(
        "POST",
        f"{fe.mount}/form",
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    data = ok_json(fe, response)
    assert data == {
        "kind": "urlencoded",
        "fields": {"name": "Zoë", "words": "two words", "sym": "a&b=c"},
    }, fe.explain(response)


def case_post_multipart(fe: FrontEnd) -> None:
    boundary = "fcgi-boundary-" + uuid.uuid4().hex
    blob = random.Random(7).randbytes(200_000)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\n'.encode()
        + "héllo wörld".encode()
        + b"\r\n",
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="blob.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + blob
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    response = fe.request(
        "POST",
        f"{fe.mount}/form",
        body=b"".join(parts),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    data = ok_json(fe, response)
    assert data == {
        "kind": "multipart",
        "fields": {
            "title": "héllo wörld",
            "file": {
                "filename": "blob.bin",
                "sha256": hashlib.sha256(blob).hexdigest(),
                "length": len(blob),
            },
        },
    }, fe.explain(response)


UPLOAD_SIZE = 10 * 1024 * 1024


def case_upload_10mib(fe: FrontEnd) -> None:
    body = random.Random(10).randbytes(UPLOAD_SIZE)
    response = fe.request(
        "POST",
        f"{fe.mount}/upload",
        body=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    data = ok_json(fe, response)
    assert data["length"] == UPLOAD_SIZE, fe.explain(response)
    assert data["sha256"] == hashlib.sha256(body).hexdigest(), fe.explain(response)


def case_upload_chunked(fe: FrontEnd) -> None:
    """Transfer-Encoding: chunked from the client, in uneven pieces."""
    rng = random.Random(11)
    pieces = [rng.randbytes(size) for size in (1, 1000, 65536, 3, 300_000, 70_000, 17)]
    whole = b"".join(pieces)

    def body() -> Iterator[bytes]:
        yield from pieces

    response = fe.request(
        "POST",
        f"{fe.mount}/upload",
        body=body(),
        headers={"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"},
        chunked=True,
    )
    data = ok_json(fe, response)
    assert data["length"] == len(whole), fe.explain(response)
    assert data["sha256"] == hashlib.sha256(whole).hexdigest(), fe.explain(response)


def case_download_20mib(fe: FrontEnd) -> None:
    expected = hashlib.sha256(frontend_app.download_body()).hexdigest()
    response = fe.request("GET", f"{fe.mount}/download")
    why = fe.explain()
    assert response.status == 200, why
    assert response.header("X-Body-SHA256") == expected, why
    assert len(response.body) == frontend_app.DOWNLOAD_SIZE, why
    assert hashlib.sha256(response.body).hexdigest() == expected, why


def case_streamed_response(fe: FrontEnd) -> None:
    """A response without Content-Length, produced piece by piece.

    Where the front end's deploy file streams (``fe.streams``), the app sends
    the first piece and then waits for a go-ahead file that the test creates
    only after it has received that piece: the rest can only arrive if the
    first was passed on before the app produced the others.
    """
    expected = b"".join(frontend_app.STREAM_CHUNKS)
    if not fe.streams:
        response = fe.request("GET", f"{fe.mount}/stream")
        assert response.status == 200, fe.explain(response)
        assert response.body == expected, fe.explain(response)
        assert response.header("Content-Length") in (None, str(len(expected))), fe.explain(response)
        return
    gate = fe.gate_dir / f"gate-{uuid.uuid4().hex}"
    target = f"{fe.mount}/stream?" + urllib.parse.urlencode({"gate": str(gate)})
    conn = fe.connection()
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        assert resp.status == 200, fe.explain()
        assert resp.getheader("Content-Length") is None, fe.explain()
        first = frontend_app.STREAM_CHUNKS[0]
        got = resp.read(len(first))
        assert got == first, f"first piece {got!r}\n{fe.explain()}"
        gate.touch()
        rest = resp.read()
    finally:
        conn.close()
        gate.unlink(missing_ok=True)
    assert frontend_app.GATE_TIMEOUT_MARK not in rest, (
        "the app never saw the go-ahead: the first piece arrived only with the rest\n"
        + fe.explain()
    )
    assert first + rest == expected, fe.explain()


def case_fifty_headers(fe: FrontEnd) -> None:
    sent = {f"X-Many-{i:02d}": f"value {i} " + "v" * (i + 1) for i in range(50)}
    response = fe.request("GET", f"{fe.mount}/headers", headers=sent)
    data = ok_json(fe, response)
    expected = {name[len("X-Many-") :].lower(): value for name, value in sent.items()}
    assert data["headers"] == expected, fe.explain(response)


def case_three_cookies(fe: FrontEnd) -> None:
    response = fe.request("GET", f"{fe.mount}/cookies")
    why = fe.explain(response)
    assert response.status == 200, why
    cookies = response.header_all("Set-Cookie")
    assert cookies == [
        "alpha=1; Path=/",
        "beta=two; Path=/; HttpOnly",
        "gamma=3; Path=/; Max-Age=60",
    ], why


def case_not_found(fe: FrontEnd) -> None:
    response = fe.request("GET", f"{fe.mount}/no/such/thing")
    why = fe.explain(response)
    assert response.status == 404, why
    assert b"no route for" in response.body, why


def case_app_error(fe: FrontEnd) -> None:
    response = fe.request("GET", f"{fe.mount}/fail")
    why = fe.explain(response)
    assert response.status == 500, why
    assert b"deliberate failure" not in response.body, why
    assert b"Traceback" not in response.body, why


def case_redirect(fe: FrontEnd) -> None:
    response = fe.request("GET", f"{fe.mount}/sub/redirect")
    why = fe.explain(response)
    assert response.status == 302, why
    location = response.header("Location") or ""
    path = urllib.parse.urlsplit(location)
    expected = f"{fe.mount}/sub/echo"
    assert (path.path, path.query) == (expected, "from=redirect"), why
    followed = fe.request("GET", f"{path.path}?{path.query}")
    data = ok_json(fe, followed)
    assert data["query"] == {"from": ["redirect"]}, fe.explain(followed)


def case_non_ascii_path(fe: FrontEnd) -> None:
    """PATH_INFO is the decoded path's UTF-8 bytes as a latin-1 string (PEP 3333)."""
    quoted = "/caf%C3%A9/na%C3%AFve%20space/%E2%82%AC/echo"
    response = fe.request("GET", f"{fe.mount}{quoted}")
    data = ok_json(fe, response)
    text = "/café/naïve space/€/echo"
    why = fe.explain(response)
    assert data["PATH_INFO"] == text.encode("utf-8").decode("latin-1"), why
    assert data["path_info_utf8"] == text, why
    assert data["SCRIPT_NAME"] == fe.mount, why


def case_script_name_path_info(fe: FrontEnd) -> None:
    """SCRIPT_NAME is the mount point, PATH_INFO the rest, at any depth."""
    for rest in ("/echo", "/one/echo", "/one/two/three/echo"):
        response = fe.request("GET", f"{fe.mount}{rest}?q=1")
        data = ok_json(fe, response)
        why = fe.explain(response)
        assert (data["SCRIPT_NAME"], data["PATH_INFO"]) == (fe.mount, rest), why
        assert data["QUERY_STRING"] == "q=1", why


CASES: list[Case] = [
    case_get_query_string,
    case_head,
    case_post_urlencoded,
    case_post_multipart,
    case_upload_10mib,
    case_upload_chunked,
    case_download_20mib,
    case_streamed_response,
    case_fifty_headers,
    case_three_cookies,
    case_not_found,
    case_app_error,
    case_redirect,
    case_non_ascii_path,
    case_script_name_path_info,
]
CASE_IDS = [case.__name__.removeprefix("case_") for case in CASES]


def run_case(fe: FrontEnd, case: Case) -> None:
    case(fe)
    assert_next_request_ok(fe)
