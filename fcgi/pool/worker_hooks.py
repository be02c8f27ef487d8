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
from dataclasses import dataclass
from types import FrameType

from fcgi.hooks import Answer
from fcgi.pool.access_log import AccessLog, RequestRecord
from fcgi.pool.config import PoolConfig
from fcgi.pool.listen_queue import total_listen_queue
from fcgi.pool.scoreboard import Scoreboard, Slot, SlotState
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


@dataclass(slots=True)
class _Running:
    params: Mapping[str, str]
    start: float
    start_mono: float
    cpu_start: float


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
        self.board.write_slot(index, self._slot)

    # -- life cycle (called by worker_process) --------------------------------

    def ready(self) -> None:
        """The app is imported and the driver built: from now on we accept."""
        self._slot.state = SlotState.IDLE
        self.board.write_slot(self.index, self._slot)

    def publish(self) -> None:
        """Write counters not yet on the scoreboard (connections without a request)."""
        self.board.write_slot(self.index, self._slot)

    def request_stop(self) -> None:
        self.stop_requested = True
        self.signalled = True

    # -- WorkerHooks ------------------------------------------------------------

    def connection_accepted(self) -> None:
        # Published with the next request's slot write: one write per request
        # start and end is all the scoreboard costs a request.
        self._slot.accepted += 1

    def request_started(self, params: Mapping[str, str]) -> object:
        slot = self._slot
        self._next_token += 1
        token = self._next_token
        # CPU time is read once per request, at its end: the idle wait before
        # a request costs no CPU, so the previous reading stands in for its start.
        running = _Running(params, time.time(), time.monotonic(), self._cpu_mark)
        self._running[token] = running
        slot.state = SlotState.BUSY
        slot.request_seq += 1
        slot.active = len(self._running)
        if slot.active == 1:
            self._show(running)
        self.board.write_slot(self.index, slot)
        return token

    def _show(self, running: _Running) -> None:
        """Put ``running`` in the slot as "the" request (the oldest one running)."""
        slot = self._slot
        params = running.params
        slot.request_start = running.start
        slot.request_start_mono = running.start_mono
        slot.method = params.get("REQUEST_METHOD", "")
        slot.uri = request_uri(params)
        try:
            slot.content_length = int(params.get("CONTENT_LENGTH") or 0)
        except ValueError:
            slot.content_length = 0

    def request_finished(self, token: object, status: int) -> None:
        slot = self._slot
        running = self._running.pop(token, None) if isinstance(token, int) else None
        if running is None:
            return
        end = time.time()
        duration = max(0.0, time.monotonic() - running.start_mono)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu_mark = usage.ru_utime + usage.ru_stime
        cpu = self._cpu_mark - running.cpu_start
        slot.requests += 1
        slot.active = len(self._running)
        if self._running:
            self._show(next(iter(self._running.values())))
        else:
            slot.state = SlotState.IDLE
        slot.last_duration = duration
        slot.last_cpu = 100.0 * cpu / duration if duration > 0 else 0.0
        slot.last_memory = usage.ru_maxrss * 1024
        slot.last_status = status
        self.board.write_slot(self.index, slot)
        if self.access_log is not None:
            self.access_log.write(
                RequestRecord(
                    running.params,
                    status,
                    running.start,
                    end,
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
