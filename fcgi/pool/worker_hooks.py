"""The worker's side of the scoreboard: :class:`fcgi.hooks.WorkerHooks` for a pool.

A driver (SyncWorker, later the trio worker) calls these at connection and
request boundaries; they record the figures in the worker's own slot, write the
access log, answer the status and ping paths, and decide when the worker has
served its time (``max_requests`` with jitter, ``max_memory``, a stop signal).
The single-process server uses the same hooks on a scoreboard of one
(:class:`SingleProcessHooks`), with a thread of its own for the slowlog
(:class:`SlowRequestWatcher`).
"""

from __future__ import annotations

import logging
import os
import random
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Final, TypeVar

from fcgi import forkguard, stacks
from fcgi.errors import ConfigError
from fcgi.escape import Lines, escape
from fcgi.hooks import Answer
from fcgi.listen_queue import total_listen_queue
from fcgi.pool import access_log as access_log_module
from fcgi.pool.access_log import AccessLog, RequestRecord
from fcgi.pool.config import PoolConfig
from fcgi.pool.reexec import MASTER_SIGNALS
from fcgi.pool.scoreboard import METHOD_LEN, URI_LEN, Header, Scoreboard, Slot, SlotState
from fcgi.pool.status import SINGLE, collect_from_board, ping_answer, render
from fcgi.proctitle import set_title, worker_busy_prefix, worker_busy_title, worker_idle_title

log = logging.getLogger("fcgi.pool")

_T = TypeVar("_T")

#: Seconds between two checks, at the end of a request, that the master is
#: still this worker's parent (the backstop for a missed PR_SET_PDEATHSIG).
MASTER_CHECK_INTERVAL: Final = 1.0

_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
# Plain ints: an IntEnum member costs a class attribute lookup on each use.
_BUSY: Final = int(SlotState.BUSY)
_IDLE: Final = int(SlotState.IDLE)


