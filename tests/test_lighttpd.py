"""End to end through a real lighttpd: deploy/lighttpd/*.conf in front of fcgi.

* fcgi.conf: mod_fastcgi "socket" to a running ``fcgi serve``, app at "/".
* fcgi-spawn.conf: lighttpd spawns deploy/bin/fcgi-app ("bin-path") with the
  listening socket on fd 0, app at "/app"; stopping lighttpd stops the app.
* fcgi-authorizer.conf: an fcgi app in the AUTHORIZER role guarding static files.

Both app deployments run the whole front-end matrix (frontend_cases.py).
"""

from __future__ import annotations

import re
from collections.abc import Generator
from pathlib import Path

import frontend_app
import pytest
from frontend_cases import CASE_IDS, CASES, Case, ok_json, run_case
from frontends import (
    FrontEnd,
    Lighttpd,
    deploy_app,
    find_lighttpd,
    make_wrapper,
    python_for,
    wait_pid_gone,
)
from webservers import Backend, ServerError, backend_env, fcgi_serve_command


@pytest.fixture(scope="module")
def lighttpd_binary() -> str:
    try:
        return find_lighttpd()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


def start_backend(workdir: Path, app: str) -> Backend:
    sock = workdir / "app.sock"
    backend = Backend(
        command=fcgi_serve_command(app, f"unix:{sock}"),
        bind=f"unix:{sock}",
        workdir=workdir,
        env=backend_env(),
    )
    return backend.start()


def start_lighttpd(
    binary: str,
    tmp: pytest.TempPathFactory,
    sites: list[tuple[str, dict[str, str]]],
    related: list[Backend],
    docroot: Path | None = None,
) -> Lighttpd:
    prefix = tmp.mktemp("lighttpd")
    if docroot is None:
        docroot = prefix / "docroot"
        docroot.mkdir()
    server = Lighttpd(binary=binary, sites=sites, prefix=prefix, docroot=docroot, related=related)
    return server.start()


def spawn_site(binary: str, tmp: pytest.TempPathFactory) -> tuple[Lighttpd, Path]:
    """lighttpd with fcgi-spawn.conf: it starts the app itself."""
    workdir = tmp.mktemp("spawn")
    app_dir = deploy_app(workdir / "app")
    wrapper = make_wrapper(workdir / "fcgi-app", app_dir, python_for(None))
    values = {"socket": str(workdir / "app.sock"), "wrapper": str(wrapper)}
    return start_lighttpd(binary, tmp, [("fcgi-spawn.conf", values)], []), workdir


@pytest.fixture(scope="module")
def lighttpd_root(
    lighttpd_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Generator[FrontEnd, None, None]:
    """fcgi.conf: lighttpd -> socket -> a running `fcgi serve frontend_app:app`."""
    backend = start_backend(tmp_path_factory.mktemp("fcgi"), "frontend_app:app")
    server: Lighttpd | None = None
    try:
        server = start_lighttpd(
            lighttpd_binary,
            tmp_path_factory,
            [("fcgi.conf", {"socket": str(backend.socket_path)})],
            [backend],
        )
        yield FrontEnd(
            name="lighttpd fcgi.conf (socket)",
            port=server.port,
            mount="",
            gate_dir=tmp_path_factory.mktemp("gates"),
            streams=True,
            describe=server.diagnostics,
            server=server,
        )
    finally:
        if server is not None:
            server.stop()
        backend.stop()


@pytest.fixture(scope="module")
def lighttpd_spawn(
    lighttpd_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Generator[FrontEnd, None, None]:
    """fcgi-spawn.conf: lighttpd runs deploy/bin/fcgi-app itself (bin-path)."""
    server, workdir = spawn_site(lighttpd_binary, tmp_path_factory)
    try:
        yield FrontEnd(
            name="lighttpd fcgi-spawn.conf (bin-path)",
            port=server.port,
            mount="/app",
            gate_dir=workdir,
            streams=True,
            describe=server.diagnostics,
            server=server,
        )
    finally:
        server.stop()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_socket_matrix(lighttpd_root: FrontEnd, case: Case) -> None:
    run_case(lighttpd_root, case)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_spawn_matrix(lighttpd_spawn: FrontEnd, case: Case) -> None:
    run_case(lighttpd_spawn, case)


def test_spawned_app_stops_with_lighttpd(
    lighttpd_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The app lighttpd spawned serves from fd 0 and is gone once lighttpd stops."""
    server, _ = spawn_site(lighttpd_binary, tmp_path_factory)
    fe = FrontEnd("lighttpd spawn", server.port, "/app", Path("/"), False, server.diagnostics)
    try:
        first = ok_json(fe, fe.request("GET", "/app/echo"))
        second = ok_json(fe, fe.request("GET", "/app/echo"))
        # One process (max-procs 1), serving one connection after another.
        assert first["pid"] == second["pid"], fe.explain()
        pid = first["pid"]
        log = server.logs()
        assert re.search(rf"\[{pid}\] INFO fcgi\.serve: serving on unix:\S+ ", log), fe.explain()
        server.stop_alone()
        assert wait_pid_gone(pid), f"spawned app pid {pid} still running\n{fe.explain()}"
        # lighttpd sent SIGTERM; fcgi's graceful exit logs this last line.
        assert re.search(rf"\[{pid}\] INFO fcgi\.serve: stopped", server.logs()), fe.explain()
    finally:
        server.stop()  # whatever is left of its process group


def test_authorizer_guards_static_files(
    lighttpd_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """fcgi-authorizer.conf: the app decides; on 200 lighttpd serves the file."""
    backend = start_backend(tmp_path_factory.mktemp("authz"), "frontend_app:authorizer")
    docroot = tmp_path_factory.mktemp("docroot")
    (docroot / "private").mkdir()
    secret = b"the static secret\n"
    (docroot / "private" / "secret.txt").write_bytes(secret)
    (docroot / "public.txt").write_bytes(b"public\n")
    values = {"socket": str(backend.socket_path), "docroot": str(docroot)}
    server = None
    try:
        server = start_lighttpd(
            lighttpd_binary,
            tmp_path_factory,
            [("fcgi-authorizer.conf", values)],
            [backend],
            docroot=docroot,
        )
        fe = FrontEnd("lighttpd authorizer", server.port, "", docroot, False, server.diagnostics)

        denied = fe.request("GET", "/private/secret.txt")
        assert denied.status == 403, fe.explain(denied)
        assert denied.body == b"denied by the fcgi authorizer\n", fe.explain(denied)

        wrong = fe.request("GET", "/private/secret.txt", headers={"X-Token": "guess"})
        assert wrong.status == 403, fe.explain(wrong)

        allowed = fe.request(
            "GET", "/private/secret.txt", headers={"X-Token": frontend_app.AUTHZ_TOKEN}
        )
        assert allowed.status == 200, fe.explain(allowed)
        # The file, not the authorizer's body; its Variable- header is not a response header.
        assert allowed.body == secret, fe.explain(allowed)
        assert allowed.header(f"Variable-{frontend_app.AUTHZ_VARIABLE}") is None, fe.explain(
            allowed
        )

        # Outside /private/ the authorizer is not asked.
        public = fe.request("GET", "/public.txt")
        assert (public.status, public.body) == (200, b"public\n"), fe.explain(public)
    finally:
        if server is not None:
            server.stop()
        backend.stop()
