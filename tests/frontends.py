"""Real lighttpd and Apache in front of fcgi, for the end-to-end tests.

Like ``webservers.Nginx``: each server runs in the foreground as a child of the
test, on a loopback port, with its own prefix directory, pid file and logs,
from a top-level test config (``deploy/*/…-test.conf``) that includes one
deploy site file rendered only for paths and ports.  A missing server binary
is a test failure, never a skip.

Apache started as root runs its children, and the apps mod_fcgid spawns, as an
unprivileged user (``www-data``), which must be able to reach everything it
serves.  So Apache's prefix is a world-traversable directory of its own
(:class:`SharedDir`), and the app is "deployed" into it the way one deploys to
/srv: a copy of ``app.py`` (tests/frontend_app.py) next to a copy of the
``fcgi`` package from this work tree.

:class:`FrontEnd` is what the shared case table (``frontend_cases.py``) runs
against: a port, the app's mount point and the diagnostics of every server
behind it.
"""

from __future__ import annotations

import dataclasses
import grp
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import mypy_extensions
from webservers import (
    DEPLOY_DIR,
    HTTP_TIMEOUT,
    REPO_ROOT,
    STOP_TIMEOUT,
    TESTS_DIR,
    Backend,
    HTTPResponse,
    ServerError,
    read_text,
    render_template,
    start_on_free_port,
    stop_process,
    web_server_diagnostics,
)

#: The unprivileged user Apache (started as root) switches to.
APACHE_USER = "www-data"


# --------------------------------------------------------------------------- helpers


def find_binary(name: str, *candidates: str, package: str) -> str:
    found = shutil.which(name) or next((p for p in candidates if os.access(p, os.X_OK)), None)
    if found is None:
        raise ServerError(f"{name} is not installed (CI installs it: apt-get install -y {package})")
    return found


def render_deploy(relative: str, values: Mapping[str, str], dest: Path, mode: int = 0o644) -> Path:
    """Write ``deploy/RELATIVE`` with its placeholders filled to ``dest``."""
    source = DEPLOY_DIR / relative
    dest.write_text(render_template(source.read_text(), values, source=str(source)))
    dest.chmod(mode)
    return dest


