"""Listeners that speak uwsgi or SCGI beside FastCGI: bind specs, checks, and real pools.

A bind spec may name its protocol (``uwsgi:unix:/run/app.sock``,
``scgi:127.0.0.1:4000``; FastCGI without a prefix). These tests hold the
parsing and the configuration checks to that, then run real pools and single
processes (``python -m fcgi serve``) with one listener of each protocol and
talk to each in its own protocol with the small raw clients below: the
answers, the status and ping pages, limits, a client that leaves, and the
protocol kept across a re-executing reload and for a systemd socket.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_pool_support import PoolMaster, wait_for
from webservers import free_port

from fcgi.connection import ServerConnection
from fcgi.driver import WorkerBase
from fcgi.errors import ConfigError
from fcgi.listeners import Listeners, open_single
from fcgi.options import ServerOptions
from fcgi.scgi import ScgiConnection
from fcgi.sockets import FASTCGI, SCGI, UWSGI, parse_bind
from fcgi.uwsgi import UwsgiConnection

ROOT = Path(__file__).resolve().parent.parent

#: Seconds a raw client waits for an answer: against hangs only.
TIMEOUT = 30.0

# -- raw clients ---------------------------------------------------------------------------


def cgi_vars(target: str, method: str = "GET", length: int = 0) -> list[tuple[bytes, bytes]]:
    """The variables a web server sends for ``target``, in nginx's order (bytes)."""
    query = target.partition("?")[2]
    return [
        (b"CONTENT_LENGTH", str(length).encode()),
        (b"REQUEST_METHOD", method.encode()),
        (b"REQUEST_URI", target.encode()),
        (b"QUERY_STRING", query.encode()),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"SERVER_NAME", b"localhost"),
        (b"SERVER_PORT", b"80"),
        (b"REMOTE_ADDR", b"127.0.0.1"),
        (b"HTTP_HOST", b"localhost"),
    ]


def uwsgi_packet(target: str, method: str = "GET", body: bytes = b"", length: int = -1) -> bytes:
    """A modifier1 0 request as nginx's uwsgi_pass sends it (PATH_INFO as uwsgi_params has it)."""
    pairs = cgi_vars(target, method, len(body) if length < 0 else length)
    pairs.append((b"PATH_INFO", target.partition("?")[0].encode()))
    block = b"".join(
        struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in pairs
    )
    return struct.pack("<BHB", 0, len(block), 0) + block + body


def scgi_packet(target: str, method: str = "GET", body: bytes = b"", length: int = -1) -> bytes:
    """An SCGI request: a netstring of NUL-separated headers (CONTENT_LENGTH first), the body."""
    pairs = cgi_vars(target, method, len(body) if length < 0 else length)
    pairs.insert(1, (b"SCGI", b"1"))
    block = b"".join(k + b"\0" + v + b"\0" for k, v in pairs)
    return str(len(block)).encode() + b":" + block + b"," + body


def connect(address: str) -> socket.socket:
    """A connection to ``unix:/path`` or ``HOST:PORT`` (a spec without its protocol)."""
    spec = parse_bind(address)
    if spec.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = spec.path
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (spec.host, spec.port)
    sock.settimeout(TIMEOUT)
    sock.connect(target)
    return sock


def exchange(address: str, packet: bytes) -> bytes:
    """Send one request, read the answer to the end (the protocols close after one)."""
    with connect(address) as sock:
        sock.sendall(packet)
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


class Answer:
    """A response read off the wire: status, headers, body."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, raw: bytes):
        self.status = status
        self.headers = headers
        self.body = body
        self.raw = raw

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def __repr__(self) -> str:
        return f"Answer({self.raw[:600]!r})"


class _FakeSocket:
    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def makefile(self, *args: object, **kwargs: object) -> io.BytesIO:
        return self._file


def uwsgi_request(address: str, target: str, method: str = "GET", body: bytes = b"") -> Answer:
    """The answer of a uwsgi listener: raw HTTP, read as http.client reads a server's."""
    raw = exchange(address, uwsgi_packet(target, method, body))
    response = http.client.HTTPResponse(_FakeSocket(raw))  # type: ignore[arg-type]
    response.begin()
    return Answer(response.status, response.getheaders(), response.read(), raw)


def scgi_request(address: str, target: str, method: str = "GET", body: bytes = b"") -> Answer:
    """The answer of an SCGI listener: a CGI response (``Status:`` and header lines)."""
    raw = exchange(address, scgi_packet(target, method, body))
    return cgi_answer(raw)


