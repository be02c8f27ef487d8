"""The front-end matrix (frontend_cases.py) through nginx.

lighttpd and Apache run the same table in test_lighttpd.py and test_apache.py;
this module adds nginx, with the site file deploy/nginx/fcgi-new-connection.conf that
test_nginx.py starts (servers from webservers.py), in two rows:

* the app at "/" (nginx's stock fastcgi_params: the whole path in SCRIPT_NAME,
  no PATH_INFO; fcgi makes it SCRIPT_NAME="" and PATH_INFO=<path>);
* the app at "/app": the same site file, the backend told its mount point
  with ``fcgi serve --script-name /app``.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest
from frontend_cases import CASE_IDS, CASES, Case, run_case
from frontends import FrontEnd
from webservers import Backend, Nginx, ServerError, backend_env, fcgi_serve_command, find_nginx

MOUNTS = {"root": "", "app": "/app"}


@pytest.fixture(scope="module", params=list(MOUNTS), ids=[f"nginx-{m}" for m in MOUNTS])
def nginx_site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Generator[FrontEnd, None, None]:
    mount = MOUNTS[request.param]
    workdir = tmp_path_factory.mktemp("fcgi")
    sock = workdir / "app.sock"
    extra = ["--script-name", mount] if mount else []
    backend = Backend(
        command=fcgi_serve_command("frontend_app:app", f"unix:{sock}", extra),
        bind=f"unix:{sock}",
        workdir=workdir,
        env=backend_env(),
    )
    nginx: Nginx | None = None
    try:
        backend.start()
        nginx = Nginx(
            binary=find_nginx(),
            site="fcgi-new-connection.conf",
            values={"fcgi_pass": backend.fcgi_pass},
            prefix=tmp_path_factory.mktemp("nginx"),
            related=[backend],
        )
        nginx.start()
        yield FrontEnd(
            name=f"nginx fcgi-new-connection.conf{' + --script-name ' + mount if mount else ''}",
            port=nginx.port,
            mount=mount,
            gate_dir=workdir,
            # fcgi-new-connection.conf keeps nginx's default fastcgi_buffering on.
            streams=False,
            describe=nginx.diagnostics,
            server=nginx,
        )
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if nginx is not None:
            nginx.stop()
        backend.stop()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_nginx_matrix(nginx_site: FrontEnd, case: Case) -> None:
    run_case(nginx_site, case)