def http_request(
    port: int,
    method: str,
    target: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    chunked: bool = False,
    describe: Callable[[], str] = lambda: "",
) -> HTTPResponse:
    """One request on a fresh connection to 127.0.0.1:PORT; ``chunked`` sends
    the body with Transfer-Encoding: chunked."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        conn.request(method, target, body=body, headers=dict(headers or {}), encode_chunked=chunked)
        resp = conn.getresponse()
        data = resp.read()
        return HTTPResponse(resp.status, resp.reason, resp.getheaders(), data)
    except (OSError, http.client.HTTPException) as exc:
        raise AssertionError(f"{method} {target} failed: {exc!r}\n{describe()}") from exc
    finally:
        conn.close()


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def wait_pid_gone(pid: int) -> bool:
    """Wait (a hang guard, not a threshold) for a process that is not our child."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while not pid_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class SharedDir:
    """A temporary directory that an unprivileged user can traverse (0755).

    pytest's own temporary directories sit under a 0700 directory of root's.
    """

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"fcgi-{prefix}-"))
        self.path.chmod(0o755)

    def sub(self, name: str, mode: int = 0o755) -> Path:
        path = self.path / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def deploy_app(app_dir: Path) -> Path:
    """Lay out the app the way deploy/bin/fcgi-app expects: ``app_dir/app.py``
    (tests/frontend_app.py) and, next to it, this work tree's ``fcgi`` package
    (so ``python -m fcgi`` runs the code under test, for any interpreter)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TESTS_DIR / "frontend_app.py", app_dir / "app.py")
    shutil.copytree(
        REPO_ROOT / "fcgi",
        app_dir / "fcgi",
        ignore=shutil.ignore_patterns("__pycache__"),
        dirs_exist_ok=True,
    )
    # fcgi's one dependency that the sync worker imports (fcgi.driver: its
    # mypyc class attributes); the interpreter the web server runs may not have it.
    shutil.copyfile(mypy_extensions.__file__, app_dir / "mypy_extensions.py")
    for root, dirs, files in os.walk(app_dir):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    return app_dir


def python_for(user: str | None) -> str:
    """An interpreter (>= 3.11, as fcgi needs) that ``user`` may run.

    The test's own interpreter when it can; a pyenv Python under root's 0700
    home cannot be run by www-data, so then the system's python3.
    """
    candidates = [sys.executable, "/usr/bin/python3"]
    probe = "import sys; assert sys.version_info >= (3, 11)"
    for candidate in candidates:
        if not os.access(candidate, os.X_OK):
            continue
        kwargs: dict[str, object] = {}
        if user is not None and os.geteuid() == 0:
            kwargs = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}
        try:
            result = subprocess.run(
                [candidate, "-c", probe],
                capture_output=True,
                cwd="/",
                **kwargs,  # type: ignore[call-overload]
            )
        except OSError:  # not executable for that user
            continue
        if result.returncode == 0:
            return candidate
    raise ServerError(f"no Python >= 3.11 that user {user!r} can run among {candidates}")


def make_wrapper(dest: Path, app_dir: Path, python: str) -> Path:
    """deploy/bin/fcgi-app filled in: the command lighttpd and mod_fcgid spawn."""
    values = {"app_dir": str(app_dir), "python": python}
    return render_deploy("bin/fcgi-app", values, dest, mode=0o755)


# --------------------------------------------------------------------------- lighttpd


def find_lighttpd() -> str:
    return find_binary("lighttpd", "/usr/sbin/lighttpd", package="lighttpd")


@dataclasses.dataclass
class Lighttpd:
    """A private lighttpd serving one deploy/lighttpd site file (or several,
    concatenated) on a loopback port."""

    binary: str
    sites: list[tuple[str, dict[str, str]]]
    prefix: Path
    docroot: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    exit_status: int | None = None
    related: list[Backend] = dataclasses.field(default_factory=list)

    @property
    def error_log_path(self) -> Path:
        return self.prefix / "error.log"

    @property
    def conf_path(self) -> Path:
        return self.prefix / "lighttpd.conf"

    @property
    def site_path(self) -> Path:
        return self.prefix / "site.conf"

    def _render(self) -> None:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        parts = []
        for site, values in self.sites:
            source = DEPLOY_DIR / "lighttpd" / site
            parts.append(render_template(source.read_text(), values, source=str(source)))
        self.site_path.write_text("\n".join(parts))
        values = {
            "port": str(self.port),
            "docroot": str(self.docroot),
            "prefix": str(self.prefix),
            "site": str(self.site_path),
        }
        render_deploy("lighttpd/lighttpd-test.conf", values, self.conf_path)

    @property
    def stderr_path(self) -> Path:
        return self.prefix / "lighttpd.stderr"

    def start(self) -> Lighttpd:
        start_on_free_port(
            self,
            "lighttpd",
            render=self._render,
            check=[self.binary, "-tt", "-f", str(self.conf_path)],
            run=[self.binary, "-D", "-f", str(self.conf_path)],
            stderr_path=self.stderr_path,
            shown=[self.conf_path, self.site_path],
            log=self.logs,
        )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.exit_status is None:
            # SIGTERM: lighttpd stops, and sends SIGTERM to the apps it spawned.
            self.exit_status = stop_process(self.proc, signal.SIGTERM)

    def stop_alone(self) -> int | None:
        """SIGTERM lighttpd and wait for it, leaving the apps it spawned to
        exit in their own time (``stop`` SIGKILLs its whole process group once
        lighttpd is gone, which would cut a graceful exit short)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_status = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
        return self.exit_status

    def logs(self) -> str:
        return read_text(self.error_log_path) + read_text(self.stderr_path)

    def diagnostics(self) -> str:
        return web_server_diagnostics(
            self,
            "lighttpd",
            ", ".join("deploy/lighttpd/" + site for site, _ in self.sites),
            self.error_log_path,
            self.stderr_path,
            self.related,
        )


# --------------------------------------------------------------------------- apache


def find_apache() -> str:
    return find_binary("apache2", "/usr/sbin/apache2", "/usr/sbin/httpd", package="apache2")


def apache_modules_dir() -> Path:
    for candidate in ("/usr/lib/apache2/modules", "/usr/lib64/httpd/modules"):
        if Path(candidate, "mod_proxy_fcgi.so").exists():
            return Path(candidate)
    raise ServerError("Apache modules directory with mod_proxy_fcgi.so not found")


