"""The synchronous worker: one connection and one request at a time.

This is PHP-FPM's model and the default: a request owns the whole process, so
a crash or a leak stays inside one worker and a master can account for it.
Because requests run one at a time, extra request ids on a connection are
refused with CANT_MPX_CONN, and GET_VALUES says FCGI_MPXS_CONNS=0.

The worker waits for connections with epoll (EPOLLEXCLUSIVE, so one waiting
worker wakes per connection rather than all of them) together with a pipe that
:meth:`SyncWorker.stop` writes to, which makes stopping safe from a signal
handler without interrupting a request half way.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from fcgi import events as ev
from fcgi import forkguard
from fcgi.connection import Limits, ServerConnection
from fcgi.errors import ProtocolError, RequestBodyTooLarge
from fcgi.hooks import NoHooks, WorkerHooks, render_answer
from fcgi.options import ServerOptions
from fcgi.records import Role
from fcgi.sockets import peer_allowed
from fcgi.wsgi import (
    ClientGone,
    ErrorStream,
    InputStream,
    WSGIApp,
    build_environ,
    content_length,
    error_response,
    run_app,
)

log = logging.getLogger("fcgi.worker")

#: One buffer of this size per worker takes every read (recv_into): a large
#: request body arrives in few reads, and no read allocates.
_RECV_SIZE = 256 * 1024
#: Most bytes read and thrown away while closing a connection whose request
#: body the app did not read (so the web server sees our answer, not a reset).
_MAX_DRAIN = 64 * 1024 * 1024
#: Kept-alive connections one worker holds between requests; past this the
#: oldest is closed (the web server opens a new one when it needs it).
_MAX_PARKED = 64


#: Below this many bytes a response is joined and sent with one send(); above
#: it the buffers go to sendmsg() as they are, so a large body is never copied.
_JOIN_LIMIT = 16 * 1024
_IOV_MAX = 1024
_DONTWAIT = socket.MSG_DONTWAIT


def wait_ready(sock: socket.socket, events: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``sock`` to be ready; False if it never was.

    Sockets stay blocking and every read and write is first tried with
    MSG_DONTWAIT, so a timeout costs a poll() only when the peer is slow,
    instead of two setsockopt() calls on every connection.
    """
    poller = select.poll()
    poller.register(sock, events)
    return bool(poller.poll(max(0, math.ceil(timeout * 1000))))


def send_buffers(sock: socket.socket, buffers: list[bytes | memoryview], timeout: float) -> None:
    """Write every buffer, in order, with as few copies and syscalls as it takes.

    Raises :class:`TimeoutError` when the peer reads nothing for ``timeout`` seconds.
    """
    if len(buffers) == 1:
        data = buffers[0]
    elif sum(map(len, buffers)) <= _JOIN_LIMIT:
        data = b"".join(buffers)
    else:
        _send_vectored(sock, buffers, timeout)
        return
    try:
        sent = sock.send(data, _DONTWAIT)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        _send_vectored(sock, [memoryview(data)[sent:]], timeout)


def _send_vectored(sock: socket.socket, buffers: list[bytes | memoryview], timeout: float) -> None:
    first = 0
    while first < len(buffers):
        try:
            sent = sock.sendmsg(buffers[first : first + _IOV_MAX], (), _DONTWAIT)
        except BlockingIOError:
            if not wait_ready(sock, select.POLLOUT, timeout):
                raise TimeoutError from None
            continue
        while sent:
            size = len(buffers[first])
            if sent >= size:
                sent -= size
                first += 1
            else:
                buffers[first] = memoryview(buffers[first])[sent:]
                sent = 0


class _Timeout(Exception):
    pass


class _PeerClosed(Exception):
    pass


_ROLE_NAMES = {role.value: role.name for role in Role}
_AUTHORIZER = int(Role.AUTHORIZER)
_FILTER = int(Role.FILTER)


