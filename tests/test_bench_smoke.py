"""Smoke test of the benchmark harness's pieces (bench/): no timing assertions at all.

Compiles the C responder and fcgiload, serves the bench routes from the C responder, and
checks that fcgiload's responses all validate (zero errors) in both connection modes.  The
ASGI twin of the bench app (bench/asgi_app.py) must answer every route with the WSGI app's
bytes, under asyncio and trio; httpload (the mixed-latency load generator) runs against a
real HTTP/1.1 server and must file fast and slow requests apart.  The uwsgi and SCGI rows of
issue 14 (uWSGI on its own protocol, fcgi on uwsgi and on SCGI) are started as the harness
starts them and checked route by route directly, then through a real nginx's ``uwsgi_pass`` /
``scgi_pass`` with the stock params files; their target rows are rendered from set figures.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import subprocess
import threading
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from bench import fcgiclient
from bench.backends import SPECS, make_backend, uwsgi_path
from bench.deps import compile_c
from bench.harness import WORKLOADS, check_http, full_check, parse_wrk
from bench.nginx import Front, Nginx, free_port, render
from bench.report import issue14_checks


@pytest.fixture(scope="module")
def programs() -> dict[str, Path]:
    return compile_c(names=["responder", "fcgiload"])


@pytest.fixture()
def c_responder(programs: dict[str, Path], tmp_path: Path) -> Iterator[str]:
    sock = str(tmp_path / "c.sock")
    be = make_backend(SPECS["c"], sock, 2, tmp_path / "c.log")
    be.start()
    try:
        yield sock
    finally:
        be.stop()
    assert not Path(sock).exists()


def fcgiload(programs: dict[str, Path], sock: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [str(programs["fcgiload"]), "-s", sock, "-c", "4", "-d", "0.5", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def test_responder_answers_every_route(c_responder: str) -> None:
    assert fcgiclient.request(c_responder, "/hello").body == b"Hello, world!"
    assert fcgiclient.request(c_responder, "/64k").body == b"x" * 65536
    resp = fcgiclient.request(c_responder, "/post", "POST", b"a" * 16384)
    assert (resp.status, resp.body) == (200, b"16384")
    resp = fcgiclient.request(c_responder, "/upload", "POST", b"u" * 1048576)
    assert resp.body == b"1048576"
    assert fcgiclient.request(c_responder, "/hello", nheaders=40).body == b"Hello, world!"
    assert fcgiclient.request(c_responder, "/nope").status == 404


@pytest.mark.parametrize("keep", [False, True])
def test_fcgiload_validates_with_zero_errors(
    programs: dict[str, Path], c_responder: str, keep: bool
) -> None:
    res = fcgiload(programs, c_responder, *(["-k"] if keep else []), "-E", "Hello, world!")
    assert res["requests"] > 0
    assert res["errors"] == 0 and res["bad"] == 0


def test_fcgiload_validates_bodies(programs: dict[str, Path], c_responder: str) -> None:
    res = fcgiload(programs, c_responder, "-p", "/post", "-b", "100000", "-E", "100000")
    assert res["requests"] > 0 and res["errors"] == 0
    res = fcgiload(programs, c_responder, "-p", "/64k", "-l", "65536", "-H", "40")
    assert res["requests"] > 0 and res["errors"] == 0


def test_fcgiload_counts_wrong_answers(programs: dict[str, Path], c_responder: str) -> None:
    res = fcgiload(programs, c_responder, "-E", "Goodbye")
    assert res["requests"] == 0
    assert res["bad"] > 0 and res["errors"] == res["bad"]


def test_stopped_backend_leaves_no_process(programs: dict[str, Path], tmp_path: Path) -> None:
    be = make_backend(SPECS["c"], str(tmp_path / "s.sock"), 2, tmp_path / "s.log")
    be.start()
    pids = be.tree()
    assert len(pids) == 3
    be.stop()
    time.sleep(0.1)
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z"


def test_parse_wrk_and_nginx_config(tmp_path: Path) -> None:
    sample = (
        "  Latency Distribution\n     50%  520.00us\n     75%  1.00ms\n     99%    1.23ms\n"
        "  52000 requests in 2.00s, 7.5MB read\n  Non-2xx or 3xx responses: 3\n"
        "Requests/sec:  26000.00\n"
    )
    res = parse_wrk(sample)
    assert res["rps"] == 26000.0 and res["requests"] == 52000 and res["errors"] == 3
    assert res["p50_us"] == 520.0 and res["p99_us"] == 1230.0
    conf = render(tmp_path, [Front("a", 8001, "/x.sock", False), Front("b", 8002, "/x.sock", True)])
    assert "worker_processes 1;" in conf and "access_log off;" in conf
    assert "keepalive 16;" in conf and "fastcgi_keep_conn on;" in conf


# ------------------------------------------------------------------ the ASGI twin, httpload

ROUTES = [
    ("GET", "/hello", b""),
    ("GET", "/64k", b""),
    ("POST", "/post", b"a" * 16384),
    ("POST", "/upload", b"u" * 1048576),
    ("GET", "/size/1000", b""),
    ("GET", "/size/0", b""),
    ("GET", "/slow", b""),
    ("GET", "/size/abc", b""),
    ("GET", "/nope", b""),
]


def call_wsgi(method: str, path: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    from bench.app import app

    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "wsgi.input": io.BytesIO(body),
    }
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        started.append((status, headers))

    out = b"".join(app(environ, start_response))
    status, headers = started[0]
    return int(status.split()[0]), [(k.lower(), v) for k, v in headers], out


async def call_asgi(
    method: str, path: str, body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Drive the ASGI app as a server would, the body in pieces of up to 64 KiB."""
    from bench.asgi_app import app

    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
    inbox = [
        {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
        for i, p in enumerate(pieces)
    ]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    await app(scope, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    headers = [(k.decode(), v.decode()) for k, v in sent[0]["headers"]]
    return sent[0]["status"], headers, sent[1]["body"]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[r[1] for r in ROUTES])
def test_asgi_twin_answers_the_same_bytes(method: str, path: str, body: bytes) -> None:
    expected = call_wsgi(method, path, body)
    assert asyncio.run(call_asgi(method, path, body)) == expected


@pytest.mark.parametrize("path", ["/hello", "/slow", "/post"])
def test_asgi_twin_runs_under_trio(path: str) -> None:
    """hypercorn's trio worker serves it too: /slow must sleep without asyncio."""
    trio = pytest.importorskip("trio")
    body = b"b" * 1000 if path == "/post" else b""
    method = "POST" if body else "GET"
    assert trio.run(call_asgi, method, path, body) == call_wsgi(method, path, body)


def test_asgi_twin_completes_lifespan() -> None:
    from bench.asgi_app import app

    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


class _BenchHandler(http.server.BaseHTTPRequestHandler):
    """bench.app over HTTP/1.1 keep-alive: a real server for httpload to talk to."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        status, headers, body = call_wsgi("GET", self.path, b"")
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BenchHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def httpload(port: int, *args: str) -> dict[str, float]:
    binary = compile_c(names=["httpload"])["httpload"]
    out = subprocess.run(
        [str(binary), "-p", str(port), "-c", "4", "-d", "1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def test_httpload_times_fast_and_slow_requests_apart(http_port: int) -> None:
    res = httpload(http_port, "-n", "10")
    assert res["errors"] == 0 and res["bad"] == 0
    assert res["fast"] > 0 and res["slow"] > 0
    assert res["requests"] == res["fast"] + res["slow"]
    # not a speed claim: /slow sleeps 50 ms before it answers, so a slow request timed as
    # slow cannot have taken less; a mix-up of the two arrays would break this
    assert res["slow_p50_us"] >= 50000


def test_httpload_counts_wrong_answers(http_port: int) -> None:
    res = httpload(http_port, "-n", "0", "-F", "Goodbye")
    assert res["requests"] == 0 and res["slow"] == 0
    assert res["bad"] > 0 and res["errors"] == res["bad"]


def test_nginx_config_for_http_peers(tmp_path: Path) -> None:
    conf = render(tmp_path, [Front("u", 8003, "/u.sock", True, "http")])
    assert "server unix:/u.sock;" in conf and "keepalive 16;" in conf
    assert "proxy_pass http://up0;" in conf and "proxy_http_version 1.1;" in conf
    assert 'proxy_set_header Connection "";' in conf and "fastcgi_param" not in conf


# ------------------------------------------------------------------ issue 14: uwsgi and SCGI rows


def test_nginx_config_for_uwsgi_and_scgi_rows(tmp_path: Path) -> None:
    conf = render(
        tmp_path,
        [Front("n", 8004, "/n.sock", False, "uwsgi"), Front("s", 8005, "/s.sock", False, "scgi")],
    )
    assert "include uwsgi_params;" in conf and "uwsgi_pass unix:/n.sock;" in conf
    assert "include scgi_params;" in conf and "scgi_pass unix:/s.sock;" in conf
    # one request per connection, and the stock params only
    assert "upstream" not in conf and "fastcgi_param" not in conf


@pytest.mark.parametrize("key", ["uwsgi-native", "fcgi-uwsgi", "fcgi-scgi"])
def test_uwsgi_and_scgi_backends_answer_directly_and_through_nginx(
    key: str, tmp_path: Path
) -> None:
    spec = SPECS[key]
    if key == "uwsgi-native":
        # In the test extra: a missing uWSGI is a broken install, not a reason to skip.
        assert Path(uwsgi_path()).exists(), "uwsgi is not installed: pip install -e '.[test]'"
    sock = str(tmp_path / f"{key}.sock")
    be = make_backend(spec, sock, 1, tmp_path / f"{key}.log")
    be.start()
    nginx = Nginx(tmp_path / "nginx", [Front(key, free_port(), sock, False, spec.protocol)])
    try:
        # every route, /slow, a 1 MiB upload, 40 headers and a 404, in the backend's protocol
        assert full_check(sock, spec.keep_conn, spec.protocol) is None
        nginx.start()
        port = nginx.fronts[0].port
        for w in WORKLOADS:
            if w.key in ("hello", "64k", "post16k", "upload1m", "headers40"):
                assert check_http(port, w) is None, w.key
    finally:
        nginx.stop()
        be.stop()
    assert not Path(sock).exists()


def test_issue14_rows_in_the_report() -> None:
    names = {
        "uwsgi": "uWSGI",
        "fcgi": "fcgi",
        "uwsgi-native": "uWSGI (uwsgi_pass)",
        "fcgi-uwsgi": "fcgi (uwsgi_pass)",
        "fcgi-scgi": "fcgi (scgi_pass)",
    }
    data: dict[str, Any] = {"backends": {k: {"label": v} for k, v in names.items()}}
    rps = {"uwsgi": 1000, "fcgi": 1100, "uwsgi-native": 1100, "fcgi-uwsgi": 1430, "fcgi-scgi": 1210}
    summ = {
        "hello": {names[k]: {"median": v} for k, v in rps.items()},
        "post16k": {names[k]: {"median": v} for k, v in rps.items() if k != "fcgi-uwsgi"},
    }
    rows = issue14_checks(data, summ)
    assert "| hello: fcgi (uwsgi_pass) vs uWSGI (uwsgi_pass) | 1.30x | ≥ 1.2x | yes |" in rows
    assert "| hello: fcgi (uwsgi_pass) vs fcgi (fastcgi_pass) | 1.30x | - | informative |" in rows
    assert "| hello: fcgi (scgi_pass) vs fcgi (fastcgi_pass) | 1.10x | - | informative |" in rows
    assert "| hello: uWSGI (uwsgi_pass) vs uWSGI (fastcgi_pass) | 1.10x | - | informative |" in rows
    missing = "| post16k: fcgi (uwsgi_pass) vs uWSGI (uwsgi_pass) | - | ≥ 1.2x | not measured |"
    assert missing in rows
    assert not any(row.startswith("| 64k") for row in rows)


# -- bench.floor: the least a CPython responder spends per request --------------------


def test_floor_times_each_step_and_sets_the_sum_against_the_c_responder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("fcgi._speedups", reason="the floor is measured with the C decoder")
    from bench import app, floor

    # Each step does its real work: the decoded block is the params, the app answers.
    steps = floor.pieces()
    assert steps["decode"]() == floor.PARAMS
    environ = steps["environ"]()
    assert isinstance(environ, dict) and environ["PATH_INFO"] == "/hello"
    assert environ["wsgi.version"] == (1, 0)
    assert steps["app"]() == [app.HELLO]
    assert steps["all three"]() == [app.HELLO]

    # The C row's median over rounds, as bench.report takes it: 0.004 s per 1,000 = 4 µs.
    c_rows = [{"cpu_per_1k": x, "round": i} for i, x in enumerate((0.003, 0.004, 0.006))]
    results = tmp_path / "results.json"
    runs = {"hello": {"C responder (raw protocol) + keepalive": c_rows}}
    results.write_text(json.dumps({"runs": runs}))
    assert floor.main(["--number", "200", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    for name in ("decode", "environ", "app", "all three"):
        assert f"{name}: " in out
    assert "C responder, kept hello: 4.00 µs of CPU per request" in out

    # No such row: said, and a failing exit status.
    results.write_text(json.dumps({"runs": {}}))
    assert floor.main(["--number", "10", "--results", str(results)]) == 1