def cgi_answer(raw: bytes) -> Answer:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no end of head in {raw[:300]!r}"
    headers = []
    status = 200
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        else:
            headers.append((name, value.strip()))
    return Answer(status, headers, body, raw)


def ask(protocol: str, address: str, target: str, method: str = "GET", body: bytes = b"") -> Answer:
    """One request over ``protocol`` ("uwsgi" or "scgi") to ``address``."""
    if protocol == UWSGI:
        return uwsgi_request(address, target, method, body)
    return scgi_request(address, target, method, body)


# -- bind specs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "protocol", "address"),
    [
        ("uwsgi:unix:/run/app.sock", UWSGI, "unix:/run/app.sock"),
        ("scgi:127.0.0.1:4000", SCGI, "127.0.0.1:4000"),
        ("fastcgi:unix:/run/b.sock", FASTCGI, "unix:/run/b.sock"),
        ("unix:/run/b.sock", FASTCGI, "unix:/run/b.sock"),
        ("/run/b.sock", FASTCGI, "unix:/run/b.sock"),
        ("uwsgi:/run/app.sock", UWSGI, "unix:/run/app.sock"),
        ("UWSGI:[::1]:3031", UWSGI, "[::1]:3031"),
        ("scgi:4000", SCGI, "127.0.0.1:4000"),
        ("uwsgi:fd://3", UWSGI, "fd://3"),
        ("localhost:9000", FASTCGI, "localhost:9000"),
        ("my-host.example:9000", FASTCGI, "my-host.example:9000"),
        (" scgi:0.0.0.0:4000 ", SCGI, "0.0.0.0:4000"),
    ],
)
def test_a_bind_spec_names_its_protocol_and_its_address(
    spec: str, protocol: str, address: str
) -> None:
    parsed = parse_bind(spec)
    assert parsed.protocol == protocol
    # The address alone: how an inherited socket is matched to a spec.
    assert str(parsed) == address


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("http://127.0.0.1:8080", "unknown protocol 'http'"),
        ("fcgi:unix:/run/a.sock", "unknown protocol 'fcgi'"),
        ("tcp:127.0.0.1:9000", "unknown protocol 'tcp'"),
        ("wsgi:/run/a.sock", "unknown protocol 'wsgi'"),
        ("uwsgi:", "no address after the protocol"),
        ("scgi:unix:", "empty unix socket path"),
        ("uwsgi:localhost:notaport", "port 'notaport' is not a number"),
        ("scgi:127.0.0.1:70000", "out of range"),
    ],
)
def test_a_bad_bind_spec_is_refused_with_its_text(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_bind(spec)
    assert repr(spec) in str(info.value)


def fcgi_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fcgi", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )


def test_check_config_accepts_every_protocol_in_one_pool(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(
        '[pool.www]\napp = "fcgi.demo:app"\nuser = "root"\n'
        f'listen = ["uwsgi:unix:{tmp_path}/app.sock", "unix:{tmp_path}/b.sock", '
        '"scgi:127.0.0.1:4000", "fastcgi:127.0.0.1:9000"]\n'
    )
    checked = fcgi_cli("check-config", str(path))
    assert checked.returncode == 0, checked.stderr
    # The effective settings keep the prefixes (and read back the same).
    assert f'"uwsgi:unix:{tmp_path}/app.sock"' in checked.stdout


def test_check_config_refuses_an_unknown_prefix_by_file_line_and_table(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(
        '[pool.www]\napp = "fcgi.demo:app"\nuser = "root"\n'
        f'listen = ["uwsgi:unix:{tmp_path}/app.sock", "wsgi:unix:{tmp_path}/b.sock"]\n'
    )
    for command in (("check-config", str(path)), ("serve", "--config", str(path))):
        proc = fcgi_cli(*command)
        assert proc.returncode == 2, proc
        assert "Traceback" not in proc.stderr
        assert (
            f"fcgi: error: {path}:4 [pool.www] listen: bind address "
            f"'wsgi:unix:{tmp_path}/b.sock': unknown protocol 'wsgi'"
        ) in proc.stderr, proc.stderr


def test_preflight_finds_a_missing_directory_behind_a_prefix(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    missing = tmp_path / "no-such-dir"
    path.write_text(
        '[pool.www]\napp = "fcgi.demo:app"\nuser = "root"\n'
        f'listen = ["uwsgi:unix:{missing}/app.sock"]\n'
    )
    proc = fcgi_cli("check-config", str(path))
    assert proc.returncode == 2, proc
    assert f"listen: 'uwsgi:unix:{missing}/app.sock': directory '{missing}' does not exist" in (
        proc.stderr
    ), proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bind", "http://127.0.0.1:8080"], "--bind: bind address 'http://127.0.0.1:8080': "
         "unknown protocol 'http'"),
        (["--bind", "uwsgi:unix:/tmp/x.sock", "--bind", "scgi:unix:/tmp/x.sock", "--workers",
          "2", "--user", "root"], "'scgi:unix:/tmp/x.sock' is already used"),
        (["--bind", "unix:/tmp/x.sock", "--status-listen", "scgi:127.0.0.1:4000", "--workers",
          "2", "--user", "root"], "--status-listen: the master answers it over FastCGI only"),
    ],
)  # fmt: skip
def test_the_command_line_refuses_what_cannot_be_served(args: list[str], message: str) -> None:
    proc = fcgi_cli("serve", "fcgi.demo:app", *args)
    assert proc.returncode == 2, proc
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# -- listeners and drivers, in this process ------------------------------------------------


def test_listeners_carry_each_socket_s_protocol(tmp_path: Path) -> None:
    listeners = open_single(
        [f"uwsgi:unix:{tmp_path}/u.sock", f"scgi:unix:{tmp_path}/s.sock", f"{tmp_path}/f.sock"]
    )
    try:
        uwsgi, scgi, _fastcgi = listeners.sockets
        assert listeners.protocols == {uwsgi.fileno(): UWSGI, scgi.fileno(): SCGI}
        # What a re-executed single process gets back, by the names it left.
        names = listeners.names()
        assert sorted(names) == sorted(
            [f"uwsgi:unix:{tmp_path}/u.sock#0", f"scgi:unix:{tmp_path}/s.sock#1",
             f"unix:{tmp_path}/f.sock#2"]
        )  # fmt: skip
        again = Listeners.handed_over(names, listeners.owned_paths)
        assert again.protocols == listeners.protocols
        assert again.owned_paths == listeners.owned_paths
    finally:
        listeners.close()


def test_an_inherited_socket_speaks_what_the_spec_claiming_it_says(tmp_path: Path) -> None:
    """systemd's and a re-executed master's sockets are matched by address alone."""
    path = tmp_path / "inherited.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    listeners = Listeners.inherit({f"unix:{path}": sock}, [])
    try:
        assert listeners.claim(f"uwsgi:unix:{path}") is sock
        assert listeners.protocols == {sock.fileno(): UWSGI}
        assert listeners.protocols_of([sock]) == {sock.fileno(): UWSGI}
        assert listeners.by_spec == {f"uwsgi:unix:{path}": sock}
    finally:
        listeners.close()


def test_each_listener_gets_its_core_and_only_fastcgi_gets_tracebacks() -> None:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(3)]
    try:
        uwsgi, scgi, fastcgi = socks
        options = ServerOptions(protocols={uwsgi.fileno(): UWSGI, scgi.fileno(): SCGI})
        worker = WorkerBase(socks, app=None, options=options)
        try:
            assert worker.core_for(uwsgi) == (UwsgiConnection, False)
            assert worker.core_for(scgi) == (ScgiConnection, False)
            assert worker.core_for(fastcgi) == (ServerConnection, True)
            options.stderr_tracebacks = False
            assert worker.core_for(fastcgi) == (ServerConnection, False)
        finally:
            worker.close()
    finally:
        for sock in socks:
            sock.close()


