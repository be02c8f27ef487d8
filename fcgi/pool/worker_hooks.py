"""The worker's side of the scoreboard: :class:`fcgi.hooks.WorkerHooks` for a pool.

A driver (SyncWorker, later the trio worker) calls these at connection and
request boundaries; they record the figures in the worker's own slot, write the
access log, answer the status and ping paths, and decide when the worker has
served its time (``max_requests`` with jitter, ``max_memory``, a stop signal).
"""

from __future__ import annotations

import logging
import os
import random
import resource
import socket
import time
import traceback
from collections.abc import Mapping, Sequence
from types import FrameType

from fcgi.hooks import Answer
from fcgi.pool.access_log import AccessLog, RequestRecord
from fcgi.pool.config import PoolConfig
from fcgi.pool.listen_queue import total_listen_queue
from fcgi.pool.scoreboard import METHOD_LEN, URI_LEN, Scoreboard, Slot, SlotState
from fcgi.pool.status import collect_from_board, ping_answer, render

log = logging.getLogger("fcgi.pool")

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


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


#: A request running now: (params, wall-clock start, monotonic start, CPU
#: seconds at its start). A plain tuple: one is made per request.
_Running = tuple[Mapping[str, str], float, float, float]


class ScoreboardHooks:
    """WorkerHooks that keep one scoreboard slot up to date."""

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
        self._cpu_mark = _cpu_seconds()
        #: The shown request's method and URI as they go into the slot.
        self._method = b""
        self._uri = b""
        self._writer = board.writer(index)
        self._write_whole()

    def _write_whole(self) -> None:
        self.board.write_slot(self.index, self._slot)
        self._writer.sync()

    # -- life cycle (called by worker_process) --------------------------------

    def ready(self) -> None:
        """The app is imported and the driver built: from now on we accept."""
        self._slot.state = SlotState.IDLE
        self._write_whole()

    def publish(self) -> None:
        """Write counters not yet on the scoreboard (connections without a request)."""
        self._write_whole()

    def request_stop(self) -> None:
        self.stop_requested = True
        self.signalled = True

    # -- WorkerHooks ------------------------------------------------------------
    #
    # A request costs the scoreboard two writes, one at each end, each a single
    # pack of the fields that changed (see SlotWriter).

    def connection_accepted(self) -> None:
        # Published with the next request's end: "accepted conn" needs no write of its own.
        self._slot.accepted += 1

    def request_started(self, params: Mapping[str, str]) -> object:
        slot = self._slot
        self._next_token = token = self._next_token + 1
        # CPU time is read once per request, at its end: the idle wait before
        # a request costs no CPU, so the previous reading stands in for its start.
        running: _Running = (params, time.time(), time.monotonic(), self._cpu_mark)
        requests = self._running
        requests[token] = running
        slot.request_seq += 1
        slot.state = SlotState.BUSY
        slot.active = active = len(requests)
        if active == 1:
            self._show(running)
        self._writer.request_started(
            slot.accepted,
            SlotState.BUSY,
            active,
            slot.request_seq,
            slot.request_start,
            slot.request_start_mono,
            slot.content_length,
            self._method,
            self._uri,
        )
        return token

    def _show(self, running: _Running) -> None:
        """Put ``running`` in the slot as "the" request (the oldest one running)."""
        slot = self._slot
        params, slot.request_start, slot.request_start_mono, _ = running
        slot.method = method = params.get("REQUEST_METHOD", "")
        slot.uri = uri = request_uri(params)
        self._method = method.encode("latin-1", "replace")[:METHOD_LEN]
        self._uri = uri.encode("latin-1", "replace")[:URI_LEN]
        length = params.get("CONTENT_LENGTH")
        try:
            slot.content_length = int(length) if length else 0
        except ValueError:
            slot.content_length = 0

    def request_finished(self, token: object, status: int) -> None:
        running = self._running.pop(token, None)  # type: ignore[call-overload]
        if running is None:
            return
        slot = self._slot
        params, start, start_mono, cpu_start = running
        duration = max(0.0, time.monotonic() - start_mono)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu_mark = cpu_now = usage.ru_utime + usage.ru_stime
        slot.requests += 1
        slot.active = active = len(self._running)
        if active:
            self._show(next(iter(self._running.values())))
            slot.state = SlotState.BUSY
        else:
            slot.state = SlotState.IDLE
        slot.last_duration = duration
        slot.last_cpu = 100.0 * (cpu_now - cpu_start) / duration if duration > 0 else 0.0
        slot.last_memory = usage.ru_maxrss * 1024
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
                SlotState.BUSY,
                active,
                slot.request_seq,
                slot.request_start,
                slot.request_start_mono,
                slot.content_length,
                self._method,
                self._uri,
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
                )
            )
        if self._max_requests and slot.requests >= self._max_requests and not self.stop_requested:
            self.stop_requested = True
            self.stop_reason = f"served {slot.requests} requests (max_requests)"
        if self.config.max_memory and not self.stop_requested:
            rss = current_rss()
            if rss > self.config.max_memory:
                self.stop_requested = True
                self.stop_reason = (
                    f"RSS {rss // 1024} KiB above max_memory {self.config.max_memory // 1024} KiB"
                )

    def intercept(self, params: Mapping[str, str]) -> Answer | None:
        cfg = self.config
        if cfg.status_path is None and cfg.ping_path is None:
            return None
        path = request_path(params)
        script = params.get("SCRIPT_NAME", "")
        if cfg.ping_path is not None and cfg.ping_path in (path, script):
            return ping_answer(cfg.ping_response)
        if cfg.status_path is not None and cfg.status_path in (path, script):
            queue = total_listen_queue(self.listeners)
            return render(
                collect_from_board(cfg, self.board, queue), params.get("QUERY_STRING", "")
            )
        return None

    def should_stop(self) -> bool:
        return self.stop_requested

    # -- slowlog ------------------------------------------------------------------

    def dump_stack(self, frame: FrameType | None) -> None:
        """Append the running request's Python stack to the slowlog (signal handler)."""
        slot = self._slot
        if slot.state != SlotState.BUSY:
            return
        elapsed = time.monotonic() - slot.request_start_mono
        stamp = time.strftime("%d-%b-%Y %H:%M:%S")
        text = (
            f"\n[{stamp}]  [pool {self.config.name}] pid {os.getpid()}\n"
            f"request: {slot.method} {slot.uri} (running {elapsed:.3f} s)\n"
            "Traceback (most recent call last):\n" + "".join(traceback.format_stack(frame))
        )
        path = self.config.slowlog
        try:
            if path is None or path == "-":
                os.write(2, text.encode("utf-8", "replace"))
            else:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
                try:
                    os.write(fd, text.encode("utf-8", "replace"))
                finally:
                    os.close(fd)
        except OSError as exc:
            log.warning("[pool %s] cannot write slowlog %s: %s", self.config.name, path, exc)