class _Peer:
    """Who is on the other end; formatted only when a log line needs it."""

    __slots__ = ("address", "sock")

    def __init__(self, address: object, sock: socket.socket) -> None:
        self.address = address
        self.sock = sock

    def __str__(self) -> str:
        peer = self.address
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
            return f"{host}:{peer[1]}"
        try:
            name = self.sock.getsockname()
        except OSError:
            name = ""
        return f"unix:{name}" if name else "unix socket"


class _Connection:
    """One accepted transport connection being served by a sync worker."""

    __slots__ = (
        "address",
        "buffer",
        "conn",
        "pending",
        "registered",
        "served",
        "sock",
        "timeout",
    )

    def __init__(
        self,
        sock: socket.socket,
        address: object,
        limits: Limits,
        timeout: float,
        buffer: memoryview,
    ) -> None:
        self.sock = sock
        self.address = address
        self.timeout = timeout
        #: The worker's read buffer, shared by its connections: what a read
        #: puts there is taken in by ServerConnection.feed before the next.
        self.buffer = buffer
        self.conn = ServerConnection(limits)
        self.pending: deque[ev.Event] = deque()
        self.served = 0
        self.registered = False

    @property
    def peer(self) -> _Peer:
        """The web server's address, for log lines (formatted only if one is written)."""
        return _Peer(self.address, self.sock)

    def recv(self) -> memoryview:
        """The next bytes from the peer (valid until the next read), waiting at most ``timeout``."""
        sock = self.sock
        buffer = self.buffer
        while True:
            try:
                return buffer[: sock.recv_into(buffer, 0, _DONTWAIT)]
            except BlockingIOError:
                if not wait_ready(sock, select.POLLIN, self.timeout):
                    raise _Timeout from None

    def pump(self) -> None:
        """Read once from the peer and queue the events it completes."""
        forkguard.check()  # a child the app forked must not read the worker's input
        try:
            data = self.recv()
        except OSError as exc:
            raise _PeerClosed(exc.strerror or str(exc)) from None
        if not data:
            self.conn.feed_eof()
            raise _PeerClosed("the web server closed the connection")
        self.pending.extend(self.conn.feed(data))
        if self.conn.has_output:
            self.flush()

    def flush(self) -> None:
        forkguard.check()  # a child the app forked must not answer a second time
        buffers = self.conn.buffers_to_send()
        if buffers:
            try:
                send_buffers(self.sock, buffers, self.timeout)
            except TimeoutError:
                raise ClientGone("timed out writing to the web server") from None
            except OSError as exc:
                raise ClientGone(exc.strerror or str(exc)) from None


