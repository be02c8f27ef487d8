"""Everything observable of the protocol core and the WSGI adapter, as text.

tests/test_compiled.py runs these twice on the same generated input: in its
own process, on the modules setup.py compiled with mypyc, and in a child
started with ``FCGI_PURE_PYTHON=1``, on their source. The two traces must be
the same string: same events, same bytes for the web server, same errors.

Run as a script (``python core_trace.py``), this is that child: it reads one
JSON case per line and writes its trace back as one line of JSON.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

from fcgi import wsgi
from fcgi.connection import Limits, ServerConnection
from fcgi.errors import ProtocolError


def feed_and_answer(
    conn: ServerConnection, data: bytes, splits: list[int], body: bytes = b"", app_status: int = 0
) -> list[object]:
    """Feed ``data`` in pieces, answering each request as a driver would; the trace.

    Everything observable goes in: the events, the bytes for the web server,
    ``should_close``, and the error the stream ends in, if any. Answering
    every request that got its PARAMS lets the next head on the connection
    be read with none active.
    """
    trace: list[object] = []
    try:
        for a, b in zip([0, *splits], [*splits, len(data)], strict=True):
            trace.append(conn.feed(memoryview(data)[a:b]))
            trace.append(conn.data_to_send())
            trace.append(conn.should_close)
            for rid in list(conn.active_requests):
                conn.send_stdout(rid, b"Status: 200 OK\r\n\r\n" + body)
                conn.send_stderr(rid, body[:100])
                conn.end_request(rid, app_status)
            trace.append(conn.data_to_send())
        conn.feed_eof()
    except ProtocolError as exc:  # the peer's fault; any other error fails the test
        trace.append((type(exc).__name__, str(exc)))
    return trace


def trace_connection(case: dict[str, Any]) -> str:
    """:func:`feed_and_answer` on a generated case, as text."""
    fields = dict(case["limits"])
    fields["roles"] = tuple(fields["roles"])
    conn = ServerConnection(Limits(**fields))
    data = bytes.fromhex(case["data"])
    body = bytes.fromhex(case["body"])
    return repr(feed_and_answer(conn, data, case["splits"], body, case["app_status"]))


def _app(spec: dict[str, Any]) -> wsgi.WSGIApp:
    """A WSGI app that does what ``spec`` says, in the order a real one could."""
    make = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[spec["chunk_type"]]
    chunks: list[Any] = [make(bytes.fromhex(c)) for c in spec["chunks"]]

    def app(environ: wsgi.WSGIEnviron, start_response: wsgi.StartResponse) -> Any:
        if spec["fail"] == "before":
            raise RuntimeError("the app failed before start_response")
        if spec["fail"] == "handled":
            # An app's own error page, with exc_info as a list (as some pass it).
            try:
                raise RuntimeError("the app's own error")
            except RuntimeError:
                start_response("500 Oops", [("Content-Type", "text/plain")], list(sys.exc_info()))
            return [b"handled"]
        write = start_response(spec["status"], [tuple(h) for h in spec["headers"]])
        if spec["write"]:
            write(chunks[0] if chunks else b"")
        if spec["fail"] == "after":
            raise RuntimeError("the app failed after start_response")
        if spec["shape"] == "list":
            return list(chunks)

        def gen() -> Iterator[bytes]:
            yield from chunks
            if spec["fail"] == "streaming":
                raise RuntimeError("the app failed while streaming")

        return gen()

    return app


def trace_respond(case: dict[str, Any]) -> str:
    """Run a generated app through :func:`fcgi.wsgi.respond`; what it sent and returned."""
    sent: list[tuple[bytes, bool]] = []
    environ = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/", "wsgi.errors": wsgi.ErrorStream()}

    def send(data: bytes, flush: bool) -> None:
        sent.append((bytes(data), flush))

    logged = _Logged()
    log = logging.getLogger("fcgi.wsgi")
    log.addHandler(logged)
    try:
        outcome: object = wsgi.respond(_app(case), environ, send, None)
    except Exception as exc:
        outcome = (type(exc).__name__, str(exc))
    finally:
        log.removeHandler(logged)
    return repr((outcome, sent, logged.errors))


class _Logged(logging.Handler):
    """The last line of each line respond() logs: for an app's failure, its exception.

    The frames above it differ (compiled code shows fewer); that line may not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.errors.append(str(record.getMessage()).rstrip().rsplit("\n", 1)[-1])


def trace_scope(case: dict[str, Any]) -> str:
    """The ASGI scope :func:`fcgi.asgi.build_scope` makes of generated PARAMS."""
    from fcgi.asgi import build_scope

    try:
        outcome: object = build_scope(case["params"], mount=case["mount"])
    except Exception as exc:
        outcome = (type(exc).__name__, str(exc))
    return repr(outcome)


TRACES = {"connection": trace_connection, "respond": trace_respond, "scope": trace_scope}


def main() -> None:
    # respond() logs app failures to its own handler (see _Logged); no output.
    logging.getLogger("fcgi").propagate = False
    for line in sys.stdin:
        kind, case = json.loads(line)
        print(json.dumps(TRACES[kind](case)), flush=True)


if __name__ == "__main__":
    main()