def require_mod_fcgid(modules: Path) -> None:
    if not (modules / "mod_fcgid.so").exists():
        raise ServerError(
            f"mod_fcgid is not installed in {modules} "
            "(CI installs it: apt-get install -y libapache2-mod-fcgid)"
        )


@dataclasses.dataclass
class Apache:
    """A private Apache 2.4 (``apache2 -f CONF -DFOREGROUND``) serving one or
    more deploy/apache site files on a loopback port, its children running as
    :data:`APACHE_USER`."""

    binary: str
    sites: list[tuple[str, dict[str, str]]]
    shared: SharedDir
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    exit_status: int | None = None
    related: list[Backend] = dataclasses.field(default_factory=list)

    @property
    def prefix(self) -> Path:
        return self.shared.path

    @property
    def error_log_path(self) -> Path:
        return self.prefix / "error.log"

    @property
    def conf_path(self) -> Path:
        return self.prefix / "httpd.conf"

    @property
    def site_path(self) -> Path:
        return self.prefix / "site.conf"

    def _render(self) -> None:
        modules = apache_modules_dir()
        self.shared.sub("run")
        self.shared.sub("docroot")
        parts = []
        for site, values in self.sites:
            if site == "fcgid.conf":
                require_mod_fcgid(modules)
            source = DEPLOY_DIR / "apache" / site
            parts.append(render_template(source.read_text(), values, source=str(source)))
        self.site_path.write_text("\n".join(parts))
        user = pwd.getpwnam(APACHE_USER)
        values = {
            "prefix": str(self.prefix),
            "port": str(self.port),
            "docroot": str(self.prefix / "docroot"),
            "modules": str(modules),
            "site": str(self.site_path),
            "user": user.pw_name,
            "group": grp.getgrgid(user.pw_gid).gr_name,
        }
        render_deploy("apache/apache-test.conf", values, self.conf_path)

    def _command(self, *extra: str) -> list[str]:
        return [self.binary, "-f", str(self.conf_path), *extra]

    @property
    def stderr_path(self) -> Path:
        return self.prefix / "apache.stderr"

    def start(self) -> Apache:
        start_on_free_port(
            self,
            "apache",
            render=self._render,
            check=self._command("-t"),
            run=self._command("-DFOREGROUND"),
            stderr_path=self.stderr_path,
            shown=[self.conf_path, self.site_path],
            log=self.error_log,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C"},
        )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.exit_status is None:
            # SIGTERM: Apache stops; mod_fcgid sends SIGTERM to the apps it spawned.
            self.exit_status = stop_process(self.proc, signal.SIGTERM)

    def error_log(self) -> str:
        return read_text(self.error_log_path)

    def diagnostics(self) -> str:
        return web_server_diagnostics(
            self,
            "apache",
            ", ".join("deploy/apache/" + site for site, _ in self.sites),
            self.error_log_path,
            self.stderr_path,
            self.related,
        )


#: The modules each deploy/apache site needs beyond those apache-test.conf
#: loads: (module name, shared object), as ``a2enmod`` would load them.
SITE_MODULES: dict[str, tuple[tuple[str, str], ...]] = {
    "proxy_uwsgi.conf": (("proxy_uwsgi_module", "mod_proxy_uwsgi.so"),),
    "proxy_scgi.conf": (("proxy_scgi_module", "mod_proxy_scgi.so"),),
}


@dataclasses.dataclass
class ModulesApache(Apache):
    """:class:`Apache`, loading first the modules its sites need (:data:`SITE_MODULES`).

    The site files stay as shipped (a deployment loads modules with
    ``a2enmod``); the lines go at the top of the test's rendered site.conf,
    each guarded by ``<IfModule !...>`` so that a module apache-test.conf
    loads one day is not loaded twice.
    """

    def _render(self) -> None:
        super()._render()
        modules = apache_modules_dir()
        lines: list[str] = []
        for site, _ in self.sites:
            for name, shared_object in SITE_MODULES.get(site, ()):
                path = modules / shared_object
                if not path.exists():
                    raise ServerError(
                        f"{shared_object} is not installed in {modules} "
                        "(Debian's apache2-bin has it)"
                    )
                lines += [f"<IfModule !{name}>", f'    LoadModule {name} "{path}"', "</IfModule>"]
        if lines:
            self.site_path.write_text("\n".join(lines) + "\n" + self.site_path.read_text())


