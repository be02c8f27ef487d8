"""Access log, status, ping and slowlog in the single-process server, without a pool.

Driven as an operator would: ``python -m fcgi serve`` in a subprocess (and
``fcgi.serve()`` from a script), real requests on a real unix socket, real
signals, the process tree read from ``/proc``. These options used to turn a
single process into a dynamic pool, which then refused to start as root
without ``--user``; the tests run as whatever user runs the suite, root
included, and give no ``--user``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from xml.etree import ElementTree

import pytest
from rawfcgi import ROOT, Reply, Server, get_params, roundtrip, running_server, wait_connectable

APP = """
import time


def helper_of_the_app():
    time.sleep(1.5)


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        helper_of_the_app()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]
"""

#: The default access format's line for one GET: address, no user, the start
#: time, method and path (quoted), status, then the duration in milliseconds.
LINE = re.compile(
    r"^(?P<addr>\S+) - - \d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4} "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) \d+\.\d{3}$'
)

WORKERS = ["sync", "trio"]


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (every thread's), as the kernel lists them."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return out


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


#: The same answers as an ASGI app, for the asyncio worker (ASGI apps only).
ASGI_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})
"""


@contextmanager
def single(tmp_path: Path, *args: str, app: str = APP) -> Iterator[Server]:
    """``fcgi serve obsapp:app`` on a unix socket, as one process (asserted)."""
    (tmp_path / "obsapp.py").write_text(app)
    sock = tmp_path / "app.sock"
    with running_server(
        "obsapp:app", "--chdir", str(tmp_path), *args, bind=f"unix:{sock}"
    ) as server:
        yield server
        assert children(server.proc.pid) == [], server.log()
        assert "master" not in server.log()


def get(server: Server, path: str, query: str = "", **params: str) -> Reply:
    return roundtrip(server.address, {**get_params(path, query), **params})


def status(server: Server, query: str) -> Reply:
    reply = get(server, "/status", query)
    assert reply.status == 200, reply
    return reply


@pytest.mark.parametrize("worker", WORKERS)
def test_access_log_lines_in_the_default_format_escaped(tmp_path: Path, worker: str) -> None:
    access = tmp_path / "access.log"
    with single(tmp_path, "--worker", worker, "--access-log", str(access)) as srv:
        assert get(srv, "/hello", REMOTE_ADDR="192.0.2.7").body == b"hello"
        # A client's quote and LF stay inside the quoted field, escaped.
        forged = '/x" 200 1.000\n10.0.0.1 - - "GET /admin'
        get(srv, forged, REMOTE_ADDR="192.0.2.7")
        wait_for(lambda: len(lines_of(access)) == 2, "two access log lines")
        first, second = lines_of(access)
        m = LINE.match(first)
        assert m, first
        assert m["addr"] == "192.0.2.7" and m["request"] == "GET /hello" and m["status"] == "200"
        m = LINE.match(second)
        assert m, second
        assert m["request"] == r"GET /x\x22 200 1.000\x0A10.0.0.1 - - \x22GET /admin"


