"""A web server that goes away must end its own connection, never the worker.

Issue #10: a 24-byte GET_VALUES record followed by a close made the trio worker
raise out of its reader while writing the answer, which ended the whole
process with every request in it. These tests send, for every record the
server answers (by itself or on behalf of a request), that record and then go
away at once, in three ways: a plain close, shutdown() then close, and a
reset (SO_LINGER 0), over a unix socket and over TCP. Each case runs many times
against one real ``python -m fcgi serve`` process, which must still be the same
process afterwards, answer a normal request, and have logged no traceback.

The last test is the issue's pool scenario: a trio pool whose clients abort
slow requests half way through must not lose a worker.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rawfcgi import (
    RecordReader,
    Server,
    connect,
    get_params,
    request_bytes,
    roundtrip,
    running_server,
)
from webservers import Backend, Nginx, backend_env, fcgi_serve_command

from fcgi import records as r

APP = "tests.server_apps:app"
#: Times each case is sent and abandoned, per way of leaving and transport:
#: enough that the server's write regularly races the close.
ROUNDS = 8
#: A record type no FastCGI version defines (answered with UNKNOWN_TYPE).
UNKNOWN_RECORD_TYPE = 42
#: A role no FastCGI version defines (answered with UNKNOWN_ROLE).
UNKNOWN_ROLE = 99


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


#: An ASGI app with the paths the cases use: ASGI deployments get the trio
#: worker whatever --worker says, so they were all exposed.
ASGI_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    if scope["path"] == "/big":
        for _ in range(64):
            await send({"type": "http.response.body", "body": b"b" * 131072, "more_body": True})
    await send({"type": "http.response.body", "body": b"asgi"})
"""


@contextlib.contextmanager
def two_listener_server(
    kind: str, *extra: str, workdir: Path | None = None
) -> Iterator[tuple[Server, str]]:
    """A single-process server on a unix socket (its address) and a TCP port (returned).

    ``kind`` is a worker ("sync", "trio"), or "asgi" for an ASGI app (written
    into ``workdir``) on the trio worker.
    """
    tcp = f"127.0.0.1:{free_tcp_port()}"
    app = APP
    args = ["--read-timeout", "5", "--bind", tcp, *extra]
    if kind == "asgi":
        assert workdir is not None
        (workdir / "peerapp.py").write_text(textwrap.dedent(ASGI_APP))
        app = "peerapp:app"
        args += ["--worker", "trio", "--chdir", str(workdir)]
    else:
        args += ["--worker", kind]
    with running_server(app, *args) as server:
        yield server, tcp


# -- what is sent before going away ----------------------------------------------------


def get_values() -> bytes:
    names = [(b"FCGI_MAX_CONNS", b""), (b"FCGI_MAX_REQS", b""), (b"FCGI_MPXS_CONNS", b"")]
    return r.encode_record(r.GET_VALUES, 0, r.encode_pairs(names))


def unknown_type() -> bytes:
    return r.encode_record(UNKNOWN_RECORD_TYPE, 0, b"\0" * 8)


def unknown_role() -> bytes:
    return r.encode_begin_request(1, UNKNOWN_ROLE, keep_conn=True)


def second_id() -> bytes:
    """Two ids on one connection: the sync worker refuses the second (CANT_MPX_CONN)."""
    return r.encode_begin_request(1, keep_conn=True) + r.encode_begin_request(2, keep_conn=True)


def third_id() -> bytes:
    """Three ids where two are allowed (``--max-reqs 2``): the third is OVERLOADED."""
    return b"".join(r.encode_begin_request(rid, keep_conn=True) for rid in (1, 2, 3))


def malformed_params() -> bytes:
    # A pair whose name length runs past the end of the stream.
    bad = bytes((100, 1)) + b"x"
    return (
        r.encode_begin_request(1, keep_conn=True)
        + r.encode_record(r.PARAMS, 1, bad)
        + r.encode_record(r.PARAMS, 1)
    )


def too_many_params() -> bytes:
    params = {f"HTTP_X_{i}": "v" for i in range(20)} | get_params("/environ")
    return r.encode_begin_request(1, keep_conn=True) + r.encode_params(
        1, {k.encode(): v.encode() for k, v in params.items()}
    )


def abort_unstarted() -> bytes:
    return r.encode_begin_request(1, keep_conn=True) + r.encode_record(r.ABORT_REQUEST, 1)