def chgrp_socket(path: Path, user: str = APACHE_USER) -> None:
    """Give ``user``'s group access to a 0660 socket owned by the test's user,
    as a deployment would by running fcgi with that group."""
    os.chown(path, -1, pwd.getpwnam(user).pw_gid)


# --------------------------------------------------------------------------- front end


@dataclasses.dataclass
class FrontEnd:
    """A web server in front of ``frontend_app:app``, as the case table sees it.

    ``mount`` is where the app is mounted ("" for the root, "/app");
    ``streams`` says whether the deploy file passes a response on as the app
    produces it (then the streaming case checks the first piece arrives before
    the app writes the rest); ``gate_dir`` is a directory the app can see, for
    that check's go-ahead file.
    """

    name: str
    port: int
    mount: str
    gate_dir: Path
    streams: bool
    describe: Callable[[], str]
    server: object = None

    def request(
        self,
        method: str,
        target: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        chunked: bool = False,
    ) -> HTTPResponse:
        return http_request(
            self.port, method, target, body, headers, chunked=chunked, describe=self.describe
        )

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT)

    def explain(self, response: HTTPResponse | None = None) -> str:
        parts = [f"=== front end: {self.name} (app mounted at {self.mount or '/'!r})"]
        if response is not None:
            parts.append(response.summary())
        parts.append(self.describe())
        return "\n".join(parts)


# --------------------------------------------------------------------------- uwsgi and SCGI sites

#: An endless answer's pieces, and where it stops if nobody hangs up (a bound,
#: not a size any test reads: 256 MiB).
ENDLESS_PIECE = 64 * 1024
ENDLESS_PIECES = 4096
#: What :func:`hang_up_mid_response` reads of an answer before it hangs up.
HANG_UP_AFTER = 256 * 1024

#: ``siteapp:app``, behind the uwsgi and SCGI sites: frontend_app's routes, plus
#: ``endless`` (an answer that does not end, for clients that hang up) and
#: ``created`` (a status of its own and repeated headers).
SITE_APP_SOURCE = f"""
import time

import frontend_app


def endless(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def pieces():
        for _ in range({ENDLESS_PIECES}):
            yield b"x" * {ENDLESS_PIECE}
            # The client hangs up long before the end, whatever the web server buffers.
            time.sleep(0.001)

    return pieces()


def created(environ, start_response):
    body = b"created\\n"
    start_response("201 Created", [
        ("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
        ("X-One", "1"), ("X-Many", "a"), ("X-Many", "b"),
    ])
    return [body]


def app(environ, start_response):
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    route = path.rstrip("/").rsplit("/", 1)[-1]
    if route == "endless":
        return endless(environ, start_response)
    if route == "created":
        return created(environ, start_response)
    return frontend_app.app(environ, start_response)
"""


def write_site_app(workdir: Path) -> str:
    """Write ``siteapp.py`` (:data:`SITE_APP_SOURCE`) into ``workdir``; return its app spec.

    ``workdir`` goes on the backend's PYTHONPATH (``backend_env([workdir])``).
    """
    (workdir / "siteapp.py").write_text(SITE_APP_SOURCE)
    return "siteapp:app"


def hang_up_mid_response(fe: FrontEnd, target: str) -> None:
    """GET ``target``, read :data:`HANG_UP_AFTER` bytes of the answer, hang up."""
    with socket.create_connection(("127.0.0.1", fe.port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        received = 0
        while received < HANG_UP_AFTER:
            chunk = sock.recv(65536)
            assert chunk, f"the answer ended after {received} bytes\n{fe.explain()}"
            received += len(chunk)


def stop_all(servers: Iterable[Apache | Lighttpd | Backend | object]) -> None:
    """Stop servers (reverse order of start is the caller's job), collecting errors."""
    errors = []
    for server in servers:
        stop = getattr(server, "stop", None)
        if stop is None:
            continue
        try:
            stop()
        except Exception as exc:  # keep stopping the others
            errors.append(f"stopping {server!r}: {exc!r}")
    if errors:
        raise ServerError("\n".join(errors))
