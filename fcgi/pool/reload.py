"""A pool's graceful reload as a pure step function: what to do next, no processes.

SIGHUP (or SIGUSR2, or the emergency restart threshold) replaces a pool's
workers with a new generation without refusing a connection::

    IDLE --asked--> PROBE --one new worker ready--> REPLACE --all new ready--> IDLE
                      |   (or gone after being ready)   |     (old ones retire)
                      +------- a new worker cannot start ------> IDLE
                                                         (new ones retire, old go on)

* PROBE: one worker of the new generation is started, nothing else. Code that
  does not start costs one fork and leaves the old workers alone. A probe
  that got ready and already left (max_requests served between two turns of
  the master's loop) proved the code as well: without that, the reload would
  wait for it forever while the old workers recycled away to none.
* REPLACE: the rest of the new generation starts (as many as the pool should
  have, :func:`generation_size`); once every one is ready the old workers
  are told to finish, and the new generation serves.
* A reload asked while one runs waits (``pending``) and starts when this one
  ends, whichever way: perhaps the code was fixed meanwhile.
* A pool whose app the master preloaded needs a new master for new code: the
  step answers :class:`ReExec` and leaves the state alone.

:func:`step` takes the state and an event and returns the next state and the
actions, in order; :class:`fcgi.pool.master.Master` feeds it the events it
sees (a signal, a loop turn's count of new workers, a new worker's failed
start) and carries the actions out. It reads no clock and touches no process,
so every path is tested without one (tests/test_master_units.py), as the
sizing rules of :mod:`fcgi.pool.scaling` are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class Phase(Enum):
    #: No reload running.
    IDLE = "idle"
    #: One new worker must come up before anything else happens.
    PROBE = "probe"
    #: The rest of the new generation is starting.
    REPLACE = "replace"


@dataclass(frozen=True, slots=True)
class Reload:
    """One pool's reload state (IDLE most of the time)."""

    phase: Phase = Phase.IDLE
    #: The generation being started (meaningful while not IDLE).
    generation: int = 0
    #: CLOCK_MONOTONIC time the reload began, for the "complete in" line.
    started: float = 0.0
    #: Asked again while this one runs: begin another once it ends.
    pending: bool = False
    #: A worker of the new generation was ready at some point (see :class:`Left`).
    proven: bool = False

    @property
    def active(self) -> bool:
        return self.phase is not Phase.IDLE


# -- events: what the master saw ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Asked:
    """A reload was asked (a signal, the emergency threshold, or a pending one).

    ``serving`` is the generation serving now (the new one is the next
    number); ``preloaded``, that the app lives in the master, so that new code
    needs a new master.
    """

    now: float
    serving: int
    preloaded: bool = False


@dataclass(frozen=True, slots=True)
class Progress:
    """A loop turn's count of the new generation's workers (those not told to stop).

    ``total`` of them, ``ready`` of which are; ``wanted``, how many the
    generation should have (:func:`generation_size`).
    """

    now: float
    total: int
    ready: int
    wanted: int


@dataclass(frozen=True, slots=True)
class StartFailed:
    """A worker of the new generation exited before it was ready."""


@dataclass(frozen=True, slots=True)
class Left:
    """A worker of the new generation exited after it was ready: the new code starts."""


Event = Asked | Progress | StartFailed | Left


# -- actions: what the master does --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReExec:
    """Check that the new code imports, then exec a new master (:mod:`fcgi.pool.reexec`)."""


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start ``count`` workers of ``generation``; ``probe``: the first one of the reload."""

    generation: int
    count: int
    probe: bool = False


@dataclass(frozen=True, slots=True)
class Switch:
    """The new generation serves: tell the old workers to finish (``took``: seconds)."""

    generation: int
    took: float


@dataclass(frozen=True, slots=True)
class Abandon:
    """The new code does not start: tell the new workers to stop; the old go on."""

    generation: int


@dataclass(frozen=True, slots=True)
class Again:
    """Begin the reload that was asked while this one ran."""


Action = ReExec | Spawn | Switch | Abandon | Again


def step(state: Reload, event: Event) -> tuple[Reload, list[Action]]:
    """The state after ``event``, and what the master must do, in order."""
    if isinstance(event, Asked):
        if state.active:
            return replace(state, pending=True), []
        if event.preloaded:
            return state, [ReExec()]
        generation = event.serving + 1
        new = Reload(Phase.PROBE, generation, event.now)
        return new, [Spawn(generation, 1, probe=True)]
    if not state.active:
        return state, []
    again: list[Action] = [Again()] if state.pending else []
    if isinstance(event, StartFailed):
        return Reload(), [Abandon(state.generation), *again]
    if isinstance(event, Left):
        return replace(state, proven=True), []
    if state.phase is Phase.PROBE:
        if not event.ready and not state.proven:
            return state, []
        more = event.wanted - event.total
        spawn: list[Action] = [Spawn(state.generation, more)] if more > 0 else []
        return replace(state, phase=Phase.REPLACE), spawn
    if event.ready < event.total:
        return state, []
    return Reload(), [Switch(state.generation, event.now - state.started), *again]


def generation_size(pm: str, target: int, start_servers: int, old: int, max_children: int) -> int:
    """How many workers a new generation gets: what serves now, at least one.

    A static pool gets its ``target`` (SIGTTIN / SIGTTOU may have moved it);
    a dynamic one ``start_servers`` or as many as the ``old`` generation had
    serving, if more; an ondemand one as many as the old had. Never more than
    ``max_children``.
    """
    if pm == "static":
        want = target
    elif pm == "dynamic":
        want = max(start_servers, old)
    else:
        want = old
    return min(max(want, 1), max_children)
