"""The single-process server over real sockets: good requests, bad input, limits.

Every bad-input case checks three things: the peer gets a clear answer or a
clean close, the log says what happened, and the next good request is served.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from rawfcgi import (
    ROOT,
    RecordReader,
    Server,
    connect,
    get_params,
    request_bytes,
    roundtrip,
    running_server,
)

from fcgi import records as r

APP = "tests.server_apps:app"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server(APP, "--read-timeout", "2", "--max-params", "50") as srv:
        yield srv


def assert_serves(server: Server) -> None:
    reply = roundtrip(server.address, get_params("/environ", "x=1"))
    assert reply.status == 200, reply
    assert json.loads(reply.body)["QUERY_STRING"] == "x=1"


# -- good requests ------------------------------------------------------------


def test_get_with_query_and_environ(server: Server) -> None:
    reply = roundtrip(server.address, get_params("/environ", "a=1&b=%C3%A9"))
    env = json.loads(reply.body)
    assert reply.protocol_status == r.ProtocolStatus.REQUEST_COMPLETE
    assert env["QUERY_STRING"] == "a=1&b=%C3%A9"
    assert env["PATH_INFO"] == "/environ"
    assert env["SCRIPT_NAME"] == ""
    assert env["wsgi.url_scheme"] == "http"


def test_https_param_sets_url_scheme(server: Server) -> None:
    params = get_params("/environ") | {"HTTPS": "on"}
    assert json.loads(roundtrip(server.address, params).body)["wsgi.url_scheme"] == "https"


def test_post_body_streams_to_app(server: Server) -> None:
    body = os.urandom(300_000)
    reply = roundtrip(server.address, get_params("/echo", method="POST"), body)
    import hashlib

    assert reply.body.decode() == f"{len(body)} {hashlib.sha256(body).hexdigest()}"


def test_body_shorter_than_declared_gets_eof(server: Server) -> None:
    params = get_params("/echo", method="POST") | {"CONTENT_LENGTH": "1000"}
    reply = roundtrip(server.address, params, b"only ten b")
    assert reply.body.startswith(b"10 ")


def test_app_cannot_read_past_content_length(server: Server) -> None:
    params = get_params("/echo", method="POST") | {"CONTENT_LENGTH": "4"}
    reply = roundtrip(server.address, params, b"abcdefgh")
    assert reply.body.startswith(b"4 ")


def test_readline_iteration(server: Server) -> None:
    reply = roundtrip(server.address, get_params("/lines", method="POST"), b"one\ntwo\nthree")
    assert json.loads(reply.body) == ["one\n", "two\n", "three"]


def _trickle(sock: socket.socket, wire: bytes, sizes: list[int]) -> None:
    """Send ``wire`` in pieces of the given sizes, each after a pause: one read per piece."""
    pos = 0
    for size in sizes:
        sock.sendall(wire[pos : pos + size])
        pos += size
        time.sleep(0.02)
    sock.sendall(wire[pos:])


@pytest.mark.parametrize("path", ["/echo", "/lines"])
def test_a_body_arriving_in_odd_pieces_reaches_the_app_whole(server: Server, path: str) -> None:
    """Records of uneven sizes, split across reads anywhere: the app reads bytes, all of them.

    The body comes after the head, in reads of its own, so the worker takes it
    in as it would a large upload (fresh bytes handed to the core, pieces
    passed on as views); wsgiref's validator, around the app, checks that
    every read() and readline() gives the app bytes.
    """
    import hashlib

    body = b"".join(b"line %d %s\n" % (i, b"%x" % (i * 7919) * (i % 13)) for i in range(9000))
    params = {k.encode(): v.encode() for k, v in get_params(path, method="POST").items()}
    params[b"CONTENT_LENGTH"] = str(len(body)).encode()
    wire = r.encode_begin_request(1, r.Role.RESPONDER, False)
    wire += r.encode_record(r.PARAMS, 1, r.encode_pairs(list(params.items())))
    wire += r.encode_record(r.PARAMS, 1, b"")
    head = len(wire)
    pos = 0
    for i, size in enumerate(itertools.cycle([1, 7000, 65535, 333, 20000, 4096])):
        if pos >= len(body):
            break
        piece = body[pos : pos + size]
        pos += size
        if i % 2:
            wire += r.encode_record(r.STDIN, 1, piece)
        else:  # five bytes of padding where none are needed: allowed, and skipped
            wire += r.HEADER.pack(1, r.STDIN, 1, len(piece), 5) + piece + b"\0" * 5
    wire += r.encode_record(r.STDIN, 1, b"")
    with connect(server.address) as sock:
        _trickle(sock, wire, [head, 3, 10_000, 50_001, 5, 100_000, 77_777])
        reply = RecordReader(sock).reply(1)
    assert reply.status == 200, reply
    if path == "/echo":
        assert reply.body.decode() == f"{len(body)} {hashlib.sha256(body).hexdigest()}"
    else:
        assert "".join(json.loads(reply.body)).encode() == body


def test_streamed_response_arrives_in_order(server: Server) -> None:
    reply = roundtrip(server.address, get_params("/stream"))
    assert reply.body == b"".join(f"chunk {i}\n".encode() for i in range(5))
    stdout = [rec for rec in reply.records if rec[0] == r.STDOUT]
    assert stdout[-1][2] == b"", "STDOUT must end with an empty record"
    assert reply.records[-1][0] == r.END_REQUEST


def test_app_exception_is_a_500_without_traceback(server: Server) -> None:
    reply = roundtrip(server.address, get_params("/raise"))
    assert reply.status == 500
    assert b"Traceback" not in reply.stdout
    assert b"deliberate failure" in reply.stderr, "traceback goes to FCGI_STDERR"
    assert reply.app_status != 0
    server.wait_log("deliberate failure before headers")
    assert_serves(server)


def test_app_exception_after_headers_ends_response(server: Server) -> None:
    reply = roundtrip(server.address, get_params("/raise-late"))
    assert reply.status == 200
    assert reply.body == b"partial "
    assert reply.app_status != 0
    server.wait_log("deliberate failure after headers")
    assert_serves(server)


def test_wsgi_errors_reach_log_and_stderr(server: Server) -> None:
    reply = roundtrip(server.address, get_params("/stderr"))
    assert reply.body == b"logged"
    assert reply.stderr == b"a line for the error log\n"
    server.wait_log("a line for the error log")


# -- connection handling ----------------------------------------------------


def test_keep_conn_serves_several_requests(server: Server) -> None:
    with connect(server.address) as sock:
        reader = RecordReader(sock)
        for i in range(3):
            sock.sendall(request_bytes(1, get_params("/environ", f"i={i}"), keep_conn=True))
            assert json.loads(reader.reply(1).body)["QUERY_STRING"] == f"i={i}"


def test_without_keep_conn_the_server_closes(server: Server) -> None:
    with connect(server.address) as sock:
        sock.sendall(request_bytes(1, get_params("/environ")))
        reader = RecordReader(sock)
        assert reader.reply(1).status == 200
        assert reader.closed()


def test_unread_body_does_not_break_the_answer(server: Server) -> None:
    reply = roundtrip(server.address, get_params("/ignore-body", method="POST"), b"x" * 2_000_000)
    assert reply.body == b"ignored"


def test_second_request_id_is_refused_with_cant_mpx_conn(server: Server) -> None:
    with connect(server.address) as sock:
        first = request_bytes(1, get_params("/environ"), keep_conn=True)
        second = request_bytes(2, get_params("/environ"), keep_conn=True)
        # Both BEGINs arrive before request 1's PARAMS finish.
        sock.sendall(first[:16] + second + first[16:])
        reader = RecordReader(sock)
        refused = reader.reply(2)
        assert refused.protocol_status == r.ProtocolStatus.CANT_MPX_CONN
        assert reader.reply(1).status == 200
    server.wait_log("refused request id 2")


def test_get_values_matches_the_sync_worker(server: Server) -> None:
    with connect(server.address) as sock:
        names = {b"FCGI_MPXS_CONNS": b"", b"FCGI_MAX_REQS": b"", b"BOGUS": b""}
        sock.sendall(r.encode_record(r.GET_VALUES, 0, r.encode_pairs(names)))
        rec = RecordReader(sock).record()
        assert rec is not None and rec[0] == r.GET_VALUES_RESULT
        assert dict(r.decode_pairs(rec[2])) == {b"FCGI_MPXS_CONNS": b"0", b"FCGI_MAX_REQS": b"1"}


def test_unknown_management_type(server: Server) -> None:
    with connect(server.address) as sock:
        sock.sendall(r.encode_record(42, 0, b"abc"))
        rec = RecordReader(sock).record()
        assert rec == (r.UNKNOWN_TYPE, 0, bytes([42]) + bytes(7))


def test_unknown_role_keeps_connection_usable(server: Server) -> None:
    with connect(server.address) as sock:
        sock.sendall(r.encode_begin_request(1, 9, keep_conn=True))
        reader = RecordReader(sock)
        assert reader.reply(1).protocol_status == r.ProtocolStatus.UNKNOWN_ROLE
        sock.sendall(request_bytes(1, get_params("/environ"), keep_conn=True))
        assert reader.reply(1).status == 200


def test_authorizer_role(server: Server) -> None:
    params = get_params("/authorize") | {"HTTP_AUTHORIZATION": "secret"}
    with connect(server.address) as sock:
        sock.sendall(
            r.encode_begin_request(1, r.Role.AUTHORIZER)
            + r.encode_params(1, {k.encode(): v.encode() for k, v in params.items()})
        )
        reply = RecordReader(sock).reply(1)
    assert reply.status == 200
    assert b"Variable-USER: alice" in reply.stdout
    denied = get_params("/authorize")
    with connect(server.address) as sock:
        sock.sendall(
            r.encode_begin_request(1, r.Role.AUTHORIZER)
            + r.encode_params(1, {k.encode(): v.encode() for k, v in denied.items()})
        )
        assert RecordReader(sock).reply(1).status == 403


def test_filter_role_gets_the_data_stream(server: Server) -> None:
    params = get_params("/filter") | {"FCGI_DATA_LENGTH": "5", "FCGI_DATA_LAST_MOD": "0"}
    data = (
        r.encode_begin_request(1, r.Role.FILTER)
        + r.encode_params(1, {k.encode(): v.encode() for k, v in params.items()})
        + r.encode_record(r.STDIN, 1)
        + r.encode_record(r.DATA, 1, b"hello")
        + r.encode_record(r.DATA, 1)
    )
    with connect(server.address) as sock:
        sock.sendall(data)
        assert RecordReader(sock).reply(1).body == b"FILTER 0 HELLO"


def test_abort_while_reading_body_ends_the_request(server: Server) -> None:
    with connect(server.address) as sock:
        params = get_params("/slow-body", method="POST") | {"CONTENT_LENGTH": "100"}
        whole = request_bytes(1, params, b"y" * 100)
        head = whole[: whole.index(r.encode_stream(r.STDIN, 1, b"y" * 100))]
        sock.sendall(head + r.encode_record(r.STDIN, 1, b"y" * 10))
        sock.sendall(r.encode_record(r.ABORT_REQUEST, 1))
        reply = RecordReader(sock).reply(1)
        assert reply.protocol_status == r.ProtocolStatus.REQUEST_COMPLETE
    server.wait_log("aborted by the web server")
    assert_serves(server)


# -- malformed input ---------------------------------------------------------


def _send_raw_and_expect_close(server: Server, data: bytes) -> None:
    with connect(server.address) as sock:
        sock.sendall(data)
        assert RecordReader(sock).closed()


def test_wrong_version_closes_with_log(server: Server) -> None:
    _send_raw_and_expect_close(server, b"\x02\x01\x00\x01\x00\x08\x00\x00" + bytes(8))
    server.wait_log("unsupported FastCGI version 2")
    assert_serves(server)


def test_truncated_record_then_close(server: Server) -> None:
    with connect(server.address) as sock:
        sock.sendall(r.encode_begin_request(1)[:11])
        sock.shutdown(socket.SHUT_WR)
        assert RecordReader(sock).closed()
    server.wait_log("connection closed inside a record")
    assert_serves(server)


def test_garbage_bytes(server: Server) -> None:
    _send_raw_and_expect_close(server, os.urandom(64) + b"\x00" * 64)
    assert_serves(server)


def test_begin_for_active_id_is_a_protocol_error(server: Server) -> None:
    data = r.encode_begin_request(1, keep_conn=True) + r.encode_begin_request(1, keep_conn=True)
    _send_raw_and_expect_close(server, data)
    server.wait_log("BEGIN_REQUEST for request id 1, which is still active")
    assert_serves(server)


def test_params_overrunning_their_stream_get_400(server: Server) -> None:
    bogus = b"\x04\x7f" + b"abcd"  # claims a 127-byte value that is not there
    data = (
        r.encode_begin_request(1, keep_conn=True)
        + r.encode_record(r.PARAMS, 1, bogus)
        + r.encode_record(r.PARAMS, 1)
        + r.encode_record(r.STDIN, 1)
    )
    with connect(server.address) as sock:
        sock.sendall(data)
        reader = RecordReader(sock)
        assert reader.reply(1).status == 400
        sock.sendall(request_bytes(1, get_params("/environ"), keep_conn=True))
        assert reader.reply(1).status == 200
    server.wait_log("malformed PARAMS")


def test_huge_declared_length_is_not_allocated(server: Server) -> None:
    bogus = b"\xff\xff\xff\xff\x01" + b"x"
    data = r.encode_begin_request(1) + r.encode_record(r.PARAMS, 1, bogus)
    data += r.encode_record(r.PARAMS, 1)
    with connect(server.address) as sock:
        sock.sendall(data)
        assert RecordReader(sock).reply(1).status == 400
    assert_serves(server)


def test_too_many_params_get_431(server: Server) -> None:
    params = get_params("/environ") | {f"HTTP_X_{i}": "v" for i in range(60)}
    reply = roundtrip(server.address, params)
    assert reply.status == 431
    server.wait_log("more than 50 PARAMS")
    assert_serves(server)


def test_records_for_inactive_ids_are_ignored(server: Server) -> None:
    with connect(server.address) as sock:
        sock.sendall(r.encode_record(r.STDIN, 7, b"stray") + r.encode_record(r.ABORT_REQUEST, 9))
        sock.sendall(request_bytes(1, get_params("/environ")))
        assert RecordReader(sock).reply(1).status == 200


def test_silent_connection_times_out_with_log(server: Server) -> None:
    with connect(server.address) as sock:
        assert RecordReader(sock).closed()
    server.wait_log("closing idle connection")
    assert_serves(server)


def test_stall_mid_record_times_out_with_log(server: Server) -> None:
    with connect(server.address) as sock:
        sock.sendall(r.encode_begin_request(1)[:5])
        assert RecordReader(sock).closed()
    server.wait_log("stalled for 2s")
    assert_serves(server)


def test_web_server_that_stops_reading_times_out_with_log(server: Server) -> None:
    with connect(server.address) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request_bytes(1, get_params("/big")))
        # Read nothing: the worker's write stalls, and it must give up after
        # its timeout rather than hang, then close the connection.
        server.wait_log("timed out writing to the web server")
    assert_serves(server)


def test_client_vanishing_mid_request_is_survived(server: Server) -> None:
    for _ in range(3):
        sock = connect(server.address)
        params = get_params("/echo", method="POST") | {"CONTENT_LENGTH": "100000"}
        sock.sendall(request_bytes(1, params)[:-8] + r.encode_record(r.STDIN, 1, b"z" * 500))
        sock.close()
    assert_serves(server)


# -- binding, process start, CLI ---------------------------------------------------


def test_unix_socket_mode_stale_file_and_cleanup(tmp_path: object) -> None:
    path = f"{tmp_path}/app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # a socket file nobody listens on any more
    with running_server(APP, bind=f"unix:{path}") as srv:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert_serves(srv)
        srv.wait_log("removing stale socket")
        proc = subprocess.run(
            [sys.executable, "-m", "fcgi", "serve", APP, "--bind", f"unix:{path}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
        )
        assert proc.returncode == 2
        assert "another server is listening there" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not os.path.exists(path), "socket file removed on exit"


def _free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def test_tcp_ipv4_and_ipv6() -> None:
    port = _free_port()
    with running_server(APP, bind=f"127.0.0.1:{port}") as srv:
        assert_serves(srv)
    port6 = _free_port(socket.AF_INET6, "::1")
    with running_server(APP, bind=f"[::1]:{port6}") as srv:
        assert_serves(srv)


def test_fcgi_web_server_addrs_refuses_other_peers() -> None:
    port = _free_port()
    env = {"FCGI_WEB_SERVER_ADDRS": "10.9.8.7"}
    with running_server(APP, bind=f"127.0.0.1:{port}", env=env) as srv:
        with connect(srv.address) as sock:
            assert RecordReader(sock).closed()
        srv.wait_log("not an allowed client")
    env = {"FCGI_WEB_SERVER_ADDRS": "10.9.8.7,127.0.0.1"}
    with running_server(APP, bind=f"127.0.0.1:{port}", env=env) as srv:
        assert_serves(srv)


def test_listening_socket_on_fd0_as_mod_fcgid_passes_it(tmp_path: object) -> None:
    path = f"{tmp_path}/spawned.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fcgi", "serve", APP],
        stdin=listener.fileno(),
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    listener.close()
    try:
        reply = roundtrip(f"unix:{path}", get_params("/environ", "spawned=1"))
        assert json.loads(reply.body)["QUERY_STRING"] == "spawned=1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, "a spawned app exits cleanly on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_plain_cgi_when_fd0_is_not_a_socket() -> None:
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        REQUEST_METHOD="POST",
        PATH_INFO="/echo",
        SCRIPT_NAME="/app.cgi",
        CONTENT_LENGTH="5",
        SERVER_NAME="localhost",
        SERVER_PORT="80",
        SERVER_PROTOCOL="HTTP/1.1",
        GATEWAY_INTERFACE="CGI/1.1",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fcgi", "serve", APP],
        input=b"hello",
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"Status: 200 OK\r\n")
    assert proc.stdout.endswith(
        b"5 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        # 3: the app cannot be imported, as a pool's master exits (#11).
        (["no_such_module:app"], "no module named 'no_such_module'", 3),
        (["fcgi.demo:nothing"], "has no attribute 'nothing'", 3),
        # 2: a usage or configuration mistake.
        (["fcgi.errors"], "has neither 'application' nor 'app'", 3),
        (["fcgi.demo:"], "expected MODULE, MODULE:NAME", 2),
        (["fcgi.demo:app", "--bind", "localhost:notaport"], "is not a number", 2),
        (["fcgi.demo:app", "--bind", "/nonexistent-dir/x.sock"], "cannot listen on", 2),
    ],
)
def test_cli_user_mistakes_are_one_clear_line(args: list[str], message: str, code: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fcgi", "serve", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert proc.returncode == code
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_finishes_the_request_in_flight() -> None:
    with running_server(APP) as srv:
        sock = connect(srv.address)
        params = get_params("/slow-body", method="POST") | {"CONTENT_LENGTH": "20"}
        sock.sendall(request_bytes(1, params, b"q" * 20))
        time.sleep(0.05)  # let the worker start the request (not a timing assertion)
        srv.proc.send_signal(signal.SIGTERM)
        reply = RecordReader(sock).reply(1)
        sock.close()
        assert reply.body == b"20"
        assert srv.proc.wait(10) == 0


def test_systemd_socket_activation(tmp_path: object) -> None:
    """LISTEN_FDS/LISTEN_PID as systemd sets them: the socket on fd 3, no --bind."""
    path = f"{tmp_path}/activated.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(8)

    def put_on_fd3() -> None:
        os.dup2(listener.fileno(), 3)

    # sh's $$ is the pid that exec keeps, which is what LISTEN_PID must name.
    command = f"LISTEN_PID=$$ LISTEN_FDS=1 exec {sys.executable} -m fcgi serve {APP}"
    proc = subprocess.Popen(
        ["sh", "-c", command],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        preexec_fn=put_on_fd3,
        close_fds=False,
    )
    listener.close()
    try:
        reply = roundtrip(f"unix:{path}", get_params("/environ", "activated=1"))
        assert json.loads(reply.body)["QUERY_STRING"] == "activated=1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert os.path.exists(path), "the socket belongs to systemd: left in place"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


SERVE_SCRIPT = """
import sys
import fcgi

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served by fcgi.serve()"]

kwargs = {"workers": 2, "user": "root"} if sys.argv[2] == "pool" else {}
raise SystemExit(fcgi.serve(app, bind=sys.argv[1], **kwargs))
"""


@pytest.mark.parametrize("mode", ["single", "pool"])
def test_python_api_serves_an_app_object(tmp_path: object, mode: str) -> None:
    address = f"unix:{tmp_path}/api.sock"
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, address, mode],
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = roundtrip(address, get_params("/"))
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert reply.body == b"served by fcgi.serve()"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
