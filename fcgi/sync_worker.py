"""The synchronous worker: one connection and one request at a time.

This is PHP-FPM's model and the default: a request owns the whole process, so
a crash or a leak stays inside one worker and a master can account for it.
Because requests run one at a time, extra request ids on a connection are
refused with CANT_MPX_CONN, and GET_VALUES says FCGI_MPXS_CONNS=0.

The worker waits for connections with epoll (EPOLLEXCLUSIVE, so one waiting
worker wakes per connection rather than all of them) together with a pipe that
:meth:`SyncWorker.stop` writes to, which makes stopping safe from a signal
handler without interrupting a request half way.

A worker never waits on a connection that has not sent a whole request head
(BEGIN_REQUEST and the end of PARAMS): until then the connection is *parked*
in the worker's epoll set, and whatever it sends is taken in without blocking.
So a silent or trickling peer costs a file descriptor, not a worker. Parked
connections have deadlines: ``request_header_timeout`` for the head (from the
accept, or from the first byte of a kept connection's next request) and
``read_timeout`` for a kept connection idle between requests. A connection
closed with input still coming (a refused upload) waits there too while the
rest is read and dropped, so that the web server reads the answer rather
than a reset: a peer trickling that input does not hold the worker either.

A connection parked here is read by this worker only: a request that
arrives on it while the worker runs a long request would wait for that
request even when other workers are idle. In a pool, the worker passes such
connections on (:mod:`fcgi.handoff`): once its request has run for
``SLOW_REQUEST``, a helper thread sends the parked FastCGI connections that
hold no input in user space (kept ones between requests, new ones that sent
nothing yet) to its siblings, and an idle worker takes them in from the
pool's channel as it takes connections from its listeners. A connection
holding part of a request head stays: its bytes cannot travel with it. To
keep that rare, a new connection that has sent nothing yet gets a short wait
for its first bytes right after accept() (a web server writes its request
right after connecting; TCP listeners use TCP_DEFER_ACCEPT, so there the
bytes are already in), and the ready connections of one epoll wakeup are
served before new ones are accepted. While silent connections keep arriving
(an attack), that wait is skipped for a while, so a request head that arrives
in pieces then may wait behind one request of its worker. A single process
has no sibling, and waits as described. In a ``pm = ondemand`` pool the
master starts a worker for a connection waiting in the channel when none is
idle, as it does for one waiting on a listener (see
:class:`fcgi.pool.running_pool.RunningPool`). The helper thread needs
the GIL: an app that holds it in one long C call (a huge ``sum()`` of a
range, a C library that does not release it) delays the hand-off until the
call returns or lets go.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import heapq
import itertools
import logging
import math
import os
import random
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Final, cast

from mypy_extensions import mypyc_attr

from fcgi import events as ev
from fcgi import forkguard, signal_turn
from fcgi.connection import Limits
from fcgi.driver import (
    ACCEPT_PAUSE,
    ACCEPT_RETRY,
    ACCEPT_STARVED,
    CORES,
    DRAIN_SECONDS,
    MAX_DRAIN,
    CoreFactory,
    WorkerBase,
    log_refusal,
    wsgi_environ,
)
from fcgi.errors import ProtocolError, RequestBodyIncomplete, RequestBodyTooLarge

# Tested by name, not as ``ev.X``: compiled (setup.py), ``ev.X`` is an
# attribute lookup on the module every time.
from fcgi.events import (
    AbortRequest,
    BeginRequest,
    DataChunk,
    DataEnd,
    Params,
    RequestRefused,
    RequestRejected,
    StdinData,
    StdinEnd,
)
from fcgi.handoff import SLOW_REQUEST, SlowRequestWatch
from fcgi.hooks import render_answer
from fcgi.listen_queue import listen_queue
from fcgi.records import Role
from fcgi.sockets import FASTCGI, defer_accept, describe_peer, peer_allowed
from fcgi.wsgi import BodyCutOff, ClientGone, ErrorStream, error_response, respond

log = logging.getLogger("fcgi.worker")

#: Bound once: compiled code calling ``time.monotonic()`` looks it up in the
#: module first, and a kept-alive request reads the clock several times.
_monotonic: Final = time.monotonic


def _no_lock() -> None:
    """What the watch's lock methods are bound to while there is no watch (never called)."""


#: One buffer of this size per worker takes every read (recv_into): a large
#: request body arrives in few reads, and no read allocates.
_RECV_SIZE: Final = 256 * 1024
#: Connections one worker holds parked (waiting for a request head, or kept
#: alive between requests). Past this the oldest idle kept connection is
#: closed (the web server opens a new one when it needs it), else the oldest
#: one still waiting for its head.
_MAX_PARKED: Final = 1024
#: Connections one worker drains at once: closing, their answer sent, the
#: rest of a body they will not be asked for read and thrown away (see
#: SyncWorker._start_drain). Past this the oldest is closed at once: each holds
#: a descriptor, and a peer opening them by the hundred does not get to keep
#: them for DRAIN_SECONDS each.
_MAX_DRAINING: Final = 64
#: Seconds a worker waits, right after accept(), for the first bytes of a
#: connection that has sent none yet. A web server writes its request right
#: after connecting, so this is almost always enough; and a connection
#: served at once cannot end up parked in a worker that then starts a long
#: request while other workers sit idle (see the module docstring).
_FIRST_BYTES_WAIT: Final = 0.05
#: After such a wait ran out (a silent peer: likely an attack), the next
#: this many seconds of new connections are parked without waiting, so a
#: flood of silent connections costs one wait per period, not one each.
_IMPATIENT_FOR: Final = 1.0
#: The deadline heap is rebuilt from the parked connections once it holds
#: more than this many entries per parked connection (stale entries pile up
#: as kept connections come and go; the rebuild keeps its size bounded).
_HEAP_SLACK: Final = 4


#: Below this many bytes a response is joined and sent with one send(); above
#: it the buffers go to sendmsg() as they are, so a large body is never copied.
_JOIN_LIMIT: Final = 16 * 1024
_IOV_MAX: Final = 1024
_DONTWAIT: Final = socket.MSG_DONTWAIT


