"""Issue #10 items 9 and 10: who can read the status page, what it shows, what it counts.

Item 9: the shipped nginx sites pass ``/status`` only to this machine (a
client from another address, played here by the loopback address 127.0.0.2,
gets nginx's 403, however it spells the path); ``?full`` shows request URIs
without their query strings unless ``status_full_query`` is on; and
``status_listen`` admits only ``listen_allowed_clients``.

Item 10: a request killed by ``request_terminate_timeout`` is counted
("terminated requests") in every status format, and nginx, which gets EOF
without FCGI_END_REQUEST, answers 502 and logs why.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import rawfcgi
from test_pool_support import PoolMaster, wait_for
from webservers import Backend, HTTPResponse, Nginx, free_port

HERE = Path(__file__).resolve().parent

#: A second loopback address (all of 127/8 is loopback on Linux): the
#: "outsider" source address for the allow/deny rules, which allow 127.0.0.1.
OUTSIDER = "127.0.0.2"
#: What another user's query string may hold; must not reach the status page.
SECRET = "session=s3cr3t-t0ken"

SLEEPY_APP = """
import time

def app(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(float(environ.get("HTTP_X_SLEEP", "1")))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def sleepy_pool(tmp_path: Path, *args: str) -> PoolMaster:
    (tmp_path / "sleepyapp.py").write_text(textwrap.dedent(SLEEPY_APP))
    return PoolMaster(tmp_path, ["--workers", "2", *args], app="sleepyapp:app")


def sleep_params(seconds: float, query: str = SECRET) -> dict[str, str]:
    params = rawfcgi.get_params("/sleep", query)
    params["HTTP_X_SLEEP"] = str(seconds)
    return params


def send(address: str, params: dict[str, str]) -> rawfcgi.Reply | None:
    """The reply, or None when the worker went away before END_REQUEST."""
    try:
        with rawfcgi.connect(address, timeout=120) as sock:
            sock.sendall(rawfcgi.request_bytes(1, params))
            return rawfcgi.RecordReader(sock).reply(1)
    except (ConnectionError, OSError):
        return None


def in_thread(call: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def status_page(address: str, query: str) -> str:
    reply = rawfcgi.roundtrip(address, rawfcgi.get_params("/status", query))
    assert reply.status == 200, reply
    return reply.body.decode("utf-8")


def pages(address: str) -> dict[str, str]:
    """The ?full page in every format."""
    return {
        fmt: status_page(address, f"{fmt}&full" if fmt else "full")
        for fmt in ("", "json", "xml", "html", "openmetrics")
    }


# -- item 9: ?full and query strings ----------------------------------------------


@pytest.mark.parametrize("full_query", [False, True])
def test_full_status_shows_query_strings_only_when_asked(tmp_path: Path, full_query: bool) -> None:
    args = ["--status-full-query"] if full_query else []
    with sleepy_pool(tmp_path, *args) as pool:
        pool.wait_ready(2)
        slow = in_thread(lambda: send(pool.address, sleep_params(4)))
        wait_for(
            lambda: "/sleep" in status_page(pool.address, "full"),
            what="the slow request on the status page",
        )
        for fmt, text in pages(pool.address).items():
            if fmt != "openmetrics":  # no URIs there
                assert "/sleep" in text, (fmt, text)
            assert (SECRET in text) == (full_query and fmt != "openmetrics"), (fmt, text)
        slow.join(60)


# -- item 9: status_listen and allowed clients -------------------------------------


def outsider_roundtrip(port: int, source: str) -> rawfcgi.Reply | None:
    """/status from ``source``; None when the connection is closed unanswered."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(30)
    try:
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(rawfcgi.request_bytes(1, rawfcgi.get_params("/status", "full")))
        return rawfcgi.RecordReader(sock).reply(1)
    except (ConnectionError, OSError):
        return None
    finally:
        sock.close()


def test_status_listen_admits_only_allowed_clients(tmp_path: Path) -> None:
    port = free_port()
    with sleepy_pool(
        tmp_path, "--status-listen", f"127.0.0.1:{port}", "--allowed-clients", OUTSIDER
    ) as pool:
        pool.wait_ready(2)
        allowed = outsider_roundtrip(port, OUTSIDER)
        assert allowed is not None and allowed.status == 200, allowed
        assert b"idle processes:" in allowed.body
        assert outsider_roundtrip(port, "127.0.0.1") is None
        pool.wait_log("status_listen: refused ('127.0.0.1'")


# -- item 9: the shipped nginx site -----------------------------------------------


def http_get(nginx: Nginx, target: str, source: str) -> HTTPResponse:
    conn = http.client.HTTPConnection(
        "127.0.0.1", nginx.port, timeout=60, source_address=(source, 0)
    )
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return HTTPResponse(resp.status, resp.reason, resp.getheaders(), resp.read())
    finally:
        conn.close()


@pytest.fixture
def pool_behind_nginx(
    start_backend: Callable[..., Backend], start_nginx: Callable[..., Nginx]
) -> Iterator[Nginx]:
    backend = start_backend(
        "unix", "apps:app", ["--workers", "1", "--user", "root", "--status-path", "/status"]
    )
    yield start_nginx("fcgi-new-connection.conf", backend)


def test_shipped_nginx_site_keeps_the_status_page_local(pool_behind_nginx: Nginx) -> None:
    nginx = pool_behind_nginx
    local = http_get(nginx, "/status?full", "127.0.0.1")
    assert local.status == 200 and b"idle processes:" in local.body, nginx.explain(local)
    for target in ("/status", "/status?full", "//status?full", "/%73tatus?json", "/./status"):
        response = http_get(nginx, target, OUTSIDER)
        assert response.status == 403, f"{target}\n{nginx.explain(response)}"
        assert b"processes" not in response.body
    # The rest of the site is open to everyone.
    echo = http_get(nginx, "/echo", OUTSIDER)
    assert echo.status == 200, nginx.explain(echo)
    assert re.search(r"access forbidden by rule, client: 127\.0\.0\.2", nginx.error_log())


# -- item 10: terminated requests -------------------------------------------------


def test_terminated_requests_are_counted_in_every_format(tmp_path: Path) -> None:
    with sleepy_pool(tmp_path, "--request-terminate-timeout", "1") as pool:
        pool.wait_ready(2)
        assert send(pool.address, sleep_params(60)) is None
        pool.wait_log("execution timed out")
        found = pages(pool.address)
        assert json.loads(found["json"])["terminated requests"] == 1, found["json"]
        assert re.search(r"^terminated requests: +1$", found[""], re.M), found[""]
        assert "<terminated-requests>1</terminated-requests>" in found["xml"], found["xml"]
        assert "<th>terminated requests</th><td>1</td>" in found["html"], found["html"]
        metric = 'fcgi_terminated_requests_total{pool="www"} 1'
        assert metric in found["openmetrics"], found["openmetrics"]


#: What nginx (1.22) logs at level "error" when the worker is killed before
#: the response header: the connection closed with no FCGI_END_REQUEST. The
#: client gets a 502.
NGINX_BEFORE_HEADER = (
    "upstream prematurely closed connection while reading response header from upstream"
)


def test_nginx_answers_502_and_logs_a_terminated_request(
    start_backend: Callable[..., Backend], start_nginx: Callable[..., Nginx]
) -> None:
    args = ["--chdir", str(HERE), "--workers", "1", "--user", "root"]
    backend = start_backend(
        "unix", "status_sleep_app:app", [*args, "--request-terminate-timeout", "1"]
    )
    nginx = start_nginx("fcgi-new-connection.conf", backend)
    response = http_get(nginx, "/sleep-forever", "127.0.0.1")
    assert response.status == 502, nginx.explain(response)
    assert NGINX_BEFORE_HEADER in nginx.error_log(), nginx.explain(response)

    # Killed after its header went out: nginx (1.22, fastcgi_buffering on)
    # ends the chunked body as if it were complete and logs nothing at all;
    # the client sees a 200 with a short body. The master's warning and the
    # "terminated requests" counter are the only trace.
    cut = http_get(nginx, "/start-then-sleep", "127.0.0.1")
    assert cut.status == 200 and cut.body == b"first piece\n", nginx.explain(cut)
    wait_for(
        lambda: "uri /start-then-sleep: execution timed out" in backend.stderr_text(),
        what="the master's warning",
    )


def test_behind_the_kept_connection_site_a_terminated_answer_is_visibly_cut(
    start_backend: Callable[..., Backend], start_nginx: Callable[..., Nginx]
) -> None:
    """deploy/nginx/fcgi.conf (fastcgi_keep_conn on): the client can tell the body is cut.

    With kept connections nginx relies on FCGI_END_REQUEST to end a body: a
    worker killed after the header went out leaves the chunked body without
    its last chunk, so the client sees an incomplete response rather than
    the complete-looking short 200 of fcgi-new-connection.conf above.
    """
    args = ["--chdir", str(HERE), "--workers", "1", "--user", "root"]
    backend = start_backend(
        "unix", "status_sleep_app:app", [*args, "--request-terminate-timeout", "1"]
    )
    nginx = start_nginx("fcgi.conf", backend)
    response = http_get(nginx, "/sleep-forever", "127.0.0.1")
    assert response.status == 502, nginx.explain(response)
    with pytest.raises(http.client.IncompleteRead) as cut:
        http_get(nginx, "/start-then-sleep", "127.0.0.1")
    assert cut.value.partial == b"first piece\n"
    assert "upstream prematurely closed connection" in nginx.error_log(), nginx.error_log()
    # The pool goes on: the next request is answered whole.
    assert http_get(nginx, "/", "127.0.0.1").body == b"ok\n"
