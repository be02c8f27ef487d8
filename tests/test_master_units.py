"""The master's parts that need no master: the reload's steps, a child's life.

The reload protocol is a pure function (:func:`fcgi.pool.reload.step`), so
every path through it is walked here without a process, as the sizing rules
of :mod:`fcgi.pool.scaling` are in test_pool_units.py; the master that
carries its actions out is driven for real in test_pool_reload.py. A child's
life is read from a real scoreboard and signalled as a real process.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import pytest

from fcgi.pool.config import PoolConfig
from fcgi.pool.reload import (
    Abandon,
    Again,
    Asked,
    Left,
    Phase,
    Progress,
    ReExec,
    Reload,
    Spawn,
    StartFailed,
    Switch,
    generation_size,
    step,
)
from fcgi.pool.running_pool import Child, Life, RunningPool
from fcgi.pool.scoreboard import Slot, SlotState

# -- the reload's steps -------------------------------------------------------------


def test_a_reload_probes_with_one_worker_then_replaces_then_switches() -> None:
    state, actions = step(Reload(), Asked(now=10.0, serving=3))
    assert state == Reload(Phase.PROBE, generation=4, started=10.0)
    assert actions == [Spawn(4, 1, probe=True)]
    # Nothing happens until the probe is ready.
    assert step(state, Progress(now=11.0, total=1, ready=0, wanted=5)) == (state, [])
    state, actions = step(state, Progress(now=12.0, total=1, ready=1, wanted=5))
    assert state.phase is Phase.REPLACE and actions == [Spawn(4, 4)]
    # The switch waits for every new worker, not most of them.
    assert step(state, Progress(now=13.0, total=5, ready=4, wanted=5)) == (state, [])
    state, actions = step(state, Progress(now=14.5, total=5, ready=5, wanted=5))
    assert state == Reload() and actions == [Switch(4, took=4.5)]


def test_a_probe_that_is_enough_spawns_nothing_more_and_switches_next_turn() -> None:
    state, _ = step(Reload(), Asked(now=0.0, serving=0))
    state, actions = step(state, Progress(now=1.0, total=1, ready=1, wanted=1))
    assert state.phase is Phase.REPLACE and actions == []
    state, actions = step(state, Progress(now=2.0, total=1, ready=1, wanted=1))
    assert not state.active and actions == [Switch(1, took=2.0)]


def test_a_probe_gone_after_it_was_ready_proves_the_code_and_the_reload_goes_on() -> None:
    """Ready, max_requests served and gone between two turns: not a probe to wait for forever."""
    state, _ = step(Reload(), Asked(now=0.0, serving=2))
    state, actions = step(state, Left())
    assert state.phase is Phase.PROBE and state.proven and actions == []
    # The next turn sees no new worker at all, and starts the whole generation.
    state, actions = step(state, Progress(now=1.0, total=0, ready=0, wanted=2))
    assert state.phase is Phase.REPLACE and actions == [Spawn(3, 2)]
    state, actions = step(state, Progress(now=2.0, total=2, ready=2, wanted=2))
    assert not state.active and actions == [Switch(3, took=2.0)]


def test_a_new_worker_that_cannot_start_abandons_the_reload_in_either_phase() -> None:
    probing, _ = step(Reload(), Asked(now=0.0, serving=7))
    assert step(probing, StartFailed()) == (Reload(), [Abandon(8)])
    replacing, _ = step(probing, Progress(now=1.0, total=1, ready=1, wanted=3))
    assert step(replacing, StartFailed()) == (Reload(), [Abandon(8)])


def test_a_reload_asked_during_one_waits_and_begins_when_it_ends() -> None:
    state, _ = step(Reload(), Asked(now=0.0, serving=1))
    state, actions = step(state, Asked(now=0.5, serving=1))
    assert state.pending and state.phase is Phase.PROBE and actions == []
    # Asked a third time: still one reload waiting, not two.
    assert step(state, Asked(now=0.6, serving=1))[0] == state
    failed = step(state, StartFailed())
    assert failed == (Reload(), [Abandon(2), Again()])
    state, _ = step(state, Progress(now=1.0, total=1, ready=1, wanted=1))
    assert step(state, Progress(now=2.0, total=1, ready=1, wanted=1)) == (
        Reload(),
        [Switch(2, took=2.0), Again()],
    )


def test_a_preloaded_app_reexecs_the_master_and_keeps_no_state() -> None:
    assert step(Reload(), Asked(now=0.0, serving=2, preloaded=True)) == (Reload(), [ReExec()])


def test_without_a_reload_a_turn_or_a_failure_changes_nothing() -> None:
    assert step(Reload(), Progress(now=1.0, total=0, ready=0, wanted=4)) == (Reload(), [])
    assert step(Reload(), StartFailed()) == (Reload(), [])


@pytest.mark.parametrize(
    ("pm", "target", "start_servers", "old", "size"),
    [
        ("static", 4, 4, 2, 4),  # a static pool's target, whatever serves now
        ("dynamic", 0, 3, 5, 5),  # as many as served, if more than start_servers
        ("dynamic", 0, 3, 1, 3),
        ("ondemand", 0, 0, 0, 1),  # never an empty generation
        ("ondemand", 0, 0, 12, 10),  # never over max_children
    ],
)
def test_a_new_generation_is_as_large_as_what_serves_now(
    pm: str, target: int, start_servers: int, old: int, size: int
) -> None:
    assert generation_size(pm, target, start_servers, old, max_children=10) == size


# -- a child's life -----------------------------------------------------------------


@pytest.fixture
def pool() -> Iterator[RunningPool]:
    running = RunningPool(PoolConfig(pm="static", max_children=2), [])
    yield running
    running.close()


def _child(pool: RunningPool, index: int) -> tuple[Child, subprocess.Popen[bytes]]:
    """A real process standing for a worker, with its slot STARTING as after a fork."""
    proc = subprocess.Popen(["sleep", "60"])
    child = Child(pid=proc.pid, index=index, generation=0, spawned=0.0)
    pool.children[proc.pid] = child
    pool.board.write_slot(index, Slot(state=SlotState.STARTING, pid=proc.pid))
    return child, proc


def test_a_child_is_serving_once_its_slot_leaves_starting(pool: RunningPool) -> None:
    child, proc = _child(pool, 0)
    try:
        assert child.life is Life.STARTING and child.live
        assert pool.note_ready() is False and not pool.ever_ready
        pool.board.write_slot(0, Slot(state=SlotState.IDLE, pid=proc.pid))
        assert pool.note_ready() is True and child.life is Life.SERVING and pool.ever_ready
        assert pool.note_ready() is False  # seen once
        assert pool.census().idle == 1
    finally:
        proc.kill()
        proc.wait()


def test_a_retired_child_gets_sigterm_and_a_deadline_then_sigkill(pool: RunningPool) -> None:
    child, proc = _child(pool, 0)
    try:
        pool.retire(child, now=100.0, grace=5.0)
        assert (child.life, child.kill_at, child.live) == (Life.RETIRING, 105.0, False)
        assert proc.wait(30) == -signal.SIGTERM
        pool.retire(child, now=200.0, grace=5.0)  # once told, told
        assert child.kill_at == 105.0
        pool.kill(child)
        assert child.life is Life.KILLED
        assert pool.live_children() == [] and pool.census().total == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_child_told_to_stop_while_starting_is_not_watched_for_readiness(
    pool: RunningPool,
) -> None:
    child, proc = _child(pool, 0)
    try:
        pool.retire(child, now=0.0, grace=0.0)
        assert child.kill_at is None  # no grace: wait as long as it takes
        pool.board.write_slot(0, Slot(state=SlotState.IDLE, pid=proc.pid))
        assert pool.note_ready() is False and child.life is Life.RETIRING
    finally:
        proc.kill()
        proc.wait()


def test_a_graceful_stop_tells_every_child_but_keeps_the_killed_ones_killed(
    pool: RunningPool,
) -> None:
    first, first_proc = _child(pool, 0)
    second, second_proc = _child(pool, 1)
    try:
        pool.kill(second)
        pool.finish_all()
        assert (first.life, first.kill_at) == (Life.RETIRING, None)
        assert second.life is Life.KILLED
        assert first_proc.wait(30) == -signal.SIGTERM
        assert second_proc.wait(30) == -signal.SIGKILL
    finally:
        for proc in (first_proc, second_proc):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
