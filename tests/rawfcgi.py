"""Byte-level FastCGI helpers for tests that need to misbehave on purpose.

Requests are built, and records read, with the sans-IO client
(:mod:`fcgi.client_connection`); :func:`split_records` is the one place the
tests cut bytes into records, so no test walks record headers itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from fcgi import records as r
from fcgi.client_connection import ClientConnection, Record, RecordSplitter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

Rec = tuple[int, int, bytes]  # (type, request id, content)


def request_bytes(
    rid: int,
    params: Mapping[str, str],
    body: bytes = b"",
    *,
    keep_conn: bool = False,
    role: int = r.Role.RESPONDER,
) -> bytes:
    pairs = {k.encode("latin-1"): v.encode("latin-1") for k, v in params.items()}
    if body and "CONTENT_LENGTH" not in params:
        pairs[b"CONTENT_LENGTH"] = str(len(body)).encode()
    conn = ClientConnection()
    conn.send_request(pairs, body, role=role, keep_conn=keep_conn, request_id=rid)
    return conn.data_to_send()


def split_records(data: bytes | bytearray, *, aligned: bool = False) -> list[Record]:
    """Every record of ``data``, strictly: the one place tests cut bytes into records.

    ``data`` must be whole records of version 1, nothing left over; with
    ``aligned`` each record must also end on an 8-byte boundary (what fcgi
    sends always does). A :class:`Record` is ``(type, request id, content,
    padding)``; ``rec[:3]`` is the form most tests compare with. For bytes
    that arrive in pieces, see :class:`RecordReader`.
    """
    splitter = RecordSplitter()
    records = splitter.feed(data)
    assert not splitter.buffered, f"{splitter.buffered} bytes left over after the last record"
    if aligned:
        for rec in records:
            assert (len(rec.content) + rec.padding) % 8 == 0, f"record not 8-byte aligned: {rec}"
    return records


def get_params(path: str = "/", query: str = "", method: str = "GET") -> dict[str, str]:
    uri = path + ("?" + query if query else "")
    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": path,
        "REQUEST_URI": uri,
        "QUERY_STRING": query,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }


@dataclass
class Reply:
    stdout: bytes = b""
    stderr: bytes = b""
    app_status: int = -1
    protocol_status: int = -1
    records: list[Rec] = field(default_factory=list)

    @property
    def status(self) -> int:
        head = self.stdout.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"status:"):
                return int(line.split(b":", 1)[1].split()[0])
        return 200

    @property
    def body(self) -> bytes:
        return self.stdout.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.stdout else b""


class RecordReader:
    """Reads records off a socket, keeping what is left over for the next call."""

    def __init__(self, sock: socket.socket, recv_size: int = 65536) -> None:
        self.sock = sock
        self.recv_size = recv_size
        self.splitter = RecordSplitter()
        self.ready: deque[Rec] = deque()

    def record(self) -> Rec | None:
        """The next record, or None if the peer closed the connection first."""
        while not self.ready:
            data = self.sock.recv(self.recv_size)
            if not data:
                return None
            self.ready += (rec[:3] for rec in self.splitter.feed(data))
        return self.ready.popleft()

    def reply(self, rid: int = 1) -> Reply:
        """Collect records until END_REQUEST for ``rid``."""
        reply = Reply()
        while True:
            rec = self.record()
            if rec is None:
                raise ConnectionError(f"connection closed before END_REQUEST {rid}: {reply}")
            rtype, got_rid, content = rec
            reply.records.append(rec)
            if got_rid != rid:
                continue
            if rtype == r.STDOUT:
                reply.stdout += content
            elif rtype == r.STDERR:
                reply.stderr += content
            elif rtype == r.END_REQUEST:
                reply.app_status, reply.protocol_status = r.END_REQUEST_BODY.unpack(content)
                return reply

    def closed(self) -> bool:
        """True if the peer closes the connection (after any pending records)."""
        self.sock.settimeout(10)
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return True
            if not data:
                return True
            self.ready += (rec[:3] for rec in self.splitter.feed(data))


def connect(address: str, timeout: float = 10.0) -> socket.socket:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address[5:])
    else:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    return sock


def roundtrip(address: str, params: Mapping[str, str], body: bytes = b"", **kw: object) -> Reply:
    with connect(address) as sock:
        sock.sendall(request_bytes(1, params, body, **kw))  # type: ignore[arg-type]
        return RecordReader(sock).reply(1)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    address: str
    log_path: str

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared in the server log:\n{self.log()}")


def wait_connectable(address: str, proc: subprocess.Popen[bytes], log_path: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path) as f:
                raise AssertionError(f"server exited with {proc.returncode}:\n{f.read()}")
        try:
            connect(address, timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"server never accepted on {address}")


@contextmanager
def running_server(
    app: str, *args: str, bind: str | None = None, env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """``python -m fcgi serve APP`` in a subprocess, logging to a file."""
    with tempfile.TemporaryDirectory() as tmp:
        address = bind or f"unix:{tmp}/app.sock"
        log_path = os.path.join(tmp, "server.log")
        full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fcgi", "serve", app, "--bind", address, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=ROOT,
            )
        try:
            wait_connectable(address, proc, log_path)
            yield Server(proc, address, log_path)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