# -- a pool with one listener of each protocol ---------------------------------------------


@pytest.fixture(params=["sync", "trio"])
def pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[PoolMaster, str, str]]:
    """A pool of 2 with a FastCGI, a uwsgi (unix) and an SCGI (TCP) listener."""
    uwsgi = f"unix:{tmp_path}/u.sock"
    scgi = f"127.0.0.1:{free_port()}"
    args = ["--workers", "2", "--worker", request.param, "--max-body-size", "1K",
            "--bind", f"uwsgi:{uwsgi}", "--bind", f"scgi:{scgi}"]  # fmt: skip
    with PoolMaster(tmp_path, args=args) as master:
        master.wait_ready(2)
        yield master, uwsgi, scgi


def test_one_pool_answers_each_listener_in_its_own_protocol(
    pool: tuple[PoolMaster, str, str],
) -> None:
    master, uwsgi, scgi = pool
    fastcgi = master.request("/hello")
    assert fastcgi.status == 200 and fastcgi.body.startswith(b"pid="), fastcgi
    over_uwsgi = uwsgi_request(uwsgi, "/hello?x=1")
    # uwsgi answers raw HTTP: a status line, not a Status header.
    assert over_uwsgi.raw.startswith(b"HTTP/1.1 200 OK\r\n"), over_uwsgi
    assert over_uwsgi.body.startswith(b"pid="), over_uwsgi
    assert over_uwsgi.header("Content-Type") == "text/plain", over_uwsgi
    over_scgi = scgi_request(scgi, "/hello")
    # SCGI answers as CGI does.
    assert over_scgi.raw.startswith(b"Status: 200 OK\r\n"), over_scgi
    assert over_scgi.body.startswith(b"pid="), over_scgi
    log = master.log()
    assert f"uwsgi:{uwsgi}" in log and f"scgi:{scgi}" in log, log


