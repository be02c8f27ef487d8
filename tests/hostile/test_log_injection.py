"""Issue #10 item 8: peer-supplied text cannot forge lines in a log or the status page.

A client (or anything that can reach the FastCGI socket) controls REQUEST_URI,
QUERY_STRING, REQUEST_METHOD, SCRIPT_NAME and every other param. These tests
send every byte 0x00-0x1F and 0x7F in them, followed by whole lines that
imitate the real ones, over raw FastCGI to a real pool, and drive each sink
for real: the access log, the slowlog file, the error log (slowlog warning,
request_terminate_timeout warning, the "child exited ... during" line, an app
traceback) and the text status page with a request in flight. Every sink must
show each control byte as ``\\xHH`` and no line may start like a forged one.
"""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import rawfcgi
from test_pool_support import PoolMaster, wait_for

from fcgi.escape import CONTINUATION

#: Every C0 control byte and DEL.
CONTROLS = "".join(chr(i) for i in range(0x20)) + "\x7f"
#: Lines a forger would like to see in our logs and pages, each as it starts.
FORGED = [
    "[pool www] child 1 exited with code 0",
    "idle processes: 999",
    "2026-01-01 00:00:00,000 [1] WARNING fcgi.pool: forged",
]
#: What goes into each param: the controls, then each forged line on its own.
PAYLOAD = CONTROLS + "".join("\n" + line for line in FORGED) + "\r\n"
#: How each control byte must look once escaped (nginx's form).
ESCAPES = [f"\\x{ord(c):02X}" for c in CONTROLS]

