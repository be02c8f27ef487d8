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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import select
import socket
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

from fcgi import events as ev
from fcgi import forkguard, stacks
from fcgi.asgi import (
    ASGI_VERSION,
    LIFESPAN_EXIT_GRACE,
    LIFESPAN_SPEC_VERSION,
    ASGIApp,
    ASGIResponder,
    ClientDisconnected,
    LifespanFailure,
    Message,
    Scope,
    _encode_head,
    build_scope,
)
from fcgi.connection import ServerConnection
from fcgi.driver import log_refusal
from fcgi.errors import ConfigError, ProtocolError, RequestBodyTooLarge
from fcgi.escape import Lines
from fcgi.hooks import NoHooks, WorkerHooks, render_answer
from fcgi.interface import resolve_interface
from fcgi.options import ServerOptions
from fcgi.records import ProtocolStatus, Role
from fcgi.sockets import defer_accept, describe_peer, peer_allowed
from fcgi.spool import SpooledBody
from fcgi.wsgi import ClientGone, error_response

log = logging.getLogger("fcgi.worker")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

#: Most STDOUT bytes one write hands to the transport before the writer checks
#: for backpressure: bounds what one request adds to the transport's buffer
#: beyond its high-water mark. Also the most a request writes before it lets
#: the other tasks run: the grain of turn-taking between ids.
_SLICE = 256 * 1024
#: Most bytes read and thrown away while closing a connection whose request
#: body was not read to the end (so the web server sees our answer, not a reset).
_MAX_DRAIN = 64 * 1024 * 1024
_DRAIN_SECONDS = 2.0
#: The listen backlog used if the kernel cannot tell a listener's own:
#: asyncio's servers call listen() again, and this is fcgi's default.
_FALLBACK_BACKLOG = 511

WSGI_REFUSED = (
    "the asyncio worker runs ASGI apps only and {app!r} is a WSGI app: "
    "use --worker sync or --worker trio for it"
)