@pytest.mark.parametrize("worker", WORKERS)
def test_status_page_in_every_format_shows_one_process_and_its_requests(
    tmp_path: Path, worker: str
) -> None:
    with single(tmp_path, "--worker", worker, "--status-path", "/status") as srv:
        for _ in range(3):
            assert get(srv, "/").status == 200
        # The status request itself is running while the page is made: 3 done.
        doc = json.loads(status(srv, "json&full").body)
        assert doc["process manager"] == "single"
        assert (doc["total processes"], doc["active processes"], doc["idle processes"]) == (
            1,
            1,
            0,
        )
        # The start-up probe's connection counts too: at least one per request.
        accepted = doc["accepted conn"]
        assert accepted >= 4
        assert doc["limits"]["max_children"] == 1
        assert "max_spare_servers" not in doc["limits"]  # no spares in a pool of one
        (process,) = doc["processes"]
        assert process["pid"] == srv.proc.pid and process["requests"] == 3

        text = status(srv, "").body.decode()
        assert re.search(r"^process manager: +single$", text, re.M), text
        assert re.search(r"^total processes: +1$", text, re.M), text
        assert re.search(rf"^accepted conn: +{accepted + 1}$", text, re.M), text

        root = ElementTree.fromstring(status(srv, "xml&full").body)
        assert root.findtext("process-manager") == "single"
        assert root.findtext("total-processes") == "1"
        assert root.findtext("processes/process/requests") == "5"

        page = status(srv, "html").body.decode()
        assert "<th>process manager</th><td>single</td>" in page, page

        reply = status(srv, "openmetrics&full")
        assert b"application/openmetrics-text" in reply.stdout.split(b"\r\n\r\n")[0]
        metrics = reply.body.decode()
        assert 'fcgi_total_processes{pool="www"} 1\n' in metrics, metrics
        assert f'fcgi_process_requests_total{{pool="www",pid="{srv.proc.pid}"}} 7\n' in metrics
        assert 'fcgi_config_max_children{pool="www"} 1\n' in metrics
        assert "fcgi_config_max_spare_servers" not in metrics
        assert metrics.endswith("# EOF\n")


def test_ping_answers_without_the_app(tmp_path: Path) -> None:
    args = ("--ping-path", "/ping", "--ping-response", "alive")
    with single(tmp_path, *args) as srv:
        reply = get(srv, "/ping")
        assert (reply.status, reply.body) == (200, b"alive")
        assert get(srv, "/").body == b"hello"  # other paths still reach the app


def test_every_page_and_log_at_once_runs_one_process_as_any_user(tmp_path: Path) -> None:
    """The issue's command: as root it used to need --user, because it started a master."""
    access = tmp_path / "access.log"
    args = ("--access-log", str(access), "--status-path", "/status", "--ping-path", "/ping")
    with single(tmp_path, *args) as srv:
        assert get(srv, "/ping").body == b"pong"
        assert json.loads(status(srv, "json").body)["total processes"] == 1
        assert children(srv.proc.pid) == []
        assert "single process" in srv.log()
        wait_for(lambda: len(lines_of(access)) == 2, "an access log line per request")


