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

What it shares with the asyncio worker (a request's state, what each event
of the core does, the head deadline, eviction at ``max_conns``, one request's
life, the ASGI request cycle) is in :mod:`fcgi.multiplex` and :mod:`fcgi.asgi`;
here is how trio waits for it all.

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
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio

from fcgi import events as ev
from fcgi import forkguard, stacks
from fcgi.asgi import Lifespan, LifespanFailure, Message
from fcgi.driver import (
    ACCEPT_PAUSE,
    ACCEPT_RETRY,
    ACCEPT_STARVED,
    DRAIN_SECONDS,
    MAX_DRAIN,
    CoreFactory,
    wsgi_environ,
)
from fcgi.errors import RequestBodyIncomplete
from fcgi.escape import Lines
from fcgi.multiplex import MultiplexConnection, MultiplexWorker, Request
from fcgi.records import Role
from fcgi.sockets import defer_accept, describe_peer
from fcgi.spool import SpooledBody
from fcgi.wsgi import BodyCutOff, ClientGone, ErrorStream, WSGIApp, respond

log = logging.getLogger("fcgi.worker")

T = TypeVar("T")

_RECV_SIZE = 256 * 1024
#: Most STDOUT bytes one request writes per turn of the connection's write lock
#: (two aligned records): the grain of fair interleaving between ids.
_SLICE = 2 * 0xFFF8
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


async def _take(body: SpooledBody) -> bytes:
    """The next piece of ``body`` (b"" at its end), as a trio checkpoint."""
    data = await body.receive()
    # A scheduling point that cannot be cancelled: the piece is already
    # taken off the buffer and must not be lost.
    await trio.lowlevel.cancel_shielded_checkpoint()
    return data


class _TrioWaits:
    """How :class:`~fcgi.asgi.ASGIResponder` waits under trio (see :class:`fcgi.asgi.Waits`)."""

    async def checkpoint(self) -> None:
        await trio.lowlevel.checkpoint()

    async def pause(self) -> None:
        await trio.lowlevel.checkpoint()

    async def next_piece(self, body: SpooledBody, timeout: float) -> bytes | None:
        with trio.move_on_after(timeout):
            return await _take(body)
        return None

    def event(self) -> trio.Event:
        return trio.Event()


class _Channel:
    """A trio memory channel as the queue :class:`fcgi.asgi.Lifespan` takes."""

    def __init__(self, size: int) -> None:
        self._send, self._receive = trio.open_memory_channel[Message](size)

    async def put(self, item: Message) -> None:
        await self._send.send(item)

    async def get(self) -> Message:
        return await self._receive.receive()