@pytest.mark.parametrize("protocol", [UWSGI, SCGI])
def test_the_status_and_ping_pages_answer_over_each_protocol(
    pool: tuple[PoolMaster, str, str], protocol: str
) -> None:
    _, uwsgi, scgi = pool
    address = uwsgi if protocol == UWSGI else scgi
    ping = ask(protocol, address, "/ping")
    assert (ping.status, ping.body) == (200, b"pong"), ping
    status = ask(protocol, address, "/status?json&full")
    assert status.status == 200, status
    doc = json.loads(status.body)
    assert doc["pool"] == "www"
    assert doc["idle processes"] + doc["active processes"] == 2
    # The request for the page itself is on it, as over FastCGI.
    assert "/status" in [p["request uri"] for p in doc["processes"]], doc


@pytest.mark.parametrize("protocol", [UWSGI, SCGI])
def test_max_body_size_refuses_a_large_body_before_the_app_runs(
    pool: tuple[PoolMaster, str, str], protocol: str
) -> None:
    master, uwsgi, scgi = pool
    address = uwsgi if protocol == UWSGI else scgi
    refused = ask(protocol, address, "/hello", "POST", b"x" * 4096)
    assert refused.status == 413, refused
    assert b"pid=" not in refused.body
    small = ask(protocol, address, "/hello", "POST", b"x" * 100)
    assert small.status == 200, small
    assert "larger than max_body_size" in master.log()


@pytest.mark.parametrize("protocol", [UWSGI, SCGI])
def test_a_peer_that_leaves_before_its_answer_costs_only_its_request(
    pool: tuple[PoolMaster, str, str], protocol: str
) -> None:
    master, uwsgi, scgi = pool
    address = uwsgi if protocol == UWSGI else scgi
    packet = (uwsgi_packet if protocol == UWSGI else scgi_packet)("/sleep?0.3")
    for _ in range(4):  # more than the workers: each one meets a peer gone
        sock = connect(address)
        sock.sendall(packet)
        sock.close()
    for _ in range(4):
        answer = ask(protocol, address, "/hello")
        assert answer.status == 200, answer
    wait_for(lambda: master.status()["accepted conn"] >= 8, what="the aborted requests counted")


def test_a_wrong_protocol_on_a_listener_is_a_protocol_error_with_a_hint(
    pool: tuple[PoolMaster, str, str],
) -> None:
    """fastcgi_pass to a uwsgi socket: the log says what the peer seems to speak."""
    master, uwsgi, scgi = pool
    assert exchange(scgi, uwsgi_packet("/hello")) == b""
    master.wait_log("a uwsgi client?")
    assert uwsgi_request(uwsgi, "/hello").status == 200


# -- the protocol survives a reload that re-executes, and systemd's sockets ----------------


def write_app(directory: Path) -> None:
    (directory / "protoapp.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [f\"pid={os.getpid()} path={environ['PATH_INFO']}\".encode()]\n"
    )


def children(pid: int) -> set[int]:
    """The pids of a process's children, as the kernel lists them."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(word) for word in text.split()}


def pid_of(body: bytes) -> int:
    """The pid that protoapp's answer names (``pid=N path=...``)."""
    return int(body.split()[0].removeprefix(b"pid="))