def test_sigusr1_reopens_the_access_log_after_logrotate_moved_it(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    with single(tmp_path, "--access-log", str(access)) as srv:
        get(srv, "/before")
        wait_for(lambda: len(lines_of(access)) == 1, "the first line")
        access.rename(rotated)
        srv.proc.send_signal(signal.SIGUSR1)
        srv.wait_log("log files reopened")
        get(srv, "/after")
        wait_for(lambda: len(lines_of(access)) == 1, "a line in the new file")
        assert '"GET /after"' in lines_of(access)[0]
        assert len(lines_of(rotated)) == 1 and '"GET /before"' in lines_of(rotated)[0]
        assert srv.proc.poll() is None


def test_pages_and_log_survive_a_reload(tmp_path: Path) -> None:
    """SIGHUP re-executes the process: the new image serves the same pages and log."""
    access = tmp_path / "access.log"
    args = ("--access-log", str(access), "--status-path", "/status")
    with single(tmp_path, *args) as srv:
        get(srv, "/before")
        srv.proc.send_signal(signal.SIGHUP)
        srv.wait_log("reloading")
        wait_for(lambda: srv.log().count("serving on") == 2, "the re-executed image")
        doc = json.loads(status(srv, "json&full").body)
        assert (doc["process manager"], doc["processes"][0]["pid"]) == ("single", srv.proc.pid)
        wait_for(lambda: len(lines_of(access)) == 2, "a line from each image")
        assert '"GET /status"' in lines_of(access)[1]


@pytest.mark.parametrize("worker", ["sync", "asyncio"])
def test_a_signal_right_after_a_request_is_handled_at_once(tmp_path: Path, worker: str) -> None:
    """The handler runs without waiting for another request to come.

    A signal that arrived while the compiled request loop (setup.py) ran
    waited for interpreted code to run again, and an idle worker runs none:
    SIGHUP right after a request reloaded only once the next request came,
    about one time in six. The sync loop now wakes on every signal and lets
    its handler run (fcgi.signal_turn); the asyncio worker, compiled too,
    relies on its event loop's wake-up on signals.
    """
    args = ["--worker", worker, "--access-log", str(tmp_path / "access.log")]
    args += ["--status-path", "/status"]
    app = ASGI_APP if worker == "asyncio" else APP
    with single(tmp_path, *args, app=app) as srv:
        for turn in range(1, 41):
            assert get(srv, "/").status == 200
            srv.proc.send_signal(signal.SIGUSR1)
            wait_for(
                lambda turn=turn: srv.log().count("log files reopened") == turn,  # type: ignore[misc]
                f"SIGUSR1 number {turn} handled with no request after it",
            )


@pytest.mark.parametrize("worker", WORKERS)
def test_slowlog_writes_the_requests_stack_and_counts_it(tmp_path: Path, worker: str) -> None:
    slowlog = tmp_path / "slow.log"
    args = ("--worker", worker, "--request-slowlog-timeout", "0.3", "--slowlog", str(slowlog))
    with single(tmp_path, *args, "--status-path", "/status") as srv:
        assert get(srv, "/slow").body == b"hello"
        wait_for(lambda: "helper_of_the_app" in (slowlog.read_text() if slowlog.exists() else ""),
                 "the stack in the slowlog")  # fmt: skip
        text = slowlog.read_text()
        assert "request: GET /slow" in text
        # The app's frames come first, fcgi's folded after them.
        stack = text.split("most recent call first:\n", 1)[1].splitlines()
        assert "in helper_of_the_app" in stack[0] and "obsapp.py" in stack[0], text
        assert json.loads(status(srv, "json").body)["slow requests"] == 1
        assert "executing too slow" in srv.log()
        assert get(srv, "/").body == b"hello"  # a fast request is not logged
        assert text.count("request: ") == 1


def test_python_api_serves_pages_and_log_in_one_process(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    access = tmp_path / "access.log"
    script = (
        "import sys, fcgi, fcgi.demo\n"
        "raise SystemExit(fcgi.serve(fcgi.demo.app, bind=sys.argv[1], access_log=sys.argv[2],"
        " status_path='/status', ping_path='/ping'))\n"
    )
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, f"unix:{sock}", str(access)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
    try:
        wait_connectable(f"unix:{sock}", proc, str(log_path))
        srv = Server(proc, f"unix:{sock}", str(log_path))
        assert get(srv, "/ping").body == b"pong"
        doc = json.loads(status(srv, "json&full").body)
        assert (doc["process manager"], doc["total processes"]) == ("single", 1)
        assert doc["processes"][0]["pid"] == proc.pid
        wait_for(lambda: len(lines_of(access)) == 2, "the access log lines")
        assert children(proc.pid) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()


def test_an_access_log_that_cannot_be_written_stops_the_start_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "app.sock"
    missing = tmp_path / "no" / "such" / "dir" / "access.log"
    done = subprocess.run(
        [sys.executable, "-m", "fcgi", "serve", "fcgi.demo:app", "--bind", f"unix:{sock}",
         "--access-log", str(missing)],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert f"access_log: cannot write {str(missing)!r}" in done.stderr, done.stderr
    assert not sock.exists()
    assert "serving on" not in done.stderr


@pytest.mark.parametrize("flags", [("--max-children", "3"), ("--pm", "dynamic")])
def test_pool_only_flags_still_start_a_master(flags: tuple[str, ...]) -> None:
    # As root a master needs to be told its workers' user; anyone else's runs as itself.
    user = ["--user", "root"] if os.geteuid() == 0 else []
    with running_server("fcgi.demo:app", *flags, *user, "--access-log", "-") as srv:
        wait_for(lambda: children(srv.proc.pid) != [], "a worker forked by the master")
        assert "master" in srv.log()
