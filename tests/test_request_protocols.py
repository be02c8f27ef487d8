"""``fcgi request`` over uwsgi and SCGI: a health check for every listener ``fcgi serve`` opens.

The client's encoders are held to the server's decoders (:mod:`fcgi.uwsgi`,
:mod:`fcgi.scgi`) on generated requests; then the real command talks to a
real ``fcgi serve`` listening on both protocols, as an operator's health
check or a debugging session would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rawfcgi import ROOT
from test_pool_support import wait_for
from webservers import free_port

from fcgi import events as ev
from fcgi.one_request_client import encode_scgi, encode_uwsgi
from fcgi.scgi import ScgiConnection
from fcgi.uwsgi import UwsgiConnection

# -- the encoders against the server's decoders -------------------------------------------

_names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20
).filter(lambda name: name not in ("CONTENT_LENGTH", "SCGI"))
_values = st.binary(max_size=40).filter(lambda value: b"\0" not in value)


def _decoded(core: UwsgiConnection | ScgiConnection, packet: bytes) -> tuple[dict[str, str], bytes]:
    params: dict[str, str] = {}
    body = b""
    for event in core.feed(packet):
        if isinstance(event, ev.Params):
            params = dict(event.params)
        elif isinstance(event, ev.StdinData):
            body += event.data
    return params, body


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_names, _values, max_size=12), st.binary(max_size=300))
def test_what_the_client_encodes_the_server_decodes(params: dict[str, bytes], body: bytes) -> None:
    sent = {**params, "CONTENT_LENGTH": str(len(body))}
    expected = {name: value.decode("latin-1") for name, value in params.items()}
    expected["CONTENT_LENGTH"] = str(len(body))
    got, got_body = _decoded(UwsgiConnection(), encode_uwsgi(sent, body))
    assert (got, got_body) == (expected, body)
    got, got_body = _decoded(ScgiConnection(), encode_scgi(params, body))
    assert (got, got_body) == ({**expected, "SCGI": "1"}, body)


def test_what_the_protocols_cannot_carry_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="NUL"):
        encode_scgi({"HTTP_X": b"a\0b"})
    with pytest.raises(ValueError, match="65535"):
        encode_uwsgi({"HTTP_X": b"x" * 70000})
    with pytest.raises(ValueError, match="vars block"):
        encode_uwsgi({f"HTTP_X{i}": b"x" * 30000 for i in range(3)})


# -- the command against a real server ------------------------------------------------------

_APP = """\
import os

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/missing":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such page\\n"]
    if path == "/broken":
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"oops\\n"]
    body = environ["wsgi.input"].read()
    seen = environ.get("HTTP_X_SEEN", "-")
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Seen", seen)])
    return [b"%s %s %s body=%s" % (environ["REQUEST_METHOD"].encode(), path.encode(),
                                   environ["QUERY_STRING"].encode(), body)]
"""


@pytest.fixture(scope="module")
def listeners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One ``fcgi serve`` with a uwsgi, an SCGI (over TCP) and a FastCGI listener."""
    tmp = tmp_path_factory.mktemp("protocols")
    (tmp / "protoapp.py").write_text(_APP)
    addresses = {
        "uwsgi": f"uwsgi:unix:{tmp}/u.sock",
        "scgi": f"scgi:127.0.0.1:{free_port()}",
        "fastcgi": f"unix:{tmp}/f.sock",
    }
    log = (tmp / "serve.log").open("wb")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{tmp}")
    binds = [arg for address in addresses.values() for arg in ("--bind", address)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fcgi", "serve", "protoapp:app", *binds],
        cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        wait_for(lambda: b"serving on" in (tmp / "serve.log").read_bytes(), timeout=30,
                 what="fcgi serve to listen")  # fmt: skip
        yield addresses
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def fcgi_request(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "fcgi", "request", *args],
        input=stdin, capture_output=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.parametrize("protocol", ["uwsgi", "scgi", "fastcgi"])
def test_one_command_checks_every_kind_of_listener(
    listeners: dict[str, str], protocol: str
) -> None:
    address = listeners[protocol]
    done = fcgi_request(address, "/hello?x=1", "-i", "-H", "X-Seen: yes")
    assert done.returncode == 0, done
    assert done.stdout.startswith(b"HTTP/1.1 200 OK\r\n"), done.stdout
    assert b"\r\nX-Seen: yes\r\n" in done.stdout, done.stdout
    assert done.stdout.endswith(b"\r\n\r\nGET /hello x=1 body="), done.stdout
    # A body, from standard input, reaches the app whole.
    done = fcgi_request(address, "/up", "-d", "@-", stdin=b"payload " * 5000)
    assert done.returncode == 0, done
    assert done.stdout == b"POST /up  body=" + b"payload " * 5000


@pytest.mark.parametrize("protocol", ["uwsgi", "scgi"])
def test_a_health_check_fails_as_it_does_over_fastcgi(
    listeners: dict[str, str], protocol: str
) -> None:
    address = listeners[protocol]
    done = fcgi_request(address, "/missing", "--fail")
    assert done.returncode == 22 and done.stdout == b"", done
    assert b"the backend answered HTTP/1.1 404 Not Found" in done.stderr, done.stderr
    done = fcgi_request(address, "/broken")
    assert done.returncode == 1 and done.stdout == b"oops\n", done


def test_what_cannot_be_asked_is_a_usage_error(listeners: dict[str, str]) -> None:
    done = fcgi_request(listeners["scgi"], "/", "--role", "authorizer")
    assert done.returncode == 2, done
    assert b"--role authorizer: scgi requests have no roles" in done.stderr, done.stderr
    done = fcgi_request("http://127.0.0.1:1/", "/")
    assert done.returncode == 2 and b"unknown protocol 'http'" in done.stderr, done
    done = fcgi_request("uwsgi:no-port-here", "/")
    assert done.returncode == 2 and b"expected unix:/path" in done.stderr, done


def test_a_listener_of_another_protocol_is_a_failed_check(
    listeners: dict[str, str], tmp_path: Path
) -> None:
    # uwsgi bytes to the SCGI listener: the server refuses them, and the
    # check fails with a 5xx, as nginx would answer 502.
    scgi_address = listeners["scgi"].removeprefix("scgi:")
    done = fcgi_request(f"uwsgi:{scgi_address}", "/hello")
    assert done.returncode == 1, done
    assert b"fcgi request: malformed uwsgi response" in done.stderr, done.stderr
    done = fcgi_request(f"scgi:unix:{tmp_path}/nothing.sock", "/")
    assert done.returncode == 2 and b"cannot connect" in done.stderr, done
