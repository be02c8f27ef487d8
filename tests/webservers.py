"""Start real web servers and FastCGI backends for end-to-end tests.

Everything runs as child processes of the test on loopback ports and in a
temporary directory; nothing touches the system's own web server setup.

* ``Backend``: a FastCGI server (``python -m fcgi serve MODULE:APP --bind ADDR``)
  on a unix socket or a loopback TCP port, with its stderr kept in a file.
* ``Nginx``: a private nginx (``daemon off``, one worker) whose site config is a
  file from ``deploy/nginx/`` rendered only for paths and ports.
* :func:`start_on_free_port` and :func:`web_server_diagnostics`: the start
  loop and the log report that ``Nginx`` shares with ``frontends.Lighttpd``
  and ``frontends.Apache``.

Each has ``diagnostics()``, which the tests put into assertion messages and
which ``conftest.py`` attaches to the report of any failed test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import http.client
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
DEPLOY_DIR = REPO_ROOT / "deploy"

#: How long a server may take to start accepting or to stop.  This is a safety
#: net against hangs, not a performance threshold.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
#: Socket timeout for HTTP requests made by the tests (again: only against hangs).
HTTP_TIMEOUT = 60.0
#: Free ports a web server is started on before its failure counts: a port is
#: only known free when probed, and another process may bind it first.
START_ATTEMPTS = 3

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class ServerError(AssertionError):
    """A server did not start or stop; the message carries its logs."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def render_template(text: str, values: Mapping[str, str], *, source: str = "template") -> str:
    """Replace ``{{name}}`` placeholders; every placeholder must have a value."""
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(values))
    if missing:
        raise ValueError(f"{source}: no value for placeholder(s) {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def tail(text: str, limit: int = 8000) -> str:
    """The end of a (log) text, marked as cut if it was longer than ``limit``."""
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters cut ...]\n" + text[-limit:]


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"


def _can_connect(family: socket.AddressFamily, address: str | tuple[str, int]) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(address)
        except OSError:
            return False
        return True


