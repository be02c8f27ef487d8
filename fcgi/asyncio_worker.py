"""The asyncio worker: ASGI apps on asyncio (uvloop when it is installed).

Many ASGI apps call asyncio themselves (``asyncio.sleep``, ``create_task``,
asyncio-only database drivers) and cannot run under trio at all; and
uvloop's C event loop is what makes uvicorn fast. This driver runs the same
sans-IO core as the trio worker (:class:`~fcgi.connection.ServerConnection`)
under asyncio, and keeps its rules: many connections, every request id on
them at once, ``max_conns`` / ``max_reqs`` (OVERLOADED past it), the body
caps of the core, the three timeouts, backpressure, the pool's hooks, a
graceful stop. ASGI 3 apps only: a WSGI app is a configuration error (the
trio and sync workers run those).

One process runs one event loop (started by :meth:`AsyncioWorker.serve_forever`,
so it is fresh after a fork). Each connection is an :class:`asyncio.Protocol`:
``data_received`` feeds the core and routes the events, bodies go into a
:class:`~fcgi.spool.SpooledBody` per request (never blocking the reader: a
slow app cannot stall the other ids), and each request's app runs in a task
of its own. Output needs no lock: a record is queued and handed to the
transport in one synchronous step, so records of different ids never
interleave inside one another. A response's last piece and its END_REQUEST
leave in one write when the app returns at once, as most do.

Backpressure: when the transport's buffer passes its high-water mark the
apps that write wait (``read_timeout`` per wait, ``send_timeout`` in all for a
request) instead of the worker buffering whole responses; large pieces go a
slice at a time, so two big responses on one connection take turns.

ABORT_REQUEST (or the web server closing the connection): the app's
``receive()`` returns ``http.disconnect``, its ``send()`` raises, and its task
is cancelled at its next await (after the disconnect reached a receive()
that was waiting). END_REQUEST follows as soon as the task has unwound.

What it shares with the trio worker (a request's state, what each event of
the core does, the head deadline, eviction at ``max_conns``, one request's
life, the ASGI request cycle and lifespan rules) is in :mod:`fcgi.multiplex`
and :mod:`fcgi.asgi`; here is how asyncio waits for it all. It never imports
trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import socket
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final, cast

from fcgi import events as ev
from fcgi import forkguard, stacks
from fcgi.asgi import Lifespan, LifespanFailure, Write
from fcgi.driver import DRAIN_SECONDS, MAX_DRAIN, CoreFactory
from fcgi.errors import ConfigError
from fcgi.escape import Lines
from fcgi.hooks import WorkerHooks
from fcgi.listen_queue import listen_queue
from fcgi.multiplex import MultiplexConnection, MultiplexWorker, Request
from fcgi.options import ServerOptions
from fcgi.sockets import defer_accept, describe_peer
from fcgi.spool import SpooledBody
from fcgi.wsgi import ClientGone

log = logging.getLogger("fcgi.worker")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

#: Most STDOUT bytes one write hands to the transport before the writer checks
#: for backpressure: bounds what one request adds to the transport's buffer
#: beyond its high-water mark. Also the most a request writes before it lets
#: the other tasks run: the grain of turn-taking between ids.
_SLICE: Final = 256 * 1024
#: The listen backlog used if the kernel cannot tell a listener's own:
#: asyncio's servers call listen() again, and this is fcgi's default.
_FALLBACK_BACKLOG: Final = 511

WSGI_REFUSED: Final = (
    "the asyncio worker runs ASGI apps only and {app!r} is a WSGI app: "
    "use --worker sync or --worker trio for it"
)


def default_loop_factory() -> LoopFactory:
    """uvloop's loop when uvloop is importable (``pip install fcgi[uvloop]``), else asyncio's."""
    try:
        # Here, not at the top: an optional dependency, looked for only when
        # a worker is made without a loop factory of its own.
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


class _Parking:
    """Where a request's app waits for more of its body (:class:`fcgi.spool.Parking` on asyncio).

    One waiter at a time: only the app's ``receive()`` reads a body.
    """

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def unpark_all(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def park(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None


class _AsyncioWaits:
    """How :class:`~fcgi.asgi.ASGIResponder` waits under asyncio (see :class:`fcgi.asgi.Waits`)."""

    #: checkpoint() does nothing: the responder need not call it.
    needs_checkpoints = False

    async def checkpoint(self) -> None:
        """Nothing: asyncio wants no scheduling point where trio does."""

    async def pause(self) -> None:
        await asyncio.sleep(0)

    async def next_piece(self, body: SpooledBody, timeout: float) -> bytes | None:
        chunk = body.receive_nowait()
        if chunk is not None:
            return chunk
        try:
            async with asyncio.timeout(timeout):
                return await body.receive()
        except TimeoutError:
            return None

    def event(self) -> asyncio.Event:
        return asyncio.Event()


class _AsyncioLifespan(Lifespan):
    """The ASGI lifespan on asyncio: the app's call runs in a task of its own."""

    def __init__(self, app: Any, stopping: Callable[[], bool]) -> None:
        super().__init__(app, asyncio.Queue(), asyncio.Queue(), asyncio.Event(), stopping)
        self._task: asyncio.Task[None] | None = None

    def _start(self) -> None:
        self._task = asyncio.create_task(self._run_app())

    async def _cancel(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _wait_exited(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._exited.wait()

    async def _next_reply(self, timeout: float) -> Any:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                return await self._from_app.get()
        return None


class _Request(Request):
    """One request id on asyncio: the task that runs its app.

    It is also the scope the app runs in (see :meth:`__exit__`). FCGI_DATA
    (the FILTER role) has no place in an ASGI scope: it is not kept.
    """

    __slots__ = ("streak", "task")

    def __init__(self, rid: int, role: int, keep_conn: bool, spool_threshold: int) -> None:
        super().__init__(rid, role, keep_conn, SpooledBody(spool_threshold, _Parking), None)
        #: Bytes written since this request's task last let others run.
        self.streak = 0
        #: The task running the app, once started.
        self.task: asyncio.Task[None] | None = None

    def stop_app(self) -> None:
        task = self.task
        if task is not None and not task.done():
            # Soon, not now: a receive() woken by the disconnect returns
            # http.disconnect to the app first, and a task is never cancelled
            # before its first step (its bookkeeping would never run).
            task.get_loop().call_soon(_cancel, task)

    def app_scope(self) -> _Request:
        return self

    def __enter__(self) -> _Request:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Swallow the cancellation :meth:`stop_app` sent: the request goes on to END_REQUEST."""
        if kind is None or not issubclass(kind, asyncio.CancelledError) or self.gone is None:
            return False  # not an abort (a cancellation then is the loop being torn down)
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
        return True


def _cancel(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()


class _TaskView:
    """What :func:`fcgi.stacks.request_frames` reads of a task: its coroutine."""

    __slots__ = ("coro",)

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.coro = task.get_coro()


# -- one connection --------------------------------------------------------------------------


def _not_running() -> float:
    """The worker's clock before its loop runs: there is no time to tell yet."""
    raise RuntimeError("the worker is not running")


class _Connection(MultiplexConnection[_Request], asyncio.Protocol):
    """One accepted connection: the core's state, its requests, its timer."""

    def __init__(
        self, worker: AsyncioWorker, core: tuple[CoreFactory, bool], unix_name: str | None
    ) -> None:
        """``unix_name``: how a unix-socket listener's peers are named (None: TCP)."""
        super().__init__(worker, "unix socket", -1, core)
        self._unix_name = unix_name
        #: The worker as its own class (the base's ``worker`` has the base's type).
        self.aworker = worker
        self.loop = worker.loop
        #: The loop's clock, bound once (compiled, ``loop.time()`` looks the
        #: method up by name on each call, and a request reads it thrice).
        self._clock: Callable[[], float] = self.loop.time
        self.transport: asyncio.Transport | None = None
        #: True once it is being closed (a drain may still run).
        self.closing = False
        #: The transport's buffer is past its high-water mark: writers wait.
        self.paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        #: The flush queue_last scheduled, until a flush makes it pointless.
        self._flush_soon: asyncio.Handle | None = None
        #: Bytes thrown away so far while closing (see _close).
        self._drained = 0
        #: Since the last bytes arrived (or the connection last became idle).
        self.read_since = self.quiet_since
        self._timer: asyncio.TimerHandle | None = None
        #: When the timer fires: this connection's own, or the worker's watch.
        self._timer_at = math.inf
        #: True while the worker's watch of new connections keeps its first
        #: deadline instead of a timer of its own (see AsyncioWorker.watch).
        self._watched = False

    # -- life cycle -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        worker = self.aworker
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer: object
        if self._unix_name is not None:
            # A unix-socket peer has no address, and the kernel gives an
            # accepted connection its listener's name: named once per
            # listener, not asked of each connection (see _input_waiting).
            peer = ""
            self.peer = self._unix_name
        else:
            sock = self.transport.get_extra_info("socket")
            peer = transport.get_extra_info("peername")
            self.peer = describe_peer(peer, sock)
            self.fd = sock.fileno() if sock is not None else -1
        worker.everyone.add(self)
        if not worker.admit(peer, self.peer):
            self._refuse()
            return
        worker.live.add(self)
        worker.watch(self, self._deadline())

    def _refuse(self) -> None:
        self.broken = "refused"
        self.closing = True
        assert self.transport is not None
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        worker = self.aworker
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        elif self._watched:
            worker.unwatch(self)
        if self.broken is None:
            if self.requests and exc is not None:
                log.info("connection from %s failed mid-request: %s", self.peer, exc)
            self.broken = "the connection is closed"
        self.closing = True
        if self.requests:
            self._abort_all(self.broken)
        self.paused = False
        if self._drain_waiters:
            self._wake_writers()
        worker.live.discard(self)
        worker.everyone.discard(self)
        worker.check_done()

    def eof_received(self) -> bool:
        if self.closing:
            return False  # the drain is over: close
        self._peer_closed()
        if not self.requests:
            self._close()
            return False
        # Their END_REQUEST still goes out (the peer may read on after a
        # half-close); the connection closes once they are done (see wake).
        self._abort_all("the web server closed the connection")
        return True

    @property
    def writing(self) -> bool:
        return self.paused

    def _input_waiting(self) -> bool:
        if self.fd < 0 and self.transport is not None and not self.closing:
            # Looked up only now: a unix connection's socket is not asked for
            # when it is accepted, and this is needed only while stopping.
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                self.fd = sock.fileno()
        return super()._input_waiting()

    def wake(self) -> None:
        """Look again at whether to go on (stopping, closing)."""
        if self.closing or self.requests:
            return
        if (
            self.conn.should_close
            or self.conn.closed_by_peer
            or (self.aworker.stopping and self.head_since is None and not self._input_waiting())
        ):
            self._close()

    def became_idle(self) -> None:
        """The last request ended: close if due, else let the idle timeout run."""
        self.head_since = None
        now = self._clock()
        self.quiet_since = self.read_since = now
        if self.aworker.stopping or self.conn.should_close or self.conn.closed_by_peer:
            self.wake()

    def _end(self, reason: str) -> None:
        """Close now, nothing more written; requests in progress are aborted."""
        self.broken = reason
        self.closing = True
        self.aworker.live.discard(self)
        self._abort_all(reason)
        assert self.transport is not None
        if self.paused:
            self.transport.abort()  # what is queued would never be read
        else:
            self.transport.close()

    def _close(self) -> None:
        """Close after what is queued is written; drain first if input was left unread."""
        if self.closing:
            return
        self.closing = True
        self.aworker.live.discard(self)
        transport = self.transport
        assert transport is not None
        if self.paused:
            transport.abort()  # the peer reads nothing: what is queued would wait forever
            return
        if (
            self.unread_input
            and self.broken is None
            and not self.conn.closed_by_peer
            and transport.can_write_eof()
            # Draining connections hold descriptors max_conns does not count
            # (it counts live ones): past the fitted limit, no drain (a reset).
            and len(self.aworker.everyone) <= self.aworker.limits.max_conns
        ):
            # Closing with unread input makes the kernel send a reset, which
            # can destroy the answer in flight. Half-close, then drain.
            transport.write_eof()
            self.loop.call_later(DRAIN_SECONDS, transport.abort)
            return
        transport.close()

    # -- timeouts ---------------------------------------------------------------------

    def _deadline(self) -> float:
        """When the timer must fire: the next deadline, and within read_timeout at most."""
        timeout = self.aworker.options.read_timeout
        at = min(self._head_deadline(), self._clock() + timeout)
        if self.running == 0 or self.conn.mid_record:
            at = min(at, self.read_since + timeout)
        return at

    def _arm(self) -> None:
        """Have the timer fire by the next deadline, and within read_timeout at most.

        One timer per connection, moved only when a deadline comes earlier than
        it: bytes arriving merely push the read deadline later, which the timer
        finds out when it fires (and re-arms), so no request costs a timer. A
        new connection's first one is the worker's (see AsyncioWorker.watch).
        """
        at = self._deadline()
        if self._timer is not None or self._watched:
            if at >= self._timer_at:
                return
            if self._timer is not None:
                self._timer.cancel()
            else:
                self.aworker.unwatch(self)
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        if self.closing:
            return
        options = self.aworker.options
        now = self._clock()
        if self._head_deadline() <= now:
            self._end(self._head_timed_out())
            return
        timed = self.running == 0 or self.conn.mid_record
        if timed and self.read_since + options.read_timeout <= now:
            self._end(self._read_timed_out())
            return
        self._arm()

    # -- reading ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            # Draining before the close (or closed already): thrown away.
            self._drained += len(data)
            if self._drained > MAX_DRAIN and self.transport is not None:
                self.transport.abort()
            return
        self.read_since = self._clock()
        reason = self._feed(data)
        if reason is not None:
            self._end(reason)
            return
        if self.conn.has_output:
            self.flush()
            if self.paused and self.running == 0:
                # Nothing queued but the connection's own answers (GET_VALUES,
                # refusals), and the peer does not read them: waiting would
                # keep the connection busy, which max_conns never evicts.
                self._break("it does not read the answers to what it sends", warning=True)
                return
        if len(self.requests) > self.running:
            self._arm()  # a head is incomplete: its deadline runs
        elif not self.requests:
            if self.head_since is not None:
                self._arm()  # the next request's head began: its deadline runs
            self.wake()

    # -- requests (see fcgi.multiplex.MultiplexConnection) ---------------------------

    def _new_request(self, event: ev.BeginRequest) -> _Request:
        threshold = self.aworker.options.spool_threshold
        return _Request(event.request_id, event.role, event.keep_conn, threshold)

    def _start(self, req: _Request) -> None:
        req.task = self.aworker.start_request(self, req)

    def _answer_unstarted(self, req: _Request, answer: bytes) -> None:
        with contextlib.suppress(ClientGone):
            self._end_request(req, 1, answer, force_tail=True)
        self._drop(req)

    # -- writing ----------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def flush(self) -> None:
        """Hand everything the core queued to the transport."""
        if self._flush_soon is not None:
            self._flush_soon.cancel()  # what it would send goes now
            self._flush_soon = None
        if self.broken is not None or self.transport is None:
            return
        buffers = self.conn.buffers_to_send()
        if buffers:
            self.transport.writelines(buffers)

    def queue_last(self, req: _Request, data: bytes) -> None:
        """The response's last piece: sent with END_REQUEST, or at the loop's next turn."""
        if req.gone is not None:
            raise ClientGone(req.gone)
        if self.broken is not None:
            raise ClientGone(self.broken)
        if data:
            self.conn.send_stdout(req.rid, data)
            if self._flush_soon is None:
                self._flush_soon = self.loop.call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._flush_soon = None
        self.flush()

    async def send_stdout(self, req: _Request, data: bytes) -> None:
        """Send part of the response, waiting while the web server reads; raises ClientGone."""
        conn = self.conn
        for start in range(0, len(data), _SLICE):
            if req.gone is not None:
                raise ClientGone(req.gone)
            if self.broken is not None:
                raise ClientGone(self.broken)
            piece = data if len(data) <= _SLICE else data[start : start + _SLICE]
            conn.send_stdout(req.rid, piece)
            self.flush()
            req.streak += len(piece)
            if self.paused:
                req.streak = 0
                await self._drain(req)
            elif req.streak >= _SLICE:
                # A reader fast enough never pauses the transport, and a send
                # that does not wait is no scheduling point: without this, an
                # app streaming in a loop would keep every other request waiting.
                req.streak = 0
                await asyncio.sleep(0)

    async def send_stderr(self, req: _Request, data: bytes) -> None:
        if req.gone is not None:
            raise ClientGone(req.gone)
        if self.broken is not None:
            raise ClientGone(self.broken)
        self.conn.send_stderr(req.rid, data)
        self.flush()
        if self.paused:
            await self._drain(req)

    async def _drain(self, req: _Request) -> None:
        """Wait until the transport takes more, within the request's time to send."""
        # One wait, not a wait until the buffer is low: every writer woken
        # by resume_writing writes its next slice, in the order they waited,
        # before the first of them waits again (turns, not a race).
        if self.paused and self.broken is None:
            budget = self._send_budget(req)
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            start = self._clock()
            try:
                await asyncio.wait_for(waiter, max(budget, 0.0))
            except TimeoutError:
                self._send_timed_out(req, budget)
            finally:
                req.send_waited += self._clock() - start
        if self.broken is not None:
            raise ClientGone(self.broken)

    def _end_request(
        self, req: _Request, app_status: int, tail: bytes = b"", *, force_tail: bool = False
    ) -> None:
        """Queue ``tail`` and END_REQUEST, send them, and retire the id."""
        if self._queue_end(req, app_status, tail, force_tail):
            self.flush()

    async def end(self, req: _Request, app_status: int, tail: bytes = b"") -> None:
        self._end_request(req, app_status, tail)


# -- the worker -------------------------------------------------------------------------------


class AsyncioWorker(MultiplexWorker[_Connection, _Request]):
    """Serve connections on ``listeners`` with asyncio until stopped.

    Each listener's connections speak its protocol: FastCGI, uwsgi or SCGI
    (:meth:`~fcgi.driver.WorkerBase.core_for`).

    Same interface as :class:`fcgi.trio_worker.TrioWorker`, for ASGI apps.
    Construct it in the process that will serve (after fork);
    :meth:`serve_forever` runs the loop. ``loop_factory`` picks the event loop
    (default: uvloop if installed, see :func:`default_loop_factory`).
    """

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        app: Any,
        options: ServerOptions | None = None,
        hooks: WorkerHooks | None = None,
        *,
        loop_factory: LoopFactory | None = None,
    ) -> None:
        """:class:`~fcgi.driver.WorkerBase`'s arguments, and ``loop_factory``.

        Spelled out, not passed on as ``*args``: compiled (setup.py), the
        arguments reached the base class packed in one tuple.
        """
        self.loop_factory = loop_factory or default_loop_factory()
        super().__init__(listeners, app, options, hooks)

    def _setup(self) -> None:
        # Set on the instance: the base class may be compiled (setup.py), and
        # a compiled class reads its attributes from the instance only.
        self.waits = _AsyncioWaits()
        super()._setup()
        if self.interface != "asgi":
            self.close()
            raise ConfigError(WSGI_REFUSED.format(app=self.app))
        #: Every connection not yet lost, closing ones too: a stop waits for them.
        self.everyone: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Requests running, by the token the hooks gave (see _track).
        self._by_token: dict[object, _Request] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._done: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The running loop's clock, bound once it runs (see _Connection._clock).
        self._clock: Callable[[], float] = _not_running
        #: A look at whether the worker is idle is scheduled (see _maybe_idle).
        self._idle_check = False
        #: New connections whose first deadline the worker's one timer keeps
        #: (see watch), in the order they came; the values mean nothing.
        self._watching: dict[_Connection, None] = {}
        self._watch_timer: asyncio.TimerHandle | None = None
        self._watch_at = math.inf

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the worker is not running"
        return self._loop

    def now(self) -> float:
        return self._clock()

    # -- main ---------------------------------------------------------------------

    def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Run the event loop until stopped; raises LifespanFailure if ASGI startup fails.

        ``ready()`` is called once connections can be served: after the app's
        lifespan startup succeeded.
        """
        forkguard.arm()
        finder = self._runner_of
        stacks.add_finder(finder)
        try:
            with asyncio.Runner(loop_factory=self.loop_factory) as runner:
                runner.run(self._main(ready))
        finally:
            stacks.remove_finder(finder)

    async def _main(self, ready: Callable[[], None] | None) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._clock = loop.time
        self._done = loop.create_future()
        lifespan = _AsyncioLifespan(self.app, lambda: self._stopping)
        try:
            await lifespan.startup()
        except LifespanFailure as exc:
            log.error("%s", Lines(str(exc)))
            raise
        if lifespan.interrupted:
            return
        self._state = lifespan.state if lifespan.supported else None
        dups: list[socket.socket] = []
        loop.add_reader(self._wake_r, self._on_wake)
        try:
            for sock in self.listeners:
                # The kernel holds a TCP connection until its first bytes arrive.
                defer_accept(sock, self.options.request_header_timeout)
                # A copy: closing a server closes its socket, and the listener
                # belongs to whoever made this worker (a reload reuses it).
                dup = sock.dup()
                dups.append(dup)
                # One protocol factory per listener: its connections get the
                # core it speaks, chosen here once, and a unix socket's the
                # name its peers go by.
                unix_name = describe_peer("", sock) if sock.family == socket.AF_UNIX else None
                server = await loop.create_server(
                    functools.partial(_Connection, self, self.core_for(sock), unix_name),
                    sock=dup,
                    backlog=_backlog(sock),
                )
                self._servers.append(server)
            if ready is not None:
                ready()
            if self._stopping:
                self._begin_stop()
            await self._done
        finally:
            if self._watch_timer is not None:
                self._watch_timer.cancel()
            loop.remove_reader(self._wake_r)
            for listening in self._servers:
                listening.close()
            for dup in dups:
                dup.close()
            await lifespan.shutdown()

    # -- the first deadline of new connections --------------------------------------

    def watch(self, c: _Connection, at: float) -> None:
        """Fire ``c``'s timer at ``at``, on the worker's one timer for new connections.

        Most connections are done (a request, an answer, closed) long before
        their first deadline: a timer of their own would be made and cancelled
        for nothing, at a price that shows per connection. The watch fires at
        the earliest deadline it keeps; a connection still there then gets its
        timer call (see _Connection._on_timer), and one of its own from then on.
        """
        c._timer_at = at
        c._watched = True
        self._watching[c] = None
        if at < self._watch_at:
            if self._watch_timer is not None:
                self._watch_timer.cancel()
            self._watch_at = at
            self._watch_timer = self.loop.call_at(at, self._on_watch)

    def unwatch(self, c: _Connection) -> None:
        """``c`` leaves the watch (it closed, or needs an earlier deadline of its own)."""
        c._watched = False
        del self._watching[c]

    def _on_watch(self) -> None:
        self._watch_timer = None
        self._watch_at = math.inf
        now = self._clock()
        due: list[_Connection] = []
        for c in self._watching:
            if c._timer_at <= now:
                due.append(c)
            elif c._timer_at < self._watch_at:
                self._watch_at = c._timer_at
        if self._watch_at < math.inf:
            self._watch_timer = self.loop.call_at(self._watch_at, self._on_watch)
        # In the order their own timers would have fired: by deadline, then as they came.
        due.sort(key=_timer_at)
        for c in due:
            if c._watched:
                self.unwatch(c)
                c._on_timer()

    def _maybe_idle(self) -> None:
        """Tell the hooks the worker waits, if it still has nothing to do a loop turn later.

        What a supervisor shows of an idle worker (its process title) is then
        set once the worker really waits, not after every request of a worker
        that goes straight on to the next one.
        """
        self._idle_check = False
        if not self.active_requests:
            self.hooks.waiting()

    def _on_wake(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 64)
        if self._stopping:
            self._begin_stop()

    def _begin_stop(self) -> None:
        """Stop accepting; idle connections close now, busy ones when done."""
        for server in self._servers:
            server.close()
        for c in list(self.live):
            c.wake()
        self.check_done()

    def check_done(self) -> None:
        """Once stopping, return from serve_forever when nothing is left in progress."""
        done = self._done
        if done is None or done.done() or not self._stopping:
            return
        if not self.everyone and not self._tasks:
            done.set_result(None)

    # -- one request ---------------------------------------------------------------

    def start_request(self, c: _Connection, req: _Request) -> asyncio.Task[None]:
        task = c.loop.create_task(self.serve_request(c, req))
        self._tasks.add(task)
        return task

    def _track(self, token: object, req: _Request) -> stacks.Runner | None:
        # Nothing is made per request: the request is kept by its token, and
        # the slowlog (rare) has _runner_of make its runner when it asks.
        if token is not None:  # None: nobody will ask (no hooks)
            self._by_token[token] = req
        return None

    def _untrack(self, token: object) -> None:
        if token is not None and token in self._by_token:  # no pop(): a call by name
            del self._by_token[token]

    def _runner_of(self, token: object) -> stacks.Runner | None:
        """The runner of a request of this worker's, for :func:`fcgi.stacks.runner_of`."""
        req = self._by_token.get(token)
        task = req.task if req is not None else None
        if req is None or task is None:
            return None
        runner = stacks.Runner(_TaskView(task))
        runner.responder = req.responder
        return runner

    def _request_over(self, req: _Request) -> None:
        task = req.task
        if task is not None:
            self._tasks.discard(task)
            # The task's coroutine holds the request: without this link
            # undone, each request would be a cycle (request, task, its
            # context, the coroutine) that only the garbage collector frees,
            # and its collections would run every few dozen requests.
            req.task = None
        if not self.active_requests and not self._idle_check:
            self._idle_check = True
            self.loop.call_soon(self._maybe_idle)
        if self._stopping:
            self.check_done()

    def _head_writer(self, c: _Connection, req: _Request) -> Write:
        return _QueuedHead(c, req)

    def _last_writer(self, c: _Connection, req: _Request) -> Write:
        async def last(data: bytes) -> None:
            # Sent with END_REQUEST if the app returns now, at the loop's next
            # turn otherwise: a short response costs one write. Not while the
            # web server is not reading, nor a piece over a slice: that one
            # waits as any other piece does, or a peer that sends requests and
            # reads no answer would have the worker keep every answer.
            forkguard.check()  # a child the app forked must not answer a second time
            if c.paused or len(data) > _SLICE:
                await c.send_stdout(req, data)
            else:
                c.queue_last(req, data)

        return last


class _QueuedHead:
    """The asyncio worker's ``write_head``: queued, to leave with the body piece that follows.

    An object, not a closure, for the reason :class:`fcgi.multiplex._Stdout` gives.
    """

    __slots__ = ("c", "req")

    def __init__(self, c: _Connection, req: _Request) -> None:
        self.c = c
        self.req = req

    async def __call__(self, data: bytes) -> None:
        forkguard.check()  # as every writer of a request's bytes does
        self.c.queue_last(self.req, data)


def _timer_at(c: _Connection) -> float:
    return c._timer_at


def _backlog(sock: socket.socket) -> int:
    """The backlog ``sock`` listens with: asyncio's server calls listen() again."""
    try:
        backlog = listen_queue(sock).backlog
    except OSError:
        return _FALLBACK_BACKLOG
    return backlog if backlog > 0 else _FALLBACK_BACKLOG


__all__ = ["AsyncioWorker", "default_loop_factory"]