class _Exchange:
    """The one request being served: its input demultiplexed, its output queued.

    FCGI_STDIN and FCGI_DATA are read from the connection only as the app asks
    for them; ``send`` and ``stderr`` are what :func:`fcgi.wsgi.run_app` writes to.
    """

    __slots__ = ("c", "data", "data_done", "error", "rid", "stdin", "stdin_done")

    def __init__(self, c: _Connection, rid: int, role: int) -> None:
        self.c = c
        self.rid = rid
        #: Raised by the next read once the input that came before it is used
        #: up (the body crossed max_body_size: it must not look complete).
        self.error: RequestBodyTooLarge | None = None
        # Made when the first chunk arrives: most requests have no body.
        self.stdin: deque[bytes] | None = None
        self.data: deque[bytes] | None = None
        self.stdin_done = role == _AUTHORIZER
        self.data_done = role != _FILTER

    # -- output -------------------------------------------------------------

    def send(self, data: bytes, flush: bool) -> None:
        c = self.c
        c.conn.send_stdout(self.rid, data)
        if flush:
            c.flush()

    def stderr(self, data: bytes) -> None:
        self.c.conn.send_stderr(self.rid, data)

    # -- input --------------------------------------------------------------

    def _dispatch(self) -> None:
        pending = self.c.pending
        rid = self.rid
        while pending:
            event = pending.popleft()
            if event.request_id != rid:
                continue  # refused ids: already answered by the connection
            kind = type(event)
            if kind is ev.StdinData:
                if self.stdin is None:
                    self.stdin = deque()
                self.stdin.append(event.data)  # type: ignore[attr-defined]
            elif kind is ev.StdinEnd:
                self.stdin_done = True
            elif kind is ev.DataChunk:
                if self.data is None:
                    self.data = deque()
                self.data.append(event.data)  # type: ignore[attr-defined]
            elif kind is ev.DataEnd:
                self.data_done = True
            elif kind is ev.AbortRequest:
                log.info("request %d from %s aborted by the web server", rid, self.c.peer)
                self._end_input()
            elif kind is ev.RequestRejected:
                reason = event.reason  # type: ignore[attr-defined]
                log.warning("request from %s: %s", self.c.peer, reason)
                if event.http_status == 413:  # type: ignore[attr-defined]
                    self.error = RequestBodyTooLarge(reason)
                self._end_input()

    def _end_input(self) -> None:
        self.stdin_done = self.data_done = True

    def settle(self) -> bool:
        """Take in what already arrived; True if the web server sent all its input."""
        if self.c.pending:
            self._dispatch()
        return self.stdin_done and self.data_done

    def read_stdin(self) -> bytes:
        while not self.stdin:
            if self.stdin_done:
                if self.error is not None:
                    raise self.error
                return b""
            self._pump()
        return self.stdin.popleft()

    def read_data(self) -> bytes:
        while not self.data:
            if self.data_done:
                if self.error is not None:
                    raise self.error
                return b""
            self._pump()
        return self.data.popleft()

    def _pump(self) -> None:
        if self.c.pending:
            self._dispatch()
            return
        try:
            self.c.pump()
        except (_PeerClosed, _Timeout, ProtocolError) as exc:
            log.warning("request body from %s cut short: %s", self.c.peer, exc or "read timeout")
            self._end_input()
            return
        self._dispatch()


