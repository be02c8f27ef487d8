"""The deploy/ files that are not web-server sites, each run for real.

* deploy/systemd/fcgi-app.socket + fcgi-app.service: socket activation.  No
  systemd here, so the test plays its part: it creates the socket the .socket
  unit describes, and starts the .service's ExecStart in its WorkingDirectory
  the way systemd does: the socket on fd 3, LISTEN_FDS=1 and LISTEN_PID set to
  the pid of the process that runs ExecStart (a small wrapper sets it to its
  own pid, then execs).  The .service binds ``fd://3``.
* deploy/supervisord/fcgi-app.conf: a real supervisord (from PyPI) runs it.
* deploy/docker/HEALTHCHECK: the container's CMD started as the image would
  start it, and the health check's CMD run against it (pong, a 404, a 5xx)
  and against a dead socket.
"""

from __future__ import annotations

import configparser
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from frontends import deploy_app, render_deploy, wait_pid_gone
from webservers import (
    DEPLOY_DIR,
    START_TIMEOUT,
    Backend,
    Nginx,
    ServerError,
    backend_env,
    read_text,
    stop_process,
    wait_until_accepting,
)

#: Runs ``argv[2:]`` with the socket from fd ``argv[1]`` on fd 3 and the
#: LISTEN_* variables systemd would set for it.
SYSTEMD_EXEC = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDNAMES"] = "fcgi-app.socket"
os.execv(sys.argv[2], sys.argv[2:])
"""


def fcgi_request(address: str, target: str) -> subprocess.CompletedProcess[bytes]:
    """``fcgi request ADDR TARGET`` from this work tree."""
    return subprocess.run(
        [sys.executable, "-m", "fcgi", "request", "--timeout", "30", address, target],
        capture_output=True,
        env=backend_env(),
        timeout=120,
    )


def unit_file(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


class Service:
    """One start of the .service's ExecStart with the activation socket."""

    def __init__(self, argv: list[str], cwd: str, listener: socket.socket, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SYSTEMD_EXEC, str(listener.fileno()), *argv],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=[listener.fileno()],
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                start_new_session=True,
            )

    def stop(self) -> int | None:
        return stop_process(self.proc)