def default_loop_factory() -> LoopFactory:
    """uvloop's loop when uvloop is importable (``pip install fcgi[uvloop]``), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def loop_name(factory: LoopFactory) -> str:
    return "uvloop" if getattr(factory, "__module__", "").startswith("uvloop") else "asyncio"


class _Request:
    """One request id being served on a connection."""

    __slots__ = (
        "body",
        "ended",
        "gone",
        "input_done",
        "keep_conn",
        "params",
        "responder",
        "rid",
        "role",
        "send_waited",
        "since",
        "started",
        "streak",
        "task",
        "waiter",
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
        #: Why the web server no longer wants the answer, once it does not.
        self.gone: str | None = None
        self.started = False
        self.responder: _Responder | None = None
        #: True once END_REQUEST is queued: never twice.
        self.ended = False
        #: Seconds this request's output has waited for the web server to read.
        self.send_waited = 0.0
        #: Bytes written since this request's task last let others run.
        self.streak = 0
        #: When its head began to arrive (loop clock): see request_header_timeout.
        self.since = 0.0
        #: The task running the app, once started.
        self.task: asyncio.Task[None] | None = None
        #: Resolved when the body gets more input (or ends): the app waits on it.
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abort(self, reason: str) -> None:
        if self.gone is not None:
            return
        self.gone = reason
        self.body.end()
        if self.responder is not None:
            self.responder.disconnect(reason)
        self.wake()
        task = self.task
        if task is not None and not task.done():
            # Soon, not now: a receive() woken by the disconnect returns
            # http.disconnect to the app first, and a task is never cancelled
            # before its first step (its bookkeeping would never run).
            task.get_loop().call_soon(_cancel, task)

    def close(self) -> None:
        self.body.close()


def _cancel(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()


class _TaskView:
    """What :func:`fcgi.stacks.request_frames` reads of a task: its coroutine."""

    __slots__ = ("coro",)

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.coro = task.get_coro()


# -- ASGI on asyncio ---------------------------------------------------------------------


_DISCONNECT: Message = {"type": "http.disconnect"}


class _Responder(ASGIResponder):
    """:class:`~fcgi.asgi.ASGIResponder` with its waits on asyncio instead of trio.

    The request cycle (``run``: errors, 413, the missing body) is the base
    class's; receive() and send() follow the base's rules message for
    message, with asyncio futures where it has trio events, and no
    scheduling point where asyncio needs none.
    """

    def __init__(self, req: _Request, conn: _Connection, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._req = req
        self._conn = conn
        #: Resolved once the response is complete or the web server went away.
        self._done: asyncio.Future[None] | None = None

    def disconnect(self, reason: str) -> None:
        super().disconnect(reason)
        self._req.wake()
        self._settle()

    def _settle(self) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    async def receive(self) -> Message:
        if self.gone is not None or self._complete:
            # A scheduling point: an app that loops on receive() after the end
            # must not keep the loop from everything else.
            await asyncio.sleep(0)
            return dict(_DISCONNECT)
        if not self._body_done:
            body = self.body
            chunk = body.receive_nowait()
            if chunk is None:
                chunk = await self._wait_for_body()
            if self.gone is not None:
                return dict(_DISCONNECT)
            if self._remaining is not None:
                if len(chunk) >= self._remaining:
                    chunk = chunk[: self._remaining]
                    body.end()
                    self._body_done = True
                self._remaining -= len(chunk)
            if not chunk or body.exhausted:
                self._body_done = True
            return {"type": "http.request", "body": chunk, "more_body": not self._body_done}
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        if not self._done.done():
            await self._done
        return dict(_DISCONNECT)

    async def _wait_for_body(self) -> bytes:
        req = self._req
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    req.waiter = loop.create_future()
                    try:
                        await req.waiter
                    finally:
                        req.waiter = None
                    chunk = self.body.receive_nowait()
                    if chunk is not None:
                        return chunk
        except TimeoutError:
            log.warning(
                "%s: request body stalled for %gs; treating it as ended",
                self.where,
                self.body_timeout,
            )
            self.body.end()
            return b""

    async def send(self, message: Message) -> None:
        if self.gone is not None:
            raise ClientDisconnected(self.gone)
        kind = message.get("type")
        if kind == "http.response.start":
            if self._head is not None:
                raise RuntimeError("http.response.start sent twice")
            self._head, self._head_has_length = _encode_head(
                message.get("status"), message.get("headers", ())
            )
            self.status = message["status"]
        elif kind == "http.response.body":
            if self._head is None:
                raise RuntimeError("http.response.body sent before http.response.start")
            if self._complete:
                raise RuntimeError("http.response.body sent after the response was complete")
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
            if not isinstance(body, bytes | bytearray | memoryview):
                raise TypeError(f"http.response.body body must be bytes, not {type(body).__name__}")
            data = bytes(body)
            if not self._head_sent:
                head = self._head
                if not more and not self._head_has_length and self._may_add_length():
                    head = head[:-2] + b"Content-Length: %d\r\n\r\n" % len(data)
                    self._head = head
                data = head + data
                self._head_sent = True
            try:
                if more:
                    if data:
                        await self.write(data)
                    return
                self._complete = True
                self._settle()
                # The last piece waits for END_REQUEST (one write for both)
                # if the app returns now; the loop sends it anyway otherwise.
                self._conn.queue_last(self._req, data)
            except ClientGone as exc:
                self.disconnect(str(exc) or "the web server went away")
                raise ClientDisconnected(self.gone) from None
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for an http scope")


class _Lifespan:
    """The ASGI lifespan protocol on asyncio (see :class:`fcgi.asgi.Lifespan`, its trio twin)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        #: Shared with every request scope (shallow copies), per the lifespan spec.
        self.state: dict[str, Any] = {}
        self.supported = False
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._receive_called = False
        self._task: asyncio.Task[None] | None = None
        self._exited = asyncio.Event()

    async def _receive(self) -> Message:
        self._receive_called = True
        return await self._to_app.get()

    async def _send(self, message: Message) -> None:
        await self._from_app.put(message)

    async def _run_app(self) -> None:
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": ASGI_VERSION, "spec_version": LIFESPAN_SPEC_VERSION},
            "state": self.state,
        }
        outcome: Message = {"type": "fcgi.app_exited", "error": None}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            outcome["error"] = exc
            outcome["trace"] = traceback.format_exc()
        finally:
            self._exited.set()
            self._from_app.put_nowait(outcome)

    async def startup(self) -> None:
        """Raise :class:`LifespanFailure` if the app says startup failed."""
        self._task = asyncio.create_task(self._run_app())
        await self._to_app.put({"type": "lifespan.startup"})
        reply = await self._from_app.get()
        kind = reply.get("type")
        if kind == "lifespan.startup.complete":
            self.supported = True
            log.debug("lifespan startup complete")
            return
        if kind == "lifespan.startup.failed":
            await self._cancel()
            message = reply.get("message") or "(no message)"
            raise LifespanFailure(f"the app's lifespan startup failed: {message}")
        if kind == "fcgi.app_exited":
            error = reply.get("error")
            if error is None:
                log.info("the app does not use lifespan (it returned without answering startup)")
                return
            if not self._receive_called:
                log.info("the app does not support lifespan (%s: %s)", type(error).__name__, error)
                return
            raise LifespanFailure(
                f"the app raised during lifespan startup:\n{reply.get('trace', error)}".rstrip()
            )
        await self._cancel()
        raise LifespanFailure(f"unexpected ASGI message {kind!r} during lifespan startup")

    async def shutdown(self) -> None:
        """Ask the app to shut down and wait for it; failures are logged, not raised."""
        if not self.supported or self._exited.is_set():
            await self._cancel()
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        reply = await self._from_app.get()
        kind = reply.get("type")
        if kind == "lifespan.shutdown.complete":
            log.debug("lifespan shutdown complete")
        elif kind == "lifespan.shutdown.failed":
            log.error("the app's lifespan shutdown failed: %s", reply.get("message") or "")
        elif kind == "fcgi.app_exited" and reply.get("error") is not None:
            log.error("the app raised during lifespan shutdown:\n%s", Lines(reply.get("trace", "")))
        else:
            log.warning("unexpected ASGI message %r during lifespan shutdown", kind)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LIFESPAN_EXIT_GRACE):
                await self._exited.wait()
        await self._cancel()

    async def _cancel(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# -- one connection --------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One accepted connection: the core's state, its requests, its timer."""

    def __init__(self, worker: AsyncioWorker) -> None:
        self.worker = worker
        self.loop = worker.loop
        self.conn = ServerConnection(worker.limits)
        self.requests: dict[int, _Request] = {}
        #: Requests whose app is running (the others still wait for PARAMS).
        self.running = 0
        #: Requests refused on this connection (see fcgi.driver.log_refusal).
        self.refusals = 0
        self.transport: asyncio.Transport | None = None
        self.peer = "unix socket"
        self.fd = -1
        #: Why the connection cannot be written any more, once it cannot.
        self.broken: str | None = None
        #: True once it is being closed (a drain may still run).
        self.closing = False
        self.unread_input = False
        #: The transport's buffer is past its high-water mark: writers wait.
        self.paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._flush_soon = False
        #: Bytes thrown away so far while closing (see _close).
        self._drained = 0
        now = self.loop.time()
        #: When the head of the next request began to arrive, or None while
        #: no head is being waited for: from acceptance, since a new
        #: connection owes us a request.
        self.head_since: float | None = now
        #: Since when the connection has had nothing in progress: the oldest
        #: quiet connection is the first to go when max_conns is reached.
        self.quiet_since = now
        #: Since the last bytes arrived (or the connection last became idle).
        self.read_since = now
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    # -- life cycle -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        worker = self.worker
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        self.peer = describe_peer(peer, sock)
        self.fd = sock.fileno() if sock is not None else -1
        worker.everyone.add(self)
        worker.hooks.connection_accepted()
        options = worker.options
        if options.allowed_clients and not peer_allowed(peer, options.allowed_clients):
            log.warning("refused connection from %s: not an allowed client", self.peer)
            self._refuse()
            return
        if len(worker.live) >= options.max_conns:
            victim = worker.quietest()
            if victim is None:
                log.warning(
                    "closing connection from %s: all %d connections are busy (max_conns)",
                    self.peer,
                    len(worker.live),
                )
                self._refuse()
                return
            log.warning(
                "closing the connection from %s, quiet for %.1fs, to make room for one "
                "from %s: %d connections (max_conns)",
                victim.peer,
                self.loop.time() - victim.quiet_since,
                self.peer,
                len(worker.live),
            )
            victim.evict()
        worker.live.add(self)
        self._arm()

    def _refuse(self) -> None:
        self.broken = "refused"
        self.closing = True
        assert self.transport is not None
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        worker = self.worker
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.broken is None:
            if self.requests and exc is not None:
                log.info("connection from %s failed mid-request: %s", self.peer, exc)
            self.broken = "the connection is closed"
        self.closing = True
        self._abort_all(self.broken)
        self.paused = False
        self._wake_writers()
        worker.live.discard(self)
        worker.everyone.discard(self)
        worker.check_done()

    def eof_received(self) -> bool:
        if self.closing:
            return False  # the drain is over: close
        try:
            self.conn.feed_eof()
        except ProtocolError as exc:
            log.warning("connection from %s closed mid-record: %s", self.peer, exc)
        if not self.requests:
            self._close()
            return False
        log.info(
            "web server %s closed the connection with %d request(s) in progress",
            self.peer,
            len(self.requests),
        )
        # Their END_REQUEST still goes out (the peer may read on after a
        # half-close); the connection closes once they are done (see wake).
        self._abort_all("the web server closed the connection")
        return True

    @property
    def quiet(self) -> bool:
        """True if nothing is in progress: no app running, no answer waiting to be read."""
        return (
            self.running == 0
            and self.broken is None
            and not self.paused
            and all(req.gone is None for req in self.requests.values())
        )

    def wake(self) -> None:
        """Look again at whether to go on (stopping, closing)."""
        if self.closing or self.requests:
            return
        if (
            self.conn.should_close
            or self.conn.closed_by_peer
            or (self.worker.stopping and self.head_since is None and not self._input_waiting())
        ):
            self._close()

    def became_idle(self) -> None:
        """The last request ended: close if due, else let the idle timeout run."""
        self.head_since = None
        now = self.loop.time()
        self.quiet_since = self.read_since = now
        if self.worker.stopping or self.conn.should_close or self.conn.closed_by_peer:
            self.wake()

    def evict(self) -> None:
        """Close this quiet connection to make room for a new one (the caller logs it)."""
        if self.broken is None:
            self._end("closed to make room for a new connection (max_conns)")

    def _break(self, reason: str, *, warning: bool = False) -> None:
        """The connection cannot be written any more: end it, and only it."""
        if self.broken is None:
            level = logging.WARNING if warning else logging.INFO
            log.log(level, "connection from %s: %s", self.peer, reason)
            self._end(reason)

    def _end(self, reason: str) -> None:
        """Close now, nothing more written; requests in progress are aborted."""
        self.broken = reason
        self.closing = True
        self.worker.live.discard(self)
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
        self.worker.live.discard(self)
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
        ):
            # Closing with unread input makes the kernel send a reset, which
            # can destroy the answer in flight. Half-close, then drain.
            transport.write_eof()
            self.loop.call_later(_DRAIN_SECONDS, transport.abort)
            return
        transport.close()

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

    def _input_waiting(self) -> bool:
        """True if the peer's next bytes (or its EOF) are already here to read."""
        if self.fd < 0:
            return False
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        try:
            return bool(poller.poll(0))
        except OSError:
            return False

    # -- timeouts ---------------------------------------------------------------------

    def _head_deadline(self) -> float:
        """When the request head now being received must be complete (inf: none is).

        The same rule as the trio worker's: the clock starts at acceptance or at
        the first byte of a later request, and does not restart with every byte.
        """
        since = math.inf if self.head_since is None else self.head_since
        if len(self.requests) > self.running:
            for req in self.requests.values():
                if not req.started and req.gone is None and req.since < since:
                    since = req.since
        return since + self.worker.options.request_header_timeout

    def _arm(self) -> None:
        """Have the timer fire by the next deadline, and within read_timeout at most.

        One timer per connection, moved only when a deadline comes earlier than
        it: bytes arriving merely push the read deadline later, which the timer
        finds out when it fires (and re-arms), so no request costs a timer.
        """
        timeout = self.worker.options.read_timeout
        now = self.loop.time()
        at = min(self._head_deadline(), now + timeout)
        if self.running == 0 or self.conn.mid_record:
            at = min(at, self.read_since + timeout)
        if self._timer is not None:
            if at >= self._timer_at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        if self.closing:
            return
        options = self.worker.options
        now = self.loop.time()
        if self._head_deadline() <= now:
            log.warning(
                "closing connection from %s: no complete request head within %gs "
                "(request_header_timeout)",
                self.peer,
                options.request_header_timeout,
            )
            self._end("request head timeout")
            return
        timed = self.running == 0 or self.conn.mid_record
        if timed and self.read_since + options.read_timeout <= now:
            if self.requests or self.conn.mid_record:
                log.warning(
                    "closing connection from %s: stalled for %gs in the middle of a request",
                    self.peer,
                    options.read_timeout,
                )
            else:
                log.info(
                    "closing idle connection from %s after %gs", self.peer, options.read_timeout
                )
            self._end("read timeout")
            return
        self._arm()

    # -- reading ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            # Draining before the close (or closed already): thrown away.
            self._drained += len(data)
            if self._drained > _MAX_DRAIN and self.transport is not None:
                self.transport.abort()
            return
        conn = self.conn
        self.read_since = self.loop.time()
        try:
            events = conn.feed(data)
        except ProtocolError as exc:
            log.warning("closing connection from %s: protocol error: %s", self.peer, exc)
            self._end(f"protocol error: {exc}")
            return
        if not self.requests and conn.mid_record and self.head_since is None:
            # The first bytes of the next request on a kept connection.
            self.head_since = self.read_since
            self._arm()
        for event in events:
            self._dispatch(event)
        if conn.has_output:
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
            self.wake()

    def _dispatch(self, event: ev.Event) -> None:
        kind = type(event)
        rid = event.request_id
        req = self.requests.get(rid)
        if kind is ev.StdinData:
            if req is not None:
                self._push(req, event.data)  # type: ignore[attr-defined]
        elif kind is ev.StdinEnd:
            if req is not None:
                req.input_done = True
                req.body.end()
                req.wake()
        elif kind is ev.BeginRequest:
            self._begin(event)  # type: ignore[arg-type]
        elif kind is ev.Params:
            if req is not None:
                req.params = event.params  # type: ignore[attr-defined]
                req.started = True
                self.running += 1
                req.task = self.worker.start_request(self, req)
        elif kind is ev.AbortRequest:
            if req is not None and req.gone is None:
                log.info("request %d from %s aborted by the web server", rid, self.peer)
                req.abort("aborted by the web server")
                if not req.started:
                    self._finish_unstarted(req, b"")
        elif kind is ev.RequestRejected:
            reason = event.reason  # type: ignore[attr-defined]
            log.warning("rejected request %d from %s: %s", rid, self.peer, reason)
            if req is not None:
                if req.started:
                    if event.http_status == 413:  # type: ignore[attr-defined]
                        # Cut at max_body_size: the app's next read raises,
                        # so a partial body is never taken for the whole.
                        req.body.fail(RequestBodyTooLarge(reason))
                    else:
                        req.body.end()  # the app gets what arrived, then EOF
                    req.wake()
                else:
                    req.gone = reason
                    self._finish_unstarted(req, error_response(event.http_status))  # type: ignore[attr-defined]
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
        # FCGI_DATA (the FILTER role) has no place in an ASGI scope: dropped.

    def _push(self, req: _Request, data: bytes) -> None:
        """Keep input for the app; a full disk fails that request, not the connection."""
        try:
            req.body.push(data)
        except OSError as exc:
            log.error(
                "request %d from %s: cannot keep its body (%s); the app gets an error",
                req.rid,
                self.peer,
                exc,
            )
            req.body.fail(exc)
        req.wake()

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
        req.since = self.loop.time() if self.head_since is None else self.head_since
        self.head_since = None
        self.requests[rid] = req
        worker.active_requests += 1

    def _refused(self) -> None:
        """A BEGIN_REQUEST was answered with a refusal: that request is over."""
        if not self.requests:
            self.head_since = None
            self.quiet_since = self.loop.time()

    def _finish_unstarted(self, req: _Request, answer: bytes) -> None:
        with contextlib.suppress(ClientGone):
            self.end(req, 1, answer, force_tail=True)
        req.close()
        self._retire(req)
        if not self.requests:
            self.became_idle()

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
        self._flush_soon = False
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
            if not self._flush_soon:
                self._flush_soon = True
                self.loop.call_soon(self.flush)

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
        options = self.worker.options
        timeout = options.read_timeout
        # One wait, not a wait until the buffer is low: every writer woken
        # by resume_writing writes its next slice, in the order they waited,
        # before the first of them waits again (turns, not a race).
        if self.paused and self.broken is None:
            budget = min(timeout, options.send_timeout - req.send_waited)
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            start = self.loop.time()
            try:
                await asyncio.wait_for(waiter, max(budget, 0.0))
            except TimeoutError:
                if budget < timeout:
                    self._break(
                        f"request {req.rid}: the web server took more than "
                        f"{options.send_timeout:g}s in all to read the answer (send_timeout)",
                        warning=True,
                    )
                else:
                    self._break(f"the web server read nothing for {timeout:g}s")
            finally:
                req.send_waited += self.loop.time() - start
        if self.broken is not None:
            raise ClientGone(self.broken)

    def end(
        self, req: _Request, app_status: int, tail: bytes = b"", *, force_tail: bool = False
    ) -> None:
        """Queue ``tail`` and END_REQUEST, send them, and retire the id."""
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
        self.flush()