def _watch_signals(wake: int) -> int | None:
    """Have every signal write to ``wake`` while the worker serves (see fcgi.signal_turn).

    Returns the descriptor signals wrote to before, to put back; None where
    this cannot be done: outside the main thread (a test that runs a worker
    in a thread), where no signal handler runs anyway.
    """
    try:
        return signal.set_wakeup_fd(wake, warn_on_full_buffer=False)
    except ValueError:
        return None


def wait_ready(sock: _socket.socket, events: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``sock`` to be ready; False if it never was.

    Sockets stay blocking and every read and write is first tried with
    MSG_DONTWAIT, so a timeout costs a poll() only when the peer is slow,
    instead of two setsockopt() calls on every connection.
    """
    poller = select.poll()
    poller.register(sock, events)
    return bool(poller.poll(max(0, math.ceil(timeout * 1000))))


class SendBudget:
    """Seconds one answer may still spend waiting for the web server to read it.

    A stalled write is bounded by ``read_timeout`` on its own; a peer that
    reads a little just before each write would time out keeps a worker for
    as long as it likes. This is the total of those waits (``send_timeout``).
    """

    __slots__ = ("left",)

    def __init__(self, seconds: float) -> None:
        self.left = seconds


#: The budget of what a connection answers by itself (GET_VALUES results,
#: refusals): nothing. One shared object, not one per request: it only ever
#: goes further below zero, which means the same.
_UNASKED: Final = SendBudget(0.0)


# A plain Python class even when this module is compiled (setup.py): mypyc's
# native classes cannot derive from OSError.
@mypyc_attr(native_class=False)
class SendTimeout(TimeoutError):
    """The answer used up its :class:`SendBudget`."""


def send_buffers(
    sock: _socket.socket,
    buffers: list[bytes | memoryview],
    timeout: float,
    budget: SendBudget | None = None,
) -> None:
    """Write every buffer, in order, with as few copies and syscalls as it takes.

    Raises :class:`TimeoutError` when the peer reads nothing for ``timeout``
    seconds, :class:`SendTimeout` when the waits use up ``budget``.
    """
    if len(buffers) == 1:
        data = buffers[0]
    elif _total_size(buffers) <= _JOIN_LIMIT:
        data = b"".join(buffers)
    else:
        _send_vectored(sock, buffers, timeout, budget)
        return
    try:
        sent = sock.send(data, _DONTWAIT)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        _send_vectored(sock, [memoryview(data)[sent:]], timeout, budget)


def _total_size(buffers: list[bytes | memoryview]) -> int:
    """How many bytes ``buffers`` hold.

    A loop: compiled (setup.py), ``sum(map(len, buffers))`` looks up three builtins.
    """
    size = 0
    for buffer in buffers:
        size += len(buffer)
    return size


def _wait_writable(sock: _socket.socket, timeout: float, budget: SendBudget | None) -> None:
    """Wait until ``sock`` takes more output, charging the wait to ``budget``."""
    if budget is None:
        if not wait_ready(sock, select.POLLOUT, timeout):
            raise TimeoutError
        return
    start = _monotonic()
    ready = wait_ready(sock, select.POLLOUT, min(timeout, max(budget.left, 0.0)))
    budget.left -= _monotonic() - start
    if budget.left <= 0:
        raise SendTimeout
    if not ready:
        raise TimeoutError


def _send_vectored(
    sock: _socket.socket,
    buffers: list[bytes | memoryview],
    timeout: float,
    budget: SendBudget | None,
) -> None:
    first = 0
    while first < len(buffers):
        try:
            sent = sock.sendmsg(buffers[first : first + _IOV_MAX], (), _DONTWAIT)
        except BlockingIOError:
            _wait_writable(sock, timeout, budget)
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


#: The FastCGI core: only its connections are passed to other workers (a
#: uwsgi or SCGI connection carries one request and is never kept).
_FASTCGI: Final = CORES[FASTCGI]
_AUTHORIZER: Final = int(Role.AUTHORIZER)
_FILTER: Final = int(Role.FILTER)


class _Peer:
    """Who is on the other end; formatted only when a log line needs it."""

    __slots__ = ("address", "sock")

    def __init__(self, address: object, sock: _socket.socket) -> None:
        self.address = address
        self.sock = sock

    def __str__(self) -> str:
        return describe_peer(self.address, self.sock)


class _Connection(SendBudget):
    """One accepted transport connection being served by a sync worker.

    It is also the :class:`SendBudget` of the request it is serving, so that
    a request costs no budget object of its own.
    """

    __slots__ = (
        "address",
        "budget",
        "buffer",
        "conn",
        "deadline",
        "drained",
        "eof",
        "fd",
        "head_deadline",
        "idle",
        "parked",
        "pending",
        "refusals",
        "registered",
        "send_expired",
        "served",
        "sock",
        "timeout",
        "tracebacks",
    )

    def __init__(
        self,
        sock: _socket.socket,
        address: object,
        limits: Limits,
        timeout: float,
        buffer: memoryview,
        core: tuple[CoreFactory, bool],
    ) -> None:
        self.sock = sock
        #: The socket's descriptor, the key of the parked dicts (no fileno() call).
        self.fd = sock.fileno()
        self.address = address
        self.timeout = timeout
        #: The worker's read buffer, shared by its connections: what a read
        #: puts there is taken in by the core's feed before the next.
        self.buffer = buffer
        #: The core of the protocol its listener speaks, and whether app
        #: tracebacks go to the web server too (see WorkerBase.core_for).
        factory, self.tracebacks = core
        self.conn = factory(limits)
        self.pending: deque[ev.Event] = deque()
        self.served = 0
        #: Requests refused on this connection (see fcgi.driver.log_refusal).
        self.refusals = 0
        self.registered = False
        #: While parked: when it is closed unless it does something first.
        #: While draining (see SyncWorker._start_drain): when it is closed anyway.
        self.deadline = 0.0
        #: Bytes read and thrown away since the answer went out (draining).
        self.drained = 0
        #: When its request head must be whole (request_header_timeout).
        self.head_deadline = 0.0
        #: Parked between requests (read_timeout), not waiting for a head.
        self.idle = False
        self.parked = False
        #: What the answer being sent may still wait for the peer (send_timeout).
        self.budget: SendBudget | None = None
        #: Seconds the running request's answer may still wait for the peer
        #: (the connection is that request's SendBudget, refilled per request).
        self.left = 0.0
        #: True once an answer was cut off because the budget ran out.
        self.send_expired = False
        #: True once the peer closed its side (its end of the stream was read).
        self.eof = False

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

    def read_now(self, body: bool = False) -> bool:
        """Take in what the peer already sent, without waiting; False if nothing was there.

        ``body``: the app is reading a request body. The read then goes into
        fresh bytes that the core may keep (``feed_owned``), so the body's
        pieces reach the app as views of them, not as copies out of the
        shared buffer: an upload is copied once in user space (by the app's
        read), not twice. Heads, which are small and many, keep the buffer.

        Raises :class:`_PeerClosed` at the end of the stream, ProtocolError
        for bytes that are not FastCGI.
        """
        try:
            if body:
                data = self.sock.recv(_RECV_SIZE, _DONTWAIT)
                size = len(data)
            else:
                size = self.sock.recv_into(self.buffer, 0, _DONTWAIT)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise _PeerClosed(exc.strerror or str(exc)) from None
        if not size:
            # Before feed_eof: a body cut short ends in the core's ProtocolError.
            self.eof = True
            self.conn.feed_eof()
            raise _PeerClosed("the web server closed the connection")
        if body:
            self.pending.extend(self.conn.feed_owned(data))
        else:
            self.pending.extend(self.conn.feed(self.buffer[:size]))
        return True

    @property
    def head_ready(self) -> bool:
        """True if what arrived needs the worker: a whole request head, or output to send.

        A lone BEGIN_REQUEST does not: its PARAMS may never come.
        """
        pending = self.pending
        if pending and type(pending[-1]) is not BeginRequest:
            return True  # the usual case: the head ends with its Params
        if self.conn.has_output or self.conn.should_close:
            return True
        return any(type(event) is not BeginRequest for event in pending)

    @property
    def in_head(self) -> bool:
        """True while part of a request head (or of any record) has arrived."""
        return bool(self.conn.active_requests) or self.conn.mid_record or bool(self.pending)

    def pump(self) -> None:
        """Read once from the peer, for the body the app reads; queue the events it completes."""
        forkguard.check()  # a child the app forked must not read the worker's input
        while not self.read_now(True):
            if not wait_ready(self.sock, select.POLLIN, self.timeout):
                raise _Timeout
        if self.conn.has_output:
            self.flush()

    def flush(self) -> None:
        forkguard.check()  # a child the app forked must not answer a second time
        buffers = self.conn.buffers_to_send()
        if buffers:
            try:
                send_buffers(self.sock, buffers, self.timeout, self.budget)
            except SendTimeout:
                self.send_expired = True
                raise ClientGone("send_timeout spent waiting for the web server to read") from None
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
        #: up: the body crossed max_body_size, or was cut off before its end,
        #: and must not look complete.
        self.error: RequestBodyTooLarge | RequestBodyIncomplete | None = None
        # Made when the first chunk arrives: most requests have no body.
        self.stdin: deque[bytes | memoryview] | None = None
        self.data: deque[bytes | memoryview] | None = None
        self.stdin_done = role == _AUTHORIZER
        self.data_done = role != _FILTER

    # -- output -------------------------------------------------------------

    def send(self, data: bytes, flush: bool) -> None:
        if type(self.error) is BodyCutOff:
            # The peer left mid-body and the app answers all the same: no one
            # reads it, and the line for the event is written already.
            raise self.error
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
            if kind is StdinData:
                # cast(): compiled, the field is read directly, not looked up
                # by name as the base class's type would have it.
                if self.stdin is None:
                    self.stdin = deque()
                self.stdin.append(cast(StdinData, event).data)
            elif kind is StdinEnd:
                self.stdin_done = True
            elif kind is DataChunk:
                if self.data is None:
                    self.data = deque()
                self.data.append(cast(DataChunk, event).data)
            elif kind is DataEnd:
                self.data_done = True
            elif kind is AbortRequest:
                log.info("request %d from %s aborted by the web server", rid, self.c.peer)
                self._end_input()
            elif kind is RequestRejected:
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

    def read_stdin(self) -> bytes | memoryview:
        while not self.stdin:
            if self.stdin_done:
                if self.error is not None:
                    raise self.error
                return b""
            self._pump()
        return self.stdin.popleft()

    def read_data(self) -> bytes | memoryview:
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
        c = self.c
        try:
            c.pump()
        except (_PeerClosed, _Timeout, ProtocolError) as exc:
            # A _Timeout has no text of its own (an exception object is true
            # even when its message is empty).
            reason = str(exc) or f"nothing arrived for {c.timeout:g}s (read_timeout)"
            # The one line for the event: the app's error and what follows
            # it (no answer, or a 400) add none.
            log.warning("request body from %s cut short: %s", c.peer, reason)
            # Not a clean end: the app's next read raises, so a cut-off body
            # is never taken for a whole one. A peer that is gone (its end of
            # the stream read, or the connection reset) gets no answer.
            gone = c.eof or isinstance(exc, _PeerClosed)
            cls = BodyCutOff if gone else RequestBodyIncomplete
            self.error = cls(f"request body cut short: {reason}")
            self._end_input()
            return
        self._dispatch()


#: A listener as the worker accepts on it: the socket, (family, type, proto)
#: as plain ints for accept(), and the core its connections speak.
_Listening = tuple[socket.socket, tuple[int, int, int], tuple[CoreFactory, bool]]


def _movable(c: _Connection) -> bool:
    """True if ``c`` can go to another worker: FastCGI, nothing of it read but not yet used."""
    conn = c.conn
    if type(conn) is not _FASTCGI or c.in_head:
        return False
    return not conn.has_output and not conn.should_close


class SyncWorker(WorkerBase):
    """Serve connections on ``listeners`` until stopped.

    Each listener's connections speak its protocol: FastCGI, uwsgi or SCGI
    (:meth:`~fcgi.driver.WorkerBase.core_for`, asked once per listener).

    Connections are parked in the same epoll set as the listeners whenever
    they have no whole request head to serve: new ones until their head has
    arrived, kept ones (FCGI_KEEP_CONN) between requests. So a worker serves
    whichever of its connections has a request ready instead of sitting on a
    silent one, and a peer that trickles its head holds no worker.
    """

    def _setup(self) -> None:
        # One request at a time: say so to the web server and refuse extra ids.
        self.limits = replace(
            self.options.limits, max_active_ids=1, max_reqs=1, max_conns=_MAX_PARKED + 1
        )
        self._poller: select.epoll | None = None
        self._buffer = memoryview(bytearray(_RECV_SIZE))
        #: Parked connections by fd, least recently parked first: kept ones
        #: idle between requests, and ones still waiting for a request head.
        self._idle: dict[int, _Connection] = {}
        self._waiting: dict[int, _Connection] = {}
        #: Closing connections whose unread input is being thrown away, by fd,
        #: oldest first (so also soonest deadline first: DRAIN_SECONDS each).
        self._draining: dict[int, _Connection] = {}
        #: (deadline, tie-breaker, connection) of every parked connection;
        #: entries whose connection moved on since are skipped when reached.
        self._deadlines: list[tuple[float, int, _Connection]] = []
        self._tie = itertools.count()
        #: Until then, new silent connections are parked without a wait.
        self._impatient_until = 0.0
        #: True from an accept() that failed for lack of resources until one works.
        self._starved = False
        #: In a pool: where idle parked connections go while a request is slow
        #: (and come from, while this worker is idle), and the thread that
        #: sends them (fcgi.handoff).
        self._channel = self.options.handoff
        self._watch: SlowRequestWatch | None = None
        #: The watch's lock, its methods bound once (a ``with`` statement
        #: would look up ``__enter__`` and ``__exit__`` on every request),
        #: and the number the next request shows it (see SlowRequestWatch).
        self._watch_acquire: Callable[[], object] = _no_lock
        self._watch_release: Callable[[], object] = _no_lock
        self._watch_count = 0
        #: Read once: the options are a plain-Python object, each attribute a lookup.
        self._send_timeout = self.options.send_timeout
        #: A descriptor held for the next connection taken from the channel
        #: (-1: none; see _adopt).
        self._spare = -1

    # -- control ------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to serve what is queued and return. Signal-safe.

        The request running goes on to its end; then the worker serves the
        connections already waiting on its listeners (those queued when the
        stop came: see :meth:`_drain`) and the parked ones that send a request
        before their head deadline, and returns.
        """
        super().stop()

    # -- main loop -----------------------------------------------------------

    def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until stopped; ``ready()`` first, once connections can be taken.

        ``ready`` is when a supervisor may count this worker as serving (the
        trio driver calls it only after an ASGI app's lifespan startup).
        """
        forkguard.arm()
        poller = self._poller = select.epoll()
        #: fd -> (listener, (family, type, proto) as plain ints for accept(),
        #: the core its connections speak).
        listeners: dict[int, _Listening] = {}
        exclusive = getattr(select, "EPOLLEXCLUSIVE", 0)
        for sock in self.listeners:
            sock.setblocking(False)
            # The kernel holds a TCP connection until its first bytes arrive.
            defer_accept(sock, self.options.request_header_timeout)
            kind = (int(sock.family), int(sock.type), sock.proto)
            listeners[sock.fileno()] = (sock, kind, self.core_for(sock))
            poller.register(sock.fileno(), select.EPOLLIN | exclusive)
        poller.register(self._wake_r, select.EPOLLIN)
        if self._channel is not None:
            # Like a listener: one idle worker wakes per connection passed on.
            poller.register(self._channel.receive_end.fileno(), select.EPOLLIN | exclusive)
            self._watch = SlowRequestWatch(self._give_away)
            self._watch_acquire = self._watch.lock.acquire
            self._watch_release = self._watch.lock.release
            self._watch.start()
            self._reserve_fd()
        previous_wakeup: int | None = None
        try:
            previous_wakeup = _watch_signals(self._wake_w)
            if ready is not None:
                ready()
            self._serve(listeners)
            # Told to stop: serve what is queued. Leaving on its own
            # (max_requests...): the other workers take the queue, but the
            # connections this one already accepted are still its own.
            self._drain(listeners, accept=self._stopping)
        finally:
            if previous_wakeup is not None:
                signal.set_wakeup_fd(previous_wakeup)
            if self._watch is not None:
                self._watch.close()
            if self._spare >= 0:
                os.close(self._spare)
                self._spare = -1
            self._close_parked()
            poller.close()
            self._poller = None

    def _serve(self, listeners: dict[int, _Listening]) -> None:
        poller = self._poller
        assert poller is not None
        idle = self._idle
        waiting = self._waiting
        wake_r = self._wake_r
        deadlines = self._deadlines
        draining = self._draining
        hooks = self.hooks
        watch = self._watch
        channel = -1 if self._channel is None else self._channel.receive_end.fileno()
        while not self._stopping:
            ready_listeners: list[int] = []
            # Work already waiting is taken without a word to the hooks; only
            # a worker about to block says so (its title turns idle then).
            events = poller.poll(0.0)
            if not events:
                hooks.waiting()
                if watch is None:
                    events = poller.poll(
                        self._poll_timeout() if idle or deadlines or draining else -1.0
                    )
                else:
                    gate = watch.gate  # see SlowRequestWatch: held while asleep
                    gate.acquire()
                    try:
                        events = poller.poll(
                            self._poll_timeout() if idle or deadlines or draining else -1.0
                        )
                    finally:
                        gate.release()
            adopt = False
            for fd, _ in events:
                if fd == wake_r:
                    with contextlib.suppress(OSError):
                        os.read(wake_r, 64)
                    signal_turn.run_pending()  # see fcgi.signal_turn
                elif fd in listeners:
                    ready_listeners.append(fd)
                elif fd == channel:
                    adopt = True
                else:
                    c = idle.get(fd) or waiting.get(fd)
                    if c is not None:
                        self._wake(c)
                        if self._stopping or hooks.should_stop():
                            return
                    elif fd in draining:
                        self._drain_more(draining[fd])
            # Connections already here first: a new one waits its turn. But a
            # connection passed on is not "here" for good: kept ones travel from
            # worker to worker (max_requests, reloads), and a worker with one
            # request left that always took the channel first would leave the
            # listen queue unserved for as long as they keep coming. A coin
            # decides which of the two goes first.
            if adopt and not (ready_listeners and random.getrandbits(1)):
                adopt = False
                if self._adopt_or_leave(poller):
                    channel = -1
                if self._stopping or hooks.should_stop():
                    return
            for fd in ready_listeners:
                self._accept(*listeners[fd])
                if self._stopping or hooks.should_stop():
                    return
            if adopt:
                if self._adopt_or_leave(poller):
                    channel = -1
                if self._stopping or hooks.should_stop():
                    return
            if idle or deadlines or draining:
                self._expire()

    def _adopt_or_leave(self, poller: select.epoll) -> bool:
        """Take one connection from the channel; True if the channel ended (see below).

        End of stream means the pool stops as a whole (fcgi.handoff
        refuse_more): the receive end is readable for good from then on, so it
        leaves the poller, and this worker stops too.
        """
        if self._adopt() is not None or self._channel is None or not self._channel.ended:
            return False
        with contextlib.suppress(OSError, ValueError):
            poller.unregister(self._channel.receive_end.fileno())
        self.stop()
        return True

    def _drain(self, listeners: dict[int, _Listening], accept: bool) -> None:
        """Graceful stop: serve the connections already queued, then return.

        Closing a listening socket resets every connection still in its
        queue: requests the web server already sent would fail. So each
        listener is accepted from until it is empty, for at most as many
        connections as the kernel said were queued when the stop began (every
        worker sharing a listener takes its share; under steady load the
        queue never empties, and a bound keeps the stop finite). Parked
        connections still waiting for their head get until their deadline;
        idle kept connections go to the pool's other workers (see
        :meth:`_pass_on`), or are closed; draining ones are drained to their
        end (see :meth:`_start_drain`). The pool's master bounds the whole
        stop by process_control_timeout, and removes its own unix socket
        paths first so that no new connection arrives by them meanwhile.

        Without ``accept``, only the parked connections are seen to.
        """
        poller = self._poller
        assert poller is not None
        budgets: dict[int, int | None] = {}
        for fd, (sock, _, _) in listeners.items():
            try:
                budgets[fd] = listen_queue(sock).queued if accept else 0
            except Exception:  # any failure of the kernel query (netlink, parsing)
                budgets[fd] = None  # unknown: until the queue is empty
        queued = sum(budget or 0 for budget in budgets.values())
        if queued:
            log.debug("stopping: serving the %d connections queued on the listeners", queued)
        # Kept connections that already sent a request are served first.
        self._wake_ready(0.0)
        self._leave_channel(adopt=accept)
        while True:
            accepted = False
            for fd, (sock, kind, core) in listeners.items():
                budget = budgets[fd]
                if budget is not None and budget <= 0:
                    continue
                if self._accept(sock, kind, core):
                    accepted = True
                    if budget is not None:
                        budgets[fd] = budget - 1
                else:
                    budgets[fd] = 0  # empty now: nothing queued before the stop is left
            passing = not self._stopping or self.options.handoff_on_stop
            for c in list(self._idle.values()):
                if not (passing and self._pass_on(c)):
                    self._unpark(c)
                    self._close(c, False)
            if not accepted and not self._waiting and not self._draining:
                return
            for fd in [fd for fd, budget in budgets.items() if budget == 0]:
                with contextlib.suppress(KeyError, OSError):
                    poller.unregister(fd)
                budgets[fd] = -1
            self._wake_ready(0.0 if accepted else self._poll_timeout())
            self._expire()

    def _wake_ready(self, timeout: float) -> None:
        """Wake the parked connections that have input (waiting up to ``timeout``)."""
        assert self._poller is not None
        for fd, _ in self._poller.poll(timeout):
            if fd == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
                signal_turn.run_pending()  # see fcgi.signal_turn
                continue
            c = self._idle.get(fd) or self._waiting.get(fd)
            if c is not None:
                self._wake(c)
            elif fd in self._draining:
                self._drain_more(self._draining[fd])

    def _close_parked(self) -> None:
        """Close every parked connection (they sent no whole request), and the draining ones."""
        for parked in (self._idle, self._waiting):
            for c in list(parked.values()):
                c.parked = False
                self._close(c, False)
            parked.clear()
        self._deadlines.clear()
        for c in list(self._draining.values()):
            self._end_drain(c)

    def _accept(
        self, listener: socket.socket, kind: tuple[int, int, int], core: tuple[CoreFactory, bool]
    ) -> bool:
        """Take one connection from ``listener``; False if none was waiting."""
        try:
            # socket.accept() without its wrapper's per-call enum conversions.
            fd, peer = listener._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno == errno.EMFILE and self._draining:
                # A drain is a courtesy: it gives way before a new connection.
                self._end_drain(next(iter(self._draining.values())))
                return True
            if exc.errno == errno.EMFILE and (self._idle or self._waiting):
                # RLIMIT_NOFILE (often 1024) is reached before _MAX_PARKED:
                # the oldest parked connection makes room, as it would there,
                # rather than silent peers keeping every real one out. One
                # per call: the next try comes with the next epoll wakeup.
                self._close_oldest_parked()
                return True
            if exc.errno in ACCEPT_STARVED:
                if not self._starved:  # one line per episode, not one per retry
                    log.error("accept failed: %s; retrying every %gs", exc.strerror, ACCEPT_PAUSE)
                    self._starved = True
                time.sleep(ACCEPT_PAUSE)
                return False
            if exc.errno in ACCEPT_RETRY:
                return True  # that connection is gone; others may be queued
            raise
        # The C socket type itself: socket.socket's Python-level __init__ and
        # close() add nothing a connection served here uses, once per connection.
        sock = _socket.socket(*kind, fd)
        if self._starved:
            self._starved = False
            log.warning("accepting connections again")
        self.hooks.connection_accepted()
        if self.options.allowed_clients and not peer_allowed(peer, self.options.allowed_clients):
            log.warning("refused connection from %s: not an allowed client", peer)
            sock.close()
            return True
        c = _Connection(sock, peer, self.limits, self.options.read_timeout, self._buffer, core)
        c.head_deadline = _monotonic() + self.options.request_header_timeout
        self._wake(c, new=True)
        return True

    # -- passing connections between workers (fcgi.handoff) --------------------

    def _give_away(self) -> bool:
        """Pass the parked connections that hold no input to the other workers.

        Runs in the watch thread while the main thread serves a slow request
        (see SlowRequestWatch). False if the channel could not take them all.
        """
        channel = self._channel
        if channel is None or self._stopping:
            return True
        passed = 0
        complete = True
        for parked in (self._idle, self._waiting):
            for c in list(parked.values()):
                if not _movable(c):
                    continue
                if not channel.send(c.fd, c.head_deadline, c.deadline, c.idle):
                    complete = False
                    break
                parked.pop(c.fd, None)
                c.parked = False
                self._close(c, False)  # the other worker's copy lives on
                passed += 1
        if passed:
            log.debug(
                "a request running for over %gs: passed %d idle connections to the other workers",
                SLOW_REQUEST,
                passed,
            )
        return complete

    def _adopt(self) -> _Connection | None:
        """Take in one connection another worker passed on; None if none was waiting.

        It is parked here as it was there (kept between requests, or new and
        silent so far, with the head deadline it had), then read at once: the
        request the web server wrote meanwhile is in the socket, not lost. A
        kept one's read_timeout runs on from where it was: restarted on every
        move, a connection moved on every slow request would never expire.
        Not an accept: the scoreboard's accepted count is left alone, and
        max_conns (_MAX_PARKED) is kept as on accept, by closing the oldest
        parked connection.
        """
        assert self._channel is not None
        # A descriptor received into a full table is closed by the kernel
        # (the connection with it): one is held free for it, and made free,
        # like accept() does on EMFILE, by closing the oldest parked connection.
        self._reserve_fd()
        if self._spare < 0 and (self._idle or self._waiting):
            self._close_oldest_parked()
            self._reserve_fd()
        if self._spare < 0:
            time.sleep(ACCEPT_PAUSE)  # no room: a sibling may take it meanwhile
            return None
        os.close(self._spare)
        self._spare = -1
        received = self._channel.receive()
        self._reserve_fd()
        if received is None:
            return None
        fd, head_deadline, deadline, idle = received
        sock = _socket.socket(fileno=fd)
        try:
            address: object = sock.getpeername()
        except OSError:
            address = None
        core = (_FASTCGI, self.options.stderr_tracebacks)
        c = _Connection(sock, address, self.limits, self.options.read_timeout, self._buffer, core)
        c.head_deadline = head_deadline
        c.idle = idle
        self._park(c)
        if idle and deadline < c.deadline:
            # Its read_timeout runs on from where it was (see fcgi.handoff).
            # Earlier than the idle ones parked before it, so the dict's order
            # does not hold for it: the deadline heap keeps it instead.
            c.deadline = deadline
            heapq.heappush(self._deadlines, (deadline, next(self._tie), c))
        self._wake(c)
        return c

    def _reserve_fd(self) -> None:
        """Hold a descriptor for the next connection taken from the channel, if one is free."""
        if self._spare < 0:
            with contextlib.suppress(OSError):
                self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def _leave_channel(self, adopt: bool) -> None:
        """Stop taking connections from the channel; with ``adopt``, empty it first.

        A stopped pool's channel is read by no one: a connection in it would
        be closed with the master, even one with a request in it. So a worker
        told to stop takes what is queued, serves those that sent a request,
        and passes the rest back once, for a worker that goes on serving (a
        reload's new ones); when the whole pool stops, the channel refuses
        them and they are closed with this worker's own idle connections. A
        worker leaving on its own (max_requests) just stops reading: its
        siblings go on.
        """
        if self._channel is None or self._poller is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._poller.unregister(self._channel.receive_end.fileno())
        if not adopt:
            return
        adopted = []
        while (c := self._adopt()) is not None:
            adopted.append(c)
        for c in adopted:
            if c.parked:
                self._pass_on(c)

    def _pass_on(self, c: _Connection) -> bool:
        """Send ``c`` down the channel and let go of it; False (``c`` untouched) if it cannot go.

        A worker leaving (stopped by a reload or by the master scaling down,
        or on its own: max_requests) does this with its idle kept connections
        rather than close them: a closed one races the next request the web
        server writes on it, which then fails (a reset, a 502 from nginx);
        passed on, a worker that goes on serving answers it. When the whole
        pool stops, its master shuts the channel first and the send fails:
        they are closed as before.
        """
        channel = self._channel
        if channel is None or not _movable(c):
            return False
        if not channel.send(c.fd, c.head_deadline, c.deadline, c.idle):
            return False
        self._unpark(c)
        self._close(c, False)  # the receiving worker's copy lives on
        return True

    # -- parked connections --------------------------------------------------

    def _wake(self, c: _Connection, new: bool = False) -> None:
        """Take in what ``c`` sent; serve it if its head is whole, else (re)park it.

        ``new``: just accepted. If it sent nothing yet, wait a moment for its
        first bytes (see _FIRST_BYTES_WAIT), unless silent peers came lately.
        """
        try:
            arrived = c.read_now()
            if new and not arrived:
                now = _monotonic()
                if now >= self._impatient_until:
                    if wait_ready(c.sock, select.POLLIN, _FIRST_BYTES_WAIT):
                        arrived = c.read_now()
                    else:
                        self._impatient_until = now + _IMPATIENT_FOR
        except _PeerClosed as closed:
            if c.in_head:
                log.info(
                    "connection from %s closed before its request head ended: %s", c.peer, closed
                )
            self._unpark(c)
            self._close(c, False)
            return
        except ProtocolError as bad:
            log.warning("closing connection from %s: protocol error: %s", c.peer, bad)
            self._unpark(c)
            self._close(c, False)
            return
        pending = c.pending
        if (pending and type(pending[-1]) is not BeginRequest) or c.head_ready:
            # The first test is the usual case (see head_ready), checked here
            # without a call: the whole head came in one read.
            if c.parked:  # _unpark, inlined: once per request on a kept connection
                c.parked = False
                (self._idle if c.idle else self._waiting).pop(c.fd, None)
            self._drive(c)
        elif not c.parked:
            self._park(c)
        elif c.idle and c.in_head:
            # The first bytes of a kept connection's next request: from now
            # on it has request_header_timeout for the rest of the head.
            self._unpark(c)
            self._start_head(c)
            self._park(c)
        elif arrived:
            # Part of the head: read_timeout starts again, the head deadline stays.
            self._unpark(c)
            self._park(c)

    def _start_head(self, c: _Connection) -> None:
        """``c`` begins a request head now (not idle between requests any more)."""
        c.idle = False
        c.head_deadline = _monotonic() + self.options.request_header_timeout

    def _deadline_of(self, c: _Connection) -> float:
        """When ``c`` is closed if nothing more arrives from now on.

        Idle between requests: read_timeout. Waiting for a head: read_timeout
        after its last bytes (a stalled record), but never past its head
        deadline (a peer trickling bytes restarts read_timeout forever).
        """
        silence = _monotonic() + self.options.read_timeout
        return silence if c.idle else min(silence, c.head_deadline)

    def _park(self, c: _Connection) -> None:
        """Wait for ``c`` in epoll instead of here, until its deadline from now."""
        if c.idle:  # _deadline_of's common case, without the call
            c.deadline = _monotonic() + self.options.read_timeout
        else:
            c.deadline = self._deadline_of(c)
        fd = c.fd
        if not c.registered:
            assert self._poller is not None
            self._poller.register(fd, select.EPOLLIN)
            c.registered = True
        c.parked = True
        if c.idle:
            # An idle connection's deadline is read_timeout from the moment it
            # is parked, so the dict's insertion order is their order: no heap
            # entry for the common case, a kept connection between requests.
            self._idle[fd] = c
        else:
            self._waiting[fd] = c
            heap = self._deadlines
            heapq.heappush(heap, (c.deadline, next(self._tie), c))
            if len(heap) > _HEAP_SLACK * len(self._waiting) + _MAX_PARKED:
                heap[:] = [(p.deadline, next(self._tie), p) for p in self._waiting.values()]
                heapq.heapify(heap)
        parked = len(self._idle) + len(self._waiting)
        if parked > _MAX_PARKED:
            self._close_oldest_parked()

    def _close_oldest_parked(self) -> None:
        """Close the oldest idle kept connection, else the oldest one waiting for its head."""
        parked = len(self._idle) + len(self._waiting)
        oldest = next(iter(self._idle.values() or self._waiting.values()))
        log.info("closing the oldest of %d parked connections (from %s)", parked, oldest.peer)
        self._unpark(oldest)
        self._close(oldest, False)

    def _unpark(self, c: _Connection) -> None:
        if c.parked:
            c.parked = False
            (self._idle if c.idle else self._waiting).pop(c.fd, None)

    def _poll_timeout(self) -> float:
        """Seconds until the next parked or draining connection's deadline (-1: none)."""
        soonest = math.inf
        if self._idle:
            soonest = next(iter(self._idle.values())).deadline
        if self._draining:
            soonest = min(soonest, next(iter(self._draining.values())).deadline)
        heap = self._deadlines
        while heap:
            deadline, _, c = heap[0]
            if c.parked and c.deadline == deadline:
                soonest = min(soonest, deadline)
                break
            heapq.heappop(heap)  # the connection moved on since
        if soonest == math.inf:
            return -1.0
        return max(0.0, soonest - _monotonic())

    def _expire(self) -> None:
        """Close the parked and draining connections whose deadline has passed."""
        now = _monotonic()
        draining = self._draining
        while draining:
            c = next(iter(draining.values()))
            if c.deadline > now:
                break
            self._end_drain(c)
        idle = self._idle
        while idle:
            c = next(iter(idle.values()))
            if c.deadline > now:
                break
            self._unpark(c)
            self._log_silence(c, mid_request=False)
            self._close(c, False)
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, _, c = heapq.heappop(heap)
            if not c.parked or c.deadline != deadline:
                continue  # stale: served, closed or parked again since
            self._unpark(c)
            if c.idle:  # an adopted kept connection (see _adopt)
                self._log_silence(c, mid_request=False)
            elif deadline >= c.head_deadline:
                log.warning(
                    "closing connection from %s: no complete request head within %gs "
                    "(request_header_timeout)",
                    c.peer,
                    self.options.request_header_timeout,
                )
            else:
                self._log_silence(c, mid_request=c.in_head)
            self._close(c, False)

    def _log_silence(self, c: _Connection, mid_request: bool) -> None:
        """The one line for a connection closed because it sent nothing for read_timeout."""
        if mid_request:
            log.warning(
                "closing connection from %s: stalled for %gs in the middle of a request",
                c.peer,
                self.options.read_timeout,
            )
        else:
            log.info("closing idle connection from %s after %gs", c.peer, self.options.read_timeout)

    # -- one connection ------------------------------------------------------

    def _drive(self, c: _Connection) -> None:
        """Answer what ``c`` has queued (its requests, refusals...), then park or close it.

        Never waits for the peer except while a request runs (its body, as the
        app reads it; its answer, as the peer takes it): the next request head
        is waited for in epoll.
        """
        unread_body = False
        completed = False
        keep = False
        # What the connection answers by itself (GET_VALUES results, refusals,
        # 4xx rejections) is small and never waited on: a peer that leaves
        # it unread until the buffers fill must not hold the worker in a
        # write while it has sent no request. _request sets a request's own.
        c.budget = _UNASKED
        try:
            pending = c.pending
            while pending:
                event = pending.popleft()
                kind = type(event)
                if kind is Params:
                    unread_body = self._request(c, event)  # type: ignore[arg-type]
                    c.served += 1
                    completed = True
                    if self._stopping or self.hooks.should_stop():
                        break
                elif kind is RequestRejected:
                    self._reject(c, event)  # type: ignore[arg-type]
                    c.served += 1
                    completed = True
                    # Its body may still be coming (uwsgi and SCGI reject a
                    # request from its head, before the body): a connection
                    # closed now is drained first, so the web server reads
                    # the answer rather than a reset.
                    unread_body = True
                elif kind is AbortRequest:
                    # Aborted before its PARAMS ended: the app never ran, but
                    # the web server still waits for END_REQUEST (section 5.4).
                    if event.request_id in c.conn.active_requests:
                        log.info(
                            "request %d from %s aborted before it started", event.request_id, c.peer
                        )
                        c.conn.end_request(event.request_id)
                        c.flush()
                        c.served += 1
                        completed = True
                elif kind is RequestRefused:
                    c.refusals += 1
                    log_refusal(
                        log,
                        c.refusals,
                        "refused request id %d from %s: protocol status %d (role %d)",
                        event.request_id,
                        c.peer,
                        event.protocol_status,  # type: ignore[attr-defined]
                        event.role,  # type: ignore[attr-defined]
                    )
                    c.served += 1
            # Also once told to stop: a connection with nothing more queued is
            # parked, for _drain to pass on to a worker that goes on serving
            # (see _pass_on) or close; one with requests still queued in it
            # cannot move, and is closed.
            if c.conn.has_output:
                c.flush()
            keep = not pending and not c.conn.should_close
        except ProtocolError as bad:
            log.warning("closing connection from %s: protocol error: %s", c.peer, bad)
            unread_body = False
        except _Timeout:
            self._log_silence(c, mid_request=bool(c.conn.active_requests) or c.conn.mid_record)
            unread_body = False
        except _PeerClosed as closed:
            if c.conn.active_requests:
                log.info("connection from %s closed mid-request: %s", c.peer, closed)
            unread_body = False
        except BodyCutOff:
            unread_body = False  # the peer left mid-body: _Exchange._pump logged it
        except ClientGone as exc:
            if c.send_expired and c.budget is _UNASKED:
                log.warning(
                    "closing connection from %s: it does not read the answers to what it sends",
                    c.peer,
                )
            elif c.send_expired:
                log.warning(
                    "closing connection from %s: its answer waited more than %gs in total "
                    "for the web server to read it (send_timeout)",
                    c.peer,
                    self.options.send_timeout,
                )
            else:
                log.info("web server %s went away while we answered: %s", c.peer, exc)
            unread_body = False
        if not keep:
            self._close(c, unread_body)
            return
        # A fresh head deadline only once a request was answered (or a kept
        # connection starts its next one): refused ids or GET_VALUES do not
        # keep a stalled head alive.
        if completed:
            c.idle = True
        if c.idle and c.in_head:
            self._start_head(c)
        self._park(c)

    def _request(self, c: _Connection, event: Params) -> bool:
        """Serve one request; return True if its body was left unread."""
        rid = event.request_id
        params = event.params
        conn = c.conn
        hooks = self.hooks
        options = self.options
        role = conn.role(rid)
        token = hooks.request_started(params)
        exchange = _Exchange(c, rid, role)
        # The connection is its own request's budget: no object per request.
        c.left = self._send_timeout
        c.budget = c
        status = 0
        head: bytes | None = None
        watch = self._watch
        if watch is not None:
            # From here until running is 0 again this thread touches no
            # connection but c: the watch may pass the parked ones on meanwhile.
            self._watch_count = number = self._watch_count + 1
            watch.running = number
        try:
            answer = hooks.intercept(params)
            if answer is None:
                stderr = exchange.stderr if c.tracebacks else None
                errors = ErrorStream(stderr)
                environ = wsgi_environ(
                    params,
                    options,
                    errors,
                    exchange.read_stdin,
                    exchange.read_data if role == _FILTER else None,
                    role=role,
                    multithread=False,  # one request at a time, in the main thread
                )
                http_status, app_status, sent = respond(self.app, environ, exchange.send, stderr)
                forkguard.verify()  # where a child the app forked comes back
                errors.flush()
            else:
                sent = render_answer(answer, params.get("REQUEST_METHOD", "GET"))
                conn.send_stdout(rid, sent)
                http_status, app_status = int(answer.status[:3]), 0
            conn.end_request(rid, app_status)
            c.flush()
            status = http_status
            head = sent
        finally:
            if watch is not None:
                forkguard.check()  # a child the app forked has no watch thread to wait for
                self._watch_acquire()  # once a hand-off under way is over
                try:
                    watch.running = 0
                finally:  # a signal handler may raise anywhere in plain Python
                    self._watch_release()
            # Also when the web server went away mid-answer (status 0 then):
            # the scoreboard must not keep showing a request that is over.
            hooks.request_finished(token, status, head)
        return not exchange.settle()

    def _reject(self, c: _Connection, event: RequestRejected) -> None:
        log.warning("rejected request from %s: %s", c.peer, event.reason)
        c.conn.send_stdout(event.request_id, error_response(event.http_status))
        c.conn.end_request(event.request_id, 1)
        c.flush()

    def _close(self, c: _Connection, unread_body: bool) -> None:
        """Close ``c``; with ``unread_body``, once its unread input is drained (_start_drain)."""
        # A connection that served a request is its own budget: a cycle that,
        # left in place, would keep it for the cyclic GC instead of freeing it now.
        c.budget = None
        if unread_body and self._start_drain(c):
            return
        sock = c.sock
        if c.registered and self._poller is not None:
            # Explicitly: a process the app forked may still share the socket,
            # and epoll would go on reporting it under a number reused since.
            with contextlib.suppress(OSError, ValueError):
                self._poller.unregister(sock.fileno())
            c.registered = False
        sock.close()

    # -- closing connections with unread input -----------------------------------

    def _start_drain(self, c: _Connection) -> bool:
        """Half-close ``c`` and go on reading it until its peer is done; False to close it now.

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy the answer still on its way to the web server. So a
        connection whose request body was left unread (a rejected request, an
        app that answered without reading it) is shut for writing and read
        until the peer closes too, for at most MAX_DRAIN bytes and
        DRAIN_SECONDS. The reads happen as the input arrives, between other
        connections' requests (it waits in epoll like a parked connection):
        a peer that trickles a refused body does not hold the worker.
        """
        if self._poller is None:
            return False
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        c.drained = 0
        if self._drained_all(c):
            return False
        draining = self._draining
        if len(draining) >= _MAX_DRAINING:
            self._end_drain(next(iter(draining.values())))
        if not c.registered:
            try:
                self._poller.register(c.fd, select.EPOLLIN)
            except OSError:
                return False
            c.registered = True
        c.deadline = _monotonic() + DRAIN_SECONDS
        draining[c.fd] = c
        return True

    def _drained_all(self, c: _Connection) -> bool:
        """Read and drop what ``c`` has sent so far; True once there is no more to wait for."""
        sock = c.sock
        buffer = self._buffer
        while c.drained < MAX_DRAIN:
            try:
                size = sock.recv_into(buffer, 0, _DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not size:
                return True
            c.drained += size
        return True

    def _drain_more(self, c: _Connection) -> None:
        """``c`` is draining and sent more: drop it, and close ``c`` if that was all."""
        if self._drained_all(c):
            self._end_drain(c)

    def _end_drain(self, c: _Connection) -> None:
        del self._draining[c.fd]
        self._close(c, False)
