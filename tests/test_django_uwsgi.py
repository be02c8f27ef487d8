"""A uWSGI user's Django site, moved to an fcgi pool without touching nginx.

Issue 14's "done when": nginx runs ``deploy/nginx/uwsgi.conf`` as shipped
(``include uwsgi_params; uwsgi_pass unix:...;`` with the distribution's own
uwsgi_params) in front of a pool that ``fcgi serve --config pool.toml`` starts
from the settings a uWSGI ini maps to (README, "Moving from uWSGI"): the app
``mysite.wsgi:application`` of the Django project in tests/django_site (DEBUG
off, as in production), ``chdir`` to it, a ``uwsgi:`` unix socket, two
processes. The tests judge Django's own answers: its views' text, its
URL resolver's 404, its 500 page, its CSRF refusal, its ALLOWED_HOSTS check,
its APPEND_SLASH redirect.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Iterator

import pytest
from webservers import TESTS_DIR, Backend, HTTPResponse, Nginx, backend_env

#: The Django project, served from where it lies (``chdir``).
DJANGO_SITE = TESTS_DIR / "django_site"
#: What mysite.views.boom raises (the views module is not imported here: it
#: needs Django's settings).
BOOM = "deliberate failure in the Django view"

#: The pool, as a uWSGI ini with chdir, module, socket, processes and logto
#: becomes one. ``user = "root"``: the test runs as root and its interpreter
#: may be one that www-data cannot run; a deployment names its own user.
POOL_TOML = """\
[global]
log_level = "info"

[pool.www]
app = "mysite.wsgi:application"
chdir = "{chdir}"
listen = ["uwsgi:unix:{socket}"]
listen_mode = "0660"
user = "root"
pm = "static"
max_children = 2
# uWSGI writes what its workers print to its log; so does this.
catch_workers_output = true
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, nginx_binary: str) -> Iterator[Nginx]:
    """nginx with deploy/nginx/uwsgi.conf before a pool serving the Django project."""
    workdir = tmp_path_factory.mktemp("django")
    sock = workdir / "app.sock"
    config = workdir / "pool.toml"
    config.write_text(POOL_TOML.format(chdir=DJANGO_SITE, socket=sock))
    backend = Backend(
        command=[sys.executable, "-m", "fcgi", "serve", "--config", str(config)],
        bind=f"unix:{sock}",
        workdir=workdir,
        env=backend_env(),
    )
    nginx: Nginx | None = None
    try:
        backend.start()
        nginx = Nginx(
            binary=nginx_binary,
            site="uwsgi.conf",
            values={"uwsgi_pass": f"unix:{sock}"},
            prefix=tmp_path_factory.mktemp("nginx"),
            related=[backend],
        )
        nginx.start()
        yield nginx
    finally:
        if nginx is not None:
            nginx.stop()
        backend.stop()


def pool_of(site: Nginx) -> Backend:
    return site.related[0]


def lines(site: Nginx, response: HTTPResponse) -> dict[str, str]:
    """The ``hello`` view's ``key=value`` lines, after checking it answered."""
    why = site.explain(response)
    assert response.status == 200, why
    assert response.header("Content-Type") == "text/plain; charset=utf-8", why
    assert response.header("X-Django-View") == "hello", why
    text = response.body.decode("utf-8")
    return dict(line.split("=", 1) for line in text.splitlines())


def assert_next_request_ok(site: Nginx) -> None:
    seen = lines(site, site.request("GET", "/hello/?next=1"))
    assert seen["GET"] == '[["next", ["1"]]]', site.explain()