def current_rss() -> int:
    """Resident set size of this process in bytes (from /proc/self/statm)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _content_length(text: str) -> int:
    """CONTENT_LENGTH as the scoreboard shows it: 0 unless a plain non-negative 64-bit number."""
    try:
        length = int(text)
    except ValueError:
        return 0
    # The scoreboard field is a signed 64-bit integer: a peer's
    # -99999999999999999999 must not crash the worker in pack_into.
    return length if 0 <= length < 1 << 63 else 0


def request_path(params: Mapping[str, str]) -> str:
    """The path part of the request, whatever the web server chose to send."""
    uri = params.get("REQUEST_URI")
    if uri:
        return uri.split("?", 1)[0]
    return params.get("SCRIPT_NAME", "") + params.get("PATH_INFO", "")


def request_uri(params: Mapping[str, str]) -> str:
    uri = params.get("REQUEST_URI")
    if uri:
        return uri
    path = params.get("SCRIPT_NAME", "") + params.get("PATH_INFO", "")
    query = params.get("QUERY_STRING", "")
    return f"{path}?{query}" if query else path


class _Running:
    """A request running now: its params and when it started (wall clock, monotonic).

    A class rather than a tuple: compiled, its floats are read as floats,
    where a tuple's items would be unpacked through an iterator and unboxed.
    """

    __slots__ = ("params", "start", "start_mono")

    def __init__(self, params: Mapping[str, str], start: float, start_mono: float) -> None:
        self.params = params
        self.start = start
        self.start_mono = start_mono


#: The clocks, bound once: compiled code that calls ``time.monotonic()``
#: looks the function up in the module first, on every request.
_monotonic: Final = time.monotonic
_wall_clock: Final = time.time

#: CPU time and peak memory come from getrusage(), a system call whose cost
#: shows in a request that takes 20 us. Without an access log (which needs
#: the figures of each request) they are read at most this often, in seconds,
#: and "last request cpu" covers the requests finished since the last reading:
#: exactly the last request whenever requests take longer than this.
CPU_READ_INTERVAL: Final = 0.001


class ScoreboardHooks:
    """WorkerHooks that keep one scoreboard slot up to date."""

    #: How the slot's state reaches ``ps`` (only on a change of state or route).
    _set_title: Callable[[str], None] = staticmethod(set_title)
    #: What the status page names the mode; None: the pool's ``pm``.
    process_manager: str | None = None

    def __init__(
        self,
        config: PoolConfig,
        board: Scoreboard,
        index: int,
        generation: int,
        listeners: Sequence[socket.socket],
        access_log: AccessLog | None = None,
    ) -> None:
        self.config = config
        self.board = board
        self.index = index
        self.listeners = list(listeners)
        self.access_log = access_log
        self.stop_requested = False
        self.stop_reason = ""
        #: True when the master asked (SIGTERM/SIGQUIT), not a limit of our own.
        self.signalled = False
        self._slot = Slot(
            state=SlotState.STARTING,
            pid=os.getpid(),
            generation=generation,
            started=time.time(),
        )
        self._max_requests = 0
        if config.max_requests:
            self._max_requests = config.max_requests + random.randint(0, config.max_requests_jitter)
        #: Requests running now, oldest first, by the token request_started gave.
        self._running: dict[int, _Running] = {}
        self._next_token = 0
        #: CPU seconds and monotonic time at the last getrusage() reading, and
        #: the wall time of the requests finished since.
        self._cpu_mark = _cpu_seconds()
        self._cpu_mark_at = time.monotonic()
        self._busy_since_mark = 0.0
        self._writer = board.writer(index)
        self._write_whole()
        #: Made once: an idle worker's title never changes, nor a busy one's start.
        self._idle_title = worker_idle_title(config.name)
        #: The title set last, and the busy title made last with its method
        #: and URI: a worker serving the same route again sets nothing.
        self._title = ""
        self._busy_title = ""
        self._busy_method = ""
        self._busy_uri = ""
        #: True once the driver calls waiting(): the idle title then waits
        #: until the worker really has nothing to do, so a worker taking
        #: request after request pays no title change between them.
        self._lazy_idle = False
        #: When request_finished next asks whether the master still lives.
        self._next_master_check = 0.0
        self._busy_prefix = worker_busy_prefix(config.name)
        # The settings read on every request, read once: the configuration
        # is a plain-Python object, each of its attributes a dict lookup.
        self._max_memory = config.max_memory
        self._no_pages = config.status_path is None and config.ping_path is None

    def _write_whole(self) -> None:
        self.board.write_slot(self.index, self._slot)
        self._writer.sync()

    # -- life cycle (called by worker_process) --------------------------------

    def ready(self) -> None:
        """The driver can serve (after an ASGI app's lifespan startup): from now on we accept."""
        self._slot.state = SlotState.IDLE
        self._write_whole()
        self._show_idle()

    def publish(self) -> None:
        """Write counters not yet on the scoreboard (connections without a request)."""
        forkguard.check()  # the slot is the worker's, not a child's the app forked
        self._write_whole()

    def request_stop(self) -> None:
        self.stop_requested = True
        self.signalled = True

    # -- WorkerHooks ------------------------------------------------------------
    #
    # A request costs the scoreboard two writes, one at each end, each a single
    # pack of the fields that changed (see SlotWriter).

    def connection_accepted(self) -> None:
        # No forkguard check here nor in request_started: a child the app
        # forked comes back through request_finished (which checks) before
        # it could reach either.
        # Published with the next slot write (both request writes carry it):
        # "accepted conn" needs no write of its own.
        self._slot.accepted += 1

    def request_started(self, params: Mapping[str, str]) -> object:
        self._next_token = token = self._next_token + 1
        start = _wall_clock()
        start_mono = _monotonic()
        requests = self._running
        requests[token] = _Running(params, start, start_mono)
        slot = self._slot
        slot.request_seq = request_seq = slot.request_seq + 1
        slot.state = _BUSY
        slot.active = active = len(requests)
        route = self._show(params, start, start_mono) if active == 1 else None
        self._writer.request_started(
            slot.accepted,
            _BUSY,
            active,
            request_seq,
            slot.request_start,
            slot.request_start_mono,
            slot.content_length,
            route,
        )
        return token

    def _show(
        self, params: Mapping[str, str], start: float, start_mono: float
    ) -> tuple[bytes, bytes] | None:
        """Make this request "the" one the slot shows (the oldest one running).

        Returns the slot's new method and URI bytes, or None when the route
        is the one shown already.
        """
        slot = self._slot
        slot.request_start = start
        slot.request_start_mono = start_mono
        # As a dict (the drivers' params are one): compiled, a dict's get()
        # is a direct call, a mapping's a method looked up by name.
        if type(params) is not dict:
            params = dict(params)
        plain: dict[str, str] = params
        length = plain.get("CONTENT_LENGTH")
        if length:
            slot.content_length = _content_length(length)
        else:
            slot.content_length = 0
        method = plain.get("REQUEST_METHOD", "")
        uri = plain.get("REQUEST_URI") or request_uri(plain)
        # The scoreboard's bytes and the title follow the request shown, so
        # they are made again only when its route changes (most requests of a
        # busy site repeat one).
        if uri == self._busy_uri and method == self._busy_method:
            if self._title is not self._busy_title:
                self._title = self._busy_title
                self._set_title(self._busy_title)
            return None
        slot.method = self._busy_method = method
        slot.uri = self._busy_uri = uri
        self._busy_title = worker_busy_title(self._busy_prefix, method, uri)
        self._title = self._busy_title
        self._set_title(self._busy_title)
        return (
            method.encode("latin-1", "replace")[:METHOD_LEN],
            uri.encode("latin-1", "replace")[:URI_LEN],
        )

    def request_finished(self, token: object, status: int, head: bytes | None = None) -> None:
        forkguard.check()
        requests = self._running
        # Annotated: the token is an object to the driver, and an untyped
        # value here would make every attribute read below a lookup by name.
        running: _Running | None = requests.get(token)  # type: ignore[call-overload]
        if running is None:
            return
        del requests[token]  # type: ignore[arg-type]
        slot = self._slot
        params = running.params
        start = running.start
        start_mono = running.start_mono
        end_mono = _monotonic()
        if end_mono >= self._next_master_check:
            self._next_master_check = end_mono + MASTER_CHECK_INTERVAL
            self._check_master()
        duration = max(0.0, end_mono - start_mono)
        self._busy_since_mark += duration
        if self.access_log is not None or end_mono - self._cpu_mark_at >= CPU_READ_INTERVAL:
            # The idle waits between requests cost no CPU, so the CPU used
            # since the last reading belongs to the requests finished since.
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu_now = usage.ru_utime + usage.ru_stime
            busy = self._busy_since_mark
            slot.last_cpu = 100.0 * (cpu_now - self._cpu_mark) / busy if busy > 0 else 0.0
            slot.last_memory = usage.ru_maxrss * 1024
            self._cpu_mark = cpu_now
            self._cpu_mark_at = end_mono
            self._busy_since_mark = 0.0
        slot.requests += 1
        slot.active = active = len(requests)
        if active:
            oldest = next(iter(requests.values()))
            route = self._show(oldest.params, oldest.start, oldest.start_mono)
            slot.state = _BUSY
        else:
            slot.state = _IDLE
            if not self._lazy_idle:
                self._show_idle()
        slot.last_duration = duration
        slot.last_status = status
        self._writer.request_finished(
            slot.requests,
            slot.accepted,
            duration,
            slot.last_cpu,
            slot.last_memory,
            status,
            slot.state,
            active,
        )
        if active:
            # Another request is now the one shown: its start fields too.
            self._writer.request_started(
                slot.accepted,
                _BUSY,
                active,
                slot.request_seq,
                slot.request_start,
                slot.request_start_mono,
                slot.content_length,
                route,
            )
        if self.access_log is not None:
            self.access_log.write(
                RequestRecord(
                    params,
                    status,
                    start,
                    start + duration,
                    slot.last_cpu,
                    slot.last_memory,
                    self.config.name,
                    head,
                )
            )
        if self._max_requests and slot.requests >= self._max_requests and not self.stop_requested:
            self.stop_requested = True
            self.stop_reason = f"served {slot.requests} requests (max_requests)"
        max_memory = self._max_memory
        if max_memory and not self.stop_requested:
            rss = current_rss()
            if rss > max_memory:
                self.stop_requested = True
                self.stop_reason = (
                    f"RSS {rss // 1024} KiB above max_memory {max_memory // 1024} KiB"
                )

    def waiting(self) -> None:
        """The driver has nothing to do and is about to wait: show the idle title now."""
        self._lazy_idle = True
        if not self._running and self._title is not self._idle_title:
            self._show_idle()

    def _show_idle(self) -> None:
        self._title = self._idle_title
        self._set_title(self._idle_title)

    def intercept(self, params: Mapping[str, str]) -> Answer | None:
        if self._no_pages:
            return None
        cfg = self.config
        path = request_path(params)
        script = params.get("SCRIPT_NAME", "")
        if cfg.ping_path is not None and cfg.ping_path in (path, script):
            return ping_answer(cfg.ping_response)
        if cfg.status_path is not None and cfg.status_path in (path, script):
            queue = total_listen_queue(self.listeners)
            status = collect_from_board(
                cfg, self.board, queue, process_manager=self.process_manager
            )
            return render(status, params.get("QUERY_STRING", ""))
        return None

    def should_stop(self) -> bool:
        return self.stop_requested

    def _check_master(self) -> None:
        """Stop after this request if the master died and its death signal missed us.

        At the end of a request, at most once per MASTER_CHECK_INTERVAL (a
        getppid() system call): should_stop() is asked several times per
        request and stays a plain flag. An idle worker learns of the master's
        death from PR_SET_PDEATHSIG.
        """
        if not self.stop_requested and forkguard.parent_gone():
            self.stop_requested = True
            self.stop_reason = "the master is gone"

    # -- slowlog ------------------------------------------------------------------

    def dump_stack(self, frame: FrameType | None) -> None:
        """Write the stack of each request over the slowlog timeout (SIGUSR2 handler).

        ``frame`` is what the signal interrupted in the main thread: the
        request's own stack in the sync worker; under trio, each request's
        task or thread is found through :mod:`fcgi.stacks`. Several requests
        in flight (trio): those past the smaller of the two timeouts are
        written, each under its own header, or all of them if none is (a
        dump asked by hand). The app's frames come first and fcgi's are
        folded into one line.

        A request past ``request_terminate_timeout`` is about to be killed:
        once its stack is written, :func:`fcgi.stacks.acknowledge_dump` tells
        the master not to ask faulthandler for a second copy.
        """
        running = list(self._running.items())
        if not running:
            return
        cfg = self.config
        now = time.monotonic()
        terminate = cfg.request_terminate_timeout
        limits = [t for t in (cfg.request_slowlog_timeout, terminate) if t > 0]
        threshold = min(limits) if limits else 0.0
        chosen = [item for item in running if now - item[1].start_mono >= threshold] or running
        terminating = False
        for token, request in chosen:
            params = request.params
            elapsed = now - request.start_mono
            over = terminate > 0 and elapsed >= terminate
            terminating = terminating or over
            frames = stacks.request_frames(stacks.runner_of(token), frame)
            lines = list(stacks.format_frames(frames)) or ["  (no Python frame)"]
            self._write_slowlog(params, elapsed, over, lines)
        if terminating:
            stacks.acknowledge_dump()

    def _write_slowlog(
        self, params: Mapping[str, str], elapsed: float, over: bool, lines: list[str]
    ) -> None:
        """One request's stack: into the slowlog file, or the error log if there is none."""
        cfg = self.config
        method = params.get("REQUEST_METHOD", "")
        uri = params.get("REQUEST_URI") or request_uri(params)
        why = ", past request_terminate_timeout" if over else ""
        path = cfg.slowlog
        if path is None or path == "-":
            # The error log's own formatter escapes the method and the URI and
            # marks each line of the stack as a continuation of this record.
            log.warning(
                "[pool %s] child %d, method %s, uri %s: running %.3f s%s; "
                "stack of the request, most recent call first:\n%s",
                cfg.name,
                os.getpid(),
                method,
                uri,
                elapsed,
                why,
                Lines("\n".join(lines)),
            )
            return
        stamp = time.strftime("%d-%b-%Y %H:%M:%S")
        text = (
            f"\n[{stamp}]  [pool {cfg.name}] pid {os.getpid()}\n"
            # Escaped: a CR or LF in the URI would write lines of its own.
            f"request: {escape(method)} {escape(uri)} (running {elapsed:.3f} s{why})\n"
            "stack of the request, most recent call first:\n" + "\n".join(lines) + "\n"
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, text.encode("utf-8", "replace"))
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("[pool %s] cannot write slowlog %s: %s", cfg.name, path, exc)


# -- the single-process server ---------------------------------------------------------


def _keep_title(title: str) -> None:
    """The single process keeps its command line as its title (see SingleProcessHooks)."""


def single_process_needs_hooks(config: PoolConfig) -> bool:
    """Whether the single-process server needs a scoreboard: one of its pages or logs is on.

    Without any, it keeps :class:`fcgi.hooks.NoHooks`, which cost nothing per request.
    """
    return bool(
        config.access_log
        or config.status_path is not None
        or config.ping_path is not None
        or config.request_slowlog_timeout > 0
    )


class SingleProcessHooks(ScoreboardHooks):
    """The pool worker's hooks for the single-process server: a scoreboard of one.

    The same slot, access log, status and ping pages and slowlog as a pool's
    worker, on an anonymous board of one slot that nothing outside this
    process reads: the status page shows a pool of one process, ``process
    manager: single``. What only a pool has is left out. There is no master
    whose death to watch, and no limit (max_requests, max_memory) that ends
    the process: those settings start a master. The process title stays the
    command line an operator typed (supervisord, systemd and ``pgrep -f``
    find the process by it), as it does without these hooks.
    """

    _set_title = staticmethod(_keep_title)
    # Annotated as in the base class: mypyc (setup.py) needs the same type.
    process_manager: str | None = SINGLE

    @classmethod
    def open(cls, config: PoolConfig, listeners: Sequence[socket.socket]) -> SingleProcessHooks:
        """The board, the access log, and a check that the slowlog file can be written.

        Raises :class:`~fcgi.errors.ConfigError` naming the file that cannot
        be opened: before the server says it serves, as a pool's preflight does.
        """
        board = Scoreboard(1)
        board.write_header(Header(start_time=time.time()))
        access_log_module.master_pid = os.getpid()  # %P: this process is its own master
        access_log = None
        access_path, slowlog = config.access_log, config.slowlog
        try:
            if access_path:
                access_log = _open_log(
                    "access_log", access_path, lambda: AccessLog(access_path, config.access_format)
                )
            if config.request_slowlog_timeout > 0 and slowlog and slowlog != "-":
                # Written by opening it each time (as a pool's worker does): tried once now.
                _open_log("slowlog", slowlog, lambda: os.close(_append(slowlog)))
        except BaseException:
            board.close()
            raise
        hooks = cls(config, board, 0, 0, listeners, access_log)
        hooks.ready()
        return hooks

    def _check_master(self) -> None:
        """No master: nothing to check."""

    def reopen(self) -> None:
        """SIGUSR1: write the access log into a new file of the same name (logrotate)."""
        if self.access_log is not None:
            try:
                self.access_log.reopen()
            except OSError as exc:
                log.warning("cannot reopen access log %s: %s", self.access_log.path, exc)

    def close(self) -> None:
        if self.access_log is not None:
            self.access_log.close()
        self.board.close()


def _append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def _open_log(key: str, path: str, opener: Callable[[], _T]) -> _T:
    """``opener()``; an OSError becomes the ConfigError a pool's preflight would report."""
    try:
        return opener()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot write {path!r}: {exc.strerror}") from None


class SlowRequestWatcher:
    """``request_slowlog_timeout`` in the single-process server, without a master.

    A pool's master reads each worker's slot and sends SIGUSR2; the single
    process has no master, and SIGUSR2 means "reload" to it. So a daemon
    thread of its own reads the slot as the master would, and when the
    request shown there runs past the timeout, counts it on the status page
    ("slow requests") and writes its stack through
    :meth:`ScoreboardHooks.dump_stack`, given the main thread's current frame
    (where the sync worker runs the app; under trio :mod:`fcgi.stacks` finds
    each request's task or thread). A request is written once, however long
    it runs.

    The thread blocks the signals the server handles (they go to the main
    thread, and stay pending across the exec of a reload), and it is the
    only writer of the board's header once the server runs.
    """

    def __init__(self, hooks: ScoreboardHooks, timeout: float) -> None:
        self.hooks = hooks
        self.timeout = timeout
        #: As often as the master looks: a quarter of the timeout, not under 50 ms.
        self.period = max(0.05, timeout / 4)
        self._stop = threading.Event()
        # Not "_thread": compiled by mypyc (setup.py), that attribute becomes a
        # C struct field named __thread, a keyword of the C compiler.
        self._runner = threading.Thread(target=self._run, name="fcgi-slowlog", daemon=True)

    def start(self) -> None:
        # The thread inherits the mask in force when it is created.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        try:
            self._runner.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def stop(self) -> None:
        self._stop.set()
        if self._runner.is_alive():
            self._runner.join(self.period + 1.0)

    def _run(self) -> None:
        board = self.hooks.board
        main = threading.main_thread().ident
        logged_seq = 0
        while not self._stop.wait(self.period):
            slot = board.read_slot(self.hooks.index)
            if slot.state != _BUSY or slot.request_seq == logged_seq:
                continue
            elapsed = time.monotonic() - slot.request_start_mono
            if elapsed <= self.timeout:
                continue
            logged_seq = slot.request_seq
            header = board.read_header()
            header.slow_requests += 1
            board.write_header(header)
            log.warning(
                "[pool %s] pid %d, method %s, uri %s: executing too slow (%.3f s), logging",
                self.hooks.config.name,
                os.getpid(),
                slot.method,
                slot.uri,
                elapsed,
            )
            try:
                self.hooks.dump_stack(sys._current_frames().get(main or 0))
            except Exception:
                log.exception("cannot write the slow request's stack")
