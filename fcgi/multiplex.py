"""What the two drivers that serve many requests at once (trio, asyncio) share.

Both feed one sans-IO core per connection (:class:`~fcgi.connection.ServerConnection`,
or the uwsgi or SCGI one its listener speaks: :meth:`fcgi.driver.WorkerBase.core_for`),
keep every request id on it in progress together, and run each app in a task of
its own; they differ only in how they wait (trio: a task per connection and
cancel scopes; asyncio: protocol callbacks, timers and futures). So that the
rules cannot drift apart, they are written once here:

* :class:`Request`: one request's state, and what an abort does to it;
* :class:`MultiplexConnection`: what each event of the core does to the
  requests (bodies spooled, aborts, rejections, refusals, OVERLOADED past
  ``max_reqs``), the request head deadline, when a connection counts as
  quiet, how it ends, and the log line of each of these;
* :class:`MultiplexWorker`: the process-wide limits, which connection makes
  room at ``max_conns``, and one request's life from the hooks to END_REQUEST
  (ASGI included: the same :class:`~fcgi.asgi.ASGIResponder` on both loops).

A driver subclasses each and fills in the few methods that wait or schedule
(each says so). What the sync worker shares too is in :mod:`fcgi.driver`.
"""

from __future__ import annotations

import logging
import math
import resource
import select
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Final, Generic, TypeVar, cast

from mypy_extensions import mypyc_attr

from fcgi import events as ev
from fcgi import forkguard, stacks
from fcgi.asgi import ASGIResponder, Waits, Write, build_scope
from fcgi.driver import CoreFactory, WorkerBase, log_refusal
from fcgi.errors import ProtocolError, RequestBodyTooLarge

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
from fcgi.hooks import render_answer
from fcgi.interface import resolve_interface
from fcgi.records import ProtocolStatus, Role
from fcgi.sockets import peer_allowed
from fcgi.spool import SpooledBody
from fcgi.wsgi import ClientGone, error_response

log = logging.getLogger("fcgi.worker")

#: Descriptors a worker keeps for what is not a connection: its listeners,
#: the event loop's own (epoll, wake-up pipes), log files, request bodies
#: spooled to temporary files, and the app's files and sockets.
DESCRIPTORS_SPARED: Final = 64


def fit_descriptor_limit(max_conns: int) -> int:
    """``max_conns``, or as many connections as the process's descriptor limit leaves room for.

    The soft RLIMIT_NOFILE is raised toward the hard one first, as far as
    ``max_conns`` needs. A worker that runs out of descriptors anyway cannot
    accept, and under uvloop libuv then takes queued connections and closes
    them itself, unseen and unlogged: staying under the limit keeps every
    connection that cannot be served one that max_conns refuses, with its
    log line. Said once, at start, when the limit is too low.
    """
    need = max_conns + DESCRIPTORS_SPARED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_conns
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    if soft >= need:
        return max_conns
    fitted = max(1, soft - DESCRIPTORS_SPARED)
    log.warning(
        "max_conns %d does not fit the descriptor limit (RLIMIT_NOFILE %d, %d kept for "
        "other files): max_conns is %d in this process",
        max_conns,
        soft,
        DESCRIPTORS_SPARED,
        fitted,
    )
    return fitted

C = TypeVar("C", bound="MultiplexConnection[Any]")
R = TypeVar("R", bound="Request")


# Compiled by mypyc (setup.py); the trio worker, plain Python, subclasses it.
@mypyc_attr(allow_interpreted_subclasses=True)
class Request:
    """One request id being served on a connection."""

    __slots__ = (
        "body",
        "data",
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
    )

    def __init__(
        self, rid: int, role: int, keep_conn: bool, body: SpooledBody, data: SpooledBody | None
    ) -> None:
        self.rid = rid
        self.role = role
        self.keep_conn = keep_conn
        self.params: dict[str, str] = {}
        self.body = body
        #: FCGI_DATA of a FILTER request, if the driver keeps it (ASGI has no place for it).
        self.data = data
        #: True once the web server finished sending FCGI_STDIN.
        self.input_done = role == Role.AUTHORIZER
        if self.input_done:
            body.end()  # authorizers get no FCGI_STDIN
        #: Why the web server no longer wants the answer, once it does not.
        self.gone: str | None = None
        self.started = False
        self.responder: ASGIResponder | None = None
        #: True once END_REQUEST is queued: a rejected request that is then
        #: aborted must not be ended twice (the second would be a driver bug
        #: that takes the connection down).
        self.ended = False
        #: Seconds this request's output has waited for the web server to read.
        self.send_waited = 0.0
        #: When its head began to arrive (the loop's clock): see request_header_timeout.
        self.since = 0.0

    def abort(self, reason: str) -> None:
        """The web server no longer wants the answer: wake the app's waits, stop its run."""
        if self.gone is not None:
            return
        self.gone = reason
        self.body.end()
        if self.data is not None:
            self.data.end()
        if self.responder is not None:
            self.responder.disconnect(reason)
        self.stop_app()

    def stop_app(self) -> None:
        """Cancel what runs the app for this request (the driver's)."""
        raise NotImplementedError

    def app_scope(self) -> AbstractContextManager[object]:
        """What the app runs inside: ends the run quietly when :meth:`stop_app` cancelled it."""
        raise NotImplementedError

    def close(self) -> None:
        self.body.close()
        if self.data is not None:
            self.data.close()
        # The responder's writers hold this request: without the cut, every
        # request's objects would wait for the cyclic GC instead of going now.
        self.responder = None


