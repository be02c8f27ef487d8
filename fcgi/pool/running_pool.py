"""One pool as the master runs it: its sockets, scoreboard, children and reload state.

The master (:mod:`fcgi.pool.master`) owns the loop and the forking; this class
holds what belongs to a single pool and the decisions that only need its own
state.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fcgi.handoff import Channel
from fcgi.listen_queue import total_listen_queue
from fcgi.pool.config import PoolConfig
from fcgi.pool.reload import Reload
from fcgi.pool.scaling import Census
from fcgi.pool.scoreboard import Header, Scoreboard, Slot, SlotState
from fcgi.pool.worker_output import OutputPipe

#: Seconds the master waits after the first worker that cannot start, before
#: it tries one again; doubled by each attempt that fails too.
START_BACKOFF_FIRST = 1.0
#: The longest wait between two attempts: a fixed deploy or a user created
#: again is taken up within half a minute, at the cost of one failed fork
#: (and one log line) each 30 s while it is not.
START_BACKOFF_MAX = 30.0


class Life(Enum):
    """Where a child is in its life, as the master sees it; it only moves forward.

    ``STARTING -> SERVING -> RETIRING -> KILLED``; a child told to stop while
    STARTING goes straight to RETIRING (or KILLED). Readiness is watched only
    while STARTING: one told to stop first is not capacity and never will
    be, so its start is neither a failure nor a recovery.
    """

    #: Forked; the scoreboard has not shown it past STARTING yet.
    STARTING = "starting"
    #: Seen ready (app imported, driver built): counts as capacity.
    SERVING = "serving"
    #: Told to finish and exit (SIGTERM, graceful): not capacity any more.
    RETIRING = "retiring"
    #: Sent SIGKILL.
    KILLED = "killed"


@dataclass(slots=True)
class Child:
    pid: int
    index: int
    generation: int
    spawned: float
    life: Life = Life.STARTING
    #: When a RETIRING child gets SIGKILL (None: wait for it as long as it
    #: takes). A value the loop reads for its next wake-up, not a stage of
    #: life: whether a retiring child has a deadline depends on who retired
    #: it (a graceful stop has one deadline for all, the master's).
    kill_at: float | None = None
    slowlogged_seq: int = 0
    terminated_seq: int = 0
    outputs: list[OutputPipe] = field(default_factory=list)

    @property
    def live(self) -> bool:
        """Not told to stop: STARTING or SERVING."""
        return self.life is Life.STARTING or self.life is Life.SERVING


class RunningPool:
    def __init__(
        self,
        config: PoolConfig,
        listeners: list[socket.socket],
        handoff: Channel | None = None,
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.n_slots = 2 * config.max_children + 16
        self.board = Scoreboard(self.n_slots)
        self.header = Header(start_time=time.time())
        self.board.write_header(self.header)
        self.children: dict[int, Child] = {}
        self.generation = 0
        #: Static pools: how many workers (SIGTTIN / SIGTTOU move it).
        self.target = config.max_children
        self.spawn_rate = 1
        self.ever_ready = False
        #: Requests one worker runs at once before it counts as wholly busy:
        #: a concurrent worker below it is spare capacity (Census.partly_busy),
        #: so a dynamic pool grows on concurrency, not on busy processes.
        self._concurrency = {"trio": config.threads, "asyncio": config.max_reqs}.get(
            config.worker, 1
        )
        #: CLOCK_MONOTONIC time before which no worker is started (0: none pending).
        self.spawn_blocked_until = 0.0
        #: The current wait between start attempts; 0 while workers start fine.
        self.start_backoff = 0.0
        #: When the last backoff step was decided: a worker forked before it
        #: belongs to an attempt already judged, so its failure does not
        #: double the wait again.
        self.start_backoff_decided = 0.0
        self.reload = Reload()
        self.full_warned = False
        self.app: Any = None
        #: Sync workers pass idle kept connections to each other through it
        #: (fcgi.handoff). Made here, before any fork, so that every worker,
        #: of every generation this master forks, shares it; the trio and
        #: asyncio workers serve every connection at once and need none. An
        #: ondemand pool's master watches it as it watches the listeners: a
        #: connection passed in by the last worker (leaving on max_requests,
        #: or busy with a slow request) starts a worker. ``handoff``: the channel of
        #: the pool of this name before a re-exec, whose workers still use it.
        self.handoff = (handoff or Channel.create()) if config.worker == "sync" else None

    @property
    def name(self) -> str:
        return self.config.name

    # -- reading the scoreboard -------------------------------------------------

    def slot_of(self, child: Child) -> Slot:
        return self.board.read_slot(child.index)

    def live_children(self) -> list[Child]:
        return [c for c in self.children.values() if c.live]

    def census(self) -> Census:
        census = Census()
        for child in self.live_children():
            slot = self.slot_of(child)
            state = slot.state
            if state == SlotState.IDLE:
                census.idle += 1
            elif state == SlotState.BUSY:
                census.busy += 1
                if slot.active < self._concurrency:
                    census.partly_busy += 1
            else:
                census.starting += 1
        return census

    def note_ready(self) -> bool:
        """Move the STARTING children the scoreboard shows ready to SERVING; True if any."""
        fresh = False
        for child in self.children.values():
            if child.life is Life.STARTING and self.slot_of(child).state not in (
                SlotState.STARTING,
                SlotState.FREE,
            ):
                child.life = Life.SERVING
                self.ever_ready = fresh = True
        return fresh

    # -- workers that cannot start -------------------------------------------------

    def start_failed(self, child: Child, now: float) -> float | None:
        """Count a worker that exited before it was ready; the new wait, if this is a new step.

        Only the first failure of an attempt sets the next wait (1 s, then
        doubled up to :data:`START_BACKOFF_MAX`): the workers forked together
        before it are the same attempt and fail for the same reason.
        """
        self.header.start_failures += 1
        step: float | None = None
        if child.spawned >= self.start_backoff_decided:
            if self.start_backoff:
                step = min(self.start_backoff * 2, START_BACKOFF_MAX)
            else:
                step = START_BACKOFF_FIRST
            self.start_backoff = step
            self.start_backoff_decided = now
            self.spawn_blocked_until = now + step
        self.header.start_backoff = self.start_backoff
        self.board.write_header(self.header)
        return step

    def start_recovered(self) -> bool:
        """A worker became ready: end the backoff. True if there was one."""
        if not self.start_backoff:
            return False
        self.start_backoff = 0.0
        self.spawn_blocked_until = 0.0
        self.header.start_backoff = 0.0
        self.board.write_header(self.header)
        return True

    def retry_due(self, now: float) -> bool:
        """The wait after a failed start is over: time for the next attempt."""
        if self.spawn_blocked_until and now >= self.spawn_blocked_until:
            self.spawn_blocked_until = 0.0
            return True
        return False

    def idle_children_oldest_first(self) -> list[Child]:
        idle = []
        for child in self.live_children():
            slot = self.slot_of(child)
            if slot.state == SlotState.IDLE:
                idle.append((slot.started, child))
        idle.sort(key=lambda item: item[0])
        return [child for _, child in idle]

    def idle_since(self, child: Child, slot: Slot) -> float:
        """CLOCK_MONOTONIC time the child last finished something."""
        if slot.requests == 0:
            return child.spawned
        return slot.request_start_mono + slot.last_duration

    def sample_header(self) -> None:
        """Heartbeat: listen queue from the kernel and high-water marks."""
        queue = total_listen_queue(self.listeners)
        h = self.header
        if queue is not None:
            h.listen_queue = queue.queued
            h.listen_queue_len = queue.backlog
            h.max_listen_queue = max(h.max_listen_queue, queue.queued)
        busy = sum(1 for c in self.children.values() if self.slot_of(c).state == SlotState.BUSY)
        h.max_active = max(h.max_active, busy)
        h.generation = self.generation
        self.board.write_header(h)

    def account_exit(self, child: Child) -> Slot:
        """Fold a dead child's counters into the header and free its slot."""
        slot = self.slot_of(child)
        self.header.accepted_base += slot.accepted
        self.header.requests_base += slot.requests
        self.board.write_header(self.header)
        self.board.write_slot(child.index, Slot())
        return slot

    # -- stopping children ---------------------------------------------------------

    def retire(self, child: Child, now: float, grace: float, idle: bool = False) -> None:
        """Ask a child to finish its request and exit (SIGTERM is graceful for workers).

        ``idle``: an ondemand worker stopped for being idle, told by SIGQUIT
        (graceful too) to close its kept connections rather than pass them on.
        """
        if not child.live:
            return
        child.life = Life.RETIRING
        child.kill_at = now + grace if grace > 0 else None
        _signal(child.pid, signal.SIGQUIT if idle else signal.SIGTERM)

    def close_channel_for_sending(self) -> None:
        """The pool stops as a whole: its workers' hand-offs fail from now on (fcgi.handoff)."""
        if self.handoff is not None:
            self.handoff.refuse_more()

    def finish_all(self) -> None:
        """A graceful stop: every child is told to finish (the master keeps the deadline)."""
        for child in list(self.children.values()):
            if child.life is not Life.KILLED:
                child.life = Life.RETIRING
            _signal(child.pid, signal.SIGTERM)

    def kill(self, child: Child) -> None:
        child.life = Life.KILLED
        _signal(child.pid, signal.SIGKILL)

    def close(self) -> None:
        self.board.close()
        if self.handoff is not None:
            self.handoff.close()


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
