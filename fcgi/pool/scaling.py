"""How many workers to start or retire at a heartbeat: pure functions, no processes.

The dynamic rule is PHP-FPM's (``fpm_pctl_perform_idle_server_maintenance``):
above ``max_spare_servers`` idle, retire one (the oldest idle) per heartbeat;
below ``min_spare_servers``, fork ``min(rate, missing, room)`` and double the
rate for the next heartbeat up to ``max_spawn_rate`` (Apache's exponential
ramp); at ``max_children`` fork nothing and count "max children reached" once
per episode. A trio worker running fewer requests than its ``threads`` still
counts as spare capacity: the pool grows on concurrency, not on busy processes.
"""

from __future__ import annotations

from dataclasses import dataclass

from fcgi.pool.config import PoolConfig


@dataclass(slots=True)
class Census:
    """The pool's live (not retiring) workers, by scoreboard state."""

    idle: int = 0
    busy: int = 0
    starting: int = 0
    #: Busy trio workers that can still take more requests (fewer than
    #: ``threads`` running): spare capacity, though not idle processes.
    partly_busy: int = 0

    @property
    def total(self) -> int:
        return self.idle + self.busy + self.starting


@dataclass(slots=True)
class Decision:
    """What the master does to one pool at this heartbeat."""

    spawn: int = 0
    retire_idle: int = 0
    #: The pool wanted more workers and is at max_children.
    full: bool = False
    #: Spawn rate for the next heartbeat (dynamic only).
    next_rate: int = 1
    #: Spawning fast enough that the operator should hear about it.
    busy_warning: bool = False


def static_decision(census: Census, target: int) -> Decision:
    """Fork or retire (idle ones) until the pool has ``target`` workers."""
    if census.total < target:
        return Decision(spawn=target - census.total)
    if census.total > target:
        return Decision(retire_idle=census.total - target)
    return Decision()


def dynamic_decision(census: Census, config: PoolConfig, rate: int) -> Decision:
    """PHP-FPM's dynamic rule (see the module docstring); ``rate`` is this heartbeat's."""
    if census.idle > config.max_spare_servers:
        return Decision(retire_idle=1, next_rate=1)
    available = census.idle + census.starting + census.partly_busy
    if available < config.min_spare_servers:
        if census.total >= config.max_children:
            return Decision(full=True, next_rate=1)
        spawn = min(
            rate,
            config.min_spare_servers - available,
            config.max_children - census.total,
        )
        return Decision(
            spawn=spawn,
            next_rate=min(rate * 2, config.max_spawn_rate),
            busy_warning=rate >= 8,
        )
    return Decision(next_rate=1)