class _TrioLifespan(Lifespan):
    """The ASGI lifespan on trio: the app's call runs in ``nursery``, in a scope of its own."""

    def __init__(self, app: Any, nursery: trio.Nursery, stopping: Callable[[], bool]) -> None:
        # The app sends at most 3 messages that matter: with room for 10, its
        # send() never waits for long.
        super().__init__(app, _Channel(1), _Channel(10), trio.Event(), stopping)
        self._nursery = nursery
        self._scope = trio.CancelScope()

    def _start(self) -> None:
        self._nursery.start_soon(self._run_in_scope)

    async def _run_in_scope(self) -> None:
        with self._scope:
            await self._run_app()

    async def _cancel(self) -> None:
        self._scope.cancel()

    async def _wait_exited(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._exited.wait()

    async def _next_reply(self, timeout: float) -> Any:
        with trio.move_on_after(timeout):
            return await self._from_app.get()
        return None


class _Request(Request):
    """One request id on trio: the scope its app runs in, and its WSGI thread's calls."""

    __slots__ = ("deferred", "helpers", "scope")

    def __init__(self, rid: int, role: int, keep_conn: bool, spool_threshold: int) -> None:
        data = None
        if role == Role.FILTER:
            data = SpooledBody(spool_threshold, trio.lowlevel.ParkingLot)
        body = SpooledBody(spool_threshold, trio.lowlevel.ParkingLot)
        super().__init__(rid, role, keep_conn, body, data)
        #: Cancelled by ABORT_REQUEST: wraps the app's run.
        self.scope = trio.CancelScope()
        #: Scopes of trio calls made on behalf of this request's WSGI thread.
        self.helpers: set[trio.CancelScope] = set()
        #: WSGI output the thread handed over without flushing (sent with END_REQUEST).
        self.deferred: list[bytes] = []

    def stop_app(self) -> None:
        self.scope.cancel()
        for scope in self.helpers:
            scope.cancel()

    def app_scope(self) -> trio.CancelScope:
        return self.scope


class _Connection(MultiplexConnection[_Request]):
    """One accepted connection: its reader, its requests, its fair write lock."""

    def __init__(
        self,
        worker: TrioWorker,
        sock: trio.socket.SocketType,
        peer: str,
        core: tuple[CoreFactory, bool],
    ) -> None:
        super().__init__(worker, peer, sock.fileno(), core)
        self.stream = trio.SocketStream(sock)
        self.lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._read_scope: trio.CancelScope | None = None
        self._woken = False

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
    def writing(self) -> bool:
        return self.lock.locked()

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

    async def _close(self) -> None:
        with trio.CancelScope(shield=True):
            sock = self.stream.socket
            if self.unread_input and self.broken is None:
                # Closing with unread input makes the kernel send a reset, which
                # can destroy the answer in flight. Half-close, then drain.
                with contextlib.suppress(OSError), trio.move_on_after(DRAIN_SECONDS):
                    sock.shutdown(socket.SHUT_WR)
                    drained = 0
                    while drained < MAX_DRAIN:
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
            head_deadline = self._head_deadline()
            if head_deadline <= now:
                # No answer is in flight to protect by draining the input.
                self.broken = self._head_timed_out()
                return self.broken
            with trio.CancelScope() as scope:
                scope.deadline = min(now + timeout if timed else math.inf, head_deadline)
                self._read_scope = scope
                try:
                    data = await self.stream.receive_some(_RECV_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._lost(exc, reading=True)
                    return self.broken or "the connection failed"
            self._read_scope = None
            if scope.cancelled_caught:
                if self._woken or trio.current_time() >= head_deadline:
                    # Woken, or the head deadline passed: the loop's top says which.
                    self._woken = False
                    continue
                self.broken = self._read_timed_out()  # a stalled peer: nothing to drain
                return self.broken
            if not data:
                self._peer_closed()
                # Its line is written: the requests it cut short are aborted
                # (see serve) and nothing more is written, not even their
                # END_REQUEST, whose failure would be a second line.
                self.broken = "the web server closed the connection"
                return self.broken
            reason = self._feed(data)
            if reason is not None:
                return reason
            try:
                await self._flush_control()
            except ClientGone as exc:
                # The peer left before it read what the connection answered
                # by itself (GET_VALUES, a refusal): _break logged it.
                return str(exc)

    # -- requests (see fcgi.multiplex.MultiplexConnection) -----------------------

    def _new_request(self, event: ev.BeginRequest) -> _Request:
        threshold = self.worker.options.spool_threshold
        return _Request(event.request_id, event.role, event.keep_conn, threshold)

    def _start(self, req: _Request) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self.worker.serve_request, self, req)

    def _answer_unstarted(self, req: _Request, answer: bytes) -> None:
        self._spawn(self._finish_unstarted(req, answer))

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            with contextlib.suppress(ClientGone):
                await work

        assert self._nursery is not None
        self._nursery.start_soon(run)

    async def _finish_unstarted(self, req: _Request, answer: bytes) -> None:
        try:
            await self.end(req, 1, answer, force_tail=True)
        finally:
            self._drop(req)

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
        timeout = self.worker.options.read_timeout
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
                self._lost(exc.strerror or exc)
                raise ClientGone(self.broken or "") from None
            if sent == len(data):
                continue
            if not patient:
                self._break("it does not read the answers to what it sends", warning=True)
                raise ClientGone(self.broken or "")
            # Never cancelled half way: a partial record would corrupt the
            # connection for every other request on it; the wait is bounded
            # instead (see _send_budget).
            budget = timeout if req is None else self._send_budget(req)
            start = trio.current_time()
            with trio.CancelScope(shield=True, deadline=start + budget) as timer:
                try:
                    await self.stream.send_all(memoryview(data)[sent:])
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._lost(exc.__cause__ or exc)
            if req is not None:
                req.send_waited += trio.current_time() - start
            if timer.cancelled_caught:
                self._send_timed_out(req, budget)
            if self.broken is not None:
                raise ClientGone(self.broken)

    def _lost(self, detail: object, *, reading: bool = False) -> None:
        """A read or a write failed (the peer reset or closed): one line, then end it.

        A peer that leaves mid-request fails the reader and the writer at
        once, in either order: whichever comes first writes the line, the
        same words for both, and the other finds the connection broken.
        """
        if self.broken is not None:
            return
        if self.requests:
            log.info("connection from %s failed mid-request: %s", self.peer, detail)
        elif not reading:  # an idle connection reset by its peer is no news
            log.info("connection from %s: writing to the web server failed: %s", self.peer, detail)
        self._end("the connection failed")

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
            if self._queue_end(req, app_status, tail, force_tail):
                await self._flush_locked(req)


class TrioWorker(MultiplexWorker[_Connection, _Request]):
    """Serve connections on ``listeners`` with trio until stopped.

    Each listener's connections speak its protocol: FastCGI, uwsgi or SCGI
    (:meth:`~fcgi.driver.WorkerBase.core_for`).

    Same interface as :class:`fcgi.sync_worker.SyncWorker`. ``app`` is WSGI or
    ASGI (``options.interface``, "auto" detects it). Construct it in the process
    that will serve (after fork); :meth:`serve_forever` starts ``trio.run``.
    """

    #: Bounds the threads that run WSGI apps (``threads``); made inside trio.run.
    _limiter: trio.CapacityLimiter | None = None
    #: Listeners still being accepted on.
    _accepting = 0

    def _setup(self) -> None:
        # Set on the instance: the base class may be compiled (setup.py), and
        # a compiled class reads its attributes from the instance only.
        self.waits = _TrioWaits()
        super()._setup()

    def now(self) -> float:
        return trio.current_time()

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
            lifespan = _TrioLifespan(self.app, system, lambda: self._stopping)
            await lifespan.startup()
            if lifespan.interrupted:
                return
            self._state = lifespan.state if lifespan.supported else None
        for sock in self.listeners:
            # The kernel holds a TCP connection until its first bytes arrive.
            defer_accept(sock, self.options.request_header_timeout)
        try:
            listeners = [
                (trio.socket.from_stdlib_socket(sock), self.core_for(sock))
                for sock in self.listeners
            ]
            if ready is not None:
                ready()
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    for listener, core in listeners:
                        accepting.start_soon(self._accept_loop, listener, connections, core)
                    accepting.start_soon(self._wait_for_stop, accepting.cancel_scope)
                # Stopping: idle connections close now, busy ones when done.
                for c in list(self.live):
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
        self,
        listener: trio.socket.SocketType,
        connections: trio.Nursery,
        core: tuple[CoreFactory, bool],
    ) -> None:
        """Accept on ``listener`` until stopped; its connections speak what ``core`` makes."""
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
                    self._admit(sock, peer, connections, core)
                except Exception:
                    # Whatever went wrong concerns this one connection.
                    log.exception("could not take a new connection")
                    sock.close()
        finally:
            self._accepting -= 1
            if not self._accepting:
                self._begin_stop()  # nothing left to accept on: finish and exit

    def _admit(
        self,
        sock: trio.socket.SocketType,
        peer: object,
        connections: trio.Nursery,
        core: tuple[CoreFactory, bool],
    ) -> None:
        """Serve a new connection, unless it is not allowed or there is no room for it."""
        name = describe_peer(peer, sock)
        if not self.admit(peer, name):
            sock.close()
            return
        c = _Connection(self, sock, name, core)
        self.live.add(c)
        connections.start_soon(self._serve_connection, c)

    async def _serve_connection(self, c: _Connection) -> None:
        try:
            await c.serve()
        except Exception:
            # A bug met while serving one connection (the connection closed
            # already, in serve()) must not end the worker with every other
            # connection and request in it.
            log.exception("connection from %s failed", c.peer)
        finally:
            self.live.discard(c)

    # -- one request ---------------------------------------------------------------

    def _track(self, token: object, req: _Request) -> stacks.Runner:
        return stacks.track(token, trio.lowlevel.current_task())

    async def _run_wsgi(
        self, c: _Connection, req: _Request, runner: stacks.Runner | None
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
                return await _take(body)
            # Not a clean end: this read and the next raise, so a cut-off body
            # is never taken for a whole one.
            if not c.conn.mid_record:
                log.warning(
                    "request body from %s cut short: nothing arrived for %gs (read_timeout)",
                    c.peer,
                    timeout,
                )
            # Else the peer stopped in the middle of a record (a uwsgi or SCGI
            # body is one): the connection's reader times the same silence
            # and writes the event's one line as it closes the connection.
            error = RequestBodyIncomplete(f"request body cut short: nothing for {timeout:g}s")
            body.fail(error)
            raise error

        def reader(body: SpooledBody) -> Callable[[], bytes]:
            def fill() -> bytes:
                # Aborted, or the web server went away: the body the app has
                # not read yet will never come. Its read fails, as the sync
                # worker's does, so a cut-off upload is never taken for a
                # whole one; the event's line was logged where it was found.
                if req.gone is not None:
                    raise BodyCutOff(f"request body cut short: {req.gone}")
                try:
                    data = to_trio(read, body)
                except ClientGone as exc:
                    raise BodyCutOff(f"request body cut short: {exc}") from None
                if not data and req.gone is not None and not (body is req.body and req.input_done):
                    # The wait ended for the abort (or the web server leaving),
                    # not for the end of the body.
                    raise BodyCutOff(f"request body cut short: {req.gone}")
                return data

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

        sink = stderr if c.tracebacks else None
        errors = ErrorStream(sink)
        environ = wsgi_environ(
            params,
            options,
            errors,
            reader(req.body),
            None if req.data is None else reader(req.data),
            role=req.role,
            multithread=True,
        )
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