class Serving:
    """``python -m fcgi serve protoapp:app ARGS`` with its output in a file."""

    def __init__(
        self,
        tmp_path: Path,
        args: list[str],
        launcher: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        write_app(tmp_path)
        self.log_path = tmp_path / "serve.log"
        self._log = self.log_path.open("wb")
        env = dict(os.environ, PYTHONPATH=f"{ROOT}:{tmp_path}", PYTHONDONTWRITEBYTECODE="1")
        command = launcher or [sys.executable, "-m", "fcgi"]
        self.proc = subprocess.Popen(
            [*command, "serve", "protoapp:app", "--log-level", "debug", *args],
            cwd=tmp_path,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=pass_fds,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1) -> None:
        def seen() -> bool:
            assert self.proc.poll() is None, self.log()
            return self.log().count(text) >= count

        wait_for(seen, timeout=60, what=f"{text!r} x{count} in the log")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def test_a_single_process_reload_keeps_each_listener_s_protocol(tmp_path: Path) -> None:
    uwsgi = f"unix:{tmp_path}/u.sock"
    scgi = f"127.0.0.1:{free_port()}"
    server = Serving(tmp_path, ["--bind", f"uwsgi:{uwsgi}", "--bind", f"scgi:{scgi}"])
    try:
        server.wait_log("serving on")
        first = uwsgi_request(uwsgi, "/before")
        assert first.body.endswith(b"path=/before"), first
        server.proc.send_signal(signal.SIGHUP)
        server.wait_log("serving on", count=2)
        assert f"serving on uwsgi:{uwsgi}, scgi:{scgi}" in server.log(), server.log()
        after = uwsgi_request(uwsgi, "/after")
        assert after.raw.startswith(b"HTTP/1.1 200 OK"), after
        # The same process, re-executed: same pid, same sockets.
        assert after.body.split()[0] == first.body.split()[0], (first, after)
        assert scgi_request(scgi, "/after").raw.startswith(b"Status: 200 OK"), server.log()
    finally:
        assert server.stop() == 0, server.log()


def test_a_re_executed_master_keeps_each_listener_s_protocol(tmp_path: Path) -> None:
    uwsgi = f"unix:{tmp_path}/u.sock"
    scgi = f"127.0.0.1:{free_port()}"
    fastcgi = f"unix:{tmp_path}/f.sock"
    args = ["--bind", f"uwsgi:{uwsgi}", "--bind", f"scgi:{scgi}", "--bind", fastcgi,
            "--workers", "2", "--user", "root", "--preload-app"]  # fmt: skip
    server = Serving(tmp_path, args)
    try:
        server.wait_log("ready")
        assert uwsgi_request(uwsgi, "/before").status == 200
        old_workers = children(server.proc.pid)
        assert len(old_workers) == 2, server.log()
        server.proc.send_signal(signal.SIGHUP)
        server.wait_log("re-executed")
        server.wait_log("ready", count=2)
        # The old generation finishes what it has and exits.
        wait_for(lambda: not children(server.proc.pid) & old_workers, timeout=60,
                 what="the old workers to exit")  # fmt: skip
        new_workers = children(server.proc.pid)
        assert len(new_workers) == 2, server.log()
        answered = set()
        for _ in range(4):  # new workers, from the new master, on the kept sockets
            answer = uwsgi_request(uwsgi, "/after")
            assert answer.raw.startswith(b"HTTP/1.1 200 OK"), answer
            answered.add(pid_of(answer.body))
            answer = scgi_request(scgi, "/after")
            assert answer.raw.startswith(b"Status: 200 OK"), answer
            answered.add(pid_of(answer.body))
        # Answered by the re-executed master's workers, none of the old ones.
        assert answered and answered <= new_workers, (answered, new_workers, old_workers)
    finally:
        assert server.stop() == 0, server.log()


def test_a_systemd_socket_speaks_the_protocol_its_spec_names(tmp_path: Path) -> None:
    """LISTEN_FDS as systemd sets it, and ``listen = ["uwsgi:unix:..."]`` at that address."""
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    launcher = (
        "import os, sys\n"
        "os.dup2(int(sys.argv[1]), 3)\n"
        "os.environ['LISTEN_FDS'] = '1'\n"
        "os.environ['LISTEN_PID'] = str(os.getpid())\n"
        "from fcgi.cli import main\n"
        "raise SystemExit(main(sys.argv[2:]))\n"
    )
    server = Serving(
        tmp_path,
        ["--bind", f"uwsgi:unix:{path}", "--workers", "1", "--user", "root"],
        launcher=[sys.executable, "-c", launcher, str(listener.fileno())],
        pass_fds=(listener.fileno(),),
    )
    try:
        server.wait_log("ready")
        assert "using inherited socket" in server.log(), server.log()
        answer = uwsgi_request(f"unix:{path}", "/activated")
        assert answer.raw.startswith(b"HTTP/1.1 200 OK"), answer
        assert answer.body.endswith(b"path=/activated"), answer
    finally:
        assert server.stop() == 0, server.log()
        listener.close()