# Compiled by mypyc (setup.py); the trio worker, plain Python, subclasses it.
@mypyc_attr(allow_interpreted_subclasses=True)
class MultiplexConnection(Generic[R]):
    """One accepted connection's requests: what every event of the core does to them.

    The driver's subclass reads and writes; it supplies :meth:`_new_request`,
    :meth:`_start`, :meth:`_answer_unstarted`, :meth:`_end`, :attr:`writing`
    and :meth:`became_idle`.
    """

    def __init__(
        self,
        worker: MultiplexWorker[Any, R],
        peer: str,
        fd: int,
        core: tuple[CoreFactory, bool],
    ) -> None:
        """``core``: what the listener speaks, as :meth:`~fcgi.driver.WorkerBase.core_for` says."""
        self.worker = worker
        self.peer = peer
        self.fd = fd
        factory, tracebacks = core
        self.conn = factory(worker.limits)
        #: App tracebacks go to the web server too (FastCGI's FCGI_STDERR).
        self.tracebacks = tracebacks
        self.requests: dict[int, R] = {}
        #: Requests whose app is running (the others still wait for PARAMS).
        self.running = 0
        #: Requests refused on this connection (see fcgi.driver.log_refusal).
        self.refusals = 0
        #: Why the connection cannot be written any more, once it cannot.
        self.broken: str | None = None
        self.unread_input = False
        now = worker.now()
        #: When the head of the next request began to arrive, or None while
        #: no head is being waited for: from acceptance, since a new
        #: connection owes us a request.
        self.head_since: float | None = now
        #: Since when the connection has had nothing in progress: the oldest
        #: quiet connection is the first to go when max_conns is reached.
        self.quiet_since = now

    # -- what the driver supplies ---------------------------------------------------

    def _new_request(self, event: ev.BeginRequest) -> R:
        raise NotImplementedError

    def _start(self, req: R) -> None:
        """Run the app for ``req`` (its whole head is here) in a task of its own."""
        raise NotImplementedError

    def _answer_unstarted(self, req: R, answer: bytes) -> None:
        """Send ``answer`` and END_REQUEST for a request whose app never ran, then drop it."""
        raise NotImplementedError

    def _end(self, reason: str) -> None:
        """Close now, nothing more written; requests in progress are aborted."""
        raise NotImplementedError

    @property
    def writing(self) -> bool:
        """True while output waits for the web server to read it."""
        raise NotImplementedError

    def became_idle(self) -> None:
        """The last request ended: close if due, else let the idle timeout run."""
        raise NotImplementedError

    # -- state ----------------------------------------------------------------------

    @property
    def quiet(self) -> bool:
        """True if nothing is in progress: no app running, no answer being written."""
        return (
            self.running == 0
            and self.broken is None
            and not self.writing
            and all(req.gone is None for req in self.requests.values())
        )

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

    def _abort_all(self, reason: str) -> None:
        for req in list(self.requests.values()):
            req.abort(reason)
            if not req.started:
                req.close()
                self._retire(req)

    def _retire(self, req: R) -> None:
        if self.requests.get(req.rid) is req:
            del self.requests[req.rid]
            self.worker.active_requests -= 1
            if not req.input_done:
                self.unread_input = True

    def finished(self, req: R) -> None:
        """The task that ran ``req`` is over, however it ended: forget the request."""
        if not req.ended:
            # Cancelled from outside, or failed: whatever goes on in the
            # background (a WSGI thread) must find the request gone, not write.
            req.abort("the request did not finish")
        self.running -= 1
        req.close()
        self._retire(req)

    def _drop(self, req: R) -> None:
        """Forget a request whose app never ran (its answer is queued or given up)."""
        req.close()
        self._retire(req)
        if not self.requests:
            self.became_idle()

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

    # -- timeouts -------------------------------------------------------------------

    def _head_deadline(self) -> float:
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

    def _head_timed_out(self) -> str:
        """Log that the head deadline passed; the reason to close with."""
        log.warning(
            "closing connection from %s: no complete request head within %gs "
            "(request_header_timeout)",
            self.peer,
            self.worker.options.request_header_timeout,
        )
        return "request head timeout"

    def _read_timed_out(self) -> str:
        """Log that nothing arrived for read_timeout; the reason to close with."""
        timeout = self.worker.options.read_timeout
        if self.requests or self.conn.mid_record:
            log.warning(
                "closing connection from %s: stalled for %gs in the middle of a request",
                self.peer,
                timeout,
            )
        else:
            log.info("closing idle connection from %s after %gs", self.peer, timeout)
        return "read timeout"

    def _send_budget(self, req: R) -> float:
        """How long one wait for the web server to read may last for ``req``.

        One wait is bounded by read_timeout, and all of a request's waits by
        send_timeout, so a peer that reads a little now and then cannot hold it
        forever.
        """
        options = self.worker.options
        return min(options.read_timeout, options.send_timeout - req.send_waited)

    def _send_timed_out(self, req: R | None, budget: float) -> None:
        """A wait for the web server to read ran out of ``budget``: break the connection."""
        options = self.worker.options
        if req is not None and budget < options.read_timeout:
            self._break(
                f"request {req.rid}: the web server took more than "
                f"{options.send_timeout:g}s in all to read the answer (send_timeout)",
                warning=True,
            )
        else:
            self._break(f"the web server read nothing for {options.read_timeout:g}s")

    # -- reading --------------------------------------------------------------------

    def _feed(self, data: bytes) -> str | None:
        """Feed ``data`` to the core and act on its events; why to close, or None."""
        conn = self.conn
        try:
            events = conn.feed(data)
        except ProtocolError as exc:
            log.warning("closing connection from %s: protocol error: %s", self.peer, exc)
            return f"protocol error: {exc}"
        if not self.requests and conn.mid_record and self.head_since is None:
            # The first bytes of the next request on a kept connection.
            self.head_since = self.worker.now()
        for event in events:
            self._dispatch(event)
        return None

    def _peer_closed(self) -> None:
        """The web server closed its side: tell the core, and say what that cut short.

        One line: what the core says was cut (a record, a request body), else
        how many requests were left in progress.
        """
        try:
            self.conn.feed_eof()
        except ProtocolError as exc:
            log.warning("connection from %s closed mid-record: %s", self.peer, exc)
            return
        if self.requests:
            log.info(
                "web server %s closed the connection with %d request(s) in progress",
                self.peer,
                len(self.requests),
            )

    def _dispatch(self, event: ev.Event) -> None:
        kind = type(event)
        rid = event.request_id
        req = self.requests.get(rid)
        # cast(): compiled, a checked cast reads the field directly, where
        # the base class's type would make it a lookup by name. Body pieces
        # are bytes here (views come only from feed_owned, which these
        # drivers do not use): checked too, when compiled.
        if kind is StdinData:
            if req is not None:
                self._push(req, req.body, cast(bytes, cast(StdinData, event).data))
        elif kind is StdinEnd:
            if req is not None:
                req.input_done = True
                req.body.end()
        elif kind is DataChunk:
            if req is not None and req.data is not None:
                self._push(req, req.data, cast(bytes, cast(DataChunk, event).data))
        elif kind is DataEnd:
            if req is not None and req.data is not None:
                req.data.end()
        elif kind is BeginRequest:
            self._begin(event)  # type: ignore[arg-type]
        elif kind is Params:
            if req is not None:
                req.params = cast(Params, event).params
                req.started = True
                self.running += 1
                self._start(req)
        elif kind is AbortRequest:
            if req is not None and req.gone is None:
                # (Once gone, the request is being answered already.)
                log.info("request %d from %s aborted by the web server", rid, self.peer)
                req.abort("aborted by the web server")
                if not req.started:
                    self._answer_unstarted(req, b"")
        elif kind is RequestRejected:
            self._rejected(req, event)  # type: ignore[arg-type]
        elif kind is RequestRefused:
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

    def _rejected(self, req: R | None, event: ev.RequestRejected) -> None:
        """The core refused what the request sent (a limit broken): end its input, or answer."""
        reason = event.reason
        log.warning("rejected request %d from %s: %s", event.request_id, self.peer, reason)
        if req is None:
            return
        if req.started:
            if event.http_status == 413:
                # Cut at max_body_size: the app's next read raises,
                # so a partial body is never taken for the whole.
                too_large = RequestBodyTooLarge(reason)
                req.body.fail(too_large)
                if req.data is not None:
                    req.data.fail(too_large)
            else:
                req.body.end()  # the app gets what arrived, then EOF
        else:
            req.gone = reason
            self._answer_unstarted(req, error_response(event.http_status))

    def _push(self, req: R, body: SpooledBody, data: bytes) -> None:
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
        if worker.active_requests >= worker._max_reqs:
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
        req = self._new_request(event)
        req.since = worker.now() if self.head_since is None else self.head_since
        self.head_since = None
        self.requests[rid] = req
        worker.active_requests += 1

    def _refused(self) -> None:
        """A BEGIN_REQUEST was answered with a refusal: that request is over."""
        if not self.requests:
            self.head_since = None
            self.quiet_since = self.worker.now()

    # -- writing --------------------------------------------------------------------

    def _queue_end(self, req: R, app_status: int, tail: bytes, force_tail: bool) -> bool:
        """Queue ``tail`` and END_REQUEST and retire the id; False if it was ended already.

        ``tail`` goes only to a request the web server still wants, unless
        ``force_tail`` (the answer to one refused before its app ran).
        """
        if self.broken is not None:
            raise ClientGone(self.broken)
        if req.ended:
            return False
        if tail and (req.gone is None or force_tail):
            self.conn.send_stdout(req.rid, tail)
        # Retired before the bytes leave: the web server may reuse the id
        # as soon as it reads END_REQUEST.
        self._retire(req)
        req.ended = True
        self.conn.end_request(req.rid, app_status)
        return True

    async def end(self, req: R, app_status: int, tail: bytes = b"") -> None:
        """Send ``tail`` (the rest of the response) and END_REQUEST, and retire the id."""
        raise NotImplementedError

    async def send_stdout(self, req: R, data: bytes) -> None:
        """Send part of the response, waiting while the web server reads; raises ClientGone."""
        raise NotImplementedError

    async def send_stderr(self, req: R, data: bytes) -> None:
        raise NotImplementedError


