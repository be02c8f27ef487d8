"""HTTPS through nginx: a TLS listener in front of ``fcgi serve``.

nginx serves deploy/nginx/fcgi-tls.conf (``listen ... ssl``) with a throwaway
self-signed certificate made by the ``openssl`` command at test time, and
passes requests on with the distribution's unchanged ``fastcgi_params``, whose
``HTTPS $https if_not_empty`` tells the app the request came over TLS.  The
client verifies nginx's certificate against that same certificate as its only
CA, so the tests also prove nginx served the configured certificate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from webservers import Backend, HTTPResponse, Nginx

BACKEND_KINDS = ["unix", "tcp"]

StartBackend = Callable[..., Backend]
StartNginx = Callable[..., Nginx]


@dataclasses.dataclass(frozen=True)
class SelfSigned:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """Verification on, with this certificate as the only trusted CA."""
        context = ssl.create_default_context(cafile=str(self.cert))
        assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
        return context


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> SelfSigned:
    """A fresh self-signed certificate for 127.0.0.1/localhost (a missing openssl fails)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail(
            "the openssl command is not installed (CI installs it: apt-get install -y openssl)",
            pytrace=False,
        )
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [
        openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", str(key), "-out", str(cert),
        "-subj", "/CN=fcgi-test",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-addext", "basicConstraints=critical,CA:TRUE",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}{result.stderr}"
    return SelfSigned(cert=cert, key=key)


@pytest.fixture(params=BACKEND_KINDS)
def tls_site(
    request: pytest.FixtureRequest,
    start_backend: StartBackend,
    start_nginx: StartNginx,
    self_signed: SelfSigned,
) -> Nginx:
    """nginx with deploy/nginx/fcgi-tls.conf in front of a backend serving apps:app."""
    backend = start_backend(request.param, "apps:app")
    return start_nginx(
        "fcgi-tls.conf",
        backend,
        values={"cert": str(self_signed.cert), "key": str(self_signed.key)},
        ssl_context=self_signed.client_context(),
    )


def ok_json(nginx: Nginx, response: HTTPResponse) -> dict[str, Any]:
    assert response.status == 200, nginx.explain(response)
    assert response.header("Content-Type") == "application/json", nginx.explain(response)
    data: dict[str, Any] = json.loads(response.body)
    return data


def test_https_on_and_url_scheme(tls_site: Nginx) -> None:
    target = "/secure/echo?a=1&b=%C3%A9"
    response = tls_site.request("GET", target, headers={"X-Test": "over-tls"})
    data = ok_json(tls_site, response)
    why = tls_site.explain(response)
    assert data["HTTPS"] == "on", why
    assert data["wsgi.url_scheme"] == "https", why
    assert data["SERVER_PORT"] == str(tls_site.port), why
    assert data["REQUEST_URI"] == target, why
    assert data["QUERY_STRING"] == "a=1&b=%C3%A9", why
    assert data["PATH_INFO"] == "/secure/echo", why
    assert data["HTTP_X_TEST"] == "over-tls", why
    assert data["REQUEST_METHOD"] == "GET", why


def test_certificate_is_the_configured_one(tls_site: Nginx, self_signed: SelfSigned) -> None:
    conn = tls_site.connection()
    try:
        response = tls_site.request("GET", "/echo", conn=conn)
        assert ok_json(tls_site, response)["HTTPS"] == "on", tls_site.explain(response)
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket), tls_site.explain()
        served = sock.getpeercert(binary_form=True)
    finally:
        conn.close()
    expected = ssl.PEM_cert_to_DER_cert(self_signed.cert.read_text())
    assert served == expected, tls_site.explain()


def test_post_over_tls_body_hash(tls_site: Nginx) -> None:
    body = random.Random(3).randbytes(3 * 1024 * 1024 + 17)
    digest = hashlib.sha256(body).hexdigest()
    response = tls_site.request(
        "POST",
        "/tls/upload",
        body=body,
        headers={"Content-Type": "application/octet-stream", "X-Expect-SHA256": digest},
    )
    data = ok_json(tls_site, response)
    assert data["length"] == len(body), tls_site.explain(response)
    assert data["sha256"] == digest, tls_site.explain(response)


def test_many_requests_on_one_tls_connection(tls_site: Nginx) -> None:
    conn = tls_site.connection()
    try:
        for i in range(10):
            body = f"request {i}".encode()
            response = tls_site.request("POST", f"/echo?i={i}", body=body, conn=conn)
            data = ok_json(tls_site, response)
            why = tls_site.explain(response)
            assert data["QUERY_STRING"] == f"i={i}", why
            assert data["body_length"] == len(body), why
            assert data["HTTPS"] == "on" and data["wsgi.url_scheme"] == "https", why
    finally:
        conn.close()


def test_plain_http_to_the_tls_port_is_refused_by_nginx(tls_site: Nginx) -> None:
    """Control: the listener really is TLS-only (nginx answers 400 to plain HTTP)."""
    plain = dataclasses.replace(tls_site, ssl_context=None)
    response = plain.request("GET", "/echo")
    assert response.status == 400, tls_site.explain(response)
    assert b"HTTPS" in response.body, tls_site.explain(response)