def rejected_then_aborted() -> bytes:
    return malformed_params() + r.encode_record(r.ABORT_REQUEST, 1)


def large_response() -> bytes:
    return request_bytes(1, get_params("/big"), keep_conn=True)


def normal_request() -> bytes:
    return request_bytes(1, get_params("/environ"), keep_conn=True)


CASES: dict[str, Callable[[], bytes]] = {
    "get_values": get_values,
    "unknown_type": unknown_type,
    "unknown_role": unknown_role,
    "second_id": second_id,
    "third_id": third_id,
    "malformed_params": malformed_params,
    "too_many_params": too_many_params,
    "abort_unstarted": abort_unstarted,
    "rejected_then_aborted": rejected_then_aborted,
    "large_response": large_response,
    "normal_request": normal_request,
}


def leave(sock: socket.socket, how: str) -> None:
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif how == "shutdown":
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def hit_and_run(address: str, payload: bytes, how: str) -> None:
    try:
        sock = connect(address, timeout=10)
    except OSError:
        return  # refused while the server is busy closing others: fine
    with contextlib.suppress(OSError):
        sock.sendall(payload)
    leave(sock, how)


def assert_alive_and_serving(server: Server) -> None:
    assert server.proc.poll() is None, f"the server exited:\n{server.log()}"
    try:
        reply = roundtrip(server.address, get_params("/environ"))
    except OSError as exc:
        raise AssertionError(f"no answer ({exc!r}); server log:\n{server.log()}") from None
    assert reply.status == 200, reply
    assert server.proc.poll() is None
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.parametrize("kind", ["trio", "sync", "asgi"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_peer_gone_after_any_answered_record_ends_only_its_connection(
    kind: str, case: str, tmp_path: Path
) -> None:
    # --max-reqs 2 makes a third id OVERLOADED (trio); the sync worker always
    # takes one id at a time (and refuses the flag, #11). --max-params 10
    # makes too_many_params a 431.
    extra = ("--max-params", "10") + (("--max-reqs", "2") if kind != "sync" else ())
    with two_listener_server(kind, *extra, workdir=tmp_path) as (server, tcp):
        pid = server.proc.pid
        payload = CASES[case]()
        for _ in range(ROUNDS):
            for address in (server.address, tcp):
                for how in ("close", "shutdown", "reset"):
                    hit_and_run(address, payload, how)
        assert_alive_and_serving(server)
        assert server.proc.pid == pid


@pytest.mark.parametrize("worker", ["trio", "sync"])
def test_peer_gone_while_a_request_waits_for_a_refused_one(worker: str) -> None:
    """A refusal sent while another request is in progress (OVERLOADED on trio)."""
    extra = ("--max-reqs", "1") if worker == "trio" else ()  # sync: one id at a time anyway
    with two_listener_server(worker, *extra) as (server, tcp):
        # The holder's request has begun and waits for its PARAMS: on the trio
        # worker it takes the only slot, so every other BEGIN_REQUEST is refused.
        with connect(server.address) as holder:
            holder.sendall(r.encode_begin_request(1, keep_conn=True))
            time.sleep(0.2)
            for _ in range(ROUNDS):
                for address in (server.address, tcp):
                    for how in ("close", "shutdown", "reset"):
                        hit_and_run(address, r.encode_begin_request(1), how)
            # The holder can still finish its request.
            holder.sendall(
                r.encode_params(
                    1, {k.encode(): v.encode() for k, v in get_params("/environ").items()}
                )
                + r.encode_record(r.STDIN, 1)
            )
            if worker == "trio":
                reply = RecordReader(holder).reply(1)
                assert reply.status == 200, reply
        assert_alive_and_serving(server)
        if worker == "trio":
            server.wait_log("OVERLOADED")


# -- the pool scenario ------------------------------------------------------------

SLOW_APP = """
import time

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    def body():
        for _ in range(20):
            yield b"x" * 4096
            time.sleep(0.01)
    return body()
"""

#: Clients aborting slow requests at once, and how long they keep at it.
ABORTERS = 16
HAMMER_SECONDS = 4.0


def test_trio_pool_survives_clients_aborting_slow_requests(tmp_path: Path) -> None:
    from test_pool_support import PoolMaster

    (tmp_path / "slowapp.py").write_text(textwrap.dedent(SLOW_APP))
    args = ["--workers", "2", "--worker", "trio", "--max-reqs", "2"]
    with PoolMaster(tmp_path, args, app="slowapp:app") as master:
        master.wait_ready(2)
        before = master.worker_pids()
        stop = time.monotonic() + HAMMER_SECONDS
        sent = [0]

        def abort_slow_requests(index: int) -> None:
            payload = request_bytes(1, get_params("/slow"), keep_conn=True)
            ways = ("close", "shutdown", "reset")
            while time.monotonic() < stop:
                count = sent[0]
                try:
                    sock = connect(master.address, timeout=5)
                    sock.sendall(payload)
                    if count % 2:
                        # Gone once the answer has begun (or was refused) ...
                        with contextlib.suppress(OSError):
                            sock.recv(100)
                    # ... or at once: a busy worker then refuses (OVERLOADED)
                    # a peer that is no longer there.
                except OSError:
                    continue
                leave(sock, ways[count % len(ways)])
                sent[0] += 1

        threads = [threading.Thread(target=abort_slow_requests, args=(i,)) for i in range(ABORTERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HAMMER_SECONDS + 30)
        assert sent[0] > ABORTERS, "the clients never got a request in"
        assert master.request("/").status == 200
        log = master.log()
        assert "exited on signal" not in log, log
        assert "exited with code" not in log, log
        assert "Traceback" not in log, log
        assert master.worker_pids() == before, log


#: HTTP clients aborting through nginx at once (the issue used 32).
HTTP_ABORTERS = 32


def test_trio_pool_behind_nginx_survives_http_clients_aborting(
    tmp_path: Path, start_nginx: Callable[[str, Backend], Nginx]
) -> None:
    """The issue's setup: nginx, a trio pool with --max-reqs 2, clients giving up."""
    (tmp_path / "slowapp.py").write_text(textwrap.dedent(SLOW_APP))
    bind = f"unix:{tmp_path}/pool.sock"
    extra = ["--workers", "2", "--worker", "trio", "--max-reqs", "2", "--user", "root"]
    extra += ["--chdir", str(tmp_path)]
    backend = Backend(
        command=fcgi_serve_command("slowapp:app", bind, extra),
        bind=bind,
        workdir=tmp_path,
        env=backend_env(),
    ).start()
    try:
        nginx = start_nginx("fcgi-new-connection.conf", backend)
        stop = time.monotonic() + HAMMER_SECONDS
        sent = [0]

        def abort_through_nginx() -> None:
            request = b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n"
            while time.monotonic() < stop:
                count = sent[0]
                try:
                    sock = socket.create_connection(("127.0.0.1", nginx.port), timeout=5)
                    sock.sendall(request)
                    if count % 2:
                        with contextlib.suppress(OSError):
                            sock.recv(100)
                except OSError:
                    continue
                leave(sock, ("close", "reset")[count % 2])
                sent[0] += 1

        threads = [threading.Thread(target=abort_through_nginx) for _ in range(HTTP_ABORTERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HAMMER_SECONDS + 30)
        assert sent[0] > HTTP_ABORTERS, "the clients never got a request in"
        log = backend.stderr_text()
        assert "exited on signal" not in log, log[-5000:]
        assert "exited with code" not in log, log[-5000:]
        assert "Traceback" not in log, log[-5000:]
    finally:
        backend.stop()


# -- accept() failures -----------------------------------------------------------------------


def test_a_listener_that_cannot_accept_does_not_end_the_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """accept() failing on one listener (here EINVAL: it is not listening) ends only that."""
    from server_apps import app

    from fcgi.options import ServerOptions
    from fcgi.trio_worker import TrioWorker

    good = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    good.bind(str(tmp_path / "good.sock"))
    good.listen(16)
    broken = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    broken.bind(str(tmp_path / "broken.sock"))  # bound, never listening
    worker = TrioWorker([good, broken], app, ServerOptions())
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.serve_forever()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        reply = roundtrip(f"unix:{tmp_path / 'good.sock'}", get_params("/environ"))
        assert reply.status == 200, reply
        assert thread.is_alive() and not errors, errors
        assert "no longer accepting" in caplog.text
    finally:
        worker.stop()
        thread.join(30)
        worker.close()
        good.close()
        broken.close()
    assert not thread.is_alive() and not errors, errors