def systemd_setup(tmp_path: Path) -> tuple[socket.socket, configparser.SectionProxy]:
    """Render both units; create the socket as systemd would from the .socket unit."""
    sock_path = tmp_path / "app.sock"
    app_dir = deploy_app(tmp_path / "app")
    values = {"socket": str(sock_path), "app_dir": str(app_dir), "python": sys.executable}
    socket_unit = unit_file(render_deploy("systemd/fcgi-app.socket", values, tmp_path / "s"))
    service_unit = unit_file(render_deploy("systemd/fcgi-app.service", values, tmp_path / "v"))
    listen = socket_unit["Socket"]["ListenStream"]
    assert listen == str(sock_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(listen)
    os.chmod(listen, int(socket_unit["Socket"]["SocketMode"], 8))
    listener.listen(int(socket_unit["Socket"]["Backlog"]))
    # systemd stops a service with its KillSignal; Service.stop sends SIGTERM.
    assert service_unit["Service"]["KillSignal"] == "SIGTERM"
    return listener, service_unit["Service"]


def start_service(
    service: configparser.SectionProxy, listener: socket.socket, log: Path, n: int
) -> Service:
    """Start ExecStart, check one request through the activation socket."""
    running = Service(shlex.split(service["ExecStart"]), service["WorkingDirectory"], listener, log)
    address = listener.getsockname()
    result = fcgi_request(f"unix:{address}", f"/start{n}/echo?n={n}")
    if result.returncode != 0:
        running.stop()
    assert result.returncode == 0, f"{result!r}\n{read_text(log)}"
    data = json.loads(result.stdout)
    assert data["pid"] == running.proc.pid, read_text(log)  # exec'd in place
    assert data["QUERY_STRING"] == f"n={n}", read_text(log)
    assert data["PATH_INFO"] == f"/start{n}/echo", read_text(log)
    return running


def test_systemd_socket_activation(tmp_path: Path) -> None:
    """The .service serves the socket systemd passes and stops cleanly on SIGTERM."""
    listener, service = systemd_setup(tmp_path)
    log = tmp_path / "service.log"
    try:
        running = start_service(service, listener, log, 0)
        assert running.stop() == 0, read_text(log)
        assert "INFO fcgi.serve: stopped" in read_text(log), read_text(log)
    finally:
        listener.close()


def test_systemd_restart_keeps_activation_socket(tmp_path: Path) -> None:
    """A restart reuses systemd's socket: the service must leave the path alone."""
    listener, service = systemd_setup(tmp_path)
    sock_path = Path(listener.getsockname())
    log = tmp_path / "service.log"
    try:
        for n in range(2):
            running = start_service(service, listener, log, n)
            assert running.stop() == 0, read_text(log)
            assert sock_path.exists(), (
                f"the service removed the activation socket {sock_path} on exit\n{read_text(log)}"
            )
    finally:
        listener.close()


def find_supervisord() -> list[str]:
    found = shutil.which("supervisord")
    if found:
        return [found]
    probe = subprocess.run([sys.executable, "-c", "import supervisor"], capture_output=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "supervisor.supervisord"]
    pytest.fail("supervisord is not installed (pip install supervisor)", pytrace=False)


def test_supervisord_program(tmp_path: Path) -> None:
    sock_path = tmp_path / "app.sock"
    app_dir = deploy_app(tmp_path / "app")
    program = render_deploy(
        "supervisord/fcgi-app.conf",
        {
            "python": sys.executable,
            "app_dir": str(app_dir),
            "socket": str(sock_path),
            "log_dir": str(tmp_path),
        },
        tmp_path / "fcgi-app.conf",
    )
    conf = render_deploy(
        "supervisord/supervisord-test.conf",
        {"prefix": str(tmp_path), "program": str(program)},
        tmp_path / "supervisord.conf",
    )
    app_log = tmp_path / "fcgi-app.log"

    def logs() -> str:
        return (
            f"--- supervisord.log:\n{read_text(tmp_path / 'supervisord.log')}\n"
            f"--- supervisord stderr:\n{read_text(tmp_path / 'stderr')}\n"
            f"--- fcgi-app.log:\n{read_text(app_log)}"
        )

    with (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            [*find_supervisord(), "-n", "-c", str(conf)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )
    try:
        try:
            wait_until_accepting(socket.AF_UNIX, str(sock_path), proc, logs, "supervisord program")
        except ServerError as exc:
            pytest.fail(str(exc), pytrace=False)
        result = fcgi_request(f"unix:{sock_path}", "/via/supervisord/echo")
        assert result.returncode == 0, f"{result!r}\n{logs()}"
        pid = json.loads(result.stdout)["pid"]
        ppid = int(re.search(r"^PPid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)[1])  # type: ignore[index]
        assert ppid == proc.pid, f"app pid {pid} is not supervisord's child\n{logs()}"

        ctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf)]
        # RUNNING once the program stayed up for startsecs (a hang guard, not a threshold).
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            status = subprocess.run([*ctl, "status", "fcgi-app"], capture_output=True, text=True)
            if "RUNNING" in status.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "RUNNING" in status.stdout, f"{status!r}\n{logs()}"
        stopped = subprocess.run([*ctl, "stop", "fcgi-app"], capture_output=True, text=True)
        assert "stopped" in stopped.stdout, f"{stopped!r}\n{logs()}"
        assert wait_pid_gone(pid), logs()
        # SIGTERM from supervisord: fcgi's graceful exit, an expected exit code.
        assert "INFO fcgi.serve: stopped" in read_text(app_log), logs()
        assert "exited: fcgi-app (exit status 0; expected)" in read_text(
            tmp_path / "supervisord.log"
        ) or "stopped: fcgi-app (exit status 0)" in read_text(tmp_path / "supervisord.log"), logs()
        assert not sock_path.exists(), f"fcgi left its socket behind\n{logs()}"
    finally:
        code = stop_process(proc)
    assert code == 0, logs()


#: The socket path the image's CMD and HEALTHCHECK share, replaced by the test's.
IMAGE_SOCKET = "unix:/run/fcgi/app.sock"


def docker_commands(address: str) -> tuple[list[str], list[str]]:
    """The container's CMD and its HEALTHCHECK's CMD from deploy/docker/HEALTHCHECK.

    Rewritten only where this machine differs from the image: the socket path,
    the ``fcgi`` command (this work tree's), the app (tests/frontend_app.py
    for the image's app.py) and, when the test runs as root, ``--user root``
    standing in for the image's ``USER app`` line (a root master must be told
    its workers' user).
    """
    text = (DEPLOY_DIR / "docker" / "HEALTHCHECK").read_text()
    check = re.search(r"^HEALTHCHECK\b.*?\bCMD (\[.*\])\s*$", text, re.M | re.S)
    assert check, "deploy/docker/HEALTHCHECK has no exec-form HEALTHCHECK CMD"
    start = re.search(r"^CMD (\[.*\])\s*$", text, re.M)
    assert start, "deploy/docker/HEALTHCHECK has no exec-form CMD starting the server"
    assert re.search(r"^USER app$", text, re.M), "the image must not run as root"
    serve: list[str] = json.loads(start[1])
    ping: list[str] = json.loads(check[1])
    assert serve[:3] == ["fcgi", "serve", "app:app"] and IMAGE_SOCKET in serve, serve
    assert ping[:2] == ["fcgi", "request"] and IMAGE_SOCKET in ping, ping
    # The check pings the pool's ping path, and fails on a 4xx/5xx.
    assert "--fail" in ping, ping
    assert serve[serve.index("--ping-path") + 1] == ping[-1], (serve, ping)

    def local(argv: list[str]) -> list[str]:
        return [
            *(sys.executable, "-m", "fcgi"),
            *(address if arg == IMAGE_SOCKET else arg for arg in argv[1:]),
        ]

    server = local(serve)
    server[server.index("app:app")] = "frontend_app:app"
    if os.geteuid() == 0:
        server += ["--user", "root"]
    return server, local(ping)


def start_container(tmp_path: Path) -> tuple[Backend, list[str]]:
    """The server as the container starts it, once it passes its check; the check."""
    sock = tmp_path / "app.sock"
    serve, check = docker_commands(f"unix:{sock}")
    backend = Backend(command=serve, bind=f"unix:{sock}", workdir=tmp_path, env=backend_env())
    backend.start()
    # Docker's --start-period: checks fail until the workers are up (a hang
    # guard, not a threshold).
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        result = subprocess.run(check, capture_output=True, env=backend_env(), timeout=120)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert result.returncode == 0, f"{result!r}\n{backend.diagnostics()}"
    # The pool's own ping answer ("pong"), not the app's /ping route ("pong\n").
    assert result.stdout == b"pong", f"{result!r}\n{backend.diagnostics()}"
    return backend, check


def test_docker_healthcheck(tmp_path: Path) -> None:
    backend, command = start_container(tmp_path)
    try:
        healthy = subprocess.run(command, capture_output=True, env=backend_env(), timeout=120)
        assert healthy.returncode == 0, f"{healthy!r}\n{backend.diagnostics()}"
    finally:
        backend.stop()
    assert backend.exit_status == 0, backend.diagnostics()
    unhealthy = subprocess.run(command, capture_output=True, env=backend_env(), timeout=120)
    assert unhealthy.returncode != 0, repr(unhealthy)


def test_docker_healthcheck_fails_on_404(tmp_path: Path) -> None:
    """A ping path nothing serves is a failed check, not a pass (issue #11)."""
    backend, command = start_container(tmp_path)
    try:
        command[-1] = "/no-such-ping"  # what the app answers with 404
        result = subprocess.run(command, capture_output=True, env=backend_env(), timeout=120)
        assert result.returncode == 22, f"{result!r}\n{backend.diagnostics()}"
        assert b"404" in result.stderr and result.stdout == b"", repr(result)
    finally:
        backend.stop()


def test_docker_healthcheck_fails_on_5xx(tmp_path: Path) -> None:
    """An app that answers the check with a 5xx makes the container unhealthy too."""
    backend, command = start_container(tmp_path)
    try:
        failing = [*command[:-1], "/ping/../fail"]  # routes to the raising handler
        result = subprocess.run(failing, capture_output=True, env=backend_env(), timeout=120)
        assert result.returncode == 22, f"{result!r}\n{backend.diagnostics()}"
        # The backend is fine after that.
        ok = subprocess.run(command, capture_output=True, env=backend_env(), timeout=120)
        assert ok.returncode == 0, f"{ok!r}\n{backend.diagnostics()}"
    finally:
        backend.stop()


class _NginxAsWwwData(Nginx):
    """nginx whose worker runs as www-data, as Debian's does, not as the test's user."""

    def _render(self) -> None:
        super()._render()
        conf = self.conf_path.read_text()
        self.conf_path.write_text(re.sub(r"(?m)^user .*;$", "user www-data www-data;", conf))


def test_first_deployment_walkthrough(nginx_binary: str, tmp_path: Path) -> None:
    """README "First deployment": pool.toml, check-config, the pool, nginx as www-data.

    Everything but systemd itself (tests/test_operator_systemd.py runs the
    unit's commands): the example pool.toml with only its directories moved,
    workers and socket owner www-data, and nginx's own worker as www-data
    connecting through the 0660 socket the root master made.
    """
    try:
        pwd.getpwnam("www-data")
    except KeyError:
        pytest.skip("no www-data user on this machine")
    # Somewhere www-data can read the app (pytest's tmp dirs are root-only),
    # standing for /srv/app and /run/fcgi.
    srv = Path(tempfile.mkdtemp(prefix="fcgi-first-"))
    try:
        srv.chmod(0o755)
        app_dir = srv / "app"
        app_dir.mkdir()
        app_dir.chmod(0o755)
        (app_dir / "app.py").write_text(FIRST_APP)
        (app_dir / "app.py").chmod(0o644)
        run_dir = srv / "run"
        run_dir.mkdir()
        run_dir.chmod(0o755)
        config = render_deploy("systemd/pool.toml", {"app_dir": str(app_dir)}, srv / "pool.toml")
        config.write_text(config.read_text().replace("/run/fcgi/", f"{run_dir}/"))
        env = dict(backend_env(), PYTHONDONTWRITEBYTECODE="1")
        check = subprocess.run(
            [sys.executable, "-m", "fcgi", "check-config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert check.returncode == 0, check.stderr
        sock = run_dir / "www.sock"
        log = (srv / "master.log").open("wb")
        master = subprocess.Popen(
            [sys.executable, "-m", "fcgi", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
        )
        try:
            deadline = time.monotonic() + 60
            while b"ready" not in (srv / "master.log").read_bytes():
                assert master.poll() is None, (srv / "master.log").read_text()
                assert time.monotonic() < deadline, (srv / "master.log").read_text()
                time.sleep(0.05)
            info = sock.stat()
            assert pwd.getpwuid(info.st_uid).pw_name == "www-data"
            assert info.st_mode & 0o777 == 0o660
            nginx = _NginxAsWwwData(
                binary=nginx_binary,
                site="fcgi.conf",
                values={"fcgi_pass": f"unix:{sock}"},
                prefix=tmp_path / "nginx",
            ).start()
            try:
                page = nginx.request("GET", "/hello?x=1")
                assert page.status == 200, nginx.explain(page)
                assert page.body == b"user=www-data path=/hello", nginx.explain(page)
                status = nginx.request("GET", "/status?json")
                assert status.status == 200, nginx.explain(status)
                assert json.loads(status.body)["pool"] == "www"
            finally:
                nginx.stop()
        finally:
            master.send_signal(signal.SIGTERM)
            assert master.wait(60) == 0, (srv / "master.log").read_text()
            log.close()
        assert not sock.exists()
    finally:
        shutil.rmtree(srv, ignore_errors=True)


FIRST_APP = """
import os, pwd

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    user = pwd.getpwuid(os.getuid()).pw_name
    return [f"user={user} path={environ['PATH_INFO']}".encode()]
"""