def test_a_view_sees_the_path_and_the_query(site: Nginx) -> None:
    response = site.request(
        "GET", "/hello/?a=1&b=two%20words&a=2&c=%C3%A9", headers={"User-Agent": "fcgi-test"}
    )
    seen = lines(site, response)
    why = site.explain(response)
    assert seen["path"] == "/hello/", why
    assert seen["path_info"] == "/hello/", why
    assert seen["script_name"] == "", why
    assert seen["method"] == "GET", why
    assert json.loads(seen["GET"]) == [["a", ["1", "2"]], ["b", ["two words"]], ["c", ["é"]]], why
    # Debian's uwsgi_params sends HTTP_HOST as nginx's $host (no port); others
    # send the client's Host header ($http_host): Django takes either.
    assert seen["host"] in ("127.0.0.1", f"127.0.0.1:{site.port}"), why
    assert seen["secure"] == "False", why
    assert seen["user_agent"] == "fcgi-test", why
    # Django's own headers, passed on by nginx from the uwsgi answer.
    assert response.header("X-Content-Type-Options") == "nosniff", why
    assert response.header("Referrer-Policy") == "same-origin", why
    assert response.header("X-Frame-Options") == "DENY", why
    assert response.header("Content-Length") == str(len(response.body)), why
    assert_next_request_ok(site)


def test_a_non_ascii_path_reaches_the_url_resolver_decoded(site: Nginx) -> None:
    response = site.request("GET", "/hello/caf%C3%A9%20cr%C3%A8me/?q=%E2%82%AC")
    seen = lines(site, response)
    why = site.explain(response)
    assert seen["name"] == "café crème", why
    assert seen["path"] == "/hello/café crème/", why
    assert json.loads(seen["GET"]) == [["q", ["€"]]], why
    assert_next_request_ok(site)


def test_a_csrf_exempt_post_reads_a_one_mebibyte_body(site: Nginx) -> None:
    body = random.Random(14).randbytes(1024 * 1024)
    response = site.request(
        "POST", "/length/", body=body, headers={"Content-Type": "application/octet-stream"}
    )
    why = site.explain(response)
    assert response.status == 200, why
    assert response.header("Content-Type") == "text/plain", why
    expected = f"{len(body)} bytes sha256={hashlib.sha256(body).hexdigest()}\n"
    assert response.body == expected.encode(), why
    assert_next_request_ok(site)


def test_a_post_without_a_csrf_token_is_refused_by_django(site: Nginx) -> None:
    response = site.request("POST", "/protected/", body=b"x=1")
    why = site.explain(response)
    assert response.status == 403, why
    assert b"CSRF" in response.body, why
    assert b"let in" not in response.body, why
    assert_next_request_ok(site)


def test_an_unknown_path_is_django_s_own_404(site: Nginx) -> None:
    response = site.request("GET", "/no/such/page/")
    why = site.explain(response)
    assert response.status == 404, why
    assert response.header("Content-Type") == "text/html; charset=utf-8", why
    # Django's page with DEBUG off (not nginx's, which says "nginx").
    assert b"<h1>Not Found</h1>" in response.body, why
    assert b"nginx" not in response.body, why
    assert_next_request_ok(site)


def test_a_view_that_raises_is_django_s_500_and_the_traceback_is_in_the_pool_log(
    site: Nginx,
) -> None:
    response = site.request("GET", "/boom/")
    why = site.explain(response)
    assert response.status == 500, why
    assert response.header("Content-Type") == "text/html; charset=utf-8", why
    assert b"<h1>Server Error (500)</h1>" in response.body, why
    assert BOOM.encode() not in response.body and b"Traceback" not in response.body, why
    assert_next_request_ok(site)
    # Django logged it (django.request, to stderr): caught as a worker's output.
    log = pool_of(site).stderr_text()
    assert f"RuntimeError: {BOOM}" in log, site.explain()


def test_a_host_outside_allowed_hosts_is_a_400_from_django(site: Nginx) -> None:
    response = site.request("GET", "/hello/", headers={"Host": "evil.example"})
    assert response.status == 400, site.explain(response)
    assert b"Bad Request (400)" in response.body, site.explain(response)
    assert_next_request_ok(site)


def test_append_slash_redirects_to_the_path_with_a_slash(site: Nginx) -> None:
    response = site.request("GET", "/hello?x=1")
    why = site.explain(response)
    assert response.status == 301, why
    assert response.header("Location") == "/hello/?x=1", why
    assert_next_request_ok(site)
