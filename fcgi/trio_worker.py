"""The trio worker: many connections, and every request id on them, at once.

One process runs one ``trio.run`` (started by :meth:`TrioWorker.serve_forever`,
so it is fresh after a fork). Inside it:

* one task per listening socket accepts connections;
* one task per connection reads it, feeds :class:`~fcgi.connection.ServerConnection`
  and routes the events: request bodies go into a :class:`~fcgi.spool.SpooledBody`
  per request, which never blocks the reader (memory up to ``spool_threshold``,
  a temporary file beyond), so a slow app cannot stall the other ids;
* one task per request runs the app: ASGI apps directly in trio, WSGI apps in a
  thread pool bounded by ``threads`` (``trio.to_thread.run_sync`` with a
  CapacityLimiter), their wsgi.input and output crossing back into trio with
  ``trio.from_thread.run``.

Output goes out under one fair :class:`trio.Lock` per connection, a bounded
slice at a time: a request streaming a large body takes turns with the other
ids instead of starving them, and a web server that reads slowly makes the apps
wait (backpressure) instead of making the worker buffer whole responses.

Limits: ``max_conns`` connections and ``max_reqs`` requests in progress in the
whole process, any number of them on one connection (one more gets END_REQUEST
OVERLOADED at once). GET_VALUES says so, with FCGI_MPXS_CONNS=1. At
``max_conns``, the connection quiet for longest (idle, or still waiting for its
request head) is closed to make room; a new one is refused only when every
connection is busy. A connection must deliver a whole request head
(BEGIN_REQUEST and PARAMS) within ``request_header_timeout`` of its acceptance,
or of the first byte of its next request; a request's output may wait for the
web server ``send_timeout`` in all (``read_timeout`` per write).

A web server that goes away (or a write that fails for any reason) ends that
connection and its requests, with one log line; never the worker.

ABORT_REQUEST (or the web server closing the connection) cancels that request's
task: a WSGI app's next write fails so its iterable's close() runs; an ASGI app's
receive() returns ``http.disconnect`` and its task is cancelled. END_REQUEST
follows at once, as the spec asks; a WSGI thread that is busy finishes in the
background, still counted against ``threads``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import trio

from fcgi import events as ev
from fcgi import forkguard, stacks
from fcgi.asgi import ASGIResponder, Lifespan, LifespanFailure, build_scope
from fcgi.connection import ServerConnection
from fcgi.driver import ACCEPT_PAUSE, ACCEPT_RETRY, ACCEPT_STARVED, int_param, log_refusal
from fcgi.errors import ProtocolError, RequestBodyIncomplete, RequestBodyTooLarge
from fcgi.escape import Lines
from fcgi.hooks import NoHooks, WorkerHooks, render_answer
from fcgi.interface import resolve_interface
from fcgi.options import ServerOptions
from fcgi.records import ProtocolStatus, Role
from fcgi.sockets import defer_accept, describe_peer, peer_allowed
from fcgi.spool import SpooledBody
from fcgi.wsgi import (
    ClientGone,
    ErrorStream,
    InputStream,
    WSGIApp,
    build_environ,
    content_length,
    error_response,
    respond,
)

log = logging.getLogger("fcgi.worker")

T = TypeVar("T")

_RECV_SIZE = 256 * 1024
#: Most STDOUT bytes one request writes per turn of the connection's write lock
#: (two aligned records): the grain of fair interleaving between ids.
_SLICE = 2 * 0xFFF8
#: Most bytes read and thrown away while closing a connection whose request
#: body was not read to the end (so the web server sees our answer, not a reset).
_MAX_DRAIN = 64 * 1024 * 1024
_DRAIN_SECONDS = 2.0
#: accept() failures that mean the listening socket itself is unusable.
_LISTENER_GONE = frozenset((errno.EBADF, errno.EINVAL, errno.ENOTSOCK))
#: Pause after an accept() failure of an unknown kind, so it cannot spin.
_ACCEPT_BACKOFF = 1.0


def _collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A group holding one exception (trio's strict nurseries) as that exception."""
    leaves = list(_leaves(group))
    return leaves[0] if len(leaves) == 1 else group


def _leaves(exc: BaseException) -> Any:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


