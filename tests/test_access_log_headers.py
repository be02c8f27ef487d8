"""Issue #11: the access log's ``%{NAME}o`` prints a response header, as PHP-FPM's does.

Every mode that writes an access log is driven as an operator runs it:
``python -m fcgi serve`` as a pool of one worker and as a single process,
with the sync worker, the trio worker running a WSGI app, and the trio worker
running an ASGI app, answered over a real unix socket. The log is read as a
file. What is checked, in each:

- a header by name, in any case; ``-`` for a header the response lacks;
  several headers of one name joined with ``, ``;
- the headers fcgi sent of its own: the Content-Length of a response known
  whole, the 500 answered for an app that raised, the ping and status pages;
- a header value holding control characters (a CR or LF cannot get there:
  WSGI and ASGI refuse them) writes one line, escaped, and cannot end the
  field's quotes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fcgi.client import FastCGIClient, build_params
from fcgi.errors import ConfigError
from fcgi.pool.access_log import compile_format, header_values

ROOT = Path(__file__).resolve().parent.parent

#: Fields between bars: a header value may hold spaces ("one, two").
FORMAT = '%r|%s|%{Content-Type}o|%{X-Missing}o|%{X-Multi}o|%{content-LENGTH}o|"%{X-Raw}o"'

#: A header value an app might copy from a client: a SOH, a NEL (U+0085, a
#: line break to str.splitlines and to some log viewers), a quote that would
#: end the quoted field, a backslash, a latin-1 letter, and then what a forged
#: line would say.
RAW = 'a\x01b\x85127.0.0.1 - - "GET /admin" 200\\x0A \xe9'
#: How the log shows it: each control, the quote and the backslash as \xHH.
RAW_LOGGED = r"a\x01b\x85127.0.0.1 - - \x22GET /admin\x22 200\x5Cx0A " + "\xe9"

APPS = """
def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/fail":
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("the app fails on purpose")
    headers = [("Content-Type", "text/plain; charset=utf-8")]
    if path == "/multi":
        headers += [("X-Multi", "one"), ("x-multi", "two")]
    elif path == "/raw":
        headers.append(("X-Raw", RAW))
    start_response("201 Created", headers)
    return [b"hello"]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/fail":
        raise RuntimeError("the app fails on purpose")
    headers = [(b"Content-Type", b"text/plain; charset=utf-8")]
    if path == "/multi":
        headers += [(b"X-Multi", b"one"), (b"x-multi", b"two")]
    elif path == "/raw":
        headers.append((b"X-Raw", RAW.encode("latin-1")))
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello"})
"""

#: (worker, app) for each driver and interface.
APPS_BY_DRIVER = [("sync", "hdrapp:app"), ("trio", "hdrapp:app"), ("trio", "hdrapp:asgi")]


@contextmanager
def serving(tmp_path: Path, worker: str, app: str, pool: bool) -> Iterator[str]:
    """``fcgi serve`` with the access log in FORMAT; yields its address."""
    (tmp_path / "hdrapp.py").write_text(f"RAW = {RAW!r}\n" + textwrap.dedent(APPS))
    sock = tmp_path / "app.sock"
    command = [sys.executable, "-m", "fcgi", "serve", app, "--bind", f"unix:{sock}"]
    command += ["--worker", worker, "--access-log", str(tmp_path / "access.log")]
    command += ["--access-format", FORMAT, "--ping-path", "/ping", "--status-path", "/status"]
    if pool:
        command += ["--workers", "1", "--user", "root"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen(
            command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(sock))
                break
            except OSError:
                assert time.monotonic() < deadline, "the server never listened"
                time.sleep(0.05)
        yield f"unix:{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def logged(path: Path, count: int) -> list[list[str]]:
    """The first ``count`` lines of the access log, split at the bars, once written."""
    deadline = time.monotonic() + 30
    while True:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        # splitlines: a NEL or U+2028 let through would show as a line of its own.
        lines = text.splitlines()
        if len(lines) >= count:
            return [line.split("|") for line in lines]
        assert time.monotonic() < deadline, f"{len(lines)} of {count} lines:\n{text}"
        time.sleep(0.05)


@pytest.mark.parametrize("pool", [True, False], ids=["pool", "single"])
@pytest.mark.parametrize(("worker", "app"), APPS_BY_DRIVER, ids=["sync", "trio", "trio-asgi"])
def test_response_headers_in_the_access_log(
    tmp_path: Path, worker: str, app: str, pool: bool
) -> None:
    targets = ["/plain", "/multi", "/raw", "/fail", "/ping", "/status"]
    with serving(tmp_path, worker, app, pool) as address:
        with FastCGIClient(address, timeout=60) as client:
            replies = [client.request(build_params(target)) for target in targets]
        assert [r.status for r in replies] == [201, 201, 201, 500, 200, 200], replies
        lines = logged(tmp_path / "access.log", len(targets))
    assert len(lines) == len(targets), lines  # one line per request, nothing forged
    by_path = {fields[0]: fields[1:] for fields in lines}
    assert all(len(fields) == 6 for fields in by_path.values()), lines
    ctype = "text/plain; charset=utf-8"

    # The app's headers; Content-Length is fcgi's own, for a body known whole.
    assert by_path["/plain"] == ["201", ctype, "-", "-", "5", '"-"'], lines
    assert by_path["/multi"] == ["201", ctype, "-", "one, two", "5", '"-"'], lines
    assert by_path["/raw"] == ["201", ctype, "-", "-", "5", f'"{RAW_LOGGED}"'], lines
    # What the web server got in place of the app's failed answer.
    status, fail_type, _, _, fail_length, _ = by_path["/fail"]
    assert (status, fail_type) == ("500", "text/html"), lines
    assert int(fail_length) > 0, lines
    # The pages fcgi answers without the app.
    assert by_path["/ping"][:4] == ["200", ctype, "-", "-"], lines
    status_page = by_path["/status"]
    assert status_page[0] == "200" and status_page[1].startswith("text/plain"), lines


def test_header_names_are_checked_when_the_format_is() -> None:
    """A code that could never match is refused before any worker starts."""
    with pytest.raises(ConfigError, match="name the header"):
        compile_format("%{}o")
    with pytest.raises(ConfigError, match="is not a header name"):
        compile_format("%{Content Type}o")
    with pytest.raises(ConfigError, match="is not a header name"):
        compile_format("%{X-A:}o")


def test_header_values_read_only_the_head() -> None:
    """A body that happens to look like a header is not one."""
    response = b"Status: 200 OK\r\nX-A: 1\r\nx-a:2 \r\n\r\nX-A: body\r\n"
    assert header_values(response, "X-A") == ["1", "2"]
    assert header_values(response, "Status") == ["200 OK"]
    assert header_values(None, "X-A") == []
    assert header_values(b"Status: 200 OK\r\n\r\n", "X-A") == []