HOSTILE_APP = """
import os, time

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(float(environ.get("HTTP_X_SLEEP", "1")))
    elif path == "/raise":
        raise ValueError("bad query: " + environ["QUERY_STRING"])
    elif path == "/exit":
        os._exit(3)
    elif path == "/nul-header":
        start_response("200 OK", [("X-Forged", "a\\0b")])
        return [b"should not be sent"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def hostile_params(path: str, **extra: str) -> dict[str, str]:
    """A request for ``path`` (PATH_INFO) with PAYLOAD in every param a client shapes."""
    return {
        "REQUEST_METHOD": "G" + PAYLOAD,
        "SCRIPT_NAME": "/s" + PAYLOAD,
        "PATH_INFO": path,
        "REQUEST_URI": path + PAYLOAD + "?" + PAYLOAD,
        "QUERY_STRING": PAYLOAD,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "192.0.2.1",
        **extra,
    }


def assert_no_forged_line(text: str, sink: str) -> None:
    for line in text.splitlines():
        for forged in FORGED:
            assert not line.startswith(forged), f"{sink}: forged line {line!r}\n{text}"
    # A record's own lines start with its timestamp; any continuation starts
    # with the continuation mark, never with one of ours.
    assert not any(line.startswith("2026-01-01") for line in text.splitlines()), text


def assert_all_escaped(line: str, sink: str) -> None:
    missing = [e for e in ESCAPES if e not in line]
    assert not missing, f"{sink}: {missing} not found in {line!r}"
    assert not any(c in line for c in CONTROLS), f"{sink}: raw control byte in {line!r}"


def one_line(text: str, marker: str, sink: str) -> str:
    lines = [line for line in text.splitlines() if marker in line]
    assert lines, f"{sink}: no line with {marker!r}:\n{text}"
    return lines[0]


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    return thread, result


def send(pool: PoolMaster, params: dict[str, str]) -> rawfcgi.Reply | None:
    """The reply, or None when the worker went away before END_REQUEST."""
    try:
        # A long timeout: request_terminate_timeout must be what ends the wait.
        with rawfcgi.connect(pool.address, timeout=120) as sock:
            sock.sendall(rawfcgi.request_bytes(1, params))
            return rawfcgi.RecordReader(sock).reply(1)
    except (ConnectionError, OSError):
        return None


@pytest.fixture
def hostile_pool(tmp_path: Path) -> Iterator[PoolMaster]:
    (tmp_path / "hostileapp.py").write_text(textwrap.dedent(HOSTILE_APP))
    args = [
        "--workers",
        "2",
        "--access-log",
        str(tmp_path / "access.log"),
        "--access-format",
        '%R "%m %r%Q%q" %{SCRIPT_NAME}e %s',
        "--slowlog",
        str(tmp_path / "slow.log"),
        "--request-slowlog-timeout",
        "1",
        "--request-terminate-timeout",
        "8",
    ]
    with PoolMaster(tmp_path, args, app="hostileapp:app") as pool:
        pool.wait_ready(2)
        yield pool


def test_every_sink_escapes_control_bytes_and_forged_lines(
    hostile_pool: PoolMaster, tmp_path: Path
) -> None:
    pool = hostile_pool
    #: Each sink's verdict, all checked at the end so a failure names every
    #: sink that lets a line through, not just the first.
    failures: list[str] = []

    def check(sink: str, verdict: Callable[[], object]) -> None:
        try:
            verdict()
        except AssertionError as exc:
            failures.append(f"--- {sink}: {exc}")

    # The access log: one line per request, whatever the params hold.
    reply = send(pool, hostile_params("/"))
    assert reply is not None and reply.status == 200, reply
    access = wait_for(
        lambda: "192.0.2.1" in (text := (tmp_path / "access.log").read_text()) and text,
        what="the access log line",
    )
    # One line for the request (the others are the status page's, from
    # the fixture's readiness checks).
    ours = [line for line in access.splitlines() if "192.0.2.1" in line]
    check("access log", lambda: assert_no_forged_line(access, "access log"))
    check("access log", lambda: assert_all_escaped(ours[0], "access log"))
    check("access log", lambda: ours[0].startswith('192.0.2.1 "G\\x00') or _fail(access))

    # An app traceback whose exception message holds the query string.
    reply = send(pool, hostile_params("/raise"))
    assert reply is not None and reply.status == 500, reply
    log = pool.wait_log("app raised while serving")
    app_error = one_line(log, "app raised while serving", "app error")
    check("app error", lambda: assert_all_escaped(app_error, "app error"))
    check("app error", lambda: f"{CONTINUATION}ValueError: bad query:" in log or _fail(log))

    # The slowlog (file and warning) and the text status page while the
    # slow request runs; a second worker answers the status page.
    slow, _ = in_thread(lambda: send(pool, hostile_params("/sleep", HTTP_X_SLEEP="5")))
    slowlog = wait_for(
        lambda: (
            "request:" in (tmp_path / "slow.log").read_text()
            and (tmp_path / "slow.log").read_text()
        ),
        what="slowlog entry",
    )
    page = rawfcgi.roundtrip(pool.address, rawfcgi.get_params("/status", "full")).body
    text = page.decode("utf-8")
    slow.join(60)
    check("slowlog", lambda: assert_no_forged_line(slowlog, "slowlog"))
    slow_entry = one_line(slowlog, "request:", "slowlog")
    check("slowlog", lambda: assert_all_escaped(slow_entry, "slowlog"))
    log = pool.wait_log("executing too slow")
    slow_warning = one_line(log, "executing too slow", "slow warning")
    check("slow warning", lambda: assert_all_escaped(slow_warning, "slow warning"))
    check("status page", lambda: assert_no_forged_line(text, "status page"))
    busy = [
        line for line in text.splitlines() if line.startswith("request uri:") and "/sleep" in line
    ]
    check("status page", lambda: assert_all_escaped(busy[0], "status page"))

    # A worker that dies in the middle of a request: the "during" line.
    assert send(pool, hostile_params("/exit")) is None
    log = pool.wait_log("exited with code 3")
    during = one_line(log, "exited with code 3", "child exit")
    check("child exit", lambda: assert_all_escaped(during, "child exit"))

    # request_terminate_timeout: the warning names method and URI.
    assert send(pool, hostile_params("/sleep", HTTP_X_SLEEP="60")) is None
    log = pool.wait_log("execution timed out")
    terminated = one_line(log, "execution timed out", "terminate")
    check("terminate warning", lambda: assert_all_escaped(terminated, "terminate"))

    check("error log", lambda: assert_no_forged_line(pool.log(), "error log"))
    assert not failures, "\n".join(failures)


def _fail(text: str) -> None:
    raise AssertionError(text)


def test_status_json_and_xml_and_html_carry_the_same_escaped_uri(hostile_pool: PoolMaster) -> None:
    pool = hostile_pool
    slow, _ = in_thread(lambda: send(pool, hostile_params("/sleep", HTTP_X_SLEEP="3")))

    def busy_doc() -> dict[str, object] | None:
        doc = pool.status()
        running = [p for p in doc["processes"] if "/sleep" in p["request uri"]]
        return running[0] if running else None

    worker = wait_for(busy_doc, what="the slow request on the status page")
    assert isinstance(worker, dict)
    assert all(e in worker["request uri"] for e in ESCAPES), worker
    for fmt in ("xml&full", "html&full", "openmetrics&full"):
        body = rawfcgi.roundtrip(pool.address, rawfcgi.get_params("/status", fmt)).body
        text = body.decode("utf-8")
        assert not any(c in text.replace("\n", "") for c in CONTROLS), (fmt, text)
        assert_no_forged_line(text, fmt)
    slow.join(60)


def test_nul_in_a_wsgi_response_header_is_refused(hostile_pool: PoolMaster) -> None:
    pool = hostile_pool
    reply = send(pool, rawfcgi.get_params("/nul-header"))
    assert reply is not None
    assert reply.status == 500, reply
    assert b"X-Forged" not in reply.stdout and b"should not be sent" not in reply.stdout
    pool.wait_log("ValueError: invalid value for header X-Forged: 'a\\x00b'")


@pytest.mark.parametrize("worker", ["sync", "trio"])
def test_single_process_server_log_escapes_the_request(worker: str) -> None:
    """``fcgi serve`` without a pool logs through the same escaping formatter."""
    with rawfcgi.running_server("tests.server_apps:app", "--worker", worker) as srv:
        reply = rawfcgi.roundtrip(srv.address, hostile_params("/raise"))
        assert reply.status == 500, reply
        log = srv.wait_log("deliberate failure before headers")
    assert_no_forged_line(log, "error log")
    assert_all_escaped(one_line(log, "app raised while serving", "app error"), "app error")
    assert f"{CONTINUATION}RuntimeError: deliberate failure before headers" in log, log


ASGI_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    raise ValueError("bad query: " + scope["query_string"].decode("latin-1"))
"""


def test_asgi_app_traceback_cannot_forge_lines(tmp_path: Path) -> None:
    (tmp_path / "hostileasgi.py").write_text(textwrap.dedent(ASGI_APP))
    with rawfcgi.running_server("hostileasgi:app", "--chdir", str(tmp_path)) as srv:
        reply = rawfcgi.roundtrip(srv.address, hostile_params("/raise"))
        assert reply.status == 500, reply
        log = srv.wait_log("ValueError: bad query:")
    assert_no_forged_line(log, "error log")
    assert_all_escaped(one_line(log, "app raised while serving", "app error"), "app error")
    assert f"{CONTINUATION}ValueError: bad query:" in log, log