class _Stdout:
    """An ASGIResponder's ``write``: the request's STDOUT.

    An object, not a closure: compiled (setup.py), a nested function and the
    environment that holds it refer to each other, and such a cycle per
    request would be left for the garbage collector instead of going with
    the request.
    """

    __slots__ = ("c", "req")

    def __init__(self, c: MultiplexConnection[Any], req: Request) -> None:
        self.c = c
        self.req = req

    async def __call__(self, data: bytes) -> None:
        forkguard.check()  # a child the app forked must not answer a second time
        await self.c.send_stdout(self.req, data)


class _Stderr(_Stdout):
    """An ASGIResponder's ``stderr``: the request's STDERR (see :class:`_Stdout`)."""

    __slots__ = ()

    async def __call__(self, data: bytes) -> None:
        forkguard.check()
        await self.c.send_stderr(self.req, data)


# Compiled by mypyc (setup.py); the trio worker, plain Python, subclasses it.
@mypyc_attr(allow_interpreted_subclasses=True)
class MultiplexWorker(WorkerBase, Generic[C, R]):
    """A worker that serves many connections, and every request id on them, at once.

    The driver's subclass runs the loop; it supplies :meth:`now`,
    :attr:`waits`, :meth:`_track` and, if it runs WSGI apps, :meth:`_run_wsgi`.
    """

    #: How ASGIResponder waits on this driver's loop.
    waits: Waits

    def _setup(self) -> None:
        self.interface = resolve_interface(self.app, self.options.interface)
        opts = self.options
        # Any connection may use the whole process's capacity; GET_VALUES tells.
        self.limits = replace(
            opts.limits,
            max_active_ids=max(1, opts.max_reqs),
            max_conns=fit_descriptor_limit(opts.max_conns),
            max_reqs=opts.max_reqs,
        )
        #: Requests accepted and not yet answered, over every connection.
        self.active_requests = 0
        #: Connections being served (not those being closed): max_conns counts these.
        self.live: set[C] = set()
        #: The ASGI lifespan state, once the app's startup said it has one.
        self._state: dict[str, Any] | None = None
        # Settings read on every request, read once: the options are a
        # plain-Python object, and compiled code looks each attribute up by name.
        self._script_name = opts.script_name
        self._read_timeout = opts.read_timeout
        self._max_reqs = opts.max_reqs

    @property
    def connections(self) -> int:
        return len(self.live)

    def now(self) -> float:
        """The loop's clock, in seconds."""
        raise NotImplementedError

    # -- connections ----------------------------------------------------------------

    def admit(self, peer: object, name: str) -> bool:
        """May a new connection from ``peer`` (logged as ``name``) be served?

        No if the peer is not an allowed client; at ``max_conns``, the
        quietest connection is closed to make room, and only if all are busy
        is the new one refused. The caller closes a refused one.
        """
        options = self.options
        self.hooks.connection_accepted()
        if options.allowed_clients and not peer_allowed(peer, options.allowed_clients):
            log.warning("refused connection from %s: not an allowed client", name)
            return False
        if len(self.live) >= self.limits.max_conns:
            victim = self.quietest()
            if victim is None:
                log.warning(
                    "closing connection from %s: all %d connections are busy (max_conns)",
                    name,
                    len(self.live),
                )
                return False
            log.warning(
                "closing the connection from %s, quiet for %.1fs, to make room for one "
                "from %s: %d connections (max_conns)",
                victim.peer,
                self.now() - victim.quiet_since,
                name,
                len(self.live),
            )
            self.live.discard(victim)
            victim.evict()
        return True

    def quietest(self) -> C | None:
        """The connection quiet for longest (no request in progress), or None if all are busy.

        Idle kept connections and ones that have not sent a whole request
        head yet cost the attacker nothing to open: when the slots run out,
        one of them makes room instead of a new connection being refused.
        """
        best: C | None = None
        for c in self.live:
            if c.quiet and (best is None or c.quiet_since < best.quiet_since):
                best = c
        return best

    # -- one request ----------------------------------------------------------------

    def _track(self, token: object, req: R) -> stacks.Runner | None:
        """Record what runs this request's app, for its stack in the slowlog.

        Returns the runner, if the driver made one now, for the request's
        responder (and WSGI thread) to be noted in it.
        """
        raise NotImplementedError

    def _untrack(self, token: object) -> None:
        """The request of ``token`` is over: forget what :meth:`_track` recorded."""
        stacks.untrack(token)

    def _request_over(self, req: R) -> None:
        """Called last when a request's task ends (after the hooks heard of it)."""

    def _last_writer(self, c: C, req: R) -> Write | None:
        """How the ASGI response's last piece is sent (None: as the others)."""
        return None

    def _head_writer(self, c: C, req: R) -> Write | None:
        """How the CGI head goes ahead of a large first piece (None: joined to it)."""
        return None

    async def serve_request(self, c: C, req: R) -> None:
        """Run one request, from the hooks' start to END_REQUEST, whatever happens to it."""
        hooks = self.hooks
        status = 0
        head: bytes | None = None
        token = hooks.request_started(req.params)
        runner = self._track(token, req)
        try:
            app_status = 0
            tail = b""
            with req.app_scope():
                answer = hooks.intercept(req.params)
                if answer is not None:
                    head = tail = render_answer(answer, req.params.get("REQUEST_METHOD", "GET"))
                    status = int(answer.status[:3])
                elif self.interface == "asgi":
                    # Awaited here, not in a helper coroutine: one level less
                    # for every request to go through.
                    responder = self._responder(c, req)
                    if runner is not None:
                        runner.responder = responder  # where its stack starts (fcgi.stacks)
                    status, app_status, head = await responder.run()
                    forkguard.verify()
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
            c.finished(req)
            hooks.request_finished(token, status, head)
            self._untrack(token)
            if not c.requests:
                c.became_idle()
            if hooks.should_stop() and not self._stopping:
                self.stop()
            self._request_over(req)

    def _responder(self, c: C, req: R) -> ASGIResponder:
        """The ASGI request cycle of ``req``, ready to run (see :meth:`ASGIResponder.run`)."""
        scope = build_scope(req.params, mount=self._script_name, state=self._state)
        responder = ASGIResponder(
            self.app,
            scope,
            req.body,
            _Stdout(c, req),
            waits=self.waits,
            write_last=self._last_writer(c, req),
            write_head=self._head_writer(c, req),
            stderr=_Stderr(c, req) if c.tracebacks else None,
            body_timeout=self._read_timeout,
            silence_timed=lambda: c.conn.mid_record,
        )
        req.responder = responder
        if req.gone is not None:
            responder.disconnect(req.gone)
        return responder

    async def _run_wsgi(
        self, c: C, req: R, runner: stacks.Runner | None
    ) -> tuple[int, int, bytes | None, bytes]:
        """Run a WSGI app: (HTTP status, appStatus, head, the output left to send)."""
        raise NotImplementedError
