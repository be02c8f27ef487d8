"""Fixtures that start real servers: FastCGI backends and nginx.

``start_backend(kind, app)`` runs ``python -m fcgi serve APP --bind ...`` on a
unix socket (kind "unix") or a loopback TCP port (kind "tcp");
``start_nginx(site, backend)`` runs nginx with ``deploy/nginx/SITE`` in front of
it.  Every process is stopped at teardown.  When a test fails, the logs of
every server it started (nginx error log, backend stderr) are attached to the
report.

Set ``FCGI_TEST_BACKEND`` to a command template with ``{app}`` and ``{bind}``
(for example a flup script) to run the same tests against another backend.
"""

from __future__ import annotations

import gc
import os
import shlex
import ssl
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence

import pytest
from webservers import (
    Backend,
    Nginx,
    ServerError,
    backend_env,
    fcgi_serve_command,
    find_nginx,
    make_bind,
)


class Started:
    """The servers one test started, stopped in reverse order at teardown."""

    def __init__(self) -> None:
        self.servers: list[Backend | Nginx] = []

    def diagnostics(self) -> str:
        return "\n".join(server.diagnostics() for server in self.servers)

    def stop_all(self) -> None:
        errors: list[str] = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"stopping {server!r}: {exc!r}")
        if errors:
            raise ServerError("\n".join(errors) + "\n" + self.diagnostics())


class BackendFactory(Started):
    def __init__(self, tmp_factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self.tmp_factory = tmp_factory

    def __call__(
        self, kind: str = "unix", app: str = "apps:app", extra: Sequence[str] = ()
    ) -> Backend:
        template = os.environ.get("FCGI_TEST_BACKEND")
        message = ""
        # A TCP port is only known to be free when probed: if the backend loses
        # the race for it, try another one.
        for _attempt in range(3):
            # A short directory: AF_UNIX socket paths are limited to ~107 bytes.
            workdir = self.tmp_factory.mktemp("fcgi")
            bind = make_bind(kind, workdir)
            if template:
                command = [part.format(app=app, bind=bind) for part in shlex.split(template)]
                command += extra
            else:
                command = fcgi_serve_command(app, bind, extra)
            backend = Backend(command=command, bind=bind, workdir=workdir, env=backend_env())
            self.servers.append(backend)
            try:
                return backend.start()
            except ServerError as exc:
                message = str(exc)
            backend.stop()
            if kind != "tcp" or "in use" not in backend.stderr_text():
                break
        pytest.fail(message, pytrace=False)  # outside `except`: no chained traceback


class NginxFactory(Started):
    def __init__(self, tmp_factory: pytest.TempPathFactory, binary: str) -> None:
        super().__init__()
        self.tmp_factory = tmp_factory
        self.binary = binary

    def __call__(
        self,
        site: str,
        backend: Backend,
        values: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Nginx:
        """nginx with ``deploy/nginx/SITE``; ``values`` fills the site's further
        placeholders, ``ssl_context`` makes the test's requests use HTTPS."""
        nginx = Nginx(
            binary=self.binary,
            site=site,
            values={"fcgi_pass": backend.fcgi_pass, **(values or {})},
            prefix=self.tmp_factory.mktemp("nginx"),
            related=[backend],
            ssl_context=ssl_context,
        )
        self.servers.append(nginx)
        try:
            return nginx.start()
        except ServerError as exc:
            message = str(exc)
        pytest.fail(message, pytrace=False)  # outside `except`: no chained traceback


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    """The cyclic GC off: what is freed now was freed by reference counting."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    try:
        return find_nginx()
    except ServerError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture
def start_backend(
    tmp_path_factory: pytest.TempPathFactory,
) -> Generator[Callable[..., Backend], None, None]:
    factory = BackendFactory(tmp_path_factory)
    yield factory
    factory.stop_all()


@pytest.fixture
def start_nginx(
    tmp_path_factory: pytest.TempPathFactory, nginx_binary: str
) -> Generator[Callable[..., Nginx], None, None]:
    factory = NginxFactory(tmp_path_factory, nginx_binary)
    yield factory
    factory.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # Logs already in the assertion message (Nginx.explain) are not repeated.
    if report.failed and "--- backend stderr:" not in str(report.longrepr):
        for name, value in getattr(item, "funcargs", {}).items():
            diagnostics = getattr(value, "diagnostics", None)
            if isinstance(value, Started) and value.servers and callable(diagnostics):
                report.sections.append((f"server logs ({name})", diagnostics()))
    return report