def wait_until_accepting(
    family: socket.AddressFamily,
    address: str | tuple[str, int],
    proc: subprocess.Popen[bytes],
    describe: Callable[[], str],
    what: str,
) -> None:
    """Poll until ``address`` accepts connections; fail if ``proc`` exits first."""
    deadline = time.monotonic() + START_TIMEOUT
    delay = 0.01
    while True:
        code = proc.poll()
        if code is not None:
            raise ServerError(f"{what} exited with status {code} before accepting\n{describe()}")
        if _can_connect(family, address):
            return
        if time.monotonic() > deadline:
            raise ServerError(
                f"{what} did not accept connections on {address!r} within "
                f"{START_TIMEOUT:.0f}s\n{describe()}"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int | None:
    """Signal ``proc`` (and its process group), wait, kill if it lingers.

    ``proc`` must have been started with ``start_new_session=True``, so its
    process group holds only it and its own children.  Returns its exit status,
    or None if it had to be killed.
    """
    if proc.poll() is not None:
        _kill_group(proc.pid)
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        code = proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.wait(STOP_TIMEOUT)
        return None
    _kill_group(proc.pid)
    return code


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in the process group our child led."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def process_state(proc: subprocess.Popen[bytes] | None) -> str:
    """``pid N, running`` / ``pid N, exited with status S`` / ``not started``."""
    if proc is None:
        return "not started"
    code = proc.poll()
    return f"pid {proc.pid}, " + ("running" if code is None else f"exited with status {code}")


# --------------------------------------------------------------------------- web servers


class WebServer(Protocol):
    """What :func:`start_on_free_port` needs of Nginx, Lighttpd and Apache."""

    port: int
    proc: subprocess.Popen[bytes] | None
    exit_status: int | None

    def stop(self) -> None: ...

    def diagnostics(self) -> str: ...


def start_on_free_port(
    server: WebServer,
    name: str,
    *,
    render: Callable[[], None],
    check: Sequence[str],
    run: Sequence[str],
    stderr_path: Path,
    shown: Sequence[Path],
    log: Callable[[], str],
    env: Mapping[str, str] | None = None,
) -> None:
    """Start a web server on 127.0.0.1 and a free port; fail with its logs.

    Each attempt takes a free port, renders the config for it (``render``
    reads ``server.port``), has the server check it (``check``; a rejection
    fails at once, showing the rendered files in ``shown``), starts ``run``
    in a session of its own with its output in ``stderr_path`` (``env``: its
    environment, None for the test's) and waits until the port accepts. If
    another process bound the port first ("Address already in use" in
    ``log()``), the next attempt takes another.
    """
    for attempt in range(START_ATTEMPTS):
        server.port = free_port()
        render()
        result = subprocess.run(list(check), capture_output=True, text=True, env=env)
        if result.returncode != 0:
            files = "\n".join(f"--- {path}:\n{read_text(path)}" for path in shown)
            raise ServerError(
                f"{name} rejected the config ({shlex.join(check)})\n"
                f"{result.stdout}{result.stderr}\n{files}"
            )
        with stderr_path.open("wb") as err:
            server.proc = subprocess.Popen(
                list(run),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        try:
            wait_until_accepting(
                socket.AF_INET, ("127.0.0.1", server.port), server.proc, server.diagnostics, name
            )
        except ServerError:
            server.stop()
            if attempt < START_ATTEMPTS - 1 and "Address already in use" in log():
                server.exit_status = None
                continue
            raise
        return


def web_server_diagnostics(
    server: WebServer,
    name: str,
    serving: str,
    error_log: Path,
    stderr_path: Path,
    related: Iterable[Backend],
) -> str:
    """A web server's state, error log and stderr, then its backends' diagnostics."""
    parts = [
        f"--- {name} on 127.0.0.1:{server.port} serving {serving} ({process_state(server.proc)})",
        f"--- {name} error log ({error_log}):\n{tail(read_text(error_log))}",
    ]
    stderr = read_text(stderr_path).strip()
    if stderr:
        parts.append(f"--- {name} stderr:\n{tail(stderr)}")
    parts.extend(backend.diagnostics() for backend in related)
    return "\n".join(parts)


# --------------------------------------------------------------------------- backend


@dataclasses.dataclass
class Backend:
    """A FastCGI backend process listening on a unix socket or a TCP port.

    ``bind`` is what the backend was given (``unix:/path`` or ``127.0.0.1:PORT``);
    ``fcgi_pass`` is the same address spelled for nginx's ``fastcgi_pass``.
    """

    command: list[str]
    bind: str
    workdir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    exit_status: int | None = None

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "backend.stderr"

    @property
    def socket_path(self) -> Path | None:
        return Path(self.bind[len("unix:") :]) if self.bind.startswith("unix:") else None

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        if self.socket_path is not None:
            return None
        host, _, port = self.bind.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def fcgi_pass(self) -> str:
        return self.bind  # "unix:/path" and "host:port" are nginx syntax already

    def start(self) -> Backend:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=self.env,
                cwd=self.workdir,
                start_new_session=True,
            )
        if self.socket_path is not None:
            wait_until_accepting(
                socket.AF_UNIX, str(self.socket_path), self.proc, self.diagnostics, "backend"
            )
        else:
            address = self.tcp_address
            assert address is not None
            wait_until_accepting(socket.AF_INET, address, self.proc, self.diagnostics, "backend")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.exit_status is None:
            self.exit_status = stop_process(self.proc)

    def stderr_text(self) -> str:
        return read_text(self.stderr_path)

    def diagnostics(self) -> str:
        return (
            f"--- backend: {' '.join(self.command)} ({process_state(self.proc)})\n"
            f"--- backend stderr:\n{tail(self.stderr_text())}"
        )

    def connections(self) -> set[str]:
        """Identities of the backend's currently established FastCGI connections.

        Read from /proc/net (Linux): the server side of each accepted connection,
        named by its peer port (TCP) or socket inode (unix).  A connection that
        is reused keeps its identity across requests.
        """
        if self.socket_path is not None:
            return _unix_connections(str(self.socket_path))
        address = self.tcp_address
        assert address is not None
        return _tcp_connections(address[1])


def _tcp_connections(port: int) -> set[str]:
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    found.add(f"tcp:{int(remote.rsplit(':', 1)[1], 16)}")
    return found


def _unix_connections(path: str) -> set[str]:
    found: set[str] = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split(None, 7)
            # Num RefCount Protocol Flags Type St Inode Path; St 03 = connected.
            if len(fields) == 8 and fields[5] == "03" and fields[7].strip() == path:
                found.add(f"unix:{fields[6]}")
    return found


def fcgi_serve_command(app: str, bind: str, extra: Sequence[str] = ()) -> list[str]:
    """The command line that serves ``app`` with this project's CLI."""
    return [sys.executable, "-m", "fcgi", "serve", app, "--bind", bind, *extra]


def backend_env(extra_paths: Sequence[Path] = ()) -> dict[str, str]:
    """The test's environment with tests/ (for ``apps``) and the repo on PYTHONPATH."""
    env = dict(os.environ)
    paths = [str(p) for p in (*extra_paths, TESTS_DIR, REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def make_bind(kind: str, workdir: Path) -> str:
    """A fresh ``--bind`` address of the given kind ("unix" or "tcp")."""
    if kind == "unix":
        # AF_UNIX paths are limited to ~107 bytes; pytest's tmp dirs can be long.
        path = workdir / "fcgi.sock"
        if len(str(path)) > 100:
            raise ValueError(f"socket path too long for AF_UNIX: {path}")
        return f"unix:{path}"
    if kind == "tcp":
        return f"127.0.0.1:{free_port()}"
    raise ValueError(f"unknown backend kind {kind!r}")


# --------------------------------------------------------------------------- nginx


def find_nginx() -> str:
    """Path of the nginx binary; a missing nginx is an error, not a skip."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        raise ServerError("nginx is not installed (CI installs it: apt-get install -y nginx)")
    return found


def nginx_conf_dir(nginx: str) -> Path:
    """The directory of nginx's compiled-in nginx.conf (holds fastcgi_params)."""
    out = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=True)
    match = re.search(r"--conf-path=(\S+)", out.stdout + out.stderr)
    return Path(match.group(1)).parent if match else Path("/etc/nginx")


@dataclasses.dataclass
class HTTPResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def summary(self, limit: int = 2000) -> str:
        head = "\n".join(f"{k}: {v}" for k, v in self.headers)
        body = self.body[:limit].decode("latin-1")
        more = f"\n[... {len(self.body) - limit} more bytes]" if len(self.body) > limit else ""
        return f"--- response: {self.status} {self.reason}\n{head}\n\n{body}{more}"


@dataclasses.dataclass
class Nginx:
    """A private nginx serving one deploy/nginx site file on a loopback port.

    ``site`` is the file name under ``deploy/nginx/``; ``values`` fills its
    placeholders besides ``listen`` (always 127.0.0.1 and a free port).  With
    ``ssl_context`` set (a TLS site), requests go over HTTPS with that context.
    """

    binary: str
    site: str
    values: dict[str, str]
    prefix: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    exit_status: int | None = None
    related: list[Backend] = dataclasses.field(default_factory=list)
    ssl_context: ssl.SSLContext | None = None

    @property
    def error_log_path(self) -> Path:
        return self.prefix / "error.log"

    @property
    def conf_path(self) -> Path:
        return self.prefix / "nginx.conf"

    def _render(self) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        for sub in ("client_body", "fastcgi", "proxy", "scgi", "uwsgi"):
            (self.prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        # The site says `include fastcgi_params;` (or uwsgi_params, scgi_params),
        # which nginx resolves next to
        # the main config file: use the distribution's own copy, unchanged.
        for name in ("fastcgi_params", "uwsgi_params", "scgi_params", "mime.types"):
            source = nginx_conf_dir(self.binary) / name
            if source.exists():
                shutil.copyfile(source, self.prefix / name)
        site_path = self.prefix / self.site
        site_template = DEPLOY_DIR / "nginx" / self.site
        site_values = {"listen": f"127.0.0.1:{self.port}", **self.values}
        site_path.write_text(
            render_template(site_template.read_text(), site_values, source=str(site_template))
        )
        main_template = DEPLOY_DIR / "nginx" / "nginx-test.conf"
        main_values = {
            "prefix": str(self.prefix),
            "site": str(site_path),
            "user": pwd.getpwuid(os.geteuid()).pw_name,
            "group": grp.getgrgid(os.getegid()).gr_name,
        }
        self.conf_path.write_text(
            render_template(main_template.read_text(), main_values, source=str(main_template))
        )

    def _command(self, *extra: str) -> list[str]:
        return [
            self.binary,
            "-p",
            f"{self.prefix}/",
            "-c",
            str(self.conf_path),
            "-e",
            str(self.error_log_path),
            *extra,
        ]

    @property
    def stderr_path(self) -> Path:
        return self.prefix / "nginx.stderr"

    def start(self) -> Nginx:
        start_on_free_port(
            self,
            "nginx",
            render=self._render,
            check=self._command("-t"),
            run=self._command(),
            stderr_path=self.stderr_path,
            shown=[self.conf_path, self.prefix / self.site],
            log=self.error_log,
        )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.exit_status is None:
            # SIGQUIT: graceful shutdown, the master waits for its worker.
            self.exit_status = stop_process(self.proc, signal.SIGQUIT)

    def error_log(self) -> str:
        return read_text(self.error_log_path)

    def diagnostics(self) -> str:
        return web_server_diagnostics(
            self,
            "nginx",
            f"deploy/nginx/{self.site}",
            self.error_log_path,
            self.stderr_path,
            self.related,
        )

    def connection(self) -> http.client.HTTPConnection:
        if self.ssl_context is not None:
            return http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=HTTP_TIMEOUT, context=self.ssl_context
            )
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT)

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        conn: http.client.HTTPConnection | None = None,
    ) -> HTTPResponse:
        """Send one request (on ``conn`` if given, else a fresh connection)."""
        own = conn is None
        c = self.connection() if conn is None else conn
        try:
            c.request(method, target, body=body, headers=dict(headers or {}))
            resp = c.getresponse()
            data = resp.read()
            return HTTPResponse(resp.status, resp.reason, resp.getheaders(), data)
        except (OSError, http.client.HTTPException) as exc:
            raise AssertionError(
                f"{method} {target} failed: {exc!r}\n{self.diagnostics()}"
            ) from exc
        finally:
            if own:
                c.close()

    def explain(self, response: HTTPResponse | None = None) -> str:
        """Assertion message: the response (if any) and every server log."""
        parts = [response.summary()] if response is not None else []
        parts.append(self.diagnostics())
        return "\n".join(parts)
