"""End to end through a real Apache 2.4: deploy/apache/*.conf in front of fcgi.

* fcgid.conf: mod_fcgid spawns deploy/bin/fcgi-app (FcgidWrapper) as www-data
  with a listening socket on fd 0, one request per connection; when Apache
  stops, mod_fcgid's SIGTERM makes fcgi exit cleanly.
* proxy_fcgi.conf: mod_proxy_fcgi with ``ProxyPass /app/ unix:...|fcgi://localhost/``
  to a running ``fcgi serve --script-name /app``, the way Apache talks to PHP-FPM.

Both run the whole front-end matrix (frontend_cases.py) with the app at /app.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from pathlib import Path

import pytest
from frontend_cases import CASE_IDS, CASES, Case, ok_json, run_case
from frontends import (
    APACHE_USER,
    Apache,
    FrontEnd,
    SharedDir,
    chgrp_socket,
    deploy_app,
    find_apache,
    make_wrapper,
    python_for,
    wait_pid_gone,
)
from webservers import Backend, ServerError, backend_env, fcgi_serve_command


@pytest.fixture(scope="module")
def apache_binary() -> str:
    try:
        return find_apache()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


def start_fcgid_site(binary: str, shared: SharedDir) -> Apache:
    app_dir = deploy_app(shared.sub("app"))
    wrapper = make_wrapper(shared.path / "fcgi-app", app_dir, python_for(APACHE_USER))
    server = Apache(binary=binary, sites=[("fcgid.conf", {"wrapper": str(wrapper)})], shared=shared)
    try:
        return server.start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def apache_fcgid(apache_binary: str) -> Generator[FrontEnd, None, None]:
    shared = SharedDir("apache-fcgid")
    server: Apache | None = None
    try:
        server = start_fcgid_site(apache_binary, shared)
        yield FrontEnd(
            name="apache fcgid.conf (mod_fcgid, FcgidWrapper)",
            port=server.port,
            mount="/app",
            gate_dir=shared.sub("gates"),
            streams=True,
            describe=server.diagnostics,
            server=server,
        )
    finally:
        if server is not None:
            server.stop()
        shared.remove()


@pytest.fixture(scope="module")
def apache_proxy(apache_binary: str) -> Generator[FrontEnd, None, None]:
    shared = SharedDir("apache-proxy")
    sock = shared.sub("backend") / "app.sock"
    backend = Backend(
        command=fcgi_serve_command("frontend_app:app", f"unix:{sock}", ["--script-name", "/app"]),
        bind=f"unix:{sock}",
        workdir=shared.path / "backend",
        env=backend_env(),
    )
    server: Apache | None = None
    try:
        backend.start()
        chgrp_socket(sock)
        server = Apache(
            binary=apache_binary,
            sites=[("proxy_fcgi.conf", {"socket": str(sock)})],
            shared=shared,
            related=[backend],
        )
        server.start()
        yield FrontEnd(
            name="apache proxy_fcgi.conf (mod_proxy_fcgi)",
            port=server.port,
            mount="/app",
            gate_dir=shared.sub("gates"),
            streams=True,
            describe=server.diagnostics,
            server=server,
        )
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if server is not None:
            server.stop()
        backend.stop()
        shared.remove()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fcgid_matrix(apache_fcgid: FrontEnd, case: Case) -> None:
    run_case(apache_fcgid, case)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_proxy_fcgi_matrix(apache_proxy: FrontEnd, case: Case) -> None:
    run_case(apache_proxy, case)


def test_fcgid_app_exits_cleanly_when_apache_stops(apache_binary: str) -> None:
    """mod_fcgid's app serves from fd 0 as www-data and exits 0 on Apache's stop."""
    shared = SharedDir("apache-stop")
    server = None
    try:
        server = start_fcgid_site(apache_binary, shared)
        fe = FrontEnd("apache fcgid", server.port, "/app", shared.path, False, server.diagnostics)
        pids = {ok_json(fe, fe.request("GET", f"/app/{i}/echo"))["pid"] for i in range(3)}
        # Sequential requests, one per connection, all served by one process.
        assert len(pids) == 1, fe.explain()
        pid = pids.pop()
        status = Path(f"/proc/{pid}/status").read_text()
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
        assert uid != 0, f"mod_fcgid ran the app as root\n{fe.explain()}"
        assert re.search(rf"\[{pid}\] INFO fcgi\.serve: serving on unix:\S+", server.error_log())
        server.stop()
        assert server.exit_status == 0, fe.explain()
        assert wait_pid_gone(pid), f"app pid {pid} outlived Apache\n{fe.explain()}"
        log = server.error_log()
        assert re.search(rf"\[{pid}\] INFO fcgi\.serve: stopped", log), fe.explain()
        assert re.search(
            rf"fcgi-app\({pid}\) exit\(shutting down\), terminated by calling exit\(\), "
            r"return code: 0",
            log,
        ), fe.explain()
    finally:
        if server is not None:
            server.stop()
        shared.remove()