class _Request:
    """One request id being served on a connection."""

    __slots__ = (
        "body",
        "data",
        "deferred",
        "ended",
        "gone",
        "helpers",
        "input_done",
        "keep_conn",
        "params",
        "responder",
        "rid",
        "role",
        "scope",
        "send_waited",
        "since",
        "started",
    )

    def __init__(self, rid: int, role: int, keep_conn: bool, spool_threshold: int) -> None:
        self.rid = rid
        self.role = role
        self.keep_conn = keep_conn
        self.params: dict[str, str] = {}
        self.body = SpooledBody(spool_threshold)
        #: True once the web server finished sending FCGI_STDIN.
        self.input_done = role == Role.AUTHORIZER
        if self.input_done:
            self.body.end()  # authorizers get no FCGI_STDIN
        self.data = SpooledBody(spool_threshold) if role == Role.FILTER else None
        #: Cancelled by ABORT_REQUEST: wraps the app's run.
        self.scope = trio.CancelScope()
        #: Scopes of trio calls made on behalf of this request's WSGI thread.
        self.helpers: set[trio.CancelScope] = set()
        #: Why the web server no longer wants the answer, once it does not.
        self.gone: str | None = None
        self.started = False
        self.responder: ASGIResponder | None = None
        #: WSGI output the thread handed over without flushing (sent with END_REQUEST).
        self.deferred: list[bytes] = []
        #: True once END_REQUEST is queued: a rejected request that is then
        #: aborted must not be ended twice (the second would be a driver bug
        #: that takes the connection down).
        self.ended = False
        #: Seconds this request's output has waited for the web server to read.
        self.send_waited = 0.0
        #: When its head began to arrive (trio clock): see request_header_timeout.
        self.since = 0.0

    def abort(self, reason: str) -> None:
        if self.gone is not None:
            return
        self.gone = reason
        self.body.end()
        if self.data is not None:
            self.data.end()
        if self.responder is not None:
            self.responder.disconnect(reason)
        self.scope.cancel()
        for scope in self.helpers:
            scope.cancel()

    def close(self) -> None:
        self.body.close()
        if self.data is not None:
            self.data.close()