class SyncWorker:
    """Serve FastCGI connections on ``listeners`` until stopped.

    Connections kept open with FCGI_KEEP_CONN are parked in the same epoll set
    as the listeners between requests, so a worker serves whichever of its
    connections has a request ready instead of sitting on one idle connection
    while the web server sends the next request down another.
    """

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        app: WSGIApp,
        options: ServerOptions | None = None,
        hooks: WorkerHooks | None = None,
    ) -> None:
        self.listeners = list(listeners)
        self.app = app
        self.options = options or ServerOptions()
        self.hooks: WorkerHooks = hooks or NoHooks()
        # One request at a time: say so to the web server and refuse extra ids.
        self.limits = replace(
            self.options.limits, max_requests=1, max_reqs=1, max_conns=_MAX_PARKED + 1
        )
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller: select.epoll | None = None
        self._buffer = memoryview(bytearray(_RECV_SIZE))
        #: Kept connections waiting for their next request, by fd, oldest first.
        self._parked: dict[int, tuple[_Connection, float]] = {}

    # -- control ------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to finish its current request and return. Signal-safe."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    @property
    def stopping(self) -> bool:
        return self._stopping

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- main loop -----------------------------------------------------------

    def serve_forever(self) -> None:
        forkguard.arm()
        poller = self._poller = select.epoll()
        #: fd -> (listener, (family, type, proto)) as plain ints for accept().
        listeners: dict[int, tuple[socket.socket, tuple[int, int, int]]] = {}
        exclusive = getattr(select, "EPOLLEXCLUSIVE", 0)
        for sock in self.listeners:
            sock.setblocking(False)
            listeners[sock.fileno()] = (sock, (int(sock.family), int(sock.type), sock.proto))
            poller.register(sock.fileno(), select.EPOLLIN | exclusive)
        poller.register(self._wake_r, select.EPOLLIN)
        parked = self._parked
        try:
            while not self._stopping:
                timeout = -1.0
                if parked:
                    oldest = next(iter(parked.values()))[1]
                    timeout = max(0.0, oldest + self.options.read_timeout - time.monotonic())
                for fd, _ in poller.poll(timeout):
                    if fd == self._wake_r:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 64)
                    elif fd in listeners:
                        self._accept(*listeners[fd])
                    elif fd in parked:
                        self._drive(parked.pop(fd)[0], readable=True)
                    if self._stopping or self.hooks.should_stop():
                        return
                if parked:
                    self._expire_parked()
        finally:
            self._close_parked()
            poller.close()
            self._poller = None

    def _close_parked(self) -> None:
        """Serve what kept connections already sent, then close them all."""
        parked = self._parked
        poller = self._poller
        if parked and poller is not None:
            for fd, _ in poller.poll(0):
                entry = parked.pop(fd, None)
                if entry is not None:
                    self._drive(entry[0], readable=True)
        for c, _ in list(parked.values()):
            self._close(c, False)
        parked.clear()

    def _accept(self, listener: socket.socket, kind: tuple[int, int, int]) -> None:
        try:
            # socket.accept() without its wrapper's per-call enum conversions.
            fd, peer = listener._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.error("accept failed: %s", exc.strerror)
                return
            raise
        sock = socket.socket(*kind, fd)
        self.hooks.connection_accepted()
        if self.options.allowed_clients and not peer_allowed(peer, self.options.allowed_clients):
            log.warning("refused connection from %s: not an allowed client", peer)
            sock.close()
            return
        self._drive(_Connection(sock, peer, self.limits, self.options.read_timeout, self._buffer))

    def _park(self, c: _Connection) -> None:
        """Keep ``c`` for its next request without waiting on it here."""
        parked = self._parked
        fd = c.sock.fileno()
        if not c.registered:
            assert self._poller is not None
            self._poller.register(fd, select.EPOLLIN)
            c.registered = True
        parked[fd] = (c, time.monotonic())
        if len(parked) > _MAX_PARKED:
            oldest_fd = next(iter(parked))
            log.debug("closing the oldest of %d kept connections", len(parked))
            self._close(parked.pop(oldest_fd)[0], False)

    def _expire_parked(self) -> None:
        limit = time.monotonic() - self.options.read_timeout
        parked = self._parked
        while parked:
            fd, (c, since) = next(iter(parked.items()))
            if since > limit:
                break
            del parked[fd]
            log.info("closing idle connection from %s after %gs", c.peer, self.options.read_timeout)
            self._close(c, False)

    # -- one connection ------------------------------------------------------

    def _drive(self, c: _Connection, readable: bool = False) -> None:
        """Serve ``c`` until it must wait for a new request, then park or close it.

        ``readable``: epoll just said the parked connection has input (or EOF).
        """
        unread_body = False
        try:
            while True:
                if not c.pending:
                    if c.conn.should_close:
                        break
                    between = c.served and not c.conn.active_requests and not c.conn.mid_record
                    if between and not readable:
                        # A kept connection waits for its next request in
                        # epoll, so the worker can serve others meanwhile. A
                        # new connection is served to its first request here,
                        # as PHP-FPM does: parked, its request could wait
                        # behind this worker's next one while others are idle.
                        if self._stopping:
                            break
                        self._park(c)
                        return
                    readable = False
                    c.pump()
                    continue
                event = c.pending.popleft()
                kind = type(event)
                if kind is ev.Params:
                    unread_body = self._request(c, event)  # type: ignore[arg-type]
                    c.served += 1
                    if self._stopping or self.hooks.should_stop():
                        break
                elif kind is ev.RequestRejected:
                    self._reject(c, event)  # type: ignore[arg-type]
                    c.served += 1
                elif kind is ev.AbortRequest:
                    # Aborted before its PARAMS ended: the app never ran, but
                    # the web server still waits for END_REQUEST (section 5.4).
                    if event.request_id in c.conn.active_requests:
                        log.info(
                            "request %d from %s aborted before it started", event.request_id, c.peer
                        )
                        c.conn.end_request(event.request_id)
                        c.flush()
                        c.served += 1
                elif kind is ev.RequestRefused:
                    log.warning(
                        "refused request id %d from %s: protocol status %d (role %d)",
                        event.request_id,
                        c.peer,
                        event.protocol_status,  # type: ignore[attr-defined]
                        event.role,  # type: ignore[attr-defined]
                    )
                    c.served += 1
        except ProtocolError as exc:
            log.warning("closing connection from %s: protocol error: %s", c.peer, exc)
            unread_body = False
        except _Timeout:
            if c.conn.active_requests or c.conn.mid_record:
                log.warning(
                    "closing connection from %s: stalled for %gs in the middle of a request",
                    c.peer,
                    self.options.read_timeout,
                )
            else:
                log.info(
                    "closing idle connection from %s after %gs", c.peer, self.options.read_timeout
                )
            unread_body = False
        except _PeerClosed as exc:
            if c.conn.active_requests:
                log.info("connection from %s closed mid-request: %s", c.peer, exc)
            unread_body = False
        except ClientGone as exc:
            log.info("web server %s went away while we answered: %s", c.peer, exc)
            unread_body = False
        self._close(c, unread_body)

    def _request(self, c: _Connection, event: ev.Params) -> bool:
        """Serve one request; return True if its body was left unread."""
        rid = event.request_id
        params = event.params
        conn = c.conn
        hooks = self.hooks
        options = self.options
        role = conn.role(rid)
        token = hooks.request_started(params)
        exchange = _Exchange(c, rid, role)
        status = 0
        try:
            answer = hooks.intercept(params)
            if answer is None:
                stderr = exchange.stderr if options.stderr_tracebacks else None
                errors = ErrorStream(stderr)
                environ = build_environ(
                    params,
                    InputStream(exchange.read_stdin, content_length(params)),
                    errors,
                    mount=options.script_name,
                    multithread=options.multithread,
                    multiprocess=options.multiprocess,
                )
                if role == _FILTER:
                    environ["fcgi.data"] = InputStream(
                        exchange.read_data, _int_param(params, "FCGI_DATA_LENGTH")
                    )
                environ["fcgi.role"] = _ROLE_NAMES[role]
                http_status, app_status = run_app(self.app, environ, exchange.send, stderr)
                forkguard.check()
                errors.flush()
            else:
                conn.send_stdout(rid, render_answer(answer, params.get("REQUEST_METHOD", "GET")))
                http_status, app_status = int(answer.status[:3]), 0
            conn.end_request(rid, app_status)
            c.flush()
            status = http_status
        finally:
            # Also when the web server went away mid-answer (status 0 then):
            # the scoreboard must not keep showing a request that is over.
            hooks.request_finished(token, status)
        return not exchange.settle()

    def _reject(self, c: _Connection, event: ev.RequestRejected) -> None:
        log.warning("rejected request from %s: %s", c.peer, event.reason)
        reasons = {
            400: "Bad Request",
            413: "Content Too Large",
            431: "Request Header Fields Too Large",
        }
        reason = reasons.get(event.http_status, "Bad Request")
        c.conn.send_stdout(event.request_id, error_response(event.http_status, reason))
        c.conn.end_request(event.request_id, 1)
        c.flush()

    def _close(self, c: _Connection, unread_body: bool) -> None:
        sock = c.sock
        if unread_body:
            # Closing with unread input makes the kernel send a reset, which
            # can destroy the answer in flight. Half-close, then drain.
            with contextlib.suppress(OSError, _Timeout):
                sock.shutdown(socket.SHUT_WR)
                drained = 0
                while drained < _MAX_DRAIN:
                    chunk = c.recv()
                    if not chunk:
                        break
                    drained += len(chunk)
        sock.close()


def _int_param(params: dict[str, str], name: str) -> int | None:
    try:
        return int(params[name])
    except (KeyError, ValueError):
        return None