# -- the worker -------------------------------------------------------------------------------


class AsyncioWorker:
    """Serve FastCGI connections on ``listeners`` with asyncio until stopped.

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
        self.listeners = list(listeners)
        self.app = app
        self.options = options or ServerOptions()
        self.hooks: WorkerHooks = hooks or NoHooks()
        self.interface = resolve_interface(app, self.options.interface)
        if self.interface != "asgi":
            raise ConfigError(WSGI_REFUSED.format(app=app))
        self.loop_factory = loop_factory or default_loop_factory()
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
        #: Connections being served (not those being closed): max_conns counts these.
        self.live: set[_Connection] = set()
        #: Every connection not yet lost, closing ones too: a stop waits for them.
        self.everyone: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._state: dict[str, Any] | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._done: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: A look at whether the worker is idle is scheduled (see _maybe_idle).
        self._idle_check = False

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
        return len(self.live)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the worker is not running"
        return self._loop

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- main ---------------------------------------------------------------------

    def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Run the event loop until stopped; raises LifespanFailure if ASGI startup fails.

        ``ready()`` is called once connections can be served: after the app's
        lifespan startup succeeded.
        """
        forkguard.arm()
        with asyncio.Runner(loop_factory=self.loop_factory) as runner:
            runner.run(self._main(ready))

    async def _main(self, ready: Callable[[], None] | None) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        lifespan = _Lifespan(self.app)
        try:
            await lifespan.startup()
        except LifespanFailure as exc:
            log.error("%s", Lines(str(exc)))
            raise
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
                server = await loop.create_server(
                    self._new_connection, sock=dup, backlog=_backlog(sock)
                )
                self._servers.append(server)
            if ready is not None:
                ready()
            if self._stopping:
                self._begin_stop()
            await self._done
        finally:
            loop.remove_reader(self._wake_r)
            for listening in self._servers:
                listening.close()
            for dup in dups:
                dup.close()
            await lifespan.shutdown()

    def _new_connection(self) -> _Connection:
        return _Connection(self)

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

    def quietest(self) -> _Connection | None:
        """The connection quiet for longest (no request in progress), or None if all are busy.

        Idle kept connections and ones that have not sent a whole request
        head yet cost the attacker nothing to open: when the slots run out,
        one of them makes room instead of a new connection being refused.
        """
        best: _Connection | None = None
        for c in self.live:
            if c.quiet and (best is None or c.quiet_since < best.quiet_since):
                best = c
        return best

    # -- one request ---------------------------------------------------------------

    def start_request(self, c: _Connection, req: _Request) -> asyncio.Task[None]:
        task = self.loop.create_task(self._serve_request(c, req))
        self._tasks.add(task)
        return task

    async def _serve_request(self, c: _Connection, req: _Request) -> None:
        hooks = self.hooks
        status = 0
        head: bytes | None = None
        task = asyncio.current_task()
        assert task is not None
        token = hooks.request_started(req.params)
        if token is not None:
            # What runs this request's app, for its stack in the slowlog.
            stacks.track(token, _TaskView(task))
        try:
            app_status = 0
            tail = b""
            try:
                answer = hooks.intercept(req.params)
                if answer is not None:
                    head = tail = render_answer(answer, req.params.get("REQUEST_METHOD", "GET"))
                    status = int(answer.status[:3])
                else:
                    status, app_status, head = await self._run_asgi(c, req)
            except asyncio.CancelledError:
                if req.gone is None:
                    raise  # not an abort: the loop is being torn down
                task.uncancel()
            if req.gone is not None:
                app_status = 1
            c.end(req, app_status, tail)
        except ClientGone as exc:
            # Why was logged where it happened (write failure, abort, close).
            log.debug("request %d from %s: not answered: %s", req.rid, c.peer, exc)
        finally:
            if not req.ended:
                req.abort("the request did not finish")
            c.running -= 1
            req.close()
            c._retire(req)
            hooks.request_finished(token, status, head)
            if token is not None:
                stacks.untrack(token)
            self._tasks.discard(task)
            if not self.active_requests and not self._idle_check:
                self._idle_check = True
                self.loop.call_soon(self._maybe_idle)
            if not c.requests:
                c.became_idle()
            if hooks.should_stop() and not self._stopping:
                self.stop()
            if self._stopping:
                self.check_done()

    async def _run_asgi(self, c: _Connection, req: _Request) -> tuple[int, int, bytes | None]:
        params = req.params
        scope = build_scope(params, mount=self.options.script_name, state=self._state)

        async def write(data: bytes) -> None:
            forkguard.check()  # a child the app forked must not answer a second time
            await c.send_stdout(req, data)

        async def stderr(data: bytes) -> None:
            forkguard.check()
            await c.send_stderr(req, data)

        responder = _Responder(
            req,
            c,
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


def _backlog(sock: socket.socket) -> int:
    """The backlog ``sock`` listens with: asyncio's server calls listen() again."""
    from fcgi.pool.listen_queue import listen_queue

    try:
        backlog = listen_queue(sock).backlog
    except OSError:
        return _FALLBACK_BACKLOG
    return backlog if backlog > 0 else _FALLBACK_BACKLOG


__all__ = ["AsyncioWorker", "default_loop_factory"]