class _Connection:
    """One accepted connection: its reader, its requests, its fair write lock."""

    def __init__(self, worker: TrioWorker, sock: trio.socket.SocketType, peer: str) -> None:
        self.worker = worker
        self.stream = trio.SocketStream(sock)
        self.fd = sock.fileno()
        self.peer = peer
        self.conn = ServerConnection(worker.limits)
        self.requests: dict[int, _Request] = {}
        #: Requests whose app is running (the others still wait for PARAMS).
        self.running = 0
        #: Requests refused on this connection (see fcgi.driver.log_refusal).
        self.refusals = 0
        self.lock = trio.Lock()
        self.broken: str | None = None
        self.unread_input = False
        self._nursery: trio.Nursery | None = None
        self._read_scope: trio.CancelScope | None = None
        self._woken = False
        #: When the head of the next request began to arrive (trio clock), or
        #: None while no head is being waited for: from acceptance, since a
        #: new connection owes us a request.
        self.head_since: float | None = trio.current_time()
        #: Since when the connection has had nothing in progress: the oldest
        #: quiet connection is the first to go when max_conns is reached.
        self.quiet_since = self.head_since

    # -- life cycle ---------------------------------------------------------------

    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                reason = await self._read_loop()
                if self.requests:
                    self._abort_all(reason)
        finally:
            for req in list(self.requests.values()):
                req.abort("the connection closed")
                req.close()
                self._retire(req)
            await self._close()

    @property
    def quiet(self) -> bool:
        """True if nothing is in progress: no app running, no answer being written."""
        return (
            self.running == 0
            and self.broken is None
            and not self.lock.locked()
            and all(req.gone is None for req in self.requests.values())
        )

    def wake(self) -> None:
        """Make the reader look again at whether to go on (idle, stopping, closing)."""
        if self._read_scope is not None:
            self._woken = True
            self._read_scope.cancel()

    def became_idle(self) -> None:
        """The last request ended: close if due, else let the idle timeout run."""
        self.head_since = None
        self.quiet_since = trio.current_time()
        if self.worker.stopping or self.conn.should_close:
            self.wake()
        elif self._read_scope is not None and self._read_scope.deadline == math.inf:
            # Moving the deadline does not interrupt the read (which would
            # cost a trip through epoll on every request).
            self._read_scope.deadline = trio.current_time() + self.worker.options.read_timeout

    def _abort_all(self, reason: str) -> None:
        for req in list(self.requests.values()):
            req.abort(reason)
            if not req.started:
                req.close()
                self._retire(req)

    def _retire(self, req: _Request) -> None:
        if self.requests.get(req.rid) is req:
            del self.requests[req.rid]
            self.worker.active_requests -= 1
            if not req.input_done:
                self.unread_input = True

    async def _close(self) -> None:
        with trio.CancelScope(shield=True):
            sock = self.stream.socket
            if self.unread_input and self.broken is None:
                # Closing with unread input makes the kernel send a reset, which
                # can destroy the answer in flight. Half-close, then drain.
                with contextlib.suppress(OSError), trio.move_on_after(_DRAIN_SECONDS):
                    sock.shutdown(socket.SHUT_WR)
                    drained = 0
                    while drained < _MAX_DRAIN:
                        chunk = await sock.recv(_RECV_SIZE)
                        if not chunk:
                            break
                        drained += len(chunk)
            if self.broken is None:
                # Nothing may write to the descriptor now: its number may
                # already belong to another connection.
                self.broken = "the connection is closed"
            sock.close()

    # -- reading ------------------------------------------------------------------

    async def _read_loop(self) -> str:
        """Read until the connection should close; return why."""
        worker = self.worker
        conn = self.conn
        timeout = worker.options.read_timeout
        while True:
            if self.broken is not None:
                return self.broken  # evicted before this task first ran
            # Stopping: a connection that owes us a request head (a new one,
            # or a kept one whose next request began) is served first, within
            # its head deadline; so is one whose input is already here. Only
            # an idle kept connection closes at once.
            if not self.requests and (
                conn.should_close
                or (worker.stopping and self.head_since is None and not self._input_waiting())
            ):
                return "closing"
            timed = self.running == 0 or conn.mid_record
            now = trio.current_time()
            head_deadline = self._head_deadline(now)
            if head_deadline <= now:
                log.warning(
                    "closing connection from %s: no complete request head within %gs "
                    "(request_header_timeout)",
                    self.peer,
                    worker.options.request_header_timeout,
                )
                # No answer is in flight to protect by draining the input.
                self.broken = "request head timeout"
                return self.broken
            with trio.CancelScope() as scope:
                scope.deadline = min(now + timeout if timed else math.inf, head_deadline)
                self._read_scope = scope
                try:
                    data = await self.stream.receive_some(_RECV_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    if self.requests:
                        log.info("connection from %s failed mid-request: %s", self.peer, exc)
                    return "the connection failed"
            self._read_scope = None
            if scope.cancelled_caught:
                if self._woken or trio.current_time() >= head_deadline:
                    # Woken, or the head deadline passed: the loop's top says which.
                    self._woken = False
                    continue
                if self.requests or conn.mid_record:
                    log.warning(
                        "closing connection from %s: stalled for %gs in the middle of a request",
                        self.peer,
                        timeout,
                    )
                else:
                    log.info("closing idle connection from %s after %gs", self.peer, timeout)
                self.broken = "read timeout"  # a stalled peer: nothing to drain
                return self.broken
            if not data:
                try:
                    conn.feed_eof()
                except ProtocolError as exc:
                    log.warning("connection from %s closed mid-record: %s", self.peer, exc)
                if self.requests:
                    log.info(
                        "web server %s closed the connection with %d request(s) in progress",
                        self.peer,
                        len(self.requests),
                    )
                return "the web server closed the connection"
            try:
                events = conn.feed(data)
            except ProtocolError as exc:
                log.warning("closing connection from %s: protocol error: %s", self.peer, exc)
                return f"protocol error: {exc}"
            if not self.requests and conn.mid_record and self.head_since is None:
                # The first bytes of the next request on a kept connection.
                self.head_since = trio.current_time()
            for event in events:
                self._dispatch(event)
            try:
                await self._flush_control()
            except ClientGone as exc:
                # The peer left before it read what the connection answered
                # by itself (GET_VALUES, a refusal): _break logged it.
                return str(exc)

    def _input_waiting(self) -> bool:
        """True if the peer's next bytes (or its EOF) are already here to read."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        try:
            return bool(poller.poll(0))
        except OSError:
            return False

    def _head_deadline(self, now: float) -> float:
        """When the request head now being received must be complete (inf: none is).

        A head is BEGIN_REQUEST and the whole PARAMS stream. The clock starts
        when the connection is accepted, or at the first byte of a request on
        a kept connection, and does not restart with every byte as the read
        timeout does: a peer trickling a head cannot hold the worker.
        """
        since = math.inf if self.head_since is None else self.head_since
        if len(self.requests) > self.running:
            for req in self.requests.values():
                if not req.started and req.gone is None and req.since < since:
                    since = req.since
        return since + self.worker.options.request_header_timeout

    def _dispatch(self, event: ev.Event) -> None:
        kind = type(event)
        rid = event.request_id
        req = self.requests.get(rid)
        if kind is ev.StdinData:
            if req is not None:
                self._push(req, req.body, event.data)  # type: ignore[attr-defined]
        elif kind is ev.StdinEnd:
            if req is not None:
                req.input_done = True
                req.body.end()
        elif kind is ev.DataChunk:
            if req is not None and req.data is not None:
                self._push(req, req.data, event.data)  # type: ignore[attr-defined]
        elif kind is ev.DataEnd:
            if req is not None and req.data is not None:
                req.data.end()
        elif kind is ev.BeginRequest:
            self._begin(event)  # type: ignore[arg-type]
        elif kind is ev.Params:
            if req is not None:
                req.params = event.params  # type: ignore[attr-defined]
                req.started = True
                self.running += 1
                assert self._nursery is not None
                self._nursery.start_soon(self.worker._serve_request, self, req)
        elif kind is ev.AbortRequest:
            if req is not None and req.gone is None:
                # (Once gone, the request is being answered already.)
                log.info("request %d from %s aborted by the web server", rid, self.peer)
                req.abort("aborted by the web server")
                if not req.started:
                    self._spawn(self._finish_unstarted(req, b"", 1))
        elif kind is ev.RequestRejected:
            reason = event.reason  # type: ignore[attr-defined]
            log.warning("rejected request %d from %s: %s", rid, self.peer, reason)
            if req is not None:
                if req.started:
                    if event.http_status == 413:  # type: ignore[attr-defined]
                        # Cut at max_body_size: the app's next read raises,
                        # so a partial body is never taken for the whole.
                        too_large = RequestBodyTooLarge(reason)
                        req.body.fail(too_large)
                        if req.data is not None:
                            req.data.fail(too_large)
                    else:
                        req.body.end()  # the app gets what arrived, then EOF
                else:
                    status = event.http_status  # type: ignore[attr-defined]
                    answer = error_response(status)
                    req.gone = reason
                    self._spawn(self._finish_unstarted(req, answer, 1))
        elif kind is ev.RequestRefused:
            self._refused()
            self.refusals += 1
            log_refusal(
                log,
                self.refusals,
                "refused request id %d from %s: protocol status %d (role %d)",
                rid,
                self.peer,
                event.protocol_status,  # type: ignore[attr-defined]
                event.role,  # type: ignore[attr-defined]
            )

    def _push(self, req: _Request, body: SpooledBody, data: bytes) -> None:
        """Keep input for the app; a full disk fails that request, not the connection."""
        try:
            body.push(data)
        except OSError as exc:
            log.error(
                "request %d from %s: cannot keep its body (%s); the app gets an error",
                req.rid,
                self.peer,
                exc,
            )
            body.fail(exc)

    def _begin(self, event: ev.BeginRequest) -> None:
        worker = self.worker
        rid = event.request_id
        if worker.active_requests >= worker.options.max_reqs:
            self.refusals += 1
            log_refusal(
                log,
                self.refusals,
                "refused request id %d from %s: %d requests in progress (max_reqs): OVERLOADED",
                rid,
                self.peer,
                worker.active_requests,
            )
            self.conn.end_request(rid, 0, ProtocolStatus.OVERLOADED)
            self._refused()
            return
        req = _Request(rid, event.role, event.keep_conn, worker.options.spool_threshold)
        now = trio.current_time()
        req.since = now if self.head_since is None else self.head_since
        self.head_since = None
        self.requests[rid] = req
        worker.active_requests += 1

    def _refused(self) -> None:
        """A BEGIN_REQUEST was answered with a refusal: that request is over."""
        if not self.requests:
            self.head_since = None
            self.quiet_since = trio.current_time()

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            with contextlib.suppress(ClientGone):
                await work

        assert self._nursery is not None
        self._nursery.start_soon(run)

    async def _finish_unstarted(self, req: _Request, answer: bytes, app_status: int) -> None:
        try:
            await self.end(req, app_status, answer, force_tail=True)
        finally:
            req.close()
            self._retire(req)
            if not self.requests:
                self.became_idle()

    # -- writing ------------------------------------------------------------------

    async def _flush_control(self) -> None:
        """Send what the connection answered by itself (GET_VALUES, refusals)."""
        if self.lock.locked():
            return  # the holder sends everything queued before it lets go
        # Taken without a checkpoint: this runs after every read, and usually
        # finds nothing to send.
        self.lock.acquire_nowait()
        try:
            # With no app running, all that is queued is the connection's own
            # answers: see _flush_locked's ``patient``.
            await self._flush_locked(patient=self.running > 0)
        finally:
            self.lock.release()

    async def _flush_locked(self, req: _Request | None = None, patient: bool = True) -> None:
        """Write everything queued; the time spent waiting counts against ``req``'s send_timeout.

        Not ``patient``: nothing but answers the connection sent by itself
        (GET_VALUES results, refusals) is queued, and they are small; a peer
        that leaves them unread until the buffers fill is closed rather than
        waited for, since waiting would keep the connection busy, which
        max_conns never evicts (enough such peers would lock everyone out).
        """
        options = self.worker.options
        timeout = options.read_timeout
        while True:
            data = self.conn.data_to_send()
            if not data:
                return
            if self.broken is not None:
                raise ClientGone(self.broken)
            # Fast path: the socket usually takes it all at once, with no
            # trip through the scheduler (the lock was a checkpoint already).
            try:
                sent = os.write(self.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._break(f"writing to the web server failed: {exc.strerror or exc}")
                raise ClientGone(self.broken or "") from None
            if sent == len(data):
                continue
            if not patient:
                self._break("it does not read the answers to what it sends", warning=True)
                raise ClientGone(self.broken or "")
            # Never cancelled half way: a partial record would corrupt the
            # connection for every other request on it. One wait is bounded
            # by read_timeout, and all of a request's waits by send_timeout, so
            # a peer that reads a little now and then cannot hold it forever.
            budget = timeout
            if req is not None:
                budget = min(timeout, options.send_timeout - req.send_waited)
            start = trio.current_time()
            with trio.CancelScope(shield=True, deadline=start + budget) as timer:
                try:
                    await self.stream.send_all(memoryview(data)[sent:])
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._break(f"writing to the web server failed: {exc.__cause__ or exc}")
            if req is not None:
                req.send_waited += trio.current_time() - start
            if timer.cancelled_caught:
                if req is not None and budget < timeout:
                    self._break(
                        f"request {req.rid}: the web server took more than "
                        f"{options.send_timeout:g}s in all to read the answer (send_timeout)",
                        warning=True,
                    )
                else:
                    self._break(f"the web server read nothing for {timeout:g}s")
            if self.broken is not None:
                raise ClientGone(self.broken)

    def _break(self, reason: str, *, warning: bool = False) -> None:
        """The connection cannot be written any more: end it, and only it."""
        if self.broken is None:
            level = logging.WARNING if warning else logging.INFO
            log.log(level, "connection from %s: %s", self.peer, reason)
            self._end(reason)

    def evict(self) -> None:
        """Close this quiet connection to make room for a new one (the caller logs it)."""
        if self.broken is None:
            self._end("closed to make room for a new connection (max_conns)")

    def _end(self, reason: str) -> None:
        self.broken = reason
        self._abort_all(reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def send_stdout(self, req: _Request, data: bytes) -> None:
        """Send part of the response, a slice per turn; raises ClientGone."""
        if len(data) <= _SLICE:
            pieces: Sequence[bytes | memoryview] = (data,)
        else:
            view = memoryview(data)
            pieces = [view[i : i + _SLICE] for i in range(0, len(data), _SLICE)]
        for piece in pieces:
            async with self.lock:
                if req.gone is not None:
                    raise ClientGone(req.gone)
                self.conn.send_stdout(req.rid, piece if type(piece) is bytes else bytes(piece))
                await self._flush_locked(req)

    async def send_stderr(self, req: _Request, data: bytes) -> None:
        async with self.lock:
            if req.gone is not None:
                raise ClientGone(req.gone)
            self.conn.send_stderr(req.rid, data)
            await self._flush_locked(req)

    async def end(
        self, req: _Request, app_status: int, tail: bytes = b"", *, force_tail: bool = False
    ) -> None:
        """Send ``tail`` (the rest of the response) and END_REQUEST, and retire the id."""
        if len(tail) > _SLICE and req.gone is None:
            await self.send_stdout(req, tail)
            tail = b""
        async with self.lock:
            if self.broken is not None:
                raise ClientGone(self.broken)
            if req.ended:
                return
            if tail and (req.gone is None or force_tail):
                self.conn.send_stdout(req.rid, tail)
            # Retired before the bytes leave: the web server may reuse the id
            # as soon as it reads END_REQUEST.
            self._retire(req)
            req.ended = True
            self.conn.end_request(req.rid, app_status)
            await self._flush_locked(req)


class TrioWorker:
    """Serve FastCGI connections on ``listeners`` with trio until stopped.

    Same interface as :class:`fcgi.sync_worker.SyncWorker`. ``app`` is WSGI or
    ASGI (``options.interface``, "auto" detects it). Construct it in the process
    that will serve (after fork); :meth:`serve_forever` starts ``trio.run``.
    """

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        app: Any,
        options: ServerOptions | None = None,
        hooks: WorkerHooks | None = None,
    ) -> None:
        self.listeners = list(listeners)
        self.app = app
        self.options = options or ServerOptions()
        self.hooks: WorkerHooks = hooks or NoHooks()
        self.interface = resolve_interface(app, self.options.interface)
        opts = self.options
        # Any connection may use the whole process's capacity; GET_VALUES tells.
        self.limits = replace(
            opts.limits,
            max_requests=max(1, opts.max_reqs),
            max_conns=opts.max_conns,
            max_reqs=opts.max_reqs,
        )
        #: Requests accepted and not yet answered, over every connection.
        self.active_requests = 0
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._connections: set[_Connection] = set()
        self._state: dict[str, Any] | None = None
        self._limiter: trio.CapacityLimiter | None = None
        #: Listeners still being accepted on.
        self._accepting = 0

    # -- control ------------------------------------------------------------------

    def stop(self) -> None:
        """Stop accepting, finish the requests in progress, return. Signal- and thread-safe."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def connections(self) -> int:
        return len(self._connections)

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- main ---------------------------------------------------------------------

    def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Run ``trio.run`` until stopped; raises LifespanFailure if ASGI startup fails.

        ``ready()`` is called once connections can be served: after an ASGI
        app's lifespan startup succeeded, so that a supervisor never counts
        as serving a worker whose app refused to start.
        """
        forkguard.arm()
        try:
            trio.run(self._main, ready)
        except BaseExceptionGroup as group:
            raise _collapse(group) from None

    async def _main(self, ready: Callable[[], None] | None) -> None:
        failure: LifespanFailure | None = None
        self._limiter = trio.CapacityLimiter(max(1, self.options.threads))
        async with trio.open_nursery() as system:
            try:
                await self._run(system, ready)
            except LifespanFailure as exc:
                failure = exc
                system.cancel_scope.cancel()
        if failure is not None:
            log.error("%s", Lines(str(failure)))
            raise failure

    async def _run(self, system: trio.Nursery, ready: Callable[[], None] | None) -> None:
        lifespan: Lifespan | None = None
        if self.interface == "asgi":
            lifespan = Lifespan(self.app)
            await lifespan.startup(system)
            self._state = lifespan.state if lifespan.supported else None
        for sock in self.listeners:
            # The kernel holds a TCP connection until its first bytes arrive.
            defer_accept(sock, self.options.request_header_timeout)
        try:
            listeners = [trio.socket.from_stdlib_socket(sock) for sock in self.listeners]
            if ready is not None:
                ready()
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener, connections)
                    accepting.start_soon(self._wait_for_stop, accepting.cancel_scope)
                # Stopping: idle connections close now, busy ones when done.
                for c in list(self._connections):
                    c.wake()
        finally:
            if lifespan is not None:
                with trio.CancelScope(shield=True):
                    await lifespan.shutdown()

    async def _wait_for_stop(self, accepting: trio.CancelScope) -> None:
        while not self._stopping:
            await trio.lowlevel.wait_readable(self._wake_r)
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 64)
        accepting.cancel()

    def _begin_stop(self) -> None:
        if not self._stopping:
            self.stop()

    async def _accept_loop(
        self, listener: trio.socket.SocketType, connections: trio.Nursery
    ) -> None:
        self._accepting += 1
        #: True from an accept() that failed for lack of resources until one
        #: works: one log line per episode, not one per retry (ten a second).
        starved = False
        try:
            while True:
                try:
                    sock, peer = await listener.accept()
                except OSError as exc:
                    if exc.errno in ACCEPT_RETRY:
                        continue
                    if exc.errno in ACCEPT_STARVED:
                        if not starved:
                            log.error(
                                "accept failed: %s; retrying every %gs", exc.strerror, ACCEPT_PAUSE
                            )
                            starved = True
                        await trio.sleep(ACCEPT_PAUSE)
                        continue
                    if exc.errno in _LISTENER_GONE:
                        log.error("accept failed: %s; no longer accepting on it", exc)
                        return
                    # Unknown: say so, and keep the connections we have.
                    log.error("accept failed: %s", exc)
                    await trio.sleep(_ACCEPT_BACKOFF)
                    continue
                if starved:
                    starved = False
                    log.warning("accepting connections again")
                try:
                    self._admit(sock, peer, connections)
                except Exception:
                    # Whatever went wrong concerns this one connection.
                    log.exception("could not take a new connection")
                    sock.close()
        finally:
            self._accepting -= 1
            if not self._accepting:
                self._begin_stop()  # nothing left to accept on: finish and exit

    def _admit(self, sock: trio.socket.SocketType, peer: object, connections: trio.Nursery) -> None:
        """Serve a new connection, unless it is not allowed or there is no room for it."""
        options = self.options
        self.hooks.connection_accepted()
        name = describe_peer(peer, sock)
        if options.allowed_clients and not peer_allowed(peer, options.allowed_clients):
            log.warning("refused connection from %s: not an allowed client", name)
            sock.close()
            return
        if len(self._connections) >= options.max_conns:
            victim = self._quietest()
            if victim is None:
                log.warning(
                    "closing connection from %s: all %d connections are busy (max_conns)",
                    name,
                    len(self._connections),
                )
                sock.close()
                return
            log.warning(
                "closing the connection from %s, quiet for %.1fs, to make room for one "
                "from %s: %d connections (max_conns)",
                victim.peer,
                trio.current_time() - victim.quiet_since,
                name,
                len(self._connections),
            )
            self._connections.discard(victim)
            victim.evict()
        c = _Connection(self, sock, name)
        self._connections.add(c)
        connections.start_soon(self._serve_connection, c)

    def _quietest(self) -> _Connection | None:
        """The connection quiet for longest (no request in progress), or None if all are busy.

        Idle kept connections and ones that have not sent a whole request
        head yet cost the attacker nothing to open: when the slots run out,
        one of them makes room instead of a new connection being refused.
        """
        best: _Connection | None = None
        for c in self._connections:
            if c.quiet and (best is None or c.quiet_since < best.quiet_since):
                best = c
        return best

    async def _serve_connection(self, c: _Connection) -> None:
        try:
            await c.serve()
        except Exception:
            # A bug met while serving one connection (the connection closed
            # already, in serve()) must not end the worker with every other
            # connection and request in it.
            log.exception("connection from %s failed", c.peer)
        finally:
            self._connections.discard(c)

    # -- one request ---------------------------------------------------------------

    async def _serve_request(self, c: _Connection, req: _Request) -> None:
        hooks = self.hooks
        status = 0
        head: bytes | None = None
        token = hooks.request_started(req.params)
        # What runs this request's app, for its stack in the slowlog.
        runner = stacks.track(token, trio.lowlevel.current_task())
        try:
            app_status = 0
            tail = b""
            with req.scope:
                answer = hooks.intercept(req.params)
                if answer is not None:
                    head = tail = render_answer(answer, req.params.get("REQUEST_METHOD", "GET"))
                    status = int(answer.status[:3])
                elif self.interface == "asgi":
                    status, app_status, head = await self._run_asgi(c, req)
                else:
                    status, app_status, head, tail = await self._run_wsgi(c, req, runner)
            if req.gone is not None:
                app_status = 1
            await c.end(req, app_status, tail)
        except ClientGone as exc:
            # Why was logged where it happened (write failure, abort, close):
            # one line per event, not one more per request it touched.
            log.debug("request %d from %s: not answered: %s", req.rid, c.peer, exc)
        finally:
            if not req.ended:
                # Cancelled from outside, or failed: a WSGI thread that goes on
                # in the background must find the request gone, not write.
                req.abort("the request did not finish")
            c.running -= 1
            req.close()
            c._retire(req)
            hooks.request_finished(token, status, head)
            stacks.untrack(token)
            if not c.requests:
                c.became_idle()
            if hooks.should_stop():
                self._begin_stop()

    async def _run_asgi(self, c: _Connection, req: _Request) -> tuple[int, int, bytes | None]:
        params = req.params
        scope = build_scope(params, mount=self.options.script_name, state=self._state)

        async def write(data: bytes) -> None:
            forkguard.check()  # a child the app forked must not answer a second time
            await c.send_stdout(req, data)

        async def stderr(data: bytes) -> None:
            forkguard.check()
            await c.send_stderr(req, data)

        responder = ASGIResponder(
            self.app,
            scope,
            req.body,
            write,
            stderr=stderr if self.options.stderr_tracebacks else None,
            body_timeout=self.options.read_timeout,
            where=f"{scope['method']} {params.get('REQUEST_URI') or scope['path']}",
        )
        req.responder = responder
        if req.gone is not None:
            responder.disconnect(req.gone)
        result = await responder.run()
        forkguard.verify()
        return result

    async def _run_wsgi(
        self, c: _Connection, req: _Request, runner: stacks.Runner | None = None
    ) -> tuple[int, int, bytes | None, bytes]:
        options = self.options
        params = req.params
        timeout = options.read_timeout

        async def for_request(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
            # Runs in trio on behalf of the app's thread; ABORT cancels it.
            if req.gone is not None:
                raise ClientGone(req.gone)
            with trio.CancelScope() as scope:
                req.helpers.add(scope)
                try:
                    return await fn(*args)
                finally:
                    req.helpers.discard(scope)
            raise ClientGone(req.gone or "request cancelled")

        def to_trio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
            # In a child the app forked there is no trio loop to wait for.
            forkguard.check()
            try:
                return trio.from_thread.run(for_request, fn, *args)
            except (trio.RunFinishedError, trio.Cancelled):
                raise ClientGone("the worker is shutting down") from None

        async def read(body: SpooledBody) -> bytes:
            with trio.move_on_after(timeout):
                return await body.receive()
            log.warning("request body from %s cut short: nothing arrived for %gs", c.peer, timeout)
            # Not a clean end: this read and the next raise, so a cut-off body
            # is never taken for a whole one.
            error = RequestBodyIncomplete(f"request body cut short: nothing for {timeout:g}s")
            body.fail(error)
            raise error

        def reader(body: SpooledBody) -> Callable[[], bytes]:
            def fill() -> bytes:
                if req.gone is not None:
                    return b""
                try:
                    return to_trio(read, body)
                except ClientGone:
                    return b""

            return fill

        def send(data: bytes, flush: bool) -> None:
            if req.gone is not None:
                raise ClientGone(req.gone)
            if not flush:
                req.deferred.append(data)
                return
            if req.deferred:
                data = b"".join([*req.deferred, data])
                req.deferred.clear()
            to_trio(c.send_stdout, req, data)

        def stderr(data: bytes) -> None:
            with contextlib.suppress(ClientGone):
                to_trio(c.send_stderr, req, data)

        sink = stderr if options.stderr_tracebacks else None
        errors = ErrorStream(sink)
        environ = build_environ(
            params,
            InputStream(reader(req.body), content_length(params)),
            errors,
            mount=options.script_name,
            multithread=True,
            multiprocess=options.multiprocess,
        )
        if req.data is not None:
            data_length = int_param(params, "FCGI_DATA_LENGTH")
            environ["fcgi.data"] = InputStream(reader(req.data), data_length)
        environ["fcgi.role"] = Role(req.role).name
        app: WSGIApp = self.app

        def work() -> tuple[int, int, bytes | None]:
            if runner is not None:
                runner.thread = threading.get_ident()  # the slowlog reads this thread
            try:
                result = respond(app, environ, send, sink)
            except ClientGone:
                return 0, 1, None
            finally:
                if runner is not None:
                    runner.thread = None  # trio reuses the thread for other requests
                # A child forked in this thread has no trio loop to go back to.
                forkguard.verify()
            errors.flush()
            return result

        assert self._limiter is not None
        status, app_status, head = await trio.to_thread.run_sync(
            work, limiter=self._limiter, abandon_on_cancel=True
        )
        tail = b"".join(req.deferred)
        req.deferred.clear()
        return status, app_status, head, tail
